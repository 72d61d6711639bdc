//! The LoadBalancers' runtime: per LoadBalancer and address family, its backend set (the
//! NetworkInterfaces its selector picks that have an address of the family, and those that
//! left it and are draining) and the Maglev table compiled from it, which the snapshot
//! carries to the workers. A dual-stack LoadBalancer has two runtimes with the same seed
//! and keys, so its two tables pick alike while their backends' health agrees; each family's
//! backends are health checked over that family (from the Subnet's gateway of the family).
//!
//! Brought up to date at every publish ([`Balancers::sync`]): a selected interface that is
//! attached (`Up`, with an address of the family) is an active backend, keyed by its name
//! (so a re-created interface keeps its slots); one that leaves the selection while attached
//! drains for the LoadBalancer's `drainSeconds` (no new connections while another backend
//! takes them; its connections continue, conntrack remembers their backend); one whose
//! device is gone leaves at once (its connections cannot continue anyway). Connections are
//! never moved: a balanced connection's backend is in its conntrack entry, so a changed
//! table only decides new connections.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::AttachedPort;
use crate::control::ApiError;
use crate::control::kinds::LoadBalancerLive;
use crate::control::resource::{
    BackendStateView, BackendView, InterfaceState, IpFamily, LoadBalancer, LoadBalancerType,
    LoadBalancerView, address_of,
};
use crate::control::resource::{LbProtocol, SessionAffinity};
use crate::control::store::State;
use crate::port::PortId;
use crate::tables::snapshot::{Affinity, BalancedPort, Balancer, NetworkId, ProbeBoard};

/// The flow-hash seed: the same on every node, so a flow maps to the same backend wherever
/// it is balanced.
const FLOW_SEED: u64 = 0x7673_7769_7463_6801;

/// Every LoadBalancer's runtimes, one per family it has.
#[derive(Debug, Default)]
pub(super) struct Balancers {
    by_name: BTreeMap<(String, IpFamily), Runtime>,
    /// Health probes in flight, shared with the workers through the snapshot.
    board: Arc<ProbeBoard>,
}

/// One backend's health checking.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// When the next probe is due (ms, datapath clock).
    next_at: u64,
    /// When the probe in flight was sent, if one is.
    sent_at: Option<u64>,
    /// Where it went.
    target: (IpAddr, u16),
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
    /// Health checking by backend key, while the LoadBalancer asks for it.
    probes: BTreeMap<String, Probe>,
}

/// Clients a LoadBalancer's affinity table remembers at most (the oldest go first).
const AFFINITY_ENTRIES: usize = 262_144;

/// Expired affinity entries examined per LoadBalancer and maintenance tick.
const AFFINITY_PURGE_BUDGET: usize = 4096;

impl Balancers {
    /// Brings every LoadBalancer's backend set up to date with `state` and the attached
    /// `ports`, at `now` (seconds on the datapath's clock), and compiles the tables.
    pub(super) fn sync(&mut self, state: &State, ports: &BTreeMap<String, AttachedPort>, now: u64) {
        let board = &self.board;
        self.by_name.retain(|(name, family), runtime| {
            let keep = state
                .load_balancers
                .get(name)
                .is_some_and(|balancer| balancer.spec.ip_families.contains(family));
            if !keep {
                // Its probes in flight are no longer expected: an answer is the gateway's.
                for probe in runtime.probes.values() {
                    board.forget(probe.target.0, probe.target.1);
                }
            }
            keep
        });
        let families = state.load_balancers.iter().flat_map(|(name, balancer)| {
            balancer
                .spec
                .ip_families
                .iter()
                .map(move |family| (name, balancer, *family))
        });
        for (name, balancer, family) in families {
            let size = lb::TableSize::new(balancer.spec.table_size()).unwrap_or_default();
            let entry = (name.clone(), family);
            let runtime = self.by_name.entry(entry).or_insert_with(|| Runtime {
                set: lb::BackendSet::new(size, lb::HealthCheckConfig::default())
                    .with_seed(FLOW_SEED),
                table: None,
                ports: BTreeMap::new(),
                affinity: None,
                probes: BTreeMap::new(),
            });
            let health = health_config(balancer);
            if *runtime.set.health_config() != health {
                runtime.set.set_health_config(health);
            }
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
            let wanted = backends(state, ports, balancer, family);
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
                        tracing::info!(load_balancer = %name, %family, backend = %key, until, "backend draining");
                    }
                } else {
                    runtime.set.remove(&key);
                    runtime.ports.remove(&key);
                    tracing::info!(load_balancer = %name, %family, backend = %key, "backend removed (detached)");
                }
            }
            for (key, address, port) in wanted {
                let spec = lb::BackendSpec::new(key.clone(), address, 0);
                match runtime.set.upsert(spec) {
                    Ok(_) => {
                        runtime.ports.insert(key, port);
                    }
                    Err(err) => {
                        tracing::warn!(load_balancer = %name, %family, backend = %key, "backend left out: {err}");
                    }
                }
            }
            for gone in runtime.set.remove_expired(now) {
                runtime.ports.remove(gone.key().as_str());
            }
            match runtime.set.compile(now) {
                Ok(table) => runtime.table = Some(Arc::new(table)),
                Err(err) => {
                    tracing::warn!(load_balancer = %name, %family, "cannot build its table: {err}; keeping the previous one");
                }
            }
        }
    }

    /// The health probe board the snapshot carries.
    pub(super) fn board(&self) -> Arc<ProbeBoard> {
        Arc::clone(&self.board)
    }

    /// Runs the health checks due at `now_ms` (the datapath's clock): reads the answers of
    /// the probes in flight (a SYN-ACK: up; a reset, or nothing within `timeoutSeconds`:
    /// down), records them against the thresholds, and sends the probes that are due, from
    /// the backend's Subnet gateway of the family to its target port. Returns true when a
    /// backend started
    /// or stopped taking new connections (the tables must be compiled again).
    pub(super) fn check_health(
        &mut self,
        state: &State,
        ports: &BTreeMap<String, AttachedPort>,
        now_ms: u64,
    ) -> bool {
        let mut changed = false;
        for ((name, family), runtime) in &mut self.by_name {
            let Some(balancer) = state.load_balancers.get(name) else {
                continue;
            };
            let (Some(check), Some(port)) = (&balancer.spec.health_check, probe_port(balancer))
            else {
                for probe in std::mem::take(&mut runtime.probes).into_values() {
                    self.board.forget(probe.target.0, probe.target.1);
                }
                continue;
            };
            let interval = u64::from(check.interval_seconds) * 1000;
            let timeout = u64::from(check.timeout_seconds) * 1000;
            let keys: Vec<String> = runtime
                .set
                .iter()
                .map(|b| b.key().to_string())
                .filter(|key| ports.contains_key(key))
                .collect();
            let board = &self.board;
            runtime.probes.retain(|key, probe| {
                let keep = keys.contains(key);
                if !keep {
                    board.forget(probe.target.0, probe.target.1);
                }
                keep
            });
            for key in keys {
                let Some(backend) = backend_of(state, ports, &key, *family) else {
                    continue;
                };
                let target = (backend.address, port);
                let probe = runtime.probes.entry(key.clone()).or_insert(Probe {
                    next_at: now_ms,
                    sent_at: None,
                    target,
                });
                let mut result = None;
                if let Some(sent_at) = probe.sent_at {
                    match board.take(probe.target.0, probe.target.1) {
                        Some(Some(up)) => result = Some(up),
                        Some(None) if now_ms >= sent_at + timeout => {
                            board.forget(probe.target.0, probe.target.1);
                            result = Some(false);
                        }
                        Some(None) => {}
                        None => probe.sent_at = None,
                    }
                }
                if let Some(up) = result {
                    probe.sent_at = None;
                    if let Some(transition) = runtime.set.record_health(&key, up) {
                        tracing::info!(load_balancer = %name, %family, backend = %key, from = ?transition.from, to = ?transition.to, "backend health changed");
                        changed |= transition.eligibility_changed();
                    }
                }
                if probe.sent_at.is_none() && now_ms >= probe.next_at {
                    probe.target = target;
                    board.expect(target.0, target.1);
                    if let Err(err) = backend.send_probe(port, now_ms) {
                        tracing::debug!(load_balancer = %name, %family, backend = %key, "cannot send a health probe: {err}");
                    }
                    probe.sent_at = Some(now_ms);
                    probe.next_at = now_ms + interval;
                }
            }
        }
        changed
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

    /// The snapshot's LoadBalancers (one per family with an address, in a Network that has
    /// an id) and the ports that are backends.
    pub(super) fn compile(
        &self,
        state: &State,
        network_ids: &BTreeMap<String, NetworkId>,
    ) -> (Vec<Balancer>, Vec<PortId>) {
        let mut balancers = Vec::new();
        let mut backends = Vec::new();
        // Both families of a LoadBalancer share its index (its position by name).
        let mut index = 0u32;
        let mut previous: Option<&str> = None;
        for ((name, family), runtime) in &self.by_name {
            if previous.is_some_and(|p| p != name) {
                index = index.saturating_add(1);
            }
            previous = Some(name);
            let Some(resource) = state.load_balancers.get(name) else {
                continue;
            };
            let (Some(network), Some(address), Some(table)) = (
                network_ids.get(&resource.spec.network).copied(),
                address_of(resource, *family),
                runtime.table.as_ref(),
            ) else {
                continue;
            };
            backends.extend(runtime.ports.values().copied());
            balancers.push(Balancer {
                name: name.clone(),
                index,
                network,
                address,
                ports: ports(resource),
                table: Arc::clone(table),
                seed: FLOW_SEED,
                affinity: runtime.affinity.as_ref().map(|table| Affinity {
                    table: Arc::clone(table),
                    timeout: resource.spec.affinity_timeout(),
                }),
                public: resource.spec.lb_type == LoadBalancerType::Public,
            });
        }
        backends.sort();
        backends.dedup();
        (balancers, backends)
    }

    /// Backends by LoadBalancer, as reads show them: each (interface, address) with its
    /// state, and counts of interfaces. A dual-stack backend counts once, in the best state
    /// of its two families (healthy, else draining, else unhealthy).
    pub(super) fn live(&self) -> BTreeMap<String, LoadBalancerLive> {
        let mut all: BTreeMap<String, LoadBalancerLive> = BTreeMap::new();
        let mut best: BTreeMap<(&str, String), BackendStateView> = BTreeMap::new();
        for ((name, _), runtime) in &self.by_name {
            let live = all.entry(name.clone()).or_default();
            for backend in runtime.set.iter() {
                let state = state_view(backend);
                let key = backend.key().to_string();
                live.backends
                    .push((key.clone(), backend.spec().addr, state));
                best.entry((name.as_str(), key))
                    .and_modify(|kept| *kept = better(*kept, state))
                    .or_insert(state);
            }
        }
        for ((name, _), state) in best {
            if let Some(live) = all.get_mut(name) {
                match state {
                    BackendStateView::Healthy => live.counts.healthy += 1,
                    BackendStateView::Unhealthy => live.counts.unhealthy += 1,
                    BackendStateView::Draining => live.counts.draining += 1,
                }
            }
        }
        all
    }

    /// LoadBalancer `name`'s runtimes by family: its table and its backends (draining ones
    /// included), for the `lb` view.
    pub(super) fn runtimes(
        &self,
        name: &str,
    ) -> Vec<(IpFamily, Option<Arc<lb::BackendTable>>, Vec<lb::Backend>)> {
        self.by_name
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, family), r)| (*family, r.table.clone(), r.set.iter().cloned().collect()))
            .collect()
    }
}

impl super::Controller {
    /// Periodic upkeep (the agent's supervisor calls it every second): publishes when a
    /// draining backend's deadline has passed, so that it leaves the table and the counts.
    pub fn maintain(&self) {
        let mut inner = self.lock();
        let now_ms = inner.clock.now_ms();
        let now = now_ms / 1000;
        inner.balancers.purge_affinity(now);
        let inner_ref = &mut *inner;
        let health_changed =
            inner_ref
                .balancers
                .check_health(&inner_ref.state, &inner_ref.ports, now_ms);
        let drained = inner
            .balancers
            .next_deadline(0)
            .is_some_and(|deadline| deadline <= now);
        if health_changed || drained {
            let engine = self.engine.read();
            super::compile::publish(&engine, &mut inner);
        }
    }

    /// LoadBalancer `name`'s backends: state, table slots and tracked connections.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when there is no such LoadBalancer.
    pub fn load_balancer_view(&self, name: &str) -> Result<LoadBalancerView, ApiError> {
        let (resource, runtimes, zone) = {
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
            (resource, inner.balancers.runtimes(name), zone)
        };
        let addresses = resource.status.ips.clone();
        // Connections by (family, backend id): each family's set numbers its own backends.
        // Public ones from outside are tracked in the external zone.
        let mut connections: BTreeMap<(IpFamily, u32), u64> = BTreeMap::new();
        if let Some(zone) = zone {
            let public = resource.spec.lb_type == LoadBalancerType::Public;
            let conntrack = Arc::clone(&self.engine.read().current().conntrack);
            for entry in conntrack.entries(None, self.clock.now_ms()) {
                let tuple = entry.original.tuple;
                let zone_ok = entry.original.zone == zone
                    || (public && entry.original.zone == nat::Zone::EXTERNAL);
                if let (true, true, Some(id)) = (
                    zone_ok,
                    addresses.contains(&tuple.dst),
                    entry.attachments.lb_backend,
                ) {
                    *connections
                        .entry((IpFamily::of(tuple.dst), id))
                        .or_default() += 1;
                }
            }
        }
        let mut backends = Vec::new();
        for (family, table, members) in runtimes {
            for backend in members {
                let slots = table
                    .as_ref()
                    .and_then(|t| {
                        let index = t.find(backend.id())?;
                        Some(t.share(index))
                    })
                    .unwrap_or(0);
                backends.push(BackendView {
                    interface: backend.key().to_string(),
                    ip: backend.spec().addr,
                    state: state_view(&backend),
                    slots,
                    connections: connections
                        .get(&(family, backend.id().0))
                        .copied()
                        .unwrap_or(0),
                });
            }
        }
        Ok(LoadBalancerView {
            name: name.to_string(),
            network: resource.spec.network.clone(),
            addresses,
            table_size: resource.spec.table_size(),
            backends,
        })
    }
}

/// A backend's state as reads show it.
fn state_view(backend: &lb::Backend) -> BackendStateView {
    match (backend.spec().state, backend.health().state()) {
        (lb::BackendState::Draining { .. }, _) => BackendStateView::Draining,
        (_, lb::HealthState::Unhealthy) => BackendStateView::Unhealthy,
        _ => BackendStateView::Healthy,
    }
}

/// The better of a dual-stack backend's two states: healthy, else draining, else unhealthy.
fn better(a: BackendStateView, b: BackendStateView) -> BackendStateView {
    let rank = |state| match state {
        BackendStateView::Healthy => 2,
        BackendStateView::Draining => 1,
        BackendStateView::Unhealthy => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// The attached interfaces `balancer` selects that have an address of `family`: (name,
/// address, port id).
fn backends(
    state: &State,
    ports: &BTreeMap<String, AttachedPort>,
    balancer: &LoadBalancer,
    family: IpFamily,
) -> Vec<(String, IpAddr, PortId)> {
    state
        .network_interfaces
        .values()
        .filter(|nic| balancer.selects(nic))
        .filter(|nic| nic.status.state == InterfaceState::Up)
        .filter(|nic| {
            state
                .subnets
                .get(&nic.spec.subnet)
                .is_some_and(|s| s.spec.network == balancer.spec.network)
        })
        .filter_map(|nic| {
            let port = ports.get(&nic.metadata.key())?.id;
            let address = interface_address(nic, family)?;
            Some((nic.metadata.key(), address, port))
        })
        .collect()
}

/// `nic`'s address of `family`, once it has one.
fn interface_address(
    nic: &crate::control::resource::NetworkInterface,
    family: IpFamily,
) -> Option<IpAddr> {
    match family {
        IpFamily::IPv4 => nic.status.ips.first().map(|net| IpAddr::V4(net.addr())),
        IpFamily::IPv6 => nic.status.ipv6.map(|net| IpAddr::V6(net.addr())),
    }
}

/// The health checks of `balancer` as the lb crate counts them (defaults when it has none:
/// backends then stay `Unknown`, which takes connections).
fn health_config(balancer: &LoadBalancer) -> lb::HealthCheckConfig {
    match &balancer.spec.health_check {
        Some(check) => lb::HealthCheckConfig {
            interval_ms: check.interval_seconds.saturating_mul(1000),
            timeout_ms: check.timeout_seconds.saturating_mul(1000),
            healthy_threshold: check.healthy_threshold,
            unhealthy_threshold: check.unhealthy_threshold,
        },
        None => lb::HealthCheckConfig::default(),
    }
}

/// The backend port health probes go to: the target of the LoadBalancer's first TCP port.
fn probe_port(balancer: &LoadBalancer) -> Option<u16> {
    balancer
        .spec
        .ports
        .iter()
        .find(|p| p.protocol == LbProtocol::TCP)
        .map(|p| p.target_port.unwrap_or(p.port))
}

/// What probing a backend needs: its port's queues, its MAC and address, its Subnet's
/// gateway (of the address's family).
struct ProbeTarget {
    io: Arc<crate::port::PortIo>,
    mac: [u8; 6],
    address: IpAddr,
    gateway: IpAddr,
    gateway_mac: [u8; 6],
}

fn backend_of(
    state: &State,
    ports: &BTreeMap<String, AttachedPort>,
    key: &str,
    family: IpFamily,
) -> Option<ProbeTarget> {
    let nic = state.network_interfaces.get(key)?;
    let subnet = state.subnets.get(&nic.spec.subnet)?;
    let gateway = match family {
        IpFamily::IPv4 => IpAddr::V4(subnet.spec.gateway),
        IpFamily::IPv6 => IpAddr::V6(subnet.spec.ipv6.as_ref()?.gateway()),
    };
    Some(ProbeTarget {
        io: Arc::clone(&ports.get(key)?.io),
        mac: nic.status.mac?.0,
        address: interface_address(nic, family)?,
        gateway,
        gateway_mac: crate::control::routing::gateway_mac(state, subnet).0,
    })
}

impl ProbeTarget {
    /// Writes a TCP SYN from the gateway's [`ProbeBoard::SOURCE_PORT`] to `port` into the
    /// backend's first queue, over the address's family.
    fn send_probe(&self, port: u16, now_ms: u64) -> std::io::Result<()> {
        use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket, TcpSeqNumber};
        const VNET: usize = crate::wire::VNET_HDR_LEN;
        const TCP_LEN: usize = 20;
        let (ethertype, ip_len) = match self.address {
            IpAddr::V4(_) => ([0x08, 0x00], 20),
            IpAddr::V6(_) => ([0x86, 0xdd], crate::wire::ipv6::HEADER_LEN),
        };
        let mut frame = vec![0u8; VNET + 14 + ip_len + TCP_LEN];
        frame[VNET..VNET + 6].copy_from_slice(&self.mac);
        frame[VNET + 6..VNET + 12].copy_from_slice(&self.gateway_mac);
        frame[VNET + 12..VNET + 14].copy_from_slice(&ethertype);
        let ip = &mut frame[VNET + 14..VNET + 14 + ip_len];
        match (self.gateway, self.address) {
            (IpAddr::V4(gateway), IpAddr::V4(address)) => {
                let mut ip = Ipv4Packet::new_unchecked(ip);
                ip.set_version(4);
                ip.set_header_len(20);
                ip.set_total_len(40);
                ip.set_ident(u16::try_from(now_ms & 0xffff).unwrap_or(0));
                ip.set_dont_frag(true);
                ip.set_hop_limit(64);
                ip.set_next_header(smoltcp::wire::IpProtocol::Tcp);
                ip.set_src_addr(gateway);
                ip.set_dst_addr(address);
                ip.fill_checksum();
            }
            (IpAddr::V6(gateway), IpAddr::V6(address)) => {
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&20u16.to_be_bytes());
                ip[6] = 6;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&gateway.octets());
                ip[24..40].copy_from_slice(&address.octets());
            }
            _ => return Err(std::io::Error::other("gateway and backend of two families")),
        }
        {
            let mut tcp = TcpPacket::new_unchecked(&mut frame[VNET + 14 + ip_len..]);
            tcp.set_src_port(ProbeBoard::SOURCE_PORT);
            tcp.set_dst_port(port);
            tcp.set_seq_number(TcpSeqNumber(
                i32::try_from(now_ms & 0x3fff_ffff).unwrap_or(0),
            ));
            tcp.set_header_len(20);
            tcp.set_syn(true);
            tcp.set_window_len(1024);
            tcp.fill_checksum(
                &IpAddress::from(self.gateway),
                &IpAddress::from(self.address),
            );
        }
        let queue = self
            .io
            .queues
            .first()
            .ok_or_else(|| std::io::Error::other("the port has no queue"))?;
        queue.lock().send(&frame)
    }
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
