//! What the controller reports besides resources: the routing tables the workers use, the
//! conntrack table and the NAT view (`GET /v1/routing-table`, `/v1/conntrack`, `/v1/nat`),
//! their rows as the API serialises them, and resources as `get` returns them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Controller, Inner, Published};
use crate::control::ApiError;
use crate::control::kinds::StatusView;
use crate::control::nat_rules;
use crate::control::resource::Kind;
use crate::control::store::State;
use crate::tables::snapshot::{NextHop, RouteOrigin};

/// One row of a Network's computed routing table (`GET /v1/routing-table`), as the workers
/// use it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTableRow {
    /// The Network whose table this is.
    pub network: String,
    /// Destination prefix (IPv4 or IPv6).
    pub destination: IpNet,
    /// The router's address, or `null` when the destination is on the egress Subnet.
    pub next_hop: Option<IpAddr>,
    /// The egress Subnet (of a peered Network for a peering route), or `uplink:NAME` for a
    /// Route through a router on the Uplink's link.
    pub subnet: String,
    /// `connected`, `static:ROUTE` or `peering:NETWORK`.
    pub origin: String,
}

/// How many routes the tables the workers use hold (`GET /v1/routing-table?count=true`), by
/// origin.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTableCount {
    /// Every route.
    pub count: usize,
    /// Connected routes (the Subnets' prefixes).
    pub connected: usize,
    /// Routes to the Subnets of peered Networks.
    pub peering: usize,
    /// Routes from Route resources.
    #[serde(rename = "static")]
    pub static_routes: usize,
}

/// One connection of the conntrack table, as `GET /v1/conntrack` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackRow {
    /// `tcp`, `udp` or `icmp`.
    pub protocol: String,
    /// The first packet's key.
    pub original: ConntrackKey,
    /// What replies look like where they arrive (after NAT).
    pub reply: ConntrackKey,
    /// TCP state as Linux names it (`ESTABLISHED`), or `UNREPLIED`/`REPLIED`.
    pub state: String,
    /// Seen both ways (TCP: handshake completed); never evicted.
    pub assured: bool,
    /// Seconds since the connection was created.
    pub age_seconds: u64,
    /// Seconds until it expires without traffic.
    pub timeout_seconds: u64,
}

/// One side of a connection: zone (Network name, or `external` for the uplink side) and
/// tuple. For ICMP echo the identifier stands in for a port (`srcPort` of a request,
/// `dstPort` of a reply; the other is 0).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackKey {
    /// The Network the packet is seen in, or `external`.
    pub zone: String,
    /// Source address.
    pub src: String,
    /// Source port (or echo identifier).
    pub src_port: u16,
    /// Destination address.
    pub dst: String,
    /// Destination port (or echo identifier).
    pub dst_port: u16,
}

/// The NAT view of the node (`GET /v1/nat`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NatReport {
    /// The Uplink, if one exists.
    pub uplink: Option<NatUplink>,
    /// Every Uplink address and the resources that use it.
    pub addresses: Vec<NatAddress>,
    /// Masquerade ports in use per NetworkInterface.
    pub ports_in_use: Vec<NatPortsInUse>,
    /// Conntrack table counters.
    pub conntrack: ConntrackCounters,
    /// Datapath drops of the NAT and conntrack stages by reason (`nat.*`, `conntrack.*`).
    pub drops: BTreeMap<String, u64>,
}

/// The Uplink as `GET /v1/nat` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NatUplink {
    /// Resource name.
    pub name: String,
    /// Host interface.
    pub interface: String,
    /// The switch's MAC on it.
    pub mac: Option<String>,
    /// Next hop.
    pub gateway: Ipv4Addr,
    /// `up`, `pending` or `lost`.
    pub state: String,
}

/// One Uplink address and its users (`NATGateway/gw`, `PortForward/web`, `VirtualIP/v`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NatAddress {
    /// The address.
    pub ip: IpAddr,
    /// Who uses it; empty when free.
    pub used_by: Vec<String>,
}

/// Masquerade ports one NetworkInterface holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NatPortsInUse {
    /// The NATGateway.
    pub nat_gateway: String,
    /// Its Network.
    pub network: String,
    /// The NetworkInterface.
    pub interface: String,
    /// The NAT address its blocks are on.
    pub ip: IpAddr,
    /// Its port blocks, `first-last`.
    pub blocks: Vec<String>,
    /// TCP mappings.
    pub tcp: u32,
    /// UDP mappings.
    pub udp: u32,
    /// ICMP echo identifiers.
    pub icmp: u32,
}

/// Table-wide conntrack counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackCounters {
    /// Connections in the table (live or expired, not yet swept).
    pub entries: usize,
    /// The table limit.
    pub max_entries: usize,
    /// Connections created.
    pub created: u64,
    /// Connections removed because they expired.
    pub expired: u64,
    /// Connections evicted to make room.
    pub evicted: u64,
    /// New flows refused because the table was full.
    pub refused_full: u64,
    /// New flows refused because their reply tuple was taken.
    pub clashes: u64,
    /// Live masquerade mappings.
    pub nat_mappings: usize,
}

impl Controller {
    /// The bond's members as its monitor last reported them (none without a bond).
    fn uplink_members(&self) -> Vec<crate::control::kinds::uplink::MemberStatus> {
        use crate::control::kinds::uplink::{LacpStatus, MemberStatus};
        let snapshot = self.engine.read().current();
        let Some(monitor) = snapshot
            .uplink
            .as_ref()
            .and_then(|uplink| uplink.io.monitor.as_ref())
        else {
            return Vec::new();
        };
        let report = monitor.report.lock().clone();
        report
            .into_iter()
            .map(|member| MemberStatus {
                interface: member.ifname,
                carrier: member.carrier,
                carries_traffic: member.carries,
                active: member.active,
                probes_answered: member.probes_answered,
                lacp: member.lacp.map(|lacp| LacpStatus {
                    state: lacp.rx_state.to_string(),
                    selected: lacp.selected,
                    actor_state: crate::port::lacp::state_words(lacp.actor_state),
                    partner_system: crate::runtime::format_mac(lacp.partner.system),
                    partner_key: lacp.partner.key,
                    partner_port: lacp.partner.port,
                    partner_state: crate::port::lacp::state_words(lacp.partner.state),
                    pdus_received: lacp.pdus_rx,
                    pdus_sent: lacp.pdus_tx,
                    bad_pdus: lacp.bad_pdus,
                }),
            })
            .collect()
    }

    /// What the status of `kind` needs from the running datapath: masquerade port usage for
    /// NATGateways, LoadBalancers' backends, NetworkPolicies' counters, the Uplink's bond
    /// members (nothing for other kinds).
    pub(super) fn live(&self, published: &Published, kind: Kind) -> Live {
        match kind {
            Kind::NatGateway => Live {
                nat_usage: self.engine.read().current().conntrack.nat_usage(),
                port_names: published.port_names.clone(),
                ..Live::default()
            },
            Kind::LoadBalancer | Kind::LoadBalancerRouting => Live {
                load_balancers: published.load_balancers.clone(),
                ..Live::default()
            },
            Kind::Uplink => Live {
                uplink_members: self.uplink_members(),
                ..Live::default()
            },
            Kind::NetworkPolicy => Live {
                network_policies: super::policies::statuses(
                    self.engine.read().current().policy.as_deref(),
                ),
                ..Live::default()
            },
            _ => Live::default(),
        }
    }

    /// The routing tables the workers use, of one Network or of all, sorted by Network and
    /// destination.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when `network` names no Network.
    pub fn routing_table(&self, network: Option<&str>) -> Result<Vec<RoutingTableRow>, ApiError> {
        self.network_exists(network)?;
        let snapshot = self.engine.read().current();
        let mut rows = Vec::new();
        for entry in snapshot.networks() {
            if network.is_some_and(|name| name != entry.name) {
                continue;
            }
            let v4 = entry.routes().map(|route| {
                let hop = match route.next_hop {
                    NextHop::Direct => None,
                    NextHop::Via(addr) => Some(IpAddr::V4(addr)),
                };
                (IpNet::V4(route.prefix), hop, route.subnet, &route.origin)
            });
            let v6 = entry.routes6().map(|route| {
                let hop = match route.next_hop {
                    NextHop::Direct => None,
                    NextHop::Via(addr) => Some(IpAddr::V6(addr)),
                };
                (IpNet::V6(route.prefix), hop, route.subnet, &route.origin)
            });
            for (destination, next_hop, subnet, origin) in v4.chain(v6) {
                let Some(subnet) = snapshot.subnet(subnet) else {
                    continue;
                };
                rows.push(RoutingTableRow {
                    network: entry.name.clone(),
                    destination,
                    next_hop,
                    subnet: subnet.name.clone(),
                    origin: match origin {
                        RouteOrigin::Connected => "connected".into(),
                        RouteOrigin::Static(name) => format!("static:{name}"),
                        RouteOrigin::Peering(peer) => format!("peering:{peer}"),
                    },
                });
            }
        }
        // Routes through routers on the Uplink's link, looked up after the Network's table.
        if let Some(uplink) = snapshot.uplink.as_ref() {
            for (id, destination, router, name) in uplink.routing.routes() {
                let Some(entry) = snapshot.network(id) else {
                    continue;
                };
                if network.is_some_and(|wanted| wanted != entry.name) {
                    continue;
                }
                rows.push(RoutingTableRow {
                    network: entry.name.clone(),
                    destination: IpNet::V4(destination),
                    next_hop: Some(IpAddr::V4(router)),
                    subnet: format!("uplink:{}", uplink.name),
                    origin: format!("static:{name}"),
                });
            }
        }
        // IPv4 before IPv6 (IpNet orders V4 first), each by address then length.
        rows.sort_by(|a, b| (&a.network, a.destination).cmp(&(&b.network, b.destination)));
        Ok(rows)
    }

    /// How many rows [`Controller::routing_table`] would list, by origin, without listing
    /// them (a table of 1,000,000 routes lists as 160 MB of JSON).
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when `network` names no Network.
    pub fn routing_table_count(
        &self,
        network: Option<&str>,
    ) -> Result<RoutingTableCount, ApiError> {
        self.network_exists(network)?;
        let snapshot = self.engine.read().current();
        let mut count = RoutingTableCount::default();
        for entry in snapshot.networks() {
            if network.is_some_and(|name| name != entry.name) {
                continue;
            }
            let v4 = entry.routes().map(|route| (route.subnet, &route.origin));
            let v6 = entry.routes6().map(|route| (route.subnet, &route.origin));
            for (subnet, origin) in v4.chain(v6) {
                if snapshot.subnet(subnet).is_none() {
                    continue;
                }
                count.count += 1;
                match origin {
                    RouteOrigin::Connected => count.connected += 1,
                    RouteOrigin::Peering(_) => count.peering += 1,
                    RouteOrigin::Static(_) => count.static_routes += 1,
                }
            }
        }
        if let Some(uplink) = snapshot.uplink.as_ref() {
            for (id, ..) in uplink.routing.routes() {
                let named = snapshot.network(id).map(|entry| entry.name.as_str());
                if named.is_some() && network.is_none_or(|wanted| Some(wanted) == named) {
                    count.count += 1;
                    count.static_routes += 1;
                }
            }
        }
        Ok(count)
    }

    /// `Ok` when `network` is `None` or names a Network.
    fn network_exists(&self, network: Option<&str>) -> Result<(), ApiError> {
        match network {
            Some(name) if !self.lock().state.networks.contains_key(name) => {
                Err(ApiError::NotFound {
                    kind: Kind::Network.as_str().into(),
                    name: name.into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The neighbour (ARP) table.
    pub fn neighbors(&self) -> Vec<crate::runtime::NeighborRow> {
        self.engine.read().neighbors()
    }

    /// Learned MACs.
    pub fn fdb(&self) -> Vec<crate::runtime::FdbRow> {
        self.engine.read().fdb()
    }

    /// How many MACs are learned, without listing them.
    pub fn fdb_count(&self) -> crate::runtime::FdbCount {
        self.engine.read().fdb_count()
    }

    /// Counters.
    pub fn stats(&self) -> crate::runtime::StatsReport {
        self.engine.read().stats()
    }

    /// Starts a packet capture on a port, the uplink or the VTEP; it runs until the stream
    /// is dropped.
    ///
    /// # Errors
    /// [`CaptureError`](crate::runtime::capture::CaptureError) when there is no such port to
    /// capture on.
    pub fn start_capture(
        &self,
        spec: crate::runtime::capture::CaptureSpec,
    ) -> Result<crate::runtime::capture::CaptureStream, crate::runtime::capture::CaptureError> {
        self.engine.read().start_capture(spec)
    }

    /// The running packet captures.
    pub fn captures(&self) -> Vec<crate::runtime::capture::CaptureInfo> {
        self.engine.read().captures()
    }

    /// Ends every capture's stream (the daemon is stopping).
    pub fn close_captures(&self) {
        self.engine.read().close_captures();
    }

    /// The conntrack zone of Network `network` (its id), or every zone for `None`.
    fn zone(&self, network: Option<&str>) -> Result<Option<nat::Zone>, ApiError> {
        let Some(name) = network else {
            return Ok(None);
        };
        let inner = self.lock();
        match inner.network_ids.get(name) {
            Some(id) => Ok(Some(nat::Zone(id.0))),
            None => Err(ApiError::NotFound {
                kind: Kind::Network.as_str().into(),
                name: name.into(),
            }),
        }
    }

    /// The live connections (of one Network's zone, either side, or all), sorted by zone,
    /// protocol and addresses.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when `network` names no Network.
    pub fn conntrack(&self, network: Option<&str>) -> Result<Vec<ConntrackRow>, ApiError> {
        let zone = self.zone(network)?;
        let names = {
            let inner = self.lock();
            zone_names(&inner)
        };
        let conntrack = Arc::clone(&self.engine.read().current().conntrack);
        let now = self.clock.now_ms();
        let mut entries = conntrack.entries(zone, now);
        entries.sort_by_key(|e| {
            let t = e.original.tuple;
            (
                e.original.zone,
                t.protocol,
                t.src,
                t.src_port,
                t.dst,
                t.dst_port,
            )
        });
        Ok(entries
            .iter()
            .map(|entry| ConntrackRow {
                protocol: entry.original.tuple.protocol.name().to_string(),
                original: conntrack_key(&entry.original, &names),
                reply: conntrack_key(&entry.reply, &names),
                state: entry.state.name().to_string(),
                assured: entry.assured,
                age_seconds: entry.age_ms / 1_000,
                timeout_seconds: entry.expires_in_ms.div_ceil(1_000),
            })
            .collect())
    }

    /// How many live connections there are (of one Network's zone, or all).
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when `network` names no Network.
    pub fn conntrack_count(&self, network: Option<&str>) -> Result<usize, ApiError> {
        let zone = self.zone(network)?;
        let conntrack = Arc::clone(&self.engine.read().current().conntrack);
        Ok(conntrack.count(zone, self.clock.now_ms()))
    }

    /// Removes every connection (of one Network's zone, either side, or all) and their
    /// masquerade mappings; returns how many were removed. Flows that go on are tracked
    /// again from their next packet (TCP mid-stream pickup).
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when `network` names no Network.
    pub fn flush_conntrack(&self, network: Option<&str>) -> Result<usize, ApiError> {
        let zone = self.zone(network)?;
        let conntrack = Arc::clone(&self.engine.read().current().conntrack);
        let flushed = conntrack.flush(zone);
        tracing::info!(
            network = network.unwrap_or("*"),
            flushed,
            "conntrack flushed"
        );
        Ok(flushed)
    }

    /// The NAT view: the Uplink, its addresses and their users, masquerade ports in use per
    /// interface, conntrack counters, and the datapath's uplink (inbound filter included),
    /// NAT and conntrack drops by reason.
    pub fn nat(&self) -> NatReport {
        let inner = self.lock();
        let engine = self.engine.read();
        let snapshot = engine.current();
        let conntrack = &snapshot.conntrack;
        let state = &inner.state;
        let uplink = nat_rules::uplink(state).map(|uplink| NatUplink {
            name: uplink.metadata.name.clone(),
            interface: uplink.spec.interfaces_text(),
            mac: uplink.status.mac.map(|m| m.to_string()),
            gateway: uplink.spec.gateway,
            state: uplink.status.state.to_string(),
        });
        let addresses = nat_rules::address_uses(state)
            .into_iter()
            .map(|(ip, used_by)| NatAddress { ip, used_by })
            .collect();
        let usage = conntrack.nat_usage();
        let names = port_names(&inner);
        let mut ports_in_use = Vec::new();
        for gateway in state.nat_gateways.values() {
            for row in nat_rules::ports_in_use(gateway, &usage, &names) {
                ports_in_use.push(NatPortsInUse {
                    nat_gateway: gateway.metadata.name.clone(),
                    network: gateway.spec.network.clone(),
                    interface: row.interface,
                    ip: row.ip,
                    blocks: row.blocks,
                    tcp: row.tcp,
                    udp: row.udp,
                    icmp: row.icmp,
                });
            }
        }
        let stats = conntrack.stats();
        let counters = ConntrackCounters {
            entries: stats.entries,
            max_entries: conntrack.config().max_entries,
            created: stats.created,
            expired: stats.expired,
            evicted: stats.evicted,
            refused_full: stats.refused_full,
            clashes: stats.clashes,
            nat_mappings: stats.nat_mappings,
        };
        let drops = engine
            .stats()
            .drops
            .into_iter()
            .filter(|(key, _)| {
                key.starts_with("nat.")
                    || key.starts_with("conntrack.")
                    || key.starts_with("uplink.")
            })
            .collect();
        NatReport {
            uplink,
            addresses,
            ports_in_use,
            conntrack: counters,
            drops,
        }
    }
}

/// NetworkInterface names by port id (the interface ids of masquerade port blocks).
pub(super) fn port_names(inner: &Inner) -> BTreeMap<u32, String> {
    inner
        .ports
        .iter()
        .map(|(name, port)| (port.id.0, name.clone()))
        .collect()
}

/// Network names by conntrack zone.
fn zone_names(inner: &Inner) -> BTreeMap<u32, String> {
    inner
        .network_ids
        .iter()
        .map(|(name, id)| (id.0, name.clone()))
        .collect()
}

/// A conntrack key for the API, with the zone named.
fn conntrack_key(key: &nat::FlowKey, names: &BTreeMap<u32, String>) -> ConntrackKey {
    let zone = if key.zone == nat::Zone::EXTERNAL {
        "external".to_string()
    } else {
        names
            .get(&key.zone.0)
            .cloned()
            .unwrap_or_else(|| format!("zone {}", key.zone.0))
    };
    let t = key.tuple;
    ConntrackKey {
        zone,
        src: t.src.to_string(),
        src_port: t.src_port,
        dst: t.dst.to_string(),
        dst_port: t.dst_port,
    }
}

/// What a resource's status needs from the running datapath.
pub(super) type Live = StatusView;

/// A resource as `get` returns it, with the computed status of Networks, Subnets, Routes,
/// NATGateways, PortForwards and VirtualIPs.
pub(super) fn resource_json(
    state: &State,
    kind: Kind,
    name: &str,
    live: &Live,
) -> Result<Value, ApiError> {
    state
        .observed(kind, name, live)
        .ok_or_else(|| ApiError::NotFound {
            kind: kind.as_str().into(),
            name: name.into(),
        })?
        .to_json()
}

/// What one scrape of `GET /metrics` reads, gathered at once.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    /// Port counters, drops and events.
    pub stats: crate::runtime::StatsReport,
    /// Learned MACs.
    pub fdb_entries: usize,
    /// Neighbour entries.
    pub neighbor_entries: usize,
    /// Conntrack counters.
    pub conntrack: nat::ConntrackStats,
    /// The conntrack table's limit.
    pub conntrack_max: usize,
    /// LoadBalancer backends: (key, state, count).
    pub load_balancers: Vec<(String, String, usize)>,
    /// NetworkPolicy counts by key.
    pub policies: BTreeMap<String, crate::tables::policy::PolicyCounts>,
    /// Masquerade mappings in use: (interface, NAT address, protocol, count).
    pub nat_ports: Vec<(String, String, &'static str, u32)>,
    /// A hub's runners by state (`Online`, `Offline`): (state, count).
    pub runners: BTreeMap<String, usize>,
    /// Each worker's load counters, by worker index.
    pub worker_loads: Vec<crate::runtime::counters::WorkerLoad>,
    /// Each worker's costs (system calls, software work, context switches), by index.
    pub worker_costs: Vec<crate::runtime::WorkerCosts>,
}

impl Controller {
    /// The values of one metrics scrape (see `api::metrics`).
    pub fn metrics(&self) -> MetricsSnapshot {
        // The overlay view takes and releases the state lock before the engine lock is taken:
        // the two are never nested here.
        let mut runners = BTreeMap::new();
        if let Ok(crate::control::overlay::OverlayView::Hub(hub)) = self.overlay_view() {
            for runner in hub.runners {
                let state = serde_json::to_value(runner.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{:?}", runner.state));
                *runners.entry(state).or_default() += 1;
            }
        }
        let engine = self.engine.read();
        let snapshot = engine.current();
        let (fdb_entries, neighbor_entries) = engine.table_sizes();
        let published = self.published.load();
        let mut load_balancers = Vec::new();
        for (key, live) in &published.load_balancers {
            for (state, count) in [
                ("Healthy", live.counts.healthy),
                ("Unhealthy", live.counts.unhealthy),
                ("Draining", live.counts.draining),
            ] {
                load_balancers.push((
                    key.clone(),
                    state.to_owned(),
                    usize::try_from(count).unwrap_or(usize::MAX),
                ));
            }
        }
        let names = published.port_names.clone();
        let mut nat_ports = Vec::new();
        for usage in snapshot.conntrack.nat_usage() {
            let name = names
                .get(&usage.interface.0)
                .cloned()
                .unwrap_or_else(|| format!("port-{}", usage.interface.0));
            for (protocol, count) in ["tcp", "udp", "icmp"].into_iter().zip(usage.in_use) {
                nat_ports.push((name.clone(), usage.ip.to_string(), protocol, count));
            }
        }
        let worker_costs = engine.worker_costs();
        MetricsSnapshot {
            nat_ports,
            runners,
            stats: engine.stats_with_costs(&worker_costs),
            worker_loads: engine.worker_loads(),
            worker_costs,
            fdb_entries,
            neighbor_entries,
            conntrack: snapshot.conntrack.stats(),
            conntrack_max: snapshot.conntrack.config().max_entries,
            load_balancers,
            policies: snapshot
                .policy
                .as_ref()
                .map(|set| set.totals())
                .unwrap_or_default(),
        }
    }
}
