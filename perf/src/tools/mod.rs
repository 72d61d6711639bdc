//! The measuring tools the scenarios drive, and the plumbing they share.
//!
//! `cmd` runs every external command (bounded in time, logged for README.SETUP);
//! `iperf` drives iperf3 for TCP throughput; `udp` is our own 64-byte packet-rate sender
//! and counting receiver; `latency` our own UDP ping-pong; `connrate` our own short TCP
//! connections for new connections per second; `cpu` reads /proc for CPU
//! accounting; `flows` and `macs` fill conntrack and MAC tables; `datapath` reads vswitchd's own accounting (system calls, wake-ups, software
//! checksums and segmentation); `vswitchd` starts the daemon and talks to it through vswitchctl; `ovs` starts
//! Open vSwitch's userspace datapath for the optional third column; `profile` records where
//! the machine's time goes (`--profile`); `sys` holds the only
//! `unsafe` code of the crate (raw `sendmmsg`/`recvmmsg` and `sigaction`).

pub mod cmd;
pub mod connrate;
pub mod cpu;
pub mod datapath;
pub mod endpoints;
pub mod flows;
pub mod iperf;
pub mod latency;
pub mod macs;
pub mod overlay_sim;
pub mod ovs;
pub mod profile;
#[allow(unsafe_code)]
pub mod sys;
pub mod udp;
pub mod vswitchd;
