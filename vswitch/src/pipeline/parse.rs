//! Stage `parse`: validates a received frame once, at the boundary, and extracts what later
//! stages need into a small `Copy` [`Parsed`].
//!
//! Checks, in order (the first failure is the drop reason):
//! 1. the `virtio_net_hdr` ([`crate::wire::vnet_hdr`] rules: known GSO type, non-zero GSO size,
//!    a partial checksum inside the frame) and, as the kernel's `virtio_net_hdr_match_proto`,
//!    a GSO type that matches the ethertype;
//! 2. the Ethernet header (14 bytes, no VLAN tag: ports are untagged, and a tag would carry
//!    IPv4 past port security);
//! 3. ARP: Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4), request or reply, 28 bytes;
//! 4. IPv4: version 4, IHL >= 5, IHL <= total length <= the bytes present (Ethernet padding
//!    after the total length is allowed, RFC 894);
//! 5. IPv6 ([`crate::wire::ipv6::parse`]): version 6, the payload length within the bytes
//!    present, no jumbogram, an extension header chain that ends within the packet (at most
//!    8 headers, hop-by-hop only first, one fragment header, well-formed options), a first
//!    fragment that holds the whole chain (RFC 7112), and the upper-layer header present.
//!
//! Other ethertypes pass unparsed. Checksums are not verified: a switch forwards them, and the
//! receiving stack checks them.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::wire::{
    ArpHardware, ArpOperation, ArpPacket, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet,
    UDP_HEADER_LEN, UdpPacket,
};

use crate::tables::counters::keyed_enum;
use crate::wire::{VnetError, VnetGsoKind, VnetPacket, VnetRepr};

keyed_enum! {
    /// Why `parse` dropped a frame.
    pub enum DropReason {
        VnetTruncated = "parse.vnet_truncated":
            "frame shorter than the 10-byte virtio_net_hdr",
        VnetBadGso = "parse.vnet_bad_gso":
            "virtio_net_hdr with an unknown GSO type, a GSO size of 0, or a GSO type that does not match the ethertype",
        VnetBadChecksum = "parse.vnet_bad_csum":
            "virtio_net_hdr asks to complete a checksum that lies outside the frame",
        Runt = "parse.runt":
            "Ethernet frame shorter than its 14-byte header",
        VlanTagged = "parse.vlan_tagged":
            "802.1Q/802.1ad-tagged frame: ports carry untagged frames only",
        ArpTruncated = "parse.arp_truncated":
            "ARP packet shorter than its header and addresses",
        ArpUnsupported = "parse.arp_unsupported":
            "ARP that is not Ethernet/IPv4 request or reply",
        Ipv4Truncated = "parse.ipv4_truncated":
            "IPv4 packet shorter than its header",
        Ipv4BadVersion = "parse.ipv4_bad_version":
            "ethertype IPv4 but IP version is not 4",
        Ipv4BadIhl = "parse.ipv4_bad_ihl":
            "IPv4 header length below 20 bytes or beyond the total length",
        Ipv4BadTotalLength = "parse.ipv4_bad_total_len":
            "IPv4 total length larger than the bytes received",
        Ipv6Truncated = "parse.ipv6_truncated":
            "IPv6 packet shorter than its 40-byte header",
        Ipv6BadVersion = "parse.ipv6_bad_version":
            "ethertype IPv6 but IP version is not 6",
        Ipv6BadPayloadLength = "parse.ipv6_bad_payload_len":
            "IPv6 payload length larger than the bytes received",
        Ipv6Jumbogram = "parse.ipv6_jumbogram":
            "IPv6 jumbogram (payload length 0 with a hop-by-hop header, or a Jumbo Payload option): not switched",
        Ipv6ExtensionTruncated = "parse.ipv6_ext_truncated":
            "an IPv6 extension header runs past the end of the packet",
        Ipv6ChainTooLong = "parse.ipv6_chain_too_long":
            "more than 8 IPv6 extension headers",
        Ipv6HopByHopNotFirst = "parse.ipv6_hbh_not_first":
            "IPv6 hop-by-hop options header anywhere but right after the fixed header",
        Ipv6FragmentMisplaced = "parse.ipv6_fragment_misplaced":
            "a second IPv6 fragment header in one packet",
        Ipv6IncompleteChain = "parse.ipv6_incomplete_chain":
            "an IPv6 first fragment without the whole header chain and upper-layer header (RFC 7112)",
        Ipv6BadOption = "parse.ipv6_bad_option":
            "an IPv6 hop-by-hop or destination option runs past its header",
        Ipv6L4Truncated = "parse.ipv6_l4_truncated":
            "an IPv6 packet too short for its TCP, UDP or ICMPv6 header",
    }
}

/// The L3 facts later stages need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// An ARP request or reply for IPv4 over Ethernet.
    Arp {
        /// Request or reply.
        operation: ArpOperation,
        /// Sender hardware address (SHA).
        sender_mac: [u8; 6],
        /// Sender protocol address (SPA).
        sender_ip: Ipv4Addr,
        /// Target protocol address (TPA).
        target_ip: Ipv4Addr,
    },
    /// An IPv4 packet.
    Ipv4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
        /// The protocol field.
        protocol: IpProtocol,
        /// UDP from port 68 to port 67 (a DHCP client, which may use 0.0.0.0 as source).
        dhcp_client: bool,
    },
    /// An IPv6 packet.
    Ipv6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
        /// The upper-layer protocol after the extension headers (for a non-first fragment,
        /// the fragment header's next header).
        next_header: u8,
        /// Hop limit.
        hop_limit: u8,
        /// The ICMPv6 type when the packet carries the ICMPv6 header (not a non-first
        /// fragment), else 0.
        icmp_type: u8,
        /// The packet carries a fragment header.
        fragment: bool,
    },
    /// Any other ethertype.
    Other,
}

/// What `parse` extracted from a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// The validated `virtio_net_hdr`.
    pub vnet: VnetRepr,
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet type.
    pub ethertype: EthernetProtocol,
    /// L3 facts.
    pub l3: L3,
}

/// 802.1Q C-tag, 802.1ad S-tag and the pre-standard QinQ tag.
pub const VLAN_ETHERTYPES: [u16; 3] = [0x8100, 0x88a8, 0x9100];

/// Minimum IPv4 header length (IHL 5).
const IPV4_MIN_HEADER_LEN: usize = 20;

/// Fixed IPv6 header length.
const IPV6_HEADER_LEN: usize = 40;

/// Length of an ARP packet for IPv4 over Ethernet (RFC 826 with hlen 6, plen 4).
const ARP_ETHERNET_IPV4_LEN: usize = 28;

/// The ARP fixed header (htype, ptype, hlen, plen, oper) before the addresses.
const ARP_FIXED_LEN: usize = 8;

/// DHCP client and server ports (RFC 2131 section 4.1).
const DHCP_CLIENT_PORT: u16 = 68;
const DHCP_SERVER_PORT: u16 = 67;

/// Validates `frame` (`virtio_net_hdr` + Ethernet frame) and extracts its addresses.
///
/// # Errors
/// The first check the frame fails (see the module docs).
pub fn parse(frame: &[u8]) -> Result<Parsed, DropReason> {
    let vnet_packet = VnetPacket::new_checked(frame).map_err(|_| DropReason::VnetTruncated)?;
    let vnet = VnetRepr::parse(&vnet_packet).map_err(|error| match error {
        VnetError::Truncated => DropReason::VnetTruncated,
        VnetError::UnknownGsoType(_) | VnetError::ZeroGsoSize => DropReason::VnetBadGso,
        VnetError::ChecksumOutOfFrame { .. } => DropReason::VnetBadChecksum,
    })?;
    let ethernet =
        EthernetFrame::new_checked(vnet_packet.payload()).map_err(|_| DropReason::Runt)?;
    let ethertype = ethernet.ethertype();
    if VLAN_ETHERTYPES.contains(&u16::from(ethertype)) {
        return Err(DropReason::VlanTagged);
    }
    if let Some(gso) = vnet.gso {
        let matches = match gso.kind {
            VnetGsoKind::TcpV4 | VnetGsoKind::Udp => ethertype == EthernetProtocol::Ipv4,
            VnetGsoKind::TcpV6 => ethertype == EthernetProtocol::Ipv6,
            VnetGsoKind::UdpL4 => {
                ethertype == EthernetProtocol::Ipv4 || ethertype == EthernetProtocol::Ipv6
            }
        };
        if !matches {
            return Err(DropReason::VnetBadGso);
        }
    }
    let payload = ethernet.payload();
    let l3 = match ethertype {
        EthernetProtocol::Arp => parse_arp(payload)?,
        EthernetProtocol::Ipv4 => parse_ipv4(payload)?,
        EthernetProtocol::Ipv6 => parse_ipv6(payload)?,
        _ => L3::Other,
    };
    Ok(Parsed {
        vnet,
        dst_mac: ethernet.dst_addr().0,
        src_mac: ethernet.src_addr().0,
        ethertype,
        l3,
    })
}

fn ipv4_from(bytes: &[u8]) -> Ipv4Addr {
    match bytes {
        &[a, b, c, d] => Ipv4Addr::new(a, b, c, d),
        // Unreachable after the hlen/plen check; an unspecified address fails port security.
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

fn parse_arp(payload: &[u8]) -> Result<L3, DropReason> {
    if payload.len() < ARP_FIXED_LEN {
        return Err(DropReason::ArpTruncated);
    }
    let arp = ArpPacket::new_unchecked(payload);
    if arp.hardware_type() != ArpHardware::Ethernet
        || arp.protocol_type() != EthernetProtocol::Ipv4
        || arp.hardware_len() != 6
        || arp.protocol_len() != 4
    {
        return Err(DropReason::ArpUnsupported);
    }
    if payload.len() < ARP_ETHERNET_IPV4_LEN {
        return Err(DropReason::ArpTruncated);
    }
    // hlen and plen are fixed now, so this checks the 28 bytes just verified.
    let arp = ArpPacket::new_checked(payload).map_err(|_| DropReason::ArpTruncated)?;
    let operation = arp.operation();
    if !matches!(operation, ArpOperation::Request | ArpOperation::Reply) {
        return Err(DropReason::ArpUnsupported);
    }
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(arp.source_hardware_addr());
    Ok(L3::Arp {
        operation,
        sender_mac,
        sender_ip: ipv4_from(arp.source_protocol_addr()),
        target_ip: ipv4_from(arp.target_protocol_addr()),
    })
}

fn parse_ipv4(payload: &[u8]) -> Result<L3, DropReason> {
    if payload.len() < IPV4_MIN_HEADER_LEN {
        return Err(DropReason::Ipv4Truncated);
    }
    let unchecked = Ipv4Packet::new_unchecked(payload);
    if unchecked.version() != 4 {
        return Err(DropReason::Ipv4BadVersion);
    }
    let header_len = usize::from(unchecked.header_len());
    let total_len = usize::from(unchecked.total_len());
    if header_len < IPV4_MIN_HEADER_LEN || header_len > total_len {
        return Err(DropReason::Ipv4BadIhl);
    }
    if total_len > payload.len() {
        return Err(DropReason::Ipv4BadTotalLength);
    }
    // Everything smoltcp's check_len checks has been checked above, one reason each.
    let ip = Ipv4Packet::new_checked(payload).map_err(|_| DropReason::Ipv4BadTotalLength)?;
    let protocol = ip.next_header();
    // Only a first fragment carries the UDP header (whose length then exceeds the fragment:
    // the ports are read without checking it, so a fragmented DHCP message is still one).
    let dhcp_client = protocol == IpProtocol::Udp
        && ip.frag_offset() == 0
        && ip.payload().len() >= UDP_HEADER_LEN
        && {
            let udp = UdpPacket::new_unchecked(ip.payload());
            udp.src_port() == DHCP_CLIENT_PORT && udp.dst_port() == DHCP_SERVER_PORT
        };
    Ok(L3::Ipv4 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        protocol,
        dhcp_client,
    })
}

fn parse_ipv6(payload: &[u8]) -> Result<L3, DropReason> {
    use crate::wire::ipv6::{self, Error};
    let Some(&first) = payload.first() else {
        return Err(DropReason::Ipv6Truncated);
    };
    if first >> 4 != 6 {
        return Err(DropReason::Ipv6BadVersion);
    }
    if payload.len() < IPV6_HEADER_LEN {
        return Err(DropReason::Ipv6Truncated);
    }
    let info = ipv6::parse(payload).map_err(|error| match error {
        Error::Truncated => DropReason::Ipv6Truncated,
        Error::BadVersion => DropReason::Ipv6BadVersion,
        Error::BadPayloadLength => DropReason::Ipv6BadPayloadLength,
        Error::Jumbogram => DropReason::Ipv6Jumbogram,
        Error::ExtensionTruncated => DropReason::Ipv6ExtensionTruncated,
        Error::ChainTooLong => DropReason::Ipv6ChainTooLong,
        Error::HopByHopNotFirst => DropReason::Ipv6HopByHopNotFirst,
        Error::FragmentMisplaced => DropReason::Ipv6FragmentMisplaced,
        Error::IncompleteChain => DropReason::Ipv6IncompleteChain,
        Error::BadOption => DropReason::Ipv6BadOption,
        Error::L4Truncated => DropReason::Ipv6L4Truncated,
    })?;
    let first_fragment = info.fragment.is_none_or(|f| f.offset == 0);
    let icmp_type = if info.next_header == ICMPV6 && first_fragment {
        payload.get(info.l4_offset).copied().unwrap_or(0)
    } else {
        0
    };
    Ok(L3::Ipv6 {
        src: info.src,
        dst: info.dst,
        next_header: info.next_header,
        hop_limit: info.hop_limit,
        icmp_type,
        fragment: info.fragment.is_some(),
    })
}

/// The IPv6 next header value of ICMPv6.
pub const ICMPV6: u8 = 58;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::wire::VNET_HDR_LEN;
    use crate::wire::vnet_hdr::{flags, gso};
    use proptest::prelude::*;

    #[test]
    fn arp_request() {
        let parsed = parse(&ARP_REQUEST).unwrap();
        assert_eq!(parsed.src_mac, MAC_A);
        assert_eq!(parsed.dst_mac, BROADCAST);
        assert_eq!(parsed.ethertype, EthernetProtocol::Arp);
        assert_eq!(
            parsed.l3,
            L3::Arp {
                operation: ArpOperation::Request,
                sender_mac: MAC_A,
                sender_ip: IP_A,
                target_ip: IP_B,
            }
        );
        assert_eq!(parsed.vnet, VnetRepr::PLAIN);
    }

    #[test]
    fn icmp_echo() {
        let parsed = parse(&ICMP_ECHO).unwrap();
        assert_eq!(parsed.dst_mac, MAC_B);
        assert_eq!(
            parsed.l3,
            L3::Ipv4 {
                src: IP_A,
                dst: IP_B,
                protocol: IpProtocol::Icmp,
                dhcp_client: false,
            }
        );
    }

    #[test]
    fn dhcp_discover_is_flagged() {
        let parsed = parse(&DHCP_DISCOVER).unwrap();
        assert!(matches!(
            parsed.l3,
            L3::Ipv4 {
                src: Ipv4Addr::UNSPECIFIED,
                dhcp_client: true,
                ..
            }
        ));
        // Server -> client direction is not a client.
        let mut reversed = DHCP_DISCOVER.to_vec();
        reversed[VNET_HDR_LEN + 14 + 20 + 1] = 67;
        reversed[VNET_HDR_LEN + 14 + 20 + 3] = 68;
        assert!(matches!(
            parse(&reversed).unwrap().l3,
            L3::Ipv4 {
                dhcp_client: false,
                ..
            }
        ));
        // A non-first fragment carries no UDP header.
        let fragment = with_byte(&DHCP_DISCOVER, 14 + 7, 0x10);
        assert!(matches!(
            parse(&fragment).unwrap().l3,
            L3::Ipv4 {
                dhcp_client: false,
                ..
            }
        ));
    }

    #[test]
    fn ipv6_and_other_ethertypes_pass() {
        assert!(matches!(
            parse(&IPV6_ECHO).unwrap().l3,
            L3::Ipv6 {
                next_header: ICMPV6,
                icmp_type: 128,
                hop_limit: 64,
                fragment: false,
                ..
            }
        ));
        // LLDP (0x88cc) with a short body.
        let lldp = with_byte(&with_byte(&ARP_REQUEST, 12, 0x88), 13, 0xcc);
        let parsed = parse(&lldp).unwrap();
        assert_eq!(parsed.l3, L3::Other);
        assert_eq!(parsed.ethertype, EthernetProtocol::Unknown(0x88cc));
    }

    #[test]
    fn runt() {
        for len in VNET_HDR_LEN..VNET_HDR_LEN + 14 {
            assert_eq!(parse(&ICMP_ECHO[..len]), Err(DropReason::Runt), "{len}");
        }
        // Exactly a header is a (useless but valid) frame of an unknown ethertype... here IPv4,
        // so the IPv4 check fires instead.
        assert_eq!(
            parse(&ICMP_ECHO[..VNET_HDR_LEN + 14]),
            Err(DropReason::Ipv4Truncated)
        );
    }

    #[test]
    fn vnet_truncated() {
        for len in 0..VNET_HDR_LEN {
            assert_eq!(parse(&ICMP_ECHO[..len]), Err(DropReason::VnetTruncated));
        }
    }

    #[test]
    fn vnet_bad_gso() {
        let mut frame = ICMP_ECHO.to_vec();
        frame[1] = 0x09; // unknown gso type
        assert_eq!(parse(&frame), Err(DropReason::VnetBadGso));
        frame[1] = gso::TCPV4; // gso_size stays 0
        assert_eq!(parse(&frame), Err(DropReason::VnetBadGso));
        frame[4] = 0xa8;
        frame[5] = 0x05;
        assert!(parse(&frame).is_ok(), "TCPV4 over IPv4 with a size is fine");
        frame[1] = gso::TCPV6; // TCPV6 over an IPv4 ethertype
        assert_eq!(parse(&frame), Err(DropReason::VnetBadGso));
        let mut arp = ARP_REQUEST.to_vec();
        arp[1] = gso::UDP_L4;
        arp[4] = 100;
        assert_eq!(parse(&arp), Err(DropReason::VnetBadGso));
    }

    #[test]
    fn vnet_bad_checksum() {
        let mut frame = ICMP_ECHO.to_vec();
        frame[0] = flags::NEEDS_CSUM;
        let ethernet_len = u16::try_from(frame.len() - VNET_HDR_LEN).unwrap();
        // csum_start = 34 (ICMP), offset 2: fits.
        frame[6..8].copy_from_slice(&34u16.to_le_bytes());
        frame[8..10].copy_from_slice(&2u16.to_le_bytes());
        assert!(parse(&frame).is_ok());
        frame[6..8].copy_from_slice(&(ethernet_len - 1).to_le_bytes());
        frame[8..10].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(parse(&frame), Err(DropReason::VnetBadChecksum));
    }

    #[test]
    fn vlan_tagged() {
        for tag in VLAN_ETHERTYPES {
            let [high, low] = tag.to_be_bytes();
            let tagged = with_byte(&with_byte(&ICMP_ECHO, 12, high), 13, low);
            assert_eq!(parse(&tagged), Err(DropReason::VlanTagged), "{tag:#06x}");
        }
    }

    #[test]
    fn arp_truncated() {
        let ethernet_end = VNET_HDR_LEN + 14;
        for len in [0, 7, 8, 27] {
            assert_eq!(
                parse(&ARP_REQUEST[..ethernet_end + len]),
                Err(DropReason::ArpTruncated),
                "{len}"
            );
        }
        assert!(parse(&ARP_REQUEST[..ethernet_end + 28]).is_ok());
    }

    #[test]
    fn arp_unsupported() {
        // hardware type 6 (IEEE 802), protocol 0x86dd, hlen 8, plen 16, operation 3 (RARP).
        for (at, value) in [(15, 6), (16, 0x86), (18, 8), (19, 16), (21, 3)] {
            let frame = with_byte(&ARP_REQUEST, at, value);
            assert_eq!(parse(&frame), Err(DropReason::ArpUnsupported), "byte {at}");
        }
        assert!(matches!(
            parse(&with_byte(&ARP_REQUEST, 21, 2)).unwrap().l3,
            L3::Arp {
                operation: ArpOperation::Reply,
                ..
            }
        ));
    }

    #[test]
    fn ipv4_truncated() {
        let ip_start = VNET_HDR_LEN + 14;
        assert_eq!(
            parse(&ICMP_ECHO[..ip_start + 19]),
            Err(DropReason::Ipv4Truncated)
        );
    }

    #[test]
    fn ipv4_bad_version() {
        assert_eq!(
            parse(&with_byte(&ICMP_ECHO, 14, 0x65)),
            Err(DropReason::Ipv4BadVersion)
        );
    }

    #[test]
    fn ipv4_bad_ihl() {
        for ihl in [0u8, 1, 4] {
            assert_eq!(
                parse(&with_byte(&ICMP_ECHO, 14, 0x40 | ihl)),
                Err(DropReason::Ipv4BadIhl),
                "ihl {ihl}"
            );
        }
        // IHL 15 = 60 bytes > total length 32.
        assert_eq!(
            parse(&with_byte(&ICMP_ECHO, 14, 0x4f)),
            Err(DropReason::Ipv4BadIhl)
        );
    }

    #[test]
    fn ipv4_bad_total_len() {
        // Total length 33 > the 32 bytes present.
        assert_eq!(
            parse(&with_byte(&ICMP_ECHO, 17, 33)),
            Err(DropReason::Ipv4BadTotalLength)
        );
        // Total length 19 < IHL 20.
        assert_eq!(
            parse(&with_byte(&ICMP_ECHO, 17, 19)),
            Err(DropReason::Ipv4BadIhl)
        );
        // Ethernet padding after the total length is fine.
        let mut padded = ICMP_ECHO.to_vec();
        padded.extend_from_slice(&[0; 16]);
        assert!(parse(&padded).is_ok());
    }

    #[test]
    fn ipv6_malformed() {
        assert_eq!(
            parse(&IPV6_ECHO[..VNET_HDR_LEN + 14 + 39]),
            Err(DropReason::Ipv6Truncated)
        );
        assert_eq!(
            parse(&IPV6_ECHO[..VNET_HDR_LEN + 14]),
            Err(DropReason::Ipv6Truncated)
        );
        assert_eq!(
            parse(&with_byte(&IPV6_ECHO, 14, 0x40)),
            Err(DropReason::Ipv6BadVersion)
        );
    }

    #[test]
    fn garbage() {
        // Random-looking bytes with a zero virtio header: an unknown ethertype passes parse
        // (port security then decides); a garbage virtio header does not.
        let garbage: Vec<u8> = (0u8..100).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        assert!(parse(&garbage).is_err(), "garbage vnet header");
        let mut with_header = vec![0u8; VNET_HDR_LEN];
        with_header.extend_from_slice(&garbage);
        assert!(parse(&with_header).is_ok_and(|p| p.l3 == L3::Other));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_fixtures(
            which in 0usize..4,
            flips in proptest::collection::vec((0usize..100, any::<u8>()), 1..6),
            cut in 0usize..100,
        ) {
            let base: &[u8] = match which {
                0 => &ARP_REQUEST,
                1 => &ICMP_ECHO,
                2 => &DHCP_DISCOVER,
                _ => &IPV6_ECHO,
            };
            let mut frame = base.to_vec();
            for (at, value) in flips {
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            frame.truncate(cut.max(1));
            let _ = parse(&frame);
        }
    }
}
