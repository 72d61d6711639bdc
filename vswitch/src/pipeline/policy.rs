//! Stage `policy`: NetworkPolicies, with Kubernetes' semantics, on the first packet of each
//! connection of an isolated interface.
//!
//! The controller compiles the policies into the snapshot's
//! [`PolicySet`](crate::tables::policy::PolicySet) (the `policy` crate's classifier, which
//! ports are isolated, which port owns each address). The stages call in here where a packet
//! is about to be delivered, after every address rewrite that picks its destination:
//!
//! - [`admit`]: a frame switched or routed inside a Network (from [`l2`](super::l2)
//!   forwarding and [`l3::route`](super::l3::route)). Nothing happens unless one end is an
//!   isolated interface (one selected by a policy, in either direction): interfaces no policy
//!   selects pay a branch and, when policies exist, one address lookup. A flow with an
//!   isolated end is tracked in conntrack (its Network's zone, no translation): a packet of a
//!   tracked connection passes either way (replies of an allowed connection are always
//!   allowed); the first packet is classified (the source's egress *and* the destination's
//!   ingress must allow it) and, allowed, starts the connection.
//! - [`judge`]: the first packet of a connection that the NAT or load-balancer stages track
//!   anyway (masquerade and virtual IPs, port forwards, LoadBalancer connections), with its
//!   destination as translated: LoadBalancer traffic is judged against the backend's
//!   policies and port, as Kubernetes does after the Service's DNAT.
//!
//! What is not classified: ARP (never filtered); traffic to the switch itself (gateway
//! pings, health probes); later fragments (the first fragment carries the ports and is
//! judged); a TCP segment without SYN that no connection knows is picked up as an
//! established connection (as Linux's `nf_conntrack_tcp_loose` does), so connections that
//! were open before a policy isolated their ends continue, as they do with Calico and
//! Cilium. SCTP and other protocols conntrack does not follow are tracked here, as
//! associations ([`Associations`](crate::tables::policy::Associations): both ends and ports,
//! three idle minutes): the first packet is judged, the rest of the association passes
//! either way. Peers behind the overlay or the uplink are outside the switch: only
//! `ipBlock`s match them.
//!
//! IPv6 is judged by the same rules and followed the same way (pod selectors match an
//! interface's IPv6 addresses, `ipBlock`s may be IPv6): TCP, UDP and ICMPv6 echo in
//! conntrack (an echo reply belongs to its request by identifier), ICMPv6 errors about a
//! tracked connection pass with it, other protocols and packets with extension headers
//! conntrack refuses as associations. Neighbour discovery and MLD are never filtered, as
//! ARP is not.
//!
//! Drops: `policy.egress_denied` (the source's egress policies allow no rule for it) and
//! `policy.ingress_denied` (the destination's). Per-rule allowed and per-policy denied
//! connection counts are kept in the set.

use std::net::{IpAddr, Ipv4Addr};

use ::nat::{NatPlan, PacketKind, TcpFlags};
use policy::{Connection, Decision, EndpointId, Peer, Verdict};

use super::l3::ip_bounds;
use super::{Context, DropCause, nat};
use crate::port::PortId;
use crate::tables::counters::keyed_enum;
use crate::tables::policy::{AssociationKey, PolicySet};
use crate::tables::snapshot::NetworkId;

keyed_enum! {
    /// Why `policy` dropped a packet.
    pub enum DropReason {
        EgressDenied = "policy.egress_denied":
            "new connection from an interface isolated for egress that no rule of its NetworkPolicies allows",
        IngressDenied = "policy.ingress_denied":
            "new connection to an interface isolated for ingress that no rule of its NetworkPolicies allows",
    }
}

/// The fields classification needs, read from the IPv4 or IPv6 header.
#[derive(Debug, Clone, Copy)]
struct Header {
    src: IpAddr,
    dst: IpAddr,
    /// The upper-layer protocol (after IPv6's extension headers).
    protocol: u8,
    /// Source and destination ports (TCP, UDP, SCTP), else zeros.
    ports: (u16, u16),
    /// Fragment offset is not zero: a later fragment.
    later_fragment: bool,
    /// More fragments follow.
    more_fragments: bool,
    /// Neighbour discovery or MLD (router and neighbour solicitations and advertisements,
    /// redirects, listener reports): never filtered, as ARP is not.
    control: bool,
    /// An ICMP or ICMPv6 error (judged, never recorded).
    icmp_error: bool,
    /// TCP: the flags byte, when the (first) fragment holds it.
    tcp_flags: Option<u8>,
}

/// The IP packet of a frame (the virtio header and the Ethernet frame), IPv4 or IPv6.
fn packet_of(frame: &[u8]) -> Option<&[u8]> {
    let start = crate::wire::VNET_HDR_LEN + smoltcp::wire::ETHERNET_HEADER_LEN;
    let (start, end) = match frame.get(start)? >> 4 {
        4 => ip_bounds(frame)?,
        6 => super::route6::packet_bounds(frame)?,
        _ => return None,
    };
    frame.get(start..end)
}

fn header(packet: &[u8]) -> Option<Header> {
    match packet.first()? >> 4 {
        4 => header4(packet),
        6 => header6(packet),
        _ => None,
    }
}

fn header6(packet: &[u8]) -> Option<Header> {
    let info = crate::wire::ipv6::parse(packet).ok()?;
    let later_fragment = info.fragment.is_some_and(|f| f.offset != 0);
    let more_fragments = info.fragment.is_some_and(|f| f.more);
    let l4 = packet
        .get(info.l4_offset..info.packet_len)
        .unwrap_or_default();
    let be16 = |at: usize| {
        l4.get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mut ports = (0, 0);
    let mut control = false;
    let mut icmp_error = false;
    if !later_fragment {
        match (info.next_header, l4.first()) {
            (6 | 17 | 132, _) if l4.len() >= 4 => ports = (be16(0), be16(2)),
            (58, Some(130..=137 | 143)) => control = true,
            (58, Some(kind)) => icmp_error = *kind < 128,
            _ => {}
        }
    }
    let tcp_flags = (info.next_header == 6 && !later_fragment)
        .then(|| l4.get(13).copied())
        .flatten();
    Some(Header {
        src: IpAddr::V6(info.src),
        dst: IpAddr::V6(info.dst),
        protocol: info.next_header,
        ports,
        later_fragment,
        more_fragments,
        control,
        icmp_error,
        tcp_flags,
    })
}

fn header4(packet: &[u8]) -> Option<Header> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return None;
    }
    let protocol = packet[9];
    let later_fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff != 0;
    let more_fragments = packet[6] & 0x20 != 0;
    let ports = match (protocol, packet.get(ihl..ihl + 4)) {
        (6 | 17 | 132, Some(l4)) if !later_fragment => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        _ => (0, 0),
    };
    let icmp_error =
        protocol == 1 && !later_fragment && matches!(packet.get(ihl), Some(3 | 4 | 5 | 11 | 12));
    let tcp_flags = (protocol == 6 && !later_fragment)
        .then(|| packet.get(ihl + 13).copied())
        .flatten();
    Some(Header {
        src: IpAddr::V4(Ipv4Addr::new(
            packet[12], packet[13], packet[14], packet[15],
        )),
        dst: IpAddr::V4(Ipv4Addr::new(
            packet[16], packet[17], packet[18], packet[19],
        )),
        protocol,
        ports,
        later_fragment,
        more_fragments,
        control: false,
        icmp_error,
        tcp_flags,
    })
}

fn peer(port: Option<PortId>, addr: IpAddr) -> Peer {
    match port {
        Some(port) => Peer::Endpoint {
            id: EndpointId(port.0),
            addr,
        },
        None => Peer::External(addr),
    }
}

/// The drop cause of a denied decision: the egress side's when it denies.
fn cause(decision: &Decision) -> DropCause {
    if decision.egress.allows() {
        DropCause::Policy(DropReason::IngressDenied)
    } else {
        DropCause::Policy(DropReason::EgressDenied)
    }
}

/// The two ends of a packet as the set knows them, when one of them is isolated.
fn ends(
    set: &PolicySet,
    network: Option<NetworkId>,
    from: Option<PortId>,
    to: Option<PortId>,
    dst: IpAddr,
) -> Option<(Option<PortId>, Option<PortId>)> {
    let src = from.filter(|port| set.is_endpoint(*port));
    let dst = to
        .filter(|port| set.is_endpoint(*port))
        .or_else(|| network.and_then(|network| set.owner(network, dst)));
    let isolated =
        src.is_some_and(|p| set.is_isolated(p)) || dst.is_some_and(|p| set.is_isolated(p));
    isolated.then_some((src, dst))
}

/// A packet switched or routed inside `network` from port `from` (`None`: from the
/// overlay) toward port `to` when known (else the owner of its destination address):
/// passes, or the cause to drop it for (see the module doc). `frame` is the virtio header
/// and the Ethernet frame; nothing in it changes.
#[inline]
pub fn admit(
    ctx: &Context<'_>,
    network: NetworkId,
    from: Option<PortId>,
    to: Option<PortId>,
    frame: &[u8],
) -> Result<(), DropCause> {
    let Some(set) = ctx.snapshot.policy.as_deref() else {
        return Ok(());
    };
    admit_in(ctx, set, network, from, to, frame)
}

fn admit_in(
    ctx: &Context<'_>,
    set: &PolicySet,
    network: NetworkId,
    from: Option<PortId>,
    to: Option<PortId>,
    frame: &[u8],
) -> Result<(), DropCause> {
    let Some(packet) = packet_of(frame) else {
        return Ok(());
    };
    let Some(header) = header(packet) else {
        return Ok(());
    };
    if header.control {
        trace_note!(ctx, Policy, "neighbour discovery: never filtered");
        return Ok(());
    }
    let Some((src, dst)) = ends(set, Some(network), from, to, header.dst) else {
        trace_note!(
            ctx,
            Policy,
            "neither end is isolated by a NetworkPolicy: allowed"
        );
        return Ok(());
    };
    if header.later_fragment {
        return Ok(());
    }
    let info = if trackable(&header) {
        ::nat::parse(packet).ok()
    } else {
        first_fragment_info(&header)
    };
    let zone = nat::zone_of(network);
    if let Some(info) = &info {
        if ctx.conntrack_lookup(zone, info).is_some() {
            // A SYN starts a connection even when its tuple is known (a closed connection
            // reopened, as clients reuse ports once the server closed first): judged again.
            if !is_syn(info) {
                trace_note!(ctx, Policy, "tracked connection: allowed");
                return Ok(());
            }
            classify_new(ctx, set, network, header, src, dst, Some(info.kind))?;
            return Ok(());
        }
    }
    if classify_new(
        ctx,
        set,
        network,
        header,
        src,
        dst,
        info.as_ref().map(|i| i.kind),
    )? {
        if let Some(info) = &info {
            // A full table or a clash leaves the connection untracked: its replies are
            // then judged as connections of their own.
            let _ = ctx.conntrack_create(
                zone,
                info,
                &NatPlan::none(zone),
                ::nat::Attachments::default(),
            );
        }
    }
    Ok(())
}

/// The association a packet belongs to, whichever way it goes.
fn association(network: NetworkId, header: &Header) -> AssociationKey {
    AssociationKey::new(
        network,
        header.protocol,
        (header.src, header.ports.0),
        (header.dst, header.ports.1),
    )
}

/// Counts a decision in the set (not in a dry run) and notes it in the trace.
fn decided(ctx: &Context<'_>, set: &PolicySet, decision: &Decision) {
    if let Some(trace) = ctx.trace {
        let side = |verdict: &Verdict| match verdict {
            Verdict::NotIsolated => "not isolated".to_owned(),
            Verdict::Allowed(rule) => {
                let policy = set.compiled().policy(rule.policy);
                format!(
                    "allowed by {}/{} {:?} rule {}",
                    policy.namespace, policy.name, rule.direction, rule.index
                )
            }
            Verdict::Denied(isolation) => {
                let names: Vec<String> = set
                    .compiled()
                    .isolating_policies(*isolation)
                    .iter()
                    .map(|&id| {
                        let policy = set.compiled().policy(id);
                        format!("{}/{}", policy.namespace, policy.name)
                    })
                    .collect();
                format!(
                    "isolated by {}, no rule allows: denied by default",
                    names.join(", ")
                )
            }
        };
        trace.note(
            super::trace::Step::Policy,
            format_args!(
                "source egress: {}; destination ingress: {}: {}",
                side(&decision.egress),
                side(&decision.ingress),
                if decision.allowed {
                    "allowed"
                } else {
                    "denied"
                }
            ),
        );
        if trace.is_dry_run() {
            return;
        }
    }
    set.count(decision);
}

/// True for a TCP segment that opens a connection (SYN without ACK).
fn is_syn(info: &::nat::PacketInfo) -> bool {
    matches!(info.kind, PacketKind::Tcp(flags)
        if flags.contains(TcpFlags::SYN) && !flags.contains(TcpFlags::ACK))
}

/// A packet of a connection the NAT or load-balancer stages already track: a SYN reopening
/// it (a client reusing the ports of a closed connection) is judged again, against the
/// destination the connection translates to; anything else passes.
pub fn judge_reopened(
    ctx: &Context<'_>,
    from: Option<PortId>,
    info: &::nat::PacketInfo,
    tracked: &::nat::Tracked,
) -> Result<(), DropCause> {
    if ctx.snapshot.policy.is_none()
        || !is_syn(info)
        || tracked.direction != ::nat::Direction::Original
    {
        return Ok(());
    }
    let tuple = tracked.target.unwrap_or(info.tuple);
    let network =
        (tracked.egress_zone != ::nat::Zone::EXTERNAL).then_some(NetworkId(tracked.egress_zone.0));
    judge(
        ctx,
        from,
        info.tuple.src,
        network,
        tuple.dst,
        6,
        tuple.dst_port,
    )
}

/// True when conntrack can follow the packet (TCP, UDP, ICMP, ICMPv6; not a fragment).
fn trackable(header: &Header) -> bool {
    !header.more_fragments && !header.later_fragment && matches!(header.protocol, 1 | 6 | 17 | 58)
}

/// The conntrack view of a first fragment of TCP (whose flags it holds) or UDP, which
/// carries the ports: so that a fragmented packet belongs to the same connection as the
/// unfragmented ones of its flow (a large reply to a small request). `nat::parse` refuses
/// fragments, which it could not translate; the policy stage translates nothing.
fn first_fragment_info(header: &Header) -> Option<::nat::PacketInfo> {
    if !header.more_fragments || header.later_fragment {
        return None;
    }
    let (protocol, kind) = match (header.protocol, header.tcp_flags) {
        (6, Some(flags)) => (::nat::Protocol::Tcp, PacketKind::Tcp(TcpFlags(flags))),
        (17, _) => (::nat::Protocol::Udp, PacketKind::Udp),
        _ => return None,
    };
    Some(::nat::PacketInfo {
        tuple: ::nat::Tuple::new(
            protocol,
            ::nat::Endpoint::new(header.src, header.ports.0),
            ::nat::Endpoint::new(header.dst, header.ports.1),
        ),
        kind,
    })
}

/// Judges the first packet conntrack does not know (`kind` when it can track it): `Ok(true)`
/// when it is allowed and its connection should be tracked, `Ok(false)` when it passes
/// untracked (judged per packet), or the cause to drop it for.
fn classify_new(
    ctx: &Context<'_>,
    set: &PolicySet,
    network: NetworkId,
    header: Header,
    src: Option<PortId>,
    dst: Option<PortId>,
    kind: Option<PacketKind>,
) -> Result<bool, DropCause> {
    let forward = Connection {
        src: peer(src, header.src),
        dst: peer(dst, header.dst),
        protocol: header.protocol,
        dst_port: header.ports.1,
    };
    match kind {
        // Mid-stream: picked up as established (see the module doc).
        Some(PacketKind::Tcp(flags)) if !flags.contains(TcpFlags::SYN) => Ok(true),
        Some(PacketKind::Tcp(_) | PacketKind::Udp | PacketKind::IcmpEcho(_)) => {
            let decision = set.compiled().check(&forward);
            decided(ctx, set, &decision);
            if decision.allowed {
                Ok(true)
            } else {
                Err(cause(&decision))
            }
        }
        // An ICMP error about no tracked connection, or one conntrack could not read:
        // judged as ICMP, never recorded (an association would let other unreadable ICMP
        // between the two ends pass).
        Some(PacketKind::IcmpError) => judged_unrecorded(ctx, set, &forward),
        None if header.icmp_error => judged_unrecorded(ctx, set, &forward),
        None => associated(ctx, set, network, header, &forward).map(|()| false),
    }
}

/// An ICMP error no connection knows: judged as ICMP, `Ok(false)` (untracked) when allowed;
/// a denial is counted.
fn judged_unrecorded(
    ctx: &Context<'_>,
    set: &PolicySet,
    forward: &Connection,
) -> Result<bool, DropCause> {
    let decision = set.compiled().check(forward);
    if decision.allowed {
        Ok(false)
    } else {
        decided(ctx, set, &decision);
        Err(cause(&decision))
    }
}

/// A packet conntrack cannot follow (SCTP, other protocols, first fragments): passes when
/// its association is known (either way), else is judged as the first packet of one and,
/// allowed, recorded.
fn associated(
    ctx: &Context<'_>,
    set: &PolicySet,
    network: NetworkId,
    header: Header,
    forward: &Connection,
) -> Result<(), DropCause> {
    let key = association(network, &header);
    let associations = set.associations();
    let known = if ctx.is_dry_run() {
        associations.is_live(&key, ctx.now_ms)
    } else {
        associations.touch(&key, ctx.now_ms)
    };
    if known {
        trace_note!(ctx, Policy, "known association: allowed");
        return Ok(());
    }
    let decision = set.compiled().check(forward);
    decided(ctx, set, &decision);
    if !decision.allowed {
        return Err(cause(&decision));
    }
    if !ctx.is_dry_run() {
        associations.insert(key, ctx.now_ms);
    }
    Ok(())
}

/// A routed packet crossing the Uplink untranslated that no connection knows (see
/// [`uplink::routed_out`](super::uplink::routed_out) and
/// [`uplink::routed_in`](super::uplink::routed_in)): from port `from` (`None`: from
/// outside) to its destination, an interface of `network` when coming in (`None`: going
/// out). `Ok(true)` when an isolated end is involved and the connection must be tracked
/// (so its replies pass), `Ok(false)` when it passes untracked, or the cause to drop it for.
/// `packet` is the IPv4 packet.
pub fn judge_routed(
    ctx: &Context<'_>,
    from: Option<PortId>,
    network: NetworkId,
    inbound: bool,
    packet: &[u8],
    info: Option<&::nat::PacketInfo>,
) -> Result<bool, DropCause> {
    let Some(set) = ctx.snapshot.policy.as_deref() else {
        return Ok(false);
    };
    let Some(header) = header(packet) else {
        return Ok(false);
    };
    let inside = inbound.then_some(network);
    let Some((src, dst)) = ends(set, inside, from, None, header.dst) else {
        return Ok(false);
    };
    if header.later_fragment {
        return Ok(false);
    }
    classify_new(ctx, set, network, header, src, dst, info.map(|i| i.kind))
}

/// The first packet of a connection the NAT or load-balancer stages are about to create:
/// from port `from` (`None`: from outside) at `src`, to `dst` (as translated) in `network`
/// (`None`: outside), protocol and destination port as translated. Counts the decision.
/// Both addresses are of one family (NAT never crosses families).
#[inline]
pub fn judge(
    ctx: &Context<'_>,
    from: Option<PortId>,
    src: IpAddr,
    network: Option<NetworkId>,
    dst: IpAddr,
    protocol: u8,
    dst_port: u16,
) -> Result<(), DropCause> {
    let Some(set) = ctx.snapshot.policy.as_deref() else {
        return Ok(());
    };
    let Some((src_port, dst_port_id)) = ends(set, network, from, None, dst) else {
        return Ok(());
    };
    let decision = set.compiled().check(&Connection {
        src: peer(src_port, src),
        dst: peer(dst_port_id, dst),
        protocol,
        dst_port,
    });
    decided(ctx, set, &decision);
    if decision.allowed {
        Ok(())
    } else {
        Err(cause(&decision))
    }
}

/// [`judge`] for a connection `info` starts with NAT `plan` (its destination as the plan
/// translates it; a DNAT into a Network is judged against that Network's interface).
pub fn judge_plan(
    ctx: &Context<'_>,
    from: Option<PortId>,
    info: &::nat::PacketInfo,
    plan: &NatPlan<'_>,
) -> Result<(), DropCause> {
    if ctx.snapshot.policy.is_none() {
        return Ok(());
    }
    let tuple = info.tuple;
    let (network, dst, port) = match plan.dnat {
        Some(::nat::Endpoint { addr, port }) => {
            let network =
                (plan.reply_zone != ::nat::Zone::EXTERNAL).then_some(NetworkId(plan.reply_zone.0));
            (network, addr, port)
        }
        None => (None, tuple.dst, tuple.dst_port),
    };
    // conntrack's ICMP is ICMPv6 (58) in an IPv6 tuple.
    let protocol = match (tuple.protocol, tuple.src) {
        (::nat::Protocol::Icmp, IpAddr::V6(_)) => 58,
        (protocol, _) => protocol.number(),
    };
    judge(ctx, from, tuple.src, network, dst, protocol, port)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use smoltcp::wire::IpProtocol;

    use super::*;
    use crate::pipeline::Verdict;
    use crate::pipeline::fixtures::*;

    /// The fixture's ports 1 (A) and 2 (B) as endpoints `default/a` (app=a) and `default/b`
    /// (app=b), with `policy` (YAML) compiled.
    fn bench_with(policy_yaml: &str) -> Bench {
        bench_sharing(policy_yaml, None)
    }

    /// [`bench_with`], with `conntrack` (another bench's) when given.
    fn bench_sharing(policy_yaml: &str, conntrack: Option<Arc<::nat::Conntrack>>) -> Bench {
        let written: policy::NetworkPolicy = serde_norway::from_str(policy_yaml).expect("policy");
        let endpoint = |id: u32, name: &str, ip: Ipv4Addr| policy::Endpoint {
            id: EndpointId(id),
            name: name.into(),
            namespace: "default".into(),
            network: "default".into(),
            labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
            addresses: vec![IpAddr::V4(ip)],
            ports: Vec::new(),
        };
        let world = policy::World {
            namespaces: Vec::new(),
            endpoints: vec![endpoint(1, "a", IP_A), endpoint(2, "b", IP_B)],
            load_balancers: Vec::new(),
            policies: vec![written.to_policy().expect("valid")],
        };
        let compiled = policy::Compiled::compile(world).expect("compiles");
        let networks = BTreeMap::from([(1, NetworkId(0)), (2, NetworkId(0))]);
        let set = PolicySet::new(compiled, &networks, None);
        let mut snapshot = snapshot().with_policy(Some(Arc::new(set)));
        if let Some(conntrack) = conntrack {
            snapshot = snapshot.with_nat(Arc::new(::nat::NatRules::new()), conntrack);
        }
        Bench::with(snapshot)
    }

    /// A frame from A to B (B's MAC) carrying `protocol` with ports `src` -> `dst` (SCTP's
    /// common header starts with the two ports, as TCP's and UDP's do).
    fn frame(protocol: IpProtocol, src: u16, dst: u16, from_b: bool) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&src.to_be_bytes());
        l4[2..4].copy_from_slice(&dst.to_be_bytes());
        if protocol == IpProtocol::Tcp {
            l4[12] = 0x50;
            l4[13] = 0x02; // SYN
        }
        if protocol == IpProtocol::Udp {
            l4[4..6].copy_from_slice(&20u16.to_be_bytes());
        }
        let (smac, dmac, sip, dip) = if from_b {
            (MAC_B, MAC_A, IP_B, IP_A)
        } else {
            (MAC_A, MAC_B, IP_A, IP_B)
        };
        ipv4_frame(smac, dmac, sip, dip, 64, protocol, false, &l4)
    }

    const SCTP_ONLY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sctp}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - ports: [{protocol: SCTP, port: 5000}]\n";

    /// The kernel here has no SCTP: crafted SCTP packets show that SCTP matches its own
    /// rules (never TCP's), and that the packets of an allowed association pass both ways
    /// without being judged again.
    #[test]
    fn sctp_is_matched_by_crafted_packets() {
        let bench = bench_with(SCTP_ONLY);
        // Learn both MACs so switched frames are unicast.
        bench.send(1, &frame(IpProtocol::Udp, 1, 2, false), 0);
        bench.send(2, &frame(IpProtocol::Udp, 1, 2, true), 0);
        let sctp = IpProtocol::Unknown(132);
        assert_eq!(
            bench.send(1, &frame(sctp, 40000, 5000, false), 1).verdict,
            Verdict::Forward(PortId(2))
        );
        assert_eq!(
            bench.send(1, &frame(sctp, 40000, 5001, false), 1).verdict,
            Verdict::Drop(DropCause::Policy(DropReason::IngressDenied))
        );
        // TCP to 5000 is not SCTP.
        assert_eq!(
            bench
                .send(1, &frame(IpProtocol::Tcp, 40000, 5000, false), 1)
                .verdict,
            Verdict::Drop(DropCause::Policy(DropReason::IngressDenied))
        );
        // B's answer from 5000 belongs to the allowed association, and so does A's next
        // packet: neither is judged again.
        assert_eq!(
            bench.send(2, &frame(sctp, 5000, 40000, true), 2).verdict,
            Verdict::Forward(PortId(1))
        );
        assert_eq!(
            bench.send(1, &frame(sctp, 40000, 5000, false), 3).verdict,
            Verdict::Forward(PortId(2))
        );
        // An SCTP packet to B from a port of no association is judged: B takes only 5000.
        assert_eq!(
            bench.send(1, &frame(sctp, 5000, 40001, false), 3).verdict,
            Verdict::Drop(DropCause::Policy(DropReason::IngressDenied))
        );
        let set = bench.snapshot.policy.as_ref().expect("set");
        assert_eq!(set.associations().len(), 1);
        let counts = set.totals();
        assert_eq!(counts["sctp"].ingress_allowed, 1, "one association");
        assert!(counts["sctp"].ingress_denied >= 3);
    }

    /// A SYN on the tuple of a tracked (closed) connection opens a new one: it is judged
    /// against the policies in force now, not let through by the old entry.
    #[test]
    fn a_reopened_connection_is_judged_again() {
        let allow = bench_with(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - ports: [{port: 80}]\n",
        );
        allow.send(2, &frame(IpProtocol::Udp, 80, 1, true), 0);
        allow.send(1, &frame(IpProtocol::Udp, 1, 80, false), 0);
        let syn = frame(IpProtocol::Tcp, 40000, 80, false);
        assert_eq!(allow.send(1, &syn, 1).verdict, Verdict::Forward(PortId(2)));
        // Same conntrack, a policy that now allows only 81.
        let deny = bench_sharing(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - ports: [{port: 81}]\n",
            Some(Arc::clone(&allow.snapshot.conntrack)),
        );
        deny.send(2, &frame(IpProtocol::Udp, 80, 1, true), 0);
        assert_eq!(
            deny.send(1, &syn, 2).verdict,
            Verdict::Drop(DropCause::Policy(DropReason::IngressDenied))
        );
    }

    /// A TCP connection allowed once is tracked: later segments and the replies pass without
    /// being judged again, even after the policy would deny a new one.
    #[test]
    fn tcp_connections_are_judged_once_and_replies_pass() {
        let bench = bench_with(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - ports: [{port: 80}]\n",
        );
        bench.send(1, &frame(IpProtocol::Udp, 1, 80, false), 0);
        bench.send(2, &frame(IpProtocol::Udp, 80, 1, true), 0);
        assert_eq!(
            bench
                .send(1, &frame(IpProtocol::Tcp, 40000, 80, false), 1)
                .verdict,
            Verdict::Forward(PortId(2))
        );
        let mut reply = frame(IpProtocol::Tcp, 80, 40000, true);
        reply[crate::wire::VNET_HDR_LEN + 14 + 20 + 13] = 0x12; // SYN-ACK
        assert_eq!(
            bench.send(2, &reply, 2).verdict,
            Verdict::Forward(PortId(1))
        );
        assert_eq!(
            bench
                .send(1, &frame(IpProtocol::Tcp, 40000, 81, false), 3)
                .verdict,
            Verdict::Drop(DropCause::Policy(DropReason::IngressDenied))
        );
        let counts = bench.snapshot.policy.as_ref().expect("set").totals();
        assert_eq!(counts["web"].ingress_allowed, 1, "the SYN (UDP is not TCP)");
        assert_eq!(counts["web"].rules[&(policy::Direction::Ingress, 0)], 1);
    }

    /// A traced dry run names the policy and rule that allow a connection, or the policies
    /// that isolate its end when none allows it; it counts nothing and tracks nothing.
    #[test]
    fn a_dry_run_names_the_deciding_policy_and_counts_nothing() {
        let bench = bench_with(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - ports: [{port: 80}]\n",
        );
        bench.send(1, &frame(IpProtocol::Udp, 1, 80, false), 0);
        bench.send(2, &frame(IpProtocol::Udp, 80, 1, true), 0);
        let set = bench.snapshot.policy.as_ref().expect("set");
        let counted = |set: &PolicySet| {
            let web = &set.totals()["web"];
            (web.ingress_allowed, web.ingress_denied)
        };
        let before = (counted(set), bench.snapshot.conntrack.len());
        let port = bench.snapshot.port(PortId(1)).expect("port 1");
        let ingress = crate::tables::snapshot::Ingress::Port(port, port.io().expect("device"));
        let trace = |dport| {
            let record = crate::trace::run_synthetic(
                &bench.ctx(1),
                ingress,
                frame(IpProtocol::Tcp, 40000, dport, false),
            );
            let policy = record
                .steps
                .iter()
                .find(|step| step.stage == crate::pipeline::trace::Step::Policy)
                .map(|step| step.detail.clone())
                .unwrap_or_else(|| panic!("no policy step in {record}"));
            (record, policy)
        };
        let (allowed, why) = trace(80);
        assert_eq!(allowed.verdict, "forward", "{allowed}");
        assert!(
            why.contains("destination ingress: allowed by default/web Ingress rule 0"),
            "{why}"
        );
        assert!(why.contains("source egress: not isolated"), "{why}");
        let (denied, why) = trace(81);
        assert_eq!(
            denied.drop.as_deref(),
            Some("policy.ingress_denied"),
            "{denied}"
        );
        assert!(
            why.contains("isolated by default/web, no rule allows: denied by default"),
            "{why}"
        );
        assert_eq!((counted(set), bench.snapshot.conntrack.len()), before);
    }

    #[test]
    fn header_reads_ports_and_fragments() {
        let mut packet = [0u8; 28];
        packet[0] = 0x45;
        packet[9] = 132;
        packet[12..16].copy_from_slice(&[10, 0, 0, 1]);
        packet[16..20].copy_from_slice(&[10, 0, 0, 2]);
        packet[20..24].copy_from_slice(&[0x13, 0x88, 0x00, 0x50]);
        let h = header(&packet).expect("parses");
        assert_eq!(h.ports, (5000, 80));
        assert_eq!(h.protocol, 132);
        assert!(!h.later_fragment && !h.more_fragments);
        packet[6] = 0x20;
        assert!(header(&packet).expect("parses").more_fragments);
        packet[7] = 1;
        let later = header(&packet).expect("parses");
        assert!(later.later_fragment);
        assert_eq!(later.ports, (0, 0));
        assert!(header(&packet[..10]).is_none());
    }

    /// An IPv6 frame from A to B (or back) carrying `protocol` (`l4` its header and payload).
    fn frame6(protocol: u8, l4: &[u8], from_b: bool) -> Vec<u8> {
        let (smac, dmac, sip, dip) = if from_b {
            (MAC_B, MAC_A, IP6_B, IP6_A)
        } else {
            (MAC_A, MAC_B, IP6_A, IP6_B)
        };
        let mut frame = vec![0u8; crate::wire::VNET_HDR_LEN];
        frame.extend_from_slice(&dmac);
        frame.extend_from_slice(&smac);
        frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        frame.extend_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&[protocol, 64]);
        frame.extend_from_slice(&sip.octets());
        frame.extend_from_slice(&dip.octets());
        frame.extend_from_slice(l4);
        frame
    }

    /// A TCP segment's header from `src` to `dst` with `flags`.
    fn tcp6(src: u16, dst: u16, flags: u8, from_b: bool) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&src.to_be_bytes());
        l4[2..4].copy_from_slice(&dst.to_be_bytes());
        l4[12] = 0x50;
        l4[13] = flags;
        frame6(6, &l4, from_b)
    }

    fn udp6(src: u16, dst: u16, from_b: bool) -> Vec<u8> {
        let mut l4 = vec![0u8; 8];
        l4[0..2].copy_from_slice(&src.to_be_bytes());
        l4[2..4].copy_from_slice(&dst.to_be_bytes());
        l4[4..6].copy_from_slice(&8u16.to_be_bytes());
        frame6(17, &l4, from_b)
    }

    fn echo6(kind: u8, ident: u16, from_b: bool) -> Vec<u8> {
        let mut l4 = vec![kind, 0, 0, 0, 0, 0, 0, 1];
        l4[4..6].copy_from_slice(&ident.to_be_bytes());
        frame6(58, &l4, from_b)
    }

    const WEB_80: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - ports: [{port: 80}]\n";
    const DENIED: Verdict = Verdict::Drop(DropCause::Policy(DropReason::IngressDenied));

    /// IPv6 is judged and followed like IPv4, in conntrack: an allowed connection's replies
    /// and later segments pass, a port or a protocol no rule allows is denied (again when
    /// retransmitted: a denied packet tracks nothing), and an echo's reply belongs to its
    /// request.
    #[test]
    fn ipv6_connections_are_judged_and_replies_pass() {
        let bench = bench_with(WEB_80);
        // B's first packet (to A, which no policy isolates; B's egress is open) teaches its
        // MAC, so frames to B are unicast.
        assert_eq!(
            bench.send(2, &udp6(5353, 5353, true), 0).verdict,
            Verdict::Flood
        );
        assert_eq!(
            bench.send(1, &tcp6(40000, 80, 0x02, false), 1).verdict,
            Verdict::Forward(PortId(2))
        );
        assert_eq!(
            bench.send(2, &tcp6(80, 40000, 0x12, true), 2).verdict,
            Verdict::Forward(PortId(1)),
            "the SYN-ACK belongs to the allowed connection"
        );
        assert_eq!(
            bench.send(1, &tcp6(40000, 80, 0x10, false), 3).verdict,
            Verdict::Forward(PortId(2))
        );
        let tracked = bench.snapshot.conntrack.len();
        assert!(tracked >= 1, "the TCP connection is in conntrack");
        assert_eq!(
            bench.send(1, &tcp6(40001, 81, 0x02, false), 4).verdict,
            DENIED
        );
        assert_eq!(
            bench.send(1, &tcp6(40001, 81, 0x02, false), 4).verdict,
            DENIED,
            "a retransmitted SYN is judged again"
        );
        assert_eq!(bench.snapshot.conntrack.len(), tracked);
        // A port without a protocol is TCP's.
        assert_eq!(bench.send(1, &udp6(40000, 80, false), 5).verdict, DENIED);
        assert_eq!(bench.send(1, &udp6(40000, 53, false), 6).verdict, DENIED);
        assert_eq!(bench.send(1, &echo6(128, 7, false), 7).verdict, DENIED);
        let set = bench.snapshot.policy.as_ref().expect("set");
        let counts = set.totals();
        assert_eq!(
            counts["web"].ingress_allowed, 1,
            "the TCP/80 connection, once"
        );
        assert_eq!(counts["web"].ingress_denied, 5);
    }

    /// IPv6 `ipBlock`s match IPv6 peers; an ICMPv6 echo's reply passes as part of its
    /// request's connection, another identifier is a new one.
    #[test]
    fn ipv6_ip_blocks_and_echo() {
        let bench = bench_with(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: block}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd00::/120', except: ['fd00::c/127']}}]\n",
        );
        // B is isolated both ways and allows no egress: its first packet is denied.
        assert_eq!(
            bench.send(2, &udp6(5353, 5353, true), 0).verdict,
            Verdict::Drop(DropCause::Policy(DropReason::EgressDenied))
        );
        // A (fd00::a) is in the block: its echo goes (B's MAC was learned before its frame
        // was denied) and B's reply with the same identifier passes although B's egress
        // allows nothing.
        assert_eq!(
            bench.send(1, &echo6(128, 9, false), 1).verdict,
            Verdict::Forward(PortId(2))
        );
        assert_eq!(
            bench.send(2, &echo6(129, 9, true), 2).verdict,
            Verdict::Forward(PortId(1))
        );
        assert_eq!(
            bench.send(2, &echo6(128, 10, true), 3).verdict,
            Verdict::Drop(DropCause::Policy(DropReason::EgressDenied))
        );
    }

    /// A first fragment belongs to the connection of its flow (conntrack, by the ports it
    /// carries): a fragmented reply to an allowed request passes into an interface isolated
    /// for ingress; a fragmented packet of another flow is judged as new.
    #[test]
    fn a_fragmented_reply_belongs_to_its_connection() {
        let bench = bench_with(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-closed}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Ingress]\n",
        );
        // Learn B's MAC (flooded: the fixture's endpoints own no IPv6 address, so only a
        // known destination port is judged).
        assert_eq!(
            bench.send(2, &udp6(53, 5353, true), 0).verdict,
            Verdict::Flood
        );
        assert_eq!(
            bench.send(1, &udp6(5353, 53, false), 1).verdict,
            Verdict::Forward(PortId(2))
        );
        // B's answer, the first fragment of a large UDP datagram (fragment header, M set).
        let fragment = |src: u16, dst: u16| {
            let mut l4 = vec![17, 0, 0x00, 0x01, 0, 0, 0, 7];
            l4.extend_from_slice(&src.to_be_bytes());
            l4.extend_from_slice(&dst.to_be_bytes());
            l4.extend_from_slice(&1208u16.to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            l4.extend_from_slice(&[0u8; 64]);
            frame6(44, &l4, true)
        };
        assert_eq!(
            bench.send(2, &fragment(53, 5353), 2).verdict,
            Verdict::Forward(PortId(1)),
            "the reply's first fragment passes"
        );
        assert_eq!(
            bench.send(2, &fragment(53, 5354), 3).verdict,
            Verdict::Drop(DropCause::Policy(DropReason::IngressDenied)),
            "a fragment of another flow is new"
        );
    }
}
