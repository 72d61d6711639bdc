//! ClientIP session affinity: which backend each client of a service was last sent to.
//!
//! # What and why
//! Kubernetes' `sessionAffinity: ClientIP` sends every connection of a client to the same
//! backend for `timeoutSeconds` (1..=86400, default 10800) after its last use. Maglev over
//! [`client_hash`](crate::client_hash) already does that while the backend set is stable;
//! this table keeps the promise across changes: when a backend is added, the clients that
//! Maglev would now move stay where they were until their entry expires.
//!
//! Key: (service id, client address); value: the [`BackendId`] (valid across table rebuilds)
//! and an expiry in seconds on the caller's monotonic clock. The crate reads no clock: every
//! call takes `now`.
//!
//! # Sharing between workers
//! One table serves all workers. It is split into [`SHARDS`] shards, each a
//! `parking_lot::RwLock` over a `HashMap` (keyed with foldhash, seeded per process, as in
//! nat's conntrack), picked by the key's hash. A **hit** takes one shard's *read* lock and
//! refreshes the expiry with an atomic store into the entry, only when the value grows
//! (once per second per client at most), so hits on one shard never wait for each other. A
//! miss followed by [`AffinityTable::insert`] takes one shard's write lock.
//!
//! Whoever uses an entry must check that its backend still takes new flows
//! ([`BackendTable::affinity_target`](crate::BackendTable::affinity_target)) and pick again
//! if not, so that clients are not pinned to a dead or draining backend (Kubernetes #71809,
//! Cilium #27096).
//!
//! # Bounded size and eviction
//! Each shard holds at most `ceil(max_entries / SHARDS)` entries, so the table holds at most
//! `max_entries + SHARDS − 1`. Inserting a new key into a full shard evicts one entry of that
//! shard: among the first [`EVICT_SCAN`] entries in the map's iteration order, the first
//! expired one, or else the one expiring soonest. Since every use pushes an entry's expiry
//! to `now + timeout`, "expiring soonest" is "least recently used" among entries of the
//! same timeout: an approximate LRU at a bounded cost. An evicted client loses nothing
//! while the backends are unchanged: Maglev over its address picks the same backend again.
//!
//! Expired entries are never returned; [`AffinityTable::purge_expired`] removes them in
//! bounded steps (a housekeeping thread calls it periodically).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::backend::BackendId;

/// Shards of the table (a power of two; the top bits of the key's hash pick one).
pub const SHARDS: usize = 64;

/// Entries looked at to choose an eviction victim.
pub const EVICT_SCAN: usize = 32;

/// Default capacity: Cilium's session-affinity map holds 64k clients.
pub const DEFAULT_MAX_ENTRIES: usize = 65_536;

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_TIMEOUT_SECS: u32 = 10_800;

/// Kubernetes' largest `timeoutSeconds` (one day).
pub const MAX_TIMEOUT_SECS: u32 = 86_400;

/// An affinity key: the service (vswitch's id for a load-balanced VIP and port) and the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The service.
    pub service: u32,
    /// The client's source address.
    pub client: IpAddr,
}

#[derive(Debug)]
struct Entry {
    backend: BackendId,
    /// Seconds on the caller's clock; the entry is dead when `expires_at <= now`.
    expires_at: AtomicU64,
}

impl Entry {
    fn expires_at(&self) -> u64 {
        self.expires_at.load(Ordering::Relaxed)
    }
}

type Map = HashMap<AffinityKey, Entry, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
#[repr(align(64))] // One cache line per shard lock: no false sharing between shards.
struct Shard {
    map: RwLock<Map>,
}

/// What [`AffinityTable::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new entry.
    Inserted,
    /// The key had an entry (live or expired); it now names the new backend.
    Replaced,
    /// A new entry, after evicting another from its full shard.
    Evicted,
}

/// What one [`AffinityTable::purge_expired`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purge {
    /// Entries examined.
    pub examined: usize,
    /// Expired entries removed.
    pub removed: usize,
    /// Shards visited.
    pub shards: usize,
}

/// Counts since the table was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityStats {
    /// Entries now (expired ones not yet purged included).
    pub entries: usize,
    /// Entries evicted from a full shard.
    pub evicted: u64,
    /// Expired entries removed by [`AffinityTable::purge_expired`].
    pub purged: u64,
}

/// The ClientIP session-affinity table. Share it between workers behind an `Arc`; every
/// method takes `&self`.
#[derive(Debug)]
pub struct AffinityTable {
    shards: Box<[Shard]>,
    per_shard: usize,
    /// Picks the shard (seeded per process; shard choice needs no cross-node stability).
    hasher: foldhash::fast::RandomState,
    /// The shard where the next purge starts.
    purge_cursor: AtomicUsize,
    evicted: AtomicU64,
    purged: AtomicU64,
}

impl Default for AffinityTable {
    fn default() -> AffinityTable {
        AffinityTable::new(DEFAULT_MAX_ENTRIES)
    }
}

impl AffinityTable {
    /// An empty table for about `max_entries` entries (at least one per shard).
    pub fn new(max_entries: usize) -> AffinityTable {
        AffinityTable {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            per_shard: max_entries.div_ceil(SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
            purge_cursor: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            purged: AtomicU64::new(0),
        }
    }

    /// The most entries the table holds: the per-shard limit times [`SHARDS`].
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    #[inline]
    fn shard(&self, key: &AffinityKey) -> &Shard {
        // The top log2(SHARDS) bits of the hash, which fit a usize; `% SHARDS` keeps the
        // index in range whatever happens.
        let top = self.hasher.hash_one(key) >> (64 - SHARDS.trailing_zeros());
        &self.shards[usize::try_from(top).unwrap_or(0) % SHARDS]
    }

    /// The backend `client` is pinned to for `service`, if its entry is alive at `now`; a
    /// hit pushes the expiry to `now + timeout_secs`. Read lock only; no allocation.
    pub fn lookup(
        &self,
        service: u32,
        client: IpAddr,
        now: u64,
        timeout_secs: u32,
    ) -> Option<BackendId> {
        let key = AffinityKey { service, client };
        let map = self.shard(&key).map.read();
        let entry = map.get(&key)?;
        let expires_at = entry.expires_at();
        if expires_at <= now {
            return None;
        }
        let refreshed = now.saturating_add(u64::from(timeout_secs));
        if refreshed > expires_at {
            // fetch_max: two workers refreshing at once keep the later expiry.
            entry.expires_at.fetch_max(refreshed, Ordering::Relaxed);
        }
        Some(entry.backend)
    }

    /// Pins `client` to `backend` for `service` until `now + timeout_secs`, replacing any
    /// entry of the key. A new key in a full shard evicts another entry (see the module
    /// docs).
    pub fn insert(
        &self,
        service: u32,
        client: IpAddr,
        backend: BackendId,
        now: u64,
        timeout_secs: u32,
    ) -> InsertOutcome {
        let key = AffinityKey { service, client };
        let entry = Entry {
            backend,
            expires_at: AtomicU64::new(now.saturating_add(u64::from(timeout_secs))),
        };
        let mut map = self.shard(&key).map.write();
        if let Some(old) = map.get_mut(&key) {
            *old = entry;
            return InsertOutcome::Replaced;
        }
        let mut outcome = InsertOutcome::Inserted;
        if map.len() >= self.per_shard {
            let victim = map
                .iter()
                .take(EVICT_SCAN)
                .map(|(key, entry)| (*key, entry.expires_at()))
                .try_fold(None::<(AffinityKey, u64)>, |soonest, (key, expires_at)| {
                    if expires_at <= now {
                        return Err((key, expires_at)); // The first expired one: stop.
                    }
                    Ok(match soonest {
                        Some(best) if best.1 <= expires_at => Some(best),
                        _ => Some((key, expires_at)),
                    })
                });
            let victim = match victim {
                Err(expired) => Some(expired.0),
                Ok(soonest) => soonest.map(|(key, _)| key),
            };
            if let Some(victim) = victim {
                map.remove(&victim);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                outcome = InsertOutcome::Evicted;
            }
        }
        map.insert(key, entry);
        outcome
    }

    /// Removes one client's entry for a service; returns the backend it named.
    pub fn remove(&self, service: u32, client: IpAddr) -> Option<BackendId> {
        let key = AffinityKey { service, client };
        self.shard(&key)
            .map
            .write()
            .remove(&key)
            .map(|entry| entry.backend)
    }

    /// Removes every entry of a service (when it is deleted); returns how many. Visits every
    /// shard: control-plane use only.
    pub fn remove_service(&self, service: u32) -> usize {
        self.remove_where(|key, _| key.service == service)
    }

    /// Removes every entry of a service that names `backend` (a hard drain: its clients pick
    /// again on their next connection); returns how many. Visits every shard.
    pub fn remove_backend(&self, service: u32, backend: BackendId) -> usize {
        self.remove_where(|key, b| key.service == service && b == backend)
    }

    fn remove_where(&self, doomed: impl Fn(&AffinityKey, BackendId) -> bool) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let mut map = shard.map.write();
            let before = map.len();
            map.retain(|key, entry| !doomed(key, entry.backend));
            removed += before - map.len();
        }
        removed
    }

    /// Removes expired entries, visiting whole shards round-robin from where the last call
    /// stopped, until at least `budget` entries were examined or every shard was visited
    /// once. The work is thus at most `budget` plus one shard's capacity entries.
    ///
    /// Each shard is scanned under its read lock (lookups proceed); only when it has expired
    /// entries is its write lock taken, to remove those still expired at `now`.
    pub fn purge_expired(&self, now: u64, budget: usize) -> Purge {
        let mut purge = Purge::default();
        let mut doomed = Vec::new();
        while purge.shards < SHARDS && purge.examined < budget.max(1) {
            let index = self.purge_cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let shard = &self.shards[index];
            purge.shards += 1;
            doomed.clear();
            {
                let map = shard.map.read();
                purge.examined += map.len();
                doomed.extend(
                    map.iter()
                        .filter(|(_, entry)| entry.expires_at() <= now)
                        .map(|(key, _)| *key),
                );
            }
            if doomed.is_empty() {
                continue;
            }
            let mut map = shard.map.write();
            for key in &doomed {
                // A hit may have refreshed it between the two locks.
                if map.get(key).is_some_and(|entry| entry.expires_at() <= now) {
                    map.remove(key);
                    purge.removed += 1;
                }
            }
        }
        self.purged.fetch_add(
            u64::try_from(purge.removed).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        purge
    }

    /// Entries now, expired ones not yet purged included (takes every shard's read lock).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.map.read().len()).sum()
    }

    /// True when the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts for the switch's counters.
    pub fn stats(&self) -> AffinityStats {
        AffinityStats {
            entries: self.len(),
            evicted: self.evicted.load(Ordering::Relaxed),
            purged: self.purged.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn client(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 | i))
    }

    const SVC: u32 = 7;
    const TIMEOUT: u32 = 100;

    #[test]
    fn hit_miss_and_replace() {
        let table = AffinityTable::default();
        assert_eq!(table.lookup(SVC, client(1), 0, TIMEOUT), None);
        assert_eq!(
            table.insert(SVC, client(1), BackendId(3), 0, TIMEOUT),
            InsertOutcome::Inserted
        );
        assert_eq!(
            table.lookup(SVC, client(1), 10, TIMEOUT),
            Some(BackendId(3))
        );
        // Per service and per client.
        assert_eq!(table.lookup(SVC + 1, client(1), 10, TIMEOUT), None);
        assert_eq!(table.lookup(SVC, client(2), 10, TIMEOUT), None);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        table.insert(SVC, v6, BackendId(4), 0, TIMEOUT);
        assert_eq!(table.lookup(SVC, v6, 1, TIMEOUT), Some(BackendId(4)));
        assert_eq!(
            table.insert(SVC, client(1), BackendId(5), 20, TIMEOUT),
            InsertOutcome::Replaced
        );
        assert_eq!(
            table.lookup(SVC, client(1), 20, TIMEOUT),
            Some(BackendId(5))
        );
        assert_eq!(table.len(), 2);
        assert_eq!(table.remove(SVC, client(1)), Some(BackendId(5)));
        assert_eq!(table.remove(SVC, client(1)), None);
    }

    #[test]
    fn entries_expire_and_hits_refresh() {
        let table = AffinityTable::default();
        table.insert(SVC, client(1), BackendId(1), 0, TIMEOUT);
        // Alive strictly before now + timeout.
        assert_eq!(table.lookup(SVC, client(1), 99, 0), Some(BackendId(1)));
        assert_eq!(table.lookup(SVC, client(1), 100, TIMEOUT), None);

        table.insert(SVC, client(2), BackendId(2), 0, TIMEOUT);
        // Used at 90: alive until 190.
        assert_eq!(
            table.lookup(SVC, client(2), 90, TIMEOUT),
            Some(BackendId(2))
        );
        assert_eq!(table.lookup(SVC, client(2), 189, 0), Some(BackendId(2)));
        assert_eq!(table.lookup(SVC, client(2), 190, TIMEOUT), None);
        // A shorter timeout on a hit never shortens the entry.
        table.insert(SVC, client(3), BackendId(3), 0, TIMEOUT);
        assert_eq!(table.lookup(SVC, client(3), 10, 1), Some(BackendId(3)));
        assert_eq!(table.lookup(SVC, client(3), 99, 0), Some(BackendId(3)));
        // An expired entry is replaced, not revived.
        assert_eq!(
            table.insert(SVC, client(1), BackendId(9), 200, TIMEOUT),
            InsertOutcome::Replaced
        );
        assert_eq!(
            table.lookup(SVC, client(1), 250, TIMEOUT),
            Some(BackendId(9))
        );
        // Far-future clocks saturate instead of wrapping.
        table.insert(SVC, client(4), BackendId(4), u64::MAX - 1, TIMEOUT);
        assert_eq!(
            table.lookup(SVC, client(4), u64::MAX - 1, TIMEOUT),
            Some(BackendId(4))
        );
    }

    /// Fills one shard: clients whose keys land in the same shard as `client(0)`.
    fn same_shard(table: &AffinityTable, n: usize) -> Vec<IpAddr> {
        let target = table.shard(&AffinityKey {
            service: SVC,
            client: client(0),
        }) as *const Shard;
        (0..)
            .map(client)
            .filter(|&c| {
                std::ptr::eq(
                    table.shard(&AffinityKey {
                        service: SVC,
                        client: c,
                    }),
                    target,
                )
            })
            .take(n)
            .collect()
    }

    #[test]
    fn a_full_shard_evicts_expired_entries_first() {
        let table = AffinityTable::new(SHARDS * 4); // 4 per shard
        let clients = same_shard(&table, 6);
        for (i, &c) in clients[..4].iter().enumerate() {
            // Entry 2 expires at 10, the others at 1000.
            let timeout = if i == 2 { 10 } else { 1000 };
            assert_eq!(
                table.insert(SVC, c, BackendId(0), 0, timeout),
                InsertOutcome::Inserted
            );
        }
        assert_eq!(
            table.insert(SVC, clients[4], BackendId(0), 20, TIMEOUT),
            InsertOutcome::Evicted
        );
        assert_eq!(table.lookup(SVC, clients[2], 20, TIMEOUT), None);
        assert_eq!(table.remove(SVC, clients[2]), None, "the expired one went");
        for &c in [clients[0], clients[1], clients[3], clients[4]].iter() {
            assert!(table.lookup(SVC, c, 20, 0).is_some());
        }
        assert_eq!(table.stats().evicted, 1);
    }

    #[test]
    fn without_expired_entries_the_least_recently_used_goes() {
        let table = AffinityTable::new(SHARDS * 4);
        let clients = same_shard(&table, 5);
        for &c in &clients[..4] {
            table.insert(SVC, c, BackendId(0), 0, TIMEOUT);
        }
        // Everyone but clients[1] is used at 50.
        for &c in [clients[0], clients[2], clients[3]].iter() {
            table.lookup(SVC, c, 50, TIMEOUT);
        }
        assert_eq!(
            table.insert(SVC, clients[4], BackendId(0), 60, TIMEOUT),
            InsertOutcome::Evicted
        );
        assert_eq!(table.remove(SVC, clients[1]), None);
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn the_size_stays_bounded() {
        let table = AffinityTable::new(1000);
        assert_eq!(table.capacity(), 16 * SHARDS);
        for i in 0..10_000 {
            table.insert(SVC, client(i), BackendId(i), u64::from(i), TIMEOUT);
        }
        assert!(table.len() <= table.capacity());
        assert!(table.stats().evicted >= 10_000 - u64::try_from(table.capacity()).unwrap());
        // The most recent ones survive best: at most one shard's worth of the last 64 went.
        let recent = (10_000 - 64..10_000)
            .filter(|&i| table.lookup(SVC, client(i), 10_000, 0).is_some())
            .count();
        assert!(recent >= 48, "{recent}");
    }

    #[test]
    fn purge_removes_only_expired_entries_within_budget() {
        let table = AffinityTable::new(100_000);
        for i in 0..6400 {
            // Half expire at 10, half at 1000.
            let timeout = if i % 2 == 0 { 10 } else { 1000 };
            table.insert(SVC, client(i), BackendId(i), 0, timeout);
        }
        let first = table.purge_expired(500, 1000);
        assert!(first.examined >= 1000 && first.shards < SHARDS, "{first:?}");
        assert!(first.removed > 0 && first.removed < 3200);
        let mut removed = first.removed;
        let mut rounds = 1;
        while table.len() > 3200 {
            removed += table.purge_expired(500, 1000).removed;
            rounds += 1;
            assert!(rounds < 20);
        }
        assert_eq!(removed, 3200);
        assert_eq!(table.stats().purged, 3200);
        assert!(
            (1..6400)
                .step_by(2)
                .all(|i| table.lookup(SVC, client(i), 500, 0).is_some())
        );
        // A full round on a clean table removes nothing and visits each shard once.
        let idle = table.purge_expired(500, usize::MAX);
        assert_eq!(
            (idle.removed, idle.shards, idle.examined),
            (0, SHARDS, 3200)
        );
        // Budget 0 still makes progress.
        assert_eq!(table.purge_expired(2000, 0).shards, 1);
    }

    #[test]
    fn remove_by_service_and_backend() {
        let table = AffinityTable::default();
        for i in 0..100 {
            table.insert(1, client(i), BackendId(i % 4), 0, TIMEOUT);
            table.insert(2, client(i), BackendId(i % 4), 0, TIMEOUT);
        }
        assert_eq!(table.remove_backend(1, BackendId(0)), 25);
        assert_eq!(table.remove_service(2), 100);
        assert_eq!(table.len(), 75);
        assert!(!table.is_empty());
    }

    #[test]
    fn workers_share_the_table() {
        let table = AffinityTable::new(4096);
        std::thread::scope(|scope| {
            for worker in 0..4u32 {
                let table = &table;
                scope.spawn(move || {
                    for round in 0..2000u32 {
                        let c = client(round % 500);
                        let now = u64::from(round);
                        if table.lookup(SVC, c, now, TIMEOUT).is_none() {
                            table.insert(SVC, c, BackendId(worker), now, TIMEOUT);
                        }
                        if round % 100 == 0 {
                            table.purge_expired(now, 256);
                        }
                    }
                });
            }
        });
        assert!(table.len() <= 500);
        // Clients 400..500 were last used at 1900 or later, so they expire at 2000 or later;
        // no purge ran past 1900.
        assert!((400..500).all(|i| {
            table
                .lookup(SVC, client(i), 1999, 0)
                .is_some_and(|b| b.0 < 4)
        }));
    }

    proptest! {
        /// Below capacity, the table behaves like a plain map with expiry.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..3, 0u32..20, 0u32..4, 0u64..5, 1u32..30), 1..200)) {
            let table = AffinityTable::default();
            let mut model: HashMap<u32, (BackendId, u64)> = HashMap::new();
            let mut now = 0u64;
            for (op, c, backend, step, timeout) in ops {
                now += step;
                match op {
                    0 => {
                        let got = table.lookup(SVC, client(c), now, timeout);
                        let expected = match model.get_mut(&c) {
                            Some((b, expires)) if *expires > now => {
                                *expires = (*expires).max(now + u64::from(timeout));
                                Some(*b)
                            }
                            _ => None,
                        };
                        prop_assert_eq!(got, expected);
                    }
                    1 => {
                        table.insert(SVC, client(c), BackendId(backend), now, timeout);
                        model.insert(c, (BackendId(backend), now + u64::from(timeout)));
                    }
                    _ => {
                        table.purge_expired(now, usize::MAX);
                        model.retain(|_, (_, expires)| *expires > now);
                        prop_assert_eq!(table.len(), model.len());
                    }
                }
            }
        }
    }
}
