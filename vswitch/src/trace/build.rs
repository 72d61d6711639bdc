//! Synthetic frames for the packet tracer: a [`PacketSpec`] emitted with smoltcp's `Repr`s
//! (checksums filled), or raw Ethernet bytes written in hex; both behind a plain
//! `virtio_net_hdr`, as a port delivers them.

use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr,
};

use super::expr::PacketSpec;
use crate::wire::VNET_HDR_LEN;

/// Largest frame accepted in hex: a jumbo frame.
pub const MAX_HEX_FRAME: usize = 9216;

/// Payload of synthetic echo requests and datagrams.
const PAYLOAD: &[u8] = b"vswitch trace";

/// The frame for `spec` from `src_mac` to `dst_mac`, with its `virtio_net_hdr`.
pub fn frame(spec: &PacketSpec, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let ethernet = |ethertype| EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype,
    };
    let checksums = ChecksumCapabilities::default();
    match *spec {
        PacketSpec::Arp { target, sender } => {
            let arp = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                source_hardware_addr: EthernetAddress(src_mac),
                source_protocol_addr: sender,
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: target,
            };
            // Padded to the Ethernet minimum, as a NIC would send it.
            let len = (ethernet_len(arp.buffer_len())).max(60);
            let mut bytes = vec![0u8; VNET_HDR_LEN + len];
            let mut frame = EthernetFrame::new_unchecked(&mut bytes[VNET_HDR_LEN..]);
            ethernet(EthernetProtocol::Arp).emit(&mut frame);
            arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
            bytes
        }
        PacketSpec::Tcp {
            src,
            dst,
            flags,
            ttl,
        } => {
            let control = match flags & 0x07 {
                0x02 => TcpControl::Syn,
                0x01 => TcpControl::Fin,
                0x04 => TcpControl::Rst,
                _ if flags & 0x08 != 0 => TcpControl::Psh,
                _ => TcpControl::None,
            };
            let tcp = TcpRepr {
                src_port: src.1,
                dst_port: dst.1,
                control,
                seq_number: TcpSeqNumber(1000),
                ack_number: (flags & 0x10 != 0).then_some(TcpSeqNumber(1)),
                window_len: 64240,
                window_scale: None,
                max_seg_size: None,
                sack_permitted: false,
                sack_ranges: [None, None, None],
                timestamp: None,
                payload: &[],
            };
            let (mut bytes, l4) = ip(
                src_mac,
                dst_mac,
                (src.0, dst.0),
                IpProtocol::Tcp,
                ttl,
                tcp.buffer_len(),
            );
            // Only the segment: the checksum covers its length, not the Ethernet padding.
            let mut packet = TcpPacket::new_unchecked(&mut bytes[l4..l4 + tcp.buffer_len()]);
            tcp.emit(
                &mut packet,
                &IpAddress::from(src.0),
                &IpAddress::from(dst.0),
                &checksums,
            );
            // Flags smoltcp's TcpControl cannot say together (SYN-ACK is, FIN+PSH+URG are
            // not): written as asked, then the checksum again.
            packet.set_fin(flags & 0x01 != 0);
            packet.set_syn(flags & 0x02 != 0);
            packet.set_rst(flags & 0x04 != 0);
            packet.set_psh(flags & 0x08 != 0);
            packet.set_ack(flags & 0x10 != 0);
            packet.set_urg(flags & 0x20 != 0);
            packet.fill_checksum(&IpAddress::from(src.0), &IpAddress::from(dst.0));
            bytes
        }
        PacketSpec::Udp { src, dst, ttl } => {
            let udp = UdpRepr {
                src_port: src.1,
                dst_port: dst.1,
            };
            let (mut bytes, l4) = ip(
                src_mac,
                dst_mac,
                (src.0, dst.0),
                IpProtocol::Udp,
                ttl,
                udp.header_len() + PAYLOAD.len(),
            );
            udp.emit(
                &mut UdpPacket::new_unchecked(
                    &mut bytes[l4..l4 + udp.header_len() + PAYLOAD.len()],
                ),
                &IpAddress::from(src.0),
                &IpAddress::from(dst.0),
                PAYLOAD.len(),
                |payload| payload.copy_from_slice(PAYLOAD),
                &checksums,
            );
            bytes
        }
        PacketSpec::Icmp {
            src: IpAddr::V6(src),
            dst: IpAddr::V6(dst),
            ttl,
        } => {
            let icmp = Icmpv6Repr::EchoRequest {
                ident: 0x7472,
                seq_no: 1,
                data: PAYLOAD,
            };
            let (mut bytes, l4) = ip(
                src_mac,
                dst_mac,
                (src.into(), dst.into()),
                IpProtocol::Icmpv6,
                ttl,
                icmp.buffer_len(),
            );
            icmp.emit(
                &src,
                &dst,
                &mut Icmpv6Packet::new_unchecked(&mut bytes[l4..l4 + icmp.buffer_len()]),
                &checksums,
            );
            bytes
        }
        PacketSpec::Icmp { src, dst, ttl } => {
            let icmp = Icmpv4Repr::EchoRequest {
                ident: 0x7472,
                seq_no: 1,
                data: PAYLOAD,
            };
            let (mut bytes, l4) = ip(
                src_mac,
                dst_mac,
                (src, dst),
                IpProtocol::Icmp,
                ttl,
                icmp.buffer_len(),
            );
            icmp.emit(
                &mut Icmpv4Packet::new_unchecked(&mut bytes[l4..l4 + icmp.buffer_len()]),
                &checksums,
            );
            bytes
        }
    }
}

fn ethernet_len(payload: usize) -> usize {
    14 + payload
}

/// A frame with an Ethernet and an IPv4 (20-byte) or IPv6 (40-byte) header emitted, of the
/// addresses' family (one family: the parser refuses mixes), room for `payload_len` bytes of
/// L4 after them, padded to the Ethernet minimum; and the offset of the L4 bytes.
fn ip(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    (src, dst): (IpAddr, IpAddr),
    protocol: IpProtocol,
    hop_limit: u8,
    payload_len: usize,
) -> (Vec<u8>, usize) {
    let (header_len, ethertype) = match src {
        IpAddr::V4(_) => (20, EthernetProtocol::Ipv4),
        IpAddr::V6(_) => (40, EthernetProtocol::Ipv6),
    };
    let len = ethernet_len(header_len + payload_len).max(60);
    let mut bytes = vec![0u8; VNET_HDR_LEN + len];
    let mut frame = EthernetFrame::new_unchecked(&mut bytes[VNET_HDR_LEN..]);
    EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype,
    }
    .emit(&mut frame);
    match (src, dst) {
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => Ipv6Repr {
            src_addr,
            dst_addr,
            next_header: protocol,
            payload_len,
            hop_limit,
        }
        .emit(&mut Ipv6Packet::new_unchecked(frame.payload_mut())),
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => Ipv4Repr {
            src_addr,
            dst_addr,
            next_header: protocol,
            payload_len,
            hop_limit,
        }
        .emit(
            &mut Ipv4Packet::new_unchecked(frame.payload_mut()),
            &ChecksumCapabilities::default(),
        ),
        _ => {}
    }
    (bytes, VNET_HDR_LEN + 14 + header_len)
}

/// An Ethernet frame written in hex (`0a1b…`; spaces, colons and a `0x` prefix allowed)
/// behind a plain `virtio_net_hdr`.
///
/// # Errors
/// Says what is wrong: an odd number of digits, a character that is not hex, a frame
/// shorter than an Ethernet header or longer than [`MAX_HEX_FRAME`].
pub fn from_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .trim()
        .trim_start_matches("0x")
        .bytes()
        .filter(|b| !matches!(b, b' ' | b':' | b'\n' | b'\t' | b'-'))
        .collect();
    if digits.len() % 2 != 0 {
        return Err(format!(
            "{} hex digits: a frame is whole bytes (an even number of digits)",
            digits.len()
        ));
    }
    let mut bytes = vec![0u8; VNET_HDR_LEN];
    for (index, pair) in digits.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).unwrap_or("??");
        let byte = u8::from_str_radix(text, 16)
            .map_err(|_| format!("byte {index} ({text:?}) is not two hex digits"))?;
        bytes.push(byte);
    }
    let len = bytes.len() - VNET_HDR_LEN;
    if len < 14 {
        return Err(format!(
            "{len} bytes are shorter than an Ethernet header (14 bytes: destination, source, ethertype)"
        ));
    }
    if len > MAX_HEX_FRAME {
        return Err(format!(
            "{len} bytes: a frame is at most {MAX_HEX_FRAME} bytes"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::pipeline::parse::{L3, parse};
    use crate::pipeline::trace::describe_frame;

    const A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
    const IA: IpAddr = IpAddr::V4(A);
    const IB: IpAddr = IpAddr::V4(B);
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];

    #[test]
    fn synthetic_frames_parse_with_valid_checksums() {
        for (spec, said) in [
            (
                PacketSpec::Tcp {
                    src: (IA, 40000),
                    dst: (IB, 80),
                    flags: 0x12,
                    ttl: 64,
                },
                "IPv4 172.30.0.2:40000 > 172.30.0.3:80 TCP flags [S.], ttl 64",
            ),
            (
                PacketSpec::Udp {
                    src: (IA, 5000),
                    dst: (IB, 53),
                    ttl: 3,
                },
                "IPv4 172.30.0.2:5000 > 172.30.0.3:53 UDP, ttl 3",
            ),
            (
                PacketSpec::Icmp {
                    src: IA,
                    dst: IB,
                    ttl: 64,
                },
                "IPv4 172.30.0.2 > 172.30.0.3 ICMP type 8 code 0",
            ),
            (
                PacketSpec::Arp {
                    target: B,
                    sender: A,
                },
                "ARP who-has 172.30.0.3 tell 172.30.0.2",
            ),
        ] {
            let bytes = frame(&spec, MAC_A, MAC_B);
            let parsed = parse(&bytes).expect("a valid frame");
            assert_eq!(parsed.src_mac, MAC_A);
            assert_eq!(parsed.dst_mac, MAC_B);
            let line = describe_frame(&bytes);
            assert!(line.contains(said), "{line}");
            if let L3::Ipv4 { .. } = parsed.l3 {
                let ip = Ipv4Packet::new_checked(&bytes[VNET_HDR_LEN + 14..]).expect("ip");
                assert!(ip.verify_checksum());
                let (src, dst) = (IpAddress::Ipv4(A), IpAddress::Ipv4(B));
                match ip.next_header() {
                    IpProtocol::Tcp => assert!(
                        TcpPacket::new_checked(ip.payload())
                            .expect("tcp")
                            .verify_checksum(&src, &dst)
                    ),
                    IpProtocol::Udp => assert!(
                        UdpPacket::new_checked(ip.payload())
                            .expect("udp")
                            .verify_checksum(&src, &dst)
                    ),
                    _ => assert!(
                        Icmpv4Packet::new_checked(ip.payload())
                            .expect("icmp")
                            .verify_checksum()
                    ),
                }
            }
        }
    }

    #[test]
    fn ipv6_frames_parse_with_valid_checksums() {
        let a: std::net::Ipv6Addr = "fd00::a".parse().unwrap();
        let b: std::net::Ipv6Addr = "fd00:9::d".parse().unwrap();
        for (spec, said, protocol) in [
            (
                PacketSpec::Tcp {
                    src: (a.into(), 40000),
                    dst: (b.into(), 80),
                    flags: 0x02,
                    ttl: 64,
                },
                "IPv6 fd00::a.40000 > fd00:9::d.80 TCP flags [S], hop limit 64, length 60",
                6,
            ),
            (
                PacketSpec::Udp {
                    src: (a.into(), 5000),
                    dst: (b.into(), 53),
                    ttl: 2,
                },
                "IPv6 fd00::a.5000 > fd00:9::d.53 UDP, hop limit 2",
                17,
            ),
            (
                PacketSpec::Icmp {
                    src: a.into(),
                    dst: b.into(),
                    ttl: 64,
                },
                "IPv6 fd00::a > fd00:9::d ICMPv6 type 128 code 0",
                58,
            ),
        ] {
            let bytes = frame(&spec, MAC_A, MAC_B);
            let parsed = parse(&bytes).expect("a valid frame");
            assert!(matches!(parsed.l3, L3::Ipv6 { .. }), "{:?}", parsed.l3);
            let line = describe_frame(&bytes);
            assert!(line.contains(said), "{line}");
            let ip = Ipv6Packet::new_checked(&bytes[VNET_HDR_LEN + 14..]).expect("ipv6");
            assert_eq!(u8::from(ip.next_header()), protocol);
            let (src, dst) = (IpAddress::Ipv6(a), IpAddress::Ipv6(b));
            let valid = match protocol {
                6 => TcpPacket::new_checked(ip.payload())
                    .expect("tcp")
                    .verify_checksum(&src, &dst),
                17 => UdpPacket::new_checked(ip.payload())
                    .expect("udp")
                    .verify_checksum(&src, &dst),
                _ => Icmpv6Packet::new_checked(ip.payload())
                    .expect("icmpv6")
                    .verify_checksum(&a, &b),
            };
            assert!(valid, "{said}: checksum");
        }
    }

    #[test]
    fn hex_frames() {
        let bytes = from_hex("ff:ff:ff:ff:ff:ff 02:00:00:00:00:0a 0806").expect("parses");
        assert_eq!(bytes.len(), VNET_HDR_LEN + 14);
        assert_eq!(bytes[VNET_HDR_LEN + 12..], [0x08, 0x06]);
        assert!(from_hex("0xabc").unwrap_err().contains("even"));
        assert!(from_hex("zz").unwrap_err().contains("byte 0"));
        assert!(from_hex("ffff").unwrap_err().contains("shorter"));
    }
}
