//! End-to-end routed Networks and node protection: a Network routed through the Uplink
//! without NAT (`Network.spec.uplink.mode: Routed`), reached from an "outside" namespace that
//! routes the Network's CIDR to an Uplink address; and `Uplink.spec.inbound`, which drops
//! unsolicited traffic from outside except what it lists.
//!
//! Topology: a veth pair whose host end is the Uplink's interface (in the test's namespace,
//! like a node's NIC) and whose other end is `eth0` of `out`: 203.0.113.1/24, the uplink's
//! gateway, with `172.30.0.0/16 via 203.0.113.10` (the switch's Uplink address). The
//! containers are in the default Network (172.30.0.0/16). TEST-NET-3 addresses, inside
//! namespaces only. Needs root, iproute2, ping and python3; `#[ignore]`d for a plain
//! `cargo test` (run as root with `--include-ignored`, as `scripts/test.sh` does).

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::Duration;

use common::{Daemon, Netns, Outside, TCP_WHOAMI, UDP_WHOAMI, require, wait_until};

/// Connects to `ip:port` and prints what the server says, or `failed: <error>` (within 3 s).
const TCP_ASK: &str = "import socket,sys\ntry:\n    s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n    print(s.recv(2048).decode())\nexcept OSError as e:\n    print('failed: %s'%e)\n";

/// Sends one datagram to `ip:port` and prints the answer, or `failed: <error>`.
const UDP_ASK: &str = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\ntry:\n    s.sendto(b'who',(sys.argv[1],int(sys.argv[2])))\n    print(s.recvfrom(2048)[0].decode())\nexcept OSError as e:\n    print('failed: %s'%e)\n";

/// The outside world, routing the Network's CIDR to the switch's Uplink address.
fn routed_outside() -> Outside {
    let outside = Outside::new(&["203.0.113.1/24"]);
    outside.ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "172.30.0.0/16",
        "via",
        "203.0.113.10",
        "dev",
        "eth0",
    ]);
    outside
}

/// The Uplink `up` on the outside's veth (with `inbound`, a flow-style mapping, if any) and
/// the default Network routed through it.
fn routed_config(outside: &Outside, inbound: Option<&str>) -> String {
    let inbound = inbound
        .map(|inbound| format!("  inbound: {inbound}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata:\n  name: up\nspec:\n  interface: {}\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n{inbound}---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: default\nspec:\n  uplink: {{mode: Routed}}\n",
        outside.host_end
    )
}

/// The uplink's count of `reason` drops (`/v1/stats`, port `up`).
fn uplink_drops(daemon: &Daemon, reason: &str) -> u64 {
    daemon.port_drop("up", reason)
}

/// A routed Network: ping and TCP both ways, and each side sees the other's own address (no
/// NAT); the Network shows its mode.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces, a veth uplink and TAP ports"]
fn routed_network_both_ways_untranslated() {
    require(&["ping", "python3"]);
    let mut outside = routed_outside();
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&routed_config(&outside, None));
    let c1 = Netns::new("ra");
    let ip1 = daemon.attach(&c1, &[]);

    // Out: ping, then TCP to a server outside, which sees the container's own address.
    assert!(
        c1.ping_until("203.0.113.1", Duration::from_secs(10)),
        "the container cannot ping the outside through the routed uplink"
    );
    let out = outside.ns.name.clone();
    outside.serve(&out, "tcp", TCP_WHOAMI, "203.0.113.1", 9000);
    let seen = c1.python(TCP_ASK, &["203.0.113.1", "9000"]);
    assert!(
        seen.starts_with(&format!("{ip1}:")),
        "the outside server must see the container's own address {ip1}, got {seen:?}"
    );

    // In: the outside pings the container and connects to its server; the container sees
    // the outside's own address.
    outside.ns.ping_ok(&ip1, 3);
    outside.serve(&c1.name, "tcp", TCP_WHOAMI, &ip1, 8080);
    let seen = outside.ns.python(TCP_ASK, &[&ip1, "8080"]);
    assert!(
        seen.starts_with("203.0.113.1:"),
        "the container must see the outside client 203.0.113.1, got {seen:?}"
    );

    // Nothing was translated: no connection was tracked for it.
    let count = daemon.ctl_ok(&["conntrack", "--count"]);
    assert_eq!(count.trim(), "0", "a routed Network uses no conntrack");
    let networks = daemon.ctl_ok(&["get", "networks"]);
    assert!(networks.contains("UPLINK"), "{networks}");
    assert!(networks.contains("Routed"), "{networks}");
}

/// `Uplink.spec.inbound` on a routed Network: unsolicited connections to a port not listed
/// fail and are counted, a listed port works, and replies of connections the container
/// started (TCP and UDP) come back in.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces, a veth uplink and TAP ports"]
fn inbound_filter_guards_a_routed_network() {
    require(&["ping", "python3"]);
    let mut outside = routed_outside();
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&routed_config(
        &outside,
        Some("{policy: Drop, allow: [{protocol: TCP, port: 22}, {protocol: ICMP}]}"),
    ));
    let c1 = Netns::new("rb");
    let ip1 = daemon.attach(&c1, &[]);
    outside.serve(&c1.name, "tcp", TCP_WHOAMI, &ip1, 80);
    outside.serve(&c1.name, "tcp", TCP_WHOAMI, &ip1, 22);
    let out = outside.ns.name.clone();
    outside.serve(&out, "tcp", TCP_WHOAMI, "203.0.113.1", 9000);
    outside.serve(&out, "udp", UDP_WHOAMI, "203.0.113.1", 9001);
    assert!(
        c1.ping_until("203.0.113.1", Duration::from_secs(10)),
        "the container cannot ping the outside (the reply must pass the filter)"
    );

    // A port not listed: the connection fails, and the drop is counted.
    let before = uplink_drops(&daemon, "uplink.inbound_denied");
    let refused = outside.ns.python(TCP_ASK, &[&ip1, "80"]);
    assert!(
        refused.starts_with("failed"),
        "an unsolicited connection to port 80 must fail, got {refused:?}"
    );
    let denied = wait_until(
        "uplink.inbound_denied to count the SYNs to port 80",
        Duration::from_secs(5),
        || {
            let now = uplink_drops(&daemon, "uplink.inbound_denied");
            (now > before).then_some(now)
        },
    );
    // The listed port works, and the container sees the client's own address.
    let seen = outside.ns.python(TCP_ASK, &[&ip1, "22"]);
    assert!(
        seen.starts_with("203.0.113.1:"),
        "a connection to the listed port 22 must work, got {seen:?}"
    );
    // ICMP is listed: the outside pings the container.
    outside.ns.ping_ok(&ip1, 2);

    // Connections started inside: their replies come back, untranslated.
    let seen = c1.python(TCP_ASK, &["203.0.113.1", "9000"]);
    assert!(
        seen.starts_with(&format!("{ip1}:")),
        "a TCP connection from inside must get its replies, got {seen:?}"
    );
    let seen = c1.python(UDP_ASK, &["203.0.113.1", "9001"]);
    assert!(
        seen.starts_with(&format!("{ip1}:")),
        "a UDP exchange from inside must get its reply, got {seen:?}"
    );
    // Tracked, since the filter is on.
    let table = daemon.ctl_ok(&["conntrack"]);
    assert!(table.contains(&ip1), "{table}");

    // The counter is shown where the uplink's drops are.
    let nat = daemon.ctl_json(&["nat"]);
    let shown = nat["drops"]["uplink.inbound_denied"].as_u64().unwrap_or(0);
    assert!(
        shown >= denied,
        "vswitchctl nat shows {shown} < {denied}: {nat}"
    );
    let uplinks = daemon.ctl_ok(&["get", "uplinks"]);
    assert!(uplinks.contains("Drop:TCP/22,ICMP"), "{uplinks}");

    // Refused input leaves the running state as it was.
    let bad = routed_config(
        &outside,
        Some("{policy: Drop, allow: [{protocol: TCP, port: 30, endPort: 20}]}"),
    );
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), bad).expect("write");
    let err = daemon.ctl_err(&["apply", "-f", file.path().to_str().expect("utf8")]);
    assert!(
        err.contains("spec.inbound.allow[0].endPort"),
        "the refusal names the field: {err}"
    );
    let uplinks = daemon.ctl_ok(&["get", "uplinks"]);
    assert!(uplinks.contains("Drop:TCP/22,ICMP"), "{uplinks}");
}

/// Connects from `argv[1]` (a local address) to `argv[2]:argv[3]` and prints what the
/// server says, or `failed: <error>` (within 3 s).
const TCP_ASK_FROM: &str = "import socket,sys\ntry:\n    s=socket.create_connection((sys.argv[2],int(sys.argv[3])),timeout=3,source_address=(sys.argv[1],0))\n    print(s.recv(2048).decode())\nexcept OSError as e:\n    print('failed: %s'%e)\n";

/// NetworkPolicies with peers outside the switch, through a routed Network: `ipBlock`s
/// (with `except`) match outside addresses on ingress and egress, an interface isolated for
/// ingress still gets the replies of connections it opened, and the denials are counted.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces, a veth uplink and TAP ports"]
fn network_policies_match_outside_peers_by_ip_block() {
    require(&["python3"]);
    let mut outside = routed_outside();
    outside
        .ns
        .exec_ok(&["ip", "addr", "add", "203.0.113.2/24", "dev", "eth0"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&routed_config(&outside, None));
    let c1 = Netns::new("rp");
    let ip1 = daemon.attach(&c1, &["--label", "app=web"]);
    let c1_name = c1.name.clone();
    outside.serve(&c1_name, "tcp", TCP_WHOAMI, &ip1, 80);
    let out = outside.ns.name.clone();
    outside.serve(&out, "tcp", TCP_WHOAMI, "203.0.113.1", 9000);
    outside.serve(&out, "tcp", TCP_WHOAMI, "203.0.113.1", 9001);

    // Everything flows before the policy.
    let seen = outside
        .ns
        .python(TCP_ASK_FROM, &["203.0.113.2", &ip1, "80"]);
    assert!(seen.starts_with("203.0.113.2:"), "{seen}");

    daemon.apply_yaml("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.2/32]}\n  egress:\n  - to:\n    - ipBlock: {cidr: 203.0.113.1/32}\n    ports: [{port: 9000}]\n",
    );
    // In: 203.0.113.1 is in the block, 203.0.113.2 is cut out of it.
    let seen = outside
        .ns
        .python(TCP_ASK_FROM, &["203.0.113.1", &ip1, "80"]);
    assert!(
        seen.starts_with("203.0.113.1:"),
        "allowed source refused: {seen}"
    );
    let seen = outside
        .ns
        .python(TCP_ASK_FROM, &["203.0.113.2", &ip1, "80"]);
    assert!(seen.starts_with("failed"), "excepted source let in: {seen}");
    // Out: port 9000 of 203.0.113.1 only; the replies come back although the interface is
    // isolated for ingress from everything but the block.
    let seen = c1.python(TCP_ASK, &["203.0.113.1", "9000"]);
    assert!(
        seen.starts_with(&format!("{ip1}:")),
        "allowed egress refused: {seen}"
    );
    let seen = c1.python(TCP_ASK, &["203.0.113.1", "9001"]);
    assert!(
        seen.starts_with("failed"),
        "egress to another port let out: {seen}"
    );

    let explained = daemon.ctl_ok(&[
        "policy",
        "explain",
        "--from",
        "203.0.113.2",
        "--to",
        &c1_name,
        "--port",
        "80",
    ]);
    assert!(explained.contains("denied"), "{explained}");
    assert!(daemon.port_drop(&c1_name, "policy.egress_denied") > 0);
    let stats = daemon.stats().to_string();
    assert!(stats.contains("policy.ingress_denied"), "{stats}");
}
