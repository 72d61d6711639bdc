//! The semantic points the e2e suite does not reach, each with the trap it guards against
//! (see `shared/notes/research-next-areas.md` §2.4): peers outside the switch, IPv6,
//! named ports on the destination, the seed form's Network and LoadBalancer peers,
//! protocols without ports, the verdicts' rule identification, and `explain`.

#![allow(clippy::tests_outside_test_module)] // Integration tests are test modules already.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::{SCTP, TCP, UDP, compile, endpoints, pod_index, pod_peer, policies, world};
use policy::{
    CompileError, Compiled, Connection, Direction, Endpoint, EndpointId, LoadBalancer, NamedPort,
    Namespace, Peer, Protocol, Verdict, World,
};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn external(text: &str) -> Peer {
    Peer::External(ip(text))
}

fn p(pod: &str) -> Peer {
    pod_peer(pod_index(pod))
}

fn conn(src: Peer, dst: Peer, protocol: u8, dst_port: u16) -> Connection {
    Connection {
        src,
        dst,
        protocol,
        dst_port,
    }
}

fn allowed(compiled: &Compiled, src: Peer, dst: Peer, protocol: u8, port: u16) -> bool {
    compiled.check(&conn(src, dst, protocol, port)).allowed
}

#[test]
fn selectors_never_match_addresses_outside_the_switch() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-all-namespaces, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-anywhere, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a-block, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from:
    - ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}
",
    ));
    let outside = external("192.0.2.9");
    assert!(
        !allowed(&compiled, outside, p("x/a"), TCP, 80),
        "namespaceSelector {{}} is not the world"
    );
    assert!(allowed(&compiled, p("z/c"), p("x/a"), TCP, 80));
    assert!(
        allowed(&compiled, outside, p("x/b"), TCP, 80),
        "no `from`: every source"
    );
    assert!(allowed(&compiled, outside, p("x/c"), TCP, 80));
    assert!(
        !allowed(&compiled, external("192.0.2.200"), p("x/c"), TCP, 80),
        "except"
    );
    assert!(
        !allowed(&compiled, p("y/a"), p("x/c"), TCP, 80),
        "a pod outside the block"
    );
    // Traffic between two outside addresses is none of the policies' business.
    assert!(allowed(
        &compiled,
        outside,
        external("198.51.100.1"),
        TCP,
        80
    ));
}

#[test]
fn ip_blocks_match_pod_addresses_and_ipv6() {
    let mut w = world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v6-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - to:
    - ipBlock: {cidr: 'fd00::/64', except: ['fd00::2/128']}
  policyTypes: [Egress]
",
    );
    // Give y/a and y/b IPv6 addresses next to their IPv4 ones.
    w.endpoints[pod_index("y/a")].addresses.push(ip("fd00::1"));
    w.endpoints[pod_index("y/b")].addresses.push(ip("fd00::2"));
    let compiled = compile(w);
    let xa = p("x/a");
    let ya6 = Peer::Endpoint {
        id: EndpointId(4),
        addr: ip("fd00::1"),
    };
    let yb6 = Peer::Endpoint {
        id: EndpointId(5),
        addr: ip("fd00::2"),
    };
    assert!(
        allowed(&compiled, xa, ya6, TCP, 80),
        "the block holds y/a's IPv6 address"
    );
    assert!(
        !allowed(&compiled, xa, p("y/a"), TCP, 80),
        "but not its IPv4 one"
    );
    assert!(!allowed(&compiled, xa, yb6, TCP, 80), "except");
    assert!(allowed(&compiled, xa, external("fd00::99"), UDP, 53));
    assert!(!allowed(&compiled, xa, external("fd01::1"), UDP, 53));
}

#[test]
fn named_ports_resolve_on_the_destination() {
    // amazon-network-policy-controller-k8s#52 resolved them on the source. Here the
    // source names port 8080 `http` and the destination names port 80 `http`.
    let mut w = world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports:
    - port: http
",
    );
    w.endpoints[pod_index("x/a")]
        .ports
        .push(NamedPort::new("http", 80, Protocol::TCP));
    w.endpoints[pod_index("x/b")]
        .ports
        .push(NamedPort::new("http", 8080, Protocol::TCP));
    let compiled = compile(w);
    assert!(allowed(&compiled, p("x/b"), p("x/a"), TCP, 80));
    assert!(!allowed(&compiled, p("x/b"), p("x/a"), TCP, 8080));
    assert!(
        !allowed(&compiled, p("x/b"), p("x/a"), UDP, 80),
        "the name is TCP's"
    );
}

#[test]
fn egress_named_ports_resolve_on_each_destination_and_never_outside() {
    let mut w = world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-dns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {}
    ports:
    - {port: dns, protocol: UDP}
  - to:
    - ipBlock: {cidr: 10.0.2.0/24}
    ports:
    - port: metrics
  - to:
    - ipBlock: {cidr: 0.0.0.0/0}
    ports:
    - port: serve-81-tcp
",
    );
    // Two interfaces serve `dns` on different ports; one names it twice (two containers,
    // cilium/cilium#30003).
    w.endpoints[pod_index("y/a")]
        .ports
        .push(NamedPort::new("dns", 53, Protocol::UDP));
    w.endpoints[pod_index("z/b")]
        .ports
        .push(NamedPort::new("dns", 5353, Protocol::UDP));
    w.endpoints[pod_index("z/b")]
        .ports
        .push(NamedPort::new("dns", 5354, Protocol::UDP));
    // `metrics` behind an ipBlock (amazon-network-policy-controller-k8s#81).
    w.endpoints[pod_index("z/a")]
        .ports
        .push(NamedPort::new("metrics", 9100, Protocol::TCP));
    w.endpoints[pod_index("y/c")]
        .ports
        .push(NamedPort::new("metrics", 9100, Protocol::TCP));
    let compiled = compile(w);
    let xa = p("x/a");
    assert!(allowed(&compiled, xa, p("y/a"), UDP, 53));
    assert!(!allowed(&compiled, xa, p("y/a"), UDP, 5353));
    assert!(allowed(&compiled, xa, p("z/b"), UDP, 5353));
    assert!(allowed(&compiled, xa, p("z/b"), UDP, 5354));
    assert!(!allowed(&compiled, xa, p("z/b"), UDP, 53));
    assert!(
        !allowed(&compiled, xa, p("z/c"), UDP, 53),
        "z/c has no dns port"
    );
    assert!(
        allowed(&compiled, xa, p("z/a"), TCP, 9100),
        "z/a is in 10.0.2.0/24"
    );
    assert!(!allowed(&compiled, xa, p("y/c"), TCP, 9100), "y/c is not");
    assert!(
        allowed(&compiled, xa, p("y/b"), TCP, 81),
        "0.0.0.0/0 holds every pod"
    );
    assert!(
        !allowed(&compiled, xa, external("192.0.2.1"), TCP, 81),
        "a name never resolves outside"
    );
}

#[test]
fn protocols_without_ports() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all-ports, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tcp-only, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress:
  - ports: [{protocol: TCP}]
",
    ));
    const ICMP: u8 = 1;
    assert!(
        allowed(&compiled, p("x/b"), p("x/a"), ICMP, 0),
        "no ports: every protocol"
    );
    assert!(!allowed(&compiled, p("x/c"), p("x/a"), ICMP, 0));
    assert!(
        !allowed(&compiled, p("x/a"), p("x/b"), ICMP, 0),
        "ports listed: only those"
    );
    assert!(allowed(&compiled, p("x/a"), p("x/b"), TCP, 1));
    assert!(allowed(&compiled, p("x/a"), p("x/b"), TCP, 65535));
    assert!(!allowed(&compiled, p("x/a"), p("x/b"), SCTP, 1));
}

#[test]
fn the_first_allowing_rule_of_the_first_policy_is_reported() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-second, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 81}]
  - from: [{namespaceSelector: {}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-first, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 80}]
  - ports: [{port: 80, endPort: 81}]
",
    ));
    let decision = compiled.check(&conn(p("y/a"), p("x/a"), TCP, 81));
    let Verdict::Allowed(rule) = decision.ingress else {
        panic!("{decision:?}")
    };
    // a-first sorts first; its rule 1 is the first to allow port 81.
    assert_eq!(compiled.policy(rule.policy).name, "a-first");
    assert_eq!((rule.direction, rule.index), (Direction::Ingress, 1));
    assert_eq!(compiled.rules()[rule.ordinal as usize], rule);
    assert_eq!(decision.egress, Verdict::NotIsolated);

    let decision = compiled.check(&conn(p("y/a"), p("x/b"), TCP, 80));
    let Verdict::Allowed(rule) = decision.ingress else {
        panic!("{decision:?}")
    };
    assert_eq!(
        (compiled.policy(rule.policy).name.as_str(), rule.index),
        ("b-second", 1)
    );
}

#[test]
fn seed_form_network_and_load_balancer_peers() {
    let policies = policies(
        "
apiVersion: vswitch/v1alpha1
kind: NetworkPolicy
metadata: {namespace: default, name: my-network-policy}
spec:
  network: my-network
  networkInterfaceSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16}
    - objectSelector: {kind: NetworkInterface, matchLabels: {app: web}}
    - objectSelector: {kind: LoadBalancer, matchLabels: {app: web}}
    ports:
    - {protocol: TCP, port: 5432}
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/24}
    ports:
    - {protocol: TCP, port: 8080}
",
    );
    let endpoint = |id: u32, network: &str, app: &str, addr: &str| Endpoint {
        id: EndpointId(id),
        name: format!("{app}-{id}"),
        namespace: "default".to_owned(),
        network: network.to_owned(),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        addresses: vec![ip(addr)],
        ports: vec![],
    };
    let compiled = compile(World {
        namespaces: vec![Namespace::new("default", BTreeMap::new())],
        endpoints: vec![
            endpoint(1, "my-network", "db", "10.0.0.10"),
            endpoint(2, "my-network", "web", "10.0.0.20"),
            endpoint(3, "other", "web", "10.0.0.30"),
            endpoint(4, "other", "db", "10.0.0.40"),
        ],
        load_balancers: vec![LoadBalancer {
            name: "web-lb".to_owned(),
            namespace: "default".to_owned(),
            network: "my-network".to_owned(),
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            addresses: vec![ip("10.0.0.100")],
        }],
        policies,
    });
    let peer = |id: u32, addr: &str| Peer::Endpoint {
        id: EndpointId(id),
        addr: ip(addr),
    };
    let db = peer(1, "10.0.0.10");
    assert!(allowed(&compiled, peer(2, "10.0.0.20"), db, TCP, 5432));
    assert!(!allowed(&compiled, peer(2, "10.0.0.20"), db, TCP, 5433));
    assert!(
        !allowed(&compiled, peer(3, "10.0.0.30"), db, TCP, 5432),
        "a web interface of another Network is no peer"
    );
    assert!(
        allowed(&compiled, external("10.0.0.100"), db, TCP, 5432),
        "the LoadBalancer's address"
    );
    assert!(allowed(&compiled, external("172.17.3.4"), db, TCP, 5432));
    assert!(allowed(&compiled, db, external("10.0.0.7"), TCP, 8080));
    assert!(!allowed(&compiled, db, external("10.0.1.7"), TCP, 8080));
    assert!(
        !compiled.is_isolated(EndpointId(4), Direction::Ingress),
        "a db interface of another Network is not selected"
    );
}

#[test]
fn tables_are_shared_by_interfaces_selected_alike() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
",
    ));
    let stats = compiled.stats();
    assert_eq!(
        stats.tables, 2,
        "one per direction for x's three pods: {stats:?}"
    );
    assert_eq!(
        compiled
            .selecting_policies(EndpointId(1), Direction::Egress)
            .len(),
        1
    );
    assert!(
        compiled
            .selecting_policies(EndpointId(4), Direction::Egress)
            .is_empty()
    );
}

#[test]
fn unknown_interfaces_count_as_outside() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-pods, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {}}]
",
    ));
    let stranger = Peer::Endpoint {
        id: EndpointId(999),
        addr: ip("10.9.9.9"),
    };
    let decision = compiled.check(&conn(stranger, p("x/a"), TCP, 80));
    assert!(!decision.allowed, "not matched by selectors");
    let decision = compiled.check(&conn(p("x/a"), stranger, TCP, 80));
    assert_eq!(decision.ingress, Verdict::NotIsolated);
}

#[test]
fn duplicates_are_refused() {
    let mut w = world("");
    w.endpoints.push(endpoints(&[])[0].clone());
    assert_eq!(
        Compiled::compile(w).expect_err("duplicate id"),
        CompileError::DuplicateEndpoint(EndpointId(1))
    );
    let twice = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {}
";
    let err = Compiled::compile(world(&format!("{twice}\n---\n{twice}"))).expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "two policies are named x/p; names are unique per namespace"
    );
}

#[test]
fn explain_says_who_decided_and_why() {
    let compiled = compile(world(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
    ports:
    - port: 80
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-of-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
",
    ));
    let explain = |c: Connection| compiled.explain(&c, &compiled.check(&c)).to_string();

    let text = explain(conn(p("y/a"), p("x/a"), TCP, 80));
    assert_eq!(
        text,
        "TCP y/a (10.0.1.1) -> x/a (10.0.0.1) port 80: allowed
  egress from y/a: allowed by default: no policy of type Egress selects it
    namespace y has no policy of type Egress
  ingress to x/a: allowed by policy x/allow-y-80, ingress rule 0 (spec.ingress[0])
    y/a (10.0.1.1) matches from[0] (interfaces matching (all) in namespaces matching kubernetes.io/metadata.name=y); 80/TCP matches ports[0] (80/TCP)"
    );

    let text = explain(conn(p("z/a"), p("x/a"), TCP, 81));
    assert!(
        text.contains(
            "ingress to x/a: denied: isolated for ingress by 1 policy (x/allow-y-80), and no rule of them allows the connection:\n    x/allow-y-80 ingress[0]: z/a (10.0.2.1) matches no from (interfaces matching (all) in namespaces matching kubernetes.io/metadata.name=y), and 81/TCP is not in ports (80/TCP)"
        ),
        "{text}"
    );

    let text = explain(conn(p("x/b"), p("y/c"), TCP, 80));
    assert!(
        text.contains("egress from x/b: denied: isolated for egress by 1 policy (x/egress-of-b)")
            && text.contains("x/egress-of-b: has no egress rules: it allows no egress at all"),
        "{text}"
    );

    let text = explain(conn(p("x/c"), p("x/c"), TCP, 80));
    assert!(
        text.contains("egress from x/c: allowed by default: no policy of type Egress selects it\n    x/egress-of-b selects pod=b; the interface's labels are pod=c"),
        "{text}"
    );

    let text = explain(conn(external("192.0.2.1"), p("y/a"), UDP, 53));
    assert!(
        text.starts_with("UDP 192.0.2.1 (outside the switch) -> y/a (10.0.1.1) port 53: allowed\n  egress from 192.0.2.1: allowed: it is outside the switch"),
        "{text}"
    );
}
