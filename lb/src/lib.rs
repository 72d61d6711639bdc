//! Maglev consistent hashing and backend sets for virtual IPs; no I/O.
//!
//! - [`maglev`]: [`MaglevTable`], the consistent-hashing lookup table of Eisenbud et al.,
//!   "Maglev: A Fast and Reliable Software Network Load Balancer" (NSDI 2016, §3.4), with
//!   weights, and its [`TableSize`].

#![forbid(unsafe_code)]

mod hash;
pub mod maglev;

pub use maglev::{
    DEFAULT_TABLE_SIZE, MaglevError, MaglevTable, TableDiff, TableSize, TableSizeError, is_prime,
    suggested_size,
};
