//! The rule sets of the `policy` scenario, written once as a small logical model and
//! rendered twice: as Kubernetes NetworkPolicies for vswitchd ([`kubernetes_documents`]) and
//! as an nftables ruleset for the kernel ([`nftables`]).
//!
//! [`generate`] makes N policies that all select the two measured interfaces (both carry
//! [`SELECTED`]) for ingress and egress. The first N-1 miss the measured traffic in four
//! rotating shapes, so that a classifier has to look at addresses, selectors, protocols and
//! ports to tell:
//!
//! 0. `ipBlock`s of their own (a /24 with an `except`, and a second /24) on a port range of
//!    their own;
//! 1. pod, namespace, and namespace-and-pod selectors on labels no interface carries;
//! 2. an `ipBlock` of the measured subnet, on other ports (ingress), and of the subnet minus
//!    the server on the measured ports (egress);
//! 3. a pod selector matching both measured interfaces, on other ports and on the measured
//!    port numbers with the other protocol.
//!
//! The last policy alone allows the measured traffic: ingress from the client, egress to the
//! server, on TCP [`iperf::PORT`] and [`connrate::PORT`] and on UDP [`latency::PORT`] (the
//! harness's connectivity check). With N = 0 there is no policy at all.
//!
//! The nftables rendering is what a translator resolving selectors to addresses would load,
//! the way Calico lays out its chains: two base chains in the `forward` hook (egress of the
//! source at priority filter - 1, then ingress of the destination at filter), each starting
//! with `ct state established,related accept` (a stateful firewall: only the first packet of
//! a connection meets the rules); a verdict map from an interface's address to its chain; in
//! it, one `jump` per policy that selects it, in policy order, then `drop`; and one chain per
//! policy and direction with one rule per Kubernetes rule, whose peers (address intervals:
//! an `except` is cut out of its block) and ports (protocol and port range) are one
//! concatenated interval set. A rule whose peers select no address here is left out (it
//! cannot match; a comment says so).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use crate::tools::{connrate, iperf, latency};

/// The Kubernetes namespace of the policies and interfaces.
pub const NAMESPACE: &str = "default";

/// The label both measured interfaces carry and every policy's `podSelector` matches.
pub const SELECTED: (&str, &str) = ("vsperf", "policy");

/// The label key telling the client from the server (values [`CLIENT`], [`SERVER`]).
pub const ROLE: &str = "vsperf-role";
/// The client's [`ROLE`].
pub const CLIENT: &str = "client";
/// The server's [`ROLE`].
pub const SERVER: &str = "server";

/// The most policies [`generate`] makes: each filler policy gets its own /24 in
/// 10.128.0.0/10 and another in 10.192.0.0/10.
pub const MAX_POLICIES: usize = 16_384;

/// Label key/value pairs.
pub type Labels = BTreeMap<String, String>;

/// An IPv4 prefix, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix: u8,
}

impl Cidr {
    /// `addr/prefix` with the host bits cleared (prefix capped at 32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Cidr {
        let prefix = prefix.min(32);
        Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// First and last address, as numbers.
    pub fn range(self) -> (u32, u32) {
        let first = u32::from(self.addr);
        (first, first | !mask(self.prefix))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// The protocols the rule sets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// As Kubernetes writes it.
    pub fn kubernetes(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    /// As nftables writes it.
    pub fn nftables(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A protocol and a port range (`first == last`: one port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// The protocol.
    pub protocol: Protocol,
    /// The first port.
    pub first: u16,
    /// The last port (Kubernetes' `endPort`).
    pub last: u16,
}

impl Ports {
    /// One port.
    pub fn one(protocol: Protocol, port: u16) -> Ports {
        Ports {
            protocol,
            first: port,
            last: port,
        }
    }

    /// `first..=last`.
    pub fn range(protocol: Protocol, first: u16, last: u16) -> Ports {
        Ports {
            protocol,
            first,
            last,
        }
    }
}

/// One peer of a rule (`from` or `to` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// `ipBlock`: `cidr` without the `except` prefixes.
    Block {
        /// The block.
        cidr: Cidr,
        /// Prefixes inside it that are not in the peer.
        except: Vec<Cidr>,
    },
    /// `podSelector` and/or `namespaceSelector` (`matchLabels` only).
    Selector {
        /// Pods of the policy's namespace (or of the matching namespaces) with these labels.
        pods: Option<Labels>,
        /// Namespaces with these labels.
        namespaces: Option<Labels>,
    },
}

/// One ingress or egress rule: any peer (none listed: any address) and any of the ports
/// (none listed: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress).
    pub peers: Vec<Peer>,
    /// `ports`.
    pub ports: Vec<Ports>,
}

/// One NetworkPolicy: it selects [`SELECTED`] for both `Ingress` and `Egress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDef {
    /// `metadata.name`; sorts in generation order.
    pub name: String,
    /// `spec.ingress`.
    pub ingress: Vec<Rule>,
    /// `spec.egress`.
    pub egress: Vec<Rule>,
}

/// What the generator needs to know of the measured pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// The subnet both are in.
    pub subnet: Cidr,
    /// The client's address.
    pub client: Ipv4Addr,
    /// The server's address.
    pub server: Ipv4Addr,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// The labels of an interface of the pair with `role` ([`CLIENT`] or [`SERVER`]).
pub fn interface_labels(role: &str) -> Labels {
    labels(&[SELECTED, (ROLE, role)])
}

/// The `k`-th /24 of the first filler range, 10.128.0.0/10.
fn block_a(k: u32) -> Cidr {
    Cidr::new(Ipv4Addr::from(0x0a80_0000 + k * 256), 24)
}

/// The `k`-th /24 of the second filler range, 10.192.0.0/10.
fn block_b(k: u32) -> Cidr {
    Cidr::new(Ipv4Addr::from(0x0ac0_0000 + k * 256), 24)
}

/// The first port of filler policy `k`'s own range of 40 ports, in 20000..=59999.
fn base_port(k: u32) -> u16 {
    // k % 1000 * 40 <= 39,960: the sum fits a u16.
    u16::try_from(20_000 + (k % 1000) * 40).unwrap_or(u16::MAX - 40)
}

/// `count` policies (at most [`MAX_POLICIES`]) for `pair`: `count - 1` that miss the
/// measured traffic, then the one that allows it (see the module documentation).
pub fn generate(count: usize, pair: &Pair) -> Vec<PolicyDef> {
    let count = count.min(MAX_POLICIES);
    let mut policies = Vec::with_capacity(count);
    for index in 0..count {
        let name = format!("vsperf-{index:05}");
        if index + 1 == count {
            policies.push(allow_measured(name));
        } else {
            // index < MAX_POLICIES fits a u32.
            let k = u32::try_from(index).unwrap_or(0);
            policies.push(filler(name, k, pair));
        }
    }
    policies
}

/// The measured ports: iperf3's and the connection-rate server's (TCP) and the
/// connectivity check's (UDP).
pub fn measured_ports() -> Vec<Ports> {
    vec![
        Ports::one(Protocol::Tcp, iperf::PORT),
        Ports::one(Protocol::Tcp, connrate::PORT),
        Ports::one(Protocol::Udp, latency::PORT),
    ]
}

fn allow_measured(name: String) -> PolicyDef {
    let role = |value: &str| Peer::Selector {
        pods: Some(labels(&[(ROLE, value)])),
        namespaces: None,
    };
    PolicyDef {
        name,
        ingress: vec![Rule {
            peers: vec![role(CLIENT)],
            ports: measured_ports(),
        }],
        egress: vec![Rule {
            peers: vec![role(SERVER)],
            ports: measured_ports(),
        }],
    }
}

fn filler(name: String, k: u32, pair: &Pair) -> PolicyDef {
    let port = base_port(k);
    let other = format!("other-{k}");
    let (ingress, egress) = match k % 4 {
        0 => {
            let a = block_a(k);
            (
                Rule {
                    peers: vec![
                        Peer::Block {
                            cidr: a,
                            except: vec![Cidr::new(a.addr, 28)],
                        },
                        Peer::Block {
                            cidr: block_b(k),
                            except: Vec::new(),
                        },
                    ],
                    ports: vec![Ports::range(Protocol::Tcp, port, port + 9)],
                },
                Rule {
                    peers: vec![Peer::Block {
                        cidr: block_b(k),
                        except: Vec::new(),
                    }],
                    ports: vec![
                        Ports::range(Protocol::Udp, port, port + 9),
                        Ports::one(Protocol::Tcp, port + 20),
                    ],
                },
            )
        }
        1 => {
            let pods = Some(labels(&[("app", &other)]));
            let namespaces = Some(labels(&[("team", &other)]));
            (
                Rule {
                    peers: vec![
                        Peer::Selector {
                            pods: pods.clone(),
                            namespaces: None,
                        },
                        Peer::Selector {
                            pods: None,
                            namespaces: namespaces.clone(),
                        },
                        Peer::Selector {
                            pods: pods.clone(),
                            namespaces,
                        },
                    ],
                    ports: vec![Ports::one(Protocol::Tcp, port)],
                },
                Rule {
                    peers: vec![Peer::Selector {
                        pods,
                        namespaces: None,
                    }],
                    ports: vec![Ports::one(Protocol::Tcp, port + 1)],
                },
            )
        }
        2 => (
            Rule {
                peers: vec![Peer::Block {
                    cidr: pair.subnet,
                    except: Vec::new(),
                }],
                ports: vec![Ports::range(Protocol::Tcp, port, port + 9)],
            },
            Rule {
                peers: vec![Peer::Block {
                    cidr: pair.subnet,
                    except: vec![Cidr::new(pair.server, 32)],
                }],
                ports: vec![
                    Ports::one(Protocol::Tcp, iperf::PORT),
                    Ports::one(Protocol::Tcp, connrate::PORT),
                ],
            },
        ),
        _ => {
            let both = Peer::Selector {
                pods: Some(labels(&[SELECTED])),
                namespaces: None,
            };
            (
                Rule {
                    peers: vec![both.clone()],
                    ports: vec![
                        Ports::range(Protocol::Tcp, port, port + 9),
                        Ports::one(Protocol::Udp, iperf::PORT),
                    ],
                },
                Rule {
                    peers: vec![both],
                    ports: vec![
                        Ports::range(Protocol::Tcp, port + 10, port + 19),
                        Ports::one(Protocol::Udp, connrate::PORT),
                    ],
                },
            )
        }
    };
    PolicyDef {
        name,
        ingress: vec![ingress],
        egress: vec![egress],
    }
}

fn labels_json(labels: &Labels) -> Value {
    json!({ "matchLabels": labels })
}

fn peer_json(peer: &Peer) -> Value {
    match peer {
        Peer::Block { cidr, except } => {
            let mut block = Map::new();
            block.insert("cidr".into(), cidr.to_string().into());
            if !except.is_empty() {
                let except: Vec<Value> = except.iter().map(|c| c.to_string().into()).collect();
                block.insert("except".into(), except.into());
            }
            json!({ "ipBlock": block })
        }
        Peer::Selector { pods, namespaces } => {
            let mut peer = Map::new();
            if let Some(pods) = pods {
                peer.insert("podSelector".into(), labels_json(pods));
            }
            if let Some(namespaces) = namespaces {
                peer.insert("namespaceSelector".into(), labels_json(namespaces));
            }
            Value::Object(peer)
        }
    }
}

fn ports_json(ports: &Ports) -> Value {
    let mut port = Map::new();
    port.insert("protocol".into(), ports.protocol.kubernetes().into());
    port.insert("port".into(), ports.first.into());
    if ports.last > ports.first {
        port.insert("endPort".into(), ports.last.into());
    }
    Value::Object(port)
}

fn rules_json(rules: &[Rule], peers_field: &str) -> Value {
    rules
        .iter()
        .map(|rule| {
            let mut entry = Map::new();
            if !rule.peers.is_empty() {
                entry.insert(
                    peers_field.into(),
                    rule.peers.iter().map(peer_json).collect(),
                );
            }
            if !rule.ports.is_empty() {
                entry.insert("ports".into(), rule.ports.iter().map(ports_json).collect());
            }
            Value::Object(entry)
        })
        .collect()
}

/// One policy as a Kubernetes `networking.k8s.io/v1` NetworkPolicy.
pub fn kubernetes_policy(policy: &PolicyDef) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": policy.name, "namespace": NAMESPACE },
        "spec": {
            "podSelector": labels_json(&labels(&[SELECTED])),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": rules_json(&policy.ingress, "from"),
            "egress": rules_json(&policy.egress, "to"),
        }
    })
}

/// Each policy as one line of compact JSON (a Kubernetes NetworkPolicy), in order.
pub fn kubernetes_documents(policies: &[PolicyDef]) -> Vec<String> {
    policies
        .iter()
        .map(|policy| kubernetes_policy(policy).to_string())
        .collect()
}

/// Documents as one JSON array, one document per line (what `vswitchctl apply -f` reads).
pub fn json_array(documents: &[String]) -> String {
    format!("[\n{}\n]\n", documents.join(",\n"))
}

/// Splits `documents` into consecutive groups whose [`json_array`] stays within `limit`
/// bytes (a document larger than that gets a group of its own).
pub fn chunks(documents: &[String], limit: usize) -> Vec<&[String]> {
    let mut groups = Vec::new();
    let mut start = 0;
    // "[\n" + "\n]\n" around a group, ",\n" between its documents.
    let mut size = 0;
    for (index, document) in documents.iter().enumerate() {
        if index == start {
            size = 5 + document.len();
            continue;
        }
        let grown = size + 2 + document.len();
        if grown > limit {
            groups.push(&documents[start..index]);
            start = index;
            size = 5 + document.len();
        } else {
            size = grown;
        }
    }
    if start < documents.len() {
        groups.push(&documents[start..]);
    }
    groups
}

/// An interface of the kernel variant, as the nftables translator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Short name (chain names): `c1`, `c2`.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its labels.
    pub labels: Labels,
}

/// The labels of [`NAMESPACE`] (Kubernetes gives every namespace its name as a label).
fn namespace_labels() -> Labels {
    labels(&[("kubernetes.io/metadata.name", NAMESPACE)])
}

fn subset(want: &Labels, have: &Labels) -> bool {
    want.iter().all(|(key, value)| have.get(key) == Some(value))
}

/// The address intervals a rule's peers stand for, sorted and merged; `None` when the rule
/// lists no peers (any address).
fn peer_intervals(peers: &[Peer], pods: &[Pod]) -> Option<Vec<(u32, u32)>> {
    if peers.is_empty() {
        return None;
    }
    let mut intervals = Vec::new();
    for peer in peers {
        match peer {
            Peer::Block { cidr, except } => {
                let mut pieces = vec![cidr.range()];
                for cut in except {
                    let (cut_first, cut_last) = cut.range();
                    pieces = pieces
                        .into_iter()
                        .flat_map(|(first, last)| {
                            let mut kept = Vec::new();
                            if cut_last < first || cut_first > last {
                                kept.push((first, last));
                            } else {
                                if cut_first > first {
                                    kept.push((first, cut_first - 1));
                                }
                                if cut_last < last {
                                    kept.push((cut_last + 1, last));
                                }
                            }
                            kept
                        })
                        .collect();
                }
                intervals.extend(pieces);
            }
            Peer::Selector {
                pods: pod_labels,
                namespaces,
            } => {
                // Every pod is in NAMESPACE, the policies' own.
                let namespace_matches = namespaces
                    .as_ref()
                    .is_none_or(|want| subset(want, &namespace_labels()));
                if !namespace_matches {
                    continue;
                }
                for pod in pods {
                    if pod_labels
                        .as_ref()
                        .is_none_or(|want| subset(want, &pod.labels))
                    {
                        let ip = u32::from(pod.ip);
                        intervals.push((ip, ip));
                    }
                }
            }
        }
    }
    intervals.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (first, last) in intervals {
        match merged.last_mut() {
            Some(previous) if first <= previous.1.saturating_add(1) => {
                previous.1 = previous.1.max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    Some(merged)
}

/// An address interval as nftables writes it: an address, a prefix, or `first-last`.
fn interval_text((first, last): (u32, u32)) -> String {
    if first == last {
        return Ipv4Addr::from(first).to_string();
    }
    let size = u64::from(last) - u64::from(first) + 1;
    if size.is_power_of_two() && u64::from(first) % size == 0 {
        let prefix = 32 - size.trailing_zeros();
        format!("{}/{prefix}", Ipv4Addr::from(first))
    } else {
        format!("{}-{}", Ipv4Addr::from(first), Ipv4Addr::from(last))
    }
}

fn port_text(ports: &Ports) -> String {
    if ports.first == ports.last {
        ports.first.to_string()
    } else {
        format!("{}-{}", ports.first, ports.last)
    }
}

/// The match of one rule (without its verdict), or `None` when it cannot match anything
/// here (its peers select no address).
fn rule_match(rule: &Rule, address_field: &str, pods: &[Pod]) -> Option<String> {
    let addresses = peer_intervals(&rule.peers, pods);
    if addresses.as_ref().is_some_and(Vec::is_empty) {
        return None;
    }
    let address = |interval| interval_text(interval);
    let port = |ports: &Ports| format!("{} . {}", ports.protocol.nftables(), port_text(ports));
    let set = |elements: Vec<String>| {
        if elements.len() == 1 {
            elements.concat()
        } else {
            format!("{{ {} }}", elements.join(", "))
        }
    };
    let text = match (addresses, rule.ports.as_slice()) {
        (None, []) => String::new(),
        (Some(addresses), []) => format!(
            "{address_field} {}",
            set(addresses.into_iter().map(address).collect())
        ),
        (None, [one]) => format!(
            "meta l4proto {} th dport {}",
            one.protocol.nftables(),
            port_text(one)
        ),
        (None, ports) => format!(
            "meta l4proto . th dport {}",
            set(ports.iter().map(port).collect())
        ),
        (Some(addresses), [one]) if addresses.len() == 1 => format!(
            "{address_field} {} meta l4proto {} th dport {}",
            address(addresses[0]),
            one.protocol.nftables(),
            port_text(one)
        ),
        (Some(addresses), ports) => {
            let elements = addresses
                .iter()
                .flat_map(|&interval| {
                    ports
                        .iter()
                        .map(move |ports| format!("{} . {}", address(interval), port(ports)))
                })
                .collect();
            format!(
                "{address_field} . meta l4proto . th dport {}",
                set(elements)
            )
        }
    };
    Some(text)
}

/// The nftables table name.
pub const NFT_TABLE: &str = "vsperf_policy";

/// `policies` as one nftables ruleset for `pods` (see the module documentation); every
/// policy selects the pods carrying [`SELECTED`]. With no policies, the ruleset is empty:
/// no table, no conntrack.
pub fn nftables(policies: &[PolicyDef], pods: &[Pod]) -> String {
    if policies.is_empty() {
        return String::new();
    }
    let selected: Vec<&Pod> = pods
        .iter()
        .filter(|pod| subset(&labels(&[SELECTED]), &pod.labels))
        .collect();
    let mut out = format!("table ip {NFT_TABLE} {{\n");
    for (direction, field, priority) in [
        ("egress", "saddr", "filter - 1"),
        ("ingress", "daddr", "filter"),
    ] {
        let map: Vec<String> = selected
            .iter()
            .map(|pod| format!("{} : jump {direction}_{}", pod.ip, pod.name))
            .collect();
        let _ = write!(
            out,
            "    chain {direction} {{\n        \
             type filter hook forward priority {priority}; policy accept;\n        \
             ct state established,related accept\n"
        );
        if !map.is_empty() {
            let _ = writeln!(out, "        ip {field} vmap {{ {} }}", map.join(", "));
        }
        out.push_str("    }\n");
        for pod in &selected {
            let _ = writeln!(out, "    chain {direction}_{} {{", pod.name);
            for (index, policy) in policies.iter().enumerate() {
                let rules = if direction == "egress" {
                    &policy.egress
                } else {
                    &policy.ingress
                };
                if !rules.is_empty() {
                    let _ = writeln!(out, "        jump p{index:05}_{direction}");
                }
            }
            out.push_str("        drop\n    }\n");
        }
    }
    for (index, policy) in policies.iter().enumerate() {
        for (direction, rules, field) in [
            ("egress", &policy.egress, "ip daddr"),
            ("ingress", &policy.ingress, "ip saddr"),
        ] {
            if rules.is_empty() {
                continue;
            }
            let _ = writeln!(out, "    chain p{index:05}_{direction} {{");
            let _ = writeln!(out, "        # {} {direction}", policy.name);
            for (number, rule) in rules.iter().enumerate() {
                match rule_match(rule, field, pods) {
                    Some(text) if text.is_empty() => out.push_str("        accept\n"),
                    Some(text) => {
                        let _ = writeln!(out, "        {text} accept");
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "        # rule {number}: its peers select no address here"
                        );
                    }
                }
            }
            out.push_str("    }\n");
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use policy::{
        Compiled, Connection, Endpoint, EndpointId, Namespace, NetworkPolicy, Peer as Remote, World,
    };

    use super::*;

    const PAIR: Pair = Pair {
        subnet: Cidr {
            addr: Ipv4Addr::new(10, 77, 0, 0),
            prefix: 24,
        },
        client: Ipv4Addr::new(10, 77, 0, 2),
        server: Ipv4Addr::new(10, 77, 0, 3),
    };

    fn pods() -> Vec<Pod> {
        vec![
            Pod {
                name: "c1".into(),
                ip: PAIR.client,
                labels: interface_labels(CLIENT),
            },
            Pod {
                name: "c2".into(),
                ip: PAIR.server,
                labels: interface_labels(SERVER),
            },
        ]
    }

    #[test]
    fn counts_names_and_the_last_allows() {
        assert!(generate(0, &PAIR).is_empty());
        let one = generate(1, &PAIR);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].ingress[0].ports, measured_ports());
        let many = generate(1000, &PAIR);
        assert_eq!(many.len(), 1000);
        assert_eq!(many[0].name, "vsperf-00000");
        assert_eq!(many[999].name, "vsperf-00999");
        assert!(many.windows(2).all(|pair| pair[0].name < pair[1].name));
        assert_eq!(many[999], allow_measured("vsperf-00999".into()));
        assert_eq!(generate(MAX_POLICIES + 5, &PAIR).len(), MAX_POLICIES);
    }

    #[test]
    fn filler_blocks_and_ports_stay_apart() {
        let last = u32::try_from(MAX_POLICIES).unwrap() - 1;
        assert_eq!(block_a(0).to_string(), "10.128.0.0/24");
        assert_eq!(block_a(last).to_string(), "10.191.255.0/24");
        assert_eq!(block_b(last).to_string(), "10.255.255.0/24");
        for k in [0, 1, 999, 1000, last] {
            let port = base_port(k);
            assert!((20_000..=59_960).contains(&port), "{port}");
        }
        assert_eq!(base_port(1), 20_040);
    }

    #[test]
    fn kubernetes_text_of_each_shape() {
        let policies = generate(5, &PAIR);
        let documents = kubernetes_documents(&policies);
        assert_eq!(
            documents[0],
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"vsperf-00000","namespace":"default"},"spec":{"egress":[{"ports":[{"endPort":20009,"port":20000,"protocol":"UDP"},{"port":20020,"protocol":"TCP"}],"to":[{"ipBlock":{"cidr":"10.192.0.0/24"}}]}],"ingress":[{"from":[{"ipBlock":{"cidr":"10.128.0.0/24","except":["10.128.0.0/28"]}},{"ipBlock":{"cidr":"10.192.0.0/24"}}],"ports":[{"endPort":20009,"port":20000,"protocol":"TCP"}]}],"podSelector":{"matchLabels":{"vsperf":"policy"}},"policyTypes":["Ingress","Egress"]}}"#
        );
        assert!(
            documents[1].contains(r#"{"namespaceSelector":{"matchLabels":{"team":"other-1"}},"podSelector":{"matchLabels":{"app":"other-1"}}}"#),
            "{}",
            documents[1]
        );
        assert!(
            documents[2].contains(
                r#""to":[{"ipBlock":{"cidr":"10.77.0.0/24","except":["10.77.0.3/32"]}}]"#
            ),
            "{}",
            documents[2]
        );
        assert!(
            documents[4].contains(r#""from":[{"podSelector":{"matchLabels":{"vsperf-role":"client"}}}],"ports":[{"port":5201,"protocol":"TCP"},{"port":9002,"protocol":"TCP"},{"port":9001,"protocol":"UDP"}]"#),
            "{}",
            documents[4]
        );
        let array = json_array(&documents);
        let parsed: Vec<Value> = serde_json::from_str(&array).expect("a JSON array");
        assert_eq!(parsed.len(), 5);
    }

    #[test]
    fn chunks_stay_under_the_limit_and_keep_order() {
        let documents: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i:04}}}")).collect();
        // One document is 10 bytes; an array of n documents is 5 + 12n - 2 bytes.
        let groups = chunks(&documents, 40);
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        for group in &groups {
            assert!(json_array(group).len() <= 40, "{}", json_array(group));
        }
        assert_eq!(groups.concat(), documents);
        assert_eq!(chunks(&documents, 1 << 20).len(), 1);
        assert_eq!(
            chunks(&documents, 1).len(),
            10,
            "oversized documents go alone"
        );
        assert!(chunks(&[], 100).is_empty());
    }

    /// Every generated policy is a valid Kubernetes NetworkPolicy for the `policy` crate,
    /// and compiled with the two interfaces they decide what the module says: the measured
    /// connections pass (allowed by the last policy only), anything else between them does
    /// not.
    #[test]
    fn the_policy_crate_agrees() {
        let count = 9;
        let documents = kubernetes_documents(&generate(count, &PAIR));
        let policies = documents
            .iter()
            .map(|text| {
                let written: NetworkPolicy = serde_json::from_str(text).expect("parses");
                written.to_policy().expect("valid")
            })
            .collect();
        let endpoint = |id, pod: &Pod| Endpoint {
            id: EndpointId(id),
            name: pod.name.clone(),
            namespace: NAMESPACE.into(),
            network: "default".into(),
            labels: pod.labels.clone(),
            addresses: vec![IpAddr::V4(pod.ip)],
            ports: vec![],
        };
        let pods = pods();
        let compiled = Compiled::compile(World {
            namespaces: vec![Namespace::new(NAMESPACE, Labels::new())],
            endpoints: vec![endpoint(1, &pods[0]), endpoint(2, &pods[1])],
            load_balancers: vec![],
            policies,
        })
        .expect("compiles");
        let client = Remote::Endpoint {
            id: EndpointId(1),
            addr: IpAddr::V4(PAIR.client),
        };
        let server = Remote::Endpoint {
            id: EndpointId(2),
            addr: IpAddr::V4(PAIR.server),
        };
        let check = |src, dst, protocol, dst_port| {
            compiled
                .check(&Connection {
                    src,
                    dst,
                    protocol,
                    dst_port,
                })
                .allowed
        };
        for (protocol, port) in [(6, iperf::PORT), (6, connrate::PORT), (17, latency::PORT)] {
            assert!(check(client, server, protocol, port), "{protocol}/{port}");
            assert!(
                !check(server, client, protocol, port),
                "reverse {protocol}/{port}"
            );
        }
        for (protocol, port) in [
            (17, iperf::PORT),
            (6, 5202),
            (6, 20_000),
            (17, connrate::PORT),
        ] {
            assert!(!check(client, server, protocol, port), "{protocol}/{port}");
        }
        // Without the last policy nothing measured passes: no filler allows it.
        let fillers = &generate(count, &PAIR)[..count - 1];
        let world = compiled.world().clone();
        let trimmed = Compiled::compile(World {
            policies: fillers
                .iter()
                .map(|policy| {
                    let written: NetworkPolicy =
                        serde_json::from_value(kubernetes_policy(policy)).expect("parses");
                    written.to_policy().expect("valid")
                })
                .collect(),
            ..world
        })
        .expect("compiles");
        for (protocol, port) in [(6, iperf::PORT), (6, connrate::PORT), (17, latency::PORT)] {
            let decision = trimmed.check(&Connection {
                src: client,
                dst: server,
                protocol,
                dst_port: port,
            });
            assert!(!decision.allowed, "{protocol}/{port}: {decision:?}");
        }
    }

    #[test]
    fn intervals_cut_excepts_and_resolve_selectors() {
        let block = Peer::Block {
            cidr: Cidr::new(Ipv4Addr::new(10, 77, 0, 0), 24),
            except: vec![Cidr::new(PAIR.server, 32)],
        };
        let intervals = peer_intervals(&[block], &pods()).expect("peers");
        let text: Vec<String> = intervals.into_iter().map(interval_text).collect();
        assert_eq!(text, ["10.77.0.0-10.77.0.2", "10.77.0.4-10.77.0.255"]);
        let both = Peer::Selector {
            pods: Some(labels(&[SELECTED])),
            namespaces: None,
        };
        let text: Vec<String> = peer_intervals(&[both], &pods())
            .expect("peers")
            .into_iter()
            .map(interval_text)
            .collect();
        assert_eq!(
            text,
            ["10.77.0.2/31"],
            "two neighbours merge into one interval"
        );
        let nobody = Peer::Selector {
            pods: None,
            namespaces: Some(labels(&[("team", "x")])),
        };
        assert_eq!(peer_intervals(&[nobody], &pods()), Some(vec![]));
        assert_eq!(peer_intervals(&[], &pods()), None);
        let everyone = Peer::Selector {
            pods: None,
            namespaces: Some(namespace_labels()),
        };
        assert_eq!(
            peer_intervals(&[everyone], &pods()).expect("peers").len(),
            1
        );
    }

    #[test]
    fn nftables_text() {
        assert_eq!(nftables(&[], &pods()), "");
        let rules = nftables(&generate(5, &PAIR), &pods());
        let expected = "\
table ip vsperf_policy {
    chain egress {
        type filter hook forward priority filter - 1; policy accept;
        ct state established,related accept
        ip saddr vmap { 10.77.0.2 : jump egress_c1, 10.77.0.3 : jump egress_c2 }
    }
    chain egress_c1 {
        jump p00000_egress
        jump p00001_egress
        jump p00002_egress
        jump p00003_egress
        jump p00004_egress
        drop
    }
";
        assert!(rules.starts_with(expected), "got:\n{rules}");
        for line in [
            "    chain ingress {\n        type filter hook forward priority filter; policy accept;\n        ct state established,related accept\n        ip daddr vmap { 10.77.0.2 : jump ingress_c1, 10.77.0.3 : jump ingress_c2 }\n    }\n",
            "    chain p00000_ingress {\n        # vsperf-00000 ingress\n        ip saddr . meta l4proto . th dport { 10.128.0.16-10.128.0.255 . tcp . 20000-20009, 10.192.0.0/24 . tcp . 20000-20009 } accept\n    }\n",
            "    chain p00000_egress {\n        # vsperf-00000 egress\n        ip daddr . meta l4proto . th dport { 10.192.0.0/24 . udp . 20000-20009, 10.192.0.0/24 . tcp . 20020 } accept\n    }\n",
            "        # rule 0: its peers select no address here\n",
            "        ip daddr . meta l4proto . th dport { 10.77.0.0-10.77.0.2 . tcp . 5201, 10.77.0.0-10.77.0.2 . tcp . 9002, 10.77.0.4-10.77.0.255 . tcp . 5201, 10.77.0.4-10.77.0.255 . tcp . 9002 } accept\n",
            "    chain p00004_ingress {\n        # vsperf-00004 ingress\n        ip saddr . meta l4proto . th dport { 10.77.0.2 . tcp . 5201, 10.77.0.2 . tcp . 9002, 10.77.0.2 . udp . 9001 } accept\n    }\n",
        ] {
            assert!(rules.contains(line), "missing:\n{line}\nin:\n{rules}");
        }
        assert!(rules.ends_with("    }\n}\n"), "{rules}");
    }

    #[test]
    fn single_matches_need_no_set() {
        let rule = Rule {
            peers: vec![Peer::Block {
                cidr: Cidr::new(Ipv4Addr::new(192, 0, 2, 0), 24),
                except: vec![],
            }],
            ports: vec![Ports::range(Protocol::Tcp, 80, 81)],
        };
        assert_eq!(
            rule_match(&rule, "ip saddr", &pods()).as_deref(),
            Some("ip saddr 192.0.2.0/24 meta l4proto tcp th dport 80-81")
        );
        let any_peer = Rule {
            peers: vec![],
            ..rule.clone()
        };
        assert_eq!(
            rule_match(&any_peer, "ip saddr", &pods()).as_deref(),
            Some("meta l4proto tcp th dport 80-81")
        );
        let any_port = Rule {
            ports: vec![],
            ..rule
        };
        assert_eq!(
            rule_match(&any_port, "ip daddr", &pods()).as_deref(),
            Some("ip daddr 192.0.2.0/24")
        );
    }
}
