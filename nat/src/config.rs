//! Conntrack settings: idle timeouts per protocol state and the table limit.
//!
//! Defaults and the rule each one meets:
//!
//! | timeout | default | why |
//! |---|---|---|
//! | TCP established (a reply seen) | 2 h 4 min | RFC 5382 REQ-5: at least 2 h 4 min |
//! | TCP transitory: SYN_SENT, SYN_RECV, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, and an established pickup never answered | 4 min | RFC 5382 REQ-5: at least 4 min; TIME_WAIT is 2 MSL |
//! | TCP CLOSE (after RST) | 10 s | as Linux `nf_conntrack_tcp_timeout_close`: a reset connection holds its port only briefly (RFC 7857 2.2 suggests 4 min; we favour port reuse) |
//! | UDP after a reply | 120 s | RFC 4787 REQ-5: at least 2 min |
//! | UDP unreplied | 30 s | as Linux `nf_conntrack_udp_timeout`; an unanswered flow (scans, one-way noise) goes quickly |
//! | ICMP echo | 60 s | RFC 5508 REQ-1: at least 60 s |
//!
//! An entry is alive while `now - last_seen < timeout` and gone from the moment the idle time
//! equals the timeout (so a UDP mapping idle 119 s after a reply survives; at 120 s it is gone).

use std::time::Duration;

/// Idle timeouts, per protocol and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP after the original side's SYN.
    pub tcp_syn_sent: Duration,
    /// TCP after the reply side's SYN+ACK.
    pub tcp_syn_recv: Duration,
    /// TCP established, once a reply has been seen.
    pub tcp_established: Duration,
    /// TCP picked up mid-stream (loose mode) and not answered yet.
    pub tcp_unreplied: Duration,
    /// TCP after the first FIN.
    pub tcp_fin_wait: Duration,
    /// TCP after the first FIN was acknowledged.
    pub tcp_close_wait: Duration,
    /// TCP after the second FIN.
    pub tcp_last_ack: Duration,
    /// TCP after both FINs were acknowledged.
    pub tcp_time_wait: Duration,
    /// TCP after a RST.
    pub tcp_close: Duration,
    /// UDP before any reply.
    pub udp_unreplied: Duration,
    /// UDP once a reply was seen.
    pub udp_replied: Duration,
    /// ICMP echo (query and reply).
    pub icmp: Duration,
}

/// RFC 5382's minimum for an established TCP connection: 2 h 4 min.
pub const TCP_ESTABLISHED_MIN: Duration = Duration::from_secs(2 * 3600 + 4 * 60);

/// RFC 5382's minimum for a transitory TCP connection: 4 min.
pub const TCP_TRANSITORY_MIN: Duration = Duration::from_secs(4 * 60);

/// RFC 4787's minimum for a UDP mapping: 2 min.
pub const UDP_MIN: Duration = Duration::from_secs(120);

/// RFC 5508's minimum for an ICMP query mapping: 60 s.
pub const ICMP_MIN: Duration = Duration::from_secs(60);

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            tcp_syn_sent: TCP_TRANSITORY_MIN,
            tcp_syn_recv: TCP_TRANSITORY_MIN,
            tcp_established: TCP_ESTABLISHED_MIN,
            tcp_unreplied: TCP_TRANSITORY_MIN,
            tcp_fin_wait: TCP_TRANSITORY_MIN,
            tcp_close_wait: TCP_TRANSITORY_MIN,
            tcp_last_ack: TCP_TRANSITORY_MIN,
            tcp_time_wait: TCP_TRANSITORY_MIN,
            tcp_close: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: UDP_MIN,
            icmp: ICMP_MIN,
        }
    }
}

impl Timeouts {
    /// The settings that fall below an RFC minimum, as `(setting, minimum)`; the control plane
    /// may refuse or warn. `tcp_close` and `udp_unreplied` have no minimum.
    pub fn below_rfc_minimums(&self) -> Vec<(&'static str, Duration)> {
        let checks = [
            ("tcp_established", self.tcp_established, TCP_ESTABLISHED_MIN),
            ("tcp_syn_sent", self.tcp_syn_sent, TCP_TRANSITORY_MIN),
            ("tcp_syn_recv", self.tcp_syn_recv, TCP_TRANSITORY_MIN),
            ("tcp_unreplied", self.tcp_unreplied, TCP_TRANSITORY_MIN),
            ("tcp_fin_wait", self.tcp_fin_wait, TCP_TRANSITORY_MIN),
            ("tcp_close_wait", self.tcp_close_wait, TCP_TRANSITORY_MIN),
            ("tcp_last_ack", self.tcp_last_ack, TCP_TRANSITORY_MIN),
            ("tcp_time_wait", self.tcp_time_wait, TCP_TRANSITORY_MIN),
            ("udp_replied", self.udp_replied, UDP_MIN),
            ("icmp", self.icmp, ICMP_MIN),
        ];
        checks
            .into_iter()
            .filter(|(_, value, min)| value < min)
            .map(|(name, _, min)| (name, min))
            .collect()
    }
}

/// Default table limit.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// Conntrack settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// At most this many connections. When full, a new flow evicts an unassured (or dying)
    /// entry found by a bounded scan, or is refused.
    pub max_entries: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Pick up TCP connections mid-stream (any first packet but RST), as Linux's
    /// `nf_conntrack_tcp_loose` does by default; otherwise only a SYN creates one.
    pub tcp_loose: bool,
}

impl Default for ConntrackConfig {
    fn default() -> ConntrackConfig {
        ConntrackConfig {
            max_entries: DEFAULT_MAX_ENTRIES,
            timeouts: Timeouts::default(),
            tcp_loose: true,
        }
    }
}

/// Milliseconds in a duration, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_meet_the_rfc_minimums_and_transitory_is_shorter() {
        let t = Timeouts::default();
        assert!(t.below_rfc_minimums().is_empty());
        for transitory in [
            t.tcp_syn_sent,
            t.tcp_syn_recv,
            t.tcp_fin_wait,
            t.tcp_close_wait,
            t.tcp_last_ack,
            t.tcp_time_wait,
            t.tcp_close,
        ] {
            assert!(transitory < t.tcp_established);
        }
        assert!(t.udp_unreplied < t.udp_replied);
        assert_eq!(ConntrackConfig::default().max_entries, 1_000_000);
    }

    #[test]
    fn short_settings_are_reported() {
        let t = Timeouts {
            udp_replied: Duration::from_secs(30),
            icmp: Duration::from_secs(10),
            ..Timeouts::default()
        };
        assert_eq!(
            t.below_rfc_minimums(),
            vec![("udp_replied", UDP_MIN), ("icmp", ICMP_MIN)]
        );
    }

    #[test]
    fn millis_saturates() {
        assert_eq!(millis(Duration::from_secs(2)), 2000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
