//! Everything that talks to the Linux kernel: TAP devices, AF_PACKET sockets, network
//! namespaces, netlink. Code above this module uses only the safe types defined here.
//! `unsafe` in this crate appears only under `sys/`.

pub mod af_packet;
pub mod netlink;
pub mod netns;
pub mod tap;
pub mod udp;
