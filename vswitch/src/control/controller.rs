//! The controller: owns the desired state (persisted in the [`Store`]), the opened ports and
//! the engine, and turns one into the other.
//!
//! Invariants:
//! - One internal lock serialises every change; a change is validated whole
//!   ([`validate::plan`]) before anything happens, and either completes (devices created,
//!   state persisted, snapshot published) or is rolled back so that the running state is as
//!   before.
//! - Port I/O handles (`Arc<PortIo>`) live only here and in published snapshots, never in the
//!   store. A port's [`PortId`] is dense and reused after delete; `Engine::reset_port` runs
//!   before an id is (re)used and after its port is gone.
//! - A NetworkInterface whose device cannot be re-opened after a restart stays, with state
//!   `lost` and a message, out of the snapshot, until the user deletes it.
//! - Subnet and Network ids are dense and stable within a run: a name keeps its id while it
//!   exists; a freed id is reused by the next new name.
//! - The node id is generated on first boot and persisted before anything else; gateway MACs
//!   derive from it ([`routing::gateway_mac`]).
//! - At most one Uplink. Its device is opened with one queue per worker, gets a [`PortId`]
//!   from the same pool as interfaces (so its counters live in the same arrays) and a
//!   [`SubnetId`] for its neighbour entries; both are released when it is closed. An Uplink
//!   whose device cannot be opened after a restart stays, `lost`, out of the snapshot.
//! - The NAT rules are compiled from the desired state at every publish; the conntrack table
//!   is the engine's, carried from one snapshot to the next, so connections survive any
//!   change of configuration. Deleting a NetworkInterface removes its connections, deleting
//!   a Network flushes its zone: their ids are reused, their connections must not be.
//! - Lock order: the state lock, then the engine lock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use serde_json::Value;

use super::ApiError;
use super::kinds::StatusView;
use super::nat_rules;
use super::overlay;
use super::resource::{
    Document, HubRef, InterfaceState, Kind, NetworkInterface, Origin, OverlayRole, OverlayState,
    Resource, parse_documents, parse_one,
};
use super::routing;
use super::store::{NodeId, State, Store};
use super::validate::{self, Mode, Plan, UplinkWork};
use crate::port::{self, AttachRequest, MAX_PORTS, PortError, PortId, PortIo};
use crate::runtime::Engine;
use crate::tables::clock::{Clock, MonotonicClock};
use crate::tables::snapshot::{
    Egress, NetworkEntry, NetworkId, NextHop, PortEntry, RouteEntry, RouteOrigin, Snapshot,
    SubnetEntry, SubnetId, Tunnel, UplinkEntry,
};

/// How long a removed port's queues may stay in use by workers (finishing a batch on an
/// older snapshot) before the controller stops waiting to close them itself.
const RETIRE_WAIT: Duration = Duration::from_secs(1);

/// What `apply` did to one document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppliedResource {
    /// Canonical kind (`Subnet`).
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub action: String,
}

/// One row of a Network's computed routing table (`GET /v1/routing-table`), as the workers
/// use it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTableRow {
    /// The Network whose table this is.
    pub network: String,
    /// Destination prefix.
    pub destination: Ipv4Net,
    /// The router's address, or `null` when the destination is on the egress Subnet.
    pub next_hop: Option<Ipv4Addr>,
    /// The egress Subnet (of a peered Network for a peering route).
    pub subnet: String,
    /// `connected`, `static:ROUTE` or `peering:NETWORK`.
    pub origin: String,
}

/// What the uplink's device reported when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkDevice {
    /// The interface's MTU.
    pub mtu: u16,
    /// The interface's own MAC (the host's; the switch must use another).
    pub host_mac: [u8; 6],
}

/// Opens an uplink device: interface name, the switch's MAC, queues (one per worker).
pub type UplinkOpen = fn(&str, [u8; 6], usize) -> Result<(PortIo, UplinkDevice), PortError>;

/// The uplink's I/O as the controller uses it: the real device functions in the daemon,
/// stand-ins in tests that need no interface.
#[derive(Debug, Clone, Copy)]
pub struct UplinkOps {
    /// Whether a host interface of that name exists in the daemon's namespace.
    pub exists: fn(&str) -> bool,
    /// Opens the interface (AF_PACKET, one queue per worker) for the switch's MAC.
    pub open: UplinkOpen,
    /// Closes what `open` opened.
    pub close: fn(PortIo),
}

impl UplinkOps {
    /// The real device functions ([`crate::port::uplink::open`] and
    /// [`crate::port::uplink::close`]).
    pub fn device() -> UplinkOps {
        UplinkOps {
            exists: interface_exists,
            open: open_uplink_device,
            close: close_uplink_device,
        }
    }
}

/// True when the daemon's namespace has an interface `ifname`.
fn interface_exists(ifname: &str) -> bool {
    nix::net::if_::if_nametoindex(ifname).is_ok()
}

fn open_uplink_device(
    ifname: &str,
    mac: [u8; 6],
    queues: usize,
) -> Result<(PortIo, UplinkDevice), PortError> {
    let (io, info) = port::uplink::open(ifname, mac, queues)?;
    if !info.filtered {
        tracing::warn!(uplink = %ifname, "the kernel refused the uplink's receive filter: every frame on the interface reaches the switch");
    }
    Ok((
        io,
        UplinkDevice {
            mtu: info.mtu,
            host_mac: info.host_mac,
        },
    ))
}

fn close_uplink_device(io: PortIo) {
    port::uplink::close(io);
}

/// One connection of the conntrack table, as `GET /v1/conntrack` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NatAddress {
    /// The address.
    pub ip: Ipv4Addr,
    /// Who uses it; empty when free.
    pub used_by: Vec<String>,
}

/// Masquerade ports one NetworkInterface holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NatPortsInUse {
    /// The NATGateway.
    pub nat_gateway: String,
    /// Its Network.
    pub network: String,
    /// The NetworkInterface.
    pub interface: String,
    /// The NAT address its blocks are on.
    pub ip: Ipv4Addr,
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

/// Owns desired state, allocations, ports and the engine. All methods are blocking and
/// serialised by an internal lock; call them from a blocking context.
#[derive(Debug)]
pub struct Controller {
    inner: Mutex<Inner>,
    /// What reads (`get`, `list`) see: published whenever a write changed it, so that reads
    /// never wait behind a write (which may hold the lock across netlink work).
    published: ArcSwap<Published>,
    engine: RwLock<Engine>,
    /// The datapath's clock (conntrack ages and timeouts are read with it).
    clock: Arc<dyn Clock>,
}

/// The state as last changed, and what a resource's status needs besides it.
#[derive(Debug, Default, PartialEq)]
struct Published {
    state: State,
    /// NetworkInterface names by port id.
    port_names: BTreeMap<u32, String>,
}

/// The state lock, held: on release, publishes the state for readers if it changed.
struct Locked<'a> {
    guard: parking_lot::MutexGuard<'a, Inner>,
    published: &'a ArcSwap<Published>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let current = self.published.load();
        let port_names = port_names(&self.guard);
        if current.state != self.guard.state || current.port_names != port_names {
            self.published.store(Arc::new(Published {
                state: self.guard.state.clone(),
                port_names,
            }));
        }
    }
}

/// Everything the lock protects.
#[derive(Debug)]
struct Inner {
    store: Store,
    /// The persisted state, as last saved.
    state: State,
    /// Opened ports by NetworkInterface name (only interfaces that are `up`).
    ports: BTreeMap<String, AttachedPort>,
    port_ids: IdPool,
    subnet_ids: BTreeMap<String, SubnetId>,
    subnet_id_pool: IdPool,
    network_ids: BTreeMap<String, NetworkId>,
    network_id_pool: IdPool,
    /// The Uplink's device, while it is open.
    uplink: Option<OpenUplink>,
    uplink_ops: UplinkOps,
    /// The VTEP, while an Overlay is configured and its sockets are open.
    vtep: Option<OpenVtep>,
    /// Tunnel port ids by Subnet name: the Subnets with a VNI, while the VTEP is open.
    tunnel_ids: BTreeMap<String, PortId>,
}

/// The VTEP's opened sockets and the id its counters are kept under.
#[derive(Debug)]
struct OpenVtep {
    local: std::net::SocketAddrV4,
    id: PortId,
    io: Arc<port::Vtep>,
}

#[derive(Debug)]
struct AttachedPort {
    id: PortId,
    io: Arc<PortIo>,
}

/// The Uplink's opened device and the ids it holds.
#[derive(Debug)]
struct OpenUplink {
    /// Uplink resource name.
    name: String,
    id: PortId,
    segment: SubnetId,
    io: Arc<PortIo>,
    mtu: u16,
}

/// Dense ids: the lowest freed id first, else the next unused one, up to a limit.
#[derive(Debug)]
struct IdPool {
    next: u32,
    free: BTreeSet<u32>,
    limit: u32,
}

impl IdPool {
    fn new(limit: u32) -> IdPool {
        IdPool {
            next: 0,
            free: BTreeSet::new(),
            limit,
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next >= self.limit {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    fn release(&mut self, id: u32) {
        self.free.insert(id);
    }

    fn available(&self) -> u64 {
        u64::from(self.limit - self.next) + u64::try_from(self.free.len()).unwrap_or(u64::MAX)
    }
}

impl Controller {
    /// Opens (creating if needed) the state directory, restores persisted resources and
    /// allocations, and re-opens the ports and the Uplink that still exist.
    ///
    /// Conntrack ages are read with a clock started here; give the engine's clock with
    /// [`open_with_clock`](Controller::open_with_clock) so they match the datapath's exactly.
    ///
    /// # Errors
    /// When the state directory cannot be created or its files cannot be read.
    pub fn open(state_dir: &Path, engine: Engine) -> Result<Controller, ApiError> {
        Controller::open_with_clock(state_dir, engine, Arc::new(MonotonicClock::new()))
    }

    /// [`open`](Controller::open) with the clock the engine was started with
    /// ([`Engine::start_with_clock`]), so conntrack ages and timeouts are read on the
    /// datapath's time.
    ///
    /// # Errors
    /// As [`open`](Controller::open).
    pub fn open_with_clock(
        state_dir: &Path,
        engine: Engine,
        clock: Arc<dyn Clock>,
    ) -> Result<Controller, ApiError> {
        Controller::open_with(state_dir, engine, clock, UplinkOps::device())
    }

    /// [`open_with_clock`](Controller::open_with_clock) with the given uplink I/O (tests use
    /// stand-ins that need no interface).
    ///
    /// # Errors
    /// As [`open`](Controller::open).
    pub fn open_with(
        state_dir: &Path,
        engine: Engine,
        clock: Arc<dyn Clock>,
        uplink_ops: UplinkOps,
    ) -> Result<Controller, ApiError> {
        let (store, loaded) = Store::open(state_dir)?;
        let fresh = loaded.is_none();
        let mut state = loaded.unwrap_or_default();
        let new_node = state.node_id.is_none();
        if new_node {
            let id = NodeId::generate();
            tracing::info!(node_id = %id, "generated this node's id (gateway MACs derive from it)");
            state.node_id = Some(id);
        }
        let mut inner = Inner {
            store,
            state,
            ports: BTreeMap::new(),
            port_ids: IdPool::new(u32::try_from(MAX_PORTS).unwrap_or(u32::MAX)),
            subnet_ids: BTreeMap::new(),
            subnet_id_pool: IdPool::new(u32::MAX),
            network_ids: BTreeMap::new(),
            network_id_pool: IdPool::new(u32::MAX),
            uplink: None,
            uplink_ops,
            vtep: None,
            tunnel_ids: BTreeMap::new(),
        };
        let workers = engine.workers();
        let mut status_changed = false;
        let names: Vec<String> = inner.state.network_interfaces.keys().cloned().collect();
        for name in names {
            let reopened = attach_request(&inner.state, &name, workers)
                .and_then(|req| port::reopen(&req).map_err(|err| err.to_string()))
                .and_then(|io| match inner.port_ids.allocate() {
                    Some(id) => Ok((PortId(id), io)),
                    None => Err(format!("more than {MAX_PORTS} ports")),
                });
            let Some(nic) = inner.state.network_interfaces.get_mut(&name) else {
                continue;
            };
            let before = nic.status.clone();
            match reopened {
                Ok((id, io)) => {
                    engine.reset_port(id);
                    nic.status.state = InterfaceState::Up;
                    nic.status.message = None;
                    nic.status.host_ifname.clone_from(&io.host_ifname);
                    tracing::info!(interface = %name, port = id.0, "re-opened port");
                    inner.ports.insert(
                        name.clone(),
                        AttachedPort {
                            id,
                            io: Arc::new(io),
                        },
                    );
                }
                Err(err) => {
                    tracing::warn!(
                        interface = %name,
                        "cannot re-open port after restart: {err}; marked lost (delete the NetworkInterface to clean up)"
                    );
                    nic.status.state = InterfaceState::Lost;
                    nic.status.message = Some(format!(
                        "cannot re-open after restart: {err}; delete the NetworkInterface and create it again"
                    ));
                }
            }
            status_changed |= nic.status != before;
        }
        if let Some(name) = inner.state.uplinks.keys().next().cloned() {
            let before = inner.state.uplinks.get(&name).map(|u| u.status.clone());
            let origin = Origin::resource(Kind::Uplink, &name);
            match open_uplink(&inner, &inner.state, &name, workers, &origin) {
                Ok((io, device)) => {
                    let mac = inner
                        .state
                        .uplinks
                        .get(&name)
                        .map(|u| nat_rules::uplink_mac(&inner.state, u));
                    if let Err(err) = install_uplink(&engine, &mut inner, &name, io, device) {
                        tracing::warn!(uplink = %name, "cannot re-open the uplink after restart: {err}; marked lost");
                        mark_uplink(
                            &mut inner.state,
                            &name,
                            InterfaceState::Lost,
                            Some(err.to_string()),
                        );
                    } else if let Some(uplink) = inner.state.uplinks.get_mut(&name) {
                        tracing::info!(uplink = %name, interface = %uplink.spec.interface, "re-opened the uplink");
                        uplink.status.state = InterfaceState::Up;
                        uplink.status.message = None;
                        uplink.status.mac = mac;
                        uplink.status.mtu = Some(device.mtu);
                    }
                }
                Err(err) => {
                    tracing::warn!(uplink = %name, "cannot re-open the uplink after restart: {err}; marked lost (fix the interface and apply the Uplink again, or delete it)");
                    mark_uplink(
                        &mut inner.state,
                        &name,
                        InterfaceState::Lost,
                        Some(format!("cannot re-open after restart: {err}")),
                    );
                }
            }
            status_changed |= inner.state.uplinks.get(&name).map(|u| u.status.clone()) != before;
        }
        if let Some(overlay) = inner.state.overlays.values().next().cloned() {
            let local = std::net::SocketAddrV4::new(overlay.spec.local_address, overlay.spec.port);
            let name = overlay.metadata.name.clone();
            let opened = port::vtep::open(local, workers);
            let status = match opened {
                Ok(io) => {
                    install_vtep(&engine, &mut inner, local, io);
                    tracing::info!(overlay = %name, %local, "re-opened the VTEP");
                    (initial_overlay_state(&overlay), None)
                }
                Err(err) => {
                    tracing::warn!(overlay = %name, %local, "cannot re-open the VTEP after restart: {err}; apply the Overlay again once fixed");
                    (
                        super::resource::OverlayState::Failed,
                        Some(format!("cannot open the VTEP on {local}: {err}")),
                    )
                }
            };
            if let Some(overlay) = inner.state.overlays.get_mut(&name) {
                let before = (overlay.status.state, overlay.status.message.clone());
                overlay.status.state = status.0;
                overlay.status.message = status.1;
                status_changed |= before != (overlay.status.state, overlay.status.message.clone());
            }
        }
        if status_changed || fresh || new_node {
            inner.store.save(&inner.state)?;
        }
        let controller = Controller {
            published: ArcSwap::from_pointee(Published {
                state: inner.state.clone(),
                port_names: port_names(&inner),
            }),
            inner: Mutex::new(inner),
            engine: RwLock::new(engine),
            clock,
        };
        {
            let mut inner = controller.lock();
            {
                let engine = controller.engine.read();
                publish(&engine, &mut inner);
            }
            // A change the overlay could not make before (e.g. its host TAP's name was
            // taken) is retried at every start.
            controller.sync_generated_logged(&mut inner);
        }
        Ok(controller)
    }

    /// Takes the state lock; readers see the state as of the last release.
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self.inner.lock(),
            published: &self.published,
        }
    }

    /// True when the state directory held no resources (first boot), or all were deleted.
    pub fn is_empty(&self) -> bool {
        self.published.load().state.is_empty()
    }

    /// Applies one or more YAML or JSON documents (`---`-separated, or a JSON array). All are
    /// validated before any is applied; if one is wrong nothing changes.
    ///
    /// # Errors
    /// [`ApiError`] naming the document, kind/name and field.
    pub fn apply(&self, text: &str) -> Result<Vec<AppliedResource>, ApiError> {
        let docs = parse_documents(text)?;
        let mut inner = self.lock();
        let plan = validate::plan(&inner.state, docs, Mode::Apply)?;
        let applied = plan.applied.clone();
        self.execute(&mut inner, plan)?;
        self.sync_generated_logged(&mut inner);
        Ok(applied)
    }

    /// Creates one resource of `kind` from a JSON body; refuses a name that exists (409).
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn create(&self, kind: &str, body: &str) -> Result<serde_json::Value, ApiError> {
        let kind = Kind::parse(kind)?;
        let resource = parse_one(kind, body)?;
        let name = resource.name().to_string();
        let doc = Document {
            origin: Origin::resource(kind, &name),
            resource,
        };
        let mut inner = self.lock();
        let plan = validate::plan(&inner.state, vec![doc], Mode::Create)?;
        self.execute(&mut inner, plan)?;
        self.sync_generated_logged(&mut inner);
        drop(inner);
        self.get(kind.as_str(), &name)
    }

    /// Lists resources of `kind` (any case, singular or plural).
    ///
    /// # Errors
    /// [`ApiError::Invalid`] for an unknown kind.
    pub fn list(&self, kind: &str) -> Result<Vec<serde_json::Value>, ApiError> {
        let kind = Kind::parse(kind)?;
        let published = self.published.load();
        let live = self.live(&published, kind);
        published
            .state
            .names(kind)
            .into_iter()
            .map(|name| resource_json(&published.state, kind, &name, &live))
            .collect()
    }

    /// One resource.
    ///
    /// # Errors
    /// [`ApiError::NotFound`].
    pub fn get(&self, kind: &str, name: &str) -> Result<serde_json::Value, ApiError> {
        let kind = Kind::parse(kind)?;
        let published = self.published.load();
        let live = self.live(&published, kind);
        resource_json(&published.state, kind, name, &live)
    }

    /// What the status of `kind` needs from the running datapath: masquerade port usage for
    /// NATGateways (nothing for other kinds).
    fn live(&self, published: &Published, kind: Kind) -> Live {
        if kind != Kind::NatGateway {
            return Live::default();
        }
        Live {
            nat_usage: self.engine.read().current().conntrack.nat_usage(),
            port_names: published.port_names.clone(),
        }
    }

    /// Deletes one resource (for a NetworkInterface: removes the device, releases its IPs).
    ///
    /// # Errors
    /// [`ApiError::NotFound`], or [`ApiError::Conflict`] when others depend on it.
    pub fn delete(&self, kind: &str, name: &str) -> Result<(), ApiError> {
        let kind = Kind::parse(kind)?;
        let mut inner = self.lock();
        if let Some(owner) = validate::generated_by(&inner.state, kind, name) {
            return Err(ApiError::Conflict {
                message: format!(
                    "{kind} {name:?} is generated by {owner}; it goes when the {owner} is deleted or no longer needs it"
                ),
                field: None,
            });
        }
        self.delete_locked(&mut inner, kind, name)?;
        if kind == Kind::Overlay {
            self.sync_generated_logged(&mut inner);
        }
        Ok(())
    }

    /// Deletes one resource under the state lock (generated ones too).
    fn delete_locked(&self, inner: &mut Inner, kind: Kind, name: &str) -> Result<(), ApiError> {
        validate::check_delete(&inner.state, kind, name)?;
        if kind == Kind::Overlay {
            check_overlay_delete(&inner.state)?;
        }
        let mut next = inner.state.clone();
        // Network and port ids are reused: connections (and masquerade port blocks) of what
        // is deleted must not be inherited by the next user of its id.
        let forget = match kind {
            Kind::Network => inner
                .network_ids
                .get(name)
                .map(|id| (nat::Zone(id.0), None)),
            Kind::NetworkInterface => {
                interface_zone(inner, name).map(|(zone, ips)| (zone, Some(ips)))
            }
            _ => None,
        };
        match kind {
            Kind::NetworkInterface => {
                let engine = self.engine.read();
                self.delete_interface(&engine, inner, name, next)?;
            }
            Kind::Uplink => {
                let engine = self.engine.read();
                self.delete_uplink(&engine, inner, name, next)?;
            }
            Kind::Overlay => {
                next.overlays.remove(name);
                inner.store.save(&next)?;
                inner.state = next;
                let engine = self.engine.read();
                close_vtep(&engine, inner);
            }
            Kind::Network
            | Kind::Subnet
            | Kind::Route
            | Kind::NatGateway
            | Kind::PortForward
            | Kind::VirtualIp => {
                next.remove(kind, name);
                if kind == Kind::Subnet {
                    next.ipam.remove(name);
                }
                inner.store.save(&next)?;
                inner.state = next;
                // Peers' tables (a Network), connected routes (a Subnet), static routes and
                // routed sources (a Route), NAT rules (the NAT kinds) change.
                let engine = self.engine.read();
                publish(&engine, inner);
            }
        }
        if let Some((zone, addresses)) = forget {
            let conntrack = Arc::clone(&self.engine.read().current().conntrack);
            let removed = match addresses {
                None => conntrack.flush(Some(zone)),
                Some(addresses) => {
                    forget_connections(&conntrack, zone, &addresses, self.clock.now_ms())
                }
            };
            if removed > 0 {
                tracing::info!(kind = %kind, name, removed, "removed its tracked connections");
            }
        }
        tracing::info!(kind = %kind, name, "deleted");
        Ok(())
    }

    /// The routing tables the workers use, of one Network or of all, sorted by Network and
    /// destination.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when `network` names no Network.
    pub fn routing_table(&self, network: Option<&str>) -> Result<Vec<RoutingTableRow>, ApiError> {
        if let Some(name) = network {
            if !self.lock().state.networks.contains_key(name) {
                return Err(ApiError::NotFound {
                    kind: Kind::Network.as_str().into(),
                    name: name.into(),
                });
            }
        }
        let snapshot = self.engine.read().current();
        let mut rows = Vec::new();
        for entry in snapshot.networks() {
            if network.is_some_and(|name| name != entry.name) {
                continue;
            }
            for route in entry.routes() {
                let Some(subnet) = snapshot.subnet(route.subnet) else {
                    continue;
                };
                rows.push(RoutingTableRow {
                    network: entry.name.clone(),
                    destination: route.prefix,
                    next_hop: match route.next_hop {
                        NextHop::Direct => None,
                        NextHop::Via(addr) => Some(addr),
                    },
                    subnet: subnet.name.clone(),
                    origin: match &route.origin {
                        RouteOrigin::Connected => "connected".into(),
                        RouteOrigin::Static(name) => format!("static:{name}"),
                        RouteOrigin::Peering(peer) => format!("peering:{peer}"),
                    },
                });
            }
        }
        rows.sort_by(|a, b| {
            let key = |r: &RoutingTableRow| {
                (
                    r.network.clone(),
                    r.destination.network(),
                    r.destination.prefix_len(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok(rows)
    }

    /// The neighbour (ARP) table.
    pub fn neighbors(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.read().neighbors()).unwrap_or_default()
    }

    /// Learned MACs.
    pub fn fdb(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.read().fdb()).unwrap_or_default()
    }

    /// Counters.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.engine.read().stats()).unwrap_or_default()
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
    /// interface, conntrack counters, and the datapath's NAT and conntrack drops by reason.
    pub fn nat(&self) -> NatReport {
        let inner = self.lock();
        let engine = self.engine.read();
        let snapshot = engine.current();
        let conntrack = &snapshot.conntrack;
        let state = &inner.state;
        let uplink = nat_rules::uplink(state).map(|uplink| NatUplink {
            name: uplink.metadata.name.clone(),
            interface: uplink.spec.interface.clone(),
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
            .filter(|(key, _)| key.starts_with("nat.") || key.starts_with("conntrack."))
            .collect();
        NatReport {
            uplink,
            addresses,
            ports_in_use,
            conntrack: counters,
            drops,
        }
    }

    /// Stops the engine. Ports are left in place so a restarted daemon re-opens them.
    pub fn shutdown(&self) {
        self.engine.write().shutdown();
    }

    /// Carries out a validated plan: re-creates and creates devices, opens the Uplink,
    /// persists, publishes. On failure, undoes the device work so that the running state is
    /// as before.
    fn execute(&self, inner: &mut Inner, mut plan: Plan) -> Result<(), ApiError> {
        if !plan.changed {
            return Ok(());
        }
        let engine = self.engine.read();
        let workers = engine.workers();
        let origin_of = |kind: Kind, name: &str| {
            plan.origins
                .get(&(kind, name.to_string()))
                .cloned()
                .unwrap_or_else(|| Origin::resource(kind, name))
        };

        // Pre-flight, before touching any device: the namespaces and the uplink's interface
        // exist, ids are left.
        let mut requests = Vec::new();
        for name in plan.recreate.iter().chain(&plan.attach) {
            let origin = origin_of(Kind::NetworkInterface, name);
            let req = attach_request(&plan.next, name, workers)
                .map_err(|err| origin.internal(format!("cannot build the port request: {err}")))?;
            let path = req.netns.path();
            if !path.exists() {
                return Err(origin.invalid(
                    "spec.netns",
                    format!(
                        "network namespace {} does not exist ({} not found); create it first (ip netns add NAME) or check the path/pid",
                        req.netns,
                        path.display()
                    ),
                ));
            }
            requests.push((name.clone(), req));
        }
        let uplink_name = plan.uplink.as_ref().map(|work| match work {
            UplinkWork::Open(name) | UplinkWork::Reopen(name) => name.clone(),
        });
        if let Some(name) = &uplink_name {
            check_uplink_interface(inner, &plan.next, name, &origin_of(Kind::Uplink, name))?;
        }
        // The VTEP: opened first (a wrong address refuses the whole change), swapped in at
        // the commit.
        let vtep_wanted = plan.next.overlays.values().next().map(|o| {
            (
                o.metadata.name.clone(),
                std::net::SocketAddrV4::new(o.spec.local_address, o.spec.port),
            )
        });
        let mut new_vtep = None;
        if let Some((name, local)) = &vtep_wanted {
            if inner.vtep.as_ref().map(|v| v.local) != Some(*local) {
                let io = port::vtep::open(*local, workers).map_err(|err| {
                    origin_of(Kind::Overlay, name).invalid(
                        "spec.localAddress",
                        format!("cannot open the VTEP on {local}: {err}"),
                    )
                })?;
                new_vtep = Some((*local, io));
            }
        }
        for overlay in plan.next.overlays.values_mut() {
            if new_vtep.is_some()
                || !matches!(
                    overlay.status.state,
                    super::resource::OverlayState::Up
                        | super::resource::OverlayState::Registered
                        | super::resource::OverlayState::Registering
                        | super::resource::OverlayState::HubUnreachable
                )
            {
                overlay.status.state = initial_overlay_state(overlay);
                overlay.status.message = None;
            }
        }
        // New interfaces, re-created ones that were lost, and an uplink that is not open
        // need a port id.
        let needed = plan.attach.len()
            + plan
                .recreate
                .iter()
                .filter(|name| !inner.ports.contains_key(*name))
                .count()
            + usize::from(uplink_name.is_some() && inner.uplink.is_none());
        let needed = u64::try_from(needed).unwrap_or(u64::MAX);
        if needed > inner.port_ids.available() {
            return Err(ApiError::Conflict {
                message: format!(
                    "cannot open {needed} more ports: this daemon serves at most {MAX_PORTS} ports (the Uplink counts as one); delete unused NetworkInterfaces first"
                ),
                field: None,
            });
        }

        // Take down the devices to re-create (their old configuration is in inner.state).
        let mut undo = Undo::default();
        if !plan.recreate.is_empty() {
            let taken: Vec<(String, Option<AttachedPort>)> = plan
                .recreate
                .iter()
                .map(|name| (name.clone(), inner.ports.remove(name)))
                .collect();
            publish(&engine, inner);
            for (name, port) in taken {
                let old_req = detach_request(&inner.state, &name, workers);
                let id = port.as_ref().map(|p| p.id);
                let io = port.and_then(|p| retire(p.io));
                match port::detach(&old_req, io) {
                    Ok(()) => {}
                    // A lost device may already be gone with its namespace.
                    Err(PortError::Gone { .. } | PortError::Netns { .. }) if id.is_none() => {}
                    Err(err) => {
                        let err = origin_of(Kind::NetworkInterface, &name)
                            .internal(format!("cannot remove the device to re-create it: {err}"));
                        undo.removed.push((name, old_req, id));
                        self.rollback(&engine, inner, undo, Vec::new());
                        return Err(err);
                    }
                }
                undo.removed.push((name, old_req, id));
            }
        }

        // Create the devices.
        let mut created: Vec<(String, AttachRequest, PortIo)> = Vec::new();
        for (name, req) in requests {
            match port::attach(&req) {
                Ok(io) => {
                    tracing::info!(interface = %name, netns = %req.netns, ifname = %req.ifname, "attached port");
                    created.push((name, req, io));
                }
                Err(err) => {
                    let err = port_error(&origin_of(Kind::NetworkInterface, &name), err);
                    self.rollback(&engine, inner, undo, created);
                    return Err(err);
                }
            }
        }
        for (name, _, io) in &created {
            if let Some(nic) = plan.next.network_interfaces.get_mut(name) {
                nic.status.state = InterfaceState::Up;
                nic.status.message = None;
                nic.status.host_ifname.clone_from(&io.host_ifname);
            }
        }

        // Open the Uplink (closing the old device first when it is re-opened).
        let mut opened = None;
        if let Some(name) = &uplink_name {
            if inner.uplink.is_some() {
                close_uplink(&engine, inner);
                undo.uplink_closed = true;
            }
            match open_uplink(
                inner,
                &plan.next,
                name,
                workers,
                &origin_of(Kind::Uplink, name),
            ) {
                Ok((io, device)) => {
                    let mac = plan
                        .next
                        .uplinks
                        .get(name)
                        .map(|u| nat_rules::uplink_mac(&plan.next, u));
                    if let Some(uplink) = plan.next.uplinks.get_mut(name) {
                        tracing::info!(uplink = %name, interface = %uplink.spec.interface, mtu = device.mtu, "opened the uplink");
                        uplink.status.state = InterfaceState::Up;
                        uplink.status.message = None;
                        uplink.status.mac = mac;
                        uplink.status.mtu = Some(device.mtu);
                    }
                    opened = Some((name.clone(), io, device));
                }
                Err(err) => {
                    self.rollback(&engine, inner, undo, created);
                    return Err(err);
                }
            }
        }

        if let Err(err) = inner.store.save(&plan.next) {
            if let Some((_, io, _)) = opened {
                (inner.uplink_ops.close)(io);
            }
            self.rollback(&engine, inner, undo, created);
            return Err(err.into());
        }

        // Commit.
        inner.state = plan.next;
        let old_ids: BTreeMap<String, PortId> = undo
            .removed
            .into_iter()
            .filter_map(|(name, _, id)| Some((name, id?)))
            .collect();
        for (name, _, io) in created {
            let id = match old_ids.get(&name) {
                Some(id) => Some(*id),
                None => inner.port_ids.allocate().map(PortId),
            };
            // The pre-flight check reserved room for every new port.
            let Some(id) = id else {
                tracing::error!(interface = %name, "no port id left; port not published");
                continue;
            };
            engine.reset_port(id);
            inner.ports.insert(
                name,
                AttachedPort {
                    id,
                    io: Arc::new(io),
                },
            );
        }
        if let Some((name, io, device)) = opened {
            if let Err(err) = install_uplink(&engine, inner, &name, io, device) {
                // The pre-flight check reserved room for it.
                tracing::error!(uplink = %name, "uplink not published: {err}");
                mark_uplink(
                    &mut inner.state,
                    &name,
                    InterfaceState::Lost,
                    Some(err.to_string()),
                );
                if let Err(err) = inner.store.save(&inner.state) {
                    tracing::error!("cannot save the state: {err}");
                }
            }
        }
        if let Some((local, io)) = new_vtep {
            close_vtep(&engine, inner);
            install_vtep(&engine, inner, local, io);
        }
        publish(&engine, inner);
        Ok(())
    }

    /// Undoes the device work of a failed `execute`: removes the devices it created and
    /// re-creates the ones it removed, re-opens an Uplink it closed, then publishes the
    /// current state. A device that cannot be restored leaves its resource `lost`, with a
    /// message.
    fn rollback(
        &self,
        engine: &Engine,
        inner: &mut Inner,
        undo: Undo,
        created: Vec<(String, AttachRequest, PortIo)>,
    ) {
        for (name, req, io) in created.into_iter().rev() {
            if let Err(err) = port::detach(&req, Some(io)) {
                tracing::warn!(interface = %name, "rollback: cannot remove the device created by the failed change: {err}");
            }
        }
        let mut lost = false;
        for (name, req, id) in undo.removed {
            // A device that was lost before the change stays lost.
            let Some(id) = id else {
                continue;
            };
            match port::attach(&req) {
                Ok(io) => {
                    engine.reset_port(id);
                    inner.ports.insert(
                        name,
                        AttachedPort {
                            id,
                            io: Arc::new(io),
                        },
                    );
                }
                Err(err) => {
                    tracing::error!(interface = %name, "rollback: cannot restore the device: {err}; marked lost");
                    engine.reset_port(id);
                    inner.port_ids.release(id.0);
                    if let Some(nic) = inner.state.network_interfaces.get_mut(&name) {
                        nic.status.state = InterfaceState::Lost;
                        nic.status.message = Some(format!(
                            "a failed change removed the device and restoring it failed: {err}; delete the NetworkInterface and create it again"
                        ));
                        lost = true;
                    }
                }
            }
        }
        if undo.uplink_closed {
            if let Some(name) = inner.state.uplinks.keys().next().cloned() {
                let origin = Origin::resource(Kind::Uplink, &name);
                let restored = open_uplink(inner, &inner.state, &name, engine.workers(), &origin)
                    .and_then(|(io, device)| install_uplink(engine, inner, &name, io, device));
                if let Err(err) = restored {
                    tracing::error!(uplink = %name, "rollback: cannot re-open the uplink: {err}; marked lost");
                    mark_uplink(
                        &mut inner.state,
                        &name,
                        InterfaceState::Lost,
                        Some(format!(
                            "a failed change closed the device and re-opening it failed: {err}; apply the Uplink again"
                        )),
                    );
                    lost = true;
                }
            }
        }
        if lost {
            if let Err(err) = inner.store.save(&inner.state) {
                tracing::error!("cannot save the state after a rollback: {err}");
            }
        }
        publish(engine, inner);
    }

    /// Closes the Uplink's device and forgets the Uplink.
    fn delete_uplink(
        &self,
        engine: &Engine,
        inner: &mut Inner,
        name: &str,
        mut next: State,
    ) -> Result<(), ApiError> {
        next.uplinks.remove(name);
        if let Err(err) = inner.store.save(&next) {
            return Err(Origin::resource(Kind::Uplink, name).internal(format!(
                "cannot save the state ({err}); the uplink was left open: retry the delete"
            )));
        }
        inner.state = next;
        if inner.uplink.is_some() {
            close_uplink(engine, inner);
        }
        publish(engine, inner);
        Ok(())
    }

    fn delete_interface(
        &self,
        engine: &Engine,
        inner: &mut Inner,
        name: &str,
        mut next: State,
    ) -> Result<(), ApiError> {
        let workers = engine.workers();
        let req = detach_request(&inner.state, name, workers);
        let port = inner.ports.remove(name);
        let id = port.as_ref().map(|p| p.id);
        if port.is_some() {
            publish(engine, inner);
        }
        let io = port.and_then(|p| retire(p.io));
        let result = port::detach(&req, io);
        if let Some(id) = id {
            engine.reset_port(id);
            inner.port_ids.release(id.0);
        }
        let origin = Origin::resource(Kind::NetworkInterface, name);
        match result {
            Ok(()) => {}
            // Gone with its namespace, or already: nothing left to remove.
            Err(PortError::Gone { .. } | PortError::Netns { .. }) => {}
            Err(err) => {
                let message = format!("cannot remove the device: {err}; retry the delete");
                mark_lost(inner, name, &message);
                return Err(origin.internal(message));
            }
        }
        next.network_interfaces.remove(name);
        if let Err(err) = inner.store.save(&next) {
            let message = format!(
                "the device was removed but the state could not be saved ({err}); retry the delete"
            );
            mark_lost(inner, name, &message);
            return Err(origin.internal(message));
        }
        inner.state = next;
        Ok(())
    }
}

/// Device work to undo if a change fails: devices removed for re-creation, with the request
/// that re-creates their old configuration and their port id (None when they were lost),
/// and whether the Uplink was closed.
#[derive(Debug, Default)]
struct Undo {
    removed: Vec<(String, AttachRequest, Option<PortId>)>,
    /// The Uplink's device was closed to be re-opened.
    uplink_closed: bool,
}

/// Sets the Uplink's state and message in `state`.
fn mark_uplink(state: &mut State, name: &str, to: InterfaceState, message: Option<String>) {
    if let Some(uplink) = state.uplinks.get_mut(name) {
        uplink.status.state = to;
        uplink.status.message = message;
    }
}

/// Checks that the Uplink's interface exists in the daemon's namespace.
fn check_uplink_interface(
    inner: &Inner,
    state: &State,
    name: &str,
    origin: &Origin,
) -> Result<(), ApiError> {
    let Some(uplink) = state.uplinks.get(name) else {
        return Err(origin.internal(format!("Uplink {name:?} does not exist")));
    };
    let ifname = &uplink.spec.interface;
    if !(inner.uplink_ops.exists)(ifname) {
        return Err(origin.invalid(
            "spec.interface",
            format!(
                "interface {ifname} does not exist in vswitchd's network namespace; name an existing host interface (ip link show)"
            ),
        ));
    }
    Ok(())
}

/// Opens the device of Uplink `name` as `state` describes it, with one queue per worker.
///
/// # Errors
/// 400 when the interface does not exist or its own MAC is the one the switch would use; 500
/// when the system refuses.
fn open_uplink(
    inner: &Inner,
    state: &State,
    name: &str,
    workers: usize,
    origin: &Origin,
) -> Result<(PortIo, UplinkDevice), ApiError> {
    check_uplink_interface(inner, state, name, origin)?;
    let Some(uplink) = state.uplinks.get(name) else {
        return Err(origin.internal(format!("Uplink {name:?} does not exist")));
    };
    let ifname = &uplink.spec.interface;
    let mac = nat_rules::uplink_mac(state, uplink);
    let (io, device) = (inner.uplink_ops.open)(ifname, mac.0, workers)
        .map_err(|err| uplink_error(origin, ifname, err))?;
    if device.host_mac == mac.0 {
        (inner.uplink_ops.close)(io);
        return Err(origin.invalid(
            "spec.mac",
            format!(
                "MAC {mac} is {ifname}'s own MAC; the switch needs a MAC of its own on the link or it would take the host's traffic: choose another, or leave mac out to derive one"
            ),
        ));
    }
    Ok((io, device))
}

/// Maps an uplink device error to the API: what the user can fix (no such interface, not
/// Ethernet, down, the MAC is the interface's own) is a 400 on `spec.interface`; anything
/// else the system's (500).
fn uplink_error(origin: &Origin, ifname: &str, err: PortError) -> ApiError {
    let user = match &err {
        PortError::Gone { .. } | PortError::IfnameTaken { .. } => true,
        PortError::Sys { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::ENODEV | libc::ENXIO | libc::ENETDOWN | libc::EINVAL)
        ),
        PortError::Netns { .. } => false,
    };
    if user {
        origin.invalid("spec.interface", err)
    } else {
        origin.internal(format!("cannot open interface {ifname}: {err}"))
    }
}

/// Gives an opened Uplink device its port id and segment id and keeps it (published by the
/// next [`publish`]).
///
/// # Errors
/// [`ApiError::Conflict`] when no port id is left (the device is closed).
fn install_uplink(
    engine: &Engine,
    inner: &mut Inner,
    name: &str,
    io: PortIo,
    device: UplinkDevice,
) -> Result<(), ApiError> {
    let (Some(id), Some(segment)) = (inner.port_ids.allocate(), inner.subnet_id_pool.allocate())
    else {
        (inner.uplink_ops.close)(io);
        return Err(ApiError::Conflict {
            message: format!(
                "cannot open the uplink: this daemon serves at most {MAX_PORTS} ports; delete unused NetworkInterfaces first"
            ),
            field: None,
        });
    };
    engine.reset_port(PortId(id));
    inner.uplink = Some(OpenUplink {
        name: name.to_string(),
        id: PortId(id),
        segment: SubnetId(segment),
        io: Arc::new(io),
        mtu: device.mtu,
    });
    Ok(())
}

/// Closes the Uplink's device: publishes a snapshot without it, waits for the workers to let
/// go of its queues, closes them, and frees its ids.
fn close_uplink(engine: &Engine, inner: &mut Inner) {
    let Some(open) = inner.uplink.take() else {
        return;
    };
    publish(engine, inner);
    if let Some(io) = retire(open.io) {
        (inner.uplink_ops.close)(io);
    }
    engine.reset_port(open.id);
    inner.port_ids.release(open.id.0);
    inner.subnet_id_pool.release(open.segment.0);
    tracing::info!(uplink = %open.name, "closed the uplink");
}

/// Marks an interface lost in memory (best effort persisted).
fn mark_lost(inner: &mut Inner, name: &str, message: &str) {
    if let Some(nic) = inner.state.network_interfaces.get_mut(name) {
        nic.status.state = InterfaceState::Lost;
        nic.status.message = Some(message.to_string());
    }
    if let Err(err) = inner.store.save(&inner.state) {
        tracing::error!(interface = %name, "cannot save the state: {err}");
    }
}

/// The request that creates or re-opens `name`'s device as `state` describes it.
fn attach_request(state: &State, name: &str, workers: usize) -> Result<AttachRequest, String> {
    let nic = state
        .network_interfaces
        .get(name)
        .ok_or_else(|| format!("NetworkInterface {name:?} does not exist"))?;
    let subnet = state
        .subnets
        .get(&nic.spec.subnet)
        .ok_or_else(|| format!("its Subnet {:?} does not exist", nic.spec.subnet))?;
    let mac = nic
        .status
        .mac
        .ok_or_else(|| "it has no MAC address in its status".to_string())?;
    Ok(AttachRequest {
        name: name.to_string(),
        netns: nic.spec.netns.clone(),
        ifname: nic.spec.ifname.clone(),
        kind: nic.spec.kind,
        mac: mac.0,
        mtu: overlay::interface_mtu(state, nic, subnet),
        addresses: nic.status.ips.clone(),
        gateway: nic.spec.default_route.then_some(subnet.spec.gateway),
        routes: nic
            .spec
            .routes
            .iter()
            .map(|destination| (*destination, subnet.spec.gateway))
            .collect(),
        queues: workers,
    })
}

/// A request good enough to remove `name`'s device even when its state is incomplete
/// (removal needs only the name, namespace, ifname and kind).
fn detach_request(state: &State, name: &str, workers: usize) -> AttachRequest {
    if let Ok(req) = attach_request(state, name, workers) {
        return req;
    }
    let nic: Option<&NetworkInterface> = state.network_interfaces.get(name);
    AttachRequest {
        name: name.to_string(),
        netns: nic.map_or_else(
            || crate::sys::netns::NetnsRef::Name(name.to_string()),
            |n| n.spec.netns.clone(),
        ),
        ifname: nic.map_or_else(|| "eth0".to_string(), |n| n.spec.ifname.clone()),
        kind: nic.map(|n| n.spec.kind).unwrap_or_default(),
        mac: nic.and_then(|n| n.status.mac).unwrap_or_default().0,
        mtu: nic
            .and_then(|n| n.spec.mtu)
            .unwrap_or(super::resource::DEFAULT_MTU),
        addresses: nic.map(|n| n.status.ips.clone()).unwrap_or_default(),
        gateway: None,
        routes: Vec::new(),
        queues: workers,
    }
}

/// Maps a port error to the API: a missing namespace is the user's (400), a taken ifname a
/// conflict (409), anything else the system's (500).
fn port_error(origin: &Origin, err: PortError) -> ApiError {
    match err {
        PortError::Netns { .. } => origin.invalid("spec.netns", err),
        PortError::IfnameTaken { .. } => origin.conflict("spec.ifname", err),
        PortError::Gone { .. } | PortError::Sys { .. } => {
            origin.internal(format!("cannot attach: {err}"))
        }
    }
}

/// Takes back sole ownership of a port's (or the VTEP's) I/O once workers have moved on to a
/// snapshot without it, so `port::detach` can close its queues first. Gives up after
/// [`RETIRE_WAIT`]: the queues then close when the last worker drops them.
fn retire<T>(io: Arc<T>) -> Option<T> {
    let deadline = Instant::now() + RETIRE_WAIT;
    let mut io = io;
    loop {
        match Arc::try_unwrap(io) {
            Ok(io) => return Some(io),
            Err(shared) => {
                if Instant::now() >= deadline {
                    tracing::debug!("port queues still in use by the engine; closing them later");
                    return None;
                }
                io = shared;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Assigns ids to new Subnets and Networks and frees those of deleted ones, then compiles
/// and publishes the snapshot.
fn publish(engine: &Engine, inner: &mut Inner) {
    sync_ids(
        &mut inner.subnet_ids,
        &mut inner.subnet_id_pool,
        inner.state.subnets.keys(),
        SubnetId,
        |id| id.0,
    );
    sync_ids(
        &mut inner.network_ids,
        &mut inner.network_id_pool,
        inner.state.networks.keys(),
        NetworkId,
        |id| id.0,
    );
    sync_tunnel_ids(engine, inner);
    let rules = nat_rules::compile(&inner.state, &inner.network_ids);
    // The same table in every snapshot of the run: connections survive reconfiguration.
    let conntrack = Arc::clone(&engine.current().conntrack);
    engine.publish(compile(inner).with_nat(Arc::new(rules), conntrack));
}

/// Makes `ids` hold exactly the names in `names`: ids of names that are gone go back to
/// `pool`, new names get one from it (dense ids, reused after deletes).
fn sync_ids<'a, Id: Copy>(
    ids: &mut BTreeMap<String, Id>,
    pool: &mut IdPool,
    names: impl Iterator<Item = &'a String> + Clone,
    make: fn(u32) -> Id,
    raw: fn(Id) -> u32,
) {
    let wanted: std::collections::BTreeSet<&String> = names.collect();
    ids.retain(|name, id| {
        let keep = wanted.contains(name);
        if !keep {
            pool.release(raw(*id));
        }
        keep
    });
    for name in wanted {
        if !ids.contains_key(name) {
            if let Some(id) = pool.allocate() {
                ids.insert(name.clone(), make(id));
            }
        }
    }
}

/// The snapshot of the current state: every Subnet, and every opened port.
fn compile(inner: &Inner) -> Snapshot {
    let state = &inner.state;
    let mut ports = Vec::with_capacity(inner.ports.len());
    let mut floods: BTreeMap<&str, Vec<PortId>> = BTreeMap::new();
    for (name, port) in &inner.ports {
        let Some(nic) = state.network_interfaces.get(name) else {
            continue;
        };
        let (Some(subnet), Some(subnet_id), Some(mac)) = (
            state.subnets.get(&nic.spec.subnet),
            inner.subnet_ids.get(&nic.spec.subnet),
            nic.status.mac,
        ) else {
            continue;
        };
        if nic.status.state != InterfaceState::Up {
            continue;
        }
        let ips: Vec<Ipv4Addr> = nic.status.ips.iter().map(|ip| ip.addr()).collect();
        let allowed_sources = ips
            .iter()
            .flat_map(|ip| routing::routed_sources(state, &nic.spec.subnet, *ip))
            .collect();
        ports.push(PortEntry {
            id: port.id,
            name: name.clone(),
            subnet: *subnet_id,
            mac: mac.0,
            ips,
            mtu: overlay::interface_mtu(state, nic, subnet),
            allowed_sources,
            proxy_arp: false,
            egress: Egress::Queue(Arc::clone(&port.io)),
        });
        floods
            .entry(nic.spec.subnet.as_str())
            .or_default()
            .push(port.id);
    }
    // Each stretched Subnet's tunnel: a port whose egress is the overlay (vxlan-encap).
    let mut tunnels = std::collections::HashMap::new();
    let overlay = state.overlays.values().next();
    if let (Some(_), Some(overlay)) = (&inner.vtep, overlay) {
        for (name, id) in &inner.tunnel_ids {
            let (Some(subnet), Some(subnet_id)) =
                (state.subnets.get(name), inner.subnet_ids.get(name))
            else {
                continue;
            };
            let Some(vni) = subnet.spec.vni.and_then(vxlan::Vni::new) else {
                continue;
            };
            let remotes = if subnet.spec.remote_vteps.is_empty() {
                overlay.spec.peers.clone()
            } else {
                subnet.spec.remote_vteps.clone()
            };
            let mtu = overlay::subnet_mtu(state, subnet);
            ports.push(PortEntry {
                id: *id,
                name: format!("vxlan/{name}"),
                subnet: *subnet_id,
                mac: [0; 6],
                ips: Vec::new(),
                mtu,
                allowed_sources: Vec::new(),
                proxy_arp: false,
                egress: Egress::Tunnel(Tunnel { vni, remotes, mtu }),
            });
            floods.entry(name.as_str()).or_default().push(*id);
            tunnels.insert(u32::from(vni), *id);
        }
    }
    let vtep = match (&inner.vtep, overlay) {
        (Some(vtep), Some(overlay)) => Some(crate::tables::snapshot::VtepEntry {
            id: vtep.id,
            local: vtep.local,
            encap: overlay::encap_config(overlay),
            io: Arc::clone(&vtep.io),
            tunnels,
        }),
        _ => None,
    };
    let network_ids = &inner.network_ids;
    let subnets = state
        .subnets
        .iter()
        .filter_map(|(name, subnet)| {
            let id = *inner.subnet_ids.get(name)?;
            let network_id = *network_ids.get(subnet.spec.network.as_str())?;
            let mut flood = floods.remove(name.as_str()).unwrap_or_default();
            flood.sort();
            Some(SubnetEntry {
                id,
                name: name.clone(),
                network: subnet.spec.network.clone(),
                network_id,
                cidr: subnet.spec.cidr,
                gateway: subnet.spec.gateway,
                gateway_mac: routing::gateway_mac(state, subnet).0,
                mtu: overlay::subnet_mtu(state, subnet),
                ports: flood,
                mac_ageing: Duration::from_secs(subnet.spec.mac_ageing_seconds),
                mac_limit: subnet.spec.mac_table_limit,
            })
        })
        .collect();
    let networks = state
        .networks
        .keys()
        .filter_map(|name| {
            let id = *network_ids.get(name)?;
            let routes = routing::table(state, name)
                .into_iter()
                .filter_map(|route| {
                    Some(RouteEntry {
                        prefix: route.prefix,
                        subnet: *inner.subnet_ids.get(&route.subnet)?,
                        next_hop: route.next_hop,
                        origin: route.origin,
                    })
                })
                .collect();
            Some(NetworkEntry::new(id, name.clone(), routes))
        })
        .collect();
    let uplink = inner.uplink.as_ref().and_then(|open| {
        let uplink = state.uplinks.get(&open.name)?;
        Some(UplinkEntry {
            id: open.id,
            name: open.name.clone(),
            ifname: uplink.spec.interface.clone(),
            mac: nat_rules::uplink_mac(state, uplink).0,
            addresses: uplink.spec.addresses.iter().map(|a| a.0).collect(),
            gateway: uplink.spec.gateway,
            mtu: open.mtu,
            segment: open.segment,
            io: Arc::clone(&open.io),
        })
    });
    Snapshot::new(ports, subnets)
        .with_networks(networks)
        .with_uplink(uplink)
        .with_vtep(vtep)
}

/// The conntrack zone (its Network's id) and the addresses of NetworkInterface `name`.
fn interface_zone(inner: &Inner, name: &str) -> Option<(nat::Zone, Vec<Ipv4Addr>)> {
    let nic = inner.state.network_interfaces.get(name)?;
    let subnet = inner.state.subnets.get(&nic.spec.subnet)?;
    let id = inner.network_ids.get(&subnet.spec.network)?;
    let ips = nic.status.ips.iter().map(|ip| ip.addr()).collect();
    Some((nat::Zone(id.0), ips))
}

/// Removes the connections of zone `zone` from or to `addresses` (the original source, or
/// the reply's source for connections forwarded to them); returns how many.
fn forget_connections(
    conntrack: &nat::Conntrack,
    zone: nat::Zone,
    addresses: &[Ipv4Addr],
    now_ms: u64,
) -> usize {
    let ours = |key: &nat::FlowKey| {
        key.zone == zone
            && matches!(key.tuple.src, std::net::IpAddr::V4(src) if addresses.contains(&src))
    };
    conntrack
        .entries(Some(zone), now_ms)
        .iter()
        .filter(|entry| ours(&entry.original) || ours(&entry.reply))
        .filter(|entry| conntrack.remove(&entry.original))
        .count()
}

/// NetworkInterface names by port id (the interface ids of masquerade port blocks).
fn port_names(inner: &Inner) -> BTreeMap<u32, String> {
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
type Live = StatusView;

/// A resource as `get` returns it, with the computed status of Networks, Subnets, Routes,
/// NATGateways, PortForwards and VirtualIPs.
fn resource_json(state: &State, kind: Kind, name: &str, live: &Live) -> Result<Value, ApiError> {
    state
        .observed(kind, name, live)
        .ok_or_else(|| ApiError::NotFound {
            kind: kind.as_str().into(),
            name: name.into(),
        })?
        .to_json()
}

/// What the overlay agent (the hub's registration API, or a runner's registration loop)
/// needs to run; it changes when the Overlay is applied again ([`Self::generation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayAgentConfig {
    /// Bumped whenever the Overlay's spec changes: an agent running with an older
    /// generation restarts with the new configuration.
    pub generation: u64,
    /// The Overlay's name: the runner name a runner registers with.
    pub name: String,
    /// Mesh, hub or runner.
    pub role: OverlayRole,
    /// The node's reachable underlay address.
    pub local_address: Ipv4Addr,
    /// The VXLAN UDP port.
    pub port: u16,
    /// The VNI base.
    pub vni_base: u32,
    /// The overlay MTU.
    pub mtu: u16,
    /// Runner: the hub (address, API port, token).
    pub hub: Option<HubRef>,
    /// Hub: the registration API's TCP port (on `local_address`).
    pub api_port: u16,
    /// Hub: the bearer token runners must present.
    pub token: Option<String>,
    /// Runner: interval between heartbeats.
    pub heartbeat: Duration,
    /// Hub: silence after which a runner is marked offline.
    pub runner_timeout: Duration,
}

impl Controller {
    /// The overlay agent's configuration, or `None` without an Overlay.
    pub fn overlay_agent_config(&self) -> Option<OverlayAgentConfig> {
        let inner = self.lock();
        overlay_agent_config(&inner)
    }

    /// Hub: admits a runner's registration (same name, same ID; mismatched settings refused
    /// with a message naming the setting and both values; a name online from another
    /// address, or a static runner's name from another address, refused naming both
    /// addresses), persists the pool, sets up the runner's subnet and returns its plan.
    ///
    /// # Errors
    /// [`ApiError::Invalid`] for a bad or mismatched request, [`ApiError::Conflict`] when
    /// this node is not a hub or the name belongs to another runner (online from another
    /// address, or in `spec.runners` with another address), [`ApiError::Internal`] when the
    /// state cannot be saved.
    pub fn hub_register(
        &self,
        request: &vxlan::RegistrationRequest,
    ) -> Result<vxlan::RunnerPlan, ApiError> {
        let mut inner = self.lock();
        self.hub_register_locked(&mut inner, request)
    }

    /// Hub: records a heartbeat from runner `name`.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] when the name holds no ID (the runner must register again),
    /// [`ApiError::Conflict`] when this node is not a hub.
    pub fn hub_heartbeat(&self, name: &str) -> Result<vxlan::RunnerId, ApiError> {
        let mut inner = self.lock();
        hub_heartbeat(&mut inner, name, wall_ms())
    }

    /// Hub: marks offline the runners silent for longer than the Overlay's timeout.
    pub fn hub_sweep(&self) {
        let mut inner = self.lock();
        hub_sweep(&mut inner, wall_ms());
    }

    /// Runner: the hub admitted us with `plan`; sets up (or keeps) the overlay subnet,
    /// persists the plan and marks the Overlay `registered`.
    ///
    /// # Errors
    /// [`ApiError`] when the plan cannot be applied (e.g. a name it needs is taken).
    pub fn runner_joined(&self, plan: &vxlan::RunnerPlan) -> Result<(), ApiError> {
        let mut inner = self.lock();
        self.runner_joined_locked(&mut inner, plan)
    }

    /// Runner: records where registration stands (`registering`, `hubUnreachable` with why
    /// and when the next attempt is, `registered` after a heartbeat was answered).
    pub fn runner_status(&self, state: OverlayState, message: Option<String>) {
        let mut inner = self.lock();
        runner_status(&mut inner, state, message);
    }

    /// The overlay as `vswitchctl overlay` shows it (`GET /v1/overlay`): on a hub one row
    /// per runner, on a runner its ID, subnet, hub and state.
    ///
    /// # Errors
    /// [`ApiError::NotFound`] without an Overlay.
    pub fn overlay_view(&self) -> Result<Value, ApiError> {
        let inner = self.lock();
        overlay_view(&inner, wall_ms())
    }
}

impl Controller {
    /// [`Self::sync_generated`], logging (not returning) a failure: the user's change is
    /// already committed; the Overlay's status says what went wrong.
    fn sync_generated_logged(&self, inner: &mut Inner) {
        if let Err(err) = self.sync_generated(inner) {
            tracing::warn!("cannot update the overlay's generated resources: {err}");
            if let Some(overlay) = inner.state.overlays.values_mut().next() {
                overlay.status.message =
                    Some(format!("cannot set up the overlay's resources: {err}"));
            }
        }
    }

    /// Makes the generated resources (see [`overlay`]) match the Overlay: creates or updates
    /// the wanted ones, deletes the stale ones. A hub first registers its static runners.
    fn sync_generated(&self, inner: &mut Inner) -> Result<(), ApiError> {
        register_static_runners(inner)?;
        let wanted = overlay::owned_resources(&inner.state);
        // A generated Subnet whose CIDR changes (a runner given another ID) cannot be changed
        // in place: it is removed, with the generated Routes through it, and created again.
        let renumbered: Vec<String> = wanted
            .iter()
            .filter_map(|resource| match resource {
                Resource::Subnet(subnet) => inner
                    .state
                    .subnets
                    .get(&subnet.metadata.name)
                    .filter(|old| old.spec.cidr != subnet.spec.cidr)
                    .map(|_| subnet.metadata.name.clone()),
                _ => None,
            })
            .collect();
        if let Some(nic) = inner
            .state
            .network_interfaces
            .values()
            .find(|nic| renumbered.contains(&nic.spec.subnet))
        {
            return Err(ApiError::Conflict {
                message: format!(
                    "the overlay moved Subnet {:?} to a new CIDR, but NetworkInterface {:?} is still on it; detach the interfaces on it and they can attach again to the new subnet",
                    nic.spec.subnet, nic.metadata.name
                ),
                field: None,
            });
        }
        if !renumbered.is_empty() {
            let routes: Vec<String> = inner
                .state
                .routes
                .values()
                .filter(|route| overlay::is_owned(&route.metadata))
                .map(|route| route.metadata.name.clone())
                .collect();
            for name in routes {
                self.delete_locked(inner, Kind::Route, &name)?;
            }
            for name in renumbered {
                tracing::info!(subnet = %name, "the overlay renumbered a generated subnet");
                self.delete_locked(inner, Kind::Subnet, &name)?;
            }
        }
        for (kind, name) in overlay::stale_owned(&inner.state, &wanted) {
            tracing::info!(kind = %kind, name, "removing a resource the overlay no longer needs");
            self.delete_locked(inner, kind, &name)?;
        }
        if wanted.is_empty() {
            return Ok(());
        }
        remove_stale_host_tap(&inner.state, &wanted);
        let docs = wanted
            .into_iter()
            .map(|resource| Document {
                origin: Origin::resource(resource.kind(), resource.name()),
                resource,
            })
            .collect();
        let plan = validate::plan(&inner.state, docs, Mode::Generated)?;
        self.execute(inner, plan)
    }

    fn hub_register_locked(
        &self,
        inner: &mut Inner,
        request: &vxlan::RegistrationRequest,
    ) -> Result<vxlan::RunnerPlan, ApiError> {
        let overlay = hub_overlay(&inner.state)?.clone();
        // A static runner's name is the hub's configuration: it never moves by registration
        // (whether or not the hub has marked it online yet).
        if let Some(fixed) = overlay.spec.runners.iter().find(|r| r.name == request.name)
            && request.local_address.to_canonical() != std::net::IpAddr::V4(fixed.address)
        {
            return Err(ApiError::Conflict {
                message: format!(
                    "runner {:?} is configured on the hub at {} (spec.runners); refusing the \
                     registration from {} (register under another name, or change \
                     spec.runners on the hub)",
                    request.name, fixed.address, request.local_address
                ),
                field: None,
            });
        }
        let mut pool = inner.state.runner_pool.clone().unwrap_or_default();
        let timeout_ms = overlay.spec.runner_timeout_seconds.saturating_mul(1000);
        let admission = pool
            .admit(
                &overlay::settings(&overlay),
                &overlay.spec.address_plan,
                request,
                wall_ms(),
                timeout_ms,
            )
            .map_err(|err| match err {
                // Two nodes with one name: a conflict with the runner holding it.
                vxlan::MembershipError::NameOnlineElsewhere { .. } => ApiError::Conflict {
                    message: err.to_string(),
                    field: None,
                },
                err => ApiError::Invalid {
                    message: format!("registration of runner {:?} refused: {err}", request.name),
                    field: None,
                },
            })?;
        // MACs learned behind an address that no longer holds this ID are stale.
        let stale_vtep = match &admission.registration.outcome {
            vxlan::membership::RegistrationOutcome::Assigned => None,
            vxlan::membership::RegistrationOutcome::Reconnected { previous_address } => {
                if let Some(previous) = previous_address {
                    tracing::info!(
                        runner = %request.name,
                        from = %previous,
                        to = %request.local_address,
                        "runner moved: its old address was offline"
                    );
                }
                *previous_address
            }
            vxlan::membership::RegistrationOutcome::Reclaimed { evicted } => {
                tracing::warn!(
                    id = %admission.registration.id,
                    evicted = %evicted.name,
                    "all runner IDs are taken: reclaimed the ID of the runner unseen for longest"
                );
                Some(evicted.address)
            }
        };
        if let Some(address) = stale_vtep {
            let forgotten = self.engine.read().forget_remote_vtep(address);
            tracing::debug!(%address, forgotten, "forgot remote MACs behind a runner's old address");
        }
        let changed = stale_vtep.is_some()
            || matches!(
                admission.registration.outcome,
                vxlan::membership::RegistrationOutcome::Assigned
            );
        tracing::info!(
            runner = %request.name,
            id = %admission.registration.id,
            address = %request.local_address,
            "runner registered"
        );
        let mut next = inner.state.clone();
        next.runner_pool = Some(pool);
        if changed {
            inner.store.save(&next)?;
            inner.state = next;
            self.sync_generated(inner)?;
        } else {
            // A reconnect: only last-seen changed, which is not worth a disk write.
            inner.state = next;
        }
        Ok(admission.plan)
    }

    fn runner_joined_locked(
        &self,
        inner: &mut Inner,
        plan: &vxlan::RunnerPlan,
    ) -> Result<(), ApiError> {
        let Some(overlay) = inner
            .state
            .overlays
            .values()
            .next()
            .filter(|o| o.spec.role == OverlayRole::Runner)
        else {
            return Err(ApiError::Conflict {
                message: "this node is not an overlay runner".into(),
                field: None,
            });
        };
        let name = overlay.metadata.name.clone();
        let same = overlay.status.plan.as_ref() == Some(plan);
        let mut next = inner.state.clone();
        if let Some(overlay) = next.overlays.get_mut(&name) {
            overlay.status.plan = Some(plan.clone());
            overlay.status.state = OverlayState::Registered;
            overlay.status.message = None;
            overlay.status.last_contact = Some(wall_ms() / 1000);
        }
        if !same {
            tracing::info!(
                id = %plan.runner_id,
                subnet = %plan.subnet,
                vni = %plan.vni,
                "the hub admitted this runner"
            );
        }
        inner.store.save(&next)?;
        inner.state = next;
        if !same {
            self.sync_generated(inner)?;
        }
        Ok(())
    }
}

/// The Overlay's state right after its VTEP opened: a runner registers, the others are up.
fn initial_overlay_state(overlay: &super::resource::Overlay) -> OverlayState {
    match overlay.spec.role {
        OverlayRole::Runner => OverlayState::Registering,
        OverlayRole::Mesh | OverlayRole::Hub => OverlayState::Up,
    }
}

/// Gives the opened VTEP an id for its counters (from the port ids) and keeps it (published
/// by the caller).
fn install_vtep(engine: &Engine, inner: &mut Inner, local: std::net::SocketAddrV4, io: port::Vtep) {
    let Some(id) = inner.port_ids.allocate().map(PortId) else {
        tracing::error!("no port id left for the VTEP; the overlay carries no traffic");
        return;
    };
    engine.reset_port(id);
    tracing::info!(%local, port = id.0, "opened the VTEP");
    inner.vtep = Some(OpenVtep {
        local,
        id,
        io: Arc::new(io),
    });
}

/// Closes the VTEP (after the workers let go of it) and frees its port id and the tunnels'.
fn close_vtep(engine: &Engine, inner: &mut Inner) {
    let Some(vtep) = inner.vtep.take() else {
        return;
    };
    publish(engine, inner);
    inner.port_ids.release(vtep.id.0);
    engine.reset_port(vtep.id);
    drop(retire(vtep.io));
    tracing::info!(local = %vtep.local, "closed the VTEP");
}

/// Gives every Subnet with a VNI a tunnel port id while the VTEP is open (ids of tunnels
/// that went are freed; new ones start with clean counters).
fn sync_tunnel_ids(engine: &Engine, inner: &mut Inner) {
    let wanted: BTreeSet<String> = if inner.vtep.is_some() {
        inner
            .state
            .subnets
            .iter()
            .filter(|(_, s)| s.spec.vni.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    } else {
        BTreeSet::new()
    };
    let Inner {
        tunnel_ids,
        port_ids,
        ..
    } = inner;
    tunnel_ids.retain(|name, id| {
        let keep = wanted.contains(name);
        if !keep {
            port_ids.release(id.0);
        }
        keep
    });
    for name in wanted {
        if tunnel_ids.contains_key(&name) {
            continue;
        }
        match port_ids.allocate() {
            Some(id) => {
                engine.reset_port(PortId(id));
                tunnel_ids.insert(name, PortId(id));
            }
            None => tracing::error!(subnet = %name, "no port id left for the subnet's tunnel"),
        }
    }
}

/// The hub's host TAP name belongs to the switch: a device of that name left by a run whose
/// state is gone (its interface is not in the state) would stop the hub from creating its
/// own, so it is removed first.
fn remove_stale_host_tap(state: &State, wanted: &[Resource]) {
    let needed = wanted.iter().any(|resource| {
        resource.kind() == Kind::NetworkInterface && resource.name() == overlay::HOST
    });
    if !needed || state.network_interfaces.contains_key(overlay::HOST) {
        return;
    }
    let removed = crate::sys::netlink::run(|nl| nl.delete_by_name(overlay::HOST_IFNAME));
    match removed {
        Ok(true) => tracing::warn!(
            ifname = overlay::HOST_IFNAME,
            "removed a stale host TAP left by an earlier run whose state is gone"
        ),
        Ok(false) => {}
        Err(err) => tracing::warn!(
            ifname = overlay::HOST_IFNAME,
            "cannot remove a stale host TAP: {err}"
        ),
    }
}

/// The hub's Overlay, or a conflict.
fn hub_overlay(state: &State) -> Result<&super::resource::Overlay, ApiError> {
    state
        .overlays
        .values()
        .next()
        .filter(|o| o.spec.role == OverlayRole::Hub)
        .ok_or_else(|| ApiError::Conflict {
            message: "this node is not an overlay hub (apply an Overlay with role: hub)".into(),
            field: None,
        })
}

/// A hub's static runners hold IDs like registered ones (registered once, kept online).
fn register_static_runners(inner: &mut Inner) -> Result<(), ApiError> {
    let Ok(overlay) = hub_overlay(&inner.state) else {
        return Ok(());
    };
    let runners = overlay.spec.runners.clone();
    if runners.is_empty() {
        return Ok(());
    }
    let mut pool = inner.state.runner_pool.clone().unwrap_or_default();
    let mut changed = false;
    let now = wall_ms();
    for runner in &runners {
        let address = std::net::IpAddr::V4(runner.address);
        if pool.get(&runner.name).map(|r| r.address) != Some(address) {
            pool.register(&runner.name, address, now)
                .map_err(|err| ApiError::invalid("spec.runners", err.to_string()))?;
            changed = true;
        }
    }
    if changed {
        let mut next = inner.state.clone();
        next.runner_pool = Some(pool);
        inner.store.save(&next)?;
        inner.state = next;
    }
    Ok(())
}

/// Refuses to delete the Overlay while users' interfaces sit on its generated subnets.
fn check_overlay_delete(state: &State) -> Result<(), ApiError> {
    let users: Vec<&str> = state
        .network_interfaces
        .values()
        .filter(|nic| !overlay::is_owned(&nic.metadata))
        .filter(|nic| {
            state
                .subnets
                .get(&nic.spec.subnet)
                .is_some_and(|s| overlay::is_owned(&s.metadata))
        })
        .map(|nic| nic.metadata.name.as_str())
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::Conflict {
        message: format!(
            "the Overlay's subnets still have NetworkInterfaces: {}; delete them first",
            users.join(", ")
        ),
        field: None,
    })
}

fn overlay_agent_config(inner: &Inner) -> Option<OverlayAgentConfig> {
    let overlay = inner.state.overlays.values().next()?;
    let spec = &overlay.spec;
    // The generation is a hash of the spec: any change restarts the agent.
    let text = serde_json::to_string(spec).unwrap_or_default();
    let mut generation: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in overlay.metadata.name.bytes().chain(text.bytes()) {
        generation ^= u64::from(byte);
        generation = generation.wrapping_mul(0x0100_0000_01b3);
    }
    Some(OverlayAgentConfig {
        generation,
        name: overlay.metadata.name.clone(),
        role: spec.role,
        local_address: spec.local_address,
        port: spec.port,
        vni_base: spec.vni_base,
        mtu: spec.mtu,
        hub: spec.hub.clone(),
        api_port: spec.api_port,
        token: spec.token.clone(),
        heartbeat: Duration::from_secs(spec.heartbeat_seconds),
        runner_timeout: Duration::from_secs(spec.runner_timeout_seconds),
    })
}

fn hub_heartbeat(inner: &mut Inner, name: &str, now_ms: u64) -> Result<vxlan::RunnerId, ApiError> {
    hub_overlay(&inner.state)?;
    let pool = inner.state.runner_pool.get_or_insert_with(Default::default);
    pool.touch(name, now_ms).map_err(|_| ApiError::NotFound {
        kind: "Runner".into(),
        name: name.into(),
    })
}

fn hub_sweep(inner: &mut Inner, now_ms: u64) {
    let Ok(overlay) = hub_overlay(&inner.state) else {
        return;
    };
    let timeout = overlay.spec.runner_timeout_seconds.saturating_mul(1000);
    let statics: Vec<String> = overlay
        .spec
        .runners
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let Some(pool) = inner.state.runner_pool.as_mut() else {
        return;
    };
    for name in &statics {
        let _ = pool.touch(name, now_ms);
    }
    for id in pool.mark_offline(now_ms, timeout) {
        tracing::warn!(runner = %id, "runner marked offline: no heartbeat within the timeout");
    }
}

fn runner_status(inner: &mut Inner, state: OverlayState, message: Option<String>) {
    let Some(overlay) = inner
        .state
        .overlays
        .values_mut()
        .next()
        .filter(|o| o.spec.role == OverlayRole::Runner)
    else {
        return;
    };
    let persist = overlay.status.state != state;
    overlay.status.state = state;
    overlay.status.message = message;
    if state == OverlayState::Registered {
        overlay.status.last_contact = Some(wall_ms() / 1000);
    }
    if persist {
        if let Err(err) = inner.store.save(&inner.state) {
            tracing::warn!("cannot save the overlay's state: {err}");
        }
    }
}

fn overlay_view(inner: &Inner, now_ms: u64) -> Result<Value, ApiError> {
    let Some(overlay) = inner.state.overlays.values().next() else {
        return Err(ApiError::NotFound {
            kind: "Overlay".into(),
            name: "(this node's)".into(),
        });
    };
    let spec = &overlay.spec;
    let view = match spec.role {
        OverlayRole::Mesh => serde_json::json!({
            "role": "mesh",
            "name": overlay.metadata.name,
            "localAddress": spec.local_address,
            "peers": spec.peers,
            "state": overlay.status.state.to_string(),
            "message": overlay.status.message,
        }),
        OverlayRole::Hub => {
            let plan = &spec.address_plan;
            let runners: Vec<Value> = inner
                .state
                .runner_pool
                .iter()
                .flat_map(vxlan::RunnerPool::runners)
                .map(|runner| {
                    let runner_plan = plan.runner(runner.id, spec.vni_base).ok();
                    serde_json::json!({
                        "id": u8::from(runner.id),
                        "name": runner.name,
                        "address": runner.address,
                        "vni": runner_plan.as_ref().map(|p| u32::from(p.vni)),
                        "subnet": runner_plan.as_ref().map(|p| p.subnet.to_string()),
                        "lastSeenSecondsAgo": now_ms.saturating_sub(runner.last_seen_ms) / 1000,
                        "state": runner.state.to_string(),
                    })
                })
                .collect();
            serde_json::json!({
                "role": "hub",
                "name": overlay.metadata.name,
                "localAddress": spec.local_address,
                "hubAddress": plan.hub_interface().to_string(),
                "state": overlay.status.state.to_string(),
                "message": overlay.status.message,
                "runners": runners,
            })
        }
        OverlayRole::Runner => {
            let plan = overlay.status.plan.as_ref();
            serde_json::json!({
                "role": "runner",
                "name": overlay.metadata.name,
                "localAddress": spec.local_address,
                "id": plan.map(|p| u8::from(p.runner_id)),
                "vni": plan.map(|p| u32::from(p.vni)),
                "subnet": plan.map(|p| p.subnet.to_string()),
                "gateway": plan.map(|p| p.gateway.to_string()),
                "hub": spec.hub.as_ref().map(|h| format!("{}:{}", h.address, h.api_port)),
                "state": overlay.status.state.to_string(),
                "message": overlay.status.message,
                "lastContact": overlay.status.last_contact,
            })
        }
    };
    Ok(view)
}

/// Milliseconds since the Unix epoch: the runner pool's clock (it must survive restarts,
/// unlike the datapath's monotonic clock).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::EMBEDDED_DEFAULT_CONFIG;
    use crate::control::resource::parse_documents;
    use crate::runtime::EngineConfig;

    /// A namespace name that does not exist on any machine running these tests.
    const NO_NETNS: &str = "vsctl-test-no-such-netns";

    fn engine() -> Engine {
        Engine::start(EngineConfig::new(1)).expect("engine starts")
    }

    fn open(dir: &Path) -> Controller {
        Controller::open(dir, engine()).expect("controller opens")
    }

    fn nic(name: &str, extra: &str) -> String {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {name}}}\nspec: {{netns: {NO_NETNS}{extra}}}\n"
        )
    }

    fn names(list: &[Value]) -> Vec<&str> {
        list.iter()
            .map(|v| v["metadata"]["name"].as_str().unwrap_or("?"))
            .collect()
    }

    /// `base` with the documents of `text` applied, as validation plans it.
    fn planned(base: &State, text: &str) -> State {
        validate::plan(base, parse_documents(text).unwrap(), Mode::Apply)
            .unwrap()
            .next
    }

    /// Writes a state holding the embedded default plus interfaces `specs` (as planned,
    /// never attached), as a daemon that attached them and was killed would leave it.
    fn seed(dir: &Path, interfaces: &str) {
        let (store, _) = Store::open(dir).unwrap();
        let defaults = planned(&State::default(), EMBEDDED_DEFAULT_CONFIG);
        let mut state = planned(&defaults, interfaces);
        for nic in state.network_interfaces.values_mut() {
            nic.status.state = InterfaceState::Up;
        }
        store.save(&state).unwrap();
    }

    #[test]
    fn applies_the_embedded_default() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        assert!(controller.is_empty());
        let applied = controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        let want = |kind: &str, action: &str| AppliedResource {
            kind: kind.into(),
            name: "default".into(),
            action: action.into(),
        };
        assert_eq!(
            applied,
            [want("Network", "created"), want("Subnet", "created")]
        );
        assert!(!controller.is_empty());
        let again = controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        assert_eq!(
            again,
            [want("Network", "unchanged"), want("Subnet", "unchanged")]
        );

        let subnet = controller.get("subnets", "default").unwrap();
        assert_eq!(subnet["apiVersion"], "vswitch/v1alpha1");
        assert_eq!(subnet["kind"], "Subnet");
        assert_eq!(subnet["spec"]["cidr"], "172.30.0.0/16");
        assert_eq!(subnet["spec"]["gateway"], "172.30.0.1");
        assert_eq!(subnet["spec"]["mtu"], 1500);
        assert_eq!(subnet["spec"]["macAgeingSeconds"], 300);
        assert_eq!(subnet["spec"]["macTableLimit"], 8192);
        assert_eq!(subnet["status"]["allocated"], 0);
        assert_eq!(subnet["status"]["available"], 65533);
        let network = controller.get("Network", "default").unwrap();
        assert_eq!(network["status"]["subnets"], serde_json::json!(["default"]));
        assert_eq!(names(&controller.list("NETWORKS").unwrap()), ["default"]);
        assert!(controller.list("networkinterfaces").unwrap().is_empty());

        // The engine sees the subnet.
        let snapshot = controller.engine.read().current();
        assert_eq!(snapshot.subnets().len(), 1);
        let entry = &snapshot.subnets()[0];
        assert_eq!(entry.name, "default");
        assert_eq!(entry.network, "default");
        assert_eq!(entry.mac_ageing, Duration::from_secs(300));
        assert_eq!(entry.mac_limit, 8192);
        assert!(entry.ports.is_empty());
    }

    #[test]
    fn a_bad_document_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        let before = std::fs::read(dir.path().join("state.json")).unwrap();
        let generation = controller.engine.read().current().generation;
        let text = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.0.0.0/33, gateway: 10.0.0.1}
";
        let err = controller.apply(text).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.to_string().starts_with(
                "document 2 (Subnet \"web\"): spec.cidr: invalid CIDR \"10.0.0.0/33\""
            )
        );
        assert_eq!(names(&controller.list("network").unwrap()), ["default"]);
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            before
        );
        assert_eq!(controller.engine.read().current().generation, generation);

        for bad in [
            "kind: Network\nmetadata: {name: x}\n: : :\n",
            "apiVersion: vswitch/v1alpha1\nkind: Router\nmetadata: {name: x}\n",
            "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: x}\nspec: {peers: []}\n",
        ] {
            assert_eq!(controller.apply(bad).unwrap_err().status(), 400, "{bad}");
        }
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            before
        );
    }

    #[test]
    fn restart_restores_from_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        {
            let controller = open(dir.path());
            controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
            controller
                .create(
                    "network",
                    r#"{"metadata":{"name":"blue","labels":{"team":"a"}}}"#,
                )
                .unwrap();
            controller.shutdown();
        }
        let controller = open(dir.path());
        assert!(!controller.is_empty());
        assert_eq!(
            names(&controller.list("networks").unwrap()),
            ["blue", "default"]
        );
        assert_eq!(
            controller.get("network", "blue").unwrap()["metadata"]["labels"]["team"],
            "a"
        );
        assert_eq!(controller.engine.read().current().subnets().len(), 1);
    }

    #[test]
    fn create_refuses_a_taken_name() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        let body =
            r#"{"apiVersion":"vswitch/v1alpha1","kind":"Network","metadata":{"name":"blue"}}"#;
        let created = controller.create("Networks", body).unwrap();
        assert_eq!(created["metadata"]["name"], "blue");
        assert_eq!(created["status"]["subnets"], serde_json::json!([]));
        let err = controller.create("network", body).unwrap_err();
        assert_eq!(err.status(), 409);
        assert_eq!(
            err.to_string(),
            "Network \"blue\": metadata.name: Network \"blue\" already exists; choose another \
             name or delete the existing one first"
        );
        assert_eq!(err.field(), Some("metadata.name"));
        let err = controller.create("subnet", body).unwrap_err();
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn unknown_kinds_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        let err = controller.list("routers").unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.to_string()
                .contains("valid kinds: Overlay, Network, Subnet")
        );
        let err = controller.get("nic", "c1").unwrap_err();
        assert_eq!(err.status(), 404);
        assert_eq!(err.to_string(), "NetworkInterface \"c1\" not found");
        assert_eq!(controller.delete("subnet", "x").unwrap_err().status(), 404);
    }

    #[test]
    fn delete_respects_dependants() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        let err = controller.delete("networks", "default").unwrap_err();
        assert_eq!(err.status(), 409);
        assert_eq!(
            err.to_string(),
            "Network \"default\" still has Subnets: default; delete them first"
        );
        controller.delete("subnets", "default").unwrap();
        assert!(controller.engine.read().current().subnets().is_empty());
        controller.delete("networks", "default").unwrap();
        assert!(controller.is_empty());
        drop(controller);
        assert!(open(dir.path()).is_empty());
    }

    #[test]
    fn missing_namespace_is_refused_before_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        let text = format!("{EMBEDDED_DEFAULT_CONFIG}---\n{}", nic("c1", ""));
        let err = controller.apply(&text).unwrap_err();
        assert_eq!(err.status(), 400);
        assert_eq!(
            err.to_string(),
            format!(
                "document 3 (NetworkInterface \"c1\"): spec.netns: network namespace {NO_NETNS} \
                 does not exist (/run/netns/{NO_NETNS} not found); create it first (ip netns add \
                 NAME) or check the path/pid"
            )
        );
        assert_eq!(err.field(), Some("documents[2].spec.netns"));
        assert!(controller.is_empty());
        let body = format!(r#"{{"metadata":{{"name":"c1"}},"spec":{{"netns":"{NO_NETNS}"}}}}"#);
        controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        let err = controller.create("nic", &body).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(controller.list("nic").unwrap().is_empty());
    }

    #[test]
    fn lost_interfaces_stay_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let interfaces = format!(
            "{}---\n{}",
            nic("c1", ""),
            nic("c2", ", ifname: eth1, ips: [172.30.9.9]")
        );
        seed(dir.path(), &interfaces);
        let controller = open(dir.path());
        let list = controller.list("networkinterfaces").unwrap();
        assert_eq!(names(&list), ["c1", "c2"]);
        for nic in &list {
            assert_eq!(nic["status"]["state"], "lost", "{nic}");
            let message = nic["status"]["message"].as_str().unwrap();
            assert!(
                message.starts_with("cannot re-open after restart: "),
                "{message}"
            );
        }
        assert_eq!(
            list[0]["status"]["ips"],
            serde_json::json!(["172.30.0.2/16"])
        );
        // Lost ports are not in the snapshot.
        let snapshot = controller.engine.read().current();
        assert!(snapshot.ports().is_empty());
        assert!(snapshot.subnets()[0].ports.is_empty());
        // Their addresses stay leased.
        let subnet = controller.get("subnet", "default").unwrap();
        assert_eq!(subnet["status"]["allocated"], 2);
        let err = controller.create(
            "nic",
            &format!(r#"{{"metadata":{{"name":"c3"}},"spec":{{"netns":"{NO_NETNS}","ifname":"eth2","ips":["172.30.9.9"]}}}}"#),
        );
        let err = err.unwrap_err();
        assert_eq!(err.status(), 409);
        assert!(
            err.to_string()
                .contains("already used by NetworkInterface \"c2\""),
            "{err}"
        );
        // The lost state was persisted.
        drop(controller);
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains("\"lost\""));
        // Deleting a lost interface removes it and frees its address.
        let controller = open(dir.path());
        let err = controller.delete("subnet", "default").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Subnet \"default\" still has NetworkInterfaces: c1, c2; delete them first"
        );
        controller.delete("networkinterface", "c2").unwrap();
        controller.delete("NIC", "c1").unwrap();
        assert!(controller.list("nics").unwrap().is_empty());
        let subnet = controller.get("subnet", "default").unwrap();
        assert_eq!(subnet["status"]["allocated"], 0);
        // The cursor survives: the next allocation continues after c1's address.
        drop(controller);
        let (_store, state) = Store::open(dir.path()).unwrap();
        let state = state.unwrap();
        assert_eq!(
            state.ipam["default"].last_allocated,
            Some(std::net::Ipv4Addr::new(172, 30, 0, 2))
        );
    }

    #[test]
    fn a_second_controller_on_one_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path());
        let err = Controller::open(dir.path(), engine()).unwrap_err();
        assert_eq!(err.status(), 500);
        assert!(
            err.to_string().contains("in use by another vswitchd"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_state_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), "not json").unwrap();
        let err = Controller::open(dir.path(), engine()).unwrap_err();
        assert!(err.to_string().contains("state.json is corrupt"), "{err}");
    }

    #[test]
    fn id_pool_is_dense_and_reuses_the_lowest() {
        let mut pool = IdPool::new(3);
        assert_eq!(pool.available(), 3);
        assert_eq!(
            (pool.allocate(), pool.allocate(), pool.allocate()),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(pool.allocate(), None);
        pool.release(2);
        pool.release(0);
        assert_eq!(pool.available(), 2);
        assert_eq!(pool.allocate(), Some(0));
        assert_eq!(pool.allocate(), Some(2));
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn subnet_ids_are_reused_after_delete() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        let text = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: n}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: a}
spec: {network: n, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: b}
spec: {network: n, cidr: 10.2.0.0/24, gateway: 10.2.0.1, macTableLimit: 16}
";
        controller.apply(text).unwrap();
        let ids = |c: &Controller| -> Vec<(String, u32)> {
            c.engine
                .read()
                .current()
                .subnets()
                .iter()
                .map(|s| (s.name.clone(), s.id.0))
                .collect()
        };
        assert_eq!(
            ids(&controller),
            [("a".to_string(), 0), ("b".to_string(), 1)]
        );
        controller.delete("subnet", "a").unwrap();
        let c = text.replace("name: a}", "name: c}");
        controller.apply(&c).unwrap();
        assert_eq!(
            ids(&controller),
            [("b".to_string(), 1), ("c".to_string(), 0)]
        );
        let snapshot = controller.engine.read().current();
        assert_eq!(snapshot.subnet(SubnetId(1)).map(|s| s.mac_limit), Some(16));
    }

    /// Two peered Networks (`blue`: web 10.1.0.0/24 and edge 10.1.1.0/24; `red`: db
    /// 10.2.0.0/24), a Route `lab` from blue to 192.168.50.0/24 via 10.1.1.254, and two
    /// interfaces: `router` (10.1.1.254 on edge, the next hop) and `c1` (10.1.0.5 on web).
    const PEERED: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
spec: {peerings: [{name: to-red, network: red}]}
---
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: red}
spec: {peerings: [{name: to-blue, network: blue}]}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: edge}
spec: {network: blue, cidr: 10.1.1.0/24, gateway: 10.1.1.1, gatewayMac: '02:00:00:00:01:01'}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: db}
spec: {network: red, cidr: 10.2.0.0/24, gateway: 10.2.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Route
metadata: {name: lab}
spec: {network: blue, destination: 192.168.50.0/24, nextHop: 10.1.1.254}
";

    /// Writes a state holding `text` (as planned; interfaces never attached).
    fn seed_state(dir: &Path, text: &str) {
        let (store, _) = Store::open(dir).unwrap();
        store.save(&planned(&State::default(), text)).unwrap();
    }

    /// Marks interface `name` up with a port that has no queues (workers skip it), and
    /// publishes: enough to see what compile() makes of it.
    fn fake_port(controller: &Controller, name: &str) -> PortId {
        let mut inner = controller.lock();
        let id = PortId(inner.port_ids.allocate().expect("a port id"));
        let nic = inner.state.network_interfaces.get_mut(name).expect("nic");
        nic.status.state = InterfaceState::Up;
        let io = PortIo {
            kind: crate::port::PortKind::Tap,
            queues: Vec::new(),
            capabilities: Default::default(),
            host_ifname: None,
        };
        inner.ports.insert(
            name.to_string(),
            AttachedPort {
                id,
                io: Arc::new(io),
            },
        );
        let engine = controller.engine.read();
        publish(&engine, &mut inner);
        id
    }

    fn peered_with_ports(dir: &Path) -> Controller {
        let interfaces = format!(
            "---\n{}---\n{}",
            nic("router", ", subnet: edge, ips: [10.1.1.254]"),
            nic("c1", ", subnet: web, ifname: eth1, ips: [10.1.0.5]")
        );
        seed_state(dir, &format!("{PEERED}{interfaces}"));
        let controller = open(dir);
        fake_port(&controller, "router");
        fake_port(&controller, "c1");
        controller
    }

    fn table_rows(controller: &Controller, network: Option<&str>) -> Vec<String> {
        controller
            .routing_table(network)
            .unwrap()
            .into_iter()
            .map(|r| {
                let via = r.next_hop.map_or("direct".to_string(), |a| a.to_string());
                format!(
                    "{} {} {via} {} {}",
                    r.network, r.destination, r.subnet, r.origin
                )
            })
            .collect()
    }

    #[test]
    fn compile_builds_connected_peering_and_static_tables() {
        let dir = tempfile::tempdir().unwrap();
        let controller = peered_with_ports(dir.path());
        let snapshot = controller.engine.read().current();
        let ids: BTreeMap<&str, SubnetId> = snapshot
            .subnets()
            .iter()
            .map(|s| (s.name.as_str(), s.id))
            .collect();
        let blue = snapshot
            .networks()
            .iter()
            .find(|n| n.name == "blue")
            .expect("blue in the snapshot");
        let routes: Vec<RouteEntry> = blue.routes().cloned().collect();
        let entry =
            |prefix: &str, subnet: &str, next_hop: NextHop, origin: RouteOrigin| RouteEntry {
                prefix: prefix.parse().unwrap(),
                subnet: ids[subnet],
                next_hop,
                origin,
            };
        assert_eq!(routes.len(), 4, "{routes:?}");
        for want in [
            entry(
                "10.1.0.0/24",
                "web",
                NextHop::Direct,
                RouteOrigin::Connected,
            ),
            entry(
                "10.1.1.0/24",
                "edge",
                NextHop::Direct,
                RouteOrigin::Connected,
            ),
            entry(
                "10.2.0.0/24",
                "db",
                NextHop::Direct,
                RouteOrigin::Peering("red".into()),
            ),
            entry(
                "192.168.50.0/24",
                "edge",
                NextHop::Via(Ipv4Addr::new(10, 1, 1, 254)),
                RouteOrigin::Static("lab".into()),
            ),
        ] {
            assert!(routes.contains(&want), "{want:?} not in {routes:?}");
        }
        let hit = blue.lookup(Ipv4Addr::new(192, 168, 50, 7)).unwrap();
        assert_eq!(hit.origin, RouteOrigin::Static("lab".into()));
        // Every subnet's network_id is its Network's.
        for subnet in snapshot.subnets() {
            let network = snapshot.network(subnet.network_id).expect("network");
            assert_eq!(network.name, subnet.network, "{}", subnet.name);
        }
        // The router may send from the Route's destination; c1 may not.
        let port = |name: &str| {
            snapshot
                .ports()
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{name} not in the snapshot"))
        };
        assert_eq!(
            port("router").allowed_sources,
            ["192.168.50.0/24".parse::<Ipv4Net>().unwrap()]
        );
        assert!(port("c1").allowed_sources.is_empty());
        // The configured gateway MAC, and a derived one for the others.
        let edge = snapshot.subnet(ids["edge"]).unwrap();
        assert_eq!(edge.gateway_mac, [2, 0, 0, 0, 1, 1]);
        let web = snapshot.subnet(ids["web"]).unwrap();
        let node = controller.lock().state.node_id;
        assert_eq!(web.gateway_mac, routing::derived_gateway_mac(node, "web").0);

        // The API view: sorted by Network and destination, with names.
        assert_eq!(
            table_rows(&controller, None),
            [
                "blue 10.1.0.0/24 direct web connected",
                "blue 10.1.1.0/24 direct edge connected",
                "blue 10.2.0.0/24 direct db peering:red",
                "blue 192.168.50.0/24 10.1.1.254 edge static:lab",
                "red 10.1.0.0/24 direct web peering:blue",
                "red 10.1.1.0/24 direct edge peering:blue",
                "red 10.2.0.0/24 direct db connected",
            ]
        );
        assert_eq!(table_rows(&controller, Some("red")).len(), 3);
        let err = controller.routing_table(Some("green")).unwrap_err();
        assert_eq!(err.status(), 404);
        assert_eq!(err.to_string(), "Network \"green\" not found");

        // Removing one side: Pending, and the peering routes leave both tables.
        controller
            .apply("apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: red}\n")
            .unwrap();
        assert_eq!(
            table_rows(&controller, Some("red")),
            ["red 10.2.0.0/24 direct db connected"]
        );
        assert!(
            !table_rows(&controller, Some("blue"))
                .iter()
                .any(|row| row.contains("peering:")),
        );
        let blue = controller.get("network", "blue").unwrap();
        assert_eq!(blue["status"]["peerings"][0]["state"], "Pending");
        // Deleting the Route: the router loses the routed source.
        controller.delete("route", "lab").unwrap();
        let snapshot = controller.engine.read().current();
        let router = snapshot
            .ports()
            .iter()
            .find(|p| p.name == "router")
            .unwrap();
        assert!(router.allowed_sources.is_empty());
        controller.shutdown();
    }

    #[test]
    fn status_of_networks_subnets_and_routes() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        controller.apply(PEERED).unwrap();
        let blue = controller.get("networks", "blue").unwrap();
        assert_eq!(
            blue["status"],
            serde_json::json!({
                "subnets": ["edge", "web"],
                "peerings": [{"name": "to-red", "network": "red", "state": "Ready"}],
            })
        );
        let route = controller.get("routes", "lab").unwrap();
        assert_eq!(
            route["status"],
            serde_json::json!({"subnet": "edge", "state": "Ready"})
        );
        let edge = controller.get("subnet", "edge").unwrap();
        assert_eq!(edge["status"]["gatewayMac"], "02:00:00:00:01:01");
        assert_eq!(names(&controller.list("route").unwrap()), ["lab"]);
        // Deleting a Network others peer with is allowed once it has no Subnets.
        controller.delete("subnet", "db").unwrap();
        controller.delete("network", "red").unwrap();
        let blue = controller.get("network", "blue").unwrap();
        assert_eq!(
            blue["status"]["peerings"][0],
            serde_json::json!({"name": "to-red", "network": "red", "state": "Pending",
                               "message": "Network \"red\" does not exist yet"})
        );
        assert_eq!(
            controller.engine.read().current().networks().len(),
            1,
            "red left the snapshot"
        );
        controller.shutdown();
    }

    #[test]
    fn network_ids_are_dense_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        let networks = |names: &[&str]| -> String {
            names
                .iter()
                .map(|n| format!("---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: {n}}}\n"))
                .collect()
        };
        controller.apply(&networks(&["b", "c", "d"])).unwrap();
        let ids = |c: &Controller| -> Vec<(String, u32)> {
            let mut ids: Vec<(String, u32)> = c
                .engine
                .read()
                .current()
                .networks()
                .iter()
                .map(|n| (n.name.clone(), n.id.0))
                .collect();
            ids.sort();
            ids
        };
        let owned = |list: &[(&str, u32)]| -> Vec<(String, u32)> {
            list.iter().map(|(n, id)| (n.to_string(), *id)).collect()
        };
        assert_eq!(ids(&controller), owned(&[("b", 0), ("c", 1), ("d", 2)]));
        // A new name sorting first does not renumber the others.
        controller.apply(&networks(&["a"])).unwrap();
        assert_eq!(
            ids(&controller),
            owned(&[("a", 3), ("b", 0), ("c", 1), ("d", 2)])
        );
        // A freed id is reused.
        controller.delete("network", "c").unwrap();
        controller.apply(&networks(&["e"])).unwrap();
        assert_eq!(
            ids(&controller),
            owned(&[("a", 3), ("b", 0), ("d", 2), ("e", 1)])
        );
        controller.shutdown();
    }

    #[test]
    fn node_id_and_gateway_macs_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open(dir.path());
        controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        controller.apply(PEERED).unwrap();
        let macs = |c: &Controller| -> Vec<(String, String)> {
            c.list("subnets")
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["metadata"]["name"].as_str().unwrap().to_string(),
                        s["status"]["gatewayMac"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let before = macs(&controller);
        let node = controller.lock().state.node_id.expect("a node id");
        let table = table_rows(&controller, None);
        controller.shutdown();
        drop(controller);
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains(&format!("\"nodeId\": \"{node}\"")), "{text}");

        let controller = open(dir.path());
        assert_eq!(controller.lock().state.node_id, Some(node));
        assert_eq!(macs(&controller), before);
        // The Route and the peerings were restored too.
        assert_eq!(table_rows(&controller, None), table);
        let snapshot = controller.engine.read().current();
        let default = snapshot
            .subnets()
            .iter()
            .find(|s| s.name == "default")
            .unwrap();
        let shown = &before.iter().find(|(n, _)| n == "default").unwrap().1;
        assert_eq!(crate::runtime::format_mac(default.gateway_mac), *shown);
        controller.shutdown();

        // Another node (state directory) derives other MACs for the same names.
        let other_dir = tempfile::tempdir().unwrap();
        let other = open(other_dir.path());
        other.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        let theirs = macs(&other);
        let mine = before.iter().find(|(n, _)| n == "default").unwrap();
        assert_ne!(theirs[0].1, mine.1);
        other.shutdown();
    }

    #[test]
    fn a_state_without_a_node_id_gets_one_once() {
        let dir = tempfile::tempdir().unwrap();
        seed_state(dir.path(), EMBEDDED_DEFAULT_CONFIG);
        let (_, state) = Store::open(dir.path()).unwrap();
        assert_eq!(state.unwrap().node_id, None);
        let controller = open(dir.path());
        let node = controller.lock().state.node_id;
        assert!(node.is_some());
        drop(controller);
        let (_, state) = Store::open(dir.path()).unwrap();
        assert_eq!(state.unwrap().node_id, node);
    }

    /// Uplink interfaces the stand-in I/O has closed (each test uses its own names).
    static CLOSED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Uplink I/O stand-ins: interfaces named `fake*` exist; opening one gives a port without
    /// queues (workers skip it) and MTU 1400. `fakesame` reports the switch's MAC as its
    /// own; `fakedown` is down.
    fn fake_ops() -> UplinkOps {
        fn exists(ifname: &str) -> bool {
            ifname.starts_with("fake")
        }
        fn open(
            ifname: &str,
            mac: [u8; 6],
            _queues: usize,
        ) -> Result<(PortIo, UplinkDevice), PortError> {
            if ifname == "fakedown" {
                return Err(PortError::Sys {
                    what: "uplink interface is down; bring it up".into(),
                    name: ifname.into(),
                    source: std::io::Error::from_raw_os_error(libc::ENETDOWN),
                });
            }
            let host_mac = if ifname == "fakesame" {
                mac
            } else {
                [0x52, 0x54, 0, 0, 0, 1]
            };
            let io = PortIo {
                kind: crate::port::PortKind::Veth,
                queues: Vec::new(),
                capabilities: Default::default(),
                host_ifname: Some(ifname.to_string()),
            };
            Ok((
                io,
                UplinkDevice {
                    mtu: 1400,
                    host_mac,
                },
            ))
        }
        fn close(io: PortIo) {
            CLOSED
                .lock()
                .push(io.host_ifname.clone().unwrap_or_default());
        }
        UplinkOps {
            exists,
            open,
            close,
        }
    }

    fn open_fake(dir: &Path, clock: Arc<crate::tables::clock::FakeClock>) -> Controller {
        Controller::open_with(dir, engine(), clock, fake_ops()).expect("controller opens")
    }

    fn closed(ifname: &str) -> bool {
        CLOSED.lock().iter().any(|name| name == ifname)
    }

    /// Network blue (Subnet web 10.1.0.0/24) and red (Subnet db 10.2.0.0/24), interfaces c1
    /// and c2 on web and d1 on db.
    const NAT_BASE: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: red}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: db}
spec: {network: red, cidr: 10.2.0.0/24, gateway: 10.2.0.1}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c1}
spec: {subnet: web, netns: vsctl-test-no-such-netns, ips: [10.1.0.5]}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c2}
spec: {subnet: web, netns: vsctl-test-no-such-netns, ifname: eth1, ips: [10.1.0.6]}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: d1}
spec: {subnet: db, netns: vsctl-test-no-such-netns, ifname: eth2, ips: [10.2.0.5]}
";

    fn uplink_doc(ifname: &str) -> String {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {{name: wan}}\n\
             spec: {{interface: {ifname}, addresses: [198.51.100.10/24, 198.51.100.11, 198.51.100.12], gateway: 198.51.100.1}}\n"
        )
    }

    const NAT_RESOURCES: &str = "\
apiVersion: vswitch/v1alpha1
kind: NATGateway
metadata: {name: gw}
spec: {network: blue, ips: [198.51.100.10], portsPerNetworkInterface: 1024}
---
apiVersion: vswitch/v1alpha1
kind: PortForward
metadata: {name: web}
spec: {ip: 198.51.100.10, protocol: tcp, port: 8080, target: {interface: c1, port: 80}}
---
apiVersion: vswitch/v1alpha1
kind: VirtualIP
metadata: {name: v}
spec: {type: Public}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c2}
spec: {subnet: web, netns: vsctl-test-no-such-netns, ifname: eth1, ips: [10.1.0.6], virtualIP: v}
";

    /// A controller on the stand-in uplink `ifname` with NAT_BASE (interfaces up, without
    /// queues), the Uplink and NAT_RESOURCES applied; returns the port ids of c1 and d1.
    fn nat_controller(
        dir: &Path,
        clock: Arc<crate::tables::clock::FakeClock>,
        ifname: &str,
    ) -> (Controller, PortId, PortId) {
        seed_state(dir, NAT_BASE);
        let controller = open_fake(dir, clock);
        let c1 = fake_port(&controller, "c1");
        fake_port(&controller, "c2");
        let d1 = fake_port(&controller, "d1");
        controller.apply(&uplink_doc(ifname)).expect("uplink");
        controller.apply(NAT_RESOURCES).expect("NAT resources");
        (controller, c1, d1)
    }

    fn addr(text: &str) -> Ipv4Addr {
        text.parse().expect("an address")
    }

    #[test]
    fn uplink_and_nat_rules_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::tables::clock::FakeClock::new(0));
        seed_state(dir.path(), NAT_BASE);
        let controller = open_fake(dir.path(), clock);
        fake_port(&controller, "c1");
        fake_port(&controller, "c2");
        let before = controller.engine.read().current();
        assert!(before.uplink.is_none());
        let applied = controller.apply(&uplink_doc("fakepub")).unwrap();
        assert_eq!(applied[0].action, "created");
        controller.apply(NAT_RESOURCES).unwrap();

        let snapshot = controller.engine.read().current();
        // One conntrack table for the whole run.
        assert!(Arc::ptr_eq(&before.conntrack, &snapshot.conntrack));
        let uplink = snapshot.uplink.as_ref().expect("the uplink is published");
        assert_eq!(uplink.name, "wan");
        assert_eq!(uplink.ifname, "fakepub");
        assert_eq!(uplink.mtu, 1400);
        assert_eq!(uplink.gateway, addr("198.51.100.1"));
        assert_eq!(
            uplink.addresses,
            [
                "198.51.100.10/24".parse::<Ipv4Net>().unwrap(),
                "198.51.100.11/32".parse().unwrap(),
                "198.51.100.12/32".parse().unwrap(),
            ]
        );
        let node = controller.lock().state.node_id;
        assert_eq!(uplink.mac, nat_rules::derived_uplink_mac(node, "wan").0);
        // Its ids are its own: no port or subnet shares them.
        assert!(snapshot.ports().iter().all(|p| p.id != uplink.id));
        assert!(snapshot.subnets().iter().all(|s| s.id != uplink.segment));
        assert!(snapshot.port(uplink.id).is_none());
        // The NAT rules, by Network id.
        let blue = snapshot
            .networks()
            .iter()
            .find(|n| n.name == "blue")
            .map(|n| nat::Zone(n.id.0))
            .expect("blue");
        let rules = &snapshot.nat;
        assert!(rules.owns(addr("198.51.100.10")) && rules.owns(addr("198.51.100.11")));
        assert!(!rules.owns(addr("198.51.100.12")));
        let gateway = rules.gateway(blue).expect("blue's gateway");
        assert_eq!(
            gateway.ports_per_interface * gateway.blocks_per_interface,
            1024
        );
        assert_eq!(
            rules.virtual_ip_of(blue, addr("10.1.0.6")),
            Some(addr("198.51.100.11"))
        );

        // Status.
        let wan = controller.get("uplink", "wan").unwrap();
        assert_eq!(wan["status"]["state"], "up", "{wan}");
        assert_eq!(wan["status"]["mtu"], 1400);
        assert_eq!(
            wan["status"]["mac"],
            crate::runtime::format_mac(uplink.mac).as_str()
        );
        let web = controller.get("pf", "web").unwrap();
        assert_eq!(
            web["status"],
            serde_json::json!({"state": "Ready", "destination": "10.1.0.5:80"})
        );
        let v = controller.get("vip", "v").unwrap();
        assert_eq!(
            v["status"],
            serde_json::json!({"ip": "198.51.100.11", "interface": "c2"})
        );
        let gw = controller.get("natgw", "gw").unwrap();
        assert_eq!(
            gw["status"],
            serde_json::json!({"ips": ["198.51.100.10"], "portsInUse": []})
        );
        assert_eq!(names(&controller.list("natgateways").unwrap()), ["gw"]);

        // Deleting: dependants first; the uplink's device is closed and its ids freed.
        let err = controller.delete("uplink", "wan").unwrap_err();
        assert_eq!(err.status(), 409, "{err}");
        assert_eq!(
            controller.delete("vip", "v").unwrap_err().to_string(),
            "VirtualIP \"v\" still has NetworkInterfaces using it: c2; delete them first"
        );
        let c2 = NAT_RESOURCES.split("---\n").last().unwrap();
        controller.apply(&c2.replace(", virtualIP: v", "")).unwrap();
        for (kind, name) in [("vip", "v"), ("pf", "web"), ("natgw", "gw")] {
            controller.delete(kind, name).unwrap();
        }
        assert!(!closed("fakepub"));
        let uplink_id = uplink.id;
        // Holding a snapshot holds the uplink's queues: the controller would then leave the
        // closing to the last holder.
        drop(snapshot);
        controller.delete("uplinks", "wan").unwrap();
        assert!(closed("fakepub"));
        let snapshot = controller.engine.read().current();
        assert!(snapshot.uplink.is_none());
        assert!(!snapshot.nat.owns(addr("198.51.100.10")));
        assert_eq!(
            controller.lock().port_ids.allocate(),
            Some(uplink_id.0),
            "the uplink's port id is free again"
        );
        controller.shutdown();
    }

    #[test]
    fn virtual_ip_allocation_and_the_uplink_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::tables::clock::FakeClock::new(0));
        let vip = |name: &str| {
            format!(
                "apiVersion: vswitch/v1alpha1\nkind: VirtualIP\nmetadata: {{name: {name}}}\nspec: {{type: Public}}\n"
            )
        };
        {
            let controller = open_fake(dir.path(), Arc::clone(&clock));
            controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
            controller.apply(&uplink_doc("fakerestart")).unwrap();
            controller.apply(&vip("first")).unwrap();
            controller.apply(&vip("second")).unwrap();
            controller.delete("vip", "first").unwrap();
            let second = controller.get("vip", "second").unwrap();
            assert_eq!(second["status"]["ip"], "198.51.100.11");
            controller.shutdown();
        }
        let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
        assert!(text.contains("\"virtualIPs\""), "{text}");
        assert!(text.contains("\"format\": 3"), "{text}");

        let controller = open_fake(dir.path(), Arc::clone(&clock));
        let wan = controller.get("uplink", "wan").unwrap();
        assert_eq!(wan["status"]["state"], "up", "re-opened: {wan}");
        assert!(controller.engine.read().current().uplink.is_some());
        // The allocation is kept; a new VirtualIP takes the first free address.
        assert_eq!(
            controller.get("vip", "second").unwrap()["status"]["ip"],
            "198.51.100.11"
        );
        controller.apply(&vip("third")).unwrap();
        assert_eq!(
            controller.get("vip", "third").unwrap()["status"]["ip"],
            "198.51.100.10"
        );
        controller.shutdown();
        drop(controller);

        // The interface is gone at the next start: the Uplink stays, lost, out of the
        // snapshot, and its VirtualIPs keep their addresses.
        let gone = UplinkOps {
            exists: |_| false,
            ..fake_ops()
        };
        let controller = Controller::open_with(dir.path(), engine(), clock.clone(), gone).unwrap();
        let wan = controller.get("uplink", "wan").unwrap();
        assert_eq!(wan["status"]["state"], "lost", "{wan}");
        let message = wan["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("cannot re-open after restart: Uplink \"wan\": spec.interface: interface fakerestart does not exist in vswitchd's network namespace"),
            "{message}"
        );
        assert!(controller.engine.read().current().uplink.is_none());
        assert_eq!(
            controller.get("vip", "third").unwrap()["status"]["ip"],
            "198.51.100.10"
        );
        // Applying it again retries, and is refused while the interface is missing.
        let err = controller.apply(&uplink_doc("fakerestart")).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        assert_eq!(err.field(), Some("documents[0].spec.interface"));
        controller.shutdown();
        drop(controller);
        // Back: re-opened at start.
        let controller = open_fake(dir.path(), clock);
        assert_eq!(
            controller.get("uplink", "wan").unwrap()["status"]["state"],
            "up"
        );
        controller.shutdown();
    }

    #[test]
    fn uplink_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let controller = open_fake(
            dir.path(),
            Arc::new(crate::tables::clock::FakeClock::new(0)),
        );
        controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        let before = std::fs::read(dir.path().join("state.json")).unwrap();
        let cases = [
            (
                "eth77",
                "documents[0].spec.interface",
                "document 1 (Uplink \"wan\"): spec.interface: interface eth77 does not exist in vswitchd's network namespace; name an existing host interface (ip link show)",
            ),
            (
                "fakedown",
                "documents[0].spec.interface",
                "document 1 (Uplink \"wan\"): spec.interface: uplink interface is down; bring it up for interface fakedown",
            ),
            (
                "fakesame",
                "documents[0].spec.mac",
                "is fakesame's own MAC; the switch needs a MAC of its own on the link",
            ),
        ];
        for (ifname, field, want) in cases {
            let err = controller.apply(&uplink_doc(ifname)).unwrap_err();
            assert_eq!(err.status(), 400, "{err}");
            assert_eq!(err.field(), Some(field), "{err}");
            assert!(err.to_string().contains(want), "{want:?} not in {err}");
            assert!(controller.list("uplinks").unwrap().is_empty());
            assert_eq!(
                std::fs::read(dir.path().join("state.json")).unwrap(),
                before
            );
            assert!(controller.engine.read().current().uplink.is_none());
        }
        assert!(closed("fakesame"), "the refused device was closed");
        // A failing re-open restores the old device.
        controller.apply(&uplink_doc("fakeold")).unwrap();
        let err = controller.apply(&uplink_doc("fakedown")).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        assert!(closed("fakeold"));
        let wan = controller.get("uplink", "wan").unwrap();
        assert_eq!(wan["spec"]["interface"], "fakeold");
        assert_eq!(wan["status"]["state"], "up");
        let uplink = controller.engine.read().current().uplink.clone().unwrap();
        assert_eq!(uplink.ifname, "fakeold");
        controller.shutdown();
    }

    #[test]
    fn conntrack_views_filter_count_and_flush() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::tables::clock::FakeClock::new(5_000));
        let (controller, c1, _d1) = nat_controller(dir.path(), Arc::clone(&clock), "fakect");
        let snapshot = controller.engine.read().current();
        let zone = |name: &str| {
            snapshot
                .networks()
                .iter()
                .find(|n| n.name == name)
                .map(|n| nat::Zone(n.id.0))
                .expect("a network")
        };
        let (blue, red) = (zone("blue"), zone("red"));
        let endpoint =
            |text: &str, port: u16| nat::Endpoint::new(std::net::IpAddr::V4(addr(text)), port);
        // c1 -> outside over UDP, masqueraded; d1 -> d1's neighbour over TCP, untranslated.
        let udp = nat::PacketInfo {
            tuple: nat::Tuple::new(
                nat::Protocol::Udp,
                endpoint("10.1.0.5", 5353),
                endpoint("203.0.113.9", 53),
            ),
            kind: nat::PacketKind::Udp,
        };
        let plan = snapshot
            .nat
            .plan(
                &nat::FlowKey::new(blue, udp.tuple),
                nat::InterfaceId(c1.0),
                |_| nat::Egress::External,
            )
            .expect("masquerade");
        let conntrack = &snapshot.conntrack;
        conntrack
            .create(blue, &udp, &plan, nat::Attachments::default(), 5_000)
            .expect("created");
        let tcp = nat::PacketInfo {
            tuple: nat::Tuple::new(
                nat::Protocol::Tcp,
                endpoint("10.2.0.5", 40000),
                endpoint("10.2.0.9", 80),
            ),
            kind: nat::PacketKind::Tcp(nat::TcpFlags::SYN),
        };
        conntrack
            .create(
                red,
                &tcp,
                &nat::NatPlan::none(red),
                nat::Attachments::default(),
                5_000,
            )
            .expect("created");
        clock.advance(Duration::from_secs(3));

        let rows = controller.conntrack(None).unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        let udp_row = rows.iter().find(|r| r.protocol == "udp").expect("udp");
        assert_eq!(
            udp_row.original,
            ConntrackKey {
                zone: "blue".into(),
                src: "10.1.0.5".into(),
                src_port: 5353,
                dst: "203.0.113.9".into(),
                dst_port: 53,
            }
        );
        // Replies come from outside to the NAT address, the port preserved.
        assert_eq!(
            udp_row.reply,
            ConntrackKey {
                zone: "external".into(),
                src: "203.0.113.9".into(),
                src_port: 53,
                dst: "198.51.100.10".into(),
                dst_port: 5353,
            }
        );
        assert_eq!(udp_row.state, "UNREPLIED");
        assert_eq!((udp_row.age_seconds, udp_row.timeout_seconds), (3, 27));
        let tcp_row = rows.iter().find(|r| r.protocol == "tcp").expect("tcp");
        assert_eq!(tcp_row.state, "SYN_SENT");
        assert_eq!(
            (tcp_row.original.zone.as_str(), tcp_row.reply.zone.as_str()),
            ("red", "red")
        );

        assert_eq!(controller.conntrack(Some("blue")).unwrap().len(), 1);
        assert_eq!(controller.conntrack_count(None).unwrap(), 2);
        assert_eq!(controller.conntrack_count(Some("red")).unwrap(), 1);
        let err = controller.conntrack(Some("green")).unwrap_err();
        assert_eq!(err.status(), 404);
        assert_eq!(err.to_string(), "Network \"green\" not found");
        assert_eq!(
            controller
                .flush_conntrack(Some("green"))
                .unwrap_err()
                .status(),
            404
        );

        // Ports in use, by interface name.
        let gw = controller.get("natgateway", "gw").unwrap();
        assert_eq!(
            gw["status"]["portsInUse"],
            serde_json::json!([{"interface": "c1", "ip": "198.51.100.10",
                                "blocks": ["5120-5375"], "tcp": 0, "udp": 1, "icmp": 0}])
        );
        let report = controller.nat();
        assert_eq!(report.ports_in_use.len(), 1);
        assert_eq!(report.ports_in_use[0].nat_gateway, "gw");
        assert_eq!(report.ports_in_use[0].network, "blue");
        assert_eq!(report.ports_in_use[0].interface, "c1");
        assert_eq!(report.conntrack.created, 2);
        assert_eq!(report.conntrack.entries, 2);
        assert_eq!(report.conntrack.nat_mappings, 1);
        assert_eq!(report.conntrack.max_entries, 1_000_000);
        assert_eq!(
            report
                .uplink
                .as_ref()
                .map(|u| (u.interface.as_str(), u.state.as_str())),
            Some(("fakect", "up"))
        );
        assert_eq!(
            report.addresses,
            [
                NatAddress {
                    ip: addr("198.51.100.10"),
                    used_by: vec!["NATGateway/gw".into(), "PortForward/web".into()],
                },
                NatAddress {
                    ip: addr("198.51.100.11"),
                    used_by: vec!["VirtualIP/v".into()],
                },
                NatAddress {
                    ip: addr("198.51.100.12"),
                    used_by: vec![],
                },
            ]
        );
        assert!(
            report
                .drops
                .keys()
                .all(|k| k.starts_with("nat.") || k.starts_with("conntrack."))
        );

        // An unreplied UDP flow is gone after 30 s; the TCP one (4 min) is not.
        clock.advance(Duration::from_secs(28));
        assert_eq!(controller.conntrack_count(None).unwrap(), 1);
        assert_eq!(controller.conntrack(None).unwrap()[0].protocol, "tcp");
        // Flushing one Network, then all; the mapping is released.
        assert_eq!(controller.flush_conntrack(Some("red")).unwrap(), 1);
        assert_eq!(controller.flush_conntrack(None).unwrap(), 1);
        assert_eq!(controller.conntrack_count(None).unwrap(), 0);
        assert!(controller.nat().ports_in_use.is_empty());
        // The table survives reconfiguration.
        let again = Arc::clone(&controller.engine.read().current().conntrack);
        controller.delete("pf", "web").unwrap();
        assert!(Arc::ptr_eq(
            &again,
            &controller.engine.read().current().conntrack
        ));
        // Deleting an interface removes its connections (ids are reused), not others'.
        for tuple in [
            udp.tuple,
            nat::Tuple::new(
                nat::Protocol::Udp,
                endpoint("10.1.0.6", 5353),
                endpoint("203.0.113.9", 53),
            ),
        ] {
            let info = nat::PacketInfo {
                tuple,
                kind: nat::PacketKind::Udp,
            };
            again
                .create(
                    blue,
                    &info,
                    &nat::NatPlan::none(blue),
                    nat::Attachments::default(),
                    clock.now_ms(),
                )
                .expect("created");
        }
        assert_eq!(controller.conntrack_count(Some("blue")).unwrap(), 2);
        controller.delete("nic", "c1").unwrap();
        let left = controller.conntrack(None).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].original.src, "10.1.0.6");
        // Deleting a Network flushes its zone.
        let stray = nat::PacketInfo {
            tuple: nat::Tuple::new(
                nat::Protocol::Udp,
                endpoint("10.1.0.77", 9),
                endpoint("203.0.113.9", 9),
            ),
            kind: nat::PacketKind::Udp,
        };
        again
            .create(
                blue,
                &stray,
                &nat::NatPlan::none(blue),
                nat::Attachments::default(),
                clock.now_ms(),
            )
            .expect("created");
        controller.delete("nic", "c2").unwrap();
        assert_eq!(controller.conntrack_count(None).unwrap(), 1);
        controller.delete("subnet", "web").unwrap();
        controller.delete("natgw", "gw").unwrap();
        controller.delete("network", "blue").unwrap();
        assert_eq!(again.count(None, clock.now_ms()), 0);
        controller.shutdown();
    }

    /// With real devices: needs root and iproute2, so `#[ignore]`d for a plain `cargo test`
    /// (`scripts/test.sh` runs it); fails, never passes, when run without them.
    mod devices {
        use std::process::{Command, Output};

        use super::*;

        fn run(program: &str, args: &[&str]) -> Output {
            Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|err| panic!("cannot run {program} (install iproute2): {err}"))
        }

        fn require_root() {
            assert!(
                nix::unistd::geteuid().is_root(),
                "this test creates network namespaces and devices: run it as root"
            );
        }

        /// A namespace of our own (`vsctl-PID-TAG`), deleted on drop with its devices.
        struct Netns(String);

        impl Netns {
            fn new(tag: &str) -> Netns {
                let name = format!("vsctl-{}-{tag}", std::process::id());
                let _ = run("ip", &["netns", "del", &name]);
                let out = run("ip", &["netns", "add", &name]);
                assert!(out.status.success(), "ip netns add {name}: {out:?}");
                Netns(name)
            }

            fn ip(&self, args: &[&str]) -> String {
                let mut all = vec!["-n", self.0.as_str()];
                all.extend_from_slice(args);
                let out = run("ip", &all);
                String::from_utf8_lossy(&out.stdout).into_owned()
            }

            fn has_link(&self, ifname: &str) -> bool {
                run("ip", &["-n", &self.0, "link", "show", ifname])
                    .status
                    .success()
            }
        }

        impl Drop for Netns {
            fn drop(&mut self) {
                let _ = run("ip", &["netns", "del", &self.0]);
            }
        }

        fn subnet(third: u8) -> String {
            format!(
                "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: n}}\n---\n\
                 apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: default}}\n\
                 spec: {{network: n, cidr: 172.29.{third}.0/24, gateway: 172.29.{third}.1, mtu: 1400}}\n"
            )
        }

        fn interface(name: &str, ns: &Netns, extra: &str) -> String {
            format!(
                "---\napiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {name}}}\n\
                 spec: {{netns: {}{extra}}}\n",
                ns.0
            )
        }

        fn status(controller: &Controller, name: &str) -> Value {
            controller.get("nic", name).unwrap()["status"].clone()
        }

        #[test]
        #[ignore = "needs root: creates network namespaces, TAP and veth ports"]
        fn attach_restart_change_rollback_delete() {
            require_root();
            let pid = std::process::id();
            let (a_name, b_name, c_name, d_name) = (
                format!("t{pid}a"),
                format!("t{pid}b"),
                format!("t{pid}c"),
                format!("t{pid}d"),
            );
            let (a, b, c, d) = (
                Netns::new("a"),
                Netns::new("b"),
                Netns::new("c"),
                Netns::new("d"),
            );
            let dir = tempfile::tempdir().unwrap();
            let engine = || Engine::start(EngineConfig::new(2)).unwrap();
            let controller = Controller::open(dir.path(), engine()).unwrap();
            let text = format!(
                "{}{}{}",
                subnet(7),
                interface(&a_name, &a, ""),
                interface(&b_name, &b, ", kind: veth, ifname: net1, labels: {x: y}")
                    .replace(", labels: {x: y}}", "}")
            );
            let applied = controller.apply(&text).unwrap();
            assert_eq!(applied.len(), 4);
            let sa = status(&controller, &a_name);
            let sb = status(&controller, &b_name);
            assert_eq!(sa["state"], "up", "{sa}");
            assert_eq!(sb["state"], "up", "{sb}");
            assert_eq!(sa["ips"], serde_json::json!(["172.29.7.2/24"]));
            assert_eq!(sb["ips"], serde_json::json!(["172.29.7.3/24"]));
            assert_eq!(sb["hostIfname"], port::host_ifname(&b_name));
            let mac = sa["mac"].as_str().unwrap().to_string();
            let addr = a.ip(&["addr", "show", "eth0"]);
            assert!(
                addr.contains("172.29.7.2/24") && addr.contains(&mac),
                "{addr}"
            );
            assert!(addr.contains("mtu 1400"), "{addr}");
            assert!(a.ip(&["route"]).contains("default via 172.29.7.1"));
            assert!(b.has_link("net1"));
            let snapshot = controller.engine.read().current();
            assert_eq!(snapshot.ports().len(), 2);
            assert_eq!(snapshot.subnets()[0].ports.len(), 2);

            // A failing attach rolls back the whole batch: c is not left attached.
            let out = run(
                "ip",
                &[
                    "-n", &d.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
                ],
            );
            assert!(out.status.success(), "{out:?}");
            let text = format!(
                "{}{}",
                interface(&c_name, &c, ""),
                interface(&d_name, &d, "")
            );
            let err = controller
                .apply(text.trim_start_matches("---\n"))
                .unwrap_err();
            assert_eq!(err.status(), 409, "{err}");
            assert!(
                err.to_string().starts_with(&format!(
                    "document 2 (NetworkInterface \"{d_name}\"): spec.ifname: "
                )),
                "{err}"
            );
            assert!(
                !c.has_link("eth0"),
                "the rolled-back device is still in {}",
                c.0
            );
            assert_eq!(controller.list("nic").unwrap().len(), 2);
            // Its address was not consumed.
            controller.apply(&interface(&c_name, &c, "")).unwrap();
            assert_eq!(
                status(&controller, &c_name)["ips"],
                serde_json::json!(["172.29.7.4/24"])
            );

            // New addresses re-create the device.
            let applied = controller
                .apply(&interface(&a_name, &a, ", ips: [172.29.7.50]"))
                .unwrap();
            assert_eq!(applied[0].action, "configured");
            let addr = a.ip(&["addr", "show", "eth0"]);
            assert!(
                addr.contains("172.29.7.50/24") && !addr.contains("172.29.7.2/"),
                "{addr}"
            );
            assert_eq!(status(&controller, &a_name)["mac"], mac.as_str());

            // A failed batch restores a device it re-created, with its old configuration.
            let text = format!(
                "{}{}",
                interface(&a_name, &a, ", ips: [172.29.7.60]"),
                interface(&d_name, &d, "")
            );
            let err = controller
                .apply(text.trim_start_matches("---\n"))
                .unwrap_err();
            assert_eq!(err.status(), 409, "{err}");
            let addr = a.ip(&["addr", "show", "eth0"]);
            assert!(
                addr.contains("172.29.7.50/24") && !addr.contains("172.29.7.60"),
                "{addr}"
            );
            assert_eq!(status(&controller, &a_name)["state"], "up");
            assert_eq!(
                status(&controller, &a_name)["ips"],
                serde_json::json!(["172.29.7.50/24"])
            );
            assert_eq!(controller.engine.read().current().ports().len(), 3);

            // Restart: the ports are re-opened, not re-created.
            controller.shutdown();
            drop(controller);
            drop(c);
            let controller = Controller::open(dir.path(), engine()).unwrap();
            assert_eq!(status(&controller, &a_name)["state"], "up");
            assert_eq!(status(&controller, &b_name)["state"], "up");
            let lost = status(&controller, &c_name);
            assert_eq!(lost["state"], "lost", "{lost}");
            assert_eq!(controller.engine.read().current().ports().len(), 2);

            // Delete removes the devices.
            for name in [&a_name, &b_name, &c_name] {
                controller.delete("networkinterfaces", name).unwrap();
            }
            assert!(!a.has_link("eth0"));
            assert!(!b.has_link("net1"));
            assert!(controller.list("nic").unwrap().is_empty());
            assert!(controller.engine.read().current().ports().is_empty());
            controller.shutdown();
        }
    }
}
