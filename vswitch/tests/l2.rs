//! End-to-end L2 switching: real namespaces attached through TAP and veth ports of a real
//! vswitchd, exercised with ping, iperf3 and raw frames.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::Duration;

use common::{Daemon, Netns, iperf3_tcp, require, send_raw_frames, wait_until};

/// tap<->veth, tap<->tap and veth<->veth: ping and iperf3 both ways, with the containers'
/// checksum and TSO offloads left on; the switch learns both MACs.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn tap_and_veth_ping_and_iperf3() {
    require(&["ping", "iperf3", "ethtool"]);
    let daemon = Daemon::start(2);
    let c1 = Netns::new("a");
    let c2 = Netns::new("b");
    let c3 = Netns::new("c");
    let c4 = Netns::new("d");
    let ip1 = daemon.attach(&c1, &[]);
    let ip2 = daemon.attach(&c2, &["--kind", "veth"]);
    let ip3 = daemon.attach(&c3, &["--kind", "tap"]);
    let ip4 = daemon.attach(&c4, &["--kind", "veth"]);
    assert!(
        ip1.starts_with("172.30."),
        "default subnet address expected, got {ip1}"
    );

    // Offloads stay on inside the containers: the switch completes checksums itself.
    let features = c1.exec_ok(&["ethtool", "-k", "eth0"]);
    assert!(
        features.contains("tx-checksumming: on"),
        "tx checksumming should stay on in the container:\n{features}"
    );

    c1.ping_ok(&ip2, 3);
    c2.ping_ok(&ip1, 3);
    c1.ping_ok(&ip3, 3);
    c2.ping_ok(&ip4, 3);

    let tap_to_veth = iperf3_tcp(&c2, &c1, &ip2, 3);
    let veth_to_tap = iperf3_tcp(&c1, &c2, &ip1, 3);
    let tap_to_tap = iperf3_tcp(&c3, &c1, &ip3, 3);
    eprintln!(
        "iperf3 Gbit/s: tap->veth {tap_to_veth:.2}, veth->tap {veth_to_tap:.2}, tap->tap {tap_to_tap:.2}"
    );

    // The table and JSON views of the interfaces.
    let table = daemon.ctl_ok(&["get", "networkinterfaces"]);
    for header in ["NAME", "NETNS", "KIND", "IFNAME", "MAC", "IPS", "STATE"] {
        assert!(table.contains(header), "missing column {header}:\n{table}");
    }
    assert!(table.contains(&c1.name) && table.contains("veth") && table.contains("tap"));
    let list = daemon.ctl_json(&["get", "networkinterfaces"]);
    let items = list.as_array().expect("a JSON list of interfaces");
    assert_eq!(items.len(), 4, "four interfaces expected: {list}");
    let nic = &items
        .iter()
        .find(|i| i["metadata"]["name"] == c2.name.as_str())
        .expect("c2")["status"];
    assert!(
        nic["mac"].as_str().is_some_and(|m| m.len() == 17),
        "status.mac: {nic}"
    );

    // Learned MACs per subnet and port.
    let fdb = daemon.ctl_ok(&["fdb"]);
    let mac1 = daemon.ctl_json(&["get", "networkinterface", &c1.name])["status"]["mac"]
        .as_str()
        .expect("mac")
        .to_string();
    assert!(
        fdb.contains(&mac1),
        "fdb should list c1's MAC {mac1}:\n{fdb}"
    );
    assert!(fdb.contains("default"), "fdb rows name the subnet:\n{fdb}");
    // Counted without listing: as many as listed, none behind a remote VTEP.
    let listed = daemon.ctl_json(&["fdb"]).as_array().map_or(0, Vec::len);
    assert!(listed >= 2, "{fdb}");
    let counts = daemon.ctl_json(&["fdb", "--count"]);
    assert_eq!(counts["count"].as_u64(), Some(listed as u64), "{counts}");
    assert_eq!(counts["remote"], 0, "{counts}");

    let stats = daemon.ctl_ok(&["stats"]);
    assert!(
        stats.contains(&c1.name),
        "stats lists ports by name:\n{stats}"
    );
    assert!(daemon.port_counter(&c1.name, "rxPackets") > 0);
    assert!(daemon.port_counter(&c2.name, "txPackets") > 0);
}

/// Broadcast and unknown unicast flood within their subnet only.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn flooding_stays_inside_the_subnet() {
    require(&["ping"]);
    let daemon = Daemon::start(2);
    let spec = "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: other\nspec:\n  network: default\n  cidr: 10.77.0.0/24\n  gateway: 10.77.0.1\n";
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), spec).expect("write");
    daemon.ctl_ok(&["apply", "-f", file.path().to_str().expect("utf8")]);

    let c1 = Netns::new("fa");
    let c2 = Netns::new("fb");
    let c3 = Netns::new("fc");
    daemon.attach(&c1, &[]);
    daemon.attach(&c2, &["--kind", "veth"]);
    let ip3 = daemon.attach(&c3, &["--subnet", "other"]);
    assert!(
        ip3.starts_with("10.77.0."),
        "subnet other's address expected, got {ip3}"
    );

    let before_c2 = daemon.port_counter(&c2.name, "txPackets");
    // ARP requests for an absent host: broadcast, flooded to c2 only.
    let _ = c1.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "172.30.9.9"]);
    wait_until(
        &format!("c2 to receive the 3 flooded ARP requests (tx_packets was {before_c2})"),
        Duration::from_secs(5),
        || {
            let after_c2 = daemon.port_counter(&c2.name, "txPackets");
            (after_c2 >= before_c2 + 3).then_some(after_c2)
        },
    );
    assert_eq!(
        daemon.port_counter(&c3.name, "txPackets"),
        0,
        "nothing from subnet default may reach subnet other"
    );
}

/// A port may send only from its own MAC and addresses.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn port_security_drops_spoofed_frames() {
    require(&["ping"]);
    let daemon = Daemon::start(2);
    let c1 = Netns::new("sa");
    let c2 = Netns::new("sb");
    daemon.attach(&c1, &[]);
    let ip2 = daemon.attach(&c2, &["--kind", "veth"]);
    c1.ping_ok(&ip2, 1);

    // A source address that is not the port's.
    c1.exec_ok(&["ip", "addr", "add", "172.30.200.200/16", "dev", "eth0"]);
    let spoofed = c1.exec(&["ping", "-c", "2", "-W", "1", "-I", "172.30.200.200", &ip2]);
    assert!(
        !spoofed.status.success(),
        "ping from a spoofed address must fail"
    );
    c1.exec_ok(&["ip", "addr", "del", "172.30.200.200/16", "dev", "eth0"]);

    // A MAC that is not the port's.
    let mac = daemon.ctl_json(&["get", "networkinterface", &c1.name])["status"]["mac"]
        .as_str()
        .expect("mac")
        .to_string();
    c1.exec_ok(&["ip", "link", "set", "eth0", "address", "02:00:00:00:99:99"]);
    c1.exec_ok(&["ip", "neigh", "flush", "all"]);
    let spoofed = c1.exec(&["ping", "-c", "2", "-W", "1", &ip2]);
    assert!(
        !spoofed.status.success(),
        "ping from a spoofed MAC must fail"
    );
    c1.exec_ok(&["ip", "link", "set", "eth0", "address", &mac]);
    c1.exec_ok(&["ip", "neigh", "flush", "all"]);
    c1.ping_ok(&ip2, 1);

    let stats = daemon.stats();
    let drops = &stats["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == c1.name.as_str())
        .expect("c1 in stats")["drops"];
    let count = |prefix: &str| -> u64 {
        drops
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        count("port_security.") >= 2,
        "spoofed frames must be counted under port_security.*: {drops}"
    );
    let text = daemon.ctl_ok(&["stats"]);
    assert!(
        text.contains("port_security."),
        "stats prints drop reasons:\n{text}"
    );
}

/// Garbage from a container is counted and dropped; the workers keep forwarding.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
fn garbage_frames_are_counted_and_dropped() {
    require(&["ping", "python3"]);
    let daemon = Daemon::start(2);
    let c1 = Netns::new("ga");
    let c2 = Netns::new("gb");
    daemon.attach(&c1, &[]);
    let ip2 = daemon.attach(&c2, &["--kind", "veth"]);
    let mac = daemon.ctl_json(&["get", "networkinterface", &c1.name])["status"]["mac"]
        .as_str()
        .expect("mac")
        .replace(':', "");
    // An Ethernet header announcing IPv4 and nothing after it. (A frame shorter than the
    // Ethernet header cannot leave a container: its kernel refuses to send it.)
    let header_only = format!("ffffffffffff{mac}0800");
    // IPv4 with IHL 2 (below the minimum of 5).
    let bad_ihl = format!("ffffffffffff{mac}0800420000140000000040010000ac1e0002ac1e0003");
    // ARP cut after 10 bytes of its 28.
    let short_arp = format!("ffffffffffff{mac}08060001080006040001");
    // IPv4 whose total length exceeds the frame.
    let bad_len = format!("ffffffffffff{mac}08004500ffff0000000040010000ac1e0002ac1e0003");
    let noise = "5a".repeat(90);
    for _ in 0..3 {
        send_raw_frames(
            &c1,
            "eth0",
            &[&header_only, &bad_ihl, &short_arp, &bad_len, &noise],
        );
    }
    c1.ping_ok(&ip2, 2);
    let stats = daemon.stats();
    let total: u64 = stats["drops"]
        .as_object()
        .expect("drops by reason")
        .iter()
        .filter(|(k, _)| k.starts_with("parse.") || k.starts_with("port_security."))
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum();
    assert!(
        total >= 15,
        "15 bad frames must be counted as drops: {}",
        stats["drops"]
    );
}
