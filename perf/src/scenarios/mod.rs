//! Scenarios (topologies) and the measurement loop every variant of every scenario goes
//! through.
//!
//! A scenario's `prepare` builds one variant's namespaces and switch and says which
//! namespace sends, which receives (or, behind a load balancer, which backends do) and at
//! what address; [`run_variant`] then checks connectivity, warms up and measures N runs.
//! Everything the variant built is owned by [`Prepared`] and torn down when it is dropped,
//! whatever happened.
//!
//! Scenarios: `l2`, `routed`, `vxlan`, `nat` (one client, one server), `lb` (one client,
//! three backends behind virtual IPs; it adds the TCP conn/s row) and `policy` (one client,
//! one server, with N network policies: one [`Case`] per N, each its own table; it measures
//! TCP and TCP conn/s, and the time the rule set took to apply), and `floods` (one container
//! floods the switch, one [`Case`] per [`floods::FloodKind`], while two others measure an
//! unrelated TCP flow without and during the flood), `conntrack` (`nat` with N other
//! connections in the table), `routes` (`routed` with N other routes in the router's table)
//! and `macs` (`vxlan` with N other MACs learned behind the remote node), one [`Case`] per
//! N in the last three; `runners` and `runners-via-hub` (containers on two runners of a
//! hub-and-spoke overlay, reaching each other directly or through the hub).

pub mod conntrack;
pub mod floods;
pub mod l2;
pub mod lb;
pub mod macs;
pub mod nat;
pub mod policy;
pub mod routed;
pub mod routes;
pub mod runners;
pub mod vxlan;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Result;

use crate::report::{Check, Metric, Outcome, Sample, VariantResult, format_value};
use crate::tools::cmd::{self, Interrupted};
use crate::tools::cpu::SwitchCpu;
use crate::tools::datapath::Datapath;
use crate::tools::endpoints::{Backend, EndpointCpus, Endpoints};
use crate::tools::ovs::{Ovs, OvsTools};
use crate::tools::profile::{self, Recording};
use crate::tools::vswitchd::{
    Binaries, Daemon, DaemonSettings, PortKind, Refused, WorkerPlacement,
};
use crate::tools::{connrate, iperf, latency, udp};
use crate::topo::Topology;

/// Durations and counts of one invocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Measured runs per variant.
    pub runs: u32,
    /// Seconds of each TCP measurement (iperf3 takes whole seconds).
    pub tcp_seconds: u32,
    /// Seconds of each UDP packet-rate measurement.
    pub udp_seconds: f64,
    /// Seconds of each latency measurement.
    pub rtt_seconds: f64,
    /// Seconds of each new-connections measurement (scenarios with a load balancer).
    pub conn_seconds: f64,
    /// Seconds of the TCP warmup (UDP warms up for half a second).
    pub warmup_seconds: u32,
    /// The CPUs the client and server tools are pinned to (`--pin-endpoints`); `None` lets
    /// the scheduler place them.
    pub endpoint_cpus: Option<EndpointCpus>,
}

impl Settings {
    /// The settings of a full run: 5 runs of 3 s each.
    pub const FULL: Settings = Settings {
        runs: 5,
        tcp_seconds: 3,
        udp_seconds: 3.0,
        rtt_seconds: 3.0,
        conn_seconds: 3.0,
        warmup_seconds: 2,
        endpoint_cpus: None,
    };

    /// The settings of `--quick`: 3 runs of 1 s each.
    pub const QUICK: Settings = Settings {
        runs: 3,
        tcp_seconds: 1,
        udp_seconds: 1.0,
        rtt_seconds: 1.0,
        conn_seconds: 1.0,
        warmup_seconds: 1,
        endpoint_cpus: None,
    };

    /// One line per setting, for README.SETUP.
    pub fn describe(&self) -> Vec<String> {
        vec![
            format!("runs per variant: {} (after one warmup)", self.runs),
            format!(
                "TCP: iperf3 -t {} with -P 1 and -P 4, port {}",
                self.tcp_seconds,
                iperf::PORT
            ),
            format!(
                "UDP 64B: {} s per run, {}-byte payload, port {}",
                self.udp_seconds,
                udp::PAYLOAD_64B_FRAME,
                udp::PORT
            ),
            format!(
                "RTT: {} s per run, port {}",
                self.rtt_seconds,
                latency::PORT
            ),
            format!(
                "TCP conn/s (lb, policy): {} s per run, {} workers, port {}",
                self.conn_seconds,
                connrate::WORKERS,
                connrate::PORT
            ),
            format!(
                "warmup: TCP {} s, UDP 0.5 s (not in policy), connections 0.5 s (lb, policy)",
                self.warmup_seconds
            ),
            match self.endpoint_cpus {
                Some(cpus) => format!(
                    "endpoints: client tools on CPU {}, server tools on CPU {} (taskset)",
                    cpus.client, cpus.server
                ),
                None => "endpoints: placed by the scheduler".to_owned(),
            },
        ]
    }
}

/// What carries the traffic in one column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The Linux kernel's own equivalent (bridge, routing, vxlan, nftables).
    Kernel,
    /// vswitchd with containers attached through `kind` ports, run with `settings`.
    Vswitch {
        /// Port kind used for every container.
        kind: PortKind,
        /// Workers, busy-poll window and worker placement.
        settings: DaemonSettings,
    },
    /// Open vSwitch, userspace datapath.
    Ovs,
}

impl Variant {
    /// The column label: `kernel`, `vswitch-tap-w1`, `vswitch-tap-w1-poll200` (busy-polling
    /// for 200 µs), `vswitch-tap-w1-float` (workers not pinned), `ovs-netdev`.
    pub fn label(&self) -> String {
        match self {
            Variant::Kernel => crate::report::BASELINE.to_owned(),
            Variant::Vswitch { kind, settings } => {
                let mut label = format!("vswitch-{}-w{}", kind.as_str(), settings.workers);
                if settings.busy_poll_us > 0 {
                    label.push_str(&format!("-poll{}", settings.busy_poll_us));
                }
                if !settings.pinned {
                    label.push_str("-float");
                }
                label
            }
            Variant::Ovs => "ovs-netdev".to_owned(),
        }
    }
}

/// The address family of a case's traffic (`--family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Family {
    /// IPv4.
    #[value(name = "4")]
    V4,
    /// IPv6: `l2`, `routed` and `nat` (the switch routes IPv6 between dual-stack Subnets and
    /// masquerades it through the Uplink; `lb` and `vxlan` have no IPv6 case yet, and the
    /// overlay's underlay is IPv4 only).
    #[value(name = "6")]
    V6,
}

impl Scenario {
    /// Whether the scenario can run over `family`.
    pub fn supports(self, family: Family) -> bool {
        family == Family::V4 || matches!(self, Scenario::L2 | Scenario::Routed | Scenario::Nat)
    }
}

/// The topologies the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Scenario {
    /// Two containers on one node, one L2 segment.
    L2,
    /// Two containers in two subnets, routed through the gateway.
    Routed,
    /// Two containers on two nodes, across a VXLAN tunnel.
    Vxlan,
    /// A container reaching an outside server through masquerade.
    Nat,
    /// A client reaching three backends through a load balancer's virtual IP.
    Lb,
    /// Two containers on one node with 0, 100, 1,000 and 10,000 network policies.
    Policy,
    /// One container floods (MACs, ARP, ND, fragments, SYNs, NAT) while two others measure
    /// an unrelated flow.
    Floods,
    /// `nat` with 0 to 1,000,000 other connections in the connection-tracking table.
    Conntrack,
    /// `routed` with 0 to 1,000,000 other routes in the router's table.
    Routes,
    /// `vxlan` with 0 to 100,000 other MACs learned behind the remote node.
    Macs,
    /// Containers on two runners of a hub-and-spoke overlay whose runners reach each other
    /// directly (`spec.runnerToRunner: Direct`).
    Runners,
    /// `runners` with the traffic routed through the hub (`ViaHub`, the default).
    RunnersViaHub,
    /// `runners` without encapsulation (`encapsulation: None`): each runner's subnet routed
    /// to its node's address on the underlay.
    RunnersRouted,
}

/// The table sizes of the scenarios that measure one per size (`--policies`,
/// `--connections`, `--routes`, `--macs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// `policy`: NetworkPolicies.
    pub policies: Vec<u32>,
    /// `conntrack`: tracked connections.
    pub connections: Vec<u32>,
    /// `routes`: static routes.
    pub routes: Vec<u32>,
    /// `macs`: learned MACs.
    pub macs: Vec<u32>,
}

impl Counts {
    /// The sizes `scenario` measures, or `None` if it has one case per family instead.
    fn of(&self, scenario: Scenario) -> Option<&[u32]> {
        match scenario {
            Scenario::Policy => Some(&self.policies),
            Scenario::Conntrack => Some(&self.connections),
            Scenario::Routes => Some(&self.routes),
            Scenario::Macs => Some(&self.macs),
            _ => None,
        }
    }
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 13] = [
        Scenario::L2,
        Scenario::Routed,
        Scenario::Vxlan,
        Scenario::Nat,
        Scenario::Lb,
        Scenario::Policy,
        Scenario::Floods,
        Scenario::Conntrack,
        Scenario::Routes,
        Scenario::Macs,
        Scenario::Runners,
        Scenario::RunnersViaHub,
        Scenario::RunnersRouted,
    ];

    /// The scenarios a run without `--scenario` measures: all but `floods`, which measures
    /// something else (a flow's rate under a flood, not the switch's own) and takes as long
    /// as the others together.
    pub const DEFAULT: [Scenario; 6] = [
        Scenario::L2,
        Scenario::Routed,
        Scenario::Vxlan,
        Scenario::Nat,
        Scenario::Lb,
        Scenario::Policy,
    ];

    /// Stable key.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::L2 => "l2",
            Scenario::Routed => "routed",
            Scenario::Vxlan => "vxlan",
            Scenario::Nat => "nat",
            Scenario::Lb => "lb",
            Scenario::Policy => "policy",
            Scenario::Floods => "floods",
            Scenario::Conntrack => "conntrack",
            Scenario::Routes => "routes",
            Scenario::Macs => "macs",
            Scenario::Runners => "runners",
            Scenario::RunnersViaHub => "runners-via-hub",
            Scenario::RunnersRouted => "runners-routed",
        }
    }

    /// Looks a key up.
    pub fn from_key(key: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.key() == key)
    }

    /// One line on the topology and its kernel equivalent.
    pub fn description(self) -> &'static str {
        match self {
            Scenario::L2 => "two containers on one node, c1 -> c2 (kernel: Linux bridge + veth)",
            Scenario::Routed => {
                "two subnets through the gateway, c1 -> c2 (kernel: router namespace, ip_forward)"
            }
            Scenario::Vxlan => {
                "containers on two nodes across VXLAN, MTU 1450 inside (kernel: bridge + vxlan)"
            }
            Scenario::Nat => {
                "container to an outside server through masquerade (kernel: nftables masquerade)"
            }
            Scenario::Lb => {
                "client to 3 backends behind a virtual IP, ClientIP affinity; conn/s without \
                 affinity (kernel: nftables DNAT, jhash / numgen)"
            }
            Scenario::Policy => {
                "two containers on one node, c1 -> c2, with network policies selecting both \
                 (kernel: bridge + br_netfilter, nftables with sets)"
            }
            Scenario::Floods => {
                "c1 floods the switch while c3 -> c4 measure TCP without and during the flood \
                 (kernel: bridge, nftables masquerade and DNAT)"
            }
            Scenario::Conntrack => {
                "nat with other connections in the table, c1 -> outside (kernel: nftables \
                 masquerade, nf_conntrack_max raised to fit)"
            }
            Scenario::Routes => {
                "routed with other static routes (/24 to /28) in the table, c1 -> c2 (kernel: \
                 router namespace, ip route)"
            }
            Scenario::Macs => {
                "vxlan with other MACs learned behind the remote node, c1 -> c2 (kernel: bridge \
                 + vxlan, both learning)"
            }
            Scenario::Runners => {
                "containers on two runners of a hub's overlay, straight between the runners \
                 (runnerToRunner: Direct), CPU of the three daemons (kernel: bridge + vxlan, \
                 each runner routing into the other's segment)"
            }
            Scenario::RunnersViaHub => {
                "containers on two runners of a hub's overlay, routed through the hub, CPU \
                 of the three daemons (kernel: bridge + vxlan to a hub namespace that \
                 forwards)"
            }
            Scenario::RunnersRouted => {
                "containers on two runners of a hub's overlay without encapsulation, each \
                 runner's subnet routed to its node on the underlay, CPU of the three daemons \
                 (kernel: plain routes between the runner namespaces)"
            }
        }
    }

    /// The cases of this scenario: one per count of `counts` in `policy`, `conntrack`,
    /// `routes` and `macs`, one per flood kind in `floods`, else one per family of `families`
    /// it [supports](Scenario::supports).
    pub fn cases(self, counts: &Counts, families: &[Family]) -> Vec<Case> {
        let v4 = Case {
            scenario: self,
            count: 0,
            flood: None,
            family: Family::V4,
        };
        if !families.iter().any(|family| self.supports(*family)) {
            return Vec::new();
        }
        if let Some(sizes) = counts.of(self) {
            return sizes.iter().map(|&count| Case { count, ..v4 }).collect();
        }
        match self {
            Scenario::Floods => floods::FloodKind::ALL
                .into_iter()
                .map(|kind| Case {
                    flood: Some(kind),
                    ..v4
                })
                .collect(),
            _ => families
                .iter()
                .filter(|family| self.supports(**family))
                .map(|&family| Case { family, ..v4 })
                .collect(),
        }
    }
}

/// One table of the results: a scenario, and in `policy` the number of policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Case {
    /// The topology.
    pub scenario: Scenario,
    /// `policy`: how many NetworkPolicies (and their nftables translation); `conntrack`,
    /// `routes`, `macs`: how many connections, routes or MACs the table holds while the flow
    /// is measured; 0 elsewhere.
    pub count: u32,
    /// `floods`: what the flooder sends; `None` elsewhere.
    pub flood: Option<floods::FloodKind>,
    /// The traffic's address family (IPv6 in `l2`, `routed` and `nat` only).
    pub family: Family,
}

impl Case {
    /// Stable key: the scenario's, `policy-<count>` in `policy`, `floods-<kind>` in
    /// `floods`; `-ipv6` appended over IPv6 (`l2-ipv6`).
    pub fn key(self) -> String {
        let key = match (self.scenario, self.flood) {
            (Scenario::Policy, _) => format!("policy-{}", self.count),
            (Scenario::Conntrack, _) => format!("conntrack-{}", self.count),
            (Scenario::Routes, _) => format!("routes-{}", self.count),
            (Scenario::Macs, _) => format!("macs-{}", self.count),
            (Scenario::Floods, Some(kind)) => format!("floods-{}", kind.key()),
            (scenario, _) => scenario.key().to_owned(),
        };
        match self.family {
            Family::V4 => key,
            Family::V6 => format!("{key}-ipv6"),
        }
    }

    /// Looks a key up.
    pub fn from_key(key: &str) -> Option<Case> {
        if let Some(base) = key.strip_suffix("-ipv6") {
            return Case::from_key(base)
                .filter(|case| case.scenario.supports(Family::V6))
                .map(|case| Case {
                    family: Family::V6,
                    ..case
                });
        }
        for (prefix, scenario) in [
            ("policy-", Scenario::Policy),
            ("conntrack-", Scenario::Conntrack),
            ("routes-", Scenario::Routes),
            ("macs-", Scenario::Macs),
        ] {
            if let Some(count) = key.strip_prefix(prefix) {
                return Some(Case {
                    scenario,
                    count: count.parse().ok()?,
                    flood: None,
                    family: Family::V4,
                });
            }
        }
        if let Some(kind) = key.strip_prefix("floods-") {
            return Some(Case {
                scenario: Scenario::Floods,
                count: 0,
                flood: Some(floods::FloodKind::from_key(kind)?),
                family: Family::V4,
            });
        }
        Scenario::from_key(key)
            .filter(|scenario| {
                !matches!(
                    scenario,
                    Scenario::Policy
                        | Scenario::Floods
                        | Scenario::Conntrack
                        | Scenario::Routes
                        | Scenario::Macs
                )
            })
            .map(|scenario| Case {
                scenario,
                count: 0,
                flood: None,
                family: Family::V4,
            })
    }

    /// One line on the topology and its kernel equivalent.
    pub fn description(self) -> String {
        match self.scenario {
            Scenario::Policy => format!(
                "{} policies: {}",
                crate::report::format_count(u64::from(self.count)),
                self.scenario.description()
            ),
            Scenario::Conntrack => format!(
                "{} connections: {}",
                crate::report::format_count(u64::from(self.count)),
                self.scenario.description()
            ),
            Scenario::Routes => format!(
                "{} routes: {}",
                crate::report::format_count(u64::from(self.count)),
                self.scenario.description()
            ),
            Scenario::Macs => format!(
                "{} MACs: {}",
                crate::report::format_count(u64::from(self.count)),
                self.scenario.description()
            ),
            Scenario::Floods => format!(
                "{}: {}",
                self.flood.map_or("?", floods::FloodKind::description),
                self.scenario.description()
            ),
            scenario if self.family == Family::V6 => {
                format!("over IPv6: {}", scenario.description())
            }
            scenario => scenario.description().to_owned(),
        }
    }

    /// Builds `variant` of this case.
    ///
    /// # Errors
    /// See [`PrepareError`].
    pub fn prepare(self, variant: Variant, context: &Context) -> Result<Prepared, PrepareError> {
        match self.scenario {
            Scenario::L2 => l2::prepare(variant, context, self.family),
            Scenario::Routed => routed::prepare(variant, context, self.family),
            Scenario::Vxlan => vxlan::prepare(variant, context),
            Scenario::Nat => nat::prepare(variant, context, self.family),
            Scenario::Lb => lb::prepare(variant, context),
            Scenario::Policy => policy::prepare(variant, context, self.count),
            Scenario::Conntrack => conntrack::prepare(variant, context, self.count),
            Scenario::Routes => routes::prepare(variant, context, self.count),
            Scenario::Macs => macs::prepare(variant, context, self.count),
            Scenario::Runners => runners::prepare(variant, context, runners::Mode::Direct),
            Scenario::RunnersViaHub => runners::prepare(variant, context, runners::Mode::ViaHub),
            Scenario::RunnersRouted => runners::prepare(variant, context, runners::Mode::Routed),
            Scenario::Floods => match self.flood {
                Some(kind) => floods::prepare(variant, context, kind),
                None => Err(PrepareError::Fail(anyhow::anyhow!("floods without a kind"))),
            },
        }
    }
}

/// What `prepare` needs beyond the variant.
#[derive(Debug, Clone)]
pub struct Context {
    /// vswitchd and vswitchctl, when vswitch variants are wanted.
    pub binaries: Option<Binaries>,
    /// Open vSwitch, when `--with-ovs` found it.
    pub ovs: Option<OvsTools>,
    /// vxlan: vswitchd's Overlay with remote checksum offload (`--vxlan-rco`).
    pub vxlan_rco: bool,
    /// `--profile`: Linux perf, and where the profiles go.
    pub profile: Option<Profiler>,
}

/// Where `--profile` writes, and with which `perf`.
#[derive(Debug, Clone)]
pub struct Profiler {
    /// Linux perf.
    pub perf: std::path::PathBuf,
    /// The directory of the profiles.
    pub dir: std::path::PathBuf,
}

impl Context {
    /// The binaries, or a failure saying they were not located.
    ///
    /// # Errors
    /// Not located (the harness checks this before any scenario runs).
    pub fn binaries(&self) -> Result<&Binaries, PrepareError> {
        self.binaries
            .as_ref()
            .ok_or_else(|| PrepareError::Fail(anyhow::anyhow!("vswitchd was not located")))
    }

    /// The Open vSwitch tools, or a skip.
    ///
    /// # Errors
    /// Not found.
    pub fn ovs(&self) -> Result<&OvsTools, PrepareError> {
        self.ovs
            .as_ref()
            .ok_or_else(|| PrepareError::Skip("Open vSwitch not available".into()))
    }
}

/// A built variant: who talks to whom, and everything to tear down.
///
/// Fields drop in declaration order: the switches stop before their namespaces go.
#[derive(Debug)]
pub struct Prepared {
    /// vswitchd instances (one per node).
    pub daemons: Vec<Daemon>,
    /// Open vSwitch, for its variant.
    #[expect(dead_code, reason = "held only to be stopped on drop")]
    pub ovs: Option<Ovs>,
    /// The namespaces (torn down on drop).
    pub topology: Topology,
    /// Where the traffic sources run.
    pub client_ns: String,
    /// Where the sinks run.
    pub server_ns: String,
    /// The address the sources send to: the sinks' own, or a load balancer's virtual IP.
    pub server_ip: IpAddr,
    /// Behind a load balancer: the backends, each running every sink on its own address
    /// (then `server_ns` is not used); empty otherwise.
    pub backends: Vec<Backend>,
    /// Where new TCP connections per second are measured (a virtual IP spreading each
    /// connection over `backends`); `None` in scenarios without a load balancer.
    pub connrate_ip: Option<IpAddr>,
    /// Where the switch's CPU time is read.
    pub cpu: SwitchCpu,
    /// If the client cannot reach the server, the vswitchd lacks the feature (a skip)
    /// rather than being broken (a failure).
    pub unreachable_is_unsupported: bool,
    /// Whether UDP 64B and RTT are measured (`policy` allows TCP and the connectivity
    /// check only, and measures TCP).
    pub datagrams: bool,
    /// The scenario's rule set, when it has one (`policy`): how long it took to apply.
    pub applied: Option<Applied>,
    /// `floods`: the flood run during every second measurement of the flow.
    pub flood: Option<floods::FloodPlan>,
    /// `conntrack`, `routes`, `macs`: where the table's size is read after each run.
    pub table: Option<TableProbe>,
}

/// Where a scenario's table size is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableProbe {
    /// vswitchd's connection count (`vswitchctl conntrack --count`, the first daemon).
    VswitchdConntrack,
    /// The kernel's, in `netns` (`nf_conntrack_count`).
    KernelConntrack {
        /// The namespace that tracks.
        netns: String,
    },
    /// vswitchd's static routes (`vswitchctl routes --count`, the first daemon).
    VswitchdRoutes,
    /// The kernel's routes through a router, in `netns` (`ip -4 route`).
    KernelRoutes {
        /// The router's namespace.
        netns: String,
    },
    /// MACs vswitchd learned behind remote VTEPs (`vswitchctl fdb --count`, the first
    /// daemon).
    VswitchdRemoteMacs,
    /// MACs the bridge `br0` in `netns` learned on its port `vxlan0`.
    KernelRemoteMacs {
        /// The node's namespace.
        netns: String,
    },
}

impl Prepared {
    /// The table's size now (`None` without a probe).
    ///
    /// # Errors
    /// The count cannot be read.
    pub fn table_entries(&self) -> Result<Option<u64>> {
        let text = match (&self.table, self.daemons.first()) {
            (None, _) => return Ok(None),
            (Some(TableProbe::VswitchdConntrack), Some(daemon)) => {
                daemon.ctl(&["conntrack", "--count"])?
            }
            (Some(TableProbe::VswitchdRoutes), Some(daemon)) => {
                let counts = daemon.ctl(&["routes", "--count", "-o", "json"])?;
                return count_field(&counts, "static").map(Some);
            }
            (Some(TableProbe::VswitchdRemoteMacs), Some(daemon)) => {
                let counts = daemon.ctl(&["fdb", "--count", "-o", "json"])?;
                return count_field(&counts, "remote").map(Some);
            }
            (
                Some(
                    TableProbe::VswitchdConntrack
                    | TableProbe::VswitchdRoutes
                    | TableProbe::VswitchdRemoteMacs,
                ),
                None,
            ) => {
                anyhow::bail!("no vswitchd to count the table of")
            }
            (Some(TableProbe::KernelRoutes { netns }), _) => {
                let rows = cmd::run(
                    cmd::command("ip", &["-n", netns, "-4", "route", "show"]),
                    Duration::from_secs(60),
                )?;
                return Ok(Some(
                    rows.lines().filter(|l| l.contains(" via ")).count() as u64
                ));
            }
            (Some(TableProbe::KernelRemoteMacs { netns }), _) => {
                let rows = cmd::run(
                    cmd::command("bridge", &["-n", netns, "fdb", "show", "br", "br0"]),
                    Duration::from_secs(60),
                )?;
                let learned = rows
                    .lines()
                    .filter(|l| {
                        l.contains(" dev vxlan0 ")
                            && l.contains(" master br0")
                            && !l.contains("permanent")
                    })
                    .count();
                return Ok(Some(learned as u64));
            }
            (Some(TableProbe::KernelConntrack { netns }), _) => cmd::run(
                cmd::command(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        netns,
                        "cat",
                        "/proc/sys/net/netfilter/nf_conntrack_count",
                    ],
                ),
                Duration::from_secs(10),
            )?,
        };
        let count = text
            .split_whitespace()
            .find_map(|word| word.replace(',', "").parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no count in {text:?}"))?;
        Ok(Some(count))
    }
}

/// The number `field` of a vswitchctl `--count -o json` answer.
fn count_field(json: &str, field: &str) -> Result<u64> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    value[field]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no {field:?} count in {json}"))
}

/// How a rule set or table was applied (`policy`, `routes`): recorded once per variant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied {
    /// Seconds from the start of the apply until the switch had all of it (the kernel:
    /// `nft -f` returned; vswitchd: `get` lists every policy).
    pub seconds: f64,
    /// What was applied: `policies`, `routes`.
    pub unit: &'static str,
    /// How many were applied.
    pub resources: usize,
    /// How many were found after the apply (the check).
    pub listed: usize,
    /// Requests it took (vswitchd splits an apply its daemon refuses as too large).
    pub requests: usize,
}

/// Why a variant could not be built.
#[derive(Debug)]
pub enum PrepareError {
    /// Expected: a missing tool or a feature this vswitchd does not have yet.
    Skip(String),
    /// Broken.
    Fail(anyhow::Error),
}

impl From<anyhow::Error> for PrepareError {
    fn from(err: anyhow::Error) -> PrepareError {
        PrepareError::Fail(err)
    }
}

/// Turns a refusal by the daemon into "not supported by this vswitchd yet" (for scenarios
/// that need a feature this vswitchd does not have); other errors stay failures.
pub fn refusal_is_unsupported(err: anyhow::Error) -> PrepareError {
    match err.downcast_ref::<Refused>() {
        Some(refused) => {
            PrepareError::Skip(format!("not supported by this vswitchd yet ({refused})"))
        }
        None => PrepareError::Fail(err),
    }
}

/// The variants to run for one scenario, in order: the kernel first (the baseline), then
/// vswitchd per kind, worker count, busy-poll window and placement, then Open vSwitch.
pub fn variants(
    kernel_only: bool,
    kinds: &[PortKind],
    workers: &[u32],
    busy_polls: &[u32],
    placements: &[WorkerPlacement],
    with_ovs: bool,
) -> Vec<Variant> {
    let mut list = vec![Variant::Kernel];
    if !kernel_only {
        // Polling windows are measured with the fewest workers only: N polling workers hold
        // N cores, which on a small machine leaves the endpoints nothing.
        let fewest = workers.iter().copied().min();
        for &kind in kinds {
            for &workers in workers {
                for &busy_poll_us in busy_polls {
                    if busy_poll_us != 0 && Some(workers) != fewest {
                        continue;
                    }
                    for &placement in placements {
                        let settings = DaemonSettings {
                            workers,
                            busy_poll_us,
                            pinned: placement == WorkerPlacement::Pinned,
                            conntrack_max: None,
                        };
                        list.push(Variant::Vswitch { kind, settings });
                    }
                }
            }
        }
    }
    if with_ovs {
        list.push(Variant::Ovs);
    }
    list
}

fn progress(case: Case, variant: &Variant, message: &str) {
    eprintln!("perf: [{} {}] {message}", case.key(), variant.label());
}

/// A progress line from a scenario's `prepare` (which knows its case, not its variant).
pub fn progress_line(message: &str) {
    eprintln!("perf: {message}");
}

/// Builds, measures and tears down one variant.
///
/// # Errors
/// Only [`Interrupted`]: every other problem is recorded in the result's outcome.
pub fn run_variant(
    case: Case,
    variant: Variant,
    context: &Context,
    settings: &Settings,
) -> Result<VariantResult> {
    let mut result = VariantResult {
        scenario: case.key(),
        variant: variant.label(),
        outcome: Outcome::Measured,
        samples: Vec::new(),
    };
    progress(case, &variant, "building topology");
    let prepared = match case.prepare(variant, context) {
        Ok(prepared) => prepared,
        Err(PrepareError::Skip(reason)) => {
            progress(case, &variant, &format!("skipped: {reason}"));
            result.outcome = Outcome::Skipped(reason);
            return Ok(result);
        }
        Err(PrepareError::Fail(err)) => return failed(case, &variant, result, err),
    };
    let profiler = context.profile.as_ref();
    match measure(
        case,
        &variant,
        &prepared,
        settings,
        profiler,
        &mut result.samples,
    ) {
        Ok(()) => {}
        Err(PrepareError::Skip(reason)) => {
            progress(case, &variant, &format!("skipped: {reason}"));
            result.outcome = Outcome::Skipped(reason);
        }
        Err(PrepareError::Fail(err)) => {
            let logs: Vec<String> = prepared
                .daemons
                .iter()
                .map(|daemon| daemon.log_tail(10))
                .filter(|tail| !tail.is_empty())
                .collect();
            drop(prepared);
            let err = if logs.is_empty() {
                err
            } else {
                anyhow::anyhow!("{err:#}\nvswitchd log ends with:\n{}", logs.join("\n--\n"))
            };
            return failed(case, &variant, result, err);
        }
    }
    drop(prepared);
    Ok(result)
}

fn failed(
    case: Case,
    variant: &Variant,
    mut result: VariantResult,
    err: anyhow::Error,
) -> Result<VariantResult> {
    if err.is::<Interrupted>() || cmd::interrupted() {
        return Err(Interrupted.into());
    }
    let reason = format!("{err:#}");
    progress(case, variant, &format!("FAILED: {reason}"));
    result.outcome = Outcome::Failed(reason);
    Ok(result)
}

fn measure(
    case: Case,
    variant: &Variant,
    prepared: &Prepared,
    settings: &Settings,
    profiler: Option<&Profiler>,
    samples: &mut Vec<Sample>,
) -> Result<(), PrepareError> {
    let endpoints = Endpoints {
        server_ns: &prepared.server_ns,
        client_ns: &prepared.client_ns,
        server_ip: prepared.server_ip,
        backends: &prepared.backends,
        cpus: settings.endpoint_cpus,
    };
    let (client, ip) = (&prepared.client_ns, prepared.server_ip);
    let reach = latency::run_ping(&endpoints, 5.0, true)?;
    if reach.received == 0 {
        let what = format!("{client} cannot reach {ip} (UDP ping-pong, 5 s)");
        return Err(if prepared.unreachable_is_unsupported {
            PrepareError::Skip(format!("not supported by this vswitchd yet: {what}"))
        } else {
            PrepareError::Fail(anyhow::anyhow!("no connectivity: {what}"))
        });
    }
    progress(
        case,
        variant,
        &format!("reachable ({} us); warming up", reach.p50_ns / 1000),
    );
    iperf::run_tcp(&endpoints, 1, settings.warmup_seconds.max(1))?;
    if prepared.datagrams {
        udp::run_pps(&endpoints, 0.5, udp::PAYLOAD_64B_FRAME)?;
    }
    if let Some(target) = prepared.connrate_ip {
        connrate::run(&endpoints, target, 0.5)?;
    }
    let key = case.key();
    let label = variant.label();
    let sample = |metric, run, value, check| Sample {
        scenario: key.clone(),
        variant: label.clone(),
        metric,
        run,
        value,
        check,
    };
    if let Some(plan) = &prepared.flood {
        for run in 1..=settings.runs {
            cmd::check_interrupted()?;
            let line = floods::measure_run(plan, &endpoints, settings.tcp_seconds, |m, v, c| {
                samples.push(sample(m, run, v, c));
            })?;
            progress(
                case,
                variant,
                &format!("run {run}/{}: {line}", settings.runs),
            );
        }
        return Ok(());
    }
    if let Some(applied) = prepared.applied {
        let check = Check {
            unit: applied.unit,
            sent: applied.resources as u64,
            delivered: applied.listed as u64,
        };
        samples.push(sample(
            Metric::PolicyApplySeconds,
            1,
            applied.seconds,
            check,
        ));
    }
    for run in 1..=settings.runs {
        cmd::check_interrupted()?;
        let sample = |metric, value, check| sample(metric, run, value, check);
        // The daemons' own accounting is read outside the CPU marks (vswitchctl's work is
        // not the run's).
        let accounting = Datapath::read(&prepared.daemons);
        let mark = prepared.cpu.mark()?;
        let tcp1 = iperf::run_tcp(&endpoints, 1, settings.tcp_seconds)?;
        let spent = prepared.cpu.since(mark)?;
        let accounted = accounting
            .and_then(|before| Datapath::used(&before, &Datapath::read(&prepared.daemons)?));
        let bytes = Check {
            unit: "bytes",
            sent: tcp1.bytes_sent,
            delivered: tcp1.bytes_received,
        };
        samples.push(sample(Metric::TcpGbps1, tcp1.gbits_per_second, bytes));
        if let Some((machine, switch)) = spent.per_gb(tcp1.bytes_received) {
            samples.push(sample(Metric::CpuMachineSecondsPerGb, machine, bytes));
            samples.push(sample(Metric::CpuSwitchSecondsPerGb, switch, bytes));
            let gb = tcp1.bytes_received as f64 / 1e9;
            samples.push(sample(
                Metric::CtxSwitchesMachinePerGb,
                spent.machine_switches as f64 / gb,
                bytes,
            ));
            if let Some(used) = &accounted {
                for (metric, value) in accounting_samples(used, tcp1.bytes_received) {
                    samples.push(sample(metric, value, bytes));
                }
                if run == 1 {
                    progress(
                        case,
                        variant,
                        &format!(
                            "run 1, TCP 1 stream, per GB: {} wake-ups, {} preemptions; system calls {}",
                            format_value(used.wakeups as f64 / gb),
                            format_value(used.preemptions as f64 / gb),
                            used.calls_per_gb(tcp1.bytes_received),
                        ),
                    );
                }
            }
        }
        if let Some(entries) = prepared.table_entries()? {
            samples.push(sample(
                Metric::TableEntries,
                entries as f64,
                Check {
                    unit: "entries",
                    sent: u64::from(case.count),
                    delivered: entries,
                },
            ));
        }
        if !prepared.daemons.is_empty() {
            let mut resident = 0;
            for daemon in &prepared.daemons {
                resident += daemon.resident_bytes()?;
            }
            samples.push(sample(
                Metric::SwitchResidentMib,
                resident as f64 / f64::from(1u32 << 20),
                Check {
                    unit: "daemons",
                    sent: prepared.daemons.len() as u64,
                    delivered: prepared.daemons.len() as u64,
                },
            ));
        }
        let tcp4 = iperf::run_tcp(&endpoints, 4, settings.tcp_seconds)?;
        let bytes4 = Check {
            unit: "bytes",
            sent: tcp4.bytes_sent,
            delivered: tcp4.bytes_received,
        };
        samples.push(sample(Metric::TcpGbps4, tcp4.gbits_per_second, bytes4));
        let mut datagrams = String::new();
        if prepared.datagrams {
            let pps = udp::run_pps(&endpoints, settings.udp_seconds, udp::PAYLOAD_64B_FRAME)?;
            let packets = Check {
                unit: "packets",
                sent: pps.sent,
                delivered: pps.received,
            };
            samples.push(sample(Metric::UdpPps, pps.packets_per_second, packets));
            samples.push(sample(Metric::UdpLossPercent, pps.loss_percent, packets));
            let rtt = latency::run_ping(&endpoints, settings.rtt_seconds, false)?;
            let replies = Check {
                unit: "replies",
                sent: rtt.sent,
                delivered: rtt.received,
            };
            let micros = |nanos: u64| nanos as f64 / 1000.0;
            samples.push(sample(Metric::RttP50Us, micros(rtt.p50_ns), replies));
            samples.push(sample(Metric::RttP99Us, micros(rtt.p99_ns), replies));
            samples.push(sample(Metric::RttP999Us, micros(rtt.p999_ns), replies));
            datagrams = format!(
                ", UDP {} pkt/s ({:.1}% loss, {} in socket), RTT p50 {} us p99 {} us",
                format_value(pps.packets_per_second),
                pps.loss_percent,
                pps.rcvbuf_errors,
                format_value(micros(rtt.p50_ns)),
                format_value(micros(rtt.p99_ns)),
            );
        }
        let mut connections = String::new();
        if let Some(target) = prepared.connrate_ip {
            let rate = connrate::run(&endpoints, target, settings.conn_seconds)?;
            let check = Check {
                unit: "connections",
                sent: rate.attempted,
                delivered: rate.completed,
            };
            samples.push(sample(Metric::TcpConnPerSecond, rate.per_second, check));
            connections = format!(", {} conn/s", format_value(rate.per_second));
            if run == 1 && !prepared.backends.is_empty() {
                let unspread = if rate.accepted.contains(&0) {
                    " (NOT spread: a backend got none)"
                } else {
                    ""
                };
                progress(
                    case,
                    variant,
                    &format!(
                        "connections to {target}:{} per backend: {}{unspread}",
                        connrate::PORT,
                        rate.split(&backend_names(prepared))
                    ),
                );
            }
        }
        progress(
            case,
            variant,
            &format!(
                "run {run}/{}: TCP {} / {} Gbit/s (1/4 streams, {} retransmits){datagrams}, \
                 CPU {} s/GB{}",
                settings.runs,
                format_value(tcp1.gbits_per_second),
                format_value(tcp4.gbits_per_second),
                tcp1.retransmits + tcp4.retransmits,
                spent
                    .per_gb(tcp1.bytes_received)
                    .map_or_else(|| "-".to_owned(), |(machine, _)| format_value(machine)),
                connections,
            ),
        );
    }
    if let Some(profiler) = profiler {
        // One more 1-stream TCP run, recorded, after the measured ones: the recording
        // perturbs no figure.
        let stem = profile::file_stem(&case.key(), &variant.label());
        let recording = Recording::start(
            &profiler.perf,
            &profiler.dir,
            &stem,
            settings.tcp_seconds + 1,
        )?;
        iperf::run_tcp(&endpoints, 1, settings.tcp_seconds)?;
        let path = recording.finish(Duration::from_secs(u64::from(settings.tcp_seconds) + 30))?;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        progress(
            case,
            variant,
            &format!(
                "profile of a TCP 1-stream run in {}: {}",
                path.display(),
                profile::top_lines(&text, 5).join("; ")
            ),
        );
    }
    Ok(())
}

/// The per-GB figures of vswitchd's accounting over a run that delivered `bytes`.
fn accounting_samples(used: &Datapath, bytes: u64) -> Vec<(Metric, f64)> {
    let moved = bytes as f64;
    let gb = moved / 1e9;
    let mut figures = vec![
        (Metric::WakeupsPerGb, used.wakeups as f64 / gb),
        (Metric::SyscallsPerGb, used.total_syscalls() as f64 / gb),
        (
            Metric::SoftwareChecksumRatio,
            used.checksum_bytes as f64 / moved,
        ),
        (
            Metric::SoftwareSegmentationRatio,
            used.segmented_bytes as f64 / moved,
        ),
    ];
    if let Some(frames) = used.frames_per_batch() {
        figures.push((Metric::FramesPerBatch, frames));
    }
    figures
}

/// The backends' short names (the role part of their namespace names), for progress lines.
fn backend_names(prepared: &Prepared) -> Vec<&str> {
    prepared
        .backends
        .iter()
        .map(|backend| backend.netns.rsplit('-').next().unwrap_or(&backend.netns))
        .collect()
}

/// A short pause so a freshly attached port finishes coming up (addresses, routes) before
/// the connectivity check starts counting.
///
/// # Errors
/// Interrupted.
pub fn settle() -> Result<()> {
    cmd::sleep(Duration::from_millis(200))
}

/// Starts vswitchd in `node` and attaches `containers` (netns, name) with `kind`, in the
/// embedded default subnet; returns the daemon and each container's address.
///
/// # Errors
/// The daemon does not start, or refuses an attach ([`Refused`]).
pub fn vswitch_with_containers(
    topology: &Topology,
    context: &Context,
    node: &str,
    settings: DaemonSettings,
    kind: PortKind,
    containers: &[(&str, &str)],
) -> Result<(Daemon, Vec<Ipv4Addr>), PrepareError> {
    let binaries = context.binaries()?;
    let daemon = Daemon::start(binaries, node, settings, &topology.scratch("vswitchd")?)?;
    let mut addresses = Vec::new();
    for (netns, name) in containers {
        daemon.attach(netns, name, kind, None, None)?;
    }
    for (netns, name) in containers {
        addresses.push(daemon.interface_ip(name, netns)?);
    }
    settle()?;
    Ok((daemon, addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_labels() {
        assert_eq!(Variant::Kernel.label(), "kernel");
        let settings = DaemonSettings {
            workers: 2,
            busy_poll_us: 0,
            pinned: true,
            conntrack_max: None,
        };
        let tap = Variant::Vswitch {
            kind: PortKind::Tap,
            settings,
        };
        assert_eq!(tap.label(), "vswitch-tap-w2");
        let polling = Variant::Vswitch {
            kind: PortKind::Veth,
            settings: DaemonSettings {
                workers: 1,
                busy_poll_us: 200,
                ..settings
            },
        };
        assert_eq!(polling.label(), "vswitch-veth-w1-poll200");
        let floating = Variant::Vswitch {
            kind: PortKind::Tap,
            settings: DaemonSettings {
                busy_poll_us: 50,
                pinned: false,
                ..settings
            },
        };
        assert_eq!(floating.label(), "vswitch-tap-w2-poll50-float");
        assert_eq!(Variant::Ovs.label(), "ovs-netdev");
    }

    #[test]
    fn variant_order_kernel_first() {
        let list = variants(
            false,
            &[PortKind::Tap, PortKind::Veth],
            &[2, 1],
            &[0, 200],
            &[WorkerPlacement::Pinned],
            true,
        );
        let labels: Vec<String> = list.iter().map(Variant::label).collect();
        assert_eq!(
            labels,
            [
                "kernel",
                "vswitch-tap-w2",
                "vswitch-tap-w1",
                "vswitch-tap-w1-poll200",
                "vswitch-veth-w2",
                "vswitch-veth-w1",
                "vswitch-veth-w1-poll200",
                "ovs-netdev"
            ],
            "polling only with the fewest workers"
        );
        let placements = [WorkerPlacement::Pinned, WorkerPlacement::Floating];
        let labels: Vec<String> = variants(false, &[PortKind::Tap], &[1], &[0], &placements, false)
            .iter()
            .map(Variant::label)
            .collect();
        assert_eq!(labels, ["kernel", "vswitch-tap-w1", "vswitch-tap-w1-float"]);
        assert_eq!(
            variants(true, &[PortKind::Tap], &[1], &[0], &placements, false),
            [Variant::Kernel]
        );
    }

    #[test]
    fn scenario_keys_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::from_key(scenario.key()), Some(scenario));
        }
        assert_eq!(Scenario::from_key("bogus"), None);
    }

    #[test]
    fn cases_and_their_keys() {
        let counts = Counts {
            policies: vec![0, 100, 10_000],
            connections: vec![0, 1000],
            routes: vec![1000],
            macs: vec![0, 100_000],
        };
        let v4 = [Family::V4];
        let cases = Scenario::Policy.cases(&counts, &v4);
        let keys: Vec<String> = cases.iter().map(|case| case.key()).collect();
        assert_eq!(keys, ["policy-0", "policy-100", "policy-10000"]);
        for case in cases {
            assert_eq!(Case::from_key(&case.key()), Some(case));
        }
        assert!(
            Case::from_key("policy-1000")
                .unwrap()
                .description()
                .starts_with("1,000 policies: two containers")
        );
        let conntrack = Scenario::Conntrack.cases(&counts, &v4);
        let keys: Vec<String> = conntrack.iter().map(|case| case.key()).collect();
        assert_eq!(keys, ["conntrack-0", "conntrack-1000"]);
        for case in conntrack {
            assert_eq!(Case::from_key(&case.key()), Some(case));
        }
        assert!(
            Case::from_key("conntrack-1000000")
                .unwrap()
                .description()
                .starts_with("1,000,000 connections: nat with")
        );
        assert_eq!(Case::from_key("conntrack"), None);
        let grown: Vec<String> = [Scenario::Routes, Scenario::Macs]
            .iter()
            .flat_map(|scenario| scenario.cases(&counts, &v4))
            .map(|case| {
                assert_eq!(Case::from_key(&case.key()), Some(case));
                case.key()
            })
            .collect();
        assert_eq!(grown, ["routes-1000", "macs-0", "macs-100000"]);
        assert!(
            Case::from_key("routes-1000000")
                .unwrap()
                .description()
                .starts_with("1,000,000 routes: routed with")
        );
        assert!(
            Case::from_key("macs-100000")
                .unwrap()
                .description()
                .starts_with("100,000 MACs: vxlan with")
        );
        assert_eq!(Case::from_key("macs"), None);
        assert!(Scenario::Conntrack.cases(&counts, &[Family::V6]).is_empty());
        let l2 = Scenario::L2.cases(&counts, &v4);
        assert_eq!(
            l2.len(),
            1,
            "only policy and conntrack have one case per count"
        );
        assert_eq!(l2[0].key(), "l2");
        assert_eq!(Case::from_key("l2"), Some(l2[0]));
        let both = [Family::V4, Family::V6];
        let routed = Scenario::Routed.cases(&counts, &both);
        let keys: Vec<String> = routed.iter().map(|case| case.key()).collect();
        assert_eq!(keys, ["routed", "routed-ipv6"]);
        assert_eq!(Case::from_key("routed-ipv6"), Some(routed[1]));
        assert!(routed[1].description().starts_with("over IPv6: "));
        let nat = Scenario::Nat.cases(&counts, &both);
        let keys: Vec<String> = nat.iter().map(|case| case.key()).collect();
        assert_eq!(keys, ["nat", "nat-ipv6"]);
        assert_eq!(Case::from_key("nat-ipv6"), Some(nat[1]));
        assert!(Scenario::Lb.cases(&counts, &[Family::V6]).is_empty());
        assert!(Scenario::Policy.cases(&counts, &[Family::V6]).is_empty());
        assert_eq!(Case::from_key("lb-ipv6"), None, "lb is IPv4 only");
        assert_eq!(Case::from_key("policy"), None, "policy has counts");
        assert_eq!(Case::from_key("policy-x"), None);
        assert_eq!(Case::from_key("bogus"), None);
        let floods = Scenario::Floods.cases(&counts, &v4);
        assert_eq!(floods.len(), floods::FloodKind::ALL.len());
        assert_eq!(floods[0].key(), "floods-cpu");
        assert_eq!(floods[2].key(), "floods-arp");
        for case in floods {
            assert_eq!(Case::from_key(&case.key()), Some(case));
        }
        assert_eq!(Case::from_key("floods"), None, "floods has kinds");
        assert_eq!(Case::from_key("floods-bogus"), None);
    }

    #[test]
    fn refusals_become_skips() {
        let refused: anyhow::Error = Refused("unknown kind Overlay".into()).into();
        match refusal_is_unsupported(refused) {
            PrepareError::Skip(reason) => {
                assert!(
                    reason.contains("not supported by this vswitchd yet"),
                    "{reason}"
                );
                assert!(reason.contains("unknown kind Overlay"), "{reason}");
            }
            PrepareError::Fail(err) => panic!("expected a skip, got {err}"),
        }
        assert!(matches!(
            refusal_is_unsupported(anyhow::anyhow!("disk full")),
            PrepareError::Fail(_)
        ));
    }
}
