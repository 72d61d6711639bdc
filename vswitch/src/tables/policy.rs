//! The NetworkPolicies as the datapath reads them: the `policy` crate's compiled classifier,
//! which ports are isolated, which port owns an address, and the counters of allowed and
//! denied connections.
//!
//! Built by the controller whenever what policies see changes (policies, interfaces and
//! their labels, addresses and named ports, namespaces, LoadBalancer addresses), published
//! with the snapshot, read by the `policy` stage. Endpoint ids are port ids. Counters are
//! atomics indexed by the compiled set's dense rule ordinals and isolation tables; when a
//! new set replaces one, the old set's counts are folded into per-policy totals the new set
//! starts from, so a policy's counts survive changes to other resources.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use policy::{Compiled, Decision, Direction, Verdict};

use super::snapshot::NetworkId;
use crate::port::PortId;

/// The port is isolated for ingress.
const INGRESS: u8 = 1;
/// The port is isolated for egress.
const EGRESS: u8 = 2;
/// The port is an endpoint of the compiled set.
const ENDPOINT: u8 = 4;

/// A policy's table key: `name` in `default`, else `namespace/name`.
pub type PolicyKey = String;

/// Allowed and denied connections of one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    /// Connections its ingress rules allowed.
    pub ingress_allowed: u64,
    /// Connections its egress rules allowed.
    pub egress_allowed: u64,
    /// Connections denied on ingress while it isolated the destination.
    pub ingress_denied: u64,
    /// Connections denied on egress while it isolated the source.
    pub egress_denied: u64,
    /// Per rule: (direction, index, connections allowed).
    pub rules: BTreeMap<(Direction, u32), u64>,
}

/// The compiled policies and what the datapath needs beside them.
#[derive(Debug)]
pub struct PolicySet {
    compiled: Compiled,
    /// Per port id: `INGRESS | EGRESS` bits.
    flags: Vec<u8>,
    /// The port that owns an address in a Network (interfaces' addresses).
    addresses: HashMap<(NetworkId, IpAddr), PortId, foldhash::fast::RandomState>,
    /// Per rule ordinal: connections allowed.
    allowed: Vec<AtomicU64>,
    /// Per isolation table: connections denied (`[ingress, egress]`).
    denied: Vec<[AtomicU64; 2]>,
    /// Counts of earlier sets, by policy.
    base: BTreeMap<PolicyKey, PolicyCounts>,
    /// Interfaces (their names) each policy selects.
    selected: BTreeMap<PolicyKey, Vec<String>>,
    /// Associations of protocols conntrack does not follow (carried from set to set).
    associations: std::sync::Arc<Associations>,
}

/// The key of a policy of the compiled set.
fn key_of(policy: &policy::Policy) -> PolicyKey {
    crate::control::resource::object_key(&policy.namespace, &policy.name)
}

impl PolicySet {
    /// The set for `compiled`, whose endpoints are ports (`EndpointId(port id)`) in the
    /// Networks `networks` gives; counts start from `previous`'s.
    pub fn new(
        compiled: Compiled,
        networks: &BTreeMap<u32, NetworkId>,
        previous: Option<&PolicySet>,
    ) -> PolicySet {
        let mut flags = Vec::new();
        let mut addresses = HashMap::default();
        let mut selected: BTreeMap<PolicyKey, Vec<String>> = BTreeMap::new();
        for endpoint in compiled.endpoints() {
            let slot = endpoint.id.0 as usize;
            if flags.len() <= slot {
                flags.resize(slot + 1, 0);
            }
            flags[slot] |= ENDPOINT;
            for (direction, bit) in [(Direction::Ingress, INGRESS), (Direction::Egress, EGRESS)] {
                let policies = compiled.selecting_policies(endpoint.id, direction);
                if !policies.is_empty() {
                    flags[slot] |= bit;
                }
                let name =
                    crate::control::resource::object_key(&endpoint.namespace, &endpoint.name);
                for id in policies {
                    let names = selected.entry(key_of(compiled.policy(*id))).or_default();
                    if !names.contains(&name) {
                        names.push(name.clone());
                    }
                }
            }
            if let Some(network) = networks.get(&endpoint.id.0) {
                for address in &endpoint.addresses {
                    addresses.insert((*network, *address), PortId(endpoint.id.0));
                }
            }
        }
        for names in selected.values_mut() {
            names.sort();
        }
        let allowed = (0..compiled.rule_count())
            .map(|_| AtomicU64::new(0))
            .collect();
        let denied = (0..compiled.stats().tables)
            .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
            .collect();
        let associations =
            previous.map_or_else(Default::default, |p| std::sync::Arc::clone(&p.associations));
        let mut base = previous.map(PolicySet::totals).unwrap_or_default();
        let current: std::collections::BTreeSet<PolicyKey> =
            compiled.policies().iter().map(key_of).collect();
        base.retain(|key, _| current.contains(key));
        PolicySet {
            compiled,
            flags,
            addresses,
            allowed,
            denied,
            base,
            selected,
            associations,
        }
    }

    /// Associations of protocols conntrack does not follow.
    pub fn associations(&self) -> &Associations {
        &self.associations
    }

    /// The compiled classifier.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// True when some policy isolates `port` in either direction: its connections are
    /// classified and tracked.
    #[inline]
    pub fn is_isolated(&self, port: PortId) -> bool {
        self.flags
            .get(port.0 as usize)
            .is_some_and(|f| f & (INGRESS | EGRESS) != 0)
    }

    /// True when `port` is one of the compiled endpoints (an attached interface).
    #[inline]
    pub fn is_endpoint(&self, port: PortId) -> bool {
        self.flags
            .get(port.0 as usize)
            .is_some_and(|f| f & ENDPOINT != 0)
    }

    /// The interface that owns `address` in `network`.
    #[inline]
    pub fn owner(&self, network: NetworkId, address: IpAddr) -> Option<PortId> {
        if self.addresses.is_empty() {
            return None;
        }
        self.addresses.get(&(network, address)).copied()
    }

    /// Counts a decision: the allowing rules, or the denying side's isolation.
    pub fn count(&self, decision: &Decision) {
        for (verdict, side) in [(&decision.egress, 1), (&decision.ingress, 0)] {
            match verdict {
                Verdict::Allowed(rule) => {
                    if let Some(counter) = self.allowed.get(rule.ordinal as usize) {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Verdict::Denied(isolation) => {
                    if let Some(counters) = self.denied.get(isolation.index() as usize) {
                        counters[side].fetch_add(1, Ordering::Relaxed);
                    }
                }
                Verdict::NotIsolated => {}
            }
        }
    }

    /// Every policy's counts: earlier sets' and this one's.
    pub fn totals(&self) -> BTreeMap<PolicyKey, PolicyCounts> {
        let mut totals = self.base.clone();
        for rule in self.compiled.rules() {
            let count = self
                .allowed
                .get(rule.ordinal as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            if count == 0 {
                continue;
            }
            let counts = totals
                .entry(key_of(self.compiled.policy(rule.policy)))
                .or_default();
            match rule.direction {
                Direction::Ingress => counts.ingress_allowed += count,
                Direction::Egress => counts.egress_allowed += count,
            }
            *counts
                .rules
                .entry((rule.direction, rule.index))
                .or_default() += count;
        }
        for (table, counters) in self.denied.iter().enumerate() {
            let ingress = counters[0].load(Ordering::Relaxed);
            let egress = counters[1].load(Ordering::Relaxed);
            if ingress == 0 && egress == 0 {
                continue;
            }
            let Ok(table) = u32::try_from(table) else {
                continue;
            };
            for id in self.compiled.isolating_policies_of_table(table) {
                let counts = totals.entry(key_of(self.compiled.policy(*id))).or_default();
                counts.ingress_denied += ingress;
                counts.egress_denied += egress;
            }
        }
        totals
    }

    /// The interfaces policy `key` selects.
    pub fn selected(&self, key: &str) -> &[String] {
        self.selected.get(key).map_or(&[], Vec::as_slice)
    }
}

/// Associations of protocols conntrack does not follow (SCTP, and any other protocol
/// NetworkPolicies see), for the `policy` stage: an allowed first packet records its
/// association, so the packets of both directions that follow pass without being judged
/// again, as replies of allowed connections must. Keyed by Network and the two ends in a
/// canonical order; an entry lives `IDLE_MS` after its last packet. Bounded: when full, a
/// new association is not recorded (its packets are then judged one by one).
#[derive(Debug)]
pub struct Associations {
    shards:
        Vec<parking_lot::RwLock<HashMap<AssociationKey, AtomicU64, foldhash::fast::RandomState>>>,
    capacity_per_shard: usize,
}

/// An association: Network, protocol, and its two (address, port) ends, lower first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AssociationKey {
    network: u32,
    protocol: u8,
    low: (IpAddr, u16),
    high: (IpAddr, u16),
}

impl AssociationKey {
    /// The key of a packet between `a` and `b` in `network`, whichever way it goes.
    pub fn new(network: NetworkId, protocol: u8, a: (IpAddr, u16), b: (IpAddr, u16)) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        AssociationKey {
            network: network.0,
            protocol,
            low,
            high,
        }
    }

    fn shard(&self, shards: usize) -> usize {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::with_seed(0x5c7b).hash_one(self);
        usize::try_from(hash).unwrap_or(0) % shards.max(1)
    }
}

impl Default for Associations {
    fn default() -> Self {
        Associations::new(Associations::CAPACITY)
    }
}

impl Associations {
    /// How long an association lives after its last packet (SCTP heartbeats every 30 s).
    pub const IDLE_MS: u64 = 180_000;
    /// Associations tracked at most.
    pub const CAPACITY: usize = 65_536;
    const SHARDS: usize = 16;

    /// A table of at most `capacity` associations.
    pub fn new(capacity: usize) -> Associations {
        Associations {
            shards: (0..Self::SHARDS)
                .map(|_| parking_lot::RwLock::new(HashMap::default()))
                .collect(),
            capacity_per_shard: capacity.div_ceil(Self::SHARDS).max(1),
        }
    }

    /// True when `key` is a live association; refreshes it.
    pub fn touch(&self, key: &AssociationKey, now_ms: u64) -> bool {
        let shard = self.shards[key.shard(self.shards.len())].read();
        match shard.get(key) {
            Some(seen) if now_ms.saturating_sub(seen.load(Ordering::Relaxed)) <= Self::IDLE_MS => {
                seen.fetch_max(now_ms, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Whether [`touch`](Associations::touch) would find `key` alive at `now`, without
    /// refreshing it (the packet tracer's dry runs).
    pub fn is_live(&self, key: &AssociationKey, now_ms: u64) -> bool {
        let shard = self.shards[key.shard(self.shards.len())].read();
        shard.get(key).is_some_and(|seen| {
            now_ms.saturating_sub(seen.load(Ordering::Relaxed)) <= Self::IDLE_MS
        })
    }

    /// Records `key` (expired entries of its shard make room when it is full); false when
    /// there was no room.
    pub fn insert(&self, key: AssociationKey, now_ms: u64) -> bool {
        let mut shard = self.shards[key.shard(self.shards.len())].write();
        if shard.len() >= self.capacity_per_shard && !shard.contains_key(&key) {
            shard.retain(|_, seen| {
                now_ms.saturating_sub(seen.load(Ordering::Relaxed)) <= Self::IDLE_MS
            });
            if shard.len() >= self.capacity_per_shard {
                return false;
            }
        }
        shard.insert(key, AtomicU64::new(now_ms));
        true
    }

    /// Live associations (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// True when none is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
