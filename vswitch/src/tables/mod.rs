//! The tables the packet stages read and write: the configuration snapshot, learned MACs,
//! neighbours, held packets, counter keys and event tallies, the clock and rate limits.
//!
//! They sit below `pipeline`, which uses them, and above [`port`](crate::port), whose ids and
//! queues the snapshot names; nothing here uses the pipeline or the runtime that drives it.
//! The runtime owns the shared tables ([`fdb::Fdb`], [`neigh::Neighbors`]) and hands them to
//! the stages with each batch; the per-worker ones ([`held::HeldQueue`],
//! [`counters::EventTally`]) live in each worker's pipeline state.

pub mod bond;
pub mod clock;
pub mod counters;
pub mod dhcp;
pub mod fdb;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod held;
pub mod neigh;
pub mod policy;
pub mod ratelimit;
pub mod snapshot;
