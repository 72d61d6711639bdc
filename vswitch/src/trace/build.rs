//! Synthetic frames for the packet tracer: a [`PacketSpec`] emitted with smoltcp's `Repr`s
//! (checksums filled), or raw Ethernet bytes written in hex; both behind a plain
//! `virtio_net_hdr`, as a port delivers them.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
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
            let mut bytes = ipv4(
                ethernet(EthernetProtocol::Ipv4),
                (src.0, dst.0),
                IpProtocol::Tcp,
                ttl,
                tcp.buffer_len(),
            );
            let l4 = VNET_HDR_LEN + 14 + 20;
            // Only the segment: the checksum covers its length, not the Ethernet padding.
            let mut packet = TcpPacket::new_unchecked(&mut bytes[l4..l4 + tcp.buffer_len()]);
            tcp.emit(
                &mut packet,
                &IpAddress::Ipv4(src.0),
                &IpAddress::Ipv4(dst.0),
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
            packet.fill_checksum(&IpAddress::Ipv4(src.0), &IpAddress::Ipv4(dst.0));
            bytes
        }
        PacketSpec::Udp { src, dst, ttl } => {
            let udp = UdpRepr {
                src_port: src.1,
                dst_port: dst.1,
            };
            let mut bytes = ipv4(
                ethernet(EthernetProtocol::Ipv4),
                (src.0, dst.0),
                IpProtocol::Udp,
                ttl,
                udp.header_len() + PAYLOAD.len(),
            );
            let l4 = VNET_HDR_LEN + 14 + 20;
            udp.emit(
                &mut UdpPacket::new_unchecked(
                    &mut bytes[l4..l4 + udp.header_len() + PAYLOAD.len()],
                ),
                &IpAddress::Ipv4(src.0),
                &IpAddress::Ipv4(dst.0),
                PAYLOAD.len(),
                |payload| payload.copy_from_slice(PAYLOAD),
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
            let mut bytes = ipv4(
                ethernet(EthernetProtocol::Ipv4),
                (src, dst),
                IpProtocol::Icmp,
                ttl,
                icmp.buffer_len(),
            );
            let l4 = VNET_HDR_LEN + 14 + 20;
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

/// A frame with an Ethernet and a 20-byte IPv4 header emitted, room for `payload_len`
/// bytes of L4 after them, padded to the Ethernet minimum.
fn ipv4(
    ethernet: EthernetRepr,
    (src, dst): (std::net::Ipv4Addr, std::net::Ipv4Addr),
    protocol: IpProtocol,
    ttl: u8,
    payload_len: usize,
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len,
        hop_limit: ttl,
    };
    let len = ethernet_len(ip.buffer_len() + payload_len).max(60);
    let mut bytes = vec![0u8; VNET_HDR_LEN + len];
    let mut frame = EthernetFrame::new_unchecked(&mut bytes[VNET_HDR_LEN..]);
    ethernet.emit(&mut frame);
    ip.emit(
        &mut Ipv4Packet::new_unchecked(frame.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    bytes
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
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];

    #[test]
    fn synthetic_frames_parse_with_valid_checksums() {
        for (spec, said) in [
            (
                PacketSpec::Tcp {
                    src: (A, 40000),
                    dst: (B, 80),
                    flags: 0x12,
                    ttl: 64,
                },
                "IPv4 172.30.0.2:40000 > 172.30.0.3:80 TCP flags [S.], ttl 64",
            ),
            (
                PacketSpec::Udp {
                    src: (A, 5000),
                    dst: (B, 53),
                    ttl: 3,
                },
                "IPv4 172.30.0.2:5000 > 172.30.0.3:53 UDP, ttl 3",
            ),
            (
                PacketSpec::Icmp {
                    src: A,
                    dst: B,
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
    fn hex_frames() {
        let bytes = from_hex("ff:ff:ff:ff:ff:ff 02:00:00:00:00:0a 0806").expect("parses");
        assert_eq!(bytes.len(), VNET_HDR_LEN + 14);
        assert_eq!(bytes[VNET_HDR_LEN + 12..], [0x08, 0x06]);
        assert!(from_hex("0xabc").unwrap_err().contains("even"));
        assert!(from_hex("zz").unwrap_err().contains("byte 0"));
        assert!(from_hex("ffff").unwrap_err().contains("shorter"));
    }
}
