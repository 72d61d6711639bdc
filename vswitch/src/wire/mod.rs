//! Typed views over the packet formats we own, in the shape of `smoltcp::wire`.
//!
//! Standard protocols (Ethernet, ARP, IPv4, IPv6, UDP, TCP, ICMP) are parsed with
//! `smoltcp::wire`; only formats smoltcp does not know live here, plus the checksum helpers the
//! datapath needs (completing partial checksums left by the kernel, RFC 1624 updates), the
//! IPv4 work of a router (TTL, fragmentation) and ICMP error messages.

pub mod checksum;
pub mod gro;
pub mod gso;
pub mod icmp_error;
pub mod ipv4;
pub mod ipv6;
pub mod pcap;
pub mod vnet_hdr;

pub use checksum::ChecksumError;
pub use icmp_error::{Kind as IcmpErrorKind, Repr as IcmpErrorRepr};
pub use ipv4::{FragmentError as Ipv4FragmentError, Fragmenter as Ipv4Fragmenter};
pub use vnet_hdr::HEADER_LEN as VNET_HDR_LEN;
pub use vnet_hdr::{
    Checksum as VnetChecksum, Error as VnetError, Gso as VnetGso, GsoKind as VnetGsoKind,
    Packet as VnetPacket, Repr as VnetRepr,
};
