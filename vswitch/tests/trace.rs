//! End-to-end packet tracing through the real daemon and `vswitchctl trace`: synthetic frames
//! (routed and NATed out of the uplink, encapsulated into the overlay, spoofed) name the
//! stages and table entries that decide them and change nothing; `--live` records real
//! frames as they are forwarded.
//!
//! Topologies: the NAT one of `tests/nat.rs` (a veth uplink to an `out` namespace,
//! 203.0.113.0/24 with the switch's NAT address 203.0.113.10), and a mesh node with a
//! stretched subnet whose peer is a kernel VXLAN node (as in `tests/overlay.rs`).

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Netns, Outside, Underlay, kernel_vxlan_node, require, tail};
use serde_json::Value;

/// The stage names of a trace record, in order.
fn stages(record: &Value) -> Vec<String> {
    record["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| step["stage"].as_str().map(str::to_owned))
        .collect()
}

/// The detail of every step of `stage`, one per line.
fn details(record: &Value, stage: &str) -> String {
    record["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|step| step["stage"] == stage)
        .filter_map(|step| step["detail"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A container behind the switch reaches 203.0.113.1 through the uplink with masquerade; a
/// synthetic TCP SYN to it is traced through route, NAT and the uplink without creating a
/// connection; a spoofed one is dropped by port security; bad requests name their field;
/// a live trace records two echo requests of a running ping.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces, a veth uplink and TAP ports"]
fn routed_natted_spoofed_and_live() {
    require(&["ping"]);
    let outside = Outside::new(&["203.0.113.1/24"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&format!(
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata:\n  name: up\nspec:\n  interface: {}\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n---\napiVersion: vswitch/v1alpha1\nkind: NATGateway\nmetadata:\n  name: default\nspec:\n  network: default\n  ips: [203.0.113.10]\n",
            outside.host_end
        ),
    );
    let c1 = Netns::new("ta");
    let ip = daemon.attach(&c1, &[]);
    // Resolves the outside gateway, so the trace goes all the way out.
    c1.ping_ok("203.0.113.1", 1);
    let count = || daemon.ctl_ok(&["conntrack", "--count"]);
    let before = count();

    let syn = format!("tcp {ip}:40000 > 203.0.113.1:80 flags S");
    let text = daemon.ctl_ok(&["trace", "--in", &c1.name, &syn]);
    for said in [
        "route",
        "matches no route",
        "would create new connection",
        "203.0.113.10",
        "uplink up: ",
        "Verdict: forward to up",
    ] {
        assert!(text.contains(said), "{said:?} missing from:\n{text}");
    }
    let record = daemon.ctl_json(&["trace", "--in", &c1.name, &syn]);
    assert_eq!(record["verdict"], "forward", "{record:#}");
    assert_eq!(record["outputs"], serde_json::json!(["up"]), "{record:#}");
    assert_eq!(record["synthetic"], true);
    let names = stages(&record);
    for stage in [
        "parse",
        "port_security",
        "l2",
        "route",
        "nat",
        "neighbor",
        "egress",
    ] {
        assert!(
            names.iter().any(|name| name == stage),
            "{stage} in {names:?}"
        );
    }
    assert!(
        details(&record, "nat").contains("translated to tcp 203.0.113.10:"),
        "{record:#}"
    );
    assert!(
        details(&record, "egress").contains("> 203.0.113.1:80 TCP flags [S], ttl 63"),
        "{record:#}"
    );
    assert_eq!(count(), before, "a synthetic frame tracks no connection");

    // A spoofed source address, then a spoofed source MAC.
    let spoofed = daemon.ctl_json(&["trace", "--in", &c1.name, "icmp 172.30.0.250 > 203.0.113.1"]);
    assert_eq!(spoofed["drop"], "port_security.ipv4_src", "{spoofed:#}");
    assert_eq!(
        stages(&spoofed).last().map(String::as_str),
        Some("port_security")
    );
    let text = daemon.ctl_ok(&[
        "trace",
        "--in",
        &c1.name,
        "--src-mac",
        "02:00:00:00:12:34",
        &format!("udp {ip}:5000 > 203.0.113.1:53"),
    ]);
    assert!(
        text.contains("Verdict: drop port_security.src_mac"),
        "{text}"
    );

    // Refusals name the field.
    for (args, said) in [
        (vec!["--in", "nosuchport", "icmp 1.2.3.4 > 5.6.7.8"], "in"),
        (
            vec!["--in", c1.name.as_str(), "sctp 1.2.3.4 > 5.6.7.8"],
            "packet",
        ),
        (vec!["--in", c1.name.as_str(), "--hex", "0xabc"], "hex"),
    ] {
        let mut all = vec!["trace"];
        all.extend(args);
        let error = daemon.ctl_err(&all);
        assert!(error.contains(said), "{all:?}: {error}");
    }

    // Live: two echo requests of a ping that runs meanwhile.
    let pinger = std::thread::spawn({
        let name = c1.name.clone();
        move || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &name,
                    "ping",
                    "-c",
                    "15",
                    "-i",
                    "0.2",
                    "203.0.113.1",
                ])
                .output()
                .expect("ping")
        }
    });
    let live = daemon.ctl_json(&[
        "trace", "--live", "--match", "icmp", "--count", "2", "--in", &c1.name, "--wait", "10",
    ]);
    let records = live["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "{live:#}");
    assert_eq!(live["complete"], true);
    for record in records {
        assert_eq!(record["synthetic"], false, "{record:#}");
        assert_eq!(record["verdict"], "forward", "{record:#}");
        assert!(
            record["packet"]
                .as_str()
                .unwrap_or("")
                .contains("ICMP type 8")
        );
        assert!(
            stages(record)
                .iter()
                .any(|stage| stage == "conntrack" || stage == "nat")
        );
    }
    assert!(pinger.join().expect("ping thread").status.success());
}

/// A mesh node A (vswitchd, 192.168.52.1) stretches Subnet `m` (VNI 78) to a kernel VXLAN
/// node B (192.168.52.2) with a container at 10.78.0.20: a synthetic echo request to it is
/// switched into the subnet's tunnel and names the VXLAN encapsulation to B's VTEP.
#[test]
#[ignore = "needs root: starts vswitchd in a node namespace, creates kernel vxlan devices"]
fn encapsulated_into_the_overlay() {
    require(&["ping", "bridge"]);
    let underlay = Underlay::new(&["192.168.52.1/24", "192.168.52.2/24"]);
    let nodes = &underlay.nodes;
    let daemon = Daemon::start_in(&nodes[0].name, 2, &[]);
    daemon.apply_yaml("apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: node-a\nspec:\n  role: mesh\n  localAddress: 192.168.52.1\n  peers: [192.168.52.2]\n---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: m\nspec:\n  peerings: []\n---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: m\nspec:\n  network: m\n  cidr: 10.78.0.0/24\n  gateway: 10.78.0.1\n  vni: 78\n",
    );
    let ca = Netns::new("ca");
    let ca_ip = daemon.attach(&ca, &["--subnet", "m"]);
    // Node B: kernel VXLAN (VNI 78) bridged to a container at 10.78.0.20.
    let cb = Netns::new("cb");
    let node_b = &nodes[1];
    kernel_vxlan_node(
        node_b,
        78,
        "192.168.52.2",
        "192.168.52.1",
        &cb,
        "10.78.0.20/24",
    );
    // Learns B's container behind B's VTEP (and its MAC as a neighbour of A's container).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ca.ping_until("10.78.0.20", Duration::from_secs(1)) {
        assert!(
            Instant::now() < deadline,
            "A's container cannot reach 10.78.0.20 over the overlay\ndaemon log:\n{}",
            tail(&daemon.log_text(), 40)
        );
    }
    let mac = cb.exec_ok(&["cat", "/sys/class/net/eth0/address"]);
    let record = daemon.ctl_json(&[
        "trace",
        "--in",
        &ca.name,
        "--dst-mac",
        mac.trim(),
        &format!("icmp {ca_ip} > 10.78.0.20"),
    ]);
    assert_eq!(record["verdict"], "forward", "{record:#}");
    assert_eq!(
        record["outputs"],
        serde_json::json!(["vxlan/m"]),
        "{record:#}"
    );
    let encap = details(&record, "vxlan_encap");
    assert!(encap.contains("VNI 78"), "{record:#}");
    assert!(encap.contains("local VTEP 192.168.52.1"), "{record:#}");
    assert!(encap.contains("remote VTEP 192.168.52.2"), "{record:#}");
    let text = daemon.ctl_ok(&[
        "trace",
        "--in",
        &ca.name,
        &format!("icmp {ca_ip} > 10.78.0.20"),
    ]);
    // Without --dst-mac the frame goes to the destination's MAC when the switch knows it,
    // else it is broadcast: into the tunnel either way.
    assert!(text.contains("vxlan_encap"), "{text}");
    assert!(text.contains("to vxlan/m"), "{text}");
}
