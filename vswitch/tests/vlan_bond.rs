//! 802.1Q VLANs and bonded uplinks, with Open vSwitch (userspace datapath) as the peer: the
//! kernel here has no VLAN or bonding devices, so OVS is the other side, as a top-of-rack
//! switch would be.
//!
//! Topology: vswitchd runs in namespace `node`; its Uplink's members `m1`, `m2` are veth
//! pairs whose other ends `o1`, `o2` are ports (or a bond) of OVS's `br0` in namespace
//! `ovs`. Hosts `h10`, `h20` (and `h30`) hang off OVS access ports `tag=10`, `tag=20`
//! (`tag=30`); they are on the switch's Subnets `v10` (10.10.0.0/24, VLAN 10) and `v20`
//! (10.20.0.0/24, VLAN 20), whose gateways the switch owns. Containers `c10`, `c20` attach
//! to those Subnets through TAP ports. Pings only: OVS's userspace datapath does not
//! complete partial checksums, so TCP from a container would need its offloads off.
//! Needs root, iproute2, ping, python3 and Open vSwitch; `#[ignore]`d for a plain
//! `cargo test` (`scripts/test.sh` runs them).

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::{Duration, Instant};

use common::ovs::Ovs;
use common::{Daemon, Netns, require, send_raw_frames, wait_until};

/// The switch's configuration: Network `lan` with Subnets on VLANs 10 and 20, and the
/// Uplink over `members` (one interface, or a bond with `bond`, a flow mapping).
fn config(members: &[&str], bond: Option<&str>) -> String {
    let interfaces = match members {
        [one] => format!("interface: {one}"),
        many => format!("interfaces: [{}]", many.join(", ")),
    };
    let bond = bond.map(|b| format!("\n  bond: {b}")).unwrap_or_default();
    format!(
        "apiVersion: vswitch/v1alpha1
kind: Network
metadata: {{name: lan}}
spec: {{}}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {{name: v10}}
spec: {{network: lan, cidr: 10.10.0.0/24, gateway: 10.10.0.1, vlan: 10, rangeEnd: 10.10.0.50}}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {{name: v20}}
spec: {{network: lan, cidr: 10.20.0.0/24, gateway: 10.20.0.1, vlan: 20, rangeEnd: 10.20.0.50}}
---
apiVersion: vswitch/v1alpha1
kind: Uplink
metadata: {{name: up}}
spec:
  {interfaces}
  addresses: [203.0.113.10/24]
  gateway: 203.0.113.1{bond}
"
    )
}

/// The whole topology; everything goes on drop (namespaces take their veths along).
struct Topology {
    ovs: Ovs,
    node: Netns,
    hosts: Vec<Netns>,
    daemon: Daemon,
}

impl Topology {
    /// OVS with `links` member veths (`o1`.. in OVS, `m1`.. in the node), hosts on access
    /// ports of VLANs `vlans`, and vswitchd in the node (not configured yet).
    fn new(links: usize, vlans: &[u16]) -> Topology {
        require(&["ping", "python3"]);
        let ovs = Ovs::start();
        let node = Netns::new("nd");
        for i in 1..=links {
            ovs.link(&format!("o{i}"), &node.name, &format!("m{i}"));
        }
        let mut hosts = Vec::new();
        for vlan in vlans {
            let host = Netns::new(&format!("h{vlan}"));
            let port = format!("p{vlan}");
            ovs.link(&port, &host.name, "eth0");
            ovs.vsctl(&["add-port", "br0", &port, &format!("tag={vlan}")]);
            let third = vlan % 256;
            host.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("10.{third}.0.100/24"),
                "dev",
                "eth0",
            ]);
            host.exec_ok(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.{third}.0.1"),
            ]);
            hosts.push(host);
        }
        let daemon = Daemon::start_in(&node.name, 2, &[]);
        Topology {
            ovs,
            node,
            hosts,
            daemon,
        }
    }

    fn host(&self, vlan: u16) -> &Netns {
        let name = format!("h{vlan}");
        self.hosts
            .iter()
            .find(|h| h.name.ends_with(&name))
            .expect("a host on that VLAN")
    }

    /// The Uplink's status as JSON.
    fn uplink(&self) -> serde_json::Value {
        self.daemon.ctl_json(&["get", "uplink", "up"])
    }

    /// Waits until the bond's member `interface` reports `field` = `value`.
    fn wait_member(&self, interface: &str, field: &str, value: bool) {
        wait_until(
            &format!("bond member {interface} {field}={value}"),
            Duration::from_secs(15),
            || {
                let uplink = self.uplink();
                uplink["status"]["members"]
                    .as_array()?
                    .iter()
                    .any(|m| m["interface"] == interface && m[field] == value)
                    .then_some(())
            },
        );
    }
}

/// A fast ping of `count` echoes every 10 ms from `from` to `to`, during which `during` runs
/// (after 0.5 s); returns the echoes lost and the ping's output.
fn ping_through(from: &Netns, to: &str, count: u32, during: impl FnOnce()) -> (u32, String) {
    let count_text = count.to_string();
    let child = from.spawn(&["ping", "-i", "0.01", "-c", &count_text, "-W", "1", to]);
    std::thread::sleep(Duration::from_millis(500));
    during();
    let out = child.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received = text
        .split(", ")
        .find_map(|part| part.strip_suffix(" received"))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    (count.saturating_sub(received), text)
}

/// Subnets on VLANs of a trunk uplink: containers and hosts behind OVS access ports share
/// each VLAN's segment, the switch's gateways route between the VLANs, a container's MAC
/// appears on its own VLAN only in OVS, and a VLAN no Subnet is bound to is counted and
/// dropped.
#[test]
#[ignore = "needs root: starts vswitchd and Open vSwitch, creates namespaces and veths"]
fn subnets_on_vlans_of_a_trunk_to_open_vswitch() {
    let topology = Topology::new(1, &[10, 20, 30]);
    topology
        .ovs
        .vsctl(&["add-port", "br0", "o1", "trunks=10,20,30"]);
    topology.daemon.apply_yaml(&config(&["m1"], None));
    let c10 = Netns::new("c10");
    let c20 = Netns::new("c20");
    let ip10 = topology.daemon.attach(&c10, &["--subnet", "v10"]);
    // An access port of VLAN 20: the switch picks the Subnet bound to it.
    let ip20 = topology.daemon.attach(&c20, &["--vlan", "20"]);
    let nic = topology
        .daemon
        .ctl_json(&["get", "networkinterface", &c20.name]);
    assert_eq!(nic["spec"]["subnet"], "v20", "{nic}");
    let refused = topology
        .daemon
        .ctl_err(&["attach", &c20.name, "--name", "x", "--vlan", "99"]);
    assert!(
        refused.contains("spec.vlan") && refused.contains("no Subnet is bound to VLAN 99"),
        "{refused}"
    );

    // Same segment across the trunk, both ways.
    assert!(
        c10.ping_until("10.10.0.100", Duration::from_secs(15)),
        "the container on VLAN 10 cannot reach the host behind OVS's tag=10 port\n{}",
        topology.ovs.appctl(&["dpctl/dump-flows"])
    );
    topology.host(10).ping_ok(&ip10, 3);
    topology.host(20).ping_ok(&ip20, 3);
    // The switch owns each VLAN's gateway and routes between them.
    topology.host(10).ping_ok("10.10.0.1", 2);
    topology.host(10).ping_ok("10.20.0.100", 3);
    topology.host(20).ping_ok(&ip10, 2);

    // The trunk carries the right tags: OVS learned the container's MAC on VLAN 10 only.
    let fdb = topology.ovs.appctl(&["fdb/show", "br0"]);
    let mac10 = topology
        .daemon
        .ctl_json(&["get", "networkinterface", &c10.name])["status"]["mac"]
        .as_str()
        .expect("mac")
        .to_string();
    let line = fdb
        .lines()
        .find(|l| l.contains(&mac10))
        .unwrap_or_else(|| panic!("OVS never learned {mac10}:\n{fdb}"));
    assert!(
        line.split_whitespace().nth(1) == Some("10"),
        "{mac10} is not on VLAN 10 in OVS: {line}"
    );

    // VLAN 30 is on the trunk but no Subnet is bound to it: its ARP is counted and dropped.
    let before = topology.daemon.port_drop("up", "uplink.vlan_unknown");
    let _ = topology
        .host(30)
        .exec(&["ping", "-c", "2", "-W", "1", "10.30.0.1"]);
    wait_until("uplink.vlan_unknown drops", Duration::from_secs(5), || {
        (topology.daemon.port_drop("up", "uplink.vlan_unknown") > before).then_some(())
    });
    // The Uplink lists the VLANs it serves.
    let status = topology.uplink();
    assert_eq!(status["status"]["vlans"][0]["vlan"], 10, "{status}");
    assert_eq!(status["status"]["vlans"][1]["subnet"], "v20", "{status}");
}

/// Tagged frames the switch refuses, straight on a veth uplink (no OVS in between): an
/// 802.1ad outer tag, stacked tags and a VLAN no Subnet is bound to, each counted under its
/// reason; the same request on a VLAN that has a Subnet is answered there, tagged.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces and veths"]
fn qinq_and_unknown_vlans_are_counted_and_dropped() {
    require(&["python3"]);
    let node = Netns::new("nq");
    let wire = Netns::new("wq");
    common::run(
        "ip",
        &[
            "link", "add", "m1", "netns", &node.name, "type", "veth", "peer", "name", "eth0",
            "netns", &wire.name,
        ],
    );
    node.exec_ok(&["ip", "link", "set", "m1", "up"]);
    wire.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    let daemon = Daemon::start_in(&node.name, 1, &[]);
    daemon.apply_yaml(&config(&["m1"], None));
    // Broadcast ARP requests for 10.10.0.1: 88a8/10 (QinQ outer), 8100/99 (no Subnet),
    // 8100/10 + 8100/10 (stacked).
    let arp = concat!(
        "0806",
        "0001080006040001", // Ethernet, IPv4, request
        "02000000aa01",
        "0a0a0064", // 10.10.0.100
        "000000000000",
        "0a0a0001", // who has 10.10.0.1
    );
    let head = "ffffffffffff02000000aa01";
    let qinq = format!("{head}88a8000a{arp}");
    let unknown = format!("{head}81000063{arp}");
    let stacked = format!("{head}8100000a8100000a{arp}");
    send_raw_frames(&wire, "eth0", &[&qinq, &unknown, &stacked]);
    wait_until(
        "QinQ and unknown VLAN drops",
        Duration::from_secs(5),
        || {
            (daemon.port_drop("up", "uplink.vlan_qinq") >= 2
                && daemon.port_drop("up", "uplink.vlan_unknown") >= 1)
                .then_some(())
        },
    );
    // The same ARP on VLAN 10 is answered by the gateway, tagged alike.
    let answer = |tag: &str| -> String {
        let capture = wire.spawn(&["python3", "-c", TAG_OF_ARP_REPLY]);
        std::thread::sleep(Duration::from_millis(300));
        send_raw_frames(&wire, "eth0", &[&format!("{head}{tag}{arp}")]);
        let out = capture.wait_with_output().expect("capture");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        answer("8100000a"),
        "8100/10",
        "the VLAN 10 gateway's answer"
    );
    // An 802.1ad trunk: service tags are the VLANs, 802.1Q tags are refused.
    daemon.apply_yaml(&config(&["m1"], None).replace(
        "  gateway: 203.0.113.1",
        "  gateway: 203.0.113.1\n  vlanProtocol: 802.1ad",
    ));
    wait_until("the Uplink reopened", Duration::from_secs(10), || {
        (daemon.ctl_json(&["get", "uplink", "up"])["status"]["state"] == "Up").then_some(())
    });
    assert_eq!(answer("88a8000a"), "88a8/10", "an 802.1ad gateway's answer");
    let before = daemon.port_drop("up", "uplink.vlan_qinq");
    send_raw_frames(&wire, "eth0", &[&format!("{head}8100000a{arp}")]);
    wait_until(
        "an 802.1Q tag refused on an 802.1ad trunk",
        Duration::from_secs(5),
        || (daemon.port_drop("up", "uplink.vlan_qinq") > before).then_some(()),
    );
}

/// Prints the tag (`tpid/vid`, as the kernel reports it beside the frame) of the first ARP
/// reply arriving on `eth0`, or `untagged`, within 5 s.
const TAG_OF_ARP_REPLY: &str = r#"
import socket, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(('eth0', 0))
s.setsockopt(263, 8, 1)  # PACKET_AUXDATA
s.settimeout(5)
while True:
    d, anc, _, addr = s.recvmsg(2048, socket.CMSG_SPACE(64))
    if addr[2] == 4 or d[12:14] != b'\x08\x06' or d[20:22] != b'\x00\x02':
        continue
    tag = 'untagged'
    for level, kind, aux in anc:
        if level == 263 and kind == 8:
            status, _, _, _, _, tci, tpid = struct.unpack('IIIHHHH', aux[:20])
            if status & 0x10:
                tag = '%04x/%d' % (tpid if status & 0x40 else 0x8100, tci & 0xfff)
    print(tag)
    break
"#;

/// Builds the OVS bond `bond0` over `o1`, `o2` (a trunk of VLANs 10 and 20) with `options`.
fn ovs_bond(ovs: &Ovs, options: &[&str]) {
    let mut args = vec!["add-bond", "br0", "bond0", "o1", "o2", "trunks=10,20"];
    args.extend_from_slice(options);
    ovs.vsctl(&args);
}

/// Pulls member `m1`'s link during a fast ping across the bond and reports the echoes lost;
/// then brings it back and checks traffic still flows.
fn fail_over(topology: &Topology, target: &str, member: &str, mode: &str) -> u32 {
    let host = topology.host(10);
    let pulled = Instant::now();
    let (lost, text) = ping_through(host, target, 300, || {
        topology
            .node
            .exec_ok(&["ip", "link", "set", member, "down"]);
    });
    let window_ms = lost * 10;
    eprintln!(
        "{mode}: failover after pulling {member}: {lost} of 300 echoes lost at 10 ms intervals (about {window_ms} ms without traffic), {:?} overall",
        pulled.elapsed()
    );
    assert!(
        lost < 150,
        "{mode}: traffic did not come back after {member} went down:\n{text}"
    );
    topology.wait_member(member, "carrier", false);
    topology.node.exec_ok(&["ip", "link", "set", member, "up"]);
    topology.wait_member(member, "carrier", true);
    topology.wait_member(member, "carriesTraffic", true);
    host.ping_ok(target, 3);
    lost
}

/// Active-backup against an OVS active-backup bond: the primary carries traffic (OVS drops
/// what arrives on its backup), pulling it fails over with gratuitous ARPs and, for the
/// Uplink's IPv6 address and link-local address, unsolicited neighbour advertisements, and
/// the primary takes over again when it comes back.
#[test]
#[ignore = "needs root: starts vswitchd and Open vSwitch, creates namespaces and veths"]
fn active_backup_bond_fails_over_with_open_vswitch() {
    let topology = Topology::new(2, &[10]);
    ovs_bond(
        &topology.ovs,
        &[
            "bond_mode=active-backup",
            "lacp=off",
            "other_config:bond-primary=o1",
        ],
    );
    topology.daemon.apply_yaml(
        &config(&["m1", "m2"], Some("{mode: active-backup, primary: m1}")).replace(
            "  gateway: 203.0.113.1",
            "  gateway: 203.0.113.1\n  ipv6: {addresses: ['2001:db8:5::10/64'], gateway: 'fe80::1'}",
        ),
    );
    topology.wait_member("m1", "active", true);
    let c10 = Netns::new("c10");
    let ip10 = topology.daemon.attach(&c10, &["--subnet", "v10"]);
    assert!(
        topology.host(10).ping_until(&ip10, Duration::from_secs(15)),
        "no traffic over the active-backup bond\n{}",
        topology.ovs.appctl(&["bond/show", "bond0"])
    );
    let garps = |d: &Daemon| -> u64 {
        d.stats()["events"]["bond.gratuitous_arp_sent"]
            .as_u64()
            .unwrap_or(0)
    };
    let unsolicited_nas = |d: &Daemon| -> u64 {
        d.stats()["events"]["bond.unsolicited_na_sent"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = garps(&topology.daemon);
    let nas_before = unsolicited_nas(&topology.daemon);
    let tx = |name: &str| {
        topology
            .daemon
            .port_counter(&format!("up/{name}"), "txPackets")
    };
    let m2_before = tx("m2");
    fail_over(&topology, &ip10, "m1", "active-backup");
    assert!(
        tx("m2") > m2_before + 100,
        "the backup did not carry the echo replies while m1 was down"
    );
    assert!(
        garps(&topology.daemon) > before,
        "no gratuitous ARP on failover"
    );
    assert!(
        unsolicited_nas(&topology.daemon) >= nas_before + 2,
        "no unsolicited neighbour advertisements (address and link-local) on failover"
    );
    // Back on the primary.
    topology.wait_member("m1", "active", true);
    let table = topology.daemon.ctl_ok(&["get", "uplink"]);
    assert!(table.contains("m1+m2(active-backup)"), "{table}");
}

/// balance-xor against an OVS balance-slb bond that takes frames on every member: flows
/// spread over both members, and losing one moves only its flows.
#[test]
#[ignore = "needs root: starts vswitchd and Open vSwitch, creates namespaces and veths"]
fn balance_xor_bond_spreads_flows_and_survives_a_member() {
    let topology = Topology::new(2, &[10]);
    ovs_bond(
        &topology.ovs,
        &[
            "bond_mode=balance-slb",
            "lacp=off",
            "other_config:all-members-active=true",
        ],
    );
    topology
        .daemon
        .apply_yaml(&config(&["m1", "m2"], Some("{mode: balance-xor}")));
    topology.wait_member("m1", "carriesTraffic", true);
    topology.wait_member("m2", "carriesTraffic", true);
    let c = Netns::new("cx");
    let ip = topology.daemon.attach(&c, &["--subnet", "v10"]);
    assert!(
        c.ping_until("10.10.0.100", Duration::from_secs(15)),
        "no traffic over the balance-xor bond"
    );
    let tx = |name: &str| {
        topology
            .daemon
            .port_counter(&format!("up/{name}"), "txPackets")
    };
    let before = (tx("m1"), tx("m2"));
    // 64 UDP flows (source ports 40000..40063): each hashes to one member; that all take
    // the same one has a chance of 2^-63.
    c.python(
        "import socket\nfor p in range(40000, 40064):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.bind(('', p))\n    for _ in range(3):\n        s.sendto(b'x', ('10.10.0.100', 9))\n    s.close()\n",
        &[],
    );
    let after = (tx("m1"), tx("m2"));
    assert!(
        after.0 >= before.0 + 3 && after.1 >= before.1 + 3,
        "flows did not spread over both members: {before:?} -> {after:?} (m1, m2)"
    );
    fail_over(&topology, &ip, "m1", "balance-xor");
}

/// 802.3ad against an OVS balance-tcp bond with LACP: both sides negotiate (OVS says
/// `negotiated`, our members are `current` and aggregated), traffic flows, and a member
/// pulled leaves the aggregate without stopping traffic.
#[test]
#[ignore = "needs root: starts vswitchd and Open vSwitch, creates namespaces and veths"]
fn lacp_bond_negotiates_with_open_vswitch() {
    let topology = Topology::new(2, &[10]);
    ovs_bond(
        &topology.ovs,
        &[
            "bond_mode=balance-tcp",
            "lacp=active",
            "other_config:lacp-time=fast",
        ],
    );
    topology
        .daemon
        .apply_yaml(&config(&["m1", "m2"], Some("{mode: 802.3ad}")));
    topology.ovs.wait_for(
        &["bond/show", "bond0"],
        "lacp_status: negotiated",
        Duration::from_secs(15),
    );
    topology.wait_member("m1", "carriesTraffic", true);
    topology.wait_member("m2", "carriesTraffic", true);
    let uplink = topology.uplink();
    let member = &uplink["status"]["members"][0];
    assert_eq!(member["lacp"]["state"], "current", "{uplink}");
    assert!(
        member["lacp"]["partnerState"]
            .as_str()
            .is_some_and(|s| s.contains("synchronized") && s.contains("distributing")),
        "{uplink}"
    );
    let lacp = topology.ovs.appctl(&["lacp/show", "bond0"]);
    assert!(lacp.contains("current attached"), "{lacp}");
    let shown = topology.daemon.ctl_ok(&["uplink"]);
    assert!(
        shown.contains("802.3ad") && shown.contains("current,selected") && shown.contains("m2"),
        "{shown}"
    );
    eprintln!("{shown}");
    let c10 = Netns::new("c10");
    let ip10 = topology.daemon.attach(&c10, &["--subnet", "v10"]);
    assert!(
        topology.host(10).ping_until(&ip10, Duration::from_secs(15)),
        "no traffic over the LACP bond"
    );
    // The bond's capture holds what its members receive.
    let pcap = topology.daemon.state_dir.with_file_name("bond.pcap");
    let mut capture = std::process::Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
        .args(["--socket", topology.daemon.socket.to_str().expect("socket")])
        .args(["capture", "up", "--direction", "rx", "--count", "3", "-w"])
        .arg(&pcap)
        .args(["icmp"])
        .spawn()
        .expect("vswitchctl capture");
    std::thread::sleep(Duration::from_millis(500));
    topology.host(10).ping_ok(&ip10, 3);
    let status = wait_until("the capture of 3 frames", Duration::from_secs(10), || {
        capture.try_wait().ok().flatten()
    });
    assert!(status.success(), "capture failed");
    let bytes = std::fs::read(&pcap).expect("pcap");
    assert!(
        bytes.len() >= 24 + 3 * 16 + 3 * 98,
        "3 echo requests captured: {} bytes",
        bytes.len()
    );
    fail_over(&topology, &ip10, "m2", "802.3ad");
    topology.wait_member("m2", "carriesTraffic", true);
    let events = topology.daemon.stats()["events"].clone();
    assert!(
        events["bond.lacp_pdu_rx"].as_u64().unwrap_or(0) > 0
            && events["bond.lacp_pdu_tx"].as_u64().unwrap_or(0) > 0,
        "{events}"
    );
}

/// A bond whose partner does not speak LACP never carries traffic (OVS's behaviour without
/// `lacp-fallback-ab`): its members stay defaulted, what a container sends out is counted
/// (`tx.bond_down`).
#[test]
#[ignore = "needs root: starts vswitchd and Open vSwitch, creates namespaces and veths"]
fn lacp_without_a_partner_carries_nothing() {
    let topology = Topology::new(2, &[10]);
    ovs_bond(&topology.ovs, &["bond_mode=balance-slb", "lacp=off"]);
    topology
        .daemon
        .apply_yaml(&config(&["m1", "m2"], Some("{mode: 802.3ad}")));
    std::thread::sleep(Duration::from_secs(4));
    let uplink = topology.uplink();
    for member in uplink["status"]["members"].as_array().expect("members") {
        assert_eq!(member["carriesTraffic"], false, "{uplink}");
        assert_ne!(member["lacp"]["state"], "current", "{uplink}");
    }
    let c10 = Netns::new("c10");
    topology.daemon.attach(&c10, &["--subnet", "v10"]);
    let out = c10.exec(&["ping", "-c", "2", "-W", "1", "10.10.0.100"]);
    assert!(
        !out.status.success(),
        "traffic crossed a bond LACP never aggregated"
    );
    // The container's ARP for the host found no member to leave on (counted on the VLAN's
    // port), and what OVS floods into the members is not taken.
    assert!(topology.daemon.port_drop("up.10", "tx.bond_down") > 0);
}

/// Bad bonds and VLANs are refused whole, each wrong field named.
#[test]
#[ignore = "needs root: starts vswitchd"]
fn bad_bonds_and_vlans_are_refused_with_their_fields() {
    let daemon = Daemon::start(1);
    let bad = "apiVersion: vswitch/v1alpha1
kind: Uplink
metadata: {name: up}
spec:
  interfaces: [eth7, eth7]
  addresses: [203.0.113.10/24]
  gateway: 203.0.113.1
  bond: {mode: balance-xor, primary: eth9, lacp: {rate: fast}, arpMonitor: {intervalMs: 1, targets: []}}
";
    let path = daemon.state_dir.with_file_name("bad-bond.yaml");
    std::fs::write(&path, bad).expect("write");
    let text = daemon.ctl_err(&["apply", "-f", path.to_str().expect("path")]);
    for field in [
        "spec.interfaces[1]",
        "spec.bond.primary",
        "spec.bond.lacp",
        "spec.bond.arpMonitor.intervalMs",
        "spec.bond.arpMonitor.targets",
    ] {
        assert!(text.contains(field), "{field} not named:\n{text}");
    }
    let vlan = "apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: a}
spec: {network: default, cidr: 10.1.0.0/24, gateway: 10.1.0.1, vlan: 4095}
";
    std::fs::write(&path, vlan).expect("write");
    let text = daemon.ctl_err(&["apply", "-f", path.to_str().expect("path")]);
    assert!(
        text.contains("spec.vlan") && text.contains("4095"),
        "{text}"
    );
    let two = "apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: a}
spec: {network: default, cidr: 10.1.0.0/24, gateway: 10.1.0.1, vlan: 7}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: b}
spec: {network: default, cidr: 10.2.0.0/24, gateway: 10.2.0.1, vlan: 7}
";
    std::fs::write(&path, two).expect("write");
    let text = daemon.ctl_err(&["apply", "-f", path.to_str().expect("path")]);
    assert!(
        text.contains("spec.vlan") && text.contains("VLAN 7"),
        "{text}"
    );
    let both = "apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: a}
spec: {network: default, cidr: 10.1.0.0/24, gateway: 10.1.0.1, vlan: 7, vni: 70}
";
    std::fs::write(&path, both).expect("write");
    let text = daemon.ctl_err(&["apply", "-f", path.to_str().expect("path")]);
    assert!(
        text.contains("spec.vlan") && text.contains("not both"),
        "{text}"
    );
    let listed = daemon.ctl_ok(&["get", "subnets"]);
    assert!(
        !listed.contains("10.1.0.0"),
        "a refused batch left state behind:\n{listed}"
    );
}

/// ARP probes catch a member whose link stays up but leads nowhere: the active member's
/// path is cut behind a Linux bridge (its port leaves the bridge, the carrier stays), the
/// probes go unanswered and the backup takes over.
#[test]
#[ignore = "needs root: starts vswitchd, creates namespaces, veths and a bridge"]
fn arp_monitor_fails_over_when_the_carrier_stays_up() {
    require(&["ping", "python3"]);
    let node = Netns::new("na");
    let switch = Netns::new("sw");
    let out = Netns::new("oa");
    switch.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    switch.exec_ok(&["ip", "link", "set", "br0", "up"]);
    for (member, port) in [("m1", "s1"), ("m2", "s2")] {
        common::run(
            "ip",
            &[
                "link",
                "add",
                member,
                "netns",
                &node.name,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &switch.name,
            ],
        );
        node.exec_ok(&["ip", "link", "set", member, "up"]);
        switch.exec_ok(&["ip", "link", "set", port, "master", "br0", "up"]);
    }
    common::run(
        "ip",
        &[
            "link",
            "add",
            "s0",
            "netns",
            &switch.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &out.name,
        ],
    );
    switch.exec_ok(&["ip", "link", "set", "s0", "master", "br0", "up"]);
    out.exec_ok(&["ip", "addr", "add", "203.0.113.1/24", "dev", "eth0"]);
    out.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    let daemon = Daemon::start_in(&node.name, 1, &[]);
    daemon.apply_yaml(&config(
        &["m1", "m2"],
        Some("{mode: active-backup, primary: m1, arpMonitor: {intervalMs: 100, targets: [203.0.113.1]}}"),
    ));
    let member = |interface: &str, field: &str| -> serde_json::Value {
        let uplink = daemon.ctl_json(&["get", "uplink", "up"]);
        uplink["status"]["members"]
            .as_array()
            .and_then(|members| members.iter().find(|m| m["interface"] == interface))
            .map(|m| m[field].clone())
            .unwrap_or_default()
    };
    wait_until("m1 active", Duration::from_secs(10), || {
        (member("m1", "active") == true).then_some(())
    });
    // Answered probes keep m1 active well past the grace of three intervals.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(member("m1", "active"), true);
    assert_eq!(member("m1", "probesAnswered"), true);
    // Cut m1's path; its carrier stays up.
    let cut = Instant::now();
    switch.exec_ok(&["ip", "link", "set", "s1", "nomaster"]);
    wait_until(
        "m2 active after m1's probes went unanswered",
        Duration::from_secs(5),
        || (member("m2", "active") == true).then_some(()),
    );
    eprintln!(
        "arp monitor: m2 took over {:?} after m1's path was cut (interval 100 ms, 3 missed)",
        cut.elapsed()
    );
    assert_eq!(member("m1", "carrier"), true, "the carrier never went");
    let probes = daemon.stats()["events"]["bond.arp_probe_sent"]
        .as_u64()
        .unwrap_or(0);
    assert!(probes > 0);
    // The path comes back: the primary takes over again.
    switch.exec_ok(&["ip", "link", "set", "s1", "master", "br0"]);
    wait_until("m1 active again", Duration::from_secs(10), || {
        (member("m1", "active") == true).then_some(())
    });
}

/// Sends, from `ns`'s `eth0`, an ARP request tagged with `vlan` from `mac`/`me` for
/// `target`, and prints `reply <vlan>` (the tag the answer came with, as the kernel reports
/// it), `reply untagged`, or `none`.
const TAGGED_ARP: &str = r#"
import socket, struct, sys, time
mac = bytes.fromhex(sys.argv[1].replace(':', ''))
me, target, vid = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(('eth0', 0))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
s.settimeout(0.2)
frame = (b'\xff' * 6 + mac + struct.pack('!HHH', 0x8100, vid, 0x0806)
         + struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + mac + me + b'\x00' * 6 + target)
for attempt in range(10):
    s.send(frame)
    end = time.time() + 0.5
    while time.time() < end:
        try:
            data, anc, flags, addr = s.recvmsg(2048, socket.CMSG_SPACE(64))
        except socket.timeout:
            continue
        if addr[2] == 4 or data[12:14] != b'\x08\x06' or data[20:22] != b'\x00\x02' or data[28:32] != target:
            continue
        tag = 'untagged'
        for level, kind, aux in anc:
            if level == 263 and kind == 8:
                status, _, _, _, _, tci, _ = struct.unpack('IIIHHHH', aux[:20])
                if status & 0x10:
                    tag = str(tci & 0xfff)
        print('reply', tag)
        sys.exit(0)
print('none')
"#;

/// Trunk NetworkInterfaces (TAP and veth): the container's frames tagged with a VLAN of its
/// trunk reach that VLAN's Subnet (its gateway, a host behind OVS on that VLAN), answers
/// come back tagged, and its untagged frames stay its own Subnet's.
#[test]
#[ignore = "needs root: starts vswitchd and Open vSwitch, creates namespaces and veths"]
fn trunk_interfaces_carry_tagged_frames() {
    let topology = Topology::new(1, &[10, 20]);
    topology
        .ovs
        .vsctl(&["add-port", "br0", "o1", "trunks=10,20"]);
    topology.daemon.apply_yaml(&config(&["m1"], None));
    for (kind, mac, me) in [
        ("tap", "02:00:00:00:77:01", "10.20.0.77"),
        ("veth", "02:00:00:00:77:02", "10.20.0.78"),
    ] {
        let ns = Netns::new("tr");
        topology.daemon.apply_yaml(&format!(
            "apiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {}}}\nspec: {{subnet: v10, netns: {}, kind: {kind}, mac: '{mac}', trunk: [20]}}\n",
            ns.name, ns.name
        ));
        // Untagged: its own Subnet.
        assert!(
            ns.ping_until("10.10.0.100", Duration::from_secs(15)),
            "{kind}: the trunk's untagged frames do not reach VLAN 10"
        );
        // Tagged 20: the VLAN's gateway and the host behind OVS answer, tagged 20.
        for target in ["10.20.0.1", "10.20.0.100"] {
            let answer = ns.python(TAGGED_ARP, &[mac, me, target, "20"]);
            if answer != "reply 20" {
                let stats = topology.daemon.stats();
                let ports: Vec<&serde_json::Value> = stats["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| {
                        p["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with(&ns.name) || n.starts_with("up"))
                    })
                    .collect();
                panic!("{kind}: ARP for {target} on VLAN 20: {answer}\n{ports:#?}");
            }
        }
        // A VLAN the trunk does not carry is refused.
        let answer = ns.python(TAGGED_ARP, &[mac, me, "10.20.0.1", "30"]);
        assert_eq!(answer, "none", "{kind}: VLAN 30 is not on the trunk");
        assert!(topology.daemon.port_drop(&ns.name, "parse.vlan_tagged") > 0);
        let status = topology
            .daemon
            .ctl_json(&["get", "networkinterface", &ns.name]);
        assert_eq!(status["spec"]["trunk"][0], 20, "{status}");
        topology
            .daemon
            .ctl_ok(&["delete", "networkinterface", &ns.name]);
    }
}
