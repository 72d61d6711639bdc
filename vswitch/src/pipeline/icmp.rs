//! Stage `icmp` (part of [`l3`](super::l3), whose drop reasons it uses): the ICMP the
//! switch originates.
//!
//! - **To a gateway address** (the router's own): an echo request gets an echo reply from the
//!   address it was sent to (RFC 1122 3.2.2.6: same data, identifier and sequence), back to
//!   the ingress port. UDP gets "port unreachable" and other protocols but TCP "protocol
//!   unreachable", as a host without listeners answers (so traceroute to a gateway ends);
//!   everything to a gateway but echo requests is dropped as `l3.to_gateway`. ICMP to a
//!   gateway is limited per port and worker (a token bucket, [`ECHO_BURST`](super::ECHO_BURST)
//!   at once, [`ECHO_PER_SECOND`](super::ECHO_PER_SECOND) on average): beyond it, it is
//!   dropped as `l3.echo_rate_limited`.
//! - **Errors** ([`send_error`]): as a router sends them (see [`crate::wire::icmp_error`]):
//!   never about ICMP errors, non-first fragments, broadcast or multicast, or sources that
//!   are not a single host (nor the subnet's broadcast address); sourced from the gateway of
//!   the sender's subnet; sent back to the port the packet came from; limited by the worker's
//!   token bucket (over the limit: event `l3.icmp_rate_limited`). A packet that came in on
//!   the uplink gets its errors from the uplink address it was sent to, back out of the
//!   uplink ([`ErrorPath::uplink`]).
//! - **Echo requests to an uplink address** that is not a virtual IP are answered the same
//!   way ([`echo_reply`]), from that address.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use smoltcp::wire::{
    ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet,
};

use super::generated::Origin;
use super::l3::{DropReason, ip_bounds};
use super::parse::Parsed;
use super::{Output, Verdict};
use crate::port::PortId;
use crate::tables::counters::Event;
use crate::tables::fdb::is_group;
use crate::tables::snapshot::{PortEntry, SubnetEntry, UplinkEntry};
use crate::wire::icmp_error::{self, DEFAULT_TTL, Kind, Repr};
use crate::wire::ipv4::OwnHeader;

/// Where the ICMP errors about a packet go, and which of the switch's addresses sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPath {
    /// The port (or uplink) the packet came from: errors go back there.
    pub to: PortId,
    /// The MAC the packet came from: the errors' destination MAC.
    pub sender_mac: [u8; 6],
    /// The switch's address the errors come from.
    pub source: Ipv4Addr,
    /// The switch's MAC on that link.
    pub source_mac: [u8; 6],
    /// The sender's subnet, when it is one (its broadcast address is not a host and gets no
    /// error).
    pub cidr: Option<Ipv4Net>,
}

impl ErrorPath {
    /// Errors about a packet from port `to` of `subnet`: from the subnet's gateway.
    pub fn subnet(to: PortId, sender_mac: [u8; 6], subnet: &SubnetEntry) -> ErrorPath {
        ErrorPath {
            to,
            sender_mac,
            source: subnet.gateway,
            source_mac: subnet.gateway_mac,
            cidr: Some(subnet.cidr),
        }
    }

    /// Errors about a packet received on the uplink for `address` (one of the switch's
    /// addresses there): from that address, back to the neighbour that sent it.
    pub fn uplink(uplink: &UplinkEntry, sender_mac: [u8; 6], address: Ipv4Addr) -> ErrorPath {
        ErrorPath {
            to: uplink.id,
            sender_mac,
            source: address,
            source_mac: uplink.mac,
            cidr: None,
        }
    }
}

/// Handles an IPv4 packet from `ingress` (in `subnet`) addressed to `address`, one of the
/// switch's gateway addresses. `frame` is the whole received frame.
pub fn to_gateway(
    now_ms: u64,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &[u8],
    out: &mut Output,
    address: Ipv4Addr,
) -> Verdict {
    let Some((start, end)) = ip_bounds(frame) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let original = &frame[start..end];
    let Ok(ip) = Ipv4Packet::new_checked(original) else {
        return Verdict::drop(DropReason::NotIpv4);
    };
    let fragment = ip.more_frags() || ip.frag_offset() != 0;
    // `send_error` itself says nothing about non-first fragments.
    let unreachable = |kind: Kind, out: &mut Output| {
        send_error(
            out,
            now_ms,
            kind,
            subnet,
            ingress.id,
            parsed.src_mac,
            original,
        );
        Verdict::drop(DropReason::ToGateway)
    };
    match ip.next_header() {
        IpProtocol::Icmp if !fragment && !out.echo_limiter.allow(ingress.id, now_ms) => {
            Verdict::drop(DropReason::EchoRateLimited)
        }
        IpProtocol::Icmp if !fragment => echo_reply(
            out,
            ingress.id,
            parsed.src_mac,
            subnet.gateway_mac,
            &ip,
            address,
        ),
        // A fragmented echo request would need reassembly: not served.
        IpProtocol::Icmp | IpProtocol::Tcp => Verdict::drop(DropReason::ToGateway),
        IpProtocol::Udp => unreachable(Kind::PortUnreachable, out),
        _ => unreachable(Kind::ProtocolUnreachable, out),
    }
}

/// Answers an echo request `ip` sent to the switch's `address`: the reply goes to port `to`,
/// from `src_mac` to `dst_mac` (other ICMP is dropped as `l3.to_gateway`, a bad checksum as
/// `l3.bad_checksum`).
pub fn echo_reply(
    out: &mut Output,
    to: PortId,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    ip: &Ipv4Packet<&[u8]>,
    address: Ipv4Addr,
) -> Verdict {
    let message = ip.payload();
    let Ok(request) = Icmpv4Packet::new_checked(message) else {
        return Verdict::drop(DropReason::ToGateway);
    };
    if request.msg_type() != Icmpv4Message::EchoRequest {
        return Verdict::drop(DropReason::ToGateway);
    }
    if !request.verify_checksum() {
        return Verdict::drop(DropReason::BadChecksum);
    }
    let header = OwnHeader {
        src: address,
        dst: ip.src_addr(),
        protocol: IpProtocol::Icmp,
        payload_len: message.len(),
        ident: out.next_ident(),
        tos: ip.dscp() << 2 | ip.ecn(),
        ttl: DEFAULT_TTL,
    };
    let len = ETHERNET_HEADER_LEN + header.buffer_len();
    let Some(buf) = out
        .generated
        .push_ethernet(len, Verdict::Forward(to), Origin::Switch)
    else {
        return Verdict::drop(DropReason::NoBuffer);
    };
    let (ethernet, packet) = buf.split_at_mut(ETHERNET_HEADER_LEN);
    emit_ethernet(ethernet, dst_mac, src_mac);
    if !header.emit(packet) {
        out.generated.pop();
        return Verdict::drop(DropReason::NoBuffer);
    }
    let reply = &mut packet[OwnHeader::LEN..];
    reply.copy_from_slice(message);
    let mut icmp = Icmpv4Packet::new_unchecked(reply);
    icmp.set_msg_type(Icmpv4Message::EchoReply);
    icmp.set_msg_code(0);
    icmp.fill_checksum();
    out.events.add(Event::EchoReplied);
    Verdict::Consumed
}

/// Writes an IPv4 Ethernet header.
fn emit_ethernet(buf: &mut [u8], dst_mac: [u8; 6], src_mac: [u8; 6]) {
    EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(buf));
}

/// Sends the ICMP error `kind` about `original` (the datagram from its IP header to its
/// total length, as received from `sender_mac` on port `to` of `subnet`), from `subnet`'s
/// gateway, unless the suppression rules or the rate limit forbid it. Returns whether it was
/// sent.
pub fn send_error(
    out: &mut Output,
    now_ms: u64,
    kind: Kind,
    subnet: &SubnetEntry,
    to: PortId,
    sender_mac: [u8; 6],
    original: &[u8],
) -> bool {
    let path = ErrorPath::subnet(to, sender_mac, subnet);
    send_error_via(out, now_ms, kind, &path, original)
}

/// [`send_error`] along any [`ErrorPath`] (a subnet's, or the uplink's).
pub fn send_error_via(
    out: &mut Output,
    now_ms: u64,
    kind: Kind,
    path: &ErrorPath,
    original: &[u8],
) -> bool {
    if !icmp_error::may_send_error(original, is_group(path.sender_mac)) {
        return false;
    }
    let Ok(ip) = Ipv4Packet::new_checked(original) else {
        return false;
    };
    // The subnet-directed broadcast is not a single host either (RFC 1812 4.3.2.7).
    let directed_broadcast = path
        .cidr
        .is_some_and(|cidr| cidr.prefix_len() < 31 && ip.src_addr() == cidr.broadcast());
    if directed_broadcast {
        return false;
    }
    if !out.icmp_limiter.allow(now_ms) {
        out.events.add(Event::IcmpRateLimited);
        return false;
    }
    let ident = out.next_ident();
    let Some(repr) = Repr::about(kind, path.source, ident, original) else {
        return false;
    };
    let len = ETHERNET_HEADER_LEN + Repr::buffer_len(original.len());
    let Some(buf) = out
        .generated
        .push_ethernet(len, Verdict::Forward(path.to), Origin::Switch)
    else {
        return false;
    };
    let (ethernet, packet) = buf.split_at_mut(ETHERNET_HEADER_LEN);
    emit_ethernet(ethernet, path.sender_mac, path.source_mac);
    if repr.emit(original, packet).is_none() {
        out.generated.pop();
        return false;
    }
    out.events.add(Event::IcmpSent);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::{DropCause, Local};
    use crate::wire::{VNET_HDR_LEN, checksum};

    /// An echo request from port 1 to `dst` through the blue gateway MAC.
    fn echo_to(dst: Ipv4Addr) -> Vec<u8> {
        let payload = [8, 0, 0, 0, 0x12, 0x34, 0x00, 0x07, b'p', b'i', b'n', b'g'];
        let mut frame = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            dst,
            64,
            IpProtocol::Icmp,
            true,
            &payload,
        );
        let icmp = VNET_HDR_LEN + 34;
        let sum = checksum::checksum(&frame[icmp..]);
        frame[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
        frame
    }

    #[test]
    fn echo_to_the_gateway_is_rate_limited_per_port() {
        use crate::pipeline::{ECHO_BURST, ECHO_PER_SECOND};
        let bench = Bench::with(routed_snapshot());
        let frame = echo_to(GW_BLUE);
        let answered = (0..ECHO_BURST + 50)
            .filter(|_| bench.send(1, &frame, 1_000).verdict == Verdict::Consumed)
            .count();
        assert_eq!(answered, usize::try_from(ECHO_BURST).expect("small"));
        assert_eq!(
            bench.send(1, &frame, 1_000).verdict,
            Verdict::Drop(DropCause::L3(DropReason::EchoRateLimited))
        );
        assert!(bench.generated().is_empty(), "nothing sent over the limit");
        // One token back after 1/rate seconds.
        let later = 1_000 + 1_000 / ECHO_PER_SECOND;
        assert_eq!(bench.send(1, &frame, later).verdict, Verdict::Consumed);
    }

    #[test]
    fn echo_reply_from_the_gateway() {
        let bench = Bench::with(routed_snapshot());
        let outcome = bench.send(1, &echo_to(GW_BLUE), 0);
        assert_eq!(outcome.verdict, Verdict::Consumed);
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let (verdict, origin, bytes) = &generated[0];
        assert_eq!(*verdict, Verdict::Forward(PortId(1)));
        assert_eq!(*origin, Origin::Switch);
        let mut expected = vec![
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // virtio_net_hdr
            0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x02, 0x00, 0x00, 0x00, 0xee, 0x01, 0x08, 0x00,
            // IPv4: 32 bytes, ident 1 (worker 0's first), no flags, TTL 64, ICMP
            0x45, 0x00, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 172, 30, 0, 1,
            172, 30, 0, 2, //
            // echo reply, same identifier, sequence and data
            0, 0, 0, 0, 0x12, 0x34, 0x00, 0x07, b'p', b'i', b'n', b'g',
        ];
        let ip_sum = checksum::checksum(&expected[24..44]);
        expected[34..36].copy_from_slice(&ip_sum.to_be_bytes());
        let icmp_sum = checksum::checksum(&expected[44..]);
        expected[46..48].copy_from_slice(&icmp_sum.to_be_bytes());
        assert_eq!(bytes, &expected);
    }

    #[test]
    fn a_router_answers_on_all_its_addresses() {
        // The red gateway, asked from blue, through blue's gateway MAC: answered from red's
        // address, back to port 1.
        let bench = Bench::with(routed_snapshot());
        assert_eq!(
            bench.send(1, &echo_to(GW_RED), 0).verdict,
            Verdict::Consumed
        );
        let generated = bench.generated();
        assert_eq!(generated[0].0, Verdict::Forward(PortId(1)));
        let ip = Ipv4Packet::new_checked(&generated[0].2[VNET_HDR_LEN + 14..]).unwrap();
        assert_eq!(ip.src_addr(), GW_RED);
        assert_eq!(ip.dst_addr(), IP_A);
        // Without Networks in the snapshot, the ingress gateway still answers.
        let bench = Bench::new();
        assert_eq!(
            bench.send(1, &echo_to(GW_BLUE), 0).verdict,
            Verdict::Consumed
        );
    }

    #[test]
    fn echo_with_a_bad_checksum_is_dropped() {
        let bench = Bench::with(routed_snapshot());
        let mut frame = echo_to(GW_BLUE);
        let last = frame.len() - 1;
        frame[last] ^= 0xff;
        assert_eq!(
            bench.send(1, &frame, 0).verdict,
            Verdict::Drop(DropCause::L3(DropReason::BadChecksum))
        );
        assert!(bench.generated().is_empty());
    }

    #[test]
    fn udp_to_the_gateway_gets_port_unreachable() {
        let bench = Bench::with(routed_snapshot());
        let udp = [0x9c, 0x40, 0x82, 0x9a, 0x00, 0x08, 0x00, 0x00];
        let frame = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            GW_BLUE,
            64,
            IpProtocol::Udp,
            false,
            &udp,
        );
        assert_eq!(
            bench.send(1, &frame, 0).verdict,
            Verdict::Drop(DropCause::L3(DropReason::ToGateway))
        );
        let generated = bench.generated();
        assert_eq!(generated.len(), 1);
        let icmp = &generated[0].2[VNET_HDR_LEN + 34..];
        assert_eq!((icmp[0], icmp[1]), (3, 3));
        // TCP is dropped silently; other protocols get protocol unreachable.
        let tcp = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            GW_BLUE,
            64,
            IpProtocol::Tcp,
            false,
            &[0; 20],
        );
        bench.send(1, &tcp, 0);
        assert!(bench.generated().is_empty());
        let gre = ipv4_frame(
            MAC_A,
            GW_BLUE_MAC,
            IP_A,
            GW_BLUE,
            64,
            IpProtocol::Unknown(47),
            false,
            &[0; 8],
        );
        bench.send(1, &gre, 0);
        let generated = bench.generated();
        let icmp = &generated[0].2[VNET_HDR_LEN + 34..];
        assert_eq!((icmp[0], icmp[1]), (3, 2));
    }

    #[test]
    fn errors_are_rate_limited() {
        let bench = Bench::with(routed_snapshot());
        let blue = bench
            .snapshot
            .subnet(crate::tables::snapshot::SubnetId(1))
            .unwrap();
        let original = &echo_to(IP_D)[VNET_HDR_LEN + 14..];
        let mut local = Local::new(0);
        let sent = (0..80)
            .filter(|_| {
                local.out.generated.clear();
                send_error(
                    &mut local.out,
                    1_000,
                    Kind::NetUnreachable,
                    blue,
                    PortId(1),
                    MAC_A,
                    original,
                )
            })
            .count();
        assert_eq!(sent, usize::try_from(crate::pipeline::ICMP_BURST).unwrap());
        assert_eq!(local.out.events.get(Event::IcmpRateLimited), 30);
        assert_eq!(local.out.events.get(Event::IcmpSent), 50);
        // 100 per second: 10 ms later, one more.
        local.out.generated.clear();
        assert!(send_error(
            &mut local.out,
            1_010,
            Kind::NetUnreachable,
            blue,
            PortId(1),
            MAC_A,
            original
        ));
    }

    #[test]
    fn errors_are_suppressed_by_the_rules() {
        let bench = Bench::with(routed_snapshot());
        let blue = bench
            .snapshot
            .subnet(crate::tables::snapshot::SubnetId(1))
            .unwrap();
        let mut local = Local::new(0);
        let mut send = |original: &[u8], sender_mac: [u8; 6]| {
            send_error(
                &mut local.out,
                0,
                Kind::NetUnreachable,
                blue,
                PortId(1),
                sender_mac,
                original,
            )
        };
        let frame = echo_to(IP_D);
        let original = &frame[VNET_HDR_LEN + 14..];
        assert!(send(original, MAC_A));
        assert!(
            !send(original, [0x01, 0, 0x5e, 0, 0, 1]),
            "group source MAC"
        );
        // From the subnet's broadcast address.
        let mut from_broadcast = original.to_vec();
        from_broadcast[12..16].copy_from_slice(&[172, 30, 255, 255]);
        assert!(!send(&from_broadcast, MAC_A));
        // About an ICMP error.
        let mut error = original.to_vec();
        error[20] = 11;
        assert!(!send(&error, MAC_A));
    }
}
