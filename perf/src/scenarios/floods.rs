//! `floods`: one container floods the switch while two others measure an unrelated flow.
//!
//! ```text
//!  c1 (flooder) ──┐                     ┌── c3 (iperf3 client) ── -> c4
//!  c2 (target)  ──┼── switch (node sw) ──┼── c4 (iperf3 server)
//!                 └──── o0 ── out 10.82.0.2/24 (outside, behind masquerade)
//!   kernel:  bridge br0 (172.30.0.1/16, the gateway) in `sw` enslaving c1..c4's veths,
//!            ip_forward=1, o0 10.82.0.1/24; nftables masquerades what leaves through o0
//!            and DNATs the virtual IP 172.30.255.80:80 to c2:8080 (as `nat` and `lb` build
//!            their kernel sides); c1..c4 172.30.0.2-5/16, default route via 172.30.0.1
//!   vswitch: vswitchd in `sw`; c1..c4 attached from the default subnet (c2 labelled
//!            app=flood), o0 as the Uplink owning 10.82.0.1 with a NATGateway for the default
//!            Network, and LoadBalancer `flood` on 172.30.255.80:80 -> c2:8080
//! ```
//! Each case is one flood kind ([`FloodKind`]), sent by `scripts/flooder.py` in c1 (raw
//! frames from c1's own MAC, as fast as python sends them). Every run measures c3 -> c4
//! iperf3 TCP without the flood, then again while it runs, and records both and their
//! ratio (goal: >= 0.8x).

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use super::{Context, PrepareError, Prepared, Variant, refusal_is_unsupported, settle};
use crate::report::{Check, Metric, format_value};
use crate::tools::cmd::{self, Background};
use crate::tools::cpu::SwitchCpu;
use crate::tools::endpoints::Endpoints;
use crate::tools::iperf;
use crate::tools::vswitchd::Daemon;
use crate::topo::Topology;

/// The flooder, also used by `vswitch/tests/floods.rs`.
const FLOODER: &str = include_str!("../../../scripts/flooder.py");

/// The gateway of the subnet (vswitchd's embedded default, and the kernel's br0).
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);

/// The load-balanced address (outside vswitchd's IPAM range in practice: it allocates from
/// the start of the subnet).
const VIP: Ipv4Addr = Ipv4Addr::new(172, 30, 255, 80);

/// The outside server, behind the masquerade.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 82, 0, 2);

/// What c1 floods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloodKind {
    /// No frames: c1 only spins on a core for as long as a flood lasts. The control: what
    /// the unrelated flow loses to a busy container alone, whatever the switch.
    Cpu,
    /// Broadcast frames from random source MACs.
    Mac,
    /// ARP requests for the gateway.
    Arp,
    /// IPv6 neighbour solicitations to solicited-node groups.
    Nd,
    /// Overlapping, never-completed IPv4 fragments to c2.
    Frag,
    /// TCP SYNs from random ports at the load-balanced address.
    Syn,
    /// TCP SYNs from random ports to the outside, through the masquerade: NAT ports and
    /// conntrack entries.
    Nat,
}

impl FloodKind {
    /// Every kind, in run order.
    pub const ALL: [FloodKind; 7] = [
        FloodKind::Cpu,
        FloodKind::Mac,
        FloodKind::Arp,
        FloodKind::Nd,
        FloodKind::Frag,
        FloodKind::Syn,
        FloodKind::Nat,
    ];

    /// Stable key (the case is `floods-<key>`).
    pub fn key(self) -> &'static str {
        match self {
            FloodKind::Cpu => "cpu",
            FloodKind::Mac => "mac",
            FloodKind::Arp => "arp",
            FloodKind::Nd => "nd",
            FloodKind::Frag => "frag",
            FloodKind::Syn => "syn",
            FloodKind::Nat => "nat",
        }
    }

    /// Looks a key up.
    pub fn from_key(key: &str) -> Option<FloodKind> {
        FloodKind::ALL.into_iter().find(|kind| kind.key() == key)
    }

    /// The flooder's kind for this flood (`nat` sends `syn` to the outside).
    pub fn flooder_kind(self) -> &'static str {
        match self {
            FloodKind::Nat => "syn",
            kind => kind.key(),
        }
    }

    /// One line on the flood.
    pub fn description(self) -> &'static str {
        match self {
            FloodKind::Cpu => "no frames, a busy loop (the control: CPU contention alone)",
            FloodKind::Mac => "new source MACs (broadcast)",
            FloodKind::Arp => "ARP requests for the gateway",
            FloodKind::Nd => "IPv6 neighbour solicitations (multicast)",
            FloodKind::Frag => "overlapping, never-completed IPv4 fragments to a neighbour",
            FloodKind::Syn => "TCP SYNs at a load-balanced address",
            FloodKind::Nat => "TCP SYNs to the outside through masquerade (NAT ports, conntrack)",
        }
    }
}

/// The flood a prepared variant runs: in which namespace, with which flooder arguments
/// (after `KIND IFNAME SECONDS`).
#[derive(Debug, Clone)]
pub struct FloodPlan {
    /// The kind.
    pub kind: FloodKind,
    /// c1's namespace.
    pub netns: String,
    /// The kind's arguments.
    pub args: Vec<String>,
}

/// The vswitch variant's resources: the uplink with its NATGateway, and the LoadBalancer.
fn vswitch_resources() -> String {
    format!(
        "apiVersion: vswitch/v1alpha1
kind: Uplink
metadata:
  name: flood
spec:
  interface: o0
  addresses: [10.82.0.1/24]
  gateway: {OUTSIDE}
---
apiVersion: vswitch/v1alpha1
kind: NATGateway
metadata:
  name: flood
spec:
  network: default
  ips: [10.82.0.1]
---
apiVersion: vswitch/v1alpha1
kind: LoadBalancer
metadata:
  name: flood
spec:
  type: Internal
  network: default
  ips: [{VIP}]
  networkInterfaceSelector: {{matchLabels: {{app: flood}}}}
  ports: [{{port: 80, targetPort: 8080}}]
"
    )
}

/// The kernel variant's masquerade and DNAT, loaded with `nft -f` in `sw`.
fn kernel_ruleset(target: Ipv4Addr) -> String {
    format!(
        "table ip vsperf_floods {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP} tcp dport 80 dnat to {target}:8080
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"o0\" masquerade
    }}
}}
"
    )
}

/// Builds one variant of `floods` for `kind`.
///
/// # Errors
/// A setup step fails, nft is missing (kernel: skip), vswitchd refuses the configuration
/// (skip), or OVS is asked for (skip).
pub fn prepare(
    variant: Variant,
    context: &Context,
    kind: FloodKind,
) -> Result<Prepared, PrepareError> {
    if variant == Variant::Ovs {
        return Err(PrepareError::Skip(
            "the Open vSwitch column covers l2 only".into(),
        ));
    }
    if variant == Variant::Kernel && cmd::which("nft").is_none() {
        return Err(PrepareError::Skip(
            "nft not found: the kernel side needs nftables (apt-get install nftables)".into(),
        ));
    }
    let mut topology = Topology::new();
    let sw = topology.namespace("sw")?;
    let containers: Vec<String> = (1..=4)
        .map(|i| topology.namespace(&format!("c{i}")))
        .collect::<Result<_, _>>()?;
    let outside = topology.namespace("out")?;
    topology.veth(&sw, "o0", &outside, "eth0")?;
    topology.address(&outside, "eth0", &format!("{OUTSIDE}/24"))?;
    let (daemons, addresses, gateway_mac, cpu) = match variant {
        Variant::Vswitch {
            kind: port,
            settings,
        } => {
            let binaries = context.binaries()?;
            let daemon = Daemon::start(binaries, &sw, settings, &topology.scratch("vswitchd")?)?;
            for (i, netns) in containers.iter().enumerate() {
                let name = format!("c{}", i + 1);
                let labels: &[(&str, &str)] = if i == 1 { &[("app", "flood")] } else { &[] };
                daemon.attach_labelled(netns, &name, port, None, None, labels)?;
            }
            let mut addresses = Vec::new();
            for (i, netns) in containers.iter().enumerate() {
                addresses.push(daemon.interface_ip(&format!("c{}", i + 1), netns)?);
            }
            daemon
                .apply("floods", &vswitch_resources())
                .map_err(refusal_is_unsupported)?;
            let subnet: serde_json::Value =
                serde_json::from_str(&daemon.ctl(&["get", "subnet", "default", "-o", "json"])?)
                    .map_err(anyhow::Error::from)?;
            let gateway_mac = subnet["status"]["gatewayMac"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no status.gatewayMac: {subnet}"))?
                .to_owned();
            let cpu = SwitchCpu::Processes(vec![daemon.pid()]);
            (vec![daemon], addresses, gateway_mac, cpu)
        }
        _ => {
            topology.ip(&sw, &["link", "add", "br0", "type", "bridge"])?;
            let mut addresses = Vec::new();
            for (i, netns) in containers.iter().enumerate() {
                let host_end = format!("v{}", i + 1);
                topology.veth(&sw, &host_end, netns, "eth0")?;
                topology.ip(&sw, &["link", "set", &host_end, "master", "br0"])?;
                let address = Ipv4Addr::new(172, 30, 0, u8::try_from(i + 2).unwrap_or(2));
                topology.address(netns, "eth0", &format!("{address}/16"))?;
                topology.ip(netns, &["route", "add", "default", "via", "172.30.0.1"])?;
                addresses.push(address);
            }
            topology.ip(&sw, &["link", "set", "br0", "up"])?;
            topology.address(&sw, "br0", "172.30.0.1/16")?;
            topology.address(&sw, "o0", "10.82.0.1/24")?;
            topology.sysctl(&sw, "net.ipv4.ip_forward", "1")?;
            let rules = topology.scratch("nft")?.join("floods.nft");
            std::fs::write(&rules, kernel_ruleset(addresses[1])).map_err(anyhow::Error::from)?;
            topology.exec(&sw, "nft", &["-f", &rules.to_string_lossy()])?;
            let gateway_mac = topology
                .exec(&sw, "cat", &["/sys/class/net/br0/address"])?
                .trim()
                .to_owned();
            (Vec::new(), addresses, gateway_mac, SwitchCpu::Kernel)
        }
    };
    let target_mac = topology
        .exec(&containers[1], "cat", &["/sys/class/net/eth0/address"])?
        .trim()
        .to_owned();
    let me = addresses[0].to_string();
    let args: Vec<String> = match kind {
        FloodKind::Cpu | FloodKind::Mac | FloodKind::Nd => Vec::new(),
        FloodKind::Arp => vec![me, GATEWAY.to_string()],
        FloodKind::Frag => vec![me, addresses[1].to_string(), target_mac],
        FloodKind::Syn => vec![me, VIP.to_string(), "80".into(), gateway_mac],
        FloodKind::Nat => vec![me, OUTSIDE.to_string(), "9".into(), gateway_mac],
    };
    settle()?;
    Ok(Prepared {
        daemons,
        ovs: None,
        client_ns: containers[2].clone(),
        server_ns: containers[3].clone(),
        server_ip: addresses[3].into(),
        backends: Vec::new(),
        connrate_ip: None,
        cpu,
        unreachable_is_unsupported: false,
        datagrams: false,
        applied: None,
        flood: Some(FloodPlan {
            kind,
            netns: containers[0].clone(),
            args,
        }),
        table: None,
        topology,
    })
}

/// Runs the flooder for `seconds` in the background.
fn start_flood(plan: &FloodPlan, seconds: f64) -> anyhow::Result<Background> {
    let seconds = format!("{seconds:.1}");
    let mut args = vec![
        "netns",
        "exec",
        plan.netns.as_str(),
        "python3",
        "-c",
        FLOODER,
        plan.kind.flooder_kind(),
        "eth0",
        seconds.as_str(),
    ];
    args.extend(plan.args.iter().map(String::as_str));
    Background::spawn(cmd::command("ip", &args), Stdio::inherit())
}

/// The measurement of one run: the unrelated flow (`endpoints`) without the flood, then
/// during it; samples `TcpGbps1`, `TcpGbps1Flood` and their ratio `FloodRatio`. Returns a
/// progress line.
///
/// # Errors
/// iperf3 or the flooder fails, or an interrupt.
pub fn measure_run(
    plan: &FloodPlan,
    endpoints: &Endpoints<'_>,
    tcp_seconds: u32,
    mut sample: impl FnMut(Metric, f64, Check),
) -> anyhow::Result<String> {
    let quiet = iperf::run_tcp(endpoints, 1, tcp_seconds)?;
    let bytes = |result: &iperf::TcpResult| Check {
        unit: "bytes",
        sent: result.bytes_sent,
        delivered: result.bytes_received,
    };
    sample(Metric::TcpGbps1, quiet.gbits_per_second, bytes(&quiet));
    // The flood starts half a second before the flow and outlasts it.
    let mut flooder = start_flood(plan, f64::from(tcp_seconds) + 2.5)?;
    cmd::sleep(Duration::from_millis(500))?;
    let flooded = iperf::run_tcp(endpoints, 1, tcp_seconds);
    let sent = flooder
        .next_line(Duration::from_secs(u64::from(tcp_seconds) + 30))
        .unwrap_or_default();
    let _ = flooder.wait(Duration::from_secs(5));
    let flooded = flooded?;
    sample(
        Metric::TcpGbps1Flood,
        flooded.gbits_per_second,
        bytes(&flooded),
    );
    let ratio = if quiet.gbits_per_second > 0.0 {
        flooded.gbits_per_second / quiet.gbits_per_second
    } else {
        0.0
    };
    sample(Metric::FloodRatio, ratio, bytes(&flooded));
    Ok(format!(
        "TCP {} Gbit/s without the flood, {} during it ({:.2}x); flooder sent {} frames",
        format_value(quiet.gbits_per_second),
        format_value(flooded.gbits_per_second),
        ratio,
        sent.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_keys_round_trip() {
        for kind in FloodKind::ALL {
            assert_eq!(FloodKind::from_key(kind.key()), Some(kind));
        }
        assert_eq!(FloodKind::from_key("bogus"), None);
    }

    #[test]
    fn the_flooder_knows_every_kind() {
        for kind in FloodKind::ALL {
            if kind == FloodKind::Cpu {
                assert!(FLOODER.contains("if kind == 'cpu':"));
                continue;
            }
            assert!(
                FLOODER.contains(&format!(
                    "'{}': gen_{}",
                    kind.flooder_kind(),
                    kind.flooder_kind()
                )),
                "{}",
                kind.key()
            );
        }
    }
}
