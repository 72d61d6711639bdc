//! Per-worker counters: the worker's load (busy and idle time, batch sizes) and what it
//! spent (system calls by kind, software checksum and segmentation: [`Costs`], moved from
//! its thread's tally once per loop iteration), and its thread id (for its context switches,
//! which the kernel counts); for each port
//! id (< [`MAX_PORTS`]) rx/tx packets and bytes, frames the switch itself sent to the port (ARP, ICMP: `tx_generated_*`, kept apart from the frames it
//! switched or routed there), rx errors and drops by [`DropCause`]; plus switch-wide
//! [`Event`]s, which the stages tally in an [`EventTally`] that the worker adds once per batch
//! ([`WorkerCounters::add_events`]).
//!
//! Each worker owns one [`WorkerCounters`] and is its only writer: an update is a relaxed
//! load and a relaxed store (no read-modify-write, no lock prefix, no contention). The API
//! thread reads them with relaxed loads and sums over workers. The one other writer is
//! [`WorkerCounters::reset_port`], called before a port id is reused, when no worker is
//! serving that port any more.

use std::fmt;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use crate::cost::{Costs, Syscall};
use crate::pipeline::DropCause;
use crate::port::{MAX_PORTS, PortId};
use crate::sys::batch::BATCH_SIZE;
use crate::tables::counters::{Event, EventTally};

#[inline]
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Add `n` to a counter this thread alone writes.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_errors: AtomicU64,
    rx_backoffs: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_generated_packets: AtomicU64,
    tx_generated_bytes: AtomicU64,
    drops: [AtomicU64; DropCause::COUNT],
}

impl PortCounters {
    fn new() -> PortCounters {
        PortCounters {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            rx_errors: AtomicU64::new(0),
            rx_backoffs: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            tx_generated_packets: AtomicU64::new(0),
            tx_generated_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Values of one port's counters (from one worker, or summed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTotals {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received (Ethernet frames, without the virtio header).
    pub rx_bytes: u64,
    /// Failed reads of the port's queues.
    pub rx_errors: u64,
    /// Times a worker left the port's queue unread because nearly every frame it sent fast
    /// was dropped (the kernel drops what overflows meanwhile, at the sender).
    pub rx_backoffs: u64,
    /// Frames sent (switched or routed to the port).
    pub tx_packets: u64,
    /// Bytes sent (switched or routed to the port).
    pub tx_bytes: u64,
    /// Frames the switch itself originated toward the port (ARP, ICMP), not in `tx_packets`.
    pub tx_generated_packets: u64,
    /// Bytes of those frames.
    pub tx_generated_bytes: u64,
    /// Drops, indexed by [`DropCause::index`].
    pub drops: [u64; DropCause::COUNT],
}

impl Default for PortTotals {
    fn default() -> PortTotals {
        PortTotals {
            rx_packets: 0,
            rx_bytes: 0,
            rx_errors: 0,
            rx_backoffs: 0,
            tx_packets: 0,
            tx_bytes: 0,
            tx_generated_packets: 0,
            tx_generated_bytes: 0,
            drops: [0; DropCause::COUNT],
        }
    }
}

impl PortTotals {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &PortTotals) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.rx_errors += other.rx_errors;
        self.rx_backoffs += other.rx_backoffs;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.tx_generated_packets += other.tx_generated_packets;
        self.tx_generated_bytes += other.tx_generated_bytes;
        for (sum, value) in self.drops.iter_mut().zip(other.drops.iter()) {
            *sum += value;
        }
    }

    /// Drops under `cause`.
    pub fn drop_count(&self, cause: DropCause) -> u64 {
        self.drops[cause.index()]
    }
}

/// Upper bounds of the batch-size histogram's buckets (frames per received batch); the
/// last is [`BATCH_SIZE`], the most a batch holds.
pub const BATCH_BUCKETS: [usize; 7] = [1, 2, 4, 8, 16, 32, BATCH_SIZE];

/// How a worker spent its time and how full its batches were (counted once per loop
/// iteration and once per batch, never per packet).
struct Load {
    /// Nanoseconds spent outside `epoll_wait` (receiving, the stages, transmitting, upkeep).
    busy_ns: AtomicU64,
    /// Nanoseconds spent in `epoll_wait` (busy-poll rounds that found nothing included).
    idle_ns: AtomicU64,
    /// Received batches by size, one counter per [`BATCH_BUCKETS`] bucket (not cumulative).
    batches: [AtomicU64; BATCH_BUCKETS.len()],
    /// Frames in those batches.
    batch_frames: AtomicU64,
}

/// A worker's load counters' values (see [`WorkerCounters::load`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    /// Nanoseconds spent working.
    pub busy_ns: u64,
    /// Nanoseconds spent waiting for work.
    pub idle_ns: u64,
    /// Received batches per [`BATCH_BUCKETS`] bucket (not cumulative).
    pub batches: [u64; BATCH_BUCKETS.len()],
    /// Frames in those batches.
    pub batch_frames: u64,
}

/// A worker's [`Costs`], in atomics (one writer: the worker).
struct CostCounters {
    syscalls: [AtomicU64; Syscall::COUNT],
    empty_reads: AtomicU64,
    checksum_bytes: AtomicU64,
    segmented_bytes: AtomicU64,
    segments: AtomicU64,
    coalesced_segments: AtomicU64,
    udp_gso_sends: AtomicU64,
}

impl CostCounters {
    fn new() -> CostCounters {
        CostCounters {
            syscalls: std::array::from_fn(|_| AtomicU64::new(0)),
            empty_reads: AtomicU64::new(0),
            checksum_bytes: AtomicU64::new(0),
            segmented_bytes: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            coalesced_segments: AtomicU64::new(0),
            udp_gso_sends: AtomicU64::new(0),
        }
    }

    /// The counters beside the values of `costs` they count.
    fn pairs<'a>(&'a self, costs: &'a Costs) -> impl Iterator<Item = (&'a AtomicU64, u64)> {
        self.syscalls.iter().zip(costs.syscalls).chain([
            (&self.empty_reads, costs.empty_reads),
            (&self.checksum_bytes, costs.checksum_bytes),
            (&self.segmented_bytes, costs.segmented_bytes),
            (&self.segments, costs.segments),
            (&self.coalesced_segments, costs.coalesced_segments),
            (&self.udp_gso_sends, costs.udp_gso_sends),
        ])
    }
}

/// The counters of one worker.
pub struct WorkerCounters {
    ports: Box<[PortCounters]>,
    events: [AtomicU64; Event::COUNT],
    load: Load,
    costs: CostCounters,
    /// The worker thread's id (0 until it starts).
    tid: AtomicI32,
}

impl fmt::Debug for WorkerCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerCounters")
            .field("ports", &self.ports.len())
            .finish_non_exhaustive()
    }
}

impl Default for WorkerCounters {
    fn default() -> WorkerCounters {
        WorkerCounters::new()
    }
}

impl WorkerCounters {
    /// Zeroed counters for [`MAX_PORTS`] ports.
    pub fn new() -> WorkerCounters {
        WorkerCounters {
            ports: (0..MAX_PORTS).map(|_| PortCounters::new()).collect(),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            load: Load {
                busy_ns: AtomicU64::new(0),
                idle_ns: AtomicU64::new(0),
                batches: std::array::from_fn(|_| AtomicU64::new(0)),
                batch_frames: AtomicU64::new(0),
            },
            costs: CostCounters::new(),
            tid: AtomicI32::new(0),
        }
    }

    /// Adds what the worker's thread tallied (see [`crate::cost::take`]).
    #[inline]
    pub fn add_costs(&self, costs: &Costs) {
        if costs.is_zero() {
            return;
        }
        for (counter, value) in self.costs.pairs(costs) {
            bump(counter, value);
        }
    }

    /// What the worker spent so far.
    pub fn costs(&self) -> Costs {
        let c = &self.costs;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Costs {
            syscalls: std::array::from_fn(|i| get(&c.syscalls[i])),
            empty_reads: get(&c.empty_reads),
            checksum_bytes: get(&c.checksum_bytes),
            segmented_bytes: get(&c.segmented_bytes),
            segments: get(&c.segments),
            coalesced_segments: get(&c.coalesced_segments),
            udp_gso_sends: get(&c.udp_gso_sends),
        }
    }

    /// Records the worker thread's id (by the worker, as it starts).
    pub fn set_tid(&self, tid: i32) {
        self.tid.store(tid, Ordering::Relaxed);
    }

    /// The worker thread's id, once it started.
    pub fn tid(&self) -> Option<i32> {
        Some(self.tid.load(Ordering::Relaxed)).filter(|&tid| tid > 0)
    }

    /// Counts one loop iteration: `idle` waiting in `epoll_wait`, then `busy` working.
    #[inline]
    pub fn add_time(&self, idle: Duration, busy: Duration) {
        bump(&self.load.idle_ns, nanos(idle));
        bump(&self.load.busy_ns, nanos(busy));
    }

    /// Counts one received batch of `frames` frames.
    #[inline]
    pub fn add_batch(&self, frames: usize) {
        let bucket = BATCH_BUCKETS
            .iter()
            .position(|&bound| frames <= bound)
            .unwrap_or(BATCH_BUCKETS.len() - 1);
        bump(&self.load.batches[bucket], 1);
        bump(
            &self.load.batch_frames,
            u64::try_from(frames).unwrap_or(u64::MAX),
        );
    }

    /// The current values of the load counters.
    pub fn load(&self) -> WorkerLoad {
        WorkerLoad {
            busy_ns: self.load.busy_ns.load(Ordering::Relaxed),
            idle_ns: self.load.idle_ns.load(Ordering::Relaxed),
            batches: std::array::from_fn(|i| self.load.batches[i].load(Ordering::Relaxed)),
            batch_frames: self.load.batch_frames.load(Ordering::Relaxed),
        }
    }

    /// The counters of `port`; `None` for ids at or beyond [`MAX_PORTS`] (not counted).
    #[inline]
    fn port(&self, port: PortId) -> Option<&PortCounters> {
        self.ports.get(usize::try_from(port.0).ok()?)
    }

    /// Counts `packets` frames of `bytes` bytes received on `port`.
    #[inline]
    pub fn add_rx(&self, port: PortId, packets: u64, bytes: u64) {
        if let Some(counters) = self.port(port) {
            bump(&counters.rx_packets, packets);
            bump(&counters.rx_bytes, bytes);
        }
    }

    /// Counts `packets` frames of `bytes` bytes sent on `port`.
    #[inline]
    pub fn add_tx(&self, port: PortId, packets: u64, bytes: u64) {
        if let Some(counters) = self.port(port) {
            bump(&counters.tx_packets, packets);
            bump(&counters.tx_bytes, bytes);
        }
    }

    /// Counts `packets` frames of `bytes` bytes the switch itself sent to `port`.
    #[inline]
    pub fn add_tx_generated(&self, port: PortId, packets: u64, bytes: u64) {
        if let Some(counters) = self.port(port) {
            bump(&counters.tx_generated_packets, packets);
            bump(&counters.tx_generated_bytes, bytes);
        }
    }

    /// Counts a failed read of `port`'s queue.
    #[inline]
    pub fn add_rx_error(&self, port: PortId) {
        if let Some(counters) = self.port(port) {
            bump(&counters.rx_errors, 1);
        }
    }

    /// Counts a back-off of `port`'s queue (see `runtime::share`).
    #[inline]
    pub fn add_rx_backoff(&self, port: PortId) {
        if let Some(counters) = self.port(port) {
            bump(&counters.rx_backoffs, 1);
        }
    }

    /// Counts `n` frames dropped on `port` for `cause`.
    #[inline]
    pub fn add_drop(&self, port: PortId, cause: DropCause, n: u64) {
        if let Some(counters) = self.port(port) {
            bump(&counters.drops[cause.index()], n);
        }
    }

    /// Counts `n` occurrences of `event`.
    #[inline]
    pub fn add_event(&self, event: Event, n: u64) {
        bump(&self.events[event.index()], n);
    }

    /// Adds the events of `tally` (one batch's) and zeroes it.
    #[inline]
    pub fn add_events(&self, tally: &mut EventTally) {
        tally.drain(|event, n| self.add_event(event, n));
    }

    /// The current value of `event`.
    pub fn event(&self, event: Event) -> u64 {
        self.events[event.index()].load(Ordering::Relaxed)
    }

    /// The current values of `port`'s counters (zero for ids beyond [`MAX_PORTS`]).
    pub fn totals(&self, port: PortId) -> PortTotals {
        let Some(counters) = self.port(port) else {
            return PortTotals::default();
        };
        PortTotals {
            rx_packets: counters.rx_packets.load(Ordering::Relaxed),
            rx_bytes: counters.rx_bytes.load(Ordering::Relaxed),
            rx_errors: counters.rx_errors.load(Ordering::Relaxed),
            rx_backoffs: counters.rx_backoffs.load(Ordering::Relaxed),
            tx_packets: counters.tx_packets.load(Ordering::Relaxed),
            tx_bytes: counters.tx_bytes.load(Ordering::Relaxed),
            tx_generated_packets: counters.tx_generated_packets.load(Ordering::Relaxed),
            tx_generated_bytes: counters.tx_generated_bytes.load(Ordering::Relaxed),
            drops: std::array::from_fn(|i| counters.drops[i].load(Ordering::Relaxed)),
        }
    }

    /// Zeroes `port`'s counters (before its id is reused).
    pub fn reset_port(&self, port: PortId) {
        if let Some(counters) = self.port(port) {
            for counter in [
                &counters.rx_packets,
                &counters.rx_bytes,
                &counters.rx_errors,
                &counters.rx_backoffs,
                &counters.tx_packets,
                &counters.tx_bytes,
                &counters.tx_generated_packets,
                &counters.tx_generated_bytes,
            ]
            .into_iter()
            .chain(counters.drops.iter())
            {
                counter.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{l2, parse, tx};

    #[test]
    fn counts_and_resets() {
        let counters = WorkerCounters::new();
        let port = PortId(7);
        counters.add_rx(port, 3, 300);
        counters.add_rx(port, 1, 60);
        counters.add_tx(port, 2, 120);
        counters.add_tx_generated(port, 1, 42);
        counters.add_rx_error(port);
        let runt = DropCause::Parse(parse::DropReason::Runt);
        counters.add_drop(port, runt, 2);
        counters.add_drop(port, DropCause::Tx(tx::DropReason::QueueFull), 1);
        let totals = counters.totals(port);
        assert_eq!((totals.rx_packets, totals.rx_bytes), (4, 360));
        assert_eq!((totals.tx_packets, totals.tx_bytes), (2, 120));
        assert_eq!(
            (totals.tx_generated_packets, totals.tx_generated_bytes),
            (1, 42)
        );
        assert_eq!(totals.rx_errors, 1);
        assert_eq!(totals.drop_count(runt), 2);
        assert_eq!(totals.drop_count(DropCause::L2(l2::DropReason::Hairpin)), 0);
        assert_eq!(counters.totals(PortId(8)), PortTotals::default());
        counters.reset_port(port);
        assert_eq!(counters.totals(port), PortTotals::default());
    }

    #[test]
    fn out_of_range_ports_are_ignored() {
        let counters = WorkerCounters::new();
        let beyond = PortId(u32::try_from(MAX_PORTS).unwrap());
        counters.add_rx(beyond, 1, 1);
        counters.add_drop(beyond, DropCause::Parse(parse::DropReason::Runt), 1);
        assert_eq!(counters.totals(beyond), PortTotals::default());
    }

    #[test]
    fn events_and_sums() {
        let counters = WorkerCounters::new();
        counters.add_event(Event::MacLimitReached, 2);
        counters.add_event(Event::MacLimitReached, 1);
        assert_eq!(counters.event(Event::MacLimitReached), 3);
        assert_eq!(counters.event(Event::MacLearned), 0);
        let mut sum = PortTotals::default();
        let mut drops = [0; DropCause::COUNT];
        drops[0] = 1;
        let one = PortTotals {
            rx_packets: 5,
            drops,
            ..PortTotals::default()
        };
        sum.add(&one);
        sum.add(&one);
        assert_eq!((sum.rx_packets, sum.drops[0]), (10, 2));
    }

    #[test]
    fn load_counts_time_and_batches_by_bucket() {
        let counters = WorkerCounters::new();
        counters.add_time(Duration::from_millis(3), Duration::from_micros(5));
        counters.add_time(Duration::from_millis(1), Duration::ZERO);
        for frames in [1, 2, 3, 64, 33, 100] {
            counters.add_batch(frames);
        }
        let load = counters.load();
        assert_eq!((load.idle_ns, load.busy_ns), (4_000_000, 5_000));
        // 1 | 2 | 3 -> 4 | - | - | - | 33, 64 and (beyond the last bound) 100 -> 64.
        assert_eq!(load.batches, [1, 1, 1, 0, 0, 0, 3]);
        assert_eq!(load.batch_frames, 203);
    }

    #[test]
    fn costs_add_up_and_the_tid_is_kept() {
        let counters = WorkerCounters::new();
        assert_eq!(counters.costs(), Costs::default());
        assert_eq!(counters.tid(), None);
        let mut costs = Costs::default();
        costs.syscalls[Syscall::Write.index()] = 3;
        costs.checksum_bytes = 1500;
        costs.udp_gso_sends = 1;
        counters.add_costs(&costs);
        counters.add_costs(&costs);
        counters.add_costs(&Costs::default());
        let total = counters.costs();
        assert_eq!(total.syscalls[Syscall::Write.index()], 6);
        assert_eq!(total.total_syscalls(), 6);
        assert_eq!((total.checksum_bytes, total.udp_gso_sends), (3000, 2));
        counters.set_tid(4242);
        assert_eq!(counters.tid(), Some(4242));
    }

    #[test]
    fn a_tally_is_added_once() {
        let counters = WorkerCounters::new();
        let mut tally = EventTally::new();
        tally.add(Event::Routed);
        tally.add(Event::Routed);
        tally.add(Event::IcmpSent);
        counters.add_events(&mut tally);
        counters.add_events(&mut tally);
        assert_eq!(counters.event(Event::Routed), 2);
        assert_eq!(counters.event(Event::IcmpSent), 1);
        assert_eq!(tally.get(Event::Routed), 0);
    }
}
