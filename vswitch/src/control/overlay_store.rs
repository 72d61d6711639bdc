//! The overlay's shared store, seen from the controller: what a hub with
//! `spec.store.etcd` records there before it answers a registration ([`StoreCommit`]), what
//! it learns from there ([`StoreChange`], [`StoreSnapshot`]), and the interface the hub's
//! registration API commits through ([`SharedStore`]). The etcd side (keys, transactions,
//! the lease, the watch) is `agent::store`.
//!
//! The store holds the truth: every runner's name, ID, address and when it first
//! registered, and which hub serves it now (an `online` key under that hub's lease, gone
//! when the hub is). Each hub keeps a copy in its runner pool, admits registrations against
//! that copy, and has the store check them: an ID given only while no other hub has given
//! it, a name registered once. A check that fails means the copy was behind; the hub reads
//! the store again and admits anew.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// A runner as the store holds it (unknown fields are ignored: a newer hub may add some).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRunner {
    /// Its ID (the store's key).
    #[serde(skip)]
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its VTEP address.
    pub address: IpAddr,
    /// When it was first given this ID (wall-clock milliseconds since the Unix epoch).
    pub registered_ms: u64,
}

/// What a registration changes in the store, checked there before the hub answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreCommit {
    /// A new name took a free ID: only if neither the ID nor the name is in the store yet.
    Assign(StoredRunner),
    /// A known name registers from another address: only if the store still gives it
    /// this ID.
    Move(StoredRunner),
    /// Every ID was taken: `evicted`'s ID goes to this runner, only if the store still
    /// gives `evicted` that ID and the new name holds none.
    Reclaim {
        /// The new holder.
        runner: StoredRunner,
        /// Who held the ID.
        evicted: String,
    },
    /// A known runner is served by this hub now (after it failed over from another hub, or
    /// this hub restarted): only if the store still gives it this ID.
    Online(StoredRunner),
}

impl StoreCommit {
    /// The runner it records.
    pub fn runner(&self) -> &StoredRunner {
        match self {
            StoreCommit::Assign(runner)
            | StoreCommit::Move(runner)
            | StoreCommit::Online(runner)
            | StoreCommit::Reclaim { runner, .. } => runner,
        }
    }
}

/// A change another hub (or an operator) made in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// A runner was given an ID, or registered from another address.
    Runner(StoredRunner),
    /// The runner holding `id` was removed.
    RunnerGone {
        /// The ID it held.
        id: u32,
    },
    /// `name` is served by hub `hub` (its `localAddress`).
    Online {
        /// The runner.
        name: String,
        /// The hub serving it.
        hub: String,
    },
    /// No hub serves `name` (it went silent, or its hub went away).
    Offline {
        /// The runner.
        name: String,
    },
    /// Hub `hub` took a lease (`up`) or lost it.
    Hub {
        /// Its `localAddress`.
        hub: String,
        /// Whether it is alive.
        up: bool,
    },
}

/// The whole store, read at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSnapshot {
    /// Every runner, by ID.
    pub runners: BTreeMap<u32, StoredRunner>,
    /// Which hub serves each online runner.
    pub online: BTreeMap<String, String>,
    /// The hubs holding a lease (their `localAddress`).
    pub hubs: Vec<String>,
    /// The store's revision it was read at: changes up to it are in it.
    pub revision: i64,
}

/// Why a commit did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFailure {
    /// The store's check failed (another hub gave the ID, or the name, first). The hub's
    /// copy has been read again: admit anew.
    Conflict(String),
    /// The store cannot be reached or refused the write: nothing was recorded.
    Unavailable(String),
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFailure::Conflict(why) | StoreFailure::Unavailable(why) => f.write_str(why),
        }
    }
}

/// A boxed future, so that the trait is object safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a hub commits registrations (implemented over etcd by `agent::store`).
pub trait SharedStore: Send + Sync + fmt::Debug {
    /// Records `commit` if the store's checks pass. On [`StoreFailure::Conflict`] the
    /// hub's copy has already been read again.
    fn commit<'a>(&'a self, commit: &'a StoreCommit) -> StoreFuture<'a, Result<(), StoreFailure>>;

    /// What the overlay view says of the store (e.g. `etcd http://10.1.0.5:2379`).
    fn describe(&self) -> String;
}
