//! Stage `l3` for IPv6: IPv6 frames addressed to the ingress subnet's gateway MAC (neighbour
//! discovery is [`nd`](super::nd)'s). Drops are counted under the `l3` stage's reasons.
//!
//! For each packet, in the order Linux's `ip6_forward` applies them:
//! 1. the ingress subnet must be dual-stack, and the destination routable: link-local,
//!    multicast, unspecified and loopback destinations that are not the switch's, and
//!    link-local sources, are not routed (`l3.ipv6_not_routable`; a link-local source gets
//!    destination unreachable "beyond scope", code 2);
//! 2. a gateway address (the ingress subnet's, global or link-local, or that of the connected
//!    subnet it routes to) is the switch itself: echo requests are answered (rate-limited per
//!    port, `l3.echo_rate_limited`), UDP gets port unreachable, anything else is dropped
//!    (`l3.to_gateway`);
//! 3. a LoadBalancer's address in the ingress Network (from a routable source) is the
//!    [`lb`](super::lb) stage's (and a health probe's answer to the gateway is taken there
//!    too);
//! 4. longest-prefix match in the ingress subnet's Network (connected and peered Subnets'
//!    prefixes, static Routes through a router on one of its Subnets): none, or an egress
//!    subnet without IPv6, is `l3.no_route` with destination unreachable "no route" (code 0);
//! 5. hop limit <= 1: time exceeded (code 0) from the ingress gateway, `l3.hop_limit_exceeded`;
//! 6. larger than the egress subnet's MTU (a GSO super-frame by one segment): packet too big
//!    with the MTU (RFC 8201; routers never fragment IPv6), `l3.packet_too_big`;
//! 7. the hop limit is decremented (IPv6 has no header checksum) and the source MAC becomes
//!    the egress gateway's;
//! 8. the next hop (the destination, or a static Route's router) is resolved in the shared
//!    neighbour table; unknown, the packet is held
//!    (as IPv4's, in the worker's hold queue) and a neighbour solicitation goes to its
//!    solicited-node group; `l3.nd_timeout` with address unreachable (code 3) when nobody
//!    answers;
//! 9. the [`l2`] decision in the egress subnet picks the port.
//!
//! ICMPv6 errors follow RFC 4443 2.4: never about an error, a redirect, a packet to a
//! multicast group (but packet too big) or from an unspecified, multicast or loopback
//! source; at most 1280 bytes; rate-limited with IPv4's errors (`l3.icmp_rate_limited`).
//! Routed traffic from a port's own address confirms it as a neighbour, so replies need no
//! solicitation.

use std::net::Ipv6Addr;

use super::generated::Origin;
use super::l3::DropReason;
use super::parse::{L3, Parsed};
use super::{Context, Local, Output, Verdict, l2, nd};
use crate::port::PortId;
use crate::tables::counters::Event;
use crate::tables::fdb::is_group;
use crate::tables::held::{HOLD_MS, Held};
use crate::tables::neigh::Resolution;
use crate::tables::snapshot::{NextHop, PortEntry, SubnetEntry};
use crate::wire::VNET_HDR_LEN;
use crate::wire::ipv6::{self as wire6, ErrorKind, ErrorRepr, Ethernet};

/// Ethernet header length.
const ETHERNET_HEADER_LEN: usize = 14;

/// ICMPv6 echo request.
const ECHO_REQUEST: u8 = 128;

/// UDP's next header value.
const UDP: u8 = 17;

/// TCP's next header value.
const TCP: u8 = 6;

/// The IPv6 packet of `frame` (virtio header + Ethernet): its start and end (40 + payload
/// length; link padding excluded). `None` when the frame holds no IPv6 packet.
pub fn packet_bounds(frame: &[u8]) -> Option<(usize, usize)> {
    let start = VNET_HDR_LEN + ETHERNET_HEADER_LEN;
    let header = frame.get(start..start + wire6::HEADER_LEN)?;
    let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let end = start + wire6::HEADER_LEN + payload;
    (end <= frame.len()).then_some((start, end))
}

/// Routes an IPv6 frame from `ingress` (in `subnet`) sent to the gateway MAC (see the
/// module docs). The frame is rewritten in place.
pub fn route(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let L3::Ipv6 {
        src,
        dst,
        next_header,
        hop_limit,
        icmp_type,
        ..
    } = parsed.l3
    else {
        return Verdict::drop(DropReason::NotRoutable6);
    };
    let now = ctx.now_ms;
    let Some(v6) = &subnet.v6 else {
        trace_note!(
            ctx,
            Route,
            "subnet {} has no IPv6 prefix: not routed",
            subnet.name
        );
        return Verdict::drop(DropReason::NotRoutable6);
    };
    let errors = ErrorTo {
        port: ingress.id,
        subnet,
        sender_mac: parsed.src_mac,
        link_multicast: is_group(parsed.dst_mac),
    };
    if v6.is_gateway(dst) {
        if let Some(verdict) = super::lb::probe_answer(ctx, ingress, subnet, parsed, frame, local) {
            return verdict;
        }
        return to_gateway(
            ctx,
            ingress,
            subnet,
            &errors,
            next_header,
            icmp_type,
            frame,
            local,
        );
    }
    if dst.is_multicast() || dst.is_unspecified() || dst.is_loopback() || wire6::is_link_local(dst)
    {
        trace_note!(ctx, Route, "{dst} is not routed");
        return Verdict::drop(DropReason::NotRoutable6);
    }
    if wire6::is_link_local(src) {
        errors.send(
            ctx,
            local,
            frame,
            ErrorKind::DestinationUnreachable { code: 2 },
        );
        trace_note!(
            ctx,
            Route,
            "link-local source {src} is not routed beyond its link"
        );
        return Verdict::drop(DropReason::NotRoutable6);
    }
    if let Some(balancer) = ctx.snapshot.balancer(subnet.network_id, dst.into()) {
        return super::lb::forward(ctx, ingress, subnet, parsed, frame, local, balancer);
    }
    let found = ctx
        .snapshot
        .network(subnet.network_id)
        .and_then(|network| network.lookup6(dst))
        .and_then(|route| Some((ctx.snapshot.subnet(route.subnet)?, route.next_hop)))
        .filter(|(egress, _)| egress.v6.is_some());
    let Some((egress, next_hop)) = found else {
        // No route in the Network: out through the uplink with NAT66, when it applies.
        if let Some(verdict) = super::nat6::outbound(ctx, ingress, subnet, parsed, frame, local) {
            return verdict;
        }
        trace_note!(
            ctx,
            Route,
            "no IPv6 route to {dst} in Network {}",
            subnet.network
        );
        errors.send(
            ctx,
            local,
            frame,
            ErrorKind::DestinationUnreachable { code: 0 },
        );
        return Verdict::drop(DropReason::NoRoute);
    };
    if next_hop == NextHop::Direct && egress.v6.as_ref().is_some_and(|e| e.is_gateway(dst)) {
        return to_gateway(
            ctx,
            ingress,
            subnet,
            &errors,
            next_header,
            icmp_type,
            frame,
            local,
        );
    }
    let hop = next_hop.toward(dst);
    trace_note!(
        ctx,
        Route,
        "{dst} via subnet {} ({})",
        egress.name,
        match next_hop {
            NextHop::Direct => "connected".to_owned(),
            NextHop::Via(router) => format!("via {router}"),
        }
    );
    if hop_limit <= 1 {
        errors.send(ctx, local, frame, ErrorKind::TimeExceeded { code: 0 });
        return Verdict::drop(DropReason::HopLimitExceeded);
    }
    let Some((start, end)) = packet_bounds(frame) else {
        return Verdict::drop(DropReason::NotRoutable6);
    };
    let mtu = usize::from(egress.mtu);
    if segment_len(parsed, frame, start, end) > mtu {
        errors.send(
            ctx,
            local,
            frame,
            ErrorKind::PacketTooBig {
                mtu: u32::from(egress.mtu),
            },
        );
        trace_note!(
            ctx,
            Route,
            "larger than the MTU {mtu} of subnet {}",
            egress.name
        );
        return Verdict::drop(DropReason::PacketTooBig);
    }
    if let Err(cause) = super::policy::admit(ctx, subnet.network_id, Some(ingress.id), None, frame)
    {
        return Verdict::Drop(cause);
    }
    confirm_sender(ctx, ingress, subnet, src, parsed.src_mac, &mut local.out);
    if wire6::decrement_hop_limit(&mut frame[start..end]).is_none() {
        return Verdict::drop(DropReason::HopLimitExceeded);
    }
    set_macs(frame, egress.gateway_mac, None);
    let resolution = if ctx.is_dry_run() {
        ctx.neighbors.peek(egress.id, hop)
    } else {
        ctx.neighbors.resolve(egress.id, hop, now)
    };
    trace_note!(
        ctx,
        Neighbor,
        "next hop {hop} on subnet {}: {:?}",
        egress.name,
        resolution
    );
    match resolution {
        Resolution::Known { mac, probe } => {
            if probe {
                nd::solicit(ctx, &mut local.out, egress, hop, Some(mac));
            }
            set_macs(frame, egress.gateway_mac, Some(mac));
            deliver(ctx, ingress.id, egress, frame, &mut local.out)
        }
        Resolution::Unresolved { solicit } => {
            if solicit {
                nd::solicit(ctx, &mut local.out, egress, hop, None);
            }
            let held = Held {
                subnet: egress.id,
                next_hop: hop.into(),
                ingress: ingress.id,
                sender_mac: parsed.src_mac,
                deadline_ms: now.saturating_add(HOLD_MS),
                translated: false,
            };
            local.hold(held, frame)
        }
        Resolution::TableFull => Verdict::drop(DropReason::NeighborTableFull),
    }
}

/// The length of the packet as it leaves: for a GSO super-frame one segment (`gso_size` plus
/// the IPv6 and TCP headers), else the whole packet.
pub(super) fn segment_len(parsed: &Parsed, frame: &[u8], start: usize, end: usize) -> usize {
    let Some(gso) = parsed.vnet.gso else {
        return end - start;
    };
    let headers = frame
        .get(start..end)
        .and_then(|packet| {
            let info = wire6::parse(packet).ok()?;
            let l4 = packet.get(info.l4_offset..)?;
            let l4_len = if info.next_header == TCP {
                usize::from(l4.get(12)? >> 4) * 4
            } else {
                8
            };
            Some(info.l4_offset + l4_len)
        })
        .unwrap_or(wire6::HEADER_LEN);
    headers + usize::from(gso.size)
}

/// Rewrites the Ethernet source (and destination, when given) of `frame`.
pub(super) fn set_macs(frame: &mut [u8], src: [u8; 6], dst: Option<[u8; 6]>) {
    if let Some(ethernet) = frame.get_mut(VNET_HDR_LEN..VNET_HDR_LEN + ETHERNET_HEADER_LEN) {
        ethernet[6..12].copy_from_slice(&src);
        if let Some(dst) = dst {
            ethernet[..6].copy_from_slice(&dst);
        }
    }
}

/// Sends a routed IPv6 frame (hop limit decremented, MACs rewritten) into `egress`: the
/// [`l2`] decision there.
pub fn deliver(
    ctx: &Context<'_>,
    ingress: PortId,
    egress: &SubnetEntry,
    frame: &[u8],
    out: &mut Output,
) -> Verdict {
    let Some(dst_mac) = frame
        .get(VNET_HDR_LEN..VNET_HDR_LEN + 6)
        .and_then(|b| <[u8; 6]>::try_from(b).ok())
    else {
        return Verdict::drop(DropReason::NotRoutable6);
    };
    let verdict = l2::destination(ctx, egress, dst_mac, Some(ingress));
    if !matches!(verdict, Verdict::Drop(_)) {
        out.events.add(Event::Routed);
    }
    verdict
}

/// Records the sender of a routed packet from one of `ingress`'s own addresses as a
/// neighbour (port security vouched for both its address and MAC).
fn confirm_sender(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    src: Ipv6Addr,
    mac: [u8; 6],
    out: &mut Output,
) {
    if !ingress.ips6.contains(&src) || ctx.is_dry_run() {
        return;
    }
    let confirmation = ctx.neighbors.confirm(subnet.id, src, mac, ctx.now_ms, true);
    out.note_confirmation(confirmation);
}

/// A packet for one of the switch's gateway addresses: echo requests are answered in place,
/// UDP gets port unreachable, the rest is dropped.
#[allow(clippy::too_many_arguments)]
fn to_gateway(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    errors: &ErrorTo<'_>,
    next_header: u8,
    icmp_type: u8,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    if next_header == super::parse::ICMPV6 && icmp_type == ECHO_REQUEST {
        if !ctx.is_dry_run() && !local.out.echo_limiter.allow(ingress.id, ctx.now_ms) {
            return Verdict::drop(DropReason::EchoRateLimited);
        }
        let Some((start, end)) = packet_bounds(frame) else {
            return Verdict::drop(DropReason::NotRoutable6);
        };
        let packet = &mut frame[start..end];
        let Ok(info) = wire6::parse(packet) else {
            return Verdict::drop(DropReason::NotRoutable6);
        };
        // The reply comes from the address that was asked (global or link-local).
        if !wire6::echo_reply_in_place(packet, &info, info.dst) {
            return Verdict::drop(DropReason::BadChecksum);
        }
        set_macs(frame, subnet.gateway_mac, Some(errors.sender_mac));
        // No offload on the answer: the checksum was computed in full.
        if let Some(header) = frame.get_mut(..VNET_HDR_LEN) {
            header.fill(0);
        }
        trace_note!(ctx, L3, "echo request to the gateway: answered");
        local.out.events.add(Event::EchoReplied);
        return Verdict::Forward(ingress.id);
    }
    if next_header == UDP {
        errors.send(
            ctx,
            local,
            frame,
            ErrorKind::DestinationUnreachable { code: 4 },
        );
    }
    Verdict::drop(DropReason::ToGateway)
}

/// Where the ICMPv6 errors about one packet go: back to its sender, from its subnet's
/// gateway.
struct ErrorTo<'a> {
    port: PortId,
    subnet: &'a SubnetEntry,
    sender_mac: [u8; 6],
    link_multicast: bool,
}

impl ErrorTo<'_> {
    /// Sends the error `kind` about the packet in `frame` unless RFC 4443 2.4 or the rate
    /// limit forbid it (never in a dry run).
    fn send(&self, ctx: &Context<'_>, local: &mut Local, frame: &[u8], kind: ErrorKind) -> bool {
        if ctx.is_dry_run() {
            return false;
        }
        let Some((start, end)) = packet_bounds(frame) else {
            return false;
        };
        send_error(
            &mut local.out,
            ctx.now_ms,
            kind,
            self.subnet,
            self.port,
            self.sender_mac,
            &frame[start..end],
            self.link_multicast,
        )
    }
}

/// Sends the ICMPv6 error `kind` about `original` (the IPv6 packet as received from
/// `sender_mac` on port `to` of `subnet`) from the subnet's gateway (its link-local address
/// when the original's source is link-local). Returns whether it was sent.
#[allow(clippy::too_many_arguments)]
pub fn send_error(
    out: &mut Output,
    now_ms: u64,
    kind: ErrorKind,
    subnet: &SubnetEntry,
    to: PortId,
    sender_mac: [u8; 6],
    original: &[u8],
    link_multicast: bool,
) -> bool {
    let Some(v6) = &subnet.v6 else {
        return false;
    };
    let source_is_link_local = original
        .get(8..24)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .is_some_and(|b| wire6::is_link_local(Ipv6Addr::from(b)));
    let src = if source_is_link_local {
        v6.link_local
    } else {
        v6.gateway
    };
    send_error_from(
        out,
        now_ms,
        kind,
        (subnet.gateway_mac, src),
        to,
        sender_mac,
        original,
        link_multicast,
    )
}

/// Sends the ICMPv6 error `kind` about `original` (the IPv6 packet as received from
/// `sender_mac` on port `to`) from `(mac, address)`, unless RFC 4443 2.4 or the rate limit
/// forbid it. Returns whether it was sent.
#[allow(clippy::too_many_arguments)]
pub fn send_error_from(
    out: &mut Output,
    now_ms: u64,
    kind: ErrorKind,
    (src_mac, src): ([u8; 6], Ipv6Addr),
    to: PortId,
    sender_mac: [u8; 6],
    original: &[u8],
    link_multicast: bool,
) -> bool {
    if !wire6::may_send_error(original, &kind, link_multicast) {
        return false;
    }
    if !out.icmp_limiter.allow(now_ms) {
        out.events.add(Event::IcmpRateLimited);
        return false;
    }
    let repr = ErrorRepr {
        eth: Ethernet {
            src: src_mac,
            dst: sender_mac,
        },
        src,
        kind,
        original,
    };
    let sent = out
        .generated
        .push_built(repr.len(), Verdict::Forward(to), Origin::Switch, |buf| {
            repr.emit(buf)
        });
    if sent {
        out.events.add(Event::IcmpSent);
    }
    sent
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::{DropCause, Verdict};
    use crate::wire::checksum::{combine, pseudo_header_ipv6, sum};

    /// An Ethernet frame (with a zeroed virtio header) from `src_mac` to `dst_mac` carrying
    /// an ICMPv6 echo request `src -> dst` with `hop_limit` and `data` bytes of payload.
    pub(crate) fn echo6(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        data: usize,
    ) -> Vec<u8> {
        let mut icmp = vec![128, 0, 0, 0, 0, 7, 0, 1];
        icmp.extend((0..data).map(|i| u8::try_from(i % 251).unwrap()));
        let pseudo = pseudo_header_ipv6(src, dst, 58, u32::try_from(icmp.len()).unwrap());
        let checksum = !combine(&[pseudo, sum(&icmp)]);
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&dst_mac);
        frame.extend_from_slice(&src_mac);
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        frame.extend_from_slice(&u16::try_from(icmp.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&[58, hop_limit]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        frame.extend_from_slice(&icmp);
        frame
    }

    fn dropped(reason: DropReason) -> Verdict {
        Verdict::Drop(DropCause::L3(reason))
    }

    #[test]
    fn echo_to_the_gateway_is_answered_in_place() {
        let bench = Bench::with(routed_snapshot());
        let frame = echo6(MAC_A, GW_BLUE_MAC, IP6_A, GW6_BLUE, 64, 16);
        let (outcome, reply) = bench.run(1, &frame, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(crate::port::PortId(1)));
        let packet = &reply[VNET_HDR_LEN + 14..];
        let info = wire6::parse(packet).expect("reply parses");
        assert_eq!((info.src, info.dst, packet[40]), (GW6_BLUE, IP6_A, 129));
        assert!(wire6::icmpv6_checksum_ok(info.src, info.dst, &packet[40..]));
        assert_eq!(
            &reply[VNET_HDR_LEN..VNET_HDR_LEN + 12],
            &[MAC_A, GW_BLUE_MAC].concat()[..]
        );
    }

    #[test]
    fn routed_hop_limit_and_macs_and_errors() {
        let bench = Bench::with(routed_snapshot());
        let now = 0;
        // The destination is known (it sent routed traffic first): routed at once.
        let back = echo6(MAC_D, GW_RED_MAC, IP6_D, IP6_A, 64, 8);
        let first = bench.send(4, &back, now).verdict;
        assert_eq!(
            first,
            Verdict::Consumed,
            "held: fd00::a is not resolved yet"
        );
        let frame = echo6(MAC_A, GW_BLUE_MAC, IP6_A, IP6_D, 64, 8);
        let (outcome, routed) = bench.run(1, &frame, now);
        assert_eq!(outcome.verdict, Verdict::Forward(crate::port::PortId(4)));
        assert_eq!(routed[VNET_HDR_LEN + 14 + 7], 63, "hop limit decremented");
        assert_eq!(
            &routed[VNET_HDR_LEN..VNET_HDR_LEN + 12],
            &[MAC_D, GW_RED_MAC].concat()[..]
        );
        // Hop limit 1: time exceeded from the ingress gateway.
        let expiring = echo6(MAC_A, GW_BLUE_MAC, IP6_A, IP6_D, 1, 8);
        assert_eq!(
            bench.send(1, &expiring, now).verdict,
            dropped(DropReason::HopLimitExceeded)
        );
        let (_, _, error) = bench.generated().pop().expect("time exceeded sent");
        let packet = &error[VNET_HDR_LEN + 14..];
        assert_eq!((packet[40], packet[41]), (3, 0));
        assert_eq!(wire6::parse(packet).unwrap().src, GW6_BLUE);
        // No route: unreachable, code 0.
        let nowhere = echo6(MAC_A, GW_BLUE_MAC, IP6_A, "fd99::1".parse().unwrap(), 64, 8);
        assert_eq!(
            bench.send(1, &nowhere, now).verdict,
            dropped(DropReason::NoRoute)
        );
        let (_, _, error) = bench.generated().pop().expect("unreachable sent");
        assert_eq!((error[VNET_HDR_LEN + 54], error[VNET_HDR_LEN + 55]), (1, 0));
        // Too big for red's MTU (1500): packet too big with the MTU.
        let big = echo6(MAC_A, GW_BLUE_MAC, IP6_A, IP6_D, 64, 1500);
        assert_eq!(
            bench.send(1, &big, now).verdict,
            dropped(DropReason::PacketTooBig)
        );
        let (_, _, error) = bench.generated().pop().expect("packet too big sent");
        let packet = &error[VNET_HDR_LEN + 14..];
        assert_eq!(packet[40], 2);
        assert_eq!(
            u32::from_be_bytes([packet[44], packet[45], packet[46], packet[47]]),
            1500
        );
        assert!(packet.len() <= wire6::MIN_MTU);
        // Link-local and multicast destinations are not routed.
        for dst in ["fe80::1", "ff02::1", "::1"] {
            let frame = echo6(MAC_A, GW_BLUE_MAC, IP6_A, dst.parse().unwrap(), 64, 8);
            assert_eq!(
                bench.send(1, &frame, now).verdict,
                dropped(DropReason::NotRoutable6),
                "{dst}"
            );
        }
    }

    #[test]
    fn unresolved_next_hop_is_held_and_solicited() {
        let bench = Bench::with(routed_snapshot());
        let frame = echo6(MAC_A, GW_BLUE_MAC, IP6_A, IP6_D, 64, 8);
        assert_eq!(bench.send(1, &frame, 0).verdict, Verdict::Consumed);
        let (verdict, _, solicitation) = bench.generated().pop().expect("NS sent");
        assert_eq!(
            verdict,
            Verdict::FloodSubnet {
                subnet: crate::tables::snapshot::SubnetId(2),
                except: None
            }
        );
        let packet = &solicitation[VNET_HDR_LEN + 14..];
        let info = wire6::parse(packet).unwrap();
        assert_eq!(info.dst, wire6::solicited_node(IP6_D));
        assert_eq!((info.hop_limit, packet[40]), (255, 135));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Whatever a port sends to its gateway over IPv6 — mutated headers and next-header
        /// values, extension chains, lengths, offload fields — routing and neighbour
        /// discovery never panic, and whatever they emit is at least a whole Ethernet header.
        #[test]
        fn never_panics_on_mutated_ipv6_frames_to_the_gateway(
            flips in proptest::collection::vec((0usize..96, proptest::prelude::any::<u8>()), 0..10),
            vnet in proptest::collection::vec(proptest::prelude::any::<u8>(), VNET_HDR_LEN),
            extra in 0usize..1600,
            known in proptest::prelude::any::<bool>(),
            to_gateway in proptest::prelude::any::<bool>(),
        ) {
            let bench = Bench::with(routed_snapshot());
            if known {
                bench.send(4, &echo6(MAC_D, GW_RED_MAC, IP6_D, IP6_A, 64, 8), 0);
            }
            let dst = if to_gateway { GW6_BLUE } else { IP6_D };
            let mut frame = echo6(MAC_A, GW_BLUE_MAC, IP6_A, dst, 64, extra);
            frame[..VNET_HDR_LEN].copy_from_slice(&vnet);
            for (at, value) in flips {
                let at = VNET_HDR_LEN + 14 + at;
                // Keep the source (port security would stop the frame before routing).
                if (VNET_HDR_LEN + 14 + 8..VNET_HDR_LEN + 14 + 24).contains(&at) {
                    continue;
                }
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            let _ = bench.send(1, &frame, 1);
            let mut local = bench.local.borrow_mut();
            super::super::l3::service_held(&bench.ctx(5_000), &mut local, |_, _| {});
            drop(local);
            for (_, _, bytes) in bench.generated() {
                proptest::prop_assert!(bytes.len() >= VNET_HDR_LEN + 14);
            }
        }
    }
}
