//! Maglev consistent hashing and backend sets for virtual IPs; no I/O.
//!
//! - [`maglev`]: [`MaglevTable`], the consistent-hashing lookup table of Eisenbud et al.,
//!   "Maglev: A Fast and Reliable Software Network Load Balancer" (NSDI 2016, §3.4), with
//!   weights, and its [`TableSize`].
//! - [`flow`]: [`FlowKey`] and [`flow_hash`], the per-packet hash (IPv4 and IPv6), and
//!   [`client_hash`] over the source address alone for ClientIP affinity.

#![forbid(unsafe_code)]

pub mod flow;
mod hash;
pub mod maglev;

pub use flow::{FlowKey, client_hash, flow_hash};
pub use maglev::{
    DEFAULT_TABLE_SIZE, MaglevError, MaglevTable, TableDiff, TableSize, TableSizeError, is_prime,
    suggested_size,
};
