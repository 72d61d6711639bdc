//! The Subnet's DNS and the switch's DHCP server, end to end: busybox's `udhcpc` in a
//! namespace attached with `--ip dhcp` gets its address, route, MTU, DNS and classless routes
//! from the datapath and renews; malformed and oversized client messages are counted and
//! dropped; a namespace attached statically gets `/etc/netns/NAME/resolv.conf`.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::Duration;

use common::{Daemon, Netns, require, wait_until};

/// A Network and Subnet `dh` (10.77.0.0/24, MTU 1400) with DNS and a DHCP server (10 s
/// leases, so the client renews within the test).
const SUBNET: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: dh}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: dh}
spec:
  network: dh
  cidr: 10.77.0.0/24
  gateway: 10.77.0.1
  mtu: 1400
  dns:
    nameservers: [10.77.0.53]
    search: [svc.example, example]
    options: ['ndots:2']
  dhcp:
    leaseSeconds: 10
    routes: [{destination: 10.200.0.0/16, via: 10.77.0.254}]
";

/// The udhcpc script: configures the interface as a distribution's default script does, then
/// appends the event with its variables to `log` in one write (a block is built aside first),
/// so a reader that sees an event sees it whole and the interface already configured.
fn script(log: &str) -> String {
    format!(
        "#!/bin/sh\n\
         case \"$1\" in\n\
           bound|renew)\n\
             ip addr flush dev \"$interface\"\n\
             ip addr add \"$ip/$mask\" dev \"$interface\"\n\
             [ -n \"$mtu\" ] && ip link set dev \"$interface\" mtu \"$mtu\"\n\
             for r in $router; do ip route replace default via \"$r\" dev \"$interface\"; done\n\
             ;;\n\
         esac\n\
         {{ echo \"event=$1\"; env | grep -E '^(ip|mask|subnet|router|dns|domain|search|mtu|staticroutes|lease|serverid)=' | sort; echo end; }} > {log}.part\n\
         cat {log}.part >> {log}\n\
         exit 0\n"
    )
}

/// The value of `key` in the last complete `event` block of the script's log.
fn last(log: &str, event: &str, key: &str) -> Option<String> {
    let complete = &log[..log.rfind("end\n").map_or(0, |at| at + 4)];
    let block = complete
        .split("end\n")
        .filter(|b| b.contains(&format!("event={event}\n")))
        .last()?;
    block
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn udhcpc_gets_its_lease_options_and_renews() {
    require(&["busybox", "ip", "ping", "python3"]);
    let daemon = Daemon::start(2);
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), SUBNET).expect("write");
    daemon.ctl_ok(&["apply", "-f", file.path().to_str().expect("utf8")]);

    let client = Netns::new("dhc");
    let server = Netns::new("dhs");
    daemon.ctl_ok(&["attach", &client.name, "--subnet", "dh", "--ip", "dhcp"]);
    let leased = daemon.interface_ip(&client.name);
    let static_ip = daemon.attach(&server, &["--subnet", "dh"]);
    // The switch left the interface unaddressed for the client.
    let before = client.exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(before.trim().is_empty(), "eth0 has an address: {before}");

    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("events.log");
    let script_path = dir.path().join("udhcpc.sh");
    std::fs::write(&script_path, script(log.to_str().expect("utf8"))).expect("script");
    std::fs::set_permissions(
        &script_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mut udhcpc = client.spawn(&[
        "busybox",
        "udhcpc",
        "-f",
        "-i",
        "eth0",
        "-s",
        script_path.to_str().expect("utf8"),
        "-t",
        "5",
        "-T",
        "1",
        "-O",
        "staticroutes",
        "-O",
        "search",
        "-O",
        "mtu",
    ]);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("udhcpc bound", Duration::from_secs(15), || {
        last(&text(), "bound", "ip").map(|_| ())
    });
    let events = text();
    assert_eq!(
        last(&events, "bound", "ip").as_deref(),
        Some(leased.as_str()),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "mask").as_deref(),
        Some("24"),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "router").as_deref(),
        Some("10.77.0.1"),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "dns").as_deref().map(str::trim),
        Some("10.77.0.53"),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "mtu").as_deref(),
        Some("1400"),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "lease").as_deref(),
        Some("10"),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "serverid").as_deref(),
        Some("10.77.0.1"),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "domain").as_deref(),
        Some("svc.example"),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "search").as_deref().map(str::trim),
        Some("svc.example example"),
        "{events}"
    );
    assert_eq!(
        last(&events, "bound", "staticroutes")
            .as_deref()
            .map(str::trim),
        Some("10.200.0.0/16 10.77.0.254 0.0.0.0/0 10.77.0.1"),
        "{events}"
    );
    // Configured by its own client, the container reaches the gateway and its neighbour.
    let mtu = client.exec_ok(&["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1400");
    client.ping_ok("10.77.0.1", 2);
    client.ping_ok(&static_ip, 2);
    server.ping_ok(&leased, 2);

    // Renewal at T1 (5 s): acknowledged by the switch.
    wait_until("udhcpc renewed", Duration::from_secs(20), || {
        last(&text(), "renew", "ip").map(|_| ())
    });
    assert_eq!(
        last(&text(), "renew", "ip").as_deref(),
        Some(leased.as_str())
    );
    let stats = daemon.stats();
    let acks = stats["events"]["dhcp.acks"].as_u64().unwrap_or(0);
    assert!(acks >= 2, "dhcp.acks = {acks}: {stats}");
    assert!(
        stats["events"]["dhcp.offers"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
    let _ = udhcpc.kill();
    let _ = udhcpc.wait();

    // A malformed message and an oversized one (fragmented at the MTU) from the client's
    // port: counted under their reasons, nothing answered, the worker unharmed.
    let send = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{leased}', 68))\n\
         s.sendto(b'\\x01\\x01\\x06\\x00' + b'\\xff' * 20, ('10.77.0.1', 67))\n\
         s.sendto(b'\\x01' * 3000, ('10.77.0.1', 67))\n"
    );
    client.exec_ok(&["python3", "-c", &send]);
    wait_until(
        "malformed and oversized counted",
        Duration::from_secs(5),
        || {
            (daemon.port_drop(&client.name, "dhcp.malformed") >= 1
                && daemon.port_drop(&client.name, "dhcp.oversized") >= 1)
                .then_some(())
        },
    );
    client.ping_ok("10.77.0.1", 2);
}

#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn named_namespaces_get_the_subnets_resolv_conf() {
    require(&["ip"]);
    let daemon = Daemon::start(1);
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), SUBNET).expect("write");
    daemon.ctl_ok(&["apply", "-f", file.path().to_str().expect("utf8")]);
    let ns = Netns::new("dns");
    daemon.attach(&ns, &["--subnet", "dh"]);
    let path = format!("/etc/netns/{}/resolv.conf", ns.name);
    let written = std::fs::read_to_string(&path).expect("resolv.conf written");
    assert!(written.contains("nameserver 10.77.0.53\n"), "{written}");
    assert!(
        written.contains("search svc.example example\n"),
        "{written}"
    );
    assert!(written.contains("options ndots:2\n"), "{written}");
    // `ip netns exec` binds it over /etc/resolv.conf.
    let seen = ns.exec_ok(&["cat", "/etc/resolv.conf"]);
    assert_eq!(seen, written);
    daemon.ctl_ok(&["detach", &ns.name]);
    assert!(
        !std::path::Path::new(&path).exists(),
        "{path} left behind after detach"
    );
    assert!(!std::path::Path::new(&format!("/etc/netns/{}", ns.name)).exists());

    // A file the administrator wrote stays as it is.
    let own = Netns::new("dns");
    let dir = format!("/etc/netns/{}", own.name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(format!("{dir}/resolv.conf"), "nameserver 192.0.2.1\n").expect("write");
    daemon.attach(&own, &["--subnet", "dh"]);
    daemon.ctl_ok(&["detach", &own.name]);
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/resolv.conf")).expect("kept"),
        "nameserver 192.0.2.1\n"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
