//! The backends of one service, and their compiled form: the Maglev table the datapath reads.
//!
//! # What and why
//! A [`BackendSet`] is the control plane's mutable view of one load-balanced service: each
//! backend's identity (vswitch: the NetworkInterface's uid), address, target port, weight,
//! administrative state and health. [`BackendSet::compile`] turns it into an immutable
//! [`BackendTable`]: a [`MaglevTable`] over the backends that may receive new flows, plus
//! the targets it indexes. vswitch puts the table in its configuration snapshot; workers
//! call [`BackendTable::lookup`] per new flow, which neither allocates nor locks.
//!
//! # Who gets new flows
//! A backend is **eligible** when its weight is non-zero and its health is `Unknown` or
//! `Healthy` (see [`crate::health`] for why `Unknown` counts). Then, in order:
//! 1. the eligible [`Active`](BackendState::Active) backends, if there is at least one;
//! 2. otherwise, only in a set made with [`BackendSet::with_draining_fallback`], the
//!    eligible [`Draining`](BackendState::Draining) backends whose deadline has not passed.
//!    This is Kubernetes' `ProxyTerminatingEndpoints` (on by default since 1.26) and
//!    Cilium's fallback to terminating backends (Cilium PR #39743): during a rollout that
//!    briefly leaves only terminating backends, serving from them beats refusing every
//!    connection. It is off by default, and vswitch leaves it off: its backends drain
//!    because they left the selection on purpose (a label change), and "no new
//!    connections" must hold for them even when nothing else is left;
//! 3. otherwise **no backend**: the table is empty, every lookup misses, and the switch
//!    answers the client (TCP RST or ICMP unreachable) instead of forwarding.
//!
//! We never fall back to unhealthy backends. Envoy's "panic threshold" does (it spreads
//! traffic over all hosts when too many are unhealthy), on the theory that checks may be
//! wrong. Ours are run by the switch over the same path as the traffic, so a backend that
//! fails them most likely fails real flows too; a fast, explicit refusal lets clients retry
//! elsewhere, where a black hole makes them wait for timeouts. An operator who distrusts the
//! checks turns them off (backends then stay `Unknown`, hence eligible).
//!
//! A draining backend still appears in the table's targets (with no slot), so that flows the
//! connection table already sends to it keep resolving until its deadline; ClientIP
//! affinity, however, only honours backends that hold slots
//! ([`BackendTable::affinity_target`]), so a client pinned to a draining or unhealthy
//! backend is moved (Cilium GH#27096 and Kubernetes #71809 are bugs where that did not
//! happen).
//!
//! # Identities and ids
//! Backends are kept sorted by [`BackendKey`]: the Maglev fill order, so every node builds
//! the same table. Each backend also gets a [`BackendId`] when it enters the set, never
//! reused by that set: affinity entries store it, and it stays valid across rebuilds in
//! which the backend's table index changes.

use std::fmt;
use std::net::IpAddr;

use crate::health::{BackendHealth, HealthCheckConfig, HealthState, Transition};
use crate::maglev::{MAX_BACKENDS, MaglevError, MaglevTable, TableDiff, TableSize};

/// A backend's stable identity: the same on every node and across restarts (vswitch uses the
/// NetworkInterface's uid). It names the backend's Maglev permutation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey(Box<str>);

impl BackendKey {
    /// A key from any string.
    pub fn new(key: impl Into<Box<str>>) -> BackendKey {
        BackendKey(key.into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The bytes hashed for the Maglev permutation.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<&str> for BackendKey {
    fn from(key: &str) -> BackendKey {
        BackendKey::new(key)
    }
}

impl From<String> for BackendKey {
    fn from(key: String) -> BackendKey {
        BackendKey::new(key)
    }
}

impl AsRef<[u8]> for BackendKey {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A backend's id within one [`BackendSet`]: assigned when it enters the set, unchanged by
/// table rebuilds, never reused by the set. What session-affinity entries remember.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

/// A backend's administrative state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Receives new flows (when healthy and weighted).
    #[default]
    Active,
    /// Going away: no new flows unless no active backend is left (see the module docs);
    /// existing flows continue. `until` is the deadline, in seconds on the caller's
    /// monotonic clock, after which it is ineligible even as a fallback and
    /// [`BackendSet::remove_expired`] drops it.
    Draining {
        /// Deadline (seconds, caller's monotonic clock).
        until: u64,
    },
}

impl BackendState {
    /// Whether a draining deadline has passed at `now`.
    pub const fn is_expired(self, now: u64) -> bool {
        matches!(self, BackendState::Draining { until } if until <= now)
    }
}

/// What the configuration says about one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Stable identity.
    pub key: BackendKey,
    /// Address new flows are sent to.
    pub addr: IpAddr,
    /// Target port (0: keep the client's destination port).
    pub port: u16,
    /// Relative weight; 0 takes it out of the table (no new flows) while keeping it known.
    pub weight: u32,
    /// Active or draining.
    pub state: BackendState,
}

impl BackendSpec {
    /// An active backend of weight 1.
    pub fn new(key: impl Into<BackendKey>, addr: IpAddr, port: u16) -> BackendSpec {
        BackendSpec {
            key: key.into(),
            addr,
            port,
            weight: 1,
            state: BackendState::Active,
        }
    }
}

/// One backend of a [`BackendSet`]: its spec, id and health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    id: BackendId,
    spec: BackendSpec,
    health: BackendHealth,
}

impl Backend {
    /// The id the set gave it.
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// Its configuration.
    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    /// Its identity.
    pub fn key(&self) -> &BackendKey {
        &self.spec.key
    }

    /// Its health machine.
    pub fn health(&self) -> &BackendHealth {
        &self.health
    }

    /// The tier it may serve new flows in at `now`, if any.
    fn tier(&self, now: u64) -> Option<Tier> {
        if self.spec.weight == 0 || !self.health.state().is_eligible() {
            return None;
        }
        match self.spec.state {
            BackendState::Active => Some(Tier::Active),
            BackendState::Draining { until } if now < until => Some(Tier::Draining),
            BackendState::Draining { .. } => None,
        }
    }
}

/// Which backends a [`BackendTable`] spreads new flows over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The healthy (or unknown) active backends: the normal case.
    Active,
    /// No active backend was eligible; the healthy draining ones serve as a fallback.
    Draining,
    /// No backend is eligible: the table is empty.
    None,
}

/// Why a [`BackendSet`] refused a change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendSetError {
    /// The set is full.
    #[error("cannot add backend {key}: a service has at most {max} backends")]
    TooManyBackends {
        /// The backend refused.
        key: BackendKey,
        /// [`MAX_BACKENDS`].
        max: usize,
    },
    /// The set has handed out every id (after 2^32 insertions).
    #[error("cannot add backend {key}: this service's backend ids are exhausted; recreate it")]
    IdsExhausted {
        /// The backend refused.
        key: BackendKey,
    },
}

/// The backends of one service (control plane; not shared with workers).
#[derive(Clone, Debug)]
pub struct BackendSet {
    /// Sorted by key, no duplicates.
    backends: Vec<Backend>,
    next_id: Option<u32>,
    health: HealthCheckConfig,
    size: TableSize,
    seed: u64,
    draining_fallback: bool,
}

impl BackendSet {
    /// An empty set whose tables have `size` slots and whose backends are judged with
    /// `health`'s thresholds. Permutation seed 0 ([`BackendSet::with_seed`] changes it).
    pub fn new(size: TableSize, health: HealthCheckConfig) -> BackendSet {
        BackendSet {
            backends: Vec::new(),
            next_id: Some(0),
            health,
            size,
            seed: 0,
            draining_fallback: false,
        }
    }

    /// The same set, with draining backends serving new flows when no active backend is
    /// eligible (see the module docs).
    pub fn with_draining_fallback(mut self, fallback: bool) -> BackendSet {
        self.draining_fallback = fallback;
        self
    }

    /// The same set with another Maglev permutation seed (the same on every node).
    pub fn with_seed(mut self, seed: u64) -> BackendSet {
        self.seed = seed;
        self
    }

    /// The table size.
    pub fn table_size(&self) -> TableSize {
        self.size
    }

    /// Changes the table size for the next [`BackendSet::compile`]. This remaps nearly every
    /// flow: do it rarely.
    pub fn set_table_size(&mut self, size: TableSize) {
        self.size = size;
    }

    /// The health-check settings.
    pub fn health_config(&self) -> &HealthCheckConfig {
        &self.health
    }

    /// New health-check settings; each backend keeps its state and takes the new thresholds.
    pub fn set_health_config(&mut self, health: HealthCheckConfig) {
        self.health = health;
        for backend in &mut self.backends {
            backend.health.set_thresholds(&health);
        }
    }

    /// Number of backends (any state).
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// True when the set has no backend.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The backends, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Backend> {
        self.backends.iter()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.backends
            .binary_search_by(|backend| backend.spec.key.as_str().cmp(key))
    }

    /// The backend with this key.
    pub fn get(&self, key: &str) -> Option<&Backend> {
        self.position(key).ok().map(|i| &self.backends[i])
    }

    /// Adds a backend, or updates the one with the same key. An update keeps the id and,
    /// unless the address or port changed, the health history (a new target is `Unknown`).
    ///
    /// # Errors
    /// [`BackendSetError::TooManyBackends`] beyond [`MAX_BACKENDS`],
    /// [`BackendSetError::IdsExhausted`] after 2^32 insertions.
    pub fn upsert(&mut self, spec: BackendSpec) -> Result<BackendId, BackendSetError> {
        match self.position(spec.key.as_str()) {
            Ok(i) => {
                let backend = &mut self.backends[i];
                if (backend.spec.addr, backend.spec.port) != (spec.addr, spec.port) {
                    backend.health.reset();
                }
                backend.spec = spec;
                Ok(backend.id)
            }
            Err(i) => {
                if self.backends.len() >= MAX_BACKENDS {
                    return Err(BackendSetError::TooManyBackends {
                        key: spec.key,
                        max: MAX_BACKENDS,
                    });
                }
                let Some(id) = self.next_id else {
                    return Err(BackendSetError::IdsExhausted { key: spec.key });
                };
                self.next_id = id.checked_add(1);
                let backend = Backend {
                    id: BackendId(id),
                    spec,
                    health: BackendHealth::new(&self.health),
                };
                self.backends.insert(i, backend);
                Ok(BackendId(id))
            }
        }
    }

    /// Removes a backend at once (no draining); returns it.
    pub fn remove(&mut self, key: &str) -> Option<Backend> {
        let i = self.position(key).ok()?;
        Some(self.backends.remove(i))
    }

    /// Sets a backend's state; returns false if no backend has this key.
    pub fn set_state(&mut self, key: &str, state: BackendState) -> bool {
        match self.position(key) {
            Ok(i) => {
                self.backends[i].spec.state = state;
                true
            }
            Err(_) => false,
        }
    }

    /// Records a health-check result for a backend. Returns the transition, if any; when
    /// [`Transition::eligibility_changed`] holds, the caller recompiles. `None` also when no
    /// backend has this key (a late result for a removed backend).
    pub fn record_health(&mut self, key: &str, ok: bool) -> Option<Transition> {
        let i = self.position(key).ok()?;
        self.backends[i].health.record(ok)
    }

    /// Removes the draining backends whose deadline has passed at `now`; returns them.
    pub fn remove_expired(&mut self, now: u64) -> Vec<Backend> {
        let mut expired = Vec::new();
        self.backends.retain(|backend| {
            if backend.spec.state.is_expired(now) {
                expired.push(backend.clone());
                false
            } else {
                true
            }
        });
        expired
    }

    /// The earliest draining deadline still ahead of `now`, if any: when the next compile
    /// (and [`BackendSet::remove_expired`]) would change something by itself.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        self.backends
            .iter()
            .filter_map(|backend| match backend.spec.state {
                BackendState::Draining { until } if until > now => Some(until),
                _ => None,
            })
            .min()
    }

    /// Compiles the set at time `now` into the table workers read (see the module docs for
    /// who gets new flows).
    ///
    /// # Errors
    /// [`MaglevError::TableTooSmall`] when more backends are eligible than the table has
    /// slots. (The set rules out duplicate keys and too many backends.)
    pub fn compile(&self, now: u64) -> Result<BackendTable, MaglevError> {
        let tiers: Vec<Option<Tier>> = self.backends.iter().map(|b| b.tier(now)).collect();
        let tier = if tiers.contains(&Some(Tier::Active)) {
            Tier::Active
        } else if self.draining_fallback && tiers.contains(&Some(Tier::Draining)) {
            Tier::Draining
        } else {
            Tier::None
        };
        let weights: Vec<(&[u8], u32)> = self
            .backends
            .iter()
            .zip(&tiers)
            .map(|(backend, t)| {
                let weight = if *t == Some(tier) {
                    backend.spec.weight
                } else {
                    0
                };
                (backend.spec.key.as_bytes(), weight)
            })
            .collect();
        let table = MaglevTable::build_with_seed(&weights, self.size, self.seed)?;
        let targets: Box<[Target]> = self
            .backends
            .iter()
            .map(|backend| Target {
                id: backend.id,
                key: backend.spec.key.clone(),
                addr: backend.spec.addr,
                port: backend.spec.port,
                weight: backend.spec.weight,
                state: backend.spec.state,
                health: backend.health.state(),
            })
            .collect();
        let mut by_id: Vec<(BackendId, usize)> = targets
            .iter()
            .enumerate()
            .map(|(i, target)| (target.id, i))
            .collect();
        by_id.sort_unstable();
        Ok(BackendTable {
            table,
            targets,
            by_id: by_id.into_boxed_slice(),
            tier,
        })
    }
}

/// A backend as the compiled table knows it: where to send a flow, and what the CLI shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The set's id for it.
    pub id: BackendId,
    /// Its identity.
    pub key: BackendKey,
    /// Address.
    pub addr: IpAddr,
    /// Target port.
    pub port: u16,
    /// Configured weight.
    pub weight: u32,
    /// State when compiled.
    pub state: BackendState,
    /// Health when compiled.
    pub health: HealthState,
}

/// The compiled, immutable form of a [`BackendSet`]: what workers read. Every backend of the
/// set is a target (sorted by key); only the selected tier's backends hold slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTable {
    table: MaglevTable,
    targets: Box<[Target]>,
    /// (id, target index), sorted by id.
    by_id: Box<[(BackendId, usize)]>,
    tier: Tier,
}

impl BackendTable {
    /// The target for a flow hash ([`crate::flow_hash`] or, for ClientIP affinity,
    /// [`crate::client_hash`]), or `None` when no backend is eligible. No allocation, no lock.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<&Target> {
        self.targets.get(self.table.lookup(hash)?)
    }

    /// Like [`BackendTable::lookup`], the target's index.
    #[inline]
    pub fn lookup_index(&self, hash: u64) -> Option<usize> {
        self.table.lookup(hash)
    }

    /// The Maglev slot a flow hash falls in (for diagnostics: which slot chose the backend).
    pub fn slot(&self, hash: u64) -> Option<usize> {
        self.table.slot_of(hash)
    }

    /// The target at `index`.
    pub fn target(&self, index: usize) -> Option<&Target> {
        self.targets.get(index)
    }

    /// Every target, sorted by key (those without slots included).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The index of the target with this id.
    pub fn find(&self, id: BackendId) -> Option<usize> {
        let i = self.by_id.binary_search_by_key(&id, |&(id, _)| id).ok()?;
        Some(self.by_id[i].1)
    }

    /// The target a ClientIP affinity entry naming `id` should still use: `Some` only while
    /// that backend holds slots (eligible, in the serving tier). Otherwise the caller picks
    /// again through [`BackendTable::lookup`] and overwrites the entry.
    #[inline]
    pub fn affinity_target(&self, id: BackendId) -> Option<&Target> {
        let index = self.find(id)?;
        self.targets
            .get(index)
            .filter(|_| self.table.share(index) > 0)
    }

    /// Slots held by the target at `index` (out of [`BackendTable::table_size`]); 0 for
    /// targets that get no new flows.
    pub fn share(&self, index: usize) -> u32 {
        self.table.share(index)
    }

    /// The table size M.
    pub fn table_size(&self) -> TableSize {
        self.table.size()
    }

    /// Which backends serve new flows.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The Maglev table itself.
    pub fn maglev(&self) -> &MaglevTable {
        &self.table
    }

    /// How `newer` differs from this table, slot by slot, matched by backend key (see
    /// [`MaglevTable::diff`]).
    pub fn diff(&self, newer: &BackendTable) -> TableDiff {
        // Every index in a table is a target index (the table was built from the targets).
        self.table.diff(
            |i| self.targets.get(i).map(|t| &t.key),
            &newer.table,
            |i| newer.targets.get(i).map(|t| &t.key),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowKey;
    use crate::flow_hash;
    use std::net::Ipv4Addr;

    fn addr(i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))
    }

    fn set_of(n: u8) -> BackendSet {
        let mut set = BackendSet::new(TableSize::DEFAULT, HealthCheckConfig::default());
        for i in 0..n {
            set.upsert(BackendSpec::new(format!("nic-{i}"), addr(i), 8080))
                .unwrap();
        }
        set
    }

    fn fail(set: &mut BackendSet, key: &str) {
        for _ in 0..3 {
            set.record_health(key, false);
        }
    }

    fn holders(table: &BackendTable) -> Vec<&str> {
        (0..table.targets().len())
            .filter(|&i| table.share(i) > 0)
            .map(|i| table.targets()[i].key.as_str())
            .collect()
    }

    #[test]
    fn active_healthy_backends_share_the_table() {
        let set = set_of(3);
        let table = set.compile(0).unwrap();
        assert_eq!(table.tier(), Tier::Active);
        assert_eq!(holders(&table), ["nic-0", "nic-1", "nic-2"]);
        let shares: u32 = (0..3).map(|i| table.share(i)).sum();
        assert_eq!(shares, 16_381);
        let key = FlowKey::new(addr(200), 5555, addr(100), 80, 6);
        let target = table.lookup(flow_hash(&key, 0)).unwrap();
        assert_eq!(target.port, 8080);
        assert_eq!(
            table
                .lookup_index(flow_hash(&key, 0))
                .map(|i| &table.targets()[i]),
            Some(target)
        );
    }

    #[test]
    fn unhealthy_and_weight_zero_get_no_slots() {
        let mut set = set_of(3);
        fail(&mut set, "nic-1");
        let mut spec = set.get("nic-2").unwrap().spec().clone();
        spec.weight = 0;
        set.upsert(spec).unwrap();
        let table = set.compile(0).unwrap();
        assert_eq!(holders(&table), ["nic-0"]);
        assert_eq!(table.targets().len(), 3);
        assert_eq!(table.targets()[1].health, HealthState::Unhealthy);
    }

    #[test]
    fn all_unhealthy_means_no_backend() {
        let mut set = set_of(2);
        fail(&mut set, "nic-0");
        fail(&mut set, "nic-1");
        let table = set.compile(0).unwrap();
        assert_eq!(table.tier(), Tier::None);
        assert_eq!(table.lookup(42), None);
        assert!(table.maglev().is_empty());
        // One recovers (two good checks): it takes every slot.
        set.record_health("nic-1", true);
        assert_eq!(
            set.record_health("nic-1", true).map(|t| t.to),
            Some(HealthState::Healthy)
        );
        let table = set.compile(0).unwrap();
        assert_eq!(holders(&table), ["nic-1"]);
    }

    #[test]
    fn draining_backends_are_a_fallback_until_their_deadline() {
        let mut without = set_of(2);
        without.set_state("nic-0", BackendState::Draining { until: 100 });
        without.remove("nic-1");
        assert_eq!(
            without.compile(10).unwrap().tier(),
            Tier::None,
            "no fallback unless asked for"
        );
        let mut set = set_of(3).with_draining_fallback(true);
        set.set_state("nic-0", BackendState::Draining { until: 100 });
        let table = set.compile(10).unwrap();
        assert_eq!(holders(&table), ["nic-1", "nic-2"]);
        assert_eq!(
            table.target(0).unwrap().state,
            BackendState::Draining { until: 100 }
        );

        // The active ones go: the draining one serves, as Kubernetes' terminating fallback.
        fail(&mut set, "nic-1");
        set.remove("nic-2");
        let table = set.compile(10).unwrap();
        assert_eq!(table.tier(), Tier::Draining);
        assert_eq!(holders(&table), ["nic-0"]);
        // Not past its deadline, nor if it is unhealthy.
        let table = set.compile(100).unwrap();
        assert_eq!(table.tier(), Tier::None);
        fail(&mut set, "nic-0");
        assert_eq!(set.compile(10).unwrap().tier(), Tier::None);
    }

    #[test]
    fn expired_drains_are_removed() {
        let mut set = set_of(3);
        set.set_state("nic-0", BackendState::Draining { until: 50 });
        set.set_state("nic-2", BackendState::Draining { until: 70 });
        assert_eq!(set.next_deadline(0), Some(50));
        assert_eq!(set.next_deadline(50), Some(70));
        assert!(set.remove_expired(49).is_empty());
        let gone: Vec<String> = set
            .remove_expired(50)
            .iter()
            .map(|b| b.key().to_string())
            .collect();
        assert_eq!(gone, ["nic-0"]);
        assert_eq!(set.len(), 2);
        assert!(!set.set_state("nic-0", BackendState::Active));
    }

    #[test]
    fn upsert_keeps_ids_and_resets_health_on_a_new_address() {
        let mut set = set_of(2);
        let id = set.get("nic-1").unwrap().id();
        fail(&mut set, "nic-1");
        let mut spec = set.get("nic-1").unwrap().spec().clone();
        spec.weight = 5;
        assert_eq!(set.upsert(spec.clone()), Ok(id));
        assert_eq!(
            set.get("nic-1").unwrap().health().state(),
            HealthState::Unhealthy
        );
        spec.addr = addr(99);
        assert_eq!(set.upsert(spec), Ok(id));
        assert_eq!(
            set.get("nic-1").unwrap().health().state(),
            HealthState::Unknown
        );
        // Ids are not reused after removal.
        set.remove("nic-1");
        let new_id = set.upsert(BackendSpec::new("nic-1", addr(1), 1)).unwrap();
        assert!(new_id > id);
        assert_eq!(set.record_health("nope", true), None);
    }

    #[test]
    fn health_config_changes_keep_states() {
        let mut set = set_of(1);
        set.record_health("nic-0", true);
        set.set_health_config(HealthCheckConfig {
            unhealthy_threshold: 1,
            ..HealthCheckConfig::default()
        });
        assert_eq!(
            set.get("nic-0").unwrap().health().state(),
            HealthState::Healthy
        );
        assert_eq!(
            set.record_health("nic-0", false).map(|t| t.to),
            Some(HealthState::Unhealthy)
        );
        assert_eq!(set.health_config().unhealthy_threshold, 1);
    }

    #[test]
    fn affinity_targets_must_hold_slots() {
        let mut set = set_of(3);
        let ids: Vec<BackendId> = set.iter().map(Backend::id).collect();
        let table = set.compile(0).unwrap();
        assert_eq!(
            table.affinity_target(ids[1]).map(|t| t.key.as_str()),
            Some("nic-1")
        );
        assert_eq!(table.find(ids[2]), Some(2));
        assert_eq!(table.affinity_target(BackendId(999)), None);
        set.set_state("nic-1", BackendState::Draining { until: 100 });
        let table = set.compile(0).unwrap();
        assert_eq!(table.find(ids[1]), Some(1));
        assert_eq!(table.affinity_target(ids[1]), None);
    }

    #[test]
    fn diff_by_key_across_compiles() {
        let mut set = set_of(10);
        let before = set.compile(0).unwrap();
        fail(&mut set, "nic-3");
        let after = set.compile(0).unwrap();
        let diff = before.diff(&after);
        // nic-3 keeps its index but loses its slots: those moves are necessary.
        assert_eq!(diff.changed - diff.collateral, before.share(3));
        assert!(diff.collateral_fraction() < 0.025, "{diff:?}");
    }

    #[test]
    fn tables_are_the_same_on_every_node() {
        // Two nodes learn the backends in a different order, with different ids.
        let mut a = BackendSet::new(TableSize::DEFAULT, HealthCheckConfig::default());
        let mut b = a.clone();
        for i in 0..20 {
            a.upsert(BackendSpec::new(format!("uid-{i}"), addr(i), 80))
                .unwrap();
        }
        b.upsert(BackendSpec::new("unrelated", addr(200), 80))
            .unwrap();
        b.remove("unrelated");
        for i in (0..20).rev() {
            b.upsert(BackendSpec::new(format!("uid-{i}"), addr(i), 80))
                .unwrap();
        }
        let (ta, tb) = (a.compile(0).unwrap(), b.compile(0).unwrap());
        assert_eq!(ta.diff(&tb).changed, 0);
        assert_eq!(ta.maglev(), tb.maglev());
        assert_ne!(ta.targets()[0].id, tb.targets()[0].id);
        let seeded = a.clone().with_seed(7).compile(0).unwrap();
        assert!(ta.diff(&seeded).changed > 0);
    }

    #[test]
    fn table_size_errors_surface() {
        let mut set = set_of(10);
        set.set_table_size(TableSize::new(7).unwrap());
        assert_eq!(set.table_size().get(), 7);
        assert!(matches!(
            set.compile(0),
            Err(MaglevError::TableTooSmall {
                size: 7,
                backends: 10,
                ..
            })
        ));
    }

    #[test]
    fn set_limits() {
        let mut set = BackendSet::new(TableSize::DEFAULT, HealthCheckConfig::default());
        set.next_id = Some(u32::MAX);
        set.upsert(BackendSpec::new("last", addr(1), 1)).unwrap();
        assert_eq!(
            set.upsert(BackendSpec::new("one-too-many", addr(2), 1)),
            Err(BackendSetError::IdsExhausted {
                key: "one-too-many".into()
            })
        );
    }
}
