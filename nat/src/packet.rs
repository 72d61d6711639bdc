//! Reading a packet's flow identity: IPv4 bytes -> [`PacketInfo`].
//!
//! The input is an IPv4 packet starting at its header (no Ethernet, no virtio header). Bytes
//! past the IPv4 total length (Ethernet padding) are ignored. Checksums are *not* verified:
//! the port that received the frame knows whether they are complete, partial or already
//! validated, and NAT keeps them consistent either way (see `translate.rs`).
//!
//! Rules enforced, each with its own [`ParseError`]:
//! - version 4, IHL >= 5, header and total length inside the buffer (smoltcp `check_len`);
//! - not a fragment: conntrack needs the ports of every packet, which only the first fragment
//!   carries (Linux reassembles before conntrack for the same reason);
//! - TCP, UDP or ICMP, with a complete transport header (TCP: data offset honoured; UDP:
//!   length field inside the packet);
//! - ICMP: echo request/reply, or an error (destination unreachable, time exceeded, parameter
//!   problem) that quotes an unfragmented IPv4 header plus at least 8 bytes of a TCP, UDP or
//!   ICMP echo header (RFC 5508 section 7). Errors about errors are not translated: no host
//!   sends one (RFC 1122 3.2.2), and Linux conntrack refuses them too.

use std::net::IpAddr;

use smoltcp::wire::{IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};

use crate::tcp::TcpFlags;
use crate::tuple::{Protocol, Tuple};
use crate::wire::{self, icmp, ipv4, ports};

/// Whether an ICMP echo packet asks or answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EchoKind {
    /// Echo request (type 8).
    Request,
    /// Echo reply (type 0).
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
    /// The buffer is shorter than the IPv4 header or its total length, or IHL < 5.
    #[error("truncated or malformed IPv4 header")]
    Truncated,
    /// The version field is not 4.
    #[error("not an IPv4 packet")]
    NotIpv4,
    /// A fragment: only the first one carries ports.
    #[error("IPv4 fragment (conntrack needs reassembled packets)")]
    Fragment,
    /// Neither TCP, UDP nor ICMP.
    #[error("untracked IP protocol {0}")]
    UnsupportedProtocol(u8),
    /// The TCP, UDP or ICMP header is cut short.
    #[error("truncated transport header")]
    TruncatedTransport,
    /// An ICMP message that is neither echo nor a translatable error.
    #[error("untracked ICMP type {0}")]
    UnsupportedIcmp(u8),
    /// An ICMP error whose quoted packet is too short, not IPv4, a later fragment, or of an
    /// untracked protocol.
    #[error("ICMP error with an unusable quoted packet")]
    MalformedIcmpError,
}

impl ParseError {
    /// The stable counter key (`nat.<reason>`).
    pub const fn key(self) -> &'static str {
        match self {
            ParseError::Truncated => "nat.truncated",
            ParseError::NotIpv4 => "nat.not_ipv4",
            ParseError::Fragment => "nat.fragment",
            ParseError::UnsupportedProtocol(_) => "nat.unsupported_protocol",
            ParseError::TruncatedTransport => "nat.truncated_transport",
            ParseError::UnsupportedIcmp(_) => "nat.unsupported_icmp",
            ParseError::MalformedIcmpError => "nat.malformed_icmp_error",
        }
    }
}

/// The pieces of a validated IPv4 packet that the rewrite code needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Where the transport header starts.
    pub l4_offset: usize,
    /// Where the packet ends (the IPv4 total length).
    pub end: usize,
    /// The protocol.
    pub protocol: Protocol,
}

/// Validates the IPv4 header of `packet` and returns where things are.
pub(crate) fn layout(packet: &[u8]) -> Result<Layout, ParseError> {
    let version = packet.first().ok_or(ParseError::Truncated)? >> 4;
    if version != 4 {
        return Err(ParseError::NotIpv4);
    }
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
    })
}

/// Reads the flow identity of an IPv4 packet.
///
/// # Errors
/// A [`ParseError`] naming the first rule the packet breaks (see the module doc).
pub fn parse(packet: &[u8]) -> Result<PacketInfo, ParseError> {
    let layout = layout(packet)?;
    // `layout` checked that the header and the total length lie inside the buffer.
    let ip = Ipv4Packet::new_unchecked(&packet[..layout.end]);
    let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    let l4 = &packet[layout.l4_offset..layout.end];
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
        Protocol::Icmp => parse_icmp(l4, src, dst),
    }
}

fn parse_icmp(l4: &[u8], src: IpAddr, dst: IpAddr) -> Result<PacketInfo, ParseError> {
    if l4.len() < icmp::HEADER_LEN {
        return Err(ParseError::TruncatedTransport);
    }
    let kind = l4[icmp::TYPE];
    match kind {
        icmp::ECHO_REQUEST | icmp::ECHO_REPLY => {
            let ident = wire::read_u16(l4, icmp::IDENT).ok_or(ParseError::TruncatedTransport)?;
            let (echo, src_port, dst_port) = if kind == icmp::ECHO_REQUEST {
                (EchoKind::Request, ident, 0)
            } else {
                (EchoKind::Reply, 0, ident)
            };
            Ok(PacketInfo {
                tuple: Tuple {
                    protocol: Protocol::Icmp,
                    src,
                    dst,
                    src_port,
                    dst_port,
                },
                kind: PacketKind::IcmpEcho(echo),
            })
        }
        icmp::DST_UNREACHABLE | icmp::TIME_EXCEEDED | icmp::PARAM_PROBLEM => {
            let quoted = quoted(&l4[icmp::HEADER_LEN..])?;
            Ok(PacketInfo {
                tuple: quoted.tuple.reversed(),
                kind: PacketKind::IcmpError,
            })
        }
        other => Err(ParseError::UnsupportedIcmp(other)),
    }
}

/// The packet quoted in an ICMP error, as far as NAT needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quoted {
    /// Its tuple, as it was sent.
    pub tuple: Tuple,
    /// Its IPv4 header length (its transport header starts there).
    pub header_len: usize,
    /// For a quoted ICMP echo, which kind.
    pub echo: Option<EchoKind>,
}

/// Parses the quoted packet of an ICMP error (`data` starts at the quoted IPv4 header).
pub(crate) fn quoted(data: &[u8]) -> Result<Quoted, ParseError> {
    let bad = ParseError::MalformedIcmpError;
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
    let l4 = data.get(header_len..).ok_or(bad)?;
    if l4.len() < wire::QUOTED_TRANSPORT_MIN {
        return Err(bad);
    }
    let src = IpAddr::V4(wire::read_addr(data, ipv4::SRC).ok_or(bad)?);
    let dst = IpAddr::V4(wire::read_addr(data, ipv4::DST).ok_or(bad)?);
    let protocol = Protocol::from_number(data[ipv4::PROTOCOL]).ok_or(bad)?;
    let (src_port, dst_port, echo) = match protocol {
        Protocol::Tcp | Protocol::Udp => (
            wire::read_u16(l4, ports::SRC).ok_or(bad)?,
            wire::read_u16(l4, ports::DST).ok_or(bad)?,
            None,
        ),
        Protocol::Icmp => {
            let ident = wire::read_u16(l4, icmp::IDENT).ok_or(bad)?;
            match l4[icmp::TYPE] {
                icmp::ECHO_REQUEST => (ident, 0, Some(EchoKind::Request)),
                icmp::ECHO_REPLY => (0, ident, Some(EchoKind::Reply)),
                _ => return Err(bad),
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
    //! Byte fixtures shared by the parse and translate tests.

    use crate::checksum;
    use std::net::Ipv4Addr;

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

    /// The full transport checksum for the packet's current bytes (field zeroed first).
    /// A computed zero UDP checksum is given as 0xffff (RFC 768).
    pub fn l4_checksum(packet: &[u8]) -> u16 {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let protocol = packet[9];
        let mut l4 = packet[ihl..total].to_vec();
        let field = match protocol {
            6 => 16,
            17 => 6,
            _ => 2,
        };
        l4[field] = 0;
        l4[field + 1] = 0;
        if protocol == 1 {
            return checksum::checksum(&l4);
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        let length = u32::try_from(l4.len()).expect("fits");
        let sum = !checksum::fold(checksum::add_bytes(
            checksum::pseudo_header_v4(src, dst, protocol, length),
            &l4,
        ));
        if protocol == 17 && sum == 0 {
            0xffff
        } else {
            sum
        }
    }

    /// Writes the correct transport checksum into `packet`.
    pub fn fill_l4_checksum(packet: &mut [u8]) {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let field = ihl
            + match packet[9] {
                6 => 16,
                17 => 6,
                _ => 2,
            };
        let sum = l4_checksum(packet);
        packet[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    }

    /// A TCP segment with the given flags and payload.
    pub fn tcp(
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
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
        let mut p = ipv4(src, dst, 6, &l4);
        fill_l4_checksum(&mut p);
        p
    }

    /// A UDP datagram; `checksum: false` leaves the checksum zero ("none").
    pub fn udp(
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
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
        let mut p = ipv4(src, dst, 17, &l4);
        if with_checksum {
            fill_l4_checksum(&mut p);
        }
        p
    }

    /// An ICMP echo request (`request`) or reply.
    pub fn echo(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        request: bool,
        ident: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut l4 = vec![if request { 8 } else { 0 }, 0, 0, 0];
        l4.extend_from_slice(&ident.to_be_bytes());
        l4.extend_from_slice(&[0x00, 0x07]);
        l4.extend_from_slice(payload);
        let mut p = ipv4(src, dst, 1, &l4);
        fill_l4_checksum(&mut p);
        p
    }

    /// An ICMP error of `kind`/`code` from `src` to `dst` quoting the first `quote_len` bytes
    /// of `offending`.
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        kind: u8,
        code: u8,
        offending: &[u8],
        quote_len: usize,
    ) -> Vec<u8> {
        let mut l4 = vec![kind, code, 0, 0, 0, 0, 0, 0];
        l4.extend_from_slice(&offending[..quote_len.min(offending.len())]);
        let mut p = ipv4(src, dst, 1, &l4);
        fill_l4_checksum(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 5);
    const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

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
        p[0] = 0x65;
        assert_eq!(parse(&p), Err(ParseError::NotIpv4));
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
            ParseError::NotIpv4,
            ParseError::Fragment,
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
