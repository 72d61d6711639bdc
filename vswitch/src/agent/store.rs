//! A hub's side of the overlay's shared store in etcd (`spec.store.etcd`): the keys, the
//! transactions that commit registrations, the hub's lease, and the watch that keeps the
//! hub's runner pool a copy of the store.
//!
//! Keys, under the overlay's prefix `P` (default `/vswitch/overlay/`):
//! - `P/runners/<ID>` (ten digits, so they sort by ID): `{"name", "address",
//!   "registeredMs"}`: who holds the ID;
//! - `P/names/<name>`: the ID, in decimal: a name holds one ID;
//! - `P/online/<name>`: the `localAddress` of the hub serving the runner now, under that
//!   hub's lease: gone when the runner goes silent there, or the hub dies;
//! - `P/hubs/<localAddress>`: `{"apiAddress"}` under the hub's lease: the hubs alive.
//!
//! A new runner's ID is committed with a transaction that holds only if neither
//! `runners/<ID>` nor `names/<name>` exists (compare-and-swap on their create revision), so
//! two hubs never give one ID, nor one name two IDs. When it fails the hub reads the store
//! again and admits anew.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::backoff::Backoff;
use super::{controller_call, stopped};
use crate::control::Controller;
use crate::control::kinds::overlay::EtcdStoreSpec;
use crate::control::overlay_store::{
    SharedStore, StoreChange, StoreCommit, StoreFailure, StoreFuture, StoreSnapshot, StoredRunner,
};
use crate::etcd::{Compare, EtcdClient, EtcdError, Event, KeyValue, Op, WatchMessage};

/// The hub's connection to the overlay's store in etcd.
#[derive(Debug)]
pub struct EtcdStore {
    client: EtcdClient,
    prefix: String,
    /// This hub's name in the store: its `localAddress`.
    me: String,
    /// Where runners reach this hub's API (in its `hubs/` key).
    api: SocketAddr,
    lease_seconds: u64,
    /// This hub's lease.
    lease: AtomicI64,
    /// Held while a new lease is taken: calls that found the lease gone at the same time
    /// take one new lease between them.
    granting: tokio::sync::Mutex<()>,
    controller: Arc<Controller>,
    endpoints: String,
}

/// What the keys of the store name.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    Runner(u32),
    Name,
    Online(&'a str),
    Hub(&'a str),
    Other,
}

impl EtcdStore {
    /// Connects: takes a lease, says this hub is alive, and reads the store into the
    /// controller (copying this hub's runners into a store that has none yet). Answers the
    /// store and the revision it was read at.
    ///
    /// # Errors
    /// Why (etcd unreachable, a TLS file unusable, a runner the plan cannot serve).
    pub async fn open(
        controller: Arc<Controller>,
        spec: &EtcdStoreSpec,
        me: String,
        api: SocketAddr,
    ) -> Result<(Arc<EtcdStore>, i64), String> {
        let tls = match &spec.tls {
            None => None,
            Some(tls) => {
                let identity = tls
                    .certificate_file
                    .as_deref()
                    .zip(tls.key_file.as_deref())
                    .map(|(c, k)| (std::path::Path::new(c), std::path::Path::new(k)));
                let config =
                    crate::tls::etcd_client_config(std::path::Path::new(&tls.ca_file), identity)
                        .map_err(|(field, error)| {
                            format!("spec.store.etcd.tls.{field}: {error}")
                        })?;
                Some(config)
            }
        };
        let client = EtcdClient::new(&spec.endpoints, tls)?;
        let store = Arc::new(EtcdStore {
            client,
            prefix: spec.prefix.clone(),
            me,
            api,
            lease_seconds: spec.lease_seconds,
            lease: AtomicI64::new(0),
            granting: tokio::sync::Mutex::new(()),
            controller,
            endpoints: spec.endpoints.join(","),
        });
        store.grant().await.map_err(|error| error.to_string())?;
        let revision = store.reload().await?;
        // Runners this process serves already (the agent restarted, or the store was just
        // seeded) are said to be served here under the new lease.
        store
            .assert_online()
            .await
            .map_err(|error| error.to_string())?;
        Ok((store, revision))
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    fn runner_key(&self, id: u32) -> Vec<u8> {
        self.key(&format!("runners/{id:010}"))
    }

    fn name_key(&self, name: &str) -> Vec<u8> {
        self.key(&format!("names/{name}"))
    }

    fn online_key(&self, name: &str) -> Vec<u8> {
        self.key(&format!("online/{name}"))
    }

    fn parse_key<'a>(&self, key: &'a [u8]) -> Key<'a> {
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|key| key.strip_prefix(self.prefix.as_str()))
        else {
            return Key::Other;
        };
        if let Some(id) = rest.strip_prefix("runners/") {
            return id.parse().map_or(Key::Other, Key::Runner);
        }
        if rest.starts_with("names/") {
            return Key::Name;
        }
        if let Some(name) = rest.strip_prefix("online/") {
            return Key::Online(name);
        }
        if let Some(hub) = rest.strip_prefix("hubs/") {
            return Key::Hub(hub);
        }
        Key::Other
    }

    /// Takes a new lease and puts this hub's key under it.
    async fn grant(&self) -> Result<i64, EtcdError> {
        let lease = self.client.grant(self.lease_seconds).await?;
        self.lease.store(lease, Ordering::Relaxed);
        let value = serde_json::json!({ "apiAddress": self.api.to_string() }).to_string();
        self.client
            .put(
                &self.key(&format!("hubs/{}", self.me)),
                value.as_bytes(),
                lease,
            )
            .await?;
        tracing::info!(hub = %self.me, lease, "holding a lease in the overlay store");
        Ok(lease)
    }

    /// Reads the whole store into the controller; answers the revision read. A store
    /// without runners gets this hub's (as before it used the store), then is read again.
    async fn reload(&self) -> Result<i64, String> {
        for _ in 0..2 {
            let (revision, kvs) = self
                .client
                .range_prefix(self.prefix.as_bytes())
                .await
                .map_err(|error| error.to_string())?;
            let mut snapshot = self.snapshot(&kvs);
            snapshot.revision = revision;
            let me = self.me.clone();
            let count = snapshot.runners.len();
            let seeds =
                controller_call(&self.controller, move |c| c.hub_store_loaded(me, snapshot))
                    .await
                    .ok_or("the controller call failed")?
                    .map_err(|error| error.to_string())?;
            if seeds.is_empty() {
                tracing::info!(runners = count, revision, "read the overlay store");
                return Ok(revision);
            }
            tracing::info!(
                runners = seeds.len(),
                "the overlay store has no runners: copying this hub's"
            );
            for runner in &seeds {
                // Create-only: another hub seeding at the same time wins on its keys.
                self.client
                    .txn(
                        &[
                            Compare::Absent(self.runner_key(runner.id)),
                            Compare::Absent(self.name_key(&runner.name)),
                        ],
                        &self.record_ops(runner),
                        &[],
                    )
                    .await
                    .map_err(|error| error.to_string())?;
            }
        }
        Err("the overlay store changed while this hub copied its runners into it".into())
    }

    fn snapshot(&self, kvs: &[KeyValue]) -> StoreSnapshot {
        let mut snapshot = StoreSnapshot::default();
        for kv in kvs {
            match self.parse_key(&kv.key) {
                Key::Runner(id) => {
                    if let Some(runner) = self.decode_runner(id, &kv.value) {
                        snapshot.runners.insert(id, runner);
                    }
                }
                Key::Online(name) => {
                    let hub = String::from_utf8_lossy(&kv.value).into_owned();
                    // This hub's name under another lease: written before it restarted, and
                    // gone when that lease expires. Not counted as served here, so the
                    // runner's next registration says so again under the current lease.
                    if hub == self.me && kv.lease != self.lease.load(Ordering::Relaxed) {
                        continue;
                    }
                    snapshot.online.insert(name.to_owned(), hub);
                }
                Key::Hub(hub) => snapshot.hubs.push(hub.to_owned()),
                Key::Name | Key::Other => {}
            }
        }
        snapshot
    }

    fn decode_runner(&self, id: u32, value: &[u8]) -> Option<StoredRunner> {
        match serde_json::from_slice::<StoredRunner>(value) {
            Ok(runner) if id > 0 => Some(StoredRunner { id, ..runner }),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(
                    id,
                    "the overlay store holds a runner record that does not parse: {error}"
                );
                None
            }
        }
    }

    /// The changes `events` bring, each with its revision.
    fn changes(&self, events: Vec<Event>) -> Vec<(i64, StoreChange)> {
        let mut changes = Vec::new();
        for event in events {
            let (kv, put) = match &event {
                Event::Put(kv) => (kv, true),
                Event::Delete(kv) => (kv, false),
            };
            let mut push = |change| changes.push((kv.mod_revision, change));
            match (self.parse_key(&kv.key), put) {
                (Key::Runner(id), true) => {
                    if let Some(runner) = self.decode_runner(id, &kv.value) {
                        push(StoreChange::Runner(runner));
                    }
                }
                (Key::Runner(id), false) => push(StoreChange::RunnerGone { id }),
                (Key::Online(name), true) => push(StoreChange::Online {
                    name: name.to_owned(),
                    hub: String::from_utf8_lossy(&kv.value).into_owned(),
                }),
                (Key::Online(name), false) => push(StoreChange::Offline {
                    name: name.to_owned(),
                }),
                (Key::Hub(hub), up) => {
                    tracing::info!(
                        hub,
                        "a hub {} the overlay store",
                        if up { "joined" } else { "left" }
                    );
                    push(StoreChange::Hub {
                        hub: hub.to_owned(),
                        up,
                    });
                }
                _ => {}
            }
        }
        changes
    }

    /// The writes that record `runner` (its ID, its name, served here).
    fn record_ops(&self, runner: &StoredRunner) -> Vec<Op> {
        let value = serde_json::to_vec(runner).unwrap_or_default();
        vec![
            Op::Put {
                key: self.runner_key(runner.id),
                value,
                lease: 0,
            },
            Op::Put {
                key: self.name_key(&runner.name),
                value: runner.id.to_string().into_bytes(),
                lease: 0,
            },
        ]
    }

    fn online_op(&self, name: &str) -> Op {
        Op::Put {
            key: self.online_key(name),
            value: self.me.clone().into_bytes(),
            lease: self.lease.load(Ordering::Relaxed),
        }
    }

    /// The transaction of a commit: its checks and its writes.
    fn transaction(&self, commit: &StoreCommit) -> (Vec<Compare>, Vec<Op>) {
        let runner = commit.runner();
        let holds_id =
            |name: &str| Compare::ValueIs(self.name_key(name), runner.id.to_string().into_bytes());
        match commit {
            StoreCommit::Assign(runner) => {
                let mut ops = self.record_ops(runner);
                ops.push(self.online_op(&runner.name));
                (
                    vec![
                        Compare::Absent(self.runner_key(runner.id)),
                        Compare::Absent(self.name_key(&runner.name)),
                    ],
                    ops,
                )
            }
            StoreCommit::Move(runner) => {
                let mut ops = self.record_ops(runner);
                ops.push(self.online_op(&runner.name));
                (vec![holds_id(&runner.name)], ops)
            }
            StoreCommit::Online(runner) => (
                vec![holds_id(&runner.name)],
                vec![self.online_op(&runner.name)],
            ),
            StoreCommit::Reclaim { runner, evicted } => {
                let mut ops = vec![Op::Delete(self.name_key(evicted))];
                ops.extend(self.record_ops(runner));
                ops.push(self.online_op(&runner.name));
                (
                    vec![
                        holds_id(evicted),
                        // Not while any hub serves the runner losing the ID.
                        Compare::Absent(self.online_key(evicted)),
                        Compare::Absent(self.name_key(&runner.name)),
                    ],
                    ops,
                )
            }
        }
    }

    async fn commit_once(&self, commit: &StoreCommit) -> Result<(), StoreFailure> {
        let lease = self.lease.load(Ordering::Relaxed);
        let (compares, ops) = self.transaction(commit);
        let result = match self.client.txn(&compares, &ops, &[]).await {
            Err(EtcdError::Refused { code, .. }) if code == crate::etcd::CODE_NOT_FOUND => {
                // The lease expired (etcd was away longer than its TTL): take another.
                self.regrant(lease).await.map_err(|error| {
                    StoreFailure::Unavailable(format!("the overlay store: {error}"))
                })?;
                let (compares, ops) = self.transaction(commit);
                self.client.txn(&compares, &ops, &[]).await
            }
            result => result,
        };
        match result {
            Ok(outcome) if outcome.succeeded => Ok(()),
            Ok(_) => {
                let runner = commit.runner();
                let why = format!(
                    "the overlay store gives ID {} or the name {:?} to another runner",
                    runner.id, runner.name
                );
                self.reload().await.map_err(|error| {
                    StoreFailure::Unavailable(format!("{why}, and cannot be read: {error}"))
                })?;
                Err(StoreFailure::Conflict(why))
            }
            Err(error) => Err(StoreFailure::Unavailable(format!(
                "the overlay store: {error}"
            ))),
        }
    }

    /// A new lease after `expired` was found gone (unless another call took one since);
    /// the runners served here are said so again.
    async fn regrant(&self, expired: i64) -> Result<(), EtcdError> {
        let _one = self.granting.lock().await;
        if self.lease.load(Ordering::Relaxed) != expired {
            return Ok(());
        }
        self.grant().await?;
        self.assert_online().await
    }

    /// Puts the `online` keys of the runners online here that no other hub serves, under
    /// this hub's lease, in transactions of up to 64 puts.
    async fn assert_online(&self) -> Result<(), EtcdError> {
        let served = controller_call(&self.controller, Controller::hub_online_here)
            .await
            .unwrap_or_default();
        for names in served.chunks(64) {
            let ops: Vec<Op> = names.iter().map(|name| self.online_op(name)).collect();
            self.client.txn(&[], &ops, &[]).await?;
        }
        Ok(())
    }

    /// Deletes the `online` keys of `names` (silent here) that still say this hub.
    pub async fn offline(&self, names: &[String]) {
        for name in names {
            let result = self
                .client
                .txn(
                    &[Compare::ValueIs(
                        self.online_key(name),
                        self.me.clone().into_bytes(),
                    )],
                    &[Op::Delete(self.online_key(name))],
                    &[],
                )
                .await;
            if let Err(error) = result {
                tracing::warn!(runner = %name, "cannot mark the runner offline in the overlay store: {error}");
            }
        }
    }

    /// Follows the store from `revision` on, forever, while a task of its own renews the
    /// lease (a slow watch or controller call must not let the lease lapse): changes go to
    /// the controller; a watch that breaks or falls behind a compaction reads the store
    /// again and watches from there.
    pub async fn run(self: Arc<Self>, mut revision: i64) -> std::convert::Infallible {
        let renewer = Arc::clone(&self);
        let _renewals = AbortOnDrop(tokio::spawn(async move {
            let period = Duration::from_secs(renewer.lease_seconds).div_f64(3.0);
            let mut renewals = tokio::time::interval(period);
            renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                renewals.tick().await;
                renewer.renew().await;
            }
        }));
        let mut backoff = Backoff::new();
        loop {
            let mut watch = match self
                .client
                .watch_prefix(self.prefix.as_bytes(), revision + 1)
                .await
            {
                Ok(opened) => {
                    backoff.reset();
                    opened
                }
                Err(error) => {
                    tracing::warn!("cannot watch the overlay store: {error}; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            loop {
                match watch.next().await {
                    Ok(WatchMessage::Events { events, .. }) => {
                        for event in &events {
                            let (Event::Put(kv) | Event::Delete(kv)) = event;
                            revision = revision.max(kv.mod_revision);
                        }
                        let changes = self.changes(events);
                        if !changes.is_empty() {
                            let applied = controller_call(&self.controller, move |c| {
                                c.hub_store_changes(changes)
                            })
                            .await;
                            if let Some(Err(error)) = applied {
                                tracing::warn!("cannot apply the overlay store's changes: {error}");
                            }
                        }
                    }
                    Ok(WatchMessage::Compacted { compact_revision }) => {
                        tracing::info!(
                            compact_revision,
                            "the overlay store compacted what this hub had not seen: reading \
                             it again"
                        );
                        revision = self.reload_until_read(&mut backoff).await;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(
                            "the watch of the overlay store broke: {error}; reading it again"
                        );
                        revision = self.reload_until_read(&mut backoff).await;
                        break;
                    }
                }
            }
        }
    }

    async fn reload_until_read(&self, backoff: &mut Backoff) -> i64 {
        loop {
            match self.reload().await {
                Ok(revision) => return revision,
                Err(error) => {
                    tracing::warn!("cannot read the overlay store: {error}; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn renew(&self) {
        let lease = self.lease.load(Ordering::Relaxed);
        match self.client.keep_alive(lease).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(
                    lease,
                    "this hub's lease in the overlay store expired: taking another"
                );
                if let Err(error) = self.regrant(lease).await {
                    tracing::warn!("cannot take a new lease: {error}");
                }
            }
            Err(error) => {
                tracing::warn!("cannot renew this hub's lease in the overlay store: {error}")
            }
        }
    }

    /// Gives up the lease (a clean stop): the runners served here show as served by no hub
    /// at once rather than after the TTL.
    pub async fn close(&self) {
        let lease = self.lease.load(Ordering::Relaxed);
        if let Err(error) = self.client.revoke(lease).await {
            tracing::debug!("cannot revoke the lease: {error}");
        }
    }
}

impl SharedStore for EtcdStore {
    fn commit<'a>(&'a self, commit: &'a StoreCommit) -> StoreFuture<'a, Result<(), StoreFailure>> {
        Box::pin(self.commit_once(commit))
    }

    fn describe(&self) -> String {
        format!("etcd {} {}", self.endpoints, self.prefix)
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the store, retrying with backoff until it answers or `stop`; `None` when stopped.
pub(super) async fn open_until_ready(
    controller: &Arc<Controller>,
    spec: &EtcdStoreSpec,
    me: String,
    api: SocketAddr,
    stop: &mut watch::Receiver<bool>,
) -> Option<(Arc<EtcdStore>, i64)> {
    let mut backoff = Backoff::new();
    let mut last: Option<String> = None;
    loop {
        match EtcdStore::open(Arc::clone(controller), spec, me.clone(), api).await {
            Ok(opened) => {
                controller_call(controller, |c| c.hub_store_status(None)).await;
                return Some(opened);
            }
            Err(error) => {
                let message = format!(
                    "the overlay store (etcd {}) cannot be used: {error}; registrations wait \
                     for it",
                    spec.endpoints.join(",")
                );
                if last.as_deref() != Some(message.as_str()) {
                    tracing::error!("{message}");
                    last = Some(message.clone());
                }
                controller_call(controller, move |c| c.hub_store_status(Some(message))).await;
                tokio::select! {
                    () = stopped(stop) => return None,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
