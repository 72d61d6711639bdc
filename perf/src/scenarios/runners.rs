//! `runners`, `runners-via-hub` and `runners-routed`: containers on two runners of a
//! hub-and-spoke overlay.
//!
//! ```text
//!                  hub 10.78.0.1
//!                       |
//!   underlay: bridge ub0 in namespace `underlay`, 10.78.0.0/24, a veth to each node
//!          |                                |
//!   runner1 10.78.0.2                 runner2 10.78.0.3
//!     c1 in 10.1.0.0/16                 c2 in 10.2.0.0/16       (MTU 1450 inside)
//!
//!   vswitch: one vswitchd per node: a hub (plain HTTP, `spec.runnerToRunner: Direct` in
//!            `runners`, the default `ViaHub` in `runners-via-hub`) and two runners that
//!            register with it (runner-1 first: ID 1, then ID 2); c1 attached to runner-1's
//!            overlay Subnet, c2 to runner-2's. Direct: each runner holds a copy of the other's
//!            subnet and tunnels to it (one routed hop); via the hub: every frame between the
//!            runners is routed by the hub (two routed hops). The CPU column adds up the
//!            three daemons.
//!   kernel:  on each runner N, bridge br0 (10.N.0.1/16) with the container's veth and vxlan
//!            device vxN (VNI 100+N); containers 10.N.0.2/16 via 10.N.0.1.
//!            `runners` (flannel-like, asymmetric): runner N also has vxM (VNI 100+M, remote
//!            runner M, 10.M.0.254/16) and routes into M's segment itself; vxN floods to M.
//!            `runners-via-hub`: vxN goes to the hub, runner N routes 10.0.0.0/8 via
//!            10.N.0.254; the hub holds vx1 (10.1.0.254/16) and vx2 (10.2.0.254/16) and
//!            forwards between them.
//!            `runners-routed`: no VXLAN; runner N routes 10.M.0.0/16 via runner M's
//!            underlay address (plain routes between the nodes, as Calico's BGP mode).
//!   runners-routed (vswitch): `encapsulation: None`; each node's switch also has an Uplink
//!            on u0 owning 10.78.0.1N, its routed address: the runners route to each other's
//!            (two routed hops, MTU 1500 inside).
//! ```
//! A vswitchd that refuses the configuration, or whose runners do not register (or, in
//! `runners`, do not learn each other) within 20 s, is reported as not supported.

use std::time::{Duration, Instant};

use super::{Context, PrepareError, Prepared, Variant, refusal_is_unsupported, settle};
use crate::tools::cpu::SwitchCpu;
use crate::tools::vswitchd::Daemon;
use crate::topo::Topology;

/// The nodes' underlay addresses: the hub, runner 1, runner 2.
pub const UNDERLAY: [&str; 3] = ["10.78.0.1", "10.78.0.2", "10.78.0.3"];

/// The hub's token.
const TOKEN: &str = "perf-runners";

/// How the runners reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// VXLAN straight between the runners (`runnerToRunner: Direct`).
    Direct,
    /// VXLAN through the hub (the default).
    ViaHub,
    /// No encapsulation: routed on the underlay (`encapsulation: None`).
    Routed,
}

/// Node `n`'s routed address (its switch's Uplink address) without encapsulation.
fn routed_address(n: usize) -> String {
    format!("10.78.0.1{}", n + 1)
}

/// The Uplink of node `n` on its underlay interface, without encapsulation.
fn uplink(n: usize) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata:\n  name: underlay\nspec:\n  \
         interface: u0\n  addresses: [{}/24]\n  gateway: 10.78.0.254\n",
        routed_address(n)
    )
}

/// The hub's Overlay: plain HTTP, runners reaching each other as `mode` says.
fn hub_overlay(mode: Mode) -> String {
    let mode = match mode {
        Mode::Direct => "  runnerToRunner: Direct\n",
        Mode::ViaHub => "",
        Mode::Routed => "  runnerToRunner: Direct\n  encapsulation: None\n",
    };
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: hub\nspec:\n  \
         role: hub\n  localAddress: {}\n  token: {TOKEN}\n  tls: {{mode: Disabled}}\n{mode}",
        UNDERLAY[0]
    )
}

/// Runner `n`'s Overlay (1 or 2).
fn runner_overlay(n: usize, mode: Mode) -> String {
    let encapsulation = if mode == Mode::Routed {
        "  encapsulation: None\n"
    } else {
        ""
    };
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: runner-{n}\nspec:\n  \
         role: runner\n  localAddress: {}\n  heartbeatSeconds: 1\n  hub:\n    address: {}\n    \
         token: {TOKEN}\n    tls: {{mode: Disabled}}\n{encapsulation}",
        UNDERLAY[n], UNDERLAY[0]
    )
}

/// Waits until `vswitchctl overlay` on `daemon` shows every line of `wanted` (compared with
/// runs of spaces as one: the key column is as wide as the longest key shown).
fn wait_overlay(daemon: &Daemon, wanted: &[&str], what: &str) -> Result<(), PrepareError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(text) = daemon.ctl(&["overlay"]) {
            let squeeze = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
            let has = |line: &&str| {
                let wanted = squeeze(line);
                text.lines().any(|l| squeeze(l).starts_with(&wanted))
            };
            if wanted.iter().all(has) {
                return Ok(());
            }
            last = text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(PrepareError::Skip(format!(
        "{what} within 20 s; vswitchctl overlay said:\n{last}\nlog:\n{}",
        daemon.log_tail(20)
    )))
}

/// Builds one variant of `runners`, `runners-via-hub` or `runners-routed` (`mode`).
///
/// # Errors
/// A setup step fails, vswitchd refuses the configuration or its runners do not get there
/// (skip), or OVS is asked for (skip).
pub fn prepare(variant: Variant, context: &Context, mode: Mode) -> Result<Prepared, PrepareError> {
    if variant == Variant::Ovs {
        return Err(PrepareError::Skip(
            "the Open vSwitch column covers l2 only".into(),
        ));
    }
    let mut topology = Topology::new();
    let underlay = topology.namespace("underlay")?;
    let nodes = [
        topology.namespace("hub")?,
        topology.namespace("runner1")?,
        topology.namespace("runner2")?,
    ];
    let containers = [topology.namespace("c1")?, topology.namespace("c2")?];
    topology.ip(&underlay, &["link", "add", "ub0", "type", "bridge"])?;
    topology.ip(&underlay, &["link", "set", "ub0", "up"])?;
    for (index, node) in nodes.iter().enumerate() {
        let port = format!("p{index}");
        topology.veth(&underlay, &port, node, "u0")?;
        topology.ip(&underlay, &["link", "set", &port, "master", "ub0"])?;
        topology.ip(&underlay, &["link", "set", &port, "up"])?;
        topology.address(node, "u0", &format!("{}/24", UNDERLAY[index]))?;
    }
    let (cpu, daemons, server_ip) = match variant {
        Variant::Vswitch { kind, settings } => {
            let binaries = context.binaries()?;
            let mut daemons = Vec::new();
            for (index, node) in nodes.iter().enumerate() {
                let dir = topology.scratch(&format!("vswitchd{index}"))?;
                daemons.push(Daemon::start(binaries, node, settings, &dir)?);
            }
            if mode == Mode::Routed {
                for (n, daemon) in daemons.iter().enumerate() {
                    daemon
                        .apply("uplink", &uplink(n))
                        .map_err(refusal_is_unsupported)?;
                }
            }
            daemons[0]
                .apply("overlay", &hub_overlay(mode))
                .map_err(refusal_is_unsupported)?;
            // One after the other: runner-1 gets ID 1 (10.1.0.0/16), runner-2 ID 2.
            for (n, runner) in daemons.iter().enumerate().skip(1) {
                runner
                    .apply("overlay", &runner_overlay(n, mode))
                    .map_err(refusal_is_unsupported)?;
                wait_overlay(
                    runner,
                    &[&format!("ID        {n}"), "STATE     Registered"],
                    &format!("runner-{n} did not register"),
                )?;
            }
            for (n, runner) in daemons.iter().enumerate().skip(1) {
                if mode != Mode::ViaHub {
                    wait_overlay(
                        runner,
                        &["DIRECT    1 other runners"],
                        &format!("runner-{n} did not learn the other runner"),
                    )?;
                }
                runner
                    .attach(
                        &containers[n - 1],
                        &format!("c{n}"),
                        kind,
                        Some("overlay"),
                        None,
                    )
                    .map_err(refusal_is_unsupported)?;
            }
            let server_ip = daemons[2].interface_ip("c2", &containers[1])?;
            let cpu = SwitchCpu::Processes(daemons.iter().map(Daemon::pid).collect());
            (cpu, daemons, std::net::IpAddr::from(server_ip))
        }
        _ => {
            kernel(&topology, &nodes, &containers, mode)?;
            (
                SwitchCpu::Kernel,
                Vec::new(),
                std::net::IpAddr::from([10, 2, 0, 2]),
            )
        }
    };
    settle()?;
    let [c1, c2] = containers;
    Ok(Prepared {
        daemons,
        ovs: None,
        topology,
        client_ns: c1,
        server_ns: c2,
        server_ip,
        backends: Vec::new(),
        connrate_ip: None,
        cpu,
        unreachable_is_unsupported: variant != Variant::Kernel,
        datagrams: true,
        applied: None,
        flood: None,
        table: None,
    })
}

/// A VXLAN device `name` with `vni` from `local` to `remote` on the node's underlay `u0`.
fn vxlan_device(
    topology: &Topology,
    node: &str,
    name: &str,
    vni: usize,
    local: &str,
    remote: &str,
) -> anyhow::Result<()> {
    let vni = vni.to_string();
    topology.ip(
        node,
        &[
            "link", "add", name, "type", "vxlan", "id", &vni, "local", local, "remote", remote,
            "dstport", "4789", "dev", "u0",
        ],
    )?;
    topology.ip(node, &["link", "set", name, "up"])
}

/// The kernel's side: see the module documentation.
fn kernel(
    topology: &Topology,
    nodes: &[String; 3],
    containers: &[String; 2],
    mode: Mode,
) -> anyhow::Result<()> {
    let direct = mode == Mode::Direct;
    if mode == Mode::Routed {
        return kernel_routed(topology, nodes, containers);
    }
    for n in 1..=2usize {
        let node = &nodes[n];
        let other = 3 - n;
        let container = &containers[n - 1];
        topology.sysctl(node, "net.ipv4.ip_forward", "1")?;
        topology.ip(node, &["link", "add", "br0", "type", "bridge"])?;
        let own = format!("vx{n}");
        let flood_to = if direct { UNDERLAY[other] } else { UNDERLAY[0] };
        vxlan_device(topology, node, &own, 100 + n, UNDERLAY[n], flood_to)?;
        topology.veth(node, "v0", container, "eth0")?;
        for port in [own.as_str(), "v0"] {
            topology.ip(node, &["link", "set", port, "master", "br0"])?;
        }
        topology.ip(node, &["link", "set", "br0", "up"])?;
        topology.address(node, "br0", &format!("10.{n}.0.1/16"))?;
        topology.ip(container, &["link", "set", "eth0", "mtu", "1450"])?;
        topology.address(container, "eth0", &format!("10.{n}.0.2/16"))?;
        topology.ip(
            container,
            &["route", "add", "default", "via", &format!("10.{n}.0.1")],
        )?;
        if direct {
            let copy = format!("vx{other}");
            vxlan_device(
                topology,
                node,
                &copy,
                100 + other,
                UNDERLAY[n],
                UNDERLAY[other],
            )?;
            topology.address(node, &copy, &format!("10.{other}.0.254/16"))?;
        } else {
            topology.ip(
                node,
                &[
                    "route",
                    "add",
                    "10.0.0.0/8",
                    "via",
                    &format!("10.{n}.0.254"),
                ],
            )?;
        }
    }
    if !direct {
        let hub = &nodes[0];
        topology.sysctl(hub, "net.ipv4.ip_forward", "1")?;
        for (n, runner) in UNDERLAY.iter().enumerate().skip(1) {
            let device = format!("vx{n}");
            vxlan_device(topology, hub, &device, 100 + n, UNDERLAY[0], runner)?;
            topology.address(hub, &device, &format!("10.{n}.0.254/16"))?;
        }
    }
    Ok(())
}

/// The kernel without encapsulation: each runner namespace routes its container's /16 and
/// the other runner's /16 via that runner's underlay address.
fn kernel_routed(
    topology: &Topology,
    nodes: &[String; 3],
    containers: &[String; 2],
) -> anyhow::Result<()> {
    for n in 1..=2usize {
        let node = &nodes[n];
        let other = 3 - n;
        let container = &containers[n - 1];
        topology.sysctl(node, "net.ipv4.ip_forward", "1")?;
        topology.veth(node, "v0", container, "eth0")?;
        topology.address(node, "v0", &format!("10.{n}.0.1/16"))?;
        topology.address(container, "eth0", &format!("10.{n}.0.2/16"))?;
        topology.ip(
            container,
            &["route", "add", "default", "via", &format!("10.{n}.0.1")],
        )?;
        topology.ip(
            node,
            &[
                "route",
                "add",
                &format!("10.{other}.0.0/16"),
                "via",
                UNDERLAY[other],
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_says_how_runners_reach_each_other() {
        assert!(hub_overlay(Mode::Direct).ends_with("  runnerToRunner: Direct\n"));
        assert!(!hub_overlay(Mode::ViaHub).contains("runnerToRunner"));
        assert!(
            hub_overlay(Mode::Routed)
                .ends_with("  runnerToRunner: Direct\n  encapsulation: None\n")
        );
        let runner = runner_overlay(2, Mode::Direct);
        assert!(runner.contains("  localAddress: 10.78.0.3\n"), "{runner}");
        assert!(runner.contains("    address: 10.78.0.1\n"), "{runner}");
        assert!(!runner.contains("encapsulation"), "{runner}");
        assert!(runner_overlay(2, Mode::Routed).ends_with("  encapsulation: None\n"));
        let uplink = uplink(2);
        assert!(
            uplink.contains("  addresses: [10.78.0.13/24]\n"),
            "{uplink}"
        );
        assert!(uplink.contains("  interface: u0\n"), "{uplink}");
    }
}
