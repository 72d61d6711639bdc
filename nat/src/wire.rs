//! Byte offsets of the header fields NAT reads and rewrites, and guarded accessors.
//!
//! The outer packet is validated with smoltcp's checked views (see `packet.rs`). The header
//! quoted inside an ICMP error is usually *truncated* (RFC 792 quotes the IP header and the
//! first 8 bytes of its payload), which smoltcp's `check_len` rightly refuses; so the rewrite
//! code addresses fields through these named ranges and the accessors below, which return
//! `None` instead of panicking when a field lies outside the buffer.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// IPv4 header fields (RFC 791).
pub(crate) mod ipv4 {
    use std::ops::Range;

    /// Version (high nibble) and IHL (low nibble).
    pub const VER_IHL: usize = 0;
    /// Flags and fragment offset.
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    /// The transport protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Range<usize> = 10..12;
    /// Source address.
    pub const SRC: Range<usize> = 12..16;
    /// Destination address.
    pub const DST: Range<usize> = 16..20;
    /// The shortest header (IHL 5).
    pub const MIN_HEADER_LEN: usize = 20;
    /// Fragment offset mask, in `FLAGS_FRAG`.
    pub const OFFSET_MASK: u16 = 0x1fff;
}

/// IPv6 header fields (RFC 8200).
pub(crate) mod ipv6 {
    use std::ops::Range;

    /// Payload length (everything after the fixed header).
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    /// The first next-header value.
    pub const NEXT_HEADER: usize = 6;
    /// Source address.
    pub const SRC: Range<usize> = 8..24;
    /// Destination address.
    pub const DST: Range<usize> = 24..40;
    /// The fixed header.
    pub const HEADER_LEN: usize = 40;

    /// Hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing header.
    pub const ROUTING: u8 = 43;
    /// Fragment header.
    pub const FRAGMENT: u8 = 44;
    /// Destination options.
    pub const DESTINATION: u8 = 60;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// The most extension headers walked before the transport header: Linux's
    /// `ipv6_skip_exthdr` has no limit, but a chain longer than this is an attack, not a
    /// packet (RFC 8200 section 4.1 lists at most one of each, two destination options).
    pub const MAX_EXTENSION_HEADERS: usize = 8;
}

/// ICMPv6 fields and types (RFC 4443): the same layout as ICMP's, other numbers, and a
/// checksum that covers the IPv6 pseudo-header.
pub(crate) mod icmpv6 {
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
}

/// Ports, shared by TCP and UDP (RFC 793, RFC 768).
pub(crate) mod ports {
    use std::ops::Range;

    /// Source port.
    pub const SRC: Range<usize> = 0..2;
    /// Destination port.
    pub const DST: Range<usize> = 2..4;
}

/// TCP fields beyond the ports.
pub(crate) mod tcp {
    use std::ops::Range;

    /// Checksum.
    pub const CHECKSUM: Range<usize> = 16..18;
}

/// UDP fields beyond the ports.
pub(crate) mod udp {
    use std::ops::Range;

    /// Checksum (zero: none, RFC 768).
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// ICMP fields (RFC 792).
pub(crate) mod icmp {
    use std::ops::Range;

    /// Message type.
    pub const TYPE: usize = 0;
    /// Checksum (over the whole ICMP message, no pseudo-header).
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Echo identifier.
    pub const IDENT: Range<usize> = 4..6;
    /// The fixed header; an error's quoted packet starts here.
    pub const HEADER_LEN: usize = 8;

    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 12;
}

/// How many bytes of transport header an ICMP error must quote for us to translate it: the
/// ports (or the echo identifier) lie in the first 8 bytes (RFC 792, RFC 5508 section 7).
pub(crate) const QUOTED_TRANSPORT_MIN: usize = 8;

/// The big-endian `u16` at `range`, if it lies inside `buf`.
#[inline]
pub(crate) fn read_u16(buf: &[u8], range: Range<usize>) -> Option<u16> {
    match buf.get(range)? {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// The IPv4 address at `range`, if it lies inside `buf`.
#[inline]
pub(crate) fn read_addr(buf: &[u8], range: Range<usize>) -> Option<Ipv4Addr> {
    match buf.get(range)? {
        [a, b, c, d] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

/// Writes `value` at `range` when it lies inside `buf`; returns whether it did.
#[inline]
pub(crate) fn write_u16(buf: &mut [u8], range: Range<usize>, value: u16) -> bool {
    match buf.get_mut(range) {
        Some(field) if field.len() == 2 => {
            field.copy_from_slice(&value.to_be_bytes());
            true
        }
        _ => false,
    }
}

/// The IPv6 address at `range`, if it lies inside `buf`.
#[inline]
pub(crate) fn read_addr6(buf: &[u8], range: Range<usize>) -> Option<Ipv6Addr> {
    let bytes: [u8; 16] = buf.get(range)?.try_into().ok()?;
    Some(Ipv6Addr::from(bytes))
}

/// Writes `value` at `range` when it lies inside `buf`; returns whether it did.
#[inline]
pub(crate) fn write_addr6(buf: &mut [u8], range: Range<usize>, value: Ipv6Addr) -> bool {
    match buf.get_mut(range) {
        Some(field) if field.len() == 16 => {
            field.copy_from_slice(&value.octets());
            true
        }
        _ => false,
    }
}

/// Writes `value` at `range` when it lies inside `buf`; returns whether it did.
#[inline]
pub(crate) fn write_addr(buf: &mut [u8], range: Range<usize>, value: Ipv4Addr) -> bool {
    match buf.get_mut(range) {
        Some(field) if field.len() == 4 => {
            field.copy_from_slice(&value.octets());
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_refuse_out_of_range_fields() {
        let mut buf = [0u8; 5];
        assert_eq!(read_u16(&buf, 4..6), None);
        assert_eq!(read_addr(&buf, 2..6), None);
        assert!(!write_u16(&mut buf, 4..6, 1));
        assert!(!write_addr(&mut buf, 2..6, Ipv4Addr::LOCALHOST));
        assert_eq!(buf, [0; 5]);
    }

    #[test]
    fn accessors_read_and_write_big_endian() {
        let mut buf = [0u8; 8];
        assert!(write_u16(&mut buf, 2..4, 0xabcd));
        assert_eq!(buf[2..4], [0xab, 0xcd]);
        assert_eq!(read_u16(&buf, 2..4), Some(0xabcd));
        assert!(write_addr(&mut buf, 4..8, Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(read_addr(&buf, 4..8), Some(Ipv4Addr::new(1, 2, 3, 4)));
    }
}
