//! Reading a packet's flow identity: IPv4 or IPv6 bytes -> [`PacketInfo`].
//!
//! The input is an IP packet starting at its header (no Ethernet, no virtio header); the
//! version nibble says which. Bytes past the IPv4 total length or the IPv6 payload length
//! (Ethernet padding) are ignored. Checksums are *not* verified: the port that received the
//! frame knows whether they are complete, partial or already validated, and NAT keeps them
//! consistent either way (see `translate.rs`).
//!
//! Rules enforced, each with its own [`ParseError`]:
//! - IPv4: IHL >= 5, header and total length inside the buffer (smoltcp `check_len`); IPv6:
//!   the fixed header and the payload length inside the buffer, and the extension headers
//!   (hop-by-hop, routing, destination options) walked to the transport header, at most
//!   [`MAX_EXTENSION_HEADERS`](crate::wire::ipv6::MAX_EXTENSION_HEADERS) of them, each inside
//!   the packet;
//! - not a fragment (IPv4 offset or MF, any IPv6 fragment header): conntrack needs the ports
//!   of every packet, which only the first fragment carries (Linux reassembles before
//!   conntrack for the same reason);
//! - TCP, UDP, ICMP (IPv4) or ICMPv6 (IPv6), with a complete transport header (TCP: data
//!   offset honoured; UDP: length field inside the packet);
//! - ICMP: echo request/reply, or an error (destination unreachable, time exceeded, parameter
//!   problem; over IPv6 also packet too big) that quotes an unfragmented header of the same
//!   family plus at least 8 bytes of a TCP, UDP or echo header (RFC 5508 section 7, RFC 4443
//!   section 2.4). Errors about errors are not translated: no host sends one (RFC 1122 3.2.2,
//!   RFC 4443 2.4(e)), and Linux conntrack refuses them too. Other ICMPv6 (neighbour
//!   discovery, MLD) is link-local and never crosses a NAT.

use std::net::IpAddr;

use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};

use crate::tcp::TcpFlags;
use crate::tuple::{Protocol, Tuple};
use crate::wire::{self, icmp, icmpv6, ipv4, ipv6, ports};

/// Whether an ICMP echo packet asks or answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EchoKind {
    /// Echo request (ICMP type 8, ICMPv6 type 128).
    Request,
    /// Echo reply (ICMP type 0, ICMPv6 type 129).
    Reply,
}

/// What kind of packet it is, as far as conntrack cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// TCP, with its flags.
    Tcp(TcpFlags),
    /// UDP.
    Udp,
    /// ICMP echo request or reply.
    IcmpEcho(EchoKind),
    /// An ICMP error about a packet of a tracked flow. Its [`PacketInfo::tuple`] is the
    /// *lookup* tuple: the reversal of the quoted packet's tuple, i.e. the tuple a packet of
    /// that flow going the same way as the error would carry.
    IcmpError,
}

/// A parsed packet's flow identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    /// The tuple to look conntrack up with (for ICMP errors, see [`PacketKind::IcmpError`]).
    pub tuple: Tuple,
    /// The kind of packet.
    pub kind: PacketKind,
}

/// Why a packet cannot be tracked. Each maps to one drop counter in the datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// The buffer is shorter than the IP header or the length it gives, or IHL < 5.
    #[error("truncated or malformed IP header")]
    Truncated,
    /// The version field is neither 4 nor 6.
    #[error("neither an IPv4 nor an IPv6 packet")]
    NotIp,
    /// A fragment: only the first one carries ports.
    #[error("IP fragment (conntrack needs reassembled packets)")]
    Fragment,
    /// An IPv6 extension header cut short, or more of them than a packet needs.
    #[error("IPv6 extension headers truncated or chained too long")]
    ExtensionHeaders,
    /// Neither TCP, UDP nor ICMP (ICMPv6 over IPv6).
    #[error("untracked IP protocol {0}")]
    UnsupportedProtocol(u8),
    /// The TCP, UDP or ICMP header is cut short.
    #[error("truncated transport header")]
    TruncatedTransport,
    /// An ICMP message that is neither echo nor a translatable error.
    #[error("untracked ICMP type {0}")]
    UnsupportedIcmp(u8),
    /// An ICMP error whose quoted packet is too short, of the other family, a later
    /// fragment, or of an untracked protocol.
    #[error("ICMP error with an unusable quoted packet")]
    MalformedIcmpError,
}

impl ParseError {
    /// The stable counter key (`nat.<reason>`).
    pub const fn key(self) -> &'static str {
        match self {
            ParseError::Truncated => "nat.truncated",
            ParseError::NotIp => "nat.not_ip",
            ParseError::Fragment => "nat.fragment",
            ParseError::ExtensionHeaders => "nat.extension_headers",
            ParseError::UnsupportedProtocol(_) => "nat.unsupported_protocol",
            ParseError::TruncatedTransport => "nat.truncated_transport",
            ParseError::UnsupportedIcmp(_) => "nat.unsupported_icmp",
            ParseError::MalformedIcmpError => "nat.malformed_icmp_error",
        }
    }
}

/// The pieces of a validated packet that the rewrite code needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Where the transport header starts.
    pub l4_offset: usize,
    /// Where the packet ends (the IPv4 total length, or 40 + the IPv6 payload length).
    pub end: usize,
    /// The protocol.
    pub protocol: Protocol,
    /// IPv6 (else IPv4).
    pub v6: bool,
}

/// Validates the IP header (and IPv6 extension headers) of `packet` and returns where
/// things are.
pub(crate) fn layout(packet: &[u8]) -> Result<Layout, ParseError> {
    match packet.first().ok_or(ParseError::Truncated)? >> 4 {
        4 => layout4(packet),
        6 => layout6(packet),
        _ => Err(ParseError::NotIp),
    }
}

fn layout4(packet: &[u8]) -> Result<Layout, ParseError> {
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| ParseError::Truncated)?;
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(ParseError::Fragment);
    }
    let protocol = match ip.next_header() {
        IpProtocol::Tcp => Protocol::Tcp,
        IpProtocol::Udp => Protocol::Udp,
        IpProtocol::Icmp => Protocol::Icmp,
        other => return Err(ParseError::UnsupportedProtocol(u8::from(other))),
    };
    Ok(Layout {
        l4_offset: usize::from(ip.header_len()),
        end: usize::from(ip.total_len()),
        protocol,
        v6: false,
    })
}

fn layout6(packet: &[u8]) -> Result<Layout, ParseError> {
    let payload = wire::read_u16(packet, ipv6::PAYLOAD_LEN).ok_or(ParseError::Truncated)?;
    let end = ipv6::HEADER_LEN + usize::from(payload);
    let packet = packet.get(..end).ok_or(ParseError::Truncated)?;
    let (next, l4_offset) = walk_extensions(packet, packet[ipv6::NEXT_HEADER], false)?;
    let protocol = match next {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        ipv6::ICMPV6 => Protocol::Icmp,
        other => return Err(ParseError::UnsupportedProtocol(other)),
    };
    Ok(Layout {
        l4_offset,
        end,
        protocol,
        v6: true,
    })
}

/// Walks the IPv6 extension headers of `packet` (starting at its fixed header) from the
/// first next-header value `next`; returns the transport protocol number and where its
/// header starts. A fragment header is refused ([`ParseError::Fragment`]), unless `quoted`
/// (the packet an ICMPv6 error quotes) and it is a first fragment, whose ports are there.
fn walk_extensions(packet: &[u8], mut next: u8, quoted: bool) -> Result<(u8, usize), ParseError> {
    let bad = if quoted {
        ParseError::MalformedIcmpError
    } else {
        ParseError::ExtensionHeaders
    };
    let mut offset = ipv6::HEADER_LEN;
    let mut walked = 0;
    loop {
        let is_extension = matches!(
            next,
            ipv6::HOP_BY_HOP | ipv6::ROUTING | ipv6::DESTINATION | ipv6::FRAGMENT
        );
        if !is_extension {
            return Ok((next, offset));
        }
        if next == ipv6::FRAGMENT && !quoted {
            return Err(ParseError::Fragment);
        }
        if walked == ipv6::MAX_EXTENSION_HEADERS {
            return Err(bad);
        }
        walked += 1;
        // Every extension header is a multiple of 8 bytes, the first 8 always present.
        let header = packet.get(offset..offset + 8).ok_or(bad)?;
        // A routing header with segments left: the transport checksum covers the final
        // destination, not the one in the header; rewriting it would corrupt the checksum.
        if next == ipv6::ROUTING && header[3] != 0 {
            return Err(bad);
        }
        let len = if next == ipv6::FRAGMENT {
            // A quoted first fragment (offset 0) still has the ports after this header.
            if u16::from_be_bytes([header[2], header[3]]) & 0xfff8 != 0 {
                return Err(bad);
            }
            8
        } else {
            (usize::from(header[1]) + 1) * 8
        };
        next = header[0];
        offset += len;
        if offset > packet.len() {
            return Err(bad);
        }
    }
}

/// Reads the flow identity of an IPv4 or IPv6 packet.
///
/// # Errors
/// A [`ParseError`] naming the first rule the packet breaks (see the module doc).
pub fn parse(packet: &[u8]) -> Result<PacketInfo, ParseError> {
    let layout = layout(packet)?;
    // `layout` checked that the header and the length it gives lie inside the buffer.
    let packet = &packet[..layout.end];
    let (src, dst) = if layout.v6 {
        (
            wire::read_addr6(packet, ipv6::SRC).map(IpAddr::V6),
            wire::read_addr6(packet, ipv6::DST).map(IpAddr::V6),
        )
    } else {
        (
            wire::read_addr(packet, ipv4::SRC).map(IpAddr::V4),
            wire::read_addr(packet, ipv4::DST).map(IpAddr::V4),
        )
    };
    let (Some(src), Some(dst)) = (src, dst) else {
        return Err(ParseError::Truncated);
    };
    let l4 = packet
        .get(layout.l4_offset..)
        .ok_or(ParseError::TruncatedTransport)?;
    match layout.protocol {
        Protocol::Tcp => {
            let tcp = TcpPacket::new_checked(l4).map_err(|_| ParseError::TruncatedTransport)?;
            let flags = l4.get(13).copied().ok_or(ParseError::TruncatedTransport)?;
            Ok(PacketInfo {
                tuple: Tuple {
                    protocol: Protocol::Tcp,
                    src,
                    dst,
                    src_port: tcp.src_port(),
                    dst_port: tcp.dst_port(),
                },
                kind: PacketKind::Tcp(TcpFlags(flags)),
            })
        }
        Protocol::Udp => {
            let udp = UdpPacket::new_checked(l4).map_err(|_| ParseError::TruncatedTransport)?;
            Ok(PacketInfo {
                tuple: Tuple {
                    protocol: Protocol::Udp,
                    src,
                    dst,
                    src_port: udp.src_port(),
                    dst_port: udp.dst_port(),
                },
                kind: PacketKind::Udp,
            })
        }
        Protocol::Icmp => parse_icmp(l4, src, dst, layout.v6),
    }
}

/// The ICMP (or ICMPv6) type numbers that matter here, per family.
struct IcmpTypes {
    echo_request: u8,
    echo_reply: u8,
    errors: &'static [u8],
}

const ICMP_TYPES: IcmpTypes = IcmpTypes {
    echo_request: icmp::ECHO_REQUEST,
    echo_reply: icmp::ECHO_REPLY,
    errors: &[
        icmp::DST_UNREACHABLE,
        icmp::TIME_EXCEEDED,
        icmp::PARAM_PROBLEM,
    ],
};

const ICMPV6_TYPES: IcmpTypes = IcmpTypes {
    echo_request: icmpv6::ECHO_REQUEST,
    echo_reply: icmpv6::ECHO_REPLY,
    errors: &[
        icmpv6::DST_UNREACHABLE,
        icmpv6::PACKET_TOO_BIG,
        icmpv6::TIME_EXCEEDED,
        icmpv6::PARAM_PROBLEM,
    ],
};

const fn icmp_types(v6: bool) -> &'static IcmpTypes {
    if v6 { &ICMPV6_TYPES } else { &ICMP_TYPES }
}

/// Which echo an ICMP (`v6`: ICMPv6) type is, if any.
pub(crate) fn echo_kind(kind: u8, v6: bool) -> Option<EchoKind> {
    let types = icmp_types(v6);
    if kind == types.echo_request {
        Some(EchoKind::Request)
    } else if kind == types.echo_reply {
        Some(EchoKind::Reply)
    } else {
        None
    }
}

fn parse_icmp(l4: &[u8], src: IpAddr, dst: IpAddr, v6: bool) -> Result<PacketInfo, ParseError> {
    if l4.len() < icmp::HEADER_LEN {
        return Err(ParseError::TruncatedTransport);
    }
    let kind = l4[icmp::TYPE];
    if let Some(echo) = echo_kind(kind, v6) {
        let ident = wire::read_u16(l4, icmp::IDENT).ok_or(ParseError::TruncatedTransport)?;
        let (src_port, dst_port) = match echo {
            EchoKind::Request => (ident, 0),
            EchoKind::Reply => (0, ident),
        };
        return Ok(PacketInfo {
            tuple: Tuple {
                protocol: Protocol::Icmp,
                src,
                dst,
                src_port,
                dst_port,
            },
            kind: PacketKind::IcmpEcho(echo),
        });
    }
    if icmp_types(v6).errors.contains(&kind) {
        let quoted = quoted(&l4[icmp::HEADER_LEN..], v6)?;
        return Ok(PacketInfo {
            tuple: quoted.tuple.reversed(),
            kind: PacketKind::IcmpError,
        });
    }
    Err(ParseError::UnsupportedIcmp(kind))
}

/// The packet quoted in an ICMP error, as far as NAT needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quoted {
    /// Its tuple, as it was sent.
    pub tuple: Tuple,
    /// Where its transport header starts (after the IPv4 header, or the IPv6 header and its
    /// extension headers).
    pub header_len: usize,
    /// For a quoted ICMP echo, which kind.
    pub echo: Option<EchoKind>,
}

/// Parses the quoted packet of an ICMP error (`data` starts at the quoted IP header, which
/// must be of the error's own family: `v6`).
pub(crate) fn quoted(data: &[u8], v6: bool) -> Result<Quoted, ParseError> {
    let bad = ParseError::MalformedIcmpError;
    let (src, dst, number, header_len) = if v6 {
        if data.len() < ipv6::HEADER_LEN || data[0] >> 4 != 6 {
            return Err(bad);
        }
        let (number, header_len) = walk_extensions(data, data[ipv6::NEXT_HEADER], true)?;
        let src = IpAddr::V6(wire::read_addr6(data, ipv6::SRC).ok_or(bad)?);
        let dst = IpAddr::V6(wire::read_addr6(data, ipv6::DST).ok_or(bad)?);
        (src, dst, number, header_len)
    } else {
        if data.len() < ipv4::MIN_HEADER_LEN {
            return Err(bad);
        }
        let ver_ihl = data[ipv4::VER_IHL];
        let header_len = usize::from(ver_ihl & 0x0f) * 4;
        if ver_ihl >> 4 != 4 || header_len < ipv4::MIN_HEADER_LEN {
            return Err(bad);
        }
        let flags = wire::read_u16(data, ipv4::FLAGS_FRAG).ok_or(bad)?;
        if flags & ipv4::OFFSET_MASK != 0 {
            return Err(bad);
        }
        let src = IpAddr::V4(wire::read_addr(data, ipv4::SRC).ok_or(bad)?);
        let dst = IpAddr::V4(wire::read_addr(data, ipv4::DST).ok_or(bad)?);
        (src, dst, data[ipv4::PROTOCOL], header_len)
    };
    let l4 = data.get(header_len..).ok_or(bad)?;
    if l4.len() < wire::QUOTED_TRANSPORT_MIN {
        return Err(bad);
    }
    let protocol = match number {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        1 if !v6 => Protocol::Icmp,
        ipv6::ICMPV6 if v6 => Protocol::Icmp,
        _ => return Err(bad),
    };
    let (src_port, dst_port, echo) = match protocol {
        Protocol::Tcp | Protocol::Udp => (
            wire::read_u16(l4, ports::SRC).ok_or(bad)?,
            wire::read_u16(l4, ports::DST).ok_or(bad)?,
            None,
        ),
        Protocol::Icmp => {
            let ident = wire::read_u16(l4, icmp::IDENT).ok_or(bad)?;
            match echo_kind(l4[icmp::TYPE], v6) {
                Some(EchoKind::Request) => (ident, 0, Some(EchoKind::Request)),
                Some(EchoKind::Reply) => (0, ident, Some(EchoKind::Reply)),
                None => return Err(bad),
            }
        }
    };
    Ok(Quoted {
        tuple: Tuple {
            protocol,
            src,
            dst,
            src_port,
            dst_port,
        },
        header_len,
        echo,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Byte fixtures shared by the parse and translate tests: IPv4 or IPv6 by the addresses
    //! given (both of one family).

    use crate::checksum;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// ICMP's protocol number in the family of `addr` (1, or 58 for ICMPv6).
    pub fn icmp_protocol(addr: IpAddr) -> u8 {
        if addr.is_ipv6() { 58 } else { 1 }
    }

    /// Builds an IPv4 packet around `l4` with correct header checksum; the transport checksum
    /// is filled by `fill_l4` (which sees the whole packet).
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + l4.len()).expect("fixture fits");
        let mut p = vec![0x45, 0x00];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0x1c, 0x46, 0x40, 0x00, 64, protocol, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        let sum = checksum::checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }

    /// Builds an IPv6 packet around `l4` (after `extensions`, whose first next-header is
    /// `first`; `protocol` is the last one's).
    pub fn ipv6_with(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        first: u8,
        extensions: &[u8],
        l4: &[u8],
    ) -> Vec<u8> {
        let payload = u16::try_from(extensions.len() + l4.len()).expect("fixture fits");
        let mut p = vec![0x60, 0x01, 0x23, 0x45];
        p.extend_from_slice(&payload.to_be_bytes());
        p.extend_from_slice(&[first, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(extensions);
        p.extend_from_slice(l4);
        p
    }

    /// An IP packet of the addresses' family around `l4`.
    pub fn ip(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, protocol, l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_with(s, d, protocol, &[], l4),
            _ => panic!("fixture addresses of two families"),
        }
    }

    /// Where the transport header of `packet` starts and ends, its protocol number, and its
    /// pseudo-header sum (none for ICMP over IPv4).
    pub fn transport(packet: &[u8]) -> (usize, usize, u8, Option<u64>) {
        let layout = crate::packet::layout(packet).expect("fixture parses");
        let (start, end) = (layout.l4_offset, layout.end);
        let length = u32::try_from(end - start).expect("fits");
        if layout.v6 {
            let src: [u8; 16] = packet[8..24].try_into().expect("16 bytes");
            let dst: [u8; 16] = packet[24..40].try_into().expect("16 bytes");
            let number = match layout.protocol {
                crate::Protocol::Tcp => 6,
                crate::Protocol::Udp => 17,
                crate::Protocol::Icmp => 58,
            };
            let acc = checksum::add_bytes(0, &src);
            let acc = checksum::add_bytes(acc, &dst);
            let pseudo =
                acc + u64::from(number) + u64::from(length >> 16) + u64::from(length & 0xffff);
            (start, end, number, Some(pseudo))
        } else {
            let protocol = packet[9];
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            let pseudo =
                (protocol != 1).then(|| checksum::pseudo_header_v4(src, dst, protocol, length));
            (start, end, protocol, pseudo)
        }
    }

    pub fn checksum_field(protocol: u8) -> usize {
        match protocol {
            6 => 16,
            17 => 6,
            _ => 2,
        }
    }

    /// The full transport checksum for the packet's current bytes (field zeroed first).
    /// A computed zero UDP checksum is given as 0xffff (RFC 768).
    pub fn l4_checksum(packet: &[u8]) -> u16 {
        let (start, end, protocol, pseudo) = transport(packet);
        let mut l4 = packet[start..end].to_vec();
        let field = checksum_field(protocol);
        l4[field] = 0;
        l4[field + 1] = 0;
        let sum = !checksum::fold(checksum::add_bytes(pseudo.unwrap_or(0), &l4));
        if protocol == 17 && sum == 0 {
            0xffff
        } else {
            sum
        }
    }

    /// The transport checksum field of `packet`.
    pub fn l4_field(packet: &[u8]) -> u16 {
        let (start, _, protocol, _) = transport(packet);
        let at = start + checksum_field(protocol);
        u16::from_be_bytes([packet[at], packet[at + 1]])
    }

    /// Writes the correct transport checksum into `packet`.
    pub fn fill_l4_checksum(packet: &mut [u8]) {
        let (start, _, protocol, _) = transport(packet);
        let field = start + checksum_field(protocol);
        let sum = l4_checksum(packet);
        packet[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    }

    /// A TCP segment with the given flags and payload.
    pub fn tcp(
        src: impl Into<IpAddr>,
        sport: u16,
        dst: impl Into<IpAddr>,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        l4.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        l4.extend_from_slice(payload);
        let mut p = ip(src.into(), dst.into(), 6, &l4);
        fill_l4_checksum(&mut p);
        p
    }

    /// A UDP datagram; `checksum: false` leaves the checksum zero ("none").
    pub fn udp(
        src: impl Into<IpAddr>,
        sport: u16,
        dst: impl Into<IpAddr>,
        dport: u16,
        payload: &[u8],
        with_checksum: bool,
    ) -> Vec<u8> {
        let len = u16::try_from(8 + payload.len()).expect("fits");
        let mut l4 = Vec::new();
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&len.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(payload);
        let mut p = ip(src.into(), dst.into(), 17, &l4);
        if with_checksum {
            fill_l4_checksum(&mut p);
        }
        p
    }

    /// An ICMP (ICMPv6 for IPv6 addresses) echo request (`request`) or reply.
    pub fn echo(
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        request: bool,
        ident: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let (src, dst) = (src.into(), dst.into());
        let kind = match (src.is_ipv6(), request) {
            (false, true) => 8,
            (false, false) => 0,
            (true, true) => 128,
            (true, false) => 129,
        };
        let mut l4 = vec![kind, 0, 0, 0];
        l4.extend_from_slice(&ident.to_be_bytes());
        l4.extend_from_slice(&[0x00, 0x07]);
        l4.extend_from_slice(payload);
        let mut p = ip(src, dst, icmp_protocol(src), &l4);
        fill_l4_checksum(&mut p);
        p
    }

    /// An ICMP (ICMPv6) error of `kind`/`code` from `src` to `dst` quoting the first
    /// `quote_len` bytes of `offending`.
    pub fn icmp_error(
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        kind: u8,
        code: u8,
        offending: &[u8],
        quote_len: usize,
    ) -> Vec<u8> {
        let (src, dst) = (src.into(), dst.into());
        let mut l4 = vec![kind, code, 0, 0, 0, 0, 0, 0];
        l4.extend_from_slice(&offending[..quote_len.min(offending.len())]);
        let mut p = ip(src, dst, icmp_protocol(src), &l4);
        fill_l4_checksum(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 5);
    const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);

    /// An extension header of `len8` 8-byte units (after the first) with next header `next`.
    fn extension(next: u8, len8: u8) -> Vec<u8> {
        let mut header = vec![0u8; (usize::from(len8) + 1) * 8];
        header[0] = next;
        header[1] = len8;
        header
    }

    #[test]
    fn parses_ipv6_tcp_udp_and_echo() {
        let info = parse(&tcp(A6, 40000, B6, 443, 0x02, b"")).expect("parses");
        assert_eq!(info.kind, PacketKind::Tcp(TcpFlags::SYN));
        assert_eq!(info.tuple.src, IpAddr::V6(A6));
        assert_eq!(info.tuple.dst, IpAddr::V6(B6));
        assert_eq!((info.tuple.src_port, info.tuple.dst_port), (40000, 443));
        let mut padded = udp(A6, 5353, B6, 53, b"q", true);
        padded.extend_from_slice(&[0xee; 9]);
        assert_eq!(parse(&padded).expect("parses").kind, PacketKind::Udp);
        let request = parse(&echo(A6, B6, true, 0x77, b"ping")).expect("parses");
        assert_eq!(request.kind, PacketKind::IcmpEcho(EchoKind::Request));
        assert_eq!(request.tuple.protocol, Protocol::Icmp);
        let reply = parse(&echo(B6, A6, false, 0x77, b"ping")).expect("parses");
        assert_eq!(reply.tuple, request.tuple.reversed());
    }

    #[test]
    fn walks_ipv6_extension_headers_to_the_transport() {
        let l4 = &tcp(A6, 1, B6, 2, 0x02, b"")[40..];
        let mut chain = extension(60, 0); // hop-by-hop -> destination options
        chain.extend(extension(43, 1)); // destination options -> routing
        chain.extend(extension(6, 0)); // routing -> TCP
        let p = ipv6_with(A6, B6, 0, &chain, l4);
        let info = parse(&p).expect("parses");
        assert_eq!((info.tuple.src_port, info.tuple.dst_port), (1, 2));
        assert_eq!(layout(&p).expect("parses").l4_offset, 40 + chain.len());
    }

    #[test]
    fn refuses_bad_ipv6_extension_chains_and_fragments() {
        let l4 = &udp(A6, 1, B6, 2, b"", true)[40..];
        // Nine destination options headers: past the limit.
        let mut chain = Vec::new();
        for _ in 0..9 {
            chain.extend(extension(60, 0));
        }
        let last = chain.len() - 8;
        chain[last] = 17;
        let p = ipv6_with(A6, B6, 60, &chain, l4);
        assert_eq!(parse(&p), Err(ParseError::ExtensionHeaders));
        // A header claiming more bytes than the packet has.
        let p = ipv6_with(A6, B6, 60, &extension(17, 200)[..8], l4);
        assert_eq!(parse(&p), Err(ParseError::ExtensionHeaders));
        // Chain ending with the packet.
        let p = ipv6_with(A6, B6, 0, &extension(60, 0), &[]);
        assert_eq!(parse(&p), Err(ParseError::ExtensionHeaders));
        // A routing header with segments left (the checksum covers another destination).
        let mut routing = extension(17, 0);
        routing[3] = 1;
        let p = ipv6_with(A6, B6, 43, &routing, l4);
        assert_eq!(parse(&p), Err(ParseError::ExtensionHeaders));
        routing[3] = 0;
        let p = ipv6_with(A6, B6, 43, &routing, l4);
        assert!(
            parse(&p).is_ok(),
            "segments left 0: the destination is final"
        );
        // Any fragment header, even a first fragment.
        let p = ipv6_with(A6, B6, 44, &[17, 0, 0, 1, 0, 0, 0, 9], l4);
        assert_eq!(parse(&p), Err(ParseError::Fragment));
        // No next header, ESP.
        let p = ipv6_with(A6, B6, 59, &[], &[]);
        assert_eq!(parse(&p), Err(ParseError::UnsupportedProtocol(59)));
        let p = ipv6_with(A6, B6, 50, &[], &[0; 16]);
        assert_eq!(parse(&p), Err(ParseError::UnsupportedProtocol(50)));
    }

    #[test]
    fn refuses_short_ipv6_packets() {
        let p = tcp(A6, 1, B6, 2, 0x02, b"");
        assert_eq!(parse(&p[..39]), Err(ParseError::Truncated));
        assert_eq!(parse(&p[..p.len() - 1]), Err(ParseError::Truncated));
        // Payload length zero (a jumbogram's, or a lie): no room for the transport header.
        let mut jumbo = p.clone();
        jumbo[4..6].copy_from_slice(&[0, 0]);
        assert_eq!(parse(&jumbo), Err(ParseError::TruncatedTransport));
    }

    #[test]
    fn parses_icmpv6_errors_quoting_ipv6() {
        let offending = udp(A6, 5353, B6, 53, b"query", true);
        for kind in [1, 2, 3, 4] {
            let error = icmp_error(B6, A6, kind, 0, &offending, 48);
            let info = parse(&error).expect("parses");
            assert_eq!(info.kind, PacketKind::IcmpError);
            assert_eq!(
                info.tuple,
                parse(&offending).expect("parses").tuple.reversed()
            );
        }
        // ICMPv6 echo quoted.
        let offending = echo(A6, B6, true, 5, b"x");
        let info = parse(&icmp_error(B6, A6, 3, 0, &offending, 48)).expect("parses");
        assert_eq!(
            info.tuple,
            parse(&offending).expect("parses").tuple.reversed()
        );
        // A quoted first fragment still has its ports.
        let l4 = &udp(A6, 7, B6, 8, b"", true)[40..];
        let fragment = ipv6_with(A6, B6, 44, &[17, 0, 0, 1, 0, 0, 0, 9], l4);
        let info = parse(&icmp_error(B6, A6, 2, 0, &fragment, 56)).expect("parses");
        assert_eq!((info.tuple.src_port, info.tuple.dst_port), (8, 7));
    }

    #[test]
    fn refuses_unusable_icmpv6_quotes_and_other_types() {
        let offending = udp(A6, 5353, B6, 53, b"query", true);
        // Quote shorter than the header plus 8.
        let error = icmp_error(B6, A6, 1, 0, &offending, 47);
        assert_eq!(parse(&error), Err(ParseError::MalformedIcmpError));
        // An IPv4 packet quoted in an ICMPv6 error.
        let v4 = udp(A, 1, B, 2, b"", true);
        let error = icmp_error(B6, A6, 1, 0, &v4, 28);
        assert_eq!(parse(&error), Err(ParseError::MalformedIcmpError));
        // A later fragment quoted.
        let l4 = &udp(A6, 7, B6, 8, b"", true)[40..];
        let later = ipv6_with(A6, B6, 44, &[17, 0, 0, 0x10, 0, 0, 0, 9], l4);
        let error = icmp_error(B6, A6, 1, 0, &later, 56);
        assert_eq!(parse(&error), Err(ParseError::MalformedIcmpError));
        // ICMPv4 numbers inside ICMPv6 mean nothing: type 3 quoting an ICMP (1) packet.
        let quoted_v4_echo = ipv6_with(A6, B6, 1, &[], &[8, 0, 0, 0, 0, 1, 0, 1]);
        let error = icmp_error(B6, A6, 3, 0, &quoted_v4_echo, 48);
        assert_eq!(parse(&error), Err(ParseError::MalformedIcmpError));
        // Neighbour solicitation, router advertisement, MLD: not tracked.
        for kind in [135, 134, 130] {
            let p = ipv6_with(A6, B6, 58, &[], &[kind, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(parse(&p), Err(ParseError::UnsupportedIcmp(kind)));
        }
        // ICMPv4 echo numbers over IPv6 are not echo.
        let p = ipv6_with(A6, B6, 58, &[], &[8, 0, 0, 0, 0, 1, 0, 1]);
        assert_eq!(parse(&p), Err(ParseError::UnsupportedIcmp(8)));
    }

    fn v4(addr: Ipv4Addr) -> IpAddr {
        IpAddr::V4(addr)
    }

    #[test]
    fn parses_tcp() {
        let p = tcp(A, 40000, B, 80, 0x02, b"");
        let info = parse(&p).expect("parses");
        assert_eq!(info.kind, PacketKind::Tcp(TcpFlags::SYN));
        assert_eq!(info.tuple.src, v4(A));
        assert_eq!(info.tuple.dst_port, 80);
        assert_eq!(info.tuple.src_port, 40000);
    }

    #[test]
    fn parses_udp_and_ignores_ethernet_padding() {
        let mut p = udp(A, 5353, B, 53, b"q", true);
        p.extend_from_slice(&[0xee; 17]);
        let info = parse(&p).expect("parses");
        assert_eq!(info.kind, PacketKind::Udp);
        assert_eq!((info.tuple.src_port, info.tuple.dst_port), (5353, 53));
    }

    #[test]
    fn parses_echo_request_and_reply_with_directional_ports() {
        let request = parse(&echo(A, B, true, 0x4242, b"ping")).expect("parses");
        assert_eq!(request.kind, PacketKind::IcmpEcho(EchoKind::Request));
        assert_eq!(
            (request.tuple.src_port, request.tuple.dst_port),
            (0x4242, 0)
        );
        let reply = parse(&echo(B, A, false, 0x4242, b"ping")).expect("parses");
        assert_eq!(reply.kind, PacketKind::IcmpEcho(EchoKind::Reply));
        assert_eq!(reply.tuple, request.tuple.reversed());
    }

    #[test]
    fn icmp_error_yields_the_reversed_quoted_tuple() {
        let offending = udp(A, 5353, B, 53, b"query", true);
        let error = icmp_error(B, A, 3, 3, &offending, 28);
        let info = parse(&error).expect("parses");
        assert_eq!(info.kind, PacketKind::IcmpError);
        assert_eq!(
            info.tuple,
            parse(&offending).expect("parses").tuple.reversed()
        );
    }

    #[test]
    fn icmp_error_quoting_an_echo_request() {
        let offending = echo(A, B, true, 9, b"x");
        let error = icmp_error(B, A, 11, 0, &offending, 28);
        let info = parse(&error).expect("parses");
        assert_eq!(
            info.tuple,
            parse(&offending).expect("parses").tuple.reversed()
        );
    }

    #[test]
    fn refuses_short_buffers() {
        assert_eq!(parse(&[]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0x45; 19]), Err(ParseError::Truncated));
        let mut p = tcp(A, 1, B, 2, 0x02, b"");
        p.truncate(30);
        assert_eq!(parse(&p), Err(ParseError::Truncated));
    }

    #[test]
    fn refuses_bad_version() {
        let mut p = tcp(A, 1, B, 2, 0x02, b"");
        p[0] = 0x75;
        assert_eq!(parse(&p), Err(ParseError::NotIp));
    }

    #[test]
    fn refuses_small_ihl() {
        let mut p = tcp(A, 1, B, 2, 0x02, b"");
        p[0] = 0x44;
        assert_eq!(parse(&p), Err(ParseError::Truncated));
    }

    #[test]
    fn refuses_fragments() {
        let mut p = udp(A, 1, B, 2, b"", true);
        p[6] = 0x20; // more fragments
        assert_eq!(parse(&p), Err(ParseError::Fragment));
        p[6] = 0x00;
        p[7] = 0x10; // offset 16 * 8
        assert_eq!(parse(&p), Err(ParseError::Fragment));
    }

    #[test]
    fn refuses_untracked_protocols() {
        let p = ipv4(A, B, 47, &[0; 8]);
        assert_eq!(parse(&p), Err(ParseError::UnsupportedProtocol(47)));
    }

    #[test]
    fn refuses_truncated_transport_headers() {
        let p = ipv4(A, B, 6, &[0; 19]);
        assert_eq!(parse(&p), Err(ParseError::TruncatedTransport));
        let p = ipv4(A, B, 17, &[0; 7]);
        assert_eq!(parse(&p), Err(ParseError::TruncatedTransport));
        // UDP length field larger than the packet.
        let mut p = udp(A, 1, B, 2, b"abc", true);
        p[24..26].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse(&p), Err(ParseError::TruncatedTransport));
        let p = ipv4(A, B, 1, &[8, 0, 0, 0, 0]);
        assert_eq!(parse(&p), Err(ParseError::TruncatedTransport));
        // TCP data offset pointing past the segment.
        let mut p = tcp(A, 1, B, 2, 0x10, b"");
        p[32] = 0xf0;
        assert_eq!(parse(&p), Err(ParseError::TruncatedTransport));
    }

    #[test]
    fn refuses_untracked_icmp_types() {
        let p = ipv4(A, B, 1, &[13, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&p), Err(ParseError::UnsupportedIcmp(13)));
    }

    #[test]
    fn refuses_unusable_quotes() {
        let offending = udp(A, 5353, B, 53, b"query", true);
        // Quote too short for the ports.
        let error = icmp_error(B, A, 3, 3, &offending, 24);
        assert_eq!(parse(&error), Err(ParseError::MalformedIcmpError));
        // Quoted packet is a later fragment.
        let mut fragment = offending.clone();
        fragment[7] = 0x01;
        let error = icmp_error(B, A, 3, 3, &fragment, 28);
        assert_eq!(parse(&error), Err(ParseError::MalformedIcmpError));
        // Error about an error.
        let inner_error = icmp_error(A, B, 3, 1, &offending, 28);
        let error = icmp_error(B, A, 3, 3, &inner_error, 28);
        assert_eq!(parse(&error), Err(ParseError::MalformedIcmpError));
        // Quoted header claims IHL 15 with 20 bytes present.
        let mut bad_ihl = offending.clone();
        bad_ihl[0] = 0x4f;
        let error = icmp_error(B, A, 3, 3, &bad_ihl, 28);
        assert_eq!(parse(&error), Err(ParseError::MalformedIcmpError));
    }

    #[test]
    fn error_keys_are_distinct() {
        let all = [
            ParseError::Truncated,
            ParseError::NotIp,
            ParseError::Fragment,
            ParseError::ExtensionHeaders,
            ParseError::UnsupportedProtocol(0),
            ParseError::TruncatedTransport,
            ParseError::UnsupportedIcmp(0),
            ParseError::MalformedIcmpError,
        ];
        let mut keys: Vec<_> = all.iter().map(|e| e.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), all.len());
    }
}
