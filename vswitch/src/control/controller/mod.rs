//! The controller: owns the desired state (persisted in the [`Store`]), the opened ports and
//! the engine, and turns one into the other.
//!
//! Invariants:
//! - One internal lock (the state lock) guards the state; a change is validated whole
//!   ([`validate::plan`]) before anything happens, and either completes (devices created,
//!   state persisted, snapshot published) or is rolled back so that the running state is as
//!   before.
//! - No lock is held across device work (netlink, opening sockets) or while waiting for the
//!   workers to let go of a port. A change with device work is put in the state first, its
//!   resources marked in flight ([`InFlight`]); the lock is released for the device work and
//!   taken again to finish or undo it. Meanwhile reads see the change's interfaces as
//!   `Pending`, other changes proceed, and a change that touches a resource in flight (or
//!   builds on one) waits until it is done. The state file holds only finished changes.
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
//! - Lock order: the state lock, then the engine lock; the engine lock is never held while
//!   the state lock is released and taken again.
//!
//! This module is the API (open, apply, create, list, get, delete), the state lock and the
//! snapshot of the state that reads see. The rest is in submodules: `reconcile` carries out a
//! plan on the devices (and undoes it on failure), `compile` turns the state into the
//! engine's snapshot and publishes it, `views` are the read-only reports (routing table,
//! conntrack, NAT) and their rows, `overlay` is the glue of the overlay agent (hub and
//! runner) and of the resources it generates, `ids` the dense id pools.

use crate::control::kinds::LoadBalancerLive;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex, RwLock};

use self::balancers::Balancers;
use self::compile::publish;
use self::ids::IdPool;
use self::overlay::{check_overlay_delete, initial_overlay_state, install_vtep};
use self::reconcile::{
    attach_request, clean_up_devices_in_flight, forget_connections, install_uplink, interface_zone,
    mark_uplink, open_uplink, reopen_or_create,
};
use self::views::{port_names, resource_json};
use super::ApiError;
use super::nat_rules;
use super::resource::{
    Document, InterfaceState, Kind, Origin, Resource, parse_documents, parse_one, split_key,
};
use super::store::{DevicesInFlight, NodeId, State, Store, StoreError, SubnetIpamState};
use super::validate::{self, AppliedResource, Mode, Plan};
use crate::port::{self, MAX_PORTS, PortError, PortId, PortIo};
use crate::runtime::Engine;
use crate::tables::clock::{Clock, MonotonicClock};
use crate::tables::snapshot::{NetworkId, SubnetId};

mod balancers;
mod compile;
mod ids;
mod overlay;
mod policies;
mod reconcile;
mod shared_store;
#[cfg(test)]
mod tests;
mod trace;
mod views;

pub use self::overlay::{HUB_TLS_DIRECTORY, HubTlsConfig, OverlayAgentConfig};
pub use self::policies::PolicyExplanation;
pub use self::shared_store::HubAdmitted;
pub use self::views::{
    ConntrackCounters, ConntrackKey, ConntrackRow, MetricsSnapshot, NatAddress, NatPortsInUse,
    NatReport, NatUplink, RoutingTableCount, RoutingTableRow,
};

/// What the uplink's device reported when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkDevice {
    /// The interface's MTU.
    pub mtu: u16,
    /// The interface's own MAC (the host's; the switch must use another).
    pub host_mac: [u8; 6],
    /// The interface's index.
    pub ifindex: u32,
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
            ifindex: info.ifindex,
        },
    ))
}

fn close_uplink_device(io: PortIo) {
    port::uplink::close(io);
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
    /// Signalled whenever a change in flight is done: changes that wait for it plan again.
    settled: Condvar,
    /// The datapath's clock (conntrack ages and timeouts are read with it).
    clock: Arc<dyn Clock>,
}

/// The state as last changed, and what a resource's status needs besides it.
#[derive(Debug, Default, PartialEq)]
struct Published {
    state: State,
    /// NetworkInterface names by port id.
    port_names: BTreeMap<u32, String>,
    /// LoadBalancers as the datapath serves them.
    load_balancers: BTreeMap<String, LoadBalancerLive>,
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
        self.publish_reads();
    }
}

impl Locked<'_> {
    /// Makes the state as it is now what reads see (if it changed).
    fn publish_reads(&mut self) {
        let current = self.published.load();
        let port_names = port_names(&self.guard);
        let load_balancers = self.guard.balancers.live();
        let writes = self.guard.state.writes;
        let state_changed =
            writes != self.guard.published_writes && current.state != *self.guard.state;
        self.guard.published_writes = writes;
        if state_changed
            || current.port_names != port_names
            || current.load_balancers != load_balancers
        {
            self.published.store(Arc::new(Published {
                state: self.guard.state.clone(),
                port_names,
                load_balancers,
            }));
        }
    }

    /// Runs `f` with the state lock released (reads see the state as it is now), then takes
    /// the lock again. For device work: `f` must not take the engine lock for longer than a
    /// call, nor the state lock.
    fn unlocked<T>(&mut self, f: impl FnOnce() -> T) -> T {
        self.publish_reads();
        parking_lot::MutexGuard::unlocked(&mut self.guard, f)
    }

    /// Releases the lock until a change in flight is done, then takes it again.
    fn wait_settled(&mut self, settled: &Condvar) {
        self.publish_reads();
        settled.wait(&mut self.guard);
    }
}

/// A change whose device work runs with the state lock released. Its resources are already
/// in the state (new interfaces `Pending`), so reads show them and other changes plan around
/// them; a change that touches one of them waits until it is done.
#[derive(Debug)]
struct InFlight {
    token: u64,
    /// Each resource of the change as it was before (`None`: it did not exist): restored if
    /// the change fails, and what the state file holds until the change is done.
    before: BTreeMap<(Kind, String), Option<Resource>>,
    /// The IPAM cursors it moved, by Subnet: before and after. Restored if the change fails
    /// and no later change moved them again, so a failed change consumes no address.
    cursors: Vec<(String, Option<SubnetIpamState>, Option<SubnetIpamState>)>,
    /// It opens or closes the Uplink's device.
    uplink: bool,
    /// It opens or closes the VTEP.
    vtep: bool,
    /// The interfaces whose devices it creates, as planned (listed in the state directory's
    /// `devices.json` while it flies).
    devices: DevicesInFlight,
}

impl Inner {
    /// Registers a change in flight; returns its token for [`Inner::land`].
    fn take_off(
        &mut self,
        before: BTreeMap<(Kind, String), Option<Resource>>,
        uplink: bool,
        vtep: bool,
    ) -> u64 {
        self.flights += 1;
        let token = self.flights;
        self.in_flight.push(InFlight {
            token,
            before,
            cursors: Vec::new(),
            uplink,
            vtep,
            devices: DevicesInFlight::new(),
        });
        token
    }

    /// The interfaces whose devices the changes in flight create, with `more`.
    fn devices_in_flight(&self, more: &DevicesInFlight) -> DevicesInFlight {
        let mut all = more.clone();
        for flight in &self.in_flight {
            all.extend(flight.devices.clone());
        }
        all
    }

    /// Ends a change in flight (done or undone); returns it. Once its interfaces are in the
    /// state file (or undone), they leave `devices.json`.
    fn land(&mut self, token: u64) -> Option<InFlight> {
        let at = self.in_flight.iter().position(|f| f.token == token)?;
        let flight = self.in_flight.remove(at);
        if !flight.devices.is_empty() {
            let remaining = self.devices_in_flight(&DevicesInFlight::new());
            if let Err(err) = self.store.save_devices(&remaining) {
                tracing::warn!("cannot update the list of devices in flight: {err}");
            }
        }
        Some(flight)
    }

    /// True when `kind`/`name` is part of a change in flight.
    fn busy(&self, kind: Kind, name: &str) -> bool {
        let key = (kind, name.to_string());
        self.in_flight.iter().any(|f| {
            f.before.contains_key(&key)
                || (kind == Kind::Uplink && f.uplink)
                || (kind == Kind::Overlay && f.vtep)
        })
    }

    /// What a plan must wait for: a resource of it (or an interface it re-creates) in
    /// flight, Uplink or VTEP work while another change has some, or a resource of it that
    /// depends on one in flight (which may yet be undone).
    fn blocker(&self, plan: &Plan) -> Option<String> {
        for flight in &self.in_flight {
            let mut touched = plan.origins.keys().cloned().chain(
                plan.recreate
                    .iter()
                    .map(|n| (Kind::NetworkInterface, n.clone())),
            );
            if let Some((kind, name)) = touched.find(|key| flight.before.contains_key(key)) {
                return Some(format!("{kind} {name:?} is being changed"));
            }
            if flight.uplink && plan.uplink.is_some() {
                return Some("the Uplink's device is being changed".into());
            }
            if flight.vtep && plan.origins.keys().any(|(kind, _)| *kind == Kind::Overlay) {
                return Some("the VTEP is being changed".into());
            }
            for (kind, name) in flight.before.keys() {
                for (_, dependants) in plan.next.dependants(*kind, name) {
                    if let Some((_, dependant)) = plan
                        .origins
                        .keys()
                        .find(|(_, origin)| dependants.contains(origin))
                    {
                        return Some(format!(
                            "{dependant:?} depends on {kind} {name:?}, which is being changed"
                        ));
                    }
                }
            }
        }
        None
    }

    /// Saves `state` without the changes still in flight (their resources as they were).
    fn persist(&self, state: &State) -> Result<(), StoreError> {
        self.persist_except(state, None)
    }

    /// [`Inner::persist`] with change `token`, about to land, kept.
    fn persist_landing(&self, state: &State, token: u64) -> Result<(), StoreError> {
        self.persist_except(state, Some(token))
    }

    fn persist_except(&self, state: &State, landing: Option<u64>) -> Result<(), StoreError> {
        let flying = || self.in_flight.iter().filter(|f| Some(f.token) != landing);
        if flying().next().is_none() {
            return self.store.save(state);
        }
        let mut durable = state.clone();
        for flight in flying() {
            for ((kind, name), before) in &flight.before {
                match before {
                    Some(resource) => durable.put(resource.clone()),
                    None => {
                        durable.remove(*kind, name);
                    }
                }
            }
        }
        let subnets: Vec<String> = durable.subnets.keys().cloned().collect();
        durable.ipam.retain(|subnet, _| subnets.contains(subnet));
        self.store.save(&durable)
    }
}

/// The desired state, counting the times it was borrowed mutably, so that releasing the lock
/// compares it with what reads see only when it may have changed: comparing two states is
/// linear in their size (1,000,000 Routes: about 0.2 s), and the lock is taken every second
/// by upkeep that only reads.
#[derive(Debug, Default)]
struct Tracked {
    state: State,
    writes: u64,
}

impl Tracked {
    fn new(state: State) -> Tracked {
        Tracked { state, writes: 0 }
    }
}

impl std::ops::Deref for Tracked {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Tracked {
    fn deref_mut(&mut self) -> &mut State {
        self.writes = self.writes.wrapping_add(1);
        &mut self.state
    }
}

/// Everything the lock protects.
#[derive(Debug)]
struct Inner {
    store: Store,
    /// The persisted state, as last saved.
    state: Tracked,
    /// `state.writes` when the state was last compared with (or published as) what reads
    /// see.
    published_writes: u64,
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
    /// (Subnet, VLAN) -> its VLAN port's id (Subnets bound to a VLAN, while the Uplink is
    /// open).
    vlan_ids: BTreeMap<(String, u16), PortId>,
    /// (NetworkInterface, VLAN) -> the port of a trunk's VLAN.
    trunk_ids: BTreeMap<(String, u16), PortId>,
    /// Changes whose device work is under way with the lock released.
    in_flight: Vec<InFlight>,
    /// The LoadBalancers' backend sets and tables.
    balancers: Balancers,
    /// The datapath's clock (draining deadlines).
    clock: Arc<dyn Clock>,
    /// Changes that took off so far (their tokens).
    flights: u64,
    /// Hub: the runners that registered with this process under its current address plan.
    served: overlay::Served,
}

/// The VTEP's opened sockets and the port id they hold.
#[derive(Debug)]
struct OpenVtep {
    local: std::net::SocketAddr,
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
    io: Arc<crate::tables::snapshot::UplinkIo>,
    mtu: u16,
    /// A bond's monitor (stopped when dropped).
    monitor: Option<port::bond::BondMonitor>,
    /// The members are VLAN trunks now (Subnets are bound to VLANs).
    trunk: bool,
}

impl OpenUplink {
    /// A bond's members' own ids (none for one interface, which uses the uplink's).
    fn member_ids(&self) -> Vec<PortId> {
        if self.io.bond.is_none() {
            return Vec::new();
        }
        self.io.members.iter().map(|m| m.id).collect()
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
            state: Tracked::new(state),
            published_writes: u64::MAX,
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
            vlan_ids: BTreeMap::new(),
            trunk_ids: BTreeMap::new(),
            in_flight: Vec::new(),
            flights: 0,
            served: overlay::Served::default(),
            balancers: Balancers::default(),
            clock: Arc::clone(&clock),
        };
        let workers = engine.workers();
        let mut status_changed = false;
        clean_up_devices_in_flight(&inner.store, &inner.state, workers);
        let names: Vec<String> = inner.state.network_interfaces.keys().cloned().collect();
        for name in names {
            let reopened = attach_request(&inner.state, &name, workers)
                .and_then(|req| reopen_or_create(&req))
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
            let local = std::net::SocketAddr::new(overlay.spec.local_address, overlay.spec.port);
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
            inner.persist(&inner.state)?;
        }
        let controller = Controller {
            published: ArcSwap::from_pointee(Published {
                state: inner.state.clone(),
                port_names: port_names(&inner),
                load_balancers: inner.balancers.live(),
            }),
            inner: Mutex::new(inner),
            engine: RwLock::new(engine),
            settled: Condvar::new(),
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

    /// Plans with `make` once nothing in flight is in the plan's way: while something is,
    /// waits for it to be done and plans again against the state as it is then.
    fn plan_settled(
        &self,
        inner: &mut Locked<'_>,
        make: impl Fn(&State) -> Result<Plan, ApiError>,
    ) -> Result<Plan, ApiError> {
        loop {
            let plan = make(&inner.state)?;
            match inner.blocker(&plan) {
                None => return Ok(plan),
                Some(why) => {
                    tracing::debug!("change waits: {why}");
                    inner.wait_settled(&self.settled);
                }
            }
        }
    }

    /// Waits while `kind`/`name` is part of a change in flight.
    fn wait_not_busy(&self, inner: &mut Locked<'_>, kind: Kind, name: &str) {
        while inner.busy(kind, name) {
            inner.wait_settled(&self.settled);
        }
    }

    /// Ends change `token` and wakes the changes waiting for it.
    fn land(&self, inner: &mut Inner, token: u64) -> Option<InFlight> {
        let flight = inner.land(token);
        self.settled.notify_all();
        flight
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
        self.apply_documents(parse_documents(text)?)
    }

    /// Validates `docs` as one input and applies them, or nothing.
    fn apply_documents(&self, docs: Vec<Document>) -> Result<Vec<AppliedResource>, ApiError> {
        let mut inner = self.lock();
        let plan = self.plan_settled(&mut inner, |state| {
            validate::plan(state, docs.clone(), Mode::Apply)
        })?;
        let applied = plan.applied.clone();
        self.execute(&mut inner, plan)?;
        self.sync_generated_logged(&mut inner);
        Ok(applied)
    }

    /// Applies the documents of several texts (the files of a boot config, each with its
    /// name) as one input: all are validated before any is applied, and if one is wrong
    /// nothing changes. Messages name the file and the document.
    ///
    /// # Errors
    /// [`ApiError`]: every file's parse errors, or the validation errors of the whole.
    pub fn apply_files(
        &self,
        files: &[(String, String)],
    ) -> Result<Vec<AppliedResource>, ApiError> {
        let mut docs = Vec::new();
        let mut errors = Vec::new();
        for (name, text) in files {
            match crate::control::resource::parse_documents_from(Some(name.as_str().into()), text) {
                Ok(parsed) => docs.extend(parsed),
                Err(error) => errors.push(error),
            }
        }
        match ApiError::aggregate(errors) {
            Some(error) => Err(error),
            None => self.apply_documents(docs),
        }
    }

    /// Creates one resource of `kind` from a JSON body; refuses a name that exists (409).
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn create(&self, kind: &str, body: &str) -> Result<serde_json::Value, ApiError> {
        let kind = Kind::parse(kind)?;
        let resource = parse_one(kind, body)?;
        let name = resource.key();
        let doc = Document {
            origin: Origin::resource(kind, &name),
            resource,
        };
        let mut inner = self.lock();
        let plan = self.plan_settled(&mut inner, |state| {
            validate::plan(state, vec![doc.clone()], Mode::Create)
        })?;
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
        self.list_in(kind, None)
    }

    /// Lists resources of `kind` in `namespace` (every namespace when `None`, and for
    /// cluster-wide kinds).
    ///
    /// # Errors
    /// [`ApiError::Invalid`] for an unknown kind.
    pub fn list_in(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let kind = Kind::parse(kind)?;
        let namespace = namespace.filter(|_| kind.is_namespaced());
        let published = self.published.load();
        let live = self.live(&published, kind);
        published
            .state
            .names(kind)
            .into_iter()
            .filter(|key| namespace.is_none_or(|ns| split_key(key).0 == ns))
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

    /// Deletes one resource (for a NetworkInterface: removes the device, releases its IPs).
    ///
    /// # Errors
    /// [`ApiError::NotFound`], or [`ApiError::Conflict`] when others depend on it.
    pub fn delete(&self, kind: &str, name: &str) -> Result<(), ApiError> {
        let kind = Kind::parse(kind)?;
        let mut inner = self.lock();
        self.wait_not_busy(&mut inner, kind, name);
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
    fn delete_locked(
        &self,
        inner: &mut Locked<'_>,
        kind: Kind,
        name: &str,
    ) -> Result<(), ApiError> {
        self.wait_not_busy(inner, kind, name);
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
            Kind::NetworkInterface => self.delete_interface(inner, name)?,
            Kind::Uplink => self.delete_uplink(inner, name)?,
            Kind::Overlay => {
                next.overlays.remove(name);
                inner.persist(&next)?;
                *inner.state = next;
                self.close_vtep(inner);
            }
            Kind::Network
            | Kind::Subnet
            | Kind::Route
            | Kind::NatGateway
            | Kind::PortForward
            | Kind::VirtualIp
            | Kind::LoadBalancer
            | Kind::LoadBalancerRouting
            | Kind::Namespace
            | Kind::NetworkPolicy => {
                next.remove(kind, name);
                if kind == Kind::LoadBalancer {
                    next.remove(Kind::LoadBalancerRouting, name);
                }
                if kind == Kind::Subnet {
                    next.ipam.remove(name);
                }
                inner.persist(&next)?;
                *inner.state = next;
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

    /// Stops the engine. Ports are left in place so a restarted daemon re-opens them.
    pub fn shutdown(&self) {
        self.engine.write().shutdown();
    }
}
