//! vswitch: a userspace virtual switch and router for container hosts.
//!
//! The crate is the glue of the workspace: it owns every piece of I/O. Layering, from the
//! bottom up:
//! - [`wire`]: typed zero-copy views over packet bytes for the codecs we own (`virtio_net_hdr`);
//!   standard protocols come from `smoltcp::wire`.
//! - [`sys`]: the only place that talks to the kernel (TAP, AF_PACKET, namespaces, netlink).
//! - [`port`]: a port is an attached interface; it owns one queue per worker.
//! - [`pipeline`]: the packet stages, one file each, with their drop reasons.
//! - [`engine`]: worker threads, the configuration snapshot, learned MACs and counters.
//! - [`control`]: resources, validation, IPAM, persistence and the controller that turns
//!   resources into ports and snapshots.
//! - [`api`] and [`cli`]: the HTTP+JSON control socket and `vswitchctl`.
//! - [`agent`]: the overlay agent: the hub's registration API on TCP, a runner's
//!   registration and heartbeats.

pub mod agent;
pub mod api;
pub mod cli;
pub mod control;
pub mod engine;
pub mod pipeline;
pub mod port;
pub mod sys;
#[cfg(test)]
mod testing;
pub mod wire;
