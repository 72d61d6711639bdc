//! Stage `l3`: the switch is the router of every subnet. IPv4 frames addressed to the ingress
//! subnet's `gateway_mac` come here (ARP is [`arp`](super::arp)'s, ICMP the switch sends is
//! [`icmp`](super::icmp)'s; both count their drops under this stage's reasons).
//!
//! For each packet, in the order Linux's `ip_rcv` / `ip_forward` apply them:
//! 1. the IPv4 header checksum must verify (RFC 1812 5.2.2) (`l3.bad_checksum`);
//! 2. longest-prefix match in the ingress subnet's Network (VRF). A destination that is a
//!    gateway address (the ingress subnet's, or that of the connected subnet it routes to) is
//!    the switch itself: [`icmp::to_gateway`](super::icmp::to_gateway);
//! 3. broadcast, multicast, loopback and unspecified destinations are not routed, nor, once
//!    the route is known, the egress subnet's broadcast address (RFC 1812 5.3.5, 5.3.7)
//!    (`l3.bad_destination`);
//! 4. no route: with an uplink, the packet goes to [`uplink::outbound`](super::uplink::outbound)
//!    (untranslated for a Network routed through the uplink, else [`nat`](super::nat):
//!    conntrack and masquerade; then forwarding out of the uplink by the steps below, with
//!    the uplink as the egress link and its gateway as the next hop); without one, or when
//!    NAT has no address for the Network, ICMP net unreachable (type 3 code 0), `l3.no_route`;
//! 5. TTL <= 1: ICMP time exceeded (type 11 code 0) from the ingress gateway, so traceroute
//!    shows it, `l3.ttl_expired`;
//! 6. MTU of the egress subnet: a packet larger than it with DF set gets ICMP fragmentation
//!    needed with the MTU (type 3 code 4, RFC 1191), `l3.mtu_exceeded`; without DF it is
//!    fragmented (RFC 791) in step 9. A GSO super-frame is measured by one segment
//!    (`gso_size` + headers), not its total length: with DF it gets "fragmentation needed"
//!    too; without DF a TCP one gets a smaller `gso_size` (re-segmenting TCP is always
//!    allowed), others are dropped;
//! 7. the TTL is decremented with an incremental checksum update (RFC 1624) and the source MAC
//!    becomes the egress subnet's gateway MAC. A partial checksum (`NEEDS_CSUM`) keeps its
//!    offsets: no header length changes;
//! 8. the next hop (the destination for a connected route, else the route's `Via` address)
//!    is resolved in the shared neighbour table. Unknown: the packet is held in the worker's
//!    [`HeldQueue`] and an ARP request broadcast into the egress subnet (retransmitted by
//!    [`service_held`], which releases the packet once answered or drops it with
//!    `l3.arp_timeout` and ICMP host unreachable);
//! 9. the destination MAC becomes the next hop's, and the [`l2`] decision in the egress
//!    subnet picks the port (learned, else flood); on the uplink, its queue. A packet that
//!    needs fragmenting has its partial checksum completed, then each fragment is sent as a
//!    generated frame.
//!
//! Steps 5 to 9 are [`forward`], shared with [`nat`](super::nat): a NATed packet is checked
//! (TTL, MTU: errors quote it as its sender sent it), then translated, then rewritten and
//! fragmented (NAT refuses fragments, so it translates first).
//!
//! Routed traffic from a port's own address confirms that sender as a neighbour (port
//! security makes the address and MAC trustworthy), so replies need no ARP.
//!
//! [`HeldQueue`]: crate::tables::held::HeldQueue

use std::net::Ipv4Addr;

use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, Ipv4Packet, TCP_HEADER_LEN, TcpPacket,
    UDP_HEADER_LEN,
};

use super::generated::Origin;
use super::icmp::ErrorPath;
use super::parse::{L3, Parsed};
use super::{Context, DropCause, Local, Output, Verdict, arp, icmp, l2, tx};
use crate::port::PortId;
use crate::tables::counters::Event;
use crate::tables::counters::keyed_enum;
use crate::tables::held::{HOLD_MS, Held, HeldQueue};
use crate::tables::neigh::{Resolution, Solicit};
use crate::tables::snapshot::{
    NetworkId, NextHop, PortEntry, RouteEntry, Snapshot, SubnetEntry, SubnetId, UplinkEntry,
};
use crate::wire::checksum::complete_partial_checksum;
use crate::wire::icmp_error::Kind;
use crate::wire::ipv4::{FragmentError, Fragmenter, decrement_ttl};
use crate::wire::vnet_hdr::flags;
use crate::wire::{VNET_HDR_LEN, VnetChecksum, VnetGsoKind, VnetPacket};

keyed_enum! {
    /// Why `l3` (or `arp`, `icmp`) dropped a frame.
    pub enum DropReason {
        NotIpv4 = "l3.not_ipv4":
            "addressed to the gateway MAC but neither IPv4 nor ARP",
        BadChecksum = "l3.bad_checksum":
            "IPv4 header checksum (or an echo request's ICMP checksum) is wrong",
        BadDestination = "l3.bad_destination":
            "routed packet to a broadcast, multicast, loopback, unspecified or subnet-broadcast address",
        NoRoute = "l3.no_route":
            "no route to the destination in the ingress port's Network (or in a NATed flow's egress Network), and no NAT to the outside for it (ICMP net unreachable sent)",
        TtlExpired = "l3.ttl_expired":
            "TTL 1 or 0 on a packet to be routed (ICMP time exceeded sent)",
        MtuExceeded = "l3.mtu_exceeded":
            "larger than the egress subnet's MTU with DF set (ICMP fragmentation needed sent), or not fragmentable",
        BadOptions = "l3.bad_options":
            "a packet to be fragmented has malformed IPv4 options",
        ArpTimeout = "l3.arp_timeout":
            "held while its next hop was resolved, and the next hop never answered ARP (ICMP host unreachable sent)",
        HeldQueueFull = "l3.held_queue_full":
            "its next hop is being resolved and the hold queue is full (3 per next hop, 256 per worker)",
        HeldTooBig = "l3.held_too_big":
            "its next hop is being resolved and the packet is larger than a hold slot (9216 bytes of IP)",
        NeighborTableFull = "l3.neighbor_table_full":
            "its next hop is unknown and the neighbour table is full",
        ToGateway = "l3.to_gateway":
            "addressed to a gateway address, and not an ICMP echo request (UDP gets port unreachable)",
        ArpMisdirected = "l3.arp_misdirected":
            "ARP sent to the gateway MAC about an address that is not the subnet's gateway",
        NoBuffer = "l3.no_buffer":
            "no room left in the worker's buffer for frames the switch generates (answers, fragments)",
        ArpRateLimited = "l3.arp_rate_limited":
            "ARP to a gateway (or LoadBalancer) address beyond its port's rate limit (100 a second per worker, bursts of 100): not answered, not learned",
        EchoRateLimited = "l3.echo_rate_limited":
            "ICMP to a gateway address beyond its port's rate limit (100 a second per worker, bursts of 100): not answered",
        NdInvalid = "l3.nd_invalid":
            "neighbour discovery message that fails RFC 4861 validation (hop limit not 255, fragmented, bad checksum, code or options)",
        NdRateLimited = "l3.nd_rate_limited":
            "neighbour or router solicitation for the switch beyond its port's rate limit (shared with ARP): not answered",
        NdTimeout = "l3.nd_timeout":
            "held while its IPv6 next hop was resolved, and the next hop never answered (ICMPv6 address unreachable sent)",
        HopLimitExceeded = "l3.hop_limit_exceeded":
            "IPv6 hop limit 1 or 0 on a packet to be routed (ICMPv6 time exceeded sent)",
        PacketTooBig = "l3.packet_too_big":
            "IPv6 packet larger than the egress subnet's MTU (ICMPv6 packet too big sent; routers do not fragment IPv6)",
        NotRoutable6 = "l3.ipv6_not_routable":
            "IPv6 to the gateway MAC with a link-local, multicast, unspecified or loopback destination that is not the switch's",
    }
}

/// The IPv4 packet of `frame` (virtio header + Ethernet): its start and end (its total
/// length; Ethernet padding excluded). `None` when the frame holds no complete IPv4 packet
/// (never after `parse` accepted it as IPv4).
pub fn ip_bounds(frame: &[u8]) -> Option<(usize, usize)> {
    let start = VNET_HDR_LEN + ETHERNET_HEADER_LEN;
    let packet = Ipv4Packet::new_checked(frame.get(start..)?).ok()?;
    Some((start, start + usize::from(packet.total_len())))
}

/// Destinations never routed: limited broadcast, multicast, loopback, unspecified, 0/8 and
/// class E (RFC 1812 5.3.7 "martian" addresses).
pub fn is_martian(destination: Ipv4Addr) -> bool {
    let first = destination.octets()[0];
    first == 0 || first == 127 || first >= 224
}

/// The length of the L3 and L4 headers that precede each segment of a GSO super-frame.
fn gso_headers(ip: &Ipv4Packet<&[u8]>, kind: VnetGsoKind) -> usize {
    let l4 = match kind {
        VnetGsoKind::TcpV4 | VnetGsoKind::TcpV6 => TcpPacket::new_checked(ip.payload())
            .map_or(TCP_HEADER_LEN, |tcp| usize::from(tcp.header_len())),
        VnetGsoKind::Udp | VnetGsoKind::UdpL4 => UDP_HEADER_LEN,
    };
    usize::from(ip.header_len()) + l4
}

/// The L2 segment a routed packet leaves on.
#[derive(Debug, Clone, Copy)]
pub enum Link<'a> {
    /// A subnet: the [`l2`] decision there picks the port.
    Subnet(&'a SubnetEntry),
    /// The uplink, toward the outside.
    Uplink(&'a UplinkEntry),
}

impl Link<'_> {
    /// The segment id its neighbours (and held packets) are kept under.
    pub fn segment(self) -> SubnetId {
        match self {
            Link::Subnet(subnet) => subnet.id,
            Link::Uplink(uplink) => uplink.segment,
        }
    }

    /// Its MTU: packets routed onto it must fit.
    pub fn mtu(self) -> u16 {
        match self {
            Link::Subnet(subnet) => subnet.mtu,
            Link::Uplink(uplink) => uplink.mtu,
        }
    }

    /// The switch's MAC on it: the source of routed frames.
    pub fn mac(self) -> [u8; 6] {
        match self {
            Link::Subnet(subnet) => subnet.gateway_mac,
            Link::Uplink(uplink) => uplink.mac,
        }
    }

    /// For traces: `subnet NAME` or `uplink NAME`.
    pub fn name(self) -> String {
        match self {
            Link::Subnet(subnet) => format!("subnet {}", subnet.name),
            Link::Uplink(uplink) => format!("uplink {}", uplink.name),
        }
    }

    /// The link with segment id `segment` in `snapshot`: a subnet, or the uplink's segment.
    pub fn find(snapshot: &Snapshot, segment: SubnetId) -> Option<Link<'_>> {
        if let Some(subnet) = snapshot.subnet(segment) {
            return Some(Link::Subnet(subnet));
        }
        snapshot
            .uplink
            .as_ref()
            .filter(|uplink| uplink.segment == segment)
            .map(Link::Uplink)
    }
}

/// The longest-prefix match for `destination` in `network`: the egress subnet and the next
/// hop on it. `None` when there is no route, the route leads nowhere in this snapshot, or
/// through the switch itself (which would loop).
pub fn lookup(
    snapshot: &Snapshot,
    network: NetworkId,
    destination: Ipv4Addr,
) -> Option<(&RouteEntry, &SubnetEntry, Ipv4Addr)> {
    let route = snapshot.network(network)?.lookup(destination)?;
    let egress = snapshot.subnet(route.subnet)?;
    let next_hop = match route.next_hop {
        NextHop::Direct => destination,
        NextHop::Via(address) => address,
    };
    Some((route, egress, next_hop))
}

/// Records that the sender of a routed packet from `ingress` is a neighbour on `subnet` (port
/// security made its address and MAC trustworthy), so replies need no ARP.
pub fn confirm_sender(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    out: &mut Output,
) {
    let L3::Ipv4 { src, .. } = parsed.l3 else {
        return;
    };
    if !ingress.ips.contains(&src) || ctx.is_dry_run() {
        return;
    }
    let confirmation = ctx
        .neighbors
        .confirm(subnet.id, src, parsed.src_mac, ctx.now_ms, true);
    out.note_confirmation(confirmation);
}

/// Routes an IPv4 frame from `ingress` (in `subnet`) that was sent to the gateway MAC (see
/// the module docs). The frame is rewritten in place; the verdict says where it goes, or
/// whether it was consumed (held, fragmented, answered) or dropped.
pub fn route(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Verdict {
    let L3::Ipv4 { dst, .. } = parsed.l3 else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let now = ctx.now_ms;
    let Some((start, end)) = ip_bounds(frame) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let Ok(ip) = Ipv4Packet::new_checked(&frame[start..end]) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    crate::cost::checksummed(usize::from(ip.header_len()));
    if !ip.verify_checksum() {
        return Verdict::drop(DropReason::BadChecksum);
    }
    if let Some(balancer) = ctx.snapshot.balancer(subnet.network_id, dst.into()) {
        return super::lb::forward(ctx, ingress, subnet, parsed, frame, local, balancer);
    }
    let route = ctx
        .snapshot
        .network(subnet.network_id)
        .and_then(|network| network.lookup(dst));
    let egress = route.and_then(|route| ctx.snapshot.subnet(route.subnet));
    trace_note!(
        ctx,
        Route,
        "Network {}: {dst} {}",
        subnet.network,
        match route.zip(egress) {
            Some((route, egress)) => format!(
                "matches {} ({:?}), next hop {}, egress subnet {}",
                route.prefix,
                route.origin,
                match route.next_hop {
                    NextHop::Direct => "direct".to_owned(),
                    NextHop::Via(address) => format!("via {address}"),
                },
                egress.name
            ),
            None => "matches no route".to_owned(),
        }
    );
    let to_switch = dst == subnet.gateway
        || route.zip(egress).is_some_and(|(route, egress)| {
            route.next_hop == NextHop::Direct && egress.gateway == dst
        });
    if to_switch {
        if let Some(verdict) = super::lb::probe_answer(ctx, ingress, subnet, parsed, frame, local) {
            return verdict;
        }
        return icmp::to_gateway(now, ingress, subnet, parsed, frame, &mut local.out, dst);
    }
    if is_martian(dst) {
        return Verdict::drop(DropReason::BadDestination);
    }
    let errors = ErrorPath::subnet(ingress.id, parsed.src_mac, subnet);
    let (Some(route), Some(egress)) = (route, egress) else {
        // Outside every Network's routes: the uplink (routed, or through NAT), when there
        // is one.
        if ctx.snapshot.uplink.is_some() {
            return super::uplink::outbound(ctx, ingress, subnet, parsed, frame, local);
        }
        icmp::send_error_via(
            &mut local.out,
            now,
            Kind::NetUnreachable,
            &errors,
            &frame[start..end],
        );
        return Verdict::drop(DropReason::NoRoute);
    };
    if egress.cidr.prefix_len() < 31 && dst == egress.cidr.broadcast() {
        return Verdict::drop(DropReason::BadDestination);
    }
    let next_hop = match route.next_hop {
        NextHop::Direct => dst,
        NextHop::Via(address) => address,
    };
    if next_hop == egress.gateway {
        // A route through the switch itself would loop.
        icmp::send_error_via(
            &mut local.out,
            now,
            Kind::NetUnreachable,
            &errors,
            &frame[start..end],
        );
        return Verdict::drop(DropReason::NoRoute);
    }
    if let Err(cause) = super::policy::admit(ctx, subnet.network_id, Some(ingress.id), None, frame)
    {
        return Verdict::Drop(cause);
    }
    let hop = Hop {
        link: Link::Subnet(egress),
        next_hop,
    };
    forward(ctx, &errors, hop, parsed, frame, local, None, |ctx, out| {
        confirm_sender(ctx, ingress, subnet, parsed, out);
    })
}

/// Where a routed packet goes next: a link and the neighbour on it.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The egress link.
    pub link: Link<'a>,
    /// The neighbour the frame is addressed to (the destination itself when on-link).
    pub next_hop: Ipv4Addr,
}

/// Forwards an IPv4 frame whose route is decided (steps 5 to 9 of the module docs): TTL and
/// MTU checks against `hop`'s link (ICMP errors about the packet as received go along
/// `errors`), then `accepted` (the packet will be forwarded: confirm its sender), then the
/// rewrite: the NAT `translation` if any (to its target tuple, before fragmenting: NAT
/// refuses fragments), TTL, MACs, neighbour resolution (hold while unresolved), delivery.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &Context<'_>,
    errors: &ErrorPath,
    hop: Hop<'_>,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
    translation: Option<&::nat::Tuple>,
    accepted: impl FnOnce(&Context<'_>, &mut Output),
) -> Verdict {
    let now = ctx.now_ms;
    let Some((start, end)) = ip_bounds(frame) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let Ok(ip) = Ipv4Packet::new_checked(&frame[start..end]) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let original = &frame[start..end];
    let error = |kind: Kind, out: &mut Output| {
        icmp::send_error_via(out, now, kind, errors, original);
    };
    if ip.hop_limit() <= 1 {
        error(Kind::TtlExceeded, &mut local.out);
        return Verdict::drop(DropReason::TtlExpired);
    }
    let link = hop.link;
    let mtu = usize::from(link.mtu());
    let too_big = Kind::FragmentationNeeded {
        next_hop_mtu: link.mtu(),
    };
    let mut gso_size = None;
    match parsed.vnet.gso {
        None => {
            if end - start > mtu && ip.dont_frag() {
                error(too_big, &mut local.out);
                return Verdict::drop(DropReason::MtuExceeded);
            }
        }
        Some(gso) => {
            let headers = gso_headers(&ip, gso.kind);
            if headers + usize::from(gso.size) > mtu {
                if ip.dont_frag() {
                    error(too_big, &mut local.out);
                    return Verdict::drop(DropReason::MtuExceeded);
                }
                match u16::try_from(mtu.saturating_sub(headers)) {
                    Ok(size) if size > 0 && gso.kind == VnetGsoKind::TcpV4 => {
                        gso_size = Some(size);
                    }
                    _ => return Verdict::drop(DropReason::MtuExceeded),
                }
            }
        }
    }
    accepted(ctx, &mut local.out);

    // Rewrite: from here on the frame is the routed one.
    if let Some(target) = translation {
        let mode = match parsed.vnet.checksum {
            VnetChecksum::Partial { .. } => ::nat::ChecksumMode::Partial,
            VnetChecksum::None | VnetChecksum::Validated => ::nat::ChecksumMode::Full,
        };
        if let Err(error) = ::nat::translate(&mut frame[start..end], target, mode) {
            return Verdict::Drop(super::nat::translate_cause(error));
        }
        local.out.events.add(Event::NatTranslated);
    }
    if let Some(size) = gso_size {
        VnetPacket::new_unchecked(&mut frame[..]).set_gso_size(size);
        local.out.events.add(Event::GsoResized);
    }
    decrement_ttl(&mut Ipv4Packet::new_unchecked(&mut frame[start..end]));
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[VNET_HDR_LEN..]);
    ethernet.set_src_addr(EthernetAddress(link.mac()));
    let next_hop = hop.next_hop;
    let resolution = if ctx.is_dry_run() {
        ctx.neighbors.peek(link.segment(), next_hop)
    } else {
        ctx.neighbors.resolve(link.segment(), next_hop, now)
    };
    trace_note!(
        ctx,
        Neighbor,
        "next hop {next_hop} on {}: {}",
        link.name(),
        match resolution {
            Resolution::Known { mac, .. } => format!(
                "{} ({})",
                super::trace::Mac(mac),
                ctx.neighbors
                    .state(link.segment(), next_hop, now)
                    .map_or("resolved", |state| state.as_str())
            ),
            Resolution::Unresolved { solicit: true } =>
                "unresolved: ARP request sent, packet held".to_owned(),
            Resolution::Unresolved { solicit: false } =>
                "unresolved, ARP request already out: packet held".to_owned(),
            Resolution::TableFull => "neighbour table full".to_owned(),
        }
    );
    match resolution {
        Resolution::Known { mac, probe } => {
            if probe {
                arp::request(ctx, &mut local.out, link, next_hop, Some(mac));
            }
            ethernet.set_dst_addr(EthernetAddress(mac));
            deliver(ctx, errors.to, link, frame, &mut local.out)
        }
        Resolution::Unresolved { solicit } => {
            if solicit {
                arp::request(ctx, &mut local.out, link, next_hop, None);
            }
            let held = Held {
                subnet: link.segment(),
                next_hop: next_hop.into(),
                ingress: errors.to,
                sender_mac: errors.sender_mac,
                deadline_ms: now.saturating_add(HOLD_MS),
                translated: translation.is_some(),
            };
            local.hold(held, frame)
        }
        Resolution::TableFull => Verdict::drop(DropReason::NeighborTableFull),
    }
}

/// Sends a routed frame (TTL decremented, both MACs rewritten) onto `link`: in a subnet the
/// [`l2`] decision, on the uplink its queue; and fragmentation when it is larger than the
/// link's MTU (DF is clear then: [`forward`] checked). The verdict is for the frame itself;
/// fragments go to `out.generated` and the frame is [`Verdict::Consumed`].
pub fn deliver(
    ctx: &Context<'_>,
    ingress: PortId,
    link: Link<'_>,
    frame: &mut [u8],
    out: &mut Output,
) -> Verdict {
    let Ok(ethernet) = EthernetFrame::new_checked(&frame[VNET_HDR_LEN..]) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let verdict = match link {
        Link::Subnet(egress) => l2::destination(ctx, egress, ethernet.dst_addr().0, Some(ingress)),
        Link::Uplink(uplink) => Verdict::Forward(uplink.id),
    };
    if let Verdict::Drop(_) = verdict {
        return verdict;
    }
    let Some((start, end)) = ip_bounds(frame) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let Ok(vnet) = VnetPacket::new_checked(&frame[..]) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let mtu = usize::from(link.mtu());
    if vnet.is_gso() || end - start <= mtu {
        out.events.add(Event::Routed);
        return verdict;
    }
    let dont_frag = Ipv4Packet::new_checked(&frame[start..end]).is_ok_and(|ip| ip.dont_frag());
    if dont_frag {
        return Verdict::drop(DropReason::MtuExceeded);
    }
    // Fragments carry no offload: complete a partial checksum over the whole datagram first.
    if vnet.needs_csum() {
        let (csum_start, csum_offset) = (vnet.csum_start(), vnet.csum_offset());
        let completed = complete_partial_checksum(
            &mut frame[VNET_HDR_LEN..],
            usize::from(csum_start),
            usize::from(csum_offset),
        );
        if completed.is_err() {
            return Verdict::drop(tx::DropReason::Checksum);
        }
        let mut vnet = VnetPacket::new_unchecked(&mut frame[..]);
        vnet.set_flags(vnet.flags() & !flags::NEEDS_CSUM);
        vnet.set_csum_start(0);
        vnet.set_csum_offset(0);
    }
    let mut fragmenter = match Fragmenter::new(&frame[start..end], mtu) {
        Ok(fragmenter) => fragmenter,
        Err(FragmentError::BadOptions) => return Verdict::drop(DropReason::BadOptions),
        Err(_) => return Verdict::drop(DropReason::MtuExceeded),
    };
    let count = fragmenter.count();
    let bytes = fragmenter.total_len() + count * (VNET_HDR_LEN + ETHERNET_HEADER_LEN);
    if !out.generated.has_room(count, bytes) {
        return Verdict::drop(DropReason::NoBuffer);
    }
    let ethernet_header = &frame[VNET_HDR_LEN..start];
    while let Some(len) = fragmenter.next_len() {
        let Some(buf) =
            out.generated
                .push_ethernet(ETHERNET_HEADER_LEN + len, verdict, Origin::Routed)
        else {
            // Cannot happen: the room was checked for every fragment.
            return Verdict::drop(DropReason::NoBuffer);
        };
        let (header, packet) = buf.split_at_mut(ETHERNET_HEADER_LEN);
        header.copy_from_slice(ethernet_header);
        if fragmenter.emit_next(packet).is_none() {
            out.generated.pop();
            return Verdict::drop(DropReason::NoBuffer);
        }
    }
    out.events.add(Event::Fragmented);
    out.events.add(Event::Routed);
    Verdict::Consumed
}

/// Works through a worker's held packets (call it when [`HeldQueue`] is not empty, at least
/// every few tens of milliseconds, and after an ARP answer): packets whose next hop is now
/// known are sent (into `local.out.generated`), those past their deadline are dropped with
/// `l3.arp_timeout` (`nat.no_gateway_mac` on the uplink; counted through `on_drop` on their
/// ingress port) and get ICMP host unreachable (unless NAT rewrote them: the sender would not
/// recognise the quote), and ARP requests are retransmitted when due. A packet that does not
/// fit the generated frames any more stays held for the next call.
pub fn service_held(
    ctx: &Context<'_>,
    local: &mut Local,
    mut on_drop: impl FnMut(PortId, DropCause),
) {
    let now = ctx.now_ms;
    let Local { out, held } = local;
    for n in 0..held.order_len() {
        let Some(index) = held.nth(n) else {
            continue;
        };
        match service_one(ctx, out, held, index, now) {
            Serviced::Kept => {}
            Serviced::Full => break,
            Serviced::Done(cause) => {
                if let Some((held_packet, _)) = held.get(index) {
                    if let Some(cause) = cause {
                        on_drop(held_packet.ingress, cause);
                    }
                }
                held.release(index);
            }
        }
    }
    held.compact();
}

/// What became of one held packet.
enum Serviced {
    /// Still waiting.
    Kept,
    /// No room left in the generated frames: stop for now.
    Full,
    /// Sent (`None`) or dropped for this cause: free its slot.
    Done(Option<DropCause>),
}

fn service_one(
    ctx: &Context<'_>,
    out: &mut Output,
    held: &mut HeldQueue,
    index: usize,
    now: u64,
) -> Serviced {
    let Some((packet, frame)) = held.get(index) else {
        return Serviced::Kept;
    };
    let Some(link) = Link::find(ctx.snapshot, packet.subnet) else {
        return Serviced::Done(Some(DropReason::NoRoute.into()));
    };
    let next_hop = match packet.next_hop {
        std::net::IpAddr::V4(next_hop) => next_hop,
        std::net::IpAddr::V6(next_hop) => {
            return service_one6(ctx, out, packet, frame, link, next_hop, now);
        }
    };
    if let Some(mac) = ctx.neighbors.lookup(packet.subnet, packet.next_hop) {
        // Room for the frame itself; fragments are checked by `deliver`.
        if !out.generated.has_room(1, frame.len()) {
            return Serviced::Full;
        }
        EthernetFrame::new_unchecked(&mut frame[VNET_HDR_LEN..]).set_dst_addr(EthernetAddress(mac));
        return match deliver(ctx, packet.ingress, link, frame, out) {
            Verdict::Drop(DropCause::L3(DropReason::NoBuffer)) => Serviced::Full,
            Verdict::Drop(cause) => Serviced::Done(Some(cause)),
            Verdict::Consumed => {
                out.events.add(Event::HeldReleased);
                Serviced::Done(None)
            }
            verdict => {
                // Cannot fail: the room was checked.
                out.generated.push_copy(frame, verdict, Origin::Routed);
                out.events.add(Event::HeldReleased);
                Serviced::Done(None)
            }
        };
    }
    if now >= packet.deadline_ms {
        // The port id may have been reused since (by a port with another MAC): then the
        // sender is gone and gets nothing.
        let sender_subnet = ctx
            .snapshot
            .port(packet.ingress)
            .filter(|port| port.mac == packet.sender_mac && !packet.translated)
            .and_then(|port| ctx.snapshot.subnet(port.subnet));
        if let (Some(subnet), Some((start, end))) = (sender_subnet, ip_bounds(frame)) {
            icmp::send_error(
                out,
                now,
                Kind::HostUnreachable,
                subnet,
                packet.ingress,
                packet.sender_mac,
                &frame[start..end],
            );
        }
        let cause = match link {
            Link::Subnet(_) => DropCause::from(DropReason::ArpTimeout),
            Link::Uplink(_) => DropCause::from(super::nat::DropReason::NoGatewayMac),
        };
        return Serviced::Done(Some(cause));
    }
    if ctx.neighbors.solicit(packet.subnet, packet.next_hop, now) == Solicit::Send {
        arp::request(ctx, out, link, next_hop, None);
    }
    Serviced::Kept
}

/// [`service_one`] for a packet held for an IPv6 next hop on `egress`.
fn service_one6(
    ctx: &Context<'_>,
    out: &mut Output,
    packet: Held,
    frame: &mut [u8],
    link: Link<'_>,
    next_hop: std::net::Ipv6Addr,
    now: u64,
) -> Serviced {
    if let Some(mac) = ctx.neighbors.lookup(packet.subnet, next_hop) {
        if !out.generated.has_room(1, frame.len()) {
            return Serviced::Full;
        }
        EthernetFrame::new_unchecked(&mut frame[VNET_HDR_LEN..]).set_dst_addr(EthernetAddress(mac));
        let verdict = match link {
            Link::Subnet(egress) => super::route6::deliver(ctx, packet.ingress, egress, frame, out),
            Link::Uplink(uplink) => {
                out.events.add(Event::Routed);
                Verdict::Forward(uplink.id)
            }
        };
        return match verdict {
            Verdict::Drop(cause) => Serviced::Done(Some(cause)),
            verdict => {
                out.generated.push_copy(frame, verdict, Origin::Routed);
                out.events.add(Event::HeldReleased);
                Serviced::Done(None)
            }
        };
    }
    if now >= packet.deadline_ms {
        let sender_subnet = ctx
            .snapshot
            .port(packet.ingress)
            .filter(|port| port.mac == packet.sender_mac && !packet.translated)
            .and_then(|port| ctx.snapshot.subnet(port.subnet));
        if let (Some(subnet), Some((start, end))) =
            (sender_subnet, super::route6::packet_bounds(frame))
        {
            super::route6::send_error(
                out,
                now,
                crate::wire::ipv6::ErrorKind::DestinationUnreachable { code: 3 },
                subnet,
                packet.ingress,
                packet.sender_mac,
                &frame[start..end],
                false,
            );
        }
        return Serviced::Done(Some(DropReason::NdTimeout.into()));
    }
    if ctx.neighbors.solicit(packet.subnet, next_hop, now) == Solicit::Send {
        match link {
            Link::Subnet(egress) => {
                super::nd::solicit(ctx, out, egress, next_hop, None);
            }
            Link::Uplink(uplink) => {
                if let Some(v6) = &uplink.ipv6 {
                    super::nat6::solicit(out, uplink, v6, next_hop, None);
                }
            }
        }
    }
    Serviced::Kept
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use smoltcp::wire::{IpAddress, IpProtocol, UdpPacket};

    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::generated::Origin;
    use crate::port::{Capabilities, PortId};
    use crate::tables::neigh::{NeighborState, REACHABLE_MS};
    use crate::tables::snapshot::{
        NetworkEntry, NetworkId, RouteEntry, RouteOrigin, Snapshot, SubnetId,
    };
    use crate::wire::checksum::{self, pseudo_header_ipv4};
    use crate::wire::vnet_hdr::gso;

    const BLUE: SubnetId = SubnetId(1);
    const RED: SubnetId = SubnetId(2);

    /// UDP 40000 -> 33434 with 12 bytes of data, checksum 0 (none).
    const UDP: [u8; 20] = [
        0x9c, 0x40, 0x82, 0x9a, 0x00, 0x14, 0x00, 0x00, b'a', b'b', b'c', b'd', b'e', b'f', b'g',
        b'h', b'i', b'j', b'k', b'l',
    ];

    /// UDP from port 1 (blue) to `dst` through the blue gateway.
    fn udp_to(dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
        ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            dst,
            ttl,
            IpProtocol::Udp,
            false,
            &UDP,
        )
    }

    fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
        Ipv4Packet::new_checked(&frame[VNET_HDR_LEN + ETHERNET_HEADER_LEN..]).unwrap()
    }

    fn dropped(reason: DropReason) -> Verdict {
        Verdict::Drop(DropCause::L3(reason))
    }

    /// Makes port 4 (10.9.0.2) a known neighbour on red, learned on port 4.
    fn know_port4(bench: &Bench) {
        bench.neighbors.confirm(RED, IP_D, MAC_D, 0, true);
        let red = bench.snapshot.subnet(RED).unwrap();
        bench.fdb.learn(red, MAC_D, PortId(4), 0);
    }

    /// The routed snapshot with red's MTU set to `mtu`.
    fn red_mtu(mtu: u16) -> Snapshot {
        let base = routed_snapshot();
        let mut subnets = base.subnets().to_vec();
        subnets[1].mtu = mtu;
        Snapshot::new(base.ports().to_vec(), subnets).with_networks(base.networks().to_vec())
    }

    #[test]
    fn routes_between_two_subnets_rewriting_macs_and_ttl() {
        let bench = Bench::with(routed_snapshot());
        know_port4(&bench);
        let original = udp_to(IP_D, 64);
        let (outcome, routed) = bench.run(1, &original, 10);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(4)));
        let mut expected = original.clone();
        // Ethernet: to port 4's MAC, from red's gateway MAC.
        expected[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&MAC_D);
        expected[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&GW_RED_MAC);
        // TTL 63, and the checksum a full recompute gives.
        let ip = VNET_HDR_LEN + 14;
        expected[ip + 8] = 63;
        expected[ip + 10..ip + 12].fill(0);
        let sum = checksum::checksum(&expected[ip..ip + 20]);
        expected[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(routed, expected);
        assert!(bench.generated().is_empty());
        let events = &bench.local.borrow().out.events;
        assert_eq!(events.get(Event::Routed), 1);
        // The sender became a neighbour on blue (routed traffic from its own address).
        assert_eq!(bench.neighbors.lookup(BLUE, IP_A), Some(MAC_A));
    }

    #[test]
    fn unknown_learned_port_floods_the_egress_subnet_except_ingress() {
        let bench = Bench::with(routed_snapshot());
        bench.neighbors.confirm(RED, IP_D, MAC_D, 0, true);
        assert_eq!(
            bench.send(1, &udp_to(IP_D, 64), 0).verdict,
            Verdict::FloodSubnet {
                subnet: RED,
                except: Some(PortId(1))
            }
        );
    }

    #[test]
    fn ttl_expiry_sends_time_exceeded_from_the_ingress_gateway() {
        let bench = Bench::with(routed_snapshot());
        know_port4(&bench);
        let original = udp_to(IP_D, 1);
        assert_eq!(
            bench.send(1, &original, 0).verdict,
            dropped(DropReason::TtlExpired)
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let (verdict, origin, bytes) = &generated[0];
        assert_eq!(
            (*verdict, *origin),
            (Verdict::Forward(PortId(1)), Origin::Switch)
        );
        let mut expected = vec![
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // virtio_net_hdr
            // Ethernet: back to the sender, from the blue gateway.
            0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0xee, 0x01, 0x08, 0x00,
            // IPv4: TOS 0xc0, 68 bytes, ident 1, TTL 64, ICMP, 172.30.0.1 -> 172.30.0.2
            0x45, 0xc0, 0x00, 0x44, 0x00, 0x01, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 172, 30, 0, 1,
            172, 30, 0, 2, //
            // ICMP time exceeded in transit, unused
            11, 0, 0x00, 0x00, 0, 0, 0, 0,
        ];
        // The quote: the original IP header (TTL 1, as received) and all 20 bytes of data.
        expected.extend_from_slice(&original[VNET_HDR_LEN + 14..]);
        let ip_sum = checksum::checksum(&expected[24..44]);
        expected[34..36].copy_from_slice(&ip_sum.to_be_bytes());
        let icmp_sum = checksum::checksum(&expected[44..]);
        expected[46..48].copy_from_slice(&icmp_sum.to_be_bytes());
        assert_eq!(bytes, &expected);
        assert_eq!(bytes[VNET_HDR_LEN + 14 + 28 + 8], 1, "quoted TTL");
        // TTL 0 too.
        assert_eq!(
            bench.send(1, &udp_to(IP_D, 0), 0).verdict,
            dropped(DropReason::TtlExpired)
        );
    }

    #[test]
    fn no_route_sends_net_unreachable() {
        let bench = Bench::with(routed_snapshot());
        let far = Ipv4Addr::new(8, 8, 8, 8);
        assert_eq!(
            bench.send(1, &udp_to(far, 64), 0).verdict,
            dropped(DropReason::NoRoute)
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let icmp = &generated[0].2[VNET_HDR_LEN + 34..];
        assert_eq!((icmp[0], icmp[1]), (3, 0));
        assert_eq!(ip_of(&generated[0].2).src_addr(), GW_BLUE);
        assert_eq!(
            &icmp[8..28],
            &udp_to(far, 64)[VNET_HDR_LEN + 14..VNET_HDR_LEN + 34]
        );
        // Without any Network in the snapshot, nothing is routed either.
        let bench = Bench::new();
        assert_eq!(
            bench.send(1, &udp_to(IP_D, 64), 0).verdict,
            dropped(DropReason::NoRoute)
        );
    }

    #[test]
    fn df_and_too_big_sends_fragmentation_needed_with_the_mtu() {
        let bench = Bench::with(red_mtu(1000));
        know_port4(&bench);
        let frame = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            IP_D,
            64,
            IpProtocol::Udp,
            true,
            &[0u8; 1200],
        );
        assert_eq!(
            bench.send(1, &frame, 0).verdict,
            dropped(DropReason::MtuExceeded)
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let message = &generated[0].2[VNET_HDR_LEN + 14..];
        assert_eq!(message.len(), 576, "quote capped at 576 bytes in all");
        let icmp = &message[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(&icmp[4..8], &[0, 0, 0x03, 0xe8], "next-hop MTU 1000");
        assert_eq!(checksum::sum(icmp), 0xffff);
        // Exactly the MTU passes.
        let fits = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            IP_D,
            64,
            IpProtocol::Udp,
            true,
            &[0u8; 980],
        );
        assert_eq!(bench.send(1, &fits, 0).verdict, Verdict::Forward(PortId(4)));
    }

    #[test]
    fn without_df_a_packet_is_fragmented() {
        let bench = Bench::with(red_mtu(576));
        know_port4(&bench);
        let payload: Vec<u8> = (0..1400u32)
            .map(|i| u8::try_from(i % 253).unwrap())
            .collect();
        let frame = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            IP_D,
            64,
            IpProtocol::Udp,
            false,
            &payload,
        );
        assert_eq!(bench.send(1, &frame, 0).verdict, Verdict::Consumed);
        let fragments = bench.generated();
        assert_eq!(fragments.len(), 3);
        let mut data = Vec::new();
        for (index, (verdict, origin, bytes)) in fragments.iter().enumerate() {
            assert_eq!(
                (*verdict, *origin),
                (Verdict::Forward(PortId(4)), Origin::Routed)
            );
            assert_eq!(&bytes[..VNET_HDR_LEN], &[0; VNET_HDR_LEN], "no offload");
            assert_eq!(&bytes[VNET_HDR_LEN..VNET_HDR_LEN + 6], &MAC_D);
            assert_eq!(&bytes[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &GW_RED_MAC);
            let ip = ip_of(bytes);
            assert!(ip.verify_checksum());
            assert!(usize::from(ip.total_len()) <= 576);
            assert_eq!(ip.hop_limit(), 63);
            assert_eq!(ip.ident(), 0x4242);
            assert_eq!(usize::from(ip.frag_offset()), data.len());
            assert_eq!(ip.more_frags(), index < 2);
            data.extend_from_slice(ip.payload());
        }
        assert_eq!(data, payload);
        let events = &bench.local.borrow().out.events;
        assert_eq!(events.get(Event::Fragmented), 1);
    }

    #[test]
    fn a_partial_checksum_is_completed_before_fragmenting_and_kept_otherwise() {
        let bench = Bench::with(red_mtu(576));
        know_port4(&bench);
        let data = vec![0x77u8; 1000];
        let mut udp = vec![0u8; 8 + data.len()];
        udp[8..].copy_from_slice(&data);
        let mut frame = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            IP_D,
            64,
            IpProtocol::Udp,
            false,
            &udp,
        );
        let udp_len = u16::try_from(udp.len()).unwrap();
        {
            let mut packet = UdpPacket::new_unchecked(&mut frame[VNET_HDR_LEN + 34..]);
            packet.set_src_port(5000);
            packet.set_dst_port(6000);
            packet.set_len(udp_len);
            packet.set_checksum(pseudo_header_ipv4(IP_A, IP_D, 17, udp_len));
        }
        frame[0] = flags::NEEDS_CSUM;
        frame[6..8].copy_from_slice(&34u16.to_le_bytes());
        frame[8..10].copy_from_slice(&6u16.to_le_bytes());
        assert_eq!(bench.send(1, &frame, 0).verdict, Verdict::Consumed);
        let mut reassembled = Vec::new();
        for (_, _, bytes) in bench.generated() {
            reassembled.extend_from_slice(ip_of(&bytes).payload());
        }
        let udp = UdpPacket::new_checked(&reassembled[..]).unwrap();
        assert!(udp.verify_checksum(&IpAddress::Ipv4(IP_A), &IpAddress::Ipv4(IP_D)));
        // Small enough: routed with its partial checksum and offsets untouched; the egress
        // port (or its kernel) completes it.
        let bench = Bench::with(routed_snapshot());
        know_port4(&bench);
        let (outcome, mut routed) = bench.run(1, &frame, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(4)));
        assert_eq!(&routed[..VNET_HDR_LEN], &frame[..VNET_HDR_LEN]);
        let plain = Capabilities::default();
        tx::prepare(&mut routed, &plain).unwrap();
        let udp = UdpPacket::new_checked(&routed[VNET_HDR_LEN + 34..]).unwrap();
        assert!(udp.verify_checksum(&IpAddress::Ipv4(IP_A), &IpAddress::Ipv4(IP_D)));
    }

    /// A TCP GSO super-frame of `segments` * 1448 bytes from port 1 to port 4.
    fn tso_frame(dont_frag: bool, gso_size: u16) -> Vec<u8> {
        let mut tcp = vec![0u8; 20 + 3 * 1448];
        tcp[12] = 0x50;
        let mut frame = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            IP_D,
            64,
            IpProtocol::Tcp,
            dont_frag,
            &tcp,
        );
        frame[0] = flags::NEEDS_CSUM;
        frame[1] = gso::TCPV4;
        frame[4..6].copy_from_slice(&gso_size.to_le_bytes());
        frame[6..8].copy_from_slice(&34u16.to_le_bytes());
        frame[8..10].copy_from_slice(&16u16.to_le_bytes());
        frame
    }

    #[test]
    fn gso_frames_are_measured_by_their_segments() {
        // 20 + 20 + 1448 = 1488 fits 1500: routed as it is, although 4364 bytes long.
        let bench = Bench::with(red_mtu(1500));
        know_port4(&bench);
        let (outcome, routed) = bench.run(1, &tso_frame(true, 1448), 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(4)));
        assert_eq!(
            &routed[..VNET_HDR_LEN],
            &tso_frame(true, 1448)[..VNET_HDR_LEN]
        );
        assert_eq!(ip_of(&routed).hop_limit(), 63);
        // MTU 1400 with DF: fragmentation needed, with 1400.
        let bench = Bench::with(red_mtu(1400));
        know_port4(&bench);
        assert_eq!(
            bench.send(1, &tso_frame(true, 1448), 0).verdict,
            dropped(DropReason::MtuExceeded)
        );
        let generated = bench.generated();
        let icmp = &generated[0].2[VNET_HDR_LEN + 34..];
        assert_eq!((icmp[0], icmp[1], &icmp[6..8]), (3, 4, &[0x05, 0x78][..]));
        // Without DF: the segments shrink to fit.
        let (outcome, routed) = bench.run(1, &tso_frame(false, 1448), 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(4)));
        let vnet = VnetPacket::new_checked(&routed[..]).unwrap();
        assert_eq!(vnet.gso_size(), 1400 - 40);
        assert_eq!(bench.local.borrow().out.events.get(Event::GsoResized), 1);
    }

    #[test]
    fn unknown_next_hop_is_held_resolved_and_released() {
        let bench = Bench::with(routed_snapshot());
        let first = udp_to(IP_D, 64);
        assert_eq!(bench.send(1, &first, 0).verdict, Verdict::Consumed, "held");
        // An ARP request for 10.9.0.2 from red's gateway, into red.
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        assert_eq!(
            generated[0].0,
            Verdict::FloodSubnet {
                subnet: RED,
                except: None
            }
        );
        let arp = &generated[0].2[VNET_HDR_LEN..];
        assert_eq!(&arp[6..12], &GW_RED_MAC);
        assert_eq!(&arp[28..32], &GW_RED.octets());
        assert_eq!(&arp[38..42], &IP_D.octets());
        assert_eq!(
            bench.neighbors.state(RED, IP_D, 0),
            Some(NeighborState::Incomplete)
        );
        // A second packet waits too, without a second request.
        assert_eq!(bench.send(1, &first, 100).verdict, Verdict::Consumed);
        assert!(bench.generated().is_empty());
        assert_eq!(bench.local.borrow().held.len(), 2);
        // Port 4 answers the gateway.
        let mut reply = with_dst_mac(&with_src_mac(&ARP_REQUEST, MAC_D), GW_RED_MAC);
        let at = VNET_HDR_LEN + 14;
        reply[at + 7] = 2;
        reply[at + 8..at + 14].copy_from_slice(&MAC_D);
        reply[at + 14..at + 18].copy_from_slice(&IP_D.octets());
        reply[at + 18..at + 24].copy_from_slice(&GW_RED_MAC);
        reply[at + 24..at + 28].copy_from_slice(&GW_RED.octets());
        assert_eq!(bench.send(4, &reply, 200).verdict, Verdict::Consumed);
        // The worker services its held packets: both go to port 4, in order.
        let mut local = bench.local.borrow_mut();
        local.out.generated.clear();
        let mut drops = Vec::new();
        service_held(&bench.ctx(210), &mut local, |port, cause| {
            drops.push((port, cause))
        });
        drop(local);
        assert!(drops.is_empty());
        let released = bench.generated();
        assert_eq!(released.len(), 2);
        for (verdict, origin, bytes) in &released {
            assert_eq!(
                (*verdict, *origin),
                (Verdict::Forward(PortId(4)), Origin::Routed)
            );
            assert_eq!(&bytes[VNET_HDR_LEN..VNET_HDR_LEN + 6], &MAC_D);
            assert_eq!(ip_of(bytes).hop_limit(), 63);
            assert!(ip_of(bytes).verify_checksum());
        }
        assert!(bench.local.borrow().held.is_empty());
        assert_eq!(bench.local.borrow().out.events.get(Event::HeldReleased), 2);
    }

    #[test]
    fn held_packets_time_out_with_host_unreachable() {
        let bench = Bench::with(routed_snapshot());
        bench.send(1, &udp_to(IP_D, 64), 0);
        let mut drops = Vec::new();
        let mut requests = 0;
        for now in [500, 1_000, 1_500, 2_000, 2_999] {
            let mut local = bench.local.borrow_mut();
            local.out.generated.clear();
            service_held(&bench.ctx(now), &mut local, |port, cause| {
                drops.push((port, cause))
            });
            drop(local);
            requests += bench.generated().len();
        }
        assert_eq!(requests, 2, "retransmitted at 1 s and 2 s");
        assert!(drops.is_empty());
        let mut local = bench.local.borrow_mut();
        local.out.generated.clear();
        service_held(&bench.ctx(3_000), &mut local, |port, cause| {
            drops.push((port, cause))
        });
        drop(local);
        assert_eq!(
            drops,
            vec![(PortId(1), DropCause::L3(DropReason::ArpTimeout))]
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let (verdict, _, bytes) = &generated[0];
        assert_eq!(*verdict, Verdict::Forward(PortId(1)));
        assert_eq!(
            &bytes[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            &MAC_A,
            "to the sender's MAC"
        );
        let icmp = &bytes[VNET_HDR_LEN + 34..];
        assert_eq!((icmp[0], icmp[1]), (3, 1));
        assert_eq!(ip_of(bytes).src_addr(), GW_BLUE);
        assert!(bench.local.borrow().held.is_empty());
    }

    #[test]
    fn the_hold_queue_is_bounded_per_next_hop() {
        let bench = Bench::with(routed_snapshot());
        for _ in 0..3 {
            assert_eq!(
                bench.send(1, &udp_to(IP_D, 64), 0).verdict,
                Verdict::Consumed
            );
        }
        assert_eq!(
            bench.send(1, &udp_to(IP_D, 64), 0).verdict,
            dropped(DropReason::HeldQueueFull)
        );
        // Another next hop still has room.
        let other = Ipv4Addr::new(10, 9, 0, 3);
        assert_eq!(
            bench.send(1, &udp_to(other, 64), 0).verdict,
            Verdict::Consumed
        );
    }

    #[test]
    fn a_stale_next_hop_is_used_and_reconfirmed() {
        let bench = Bench::with(routed_snapshot());
        know_port4(&bench);
        let later = REACHABLE_MS + 1;
        let outcome = bench.send(1, &udp_to(IP_D, 64), later);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(4)), "still used");
        let generated = bench.generated();
        assert_eq!(generated.len(), 1, "one unicast probe");
        assert_eq!(generated[0].0, Verdict::Forward(PortId(4)));
        assert_eq!(&generated[0].2[VNET_HDR_LEN..VNET_HDR_LEN + 6], &MAC_D);
    }

    #[test]
    fn routes_via_a_next_hop_router() {
        // 192.168.50.0/24 via port 5 (10.9.0.3), a router on red.
        let via = RouteEntry {
            prefix: "192.168.50.0/24".parse().unwrap(),
            subnet: RED,
            next_hop: NextHop::Via(Ipv4Addr::new(10, 9, 0, 3)),
            origin: RouteOrigin::Static("to-lab".into()),
        };
        let bench = Bench::with(routed_snapshot_with(vec![via]));
        bench
            .neighbors
            .confirm(RED, Ipv4Addr::new(10, 9, 0, 3), MAC_E, 0, true);
        let (outcome, routed) = bench.run(1, &udp_to(Ipv4Addr::new(192, 168, 50, 9), 64), 0);
        assert_eq!(
            outcome.verdict,
            Verdict::FloodSubnet {
                subnet: RED,
                except: Some(PortId(1))
            }
        );
        assert_eq!(
            &routed[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            &MAC_E,
            "the router's MAC"
        );
        assert_eq!(ip_of(&routed).dst_addr(), Ipv4Addr::new(192, 168, 50, 9));
    }

    #[test]
    fn bad_checksums_and_martians_are_not_routed() {
        let bench = Bench::with(routed_snapshot());
        know_port4(&bench);
        let mut bad = udp_to(IP_D, 64);
        bad[VNET_HDR_LEN + 14 + 10] ^= 0x01;
        assert_eq!(
            bench.send(1, &bad, 0).verdict,
            dropped(DropReason::BadChecksum)
        );
        for destination in [
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 5),
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(10, 9, 0, 255),
        ] {
            assert_eq!(
                bench.send(1, &udp_to(destination, 64), 0).verdict,
                dropped(DropReason::BadDestination),
                "{destination}"
            );
        }
        assert!(bench.generated().is_empty());
        // IPv6 to the gateway MAC is route6's: fd00::b is on blue, held for ND.
        let ipv6 = with_dst_mac(&IPV6_ECHO, GW_BLUE_MAC);
        assert_eq!(bench.send(1, &ipv6, 0).verdict, Verdict::Consumed);
    }

    /// [`routed_snapshot`] plus a Network 1 with subnet 3 (`green`, 10.9.0.0/24 like red, and
    /// 192.168.7.0/24 reached by `extra` routes of Network 0) holding port 6.
    fn two_networks(extra_for_network0: Vec<RouteEntry>) -> Snapshot {
        let base = routed_snapshot();
        let mut ports = base.ports().to_vec();
        let mut green_port = ports[0].clone();
        green_port.id = PortId(6);
        green_port.name = "port6".into();
        green_port.subnet = SubnetId(3);
        green_port.mac = [0x02, 0, 0, 0, 0, 0x0f];
        green_port.ips = vec![Ipv4Addr::new(192, 168, 7, 2)];
        ports.push(green_port);
        let mut subnets = base.subnets().to_vec();
        let mut green = subnets[1].clone();
        green.id = SubnetId(3);
        green.name = "green".into();
        green.network = "other".into();
        green.network_id = NetworkId(1);
        green.cidr = "192.168.7.0/24".parse().unwrap();
        green.gateway = Ipv4Addr::new(192, 168, 7, 1);
        green.gateway_mac = [0x02, 0, 0, 0, 0xee, 3];
        green.ports = vec![PortId(6)];
        subnets.push(green);
        let mut routes: Vec<RouteEntry> = base.networks()[0].routes().cloned().collect();
        routes.extend(extra_for_network0);
        Snapshot::new(ports, subnets).with_networks(vec![
            NetworkEntry::new(NetworkId(0), "default".into(), routes),
            NetworkEntry::new(
                NetworkId(1),
                "other".into(),
                vec![connected("192.168.7.0/24", 3)],
            ),
        ])
    }

    #[test]
    fn networks_are_isolated_unless_a_route_exists() {
        let green_host = Ipv4Addr::new(192, 168, 7, 2);
        let green_gateway = Ipv4Addr::new(192, 168, 7, 1);
        let bench = Bench::with(two_networks(Vec::new()));
        bench
            .neighbors
            .confirm(SubnetId(3), green_host, [0x02, 0, 0, 0, 0, 0x0f], 0, true);
        // To a host of the other Network through our gateway: no route.
        assert_eq!(
            bench.send(1, &udp_to(green_host, 64), 0).verdict,
            dropped(DropReason::NoRoute)
        );
        // To the other Network's gateway address: not ours, no route either.
        assert_eq!(
            bench.send(1, &udp_to(green_gateway, 64), 0).verdict,
            dropped(DropReason::NoRoute)
        );
        // Straight to the other subnet's gateway MAC: not a gateway of ours, so not routed
        // (switched at L2 inside blue, where nobody has that MAC).
        let sideways = with_dst_mac(&udp_to(green_host, 64), [0x02, 0, 0, 0, 0xee, 3]);
        assert_eq!(bench.send(1, &sideways, 0).verdict, Verdict::Flood);
        // With a route (a Ready peering), it is routed into green.
        let peering = RouteEntry {
            prefix: "192.168.7.0/24".parse().unwrap(),
            subnet: SubnetId(3),
            next_hop: NextHop::Direct,
            origin: RouteOrigin::Peering("other".into()),
        };
        let bench = Bench::with(two_networks(vec![peering]));
        bench
            .neighbors
            .confirm(SubnetId(3), green_host, [0x02, 0, 0, 0, 0, 0x0f], 0, true);
        let (outcome, routed) = bench.run(1, &udp_to(green_host, 64), 0);
        assert_eq!(
            outcome.verdict,
            Verdict::FloodSubnet {
                subnet: SubnetId(3),
                except: Some(PortId(1))
            }
        );
        assert_eq!(
            &routed[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12],
            &[0x02, 0, 0, 0, 0xee, 3]
        );
    }

    #[test]
    fn held_packets_of_a_removed_subnet_are_dropped() {
        let bench = Bench::with(routed_snapshot());
        bench.send(1, &udp_to(IP_D, 64), 0);
        let without_red = {
            let base = routed_snapshot();
            let subnets = vec![base.subnets()[0].clone()];
            Snapshot::new(base.ports().to_vec(), subnets)
        };
        let other = Bench::with(without_red);
        let mut local = bench.local.borrow_mut();
        let mut drops = Vec::new();
        service_held(&other.ctx(10), &mut local, |port, cause| {
            drops.push((port, cause))
        });
        assert_eq!(drops, vec![(PortId(1), DropCause::L3(DropReason::NoRoute))]);
        assert!(local.held.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Whatever a port sends to its gateway — mutated headers, offload fields, lengths —
        /// routing never panics, and whatever it emits is well-formed enough to be framed.
        #[test]
        fn never_panics_on_mutated_frames_to_the_gateway(
            flips in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..8),
            vnet in proptest::collection::vec(proptest::prelude::any::<u8>(), 10),
            mtu in 0u16..2000,
            extra in 0usize..1600,
            known in proptest::prelude::any::<bool>(),
        ) {
            let bench = Bench::with(red_mtu(mtu));
            if known {
                know_port4(&bench);
            }
            let mut frame = ipv4_frame(
                MAC_A, GW_BLUE_MAC, IP_A, IP_D, 64, IpProtocol::Udp, false, &vec![0x33; extra],
            );
            frame[..VNET_HDR_LEN].copy_from_slice(&vnet);
            for (at, value) in flips {
                let at = VNET_HDR_LEN + 14 + at;
                // Keep the source (port security would stop the frame before L3).
                if (VNET_HDR_LEN + 14 + 12..VNET_HDR_LEN + 14 + 16).contains(&at) {
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
}
