//! `lb`: a client reaches three backends through a load balancer's virtual IP.
//!
//! ```text
//!                                          ┌── b1 10.84.2.2/24
//!  client 10.84.1.2/24 ── (c0) node (br0) ─┼── b2 10.84.2.3/24
//!                                          └── b3 10.84.2.4/24
//!   kernel:  the node namespace routes (ip_forward=1) between c0 10.84.1.1/24 and the
//!            bridge br0 10.84.2.1/24 that enslaves b1..b3's veths; the client's and the
//!            backends' default routes point at the node, so requests and replies both cross
//!            it. nftables DNAT in its prerouting hook, as kube-proxy's nftables mode does
//!            it: virtual IP 10.84.0.80 (TCP 5201, UDP 9000 and 9001) picks the backend by
//!            `jhash ip saddr` (ClientIP affinity: all of a client's flows to one backend),
//!            virtual IP 10.84.0.81 (TCP 9002) by `numgen random` per new connection;
//!            conntrack un-NATs the replies. Both addresses are on no link (a service range,
//!            as Kubernetes' ClusterIPs), reached through the client's default route.
//!   vswitch: vswitchd in the node's place; client, b1, b2, b3 attached from the default
//!            subnet 172.30.0.0/16, the backends labelled app=perf; LoadBalancer `perf` on
//!            172.30.0.80 (the same ports) with `sessionAffinity: ClientIP`, and
//!            `perf-connrate` on 172.30.0.81 (TCP 9002) without affinity, each connection
//!            spread by Maglev over its 5-tuple.
//! ```
//! Every backend runs every server (iperf3, the UDP receiver, the pong helper, the
//! connection server) on its own address; the client sends to the virtual IP. iperf3 opens a
//! control connection and then data connections, which must all reach the same backend:
//! hence ClientIP affinity for the first virtual IP. New connections per second are measured
//! against the second one, where affinity would send every connection of the one client to
//! one backend; the progress lines show how they spread over b1..b3.
//!
//! The kernel's IPVS is not used: kernels built without `CONFIG_IP_VS` (such as this
//! harness's development machine) do not have it, and kube-proxy's nftables mode does the
//! same job with conntrack and DNAT.
//!
//! nft is needed for the kernel side: when it is missing, that variant is skipped with the
//! package to install. A vswitchd that refuses either LoadBalancer (`sessionAffinity:
//! ClientIP` before that feature lands) is reported as "not supported by this vswitchd yet":
//! measuring iperf3 through a 5-tuple hash would fail or measure something else.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::{Context, PrepareError, Prepared, Variant, refusal_is_unsupported, settle};
use crate::tools::cmd;
use crate::tools::cpu::SwitchCpu;
use crate::tools::endpoints::Backend;
use crate::tools::vswitchd::Daemon;
use crate::tools::{connrate, iperf, latency, udp};
use crate::topo::Topology;

/// The kernel variant's virtual IP with ClientIP affinity (TCP and UDP measurements).
const KERNEL_VIP: Ipv4Addr = Ipv4Addr::new(10, 84, 0, 80);
/// The kernel variant's virtual IP without affinity (new connections per second).
const KERNEL_CONN_VIP: Ipv4Addr = Ipv4Addr::new(10, 84, 0, 81);
/// The kernel variant's backend addresses, on br0.
const KERNEL_BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 84, 2, 2),
    Ipv4Addr::new(10, 84, 2, 3),
    Ipv4Addr::new(10, 84, 2, 4),
];

/// The vswitch variant's virtual IP with ClientIP affinity, a free address of the default
/// subnet (attached interfaces get the lowest ones).
const VSWITCH_VIP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 80);
/// The vswitch variant's virtual IP without affinity.
const VSWITCH_CONN_VIP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 81);

/// The label the backends carry and the LoadBalancers select.
const LABEL: (&str, &str) = ("app", "perf");

/// The seed of the kernel's affinity hash: fixed, so every run picks the same backend for
/// the client.
const JHASH_SEED: u32 = 0x5eed;

/// The kernel variant's DNAT, loaded with `nft -f` inside the node namespace: one rule per
/// virtual IP, the backend chosen by a hash of the client's address (affinity) or at random
/// per new connection; conntrack keeps each connection on its backend and un-NATs replies.
pub fn ruleset(affinity_vip: Ipv4Addr, conn_vip: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let map = backends
        .iter()
        .enumerate()
        .map(|(slot, ip)| format!("{slot} : {ip}"))
        .collect::<Vec<_>>()
        .join(", ");
    let count = backends.len();
    format!(
        "\
table ip vsperf_lb {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        # ClientIP affinity: every flow of one client address goes to the same backend.
        ip daddr {affinity_vip} meta l4proto . th dport {{ tcp . {tcp}, udp . {udp}, udp . {rtt} }} \
dnat to jhash ip saddr mod {count} seed {JHASH_SEED:#x} map {{ {map} }}
        # No affinity: each new connection to a backend at random (kube-proxy's nftables mode).
        ip daddr {conn_vip} tcp dport {conn} dnat to numgen random mod {count} map {{ {map} }}
    }}
}}
",
        tcp = iperf::PORT,
        udp = udp::PORT,
        rtt = latency::PORT,
        conn = connrate::PORT,
    )
}

/// The vswitch variant's LoadBalancers: `perf` with ClientIP affinity for the TCP, UDP and
/// latency measurements, `perf-connrate` without, for new connections per second. Both
/// select the backends by [`LABEL`].
pub fn load_balancers(affinity_vip: Ipv4Addr, conn_vip: Ipv4Addr) -> String {
    let (key, value) = LABEL;
    format!(
        "\
apiVersion: vswitch/v1alpha1
kind: LoadBalancer
metadata:
  name: perf
spec:
  type: Internal
  network: default
  ips: [{affinity_vip}]
  networkInterfaceSelector:
    matchLabels: {{{key}: {value}}}
  ports:
  - {{protocol: TCP, port: {tcp}}}
  - {{protocol: UDP, port: {udp}}}
  - {{protocol: UDP, port: {rtt}}}
  sessionAffinity: ClientIP
---
apiVersion: vswitch/v1alpha1
kind: LoadBalancer
metadata:
  name: perf-connrate
spec:
  type: Internal
  network: default
  ips: [{conn_vip}]
  networkInterfaceSelector:
    matchLabels: {{{key}: {value}}}
  ports:
  - {{protocol: TCP, port: {conn}}}
",
        tcp = iperf::PORT,
        udp = udp::PORT,
        rtt = latency::PORT,
        conn = connrate::PORT,
    )
}

/// Builds one variant of `lb`.
///
/// # Errors
/// A setup step fails, nft is missing (skip), vswitchd refuses the LoadBalancers (skip), or
/// OVS is asked for (skip: the OVS column covers `l2` only).
pub fn prepare(variant: Variant, context: &Context) -> Result<Prepared, PrepareError> {
    if variant == Variant::Ovs {
        return Err(PrepareError::Skip(
            "the Open vSwitch column covers l2 only".into(),
        ));
    }
    if variant == Variant::Kernel && cmd::which("nft").is_none() {
        return Err(PrepareError::Skip(
            "nft not found: the kernel load balancer needs nftables (apt-get install nftables)"
                .into(),
        ));
    }
    let mut topology = Topology::new();
    let node = topology.namespace("node")?;
    let client = topology.namespace("client")?;
    let mut backend_ns = Vec::new();
    for name in ["b1", "b2", "b3"] {
        backend_ns.push((name, topology.namespace(name)?));
    }
    match variant {
        Variant::Vswitch { kind, settings } => {
            let binaries = context.binaries()?;
            let daemon = Daemon::start(binaries, &node, settings, &topology.scratch("vswitchd")?)?;
            daemon
                .apply(
                    "loadbalancers",
                    &load_balancers(VSWITCH_VIP, VSWITCH_CONN_VIP),
                )
                .map_err(refusal_is_unsupported)?;
            daemon
                .attach(&client, "client", kind, None, None)
                .map_err(refusal_is_unsupported)?;
            for (name, netns) in &backend_ns {
                daemon
                    .attach_labelled(netns, name, kind, None, None, &[LABEL])
                    .map_err(refusal_is_unsupported)?;
            }
            let mut backends = Vec::new();
            for (name, netns) in backend_ns {
                let ip = daemon.interface_ip(name, &netns)?;
                backends.push(Backend { netns, ip });
            }
            for lb in ["perf", "perf-connrate"] {
                wait_for_backends(&daemon, lb, backends.len())?;
            }
            settle()?;
            let cpu = SwitchCpu::Processes(vec![daemon.pid()]);
            Ok(Prepared {
                daemons: vec![daemon],
                ovs: None,
                topology,
                client_ns: client,
                server_ns: backends[0].netns.clone(),
                server_ip: VSWITCH_VIP.into(),
                backends,
                connrate_ip: Some(VSWITCH_CONN_VIP.into()),
                cpu,
                unreachable_is_unsupported: true,
                datagrams: true,
                applied: None,
                flood: None,
                table: None,
            })
        }
        _ => {
            topology.veth(&node, "c0", &client, "eth0")?;
            topology.address(&node, "c0", "10.84.1.1/24")?;
            topology.address(&client, "eth0", "10.84.1.2/24")?;
            topology.ip(&client, &["route", "add", "default", "via", "10.84.1.1"])?;
            topology.ip(&node, &["link", "add", "br0", "type", "bridge"])?;
            topology.ip(&node, &["link", "set", "br0", "up"])?;
            topology.address(&node, "br0", "10.84.2.1/24")?;
            let mut backends = Vec::new();
            for ((name, netns), ip) in backend_ns.into_iter().zip(KERNEL_BACKENDS) {
                topology.veth(&node, name, &netns, "eth0")?;
                topology.ip(&node, &["link", "set", name, "master", "br0"])?;
                topology.address(&netns, "eth0", &format!("{ip}/24"))?;
                topology.ip(&netns, &["route", "add", "default", "via", "10.84.2.1"])?;
                backends.push(Backend { netns, ip });
            }
            topology.sysctl(&node, "net.ipv4.ip_forward", "1")?;
            let rules = topology.scratch("nft")?.join("lb.nft");
            std::fs::write(
                &rules,
                ruleset(KERNEL_VIP, KERNEL_CONN_VIP, &KERNEL_BACKENDS),
            )
            .map_err(anyhow::Error::from)?;
            topology.exec(&node, "nft", &["-f", &rules.to_string_lossy()])?;
            Ok(Prepared {
                daemons: Vec::new(),
                ovs: None,
                topology,
                client_ns: client,
                server_ns: backends[0].netns.clone(),
                server_ip: KERNEL_VIP.into(),
                backends,
                connrate_ip: Some(KERNEL_CONN_VIP.into()),
                cpu: SwitchCpu::Kernel,
                unreachable_is_unsupported: false,
                datagrams: true,
                applied: None,
                flood: None,
                table: None,
            })
        }
    }
}

/// Waits until LoadBalancer `name` serves `count` healthy backends (the attaches have
/// reached its selector).
///
/// # Errors
/// It does not within 5 s, or `vswitchctl lb` fails.
fn wait_for_backends(daemon: &Daemon, name: &str, count: usize) -> Result<(), PrepareError> {
    let limit = Duration::from_secs(5);
    let deadline = Instant::now() + limit;
    loop {
        let backends = daemon.lb_backends(name)?;
        let healthy = backends
            .iter()
            .filter(|backend| backend.state == "Healthy")
            .count();
        if healthy >= count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = backends
                .iter()
                .map(|backend| format!("{} {}", backend.interface, backend.state))
                .collect();
            return Err(PrepareError::Fail(anyhow::anyhow!(
                "LoadBalancer {name} serves {healthy} healthy backends after {limit:?}, \
                 want {count} ({})",
                if seen.is_empty() {
                    "none listed".to_owned()
                } else {
                    seen.join(", ")
                }
            )));
        }
        cmd::sleep(Duration::from_millis(50))?;
    }
}

#[cfg(test)]
mod tests {
    use vswitch::control::kinds::Resource;
    use vswitch::control::kinds::load_balancer::{LbProtocol, SessionAffinity};
    use vswitch::control::resource::parse_documents;

    use super::*;

    #[test]
    fn kernel_ruleset_text() {
        let rules = ruleset(KERNEL_VIP, KERNEL_CONN_VIP, &KERNEL_BACKENDS);
        let expected = "\
table ip vsperf_lb {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        # ClientIP affinity: every flow of one client address goes to the same backend.
        ip daddr 10.84.0.80 meta l4proto . th dport { tcp . 5201, udp . 9000, udp . 9001 } \
dnat to jhash ip saddr mod 3 seed 0x5eed map { 0 : 10.84.2.2, 1 : 10.84.2.3, 2 : 10.84.2.4 }
        # No affinity: each new connection to a backend at random (kube-proxy's nftables mode).
        ip daddr 10.84.0.81 tcp dport 9002 dnat to numgen random mod 3 map \
{ 0 : 10.84.2.2, 1 : 10.84.2.3, 2 : 10.84.2.4 }
    }
}
";
        assert_eq!(rules, expected, "got:\n{rules}");
    }

    #[test]
    fn kernel_ruleset_follows_the_backend_count() {
        let two = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
        let rules = ruleset(KERNEL_VIP, KERNEL_CONN_VIP, &two);
        assert!(rules.contains("jhash ip saddr mod 2 "), "{rules}");
        assert!(rules.contains("numgen random mod 2 "), "{rules}");
        assert!(
            rules.contains("map { 0 : 10.0.0.2, 1 : 10.0.0.3 }"),
            "{rules}"
        );
    }

    /// The documents parse as vswitchd's own LoadBalancers (its parser, not its validation:
    /// whether this vswitchd accepts ClientIP affinity is for the run to find out).
    #[test]
    fn load_balancers_parse_as_vswitch_resources() {
        let text = load_balancers(VSWITCH_VIP, VSWITCH_CONN_VIP);
        let documents = parse_documents(&text).expect("vswitchd's parser takes the YAML");
        let specs: Vec<_> = documents
            .into_iter()
            .map(|document| match document.resource {
                Resource::LoadBalancer(lb) => (lb.metadata.name, lb.spec),
                other => panic!("not a LoadBalancer: {other:?}"),
            })
            .collect();
        assert_eq!(specs.len(), 2);
        let ports = |spec: &vswitch::control::kinds::load_balancer::LoadBalancerSpec| {
            spec.ports
                .iter()
                .map(|port| (port.protocol, port.port, port.target_port))
                .collect::<Vec<_>>()
        };

        let (name, affinity) = &specs[0];
        assert_eq!(name, "perf");
        assert_eq!(affinity.network, "default");
        assert_eq!(affinity.ips, [std::net::IpAddr::V4(VSWITCH_VIP)]);
        assert_eq!(affinity.session_affinity, SessionAffinity::ClientIP);
        assert_eq!(affinity.session_affinity_timeout_seconds, None);
        assert_eq!(
            ports(affinity),
            [
                (LbProtocol::TCP, iperf::PORT, None),
                (LbProtocol::UDP, udp::PORT, None),
                (LbProtocol::UDP, latency::PORT, None),
            ]
        );
        let selector = affinity
            .network_interface_selector
            .as_ref()
            .expect("a selector");
        assert_eq!(
            selector.match_labels.get("app").map(String::as_str),
            Some("perf")
        );

        let (name, spread) = &specs[1];
        assert_eq!(name, "perf-connrate");
        assert_eq!(spread.ips, [std::net::IpAddr::V4(VSWITCH_CONN_VIP)]);
        assert_eq!(spread.session_affinity, SessionAffinity::None);
        assert_eq!(ports(spread), [(LbProtocol::TCP, connrate::PORT, None)]);
        assert_eq!(
            spread.network_interface_selector,
            affinity.network_interface_selector
        );
    }
}
