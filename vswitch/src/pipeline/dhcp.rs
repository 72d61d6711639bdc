//! Stage `dhcp`: the switch is the DHCPv4 server of the Subnets that ask for it, answering
//! from the datapath as OVN's `put_dhcp_opts` does: no server process, no relay.
//!
//! Only frames from a port of a Subnet with [`SubnetEntry::dhcp`] come here, after port
//! security (the Ethernet source is the port's MAC; the IPv4 source is the port's address,
//! or 0.0.0.0 from UDP 68 to 67).
//!
//! - A client message (UDP 68 -> 67) is the switch's, whatever its IP destination: it is
//!   parsed (a malformed one is dropped as `dhcp.malformed`, one longer than
//!   [`MAX_MESSAGE_LEN`] or fragmented as `dhcp.oversized`), its `chaddr` must be the port's
//!   MAC (`dhcp.chaddr`), and relayed messages are not served (`dhcp.relayed`). The lease is
//!   the port's IPAM address: the switch never picks another.
//! - DHCPDISCOVER gets a DHCPOFFER; DHCPREQUEST a DHCPACK when the address it asks for (the
//!   requested-IP option, or `ciaddr` while renewing) is the port's, a DHCPNAK otherwise; a
//!   DHCPREQUEST that selected another server is ignored (RFC 2131 section 4.3.2); DHCPINFORM
//!   a DHCPACK without lease; DHCPRELEASE and DHCPDECLINE are consumed (the address stays the
//!   port's: IPAM, not DHCP, owns it).
//! - Answers come from the gateway (its MAC, its address, UDP 67 -> 68), to the port only:
//!   unicast to `ciaddr` when the client has one, broadcast when the client asks for it
//!   (the BROADCAST flag) or for a DHCPNAK, otherwise to the offered address and the client's
//!   MAC (section 4.1).
//! - A port that sends server messages (UDP 67 -> 68) into such a Subnet is dropped as
//!   `dhcp.rogue_server` (DHCP snooping's "untrusted port").

use std::net::Ipv4Addr;

use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, ETHERNET_HEADER_LEN, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol, Ipv4Packet,
    UDP_HEADER_LEN, UdpPacket,
};

use super::generated::Origin;
use super::parse::{L3, Parsed};
use super::{Local, Verdict};
use crate::tables::counters::{Event, keyed_enum};
use crate::tables::dhcp::{DhcpServer, MAX_EXTRA_OPTIONS, code};
use crate::tables::snapshot::{PortEntry, SubnetEntry};
use crate::wire::VNET_HDR_LEN;
use crate::wire::ipv4::OwnHeader;

keyed_enum! {
    /// Why `dhcp` dropped a frame.
    pub enum DropReason {
        Malformed = "dhcp.malformed":
            "a DHCP client message that is not a well-formed BOOTREQUEST with a message type (RFC 2131)",
        Oversized = "dhcp.oversized":
            "a DHCP client message longer than 1472 bytes, or fragmented",
        Chaddr = "dhcp.chaddr":
            "a DHCP client message whose client hardware address is not the port's MAC",
        Relayed = "dhcp.relayed":
            "a relayed DHCP message (giaddr set): the switch serves only its own ports",
        NoLease = "dhcp.no_lease":
            "a DHCP client on a port without an IPv4 address to lease",
        RogueServer = "dhcp.rogue_server":
            "a port sent a DHCP server message (UDP 67 -> 68) into a Subnet the switch serves",
        NoBuffer = "dhcp.no_buffer":
            "a DHCP answer was not sent: the worker's buffer for generated frames was full",
    }
}

/// The longest client message served: what fits a 1500-byte IPv4 packet without options.
pub const MAX_MESSAGE_LEN: usize = 1500 - 20 - UDP_HEADER_LEN;

/// The shortest answer sent, padded (the BOOTP minimum).
const MIN_MESSAGE_LEN: usize = 300;

/// The DHCP ports (RFC 2131 section 4.1).
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// TTL of the switch's answers.
const TTL: u8 = 64;

/// The limited broadcast address and MAC.
const BROADCAST_IP: Ipv4Addr = Ipv4Addr::BROADCAST;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// Handles a frame from `ingress` in `subnet`, whose DHCP server is `server`, when it is
/// DHCP: answers it (consumed) or drops it. `None` for everything else.
pub fn intercept(
    server: &DhcpServer,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    frame: &[u8],
    local: &mut Local,
) -> Option<Verdict> {
    let L3::Ipv4 {
        protocol: IpProtocol::Udp,
        dhcp_client,
        ..
    } = parsed.l3
    else {
        return None;
    };
    let ip = Ipv4Packet::new_checked(frame.get(VNET_HDR_LEN + ETHERNET_HEADER_LEN..)?).ok()?;
    if !dhcp_client {
        let from_server = ip.frag_offset() == 0
            && UdpPacket::new_checked(ip.payload())
                .is_ok_and(|u| u.src_port() == SERVER_PORT && u.dst_port() == CLIENT_PORT);
        return from_server.then_some(Verdict::drop(DropReason::RogueServer));
    }
    Some(match serve(server, ingress, subnet, parsed, &ip, local) {
        Ok(verdict) => verdict,
        Err(reason) => Verdict::drop(reason),
    })
}

/// What a client message asks for, once checked.
enum Answer {
    /// DHCPOFFER or DHCPACK of the port's address (with the lease unless `inform`).
    Lease { kind: DhcpMessageType, inform: bool },
    /// DHCPNAK: the client asked for an address that is not its own.
    Nak,
    /// Nothing to send (DHCPRELEASE, DHCPDECLINE, a DHCPREQUEST for another server).
    Silent,
}

fn serve(
    server: &DhcpServer,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &Parsed,
    ip: &Ipv4Packet<&[u8]>,
    local: &mut Local,
) -> Result<Verdict, DropReason> {
    if ip.more_frags() {
        return Err(DropReason::Oversized);
    }
    let udp = UdpPacket::new_checked(ip.payload()).map_err(|_| DropReason::Malformed)?;
    let message = udp.payload();
    if message.len() > MAX_MESSAGE_LEN {
        return Err(DropReason::Oversized);
    }
    let packet = DhcpPacket::new_checked(message).map_err(|_| DropReason::Malformed)?;
    if packet.opcode() != smoltcp::wire::DhcpOpCode::Request {
        return Err(DropReason::Malformed);
    }
    let request = DhcpRepr::parse(&packet).map_err(|_| DropReason::Malformed)?;
    if request.client_hardware_address != EthernetAddress(ingress.mac) {
        return Err(DropReason::Chaddr);
    }
    if !request.relay_agent_ip.is_unspecified() {
        return Err(DropReason::Relayed);
    }
    let lease = *ingress.ips.first().ok_or(DropReason::NoLease)?;
    let out = &mut local.out;
    let answer = match request.message_type {
        DhcpMessageType::Discover => Answer::Lease {
            kind: DhcpMessageType::Offer,
            inform: false,
        },
        DhcpMessageType::Request => {
            let selected_other = request
                .server_identifier
                .is_some_and(|id| id != subnet.gateway);
            // SELECTING and INIT-REBOOT name the address in the option; RENEWING and
            // REBINDING in ciaddr.
            let asked = request.requested_ip.unwrap_or(request.client_ip);
            if selected_other {
                Answer::Silent
            } else if asked == lease {
                Answer::Lease {
                    kind: DhcpMessageType::Ack,
                    inform: false,
                }
            } else {
                Answer::Nak
            }
        }
        DhcpMessageType::Inform => Answer::Lease {
            kind: DhcpMessageType::Ack,
            inform: true,
        },
        DhcpMessageType::Release => {
            out.events.add(Event::DhcpReleased);
            Answer::Silent
        }
        DhcpMessageType::Decline => {
            out.events.add(Event::DhcpDeclined);
            Answer::Silent
        }
        // Server messages from a client port, or unknown types.
        _ => return Err(DropReason::Malformed),
    };
    let (kind, your_ip, inform) = match answer {
        Answer::Silent => return Ok(Verdict::Consumed),
        Answer::Nak => (DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED, false),
        Answer::Lease { kind, inform } => (
            kind,
            if inform { Ipv4Addr::UNSPECIFIED } else { lease },
            inform,
        ),
    };
    let nak = kind == DhcpMessageType::Nak;
    let mask = subnet.cidr.netmask();
    let mut dns = heapless::Vec::<Ipv4Addr, 3>::new();
    for server in server.dns.iter().take(3) {
        let _ = dns.push(*server);
    }
    let mtu = ingress.mtu.to_be_bytes();
    let mut extra = [DhcpOption {
        kind: code::MTU,
        data: &mtu,
    }; MAX_EXTRA_OPTIONS + 1];
    let mut extra_len = 0;
    if !nak {
        extra_len = 1;
        for (slot, option) in extra[1..].iter_mut().zip(&server.extra) {
            *slot = DhcpOption {
                kind: option.code,
                data: &option.value,
            };
            extra_len += 1;
        }
    }
    let lease_time = !nak && !inform;
    let reply = DhcpRepr {
        message_type: kind,
        transaction_id: request.transaction_id,
        secs: 0,
        client_hardware_address: request.client_hardware_address,
        client_ip: if nak {
            Ipv4Addr::UNSPECIFIED
        } else {
            request.client_ip
        },
        your_ip,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: (!nak).then_some(subnet.gateway),
        subnet_mask: (!nak).then_some(mask),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: request.broadcast,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(subnet.gateway),
        parameter_request_list: None,
        dns_servers: (!nak && !dns.is_empty()).then_some(dns),
        max_size: None,
        lease_duration: lease_time.then_some(server.lease_seconds),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &extra[..extra_len],
    };
    // Where the answer goes (RFC 2131 section 4.1).
    let (dst_ip, dst_mac) = if nak || request.broadcast {
        (BROADCAST_IP, BROADCAST_MAC)
    } else if !request.client_ip.is_unspecified() {
        (request.client_ip, parsed.src_mac)
    } else {
        (your_ip, parsed.src_mac)
    };
    if !emit(
        out,
        ingress,
        subnet,
        &reply,
        dst_ip,
        dst_mac,
        ip.dscp() << 2,
    ) {
        return Err(DropReason::NoBuffer);
    }
    out.events.add(match kind {
        DhcpMessageType::Offer => Event::DhcpOffered,
        DhcpMessageType::Nak => Event::DhcpNaked,
        _ => Event::DhcpAcked,
    });
    Ok(Verdict::Consumed)
}

/// Writes the answer into the worker's generated frames, to `ingress`.
fn emit(
    out: &mut super::Output,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    reply: &DhcpRepr<'_>,
    dst_ip: Ipv4Addr,
    dst_mac: [u8; 6],
    tos: u8,
) -> bool {
    // BOOTP relays and old clients expect at least 300 bytes (RFC 1542 section 2.1);
    // the rest after the end option is padding.
    let message_len = reply.buffer_len().max(MIN_MESSAGE_LEN);
    let udp_len = UDP_HEADER_LEN + message_len;
    let header = OwnHeader {
        src: subnet.gateway,
        dst: dst_ip,
        protocol: IpProtocol::Udp,
        payload_len: udp_len,
        ident: out.next_ident(),
        tos,
        ttl: TTL,
    };
    let len = ETHERNET_HEADER_LEN + header.buffer_len();
    let Some(buf) = out
        .generated
        .push_ethernet(len, Verdict::Forward(ingress.id), Origin::Switch)
    else {
        return false;
    };
    let (ethernet, packet) = buf.split_at_mut(ETHERNET_HEADER_LEN);
    EthernetRepr {
        src_addr: EthernetAddress(subnet.gateway_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(ethernet));
    if !header.emit(packet) {
        out.generated.pop();
        return false;
    }
    let datagram = &mut packet[OwnHeader::LEN..];
    let (_, message) = datagram.split_at_mut(UDP_HEADER_LEN);
    message.fill(0);
    if reply
        .emit(&mut DhcpPacket::new_unchecked(&mut message[..]))
        .is_err()
    {
        out.generated.pop();
        return false;
    }
    let mut udp = UdpPacket::new_unchecked(datagram);
    udp.set_src_port(SERVER_PORT);
    udp.set_dst_port(CLIENT_PORT);
    udp.set_len(u16::try_from(udp_len).unwrap_or(u16::MAX));
    udp.fill_checksum(&IpAddress::Ipv4(subnet.gateway), &IpAddress::Ipv4(dst_ip));
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipeline::fixtures::*;
    use crate::pipeline::{DropCause, Outcome};
    use crate::tables::dhcp::DhcpSettings;
    use crate::tables::snapshot::Snapshot;

    /// The fixture snapshot with DHCP on subnet `blue` (172.30.0.0/16, gateway 172.30.0.1).
    fn bench() -> Bench {
        let base = snapshot();
        let mut subnets = base.subnets().to_vec();
        subnets[0].dhcp = Some(Arc::new(DhcpServer::new(&DhcpSettings {
            lease_seconds: 600,
            cidr: subnets[0].cidr,
            gateway: subnets[0].gateway,
            dns: &[Ipv4Addr::new(172, 30, 0, 53)],
            search: &["svc.example".into()],
            routes: &[(
                "10.200.0.0/16".parse().unwrap(),
                Ipv4Addr::new(172, 30, 0, 254),
            )],
        })));
        Bench::with(Snapshot::new(base.ports().to_vec(), subnets))
    }

    /// A client message of `kind` from port 1 (MAC_A), from `src` to `dst`.
    fn client(
        kind: DhcpMessageType,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ciaddr: Ipv4Addr,
        requested: Option<Ipv4Addr>,
        server: Option<Ipv4Addr>,
    ) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: 0x1234_5678,
            secs: 0,
            client_hardware_address: EthernetAddress(MAC_A),
            client_ip: ciaddr,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: Some(EthernetAddress(MAC_A)),
            server_identifier: server,
            parameter_request_list: Some(&[1, 3, 6, 15, 26, 119, 121]),
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut message = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut message[..]))
            .unwrap();
        let dst_mac = if dst == BROADCAST_IP {
            BROADCAST_MAC
        } else {
            GW_BLUE_MAC
        };
        udp_frame(
            MAC_A,
            dst_mac,
            (src, CLIENT_PORT),
            (dst, SERVER_PORT),
            64,
            false,
            &message,
        )
    }

    fn discover() -> Vec<u8> {
        client(
            DhcpMessageType::Discover,
            Ipv4Addr::UNSPECIFIED,
            BROADCAST_IP,
            Ipv4Addr::UNSPECIFIED,
            None,
            None,
        )
    }

    /// The one answer generated: its Ethernet destination, IPv4 destination and DHCP repr
    /// fields that matter, and the raw options.
    fn answer(
        bench: &Bench,
    ) -> (
        Verdict,
        [u8; 6],
        Ipv4Addr,
        DhcpMessageType,
        Ipv4Addr,
        Vec<u8>,
    ) {
        let generated = bench.generated();
        assert_eq!(generated.len(), 1, "one answer");
        let (verdict, _, bytes) = &generated[0];
        let ethernet = &bytes[VNET_HDR_LEN..];
        let dst_mac: [u8; 6] = ethernet[..6].try_into().unwrap();
        let ip = Ipv4Packet::new_checked(&ethernet[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.src_addr(), GW_BLUE);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!((udp.src_port(), udp.dst_port()), (SERVER_PORT, CLIENT_PORT));
        assert!(udp.payload().len() >= MIN_MESSAGE_LEN);
        let packet = DhcpPacket::new_checked(udp.payload()).unwrap();
        let repr = DhcpRepr::parse(&packet).unwrap();
        assert_eq!(repr.transaction_id, 0x1234_5678);
        assert_eq!(repr.server_identifier, Some(GW_BLUE));
        let options = udp.payload()[240..].to_vec();
        (
            *verdict,
            dst_mac,
            ip.dst_addr(),
            repr.message_type,
            repr.your_ip,
            options,
        )
    }

    /// Option `code`'s value in `options` (a raw option area).
    fn option(options: &[u8], code: u8) -> Option<Vec<u8>> {
        let mut i = 0;
        while i < options.len() {
            match options[i] {
                0 => i += 1,
                255 => return None,
                c => {
                    let len = usize::from(*options.get(i + 1)?);
                    let value = options.get(i + 2..i + 2 + len)?;
                    if c == code {
                        return Some(value.to_vec());
                    }
                    i += 2 + len;
                }
            }
        }
        None
    }

    #[test]
    fn discover_gets_an_offer_of_the_ports_address_with_every_option() {
        let bench = bench();
        let outcome = bench.send(1, &discover(), 0);
        assert_eq!(outcome.verdict, Verdict::Consumed);
        let (verdict, dst_mac, dst_ip, kind, yiaddr, options) = answer(&bench);
        assert_eq!(verdict, Verdict::Forward(crate::port::PortId(1)));
        assert_eq!(kind, DhcpMessageType::Offer);
        assert_eq!(yiaddr, IP_A);
        // Unicast to the offered address and the client's MAC.
        assert_eq!((dst_mac, dst_ip), (MAC_A, IP_A));
        assert_eq!(option(&options, 1), Some(vec![255, 255, 0, 0]));
        assert_eq!(option(&options, 3), Some(GW_BLUE.octets().to_vec()));
        assert_eq!(option(&options, 6), Some(vec![172, 30, 0, 53]));
        assert_eq!(option(&options, 51), Some(600u32.to_be_bytes().to_vec()));
        assert_eq!(option(&options, 58), Some(300u32.to_be_bytes().to_vec()));
        assert_eq!(option(&options, 26), Some(1500u16.to_be_bytes().to_vec()));
        assert_eq!(option(&options, 15), Some(b"svc.example".to_vec()));
        assert_eq!(
            option(&options, 121),
            Some(vec![16, 10, 200, 172, 30, 0, 254, 0, 172, 30, 0, 1])
        );
        assert_eq!(bench.local.borrow().out.events.get(Event::DhcpOffered), 1);
    }

    #[test]
    fn request_for_the_ports_address_is_acked_and_others_are_naked() {
        let bench = bench();
        let request = client(
            DhcpMessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            BROADCAST_IP,
            Ipv4Addr::UNSPECIFIED,
            Some(IP_A),
            Some(GW_BLUE),
        );
        assert_eq!(bench.send(1, &request, 0).verdict, Verdict::Consumed);
        let (_, _, _, kind, yiaddr, _) = answer(&bench);
        assert_eq!((kind, yiaddr), (DhcpMessageType::Ack, IP_A));

        let wrong = client(
            DhcpMessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            BROADCAST_IP,
            Ipv4Addr::UNSPECIFIED,
            Some(Ipv4Addr::new(172, 30, 9, 9)),
            None,
        );
        bench.send(1, &wrong, 0);
        let (_, dst_mac, dst_ip, kind, _, options) = answer(&bench);
        assert_eq!(kind, DhcpMessageType::Nak);
        assert_eq!((dst_mac, dst_ip), (BROADCAST_MAC, BROADCAST_IP));
        assert_eq!(option(&options, 51), None);

        // A renewal, unicast from the leased address to the server, is answered to it.
        let renew = client(DhcpMessageType::Request, IP_A, GW_BLUE, IP_A, None, None);
        assert_eq!(bench.send(1, &renew, 0).verdict, Verdict::Consumed);
        let (_, dst_mac, dst_ip, kind, _, _) = answer(&bench);
        assert_eq!((kind, dst_mac, dst_ip), (DhcpMessageType::Ack, MAC_A, IP_A));

        // Another server was selected: nothing is sent.
        let other = client(
            DhcpMessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            BROADCAST_IP,
            Ipv4Addr::UNSPECIFIED,
            Some(IP_A),
            Some(Ipv4Addr::new(172, 30, 0, 99)),
        );
        assert_eq!(bench.send(1, &other, 0).verdict, Verdict::Consumed);
        assert!(bench.generated().is_empty());
    }

    #[test]
    fn release_and_decline_are_consumed_silently() {
        let bench = bench();
        for kind in [DhcpMessageType::Release, DhcpMessageType::Decline] {
            let message = client(kind, IP_A, GW_BLUE, IP_A, None, Some(GW_BLUE));
            assert_eq!(bench.send(1, &message, 0).verdict, Verdict::Consumed);
            assert!(bench.generated().is_empty());
        }
    }

    fn dropped(outcome: Outcome) -> Option<&'static str> {
        match outcome.verdict {
            Verdict::Drop(cause) => Some(DropCause::key(cause)),
            _ => None,
        }
    }

    #[test]
    fn bad_client_messages_are_dropped_with_their_reason() {
        let bench = bench();
        let good = discover();
        // Offsets from the Ethernet header, as `with_byte` takes them.
        let dhcp = 14 + 20 + 8;
        // Not a BOOTREQUEST.
        let reply_op = with_byte(&good, dhcp, 2);
        assert_eq!(dropped(bench.send(1, &reply_op, 0)), Some("dhcp.malformed"));
        // Cut short of the fixed header.
        let mut short = udp_frame(
            MAC_A,
            BROADCAST_MAC,
            (Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
            (BROADCAST_IP, SERVER_PORT),
            64,
            false,
            &[1, 1, 6, 0],
        );
        assert_eq!(dropped(bench.send(1, &short, 0)), Some("dhcp.malformed"));
        // No message type option (the first option becomes padding).
        short = with_byte(&good, dhcp + 240, 0);
        assert_eq!(dropped(bench.send(1, &short, 0)), Some("dhcp.malformed"));
        // Too long.
        let long = udp_frame(
            MAC_A,
            BROADCAST_MAC,
            (Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
            (BROADCAST_IP, SERVER_PORT),
            64,
            false,
            &vec![0u8; MAX_MESSAGE_LEN + 1],
        );
        assert_eq!(dropped(bench.send(1, &long, 0)), Some("dhcp.oversized"));
        // The first fragment of a fragmented message (MF set; its UDP length is the whole
        // datagram's, longer than the fragment).
        let mut first = with_byte(&good, 14 + 6, 0x20);
        let udp_len = 14 + 20 + 4;
        first = with_byte(&with_byte(&first, udp_len, 0x0b), udp_len + 1, 0xb8);
        assert_eq!(dropped(bench.send(1, &first, 0)), Some("dhcp.oversized"));
        // Another MAC in chaddr.
        let chaddr = with_byte(&good, dhcp + 28 + 5, 0x77);
        let chaddr = refill_udp_checksum(chaddr);
        assert_eq!(dropped(bench.send(1, &chaddr, 0)), Some("dhcp.chaddr"));
        // Relayed.
        let relayed = refill_udp_checksum(with_byte(&good, dhcp + 24, 10));
        assert_eq!(dropped(bench.send(1, &relayed, 0)), Some("dhcp.relayed"));
        assert!(bench.generated().is_empty());
    }

    fn refill_udp_checksum(mut frame: Vec<u8>) -> Vec<u8> {
        let ip_start = VNET_HDR_LEN + 14;
        let (src, dst) = {
            let ip = Ipv4Packet::new_checked(&frame[ip_start..]).unwrap();
            (ip.src_addr(), ip.dst_addr())
        };
        UdpPacket::new_unchecked(&mut frame[ip_start + 20..])
            .fill_checksum(&src.into(), &dst.into());
        frame
    }

    #[test]
    fn a_port_answering_as_a_server_is_dropped() {
        let bench = bench();
        let offer = udp_frame(
            MAC_A,
            BROADCAST_MAC,
            (IP_A, SERVER_PORT),
            (BROADCAST_IP, CLIENT_PORT),
            64,
            false,
            &[2; 300],
        );
        assert_eq!(dropped(bench.send(1, &offer, 0)), Some("dhcp.rogue_server"));
        // Other UDP is not the stage's business.
        let other = udp_frame(MAC_A, MAC_B, (IP_A, 5000), (IP_B, 53), 64, false, &[0; 16]);
        assert_eq!(dropped(bench.send(1, &other, 0)), None);
    }

    proptest::proptest! {
        /// Whatever a client sends, the stage answers or drops it, never panics; a message
        /// with a valid fixed header and cookie exercises the option parser.
        #[test]
        fn arbitrary_client_messages_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1600),
            header in proptest::prelude::any::<bool>(),
        ) {
            let bench = bench();
            let mut message = body;
            if header && message.len() >= 240 {
                message[..4].copy_from_slice(&[1, 1, 6, 0]);
                message[28..34].copy_from_slice(&MAC_A);
                message[236..240].copy_from_slice(&[0x63, 0x82, 0x53, 0x63]);
            }
            let frame = udp_frame(
                MAC_A,
                BROADCAST_MAC,
                (Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
                (BROADCAST_IP, SERVER_PORT),
                64,
                false,
                &message,
            );
            let outcome = bench.send(1, &frame, 0);
            proptest::prop_assert!(matches!(outcome.verdict, Verdict::Consumed | Verdict::Drop(_)));
        }
    }

    #[test]
    fn a_traced_discover_names_the_dhcp_server() {
        use crate::pipeline::trace::Step;
        let bench = bench();
        let entry = bench.snapshot.port(crate::port::PortId(1)).unwrap();
        let ingress = crate::tables::snapshot::Ingress::Port(entry, entry.io().expect("a device"));
        let record = crate::trace::run_synthetic(&bench.ctx(5), ingress, discover());
        let detail = record
            .steps
            .iter()
            .find(|step| step.stage == Step::Dhcp)
            .map(|step| step.detail.clone())
            .unwrap_or_else(|| panic!("no dhcp step in {record}"));
        assert!(detail.contains("lease 600 s): answered"), "{detail}");
        // A dry run counts nothing.
        assert_eq!(bench.local.borrow().out.events.get(Event::DhcpOffered), 0);
    }

    #[test]
    fn without_dhcp_the_subnet_switches_dhcp_like_any_udp() {
        let bench = Bench::new();
        let outcome = bench.send(1, &discover(), 0);
        assert_eq!(outcome.verdict, Verdict::Flood);
        assert!(bench.generated().is_empty());
    }
}
