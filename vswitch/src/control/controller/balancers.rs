//! The LoadBalancers' runtime: per LoadBalancer, its backend set (the NetworkInterfaces its
//! selector picks, and those that left it and are draining) and the Maglev table compiled
//! from it, which the snapshot carries to the workers.
//!
//! Brought up to date at every publish ([`Balancers::sync`]): a selected interface that is
//! attached (`Up`, with an IPv4 address) is an active backend, keyed by its name (so a
//! re-created interface keeps its slots); one that leaves the selection while attached
//! drains for the LoadBalancer's `drainSeconds` (no new connections while another backend
//! takes them; its connections continue, conntrack remembers their backend); one whose
//! device is gone leaves at once (its connections cannot continue anyway). Connections are
//! never moved: a balanced connection's backend is in its conntrack entry, so a changed
//! table only decides new connections.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::AttachedPort;
use crate::control::ApiError;
use crate::control::kinds::LoadBalancerLive;
use crate::control::resource::SessionAffinity;
use crate::control::resource::{
    BackendStateView, BackendView, InterfaceState, LoadBalancer, LoadBalancerType,
    LoadBalancerView, ipv4,
};
use crate::control::store::State;
use crate::port::PortId;
use crate::tables::snapshot::{Affinity, BalancedPort, Balancer, NetworkId};

/// The flow-hash seed: the same on every node, so a flow maps to the same backend wherever
/// it is balanced.
const FLOW_SEED: u64 = 0x7673_7769_7463_6801;

/// Every LoadBalancer's runtime.
#[derive(Debug, Default)]
pub(super) struct Balancers {
    by_name: BTreeMap<String, Runtime>,
}

#[derive(Debug)]
struct Runtime {
    set: lb::BackendSet,
    /// The last table compiled (none before the first compile succeeds).
    table: Option<Arc<lb::BackendTable>>,
    /// Backends' port ids by key (the interface's name), while attached.
    ports: BTreeMap<String, PortId>,
    /// ClientIP affinity entries, while the LoadBalancer asks for them.
    affinity: Option<Arc<lb::AffinityTable>>,
}

/// Clients a LoadBalancer's affinity table remembers at most (the oldest go first).
const AFFINITY_ENTRIES: usize = 262_144;

/// Expired affinity entries examined per LoadBalancer and maintenance tick.
const AFFINITY_PURGE_BUDGET: usize = 4096;

impl Balancers {
    /// Brings every LoadBalancer's backend set up to date with `state` and the attached
    /// `ports`, at `now` (seconds on the datapath's clock), and compiles the tables.
    pub(super) fn sync(&mut self, state: &State, ports: &BTreeMap<String, AttachedPort>, now: u64) {
        self.by_name
            .retain(|name, _| state.load_balancers.contains_key(name));
        for (name, balancer) in &state.load_balancers {
            let size = lb::TableSize::new(balancer.spec.table_size()).unwrap_or_default();
            let runtime = self.by_name.entry(name.clone()).or_insert_with(|| Runtime {
                set: lb::BackendSet::new(size, lb::HealthCheckConfig::default())
                    .with_seed(FLOW_SEED),
                table: None,
                ports: BTreeMap::new(),
                affinity: None,
            });
            match (balancer.spec.session_affinity, &runtime.affinity) {
                (SessionAffinity::ClientIP, None) => {
                    runtime.affinity = Some(Arc::new(lb::AffinityTable::new(AFFINITY_ENTRIES)));
                }
                (SessionAffinity::None, Some(_)) => runtime.affinity = None,
                _ => {}
            }
            if runtime.set.table_size() != size {
                runtime.set.set_table_size(size);
            }
            let wanted = backends(state, ports, balancer);
            let attached: Vec<String> = runtime.set.iter().map(|b| b.key().to_string()).collect();
            for key in attached {
                if wanted.iter().any(|(k, _, _)| *k == key) {
                    continue;
                }
                if ports.contains_key(&key) {
                    // Still attached, no longer selected: drains.
                    let draining = runtime.set.get(&key).is_some_and(|b| {
                        matches!(b.spec().state, lb::BackendState::Draining { .. })
                    });
                    if !draining {
                        let until = now + u64::from(balancer.spec.drain());
                        runtime
                            .set
                            .set_state(&key, lb::BackendState::Draining { until });
                        tracing::info!(load_balancer = %name, backend = %key, until, "backend draining");
                    }
                } else {
                    runtime.set.remove(&key);
                    runtime.ports.remove(&key);
                    tracing::info!(load_balancer = %name, backend = %key, "backend removed (detached)");
                }
            }
            for (key, address, port) in wanted {
                let spec = lb::BackendSpec::new(key.clone(), IpAddr::V4(address), 0);
                match runtime.set.upsert(spec) {
                    Ok(_) => {
                        runtime.ports.insert(key, port);
                    }
                    Err(err) => {
                        tracing::warn!(load_balancer = %name, backend = %key, "backend left out: {err}");
                    }
                }
            }
            for gone in runtime.set.remove_expired(now) {
                runtime.ports.remove(gone.key().as_str());
            }
            match runtime.set.compile(now) {
                Ok(table) => runtime.table = Some(Arc::new(table)),
                Err(err) => {
                    tracing::warn!(load_balancer = %name, "cannot build its table: {err}; keeping the previous one");
                }
            }
        }
    }

    /// Forgets affinity entries expired at `now` (a bounded amount of work per call).
    pub(super) fn purge_affinity(&self, now: u64) {
        for runtime in self.by_name.values() {
            if let Some(table) = &runtime.affinity {
                table.purge_expired(now, AFFINITY_PURGE_BUDGET);
            }
        }
    }

    /// The earliest draining deadline, if any backend drains (seconds).
    pub(super) fn next_deadline(&self, now: u64) -> Option<u64> {
        self.by_name
            .values()
            .filter_map(|runtime| runtime.set.next_deadline(now))
            .min()
    }

    /// The snapshot's LoadBalancers (Internal ones with an IPv4 address, in a Network that
    /// has an id) and the ports that are backends.
    pub(super) fn compile(
        &self,
        state: &State,
        network_ids: &BTreeMap<String, NetworkId>,
    ) -> (Vec<Balancer>, Vec<PortId>) {
        let mut balancers = Vec::new();
        let mut backends = Vec::new();
        for (index, (name, runtime)) in self.by_name.iter().enumerate() {
            let Some(resource) = state.load_balancers.get(name) else {
                continue;
            };
            let (Some(network), Some(address), Some(table)) = (
                network_ids.get(&resource.spec.network).copied(),
                ipv4(resource),
                runtime.table.as_ref(),
            ) else {
                continue;
            };
            if resource.spec.lb_type != LoadBalancerType::Internal {
                continue;
            }
            backends.extend(runtime.ports.values().copied());
            balancers.push(Balancer {
                name: name.clone(),
                index: u32::try_from(index).unwrap_or(u32::MAX),
                network,
                address,
                ports: ports(resource),
                table: Arc::clone(table),
                seed: FLOW_SEED,
                affinity: runtime.affinity.as_ref().map(|table| Affinity {
                    table: Arc::clone(table),
                    timeout: resource.spec.affinity_timeout(),
                }),
            });
        }
        backends.sort();
        backends.dedup();
        (balancers, backends)
    }

    /// Backend counts by LoadBalancer, as reads show them.
    pub(super) fn live(&self) -> BTreeMap<String, LoadBalancerLive> {
        self.by_name
            .iter()
            .map(|(name, runtime)| {
                let mut live = LoadBalancerLive::default();
                for backend in runtime.set.iter() {
                    match (backend.spec().state, backend.health().state()) {
                        (lb::BackendState::Draining { .. }, _) => live.counts.draining += 1,
                        (_, lb::HealthState::Unhealthy) => live.counts.unhealthy += 1,
                        _ => live.counts.healthy += 1,
                    }
                }
                (name.clone(), live)
            })
            .collect()
    }

    /// LoadBalancer `name`'s table, for the `lb` view.
    pub(super) fn table(&self, name: &str) -> Option<Arc<lb::BackendTable>> {
        self.by_name.get(name).and_then(|r| r.table.clone())
    }

    /// LoadBalancer `name`'s backends (draining ones included).
    pub(super) fn backends(&self, name: &str) -> Vec<lb::Backend> {
        self.by_name
            .get(name)
            .map(|r| r.set.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl super::Controller {
    /// Periodic upkeep (the agent's supervisor calls it every second): publishes when a
    /// draining backend's deadline has passed, so that it leaves the table and the counts.
    pub fn maintain(&self) {
        let mut inner = self.lock();
        let now = inner.clock.now_ms() / 1000;
        inner.balancers.purge_affinity(now);
        if inner
            .balancers
            .next_deadline(0)
            .is_some_and(|deadline| deadline <= now)
        {
            let engine = self.engine.read();
            super::compile::publish(&engine, &mut inner);
        }
    }

    /// LoadBalancer `name`'s backends: state, table slots and tracked connections.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when there is no such LoadBalancer.
    pub fn load_balancer_view(&self, name: &str) -> Result<LoadBalancerView, ApiError> {
        let (resource, table, backends, zone) = {
            let inner = self.lock();
            let Some(resource) = inner.state.load_balancers.get(name).cloned() else {
                return Err(ApiError::NotFound {
                    kind: "LoadBalancer".into(),
                    name: name.into(),
                });
            };
            let zone = inner
                .network_ids
                .get(&resource.spec.network)
                .map(|id| nat::Zone(id.0));
            (
                resource,
                inner.balancers.table(name),
                inner.balancers.backends(name),
                zone,
            )
        };
        let address = ipv4(&resource);
        let mut connections: BTreeMap<u32, u64> = BTreeMap::new();
        if let (Some(zone), Some(address)) = (zone, address) {
            let conntrack = Arc::clone(&self.engine.read().current().conntrack);
            for entry in conntrack.entries(Some(zone), self.clock.now_ms()) {
                let to_us = entry.original.tuple.dst == IpAddr::V4(address);
                if let (true, Some(id)) = (to_us, entry.attachments.lb_backend) {
                    *connections.entry(id).or_default() += 1;
                }
            }
        }
        let backends = backends
            .iter()
            .map(|backend| {
                let slots = table
                    .as_ref()
                    .and_then(|t| {
                        let index = t.find(backend.id())?;
                        Some(t.share(index))
                    })
                    .unwrap_or(0);
                let state = match (backend.spec().state, backend.health().state()) {
                    (lb::BackendState::Draining { .. }, _) => BackendStateView::Draining,
                    (_, lb::HealthState::Unhealthy) => BackendStateView::Unhealthy,
                    _ => BackendStateView::Healthy,
                };
                BackendView {
                    interface: backend.key().to_string(),
                    ip: backend.spec().addr,
                    state,
                    slots,
                    connections: connections.get(&backend.id().0).copied().unwrap_or(0),
                }
            })
            .collect();
        Ok(LoadBalancerView {
            name: name.to_string(),
            network: resource.spec.network.clone(),
            address,
            table_size: resource.spec.table_size(),
            backends,
        })
    }
}

/// The attached interfaces `balancer` selects: (name, address, port id).
fn backends(
    state: &State,
    ports: &BTreeMap<String, AttachedPort>,
    balancer: &LoadBalancer,
) -> Vec<(String, Ipv4Addr, PortId)> {
    state
        .network_interfaces
        .values()
        .filter(|nic| balancer.spec.selects(&nic.metadata.labels))
        .filter(|nic| nic.status.state == InterfaceState::Up)
        .filter(|nic| {
            state
                .subnets
                .get(&nic.spec.subnet)
                .is_some_and(|s| s.spec.network == balancer.spec.network)
        })
        .filter_map(|nic| {
            let port = ports.get(&nic.metadata.name)?.id;
            let address = nic.status.ips.first()?.addr();
            Some((nic.metadata.name.clone(), address, port))
        })
        .collect()
}

/// The ports of a LoadBalancer as the datapath matches them.
fn ports(balancer: &LoadBalancer) -> Vec<BalancedPort> {
    balancer
        .spec
        .ports
        .iter()
        .map(|p| BalancedPort {
            protocol: p.protocol.number(),
            first: p.port,
            last: p.end_port.unwrap_or(p.port),
            target: p.target_port,
        })
        .collect()
}
