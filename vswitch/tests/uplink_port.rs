//! Integration tests of the uplink port (`vswitch::port::uplink`): a veth pair whose host end
//! stays in the test's (the host's) namespace with an address of the host's own, and whose
//! other end is in an "outside" namespace. The switch side is a thread that reads the uplink's
//! queues, records every frame and answers ARP and ping for the switch's own address with the
//! switch's own MAC.
//!
//! Each test builds its own pair and namespace (`vtu<pid><n>`, addresses 198.19.<n>.0/24) and
//! removes them in `Drop`. Needs root (namespaces, AF_PACKET), iproute2, ping and python3
//! (to send a UDP GSO datagram from outside); without them the tests fail and say so.
//!
//! Every test needs root and is `#[ignore]`d for a plain `cargo test`; run them with
//! `sudo ./scripts/test.sh --test uplink_port` (or `cargo test --release -p vswitch --test
//! uplink_port -- --include-ignored` as root).

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use vswitch::port::uplink::{self, UplinkInfo};
use vswitch::port::{PortIo, PortQueue, RxBatch};
use vswitch::sys::af_packet::{PacketSocket, RingLayout};
use vswitch::wire::VNET_HDR_LEN;

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn require_environment() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/uplink_port.rs needs root (network namespaces, veth, AF_PACKET sockets): run \
         `sudo ./scripts/test.sh --test uplink_port`"
    );
    for tool in [["ip", "-V"], ["ping", "-V"], ["python3", "--version"]] {
        let ok = Command::new(tool[0])
            .arg(tool[1])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "tests/uplink_port.rs needs `{}` (install iproute2, iputils-ping and python3)",
            tool[0]
        );
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The outside namespace and the veth pair joining it to the host, removed on drop.
struct Topology {
    /// The host end (the uplink), in the test's namespace.
    uplink: String,
    /// The outside end, inside `outside`.
    peer: String,
    /// The outside namespace.
    outside: String,
    /// Third octet of 198.19.x.0/24.
    octet: u8,
}

impl Topology {
    /// Host end 198.19.x.1/24 (the host's own address), outside end 198.19.x.2/24; the
    /// switch will own 198.19.x.3 with [`Topology::switch_mac`].
    fn new() -> Topology {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = format!("vtu{}{n}", std::process::id());
        let topology = Topology {
            peer: format!("{base}p"),
            outside: format!("{base}o"),
            uplink: base,
            octet: u8::try_from(10 + n % 200).unwrap(),
        };
        run_ok("ip", &["netns", "add", &topology.outside]);
        run_ok(
            "ip",
            &[
                "link",
                "add",
                &topology.uplink,
                "type",
                "veth",
                "peer",
                "name",
                &topology.peer,
                "netns",
                &topology.outside,
            ],
        );
        let host_address = format!("{}/24", topology.ip(1));
        run_ok(
            "ip",
            &["addr", "add", &host_address, "dev", &topology.uplink],
        );
        run_ok("ip", &["link", "set", &topology.uplink, "up"]);
        let outside_address = format!("{}/24", topology.ip(2));
        topology.ip_outside(&["addr", "add", &outside_address, "dev", &topology.peer]);
        topology.ip_outside(&["link", "set", &topology.peer, "up"]);
        topology.ip_outside(&["link", "set", "lo", "up"]);
        topology
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.octet, host)
    }

    /// The switch's own MAC on the uplink (locally administered).
    fn switch_mac(&self) -> [u8; 6] {
        [0x02, 0x00, 0x5e, 0x77, self.octet, 0x03]
    }

    fn ip_outside(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.outside];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    fn exec_outside(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.outside];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn sys(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/sys/class/net/{}/{file}", self.uplink))
            .unwrap_or_else(|e| panic!("read {file} of {}: {e}", self.uplink))
            .trim()
            .to_string()
    }

    /// The kernel's promiscuity count of the uplink (`ip -d link`).
    fn promiscuity(&self) -> u32 {
        let details = run_ok("ip", &["-d", "link", "show", &self.uplink]);
        let mut words = details.split_whitespace();
        while let Some(word) = words.next() {
            if word == "promiscuity" {
                return words.next().and_then(|n| n.parse().ok()).unwrap();
            }
        }
        panic!("no promiscuity in `ip -d link show`: {details}");
    }

    fn open(&self, queues: usize) -> (PortIo, UplinkInfo) {
        uplink::open(&self.uplink, self.switch_mac(), queues)
            .unwrap_or_else(|e| panic!("open uplink {}: {e}", self.uplink))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.uplink]);
        let _ = run("ip", &["netns", "del", &self.outside]);
    }
}

/// One frame the switch side read: which queue (or the witness socket) and the bytes
/// (virtio header + Ethernet).
#[derive(Clone, Debug)]
struct Seen {
    queue: usize,
    frame: Vec<u8>,
}

impl Seen {
    fn ethernet(&self) -> &[u8] {
        &self.frame[VNET_HDR_LEN..]
    }
    fn destination(&self) -> [u8; 6] {
        self.ethernet()[0..6].try_into().unwrap()
    }
    fn source(&self) -> [u8; 6] {
        self.ethernet()[6..12].try_into().unwrap()
    }
    fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.ethernet()[12], self.ethernet()[13]])
    }
    /// The IPv4 packet, if it is one.
    fn ipv4(&self) -> Option<&[u8]> {
        (self.ethertype() == 0x0800).then(|| &self.ethernet()[14..])
    }
    /// `(target IP, operation)` of an ARP frame.
    fn arp(&self) -> Option<(Ipv4Addr, u16)> {
        let arp = self.ethernet().get(14..42)?;
        (self.ethertype() == 0x0806).then(|| {
            let target: [u8; 4] = arp[24..28].try_into().unwrap();
            (Ipv4Addr::from(target), u16::from_be_bytes([arp[6], arp[7]]))
        })
    }
}

fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

/// The reply (virtio header + Ethernet) to an ARP request or ping for `address`, sent
/// from `mac`.
fn answer(seen: &Seen, address: Ipv4Addr, mac: [u8; 6]) -> Option<Vec<u8>> {
    let ethernet = seen.ethernet();
    let mut reply = vec![0u8; VNET_HDR_LEN];
    reply.extend_from_slice(&seen.source());
    reply.extend_from_slice(&mac);
    if seen.arp() == Some((address, 1)) {
        let arp = &ethernet[14..42];
        reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        reply.extend_from_slice(&mac);
        reply.extend_from_slice(&address.octets());
        reply.extend_from_slice(&arp[8..18]);
        return Some(reply);
    }
    let ip = seen.ipv4()?;
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[9] != 1 || ip[16..20] != address.octets() || ip.get(header_len) != Some(&8) {
        return None;
    }
    let mut packet = ip[..total_len].to_vec();
    packet.copy_within(12..16, 16);
    packet[12..16].copy_from_slice(&address.octets());
    packet[header_len] = 0;
    packet[header_len + 2..header_len + 4].copy_from_slice(&[0, 0]);
    let sum = checksum(&packet[header_len..], 0);
    packet[header_len + 2..header_len + 4].copy_from_slice(&sum.to_be_bytes());
    reply.extend_from_slice(&[0x08, 0x00]);
    reply.extend_from_slice(&packet);
    Some(reply)
}

/// How long the switch side keeps reading, once told to stop, for the frames a test still
/// waits for.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Plays the switch until `stop`, and then until `settled` holds for everything read (or
/// [`SETTLE_LIMIT`] passed): reads every uplink queue (and, when given, an unfiltered witness
/// socket on the same interface, recorded as queue `usize::MAX`), answers ARP and ping for
/// `address` with `mac`, and sends the frames that arrive on `outgoing` through queue 0.
/// Returns everything read and the number of refused sends.
fn play_switch(
    io: &PortIo,
    witness: Option<&mut PacketSocket>,
    address: Ipv4Addr,
    mac: [u8; 6],
    outgoing: &mpsc::Receiver<Vec<u8>>,
    stop: &AtomicBool,
    settled: impl Fn(&[Seen]) -> bool,
) -> (Vec<Seen>, usize) {
    let mut guards: Vec<_> = io.queues.iter().map(|q| q.lock()).collect();
    let mut witness = witness;
    let mut seen: Vec<Seen> = Vec::new();
    let mut send_errors = 0;
    let mut batch = RxBatch::new(64);
    let send = |queue: &mut PortQueue, frame: &[u8], errors: &mut usize| {
        if queue.send(frame).is_err() {
            *errors += 1;
        }
        queue.flush().expect("flush");
    };
    let mut settle_by = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let by = *settle_by.get_or_insert_with(|| Instant::now() + SETTLE_LIMIT);
            if settled(&seen[..]) || Instant::now() >= by {
                break;
            }
        }
        {
            let mut fds: Vec<PollFd<'_>> = guards
                .iter()
                .map(|g| PollFd::new(std::os::fd::AsFd::as_fd(&**g), PollFlags::POLLIN))
                .collect();
            if let Some(socket) = witness.as_deref() {
                fds.push(PollFd::new(
                    std::os::fd::AsFd::as_fd(socket),
                    PollFlags::POLLIN,
                ));
            }
            nix::poll::poll(&mut fds, PollTimeout::from(10u8)).expect("poll");
        }
        for (index, guard) in guards.iter_mut().enumerate() {
            batch.clear();
            guard
                .recv_batch(&mut batch)
                .expect("recv_batch on the uplink");
            for i in 0..batch.len() {
                let frame = Seen {
                    queue: index,
                    frame: batch.frame(i).to_vec(),
                };
                if let Some(reply) = answer(&frame, address, mac) {
                    send(guard, &reply, &mut send_errors);
                }
                seen.push(frame);
            }
        }
        if let Some(socket) = witness.as_deref_mut() {
            batch.clear();
            socket
                .recv_batch(&mut batch)
                .expect("recv_batch on the witness");
            for i in 0..batch.len() {
                seen.push(Seen {
                    queue: usize::MAX,
                    frame: batch.frame(i).to_vec(),
                });
            }
        }
        while let Ok(frame) = outgoing.try_recv() {
            send(&mut guards[0], &frame, &mut send_errors);
        }
    }
    (seen, send_errors)
}

/// Runs `body` while a switch thread serves the uplink, then lets the switch read on until
/// `settled` holds for what it read (the answers `body` caused have arrived; bounded by
/// [`SETTLE_LIMIT`], after which the caller's assertions say what is missing); returns what
/// the switch read.
fn with_switch<T>(
    topology: &Topology,
    io: &PortIo,
    witness: Option<&mut PacketSocket>,
    settled: impl Fn(&[Seen]) -> bool + Send,
    body: impl FnOnce(&mpsc::Sender<Vec<u8>>) -> T,
) -> (T, Vec<Seen>, usize) {
    let stop = AtomicBool::new(false);
    let (sender, receiver) = mpsc::channel();
    thread::scope(|scope| {
        let stop = &stop;
        let switch = scope.spawn(move || {
            play_switch(
                io,
                witness,
                topology.ip(3),
                topology.switch_mac(),
                &receiver,
                stop,
                settled,
            )
        });
        let result = body(&sender);
        stop.store(true, Ordering::SeqCst);
        let (seen, errors) = switch.join().expect("switch thread");
        (result, seen, errors)
    })
}

fn summary(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| {
            let queue = if s.queue == usize::MAX {
                "witness".to_string()
            } else {
                format!("queue {}", s.queue)
            };
            format!(
                "{queue}: {} -> {} type {:04x} len {}",
                mac_text(s.source()),
                mac_text(s.destination()),
                s.ethertype(),
                s.frame.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ping_outside(topology: &Topology, target: Ipv4Addr, count: u32) -> Output {
    topology.exec_outside(&[
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        &target.to_string(),
    ])
}

#[test]
#[ignore = "needs root: creates a namespace, a veth pair and AF_PACKET sockets"]
fn open_reports_the_interface_and_close_undoes_the_membership() {
    require_environment();
    let topology = Topology::new();
    let before = (
        topology.sys("address"),
        topology.sys("mtu"),
        topology.sys("flags"),
        run_ok("ip", &["-br", "addr", "show", &topology.uplink]),
    );
    assert_eq!(topology.promiscuity(), 0);

    let (io, info) = topology.open(2);
    assert_eq!(info.ifindex.to_string(), topology.sys("ifindex"));
    assert_eq!(info.mtu.to_string(), before.1);
    assert_eq!(mac_text(info.host_mac), before.0);
    assert!(info.filtered, "the BPF filter must attach on this kernel");
    assert_eq!(io.queues.len(), 2);
    assert_eq!(io.host_ifname.as_deref(), Some(topology.uplink.as_str()));
    let capabilities = io.capabilities;
    assert!(capabilities.vnet_hdr && capabilities.tx_partial_csum && capabilities.tx_gso);
    // veth has no unicast filter: the kernel turns the MAC membership into promiscuity.
    assert!(
        topology.promiscuity() >= 1,
        "the membership must make the veth accept the switch's MAC"
    );
    let fdb = run_ok("bridge", &["fdb", "show", "dev", &topology.uplink]);
    assert!(
        fdb.contains(&mac_text(topology.switch_mac())),
        "the switch's MAC must be in the interface's unicast list:\n{fdb}"
    );

    uplink::close(io);
    assert_eq!(
        topology.promiscuity(),
        0,
        "closing must drop the membership"
    );
    let fdb = run_ok("bridge", &["fdb", "show", "dev", &topology.uplink]);
    assert!(!fdb.contains(&mac_text(topology.switch_mac())), "{fdb}");
    let after = (
        topology.sys("address"),
        topology.sys("mtu"),
        topology.sys("flags"),
        run_ok("ip", &["-br", "addr", "show", &topology.uplink]),
    );
    assert_eq!(
        before, after,
        "the interface's configuration must not change"
    );
}

#[test]
#[ignore = "needs root: creates a namespace, a veth pair and AF_PACKET sockets"]
fn open_refuses_a_down_interface_and_a_bad_mac() {
    require_environment();
    let topology = Topology::new();
    run_ok("ip", &["link", "set", &topology.uplink, "down"]);
    let error = uplink::open(&topology.uplink, topology.switch_mac(), 1)
        .map(|_| ())
        .expect_err("a down interface is refused")
        .to_string();
    assert!(
        error.contains("is down") && error.contains(&format!("ip link set {} up", topology.uplink)),
        "the error must say to bring it up: {error}"
    );
    let state = run_ok("ip", &["-br", "link", "show", &topology.uplink]);
    assert!(
        state.contains("DOWN"),
        "open must not bring the interface up: {state}"
    );
    run_ok("ip", &["link", "set", &topology.uplink, "up"]);
    let host_mac: Vec<u8> = topology
        .sys("address")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let error = uplink::open(&topology.uplink, host_mac.try_into().unwrap(), 1)
        .map(|_| ())
        .expect_err("the host's own MAC is refused")
        .to_string();
    assert!(error.contains("interface's own"), "{error}");
}

#[test]
#[ignore = "needs root: creates a namespace, a veth pair and AF_PACKET sockets"]
fn arp_and_ping_for_the_switch_reach_it_and_host_traffic_does_not() {
    require_environment();
    let topology = Topology::new();
    let (io, info) = topology.open(2);
    let ours = topology.switch_mac();
    let foreign = [0x02, 0x00, 0x5e, 0x77, topology.octet, 0x04];
    let mut witness = PacketSocket::open(info.ifindex, RingLayout::v2_for_mtu(1500))
        .expect("unfiltered witness socket on the uplink");
    // The last frame on the wire: the outside's echo reply to the host's final ping. Once
    // the witness has it, everything before it has been read.
    let (host_ip, outside_ip) = (topology.ip(1).octets(), topology.ip(2).octets());
    let last_reply_read = move |seen: &[Seen]| {
        seen.iter().any(|s| {
            s.queue == usize::MAX
                && s.ipv4().is_some_and(|ip| {
                    let header_len = ip.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
                    ip.get(9) == Some(&1)
                        && ip.get(12..16) == Some(&outside_ip[..])
                        && ip.get(16..20) == Some(&host_ip[..])
                        && header_len >= 20
                        && ip.get(header_len) == Some(&0)
                })
        })
    };
    let ((to_switch, to_host, to_foreign), seen, send_errors) =
        with_switch(&topology, &io, Some(&mut witness), last_reply_read, |_| {
            // ARP for the switch's address (broadcast), then pings to its MAC.
            let to_switch = ping_outside(&topology, topology.ip(3), 3);
            // The host's own address: the host answers, the switch must see none of it.
            let to_host = ping_outside(&topology, topology.ip(1), 3);
            // A third MAC on the wire (the veth is promiscuous now): not the switch's either.
            topology.ip_outside(&[
                "neigh",
                "replace",
                &topology.ip(4).to_string(),
                "lladdr",
                &mac_text(foreign),
                "dev",
                &topology.peer,
                "nud",
                "permanent",
            ]);
            let to_foreign = ping_outside(&topology, topology.ip(4), 2);
            // The host talks first (outgoing ARP broadcast and ping): never read back.
            run("ip", &["neigh", "flush", "dev", &topology.uplink]);
            run_ok("ping", &["-c", "1", "-W", "2", &topology.ip(2).to_string()]);
            (to_switch, to_host, to_foreign)
        });
    let all = summary(&seen);
    let (switch, witnessed): (Vec<&Seen>, Vec<&Seen>) =
        seen.iter().partition(|s| s.queue != usize::MAX);

    assert!(
        to_switch.status.success(),
        "the switch answered ARP and ping through the uplink: {}\nframes:\n{all}",
        text(&to_switch)
    );
    assert_eq!(send_errors, 0, "the kernel refused replies");
    let neighbours = topology.ip_outside(&["neigh", "show", &topology.ip(3).to_string()]);
    assert!(
        neighbours.contains(&mac_text(ours)),
        "the outside learned the switch's MAC from its ARP reply: {neighbours}"
    );
    let arp_requests = switch
        .iter()
        .filter(|s| s.arp() == Some((topology.ip(3), 1)))
        .count();
    assert!(
        arp_requests >= 1,
        "no ARP request reached the switch:\n{all}"
    );
    let pings = switch
        .iter()
        .filter(|s| s.destination() == ours && s.ipv4().is_some_and(|ip| ip[9] == 1))
        .count();
    assert!(pings >= 3, "{pings} pings reached the switch:\n{all}");

    assert!(
        to_host.status.success(),
        "the host must still answer its own address: {}",
        text(&to_host)
    );
    assert!(!to_foreign.status.success(), "nobody owns the third MAC");
    // Without the filter these would have reached the switch: the witness saw them.
    let host_mac = info.host_mac;
    for (what, mac) in [("the host's", host_mac), ("a third", foreign)] {
        assert!(
            witnessed
                .iter()
                .any(|s| s.destination() == mac && s.ipv4().is_some()),
            "the witness never saw pings for {what} MAC, so the test proves nothing:\n{all}"
        );
    }
    for frame in &switch {
        let broadcast_arp = frame.destination() == [0xff; 6] && frame.ethertype() == 0x0806;
        // Neighbour solicitations (the switch's IPv6 addresses among them) are let through.
        let solicited_node =
            frame.destination()[..3] == [0x33, 0x33, 0xff] && frame.ethertype() == 0x86dd;
        assert!(
            frame.destination() == ours || broadcast_arp || solicited_node,
            "the filter let through a frame not for the switch: {}\nall frames:\n{all}",
            summary(&[(*frame).clone()])
        );
        assert_ne!(
            frame.source(),
            host_mac,
            "a frame the host sent was read back as received:\n{all}"
        );
    }
}

/// An Ethernet + IPv4 header from the switch (198.19.x.3) to the outside (198.19.x.2).
fn ipv4_frame(topology: &Topology, peer_mac: [u8; 6], protocol: u8, payload_len: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&peer_mac);
    frame.extend_from_slice(&topology.switch_mac());
    frame.extend_from_slice(&[0x08, 0x00]);
    let total = u16::try_from(20 + payload_len).unwrap();
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]);
    ip.extend_from_slice(&topology.ip(3).octets());
    ip.extend_from_slice(&topology.ip(2).octets());
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame
}

/// The pseudo-header sum (not complemented) that a partial checksum field holds.
fn pseudo_header_seed(topology: &Topology, protocol: u8, length: usize) -> [u8; 2] {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&topology.ip(3).octets());
    pseudo.extend_from_slice(&topology.ip(2).octets());
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&u16::try_from(length).unwrap().to_be_bytes());
    (!checksum(&pseudo, 0)).to_be_bytes()
}

fn vnet(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, start: u16, offset: u16) -> Vec<u8> {
    let mut header = vec![flags, gso_type];
    for field in [hdr_len, gso_size, start, offset] {
        header.extend_from_slice(&field.to_le_bytes());
    }
    header
}

#[test]
#[ignore = "needs root: creates a namespace, a veth pair and AF_PACKET sockets"]
fn offloads_cross_the_uplink_both_ways() {
    require_environment();
    let topology = Topology::new();
    let (io, _info) = topology.open(1);
    let peer_mac: [u8; 6] = topology
        .ip_outside(&["-br", "link", "show", &topology.peer])
        .split_whitespace()
        .nth(2)
        .unwrap()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    topology.ip_outside(&[
        "neigh",
        "replace",
        &topology.ip(3).to_string(),
        "lladdr",
        &mac_text(topology.switch_mac()),
        "dev",
        &topology.peer,
        "nud",
        "permanent",
    ]);

    // A TCP super-frame of 3000 bytes (gso_size 1000, partial checksum) to a closed port:
    // the outside answers each segment it gets with a RST acknowledging up to its end.
    let payload = 3000usize;
    let sequence: u32 = 0x1000_0000;
    let mut tcp_frame = vnet(1, 1, 54, 1000, 34, 16);
    tcp_frame.extend_from_slice(&ipv4_frame(&topology, peer_mac, 6, 20 + payload));
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&40000u16.to_be_bytes());
    tcp.extend_from_slice(&9u16.to_be_bytes());
    tcp.extend_from_slice(&sequence.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, 0x08, 0xff, 0xff]); // 20 bytes, PSH
    tcp.extend_from_slice(&pseudo_header_seed(&topology, 6, 20 + payload));
    tcp.extend_from_slice(&[0, 0]);
    tcp.extend((0..payload).map(|i| u8::try_from(i % 251).unwrap()));
    tcp_frame.extend_from_slice(&tcp);

    // A UDP datagram with a partial checksum to a closed port: answered by ICMP port
    // unreachable.
    let mut udp_frame = vnet(1, 0, 0, 0, 34, 6);
    udp_frame.extend_from_slice(&ipv4_frame(&topology, peer_mac, 17, 8 + 100));
    udp_frame.extend_from_slice(&40001u16.to_be_bytes());
    udp_frame.extend_from_slice(&9u16.to_be_bytes());
    udp_frame.extend_from_slice(&108u16.to_be_bytes());
    udp_frame.extend_from_slice(&pseudo_header_seed(&topology, 17, 108));
    udp_frame.extend_from_slice(&[0x5a; 100]);

    // From the outside, one UDP GSO send (UDP_SEGMENT = 103) of 3 x 1000 bytes to the switch.
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_UDP, 103, 1000)\n\
         s.sendto(bytes(3000), ('{}', 9999))\n",
        topology.ip(3)
    );

    // What the switch waits for: RSTs up to the end of the TCP super-frame, the ICMP port
    // unreachable for the UDP datagram, and the outside's UDP GSO datagram.
    let resets = |seen: &[Seen]| -> Vec<u32> {
        seen.iter()
            .filter_map(|s| {
                let ip = s.ipv4()?;
                let tcp = &ip[usize::from(ip[0] & 0x0f) * 4..];
                (ip[9] == 6 && tcp[13] & 0x04 != 0 && tcp[2..4] == 40000u16.to_be_bytes())
                    .then(|| u32::from_be_bytes(tcp[8..12].try_into().unwrap()))
            })
            .collect()
    };
    let port_unreachable = |seen: &[Seen]| {
        seen.iter().any(|s| {
            s.ipv4().is_some_and(|ip| {
                let icmp = &ip[usize::from(ip[0] & 0x0f) * 4..];
                ip[9] == 1 && icmp[0] == 3 && icmp[1] == 3
            })
        })
    };
    let is_gso_datagram = |s: &Seen| {
        s.ipv4()
            .is_some_and(|ip| ip[9] == 17 && ip[22..24] == 9999u16.to_be_bytes())
    };
    let expected_end = sequence + u32::try_from(payload).unwrap();
    let answered = move |seen: &[Seen]| {
        resets(seen).iter().max() == Some(&expected_end)
            && port_unreachable(seen)
            && seen.iter().any(is_gso_datagram)
    };

    let (python, seen, send_errors) = with_switch(&topology, &io, None, answered, |outgoing| {
        outgoing.send(tcp_frame.clone()).unwrap();
        outgoing.send(udp_frame.clone()).unwrap();
        topology.exec_outside(&["python3", "-c", &script])
    });
    let all = summary(&seen);
    assert_eq!(
        send_errors, 0,
        "the kernel refused a GSO or partial-checksum frame"
    );

    // TCP: RSTs from the outside acknowledge every byte of the super-frame.
    let resets = resets(&seen[..]);
    assert_eq!(
        resets.iter().max(),
        Some(&expected_end),
        "RSTs (acks {resets:x?}) must cover the whole super-frame:\n{all}"
    );
    eprintln!(
        "TCP super-frame of {payload} bytes reached the outside as {} segment(s)",
        resets.len()
    );

    // UDP with a partial checksum: delivered (port unreachable comes back).
    assert!(
        port_unreachable(&seen[..]),
        "no ICMP port unreachable for the partial-checksum datagram:\n{all}"
    );

    // Receive: the outside's UDP GSO send arrives as one frame with its virtio header.
    assert!(
        python.status.success(),
        "python3 UDP_SEGMENT send: {}",
        text(&python)
    );
    let gso = seen
        .iter()
        .find(|s| is_gso_datagram(s))
        .unwrap_or_else(|| panic!("the UDP GSO datagram never reached the switch:\n{all}"));
    let header = &gso.frame[..VNET_HDR_LEN];
    assert_eq!(
        gso.ethernet().len(),
        14 + 20 + 8 + 3000,
        "one whole super-frame; virtio header {header:?}"
    );
    assert_eq!(header[1], 5, "gso_type UDP_L4: {header:?}");
    assert_eq!(
        u16::from_le_bytes([header[4], header[5]]),
        1000,
        "gso_size: {header:?}"
    );
    assert_eq!(
        header[0] & 1,
        1,
        "partial checksum (NEEDS_CSUM): {header:?}"
    );
}
