//! Criterion micro-benchmarks of the `policy` crate: compiling a world of interfaces and
//! NetworkPolicies (control plane, once per change) and classifying the first packet of a
//! connection (datapath, once per new connection), at 0, 100, 1,000 and 10,000 policies.
//!
//! Run with `cargo bench -p perf --bench policy` (`-- --quick` for a short run);
//! `perf/README.md` says what each one measures. Before measuring, the check benchmark
//! verifies once that its connections get a mix of verdicts (allowed by a rule, denied,
//! not isolated) and panics otherwise, so that it does not measure a single shortcut.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use policy::{
    Compiled, Connection, Endpoint, EndpointId, LabelSelector, LabelSelectorRequirement, Labels,
    NamedPort, Namespace, NamespaceScope, Peer, PeerSelector, Policy, PortMatch, PortSpec,
    Protocol, Rule, SelectorOperator, Verdict, World,
};

/// Namespaces of the world; policies are spread evenly over them.
const NAMESPACES: u32 = 100;
/// Interfaces per namespace (2,000 in all).
const PER_NAMESPACE: u32 = 20;
/// Connections per iteration of the check benchmark.
const CONNECTIONS: usize = 256;
/// Policy counts measured.
const SIZES: [usize; 4] = [0, 100, 1_000, 10_000];

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn select(pairs: &[(&str, String)]) -> LabelSelector {
    LabelSelector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

fn port(protocol: Protocol, first: u16, last: u16) -> PortMatch {
    PortMatch {
        protocol,
        port: PortSpec::Range { first, last },
    }
}

fn named(name: &str) -> PortMatch {
    PortMatch {
        protocol: Protocol::TCP,
        port: PortSpec::Named(name.to_owned()),
    }
}

fn endpoint_addr(namespace: u32, index: u32) -> IpAddr {
    let n = u8::try_from(namespace).expect("fewer than 256 namespaces");
    let i = u8::try_from(index + 1).expect("fewer than 255 per namespace");
    IpAddr::V4(Ipv4Addr::new(10, n, 0, i))
}

/// 100 namespaces (team, env labels), 20 interfaces each (app, tier labels; IPv4, half
/// also IPv6; named ports http, metrics, dns), and `count` policies spread over the
/// namespaces in five shapes: pod selector peers with a numeric and a named port; a
/// namespace+pod selector peer with a port range; egress to an ipBlock with an except
/// (two protocols); an expression selector with ipBlock and namespace selector peers and
/// no ports; ingress plus egress to every namespace on a named port.
fn world(count: usize) -> World {
    let namespaces = (0..NAMESPACES)
        .map(|n| {
            Namespace::new(
                format!("ns-{n:03}"),
                labels(&[
                    ("team", format!("t{}", n % 10)),
                    ("env", if n % 2 == 0 { "prod" } else { "dev" }.to_owned()),
                ]),
            )
        })
        .collect();
    let mut endpoints = Vec::new();
    for n in 0..NAMESPACES {
        for i in 0..PER_NAMESPACE {
            let mut addresses = vec![endpoint_addr(n, i)];
            if i % 2 == 0 {
                addresses.push(IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    0,
                    0,
                    0,
                    0,
                    0,
                    u16::try_from(n).expect("small"),
                    u16::try_from(i + 1).expect("small"),
                )));
            }
            endpoints.push(Endpoint {
                id: EndpointId(n * PER_NAMESPACE + i),
                name: format!("nic-{i}"),
                namespace: format!("ns-{n:03}"),
                network: "default".to_owned(),
                labels: labels(&[
                    ("app", format!("a{}", i % 10)),
                    ("tier", format!("t{}", i % 3)),
                ]),
                addresses,
                ports: vec![
                    NamedPort::new("http", 8080, Protocol::TCP),
                    NamedPort::new(
                        "metrics",
                        9100 + u16::try_from(i % 2).expect("small"),
                        Protocol::TCP,
                    ),
                    NamedPort::new("dns", 53, Protocol::UDP),
                ],
            });
        }
    }
    let policies = (0..count)
        .map(|i| {
            let n = u32::try_from(i).expect("small") % NAMESPACES;
            let k = u32::try_from(i / 100).expect("small");
            let app = format!("a{}", k % 10);
            let other_app = format!("a{}", (k + 3) % 10);
            // Every namespace gets every shape (not one shape per namespace).
            let (selector, ingress, egress) = match (i + i / 100) % 5 {
                0 => (
                    select(&[("app", app)]),
                    Some(vec![Rule {
                        peers: vec![PeerSelector::Endpoints {
                            namespaces: NamespaceScope::Own,
                            selector: select(&[("app", other_app)]),
                        }],
                        ports: vec![port(Protocol::TCP, 8080, 8080), named("metrics")],
                    }]),
                    None,
                ),
                1 => (
                    select(&[("tier", format!("t{}", k % 3))]),
                    Some(vec![Rule {
                        peers: vec![PeerSelector::Endpoints {
                            namespaces: NamespaceScope::Matching(select(&[(
                                "team",
                                format!("t{}", k % 10),
                            )])),
                            selector: select(&[("tier", format!("t{}", (k + 1) % 3))]),
                        }],
                        ports: vec![port(Protocol::TCP, 30_000, 32_767)],
                    }]),
                    None,
                ),
                2 => {
                    let octet = u8::try_from(k % 100).expect("small");
                    (
                        select(&[("app", app)]),
                        None,
                        Some(vec![Rule {
                            peers: vec![PeerSelector::IpBlock {
                                cidr: format!("10.{octet}.0.0/16").parse().expect("cidr"),
                                except: vec![format!("10.{octet}.0.0/29").parse().expect("cidr")],
                            }],
                            ports: vec![port(Protocol::TCP, 443, 443), port(Protocol::UDP, 53, 53)],
                        }]),
                    )
                }
                3 => {
                    let octet = u8::try_from(k % 250).expect("small");
                    (
                        LabelSelector {
                            match_labels: Labels::new(),
                            match_expressions: vec![LabelSelectorRequirement {
                                key: "app".to_owned(),
                                operator: SelectorOperator::In,
                                values: vec![app, other_app],
                            }],
                        },
                        Some(vec![Rule {
                            peers: vec![
                                PeerSelector::IpBlock {
                                    cidr: format!("192.168.{octet}.0/24").parse().expect("cidr"),
                                    except: Vec::new(),
                                },
                                PeerSelector::Endpoints {
                                    namespaces: NamespaceScope::Matching(select(&[(
                                        "env",
                                        "prod".to_owned(),
                                    )])),
                                    selector: LabelSelector::default(),
                                },
                            ],
                            ports: Vec::new(),
                        }]),
                        None,
                    )
                }
                _ => (
                    select(&[("tier", format!("t{}", k % 3))]),
                    Some(vec![Rule {
                        peers: Vec::new(),
                        ports: vec![port(Protocol::TCP, 80, 80)],
                    }]),
                    Some(vec![Rule {
                        peers: vec![PeerSelector::Endpoints {
                            namespaces: NamespaceScope::Matching(LabelSelector::default()),
                            selector: select(&[("app", app)]),
                        }],
                        ports: vec![named("http")],
                    }]),
                ),
            };
            Policy {
                namespace: format!("ns-{n:03}"),
                name: format!("policy-{i:05}"),
                network: None,
                selector,
                ingress,
                egress,
            }
        })
        .collect();
    World {
        namespaces,
        endpoints,
        load_balancers: Vec::new(),
        policies,
    }
}

/// `CONNECTIONS` connections: interface to interface within and across namespaces, some
/// from and to outside addresses, over the ports the policies name and some they do not.
fn connections() -> Vec<Connection> {
    let total = NAMESPACES * PER_NAMESPACE;
    let ports: [(u8, u16); 8] = [
        (6, 8080),
        (6, 9100),
        (6, 31_000),
        (6, 443),
        (17, 53),
        (6, 80),
        (6, 22),
        (132, 8080),
    ];
    (0..CONNECTIONS)
        .map(|i| {
            let i = u32::try_from(i).expect("small");
            let a = i.wrapping_mul(7919) % total;
            let b = i.wrapping_mul(104_729).wrapping_add(13) % total;
            let endpoint = |id: u32| Peer::Endpoint {
                id: EndpointId(id),
                addr: endpoint_addr(id / PER_NAMESPACE, id % PER_NAMESPACE),
            };
            let octet = u8::try_from(i % 250).expect("small");
            let (src, dst) = match i % 8 {
                0 => (
                    Peer::External(IpAddr::V4(Ipv4Addr::new(192, 168, octet, 7))),
                    endpoint(b),
                ),
                1 => (
                    endpoint(a),
                    Peer::External(IpAddr::V4(Ipv4Addr::new(10, octet, 3, 3))),
                ),
                // Within a namespace, where most selector peers are.
                2..=4 => (
                    endpoint(a),
                    endpoint(a / PER_NAMESPACE * PER_NAMESPACE + b % PER_NAMESPACE),
                ),
                _ => (endpoint(a), endpoint(b)),
            };
            let (protocol, dst_port) = ports[(i as usize / 8 + i as usize) % ports.len()];
            Connection {
                src,
                dst,
                protocol,
                dst_port,
            }
        })
        .collect()
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy/compile");
    group.sample_size(10);
    for count in SIZES {
        let world = world(count);
        let compiled = Compiled::compile(world.clone()).expect("compiles");
        eprintln!("policy/compile/{count}: {:?}", compiled.stats());
        group.throughput(Throughput::Elements(
            u64::try_from(count.max(1)).expect("fits"),
        ));
        group.bench_with_input(BenchmarkId::from_parameter(count), &world, |b, world| {
            b.iter_batched(
                || world.clone(),
                |world| Compiled::compile(black_box(world)).expect("compiles"),
                BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy/check");
    let connections = connections();
    for count in SIZES {
        let compiled = Compiled::compile(world(count)).expect("compiles");
        // The connections must take every path, not one shortcut.
        let mut seen = BTreeMap::new();
        for connection in &connections {
            let decision = compiled.check(connection);
            for verdict in [decision.egress, decision.ingress] {
                let kind = match verdict {
                    Verdict::NotIsolated => "not isolated",
                    Verdict::Allowed(_) => "allowed",
                    Verdict::Denied(_) => "denied",
                };
                *seen.entry(kind).or_insert(0usize) += 1;
            }
        }
        eprintln!("policy/check/{count}: verdicts per side {seen:?}");
        if count > 0 {
            assert!(
                seen.len() == 3,
                "{count} policies: the connections must meet every kind of verdict: {seen:?}"
            );
        }
        group.throughput(Throughput::Elements(
            u64::try_from(connections.len()).expect("fits"),
        ));
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &compiled,
            |b, compiled| {
                b.iter(|| {
                    let mut allowed = 0u32;
                    for connection in &connections {
                        allowed += u32::from(compiled.check(black_box(connection)).allowed);
                    }
                    allowed
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, compile, check);
criterion_main!(benches);
