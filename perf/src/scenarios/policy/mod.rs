//! `policy`: two interfaces on one node, c1 -> c2, with 0, 100, 1,000 or 10,000 network
//! policies selecting both (one table per count).
//!
//! ```text
//!  c1 (eth0) ──┐                  ┌── (eth0) c2
//!              └── node namespace ┘
//!   kernel:  veth v1/v2 enslaved to bridge br0; c1 10.77.0.2/24, c2 10.77.0.3/24 (as l2);
//!            bridged IPv4 goes through the forward hook (br_netfilter,
//!            net.bridge.bridge-nf-call-iptables=1: this kernel has no nf_conntrack_bridge, so
//!            a stateful filter on a bridge needs it), where `nft -f` loads the rule set
//!            (see `rules::nftables`)
//!   vswitch: vswitchd in the node namespace; c1 and c2 applied as NetworkInterfaces
//!            (`metadata.labels` vsperf=policy and vsperf-role=client|server, addresses from
//!            the default subnet 172.30.0.0/16), then the rule set as Kubernetes
//!            NetworkPolicies in one `vswitchctl apply -f` (several if the daemon refuses
//!            the body as too large)
//! ```
//! Every policy selects both interfaces for ingress and egress; the last one alone allows
//! the measured traffic (see [`rules`]). With 0 policies neither side has any rule: the
//! kernel loads no table (so no conntrack either) and vswitchd gets no NetworkPolicy.
//!
//! Figures: TCP 1 and 4 streams (iperf3) and new TCP connections per second (the
//! connection-rate tool against c2 itself, no load balancer), plus the time the rule set
//! took to apply: for the kernel, `nft -f` of the whole rule set (one transaction); for
//! vswitchd, from the first `vswitchctl apply` until `vswitchctl get networkpolicies -A`
//! lists all of them. vswitchd compiles the policies after that, within about a second; the
//! harness then waits [`COMPILE_GRACE`] before it checks connectivity. UDP 64B and RTT are
//! not measured here (the policies allow TCP and the connectivity check only).

pub mod rules;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use serde_json::Value;

use super::{Applied, Context, PrepareError, Prepared, Variant, refusal_is_unsupported, settle};
use crate::tools::cmd;
use crate::tools::cpu::SwitchCpu;
use crate::tools::vswitchd::{Daemon, PortKind, Refused};
use crate::topo::Topology;
use rules::{CLIENT, Cidr, Pair, Pod, SERVER};

/// The policy counts measured by default.
pub const COUNTS: [u32; 4] = [0, 100, 1_000, 10_000];

/// The kernel variant's subnet and addresses (as in `l2`).
const KERNEL_SUBNET: Cidr = Cidr {
    addr: Ipv4Addr::new(10, 77, 0, 0),
    prefix: 24,
};
const KERNEL_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const KERNEL_SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// vswitchd's embedded default subnet, where the interfaces get their addresses.
const VSWITCH_SUBNET: Cidr = Cidr {
    addr: Ipv4Addr::new(172, 30, 0, 0),
    prefix: 16,
};

/// How long after the policies are listed the harness waits for vswitchd to compile them
/// (it does so within about a second of an apply).
pub const COMPILE_GRACE: Duration = Duration::from_secs(2);

/// The longest a rule set may take to load (`nft -f`) or to be applied and listed.
const APPLY_LIMIT: Duration = Duration::from_secs(600);

/// The size of each `vswitchctl apply` when the daemon refuses the whole rule set as one
/// body (vswitchd's `api::MAX_BODY_BYTES` was 4 MiB until NetworkPolicy landed; it is 32
/// MiB since, which holds 10,000 of these policies).
const APPLY_CHUNK_BYTES: usize = 3 * 1024 * 1024;

/// The two interfaces as vswitchd NetworkInterfaces, labelled for the policies.
pub fn interfaces(kind: PortKind, client_ns: &str, server_ns: &str) -> String {
    let document = |name: &str, netns: &str, role: &str| {
        format!(
            "\
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata:
  name: {name}
  labels: {{{}: {}, {}: {role}}}
spec:
  netns: {netns}
  kind: {}
",
            rules::SELECTED.0,
            rules::SELECTED.1,
            rules::ROLE,
            kind.as_str()
        )
    };
    format!(
        "{}---\n{}",
        document("c1", client_ns, CLIENT),
        document("c2", server_ns, SERVER)
    )
}

/// Builds one variant of `policy` with `count` policies.
///
/// # Errors
/// A setup step fails; nft is missing (skip); vswitchd refuses the interfaces or the
/// NetworkPolicies (skip: not supported yet); OVS is asked for (skip: l2 only).
pub fn prepare(variant: Variant, context: &Context, count: u32) -> Result<Prepared, PrepareError> {
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let mut topology = Topology::new();
    let node = topology.namespace("node")?;
    let c1 = topology.namespace("c1")?;
    let c2 = topology.namespace("c2")?;
    match variant {
        Variant::Ovs => Err(PrepareError::Skip(
            "the Open vSwitch column covers l2 only".into(),
        )),
        Variant::Kernel => {
            if count > 0 && cmd::which("nft").is_none() {
                return Err(PrepareError::Skip(
                    "nft not found: the kernel's policies need nftables (apt-get install \
                     nftables)"
                        .into(),
                ));
            }
            topology.veth(&node, "v1", &c1, "eth0")?;
            topology.veth(&node, "v2", &c2, "eth0")?;
            topology.address(&c1, "eth0", &format!("{KERNEL_CLIENT}/24"))?;
            topology.address(&c2, "eth0", &format!("{KERNEL_SERVER}/24"))?;
            topology.ip(&node, &["link", "add", "br0", "type", "bridge"])?;
            topology.ip(&node, &["link", "set", "v1", "master", "br0"])?;
            topology.ip(&node, &["link", "set", "v2", "master", "br0"])?;
            topology.ip(&node, &["link", "set", "br0", "up"])?;
            let applied = if count > 0 {
                let applied = load_nftables(&topology, &node, count)?;
                announce(count, &variant, &applied, "nft -f");
                Some(applied)
            } else {
                None
            };
            Ok(Prepared {
                daemons: Vec::new(),
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip: KERNEL_SERVER.into(),
                backends: Vec::new(),
                connrate_ip: Some(KERNEL_SERVER.into()),
                cpu: SwitchCpu::Kernel,
                unreachable_is_unsupported: false,
                datagrams: false,
                applied,
                flood: None,
                table: None,
            })
        }
        Variant::Vswitch { kind, settings } => {
            let binaries = context.binaries()?;
            let daemon = Daemon::start(binaries, &node, settings, &topology.scratch("vswitchd")?)?;
            daemon
                .apply("interfaces", &interfaces(kind, &c1, &c2))
                .map_err(refusal_is_unsupported)?;
            let client_ip = daemon.interface_ip("c1", &c1)?;
            let server_ip = daemon.interface_ip("c2", &c2)?;
            let applied = if count > 0 {
                let pair = Pair {
                    subnet: VSWITCH_SUBNET,
                    client: client_ip,
                    server: server_ip,
                };
                let applied = apply_policies(&daemon, count, &pair)?;
                announce(count, &variant, &applied, "vswitchctl apply");
                Some(applied)
            } else {
                None
            };
            settle()?;
            let cpu = SwitchCpu::Processes(vec![daemon.pid()]);
            Ok(Prepared {
                daemons: vec![daemon],
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip: server_ip.into(),
                backends: Vec::new(),
                connrate_ip: Some(server_ip.into()),
                cpu,
                unreachable_is_unsupported: false,
                datagrams: false,
                applied,
                flood: None,
                table: None,
            })
        }
    }
}

fn announce(count: usize, variant: &Variant, applied: &Applied, how: &str) {
    eprintln!(
        "perf: [policy-{count} {}] {} policies applied in {:.2} s ({how}, {} request(s)); \
         {} found after",
        variant.label(),
        applied.resources,
        applied.seconds,
        applied.requests,
        applied.listed
    );
}

/// The kernel side: br_netfilter on in the node, then the rule set in one `nft -f`, timed;
/// checked by counting the policies jumped to from c2's ingress chain.
fn load_nftables(topology: &Topology, node: &str, count: usize) -> Result<Applied, PrepareError> {
    // A new namespace already has it on (br_netfilter built in); set it so that the
    // rule set's premise is explicit, and fail loudly where the kernel lacks it.
    topology
        .sysctl(node, "net.bridge.bridge-nf-call-iptables", "1")
        .context("bridged IPv4 through the forward hook (br_netfilter)")?;
    let pair = Pair {
        subnet: KERNEL_SUBNET,
        client: KERNEL_CLIENT,
        server: KERNEL_SERVER,
    };
    let policies = rules::generate(count, &pair);
    let pods = [
        Pod {
            name: "c1".into(),
            ip: KERNEL_CLIENT,
            labels: rules::interface_labels(CLIENT),
        },
        Pod {
            name: "c2".into(),
            ip: KERNEL_SERVER,
            labels: rules::interface_labels(SERVER),
        },
    ];
    let path = topology.scratch("nft")?.join("policy.nft");
    std::fs::write(&path, rules::nftables(&policies, &pods)).map_err(anyhow::Error::from)?;
    let started = Instant::now();
    topology.exec_within(node, "nft", &["-f", &path.to_string_lossy()], APPLY_LIMIT)?;
    let seconds = started.elapsed().as_secs_f64();
    let listing = topology.exec(
        node,
        "nft",
        &["list", "chain", "ip", rules::NFT_TABLE, "ingress_c2"],
    )?;
    let listed = listing
        .lines()
        .filter(|line| line.trim_start().starts_with("jump p"))
        .count();
    Ok(Applied {
        seconds,
        unit: "policies",
        resources: count,
        listed,
        requests: 1,
    })
}

/// The vswitchd side: the rule set as NetworkPolicies through `vswitchctl apply -f` (one
/// request, or several under [`APPLY_CHUNK_BYTES`] if the daemon refuses the body as too
/// large), timed until `get networkpolicies -A` lists them all; then [`COMPILE_GRACE`].
fn apply_policies(daemon: &Daemon, count: usize, pair: &Pair) -> Result<Applied, PrepareError> {
    let documents = rules::kubernetes_documents(&rules::generate(count, pair));
    let whole = rules::json_array(&documents);
    let started = Instant::now();
    let mut requests = 1;
    match daemon.apply_within("policies", &whole, APPLY_LIMIT) {
        Ok(()) => {}
        Err(err) if is_too_large(&err) => {
            let groups = rules::chunks(&documents, APPLY_CHUNK_BYTES);
            eprintln!(
                "perf: [policy] vswitchd refused {} policies ({} bytes) in one apply ({err:#}); \
                 applying them in {} requests",
                documents.len(),
                whole.len(),
                groups.len()
            );
            requests = groups.len();
            for (index, group) in groups.into_iter().enumerate() {
                daemon
                    .apply_within(
                        &format!("policies-{index}"),
                        &rules::json_array(group),
                        APPLY_LIMIT,
                    )
                    .map_err(refusal_is_unsupported)?;
            }
        }
        Err(err) => return Err(refusal_is_unsupported(err)),
    }
    let deadline = started + APPLY_LIMIT;
    let listed = loop {
        let json =
            daemon.ctl_within(&["get", "networkpolicies", "-A", "-o", "json"], APPLY_LIMIT)?;
        let listed = count_items(&json)?;
        if listed >= count {
            break listed;
        }
        if Instant::now() >= deadline {
            return Err(PrepareError::Fail(anyhow!(
                "vswitchd lists {listed} of {count} NetworkPolicies {APPLY_LIMIT:?} after the apply"
            )));
        }
        cmd::sleep(Duration::from_millis(100))?;
    };
    let seconds = started.elapsed().as_secs_f64();
    cmd::sleep(COMPILE_GRACE)?;
    check_decisions(daemon)?;
    Ok(Applied {
        seconds,
        unit: "policies",
        resources: count,
        listed,
        requests,
    })
}

/// Connections the applied rule set must allow (the measured ones) and deny (the same
/// pair on a port no policy names, the measured port with the other protocol, the
/// reverse direction), as `(from, to, port)` for `vswitchctl policy explain`.
pub fn expected_decisions() -> Vec<(&'static str, &'static str, String, bool)> {
    let measured = rules::measured_ports().into_iter().map(|ports| {
        let port = format!("{}/{}", ports.first, ports.protocol.kubernetes());
        ("c1", "c2", port, true)
    });
    measured
        .chain([
            ("c1", "c2", "5202/TCP".to_owned(), false),
            (
                "c1",
                "c2",
                format!("{}/UDP", crate::tools::iperf::PORT),
                false,
            ),
            (
                "c2",
                "c1",
                format!("{}/TCP", crate::tools::iperf::PORT),
                false,
            ),
        ])
        .collect()
}

/// Asks vswitchd (`policy explain`) whether the compiled policies decide
/// [`expected_decisions`] as the rule set says: a classifier that lets everything through
/// (or nothing) would otherwise go unnoticed, or be measured as fast.
fn check_decisions(daemon: &Daemon) -> Result<(), PrepareError> {
    for (from, to, port, allowed) in expected_decisions() {
        let json = daemon.ctl(&[
            "policy", "explain", "--from", from, "--to", to, "--port", &port, "-o", "json",
        ])?;
        let value: Value =
            serde_json::from_str(&json).context("vswitchctl policy explain -o json: not JSON")?;
        if value.get("allowed").and_then(Value::as_bool) != Some(allowed) {
            return Err(PrepareError::Fail(anyhow!(
                "vswitchd decides {from} -> {to} {port} otherwise than the rule set says \
                 (want allowed: {allowed}): {json}"
            )));
        }
    }
    Ok(())
}

/// Whether vswitchd refused an apply because its body is too large (HTTP 413).
fn is_too_large(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Refused>().is_some_and(|refused| {
        let message = refused.0.to_ascii_lowercase();
        message.contains("larger than") || message.contains("too large") || message.contains("413")
    })
}

/// The number of resources in the JSON of `vswitchctl get KIND -A -o json`: a JSON array,
/// an object with `items`, or one resource.
///
/// # Errors
/// Not JSON.
pub fn count_items(json: &str) -> anyhow::Result<usize> {
    let value: Value = serde_json::from_str(json).context("vswitchctl get -o json: not JSON")?;
    Ok(match &value {
        Value::Array(items) => items.len(),
        Value::Object(map) => match map.get("items") {
            Some(Value::Array(items)) => items.len(),
            _ => 1,
        },
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use vswitch::control::kinds::Resource;
    use vswitch::control::resource::parse_documents;

    use super::*;

    #[test]
    fn interfaces_parse_as_vswitch_resources() {
        let text = interfaces(PortKind::Veth, "vsperf-1-1-c1", "vsperf-1-1-c2");
        let documents = parse_documents(&text).expect("vswitchd's parser takes the YAML");
        let interfaces: Vec<_> = documents
            .into_iter()
            .map(|document| match document.resource {
                Resource::NetworkInterface(nic) => nic,
                other => panic!("not a NetworkInterface: {other:?}"),
            })
            .collect();
        assert_eq!(interfaces.len(), 2);
        assert_eq!(interfaces[0].metadata.name, "c1");
        assert_eq!(interfaces[1].metadata.name, "c2");
        for (nic, role) in interfaces.iter().zip([CLIENT, SERVER]) {
            let labels: Vec<(&str, &str)> = nic
                .metadata
                .labels
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .collect();
            assert_eq!(labels, [rules::SELECTED, (rules::ROLE, role)]);
            assert_eq!(nic.spec.kind, vswitch::port::PortKind::Veth);
        }
    }

    #[test]
    fn decisions_cover_allowed_and_denied() {
        let decisions = expected_decisions();
        assert_eq!(decisions.len(), 6);
        assert_eq!(decisions[0], ("c1", "c2", "5201/TCP".to_owned(), true));
        assert_eq!(decisions[2], ("c1", "c2", "9001/UDP".to_owned(), true));
        assert!(decisions[3..].iter().all(|decision| !decision.3));
    }

    #[test]
    fn listed_items_are_counted() {
        assert_eq!(count_items("[]").unwrap(), 0);
        assert_eq!(count_items(r#"[{"kind":"NetworkPolicy"},{}]"#).unwrap(), 2);
        assert_eq!(count_items(r#"{"items":[{},{},{}]}"#).unwrap(), 3);
        assert_eq!(count_items(r#"{"kind":"NetworkPolicy"}"#).unwrap(), 1);
        assert!(count_items("nope").is_err());
    }

    #[test]
    fn too_large_refusals_are_recognised() {
        let refused: anyhow::Error = Refused(
            "`apply` refused: request body is larger than 4194304 bytes; split the documents \
             into several requests"
                .into(),
        )
        .into();
        assert!(is_too_large(&refused));
        let other: anyhow::Error = Refused("`apply` refused: unknown kind".into()).into();
        assert!(!is_too_large(&other));
        assert!(!is_too_large(&anyhow!("larger than life")));
    }

    /// Every count the scenario measures fits the generator, and the largest rule set
    /// splits into several requests under [`APPLY_CHUNK_BYTES`] (the path a daemon with a
    /// 4 MiB body limit makes the harness take).
    #[test]
    fn counts_fit_the_generator() {
        for count in COUNTS {
            assert!(usize::try_from(count).unwrap() <= rules::MAX_POLICIES);
        }
        let pair = Pair {
            subnet: VSWITCH_SUBNET,
            client: Ipv4Addr::new(172, 30, 0, 2),
            server: Ipv4Addr::new(172, 30, 0, 3),
        };
        let documents = rules::kubernetes_documents(&rules::generate(10_000, &pair));
        let size = rules::json_array(&documents).len();
        let groups = rules::chunks(&documents, APPLY_CHUNK_BYTES);
        assert!(
            groups.len() >= 2,
            "{size} bytes in {} group(s)",
            groups.len()
        );
        assert!(
            groups
                .iter()
                .all(|group| rules::json_array(group).len() <= APPLY_CHUNK_BYTES)
        );
    }
}
