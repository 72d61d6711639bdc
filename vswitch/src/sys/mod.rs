//! Everything that talks to the Linux kernel: TAP devices, AF_PACKET sockets, network
//! namespaces, netlink. Code above this module uses only the safe types defined here.
//! `unsafe` in this crate appears only under `sys/`: the crate root denies `unsafe_code` and
//! allows it on this module alone. Every `unsafe` block here says why it is sound in a
//! `SAFETY` comment, and what the module exports is safe to call.
//!
//! This is the bottom layer above [`wire`](crate::wire): nothing here uses `port` or any
//! module above it. The receive batch the queues read into ([`batch::RxBatch`]) lives here
//! for that reason.

pub mod af_packet;
pub mod batch;
pub mod link;
pub mod memory;
pub mod netlink;
pub mod netns;
pub mod sched;
pub mod tap;
pub mod udp;
