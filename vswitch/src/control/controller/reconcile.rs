//! Carrying out a validated plan on the devices: re-creating and creating interfaces,
//! opening the Uplink and the VTEP, persisting and publishing, and undoing the device work
//! when a step fails; the device work of deletes.
//!
//! A change with device work runs in three steps. Take-off, under the state lock: the
//! change goes into the state (its interfaces `Pending`), its resources are marked in
//! flight, and the snapshot drops the devices it removes. The device work, without the
//! lock: removing, creating and opening devices ([`DeviceWork::run`]), undone there if a
//! step fails. Landing, under the lock again: statuses, port ids, persist, publish; or,
//! after a failure, the resources as they were before.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::compile::publish;
use super::overlay::{initial_overlay_state, install_vtep};
use super::{AttachedPort, Controller, Inner, Locked, OpenUplink, UplinkDevice, UplinkOps};
use crate::control::ApiError;
use crate::control::kinds::subnet::SubnetIpv6;
use crate::control::resource::{
    InterfaceState, Kind, MacAddr, NetworkInterface, Origin, OverlayState,
};
use crate::control::store::{DevicesInFlight, State, Store};
use crate::control::validate::{Plan, UplinkWork};
use crate::control::{nat_rules, overlay};
use crate::port::{self, AttachRequest, MAX_PORTS, PortError, PortId, PortIo};
use crate::runtime::Engine;
use crate::tables::snapshot::{SubnetId, UplinkIo, UplinkMember};

/// How long a removed port's queues may stay in use by workers (finishing a batch on an
/// older snapshot) before the controller stops waiting to close them itself.
const RETIRE_WAIT: Duration = Duration::from_secs(1);

impl Controller {
    /// Carries out a validated plan: re-creates and creates devices, opens the Uplink and
    /// the VTEP, persists, publishes. The device work runs without the state lock (see the
    /// module's documentation). On failure, undoes the device work so that the running state
    /// is as before.
    pub(super) fn execute(&self, inner: &mut Locked<'_>, mut plan: Plan) -> Result<(), ApiError> {
        if !plan.changed {
            return Ok(());
        }
        let workers = self.engine.read().workers();
        let origins = plan.origins.clone();
        let origin_of = |kind: Kind, name: &str| {
            origins
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
        let uplink = match &plan.uplink {
            Some(UplinkWork::Open(name) | UplinkWork::Reopen(name)) => Some(uplink_target(
                inner.uplink_ops,
                &plan.next,
                name,
                &origin_of(Kind::Uplink, name),
            )?),
            None => None,
        };
        // The VTEP: opened with the other devices, swapped in when the change lands.
        let vtep = plan
            .next
            .overlays
            .values()
            .next()
            .map(|o| {
                (
                    origin_of(Kind::Overlay, &o.metadata.name),
                    SocketAddr::new(o.spec.local_address, o.spec.port),
                )
            })
            .filter(|(_, local)| inner.vtep.as_ref().map(|v| v.local) != Some(*local));
        for overlay in plan.next.overlays.values_mut() {
            if vtep.is_some()
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
        let new_ports: Vec<&String> = requests
            .iter()
            .map(|(name, _)| name)
            .filter(|name| !inner.ports.contains_key(*name))
            .collect();
        // A bond's members each need an id besides the uplink's.
        let uplink_ids = uplink
            .as_ref()
            .map_or(0, |target| match target.ifnames.len() {
                1 => 1,
                members => 1 + members,
            });
        let held = inner
            .uplink
            .as_ref()
            .map_or(0, |open| 1 + open.member_ids().len());
        let needed = new_ports.len() + uplink_ids.saturating_sub(held);
        let needed = u64::try_from(needed).unwrap_or(u64::MAX);
        if needed > inner.port_ids.available() {
            return Err(ApiError::Conflict {
                message: format!(
                    "cannot open {needed} more ports: this daemon serves at most {MAX_PORTS} ports (the Uplink counts as one); delete unused NetworkInterfaces first"
                ),
                field: None,
            });
        }

        if requests.is_empty() && uplink.is_none() && vtep.is_none() {
            inner.persist(&plan.next)?;
            *inner.state = plan.next;
            publish(&self.engine.read(), inner);
            return Ok(());
        }

        // Take-off: ids for the new ports (re-created ones keep theirs), the removed ports
        // and a re-opened Uplink out of the snapshot, the change into the state.
        let mut ids: BTreeMap<String, PortId> = BTreeMap::new();
        let mut allocated = Vec::new();
        for name in new_ports {
            // The pre-flight check, under the same lock, made sure there are enough.
            if let Some(id) = inner.port_ids.allocate().map(PortId) {
                ids.insert(name.clone(), id);
                allocated.push(id);
            }
        }
        let mut removals = Vec::new();
        for name in &plan.recreate {
            let port = inner.ports.remove(name).map(|p| (p.id, p.io));
            if let Some((id, _)) = &port {
                ids.insert(name.clone(), *id);
            }
            removals.push(Removal {
                name: name.clone(),
                req: detach_request(&inner.state, name, workers),
                port,
            });
        }
        let old_uplink = if uplink.is_some() {
            inner.uplink.take().map(|open| {
                let target = uplink_target(
                    inner.uplink_ops,
                    &inner.state,
                    &open.name,
                    &Origin::resource(Kind::Uplink, &open.name),
                )
                .ok();
                let closed = ClosedUplink {
                    name: open.name.clone(),
                    id: open.id,
                    segment: open.segment,
                    members: open.member_ids(),
                };
                // The monitor stops first: it writes to the members' bond state.
                drop(open.monitor);
                (closed, open.io, target)
            })
        } else {
            None
        };
        let mut before = BTreeMap::new();
        let touched = plan.origins.keys().cloned().chain(
            plan.recreate
                .iter()
                .map(|name| (Kind::NetworkInterface, name.clone())),
        );
        for (kind, name) in touched {
            let resource = inner.state.resource(kind, &name);
            before.insert((kind, name), resource);
        }
        let subnets: std::collections::BTreeSet<&String> = plan
            .next
            .ipam
            .keys()
            .chain(inner.state.ipam.keys())
            .collect();
        let cursors = subnets
            .into_iter()
            .filter(|subnet| inner.state.ipam.get(*subnet) != plan.next.ipam.get(*subnet))
            .map(|subnet| {
                (
                    subnet.clone(),
                    inner.state.ipam.get(subnet).cloned(),
                    plan.next.ipam.get(subnet).cloned(),
                )
            })
            .collect();
        // The interfaces whose devices are about to be made, on disk first: a daemon killed
        // before the change lands removes them at its next start.
        let devices: DevicesInFlight = requests
            .iter()
            .filter_map(|(name, _)| {
                plan.next
                    .network_interfaces
                    .get(name)
                    .map(|nic| (name.clone(), nic.clone()))
            })
            .collect();
        if !devices.is_empty() {
            inner
                .store
                .save_devices(&inner.devices_in_flight(&devices))?;
        }
        let token = inner.take_off(before, uplink.is_some(), vtep.is_some());
        if let Some(flight) = inner.in_flight.last_mut() {
            flight.cursors = cursors;
            flight.devices = devices;
        }
        *inner.state = plan.next;
        publish(&self.engine.read(), inner);

        // The device work, without the lock.
        let work = DeviceWork {
            removals,
            requests,
            old_uplink,
            uplink,
            vtep,
            workers,
            ops: inner.uplink_ops,
        };
        let outcome = inner.unlocked(|| work.run(&origin_of));

        // Landing.
        let done = match outcome {
            Ok(done) => done,
            Err(undone) => return Err(self.restore(inner, token, &allocated, *undone)),
        };
        for (name, _, io) in &done.created {
            if let Some(nic) = inner.state.network_interfaces.get_mut(name) {
                nic.status.state = InterfaceState::Up;
                nic.status.message = None;
                nic.status.host_ifname.clone_from(&io.host_ifname);
            }
        }
        if let Some((target, _, device)) = &done.uplink {
            let mac = inner
                .state
                .uplinks
                .get(&target.name)
                .map(|u| nat_rules::uplink_mac(&inner.state, u));
            if let Some(uplink) = inner.state.uplinks.get_mut(&target.name) {
                tracing::info!(uplink = %target.name, interfaces = %target.ifnames.join("+"), mtu = device.mtu, "opened the uplink");
                uplink.status.state = InterfaceState::Up;
                uplink.status.message = None;
                uplink.status.mac = mac;
                uplink.status.mtu = Some(device.mtu);
            }
        }
        if let Err(err) = inner.persist_landing(&inner.state, token) {
            let undone = inner.unlocked(|| done.undo(err.into(), workers, &origin_of));
            return Err(self.restore(inner, token, &allocated, undone));
        }
        self.land(inner, token);
        let engine = self.engine.read();
        for (name, _, io) in done.created {
            // Every created port has an id (the pre-flight check reserved them).
            let Some(id) = ids.get(&name).copied() else {
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
        if let Some(old) = done.old_uplink {
            release_uplink_ids(&engine, inner, &old);
        }
        if let Some((target, io, device)) = done.uplink {
            if let Err(err) = install_uplink(&engine, inner, &target.name, io, device) {
                // The pre-flight check reserved room for it.
                tracing::error!(uplink = %target.name, "uplink not published: {err}");
                mark_uplink(
                    &mut inner.state,
                    &target.name,
                    InterfaceState::Lost,
                    Some(err.to_string()),
                );
                if let Err(err) = inner.persist(&inner.state) {
                    tracing::error!("cannot save the state: {err}");
                }
            }
        }
        let old_vtep = match done.vtep {
            Some((local, io)) => {
                let old = inner.vtep.take();
                install_vtep(&engine, inner, local, io);
                old
            }
            None => None,
        };
        publish(&engine, inner);
        drop(engine);
        if let Some(old) = old_vtep {
            self.retire_vtep(inner, old);
        }
        Ok(())
    }

    /// Lands a change whose device work failed and was undone: its resources as they were
    /// before, the re-created ports restored (or `Lost`), the Uplink re-opened (or `Lost`),
    /// the ids it took released. Returns the error to answer with.
    fn restore(
        &self,
        inner: &mut Locked<'_>,
        token: u64,
        allocated: &[PortId],
        undone: Undone,
    ) -> ApiError {
        let engine = self.engine.read();
        if let Some(flight) = inner.land(token) {
            for ((kind, name), before) in flight.before {
                match before {
                    Some(resource) => inner.state.put(resource),
                    None => {
                        inner.state.remove(kind, &name);
                    }
                }
            }
            for (subnet, before, after) in flight.cursors {
                if inner.state.ipam.get(&subnet) == after.as_ref() {
                    match before {
                        Some(cursor) => inner.state.ipam.insert(subnet, cursor),
                        None => inner.state.ipam.remove(&subnet),
                    };
                }
            }
        }
        let subnets: Vec<String> = inner.state.subnets.keys().cloned().collect();
        inner
            .state
            .ipam
            .retain(|subnet, _| subnets.contains(subnet));
        for id in allocated {
            engine.reset_port(*id);
            inner.port_ids.release(id.0);
        }
        let mut lost = false;
        for (name, id, restored) in undone.restored {
            match restored {
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
        if let Some((old, reopened)) = undone.old_uplink {
            release_uplink_ids(&engine, inner, &old);
            let restored = reopened
                .and_then(|(io, device)| install_uplink(&engine, inner, &old.name, io, device));
            if let Err(err) = restored {
                tracing::error!(uplink = %old.name, "rollback: cannot re-open the uplink: {err}; marked lost");
                mark_uplink(
                    &mut inner.state,
                    &old.name,
                    InterfaceState::Lost,
                    Some(format!(
                        "a failed change closed the device and re-opening it failed: {err}; apply the Uplink again"
                    )),
                );
                lost = true;
            }
        }
        if lost {
            if let Err(err) = inner.persist(&inner.state) {
                tracing::error!("cannot save the state after a rollback: {err}");
            }
        }
        publish(&engine, inner);
        self.settled.notify_all();
        undone.error
    }

    /// Closes the Uplink's device (without the lock) and forgets the Uplink.
    pub(super) fn delete_uplink(&self, inner: &mut Locked<'_>, name: &str) -> Result<(), ApiError> {
        let mut next = inner.state.clone();
        next.uplinks.remove(name);
        if let Err(err) = inner.persist(&next) {
            return Err(Origin::resource(Kind::Uplink, name).internal(format!(
                "cannot save the state ({err}); the uplink was left open: retry the delete"
            )));
        }
        *inner.state = next;
        let Some(open) = inner.uplink.take() else {
            publish(&self.engine.read(), inner);
            return Ok(());
        };
        publish(&self.engine.read(), inner);
        let token = inner.take_off(BTreeMap::new(), true, false);
        let close = inner.uplink_ops.close;
        let closed = ClosedUplink {
            name: open.name.clone(),
            id: open.id,
            segment: open.segment,
            members: open.member_ids(),
        };
        let OpenUplink { io, monitor, .. } = open;
        inner.unlocked(move || {
            drop(monitor);
            retire_uplink(io, close);
        });
        release_uplink_ids(&self.engine.read(), inner, &closed);
        self.land(inner, token);
        tracing::info!(uplink = %closed.name, "closed the uplink");
        Ok(())
    }

    /// Removes NetworkInterface `name`'s device (without the lock) and forgets it.
    pub(super) fn delete_interface(
        &self,
        inner: &mut Locked<'_>,
        name: &str,
    ) -> Result<(), ApiError> {
        let workers = self.engine.read().workers();
        let req = detach_request(&inner.state, name, workers);
        let port = inner.ports.remove(name);
        let id = port.as_ref().map(|p| p.id);
        if port.is_some() {
            publish(&self.engine.read(), inner);
        }
        let before = BTreeMap::from([(
            (Kind::NetworkInterface, name.to_string()),
            inner.state.resource(Kind::NetworkInterface, name),
        )]);
        let token = inner.take_off(before, false, false);
        let result = inner.unlocked(|| {
            let io = port.and_then(|p| retire(p.io));
            port::detach(&req, io)
        });
        self.land(inner, token);
        if let Some(id) = id {
            self.engine.read().reset_port(id);
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
        let mut next = inner.state.clone();
        next.network_interfaces.remove(name);
        if let Err(err) = inner.persist(&next) {
            let message = format!(
                "the device was removed but the state could not be saved ({err}); retry the delete"
            );
            mark_lost(inner, name, &message);
            return Err(origin.internal(message));
        }
        *inner.state = next;
        Ok(())
    }
}

/// A device to remove so that it can be created again, and how to put it back.
#[derive(Debug)]
struct Removal {
    name: String,
    /// Its old configuration: removes it, and re-creates it if the change fails.
    req: AttachRequest,
    /// Its port id and queues (none when it was lost).
    port: Option<(PortId, Arc<PortIo>)>,
}

/// A device removed to be re-created: how to put it back, and its port id (none when it
/// was lost).
#[derive(Debug)]
struct Removed {
    name: String,
    req: AttachRequest,
    id: Option<PortId>,
}

/// The ids of an Uplink whose device was closed, to free once the change lands.
#[derive(Debug)]
struct ClosedUplink {
    name: String,
    id: PortId,
    segment: SubnetId,
    /// A bond's members' ids.
    members: Vec<PortId>,
}

/// An uplink's opened member devices, in the Uplink's order: interface, queues, what it
/// reported.
pub(super) type OpenedMembers = Vec<(String, PortIo, UplinkDevice)>;

/// Closes the members an uplink opened.
fn close_members(ops: UplinkOps, members: OpenedMembers) {
    for (_, io, _) in members {
        (ops.close)(io);
    }
}

/// Takes back an uplink's devices once the workers let go of them, and closes each member.
pub(super) fn retire_uplink(io: Arc<UplinkIo>, close: fn(PortIo)) {
    let Some(io) = retire(io) else {
        return;
    };
    for member in io.members {
        if let Some(member) = retire(member.io) {
            close(member);
        }
    }
}

/// What opening an Uplink needs, read from the state under the lock.
#[derive(Debug, Clone)]
pub(super) struct UplinkTarget {
    pub(super) name: String,
    pub(super) ifnames: Vec<String>,
    mac: MacAddr,
    origin: Origin,
}

/// The device work of one change, done without the state lock.
struct DeviceWork {
    removals: Vec<Removal>,
    requests: Vec<(String, AttachRequest)>,
    /// The open Uplink to close first, and how to re-open it if the change fails.
    old_uplink: Option<(ClosedUplink, Arc<UplinkIo>, Option<UplinkTarget>)>,
    uplink: Option<UplinkTarget>,
    vtep: Option<(Origin, SocketAddr)>,
    workers: usize,
    ops: UplinkOps,
}

/// The device work, done.
struct Done {
    created: Vec<(String, AttachRequest, PortIo)>,
    /// The devices removed to be re-created.
    removed: Vec<Removed>,
    /// The closed Uplink (its ids are still held) and how to re-open it.
    old_uplink: Option<ClosedUplink>,
    old_uplink_target: Option<UplinkTarget>,
    uplink: Option<(UplinkTarget, OpenedMembers, UplinkDevice)>,
    vtep: Option<(SocketAddr, port::Vtep)>,
    ops: UplinkOps,
}

/// An Uplink's device re-opened, or why not.
type Reopened = Result<(OpenedMembers, UplinkDevice), ApiError>;

/// The device work, failed and undone: the error, each re-created device restored with its
/// old port id (or why it could not be), and the closed Uplink re-opened (or why not).
struct Undone {
    error: ApiError,
    restored: Vec<(String, PortId, Result<PortIo, String>)>,
    old_uplink: Option<(ClosedUplink, Reopened)>,
}

impl DeviceWork {
    /// Opens the VTEP, removes the devices to re-create, creates the devices, closes and
    /// opens the Uplink; on a failure, undoes what was done.
    fn run(self, origin_of: &dyn Fn(Kind, &str) -> Origin) -> Result<Done, Box<Undone>> {
        let mut done = Done {
            created: Vec::new(),
            removed: Vec::new(),
            old_uplink: None,
            old_uplink_target: None,
            uplink: None,
            vtep: None,
            ops: self.ops,
        };
        if let Some((origin, local)) = &self.vtep {
            match port::vtep::open(*local, self.workers) {
                Ok(io) => done.vtep = Some((*local, io)),
                Err(err) => {
                    let error = origin.invalid(
                        "spec.localAddress",
                        format!("cannot open the VTEP on {local}: {err}"),
                    );
                    return Err(Box::new(done.undo(error, self.workers, origin_of)));
                }
            }
        }
        for Removal { name, req, port } in self.removals {
            let (id, io) = match port {
                Some((id, io)) => (Some(id), retire(io)),
                None => (None, None),
            };
            let result = port::detach(&req, io);
            let lost = id.is_none();
            done.removed.push(Removed {
                name: name.clone(),
                req,
                id,
            });
            match result {
                Ok(()) => {}
                // A lost device may already be gone with its namespace.
                Err(PortError::Gone { .. } | PortError::Netns { .. }) if lost => {}
                Err(err) => {
                    let error = origin_of(Kind::NetworkInterface, &name)
                        .internal(format!("cannot remove the device to re-create it: {err}"));
                    return Err(Box::new(done.undo(error, self.workers, origin_of)));
                }
            }
        }
        for (name, req) in self.requests {
            match port::attach(&req) {
                Ok(io) => {
                    tracing::info!(interface = %name, netns = %req.netns, ifname = %req.ifname, "attached port");
                    done.created.push((name, req, io));
                }
                Err(err) => {
                    let error = port_error(&origin_of(Kind::NetworkInterface, &name), err);
                    return Err(Box::new(done.undo(error, self.workers, origin_of)));
                }
            }
        }
        if let Some((old, io, target)) = self.old_uplink {
            retire_uplink(io, self.ops.close);
            tracing::info!(uplink = %old.name, "closed the uplink");
            done.old_uplink = Some(old);
            done.old_uplink_target = target;
        }
        if let Some(target) = self.uplink {
            match open_uplink_target(self.ops, &target, self.workers) {
                Ok((io, device)) => done.uplink = Some((target, io, device)),
                Err(error) => return Err(Box::new(done.undo(error, self.workers, origin_of))),
            }
        }
        Ok(done)
    }
}

impl Done {
    /// Undoes the device work: removes the devices it created, re-creates the ones it
    /// removed, closes the Uplink it opened and re-opens the one it closed, closes the new
    /// VTEP.
    fn undo(
        self,
        error: ApiError,
        workers: usize,
        origin_of: &dyn Fn(Kind, &str) -> Origin,
    ) -> Undone {
        drop(self.vtep);
        if let Some((target, members, _)) = self.uplink {
            tracing::debug!(uplink = %target.name, "rollback: closing the uplink the failed change opened");
            close_members(self.ops, members);
        }
        for (name, req, io) in self.created.into_iter().rev() {
            if let Err(err) = port::detach(&req, Some(io)) {
                tracing::warn!(interface = %name, "rollback: cannot remove the device created by the failed change: {err}");
            }
        }
        let mut restored = Vec::new();
        for removed in self.removed {
            // A device that was lost before the change stays lost.
            let Some(id) = removed.id else {
                continue;
            };
            let result = port::attach(&removed.req).map_err(|err| {
                tracing::error!(interface = %removed.name, "rollback: cannot restore the device: {err}; marked lost");
                err.to_string()
            });
            restored.push((removed.name, id, result));
        }
        let old_uplink = self.old_uplink.map(|old| {
            let reopened = match &self.old_uplink_target {
                Some(target) => open_uplink_target(self.ops, target, workers),
                None => Err(origin_of(Kind::Uplink, &old.name)
                    .internal("its configuration could not be read again")),
            };
            (old, reopened)
        });
        Undone {
            error,
            restored,
            old_uplink,
        }
    }
}

/// Frees the ids of a closed Uplink.
fn release_uplink_ids(engine: &Engine, inner: &mut Inner, closed: &ClosedUplink) {
    engine.reset_port(closed.id);
    inner.port_ids.release(closed.id.0);
    for id in &closed.members {
        engine.reset_port(*id);
        inner.port_ids.release(id.0);
    }
    inner.subnet_id_pool.release(closed.segment.0);
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

/// What opening Uplink `name` of `state` needs; checks that its interface exists in the
/// daemon's namespace.
///
/// # Errors
/// 400 when the interface does not exist.
pub(super) fn uplink_target(
    ops: UplinkOps,
    state: &State,
    name: &str,
    origin: &Origin,
) -> Result<UplinkTarget, ApiError> {
    let Some(uplink) = state.uplinks.get(name) else {
        return Err(origin.internal(format!("Uplink {name:?} does not exist")));
    };
    let ifnames: Vec<String> = uplink
        .spec
        .members()
        .into_iter()
        .map(str::to_string)
        .collect();
    for (i, ifname) in ifnames.iter().enumerate() {
        if !(ops.exists)(ifname) {
            return Err(origin.invalid(
                &member_field(&uplink.spec, i),
                format!(
                    "interface {ifname} does not exist in vswitchd's network namespace; name an existing host interface (ip link show)"
                ),
            ));
        }
    }
    Ok(UplinkTarget {
        name: name.to_string(),
        ifnames,
        mac: nat_rules::uplink_mac(state, uplink),
        origin: origin.clone(),
    })
}

/// Opens an Uplink's device, with one queue per worker.
///
/// # Errors
/// 400 when the interface does not exist or its own MAC is the one the switch would use; 500
/// when the system refuses.
fn open_uplink_target(
    ops: UplinkOps,
    target: &UplinkTarget,
    workers: usize,
) -> Result<(OpenedMembers, UplinkDevice), ApiError> {
    let (origin, mac) = (&target.origin, target.mac);
    let mut opened: OpenedMembers = Vec::new();
    for (i, ifname) in target.ifnames.iter().enumerate() {
        let field = if target.ifnames.len() == 1 {
            "spec.interface".to_string()
        } else {
            format!("spec.interfaces[{i}]")
        };
        let (io, device) = match (ops.open)(ifname, mac.0, workers) {
            Ok(pair) => pair,
            Err(err) => {
                close_members(ops, opened);
                return Err(uplink_error(origin, &field, ifname, err));
            }
        };
        if device.host_mac == mac.0 {
            (ops.close)(io);
            close_members(ops, opened);
            return Err(origin.invalid(
                "spec.mac",
                format!(
                    "MAC {mac} is {ifname}'s own MAC; the switch needs a MAC of its own on the link or it would take the host's traffic: choose another, or leave mac out to derive one"
                ),
            ));
        }
        opened.push((ifname.clone(), io, device));
    }
    // A bond carries what its smallest member does.
    let device = UplinkDevice {
        mtu: opened.iter().map(|(_, _, d)| d.mtu).min().unwrap_or(1500),
        host_mac: opened.first().map_or([0; 6], |(_, _, d)| d.host_mac),
        ifindex: opened.first().map_or(0, |(_, _, d)| d.ifindex),
    };
    Ok((opened, device))
}

/// The field that names member `i` of `spec`'s interfaces.
fn member_field(spec: &crate::control::kinds::uplink::UplinkSpec, i: usize) -> String {
    if spec.interfaces.is_empty() {
        "spec.interface".to_string()
    } else {
        format!("spec.interfaces[{i}]")
    }
}

/// Opens the device of Uplink `name` as `state` describes it, with one queue per worker.
///
/// # Errors
/// As [`uplink_target`] and [`open_uplink_target`].
pub(super) fn open_uplink(
    inner: &Inner,
    state: &State,
    name: &str,
    workers: usize,
    origin: &Origin,
) -> Result<(OpenedMembers, UplinkDevice), ApiError> {
    let target = uplink_target(inner.uplink_ops, state, name, origin)?;
    open_uplink_target(inner.uplink_ops, &target, workers)
}

/// Maps an uplink device error to the API: what the user can fix (no such interface, not
/// Ethernet, down, the MAC is the interface's own) is a 400 on `spec.interface`; anything
/// else the system's (500).
fn uplink_error(origin: &Origin, field: &str, ifname: &str, err: PortError) -> ApiError {
    let user = match &err {
        PortError::Gone { .. } | PortError::IfnameTaken { .. } => true,
        PortError::Sys { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::ENODEV | libc::ENXIO | libc::ENETDOWN | libc::EINVAL)
        ),
        PortError::Netns { .. } => false,
    };
    if user {
        origin.invalid(field, err)
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
    members: OpenedMembers,
    device: UplinkDevice,
) -> Result<(), ApiError> {
    let bonded = members.len() > 1;
    let wanted = 1 + if bonded { members.len() } else { 0 };
    let full = || ApiError::Conflict {
        message: format!(
            "cannot open the uplink: this daemon serves at most {MAX_PORTS} ports (each bond member counts as one); delete unused NetworkInterfaces first"
        ),
        field: None,
    };
    if inner.port_ids.available() < u64::try_from(wanted).unwrap_or(u64::MAX) {
        close_members(inner.uplink_ops, members);
        return Err(full());
    }
    let Some(segment) = inner.subnet_id_pool.allocate() else {
        close_members(inner.uplink_ops, members);
        return Err(full());
    };
    let Some(id) = inner.port_ids.allocate() else {
        inner.subnet_id_pool.release(segment);
        close_members(inner.uplink_ops, members);
        return Err(full());
    };
    let id = PortId(id);
    engine.reset_port(id);
    let mut opened = Vec::with_capacity(members.len());
    let mut ports = Vec::with_capacity(members.len());
    for (ifname, io, member_device) in members {
        // One interface is the uplink itself; a bond's members are counted each on its own.
        let member_id = if bonded {
            let Some(member_id) = inner.port_ids.allocate().map(PortId) else {
                tracing::error!(uplink = %name, member = %ifname, "no port id left for a bond member");
                (inner.uplink_ops.close)(io);
                continue;
            };
            engine.reset_port(member_id);
            member_id
        } else {
            id
        };
        ports.push(crate::port::bond::MemberPort {
            ifname: ifname.clone(),
            ifindex: member_device.ifindex,
            mac: member_device.host_mac,
        });
        opened.push(UplinkMember {
            id: member_id,
            name: if bonded {
                format!("{name}/{ifname}")
            } else {
                name.to_string()
            },
            ifname,
            ifindex: member_device.ifindex,
            io: Arc::new(io),
        });
    }
    let uplink = inner.state.uplinks.get(name);
    let bond_spec = uplink.and_then(|u| u.spec.bond.clone()).unwrap_or_default();
    let tpid = uplink.map_or(crate::pipeline::tx::TPID_8021Q, |u| {
        u.spec.vlan_protocol.tpid()
    });
    let bond = bonded.then(|| {
        Arc::new(crate::tables::bond::Bond::new(
            bond_spec.mode.mode(),
            opened.len(),
        ))
    });
    let monitor = match (&bond, uplink) {
        (Some(bond), Some(uplink)) => {
            let mac = nat_rules::uplink_mac(&inner.state, uplink).0;
            let lacp = bond_spec.lacp.clone().unwrap_or_default();
            let config = crate::port::bond::BondConfig {
                uplink: name.to_string(),
                primary: bond_spec
                    .primary
                    .as_ref()
                    .and_then(|p| ports.iter().position(|m| &m.ifname == p)),
                members: ports,
                switch_mac: mac,
                lacp: crate::port::bond::LacpSettings {
                    fast: lacp.rate == crate::control::kinds::uplink::LacpRate::Fast,
                    active: lacp.active,
                    system_priority: lacp.system_priority,
                },
                arp: bond_spec
                    .arp_monitor
                    .as_ref()
                    .map(|arp| crate::port::bond::ArpProbes {
                        interval_ms: arp.interval_ms,
                        targets: arp.targets.clone(),
                    }),
                peer_notifications: bond_spec.peer_notifications,
                tpid,
            };
            let announce = super::compile::announcements(&inner.state, uplink);
            match crate::port::bond::BondMonitor::start(
                config,
                Arc::clone(bond),
                engine.clock(),
                engine.event_sink(),
                announce,
            ) {
                Ok(monitor) => Some(monitor),
                Err(error) => {
                    // A bond without its monitor would never carry traffic: not opened.
                    engine.reset_port(id);
                    inner.port_ids.release(id.0);
                    inner.subnet_id_pool.release(segment);
                    for member in opened {
                        if member.id != id {
                            engine.reset_port(member.id);
                            inner.port_ids.release(member.id.0);
                        }
                        if let Ok(io) = Arc::try_unwrap(member.io) {
                            (inner.uplink_ops.close)(io);
                        }
                    }
                    return Err(ApiError::Internal {
                        message: format!(
                            "cannot start the bond monitor of Uplink {name:?} (its LACP and link-state sockets): {error}"
                        ),
                    });
                }
            }
        }
        _ => None,
    };
    inner.uplink = Some(OpenUplink {
        name: name.to_string(),
        id,
        segment: SubnetId(segment),
        io: Arc::new(UplinkIo {
            members: opened,
            bond,
            monitor: monitor.as_ref().map(|m| Arc::clone(&m.shared)),
            tpid,
        }),
        mtu: device.mtu,
        monitor,
        trunk: false,
    });
    Ok(())
}

/// Marks an interface lost in memory (best effort persisted).
fn mark_lost(inner: &mut Inner, name: &str, message: &str) {
    if let Some(nic) = inner.state.network_interfaces.get_mut(name) {
        nic.status.state = InterfaceState::Lost;
        nic.status.message = Some(message.to_string());
    }
    if let Err(err) = inner.persist(&inner.state) {
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
        // Over DHCP the container's own client configures the interface.
        addresses: if nic.spec.dhcp {
            Vec::new()
        } else {
            nic.status.ips.clone()
        },
        gateway: (nic.spec.default_route && !nic.spec.dhcp).then_some(subnet.spec.gateway),
        routes: nic
            .spec
            .routes
            .iter()
            .filter_map(|destination| match destination {
                ipnet::IpNet::V4(v4) => Some((*v4, subnet.spec.gateway)),
                ipnet::IpNet::V6(_) => None,
            })
            .collect(),
        routes6: match (&subnet.spec.ipv6, nic.status.ipv6) {
            (Some(ipv6), Some(_)) if !nic.spec.dhcp => nic
                .spec
                .routes
                .iter()
                .filter_map(|destination| match destination {
                    ipnet::IpNet::V6(v6) => Some((*v6, ipv6.gateway())),
                    ipnet::IpNet::V4(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        address6: nic.status.ipv6.filter(|_| !nic.spec.dhcp),
        gateway6: subnet
            .spec
            .ipv6
            .as_ref()
            .filter(|_| nic.status.ipv6.is_some() && nic.spec.default_route && !nic.spec.dhcp)
            .map(SubnetIpv6::gateway),
        queues: workers,
        resolv_conf: subnet.spec.dns.as_ref().map(|dns| {
            dns.resolv_conf(&format!(
                "{} {:?} (Subnet {:?})",
                crate::port::RESOLV_CONF_HEADER,
                name,
                nic.spec.subnet
            ))
        }),
    })
}

/// A request good enough to remove `name`'s device even when its state is incomplete
/// (removal needs only the name, namespace, ifname and kind).
fn detach_request(state: &State, name: &str, workers: usize) -> AttachRequest {
    if let Ok(req) = attach_request(state, name, workers) {
        return req;
    }
    removal_request(name, state.network_interfaces.get(name), workers)
}

/// Re-opens a port after a restart; when its device is gone but its namespace is still
/// there (the daemon was killed while removing or re-creating it, or someone deleted it),
/// creates it again: the state says the interface exists.
pub(super) fn reopen_or_create(req: &AttachRequest) -> Result<PortIo, String> {
    match port::reopen(req) {
        Ok(io) => Ok(io),
        Err(PortError::Gone { .. }) if req.netns.path().exists() => {
            tracing::warn!(interface = %req.name, netns = %req.netns,
                "the port's device is gone; creating it again");
            port::attach(req).map_err(|err| err.to_string())
        }
        Err(err) => Err(err.to_string()),
    }
}

/// At start: removes the devices a previous run was creating when it stopped, for the
/// interfaces the state file does not hold as planned (their change never landed), then
/// empties `devices.json`.
pub(super) fn clean_up_devices_in_flight(store: &Store, state: &State, workers: usize) {
    let devices = store.load_devices();
    if devices.is_empty() {
        return;
    }
    for (name, planned) in &devices {
        let landed = state.network_interfaces.get(name).is_some_and(|nic| {
            nic.spec.netns == planned.spec.netns
                && nic.spec.ifname == planned.spec.ifname
                && nic.spec.kind == planned.spec.kind
        });
        if landed {
            continue;
        }
        let req = removal_request(name, Some(planned), workers);
        match port::detach(&req, None) {
            Ok(()) => tracing::warn!(interface = %name, netns = %req.netns, ifname = %req.ifname,
                "removed the device of an attach cut short by a stop"),
            Err(PortError::Gone { .. } | PortError::Netns { .. }) => {}
            Err(err) => tracing::warn!(interface = %name,
                "cannot remove the device of an attach cut short by a stop: {err}"),
        }
    }
    if let Err(err) = store.save_devices(&DevicesInFlight::new()) {
        tracing::warn!("cannot empty the list of devices in flight: {err}");
    }
}

/// A request that removes the device of interface `name` (`nic` as it was planned or
/// stored, if known).
fn removal_request(name: &str, nic: Option<&NetworkInterface>, workers: usize) -> AttachRequest {
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
        routes6: Vec::new(),
        address6: None,
        gateway6: None,
        queues: workers,
        resolv_conf: None,
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

/// The conntrack zone (its Network's id) and the addresses (IPv4 and IPv6) of
/// NetworkInterface `name`.
pub(super) fn interface_zone(
    inner: &Inner,
    name: &str,
) -> Option<(nat::Zone, Vec<std::net::IpAddr>)> {
    let nic = inner.state.network_interfaces.get(name)?;
    let subnet = inner.state.subnets.get(&nic.spec.subnet)?;
    let id = inner.network_ids.get(&subnet.spec.network)?;
    let ips = nic
        .status
        .ips
        .iter()
        .map(|ip| std::net::IpAddr::V4(ip.addr()))
        .chain(nic.status.ipv6.map(|ip| std::net::IpAddr::V6(ip.addr())))
        .collect();
    Some((nat::Zone(id.0), ips))
}

/// Removes the connections of zone `zone` from or to `addresses` (the original source, or
/// the reply's source for connections forwarded to them); returns how many.
pub(super) fn forget_connections(
    conntrack: &nat::Conntrack,
    zone: nat::Zone,
    addresses: &[std::net::IpAddr],
    now_ms: u64,
) -> usize {
    let ours = |key: &nat::FlowKey| key.zone == zone && addresses.contains(&key.tuple.src);
    conntrack
        .entries(Some(zone), now_ms)
        .iter()
        .filter(|entry| ours(&entry.original) || ours(&entry.reply))
        .filter(|entry| conntrack.remove(&entry.original))
        .count()
}
