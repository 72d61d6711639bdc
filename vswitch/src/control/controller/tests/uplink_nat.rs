//! The Uplink and the NAT resources through the controller, with stand-in uplink I/O: the
//! published rules, restarts, refusals, and the conntrack views.

use super::*;

/// Uplink interfaces the stand-in I/O has closed (each test uses its own names).
static CLOSED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Uplink I/O stand-ins: interfaces named `fake*` exist; opening one gives a port without
/// queues (workers skip it) and MTU 1400. `fakesame` reports the switch's MAC as its
/// own; `fakedown` is down.
fn fake_ops() -> UplinkOps {
    fn exists(ifname: &str) -> bool {
        ifname.starts_with("fake")
    }
    fn open(
        ifname: &str,
        mac: [u8; 6],
        _queues: usize,
    ) -> Result<(PortIo, UplinkDevice), PortError> {
        if ifname == "fakeslow" {
            SLOW_OPEN.enter_and_wait();
        }
        if ifname == "fakedown" {
            return Err(PortError::Sys {
                what: "uplink interface is down; bring it up".into(),
                name: ifname.into(),
                source: std::io::Error::from_raw_os_error(libc::ENETDOWN),
            });
        }
        let host_mac = if ifname == "fakesame" {
            mac
        } else {
            [0x52, 0x54, 0, 0, 0, 1]
        };
        let io = PortIo {
            kind: crate::port::PortKind::Veth,
            queues: Vec::new(),
            capabilities: Default::default(),
            host_ifname: Some(ifname.to_string()),
        };
        Ok((
            io,
            UplinkDevice {
                mtu: 1400,
                host_mac,
                ifindex: 0,
            },
        ))
    }
    fn close(io: PortIo) {
        CLOSED
            .lock()
            .push(io.host_ifname.clone().unwrap_or_default());
    }
    UplinkOps {
        exists,
        open,
        close,
    }
}

/// A gate that `fakeslow`'s open waits at: the test sees it entered, then lets it through.
struct Gate {
    state: Mutex<(bool, bool)>,
    changed: parking_lot::Condvar,
}

static SLOW_OPEN: Gate = Gate {
    state: Mutex::new((false, false)),
    changed: parking_lot::Condvar::new(),
};

impl Gate {
    fn enter_and_wait(&self) {
        let mut state = self.state.lock();
        state.0 = true;
        self.changed.notify_all();
        while !state.1 {
            self.changed.wait(&mut state);
        }
    }

    /// Waits until the open is at the gate; false after `within`.
    fn wait_entered(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut state = self.state.lock();
        while !state.0 {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return state.0;
            }
        }
        true
    }

    fn release(&self) {
        self.state.lock().1 = true;
        self.changed.notify_all();
    }
}

fn open_fake(dir: &Path, clock: Arc<crate::tables::clock::FakeClock>) -> Controller {
    Controller::open_with(dir, engine(), clock, fake_ops()).expect("controller opens")
}

fn closed(ifname: &str) -> bool {
    CLOSED.lock().iter().any(|name| name == ifname)
}

/// Network blue (Subnet web 10.1.0.0/24) and red (Subnet db 10.2.0.0/24), interfaces c1
/// and c2 on web and d1 on db.
const NAT_BASE: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: red}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: db}
spec: {network: red, cidr: 10.2.0.0/24, gateway: 10.2.0.1}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c1}
spec: {subnet: web, netns: vsctl-test-no-such-netns, ips: [10.1.0.5]}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c2}
spec: {subnet: web, netns: vsctl-test-no-such-netns, ifname: eth1, ips: [10.1.0.6]}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: d1}
spec: {subnet: db, netns: vsctl-test-no-such-netns, ifname: eth2, ips: [10.2.0.5]}
";

fn uplink_doc(ifname: &str) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {{name: wan}}\n\
         spec: {{interface: {ifname}, addresses: [198.51.100.10/24, 198.51.100.11, 198.51.100.12], gateway: 198.51.100.1}}\n"
    )
}

const NAT_RESOURCES: &str = "\
apiVersion: vswitch/v1alpha1
kind: NATGateway
metadata: {name: gw}
spec: {network: blue, ips: [198.51.100.10], portsPerNetworkInterface: 1024}
---
apiVersion: vswitch/v1alpha1
kind: PortForward
metadata: {name: web}
spec: {ip: 198.51.100.10, protocol: tcp, port: 8080, target: {interface: c1, port: 80}}
---
apiVersion: vswitch/v1alpha1
kind: VirtualIP
metadata: {name: v}
spec: {type: Public}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c2}
spec: {subnet: web, netns: vsctl-test-no-such-netns, ifname: eth1, ips: [10.1.0.6], virtualIP: v}
";

/// A controller on the stand-in uplink `ifname` with NAT_BASE (interfaces up, without
/// queues), the Uplink and NAT_RESOURCES applied; returns the port ids of c1 and d1.
fn nat_controller(
    dir: &Path,
    clock: Arc<crate::tables::clock::FakeClock>,
    ifname: &str,
) -> (Controller, PortId, PortId) {
    seed_state(dir, NAT_BASE);
    let controller = open_fake(dir, clock);
    let c1 = fake_port(&controller, "c1");
    fake_port(&controller, "c2");
    let d1 = fake_port(&controller, "d1");
    controller.apply(&uplink_doc(ifname)).expect("uplink");
    controller.apply(NAT_RESOURCES).expect("NAT resources");
    (controller, c1, d1)
}

/// An address of the type the caller needs (`Ipv4Addr` or `IpAddr`).
fn addr<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().expect("an address")
}

#[test]
fn uplink_and_nat_rules_are_published() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::tables::clock::FakeClock::new(0));
    seed_state(dir.path(), NAT_BASE);
    let controller = open_fake(dir.path(), clock);
    fake_port(&controller, "c1");
    fake_port(&controller, "c2");
    let before = controller.engine.read().current();
    assert!(before.uplink.is_none());
    let applied = controller.apply(&uplink_doc("fakepub")).unwrap();
    assert_eq!(applied[0].action, "created");
    controller.apply(NAT_RESOURCES).unwrap();

    let snapshot = controller.engine.read().current();
    // One conntrack table for the whole run.
    assert!(Arc::ptr_eq(&before.conntrack, &snapshot.conntrack));
    let uplink = snapshot.uplink.as_ref().expect("the uplink is published");
    assert_eq!(uplink.name, "wan");
    assert_eq!(uplink.ifname, "fakepub");
    assert_eq!(uplink.mtu, 1400);
    assert_eq!(uplink.gateway, addr::<Ipv4Addr>("198.51.100.1"));
    assert_eq!(
        uplink.addresses,
        [
            "198.51.100.10/24".parse::<Ipv4Net>().unwrap(),
            "198.51.100.11/32".parse().unwrap(),
            "198.51.100.12/32".parse().unwrap(),
        ]
    );
    let node = controller.lock().state.node_id;
    assert_eq!(uplink.mac, nat_rules::derived_uplink_mac(node, "wan").0);
    // Its ids are its own: no port or subnet shares them.
    assert!(snapshot.ports().iter().all(|p| p.id != uplink.id));
    assert!(snapshot.subnets().iter().all(|s| s.id != uplink.segment));
    assert!(snapshot.port(uplink.id).is_none());
    // The NAT rules, by Network id.
    let blue = snapshot
        .networks()
        .iter()
        .find(|n| n.name == "blue")
        .map(|n| nat::Zone(n.id.0))
        .expect("blue");
    let rules = &snapshot.nat;
    assert!(rules.owns(addr("198.51.100.10")) && rules.owns(addr("198.51.100.11")));
    assert!(!rules.owns(addr("198.51.100.12")));
    let gateway = rules.gateway(blue).expect("blue's gateway");
    assert_eq!(
        gateway.ports_per_interface * gateway.blocks_per_interface,
        1024
    );
    assert_eq!(
        rules.virtual_ip_of(blue, addr("10.1.0.6")),
        Some(addr("198.51.100.11"))
    );

    // Status.
    let wan = controller.get("uplink", "wan").unwrap();
    assert_eq!(wan["status"]["state"], "Up", "{wan}");
    assert_eq!(wan["status"]["mtu"], 1400);
    assert_eq!(
        wan["status"]["mac"],
        crate::runtime::format_mac(uplink.mac).as_str()
    );
    let web = controller.get("pf", "web").unwrap();
    assert_eq!(
        web["status"],
        serde_json::json!({"state": "Ready", "destination": "10.1.0.5:80"})
    );
    let v = controller.get("vip", "v").unwrap();
    assert_eq!(
        v["status"],
        serde_json::json!({"ip": "198.51.100.11", "interface": "c2"})
    );
    let gw = controller.get("natgw", "gw").unwrap();
    assert_eq!(
        gw["status"],
        serde_json::json!({"ips": ["198.51.100.10"], "portsInUse": []})
    );
    assert_eq!(names(&controller.list("natgateways").unwrap()), ["gw"]);

    // Deleting: dependants first; the uplink's device is closed and its ids freed.
    let err = controller.delete("uplink", "wan").unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
    assert_eq!(
        controller.delete("vip", "v").unwrap_err().to_string(),
        "VirtualIP \"v\" still has NetworkInterfaces using it: c2; delete them first"
    );
    let c2 = NAT_RESOURCES.split("---\n").last().unwrap();
    controller.apply(&c2.replace(", virtualIP: v", "")).unwrap();
    for (kind, name) in [("vip", "v"), ("pf", "web"), ("natgw", "gw")] {
        controller.delete(kind, name).unwrap();
    }
    assert!(!closed("fakepub"));
    let uplink_id = uplink.id;
    // Holding a snapshot holds the uplink's queues: the controller would then leave the
    // closing to the last holder.
    drop(snapshot);
    controller.delete("uplinks", "wan").unwrap();
    assert!(closed("fakepub"));
    let snapshot = controller.engine.read().current();
    assert!(snapshot.uplink.is_none());
    assert!(!snapshot.nat.owns(addr("198.51.100.10")));
    assert_eq!(
        controller.lock().port_ids.allocate(),
        Some(uplink_id.0),
        "the uplink's port id is free again"
    );
    controller.shutdown();
}

#[test]
fn virtual_ip_allocation_and_the_uplink_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::tables::clock::FakeClock::new(0));
    let vip = |name: &str| {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: VirtualIP\nmetadata: {{name: {name}}}\nspec: {{type: Public}}\n"
        )
    };
    {
        let controller = open_fake(dir.path(), Arc::clone(&clock));
        controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        controller.apply(&uplink_doc("fakerestart")).unwrap();
        controller.apply(&vip("first")).unwrap();
        controller.apply(&vip("second")).unwrap();
        controller.delete("vip", "first").unwrap();
        let second = controller.get("vip", "second").unwrap();
        assert_eq!(second["status"]["ip"], "198.51.100.11");
        controller.shutdown();
    }
    let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(text.contains("\"virtualIPs\""), "{text}");
    assert!(text.contains("\"format\": 4"), "{text}");

    let controller = open_fake(dir.path(), Arc::clone(&clock));
    let wan = controller.get("uplink", "wan").unwrap();
    assert_eq!(wan["status"]["state"], "Up", "re-opened: {wan}");
    assert!(controller.engine.read().current().uplink.is_some());
    // The allocation is kept; a new VirtualIP takes the first free address.
    assert_eq!(
        controller.get("vip", "second").unwrap()["status"]["ip"],
        "198.51.100.11"
    );
    controller.apply(&vip("third")).unwrap();
    assert_eq!(
        controller.get("vip", "third").unwrap()["status"]["ip"],
        "198.51.100.10"
    );
    controller.shutdown();
    drop(controller);

    // The interface is gone at the next start: the Uplink stays, lost, out of the
    // snapshot, and its VirtualIPs keep their addresses.
    let gone = UplinkOps {
        exists: |_| false,
        ..fake_ops()
    };
    let controller = Controller::open_with(dir.path(), engine(), clock.clone(), gone).unwrap();
    let wan = controller.get("uplink", "wan").unwrap();
    assert_eq!(wan["status"]["state"], "Lost", "{wan}");
    let message = wan["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("cannot re-open after restart: Uplink \"wan\": spec.interface: interface fakerestart does not exist in vswitchd's network namespace"),
        "{message}"
    );
    assert!(controller.engine.read().current().uplink.is_none());
    assert_eq!(
        controller.get("vip", "third").unwrap()["status"]["ip"],
        "198.51.100.10"
    );
    // Applying it again retries, and is refused while the interface is missing.
    let err = controller.apply(&uplink_doc("fakerestart")).unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    assert_eq!(err.field(), Some("documents[0].spec.interface"));
    controller.shutdown();
    drop(controller);
    // Back: re-opened at start.
    let controller = open_fake(dir.path(), clock);
    assert_eq!(
        controller.get("uplink", "wan").unwrap()["status"]["state"],
        "Up"
    );
    controller.shutdown();
}

#[test]
fn uplink_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open_fake(
        dir.path(),
        Arc::new(crate::tables::clock::FakeClock::new(0)),
    );
    controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
    let before = std::fs::read(dir.path().join("state.json")).unwrap();
    let cases = [
        (
            "eth77",
            "documents[0].spec.interface",
            "document 1 (Uplink \"wan\"): spec.interface: interface eth77 does not exist in vswitchd's network namespace; name an existing host interface (ip link show)",
        ),
        (
            "fakedown",
            "documents[0].spec.interface",
            "document 1 (Uplink \"wan\"): spec.interface: uplink interface is down; bring it up for interface fakedown",
        ),
        (
            "fakesame",
            "documents[0].spec.mac",
            "is fakesame's own MAC; the switch needs a MAC of its own on the link",
        ),
    ];
    for (ifname, field, want) in cases {
        let err = controller.apply(&uplink_doc(ifname)).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        assert_eq!(err.field(), Some(field), "{err}");
        assert!(err.to_string().contains(want), "{want:?} not in {err}");
        assert!(controller.list("uplinks").unwrap().is_empty());
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).unwrap(),
            before
        );
        assert!(controller.engine.read().current().uplink.is_none());
    }
    assert!(closed("fakesame"), "the refused device was closed");
    // A failing re-open restores the old device.
    controller.apply(&uplink_doc("fakeold")).unwrap();
    let err = controller.apply(&uplink_doc("fakedown")).unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
    assert!(closed("fakeold"));
    let wan = controller.get("uplink", "wan").unwrap();
    assert_eq!(wan["spec"]["interface"], "fakeold");
    assert_eq!(wan["status"]["state"], "Up");
    let uplink = controller.engine.read().current().uplink.clone().unwrap();
    assert_eq!(uplink.ifname, "fakeold");
    controller.shutdown();
}

#[test]
fn conntrack_views_filter_count_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::tables::clock::FakeClock::new(5_000));
    let (controller, c1, _d1) = nat_controller(dir.path(), Arc::clone(&clock), "fakect");
    let snapshot = controller.engine.read().current();
    let zone = |name: &str| {
        snapshot
            .networks()
            .iter()
            .find(|n| n.name == name)
            .map(|n| nat::Zone(n.id.0))
            .expect("a network")
    };
    let (blue, red) = (zone("blue"), zone("red"));
    let endpoint =
        |text: &str, port: u16| nat::Endpoint::new(std::net::IpAddr::V4(addr(text)), port);
    // c1 -> outside over UDP, masqueraded; d1 -> d1's neighbour over TCP, untranslated.
    let udp = nat::PacketInfo {
        tuple: nat::Tuple::new(
            nat::Protocol::Udp,
            endpoint("10.1.0.5", 5353),
            endpoint("203.0.113.9", 53),
        ),
        kind: nat::PacketKind::Udp,
    };
    let plan = snapshot
        .nat
        .plan(
            &nat::FlowKey::new(blue, udp.tuple),
            nat::InterfaceId(c1.0),
            |_| nat::Egress::External,
        )
        .expect("masquerade");
    let conntrack = &snapshot.conntrack;
    conntrack
        .create(blue, &udp, &plan, nat::Attachments::default(), 5_000)
        .expect("created");
    let tcp = nat::PacketInfo {
        tuple: nat::Tuple::new(
            nat::Protocol::Tcp,
            endpoint("10.2.0.5", 40000),
            endpoint("10.2.0.9", 80),
        ),
        kind: nat::PacketKind::Tcp(nat::TcpFlags::SYN),
    };
    conntrack
        .create(
            red,
            &tcp,
            &nat::NatPlan::none(red),
            nat::Attachments::default(),
            5_000,
        )
        .expect("created");
    clock.advance(Duration::from_secs(3));

    let rows = controller.conntrack(None).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let udp_row = rows.iter().find(|r| r.protocol == "udp").expect("udp");
    assert_eq!(
        udp_row.original,
        ConntrackKey {
            zone: "blue".into(),
            src: "10.1.0.5".into(),
            src_port: 5353,
            dst: "203.0.113.9".into(),
            dst_port: 53,
        }
    );
    // Replies come from outside to the NAT address, the port preserved.
    assert_eq!(
        udp_row.reply,
        ConntrackKey {
            zone: "external".into(),
            src: "203.0.113.9".into(),
            src_port: 53,
            dst: "198.51.100.10".into(),
            dst_port: 5353,
        }
    );
    assert_eq!(udp_row.state, "UNREPLIED");
    assert_eq!((udp_row.age_seconds, udp_row.timeout_seconds), (3, 27));
    let tcp_row = rows.iter().find(|r| r.protocol == "tcp").expect("tcp");
    assert_eq!(tcp_row.state, "SYN_SENT");
    assert_eq!(
        (tcp_row.original.zone.as_str(), tcp_row.reply.zone.as_str()),
        ("red", "red")
    );

    assert_eq!(controller.conntrack(Some("blue")).unwrap().len(), 1);
    assert_eq!(controller.conntrack_count(None).unwrap(), 2);
    assert_eq!(controller.conntrack_count(Some("red")).unwrap(), 1);
    let err = controller.conntrack(Some("green")).unwrap_err();
    assert_eq!(err.status(), 404);
    assert_eq!(err.to_string(), "Network \"green\" not found");
    assert_eq!(
        controller
            .flush_conntrack(Some("green"))
            .unwrap_err()
            .status(),
        404
    );

    // Ports in use, by interface name.
    let gw = controller.get("natgateway", "gw").unwrap();
    assert_eq!(
        gw["status"]["portsInUse"],
        serde_json::json!([{"interface": "c1", "ip": "198.51.100.10",
                            "blocks": ["5120-5375"], "tcp": 0, "udp": 1, "icmp": 0}])
    );
    let report = controller.nat();
    assert_eq!(report.ports_in_use.len(), 1);
    assert_eq!(report.ports_in_use[0].nat_gateway, "gw");
    assert_eq!(report.ports_in_use[0].network, "blue");
    assert_eq!(report.ports_in_use[0].interface, "c1");
    assert_eq!(report.conntrack.created, 2);
    assert_eq!(report.conntrack.entries, 2);
    assert_eq!(report.conntrack.nat_mappings, 1);
    assert_eq!(report.conntrack.max_entries, 1_000_000);
    assert_eq!(
        report
            .uplink
            .as_ref()
            .map(|u| (u.interface.as_str(), u.state.as_str())),
        Some(("fakect", "Up"))
    );
    assert_eq!(
        report.addresses,
        [
            NatAddress {
                ip: addr("198.51.100.10"),
                used_by: vec!["NATGateway/gw".into(), "PortForward/web".into()],
            },
            NatAddress {
                ip: addr("198.51.100.11"),
                used_by: vec!["VirtualIP/v".into()],
            },
            NatAddress {
                ip: addr("198.51.100.12"),
                used_by: vec![],
            },
        ]
    );
    assert!(
        report.drops.keys().all(|k| k.starts_with("nat.")
            || k.starts_with("conntrack.")
            || k.starts_with("uplink."))
    );
    assert!(
        report.drops.contains_key("uplink.inbound_denied"),
        "{:?}",
        report.drops
    );

    // An unreplied UDP flow is gone after 30 s; the TCP one (4 min) is not.
    clock.advance(Duration::from_secs(28));
    assert_eq!(controller.conntrack_count(None).unwrap(), 1);
    assert_eq!(controller.conntrack(None).unwrap()[0].protocol, "tcp");
    // Flushing one Network, then all; the mapping is released.
    assert_eq!(controller.flush_conntrack(Some("red")).unwrap(), 1);
    assert_eq!(controller.flush_conntrack(None).unwrap(), 1);
    assert_eq!(controller.conntrack_count(None).unwrap(), 0);
    assert!(controller.nat().ports_in_use.is_empty());
    // The table survives reconfiguration.
    let again = Arc::clone(&controller.engine.read().current().conntrack);
    controller.delete("pf", "web").unwrap();
    assert!(Arc::ptr_eq(
        &again,
        &controller.engine.read().current().conntrack
    ));
    // Deleting an interface removes its connections (ids are reused), not others'.
    for tuple in [
        udp.tuple,
        nat::Tuple::new(
            nat::Protocol::Udp,
            endpoint("10.1.0.6", 5353),
            endpoint("203.0.113.9", 53),
        ),
    ] {
        let info = nat::PacketInfo {
            tuple,
            kind: nat::PacketKind::Udp,
        };
        again
            .create(
                blue,
                &info,
                &nat::NatPlan::none(blue),
                nat::Attachments::default(),
                clock.now_ms(),
            )
            .expect("created");
    }
    assert_eq!(controller.conntrack_count(Some("blue")).unwrap(), 2);
    controller.delete("nic", "c1").unwrap();
    let left = controller.conntrack(None).unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].original.src, "10.1.0.6");
    // Deleting a Network flushes its zone.
    let stray = nat::PacketInfo {
        tuple: nat::Tuple::new(
            nat::Protocol::Udp,
            endpoint("10.1.0.77", 9),
            endpoint("203.0.113.9", 9),
        ),
        kind: nat::PacketKind::Udp,
    };
    again
        .create(
            blue,
            &stray,
            &nat::NatPlan::none(blue),
            nat::Attachments::default(),
            clock.now_ms(),
        )
        .expect("created");
    controller.delete("nic", "c2").unwrap();
    assert_eq!(controller.conntrack_count(None).unwrap(), 1);
    controller.delete("subnet", "web").unwrap();
    controller.delete("natgw", "gw").unwrap();
    controller.delete("network", "blue").unwrap();
    assert_eq!(again.count(None, clock.now_ms()), 0);
    controller.shutdown();
}

/// With real devices: needs root and iproute2, so `#[ignore]`d for a plain `cargo test`
/// (`scripts/test.sh` runs it); fails, never passes, when run without them.
mod devices {
    use std::process::{Command, Output};

    use super::*;

    fn run(program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program} (install iproute2): {err}"))
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates network namespaces and devices: run it as root"
        );
    }

    /// A namespace of our own (`vsctl-PID-TAG`), deleted on drop with its devices.
    struct Netns(String);

    impl Netns {
        fn new(tag: &str) -> Netns {
            let name = format!("vsctl-{}-{tag}", std::process::id());
            let _ = run("ip", &["netns", "del", &name]);
            let out = run("ip", &["netns", "add", &name]);
            assert!(out.status.success(), "ip netns add {name}: {out:?}");
            Netns(name)
        }

        fn ip(&self, args: &[&str]) -> String {
            let mut all = vec!["-n", self.0.as_str()];
            all.extend_from_slice(args);
            let out = run("ip", &all);
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        fn has_link(&self, ifname: &str) -> bool {
            run("ip", &["-n", &self.0, "link", "show", ifname])
                .status
                .success()
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = run("ip", &["netns", "del", &self.0]);
        }
    }

    fn subnet(third: u8) -> String {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: n}}\n---\n\
             apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: default}}\n\
             spec: {{network: n, cidr: 172.29.{third}.0/24, gateway: 172.29.{third}.1, mtu: 1400}}\n"
        )
    }

    fn interface(name: &str, ns: &Netns, extra: &str) -> String {
        format!(
            "---\napiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {name}}}\n\
             spec: {{netns: {}{extra}}}\n",
            ns.0
        )
    }

    fn status(controller: &Controller, name: &str) -> Value {
        controller.get("nic", name).unwrap()["status"].clone()
    }

    #[test]
    #[ignore = "needs root: creates network namespaces, TAP and veth ports"]
    fn attach_restart_change_rollback_delete() {
        require_root();
        let pid = std::process::id();
        let (a_name, b_name, c_name, d_name) = (
            format!("t{pid}a"),
            format!("t{pid}b"),
            format!("t{pid}c"),
            format!("t{pid}d"),
        );
        let (a, b, c, d) = (
            Netns::new("a"),
            Netns::new("b"),
            Netns::new("c"),
            Netns::new("d"),
        );
        let dir = tempfile::tempdir().unwrap();
        let engine = || Engine::start(EngineConfig::new(2)).unwrap();
        let controller = Controller::open(dir.path(), engine()).unwrap();
        let text = format!(
            "{}{}{}",
            subnet(7),
            interface(&a_name, &a, ""),
            interface(&b_name, &b, ", kind: veth, ifname: net1, labels: {x: y}")
                .replace(", labels: {x: y}}", "}")
        );
        let applied = controller.apply(&text).unwrap();
        assert_eq!(applied.len(), 4);
        let sa = status(&controller, &a_name);
        let sb = status(&controller, &b_name);
        assert_eq!(sa["state"], "Up", "{sa}");
        assert_eq!(sb["state"], "Up", "{sb}");
        assert_eq!(sa["ips"], serde_json::json!(["172.29.7.2/24"]));
        assert_eq!(sb["ips"], serde_json::json!(["172.29.7.3/24"]));
        assert_eq!(sb["hostIfname"], port::host_ifname(&b_name));
        let mac = sa["mac"].as_str().unwrap().to_string();
        let addr = a.ip(&["addr", "show", "eth0"]);
        assert!(
            addr.contains("172.29.7.2/24") && addr.contains(&mac),
            "{addr}"
        );
        assert!(addr.contains("mtu 1400"), "{addr}");
        assert!(a.ip(&["route"]).contains("default via 172.29.7.1"));
        assert!(b.has_link("net1"));
        let snapshot = controller.engine.read().current();
        assert_eq!(snapshot.ports().len(), 2);
        assert_eq!(snapshot.subnets()[0].ports.len(), 2);

        // A failing attach rolls back the whole batch: c is not left attached.
        let out = run(
            "ip",
            &[
                "-n", &d.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
            ],
        );
        assert!(out.status.success(), "{out:?}");
        let text = format!(
            "{}{}",
            interface(&c_name, &c, ""),
            interface(&d_name, &d, "")
        );
        let err = controller
            .apply(text.trim_start_matches("---\n"))
            .unwrap_err();
        assert_eq!(err.status(), 409, "{err}");
        assert!(
            err.to_string().starts_with(&format!(
                "document 2 (NetworkInterface \"{d_name}\"): spec.ifname: "
            )),
            "{err}"
        );
        assert!(
            !c.has_link("eth0"),
            "the rolled-back device is still in {}",
            c.0
        );
        assert_eq!(controller.list("nic").unwrap().len(), 2);
        // Its address was not consumed.
        controller.apply(&interface(&c_name, &c, "")).unwrap();
        assert_eq!(
            status(&controller, &c_name)["ips"],
            serde_json::json!(["172.29.7.4/24"])
        );

        // New addresses re-create the device.
        let applied = controller
            .apply(&interface(&a_name, &a, ", ips: [172.29.7.50]"))
            .unwrap();
        assert_eq!(applied[0].action, "configured");
        let addr = a.ip(&["addr", "show", "eth0"]);
        assert!(
            addr.contains("172.29.7.50/24") && !addr.contains("172.29.7.2/"),
            "{addr}"
        );
        assert_eq!(status(&controller, &a_name)["mac"], mac.as_str());

        // A failed batch restores a device it re-created, with its old configuration.
        let text = format!(
            "{}{}",
            interface(&a_name, &a, ", ips: [172.29.7.60]"),
            interface(&d_name, &d, "")
        );
        let err = controller
            .apply(text.trim_start_matches("---\n"))
            .unwrap_err();
        assert_eq!(err.status(), 409, "{err}");
        let addr = a.ip(&["addr", "show", "eth0"]);
        assert!(
            addr.contains("172.29.7.50/24") && !addr.contains("172.29.7.60"),
            "{addr}"
        );
        assert_eq!(status(&controller, &a_name)["state"], "Up");
        assert_eq!(
            status(&controller, &a_name)["ips"],
            serde_json::json!(["172.29.7.50/24"])
        );
        assert_eq!(controller.engine.read().current().ports().len(), 3);

        // Restart: the ports are re-opened, not re-created.
        controller.shutdown();
        drop(controller);
        drop(c);
        let controller = Controller::open(dir.path(), engine()).unwrap();
        assert_eq!(status(&controller, &a_name)["state"], "Up");
        assert_eq!(status(&controller, &b_name)["state"], "Up");
        let lost = status(&controller, &c_name);
        assert_eq!(lost["state"], "Lost", "{lost}");
        assert_eq!(controller.engine.read().current().ports().len(), 2);

        // Delete removes the devices.
        for name in [&a_name, &b_name, &c_name] {
            controller.delete("networkinterfaces", name).unwrap();
        }
        assert!(!a.has_link("eth0"));
        assert!(!b.has_link("net1"));
        assert!(controller.list("nic").unwrap().is_empty());
        assert!(controller.engine.read().current().ports().is_empty());
        controller.shutdown();
    }
}

/// The reports read back typed, as the CLI reads them.
#[test]
fn reports_read_back_typed() {
    fn round_trip<T>(value: &T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_value(value).expect("serialises");
        let back: T = serde_json::from_value(json).expect("reads back");
        assert_eq!(&back, value);
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::tables::clock::FakeClock::new(0));
    let (controller, _c1, _d1) = nat_controller(dir.path(), clock, "fakeviews");
    let report = controller.nat();
    assert!(report.uplink.is_some(), "{report:?}");
    round_trip(&report);
    let table = controller.routing_table(None).unwrap();
    assert!(!table.is_empty());
    for row in &table {
        round_trip(row);
    }
    let key = |zone: &str| ConntrackKey {
        zone: zone.into(),
        src: "10.1.0.5".into(),
        src_port: 5353,
        dst: "203.0.113.9".into(),
        dst_port: 53,
    };
    round_trip(&ConntrackRow {
        protocol: "udp".into(),
        original: key("blue"),
        reply: key("external"),
        state: "UNREPLIED".into(),
        assured: false,
        age_seconds: 3,
        timeout_seconds: 27,
    });
    controller.shutdown();
}

/// Device work runs without the state lock: while the Uplink's device is being opened,
/// reads answer (showing it Pending), an unrelated change completes and is persisted
/// without the Uplink, and a change to the Uplink waits for the open to finish.
#[test]
fn device_work_runs_without_the_state_lock() {
    use std::sync::mpsc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::tables::clock::FakeClock::new(0));
    let controller = Arc::new(open_fake(dir.path(), clock));
    controller
        .apply("apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: blue}\n")
        .unwrap();

    let opening = {
        let controller = Arc::clone(&controller);
        std::thread::spawn(move || controller.apply(&uplink_doc("fakeslow")))
    };
    assert!(
        SLOW_OPEN.wait_entered(Duration::from_secs(30)),
        "the uplink's open never started"
    );
    let uplink = controller.get("uplink", "wan").unwrap();
    assert_eq!(uplink["status"]["state"], "Pending", "{uplink}");

    // An unrelated change completes while the open waits at the gate.
    let (done, finished) = mpsc::channel();
    {
        let controller = Arc::clone(&controller);
        std::thread::spawn(move || {
            let result = controller
                .apply("apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: red}\n");
            let _ = done.send(result.map(|_| ()));
        });
    }
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("an unrelated apply waited behind the uplink's device work")
        .unwrap();
    let saved = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(saved.contains("\"red\""), "{saved}");
    assert!(
        !saved.contains("fakeslow"),
        "a change in flight was persisted: {saved}"
    );

    // A change to the Uplink waits for the one in flight, then applies on top of it.
    let (done, changed) = mpsc::channel();
    {
        let controller = Arc::clone(&controller);
        std::thread::spawn(move || {
            let text = uplink_doc("fakeslow").replace("198.51.100.12]", "198.51.100.13]");
            let _ = done.send(controller.apply(&text).map(|_| ()));
        });
    }
    assert!(
        changed.recv_timeout(Duration::from_millis(200)).is_err(),
        "a change to the Uplink did not wait for the one in flight"
    );
    SLOW_OPEN.release();
    opening.join().unwrap().unwrap();
    changed
        .recv_timeout(Duration::from_secs(30))
        .expect("the waiting change never ran")
        .unwrap();
    let uplink = controller.get("uplink", "wan").unwrap();
    assert_eq!(uplink["status"]["state"], "Up", "{uplink}");
    assert!(uplink.to_string().contains("198.51.100.13"), "{uplink}");
    let saved = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(saved.contains("198.51.100.13"), "{saved}");
}
