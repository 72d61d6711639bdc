//! Encapsulation and decapsulation helpers: pure functions over byte buffers.
//!
//! **Encap.** The inner Ethernet frame sits in a buffer with headroom in front of it;
//! [`encapsulate`] writes the outer headers into that headroom and returns where the finished
//! frame lies. Nothing is copied or allocated. The outer headers are, in order, an optional
//! Ethernet header (for an AF_PACKET uplink; left out for a raw IP socket), IPv4 or IPv6, UDP
//! and VXLAN. A UDP socket needs only the VXLAN header in front of the inner frame: use
//! [`crate::header::Repr::emit`] and [`source_port`] for that path.
//!
//! On the wire we follow RFC 7348 (section 5) and Linux `vxlan_xmit_one`:
//! - reserved VXLAN bits zero, I flag set;
//! - UDP source port hashed from the inner flow ([`flow_hash`]) into a range, by default
//!   32768-60999 like Linux (`ip_local_port_range`, the default of the vxlan `srcport` option).
//!   The RFC: "It is recommended that the UDP source port number be calculated using a hash of
//!   fields from the inner packet [...] to enable a level of entropy for the ECMP/load-balancing
//!   of the VM-to-VM traffic". One flow keeps one port, so it is not reordered across paths;
//! - outer UDP checksum zero over IPv4 unless asked for ("It SHOULD be transmitted as zero");
//!   over IPv6 it is computed by default, as Linux does unless `udp6zerocsumtx` is set, because
//!   RFC 8200 requires it unless the receiver opted in to zero checksums (RFC 6935/6936);
//! - outer TTL / hop limit 64 ([`DEFAULT_TTL`]); DF clear by default (Linux `df unset`),
//!   configurable; IPv4 identification supplied by the caller (a per-worker counter), so that
//!   fragments of different packets never share an ID when DF is clear;
//! - the IPv6 flow label carries 20 bits of the flow hash, like Linux's automatic flow labels.
//!
//! **Decap.** [`decapsulate`] takes the outer UDP payload (as a UDP socket returns it) and
//! yields the VNI and where the inner frame lies, or a [`DecapError`]. [`decapsulate_with`] also
//! looks the VNI up, checking in the same order as Linux `vxlan_rcv`: header length, I flag,
//! VNI, inner Ethernet header length, reserved bits. So a packet that is wrong in several ways
//! is counted under the same reason by a kernel VTEP and by us.

use core::ops::Range;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UDP_HEADER_LEN,
    UdpPacket,
};

use crate::header::{self, HEADER_LEN as VXLAN_HEADER_LEN, Vni};

/// Outer headers over IPv4 with an Ethernet header: 14 + 20 + 8 + 8 = 50 bytes (the "50 bytes
/// of VXLAN overhead" behind the 1450-byte overlay MTU on a 1500-byte underlay).
pub const OUTER_LEN_IPV4: usize =
    ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;

/// Outer headers over IPv6 with an Ethernet header: 14 + 40 + 8 + 8 = 70 bytes.
pub const OUTER_LEN_IPV6: usize =
    ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;

/// The largest outer header [`encapsulate`] writes: reserve this much headroom.
pub const MAX_OUTER_LEN: usize = OUTER_LEN_IPV6;

/// Outer TTL (IPv4) and hop limit (IPv6), as Linux uses when the vxlan `ttl` is unset.
pub const DEFAULT_TTL: u8 = 64;

/// The shortest inner frame: an Ethernet header. Linux pulls `ETH_HLEN` bytes after the VXLAN
/// header (`__iptunnel_pull_header`) and drops the packet when they are not there.
pub const MIN_INNER_LEN: usize = ETHERNET_HEADER_LEN;

/// A UDP source port range, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourcePortRange {
    min: u16,
    max: u16,
}

/// A source port range that is empty or includes port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "UDP source port range {min}-{max} is invalid: it needs 1 <= min <= max <= 65535 \
     (the default is 32768-60999)"
)]
pub struct InvalidPortRange {
    /// The lower end given.
    pub min: u16,
    /// The upper end given.
    pub max: u16,
}

impl SourcePortRange {
    /// Linux's default: `net.ipv4.ip_local_port_range`, 32768-60999.
    pub const DEFAULT: SourcePortRange = SourcePortRange {
        min: 32768,
        max: 60999,
    };

    /// The ports `min..=max`.
    ///
    /// # Errors
    ///
    /// [`InvalidPortRange`] if `min` is 0 or greater than `max`.
    pub const fn new(min: u16, max: u16) -> Result<SourcePortRange, InvalidPortRange> {
        if min == 0 || min > max {
            Err(InvalidPortRange { min, max })
        } else {
            Ok(SourcePortRange { min, max })
        }
    }

    /// The lowest port.
    pub const fn min(self) -> u16 {
        self.min
    }

    /// The highest port.
    pub const fn max(self) -> u16 {
        self.max
    }

    /// Maps a hash onto the range. Like Linux `udp_flow_src_port`, it scales the high bits
    /// (a multiply and shift, no division), so every port of the range gets an equal share.
    #[inline]
    pub fn pick(self, hash: u32) -> u16 {
        let span = u64::from(self.max - self.min) + 1;
        let offset = (u64::from(hash) * span) >> 32;
        // offset < span <= 65535 because hash < 2^32, so it fits a u16; min + offset <= max.
        self.min + u16::try_from(offset).unwrap_or(0)
    }
}

impl Default for SourcePortRange {
    fn default() -> SourcePortRange {
        SourcePortRange::DEFAULT
    }
}

/// How this VTEP builds outer headers. Set once per overlay, not per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapConfig {
    /// Outer IPv4 TTL and IPv6 hop limit. Default [`DEFAULT_TTL`].
    pub ttl: u8,
    /// Set DF in the outer IPv4 header. Default `false`, as Linux (`df unset`).
    pub dont_fragment: bool,
    /// Compute the outer UDP checksum over IPv4. Default `false`: zero, as RFC 7348 advises.
    pub udp_checksum_ipv4: bool,
    /// Compute the outer UDP checksum over IPv6. Default `true`, as Linux (RFC 8200).
    pub udp_checksum_ipv6: bool,
    /// Where the UDP source port is picked from. Default [`SourcePortRange::DEFAULT`].
    pub source_ports: SourcePortRange,
    /// Mixed into the flow hash (Linux uses a random boot-time seed). Default 0.
    pub hash_seed: u32,
    /// Remote checksum offload (Linux `remcsumtx`): frames whose inner checksum is partial
    /// may be sent with it left partial and the RCO option saying where it is (see
    /// [`header`]); the receiver completes it. Only for receivers that accept it (Linux
    /// `remcsumrx`), which every other VTEP drops. Default `false`.
    pub remote_checksum_offload: bool,
}

impl Default for EncapConfig {
    fn default() -> EncapConfig {
        EncapConfig {
            ttl: DEFAULT_TTL,
            dont_fragment: false,
            udp_checksum_ipv4: false,
            udp_checksum_ipv6: true,
            source_ports: SourcePortRange::DEFAULT,
            hash_seed: 0,
            remote_checksum_offload: false,
        }
    }
}

/// The underlay addresses of a tunnel: this VTEP and the remote one, of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Underlay {
    /// IPv4 underlay.
    Ipv4 {
        /// This VTEP's address.
        local: Ipv4Addr,
        /// The remote VTEP's address.
        remote: Ipv4Addr,
    },
    /// IPv6 underlay.
    Ipv6 {
        /// This VTEP's address.
        local: Ipv6Addr,
        /// The remote VTEP's address.
        remote: Ipv6Addr,
    },
}

impl Underlay {
    /// The underlay between `local` and `remote`, or `None` if their families differ.
    /// IPv4-mapped IPv6 addresses count as IPv4.
    pub fn new(local: IpAddr, remote: IpAddr) -> Option<Underlay> {
        match (local.to_canonical(), remote.to_canonical()) {
            (IpAddr::V4(local), IpAddr::V4(remote)) => Some(Underlay::Ipv4 { local, remote }),
            (IpAddr::V6(local), IpAddr::V6(remote)) => Some(Underlay::Ipv6 { local, remote }),
            _ => None,
        }
    }

    /// Length of the IP header this underlay needs.
    pub const fn ip_header_len(&self) -> usize {
        match self {
            Underlay::Ipv4 { .. } => IPV4_HEADER_LEN,
            Underlay::Ipv6 { .. } => IPV6_HEADER_LEN,
        }
    }
}

/// The outer Ethernet header's addresses (next hop MAC and our uplink MAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterEthernet {
    /// Our uplink's MAC.
    pub src: EthernetAddress,
    /// The next hop's MAC (the remote VTEP's, or the underlay gateway's).
    pub dst: EthernetAddress,
}

/// What one encapsulated packet needs besides its inner frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncapParams {
    /// The VNI to put in the VXLAN header.
    pub vni: Vni,
    /// Source and destination VTEP addresses.
    pub underlay: Underlay,
    /// The remote VTEP's UDP port (usually [`header::UDP_PORT`]).
    pub dst_port: u16,
    /// The outer Ethernet header, or `None` to start the output at the IP header.
    pub ethernet: Option<OuterEthernet>,
    /// The outer IPv4 identification (ignored over IPv6).
    pub ipv4_ident: u16,
}

impl EncapParams {
    /// Length of the outer headers these parameters produce.
    pub const fn outer_len(&self) -> usize {
        let link = if self.ethernet.is_some() {
            ETHERNET_HEADER_LEN
        } else {
            0
        };
        link + self.underlay.ip_header_len() + UDP_HEADER_LEN + VXLAN_HEADER_LEN
    }
}

/// Why a frame could not be encapsulated. These are sender-side bugs or oversize frames, not
/// wire input; each has a stable counter key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum EncapError {
    /// The inner range is not inside the buffer.
    #[error("inner frame range lies outside the buffer")]
    OutOfBounds,
    /// Less headroom in front of the inner frame than [`EncapParams::outer_len`].
    #[error("not enough headroom in front of the inner frame for the outer headers")]
    HeadroomTooSmall,
    /// The inner frame is shorter than an Ethernet header.
    #[error("inner frame shorter than an Ethernet header")]
    InnerFrameTooShort,
    /// The outer UDP or IP length would exceed 65535.
    #[error("inner frame too long: the outer UDP/IP length would exceed 65535")]
    InnerFrameTooLong,
}

impl EncapError {
    /// Every value, in counter order.
    pub const ALL: &'static [EncapError] = &[
        EncapError::OutOfBounds,
        EncapError::HeadroomTooSmall,
        EncapError::InnerFrameTooShort,
        EncapError::InnerFrameTooLong,
    ];

    /// The stable counter key (`vxlan_encap.<reason>`).
    pub const fn key(self) -> &'static str {
        match self {
            EncapError::OutOfBounds => "vxlan_encap.out_of_bounds",
            EncapError::HeadroomTooSmall => "vxlan_encap.no_headroom",
            EncapError::InnerFrameTooShort => "vxlan_encap.inner_too_short",
            EncapError::InnerFrameTooLong => "vxlan_encap.inner_too_long",
        }
    }
}

/// Writes the outer headers in front of `buffer[inner]` and returns the range of the whole
/// outer frame (`inner.start - params.outer_len() .. inner.end`). Bytes outside that range are
/// not touched. When the UDP checksum is on, the inner frame must be final (its own checksums
/// complete) because the outer checksum covers it.
///
/// # Errors
///
/// [`EncapError::OutOfBounds`], [`EncapError::HeadroomTooSmall`],
/// [`EncapError::InnerFrameTooShort`] or [`EncapError::InnerFrameTooLong`]; the buffer is
/// unchanged then.
pub fn encapsulate(
    buffer: &mut [u8],
    inner: Range<usize>,
    params: &EncapParams,
    config: &EncapConfig,
) -> Result<Range<usize>, EncapError> {
    if inner.start > inner.end || inner.end > buffer.len() {
        return Err(EncapError::OutOfBounds);
    }
    let inner_len = inner.end - inner.start;
    if inner_len < MIN_INNER_LEN {
        return Err(EncapError::InnerFrameTooShort);
    }
    let start = inner
        .start
        .checked_sub(params.outer_len())
        .ok_or(EncapError::HeadroomTooSmall)?;
    let udp_len = UDP_HEADER_LEN + VXLAN_HEADER_LEN + inner_len;
    let ip_total_len = params.underlay.ip_header_len() + udp_len;
    // IPv4 counts its header in the total length; IPv6's payload length is the UDP length.
    let ip_len_field = match params.underlay {
        Underlay::Ipv4 { .. } => ip_total_len,
        Underlay::Ipv6 { .. } => udp_len,
    };
    let (Ok(udp_len), Ok(ip_len_field)) = (u16::try_from(udp_len), u16::try_from(ip_len_field))
    else {
        return Err(EncapError::InnerFrameTooLong);
    };

    let hash = flow_hash(&buffer[inner.clone()], config.hash_seed);
    let frame = &mut buffer[start..inner.end];
    let mut offset = 0;

    if let Some(ethernet) = params.ethernet {
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..ETHERNET_HEADER_LEN]);
        eth.set_dst_addr(ethernet.dst);
        eth.set_src_addr(ethernet.src);
        eth.set_ethertype(match params.underlay {
            Underlay::Ipv4 { .. } => EthernetProtocol::Ipv4,
            Underlay::Ipv6 { .. } => EthernetProtocol::Ipv6,
        });
        offset = ETHERNET_HEADER_LEN;
    }

    let ip_end = offset + params.underlay.ip_header_len();
    let (src, dst, checksum_wanted) = match params.underlay {
        Underlay::Ipv4 { local, remote } => {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[offset..ip_end]);
            ip.set_version(4);
            ip.set_header_len(20);
            ip.set_dscp(0);
            ip.set_ecn(0);
            ip.set_total_len(ip_len_field);
            ip.set_ident(params.ipv4_ident);
            ip.clear_flags();
            ip.set_dont_frag(config.dont_fragment);
            ip.set_frag_offset(0);
            ip.set_hop_limit(config.ttl);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_src_addr(local);
            ip.set_dst_addr(remote);
            ip.fill_checksum();
            (
                IpAddress::Ipv4(local),
                IpAddress::Ipv4(remote),
                config.udp_checksum_ipv4,
            )
        }
        Underlay::Ipv6 { local, remote } => {
            let mut ip = Ipv6Packet::new_unchecked(&mut frame[offset..ip_end]);
            ip.set_version(6);
            ip.set_traffic_class(0);
            ip.set_flow_label(hash & 0x000f_ffff);
            ip.set_payload_len(ip_len_field);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_hop_limit(config.ttl);
            ip.set_src_addr(local);
            ip.set_dst_addr(remote);
            (
                IpAddress::Ipv6(local),
                IpAddress::Ipv6(remote),
                config.udp_checksum_ipv6,
            )
        }
    };

    let vxlan_start = ip_end + UDP_HEADER_LEN;
    header::Repr { vni: params.vni }.emit(&mut header::Packet::new_unchecked(
        &mut frame[vxlan_start..vxlan_start + VXLAN_HEADER_LEN],
    ));

    // The UDP view spans header, VXLAN header and inner frame: the checksum covers them all.
    let mut udp = UdpPacket::new_unchecked(&mut frame[ip_end..]);
    udp.set_src_port(config.source_ports.pick(hash));
    udp.set_dst_port(params.dst_port);
    udp.set_len(udp_len);
    if checksum_wanted {
        // Sends 0xffff for a computed zero, as RFC 768 asks.
        udp.fill_checksum(&src, &dst);
    } else {
        udp.set_checksum(0);
    }

    Ok(start..inner.end)
}

/// The UDP source port for an inner frame: [`flow_hash`] mapped onto `config.source_ports`.
/// Use it when a UDP socket builds the outer headers.
#[inline]
pub fn source_port(inner_frame: &[u8], config: &EncapConfig) -> u16 {
    config
        .source_ports
        .pick(flow_hash(inner_frame, config.hash_seed))
}

/// A 32-bit hash of an inner Ethernet frame's flow, used for the UDP source port and the IPv6
/// flow label: the MAC addresses and EtherType, then for IPv4 or IPv6 the addresses and the
/// protocol (and the IPv6 flow label), then for TCP or UDP (not fragmented) both ports.
/// Fragments of one packet hash alike because ports are left out of every fragment. Frames
/// too short for a layer hash on the layers before it. Never panics.
pub fn flow_hash(inner_frame: &[u8], seed: u32) -> u32 {
    let mut hasher = FlowHasher::new(seed);
    let Ok(eth) = EthernetFrame::new_checked(inner_frame) else {
        hasher.write(inner_frame.len() as u64);
        return hasher.finish();
    };
    hasher.write(mac_word(eth.dst_addr()));
    hasher.write(mac_word(eth.src_addr()));
    hasher.write(u64::from(u16::from(eth.ethertype())));
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return hasher.finish();
            };
            hasher.write(
                (u64::from(ip.src_addr().to_bits()) << 32) | u64::from(ip.dst_addr().to_bits()),
            );
            hasher.write(u64::from(u8::from(ip.next_header())));
            if !ip.more_frags() && ip.frag_offset() == 0 {
                hash_ports(&mut hasher, ip.next_header(), ip.payload());
            }
        }
        EthernetProtocol::Ipv6 => {
            let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) else {
                return hasher.finish();
            };
            for address in [ip.src_addr().octets(), ip.dst_addr().octets()] {
                let (high, low) = address.split_at(8);
                for half in [high, low] {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(half);
                    hasher.write(u64::from_be_bytes(word));
                }
            }
            hasher
                .write((u64::from(u8::from(ip.next_header())) << 32) | u64::from(ip.flow_label()));
            hash_ports(&mut hasher, ip.next_header(), ip.payload());
        }
        _ => {}
    }
    hasher.finish()
}

fn hash_ports(hasher: &mut FlowHasher, protocol: IpProtocol, l4: &[u8]) {
    let ports = match protocol {
        IpProtocol::Tcp => TcpPacket::new_checked(l4)
            .ok()
            .map(|tcp| (tcp.src_port(), tcp.dst_port())),
        IpProtocol::Udp => UdpPacket::new_checked(l4)
            .ok()
            .map(|udp| (udp.src_port(), udp.dst_port())),
        _ => None,
    };
    if let Some((src, dst)) = ports {
        hasher.write((u64::from(src) << 16) | u64::from(dst));
    }
}

fn mac_word(mac: EthernetAddress) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[2..].copy_from_slice(mac.as_bytes());
    u64::from_be_bytes(bytes)
}

/// A small non-cryptographic hash: each word is mixed in with a multiply-xorshift round, and
/// the state is finalised with the SplitMix64 finaliser so every input bit reaches the high
/// bits that [`SourcePortRange::pick`] uses.
struct FlowHasher(u64);

impl FlowHasher {
    fn new(seed: u32) -> FlowHasher {
        FlowHasher(0x243f_6a88_85a3_08d3 ^ u64::from(seed))
    }

    #[inline]
    fn write(&mut self, word: u64) {
        let mixed = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 29);
    }

    #[inline]
    fn finish(&self) -> u32 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The high 32 bits: the best-mixed half.
        u32::try_from(z >> 32).unwrap_or(0)
    }
}

/// Why a received VXLAN packet was dropped. Copy, no heap, one counter each; the order of the
/// variants is the order in which [`decapsulate_with`] (like Linux `vxlan_rcv`) checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DecapError {
    /// The UDP payload is shorter than a VXLAN header.
    #[error("VXLAN packet shorter than its 8-byte header")]
    Truncated,
    /// The I flag is clear.
    #[error("VXLAN header with the I flag clear")]
    BadFlags,
    /// No segment of this VTEP has the VNI (Linux `SKB_DROP_REASON_VXLAN_VNI_NOT_FOUND`).
    #[error("VXLAN packet for a VNI this VTEP does not serve")]
    UnknownVni,
    /// Fewer than an Ethernet header's bytes follow the VXLAN header.
    #[error("VXLAN packet whose inner frame is shorter than an Ethernet header")]
    InnerFrameTruncated,
    /// A reserved bit of the VXLAN header is set.
    #[error("VXLAN header with reserved bits set")]
    ReservedBitsSet,
}

impl DecapError {
    /// Every value, in counter order.
    pub const ALL: &'static [DecapError] = &[
        DecapError::Truncated,
        DecapError::BadFlags,
        DecapError::UnknownVni,
        DecapError::InnerFrameTruncated,
        DecapError::ReservedBitsSet,
    ];

    /// Number of values.
    pub const COUNT: usize = DecapError::ALL.len();

    /// The stable counter key (`vxlan_decap.<reason>`).
    pub const fn key(self) -> &'static str {
        match self {
            DecapError::Truncated => "vxlan_decap.truncated",
            DecapError::BadFlags => "vxlan_decap.bad_flags",
            DecapError::UnknownVni => "vxlan_decap.unknown_vni",
            DecapError::InnerFrameTruncated => "vxlan_decap.inner_truncated",
            DecapError::ReservedBitsSet => "vxlan_decap.reserved_bits",
        }
    }

    /// One line saying what happened (for `describe` and the API).
    pub const fn description(self) -> &'static str {
        match self {
            DecapError::Truncated => "VXLAN packets shorter than the 8-byte header",
            DecapError::BadFlags => "VXLAN packets with the I flag clear",
            DecapError::UnknownVni => "VXLAN packets for a VNI this VTEP does not serve",
            DecapError::InnerFrameTruncated => {
                "VXLAN packets whose inner frame is shorter than an Ethernet header"
            }
            DecapError::ReservedBitsSet => "VXLAN packets with reserved header bits set",
        }
    }

    /// Dense index (`0..COUNT`), for counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl From<header::Error> for DecapError {
    fn from(error: header::Error) -> DecapError {
        match error {
            header::Error::Truncated => DecapError::Truncated,
            header::Error::BadFlags => DecapError::BadFlags,
            header::Error::ReservedBitsSet => DecapError::ReservedBitsSet,
        }
    }
}

/// A valid VXLAN packet: its VNI and where its inner frame lies in the UDP payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decapsulated {
    /// The VNI from the header.
    pub vni: Vni,
    /// The inner Ethernet frame: `payload[inner]`, at least [`MIN_INNER_LEN`] bytes.
    pub inner: Range<usize>,
    /// The remote checksum offload option, when accepted and present (see
    /// [`decapsulate_with_rco`]).
    pub remote_checksum: Option<header::RemoteChecksum>,
}

/// Validates a VXLAN packet (the outer UDP payload) without a VNI lookup. Never panics.
///
/// # Errors
///
/// [`DecapError::Truncated`], [`DecapError::BadFlags`], [`DecapError::ReservedBitsSet`] or
/// [`DecapError::InnerFrameTruncated`]. Never [`DecapError::UnknownVni`].
pub fn decapsulate(udp_payload: &[u8]) -> Result<Decapsulated, DecapError> {
    let repr = header::Repr::parse(&header::Packet::new_unchecked(udp_payload))?;
    if udp_payload.len() < VXLAN_HEADER_LEN + MIN_INNER_LEN {
        return Err(DecapError::InnerFrameTruncated);
    }
    Ok(Decapsulated {
        vni: repr.vni,
        inner: VXLAN_HEADER_LEN..udp_payload.len(),
        remote_checksum: None,
    })
}

/// Validates a VXLAN packet and looks its VNI up with `lookup` (which returns the segment
/// serving the VNI, or `None`), in Linux `vxlan_rcv` order: length, I flag, VNI, inner
/// Ethernet header, reserved bits. `lookup` is not called when the length or I flag is wrong.
/// Never panics unless `lookup` does.
///
/// # Errors
///
/// Any [`DecapError`], the first found in that order.
pub fn decapsulate_with<S>(
    udp_payload: &[u8],
    lookup: impl FnOnce(Vni) -> Option<S>,
) -> Result<(S, Decapsulated), DecapError> {
    decapsulate_with_rco(udp_payload, false, lookup)
}

/// [`decapsulate_with`], accepting the remote checksum offload option when `accept_rco`
/// (a VTEP configured like Linux's `remcsumrx`; see [`header`]). An option whose checksum
/// field lies beyond the inner frame is refused as [`DecapError::InnerFrameTruncated`].
///
/// # Errors
///
/// As [`decapsulate_with`].
pub fn decapsulate_with_rco<S>(
    udp_payload: &[u8],
    accept_rco: bool,
    lookup: impl FnOnce(Vni) -> Option<S>,
) -> Result<(S, Decapsulated), DecapError> {
    let packet = header::Packet::new_checked(udp_payload)?;
    if !packet.i_flag() {
        return Err(DecapError::BadFlags);
    }
    let segment = lookup(packet.vni()).ok_or(DecapError::UnknownVni)?;
    if udp_payload.len() < VXLAN_HEADER_LEN + MIN_INNER_LEN {
        return Err(DecapError::InnerFrameTruncated);
    }
    let (repr, remote_checksum) = if accept_rco {
        header::Repr::parse_with_rco(&packet)?
    } else {
        (header::Repr::parse(&packet)?, None)
    };
    let inner_len = udp_payload.len() - VXLAN_HEADER_LEN;
    if let Some(option) = remote_checksum {
        if usize::from(option.start() + option.offset()) + 2 > inner_len {
            return Err(DecapError::InnerFrameTruncated);
        }
    }
    Ok((
        segment,
        Decapsulated {
            vni: repr.vni,
            inner: VXLAN_HEADER_LEN..udp_payload.len(),
            remote_checksum,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use smoltcp::wire::Ipv6Address;

    fn vni(value: u32) -> Vni {
        Vni::new(value).expect("test VNI fits 24 bits")
    }

    /// An inner frame: 02:00:00:00:01:02 -> 02:00:00:00:01:01, IPv4 10.1.0.2 -> 10.2.0.3,
    /// UDP 40000 -> 53, 4 bytes of payload. 46 bytes.
    static INNER: [u8; 46] = [
        0x02, 0x00, 0x00, 0x00, 0x01, 0x01, // dst MAC
        0x02, 0x00, 0x00, 0x00, 0x01, 0x02, // src MAC
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x20, // v4, IHL 5, total length 32
        0x00, 0x01, 0x40, 0x00, // id 1, DF
        0x40, 0x11, 0x26, 0xc5, // TTL 64, UDP, checksum
        0x0a, 0x01, 0x00, 0x02, // 10.1.0.2
        0x0a, 0x02, 0x00, 0x03, // 10.2.0.3
        0x9c, 0x40, 0x00, 0x35, // 40000 -> 53
        0x00, 0x0c, 0x00, 0x00, // length 12, no checksum
        0xde, 0xad, 0xbe, 0xef, // payload
    ];

    /// `INNER` encapsulated by hand: 02:00:00:00:00:01 (192.168.50.1) -> 02:00:00:00:00:02
    /// (192.168.50.2), DF clear, TTL 64, ident 0x1234, UDP 50000 -> 4789 with a zero checksum,
    /// VNI 101. The IPv4 header checksum 0x8313 was worked out by hand (RFC 1071 one's-complement
    /// sum of the ten header words, with the checksum word zero).
    static OUTER_IPV4: [u8; 50] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst MAC
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src MAC
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x52, // v4, IHL 5, total length 82 = 20 + 8 + 8 + 46
        0x12, 0x34, 0x00, 0x00, // ident, no flags
        0x40, 0x11, 0x83, 0x13, // TTL 64, UDP, header checksum
        0xc0, 0xa8, 0x32, 0x01, // 192.168.50.1
        0xc0, 0xa8, 0x32, 0x02, // 192.168.50.2
        0xc3, 0x50, 0x12, 0xb5, // 50000 -> 4789
        0x00, 0x3e, 0x00, 0x00, // UDP length 62 = 8 + 8 + 46, checksum 0
        0x08, 0x00, 0x00, 0x00, // VXLAN: I flag
        0x00, 0x00, 0x65, 0x00, // VNI 101
    ];

    /// A frame captured on the underlay veth between two Linux VXLAN devices (`ip link add vx0
    /// type vxlan id 101 dstport 4789 local 192.168.50.2 remote 192.168.50.1 nolearning`, kernel
    /// defaults otherwise: `ttl auto`, `df unset`, `srcport 0 0`, `udpcsum`). The kernel sent an
    /// MLDv2 report when the device came up. This kernel asks for the outer UDP checksum over
    /// IPv4 by default (`udpcsum`), but the frame crossed a veth as CHECKSUM_PARTIAL, so the
    /// field holds only the pseudo-header sum (0xe5cf) that a NIC would have completed.
    static KERNEL_FRAME: [u8; 140] = [
        0x92, 0x75, 0x3c, 0x42, 0x2e, 0x91, // outer dst MAC
        0x12, 0x3c, 0xfd, 0x59, 0x24, 0x6e, // outer src MAC
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x7e, // v4, IHL 5, total length 126
        0xa4, 0x96, 0x00, 0x00, // ident 0xa496, DF clear
        0x40, 0x11, 0xf0, 0x84, // TTL 64, UDP, header checksum
        0xc0, 0xa8, 0x32, 0x02, // 192.168.50.2
        0xc0, 0xa8, 0x32, 0x01, // 192.168.50.1
        0xa4, 0x06, 0x12, 0xb5, // UDP 41990 -> 4789
        0x00, 0x6a, 0xe5, 0xcf, // UDP length 106, checksum left partial (see above)
        0x08, 0x00, 0x00, 0x00, // VXLAN: I flag
        0x00, 0x00, 0x65, 0x00, // VNI 101
        0x33, 0x33, 0x00, 0x00, 0x00, 0x16, // inner: 33:33:00:00:00:16 (MLDv2 group)
        0x02, 0x00, 0x00, 0x00, 0x01, 0x01, // inner src 02:00:00:00:01:01
        0x86, 0xdd, // IPv6
        0x60, 0x00, 0x00, 0x00, 0x00, 0x24, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, // inner IPv6 header (40 bytes) and an MLDv2 report
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x02, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x16, 0x3a, 0x00,
        0x05, 0x02, 0x00, 0x00, 0x01, 0x00, 0x8f, 0x00, 0x6e, 0x89, 0x00, 0x00, 0x00, 0x01, 0x04,
        0x00, 0x00, 0x00, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        0xff, 0x00, 0x01, 0x01,
    ];

    fn params_v4() -> EncapParams {
        EncapParams {
            vni: vni(101),
            underlay: Underlay::Ipv4 {
                local: Ipv4Addr::new(192, 168, 50, 1),
                remote: Ipv4Addr::new(192, 168, 50, 2),
            },
            dst_port: header::UDP_PORT,
            ethernet: Some(OuterEthernet {
                src: EthernetAddress([0x02, 0, 0, 0, 0, 0x01]),
                dst: EthernetAddress([0x02, 0, 0, 0, 0, 0x02]),
            }),
            ipv4_ident: 0x1234,
        }
    }

    fn fixed_port(port: u16) -> EncapConfig {
        EncapConfig {
            source_ports: SourcePortRange::new(port, port).expect("valid"),
            ..EncapConfig::default()
        }
    }

    /// A buffer with `headroom` bytes of junk, then `inner`.
    fn with_headroom(headroom: usize, inner: &[u8]) -> (Vec<u8>, Range<usize>) {
        let mut buffer = vec![0xee; headroom];
        buffer.extend_from_slice(inner);
        let range = headroom..buffer.len();
        (buffer, range)
    }

    #[test]
    fn encap_ipv4_matches_hand_built_fixture() {
        let inner_ip = Ipv4Packet::new_checked(&INNER[14..]).expect("fixture IPv4");
        assert!(
            inner_ip.verify_checksum(),
            "the inner fixture itself is consistent"
        );
        let (mut buffer, inner) = with_headroom(64, &INNER);
        let frame = encapsulate(&mut buffer, inner, &params_v4(), &fixed_port(50000))
            .expect("encapsulates");
        assert_eq!(frame, 14..buffer.len());
        assert!(
            buffer[..14].iter().all(|&b| b == 0xee),
            "headroom before the frame untouched"
        );
        let out = &buffer[frame];
        assert_eq!(out.len(), OUTER_LEN_IPV4 + INNER.len());
        assert_eq!(&out[..OUTER_LEN_IPV4], &OUTER_IPV4[..], "outer headers");
        assert_eq!(&out[OUTER_LEN_IPV4..], &INNER[..], "inner frame untouched");
        let ip = Ipv4Packet::new_checked(&out[14..]).expect("valid IPv4");
        assert!(ip.verify_checksum(), "IPv4 header checksum");
        assert_eq!(usize::from(ip.total_len()), out.len() - 14);
    }

    #[test]
    fn encap_reproduces_kernel_frame() {
        let inner = &KERNEL_FRAME[OUTER_LEN_IPV4..];
        let (mut buffer, range) = with_headroom(OUTER_LEN_IPV4, inner);
        let params = EncapParams {
            vni: vni(101),
            underlay: Underlay::Ipv4 {
                local: Ipv4Addr::new(192, 168, 50, 2),
                remote: Ipv4Addr::new(192, 168, 50, 1),
            },
            dst_port: header::UDP_PORT,
            ethernet: Some(OuterEthernet {
                src: EthernetAddress([0x12, 0x3c, 0xfd, 0x59, 0x24, 0x6e]),
                dst: EthernetAddress([0x92, 0x75, 0x3c, 0x42, 0x2e, 0x91]),
            }),
            ipv4_ident: 0xa496,
        };
        // The kernel's hash differs from ours (it is seeded at boot), so pin its port.
        let config = EncapConfig {
            udp_checksum_ipv4: true,
            ..fixed_port(41990)
        };
        assert!(
            (32768..=60999).contains(&41990),
            "the kernel picked from the default range"
        );
        let frame = encapsulate(&mut buffer, range, &params, &config).expect("fits");
        let out = &buffer[frame];
        assert_eq!(out.len(), KERNEL_FRAME.len());
        assert_eq!(
            &out[..40],
            &KERNEL_FRAME[..40],
            "headers up to the UDP checksum"
        );
        assert_eq!(
            &out[42..],
            &KERNEL_FRAME[42..],
            "VXLAN header and inner frame"
        );
        // The checksum: ours is complete (0x9910, also worked out separately with an RFC 1071
        // sum over pseudo-header, UDP header and payload); the kernel's is the partial
        // pseudo-header sum it handed to the (virtual) device to finish.
        assert_eq!(&out[40..42], &[0x99, 0x10]);
        let src = IpAddress::Ipv4(Ipv4Addr::new(192, 168, 50, 2));
        let dst = IpAddress::Ipv4(Ipv4Addr::new(192, 168, 50, 1));
        let udp = UdpPacket::new_checked(&out[34..]).expect("udp");
        assert!(udp.verify_checksum(&src, &dst));
        let partial = smoltcp::wire::checksum::pseudo_header(&src, &dst, IpProtocol::Udp, 106);
        assert_eq!(&KERNEL_FRAME[40..42], &partial.to_be_bytes());

        let decap = decapsulate(&KERNEL_FRAME[42..]).expect("the kernel's packet is valid");
        assert_eq!(decap.vni, vni(101));
        assert_eq!(&KERNEL_FRAME[42..][decap.inner], inner);
    }

    #[test]
    fn encap_ipv4_options() {
        let (mut buffer, inner) = with_headroom(50, &INNER);
        let config = EncapConfig {
            dont_fragment: true,
            udp_checksum_ipv4: true,
            ttl: 17,
            ..EncapConfig::default()
        };
        let frame = encapsulate(&mut buffer, inner, &params_v4(), &config).expect("fits");
        assert_eq!(frame.start, 0, "exactly enough headroom");
        let out = &buffer[frame];
        let eth = EthernetFrame::new_checked(out).expect("ethernet");
        let ip = Ipv4Packet::new_checked(eth.payload()).expect("ipv4");
        assert!(ip.dont_frag());
        assert_eq!(ip.hop_limit(), 17);
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).expect("udp");
        assert_ne!(udp.checksum(), 0);
        assert!(udp.verify_checksum(
            &IpAddress::Ipv4(ip.src_addr()),
            &IpAddress::Ipv4(ip.dst_addr())
        ));
        let port = udp.src_port();
        assert!(
            (32768..=60999).contains(&port),
            "source port {port} in the default range"
        );
        assert_eq!(
            port,
            source_port(&INNER, &config),
            "UDP-socket path picks the same port"
        );
        assert_eq!(decapsulate(udp.payload()).expect("valid").vni, vni(101));
    }

    #[test]
    fn encap_without_ethernet_starts_at_ip() {
        let params = EncapParams {
            ethernet: None,
            ..params_v4()
        };
        assert_eq!(params.outer_len(), OUTER_LEN_IPV4 - ETHERNET_HEADER_LEN);
        let (mut buffer, inner) = with_headroom(36, &INNER);
        let frame =
            encapsulate(&mut buffer, inner, &params, &fixed_port(50000)).expect("fits exactly");
        let out = &buffer[frame];
        assert_eq!(&out[..36], &OUTER_IPV4[14..]);
    }

    #[test]
    fn encap_ipv6() {
        let local = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
        let remote = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
        let params = EncapParams {
            underlay: Underlay::Ipv6 { local, remote },
            ..params_v4()
        };
        assert_eq!(params.outer_len(), OUTER_LEN_IPV6);
        let (mut buffer, inner) = with_headroom(MAX_OUTER_LEN, &INNER);
        let config = EncapConfig::default();
        let frame = encapsulate(&mut buffer, inner, &params, &config).expect("fits");
        let out = &buffer[frame];
        let eth = EthernetFrame::new_checked(out).expect("ethernet");
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv6);
        let ip = Ipv6Packet::new_checked(eth.payload()).expect("ipv6");
        assert_eq!(ip.version(), 6);
        assert_eq!(ip.hop_limit(), DEFAULT_TTL);
        assert_eq!(ip.next_header(), IpProtocol::Udp);
        assert_eq!(ip.src_addr(), local);
        assert_eq!(ip.dst_addr(), remote);
        assert_eq!(ip.flow_label(), flow_hash(&INNER, 0) & 0x000f_ffff);
        assert_eq!(usize::from(ip.payload_len()), 8 + 8 + INNER.len());
        let udp = UdpPacket::new_checked(ip.payload()).expect("udp");
        assert_ne!(
            udp.checksum(),
            0,
            "IPv6 computes the UDP checksum by default"
        );
        assert!(udp.verify_checksum(&IpAddress::Ipv6(local), &IpAddress::Ipv6(remote)));
        assert_eq!(udp.dst_port(), 4789);
        let decap = decapsulate(udp.payload()).expect("valid");
        assert_eq!(&udp.payload()[decap.inner], &INNER[..]);
    }

    #[test]
    fn encap_errors_leave_buffer_alone() {
        let (mut buffer, inner) = with_headroom(49, &INNER);
        let before = buffer.clone();
        let config = EncapConfig::default();
        assert_eq!(
            encapsulate(&mut buffer, inner.clone(), &params_v4(), &config),
            Err(EncapError::HeadroomTooSmall)
        );
        // A range whose start lies past its end (built at run time, as a bad caller would).
        let reversed = Range { start: 60, end: 40 };
        assert_eq!(
            encapsulate(&mut buffer, reversed, &params_v4(), &config),
            Err(EncapError::OutOfBounds)
        );
        let past_end = buffer.len() + 1;
        assert_eq!(
            encapsulate(&mut buffer, 49..past_end, &params_v4(), &config),
            Err(EncapError::OutOfBounds)
        );
        assert_eq!(
            encapsulate(&mut buffer, 49..62, &params_v4(), &config),
            Err(EncapError::InnerFrameTooShort)
        );
        assert_eq!(buffer, before);

        // The largest inner frame IPv4 can carry is 65535 - 20 - 8 - 8 bytes.
        let mut big = vec![0u8; OUTER_LEN_IPV4 + 65_500];
        let len = big.len();
        assert_eq!(
            encapsulate(&mut big, OUTER_LEN_IPV4..len, &params_v4(), &config),
            Err(EncapError::InnerFrameTooLong)
        );
        let frame = encapsulate(&mut big, OUTER_LEN_IPV4..len - 1, &params_v4(), &config)
            .expect("65499 bytes fit");
        let ip = Ipv4Packet::new_checked(&big[frame][14..]).expect("ipv4");
        assert_eq!(ip.total_len(), 65535);
    }

    #[test]
    fn encap_error_keys_are_distinct() {
        let mut keys: Vec<_> = EncapError::ALL.iter().map(|e| e.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), EncapError::ALL.len());
    }

    #[test]
    fn underlay_families() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mapped: IpAddr = "::ffff:192.0.2.2".parse().expect("address");
        let v6: IpAddr = "2001:db8::1".parse().expect("address");
        assert_eq!(
            Underlay::new(v4, mapped),
            Some(Underlay::Ipv4 {
                local: Ipv4Addr::new(192, 0, 2, 1),
                remote: Ipv4Addr::new(192, 0, 2, 2)
            })
        );
        assert_eq!(Underlay::new(v4, v6), None);
    }

    #[test]
    fn port_range() {
        assert_eq!(
            SourcePortRange::default(),
            SourcePortRange::new(32768, 60999).expect("ok")
        );
        assert_eq!(
            SourcePortRange::new(0, 10),
            Err(InvalidPortRange { min: 0, max: 10 })
        );
        assert!(SourcePortRange::new(10, 9).is_err());
        let range = SourcePortRange::DEFAULT;
        assert_eq!(range.pick(0), 32768);
        assert_eq!(range.pick(u32::MAX), 60999);
        let full = SourcePortRange::new(1, 65535).expect("ok");
        assert_eq!(full.pick(u32::MAX), 65535);
        assert_eq!(
            InvalidPortRange { min: 5, max: 1 }.to_string(),
            "UDP source port range 5-1 is invalid: it needs 1 <= min <= max <= 65535 \
             (the default is 32768-60999)"
        );
    }

    /// `INNER` with another UDP source port (the IPv4 checksum is irrelevant to the hash).
    fn inner_with_port(port: u16) -> [u8; 46] {
        let mut frame = INNER;
        frame[34..36].copy_from_slice(&port.to_be_bytes());
        frame
    }

    #[test]
    fn one_flow_one_port_and_flows_spread() {
        let config = EncapConfig::default();
        let first = source_port(&inner_with_port(1000), &config);
        for _ in 0..3 {
            assert_eq!(source_port(&inner_with_port(1000), &config), first);
        }
        // Payload bytes are not part of the flow.
        let mut other_payload = inner_with_port(1000);
        other_payload[45] ^= 0xff;
        assert_eq!(source_port(&other_payload, &config), first);

        // 4096 flows over 8 equal slices of the range: each slice gets a fair share.
        let range = SourcePortRange::DEFAULT;
        let span = u32::from(range.max() - range.min()) + 1;
        let mut buckets = [0u32; 8];
        let mut distinct = std::collections::HashSet::new();
        for port in 0..4096u16 {
            let chosen = source_port(&inner_with_port(port), &config);
            assert!((range.min()..=range.max()).contains(&chosen));
            distinct.insert(chosen);
            let slot = u32::from(chosen - range.min()) * 8 / span;
            buckets[usize::try_from(slot).expect("small")] += 1;
        }
        assert!(
            distinct.len() > 3500,
            "{} distinct ports for 4096 flows",
            distinct.len()
        );
        for (slot, &count) in buckets.iter().enumerate() {
            assert!(
                (384..=640).contains(&count),
                "slice {slot} got {count} of 4096 flows"
            );
        }
    }

    #[test]
    fn hash_depends_on_each_flow_field() {
        let base = flow_hash(&INNER, 0);
        for (index, what) in [
            (0, "dst MAC"),
            (6, "src MAC"),
            (29, "src IP"),
            (33, "dst IP"),
            (35, "src port"),
            (37, "dst port"),
        ] {
            let mut frame = INNER;
            frame[index] ^= 0x01;
            assert_ne!(flow_hash(&frame, 0), base, "{what}");
        }
        assert_ne!(flow_hash(&INNER, 1), base, "seed");
        // Fragments: no ports, so a first fragment and a later one hash alike.
        let mut first_fragment = INNER;
        first_fragment[20] = 0x20; // MF
        let mut later_fragment = INNER;
        later_fragment[20..22].copy_from_slice(&[0x00, 0x10]); // offset 128
        later_fragment[34..42].copy_from_slice(&[0x11; 8]); // data, not ports
        assert_eq!(flow_hash(&first_fragment, 0), flow_hash(&later_fragment, 0));
    }

    /// An inner IPv6/UDP frame: fd00::2 port 40000 -> fd00::3 port 53, no payload.
    fn inner_ipv6() -> Vec<u8> {
        let mut frame = vec![0x02, 0, 0, 0, 1, 1, 0x02, 0, 0, 0, 1, 2, 0x86, 0xdd];
        frame.extend_from_slice(&[0x60, 0, 0, 0, 0x00, 0x08, 17, 64]); // v6, len 8, UDP, hop 64
        frame.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        frame.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        frame.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00]);
        frame
    }

    #[test]
    fn hash_of_ipv6_flows() {
        let base = inner_ipv6();
        assert_eq!(flow_hash(&base, 0), flow_hash(&inner_ipv6(), 0));
        for (index, what) in [
            (22, "src IP, high half"),
            (37, "src IP, low half"),
            (38, "dst IP, high half"),
            (53, "dst IP, low half"),
            (17, "flow label"),
            (55, "src port"),
            (57, "dst port"),
        ] {
            let mut frame = base.clone();
            frame[index] ^= 0x01;
            assert_ne!(flow_hash(&frame, 0), flow_hash(&base, 0), "{what}");
        }
    }

    #[test]
    fn hash_of_short_or_odd_frames() {
        // L2 only (ARP), short frames and truncated IP headers all hash without panicking.
        let mut arp = INNER;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let _ = flow_hash(&arp, 0);
        for len in 0..INNER.len() {
            let _ = flow_hash(&INNER[..len], 0);
        }
        assert_eq!(flow_hash(&[], 0), flow_hash(&[], 0));
    }

    /// A VXLAN packet (UDP payload) for VNI 101 carrying `INNER`.
    fn vxlan_payload() -> Vec<u8> {
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 0x65, 0];
        payload.extend_from_slice(&INNER);
        payload
    }

    #[test]
    fn decap_valid() {
        let payload = vxlan_payload();
        let decap = decapsulate(&payload).expect("valid");
        assert_eq!(decap.vni, vni(101));
        assert_eq!(&payload[decap.inner.clone()], &INNER[..]);
        let (segment, same) =
            decapsulate_with(&payload, |v| (v == vni(101)).then_some("runner-1")).expect("known");
        assert_eq!(segment, "runner-1");
        assert_eq!(same, decap);
    }

    #[test]
    fn decap_short() {
        let payload = vxlan_payload();
        for len in 0..8 {
            assert_eq!(decapsulate(&payload[..len]), Err(DecapError::Truncated));
        }
        for len in 8..22 {
            assert_eq!(
                decapsulate(&payload[..len]),
                Err(DecapError::InnerFrameTruncated)
            );
        }
        assert!(
            decapsulate(&payload[..22]).is_ok(),
            "a bare Ethernet header is enough"
        );
    }

    #[test]
    fn decap_bad_flags() {
        let mut payload = vxlan_payload();
        payload[0] = 0x00;
        assert_eq!(decapsulate(&payload), Err(DecapError::BadFlags));
        let looked_up = std::cell::Cell::new(false);
        let result = decapsulate_with(&payload, |_| {
            looked_up.set(true);
            Some(())
        });
        assert_eq!(result, Err(DecapError::BadFlags));
        assert!(
            !looked_up.get(),
            "no lookup for a packet without the I flag"
        );
    }

    #[test]
    fn decap_reserved_bits_each_field() {
        for (index, value) in [(0, 0x0c), (1, 0x01), (2, 0x80), (3, 0x10), (7, 0x01)] {
            let mut payload = vxlan_payload();
            payload[index] |= value;
            assert_eq!(
                decapsulate(&payload),
                Err(DecapError::ReservedBitsSet),
                "byte {index}"
            );
        }
    }

    #[test]
    fn decap_unknown_vni_in_linux_order() {
        let payload = vxlan_payload();
        assert_eq!(
            decapsulate_with(&payload, |_| None::<()>),
            Err(DecapError::UnknownVni)
        );
        // Unknown VNI and reserved bits: Linux finds the VNI missing first.
        let mut reserved = vxlan_payload();
        reserved[7] = 0xff;
        assert_eq!(
            decapsulate_with(&reserved, |_| None::<()>),
            Err(DecapError::UnknownVni)
        );
        assert_eq!(
            decapsulate_with(&reserved, |_| Some(())),
            Err(DecapError::ReservedBitsSet)
        );
        // Short inner frame and reserved bits: the inner frame is pulled first.
        assert_eq!(
            decapsulate_with(&reserved[..12], |_| Some(())),
            Err(DecapError::InnerFrameTruncated)
        );
        // Too short for a header: nothing else is looked at.
        assert_eq!(
            decapsulate_with(&payload[..7], |_| Some(())),
            Err(DecapError::Truncated)
        );
    }

    #[test]
    fn decap_error_table() {
        assert_eq!(DecapError::COUNT, 5);
        for (index, error) in DecapError::ALL.iter().enumerate() {
            assert_eq!(error.index(), index);
            assert!(error.key().starts_with("vxlan_decap."));
            assert!(!error.description().is_empty());
        }
        assert_eq!(DecapError::UnknownVni.key(), "vxlan_decap.unknown_vni");
        assert_eq!(
            DecapError::from(header::Error::ReservedBitsSet),
            DecapError::ReservedBitsSet
        );
    }

    proptest! {
        #[test]
        fn decap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let plain = decapsulate(&bytes);
            let looked_up = decapsulate_with(&bytes, |v| (v.get() % 2 == 0).then_some(v));
            if let Ok(decap) = &plain {
                prop_assert!(decap.inner.end <= bytes.len());
                prop_assert!(decap.inner.len() >= MIN_INNER_LEN);
            }
            if let Ok((_, decap)) = &looked_up {
                prop_assert_eq!(Some(decap), plain.as_ref().ok());
            }
        }

        #[test]
        fn encap_decap_round_trip(
            value in 0u32..=0x00ff_ffff,
            inner in proptest::collection::vec(any::<u8>(), 14..200),
            ident in any::<u16>(),
            ipv6 in any::<bool>(),
            ethernet in any::<bool>(),
            checksum in any::<bool>(),
        ) {
            let underlay = if ipv6 {
                Underlay::Ipv6 {
                    local: Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
                    remote: Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
                }
            } else {
                Underlay::Ipv4 {
                    local: Ipv4Addr::new(192, 168, 50, 1),
                    remote: Ipv4Addr::new(192, 168, 50, 2),
                }
            };
            let params = EncapParams {
                vni: vni(value),
                underlay,
                ethernet: if ethernet { params_v4().ethernet } else { None },
                ipv4_ident: ident,
                ..params_v4()
            };
            let config = EncapConfig {
                udp_checksum_ipv4: checksum,
                udp_checksum_ipv6: checksum,
                ..EncapConfig::default()
            };
            let (mut buffer, range) = with_headroom(MAX_OUTER_LEN, &inner);
            let frame = encapsulate(&mut buffer, range, &params, &config).expect("fits");
            let out = &buffer[frame];
            let ip_start = if ethernet { ETHERNET_HEADER_LEN } else { 0 };
            let (udp_bytes, src, dst) = if ipv6 {
                let ip = Ipv6Packet::new_checked(&out[ip_start..]).expect("ipv6");
                let (src, dst) = (IpAddress::Ipv6(ip.src_addr()), IpAddress::Ipv6(ip.dst_addr()));
                (ip.payload(), src, dst)
            } else {
                let ip = Ipv4Packet::new_checked(&out[ip_start..]).expect("ipv4");
                prop_assert!(ip.verify_checksum());
                prop_assert_eq!(ip.ident(), ident);
                let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
                (ip.payload(), src, dst)
            };
            let udp = UdpPacket::new_checked(udp_bytes).expect("udp");
            prop_assert_eq!(udp.checksum() != 0, checksum);
            prop_assert!(udp.verify_checksum(&src, &dst));
            let decap = decapsulate(udp.payload()).expect("valid");
            prop_assert_eq!(decap.vni, vni(value));
            prop_assert_eq!(&udp.payload()[decap.inner], &inner[..]);
        }
    }
}
