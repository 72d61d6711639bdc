//! Byte offsets of the header fields NAT reads and rewrites, and guarded accessors.
//!
//! The outer packet is validated with smoltcp's checked views (see `packet.rs`). The header
//! quoted inside an ICMP error is usually *truncated* (RFC 792 quotes the IP header and the
//! first 8 bytes of its payload), which smoltcp's `check_len` rightly refuses; so the rewrite
//! code addresses fields through these named ranges and the accessors below, which return
//! `None` instead of panicking when a field lies outside the buffer.

use std::net::Ipv4Addr;
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
