//! Stage `arp` (part of [`l3`](super::l3), whose drop reasons it uses): the switch owns each
//! subnet's gateway address.
//!
//! - An ARP request for the ingress subnet's gateway is answered by the switch with the
//!   subnet's `gateway_mac`, to the ingress port only, and not flooded (RFC 826 "Packet
//!   Reception": the target answers; a probe from 0.0.0.0, RFC 5227, is answered too, as
//!   Linux does). A reply to the gateway (an answer to the switch's own request) is consumed.
//! - The sender of ARP addressed to the gateway is learned into the neighbour table (Linux
//!   creates entries only from ARP that targets it); any other ARP from a port refreshes the
//!   sender's entry if there is one. Port security has already tied the sender's MAC and
//!   address to the port.
//! - ARP for the switch's addresses is limited per port and worker (a token bucket,
//!   [`ARP_BURST`](super::ARP_BURST) at once, [`ARP_PER_SECOND`](super::ARP_PER_SECOND) on
//!   average); beyond it, it is dropped as `l3.arp_rate_limited`, neither answered nor
//!   learned from.
//! - ARP unicast to the gateway MAC about another address is dropped
//!   (`l3.arp_misdirected`); other ARP is switched at L2 as before.
//!
//! On the uplink ([`on_uplink`]) the switch answers ARP for the addresses it owns there and
//! for nothing else (the host answers for its own), and learns its neighbours there (the
//! gateway) under the uplink's segment.
//!
//! It also builds the switch's own ARP: requests to resolve a next hop (broadcast into the
//! egress subnet or out of the uplink, or unicast to re-confirm a stale neighbour) and
//! gratuitous ARP announcing a gateway to a port that attached (RFC 5227 section 3, an "ARP
//! Announcement").

use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame,
    EthernetProtocol, EthernetRepr,
};

use super::generated::Origin;
use super::l3::{DropReason, Link};
use super::parse::{L3, Parsed};
use super::{Context, Output, Verdict, l2, uplink};
use crate::port::PortId;
use crate::tables::counters::Event;
use crate::tables::neigh::Confirmation;
use crate::tables::snapshot::{PortEntry, SubnetEntry, UplinkEntry};

/// The broadcast MAC.
const BROADCAST: [u8; 6] = [0xff; 6];

/// Handles an ARP packet from `ingress` (in `subnet`) that passed port security: learns its
/// sender, answers or consumes it when it is for the gateway. `None` when it is not the
/// switch's business (switch it at L2).
pub fn handle(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    out: &mut Output,
) -> Option<Verdict> {
    let L3::Arp {
        operation,
        sender_mac,
        sender_ip,
        target_ip,
    } = parsed.l3
    else {
        return None;
    };
    let for_gateway = target_ip == subnet.gateway;
    // A LoadBalancer's address inside the subnet is the switch's too.
    let for_balancer = !for_gateway
        && subnet.cidr.contains(&target_ip)
        && ctx
            .snapshot
            .balancer(subnet.network_id, target_ip.into())
            .is_some();
    // A storm toward the switch's addresses costs a reply and a neighbour-table write per
    // frame: beyond the port's rate it is dropped before either.
    if (for_gateway || for_balancer)
        && !ctx.is_dry_run()
        && !out.arp_limiter.allow(ingress.id, ctx.now_ms)
    {
        return Some(Verdict::drop(DropReason::ArpRateLimited));
    }
    if !sender_ip.is_unspecified() && !ctx.is_dry_run() {
        let confirmation =
            ctx.neighbors
                .confirm(subnet.id, sender_ip, sender_mac, ctx.now_ms, for_gateway);
        match confirmation {
            Confirmation::Created | Confirmation::Changed => {
                out.events.add(Event::NeighborLearned);
            }
            Confirmation::Resolved => {
                out.events.add(Event::NeighborLearned);
                out.neighbor_resolved = true;
            }
            Confirmation::Refreshed | Confirmation::Ignored => {}
        }
    }
    if for_gateway || for_balancer {
        if operation == ArpOperation::Request {
            let reply = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress(subnet.gateway_mac),
                source_protocol_addr: target_ip,
                target_hardware_addr: EthernetAddress(sender_mac),
                target_protocol_addr: sender_ip,
            };
            let to = Verdict::Forward(ingress.id);
            if !emit(out, to, parsed.src_mac, subnet.gateway_mac, &reply) {
                return Some(Verdict::drop(DropReason::NoBuffer));
            }
            out.events.add(Event::ArpReplied);
        }
        return Some(Verdict::Consumed);
    }
    if parsed.dst_mac == subnet.gateway_mac {
        // The answer to one of the switch's probes (a shared gateway resolves its neighbours
        // with them): learned above, consumed here.
        if operation == ArpOperation::Reply && target_ip.is_unspecified() {
            return Some(Verdict::Consumed);
        }
        return Some(Verdict::drop(DropReason::ArpMisdirected));
    }
    None
}

/// Sends an ARP request for `target` on `link`: from a subnet's gateway, broadcast into the
/// subnet or unicast to `unicast` (re-confirming a stale neighbour, RFC 1122 2.3.2.1); on the
/// uplink from the switch's MAC and its address on `target`'s link
/// ([`uplink::source_for`]). Returns false when nothing was sent (the worker's buffer is
/// full, or the subnet has no port).
pub fn request(
    ctx: &Context<'_>,
    out: &mut Output,
    link: Link<'_>,
    target: Ipv4Addr,
    unicast: Option<[u8; 6]>,
) -> bool {
    let (dst_mac, verdict, source_mac, source_ip) = match link {
        Link::Subnet(subnet) => {
            let (dst_mac, verdict) = match unicast {
                Some(mac) => (mac, l2::destination(ctx, subnet, mac, None)),
                None => (
                    BROADCAST,
                    Verdict::FloodSubnet {
                        subnet: subnet.id,
                        except: None,
                    },
                ),
            };
            // A gateway address other nodes hold too is never claimed on the segment: ask
            // with an ARP probe (RFC 5227: sender 0.0.0.0), which Linux answers to our MAC
            // without learning anything.
            let source_ip = if subnet.shared_gateway {
                Ipv4Addr::UNSPECIFIED
            } else {
                subnet.gateway
            };
            (dst_mac, verdict, subnet.gateway_mac, source_ip)
        }
        Link::Uplink(uplink) => (
            unicast.unwrap_or(BROADCAST),
            Verdict::Forward(uplink.id),
            uplink.mac,
            uplink::source_for(uplink, target),
        ),
    };
    let request = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(source_mac),
        source_protocol_addr: source_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    // A subnet without ports has nobody to ask.
    let sent =
        !matches!(verdict, Verdict::Drop(_)) && emit(out, verdict, dst_mac, source_mac, &request);
    if sent {
        out.events.add(Event::ArpRequestsSent);
    }
    sent
}

/// Handles an ARP packet received on the uplink (already sent to the switch's uplink MAC or
/// broadcast): a request for one of the switch's addresses there is answered from the
/// switch's MAC, to the asker only; the sender of ARP about those addresses (requests and the
/// answers to the switch's own requests, the gateway's among them) is learned under the
/// uplink's segment, and anyone else's ARP only refreshes an entry that exists. ARP about
/// other addresses is the host's business (`uplink.not_owned`): never answered, so the switch
/// cannot take the host's traffic.
pub fn on_uplink(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    parsed: &Parsed,
    out: &mut Output,
) -> Verdict {
    let L3::Arp {
        operation,
        sender_mac,
        sender_ip,
        target_ip,
    } = parsed.l3
    else {
        return Verdict::drop(uplink::DropReason::Unsupported);
    };
    let ours = uplink::owns(uplink, target_ip);
    // Nobody else may claim our addresses in our neighbour table.
    if !sender_ip.is_unspecified() && !uplink::owns(uplink, sender_ip) && !ctx.is_dry_run() {
        let confirmation =
            ctx.neighbors
                .confirm(uplink.segment, sender_ip, sender_mac, ctx.now_ms, ours);
        match confirmation {
            Confirmation::Created | Confirmation::Changed => {
                out.events.add(Event::NeighborLearned);
            }
            Confirmation::Resolved => {
                out.events.add(Event::NeighborLearned);
                out.neighbor_resolved = true;
            }
            Confirmation::Refreshed | Confirmation::Ignored => {}
        }
    }
    if !ours {
        return Verdict::drop(uplink::DropReason::NotOwned);
    }
    if operation == ArpOperation::Request {
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(uplink.mac),
            source_protocol_addr: target_ip,
            target_hardware_addr: EthernetAddress(sender_mac),
            target_protocol_addr: sender_ip,
        };
        let to = Verdict::Forward(uplink.id);
        if !emit(out, to, parsed.src_mac, uplink.mac, &reply) {
            return Verdict::drop(DropReason::NoBuffer);
        }
        out.events.add(Event::ArpReplied);
    }
    Verdict::Consumed
}

/// Sends `port` a gratuitous ARP announcing `subnet`'s gateway (gateway address -> gateway
/// MAC): an ARP request with sender and target address both the gateway, broadcast, as
/// RFC 5227 section 3 and Linux's `arping -U` do. Returns false when the buffer is full.
pub fn announce(out: &mut Output, subnet: &SubnetEntry, port: PortId) -> bool {
    let announcement = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(subnet.gateway_mac),
        source_protocol_addr: subnet.gateway,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: subnet.gateway,
    };
    let sent = emit(
        out,
        Verdict::Forward(port),
        BROADCAST,
        subnet.gateway_mac,
        &announcement,
    );
    if sent {
        out.events.add(Event::GratuitousArpSent);
    }
    sent
}

/// Appends an ARP frame to the generated frames (no padding to 60 bytes: TAP and veth need
/// none, as Linux's own ARP over veth shows).
fn emit(
    out: &mut Output,
    verdict: Verdict,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    arp: &ArpRepr,
) -> bool {
    let Some(buf) = out.generated.push_ethernet(
        ETHERNET_HEADER_LEN + arp.buffer_len(),
        verdict,
        Origin::Switch,
    ) else {
        return false;
    };
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::DropCause;
    use crate::pipeline::fixtures::*;
    use crate::tables::neigh::NeighborState;
    use crate::tables::snapshot::SubnetId;
    use crate::wire::VNET_HDR_LEN;

    /// [`ARP_REQUEST`] asking for the blue gateway 172.30.0.1.
    fn request_for_gateway() -> Vec<u8> {
        let mut frame = ARP_REQUEST.to_vec();
        frame[VNET_HDR_LEN + 14 + 24..VNET_HDR_LEN + 14 + 28].copy_from_slice(&GW_BLUE.octets());
        frame
    }

    #[test]
    fn answers_arp_for_the_gateway() {
        let bench = Bench::new();
        let outcome = bench.send(1, &request_for_gateway(), 5);
        assert_eq!(outcome.verdict, Verdict::Consumed, "not flooded");
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let (verdict, origin, bytes) = &generated[0];
        assert_eq!(
            *verdict,
            Verdict::Forward(PortId(1)),
            "back to the asker only"
        );
        assert_eq!(*origin, Origin::Switch);
        let expected: [u8; 10 + 42] = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // virtio_net_hdr: no offload
            // Ethernet: to the asker, from the gateway MAC, ARP
            0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0xee, 0x01, 0x08, 0x06,
            // ARP reply
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, //
            // sender: the gateway 02:00:00:00:ee:01 172.30.0.1
            0x02, 0x00, 0x00, 0x00, 0xee, 0x01, 172, 30, 0, 1, //
            // target: the asker 02:00:00:00:00:0a 172.30.0.2
            0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 172, 30, 0, 2,
        ];
        assert_eq!(bytes.as_slice(), &expected[..]);
        // The asker was gleaned.
        assert_eq!(bench.neighbors.lookup(SubnetId(1), IP_A), Some(MAC_A));
        assert_eq!(bench.local.borrow().out.events.get(Event::ArpReplied), 1);
    }

    #[test]
    fn arp_storm_to_the_gateway_is_rate_limited_per_port() {
        use crate::pipeline::{ARP_BURST, ARP_PER_SECOND};
        let bench = Bench::new();
        let frame = request_for_gateway();
        let answered = (0..ARP_BURST + 50)
            .filter(|_| bench.send(1, &frame, 1_000).verdict == Verdict::Consumed)
            .count();
        assert_eq!(answered, usize::try_from(ARP_BURST).expect("small"));
        assert_eq!(
            bench.send(1, &frame, 1_000).verdict,
            Verdict::Drop(DropCause::L3(DropReason::ArpRateLimited))
        );
        assert!(bench.generated().is_empty(), "no answer over the limit");
        let replied = bench.local.borrow().out.events.get(Event::ArpReplied);
        assert_eq!(replied, ARP_BURST);
        let later = 1_000 + 1_000 / ARP_PER_SECOND;
        assert_eq!(bench.send(1, &frame, later).verdict, Verdict::Consumed);
    }

    #[test]
    fn a_probe_from_zero_is_answered_without_learning() {
        let bench = Bench::new();
        let mut probe = request_for_gateway();
        probe[VNET_HDR_LEN + 14 + 14..VNET_HDR_LEN + 14 + 18].copy_from_slice(&[0; 4]);
        assert_eq!(bench.send(1, &probe, 0).verdict, Verdict::Consumed);
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        assert_eq!(&generated[0].2[VNET_HDR_LEN + 14 + 24..], &[0, 0, 0, 0]);
        assert!(bench.neighbors.is_empty());
    }

    #[test]
    fn arp_for_another_subnets_gateway_is_switched() {
        let bench = Bench::new();
        let mut frame = ARP_REQUEST.to_vec();
        frame[VNET_HDR_LEN + 14 + 24..VNET_HDR_LEN + 14 + 28].copy_from_slice(&GW_RED.octets());
        assert_eq!(bench.send(1, &frame, 0).verdict, Verdict::Flood);
        assert!(bench.generated().is_empty());
        assert!(bench.neighbors.is_empty(), "not for us: nothing created");
    }

    /// Port 2's ARP reply to the blue gateway's MAC, its target address `target`.
    fn reply_from_b(target: Ipv4Addr) -> Vec<u8> {
        let mut reply = with_dst_mac(&with_src_mac(&ARP_REQUEST, MAC_B), GW_BLUE_MAC);
        let arp = VNET_HDR_LEN + 14;
        reply[arp + 7] = 2;
        reply[arp + 8..arp + 14].copy_from_slice(&MAC_B);
        reply[arp + 14..arp + 18].copy_from_slice(&IP_B.octets());
        reply[arp + 18..arp + 24].copy_from_slice(&GW_BLUE_MAC);
        reply[arp + 24..arp + 28].copy_from_slice(&target.octets());
        reply
    }

    #[test]
    fn replies_to_the_gateway_are_consumed_and_resolve() {
        let bench = Bench::new();
        // The switch asked for port 2's address (an incomplete entry)...
        bench.neighbors.resolve(SubnetId(1), IP_B, 0);
        // ... and port 2 answers to the gateway MAC.
        let reply = reply_from_b(GW_BLUE);
        assert_eq!(bench.send(2, &reply, 10).verdict, Verdict::Consumed);
        assert!(bench.generated().is_empty(), "a reply is not answered");
        assert_eq!(bench.neighbors.lookup(SubnetId(1), IP_B), Some(MAC_B));
        assert!(bench.local.borrow().out.neighbor_resolved);
        // Unicast ARP to the gateway MAC about someone else is dropped, not flooded.
        let odd = reply_from_b(IP_A);
        assert_eq!(
            bench.send(2, &odd, 10).verdict,
            Verdict::Drop(DropCause::L3(DropReason::ArpMisdirected))
        );
    }

    /// A shared gateway (`spec.sharedGateway`) asks with an ARP probe, from 0.0.0.0, so
    /// the segment's own router keeps its entry for the gateway address; the answer (to the
    /// gateway MAC, about 0.0.0.0) resolves the neighbour and is consumed.
    #[test]
    fn a_shared_gateway_resolves_with_probes() {
        let bench = Bench::new();
        let mut shared = bench.snapshot.subnet(SubnetId(1)).expect("blue").clone();
        for (flag, sender) in [(false, GW_BLUE), (true, Ipv4Addr::UNSPECIFIED)] {
            shared.shared_gateway = flag;
            let mut local = bench.local.borrow_mut();
            local.out.generated.clear();
            let ctx = bench.ctx(0);
            assert!(request(
                &ctx,
                &mut local.out,
                Link::Subnet(&shared),
                IP_B,
                None
            ));
            let generated = local.out.generated.frame(0).expect("a request").to_vec();
            let arp = VNET_HDR_LEN + 14;
            assert_eq!(generated[arp + 7], 1, "a request");
            assert_eq!(
                &generated[arp + 8..arp + 14],
                &GW_BLUE_MAC,
                "from the gateway MAC"
            );
            assert_eq!(
                &generated[arp + 14..arp + 18],
                &sender.octets(),
                "shared: {flag}"
            );
        }
        bench.neighbors.resolve(SubnetId(1), IP_B, 0);
        let reply = reply_from_b(Ipv4Addr::UNSPECIFIED);
        assert_eq!(bench.send(2, &reply, 10).verdict, Verdict::Consumed);
        assert_eq!(bench.neighbors.lookup(SubnetId(1), IP_B), Some(MAC_B));
        assert!(bench.local.borrow().out.neighbor_resolved);
    }

    #[test]
    fn other_arp_refreshes_known_neighbours_only() {
        let bench = Bench::new();
        // Port 1 asks for port 2 (not the gateway): switched, and port 1 is not learned...
        assert_eq!(bench.send(1, &ARP_REQUEST, 0).verdict, Verdict::Flood);
        assert!(bench.neighbors.is_empty());
        // ... unless it is already a neighbour, which it refreshes.
        bench.neighbors.confirm(SubnetId(1), IP_A, MAC_A, 0, true);
        let later = crate::tables::neigh::REACHABLE_MS + 5;
        assert_eq!(
            bench.neighbors.state(SubnetId(1), IP_A, later),
            Some(NeighborState::Stale)
        );
        bench.send(1, &ARP_REQUEST, later);
        assert_eq!(
            bench.neighbors.state(SubnetId(1), IP_A, later),
            Some(NeighborState::Reachable)
        );
    }

    #[test]
    fn requests_and_announcements() {
        let bench = Bench::new();
        let blue = bench.snapshot.subnet(SubnetId(1)).unwrap();
        let mut local = bench.local.borrow_mut();
        let ctx = bench.ctx(0);
        assert!(request(
            &ctx,
            &mut local.out,
            Link::Subnet(blue),
            IP_B,
            None
        ));
        assert!(announce(&mut local.out, blue, PortId(3)));
        // Unicast to a MAC learned on port 2.
        bench.fdb.learn(blue, MAC_B, PortId(2), 0);
        assert!(request(
            &ctx,
            &mut local.out,
            Link::Subnet(blue),
            IP_B,
            Some(MAC_B)
        ));
        drop(local);
        let generated = bench.generated();
        assert_eq!(
            generated.iter().map(|g| g.0).collect::<Vec<_>>(),
            vec![
                Verdict::FloodSubnet {
                    subnet: SubnetId(1),
                    except: None
                },
                Verdict::Forward(PortId(3)),
                Verdict::Forward(PortId(2)),
            ]
        );
        let request_bytes: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0xee, 0x01, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, //
            0x02, 0x00, 0x00, 0x00, 0xee, 0x01, 172, 30, 0, 1, //
            0, 0, 0, 0, 0, 0, 172, 30, 0, 3,
        ];
        assert_eq!(&generated[0].2[VNET_HDR_LEN..], &request_bytes[..]);
        // The announcement: sender and target address are both the gateway.
        let garp = &generated[1].2[VNET_HDR_LEN..];
        assert_eq!(&garp[..6], &[0xff; 6]);
        assert_eq!(&garp[28..32], &GW_BLUE.octets());
        assert_eq!(&garp[38..42], &GW_BLUE.octets());
        // The unicast request goes to the neighbour's MAC.
        assert_eq!(&generated[2].2[VNET_HDR_LEN..VNET_HDR_LEN + 6], &MAC_B);
        assert_eq!(
            bench.local.borrow().out.events.get(Event::ArpRequestsSent),
            2
        );
    }
}
