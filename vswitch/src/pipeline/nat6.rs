//! Stage `nat` for IPv6 (NAT66), and the switch's IPv6 on the uplink.
//!
//! The Uplink's `spec.ipv6` gives the switch IPv6 addresses on the link and an IPv6 next hop;
//! NATGateways may list those addresses beside IPv4 ones, PortForwards may forward one of
//! them (to the target interface's IPv6 address). The decisions are the `nat` crate's, the
//! same as IPv4's: endpoint-independent masquerade with port blocks per interface and family
//! ("masquerade" as nftables does it for IPv6, not the stateless prefix translation of
//! RFC 6296), DNAT for port forwards, hairpinning; ICMPv6 errors about a tracked flow are
//! translated with the packet they quote.
//!
//! - **On the uplink** ([`on_uplink`], from the [`uplink`](super::uplink) stage for IPv6 to
//!   the switch's MAC or to a solicited-node multicast MAC): neighbour solicitations for an
//!   owned address (or the switch's link-local one) are answered from the uplink MAC;
//!   advertisements and solicitations teach their sender under the uplink's segment (the
//!   gateway's answer to our solicitation resolves it); other ND (router advertisements
//!   and solicitations, redirects) is the host's. ND must arrive with hop limit 255 and a
//!   valid checksum (`l3.nd_invalid`). IPv6 to an owned address goes to a Public
//!   LoadBalancer's [`lb`](super::lb) stage when it is that LoadBalancer's, else to
//!   [`inbound`]; to anything else it is the host's (`uplink.not_owned`).
//! - **Outbound** ([`outbound`], from [`route6`](super::route6) when the ingress Network has
//!   no IPv6 route for the destination): looked up in the Network's zone; on a miss an
//!   ICMPv6 error is dropped (`nat.untracked_icmp_error`), an echo request to an owned
//!   address that forwards nothing is answered from it, and anything else gets a plan and a
//!   connection. A Network with no IPv6 NAT address gets `None` back: the caller answers
//!   "no route" as a router without one does.
//! - **Inbound** (IPv6 to an owned address, from outside): replies of masqueraded flows are
//!   translated back, new flows to a PortForward are DNATed, echo requests to an owned
//!   address are answered (unless the inbound filter denies ICMP), the rest is
//!   `nat.unsolicited` (no ICMPv6, as a masquerading firewall).
//! - Then ([`continue_in`]) in the connection's egress zone toward its translated
//!   destination: the uplink (next hop: the destination when on the link of an owned
//!   address or link-local, else the IPv6 gateway) or the Network's longest-prefix match.
//!   Hop limit (time exceeded) and MTU (packet too big, per segment for GSO) are checked on
//!   the packet as it arrived, errors quoting it as its sender sent it (from the ingress
//!   gateway, or from the owned address it was sent to when it came from outside); then the
//!   packet is translated (`ChecksumMode::Partial` when the virtio header says
//!   `NEEDS_CSUM`), its hop limit decremented, its next hop resolved (held and solicited
//!   when unknown; on the uplink from the switch's link-local or owned address) and it is
//!   delivered.
//!
//! NetworkPolicies judge the first packet of each NAT66 connection before it is created,
//! as for IPv4 ([`policy::judge_plan`]): against its destination as translated, so a port
//! forward (from outside, or hairpinned from a container) is judged against its target
//! interface and port. A denied packet creates nothing, so a retransmission is judged
//! again; a SYN that reopens a tracked connection is judged again
//! ([`policy::judge_reopened`]); the rest of an allowed connection passes either way.
//!
//! [`policy::judge_plan`]: super::policy::judge_plan
//! [`policy::judge_reopened`]: super::policy::judge_reopened

use std::net::{IpAddr, Ipv6Addr};

use ::nat::{Attachments, EchoKind, Egress, FlowKey, InterfaceId, PacketKind, PlanError, Tracked};
use ::nat::{ChecksumMode, Zone};

use super::generated::Origin;
use super::l3::DropReason as L3Reason;
use super::nat::{self, DropReason};
use super::parse::{L3, Parsed};
use super::port_security::icmp_message;
use super::route6::{self, packet_bounds};
use super::uplink::DropReason as UplinkReason;
use super::{Context, Local, Output, Verdict};
use crate::port::PortId;
use crate::tables::counters::Event;
use crate::tables::held::{HOLD_MS, Held};
use crate::tables::neigh::Resolution;
use crate::tables::snapshot::{
    NetworkId, NextHop, PortEntry, SubnetEntry, UplinkEntry, UplinkIpv6Entry,
};
use crate::wire::VNET_HDR_LEN;
use crate::wire::VnetChecksum;
use crate::wire::ipv6::{
    self as wire6, ErrorKind, Ethernet, NeighborAdvertisementRepr, NeighborSolicitationRepr,
};

/// The all-nodes group, where an answer to a duplicate address detection probe goes.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// ICMPv6 neighbour discovery types (RS, RA, NS, NA, redirect).
const ND_TYPES: std::ops::RangeInclusive<u8> = 133..=137;

/// Where the ICMPv6 errors about one packet go: back to its sender.
#[derive(Clone, Copy)]
pub(super) enum Back<'a> {
    /// A container: from its subnet's gateway, through its port.
    Subnet {
        /// The sender's subnet.
        subnet: &'a SubnetEntry,
        /// Its port.
        port: PortId,
        /// Its MAC.
        sender_mac: [u8; 6],
    },
    /// The outside: from the owned address the packet was sent to, out of the uplink.
    Uplink {
        /// The uplink.
        uplink: &'a UplinkEntry,
        /// The owned address the packet was sent to.
        from: Ipv6Addr,
        /// The sender's (a router's) MAC.
        sender_mac: [u8; 6],
    },
}

impl Back<'_> {
    /// Sends the error `kind` about the packet in `frame` (as it arrived), unless RFC 4443
    /// 2.4 or the rate limit forbid it (never in a dry run).
    fn send(self, ctx: &Context<'_>, out: &mut Output, frame: &[u8], kind: ErrorKind) {
        if ctx.is_dry_run() {
            return;
        }
        let Some((start, end)) = packet_bounds(frame) else {
            return;
        };
        let original = &frame[start..end];
        match self {
            Back::Subnet {
                subnet,
                port,
                sender_mac,
            } => {
                route6::send_error(
                    out, ctx.now_ms, kind, subnet, port, sender_mac, original, false,
                );
            }
            Back::Uplink {
                uplink,
                from,
                sender_mac,
            } => {
                route6::send_error_from(
                    out,
                    ctx.now_ms,
                    kind,
                    (uplink.mac, from),
                    uplink.id,
                    sender_mac,
                    original,
                    false,
                );
            }
        }
    }
}

/// Handles an IPv6 frame received on `uplink` to the switch's MAC or a solicited-node
/// multicast MAC (see the module doc).
pub fn on_uplink(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    v6: &UplinkIpv6Entry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let L3::Ipv6 {
        src,
        dst,
        hop_limit,
        icmp_type,
        fragment,
        next_header,
    } = parsed.l3
    else {
        return Verdict::drop(UplinkReason::Unsupported);
    };
    if next_header == super::parse::ICMPV6 && ND_TYPES.contains(&icmp_type) {
        return neighbour_discovery(
            ctx,
            uplink,
            v6,
            parsed,
            frame,
            &mut local.out,
            (src, dst, hop_limit, fragment),
        );
    }
    if parsed.dst_mac != uplink.mac {
        return Verdict::drop(UplinkReason::NotOurs);
    }
    if !v6.owns(dst) || wire6::is_link_local(dst) {
        return Verdict::drop(UplinkReason::NotOwned);
    }
    // Never into a Network from a source no router forwards (RFC 4291 2.5.6 for
    // link-local), nor one claiming to be the switch.
    if src.is_unspecified()
        || src.is_multicast()
        || src.is_loopback()
        || wire6::is_link_local(src)
        || v6.owns(src)
    {
        return Verdict::drop(UplinkReason::RoutedSource);
    }
    if let Some(balancer) = ctx.snapshot.public_balancer(dst.into()) {
        return super::lb::forward_external(ctx, uplink, parsed, frame, local, balancer);
    }
    inbound(ctx, uplink, parsed, frame, local)
}

/// ND on the uplink: answers solicitations for owned addresses, learns neighbours.
fn neighbour_discovery(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    v6: &UplinkIpv6Entry,
    parsed: &Parsed,
    frame: &[u8],
    out: &mut Output,
    (src, dst, hop_limit, fragment): (Ipv6Addr, Ipv6Addr, u8, bool),
) -> Verdict {
    let invalid = Verdict::drop(L3Reason::NdInvalid);
    let Some(icmp) = icmp_message(frame) else {
        return invalid;
    };
    if hop_limit != 255 || fragment || !wire6::icmpv6_checksum_ok(src, dst, icmp) {
        return invalid;
    }
    let nd = match wire6::parse_nd(icmp, src) {
        Ok(Some(nd)) => nd,
        Ok(None) => return Verdict::drop(UplinkReason::NotOwned),
        Err(_) => return invalid,
    };
    match nd {
        wire6::Nd::NeighborSolicitation { target, source_mac } => {
            // RFC 4861 7.1.1: a probe from :: goes to the target's solicited-node group.
            if src.is_unspecified() && dst != wire6::solicited_node(target) {
                return invalid;
            }
            if !v6.owns(target) {
                return Verdict::drop(UplinkReason::NotOwned);
            }
            if !ctx.is_dry_run() && !out.arp_limiter.allow(uplink.id, ctx.now_ms) {
                return Verdict::drop(L3Reason::NdRateLimited);
            }
            learn(ctx, uplink, v6, src, source_mac, true, out);
            trace_note!(
                ctx,
                Arp,
                "neighbour solicitation on the uplink for {target}: advertised"
            );
            let dad = src.is_unspecified();
            let (dst_ip, dst_mac) = if dad {
                (ALL_NODES, wire6::multicast_mac(ALL_NODES))
            } else {
                (src, source_mac.unwrap_or(parsed.src_mac))
            };
            let answer = NeighborAdvertisementRepr {
                eth: Ethernet {
                    src: uplink.mac,
                    dst: dst_mac,
                },
                src: target,
                dst: dst_ip,
                target,
                router: false,
                solicited: !dad,
                override_: true,
                target_mac: uplink.mac,
            };
            let sent = out.generated.push_built(
                answer.len(),
                Verdict::Forward(uplink.id),
                Origin::Switch,
                |buf| answer.emit(buf),
            );
            if !sent {
                return Verdict::drop(L3Reason::NoBuffer);
            }
            out.events.add(Event::NeighborAdvertised);
            Verdict::Consumed
        }
        wire6::Nd::NeighborAdvertisement {
            target,
            target_mac,
            solicited,
            override_,
            ..
        } => {
            // RFC 4861 7.1.2: a solicited advertisement is never sent to a group.
            if solicited && dst.is_multicast() {
                return invalid;
            }
            let to_us = parsed.dst_mac == uplink.mac || v6.owns(dst);
            if !to_us {
                return Verdict::drop(UplinkReason::NotOwned);
            }
            // RFC 4861 7.2.5: an advertisement only completes or refreshes an entry the
            // switch has (its solicitation created it incomplete); without the override flag
            // it does not move a known neighbour to another MAC.
            let mac = target_mac.unwrap_or(parsed.src_mac);
            let known = ctx.neighbors.lookup(uplink.segment, target);
            if override_ || known.is_none_or(|known| known == mac) {
                learn(ctx, uplink, v6, target, Some(mac), false, out);
            }
            Verdict::Consumed
        }
        _ => Verdict::drop(UplinkReason::NotOwned),
    }
}

/// Records `ip` at `mac` under the uplink's segment (creating the entry only when `create`).
/// Nobody else may claim the switch's own addresses.
fn learn(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    v6: &UplinkIpv6Entry,
    ip: Ipv6Addr,
    mac: Option<[u8; 6]>,
    create: bool,
    out: &mut Output,
) {
    let Some(mac) = mac else {
        return;
    };
    if ctx.is_dry_run() || ip.is_unspecified() || ip.is_multicast() || v6.owns(ip) {
        return;
    }
    let confirmation = ctx
        .neighbors
        .confirm(uplink.segment, ip, mac, ctx.now_ms, create);
    out.note_confirmation(confirmation);
}

/// Sends a neighbour solicitation for `target` out of the uplink: to its solicited-node
/// group, or unicast to `unicast` (re-confirming a stale neighbour), from the switch's
/// address toward it. Returns whether it was sent.
pub fn solicit(
    out: &mut Output,
    uplink: &UplinkEntry,
    v6: &UplinkIpv6Entry,
    target: Ipv6Addr,
    unicast: Option<[u8; 6]>,
) -> bool {
    let request = NeighborSolicitationRepr {
        src_mac: uplink.mac,
        src: v6.source_for(target),
        target,
        unicast,
    };
    let sent = out.generated.push_built(
        request.len(),
        Verdict::Forward(uplink.id),
        Origin::Switch,
        |buf| request.emit(buf),
    );
    if sent {
        out.events.add(Event::NeighborSolicitationsSent);
    }
    sent
}

/// Answers the ICMPv6 echo request in `frame` in place, from its destination (an owned
/// address), back to `sender_mac` through `to` from `mac`.
pub(super) fn answer_echo(
    frame: &mut [u8],
    to: PortId,
    mac: [u8; 6],
    sender_mac: [u8; 6],
) -> Verdict {
    let Some((start, end)) = packet_bounds(frame) else {
        return Verdict::drop(L3Reason::NotRoutable6);
    };
    let packet = &mut frame[start..end];
    let Ok(info) = wire6::parse(packet) else {
        return Verdict::drop(L3Reason::NotRoutable6);
    };
    if !wire6::echo_reply_in_place(packet, &info, info.dst) {
        return Verdict::drop(L3Reason::BadChecksum);
    }
    if let Some(ethernet) = frame.get_mut(VNET_HDR_LEN..VNET_HDR_LEN + 12) {
        ethernet[..6].copy_from_slice(&sender_mac);
        ethernet[6..12].copy_from_slice(&mac);
    }
    // No offload on the answer: the checksum was computed in full.
    if let Some(header) = frame.get_mut(..VNET_HDR_LEN) {
        header.fill(0);
    }
    Verdict::Forward(to)
}

/// A packet from `ingress` (in `subnet`) to an IPv6 destination no route of its Network
/// covers (see the module doc). `None` when no IPv6 NAT applies: the caller answers "no
/// route". Rewrites `frame` in place.
pub fn outbound(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Option<Verdict> {
    let uplink = ctx.snapshot.uplink.as_ref()?;
    let v6 = uplink.ipv6.as_ref()?;
    let L3::Ipv6 { dst, .. } = parsed.l3 else {
        return None;
    };
    let (start, end) = packet_bounds(frame)?;
    let info = match ::nat::parse(&frame[start..end]) {
        Ok(info) => info,
        Err(error) => return Some(Verdict::Drop(nat::parse_cause(error))),
    };
    let zone = nat::zone_of(subnet.network_id);
    let back = Back::Subnet {
        subnet,
        port: ingress.id,
        sender_mac: parsed.src_mac,
    };
    let tracked = match ctx.conntrack_lookup(zone, &info) {
        Some(tracked) => {
            nat::note_tracked(ctx, zone, &info, &tracked);
            if let Err(cause) =
                super::policy::judge_reopened(ctx, Some(ingress.id), &info, &tracked)
            {
                return Some(Verdict::Drop(cause));
            }
            tracked
        }
        None => {
            if info.kind == PacketKind::IcmpError {
                return Some(Verdict::drop(DropReason::UntrackedIcmpError));
            }
            let rules = &ctx.snapshot.nat;
            let key = FlowKey::new(zone, info.tuple);
            if v6.owns(dst) && rules.destination(&key).is_none() {
                return Some(match info.kind {
                    PacketKind::IcmpEcho(EchoKind::Request) => {
                        answer_echo(frame, ingress.id, subnet.gateway_mac, parsed.src_mac)
                    }
                    _ => Verdict::drop(DropReason::Unsolicited),
                });
            }
            let plan = match rules.plan(&key, InterfaceId(ingress.id.0), |_| Egress::External) {
                Ok(plan) => plan,
                Err(PlanError::NoExternalAddress) => return None,
                Err(PlanError::Unsolicited) => return Some(Verdict::drop(DropReason::Unsolicited)),
            };
            if let Err(cause) = super::policy::judge_plan(ctx, Some(ingress.id), &info, &plan) {
                return Some(Verdict::Drop(cause));
            }
            match nat::create_with(
                ctx,
                zone,
                &info,
                &plan,
                Attachments::default(),
                &mut local.out,
            ) {
                Ok(tracked) => tracked,
                Err(verdict) => return Some(verdict),
            }
        }
    };
    Some(continue_in(ctx, &tracked, back, parsed, frame, local))
}

/// IPv6 from outside to an owned address (see the module doc). Rewrites `frame` in place.
fn inbound(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let L3::Ipv6 { dst, .. } = parsed.l3 else {
        return Verdict::drop(UplinkReason::Unsupported);
    };
    let Some((start, end)) = packet_bounds(frame) else {
        return Verdict::drop(L3Reason::NotRoutable6);
    };
    let info = match ::nat::parse(&frame[start..end]) {
        Ok(info) => info,
        Err(error) => return Verdict::Drop(nat::parse_cause(error)),
    };
    let back = Back::Uplink {
        uplink,
        from: dst,
        sender_mac: parsed.src_mac,
    };
    let tracked = match ctx.conntrack_lookup(Zone::EXTERNAL, &info) {
        Some(tracked) => {
            nat::note_tracked(ctx, Zone::EXTERNAL, &info, &tracked);
            if let Err(cause) = super::policy::judge_reopened(ctx, None, &info, &tracked) {
                return Verdict::Drop(cause);
            }
            tracked
        }
        None => {
            if info.kind == PacketKind::IcmpError {
                return Verdict::drop(DropReason::UntrackedIcmpError);
            }
            let rules = &ctx.snapshot.nat;
            let key = FlowKey::new(Zone::EXTERNAL, info.tuple);
            if info.kind == PacketKind::IcmpEcho(EchoKind::Request)
                && rules.destination(&key).is_none()
            {
                if !super::uplink::admits_echo(uplink) {
                    return Verdict::drop(UplinkReason::InboundDenied);
                }
                if !ctx.is_dry_run() && !local.out.echo_limiter.allow(uplink.id, ctx.now_ms) {
                    return Verdict::drop(L3Reason::EchoRateLimited);
                }
                trace_note!(ctx, Nat, "echo request to the uplink's {dst}: answered");
                local.out.events.add(Event::EchoReplied);
                return answer_echo(frame, uplink.id, uplink.mac, parsed.src_mac);
            }
            let interface = InterfaceId(uplink.id.0);
            let Ok(plan) = rules.plan(&key, interface, |_| Egress::External) else {
                return Verdict::drop(DropReason::Unsolicited);
            };
            if let Err(cause) = super::policy::judge_plan(ctx, None, &info, &plan) {
                return Verdict::Drop(cause);
            }
            match nat::create_with(
                ctx,
                Zone::EXTERNAL,
                &info,
                &plan,
                Attachments::default(),
                &mut local.out,
            ) {
                Ok(tracked) => tracked,
                Err(verdict) => return verdict,
            }
        }
    };
    continue_in(ctx, &tracked, back, parsed, frame, local)
}

/// Where a NAT66 packet leaves.
enum Exit<'a> {
    /// Out of the uplink, toward this neighbour.
    Uplink(&'a UplinkEntry, &'a UplinkIpv6Entry, Ipv6Addr),
    /// Into a subnet, toward this neighbour.
    Subnet(&'a SubnetEntry, Ipv6Addr),
}

/// Forwards a tracked IPv6 packet in its connection's egress zone toward its translated
/// destination (see the module doc).
pub(super) fn continue_in(
    ctx: &Context<'_>,
    tracked: &Tracked,
    back: Back<'_>,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let L3::Ipv6 { dst, hop_limit, .. } = parsed.l3 else {
        return Verdict::drop(L3Reason::NotRoutable6);
    };
    let destination = match tracked.target.map(|target| target.dst) {
        None => dst,
        Some(IpAddr::V6(address)) => address,
        Some(IpAddr::V4(_)) => return Verdict::drop(DropReason::AddressFamily),
    };
    if destination.is_multicast() || destination.is_unspecified() || destination.is_loopback() {
        return Verdict::drop(L3Reason::BadDestination);
    }
    let zone = tracked.egress_zone;
    let exit = if zone == Zone::EXTERNAL {
        ctx.snapshot
            .uplink
            .as_ref()
            .and_then(|uplink| Some((uplink, uplink.ipv6.as_ref()?)))
            .map(|(uplink, v6)| Exit::Uplink(uplink, v6, v6.next_hop(destination)))
    } else {
        ctx.snapshot
            .network(NetworkId(zone.0))
            .and_then(|network| network.lookup6(destination))
            .and_then(|route| Some((ctx.snapshot.subnet(route.subnet)?, route.next_hop)))
            .filter(|(egress, next_hop)| {
                egress
                    .v6
                    .as_ref()
                    .is_some_and(|v6| !(*next_hop == NextHop::Direct && v6.is_gateway(destination)))
            })
            .map(|(egress, next_hop)| Exit::Subnet(egress, next_hop.toward(destination)))
    };
    let Some(exit) = exit else {
        trace_note!(ctx, Route, "no IPv6 route to {destination} in zone {zone}");
        back.send(
            ctx,
            &mut local.out,
            frame,
            ErrorKind::DestinationUnreachable { code: 0 },
        );
        return Verdict::drop(L3Reason::NoRoute);
    };
    if hop_limit <= 1 {
        back.send(
            ctx,
            &mut local.out,
            frame,
            ErrorKind::TimeExceeded { code: 0 },
        );
        return Verdict::drop(L3Reason::HopLimitExceeded);
    }
    let Some((start, end)) = packet_bounds(frame) else {
        return Verdict::drop(L3Reason::NotRoutable6);
    };
    let mtu = match exit {
        Exit::Uplink(uplink, ..) => uplink.mtu,
        Exit::Subnet(egress, _) => egress.mtu,
    };
    if route6::segment_len(parsed, frame, start, end) > usize::from(mtu) {
        back.send(
            ctx,
            &mut local.out,
            frame,
            ErrorKind::PacketTooBig {
                mtu: u32::from(mtu),
            },
        );
        return Verdict::drop(L3Reason::PacketTooBig);
    }
    if let Some(target) = tracked.target {
        let mode = match parsed.vnet.checksum {
            VnetChecksum::Partial { .. } => ChecksumMode::Partial,
            VnetChecksum::None | VnetChecksum::Validated => ChecksumMode::Full,
        };
        if let Err(error) = ::nat::translate(&mut frame[start..end], &target, mode) {
            return Verdict::Drop(nat::translate_cause(error));
        }
        local.out.events.add(Event::NatTranslated);
    }
    if wire6::decrement_hop_limit(&mut frame[start..end]).is_none() {
        return Verdict::drop(L3Reason::HopLimitExceeded);
    }
    let (segment, hop, src_mac) = match exit {
        Exit::Uplink(uplink, _, hop) => (uplink.segment, hop, uplink.mac),
        Exit::Subnet(egress, hop) => (egress.id, hop, egress.gateway_mac),
    };
    route6::set_macs(frame, src_mac, None);
    let now = ctx.now_ms;
    let resolution = if ctx.is_dry_run() {
        ctx.neighbors.peek(segment, hop)
    } else {
        ctx.neighbors.resolve(segment, hop, now)
    };
    trace_note!(ctx, Neighbor, "next hop {hop}: {:?}", resolution);
    let solicit = |out: &mut Output, unicast: Option<[u8; 6]>| match exit {
        Exit::Uplink(uplink, v6, _) => {
            solicit(out, uplink, v6, hop, unicast);
        }
        Exit::Subnet(egress, _) => {
            super::nd::solicit(ctx, out, egress, hop, unicast);
        }
    };
    match resolution {
        Resolution::Known { mac, probe } => {
            if probe {
                solicit(&mut local.out, Some(mac));
            }
            route6::set_macs(frame, src_mac, Some(mac));
            match exit {
                Exit::Uplink(uplink, ..) => {
                    local.out.events.add(Event::Routed);
                    Verdict::Forward(uplink.id)
                }
                Exit::Subnet(egress, _) => {
                    let ingress = match back {
                        Back::Subnet { port, .. } => port,
                        Back::Uplink { uplink, .. } => uplink.id,
                    };
                    route6::deliver(ctx, ingress, egress, frame, &mut local.out)
                }
            }
        }
        Resolution::Unresolved { solicit: send } => {
            if send {
                solicit(&mut local.out, None);
            }
            let (ingress, sender_mac) = match back {
                Back::Subnet {
                    port, sender_mac, ..
                } => (port, sender_mac),
                Back::Uplink {
                    uplink, sender_mac, ..
                } => (uplink.id, sender_mac),
            };
            let held = Held {
                subnet: segment,
                next_hop: hop.into(),
                ingress,
                sender_mac,
                deadline_ms: now.saturating_add(HOLD_MS),
                translated: tracked.target.is_some(),
            };
            local.hold(held, frame)
        }
        Resolution::TableFull => Verdict::drop(L3Reason::NeighborTableFull),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::DropCause;
    use crate::pipeline::fixtures::*;
    use crate::tables::snapshot::Snapshot;
    use crate::wire::checksum::{combine, pseudo_header_ipv6, sum};

    const NAT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    const GW6_OUT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 9);
    const IP: usize = VNET_HDR_LEN + 14;

    /// [`uplink_snapshot`]'s with IPv6 on the uplink (2001:db8:1::10/64, gateway
    /// 2001:db8:1::1) and Network 0's NATGateway masquerading to it too.
    fn snapshot6() -> Snapshot {
        let mut uplink = uplink_entry();
        uplink.ipv6 = Some(UplinkIpv6Entry {
            addresses: vec!["2001:db8:1::10/64".parse().expect("prefix")],
            gateway: GW6_OUT,
            link_local: wire6::link_local_from_mac(UPLINK_MAC),
        });
        let mut rules = ::nat::NatRules::new();
        rules
            .add_gateway(
                ::nat::Zone(0),
                ::nat::Gateway::new(vec![NAT_IP.into(), NAT6.into()]),
            )
            .expect("gateway");
        let conntrack = Arc::new(::nat::Conntrack::new(::nat::ConntrackConfig::default()));
        routed_snapshot()
            .with_uplink(Some(uplink))
            .with_nat(Arc::new(rules), conntrack)
    }

    /// An ICMPv6 echo (request or reply) frame with a valid checksum.
    fn echo(
        macs: ([u8; 6], [u8; 6]),
        src: Ipv6Addr,
        dst: Ipv6Addr,
        request: bool,
        ident: u16,
    ) -> Vec<u8> {
        let mut icmp = vec![if request { 128 } else { 129 }, 0, 0, 0];
        icmp.extend_from_slice(&ident.to_be_bytes());
        icmp.extend_from_slice(&[0, 1, 0xaa, 0xbb]);
        let pseudo = pseudo_header_ipv6(src, dst, 58, u32::try_from(icmp.len()).unwrap());
        let checksum = !combine(&[pseudo, sum(&icmp)]);
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&macs.1);
        frame.extend_from_slice(&macs.0);
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        frame.extend_from_slice(&u16::try_from(icmp.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&[58, 64]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        frame.extend_from_slice(&icmp);
        frame
    }

    /// Source, destination, hop limit and echo identifier of an echo frame, after checking
    /// its ICMPv6 checksum.
    fn echo_of(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr, u8, u16) {
        let packet = &frame[IP..];
        let info = wire6::parse(packet).expect("IPv6");
        let icmp = &packet[info.l4_offset..info.packet_len];
        assert!(
            wire6::icmpv6_checksum_ok(info.src, info.dst, icmp),
            "ICMPv6 checksum"
        );
        (
            info.src,
            info.dst,
            packet[7],
            u16::from_be_bytes([icmp[4], icmp[5]]),
        )
    }

    fn solicitation(target: Ipv6Addr) -> Vec<u8> {
        let repr = NeighborSolicitationRepr {
            src_mac: OUTSIDE_GW_MAC,
            src: GW6_OUT,
            target,
            unicast: None,
        };
        let mut frame = vec![0u8; VNET_HDR_LEN + repr.len()];
        repr.emit(&mut frame[VNET_HDR_LEN..]);
        frame
    }

    #[test]
    fn masquerade66_out_and_back() {
        let bench = Bench::with(snapshot6());
        bench
            .neighbors
            .confirm(UPLINK_SEGMENT, GW6_OUT, OUTSIDE_GW_MAC, 0, true);
        bench
            .neighbors
            .confirm(crate::tables::snapshot::SubnetId(1), IP6_A, MAC_A, 0, true);
        let blue = bench
            .snapshot
            .subnet(crate::tables::snapshot::SubnetId(1))
            .unwrap();
        bench.fdb.learn(blue, MAC_A, PortId(1), 0);

        let request = echo((MAC_A, GW_BLUE_MAC), IP6_A, REMOTE6, true, 7);
        let (outcome, out) = bench.run(1, &request, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
        let (src, dst, hop_limit, ident) = echo_of(&out);
        assert_eq!((src, dst, hop_limit), (NAT6, REMOTE6, 63));
        assert_eq!(
            &out[VNET_HDR_LEN..VNET_HDR_LEN + 12],
            &[OUTSIDE_GW_MAC, UPLINK_MAC].concat()[..]
        );

        let reply = echo((OUTSIDE_GW_MAC, UPLINK_MAC), REMOTE6, NAT6, false, ident);
        let (outcome, back) = bench.run_uplink(&reply, 1);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(1)));
        assert_eq!(echo_of(&back), (REMOTE6, IP6_A, 63, 7));
        assert_eq!(
            &back[VNET_HDR_LEN..VNET_HDR_LEN + 12],
            &[MAC_A, GW_BLUE_MAC].concat()[..]
        );

        // Unsolicited from outside: dropped without an answer.
        let stray = echo((OUTSIDE_GW_MAC, UPLINK_MAC), REMOTE6, NAT6, false, 999);
        let (outcome, _) = bench.run_uplink(&stray, 2);
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropCause::Nat(DropReason::Unsolicited))
        );
        assert!(bench.generated().is_empty());
        // An echo request to the uplink's address is answered from it.
        let ping = echo((OUTSIDE_GW_MAC, UPLINK_MAC), REMOTE6, NAT6, true, 5);
        let (outcome, answer) = bench.run_uplink(&ping, 3);
        assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
        assert_eq!(echo_of(&answer).0, NAT6);
    }

    #[test]
    fn unresolved_gateway_holds_and_solicits_from_the_owned_address() {
        let bench = Bench::with(snapshot6());
        let request = echo((MAC_A, GW_BLUE_MAC), IP6_A, REMOTE6, true, 7);
        let (outcome, _) = bench.run(1, &request, 0);
        assert_eq!(outcome.verdict, Verdict::Consumed);
        let generated = bench.generated();
        assert_eq!(generated.len(), 1, "one solicitation");
        let (verdict, _, ns) = &generated[0];
        assert_eq!(*verdict, Verdict::Forward(UPLINK));
        let info = wire6::parse(&ns[IP..]).expect("IPv6");
        assert_eq!(
            info.src, NAT6,
            "from the owned address on the gateway's link"
        );
        assert_eq!(&ns[IP + 40 + 8..IP + 40 + 24], &GW6_OUT.octets()[..]);
    }

    /// A neighbour advertisement to the switch, with the target's MAC and flags.
    fn advertisement(target: Ipv6Addr, mac: [u8; 6], solicited: bool, override_: bool) -> Vec<u8> {
        let repr = NeighborAdvertisementRepr {
            eth: Ethernet {
                src: mac,
                dst: UPLINK_MAC,
            },
            src: target,
            dst: NAT6,
            target,
            router: true,
            solicited,
            override_,
            target_mac: mac,
        };
        let mut frame = vec![0u8; VNET_HDR_LEN + repr.len()];
        repr.emit(&mut frame[VNET_HDR_LEN..]);
        frame
    }

    #[test]
    fn advertisements_complete_what_the_switch_asked_and_nothing_else() {
        let bench = Bench::with(snapshot6());
        let other = [0x02, 0, 0, 0, 0x66, 0x66];
        // Unsolicited, for an address the switch never asked about: no entry.
        let (outcome, _) = bench.run_uplink(&advertisement(REMOTE6, other, false, true), 0);
        assert_eq!(outcome.verdict, Verdict::Consumed);
        assert_eq!(bench.neighbors.lookup(UPLINK_SEGMENT, REMOTE6), None);
        // Nobody may claim the switch's own address.
        bench.run_uplink(&advertisement(NAT6, other, true, true), 0);
        assert_eq!(bench.neighbors.lookup(UPLINK_SEGMENT, NAT6), None);
        // The gateway's answer to the switch's solicitation completes the entry.
        let request = echo((MAC_A, GW_BLUE_MAC), IP6_A, REMOTE6, true, 7);
        assert_eq!(bench.run(1, &request, 0).0.verdict, Verdict::Consumed);
        bench.run_uplink(&advertisement(GW6_OUT, OUTSIDE_GW_MAC, true, true), 1);
        assert_eq!(
            bench.neighbors.lookup(UPLINK_SEGMENT, GW6_OUT),
            Some(OUTSIDE_GW_MAC)
        );
        // Without the override flag a known neighbour does not move; with it, it does.
        bench.run_uplink(&advertisement(GW6_OUT, other, false, false), 2);
        assert_eq!(
            bench.neighbors.lookup(UPLINK_SEGMENT, GW6_OUT),
            Some(OUTSIDE_GW_MAC)
        );
        bench.run_uplink(&advertisement(GW6_OUT, other, false, true), 3);
        assert_eq!(bench.neighbors.lookup(UPLINK_SEGMENT, GW6_OUT), Some(other));
    }

    #[test]
    fn sources_no_router_forwards_never_enter() {
        let bench = Bench::with(snapshot6());
        for src in [
            wire6::link_local_from_mac(OUTSIDE_GW_MAC),
            NAT6,
            Ipv6Addr::LOCALHOST,
        ] {
            let ping = echo((OUTSIDE_GW_MAC, UPLINK_MAC), src, NAT6, true, 5);
            let (outcome, _) = bench.run_uplink(&ping, 0);
            assert_eq!(
                outcome.verdict,
                Verdict::Drop(DropCause::Uplink(UplinkReason::RoutedSource)),
                "{src}"
            );
        }
    }

    #[test]
    fn uplink_answers_solicitations_for_its_own_addresses_only() {
        let bench = Bench::with(snapshot6());
        let (outcome, _) = bench.run_uplink(&solicitation(NAT6), 0);
        assert_eq!(outcome.verdict, Verdict::Consumed);
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let (verdict, _, na) = &generated[0];
        assert_eq!(*verdict, Verdict::Forward(UPLINK));
        let info = wire6::parse(&na[IP..]).expect("IPv6");
        assert_eq!((info.src, info.dst), (NAT6, GW6_OUT));
        assert_eq!(na[IP + 40], 136, "neighbour advertisement");
        assert_eq!(&na[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &UPLINK_MAC);
        // The solicitor is learnt (its source link-layer address).
        assert_eq!(
            bench.neighbors.lookup(UPLINK_SEGMENT, GW6_OUT),
            Some(OUTSIDE_GW_MAC)
        );
        // The switch's link-local address is its own too.
        let link_local = wire6::link_local_from_mac(UPLINK_MAC);
        let (outcome, _) = bench.run_uplink(&solicitation(link_local), 1);
        assert_eq!(outcome.verdict, Verdict::Consumed);
        // Someone else's address is the host's business.
        let (outcome, _) = bench.run_uplink(&solicitation(REMOTE6), 2);
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropCause::Uplink(UplinkReason::NotOwned))
        );
        // ND with a hop limit other than 255 is invalid.
        let mut forged = solicitation(NAT6);
        forged[IP + 7] = 64;
        let (outcome, _) = bench.run_uplink(&forged, 3);
        assert_eq!(
            outcome.verdict,
            Verdict::Drop(DropCause::L3(L3Reason::NdInvalid))
        );
    }
}
