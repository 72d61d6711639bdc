//! NetworkPolicy end to end, as Kubernetes' e2e suite checks it (test/e2e/network/netpol):
//! three namespaces x, y, z with pods a, b, c each (NetworkInterfaces with `pod=<name>`
//! labels, namespaces labelled `ns=<name>`), a TCP and a UDP server on ports 80 and 81 in
//! every pod, and for each case the full truth table of which pod reaches which, probed
//! with real connections through the real daemon.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use common::{Daemon, Netns, require, tail};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// A pod: its namespace and name, its network namespace, address and server.
struct Pod {
    ns: &'static str,
    name: &'static str,
    netns: Netns,
    ip: String,
    server: Child,
}

impl Pod {
    fn id(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// TCP servers on 80 and 81 (accept, close) and UDP echo servers on 80 and 81.
const SERVER: &str = r#"
import socket, threading
def tcp(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(256)
    while True:
        c, _ = s.accept()
        c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
for port in (80, 81):
    threading.Thread(target=tcp, args=(port,), daemon=True).start()
    threading.Thread(target=udp, args=(port,), daemon=True).start()
threading.Event().wait()
"#;

/// Probes every target at once: TCP connects, or a UDP datagram that must come back
/// (twice, one second each). Prints `name 1|0` per target.
fn probe_script(targets: &[(String, String)], port: u16, proto: &str) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|(ip, name)| format!("({ip:?}, {name:?})"))
        .collect();
    format!(
        r#"
import socket, threading
targets = [{targets}]
port, proto = {port}, "{proto}"
result = {{}}
def probe(ip, name):
    ok = False
    if proto == "tcp":
        try:
            c = socket.create_connection((ip, port), timeout=2)
            c.close()
            ok = True
        except OSError:
            pass
    else:
        for attempt in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            try:
                s.sendto(b"ping", (ip, port))
                data, _ = s.recvfrom(64)
                ok = data == b"ping"
            except OSError:
                pass
            s.close()
            if ok:
                break
    result[name] = ok
threads = [threading.Thread(target=probe, args=t) for t in targets]
for t in threads: t.start()
for t in threads: t.join()
for name in sorted(result):
    print(name, 1 if result[name] else 0)
"#,
        targets = list.join(", ")
    )
}

/// The nine pods behind one daemon.
struct Cluster {
    pods: Vec<Pod>,
    daemon: Daemon,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// One cluster at a time: every cluster names its interfaces `a`, `b`, `c`, and two daemons
/// attaching interfaces of the same name at once on one host would race for the same
/// temporary TAP name in the host's namespace.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cluster {
    fn new() -> Cluster {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        require(&["python3"]);
        let daemon = Daemon::start(2);
        let namespaces: Vec<String> = NAMESPACES
            .iter()
            .map(|ns| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"))
            .collect();
        daemon.apply_yaml(&namespaces.join("---\n"));
        let mut pods = Vec::new();
        for ns in NAMESPACES {
            for name in PODS {
                let netns = Netns::new(&format!("np{ns}{name}"));
                daemon.ctl_ok(&[
                    "attach",
                    &netns.name,
                    "--name",
                    name,
                    "-n",
                    ns,
                    "--label",
                    &format!("pod={name}"),
                    "--port",
                    "serve-80-tcp=80/TCP",
                    "--port",
                    "serve-81-tcp=81/TCP",
                    "--port",
                    "serve-80-udp=80/UDP",
                    "--port",
                    "serve-81-udp=81/UDP",
                ]);
                let nic = daemon.ctl_json(&["get", "nic", name, "-n", ns]);
                let ip = nic["status"]["ips"][0]
                    .as_str()
                    .and_then(|ip| ip.split('/').next())
                    .unwrap_or_else(|| panic!("{ns}/{name} has no address: {nic}"))
                    .to_string();
                let server = netns.spawn(&["python3", "-c", SERVER]);
                pods.push(Pod {
                    ns,
                    name,
                    netns,
                    ip,
                    server,
                });
            }
        }
        for pod in &mut pods {
            for port in ["0.0.0.0:80", "0.0.0.0:81"] {
                common::wait_listening(&pod.netns.name, "tcp", port, &mut pod.server);
                common::wait_listening(&pod.netns.name, "udp", port, &mut pod.server);
            }
        }
        Cluster {
            pods,
            daemon,
            _serial: serial,
        }
    }

    fn pod(&self, id: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id}"))
    }

    /// Which pod reaches which (self excluded) on `port`/`proto`, probed.
    fn probe(&self, port: u16, proto: &str) -> BTreeMap<(String, String), bool> {
        let mut running = Vec::new();
        for from in &self.pods {
            let targets: Vec<(String, String)> = self
                .pods
                .iter()
                .filter(|to| to.id() != from.id())
                .map(|to| (to.ip.clone(), to.id()))
                .collect();
            let child = from
                .netns
                .spawn(&["python3", "-c", &probe_script(&targets, port, proto)]);
            running.push((from.id(), child));
        }
        let mut table = BTreeMap::new();
        for (from, child) in running {
            let output = child.wait_with_output().expect("probe");
            let text = String::from_utf8_lossy(&output.stdout);
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                if let (Some(to), Some(ok)) = (parts.next(), parts.next()) {
                    table.insert((from.clone(), to.to_string()), ok == "1");
                }
            }
        }
        assert_eq!(table.len(), 72, "every probe answers: {table:?}");
        table
    }

    /// Asserts the truth table of `case` on `port`/`proto`: `expect(from, to)` for every
    /// ordered pair of distinct pods (`"x/a"` style ids). On a mismatch, prints both tables
    /// the way the e2e suite does.
    fn check(&self, case: &str, port: u16, proto: &str, expect: impl Fn(&str, &str) -> bool) {
        let got = self.probe(port, proto);
        let ids: Vec<String> = self.pods.iter().map(Pod::id).collect();
        let mut wrong = Vec::new();
        let mut grid =
            format!("{case} ({port}/{proto}); rows from, columns to; . = self, X = wrong\n     ");
        for to in &ids {
            grid.push_str(&format!("{to:>5}"));
        }
        grid.push('\n');
        for from in &ids {
            grid.push_str(&format!("{from:>5}"));
            for to in &ids {
                if from == to {
                    grid.push_str("    .");
                    continue;
                }
                let want = expect(from, to);
                let have = got[&(from.clone(), to.clone())];
                let mark = match (want, have) {
                    (true, true) => "    1",
                    (false, false) => "    0",
                    _ => "    X",
                };
                if want != have {
                    wrong.push(format!("{from} -> {to}: want {want}, got {have}"));
                }
                grid.push_str(mark);
            }
            grid.push('\n');
        }
        eprintln!("{grid}");
        assert!(
            wrong.is_empty(),
            "{case}: {} wrong:\n{}\n{grid}\ndaemon log:\n{}",
            wrong.len(),
            wrong.join("\n"),
            tail(&self.daemon.log_text(), 30)
        );
    }

    fn apply(&self, yaml: &str) {
        self.daemon.apply_yaml(yaml);
    }

    fn delete(&self, ns: &str, name: &str) {
        self.daemon
            .ctl_ok(&["delete", "networkpolicy", name, "-n", ns]);
    }
}

/// A Kubernetes NetworkPolicy in `ns` with this spec (YAML, indented two spaces).
fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

fn ns_of(id: &str) -> &str {
    id.split('/').next().unwrap_or_default()
}

fn pod_of(id: &str) -> &str {
    id.split('/').nth(1).unwrap_or_default()
}

/// The ingress cases: default deny, pod and namespace selectors alone, together (AND) and
/// as separate peers (OR), ipBlock with except, ports, endPort, named ports, UDP.
#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn kubernetes_ingress_truth_tables() {
    let cluster = Cluster::new();
    cluster.check("no policies", 80, "tcp", |_, _| true);

    // Default deny ingress in x: nothing reaches a pod of x, everything else flows.
    cluster.apply(&policy(
        "x",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    ));
    cluster.check("default deny ingress in x", 80, "tcp", |_, to| {
        ns_of(to) != "x"
    });
    cluster.check("default deny ingress in x", 81, "udp", |_, to| {
        ns_of(to) != "x"
    });
    let explained = cluster.daemon.ctl_ok(&[
        "policy", "explain", "--from", "y/b", "--to", "x/a", "--port", "80/TCP",
    ]);
    assert!(explained.contains("denied"), "{explained}");
    assert!(explained.contains("x/deny-all"), "{explained}");
    // Allow all ingress beside it: policies add up, so everything flows again.
    cluster.apply(&policy(
        "x",
        "allow-all",
        "  podSelector: {}\n  ingress:\n  - {}\n",
    ));
    cluster.check("allow all beside deny all", 80, "tcp", |_, _| true);
    cluster.delete("x", "allow-all");
    cluster.delete("x", "deny-all");
    cluster.check("deny-all deleted", 80, "tcp", |_, _| true);

    // podSelector alone: x/a accepts only pods b of its own namespace.
    cluster.apply(&policy(
        "x",
        "a-from-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n",
    ));
    cluster.check("pod selector", 80, "tcp", |from, to| {
        to != "x/a" || from == "x/b"
    });
    // Policy update: now from namespace y (namespaceSelector alone).
    cluster.apply(&policy(
        "x",
        "a-from-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n",
    ));
    cluster.check("namespace selector (update)", 80, "tcp", |from, to| {
        to != "x/a" || ns_of(from) == "y"
    });
    // Both in one peer: pods b of namespace y only (AND).
    cluster.apply(&policy(
        "x",
        "a-from-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n",
    ));
    cluster.check("namespace AND pod selector", 80, "tcp", |from, to| {
        to != "x/a" || from == "y/b"
    });
    // Separate peers: namespace y, or pods b of x (OR).
    cluster.apply(&policy(
        "x",
        "a-from-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: b}}\n",
    ));
    cluster.check("namespace OR pod selector", 80, "tcp", |from, to| {
        to != "x/a" || ns_of(from) == "y" || from == "x/b"
    });
    cluster.delete("x", "a-from-b");

    // ipBlock with except: everything but y/c.
    let except = format!("{}/32", cluster.pod("y/c").ip);
    cluster.apply(&policy(
        "x",
        "a-cidr",
        &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from:\n    - ipBlock: {{cidr: 172.30.0.0/16, except: [{except}]}}\n"),
    ));
    cluster.check("ipBlock with except", 80, "tcp", |from, to| {
        to != "x/a" || from != "y/c"
    });
    cluster.delete("x", "a-cidr");

    // Ports: only 81 is open on x/a, from anywhere; 80 is closed.
    cluster.apply(&policy(
        "x",
        "a-81",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81}]\n",
    ));
    cluster.check("port 81 only (80)", 80, "tcp", |_, to| to != "x/a");
    cluster.check("port 81 only (81)", 81, "tcp", |_, _| true);
    // TCP only: UDP 81 is closed too.
    cluster.check("port 81 TCP only (UDP)", 81, "udp", |_, to| to != "x/a");
    // endPort: 80 to 81 open.
    cluster.apply(&policy(
        "x",
        "a-81",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: TCP, port: 80, endPort: 81}]\n",
    ));
    cluster.check("endPort 80-81", 80, "tcp", |_, _| true);
    // Named port: serve-81-udp, UDP only.
    cluster.apply(&policy(
        "x",
        "a-81",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: UDP, port: serve-81-udp}]\n",
    ));
    cluster.check("named port serve-81-udp (UDP 81)", 81, "udp", |_, _| true);
    cluster.check("named port serve-81-udp (UDP 80)", 80, "udp", |_, to| {
        to != "x/a"
    });
    cluster.check("named port serve-81-udp (TCP 81)", 81, "tcp", |_, to| {
        to != "x/a"
    });

    // What the switch counted.
    let shown = cluster
        .daemon
        .ctl_json(&["get", "networkpolicy", "a-81", "-n", "x"]);
    assert_eq!(shown["status"]["selected"][0], "x/a", "{shown}");
    assert!(
        shown["status"]["counters"]["ingressAllowed"].as_u64() > Some(0),
        "{shown}"
    );
    let stats = cluster.daemon.stats().to_string();
    assert!(stats.contains("policy.ingress_denied"), "{stats}");
}

/// Egress, both directions together, statefulness (replies of allowed connections always
/// pass), and label changes on pods and namespaces.
#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn kubernetes_egress_and_label_truth_tables() {
    let cluster = Cluster::new();

    // Default deny egress for x/a: it opens nothing, but everyone still reaches it (the
    // replies are allowed), over TCP and UDP.
    cluster.apply(&policy(
        "x",
        "a-no-egress",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n",
    ));
    cluster.check("deny egress from x/a", 80, "tcp", |from, _| from != "x/a");
    cluster.check("deny egress from x/a", 80, "udp", |from, _| from != "x/a");

    // Egress only to namespace y.
    cluster.apply(&policy(
        "x",
        "a-no-egress",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: y}}\n",
    ));
    cluster.check("egress to y only", 80, "tcp", |from, to| {
        from != "x/a" || ns_of(to) == "y"
    });

    // Ingress and egress together: x/a takes only from z and sends only to y.
    cluster.apply(&policy(
        "x",
        "a-in-z",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: z}}\n",
    ));
    cluster.check("ingress from z, egress to y", 80, "tcp", |from, to| {
        (from != "x/a" || ns_of(to) == "y") && (to != "x/a" || ns_of(from) == "z")
    });
    cluster.delete("x", "a-no-egress");
    cluster.delete("x", "a-in-z");

    // Ingress to pods b anywhere from pods labelled pod=c in namespace z.
    cluster.apply(&policy(
        "y",
        "b-from-zc",
        "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: z}}\n      podSelector: {matchLabels: {pod: c}}\n",
    ));
    cluster.check("y/b from z/c", 80, "tcp", |from, to| {
        to != "y/b" || from == "z/c"
    });
    // Relabel the pod: z/a becomes pod=c and gets in; z/c becomes pod=x and is out.
    cluster
        .daemon
        .ctl_ok(&["label", "nic", "a", "-n", "z", "pod=c"]);
    cluster
        .daemon
        .ctl_ok(&["label", "nic", "c", "-n", "z", "pod=x"]);
    cluster.check("after pod relabel", 80, "tcp", |from, to| {
        to != "y/b" || from == "z/a"
    });
    // Relabel the namespace: x takes over ns=z (and z loses it).
    cluster
        .daemon
        .ctl_ok(&["label", "namespace", "z", "ns=old"]);
    cluster.daemon.ctl_ok(&["label", "namespace", "x", "ns=z"]);
    cluster.check("after namespace relabel", 80, "tcp", |from, to| {
        to != "y/b" || (ns_of(from) == "x" && pod_of(from) == "c")
    });
    cluster.delete("y", "b-from-zc");
    cluster.check("all deleted", 80, "tcp", |_, _| true);
}

/// Established connections continue when a policy isolates their ends afterwards; new ones
/// are judged.
#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn established_connections_survive_a_new_policy() {
    let cluster = Cluster::new();
    let server = cluster.pod("x/a");
    let client = cluster.pod("y/a");
    // A long-lived connection from y/a to x/a:81, one echo line per second.
    let script = format!(
        r#"
import socket, sys, time
c = socket.create_connection(("{ip}", 9000), timeout=3)
for i in range(6):
    c.sendall(b"x\n")
    if c.recv(8) != b"x\n":
        sys.exit(1)
    time.sleep(0.5)
print("held")
"#,
        ip = server.ip
    );
    let echo = server.netns.spawn(&[
        "python3",
        "-c",
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',9000))\ns.listen(8)\nc,_=s.accept()\nwhile True:\n    d=c.recv(8)\n    if not d: break\n    c.sendall(d)\n",
    ]);
    let mut echo = echo;
    common::wait_listening(&server.netns.name, "tcp", "0.0.0.0:9000", &mut echo);
    let holder = client.netns.spawn(&["python3", "-c", &script]);
    std::thread::sleep(Duration::from_millis(700));
    cluster.apply(&policy(
        "x",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    ));
    let output = holder.wait_with_output().expect("holder");
    let _ = echo.kill();
    let _ = echo.wait();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("held"),
        "the established connection broke when the policy came: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.check("new connections are judged", 80, "tcp", |_, to| {
        ns_of(to) != "x"
    });
}

/// Connects to `argv[1]:argv[2]`; prints `ok` or `failed`.
const CONNECT: &str = "import socket,sys\ntry:\n    socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2).close()\n    print('ok')\nexcept OSError:\n    print('failed')\n";

/// Policies see LoadBalancer traffic after the backend is chosen: the backend's ingress
/// rules and its target port apply, not the service port.
#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn policies_judge_load_balanced_connections_at_the_backend() {
    let cluster = Cluster::new();
    cluster.apply(
        "apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {name: web, namespace: x}\nspec:\n  type: Internal\n  network: default\n  networkInterfaceSelector: {matchLabels: {pod: a}}\n  ports: [{port: 80, targetPort: 81}]\n",
    );
    let lb = cluster
        .daemon
        .ctl_json(&["get", "loadbalancer", "web", "-n", "x"]);
    let vip = lb["status"]["ips"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {lb}"))
        .to_string();
    // Only x/a is selected (a LoadBalancer selects in its own namespace).
    let routing = cluster
        .daemon
        .ctl_json(&["get", "loadbalancerrouting", "web", "-n", "x"]);
    let destinations = routing["status"]["destinations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(destinations.len(), 1, "{routing}");
    let connect = |from: &str| {
        cluster
            .pod(from)
            .netns
            .exec_ok(&["python3", "-c", CONNECT, &vip, "80"])
            .trim()
            .to_string()
    };
    common::wait_until("the LoadBalancer to serve", Duration::from_secs(10), || {
        (connect("z/b") == "ok").then_some(())
    });

    // x/a takes port 81 from namespace y only: through the LoadBalancer's port 80.
    cluster.apply(&policy(
        "x",
        "a-81-from-y",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    ports: [{port: 81}]\n",
    ));
    assert_eq!(connect("y/b"), "ok");
    assert_eq!(connect("z/b"), "failed");
    // The service port is not the backend's: allowing 80 lets nothing through to 81.
    cluster.apply(&policy(
        "x",
        "a-81-from-y",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    ports: [{port: 80}]\n",
    ));
    assert_eq!(connect("y/b"), "failed");
}
