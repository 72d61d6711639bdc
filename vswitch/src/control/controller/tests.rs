//! The controller's tests: apply, restart, ids, the compiled snapshot and statuses; the
//! Uplink, NAT and conntrack views are in `uplink_nat`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::*;
use crate::control::EMBEDDED_DEFAULT_CONFIG;
use crate::control::resource::parse_documents;
use crate::control::routing;
use crate::runtime::EngineConfig;
use crate::tables::snapshot::{NextHop, RouteEntry, RouteOrigin};

mod uplink_nat;

/// A namespace name that does not exist on any machine running these tests.
const NO_NETNS: &str = "vsctl-test-no-such-netns";

fn engine() -> Engine {
    Engine::start(EngineConfig::new(1)).expect("engine starts")
}

fn open(dir: &Path) -> Controller {
    Controller::open(dir, engine()).expect("controller opens")
}

fn nic(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {name}}}\nspec: {{netns: {NO_NETNS}{extra}}}\n"
    )
}

fn names(list: &[Value]) -> Vec<&str> {
    list.iter()
        .map(|v| v["metadata"]["name"].as_str().unwrap_or("?"))
        .collect()
}

/// `base` with the documents of `text` applied, as validation plans it.
fn planned(base: &State, text: &str) -> State {
    validate::plan(base, parse_documents(text).unwrap(), Mode::Apply)
        .unwrap()
        .next
}

/// Writes a state holding the embedded default plus interfaces `specs` (as planned,
/// never attached), as a daemon that attached them and was killed would leave it.
fn seed(dir: &Path, interfaces: &str) {
    let (store, _) = Store::open(dir).unwrap();
    let defaults = planned(&State::default(), EMBEDDED_DEFAULT_CONFIG);
    let mut state = planned(&defaults, interfaces);
    for nic in state.network_interfaces.values_mut() {
        nic.status.state = InterfaceState::Up;
    }
    store.save(&state).unwrap();
}

#[test]
fn applies_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    assert!(controller.is_empty());
    let applied = controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
    let want = |kind: &str, action: &str| AppliedResource {
        kind: kind.into(),
        name: "default".into(),
        action: action.into(),
    };
    assert_eq!(
        applied,
        [want("Network", "created"), want("Subnet", "created")]
    );
    assert!(!controller.is_empty());
    let again = controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
    assert_eq!(
        again,
        [want("Network", "unchanged"), want("Subnet", "unchanged")]
    );

    let subnet = controller.get("subnets", "default").unwrap();
    assert_eq!(subnet["apiVersion"], "vswitch/v1alpha1");
    assert_eq!(subnet["kind"], "Subnet");
    assert_eq!(subnet["spec"]["cidr"], "172.30.0.0/16");
    assert_eq!(subnet["spec"]["gateway"], "172.30.0.1");
    assert_eq!(subnet["spec"]["mtu"], 1500);
    assert_eq!(subnet["spec"]["macAgeingSeconds"], 300);
    assert_eq!(subnet["spec"]["macTableLimit"], 8192);
    assert_eq!(subnet["status"]["allocated"], 0);
    assert_eq!(subnet["status"]["available"], 65533);
    let network = controller.get("Network", "default").unwrap();
    assert_eq!(network["status"]["subnets"], serde_json::json!(["default"]));
    assert_eq!(names(&controller.list("NETWORKS").unwrap()), ["default"]);
    assert!(controller.list("networkinterfaces").unwrap().is_empty());

    // The engine sees the subnet.
    let snapshot = controller.engine.read().current();
    assert_eq!(snapshot.subnets().len(), 1);
    let entry = &snapshot.subnets()[0];
    assert_eq!(entry.name, "default");
    assert_eq!(entry.network, "default");
    assert_eq!(entry.mac_ageing, Duration::from_secs(300));
    assert_eq!(entry.mac_limit, 8192);
    assert!(entry.ports.is_empty());
}

#[test]
fn a_bad_document_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
    let before = std::fs::read(dir.path().join("state.json")).unwrap();
    let generation = controller.engine.read().current().generation;
    let text = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.0.0.0/33, gateway: 10.0.0.1}
";
    let err = controller.apply(text).unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        err.to_string()
            .starts_with("document 2 (Subnet \"web\"): spec.cidr: invalid CIDR \"10.0.0.0/33\"")
    );
    assert_eq!(names(&controller.list("network").unwrap()), ["default"]);
    assert_eq!(
        std::fs::read(dir.path().join("state.json")).unwrap(),
        before
    );
    assert_eq!(controller.engine.read().current().generation, generation);

    for bad in [
        "kind: Network\nmetadata: {name: x}\n: : :\n",
        "apiVersion: vswitch/v1alpha1\nkind: Router\nmetadata: {name: x}\n",
        "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: x}\nspec: {peers: []}\n",
    ] {
        assert_eq!(controller.apply(bad).unwrap_err().status(), 400, "{bad}");
    }
    assert_eq!(
        std::fs::read(dir.path().join("state.json")).unwrap(),
        before
    );
}

#[test]
fn restart_restores_from_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    {
        let controller = open(dir.path());
        controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
        controller
            .create(
                "network",
                r#"{"metadata":{"name":"blue","labels":{"team":"a"}}}"#,
            )
            .unwrap();
        controller.shutdown();
    }
    let controller = open(dir.path());
    assert!(!controller.is_empty());
    assert_eq!(
        names(&controller.list("networks").unwrap()),
        ["blue", "default"]
    );
    assert_eq!(
        controller.get("network", "blue").unwrap()["metadata"]["labels"]["team"],
        "a"
    );
    assert_eq!(controller.engine.read().current().subnets().len(), 1);
}

#[test]
fn create_refuses_a_taken_name() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    let body = r#"{"apiVersion":"vswitch/v1alpha1","kind":"Network","metadata":{"name":"blue"}}"#;
    let created = controller.create("Networks", body).unwrap();
    assert_eq!(created["metadata"]["name"], "blue");
    assert_eq!(created["status"]["subnets"], serde_json::json!([]));
    let err = controller.create("network", body).unwrap_err();
    assert_eq!(err.status(), 409);
    assert_eq!(
        err.to_string(),
        "Network \"blue\": metadata.name: Network \"blue\" already exists; choose another \
         name or delete the existing one first"
    );
    assert_eq!(err.field(), Some("metadata.name"));
    let err = controller.create("subnet", body).unwrap_err();
    assert_eq!(err.status(), 400);
}

#[test]
fn unknown_kinds_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    let err = controller.list("routers").unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        err.to_string()
            .contains("valid kinds: Namespace, Overlay, Network, Subnet")
    );
    let err = controller.get("nic", "c1").unwrap_err();
    assert_eq!(err.status(), 404);
    assert_eq!(err.to_string(), "NetworkInterface \"c1\" not found");
    assert_eq!(controller.delete("subnet", "x").unwrap_err().status(), 404);
}

#[test]
fn delete_respects_dependants() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
    let err = controller.delete("networks", "default").unwrap_err();
    assert_eq!(err.status(), 409);
    assert_eq!(
        err.to_string(),
        "Network \"default\" still has Subnets: default; delete them first"
    );
    controller.delete("subnets", "default").unwrap();
    assert!(controller.engine.read().current().subnets().is_empty());
    controller.delete("networks", "default").unwrap();
    assert!(controller.is_empty());
    drop(controller);
    assert!(open(dir.path()).is_empty());
}

#[test]
fn missing_namespace_is_refused_before_any_change() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    let text = format!("{EMBEDDED_DEFAULT_CONFIG}---\n{}", nic("c1", ""));
    let err = controller.apply(&text).unwrap_err();
    assert_eq!(err.status(), 400);
    assert_eq!(
        err.to_string(),
        format!(
            "document 3 (NetworkInterface \"c1\"): spec.netns: network namespace {NO_NETNS} \
             does not exist (/run/netns/{NO_NETNS} not found); create it first (ip netns add \
             NAME) or check the path/pid"
        )
    );
    assert_eq!(err.field(), Some("documents[2].spec.netns"));
    assert!(controller.is_empty());
    let body = format!(r#"{{"metadata":{{"name":"c1"}},"spec":{{"netns":"{NO_NETNS}"}}}}"#);
    controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
    let err = controller.create("nic", &body).unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(controller.list("nic").unwrap().is_empty());
}

#[test]
fn lost_interfaces_stay_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let interfaces = format!(
        "{}---\n{}",
        nic("c1", ""),
        nic("c2", ", ifname: eth1, ips: [172.30.9.9]")
    );
    seed(dir.path(), &interfaces);
    let controller = open(dir.path());
    let list = controller.list("networkinterfaces").unwrap();
    assert_eq!(names(&list), ["c1", "c2"]);
    for nic in &list {
        assert_eq!(nic["status"]["state"], "Lost", "{nic}");
        let message = nic["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("cannot re-open after restart: "),
            "{message}"
        );
    }
    assert_eq!(
        list[0]["status"]["ips"],
        serde_json::json!(["172.30.0.2/16"])
    );
    // Lost ports are not in the snapshot.
    let snapshot = controller.engine.read().current();
    assert!(snapshot.ports().is_empty());
    assert!(snapshot.subnets()[0].ports.is_empty());
    // Their addresses stay leased.
    let subnet = controller.get("subnet", "default").unwrap();
    assert_eq!(subnet["status"]["allocated"], 2);
    let err = controller.create(
        "nic",
        &format!(r#"{{"metadata":{{"name":"c3"}},"spec":{{"netns":"{NO_NETNS}","ifname":"eth2","ips":["172.30.9.9"]}}}}"#),
    );
    let err = err.unwrap_err();
    assert_eq!(err.status(), 409);
    assert!(
        err.to_string()
            .contains("already used by NetworkInterface \"c2\""),
        "{err}"
    );
    // The lost state was persisted.
    drop(controller);
    let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(text.contains("\"Lost\""));
    // Deleting a lost interface removes it and frees its address.
    let controller = open(dir.path());
    let err = controller.delete("subnet", "default").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Subnet \"default\" still has NetworkInterfaces: c1, c2; delete them first"
    );
    controller.delete("networkinterface", "c2").unwrap();
    controller.delete("NIC", "c1").unwrap();
    assert!(controller.list("nics").unwrap().is_empty());
    let subnet = controller.get("subnet", "default").unwrap();
    assert_eq!(subnet["status"]["allocated"], 0);
    // The cursor survives: the next allocation continues after c1's address.
    drop(controller);
    let (_store, state) = Store::open(dir.path()).unwrap();
    let state = state.unwrap();
    assert_eq!(
        state.ipam["default"].last_allocated,
        Some(std::net::Ipv4Addr::new(172, 30, 0, 2))
    );
}

#[test]
fn a_second_controller_on_one_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = Controller::open(dir.path(), engine()).unwrap_err();
    assert_eq!(err.status(), 500);
    assert!(
        err.to_string().contains("in use by another vswitchd"),
        "{err}"
    );
}

#[test]
fn corrupt_state_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), "not json").unwrap();
    let err = Controller::open(dir.path(), engine()).unwrap_err();
    assert!(err.to_string().contains("state.json is corrupt"), "{err}");
}

#[test]
fn id_pool_is_dense_and_reuses_the_lowest() {
    let mut pool = IdPool::new(3);
    assert_eq!(pool.available(), 3);
    assert_eq!(
        (pool.allocate(), pool.allocate(), pool.allocate()),
        (Some(0), Some(1), Some(2))
    );
    assert_eq!(pool.allocate(), None);
    pool.release(2);
    pool.release(0);
    assert_eq!(pool.available(), 2);
    assert_eq!(pool.allocate(), Some(0));
    assert_eq!(pool.allocate(), Some(2));
    assert_eq!(pool.allocate(), None);
}

#[test]
fn subnet_ids_are_reused_after_delete() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    let text = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: n}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: a}
spec: {network: n, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: b}
spec: {network: n, cidr: 10.2.0.0/24, gateway: 10.2.0.1, macTableLimit: 16}
";
    controller.apply(text).unwrap();
    let ids = |c: &Controller| -> Vec<(String, u32)> {
        c.engine
            .read()
            .current()
            .subnets()
            .iter()
            .map(|s| (s.name.clone(), s.id.0))
            .collect()
    };
    assert_eq!(
        ids(&controller),
        [("a".to_string(), 0), ("b".to_string(), 1)]
    );
    controller.delete("subnet", "a").unwrap();
    let c = text.replace("name: a}", "name: c}");
    controller.apply(&c).unwrap();
    assert_eq!(
        ids(&controller),
        [("b".to_string(), 1), ("c".to_string(), 0)]
    );
    let snapshot = controller.engine.read().current();
    assert_eq!(snapshot.subnet(SubnetId(1)).map(|s| s.mac_limit), Some(16));
}

/// Two peered Networks (`blue`: web 10.1.0.0/24 and edge 10.1.1.0/24; `red`: db
/// 10.2.0.0/24), a Route `lab` from blue to 192.168.50.0/24 via 10.1.1.254, and two
/// interfaces: `router` (10.1.1.254 on edge, the next hop) and `c1` (10.1.0.5 on web).
const PEERED: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
spec: {peerings: [{name: to-red, network: red}]}
---
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: red}
spec: {peerings: [{name: to-blue, network: blue}]}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: edge}
spec: {network: blue, cidr: 10.1.1.0/24, gateway: 10.1.1.1, gatewayMac: '02:00:00:00:01:01'}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: db}
spec: {network: red, cidr: 10.2.0.0/24, gateway: 10.2.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Route
metadata: {name: lab}
spec: {network: blue, destination: 192.168.50.0/24, nextHop: 10.1.1.254}
";

/// Writes a state holding `text` (as planned; interfaces never attached).
fn seed_state(dir: &Path, text: &str) {
    let (store, _) = Store::open(dir).unwrap();
    store.save(&planned(&State::default(), text)).unwrap();
}

/// Marks interface `name` up with a port that has no queues (workers skip it), and
/// publishes: enough to see what compile() makes of it.
fn fake_port(controller: &Controller, name: &str) -> PortId {
    let mut inner = controller.lock();
    let id = PortId(inner.port_ids.allocate().expect("a port id"));
    let nic = inner.state.network_interfaces.get_mut(name).expect("nic");
    nic.status.state = InterfaceState::Up;
    let io = PortIo {
        kind: crate::port::PortKind::Tap,
        queues: Vec::new(),
        capabilities: Default::default(),
        host_ifname: None,
    };
    inner.ports.insert(
        name.to_string(),
        AttachedPort {
            id,
            io: Arc::new(io),
        },
    );
    let engine = controller.engine.read();
    publish(&engine, &mut inner);
    id
}

fn peered_with_ports(dir: &Path) -> Controller {
    let interfaces = format!(
        "---\n{}---\n{}",
        nic("router", ", subnet: edge, ips: [10.1.1.254]"),
        nic("c1", ", subnet: web, ifname: eth1, ips: [10.1.0.5]")
    );
    seed_state(dir, &format!("{PEERED}{interfaces}"));
    let controller = open(dir);
    fake_port(&controller, "router");
    fake_port(&controller, "c1");
    controller
}

fn table_rows(controller: &Controller, network: Option<&str>) -> Vec<String> {
    controller
        .routing_table(network)
        .unwrap()
        .into_iter()
        .map(|r| {
            let via = r.next_hop.map_or("direct".to_string(), |a| a.to_string());
            format!(
                "{} {} {via} {} {}",
                r.network, r.destination, r.subnet, r.origin
            )
        })
        .collect()
}

#[test]
fn compile_builds_connected_peering_and_static_tables() {
    let dir = tempfile::tempdir().unwrap();
    let controller = peered_with_ports(dir.path());
    let snapshot = controller.engine.read().current();
    let ids: BTreeMap<&str, SubnetId> = snapshot
        .subnets()
        .iter()
        .map(|s| (s.name.as_str(), s.id))
        .collect();
    let blue = snapshot
        .networks()
        .iter()
        .find(|n| n.name == "blue")
        .expect("blue in the snapshot");
    let routes: Vec<RouteEntry> = blue.routes().cloned().collect();
    let entry = |prefix: &str, subnet: &str, next_hop: NextHop, origin: RouteOrigin| RouteEntry {
        prefix: prefix.parse().unwrap(),
        subnet: ids[subnet],
        next_hop,
        origin,
    };
    assert_eq!(routes.len(), 4, "{routes:?}");
    for want in [
        entry(
            "10.1.0.0/24",
            "web",
            NextHop::Direct,
            RouteOrigin::Connected,
        ),
        entry(
            "10.1.1.0/24",
            "edge",
            NextHop::Direct,
            RouteOrigin::Connected,
        ),
        entry(
            "10.2.0.0/24",
            "db",
            NextHop::Direct,
            RouteOrigin::Peering("red".into()),
        ),
        entry(
            "192.168.50.0/24",
            "edge",
            NextHop::Via(Ipv4Addr::new(10, 1, 1, 254)),
            RouteOrigin::Static("lab".into()),
        ),
    ] {
        assert!(routes.contains(&want), "{want:?} not in {routes:?}");
    }
    let hit = blue.lookup(Ipv4Addr::new(192, 168, 50, 7)).unwrap();
    assert_eq!(hit.origin, RouteOrigin::Static("lab".into()));
    // Every subnet's network_id is its Network's.
    for subnet in snapshot.subnets() {
        let network = snapshot.network(subnet.network_id).expect("network");
        assert_eq!(network.name, subnet.network, "{}", subnet.name);
    }
    // The router may send from the Route's destination; c1 may not.
    let port = |name: &str| {
        snapshot
            .ports()
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} not in the snapshot"))
    };
    assert_eq!(
        port("router").allowed_sources,
        ["192.168.50.0/24".parse::<Ipv4Net>().unwrap()]
    );
    assert!(port("c1").allowed_sources.is_empty());
    // The configured gateway MAC, and a derived one for the others.
    let edge = snapshot.subnet(ids["edge"]).unwrap();
    assert_eq!(edge.gateway_mac, [2, 0, 0, 0, 1, 1]);
    let web = snapshot.subnet(ids["web"]).unwrap();
    let node = controller.lock().state.node_id;
    assert_eq!(web.gateway_mac, routing::derived_gateway_mac(node, "web").0);

    // The API view: sorted by Network and destination, with names.
    assert_eq!(
        table_rows(&controller, None),
        [
            "blue 10.1.0.0/24 direct web connected",
            "blue 10.1.1.0/24 direct edge connected",
            "blue 10.2.0.0/24 direct db peering:red",
            "blue 192.168.50.0/24 10.1.1.254 edge static:lab",
            "red 10.1.0.0/24 direct web peering:blue",
            "red 10.1.1.0/24 direct edge peering:blue",
            "red 10.2.0.0/24 direct db connected",
        ]
    );
    assert_eq!(table_rows(&controller, Some("red")).len(), 3);
    // The counts agree with the rows, by origin.
    assert_eq!(
        controller.routing_table_count(None).unwrap(),
        crate::control::RoutingTableCount {
            count: 7,
            connected: 3,
            peering: 3,
            static_routes: 1
        }
    );
    assert_eq!(
        controller
            .routing_table_count(Some("blue"))
            .unwrap()
            .static_routes,
        1
    );
    assert_eq!(
        controller
            .routing_table_count(Some("green"))
            .unwrap_err()
            .status(),
        404
    );
    let err = controller.routing_table(Some("green")).unwrap_err();
    assert_eq!(err.status(), 404);
    assert_eq!(err.to_string(), "Network \"green\" not found");

    // Removing one side: Pending, and the peering routes leave both tables.
    controller
        .apply("apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: red}\n")
        .unwrap();
    assert_eq!(
        table_rows(&controller, Some("red")),
        ["red 10.2.0.0/24 direct db connected"]
    );
    assert!(
        !table_rows(&controller, Some("blue"))
            .iter()
            .any(|row| row.contains("peering:")),
    );
    let blue = controller.get("network", "blue").unwrap();
    assert_eq!(blue["status"]["peerings"][0]["state"], "Pending");
    // Deleting the Route: the router loses the routed source.
    controller.delete("route", "lab").unwrap();
    let snapshot = controller.engine.read().current();
    let router = snapshot
        .ports()
        .iter()
        .find(|p| p.name == "router")
        .unwrap();
    assert!(router.allowed_sources.is_empty());
    controller.shutdown();
}

#[test]
fn status_of_networks_subnets_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    controller.apply(PEERED).unwrap();
    let blue = controller.get("networks", "blue").unwrap();
    assert_eq!(
        blue["status"],
        serde_json::json!({
            "subnets": ["edge", "web"],
            "peerings": [{"name": "to-red", "network": "red", "state": "Ready"}],
        })
    );
    let route = controller.get("routes", "lab").unwrap();
    assert_eq!(
        route["status"],
        serde_json::json!({"subnet": "edge", "state": "Ready"})
    );
    let edge = controller.get("subnet", "edge").unwrap();
    assert_eq!(edge["status"]["gatewayMac"], "02:00:00:00:01:01");
    assert_eq!(names(&controller.list("route").unwrap()), ["lab"]);
    // Deleting a Network others peer with is allowed once it has no Subnets.
    controller.delete("subnet", "db").unwrap();
    controller.delete("network", "red").unwrap();
    let blue = controller.get("network", "blue").unwrap();
    assert_eq!(
        blue["status"]["peerings"][0],
        serde_json::json!({"name": "to-red", "network": "red", "state": "Pending",
                           "message": "Network \"red\" does not exist yet"})
    );
    assert_eq!(
        controller.engine.read().current().networks().len(),
        1,
        "red left the snapshot"
    );
    controller.shutdown();
}

#[test]
fn network_ids_are_dense_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    let networks = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: {n}}}\n"
                )
            })
            .collect()
    };
    controller.apply(&networks(&["b", "c", "d"])).unwrap();
    let ids = |c: &Controller| -> Vec<(String, u32)> {
        let mut ids: Vec<(String, u32)> = c
            .engine
            .read()
            .current()
            .networks()
            .iter()
            .map(|n| (n.name.clone(), n.id.0))
            .collect();
        ids.sort();
        ids
    };
    let owned = |list: &[(&str, u32)]| -> Vec<(String, u32)> {
        list.iter().map(|(n, id)| (n.to_string(), *id)).collect()
    };
    assert_eq!(ids(&controller), owned(&[("b", 0), ("c", 1), ("d", 2)]));
    // A new name sorting first does not renumber the others.
    controller.apply(&networks(&["a"])).unwrap();
    assert_eq!(
        ids(&controller),
        owned(&[("a", 3), ("b", 0), ("c", 1), ("d", 2)])
    );
    // A freed id is reused.
    controller.delete("network", "c").unwrap();
    controller.apply(&networks(&["e"])).unwrap();
    assert_eq!(
        ids(&controller),
        owned(&[("a", 3), ("b", 0), ("d", 2), ("e", 1)])
    );
    controller.shutdown();
}

#[test]
fn node_id_and_gateway_macs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path());
    controller.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
    controller.apply(PEERED).unwrap();
    let macs = |c: &Controller| -> Vec<(String, String)> {
        c.list("subnets")
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["metadata"]["name"].as_str().unwrap().to_string(),
                    s["status"]["gatewayMac"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = macs(&controller);
    let node = controller.lock().state.node_id.expect("a node id");
    let table = table_rows(&controller, None);
    controller.shutdown();
    drop(controller);
    let text = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(text.contains(&format!("\"nodeId\": \"{node}\"")), "{text}");

    let controller = open(dir.path());
    assert_eq!(controller.lock().state.node_id, Some(node));
    assert_eq!(macs(&controller), before);
    // The Route and the peerings were restored too.
    assert_eq!(table_rows(&controller, None), table);
    let snapshot = controller.engine.read().current();
    let default = snapshot
        .subnets()
        .iter()
        .find(|s| s.name == "default")
        .unwrap();
    let shown = &before.iter().find(|(n, _)| n == "default").unwrap().1;
    assert_eq!(crate::runtime::format_mac(default.gateway_mac), *shown);
    controller.shutdown();

    // Another node (state directory) derives other MACs for the same names.
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(other_dir.path());
    other.apply(EMBEDDED_DEFAULT_CONFIG).unwrap();
    let theirs = macs(&other);
    let mine = before.iter().find(|(n, _)| n == "default").unwrap();
    assert_ne!(theirs[0].1, mine.1);
    other.shutdown();
}

#[test]
fn a_state_without_a_node_id_gets_one_once() {
    let dir = tempfile::tempdir().unwrap();
    seed_state(dir.path(), EMBEDDED_DEFAULT_CONFIG);
    let (_, state) = Store::open(dir.path()).unwrap();
    assert_eq!(state.unwrap().node_id, None);
    let controller = open(dir.path());
    let node = controller.lock().state.node_id;
    assert!(node.is_some());
    drop(controller);
    let (_, state) = Store::open(dir.path()).unwrap();
    assert_eq!(state.unwrap().node_id, node);
}
