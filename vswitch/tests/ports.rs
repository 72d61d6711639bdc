//! Integration tests of the TAP and veth ports: real namespaces, real devices, real `ping`.
//!
//! Each test creates its own namespaces (`vst-ports-<pid>-<n>`) and removes them, and the
//! ports' devices, in `Drop`. The switch side is played by a responder thread that answers
//! ARP and ICMP echo for the gateway address through the port's queues. Needs root (netns,
//! TAP, AF_PACKET) and iproute2 + ping; without them the tests fail and say so.
//!
//! Every test needs root and is `#[ignore]`d for a plain `cargo test`; run them with
//! `sudo ./scripts/test.sh --test ports` (or `cargo test -p vswitch --test ports --
//! --include-ignored` as root).

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use ipnet::Ipv4Net;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use parking_lot::Mutex;
use vswitch::port::{self, AttachRequest, PortError, PortIo, PortKind, PortQueue, RxBatch};
use vswitch::sys::netns::NetnsRef;
use vswitch::wire::VNET_HDR_LEN;

/// The MAC the responder answers with for the gateway.
const GATEWAY_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0xff, 0xff, 0x01];
const GATEWAY_MAC_TEXT: &str = "02:00:5e:ff:ff:01";

static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Attach/detach in parallel tests is fine, but the `ip` output checks read whole tables;
/// serialise the tests so failures are readable.
static SERIAL: StdMutex<()> = StdMutex::new(());

fn require_environment() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/ports.rs needs root (network namespaces, TAP devices, AF_PACKET sockets): \
         run `sudo ./scripts/test.sh --test ports`"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "tests/ports.rs needs /dev/net/tun (the tun module) for TAP ports"
    );
    for tool in [["ip", "-V"], ["ping", "-V"]] {
        let ok = Command::new(tool[0])
            .arg(tool[1])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "tests/ports.rs needs `{}` (install iproute2 and iputils-ping)",
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

fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A namespace of our own, deleted on drop.
struct Netns {
    name: String,
    index: usize,
}

impl Netns {
    fn new() -> Netns {
        let index = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("vst-ports-{}-{index}", std::process::id());
        run_ok("ip", &["netns", "add", &name]);
        Netns { name, index }
    }

    fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn ip_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A subnet no other test uses: 172.30.(100 + index).0/24.
    fn octet(&self) -> u8 {
        u8::try_from(100 + self.index % 150).unwrap()
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, self.octet(), 1)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Detaches the port on drop, so a failing test leaves no device behind.
struct PortGuard(AttachRequest);

impl Drop for PortGuard {
    fn drop(&mut self) {
        let _ = port::detach(&self.0, None);
    }
}

fn request(ns: &Netns, kind: PortKind) -> AttachRequest {
    let octet = ns.octet();
    AttachRequest {
        name: format!("{}-{kind:?}", ns.name),
        netns: NetnsRef::Name(ns.name.clone()),
        ifname: "eth0".into(),
        kind,
        mac: [0x02, 0x00, 0x5e, 0x10, octet, 0x02],
        mtu: 1400,
        addresses: vec![Ipv4Net::new(Ipv4Addr::new(172, 30, octet, 2), 24).unwrap()],
        gateway: Some(ns.gateway()),
        routes: Vec::new(),
        routes6: Vec::new(),
        address6: None,
        gateway6: None,
        queues: 2,
        resolv_conf: None,
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the responder saw.
#[derive(Debug, Default)]
struct Seen {
    /// ARP requests for the gateway, per queue.
    arp_requests: Vec<usize>,
    /// The virtio header of the first ARP request.
    first_arp_vnet: Option<Vec<u8>>,
    echo_requests: usize,
    /// Replies the kernel refused.
    send_errors: usize,
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap()
}

/// The reply to `frame` (virtio header + Ethernet) if it is an ARP request or ICMP echo
/// request for `gateway`.
fn respond(frame: &[u8], gateway: Ipv4Addr, seen: &mut Seen, queue: usize) -> Option<Vec<u8>> {
    let gateway = gateway.octets();
    if frame.len() < VNET_HDR_LEN + 14 {
        return None;
    }
    let (vnet, ethernet) = frame.split_at(VNET_HDR_LEN);
    let ethertype = u16::from_be_bytes([ethernet[12], ethernet[13]]);
    let mut reply = vec![0u8; VNET_HDR_LEN];
    match ethertype {
        0x0806 => {
            let arp = &ethernet[14..];
            if arp.len() < 28 || arp[6..8] != [0, 1] || arp[24..28] != gateway {
                return None;
            }
            seen.arp_requests[queue] += 1;
            seen.first_arp_vnet.get_or_insert_with(|| vnet.to_vec());
            reply.extend_from_slice(&ethernet[6..12]);
            reply.extend_from_slice(&GATEWAY_MAC);
            reply.extend_from_slice(&[0x08, 0x06]);
            reply.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]);
            reply.extend_from_slice(&GATEWAY_MAC);
            reply.extend_from_slice(&gateway);
            reply.extend_from_slice(&arp[8..14]);
            reply.extend_from_slice(&arp[14..18]);
            Some(reply)
        }
        0x0800 => {
            let ip = &ethernet[14..];
            let header_len = usize::from(ip.first()? & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            if ip.len() < total_len || total_len < header_len + 8 {
                return None;
            }
            if ip[9] != 1 || ip[16..20] != gateway || ip[header_len] != 8 {
                return None;
            }
            seen.echo_requests += 1;
            reply.extend_from_slice(&ethernet[6..12]);
            reply.extend_from_slice(&GATEWAY_MAC);
            reply.extend_from_slice(&[0x08, 0x00]);
            let mut packet = ip[..total_len].to_vec();
            packet.copy_within(12..16, 16);
            packet[12..16].copy_from_slice(&gateway);
            // Swapping the addresses leaves the IPv4 header checksum unchanged.
            packet[header_len] = 0;
            packet[header_len + 2..header_len + 4].copy_from_slice(&[0, 0]);
            let sum = checksum(&packet[header_len..]);
            packet[header_len + 2..header_len + 4].copy_from_slice(&sum.to_be_bytes());
            reply.extend_from_slice(&packet);
            Some(reply)
        }
        _ => None,
    }
}

fn queue_fd(queue: &PortQueue) -> BorrowedFd<'_> {
    match queue {
        PortQueue::Tap(q) => q.as_fd(),
        PortQueue::Packet(s) => s.as_fd(),
    }
}

/// Plays the switch on `queues` until `stop`: answers ARP and ping for `gateway`.
fn serve(queues: &[Mutex<PortQueue>], gateway: Ipv4Addr, stop: &AtomicBool) -> Seen {
    let mut seen = Seen {
        arp_requests: vec![0; queues.len()],
        ..Seen::default()
    };
    let mut guards: Vec<_> = queues.iter().map(|q| q.lock()).collect();
    let mut batch = RxBatch::new(32);
    while !stop.load(Ordering::SeqCst) {
        {
            let mut fds: Vec<PollFd<'_>> = guards
                .iter()
                .map(|g| PollFd::new(queue_fd(g), PollFlags::POLLIN))
                .collect();
            nix::poll::poll(&mut fds, PollTimeout::from(20u8)).expect("poll");
        }
        // Read every queue every round, whichever woke us.
        for (index, guard) in guards.iter_mut().enumerate() {
            batch.clear();
            guard.recv_batch(&mut batch).expect("recv_batch");
            for i in 0..batch.len() {
                if let Some(reply) = respond(batch.frame(i), gateway, &mut seen, index) {
                    if guard.send(&reply).is_err() {
                        seen.send_errors += 1;
                    }
                    guard.flush().expect("flush");
                }
            }
        }
    }
    seen
}

/// Pings the gateway from `ns` while a responder serves `queues`; returns the responder's
/// view, ping's output and whether ping succeeded.
fn ping_through(ns: &Netns, queues: &[Mutex<PortQueue>], count: u32) -> (Seen, String, bool) {
    let stop = AtomicBool::new(false);
    let gateway = ns.gateway();
    thread::scope(|scope| {
        let responder = scope.spawn(|| serve(queues, gateway, &stop));
        let count = count.to_string();
        let output = ns.exec(&[
            "ping",
            "-c",
            &count,
            "-i",
            "0.1",
            "-W",
            "2",
            &gateway.to_string(),
        ]);
        stop.store(true, Ordering::SeqCst);
        let seen = responder.join().expect("responder");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (seen, text, output.status.success())
    })
}

/// RTT figures from ping's `rtt min/avg/max/mdev = a/b/c/d ms` line, in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Rtt {
    min: f64,
    avg: f64,
    max: f64,
}

fn parse_rtt(ping_output: &str) -> Option<Rtt> {
    let line = ping_output.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.trim().trim_end_matches(" ms");
    let mut values = values.split('/').map(|v| v.trim().parse::<f64>());
    Some(Rtt {
        min: values.next()?.ok()?,
        avg: values.next()?.ok()?,
        max: values.next()?.ok()?,
    })
}

/// Checks the interface configuration inside the namespace.
fn assert_configured(ns: &Netns, req: &AttachRequest) {
    let link = ns.ip_ok(&["link", "show", "dev", "eth0"]);
    assert!(link.contains(&mac_text(req.mac)), "MAC in:\n{link}");
    assert!(link.contains("mtu 1400"), "MTU in:\n{link}");
    assert!(link.contains("UP"), "UP in:\n{link}");
    let addr = ns.ip_ok(&["-4", "addr", "show", "dev", "eth0"]);
    let expected = format!("inet {}", req.addresses[0]);
    assert!(addr.contains(&expected), "expected {expected} in:\n{addr}");
    let route = ns.ip_ok(&["-4", "route"]);
    let expected = format!("default via {} dev eth0", ns.gateway());
    assert!(
        route.contains(&expected),
        "expected {expected} in:\n{route}"
    );
    let lo = ns.ip_ok(&["link", "show", "dev", "lo"]);
    assert!(lo.contains("UP"), "lo up in:\n{lo}");
}

/// Pings through `io`, checks the ARP request arrived with a virtio header, that the ARP
/// reply was accepted, and returns ping's RTT figures.
fn assert_traffic(ns: &Netns, io: &PortIo, what: &str, count: u32) -> Rtt {
    let (seen, output, ok) = ping_through(ns, &io.queues, count);
    assert!(
        ok,
        "{what}: ping through the port failed:\n{output}\nresponder saw {seen:?}"
    );
    assert!(
        seen.arp_requests.iter().sum::<usize>() >= 1,
        "{what}: no ARP request (ethertype 0x0806 after a {VNET_HDR_LEN}-byte virtio header) \
         on any queue: {seen:?}"
    );
    let vnet = seen.first_arp_vnet.clone().unwrap();
    assert_eq!(
        vnet,
        vec![0; VNET_HDR_LEN],
        "{what}: an ARP request carries no offload in its virtio header"
    );
    assert_eq!(seen.send_errors, 0, "{what}: replies refused: {seen:?}");
    assert!(seen.echo_requests >= count as usize, "{what}: {seen:?}");
    let neighbours = ns.ip_ok(&["neigh", "show", "dev", "eth0"]);
    assert!(
        neighbours.contains(&format!("{} lladdr {GATEWAY_MAC_TEXT}", ns.gateway())),
        "{what}: the ARP reply sent through the port is not in the neighbour table:\n{neighbours}"
    );
    let rtt = parse_rtt(&output).expect("ping prints an rtt line");
    eprintln!(
        "{what}: ping RTT min/avg/max {:.3}/{:.3}/{:.3} ms, ARP requests per queue {:?}",
        rtt.min, rtt.avg, rtt.max, seen.arp_requests
    );
    rtt
}

fn attach_ping_reopen_detach(kind: PortKind) {
    require_environment();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new();
    let req = request(&ns, kind);
    let guard = PortGuard(req.clone());
    let io = port::attach(&req).unwrap_or_else(|e| panic!("attach {kind:?}: {e}"));
    assert_eq!(io.kind, kind);
    assert_eq!(io.queues.len(), 2);
    assert!(io.capabilities.vnet_hdr);
    assert!(io.capabilities.tx_partial_csum && io.capabilities.tx_gso);
    let host = port::host_ifname(&req.name);
    match kind {
        PortKind::Tap => {
            assert_eq!(io.host_ifname, None);
            assert_eq!(io.capabilities.tun_offload_flags, 0x0f);
            // The temporary name is not left in the daemon's namespace.
            assert!(!run("ip", &["link", "show", "dev", &host]).status.success());
            let details = ns.ip_ok(&["-d", "link", "show", "dev", "eth0"]);
            assert!(details.contains("tun type tap"), "a TAP:\n{details}");
            assert!(details.contains("multi_queue"), "multi-queue:\n{details}");
            assert!(details.contains("vnet_hdr"), "vnet_hdr:\n{details}");
            assert!(details.contains("persist"), "persistent:\n{details}");
        }
        PortKind::Veth => {
            assert_eq!(io.host_ifname.as_deref(), Some(host.as_str()));
            let link = run_ok("ip", &["link", "show", "dev", &host]);
            assert!(
                link.contains("mtu 1400") && link.contains("NOARP"),
                "{link}"
            );
            let disabled =
                std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"))
                    .unwrap();
            assert_eq!(disabled.trim(), "1");
            let details = ns.ip_ok(&["-d", "link", "show", "dev", "eth0"]);
            assert!(details.contains("veth"), "a veth:\n{details}");
        }
    }
    assert_configured(&ns, &req);
    assert_traffic(&ns, &io, &format!("{kind:?} attach"), 5);

    // A daemon restart: the queues are closed without detach, the device stays.
    drop(io);
    assert!(ns.ip(&["link", "show", "dev", "eth0"]).status.success());
    let io = port::reopen(&req).unwrap_or_else(|e| panic!("reopen {kind:?}: {e}"));
    assert_eq!(io.queues.len(), 2);
    // Forget the gateway's MAC so the ARP exchange runs again through the new queues.
    let _ = ns.ip(&["neigh", "flush", "dev", "eth0"]);
    assert_traffic(&ns, &io, &format!("{kind:?} reopen"), 5);

    port::detach(&req, Some(io)).unwrap_or_else(|e| panic!("detach {kind:?}: {e}"));
    let after = ns.ip(&["link", "show", "dev", "eth0"]);
    assert!(!after.status.success(), "eth0 still exists after detach");
    assert!(!run("ip", &["link", "show", "dev", &host]).status.success());
    match port::reopen(&req) {
        Err(PortError::Gone { .. }) => {}
        other => panic!("reopen after detach: expected Gone, got {other:?}"),
    }
    // Detaching again is fine.
    port::detach(&req, None).unwrap();
    drop(guard);
}

#[test]
#[ignore = "needs root: creates a namespace and a TAP port"]
fn tap_attach_ping_reopen_detach() {
    attach_ping_reopen_detach(PortKind::Tap);
}

#[test]
#[ignore = "needs root: creates a namespace, a veth port and AF_PACKET sockets"]
fn veth_attach_ping_reopen_detach() {
    attach_ping_reopen_detach(PortKind::Veth);
}

#[test]
#[ignore = "needs root: attaches TAP and veth ports"]
fn missing_namespace_is_a_netns_error() {
    require_environment();
    for kind in [PortKind::Tap, PortKind::Veth] {
        let mut req = AttachRequest {
            name: format!("vst-ports-{}-missing-{kind:?}", std::process::id()),
            netns: NetnsRef::Name(format!("vst-ports-{}-no-such-ns", std::process::id())),
            ifname: "eth0".into(),
            kind,
            mac: [0x02, 0, 0, 0, 0, 1],
            mtu: 1500,
            addresses: vec![],
            gateway: None,
            routes: Vec::new(),
            routes6: Vec::new(),
            address6: None,
            gateway6: None,
            queues: 2,
            resolv_conf: None,
        };
        match port::attach(&req) {
            Err(PortError::Netns { .. }) => {}
            other => panic!("{kind:?} into a missing namespace: expected Netns, got {other:?}"),
        }
        req.netns = NetnsRef::Pid(u32::MAX - 1);
        match port::attach(&req) {
            Err(PortError::Netns { .. }) => {}
            other => panic!("{kind:?} into a missing pid: expected Netns, got {other:?}"),
        }
        let host = port::host_ifname(&req.name);
        assert!(!run("ip", &["link", "show", "dev", &host]).status.success());
        match port::reopen(&req) {
            Err(PortError::Gone { .. }) => {}
            other => {
                panic!("{kind:?} reopen in a missing namespace: expected Gone, got {other:?}")
            }
        }
        port::detach(&req, None).expect("detaching from a missing namespace is fine");
    }
}

#[test]
#[ignore = "needs root: creates namespaces, veth pairs and TAP/veth ports"]
fn taken_ifname_is_refused_and_leaves_nothing() {
    require_environment();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for kind in [PortKind::Tap, PortKind::Veth] {
        let ns = Netns::new();
        ns.ip_ok(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ]);
        let before = ns.ip_ok(&["-o", "link", "show"]);
        let req = request(&ns, kind);
        let _guard = PortGuard(req.clone());
        match port::attach(&req) {
            Err(PortError::IfnameTaken { ifname, .. }) => assert_eq!(ifname, "eth0"),
            other => panic!("{kind:?} with eth0 taken: expected IfnameTaken, got {other:?}"),
        }
        let after = ns.ip_ok(&["-o", "link", "show"]);
        assert_eq!(before, after, "{kind:?}: the container's links changed");
        let host = port::host_ifname(&req.name);
        let host_after = run_ok("ip", &["-o", "link", "show"]);
        assert!(!host_after.contains(&host), "{kind:?}: {host} left behind");
        assert!(!host_after.contains(&format!("vp{}", &host[2..])));
    }
}

/// When the container's namespace disappears, the queues report it: errors from
/// `recv_batch`/`send` (TAP: EBADFD; veth: ENETDOWN once, then ENXIO on send), so a
/// worker can stop polling them; reopen says Gone and detach is fine.
#[test]
#[ignore = "needs root: creates and deletes namespaces with TAP and veth ports"]
fn queues_report_a_vanished_namespace() {
    require_environment();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for kind in [PortKind::Tap, PortKind::Veth] {
        let ns = Netns::new();
        let req = request(&ns, kind);
        let _guard = PortGuard(req.clone());
        let io = port::attach(&req).unwrap_or_else(|e| panic!("attach {kind:?}: {e}"));
        run_ok("ip", &["netns", "del", &ns.name]);
        let mut batch = RxBatch::new(8);
        // Namespace teardown is asynchronous: give it up to 10 s.
        let errors = common::wait_until(
            &format!("{kind:?}: the queues to report the vanished namespace"),
            std::time::Duration::from_secs(10),
            || {
                let mut errors = Vec::new();
                for queue in &io.queues {
                    let mut queue = queue.lock();
                    batch.clear();
                    if let Err(e) = queue.recv_batch(&mut batch) {
                        errors.push(format!("recv: {e}"));
                    }
                    if let Err(e) = queue.send(&[0u8; 60]) {
                        errors.push(format!("send: {e}"));
                    }
                }
                (!errors.is_empty()).then_some(errors)
            },
        );
        eprintln!("{kind:?} after the namespace vanished: {errors:?}");
        match port::reopen(&req) {
            Err(PortError::Gone { .. }) => {}
            other => panic!("{kind:?}: reopen after the namespace vanished: {other:?}"),
        }
        port::detach(&req, Some(io)).unwrap();
    }
}

/// What the forwarder saw crossing in one direction.
#[derive(Debug, Default, Clone, Copy)]
struct Crossing {
    frames: usize,
    super_frames: usize,
    partial_checksums: usize,
    largest: usize,
    send_errors: usize,
}

/// Copies every frame, virtio header included, from each port to the other (the way the
/// switch forwards between two ports that both take offloads) until `stop`.
fn forward(a: &[Mutex<PortQueue>], b: &[Mutex<PortQueue>], stop: &AtomicBool) -> [Crossing; 2] {
    let mut ports = [
        a.iter().map(|q| q.lock()).collect::<Vec<_>>(),
        b.iter().map(|q| q.lock()).collect::<Vec<_>>(),
    ];
    let mut seen = [Crossing::default(); 2];
    let mut batch = RxBatch::new(64);
    while !stop.load(Ordering::SeqCst) {
        {
            let mut fds: Vec<PollFd<'_>> = ports
                .iter()
                .flatten()
                .map(|g| PollFd::new(queue_fd(g), PollFlags::POLLIN))
                .collect();
            nix::poll::poll(&mut fds, PollTimeout::from(20u8)).expect("poll");
        }
        for from in 0..2 {
            let to = 1 - from;
            for queue in 0..ports[from].len() {
                batch.clear();
                ports[from][queue]
                    .recv_batch(&mut batch)
                    .expect("recv_batch");
                for i in 0..batch.len() {
                    let frame = batch.frame(i);
                    let crossing = &mut seen[from];
                    crossing.frames += 1;
                    crossing.largest = crossing.largest.max(frame.len());
                    // virtio_net_hdr: flags (bit 0 NEEDS_CSUM), then gso_type.
                    if frame[0] & 1 != 0 {
                        crossing.partial_checksums += 1;
                    }
                    if frame[1] != 0 {
                        crossing.super_frames += 1;
                    }
                    if ports[to][0].send(frame).is_err() {
                        crossing.send_errors += 1;
                    }
                }
            }
        }
    }
    seen
}

/// TCP between a container on a TAP port and one on a veth port, through a forwarder that
/// passes frames on untouched: TCP super-frames (up to 64 KiB, read from the veth through
/// the ring's copy path) and partial checksums cross in both directions, and the
/// containers keep their offloads on.
#[test]
#[ignore = "needs root: creates namespaces with TAP and veth ports"]
fn tcp_super_frames_cross_between_tap_and_veth() {
    require_environment();
    let iperf = Command::new("iperf3").arg("-v").output();
    assert!(
        iperf.is_ok_and(|o| o.status.success()),
        "tests/ports.rs needs iperf3 (apt-get install iperf3)"
    );
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tap_ns = Netns::new();
    let veth_ns = Netns::new();
    let octet = tap_ns.octet();
    let tap_address = Ipv4Addr::new(172, 30, octet, 2);
    let veth_address = Ipv4Addr::new(172, 30, octet, 3);
    let mut tap_req = request(&tap_ns, PortKind::Tap);
    tap_req.gateway = None;
    tap_req.addresses = vec![Ipv4Net::new(tap_address, 24).unwrap()];
    let mut veth_req = request(&veth_ns, PortKind::Veth);
    veth_req.gateway = None;
    veth_req.mac[5] = 3;
    veth_req.addresses = vec![Ipv4Net::new(veth_address, 24).unwrap()];
    let _guards = (PortGuard(tap_req.clone()), PortGuard(veth_req.clone()));
    let tap = port::attach(&tap_req).unwrap_or_else(|e| panic!("attach TAP: {e}"));
    let veth = port::attach(&veth_req).unwrap_or_else(|e| panic!("attach veth: {e}"));
    let offloads = tap_ns.exec(&["ethtool", "-k", "eth0"]);
    let offloads = String::from_utf8_lossy(&offloads.stdout).into_owned();
    eprintln!(
        "TAP container offloads: {}",
        offloads
            .lines()
            .filter(
                |l| l.contains("tx-checksum-ip-generic") || l.contains("tcp-segmentation-offload")
            )
            .collect::<Vec<_>>()
            .join("; ")
    );
    let stop = AtomicBool::new(false);
    let (seen, outputs) = thread::scope(|scope| {
        let forwarder = scope.spawn(|| forward(&tap.queues, &veth.queues, &stop));
        let mut outputs = Vec::new();
        for reverse in [false, true] {
            let mut server = Command::new("ip")
                .args(["netns", "exec", &veth_ns.name, "iperf3", "-s", "-1", "-B"])
                .arg(veth_address.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("iperf3 server");
            common::wait_listening(&veth_ns.name, "tcp", ":5201", &mut server);
            let target = veth_address.to_string();
            let mut args = vec![
                "iperf3",
                "-c",
                &target,
                "-t",
                "1",
                "--connect-timeout",
                "3000",
            ];
            if reverse {
                args.push("-R");
            }
            let output = tap_ns.exec(&args);
            let _ = server.kill();
            let _ = server.wait();
            outputs.push((reverse, output));
        }
        stop.store(true, Ordering::SeqCst);
        (forwarder.join().expect("forwarder"), outputs)
    });
    for (reverse, output) in &outputs {
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "iperf3 (reverse: {reverse}) failed: {text}{}\nforwarder saw {seen:?}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("sender") || l.contains("receiver"))
            .collect();
        eprintln!("iperf3 TAP -> veth (reverse: {reverse}): {summary:?}");
    }
    eprintln!("forwarder: from TAP {:?}, from veth {:?}", seen[0], seen[1]);
    let (from_tap, from_veth) = (seen[0], seen[1]);
    assert!(
        from_tap.super_frames > 0 && from_tap.largest > 1400 + 14 + VNET_HDR_LEN,
        "the TAP handed over no TCP super-frame: {from_tap:?}"
    );
    assert!(from_tap.partial_checksums > 0, "{from_tap:?}");
    assert!(
        from_veth.super_frames > 0 && from_veth.largest > 1400 + 14 + VNET_HDR_LEN,
        "the veth handed over no TCP super-frame: {from_veth:?}"
    );
    assert!(from_veth.partial_checksums > 0, "{from_veth:?}");
    let truncated: u64 = veth
        .queues
        .iter()
        .map(|q| match &*q.lock() {
            PortQueue::Packet(s) => s.truncated_frames(),
            PortQueue::Tap(_) => 0,
        })
        .sum();
    eprintln!("veth frames dropped as truncated: {truncated}");
}
