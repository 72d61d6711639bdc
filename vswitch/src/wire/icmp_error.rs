//! ICMPv4 error messages as a router sends them (RFC 792; RFC 1812 section 4.3.2; RFC 1191
//! for the next-hop MTU).
//!
//! ```text
//!  0        8        16                32
//! +--------+--------+-----------------+
//! |  type  |  code  |    checksum     |
//! +--------+--------+-----------------+
//! |     unused      |  next-hop MTU   |   (MTU only in "fragmentation needed", RFC 1191)
//! +-----------------+-----------------+
//! | the original IP header and as much of its data as fits in 576 bytes in all ...
//! ```
//!
//! Rules (RFC 1812):
//! - 4.3.2.3: the error quotes the original IP header and as much of the datagram as fits
//!   without the whole message exceeding 576 bytes (so at least the header and 8 bytes).
//! - 4.3.2.7: no error is sent about an ICMP error, a datagram to a broadcast or multicast
//!   address (IP or link layer), a datagram whose source is not a single host (0/8, 127/8,
//!   multicast, class E, limited broadcast), or a fragment other than the first
//!   ([`may_send_error`]). The caller also checks the subnet-directed broadcast, which only it
//!   knows.
//! - 4.3.2.5: the TOS is the original's with the precedence of internetwork control (as
//!   Linux: `(tos & 0x1e) | 0xc0`).

use core::fmt;
use std::net::Ipv4Addr;

use smoltcp::wire::{IpProtocol, Ipv4Packet};

use super::checksum;
use super::ipv4::OwnHeader;

/// An ICMP error message never exceeds this many bytes, IP header included (RFC 1812
/// 4.3.2.3).
pub const MAX_LEN: usize = 576;

/// The ICMP header before the quoted datagram.
pub const HEADER_LEN: usize = 8;

/// The TTL of messages the switch originates (Linux's default `ip_default_ttl`).
pub const DEFAULT_TTL: u8 = 64;

/// The precedence bits of "internetwork control" (RFC 791), set on ICMP errors.
const PRECEDENCE_INTERNETWORK_CONTROL: u8 = 0xc0;

/// The TOS bits of the original kept in an error (Linux's `RT_TOS`).
const TOS_MASK: u8 = 0x1e;

mod field {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const UNUSED: Range<usize> = 4..6;
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    pub const QUOTE: usize = 8;
}

/// ICMP message types (RFC 792) the switch sends or must recognise.
pub mod msg_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DESTINATION_UNREACHABLE: u8 = 3;
    /// Source quench (deprecated, still an error).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect.
    pub const REDIRECT: u8 = 5;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// The highest type Linux knows (`NR_ICMP_TYPES`); higher ones count as errors.
    pub const HIGHEST_KNOWN: u8 = 18;
}

/// True when an ICMP message of type `value` is an error, as Linux decides it: the five error
/// types, and any type it does not know (so no error is ever sent about one).
pub const fn is_error_type(value: u8) -> bool {
    matches!(
        value,
        msg_type::DESTINATION_UNREACHABLE
            | msg_type::SOURCE_QUENCH
            | msg_type::REDIRECT
            | msg_type::TIME_EXCEEDED
            | msg_type::PARAMETER_PROBLEM
    ) || value > msg_type::HIGHEST_KNOWN
}

/// Which error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Destination unreachable, code 0: no route to the network.
    NetUnreachable,
    /// Destination unreachable, code 1: the host did not answer ARP.
    HostUnreachable,
    /// Destination unreachable, code 2: the (local) protocol is not served.
    ProtocolUnreachable,
    /// Destination unreachable, code 3: no (local) listener on the port.
    PortUnreachable,
    /// Destination unreachable, code 4: DF set and larger than the next hop's MTU.
    FragmentationNeeded {
        /// The next hop's MTU (RFC 1191).
        next_hop_mtu: u16,
    },
    /// Time exceeded, code 0: TTL exceeded in transit.
    TtlExceeded,
}

impl Kind {
    /// The ICMP type.
    pub const fn msg_type(self) -> u8 {
        match self {
            Kind::TtlExceeded => msg_type::TIME_EXCEEDED,
            _ => msg_type::DESTINATION_UNREACHABLE,
        }
    }

    /// The ICMP code.
    pub const fn code(self) -> u8 {
        match self {
            Kind::NetUnreachable | Kind::TtlExceeded => 0,
            Kind::HostUnreachable => 1,
            Kind::ProtocolUnreachable => 2,
            Kind::PortUnreachable => 3,
            Kind::FragmentationNeeded { .. } => 4,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::NetUnreachable => f.write_str("net unreachable"),
            Kind::HostUnreachable => f.write_str("host unreachable"),
            Kind::ProtocolUnreachable => f.write_str("protocol unreachable"),
            Kind::PortUnreachable => f.write_str("port unreachable"),
            Kind::FragmentationNeeded { next_hop_mtu } => {
                write!(f, "fragmentation needed (mtu {next_hop_mtu})")
            }
            Kind::TtlExceeded => f.write_str("time exceeded in transit"),
        }
    }
}

/// True when a source address names a single host (RFC 1812 5.3.7): not in 0/8 or 127/8,
/// not multicast, class E or the limited broadcast.
fn is_host_source(address: Ipv4Addr) -> bool {
    let first = address.octets()[0];
    first != 0 && first != 127 && first < 224
}

/// Whether RFC 1812 4.3.2.7 lets a router send an ICMP error about `original` (an IPv4
/// packet from its header on), which arrived in a frame to a link-layer group address when
/// `link_group` is set. Packets that are not well-formed IPv4 get no error.
pub fn may_send_error(original: &[u8], link_group: bool) -> bool {
    let Ok(packet) = Ipv4Packet::new_checked(original) else {
        return false;
    };
    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    if link_group || !is_host_source(src) || dst.is_broadcast() || dst.is_multicast() {
        return false;
    }
    if packet.frag_offset() != 0 {
        return false;
    }
    if packet.next_header() == IpProtocol::Icmp {
        // A first fragment, so the ICMP type is there unless the datagram is empty.
        return match packet.payload().first() {
            Some(&kind) => !is_error_type(kind),
            None => false,
        };
    }
    true
}

/// An ICMP error about one datagram, ready to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Which error.
    pub kind: Kind,
    /// The source of the error: the gateway address on the sender's subnet.
    pub src: Ipv4Addr,
    /// The destination: the original's source.
    pub dst: Ipv4Addr,
    /// The error's IP identification.
    pub ident: u16,
    /// The error's TOS octet.
    pub tos: u8,
}

impl Repr {
    /// The error `kind` about `original` (a well-formed IPv4 packet from its header on), from
    /// `src`, back to the original's source. `None` when `original` is not well-formed.
    pub fn about(kind: Kind, src: Ipv4Addr, ident: u16, original: &[u8]) -> Option<Repr> {
        let packet = Ipv4Packet::new_checked(original).ok()?;
        let tos = (packet.dscp() << 2 | packet.ecn()) & TOS_MASK | PRECEDENCE_INTERNETWORK_CONTROL;
        Some(Repr {
            kind,
            src,
            dst: packet.src_addr(),
            ident,
            tos,
        })
    }

    /// How many bytes of an original datagram of `original_len` bytes are quoted.
    pub const fn quote_len(original_len: usize) -> usize {
        let room = MAX_LEN - OwnHeader::LEN - HEADER_LEN;
        if original_len < room {
            original_len
        } else {
            room
        }
    }

    /// The length of the emitted message (IP header included) about an original datagram of
    /// `original_len` bytes (its total length, without link-layer padding).
    pub const fn buffer_len(original_len: usize) -> usize {
        OwnHeader::LEN + HEADER_LEN + Self::quote_len(original_len)
    }

    /// Writes the IPv4 header, the ICMP header and the quote of `original` (the datagram from
    /// its IP header to its total length) at the start of `buf`; returns the length written,
    /// or `None` (nothing written) when `buf` is shorter than
    /// [`buffer_len`](Repr::buffer_len).
    pub fn emit(&self, original: &[u8], buf: &mut [u8]) -> Option<usize> {
        let quote = &original[..Self::quote_len(original.len())];
        let icmp_len = HEADER_LEN + quote.len();
        let len = OwnHeader::LEN + icmp_len;
        let out = buf.get_mut(..len)?;
        let header = OwnHeader {
            src: self.src,
            dst: self.dst,
            protocol: IpProtocol::Icmp,
            payload_len: icmp_len,
            ident: self.ident,
            tos: self.tos,
            ttl: DEFAULT_TTL,
        };
        if !header.emit(out) {
            return None;
        }
        let icmp = &mut out[OwnHeader::LEN..];
        icmp[field::TYPE] = self.kind.msg_type();
        icmp[field::CODE] = self.kind.code();
        icmp[field::CHECKSUM].fill(0);
        icmp[field::UNUSED].fill(0);
        let mtu = match self.kind {
            Kind::FragmentationNeeded { next_hop_mtu } => next_hop_mtu,
            _ => 0,
        };
        icmp[field::NEXT_HOP_MTU].copy_from_slice(&mtu.to_be_bytes());
        icmp[field::QUOTE..].copy_from_slice(quote);
        let sum = checksum::checksum(icmp);
        icmp[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 172.30.0.2 -> 10.9.0.2, UDP 40000 -> 33434 (traceroute's first port), TTL 1, 12 bytes
    /// of data, as traceroute sends it.
    static UDP_TTL1: [u8; 40] = [
        0x45, 0x00, 0x00, 0x28, 0xab, 0xcd, 0x00, 0x00, 0x01, 0x11, 0x00, 0x00, 172, 30, 0, 2, 10,
        9, 0, 2, // IPv4 (checksum left 0: not checked here)
        0x9c, 0x40, 0x82, 0x9a, 0x00, 0x14, 0x00, 0x00, // UDP
        b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i', b'j', b'k', b'l',
    ];

    fn with(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out[at..at + value.len()].copy_from_slice(value);
        out
    }

    #[test]
    fn time_exceeded_bytes() {
        let gateway = Ipv4Addr::new(172, 30, 0, 1);
        let repr = Repr::about(Kind::TtlExceeded, gateway, 7, &UDP_TTL1).unwrap();
        assert_eq!(repr.dst, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(repr.tos, 0xc0);
        let mut buf = [0u8; 100];
        let len = repr.emit(&UDP_TTL1, &mut buf).unwrap();
        assert_eq!(len, Repr::buffer_len(UDP_TTL1.len()));
        assert_eq!(len, 20 + 8 + 40);
        let mut expected = vec![
            0x45, 0xc0, 0x00, 0x44, 0x00, 0x07, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 172, 30, 0, 1,
            172, 30, 0, 2, // IPv4
            11, 0, 0x00, 0x00, 0, 0, 0, 0, // ICMP time exceeded
        ];
        expected.extend_from_slice(&UDP_TTL1);
        let ip_sum = checksum::checksum(&expected[..20]);
        expected[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let icmp_sum = checksum::checksum(&expected[20..]);
        expected[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
        assert_eq!(&buf[..len], &expected[..]);
        assert_eq!(
            checksum::sum(&buf[20..len]),
            0xffff,
            "ICMP checksum verifies"
        );
    }

    #[test]
    fn fragmentation_needed_carries_the_mtu() {
        let repr = Repr::about(
            Kind::FragmentationNeeded { next_hop_mtu: 1500 },
            Ipv4Addr::new(172, 30, 0, 1),
            0,
            &UDP_TTL1,
        )
        .unwrap();
        let mut buf = [0u8; 100];
        let len = repr.emit(&UDP_TTL1, &mut buf).unwrap();
        assert_eq!(&buf[20..24], &[3, 4, buf[22], buf[23]]);
        assert_eq!(&buf[24..28], &[0, 0, 0x05, 0xdc]);
        assert_eq!(&buf[28..len], &UDP_TTL1[..]);
    }

    #[test]
    fn quote_stops_at_576_bytes() {
        let mut big = vec![0u8; 1500];
        big[..20].copy_from_slice(&UDP_TTL1[..20]);
        big[2..4].copy_from_slice(&1500u16.to_be_bytes());
        let repr = Repr::about(Kind::NetUnreachable, Ipv4Addr::LOCALHOST, 0, &big).unwrap();
        let mut buf = vec![0u8; 2000];
        let len = repr.emit(&big, &mut buf).unwrap();
        assert_eq!(len, MAX_LEN);
        assert_eq!(Repr::quote_len(1500), 548);
        assert_eq!(Repr::quote_len(28), 28, "header and 8 bytes");
        assert_eq!(repr.emit(&big, &mut buf[..575]), None, "short buffer");
    }

    #[test]
    fn tos_keeps_the_original_tos_bits() {
        let original = with(&UDP_TTL1, 1, &[0xb9]);
        let repr = Repr::about(Kind::NetUnreachable, Ipv4Addr::LOCALHOST, 0, &original).unwrap();
        assert_eq!(repr.tos, 0xc0 | (0xb9 & 0x1e));
    }

    #[test]
    fn kinds_map_to_type_and_code() {
        let kinds = [
            (Kind::NetUnreachable, 3, 0),
            (Kind::HostUnreachable, 3, 1),
            (Kind::ProtocolUnreachable, 3, 2),
            (Kind::PortUnreachable, 3, 3),
            (Kind::FragmentationNeeded { next_hop_mtu: 9000 }, 3, 4),
            (Kind::TtlExceeded, 11, 0),
        ];
        for (kind, kind_type, code) in kinds {
            assert_eq!((kind.msg_type(), kind.code()), (kind_type, code), "{kind}");
        }
    }

    #[test]
    fn suppression_rules() {
        assert!(may_send_error(&UDP_TTL1, false));
        assert!(!may_send_error(&UDP_TTL1, true), "link-layer broadcast");
        for source in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [240, 0, 0, 1],
        ] {
            let original = with(&UDP_TTL1, 12, &source);
            assert!(!may_send_error(&original, false), "source {source:?}");
        }
        for destination in [[255, 255, 255, 255], [239, 1, 2, 3]] {
            let original = with(&UDP_TTL1, 16, &destination);
            assert!(!may_send_error(&original, false), "dest {destination:?}");
        }
        // A non-first fragment (offset 8 bytes) gets nothing; a first fragment (MF) does.
        assert!(!may_send_error(&with(&UDP_TTL1, 6, &[0x00, 0x01]), false));
        assert!(may_send_error(&with(&UDP_TTL1, 6, &[0x20, 0x00]), false));
        // ICMP: echo requests get errors, errors and unknown types do not.
        let icmp = with(&UDP_TTL1, 9, &[1]);
        for (kind, allowed) in [
            (8, true),
            (0, true),
            (13, true),
            (3, false),
            (4, false),
            (5, false),
            (11, false),
            (12, false),
            (42, false),
        ] {
            let original = with(&icmp, 20, &[kind]);
            assert_eq!(
                may_send_error(&original, false),
                allowed,
                "ICMP type {kind}"
            );
        }
        // An empty ICMP datagram, or bytes that are not IPv4.
        let mut empty = icmp[..20].to_vec();
        empty[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert!(!may_send_error(&empty, false));
        assert!(!may_send_error(&UDP_TTL1[..10], false));
    }
}
