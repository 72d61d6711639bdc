//! Stage `port_security`: a port may send only from its own addresses.
//!
//! - The Ethernet source must be the port's MAC.
//! - ARP: the sender hardware address must be the port's MAC, and the sender IP one of the
//!   port's addresses or 0.0.0.0 (an ARP probe, RFC 5227 section 2.1.1).
//! - IPv4: the source must be one of the port's addresses, or inside one of its
//!   `allowed_sources` prefixes (the port is a router for them: a Route's next hop);
//!   0.0.0.0 is allowed only for a DHCP client (UDP 68 -> 67, RFC 2131 section 4.1).
//!   ARP always comes from the port's own addresses, router or not (a trunk's VLAN port,
//!   which has none, from its Subnet's prefix).
//! - IPv6: the source must be one of the port's IPv6 addresses (its address on a dual-stack
//!   Subnet, its EUI-64 link-local address, its SLAAC address when the Subnet allows it)
//!   or inside one of its `allowed_sources6` (the destinations of IPv6 Routes through it);
//!   the unspecified address only for duplicate address detection (a neighbour
//!   solicitation) and MLD reports. A trunk's VLAN port is not checked (its container
//!   addresses itself). Whatever the source:
//!   - RA guard (RFC 6105): router advertisements and redirects from a port are dropped;
//!   - ND guard: a neighbour advertisement must be for one of the port's own addresses, and
//!     the link-layer address a solicitation or advertisement carries must be the port's MAC
//!     (no neighbour cache poisoning).
//! - Other ethertypes are checked at L2 only.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::parse::{ICMPV6, L3, Parsed};
use crate::tables::counters::keyed_enum;
use crate::tables::snapshot::PortEntry;
use crate::wire::ipv6::{self as wire6, Nd};

keyed_enum! {
    /// Why `port_security` dropped a frame.
    pub enum DropReason {
        SrcMac = "port_security.src_mac":
            "Ethernet source MAC is not the port's MAC",
        ArpSenderMac = "port_security.arp_sha":
            "ARP sender hardware address is not the port's MAC",
        ArpSenderIp = "port_security.arp_spa":
            "ARP sender IP is neither one of the port's addresses nor 0.0.0.0",
        Ipv4Src = "port_security.ipv4_src":
            "IPv4 source is neither one of the port's addresses nor in its allowed source prefixes (0.0.0.0 only for DHCP)",
        Ipv6Src = "port_security.ipv6_src":
            "IPv6 source is none of the port's addresses (its address, its EUI-64 link-local or SLAAC address; :: only for DAD and MLD)",
        RaGuard = "port_security.ra_guard":
            "a router advertisement or redirect from a container (RA guard, RFC 6105)",
        NdSpoof = "port_security.nd_spoof":
            "a neighbour advertisement for an address that is not the port's, or a link-layer address option that is not the port's MAC",
    }
}

/// ICMPv6 types port security looks at.
const ROUTER_ADVERTISEMENT: u8 = 134;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
const REDIRECT: u8 = 137;
const MLD_REPORT: u8 = 131;
const MLD2_REPORT: u8 = 143;

/// The IPv6 checks on a frame from `port` (see the module docs); `frame` is the whole frame
/// (virtio header + Ethernet), whose ND options are read.
fn check_ipv6(
    port: &PortEntry,
    src: Ipv6Addr,
    icmp_type: u8,
    frame: &[u8],
) -> Result<(), DropReason> {
    if matches!(icmp_type, ROUTER_ADVERTISEMENT | REDIRECT) {
        return Err(DropReason::RaGuard);
    }
    if port.vlan().is_none() {
        let own = port.ips6.contains(&src)
            || port.allowed_sources6.iter().any(|net| net.contains(&src))
            || (src.is_unspecified()
                && matches!(icmp_type, NEIGHBOR_SOLICITATION | MLD_REPORT | MLD2_REPORT));
        if !own {
            return Err(DropReason::Ipv6Src);
        }
    }
    if !matches!(icmp_type, NEIGHBOR_SOLICITATION | NEIGHBOR_ADVERTISEMENT) {
        return Ok(());
    }
    // Malformed ND is the nd stage's to count; here only what it claims matters.
    let Some(icmp) = icmp_message(frame) else {
        return Ok(());
    };
    match wire6::parse_nd(icmp, src) {
        Ok(Some(Nd::NeighborSolicitation {
            source_mac: Some(mac),
            ..
        })) if mac != port.mac => Err(DropReason::NdSpoof),
        Ok(Some(Nd::NeighborAdvertisement {
            target, target_mac, ..
        })) => {
            let own_target = port.vlan().is_some() || port.ips6.contains(&target);
            if !own_target || target_mac.is_some_and(|mac| mac != port.mac) {
                Err(DropReason::NdSpoof)
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// The ICMPv6 message of an IPv6 frame (virtio header + Ethernet), within the packet's
/// payload length; `None` when the frame holds none.
pub fn icmp_message(frame: &[u8]) -> Option<&[u8]> {
    let packet = frame.get(crate::wire::VNET_HDR_LEN + 14..)?;
    let info = wire6::parse(packet).ok()?;
    if info.next_header != ICMPV6 {
        return None;
    }
    packet.get(info.l4_offset..info.packet_len)
}

/// Checks a parsed frame received on `port` against the port's addresses.
///
/// # Errors
/// The first rule the frame breaks.
pub fn check(port: &PortEntry, parsed: &Parsed, frame: &[u8]) -> Result<(), DropReason> {
    if parsed.src_mac != port.mac {
        return Err(DropReason::SrcMac);
    }
    match parsed.l3 {
        L3::Arp {
            sender_mac,
            sender_ip,
            ..
        } => {
            if sender_mac != port.mac {
                return Err(DropReason::ArpSenderMac);
            }
            // A trunk's VLAN port has no allocated address: the container addresses itself
            // inside the VLAN Subnet's prefix.
            let own = port.ips.contains(&sender_ip)
                || (port.vlan().is_some()
                    && port
                        .allowed_sources
                        .iter()
                        .any(|net| net.contains(&sender_ip)));
            if !sender_ip.is_unspecified() && !own {
                return Err(DropReason::ArpSenderIp);
            }
        }
        L3::Ipv4 {
            src, dhcp_client, ..
        } => {
            let allowed = port.ips.contains(&src)
                || (src == Ipv4Addr::UNSPECIFIED && dhcp_client)
                || port.allowed_sources.iter().any(|net| net.contains(&src));
            if !allowed {
                return Err(DropReason::Ipv4Src);
            }
        }
        L3::Ipv6 { src, icmp_type, .. } => check_ipv6(port, src, icmp_type, frame)?,
        L3::Other => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::parse::parse;
    use crate::port::PortId;
    use crate::wire::VNET_HDR_LEN;

    const ARP_SHA: usize = 14 + 8;
    const ARP_SPA: usize = 14 + 14;
    const IPV4_SRC: usize = 14 + 12;

    fn check_frame(port: u32, frame: &[u8]) -> Result<(), DropReason> {
        let snapshot = snapshot();
        let parsed = parse(frame).expect("fixture parses");
        check(snapshot.port(PortId(port)).unwrap(), &parsed, frame)
    }

    fn with_bytes(frame: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut out = frame.to_vec();
        out[VNET_HDR_LEN + at..VNET_HDR_LEN + at + bytes.len()].copy_from_slice(bytes);
        out
    }

    #[test]
    fn own_frames_pass() {
        assert_eq!(check_frame(1, &ARP_REQUEST), Ok(()));
        assert_eq!(check_frame(1, &ICMP_ECHO), Ok(()));
        assert_eq!(check_frame(1, &DHCP_DISCOVER), Ok(()));
        assert_eq!(check_frame(1, &IPV6_ECHO), Ok(()));
        // Another port's IPv6 source, with this port's MAC.
        assert_eq!(
            check_frame(1, &with_bytes(&IPV6_ECHO, 14 + 8 + 15, &[0x0b])),
            Err(DropReason::Ipv6Src)
        );
    }

    #[test]
    fn spoofed_mac() {
        assert_eq!(
            check_frame(1, &with_src_mac(&ICMP_ECHO, MAC_B)),
            Err(DropReason::SrcMac)
        );
        // Another port's frame, unchanged, is spoofed from port 2's point of view.
        assert_eq!(check_frame(2, &ARP_REQUEST), Err(DropReason::SrcMac));
        // IPv6 and other ethertypes are still held to the MAC.
        assert_eq!(check_frame(2, &IPV6_ECHO), Err(DropReason::SrcMac));
    }

    #[test]
    fn spoofed_arp_sender_mac() {
        let frame = with_bytes(&ARP_REQUEST, ARP_SHA, &MAC_B);
        assert_eq!(check_frame(1, &frame), Err(DropReason::ArpSenderMac));
    }

    #[test]
    fn spoofed_arp_sender_ip() {
        // Claims port 2's address (ARP cache poisoning).
        let frame = with_bytes(&ARP_REQUEST, ARP_SPA, &IP_B.octets());
        assert_eq!(check_frame(1, &frame), Err(DropReason::ArpSenderIp));
        // An ARP probe from 0.0.0.0 is allowed (RFC 5227).
        let probe = with_bytes(&ARP_REQUEST, ARP_SPA, &[0, 0, 0, 0]);
        assert_eq!(check_frame(1, &probe), Ok(()));
    }

    #[test]
    fn spoofed_ipv4_source() {
        let frame = with_bytes(&ICMP_ECHO, IPV4_SRC, &IP_D.octets());
        assert_eq!(check_frame(1, &frame), Err(DropReason::Ipv4Src));
        // 0.0.0.0 outside DHCP is not allowed.
        let frame = with_bytes(&ICMP_ECHO, IPV4_SRC, &[0, 0, 0, 0]);
        assert_eq!(check_frame(1, &frame), Err(DropReason::Ipv4Src));
        // DHCP from a wrong, non-zero source is not allowed either.
        let frame = with_bytes(&DHCP_DISCOVER, IPV4_SRC, &IP_B.octets());
        assert_eq!(check_frame(1, &frame), Err(DropReason::Ipv4Src));
    }

    #[test]
    fn router_port_may_send_from_its_allowed_sources() {
        let snapshot = snapshot();
        let mut router = snapshot.port(PortId(1)).unwrap().clone();
        router.allowed_sources = vec!["192.168.50.0/24".parse().unwrap()];
        let check_from = |source: [u8; 4]| {
            let frame = with_bytes(&ICMP_ECHO, IPV4_SRC, &source);
            check(&router, &parse(&frame).unwrap(), &frame)
        };
        assert_eq!(check_from([192, 168, 50, 7]), Ok(()));
        assert_eq!(check_from([192, 168, 50, 255]), Ok(()));
        assert_eq!(check_from([192, 168, 51, 7]), Err(DropReason::Ipv4Src));
        assert_eq!(check_from(IP_A.octets()), Ok(()), "its own address still");
        // ARP stays tied to the port's own addresses.
        let arp = with_bytes(&ARP_REQUEST, ARP_SPA, &[192, 168, 50, 7]);
        assert_eq!(
            check(&router, &parse(&arp).unwrap(), &arp),
            Err(DropReason::ArpSenderIp)
        );
        // Other ports do not inherit it.
        let frame = with_bytes(&ICMP_ECHO, IPV4_SRC, &[192, 168, 50, 7]);
        assert_eq!(check_frame(1, &frame), Err(DropReason::Ipv4Src));
    }
}
