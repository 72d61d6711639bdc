//! End-to-end IPv6: dual-stack Subnets, the switch as IPv6 router (neighbour discovery,
//! router advertisements, SLAAC, echo, routing, ICMPv6 errors, MTU), IPv6 port security and
//! malformed IPv6 dropped under its reasons; with the kernel's own tools in namespaces.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Netns, Outside, iperf3_tcp, require, send_raw_frames, wait_until};

fn dual_subnet(name: &str, v4: &str, v6: &str, mtu: u32, slaac: bool) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: {name}\nspec:\n  network: default\n  cidr: {v4}\n  mtu: {mtu}\n  ipv6:\n    cidr: {v6}\n    slaac: {slaac}\n---\n"
    )
}

/// The IPv6 address (without prefix) of a NetworkInterface, from its status.
fn interface_ipv6(daemon: &Daemon, name: &str) -> String {
    let nic = daemon.ctl_json(&["get", "networkinterface", name]);
    let ip = nic["status"]["ipv6"]
        .as_str()
        .unwrap_or_else(|| panic!("interface {name} has no status.ipv6: {nic}"));
    ip.split('/').next().unwrap_or(ip).to_string()
}

fn ping6(ns: &Netns, extra: &[&str], to: &str) -> String {
    let mut args = vec!["ping", "-6", "-c", "1", "-W", "2"];
    args.extend_from_slice(extra);
    args.push(to);
    let out = ns.exec(&args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ping6_ok(ns: &Netns, to: &str, count: u32) -> String {
    let count = count.to_string();
    let out = ns.exec(&["ping", "-6", "-c", &count, "-i", "0.2", "-W", "2", to]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping -6 from {} to {to} failed:\n{text}{}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn route6(name: &str, destination: &str, next_hop: &str) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Route\nmetadata:\n  name: {name}\nspec:\n  network: default\n  destination: '{destination}'\n  nextHop: '{next_hop}'\n"
    )
}

fn counter(daemon: &Daemon, section: &str, key: &str) -> u64 {
    daemon.stats()[section][key].as_u64().unwrap_or(0)
}

/// Two dual-stack subnets: addresses from IPAM configured without DAD, the gateway answers
/// ND and echo on its address, ping and TCP routed both ways with one hop, hop limit 1 gets
/// time exceeded, no route gets unreachable, and tracepath sees the smaller MTU.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn routes_ipv6_between_dual_stack_subnets() {
    require(&["ping", "iperf3", "tracepath"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&dual_subnet(
        "a6",
        "10.61.0.0/24",
        "fd00:61::/64",
        1500,
        false,
    ));
    daemon.apply_yaml(&dual_subnet(
        "b6",
        "10.62.0.0/24",
        "fd00:62::/64",
        1400,
        false,
    ));
    let c1 = Netns::new("6a");
    let c2 = Netns::new("6b");
    daemon.attach(&c1, &["--subnet", "a6"]);
    daemon.attach(&c2, &["--subnet", "b6", "--kind", "veth"]);
    let ip1 = interface_ipv6(&daemon, &c1.name);
    let ip2 = interface_ipv6(&daemon, &c2.name);
    assert!(ip1.starts_with("fd00:61::"), "{ip1}");
    assert!(ip2.starts_with("fd00:62::"), "{ip2}");
    // Configured without DAD: usable at once, never tentative.
    let addr = c1.exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0"]);
    let line = addr
        .lines()
        .find(|line| line.contains(&format!("{ip1}/")))
        .unwrap_or_else(|| panic!("{ip1} is not on eth0:\n{addr}"));
    assert!(!line.contains("tentative"), "{addr}");

    ping6_ok(&c1, "fd00:61::1", 2);
    ping6_ok(&c2, "fd00:62::1", 2);
    // A router answers on all its addresses.
    ping6_ok(&c1, "fd00:62::1", 1);
    let out = ping6_ok(&c1, &ip2, 3);
    assert!(out.contains("ttl=63"), "one routed hop expected:\n{out}");
    ping6_ok(&c2, &ip1, 3);
    let there = iperf3_tcp(&c2, &c1, &ip2, 2);
    let back = iperf3_tcp(&c1, &c2, &ip1, 2);
    eprintln!("routed IPv6 iperf3 Gbit/s: tap->veth {there:.2}, veth->tap {back:.2}");

    let text = ping6(&c1, &["-t", "1"], &ip2);
    assert!(
        text.contains("fd00:61::1") && text.to_lowercase().contains("time exceeded"),
        "hop limit 1 must get time exceeded from the gateway:\n{text}"
    );
    let text = ping6(&c1, &[], "fd00:99::1");
    assert!(
        text.contains("fd00:61::1") && text.to_lowercase().contains("unreachable"),
        "no route must get destination unreachable from the gateway:\n{text}"
    );
    let out = c1.exec(&["tracepath", "-6", "-n", "-m", "4", &ip2]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pmtu 1400"),
        "tracepath must learn the 1400 MTU of b6 from packet too big:\n{text}"
    );
    assert!(text.contains(&ip2), "tracepath must reach {ip2}:\n{text}");

    let stats = daemon.stats();
    for (section, key) in [
        ("drops", "l3.hop_limit_exceeded"),
        ("drops", "l3.no_route"),
        ("drops", "l3.packet_too_big"),
        ("events", "l3.nd_advertised"),
        ("events", "l3.routed"),
        ("events", "l3.echo_replied"),
    ] {
        assert!(
            stats[section][key].as_u64().unwrap_or(0) >= 1,
            "{key} must be counted: {}",
            stats[section]
        );
    }
    let neighbors = daemon.ctl_ok(&["neighbors"]);
    assert!(
        neighbors.contains(&ip2),
        "the switch resolved {ip2}:\n{neighbors}"
    );
}

/// The switch's router advertisement gives a container a SLAAC address in the prefix and a
/// default route via the gateway's link-local address; the SLAAC address is allowed by
/// port security and routed.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn slaac_from_the_switch_router_advertisement() {
    require(&["ping"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&dual_subnet(
        "s6",
        "10.63.0.0/24",
        "fd00:63::/64",
        1500,
        true,
    ));
    daemon.apply_yaml(&dual_subnet(
        "t6",
        "10.64.0.0/24",
        "fd00:64::/64",
        1500,
        false,
    ));
    let c1 = Netns::new("6s");
    let c2 = Netns::new("6t");
    daemon.attach(&c1, &["--subnet", "s6", "--kind", "veth"]);
    daemon.attach(&c2, &["--subnet", "t6"]);
    let ip2 = interface_ipv6(&daemon, &c2.name);
    let slaac = wait_until(
        "a SLAAC address from the RA",
        Duration::from_secs(15),
        || {
            let text = c1.exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0", "dynamic"]);
            text.lines()
                .find(|l| l.contains("inet6 fd00:63::") && !l.contains("tentative"))
                .and_then(|l| l.split_whitespace().nth(1))
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
        },
    );
    let routes = c1.exec_ok(&["ip", "-6", "route", "show", "default"]);
    assert!(
        routes.contains("proto ra") && routes.contains("fe80::"),
        "the RA must install a default route via the gateway's link-local address:\n{routes}"
    );
    let mtu = c1.exec_ok(&["cat", "/proc/sys/net/ipv6/conf/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1500", "the RA's MTU");
    let out = c1.exec(&[
        "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", "-I", &slaac, &ip2,
    ]);
    assert!(
        out.status.success(),
        "ping from the SLAAC address {slaac}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(counter(&daemon, "events", "l3.ra_sent") >= 1);
}

/// Port security for IPv6: a source that is not the container's is dropped, router
/// advertisements from a container are dropped (RA guard), a spoofed neighbour advertisement
/// is dropped (ND guard), ND with a hop limit below 255 is invalid, and malformed IPv6
/// (extension headers running past the packet, a jumbogram) is counted under its reasons.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn ipv6_port_security_and_malformed_packets() {
    require(&["ping", "python3"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&dual_subnet(
        "p6",
        "10.65.0.0/24",
        "fd00:65::/64",
        1500,
        false,
    ));
    let c1 = Netns::new("6p");
    let c2 = Netns::new("6q");
    daemon.attach(&c1, &["--subnet", "p6"]);
    daemon.attach(&c2, &["--subnet", "p6"]);
    let ip2 = interface_ipv6(&daemon, &c2.name);
    ping6_ok(&c1, &ip2, 1);

    // A source the port was not given.
    c1.exec_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:65::99/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let out = c1.exec(&[
        "ping",
        "-6",
        "-c",
        "1",
        "-W",
        "1",
        "-I",
        "fd00:65::99",
        &ip2,
    ]);
    assert!(
        !out.status.success(),
        "a spoofed source must not get through"
    );
    let port = c1.name.as_str();
    assert!(daemon.port_drop(port, "port_security.ipv6_src") >= 1);

    // A router advertisement (RA guard) and a neighbour advertisement for c2's address (ND
    // guard), from c1's link-local address (once DAD has made it usable), hop limit 255.
    let link_local = wait_until("c1's link-local address", Duration::from_secs(10), || {
        let text = c1.exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0", "scope", "link"]);
        text.lines()
            .find(|l| l.contains("inet6 fe80::") && !l.contains("tentative"))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
    });
    let script = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.bind((sys.argv[3], 0, 0, socket.if_nametoindex("eth0")))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, int(sys.argv[2]))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, int(sys.argv[2]))
idx = socket.if_nametoindex("eth0")
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
target = socket.inet_pton(socket.AF_INET6, sys.argv[1])
na = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + target
ns = struct.pack("!BBHI", 135, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, "fd00:65::1")
for msg in (ra, na):
    s.sendto(msg, ("ff02::1", 0, 0, idx))
s.sendto(ns, ("ff02::1:ff00:1", 0, 0, idx))
"#;
    // Hop limit 255: RA guard and ND guard; then 64: the solicitation is invalid ND.
    c1.python(script, &[&ip2, "255", &link_local]);
    c1.python(script, &[&ip2, "64", &link_local]);
    let counted = || {
        [
            "port_security.ra_guard",
            "port_security.nd_spoof",
            "l3.nd_invalid",
        ]
        .map(|reason| (reason, daemon.port_drop(port, reason)))
    };
    let within = Instant::now() + Duration::from_secs(5);
    while counted().iter().any(|(_, n)| *n == 0) && Instant::now() < within {
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts = counted();
    assert!(
        counts.iter().all(|(_, n)| *n >= 1),
        "RA guard, ND guard and invalid ND must each be counted on {port}: {counts:?}"
    );
    // c2 still reaches its gateway (no poisoned neighbour, no rogue router).
    ping6_ok(&c2, "fd00:65::1", 1);

    // Malformed: a destination options header whose length runs past the packet, and a
    // jumbogram (payload length 0 with a hop-by-hop header).
    let mac1 = daemon.ctl_json(&["get", "networkinterface", port])["status"]["mac"]
        .as_str()
        .expect("mac")
        .replace(':', "");
    let header = |payload_len: &str, next: &str| {
        format!(
            "333300000001{mac1}86dd6000000000{payload_len}{next}ff\
             fe800000000000000000000000000001ff020000000000000000000000000001"
        )
    };
    let truncated = format!("{}3a05000000000000", header("08", "3c"));
    let jumbo = format!("{}3a00c204000100000000", header("00", "00"));
    send_raw_frames(&c1, "eth0", &[&truncated, &jumbo]);
    wait_until("malformed IPv6 counted", Duration::from_secs(5), || {
        (daemon.port_drop(port, "parse.ipv6_ext_truncated") >= 1
            && daemon.port_drop(port, "parse.ipv6_jumbogram") >= 1)
            .then_some(())
    });
}

/// TCP servers on `[::]` ports 8080 and 8081 (accept, close).
const SERVER6: &str = r#"
import socket, threading
def tcp(port):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        c.close()
for port in (8080, 8081):
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
threading.Event().wait()
"#;

/// `1` when a TCP connection to `[ip]:port` opens within two seconds, else `0`.
const CONNECT6: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print(1)
except OSError:
    print(0)
"#;

fn connects(ns: &Netns, ip: &str, port: u16) -> bool {
    ns.python(CONNECT6, &[ip, &port.to_string()]).trim() == "1"
}

/// NetworkPolicies apply to IPv6 as to IPv4: an isolated interface's IPv6 ingress is
/// allowed only as its rules say, for a peer in its own Subnet (switched) and in another
/// (routed); replies of allowed connections pass; neighbour discovery is never filtered.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn network_policy_applies_to_ipv6() {
    require(&["ping", "python3"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&dual_subnet(
        "n6",
        "10.66.0.0/24",
        "fd00:66::/64",
        1500,
        false,
    ));
    daemon.apply_yaml(&dual_subnet(
        "m6",
        "10.67.0.0/24",
        "fd00:67::/64",
        1500,
        false,
    ));
    let server = Netns::new("6n");
    let other = Netns::new("6o");
    let client = Netns::new("6c");
    daemon.attach(&server, &["--subnet", "n6", "--label", "app=server"]);
    daemon.attach(&other, &["--subnet", "n6", "--label", "app=other"]);
    daemon.attach(
        &client,
        &["--subnet", "m6", "--label", "app=client", "--kind", "veth"],
    );
    let ip = interface_ipv6(&daemon, &server.name);
    let other_ip = interface_ipv6(&daemon, &other.name);
    let mut listener = server.spawn(&["python3", "-c", SERVER6]);
    wait_until(
        "the IPv6 servers listening",
        Duration::from_secs(10),
        || connects(&client, &ip, 8081).then_some(()),
    );
    assert!(connects(&other, &ip, 8080), "no policy yet: open");
    ping6_ok(&other, &ip, 1);

    daemon.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server6}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n    ports: [{port: 8080}]\n",
    );
    assert!(
        connects(&client, &ip, 8080),
        "client -> 8080 is allowed (routed)"
    );
    assert!(!connects(&client, &ip, 8081), "client -> 8081 is not");
    assert!(
        !connects(&other, &ip, 8080),
        "other -> 8080 is not (switched)"
    );
    let out = other.exec(&["ping", "-6", "-c", "1", "-W", "1", &ip]);
    assert!(!out.status.success(), "ICMPv6 echo is not allowed");
    // The server's egress is not isolated: it reaches the other (its ND included), and the
    // replies come back.
    ping6_ok(&server, &other_ip, 1);
    // Drops count on the port the packet came in on.
    for peer in [&client, &other] {
        assert!(
            daemon.port_drop(&peer.name, "policy.ingress_denied") >= 1,
            "{}'s denied packets are counted",
            peer.name
        );
    }
    let policy = daemon.ctl_json(&["get", "networkpolicy", "server6"]);
    let allowed = policy["status"]["counters"]["ingressAllowed"].as_u64();
    assert!(
        allowed.unwrap_or(0) >= 1,
        "the allowed connection is counted: {}",
        policy["status"]
    );
    let _ = listener.kill();
    let _ = listener.wait();
}

/// A static IPv6 Route through a router namespace: unreachable before it, ping and TCP
/// through the router once it exists (the router may send from the routed prefix: port
/// security learns it from the Route), listed in the routing table, refused when its next
/// hop is of the other family or the gateway.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn static_ipv6_route_through_a_router_namespace() {
    require(&["ping", "iperf3"]);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&dual_subnet(
        "r6",
        "10.63.0.0/24",
        "fd00:63::/64",
        1500,
        false,
    ));
    let c1 = Netns::new("6s");
    let router = Netns::new("6r");
    daemon.attach(&c1, &["--subnet", "r6"]);
    daemon.attach(&router, &["--subnet", "r6", "--kind", "veth"]);
    let hop = interface_ipv6(&daemon, &router.name);
    // Behind the router: fd00:99::1 on its loopback (this kernel may lack the dummy link type).
    router.exec_ok(&["ip", "-6", "addr", "add", "fd00:99::1/128", "dev", "lo"]);
    router.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);

    let text = ping6(&c1, &[], "fd00:99::1");
    assert!(
        text.to_lowercase().contains("unreachable"),
        "without the Route fd00:99::1 has no route:\n{text}"
    );
    daemon.apply_yaml(&route6("behind-router6", "fd00:99::/64", &hop));
    wait_until(
        "fd00:99::1 reachable through the router",
        Duration::from_secs(5),
        || {
            c1.exec(&["ping", "-6", "-c", "1", "-W", "1", "fd00:99::1"])
                .status
                .success()
                .then_some(())
        },
    );
    // Requests are routed to the router; its replies come straight back on the link (the
    // router's connected route), from fd00:99::1: port security must let them pass.
    let routed = counter(&daemon, "events", "l3.routed");
    ping6_ok(&c1, "fd00:99::1", 3);
    assert!(counter(&daemon, "events", "l3.routed") >= routed + 3);
    let gbits = iperf3_tcp(&router, &c1, "fd00:99::1", 2);
    eprintln!("IPv6 TCP through a static Route Gbit/s: {gbits:.2}");
    assert!(gbits > 0.0);

    let routes = daemon.ctl_ok(&["routes"]);
    let line = routes
        .lines()
        .find(|line| line.contains("fd00:99::/64"))
        .unwrap_or_else(|| panic!("the IPv6 Route is not in the routing table:\n{routes}"));
    assert!(
        line.contains(&hop) && line.contains("static:behind-router6"),
        "{routes}"
    );
    assert!(
        routes.contains("fd00:63::/64"),
        "connected IPv6 prefix listed:\n{routes}"
    );
    // The tracer says the same, for a synthetic IPv6 segment from c1.
    let ip1 = interface_ipv6(&daemon, &c1.name);
    let packet = format!("tcp [{ip1}]:40000 > [fd00:99::1]:80 flags S");
    let trace = daemon.ctl_ok(&["trace", "--in", &c1.name, &packet]);
    assert!(
        trace.contains(&format!("fd00:99::1 via subnet r6 (via {hop})"))
            && trace.contains(&format!("Verdict: forward to {}", router.name)),
        "{trace}"
    );
    let route = daemon.ctl_json(&["get", "route", "behind-router6"]);
    assert_eq!(route["status"]["state"], "Ready", "{route}");
    assert_eq!(route["status"]["subnet"], "r6", "{route}");
    assert_eq!(
        counter(&daemon, "drops", "port_security.ipv6_src"),
        0,
        "the router's replies from fd00:99::1 pass port security"
    );

    let wrong = route6("mixed", "fd00:98::/64", "10.63.0.9");
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), &wrong).expect("write");
    let err = daemon.ctl_err(&["apply", "-f", file.path().to_str().expect("utf8")]);
    assert!(
        err.contains("spec.nextHop") && err.contains("is an IPv4 address"),
        "{err}"
    );
    std::fs::write(file.path(), route6("self", "fd00:98::/64", "fd00:63::1")).expect("write");
    let err = daemon.ctl_err(&["apply", "-f", file.path().to_str().expect("utf8")]);
    assert!(err.contains("the gateway (the switch itself)"), "{err}");
    assert!(
        daemon
            .ctl_json(&["get", "routes"])
            .to_string()
            .contains("behind-router6")
    );
}

/// A host that sends no router solicitation still learns the prefix: the switch advertises
/// to a port as soon as it is attached (and every 200 to 600 s after).
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn slaac_without_router_solicitations() {
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&dual_subnet(
        "q6",
        "10.65.0.0/24",
        "fd00:65::/64",
        1500,
        true,
    ));
    let c1 = Netns::new("6q");
    // Interfaces that arrive in the namespace send no solicitation.
    for key in [
        "net.ipv6.conf.all.router_solicitations=0",
        "net.ipv6.conf.default.router_solicitations=0",
    ] {
        c1.exec_ok(&["sysctl", "-qw", key]);
    }
    daemon.attach(&c1, &["--subnet", "q6", "--kind", "veth"]);
    let rs = c1.exec_ok(&["cat", "/proc/sys/net/ipv6/conf/eth0/router_solicitations"]);
    assert_eq!(rs.trim(), "0", "eth0 must not solicit");
    wait_until(
        "a SLAAC address from the unsolicited RA",
        Duration::from_secs(15),
        || {
            let text = c1.exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0", "dynamic"]);
            text.contains("inet6 fd00:65::").then_some(())
        },
    );
    assert!(
        counter(&daemon, "events", "l3.ra_sent") >= 1,
        "the RA is counted"
    );
}

/// A TCP server on `[argv[1]]:argv[2]` (IPv6) that tells each client its `[ip]:port`.
const TCP_WHOAMI6: &str = "import socket,sys\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.listen(8)\nwhile True:\n    c,a=s.accept()\n    c.sendall(('[%s]:%d'%(a[0],a[1])).encode())\n    c.close()\n";

/// Connects to `[argv[1]]:argv[2]` over IPv6 (from port `argv[3]` when given) and prints
/// what the server says.
const TCP_ASK6: &str = "import socket,sys\ns=socket.socket(socket.AF_INET6)\ns.settimeout(3)\nif len(sys.argv)>3: s.bind(('::',int(sys.argv[3])))\ns.connect((sys.argv[1],int(sys.argv[2])))\nprint(s.recv(2048).decode())\n";

/// A connected UDP socket over IPv6 to a closed port: `refused` when the ICMPv6 port
/// unreachable comes back (translated), `timeout` otherwise.
const UDP_REFUSED6: &str = "import socket,sys\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\ns.settimeout(2)\ns.connect((sys.argv[1],int(sys.argv[2])))\ns.send(b'x')\ntry:\n    s.recv(10)\n    print('answered')\nexcept ConnectionRefusedError:\n    print('refused')\nexcept socket.timeout:\n    print('timeout')\n";

/// NAT66 through the Uplink's IPv6: containers on a dual-stack Subnet reach an IPv6
/// outside with masquerade (ping -6, TCP seen from the NAT address with the port kept,
/// iperf3, a translated ICMPv6 port unreachable), the outside reaches a container through
/// an IPv6 PortForward and pings the switch's IPv6 address (answered over neighbour
/// discovery the switch does on the uplink), and IPv4 NAT keeps working beside it.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces, a veth uplink and TAP/veth ports"]
fn nat66_masquerade_and_port_forward_through_the_uplink() {
    require(&["ping", "iperf3", "python3"]);
    let mut outside = Outside::new(&["203.0.113.1/24"]);
    outside.ns.exec_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    outside.serve_here("tcp", TCP_WHOAMI6, "2001:db8:1::1", 9000);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&dual_subnet(
        "a6",
        "10.61.0.0/24",
        "fd00:61::/64",
        1500,
        false,
    ));
    let c1 = Netns::new("n6a");
    let c2 = Netns::new("n6b");
    daemon.attach(&c1, &["--subnet", "a6"]);
    daemon.attach(&c2, &["--subnet", "a6", "--kind", "veth"]);
    let ip2 = interface_ipv6(&daemon, &c2.name);
    daemon.apply_yaml(&format!(
        "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata:\n  name: up\nspec:\n  interface: {}\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n  ipv6:\n    addresses: ['2001:db8:1::10/64', '2001:db8:1::11']\n    gateway: '2001:db8:1::1'\n---\napiVersion: vswitch/v1alpha1\nkind: NATGateway\nmetadata:\n  name: default\nspec:\n  network: default\n  ips: [203.0.113.10, '2001:db8:1::10']\n---\napiVersion: vswitch/v1alpha1\nkind: PortForward\nmetadata:\n  name: web6\nspec:\n  ip: '2001:db8:1::10'\n  protocol: tcp\n  port: 8080\n  target:\n    interface: {}\n    port: 80\n",
        outside.host_end, c2.name
    ));

    // Out with masquerade: the outside sees the NAT address, with the port kept.
    ping6_ok(&c1, "2001:db8:1::1", 3);
    let seen = c1.python(TCP_ASK6, &["2001:db8:1::1", "9000", "41000"]);
    assert_eq!(seen, "[2001:db8:1::10]:41000", "NAT66 address, port kept");
    let seen = c2.python(TCP_ASK6, &["2001:db8:1::1", "9000"]);
    assert!(seen.starts_with("[2001:db8:1::10]:"), "{seen}");
    assert_eq!(
        c1.python(UDP_REFUSED6, &["2001:db8:1::1", "9999"]),
        "refused"
    );
    let gbps = iperf3_tcp(&outside.ns, &c1, "2001:db8:1::1", 2);
    eprintln!("NAT66 masquerade iperf3 (TAP): {gbps:.2} Gbit/s");
    assert!(gbps > 0.0);
    // IPv4 NAT beside it.
    daemon.ctl_ok(&["get", "natgateway", "default"]);
    c1.ping_ok("203.0.113.1", 2);

    // In through the IPv6 port forward; the container sees the outside's own address.
    let c2_name = c2.name.clone();
    outside.serve(&c2_name, "tcp", TCP_WHOAMI6, &ip2, 80);
    let seen = outside.ns.python(TCP_ASK6, &["2001:db8:1::10", "8080"]);
    assert!(seen.starts_with("[2001:db8:1::1]:"), "{seen}");
    let out = outside.ns.exec(&[
        "ping",
        "-6",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        "2001:db8:1::10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let neighbours = outside
        .ns
        .exec_ok(&["ip", "-6", "neigh", "show", "2001:db8:1::10"]);
    assert!(
        neighbours.contains("lladdr"),
        "the switch answered ND: {neighbours}"
    );
    let forward = daemon.ctl_json(&["get", "portforward", "web6"]);
    assert_eq!(forward["status"]["state"], "Ready", "{forward}");
    assert_eq!(
        forward["status"]["destination"],
        format!("[{ip2}]:80"),
        "{forward}"
    );

    let table = daemon.ctl_ok(&["conntrack"]);
    assert!(table.contains("2001:db8:1::10"), "{table}");
    let nat = daemon.ctl_ok(&["nat"]);
    assert!(nat.contains("2001:db8:1::10"), "{nat}");

    // An IPv6 VirtualIP (allocated: ::10 is the gateway's and the forward's) on a third
    // container, beside its IPv4 address: 1:1 both ways.
    let c3 = Netns::new("n6c");
    daemon.attach(&c3, &["--subnet", "a6", "--label", "app=vip6"]);
    let ip3 = interface_ipv6(&daemon, &c3.name);
    daemon.apply_yaml(
        "apiVersion: vswitch/v1alpha1\nkind: VirtualIP\nmetadata:\n  name: pub6\nspec:\n  type: Public\n  ipFamily: IPv6\n",
    );
    let mut nic = daemon.ctl_json(&["get", "networkinterface", &c3.name]);
    nic["spec"]["virtualIPs"] = serde_json::json!(["pub6"]);
    if let Some(object) = nic.as_object_mut() {
        object.remove("status");
    }
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), nic.to_string()).expect("write");
    daemon.ctl_ok(&["apply", "-f", file.path().to_str().expect("utf8")]);
    let vip = daemon.ctl_json(&["get", "virtualip", "pub6"]);
    assert_eq!(vip["status"]["ip"], "2001:db8:1::11", "{vip}");
    assert_eq!(vip["status"]["interface"], c3.name.as_str(), "{vip}");
    let nic = daemon.ctl_json(&["get", "networkinterface", &c3.name]);
    assert_eq!(
        nic["status"]["virtualIPs"],
        serde_json::json!(["2001:db8:1::11"]),
        "{nic}"
    );
    let seen = c3.python(TCP_ASK6, &["2001:db8:1::1", "9000", "42000"]);
    assert_eq!(
        seen, "[2001:db8:1::11]:42000",
        "c3 leaves with its VirtualIP"
    );
    let c3_name = c3.name.clone();
    outside.serve(&c3_name, "tcp", TCP_WHOAMI6, &ip3, 80);
    let mut listener = c3.spawn(&["python3", "-c", SERVER6]);
    let seen = outside.ns.python(TCP_ASK6, &["2001:db8:1::11", "80"]);
    assert_eq!(
        seen.rsplit_once(':').map(|(addr, _)| addr),
        Some("[2001:db8:1::1]"),
        "c3 sees the outside's own address: {seen}"
    );
    wait_until(
        "c3's IPv6 servers reachable on its VirtualIP",
        Duration::from_secs(10),
        || connects(&outside.ns, "2001:db8:1::11", 8081).then_some(()),
    );
    ping6_ok(&outside.ns, "2001:db8:1::11", 1);

    // A NetworkPolicy isolates c3 for ingress: from the outside's /64, TCP 8080 only. NAT66
    // connections are judged against c3 and its port, before they are created.
    daemon.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: vip6}\nspec:\n  podSelector: {matchLabels: {app: vip6}}\n  ingress:\n  - from: [{ipBlock: {cidr: '2001:db8:1::/64'}}]\n    ports: [{port: 8080}]\n",
    );
    assert!(
        connects(&outside.ns, "2001:db8:1::11", 8080),
        "8080 is allowed"
    );
    assert!(
        !connects(&outside.ns, "2001:db8:1::11", 8081),
        "8081 is not"
    );
    let out = outside
        .ns
        .exec(&["ping", "-6", "-c", "1", "-W", "1", "2001:db8:1::11"]);
    assert!(!out.status.success(), "ICMPv6 echo to c3 is not allowed");
    let policy = daemon.ctl_json(&["get", "networkpolicy", "vip6"]);
    let counters = &policy["status"]["counters"];
    assert!(
        counters["ingressAllowed"].as_u64().unwrap_or(0) >= 1
            && counters["ingressDenied"].as_u64().unwrap_or(0) >= 2,
        "{}",
        policy["status"]
    );
    // c3's egress is not isolated: its own connections out still leave with the VirtualIP,
    // and their replies come back.
    let seen = c3.python(TCP_ASK6, &["2001:db8:1::1", "9000", "42001"]);
    assert_eq!(seen, "[2001:db8:1::11]:42001");
    let table = daemon.ctl_ok(&["conntrack"]);
    assert!(table.contains("2001:db8:1::11"), "{table}");
    let _ = listener.kill();
    let _ = listener.wait();
}
