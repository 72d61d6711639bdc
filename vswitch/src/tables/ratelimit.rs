//! Rate limiting: for log lines about per-packet conditions (at most one line per interval,
//! saying how many were suppressed since the last one), and a token bucket for ICMP errors
//! (RFC 1812 4.3.2.8: a router SHOULD limit the rate at which it originates them).

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

/// A token bucket over the engine's millisecond clock: up to `burst` events at once, then
/// `per_second` on average. Integer arithmetic in thousandths of a token, so slow refill
/// rates lose nothing to rounding.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Capacity, in thousandths of a token.
    capacity: u64,
    /// Thousandths of a token added per millisecond (= tokens per second).
    per_second: u64,
    /// Current level, in thousandths of a token.
    level: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_second` tokens a second.
    pub const fn new(burst: u64, per_second: u64) -> TokenBucket {
        TokenBucket {
            capacity: burst.saturating_mul(1_000),
            per_second,
            level: burst.saturating_mul(1_000),
            last_ms: 0,
        }
    }

    /// Takes a token at `now_ms` if there is one.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.per_second))
            .min(self.capacity);
        if self.level >= 1_000 {
            self.level -= 1_000;
            true
        } else {
            false
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

    #[test]
    fn token_bucket_bursts_then_refills() {
        let mut bucket = TokenBucket::new(50, 100);
        let burst = (0..60).filter(|_| bucket.allow(1_000)).count();
        assert_eq!(burst, 50, "the burst, then nothing at the same instant");
        // 100 per second: one token every 10 ms.
        assert!(!bucket.allow(1_009));
        assert!(bucket.allow(1_010));
        assert!(!bucket.allow(1_010));
        // A long pause refills to the burst, not beyond.
        let refilled = (0..60).filter(|_| bucket.allow(100_000)).count();
        assert_eq!(refilled, 50);
        // The clock going backwards takes nothing and gives nothing.
        assert!(!bucket.allow(50_000));
    }

    #[test]
    fn token_bucket_slow_rate_keeps_fractions() {
        let mut bucket = TokenBucket::new(1, 1);
        assert!(bucket.allow(0));
        assert!(!bucket.allow(999));
        assert!(bucket.allow(1_000));
    }
}
