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
//! Cilium. SCTP and other protocols conntrack does not track are judged on every packet: a
//! packet passes when it is allowed, or when the packet the other way would be (a reply of
//! an allowed association). Peers behind the overlay or the uplink are outside the switch:
//! only `ipBlock`s match them.
//!
//! Drops: `policy.egress_denied` (the source's egress policies allow no rule for it) and
//! `policy.ingress_denied` (the destination's). Per-rule allowed and per-policy denied
//! connection counts are kept in the set.

use std::net::{IpAddr, Ipv4Addr};

use ::nat::{NatPlan, PacketKind, TcpFlags};
use policy::{Connection, Decision, EndpointId, Peer};

use super::l3::ip_bounds;
use super::{Context, DropCause, nat};
use crate::port::PortId;
use crate::tables::counters::keyed_enum;
use crate::tables::policy::PolicySet;
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

/// The IPv4 fields classification needs, read from the header.
#[derive(Debug, Clone, Copy)]
struct Header {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    /// Source and destination ports (TCP, UDP, SCTP), else zeros.
    ports: (u16, u16),
    /// Fragment offset is not zero: a later fragment.
    later_fragment: bool,
    /// More fragments follow.
    more_fragments: bool,
}

fn header(packet: &[u8]) -> Option<Header> {
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
    Some(Header {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        protocol,
        ports,
        later_fragment,
        more_fragments,
    })
}

fn peer(port: Option<PortId>, addr: Ipv4Addr) -> Peer {
    match port {
        Some(port) => Peer::Endpoint {
            id: EndpointId(port.0),
            addr: IpAddr::V4(addr),
        },
        None => Peer::External(IpAddr::V4(addr)),
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
    dst: Ipv4Addr,
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
    let Some(packet) = ip_bounds(frame).and_then(|(start, end)| frame.get(start..end)) else {
        return Ok(());
    };
    let Some(header) = header(packet) else {
        return Ok(());
    };
    let Some((src, dst)) = ends(set, Some(network), from, to, header.dst) else {
        return Ok(());
    };
    if header.later_fragment {
        return Ok(());
    }
    let forward = Connection {
        src: peer(src, header.src),
        dst: peer(dst, header.dst),
        protocol: header.protocol,
        dst_port: header.ports.1,
    };
    let trackable = !header.more_fragments && matches!(header.protocol, 1 | 6 | 17);
    if trackable {
        if let Ok(info) = ::nat::parse(packet) {
            let zone = nat::zone_of(network);
            let conntrack = &ctx.snapshot.conntrack;
            if conntrack.lookup(zone, &info, ctx.now_ms).is_some() {
                return Ok(());
            }
            match info.kind {
                PacketKind::Tcp(flags) if !flags.contains(TcpFlags::SYN) => {
                    // Mid-stream: picked up as established (see the module doc).
                    let _ = conntrack.create(
                        zone,
                        &info,
                        &NatPlan::none(zone),
                        ::nat::Attachments::default(),
                        ctx.now_ms,
                    );
                    return Ok(());
                }
                PacketKind::Tcp(_) | PacketKind::Udp | PacketKind::IcmpEcho(_) => {
                    let decision = set.compiled().check(&forward);
                    set.count(&decision);
                    if !decision.allowed {
                        return Err(cause(&decision));
                    }
                    // A full table or a clash leaves the connection untracked: its replies
                    // are then judged as connections of their own.
                    let _ = conntrack.create(
                        zone,
                        &info,
                        &NatPlan::none(zone),
                        ::nat::Attachments::default(),
                        ctx.now_ms,
                    );
                    return Ok(());
                }
                PacketKind::IcmpError => {}
            }
        }
    }
    stateless(set, &forward, header)
}

/// Judges a packet conntrack does not track: allowed itself, or as a reply of an allowed
/// connection the other way.
fn stateless(set: &PolicySet, forward: &Connection, header: Header) -> Result<(), DropCause> {
    let decision = set.compiled().check(forward);
    if decision.allowed {
        return Ok(());
    }
    let reverse = Connection {
        src: forward.dst,
        dst: forward.src,
        protocol: forward.protocol,
        dst_port: header.ports.0,
    };
    if set.compiled().check(&reverse).allowed {
        return Ok(());
    }
    set.count(&decision);
    Err(cause(&decision))
}

/// The first packet of a connection the NAT or load-balancer stages are about to create:
/// from port `from` (`None`: from outside) at `src`, to `dst` (as translated) in `network`
/// (`None`: outside), protocol and destination port as translated. Counts the decision.
#[inline]
pub fn judge(
    ctx: &Context<'_>,
    from: Option<PortId>,
    src: Ipv4Addr,
    network: Option<NetworkId>,
    dst: Ipv4Addr,
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
    set.count(&decision);
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
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (tuple.src, tuple.dst) else {
        return Ok(());
    };
    let (network, dst, port) = match plan.dnat {
        Some(::nat::Endpoint {
            addr: IpAddr::V4(addr),
            port,
        }) => {
            let network =
                (plan.reply_zone != ::nat::Zone::EXTERNAL).then_some(NetworkId(plan.reply_zone.0));
            (network, addr, port)
        }
        _ => (None, dst, tuple.dst_port),
    };
    judge(ctx, from, src, network, dst, tuple.protocol.number(), port)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
