//! Maglev consistent hashing and backend sets for virtual IPs; no I/O.
//!
//! This crate decides *which backend* gets a load-balanced flow; vswitch does the rest
//! (parsing, connection tracking, NAT to the backend, health-check probes, the API). It
//! holds plain data and pure functions: no sockets, no threads, no clock (time comes in as
//! `now`, seconds on the caller's monotonic clock).
//!
//! # Pieces
//! - [`maglev`]: [`MaglevTable`], the consistent-hashing lookup table of Eisenbud et al.,
//!   "Maglev: A Fast and Reliable Software Network Load Balancer" (NSDI 2016, §3.4 and its
//!   Pseudocode 1), with weights; [`TableSize`] (a prime, [`DEFAULT_TABLE_SIZE`] = 16381 as
//!   in Cilium, [`suggested_size`] for ≥ 100 slots per backend); [`TableDiff`] to measure how
//!   many slots a change moved.
//! - [`flow`]: [`FlowKey`] and [`flow_hash`], the per-packet hash (IPv4 and IPv6), and
//!   [`client_hash`] over the source address alone for ClientIP affinity. Both are fixed
//!   functions, identical on every node and version.
//! - [`backend`]: [`BackendSet`], one service's backends (identity, address, port, weight,
//!   active/draining, health), compiled by [`BackendSet::compile`] into a [`BackendTable`]
//!   for the datapath. Eligible = weight > 0 and not unhealthy; active backends first,
//!   draining ones only when no active one is eligible, and never unhealthy ones: with none
//!   eligible, lookups miss and the switch refuses the flow.
//! - [`health`]: [`BackendHealth`], the Unknown/Healthy/Unhealthy machine with rise/fall
//!   thresholds, and [`HealthCheckConfig`] with its validation. `Unknown` is eligible.
//! - [`affinity`]: [`AffinityTable`], the sharded ClientIP session-affinity table shared by
//!   the workers, with refresh-on-hit under a read lock, bounded size, and bounded purges.
//!
//! # Invariants
//! - No `unsafe`, no panic on any input, and no allocation in the per-packet calls
//!   ([`flow_hash`], [`client_hash`], [`MaglevTable::lookup`], [`BackendTable::lookup`],
//!   [`AffinityTable::lookup`]).
//! - Tables are deterministic: the same backends (in any order) and table size give the
//!   same slot → backend mapping on every node, process and version (tests pin the output).
//!
//! # Example
//! ```
//! use std::net::IpAddr;
//! use lb::{BackendSet, BackendSpec, FlowKey, HealthCheckConfig, TableSize, flow_hash};
//!
//! let mut service = BackendSet::new(TableSize::DEFAULT, HealthCheckConfig::default());
//! for (uid, addr) in [("nic-a", "10.0.0.1"), ("nic-b", "10.0.0.2"), ("nic-c", "10.0.0.3")] {
//!     service.upsert(BackendSpec::new(uid, addr.parse().unwrap(), 8080)).unwrap();
//! }
//! let table = service.compile(0).unwrap();
//!
//! // Per new flow, in a worker:
//! let flow = FlowKey::new(
//!     "192.0.2.7".parse().unwrap(), 51000,
//!     "203.0.113.10".parse().unwrap(), 80,
//!     6, // TCP
//! );
//! let backend = table.lookup(flow_hash(&flow, 0)).expect("three eligible backends");
//! assert_eq!(backend.port, 8080);
//!
//! // Each backend holds about a third of the 16381 slots.
//! for (i, target) in table.targets().iter().enumerate() {
//!     assert!((5460..=5461).contains(&table.share(i)), "{}", target.key);
//! }
//!
//! // nic-b fails its checks: only its slots move.
//! for _ in 0..3 {
//!     service.record_health("nic-b", false);
//! }
//! let newer = service.compile(0).unwrap();
//! let diff = table.diff(&newer);
//! assert_eq!(diff.changed - diff.collateral, table.share(1));
//! # let _: IpAddr = backend.addr;
//! ```

#![forbid(unsafe_code)]

pub mod affinity;
pub mod backend;
pub mod flow;
mod hash;
pub mod health;
pub mod maglev;

pub use affinity::{AffinityTable, InsertOutcome};
pub use backend::{
    Backend, BackendId, BackendKey, BackendSet, BackendSetError, BackendSpec, BackendState,
    BackendTable, Target, Tier,
};
pub use flow::{FlowKey, client_hash, flow_hash};
pub use health::{BackendHealth, HealthCheckConfig, HealthConfigError, HealthState, Transition};
pub use maglev::{
    DEFAULT_TABLE_SIZE, MaglevError, MaglevTable, TableDiff, TableSize, TableSizeError, is_prime,
    suggested_size,
};
