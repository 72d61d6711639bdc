//! NetworkPolicies into the datapath: the world the `policy` crate compiles (namespaces and
//! their labels, attached interfaces as endpoints with their labels, addresses and named
//! ports, LoadBalancer addresses, the valid policies), compiled when it changed since the
//! last publish, and the NetworkPolicies' status as read.
//!
//! Only attached interfaces (with a port) are endpoints: an interface that carries no
//! traffic needs no table. The endpoint id is the port id. Publishes that change nothing
//! policies see (the LoadBalancers' maintenance, a Route) keep the compiled set, and with it
//! its counters.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use policy::{Compiled, Endpoint, EndpointId, World};

use super::Inner;
use crate::control::kinds::namespace;
use crate::control::kinds::network_policy::{NetworkPolicyStatus, PolicyCounters, RuleCounter};
use crate::tables::policy::PolicySet;
use crate::tables::snapshot::NetworkId;

/// An interface's global IPv6 addresses (leased or static, and its SLAAC address when the
/// Subnet advertises SLAAC), which routed IPv6 packets are addressed to. Link-local
/// addresses are left out: they are never routed, and a switched frame names its port.
fn global_ipv6<'a>(
    nic: &'a crate::control::kinds::network_interface::NetworkInterface,
    subnet: &'a crate::control::resource::SubnetSpec,
) -> impl Iterator<Item = std::net::Ipv6Addr> + 'a {
    let slaac = subnet
        .ipv6
        .as_ref()
        .filter(|v6| v6.slaac)
        .zip(nic.status.mac)
        .map(|(v6, mac)| crate::wire::ipv6::slaac_address(v6.cidr.network(), mac.0));
    nic.status.ipv6.map(|ip| ip.addr()).into_iter().chain(slaac)
}

/// What the compiler sees of the state, in the order it sorts it (so that an unchanged
/// state gives an equal world).
fn world(inner: &Inner) -> (World, BTreeMap<u32, NetworkId>) {
    let state = &inner.state;
    let mut networks = BTreeMap::new();
    let mut endpoints = Vec::with_capacity(inner.ports.len());
    for (key, port) in &inner.ports {
        let Some(nic) = state.network_interfaces.get(key) else {
            continue;
        };
        let Some(subnet) = state.subnets.get(&nic.spec.subnet) else {
            continue;
        };
        if let Some(id) = inner.network_ids.get(&subnet.spec.network) {
            networks.insert(port.id.0, *id);
        }
        endpoints.push(Endpoint {
            id: EndpointId(port.id.0),
            name: nic.metadata.name.clone(),
            namespace: nic.metadata.namespace().to_owned(),
            network: subnet.spec.network.clone(),
            labels: nic.metadata.labels.clone(),
            addresses: nic
                .status
                .ips
                .iter()
                .map(|ip| IpAddr::V4(ip.addr()))
                .chain(global_ipv6(nic, &subnet.spec).map(IpAddr::V6))
                .collect(),
            ports: nic.spec.ports.clone(),
        });
    }
    endpoints.sort_by_key(|e| e.id);
    let mut namespaces: Vec<policy::Namespace> = state
        .namespaces
        .values()
        .map(|ns| {
            let mut labels = ns.metadata.labels.clone();
            labels.remove(namespace::METADATA_NAME_LABEL);
            policy::Namespace::new(ns.metadata.name.clone(), labels)
        })
        .collect();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    let load_balancers = state
        .load_balancers
        .values()
        .map(|balancer| policy::LoadBalancer {
            name: balancer.metadata.name.clone(),
            namespace: balancer.metadata.namespace().to_owned(),
            network: balancer.spec.network.clone(),
            labels: balancer.metadata.labels.clone(),
            addresses: balancer
                .spec
                .ips
                .iter()
                .chain(&balancer.status.ips)
                .copied()
                .collect(),
        })
        .collect();
    let mut policies: Vec<policy::Policy> = state
        .network_policies
        .values()
        .filter_map(|p| p.written.to_policy().ok())
        .collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let world = World {
        namespaces,
        endpoints,
        load_balancers,
        policies,
    };
    (world, networks)
}

/// The policy set the next snapshot carries: `None` without policies, the previous one when
/// nothing it compiled from changed, else a new compile (counts carried over).
pub(super) fn compile(inner: &Inner, previous: Option<&Arc<PolicySet>>) -> Option<Arc<PolicySet>> {
    if inner.state.network_policies.is_empty() {
        return None;
    }
    let (world, networks) = world(inner);
    if let Some(previous) = previous {
        if *previous.compiled().world() == world {
            return Some(Arc::clone(previous));
        }
    }
    let started = std::time::Instant::now();
    let policies = world.policies.len();
    match Compiled::compile(world) {
        Ok(compiled) => {
            let stats = compiled.stats();
            tracing::info!(
                policies,
                endpoints = stats.endpoints,
                rules = stats.rules,
                tables = stats.tables,
                ms = started.elapsed().as_millis(),
                "network policies compiled"
            );
            Some(Arc::new(PolicySet::new(
                compiled,
                &networks,
                previous.map(Arc::as_ref),
            )))
        }
        Err(error) => {
            // Names and ids are unique by construction; keep enforcing what was compiled.
            tracing::error!(%error, "network policies do not compile; keeping the previous set");
            previous.cloned()
        }
    }
}

/// Every NetworkPolicy's status as the datapath sees it, by key.
pub(super) fn statuses(set: Option<&PolicySet>) -> BTreeMap<String, NetworkPolicyStatus> {
    let Some(set) = set else {
        return BTreeMap::new();
    };
    let totals = set.totals();
    set.compiled()
        .policies()
        .iter()
        .map(|policy| {
            let key = crate::control::resource::object_key(&policy.namespace, &policy.name);
            let counts = totals.get(&key).cloned().unwrap_or_default();
            let status = NetworkPolicyStatus {
                policy_types: Vec::new(),
                selected: set.selected(&key).to_vec(),
                counters: PolicyCounters {
                    ingress_allowed: counts.ingress_allowed,
                    egress_allowed: counts.egress_allowed,
                    ingress_denied: counts.ingress_denied,
                    egress_denied: counts.egress_denied,
                },
                rules: counts
                    .rules
                    .iter()
                    .map(|((direction, index), allowed)| RuleCounter {
                        direction: format!("{direction:?}"),
                        index: *index,
                        allowed: *allowed,
                    })
                    .collect(),
            };
            (key, status)
        })
        .collect()
}

/// The answer of `policy explain`: the verdict on a connection and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyExplanation {
    /// The connection is allowed.
    pub allowed: bool,
    /// The source's egress verdict: `NotIsolated`, `Allowed` or `Denied`.
    pub egress: String,
    /// The destination's ingress verdict.
    pub ingress: String,
    /// The decision in words: which policy and rule decided, or why the default applies.
    pub lines: Vec<String>,
}

/// One end of a connection to explain: an interface (`name`, `namespace/name`) or an
/// address.
fn explain_peer(
    set: &PolicySet,
    published: &BTreeMap<u32, String>,
    text: &str,
    field: &str,
) -> Result<policy::Peer, crate::control::ApiError> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        let owner = set
            .compiled()
            .endpoints()
            .iter()
            .find(|e| e.addresses.contains(&addr));
        return Ok(match owner {
            Some(endpoint) => policy::Peer::Endpoint {
                id: endpoint.id,
                addr,
            },
            None => policy::Peer::External(addr),
        });
    }
    let Some((id, _)) = published.iter().find(|(_, name)| name.as_str() == text) else {
        return Err(crate::control::ApiError::invalid(
            field,
            format!(
                "{text:?} is neither an address nor an attached NetworkInterface (write NAME, NAMESPACE/NAME or an IP address)"
            ),
        ));
    };
    let endpoint = set.compiled().endpoint(EndpointId(*id)).ok_or_else(|| {
        crate::control::ApiError::invalid(
            field,
            format!("NetworkInterface {text:?} is not attached"),
        )
    })?;
    let addr = endpoint.addresses.first().copied().ok_or_else(|| {
        crate::control::ApiError::invalid(
            field,
            format!("NetworkInterface {text:?} has no address"),
        )
    })?;
    Ok(policy::Peer::Endpoint {
        id: endpoint.id,
        addr,
    })
}

/// `PORT[/PROTOCOL]` (TCP when left out), or a protocol alone (`ICMP`, `SCTP/9`...).
fn explain_port(text: &str) -> Result<(u8, u16), crate::control::ApiError> {
    let invalid = || {
        crate::control::ApiError::invalid(
            "port",
            format!("{text:?}: write PORT[/TCP|UDP|SCTP] (e.g. 80/TCP) or ICMP"),
        )
    };
    let upper = text.trim().to_ascii_uppercase();
    if upper == "ICMP" {
        return Ok((1, 0));
    }
    let (port, protocol) = upper.split_once('/').unwrap_or((upper.as_str(), "TCP"));
    let protocol = match protocol {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        _ => return Err(invalid()),
    };
    let port: u16 = port.parse().map_err(|_| invalid())?;
    Ok((protocol, port))
}

fn verdict_name(verdict: &policy::Verdict) -> String {
    match verdict {
        policy::Verdict::NotIsolated => "NotIsolated",
        policy::Verdict::Allowed(_) => "Allowed",
        policy::Verdict::Denied(_) => "Denied",
    }
    .to_owned()
}

impl super::Controller {
    /// Explains what the policies in force do with a connection from `from` to `to` on
    /// `port` (see [`PolicyExplanation`]).
    ///
    /// # Errors
    /// [`ApiError::Invalid`](crate::control::ApiError) naming the field that names no
    /// interface or address, or a malformed port.
    pub fn explain_policy(
        &self,
        from: &str,
        to: &str,
        port: &str,
    ) -> Result<PolicyExplanation, crate::control::ApiError> {
        let (protocol, dst_port) = explain_port(port)?;
        let Some(set) = self.engine.read().current().policy.clone() else {
            return Ok(PolicyExplanation {
                allowed: true,
                egress: "NotIsolated".into(),
                ingress: "NotIsolated".into(),
                lines: vec![
                    format!("{from} -> {to} port {port}: allowed"),
                    "no NetworkPolicy exists: no interface is isolated, every connection is allowed".into(),
                ],
            });
        };
        let names = self.published.load().port_names.clone();
        let connection = policy::Connection {
            src: explain_peer(&set, &names, from, "from")?,
            dst: explain_peer(&set, &names, to, "to")?,
            protocol,
            dst_port,
        };
        let decision = set.compiled().check(&connection);
        let explanation = set.compiled().explain(&connection, &decision);
        Ok(PolicyExplanation {
            allowed: decision.allowed,
            egress: verdict_name(&decision.egress),
            ingress: verdict_name(&decision.ingress),
            lines: explanation.lines,
        })
    }
}
