//! IPv6 neighbour discovery (RFC 4861) for the switch's gateways, the IPv6 counterpart of
//! [`arp`](super::arp); drops are counted under the `l3` stage.
//!
//! Every ND message a port or tunnel sends (router and neighbour solicitations and
//! advertisements, redirects) is validated first: hop limit 255, not fragmented (RFC
//! 6980), a correct ICMPv6 checksum, code 0, well-formed options (`l3.nd_invalid`). Then, on
//! a dual-stack subnet:
//! - a router solicitation is answered with a router advertisement from the gateway's
//!   link-local address: the prefix (on-link, autonomous when the Subnet allows SLAAC), the
//!   MTU and the switch as default router (when the Subnet's router advertisements are on);
//! - a neighbour solicitation for a gateway address (global or link-local) is answered with
//!   a solicited, router, override advertisement of the gateway MAC (to all nodes for a
//!   duplicate address detection probe, which must not learn anything); one for the
//!   address of a LoadBalancer of the subnet's Network inside its prefix gets the same
//!   answer without the router flag (the switch owns that address too, as ARP answers for
//!   an IPv4 one);
//! - a neighbour advertisement updates the neighbour table; one sent to the gateway (an
//!   answer to the switch's solicitation) is consumed, others are switched;
//! - the sender's link-layer address in a solicitation updates the neighbour table too.
//!
//! Unsolicited router advertisements go to all nodes through each port of an advertising
//! Subnet when the port is attached and every 200 to 600 s after (randomised; RFC 4861
//! 6.2.4), from the first worker's sweep: hosts keep their default router (advertised for
//! 1800 s) without soliciting again.
//!
//! Anything else (solicitations for containers' addresses, their advertisements) is switched
//! like any frame: containers resolve each other. Answers count against the port's ARP rate
//! limit (`l3.nd_rate_limited`).

use std::net::Ipv6Addr;

use super::generated::Origin;
use super::l3::DropReason;
use super::parse::{L3, Parsed};
use super::port_security::icmp_message;
use super::{Context, Output, Verdict, l2};
use crate::port::PortId;
use crate::tables::counters::Event;
use crate::tables::snapshot::{Egress, PortEntry, Snapshot, Subnet6, SubnetEntry};
use crate::wire::ipv6::{
    self as wire6, ALL_NODES, Ethernet, Nd, NeighborAdvertisementRepr, NeighborSolicitationRepr,
    PrefixInfo, RouterAdvertisementRepr,
};

/// Router lifetime advertised (seconds; RFC 4861's default is 3 x MaxRtrAdvInterval = 1800).
pub const ROUTER_LIFETIME_S: u16 = 1800;

/// Valid lifetime of the advertised prefix (30 days, the RFC 4861 default).
pub const PREFIX_VALID_S: u32 = 2_592_000;

/// Preferred lifetime of the advertised prefix (7 days, the RFC 4861 default).
pub const PREFIX_PREFERRED_S: u32 = 604_800;

/// Hop limit the switch advertises for hosts' packets.
pub const ADVERTISED_HOP_LIMIT: u8 = 64;

/// Shortest interval between unsolicited router advertisements to a port (RFC 4861 6.2.1's
/// default MinRtrAdvInterval, 0.33 x MaxRtrAdvInterval).
pub const MIN_RTR_ADV_INTERVAL_MS: u64 = 200_000;

/// Longest interval between unsolicited router advertisements (MaxRtrAdvInterval, 600 s):
/// three of them fit in the advertised router lifetime, so a host that learned its default
/// router from an advertisement keeps it without soliciting again.
pub const MAX_RTR_ADV_INTERVAL_MS: u64 = 600_000;

/// The wait before the next round of unsolicited advertisements: uniform in
/// [`MIN_RTR_ADV_INTERVAL_MS`, `MAX_RTR_ADV_INTERVAL_MS`] (RFC 4861 6.2.4: randomised, so that
/// routers do not synchronise), drawn from `seed`.
pub fn next_advertisement_in_ms(seed: u64) -> u64 {
    // SplitMix64's finaliser: every bit of the seed moves the draw.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    MIN_RTR_ADV_INTERVAL_MS + z % (MAX_RTR_ADV_INTERVAL_MS - MIN_RTR_ADV_INTERVAL_MS + 1)
}

/// An unsolicited router advertisement to all nodes, through `port`, when its Subnet is dual
/// stack and advertises: sent to a port as soon as it is attached (a host whose solicitations
/// went out before the port was up, or that sends none, still learns the prefix) and every
/// [`next_advertisement_in_ms`] after. True when sent or nothing was due; false when the
/// worker's buffer is full.
pub fn advertise_unsolicited(snapshot: &Snapshot, port: PortId, out: &mut Output) -> bool {
    // To containers only: not over the overlay (each node's switch advertises to its own
    // ports), not onto the uplink's LAN.
    let Some(entry) = snapshot
        .port(port)
        .filter(|entry| matches!(entry.egress, Egress::Queue(_) | Egress::Tagged { .. }))
    else {
        return true;
    };
    let Some(subnet) = snapshot.subnet(entry.subnet) else {
        return true;
    };
    let Some(v6) = subnet.v6.as_ref().filter(|v6| v6.router_advertisements) else {
        return true;
    };
    advertise_router(
        subnet,
        v6,
        ALL_NODES,
        wire6::multicast_mac(ALL_NODES),
        entry,
        out,
    )
}

/// Handles an ND message from `ingress` in `subnet` (see the module docs). `None`: not ND,
/// or ND to switch like any frame.
pub fn handle(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &[u8],
    out: &mut Output,
) -> Option<Verdict> {
    let L3::Ipv6 {
        src,
        dst,
        hop_limit,
        icmp_type,
        fragment,
        ..
    } = parsed.l3
    else {
        return None;
    };
    if !(133..=137).contains(&icmp_type) {
        return None;
    }
    let invalid = || Some(Verdict::drop(DropReason::NdInvalid));
    let Some(icmp) = icmp_message(frame) else {
        return invalid();
    };
    if hop_limit != 255 || fragment || !wire6::icmpv6_checksum_ok(src, dst, icmp) {
        return invalid();
    }
    let nd = match wire6::parse_nd(icmp, src) {
        Ok(Some(nd)) => nd,
        Ok(None) => return None,
        Err(_) => return invalid(),
    };
    let v6 = subnet.v6.as_ref()?;
    match nd {
        Nd::RouterSolicitation { source_mac } => {
            if !v6.router_advertisements {
                return None;
            }
            if !allowed(ctx, ingress, out) {
                return Some(Verdict::drop(DropReason::NdRateLimited));
            }
            glean(ctx, subnet, v6, src, source_mac, false, out);
            trace_note!(ctx, Arp, "router solicitation: router advertisement sent");
            let (dst_ip, dst_mac) = if src.is_unspecified() {
                (ALL_NODES, wire6::multicast_mac(ALL_NODES))
            } else {
                (src, source_mac.unwrap_or(parsed.src_mac))
            };
            let sent = advertise_router(subnet, v6, dst_ip, dst_mac, ingress, out);
            Some(if sent {
                Verdict::Consumed
            } else {
                Verdict::drop(DropReason::NoBuffer)
            })
        }
        Nd::NeighborSolicitation { target, source_mac } => {
            let gateway = v6.is_gateway(target);
            // A LoadBalancer's address inside the prefix is the switch's too.
            let balancer = !gateway
                && v6.cidr.contains(&target)
                && ctx
                    .snapshot
                    .balancer(subnet.network_id, target.into())
                    .is_some();
            if !(gateway || balancer) {
                glean(ctx, subnet, v6, src, source_mac, false, out);
                return None;
            }
            if !allowed(ctx, ingress, out) {
                return Some(Verdict::drop(DropReason::NdRateLimited));
            }
            glean(ctx, subnet, v6, src, source_mac, true, out);
            trace_note!(
                ctx,
                Arp,
                "neighbour solicitation for {} {target}: advertised",
                if gateway { "gateway" } else { "LoadBalancer" }
            );
            // A duplicate address detection probe (from ::) is answered to all nodes,
            // unsolicited (RFC 4861 7.2.4).
            let dad = src.is_unspecified();
            let (dst_ip, dst_mac) = if dad {
                (ALL_NODES, wire6::multicast_mac(ALL_NODES))
            } else {
                (src, source_mac.unwrap_or(parsed.src_mac))
            };
            let answer = NeighborAdvertisementRepr {
                eth: Ethernet {
                    src: subnet.gateway_mac,
                    dst: dst_mac,
                },
                src: target,
                dst: dst_ip,
                target,
                router: gateway,
                solicited: !dad,
                override_: true,
                target_mac: subnet.gateway_mac,
            };
            let verdict = Verdict::Forward(ingress.id);
            let sent = out
                .generated
                .push_built(answer.len(), verdict, Origin::Switch, |buf| {
                    answer.emit(buf)
                });
            if !sent {
                return Some(Verdict::drop(DropReason::NoBuffer));
            }
            out.events.add(Event::NeighborAdvertised);
            Some(Verdict::Consumed)
        }
        Nd::NeighborAdvertisement {
            target, target_mac, ..
        } => {
            let for_us = v6.is_gateway(dst) || parsed.dst_mac == subnet.gateway_mac;
            let mac = target_mac.unwrap_or(parsed.src_mac);
            glean(ctx, subnet, v6, target, Some(mac), for_us, out);
            for_us.then_some(Verdict::Consumed)
        }
        Nd::RouterAdvertisement | Nd::Redirect => None,
    }
}

/// The port's ND-to-the-switch budget (shared with ARP); a dry run is never limited.
fn allowed(ctx: &Context<'_>, ingress: &PortEntry, out: &mut Output) -> bool {
    ctx.is_dry_run() || out.arp_limiter.allow(ingress.id, ctx.now_ms)
}

/// Records `ip` at `mac` in the neighbour table when `ip` is on the subnet (its prefix or
/// link-local). Creates an entry only when `create` (ND that involved the switch);
/// otherwise refreshes one that exists.
fn glean(
    ctx: &Context<'_>,
    subnet: &SubnetEntry,
    v6: &Subnet6,
    ip: Ipv6Addr,
    mac: Option<[u8; 6]>,
    create: bool,
    out: &mut Output,
) {
    let Some(mac) = mac else {
        return;
    };
    if ctx.is_dry_run()
        || ip.is_unspecified()
        || !(v6.cidr.contains(&ip) || wire6::is_link_local(ip))
        || v6.is_gateway(ip)
    {
        return;
    }
    let confirmation = ctx
        .neighbors
        .confirm(subnet.id, ip, mac, ctx.now_ms, create);
    out.note_confirmation(confirmation);
}

/// Sends `subnet`'s router advertisement to `dst_ip` at `dst_mac` through `port`. False when
/// the worker's buffer is full.
pub fn advertise_router(
    subnet: &SubnetEntry,
    v6: &Subnet6,
    dst_ip: Ipv6Addr,
    dst_mac: [u8; 6],
    port: &PortEntry,
    out: &mut Output,
) -> bool {
    let prefixes = [PrefixInfo {
        prefix: v6.cidr.network(),
        len: v6.cidr.prefix_len(),
        on_link: true,
        autonomous: v6.slaac,
        valid_s: PREFIX_VALID_S,
        preferred_s: PREFIX_PREFERRED_S,
    }];
    let advertisement = RouterAdvertisementRepr {
        eth: Ethernet {
            src: subnet.gateway_mac,
            dst: dst_mac,
        },
        src: v6.link_local,
        dst: dst_ip,
        cur_hop_limit: ADVERTISED_HOP_LIMIT,
        managed: false,
        other: false,
        router_lifetime_s: ROUTER_LIFETIME_S,
        reachable_ms: 0,
        retrans_ms: 0,
        source_mac: Some(subnet.gateway_mac),
        mtu: Some(u32::from(subnet.mtu.min(port.mtu))),
        prefixes: &prefixes,
        rdnss: &[],
        rdnss_lifetime_s: 0,
    };
    let sent = out.generated.push_built(
        advertisement.len(),
        Verdict::Forward(port.id),
        Origin::Switch,
        |buf| advertisement.emit(buf),
    );
    if sent {
        out.events.add(Event::RouterAdvertised);
    }
    sent
}

/// Sends a neighbour solicitation for `target` into `subnet` from its gateway: to the
/// target's solicited-node group (flooded), or unicast to `unicast` (re-confirming a stale
/// neighbour). Returns false when nothing was sent.
pub fn solicit(
    ctx: &Context<'_>,
    out: &mut Output,
    subnet: &SubnetEntry,
    target: Ipv6Addr,
    unicast: Option<[u8; 6]>,
) -> bool {
    let Some(v6) = &subnet.v6 else {
        return false;
    };
    // A shared gateway (`spec.sharedGateway`) asks from its link-local address (derived from
    // this node's gateway MAC, so no other node's), never claiming the shared global one.
    let src = if wire6::is_link_local(target) || subnet.shared_gateway {
        v6.link_local
    } else {
        v6.gateway
    };
    let verdict = match unicast {
        Some(mac) => l2::destination(ctx, subnet, mac, None),
        None => Verdict::FloodSubnet {
            subnet: subnet.id,
            except: None,
        },
    };
    if matches!(verdict, Verdict::Drop(_)) {
        return false;
    }
    let request = NeighborSolicitationRepr {
        src_mac: subnet.gateway_mac,
        src,
        target,
        unicast,
    };
    let sent = out
        .generated
        .push_built(request.len(), verdict, Origin::Switch, |buf| {
            request.emit(buf)
        });
    if sent {
        out.events.add(Event::NeighborSolicitationsSent);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::DropCause;
    use crate::pipeline::fixtures::*;
    use crate::port::PortId;
    use crate::wire::VNET_HDR_LEN;

    fn with_vnet(ethernet: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(ethernet);
        frame
    }

    fn solicitation(target: Ipv6Addr, src: Ipv6Addr) -> Vec<u8> {
        let repr = NeighborSolicitationRepr {
            src_mac: MAC_A,
            src,
            target,
            unicast: None,
        };
        let mut buf = vec![0u8; repr.len()];
        assert!(repr.emit(&mut buf) > 0);
        with_vnet(&buf)
    }

    #[test]
    fn solicitation_for_the_gateway_is_advertised() {
        let bench = Bench::with(routed_snapshot());
        for target in [GW6_BLUE, wire6::link_local_from_mac(GW_BLUE_MAC)] {
            let frame = solicitation(target, IP6_A);
            assert_eq!(bench.send(1, &frame, 0).verdict, Verdict::Consumed);
            let (verdict, _, answer) = bench.generated().pop().expect("NA sent");
            assert_eq!(verdict, Verdict::Forward(PortId(1)));
            let packet = &answer[VNET_HDR_LEN + 14..];
            let info = wire6::parse(packet).unwrap();
            assert_eq!((info.src, info.dst, info.hop_limit), (target, IP6_A, 255));
            match wire6::parse_nd(&packet[40..], info.src) {
                Ok(Some(Nd::NeighborAdvertisement {
                    target: t,
                    router: true,
                    solicited: true,
                    target_mac: Some(mac),
                    ..
                })) => assert_eq!((t, mac), (target, GW_BLUE_MAC)),
                other => panic!("not a router NA: {other:?}"),
            }
        }
        // The asker was learned.
        assert_eq!(
            bench
                .neighbors
                .lookup(crate::tables::snapshot::SubnetId(1), IP6_A),
            Some(MAC_A)
        );
    }

    #[test]
    fn solicitation_for_a_container_is_switched_and_bad_nd_dropped() {
        let bench = Bench::with(routed_snapshot());
        let frame = solicitation(IP6_B, IP6_A);
        assert_eq!(bench.send(1, &frame, 0).verdict, Verdict::Flood);
        // Hop limit below 255: invalid.
        let mut low = frame.clone();
        low[VNET_HDR_LEN + 14 + 7] = 64;
        assert_eq!(
            bench.send(1, &low, 0).verdict,
            Verdict::Drop(DropCause::L3(DropReason::NdInvalid))
        );
        // A broken checksum: invalid.
        let mut bad = frame;
        bad[VNET_HDR_LEN + 14 + 40 + 2] ^= 0xff;
        assert_eq!(
            bench.send(1, &bad, 0).verdict,
            Verdict::Drop(DropCause::L3(DropReason::NdInvalid))
        );
    }

    #[test]
    fn router_solicitation_gets_the_prefix_and_mtu() {
        let bench = Bench::with(routed_snapshot());
        let src = wire6::link_local_from_mac(MAC_A);
        let mut icmp = vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        icmp.extend_from_slice(&MAC_A);
        let pseudo = crate::wire::checksum::pseudo_header_ipv6(
            src,
            wire6::ALL_ROUTERS,
            58,
            u32::try_from(icmp.len()).unwrap(),
        );
        let checksum =
            !crate::wire::checksum::combine(&[pseudo, crate::wire::checksum::sum(&icmp)]);
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&wire6::multicast_mac(wire6::ALL_ROUTERS));
        frame.extend_from_slice(&MAC_A);
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, 58, 255]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&wire6::ALL_ROUTERS.octets());
        frame.extend_from_slice(&icmp);
        assert_eq!(bench.send(1, &frame, 0).verdict, Verdict::Consumed);
        let (verdict, _, advertisement) = bench.generated().pop().expect("RA sent");
        assert_eq!(verdict, Verdict::Forward(PortId(1)));
        let packet = &advertisement[VNET_HDR_LEN + 14..];
        let info = wire6::parse(packet).unwrap();
        assert_eq!(info.src, wire6::link_local_from_mac(GW_BLUE_MAC));
        assert_eq!((info.dst, packet[40]), (src, 134));
        // The prefix information option carries fd00::/64.
        let prefix: [u8; 16] = "fd00::".parse::<Ipv6Addr>().unwrap().octets();
        assert!(packet.windows(16).any(|w| w == prefix));
    }

    #[test]
    fn unsolicited_advertisements_go_to_all_nodes_of_advertising_subnets() {
        let snapshot = routed_snapshot();
        let mut local = crate::pipeline::Local::new(0);
        assert!(advertise_unsolicited(&snapshot, PortId(1), &mut local.out));
        assert_eq!(local.out.generated.len(), 1);
        let meta = local.out.generated.meta(0).expect("one RA");
        assert_eq!(meta.verdict, Verdict::Forward(PortId(1)));
        let frame = local.out.generated.frame(0).expect("one RA");
        assert_eq!(
            frame[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            wire6::multicast_mac(ALL_NODES)
        );
        let packet = &frame[VNET_HDR_LEN + 14..];
        let info = wire6::parse(packet).unwrap();
        assert_eq!(
            (info.dst, info.hop_limit, packet[40]),
            (ALL_NODES, 255, 134)
        );
        assert!(
            wire6::icmpv6_checksum_ok(info.src, info.dst, &packet[40..info.packet_len]),
            "valid checksum"
        );
        // A port that no longer exists, or a Subnet without IPv6: nothing, and nothing owed.
        local.out.generated.clear();
        assert!(advertise_unsolicited(&snapshot, PortId(77), &mut local.out));
        let mut subnets = snapshot.subnets().to_vec();
        for subnet in &mut subnets {
            subnet.v6 = None;
        }
        let v4_only = Snapshot::new(snapshot.ports().to_vec(), subnets);
        assert!(advertise_unsolicited(&v4_only, PortId(1), &mut local.out));
        assert!(local.out.generated.is_empty());
    }

    #[test]
    fn advertisement_intervals_are_spread_over_the_rfc_range() {
        let draws: Vec<u64> = (0..2000).map(next_advertisement_in_ms).collect();
        assert!(
            draws
                .iter()
                .all(|ms| (MIN_RTR_ADV_INTERVAL_MS..=MAX_RTR_ADV_INTERVAL_MS).contains(ms))
        );
        let low = draws.iter().filter(|ms| **ms < 300_000).count();
        let high = draws.iter().filter(|ms| **ms > 500_000).count();
        // Uniform: a quarter each way, give or take.
        assert!((350..650).contains(&low), "{low} of 2000 below 300 s");
        assert!((350..650).contains(&high), "{high} of 2000 above 500 s");
        // Three rounds always fit in the advertised router lifetime.
        assert!(3 * MAX_RTR_ADV_INTERVAL_MS <= u64::from(ROUTER_LIFETIME_S) * 1000);
    }
}
