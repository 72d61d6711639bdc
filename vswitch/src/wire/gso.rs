//! Software segmentation of GSO super-frames, as the kernel's `skb_gso_segment` does it for a
//! device that cannot segment (here: the VXLAN encapsulation, whose underlay cannot take a GSO
//! inner frame).
//!
//! A super-frame is a `virtio_net_hdr` (see [`super::vnet_hdr`]) with `gso_type` TCPV4, TCPV6
//! or UDP_L4 (USO), followed by an untagged Ethernet II frame carrying IPv4 or IPv6 and one
//! TCP or UDP header whose payload is longer than `gso_size`. [`Segmenter::segment`] cuts the
//! payload into `gso_size` pieces (the last may be shorter) and emits each as a complete frame:
//! a zeroed `virtio_net_hdr`, then the super-frame's headers (IPv4 options, IPv6 extension
//! headers and TCP options included) with these fields rewritten, as the kernel's
//! `inet_gso_segment`/`ipv6_gso_segment`, `tcp_gso_segment` and `__udp_gso_segment` do:
//!
//! - IPv4: total length; identification `id + i` for segment `i` (wrapping), as the kernel does
//!   for every frame that does not carry `SKB_GSO_TCP_FIXEDID`, which a `virtio_net_hdr` cannot
//!   express; the header checksum is recomputed.
//! - IPv6: payload length.
//! - TCP: the sequence number advances by the payload already sent; FIN and PSH stay only on
//!   the last segment and CWR only on the first (`th->cwr` is cleared on later segments unless
//!   the stream uses AccECN, which a `virtio_net_hdr` cannot express either).
//! - UDP (USO): every segment is a whole datagram with its own length.
//! - The TCP/UDP checksum is computed in full, over the pseudo-header built from the segment's
//!   addresses and length, whatever the super-frame's checksum field held (with `NEEDS_CSUM` it
//!   holds a pseudo-header sum; without it, the kernel recomputes as well). A computed 0 is
//!   stored as `0xffff` (the kernel's `CSUM_MANGLED_0`) in UDP and in an unsplit frame, and as
//!   0 in the TCP segments of a split (as `tcp_gso_segment` does; in ones' complement both are
//!   the same number). The one exception: a UDP over IPv4 super-frame *without* `NEEDS_CSUM`
//!   whose checksum field is 0 ("no checksum", RFC 768) keeps 0 in every segment.
//!
//! A super-frame whose payload fits in one segment is emitted as one frame (the kernel's
//! `virtio_net_hdr_to_skb` does not even mark it GSO: "too small packets are not really GSO
//! ones"), with its lengths and checksums completed.
//!
//! Header lengths come from the packet itself (IHL, the IPv6 extension header chain, the TCP
//! data offset); `hdr_len` is only a hint and is ignored. Ethernet padding after the IP packet
//! is dropped. Refused, with a [`GsoError`] and before anything is emitted, as the kernel
//! refuses them or because they cannot be segmented faithfully:
//! - a frame that is not GSO, or whose headers or IP length run past its end;
//! - legacy UFO (`gso_type` UDP), VLAN tags and any EtherType but IPv4 and IPv6;
//! - a `gso_type` that does not match the packet (TCPV4 on IPv6, UDP_L4 on TCP, ...);
//! - an IPv4 fragment, an IPv6 jumbogram (payload length 0), an IPv6 routing header with
//!   segments left (the pseudo-header would need the final destination), or an IPv6
//!   extension header other than hop-by-hop, routing and destination options (the ones the
//!   kernel's `ipv6_gso_pull_exthdrs` skips);
//! - `NEEDS_CSUM` whose `csum_start`/`csum_offset` are not the TCP/UDP checksum field (the
//!   kernel refuses these for USO and for TCP's `csum_offset`);
//! - a USO super-frame of more than [`UDP_MAX_SEGMENTS`] segments (`virtio_net_hdr_to_skb`).
//!
//! The segmenter owns one scratch buffer, allocated once in [`Segmenter::new`], large enough
//! for the largest segment an IP packet can yield: segmenting allocates nothing.

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
    Ipv4Packet, Ipv6Packet, TCP_HEADER_LEN, TcpPacket, TcpSeqNumber, UDP_HEADER_LEN, UdpPacket,
};

use super::checksum;
use super::vnet_hdr::{self, GsoKind};

/// The most segments a USO super-frame may carry: the kernel's `UDP_MAX_SEGMENTS`, which both
/// `udp_send_skb` and `virtio_net_hdr_to_skb` enforce.
pub const UDP_MAX_SEGMENTS: usize = 128;

/// IP protocol number of TCP.
const PROTOCOL_TCP: u8 = 6;
/// IP protocol number of UDP.
const PROTOCOL_UDP: u8 = 17;

/// Offset of the checksum field in the TCP header (`offsetof(struct tcphdr, check)`).
const TCP_CHECKSUM_OFFSET: usize = 16;
/// Offset of the checksum field in the UDP header (`offsetof(struct udphdr, check)`).
const UDP_CHECKSUM_OFFSET: usize = 6;

/// IPv6 extension headers the kernel's `ipv6_gso_pull_exthdrs` skips (RFC 8200 section 4).
mod ipv6_ext {
    /// Hop-by-Hop Options.
    pub const HOP_BY_HOP: u8 = 0;
    /// Routing.
    pub const ROUTING: u8 = 43;
    /// Destination Options.
    pub const DESTINATION: u8 = 60;
    /// Offset of the next header field.
    pub const NEXT_HEADER: usize = 0;
    /// Offset of the length field, in 8-octet units not counting the first 8 octets.
    pub const LENGTH: usize = 1;
    /// Offset of a routing header's segments-left field.
    pub const SEGMENTS_LEFT: usize = 3;
    /// The smallest extension header.
    pub const MIN_LEN: usize = 8;
}

/// The largest segment: a `virtio_net_hdr`, an Ethernet header, the fixed IPv6 header and the
/// largest IPv6 payload (an IPv4 packet, 65535 bytes at most, is smaller). A segment is never
/// longer than the super-frame's IP packet, so every segment fits.
const SCRATCH_LEN: usize =
    vnet_hdr::HEADER_LEN + ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + u16::MAX as usize;

/// Why a super-frame could not be segmented. Nothing is emitted when segmenting fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoError {
    /// The frame is not a GSO super-frame (`gso_type` NONE).
    NotGso,
    /// The frame ends before its `virtio_net_hdr`, Ethernet or IP header, or before the end
    /// its IP length gives.
    Truncated,
    /// An IP or L4 header is malformed: wrong IP version, IHL below 5, a length shorter than
    /// the headers, an IPv4 fragment, an IPv6 jumbogram, an extension header or a TCP/UDP
    /// header running past the IP packet, a TCP data offset below 5.
    BadHeader,
    /// Not something this segmenter handles: legacy UFO, an unknown `gso_type`, an EtherType
    /// other than IPv4/IPv6 (VLAN tags included), an IPv6 extension header other than
    /// hop-by-hop/routing/destination options, or a routing header with segments left.
    UnsupportedType,
    /// The `gso_type` does not match the packet (IP version or L4 protocol).
    TypeMismatch,
    /// `gso_size` is 0.
    BadGsoSize,
    /// `NEEDS_CSUM` with `csum_start`/`csum_offset` not pointing at the TCP/UDP checksum.
    BadChecksumOffset,
    /// A USO super-frame of more than [`UDP_MAX_SEGMENTS`] segments.
    TooManySegments,
}

impl GsoError {
    /// Every value, in counter order.
    pub const ALL: &'static [GsoError] = &[
        GsoError::NotGso,
        GsoError::Truncated,
        GsoError::BadHeader,
        GsoError::UnsupportedType,
        GsoError::TypeMismatch,
        GsoError::BadGsoSize,
        GsoError::BadChecksumOffset,
        GsoError::TooManySegments,
    ];

    /// The stable key (`gso.<reason>`) used by counters and the API.
    pub const fn key(self) -> &'static str {
        match self {
            GsoError::NotGso => "gso.not_gso",
            GsoError::Truncated => "gso.truncated",
            GsoError::BadHeader => "gso.bad_header",
            GsoError::UnsupportedType => "gso.unsupported_type",
            GsoError::TypeMismatch => "gso.type_mismatch",
            GsoError::BadGsoSize => "gso.bad_gso_size",
            GsoError::BadChecksumOffset => "gso.bad_csum_offset",
            GsoError::TooManySegments => "gso.too_many_segments",
        }
    }

    /// One line saying why the super-frame was refused.
    pub const fn description(self) -> &'static str {
        match self {
            GsoError::NotGso => "frame handed to the segmenter is not GSO (gso_type NONE)",
            GsoError::Truncated => {
                "GSO frame ends before its headers or before the end its IP length gives"
            }
            GsoError::BadHeader => "GSO frame with a malformed IP, TCP or UDP header",
            GsoError::UnsupportedType => {
                "GSO frame that is not TCP/UDP over untagged IPv4/IPv6, or legacy UFO"
            }
            GsoError::TypeMismatch => "GSO frame whose gso_type does not match its IP or L4 header",
            GsoError::BadGsoSize => "GSO frame with gso_size 0",
            GsoError::BadChecksumOffset => {
                "GSO frame whose csum_start/csum_offset do not point at the TCP/UDP checksum"
            }
            GsoError::TooManySegments => "USO frame of more than 128 segments",
        }
    }
}

impl fmt::Display for GsoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for GsoError {}

/// The L4 protocol a super-frame is segmented by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    const fn protocol(self) -> u8 {
        match self {
            Transport::Tcp => PROTOCOL_TCP,
            Transport::Udp => PROTOCOL_UDP,
        }
    }

    const fn checksum_offset(self) -> usize {
        match self {
            Transport::Tcp => TCP_CHECKSUM_OFFSET,
            Transport::Udp => UDP_CHECKSUM_OFFSET,
        }
    }
}

/// The IP header of a super-frame: its version, addresses and, for IPv4, identification.
#[derive(Debug, Clone, Copy)]
enum Network {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ident: u16,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
    },
}

/// A validated super-frame; offsets count from the start of the Ethernet frame.
#[derive(Debug, Clone, Copy)]
struct Layout {
    network: Network,
    transport: Transport,
    /// Start of the TCP/UDP header.
    l4: usize,
    /// Start of the payload (end of the TCP/UDP header).
    payload: usize,
    /// End of the IP packet (Ethernet padding follows).
    end: usize,
}

/// Splits GSO super-frames into wire-sized frames; owns one scratch buffer (allocated once,
/// reused: no allocation per packet).
pub struct Segmenter {
    /// Where each segment is built before it is handed to `emit`.
    scratch: Box<[u8]>,
}

impl fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segmenter")
            .field("scratch_len", &self.scratch.len())
            .finish()
    }
}

impl Default for Segmenter {
    fn default() -> Segmenter {
        Segmenter::new()
    }
}

impl Segmenter {
    /// A segmenter with its scratch buffer (about 64 KiB, the largest segment possible).
    pub fn new() -> Segmenter {
        Segmenter {
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
        }
    }

    /// Segments `frame` (a `virtio_net_hdr` followed by an Ethernet frame, GSO) and calls
    /// `emit` once per segment with a complete frame: a zeroed `virtio_net_hdr` (no GSO, no
    /// `NEEDS_CSUM`), then Ethernet + IP + L4 with every checksum (IPv4 header, TCP/UDP)
    /// complete and correct. See the module docs for what each segment's headers hold.
    /// Returns the number of segments (at least 1).
    ///
    /// # Errors
    /// The [`GsoError`] saying why the frame cannot be segmented; then `emit` was not called.
    pub fn segment(
        &mut self,
        frame: &[u8],
        mut emit: impl FnMut(&[u8]),
    ) -> Result<usize, GsoError> {
        self.segment_with(frame, false, |segment| emit(segment))
    }

    /// [`Segmenter::segment`], with each segment's TCP or UDP checksum left partial when
    /// `partial`: the pseudo-header sum in its field and `NEEDS_CSUM` in the segment's
    /// `virtio_net_hdr` (`csum_start` the L4 header, `csum_offset` its checksum field), as
    /// the kernel's own segmentation leaves them for a device that checksums. For a sender
    /// whose receiver completes the checksums (VXLAN remote checksum offload): the pass
    /// over every byte that completing them takes is saved. The IPv4 header checksum is
    /// computed either way. A UDP over IPv4 super-frame without a checksum stays without.
    /// `emit` gets the segment writable (e.g. to complete a checksum after all).
    ///
    /// # Errors
    /// As [`Segmenter::segment`].
    pub fn segment_with(
        &mut self,
        frame: &[u8],
        partial: bool,
        mut emit: impl FnMut(&mut [u8]),
    ) -> Result<usize, GsoError> {
        let packet = vnet_hdr::Packet::new_checked(frame).map_err(|_| GsoError::Truncated)?;
        if !packet.is_gso() {
            return Err(GsoError::NotGso);
        }
        // The fields are read here rather than through `vnet_hdr::Repr::parse`, so that a
        // frame cut short is reported as truncated, not as a checksum field out of the frame.
        let kind = GsoKind::from_raw(packet.gso_type() & !vnet_hdr::gso::ECN)
            .ok_or(GsoError::UnsupportedType)?;
        let gso_size = packet.gso_size();
        if gso_size == 0 {
            return Err(GsoError::BadGsoSize);
        }
        let eth = packet.payload();
        let layout = parse_layout(eth, kind)?;
        // `virtio_net_hdr_to_skb` makes `csum_start` the transport header; the kernel refuses a
        // `csum_offset` other than the TCP/UDP checksum, and USO whose `csum_start` is not the
        // transport header (`__udp_gso_segment`).
        let needs_csum = packet.needs_csum();
        if needs_csum
            && (usize::from(packet.csum_start()) != layout.l4
                || usize::from(packet.csum_offset()) != layout.transport.checksum_offset())
        {
            return Err(GsoError::BadChecksumOffset);
        }
        // RFC 768: a UDP over IPv4 checksum of 0 means "none"; a sender that did not ask for
        // completion keeps it. (IPv6 requires a checksum, RFC 8200 section 8.1.)
        let keep_zero_udp_checksum = !needs_csum
            && layout.transport == Transport::Udp
            && matches!(layout.network, Network::V4 { .. })
            && UdpPacket::new_unchecked(&eth[layout.l4..layout.payload]).checksum() == 0;

        let headers = &eth[..layout.payload];
        let payload = &eth[layout.payload..layout.end];
        let mss = usize::from(gso_size);
        let count = payload.len().div_ceil(mss).max(1);
        if layout.transport == Transport::Udp && count > UDP_MAX_SEGMENTS {
            return Err(GsoError::TooManySegments);
        }

        let mut ident = match layout.network {
            Network::V4 { ident, .. } => ident,
            Network::V6 { .. } => 0,
        };
        let mut seq = match layout.transport {
            Transport::Tcp => {
                TcpPacket::new_unchecked(&eth[layout.l4..layout.payload]).seq_number()
            }
            Transport::Udp => TcpSeqNumber(0),
        };
        let advance = i32::from(gso_size);
        for (index, chunk) in chunks(payload, mss).enumerate() {
            let segment = SegmentSpec {
                chunk,
                first: index == 0,
                last: index + 1 == count,
                ident,
                seq,
                keep_zero_udp_checksum,
                partial,
            };
            let len = write_segment(&mut self.scratch, &layout, headers, &segment)?;
            emit(&mut self.scratch[..len]);
            ident = ident.wrapping_add(1);
            seq = TcpSeqNumber(seq.0.wrapping_add(advance));
        }
        crate::cost::segmented(payload.len() + count * headers.len(), count);
        Ok(count)
    }
}

/// The payload in `mss` pieces; an empty payload is one empty piece.
fn chunks(payload: &[u8], mss: usize) -> impl Iterator<Item = &[u8]> {
    let empty = payload.is_empty().then_some(payload);
    payload.chunks(mss).chain(empty)
}

/// What differs from one segment to the next.
#[derive(Debug, Clone, Copy)]
struct SegmentSpec<'a> {
    chunk: &'a [u8],
    first: bool,
    last: bool,
    ident: u16,
    seq: TcpSeqNumber,
    keep_zero_udp_checksum: bool,
    /// Leave the L4 checksum partial (see [`Segmenter::segment_with`]).
    partial: bool,
}

/// How a segment's L4 checksum field, holding the pseudo-header sum, is completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completion {
    /// Left as it is (UDP over IPv4 without a checksum).
    None,
    /// The complement of the sum, 0 included.
    Raw,
    /// The complement of the sum, with 0 stored as 0xffff (`CSUM_MANGLED_0`).
    MangleZero,
}

/// Checks the headers of the Ethernet frame `eth` against `kind` and locates them.
fn parse_layout(eth: &[u8], kind: GsoKind) -> Result<Layout, GsoError> {
    let (want_v6, transport) = match kind {
        GsoKind::TcpV4 => (Some(false), Transport::Tcp),
        GsoKind::TcpV6 => (Some(true), Transport::Tcp),
        GsoKind::UdpL4 => (None, Transport::Udp),
        // Legacy UFO cuts IP fragments, not segments; a port must not negotiate TUN_F_UFO.
        GsoKind::Udp => return Err(GsoError::UnsupportedType),
    };
    let ethernet = EthernetFrame::new_checked(eth).map_err(|_| GsoError::Truncated)?;
    let ip = ethernet.payload();
    let (network, l3_len, end, protocol) = match ethernet.ethertype() {
        EthernetProtocol::Ipv4 => parse_ipv4(ip)?,
        EthernetProtocol::Ipv6 => parse_ipv6(ip)?,
        _ => return Err(GsoError::UnsupportedType),
    };
    let is_v6 = matches!(network, Network::V6 { .. });
    if want_v6.is_some_and(|want| want != is_v6) || protocol != transport.protocol() {
        return Err(GsoError::TypeMismatch);
    }
    // Both lengths are bounded by `ip.len()`, so the L4 bytes lie inside the frame.
    let l4_bytes = ip.get(l3_len..end).ok_or(GsoError::BadHeader)?;
    let l4_len = match transport {
        Transport::Tcp => {
            if l4_bytes.len() < TCP_HEADER_LEN {
                return Err(GsoError::BadHeader);
            }
            let header_len = usize::from(TcpPacket::new_unchecked(l4_bytes).header_len());
            if header_len < TCP_HEADER_LEN || header_len > l4_bytes.len() {
                return Err(GsoError::BadHeader);
            }
            header_len
        }
        Transport::Udp => {
            if l4_bytes.len() < UDP_HEADER_LEN {
                return Err(GsoError::BadHeader);
            }
            UDP_HEADER_LEN
        }
    };
    let l4 = ETHERNET_HEADER_LEN + l3_len;
    Ok(Layout {
        network,
        transport,
        l4,
        payload: l4 + l4_len,
        end: ETHERNET_HEADER_LEN + end,
    })
}

/// Checks an IPv4 header; returns it, its length, the packet's length (both at most
/// `ip.len()`) and the protocol.
fn parse_ipv4(ip: &[u8]) -> Result<(Network, usize, usize, u8), GsoError> {
    if ip.len() < IPV4_HEADER_LEN {
        return Err(GsoError::Truncated);
    }
    let packet = Ipv4Packet::new_unchecked(ip);
    if packet.version() != 4 {
        return Err(GsoError::BadHeader);
    }
    let header_len = usize::from(packet.header_len());
    let total_len = usize::from(packet.total_len());
    // A total length of 0 (IPv4 BIG TCP) is refused here too: it cannot be below the header.
    if header_len < IPV4_HEADER_LEN || total_len < header_len {
        return Err(GsoError::BadHeader);
    }
    if total_len > ip.len() {
        return Err(GsoError::Truncated);
    }
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Err(GsoError::BadHeader);
    }
    let network = Network::V4 {
        src: packet.src_addr(),
        dst: packet.dst_addr(),
        ident: packet.ident(),
    };
    Ok((
        network,
        header_len,
        total_len,
        u8::from(packet.next_header()),
    ))
}

/// Checks an IPv6 header and the extension headers the kernel skips; returns the addresses,
/// the length of all those headers, the packet's length (both at most `ip.len()`) and the
/// upper-layer protocol.
fn parse_ipv6(ip: &[u8]) -> Result<(Network, usize, usize, u8), GsoError> {
    if ip.len() < IPV6_HEADER_LEN {
        return Err(GsoError::Truncated);
    }
    let packet = Ipv6Packet::new_unchecked(ip);
    if packet.version() != 6 {
        return Err(GsoError::BadHeader);
    }
    // Payload length 0 is a jumbogram (RFC 2675, BIG TCP) or an empty packet: neither is GSO.
    if packet.payload_len() == 0 {
        return Err(GsoError::BadHeader);
    }
    let end = IPV6_HEADER_LEN + usize::from(packet.payload_len());
    if end > ip.len() {
        return Err(GsoError::Truncated);
    }
    let mut next = u8::from(packet.next_header());
    let mut at = IPV6_HEADER_LEN;
    while matches!(
        next,
        ipv6_ext::HOP_BY_HOP | ipv6_ext::ROUTING | ipv6_ext::DESTINATION
    ) {
        let rest = ip.get(at..end).unwrap_or(&[]);
        if rest.len() < ipv6_ext::MIN_LEN {
            return Err(GsoError::BadHeader);
        }
        if next == ipv6_ext::ROUTING && rest[ipv6_ext::SEGMENTS_LEFT] != 0 {
            // The pseudo-header would need the final destination (RFC 8200 section 8.1).
            return Err(GsoError::UnsupportedType);
        }
        let len = (usize::from(rest[ipv6_ext::LENGTH]) + 1) * ipv6_ext::MIN_LEN;
        if len > rest.len() {
            return Err(GsoError::BadHeader);
        }
        next = rest[ipv6_ext::NEXT_HEADER];
        at += len;
    }
    if next != PROTOCOL_TCP && next != PROTOCOL_UDP {
        // Fragment, AH, ESP, ... : the kernel's ipv6_gso_pull_exthdrs stops there too.
        return Err(GsoError::UnsupportedType);
    }
    let network = Network::V6 {
        src: packet.src_addr(),
        dst: packet.dst_addr(),
    };
    Ok((network, at, end, next))
}

/// Builds one segment in `scratch` (a zeroed `virtio_net_hdr`, `headers` rewritten for this
/// segment, then the payload piece) and returns its length.
fn write_segment(
    scratch: &mut [u8],
    layout: &Layout,
    headers: &[u8],
    segment: &SegmentSpec<'_>,
) -> Result<usize, GsoError> {
    let eth_len = headers.len() + segment.chunk.len();
    let total = vnet_hdr::HEADER_LEN + eth_len;
    // Cannot fail: a segment is never longer than the super-frame's IP packet, and the scratch
    // buffer holds the longest IP packet there is (see SCRATCH_LEN).
    let out = scratch.get_mut(..total).ok_or(GsoError::BadHeader)?;
    let (vnet, frame) = out.split_at_mut(vnet_hdr::HEADER_LEN);
    vnet_hdr::Repr::PLAIN.emit(&mut vnet_hdr::Packet::new_unchecked(vnet));
    let (header_part, payload_part) = frame.split_at_mut(headers.len());
    header_part.copy_from_slice(headers);
    payload_part.copy_from_slice(segment.chunk);

    let too_long = |_| GsoError::BadHeader;
    let l4_len = eth_len - layout.l4;
    let protocol = layout.transport.protocol();
    let pseudo = match layout.network {
        Network::V4 { src, dst, .. } => {
            let ip = &mut frame[ETHERNET_HEADER_LEN..layout.l4];
            let mut packet = Ipv4Packet::new_unchecked(&mut *ip);
            packet.set_total_len(u16::try_from(eth_len - ETHERNET_HEADER_LEN).map_err(too_long)?);
            packet.set_ident(segment.ident);
            packet.set_checksum(0);
            let header_checksum = checksum::checksum(ip);
            Ipv4Packet::new_unchecked(ip).set_checksum(header_checksum);
            checksum::pseudo_header_ipv4(
                src,
                dst,
                protocol,
                u16::try_from(l4_len).map_err(too_long)?,
            )
        }
        Network::V6 { src, dst } => {
            let payload_len = eth_len - ETHERNET_HEADER_LEN - IPV6_HEADER_LEN;
            Ipv6Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..layout.l4])
                .set_payload_len(u16::try_from(payload_len).map_err(too_long)?);
            checksum::pseudo_header_ipv6(
                src,
                dst,
                protocol,
                u32::try_from(l4_len).map_err(too_long)?,
            )
        }
    };

    let l4 = &mut frame[layout.l4..];
    let completion = match layout.transport {
        Transport::Tcp => {
            let mut tcp = TcpPacket::new_unchecked(l4);
            tcp.set_seq_number(segment.seq);
            if !segment.last {
                tcp.set_fin(false);
                tcp.set_psh(false);
            }
            if !segment.first {
                tcp.set_cwr(false);
            }
            tcp.set_checksum(pseudo);
            if segment.first && segment.last {
                // Not split: the kernel completes it with `skb_checksum_help`, which stores a
                // computed 0 as 0xffff.
                Completion::MangleZero
            } else {
                // `tcp_gso_segment` stores the folded sum as it comes, 0 included.
                Completion::Raw
            }
        }
        Transport::Udp => {
            let mut udp = UdpPacket::new_unchecked(l4);
            udp.set_len(u16::try_from(l4_len).map_err(too_long)?);
            if segment.keep_zero_udp_checksum {
                udp.set_checksum(0);
                Completion::None
            } else {
                // `__udp_gso_segment` stores a computed 0 as 0xffff (0 means "none").
                udp.set_checksum(pseudo);
                Completion::MangleZero
            }
        }
    };
    let completion = if segment.partial && completion != Completion::None {
        let (start, offset) = (layout.l4, layout.transport.checksum_offset());
        let repr = vnet_hdr::Repr {
            checksum: vnet_hdr::Checksum::Partial {
                start: u16::try_from(start).map_err(too_long)?,
                offset: u16::try_from(offset).map_err(too_long)?,
            },
            ..vnet_hdr::Repr::PLAIN
        };
        repr.emit(&mut vnet_hdr::Packet::new_unchecked(
            &mut scratch[..vnet_hdr::HEADER_LEN],
        ));
        Completion::None
    } else {
        completion
    };
    let frame = &mut scratch[vnet_hdr::HEADER_LEN..total];
    match completion {
        Completion::None => {}
        Completion::Raw => {
            // The checksum field holds the pseudo-header sum, so the sum from the L4 header to
            // the end covers the pseudo-header, the header and the payload.
            let value = !checksum::sum(&frame[layout.l4..]);
            TcpPacket::new_unchecked(&mut frame[layout.l4..]).set_checksum(value);
        }
        Completion::MangleZero => {
            checksum::complete_partial_checksum(
                frame,
                layout.l4,
                layout.transport.checksum_offset(),
            )
            .map_err(|_| GsoError::BadHeader)?;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::wire::IpAddress;

    const SRC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const DST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

    const FIN: u8 = 0x01;
    const PSH: u8 = 0x08;
    const ACK: u8 = 0x10;
    const ECE: u8 = 0x40;
    const CWR: u8 = 0x80;

    /// What a test super-frame holds.
    #[derive(Debug, Clone)]
    struct Spec {
        v6: bool,
        udp: bool,
        mss: u16,
        payload: Vec<u8>,
        /// IPv4 options (a multiple of 4 bytes, at most 40).
        ip_options: Vec<u8>,
        /// IPv6: put a destination-options header (8 bytes) before the L4 header.
        dest_opts: bool,
        /// TCP options (a multiple of 4 bytes, at most 40).
        tcp_options: Vec<u8>,
        tcp_flags: u8,
        seq: u32,
        ident: u16,
        needs_csum: bool,
        ecn: bool,
        /// Bytes of Ethernet padding after the IP packet.
        padding: usize,
    }

    impl Spec {
        fn tcp4(payload_len: usize, mss: u16) -> Spec {
            Spec {
                v6: false,
                udp: false,
                mss,
                payload: (0..payload_len)
                    .map(|i| u8::try_from(i * 7 % 251).unwrap())
                    .collect(),
                ip_options: Vec::new(),
                dest_opts: false,
                tcp_options: Vec::new(),
                tcp_flags: ACK | PSH | FIN,
                seq: 0x1000_0000,
                ident: 0x1234,
                needs_csum: true,
                ecn: false,
                padding: 0,
            }
        }

        fn tcp6(payload_len: usize, mss: u16) -> Spec {
            Spec {
                v6: true,
                ..Spec::tcp4(payload_len, mss)
            }
        }

        fn udp4(payload_len: usize, mss: u16) -> Spec {
            Spec {
                udp: true,
                tcp_flags: 0,
                ..Spec::tcp4(payload_len, mss)
            }
        }

        fn l3_header_len(&self) -> usize {
            if self.v6 {
                40 + if self.dest_opts { 8 } else { 0 }
            } else {
                20 + self.ip_options.len()
            }
        }

        fn l4_header_len(&self) -> usize {
            if self.udp {
                8
            } else {
                20 + self.tcp_options.len()
            }
        }

        fn headers_len(&self) -> usize {
            14 + self.l3_header_len() + self.l4_header_len()
        }

        fn gso_type(&self) -> u8 {
            let kind = if self.udp {
                vnet_hdr::gso::UDP_L4
            } else if self.v6 {
                vnet_hdr::gso::TCPV6
            } else {
                vnet_hdr::gso::TCPV4
            };
            kind | if self.ecn { vnet_hdr::gso::ECN } else { 0 }
        }

        fn ip_addrs(&self) -> (IpAddress, IpAddress) {
            if self.v6 {
                (IpAddress::Ipv6(SRC6), IpAddress::Ipv6(DST6))
            } else {
                (IpAddress::Ipv4(SRC4), IpAddress::Ipv4(DST4))
            }
        }

        /// The super-frame as a TAP hands it over: the L4 checksum field holds the pseudo-header
        /// sum over the whole L4 length (what `tcp_v4_send_check` leaves) when `needs_csum`,
        /// the full checksum otherwise.
        fn build(&self) -> Vec<u8> {
            let l3 = self.l3_header_len();
            let l4_len = self.l4_header_len() + self.payload.len();
            let eth_len = 14 + l3 + l4_len;
            let mut frame = vec![0u8; 10 + eth_len + self.padding];
            let protocol = if self.udp { PROTOCOL_UDP } else { PROTOCOL_TCP };
            {
                let mut vnet = vnet_hdr::Packet::new_unchecked(&mut frame[..]);
                vnet.set_flags(if self.needs_csum {
                    vnet_hdr::flags::NEEDS_CSUM
                } else {
                    0
                });
                vnet.set_gso_type(self.gso_type());
                vnet.set_hdr_len(u16::try_from(self.headers_len()).unwrap());
                vnet.set_gso_size(self.mss);
                if self.needs_csum {
                    vnet.set_csum_start(u16::try_from(14 + l3).unwrap());
                    vnet.set_csum_offset(if self.udp { 6 } else { 16 });
                }
            }
            let eth = &mut frame[10..];
            eth[0..6].copy_from_slice(&MAC_DST);
            eth[6..12].copy_from_slice(&MAC_SRC);
            let ethertype: u16 = if self.v6 { 0x86dd } else { 0x0800 };
            eth[12..14].copy_from_slice(&ethertype.to_be_bytes());
            let ip = &mut eth[14..];
            if self.v6 {
                let mut packet = Ipv6Packet::new_unchecked(&mut ip[..]);
                packet.set_version(6);
                packet.set_payload_len(u16::try_from(l3 - 40 + l4_len).unwrap());
                packet.set_hop_limit(64);
                packet.set_src_addr(SRC6);
                packet.set_dst_addr(DST6);
                if self.dest_opts {
                    packet.set_next_header(smoltcp::wire::IpProtocol::Ipv6Opts);
                    // Next header, length 0 (8 bytes), then a PadN option of 4 bytes.
                    ip[40..48].copy_from_slice(&[protocol, 0, 1, 4, 0, 0, 0, 0]);
                } else {
                    packet.set_next_header(protocol.into());
                }
            } else {
                let mut packet = Ipv4Packet::new_unchecked(&mut ip[..]);
                packet.set_version(4);
                packet.set_header_len(u8::try_from(l3).unwrap());
                packet.set_total_len(u16::try_from(l3 + l4_len).unwrap());
                packet.set_ident(self.ident);
                packet.clear_flags();
                packet.set_dont_frag(true);
                packet.set_hop_limit(64);
                packet.set_next_header(protocol.into());
                packet.set_src_addr(SRC4);
                packet.set_dst_addr(DST4);
                ip[20..l3].copy_from_slice(&self.ip_options);
                Ipv4Packet::new_unchecked(&mut ip[..]).fill_checksum();
            }
            let l4 = &mut ip[l3..l3 + l4_len];
            let header_len = self.l4_header_len();
            l4[header_len..].copy_from_slice(&self.payload);
            if self.udp {
                let mut packet = UdpPacket::new_unchecked(&mut l4[..]);
                packet.set_src_port(4000);
                packet.set_dst_port(5000);
                packet.set_len(u16::try_from(l4_len).unwrap());
            } else {
                let mut packet = TcpPacket::new_unchecked(&mut l4[..]);
                packet.set_src_port(40000);
                packet.set_dst_port(80);
                packet.set_seq_number(TcpSeqNumber(i32::from_be_bytes(self.seq.to_be_bytes())));
                packet.set_ack_number(TcpSeqNumber(0x0777));
                packet.set_header_len(u8::try_from(header_len).unwrap());
                packet.set_window_len(0xffff);
                l4[13] = self.tcp_flags;
                l4[20..header_len].copy_from_slice(&self.tcp_options);
            }
            let (src, dst) = self.ip_addrs();
            let checksum_at = if self.udp { 6 } else { 16 };
            if self.needs_csum {
                let pseudo = if self.v6 {
                    checksum::pseudo_header_ipv6(
                        SRC6,
                        DST6,
                        protocol,
                        u32::try_from(l4_len).unwrap(),
                    )
                } else {
                    checksum::pseudo_header_ipv4(
                        SRC4,
                        DST4,
                        protocol,
                        u16::try_from(l4_len).unwrap(),
                    )
                };
                l4[checksum_at..checksum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
            } else if self.udp {
                UdpPacket::new_unchecked(&mut l4[..]).fill_checksum(&src, &dst);
            } else {
                TcpPacket::new_unchecked(&mut l4[..]).fill_checksum(&src, &dst);
            }
            // Padding bytes are non-zero so that a leak into a segment would show.
            for byte in &mut frame[10 + eth_len..] {
                *byte = 0xee;
            }
            frame
        }
    }

    fn segment_all(segmenter: &mut Segmenter, frame: &[u8]) -> Result<Vec<Vec<u8>>, GsoError> {
        let mut out = Vec::new();
        let count = segmenter.segment(frame, |segment| out.push(segment.to_vec()))?;
        assert_eq!(count, out.len(), "returned count equals emitted segments");
        Ok(out)
    }

    /// Checks every property a segment of `spec` must have and returns the segments' payloads
    /// concatenated.
    fn check_segments(spec: &Spec, segments: &[Vec<u8>]) -> Vec<u8> {
        let mss = usize::from(spec.mss);
        let expected = spec.payload.len().div_ceil(mss).max(1);
        assert_eq!(segments.len(), expected, "segment count");
        let headers_len = spec.headers_len();
        let l3 = spec.l3_header_len();
        let (src, dst) = spec.ip_addrs();
        let original = spec.build();
        let mut payload = Vec::new();
        for (index, segment) in segments.iter().enumerate() {
            let first = index == 0;
            let last = index + 1 == segments.len();
            assert_eq!(&segment[..10], &[0u8; 10], "zeroed virtio_net_hdr");
            let eth = &segment[10..];
            assert_eq!(&eth[..14], &original[10..24], "Ethernet header copied");
            let chunk_len = if last {
                spec.payload.len() - mss * (segments.len() - 1)
            } else {
                mss
            };
            assert_eq!(eth.len(), headers_len + chunk_len, "segment {index} length");
            assert!(eth.len() - 14 <= mss + l3 + spec.l4_header_len(), "fits");
            let ip = &eth[14..];
            let l4 = if spec.v6 {
                let packet = Ipv6Packet::new_checked(ip).unwrap();
                assert_eq!(usize::from(packet.payload_len()), ip.len() - 40);
                // Extension headers copied unchanged.
                assert_eq!(&ip[40..l3], &original[10 + 14 + 40..10 + 14 + l3]);
                &ip[l3..]
            } else {
                let packet = Ipv4Packet::new_checked(ip).unwrap();
                assert!(packet.verify_checksum(), "IPv4 header checksum of {index}");
                assert_eq!(usize::from(packet.total_len()), ip.len());
                assert_eq!(usize::from(packet.header_len()), l3);
                let step = u16::try_from(index).unwrap();
                assert_eq!(packet.ident(), spec.ident.wrapping_add(step), "IP id");
                assert!(packet.dont_frag());
                assert_eq!(&ip[20..l3], &spec.ip_options[..], "IPv4 options copied");
                &ip[l3..]
            };
            if spec.udp {
                let packet = UdpPacket::new_checked(l4).unwrap();
                assert_eq!(usize::from(packet.len()), l4.len(), "UDP length");
                assert_ne!(packet.checksum(), 0, "UDP checksum present");
                assert!(
                    packet.verify_checksum(&src, &dst),
                    "UDP checksum of {index}"
                );
                assert_eq!((packet.src_port(), packet.dst_port()), (4000, 5000));
                payload.extend_from_slice(packet.payload());
            } else {
                let packet = TcpPacket::new_checked(l4).unwrap();
                assert!(
                    packet.verify_checksum(&src, &dst),
                    "TCP checksum of {index}"
                );
                let advance = u32::try_from(index * mss).unwrap();
                let seq = u32::from_be_bytes(packet.seq_number().0.to_be_bytes());
                assert_eq!(seq, spec.seq.wrapping_add(advance), "seq of {index}");
                assert_eq!(packet.ack_number(), TcpSeqNumber(0x0777));
                let mut flags = spec.tcp_flags;
                if !last {
                    flags &= !(FIN | PSH);
                }
                if !first {
                    flags &= !CWR;
                }
                assert_eq!(l4[13], flags, "flags of {index}");
                assert_eq!(
                    &l4[20..usize::from(packet.header_len())],
                    &spec.tcp_options[..]
                );
                payload.extend_from_slice(packet.payload());
            }
        }
        payload
    }

    fn run(spec: &Spec) -> Vec<Vec<u8>> {
        let mut segmenter = Segmenter::new();
        let segments = segment_all(&mut segmenter, &spec.build()).unwrap();
        assert_eq!(check_segments(spec, &segments), spec.payload);
        segments
    }

    #[test]
    fn tcp4_three_full_segments_and_a_partial_one() {
        let spec = Spec::tcp4(3 * 1000 + 234, 1000);
        let segments = run(&spec);
        assert_eq!(segments.len(), 4);
        // Spelled out for the first and last segment.
        let first = TcpPacket::new_checked(&segments[0][10 + 34..]).unwrap();
        assert!(first.ack() && !first.psh() && !first.fin());
        let last = TcpPacket::new_checked(&segments[3][10 + 34..]).unwrap();
        assert!(last.ack() && last.psh() && last.fin());
        assert_eq!(last.payload().len(), 234);
        let ip = Ipv4Packet::new_checked(&segments[3][10 + 14..]).unwrap();
        assert_eq!((ip.ident(), ip.total_len()), (0x1237, 20 + 20 + 234));
    }

    /// Left partial, each segment is the complete one but for its L4 checksum field, which
    /// holds the pseudo-header sum, and `NEEDS_CSUM` pointing at it: completing it gives the
    /// complete segment back, byte for byte.
    #[test]
    fn partial_segments_complete_to_the_complete_ones() {
        for spec in [
            Spec::tcp4(3 * 1000 + 234, 1000),
            Spec::tcp6(2 * 1000 + 7, 1000),
        ] {
            let frame = spec.build();
            let complete = run(&spec);
            let mut partial = Vec::new();
            let count = Segmenter::new()
                .segment_with(&frame, true, |segment| partial.push(segment.to_vec()))
                .unwrap();
            assert_eq!(count, complete.len());
            for (mut segment, complete) in partial.into_iter().zip(complete) {
                let vnet = vnet_hdr::Packet::new_checked(&segment[..]).unwrap();
                assert!(vnet.needs_csum() && !vnet.is_gso());
                let (start, offset) = (
                    usize::from(vnet.csum_start()),
                    usize::from(vnet.csum_offset()),
                );
                assert_eq!(offset, 16);
                assert_ne!(segment, complete, "the checksum was left partial");
                checksum::complete_partial_checksum(&mut segment[10..], start, offset).unwrap();
                assert_eq!(segment[10..], complete[10..]);
            }
        }
    }

    #[test]
    fn tcp4_options_are_copied() {
        let spec = Spec {
            // Router alert (copied), then NOPs and an end of options.
            ip_options: vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00],
            // MSS, NOP, NOP, timestamps.
            tcp_options: vec![
                0x01, 0x01, 0x08, 0x0a, 0, 0, 0, 1, 0, 0, 0, 2, 0x02, 0x04, 0x05, 0xb4,
            ],
            ..Spec::tcp4(5000, 1448)
        };
        run(&spec);
    }

    #[test]
    fn cwr_only_on_the_first_segment_fin_psh_only_on_the_last() {
        let spec = Spec {
            tcp_flags: ACK | PSH | FIN | CWR | ECE,
            ecn: true,
            ..Spec::tcp4(2500, 1000)
        };
        let segments = run(&spec);
        let flags: Vec<u8> = segments.iter().map(|s| s[10 + 34 + 13]).collect();
        assert_eq!(
            flags,
            vec![ACK | CWR | ECE, ACK | ECE, ACK | ECE | PSH | FIN]
        );
    }

    #[test]
    fn ip_id_and_sequence_number_wrap() {
        let spec = Spec {
            ident: 0xfffe,
            seq: 0xffff_fc00,
            ..Spec::tcp4(4000, 1000)
        };
        let segments = run(&spec);
        let ids: Vec<u16> = segments
            .iter()
            .map(|s| Ipv4Packet::new_checked(&s[10 + 14..]).unwrap().ident())
            .collect();
        assert_eq!(ids, vec![0xfffe, 0xffff, 0x0000, 0x0001]);
    }

    #[test]
    fn tcp6_segments() {
        let segments = run(&Spec::tcp6(3 * 1000 + 1, 1000));
        assert_eq!(segments.len(), 4);
        let ip = Ipv6Packet::new_checked(&segments[3][10 + 14..]).unwrap();
        assert_eq!(ip.payload_len(), 20 + 1);
    }

    #[test]
    fn tcp6_with_destination_options() {
        run(&Spec {
            dest_opts: true,
            tcp_options: vec![0x01, 0x01, 0x01, 0x00],
            ..Spec::tcp6(4321, 1200)
        });
    }

    #[test]
    fn udp4_segments_are_whole_datagrams() {
        let segments = run(&Spec::udp4(3 * 1000 + 400, 1000));
        assert_eq!(segments.len(), 4);
        let udp = UdpPacket::new_checked(&segments[0][10 + 34..]).unwrap();
        assert_eq!(udp.len(), 1008);
        let udp = UdpPacket::new_checked(&segments[3][10 + 34..]).unwrap();
        assert_eq!(udp.len(), 408);
    }

    #[test]
    fn udp6_segments() {
        run(&Spec {
            v6: true,
            ..Spec::udp4(2999, 1000)
        });
    }

    #[test]
    fn udp4_without_checksum_keeps_zero() {
        let spec = Spec {
            needs_csum: false,
            ..Spec::udp4(2500, 1000)
        };
        let mut frame = spec.build();
        frame[10 + 34 + 6..10 + 34 + 8].copy_from_slice(&[0, 0]);
        let segments = segment_all(&mut Segmenter::new(), &frame).unwrap();
        assert_eq!(segments.len(), 3);
        for segment in &segments {
            let udp = UdpPacket::new_checked(&segment[10 + 34..]).unwrap();
            assert_eq!(udp.checksum(), 0);
        }
    }

    #[test]
    fn without_needs_csum_checksums_are_computed() {
        run(&Spec {
            needs_csum: false,
            ..Spec::tcp4(3000, 1000)
        });
        run(&Spec {
            needs_csum: false,
            ..Spec::udp4(3000, 1000)
        });
    }

    #[test]
    fn small_payload_is_one_segment_with_flags_kept() {
        let spec = Spec {
            tcp_flags: ACK | PSH | FIN | CWR,
            ..Spec::tcp4(500, 1000)
        };
        let segments = run(&spec);
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0][10 + 34 + 13], ACK | PSH | FIN | CWR);
        // An exact multiple leaves no empty trailing segment; an empty payload is one segment.
        assert_eq!(run(&Spec::tcp4(2000, 1000)).len(), 2);
        assert_eq!(run(&Spec::tcp4(0, 1000)).len(), 1);
    }

    /// Adds `value` to the 16-bit word at `at` in ones' complement.
    fn add_to_word(bytes: &mut [u8], at: usize, value: u16) {
        let word = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let new = checksum::combine(&[word, value]);
        bytes[at..at + 2].copy_from_slice(&new.to_be_bytes());
    }

    /// A TCP segment of a split whose checksum computes to 0 carries 0 (as
    /// `tcp_gso_segment` leaves it); a UDP segment or an unsplit frame carries 0xffff.
    #[test]
    fn computed_zero_checksum() {
        for (spec, expected) in [
            (Spec::tcp4(3000, 1000), 0x0000),
            (Spec::tcp6(3000, 1000), 0x0000),
            (Spec::udp4(3000, 1000), 0xffff),
            (Spec::tcp4(1000, 1000), 0xffff),
        ] {
            let index = spec.payload.len() / 1000 / 2;
            let mut frame = spec.build();
            let segments = segment_all(&mut Segmenter::new(), &frame).unwrap();
            let l4 = 10 + spec.headers_len() - spec.l4_header_len();
            let at = if spec.udp { 6 } else { 16 };
            let current =
                u16::from_be_bytes([segments[index][l4 + at], segments[index][l4 + at + 1]]);
            // Adding the checksum to a payload word of that segment makes its sum 0xffff.
            let word = 10 + spec.headers_len() + index * 1000;
            add_to_word(&mut frame, word, current);
            let mut spec_after = spec.clone();
            spec_after.payload = frame[10 + spec.headers_len()..].to_vec();
            let segments = segment_all(&mut Segmenter::new(), &frame).unwrap();
            let stored =
                u16::from_be_bytes([segments[index][l4 + at], segments[index][l4 + at + 1]]);
            assert_eq!(stored, expected, "{spec:?}");
            assert_eq!(check_segments(&spec_after, &segments), spec_after.payload);
        }
    }

    #[test]
    fn ethernet_padding_is_dropped() {
        run(&Spec {
            padding: 17,
            ..Spec::tcp4(2100, 1000)
        });
        run(&Spec {
            padding: 5,
            ..Spec::udp4(2100, 1000)
        });
    }

    #[test]
    fn segments_fit_gso_size_plus_headers() {
        let spec = Spec::tcp4(10_000, 1448);
        let mut segments = Vec::new();
        Segmenter::new()
            .segment(&spec.build(), |s| segments.push(s.to_vec()))
            .unwrap();
        for segment in &segments {
            let ip = Ipv4Packet::new_checked(&segment[10 + 14..]).unwrap();
            assert!(usize::from(ip.total_len()) <= 1448 + 20 + 20);
        }
        assert_eq!(segments.len(), 7);
    }

    #[test]
    fn one_segmenter_serves_many_frames() {
        let mut segmenter = Segmenter::new();
        for spec in [
            Spec::tcp4(9000, 1448),
            Spec::udp4(100, 1000),
            Spec::tcp6(6000, 1000),
        ] {
            let segments = segment_all(&mut segmenter, &spec.build()).unwrap();
            assert_eq!(check_segments(&spec, &segments), spec.payload);
        }
    }

    /// Segments `frame` expecting `error`, and checks that nothing was emitted.
    fn refused(frame: &[u8]) -> GsoError {
        let mut emitted = 0;
        let error = Segmenter::new()
            .segment(frame, |_| emitted += 1)
            .unwrap_err();
        assert_eq!(emitted, 0, "nothing emitted on {error:?}");
        error
    }

    #[test]
    fn not_gso() {
        let mut frame = Spec::tcp4(3000, 1000).build();
        frame[1] = vnet_hdr::gso::NONE;
        assert_eq!(refused(&frame), GsoError::NotGso);
        // Even with the ECN bit alone.
        frame[1] = vnet_hdr::gso::ECN;
        assert_eq!(refused(&frame), GsoError::NotGso);
    }

    #[test]
    fn truncated() {
        let frame = Spec::tcp4(3000, 1000).build();
        assert_eq!(refused(&frame[..5]), GsoError::Truncated);
        assert_eq!(refused(&frame[..10 + 13]), GsoError::Truncated);
        assert_eq!(refused(&frame[..10 + 14 + 19]), GsoError::Truncated);
        // Headers complete but the IP total length runs past the end.
        assert_eq!(refused(&frame[..frame.len() - 1]), GsoError::Truncated);
        let frame = Spec::tcp6(3000, 1000).build();
        assert_eq!(refused(&frame[..10 + 14 + 39]), GsoError::Truncated);
        assert_eq!(refused(&frame[..frame.len() - 1]), GsoError::Truncated);
    }

    #[test]
    fn gso_size_zero() {
        let mut frame = Spec::tcp4(3000, 1000).build();
        frame[4..6].copy_from_slice(&[0, 0]);
        assert_eq!(refused(&frame), GsoError::BadGsoSize);
    }

    #[test]
    fn non_ip_and_unsupported_types() {
        let frame = Spec::tcp4(3000, 1000).build();
        for ethertype in [[0x08, 0x06], [0x81, 0x00], [0x88, 0xa8]] {
            let mut bad = frame.clone();
            bad[10 + 12..10 + 14].copy_from_slice(&ethertype);
            assert_eq!(refused(&bad), GsoError::UnsupportedType);
        }
        let mut ufo = Spec::udp4(3000, 1000).build();
        ufo[1] = vnet_hdr::gso::UDP;
        assert_eq!(refused(&ufo), GsoError::UnsupportedType);
        let mut unknown = frame.clone();
        unknown[1] = 0x02;
        assert_eq!(refused(&unknown), GsoError::UnsupportedType);
    }

    #[test]
    fn type_mismatch() {
        let mut v4_as_v6 = Spec::tcp4(3000, 1000).build();
        v4_as_v6[1] = vnet_hdr::gso::TCPV6;
        assert_eq!(refused(&v4_as_v6), GsoError::TypeMismatch);
        let mut v6_as_v4 = Spec::tcp6(3000, 1000).build();
        v6_as_v4[1] = vnet_hdr::gso::TCPV4;
        assert_eq!(refused(&v6_as_v4), GsoError::TypeMismatch);
        let mut udp_as_tcp = Spec::udp4(3000, 1000).build();
        udp_as_tcp[1] = vnet_hdr::gso::TCPV4;
        assert_eq!(refused(&udp_as_tcp), GsoError::TypeMismatch);
        let mut tcp_as_udp = Spec::tcp6(3000, 1000).build();
        tcp_as_udp[1] = vnet_hdr::gso::UDP_L4;
        assert_eq!(refused(&tcp_as_udp), GsoError::TypeMismatch);
    }

    #[test]
    fn bad_headers() {
        let frame = Spec::tcp4(3000, 1000).build();
        let ip = 10 + 14;
        let mut version = frame.clone();
        version[ip] = 0x65;
        assert_eq!(refused(&version), GsoError::BadHeader);
        let mut ihl = frame.clone();
        ihl[ip] = 0x44;
        assert_eq!(refused(&ihl), GsoError::BadHeader);
        let mut short_total = frame.clone();
        short_total[ip + 2..ip + 4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(refused(&short_total), GsoError::BadHeader);
        let mut fragment = frame.clone();
        fragment[ip + 6] |= 0x20;
        assert_eq!(refused(&fragment), GsoError::BadHeader);
        let mut data_offset = frame.clone();
        data_offset[ip + 20 + 12] = 0x40;
        assert_eq!(refused(&data_offset), GsoError::BadHeader);
        let mut data_offset_past_end = frame.clone();
        // Total length 60: a 20-byte header and 40 L4 bytes, but the TCP header claims 60.
        data_offset_past_end[ip + 2..ip + 4].copy_from_slice(&60u16.to_be_bytes());
        data_offset_past_end[ip + 20 + 12] = 0xf0;
        assert_eq!(refused(&data_offset_past_end), GsoError::BadHeader);
        let mut jumbo = Spec::tcp6(3000, 1000).build();
        jumbo[ip + 4..ip + 6].copy_from_slice(&[0, 0]);
        assert_eq!(refused(&jumbo), GsoError::BadHeader);
    }

    #[test]
    fn ipv6_extension_headers_refused() {
        let frame = Spec {
            dest_opts: true,
            ..Spec::tcp6(3000, 1000)
        }
        .build();
        let ext = 10 + 14 + 40;
        // A fragment header where the destination options were.
        let mut fragment = frame.clone();
        fragment[10 + 14 + 6] = 44;
        assert_eq!(refused(&fragment), GsoError::UnsupportedType);
        // A routing header with segments left.
        let mut routing = frame.clone();
        routing[10 + 14 + 6] = 43;
        routing[ext + 3] = 1;
        assert_eq!(refused(&routing), GsoError::UnsupportedType);
        // An extension header (2048 bytes) longer than the packet.
        let mut long = Spec {
            dest_opts: true,
            ..Spec::tcp6(1000, 500)
        }
        .build();
        long[ext + 1] = 0xff;
        assert_eq!(refused(&long), GsoError::BadHeader);
    }

    #[test]
    fn checksum_offsets_must_point_at_the_l4_checksum() {
        let frame = Spec::tcp4(3000, 1000).build();
        let mut start = frame.clone();
        start[6..8].copy_from_slice(&30u16.to_le_bytes());
        assert_eq!(refused(&start), GsoError::BadChecksumOffset);
        let mut offset = frame.clone();
        offset[8..10].copy_from_slice(&6u16.to_le_bytes());
        assert_eq!(refused(&offset), GsoError::BadChecksumOffset);
        let mut outside = frame.clone();
        outside[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(refused(&outside), GsoError::BadChecksumOffset);
    }

    #[test]
    fn too_many_udp_segments() {
        let spec = Spec::udp4(UDP_MAX_SEGMENTS + 1, 1);
        assert_eq!(refused(&spec.build()), GsoError::TooManySegments);
        let spec = Spec::udp4(UDP_MAX_SEGMENTS, 1);
        assert_eq!(run(&spec).len(), UDP_MAX_SEGMENTS);
        // TCP has no such limit.
        assert_eq!(run(&Spec::tcp4(1000, 1)).len(), 1000);
    }

    #[test]
    fn largest_packets_fit_the_scratch_buffer() {
        // IPv4 total length 65535 and IPv6 payload length 65535, with gso_size 65535.
        let v4 = Spec::tcp4(65_535 - 40, u16::MAX);
        assert_eq!(run(&v4).len(), 1);
        let v6 = Spec::tcp6(65_535 - 20, u16::MAX);
        assert_eq!(run(&v6).len(), 1);
        let v6 = Spec::tcp6(65_535 - 20, 1000);
        assert_eq!(run(&v6).len(), 66);
    }

    #[test]
    fn error_keys_are_stable_and_unique() {
        let keys: Vec<&str> = GsoError::ALL.iter().map(|e| e.key()).collect();
        for (index, key) in keys.iter().enumerate() {
            assert!(key.starts_with("gso."), "{key}");
            assert!(!keys[..index].contains(key), "duplicate {key}");
            assert!(!GsoError::ALL[index].description().is_empty());
        }
        assert_eq!(GsoError::BadHeader.key(), "gso.bad_header");
        assert_eq!(GsoError::NotGso.to_string(), GsoError::NotGso.description());
    }

    fn arbitrary_spec() -> impl Strategy<Value = Spec> {
        (
            (any::<bool>(), any::<bool>(), 1u16..3000, 0usize..9000),
            (0usize..=10, any::<bool>(), 0usize..=10, any::<u8>()),
            (
                any::<u32>(),
                any::<u16>(),
                any::<bool>(),
                any::<bool>(),
                0usize..20,
            ),
        )
            .prop_map(
                |(
                    (v6, udp, mss, payload_len),
                    (ip_words, dest_opts, tcp_words, flags),
                    (seq, ident, needs_csum, ecn, padding),
                )| {
                    let payload_len = if udp {
                        payload_len.min(usize::from(mss) * UDP_MAX_SEGMENTS)
                    } else {
                        payload_len
                    };
                    Spec {
                        v6,
                        udp,
                        mss,
                        payload: (0..payload_len)
                            .map(|i| u8::try_from(i % 253).unwrap() ^ flags)
                            .collect(),
                        // NOP options: valid whatever their count.
                        ip_options: if v6 {
                            Vec::new()
                        } else {
                            vec![1; ip_words * 4]
                        },
                        dest_opts: v6 && dest_opts,
                        tcp_options: if udp {
                            Vec::new()
                        } else {
                            vec![1; tcp_words * 4]
                        },
                        tcp_flags: if udp { 0 } else { flags },
                        seq,
                        ident,
                        needs_csum,
                        ecn,
                        padding,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn valid_super_frames_segment_exactly(spec in arbitrary_spec()) {
            let mut segmenter = Segmenter::new();
            let segments = segment_all(&mut segmenter, &spec.build()).unwrap();
            prop_assert_eq!(check_segments(&spec, &segments), spec.payload.clone());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            flags in any::<u8>(),
            gso_type in prop_oneof![
                Just(vnet_hdr::gso::TCPV4),
                Just(vnet_hdr::gso::TCPV6),
                Just(vnet_hdr::gso::UDP_L4),
                Just(vnet_hdr::gso::TCPV4 | vnet_hdr::gso::ECN),
                any::<u8>(),
            ],
            fields in any::<[u16; 4]>(),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut frame = vec![flags, gso_type];
            for field in fields {
                frame.extend_from_slice(&field.to_le_bytes());
            }
            frame.extend_from_slice(&body);
            let mut total = 0;
            let result = Segmenter::new().segment(&frame, |segment| total += segment.len());
            if result.is_err() {
                prop_assert_eq!(total, 0);
            }
        }

        #[test]
        fn mutated_super_frames_never_panic(
            spec in arbitrary_spec(),
            mutations in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<proptest::sample::Index>(),
            do_cut in any::<bool>(),
        ) {
            let mut frame = spec.build();
            // Mostly headers: mutate within the first 140 bytes.
            let span = frame.len().min(140);
            for (at, value) in mutations {
                frame[at.index(span)] = value;
            }
            if do_cut {
                frame.truncate(cut.index(frame.len() + 1));
            }
            let mut segmenter = Segmenter::new();
            let result = segmenter.segment(&frame, |segment| {
                // Whatever was accepted comes out with a zeroed virtio_net_hdr.
                assert_eq!(&segment[..10], &[0u8; 10]);
            });
            if let Ok(count) = result {
                prop_assert!(count >= 1);
            }
        }
    }
}
