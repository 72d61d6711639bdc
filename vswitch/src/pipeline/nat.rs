//! Stage `nat`: connection tracking and address translation for traffic that crosses the
//! uplink (masquerade, port forwards, virtual IPs) or comes back into a Network through one
//! of the switch's uplink addresses (hairpinning). The decisions and the byte rewriting are
//! the `nat` crate's; this stage wires them into the datapath, once per packet:
//!
//! - **Outbound** ([`outbound`], from [`l3::route`] when the ingress port's Network has no
//!   route for the destination and the node has an uplink, through
//!   [`uplink::outbound`](super::uplink::outbound) unless the Network is routed there): the packet is looked up in
//!   conntrack in the Network's zone (`Zone(network id)`). On a miss, an ICMP error is
//!   dropped (`nat.untracked_icmp_error`); an echo request to one of the switch's uplink
//!   addresses that forwards nothing is answered from it (other traffic to such an address:
//!   `nat.unsolicited`); anything else gets [`NatRules::plan`](::nat::NatRules::plan)
//!   (DNAT for a PortForward or VirtualIP address: hairpinning; the source's VirtualIP or the
//!   Network's NATGateway for SNAT) and a new connection. A Network with neither NATGateway
//!   nor VirtualIP keeps the behaviour of a router without a route: ICMP net unreachable,
//!   `l3.no_route`.
//! - **Inbound** ([`inbound`], from the [`uplink`](super::uplink) stage for IPv4 to an owned
//!   address): looked up in [`Zone::EXTERNAL`]. On a miss: ICMP errors are dropped, echo
//!   requests to an address that is not a virtual IP are answered from it (a router answers
//!   on its addresses), and other packets start a connection only when a PortForward or
//!   VirtualIP takes them (DNAT), else `nat.unsolicited` (no ICMP: the switch does not
//!   advertise which ports are closed, as a masquerading firewall).
//! - Then, in the connection's egress zone and toward its translated destination: out of the
//!   uplink (next hop: the uplink's gateway, or the destination when on its link), or by
//!   longest-prefix match in the Network; [`l3::forward`] checks TTL and MTU (ICMP errors
//!   quote the packet as its sender sent it, and come from the uplink address it was sent to
//!   when it came from outside), translates (`ChecksumMode::Partial` when the virtio header
//!   says `NEEDS_CSUM`), rewrites, resolves the next hop and fragments after translating.
//!
//! ICMP errors about a tracked flow (port unreachable from outside, say) are found by the
//! lookup as related packets and translated including the packet they quote.
//!
//! Drops use the `nat` crate's own keys (`nat.*` for parse, plan, port allocation and
//! translation; `conntrack.*` for the table), plus `nat.untracked_icmp_error` and
//! `nat.no_gateway_mac` (a packet held for the uplink's next hop that never answered ARP).
//! Flows inside Networks never reach this stage: they do not touch conntrack.

use std::net::{IpAddr, Ipv4Addr};

use ::nat::{
    Attachments, CreateError, EchoKind, Egress, FlowKey, InterfaceId, NatError, NatPlan,
    PacketInfo, PacketKind, ParseError, PlanError, Tracked, TranslateError, Zone,
};
use smoltcp::wire::Ipv4Packet;

use super::icmp::{self, ErrorPath};
use super::l3::{self, Hop, Link, ip_bounds};
use super::parse::{L3, Parsed};
use super::{Context, DropCause, Local, Output, Verdict, uplink};
use crate::port::PortId;
use crate::tables::counters::Event;
use crate::tables::counters::keyed_enum;
use crate::tables::snapshot::{NetworkId, PortEntry, SubnetEntry, UplinkEntry};
use crate::wire::icmp_error::Kind;

keyed_enum! {
    /// Why `nat` dropped a packet (keys as the `nat` crate's errors give them).
    pub enum DropReason {
        Truncated = "nat.truncated":
            "packet to be NATed with a truncated or malformed IPv4 header",
        NotIp = "nat.not_ip":
            "packet to be NATed that is neither IPv4 nor IPv6",
        Fragment = "nat.fragment":
            "IP fragment to be NATed: conntrack needs the ports that only a first fragment carries, and the switch does not reassemble",
        ExtensionHeaders = "nat.extension_headers":
            "IPv6 packet to be NATed whose extension headers are cut short or chained more than 8 deep",
        UnsupportedProtocol = "nat.unsupported_protocol":
            "packet to be NATed that is neither TCP, UDP nor ICMP",
        TruncatedTransport = "nat.truncated_transport":
            "packet to be NATed with a truncated TCP, UDP or ICMP header",
        UnsupportedIcmp = "nat.unsupported_icmp":
            "ICMP to be NATed that is neither echo nor an unreachable, time exceeded or parameter problem error",
        MalformedIcmpError = "nat.malformed_icmp_error":
            "ICMP error to be NATed whose quoted packet is too short, of the other family, a later fragment or untracked",
        UntrackedIcmpError = "nat.untracked_icmp_error":
            "ICMP error through NAT about no tracked connection",
        Unsolicited = "nat.unsolicited":
            "to an uplink address, matching no connection, port forward or virtual IP (and not an echo request, which the switch answers)",
        NoAddress = "nat.no_address":
            "new masqueraded connection, but the NAT gateway has no usable address",
        PoolExhausted = "nat.pool_exhausted":
            "new masqueraded connection, but every port block of the NAT addresses is taken",
        InterfaceExhausted = "nat.interface_ports_exhausted":
            "new masqueraded connection, but its interface used every port of its port blocks",
        AddressFamily = "nat.address_family":
            "the connection's translation is of another address family than the packet",
        ProtocolMismatch = "nat.protocol_mismatch":
            "the connection's translation is for another protocol than the packet's",
        NoGatewayMac = "nat.no_gateway_mac":
            "held for the uplink's next hop (its gateway), which never answered ARP",
    }
}

keyed_enum! {
    /// Why conntrack refused a packet that needs NAT.
    pub enum ConntrackReason {
        NotAStart = "conntrack.not_a_start":
            "no connection, and the packet cannot start one (TCP without SYN, RST, echo reply)",
        TableFull = "conntrack.table_full":
            "new connection refused: the table is full and nothing could be evicted",
        Clash = "conntrack.clash":
            "new connection refused: its translated reply tuple belongs to another connection",
    }
}

/// The drop cause of a packet `nat::parse` refused.
pub fn parse_cause(error: ParseError) -> DropCause {
    DropCause::Nat(match error {
        ParseError::Truncated => DropReason::Truncated,
        ParseError::NotIp => DropReason::NotIp,
        ParseError::Fragment => DropReason::Fragment,
        ParseError::ExtensionHeaders => DropReason::ExtensionHeaders,
        ParseError::UnsupportedProtocol(_) => DropReason::UnsupportedProtocol,
        ParseError::TruncatedTransport => DropReason::TruncatedTransport,
        ParseError::UnsupportedIcmp(_) => DropReason::UnsupportedIcmp,
        ParseError::MalformedIcmpError => DropReason::MalformedIcmpError,
    })
}

/// The drop cause of a connection conntrack did not create.
pub fn create_cause(error: CreateError) -> DropCause {
    match error {
        CreateError::NotAStart => ConntrackReason::NotAStart.into(),
        CreateError::TableFull => ConntrackReason::TableFull.into(),
        CreateError::Clash => ConntrackReason::Clash.into(),
        CreateError::Nat(NatError::NoAddress) => DropReason::NoAddress.into(),
        CreateError::Nat(NatError::PoolExhausted) => DropReason::PoolExhausted.into(),
        CreateError::Nat(NatError::InterfaceExhausted) => DropReason::InterfaceExhausted.into(),
    }
}

/// The drop cause of a packet `nat::translate` refused.
pub fn translate_cause(error: TranslateError) -> DropCause {
    match error {
        TranslateError::Parse(error) => parse_cause(error),
        TranslateError::AddressFamily => DropReason::AddressFamily.into(),
        TranslateError::ProtocolMismatch => DropReason::ProtocolMismatch.into(),
    }
}

/// The conntrack zone of a Network.
#[inline]
pub fn zone_of(network: NetworkId) -> Zone {
    Zone(network.0)
}

/// The flow identity of the IPv4 packet in `frame`.
pub(super) fn packet_info(frame: &[u8]) -> Result<PacketInfo, DropCause> {
    let Some((start, end)) = ip_bounds(frame) else {
        return Err(l3::DropReason::NotIpv4.into());
    };
    ::nat::parse(&frame[start..end]).map_err(parse_cause)
}

/// Creates the connection `info` starts in `zone` with `plan`, counting it.
fn create(
    ctx: &Context<'_>,
    zone: Zone,
    info: &PacketInfo,
    plan: &NatPlan<'_>,
    out: &mut Output,
) -> Result<Tracked, Verdict> {
    create_with(ctx, zone, info, plan, Attachments::default(), out)
}

/// [`create`] with other stages' values for the connection.
pub(super) fn create_with(
    ctx: &Context<'_>,
    zone: Zone,
    info: &PacketInfo,
    plan: &NatPlan<'_>,
    attachments: Attachments,
    out: &mut Output,
) -> Result<Tracked, Verdict> {
    match ctx.conntrack_create(zone, info, plan, attachments) {
        Ok(tracked) => {
            if let Some(trace) = ctx.trace {
                let snat = match plan.snat {
                    ::nat::Snat::None => "no source NAT".to_owned(),
                    ::nat::Snat::Static(address) => format!("source NAT to {address}"),
                    ::nat::Snat::Masquerade { interface, .. } => {
                        format!("masquerade (port block of interface {interface})")
                    }
                };
                let dnat = plan
                    .dnat
                    .map_or_else(String::new, |to| format!(", destination NAT to {to}"));
                trace.note(
                    super::trace::Step::Nat,
                    format_args!(
                        "{} new connection {} in zone {zone}: {snat}{dnat}; translated to {}",
                        if trace.is_dry_run() {
                            "would create"
                        } else {
                            "created"
                        },
                        info.tuple,
                        tracked.target.map_or_else(
                            || "itself (no translation)".to_owned(),
                            |t| t.to_string()
                        ),
                    ),
                );
            }
            if tracked.new {
                out.events.add(Event::NatConnectionCreated);
            }
            Ok(tracked)
        }
        Err(error) => {
            if let CreateError::Nat(NatError::PoolExhausted | NatError::InterfaceExhausted) = error
            {
                out.nat_exhausted = true;
            }
            Err(Verdict::Drop(create_cause(error)))
        }
    }
}

/// Notes a packet of a connection conntrack already tracks.
pub(super) fn note_tracked(ctx: &Context<'_>, zone: Zone, info: &PacketInfo, tracked: &Tracked) {
    trace_note!(
        ctx,
        Conntrack,
        "existing connection {} in zone {zone}, {:?} direction, state {}{}; {}",
        info.tuple,
        tracked.direction,
        tracked.state.name(),
        if tracked.assured { ", assured" } else { "" },
        tracked.target.map_or_else(
            || "not translated".to_owned(),
            |t| format!("translated to {t}")
        )
    );
}

/// Answers an echo request in `frame` sent to the switch's `address`.
pub(super) fn answer_echo(
    frame: &[u8],
    out: &mut Output,
    to: PortId,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    address: Ipv4Addr,
) -> Verdict {
    let Some(ip) =
        ip_bounds(frame).and_then(|(start, end)| Ipv4Packet::new_checked(&frame[start..end]).ok())
    else {
        return Verdict::drop(l3::DropReason::NotIpv4);
    };
    icmp::echo_reply(out, to, dst_mac, src_mac, &ip, address)
}

/// A packet from `ingress` (in `subnet`) whose destination no route of its Network covers,
/// on a node with an uplink (see the module doc). Rewrites `frame` in place.
pub fn outbound(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let (L3::Ipv4 { dst, .. }, Some(uplink)) = (parsed.l3, ctx.snapshot.uplink.as_ref()) else {
        return Verdict::drop(l3::DropReason::NoRoute);
    };
    let errors = ErrorPath::subnet(ingress.id, parsed.src_mac, subnet);
    let info = match packet_info(frame) {
        Ok(info) => info,
        Err(cause) => return Verdict::Drop(cause),
    };
    let zone = zone_of(subnet.network_id);
    let tracked = match ctx.conntrack_lookup(zone, &info) {
        Some(tracked) => {
            note_tracked(ctx, zone, &info, &tracked);
            if let Err(cause) =
                super::policy::judge_reopened(ctx, Some(ingress.id), &info, &tracked)
            {
                return Verdict::Drop(cause);
            }
            tracked
        }
        None => {
            if info.kind == PacketKind::IcmpError {
                return Verdict::drop(DropReason::UntrackedIcmpError);
            }
            let rules = &ctx.snapshot.nat;
            let key = FlowKey::new(zone, info.tuple);
            if uplink::owns(uplink, dst) && rules.destination(&key).is_none() {
                // The switch's own address on the uplink, forwarding nothing for this packet.
                return match info.kind {
                    PacketKind::IcmpEcho(EchoKind::Request) => answer_echo(
                        frame,
                        &mut local.out,
                        ingress.id,
                        parsed.src_mac,
                        subnet.gateway_mac,
                        dst,
                    ),
                    _ => Verdict::drop(DropReason::Unsolicited),
                };
            }
            let interface = InterfaceId(ingress.id.0);
            let plan = match rules.plan(&key, interface, |_| Egress::External) {
                Ok(plan) => plan,
                Err(PlanError::NoExternalAddress) => {
                    // No NAT for this Network: a router without a route.
                    if let Some((start, end)) = ip_bounds(frame) {
                        icmp::send_error_via(
                            &mut local.out,
                            ctx.now_ms,
                            Kind::NetUnreachable,
                            &errors,
                            &frame[start..end],
                        );
                    }
                    return Verdict::drop(l3::DropReason::NoRoute);
                }
                Err(PlanError::Unsolicited) => return Verdict::drop(DropReason::Unsolicited),
            };
            if let Err(cause) = super::policy::judge_plan(ctx, Some(ingress.id), &info, &plan) {
                return Verdict::Drop(cause);
            }
            match create(ctx, zone, &info, &plan, &mut local.out) {
                Ok(tracked) => tracked,
                Err(verdict) => return verdict,
            }
        }
    };
    continue_in(ctx, &tracked, &errors, parsed, frame, local, |ctx, out| {
        l3::confirm_sender(ctx, ingress, subnet, parsed, out);
    })
}

/// A packet received on `uplink` for one of its owned addresses, whose header checksum was
/// verified (see the module doc). Rewrites `frame` in place.
pub fn inbound(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let L3::Ipv4 { dst, .. } = parsed.l3 else {
        return Verdict::drop(l3::DropReason::NotIpv4);
    };
    let errors = ErrorPath::uplink(uplink, parsed.src_mac, dst);
    let info = match packet_info(frame) {
        Ok(info) => info,
        Err(cause) => return Verdict::Drop(cause),
    };
    let tracked = match ctx.conntrack_lookup(Zone::EXTERNAL, &info) {
        Some(tracked) => {
            note_tracked(ctx, Zone::EXTERNAL, &info, &tracked);
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
                if !uplink::admits_echo(uplink) {
                    return Verdict::drop(uplink::DropReason::InboundDenied);
                }
                return answer_echo(
                    frame,
                    &mut local.out,
                    uplink.id,
                    parsed.src_mac,
                    uplink.mac,
                    dst,
                );
            }
            let interface = InterfaceId(uplink.id.0);
            let Ok(plan) = rules.plan(&key, interface, |_| Egress::External) else {
                return Verdict::drop(DropReason::Unsolicited);
            };
            if let Err(cause) = super::policy::judge_plan(ctx, None, &info, &plan) {
                return Verdict::Drop(cause);
            }
            match create(ctx, Zone::EXTERNAL, &info, &plan, &mut local.out) {
                Ok(tracked) => tracked,
                Err(verdict) => return verdict,
            }
        }
    };
    continue_in(ctx, &tracked, &errors, parsed, frame, local, |_, _| {})
}

/// Forwards a tracked packet in its connection's egress zone, toward its translated
/// destination (see the module doc).
pub(super) fn continue_in(
    ctx: &Context<'_>,
    tracked: &Tracked,
    errors: &ErrorPath,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
    accepted: impl FnOnce(&Context<'_>, &mut Output),
) -> Verdict {
    continue_from(ctx, None, tracked, errors, parsed, frame, local, accepted)
}

/// [`continue_in`] for a packet of Network `network` (routed through the uplink): out of the
/// uplink, it goes to the router of the Network's Route through the uplink that covers its
/// destination, if any.
#[allow(clippy::too_many_arguments)]
pub(super) fn continue_from(
    ctx: &Context<'_>,
    network: Option<NetworkId>,
    tracked: &Tracked,
    errors: &ErrorPath,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
    accepted: impl FnOnce(&Context<'_>, &mut Output),
) -> Verdict {
    let L3::Ipv4 { dst, .. } = parsed.l3 else {
        return Verdict::drop(l3::DropReason::NotIpv4);
    };
    let destination = match tracked.target.map(|target| target.dst) {
        None => dst,
        Some(IpAddr::V4(address)) => address,
        Some(IpAddr::V6(_)) => return Verdict::drop(DropReason::AddressFamily),
    };
    let zone = tracked.egress_zone;
    let hop = if zone == Zone::EXTERNAL {
        match ctx.snapshot.uplink.as_ref() {
            Some(uplink) if !l3::is_martian(destination) => Some(Hop {
                link: Link::Uplink(uplink),
                next_hop: uplink::next_hop_for(uplink, network, destination),
            }),
            Some(_) => return Verdict::drop(l3::DropReason::BadDestination),
            None => None,
        }
    } else {
        match l3::lookup(ctx.snapshot, NetworkId(zone.0), destination) {
            Some((_, egress, _))
                if egress.cidr.prefix_len() < 31 && destination == egress.cidr.broadcast() =>
            {
                return Verdict::drop(l3::DropReason::BadDestination);
            }
            Some((_, egress, next_hop)) if next_hop != egress.gateway => Some(Hop {
                link: Link::Subnet(egress),
                next_hop,
            }),
            _ => None,
        }
    };
    let Some(hop) = hop else {
        if let Some((start, end)) = ip_bounds(frame) {
            icmp::send_error_via(
                &mut local.out,
                ctx.now_ms,
                Kind::NetUnreachable,
                errors,
                &frame[start..end],
            );
        }
        return Verdict::drop(l3::DropReason::NoRoute);
    };
    l3::forward(
        ctx,
        errors,
        hop,
        parsed,
        frame,
        local,
        tracked.target.as_ref(),
        accepted,
    )
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::{Icmpv4Packet, IpAddress, IpProtocol, TcpPacket, UdpPacket};

    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::generated::Origin;
    use crate::pipeline::l3::service_held;
    use crate::tables::counters::Event;
    use crate::tables::snapshot::SubnetId;
    use crate::wire::VNET_HDR_LEN;
    use crate::wire::checksum::{complete_partial_checksum, pseudo_header_ipv4};
    use crate::wire::vnet_hdr::flags;

    const BLUE: SubnetId = SubnetId(1);
    const RED: SubnetId = SubnetId(2);
    const IP: usize = VNET_HDR_LEN + 14;
    const L4: usize = IP + 20;

    fn ip(a: Ipv4Addr) -> IpAddress {
        IpAddress::Ipv4(a)
    }

    /// UDP `src:sport -> dst:dport` carrying `data`, checksums filled.
    #[allow(clippy::too_many_arguments)]
    fn udp(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        ttl: u8,
        dont_frag: bool,
        data: &[u8],
    ) -> Vec<u8> {
        udp_frame(
            src_mac,
            dst_mac,
            (src, sport),
            (dst, dport),
            ttl,
            dont_frag,
            data,
        )
    }

    use crate::pipeline::fixtures::tcp_frame as tcp;

    use crate::pipeline::fixtures::echo_frame as echo;

    fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
        Ipv4Packet::new_checked(&frame[IP..]).unwrap()
    }

    /// Source, source port, destination, destination port (TCP/UDP), after checking every
    /// checksum in full.
    fn flow_of(frame: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
        let packet = ip_of(frame);
        assert!(packet.verify_checksum(), "IPv4 header checksum");
        let (src, dst) = (packet.src_addr(), packet.dst_addr());
        match packet.next_header() {
            IpProtocol::Udp => {
                let udp = UdpPacket::new_checked(packet.payload()).unwrap();
                assert!(udp.verify_checksum(&ip(src), &ip(dst)), "UDP checksum");
                (src, udp.src_port(), dst, udp.dst_port())
            }
            IpProtocol::Tcp => {
                let tcp = TcpPacket::new_checked(packet.payload()).unwrap();
                assert!(tcp.verify_checksum(&ip(src), &ip(dst)), "TCP checksum");
                (src, tcp.src_port(), dst, tcp.dst_port())
            }
            other => panic!("not TCP/UDP: {other}"),
        }
    }

    fn macs(frame: &[u8]) -> ([u8; 6], [u8; 6]) {
        let mut dst = [0; 6];
        let mut src = [0; 6];
        dst.copy_from_slice(&frame[VNET_HDR_LEN..VNET_HDR_LEN + 6]);
        src.copy_from_slice(&frame[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12]);
        (dst, src)
    }

    /// A bench over [`uplink_snapshot`] whose uplink gateway and ports 2 and 4 are known.
    fn bench() -> Bench {
        let bench = Bench::with(uplink_snapshot());
        know_everyone(&bench);
        bench
    }

    fn know_everyone(bench: &Bench) {
        bench
            .neighbors
            .confirm(UPLINK_SEGMENT, OUTSIDE_GW, OUTSIDE_GW_MAC, 0, true);
        bench.neighbors.confirm(BLUE, IP_B, MAC_B, 0, true);
        bench.neighbors.confirm(RED, IP_D, MAC_D, 0, true);
        let blue = bench.snapshot.subnet(BLUE).unwrap();
        bench.fdb.learn(blue, MAC_B, PortId(2), 0);
        let red = bench.snapshot.subnet(RED).unwrap();
        bench.fdb.learn(red, MAC_D, PortId(4), 0);
    }

    fn dropped(cause: impl Into<DropCause>) -> Verdict {
        Verdict::Drop(cause.into())
    }

    fn events(bench: &Bench, event: Event) -> u64 {
        bench.local.borrow().out.events.get(event)
    }

    /// UDP 172.30.0.2:40000 -> 198.51.100.7:53 from port 1.
    fn outbound_udp() -> Vec<u8> {
        udp(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            40000,
            REMOTE,
            53,
            64,
            false,
            b"query",
        )
    }

    #[test]
    fn masquerade_rewrites_source_macs_and_checksums_and_the_reply_comes_back() {
        let bench = bench();
        let (outcome, out) = bench.run(1, &outbound_udp(), 10);
        assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
        assert_eq!(flow_of(&out), (NAT_IP, 40000, REMOTE, 53), "port kept");
        assert_eq!(macs(&out), (OUTSIDE_GW_MAC, UPLINK_MAC));
        assert_eq!(ip_of(&out).hop_limit(), 63);
        assert_eq!(events(&bench, Event::NatTranslated), 1);
        assert_eq!(events(&bench, Event::NatConnectionCreated), 1);
        assert_eq!(bench.snapshot.conntrack.len(), 1);

        // The answer, on the uplink, goes back to port 1 translated.
        let reply = udp(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            REMOTE,
            53,
            NAT_IP,
            40000,
            60,
            false,
            b"answer",
        );
        let (outcome, back) = bench.run_uplink(&reply, 20);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(1)));
        assert_eq!(flow_of(&back), (REMOTE, 53, IP_A, 40000));
        assert_eq!(macs(&back), (MAC_A, GW_BLUE_MAC));
        assert_eq!(ip_of(&back).hop_limit(), 59);
        // The same socket to another server keeps its mapping (endpoint-independent).
        let other = udp(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            40000,
            Ipv4Addr::new(192, 0, 2, 99),
            53,
            64,
            false,
            b"query",
        );
        let (_, out) = bench.run(1, &other, 30);
        assert_eq!(flow_of(&out).0..=flow_of(&out).0, NAT_IP..=NAT_IP);
        assert_eq!(flow_of(&out).1, 40000);
    }

    #[test]
    fn masquerade_keeps_a_partial_checksum_partial() {
        let bench = bench();
        let mut frame = tcp(MAC_A, GW_BLUE_MAC, (IP_A, 41000), (REMOTE, 443), 0x02);
        let segment_len = 24u16;
        // As a TAP hands it over: NEEDS_CSUM at 34 + 16, the field holding the pseudo-header.
        frame[0] = flags::NEEDS_CSUM;
        frame[6..8].copy_from_slice(&34u16.to_le_bytes());
        frame[8..10].copy_from_slice(&16u16.to_le_bytes());
        let partial = pseudo_header_ipv4(IP_A, REMOTE, 6, segment_len);
        frame[L4 + 16..L4 + 18].copy_from_slice(&partial.to_be_bytes());
        let (outcome, mut out) = bench.run(1, &frame, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
        assert_eq!(&out[..VNET_HDR_LEN], &frame[..VNET_HDR_LEN], "offload kept");
        assert_eq!(
            &out[L4 + 16..L4 + 18],
            &pseudo_header_ipv4(NAT_IP, REMOTE, 6, segment_len).to_be_bytes(),
            "the pseudo-header sum of the new addresses"
        );
        assert!(ip_of(&out).verify_checksum());
        complete_partial_checksum(&mut out[VNET_HDR_LEN..], 34, 16).unwrap();
        assert_eq!(flow_of(&out), (NAT_IP, 41000, REMOTE, 443));
    }

    #[test]
    fn port_forward_dnat_from_outside_and_its_replies() {
        let bench = bench();
        let syn = tcp(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            (REMOTE, 5555),
            (NAT_IP, 8080),
            0x02,
        );
        let (outcome, inside) = bench.run_uplink(&syn, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(2)));
        assert_eq!(flow_of(&inside), (REMOTE, 5555, IP_B, 80));
        assert_eq!(macs(&inside), (MAC_B, GW_BLUE_MAC));
        assert_eq!(ip_of(&inside).hop_limit(), 63);
        let syn_ack = tcp(MAC_B, GW_BLUE_MAC, (IP_B, 80), (REMOTE, 5555), 0x12);
        let (outcome, out) = bench.run(2, &syn_ack, 1);
        assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
        assert_eq!(flow_of(&out), (NAT_IP, 8080, REMOTE, 5555));
        assert_eq!(macs(&out), (OUTSIDE_GW_MAC, UPLINK_MAC));
        // Another port of the NAT address is not forwarded.
        let ssh = tcp(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            (REMOTE, 5556),
            (NAT_IP, 22),
            0x02,
        );
        assert_eq!(
            bench.run_uplink(&ssh, 2).0.verdict,
            dropped(DropReason::Unsolicited)
        );
        assert!(bench.generated().is_empty(), "no ICMP for unsolicited");
    }

    #[test]
    fn virtual_ip_both_directions() {
        let bench = bench();
        // From outside: a ping to the virtual IP reaches port 4 (not answered by the switch).
        let ping = echo(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, VIP, 0x77, true);
        let (outcome, inside) = bench.run_uplink(&ping, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(4)));
        assert_eq!(ip_of(&inside).dst_addr(), IP_D);
        assert_eq!(ip_of(&inside).src_addr(), REMOTE);
        assert!(
            Icmpv4Packet::new_checked(ip_of(&inside).payload())
                .unwrap()
                .verify_checksum()
        );
        let pong = echo(MAC_D, GW_RED_MAC, IP_D, REMOTE, 0x77, false);
        let (outcome, out) = bench.run(4, &pong, 1);
        assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
        assert_eq!(ip_of(&out).src_addr(), VIP);
        assert_eq!(ip_of(&out).dst_addr(), REMOTE);
        assert_eq!(&ip_of(&out).payload()[4..6], &0x77u16.to_be_bytes());
        // Its own traffic leaves with the virtual IP, port kept.
        let query = udp(MAC_D, GW_RED_MAC, IP_D, 5353, REMOTE, 53, 64, false, b"q");
        let (outcome, out) = bench.run(4, &query, 2);
        assert_eq!(outcome.verdict, Verdict::Forward(UPLINK));
        assert_eq!(flow_of(&out), (VIP, 5353, REMOTE, 53));
    }

    #[test]
    fn hairpin_to_the_forwarded_port_is_dnated_and_snated() {
        let bench = bench();
        let syn = tcp(MAC_A, GW_BLUE_MAC, (IP_A, 40001), (NAT_IP, 8080), 0x02);
        let (outcome, to_b) = bench.run(1, &syn, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(2)));
        assert_eq!(
            flow_of(&to_b),
            (NAT_IP, 40001, IP_B, 80),
            "B sees A's external address"
        );
        assert_eq!(macs(&to_b), (MAC_B, GW_BLUE_MAC));
        let syn_ack = tcp(MAC_B, GW_BLUE_MAC, (IP_B, 80), (NAT_IP, 40001), 0x12);
        let (outcome, to_a) = bench.run(2, &syn_ack, 1);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(1)));
        assert_eq!(
            flow_of(&to_a),
            (NAT_IP, 8080, IP_A, 40001),
            "A sees the address it connected to"
        );
    }

    #[test]
    fn icmp_errors_from_outside_are_translated_back_with_their_quote() {
        let bench = bench();
        let (_, sent) = bench.run(1, &outbound_udp(), 0);
        // The server's port unreachable quotes the datagram as it saw it.
        let quote = &sent[IP..];
        let mut message = vec![3, 3, 0, 0, 0, 0, 0, 0];
        message.extend_from_slice(&quote[..28]);
        let mut error = ipv4_frame(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            REMOTE,
            NAT_IP,
            64,
            IpProtocol::Icmp,
            false,
            &message,
        );
        Icmpv4Packet::new_unchecked(&mut error[L4..]).fill_checksum();
        let (outcome, back) = bench.run_uplink(&error, 1);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(1)));
        let packet = ip_of(&back);
        assert!(packet.verify_checksum());
        assert_eq!((packet.src_addr(), packet.dst_addr()), (REMOTE, IP_A));
        let icmp = Icmpv4Packet::new_checked(packet.payload()).unwrap();
        assert!(icmp.verify_checksum());
        let quoted = Ipv4Packet::new_unchecked(icmp.data());
        assert!(quoted.verify_checksum());
        assert_eq!((quoted.src_addr(), quoted.dst_addr()), (IP_A, REMOTE));
        assert_eq!(&icmp.data()[20..22], &40000u16.to_be_bytes());
        // An error about nothing tracked is dropped.
        let mut stray = error.clone();
        stray[L4 + 8 + 20..L4 + 8 + 22].copy_from_slice(&1234u16.to_be_bytes());
        Icmpv4Packet::new_unchecked(&mut stray[L4..]).fill_checksum();
        assert_eq!(
            bench.run_uplink(&stray, 2).0.verdict,
            dropped(DropReason::UntrackedIcmpError)
        );
    }

    #[test]
    fn echo_to_an_uplink_address_is_answered_from_it() {
        let bench = bench();
        let ping = echo(OUTSIDE_GW_MAC, UPLINK_MAC, REMOTE, NAT_IP, 9, true);
        assert_eq!(bench.run_uplink(&ping, 0).0.verdict, Verdict::Consumed);
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let (verdict, origin, reply) = &generated[0];
        assert_eq!(
            (*verdict, *origin),
            (Verdict::Forward(UPLINK), Origin::Switch)
        );
        assert_eq!(macs(reply), (OUTSIDE_GW_MAC, UPLINK_MAC));
        let packet = ip_of(reply);
        assert_eq!((packet.src_addr(), packet.dst_addr()), (NAT_IP, REMOTE));
        assert_eq!(packet.payload()[0], 0, "echo reply");
        assert!(bench.snapshot.conntrack.is_empty(), "nothing tracked");
        // From a container, the same address answers through the container's gateway.
        let ping = echo(MAC_A, GW_BLUE_MAC, IP_A, SPARE_IP, 9, true);
        assert_eq!(bench.run(1, &ping, 0).0.verdict, Verdict::Consumed);
        let generated = bench.generated();
        assert_eq!(generated[0].0, Verdict::Forward(PortId(1)));
        assert_eq!(macs(&generated[0].2), (MAC_A, GW_BLUE_MAC));
        assert_eq!(ip_of(&generated[0].2).src_addr(), SPARE_IP);
        // Other traffic to such an address is not taken.
        let probe = udp(MAC_A, GW_BLUE_MAC, IP_A, 1, SPARE_IP, 2, 64, false, b"");
        assert_eq!(
            bench.send(1, &probe, 0).verdict,
            dropped(DropReason::Unsolicited)
        );
    }

    #[test]
    fn without_a_nat_gateway_the_outside_is_unreachable() {
        let bench = Bench::with(uplink_snapshot_with(::nat::NatRules::new()));
        know_everyone(&bench);
        assert_eq!(
            bench.send(1, &outbound_udp(), 0).verdict,
            dropped(l3::DropReason::NoRoute)
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let icmp = &generated[0].2[L4..];
        assert_eq!((icmp[0], icmp[1]), (3, 0), "net unreachable");
        assert!(bench.snapshot.conntrack.is_empty());
        // Nothing from outside gets in either, and inside traffic never touches conntrack.
        let syn = tcp(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            (REMOTE, 5555),
            (NAT_IP, 8080),
            0x02,
        );
        assert_eq!(
            bench.run_uplink(&syn, 0).0.verdict,
            dropped(DropReason::Unsolicited)
        );
        let inside = udp(MAC_A, GW_BLUE_MAC, IP_A, 1, IP_D, 2, 64, false, b"");
        assert_eq!(
            bench.send(1, &inside, 0).verdict,
            Verdict::Forward(PortId(4))
        );
        assert!(bench.snapshot.conntrack.is_empty());
    }

    #[test]
    fn an_unresolved_gateway_holds_and_arps_out_of_the_uplink() {
        let bench = Bench::with(uplink_snapshot());
        assert_eq!(bench.send(1, &outbound_udp(), 0).verdict, Verdict::Consumed);
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let (verdict, _, request) = &generated[0];
        assert_eq!(*verdict, Verdict::Forward(UPLINK));
        assert_eq!(macs(request), ([0xff; 6], UPLINK_MAC));
        let arp = &request[VNET_HDR_LEN + 14..];
        assert_eq!(&arp[6..8], &[0, 1], "request");
        assert_eq!(&arp[8..14], &UPLINK_MAC);
        assert_eq!(
            &arp[14..18],
            &NAT_IP.octets(),
            "from the address on that link"
        );
        assert_eq!(&arp[24..28], &OUTSIDE_GW.octets());
        // The gateway answers; the held packet leaves, translated.
        let mut reply = request[..VNET_HDR_LEN + 42].to_vec();
        reply[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&UPLINK_MAC);
        reply[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&OUTSIDE_GW_MAC);
        let arp = &mut reply[VNET_HDR_LEN + 14..];
        arp[7] = 2;
        arp[8..14].copy_from_slice(&OUTSIDE_GW_MAC);
        arp[14..18].copy_from_slice(&OUTSIDE_GW.octets());
        arp[18..24].copy_from_slice(&UPLINK_MAC);
        arp[24..28].copy_from_slice(&NAT_IP.octets());
        assert_eq!(bench.run_uplink(&reply, 5).0.verdict, Verdict::Consumed);
        assert_eq!(
            bench.neighbors.lookup(UPLINK_SEGMENT, OUTSIDE_GW),
            Some(OUTSIDE_GW_MAC)
        );
        let mut local = bench.local.borrow_mut();
        local.out.generated.clear();
        service_held(&bench.ctx(6), &mut local, |_, cause| panic!("{cause}"));
        drop(local);
        let released = bench.generated();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].0, Verdict::Forward(UPLINK));
        assert_eq!(macs(&released[0].2), (OUTSIDE_GW_MAC, UPLINK_MAC));
        assert_eq!(flow_of(&released[0].2), (NAT_IP, 40000, REMOTE, 53));
    }

    #[test]
    fn a_silent_gateway_times_out_without_icmp() {
        let bench = Bench::with(uplink_snapshot());
        bench.send(1, &outbound_udp(), 0);
        let mut drops = Vec::new();
        let mut local = bench.local.borrow_mut();
        local.out.generated.clear();
        service_held(&bench.ctx(10_000), &mut local, |port, cause| {
            drops.push((port, cause))
        });
        drop(local);
        assert_eq!(
            drops,
            vec![(PortId(1), DropCause::Nat(DropReason::NoGatewayMac))]
        );
        assert!(
            bench.generated().is_empty(),
            "no ICMP quoting a translated packet"
        );
    }

    #[test]
    fn mtu_of_the_uplink_with_df_and_fragmenting_after_translation() {
        let mut snapshot = uplink_snapshot();
        if let Some(uplink) = snapshot.uplink.as_mut() {
            uplink.mtu = 576;
        }
        let bench = Bench::with(snapshot);
        know_everyone(&bench);
        let big = |dont_frag| {
            udp(
                MAC_A,
                GW_BLUE_MAC,
                IP_A,
                40000,
                REMOTE,
                53,
                64,
                dont_frag,
                &[0x5a; 1000],
            )
        };
        assert_eq!(
            bench.send(1, &big(true), 0).verdict,
            dropped(l3::DropReason::MtuExceeded)
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let error = &generated[0].2;
        assert_eq!(generated[0].0, Verdict::Forward(PortId(1)));
        assert_eq!(&error[L4..L4 + 2], &[3, 4]);
        assert_eq!(&error[L4 + 6..L4 + 8], &576u16.to_be_bytes());
        assert_eq!(
            &error[L4 + 8 + 12..L4 + 8 + 16],
            &IP_A.octets(),
            "the quote is the packet as sent"
        );
        assert_eq!(bench.send(1, &big(false), 1).verdict, Verdict::Consumed);
        let fragments = bench.generated();
        assert_eq!(fragments.len(), 2);
        let mut data = Vec::new();
        for (verdict, origin, bytes) in &fragments {
            assert_eq!(
                (*verdict, *origin),
                (Verdict::Forward(UPLINK), Origin::Routed)
            );
            let packet = ip_of(bytes);
            assert!(packet.verify_checksum());
            assert_eq!(packet.src_addr(), NAT_IP);
            assert!(usize::from(packet.total_len()) <= 576);
            data.extend_from_slice(packet.payload());
        }
        let udp = UdpPacket::new_checked(&data[..]).unwrap();
        assert!(udp.verify_checksum(&ip(NAT_IP), &ip(REMOTE)));
        assert_eq!(udp.src_port(), 40000);
    }

    #[test]
    fn fragments_are_refused_by_nat() {
        let bench = bench();
        let mut fragment = outbound_udp();
        let mut packet = Ipv4Packet::new_unchecked(&mut fragment[IP..]);
        packet.set_more_frags(true);
        packet.fill_checksum();
        assert_eq!(
            bench.send(1, &fragment, 0).verdict,
            dropped(DropReason::Fragment)
        );
    }

    #[test]
    fn ttl_expiry_from_outside_is_reported_from_the_uplink_address() {
        let bench = bench();
        let mut syn = tcp(
            OUTSIDE_GW_MAC,
            UPLINK_MAC,
            (REMOTE, 5555),
            (NAT_IP, 8080),
            0x02,
        );
        let mut packet = Ipv4Packet::new_unchecked(&mut syn[IP..]);
        packet.set_hop_limit(1);
        packet.fill_checksum();
        assert_eq!(
            bench.run_uplink(&syn, 0).0.verdict,
            dropped(l3::DropReason::TtlExpired)
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        assert_eq!(generated[0].0, Verdict::Forward(UPLINK));
        assert_eq!(macs(&generated[0].2), (OUTSIDE_GW_MAC, UPLINK_MAC));
        let error = ip_of(&generated[0].2);
        assert_eq!((error.src_addr(), error.dst_addr()), (NAT_IP, REMOTE));
        assert_eq!(&error.payload()[..2], &[11, 0]);
    }

    #[test]
    fn connections_that_cannot_start_are_refused() {
        let bench = bench();
        // A reset, or an echo reply, starts nothing.
        let reset = tcp(MAC_A, GW_BLUE_MAC, (IP_A, 40002), (REMOTE, 443), 0x04);
        assert_eq!(
            bench.send(1, &reset, 0).verdict,
            dropped(ConntrackReason::NotAStart)
        );
        let pong = echo(MAC_A, GW_BLUE_MAC, IP_A, REMOTE, 3, false);
        assert_eq!(
            bench.send(1, &pong, 0).verdict,
            dropped(ConntrackReason::NotAStart)
        );
        let gre = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            REMOTE,
            64,
            IpProtocol::Unknown(47),
            false,
            &[0; 8],
        );
        assert_eq!(
            bench.send(1, &gre, 0).verdict,
            dropped(DropReason::UnsupportedProtocol)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Whatever a port sends toward the outside (or to the switch's uplink addresses) —
        /// mutated headers, offload fields, lengths — NAT never panics, and whatever it emits
        /// can be framed.
        #[test]
        fn never_panics_on_mutated_frames_to_the_outside(
            flips in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..8),
            vnet in proptest::collection::vec(proptest::prelude::any::<u8>(), 10),
            protocol in proptest::sample::select(vec![1u8, 6, 17, 47]),
            to in proptest::sample::select(vec![REMOTE, NAT_IP, VIP, SPARE_IP]),
            mtu in 0u16..2000,
            extra in 0usize..1600,
            known in proptest::prelude::any::<bool>(),
        ) {
            let mut snapshot = uplink_snapshot();
            if let Some(uplink) = snapshot.uplink.as_mut() {
                uplink.mtu = mtu;
            }
            let bench = Bench::with(snapshot);
            if known {
                know_everyone(&bench);
            }
            let mut frame = ipv4_frame(
                MAC_A, GW_BLUE_MAC, IP_A, to, 64, IpProtocol::from(protocol), false,
                &vec![0x33; extra + 8],
            );
            frame[..VNET_HDR_LEN].copy_from_slice(&vnet);
            for (at, value) in flips {
                let at = IP + at;
                // Keep the source (port security would stop the frame before L3).
                if (IP + 12..IP + 16).contains(&at) {
                    continue;
                }
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            let _ = bench.send(1, &frame, 0);
            let mut local = bench.local.borrow_mut();
            service_held(&bench.ctx(5_000), &mut local, |_, _| {});
            drop(local);
            for (_, _, bytes) in bench.generated() {
                proptest::prop_assert!(bytes.len() >= VNET_HDR_LEN + 14);
            }
        }
    }

    #[test]
    fn causes_carry_the_nat_crates_keys() {
        let parse_errors = [
            ParseError::Truncated,
            ParseError::NotIp,
            ParseError::ExtensionHeaders,
            ParseError::Fragment,
            ParseError::UnsupportedProtocol(47),
            ParseError::TruncatedTransport,
            ParseError::UnsupportedIcmp(13),
            ParseError::MalformedIcmpError,
        ];
        for error in parse_errors {
            assert_eq!(parse_cause(error).key(), error.key());
            let translate = TranslateError::Parse(error);
            assert_eq!(translate_cause(translate).key(), translate.key());
        }
        for error in [
            TranslateError::AddressFamily,
            TranslateError::ProtocolMismatch,
        ] {
            assert_eq!(translate_cause(error).key(), error.key());
        }
        for error in [
            CreateError::NotAStart,
            CreateError::TableFull,
            CreateError::Clash,
            CreateError::Nat(NatError::NoAddress),
            CreateError::Nat(NatError::PoolExhausted),
            CreateError::Nat(NatError::InterfaceExhausted),
        ] {
            assert_eq!(create_cause(error).key(), error.key());
        }
        assert_eq!(DropReason::Unsolicited.key(), PlanError::Unsolicited.key());
    }
}
