//! The retry delays of the overlay agent: exponential backoff from 1 s, doubling, capped at
//! 30 s, reset after a success.

use std::time::Duration;

/// Exponential backoff: [`Backoff::INITIAL`], doubling on each failure up to
/// [`Backoff::MAX`]; [`Backoff::reset`] after a success starts again from the initial delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first delay: 1 s.
    pub const INITIAL: Duration = Duration::from_secs(1);
    /// The longest delay: 30 s.
    pub const MAX: Duration = Duration::from_secs(30);

    /// A backoff whose next delay is [`Backoff::INITIAL`].
    pub fn new() -> Backoff {
        Backoff {
            next: Backoff::INITIAL,
        }
    }

    /// The delay to wait before the next attempt; each call doubles the one after, up to
    /// [`Backoff::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = delay.saturating_mul(2).min(Backoff::MAX);
        delay
    }

    /// After a success: the next delay is [`Backoff::INITIAL`] again.
    pub fn reset(&mut self) {
        self.next = Backoff::INITIAL;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(backoff: &mut Backoff, count: usize) -> Vec<u64> {
        (0..count).map(|_| backoff.next_delay().as_secs()).collect()
    }

    #[test]
    fn doubles_from_one_second_up_to_thirty() {
        let mut backoff = Backoff::new();
        assert_eq!(seconds(&mut backoff, 8), [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn reset_starts_again_from_one_second() {
        let mut backoff = Backoff::default();
        assert_eq!(seconds(&mut backoff, 3), [1, 2, 4]);
        backoff.reset();
        assert_eq!(seconds(&mut backoff, 3), [1, 2, 4]);
    }
}
