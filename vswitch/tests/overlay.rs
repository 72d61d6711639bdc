//! End-to-end VXLAN overlay: node namespaces joined by an underlay bridge, `vswitchd` running
//! inside each node (hub, runners, mesh nodes), and nodes built only from Linux kernel pieces
//! (a `vxlan` device and a bridge) as peers.
//!
//! Topology of every test: a namespace holding a Linux bridge (the underlay "switch"), and
//! one namespace per node joined to it by a veth pair whose node end is `eth0` with an
//! address like 192.168.50.N/24. Containers are namespaces attached by the node's daemon (or,
//! on a kernel node, joined to its bridge by a veth pair).

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    Daemon, Etcd, Netns, Underlay, iperf3_tcp, kernel_vxlan_node, kernel_vxlan_node_with, require,
    tail, wait_until,
};
use serde_json::Value;

/// The bearer token of the hubs in these tests.
const TOKEN: &str = "s3cret-overlay-token";

/// The VXLAN drop reasons a malformed datagram can hit on receive.
const RX_REASONS: [&str; 5] = [
    "vxlan.truncated",
    "vxlan.bad_flags",
    "vxlan.reserved_bits",
    "vxlan.unknown_vni",
    "vxlan.inner_truncated",
];

/// Applies `yaml`, expects a refusal; returns the exit code and stdout+stderr.
fn apply_refused(daemon: &Daemon, yaml: &str) -> (Option<i32>, String) {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), yaml).expect("write");
    let out = daemon.ctl(&["apply", "-f", file.path().to_str().expect("utf8")]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "apply should have been refused but succeeded:\n{text}\ndaemon log (tail):\n{}",
        tail(&daemon.log_text(), 30)
    );
    (out.status.code(), text)
}

fn hub_overlay(name: &str, address: &str, extra: &str) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: {name}\nspec:\n  role: hub\n  localAddress: {address}\n  token: {TOKEN}\n{extra}"
    )
}

/// A runner that trusts the hub whose certificate has the fingerprint `pin`.
fn runner_overlay(name: &str, address: &str, hub: &str, pin: &str, extra: &str) -> String {
    runner_overlay_tls(
        name,
        address,
        hub,
        &format!("{{fingerprint: '{pin}'}}"),
        extra,
    )
}

/// A runner with `spec.hub.tls: TLS` (a YAML flow mapping).
fn runner_overlay_tls(name: &str, address: &str, hub: &str, tls: &str, extra: &str) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: {name}\nspec:\n  role: runner\n  localAddress: {address}\n  hub:\n    address: {hub}\n    token: {TOKEN}\n    tls: {tls}\n  heartbeatSeconds: 1\n{extra}"
    )
}

/// Waits until the hub serves TLS; answers the fingerprint of its certificate (what
/// `vswitchctl overlay` shows for runners to pin).
fn hub_fingerprint(hub: &Daemon) -> String {
    let view = wait_overlay(
        hub,
        "the hub to be up and serve TLS",
        Duration::from_secs(20),
        |v| v["state"] == "Up" && v["tls"]["fingerprint"].is_string(),
    );
    assert_eq!(view["tls"]["enabled"], true, "{view}");
    let text = hub.ctl_ok(&["overlay"]);
    let pin = view["tls"]["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        text.contains(&pin),
        "`vswitchctl overlay` on the hub must show the fingerprint {pin}:\n{text}"
    );
    pin
}

fn mesh_overlay(name: &str, address: &str, peers: &[&str]) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: {name}\nspec:\n  role: mesh\n  localAddress: {address}\n  peers: [{}]\n",
        peers.join(", ")
    )
}

/// `vswitchctl overlay -o json`, or None while it fails (e.g. no Overlay yet).
fn overlay_view(daemon: &Daemon) -> Option<Value> {
    let out = daemon.ctl(&["overlay", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls `vswitchctl overlay -o json` until `done` holds; panics with the last view and the
/// daemon log after `within`.
fn wait_overlay(
    daemon: &Daemon,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(view) = overlay_view(daemon) {
            if done(&view) {
                return view;
            }
            last = Some(view);
        }
        if Instant::now() >= deadline {
            let last_text = match &last {
                Some(view) => serde_json::to_string_pretty(view).unwrap_or_default(),
                None => String::from_utf8_lossy(&daemon.ctl(&["overlay", "-o", "json"]).stderr)
                    .into_owned(),
            };
            panic!(
                "timed out after {within:?} waiting for: {what}\nlast `vswitchctl overlay -o json`:\n{last_text}\ndaemon log (tail):\n{}",
                tail(&daemon.log_text(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until a runner's overlay state is `registered` and its Subnet `overlay` exists.
fn wait_registered(daemon: &Daemon, name: &str) -> Value {
    let view = wait_overlay(
        daemon,
        &format!("runner {name} to be registered"),
        Duration::from_secs(20),
        |v| v["state"] == "Registered",
    );
    // On a timeout the daemon's log tail is printed when `daemon` drops.
    wait_until(
        &format!("runner {name}, registered ({view}), to have its Subnet `overlay`"),
        Duration::from_secs(5),
        || {
            daemon
                .ctl(&["get", "subnet", "overlay"])
                .status
                .success()
                .then_some(())
        },
    );
    view
}

/// The hub's row for runner `name` in `vswitchctl overlay -o json`.
fn runner_row<'a>(view: &'a Value, name: &str) -> Option<&'a Value> {
    view["runners"]
        .as_array()?
        .iter()
        .find(|row| row["name"] == name)
}

fn is_online(row: &Value) -> bool {
    row["state"]
        .as_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("online"))
}

/// The labels of a resource must say it was generated for Overlay `owner`.
fn assert_owned(resource: &Value, owner: &str) {
    assert_eq!(
        resource["metadata"]["labels"]["vswitch/owner"],
        format!("Overlay/{owner}"),
        "generated resource must carry the label vswitch/owner: Overlay/{owner}:\n{resource}"
    );
}

/// The MTU of `eth0` in `ns` must be `mtu`.
fn assert_mtu(ns: &Netns, mtu: u32) {
    let link = ns.exec_ok(&["ip", "link", "show", "eth0"]);
    assert!(
        link.contains(&format!("mtu {mtu} ")),
        "eth0 in {} must have the overlay MTU {mtu}:\n{link}",
        ns.name
    );
}

/// A mesh node A (vswitchd, 192.168.51.1) with Subnet `m` (10.77.0.0/24, VNI 77) and one
/// container, and a kernel-only node B (192.168.51.2) with a container at 10.77.0.20 on the
/// same VNI.
struct MeshWithKernelPeer {
    // Fields drop in this order: the daemon and containers before the nodes.
    daemon: Daemon,
    /// The container on A.
    ca: Netns,
    /// Its address.
    ca_ip: String,
    /// The container on the kernel node B (10.77.0.20).
    cb: Netns,
    underlay: Underlay,
}

impl MeshWithKernelPeer {
    fn new() -> MeshWithKernelPeer {
        MeshWithKernelPeer::with_remote_checksum_offload(false)
    }

    /// With `rco`, both ends use VXLAN remote checksum offload (the kernel device with
    /// `udpcsum remcsumtx remcsumrx`).
    fn with_remote_checksum_offload(rco: bool) -> MeshWithKernelPeer {
        let underlay = Underlay::new(&["192.168.51.1/24", "192.168.51.2/24"]);
        let daemon = Daemon::start_in(&underlay.node(0).name, 2, &[]);
        let mut overlay = mesh_overlay("node-a", "192.168.51.1", &["192.168.51.2"]);
        if rco {
            overlay.push_str("  remoteChecksumOffload: true\n");
        }
        daemon.apply_yaml(&format!(
                "{}---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: m\nspec:\n  peerings: []\n---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: m\nspec:\n  network: m\n  cidr: 10.77.0.0/24\n  gateway: 10.77.0.1\n  vni: 77\n",
                overlay
            ),
        );
        wait_overlay(
            &daemon,
            "the mesh VTEP to be up",
            Duration::from_secs(10),
            |v| v["state"] == "Up",
        );
        let ca = Netns::new("ca");
        let ca_ip = daemon.attach(&ca, &["--subnet", "m"]);
        assert!(ca_ip.starts_with("10.77.0."), "{ca_ip}");
        let cb = Netns::new("cb");
        let options: &[&str] = if rco {
            &["udpcsum", "remcsumtx", "remcsumrx"]
        } else {
            &[]
        };
        kernel_vxlan_node_with(
            underlay.node(1),
            77,
            "192.168.51.2",
            "192.168.51.1",
            &cb,
            "10.77.0.20/24",
            options,
        );
        MeshWithKernelPeer {
            underlay,
            daemon,
            ca,
            ca_ip,
            cb,
        }
    }
}

/// One outer packet captured on the underlay.
#[derive(Debug)]
struct OuterPacket {
    src: [u8; 4],
    ttl: u8,
    src_port: u16,
    dst_port: u16,
    udp_checksum: u16,
    /// The 8-byte VXLAN header.
    vxlan: [u8; 8],
}

/// The Ethernet frames of a pcap file (either byte order, µs or ns timestamps).
fn pcap_frames(data: &[u8]) -> Vec<&[u8]> {
    assert!(data.len() >= 24, "pcap too short: {} bytes", data.len());
    let magic = [data[0], data[1], data[2], data[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        other => panic!("not a pcap file (magic {other:02x?})"),
    };
    let read32 = |at: usize| {
        let bytes = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        if little {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        }
    };
    assert_eq!(read32(20), 1, "pcap link type must be Ethernet");
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = usize::try_from(read32(at + 8)).expect("length");
        at += 16;
        if at + len > data.len() {
            break;
        }
        frames.push(&data[at..at + len]);
        at += len;
    }
    frames
}

/// The outer IPv4/UDP/VXLAN headers of a captured frame (None if it is not VXLAN over IPv4).
fn outer_packet(frame: &[u8]) -> Option<OuterPacket> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 16 {
        return None;
    }
    let udp = &ip[ihl..];
    let mut vxlan = [0u8; 8];
    vxlan.copy_from_slice(&udp[8..16]);
    Some(OuterPacket {
        src: [ip[12], ip[13], ip[14], ip[15]],
        ttl: ip[8],
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        udp_checksum: u16::from_be_bytes([udp[6], udp[7]]),
        vxlan,
    })
}

/// A running `tcpdump -w -`, and the thread that collects its stderr.
struct Capture {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts `tcpdump -w -` (pcap on stdout) in `ns` on `ifname` for `count` packets, and returns
/// once tcpdump says "listening on": from then on the capture runs.
fn start_capture(ns: &Netns, ifname: &str, count: u32, filter: &str) -> Capture {
    let count = count.to_string();
    // `--immediate-mode`: without it tcpdump takes packets from the kernel a ring block at a
    // time (when a block fills or its 1 s timeout ends), and a capture stopped sooner loses
    // the packets of the block still open.
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "tcpdump",
            "-i",
            ifname,
            "-nn",
            "-U",
            "--immediate-mode",
        ])
        .args(["-c", &count, "-w", "-", filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start tcpdump in {}: {e}", ns.name));
    let pipe = child.stderr.take().expect("tcpdump's stderr is piped");
    let (listening, started) = mpsc::channel();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if line.contains("listening on") {
                let _ = listening.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    if started.recv_timeout(Duration::from_secs(10)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let errors = stderr.join().unwrap_or_default();
        panic!(
            "tcpdump in {} did not say \"listening on\" {ifname} within 10 s:\n{errors}",
            ns.name
        );
    }
    Capture { child, stderr }
}

/// Waits (up to `within`) for the capture to end, interrupting it otherwise; returns the pcap
/// bytes and tcpdump's stderr.
fn finish_capture(capture: Capture, within: Duration) -> (Vec<u8>, String) {
    let Capture { mut child, stderr } = capture;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Ok(None) = child.try_wait() {
        // SIGINT: tcpdump flushes what it captured and exits.
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
    }
    let mut pcap = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut pcap);
    }
    let errors = stderr.join().unwrap_or_default();
    let _ = child.wait();
    (pcap, errors)
}

/// Sends each hex datagram from `from_ip` (an ephemeral port) to `to_ip:4789` in `ns`.
fn send_udp(ns: &Netns, from_ip: &str, to_ip: &str, datagrams: &[String]) {
    let script = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((sys.argv[1],0))\nfor h in sys.argv[3:]:\n    s.sendto(bytes.fromhex(h),(sys.argv[2],4789))\n";
    let mut cmd = vec!["python3", "-c", script, from_ip, to_ip];
    cmd.extend(datagrams.iter().map(String::as_str));
    let out = ns.exec(&cmd);
    assert!(
        out.status.success(),
        "sending UDP datagrams from {} failed: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The drop counters of port `vxlan` for `reasons`, with the stats they came from.
fn vxlan_drops(daemon: &Daemon, reasons: &[&str]) -> (Vec<u64>, Value) {
    let stats = daemon.stats();
    let port = stats["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "vxlan")
        .cloned()
        .unwrap_or(Value::Null);
    let counts = reasons
        .iter()
        .map(|reason| port["drops"][reason].as_u64().unwrap_or(0))
        .collect();
    (counts, stats)
}

/// Prints the non-zero drop reasons of a daemon, global and per port (diagnostics only).
fn print_drops(daemon: &Daemon, label: &str) {
    let stats = daemon.stats();
    let nonzero = |drops: &Value| -> Vec<String> {
        drops
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, count)| count.as_u64().unwrap_or(0) > 0)
            .map(|(reason, count)| format!("{reason}={count}"))
            .collect()
    };
    eprintln!("{label}: drops {:?}", nonzero(&stats["drops"]));
    eprintln!("{label}: events {:?}", nonzero(&stats["events"]));
    for port in stats["ports"].as_array().into_iter().flatten() {
        eprintln!(
            "{label}:   port {} rx {} tx {} drops {:?}",
            port["name"],
            port["rxPackets"],
            port["txPackets"],
            nonzero(&port["drops"])
        );
    }
}

/// The names of the ports in a stats report.
fn port_names(stats: &Value) -> Vec<String> {
    stats["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect()
}

/// Hub and two runners over an underlay bridge, two containers per runner: same-runner,
/// cross-runner and container-to-hub (10.0.0.1) traffic; IDs, VNIs and generated resources;
/// a `kill -9` of the hub keeps the runners' IDs and traffic resumes.
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn hub_and_two_runners() {
    require(&["ping", "iperf3"]);
    let underlay = Underlay::new(&["192.168.50.1/24", "192.168.50.2/24", "192.168.50.3/24"]);
    let (hub_ns, r1_ns, r2_ns) = (underlay.node(0), underlay.node(1), underlay.node(2));
    let mut hub = Daemon::start_in(&hub_ns.name, 2, &[]);
    let r1 = Daemon::start_in(&r1_ns.name, 2, &[]);
    let r2 = Daemon::start_in(&r2_ns.name, 2, &[]);

    hub.apply_yaml(&hub_overlay("hub", "192.168.50.1", ""));
    // TLS by default: the hub generates its certificate, the runners pin it.
    let pin = hub_fingerprint(&hub);
    // One runner after the other, so that IDs are given in a known order.
    r1.apply_yaml(&runner_overlay(
        "runner-1",
        "192.168.50.2",
        "192.168.50.1",
        &pin,
        "",
    ));
    let v1 = wait_registered(&r1, "runner-1");
    assert_eq!(v1["tls"], "Fingerprint", "{v1}");
    assert_eq!(v1["message"], Value::Null, "{v1}");
    r2.apply_yaml(&runner_overlay(
        "runner-2",
        "192.168.50.3",
        "192.168.50.1",
        &pin,
        "",
    ));
    let v2 = wait_registered(&r2, "runner-2");

    // The runners' own view of their plan.
    assert_eq!(v1["id"], 1, "runner-1 is the first runner: {v1}");
    assert_eq!(v1["vni"], 101, "{v1}");
    assert_eq!(v1["subnet"], "10.1.0.0/16", "{v1}");
    assert_eq!(v1["gateway"], "10.1.0.1", "{v1}");
    assert_eq!(v2["id"], 2, "runner-2 is the second runner: {v2}");
    assert_eq!(v2["vni"], 102, "{v2}");
    assert_eq!(v2["subnet"], "10.2.0.0/16", "{v2}");

    // The hub lists both.
    let hv = wait_overlay(
        &hub,
        "the hub to list runner-1 and runner-2 online",
        Duration::from_secs(10),
        |v| {
            runner_row(v, "runner-1").is_some_and(is_online)
                && runner_row(v, "runner-2").is_some_and(is_online)
        },
    );
    for (name, id, vni, subnet, address) in [
        ("runner-1", 1, 101, "10.1.0.0/16", "192.168.50.2"),
        ("runner-2", 2, 102, "10.2.0.0/16", "192.168.50.3"),
    ] {
        let row = runner_row(&hv, name).expect("listed");
        assert_eq!(row["id"], id, "{row}");
        assert_eq!(row["vni"], vni, "{row}");
        assert_eq!(row["subnet"], subnet, "{row}");
        assert_eq!(row["address"], address, "{row}");
        assert!(
            row["lastSeenSecondsAgo"].as_u64().is_some(),
            "lastSeenSecondsAgo: {row}"
        );
    }

    // Generated resources, on the runner ...
    let subnet = r1.ctl_json(&["get", "subnet", "overlay"]);
    assert_owned(&subnet, "runner-1");
    assert_eq!(subnet["spec"]["network"], "overlay", "{subnet}");
    assert_eq!(subnet["spec"]["cidr"], "10.1.0.0/16", "{subnet}");
    assert_eq!(subnet["spec"]["gateway"], "10.1.0.1", "{subnet}");
    assert_eq!(subnet["spec"]["vni"], 101, "{subnet}");
    assert_eq!(subnet["spec"]["mtu"], 1450, "{subnet}");
    assert_owned(&r1.ctl_json(&["get", "network", "overlay"]), "runner-1");
    let route = r1.ctl_json(&["get", "route", "overlay-hub"]);
    assert_owned(&route, "runner-1");
    assert_eq!(route["spec"]["destination"], "10.0.0.0/8", "{route}");
    assert_eq!(route["spec"]["nextHop"], "10.1.0.254", "{route}");
    // ... and on the hub.
    assert_owned(&hub.ctl_json(&["get", "network", "overlay"]), "hub");
    for name in ["overlay-r1", "overlay-r2", "overlay-host"] {
        let subnet = hub.ctl_json(&["get", "subnet", name]);
        assert_owned(&subnet, "hub");
    }
    let host_nic = hub.ctl_json(&["get", "networkinterface", "overlay-host"]);
    assert_owned(&host_nic, "hub");
    let tap = hub_ns.exec_ok(&["ip", "addr", "show", "dev", "vsoverlay0"]);
    assert!(
        tap.contains("10.0.0.1/16"),
        "the hub's host TAP vsoverlay0 must have 10.0.0.1/16:\n{tap}"
    );
    let routes = hub_ns.exec_ok(&["ip", "route", "show", "10.0.0.0/8"]);
    assert!(
        routes.contains("10.0.0.0/8"),
        "the hub node needs a route 10.0.0.0/8 via the switch:\n{routes}"
    );

    // Two containers on each runner.
    let c11 = Netns::new("c11");
    let c12 = Netns::new("c12");
    let c21 = Netns::new("c21");
    let c22 = Netns::new("c22");
    let ip11 = r1.attach(&c11, &["--subnet", "overlay"]);
    let ip12 = r1.attach(&c12, &["--subnet", "overlay", "--kind", "veth"]);
    let ip21 = r2.attach(&c21, &["--subnet", "overlay"]);
    let ip22 = r2.attach(&c22, &["--subnet", "overlay"]);
    for ip in [&ip11, &ip12] {
        assert!(
            ip.starts_with("10.1."),
            "runner-1 containers are in 10.1/16: {ip}"
        );
    }
    for ip in [&ip21, &ip22] {
        assert!(
            ip.starts_with("10.2."),
            "runner-2 containers are in 10.2/16: {ip}"
        );
    }
    for c in [&c11, &c12, &c21, &c22] {
        assert_mtu(c, 1450);
    }

    // Same runner.
    c11.ping_ok(&ip12, 3);
    c22.ping_ok(&ip21, 3);
    // Container to its gateway and to the hub node's own stack.
    c11.ping_ok("10.1.0.1", 1);
    assert!(
        c11.ping_until("10.0.0.1", Duration::from_secs(10)),
        "a runner-1 container cannot reach the hub node at 10.0.0.1\nrunner log:\n{}\nhub log:\n{}",
        tail(&r1.log_text(), 30),
        tail(&hub.log_text(), 30)
    );
    c11.ping_ok("10.0.0.1", 3);
    c21.ping_ok("10.0.0.1", 3);
    // Across runners, through the hub.
    assert!(
        c11.ping_until(&ip21, Duration::from_secs(10)),
        "runner-1 container {ip11} cannot reach runner-2 container {ip21}\nrunner-1 log:\n{}\nhub log:\n{}\nrunner-2 log:\n{}",
        tail(&r1.log_text(), 30),
        tail(&hub.log_text(), 30),
        tail(&r2.log_text(), 30)
    );
    c11.ping_ok(&ip21, 3);
    c22.ping_ok(&ip12, 3);

    let cross = iperf3_tcp(&c21, &c11, &ip21, 2);
    let to_hub = iperf3_tcp(hub_ns, &c12, "10.0.0.1", 2);
    let same = iperf3_tcp(&c12, &c11, &ip12, 2);
    eprintln!(
        "overlay iperf3 Gbit/s: cross-runner {cross:.2}, container->hub {to_hub:.2}, same runner {same:.2}"
    );
    print_drops(&hub, "hub");
    print_drops(&r1, "runner-1");

    // Restart the hub with kill -9 while runner-1 is cut off the underlay, so that runner-2
    // talks to the restarted hub first: only a persisted pool gives runner-2 its ID 2 (and not
    // the first free one, 1).
    r1_ns.exec_ok(&["ip", "link", "set", "eth0", "down"]);
    hub.kill9();
    hub.spawn(&[]);
    let hv = wait_overlay(
        &hub,
        "the restarted hub to list runner-2 online again",
        Duration::from_secs(20),
        |v| runner_row(v, "runner-2").is_some_and(is_online),
    );
    assert_eq!(
        hv["tls"]["fingerprint"], pin,
        "the restarted hub keeps its generated certificate: {hv}"
    );
    assert_eq!(
        runner_row(&hv, "runner-2").expect("listed")["id"],
        2,
        "runner-2 keeps ID 2 after a hub restart: {hv}"
    );
    let v2 = wait_registered(&r2, "runner-2");
    assert_eq!(v2["id"], 2, "{v2}");

    r1_ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    let hv = wait_overlay(
        &hub,
        "the restarted hub to list runner-1 online again",
        Duration::from_secs(30),
        |v| runner_row(v, "runner-1").is_some_and(is_online),
    );
    assert_eq!(
        runner_row(&hv, "runner-1").expect("listed")["id"],
        1,
        "runner-1 keeps ID 1 after a hub restart: {hv}"
    );
    let v1 = wait_overlay(
        &r1,
        "runner-1 to be registered again",
        Duration::from_secs(30),
        |v| v["state"] == "Registered",
    );
    assert_eq!(
        v1["id"], 1,
        "runner-1 keeps ID 1 after re-registration: {v1}"
    );
    assert_eq!(v1["vni"], 101, "{v1}");

    assert!(
        c11.ping_until(&ip21, Duration::from_secs(20)),
        "cross-runner traffic did not resume within 20 s of the hub's restart\nhub log:\n{}\nrunner-1 log:\n{}",
        tail(&hub.log_text(), 40),
        tail(&r1.log_text(), 30)
    );
    c11.ping_ok(&ip21, 3);
    c22.ping_ok(&ip11, 3);
    c12.ping_ok("10.0.0.1", 3);
}

/// The TTL of the answer to one ping from `ns` to `address`: 63 after one routed hop.
fn echo_ttl(ns: &Netns, address: &str) -> u32 {
    let out = ns.exec_ok(&["ping", "-c", "1", "-W", "2", address]);
    out.split("ttl=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in the ping output:\n{out}"))
}

/// Packets the VTEP of `daemon` received.
fn vtep_rx(daemon: &Daemon) -> u64 {
    port_rx(daemon, "vxlan").unwrap_or(0)
}

/// `spec.runnerToRunner: Direct`: each runner learns the other from the hub (the one that
/// registered later too) and holds a copy of its subnet, so a frame between their
/// containers goes straight between the runners' VTEPs: one routed hop (TTL 63), the hub's
/// VTEP sees none of it, and it carries on after `kill -9` of the hub. The hub stays the
/// gateway to 10.0.0.1 for both runners (the copies' shared gateway never takes the hub's
/// address from them). Switched back to `ViaHub`, the runners drop their copies and
/// traffic goes through the hub again (two routed hops). Prints TCP throughput both ways,
/// direct and through the hub, in the same run.
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn runners_reach_each_other_directly() {
    require(&["ping", "iperf3"]);
    let underlay = Underlay::new(&["192.168.70.1/24", "192.168.70.2/24", "192.168.70.3/24"]);
    let mut hub = Daemon::start_in(&underlay.node(0).name, 2, &[]);
    let r1 = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    let r2 = Daemon::start_in(&underlay.node(2).name, 2, &[]);
    let plain = "  tls: {mode: Disabled}\n";
    let direct = format!("{plain}  runnerToRunner: Direct\n");
    hub.apply_yaml(&hub_overlay("hub", "192.168.70.1", &direct));
    let runner = |name: &str, address: &str| {
        runner_overlay_tls(name, address, "192.168.70.1", "{mode: Disabled}", "")
    };
    r1.apply_yaml(&runner("runner-1", "192.168.70.2"));
    wait_registered(&r1, "runner-1");
    r2.apply_yaml(&runner("runner-2", "192.168.70.3"));
    wait_registered(&r2, "runner-2");
    for (daemon, name) in [(&r1, "runner-1"), (&r2, "runner-2")] {
        wait_overlay(
            daemon,
            &format!("{name} to reach the other runner directly"),
            Duration::from_secs(15),
            |v| v["directPeers"] == 1,
        );
    }
    assert_eq!(
        overlay_view(&hub).expect("hub view")["runnerToRunner"],
        "Direct"
    );
    let copy = r1.ctl_json(&["get", "subnet", "overlay-r2"]);
    assert_owned(&copy, "runner-1");
    assert_eq!(copy["spec"]["cidr"], "10.2.0.0/16", "{copy}");
    assert_eq!(copy["spec"]["vni"], 102, "{copy}");
    assert_eq!(copy["spec"]["gateway"], "10.2.0.254", "{copy}");
    assert_eq!(copy["spec"]["sharedGateway"], true, "{copy}");
    assert_eq!(copy["spec"]["remoteVteps"][0], "192.168.70.3", "{copy}");

    let c1 = Netns::new("cdr1");
    let c2 = Netns::new("cdr2");
    let ip1 = r1.attach(&c1, &["--subnet", "overlay"]);
    let ip2 = r2.attach(&c2, &["--subnet", "overlay"]);
    assert!(
        c1.ping_until(&ip2, Duration::from_secs(10)),
        "runner-1's container cannot reach runner-2's directly\nrunner-1 log:\n{}\nrunner-2 log:\n{}",
        tail(&r1.log_text(), 30),
        tail(&r2.log_text(), 30)
    );
    assert_eq!(echo_ttl(&c1, &ip2), 63, "one routed hop, runner-1's");
    assert_eq!(echo_ttl(&c2, &ip1), 63, "one routed hop, runner-2's");
    for c in [&c1, &c2] {
        assert!(
            c.ping_until("10.0.0.1", Duration::from_secs(10)),
            "a container cannot reach the hub at 10.0.0.1 beside the direct paths"
        );
    }
    let before = vtep_rx(&hub);
    let direct_12 = iperf3_tcp(&c2, &c1, &ip2, 3);
    let direct_21 = iperf3_tcp(&c1, &c2, &ip1, 3);
    let through_hub = vtep_rx(&hub) - before;
    assert!(
        through_hub < 100,
        "the hub's VTEP received {through_hub} packets during transfers between the runners"
    );
    // The runners' containers still reach the hub, after the transfers too.
    c2.ping_ok("10.0.0.1", 2);

    // Without the hub: the runners keep their paths to each other.
    hub.kill9();
    c1.ping_ok(&ip2, 3);
    c2.ping_ok(&ip1, 3);
    hub.spawn(&[]);
    for (daemon, name) in [(&r1, "runner-1"), (&r2, "runner-2")] {
        wait_registered(daemon, name);
    }

    // Back through the hub.
    hub.apply_yaml(&hub_overlay("hub", "192.168.70.1", plain));
    for (daemon, name) in [(&r1, "runner-1"), (&r2, "runner-2")] {
        wait_overlay(
            daemon,
            &format!("{name} to reach the other runner through the hub"),
            Duration::from_secs(15),
            |v| v["directPeers"].is_null(),
        );
    }
    assert!(
        r1.ctl(&["get", "subnet", "overlay-r2"]).status.code() != Some(0),
        "runner-1's copy of runner-2's subnet is gone"
    );
    assert!(
        c1.ping_until(&ip2, Duration::from_secs(10)),
        "runner-1's container cannot reach runner-2's through the hub"
    );
    assert_eq!(
        echo_ttl(&c1, &ip2),
        62,
        "two routed hops: runner-1's and the hub's"
    );
    let before = vtep_rx(&hub);
    let hub_12 = iperf3_tcp(&c2, &c1, &ip2, 3);
    let hub_21 = iperf3_tcp(&c1, &c2, &ip1, 3);
    assert!(
        vtep_rx(&hub) - before > 1000,
        "through the hub, its VTEP carries the transfers"
    );
    eprintln!(
        "runner to runner, iperf3 TCP Gbit/s (1->2 / 2->1): direct {direct_12:.2} / \
         {direct_21:.2}, through the hub {hub_12:.2} / {hub_21:.2}"
    );
}

/// Packets the port `name` of `daemon` received (`None`: no such port).
fn port_rx(daemon: &Daemon, name: &str) -> Option<u64> {
    let stats = daemon.stats();
    stats["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["rxPackets"].as_u64())
}

/// An Uplink `wan` on the node's `eth0` owning `address` (on the underlay's /24).
fn underlay_uplink(address: &str) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata:\n  name: wan\nspec:\n  interface: eth0\n  addresses: [{address}/24]\n  gateway: 192.168.71.254\n---\n"
    )
}

/// `encapsulation: None`: hub and runners route the runners' subnets to each other's
/// routed addresses (each switch's Uplink address on the underlay link) with no tunnel
/// header. The runners route to each other straight (two routed hops: TTL 62, neither the
/// hub's uplink nor any VTEP carries the transfers), reach the hub's 10.0.0.1 through its
/// routed address, keep their paths when the hub is killed, and a runner still on VXLAN is
/// refused naming both settings. Prints TCP throughput both ways.
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn runners_route_without_encapsulation() {
    require(&["ping", "iperf3"]);
    let underlay = Underlay::new(&["192.168.71.1/24", "192.168.71.2/24", "192.168.71.3/24"]);
    let mut hub = Daemon::start_in(&underlay.node(0).name, 2, &[]);
    let r1 = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    let r2 = Daemon::start_in(&underlay.node(2).name, 2, &[]);
    let routed = "  tls: {mode: Disabled}\n  runnerToRunner: Direct\n  encapsulation: None\n";
    hub.apply_yaml(&format!(
        "{}{}",
        underlay_uplink("192.168.71.11"),
        hub_overlay("hub", "192.168.71.1", routed)
    ));
    let runner = |name: &str, address: &str, routed: &str| {
        format!(
            "{}{}",
            underlay_uplink(routed),
            runner_overlay_tls(
                name,
                address,
                "192.168.71.1",
                "{mode: Disabled}",
                "  encapsulation: None\n"
            )
        )
    };
    r1.apply_yaml(&runner("runner-1", "192.168.71.2", "192.168.71.12"));
    wait_registered(&r1, "runner-1");
    r2.apply_yaml(&runner("runner-2", "192.168.71.3", "192.168.71.13"));
    wait_registered(&r2, "runner-2");
    for (daemon, name) in [(&r1, "runner-1"), (&r2, "runner-2")] {
        let view = wait_overlay(
            daemon,
            &format!("{name} to route to the other runner"),
            Duration::from_secs(15),
            |v| v["directPeers"] == 1,
        );
        assert_eq!(view["encapsulation"], "None", "{view}");
    }
    let hub_view = overlay_view(&hub).expect("hub view");
    assert_eq!(hub_view["routedAddress"], "192.168.71.11", "{hub_view}");
    let row = runner_row(&hub_view, "runner-1").expect("runner-1 at the hub");
    assert_eq!(
        row["address"], "192.168.71.12",
        "registered at its routed address"
    );
    let to_r1 = hub.ctl_json(&["get", "route", "overlay-r1"]);
    assert_owned(&to_r1, "hub");
    assert_eq!(to_r1["spec"]["destination"], "10.1.0.0/16", "{to_r1}");
    assert_eq!(to_r1["spec"]["nextHop"], "192.168.71.12", "{to_r1}");
    assert_eq!(to_r1["status"]["uplink"], "wan", "{to_r1}");
    assert_eq!(to_r1["status"]["state"], "Ready", "{to_r1}");
    let to_hub = r1.ctl_json(&["get", "route", "overlay-hub"]);
    assert_eq!(to_hub["spec"]["destination"], "10.0.0.0/8", "{to_hub}");
    assert_eq!(to_hub["spec"]["nextHop"], "192.168.71.11", "{to_hub}");
    let to_r2 = r1.ctl_json(&["get", "route", "overlay-r2"]);
    assert_eq!(to_r2["spec"]["nextHop"], "192.168.71.13", "{to_r2}");
    let subnet = r1.ctl_json(&["get", "subnet", "overlay"]);
    assert!(subnet["spec"]["vni"].is_null(), "no VNI: {subnet}");
    assert_eq!(
        subnet["spec"]["mtu"], 1500,
        "nothing added to frames: {subnet}"
    );

    let c1 = Netns::new("cnr1");
    let c2 = Netns::new("cnr2");
    let ip1 = r1.attach(&c1, &["--subnet", "overlay"]);
    let ip2 = r2.attach(&c2, &["--subnet", "overlay"]);
    assert!(
        c1.ping_until(&ip2, Duration::from_secs(10)),
        "runner-1's container cannot reach runner-2's\nrunner-1 log:\n{}\nrunner-2 log:\n{}",
        tail(&r1.log_text(), 30),
        tail(&r2.log_text(), 30)
    );
    assert_eq!(
        echo_ttl(&c1, &ip2),
        62,
        "two routed hops: the runners' switches"
    );
    assert_eq!(
        echo_ttl(&c2, &ip1),
        62,
        "two routed hops: the runners' switches"
    );
    for c in [&c1, &c2] {
        assert!(
            c.ping_until("10.0.0.1", Duration::from_secs(10)),
            "a container cannot reach the hub at 10.0.0.1\nhub log:\n{}",
            tail(&hub.log_text(), 30)
        );
        assert_eq!(
            echo_ttl(c, "10.0.0.1"),
            62,
            "the hub's switch and the runner's"
        );
    }
    let hub_before = port_rx(&hub, "wan").expect("the hub's uplink port");
    let vteps_before = vtep_rx(&r1) + vtep_rx(&r2);
    let routed_12 = iperf3_tcp(&c2, &c1, &ip2, 3);
    let routed_21 = iperf3_tcp(&c1, &c2, &ip1, 3);
    let at_hub = port_rx(&hub, "wan").expect("uplink") - hub_before;
    assert!(
        at_hub < 100,
        "the hub's uplink received {at_hub} packets during transfers between the runners"
    );
    assert_eq!(
        vtep_rx(&r1) + vtep_rx(&r2) - vteps_before,
        0,
        "no VXLAN between the runners"
    );
    let r2_uplink = port_rx(&r2, "wan").expect("runner-2's uplink");
    assert!(
        r2_uplink > 1000,
        "runner-2's uplink carried the transfers: {r2_uplink}"
    );

    // A runner on VXLAN is refused by the unencapsulated hub, naming both settings.
    let script = r#"
import json, sys, urllib.request, urllib.error
body = {"name": "vxlan-runner", "localAddress": "192.168.71.3", "vniBase": 100, "port": 4789,
        "mtu": 1500}
request = urllib.request.Request("http://192.168.71.1:4799/v1/overlay/register",
    data=json.dumps(body).encode(), headers={"Authorization": "Bearer " + sys.argv[1],
    "Content-Type": "application/json", "Vswitch-Overlay-Features": "runner-id-u32, peers"})
try:
    urllib.request.urlopen(request, timeout=10)
    print("admitted")
except urllib.error.HTTPError as error:
    print(error.code, json.load(error)["error"]["message"])
"#;
    let answer = underlay.node(2).exec_ok(&["python3", "-c", script, TOKEN]);
    assert!(
        answer.starts_with("400")
            && answer.contains("encapsulation differs: hub None, runner VXLAN"),
        "a VXLAN runner must be refused by an unencapsulated hub: {answer}"
    );

    // Without the hub: the runners keep their routes to each other.
    hub.kill9();
    c1.ping_ok(&ip2, 3);
    c2.ping_ok(&ip1, 3);
    hub.spawn(&[]);
    for (daemon, name) in [(&r1, "runner-1"), (&r2, "runner-2")] {
        wait_registered(daemon, name);
    }
    c1.ping_ok("10.0.0.1", 2);
    eprintln!(
        "runner to runner without encapsulation, iperf3 TCP Gbit/s (1->2 / 2->1): \
         {routed_12:.2} / {routed_21:.2}"
    );
}

/// Registers `count` simulated runners `sim-1`.. with the hub at `hub` (plain HTTP), 8 at
/// a time, each from an address of 198.18.0.0/15, then one runner that sends no features
/// header; prints `NAME ID` per line, then `narrow STATUS MESSAGE`.
const SIMULATED_RUNNERS: &str = r#"
import json, sys, time, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor
hub, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def register(name, address, features):
    body = {"name": name, "localAddress": address, "vniBase": 100, "port": 4789, "mtu": 1450}
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    if features:
        headers["Vswitch-Overlay-Features"] = "runner-id-u32"
    request = urllib.request.Request("http://%s:4799/v1/overlay/register" % hub,
                                     data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
# The hub API opens a moment after the Overlay is up.
deadline = time.time() + 20
while True:
    try:
        urllib.request.urlopen("http://%s:4799/" % hub, timeout=5)
    except urllib.error.HTTPError:
        break
    except urllib.error.URLError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
def one(n):
    status, plan = register("sim-%d" % n, "198.18.%d.%d" % (n // 250, n % 250 + 1), True)
    if status != 200:
        raise SystemExit("sim-%d: %d %s" % (n, status, plan))
    return "sim-%d %d" % (n, plan["runnerId"])
with ThreadPoolExecutor(8) as pool:
    for line in pool.map(one, range(1, count + 1)):
        print(line)
status, answer = register("old-runner", "198.19.0.1", False)
print("narrow", status, answer["error"]["message"])
"#;

/// A plan wider than 255 runners (a /20 per runner out of 10.0.0.0/8: 4,095): 300 simulated
/// runners registering 8 at a time take IDs 1 to 300, each once, each with its Subnet on
/// the hub (registrations that arrive together share the hub's work), a runner that reads
/// IDs as a byte is refused naming the upgrade, and a real runner gets ID 301 (10.18.208.0/20, VNI 401), reaches the hub's
/// 10.0.0.1 through the tunnel, and keeps its ID when the hub is killed and restarted.
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn a_wide_plan_numbers_runners_past_255() {
    require(&["ping", "python3"]);
    let underlay = Underlay::new(&["192.168.57.1/24", "192.168.57.2/24"]);
    let (hub_ns, runner_ns) = (underlay.node(0), underlay.node(1));
    let mut hub = Daemon::start_in(&hub_ns.name, 2, &[]);
    let runner = Daemon::start_in(&runner_ns.name, 2, &[]);
    hub.apply_yaml(&hub_overlay(
        "hub",
        "192.168.57.1",
        "  tls: {mode: Disabled}\n  addressPlan: {runnerPrefixLen: 20, hubHost: 4094}\n",
    ));
    wait_overlay(&hub, "the hub to be up", Duration::from_secs(20), |v| {
        v["state"] == "Up"
    });
    let started = Instant::now();
    let out = runner_ns.exec_ok(&[
        "python3",
        "-c",
        SIMULATED_RUNNERS,
        "192.168.57.1",
        TOKEN,
        "300",
    ]);
    let elapsed = started.elapsed();
    let lines: Vec<&str> = out.lines().collect();
    let given: Vec<(String, u32)> = lines[..300]
        .iter()
        .map(|line| {
            let (name, id) = line.split_once(' ').expect("NAME ID");
            (name.to_owned(), id.parse().expect("an ID"))
        })
        .collect();
    let mut ids: Vec<u32> = given.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=300).collect::<Vec<u32>>(),
        "IDs 1 to 300, each once"
    );
    let hv = overlay_view(&hub).expect("hub view");
    for (name, id) in &given {
        let row = runner_row(&hv, name).expect("listed");
        assert_eq!(row["id"], *id, "the hub holds what it answered: {row}");
    }
    let subnets = hub.ctl_json(&["get", "subnets"]);
    let generated = subnets["items"]
        .as_array()
        .or(subnets.as_array())
        .map_or(0, |items| {
            items
                .iter()
                .filter(|s| {
                    s["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("overlay-r"))
                })
                .count()
        });
    assert_eq!(generated, 300, "a Subnet per runner on the hub");
    eprintln!(
        "300 registrations in {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        300.0 / elapsed.as_secs_f64()
    );
    let narrow = lines.get(300).copied().unwrap_or_default();
    assert!(
        narrow.starts_with("narrow 400") && narrow.contains("upgrade vswitchd"),
        "a runner without the features header gets no ID above 255: {narrow}"
    );

    runner.apply_yaml(&runner_overlay_tls(
        "runner-real",
        "192.168.57.2",
        "192.168.57.1",
        "{mode: Disabled}",
        "",
    ));
    let view = wait_registered(&runner, "runner-real");
    assert_eq!(view["id"], 301, "{view}");
    assert_eq!(view["vni"], 401, "{view}");
    assert_eq!(view["subnet"], "10.18.208.0/20", "{view}");
    assert_eq!(view["gateway"], "10.18.208.1", "{view}");
    let hv = wait_overlay(
        &hub,
        "the hub to list 301 runners",
        Duration::from_secs(10),
        |v| v["runners"].as_array().is_some_and(|r| r.len() == 301),
    );
    let row = runner_row(&hv, "runner-real").expect("listed");
    assert_eq!(row["subnet"], "10.18.208.0/20", "{row}");
    let subnet = hub.ctl_json(&["get", "subnet", "overlay-r301"]);
    assert_eq!(subnet["spec"]["cidr"], "10.18.208.0/20", "{subnet}");
    assert_eq!(subnet["spec"]["vni"], 401, "{subnet}");

    let c = Netns::new("cwide");
    let ip = runner.attach(&c, &["--subnet", "overlay"]);
    assert!(ip.starts_with("10.18.20"), "in 10.18.208.0/20: {ip}");
    assert!(
        c.ping_until("10.0.0.1", Duration::from_secs(10)),
        "runner 301's container cannot reach the hub at 10.0.0.1\nrunner log:\n{}\nhub log:\n{}",
        tail(&runner.log_text(), 30),
        tail(&hub.log_text(), 30)
    );

    // The persisted pool keeps IDs above 255 across a kill -9.
    hub.kill9();
    hub.spawn(&[]);
    let hv = wait_overlay(
        &hub,
        "the restarted hub to list runner-real online again",
        Duration::from_secs(30),
        |v| runner_row(v, "runner-real").is_some_and(is_online),
    );
    assert_eq!(
        runner_row(&hv, "runner-real").expect("listed")["id"],
        301,
        "{hv}"
    );
    for (name, id) in &given {
        let row = runner_row(&hv, name).expect("listed after the restart");
        assert_eq!(row["id"], *id, "{name} keeps its ID across kill -9: {row}");
    }
    assert!(
        c.ping_until("10.0.0.1", Duration::from_secs(20)),
        "no path to the hub after its restart"
    );
}

/// Simulated runners registering with one hub over plain HTTP, 8 at a time: `python3 -c
/// SCRIPT HUB TOKEN PREFIX FIRST COUNT [SHIFT]` registers PREFIX-FIRST .. from 198.18.X.Y
/// (one address per number, plus SHIFT); prints `NAME ID` per runner, or `NAME refused
/// STATUS MESSAGE`.
const SIMULATED_RUNNERS_AT: &str = r#"
import json, sys, time, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor
hub, token, prefix, first, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
shift = int(sys.argv[6]) if len(sys.argv) > 6 else 0
def register(name, address):
    body = {"name": name, "localAddress": address, "vniBase": 100, "port": 4789, "mtu": 1450}
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
               "Vswitch-Overlay-Features": "runner-id-u32"}
    request = urllib.request.Request("http://%s:4799/v1/overlay/register" % hub,
                                     data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
deadline = time.time() + 30
while True:
    try:
        urllib.request.urlopen("http://%s:4799/" % hub, timeout=5)
    except urllib.error.HTTPError:
        break
    except urllib.error.URLError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
def one(n):
    name = "%s-%d" % (prefix, n)
    status, plan = register(name, "198.18.%d.%d" % ((n + shift) // 250, (n + shift) % 250 + 1))
    if status != 200:
        return "%s refused %d %s" % (name, status, plan["error"]["message"])
    return "%s %d" % (name, plan["runnerId"])
with ThreadPoolExecutor(8) as pool:
    for line in pool.map(one, range(first, first + count)):
        print(line, flush=True)
"#;

/// etcd on node 0 of `underlay` and two hubs on nodes 1 and 2 keeping their runners in it
/// (plain HTTP, leases of 3 s, `extra` YAML in their spec), once both have read the store;
/// answers etcd, hub A, hub B and the hubs' extra spec (to apply again).
fn two_hubs_on_etcd(underlay: &Underlay, extra: &str) -> (Etcd, Daemon, Daemon, String) {
    let address = |node: usize| {
        underlay
            .node(node)
            .exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
            .split_whitespace()
            .nth(3)
            .and_then(|cidr| cidr.split('/').next())
            .expect("the node's address")
            .to_owned()
    };
    let etcd = Etcd::start_in(underlay.node(0), &address(0));
    let hub_a = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    let hub_b = Daemon::start_in(&underlay.node(2).name, 2, &[]);
    let store = format!(
        "  tls: {{mode: Disabled}}\n{extra}  store: {{etcd: {{endpoints: ['{}'], leaseSeconds: 3}}}}\n",
        etcd.endpoint
    );
    hub_a.apply_yaml(&hub_overlay("hub-a", &address(1), &store));
    hub_b.apply_yaml(&hub_overlay("hub-b", &address(2), &store));
    for hub in [&hub_a, &hub_b] {
        wait_overlay(
            hub,
            "the hub to have read the store",
            Duration::from_secs(30),
            |v| v["state"] == "Up" && v["store"]["ready"] == true,
        );
    }
    (etcd, hub_a, hub_b, store)
}

/// `NAME ID` lines of [`SIMULATED_RUNNERS_AT`], every one admitted.
fn simulated_ids(out: &str) -> Vec<(String, u32)> {
    out.lines()
        .map(|line| {
            let (name, id) = line.split_once(' ').expect("NAME ID");
            let id = id
                .parse()
                .unwrap_or_else(|_| panic!("a simulated runner was refused: {line}"));
            (name.to_owned(), id)
        })
        .collect()
}

/// An overlay store in etcd shared by two hubs (Debian's etcd 3.4 in its own node):
/// - 120 simulated runners registering with both hubs at once get IDs 1 to 120, each once
///   (the store's compare-and-swap), and both hubs list all 120 with their IDs and the hub
///   serving each (the watch);
/// - a name online through one hub is refused at the other from another address;
/// - a real runner registers with hub A and its container reaches 10.0.0.1 through it;
/// - after `kill -9` of hub A its runners are served by no hub once its lease expires
///   (hub B shows it), and hub A started again on an empty disk reads every runner back
///   from the store with its ID; the real runner keeps its ID and its path.
#[test]
#[ignore = "needs root and etcd: starts etcd and vswitchd in node namespaces on a bridged veth underlay"]
fn hubs_sharing_an_etcd_store_never_give_one_id_twice() {
    require(&["ping", "python3", "etcd", "etcdctl"]);
    let underlay = Underlay::new(&[
        "192.168.58.10/24",
        "192.168.58.1/24",
        "192.168.58.2/24",
        "192.168.58.3/24",
        "192.168.58.4/24",
    ]);
    let (etcd, mut hub_a, hub_b, store) =
        two_hubs_on_etcd(&underlay, "  runnerTimeoutSeconds: 5\n");
    let sims = underlay.node(3);
    let runner = Daemon::start_in(&underlay.node(4).name, 2, &[]);

    // Both hubs at once, 60 runners each, 8 in flight at each.
    let started = Instant::now();
    let at_a = sims.spawn(&[
        "python3",
        "-c",
        SIMULATED_RUNNERS_AT,
        "192.168.58.1",
        TOKEN,
        "a",
        "1",
        "60",
    ]);
    let at_b = sims.spawn(&[
        "python3",
        "-c",
        SIMULATED_RUNNERS_AT,
        "192.168.58.2",
        TOKEN,
        "b",
        "501",
        "60",
    ]);
    let mut given = Vec::new();
    for child in [at_a, at_b] {
        let out = child.wait_with_output().expect("simulated runners");
        assert!(
            out.status.success(),
            "simulated runners failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        given.extend(simulated_ids(&String::from_utf8_lossy(&out.stdout)));
    }
    let elapsed = started.elapsed();
    let mut ids: Vec<u32> = given.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=120).collect::<Vec<u32>>(),
        "two hubs gave IDs 1 to 120, each once"
    );
    eprintln!(
        "120 registrations through two hubs sharing etcd in {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        120.0 / elapsed.as_secs_f64()
    );
    assert_eq!(etcd.keys("/vswitch/overlay/runners/").len(), 120);
    assert_eq!(etcd.keys("/vswitch/overlay/names/").len(), 120);
    for (hub, me) in [(&hub_a, "192.168.58.1"), (&hub_b, "192.168.58.2")] {
        let view = wait_overlay(
            hub,
            "the hub to list all 120 runners",
            Duration::from_secs(20),
            |v| v["runners"].as_array().is_some_and(|r| r.len() == 120),
        );
        for (name, id) in &given {
            let row = runner_row(&view, name).expect("listed");
            assert_eq!(row["id"], *id, "{me} lists {name} with its ID: {row}");
            let serving = if name.starts_with("a-") {
                "192.168.58.1"
            } else {
                "192.168.58.2"
            };
            assert_eq!(row["hub"], serving, "{me} says who serves {name}: {row}");
        }
    }
    let online_a = etcd.ctl(&["get", "/vswitch/overlay/online/a-1", "--print-value-only"]);
    assert_eq!(online_a.trim(), "192.168.58.1");

    // A name online through hub A, from another address at hub B: refused.
    let out = sims.exec(&[
        "python3",
        "-c",
        SIMULATED_RUNNERS_AT,
        "192.168.58.2",
        TOKEN,
        "a",
        "2",
        "1",
        "1000",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("a-2 refused 409")
            && text.contains("198.18.0.3")
            && text.contains("served by hub 192.168.58.1"),
        "a name online elsewhere is refused: {text}"
    );

    // A real runner through hub A.
    runner.apply_yaml(&runner_overlay_tls(
        "runner-real",
        "192.168.58.4",
        "192.168.58.1",
        "{mode: Disabled}",
        "",
    ));
    let view = wait_registered(&runner, "runner-real");
    assert_eq!(view["id"], 121, "{view}");
    let c = Netns::new("cetcd");
    runner.attach(&c, &["--subnet", "overlay"]);
    assert!(
        c.ping_until("10.0.0.1", Duration::from_secs(10)),
        "runner 121's container cannot reach hub A at 10.0.0.1\nrunner log:\n{}\nhub log:\n{}",
        tail(&runner.log_text(), 30),
        tail(&hub_a.log_text(), 30)
    );
    wait_overlay(
        &hub_b,
        "hub B to list runner-real",
        Duration::from_secs(10),
        |v| runner_row(v, "runner-real").is_some_and(|row| row["id"] == 121),
    );

    // Hub A dies: its lease expires (3 s) and its runners are served by no hub.
    hub_a.kill9();
    wait_until(
        "hub A's online keys to expire with its lease",
        Duration::from_secs(20),
        || {
            let left = etcd.keys("/vswitch/overlay/online/a-");
            left.is_empty().then_some(())
        },
    );
    let view = wait_overlay(
        &hub_b,
        "hub B to show hub A's runners served by no hub",
        Duration::from_secs(10),
        |v| runner_row(v, "a-1").is_some_and(|row| row["hub"].is_null()),
    );
    assert_eq!(
        runner_row(&view, "b-501").expect("listed")["hub"],
        "192.168.58.2"
    );
    assert!(
        etcd.keys("/vswitch/overlay/hubs/")
            .iter()
            .all(|k| !k.ends_with("192.168.58.1"))
    );

    // Hub A again, on an empty disk: every runner comes back from the store with its ID.
    std::fs::remove_dir_all(&hub_a.state_dir).expect("wipe hub A's state");
    hub_a.spawn(&[]);
    hub_a.apply_yaml(&hub_overlay("hub-a", "192.168.58.1", &store));
    let view = wait_overlay(
        &hub_a,
        "hub A, restarted on an empty disk, to list all 121 runners",
        Duration::from_secs(30),
        |v| v["runners"].as_array().is_some_and(|r| r.len() == 121),
    );
    for (name, id) in &given {
        let row = runner_row(&view, name).expect("listed");
        assert_eq!(row["id"], *id, "{name} keeps its ID: {row}");
    }
    wait_overlay(
        &hub_a,
        "runner-real to register again with hub A",
        Duration::from_secs(30),
        |v| runner_row(v, "runner-real").is_some_and(|row| row["id"] == 121 && is_online(row)),
    );
    assert!(
        c.ping_until("10.0.0.1", Duration::from_secs(20)),
        "no path to hub A after its restart"
    );
    assert_eq!(runner.ctl_json(&["overlay"])["id"], 121);
}

/// Two hubs sharing an etcd store, two runners listing both (in opposite orders): each
/// registers with its first hub; their containers reach each other across the hubs and
/// 10.0.0.1 through their own. `kill -9` of hub A: runner 1 fails over to hub B with its
/// ID, and its container reaches runner 2's again and 10.0.0.1 (hub B's now); the time
/// from the kill to the first answer across is printed.
#[test]
#[ignore = "needs root and etcd: starts etcd and vswitchd in node namespaces on a bridged veth underlay"]
fn runners_fail_over_between_hubs_sharing_an_etcd_store() {
    require(&["ping", "etcd", "etcdctl"]);
    let underlay = Underlay::new(&[
        "192.168.60.10/24",
        "192.168.60.1/24",
        "192.168.60.2/24",
        "192.168.60.3/24",
        "192.168.60.4/24",
    ]);
    let (_etcd, mut hub_a, hub_b, _) = two_hubs_on_etcd(&underlay, "");
    let r1 = Daemon::start_in(&underlay.node(3).name, 2, &[]);
    let r2 = Daemon::start_in(&underlay.node(4).name, 2, &[]);
    let runner = |name: &str, address: &str, first: &str, second: &str| {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: {name}\nspec:\n  role: runner\n  localAddress: {address}\n  hub:\n    address: {first}\n    token: {TOKEN}\n    tls: {{mode: Disabled}}\n    alternates: [{{address: {second}}}]\n  heartbeatSeconds: 1\n"
        )
    };
    r1.apply_yaml(&runner(
        "runner-1",
        "192.168.60.3",
        "192.168.60.1",
        "192.168.60.2",
    ));
    let v1 = wait_registered(&r1, "runner-1");
    r2.apply_yaml(&runner(
        "runner-2",
        "192.168.60.4",
        "192.168.60.2",
        "192.168.60.1",
    ));
    let v2 = wait_registered(&r2, "runner-2");
    assert_eq!(v1["hub"], "192.168.60.1:4799", "{v1}");
    assert_eq!(v2["hub"], "192.168.60.2:4799", "{v2}");
    let (id1, id2) = (v1["id"].clone(), v2["id"].clone());
    assert_ne!(id1, id2);
    let c1 = Netns::new("cfo1");
    let c2 = Netns::new("cfo2");
    let c1_ip = r1.attach(&c1, &["--subnet", "overlay"]);
    let ip2 = r2.attach(&c2, &["--subnet", "overlay"]);
    for (c, what) in [(&c1, "runner 1"), (&c2, "runner 2")] {
        assert!(
            c.ping_until("10.0.0.1", Duration::from_secs(10)),
            "{what}'s container cannot reach 10.0.0.1"
        );
    }
    assert!(
        c1.ping_until(&ip2, Duration::from_secs(10)),
        "runner 1's container cannot reach runner 2's across the hubs\nhub A:\n{}\nhub B:\n{}",
        tail(&hub_a.log_text(), 20),
        tail(&hub_b.log_text(), 20)
    );
    // Hub B holds runner 1's subnet with its own gateway MAC, shared (runner 1 is hub A's),
    // and hub A runner 2's: what a hub routes into a runner's subnet it does not serve (here
    // A, runner 1's pings to runner 2) must not teach that runner that the hub address's MAC
    // is behind that hub, or the runner's traffic for 10.0.0.1 would reach the other hub's
    // node instead of its own hub's.
    let copy = format!("overlay-r{id1}");
    let shared =
        |hub: &Daemon| hub.ctl_json(&["get", "subnet", &copy])["spec"]["sharedGateway"] == true;
    let wait_shared = |hub: &Daemon, want: bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared(hub) != want {
            assert!(
                Instant::now() < deadline,
                "{what}: sharedGateway is not {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_shared(&hub_b, true, "hub B's copy of runner 1's subnet");
    assert!(!shared(&hub_a), "hub A's own runner");
    c2.ping_ok(&c1_ip, 3);
    let to_hub_a = iperf3_tcp(underlay.node(1), &c1, "10.0.0.1", 1);
    let to_hub_b = iperf3_tcp(underlay.node(2), &c2, "10.0.0.1", 1);
    eprintln!(
        "10.0.0.1 from each runner's container on its own hub's node: runner 1 on A \
         {to_hub_a:.2} Gbit/s, runner 2 on B {to_hub_b:.2} Gbit/s"
    );

    let killed = Instant::now();
    hub_a.kill9();
    assert!(
        c1.ping_until(&ip2, Duration::from_secs(30)),
        "runner 1's container did not reach runner 2's after hub A died\nrunner 1:\n{}\nhub B:\n{}",
        tail(&r1.log_text(), 30),
        tail(&hub_b.log_text(), 30)
    );
    let across = killed.elapsed();
    let v1 = wait_registered(&r1, "runner-1");
    assert_eq!(
        v1["hub"], "192.168.60.2:4799",
        "runner 1 is served by hub B: {v1}"
    );
    assert_eq!(v1["id"], id1, "runner 1 keeps its ID");
    assert!(
        c1.ping_until("10.0.0.1", Duration::from_secs(10)),
        "runner 1's container cannot reach 10.0.0.1 through hub B"
    );
    let hv = wait_overlay(
        &hub_b,
        "hub B to serve runner 1",
        Duration::from_secs(10),
        |v| runner_row(v, "runner-1").is_some_and(|row| row["hub"] == "192.168.60.2"),
    );
    assert_eq!(runner_row(&hv, "runner-1").expect("listed")["id"], id1);
    wait_shared(
        &hub_b,
        false,
        "hub B serves runner 1 now: its copy is the hub's own",
    );
    eprintln!(
        "failover: runner 1's container reached runner 2's {:.1} s after hub A was killed (heartbeats every 1 s)",
        across.as_secs_f64()
    );
}

/// A hub whose etcd store is away: before it was ever read the hub serves nothing and says
/// why in its status; once read, runners it knows keep being served while etcd is down, a
/// new runner is refused with a 503 that names the store (and nothing is half-recorded),
/// and once etcd is back the new runner gets the next ID.
#[test]
#[ignore = "needs root and etcd: starts etcd and vswitchd in node namespaces on a bridged veth underlay"]
fn a_hub_serves_what_it_knows_while_its_etcd_store_is_away() {
    require(&["python3", "etcd", "etcdctl"]);
    let underlay = Underlay::new(&["192.168.59.10/24", "192.168.59.1/24", "192.168.59.3/24"]);
    let mut etcd = Etcd::stopped_in(underlay.node(0), "192.168.59.10");
    let hub = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    let sims = underlay.node(2);
    let store = format!(
        "  tls: {{mode: Disabled}}\n  store: {{etcd: {{endpoints: ['{}'], leaseSeconds: 3}}}}\n",
        etcd.endpoint
    );
    hub.apply_yaml(&hub_overlay("hub", "192.168.59.1", &store));
    let view = wait_overlay(
        &hub,
        "the hub to say its store cannot be used",
        Duration::from_secs(20),
        |v| {
            v["store"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("192.168.59.10:2379"))
        },
    );
    assert_eq!(view["store"]["ready"], false, "{view}");

    etcd.start();
    wait_overlay(
        &hub,
        "the hub to have read the store",
        Duration::from_secs(40),
        |v| v["store"]["ready"] == true,
    );
    let register = |first: &str, count: &str| {
        sims.exec_ok(&[
            "python3",
            "-c",
            SIMULATED_RUNNERS_AT,
            "192.168.59.1",
            TOKEN,
            "s",
            first,
            count,
        ])
    };
    let given = simulated_ids(&register("1", "3"));
    let mut ids: Vec<u32> = given.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3], "{given:?}");

    etcd.kill();
    // Known runners registering again (after a runner restart, say) are answered.
    let again = simulated_ids(&register("2", "1"));
    assert!(
        given.contains(&again[0]),
        "s-2 keeps its ID: {again:?} {given:?}"
    );
    // A new one is not: its ID could not be recorded.
    let refused = register("4", "1");
    assert!(
        refused.starts_with("s-4 refused 503")
            && refused.contains("not recorded")
            && refused.contains("192.168.59.10:2379"),
        "{refused}"
    );
    let view = overlay_view(&hub).expect("view");
    assert!(
        runner_row(&view, "s-4").is_none(),
        "nothing half-recorded: {view}"
    );

    etcd.start();
    let admitted = wait_until(
        "a registration once etcd is back",
        Duration::from_secs(40),
        || {
            let out = register("4", "1");
            (!out.contains("refused")).then_some(out)
        },
    );
    assert_eq!(simulated_ids(&admitted), [("s-4".to_owned(), 4)]);
    assert_eq!(etcd.keys("/vswitch/overlay/runners/").len(), 4);
    let hv = wait_overlay(
        &hub,
        "the hub to list 4 runners",
        Duration::from_secs(10),
        |v| v["runners"].as_array().is_some_and(|r| r.len() == 4),
    );
    for (name, id) in given {
        assert_eq!(runner_row(&hv, &name).expect("listed")["id"], id);
    }
}

/// A runner whose MTU differs from the hub's is refused; its status names the setting and
/// both values, and it keeps attaching containers to its local default Subnet.
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn mismatched_mtu_is_refused() {
    require(&["ping"]);
    let underlay = Underlay::new(&["192.168.50.1/24", "192.168.50.4/24"]);
    let hub = Daemon::start_in(&underlay.node(0).name, 2, &[]);
    let runner = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    hub.apply_yaml(&hub_overlay("hub", "192.168.50.1", ""));
    let pin = hub_fingerprint(&hub);
    runner.apply_yaml(&runner_overlay(
        "runner-3",
        "192.168.50.4",
        "192.168.50.1",
        &pin,
        "  mtu: 1400\n",
    ));
    let view = wait_overlay(
        &runner,
        "runner-3 (mtu 1400) to be refused by the hub (mtu 1450) with state hubUnreachable",
        Duration::from_secs(20),
        |v| {
            v["state"] == "HubUnreachable"
                && v["message"].as_str().is_some_and(|m| m.contains("mtu"))
        },
    );
    let message = view["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("1450") && message.contains("1400"),
        "the refusal must name both MTUs (hub 1450, runner 1400): {message:?}"
    );
    assert!(view["id"].is_null(), "a refused runner has no ID: {view}");

    let hv = overlay_view(&hub).expect("hub overlay view");
    assert!(
        runner_row(&hv, "runner-3").is_none(),
        "the hub must not list a refused runner: {hv}"
    );

    // Still attaching containers to the local default Subnet.
    let c = Netns::new("cm");
    let ip = runner.attach(&c, &[]);
    assert!(ip.starts_with("172.30."), "{ip}");
    c.ping_ok("172.30.0.1", 1);
}

/// Two runners configured with one name: the second is refused while the first is online
/// (409 from the hub), its status names both addresses, and the hub keeps the first. Once
/// the first is silent for the runner timeout, the second takes the name and its ID (a
/// runner that moved).
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn a_runner_name_online_elsewhere_is_refused() {
    require(&["ping"]);
    let underlay = Underlay::new(&["192.168.50.1/24", "192.168.50.5/24", "192.168.50.6/24"]);
    let hub = Daemon::start_in(&underlay.node(0).name, 2, &[]);
    let first = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    let second = Daemon::start_in(&underlay.node(2).name, 2, &[]);
    // A short timeout, so that the move at the end is quick.
    hub.apply_yaml(&hub_overlay(
        "hub",
        "192.168.50.1",
        "  runnerTimeoutSeconds: 3\n",
    ));
    let pin = hub_fingerprint(&hub);
    first.apply_yaml(&runner_overlay(
        "runner-x",
        "192.168.50.5",
        "192.168.50.1",
        &pin,
        "",
    ));
    let v1 = wait_registered(&first, "runner-x");
    assert_eq!(v1["id"], 1, "{v1}");

    second.apply_yaml(&runner_overlay(
        "runner-x",
        "192.168.50.6",
        "192.168.50.1",
        &pin,
        "",
    ));
    let view = wait_overlay(
        &second,
        "the second runner-x to be refused while the first is online",
        Duration::from_secs(20),
        |v| {
            v["state"] == "HubUnreachable"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("is online from"))
        },
    );
    let message = view["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "the hub refused registration: runner \"runner-x\" is online from 192.168.50.5; \
             refusing the registration from 192.168.50.6 (stop the other runner, or wait until \
             it is offline: 3 s without heartbeats); retrying in "
        ),
        "{message:?}"
    );
    assert!(view["id"].is_null(), "a refused runner has no ID: {view}");
    // The hub keeps the first one, and the first stays registered.
    let hv = overlay_view(&hub).expect("hub overlay view");
    let row = runner_row(&hv, "runner-x").expect("listed");
    assert_eq!(row["address"], "192.168.50.5", "{row}");
    assert_eq!(row["id"], 1, "{row}");
    assert!(is_online(row), "{row}");
    assert_eq!(
        overlay_view(&first).expect("runner view")["state"],
        "Registered"
    );

    // The first node leaves the underlay: once it is offline, the second takes the name and
    // keeps its ID (its retries back off to at most 30 s).
    underlay
        .node(1)
        .exec_ok(&["ip", "link", "set", "eth0", "down"]);
    let v2 = wait_overlay(
        &second,
        "the second runner-x to be registered once the first is offline",
        Duration::from_secs(45),
        |v| v["state"] == "Registered",
    );
    assert_eq!(v2["id"], 1, "the name keeps its ID: {v2}");
    let hv = wait_overlay(
        &hub,
        "the hub to list runner-x online at its new address",
        Duration::from_secs(10),
        |v| {
            runner_row(v, "runner-x")
                .is_some_and(|row| is_online(row) && row["address"] == "192.168.50.6")
        },
    );
    assert_eq!(
        runner_row(&hv, "runner-x").expect("listed")["id"],
        1,
        "{hv}"
    );
}

/// A vswitchd mesh node and a node built only from kernel pieces share VNI 77: ping both ways,
/// iperf3, and the VXLAN headers vswitchd sends are what RFC 7348 and Linux expect.
#[test]
#[ignore = "needs root: starts vswitchd in a node namespace, creates kernel vxlan devices"]
fn kernel_vxlan_interop_mesh() {
    require(&["ping", "iperf3", "tcpdump", "bridge"]);
    let mesh = MeshWithKernelPeer::new();
    let (ca, cb, daemon) = (&mesh.ca, &mesh.cb, &mesh.daemon);
    assert_mtu(ca, 1450);

    assert!(
        ca.ping_until("10.77.0.20", Duration::from_secs(10)),
        "the vswitchd container cannot reach the kernel node's container 10.77.0.20\ndaemon log:\n{}",
        tail(&daemon.log_text(), 40)
    );
    ca.ping_ok("10.77.0.20", 3);
    cb.ping_ok(&mesh.ca_ip, 3);
    // The switch's gateway is on the stretched segment too.
    cb.ping_ok("10.77.0.1", 2);
    // The kernel node's container is learned behind its VTEP, and counted as such.
    let listed = daemon.ctl_json(&["fdb"]);
    let behind: Vec<&Value> = listed
        .as_array()
        .map(|rows| rows.iter().filter(|r| r.get("vtep").is_some()).collect())
        .unwrap_or_default();
    assert!(
        !behind.is_empty(),
        "no MAC behind the kernel VTEP: {listed}"
    );
    let counts = daemon.ctl_json(&["fdb", "--count"]);
    assert_eq!(
        counts["remote"].as_u64(),
        Some(behind.len() as u64),
        "{counts}\n{listed}"
    );
    assert_eq!(
        counts["count"].as_u64(),
        listed.as_array().map(|rows| rows.len() as u64),
        "{counts}"
    );

    let there = iperf3_tcp(cb, ca, "10.77.0.20", 2);
    let back = iperf3_tcp(ca, cb, &mesh.ca_ip, 2);
    eprintln!(
        "mesh <-> kernel VXLAN iperf3 Gbit/s: vswitchd->kernel {there:.2}, kernel->vswitchd {back:.2}"
    );
    print_drops(daemon, "node-a");

    // What vswitchd sends, as seen on the kernel node's underlay interface.
    let node_b = mesh.underlay.node(1);
    let capture = start_capture(
        node_b,
        "eth0",
        5,
        "src host 192.168.51.1 and udp dst port 4789",
    );
    let out = ca.exec(&["ping", "-c", "8", "-i", "0.2", "-W", "1", "10.77.0.20"]);
    assert!(out.status.success(), "ping during the capture failed");
    let (pcap, errors) = finish_capture(capture, Duration::from_secs(5));
    let frames = pcap_frames(&pcap);
    let packets: Vec<OuterPacket> = frames.iter().filter_map(|f| outer_packet(f)).collect();
    assert!(
        packets.len() >= 5,
        "expected 5 VXLAN packets from 192.168.51.1, captured {} ({errors})",
        packets.len()
    );
    for p in &packets {
        assert_eq!(p.src, [192, 168, 51, 1], "{p:?}");
        assert_eq!(p.dst_port, 4789, "{p:?}");
        assert_eq!(p.vxlan[0], 0x08, "flags must be exactly the I flag: {p:?}");
        assert_eq!(
            [p.vxlan[1], p.vxlan[2], p.vxlan[3], p.vxlan[7]],
            [0, 0, 0, 0],
            "reserved bytes must be zero: {p:?}"
        );
        let vni = u32::from_be_bytes([0, p.vxlan[4], p.vxlan[5], p.vxlan[6]]);
        assert_eq!(vni, 77, "{p:?}");
        assert!(
            (32768..=60999).contains(&p.src_port),
            "outer UDP source port must be in 32768-60999: {p:?}"
        );
        assert_eq!(p.ttl, 64, "outer TTL 64: {p:?}");
        assert_eq!(
            p.udp_checksum, 0,
            "outer UDP checksum is off by default: {p:?}"
        );
    }
    eprintln!(
        "captured source ports: {:?}",
        packets.iter().map(|p| p.src_port).collect::<Vec<_>>()
    );
}

/// `vswitchctl capture vxlan` shows the VTEP's outer packets: IPv4/UDP to port 4789 between
/// the nodes, the VXLAN header with the VNI, the inner ICMP; the capture ends with its client.
#[test]
#[ignore = "needs root: starts vswitchd in a node namespace, creates kernel vxlan devices"]
fn vtep_capture_shows_outer_packets() {
    require(&["ping", "tcpdump", "bridge"]);
    let mesh = MeshWithKernelPeer::new();
    let (ca, daemon) = (&mesh.ca, &mesh.daemon);
    assert!(
        ca.ping_until("10.77.0.20", Duration::from_secs(10)),
        "the vswitchd container cannot reach 10.77.0.20"
    );
    let captures = || {
        daemon.stats()["captures"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("vtep.pcap");
    let mut client = Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["capture", "vxlan", "-w"])
        .arg(&file)
        .args(["udp", "port", "4789"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vswitchctl capture");
    wait_until("the capture on vxlan", Duration::from_secs(10), || {
        captures()
            .iter()
            .any(|c| c["port"] == "vxlan")
            .then_some(())
    });
    ca.exec_ok(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.77.0.20"]);
    // The count of captured frames includes the containers' own multicast reports: wait for
    // the echoes themselves in the file (the client writes each chunk as it comes).
    wait_until(
        "3 echo requests and replies in the pcap",
        Duration::from_secs(10),
        || {
            let out = Command::new("tcpdump")
                .args(["-n", "-r"])
                .arg(&file)
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            (text.matches("ICMP echo request").count() >= 3
                && text.matches("ICMP echo reply").count() >= 3)
                .then_some(())
        },
    );
    client.kill().expect("kill");
    let _ = client.wait();
    wait_until("the capture to stop", Duration::from_secs(5), || {
        captures().is_empty().then_some(())
    });

    let data = std::fs::read(&file).expect("pcap");
    let packets: Vec<OuterPacket> = pcap_frames(&data)
        .iter()
        .filter_map(|frame| outer_packet(frame))
        .collect();
    let sent = packets
        .iter()
        .filter(|p| p.src == [192, 168, 51, 1])
        .count();
    let received = packets
        .iter()
        .filter(|p| p.src == [192, 168, 51, 2])
        .count();
    assert!(
        sent >= 3 && received >= 3,
        "sent {sent}, received {received}: {packets:?}"
    );
    for p in &packets {
        assert_eq!(p.dst_port, 4789, "{p:?}");
        assert_eq!(p.vxlan[0], 0x08, "{p:?}");
        assert_eq!(
            u32::from_be_bytes([0, p.vxlan[4], p.vxlan[5], p.vxlan[6]]),
            77,
            "{p:?}"
        );
    }
    // tcpdump decodes them as VXLAN with the inner ICMP.
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.matches("vni 77").count() >= 6, "{text}");
    assert!(text.matches("ICMP echo request").count() >= 3, "{text}");
    assert!(text.matches("ICMP echo reply").count() >= 3, "{text}");
}

/// Sends `bytes` bytes of a fixed pseudo-random stream over TCP from `client` to `server`
/// (listening on `server_ip`:5201 first) and returns the SHA-256 both ends computed.
fn tcp_transfer_digests(
    server: &Netns,
    client: &Netns,
    server_ip: &str,
    bytes: usize,
) -> (String, String) {
    const STREAM: &str = r#"
import hashlib, socket, time
def stream(n):
    block = hashlib.sha256(b"vswitch").digest() * 2048
    i = 0
    while n > 0:
        chunk = (hashlib.sha256(i.to_bytes(8, "big")).digest() + block)[:n]
        yield chunk
        n -= len(chunk)
        i += 1
"#;
    let receive = format!(
        r#"{STREAM}
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{server_ip}", 5201))
s.listen(1)
c, _ = s.accept()
h = hashlib.sha256()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest())
"#
    );
    let send = format!(
        r#"{STREAM}
for attempt in range(100):
    try:
        c = socket.create_connection(("{server_ip}", 5201), timeout=10)
        break
    except OSError:
        time.sleep(0.1)
h = hashlib.sha256()
for chunk in stream({bytes}):
    h.update(chunk)
    c.sendall(chunk)
c.close()
print({bytes}, h.hexdigest())
"#
    );
    let mut receiver = server.spawn(&["python3", "-c", &receive]);
    let sent = client.exec_ok(&["python3", "-c", &send]);
    let status = wait_until("the receiver to finish", Duration::from_secs(60), || {
        receiver.try_wait().ok().flatten()
    });
    let mut out = String::new();
    let mut err = String::new();
    {
        use std::io::Read;
        if let Some(mut stdout) = receiver.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        if let Some(mut stderr) = receiver.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
    }
    assert!(status.success(), "the receiver failed: {err}");
    (sent.trim().to_string(), out.trim().to_string())
}

/// VXLAN remote checksum offload against the kernel's (`remcsumtx remcsumrx`): TCP both
/// ways arrives intact (the SHA-256 of 32 MiB at both ends), vswitchd's super-frames go out
/// with the option (C flag and its byte after the VNI, as Linux lays them out), and the
/// kernel's datagrams with the option are taken, not dropped.
#[test]
#[ignore = "needs root: starts vswitchd in a node namespace, creates kernel vxlan devices"]
fn kernel_vxlan_interop_remote_checksum_offload() {
    require(&["ping", "iperf3", "tcpdump", "bridge", "python3"]);
    let mesh = MeshWithKernelPeer::with_remote_checksum_offload(true);
    let (ca, cb, daemon) = (&mesh.ca, &mesh.cb, &mesh.daemon);
    assert!(
        ca.ping_until("10.77.0.20", Duration::from_secs(10)),
        "the vswitchd container cannot reach the kernel node's container\ndaemon log:\n{}",
        tail(&daemon.log_text(), 40)
    );
    cb.ping_ok(&mesh.ca_ip, 3);

    // vswitchd -> kernel, captured on the kernel node's underlay: bulk TCP leaves as
    // super-frames, segmented with their inner checksums partial and the option set.
    let node_b = mesh.underlay.node(1);
    let capture = start_capture(
        node_b,
        "eth0",
        200,
        "src host 192.168.51.1 and udp dst port 4789 and greater 1000",
    );
    let (sent, received) = tcp_transfer_digests(cb, ca, "10.77.0.20", 32 << 20);
    assert_eq!(
        sent, received,
        "vswitchd -> kernel: the stream arrived changed"
    );
    let (pcap, errors) = finish_capture(capture, Duration::from_secs(10));
    let packets: Vec<OuterPacket> = pcap_frames(&pcap)
        .iter()
        .filter_map(|f| outer_packet(f))
        .collect();
    let with_option = packets.iter().filter(|p| p.vxlan[1] & 0x20 != 0).count();
    assert!(
        with_option > 0,
        "no datagram from vswitchd carried the RCO option ({} captured; {errors})",
        packets.len()
    );
    for p in packets.iter().filter(|p| p.vxlan[1] & 0x20 != 0) {
        assert_eq!(p.vxlan[0], 0x08, "{p:?}");
        // TCP over IPv4 without options: start 34 (17 in the byte), offset TCP's (O clear).
        assert_eq!(p.vxlan[7], 17, "{p:?}");
        assert_ne!(p.udp_checksum, 0, "the outer checksum covers them: {p:?}");
    }

    // kernel -> vswitchd: the kernel's datagrams carry the option too; none is dropped.
    let (sent, received) = tcp_transfer_digests(ca, cb, &mesh.ca_ip, 32 << 20);
    assert_eq!(
        sent, received,
        "kernel -> vswitchd: the stream arrived changed"
    );
    let (drops, stats) = vxlan_drops(daemon, &["vxlan.reserved_bits"]);
    assert_eq!(
        drops,
        [0],
        "datagrams with the option were dropped: {stats}"
    );
    let there = iperf3_tcp(cb, ca, "10.77.0.20", 2);
    let back = iperf3_tcp(ca, cb, &mesh.ca_ip, 2);
    eprintln!(
        "mesh <-> kernel VXLAN with RCO, iperf3 Gbit/s: vswitchd->kernel {there:.2}, kernel->vswitchd {back:.2}"
    );
}

/// A kernel-only node configured on the hub as a static runner gets ID 1 (VNI 101,
/// 10.1.0.0/16) and exchanges traffic with the hub node's stack at 10.0.0.1.
#[test]
#[ignore = "needs root: starts vswitchd in a node namespace, creates kernel vxlan devices"]
fn kernel_node_as_static_runner() {
    require(&["ping", "iperf3", "bridge"]);
    let underlay = Underlay::new(&["192.168.52.1/24", "192.168.52.2/24"]);
    let hub_ns = underlay.node(0);
    let hub = Daemon::start_in(&hub_ns.name, 2, &[]);
    hub.apply_yaml(&hub_overlay(
        "hub",
        "192.168.52.1",
        "  runners:\n  - name: kern1\n    address: 192.168.52.2\n",
    ));
    let hv = wait_overlay(
        &hub,
        "the hub to be up and list kern1",
        Duration::from_secs(10),
        |v| v["state"] == "Up" && runner_row(v, "kern1").is_some(),
    );
    let row = runner_row(&hv, "kern1").expect("listed");
    assert_eq!(row["id"], 1, "{row}");
    assert_eq!(row["vni"], 101, "{row}");
    assert_eq!(row["subnet"], "10.1.0.0/16", "{row}");
    assert_eq!(row["address"], "192.168.52.2", "{row}");

    let kc = Netns::new("kc");
    kernel_vxlan_node(
        underlay.node(1),
        101,
        "192.168.52.2",
        "192.168.52.1",
        &kc,
        "10.1.0.10/16",
    );
    kc.exec_ok(&["ip", "route", "add", "10.0.0.0/8", "via", "10.1.0.254"]);

    assert!(
        kc.ping_until("10.0.0.1", Duration::from_secs(10)),
        "the kernel node's container cannot reach the hub node at 10.0.0.1\nhub log:\n{}",
        tail(&hub.log_text(), 40)
    );
    kc.ping_ok("10.0.0.1", 3);
    hub_ns.ping_ok("10.1.0.10", 3);
    let gbps = iperf3_tcp(hub_ns, &kc, "10.0.0.1", 2);
    eprintln!("kernel static runner -> hub iperf3: {gbps:.2} Gbit/s");
    print_drops(&hub, "hub");
    // Every sender here keeps to the overlay MTU (the container's eth0 is 1450), so nothing
    // that arrives over the overlay may be too big. (Over a veth underlay the kernel node
    // sends TCP super-packets as one VXLAN datagram each, which a userspace VTEP receives
    // whole; they carry segments of at most 1450 bytes.)
    let too_big = hub.port_drop("vxlan", "l3.mtu_exceeded");
    assert_eq!(
        too_big, 0,
        "the hub dropped {too_big} packets from the kernel runner as l3.mtu_exceeded, though \
         the kernel runner's container sends at most 1450-byte packets (iperf3: {gbps:.3} Gbit/s)"
    );
}

/// Malformed VXLAN datagrams are dropped, each counted under its reason on port `vxlan`; the
/// daemon lives on and the overlay still carries traffic.
#[test]
#[ignore = "needs root: starts vswitchd in a node namespace, creates kernel vxlan devices"]
fn malformed_vxlan_is_counted_and_dropped() {
    require(&["ping", "python3", "bridge"]);
    let mesh = MeshWithKernelPeer::new();
    let daemon = &mesh.daemon;
    assert!(
        mesh.ca.ping_until("10.77.0.20", Duration::from_secs(10)),
        "the overlay does not work before the test\ndaemon log:\n{}",
        tail(&daemon.log_text(), 40)
    );

    // A 60-byte inner frame to a MAC nobody has, from a locally administered one.
    let inner = format!(
        "02000000aa01020000007701{}",
        "88b5".to_owned() + &"00".repeat(46)
    );
    assert_eq!(inner.len(), 120);
    let header = |flags: &str, vni: u32, last: &str| format!("{flags}000000{:06x}{last}", vni);
    let sets: [(&str, Vec<String>); 5] = [
        (
            "vxlan.truncated",
            vec!["08".into(), "08000000".into(), "08000000000000".into()],
        ),
        (
            "vxlan.bad_flags",
            vec![
                format!("{}{inner}", header("00", 77, "00")),
                format!("{}{inner}", header("00", 77, "00")),
            ],
        ),
        (
            "vxlan.reserved_bits",
            vec![
                // The I flag and another flag bit.
                format!("{}{inner}", header("0c", 77, "00")),
                // The I flag, and the last (reserved) byte set.
                format!("{}{inner}", header("08", 77, "01")),
            ],
        ),
        (
            "vxlan.unknown_vni",
            vec![
                format!("{}{inner}", header("08", 999, "00")),
                format!("{}{inner}", header("08", 999, "00")),
            ],
        ),
        (
            "vxlan.inner_truncated",
            vec![
                format!("{}ffffffffffff", header("08", 77, "00")),
                format!("{}ffffffffffff", header("08", 77, "00")),
            ],
        ),
    ];
    let (before, _) = vxlan_drops(daemon, &RX_REASONS);
    let node_b = mesh.underlay.node(1);
    for (_, datagrams) in &sets {
        send_udp(node_b, "192.168.51.2", "192.168.51.1", datagrams);
    }
    let expected: Vec<u64> = sets
        .iter()
        .zip(&before)
        .map(|((_, d), b)| b + u64::try_from(d.len()).expect("count"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut after, mut stats) = vxlan_drops(daemon, &RX_REASONS);
    while after != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        (after, stats) = vxlan_drops(daemon, &RX_REASONS);
    }
    for (((reason, datagrams), b), a) in sets.iter().zip(&before).zip(&after) {
        assert_eq!(
            a - b,
            u64::try_from(datagrams.len()).expect("count"),
            "port `vxlan` counter {reason}: sent {} such datagrams, counted {} (ports: {:?})\nstats: {}\ndaemon log (tail):\n{}",
            datagrams.len(),
            a.saturating_sub(*b),
            port_names(&stats),
            serde_json::to_string_pretty(&stats).unwrap_or_default(),
            tail(&daemon.log_text(), 30)
        );
    }

    // Alive and still forwarding.
    daemon.ctl_ok(&["get", "networks"]);
    mesh.ca.ping_ok("10.77.0.20", 3);
    mesh.cb.ping_ok(&mesh.ca_ip, 2);
}

/// An Overlay whose localAddress is loopback or unspecified is refused with advice, and
/// nothing is created.
#[test]
#[ignore = "needs root: starts vswitchd in a network namespace"]
fn loopback_local_address_is_refused() {
    require(&[]);
    let node = Netns::new("lo");
    let daemon = Daemon::start_in(&node.name, 1, &[]);
    // Both addresses are tried before asserting, so a failure reports both.
    let mut wrong = Vec::new();
    for address in ["127.0.0.1", "0.0.0.0"] {
        let (code, text) =
            apply_refused(&daemon, &mesh_overlay("node", address, &["192.168.53.2"]));
        if code == Some(0)
            || !text.contains("localAddress")
            || !text.contains("address the other nodes reach")
        {
            wrong.push(format!("localAddress {address} (exit {code:?}):\n{text}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the refusal must exit non-zero, name localAddress and contain \"address the other nodes reach\":\n{}",
        wrong.join("\n")
    );
    let overlays = daemon.ctl_json(&["get", "overlays"]);
    assert_eq!(
        overlays.as_array().map(Vec::len),
        Some(0),
        "no Overlay may exist after refusals: {overlays}"
    );
}

/// Whether `haystack` contains `needle`.
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Test PKI: a CA, a hub certificate it signed for `hub_ip`, and an unrelated CA, as PEM files
/// in a temporary directory.
struct TestPki {
    dir: tempfile::TempDir,
    /// The fingerprint of the hub certificate.
    hub_fingerprint: String,
}

impl TestPki {
    fn new(hub_ip: &str) -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("vspki")
            .tempdir()
            .expect("tempdir");
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("CA key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.self_signed(&key).expect("CA certificate");
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("vswitch test CA");
        let (other_cert, _) = ca("another CA");
        let hub_key = rcgen::KeyPair::generate().expect("hub key");
        let hub_cert = rcgen::CertificateParams::new(vec![hub_ip.to_owned()])
            .expect("params")
            .signed_by(&hub_key, &ca_cert, &ca_key)
            .expect("hub certificate");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write PEM");
        };
        write("ca.pem", ca_cert.pem());
        write("other-ca.pem", other_cert.pem());
        write("hub.pem", hub_cert.pem());
        write("hub-key.pem", hub_key.serialize_pem());
        let hub_fingerprint = vswitch::tls::Fingerprint::of(hub_cert.der()).to_string();
        TestPki {
            dir,
            hub_fingerprint,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

/// The hub serves TLS from configured files; a runner trusting its CA registers
/// and passes traffic, and the token is nowhere in a capture of the underlay; a runner
/// pinning another fingerprint, one trusting another CA, and one speaking plain HTTP are
/// each refused with a status that says why; resources naming unusable files are refused
/// with their field paths.
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn hub_tls_trust_is_checked_and_the_token_never_crosses_in_clear() {
    require(&["ping", "tcpdump"]);
    let underlay = Underlay::new(&["192.168.53.1/24", "192.168.53.2/24", "192.168.53.3/24"]);
    let hub_ns = underlay.node(0);
    let hub = Daemon::start_in(&hub_ns.name, 2, &[]);
    let runner = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    let probe = Daemon::start_in(&underlay.node(2).name, 2, &[]);
    let pki = TestPki::new("192.168.53.1");

    // Unusable files are refused when applied, naming the field.
    let (_, text) = apply_refused(
        &hub,
        &hub_overlay(
            "hub",
            "192.168.53.1",
            &format!(
                "  tls:\n    certificateFile: {}\n    keyFile: hub-key.pem\n",
                pki.path("missing.pem")
            ),
        ),
    );
    for part in [
        "spec.tls.certificateFile",
        "cannot read",
        "spec.tls.keyFile",
        "not an absolute path",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    let (_, text) = apply_refused(
        &probe,
        &runner_overlay_tls(
            "probe",
            "192.168.53.3",
            "192.168.53.1",
            &format!("{{caFile: {}}}", pki.path("nope.pem")),
            "",
        ),
    );
    assert!(
        text.contains("spec.hub.tls.caFile") && text.contains("cannot read"),
        "{text}"
    );

    hub.apply_yaml(&hub_overlay(
        "hub",
        "192.168.53.1",
        &format!(
            "  tls:\n    certificateFile: {}\n    keyFile: {}\n",
            pki.path("hub.pem"),
            pki.path("hub-key.pem")
        ),
    ));
    let pin = hub_fingerprint(&hub);
    assert_eq!(
        pin, pki.hub_fingerprint,
        "the hub serves the configured certificate"
    );
    let hv = overlay_view(&hub).expect("hub view");
    assert_eq!(hv["tls"]["generated"], false, "{hv}");

    // Registration, captured on the hub's underlay port: TLS from the first byte.
    let capture = start_capture(hub_ns, "eth0", 100_000, "tcp port 4799");
    runner.apply_yaml(&runner_overlay_tls(
        "runner-ca",
        "192.168.53.2",
        "192.168.53.1",
        &format!("{{caFile: {}}}", pki.path("ca.pem")),
        "",
    ));
    let view = wait_registered(&runner, "runner-ca");
    assert_eq!(view["tls"], "CaFile", "{view}");
    // A few heartbeats too.
    std::thread::sleep(Duration::from_secs(3));
    let (pcap, errors) = finish_capture(capture, Duration::from_millis(500));
    let frames = pcap_frames(&pcap);
    assert!(
        frames.len() >= 10,
        "the capture saw too little of the registration ({} frames):\n{errors}",
        frames.len()
    );
    assert!(
        !contains_bytes(&pcap, TOKEN.as_bytes()),
        "the token crossed the underlay in clear"
    );
    assert!(
        !contains_bytes(&pcap, b"runner-ca"),
        "the registration crossed the underlay in clear"
    );

    // Traffic over the overlay of a runner registered over TLS.
    let c = Netns::new("ct");
    runner.attach(&c, &["--subnet", "overlay"]);
    assert!(
        c.ping_until("10.0.0.1", Duration::from_secs(10)),
        "a container of runner-ca cannot reach the hub at 10.0.0.1"
    );

    // Another fingerprint pinned: refused before anything is sent, naming both.
    let wrong = vswitch::tls::Fingerprint::of(b"not the hub").to_string();
    probe.apply_yaml(&runner_overlay(
        "probe",
        "192.168.53.3",
        "192.168.53.1",
        &wrong,
        "",
    ));
    let view = wait_overlay(
        &probe,
        "a runner pinning another fingerprint to be refused",
        Duration::from_secs(20),
        |v| v["state"] == "HubUnreachable" && v["message"].is_string(),
    );
    let message = view["message"].as_str().unwrap_or_default();
    for part in ["is not trusted, nothing was sent", &pin, &wrong] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    // Another CA: refused.
    probe.apply_yaml(&runner_overlay_tls(
        "probe",
        "192.168.53.3",
        "192.168.53.1",
        &format!("{{caFile: {}}}", pki.path("other-ca.pem")),
        "",
    ));
    let view = wait_overlay(
        &probe,
        "a runner trusting another CA to be refused",
        Duration::from_secs(20),
        |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("UnknownIssuer"))
        },
    );
    assert_eq!(view["state"], "HubUnreachable", "{view}");
    assert!(
        view["message"]
            .as_str()
            .is_some_and(|m| m.contains("is not trusted")),
        "{view}"
    );
    // Plain HTTP against the TLS hub: the hub answers that it takes TLS only.
    probe.apply_yaml(&runner_overlay_tls(
        "probe",
        "192.168.53.3",
        "192.168.53.1",
        "{mode: Disabled}",
        "",
    ));
    let view = wait_overlay(
        &probe,
        "a plain-HTTP runner to be refused",
        Duration::from_secs(20),
        |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("over TLS only"))
        },
    );
    assert_eq!(view["state"], "HubUnreachable", "{view}");
    let hv = overlay_view(&hub).expect("hub view");
    assert!(runner_row(&hv, "probe").is_none(), "{hv}");
}

/// Plain HTTP only when asked for on both sides, and then said in the status: the negative
/// control of the capture above (the same capture finds the token in clear).
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn plaintext_hub_is_explicit_and_warned() {
    require(&["tcpdump"]);
    let underlay = Underlay::new(&["192.168.55.1/24", "192.168.55.2/24"]);
    let hub_ns = underlay.node(0);
    let hub = Daemon::start_in(&hub_ns.name, 2, &[]);
    let runner = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    hub.apply_yaml(&hub_overlay(
        "hub",
        "192.168.55.1",
        "  tls: {mode: Disabled}\n",
    ));
    let hv = wait_overlay(
        &hub,
        "the plain hub to be up",
        Duration::from_secs(20),
        |v| v["state"] == "Up" && v["message"].is_string(),
    );
    assert_eq!(hv["tls"]["enabled"], false, "{hv}");
    assert!(
        hv["message"]
            .as_str()
            .unwrap_or_default()
            .contains("in clear"),
        "{hv}"
    );
    let text = hub.ctl_ok(&["overlay"]);
    assert!(text.contains("plain HTTP"), "{text}");
    let capture = start_capture(hub_ns, "eth0", 100_000, "tcp port 4799");
    runner.apply_yaml(&runner_overlay_tls(
        "runner-plain",
        "192.168.55.2",
        "192.168.55.1",
        "{mode: Disabled}",
        "",
    ));
    let view = wait_registered(&runner, "runner-plain");
    assert_eq!(view["tls"], "Disabled", "{view}");
    let view = wait_overlay(
        &runner,
        "the plain runner's status to warn",
        Duration::from_secs(10),
        |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("in clear"))
        },
    );
    assert_eq!(view["state"], "Registered", "{view}");
    let (pcap, _) = finish_capture(capture, Duration::from_millis(500));
    assert!(
        contains_bytes(&pcap, TOKEN.as_bytes()),
        "plain HTTP: the capture must show the token (else the TLS test proves nothing)"
    );
}

/// The attacker: holds up to 16 connections to the hub API from each address given, opening
/// new ones as the hub closes them, for at most `argv[2]` seconds.
const SLOT_HOLDER: &str = r#"
import socket, sys, time
hub = (sys.argv[1], 4799)
end = time.time() + float(sys.argv[2])
held = {address: [] for address in sys.argv[3:]}
while time.time() < end:
    for address, sockets in held.items():
        alive = []
        for s in sockets:
            try:
                if s.recv(1, socket.MSG_DONTWAIT) == b"":
                    s.close()
                    continue
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                continue
            alive.append(s)
        while len(alive) < 16:
            s = socket.socket()
            s.bind((address, 0))
            s.settimeout(1)
            try:
                s.connect(hub)
            except OSError:
                s.close()
                break
            alive.append(s)
        held[address] = alive
    time.sleep(0.1)
"#;

/// Kills a background process on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Many addresses on the underlay hold every connection slot the hub gives to
/// addresses it does not know (each of twelve addresses asking for 16, for 64 slots), yet a
/// registered runner keeps sending heartbeats, and registers again after a restart.
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn a_registered_runner_reaches_the_hub_while_other_addresses_hold_every_slot() {
    require(&["python3"]);
    let underlay = Underlay::new(&["192.168.54.1/24", "192.168.54.2/24", "192.168.54.3/24"]);
    let hub = Daemon::start_in(&underlay.node(0).name, 2, &[]);
    let mut runner = Daemon::start_in(&underlay.node(1).name, 2, &[]);
    let attacker = underlay.node(2);
    hub.apply_yaml(&hub_overlay("hub", "192.168.54.1", ""));
    let pin = hub_fingerprint(&hub);
    runner.apply_yaml(&runner_overlay(
        "runner-a",
        "192.168.54.2",
        "192.168.54.1",
        &pin,
        "",
    ));
    wait_registered(&runner, "runner-a");

    let addresses: Vec<String> = (100..112)
        .map(|host| format!("192.168.54.{host}"))
        .collect();
    for address in &addresses {
        attacker.exec_ok(&["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
    }
    let mut command = vec!["python3", "-c", SLOT_HOLDER, "192.168.54.1", "120"];
    command.extend(addresses.iter().map(String::as_str));
    let _holder = KillOnDrop(attacker.spawn(&command));

    // The pool of other addresses fills up: the hub says so.
    wait_until(
        "the hub to log that every slot for other addresses is taken",
        Duration::from_secs(20),
        || {
            hub.log_text()
                .contains("every connection slot for other addresses is taken")
                .then_some(())
        },
    );
    // Heartbeats still get through, for longer than the slots' holders' 10 s handshake
    // deadline (they reconnect all the while).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let hv = overlay_view(&hub).expect("hub view");
        let row = runner_row(&hv, "runner-a").expect("listed");
        assert!(
            is_online(row),
            "runner-a went offline under the attack: {hv}"
        );
        assert!(
            row["lastSeenSecondsAgo"].as_u64().is_some_and(|s| s <= 4),
            "runner-a's heartbeats stopped under the attack: {row}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A restarted runner registers again, through the attack.
    runner.kill9();
    let restarted_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    runner.spawn(&[]);
    let view = wait_overlay(
        &runner,
        "the restarted runner to register again under the attack",
        Duration::from_secs(30),
        |v| {
            v["state"] == "Registered"
                && v["lastContact"].as_u64().is_some_and(|t| t >= restarted_at)
        },
    );
    assert_eq!(view["id"], 1, "{view}");
    assert!(
        hub.log_text()
            .contains("every connection slot for other addresses is taken"),
        "the attack must still be going on"
    );
}

/// IPv6 inside the overlay: a dual-stack Subnet stretched over VNI 78 between a vswitchd
/// mesh node and a node built only from kernel pieces. IPv6 is switched across the tunnel
/// both ways (ND through it, ping -6, TCP), the kernel container reaches the switch's IPv6
/// gateway across the tunnel, and is routed by it into a local dual-stack Subnet and back.
#[test]
#[ignore = "needs root: starts vswitchd in a node namespace, creates kernel vxlan devices"]
fn ipv6_inside_a_mesh_overlay_with_a_kernel_peer() {
    require(&["ping", "iperf3", "bridge"]);
    let underlay = Underlay::new(&["192.168.53.1/24", "192.168.53.2/24"]);
    let daemon = Daemon::start_in(&underlay.node(0).name, 2, &[]);
    daemon.apply_yaml(&format!(
        "{}---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: m\nspec:\n  peerings: []\n---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: m\nspec:\n  network: m\n  cidr: 10.78.0.0/24\n  gateway: 10.78.0.1\n  vni: 78\n  ipv6: {{cidr: 'fd00:78::/64'}}\n---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: n\nspec:\n  network: m\n  cidr: 10.79.0.0/24\n  ipv6: {{cidr: 'fd00:79::/64'}}\n",
        mesh_overlay("node-a", "192.168.53.1", &["192.168.53.2"])
    ));
    wait_overlay(
        &daemon,
        "the mesh VTEP to be up",
        Duration::from_secs(10),
        |v| v["state"] == "Up",
    );
    let ca = Netns::new("c6a");
    daemon.attach(&ca, &["--subnet", "m"]);
    let cn = Netns::new("c6n");
    daemon.attach(&cn, &["--subnet", "n", "--kind", "veth"]);
    let ipv6_of = |name: &str| {
        let nic = daemon.ctl_json(&["get", "networkinterface", name]);
        let ip = nic["status"]["ipv6"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ip.split('/').next().unwrap_or_default().to_string()
    };
    let (ca6, cn6) = (ipv6_of(&ca.name), ipv6_of(&cn.name));
    assert!(ca6.starts_with("fd00:78::"), "{ca6}");
    assert!(cn6.starts_with("fd00:79::"), "{cn6}");
    let cb = Netns::new("c6b");
    kernel_vxlan_node_with(
        underlay.node(1),
        78,
        "192.168.53.2",
        "192.168.53.1",
        &cb,
        "10.78.0.20/24",
        &[],
    );
    cb.exec_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:78::20/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    cb.exec_ok(&["ip", "-6", "route", "add", "default", "via", "fd00:78::1"]);

    let ping6 = |from: &Netns, to: &str| {
        let out = from.exec(&["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", to]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.contains("3 received"),
            "ping -6 from {} to {to} failed:\n{text}\ndaemon log:\n{}",
            from.name,
            tail(&daemon.log_text(), 30)
        );
    };
    // Switched across the tunnel, ND through it, both ways.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let out = ca.exec(&["ping", "-6", "-c", "1", "-W", "1", "fd00:78::20"]);
        if out.status.success() {
            break;
        }
    }
    ping6(&ca, "fd00:78::20");
    ping6(&cb, &ca6);
    // The switch's IPv6 gateway answers across the tunnel, and routes the kernel node's
    // container into a local Subnet and back.
    ping6(&cb, "fd00:78::1");
    ping6(&cb, &cn6);
    ping6(&cn, "fd00:78::20");
    let neighbours = cb.exec_ok(&["ip", "-6", "neigh", "show", "fd00:78::1"]);
    assert!(
        neighbours.contains("router"),
        "the gateway's NA crossed the tunnel with the router flag: {neighbours}"
    );
    // TCP over IPv6 through the tunnel, both ways, and routed: the kernel peer on a veth
    // leaves inner checksums partial and bursts unsegmented, which the switch makes whole.
    let back = iperf3_tcp(&ca, &cb, &ca6, 2);
    let there = iperf3_tcp(&cb, &ca, "fd00:78::20", 2);
    let routed = iperf3_tcp(&cn, &cb, &cn6, 2);
    eprintln!(
        "IPv6 in the overlay, iperf3 Gbit/s: vswitchd->kernel {there:.2}, kernel->vswitchd {back:.2}, kernel->routed {routed:.2}"
    );
    assert!(there > 0.0 && back > 0.0 && routed > 0.0);
    print_drops(&daemon, "node-a");
}

/// The mesh overlay over an IPv6 underlay: vswitchd's VTEP on `fd00:53::1` and a node built
/// from kernel pieces (a Linux VXLAN device with `local fd00:53::2`). Frames cross both ways
/// (ARP and ND through the tunnel, ping and TCP of both inner families, routed by the
/// switch's gateway), the overlay MTU defaults to 1430 (1500 minus 70 bytes of VXLAN over
/// IPv6) and a full-size packet with DF crosses whole, the kernel accepting our outer UDP
/// checksums.
#[test]
#[ignore = "needs root: starts vswitchd in a node namespace, creates kernel vxlan devices"]
fn mesh_over_an_ipv6_underlay_with_a_kernel_peer() {
    require(&["ping", "iperf3", "bridge"]);
    let underlay = Underlay::new(&["fd00:53::1/64", "fd00:53::2/64"]);
    let daemon = Daemon::start_in(&underlay.node(0).name, 2, &[]);
    daemon.apply_yaml(&format!(
        "{}---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: m\nspec:\n  peerings: []\n---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: m\nspec:\n  network: m\n  cidr: 10.88.0.0/24\n  gateway: 10.88.0.1\n  vni: 88\n  ipv6: {{cidr: 'fd00:88::/64'}}\n---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: n\nspec:\n  network: m\n  cidr: 10.89.0.0/24\n  ipv6: {{cidr: 'fd00:89::/64'}}\n",
        mesh_overlay("node-a", "'fd00:53::1'", &["'fd00:53::2'"])
    ));
    let view = wait_overlay(
        &daemon,
        "the mesh VTEP to be up on the IPv6 underlay",
        Duration::from_secs(10),
        |v| v["state"] == "Up",
    );
    assert_eq!(view["localAddress"], "fd00:53::1", "{view}");
    assert_eq!(view["peers"][0], "fd00:53::2", "{view}");

    let ca = Netns::new("u6a");
    daemon.attach(&ca, &["--subnet", "m"]);
    let cn = Netns::new("u6n");
    daemon.attach(&cn, &["--subnet", "n", "--kind", "veth"]);
    let addresses = |name: &str| {
        let nic = daemon.ctl_json(&["get", "networkinterface", name]);
        let first = |v: &Value| {
            v.as_str()
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        (
            first(&nic["status"]["ips"][0]),
            first(&nic["status"]["ipv6"]),
        )
    };
    let (ca4, ca6) = addresses(&ca.name);
    let (cn4, cn6) = addresses(&cn.name);
    assert!(
        ca4.starts_with("10.88.0.") && ca6.starts_with("fd00:88::"),
        "{ca4} {ca6}"
    );
    assert!(
        cn4.starts_with("10.89.0.") && cn6.starts_with("fd00:89::"),
        "{cn4} {cn6}"
    );
    let link = ca.exec_ok(&["ip", "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1430"),
        "the attached interface has the overlay MTU, 1500 minus 70 bytes of VXLAN over IPv6: {link}"
    );

    let cb = Netns::new("u6b");
    kernel_vxlan_node_with(
        underlay.node(1),
        88,
        "fd00:53::2",
        "fd00:53::1",
        &cb,
        "10.88.0.20/24",
        &[],
    );
    for link in ["vx0", "vb0"] {
        underlay
            .node(1)
            .exec_ok(&["ip", "link", "set", link, "mtu", "1430"]);
    }
    cb.exec_ok(&["ip", "link", "set", "eth0", "mtu", "1430"]);
    cb.exec_ok(&["ip", "route", "add", "default", "via", "10.88.0.1"]);
    cb.exec_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:88::20/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    cb.exec_ok(&["ip", "-6", "route", "add", "default", "via", "fd00:88::1"]);

    let ping = |from: &Netns, to: &str, extra: &[&str]| {
        let mut args = vec!["ping", "-c", "3", "-i", "0.2", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(to);
        let out = from.exec(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.contains("3 received"),
            "ping {extra:?} from {} to {to} failed:\n{text}\ndaemon log:\n{}",
            from.name,
            tail(&daemon.log_text(), 30)
        );
    };
    assert!(
        ca.ping_until("10.88.0.20", Duration::from_secs(10)),
        "no IPv4 across the IPv6 underlay\ndaemon log:\n{}",
        tail(&daemon.log_text(), 30)
    );
    // Both inner families, both ways, switched across the tunnel and routed by the gateway.
    ping(&ca, "10.88.0.20", &[]);
    ping(&cb, &ca4, &[]);
    ping(&cb, "10.88.0.1", &[]);
    ping(&cb, &cn4, &[]);
    ping(&cn, "10.88.0.20", &[]);
    assert!(
        ca.ping_until("fd00:88::20", Duration::from_secs(10)),
        "no IPv6 across the IPv6 underlay"
    );
    ping(&ca, "fd00:88::20", &[]);
    ping(&cb, &ca6, &[]);
    ping(&cb, "fd00:88::1", &[]);
    ping(&cb, &cn6, &[]);
    // Full-size frames with DF cross whole both ways: 1430 bytes inside, 1500 outside.
    ping(&ca, "10.88.0.20", &["-M", "do", "-s", "1402"]);
    ping(&cb, &ca4, &["-M", "do", "-s", "1402"]);
    ping(&cn, "10.88.0.20", &["-M", "do", "-s", "1402"]);
    ping(&ca, "fd00:88::20", &["-M", "do", "-s", "1382"]);
    ping(&cb, &cn6, &["-M", "do", "-s", "1382"]);
    // TCP both ways and routed: bursts segmented into UDP_SEGMENT sends from AF_INET6
    // sockets one way, the kernel's datagrams merged by UDP_GRO the other.
    let there = iperf3_tcp(&cb, &ca, "10.88.0.20", 2);
    let back = iperf3_tcp(&ca, &cb, &ca4, 2);
    let routed = iperf3_tcp(&cn, &cb, &cn4, 2);
    let there6 = iperf3_tcp(&cb, &ca, "fd00:88::20", 2);
    eprintln!(
        "VXLAN over an IPv6 underlay, iperf3 Gbit/s: vswitchd->kernel {there:.2}, kernel->vswitchd {back:.2}, kernel->routed {routed:.2}, IPv6 inside vswitchd->kernel {there6:.2}"
    );
    assert!(there > 0.0 && back > 0.0 && routed > 0.0 && there6 > 0.0);
    let log = daemon.log_text();
    assert!(
        !log.contains("refuses UDP_SEGMENT"),
        "super-frames must leave with UDP_SEGMENT over IPv6:\n{}",
        tail(&log, 30)
    );
    // The kernel took every datagram we sent (outer UDP checksums over IPv6 included).
    let vx = underlay
        .node(1)
        .exec_ok(&["ip", "-j", "-s", "link", "show", "vx0"]);
    let vx: Value = serde_json::from_str(&vx).expect("ip -j");
    let rx = &vx[0]["stats64"]["rx"];
    assert!(rx["packets"].as_u64().unwrap_or(0) > 1000, "{vx}");
    assert_eq!(rx["errors"], 0, "kernel vx0 receive errors: {vx}");
    print_drops(&daemon, "node-a");
}

/// The hub-and-spoke overlay over an IPv6 underlay, with IPv6 inside too: the hub on
/// `fd00:50::1`, two runners register over IPv6 (TLS, the hub's generated certificate naming
/// its IPv6 address, pinned) and get their plans (10.N.0.0/16 and fd00:10:0:N::/64), and
/// their containers reach each other through the hub and the hub node's own stack over both
/// families, with the overlay MTU of an IPv6 underlay (1430).
#[test]
#[ignore = "needs root: starts vswitchd in node namespaces on a bridged veth underlay"]
fn hub_and_runners_over_an_ipv6_underlay() {
    require(&["ping", "iperf3"]);
    let underlay = Underlay::new(&["fd00:50::1/64", "fd00:50::2/64", "fd00:50::3/64"]);
    let (hub_ns, r1_ns, r2_ns) = (underlay.node(0), underlay.node(1), underlay.node(2));
    let hub = Daemon::start_in(&hub_ns.name, 2, &[]);
    let r1 = Daemon::start_in(&r1_ns.name, 2, &[]);
    let r2 = Daemon::start_in(&r2_ns.name, 2, &[]);
    // First without IPv6 inside: it is added below, to runners already registered.
    hub.apply_yaml(&hub_overlay("hub", "'fd00:50::1'", ""));
    let pin = hub_fingerprint(&hub);
    r1.apply_yaml(&runner_overlay(
        "runner-1",
        "'fd00:50::2'",
        "'fd00:50::1'",
        &pin,
        "",
    ));
    let v1 = wait_registered(&r1, "runner-1");
    r2.apply_yaml(&runner_overlay(
        "runner-2",
        "'fd00:50::3'",
        "'fd00:50::1'",
        &pin,
        "",
    ));
    let v2 = wait_registered(&r2, "runner-2");
    assert_eq!(v1["tls"], "Fingerprint", "{v1}");
    assert_eq!(v1["hub"], "[fd00:50::1]:4799", "{v1}");
    assert_eq!(v1["localAddress"], "fd00:50::2", "{v1}");
    assert_eq!((v1["id"].as_u64(), v2["id"].as_u64()), (Some(1), Some(2)));
    let hv = wait_overlay(
        &hub,
        "the hub to list both runners online",
        Duration::from_secs(10),
        |v| {
            runner_row(v, "runner-1").is_some_and(is_online)
                && runner_row(v, "runner-2").is_some_and(is_online)
        },
    );
    assert_eq!(hv["localAddress"], "fd00:50::1", "{hv}");
    // IPv6 inside, added to the running hub: the runners' next heartbeats are refused (they
    // registered under the old plan), they register again and get their /64.
    hub.apply_yaml(&hub_overlay(
        "hub",
        "'fd00:50::1'",
        "  addressPlan:\n    ipv6: {overlay: 'fd00:10::/48'}\n",
    ));
    for (runner, cidr) in [(&r1, "fd00:10:0:1::/64"), (&r2, "fd00:10:0:2::/64")] {
        wait_until(
            &format!("a runner's Subnet to get {cidr} from the changed plan"),
            Duration::from_secs(20),
            || {
                let subnet = runner.ctl_json(&["get", "subnet", "overlay"]);
                (subnet["spec"]["ipv6"]["cidr"] == cidr).then_some(())
            },
        );
    }
    let v1 = wait_registered(&r1, "runner-1");
    assert_eq!(v1["id"], 1, "the same ID after registering again: {v1}");
    assert_eq!(v1["subnet6"], "fd00:10:0:1::/64", "{v1}");
    for (name, address) in [("runner-1", "fd00:50::2"), ("runner-2", "fd00:50::3")] {
        let row = runner_row(&hv, name).expect("listed");
        assert_eq!(row["address"], address, "{row}");
    }
    let subnet = r1.ctl_json(&["get", "subnet", "overlay"]);
    assert_eq!(subnet["spec"]["remoteVteps"][0], "fd00:50::1", "{subnet}");
    assert_eq!(subnet["spec"]["mtu"], 1430, "{subnet}");
    assert_eq!(
        subnet["spec"]["ipv6"]["cidr"], "fd00:10:0:1::/64",
        "{subnet}"
    );
    assert_eq!(
        subnet["spec"]["ipv6"]["gateway"], "fd00:10:0:1::1",
        "{subnet}"
    );
    let route6 = r1.ctl_json(&["get", "route", "overlay-hub6"]);
    assert_owned(&route6, "runner-1");
    assert_eq!(route6["spec"]["destination"], "fd00:10::/48", "{route6}");
    assert_eq!(route6["spec"]["nextHop"], "fd00:10:0:1::fe", "{route6}");
    let subnet = hub.ctl_json(&["get", "subnet", "overlay-r2"]);
    assert_eq!(subnet["spec"]["remoteVteps"][0], "fd00:50::3", "{subnet}");
    assert_eq!(
        subnet["spec"]["ipv6"]["gateway"], "fd00:10:0:2::fe",
        "{subnet}"
    );
    let tap = hub_ns.exec_ok(&["ip", "-6", "addr", "show", "dev", "vsoverlay0"]);
    assert!(tap.contains("fd00:10::1/64"), "the hub's host TAP: {tap}");
    let routes = hub_ns.exec_ok(&["ip", "-6", "route", "show", "fd00:10::/48"]);
    assert!(
        routes.contains("via fd00:10::fe"),
        "the hub node's route: {routes}"
    );

    let c1 = Netns::new("u6r1");
    let c2 = Netns::new("u6r2");
    let ip1 = r1.attach(&c1, &["--subnet", "overlay"]);
    let ip2 = r2.attach(&c2, &["--subnet", "overlay", "--kind", "veth"]);
    assert!(
        ip1.starts_with("10.1.") && ip2.starts_with("10.2."),
        "{ip1} {ip2}"
    );
    for c in [&c1, &c2] {
        assert_mtu(c, 1430);
    }
    assert!(
        c1.ping_until("10.0.0.1", Duration::from_secs(10)),
        "a runner-1 container cannot reach the hub node at 10.0.0.1\nrunner log:\n{}\nhub log:\n{}",
        tail(&r1.log_text(), 30),
        tail(&hub.log_text(), 30)
    );
    assert!(
        c1.ping_until(&ip2, Duration::from_secs(10)),
        "runner-1 container {ip1} cannot reach runner-2 container {ip2}\nhub log:\n{}",
        tail(&hub.log_text(), 30)
    );
    c1.ping_ok(&ip2, 3);
    c2.ping_ok(&ip1, 3);
    c2.ping_ok("10.0.0.1", 3);
    // Full-size packets with DF through two tunnels and the hub.
    let out = c1.exec(&["ping", "-c", "2", "-M", "do", "-s", "1402", "-W", "2", &ip2]);
    assert!(
        out.status.success(),
        "1430-byte packets with DF must cross: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // IPv6 inside, routed by the runners' switches and the hub like IPv4.
    let ipv6_of = |daemon: &Daemon, ns: &Netns| {
        let nic = daemon.ctl_json(&["get", "networkinterface", &ns.name]);
        nic["status"]["ipv6"]
            .as_str()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (six1, six2) = (ipv6_of(&r1, &c1), ipv6_of(&r2, &c2));
    assert!(six1.starts_with("fd00:10:0:1::"), "{six1}");
    assert!(six2.starts_with("fd00:10:0:2::"), "{six2}");
    c1.ping_ok("fd00:10:0:1::1", 3);
    assert!(
        c1.ping_until(&six2, Duration::from_secs(10)),
        "runner-1 container {six1} cannot reach runner-2 container {six2} over IPv6\nrunner-1 log:\n{}\nhub log:\n{}",
        tail(&r1.log_text(), 30),
        tail(&hub.log_text(), 30)
    );
    c1.ping_ok(&six2, 3);
    c2.ping_ok(&six1, 3);
    assert!(
        c2.ping_until("fd00:10::1", Duration::from_secs(10)),
        "a runner-2 container cannot reach the hub node at fd00:10::1"
    );
    c1.ping_ok("fd00:10::1", 3);
    let cross6 = iperf3_tcp(&c2, &c1, &six2, 2);
    eprintln!("IPv6 inside, cross-runner iperf3: {cross6:.2} Gbit/s");
    assert!(cross6 > 0.0);
    print_drops(&r2, "runner-2");
    let cross = iperf3_tcp(&c2, &c1, &ip2, 2);
    let to_hub = iperf3_tcp(hub_ns, &c2, "10.0.0.1", 2);
    eprintln!(
        "hub and spoke over an IPv6 underlay, iperf3 Gbit/s: cross-runner {cross:.2}, container->hub {to_hub:.2}"
    );
    assert!(cross > 0.0 && to_hub > 0.0);
    print_drops(&hub, "hub");
    print_drops(&r1, "runner-1");
}
