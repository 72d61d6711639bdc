//! Property test: on random small worlds, the compiled classifier gives exactly the
//! verdicts of a naive evaluator written straight from the semantics (loop over the
//! policies sorted by namespace and name, over their rules, over peers and ports), down
//! to which rule allowed and which policies isolate.
//!
//! The worlds mix what the tables treat separately: selector peers in the own namespace
//! and by namespace selector, seed-form Networks, LoadBalancer peers, overlapping ipBlocks
//! with excepts (IPv4 and IPv6), numeric ports, ranges, protocol-only ports and named
//! ports resolving per destination, and connections from and to interfaces (on each of
//! their addresses), outside addresses, outside addresses equal to an interface's, and
//! unknown interface ids. `explain` is held to the same verdicts on part of them.

#![allow(clippy::tests_outside_test_module)] // Integration tests are test modules already.

use std::net::IpAddr;

use ipnet::IpNet;
use policy::{
    Compiled, Connection, Direction, Endpoint, EndpointId, LabelSelector, LabelSelectorRequirement,
    Labels, LoadBalancer, METADATA_NAME_LABEL, NamedPort, Namespace, NamespaceScope, Peer,
    PeerSelector, Policy, PortMatch, PortSpec, Protocol, Rule, SelectorOperator, Verdict, World,
};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

// ---- The reference evaluator.

/// A side's verdict in plain terms: (namespace, name) of policies, rule direction/index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    NotIsolated,
    Allowed {
        policy: (String, String),
        direction: Direction,
        index: usize,
    },
    Denied(Vec<(String, String)>),
}

fn namespace_labels(world: &World, namespace: &str) -> Labels {
    let mut labels = world
        .namespaces
        .iter()
        .find(|ns| ns.name == namespace)
        .map(|ns| ns.labels.clone())
        .unwrap_or_default();
    labels.insert(METADATA_NAME_LABEL.to_owned(), namespace.to_owned());
    labels
}

fn endpoint<'w>(world: &'w World, peer: &Peer) -> Option<&'w Endpoint> {
    match peer {
        Peer::Endpoint { id, .. } => world.endpoints.iter().find(|e| e.id == *id),
        Peer::External(_) => None,
    }
}

fn in_network(policy: &Policy, network: &str) -> bool {
    policy.network.as_deref().is_none_or(|n| n == network)
}

fn selects(policy: &Policy, e: &Endpoint) -> bool {
    e.namespace == policy.namespace
        && in_network(policy, &e.network)
        && policy.selector.matches(&e.labels)
}

fn peer_matches(world: &World, policy: &Policy, peer: &PeerSelector, remote: &Peer) -> bool {
    let addr = remote.addr();
    match peer {
        PeerSelector::Endpoints {
            namespaces,
            selector,
        } => match endpoint(world, remote) {
            None => false,
            Some(e) => {
                let namespace_ok = match namespaces {
                    NamespaceScope::Own => e.namespace == policy.namespace,
                    NamespaceScope::Matching(s) => {
                        s.matches(&namespace_labels(world, &e.namespace))
                    }
                };
                namespace_ok && in_network(policy, &e.network) && selector.matches(&e.labels)
            }
        },
        PeerSelector::LoadBalancers { selector } => world.load_balancers.iter().any(|lb| {
            lb.namespace == policy.namespace
                && in_network(policy, &lb.network)
                && selector.matches(&lb.labels)
                && lb.addresses.contains(&addr)
        }),
        PeerSelector::IpBlock { cidr, except } => {
            cidr.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
        }
    }
}

fn port_matches(world: &World, port: &PortMatch, c: &Connection) -> bool {
    if port.protocol.number() != c.protocol {
        return false;
    }
    match &port.port {
        PortSpec::Any => true,
        PortSpec::Range { first, last } => *first <= c.dst_port && c.dst_port <= *last,
        PortSpec::Named(name) => endpoint(world, &c.dst).is_some_and(|d| {
            d.ports
                .iter()
                .any(|p| &p.name == name && p.protocol == port.protocol && p.port == c.dst_port)
        }),
    }
}

fn rule_matches(
    world: &World,
    policy: &Policy,
    rule: &Rule,
    remote: &Peer,
    c: &Connection,
) -> bool {
    (rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(world, policy, p, remote)))
        && (rule.ports.is_empty() || rule.ports.iter().any(|p| port_matches(world, p, c)))
}

fn reference_side(world: &World, c: &Connection, direction: Direction) -> Expected {
    let (local, remote) = match direction {
        Direction::Egress => (&c.src, &c.dst),
        Direction::Ingress => (&c.dst, &c.src),
    };
    let Some(local) = endpoint(world, local) else {
        return Expected::NotIsolated;
    };
    let mut sorted: Vec<&Policy> = world.policies.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let selecting: Vec<&Policy> = sorted
        .into_iter()
        .filter(|p| p.rules(direction).is_some() && selects(p, local))
        .collect();
    if selecting.is_empty() {
        return Expected::NotIsolated;
    }
    for policy in &selecting {
        for (index, rule) in policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if rule_matches(world, policy, rule, remote, c) {
                return Expected::Allowed {
                    policy: (policy.namespace.clone(), policy.name.clone()),
                    direction,
                    index,
                };
            }
        }
    }
    Expected::Denied(
        selecting
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect(),
    )
}

fn compiled_side(compiled: &Compiled, verdict: Verdict) -> Expected {
    let name = |id| {
        let p = compiled.policy(id);
        (p.namespace.clone(), p.name.clone())
    };
    match verdict {
        Verdict::NotIsolated => Expected::NotIsolated,
        Verdict::Allowed(rule) => Expected::Allowed {
            policy: name(rule.policy),
            direction: rule.direction,
            index: rule.index as usize,
        },
        Verdict::Denied(isolation) => Expected::Denied(
            compiled
                .isolating_policies(isolation)
                .iter()
                .map(|&id| name(id))
                .collect(),
        ),
    }
}

// ---- Random worlds.

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const NETWORKS: [&str; 2] = ["net0", "net1"];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn net(text: &str) -> IpNet {
    text.parse().expect("cidr")
}

fn labels_strategy() -> impl Strategy<Value = Labels> {
    (
        select(vec![None, Some("a0"), Some("a1"), Some("a2")]),
        select(vec![None, Some("t0"), Some("t1")]),
    )
        .prop_map(|(app, tier)| {
            let mut labels = Labels::new();
            if let Some(app) = app {
                labels.insert("app".to_owned(), app.to_owned());
            }
            if let Some(tier) = tier {
                labels.insert("tier".to_owned(), tier.to_owned());
            }
            labels
        })
}

fn requirement_strategy() -> impl Strategy<Value = LabelSelectorRequirement> {
    (
        select(vec!["app", "tier", "team"]),
        select(vec![
            SelectorOperator::In,
            SelectorOperator::NotIn,
            SelectorOperator::Exists,
            SelectorOperator::DoesNotExist,
        ]),
        subsequence(vec!["a0", "a1", "t0", "t1"], 1..=2),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key: key.to_owned(),
            values: match operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    values.into_iter().map(str::to_owned).collect()
                }
                _ => Vec::new(),
            },
            operator,
        })
}

fn selector_strategy() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        3 => Just(LabelSelector::default()),
        2 => labels_strategy().prop_map(|labels| LabelSelector { match_labels: labels, match_expressions: vec![] }),
        1 => prop::collection::vec(requirement_strategy(), 1..=2)
            .prop_map(|exprs| LabelSelector { match_labels: Labels::new(), match_expressions: exprs }),
    ]
}

fn block_strategy() -> impl Strategy<Value = PeerSelector> {
    let cidrs = vec![
        "10.0.0.0/24",
        "10.0.0.0/29",
        "10.0.0.4/30",
        "10.0.0.0/8",
        "0.0.0.0/0",
        "10.0.1.0/24",
        "192.0.2.0/24",
        "fd00::/64",
        "::/0",
    ];
    let holes = vec![
        "10.0.0.2/32",
        "10.0.0.4/31",
        "10.0.0.0/30",
        "10.0.1.0/25",
        "192.0.2.128/25",
        "fd00::1/128",
        "fd00::/120",
        "10.0.0.0/16",
    ];
    (select(cidrs), subsequence(holes, 0..=3)).prop_map(|(cidr, holes)| {
        let cidr = net(cidr);
        PeerSelector::IpBlock {
            cidr,
            except: holes
                .into_iter()
                .map(net)
                .filter(|h| cidr.contains(h) && h.prefix_len() > cidr.prefix_len())
                .collect(),
        }
    })
}

fn peer_strategy() -> impl Strategy<Value = PeerSelector> {
    prop_oneof![
        3 => (prop::option::of(selector_strategy()), selector_strategy()).prop_map(|(ns, selector)| {
            PeerSelector::Endpoints {
                namespaces: ns.map_or(NamespaceScope::Own, NamespaceScope::Matching),
                selector,
            }
        }),
        1 => selector_strategy().prop_map(|selector| PeerSelector::LoadBalancers { selector }),
        2 => block_strategy(),
    ]
}

fn protocol_strategy() -> impl Strategy<Value = Protocol> {
    select(vec![Protocol::TCP, Protocol::UDP, Protocol::SCTP])
}

fn port_strategy() -> impl Strategy<Value = PortMatch> {
    let spec = prop_oneof![
        1 => Just(PortSpec::Any),
        3 => (52u16..=83, 0u16..=3).prop_map(|(first, extra)| PortSpec::Range { first, last: first + extra }),
        2 => select(vec!["http", "dns", "m", "none"]).prop_map(|n| PortSpec::Named(n.to_owned())),
    ];
    (protocol_strategy(), spec).prop_map(|(protocol, port)| PortMatch { protocol, port })
}

fn rule_strategy() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(peer_strategy(), 0..=3),
        prop::collection::vec(port_strategy(), 0..=2),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn rules_strategy() -> impl Strategy<Value = Option<Vec<Rule>>> {
    prop::option::weighted(0.7, prop::collection::vec(rule_strategy(), 0..=3))
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        select(NAMESPACES.to_vec()),
        prop::option::weighted(0.25, select(NETWORKS.to_vec())),
        selector_strategy(),
        rules_strategy(),
        rules_strategy(),
    )
        .prop_map(|(namespace, network, selector, ingress, egress)| Policy {
            namespace: namespace.to_owned(),
            name: String::new(),
            network: network.map(str::to_owned),
            selector,
            ingress,
            egress,
        })
}

fn named_ports_strategy() -> impl Strategy<Value = Vec<NamedPort>> {
    subsequence(
        vec![
            NamedPort::new("http", 80, Protocol::TCP),
            NamedPort::new("http", 8080, Protocol::TCP),
            NamedPort::new("dns", 53, Protocol::UDP),
            NamedPort::new("dns", 53, Protocol::TCP),
            NamedPort::new("m", 81, Protocol::SCTP),
            NamedPort::new("m", 82, Protocol::TCP),
        ],
        0..=3,
    )
}

fn endpoint_strategy() -> impl Strategy<Value = (String, String, Labels, bool, Vec<NamedPort>)> {
    (
        select(NAMESPACES.to_vec()),
        select(NETWORKS.to_vec()),
        labels_strategy(),
        any::<bool>(),
        named_ports_strategy(),
    )
        .prop_map(|(ns, network, labels, v6, ports)| {
            (ns.to_owned(), network.to_owned(), labels, v6, ports)
        })
}

fn world_strategy() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(
            (select(vec![None, Some("t0"), Some("t1")]), any::<bool>()),
            3,
        ),
        prop::collection::vec(endpoint_strategy(), 2..=6),
        prop::collection::vec(
            (
                select(NAMESPACES.to_vec()),
                select(NETWORKS.to_vec()),
                labels_strategy(),
            ),
            0..=2,
        ),
        prop::collection::vec(policy_strategy(), 0..=5),
    )
        .prop_map(|(namespace_labels, endpoints, lbs, policies)| {
            let namespaces = NAMESPACES
                .iter()
                .zip(namespace_labels)
                .map(|(name, (team, env))| {
                    let mut labels = Labels::new();
                    if let Some(team) = team {
                        labels.insert("team".to_owned(), team.to_owned());
                    }
                    if env {
                        labels.insert("app".to_owned(), "a0".to_owned());
                    }
                    Namespace::new(*name, labels)
                })
                .collect();
            let endpoints = endpoints
                .into_iter()
                .enumerate()
                .map(|(i, (namespace, network, labels, v6, ports))| {
                    let mut addresses = vec![ip(&format!("10.0.0.{}", i + 1))];
                    if v6 {
                        addresses.push(ip(&format!("fd00::{}", i + 1)));
                    }
                    Endpoint {
                        id: EndpointId(u32::try_from(i).expect("small") * 7 + 3),
                        name: format!("e{i}"),
                        namespace,
                        network,
                        labels,
                        addresses,
                        ports,
                    }
                })
                .collect();
            let load_balancers = lbs
                .into_iter()
                .enumerate()
                .map(|(i, (namespace, network, labels))| LoadBalancer {
                    name: format!("lb{i}"),
                    namespace: namespace.to_owned(),
                    network: network.to_owned(),
                    labels,
                    addresses: vec![ip(&format!("10.0.1.{}", i + 1))],
                })
                .collect();
            let policies = policies
                .into_iter()
                .enumerate()
                .map(|(i, mut policy)| {
                    // Names out of order, so that sorting matters.
                    policy.name = format!("p{}", (i * 3) % 5);
                    policy
                })
                .collect::<Vec<_>>();
            // Unique (namespace, name): drop repeats.
            let mut seen = std::collections::BTreeSet::new();
            let policies = policies
                .into_iter()
                .filter(|p| seen.insert((p.namespace.clone(), p.name.clone())))
                .collect();
            World {
                namespaces,
                endpoints,
                load_balancers,
                policies,
            }
        })
}

/// Every peer to try: each interface on each of its addresses, outside addresses (one of
/// them an interface's own address, one a LoadBalancer's), an unknown interface id.
fn peers(world: &World) -> Vec<Peer> {
    let mut peers: Vec<Peer> = world
        .endpoints
        .iter()
        .flat_map(|e| {
            e.addresses
                .iter()
                .map(|&addr| Peer::Endpoint { id: e.id, addr })
        })
        .collect();
    for addr in [
        "10.0.0.1",
        "10.0.0.5",
        "192.0.2.130",
        "8.8.8.8",
        "fd00::5",
        "10.0.1.1",
        "2001:db8::1",
    ] {
        peers.push(Peer::External(ip(addr)));
    }
    peers.push(Peer::Endpoint {
        id: EndpointId(1),
        addr: ip("10.0.0.9"),
    });
    peers
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn compiled_equals_the_reference(world in world_strategy()) {
        let compiled = Compiled::compile(world.clone()).expect("compiles");
        let peers = peers(&world);
        for &src in &peers {
            for &dst in &peers {
                for protocol in [6u8, 17, 132, 1] {
                    for dst_port in [53u16, 80, 81, 82, 83, 8080] {
                        let c = Connection { src, dst, protocol, dst_port };
                        let decision = compiled.check(&c);
                        let egress = reference_side(&world, &c, Direction::Egress);
                        let ingress = reference_side(&world, &c, Direction::Ingress);
                        prop_assert_eq!(compiled_side(&compiled, decision.egress), egress, "egress of {:?}", c);
                        prop_assert_eq!(compiled_side(&compiled, decision.ingress), ingress, "ingress of {:?}", c);
                        prop_assert_eq!(
                            decision.allowed,
                            decision.egress.allows() && decision.ingress.allows()
                        );
                        if protocol == 6 && dst_port == 80 {
                            // explain re-derives the why on the slow path: it must agree.
                            let text = compiled.explain(&c, &decision).to_string();
                            prop_assert!(!text.contains("a bug") && !text.contains("unexpected"), "{}", text);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_reference_itself_on_a_known_case() {
    // Guards the reference against being wrong in the same way as the compiler.
    let e = |id: u32, ns: &str, app: &str, addr: &str| Endpoint {
        id: EndpointId(id),
        name: format!("e{id}"),
        namespace: ns.to_owned(),
        network: "net0".to_owned(),
        labels: Labels::from([("app".to_owned(), app.to_owned())]),
        addresses: vec![ip(addr)],
        ports: vec![],
    };
    let world = World {
        namespaces: vec![],
        endpoints: vec![e(1, "n0", "a0", "10.0.0.1"), e(2, "n1", "a1", "10.0.0.2")],
        load_balancers: vec![],
        policies: vec![Policy {
            namespace: "n0".to_owned(),
            name: "p".to_owned(),
            network: None,
            selector: LabelSelector::default(),
            ingress: Some(vec![Rule {
                peers: vec![PeerSelector::Endpoints {
                    namespaces: NamespaceScope::Matching(LabelSelector::with_labels([(
                        METADATA_NAME_LABEL,
                        "n1",
                    )])),
                    selector: LabelSelector::default(),
                }],
                ports: vec![],
            }]),
            egress: None,
        }],
    };
    let c = |src: u32, dst: u32| Connection {
        src: Peer::Endpoint {
            id: EndpointId(src),
            addr: ip(&format!("10.0.0.{src}")),
        },
        dst: Peer::Endpoint {
            id: EndpointId(dst),
            addr: ip(&format!("10.0.0.{dst}")),
        },
        protocol: 6,
        dst_port: 80,
    };
    assert!(matches!(
        reference_side(&world, &c(2, 1), Direction::Ingress),
        Expected::Allowed { .. }
    ));
    assert_eq!(
        reference_side(&world, &c(1, 1), Direction::Ingress),
        Expected::Denied(vec![("n0".to_owned(), "p".to_owned())])
    );
    assert_eq!(
        reference_side(&world, &c(1, 2), Direction::Ingress),
        Expected::NotIsolated
    );
}
