//! Stage `uplink`: frames received on the node's uplink, where the switch owns a few
//! addresses (its NAT, port-forward and virtual-IP addresses) next to the host's own, and
//! routes the Networks routed through it (`Network.spec.uplink.mode: Routed`).
//!
//! The switch takes only what is its own; everything else is the host's (the AF_PACKET
//! socket also filters in the kernel, but the datapath does not rely on it):
//! 1. [`parse`](super::parse) checks the frame as for any port;
//! 2. the destination MAC must be the switch's uplink MAC, or broadcast for ARP
//!    (`uplink.not_ours`): the host's frames, broadcast IPv4 and multicast are not ours;
//! 3. ARP ([`arp::on_uplink`]): requests for an owned address are answered from the uplink
//!    MAC; ARP about owned addresses teaches the sender (the gateway) under the uplink's
//!    segment; ARP about other addresses is the host's (`uplink.not_owned`);
//! 4. IPv4 must be addressed to an owned address or into a routed Network's Subnets
//!    (`uplink.not_owned`), with a valid header checksum (`l3.bad_checksum`);
//! 5. to an owned address, it goes to [`nat::inbound`]: replies of masqueraded and
//!    virtual-IP flows are translated back, new flows to a PortForward or VirtualIP are
//!    DNATed, echo requests to the other owned addresses are answered from them (unless the
//!    inbound filter denies ICMP: `uplink.inbound_denied`), and the rest is dropped
//!    (`nat.unsolicited`: no ICMP, as a masquerading firewall does);
//! 6. into a routed Network, it goes to [`routed_in`]: routed untranslated into the Network
//!    (a source outside the Network's `destinations`, inside a routed Subnet or martian is
//!    refused: `uplink.routed_source`);
//! 7. anything else (IPv6, other ethertypes) is dropped (`uplink.unsupported`).
//!
//! The other way, [`outbound`] takes what a Network sends to a destination its routes do not
//! cover: a routed Network's traffic to its `destinations` leaves untranslated through
//! [`routed_out`]; the rest (and traffic to the switch's own uplink addresses, and the
//! traffic of interfaces with a VirtualIP, which keep their 1:1 NAT) goes to
//! [`nat::outbound`].
//!
//! Routed traffic is not tracked unless the Uplink's inbound filter is on
//! (`Uplink.spec.inbound.policy: Drop`). Then every routed connection is tracked in the
//! `nat` crate's conntrack without translation ([`NatPlan::none`]): created in the
//! Network's zone with replies in [`Zone::EXTERNAL`] when it starts inside, the other way
//! round when it starts outside. A packet from outside that belongs to no connection starts
//! one only when an `allow` entry lists its protocol and destination port (ICMP: echo
//! requests), else it is dropped (`uplink.inbound_denied`, no ICMP). Replies of connections
//! started inside, NAT replies and ARP are never filtered; PortForwards, VirtualIPs and
//! Public LoadBalancers are explicit publications and are not filtered either (as Calico's
//! host endpoints leave forwarded traffic to their own policy). Packets conntrack cannot
//! follow (fragments, protocols other than TCP, UDP and ICMP) are denied from outside when
//! filtering, and leave untracked from inside.
//!
//! NetworkPolicies: [`routed_out`] (a routed packet leaving a Network) and [`routed_in`] (one
//! entering it) judge every packet no connection knows with
//! [`policy::judge_routed`](super::policy::judge_routed): the outside end is matched by
//! `ipBlock`s only, and a connection with an isolated interface is tracked (as the filter
//! tracks) so its replies pass.
//!
//! It also says how the switch reaches the outside through the uplink: the next hop of a
//! destination ([`next_hop`]: the destination itself when it is on the link of one of the
//! owned addresses, else the uplink's gateway) and the address it speaks from on a link
//! ([`source_for`]).

use std::net::Ipv4Addr;

use ::nat::{Attachments, EchoKind, NatPlan, PacketInfo, PacketKind, Protocol, Zone};
use smoltcp::wire::{IpProtocol, Ipv4Packet};

use super::icmp::{self, ErrorPath};
use super::l3::{self, Hop, Link, ip_bounds};
use super::parse::{self, L3, Parsed};
use super::{Context, DropCause, Local, Output, Verdict, arp, nat};
use crate::tables::counters::keyed_enum;
use crate::tables::snapshot::{
    InboundFilter, NetworkId, PortEntry, RoutedNetwork, SubnetEntry, UplinkEntry,
};
use crate::wire::icmp_error::Kind;

keyed_enum! {
    /// Why `uplink` dropped a frame received on the uplink.
    pub enum DropReason {
        NotOurs = "uplink.not_ours":
            "frame on the uplink neither to the switch's uplink MAC nor broadcast ARP (the host's or another machine's)",
        NotOwned = "uplink.not_owned":
            "ARP or IPv4 on the uplink about an address the switch does not own there (the host answers for its own)",
        Unsupported = "uplink.unsupported":
            "frame on the uplink that is neither IPv4, ARP nor IPv6 (IPv6 only when the Uplink has spec.ipv6)",
        InboundDenied = "uplink.inbound_denied":
            "unsolicited from outside (no connection started inside) and not listed by the Uplink's spec.inbound.allow (policy Drop); no ICMP is sent",
        VlanUnknown = "uplink.vlan_unknown":
            "tagged frame on the uplink for a VLAN no Subnet is bound to",
        VlanQinq = "uplink.vlan_qinq":
            "frame on the uplink with an 802.1ad (QinQ) outer tag or two stacked tags: refused",
        InactiveMember = "uplink.inactive_member":
            "frame received on a bond member that does not carry traffic (a backup in active-backup, a link that is down or not aggregated by LACP)",
        RoutedSource = "uplink.routed_source":
            "from outside into a routed Network, from a source outside its spec.uplink.destinations (its replies would not leave untranslated), inside a routed Network's Subnets (spoofed) or martian",
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

/// The neighbour a packet of Network `network` (when it is one, routed through the uplink)
/// to `destination` is sent to: the destination when it is on the link, else the router of
/// the Network's longest-prefix Route through the uplink, else the uplink's gateway.
#[inline]
pub fn next_hop_for(
    uplink: &UplinkEntry,
    network: Option<NetworkId>,
    destination: Ipv4Addr,
) -> Ipv4Addr {
    if on_link(uplink, destination) {
        return destination;
    }
    network
        .and_then(|network| uplink.routing.router(network, destination))
        .unwrap_or(uplink.gateway)
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
    trace_note!(ctx, Parse, "{}", super::trace::describe_frame(frame));
    let parsed = match parse::parse(frame) {
        Ok(parsed) => parsed,
        Err(reason) => return Verdict::drop(reason),
    };
    let to_us = parsed.dst_mac == uplink.mac;
    trace_note!(
        ctx,
        Uplink,
        "received on Uplink {} (MAC {}, addresses {:?}): {}",
        uplink.name,
        super::trace::Mac(uplink.mac),
        uplink.addresses,
        if to_us {
            "to the switch's MAC"
        } else if parsed.dst_mac == BROADCAST {
            "broadcast"
        } else {
            "not to the switch's MAC"
        }
    );
    match parsed.l3 {
        L3::Arp { .. } if to_us || parsed.dst_mac == BROADCAST => {
            arp::on_uplink(ctx, uplink, &parsed, &mut local.out)
        }
        L3::Ipv4 { dst, .. } if to_us => {
            let routed = if owns(uplink, dst) {
                None
            } else {
                match uplink.routing.network_of(dst) {
                    Some(network) => Some(network),
                    None => return Verdict::drop(DropReason::NotOwned),
                }
            };
            let valid = ip_bounds(frame)
                .and_then(|(start, end)| Ipv4Packet::new_checked(&frame[start..end]).ok())
                .is_some_and(|ip| {
                    crate::cost::checksummed(usize::from(ip.header_len()));
                    ip.verify_checksum()
                });
            if !valid {
                return Verdict::drop(l3::DropReason::BadChecksum);
            }
            if let Some(network) = routed {
                return routed_in(ctx, uplink, network, &parsed, frame, local);
            }
            if let L3::Ipv4 { dst, .. } = parsed.l3 {
                if let Some(balancer) = ctx.snapshot.public_balancer(dst.into()) {
                    return super::lb::forward_external(
                        ctx, uplink, &parsed, frame, local, balancer,
                    );
                }
            }
            nat::inbound(ctx, uplink, &parsed, frame, local)
        }
        L3::Ipv6 { .. } if to_us || is_solicited_node(parsed.dst_mac) => match &uplink.ipv6 {
            Some(v6) => super::nat6::on_uplink(ctx, uplink, v6, &parsed, frame, local),
            None => Verdict::drop(DropReason::Unsupported),
        },
        _ if !to_us => Verdict::drop(DropReason::NotOurs),
        _ => Verdict::drop(DropReason::Unsupported),
    }
}

/// True for a solicited-node multicast MAC (33:33:ff:xx:xx:xx), where neighbour
/// solicitations for the switch's IPv6 addresses arrive.
#[inline]
fn is_solicited_node(mac: [u8; 6]) -> bool {
    mac[..3] == [0x33, 0x33, 0xff]
}

/// True when the inbound filter lets an echo request to one of the switch's own addresses
/// be answered (always, without a filter).
#[inline]
pub fn admits_echo(uplink: &UplinkEntry) -> bool {
    uplink
        .routing
        .filter
        .as_ref()
        .is_none_or(|filter| filter.allows(Protocol::Icmp, 0))
}

/// True when `filter` lets the packet `info`, which belongs to no connection, start one:
/// TCP and UDP to a listed port, ICMP echo requests when ICMP is listed; never an echo reply
/// or an ICMP error (unsolicited by definition).
fn admits_new(filter: &InboundFilter, info: &PacketInfo) -> bool {
    let protocol = info.tuple.protocol;
    match info.kind {
        PacketKind::Tcp(_) | PacketKind::Udp => filter.allows(protocol, info.tuple.dst_port),
        PacketKind::IcmpEcho(EchoKind::Request) => filter.allows(Protocol::Icmp, 0),
        PacketKind::IcmpEcho(EchoKind::Reply) | PacketKind::IcmpError => false,
    }
}

/// A packet from `ingress` (in `subnet`) to a destination no route of its Network covers, on
/// a node with `uplink`: routed untranslated ([`routed_out`]) when the Network is routed
/// through the Uplink toward `dst`, unless `dst` is one of the switch's own uplink addresses
/// (hairpinning, echo) or the sender has a VirtualIP (its 1:1 NAT wins); otherwise
/// [`nat::outbound`]. Rewrites `frame` in place.
pub fn outbound(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    if let (L3::Ipv4 { src, dst, .. }, Some(uplink)) = (parsed.l3, ctx.snapshot.uplink.as_ref()) {
        let routed = uplink
            .routing
            .network(subnet.network_id)
            .is_some_and(|network| network.covers(dst));
        if routed
            && !owns(uplink, dst)
            && ctx
                .snapshot
                .nat
                .virtual_ip_of(nat::zone_of(subnet.network_id), src.into())
                .is_none()
        {
            trace_note!(
                ctx,
                Uplink,
                "Network {} is routed through Uplink {}: {dst} leaves untranslated",
                subnet.network,
                uplink.name
            );
            return routed_out(ctx, uplink, ingress, subnet, parsed, frame, local);
        }
        trace_note!(
            ctx,
            Nat,
            "no route in Network {} for {dst}: out through Uplink {} with NAT",
            subnet.network,
            uplink.name
        );
    }
    nat::outbound(ctx, ingress, subnet, parsed, frame, local)
}

/// Routes a packet of a routed Network out of `uplink` untranslated: toward its next hop
/// there (the destination when on the link, else the uplink's gateway), through
/// [`l3::forward`] (TTL, MTU, ICMP errors from the ingress subnet's gateway, neighbour
/// resolution). A connection conntrack knows continues as tracked (replies of PortForwards
/// and VirtualIPs, and routed connections when the inbound filter tracks them); with the
/// filter on, a new connection is tracked so its replies are let in.
pub fn routed_out(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let L3::Ipv4 { dst, .. } = parsed.l3 else {
        return Verdict::drop(l3::DropReason::NotIpv4);
    };
    let errors = ErrorPath::subnet(ingress.id, parsed.src_mac, subnet);
    let confirm = |ctx: &Context<'_>, out: &mut Output| {
        l3::confirm_sender(ctx, ingress, subnet, parsed, out);
    };
    let tracking = uplink.routing.filter.is_some();
    let zone = nat::zone_of(subnet.network_id);
    // Fragments and other protocols cannot be tracked (`None`): a router forwards them as
    // they are. Without the filter and policies, and with an empty table, there is nothing
    // to look up.
    let info = if tracking || ctx.snapshot.policy.is_some() || !ctx.snapshot.conntrack.is_empty() {
        nat::packet_info(frame).ok()
    } else {
        None
    };
    if let Some(info) = &info {
        if let Some(tracked) = ctx.conntrack_lookup(zone, info) {
            nat::note_tracked(ctx, zone, info, &tracked);
            if let Err(cause) = super::policy::judge_reopened(ctx, Some(ingress.id), info, &tracked)
            {
                return Verdict::Drop(cause);
            }
            return nat::continue_from(
                ctx,
                Some(subnet.network_id),
                &tracked,
                &errors,
                parsed,
                frame,
                local,
                confirm,
            );
        }
    }
    // NetworkPolicies: the source's egress (the destination is outside: ipBlocks only); a
    // connection of an isolated interface is tracked so its replies come back in.
    let judged = ip_bounds(frame)
        .and_then(|(start, end)| frame.get(start..end))
        .map_or(Ok(false), |packet| {
            super::policy::judge_routed(
                ctx,
                Some(ingress.id),
                subnet.network_id,
                false,
                packet,
                info.as_ref(),
            )
        });
    let isolated = match judged {
        Ok(isolated) => isolated,
        Err(cause) => return Verdict::Drop(cause),
    };
    if let Some(info) =
        info.filter(|info| (tracking || isolated) && info.kind != PacketKind::IcmpError)
    {
        let plan = NatPlan::none(Zone::EXTERNAL);
        let created = nat::create_with(
            ctx,
            zone,
            &info,
            &plan,
            Attachments::default(),
            &mut local.out,
        );
        match created {
            Ok(tracked) => {
                return nat::continue_from(
                    ctx,
                    Some(subnet.network_id),
                    &tracked,
                    &errors,
                    parsed,
                    frame,
                    local,
                    confirm,
                );
            }
            // Cannot start a connection (a reset, an echo reply): forwarded untracked.
            Err(Verdict::Drop(DropCause::Conntrack(nat::ConntrackReason::NotAStart))) => {}
            Err(verdict) => return verdict,
        }
    }
    let hop = Hop {
        link: Link::Uplink(uplink),
        next_hop: next_hop_for(uplink, Some(subnet.network_id), dst),
    };
    trace_note!(
        ctx,
        Uplink,
        "next hop of {dst} on the uplink: {}",
        hop.next_hop
    );
    l3::forward(ctx, &errors, hop, parsed, frame, local, None, confirm)
}

/// Routes a packet received on `uplink` into the routed `network`, whose Subnets hold its
/// destination (header checksum verified): untranslated, by the Network's table, through
/// [`l3::forward`] (ICMP errors come from the uplink address on the sender's link). Echo
/// requests to a Subnet's gateway are answered from it. With the inbound filter on, only
/// packets of known connections and new connections the `allow` list admits get in.
pub fn routed_in(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    network: &RoutedNetwork,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let L3::Ipv4 {
        src, dst, protocol, ..
    } = parsed.l3
    else {
        return Verdict::drop(l3::DropReason::NotIpv4);
    };
    // A source inside a routed Subnet (spoofed: those addresses are behind the switch) or
    // a martian is refused too, as strict reverse-path filtering does.
    if !network.covers(src) || l3::is_martian(src) || uplink.routing.network_of(src).is_some() {
        return Verdict::drop(DropReason::RoutedSource);
    }
    let filter = uplink.routing.filter.as_ref();
    let errors = ErrorPath::uplink(uplink, parsed.src_mac, source_for(uplink, src));
    let route = l3::lookup(ctx.snapshot, network.id, dst);
    let Some((_, egress, next_hop)) = route else {
        return no_route(ctx, &errors, frame, local);
    };
    if next_hop == egress.gateway {
        // The switch's own address in the Network: it answers pings, nothing else.
        if protocol != IpProtocol::Icmp {
            return Verdict::drop(l3::DropReason::ToGateway);
        }
        if !admits_echo(uplink) {
            return Verdict::drop(DropReason::InboundDenied);
        }
        return nat::answer_echo(
            frame,
            &mut local.out,
            uplink.id,
            parsed.src_mac,
            uplink.mac,
            dst,
        );
    }
    if egress.cidr.prefix_len() < 31 && dst == egress.cidr.broadcast() {
        return Verdict::drop(l3::DropReason::BadDestination);
    }
    // With the filter on, every packet is tracked or refused; fragments and other protocols
    // cannot be told from unsolicited traffic. NetworkPolicies track what they judge.
    let info = if filter.is_some() || ctx.snapshot.policy.is_some() {
        match nat::packet_info(frame) {
            Ok(info) => Some(info),
            Err(_) if filter.is_some() => return Verdict::drop(DropReason::InboundDenied),
            Err(_) => None,
        }
    } else {
        None
    };
    if let Some(info) = &info {
        if let Some(tracked) = ctx.conntrack_lookup(Zone::EXTERNAL, info) {
            nat::note_tracked(ctx, Zone::EXTERNAL, info, &tracked);
            if let Err(cause) = super::policy::judge_reopened(ctx, None, info, &tracked) {
                return Verdict::Drop(cause);
            }
            return nat::continue_in(ctx, &tracked, &errors, parsed, frame, local, |_, _| {});
        }
    }
    // A new connection from outside: the node's inbound filter, then the NetworkPolicies of
    // the destination (the source is outside: ipBlocks only).
    if let (Some(filter), Some(info)) = (filter, &info) {
        if !admits_new(filter, info) {
            return Verdict::drop(DropReason::InboundDenied);
        }
    }
    let judged = ip_bounds(frame)
        .and_then(|(start, end)| frame.get(start..end))
        .map_or(Ok(false), |packet| {
            super::policy::judge_routed(ctx, None, network.id, true, packet, info.as_ref())
        });
    let isolated = match judged {
        Ok(isolated) => isolated,
        Err(cause) => return Verdict::Drop(cause),
    };
    if let Some(info) = info
        .as_ref()
        .filter(|info| (filter.is_some() || isolated) && info.kind != PacketKind::IcmpError)
    {
        let plan = NatPlan::none(nat::zone_of(network.id));
        let created = nat::create_with(
            ctx,
            Zone::EXTERNAL,
            info,
            &plan,
            Attachments::default(),
            &mut local.out,
        );
        match created {
            Ok(tracked) => {
                return nat::continue_in(ctx, &tracked, &errors, parsed, frame, local, |_, _| {});
            }
            // Allowed but cannot start a connection (a mid-stream segment without loose
            // TCP pick-up): let through untracked, as a stateless rule.
            Err(Verdict::Drop(DropCause::Conntrack(nat::ConntrackReason::NotAStart))) => {}
            Err(verdict) => return verdict,
        }
    }
    let hop = Hop {
        link: Link::Subnet(egress),
        next_hop,
    };
    l3::forward(ctx, &errors, hop, parsed, frame, local, None, |_, _| {})
}

/// No route for a packet from outside: ICMP net unreachable, `l3.no_route`.
fn no_route(ctx: &Context<'_>, errors: &ErrorPath, frame: &[u8], local: &mut Local) -> Verdict {
    if let Some((start, end)) = ip_bounds(frame) {
        icmp::send_error_via(
            &mut local.out,
            ctx.now_ms,
            Kind::NetUnreachable,
            errors,
            &frame[start..end],
        );
    }
    Verdict::drop(l3::DropReason::NoRoute)
}

#[cfg(test)]
mod tests {
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

    mod routed {
        use smoltcp::wire::{IpAddress, TcpPacket, UdpPacket};

        use super::*;
        use crate::port::PortId;
        use crate::tables::snapshot::{InboundRule, NetworkId, SubnetId, UplinkRouting};

        const IP: usize = VNET_HDR_LEN + 14;
        const L4: usize = IP + 20;
        const BLUE: SubnetId = SubnetId(1);
        const RED: SubnetId = SubnetId(2);
        /// A destination inside the routed Network's `destinations` in [`limited`].
        const LAB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 5);

        fn ip(a: Ipv4Addr) -> IpAddress {
            IpAddress::Ipv4(a)
        }

        /// Network 0 (blue 172.30.0.0/16, red 10.9.0.0/24) routed through the uplink of
        /// [`uplink_snapshot`] (which also gives it a NATGateway, a PortForward and a
        /// VirtualIP), toward `destinations`, with the inbound `filter`; every neighbour known.
        fn bench_with(destinations: &[&str], filter: Option<InboundFilter>) -> Bench {
            let mut snapshot = uplink_snapshot();
            if let Some(uplink) = snapshot.uplink.as_mut() {
                let network = RoutedNetwork {
                    id: NetworkId(0),
                    destinations: destinations.iter().map(|d| d.parse().unwrap()).collect(),
                };
                let cidrs = vec![
                    "172.30.0.0/16".parse().unwrap(),
                    "10.9.0.0/24".parse().unwrap(),
                ];
                uplink.routing = UplinkRouting::new(vec![(network, cidrs)], filter);
            }
            let bench = Bench::with(snapshot);
            bench
                .neighbors
                .confirm(UPLINK_SEGMENT, OUTSIDE_GW, OUTSIDE_GW_MAC, 0, true);
            bench.neighbors.confirm(BLUE, IP_A, MAC_A, 0, true);
            bench.neighbors.confirm(BLUE, IP_B, MAC_B, 0, true);
            bench.neighbors.confirm(RED, IP_D, MAC_D, 0, true);
            let blue = bench.snapshot.subnet(BLUE).unwrap();
            bench.fdb.learn(blue, MAC_A, PortId(1), 0);
            bench.fdb.learn(blue, MAC_B, PortId(2), 0);
            let red = bench.snapshot.subnet(RED).unwrap();
            bench.fdb.learn(red, MAC_D, PortId(4), 0);
            bench
        }

        /// Routed toward everything, no filter.
        fn open() -> Bench {
            bench_with(&[], None)
        }

        /// Routed toward everything; inbound filter allowing TCP 22, UDP 4789-4790 and,
        /// with `icmp`, echo requests.
        fn guarded(icmp: bool) -> Bench {
            let mut allow = vec![
                InboundRule {
                    protocol: Protocol::Tcp,
                    ports: Some((22, 22)),
                },
                InboundRule {
                    protocol: Protocol::Udp,
                    ports: Some((4789, 4790)),
                },
            ];
            if icmp {
                allow.push(InboundRule {
                    protocol: Protocol::Icmp,
                    ports: None,
                });
            }
            bench_with(&[], Some(InboundFilter { allow }))
        }

        /// Routed toward 192.0.2.0/24 only (the rest through NAT).
        fn limited() -> Bench {
            bench_with(&["192.0.2.0/24"], None)
        }

        /// UDP with 4 bytes of data.
        fn udp(
            src_mac: [u8; 6],
            dst_mac: [u8; 6],
            src: (Ipv4Addr, u16),
            dst: (Ipv4Addr, u16),
        ) -> Vec<u8> {
            udp_frame(src_mac, dst_mac, src, dst, 64, false, &[0u8; 4])
        }

        use crate::pipeline::fixtures::tcp_frame as tcp;

        /// An echo request with identifier 7.
        fn echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
            echo_frame(src_mac, dst_mac, src, dst, 7, true)
        }

        /// From outside (the gateway's MAC to the uplink's).
        fn from_outside_udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
            udp(OUTSIDE_GW_MAC, UPLINK_MAC, src, dst)
        }

        fn from_outside_tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
            tcp(OUTSIDE_GW_MAC, UPLINK_MAC, src, dst, flags)
        }

        fn packet(frame: &[u8]) -> Ipv4Packet<&[u8]> {
            Ipv4Packet::new_checked(&frame[IP..]).unwrap()
        }

        /// Source, destination, TTL, after checking the header and transport checksums.
        fn addresses(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, u8) {
            let ip4 = packet(frame);
            assert!(ip4.verify_checksum(), "IPv4 header checksum");
            let (src, dst) = (ip4.src_addr(), ip4.dst_addr());
            match ip4.next_header() {
                IpProtocol::Udp => assert!(
                    UdpPacket::new_checked(ip4.payload())
                        .unwrap()
                        .verify_checksum(&ip(src), &ip(dst))
                ),
                IpProtocol::Tcp => assert!(
                    TcpPacket::new_checked(ip4.payload())
                        .unwrap()
                        .verify_checksum(&ip(src), &ip(dst))
                ),
                _ => {}
            }
            (src, dst, ip4.hop_limit())
        }

        fn macs(frame: &[u8]) -> ([u8; 6], [u8; 6]) {
            let mut dst = [0; 6];
            let mut src = [0; 6];
            dst.copy_from_slice(&frame[VNET_HDR_LEN..VNET_HDR_LEN + 6]);
            src.copy_from_slice(&frame[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]);
            (dst, src)
        }

        #[test]
        fn a_routed_network_leaves_and_comes_in_untranslated() {
            let bench = open();
            let query = udp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (REMOTE, 53));
            let (outcome, out) = bench.run(1, &query, 0);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert_eq!(addresses(&out), (IP_A, REMOTE, 63), "its own source");
            assert_eq!(macs(&out), (OUTSIDE_GW_MAC, UPLINK_MAC));
            assert!(
                bench.snapshot.conntrack.is_empty(),
                "a router tracks nothing"
            );
            // From outside, to a container's address: routed into its Subnet.
            let answer = from_outside_udp((REMOTE, 53), (IP_A, 40000));
            let (outcome, back) = bench.run_uplink(&answer, 1);
            assert_eq!(outcome.verdict, Verdict::Forward(PortId(1)));
            assert_eq!(addresses(&back), (REMOTE, IP_A, 63));
            assert_eq!(macs(&back), (MAC_A, GW_BLUE_MAC));
            // Unsolicited too (no filter): any port, any Subnet of the Network.
            let syn = from_outside_tcp((REMOTE, 5555), (IP_D, 80), 0x02);
            assert_eq!(
                bench.run_uplink(&syn, 2).0.verdict,
                Verdict::Forward(PortId(4))
            );
            assert!(bench.snapshot.conntrack.is_empty());
            // An echo request to a Subnet's gateway is answered from it, out of the uplink.
            let ping = echo(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, GW_RED);
            assert_eq!(bench.run_uplink(&ping, 3).0.verdict, Verdict::Consumed);
            let generated = bench.generated();
            assert_eq!(generated.len(), 1);
            assert_eq!(generated[0].0, Verdict::Forward(UPLINK));
            let (from, to, _) = addresses(&generated[0].2);
            assert_eq!((from, to), (GW_RED, REMOTE));
            // A Subnet's broadcast address is not routed to.
            let broadcast = from_outside_udp((REMOTE, 1), (Ipv4Addr::new(10, 9, 0, 255), 2));
            assert_eq!(
                bench.run_uplink(&broadcast, 4).0.verdict,
                Verdict::drop(l3::DropReason::BadDestination)
            );
            // Sources that cannot be outside: a routed Subnet's (spoofed), a martian.
            for source in [IP_B, Ipv4Addr::new(127, 0, 0, 1)] {
                let spoofed = from_outside_udp((source, 1), (IP_A, 2));
                assert_eq!(
                    bench.run_uplink(&spoofed, 4).0.verdict,
                    dropped(DropReason::RoutedSource),
                    "{source}"
                );
            }
            // Addresses neither owned nor routed are still the host's.
            let other = from_outside_udp((REMOTE, 1), (Ipv4Addr::new(192, 168, 1, 1), 2));
            assert_eq!(
                bench.run_uplink(&other, 5).0.verdict,
                dropped(DropReason::NotOwned)
            );
        }

        #[test]
        fn a_route_through_a_router_on_the_link_beats_the_gateway() {
            // Network 0 routes 10.77.0.0/16 to a router on the uplink's link, 203.0.113.50.
            const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
            const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x55, 0x01];
            // `bench` with that Route, the router's MAC known.
            let routed = |mut bench: Bench| {
                if let Some(uplink) = bench.snapshot.uplink.as_mut() {
                    let routing = std::mem::take(&mut uplink.routing);
                    uplink.routing = routing.with_routes(
                        NetworkId(0),
                        vec![("10.77.0.0/16".parse().unwrap(), ROUTER, "far".into())],
                    );
                }
                bench
                    .neighbors
                    .confirm(UPLINK_SEGMENT, ROUTER, ROUTER_MAC, 0, true);
                bench
            };
            let bench = routed(open());
            let far = Ipv4Addr::new(10, 77, 3, 4);
            let query = udp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (far, 53));
            let (outcome, out) = bench.run(1, &query, 0);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert_eq!(addresses(&out), (IP_A, far, 63), "untranslated, one hop");
            assert_eq!(macs(&out), (ROUTER_MAC, UPLINK_MAC), "to the router's MAC");
            // Outside the route: the gateway, as before.
            let query = udp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (REMOTE, 53));
            let (_, out) = bench.run(1, &query, 1);
            assert_eq!(macs(&out), (OUTSIDE_GW_MAC, UPLINK_MAC));
            // With the inbound filter on, routed connections are tracked: their packets take
            // the Route's router too.
            let tracked = routed(guarded(true));
            let syn = tcp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (far, 80), 0x02);
            let (outcome, out) = tracked.run(1, &syn, 0);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert!(
                !tracked.snapshot.conntrack.is_empty(),
                "tracked by the filter"
            );
            assert_eq!(macs(&out), (ROUTER_MAC, UPLINK_MAC), "a tracked packet too");
            let next = tcp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (far, 80), 0x10);
            let (_, out) = tracked.run(1, &next, 1);
            assert_eq!(macs(&out), (ROUTER_MAC, UPLINK_MAC), "and the next one");
            // Another Network's routes are its own.
            assert_eq!(
                bench
                    .snapshot
                    .uplink
                    .as_ref()
                    .and_then(|uplink| uplink.routing.router(NetworkId(1), far)),
                None
            );
        }

        #[test]
        fn routed_packets_get_ttl_and_neighbour_resolution() {
            let bench = open();
            // TTL 1 from outside: time exceeded from the uplink address on the sender's side.
            let mut late = from_outside_udp((REMOTE, 53), (IP_A, 40000));
            let mut header = Ipv4Packet::new_unchecked(&mut late[IP..]);
            header.set_hop_limit(1);
            header.fill_checksum();
            assert_eq!(
                bench.run_uplink(&late, 0).0.verdict,
                Verdict::drop(l3::DropReason::TtlExpired)
            );
            let generated = bench.generated();
            assert_eq!(generated.len(), 1);
            assert_eq!(generated[0].0, Verdict::Forward(UPLINK));
            let error = packet(&generated[0].2);
            assert_eq!((error.src_addr(), error.dst_addr()), (NAT_IP, REMOTE));
            assert_eq!(&error.payload()[..2], &[11, 0]);
            // An unknown neighbour inside: held, and ARP asked in its Subnet.
            let to_e = from_outside_udp((REMOTE, 53), (Ipv4Addr::new(10, 9, 0, 3), 9));
            assert_eq!(bench.run_uplink(&to_e, 1).0.verdict, Verdict::Consumed);
            let generated = bench.generated();
            assert_eq!(generated.len(), 1);
            assert_eq!(
                generated[0].0,
                Verdict::FloodSubnet {
                    subnet: RED,
                    except: None
                }
            );
            // Too big for the uplink with DF: fragmentation needed from the subnet's gateway.
            let mut narrow = open();
            if let Some(uplink) = narrow.snapshot.uplink.as_mut() {
                uplink.mtu = 576;
            }
            let mut big = ipv4_frame(
                MAC_A,
                GW_BLUE_MAC,
                IP_A,
                REMOTE,
                64,
                IpProtocol::Udp,
                true,
                &[0u8; 1000],
            );
            big[L4 + 4..L4 + 6].copy_from_slice(&1000u16.to_be_bytes());
            assert_eq!(
                narrow.send(1, &big, 0).verdict,
                Verdict::drop(l3::DropReason::MtuExceeded)
            );
            let generated = narrow.generated();
            assert_eq!(generated[0].0, Verdict::Forward(PortId(1)));
            assert_eq!(packet(&generated[0].2).src_addr(), GW_BLUE);
        }

        #[test]
        fn precedence_between_routing_and_nat() {
            let bench = limited();
            // Inside the destinations: routed.
            let lab = udp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (LAB, 53));
            let (outcome, out) = bench.run(1, &lab, 0);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert_eq!(addresses(&out).0, IP_A);
            // Elsewhere: the NATGateway.
            let internet = udp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (REMOTE, 53));
            let (outcome, out) = bench.run(1, &internet, 1);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert_eq!(addresses(&out).0, NAT_IP);
            // From outside the destinations, nothing comes in routed.
            let stray = from_outside_udp((REMOTE, 53), (IP_B, 9));
            assert_eq!(
                bench.run_uplink(&stray, 2).0.verdict,
                dropped(DropReason::RoutedSource)
            );
            // An interface with a VirtualIP keeps it, even toward routed destinations.
            let from_d = udp(MAC_D, GW_RED_MAC, (IP_D, 5353), (LAB, 53));
            let (outcome, out) = bench.run(4, &from_d, 3);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert_eq!(addresses(&out).0, VIP);
            // The switch's own uplink addresses still hairpin to the PortForward.
            let hairpin = tcp(MAC_A, GW_BLUE_MAC, (IP_A, 40001), (NAT_IP, 8080), 0x02);
            assert_eq!(
                bench.send(1, &hairpin, 4).verdict,
                Verdict::Forward(PortId(2))
            );
            // And the PortForward's replies leave translated, though the Network is routed.
            let everything = open();
            let syn = from_outside_tcp((REMOTE, 5555), (NAT_IP, 8080), 0x02);
            assert_eq!(
                everything.run_uplink(&syn, 0).0.verdict,
                Verdict::Forward(PortId(2))
            );
            let syn_ack = tcp(MAC_B, GW_BLUE_MAC, (IP_B, 80), (REMOTE, 5555), 0x12);
            let (outcome, out) = everything.run(2, &syn_ack, 1);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert_eq!(addresses(&out).0, NAT_IP);
        }

        #[test]
        fn the_inbound_filter_lets_in_replies_and_listed_ports_only() {
            let bench = guarded(false);
            let denied = dropped(DropReason::InboundDenied);
            // Unsolicited to a port not listed: dropped silently.
            let web = from_outside_tcp((REMOTE, 5555), (IP_B, 80), 0x02);
            assert_eq!(bench.run_uplink(&web, 0).0.verdict, denied);
            assert!(bench.generated().is_empty(), "no ICMP");
            // A listed port: in, tracked, and its replies go out.
            let ssh = from_outside_tcp((REMOTE, 5555), (IP_B, 22), 0x02);
            assert_eq!(
                bench.run_uplink(&ssh, 1).0.verdict,
                Verdict::Forward(PortId(2))
            );
            assert_eq!(bench.snapshot.conntrack.len(), 1);
            let syn_ack = tcp(MAC_B, GW_BLUE_MAC, (IP_B, 22), (REMOTE, 5555), 0x12);
            let (outcome, out) = bench.run(2, &syn_ack, 2);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert_eq!(addresses(&out).0, IP_B, "untranslated");
            let ack = from_outside_tcp((REMOTE, 5555), (IP_B, 22), 0x10);
            assert_eq!(
                bench.run_uplink(&ack, 3).0.verdict,
                Verdict::Forward(PortId(2))
            );
            // A range: both ends in, one past out.
            for (port, verdict) in [
                (4789, Verdict::Forward(PortId(1))),
                (4790, Verdict::Forward(PortId(1))),
                (4791, denied),
            ] {
                let datagram = from_outside_udp((REMOTE, 9), (IP_A, port));
                assert_eq!(bench.run_uplink(&datagram, 4).0.verdict, verdict, "{port}");
            }
            // Connections started inside: their replies come in, whatever the port.
            let query = udp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (REMOTE, 53));
            assert_eq!(bench.send(1, &query, 5).verdict, Verdict::Forward(UPLINK));
            let answer = from_outside_udp((REMOTE, 53), (IP_A, 40000));
            assert_eq!(
                bench.run_uplink(&answer, 6).0.verdict,
                Verdict::Forward(PortId(1))
            );
            let other = from_outside_udp((REMOTE, 53), (IP_A, 40001));
            assert_eq!(bench.run_uplink(&other, 7).0.verdict, denied);
            let syn = tcp(MAC_A, GW_BLUE_MAC, (IP_A, 41000), (REMOTE, 443), 0x02);
            assert_eq!(bench.send(1, &syn, 8).verdict, Verdict::Forward(UPLINK));
            let syn_ack = from_outside_tcp((REMOTE, 443), (IP_A, 41000), 0x12);
            assert_eq!(
                bench.run_uplink(&syn_ack, 9).0.verdict,
                Verdict::Forward(PortId(1))
            );
            // A bare ACK nobody started is not a reply.
            let forged = from_outside_tcp((REMOTE, 443), (IP_A, 41001), 0x10);
            assert_eq!(bench.run_uplink(&forged, 10).0.verdict, denied);
            // Without ICMP listed: pings to containers, gateways and the uplink addresses.
            for to in [IP_A, GW_BLUE, NAT_IP] {
                let ping = echo(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, to);
                assert_eq!(bench.run_uplink(&ping, 11).0.verdict, denied, "{to}");
            }
            // But a ping from inside gets its reply.
            let ping = echo(MAC_A, GW_BLUE_MAC, IP_A, REMOTE);
            assert_eq!(bench.send(1, &ping, 12).verdict, Verdict::Forward(UPLINK));
            let mut pong = echo(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, IP_A);
            pong[L4] = 0;
            smoltcp::wire::Icmpv4Packet::new_unchecked(&mut pong[L4..]).fill_checksum();
            assert_eq!(
                bench.run_uplink(&pong, 13).0.verdict,
                Verdict::Forward(PortId(1))
            );
            // Fragments cannot be told from unsolicited traffic.
            let mut fragment = from_outside_udp((REMOTE, 53), (IP_A, 40000));
            let mut header = Ipv4Packet::new_unchecked(&mut fragment[IP..]);
            header.set_more_frags(true);
            header.fill_checksum();
            assert_eq!(bench.run_uplink(&fragment, 14).0.verdict, denied);
            let fresh = open();
            assert_eq!(
                fresh.run_uplink(&fragment, 0).0.verdict,
                Verdict::Forward(PortId(1)),
                "a router without the filter forwards fragments"
            );
        }

        #[test]
        fn the_inbound_filter_spares_nat_and_publications_and_allows_icmp() {
            let bench = guarded(true);
            // ICMP listed: pings in, to a container and to the switch's addresses.
            let ping = echo(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, IP_A);
            assert_eq!(
                bench.run_uplink(&ping, 0).0.verdict,
                Verdict::Forward(PortId(1))
            );
            for to in [GW_BLUE, NAT_IP] {
                let ping = echo(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, to);
                assert_eq!(
                    bench.run_uplink(&ping, 1).0.verdict,
                    Verdict::Consumed,
                    "{to}"
                );
            }
            // A PortForward is an explicit publication: not filtered.
            let syn = from_outside_tcp((REMOTE, 5555), (NAT_IP, 8080), 0x02);
            assert_eq!(
                bench.run_uplink(&syn, 2).0.verdict,
                Verdict::Forward(PortId(2))
            );
            // NAT replies pass (a Network routed toward 192.0.2.0/24 only, the rest NATed).
            let mut snapshot = uplink_snapshot();
            if let Some(uplink) = snapshot.uplink.as_mut() {
                let network = RoutedNetwork {
                    id: NetworkId(0),
                    destinations: vec!["192.0.2.0/24".parse().unwrap()],
                };
                uplink.routing = UplinkRouting::new(
                    vec![(network, vec!["172.30.0.0/16".parse().unwrap()])],
                    Some(InboundFilter::default()),
                );
            }
            let natted = Bench::with(snapshot);
            natted
                .neighbors
                .confirm(UPLINK_SEGMENT, OUTSIDE_GW, OUTSIDE_GW_MAC, 0, true);
            natted.neighbors.confirm(BLUE, IP_A, MAC_A, 0, true);
            let blue = natted.snapshot.subnet(BLUE).unwrap();
            natted.fdb.learn(blue, MAC_A, PortId(1), 0);
            let query = udp(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (REMOTE, 53));
            let (outcome, out) = natted.run(1, &query, 0);
            assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
            assert_eq!(addresses(&out).0, NAT_IP);
            let answer = from_outside_udp((REMOTE, 53), (NAT_IP, 40000));
            assert_eq!(
                natted.run_uplink(&answer, 1).0.verdict,
                Verdict::Forward(PortId(1))
            );
            // With an empty allow list, even a ping to the switch is dropped, counted.
            let ping = echo(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, NAT_IP);
            assert_eq!(
                natted.run_uplink(&ping, 2).0.verdict,
                dropped(DropReason::InboundDenied)
            );
        }

        #[test]
        fn filter_rules_match_protocol_and_port_range() {
            let filter = InboundFilter {
                allow: vec![
                    InboundRule {
                        protocol: Protocol::Tcp,
                        ports: Some((8000, 8080)),
                    },
                    InboundRule {
                        protocol: Protocol::Udp,
                        ports: None,
                    },
                ],
            };
            assert!(filter.allows(Protocol::Tcp, 8000));
            assert!(filter.allows(Protocol::Tcp, 8080));
            assert!(!filter.allows(Protocol::Tcp, 7999));
            assert!(!filter.allows(Protocol::Tcp, 8081));
            assert!(filter.allows(Protocol::Udp, 1));
            assert!(!filter.allows(Protocol::Icmp, 0));
            assert!(!InboundFilter::default().allows(Protocol::Udp, 53));
        }

        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

            /// Mutated frames into and out of a routed Network, with and without the filter,
            /// never panic, and whatever the switch emits can be framed.
            #[test]
            fn never_panics_on_mutated_routed_frames(
                flips in proptest::collection::vec((0usize..60, proptest::prelude::any::<u8>()), 0..8),
                protocol in proptest::sample::select(vec![1u8, 6, 17, 47]),
                filtered in proptest::prelude::any::<bool>(),
                inbound in proptest::prelude::any::<bool>(),
                extra in 0usize..1600,
            ) {
                let bench = if filtered { guarded(true) } else { open() };
                let mut frame = if inbound {
                    ipv4_frame(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, IP_A, 64,
                        IpProtocol::from(protocol), false, &vec![0x33; extra + 8])
                } else {
                    ipv4_frame(MAC_A, GW_BLUE_MAC, IP_A, REMOTE, 64,
                        IpProtocol::from(protocol), false, &vec![0x33; extra + 8])
                };
                for (at, value) in flips {
                    let at = IP + at;
                    // Keep the addresses that pick the path (and pass port security).
                    if (IP + 12..IP + 20).contains(&at) {
                        continue;
                    }
                    if let Some(byte) = frame.get_mut(at) {
                        *byte = value;
                    }
                }
                if inbound {
                    let _ = bench.run_uplink(&frame, 1);
                } else {
                    let _ = bench.run(1, &frame, 1);
                }
                for (_, _, bytes) in bench.generated() {
                    proptest::prop_assert!(bytes.len() >= VNET_HDR_LEN + 14);
                }
            }
        }
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
