//! vswitch: a userspace virtual switch and router for container hosts.
//!
//! The crate is the glue of the workspace: it owns every piece of I/O (the `vxlan` and `nat`
//! crates it builds on have none). Layering, from the bottom up: each layer uses only the
//! layers below it (`docs/architecture.md` has the map, and the dependencies that still go
//! against it):
//! - [`cost`]: per-thread tallies of what the datapath spends (system calls by kind,
//!   software checksum and segmentation bytes), counted where it is spent; it uses nothing.
//! - [`wire`]: typed zero-copy views over the packet formats we own (`virtio_net_hdr`),
//!   checksums, the IPv4 work of a router (TTL, fragmentation, ICMP errors), and GSO
//!   segmentation and GRO coalescing in software; standard protocols come from
//!   `smoltcp::wire`.
//! - [`sys`]: the kernel interfaces the ports need (TAP, AF_PACKET, the VTEP's UDP and raw
//!   sockets, namespaces, netlink) and the receive batch they read into; the only `unsafe`
//!   code in the crate (the crate denies `unsafe_code` and allows it on `sys` alone). It uses
//!   nothing above [`wire`].
//! - [`port`]: the devices the workers read and write, each with one queue per worker: a
//!   port is an attached interface (a container's TAP or veth); beside them the uplink and
//!   the VTEP (`port::vtep`, not a port: frames reach it only through `vxlan-encap`).
//! - [`tables`]: what the packet stages read and write: the configuration snapshot, learned
//!   MACs, neighbours, held packets, counter keys and event tallies, the clock, rate limits.
//! - [`pipeline`]: the packet stages, one file each, with their drop reasons (the overlay's
//!   `vxlan_input` and `vxlan_encap` among them); functions of the tables and the frame.
//! - [`runtime`]: the [`Engine`](runtime::Engine) and its worker threads, which poll the
//!   queues, run the pipeline over the batches they read and transmit by each destination's
//!   egress adjacency; the engine publishes snapshots and sums the counters.
//! - [`control`]: resources, validation, IPAM, persistence and the controller that turns
//!   resources into ports and snapshots.
//! - [`etcd`]: a client of etcd's JSON gateway (ranges, transactions, leases, watches),
//!   for the overlay's shared store; it uses nothing of the crate.
//! - [`tls`]: certificates, fingerprints and the TLS configurations of the overlay hub's
//!   registration API (used by [`control`]'s validation and by [`agent`]).
//! - [`api`] and [`cli`]: the HTTP+JSON control socket (and the handlers of the overlay
//!   hub's registration API) and `vswitchctl`.
//! - [`agent`]: the overlay agent: the hub's registration API on TCP, a runner's
//!   registration and heartbeats.

#![deny(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod control;
pub mod cost;
pub mod etcd;
pub mod pipeline;
pub mod port;
pub mod runtime;
// The one module that talks to the kernel through raw system calls and shared memory; every
// `unsafe` block in it carries a SAFETY comment, and what it exports is safe.
#[allow(unsafe_code)]
pub mod sys;
pub mod tables;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod trace;
pub mod wire;
