//! Time for the datapath: a monotonic count of milliseconds, passed into the FDB and the
//! pipeline as a plain `u64` so tests drive it by hand.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic millisecond clock.
pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since an arbitrary fixed origin; never decreases.
    fn now_ms(&self) -> u64;
}

/// The real clock: milliseconds since the clock was created.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> MonotonicClock {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        millis(self.origin.elapsed())
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug, Default)]
pub struct FakeClock {
    now: AtomicU64,
}

impl FakeClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> FakeClock {
        FakeClock {
            now: AtomicU64::new(now_ms),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(millis(by), Ordering::Relaxed);
    }

    /// Sets the clock (callers keep it monotonic).
    pub fn set(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX` (585 million years).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_when_told() {
        let clock = FakeClock::new(5);
        assert_eq!(clock.now_ms(), 5);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 2_005);
        clock.set(10_000);
        assert_eq!(clock.now_ms(), 10_000);
    }

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let clock = MonotonicClock::new();
        let first = clock.now_ms();
        assert!(clock.now_ms() >= first);
    }

    #[test]
    fn millis_saturates() {
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
    }
}
