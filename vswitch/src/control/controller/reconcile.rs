//! Carrying out a validated plan on the devices: re-creating and creating interfaces,
//! opening the Uplink, persisting and publishing, and undoing the device work when a step
//! fails; the device work of deletes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::compile::publish;
use super::overlay::{close_vtep, initial_overlay_state, install_vtep};
use super::{AttachedPort, Controller, Inner, OpenUplink, UplinkDevice};
use crate::control::ApiError;
use crate::control::resource::{InterfaceState, Kind, NetworkInterface, Origin, OverlayState};
use crate::control::store::State;
use crate::control::validate::{Plan, UplinkWork};
use crate::control::{nat_rules, overlay};
use crate::port::{self, AttachRequest, MAX_PORTS, PortError, PortId, PortIo};
use crate::runtime::Engine;
use crate::tables::snapshot::SubnetId;

/// How long a removed port's queues may stay in use by workers (finishing a batch on an
/// older snapshot) before the controller stops waiting to close them itself.
const RETIRE_WAIT: Duration = Duration::from_secs(1);

impl Controller {
    /// Carries out a validated plan: re-creates and creates devices, opens the Uplink,
    /// persists, publishes. On failure, undoes the device work so that the running state is
    /// as before.
    pub(super) fn execute(&self, inner: &mut Inner, mut plan: Plan) -> Result<(), ApiError> {
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
                    OverlayState::Up
                        | OverlayState::Registered
                        | OverlayState::Registering
                        | OverlayState::HubUnreachable
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
    pub(super) fn delete_uplink(
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

    pub(super) fn delete_interface(
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
pub(super) fn mark_uplink(
    state: &mut State,
    name: &str,
    to: InterfaceState,
    message: Option<String>,
) {
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
pub(super) fn open_uplink(
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
pub(super) fn install_uplink(
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
pub(super) fn attach_request(
    state: &State,
    name: &str,
    workers: usize,
) -> Result<AttachRequest, String> {
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
            .unwrap_or(crate::control::resource::DEFAULT_MTU),
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

/// Takes back sole ownership of a port's I/O once workers have moved on to a snapshot
/// without it, so `port::detach` can close its queues first. Gives up after
/// [`RETIRE_WAIT`]: the queues then close when the last worker drops them.
pub(super) fn retire<T>(io: Arc<T>) -> Option<T> {
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

/// The conntrack zone (its Network's id) and the addresses of NetworkInterface `name`.
pub(super) fn interface_zone(inner: &Inner, name: &str) -> Option<(nat::Zone, Vec<Ipv4Addr>)> {
    let nic = inner.state.network_interfaces.get(name)?;
    let subnet = inner.state.subnets.get(&nic.spec.subnet)?;
    let id = inner.network_ids.get(&subnet.spec.network)?;
    let ips = nic.status.ips.iter().map(|ip| ip.addr()).collect();
    Some((nat::Zone(id.0), ips))
}

/// Removes the connections of zone `zone` from or to `addresses` (the original source, or
/// the reply's source for connections forwarded to them); returns how many.
pub(super) fn forget_connections(
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
