//! A hub's runner pool as a copy of the overlay's shared store (see
//! [`crate::control::overlay_store`]): loading it, following its changes, and the commits a
//! registration needs.

use std::collections::HashMap;

use super::overlay::{fold_heartbeats, hub_overlay, hub_overlay_mut, sized_pool, wall_ms};
use super::{Controller, Inner, Locked};
use crate::control::ApiError;
use crate::control::overlay_store::{StoreChange, StoreCommit, StoreSnapshot, StoredRunner};

/// What [`Controller::hub_admit`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAdmitted {
    /// The runner's plan, to answer once the admission is committed and settled.
    pub plan: vxlan::RunnerPlan,
    /// The admission's ticket for [`Controller::hub_settle`] (`None`: nothing to set up).
    pub ticket: Option<u64>,
    /// With a shared store, what must be recorded there before the answer.
    pub commit: Option<StoreCommit>,
}

/// The store's record of a pool runner.
pub(super) fn stored_runner(runner: &vxlan::membership::Runner) -> StoredRunner {
    StoredRunner {
        id: runner.id.get(),
        name: runner.name.clone(),
        address: runner.address,
        registered_ms: runner.registered_ms,
    }
}

/// With a shared store, this hub's share of new IDs: its place among the hubs holding a
/// lease (`None` alone, or before the store is read).
pub(super) fn id_share(inner: &Inner) -> Option<vxlan::membership::IdShare> {
    let me = inner.served.store_me.as_ref()?;
    let index = inner.served.hubs.iter().position(|hub| hub == me)?;
    Some(vxlan::membership::IdShare {
        index: u32::try_from(index).ok()?,
        count: u32::try_from(inner.served.hubs.len()).ok()?,
    })
}

/// With a shared store, the commit that says this hub serves `name` now, unless the store
/// says so already; for a runner whose first commit never completed (its handler was
/// dropped, say), that commit again.
pub(super) fn store_online_commit(inner: &Inner, name: &str) -> Option<StoreCommit> {
    let me = inner.served.store_me.as_ref()?;
    let runner = inner.state.runner_pool.as_ref()?.get(name)?;
    if inner.served.uncommitted.get(name) == Some(&runner.id.get()) {
        return Some(StoreCommit::Assign(stored_runner(runner)));
    }
    if inner.served.online.get(name) == Some(me) {
        return None;
    }
    Some(StoreCommit::Online(stored_runner(runner)))
}

impl Controller {
    /// Hub with a shared store: the store was read whole (at start, after its watch broke,
    /// or after a commit found this copy behind). The pool becomes the store's runners,
    /// each keeping what this hub knew of when it was seen; `me` is this hub's name there.
    /// Answers the runners to copy into a store that has none yet (this hub's pool from
    /// before it used the store); the pool is kept then.
    ///
    /// # Errors
    /// [`ApiError`] when this node is not a hub, the store holds an ID beyond the address
    /// plan, or the generated resources cannot be set up or saved.
    pub fn hub_store_loaded(
        &self,
        me: String,
        snapshot: StoreSnapshot,
    ) -> Result<Vec<StoredRunner>, ApiError> {
        let mut inner = self.lock();
        let overlay = hub_overlay(&inner.state)?.clone();
        let elsewhere_before = inner.served.elsewhere();
        inner.served.store_me = Some(me);
        inner.served.store_revision = inner.served.store_revision.max(snapshot.revision);
        inner.served.online = snapshot.online.clone().into_iter().collect();
        // Who serves whom shapes the generated Subnets (see `overlay::hub_resources`).
        let serving_changed = inner.served.elsewhere() != elsewhere_before;
        inner.served.hubs = snapshot.hubs.iter().cloned().collect();
        fold_heartbeats(&mut inner);
        let local = sized_pool(&inner.state, &overlay)?;
        if snapshot.runners.is_empty() && inner.served.uncommitted.is_empty() {
            if serving_changed {
                self.resync_generated(&mut inner)?;
            }
            return Ok(local.runners().map(stored_runner).collect());
        }
        let now = wall_ms();
        let mut pool = vxlan::RunnerPool::new(local.capacity());
        for stored in snapshot.runners.values() {
            let runner = self.pool_runner(&inner, &local, stored, now)?;
            // One record this hub cannot serve (an ID beyond its plan, from a hub with a
            // wider one) must not stop it serving the others.
            if let Err(err) = pool.restore(runner) {
                tracing::warn!(
                    runner = %stored.name,
                    id = stored.id,
                    "the overlay store holds a runner this hub cannot serve: {err}"
                );
            }
        }
        // Admissions still in flight keep their ID while the store leaves it free.
        let uncommitted = std::mem::take(&mut inner.served.uncommitted);
        for (name, id) in uncommitted {
            let Some(runner) = local.get(&name).filter(|r| r.id.get() == id) else {
                continue;
            };
            if pool.get(&name).is_some() || pool.get_by_id(runner.id).is_some() {
                continue;
            }
            if pool.restore(runner.clone()).is_ok() {
                inner.served.uncommitted.insert(name, id);
            }
        }
        let changed = serving_changed || inner.state.runner_pool.as_ref() != Some(&pool);
        self.forget_moved(&local, &pool);
        inner.state.runner_pool = Some(pool);
        if changed {
            self.resync_generated(&mut inner)?;
        }
        Ok(Vec::new())
    }

    /// Hub with a shared store: applies changes the store reported (another hub's
    /// registrations, runners served elsewhere). Runners given IDs get their Subnets.
    ///
    /// # Errors
    /// [`ApiError`] when the generated resources cannot be set up or saved.
    pub fn hub_store_changes(&self, changes: Vec<(i64, StoreChange)>) -> Result<(), ApiError> {
        let mut inner = self.lock();
        let overlay = hub_overlay(&inner.state)?.clone();
        // A read of the whole store (after a commit found this copy behind) may be newer
        // than the watch: what it holds already is not applied again.
        let read_at = inner.served.store_revision;
        let changes = changes
            .into_iter()
            .filter(|(revision, _)| *revision > read_at)
            .map(|(_, change)| change);
        fold_heartbeats(&mut inner);
        let before = sized_pool(&inner.state, &overlay)?;
        let mut pool = before.clone();
        let now = wall_ms();
        let elsewhere_before = inner.served.elsewhere();
        // Who serves whom first: a runner new here is online if a hub serves it, and the
        // change saying so comes after its record in the same transaction.
        let (served, records): (Vec<_>, Vec<_>) = changes.partition(|change| {
            matches!(
                change,
                StoreChange::Online { .. } | StoreChange::Offline { .. } | StoreChange::Hub { .. }
            )
        });
        for change in served.into_iter().chain(records) {
            match change {
                StoreChange::Runner(stored) => {
                    if inner.served.uncommitted.get(&stored.name) == Some(&stored.id) {
                        inner.served.uncommitted.remove(&stored.name);
                    }
                    let runner = self.pool_runner(&inner, &before, &stored, now)?;
                    if let Err(err) = pool.restore(runner) {
                        tracing::warn!(
                            runner = %stored.name,
                            id = stored.id,
                            "the overlay store holds a runner this hub cannot serve: {err}"
                        );
                    }
                }
                StoreChange::RunnerGone { id } => {
                    let name = vxlan::RunnerId::new(id)
                        .and_then(|id| pool.get_by_id(id))
                        .map(|runner| runner.name.clone());
                    if let Some(name) = name {
                        tracing::info!(runner = %name, id, "the overlay store removed a runner");
                        pool.remove(&name);
                    }
                }
                StoreChange::Online { name, hub } => {
                    inner.served.online.insert(name, hub);
                }
                StoreChange::Offline { name } => {
                    inner.served.online.remove(&name);
                }
                StoreChange::Hub { hub, up: true } => {
                    inner.served.hubs.insert(hub);
                }
                StoreChange::Hub { hub, up: false } => {
                    inner.served.hubs.remove(&hub);
                }
            }
        }
        if pool == before {
            // Who serves whom shapes the generated Subnets (see `overlay::hub_resources`).
            return if inner.served.elsewhere() != elsewhere_before {
                self.resync_generated(&mut inner)
            } else {
                Ok(())
            };
        }
        self.forget_moved(&before, &pool);
        inner.state.runner_pool = Some(pool);
        self.resync_generated(&mut inner)
    }

    /// Hub with a shared store: a commit could not be recorded (the store is away), so the
    /// admission it was for is undone here: a new runner leaves the pool (a reclaimed ID's
    /// former holder comes back with the next read of the store).
    pub fn hub_store_abort(&self, commit: &StoreCommit) {
        let mut inner = self.lock();
        let (StoreCommit::Assign(runner) | StoreCommit::Reclaim { runner, .. }) = commit else {
            return;
        };
        let Some(pool) = inner.state.runner_pool.as_mut() else {
            return;
        };
        if pool
            .get(&runner.name)
            .is_some_and(|r| r.id.get() == runner.id)
        {
            pool.remove(&runner.name);
            inner.served.pending.remove(&runner.name);
        }
        inner.served.uncommitted.remove(&runner.name);
    }

    /// Hub: forgets what it knew of a shared store (the hub agent starts: with another
    /// store, or none).
    pub fn hub_store_reset(&self) {
        let mut inner = self.lock();
        inner.served.store_me = None;
        inner.served.store_revision = 0;
        inner.served.online.clear();
        inner.served.hubs.clear();
        inner.served.uncommitted.clear();
    }

    /// Hub with a shared store: the runners offline here that the store still says this
    /// hub serves (an earlier delete of their `online` key failed).
    pub fn hub_offline_served_here(&self) -> Vec<String> {
        self.runners_in_state(vxlan::membership::RunnerState::Offline, |holder, me| {
            holder == Some(me)
        })
    }

    /// Hub with a shared store: the online runners not served by another hub (to say
    /// again that this hub serves them, under a new lease).
    pub fn hub_online_here(&self) -> Vec<String> {
        self.runners_in_state(vxlan::membership::RunnerState::Online, |holder, me| {
            holder.is_none_or(|hub| hub == me)
        })
    }

    /// With a shared store, the names of the pool's runners in `state` whose serving hub
    /// in the store (`None`: none) passes `holder` (given this hub's name).
    fn runners_in_state(
        &self,
        state: vxlan::membership::RunnerState,
        holder: impl Fn(Option<&String>, &String) -> bool,
    ) -> Vec<String> {
        let inner = self.lock();
        let (Some(me), Some(pool)) = (&inner.served.store_me, &inner.state.runner_pool) else {
            return Vec::new();
        };
        pool.runners()
            .filter(|runner| runner.state == state)
            .filter(|runner| holder(inner.served.online.get(&runner.name), me))
            .map(|runner| runner.name.clone())
            .collect()
    }

    /// Hub: says in the Overlay's status why the shared store cannot be used (`None`: it
    /// can again).
    pub fn hub_store_status(&self, message: Option<String>) {
        let mut inner = self.lock();
        let Some(overlay) = hub_overlay_mut(&mut inner.state) else {
            return;
        };
        overlay.status.store_message = message;
    }

    /// A pool runner for `stored`: what this hub knew of when it was seen and whether it is
    /// online, if it knew this runner at this ID and address; else online when the store
    /// says a hub serves it, seen now.
    fn pool_runner(
        &self,
        inner: &Inner,
        known: &vxlan::RunnerPool,
        stored: &StoredRunner,
        now: u64,
    ) -> Result<vxlan::membership::Runner, ApiError> {
        let id = vxlan::RunnerId::new(stored.id).ok_or_else(|| ApiError::Internal {
            message: format!("the overlay store gives runner {:?} ID 0", stored.name),
        })?;
        let same = known
            .get(&stored.name)
            .filter(|runner| runner.id == id && runner.address == stored.address.to_canonical());
        Ok(match same {
            Some(runner) => vxlan::membership::Runner {
                registered_ms: stored.registered_ms,
                ..runner.clone()
            },
            None => vxlan::membership::Runner {
                id,
                name: stored.name.clone(),
                address: stored.address,
                registered_ms: stored.registered_ms,
                last_seen_ms: now,
                state: if inner.served.online.contains_key(&stored.name) {
                    vxlan::membership::RunnerState::Online
                } else {
                    vxlan::membership::RunnerState::Offline
                },
            },
        })
    }

    /// MACs learned behind an address no runner of `after` holds any more are stale.
    fn forget_moved(&self, before: &vxlan::RunnerPool, after: &vxlan::RunnerPool) {
        let kept: std::collections::HashSet<_> = after.runners().map(|r| r.address).collect();
        for runner in before.runners() {
            if !kept.contains(&runner.address) {
                let forgotten = self.engine.read().forget_remote_vtep(runner.address);
                tracing::debug!(address = %runner.address, forgotten, "forgot remote MACs behind an address the store dropped");
            }
        }
    }

    /// Sets up the generated resources for the pool as it is now and saves the state; every
    /// admission so far is then settled.
    pub(super) fn resync_generated(&self, inner: &mut Locked<'_>) -> Result<(), ApiError> {
        let upto = inner.served.admitted;
        self.sync_generated(inner)?;
        inner.persist(&inner.state)?;
        inner.served.synced = inner.served.synced.max(upto);
        let synced = inner.served.synced;
        inner.served.pending.retain(|_, ticket| *ticket > synced);
        inner.served.trim_due = true;
        Ok(())
    }
}

/// With a shared store, runners another hub serves stay online here while it does.
pub(super) fn touch_served_elsewhere(inner: &mut Inner, now_ms: u64) {
    let Some(me) = inner.served.store_me.clone() else {
        return;
    };
    let elsewhere: HashMap<&String, &String> = inner
        .served
        .online
        .iter()
        .filter(|(_, hub)| **hub != me)
        .collect();
    if elsewhere.is_empty() {
        return;
    }
    let Some(pool) = inner.state.runner_pool.as_mut() else {
        return;
    };
    for name in elsewhere.keys() {
        let _ = pool.touch(name, now_ms);
    }
}
