//! Stage `uplink`: frames received on the node's uplink, where the switch owns a few
//! addresses (its NAT, port-forward and virtual-IP addresses) next to the host's own.
//!
//! The switch takes only what is its own; everything else is the host's (the AF_PACKET
//! socket also filters in the kernel, but the datapath does not rely on it):
//! 1. [`parse`](super::parse) checks the frame as for any port;
//! 2. the destination MAC must be the switch's uplink MAC, or broadcast for ARP
//!    (`uplink.not_ours`): the host's frames, broadcast IPv4 and multicast are not ours;
//! 3. ARP ([`arp::on_uplink`]): requests for an owned address are answered from the uplink
//!    MAC; ARP about owned addresses teaches the sender (the gateway) under the uplink's
//!    segment; ARP about other addresses is the host's (`uplink.not_owned`);
//! 4. IPv4 must be addressed to an owned address (`uplink.not_owned`), with a valid header
//!    checksum (`l3.bad_checksum`), then goes to [`nat::inbound`]: replies of masqueraded
//!    and virtual-IP flows are translated back, new flows to a PortForward or VirtualIP are
//!    DNATed, echo requests to the other owned addresses are answered from them, and the
//!    rest is dropped (`nat.unsolicited`: no ICMP, as a masquerading firewall does);
//! 5. anything else (IPv6, other ethertypes) is dropped (`uplink.unsupported`).
//!
//! It also says how the switch reaches the outside through the uplink: the next hop of a
//! destination ([`next_hop`]: the destination itself when it is on the link of one of the
//! owned addresses, else the uplink's gateway) and the address it speaks from on a link
//! ([`source_for`]).

use std::net::Ipv4Addr;

use smoltcp::wire::Ipv4Packet;

use super::l3::{self, ip_bounds};
use super::parse::{self, L3};
use super::{Context, Local, Verdict, arp, nat};
use crate::tables::counters::keyed_enum;
use crate::tables::snapshot::UplinkEntry;

keyed_enum! {
    /// Why `uplink` dropped a frame received on the uplink.
    pub enum DropReason {
        NotOurs = "uplink.not_ours":
            "frame on the uplink neither to the switch's uplink MAC nor broadcast ARP (the host's or another machine's)",
        NotOwned = "uplink.not_owned":
            "ARP or IPv4 on the uplink about an address the switch does not own there (the host answers for its own)",
        Unsupported = "uplink.unsupported":
            "frame on the uplink that is neither IPv4 nor ARP (IPv6 is not served on the uplink)",
    }
}

/// The broadcast MAC.
const BROADCAST: [u8; 6] = [0xff; 6];

/// True when `address` is one of the addresses the switch owns on the uplink.
#[inline]
pub fn owns(uplink: &UplinkEntry, address: Ipv4Addr) -> bool {
    uplink.addresses.iter().any(|owned| owned.addr() == address)
}

/// True when `address` is a host on the link of one of the uplink's addresses (inside its
/// prefix, neither the prefix's network nor its broadcast address).
fn on_link(uplink: &UplinkEntry, address: Ipv4Addr) -> bool {
    uplink.addresses.iter().any(|owned| {
        let prefix = owned.trunc();
        prefix.prefix_len() < 32
            && prefix.contains(&address)
            && (prefix.prefix_len() >= 31
                || (address != prefix.network() && address != prefix.broadcast()))
    })
}

/// The neighbour a packet to `destination` is sent to on the uplink: the destination itself
/// when it is on the link, else the uplink's gateway.
pub fn next_hop(uplink: &UplinkEntry, destination: Ipv4Addr) -> Ipv4Addr {
    if on_link(uplink, destination) {
        destination
    } else {
        uplink.gateway
    }
}

/// The switch's address toward `target` on the uplink (the source of its ARP requests): the
/// owned address whose prefix holds `target`, else the first one (unspecified without any).
pub fn source_for(uplink: &UplinkEntry, target: Ipv4Addr) -> Ipv4Addr {
    uplink
        .addresses
        .iter()
        .find(|owned| owned.trunc().contains(&target))
        .or_else(|| uplink.addresses.first())
        .map_or(Ipv4Addr::UNSPECIFIED, |owned| owned.addr())
}

/// Handles one frame received on `uplink` (see the module doc); rewrites it in place when it
/// is forwarded into a Network.
pub fn receive(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let parsed = match parse::parse(frame) {
        Ok(parsed) => parsed,
        Err(reason) => return Verdict::drop(reason),
    };
    let to_us = parsed.dst_mac == uplink.mac;
    match parsed.l3 {
        L3::Arp { .. } if to_us || parsed.dst_mac == BROADCAST => {
            arp::on_uplink(ctx, uplink, &parsed, &mut local.out)
        }
        L3::Ipv4 { dst, .. } if to_us => {
            if !owns(uplink, dst) {
                return Verdict::drop(DropReason::NotOwned);
            }
            let valid = ip_bounds(frame)
                .and_then(|(start, end)| Ipv4Packet::new_checked(&frame[start..end]).ok())
                .is_some_and(|ip| ip.verify_checksum());
            if !valid {
                return Verdict::drop(l3::DropReason::BadChecksum);
            }
            if let L3::Ipv4 { dst, .. } = parsed.l3 {
                if let Some(balancer) = ctx.snapshot.public_balancer(dst) {
                    return super::lb::forward_external(
                        ctx, uplink, &parsed, frame, local, balancer,
                    );
                }
            }
            nat::inbound(ctx, uplink, &parsed, frame, local)
        }
        _ if !to_us => Verdict::drop(DropReason::NotOurs),
        _ => Verdict::drop(DropReason::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::IpProtocol;

    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::generated::Origin;
    use crate::pipeline::{DropCause, Verdict};
    use crate::wire::VNET_HDR_LEN;

    /// An ARP `operation` (1 request, 2 reply) from the uplink's gateway asking for `target`.
    fn arp_from_gateway(dst_mac: [u8; 6], operation: u8, target: Ipv4Addr) -> Vec<u8> {
        let mut frame = ARP_REQUEST.to_vec();
        frame[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst_mac);
        frame[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&OUTSIDE_GW_MAC);
        let arp = &mut frame[VNET_HDR_LEN + 14..];
        arp[7] = operation;
        arp[8..14].copy_from_slice(&OUTSIDE_GW_MAC);
        arp[14..18].copy_from_slice(&OUTSIDE_GW.octets());
        arp[24..28].copy_from_slice(&target.octets());
        frame
    }

    fn dropped(reason: DropReason) -> Verdict {
        Verdict::Drop(DropCause::Uplink(reason))
    }

    #[test]
    fn answers_arp_for_its_own_addresses_and_learns_the_asker() {
        let bench = Bench::with(uplink_snapshot());
        let request = arp_from_gateway([0xff; 6], 1, VIP);
        assert_eq!(bench.run_uplink(&request, 7).0.verdict, Verdict::Consumed);
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let (verdict, origin, reply) = &generated[0];
        assert_eq!(
            (*verdict, *origin),
            (Verdict::Forward(UPLINK), Origin::Switch)
        );
        let mut expected = vec![0u8; VNET_HDR_LEN];
        expected.extend_from_slice(&OUTSIDE_GW_MAC);
        expected.extend_from_slice(&UPLINK_MAC);
        expected.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        expected.extend_from_slice(&UPLINK_MAC);
        expected.extend_from_slice(&VIP.octets());
        expected.extend_from_slice(&OUTSIDE_GW_MAC);
        expected.extend_from_slice(&OUTSIDE_GW.octets());
        assert_eq!(reply, &expected);
        assert_eq!(
            bench.neighbors.lookup(UPLINK_SEGMENT, OUTSIDE_GW),
            Some(OUTSIDE_GW_MAC)
        );
    }

    #[test]
    fn never_answers_for_the_hosts_addresses() {
        let bench = Bench::with(uplink_snapshot());
        let host = Ipv4Addr::new(203, 0, 113, 5);
        let request = arp_from_gateway([0xff; 6], 1, host);
        assert_eq!(
            bench.run_uplink(&request, 0).0.verdict,
            dropped(DropReason::NotOwned)
        );
        assert!(bench.generated().is_empty());
        assert!(
            bench.neighbors.is_empty(),
            "ARP not about us creates no neighbour"
        );
        // An IPv4 packet to our MAC but the host's address is not taken either.
        let frame = ipv4_frame(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            REMOTE,
            host,
            64,
            IpProtocol::Udp,
            false,
            &[0; 8],
        );
        assert_eq!(
            bench.run_uplink(&frame, 0).0.verdict,
            dropped(DropReason::NotOwned)
        );
    }

    #[test]
    fn frames_not_to_the_uplink_mac_are_dropped() {
        let bench = Bench::with(uplink_snapshot());
        let host_mac = [0x02, 0, 0, 0, 0x55, 0x55];
        for dst_mac in [host_mac, [0xff; 6], [0x01, 0, 0x5e, 0, 0, 1]] {
            let frame = ipv4_frame(
                OUTSIDE_GW_MAC,
                dst_mac,
                REMOTE,
                NAT_IP,
                64,
                IpProtocol::Udp,
                false,
                &[0; 8],
            );
            assert_eq!(
                bench.run_uplink(&frame, 0).0.verdict,
                dropped(DropReason::NotOurs),
                "{dst_mac:02x?}"
            );
        }
        // Even ARP about our address, sent to someone else's MAC.
        let request = arp_from_gateway(host_mac, 1, NAT_IP);
        assert_eq!(
            bench.run_uplink(&request, 0).0.verdict,
            dropped(DropReason::NotOurs)
        );
        assert!(bench.generated().is_empty());
        // IPv6 to us is not served.
        let ipv6 = with_src_mac(&with_dst_mac(&IPV6_ECHO, UPLINK_MAC), OUTSIDE_GW_MAC);
        assert_eq!(
            bench.run_uplink(&ipv6, 0).0.verdict,
            dropped(DropReason::Unsupported)
        );
        // A bad header checksum.
        let mut bad = ipv4_frame(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            REMOTE,
            NAT_IP,
            64,
            IpProtocol::Udp,
            false,
            &[0; 8],
        );
        bad[VNET_HDR_LEN + 14 + 10] ^= 1;
        assert_eq!(
            bench.run_uplink(&bad, 0).0.verdict,
            Verdict::Drop(DropCause::L3(l3::DropReason::BadChecksum))
        );
    }

    #[test]
    fn a_reply_to_our_request_resolves_and_nobody_claims_our_addresses() {
        let bench = Bench::with(uplink_snapshot());
        let reply = arp_from_gateway(UPLINK_MAC, 2, NAT_IP);
        assert_eq!(bench.run_uplink(&reply, 0).0.verdict, Verdict::Consumed);
        assert!(bench.generated().is_empty(), "replies are not answered");
        assert_eq!(
            bench.neighbors.lookup(UPLINK_SEGMENT, OUTSIDE_GW),
            Some(OUTSIDE_GW_MAC)
        );
        // A gratuitous ARP claiming one of our addresses teaches nothing.
        let mut claim = arp_from_gateway([0xff; 6], 1, NAT_IP);
        claim[VNET_HDR_LEN + 14 + 14..VNET_HDR_LEN + 14 + 18].copy_from_slice(&NAT_IP.octets());
        bench.run_uplink(&claim, 0);
        assert_eq!(bench.neighbors.lookup(UPLINK_SEGMENT, NAT_IP), None);
    }

    #[test]
    fn next_hops_and_sources() {
        let uplink = uplink_entry();
        assert_eq!(next_hop(&uplink, REMOTE), OUTSIDE_GW);
        let neighbour = Ipv4Addr::new(203, 0, 113, 2);
        assert_eq!(next_hop(&uplink, neighbour), neighbour, "on the link");
        assert_eq!(
            next_hop(&uplink, Ipv4Addr::new(203, 0, 113, 255)),
            OUTSIDE_GW,
            "not the link's broadcast"
        );
        assert_eq!(source_for(&uplink, OUTSIDE_GW), NAT_IP);
        assert_eq!(source_for(&uplink, REMOTE), NAT_IP, "the first address");
        let mut single = uplink_entry();
        single.addresses = vec!["192.0.2.9/32".parse().unwrap()];
        assert_eq!(next_hop(&single, Ipv4Addr::new(192, 0, 2, 10)), OUTSIDE_GW);
        assert!(owns(&single, Ipv4Addr::new(192, 0, 2, 9)));
        assert!(!owns(&single, NAT_IP));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Whatever arrives on the uplink — mutated headers, offload fields, lengths — and
        /// whatever state conntrack is in, nothing panics.
        #[test]
        fn never_panics_on_mutated_frames_from_the_uplink(
            flips in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..8),
            vnet in proptest::collection::vec(proptest::prelude::any::<u8>(), 10),
            protocol in proptest::sample::select(vec![1u8, 6, 17, 47]),
            to in proptest::sample::select(vec![NAT_IP, VIP, SPARE_IP]),
            extra in 0usize..1600,
        ) {
            let bench = Bench::with(uplink_snapshot());
            // A flow to be replied to.
            let query = ipv4_frame(
                MAC_A, GW_BLUE_MAC, IP_A, REMOTE, 64, IpProtocol::Udp, false,
                &[0x9c, 0x40, 0, 53, 0, 8, 0, 0],
            );
            bench.send(1, &query, 0);
            let mut frame = ipv4_frame(
                OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, to, 64, IpProtocol::from(protocol), false,
                &vec![0x33; extra + 8],
            );
            frame[..VNET_HDR_LEN].copy_from_slice(&vnet);
            for (at, value) in flips {
                if let Some(byte) = frame.get_mut(VNET_HDR_LEN + 14 + at) {
                    *byte = value;
                }
            }
            let _ = bench.run_uplink(&frame, 1);
            for (_, _, bytes) in bench.generated() {
                proptest::prop_assert!(bytes.len() >= VNET_HDR_LEN + 14);
            }
        }
    }
}
