//! Typed views over the packet formats we own, in the shape of `smoltcp::wire`.
//!
//! Standard protocols (Ethernet, ARP, IPv4, IPv6, UDP, TCP, ICMP) are parsed with
//! `smoltcp::wire`; only formats smoltcp does not know live here.

pub mod vnet_hdr;

pub use vnet_hdr::HEADER_LEN as VNET_HDR_LEN;
