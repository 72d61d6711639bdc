//! The overlay glue: what the overlay agent (the hub's registration API, a runner's
//! registration loop) needs and calls, the VTEP, and keeping the resources the Overlay
//! generates (see [`crate::control::overlay`]) in step with it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::compile::publish;
use super::reconcile::retire;
use super::shared_store::{
    HubAdmitted, id_share, store_online_commit, stored_runner, touch_served_elsewhere,
};
use super::{Controller, Inner, Locked, OpenVtep};
use crate::control::ApiError;
use crate::control::overlay::{
    self, HubRunner, HubTlsView, HubView, MeshView, OverlayView, RunnerTls, RunnerView, StoreView,
};
use crate::control::overlay_store::StoreCommit;
use crate::control::resource::{
    Document, HubRef, HubTls, Kind, Origin, Overlay, OverlayRole, OverlayState, Resource,
    RunnerToRunner, TlsMode,
};
use crate::control::store::State;
use crate::control::validate::{self, Mode};
use crate::port::{self, PortId};
use crate::runtime::Engine;

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
    pub local_address: IpAddr,
    /// The VXLAN UDP port.
    pub port: u16,
    /// The VNI base.
    pub vni_base: u32,
    /// The overlay MTU.
    pub mtu: u16,
    /// VXLAN remote checksum offload on (the hub and runners must agree).
    pub remote_checksum_offload: bool,
    /// Runner: the hub (address, API port, token).
    pub hub: Option<HubRef>,
    /// Hub: the registration API's TCP port (on `local_address`).
    pub api_port: u16,
    /// Hub: the bearer token runners must present.
    pub token: Option<String>,
    /// Hub: how the registration API is served (TLS from files, TLS with a generated
    /// certificate, or plain HTTP).
    pub hub_tls: HubTlsConfig,
    /// Runner: interval between heartbeats.
    pub heartbeat: Duration,
    /// Hub: silence after which a runner is marked offline.
    pub runner_timeout: Duration,
    /// Hub: the etcd cluster holding the runner registry (`None`: the state directory).
    pub store: Option<crate::control::kinds::overlay::EtcdStoreSpec>,
    /// How frames cross the underlay (the hub and runners must agree).
    pub encapsulation: vxlan::Encapsulation,
    /// Without encapsulation: the switch's routed address on the underlay link (an Uplink
    /// address), which a runner registers with instead of `local_address`.
    pub routed_address: Option<IpAddr>,
}

/// How a hub serves its registration API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTlsConfig {
    /// Plain HTTP (`spec.tls.mode: Disabled`).
    Disabled,
    /// TLS with the configured certificate chain and key (PEM files).
    Files {
        /// `spec.tls.certificateFile`.
        certificate: PathBuf,
        /// `spec.tls.keyFile`.
        key: PathBuf,
    },
    /// TLS with a self-signed certificate generated once and kept in `directory` (under the
    /// state directory).
    Generated {
        /// Where the certificate and key are kept.
        directory: PathBuf,
    },
}

/// The folder of the state directory where a hub keeps its generated certificate.
pub const HUB_TLS_DIRECTORY: &str = "hub-tls";

impl Controller {
    /// The overlay agent's configuration, or `None` without an Overlay.
    pub fn overlay_agent_config(&self) -> Option<OverlayAgentConfig> {
        let inner = self.lock();
        overlay_agent_config(&inner)
    }

    /// Hub: admits a runner's registration (same name, same ID; mismatched settings refused
    /// with a message naming the setting and both values; a name online from another
    /// address, or a static runner's name from another address, refused naming both
    /// addresses), persists the pool, sets up the runner's subnet and returns its plan. A
    /// runner that reads IDs of `width` gets one it can read
    /// ([`vxlan::RunnerPool::register_as`]).
    ///
    /// # Errors
    /// [`ApiError::Invalid`] for a bad or mismatched request, [`ApiError::Conflict`] when
    /// this node is not a hub or the name belongs to another runner (online from another
    /// address, or in `spec.runners` with another address), [`ApiError::Internal`] when the
    /// state cannot be saved.
    ///
    /// Registrations that arrive together share the work: each is admitted (an ID, the pool
    /// in memory) under the lock, which is then released; the first to take it again
    /// generates the resources of every runner admitted so far and saves the state, and
    /// the others, finding their admission covered, answer at once. Each answer is sent
    /// only once its runner's Subnet is set up and saved. (Generating and saving cost in
    /// proportion to the runners already there: one after the other, a fleet coming up
    /// took time in the square of its size.)
    pub fn hub_register(
        &self,
        request: &vxlan::RegistrationRequest,
        width: vxlan::membership::IdWidth,
    ) -> Result<vxlan::RunnerPlan, ApiError> {
        let admitted = self.hub_admit(request, width)?;
        self.hub_settle(admitted.ticket)?;
        Ok(admitted.plan)
    }

    /// The first half of [`Self::hub_register`]: admits the registration in this hub's
    /// runner pool. With a shared store, the admission is answered only once its
    /// [`HubAdmitted::commit`] is recorded there; then (or at once without one)
    /// [`Self::hub_settle`] sets up the runner's Subnet.
    ///
    /// # Errors
    /// Those of [`Self::hub_register`].
    pub fn hub_admit(
        &self,
        request: &vxlan::RegistrationRequest,
        width: vxlan::membership::IdWidth,
    ) -> Result<HubAdmitted, ApiError> {
        let mut inner = self.lock();
        let (mut plan, ticket, commit) = self.hub_admit_locked(&mut inner, request, width)?;
        // Without encapsulation the runner routes the overlay to this hub's routed address.
        let overlay = hub_overlay(&inner.state)?;
        if overlay.spec.encapsulation == vxlan::Encapsulation::None {
            plan.hub_router =
                overlay::routed_address(&inner.state, overlay.spec.local_address).map(IpAddr::V4);
        }
        // A runner asking again while its first admission is not generated yet (its
        // client gave up waiting, or the sync failed) waits for that one too.
        let unsynced = inner.served.pending.get(&request.name).copied();
        Ok(HubAdmitted {
            plan,
            ticket: ticket.or(unsynced),
            commit,
        })
    }

    /// The second half of [`Self::hub_register`]: sets up and saves the generated
    /// resources of every admission up to `ticket` (at once when they are already).
    ///
    /// # Errors
    /// [`ApiError`] when the resources cannot be set up or saved.
    pub fn hub_settle(&self, ticket: Option<u64>) -> Result<(), ApiError> {
        let Some(ticket) = ticket else {
            return Ok(());
        };
        let mut inner = self.lock();
        if inner.served.synced >= ticket {
            return Ok(());
        }
        self.resync_generated(&mut inner)
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

    /// Hub: [`Self::hub_heartbeat`], and the version of the runner list when runners reach
    /// each other directly (`spec.runnerToRunner: Direct`; `None` otherwise).
    ///
    /// # Errors
    /// Those of [`Self::hub_heartbeat`].
    pub fn hub_heartbeat_peers(
        &self,
        name: &str,
    ) -> Result<(vxlan::RunnerId, Option<String>), ApiError> {
        let mut inner = self.lock();
        let id = hub_heartbeat(&mut inner, name, wall_ms())?;
        let overlay = hub_overlay(&inner.state)?;
        let version = (overlay.spec.runner_to_runner == RunnerToRunner::Direct).then(|| {
            let spec = &overlay.spec;
            match &inner.state.runner_pool {
                Some(pool) => pool.peers_version(&spec.address_plan, spec.vni_base),
                None => {
                    vxlan::RunnerPool::default().peers_version(&spec.address_plan, spec.vni_base)
                }
            }
        });
        Ok((id, version))
    }

    /// Hub: every runner of the pool with the plan, for runners that reach each other
    /// directly.
    ///
    /// # Errors
    /// [`ApiError::Conflict`] when this node is not a hub, or its runners reach each other
    /// through it (`spec.runnerToRunner: ViaHub`).
    pub fn hub_peers(&self) -> Result<vxlan::OverlayPeers, ApiError> {
        let inner = self.lock();
        let overlay = hub_overlay(&inner.state)?;
        let spec = &overlay.spec;
        if spec.runner_to_runner != RunnerToRunner::Direct {
            return Err(ApiError::Conflict {
                message: "this hub's runners reach each other through it \
                          (spec.runnerToRunner: ViaHub): there is no runner list to follow"
                    .into(),
                field: Some("spec.runnerToRunner".into()),
            });
        }
        Ok(match &inner.state.runner_pool {
            Some(pool) => pool.peers(&spec.address_plan, spec.vni_base),
            None => vxlan::RunnerPool::default().peers(&spec.address_plan, spec.vni_base),
        })
    }

    /// Runner: the hub's runner list to reach directly (`None`: through the hub); sets up a
    /// copy of each other runner's subnet (or removes them) and persists the list.
    ///
    /// # Errors
    /// [`ApiError`] when this node is not a runner or the copies cannot be set up.
    pub fn runner_peers(&self, peers: Option<vxlan::OverlayPeers>) -> Result<(), ApiError> {
        let mut inner = self.lock();
        let overlay = runner_overlay(&inner.state)?;
        if overlay.status.peers.as_deref() == peers.as_ref() {
            return Ok(());
        }
        let name = overlay.metadata.name.clone();
        let previous = overlay.status.peers.clone();
        // VTEPs of the list that the new one no longer has (a runner gone, or moved): the
        // MACs learned behind them go, or frames would follow them there until they age out.
        let addresses =
            |peers: Option<&vxlan::OverlayPeers>| -> std::collections::BTreeSet<IpAddr> {
                peers
                    .into_iter()
                    .flat_map(|peers| peers.runners.iter().map(|peer| peer.address))
                    .collect()
            };
        let kept = addresses(peers.as_ref());
        let gone: Vec<IpAddr> = addresses(previous.as_deref())
            .difference(&kept)
            .copied()
            .collect();
        let mut next = inner.state.clone();
        if let Some(overlay) = next.overlays.get_mut(&name) {
            overlay.status.peers = peers.clone().map(Box::new);
        }
        inner.persist(&next)?;
        *inner.state = next;
        if let Err(error) = self.sync_generated(&mut inner) {
            // Keep the list that was set up, so that the next heartbeat tries this one again
            // (the agent follows a version only once its copies are set up).
            let mut back = inner.state.clone();
            if let Some(overlay) = back.overlays.get_mut(&name) {
                overlay.status.peers = previous;
            }
            if inner.persist(&back).is_ok() {
                *inner.state = back;
            }
            return Err(error);
        }
        match &peers {
            Some(peers) => tracing::info!(
                runners = peers.runners.len(),
                version = %peers.version,
                "reaching the other runners directly"
            ),
            None => tracing::info!("reaching the other runners through the hub"),
        }
        if !gone.is_empty() {
            let engine = self.engine.read();
            for address in gone {
                let forgotten = engine.forget_remote_vtep(address);
                tracing::debug!(%address, forgotten, "forgot remote MACs behind a runner no longer listed");
            }
        }
        Ok(())
    }

    /// Runner: the version of the runner list it follows (`None`: through the hub).
    pub fn runner_peers_version(&self) -> Option<String> {
        let inner = self.lock();
        let overlay = inner.state.overlays.values().next()?;
        overlay
            .status
            .peers
            .as_ref()
            .map(|peers| peers.version.clone())
    }

    /// Hub: marks offline the runners silent for longer than the Overlay's timeout; answers
    /// their names.
    pub fn hub_sweep(&self) -> Vec<String> {
        let mut inner = self.lock();
        hub_sweep(&mut inner, wall_ms())
    }

    /// Runner: the hub admitted us with `plan`; sets up (or keeps) the overlay subnet,
    /// persists the plan and marks the Overlay `registered`.
    ///
    /// # Errors
    /// [`ApiError`] when the plan cannot be applied (e.g. a name it needs is taken).
    pub fn runner_joined(&self, plan: &vxlan::RunnerPlan, hub: IpAddr) -> Result<(), ApiError> {
        let mut inner = self.lock();
        self.runner_joined_locked(&mut inner, plan, hub)
    }

    /// Hub: records how the registration API is served: the fingerprint of its certificate
    /// (`None` without TLS) and, when not secure or not serving, why.
    pub fn hub_api_status(&self, fingerprint: Option<String>, message: Option<String>) {
        let mut inner = self.lock();
        let Some(overlay) = hub_overlay_mut(&mut inner.state) else {
            return;
        };
        overlay.status.tls_fingerprint = fingerprint;
        overlay.status.message = message;
    }

    /// Hub: the underlay addresses of every runner it has given an ID (online or not) and of
    /// its static runners: the peers whose connections the registration API serves from its
    /// reserved pool.
    pub fn hub_runner_addresses(&self) -> std::collections::HashSet<std::net::IpAddr> {
        let inner = self.lock();
        let Ok(overlay) = hub_overlay(&inner.state) else {
            return Default::default();
        };
        let statics = overlay.spec.runners.iter().map(|runner| runner.address);
        inner
            .state
            .runner_pool
            .iter()
            .flat_map(vxlan::RunnerPool::runners)
            .map(|runner| runner.address.to_canonical())
            .chain(statics)
            .collect()
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
    pub fn overlay_view(&self) -> Result<OverlayView, ApiError> {
        let inner = self.lock();
        overlay_view(&inner, wall_ms())
    }
}

impl Controller {
    /// [`Self::sync_generated`], logging (not returning) a failure: the user's change is
    /// already committed; the Overlay's status says what went wrong.
    pub(super) fn sync_generated_logged(&self, inner: &mut Locked<'_>) {
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
    pub(super) fn sync_generated(&self, inner: &mut Locked<'_>) -> Result<(), ApiError> {
        register_static_runners(inner)?;
        let wanted = {
            let served = &inner.served;
            overlay::owned_resources_serving(&inner.state, &|name| served.serves_elsewhere(name))
        };
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
        let docs: Vec<Document> = wanted
            .into_iter()
            .map(|resource| Document {
                origin: Origin::resource(resource.kind(), resource.name()),
                resource,
            })
            .collect();
        let plan = self.plan_settled(inner, |state| {
            validate::plan(state, docs.clone(), Mode::Generated)
        })?;
        self.execute(inner, plan)
    }

    /// Admits a registration: the plan to answer, and when the generated resources must
    /// change for it, its ticket (see [`Controller::hub_register`]).
    fn hub_admit_locked(
        &self,
        inner: &mut Locked<'_>,
        request: &vxlan::RegistrationRequest,
        width: vxlan::membership::IdWidth,
    ) -> Result<(vxlan::RunnerPlan, Option<u64>, Option<StoreCommit>), ApiError> {
        let overlay = hub_overlay(&inner.state)?.clone();
        if let Some(problem) =
            overlay::registration_problem(request.local_address, overlay.spec.local_address)
        {
            return Err(ApiError::Invalid {
                message: format!(
                    "registration of runner {:?} refused: {problem}",
                    request.name
                ),
                field: None,
            });
        }
        // A static runner's name is the hub's configuration: it never moves by registration
        // (whether or not the hub has marked it online yet).
        if let Some(fixed) = overlay.spec.runners.iter().find(|r| r.name == request.name)
            && request.local_address.to_canonical() != fixed.address.to_canonical()
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
        // With a shared store, the hub serving the runner that holds the name.
        let serving = inner
            .served
            .online
            .get(&request.name)
            .filter(|hub| Some(*hub) != inner.served.store_me.as_ref())
            .map(|hub| format!(" (it is served by hub {hub})"))
            .unwrap_or_default();
        let refused = |err: vxlan::MembershipError| match err {
            // Two nodes with one name: a conflict with the runner holding it.
            vxlan::MembershipError::NameOnlineElsewhere { .. } => ApiError::Conflict {
                message: format!("{err}{serving}"),
                field: None,
            },
            err => ApiError::Invalid {
                message: format!("registration of runner {:?} refused: {err}", request.name),
                field: None,
            },
        };
        if let Some(plan) = reconnect(inner, &overlay, request, width).map_err(refused)? {
            // Served here now: the store says so unless it already does.
            let commit = store_online_commit(inner, &request.name);
            return Ok((plan, None, commit));
        }
        fold_heartbeats(inner);
        let mut pool = sized_pool(&inner.state, &overlay)?;
        let timeout_ms = overlay.spec.runner_timeout_seconds.saturating_mul(1000);
        let admission = pool
            .admit_with(
                &overlay::settings(&overlay),
                &overlay.spec.address_plan,
                request,
                wall_ms(),
                timeout_ms,
                width,
                id_share(inner),
            )
            .map_err(refused)?;
        // A new runner is a new Subnet, and its tunnel a port: refuse it rather than admit a
        // runner whose Subnet would get no tunnel (a reclaimed ID reuses its runner's port).
        if matches!(
            admission.registration.outcome,
            vxlan::membership::RegistrationOutcome::Assigned
        ) && inner.vtep.is_some()
            && overlay.spec.encapsulation.is_vxlan()
            && inner.port_ids.available() <= runners_without_tunnel(inner)
        {
            return Err(ApiError::Conflict {
                message: format!(
                    "registration of runner {:?} refused: this hub has no port left for its \
                     tunnel (a vswitchd serves at most {} ports, one per runner, interface \
                     and uplink, and {} runners are registered); serve more runners from \
                     another hub, or remove runners that are gone",
                    request.name,
                    crate::port::MAX_PORTS,
                    pool.len() - 1
                ),
                field: None,
            });
        }
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
        let router = hub_router(&inner.state);
        inner
            .served
            .under(overlay.spec.address_plan, router)
            .insert(request.name.clone());
        // In place: a copy of the whole state per registration was a tenth of its cost with
        // a thousand runners. Saved with the generated resources, before the answer.
        let commit = inner.served.store_me.as_ref().and_then(|_| {
            let runner = stored_runner(pool.get(&request.name)?);
            Some(match &admission.registration.outcome {
                vxlan::membership::RegistrationOutcome::Assigned => StoreCommit::Assign(runner),
                vxlan::membership::RegistrationOutcome::Reconnected {
                    previous_address: Some(_),
                } => StoreCommit::Move(runner),
                vxlan::membership::RegistrationOutcome::Reconnected {
                    previous_address: None,
                } => StoreCommit::Online(runner),
                vxlan::membership::RegistrationOutcome::Reclaimed { evicted } => {
                    StoreCommit::Reclaim {
                        runner,
                        evicted: evicted.name.clone(),
                    }
                }
            })
        });
        inner.state.runner_pool = Some(pool);
        if let Some(StoreCommit::Assign(runner) | StoreCommit::Reclaim { runner, .. }) = &commit {
            inner
                .served
                .uncommitted
                .insert(runner.name.clone(), runner.id);
        }
        if !changed {
            // A reconnect: only last-seen changed, which is not worth a disk write.
            return Ok((admission.plan, None, commit));
        }
        inner.served.admitted += 1;
        let ticket = inner.served.admitted;
        inner.served.pending.insert(request.name.clone(), ticket);
        Ok((admission.plan, Some(ticket), commit))
    }

    fn runner_joined_locked(
        &self,
        inner: &mut Locked<'_>,
        plan: &vxlan::RunnerPlan,
        hub: IpAddr,
    ) -> Result<(), ApiError> {
        let overlay = runner_overlay(&inner.state)?;
        let name = overlay.metadata.name.clone();
        let previous_hub = overlay::runner_hub(overlay);
        let moved = previous_hub.is_some_and(|previous| previous != hub);
        let same = overlay.status.plan.as_deref() == Some(plan) && !moved;
        let mut next = inner.state.clone();
        if let Some(overlay) = next.overlays.get_mut(&name) {
            overlay.status.hub_address = Some(hub);
            overlay.status.plan = Some(Box::new(plan.clone()));
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
        inner.persist(&next)?;
        *inner.state = next;
        if let (true, Some(previous)) = (moved, previous_hub) {
            tracing::info!(from = %previous, to = %hub, "this runner is served by another hub now");
            let forgotten = self.engine.read().forget_remote_vtep(previous);
            tracing::debug!(%previous, forgotten, "forgot remote MACs behind the previous hub");
        }
        if !same {
            self.sync_generated(inner)?;
        }
        Ok(())
    }
}

/// The Overlay's state right after its VTEP opened: a runner registers, the others are up.
pub(super) fn initial_overlay_state(overlay: &Overlay) -> OverlayState {
    match overlay.spec.role {
        OverlayRole::Runner => OverlayState::Registering,
        OverlayRole::Mesh | OverlayRole::Hub => OverlayState::Up,
    }
}

/// Gives the opened VTEP a port id and keeps it (published by the caller).
pub(super) fn install_vtep(
    engine: &Engine,
    inner: &mut Inner,
    local: std::net::SocketAddr,
    io: port::Vtep,
) {
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

impl Controller {
    /// Closes the VTEP: a snapshot without it, then (without the state lock) waits for the
    /// workers to let go of it, then frees its port id and the tunnels'.
    pub(super) fn close_vtep(&self, inner: &mut Locked<'_>) {
        let Some(vtep) = inner.vtep.take() else {
            return;
        };
        publish(&self.engine.read(), inner);
        self.retire_vtep(inner, vtep);
    }

    /// Waits (without the state lock) for the workers to let go of a VTEP taken out of the
    /// snapshot, closes it, and frees its port id.
    pub(super) fn retire_vtep(&self, inner: &mut Locked<'_>, vtep: OpenVtep) {
        let token = inner.take_off(BTreeMap::new(), false, true);
        let OpenVtep { local, id, io } = vtep;
        inner.unlocked(|| drop(retire(io)));
        self.engine.read().reset_port(id);
        inner.port_ids.release(id.0);
        self.land(inner, token);
        tracing::info!(%local, "closed the VTEP");
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

/// The hub's Overlay, to change its status; `None` when this node is not a hub.
pub(super) fn hub_overlay_mut(state: &mut State) -> Option<&mut Overlay> {
    state
        .overlays
        .values_mut()
        .next()
        .filter(|o| o.spec.role == OverlayRole::Hub)
}

/// The hub's Overlay, or a conflict.
/// The node's Overlay when it is a runner.
fn runner_overlay(state: &State) -> Result<&Overlay, ApiError> {
    state
        .overlays
        .values()
        .next()
        .filter(|o| o.spec.role == OverlayRole::Runner)
        .ok_or_else(|| ApiError::Conflict {
            message: "this node is not an overlay runner".into(),
            field: None,
        })
}

pub(super) fn hub_overlay(state: &State) -> Result<&Overlay, ApiError> {
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

/// The hub's runner pool (a new one before the first runner) with as many IDs as its
/// Overlay's address plan has runner subnets: 255 for the default plan, 4,095 for a /20 per
/// runner out of a /8, 15 for a /16 out of a /12.
///
/// # Errors
/// [`ApiError::Invalid`] (`spec.addressPlan`) when the plan is invalid or no longer has a
/// subnet for an ID a runner holds (remove that runner first).
pub(super) fn sized_pool(state: &State, overlay: &Overlay) -> Result<vxlan::RunnerPool, ApiError> {
    let max = overlay
        .spec
        .address_plan
        .max_runners(overlay.spec.vni_base)
        .map_err(|err| ApiError::invalid("spec.addressPlan", err.to_string()))?;
    let mut pool = state
        .runner_pool
        .clone()
        .unwrap_or_else(|| vxlan::RunnerPool::new(max));
    if pool.capacity() != max {
        pool.set_capacity(max)
            .map_err(|err| ApiError::invalid("spec.addressPlan", err.to_string()))?;
    }
    Ok(pool)
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
    let mut pool = sized_pool(&inner.state, overlay)?;
    let mut changed = false;
    let now = wall_ms();
    for runner in &runners {
        let address = runner.address;
        if pool.get(&runner.name).map(|r| r.address) != Some(address) {
            pool.register(&runner.name, address, now)
                .map_err(|err| ApiError::invalid("spec.runners", err.to_string()))?;
            changed = true;
        }
    }
    if changed {
        let mut next = inner.state.clone();
        next.runner_pool = Some(pool);
        inner.persist(&next)?;
        *inner.state = next;
    }
    Ok(())
}

/// Refuses to delete the Overlay while users' interfaces sit on its generated subnets.
pub(super) fn check_overlay_delete(state: &State) -> Result<(), ApiError> {
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
    let routed_address = (spec.encapsulation == vxlan::Encapsulation::None)
        .then(|| overlay::routed_address(&inner.state, spec.local_address))
        .flatten()
        .map(IpAddr::V4);
    // The routed address too: a runner registers with it, so a change (the Uplink's
    // addresses) registers it again.
    let text = format!(
        "{}{routed_address:?}",
        serde_json::to_string(spec).unwrap_or_default()
    );
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
        mtu: spec.mtu(),
        remote_checksum_offload: spec.remote_checksum_offload,
        hub: spec.hub.clone(),
        api_port: spec.api_port,
        token: spec.token.clone(),
        hub_tls: match &spec.tls {
            Some(tls) if tls.mode == TlsMode::Disabled => HubTlsConfig::Disabled,
            Some(HubTls {
                certificate_file: Some(certificate),
                key_file: Some(key),
                ..
            }) => HubTlsConfig::Files {
                certificate: PathBuf::from(certificate),
                key: PathBuf::from(key),
            },
            _ => HubTlsConfig::Generated {
                directory: inner.store.dir().join(HUB_TLS_DIRECTORY),
            },
        },
        heartbeat: Duration::from_secs(spec.heartbeat_seconds),
        runner_timeout: Duration::from_secs(spec.runner_timeout_seconds),
        store: spec.store.as_ref().and_then(|store| store.etcd.clone()),
        encapsulation: spec.encapsulation,
        routed_address,
    })
}

/// Hub: the runners that registered with this process under the address plan it serves now.
/// A runner's plan comes only with its registration, and a heartbeat answers only its ID: a
/// heartbeat from a runner outside this set is answered 404, which makes the runner register
/// again (keeping its ID) and so learn a changed plan (IPv6 added, say). After a hub restart
/// every runner registers once more.
#[derive(Debug, Default)]
pub(super) struct Served {
    pub(super) plan: Option<vxlan::AddressPlan>,
    /// Without encapsulation: the hub's routed address the runners in `runners` were given.
    pub(super) router: Option<IpAddr>,
    pub(super) runners: std::collections::BTreeSet<String>,
    /// Heartbeats not yet recorded in the runner pool: runner -> when (wall ms). A heartbeat
    /// only notes the time here; [`fold_heartbeats`] writes them into the pool (part of the
    /// state) once per sweep and before a registration. Writing the pool at each heartbeat
    /// made every heartbeat compare and copy the whole state for readers: 2 ms each with
    /// 1,000 runners, 21% of a core for their 100 heartbeats per second.
    pub(super) seen: std::collections::HashMap<String, u64>,
    /// Registrations admitted that changed the generated resources, counted.
    pub(super) admitted: u64,
    /// How many of those the generated resources and the saved state include.
    pub(super) synced: u64,
    /// Runners admitted whose generated resources are not set up and saved yet, with the
    /// ticket of their admission.
    pub(super) pending: std::collections::HashMap<String, u64>,
    /// Registrations generated resources since the last sweep: the sweep gives the memory
    /// their copies took back to the kernel.
    pub(super) trim_due: bool,
    /// With a shared store ([`crate::control::overlay_store`]): this hub's name there (its
    /// `localAddress`); `None` with the local store.
    pub(super) store_me: Option<String>,
    /// With a shared store: the revision of its last whole read.
    pub(super) store_revision: i64,
    /// With a shared store: which hub serves each online runner, as the store says.
    pub(super) online: std::collections::HashMap<String, String>,
    /// With a shared store: the hubs holding a lease there (this one's place among them
    /// gives its share of new IDs, [`vxlan::membership::IdShare`]).
    pub(super) hubs: std::collections::BTreeSet<String>,
    /// With a shared store: runners admitted here whose commit the store has not confirmed
    /// yet (name -> ID). Reading the store again keeps them while their ID and name are
    /// free there, so that one failed commit does not undo the others in flight.
    pub(super) uncommitted: std::collections::HashMap<String, u32>,
}

impl Served {
    /// Whether the shared store says another hub serves runner `name`.
    pub(super) fn serves_elsewhere(&self, name: &str) -> bool {
        self.store_me
            .as_ref()
            .is_some_and(|me| self.online.get(name).is_some_and(|hub| hub != me))
    }

    /// The runners another hub serves (the generated Subnets depend on them).
    pub(super) fn elsewhere(&self) -> std::collections::BTreeSet<String> {
        self.online
            .keys()
            .filter(|name| self.serves_elsewhere(name))
            .cloned()
            .collect()
    }

    /// The runners served under `plan` (forgotten when the plan changed).
    /// The runners registered under `plan` and, without encapsulation, the hub's routed
    /// address `router` (which a runner learns only with its plan): a change of either
    /// makes every runner register again.
    fn under(
        &mut self,
        plan: vxlan::AddressPlan,
        router: Option<IpAddr>,
    ) -> &mut std::collections::BTreeSet<String> {
        if self.plan != Some(plan) || self.router != router {
            self.plan = Some(plan);
            self.router = router;
            self.runners.clear();
        }
        &mut self.runners
    }
}

fn hub_heartbeat(inner: &mut Inner, name: &str, now_ms: u64) -> Result<vxlan::RunnerId, ApiError> {
    let plan = hub_overlay(&inner.state)?.spec.address_plan;
    let router = hub_router(&inner.state);
    let not_found = || ApiError::NotFound {
        kind: "Runner".into(),
        name: name.into(),
    };
    if !inner.served.under(plan, router).contains(name) {
        tracing::info!(runner = %name, "heartbeat from a runner not registered under the current address plan: asking it to register again");
        return Err(not_found());
    }
    // Read only: the state is not written (see `Served::seen`).
    let id = inner
        .state
        .runner_pool
        .as_ref()
        .and_then(|pool| pool.get(name))
        .map(|runner| runner.id)
        .ok_or_else(not_found)?;
    inner.served.seen.insert(name.to_owned(), now_ms);
    Ok(id)
}

/// A hub without encapsulation: its routed address, the runners' next hop to the overlay.
fn hub_router(state: &State) -> Option<IpAddr> {
    let overlay = hub_overlay(state).ok()?;
    if overlay.spec.encapsulation != vxlan::Encapsulation::None {
        return None;
    }
    overlay::routed_address(state, overlay.spec.local_address).map(IpAddr::V4)
}

/// How many runners of the pool have no tunnel port yet (admitted, not yet generated): the
/// ports a new runner must leave them.
fn runners_without_tunnel(inner: &Inner) -> u64 {
    let Some(pool) = inner.state.runner_pool.as_ref() else {
        return 0;
    };
    let without = pool
        .runners()
        .filter(|runner| {
            !inner
                .tunnel_ids
                .contains_key(&overlay::runner_subnet_name(runner.id.get()))
        })
        .count();
    u64::try_from(without).unwrap_or(u64::MAX)
}

/// A registration from the address that already holds its name's ID, under a pool sized
/// to the plan (every runner after a hub restart): the answer is its plan, and nothing
/// changes but when it was seen, noted like a heartbeat. `None` for any other registration
/// (a new name, another address, a pool to resize), which goes through
/// [`vxlan::RunnerPool::admit`]. Without this, the thousands of runners registering again
/// after a restart each copied the pool and wrote the state, one after the other.
///
/// # Errors
/// Those of [`vxlan::membership::validate_registration`] and of the plan.
fn reconnect(
    inner: &mut Inner,
    overlay: &Overlay,
    request: &vxlan::RegistrationRequest,
    width: vxlan::membership::IdWidth,
) -> Result<Option<vxlan::RunnerPlan>, vxlan::MembershipError> {
    let spec = &overlay.spec;
    let Some(pool) = inner.state.runner_pool.as_ref() else {
        return Ok(None);
    };
    let Some(runner) = pool.get(&request.name) else {
        return Ok(None);
    };
    let fits = width.max().is_none_or(|max| runner.id <= max);
    let same_address = runner.address.to_canonical() == request.local_address.to_canonical();
    if !fits || !same_address || spec.address_plan.max_runners(spec.vni_base)? != pool.capacity() {
        return Ok(None);
    }
    vxlan::membership::validate_registration(&overlay::settings(overlay), request)?;
    let plan = spec.address_plan.runner(runner.id, spec.vni_base)?;
    let router = hub_router(&inner.state);
    inner
        .served
        .under(spec.address_plan, router)
        .insert(request.name.clone());
    inner.served.seen.insert(request.name.clone(), wall_ms());
    tracing::debug!(runner = %request.name, id = %plan.runner_id, "runner registered again");
    Ok(Some(plan))
}

/// Records the heartbeats noted since the last call in the runner pool (marking those
/// runners online, seen then).
pub(super) fn fold_heartbeats(inner: &mut Inner) {
    if inner.served.seen.is_empty() {
        return;
    }
    let seen = std::mem::take(&mut inner.served.seen);
    let Some(pool) = inner.state.runner_pool.as_mut() else {
        return;
    };
    for (name, at) in seen {
        // A runner removed or evicted since its heartbeat is not in the pool any more.
        let _ = pool.touch(&name, at);
    }
}

fn hub_sweep(inner: &mut Inner, now_ms: u64) -> Vec<String> {
    let Ok(overlay) = hub_overlay(&inner.state) else {
        return Vec::new();
    };
    if std::mem::take(&mut inner.served.trim_due) {
        // At most once a second, after registrations: 4,000 runners brought up left 510 MiB
        // resident, of which a restarted hub needs 96.
        crate::sys::memory::trim_heap();
    }
    let timeout = overlay.spec.runner_timeout_seconds.saturating_mul(1000);
    let statics: Vec<String> = overlay
        .spec
        .runners
        .iter()
        .map(|r| r.name.clone())
        .collect();
    fold_heartbeats(inner);
    touch_served_elsewhere(inner, now_ms);
    let Some(pool) = inner.state.runner_pool.as_mut() else {
        return Vec::new();
    };
    for name in &statics {
        let _ = pool.touch(name, now_ms);
    }
    let offline = pool.mark_offline(now_ms, timeout);
    offline
        .into_iter()
        .filter_map(|id| {
            let name = pool.get_by_id(id)?.name.clone();
            tracing::warn!(runner = %name, %id, "runner marked offline: no heartbeat within the timeout");
            Some(name)
        })
        .collect()
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
        if let Err(err) = inner.persist(&inner.state) {
            tracing::warn!("cannot save the overlay's state: {err}");
        }
    }
}

fn overlay_view(inner: &Inner, now_ms: u64) -> Result<OverlayView, ApiError> {
    let Some(overlay) = inner.state.overlays.values().next() else {
        return Err(ApiError::NotFound {
            kind: "Overlay".into(),
            name: "(this node's)".into(),
        });
    };
    let spec = &overlay.spec;
    let routed = (spec.encapsulation == vxlan::Encapsulation::None)
        .then(|| overlay::routed_address(&inner.state, spec.local_address))
        .flatten();
    let view = match spec.role {
        OverlayRole::Mesh => OverlayView::Mesh(MeshView {
            name: overlay.metadata.name.clone(),
            local_address: spec.local_address,
            peers: spec.peers.clone(),
            state: overlay.status.state,
            message: overlay.status.message.clone(),
        }),
        OverlayRole::Hub => {
            let plan = &spec.address_plan;
            let runners = inner
                .state
                .runner_pool
                .iter()
                .flat_map(vxlan::RunnerPool::runners)
                .map(|runner| {
                    let runner_plan = plan.runner(runner.id, spec.vni_base).ok();
                    // A heartbeat not yet folded into the pool counts as it will be.
                    let pending = inner.served.seen.get(&runner.name).copied();
                    let last_seen =
                        pending.map_or(runner.last_seen_ms, |at| at.max(runner.last_seen_ms));
                    let state = if pending.is_some() {
                        vxlan::membership::RunnerState::Online
                    } else {
                        runner.state
                    };
                    HubRunner {
                        id: runner.id.get(),
                        name: runner.name.clone(),
                        address: runner.address,
                        vni: runner_plan.as_ref().map(|p| u32::from(p.vni)),
                        subnet: runner_plan.as_ref().map(|p| p.subnet),
                        subnet6: runner_plan
                            .as_ref()
                            .and_then(|p| p.ipv6.map(|six| six.subnet)),
                        last_seen_seconds_ago: now_ms.saturating_sub(last_seen) / 1000,
                        state,
                        hub: inner.served.online.get(&runner.name).cloned(),
                    }
                })
                .collect();
            OverlayView::Hub(HubView {
                name: overlay.metadata.name.clone(),
                local_address: spec.local_address,
                runner_to_runner: spec.runner_to_runner,
                encapsulation: spec.encapsulation,
                routed_address: routed,
                hub_address: plan.hub_interface(),
                state: overlay.status.state,
                message: overlay.status.message.clone(),
                tls: HubTlsView {
                    enabled: spec
                        .tls
                        .as_ref()
                        .is_none_or(|tls| tls.mode == TlsMode::Enabled),
                    fingerprint: overlay.status.tls_fingerprint.clone(),
                    generated: spec
                        .tls
                        .as_ref()
                        .is_none_or(|tls| tls.certificate_file.is_none()),
                },
                store: spec
                    .store
                    .as_ref()
                    .and_then(|store| store.etcd.as_ref())
                    .map(|etcd| StoreView {
                        etcd: etcd.endpoints.clone(),
                        prefix: etcd.prefix.clone(),
                        ready: inner.served.store_me.is_some()
                            && overlay.status.store_message.is_none(),
                        message: overlay.status.store_message.clone(),
                    }),
                runners,
            })
        }
        OverlayRole::Runner => {
            let plan = overlay.status.plan.as_deref();
            OverlayView::Runner(RunnerView {
                name: overlay.metadata.name.clone(),
                local_address: spec.local_address,
                id: plan.map(|p| p.runner_id.get()),
                vni: plan.map(|p| u32::from(p.vni)),
                subnet: plan.map(|p| p.subnet),
                gateway: plan.map(|p| p.gateway),
                subnet6: plan.and_then(|p| p.ipv6.map(|six| six.subnet)),
                hub: spec.hub.as_ref().and_then(|h| {
                    let serving = overlay::runner_hub(overlay)?;
                    h.all()
                        .into_iter()
                        .find(|(address, _, _)| *address == serving)
                        .map(|(address, port, _)| SocketAddr::new(address, port))
                }),
                tls: spec.hub.as_ref().map(|hub| match &hub.tls {
                    Some(tls) if tls.mode == TlsMode::Disabled => RunnerTls::Disabled,
                    Some(tls) if tls.ca_file.is_some() => RunnerTls::CaFile,
                    _ => RunnerTls::Fingerprint,
                }),
                state: overlay.status.state,
                message: overlay.status.message.clone(),
                last_contact: overlay.status.last_contact,
                direct_peers: overlay.status.peers.as_ref().map(|_| {
                    let copies = inner.state.subnets.iter().filter(|(name, subnet)| {
                        name.starts_with("overlay-r") && overlay::is_owned(&subnet.metadata)
                    });
                    // Without encapsulation: a Route to each.
                    let routes = inner.state.routes.iter().filter(|(name, route)| {
                        name.starts_with("overlay-r") && overlay::is_owned(&route.metadata)
                    });
                    copies.count() + routes.count()
                }),
                encapsulation: spec.encapsulation,
                routed_address: routed,
            })
        }
    };
    Ok(view)
}

/// Milliseconds since the Unix epoch: the runner pool's clock (it must survive restarts,
/// unlike the datapath's monotonic clock).
pub(super) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::control::testing::{overlay_of, state_with};

    /// The hub's pool has as many IDs as its plan has runner subnets: 15 for a /16 per
    /// runner out of a /12 (a pool of the default 255 would refuse every registration
    /// there), 4,095 for a /20 out of a /8; shrinking below a held ID is refused.
    #[test]
    fn the_pool_is_sized_to_the_plan() {
        let mut hub = overlay_of(OverlayRole::Hub);
        let state = state_with(hub.clone());
        assert_eq!(sized_pool(&state, &hub).unwrap().capacity().get(), 255);

        hub.spec.address_plan = vxlan::AddressPlan {
            overlay: "10.16.0.0/12".parse().unwrap(),
            hub_address: Ipv4Addr::new(10, 16, 0, 1),
            ..vxlan::AddressPlan::default()
        };
        let mut state = state_with(hub.clone());
        let mut pool = sized_pool(&state, &hub).unwrap();
        assert_eq!(pool.capacity().get(), 15);
        let request = vxlan::RegistrationRequest {
            encapsulation: vxlan::Encapsulation::Vxlan,
            name: "r1".into(),
            local_address: "192.168.50.2".parse().unwrap(),
            vni_base: hub.spec.vni_base,
            port: hub.spec.port,
            mtu: hub.spec.mtu(),
            remote_checksum_offload: false,
        };
        let admission = pool
            .admit(
                &overlay::settings(&hub),
                &hub.spec.address_plan,
                &request,
                1,
                20_000,
                vxlan::membership::IdWidth::Wide,
            )
            .expect("admitted under a 15-runner plan");
        assert_eq!(admission.plan.subnet.to_string(), "10.17.0.0/16");

        hub.spec.address_plan = vxlan::AddressPlan {
            runner_prefix_len: 20,
            hub_host: 4094,
            ..vxlan::AddressPlan::default()
        };
        state.runner_pool = Some(pool);
        let wide = sized_pool(&state, &hub).unwrap();
        assert_eq!(wide.capacity().get(), 4095);
        assert_eq!(
            wide.get("r1").map(|r| r.id.get()),
            Some(1),
            "the pool is kept"
        );

        let mut held = wide;
        for n in 2..=20 {
            held.register(&format!("r{n}"), "192.168.50.3".parse().unwrap(), 2)
                .unwrap();
        }
        state.runner_pool = Some(held);
        hub.spec.address_plan = vxlan::AddressPlan {
            overlay: "10.16.0.0/12".parse().unwrap(),
            hub_address: Ipv4Addr::new(10, 16, 0, 1),
            ..vxlan::AddressPlan::default()
        };
        let error = sized_pool(&state, &hub).expect_err("r20 holds ID 20 > 15");
        assert!(error.to_string().contains("\"r20\" holds ID 20"), "{error}");
    }
}
