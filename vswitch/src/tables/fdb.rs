//! Learned MACs: `(SubnetId, MAC) -> (PortId, last_seen)`, shared by all workers.
//!
//! The table is split into [`SHARDS`] shards, each a `parking_lot::RwLock<HashMap>`. The common
//! case — a frame from a MAC already learned on the same port — takes a shard's read lock and
//! refreshes `last_seen` with a relaxed atomic store (only when the millisecond changed, so a
//! busy MAC does not bounce a cache line per frame). A new MAC or a MAC that moved to another
//! port takes the shard's write lock; both are rare.
//!
//! Ageing follows the subnet's `mac_ageing` (default 300 s): an entry is alive while
//! `now - last_seen < ageing` and gone from the moment `now - last_seen == ageing`. Lookups
//! and learning apply that rule themselves, so the periodic [`Fdb::sweep`] only frees memory.
//!
//! The per-subnet limit (`mac_limit`, default 8192) counts entries, live or not yet swept.
//! When it is reached nothing new is learned ([`Learn::LimitReached`]); frames to unknown
//! MACs flood, as they would anyway.
//!
//! Time is a `u64` of milliseconds from the engine's [`Clock`](super::clock::Clock), passed in.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use super::clock::millis;
use super::snapshot::{Snapshot, SubnetEntry, SubnetId};
use crate::port::PortId;

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;

/// What learning a source MAC did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// The MAC was known on this port; its age was reset.
    Refreshed,
    /// The MAC is new in the subnet.
    Learned,
    /// The MAC was known on another port and now points here.
    Moved {
        /// The port it was learned on before.
        from: PortId,
    },
    /// The subnet's table is full: the MAC was not learned.
    LimitReached,
    /// Group (multicast/broadcast) addresses are never learned.
    NotUnicast,
}

/// One learned MAC, as listed by [`Fdb::entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The subnet (L2 segment).
    pub subnet: SubnetId,
    /// The MAC.
    pub mac: [u8; 6],
    /// Where frames to it go.
    pub port: PortId,
    /// Milliseconds since a frame from it was last seen.
    pub age_ms: u64,
}

type Key = (SubnetId, [u8; 6]);

#[derive(Debug)]
struct Entry {
    port: PortId,
    last_seen: AtomicU64,
}

/// One shard. Keyed by foldhash rather than std's SipHash: a MAC lookup is on every frame's
/// path, and foldhash is several times faster on small keys. Its [`RandomState`] takes a
/// per-process random seed and a per-map one, so keys that collide cannot be precomputed
/// (foldhash is only "minimally DoS-resistant": it does not claim to resist an attacker who
/// studies the switch's timing to recover the seed).
///
/// [`RandomState`]: foldhash::fast::RandomState
type Shard = RwLock<HashMap<Key, Entry, foldhash::fast::RandomState>>;

/// The learned-MAC table shared by all workers.
#[derive(Debug)]
pub struct Fdb {
    shards: Box<[Shard]>,
    /// Entries per subnet, for the limit. Read-locked to find a subnet's counter; write-locked
    /// only the first time a subnet learns anything.
    counts: RwLock<HashMap<SubnetId, Arc<AtomicUsize>>>,
    /// Bumped whenever an entry is added, moved or removed (for per-worker caches).
    generation: AtomicU64,
}

impl Default for Fdb {
    fn default() -> Fdb {
        Fdb::new()
    }
}

/// True for group addresses (the I/G bit; broadcast included).
#[inline]
pub fn is_group(mac: [u8; 6]) -> bool {
    mac[0] & 0x01 != 0
}

#[inline]
fn expired(last_seen: u64, now: u64, ageing_ms: u64) -> bool {
    now.saturating_sub(last_seen) >= ageing_ms
}

#[inline]
fn shard_index(subnet: SubnetId, mac: [u8; 6]) -> usize {
    let mut bytes = [0u8; 8];
    bytes[..6].copy_from_slice(&mac);
    let word = u64::from_le_bytes(bytes) ^ (u64::from(subnet.0) << 48).rotate_left(7);
    // Fibonacci hashing: the top bits of the product mix every input bit.
    let mixed = word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // SHARDS is 64, so the shift leaves 6 bits, which always fit a usize.
    usize::try_from(mixed >> (64 - SHARDS.trailing_zeros())).unwrap_or(0) % SHARDS
}

impl Fdb {
    /// An empty table.
    pub fn new() -> Fdb {
        Fdb {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            counts: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    #[inline]
    fn shard(&self, subnet: SubnetId, mac: [u8; 6]) -> &Shard {
        &self.shards[shard_index(subnet, mac)]
    }

    /// Bumped on every insert, move and removal: a cache keyed by it is valid while it stays.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Learns that `mac` sends from `port` in `subnet` at `now_ms`.
    pub fn learn(&self, subnet: &SubnetEntry, mac: [u8; 6], port: PortId, now_ms: u64) -> Learn {
        if is_group(mac) {
            return Learn::NotUnicast;
        }
        let key = (subnet.id, mac);
        let shard = self.shard(subnet.id, mac);
        {
            let table = shard.read();
            match table.get(&key) {
                Some(entry) if entry.port == port => {
                    refresh(entry, now_ms);
                    return Learn::Refreshed;
                }
                Some(_) => {}
                // A full table refuses without the write lock, so a port sending from many
                // new MACs cannot make every frame take it.
                None if self.subnet_len(subnet.id) >= subnet.mac_limit => {
                    return Learn::LimitReached;
                }
                None => {}
            }
        }
        // New or moved: the slow path.
        let mut table = shard.write();
        if let Some(entry) = table.get_mut(&key) {
            if entry.port == port {
                refresh(entry, now_ms);
                return Learn::Refreshed;
            }
            let from = entry.port;
            entry.port = port;
            entry.last_seen.store(now_ms, Ordering::Relaxed);
            drop(table);
            self.bump();
            return Learn::Moved { from };
        }
        let counter = self.counter(subnet.id);
        if counter.fetch_add(1, Ordering::AcqRel) >= subnet.mac_limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Learn::LimitReached;
        }
        table.insert(
            key,
            Entry {
                port,
                last_seen: AtomicU64::new(now_ms),
            },
        );
        drop(table);
        self.bump();
        Learn::Learned
    }

    fn counter(&self, subnet: SubnetId) -> Arc<AtomicUsize> {
        if let Some(counter) = self.counts.read().get(&subnet) {
            return Arc::clone(counter);
        }
        Arc::clone(self.counts.write().entry(subnet).or_default())
    }

    fn release(&self, subnet: SubnetId, removed: usize) {
        if removed == 0 {
            return;
        }
        if let Some(counter) = self.counts.read().get(&subnet) {
            counter.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    /// The port `mac` was learned on in `subnet`, unless it aged out.
    #[inline]
    pub fn lookup(&self, subnet: &SubnetEntry, mac: [u8; 6], now_ms: u64) -> Option<PortId> {
        let ageing_ms = millis(subnet.mac_ageing);
        let table = self.shard(subnet.id, mac).read();
        let entry = table.get(&(subnet.id, mac))?;
        if expired(entry.last_seen.load(Ordering::Relaxed), now_ms, ageing_ms) {
            None
        } else {
            Some(entry.port)
        }
    }

    /// Forgets every MAC learned on `port` (before the port id is reused); returns how many.
    pub fn forget_port(&self, port: PortId) -> usize {
        self.remove_where(|_, entry| entry.port == port)
    }

    /// Removes entries that aged out, and entries whose subnet or port left the configuration
    /// (or whose port moved to another subnet); returns how many. Run it periodically, not per
    /// packet.
    pub fn sweep(&self, snapshot: &Snapshot, now_ms: u64) -> usize {
        self.remove_where(|key, entry| {
            let Some(subnet) = snapshot.subnet(key.0) else {
                return true;
            };
            let port_here = snapshot
                .port(entry.port)
                .is_some_and(|port| port.subnet == key.0);
            !port_here
                || expired(
                    entry.last_seen.load(Ordering::Relaxed),
                    now_ms,
                    millis(subnet.mac_ageing),
                )
        })
    }

    /// Removes the entries `doomed` selects: a read-locked pass finds whether a shard has any,
    /// and only those shards are write-locked.
    fn remove_where(&self, doomed: impl Fn(&Key, &Entry) -> bool) -> usize {
        let mut removed_per_subnet: HashMap<SubnetId, usize> = HashMap::new();
        for shard in self.shards.iter() {
            if !shard.read().iter().any(|(key, entry)| doomed(key, entry)) {
                continue;
            }
            shard.write().retain(|key, entry| {
                let remove = doomed(key, entry);
                if remove {
                    *removed_per_subnet.entry(key.0).or_default() += 1;
                }
                !remove
            });
        }
        let mut total = 0;
        for (subnet, removed) in removed_per_subnet {
            self.release(subnet, removed);
            total += removed;
        }
        if total > 0 {
            self.bump();
        }
        total
    }

    /// Every entry that has not aged out by `now_ms` in a subnet of `snapshot` (for the API;
    /// allocates).
    pub fn entries(&self, snapshot: &Snapshot, now_ms: u64) -> Vec<FdbEntry> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (key, entry) in shard.read().iter() {
                let Some(subnet) = snapshot.subnet(key.0) else {
                    continue;
                };
                let last_seen = entry.last_seen.load(Ordering::Relaxed);
                if expired(last_seen, now_ms, millis(subnet.mac_ageing)) {
                    continue;
                }
                out.push(FdbEntry {
                    subnet: key.0,
                    mac: key.1,
                    port: entry.port,
                    age_ms: now_ms.saturating_sub(last_seen),
                });
            }
        }
        out.sort_by_key(|e| (e.subnet, e.mac));
        out
    }

    /// Number of entries stored (live or not yet swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries stored for `subnet` (what the limit counts).
    pub fn subnet_len(&self, subnet: SubnetId) -> usize {
        self.counts
            .read()
            .get(&subnet)
            .map_or(0, |counter| counter.load(Ordering::Acquire))
    }
}

/// Moves `last_seen` forward to `now_ms`; a store only when the value changes, so frames in
/// the same millisecond do not write the shared line.
#[inline]
fn refresh(entry: &Entry, now_ms: u64) {
    if entry.last_seen.load(Ordering::Relaxed) < now_ms {
        entry.last_seen.store(now_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tables::clock::{Clock, FakeClock};
    use crate::tables::fixtures::{MAC_A, MAC_B, snapshot, snapshot_with_limit};

    const BLUE: SubnetId = SubnetId(1);
    const RED: SubnetId = SubnetId(2);

    fn mac(n: u16) -> [u8; 6] {
        let [high, low] = n.to_be_bytes();
        [0x02, 0x42, 0, 0, high, low]
    }

    #[test]
    fn learn_then_lookup() {
        let snapshot = snapshot();
        let blue = snapshot.subnet(BLUE).unwrap();
        let fdb = Fdb::new();
        assert_eq!(fdb.lookup(blue, MAC_A, 0), None);
        assert_eq!(fdb.learn(blue, MAC_A, PortId(1), 0), Learn::Learned);
        assert_eq!(fdb.lookup(blue, MAC_A, 0), Some(PortId(1)));
        assert_eq!(fdb.learn(blue, MAC_A, PortId(1), 10), Learn::Refreshed);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.subnet_len(BLUE), 1);
    }

    #[test]
    fn subnets_are_separate_tables() {
        let snapshot = snapshot();
        let (blue, red) = (
            snapshot.subnet(BLUE).unwrap(),
            snapshot.subnet(RED).unwrap(),
        );
        let fdb = Fdb::new();
        fdb.learn(blue, MAC_A, PortId(1), 0);
        assert_eq!(fdb.lookup(red, MAC_A, 0), None);
        assert_eq!(fdb.learn(red, MAC_A, PortId(4), 0), Learn::Learned);
        assert_eq!(fdb.lookup(blue, MAC_A, 0), Some(PortId(1)));
        assert_eq!(fdb.lookup(red, MAC_A, 0), Some(PortId(4)));
    }

    #[test]
    fn group_addresses_are_not_learned() {
        let snapshot = snapshot();
        let blue = snapshot.subnet(BLUE).unwrap();
        let fdb = Fdb::new();
        assert_eq!(fdb.learn(blue, [0xff; 6], PortId(1), 0), Learn::NotUnicast);
        assert_eq!(
            fdb.learn(blue, [0x01, 0x00, 0x5e, 0, 0, 1], PortId(1), 0),
            Learn::NotUnicast
        );
        assert!(fdb.is_empty());
    }

    #[test]
    fn move_to_another_port() {
        let snapshot = snapshot();
        let blue = snapshot.subnet(BLUE).unwrap();
        let fdb = Fdb::new();
        fdb.learn(blue, MAC_A, PortId(1), 0);
        let generation = fdb.generation();
        assert_eq!(
            fdb.learn(blue, MAC_A, PortId(2), 5),
            Learn::Moved { from: PortId(1) }
        );
        assert!(fdb.generation() > generation);
        assert_eq!(fdb.lookup(blue, MAC_A, 5), Some(PortId(2)));
        assert_eq!(fdb.subnet_len(BLUE), 1, "a move does not add an entry");
    }

    #[test]
    fn ages_out_exactly_at_the_boundary() {
        let snapshot = snapshot();
        let blue = snapshot.subnet(BLUE).unwrap();
        assert_eq!(blue.mac_ageing, Duration::from_secs(300));
        let clock = FakeClock::new(1_000);
        let fdb = Fdb::new();
        fdb.learn(blue, MAC_A, PortId(1), clock.now_ms());
        clock.advance(Duration::from_millis(299_999));
        assert_eq!(fdb.lookup(blue, MAC_A, clock.now_ms()), Some(PortId(1)));
        assert_eq!(fdb.sweep(&snapshot, clock.now_ms()), 0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(fdb.lookup(blue, MAC_A, clock.now_ms()), None);
        assert!(fdb.entries(&snapshot, clock.now_ms()).is_empty());
        assert_eq!(fdb.sweep(&snapshot, clock.now_ms()), 1);
        assert!(fdb.is_empty());
        assert_eq!(fdb.subnet_len(BLUE), 0);
    }

    #[test]
    fn traffic_keeps_an_entry_alive() {
        let snapshot = snapshot();
        let blue = snapshot.subnet(BLUE).unwrap();
        let clock = FakeClock::new(0);
        let fdb = Fdb::new();
        fdb.learn(blue, MAC_A, PortId(1), clock.now_ms());
        for _ in 0..5 {
            clock.advance(Duration::from_secs(200));
            assert_eq!(
                fdb.learn(blue, MAC_A, PortId(1), clock.now_ms()),
                Learn::Refreshed
            );
        }
        clock.advance(Duration::from_secs(299));
        assert_eq!(fdb.lookup(blue, MAC_A, clock.now_ms()), Some(PortId(1)));
        let entries = fdb.entries(&snapshot, clock.now_ms());
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].age_ms, 299_000);
    }

    #[test]
    fn limit_stops_learning_and_counts() {
        let snapshot = snapshot_with_limit(3);
        let blue = snapshot.subnet(BLUE).unwrap();
        let red = snapshot.subnet(RED).unwrap();
        let fdb = Fdb::new();
        for n in 0..3 {
            assert_eq!(fdb.learn(blue, mac(n), PortId(1), 0), Learn::Learned);
        }
        assert_eq!(fdb.learn(blue, mac(3), PortId(1), 0), Learn::LimitReached);
        assert_eq!(fdb.lookup(blue, mac(3), 0), None);
        // Known MACs still refresh and move while full.
        assert_eq!(fdb.learn(blue, mac(0), PortId(1), 1), Learn::Refreshed);
        assert_eq!(
            fdb.learn(blue, mac(1), PortId(2), 1),
            Learn::Moved { from: PortId(1) }
        );
        // Another subnet has its own budget.
        assert_eq!(fdb.learn(red, mac(3), PortId(4), 0), Learn::Learned);
        // Ageing frees room.
        let later = 300_000;
        // mac(2) (blue) and mac(3) (red) were last seen at 0; mac(0) and mac(1) at 1.
        assert_eq!(fdb.sweep(&snapshot, later), 2);
        assert_eq!(fdb.learn(blue, mac(3), PortId(1), later), Learn::Learned);
        assert_eq!(fdb.subnet_len(BLUE), 3);
    }

    #[test]
    fn zero_limit_learns_nothing() {
        let snapshot = snapshot_with_limit(0);
        let blue = snapshot.subnet(BLUE).unwrap();
        let fdb = Fdb::new();
        assert_eq!(fdb.learn(blue, MAC_A, PortId(1), 0), Learn::LimitReached);
        assert_eq!(fdb.subnet_len(BLUE), 0);
    }

    #[test]
    fn forget_port() {
        let snapshot = snapshot();
        let blue = snapshot.subnet(BLUE).unwrap();
        let fdb = Fdb::new();
        for n in 0..100 {
            fdb.learn(blue, mac(n), PortId(1), 0);
        }
        fdb.learn(blue, MAC_B, PortId(2), 0);
        assert_eq!(fdb.forget_port(PortId(1)), 100);
        assert_eq!(fdb.lookup(blue, mac(7), 0), None);
        assert_eq!(fdb.lookup(blue, MAC_B, 0), Some(PortId(2)));
        assert_eq!(fdb.subnet_len(BLUE), 1);
        assert_eq!(fdb.forget_port(PortId(1)), 0);
    }

    #[test]
    fn sweep_drops_entries_of_departed_ports_and_subnets() {
        let full = snapshot();
        let blue = full.subnet(BLUE).unwrap();
        let fdb = Fdb::new();
        fdb.learn(blue, MAC_A, PortId(1), 0);
        fdb.learn(blue, MAC_B, PortId(2), 0);
        // An entry of blue that points at port 4 (a port of red) is stale.
        fdb.learn(blue, mac(9), PortId(4), 0);
        assert_eq!(fdb.sweep(&full, 1), 1);
        let empty = Snapshot::default();
        assert_eq!(fdb.sweep(&empty, 1), 2);
        assert!(fdb.is_empty());
    }

    #[test]
    fn shards_spread() {
        let mut used = [false; SHARDS];
        for n in 0..1024 {
            used[shard_index(BLUE, mac(n))] = true;
        }
        assert!(used.iter().filter(|&&u| u).count() > SHARDS / 2);
    }

    #[test]
    fn concurrent_learning_respects_the_limit() {
        let snapshot = Arc::new(snapshot_with_limit(500));
        let fdb = Arc::new(Fdb::new());
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let (snapshot, fdb) = (Arc::clone(&snapshot), Arc::clone(&fdb));
                std::thread::spawn(move || {
                    let blue = snapshot.subnet(BLUE).unwrap();
                    for n in 0..300u16 {
                        fdb.learn(blue, mac(t * 1000 + n), PortId(1), 0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(fdb.len(), 500);
        assert_eq!(fdb.subnet_len(BLUE), 500);
    }
}
