//! IPv6 (RFC 8200) packet parsing, address helpers, ICMPv6 (RFC 4443) and
//! Neighbor Discovery (RFC 4861) parsing and frame builders.
//!
//! Parse functions never allocate and never panic; builders write into a
//! caller-supplied buffer and return 0 instead of panicking when it is short.

use super::checksum::{combine, pseudo_header_ipv6, sum};
use std::fmt;
use std::net::Ipv6Addr;

/// Length of the fixed IPv6 header (RFC 8200 §3).
pub const HEADER_LEN: usize = 40;
/// Longest extension-header chain [`parse`] accepts; longer chains are refused.
pub const MAX_EXTENSION_HEADERS: usize = 8;
/// IPv6 minimum link MTU (RFC 8200 §5); ICMPv6 errors stay within it (RFC 4443 §2.4(c)).
pub const MIN_MTU: usize = 1280;
/// All-nodes link-local multicast address ff02::1 (RFC 4291 §2.7.1).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// All-routers link-local multicast address ff02::2 (RFC 4291 §2.7.1).
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const ICMP_HEADER_LEN: usize = 8;

const NH_HOP_BY_HOP: u8 = 0;
const NH_TCP: u8 = 6;
const NH_UDP: u8 = 17;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const NH_ICMPV6: u8 = 58;
const NH_NONE: u8 = 59;
const NH_DEST_OPTS: u8 = 60;
const NH_MOBILITY: u8 = 135;
const NH_HIP: u8 = 139;
const NH_SHIM6: u8 = 140;

const OPT_PAD1: u8 = 0;
const OPT_JUMBO: u8 = 0xc2;

const ICMP_ECHO_REQUEST: u8 = 128;
const ICMP_ECHO_REPLY: u8 = 129;
const ND_RS: u8 = 133;
const ND_RA: u8 = 134;
const ND_NS: u8 = 135;
const ND_NA: u8 = 136;
const ND_REDIRECT: u8 = 137;

const NDOPT_SLLA: u8 = 1;
const NDOPT_TLLA: u8 = 2;
const NDOPT_PREFIX: u8 = 3;
const NDOPT_MTU: u8 = 5;
const NDOPT_RDNSS: u8 = 25;

/// Fragment header contents (RFC 8200 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Fragment offset in 8-byte units.
    pub offset: u16,
    /// M flag: more fragments follow.
    pub more: bool,
    /// Identification.
    pub ident: u32,
}

/// Result of [`parse`]: the fixed header plus the end of the extension chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address (as in the fixed header).
    pub dst: Ipv6Addr,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class (DSCP + ECN).
    pub traffic_class: u8,
    /// 20-bit flow label.
    pub flow_label: u32,
    /// Payload length from the fixed header.
    pub payload_len: u16,
    /// Upper-layer protocol; for a non-first fragment, the fragment header's next header.
    pub next_header: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header
    /// (equals `packet_len` for No Next Header, 59).
    pub l4_offset: usize,
    /// `40 + payload_len`; bytes beyond this are link padding.
    pub packet_len: usize,
    /// Fragment header, if present (including atomic fragments, RFC 6946).
    pub fragment: Option<Fragment>,
}

/// Reasons [`parse`] refuses a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the 40-byte fixed header.
    Truncated,
    /// Version field is not 6.
    BadVersion,
    /// `40 + payload_len` exceeds the bytes available.
    BadPayloadLength,
    /// Jumbogram (RFC 2675): payload length 0 with Hop-by-Hop, or a Jumbo Payload option.
    Jumbogram,
    /// An extension header extends beyond the packet.
    ExtensionTruncated,
    /// More than [`MAX_EXTENSION_HEADERS`] extension headers.
    ChainTooLong,
    /// Hop-by-Hop Options not immediately after the fixed header (RFC 8200 §4.1).
    HopByHopNotFirst,
    /// A second Fragment header.
    FragmentMisplaced,
    /// First fragment without the whole header chain and upper-layer header (RFC 7112 §5).
    IncompleteChain,
    /// Malformed TLV option in Hop-by-Hop or Destination Options (RFC 8200 §4.2).
    BadOption,
    /// Upper-layer header shorter than its minimum (TCP 20, UDP 8, ICMPv6 4).
    L4Truncated,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Error {}

// ---------------------------------------------------------------------------
// Small panic-free byte helpers.

fn be16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes(s.try_into().ok()?))
}

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

fn addr(b: &[u8], off: usize) -> Option<Ipv6Addr> {
    let s = b.get(off..off.checked_add(16)?)?;
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(s).ok()?))
}

fn mac(b: &[u8], off: usize) -> Option<[u8; 6]> {
    let s = b.get(off..off.checked_add(6)?)?;
    s.try_into().ok()
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) -> Option<()> {
    buf.get_mut(off..off.checked_add(bytes.len())?)?
        .copy_from_slice(bytes);
    Some(())
}

fn put_u8(buf: &mut [u8], off: usize, v: u8) -> Option<()> {
    *buf.get_mut(off)? = v;
    Some(())
}

/// One's-complement checksum of an ICMPv6 message with its pseudo-header
/// (RFC 4443 §2.3), with the checksum field treated as it is in `icmp`.
fn icmpv6_sum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> Option<u16> {
    let len = u32::try_from(icmp.len()).ok()?;
    Some(combine(&[
        pseudo_header_ipv6(src, dst, NH_ICMPV6, len),
        sum(icmp),
    ]))
}

/// Zeroes the checksum field of `icmp` and writes the correct one.
fn fill_icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &mut [u8]) -> Option<()> {
    put(icmp, 2, &[0, 0])?;
    let c = !icmpv6_sum(src, dst, icmp)?;
    put(icmp, 2, &c.to_be_bytes())
}

// ---------------------------------------------------------------------------
// 1. Packet parsing.

/// Walks the TLV options of a Hop-by-Hop or Destination Options header
/// (RFC 8200 §4.2); `ext` is the whole header.
fn check_options(ext: &[u8], hop_by_hop: bool) -> Result<(), Error> {
    let mut opts = ext.get(2..).unwrap_or(&[]);
    while let Some((&ty, rest)) = opts.split_first() {
        if ty == OPT_PAD1 {
            opts = rest;
            continue;
        }
        let (&len, rest) = rest.split_first().ok_or(Error::BadOption)?;
        let (_data, rest) = rest
            .split_at_checked(usize::from(len))
            .ok_or(Error::BadOption)?;
        if hop_by_hop && ty == OPT_JUMBO {
            return Err(Error::Jumbogram);
        }
        opts = rest;
    }
    Ok(())
}

/// Extension headers walked by [`parse`] (RFC 8200 §4, IANA "IPv6 Extension Header Types").
fn is_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        NH_HOP_BY_HOP
            | NH_ROUTING
            | NH_FRAGMENT
            | NH_AH
            | NH_DEST_OPTS
            | NH_MOBILITY
            | NH_HIP
            | NH_SHIM6
    )
}

/// Minimum upper-layer header length checked by [`parse`].
fn l4_min_len(next_header: u8) -> usize {
    match next_header {
        NH_TCP => 20,
        NH_UDP => 8,
        NH_ICMPV6 => 4,
        _ => 0,
    }
}

/// Parses the IPv6 fixed header and walks the extension-header chain
/// (RFC 8200 §3–4, RFC 7112, RFC 6946, RFC 2675). `packet` starts at the
/// IPv6 header; bytes beyond `40 + payload_len` are ignored.
pub fn parse(packet: &[u8]) -> Result<Info, Error> {
    let h: &[u8; HEADER_LEN] = packet
        .get(..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(Error::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(Error::BadVersion);
    }
    let traffic_class = (h[0] << 4) | (h[1] >> 4);
    let flow_label = u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]);
    let payload_len = u16::from_be_bytes([h[4], h[5]]);
    let first_next = h[6];
    let hop_limit = h[7];
    let src = addr(h, 8).ok_or(Error::Truncated)?;
    let dst = addr(h, 24).ok_or(Error::Truncated)?;

    let packet_len = HEADER_LEN
        .checked_add(usize::from(payload_len))
        .ok_or(Error::BadPayloadLength)?;
    let pkt = packet.get(..packet_len).ok_or(Error::BadPayloadLength)?;
    if payload_len == 0 && first_next == NH_HOP_BY_HOP {
        return Err(Error::Jumbogram);
    }

    let mut info = Info {
        src,
        dst,
        hop_limit,
        traffic_class,
        flow_label,
        payload_len,
        next_header: first_next,
        l4_offset: HEADER_LEN,
        packet_len,
        fragment: None,
    };
    let mut next = first_next;
    let mut off = HEADER_LEN;
    let mut count = 0usize;
    while is_extension_header(next) {
        if next == NH_HOP_BY_HOP && off != HEADER_LEN {
            return Err(Error::HopByHopNotFirst);
        }
        count = count.saturating_add(1);
        if count > MAX_EXTENSION_HEADERS {
            return Err(Error::ChainTooLong);
        }
        if next == NH_FRAGMENT && info.fragment.is_some() {
            return Err(Error::FragmentMisplaced);
        }
        let first_fragment = matches!(info.fragment, Some(f) if f.offset == 0 && f.more);
        let truncated = if first_fragment {
            Error::IncompleteChain
        } else {
            Error::ExtensionTruncated
        };
        let len = if next == NH_FRAGMENT {
            8
        } else {
            let ext_len = usize::from(*pkt.get(off.saturating_add(1)).ok_or(truncated)?);
            if next == NH_AH {
                ext_len.saturating_add(2).saturating_mul(4) // RFC 4302 §2.2
            } else {
                ext_len.saturating_add(1).saturating_mul(8) // RFC 8200 §4.3–4.6, RFC 6275, RFC 7401, RFC 5533
            }
        };
        let end = off.checked_add(len).ok_or(truncated)?;
        let ext = pkt.get(off..end).ok_or(truncated)?;
        let ext_next = *ext.first().ok_or(truncated)?;
        match next {
            NH_HOP_BY_HOP => check_options(ext, true)?,
            NH_DEST_OPTS => check_options(ext, false)?,
            NH_FRAGMENT => {
                let word = be16(ext, 2).ok_or(truncated)?;
                let frag = Fragment {
                    offset: word >> 3,
                    more: word & 1 != 0,
                    ident: be32(ext, 4).ok_or(truncated)?,
                };
                info.fragment = Some(frag);
                if frag.offset != 0 {
                    // Non-first fragment: the upper layer is not in this packet.
                    info.next_header = ext_next;
                    info.l4_offset = end;
                    return Ok(info);
                }
            }
            _ => {}
        }
        next = ext_next;
        off = end;
    }

    let first_fragment = matches!(info.fragment, Some(f) if f.offset == 0 && f.more);
    if packet_len.saturating_sub(off) < l4_min_len(next) {
        return Err(if first_fragment {
            Error::IncompleteChain
        } else {
            Error::L4Truncated
        });
    }
    info.next_header = next;
    info.l4_offset = if next == NH_NONE { packet_len } else { off };
    Ok(info)
}

/// Decrements the hop limit in place (RFC 8200 §3) and returns the new value;
/// `None` if the packet is shorter than 40 bytes or the hop limit is already 0.
pub fn decrement_hop_limit(ipv6_packet: &mut [u8]) -> Option<u8> {
    if ipv6_packet.len() < HEADER_LEN {
        return None;
    }
    let hl = ipv6_packet.get_mut(7)?;
    *hl = hl.checked_sub(1)?;
    Some(*hl)
}

// ---------------------------------------------------------------------------
// 2. Addresses.

/// True for link-local unicast addresses, fe80::/10 (RFC 4291 §2.5.6).
pub fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// Modified EUI-64 interface identifier of a 48-bit MAC: ff:fe inserted in the
/// middle and the U/L bit (0x02 of the first byte) inverted (RFC 4291 App. A).
pub fn eui64_interface_id(mac: [u8; 6]) -> [u8; 8] {
    let [a, b, c, d, e, f] = mac;
    [a ^ 0x02, b, c, 0xff, 0xfe, d, e, f]
}

/// fe80::/64 plus the modified EUI-64 of `mac` (RFC 4862 §5.3, RFC 4291 App. A).
pub fn link_local_from_mac(mac: [u8; 6]) -> Ipv6Addr {
    slaac_address(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), mac)
}

/// The upper 64 bits of `prefix` plus the modified EUI-64 of `mac` (RFC 4862 §5.5.3).
pub fn slaac_address(prefix: Ipv6Addr, mac: [u8; 6]) -> Ipv6Addr {
    let p = prefix.octets();
    let i = eui64_interface_id(mac);
    Ipv6Addr::from([
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], i[0], i[1], i[2], i[3], i[4], i[5], i[6],
        i[7],
    ])
}

/// Solicited-node multicast address ff02::1:ffXX:XXXX of `a` (RFC 4291 §2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// Ethernet multicast MAC 33:33 plus the last four bytes of `a` (RFC 2464 §7).
pub fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

// ---------------------------------------------------------------------------
// 3. ICMPv6 and Neighbor Discovery parsing.

/// Verifies the ICMPv6 checksum of `icmp` (the whole message) with the
/// pseudo-header of `src`/`dst` (RFC 4443 §2.3, RFC 8200 §8.1).
/// False for messages shorter than 4 bytes.
pub fn icmpv6_checksum_ok(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> bool {
    icmp.len() >= 4 && icmpv6_sum(src, dst, icmp) == Some(0xffff)
}

/// A validated Neighbor Discovery message (RFC 4861 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nd {
    /// Router Solicitation (type 133).
    RouterSolicitation {
        /// First Source Link-Layer Address option.
        source_mac: Option<[u8; 6]>,
    },
    /// Router Advertisement (type 134).
    RouterAdvertisement,
    /// Neighbor Solicitation (type 135).
    NeighborSolicitation {
        /// Target address.
        target: Ipv6Addr,
        /// First Source Link-Layer Address option.
        source_mac: Option<[u8; 6]>,
    },
    /// Neighbor Advertisement (type 136).
    NeighborAdvertisement {
        /// Target address.
        target: Ipv6Addr,
        /// R flag.
        router: bool,
        /// S flag.
        solicited: bool,
        /// O flag.
        override_: bool,
        /// First Target Link-Layer Address option.
        target_mac: Option<[u8; 6]>,
    },
    /// Redirect (type 137).
    Redirect,
}

/// Reasons [`parse_nd`] refuses an ND message (RFC 4861 §6.1, §7.1, §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdError {
    /// Shorter than the fixed part of the message.
    Truncated,
    /// ICMP code is not 0.
    BadCode,
    /// An option has length 0 or extends beyond the message.
    BadOption,
    /// NS/NA target (or Redirect destination) is a multicast address.
    MulticastTarget,
    /// NS from the unspecified address carries a Source Link-Layer Address option.
    SourceLinkAddressFromUnspecified,
}

impl fmt::Display for NdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for NdError {}

/// Link-layer address options found in an ND option area.
#[derive(Default)]
struct LinkOptions {
    slla: Option<[u8; 6]>,
    tlla: Option<[u8; 6]>,
    any_slla: bool,
}

/// Walks ND options (RFC 4861 §4.6): every length non-zero and within the message.
fn scan_nd_options(mut opts: &[u8]) -> Result<LinkOptions, NdError> {
    let mut found = LinkOptions::default();
    while !opts.is_empty() {
        let (Some(&ty), Some(&len)) = (opts.first(), opts.get(1)) else {
            return Err(NdError::BadOption);
        };
        if len == 0 {
            return Err(NdError::BadOption);
        }
        let (opt, rest) = opts
            .split_at_checked(usize::from(len) * 8)
            .ok_or(NdError::BadOption)?;
        match (ty, len) {
            (NDOPT_SLLA, _) => {
                found.any_slla = true;
                if len == 1 && found.slla.is_none() {
                    found.slla = mac(opt, 2);
                }
            }
            (NDOPT_TLLA, 1) if found.tlla.is_none() => found.tlla = mac(opt, 2),
            _ => {}
        }
        opts = rest;
    }
    Ok(found)
}

/// Parses and validates a Neighbor Discovery message (RFC 4861 §6.1.1,
/// §6.1.2, §7.1.1, §7.1.2, §8.1): code 0, fixed length, option lengths,
/// non-multicast target, no SLLA in DAD solicitations. `icmp` starts at the
/// type byte; `src` is the IPv6 source. `Ok(None)` for types outside
/// 133..=137. Hop limit 255 and the checksum are the caller's to check.
pub fn parse_nd(icmp: &[u8], src: Ipv6Addr) -> Result<Option<Nd>, NdError> {
    let ty = *icmp.first().ok_or(NdError::Truncated)?;
    let fixed = match ty {
        ND_RS => 8,
        ND_RA => 16,
        ND_NS | ND_NA => 24,
        ND_REDIRECT => 40,
        _ => return Ok(None),
    };
    let code = *icmp.get(1).ok_or(NdError::Truncated)?;
    if code != 0 {
        return Err(NdError::BadCode);
    }
    let opts = icmp.get(fixed..).ok_or(NdError::Truncated)?;
    let found = scan_nd_options(opts)?;
    let nd = match ty {
        ND_RS => Nd::RouterSolicitation {
            source_mac: found.slla,
        },
        ND_RA => Nd::RouterAdvertisement,
        ND_NS => {
            let target = addr(icmp, 8).ok_or(NdError::Truncated)?;
            if target.is_multicast() {
                return Err(NdError::MulticastTarget);
            }
            if src.is_unspecified() && found.any_slla {
                return Err(NdError::SourceLinkAddressFromUnspecified);
            }
            Nd::NeighborSolicitation {
                target,
                source_mac: found.slla,
            }
        }
        ND_NA => {
            let target = addr(icmp, 8).ok_or(NdError::Truncated)?;
            if target.is_multicast() {
                return Err(NdError::MulticastTarget);
            }
            let flags = *icmp.get(4).ok_or(NdError::Truncated)?;
            Nd::NeighborAdvertisement {
                target,
                router: flags & 0x80 != 0,
                solicited: flags & 0x40 != 0,
                override_: flags & 0x20 != 0,
                target_mac: found.tlla,
            }
        }
        _ => {
            // Redirect: the Destination Address must not be multicast (§8.1).
            let destination = addr(icmp, 24).ok_or(NdError::Truncated)?;
            if destination.is_multicast() {
                return Err(NdError::MulticastTarget);
            }
            Nd::Redirect
        }
    };
    Ok(Some(nd))
}

// ---------------------------------------------------------------------------
// 4. Builders.

/// Ethernet addresses of a frame to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet {
    /// Source MAC.
    pub src: [u8; 6],
    /// Destination MAC.
    pub dst: [u8; 6],
}

/// Writes Ethernet + IPv6 headers, lets `body` fill the zeroed ICMPv6
/// message, then sets its checksum. Returns the bytes written or 0.
fn emit_icmpv6(
    frame: &mut [u8],
    eth: Ethernet,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    icmp_len: usize,
    body: impl FnOnce(&mut [u8]) -> Option<()>,
) -> usize {
    fn inner(
        frame: &mut [u8],
        eth: Ethernet,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        icmp_len: usize,
        body: impl FnOnce(&mut [u8]) -> Option<()>,
    ) -> Option<usize> {
        let payload_len = u16::try_from(icmp_len).ok()?;
        let total = (ETH_LEN + HEADER_LEN).checked_add(icmp_len)?;
        let out = frame.get_mut(..total)?;
        out.fill(0);
        let (l2, rest) = out.split_at_mut_checked(ETH_LEN)?;
        put(l2, 0, &eth.dst)?;
        put(l2, 6, &eth.src)?;
        put(l2, 12, &ETHERTYPE_IPV6)?;
        let (ip, icmp) = rest.split_at_mut_checked(HEADER_LEN)?;
        put_u8(ip, 0, 0x60)?;
        put(ip, 4, &payload_len.to_be_bytes())?;
        put_u8(ip, 6, NH_ICMPV6)?;
        put_u8(ip, 7, hop_limit)?;
        put(ip, 8, &src.octets())?;
        put(ip, 24, &dst.octets())?;
        body(icmp)?;
        fill_icmpv6_checksum(src, dst, icmp)?;
        Some(total)
    }
    match inner(frame, eth, src, dst, hop_limit, icmp_len, body) {
        Some(n) => n,
        None => {
            // Leave no half-written frame behind that could pass for valid.
            if let Some(f) = frame.get_mut(..ETH_LEN + HEADER_LEN) {
                f.fill(0);
            }
            0
        }
    }
}

/// Writes an 8-byte link-layer address option (RFC 4861 §4.6.1).
fn put_lla(buf: &mut [u8], off: usize, ty: u8, mac: [u8; 6]) -> Option<()> {
    put(buf, off, &[ty, 1])?;
    put(buf, off.checked_add(2)?, &mac)
}

/// Neighbor Advertisement with a Target Link-Layer Address option
/// (RFC 4861 §4.4, §7.2.4); hop limit 255.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborAdvertisementRepr {
    /// Ethernet addresses.
    pub eth: Ethernet,
    /// IPv6 source.
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// Target address.
    pub target: Ipv6Addr,
    /// R flag.
    pub router: bool,
    /// S flag.
    pub solicited: bool,
    /// O flag.
    pub override_: bool,
    /// MAC carried in the TLLA option.
    pub target_mac: [u8; 6],
}

// `len` is the frame length, never zero; `is_empty` would be meaningless.
#[allow(clippy::len_without_is_empty)]
impl NeighborAdvertisementRepr {
    const ICMP_LEN: usize = 24 + 8;

    /// Length of the whole Ethernet frame.
    pub fn len(&self) -> usize {
        ETH_LEN + HEADER_LEN + Self::ICMP_LEN
    }

    /// Writes the frame; returns the bytes written, or 0 if `frame` is too short.
    pub fn emit(&self, frame: &mut [u8]) -> usize {
        let flags = (u8::from(self.router) << 7)
            | (u8::from(self.solicited) << 6)
            | (u8::from(self.override_) << 5);
        emit_icmpv6(
            frame,
            self.eth,
            self.src,
            self.dst,
            255,
            Self::ICMP_LEN,
            |m| {
                put(m, 0, &[ND_NA, 0])?;
                put_u8(m, 4, flags)?;
                put(m, 8, &self.target.octets())?;
                put_lla(m, 24, NDOPT_TLLA, self.target_mac)
            },
        )
    }
}

/// Neighbor Solicitation (RFC 4861 §4.3, §7.2.2); hop limit 255.
///
/// Sent to `solicited_node(target)` and its multicast MAC, or to `target` at
/// the MAC in `unicast`. Carries a Source Link-Layer Address option unless
/// `src` is unspecified (DAD, where §4.3 forbids it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicitationRepr {
    /// Sender MAC (Ethernet source and SLLA option).
    pub src_mac: [u8; 6],
    /// IPv6 source (unspecified for DAD).
    pub src: Ipv6Addr,
    /// Target address.
    pub target: Ipv6Addr,
    /// Destination MAC for a unicast solicitation (then the IPv6 destination is `target`).
    pub unicast: Option<[u8; 6]>,
}

// `len` is the frame length, never zero; `is_empty` would be meaningless.
#[allow(clippy::len_without_is_empty)]
impl NeighborSolicitationRepr {
    fn icmp_len(&self) -> usize {
        if self.src.is_unspecified() {
            24
        } else {
            24 + 8
        }
    }

    /// Length of the whole Ethernet frame.
    pub fn len(&self) -> usize {
        (ETH_LEN + HEADER_LEN).saturating_add(self.icmp_len())
    }

    /// Writes the frame; returns the bytes written, or 0 if `frame` is too short.
    pub fn emit(&self, frame: &mut [u8]) -> usize {
        let (dst, dst_mac) = match self.unicast {
            Some(m) => (self.target, m),
            None => {
                let group = solicited_node(self.target);
                (group, multicast_mac(group))
            }
        };
        let eth = Ethernet {
            src: self.src_mac,
            dst: dst_mac,
        };
        let with_slla = !self.src.is_unspecified();
        emit_icmpv6(frame, eth, self.src, dst, 255, self.icmp_len(), |m| {
            put(m, 0, &[ND_NS, 0])?;
            put(m, 8, &self.target.octets())?;
            if with_slla {
                put_lla(m, 24, NDOPT_SLLA, self.src_mac)?;
            }
            Some(())
        })
    }
}

/// Prefix Information option contents (RFC 4861 §4.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixInfo {
    /// Prefix; bits beyond `len` are sent as zero.
    pub prefix: Ipv6Addr,
    /// Prefix length in bits (values above 128 are sent as 128).
    pub len: u8,
    /// L flag: on-link.
    pub on_link: bool,
    /// A flag: usable for SLAAC.
    pub autonomous: bool,
    /// Valid lifetime in seconds (0xffffffff = infinity).
    pub valid_s: u32,
    /// Preferred lifetime in seconds (0xffffffff = infinity).
    pub preferred_s: u32,
}

/// Router Advertisement (RFC 4861 §4.2, §6.2.3); hop limit 255. Options in
/// order: SLLA (1), MTU (5), Prefix Information (3) per prefix, RDNSS (25,
/// RFC 8106 §5.1) when `rdnss` is non-empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterAdvertisementRepr<'a> {
    /// Ethernet addresses.
    pub eth: Ethernet,
    /// IPv6 source; must be link-local (RFC 4861 §6.1.2).
    pub src: Ipv6Addr,
    /// IPv6 destination (ff02::1 or the soliciting host).
    pub dst: Ipv6Addr,
    /// Cur Hop Limit advertised to hosts (0 = unspecified).
    pub cur_hop_limit: u8,
    /// M flag.
    pub managed: bool,
    /// O flag.
    pub other: bool,
    /// Router lifetime in seconds (0 = not a default router).
    pub router_lifetime_s: u16,
    /// Reachable time in milliseconds (0 = unspecified).
    pub reachable_ms: u32,
    /// Retrans timer in milliseconds (0 = unspecified).
    pub retrans_ms: u32,
    /// Source Link-Layer Address option.
    pub source_mac: Option<[u8; 6]>,
    /// MTU option.
    pub mtu: Option<u32>,
    /// Prefix Information options.
    pub prefixes: &'a [PrefixInfo],
    /// RDNSS server addresses (at most 127 fit one option; more makes `emit` return 0).
    pub rdnss: &'a [Ipv6Addr],
    /// RDNSS lifetime in seconds.
    pub rdnss_lifetime_s: u32,
}

// `len` is the frame length, never zero; `is_empty` would be meaningless.
#[allow(clippy::len_without_is_empty)]
impl RouterAdvertisementRepr<'_> {
    fn icmp_len(&self) -> usize {
        let mut n: usize = 16;
        if self.source_mac.is_some() {
            n = n.saturating_add(8);
        }
        if self.mtu.is_some() {
            n = n.saturating_add(8);
        }
        n = n.saturating_add(self.prefixes.len().saturating_mul(32));
        if !self.rdnss.is_empty() {
            n = n.saturating_add(self.rdnss.len().saturating_mul(16).saturating_add(8));
        }
        n
    }

    /// Length of the whole Ethernet frame.
    pub fn len(&self) -> usize {
        (ETH_LEN + HEADER_LEN).saturating_add(self.icmp_len())
    }

    /// Writes the frame; returns the bytes written, or 0 if `frame` is too
    /// short or the message cannot be encoded (payload over 65535 bytes, or
    /// more than 127 RDNSS addresses).
    pub fn emit(&self, frame: &mut [u8]) -> usize {
        let rdnss_len = if self.rdnss.is_empty() {
            0
        } else {
            match u8::try_from(self.rdnss.len().saturating_mul(2).saturating_add(1)) {
                Ok(l) => l,
                Err(_) => return 0,
            }
        };
        let flags = (u8::from(self.managed) << 7) | (u8::from(self.other) << 6);
        emit_icmpv6(
            frame,
            self.eth,
            self.src,
            self.dst,
            255,
            self.icmp_len(),
            |m| {
                put(m, 0, &[ND_RA, 0])?;
                put(m, 4, &[self.cur_hop_limit, flags])?;
                put(m, 6, &self.router_lifetime_s.to_be_bytes())?;
                put(m, 8, &self.reachable_ms.to_be_bytes())?;
                put(m, 12, &self.retrans_ms.to_be_bytes())?;
                let mut off: usize = 16;
                if let Some(mac) = self.source_mac {
                    put_lla(m, off, NDOPT_SLLA, mac)?;
                    off = off.checked_add(8)?;
                }
                if let Some(mtu) = self.mtu {
                    put(m, off, &[NDOPT_MTU, 1, 0, 0])?;
                    put(m, off.checked_add(4)?, &mtu.to_be_bytes())?;
                    off = off.checked_add(8)?;
                }
                for p in self.prefixes {
                    let len = p.len.min(128);
                    let mask = u128::MAX
                        .checked_shl(128u32.saturating_sub(u32::from(len)))
                        .unwrap_or(0);
                    let prefix = u128::from(p.prefix) & mask;
                    let pflags = (u8::from(p.on_link) << 7) | (u8::from(p.autonomous) << 6);
                    put(m, off, &[NDOPT_PREFIX, 4, len, pflags])?;
                    put(m, off.checked_add(4)?, &p.valid_s.to_be_bytes())?;
                    put(m, off.checked_add(8)?, &p.preferred_s.to_be_bytes())?;
                    put(m, off.checked_add(16)?, &prefix.to_be_bytes())?;
                    off = off.checked_add(32)?;
                }
                if rdnss_len != 0 {
                    put(m, off, &[NDOPT_RDNSS, rdnss_len, 0, 0])?;
                    put(m, off.checked_add(4)?, &self.rdnss_lifetime_s.to_be_bytes())?;
                    off = off.checked_add(8)?;
                    for a in self.rdnss {
                        put(m, off, &a.octets())?;
                        off = off.checked_add(16)?;
                    }
                }
                Some(())
            },
        )
    }
}

/// ICMPv6 error message kinds (RFC 4443 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Type 1 (§3.1).
    DestinationUnreachable {
        /// Code 0–6.
        code: u8,
    },
    /// Type 2 (§3.2).
    PacketTooBig {
        /// MTU of the next-hop link.
        mtu: u32,
    },
    /// Type 3 (§3.3).
    TimeExceeded {
        /// 0 hop limit exceeded, 1 reassembly time exceeded.
        code: u8,
    },
    /// Type 4 (§3.4).
    ParameterProblem {
        /// 0 erroneous field, 1 unrecognized next header, 2 unrecognized option.
        code: u8,
        /// Offset of the error within the original packet.
        pointer: u32,
    },
}

impl ErrorKind {
    fn type_code_word(&self) -> (u8, u8, u32) {
        match *self {
            ErrorKind::DestinationUnreachable { code } => (1, code, 0),
            ErrorKind::PacketTooBig { mtu } => (2, 0, mtu),
            ErrorKind::TimeExceeded { code } => (3, code, 0),
            ErrorKind::ParameterProblem { code, pointer } => (4, code, pointer),
        }
    }
}

/// ICMPv6 error message (RFC 4443 §2.4, §3) to the original's source; hop
/// limit 64. Quotes as much of the original as keeps the IPv6 packet within
/// [`MIN_MTU`] (§2.4(c)); link padding beyond the original's payload length
/// is not quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRepr<'a> {
    /// Ethernet addresses.
    pub eth: Ethernet,
    /// IPv6 source of the error.
    pub src: Ipv6Addr,
    /// Error type, code and type-specific field.
    pub kind: ErrorKind,
    /// The offending IPv6 packet, from its header.
    pub original: &'a [u8],
}

// `len` is the frame length, never zero; `is_empty` would be meaningless.
#[allow(clippy::len_without_is_empty)]
impl ErrorRepr<'_> {
    fn quoted(&self) -> &[u8] {
        let pkt_len = match be16(self.original, 4) {
            Some(pl) if self.original.len() >= HEADER_LEN => {
                HEADER_LEN.saturating_add(usize::from(pl))
            }
            _ => self.original.len(),
        };
        let max = MIN_MTU - HEADER_LEN - ICMP_HEADER_LEN;
        let n = pkt_len.min(self.original.len()).min(max);
        self.original.get(..n).unwrap_or(&[])
    }

    /// Length of the whole Ethernet frame.
    pub fn len(&self) -> usize {
        (ETH_LEN + HEADER_LEN + ICMP_HEADER_LEN).saturating_add(self.quoted().len())
    }

    /// Writes the frame; returns the bytes written, or 0 if `frame` is too
    /// short or `original` is shorter than an IPv6 header.
    pub fn emit(&self, frame: &mut [u8]) -> usize {
        if self.original.len() < HEADER_LEN {
            return 0;
        }
        let Some(dst) = addr(self.original, 8) else {
            return 0;
        };
        let quoted = self.quoted();
        let (ty, code, word) = self.kind.type_code_word();
        emit_icmpv6(
            frame,
            self.eth,
            self.src,
            dst,
            64,
            ICMP_HEADER_LEN.saturating_add(quoted.len()),
            |m| {
                put(m, 0, &[ty, code])?;
                put(m, 4, &word.to_be_bytes())?;
                put(m, ICMP_HEADER_LEN, quoted)
            },
        )
    }
}

/// Whether an ICMPv6 error may be sent about `original` (RFC 4443 §2.4(e)):
/// not about ICMPv6 errors or Redirects, not from a packet whose source is
/// unspecified, multicast or loopback, and not for a packet sent to an IPv6
/// multicast or link-layer multicast/broadcast address unless `kind` is
/// Packet Too Big or Parameter Problem code 2. False if `original` does not
/// [`parse`].
pub fn may_send_error(original: &[u8], kind: &ErrorKind, link_multicast: bool) -> bool {
    let Ok(info) = parse(original) else {
        return false;
    };
    let s = info.src;
    if s.is_unspecified() || s.is_multicast() || s.is_loopback() {
        return false;
    }
    if info.next_header == NH_ICMPV6 {
        let non_first = matches!(info.fragment, Some(f) if f.offset != 0);
        match original.get(info.l4_offset) {
            // ICMPv6 type unknown (non-first fragment): assume it may be an error.
            _ if non_first => return false,
            Some(&t) if t >= 128 && t != ND_REDIRECT => {}
            _ => return false,
        }
    }
    if info.dst.is_multicast() || link_multicast {
        return matches!(
            kind,
            ErrorKind::PacketTooBig { .. } | ErrorKind::ParameterProblem { code: 2, .. }
        );
    }
    true
}

/// Turns an unfragmented ICMPv6 Echo Request (RFC 4443 §4.1) into an Echo
/// Reply (§4.2) in place: source = `new_src`, destination = old source, hop
/// limit 64, type 129, checksum recomputed. `info` must come from [`parse`]
/// of this packet. Returns false, leaving the packet unchanged, if it is not
/// an Echo Request, is a fragment (atomic fragments are accepted), has a bad
/// checksum, comes from an unspecified or multicast source, or `info` does
/// not match it. Extension headers are kept as they are.
pub fn echo_reply_in_place(ipv6_packet: &mut [u8], info: &Info, new_src: Ipv6Addr) -> bool {
    echo_reply(ipv6_packet, info, new_src).is_some()
}

fn echo_reply(pkt: &mut [u8], info: &Info, new_src: Ipv6Addr) -> Option<()> {
    if info.next_header != NH_ICMPV6 {
        return None;
    }
    if matches!(info.fragment, Some(f) if f.offset != 0 || f.more) {
        return None;
    }
    let payload_len = be16(pkt, 4)?;
    if HEADER_LEN.checked_add(usize::from(payload_len))? != info.packet_len
        || info.l4_offset < HEADER_LEN
    {
        return None;
    }
    let old_src = addr(pkt, 8)?;
    let old_dst = addr(pkt, 24)?;
    if old_src.is_unspecified() || old_src.is_multicast() {
        return None;
    }
    let msg = pkt.get(info.l4_offset..info.packet_len)?;
    if msg.first() != Some(&ICMP_ECHO_REQUEST) || !icmpv6_checksum_ok(old_src, old_dst, msg) {
        return None;
    }
    put(pkt, 8, &new_src.octets())?;
    put(pkt, 24, &old_src.octets())?;
    put_u8(pkt, 7, 64)?;
    let msg = pkt.get_mut(info.l4_offset..info.packet_len)?;
    put_u8(msg, 0, ICMP_ECHO_REPLY)?;
    fill_icmpv6_checksum(new_src, old_src, msg)
}

#[cfg(test)]
// Test data: random bytes and lengths truncated on purpose, on lengths the tests bound.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    const MAC_A: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc];

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// Straightforward reference checksum, independent of `crate::checksum`.
    fn ref_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
        let mut v = Vec::new();
        v.extend_from_slice(&src.octets());
        v.extend_from_slice(&dst.octets());
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 58]);
        v.extend_from_slice(msg);
        if v.len() % 2 == 1 {
            v.push(0);
        }
        let mut s: u32 = 0;
        for c in v.chunks(2) {
            s += u32::from(c[0]) << 8 | u32::from(c[1]);
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    /// IPv6 packet with the given first next header and payload.
    fn ip(next: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    /// 8-byte generic extension header (Pad1 options / zero routing data).
    fn ext8(next: u8) -> [u8; 8] {
        [next, 0, 0, 0, 0, 0, 0, 0]
    }

    fn frag(next: u8, offset: u16, more: bool, ident: u32) -> [u8; 8] {
        let w = (offset << 3) | u16::from(more);
        let i = ident.to_be_bytes();
        let w = w.to_be_bytes();
        [next, 0, w[0], w[1], i[0], i[1], i[2], i[3]]
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn echo_request(src: Ipv6Addr, dst: Ipv6Addr, data: &[u8]) -> Vec<u8> {
        let mut m = vec![128, 0, 0, 0, 0x12, 0x34, 0x00, 0x01];
        m.extend_from_slice(data);
        let c = ref_checksum(src, dst, &m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    fn udp() -> [u8; 8] {
        [0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]
    }

    fn s1() -> Ipv6Addr {
        a("2001:db8::1")
    }
    fn s2() -> Ipv6Addr {
        a("2001:db8::2")
    }

    // ---------------------------------------------------------------- parse

    #[test]
    fn parse_basic_udp_fields() {
        let mut p = ip(17, s1(), s2(), &udp());
        p[0] = 0x6a; // traffic class 0xab, flow label 0xcdef1
        p[1] = 0xbc;
        p[2] = 0xde;
        p[3] = 0xf1;
        p.extend_from_slice(&[0xee; 6]); // link padding
        let i = parse(&p).unwrap();
        assert_eq!(i.src, s1());
        assert_eq!(i.dst, s2());
        assert_eq!(i.hop_limit, 64);
        assert_eq!(i.traffic_class, 0xab);
        assert_eq!(i.flow_label, 0xcdef1);
        assert_eq!(i.payload_len, 8);
        assert_eq!(i.next_header, 17);
        assert_eq!(i.l4_offset, 40);
        assert_eq!(i.packet_len, 48);
        assert_eq!(i.fragment, None);
    }

    #[test]
    fn parse_l4_minimums() {
        assert!(parse(&ip(6, s1(), s2(), &[0; 20])).is_ok());
        assert_eq!(parse(&ip(6, s1(), s2(), &[0; 19])), Err(Error::L4Truncated));
        assert_eq!(parse(&ip(17, s1(), s2(), &[0; 7])), Err(Error::L4Truncated));
        assert!(parse(&ip(58, s1(), s2(), &[0; 4])).is_ok());
        assert_eq!(parse(&ip(58, s1(), s2(), &[0; 3])), Err(Error::L4Truncated));
        // ESP / unknown: no check.
        assert!(parse(&ip(50, s1(), s2(), &[])).is_ok());
        assert!(parse(&ip(253, s1(), s2(), &[])).is_ok());
    }

    #[test]
    fn parse_no_next_header() {
        let p = ip(59, s1(), s2(), &[1, 2, 3]);
        let i = parse(&p).unwrap();
        assert_eq!(i.next_header, 59);
        assert_eq!(i.l4_offset, i.packet_len);
        let p = ip(60, s1(), s2(), &cat(&[&ext8(59), &[9; 4]]));
        let i = parse(&p).unwrap();
        assert_eq!((i.next_header, i.l4_offset, i.packet_len), (59, 52, 52));
    }

    #[test]
    fn parse_chain_lengths() {
        // HBH, DestOpts, Routing, AH (hdr_ext_len 1 => 12 bytes), Mobility, HIP, Shim6, UDP.
        let mut ah = vec![135, 1];
        ah.extend_from_slice(&[0; 10]);
        let mut dst16 = vec![43, 1, 1, 12];
        dst16.extend_from_slice(&[0; 12]); // PadN of 12 bytes => 16-byte header
        let body = cat(&[
            &ext8(60),
            &dst16,
            &ext8(51),
            &ah,
            &ext8(139),
            &ext8(140),
            &ext8(17),
            &udp(),
        ]);
        let p = ip(0, s1(), s2(), &body);
        let i = parse(&p).unwrap();
        assert_eq!(i.next_header, 17);
        assert_eq!(i.l4_offset, 40 + 8 + 16 + 8 + 12 + 8 + 8 + 8);
        assert_eq!(i.packet_len, p.len());
    }

    #[test]
    fn parse_chain_limit() {
        let mut body = Vec::new();
        for _ in 0..MAX_EXTENSION_HEADERS {
            body.extend_from_slice(&ext8(60));
        }
        let mut ok = body.clone();
        ok[(MAX_EXTENSION_HEADERS - 1) * 8] = 17;
        ok.extend_from_slice(&udp());
        assert!(parse(&ip(60, s1(), s2(), &ok)).is_ok());
        body.extend_from_slice(&ext8(17));
        body.extend_from_slice(&udp());
        assert_eq!(parse(&ip(60, s1(), s2(), &body)), Err(Error::ChainTooLong));
    }

    #[test]
    fn parse_options() {
        // PadN + Pad1s are fine.
        let hbh = [17, 0, 1, 2, 0, 0, 0, 0];
        assert!(parse(&ip(0, s1(), s2(), &cat(&[&hbh, &udp()]))).is_ok());
        // Option data runs past the header.
        let bad = [17, 0, 1, 5, 0, 0, 0, 0];
        assert_eq!(
            parse(&ip(0, s1(), s2(), &cat(&[&bad, &udp()]))),
            Err(Error::BadOption)
        );
        // Type byte as the last byte, no length.
        let bad = [17, 0, 0, 0, 0, 0, 0, 0x1e];
        assert_eq!(
            parse(&ip(60, s1(), s2(), &cat(&[&bad, &udp()]))),
            Err(Error::BadOption)
        );
        // Jumbo Payload option in HBH.
        let jumbo = [17, 0, 0xc2, 4, 0, 1, 0, 0];
        assert_eq!(
            parse(&ip(0, s1(), s2(), &cat(&[&jumbo, &udp()]))),
            Err(Error::Jumbogram)
        );
        // 0xC2 in Destination Options is just an option.
        assert!(parse(&ip(60, s1(), s2(), &cat(&[&jumbo, &udp()]))).is_ok());
    }

    #[test]
    fn parse_fragments() {
        // First fragment with full UDP header.
        let p = ip(
            44,
            s1(),
            s2(),
            &cat(&[&frag(17, 0, true, 0xdeadbeef), &udp(), &[0; 8]]),
        );
        let i = parse(&p).unwrap();
        assert_eq!(i.next_header, 17);
        assert_eq!(i.l4_offset, 48);
        assert_eq!(
            i.fragment,
            Some(Fragment {
                offset: 0,
                more: true,
                ident: 0xdeadbeef
            })
        );
        // Non-first fragment: walk stops, contents not inspected.
        let p = ip(44, s1(), s2(), &cat(&[&frag(6, 185, true, 7), &[0; 3]]));
        let i = parse(&p).unwrap();
        assert_eq!(i.next_header, 6);
        assert_eq!(i.l4_offset, 48);
        assert_eq!(i.fragment.unwrap().offset, 185);
        // A non-first fragment followed by what would be a second fragment header
        // is not inspected either.
        let p = ip(44, s1(), s2(), &frag(44, 1, false, 7));
        assert_eq!(parse(&p).unwrap().next_header, 44);
        // Atomic fragment (RFC 6946).
        let p = ip(
            44,
            s1(),
            s2(),
            &cat(&[&frag(58, 0, false, 9), &[128, 0, 0, 0]]),
        );
        let i = parse(&p).unwrap();
        assert_eq!(i.next_header, 58);
        assert_eq!(
            i.fragment,
            Some(Fragment {
                offset: 0,
                more: false,
                ident: 9
            })
        );
        // Atomic fragment with a truncated L4 header is plain L4Truncated.
        let p = ip(44, s1(), s2(), &cat(&[&frag(58, 0, false, 9), &[128, 0]]));
        assert_eq!(parse(&p), Err(Error::L4Truncated));
    }

    #[test]
    fn parse_incomplete_chain() {
        // First fragment, TCP header cut short.
        let p = ip(44, s1(), s2(), &cat(&[&frag(6, 0, true, 1), &[0; 12]]));
        assert_eq!(parse(&p), Err(Error::IncompleteChain));
        // First fragment, Destination Options header runs beyond the packet.
        let p = ip(
            44,
            s1(),
            s2(),
            &cat(&[&frag(60, 0, true, 1), &[17, 1, 0, 0]]),
        );
        assert_eq!(parse(&p), Err(Error::IncompleteChain));
        // First fragment ending right after the fragment header with UDP next.
        let p = ip(44, s1(), s2(), &frag(17, 0, true, 1));
        assert_eq!(parse(&p), Err(Error::IncompleteChain));
    }

    #[test]
    fn parse_every_error_variant() {
        let good = ip(17, s1(), s2(), &udp());
        assert_eq!(parse(&good[..39]), Err(Error::Truncated));
        assert_eq!(parse(&[]), Err(Error::Truncated));
        let mut v4 = good.clone();
        v4[0] = 0x45;
        assert_eq!(parse(&v4), Err(Error::BadVersion));
        assert_eq!(parse(&good[..47]), Err(Error::BadPayloadLength));
        // Jumbogram: payload length 0 with HBH first.
        let mut j = ip(
            0,
            s1(),
            s2(),
            &cat(&[&[17, 0, 0xc2, 4, 0, 1, 0, 0], &udp()]),
        );
        j[4] = 0;
        j[5] = 0;
        assert_eq!(parse(&j), Err(Error::Jumbogram));
        assert_eq!(
            parse(&ip(60, s1(), s2(), &[17, 1, 0, 0, 0, 0, 0, 0])),
            Err(Error::ExtensionTruncated)
        );
        assert_eq!(
            parse(&ip(60, s1(), s2(), &[17])),
            Err(Error::ExtensionTruncated)
        );
        assert_eq!(
            parse(&ip(44, s1(), s2(), &[17, 0, 0, 0])),
            Err(Error::ExtensionTruncated)
        );
        assert_eq!(
            parse(&ip(51, s1(), s2(), &[17, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(Error::ExtensionTruncated)
        );
        let mut long = Vec::new();
        for _ in 0..=MAX_EXTENSION_HEADERS {
            long.extend_from_slice(&ext8(60));
        }
        assert_eq!(parse(&ip(60, s1(), s2(), &long)), Err(Error::ChainTooLong));
        assert_eq!(
            parse(&ip(60, s1(), s2(), &cat(&[&ext8(0), &ext8(17), &udp()]))),
            Err(Error::HopByHopNotFirst)
        );
        assert_eq!(
            parse(&ip(
                44,
                s1(),
                s2(),
                &cat(&[&frag(44, 0, true, 1), &frag(17, 0, true, 1), &udp()])
            )),
            Err(Error::FragmentMisplaced)
        );
        assert_eq!(
            parse(&ip(44, s1(), s2(), &cat(&[&frag(6, 0, true, 1), &[0; 4]]))),
            Err(Error::IncompleteChain)
        );
        assert_eq!(
            parse(&ip(
                0,
                s1(),
                s2(),
                &cat(&[&[17, 0, 1, 9, 0, 0, 0, 0], &udp()])
            )),
            Err(Error::BadOption)
        );
        assert_eq!(parse(&ip(17, s1(), s2(), &[0; 4])), Err(Error::L4Truncated));
    }

    #[test]
    fn hop_limit_decrement() {
        let mut p = ip(17, s1(), s2(), &udp());
        p[7] = 2;
        assert_eq!(decrement_hop_limit(&mut p), Some(1));
        assert_eq!(decrement_hop_limit(&mut p), Some(0));
        assert_eq!(decrement_hop_limit(&mut p), None);
        assert_eq!(p[7], 0);
        assert_eq!(decrement_hop_limit(&mut [0x60; 39]), None);
    }

    // ------------------------------------------------------------ addresses

    #[test]
    fn addresses() {
        assert!(is_link_local(a("fe80::1")));
        assert!(is_link_local(a("febf:ffff::1")));
        assert!(!is_link_local(a("fec0::1")));
        assert!(!is_link_local(a("ff02::1")));
        assert!(!is_link_local(a("2001:db8::1")));
        // RFC 4291 App. A style: 00:1b:21:3c:4d:5e -> 021b:21ff:fe3c:4d5e.
        let m = [0x00, 0x1b, 0x21, 0x3c, 0x4d, 0x5e];
        assert_eq!(
            eui64_interface_id(m),
            [0x02, 0x1b, 0x21, 0xff, 0xfe, 0x3c, 0x4d, 0x5e]
        );
        assert_eq!(link_local_from_mac(m), a("fe80::21b:21ff:fe3c:4d5e"));
        assert_eq!(link_local_from_mac(MAC_A), a("fe80::5054:ff:fe12:3456"));
        assert_eq!(
            slaac_address(a("2001:db8:1:2:ffff::"), m),
            a("2001:db8:1:2:21b:21ff:fe3c:4d5e")
        );
        // RFC 4861 example style.
        assert_eq!(
            solicited_node(a("fe80::2aa:ff:fe28:9c5a")),
            a("ff02::1:ff28:9c5a")
        );
        assert_eq!(
            multicast_mac(a("ff02::1:ff28:9c5a")),
            [0x33, 0x33, 0xff, 0x28, 0x9c, 0x5a]
        );
        assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(ALL_NODES, a("ff02::1"));
        assert_eq!(ALL_ROUTERS, a("ff02::2"));
    }

    // ------------------------------------------------------------------- ND

    /// Frame -> (Info, ICMPv6 slice) after checking Ethernet type.
    fn split_frame(f: &[u8]) -> (Info, &[u8]) {
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let ipp = &f[14..];
        let i = parse(ipp).unwrap();
        assert_eq!(i.next_header, 58);
        assert_eq!(i.packet_len, ipp.len());
        assert!(icmpv6_checksum_ok(i.src, i.dst, &ipp[i.l4_offset..]));
        assert_eq!(
            ref_checksum(i.src, i.dst, &{
                let mut m = ipp[i.l4_offset..].to_vec();
                m[2] = 0;
                m[3] = 0;
                m
            }),
            u16::from_be_bytes([ipp[i.l4_offset + 2], ipp[i.l4_offset + 3]])
        );
        (i, &ipp[i.l4_offset..])
    }

    /// NS fe80::1 -> ff02::1:ff00:2, target fe80::2, SLLA 52:54:00:12:34:56,
    /// as Linux sends it; checksum 0xf5db computed independently.
    const KNOWN_NS: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x02, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x86, 0xdd, //
        0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, //
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, //
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, 0x00, 0x00, 0x02, //
        0x87, 0x00, 0xf5, 0xdb, 0, 0, 0, 0, //
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, //
        0x01, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56,
    ];

    #[test]
    fn known_good_ns() {
        let (i, m) = split_frame(&KNOWN_NS);
        assert_eq!(i.hop_limit, 255);
        assert_eq!(
            ref_checksum(i.src, i.dst, &{
                let mut m = m.to_vec();
                m[2] = 0;
                m[3] = 0;
                m
            }),
            0xf5db
        );
        assert_eq!(
            parse_nd(m, i.src),
            Ok(Some(Nd::NeighborSolicitation {
                target: a("fe80::2"),
                source_mac: Some(MAC_A)
            }))
        );
        // The builder produces the identical frame.
        let r = NeighborSolicitationRepr {
            src_mac: MAC_A,
            src: a("fe80::1"),
            target: a("fe80::2"),
            unicast: None,
        };
        let mut f = [0u8; 100];
        assert_eq!(r.emit(&mut f), 86);
        assert_eq!(r.len(), 86);
        assert_eq!(&f[..86], &KNOWN_NS[..]);
        // A flipped bit breaks the checksum.
        let mut bad = m.to_vec();
        bad[10] ^= 1;
        assert!(!icmpv6_checksum_ok(i.src, i.dst, &bad));
        assert!(!icmpv6_checksum_ok(i.src, i.dst, &m[..3]));
    }

    fn nd_msg(ty: u8, fixed: usize, opts: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; fixed];
        m[0] = ty;
        m.extend_from_slice(opts);
        m
    }

    #[test]
    fn parse_nd_variants_and_errors() {
        let ll = a("fe80::1");
        let un = Ipv6Addr::UNSPECIFIED;
        let slla = [1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let slla2 = [1, 1, 9, 9, 9, 9, 9, 9];
        let tlla = [2, 1, 2, 0, 0, 0xaa, 0xbb, 0xcc];
        let unknown = [99, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

        assert_eq!(parse_nd(&[128, 0, 0, 0], ll), Ok(None));
        assert_eq!(parse_nd(&[1], ll), Ok(None));
        assert_eq!(parse_nd(&[], ll), Err(NdError::Truncated));
        assert_eq!(parse_nd(&[133], ll), Err(NdError::Truncated));

        let rs = nd_msg(133, 8, &cat(&[&unknown, &slla, &slla2]));
        assert_eq!(
            parse_nd(&rs, ll),
            Ok(Some(Nd::RouterSolicitation {
                source_mac: Some(MAC_A)
            }))
        );
        assert_eq!(
            parse_nd(&nd_msg(133, 8, &[]), un),
            Ok(Some(Nd::RouterSolicitation { source_mac: None }))
        );
        assert_eq!(
            parse_nd(&nd_msg(134, 16, &slla), ll),
            Ok(Some(Nd::RouterAdvertisement))
        );
        assert_eq!(parse_nd(&nd_msg(134, 15, &[]), ll), Err(NdError::Truncated));

        let mut ns = nd_msg(135, 24, &slla);
        ns[8..24].copy_from_slice(&a("fe80::2").octets());
        assert!(matches!(
            parse_nd(&ns, ll),
            Ok(Some(Nd::NeighborSolicitation { .. }))
        ));
        assert_eq!(
            parse_nd(&ns, un),
            Err(NdError::SourceLinkAddressFromUnspecified)
        );
        assert_eq!(
            parse_nd(&ns[..24], un),
            Ok(Some(Nd::NeighborSolicitation {
                target: a("fe80::2"),
                source_mac: None
            }))
        );
        assert_eq!(parse_nd(&ns[..23], ll), Err(NdError::Truncated));
        let mut mc = ns.clone();
        mc[8..24].copy_from_slice(&ALL_NODES.octets());
        assert_eq!(parse_nd(&mc, ll), Err(NdError::MulticastTarget));

        let mut na = nd_msg(136, 24, &tlla);
        na[4] = 0xe0;
        na[8..24].copy_from_slice(&a("2001:db8::5").octets());
        assert_eq!(
            parse_nd(&na, ll),
            Ok(Some(Nd::NeighborAdvertisement {
                target: a("2001:db8::5"),
                router: true,
                solicited: true,
                override_: true,
                target_mac: Some(MAC_B)
            }))
        );
        na[4] = 0x40;
        assert!(matches!(
            parse_nd(&na, ll),
            Ok(Some(Nd::NeighborAdvertisement {
                router: false,
                solicited: true,
                override_: false,
                ..
            }))
        ));
        na[8] = 0xff;
        assert_eq!(parse_nd(&na, ll), Err(NdError::MulticastTarget));

        let mut redirect = nd_msg(137, 40, &[]);
        redirect[24..40].copy_from_slice(&s2().octets());
        assert_eq!(parse_nd(&redirect, ll), Ok(Some(Nd::Redirect)));
        assert_eq!(parse_nd(&redirect[..39], ll), Err(NdError::Truncated));
        redirect[24] = 0xff;
        assert_eq!(parse_nd(&redirect, ll), Err(NdError::MulticastTarget));

        // Code != 0.
        let mut c = nd_msg(133, 8, &[]);
        c[1] = 1;
        assert_eq!(parse_nd(&c, ll), Err(NdError::BadCode));
        // Option length 0, option beyond the message, lone trailing byte.
        assert_eq!(
            parse_nd(&nd_msg(133, 8, &[1, 0, 0, 0, 0, 0, 0, 0]), ll),
            Err(NdError::BadOption)
        );
        assert_eq!(
            parse_nd(&nd_msg(133, 8, &[1, 2, 0, 0, 0, 0, 0, 0]), ll),
            Err(NdError::BadOption)
        );
        assert_eq!(parse_nd(&nd_msg(133, 8, &[1]), ll), Err(NdError::BadOption));
    }

    // ------------------------------------------------------------- builders

    fn eth() -> Ethernet {
        Ethernet {
            src: MAC_A,
            dst: MAC_B,
        }
    }

    #[test]
    fn na_round_trip() {
        for (r, s, o) in [
            (true, true, true),
            (false, true, false),
            (false, false, true),
        ] {
            let repr = NeighborAdvertisementRepr {
                eth: eth(),
                src: a("fe80::5054:ff:fe12:3456"),
                dst: a("fe80::2"),
                target: a("2001:db8::9"),
                router: r,
                solicited: s,
                override_: o,
                target_mac: MAC_A,
            };
            let mut f = vec![0xaa; repr.len() + 3];
            assert_eq!(repr.emit(&mut f), repr.len());
            assert_eq!(&f[..6], &MAC_B);
            assert_eq!(&f[6..12], &MAC_A);
            let (i, m) = split_frame(&f[..repr.len()]);
            assert_eq!(i.hop_limit, 255);
            assert_eq!((i.src, i.dst), (repr.src, repr.dst));
            assert_eq!(
                parse_nd(m, i.src),
                Ok(Some(Nd::NeighborAdvertisement {
                    target: repr.target,
                    router: r,
                    solicited: s,
                    override_: o,
                    target_mac: Some(MAC_A)
                }))
            );
            let mut short = vec![0; repr.len() - 1];
            assert_eq!(repr.emit(&mut short), 0);
        }
    }

    #[test]
    fn ns_round_trip() {
        // Multicast.
        let r = NeighborSolicitationRepr {
            src_mac: MAC_A,
            src: a("2001:db8::1"),
            target: a("2001:db8::abcd:1234"),
            unicast: None,
        };
        let mut f = [0u8; 200];
        let n = r.emit(&mut f);
        assert_eq!(n, r.len());
        assert_eq!(&f[..6], &[0x33, 0x33, 0xff, 0xcd, 0x12, 0x34]);
        let (i, m) = split_frame(&f[..n]);
        assert_eq!(i.dst, a("ff02::1:ffcd:1234"));
        assert_eq!(i.hop_limit, 255);
        assert_eq!(
            parse_nd(m, i.src),
            Ok(Some(Nd::NeighborSolicitation {
                target: r.target,
                source_mac: Some(MAC_A)
            }))
        );
        // Unicast.
        let r = NeighborSolicitationRepr {
            unicast: Some(MAC_B),
            ..r
        };
        let n = r.emit(&mut f);
        assert_eq!(&f[..6], &MAC_B);
        let (i, m) = split_frame(&f[..n]);
        assert_eq!(i.dst, r.target);
        assert!(matches!(
            parse_nd(m, i.src),
            Ok(Some(Nd::NeighborSolicitation { .. }))
        ));
        // DAD: unspecified source, no SLLA.
        let r = NeighborSolicitationRepr {
            src: Ipv6Addr::UNSPECIFIED,
            unicast: None,
            ..r
        };
        let n = r.emit(&mut f);
        assert_eq!(n, 14 + 40 + 24);
        let (i, m) = split_frame(&f[..n]);
        assert_eq!(
            parse_nd(m, i.src),
            Ok(Some(Nd::NeighborSolicitation {
                target: r.target,
                source_mac: None
            }))
        );
        assert_eq!(r.emit(&mut f[..n - 1]), 0);
    }

    #[test]
    fn ra_round_trip() {
        let prefixes = [
            PrefixInfo {
                prefix: a("2001:db8:1:2:ffff::1"),
                len: 64,
                on_link: true,
                autonomous: true,
                valid_s: 86400,
                preferred_s: 14400,
            },
            PrefixInfo {
                prefix: a("2001:db8:ffff::"),
                len: 200,
                on_link: false,
                autonomous: false,
                valid_s: u32::MAX,
                preferred_s: 0,
            },
        ];
        let dns = [a("2001:db8::53"), a("2001:db8::54")];
        let r = RouterAdvertisementRepr {
            eth: Ethernet {
                src: MAC_A,
                dst: multicast_mac(ALL_NODES),
            },
            src: link_local_from_mac(MAC_A),
            dst: ALL_NODES,
            cur_hop_limit: 64,
            managed: true,
            other: false,
            router_lifetime_s: 1800,
            reachable_ms: 30000,
            retrans_ms: 1000,
            source_mac: Some(MAC_A),
            mtu: Some(1500),
            prefixes: &prefixes,
            rdnss: &dns,
            rdnss_lifetime_s: 600,
        };
        assert_eq!(r.len(), 14 + 40 + 16 + 8 + 8 + 64 + 8 + 32);
        let mut f = vec![0u8; 400];
        assert_eq!(r.emit(&mut f), r.len());
        let (i, m) = split_frame(&f[..r.len()]);
        assert_eq!(i.hop_limit, 255);
        assert!(is_link_local(i.src));
        assert_eq!(parse_nd(m, i.src), Ok(Some(Nd::RouterAdvertisement)));
        assert_eq!(
            &m[4..16],
            &[64, 0x80, 0x07, 0x08, 0, 0, 0x75, 0x30, 0, 0, 0x03, 0xe8]
        );
        assert_eq!(&m[16..24], &[1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(&m[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0xdc]);
        let p = &m[32..64];
        assert_eq!(&p[..4], &[3, 4, 64, 0xc0]);
        assert_eq!(&p[4..8], &86400u32.to_be_bytes());
        assert_eq!(&p[8..12], &14400u32.to_be_bytes());
        assert_eq!(&p[12..16], &[0; 4]);
        assert_eq!(&p[16..32], &a("2001:db8:1:2::").octets()); // host bits cleared
        let p = &m[64..96];
        assert_eq!(&p[..4], &[3, 4, 128, 0]);
        assert_eq!(&p[16..32], &a("2001:db8:ffff::").octets());
        let d = &m[96..];
        assert_eq!(&d[..8], &[25, 5, 0, 0, 0, 0, 0x02, 0x58]);
        assert_eq!(&d[8..24], &dns[0].octets());
        assert_eq!(&d[24..40], &dns[1].octets());

        // Minimal RA: no options.
        let r2 = RouterAdvertisementRepr {
            source_mac: None,
            mtu: None,
            prefixes: &[],
            rdnss: &[],
            ..r
        };
        assert_eq!(r2.len(), 14 + 40 + 16);
        let n = r2.emit(&mut f);
        let (i, m) = split_frame(&f[..n]);
        assert_eq!(parse_nd(m, i.src), Ok(Some(Nd::RouterAdvertisement)));
        assert_eq!(r.emit(&mut f[..r.len() - 1]), 0);

        // Unencodable: too many RDNSS servers for one option.
        let many = [dns[0]; 128];
        let r3 = RouterAdvertisementRepr { rdnss: &many, ..r2 };
        let mut big = vec![0u8; r3.len()];
        assert_eq!(r3.emit(&mut big), 0);
        let r4 = RouterAdvertisementRepr {
            rdnss: &many[..127],
            ..r2
        };
        let mut big = vec![0u8; r4.len()];
        assert_eq!(r4.emit(&mut big), r4.len());
        // Unencodable: payload over 65535 bytes.
        let lots = [prefixes[0]; 2100];
        let r5 = RouterAdvertisementRepr {
            prefixes: &lots,
            ..r2
        };
        let mut big = vec![0u8; r5.len()];
        assert_eq!(r5.emit(&mut big), 0);
    }

    fn all_kinds() -> [ErrorKind; 6] {
        [
            ErrorKind::DestinationUnreachable { code: 4 },
            ErrorKind::PacketTooBig { mtu: 1400 },
            ErrorKind::TimeExceeded { code: 0 },
            ErrorKind::ParameterProblem {
                code: 0,
                pointer: 6,
            },
            ErrorKind::ParameterProblem {
                code: 1,
                pointer: 40,
            },
            ErrorKind::ParameterProblem {
                code: 2,
                pointer: 42,
            },
        ]
    }

    #[test]
    fn error_round_trip_and_truncation() {
        let small = ip(17, s1(), s2(), &cat(&[&udp(), &[7; 100]]));
        let mut padded = small.clone();
        padded.extend_from_slice(&[0xee; 10]);
        let big = ip(17, s1(), s2(), &[0x55; 1460]);
        for kind in all_kinds() {
            for (orig, quoted) in [(&small, small.len()), (&padded, small.len()), (&big, 1232)] {
                let r = ErrorRepr {
                    eth: eth(),
                    src: a("2001:db8::fe"),
                    kind,
                    original: orig,
                };
                assert_eq!(r.len(), 14 + 40 + 8 + quoted);
                let mut f = vec![0u8; 1600];
                let n = r.emit(&mut f);
                assert_eq!(n, r.len());
                assert!(n - 14 <= MIN_MTU);
                let (i, m) = split_frame(&f[..n]);
                assert_eq!(i.hop_limit, 64);
                assert_eq!(i.dst, s1());
                assert_eq!(i.src, a("2001:db8::fe"));
                assert_eq!(&m[8..], &orig[..quoted]);
                let (ty, code, word) = kind.type_code_word();
                assert_eq!((m[0], m[1]), (ty, code));
                assert_eq!(&m[4..8], &word.to_be_bytes());
                assert_eq!(parse_nd(m, i.src), Ok(None));
                // The error about the error must not be sent.
                assert!(!may_send_error(&f[14..n], &kind, false));
                assert_eq!(r.emit(&mut f[..n - 1]), 0);
            }
        }
        let big_repr = ErrorRepr {
            eth: eth(),
            src: s2(),
            kind: ErrorKind::PacketTooBig { mtu: 1280 },
            original: &big,
        };
        assert_eq!(big_repr.len() - 14, MIN_MTU);
        // Original shorter than an IPv6 header: nothing to address it to.
        let r = ErrorRepr {
            original: &big[..39],
            ..big_repr
        };
        assert_eq!(r.emit(&mut [0u8; 200]), 0);
    }

    #[test]
    fn may_send_error_rules() {
        let kinds = all_kinds();
        let unreachable = ErrorKind::DestinationUnreachable { code: 0 };
        let ptb = ErrorKind::PacketTooBig { mtu: 1280 };
        let pp2 = ErrorKind::ParameterProblem {
            code: 2,
            pointer: 0,
        };
        let pp0 = ErrorKind::ParameterProblem {
            code: 0,
            pointer: 0,
        };
        let u = ip(17, s1(), s2(), &udp());
        for k in &kinds {
            assert!(may_send_error(&u, k, false));
        }
        // Link-layer multicast / IPv6 multicast destination.
        for (p, l2) in [(u.clone(), true), (ip(17, s1(), ALL_NODES, &udp()), false)] {
            assert!(!may_send_error(&p, &unreachable, l2));
            assert!(!may_send_error(&p, &pp0, l2));
            assert!(may_send_error(&p, &ptb, l2));
            assert!(may_send_error(&p, &pp2, l2));
        }
        // Bad sources.
        for src in [Ipv6Addr::UNSPECIFIED, Ipv6Addr::LOCALHOST, ALL_ROUTERS] {
            let p = ip(17, src, s2(), &udp());
            for k in &kinds {
                assert!(!may_send_error(&p, k, false));
            }
        }
        // ICMPv6 errors and redirects, also behind extension headers.
        for t in [1u8, 2, 3, 4, 127, 137] {
            let p = ip(
                60,
                s1(),
                s2(),
                &cat(&[&ext8(58), &[t, 0, 0, 0, 0, 0, 0, 0]]),
            );
            assert!(!may_send_error(&p, &unreachable, false), "type {t}");
        }
        for t in [128u8, 129, 133, 135, 136, 200] {
            let p = ip(
                60,
                s1(),
                s2(),
                &cat(&[&ext8(58), &[t, 0, 0, 0, 0, 0, 0, 0]]),
            );
            assert!(may_send_error(&p, &unreachable, false), "type {t}");
        }
        // Non-first fragment of ICMPv6: type unknown, refuse; of UDP: fine.
        let p = ip(44, s1(), s2(), &cat(&[&frag(58, 10, false, 1), &[128; 8]]));
        assert!(!may_send_error(&p, &unreachable, false));
        let p = ip(44, s1(), s2(), &cat(&[&frag(17, 10, false, 1), &[0; 8]]));
        assert!(may_send_error(
            &p,
            &ErrorKind::TimeExceeded { code: 1 },
            false
        ));
        // Unparseable original.
        assert!(!may_send_error(&u[..40], &unreachable, false));
        assert!(!may_send_error(&[], &ptb, false));
    }

    #[test]
    fn echo_reply() {
        let src = a("2001:db8::100");
        let dst = a("2001:db8::1");
        let me = a("2001:db8::1");
        let req = echo_request(src, dst, b"hello, world!"); // odd length
        let mut p = ip(58, src, dst, &req);
        p.extend_from_slice(&[0xee; 4]); // link padding stays untouched
        let info = parse(&p).unwrap();
        assert!(echo_reply_in_place(&mut p, &info, me));
        let i = parse(&p).unwrap();
        assert_eq!((i.src, i.dst, i.hop_limit), (me, src, 64));
        let m = &p[i.l4_offset..i.packet_len];
        assert_eq!(m[0], 129);
        assert_eq!(&m[4..], &req[4..]);
        assert!(icmpv6_checksum_ok(i.src, i.dst, m));
        assert_eq!(&p[i.packet_len..], &[0xee; 4]);
        // Now a reply, not a request.
        let before = p.clone();
        assert!(!echo_reply_in_place(&mut p, &i, me));
        assert_eq!(p, before);

        // Behind a Destination Options header and an atomic fragment.
        let body = cat(&[&ext8(44), &frag(58, 0, false, 3), &req]);
        let mut p = ip(60, src, dst, &body);
        let info = parse(&p).unwrap();
        assert!(echo_reply_in_place(&mut p, &info, me));
        let i = parse(&p).unwrap();
        assert_eq!(p[i.l4_offset], 129);
        assert!(icmpv6_checksum_ok(i.src, i.dst, &p[i.l4_offset..]));

        // Bad checksum.
        let mut bad = req.clone();
        bad[5] ^= 0x40;
        let mut p = ip(58, src, dst, &bad);
        let info = parse(&p).unwrap();
        let before = p.clone();
        assert!(!echo_reply_in_place(&mut p, &info, me));
        assert_eq!(p, before);

        // Fragmented (first fragment).
        let mut p = ip(44, src, dst, &cat(&[&frag(58, 0, true, 3), &req]));
        let info = parse(&p).unwrap();
        assert!(!echo_reply_in_place(&mut p, &info, me));

        // Not ICMPv6; multicast source; Info from another packet.
        let mut u = ip(17, src, dst, &udp());
        let ui = parse(&u).unwrap();
        assert!(!echo_reply_in_place(&mut u, &ui, me));
        let mc_src = ALL_NODES;
        let mut p = ip(58, mc_src, dst, &echo_request(mc_src, dst, b"x"));
        let info = parse(&p).unwrap();
        assert!(!echo_reply_in_place(&mut p, &info, me));
        let mut p = ip(58, src, dst, &req);
        let mut wrong = parse(&p).unwrap();
        wrong.packet_len += 1;
        assert!(!echo_reply_in_place(&mut p, &wrong, me));
        wrong.packet_len = 10_000;
        wrong.l4_offset = 20_000;
        assert!(!echo_reply_in_place(&mut p, &wrong, me));
        assert!(!echo_reply_in_place(&mut [], &wrong, me));
    }

    // ---------------------------------------------------------- robustness

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Returns (parsed ok, echo reply made) for coverage accounting.
    fn exercise(p: &mut [u8], rng: &mut XorShift) -> (bool, bool) {
        let r = parse(p);
        let mut echoed = false;
        let kinds = all_kinds();
        for k in &kinds {
            let _ = may_send_error(p, k, rng.next() & 1 == 0);
        }
        let src = Ipv6Addr::from(rng.next() as u128 | (u128::from(rng.next()) << 64));
        let _ = parse_nd(p, src);
        let _ = parse_nd(p.get(40..).unwrap_or(&[]), Ipv6Addr::UNSPECIFIED);
        let _ = icmpv6_checksum_ok(src, src, p);
        let garbage = Info {
            src,
            dst: src,
            hop_limit: 0,
            traffic_class: 0,
            flow_label: 0,
            payload_len: rng.next() as u16,
            next_header: 58,
            l4_offset: rng.below(200),
            packet_len: rng.below(200),
            fragment: None,
        };
        let _ = echo_reply_in_place(p, &garbage, src);
        if let Ok(info) = r {
            assert!(info.l4_offset <= info.packet_len);
            assert!(info.packet_len <= p.len());
            let m = &p[info.l4_offset..info.packet_len];
            let _ = parse_nd(m, info.src);
            let _ = icmpv6_checksum_ok(info.src, info.dst, m);
            echoed = echo_reply_in_place(p, &info, src);
        }
        let e = ErrorRepr {
            eth: eth(),
            src,
            kind: kinds[rng.below(kinds.len())],
            original: p,
        };
        let mut out = vec![0u8; rng.below(e.len() + 20)];
        let n = e.emit(&mut out);
        assert!(n == 0 || n == e.len());
        if n != 0 {
            let _ = split_frame(&out[..n]);
        }
        let _ = decrement_hop_limit(p);
        (r.is_ok(), echoed)
    }

    fn valid_packets() -> Vec<Vec<u8>> {
        let src = a("fe80::1");
        let mut v = Vec::new();
        let mut f = [0u8; 600];
        let prefixes = [PrefixInfo {
            prefix: a("2001:db8::"),
            len: 64,
            on_link: true,
            autonomous: true,
            valid_s: 1,
            preferred_s: 1,
        }];
        let dns = [a("2001:db8::53")];
        let n = NeighborSolicitationRepr {
            src_mac: MAC_A,
            src,
            target: a("fe80::2"),
            unicast: None,
        }
        .emit(&mut f);
        v.push(f[14..n].to_vec());
        let n = NeighborAdvertisementRepr {
            eth: eth(),
            src,
            dst: a("fe80::2"),
            target: src,
            router: true,
            solicited: true,
            override_: false,
            target_mac: MAC_A,
        }
        .emit(&mut f);
        v.push(f[14..n].to_vec());
        let n = RouterAdvertisementRepr {
            eth: eth(),
            src,
            dst: ALL_NODES,
            cur_hop_limit: 64,
            managed: false,
            other: true,
            router_lifetime_s: 0,
            reachable_ms: 0,
            retrans_ms: 0,
            source_mac: Some(MAC_A),
            mtu: Some(1500),
            prefixes: &prefixes,
            rdnss: &dns,
            rdnss_lifetime_s: 10,
        }
        .emit(&mut f);
        v.push(f[14..n].to_vec());
        let req = echo_request(s1(), s2(), b"ping");
        v.push(ip(58, s1(), s2(), &req));
        v.push(ip(
            0,
            s1(),
            s2(),
            &cat(&[&ext8(60), &ext8(44), &frag(58, 0, false, 1), &req]),
        ));
        v.push(ip(44, s1(), s2(), &cat(&[&frag(6, 0, true, 1), &[0; 20]])));
        v.push(ip(44, s1(), s2(), &cat(&[&frag(6, 9, false, 1), &[0; 20]])));
        v.push(ip(
            51,
            s1(),
            s2(),
            &cat(&[&[43, 1], &[0; 10], &ext8(17), &udp()]),
        ));
        v.push(ip(0, s1(), s2(), &cat(&[&[59, 0, 1, 4, 0, 0, 0, 0]])));
        v
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid = valid_packets();
        for p in &valid {
            assert!(parse(p).is_ok());
        }
        let (mut parsed, mut echoed) = (0usize, 0usize);
        for iter in 0..20_000 {
            // Random bytes, often with a plausible IPv6 header.
            let len = rng.below(160);
            let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if iter % 2 == 0 && p.len() >= 40 {
                p[0] = 0x60 | (p[0] & 0x0f);
                let pl = (p.len() - 40 - rng.below(p.len() - 39)) as u16;
                p[4..6].copy_from_slice(&pl.to_be_bytes());
                let nhs = [0, 43, 44, 51, 60, 135, 139, 140, 6, 17, 58, 59, 50];
                p[6] = nhs[rng.below(nhs.len())];
            }
            let (ok, _) = exercise(&mut p, &mut rng);
            parsed += usize::from(ok);

            // Mutations of valid packets.
            let mut m = valid[rng.below(valid.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 => {
                        let at = rng.below(m.len());
                        m[at] ^= 1 << rng.below(8);
                    }
                    1 => {
                        let at = rng.below(m.len());
                        m[at] = rng.next() as u8;
                    }
                    2 => m.truncate(rng.below(m.len() + 1)),
                    _ => m.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                }
                if m.is_empty() {
                    break;
                }
            }
            let (ok, e) = exercise(&mut m, &mut rng);
            parsed += usize::from(ok);
            echoed += usize::from(e);
        }
        // The inputs reach past the first checks.
        assert!(parsed > 4_000, "parsed {parsed}");
        assert!(echoed > 50, "echoed {echoed}");
    }
}
