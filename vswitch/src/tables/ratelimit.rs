//! Rate limiting: for log lines about per-packet conditions (at most one line per interval,
//! saying how many were suppressed since the last one), a token bucket for ICMP errors
//! (RFC 1812 4.3.2.8: a router SHOULD limit the rate at which it originates them), and one
//! bucket per port for what a port may ask of the switch itself (ARP and echo requests to a
//! gateway), so one container's storm cannot take the worker's time or the answers of
//! others.

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

/// One [`TokenBucket`] per port, owned by one worker (so no lock and no atomic): a port's
/// frames are limited on each worker that reads them, independently. Grown on first use up
/// to [`MAX_PORTS`](crate::port::MAX_PORTS) buckets; a reused port id inherits the bucket,
/// which refills within a second.
#[derive(Debug, Clone)]
pub struct PortBuckets {
    burst: u64,
    per_second: u64,
    buckets: Vec<TokenBucket>,
}

impl PortBuckets {
    /// Buckets of `burst` tokens refilled at `per_second`, none allocated yet.
    pub const fn new(burst: u64, per_second: u64) -> PortBuckets {
        PortBuckets {
            burst,
            per_second,
            buckets: Vec::new(),
        }
    }

    /// Takes a token of `port`'s bucket at `now_ms` if there is one. A port id beyond
    /// [`MAX_PORTS`](crate::port::MAX_PORTS) (never handed out) is always refused.
    pub fn allow(&mut self, port: crate::port::PortId, now_ms: u64) -> bool {
        let Ok(slot) = usize::try_from(port.0) else {
            return false;
        };
        if slot >= crate::port::MAX_PORTS {
            return false;
        }
        if self.buckets.len() <= slot {
            let bucket = TokenBucket::new(self.burst, self.per_second);
            self.buckets.resize(slot + 1, bucket);
        }
        self.buckets[slot].allow(now_ms)
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
    fn port_buckets_are_independent() {
        use crate::port::{MAX_PORTS, PortId};
        let mut buckets = PortBuckets::new(3, 10);
        let first = (0..10).filter(|_| buckets.allow(PortId(7), 1_000)).count();
        assert_eq!(first, 3, "port 7's burst");
        assert!(buckets.allow(PortId(2), 1_000), "port 2 has its own bucket");
        assert!(!buckets.allow(PortId(7), 1_050));
        assert!(buckets.allow(PortId(7), 1_100), "one token per 100 ms");
        let beyond = u32::try_from(MAX_PORTS).expect("fits");
        assert!(!buckets.allow(PortId(beyond), 1_000));
    }

    #[test]
    fn token_bucket_slow_rate_keeps_fractions() {
        let mut bucket = TokenBucket::new(1, 1);
        assert!(bucket.allow(0));
        assert!(!bucket.allow(999));
        assert!(bucket.allow(1_000));
    }
}
