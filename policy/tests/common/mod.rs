//! The model Kubernetes' netpol e2e suite probes (`test/e2e/network/netpol/model.go`):
//! namespaces x, y, z, each with pods a, b, c labelled `pod: <name>`, every pod serving
//! ports 80 and 81 over TCP, UDP and SCTP under the names `serve-<port>-<protocol>`; and
//! a truth table of the 81 (source, destination) pairs, as upstream's `Reachability`
//! (`reachability.go`), printed in full on a mismatch.

#![allow(dead_code)] // Each test file uses its own part of this.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use policy::{
    Compiled, Connection, Endpoint, EndpointId, NamedPort, Namespace, NetworkPolicy, Peer, Policy,
    Protocol, World,
};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// Index of a pod string `x/a` in the 9 pods.
pub fn pod_index(pod: &str) -> usize {
    let (ns, name) = pod.split_once('/').expect("ns/pod");
    let n = NAMESPACES.iter().position(|x| *x == ns).expect("namespace");
    let p = PODS.iter().position(|x| *x == name).expect("pod");
    n * 3 + p
}

pub fn pod_name(index: usize) -> String {
    format!("{}/{}", NAMESPACES[index / 3], PODS[index % 3])
}

/// The address of pod `index`: 10.0.<namespace>.<pod + 1>.
pub fn pod_addr(index: usize) -> IpAddr {
    let n = u8::try_from(index / 3).expect("small");
    let p = u8::try_from(index % 3).expect("small");
    IpAddr::V4(Ipv4Addr::new(10, 0, n, p + 1))
}

pub fn pod_peer(index: usize) -> Peer {
    Peer::Endpoint {
        id: EndpointId(u32::try_from(index).expect("small") + 1),
        addr: pod_addr(index),
    }
}

/// The 3 x 3 pods, with extra labels per pod (`x/b` → labels).
pub fn endpoints(extra: &[(&str, &[(&str, &str)])]) -> Vec<Endpoint> {
    (0..9)
        .map(|index| {
            let mut labels = BTreeMap::from([("pod".to_owned(), PODS[index % 3].to_owned())]);
            for (pod, more) in extra {
                if pod_index(pod) == index {
                    for (k, v) in *more {
                        labels.insert((*k).to_owned(), (*v).to_owned());
                    }
                }
            }
            let mut ports = Vec::new();
            for port in [80, 81] {
                for (protocol, name) in [
                    (Protocol::TCP, "tcp"),
                    (Protocol::UDP, "udp"),
                    (Protocol::SCTP, "sctp"),
                ] {
                    ports.push(NamedPort::new(
                        format!("serve-{port}-{name}"),
                        port,
                        protocol,
                    ));
                }
            }
            Endpoint {
                id: EndpointId(u32::try_from(index).expect("small") + 1),
                name: PODS[index % 3].to_owned(),
                namespace: NAMESPACES[index / 3].to_owned(),
                network: "default".to_owned(),
                labels,
                addresses: vec![pod_addr(index)],
                ports,
            }
        })
        .collect()
}

/// The namespaces, with extra labels per namespace.
pub fn namespaces(extra: &[(&str, &[(&str, &str)])]) -> Vec<Namespace> {
    NAMESPACES
        .iter()
        .map(|ns| {
            let mut labels = BTreeMap::new();
            for (name, more) in extra {
                if name == ns {
                    for (k, v) in *more {
                        labels.insert((*k).to_owned(), (*v).to_owned());
                    }
                }
            }
            Namespace::new(*ns, labels)
        })
        .collect()
}

/// Parses a YAML stream of policies (documents separated by `---`) and normalizes them.
pub fn policies(yaml: &str) -> Vec<Policy> {
    yaml.split("\n---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| {
            let written: NetworkPolicy =
                serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
            written.to_policy().unwrap_or_else(|e| panic!("{e}\n{doc}"))
        })
        .collect()
}

/// The default world with these policies.
pub fn world(yaml: &str) -> World {
    World {
        namespaces: namespaces(&[]),
        endpoints: endpoints(&[]),
        load_balancers: Vec::new(),
        policies: policies(yaml),
    }
}

pub fn compile(world: World) -> Compiled {
    Compiled::compile(world).expect("compiles")
}

/// Expected or observed connectivity of the 81 pairs: `[from][to]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Reachability(pub [[bool; 9]; 9]);

/// A set of pods: a namespace, a pod name, both or neither (upstream's `Peer`).
#[derive(Clone, Copy, Default)]
pub struct Pods<'a> {
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
}

pub fn all() -> Pods<'static> {
    Pods::default()
}

pub fn ns(namespace: &str) -> Pods<'_> {
    Pods {
        namespace: Some(namespace),
        pod: None,
    }
}

pub fn pod(pod: &str) -> Pods<'_> {
    let (namespace, name) = pod.split_once('/').expect("ns/pod");
    Pods {
        namespace: Some(namespace),
        pod: Some(name),
    }
}

impl Pods<'_> {
    fn contains(&self, index: usize) -> bool {
        self.namespace.is_none_or(|n| n == NAMESPACES[index / 3])
            && self.pod.is_none_or(|p| p == PODS[index % 3])
    }
}

impl Reachability {
    pub fn new(default: bool) -> Reachability {
        Reachability([[default; 9]; 9])
    }

    pub fn expect_peer(&mut self, from: Pods<'_>, to: Pods<'_>, allowed: bool) -> &mut Self {
        for f in 0..9 {
            for t in 0..9 {
                if from.contains(f) && to.contains(t) {
                    self.0[f][t] = allowed;
                }
            }
        }
        self
    }

    pub fn expect(&mut self, from: &str, to: &str, allowed: bool) -> &mut Self {
        self.0[pod_index(from)][pod_index(to)] = allowed;
        self
    }

    pub fn expect_all_ingress(&mut self, to: &str, allowed: bool) -> &mut Self {
        self.expect_peer(all(), pod(to), allowed)
    }

    pub fn expect_all_egress(&mut self, from: &str, allowed: bool) -> &mut Self {
        self.expect_peer(pod(from), all(), allowed)
    }

    /// Upstream's table: `.` connected, `X` blocked.
    pub fn table(&self) -> String {
        let mut out = String::from("-");
        for t in 0..9 {
            out.push('\t');
            out.push_str(&pod_name(t));
        }
        for f in 0..9 {
            out.push('\n');
            out.push_str(&pod_name(f));
            for t in 0..9 {
                out.push('\t');
                out.push(if self.0[f][t] { '.' } else { 'X' });
            }
        }
        out
    }
}

/// Probes the 81 pairs on `protocol`/`port`; also checks that every decision's
/// explanation agrees with it.
pub fn probe(compiled: &Compiled, protocol: u8, port: u16) -> Reachability {
    let mut observed = Reachability::new(false);
    for f in 0..9 {
        for t in 0..9 {
            let connection = Connection {
                src: pod_peer(f),
                dst: pod_peer(t),
                protocol,
                dst_port: port,
            };
            let decision = compiled.check(&connection);
            observed.0[f][t] = decision.allowed;
            let text = compiled.explain(&connection, &decision).to_string();
            assert!(
                !text.contains("a bug") && !text.contains("unexpected"),
                "explanation disagrees with the verdict:\n{text}"
            );
        }
    }
    observed
}

/// Upstream's `ValidateOrFail`: the observed table must equal the expected one.
#[track_caller]
pub fn validate(compiled: &Compiled, protocol: u8, port: u16, expected: &Reachability) {
    let observed = probe(compiled, protocol, port);
    if &observed != expected {
        let mut comparison = Reachability::new(true);
        for f in 0..9 {
            for t in 0..9 {
                comparison.0[f][t] = observed.0[f][t] == expected.0[f][t];
            }
        }
        panic!(
            "protocol {protocol} port {port}\nexpected:\n{}\n\nobserved:\n{}\n\ncomparison (X = differs):\n{}",
            expected.table(),
            observed.table(),
            comparison.table()
        );
    }
}
