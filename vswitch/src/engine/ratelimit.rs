//! Rate limiting for log lines about per-packet conditions: at most one line per interval,
//! saying how many were suppressed since the last one.

/// Allows one event per interval and counts the ones it suppresses.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval_ms: u64,
    next_ms: u64,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter that lets the first event through, then one per `interval_ms`.
    pub const fn new(interval_ms: u64) -> LogLimiter {
        LogLimiter {
            interval_ms,
            next_ms: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last allowed event)` when an event at `now_ms` may be logged,
    /// `None` (and it is counted) otherwise.
    pub fn check(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms >= self.next_ms {
            self.next_ms = now_ms.saturating_add(self.interval_ms);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_with_suppressed_count() {
        let mut limiter = LogLimiter::new(1_000);
        assert_eq!(limiter.check(0), Some(0));
        assert_eq!(limiter.check(1), None);
        assert_eq!(limiter.check(999), None);
        assert_eq!(limiter.check(1_000), Some(2));
        assert_eq!(limiter.check(5_000), Some(0));
    }
}
