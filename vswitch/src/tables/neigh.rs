//! The neighbour table (ARP for IPv4, neighbour discovery for IPv6): `(SubnetId, IpAddr) ->
//! MAC`, shared by all workers.
//!
//! States, after Linux's neighbour subsystem (`net/core/neighbour.c`), simplified:
//! - **incomplete**: an ARP request was broadcast and no answer came yet. Requests are
//!   retransmitted every [`RETRANSMIT_MS`] by whichever worker holds packets for it, at most
//!   [`MAX_PROBES`] in all; then resolution has failed and the next packet starts over.
//! - **reachable**: confirmed less than [`REACHABLE_MS`] ago. Confirmation is an ARP packet
//!   from the neighbour, or routed traffic from it (port security makes its source address
//!   and MAC trustworthy).
//! - **stale**: confirmed longer ago; still used. When a stale entry is used, one worker at a
//!   time sends a unicast ARP request to re-confirm it (every [`RETRANSMIT_MS`], at most
//!   [`MAX_PROBES`]); if none is answered the entry is dropped and the next packet resolves
//!   it afresh (with a broadcast).
//! - **gone**: [`Neighbors::sweep`] removes entries neither confirmed nor used for
//!   [`GC_MS`], failed ones, and those whose subnet left the configuration.
//!
//! Concurrency: [`SHARDS`] shards of `RwLock<HashMap>`. Every per-packet operation on an
//! existing entry (resolve, refresh, claim a probe) takes a shard's read lock and works on
//! the entry's atomics (the MAC and the resolved bit share one `AtomicU64`). Only creating
//! and removing entries take a write lock. Retransmissions are claimed with a compare-and-swap
//! on the probe counter, so two workers never send the same request.
//!
//! Time is a `u64` of milliseconds from the engine's clock, passed in (tests use a fake one).

use std::collections::HashMap;
use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use super::snapshot::{Snapshot, SubnetId};

/// A confirmed neighbour stays reachable this long (Linux `base_reachable_time`: 30 s).
pub const REACHABLE_MS: u64 = 30_000;

/// Interval between ARP requests for one neighbour (Linux `retrans_time`: 1 s).
pub const RETRANSMIT_MS: u64 = 1_000;

/// Requests sent before resolution (or re-confirmation) is given up (Linux `mcast_solicit`
/// and `ucast_solicit`: 3).
pub const MAX_PROBES: u32 = 3;

/// An entry neither confirmed nor used for this long is removed (Linux `gc_stale_time` is
/// 60 s; we keep entries as long as learned MACs, 300 s).
pub const GC_MS: u64 = 300_000;

/// Default bound on the number of entries (Linux `gc_thresh3` is 1024 per table; ours spans
/// every subnet of the node).
pub const DEFAULT_LIMIT: usize = 16_384;

/// Number of shards; a power of two.
pub const SHARDS: usize = 16;

/// Timestamps move only by at least this much, so a busy neighbour does not make every
/// packet write a shared cache line.
const TOUCH_MS: u64 = 100;

/// Bit 48 of [`Entry::link`]: the entry has a MAC.
const RESOLVED: u64 = 1 << 48;

/// The state of a neighbour, as [`Neighbors::entries`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighborState {
    /// ARP sent, no answer yet.
    Incomplete,
    /// Confirmed within [`REACHABLE_MS`].
    Reachable,
    /// Confirmed longer ago; used, and re-confirmed when used.
    Stale,
}

impl NeighborState {
    /// `incomplete`, `reachable` or `stale`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NeighborState::Incomplete => "Incomplete",
            NeighborState::Reachable => "Reachable",
            NeighborState::Stale => "Stale",
        }
    }
}

/// What forwarding a packet to a neighbour should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Send to `mac`. With `probe`, the entry is stale and this caller should send a unicast
    /// ARP request to re-confirm it (no other caller was told to).
    Known {
        /// The neighbour's MAC.
        mac: [u8; 6],
        /// Send a unicast ARP request to `mac`.
        probe: bool,
    },
    /// Not resolved: hold the packet. With `solicit`, this caller should broadcast an ARP
    /// request now (no other caller was told to).
    Unresolved {
        /// Broadcast an ARP request.
        solicit: bool,
    },
    /// The table is full: the neighbour cannot be resolved now.
    TableFull,
}

/// What a held packet's worker should do for its next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solicit {
    /// Resolved: release the packets to this MAC.
    Resolved([u8; 6]),
    /// Broadcast an ARP request now.
    Send,
    /// A request is out; wait.
    Wait,
}

/// What an ARP packet (or routed traffic) from a neighbour did to its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// A new entry was created.
    Created,
    /// An incomplete entry got its MAC: packets held for it can go.
    Resolved,
    /// The entry was confirmed with the MAC it had.
    Refreshed,
    /// The entry's MAC changed (the address moved to another interface).
    Changed,
    /// Nothing: no entry and none was to be created, or the table is full.
    Ignored,
}

/// One entry, as listed by [`Neighbors::entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborEntry {
    /// The subnet (L2 segment).
    pub subnet: SubnetId,
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its MAC, when resolved.
    pub mac: Option<[u8; 6]>,
    /// Its state.
    pub state: NeighborState,
    /// Milliseconds since it was last confirmed (since the first request while incomplete).
    pub age_ms: u64,
}

type Key = (SubnetId, IpAddr);

#[derive(Debug)]
struct Entry {
    /// `RESOLVED | mac` once resolved, 0 while incomplete.
    link: AtomicU64,
    /// Last confirmation (creation while incomplete).
    confirmed_ms: AtomicU64,
    /// Last time a packet was sent to it.
    used_ms: AtomicU64,
    /// Last request or probe sent.
    probe_ms: AtomicU64,
    /// Requests or probes sent since the last confirmation.
    probes: AtomicU32,
}

fn pack(mac: [u8; 6]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[2..].copy_from_slice(&mac);
    RESOLVED | u64::from_be_bytes(bytes)
}

fn unpack(link: u64) -> Option<[u8; 6]> {
    if link & RESOLVED == 0 {
        return None;
    }
    let bytes = link.to_be_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[2..]);
    Some(mac)
}

/// Stores `now` into `stamp` when it moved by at least [`TOUCH_MS`].
#[inline]
fn touch(stamp: &AtomicU64, now: u64) {
    if now.saturating_sub(stamp.load(Ordering::Relaxed)) >= TOUCH_MS {
        stamp.store(now, Ordering::Relaxed);
    }
}

/// The outcome of trying to claim the next request for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// This caller sends the next request.
    Claimed,
    /// Too early, or another caller claimed it.
    NotDue,
    /// [`MAX_PROBES`] requests went unanswered.
    Exhausted,
}

impl Entry {
    fn incomplete(now: u64) -> Entry {
        Entry {
            link: AtomicU64::new(0),
            confirmed_ms: AtomicU64::new(now),
            used_ms: AtomicU64::new(now),
            probe_ms: AtomicU64::new(now),
            probes: AtomicU32::new(1),
        }
    }

    fn resolved(mac: [u8; 6], now: u64) -> Entry {
        Entry {
            link: AtomicU64::new(pack(mac)),
            confirmed_ms: AtomicU64::new(now),
            used_ms: AtomicU64::new(now),
            probe_ms: AtomicU64::new(0),
            probes: AtomicU32::new(0),
        }
    }

    fn mac(&self) -> Option<[u8; 6]> {
        unpack(self.link.load(Ordering::Relaxed))
    }

    fn is_stale(&self, now: u64) -> bool {
        now.saturating_sub(self.confirmed_ms.load(Ordering::Relaxed)) >= REACHABLE_MS
    }

    /// The next request is due (the first one at once) and this caller gets to send it.
    fn claim(&self, now: u64) -> Claim {
        let probes = self.probes.load(Ordering::Relaxed);
        let last = self.probe_ms.load(Ordering::Relaxed);
        if probes > 0 && now.saturating_sub(last) < RETRANSMIT_MS {
            return Claim::NotDue;
        }
        if probes >= MAX_PROBES {
            return Claim::Exhausted;
        }
        // Whoever moves the counter sends: a second caller's exchange fails.
        if self
            .probes
            .compare_exchange(probes, probes + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Claim::NotDue;
        }
        self.probe_ms.store(now, Ordering::Relaxed);
        Claim::Claimed
    }

    /// Resolution (or re-confirmation) has failed: an incomplete entry older than
    /// [`MAX_PROBES`] retransmit intervals, or a resolved one whose last probe went unanswered.
    fn failed(&self, now: u64) -> bool {
        if self.mac().is_none() {
            let started = self.confirmed_ms.load(Ordering::Relaxed);
            return now.saturating_sub(started) >= u64::from(MAX_PROBES) * RETRANSMIT_MS;
        }
        self.probes.load(Ordering::Relaxed) >= MAX_PROBES
            && now.saturating_sub(self.probe_ms.load(Ordering::Relaxed)) >= RETRANSMIT_MS
    }

    /// Starts a failed resolution over, with one request sent by this caller; false when
    /// another caller did it first.
    fn restart(&self, now: u64) -> bool {
        let started = self.confirmed_ms.load(Ordering::Relaxed);
        let claimed = self
            .confirmed_ms
            .compare_exchange(started, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if claimed {
            self.probes.store(1, Ordering::Relaxed);
            self.probe_ms.store(now, Ordering::Relaxed);
        }
        claimed
    }

    /// What [`Neighbors::resolve`] answers for this entry; `None` when it is a resolved entry
    /// whose re-confirmation failed (to be removed).
    fn resolution(&self, now: u64) -> Option<Resolution> {
        let Some(mac) = self.mac() else {
            let solicit = if self.failed(now) {
                self.restart(now)
            } else {
                self.claim(now) == Claim::Claimed
            };
            return Some(Resolution::Unresolved { solicit });
        };
        touch(&self.used_ms, now);
        if !self.is_stale(now) {
            return Some(Resolution::Known { mac, probe: false });
        }
        match self.claim(now) {
            Claim::Claimed => Some(Resolution::Known { mac, probe: true }),
            Claim::NotDue => Some(Resolution::Known { mac, probe: false }),
            Claim::Exhausted => None,
        }
    }
}

/// One shard, keyed by foldhash (seeded per process and per map) rather than std's SipHash:
/// resolving a next hop is on every routed packet's path. See `fdb::Shard` for the choice.
type Shard = RwLock<HashMap<Key, Entry, foldhash::fast::RandomState>>;

/// The neighbour table shared by all workers.
#[derive(Debug)]
pub struct Neighbors {
    shards: Box<[Shard]>,
    len: AtomicUsize,
    limit: usize,
}

impl Default for Neighbors {
    fn default() -> Neighbors {
        Neighbors::new()
    }
}

#[inline]
fn shard_index(subnet: SubnetId, ip: IpAddr) -> usize {
    let bits = match ip {
        IpAddr::V4(ip) => u64::from(ip.to_bits()),
        IpAddr::V6(ip) => {
            let bits = ip.to_bits();
            // Folding keeps every bit of the address in the hash; the cast keeps the low half.
            #[allow(clippy::cast_possible_truncation)]
            let folded = (bits ^ (bits >> 64)) as u64;
            folded
        }
    };
    let word = (u64::from(subnet.0) << 32) ^ bits;
    let mixed = word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // SHARDS is 16: the shift leaves 4 bits, which always fit a usize.
    usize::try_from(mixed >> (64 - SHARDS.trailing_zeros())).unwrap_or(0) % SHARDS
}

impl Neighbors {
    /// An empty table with the [`DEFAULT_LIMIT`].
    pub fn new() -> Neighbors {
        Neighbors::with_limit(DEFAULT_LIMIT)
    }

    /// An empty table holding at most `limit` entries.
    pub fn with_limit(limit: usize) -> Neighbors {
        Neighbors {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            len: AtomicUsize::new(0),
            limit,
        }
    }

    #[inline]
    fn shard(&self, subnet: SubnetId, ip: IpAddr) -> &Shard {
        &self.shards[shard_index(subnet, ip)]
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts `entry` unless the key exists (another worker won) or the table is full;
    /// returns whether it was inserted.
    fn insert(&self, key: Key, entry: Entry) -> Result<bool, ()> {
        let mut table = self.shard(key.0, key.1).write();
        if table.contains_key(&key) {
            return Ok(false);
        }
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(());
        }
        table.insert(key, entry);
        Ok(true)
    }

    /// Removes the entry under `key` if `doomed` still holds for it under the write lock
    /// (another worker may have confirmed it meanwhile).
    fn remove_if(&self, key: Key, doomed: impl Fn(&Entry) -> bool) {
        let mut table = self.shard(key.0, key.1).write();
        if table.get(&key).is_some_and(doomed) {
            table.remove(&key);
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Where to send a packet whose next hop is `ip` on `subnet` (per packet, by the worker
    /// routing it). Marks a known entry used. An unknown neighbour gets an incomplete entry
    /// and the caller is told to solicit it.
    pub fn resolve(&self, subnet: SubnetId, ip: impl Into<IpAddr>, now: u64) -> Resolution {
        let ip = ip.into();
        let key = (subnet, ip);
        for _ in 0..2 {
            let found = {
                let table = self.shard(subnet, ip).read();
                table.get(&key).map(|entry| entry.resolution(now))
            };
            match found {
                Some(Some(resolution)) => return resolution,
                // A stale entry whose probes went unanswered: forget it, resolve afresh.
                Some(None) => self.remove_if(key, |entry| entry.failed(now)),
                None => {}
            }
            match self.insert(key, Entry::incomplete(now)) {
                Ok(true) => return Resolution::Unresolved { solicit: true },
                // Another worker created it meanwhile: look again.
                Ok(false) => continue,
                Err(()) => return Resolution::TableFull,
            }
        }
        Resolution::Unresolved { solicit: false }
    }

    /// What [`resolve`](Neighbors::resolve) would answer, changing nothing (the packet
    /// tracer's dry runs): the MAC when resolved; else unresolved, soliciting only when no
    /// request is out yet.
    pub fn peek(&self, subnet: SubnetId, ip: impl Into<IpAddr>) -> Resolution {
        let ip = ip.into();
        match self.shard(subnet, ip).read().get(&(subnet, ip)) {
            Some(entry) => match entry.mac() {
                Some(mac) => Resolution::Known { mac, probe: false },
                None => Resolution::Unresolved { solicit: false },
            },
            None => Resolution::Unresolved { solicit: true },
        }
    }

    /// For a worker holding packets for `ip` on `subnet`: the MAC once resolved, else whether
    /// to retransmit the request now. A failed (or vanished) resolution starts over.
    pub fn solicit(&self, subnet: SubnetId, ip: impl Into<IpAddr>, now: u64) -> Solicit {
        let ip = ip.into();
        match self.resolve(subnet, ip, now) {
            Resolution::Known { mac, .. } => Solicit::Resolved(mac),
            Resolution::Unresolved { solicit: true } => Solicit::Send,
            Resolution::Unresolved { solicit: false } | Resolution::TableFull => Solicit::Wait,
        }
    }

    /// The MAC of `ip` on `subnet` if resolved (any state); no side effect.
    pub fn lookup(&self, subnet: SubnetId, ip: impl Into<IpAddr>) -> Option<[u8; 6]> {
        let ip = ip.into();
        self.shard(subnet, ip).read().get(&(subnet, ip))?.mac()
    }

    /// Records that `ip` on `subnet` is at `mac` (an ARP packet from it, or routed traffic
    /// from it). A missing entry is created only with `create` (the packet was for us, as
    /// Linux creates entries only from ARP that targets it); an existing one is always
    /// updated.
    pub fn confirm(
        &self,
        subnet: SubnetId,
        ip: impl Into<IpAddr>,
        mac: [u8; 6],
        now: u64,
        create: bool,
    ) -> Confirmation {
        let ip = ip.into();
        let key = (subnet, ip);
        let link = pack(mac);
        {
            let table = self.shard(subnet, ip).read();
            if let Some(entry) = table.get(&key) {
                // Routed traffic confirms its sender per packet: write nothing that did not
                // change, so workers do not bounce the entry's cache line.
                let before = entry.link.load(Ordering::Relaxed);
                if before == link {
                    touch(&entry.confirmed_ms, now);
                } else {
                    entry.link.store(link, Ordering::Relaxed);
                    entry.confirmed_ms.store(now, Ordering::Relaxed);
                }
                if entry.probes.load(Ordering::Relaxed) != 0 {
                    entry.probes.store(0, Ordering::Relaxed);
                }
                return if before == link {
                    Confirmation::Refreshed
                } else if before & RESOLVED == 0 {
                    Confirmation::Resolved
                } else {
                    Confirmation::Changed
                };
            }
        }
        if !create {
            return Confirmation::Ignored;
        }
        match self.insert(key, Entry::resolved(mac, now)) {
            Ok(true) => Confirmation::Created,
            // Another worker created it meanwhile (incomplete, most likely): update it.
            Ok(false) => self.confirm(subnet, ip, mac, now, false),
            Err(()) => Confirmation::Ignored,
        }
    }

    /// Removes entries whose subnet (or uplink segment) left the configuration, failed ones,
    /// resolved ones
    /// neither confirmed nor used for [`GC_MS`], and resolved ones that contradict the
    /// configuration (the address now belongs to a port with another MAC: an address reused
    /// after a detach); returns how many. Run it periodically, not per packet (it allocates).
    pub fn sweep(&self, snapshot: &Snapshot, now: u64) -> usize {
        let owners: HashMap<Key, [u8; 6]> = snapshot
            .ports()
            .iter()
            .flat_map(|port| {
                let v4 = port.ips.iter().map(|&ip| IpAddr::V4(ip));
                let v6 = port.ips6.iter().map(|&ip| IpAddr::V6(ip));
                v4.chain(v6).map(|ip| ((port.subnet, ip), port.mac))
            })
            .collect();
        // The uplink's reserved segment has no SubnetEntry but keeps its neighbours.
        let uplink = snapshot.uplink.as_ref().map(|uplink| uplink.segment);
        let doomed = |key: &Key, entry: &Entry| {
            let segment_gone = snapshot.subnet(key.0).is_none() && Some(key.0) != uplink;
            if segment_gone || entry.failed(now) {
                return true;
            }
            let Some(mac) = entry.mac() else {
                return false;
            };
            if owners.get(key).is_some_and(|owner| *owner != mac) {
                return true;
            }
            let last = entry
                .confirmed_ms
                .load(Ordering::Relaxed)
                .max(entry.used_ms.load(Ordering::Relaxed));
            now.saturating_sub(last) >= GC_MS
        };
        let mut removed = 0;
        for shard in self.shards.iter() {
            if !shard.read().iter().any(|(key, entry)| doomed(key, entry)) {
                continue;
            }
            let mut table = shard.write();
            let before = table.len();
            table.retain(|key, entry| !doomed(key, entry));
            removed += before - table.len();
        }
        self.len.fetch_sub(removed, Ordering::AcqRel);
        removed
    }

    /// Every entry with its state at `now` (for the API; allocates).
    pub fn entries(&self, now: u64) -> Vec<NeighborEntry> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (&(subnet, ip), entry) in shard.read().iter() {
                let mac = entry.mac();
                let state = match mac {
                    None => NeighborState::Incomplete,
                    Some(_) if entry.is_stale(now) => NeighborState::Stale,
                    Some(_) => NeighborState::Reachable,
                };
                out.push(NeighborEntry {
                    subnet,
                    ip,
                    mac,
                    state,
                    age_ms: now.saturating_sub(entry.confirmed_ms.load(Ordering::Relaxed)),
                });
            }
        }
        out
    }

    /// The state of one entry at `now` (tests and diagnostics).
    pub fn state(
        &self,
        subnet: SubnetId,
        ip: impl Into<IpAddr>,
        now: u64,
    ) -> Option<NeighborState> {
        let ip = ip.into();
        let table = self.shard(subnet, ip).read();
        let entry = table.get(&(subnet, ip))?;
        Some(match entry.mac() {
            None => NeighborState::Incomplete,
            Some(_) if entry.is_stale(now) => NeighborState::Stale,
            Some(_) => NeighborState::Reachable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::fixtures::snapshot;

    const SUBNET: SubnetId = SubnetId(1);
    const HOST: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];

    #[test]
    fn mac_packing_round_trips() {
        assert_eq!(unpack(pack(MAC)), Some(MAC));
        assert_eq!(
            unpack(pack([0; 6])),
            Some([0; 6]),
            "resolved to zeros is still resolved"
        );
        assert_eq!(unpack(0), None);
    }

    #[test]
    fn lifecycle_incomplete_reachable_stale_gone() {
        let table = Neighbors::new();
        let snapshot = snapshot();
        // First packet: an incomplete entry, and this caller solicits.
        assert_eq!(
            table.resolve(SUBNET, HOST, 1_000),
            Resolution::Unresolved { solicit: true }
        );
        assert_eq!(
            table.state(SUBNET, HOST, 1_000),
            Some(NeighborState::Incomplete)
        );
        // More packets before the retransmit interval: hold, do not solicit again.
        assert_eq!(
            table.resolve(SUBNET, HOST, 1_500),
            Resolution::Unresolved { solicit: false }
        );
        assert_eq!(table.lookup(SUBNET, HOST), None);
        // The answer.
        assert_eq!(
            table.confirm(SUBNET, HOST, MAC, 1_600, true),
            Confirmation::Resolved
        );
        assert_eq!(table.lookup(SUBNET, HOST), Some(MAC));
        assert_eq!(
            table.resolve(SUBNET, HOST, 2_000),
            Resolution::Known {
                mac: MAC,
                probe: false
            }
        );
        assert_eq!(
            table.state(SUBNET, HOST, 1_600 + REACHABLE_MS - 1),
            Some(NeighborState::Reachable)
        );
        let stale_at = 1_600 + REACHABLE_MS;
        assert_eq!(
            table.state(SUBNET, HOST, stale_at),
            Some(NeighborState::Stale)
        );
        // Used while stale: one probe, claimed once.
        assert_eq!(
            table.resolve(SUBNET, HOST, stale_at),
            Resolution::Known {
                mac: MAC,
                probe: true
            }
        );
        assert_eq!(
            table.resolve(SUBNET, HOST, stale_at + 10),
            Resolution::Known {
                mac: MAC,
                probe: false
            }
        );
        // Its answer makes it reachable again.
        assert_eq!(
            table.confirm(SUBNET, HOST, MAC, stale_at + 20, false),
            Confirmation::Refreshed
        );
        assert_eq!(
            table.state(SUBNET, HOST, stale_at + 20),
            Some(NeighborState::Reachable)
        );
        // Unused and unconfirmed for GC_MS: swept.
        assert_eq!(table.sweep(&snapshot, stale_at + 20 + GC_MS - 1), 0);
        assert_eq!(table.sweep(&snapshot, stale_at + 20 + GC_MS), 1);
        assert!(table.is_empty());
        assert_eq!(table.state(SUBNET, HOST, stale_at + 20 + GC_MS), None);
    }

    #[test]
    fn retransmits_then_fails_then_starts_over() {
        let table = Neighbors::new();
        let snapshot = snapshot();
        assert_eq!(
            table.resolve(SUBNET, HOST, 0),
            Resolution::Unresolved { solicit: true }
        );
        assert_eq!(table.solicit(SUBNET, HOST, 999), Solicit::Wait);
        assert_eq!(table.solicit(SUBNET, HOST, 1_000), Solicit::Send);
        assert_eq!(
            table.solicit(SUBNET, HOST, 1_000),
            Solicit::Wait,
            "claimed once"
        );
        assert_eq!(table.solicit(SUBNET, HOST, 2_000), Solicit::Send);
        assert_eq!(table.solicit(SUBNET, HOST, 2_500), Solicit::Wait);
        // Three requests went out (0, 1 s, 2 s): failed from 3 s on.
        assert_eq!(table.sweep(&snapshot, 2_999), 0);
        let entries = table.entries(2_999);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].state, NeighborState::Incomplete);
        assert_eq!(entries[0].mac, None);
        // A new packet after the failure starts over with a fresh request.
        assert_eq!(
            table.resolve(SUBNET, HOST, 3_000),
            Resolution::Unresolved { solicit: true }
        );
        assert_eq!(table.sweep(&snapshot, 3_500), 0, "not failed any more");
        assert_eq!(table.sweep(&snapshot, 6_000), 1, "failed again, swept");
    }

    #[test]
    fn unanswered_probes_of_a_stale_entry_drop_it() {
        let table = Neighbors::new();
        table.confirm(SUBNET, HOST, MAC, 0, true);
        let t = REACHABLE_MS;
        let probed = |now| table.resolve(SUBNET, HOST, now);
        assert_eq!(
            probed(t),
            Resolution::Known {
                mac: MAC,
                probe: true
            }
        );
        assert_eq!(
            probed(t + 1_000),
            Resolution::Known {
                mac: MAC,
                probe: true
            }
        );
        assert_eq!(
            probed(t + 2_000),
            Resolution::Known {
                mac: MAC,
                probe: true
            }
        );
        assert_eq!(
            probed(t + 2_500),
            Resolution::Known {
                mac: MAC,
                probe: false
            }
        );
        // Three probes unanswered: forgotten, resolved afresh with a broadcast.
        assert_eq!(probed(t + 3_000), Resolution::Unresolved { solicit: true });
        assert_eq!(table.lookup(SUBNET, HOST), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn confirm_creates_only_when_asked_and_tracks_moves() {
        let table = Neighbors::new();
        assert_eq!(
            table.confirm(SUBNET, HOST, MAC, 0, false),
            Confirmation::Ignored
        );
        assert!(table.is_empty());
        assert_eq!(
            table.confirm(SUBNET, HOST, MAC, 0, true),
            Confirmation::Created
        );
        assert_eq!(
            table.confirm(SUBNET, HOST, MAC, 5, false),
            Confirmation::Refreshed
        );
        assert_eq!(
            table.confirm(SUBNET, HOST, OTHER_MAC, 10, false),
            Confirmation::Changed
        );
        assert_eq!(table.lookup(SUBNET, HOST), Some(OTHER_MAC));
        // Subnets are separate tables.
        assert_eq!(table.lookup(SubnetId(2), HOST), None);
    }

    #[test]
    fn use_keeps_an_entry_alive() {
        let table = Neighbors::new();
        let snapshot = snapshot();
        table.confirm(SUBNET, HOST, MAC, 0, true);
        // Used (and re-confirmed by its probes' answers) keeps it; here: used only.
        table.resolve(SUBNET, HOST, GC_MS - 1);
        assert_eq!(table.sweep(&snapshot, GC_MS), 0);
        assert_eq!(table.sweep(&snapshot, 2 * GC_MS), 1);
    }

    #[test]
    fn an_address_now_owned_by_another_port_is_swept() {
        let table = Neighbors::new();
        // 172.30.0.3 is port 2's address, with MAC_B; an entry saying MAC_C is outdated.
        table.confirm(SUBNET, HOST, OTHER_MAC, 0, true);
        table.confirm(
            SUBNET,
            Ipv4Addr::new(172, 30, 0, 2),
            [0x02, 0, 0, 0, 0, 0x0a],
            0,
            true,
        );
        assert_eq!(table.sweep(&snapshot(), 1), 1);
        assert_eq!(table.lookup(SUBNET, HOST), None);
        assert_eq!(table.len(), 1, "the consistent entry stays");
    }

    #[test]
    fn the_uplink_segment_keeps_its_neighbours() {
        use crate::port::{Capabilities, PortId, PortIo, PortKind};
        use crate::tables::snapshot::UplinkEntry;

        let segment = SubnetId(9_999);
        let uplink = UplinkEntry {
            id: PortId(4_000),
            name: "uplink".into(),
            ifname: "eth0".into(),
            mac: MAC,
            addresses: Vec::new(),
            gateway: Ipv4Addr::new(192, 0, 2, 1),
            mtu: 1500,
            segment,
            io: std::sync::Arc::new(crate::tables::snapshot::UplinkIo::single(
                PortId(4_000),
                "uplink",
                "eth0",
                PortIo {
                    kind: PortKind::Tap,
                    queues: Vec::new(),
                    capabilities: Capabilities::default(),
                    host_ifname: None,
                },
            )),
            routing: Default::default(),
            vlans: std::collections::HashMap::new(),
            ipv6: None,
        };
        let table = Neighbors::new();
        table.confirm(segment, Ipv4Addr::new(192, 0, 2, 1), MAC, 0, true);
        assert_eq!(table.sweep(&snapshot().with_uplink(Some(uplink)), 1), 0);
        assert_eq!(table.sweep(&snapshot(), 1), 1, "gone with the uplink");
    }

    #[test]
    fn entries_of_removed_subnets_are_swept() {
        let table = Neighbors::new();
        table.confirm(SubnetId(99), HOST, MAC, 0, true);
        table.confirm(SUBNET, HOST, MAC, 0, true);
        assert_eq!(table.sweep(&snapshot(), 1), 1);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn limit_is_enforced() {
        let table = Neighbors::with_limit(2);
        for last in 1..=2u8 {
            let ip = Ipv4Addr::new(10, 0, 0, last);
            assert_eq!(
                table.resolve(SUBNET, ip, 0),
                Resolution::Unresolved { solicit: true }
            );
        }
        let third = Ipv4Addr::new(10, 0, 0, 3);
        assert_eq!(table.resolve(SUBNET, third, 0), Resolution::TableFull);
        assert_eq!(
            table.confirm(SUBNET, third, MAC, 0, true),
            Confirmation::Ignored
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn concurrent_resolvers_solicit_once() {
        let table = std::sync::Arc::new(Neighbors::new());
        let solicits: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let table = std::sync::Arc::clone(&table);
                    scope.spawn(move || {
                        (0..100)
                            .filter(|_| {
                                table.resolve(SUBNET, HOST, 7)
                                    == Resolution::Unresolved { solicit: true }
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(solicits, 1);
    }
}
