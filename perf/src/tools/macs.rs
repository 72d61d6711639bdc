//! Many MACs behind a remote VTEP: VXLAN datagrams to a node's VTEP, each carrying one
//! Ethernet frame from its own source MAC, so a switch that learns from the tunnel holds one
//! entry per MAC. Run as the hidden `vxlan-macs` subcommand in the remote node's namespace
//! (from its underlay address, so the frames come from the peer the switch knows); it prints
//! one JSON line.
//!
//! Frame `i` comes from MAC `02:6d:` + `i` (32 bits, big-endian), locally administered and
//! unicast, so every run with the same count sends the same MACs: a second run refreshes
//! what the first taught and adds what a full queue lost. Its destination is `inner_dst`
//! (the receiving node's container: known unicast, no flood) with the IEEE local
//! experimental EtherType 0x88b5, which that container drops.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::cmd;
use super::flows::FlowsReport;

/// Datagrams sent between two short pauses (as [`super::flows`]).
const BURST: u32 = 256;

/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// The source MAC of frame `index`.
pub fn mac(index: u32) -> [u8; 6] {
    let [a, b, c, d] = index.to_be_bytes();
    [0x02, 0x6d, a, b, c, d]
}

/// The VXLAN datagram of frame `index`: the header with `vni`, then a minimum-size frame.
pub fn datagram(vni: u32, inner_dst: [u8; 6], index: u32) -> [u8; 68] {
    let mut packet = [0u8; 68];
    packet[0] = 0x08; // I flag: the VNI is valid
    packet[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
    packet[8..14].copy_from_slice(&inner_dst);
    packet[14..20].copy_from_slice(&mac(index));
    packet[20..22].copy_from_slice(&0x88b5u16.to_be_bytes());
    packet
}

/// Parses `aa:bb:cc:dd:ee:ff`.
///
/// # Errors
/// Not six hex octets.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let octets: Vec<u8> = text
        .trim()
        .split(':')
        .map(|octet| u8::from_str_radix(octet, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{text:?} is not a MAC address"))?;
    octets
        .try_into()
        .map_err(|_| anyhow!("{text:?} is not a MAC address"))
}

/// Sends `count` frames from `src` (an address of this namespace) to the VTEP at `vtep`
/// (the `vxlan-macs` subcommand).
///
/// # Errors
/// The socket cannot be opened.
pub fn send(
    src: Ipv4Addr,
    vtep: Ipv4Addr,
    vni: u32,
    inner_dst: [u8; 6],
    count: u32,
) -> Result<FlowsReport> {
    let socket = UdpSocket::bind(SocketAddrV4::new(src, 0))
        .with_context(|| format!("binding a UDP socket to {src}"))?;
    let to = SocketAddr::V4(SocketAddrV4::new(vtep, VXLAN_PORT));
    let mut report = FlowsReport { sent: 0, errors: 0 };
    for index in 0..count {
        match socket.send_to(&datagram(vni, inner_dst, index), to) {
            Ok(_) => report.sent += 1,
            Err(_) => report.errors += 1,
        }
        if (index + 1) % BURST == 0 {
            std::thread::sleep(Duration::from_micros(2_000));
        }
    }
    Ok(report)
}

/// Runs the `vxlan-macs` subcommand in `netns` and returns its report.
///
/// # Errors
/// The helper fails or runs too long.
pub fn run(
    netns: &str,
    src: Ipv4Addr,
    vtep: Ipv4Addr,
    vni: u32,
    inner_dst: &str,
    count: u32,
) -> Result<(FlowsReport, Duration)> {
    let limit = Duration::from_secs(30 + u64::from(count) / 20_000);
    let (src, vtep, vni, count) = (
        src.to_string(),
        vtep.to_string(),
        vni.to_string(),
        count.to_string(),
    );
    let args = [
        "vxlan-macs",
        "--src",
        &src,
        "--vtep",
        &vtep,
        "--vni",
        &vni,
        "--inner-dst",
        inner_dst,
        "--count",
        &count,
    ];
    cmd::run_helper(netns, &args, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_vni_and_distinct_unicast_macs() {
        let dst = parse_mac("0a:1b:2c:3d:4e:5f").unwrap();
        let packet = datagram(42, dst, 0x0102_0304);
        assert_eq!(&packet[..8], &[0x08, 0, 0, 0, 0, 0, 42, 0]);
        assert_eq!(&packet[8..14], &dst);
        assert_eq!(&packet[14..20], &[0x02, 0x6d, 1, 2, 3, 4]);
        assert_eq!(&packet[20..22], &[0x88, 0xb5]);
        assert_eq!(mac(0)[0] & 0x01, 0, "unicast");
        assert_eq!(mac(0)[0] & 0x02, 0x02, "locally administered");
        assert_ne!(mac(1), mac(256));
        assert!(parse_mac("0a:1b:2c").is_err());
        assert!(parse_mac("zz:1b:2c:3d:4e:5f").is_err());
    }

    #[test]
    fn sends_every_frame_on_loopback() {
        let report = send(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 42, [2; 6], 300).unwrap();
        assert_eq!(report.sent + report.errors, 300);
    }
}
