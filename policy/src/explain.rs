//! `explain`: a [`Decision`] in words, for `vswitchctl policy explain` and for logs.
//!
//! For each side it says the verdict and why: which policy and which rule allowed the
//! connection and which peer and port of the rule matched; or which policies isolate the
//! interface and, rule by rule, what did not match; or that no policy of that direction
//! selects the interface (allowed by default), and which policies of its namespace could
//! have but do not select it.
//!
//! This is the slow path: it re-reads the policies and re-evaluates selectors for the one
//! connection. It never decides anything: the verdicts come from [`Compiled::check`].

use std::fmt::{self, Write as _};

use crate::classify::{Connection, Decision, Peer, Verdict};
use crate::compile::{Compiled, Endpoint, RuleRef};
use crate::model::{
    Direction, NamespaceScope, PeerSelector, Policy, PortMatch, PortSpec, Protocol, Rule,
};
use crate::selector::Labels;

/// At most this many policies or rules are listed per side; the rest are counted.
const LIST_LIMIT: usize = 8;

/// A decision in words: one line for the connection, then the egress and ingress sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The lines, without newlines.
    pub lines: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(line)?;
        }
        Ok(())
    }
}

/// Which peer of a rule matched the remote end.
enum PeerHit {
    /// The rule has no peers.
    All,
    /// This peer.
    Index(usize),
    /// None.
    Miss,
}

impl Compiled {
    /// Explains a decision [`Compiled::check`] made on `connection`.
    pub fn explain(&self, connection: &Connection, decision: &Decision) -> Explanation {
        let mut lines = vec![format!(
            "{} {} -> {} port {}: {}",
            protocol_name(connection.protocol),
            self.describe_peer(&connection.src),
            self.describe_peer(&connection.dst),
            connection.dst_port,
            if decision.allowed {
                "allowed"
            } else {
                "denied"
            }
        )];
        self.explain_side(connection, Direction::Egress, &decision.egress, &mut lines);
        self.explain_side(
            connection,
            Direction::Ingress,
            &decision.ingress,
            &mut lines,
        );
        Explanation { lines }
    }

    fn explain_side(
        &self,
        connection: &Connection,
        direction: Direction,
        verdict: &Verdict,
        lines: &mut Vec<String>,
    ) {
        let (local, remote) = match direction {
            Direction::Egress => (&connection.src, &connection.dst),
            Direction::Ingress => (&connection.dst, &connection.src),
        };
        let side = match direction {
            Direction::Egress => "egress from",
            Direction::Ingress => "ingress to",
        };
        let local_endpoint = match *local {
            Peer::External(addr) => {
                lines.push(format!(
                    "  {side} {addr}: allowed: it is outside the switch, no {direction} policy applies"
                ));
                return;
            }
            Peer::Endpoint { id, .. } => match self.endpoint(id) {
                Some(endpoint) => endpoint,
                None => {
                    lines.push(format!(
                        "  {side} interface {id}: allowed: the compiled policies do not know this interface (compile before it carries traffic)"
                    ));
                    return;
                }
            },
        };
        let who = describe_endpoint(local_endpoint);
        match verdict {
            Verdict::NotIsolated => {
                lines.push(format!(
                    "  {side} {who}: allowed by default: no policy of type {} selects it",
                    type_name(direction)
                ));
                self.why_not_selected(local_endpoint, direction, lines);
            }
            Verdict::Allowed(rule) => {
                let policy = self.policy(rule.policy);
                lines.push(format!(
                    "  {side} {who}: allowed by policy {}/{}, {} rule {} (spec.{}[{}])",
                    policy.namespace,
                    policy.name,
                    direction,
                    rule.index,
                    direction.field(),
                    rule.index
                ));
                lines.push(format!(
                    "    {}",
                    self.rule_reason(connection, *rule, remote)
                ));
                let others = self.selecting_policies(local_endpoint.id, direction).len();
                if others > 1 {
                    lines.push(format!(
                        "    ({others} policies select it; policies add up, the first allowing rule is shown)"
                    ));
                }
            }
            Verdict::Denied(isolation) => {
                let policies = self.isolating_policies(*isolation);
                let names: Vec<String> = policies
                    .iter()
                    .take(LIST_LIMIT)
                    .map(|&id| {
                        let p = self.policy(id);
                        format!("{}/{}", p.namespace, p.name)
                    })
                    .collect();
                lines.push(format!(
                    "  {side} {who}: denied: isolated for {direction} by {} {} ({}{}), and no rule of them allows the connection:",
                    policies.len(),
                    if policies.len() == 1 { "policy" } else { "policies" },
                    names.join(", "),
                    more(policies.len())
                ));
                let mut listed = 0;
                'policies: for &id in policies {
                    let policy = self.policy(id);
                    let rules = policy.rules(direction).unwrap_or_default();
                    if rules.is_empty() {
                        lines.push(format!(
                            "    {}/{}: has no {direction} rules: it allows no {direction} at all",
                            policy.namespace, policy.name
                        ));
                        listed += 1;
                    }
                    for (index, rule) in rules.iter().enumerate() {
                        if listed == LIST_LIMIT {
                            lines.push("    (further rules not shown)".to_owned());
                            break 'policies;
                        }
                        lines.push(format!(
                            "    {}/{} {}[{index}]: {}",
                            policy.namespace,
                            policy.name,
                            direction.field(),
                            self.rule_miss(connection, policy, direction, rule, remote)
                        ));
                        listed += 1;
                    }
                }
            }
        }
    }

    /// Why no policy of the direction selects the interface: the ones of its namespace
    /// that have the type, and what their selector asks.
    fn why_not_selected(&self, endpoint: &Endpoint, direction: Direction, lines: &mut Vec<String>) {
        let candidates: Vec<&Policy> = self
            .policies()
            .iter()
            .filter(|p| p.namespace == endpoint.namespace && p.rules(direction).is_some())
            .collect();
        if candidates.is_empty() {
            lines.push(format!(
                "    namespace {} has no policy of type {}",
                endpoint.namespace,
                type_name(direction)
            ));
            return;
        }
        for policy in candidates.iter().take(LIST_LIMIT) {
            let reason = match &policy.network {
                Some(network) if *network != endpoint.network => format!(
                    "regulates Network {network}, the interface is in {}",
                    endpoint.network
                ),
                _ => format!(
                    "selects {}; the interface's labels are {}",
                    policy.selector,
                    labels_text(&endpoint.labels)
                ),
            };
            lines.push(format!("    {}/{} {reason}", policy.namespace, policy.name));
        }
        if candidates.len() > LIST_LIMIT {
            lines.push(format!("    (and {} more)", candidates.len() - LIST_LIMIT));
        }
    }

    /// Which peer and port of the allowing rule matched.
    fn rule_reason(&self, connection: &Connection, rule: RuleRef, remote: &Peer) -> String {
        let policy = self.policy(rule.policy);
        let Some(body) = policy
            .rules(rule.direction)
            .and_then(|rules| rules.get(rule.index as usize))
        else {
            return "(the rule is not in the policy)".to_owned();
        };
        let peer = match self.peer_hit(policy, body, remote) {
            PeerHit::All => format!(
                "{} matches: the rule has no {} (every peer)",
                self.describe_peer(remote),
                rule.direction.peers_field()
            ),
            PeerHit::Index(i) => format!(
                "{} matches {}[{i}] ({})",
                self.describe_peer(remote),
                rule.direction.peers_field(),
                self.describe_selector(policy, &body.peers[i])
            ),
            PeerHit::Miss => format!(
                "{} matches no peer (unexpected)",
                self.describe_peer(remote)
            ),
        };
        let port = match self.port_hit(connection, body) {
            Some(None) => "every port is allowed (the rule has no ports)".to_owned(),
            Some(Some(i)) => format!(
                "{} matches ports[{i}] ({})",
                port_text(connection),
                body.ports[i]
            ),
            None => format!("{} matches no port (unexpected)", port_text(connection)),
        };
        format!("{peer}; {port}")
    }

    /// What of a rule did not match.
    fn rule_miss(
        &self,
        connection: &Connection,
        policy: &Policy,
        direction: Direction,
        rule: &Rule,
        remote: &Peer,
    ) -> String {
        let peer_ok = !matches!(self.peer_hit(policy, rule, remote), PeerHit::Miss);
        let port_ok = self.port_hit(connection, rule).is_some();
        let peers = || {
            let list: Vec<String> = rule
                .peers
                .iter()
                .map(|p| self.describe_selector(policy, p))
                .collect();
            list.join("; ")
        };
        let ports = || {
            let list: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
            list.join(", ")
        };
        let named_note = if rule
            .ports
            .iter()
            .any(|p| matches!(p.port, PortSpec::Named(_)))
        {
            match connection.dst {
                Peer::External(_) => " (named ports never match a destination outside the switch)",
                Peer::Endpoint { .. } => " (named ports resolve on the destination interface)",
            }
        } else {
            ""
        };
        match (peer_ok, port_ok) {
            (false, false) => format!(
                "{} matches no {} ({}), and {} is not in ports ({}){named_note}",
                self.describe_peer(remote),
                direction.peers_field(),
                peers(),
                port_text(connection),
                ports()
            ),
            (false, true) => format!(
                "{} matches no {} ({})",
                self.describe_peer(remote),
                direction.peers_field(),
                peers()
            ),
            (true, false) => format!(
                "the peer matches, but {} is not in ports ({}){named_note}",
                port_text(connection),
                ports()
            ),
            (true, true) => "matches (the compiled verdict disagrees: a bug)".to_owned(),
        }
    }

    fn peer_hit(&self, policy: &Policy, rule: &Rule, remote: &Peer) -> PeerHit {
        if rule.peers.is_empty() {
            return PeerHit::All;
        }
        let remote_endpoint = match *remote {
            Peer::Endpoint { id, .. } => self.endpoint(id),
            Peer::External(_) => None,
        };
        let addr = remote.addr();
        for (i, peer) in rule.peers.iter().enumerate() {
            let hit = match peer {
                PeerSelector::Endpoints {
                    namespaces,
                    selector,
                } => remote_endpoint.is_some_and(|e| {
                    let in_scope = match namespaces {
                        NamespaceScope::Own => e.namespace == policy.namespace,
                        NamespaceScope::Matching(s) => self
                            .namespace_labels(&e.namespace)
                            .is_some_and(|labels| s.matches(labels)),
                    };
                    in_scope
                        && policy.network.as_ref().is_none_or(|n| *n == e.network)
                        && selector.matches(&e.labels)
                }),
                PeerSelector::LoadBalancers { selector } => {
                    self.world().load_balancers.iter().any(|lb| {
                        lb.namespace == policy.namespace
                            && policy.network.as_ref().is_none_or(|n| *n == lb.network)
                            && selector.matches(&lb.labels)
                            && lb.addresses.contains(&addr)
                    })
                }
                PeerSelector::IpBlock { cidr, except } => {
                    cidr.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
                }
            };
            if hit {
                return PeerHit::Index(i);
            }
        }
        PeerHit::Miss
    }

    /// `Some(None)`: the rule has no ports; `Some(Some(i))`: ports[i] matches; `None`: no
    /// port matches.
    fn port_hit(&self, connection: &Connection, rule: &Rule) -> Option<Option<usize>> {
        if rule.ports.is_empty() {
            return Some(None);
        }
        let destination = match connection.dst {
            Peer::Endpoint { id, .. } => self.endpoint(id),
            Peer::External(_) => None,
        };
        rule.ports
            .iter()
            .position(|port| port_matches(port, connection, destination))
            .map(Some)
    }

    fn describe_peer(&self, peer: &Peer) -> String {
        match *peer {
            Peer::External(addr) => format!("{addr} (outside the switch)"),
            Peer::Endpoint { id, addr } => match self.endpoint(id) {
                Some(endpoint) => format!("{}/{} ({addr})", endpoint.namespace, endpoint.name),
                None => format!("interface {id} ({addr}, unknown)"),
            },
        }
    }

    fn describe_selector(&self, policy: &Policy, peer: &PeerSelector) -> String {
        let network = policy
            .network
            .as_ref()
            .map(|n| format!(" of Network {n}"))
            .unwrap_or_default();
        match peer {
            PeerSelector::Endpoints {
                namespaces: NamespaceScope::Own,
                selector,
            } => format!(
                "interfaces{network} matching {selector} in namespace {}",
                policy.namespace
            ),
            PeerSelector::Endpoints {
                namespaces: NamespaceScope::Matching(ns),
                selector,
            } => {
                format!("interfaces{network} matching {selector} in namespaces matching {ns}")
            }
            PeerSelector::LoadBalancers { selector } => format!(
                "LoadBalancers{network} matching {selector} in namespace {}",
                policy.namespace
            ),
            PeerSelector::IpBlock { cidr, except } if except.is_empty() => {
                format!("ipBlock {cidr}")
            }
            PeerSelector::IpBlock { cidr, except } => {
                let holes: Vec<String> = except.iter().map(ToString::to_string).collect();
                format!("ipBlock {cidr} except {}", holes.join(", "))
            }
        }
    }
}

fn port_matches(port: &PortMatch, connection: &Connection, destination: Option<&Endpoint>) -> bool {
    if port.protocol.number() != connection.protocol {
        return false;
    }
    match &port.port {
        PortSpec::Any => true,
        PortSpec::Range { first, last } => (*first..=*last).contains(&connection.dst_port),
        PortSpec::Named(name) => destination.is_some_and(|d| {
            d.ports.iter().any(|p| {
                &p.name == name && p.protocol == port.protocol && p.port == connection.dst_port
            })
        }),
    }
}

fn describe_endpoint(endpoint: &Endpoint) -> String {
    format!("{}/{}", endpoint.namespace, endpoint.name)
}

fn type_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "Ingress",
        Direction::Egress => "Egress",
    }
}

fn labels_text(labels: &Labels) -> String {
    if labels.is_empty() {
        return "(none)".to_owned();
    }
    let mut text = String::new();
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(text, "{key}={value}");
    }
    text
}

fn more(count: usize) -> String {
    if count > LIST_LIMIT {
        format!(", and {} more", count - LIST_LIMIT)
    } else {
        String::new()
    }
}

fn protocol_name(number: u8) -> String {
    match Protocol::from_number(number) {
        Some(protocol) => protocol.to_string(),
        None if number == 1 => "ICMP".to_owned(),
        None if number == 58 => "ICMPv6".to_owned(),
        None => format!("protocol {number}"),
    }
}

fn port_text(connection: &Connection) -> String {
    format!(
        "{}/{}",
        connection.dst_port,
        protocol_name(connection.protocol)
    )
}
