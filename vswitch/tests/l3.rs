//! End-to-end L3: the switch routes between subnets, owns their gateways, answers ARP and
//! ICMP, enforces MTU, isolates Networks and connects them only through mutual peering.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::Duration;

use common::{Daemon, Netns, iperf3_tcp, require};

fn apply_err(daemon: &Daemon, yaml: &str) -> String {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), yaml).expect("write");
    daemon.ctl_err(&["apply", "-f", file.path().to_str().expect("utf8")])
}

fn subnet(name: &str, network: &str, cidr: &str, gateway: &str, mtu: u32) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: {name}\nspec:\n  network: {network}\n  cidr: {cidr}\n  gateway: {gateway}\n  mtu: {mtu}\n---\n"
    )
}

fn network(name: &str, peers: &[(&str, &str)]) -> String {
    let mut text =
        format!("apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n");
    if peers.is_empty() {
        text.push_str("  peerings: []\n");
    } else {
        text.push_str("  peerings:\n");
        for (peering, peer) in peers {
            text.push_str(&format!("  - name: {peering}\n    network: {peer}\n"));
        }
    }
    text.push_str("---\n");
    text
}

/// Two subnets of one Network: ping and iperf3 both ways through the switch, and the
/// gateways answer.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn routes_between_subnets_of_one_network() {
    require(&["ping", "iperf3"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&subnet("b", "default", "10.77.0.0/24", "10.77.0.1", 1500));
    let c1 = Netns::new("la");
    let c2 = Netns::new("lb");
    let ip1 = daemon.attach(&c1, &[]);
    let ip2 = daemon.attach(&c2, &["--subnet", "b", "--kind", "veth"]);
    assert!(ip2.starts_with("10.77.0."), "{ip2}");

    c1.ping_ok("172.30.0.1", 2);
    c2.ping_ok("10.77.0.1", 2);
    // A router answers on all its addresses.
    c1.ping_ok("10.77.0.1", 1);
    c1.ping_ok(&ip2, 3);
    c2.ping_ok(&ip1, 3);
    let there = iperf3_tcp(&c2, &c1, &ip2, 3);
    let back = iperf3_tcp(&c1, &c2, &ip1, 3);
    eprintln!("routed iperf3 Gbit/s: tap->veth {there:.2}, veth->tap {back:.2}");

    // The TTL was decremented once: Linux replies with TTL 64, seen as 63 after one hop.
    let out = c1.exec_ok(&["ping", "-c", "1", &ip2]);
    assert!(out.contains("ttl=63"), "one routed hop expected:\n{out}");

    let routes = daemon.ctl_ok(&["routes"]);
    assert!(
        routes.contains("10.77.0.0/24") && routes.contains("172.30.0.0/16"),
        "{routes}"
    );
    let neighbors = daemon.ctl_ok(&["neighbors"]);
    assert!(
        neighbors.contains(&ip2),
        "the switch resolved {ip2}:\n{neighbors}"
    );
    let stats = daemon.ctl_json(&["stats"]);
    assert!(
        stats["events"]["l3.routed"].as_u64().unwrap_or(0) > 0,
        "{}",
        stats["events"]
    );
}

/// traceroute shows the gateway; TTL 1 gets time exceeded from it; no route gets
/// unreachable.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn icmp_errors_as_a_router_sends_them() {
    require(&["ping", "tracepath"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&subnet("b", "default", "10.77.0.0/24", "10.77.0.1", 1500));
    let c1 = Netns::new("ia");
    let c2 = Netns::new("ib");
    daemon.attach(&c1, &[]);
    let ip2 = daemon.attach(&c2, &["--subnet", "b"]);
    c1.ping_ok(&ip2, 1);

    let out = c1.exec(&["ping", "-c", "1", "-W", "2", "-t", "1", &ip2]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("172.30.0.1") && text.to_lowercase().contains("time to live exceeded"),
        "TTL 1 must get time exceeded from the gateway:\n{text}"
    );
    let out = c1.exec(&["tracepath", "-n", "-m", "4", &ip2]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("1:") && l.contains("172.30.0.1")),
        "tracepath's first hop must be the gateway:\n{text}"
    );
    assert!(text.contains(&ip2), "tracepath must reach {ip2}:\n{text}");

    // No route: 192.0.2.1 is outside every subnet of the Network.
    let out = c1.exec(&["ping", "-c", "1", "-W", "2", "192.0.2.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("172.30.0.1") && text.to_lowercase().contains("unreachable"),
        "no route must get destination unreachable from the gateway:\n{text}"
    );
    let stats = daemon.ctl_json(&["stats"]);
    assert!(
        stats["drops"]["l3.no_route"].as_u64().unwrap_or(0) >= 1,
        "{}",
        stats["drops"]
    );
    assert!(
        stats["drops"]["l3.ttl_expired"].as_u64().unwrap_or(0) >= 1,
        "{}",
        stats["drops"]
    );
}

/// A packet with DF set that does not fit the egress MTU gets "fragmentation needed" with the
/// next-hop MTU; without DF the switch fragments it.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn mtu_fragmentation_needed_and_fragmenting() {
    require(&["ping"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&format!(
        "{}{}",
        subnet("jumbo", "default", "10.88.0.0/24", "10.88.0.1", 9000),
        subnet("b", "default", "10.77.0.0/24", "10.77.0.1", 1500)
    ));
    let c1 = Netns::new("ma");
    let c2 = Netns::new("mb");
    daemon.attach(&c1, &["--subnet", "jumbo"]);
    let ip2 = daemon.attach(&c2, &["--subnet", "b", "--kind", "veth"]);
    let mtu = c1.exec_ok(&["ip", "link", "show", "eth0"]);
    assert!(
        mtu.contains("mtu 9000"),
        "interfaces get the subnet's MTU:\n{mtu}"
    );
    c1.ping_ok(&ip2, 1);

    // Without DF the switch fragments; c2 reassembles and replies. This goes first: once c1
    // has learned the path MTU from "frag needed", it fragments by itself.
    let out = c1.exec(&[
        "ping", "-c", "2", "-W", "2", "-M", "dont", "-s", "3000", &ip2,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "a fragmented ping must get its replies:\n{text}"
    );
    let out = c1.exec(&["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1600", &ip2]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.to_lowercase().contains("frag needed") && text.contains("mtu = 1500"),
        "DF + 1628-byte packet toward a 1500 MTU subnet must get frag needed (mtu 1500):\n{text}"
    );
    let stats = daemon.ctl_json(&["stats"]);
    assert!(
        stats["events"]["l3.fragmented"].as_u64().unwrap_or(0) >= 2,
        "{}",
        stats["events"]
    );
    assert!(
        stats["drops"]["l3.mtu_exceeded"].as_u64().unwrap_or(0) >= 1,
        "{}",
        stats["drops"]
    );
}

/// Two Networks with the same CIDR never see each other; a peering connects two Networks only
/// when both list it; removing one side stops the traffic.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn networks_are_isolated_until_mutually_peered() {
    require(&["ping"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&format!(
        "{}{}{}{}{}{}",
        network("red", &[]),
        subnet("red", "red", "10.50.0.0/24", "10.50.0.1", 1500),
        network("blue", &[]),
        subnet("blue", "blue", "10.50.0.0/24", "10.50.0.1", 1500),
        network("green", &[]),
        subnet("green", "green", "10.60.0.0/24", "10.60.0.1", 1500),
    ));
    let r1 = Netns::new("pr");
    let r2 = Netns::new("ps");
    let b1 = Netns::new("pb");
    let g1 = Netns::new("pg");
    daemon.attach(&r1, &["--subnet", "red", "--ip", "10.50.0.10/24"]);
    daemon.attach(&r2, &["--subnet", "red", "--ip", "10.50.0.11/24"]);
    daemon.attach(&b1, &["--subnet", "blue", "--ip", "10.50.0.10/24"]);
    daemon.attach(&g1, &["--subnet", "green", "--ip", "10.60.0.10/24"]);

    r1.ping_ok("10.50.0.11", 1);
    let out = b1.exec(&["ping", "-c", "2", "-W", "1", "10.50.0.11"]);
    assert!(
        !out.status.success(),
        "blue must not reach red's 10.50.0.11"
    );
    assert!(
        !g1.exec(&["ping", "-c", "1", "-W", "1", "10.50.0.10"])
            .status
            .success()
    );

    // One side only: Pending, no traffic.
    daemon.apply_yaml(&network("red", &[("to-green", "green")]));
    let red = daemon.ctl_json(&["get", "network", "red"]);
    assert_eq!(red["status"]["peerings"][0]["state"], "Pending", "{red}");
    assert!(
        !g1.exec(&["ping", "-c", "1", "-W", "1", "10.50.0.10"])
            .status
            .success()
    );

    // Both sides: Ready, routed.
    daemon.apply_yaml(&network("green", &[("to-red", "red")]));
    let red = daemon.ctl_json(&["get", "network", "red"]);
    assert_eq!(red["status"]["peerings"][0]["state"], "Ready", "{red}");
    assert!(
        g1.ping_until("10.50.0.10", Duration::from_secs(5)),
        "green must reach red once the peering is Ready"
    );
    let routes = daemon.ctl_ok(&["routes", "--network", "green"]);
    assert!(
        routes.contains("10.50.0.0/24"),
        "peering route expected:\n{routes}"
    );

    // Peering two Networks with overlapping subnets is refused, naming both CIDRs.
    daemon.apply_yaml(&network("blue", &[("to-red", "red")]));
    let err = apply_err(
        &daemon,
        &network("red", &[("to-green", "green"), ("to-blue", "blue")]),
    );
    assert!(
        err.matches("10.50.0.0/24").count() >= 1 && err.contains("blue"),
        "{err}"
    );

    // Removing one side stops the traffic.
    daemon.apply_yaml(&network("green", &[]));
    let red = daemon.ctl_json(&["get", "network", "red"]);
    assert_eq!(red["status"]["peerings"][0]["state"], "Pending", "{red}");
    assert!(
        !g1.exec(&["ping", "-c", "2", "-W", "1", "10.50.0.10"])
            .status
            .success()
    );
}

/// A static Route through a router namespace attached to a subnet.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn static_route_through_a_router_namespace() {
    require(&["ping"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&subnet("b", "default", "10.77.0.0/24", "10.77.0.1", 1500));
    let c1 = Netns::new("sa");
    let router = Netns::new("sr");
    daemon.attach(&c1, &[]);
    daemon.attach(&router, &["--subnet", "b", "--ip", "10.77.0.254/24"]);
    // Behind the router: 10.99.0.1 on its loopback (this kernel may lack the dummy link type).
    router.exec_ok(&["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"]);
    router.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    assert!(
        !c1.exec(&["ping", "-c", "1", "-W", "1", "10.99.0.1"])
            .status
            .success()
    );
    daemon.apply_yaml("apiVersion: vswitch/v1alpha1\nkind: Route\nmetadata:\n  name: behind-router\nspec:\n  network: default\n  destination: 10.99.0.0/24\n  nextHop: 10.77.0.254\n",
    );
    assert!(
        c1.ping_until("10.99.0.1", Duration::from_secs(5)),
        "10.99.0.1 must be reachable through the router namespace"
    );
    let routes = daemon.ctl_ok(&["routes"]);
    assert!(
        routes.contains("10.99.0.0/24") && routes.contains("10.77.0.254"),
        "{routes}"
    );
    let listed = daemon.ctl_ok(&["get", "routes"]);
    assert!(listed.contains("behind-router"), "{listed}");

    // A next hop outside every subnet of the Network is refused.
    let err = apply_err(
        &daemon,
        "apiVersion: vswitch/v1alpha1\nkind: Route\nmetadata:\n  name: nowhere\nspec:\n  network: default\n  destination: 10.98.0.0/24\n  nextHop: 192.0.2.9\n",
    );
    assert!(err.contains("192.0.2.9"), "{err}");
}
