//! The VTEP's socket I/O (`port::vtep`) between two namespaces joined by a veth pair: it
//! receives what a kernel UDP socket sends, spreads flows over its queues, and talks VXLAN
//! with a Linux kernel `vxlan` device (the kernel answers a ping we encapsulate, and the
//! packet we sent is captured in the peer namespace to check its outer headers). The offloads:
//! a TCP super-frame sent with `UDP_SEGMENT` reaches the kernel's vxlan device as segments
//! (checked on the wire and in the device's counters), and `UDP_SEGMENT` sends of the kernel
//! come out of `UDP_GRO` split into their datagrams, whole and in order.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Netns, require, run, unique};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket,
};
use vswitch::port::RxBatch;
use vswitch::port::vtep::{self, RX_PAD, Vtep, VtepQueue};
use vswitch::sys::af_packet::{PacketSocket, RingLayout};
use vswitch::sys::netns::{self, NetnsRef};
use vswitch::sys::udp::{SendOptions, UdpSocket as SendSocket};
use vswitch::wire::checksum::pseudo_header_ipv4;
use vswitch::wire::gso::Segmenter;
use vswitch::wire::vnet_hdr;
use vxlan::encap::{SourcePortRange, decapsulate, source_port};
use vxlan::{Vni, VxlanEncapConfig};

const ADDRESS_A: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const ADDRESS_B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const VXLAN_PORT: u16 = 4789;

/// Two namespaces joined by a veth pair: A has 192.168.77.1/24, B 192.168.77.2/24. Both
/// namespaces (and with them the veth pair and any device made inside) go away on drop.
struct Underlay {
    a: Netns,
    b: Netns,
    /// The veth end in A.
    veth_a: String,
    /// The veth end in B.
    veth_b: String,
}

impl Underlay {
    fn new() -> Underlay {
        require(&["ip"]);
        let a = Netns::new("ioa");
        let b = Netns::new("iob");
        let veth_a = unique("va");
        let veth_b = unique("vb");
        run(
            "ip",
            &[
                "link", "add", &veth_a, "netns", &a.name, "type", "veth", "peer", "name", &veth_b,
                "netns", &b.name,
            ],
        );
        for (ns, ifname, address) in [
            (&a, &veth_a, "192.168.77.1/24"),
            (&b, &veth_b, "192.168.77.2/24"),
        ] {
            run(
                "ip",
                &["-n", &ns.name, "addr", "add", address, "dev", ifname],
            );
            run("ip", &["-n", &ns.name, "link", "set", ifname, "up"]);
        }
        Underlay {
            a,
            b,
            veth_a,
            veth_b,
        }
    }

    /// Runs `f` on a thread inside namespace `ns`; sockets it opens stay in `ns`.
    fn inside<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(&NetnsRef::Name(ns.name.clone()), f)
            .unwrap_or_else(|e| panic!("cannot enter namespace {}: {e}", ns.name))
    }

    /// The VTEP on 192.168.77.1:4789 in A.
    fn open_vtep(&self, queues: usize) -> Vtep {
        let local = SocketAddr::new(ADDRESS_A.into(), VXLAN_PORT);
        let io = Underlay::inside(&self.a, || vtep::open(local, queues))
            .unwrap_or_else(|e| panic!("cannot open the VTEP on {local} in {}: {e}", self.a.name));
        assert_eq!(io.local, local);
        assert_eq!(io.queues.len(), queues);
        io
    }
}

/// Runs `f` on queue `index` of the VTEP.
fn with_queue<T>(io: &Vtep, index: usize, f: impl FnOnce(&mut VtepQueue) -> T) -> T {
    f(&mut io.queues[index].lock())
}

/// Reads every queue until `done` says so or `within` passes; returns, per queue, the frames
/// and peers received.
fn receive_until(
    io: &Vtep,
    within: Duration,
    mut done: impl FnMut(&[Vec<(Vec<u8>, SocketAddr)>]) -> bool,
) -> Vec<Vec<(Vec<u8>, SocketAddr)>> {
    let mut seen = vec![Vec::new(); io.queues.len()];
    let mut batch = RxBatch::new(64);
    let deadline = Instant::now() + within;
    while !done(&seen) && Instant::now() < deadline {
        for (index, frames) in seen.iter_mut().enumerate() {
            batch.clear();
            with_queue(io, index, |q| q.recv_batch(&mut batch))
                .unwrap_or_else(|e| panic!("recv_batch on queue {index}: {e}"));
            frames.extend((0..batch.len()).map(|i| (batch.frame(i).to_vec(), batch.peer(i))));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen
}

/// A VXLAN datagram (UDP payload) for `vni` carrying a 60-byte Ethernet frame marked `tag`.
fn vxlan_datagram(vni: u32, tag: u8) -> Vec<u8> {
    let mut datagram = vec![0x08, 0, 0, 0];
    datagram.extend_from_slice(&(vni << 8).to_be_bytes());
    // Broadcast destination, locally administered source, an experimental EtherType.
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0x77, tag, 0x88, 0xb5]);
    frame.resize(60, tag);
    datagram.extend_from_slice(&frame);
    datagram
}

#[test]
#[ignore = "needs root: creates namespaces, a veth pair and the VTEP's raw socket"]
fn receives_kernel_udp_datagrams_on_every_queue() {
    let underlay = Underlay::new();
    let io = underlay.open_vtep(2);
    for index in 0..2 {
        let local = with_queue(&io, index, |q| q.local());
        assert_eq!(local, SocketAddr::new(ADDRESS_A.into(), VXLAN_PORT));
    }

    // One datagram from a plain kernel UDP socket in B.
    let sender =
        Underlay::inside(&underlay.b, || UdpSocket::bind((ADDRESS_B, 0))).expect("UDP socket in B");
    let datagram = vxlan_datagram(42, 0);
    sender
        .send_to(&datagram, (ADDRESS_A, VXLAN_PORT))
        .expect("send from B");
    let seen = receive_until(&io, Duration::from_secs(5), |seen| {
        seen.iter().map(Vec::len).sum::<usize>() >= 1
    });
    let all: Vec<_> = seen.iter().flatten().collect();
    assert_eq!(all.len(), 1, "expected one datagram, got {all:?}");
    let (frame, peer) = all[0];
    let mut expected = vec![0u8; RX_PAD];
    expected.extend_from_slice(&datagram);
    assert_eq!(
        frame, &expected,
        "[RX_PAD zero bytes][VXLAN header][inner frame]"
    );
    let sender_address = sender.local_addr().expect("local address");
    assert_eq!(*peer, sender_address, "the peer is the sending socket in B");
    assert_eq!(peer.ip(), IpAddr::V4(ADDRESS_B));

    // 32 flows (32 source ports): SO_REUSEPORT spreads them over both queues. All 32 on one
    // queue has a probability of 2^-31 with a fair hash.
    let senders: Vec<UdpSocket> = Underlay::inside(&underlay.b, || {
        (0..32)
            .map(|_| UdpSocket::bind((ADDRESS_B, 0)))
            .collect::<std::io::Result<Vec<_>>>()
    })
    .expect("UDP sockets in B");
    for (tag, socket) in senders.iter().enumerate() {
        let tag = u8::try_from(tag + 1).expect("small");
        socket
            .send_to(&vxlan_datagram(42, tag), (ADDRESS_A, VXLAN_PORT))
            .expect("send from B");
    }
    let seen = receive_until(&io, Duration::from_secs(5), |seen| {
        seen.iter().map(Vec::len).sum::<usize>() >= 32
    });
    let counts: Vec<usize> = seen.iter().map(Vec::len).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        32,
        "per-queue counts {counts:?}"
    );
    assert!(
        counts.iter().all(|&n| n > 0),
        "SO_REUSEPORT should spread 32 flows over both queues, got {counts:?}"
    );
    for (frame, _) in seen.iter().flatten() {
        assert_eq!(&frame[..RX_PAD], &[0; RX_PAD]);
        assert_eq!(frame.len(), RX_PAD + 68);
    }
}

#[test]
#[ignore = "needs root: creates namespaces, a veth pair and the VTEP's raw socket"]
fn open_errors_name_the_address_and_the_fix() {
    let underlay = Underlay::new();
    let _io = underlay.open_vtep(1);
    let busy = SocketAddr::new(ADDRESS_A.into(), VXLAN_PORT);
    let error = Underlay::inside(&underlay.a, || vtep::open(busy, 1))
        .expect_err("the port is taken by the first VTEP");
    assert!(
        error.to_string().contains(
            "UDP port 4789 on 192.168.77.1 is in use (a kernel vxlan device or another vswitchd?)"
        ),
        "{error}"
    );
    let absent = SocketAddr::new(Ipv4Addr::new(192, 168, 77, 99).into(), VXLAN_PORT);
    let error = Underlay::inside(&underlay.a, || vtep::open(absent, 1))
        .expect_err("192.168.77.99 is nobody's address");
    assert!(
        error.to_string().contains(
            "address 192.168.77.99 is not configured on any interface in vswitchd's network \
             namespace; set localAddress to an address of this node"
        ),
        "{error}"
    );
}

/// The MAC of the kernel's vxlan device in B, and the (static) MAC of 10.42.0.1 behind it.
const VX0_MAC: [u8; 6] = [0x02, 0x42, 0x77, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0x42, 0x77, 0, 0, 0x01];
const INNER_A: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
const INNER_B: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 2);
const PING_DATA: &[u8] = b"vswitch vtep_io interop ping";

/// An Ethernet frame with an ICMP echo request from 10.42.0.1 (PEER_MAC) to 10.42.0.2
/// (VX0_MAC), checksums complete.
fn echo_request() -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 0x7707,
        seq_no: 1,
        data: PING_DATA,
    };
    let ip = Ipv4Repr {
        src_addr: INNER_A,
        dst_addr: INNER_B,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC),
        dst_addr: EthernetAddress(VX0_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut frame = vec![0u8; ethernet.buffer_len() + ip.buffer_len() + icmp.buffer_len()];
    ethernet.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..34]), &caps);
    icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut frame[34..]), &caps);
    frame
}

/// Whether `inner` is the kernel's echo reply to [`echo_request`].
fn is_echo_reply(inner: &[u8]) -> bool {
    let Ok(ethernet) = EthernetFrame::new_checked(inner) else {
        return false;
    };
    if ethernet.dst_addr() != EthernetAddress(PEER_MAC)
        || ethernet.src_addr() != EthernetAddress(VX0_MAC)
        || ethernet.ethertype() != EthernetProtocol::Ipv4
    {
        return false;
    }
    let caps = ChecksumCapabilities::default();
    let Ok(ip) = Ipv4Packet::new_checked(ethernet.payload()) else {
        return false;
    };
    let Ok(ip_repr) = Ipv4Repr::parse(&ip, &caps) else {
        return false;
    };
    if ip_repr.src_addr != INNER_B
        || ip_repr.dst_addr != INNER_A
        || ip_repr.next_header != IpProtocol::Icmp
    {
        return false;
    }
    let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
        return false;
    };
    matches!(
        Icmpv4Repr::parse(&icmp, &caps),
        Ok(Icmpv4Repr::EchoReply { ident: 0x7707, seq_no: 1, data }) if data == PING_DATA
    )
}

/// The VXLAN packets (outer IPv4 from 192.168.77.1 to UDP 4789) in AF_PACKET frames
/// (virtio header + Ethernet): their outer UDP source port, UDP checksum and UDP payload.
fn vxlan_from_a(frames: &[Vec<u8>]) -> Vec<(u16, u16, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|frame| {
            let ethernet = EthernetFrame::new_checked(frame.get(10..)?).ok()?;
            if ethernet.ethertype() != EthernetProtocol::Ipv4 {
                return None;
            }
            let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
            if ip.src_addr() != ADDRESS_A || ip.next_header() != IpProtocol::Udp {
                return None;
            }
            let udp = UdpPacket::new_checked(ip.payload()).ok()?;
            (udp.dst_port() == VXLAN_PORT)
                .then(|| (udp.src_port(), udp.checksum(), udp.payload().to_vec()))
        })
        .collect()
}

/// Adds the kernel's `vx0` in B: VNI 42 on UDP 4789 toward A, address 10.42.0.2/24, MAC
/// [`VX0_MAC`], and 10.42.0.1 at [`PEER_MAC`] behind it.
fn add_kernel_vx0(underlay: &Underlay) {
    let b = &underlay.b.name;
    let vx0_mac = VX0_MAC.map(|byte| format!("{byte:02x}")).join(":");
    let peer_mac = PEER_MAC.map(|byte| format!("{byte:02x}")).join(":");
    run(
        "ip",
        &[
            "-n",
            b,
            "link",
            "add",
            "vx0",
            "address",
            &vx0_mac,
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            "192.168.77.2",
            "remote",
            "192.168.77.1",
            "nolearning",
        ],
    );
    run(
        "ip",
        &["-n", b, "addr", "add", "10.42.0.2/24", "dev", "vx0"],
    );
    run("ip", &["-n", b, "link", "set", "vx0", "up"]);
    run(
        "ip",
        &[
            "-n",
            b,
            "neigh",
            "replace",
            "10.42.0.1",
            "lladdr",
            &peer_mac,
            "dev",
            "vx0",
            "nud",
            "permanent",
        ],
    );
}

/// An AF_PACKET socket on B's veth end: every frame arriving there (what A sends).
fn witness_in_b(underlay: &Underlay) -> PacketSocket {
    let veth_b = underlay.veth_b.clone();
    Underlay::inside(&underlay.b, move || {
        let ifindex = nix::net::if_::if_nametoindex(veth_b.as_str())
            .unwrap_or_else(|e| panic!("no {veth_b} in B: {e}"));
        PacketSocket::open(ifindex, RingLayout::v2_for_mtu(1500))
    })
    .expect("AF_PACKET witness on B's veth end")
}

#[test]
#[ignore = "needs root: creates namespaces, a kernel vxlan device, raw and AF_PACKET sockets"]
fn interop_with_the_kernel_vxlan_device() {
    let underlay = Underlay::new();
    let b = &underlay.b.name;
    add_kernel_vx0(&underlay);

    // A witness in B: every frame arriving on B's veth end (what A sends).
    let mut witness = witness_in_b(&underlay);

    let io = underlay.open_vtep(2);
    let config = VxlanEncapConfig::default();
    let vni = Vni::new(42).expect("valid VNI");
    let request = echo_request();

    let mut captured: Vec<Vec<u8>> = Vec::new();
    let mut capture_batch = RxBatch::new(64);
    let mut reply = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while reply.is_none() && Instant::now() < deadline {
        // Resend every half second: the first one may wait for ARP on either side.
        with_queue(&io, 0, |q| {
            q.send_encap(&request, vni, ADDRESS_B.into(), &config)?;
            q.flush()
        })
        .expect("send_encap + flush");
        let seen = receive_until(&io, Duration::from_millis(500), |seen| {
            seen.iter().flatten().any(|(frame, _)| {
                decapsulate(&frame[RX_PAD..])
                    .is_ok_and(|d| is_echo_reply(&frame[RX_PAD..][d.inner]))
            })
        });
        reply = seen.into_iter().flatten().find(|(frame, _)| {
            decapsulate(&frame[RX_PAD..]).is_ok_and(|d| is_echo_reply(&frame[RX_PAD..][d.inner]))
        });
        capture_batch.clear();
        witness
            .recv_batch(&mut capture_batch)
            .expect("witness recv");
        captured.extend((0..capture_batch.len()).map(|i| capture_batch.frame(i).to_vec()));
    }
    let (frame, peer) = reply.unwrap_or_else(|| {
        panic!(
            "no ICMP echo reply from the kernel's vx0 within 10 s; B's vx0: {}; send errors: {}",
            String::from_utf8_lossy(
                &run("ip", &["-n", b, "-s", "-d", "link", "show", "vx0"]).stdout
            ),
            with_queue(&io, 0, |q| q.send_errors())
        )
    });
    let decap = decapsulate(&frame[RX_PAD..]).expect("valid VXLAN");
    assert_eq!(decap.vni, vni, "the kernel answers on VNI 42");
    assert_eq!(
        peer.ip(),
        IpAddr::V4(ADDRESS_B),
        "the reply comes from B's VTEP"
    );
    assert!(
        (32768..=60999).contains(&peer.port()),
        "the kernel's outer source port {} is in its default range",
        peer.port()
    );

    // What A sent, as it arrived in B.
    let deadline = Instant::now() + Duration::from_secs(2);
    while vxlan_from_a(&captured).is_empty() && Instant::now() < deadline {
        capture_batch.clear();
        witness
            .recv_batch(&mut capture_batch)
            .expect("witness recv");
        captured.extend((0..capture_batch.len()).map(|i| capture_batch.frame(i).to_vec()));
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = vxlan_from_a(&captured);
    assert!(
        !sent.is_empty(),
        "the witness in B saw no VXLAN packet from A among {} frames",
        captured.len()
    );
    let range = SourcePortRange::DEFAULT;
    for (source, checksum, payload) in &sent {
        assert!(
            (range.min()..=range.max()).contains(source),
            "outer UDP source port {source} outside 32768-60999"
        );
        assert_eq!(
            *source,
            source_port(&request, &config),
            "the source port is hashed from the inner flow"
        );
        assert_eq!(*checksum, 0, "outer UDP checksum zero over IPv4 by default");
        assert_eq!(&payload[..8], &[0x08, 0, 0, 0, 0, 0, 42, 0], "VXLAN header");
        assert_eq!(&payload[8..], &request[..], "inner frame intact");
    }
    assert_eq!(with_queue(&io, 0, |q| q.send_errors()), 0);

    // B's UDP port 4789 belongs to the kernel's vx0: a VTEP there is refused, and says why.
    let taken = SocketAddr::new(ADDRESS_B.into(), VXLAN_PORT);
    let error = Underlay::inside(&underlay.b, || vtep::open(taken, 1))
        .expect_err("vx0 holds UDP 4789 in B");
    assert!(
        error.to_string().contains(
            "UDP port 4789 on 192.168.77.2 is in use (a kernel vxlan device or another vswitchd?)"
        ),
        "{error}"
    );
}

/// A TCP over IPv4 GSO super-frame from 10.42.0.1 ([`PEER_MAC`]) to 10.42.0.2 ([`VX0_MAC`])
/// as a TAP hands it over: a `virtio_net_hdr` with NEEDS_CSUM and TCPV4 (`gso_size` `mss`),
/// the TCP checksum field holding only the pseudo-header sum (a partial checksum), then
/// `payload_len` bytes (byte `i` is `i % 251`) from sequence number `seq`.
fn tcp_super_frame(payload_len: usize, mss: u16, seq: u32) -> Vec<u8> {
    let tcp_len = 20 + payload_len;
    let mut frame = vec![0u8; vnet_hdr::HEADER_LEN];
    frame[0] = vnet_hdr::flags::NEEDS_CSUM;
    frame[1] = vnet_hdr::gso::TCPV4;
    frame[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    frame[4..6].copy_from_slice(&mss.to_le_bytes()); // gso_size
    frame[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
    frame[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset: its checksum
    frame.extend_from_slice(&VX0_MAC);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&u16::try_from(20 + tcp_len).expect("fits").to_be_bytes());
    ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    ip[6] = 0x40; // DF, as Linux sends TCP
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&INNER_A.octets());
    ip[16..20].copy_from_slice(&INNER_B.octets());
    Ipv4Packet::new_unchecked(&mut ip[..]).fill_checksum();
    frame.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&45_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x18; // ACK | PSH
    tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
    let partial = pseudo_header_ipv4(INNER_A, INNER_B, 6, u16::try_from(tcp_len).expect("fits"));
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    frame.extend_from_slice(&tcp);
    frame.extend((0..payload_len).map(|i| u8::try_from(i % 251).expect("below 251")));
    frame
}

/// A counter of B's `vx0` (`/sys/class/net/vx0/statistics/<name>`).
fn vx0_counter(underlay: &Underlay, name: &str) -> u64 {
    let path = format!("/sys/class/net/vx0/statistics/{name}");
    let text = underlay.b.exec_ok(&["cat", &path]);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path} in B holds {text:?}: {e}"))
}

/// Reads the witness until `want` VXLAN packets from A were captured or `within` passed.
fn capture_vxlan(
    witness: &mut PacketSocket,
    want: usize,
    within: Duration,
) -> Vec<(u16, Vec<u8>, Vec<u8>)> {
    let mut batch = RxBatch::new(64);
    let mut frames = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        batch.clear();
        witness.recv_batch(&mut batch).expect("witness recv");
        frames.extend((0..batch.len()).map(|i| batch.frame(i).to_vec()));
        let count = vxlan_from_a(&frames).len();
        if count >= want || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Outer source port, the whole outer UDP datagram (to verify its checksum), UDP payload.
    frames
        .iter()
        .filter_map(|frame| {
            let ethernet = EthernetFrame::new_checked(frame.get(10..)?).ok()?;
            let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
            if ip.src_addr() != ADDRESS_A || ip.next_header() != IpProtocol::Udp {
                return None;
            }
            let udp = UdpPacket::new_checked(ip.payload()).ok()?;
            (udp.dst_port() == VXLAN_PORT).then(|| {
                (
                    udp.src_port(),
                    ip.payload()[..usize::from(udp.len())].to_vec(),
                    udp.payload().to_vec(),
                )
            })
        })
        .collect()
}

#[test]
#[ignore = "needs root: creates namespaces, a kernel vxlan device, raw and AF_PACKET sockets"]
fn gso_super_frame_reaches_the_kernel_vxlan_peer_as_segments() {
    require(&["ethtool"]);
    let underlay = Underlay::new();
    add_kernel_vx0(&underlay);
    let io = underlay.open_vtep(1);
    let config = VxlanEncapConfig::default();
    let vni = Vni::new(42).expect("valid VNI");
    let (payload_len, mss): (usize, u16) = (20_000, 1398);
    let count = payload_len.div_ceil(usize::from(mss));
    let frame = tcp_super_frame(payload_len, mss, 100_000);
    let mut segmenter = Segmenter::new();
    let mut first_segment = None;
    segmenter
        .segment(&frame, |segment| {
            first_segment.get_or_insert_with(|| segment[10..].to_vec());
        })
        .expect("the super-frame segments");
    let first_segment = first_segment.expect("at least one segment");
    let expected_port = source_port(&first_segment, &config);
    assert!(
        with_queue(&io, 0, |q| q.udp_segment()),
        "UDP_SEGMENT is available on this kernel"
    );

    // 1. As the datapath runs: the veth takes the UDP GSO packet whole, and the kernel's
    // vxlan socket in B segments it and decapsulates every segment.
    let rx_before = vx0_counter(&underlay, "rx_packets");
    // The first send may wait for ARP: resend until vx0 has seen a whole super-frame.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sends = 0u64;
    while vx0_counter(&underlay, "rx_packets") < rx_before + u64::try_from(count).expect("small")
        && Instant::now() < deadline
    {
        let sent = with_queue(&io, 0, |q| {
            q.send_encap_gso(&frame, &mut segmenter, vni, ADDRESS_B.into(), &config)
        })
        .expect("send_encap_gso");
        assert_eq!((sent.segments, sent.failed), (count, 0), "{sent:?}");
        sends += 1;
        // Paces the resends (each is a whole super-frame); the loop itself waits on vx0's
        // counter, not on this sleep.
        std::thread::sleep(Duration::from_millis(200));
    }
    let received = vx0_counter(&underlay, "rx_packets") - rx_before;
    assert!(
        received >= u64::try_from(count).expect("small"),
        "B's vx0 decapsulated {received} packets after {sends} super-frames of {count} segments"
    );
    assert_eq!(
        received % u64::try_from(count).expect("small"),
        0,
        "whole super-frames only"
    );
    with_queue(&io, 0, |q| {
        assert!(
            q.gso_sends() >= sends,
            "one UDP_SEGMENT send per super-frame: {} sends, {} super-frames, udp_segment {}",
            q.gso_sends(),
            sends,
            q.udp_segment()
        );
        assert_eq!(q.send_errors(), 0);
        assert_eq!(q.port_bind_failures(), 0);
    });

    // 2. On the wire: with UDP segmentation and checksum offload off on A's veth, the kernel
    // cuts the GSO packet and completes each checksum before the veth, and the witness in B
    // sees every datagram as a NIC would send it.
    let mut witness = witness_in_b(&underlay);
    underlay.a.exec_ok(&[
        "ethtool",
        "-K",
        &underlay.veth_a,
        "tx-udp-segmentation",
        "off",
        "tx-checksumming",
        "off",
    ]);
    let sent = with_queue(&io, 0, |q| {
        q.send_encap_gso(&frame, &mut segmenter, vni, ADDRESS_B.into(), &config)
    })
    .expect("send_encap_gso");
    assert_eq!((sent.segments, sent.failed), (count, 0), "{sent:?}");
    let captured = capture_vxlan(&mut witness, count, Duration::from_secs(5));
    assert_eq!(
        captured.len(),
        count,
        "VXLAN packets from A captured in B (one per segment)"
    );
    let range = SourcePortRange::DEFAULT;
    let mut next_seq = 100_000u32;
    let mut payload = Vec::new();
    for (index, (source, datagram, vxlan)) in captured.iter().enumerate() {
        assert_eq!(
            *source, expected_port,
            "packet {index}: the flow's source port"
        );
        assert!((range.min()..=range.max()).contains(source));
        let udp = UdpPacket::new_checked(&datagram[..]).expect("UDP");
        assert_ne!(udp.checksum(), 0, "UDP_SEGMENT sends carry a checksum");
        assert!(
            udp.verify_checksum(&IpAddress::Ipv4(ADDRESS_A), &IpAddress::Ipv4(ADDRESS_B)),
            "packet {index}: outer UDP checksum"
        );
        assert_eq!(&vxlan[..8], &[0x08, 0, 0, 0, 0, 0, 42, 0], "VXLAN header");
        let inner = EthernetFrame::new_checked(&vxlan[8..]).expect("inner Ethernet");
        assert_eq!(inner.dst_addr(), EthernetAddress(VX0_MAC));
        let ip = Ipv4Packet::new_checked(inner.payload()).expect("inner IPv4");
        assert!(ip.verify_checksum(), "packet {index}: inner IPv4 checksum");
        assert!(usize::from(ip.total_len()) <= 1450, "fits the overlay MTU");
        let tcp = TcpPacket::new_checked(ip.payload()).expect("inner TCP");
        assert!(
            tcp.verify_checksum(&IpAddress::Ipv4(INNER_A), &IpAddress::Ipv4(INNER_B)),
            "packet {index}: inner TCP checksum"
        );
        assert_eq!(
            tcp.seq_number().0.cast_unsigned(),
            next_seq,
            "packet {index}: contiguous sequence numbers"
        );
        assert_eq!(
            tcp.psh(),
            index + 1 == count,
            "PSH on the last segment only"
        );
        next_seq = next_seq.wrapping_add(u32::try_from(tcp.payload().len()).expect("small"));
        payload.extend_from_slice(tcp.payload());
    }
    let expected: Vec<u8> = (0..payload_len)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect();
    assert!(payload == expected, "the inner payload, whole and in order");
}

/// `datagrams` VXLAN datagrams (VNI 42) of `size` bytes each, the last `last` bytes; byte
/// 8 + j of datagram i is `tag + i + j`.
fn vxlan_run(datagrams: usize, size: usize, last: usize, tag: u8) -> Vec<Vec<u8>> {
    (0..datagrams)
        .map(|i| {
            let len = if i + 1 == datagrams { last } else { size };
            let mut datagram = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
            datagram.extend(
                (0..len - 8)
                    .map(|j| tag.wrapping_add(u8::try_from((i + j) % 256).expect("below 256"))),
            );
            datagram
        })
        .collect()
}

#[test]
#[ignore = "needs root: creates namespaces, a veth pair and the VTEP's raw socket"]
fn udp_gro_splits_what_a_kernel_udp_segment_sender_sends() {
    let underlay = Underlay::new();
    let io = underlay.open_vtep(1);
    assert!(
        with_queue(&io, 0, |q| q.udp_gro()),
        "UDP_GRO is available on this kernel"
    );
    let options = SendOptions {
        ttl: 64,
        dont_fragment: false,
        send_buffer: None,
    };
    let sender = Underlay::inside(&underlay.b, || {
        SendSocket::bind_sender(SocketAddr::new(ADDRESS_B.into(), 0), options)
    })
    .expect("UDP socket in B");
    let from = sender.local_addr().expect("local address");
    let to = SocketAddr::new(ADDRESS_A.into(), VXLAN_PORT);
    // Three UDP_SEGMENT sends: 40 datagrams of 1000 bytes (the last 500), 30 of 1400, and a
    // single datagram; then a burst of 100 single datagrams from a plain socket.
    let runs = [
        vxlan_run(40, 1000, 500, 0),
        vxlan_run(30, 1400, 1400, 50),
        vxlan_run(1, 300, 300, 90),
    ];
    let mut expected: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    // The first send may wait for ARP: its datagrams are queued, not lost.
    for run in &runs {
        let payload = run.concat();
        let segment = (run.len() > 1).then(|| u16::try_from(run[0].len()).expect("small"));
        assert_eq!(
            sender
                .send_to(&payload, to, segment)
                .expect("UDP_SEGMENT send"),
            payload.len()
        );
        expected.extend(run.iter().map(|datagram| (datagram.clone(), from)));
    }
    let plain =
        Underlay::inside(&underlay.b, || UdpSocket::bind((ADDRESS_B, 0))).expect("UDP socket in B");
    let plain_from = plain.local_addr().expect("local address");
    for (tag, datagram) in vxlan_run(100, 120, 120, 7).into_iter().enumerate() {
        let mut datagram = datagram;
        datagram[8] = u8::try_from(tag).expect("below 100");
        plain.send_to(&datagram, to).expect("send from B");
        expected.push((datagram, plain_from));
    }

    let seen = receive_until(&io, Duration::from_secs(10), |seen| {
        seen.iter().map(Vec::len).sum::<usize>() >= expected.len()
    });
    let got: Vec<(Vec<u8>, SocketAddr)> = seen
        .into_iter()
        .flatten()
        .map(|(frame, peer)| {
            assert_eq!(&frame[..RX_PAD], &[0; RX_PAD], "zeroed pad");
            (frame[RX_PAD..].to_vec(), peer)
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "datagrams received");
    for (index, (got, want)) in got.iter().zip(&expected).enumerate() {
        assert!(
            got == want,
            "datagram {index}: got {} bytes from {}, expected {} bytes from {}",
            got.0.len(),
            got.1,
            want.0.len(),
            want.1
        );
    }
    with_queue(&io, 0, |q| {
        assert!(
            q.gro_coalesced() >= 2,
            "the UDP_SEGMENT sends crossed the veth whole and were handed over coalesced \
             ({} buffers)",
            q.gro_coalesced()
        );
        assert_eq!(q.truncated(), 0);
        assert_eq!(q.pending(), 0);
    });
}
