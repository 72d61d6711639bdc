#![allow(clippy::tests_outside_test_module)]
//! The VTEP's socket I/O (`port::vxlan`) between two namespaces joined by a veth pair: it
//! receives what a kernel UDP socket sends, spreads flows over its queues, and talks VXLAN
//! with a Linux kernel `vxlan` device (the kernel answers a ping we encapsulate, and the
//! packet we sent is captured in the peer namespace to check its outer headers).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use common::{Netns, require, run, unique};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket,
};
use vswitch::port::vxlan::{self as vtep, RX_PAD, VtepQueue};
use vswitch::port::{PortIo, PortKind, PortQueue, RxBatch};
use vswitch::sys::af_packet::{PacketSocket, RingLayout};
use vswitch::sys::netns::{self, NetnsRef};
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
        Underlay { a, b, veth_b }
    }

    /// Runs `f` on a thread inside namespace `ns`; sockets it opens stay in `ns`.
    fn inside<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
        netns::run_in(&NetnsRef::Name(ns.name.clone()), f)
            .unwrap_or_else(|e| panic!("cannot enter namespace {}: {e}", ns.name))
    }

    /// The VTEP on 192.168.77.1:4789 in A.
    fn open_vtep(&self, queues: usize) -> PortIo {
        let local = SocketAddrV4::new(ADDRESS_A, VXLAN_PORT);
        let io = Underlay::inside(&self.a, || vtep::open(local, queues))
            .unwrap_or_else(|e| panic!("cannot open the VTEP on {local} in {}: {e}", self.a.name));
        assert_eq!(io.kind, PortKind::Vxlan);
        assert_eq!(io.queues.len(), queues);
        io
    }
}

/// Runs `f` on queue `index` of the VTEP.
fn with_queue<T>(io: &PortIo, index: usize, f: impl FnOnce(&mut VtepQueue) -> T) -> T {
    match &mut *io.queues[index].lock() {
        PortQueue::Vxlan(queue) => f(queue),
        other => panic!("queue {index} is not a VTEP queue: {other:?}"),
    }
}

/// Reads every queue until `done` says so or `within` passes; returns, per queue, the frames
/// and peers received.
fn receive_until(
    io: &PortIo,
    within: Duration,
    mut done: impl FnMut(&[Vec<(Vec<u8>, SocketAddrV4)>]) -> bool,
) -> Vec<Vec<(Vec<u8>, SocketAddrV4)>> {
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
fn receives_kernel_udp_datagrams_on_every_queue() {
    let underlay = Underlay::new();
    let io = underlay.open_vtep(2);
    for index in 0..2 {
        let local = with_queue(&io, index, |q| q.local());
        assert_eq!(local, SocketAddrV4::new(ADDRESS_A, VXLAN_PORT));
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
    let sender_address = match sender.local_addr().expect("local address") {
        std::net::SocketAddr::V4(v4) => v4,
        other => panic!("IPv6 sender {other}"),
    };
    assert_eq!(*peer, sender_address, "the peer is the sending socket in B");
    assert_eq!(*peer.ip(), ADDRESS_B);

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
fn open_errors_name_the_address_and_the_fix() {
    let underlay = Underlay::new();
    let _io = underlay.open_vtep(1);
    let busy = SocketAddrV4::new(ADDRESS_A, VXLAN_PORT);
    let error = Underlay::inside(&underlay.a, || vtep::open(busy, 1))
        .expect_err("the port is taken by the first VTEP");
    assert!(
        error.to_string().contains(
            "UDP port 4789 on 192.168.77.1 is in use (a kernel vxlan device or another vswitchd?)"
        ),
        "{error}"
    );
    let absent = SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 99), VXLAN_PORT);
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

#[test]
fn interop_with_the_kernel_vxlan_device() {
    let underlay = Underlay::new();
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

    // A witness in B: every frame arriving on B's veth end (what A sends).
    let veth_b = underlay.veth_b.clone();
    let mut witness = Underlay::inside(&underlay.b, move || {
        let ifindex = nix::net::if_::if_nametoindex(veth_b.as_str())
            .unwrap_or_else(|e| panic!("no {veth_b} in B: {e}"));
        PacketSocket::open(ifindex, RingLayout::v2_for_mtu(1500))
    })
    .expect("AF_PACKET witness on B's veth end");

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
            q.send_encap(&request, vni, ADDRESS_B, &config)?;
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
    assert_eq!(*peer.ip(), ADDRESS_B, "the reply comes from B's VTEP");
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
    let taken = SocketAddrV4::new(ADDRESS_B, VXLAN_PORT);
    let error = Underlay::inside(&underlay.b, || vtep::open(taken, 1))
        .expect_err("vx0 holds UDP 4789 in B");
    assert!(
        error.to_string().contains(
            "UDP port 4789 on 192.168.77.2 is in use (a kernel vxlan device or another vswitchd?)"
        ),
        "{error}"
    );
}
