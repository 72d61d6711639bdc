//! Where vswitchd's cycles go: the `datapath` counters of `vswitchctl stats -o json` (system
//! calls by call, batches, wake-ups, software checksum and segmentation bytes), read from
//! every daemon of a variant before and after a measured run; the difference, divided by the
//! bytes the run delivered, is what `perf` reports per GB.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::vswitchd::Daemon;

/// One reading of the counters (summed over daemons), or the difference of two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Datapath {
    /// Nanoseconds the workers worked.
    pub busy_ns: u64,
    /// Batches received.
    pub batches: u64,
    /// Frames in them.
    pub batch_frames: u64,
    /// System calls by call.
    pub syscalls: BTreeMap<String, u64>,
    /// Reads that found nothing.
    pub empty_reads: u64,
    /// Bytes summed by the software checksum.
    pub checksum_bytes: u64,
    /// Bytes written by software segmentation.
    pub segmented_bytes: u64,
    /// Segments merged in software.
    pub coalesced_segments: u64,
    /// `UDP_SEGMENT` sends of the VTEP.
    pub udp_gso_sends: u64,
    /// Workers' voluntary context switches.
    pub wakeups: u64,
    /// Their involuntary ones.
    pub preemptions: u64,
}

/// The part of `GET /v1/stats` read here.
#[derive(Debug, Deserialize)]
struct Stats {
    #[serde(default)]
    datapath: Option<Datapath>,
}

impl Datapath {
    /// Parses `vswitchctl stats -o json`; `None` when the daemon has no `datapath` (an
    /// older vswitchd).
    ///
    /// # Errors
    /// The text is not the stats JSON.
    pub fn parse(json: &str) -> Result<Option<Datapath>> {
        let stats: Stats = serde_json::from_str(json).context("parsing `vswitchctl stats`")?;
        Ok(stats.datapath)
    }

    /// The counters of each of `daemons`; `None` when there are none (the kernel's
    /// variant, Open vSwitch's), or one of them has none or does not answer (the run then
    /// goes without these figures; a daemon that is really gone fails the variant
    /// elsewhere).
    pub fn read(daemons: &[Daemon]) -> Option<Vec<Datapath>> {
        if daemons.is_empty() {
            return None;
        }
        daemons
            .iter()
            .map(|daemon| {
                let json = daemon.ctl(&["stats", "-o", "json"]).ok()?;
                Datapath::parse(&json).ok().flatten()
            })
            .collect()
    }

    /// What the daemons spent between two [`read`](Datapath::read)s, summed over them;
    /// `None` when a daemon's counters went back (it restarted in between) or the readings
    /// do not pair up.
    pub fn used(before: &[Datapath], after: &[Datapath]) -> Option<Datapath> {
        if before.len() != after.len() {
            return None;
        }
        let mut sum = Datapath::default();
        for (was, is) in before.iter().zip(after) {
            if is.went_back_from(was) {
                return None;
            }
            sum.add(&is.since(was));
        }
        Some(sum)
    }

    /// True when a counter is below `before`'s: the daemon started again.
    fn went_back_from(&self, before: &Datapath) -> bool {
        let calls_back = before
            .syscalls
            .iter()
            .any(|(call, n)| self.syscalls.get(call).copied().unwrap_or(0) < *n);
        calls_back
            || self.busy_ns < before.busy_ns
            || self.batches < before.batches
            || self.wakeups < before.wakeups
            || self.checksum_bytes < before.checksum_bytes
            || self.segmented_bytes < before.segmented_bytes
    }

    fn add(&mut self, other: &Datapath) {
        self.busy_ns += other.busy_ns;
        self.batches += other.batches;
        self.batch_frames += other.batch_frames;
        for (call, n) in &other.syscalls {
            *self.syscalls.entry(call.clone()).or_default() += n;
        }
        self.empty_reads += other.empty_reads;
        self.checksum_bytes += other.checksum_bytes;
        self.segmented_bytes += other.segmented_bytes;
        self.coalesced_segments += other.coalesced_segments;
        self.udp_gso_sends += other.udp_gso_sends;
        self.wakeups += other.wakeups;
        self.preemptions += other.preemptions;
    }

    /// What happened between `before` and `self` (check [`went_back_from`] first).
    ///
    /// [`went_back_from`]: Datapath::went_back_from
    fn since(&self, before: &Datapath) -> Datapath {
        Datapath {
            busy_ns: self.busy_ns.saturating_sub(before.busy_ns),
            batches: self.batches.saturating_sub(before.batches),
            batch_frames: self.batch_frames.saturating_sub(before.batch_frames),
            syscalls: self
                .syscalls
                .iter()
                .map(|(call, n)| {
                    let was = before.syscalls.get(call).copied().unwrap_or(0);
                    (call.clone(), n.saturating_sub(was))
                })
                .collect(),
            empty_reads: self.empty_reads.saturating_sub(before.empty_reads),
            checksum_bytes: self.checksum_bytes.saturating_sub(before.checksum_bytes),
            segmented_bytes: self.segmented_bytes.saturating_sub(before.segmented_bytes),
            coalesced_segments: self
                .coalesced_segments
                .saturating_sub(before.coalesced_segments),
            udp_gso_sends: self.udp_gso_sends.saturating_sub(before.udp_gso_sends),
            wakeups: self.wakeups.saturating_sub(before.wakeups),
            preemptions: self.preemptions.saturating_sub(before.preemptions),
        }
    }

    /// Every system call.
    pub fn total_syscalls(&self) -> u64 {
        self.syscalls.values().sum()
    }

    /// Frames per batch (`None` without batches).
    pub fn frames_per_batch(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.batch_frames as f64 / self.batches as f64)
    }

    /// The system calls per GB of `bytes`, largest first, as `read 41.2k, write 40.9k, ...`
    /// (for the progress line).
    pub fn calls_per_gb(&self, bytes: u64) -> String {
        let gb = bytes as f64 / 1e9;
        if gb <= 0.0 {
            return String::new();
        }
        let mut calls: Vec<(&String, &u64)> =
            self.syscalls.iter().filter(|(_, n)| **n > 0).collect();
        calls.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        calls
            .iter()
            .map(|(call, n)| format!("{call} {}", crate::report::format_value(**n as f64 / gb)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATS: &str = r#"{"workers":1,"ports":[],"drops":{},"events":{},
        "datapath":{"busyNs":5,"batches":4,"batchFrames":100,
            "syscalls":{"read":104,"write":100,"epoll_wait":4},"emptyReads":4,
            "checksumBytes":3000,"segmentedBytes":0,"segments":0,"coalescedSegments":9,
            "udpGsoSends":0,"wakeups":3,"preemptions":1}}"#;

    #[test]
    fn parses_differences_and_rates() {
        let after = Datapath::parse(STATS).unwrap().expect("a datapath");
        assert_eq!(after.total_syscalls(), 208);
        assert_eq!(after.frames_per_batch(), Some(25.0));
        let mut before = Datapath::default();
        before.syscalls.insert("read".into(), 4);
        before.wakeups = 1;
        let delta = after.since(&before);
        assert_eq!(delta.syscalls["read"], 100);
        assert_eq!(delta.wakeups, 2);
        assert_eq!(delta.coalesced_segments, 9);
        // 100 reads, 100 writes, 4 waits over 2 GB.
        assert_eq!(
            delta.calls_per_gb(2_000_000_000),
            "read 50.0, write 50.0, epoll_wait 2.00"
        );
        let mut twice = delta.clone();
        twice.add(&delta);
        assert_eq!(twice.total_syscalls(), 2 * delta.total_syscalls());
        // Two daemons: their differences add up; one that restarted spoils the run.
        let used = Datapath::used(
            &[before.clone(), before.clone()],
            &[after.clone(), after.clone()],
        )
        .expect("both grew");
        assert_eq!(used, twice);
        assert_eq!(
            Datapath::used(std::slice::from_ref(&after), std::slice::from_ref(&before)),
            None,
            "a restart"
        );
        assert_eq!(Datapath::used(std::slice::from_ref(&before), &[]), None);
        assert_eq!(
            Datapath::parse(r#"{"workers":1}"#).unwrap(),
            None,
            "an older vswitchd"
        );
        assert!(Datapath::parse("not json").is_err());
    }
}
