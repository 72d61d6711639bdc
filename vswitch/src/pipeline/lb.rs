//! Stage `lb`: connections to a LoadBalancer's address are spread over its backends by
//! Maglev consistent hashing, and tracked, so that each keeps its backend for its life.
//!
//! - **To the address** ([`forward`], from [`l3::route`] when the destination is a
//!   LoadBalancer of the ingress port's Network; the switch answers ARP for an address
//!   inside a Subnet): the packet is looked up in conntrack in the Network's zone. A hit
//!   continues to its connection's backend. A miss: an ICMP error is dropped
//!   (`nat.untracked_icmp_error`); an echo request is answered from the address; a port or
//!   protocol the LoadBalancer does not serve is refused like a closed port (`lb.no_port`),
//!   and so is a new connection when no backend takes new ones (`lb.no_backend`): TCP gets
//!   a reset from the address, UDP an ICMP port unreachable. Otherwise the backend is the
//!   table's for the hash of the 5-tuple ([`lb::flow_hash`], one seed on every node), the
//!   destination becomes the backend's address and target port, and a connection is
//!   created, with the backend in its [`Attachments`]. A client that is itself the chosen
//!   backend (hairpin) has its source translated to the LoadBalancer's address too, or its
//!   own stack would drop the packet as coming from itself.
//! - **Replies** ([`reply`], from the ingress stages for frames of ports that are backends
//!   of a LoadBalancer, before L2 or L3 decide): a reply of a balanced connection goes back
//!   through the switch with its source translated back to the LoadBalancer's, even when
//!   the client is on the backend's own segment (it would otherwise be switched straight to
//!   the client, which expects the LoadBalancer's address). Other frames continue as usual.
//!
//! Either way the packet is then routed in the Network toward its translated destination
//! ([`nat::continue_in`]: TTL, MTU, translation, neighbour resolution). The table only
//! decides new connections: when the backends change, established connections keep theirs.
//!
//! IPv6 is the same stage: a dual-stack LoadBalancer is one [`Balancer`] per family (its
//! IPv6 backends' table beside its IPv4 one), reached from [`route6`] (and for a Public one
//! from the uplink's IPv6), answered by ND for an address inside a Subnet's prefix, refused
//! with a TCP reset or an ICMPv6 port unreachable, echo answered in place, and forwarded
//! through [`nat6::continue_in`] (hop limit, packet too big, translation, neighbour
//! discovery). Health probes of IPv6 backends come from the Subnet's IPv6 gateway and are
//! answered to it ([`probe_answer`] serves both families).

use std::net::{IpAddr, Ipv4Addr};

use ::nat::{
    Attachments, EchoKind, Endpoint, NatPlan, PacketInfo, PacketKind, Snat, Tracked, Zone,
};
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

use super::icmp::{self, ErrorPath};
use super::l3;
use super::nat;
use super::nat6::{self, Back};
use super::parse::{L3, Parsed};
use super::route6::{self, packet_bounds};
use super::{Context, DropCause, Local, Output, Verdict};
use crate::port::PortId;
use crate::tables::counters::{Event, keyed_enum};
use crate::tables::snapshot::{Balancer, PortEntry, ProbeBoard, SubnetEntry, UplinkEntry};
use crate::wire::icmp_error::{DEFAULT_TTL, Kind};
use crate::wire::ipv4::OwnHeader;
use crate::wire::ipv6::{self as wire6, ErrorKind as ErrorKind6};

keyed_enum! {
    /// Why `lb` refused a packet.
    pub enum DropReason {
        NoBackend = "lb.no_backend":
            "new connection to a LoadBalancer with no backend taking new ones (answered with a TCP reset or an ICMP port unreachable)",
        NoPort = "lb.no_port":
            "to a LoadBalancer's address on a port or protocol it does not serve (answered like a closed port)",
        BackendFamily = "lb.backend_family":
            "the chosen backend's address is not of the LoadBalancer address's family",
    }
}

/// Where a packet to a LoadBalancer came from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A port of a Subnet of the LoadBalancer's Network.
    Subnet {
        ingress: &'a PortEntry,
        subnet: &'a SubnetEntry,
    },
    /// Outside, through the uplink (a Public LoadBalancer).
    Uplink(&'a UplinkEntry),
}

impl Source<'_> {
    /// Where ICMP errors about an IPv4 packet go, from `address`.
    fn errors(self, parsed: &Parsed, address: Ipv4Addr) -> ErrorPath {
        match self {
            Source::Subnet { ingress, subnet } => ErrorPath {
                source: address,
                ..ErrorPath::subnet(ingress.id, parsed.src_mac, subnet)
            },
            Source::Uplink(uplink) => ErrorPath::uplink(uplink, parsed.src_mac, address),
        }
    }

    /// The port answers go back through, and the switch's MAC there.
    fn answer_path(self) -> (PortId, [u8; 6]) {
        match self {
            Source::Subnet { ingress, subnet } => (ingress.id, subnet.gateway_mac),
            Source::Uplink(uplink) => (uplink.id, uplink.mac),
        }
    }

    /// The conntrack zone the connection starts in.
    fn zone(self, balancer: &Balancer) -> Zone {
        match self {
            Source::Subnet { .. } => nat::zone_of(balancer.network),
            Source::Uplink(_) => Zone::EXTERNAL,
        }
    }

    /// The port the packet came in on, when it came from a Subnet (policy judges it).
    fn port(self) -> Option<PortId> {
        match self {
            Source::Subnet { ingress, .. } => Some(ingress.id),
            Source::Uplink(_) => None,
        }
    }
}

/// A packet from `ingress` (in `subnet`) to `balancer`'s address, of either family (see
/// the module docs). Rewrites `frame` in place.
pub fn forward(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
    balancer: &Balancer,
) -> Verdict {
    let from = Source::Subnet { ingress, subnet };
    let tracked = match track(ctx, from, parsed, frame, local, balancer) {
        Ok(tracked) => tracked,
        Err(verdict) => return verdict,
    };
    match balancer.address {
        IpAddr::V4(_) => {
            let errors = ErrorPath::subnet(ingress.id, parsed.src_mac, subnet);
            nat::continue_in(ctx, &tracked, &errors, parsed, frame, local, |ctx, out| {
                l3::confirm_sender(ctx, ingress, subnet, parsed, out);
            })
        }
        IpAddr::V6(_) => {
            let back = Back::Subnet {
                subnet,
                port: ingress.id,
                sender_mac: parsed.src_mac,
            };
            nat6::continue_in(ctx, &tracked, back, parsed, frame, local)
        }
    }
}

/// A packet from outside, received on `uplink` for Public `balancer`'s address (an IPv4
/// one with its header checksum verified). Rewrites `frame` in place.
pub fn forward_external(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
    balancer: &Balancer,
) -> Verdict {
    let from = Source::Uplink(uplink);
    let tracked = match track(ctx, from, parsed, frame, local, balancer) {
        Ok(tracked) => tracked,
        Err(verdict) => return verdict,
    };
    match balancer.address {
        IpAddr::V4(address) => {
            let errors = ErrorPath::uplink(uplink, parsed.src_mac, address);
            nat::continue_in(ctx, &tracked, &errors, parsed, frame, local, |_, _| {})
        }
        IpAddr::V6(address) => {
            let back = Back::Uplink {
                uplink,
                from: address,
                sender_mac: parsed.src_mac,
            };
            nat6::continue_in(ctx, &tracked, back, parsed, frame, local)
        }
    }
}

/// The flow identity of the IPv4 or IPv6 packet in `frame`.
fn packet_info(parsed: &Parsed, frame: &[u8]) -> Result<PacketInfo, DropCause> {
    match parsed.l3 {
        L3::Ipv6 { .. } => {
            let (start, end) = packet_bounds(frame).ok_or(l3::DropReason::NotRoutable6)?;
            ::nat::parse(&frame[start..end]).map_err(nat::parse_cause)
        }
        _ => nat::packet_info(frame),
    }
}

/// The packet's connection: looked up in the zone it comes from, else started.
fn track(
    ctx: &Context<'_>,
    from: Source<'_>,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
    balancer: &Balancer,
) -> Result<Tracked, Verdict> {
    let info = packet_info(parsed, frame).map_err(Verdict::Drop)?;
    trace_note!(
        ctx,
        Lb,
        "LoadBalancer {} VIP {}",
        balancer.name,
        balancer.address
    );
    match ctx.conntrack_lookup(from.zone(balancer), &info) {
        Some(tracked) => {
            nat::note_tracked(ctx, from.zone(balancer), &info, &tracked);
            super::policy::judge_reopened(ctx, from.port(), &info, &tracked)
                .map_err(Verdict::Drop)?;
            Ok(tracked)
        }
        None => start(ctx, from, parsed, frame, local, balancer, &info),
    }
}

/// The first packet of a connection to `balancer`: picks its backend and creates it.
fn start(
    ctx: &Context<'_>,
    from: Source<'_>,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
    balancer: &Balancer,
    info: &PacketInfo,
) -> Result<Tracked, Verdict> {
    match info.kind {
        PacketKind::IcmpError => {
            return Err(Verdict::drop(nat::DropReason::UntrackedIcmpError));
        }
        PacketKind::IcmpEcho(EchoKind::Request) => {
            let (to, mac) = from.answer_path();
            return Err(match balancer.address {
                IpAddr::V4(address) => {
                    nat::answer_echo(frame, &mut local.out, to, parsed.src_mac, mac, address)
                }
                IpAddr::V6(_) => nat6::answer_echo(frame, to, mac, parsed.src_mac),
            });
        }
        _ => {}
    }
    let tuple = info.tuple;
    let protocol = tuple.protocol.number();
    let refuse = |local: &mut Local, reason: DropReason| {
        refuse(ctx, from, parsed, frame, local, balancer, protocol, reason)
    };
    let Some(target_port) = balancer.target_port(protocol, tuple.dst_port) else {
        return Err(refuse(local, DropReason::NoPort));
    };
    let key = lb::FlowKey::new(
        tuple.src,
        tuple.src_port,
        tuple.dst,
        tuple.dst_port,
        protocol,
    );
    let target = match &balancer.affinity {
        None => {
            let hash = lb::flow_hash(&key, balancer.seed);
            trace_note!(
                ctx,
                Lb,
                "flow hash {hash:#018x}: Maglev slot {}",
                balancer
                    .table
                    .slot(hash)
                    .map_or_else(|| "none".to_owned(), |slot| slot.to_string())
            );
            balancer.table.lookup(hash)
        }
        Some(affinity) => {
            // ClientIP: the client's backend while it holds slots, else the one its address
            // hashes to (the same on every node), remembered.
            let now = ctx.now_ms / 1000;
            // A timeout of 0 finds the entry without pushing its expiry: a dry run changes
            // nothing.
            let refresh = if ctx.is_dry_run() {
                0
            } else {
                affinity.timeout
            };
            let pinned = affinity
                .table
                .lookup(0, tuple.src, now, refresh)
                .and_then(|id| balancer.table.affinity_target(id));
            if pinned.is_some() {
                trace_note!(ctx, Lb, "ClientIP affinity: {} is pinned", tuple.src);
            }
            pinned.or_else(|| {
                let hash = lb::client_hash(tuple.src, balancer.seed);
                trace_note!(
                    ctx,
                    Lb,
                    "ClientIP affinity, client hash {hash:#018x}: Maglev slot {}",
                    balancer
                        .table
                        .slot(hash)
                        .map_or_else(|| "none".to_owned(), |slot| slot.to_string())
                );
                let chosen = balancer.table.lookup(hash)?;
                if !ctx.is_dry_run() {
                    affinity
                        .table
                        .insert(0, tuple.src, chosen.id, now, affinity.timeout);
                }
                Some(chosen)
            })
        }
    };
    let Some(target) = target else {
        return Err(refuse(local, DropReason::NoBackend));
    };
    trace_note!(
        ctx,
        Lb,
        "backend {} ({}:{target_port}, {:?})",
        target.id.0,
        target.addr,
        target.state
    );
    if target.addr.is_ipv4() != balancer.address.is_ipv4() {
        return Err(Verdict::drop(DropReason::BackendFamily));
    }
    // Hairpin: the client is the chosen backend.
    let snat = if target.addr == tuple.src {
        Snat::Static(balancer.address)
    } else {
        Snat::None
    };
    let plan = NatPlan {
        dnat: Some(Endpoint::new(target.addr, target_port)),
        snat,
        reply_zone: nat::zone_of(balancer.network),
    };
    if let Err(cause) = super::policy::judge_plan(ctx, from.port(), info, &plan) {
        return Err(Verdict::Drop(cause));
    }
    let attachments = Attachments {
        lb_backend: Some(target.id.0),
        policy: None,
    };
    nat::create_with(
        ctx,
        from.zone(balancer),
        info,
        &plan,
        attachments,
        &mut local.out,
    )
    .inspect(|tracked| {
        if tracked.new {
            local.out.events.add(Event::LbConnection);
        }
    })
}

/// Refuses a packet to `balancer` like a closed port: a TCP reset (but never to a reset)
/// or, for UDP, an ICMP (or ICMPv6) port unreachable, from the LoadBalancer's address;
/// counted under `reason`.
#[allow(clippy::too_many_arguments)]
fn refuse(
    ctx: &Context<'_>,
    from: Source<'_>,
    parsed: &Parsed,
    frame: &[u8],
    local: &mut Local,
    balancer: &Balancer,
    protocol: u8,
    reason: DropReason,
) -> Verdict {
    let bounds = match balancer.address {
        IpAddr::V4(_) => l3::ip_bounds(frame),
        IpAddr::V6(_) => packet_bounds(frame),
    };
    let Some((start, end)) = bounds else {
        return Verdict::drop(reason);
    };
    let packet = &frame[start..end];
    let (to, mac) = from.answer_path();
    if protocol == TCP {
        send_reset(
            &mut local.out,
            to,
            parsed.src_mac,
            mac,
            packet,
            balancer.address,
        );
        return Verdict::drop(reason);
    }
    match balancer.address {
        IpAddr::V4(address) => {
            icmp::send_error_via(
                &mut local.out,
                ctx.now_ms,
                Kind::PortUnreachable,
                &from.errors(parsed, address),
                packet,
            );
        }
        IpAddr::V6(address) if !ctx.is_dry_run() => {
            route6::send_error_from(
                &mut local.out,
                ctx.now_ms,
                ErrorKind6::DestinationUnreachable { code: 4 },
                (mac, address),
                to,
                parsed.src_mac,
                packet,
                false,
            );
        }
        IpAddr::V6(_) => {}
    }
    Verdict::drop(reason)
}

/// TCP's protocol number.
const TCP: u8 = 6;

/// The source address and the TCP segment of `packet` (an IPv4 or IPv6 packet), when it
/// carries one from its start (not a later fragment).
fn tcp_segment(packet: &[u8]) -> Option<(IpAddr, &[u8])> {
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.frag_offset() != 0 {
                return None;
            }
            let segment = packet.get(usize::from(ip.header_len())..usize::from(ip.total_len()))?;
            Some((IpAddr::V4(ip.src_addr()), segment))
        }
        6 => {
            let info = wire6::parse(packet).ok()?;
            if info.next_header != TCP || info.fragment.is_some_and(|f| f.offset != 0) {
                return None;
            }
            Some((
                IpAddr::V6(info.src),
                packet.get(info.l4_offset..info.packet_len)?,
            ))
        }
        _ => None,
    }
}

/// Answers the TCP segment in `packet` (an IPv4 or IPv6 packet, of `address`'s family)
/// with a reset from `address`, as a closed port does (RFC 9293 3.10.7.1): to a segment
/// with ACK, `SEQ = SEG.ACK`, RST; otherwise `SEQ = 0`, `ACK = SEG.SEQ + SEG.LEN`, RST|ACK.
/// A reset gets no answer. `None` when nothing was sent.
fn send_reset(
    out: &mut Output,
    to: PortId,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    packet: &[u8],
    address: IpAddr,
) -> Option<()> {
    const TCP_LEN: usize = 20;
    const IPV6_LEN: usize = wire6::HEADER_LEN;
    let (client, segment) = tcp_segment(packet)?;
    let tcp = TcpPacket::new_checked(segment).ok()?;
    if tcp.rst() || client.is_ipv4() != address.is_ipv4() {
        return None;
    }
    let segment_len = u32::try_from(tcp.payload().len()).unwrap_or(0)
        + u32::from(tcp.syn())
        + u32::from(tcp.fin());
    let v4 = match (address, client) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Some(OwnHeader {
            src,
            dst,
            protocol: IpProtocol::Tcp,
            payload_len: TCP_LEN,
            ident: out.next_ident(),
            tos: 0,
            ttl: DEFAULT_TTL,
        }),
        _ => None,
    };
    let ip_len = v4
        .as_ref()
        .map_or(IPV6_LEN + TCP_LEN, OwnHeader::buffer_len);
    let buf = out.generated.push_ethernet(
        14 + ip_len,
        Verdict::Forward(to),
        super::generated::Origin::Switch,
    )?;
    buf[..6].copy_from_slice(&dst_mac);
    buf[6..12].copy_from_slice(&src_mac);
    buf[12..14].copy_from_slice(if v4.is_some() {
        &[0x08, 0x00]
    } else {
        &[0x86, 0xdd]
    });
    let packet_buf = &mut buf[14..];
    let header_len = match (&v4, address, client) {
        (Some(header), ..) => {
            if !header.emit(packet_buf) {
                out.generated.pop();
                return None;
            }
            OwnHeader::LEN
        }
        (None, IpAddr::V6(src), IpAddr::V6(dst)) => {
            let ip = &mut packet_buf[..IPV6_LEN];
            ip.fill(0);
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&u16::try_from(TCP_LEN).unwrap_or(0).to_be_bytes());
            ip[6] = TCP;
            ip[7] = DEFAULT_TTL;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            IPV6_LEN
        }
        _ => {
            out.generated.pop();
            return None;
        }
    };
    let segment = &mut packet_buf[header_len..header_len + TCP_LEN];
    segment.fill(0);
    let mut answer = TcpPacket::new_unchecked(segment);
    answer.set_src_port(tcp.dst_port());
    answer.set_dst_port(tcp.src_port());
    answer.set_header_len(20);
    answer.set_rst(true);
    if tcp.ack() {
        answer.set_seq_number(tcp.ack_number());
    } else {
        answer.set_ack(true);
        answer.set_ack_number(tcp.seq_number() + usize::try_from(segment_len).unwrap_or(0));
    }
    answer.fill_checksum(&IpAddress::from(address), &IpAddress::from(client));
    Some(())
}

/// The protocol and TCP or UDP source port of the IPv4 or IPv6 packet in `frame`, when it
/// is a first (or only) fragment.
fn l4_source(parsed: &Parsed, frame: &[u8]) -> Option<(u8, u16)> {
    let (protocol, l4) = match parsed.l3 {
        L3::Ipv4 { .. } => {
            let (start, end) = l3::ip_bounds(frame)?;
            let ip = frame.get(start..end)?;
            let header_len = usize::from(ip.first()? & 0x0f) * 4;
            let fragment_offset = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
            if fragment_offset != 0 {
                return None;
            }
            (*ip.get(9)?, ip.get(header_len..)?)
        }
        L3::Ipv6 { .. } => {
            let (start, end) = packet_bounds(frame)?;
            let ip = frame.get(start..end)?;
            let info = wire6::parse(ip).ok()?;
            if info.fragment.is_some_and(|f| f.offset != 0) {
                return None;
            }
            (info.next_header, ip.get(info.l4_offset..)?)
        }
        _ => return None,
    };
    if !matches!(protocol, 6 | 17) {
        return None;
    }
    let port = l4.get(..2)?;
    Some((protocol, u16::from_be_bytes([port[0], port[1]])))
}

/// A TCP segment to `subnet`'s gateway (IPv4, or IPv6 global) that answers a LoadBalancer
/// health probe (to [`ProbeBoard::SOURCE_PORT`], expected by the board): records a SYN-ACK
/// as up (and resets the half-open connection from the gateway, as a SYN scanner does) or a
/// reset as down. `None` for anything else, which the gateway handles as usual.
pub fn probe_answer(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &[u8],
    local: &mut Local,
) -> Option<Verdict> {
    let (start, end, gateway) = match parsed.l3 {
        L3::Ipv4 { dst, .. } => {
            let (start, end) = l3::ip_bounds(frame)?;
            (start, end, IpAddr::V4(dst))
        }
        L3::Ipv6 { dst, .. } => {
            let (start, end) = packet_bounds(frame)?;
            (start, end, IpAddr::V6(dst))
        }
        _ => return None,
    };
    let (src, segment) = tcp_segment(&frame[start..end])?;
    let tcp = TcpPacket::new_checked(segment).ok()?;
    if tcp.dst_port() != ProbeBoard::SOURCE_PORT {
        return None;
    }
    let up = tcp.syn() && tcp.ack();
    if !(up || tcp.rst()) {
        return None;
    }
    if ctx.is_dry_run() {
        // Taking the answer changes the probe's outcome: not done for a synthetic frame.
        trace_note!(
            ctx,
            Lb,
            "an answer to a health probe of {src} is not simulated"
        );
        return None;
    }
    if !ctx.snapshot.probes.answer(src, tcp.src_port(), up) {
        return None;
    }
    if up {
        send_reset(
            &mut local.out,
            ingress.id,
            parsed.src_mac,
            subnet.gateway_mac,
            &frame[start..end],
            gateway,
        );
    }
    local.out.events.add(Event::LbProbeAnswered);
    Some(Verdict::Consumed)
}

/// A frame from `ingress`, a backend of some LoadBalancer (in `subnet`): when it is a reply
/// of a balanced connection, routes it back to the client with the LoadBalancer's address
/// as its source (see the module docs); `None` for any other frame, which continues as
/// usual.
pub fn reply(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
) -> Option<Verdict> {
    // Only from a port the backends serve on: the backend's own connections (and anything
    // else) skip the conntrack lookup.
    let (protocol, source_port) = l4_source(parsed, frame)?;
    if !ctx.snapshot.is_backend_port(protocol, source_port) {
        return None;
    }
    let info = packet_info(parsed, frame).ok()?;
    if info.kind == PacketKind::IcmpEcho(EchoKind::Request) {
        return None;
    }
    let zone = nat::zone_of(subnet.network_id);
    let tracked = ctx.conntrack_lookup(zone, &info)?;
    // Only connections the load balancer translated, seen in their reply direction.
    if tracked.target.is_none() || tracked.direction != ::nat::Direction::Reply {
        return None;
    }
    trace_note!(ctx, Lb, "reply of a balanced connection");
    nat::note_tracked(ctx, zone, &info, &tracked);
    Some(match parsed.l3 {
        L3::Ipv6 { .. } => {
            let back = Back::Subnet {
                subnet,
                port: ingress.id,
                sender_mac: parsed.src_mac,
            };
            nat6::continue_in(ctx, &tracked, back, parsed, frame, local)
        }
        _ => {
            let errors = ErrorPath::subnet(ingress.id, parsed.src_mac, subnet);
            nat::continue_in(ctx, &tracked, &errors, parsed, frame, local, |ctx, out| {
                l3::confirm_sender(ctx, ingress, subnet, parsed, out);
            })
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv6Addr};
    use std::sync::Arc;

    use smoltcp::wire::{IpAddress, TcpPacket};

    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::{DropCause, Verdict};
    use crate::tables::snapshot::{BalancedPort, Balancer, NetworkId, SubnetId};
    use crate::wire::VNET_HDR_LEN;
    use crate::wire::ipv6::{Nd, NeighborSolicitationRepr};

    const BLUE: SubnetId = SubnetId(1);
    /// The LoadBalancer's IPv6 address, inside blue's prefix.
    const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
    const IP_OFFSET: usize = VNET_HDR_LEN + 14;

    /// LoadBalancer `web` of Network 0 at `address` serving `ports`, with one backend,
    /// `port2` at `backend` (a table of 7 slots, seed 7).
    pub(crate) fn one_backend(
        address: IpAddr,
        backend: IpAddr,
        ports: Vec<BalancedPort>,
    ) -> Balancer {
        let mut backends = lb::BackendSet::new(
            lb::TableSize::new(7).expect("a prime"),
            lb::HealthCheckConfig::default(),
        );
        backends
            .upsert(lb::BackendSpec::new("port2", backend, 0))
            .expect("backend");
        Balancer {
            name: "web".into(),
            index: 0,
            network: NetworkId(0),
            address,
            ports,
            table: Arc::new(backends.compile(0).expect("compiles")),
            seed: 7,
            affinity: None,
            public: false,
        }
    }

    /// A port (or range) of a [`one_backend`] LoadBalancer.
    pub(crate) fn port(protocol: u8, port: u16, target: Option<u16>) -> BalancedPort {
        BalancedPort {
            protocol,
            first: port,
            last: port,
            target,
        }
    }

    /// An IPv6 LoadBalancer on blue: TCP 80 -> 8080 and UDP 53, backend port 2 (fd00::b).
    fn bench6() -> Bench {
        let balancer = one_backend(
            VIP6.into(),
            IP6_B.into(),
            vec![port(6, 80, Some(8080)), port(17, 53, None)],
        );
        let bench = Bench::with(routed_snapshot().with_balancers(vec![balancer], &[PortId(2)]));
        bench.neighbors.confirm(BLUE, IP6_A, MAC_A, 0, true);
        bench.neighbors.confirm(BLUE, IP6_B, MAC_B, 0, true);
        let blue = bench.snapshot.subnet(BLUE).expect("blue");
        bench.fdb.learn(blue, MAC_A, PortId(1), 0);
        bench.fdb.learn(blue, MAC_B, PortId(2), 0);
        bench
    }

    /// An IPv6 frame carrying `protocol`'s `l4` bytes.
    fn frame6(
        macs: ([u8; 6], [u8; 6]),
        (src, dst): (Ipv6Addr, Ipv6Addr),
        protocol: u8,
        l4: &[u8],
    ) -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&macs.1);
        frame.extend_from_slice(&macs.0);
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        frame.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&[protocol, 64]);
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&dst.octets());
        frame.extend_from_slice(l4);
        frame
    }

    /// A TCP segment (with its checksum) from `src` to `dst` with `flags` (SYN 0x02, ACK
    /// 0x10, RST 0x04).
    fn tcp6(
        macs: ([u8; 6], [u8; 6]),
        src: (Ipv6Addr, u16),
        dst: (Ipv6Addr, u16),
        flags: u8,
    ) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        {
            let mut tcp = TcpPacket::new_unchecked(&mut l4[..]);
            tcp.set_src_port(src.1);
            tcp.set_dst_port(dst.1);
            tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(1000));
            tcp.set_header_len(20);
            tcp.set_syn(flags & 0x02 != 0);
            tcp.set_ack(flags & 0x10 != 0);
            tcp.set_rst(flags & 0x04 != 0);
            if flags & 0x10 != 0 {
                tcp.set_ack_number(smoltcp::wire::TcpSeqNumber(5000));
            }
            tcp.set_window_len(1024);
            tcp.fill_checksum(&IpAddress::from(src.0), &IpAddress::from(dst.0));
        }
        frame6(macs, (src.0, dst.0), 6, &l4)
    }

    /// The IPv6 source, destination and TCP segment of `frame`, its checksum verified.
    fn segment(frame: &[u8]) -> (Ipv6Addr, Ipv6Addr, Vec<u8>) {
        assert_eq!(&frame[VNET_HDR_LEN + 12..IP_OFFSET], &[0x86, 0xdd], "IPv6");
        let packet = &frame[IP_OFFSET..];
        let info = wire6::parse(packet).expect("IPv6");
        assert_eq!(info.next_header, 6, "TCP");
        let l4 = packet[info.l4_offset..info.packet_len].to_vec();
        let tcp = TcpPacket::new_checked(&l4[..]).expect("TCP");
        assert!(
            tcp.verify_checksum(&IpAddress::from(info.src), &IpAddress::from(info.dst)),
            "TCP checksum"
        );
        (info.src, info.dst, l4)
    }

    #[test]
    fn ipv6_connections_are_balanced_and_replies_come_from_the_address() {
        let bench = bench6();
        let syn = tcp6((MAC_A, GW_BLUE_MAC), (IP6_A, 40000), (VIP6, 80), 0x02);
        let (outcome, out) = bench.run(1, &syn, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(2)));
        let (src, dst, l4) = segment(&out);
        assert_eq!((src, dst), (IP6_A, IP6_B), "to the backend");
        let tcp = TcpPacket::new_checked(&l4[..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (40000, 8080));
        assert_eq!(out[IP_OFFSET + 7], 63, "hop limit decremented");
        assert_eq!(
            &out[VNET_HDR_LEN..VNET_HDR_LEN + 12],
            &[MAC_B, GW_BLUE_MAC].concat()[..]
        );
        // The backend answers the client straight (same segment): taken back through the
        // switch, from the LoadBalancer's address and port.
        let syn_ack = tcp6((MAC_B, MAC_A), (IP6_B, 8080), (IP6_A, 40000), 0x12);
        let (outcome, out) = bench.run(2, &syn_ack, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(1)));
        let (src, dst, l4) = segment(&out);
        assert_eq!((src, dst), (VIP6, IP6_A));
        let tcp = TcpPacket::new_checked(&l4[..]).unwrap();
        assert_eq!((tcp.src_port(), tcp.dst_port()), (80, 40000));
        assert_eq!(
            &out[VNET_HDR_LEN..VNET_HDR_LEN + 12],
            &[MAC_A, GW_BLUE_MAC].concat()[..]
        );
        assert_eq!(bench.snapshot.conntrack.len(), 1);
        // From a link-local source: not balanced (no connection whose replies could not be
        // routed back).
        let link_local = wire6::link_local_from_mac(MAC_A);
        let syn = tcp6((MAC_A, GW_BLUE_MAC), (link_local, 40001), (VIP6, 80), 0x02);
        assert_ne!(bench.send(1, &syn, 0).verdict, Verdict::Forward(PortId(2)));
        assert_eq!(bench.snapshot.conntrack.len(), 1);
    }

    #[test]
    fn ipv6_refusals_echo_and_neighbour_discovery_come_from_the_address() {
        let bench = bench6();
        // A port it does not serve: a reset from the address.
        let syn = tcp6((MAC_A, GW_BLUE_MAC), (IP6_A, 40001), (VIP6, 81), 0x02);
        assert_eq!(
            bench.send(1, &syn, 0).verdict,
            Verdict::Drop(DropCause::Lb(DropReason::NoPort))
        );
        let (verdict, _, reset) = bench.generated().pop().expect("reset sent");
        assert_eq!(verdict, Verdict::Forward(PortId(1)));
        let (src, dst, l4) = segment(&reset);
        assert_eq!((src, dst), (VIP6, IP6_A));
        let tcp = TcpPacket::new_checked(&l4[..]).unwrap();
        assert!(tcp.rst() && tcp.ack(), "RST|ACK to a SYN");
        assert_eq!((tcp.src_port(), tcp.dst_port()), (81, 40001));
        assert_eq!(tcp.ack_number(), smoltcp::wire::TcpSeqNumber(1001));
        // A reset gets no answer.
        let rst = tcp6((MAC_A, GW_BLUE_MAC), (IP6_A, 40001), (VIP6, 81), 0x04);
        bench.send(1, &rst, 0);
        assert!(bench.generated().is_empty());
        // UDP to a port it does not serve: ICMPv6 port unreachable from the address.
        let udp = frame6(
            (MAC_A, GW_BLUE_MAC),
            (IP6_A, VIP6),
            17,
            &[0x9c, 0x40, 0x00, 0x45, 0x00, 0x08, 0x00, 0x00],
        );
        assert_eq!(
            bench.send(1, &udp, 0).verdict,
            Verdict::Drop(DropCause::Lb(DropReason::NoPort))
        );
        let (_, _, error) = bench.generated().pop().expect("unreachable sent");
        let packet = &error[IP_OFFSET..];
        let info = wire6::parse(packet).unwrap();
        assert_eq!((info.src, info.dst), (VIP6, IP6_A));
        assert_eq!((packet[40], packet[41]), (1, 4), "port unreachable");
        // Echo is answered in place, from the address.
        let echo = crate::pipeline::route6::tests::echo6(MAC_A, GW_BLUE_MAC, IP6_A, VIP6, 64, 8);
        let (outcome, reply) = bench.run(1, &echo, 0);
        assert_eq!(outcome.verdict, Verdict::Forward(PortId(1)));
        let info = wire6::parse(&reply[IP_OFFSET..]).unwrap();
        assert_eq!(
            (info.src, info.dst, reply[IP_OFFSET + 40]),
            (VIP6, IP6_A, 129)
        );
        // A solicitation for the address is answered with the gateway MAC, not as a router.
        let repr = NeighborSolicitationRepr {
            src_mac: MAC_A,
            src: IP6_A,
            target: VIP6,
            unicast: None,
        };
        let mut ethernet = vec![0u8; repr.len()];
        assert!(repr.emit(&mut ethernet) > 0);
        let mut solicitation = vec![0u8; VNET_HDR_LEN];
        solicitation.extend_from_slice(&ethernet);
        assert_eq!(bench.send(1, &solicitation, 0).verdict, Verdict::Consumed);
        let (_, _, answer) = bench.generated().pop().expect("NA sent");
        let packet = &answer[IP_OFFSET..];
        let info = wire6::parse(packet).unwrap();
        match wire6::parse_nd(&packet[40..], info.src) {
            Ok(Some(Nd::NeighborAdvertisement {
                target,
                router: false,
                solicited: true,
                target_mac: Some(mac),
                ..
            })) => assert_eq!((target, mac), (VIP6, GW_BLUE_MAC)),
            other => panic!("not the LoadBalancer's NA: {other:?}"),
        }
    }

    #[test]
    fn an_ipv4_closed_port_gets_an_ipv4_reset() {
        let vip = std::net::Ipv4Addr::new(172, 30, 0, 100);
        let balancer = one_backend(vip.into(), IP_B.into(), vec![port(6, 80, None)]);
        let bench = Bench::with(routed_snapshot().with_balancers(vec![balancer], &[PortId(2)]));
        let syn = tcp_frame(MAC_A, GW_BLUE_MAC, (IP_A, 40000), (vip, 81), 0x02);
        assert_eq!(
            bench.send(1, &syn, 0).verdict,
            Verdict::Drop(DropCause::Lb(DropReason::NoPort))
        );
        let (_, _, reset) = bench.generated().pop().expect("reset sent");
        assert_eq!(&reset[VNET_HDR_LEN + 12..IP_OFFSET], &[0x08, 0x00], "IPv4");
        let ip = Ipv4Packet::new_checked(&reset[IP_OFFSET..]).expect("IPv4");
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (vip, IP_A));
        let tcp = TcpPacket::new_checked(ip.payload()).expect("TCP");
        assert!(tcp.rst() && tcp.ack());
        assert!(tcp.verify_checksum(&IpAddress::from(vip), &IpAddress::from(IP_A)));
    }

    #[test]
    fn an_ipv6_health_probe_answer_is_taken_and_reset() {
        let bench = bench6();
        bench.snapshot.probes.expect(IpAddr::V6(IP6_B), 8080);
        let syn_ack = tcp6(
            (MAC_B, GW_BLUE_MAC),
            (IP6_B, 8080),
            (GW6_BLUE, ProbeBoard::SOURCE_PORT),
            0x12,
        );
        assert_eq!(bench.send(2, &syn_ack, 0).verdict, Verdict::Consumed);
        assert_eq!(
            bench.snapshot.probes.take(IpAddr::V6(IP6_B), 8080),
            Some(Some(true))
        );
        let (verdict, _, reset) = bench.generated().pop().expect("reset sent");
        assert_eq!(verdict, Verdict::Forward(PortId(2)));
        let (src, dst, l4) = segment(&reset);
        assert_eq!((src, dst), (GW6_BLUE, IP6_B));
        let tcp = TcpPacket::new_checked(&l4[..]).unwrap();
        assert!(tcp.rst());
        assert_eq!(tcp.seq_number(), smoltcp::wire::TcpSeqNumber(5000));
        // Not expected: the gateway handles it as any segment to it.
        let again = tcp6(
            (MAC_B, GW_BLUE_MAC),
            (IP6_B, 8080),
            (GW6_BLUE, ProbeBoard::SOURCE_PORT),
            0x12,
        );
        assert_ne!(bench.send(2, &again, 0).verdict, Verdict::Consumed);
    }
}
