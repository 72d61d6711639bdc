//! Per-worker counters: for each port id (< [`MAX_PORTS`]) rx/tx packets and bytes, frames the
//! switch itself sent to the port (ARP, ICMP: `tx_generated_*`, kept apart from the frames it
//! switched or routed there), rx errors and drops by [`DropCause`]; plus switch-wide
//! [`Event`]s. Stages tally events in an [`EventTally`] that the worker adds once per batch.
//!
//! Each worker owns one [`WorkerCounters`] and is its only writer: an update is a relaxed
//! load and a relaxed store (no read-modify-write, no lock prefix, no contention). The API
//! thread reads them with relaxed loads and sums over workers. The one other writer is
//! [`WorkerCounters::reset_port`], called before a port id is reused, when no worker is
//! serving that port any more.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::{DropCause, keyed_enum};
use crate::port::{MAX_PORTS, PortId};

keyed_enum! {
    /// Things worth counting that are not drops.
    pub enum Event {
        MacLearned = "l2.mac_learned":
            "a new MAC was learned",
        MacMoved = "l2.mac_moved":
            "a learned MAC appeared on another port",
        MacLimitReached = "l2.mac_limit_reached":
            "a MAC was not learned because its subnet's table is full",
        MacAged = "l2.mac_aged":
            "learned MACs removed by the ageing sweep",
        RxError = "rx.error":
            "reading a port's queue failed",
        FlushError = "tx.flush_error":
            "pushing out a port's queued frames failed",
        ChecksumCompleted = "tx.checksum_completed":
            "a partial checksum was completed for a port that cannot take one",
        Routed = "l3.routed":
            "a packet was routed (TTL decremented, MACs rewritten)",
        Fragmented = "l3.fragmented":
            "a routed packet was fragmented to fit the egress subnet's MTU",
        GsoResized = "l3.gso_resized":
            "a TCP GSO frame without DF got a smaller segment size to fit the egress MTU",
        IcmpSent = "l3.icmp_sent":
            "an ICMP error was sent (time exceeded, unreachable, fragmentation needed)",
        IcmpRateLimited = "l3.icmp_rate_limited":
            "an ICMP error was not sent: over the per-worker rate limit",
        EchoReplied = "l3.echo_replied":
            "an ICMP echo request to a gateway address (or an uplink address) was answered",
        ArpReplied = "l3.arp_replied":
            "an ARP request for a gateway address (or an uplink address) was answered",
        ArpRequestsSent = "l3.arp_requests_sent":
            "an ARP request was sent to resolve (or re-confirm) a next hop",
        GratuitousArpSent = "l3.gratuitous_arp_sent":
            "a gratuitous ARP announced the subnet gateway to a newly attached port",
        NeighborLearned = "l3.neighbor_learned":
            "a neighbour's MAC was learned or changed",
        NeighborAged = "l3.neighbor_aged":
            "neighbour entries removed by the sweep (aged, failed, or their subnet left)",
        Held = "l3.held":
            "a packet was held while ARP resolves its next hop",
        HeldReleased = "l3.held_released":
            "a held packet was sent once its next hop answered",
        NatTranslated = "nat.translated":
            "a packet's addresses, ports or echo identifier were rewritten by NAT",
        NatConnectionCreated = "nat.connections_created":
            "a connection crossing NAT (masquerade, port forward, virtual IP, hairpin) was created in conntrack",
    }
}

/// Events counted by the stages of one worker during a batch, added to its
/// [`WorkerCounters`] at the end of the batch.
#[derive(Debug, Clone)]
pub struct EventTally {
    counts: [u64; Event::COUNT],
    any: bool,
}

impl Default for EventTally {
    fn default() -> EventTally {
        EventTally::new()
    }
}

impl EventTally {
    /// All zero.
    pub const fn new() -> EventTally {
        EventTally {
            counts: [0; Event::COUNT],
            any: false,
        }
    }

    /// Counts one `event`.
    #[inline]
    pub fn add(&mut self, event: Event) {
        self.counts[event.index()] += 1;
        self.any = true;
    }

    /// The count of `event` so far.
    pub fn get(&self, event: Event) -> u64 {
        self.counts[event.index()]
    }

    /// Adds the tallies to `counters` and zeroes them.
    pub fn flush(&mut self, counters: &WorkerCounters) {
        if !std::mem::take(&mut self.any) {
            return;
        }
        for (index, count) in self.counts.iter_mut().enumerate() {
            if *count > 0 {
                counters.add_event(Event::ALL[index], std::mem::take(count));
            }
        }
    }
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

/// The counters of one worker.
pub struct WorkerCounters {
    ports: Box<[PortCounters]>,
    events: [AtomicU64; Event::COUNT],
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
    fn tally_flushes_once_and_resets() {
        let counters = WorkerCounters::new();
        let mut tally = EventTally::new();
        tally.add(Event::Routed);
        tally.add(Event::Routed);
        tally.add(Event::IcmpSent);
        assert_eq!(tally.get(Event::Routed), 2);
        tally.flush(&counters);
        tally.flush(&counters);
        assert_eq!(counters.event(Event::Routed), 2);
        assert_eq!(counters.event(Event::IcmpSent), 1);
        assert_eq!(tally.get(Event::Routed), 0);
    }

    #[test]
    fn event_keys_are_unique() {
        let mut keys: Vec<&str> = Event::ALL.iter().map(|e| e.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Event::COUNT);
    }
}
