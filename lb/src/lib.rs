//! Maglev consistent hashing and backend sets for virtual IPs; no I/O.
//!
//! - [`maglev`]: [`MaglevTable`], the consistent-hashing lookup table of Eisenbud et al.,
//!   "Maglev: A Fast and Reliable Software Network Load Balancer" (NSDI 2016, §3.4), with
//!   weights, and its [`TableSize`].
//! - [`flow`]: [`FlowKey`] and [`flow_hash`], the per-packet hash (IPv4 and IPv6), and
//!   [`client_hash`] over the source address alone for ClientIP affinity.
//! - [`backend`]: [`BackendSet`], one service's backends (identity, address, port, weight,
//!   active/draining, health), compiled by [`BackendSet::compile`] into a [`BackendTable`]
//!   for the datapath.
//! - [`affinity`]: [`AffinityTable`], the sharded ClientIP session-affinity table shared by
//!   the workers.
//! - [`health`]: [`BackendHealth`], the Unknown/Healthy/Unhealthy machine with rise/fall
//!   thresholds, and [`HealthCheckConfig`] with its validation.

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
