//! LoadBalancer end to end: real servers in namespaces behind an internal address, clients
//! in other namespaces, the real daemon and CLI.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use common::{Daemon, Netns, require, tail, wait_until};

/// A TCP server on port 8080 that answers every line with its name (one thread per
/// connection, so connections stay open as long as their clients like), over IPv4.
fn start_server(ns: &Netns, name: &str) -> Child {
    start_server_on(ns, name, "s = socket.socket()", "0.0.0.0")
}

/// [`start_server`] over both families (one IPv6 socket taking IPv4 too).
fn start_server_dual(ns: &Netns, name: &str) -> Child {
    start_server_on(
        ns,
        name,
        "s = socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)",
        "::",
    )
}

/// [`start_server`] with the listening socket made by `socket` and bound to `address`.
fn start_server_on(ns: &Netns, name: &str, socket: &str, address: &str) -> Child {
    let script = format!(
        r#"
import socket, threading
def serve(c):
    f = c.makefile("rb")
    try:
        for line in f:
            c.sendall(b"{name}\n")
    except OSError:
        pass
    c.close()
{socket}
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{address}", 8080))
s.listen(512)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#
    );
    ns.spawn(&["python3", "-c", &script])
}

/// Opens `count` connections to `address:80` one after the other (from source ports
/// `first_port`, `first_port + 1`, ... when given), asks each for its backend's name, and
/// returns the names in order ("refused" for a connection refused with a reset, "-" for
/// one that failed otherwise).
fn ask(ns: &Netns, address: &str, count: usize, first_port: Option<u16>) -> Vec<String> {
    let bind = first_port.map_or("None".to_string(), |p| p.to_string());
    let script = format!(
        r#"
import socket
first = {bind}
v6 = ":" in "{address}"
for i in range({count}):
    try:
        c = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET)
        c.settimeout(5)
        if first is not None:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.bind(("::" if v6 else "0.0.0.0", first + i))
        c.connect(("{address}", 80))
        c.sendall(b"hi\n")
        name = c.makefile("rb").readline().decode().strip() or "-"
        c.close()
    except ConnectionRefusedError:
        name = "refused"
    except OSError:
        name = "-"
    print(name, flush=True)
"#
    );
    ns.exec_ok(&["python3", "-c", &script])
        .lines()
        .map(str::to_string)
        .collect()
}

fn counts(names: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.clone()).or_default() += 1;
    }
    counts
}

/// A client holding `count` connections open: asks each once, writes the names to
/// `ready`, waits for `go` to exist, asks each again and prints the second names ("-" for a
/// connection that fails).
fn hold_connections(ns: &Netns, address: &str, count: usize, dir: &std::path::Path) -> Child {
    let ready = dir.join("ready");
    let go = dir.join("go");
    let script = format!(
        r#"
import os, socket, time
conns = []
names = []
for i in range({count}):
    c = socket.create_connection(("{address}", 80), timeout=5)
    c.sendall(b"hi\n")
    f = c.makefile("rb")
    names.append(f.readline().decode().strip())
    conns.append((c, f))
with open("{ready}.tmp", "w") as out:
    out.write("\n".join(names))
os.rename("{ready}.tmp", "{ready}")
while not os.path.exists("{go}"):
    time.sleep(0.05)
for c, f in conns:
    try:
        c.sendall(b"again\n")
        name = f.readline().decode().strip() or "-"
    except OSError:
        name = "-"
    print(name, flush=True)
"#,
        ready = ready.display(),
        go = go.display(),
    );
    ns.spawn(&["python3", "-c", &script])
}

/// Holds `count` connections from `ns` to `address:80` open across `change`: the backend
/// names each connection got before, and after (`-` for one that failed).
fn across(
    ns: &Netns,
    address: &str,
    count: usize,
    change: impl FnOnce(),
) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut holder = hold_connections(ns, address, count, dir.path());
    let ready = dir.path().join("ready");
    let before: Vec<String> = wait_until("the held connections", Duration::from_secs(30), || {
        std::fs::read_to_string(&ready).ok()
    })
    .lines()
    .map(str::to_string)
    .collect();
    change();
    std::fs::write(dir.path().join("go"), "").expect("go");
    let status = wait_until("the holder to finish", Duration::from_secs(60), || {
        holder.try_wait().ok().flatten()
    });
    assert!(status.success(), "the holding client failed");
    let mut out = String::new();
    if let Some(mut stdout) = holder.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let after: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(after.len(), before.len(), "{out}");
    (before, after)
}

fn view(daemon: &Daemon) -> serde_json::Value {
    daemon.ctl_json(&["lb", "web"])
}

/// Three backends behind one address: an even spread, hairpin, established connections
/// that keep their backend when another leaves, no new connection to a detached backend,
/// about 1/N of flows moving when it comes back, draining on a label change, and a closed
/// port's answer once no backend is left.
#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn three_backends_behind_one_address() {
    require(&["python3"]);
    let daemon = Daemon::start(1);
    let backends: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("lb{i}"))).collect();
    let mut servers = Vec::new();
    for ns in &backends {
        daemon.attach(ns, &["--label", "app=web"]);
        servers.push(start_server(ns, &ns.name));
    }
    let clients: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("lc{i}"))).collect();
    for ns in &clients {
        daemon.attach(ns, &[]);
    }
    daemon.apply_yaml("apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {name: web}\nspec:\n  type: Internal\n  network: default\n  networkInterfaceSelector: {matchLabels: {app: web}}\n  ports: [{port: 80, targetPort: 8080}]\n  drainSeconds: 3\n",
    );
    let lb = daemon.ctl_json(&["get", "loadbalancer", "web"]);
    let address = lb["status"]["ips"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {lb}"))
        .to_string();
    assert_eq!(lb["status"]["state"], "Ready", "{lb}");
    assert_eq!(lb["status"]["backends"]["healthy"], 3, "{lb}");
    for (ns, server) in backends.iter().zip(servers.iter_mut()) {
        common::wait_listening(&ns.name, "tcp", "0.0.0.0:8080", server);
    }

    // Its routing, written by the switch: every backend with its uid.
    let routing = daemon.ctl_json(&["get", "loadbalancerrouting", "web"]);
    let destinations = routing["status"]["destinations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(destinations.len(), 3, "{routing}");
    for destination in &destinations {
        assert_eq!(destination["state"], "Healthy", "{routing}");
        assert_eq!(
            destination["uid"].as_str().map(str::len),
            Some(36),
            "{routing}"
        );
    }
    let err = daemon.ctl_err(&["delete", "loadbalancerrouting", "web"]);
    assert!(err.contains("LoadBalancer/web"), "{err}");

    // An even spread: 600 new connections from two clients (with 300, a backend's count has
    // a standard deviation of 8 and +-20% is only 2.4 of them: one run in twenty would
    // fail by chance; with 600 it is 3.5).
    let mut names = ask(&clients[0], &address, 300, None);
    names.extend(ask(&clients[1], &address, 300, None));
    let spread = counts(&names);
    eprintln!("600 connections: {spread:?}");
    for ns in &backends {
        let got = spread.get(&ns.name).copied().unwrap_or(0);
        assert!(
            (160..=240).contains(&got),
            "{} got {got} of 600 connections (want 200 +- 20%): {spread:?}\ndaemon log:\n{}",
            ns.name,
            tail(&daemon.log_text(), 30)
        );
    }
    // Each backend holds a third of the table.
    let shown = view(&daemon);
    let slots: Vec<u64> = shown["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["slots"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(slots.iter().sum::<u64>(), 16381, "{shown}");
    assert!(slots.iter().all(|s| s.abs_diff(16381 / 3) <= 1), "{shown}");

    // Hairpin: a backend reaches its own LoadBalancer.
    let hairpin = ask(&backends[0], &address, 20, None);
    assert!(
        hairpin.iter().all(|n| n != "-"),
        "a backend cannot reach its own LoadBalancer: {hairpin:?}"
    );

    // ClientIP affinity: each client's new connections all go to one backend; switched off
    // again, they spread.
    let lb_doc = |affinity: &str| {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {{name: web}}\nspec:\n  type: Internal\n  network: default\n  networkInterfaceSelector: {{matchLabels: {{app: web}}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n  drainSeconds: 3\n{affinity}"
        )
    };
    daemon.apply_yaml(&lb_doc(
        "  sessionAffinity: ClientIP\n  sessionAffinityTimeoutSeconds: 60\n",
    ));
    for client in &clients {
        let pinned = counts(&ask(client, &address, 30, None));
        assert_eq!(pinned.len(), 1, "{}: {pinned:?}", client.name);
        assert!(!pinned.contains_key("-"), "{pinned:?}");
    }
    daemon.apply_yaml(&lb_doc(""));
    let spread = counts(&ask(&clients[0], &address, 60, None));
    assert!(spread.len() > 1, "without affinity: {spread:?}");

    // Health checks: a killed server is marked unhealthy within its check window and gets
    // no new connections; restarted, it is healthy again and gets them back.
    daemon.apply_yaml(&lb_doc(
            "  healthCheck: {intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 1, unhealthyThreshold: 2}\n",
        ),
    );
    let state_of = |name: &str| {
        let shown = view(&daemon);
        shown["backends"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["interface"] == name))
            .map(|r| r["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let sick = backends[0].name.clone();
    let _ = servers[0].kill();
    let _ = servers[0].wait();
    wait_until(
        "the killed server to be marked unhealthy",
        Duration::from_secs(20),
        || (state_of(&sick) == "Unhealthy").then_some(()),
    );
    let names = ask(&clients[1], &address, 60, None);
    assert!(
        !names.contains(&sick) && !names.contains(&"-".to_string()),
        "with {sick} unhealthy: {:?}",
        counts(&names)
    );
    let lb = daemon.ctl_json(&["get", "loadbalancer", "web"]);
    assert_eq!(lb["status"]["backends"]["unhealthy"], 1, "{lb}");
    servers[0] = start_server(&backends[0], &sick);
    wait_until(
        "the restarted server to be healthy",
        Duration::from_secs(20),
        || (state_of(&sick) == "Healthy").then_some(()),
    );
    let names = ask(&clients[1], &address, 60, None);
    assert!(names.contains(&sick), "{:?}", counts(&names));
    let stats = daemon.stats();
    assert!(
        stats["events"]["lb.probe_answers"].as_u64().unwrap_or(0) > 0,
        "no probe answer counted: {}",
        stats["events"]
    );

    // Established connections keep their backend when another leaves; the leaver's fail.
    let leaver = &backends[1].name;
    let (before, after) = across(&clients[0], &address, 30, || {
        daemon.ctl_ok(&["detach", leaver]);
    });
    let mut kept = 0;
    for (first, second) in before.iter().zip(&after) {
        if first == leaver {
            assert_eq!(
                *second, "-",
                "a connection of the detached backend still answered"
            );
        } else {
            assert_eq!(first, second, "an established connection changed backend");
            kept += 1;
        }
    }
    eprintln!(
        "held connections: {kept} kept their backend, {} were on {leaver}",
        before.len() - kept
    );
    let names = ask(&clients[1], &address, 60, None);
    assert!(
        !names.contains(leaver) && !names.contains(&"-".to_string()),
        "new connections after the detach: {:?}",
        counts(&names)
    );

    // Re-attached, it takes about a third of new flows back, and few others move; the
    // connections established meanwhile keep their backends.
    let fixed = ask(&clients[0], &address, 300, Some(20_000));
    daemon.ctl_ok(&["conntrack", "--flush"]);
    let (before, after) = across(&clients[1], &address, 20, || {
        daemon.attach(&backends[1], &["--label", "app=web"]);
    });
    assert_eq!(
        before, after,
        "established connections changed backend when one was added"
    );
    servers.push(start_server(&backends[1], leaver));
    common::wait_listening(
        &backends[1].name,
        "tcp",
        "0.0.0.0:8080",
        servers.last_mut().expect("server"),
    );
    let again = ask(&clients[0], &address, 300, Some(20_000));
    let moved = fixed.iter().zip(&again).filter(|(a, b)| a != b).count();
    let to_leaver = again.iter().filter(|n| *n == leaver).count();
    eprintln!(
        "re-adding {leaver}: {moved} of 300 flows moved ({:.1}%), {to_leaver} to it",
        moved as f64 / 3.0
    );
    assert!(!again.contains(&"-".to_string()), "{again:?}");
    assert!(
        moved <= 300 / 3 + 30 && moved.abs_diff(to_leaver) <= 15,
        "{moved} flows moved, {to_leaver} to the re-added backend"
    );

    // A label change drains the backend: no new connections, then it leaves.
    let drained = &backends[2].name;
    daemon.apply_yaml(&format!(
            "apiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {drained}, labels: {{app: other}}}}\nspec: {{subnet: default, netns: {drained}}}\n"
        ),
    );
    let shown = view(&daemon);
    let row = shown["backends"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["interface"] == drained.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["state"], "Draining", "{shown}");
    let names = ask(&clients[1], &address, 30, None);
    assert!(!names.contains(drained), "{:?}", counts(&names));
    wait_until(
        "the drained backend to leave",
        Duration::from_secs(15),
        || {
            let shown = view(&daemon);
            let gone = shown["backends"]
                .as_array()
                .is_some_and(|rows| rows.iter().all(|r| r["interface"] != drained.as_str()));
            gone.then_some(())
        },
    );

    // No backend: a closed port's answer (a reset), counted.
    daemon.apply_yaml("apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {name: web}\nspec:\n  type: Internal\n  network: default\n  networkInterfaceSelector: {matchLabels: {app: nothing}}\n  ports: [{port: 80, targetPort: 8080}, {protocol: UDP, port: 53}]\n",
    );
    let lb = daemon.ctl_json(&["get", "loadbalancer", "web"]);
    assert_eq!(lb["status"]["state"], "NoBackends", "{lb}");
    let names = ask(&clients[0], &address, 3, None);
    assert_eq!(
        names,
        ["refused", "refused", "refused"],
        "a reset was expected"
    );
    let stats = daemon.stats();
    let refused: u64 = stats["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["drops"]["lb.no_backend"].as_u64())
        .sum();
    assert!(refused >= 3, "lb.no_backend not counted: {stats}");
    // UDP gets an ICMP port unreachable: with no backend (port 53) and on a port the
    // LoadBalancer does not serve (54); a connected socket sees it as a refusal.
    let udp = format!(
        r#"
import socket
for port in (53, 54):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect(("{address}", port))
    s.send(b"hi")
    try:
        s.recv(100)
        print("answered")
    except ConnectionRefusedError:
        print("refused")
    except OSError:
        print("silence")
"#
    );
    let answers = clients[0].exec_ok(&["python3", "-c", &udp]);
    assert_eq!(answers.trim(), "refused\nrefused", "{answers}");
    let stats = daemon.stats();
    let no_port: u64 = stats["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["drops"]["lb.no_port"].as_u64())
        .sum();
    assert!(no_port >= 1, "lb.no_port not counted: {stats}");
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
}

/// A veth whose far end is an "outside" namespace (203.0.113.1/24), its near end the Uplink.
struct Outside {
    ns: Netns,
    host_end: String,
}

impl Outside {
    fn new() -> Outside {
        let ns = Netns::new("lbout");
        let host_end = common::unique("lu");
        let peer = common::unique("lp");
        common::run(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &peer,
            ],
        );
        common::run("ip", &["link", "set", &peer, "netns", &ns.name]);
        common::run("ip", &["link", "set", &host_end, "up"]);
        ns.exec_ok(&["ip", "link", "set", &peer, "name", "eth0"]);
        ns.exec_ok(&["ip", "addr", "add", "203.0.113.1/24", "dev", "eth0"]);
        ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        Outside { ns, host_end }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_end])
            .output();
    }
}

/// A Public LoadBalancer: an Uplink address allocated to it, reached from outside through
/// the uplink and from inside the Network on the same address; replies leave the way the
/// requests came.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces and a veth uplink"]
fn public_load_balancer_through_the_uplink() {
    require(&["python3"]);
    let outside = Outside::new();
    let daemon = Daemon::start(1);
    let backends: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("lpb{i}"))).collect();
    let mut servers = Vec::new();
    for ns in &backends {
        daemon.attach(ns, &["--label", "app=pub"]);
        servers.push(start_server(ns, &ns.name));
    }
    for (ns, server) in backends.iter().zip(servers.iter_mut()) {
        common::wait_listening(&ns.name, "tcp", "0.0.0.0:8080", server);
    }
    let inside = Netns::new("lpc");
    daemon.attach(&inside, &[]);
    daemon.apply_yaml(&format!(
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {{name: up}}\nspec:\n  interface: {}\n  addresses: [203.0.113.10/24, 203.0.113.20/24]\n  gateway: 203.0.113.1\n---\n\
             apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {{name: web}}\nspec:\n  type: Public\n  network: default\n  networkInterfaceSelector: {{matchLabels: {{app: pub}}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
            outside.host_end
        ),
    );
    let lb = daemon.ctl_json(&["get", "loadbalancer", "web"]);
    assert_eq!(lb["status"]["ips"][0], "203.0.113.10", "{lb}");
    assert_eq!(lb["status"]["state"], "Ready", "{lb}");
    // The address is the LoadBalancer's: a PortForward cannot take it.
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        file.path(),
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: PortForward\nmetadata: {{name: pf}}\nspec: {{ip: 203.0.113.10, protocol: tcp, port: 81, target: {{interface: {}, port: 8080}}}}\n",
            backends[0].name
        ),
    )
    .expect("write");
    let err = daemon.ctl_err(&["apply", "-f", file.path().to_str().expect("utf8")]);
    assert!(err.contains("LoadBalancer \"web\""), "{err}");

    let from_outside = counts(&ask(&outside.ns, "203.0.113.10", 60, None));
    eprintln!("from outside: {from_outside:?}");
    assert!(!from_outside.contains_key("-"), "{from_outside:?}");
    for ns in &backends {
        assert!(from_outside.contains_key(&ns.name), "{from_outside:?}");
    }
    let from_inside = counts(&ask(&inside, "203.0.113.10", 30, None));
    assert!(!from_inside.contains_key("-"), "{from_inside:?}");
    let stats = daemon.stats();
    assert!(
        stats["events"]["lb.connections_created"]
            .as_u64()
            .unwrap_or(0)
            >= 90,
        "{}",
        stats["events"]
    );
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
}

/// The state `vswitchctl lb` shows for `interface`'s backend at address `ip`.
fn backend_state(daemon: &Daemon, lb: &str, interface: &str, ip: &str) -> String {
    let shown = daemon.ctl_json(&["lb", lb]);
    shown["backends"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["interface"] == interface && r["ip"] == ip)
        })
        .map(|r| r["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// A dual-stack LoadBalancer: an address of each family, IPv6 connections spread over the
/// backends' IPv6 addresses (hairpin too), a closed port refused, echo answered, IPv6
/// health checks that take a dead backend out and put it back; then a Public IPv6
/// LoadBalancer reached from outside through the Uplink's IPv6.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces and a veth uplink"]
fn dual_stack_load_balancer_over_ipv6() {
    require(&["python3", "ping"]);
    let outside = common::Outside::new(&["203.0.113.1/24"]);
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
    let daemon = Daemon::start(2);
    daemon.apply_yaml(
        "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: lb6}\nspec:\n  network: default\n  cidr: 10.62.0.0/24\n  ipv6: {cidr: 'fd00:62::/64'}\n",
    );
    let backends: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("l6b{i}"))).collect();
    let mut servers = Vec::new();
    for (i, ns) in backends.iter().enumerate() {
        let kind = if i == 0 { "tap" } else { "veth" };
        daemon.attach(
            ns,
            &["--subnet", "lb6", "--label", "app=web6", "--kind", kind],
        );
        servers.push(start_server_dual(ns, &ns.name));
    }
    for (ns, server) in backends.iter().zip(servers.iter_mut()) {
        common::wait_listening(&ns.name, "tcp", ":8080", server);
    }
    let client = Netns::new("l6c");
    daemon.attach(&client, &["--subnet", "lb6"]);
    daemon.apply_yaml(
        "apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {name: web6}\nspec:\n  type: Internal\n  ipFamilies: [IPv4, IPv6]\n  network: default\n  networkInterfaceSelector: {matchLabels: {app: web6}}\n  ports: [{port: 80, targetPort: 8080}]\n  healthCheck: {intervalSeconds: 2, timeoutSeconds: 1, healthyThreshold: 1, unhealthyThreshold: 2}\n",
    );
    let lb = daemon.ctl_json(&["get", "loadbalancer", "web6"]);
    let v4 = lb["status"]["ips"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let v6 = lb["status"]["ips"][1]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // IPv4 from the Network's first Subnet by name (default), IPv6 from its only
    // dual-stack one.
    assert!(v4.parse::<std::net::Ipv4Addr>().is_ok(), "{lb}");
    assert!(v6.starts_with("fd00:62::"), "{lb}");
    // Both families of both backends pass their health checks.
    let addresses: Vec<(String, String, String)> = backends
        .iter()
        .map(|ns| {
            let nic = daemon.ctl_json(&["get", "networkinterface", &ns.name]);
            let ip = |value: &serde_json::Value| {
                let text = value.as_str().unwrap_or_default();
                text.split('/').next().unwrap_or(text).to_string()
            };
            (
                ns.name.clone(),
                ip(&nic["status"]["ips"][0]),
                ip(&nic["status"]["ipv6"]),
            )
        })
        .collect();
    for (name, ip4, ip6) in &addresses {
        for ip in [ip4, ip6] {
            wait_until(
                &format!("{name} {ip} healthy"),
                Duration::from_secs(20),
                || (backend_state(&daemon, "web6", name, ip) == "Healthy").then_some(()),
            );
        }
    }
    let lb = daemon.ctl_json(&["get", "loadbalancer", "web6"]);
    assert_eq!(lb["status"]["state"], "Ready", "{lb}");
    assert_eq!(
        lb["status"]["backends"]["healthy"], 2,
        "a dual-stack backend counts once: {lb}"
    );

    // IPv6 connections spread over both backends; IPv4 beside them.
    let spread = counts(&ask(&client, &v6, 60, None));
    eprintln!("60 IPv6 connections: {spread:?}");
    assert!(!spread.contains_key("-"), "{spread:?}");
    for ns in &backends {
        assert!(spread.contains_key(&ns.name), "{spread:?}");
    }
    let spread4 = counts(&ask(&client, &v4, 20, None));
    assert!(!spread4.contains_key("-"), "{spread4:?}");
    let shown = daemon.ctl_json(&["lb", "web6"]);
    assert_eq!(
        shown["addresses"],
        serde_json::json!([v4.clone(), v6.clone()]),
        "{shown}"
    );
    let v6_connections: u64 = shown["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter(|b| b["ip"].as_str().is_some_and(|ip| ip.contains(':')))
        .map(|b| b["connections"].as_u64().unwrap_or(0))
        .sum();
    assert!(v6_connections > 0, "IPv6 connections tracked: {shown}");
    let text = daemon.ctl_ok(&["lb", "web6"]);
    assert!(text.contains(&v6), "{text}");

    // Hairpin over IPv6, echo, and a closed port.
    let hairpin = ask(&backends[0], &v6, 10, None);
    assert!(hairpin.iter().all(|n| n != "-"), "{hairpin:?}");
    let ping = client.exec(&["ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", &v6]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let closed = client.exec_ok(&[
        "python3",
        "-c",
        &format!(
            "import socket\ns=socket.socket(socket.AF_INET6)\ns.settimeout(3)\ntry:\n    s.connect(('{v6}', 81))\n    print('open')\nexcept ConnectionRefusedError:\n    print('refused')\nexcept OSError as e:\n    print(e)\n"
        ),
    ]);
    assert_eq!(closed.trim(), "refused", "a port it does not serve");

    // A dead backend fails its IPv6 (and IPv4) checks and gets no new connections.
    let (sick, sick4, sick6) = addresses[0].clone();
    let _ = servers[0].kill();
    let _ = servers[0].wait();
    wait_until(
        "the killed server's IPv6 backend to be marked unhealthy",
        Duration::from_secs(20),
        || (backend_state(&daemon, "web6", &sick, &sick6) == "Unhealthy").then_some(()),
    );
    wait_until(
        "the killed server's IPv4 backend to be marked unhealthy",
        Duration::from_secs(20),
        || (backend_state(&daemon, "web6", &sick, &sick4) == "Unhealthy").then_some(()),
    );
    let names = ask(&client, &v6, 30, None);
    assert!(
        !names.contains(&sick) && !names.contains(&"-".to_string()),
        "with {sick} unhealthy: {:?}",
        counts(&names)
    );
    servers[0] = start_server_dual(&backends[0], &sick);
    wait_until(
        "the restarted server's IPv6 backend to be healthy",
        Duration::from_secs(20),
        || (backend_state(&daemon, "web6", &sick, &sick6) == "Healthy").then_some(()),
    );
    let names = ask(&client, &v6, 40, None);
    assert!(names.contains(&sick), "{:?}", counts(&names));
    let stats = daemon.stats();
    assert!(
        stats["events"]["lb.probe_answers"].as_u64().unwrap_or(0) > 0,
        "{}",
        stats["events"]
    );

    // A Public IPv6 LoadBalancer: the Uplink's IPv6 address, reached from outside.
    daemon.apply_yaml(&format!(
        "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {{name: up}}\nspec:\n  interface: {}\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n  ipv6:\n    addresses: ['2001:db8:1::10/64']\n    gateway: '2001:db8:1::1'\n---\napiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {{name: pub6}}\nspec:\n  type: Public\n  ipFamilies: [IPv6]\n  network: default\n  networkInterfaceSelector: {{matchLabels: {{app: web6}}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
        outside.host_end
    ));
    let public = daemon.ctl_json(&["get", "loadbalancer", "pub6"]);
    assert_eq!(
        public["status"]["ips"],
        serde_json::json!(["2001:db8:1::10"]),
        "{public}"
    );
    let from_outside = counts(&ask(&outside.ns, "2001:db8:1::10", 40, None));
    eprintln!("from outside over IPv6: {from_outside:?}");
    assert!(!from_outside.contains_key("-"), "{from_outside:?}");
    for ns in &backends {
        assert!(from_outside.contains_key(&ns.name), "{from_outside:?}");
    }
    let shown = daemon.ctl_json(&["lb", "pub6"]);
    let outside_connections: u64 = shown["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["connections"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        outside_connections > 0,
        "connections from outside are counted: {shown}"
    );
    let from_inside = counts(&ask(&client, "2001:db8:1::10", 10, None));
    assert!(
        !from_inside.contains_key("-"),
        "{from_inside:?}\ndrops: {}\nevents: {}",
        daemon.stats()["drops"],
        daemon.stats()["events"]
    );
    drop(outside);
    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
}
