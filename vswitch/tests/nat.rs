//! End-to-end NAT: containers reach an "outside" namespace through the switch's uplink with
//! masquerade, port forwards and virtual IPs; the outside sees only the switch's addresses.
//!
//! Topology: a veth pair whose host end is the Uplink's interface (in the test's namespace,
//! like a node's NIC) and whose other end is in `out`, the outside world: 203.0.113.1/24 (the
//! uplink's gateway) and 203.0.113.2/24 (a second server). The switch owns 203.0.113.10 (NAT),
//! 203.0.113.20 (a virtual IP). TEST-NET-3 addresses, inside namespaces only.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::Command;

use common::{Daemon, Netns, Outside, TCP_WHOAMI, UDP_WHOAMI, iperf3_tcp, require, wait_listening};

/// Sends one datagram from `bind_port` to each `ip:port` and prints each answer on a line.
const UDP_ASK: &str = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\ns.bind(('0.0.0.0',int(sys.argv[1])))\nfor t in sys.argv[2:]:\n    h,p=t.split(':')\n    s.sendto(b'who',(h,int(p)))\n    print(s.recvfrom(2048)[0].decode())\n";

/// Connects to `ip:port` and prints what the server says.
const TCP_ASK: &str = "import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\nprint(s.recv(2048).decode())\n";

/// Connected UDP socket to a closed port: prints `refused` when the ICMP port unreachable
/// comes back (translated), `timeout` otherwise.
const UDP_REFUSED: &str = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\ns.connect((sys.argv[1],int(sys.argv[2])))\ns.send(b'x')\ntry:\n    s.recv(10)\n    print('answered')\nexcept ConnectionRefusedError:\n    print('refused')\nexcept socket.timeout:\n    print('timeout')\n";

fn uplink_and_gateway(outside: &Outside) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata:\n  name: up\nspec:\n  interface: {}\n  addresses: [203.0.113.10/24, 203.0.113.20/24]\n  gateway: 203.0.113.1\n---\napiVersion: vswitch/v1alpha1\nkind: NATGateway\nmetadata:\n  name: default\nspec:\n  network: default\n  ips: [203.0.113.10]\n",
        outside.host_end
    )
}

/// Masquerade: ping, UDP and TCP (iperf3) from two containers at once; the outside sees the NAT
/// address; one internal socket keeps one mapping toward two servers, with its port kept; ICMP
/// port unreachable comes back translated.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces, a veth uplink and TAP/veth ports"]
fn masquerade_to_the_outside() {
    require(&["ping", "iperf3", "python3"]);
    let mut outside = Outside::new(&["203.0.113.1/24", "203.0.113.2/24"]);
    outside.serve_here("udp", UDP_WHOAMI, "203.0.113.1", 9000);
    outside.serve_here("udp", UDP_WHOAMI, "203.0.113.2", 9000);
    let daemon = Daemon::start(2);
    daemon.apply_yaml(&uplink_and_gateway(&outside));
    let c1 = Netns::new("na");
    let c2 = Netns::new("nb");
    daemon.attach(&c1, &[]);
    daemon.attach(&c2, &["--kind", "veth"]);

    c1.ping_ok("203.0.113.1", 3);
    c2.ping_ok("203.0.113.2", 3);

    // Endpoint-independent mapping and port preservation.
    let seen = c1.python(UDP_ASK, &["40000", "203.0.113.1:9000", "203.0.113.2:9000"]);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.len(), 2, "{seen}");
    assert_eq!(
        lines[0], "203.0.113.10:40000",
        "NAT address with the port kept: {seen}"
    );
    assert_eq!(
        lines[0], lines[1],
        "one internal socket, one mapping: {seen}"
    );
    // The second container's socket on the same port gets another external port.
    let other = c2.python(UDP_ASK, &["40000", "203.0.113.1:9000"]);
    assert!(
        other.starts_with("203.0.113.10:") && other != lines[0],
        "{other}"
    );

    // ICMP port unreachable from outside reaches the container, translated.
    assert_eq!(c1.python(UDP_REFUSED, &["203.0.113.1", "9999"]), "refused");

    // TCP from both containers at once.
    let h1 = std::thread::spawn({
        let c1_name = c1.name.clone();
        move || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &c1_name,
                    "ping",
                    "-c",
                    "20",
                    "-i",
                    "0.1",
                    "203.0.113.1",
                ])
                .output()
                .expect("ping")
        }
    });
    let gbps = iperf3_tcp(&outside.ns, &c2, "203.0.113.1", 3);
    eprintln!("masquerade iperf3: {gbps:.2} Gbit/s");
    assert!(h1.join().expect("ping thread").status.success());

    let table = daemon.ctl_ok(&["conntrack"]);
    assert!(table.contains("203.0.113.10"), "{table}");
    let count = daemon.ctl_ok(&["conntrack", "--count"]);
    assert!(count.trim().chars().any(|c| c.is_ascii_digit()), "{count}");
    let nat = daemon.ctl_ok(&["nat"]);
    assert!(nat.contains("203.0.113.10"), "{nat}");
    daemon.ctl_ok(&["conntrack", "--flush"]);
}

/// PortForward and VirtualIP from the outside in; a container reaches the node's own forwarded
/// port (hairpinning).
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces, a veth uplink and TAP/veth ports"]
fn port_forward_virtual_ip_and_hairpin() {
    require(&["ping", "python3"]);
    let outside = Outside::new(&["203.0.113.1/24", "203.0.113.2/24"]);
    let daemon = Daemon::start(2);
    let c1 = Netns::new("fa");
    let c2 = Netns::new("fb");
    let ip1 = daemon.attach(&c1, &[]);
    daemon.apply_yaml(&format!(
            "{}---\napiVersion: vswitch/v1alpha1\nkind: PortForward\nmetadata:\n  name: web\nspec:\n  ip: 203.0.113.10\n  protocol: tcp\n  port: 8080\n  target:\n    interface: {}\n    port: 80\n---\napiVersion: vswitch/v1alpha1\nkind: VirtualIP\nmetadata:\n  name: c2-public\nspec:\n  type: Public\n  ip: 203.0.113.20\n",
            uplink_and_gateway(&outside),
            c1.name
        ),
    );
    daemon.ctl_ok(&["attach", &c2.name, "--kind", "veth"]);
    // Reference the VIP from c2's interface.
    let nic = daemon.ctl_json(&["get", "networkinterface", &c2.name]);
    let mut nic = nic.clone();
    nic["spec"]["virtualIP"] = serde_json::json!("c2-public");
    if let Some(status) = nic.as_object_mut() {
        status.remove("status");
    }
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), nic.to_string()).expect("write");
    daemon.ctl_ok(&["apply", "-f", file.path().to_str().expect("utf8")]);

    // c1 serves on port 80; the outside reaches it on 203.0.113.10:8080.
    let mut server = c1.spawn(&["python3", "-c", TCP_WHOAMI, &ip1, "80"]);
    wait_listening(&c1.name, "tcp", &format!("{ip1}:80"), &mut server);
    let seen = outside.ns.python(TCP_ASK, &["203.0.113.10", "8080"]);
    assert!(
        seen.starts_with("203.0.113.1:"),
        "the container sees the outside client: {seen}"
    );

    // Hairpin: c2 reaches c1 through the node's forwarded port.
    let seen = c2.python(TCP_ASK, &["203.0.113.10", "8080"]);
    assert!(
        seen.starts_with("203.0.113."),
        "hairpinned connection answered: {seen}"
    );
    let _ = server.kill();
    let _ = server.wait();

    // The virtual IP reaches c2, and c2's own traffic leaves with it.
    outside.ns.ping_ok("203.0.113.20", 3);
    let mut outside = outside;
    outside.serve_here("udp", UDP_WHOAMI, "203.0.113.1", 9001);
    let seen = c2.python(UDP_ASK, &["41000", "203.0.113.1:9001"]);
    assert!(
        seen.starts_with("203.0.113.20:"),
        "c2 leaves with its virtual IP: {seen}"
    );
    let vip = daemon.ctl_json(&["get", "virtualip", "c2-public"]);
    assert_eq!(vip["status"]["ip"], "203.0.113.20", "{vip}");
}
