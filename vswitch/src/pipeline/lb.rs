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

use std::net::{IpAddr, Ipv4Addr};

use ::nat::{
    Attachments, EchoKind, Endpoint, NatPlan, PacketInfo, PacketKind, Snat, Tracked, Zone,
};
use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

use super::icmp::{self, ErrorPath};
use super::l3;
use super::nat;
use super::parse::{L3, Parsed};
use super::{Context, Local, Output, Verdict};
use crate::port::PortId;
use crate::tables::counters::{Event, keyed_enum};
use crate::tables::snapshot::{Balancer, PortEntry, ProbeBoard, SubnetEntry, UplinkEntry};
use crate::wire::icmp_error::{DEFAULT_TTL, Kind};
use crate::wire::ipv4::OwnHeader;

keyed_enum! {
    /// Why `lb` refused a packet.
    pub enum DropReason {
        NoBackend = "lb.no_backend":
            "new connection to a LoadBalancer with no backend taking new ones (answered with a TCP reset or an ICMP port unreachable)",
        NoPort = "lb.no_port":
            "to a LoadBalancer's address on a port or protocol it does not serve (answered like a closed port)",
        NotIpv4Backend = "lb.backend_family":
            "the chosen backend's address is not IPv4",
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
    /// Where ICMP errors about the packet go, from `address`.
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
}

/// A packet from `ingress` (in `subnet`) to `balancer`'s address (see the module docs).
/// Rewrites `frame` in place.
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
    let errors = ErrorPath::subnet(ingress.id, parsed.src_mac, subnet);
    let tracked = match track(ctx, from, parsed, frame, local, balancer) {
        Ok(tracked) => tracked,
        Err(verdict) => return verdict,
    };
    nat::continue_in(ctx, &tracked, &errors, parsed, frame, local, |ctx, out| {
        l3::confirm_sender(ctx, ingress, subnet, parsed, out);
    })
}

/// A packet from outside, received on `uplink` for Public `balancer`'s address (its header
/// checksum verified). Rewrites `frame` in place.
pub fn forward_external(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    parsed: &Parsed,
    frame: &mut [u8],
    local: &mut Local,
    balancer: &Balancer,
) -> Verdict {
    let from = Source::Uplink(uplink);
    let errors = ErrorPath::uplink(uplink, parsed.src_mac, balancer.address);
    let tracked = match track(ctx, from, parsed, frame, local, balancer) {
        Ok(tracked) => tracked,
        Err(verdict) => return verdict,
    };
    nat::continue_in(ctx, &tracked, &errors, parsed, frame, local, |_, _| {})
}

/// The packet's connection: looked up in the zone it comes from, else started.
fn track(
    ctx: &Context<'_>,
    from: Source<'_>,
    parsed: &Parsed,
    frame: &[u8],
    local: &mut Local,
    balancer: &Balancer,
) -> Result<Tracked, Verdict> {
    let info = nat::packet_info(frame).map_err(Verdict::Drop)?;
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
            let from_port = match from {
                Source::Subnet { ingress, .. } => Some(ingress.id),
                Source::Uplink(_) => None,
            };
            super::policy::judge_reopened(ctx, from_port, &info, &tracked)
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
    frame: &[u8],
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
            return Err(nat::answer_echo(
                frame,
                &mut local.out,
                to,
                parsed.src_mac,
                mac,
                balancer.address,
            ));
        }
        _ => {}
    }
    let tuple = info.tuple;
    let protocol = tuple.protocol.number();
    let refuse = |local: &mut Local, reason: DropReason| {
        refuse(ctx, from, parsed, frame, local, balancer, reason)
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
    let IpAddr::V4(_) = target.addr else {
        return Err(Verdict::drop(DropReason::NotIpv4Backend));
    };
    // Hairpin: the client is the chosen backend.
    let snat = if target.addr == tuple.src {
        Snat::Static(IpAddr::V4(balancer.address))
    } else {
        Snat::None
    };
    let plan = NatPlan {
        dnat: Some(Endpoint::new(target.addr, target_port)),
        snat,
        reply_zone: nat::zone_of(balancer.network),
    };
    let from_port = match from {
        Source::Subnet { ingress, .. } => Some(ingress.id),
        Source::Uplink(_) => None,
    };
    if let Err(cause) = super::policy::judge_plan(ctx, from_port, info, &plan) {
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
/// or, for UDP, an ICMP port unreachable, from the LoadBalancer's address; counted under
/// `reason`.
fn refuse(
    ctx: &Context<'_>,
    from: Source<'_>,
    parsed: &Parsed,
    frame: &[u8],
    local: &mut Local,
    balancer: &Balancer,
    reason: DropReason,
) -> Verdict {
    let Some((start, end)) = l3::ip_bounds(frame) else {
        return Verdict::drop(reason);
    };
    let packet = &frame[start..end];
    if packet.get(9) == Some(&6) {
        let (to, mac) = from.answer_path();
        send_reset(
            &mut local.out,
            to,
            parsed.src_mac,
            mac,
            packet,
            balancer.address,
        );
    } else {
        icmp::send_error_via(
            &mut local.out,
            ctx.now_ms,
            Kind::PortUnreachable,
            &from.errors(parsed, balancer.address),
            packet,
        );
    }
    Verdict::drop(reason)
}

/// Answers the TCP segment `packet` (an IPv4 packet) with a reset from `address`, as a
/// closed port does (RFC 9293 3.10.7.1): to a segment with ACK, `SEQ = SEG.ACK`, RST;
/// otherwise `SEQ = 0`, `ACK = SEG.SEQ + SEG.LEN`, RST|ACK. A reset gets no answer.
fn send_reset(
    out: &mut Output,
    to: PortId,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    packet: &[u8],
    address: Ipv4Addr,
) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(packet) else {
        return false;
    };
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return false;
    };
    if tcp.rst() {
        return false;
    }
    let segment_len = u32::try_from(tcp.payload().len()).unwrap_or(0)
        + u32::from(tcp.syn())
        + u32::from(tcp.fin());
    const TCP_LEN: usize = 20;
    let header = OwnHeader {
        src: address,
        dst: ip.src_addr(),
        protocol: IpProtocol::Tcp,
        payload_len: TCP_LEN,
        ident: out.next_ident(),
        tos: 0,
        ttl: DEFAULT_TTL,
    };
    let len = 14 + header.buffer_len();
    let Some(buf) =
        out.generated
            .push_ethernet(len, Verdict::Forward(to), super::generated::Origin::Switch)
    else {
        return false;
    };
    buf[..6].copy_from_slice(&dst_mac);
    buf[6..12].copy_from_slice(&src_mac);
    buf[12..14].copy_from_slice(&[0x08, 0x00]);
    let packet_buf = &mut buf[14..];
    if !header.emit(packet_buf) {
        out.generated.pop();
        return false;
    }
    let segment = &mut packet_buf[OwnHeader::LEN..OwnHeader::LEN + TCP_LEN];
    segment.fill(0);
    let mut reset = TcpPacket::new_unchecked(segment);
    reset.set_src_port(tcp.dst_port());
    reset.set_dst_port(tcp.src_port());
    reset.set_header_len(20);
    reset.set_rst(true);
    if tcp.ack() {
        reset.set_seq_number(tcp.ack_number());
    } else {
        reset.set_ack(true);
        reset.set_ack_number(tcp.seq_number() + usize::try_from(segment_len).unwrap_or(0));
    }
    reset.fill_checksum(&IpAddress::Ipv4(address), &IpAddress::Ipv4(ip.src_addr()));
    true
}

/// The TCP or UDP source port of the IPv4 packet in `frame`, when it is a first (or only)
/// fragment.
fn l4_source_port(frame: &[u8]) -> Option<u16> {
    let (start, end) = l3::ip_bounds(frame)?;
    let ip = frame.get(start..end)?;
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
    if fragment_offset != 0 || !matches!(ip.get(9), Some(6 | 17)) {
        return None;
    }
    let l4 = ip.get(header_len..header_len + 2)?;
    Some(u16::from_be_bytes([l4[0], l4[1]]))
}

/// A TCP segment to `subnet`'s gateway that answers a LoadBalancer health probe (to
/// [`ProbeBoard::SOURCE_PORT`], expected by the board): records a SYN-ACK as up (and resets
/// the half-open connection, as a SYN scanner does) or a reset as down. `None` for anything
/// else, which the gateway handles as usual.
pub fn probe_answer(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &[u8],
    local: &mut Local,
) -> Option<Verdict> {
    let L3::Ipv4 { src, .. } = parsed.l3 else {
        return None;
    };
    let (start, end) = l3::ip_bounds(frame)?;
    let ip = Ipv4Packet::new_checked(&frame[start..end]).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
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
            subnet.gateway,
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
    let L3::Ipv4 { protocol, .. } = parsed.l3 else {
        return None;
    };
    // Only from a port the backends serve on: the backend's own connections (and anything
    // else) skip the conntrack lookup.
    let source_port = l4_source_port(frame)?;
    if !ctx
        .snapshot
        .is_backend_port(u8::from(protocol), source_port)
    {
        return None;
    }
    let info = nat::packet_info(frame).ok()?;
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
    let errors = ErrorPath::subnet(ingress.id, parsed.src_mac, subnet);
    Some(nat::continue_in(
        ctx,
        &tracked,
        &errors,
        parsed,
        frame,
        local,
        |ctx, out| {
            l3::confirm_sender(ctx, ingress, subnet, parsed, out);
        },
    ))
}
