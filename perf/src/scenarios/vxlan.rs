//! `vxlan`: containers on two nodes, across a VXLAN tunnel over an underlay veth.
//!
//! ```text
//!  c1 ── node1 ══ underlay 10.79.0.1/24 <-> 10.79.0.2/24 ══ node2 ── c2
//!   kernel:  in each node, bridge br0 with the container's veth and vxlan0
//!            (VNI 42, UDP 4789, unicast remote = the other node); containers
//!            10.80.0.2/24 and 10.80.0.3/24, MTU 1450 (1500 minus the 50-byte VXLAN overhead)
//!   vswitch: one vswitchd per node, each given an Overlay (mesh, the other node as its
//!            peer) and Subnet `perf` (10.80.0.0/24, VNI 42) stretched over it; c1 attached
//!            on node1 as 10.80.0.2, c2 on node2 as 10.80.0.3 (static addresses, so the two
//!            daemons' IPAM cannot hand out the same one)
//! ```
//! A vswitchd that refuses the Overlay or does not carry traffic across is reported as
//! "not supported by this vswitchd yet"; the kernel side is measured regardless.

use std::net::Ipv4Addr;

use super::{Context, PrepareError, Prepared, Variant, refusal_is_unsupported, settle};
use crate::tools::cpu::SwitchCpu;
use crate::tools::vswitchd::Daemon;
use crate::topo::Topology;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 3);

/// The nodes' underlay addresses.
pub const UNDERLAY: [&str; 2] = ["10.79.0.1", "10.79.0.2"];

/// The VNI of the stretched subnet.
pub const VNI: u32 = 42;

/// The Overlay (mesh, the other node as its peer) for the node whose underlay address is
/// `local`, and the Subnet stretched over it with the kernel side's VNI and MTU (and a MAC
/// table of `mac_limit` entries when given).
fn overlay(local: &str, peer: &str, rco: bool, mac_limit: Option<u32>) -> String {
    let limit = mac_limit.map_or_else(String::new, |limit| format!("  macTableLimit: {limit}\n"));
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: perf\nspec:\n  \
         role: mesh\n  localAddress: {local}\n  port: 4789\n  mtu: 1450\n  \
         remoteChecksumOffload: {rco}\n  peers:\n  - {peer}\n---\n\
         apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: perf\nspec: {{}}\n---\n\
         apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: perf\nspec:\n  \
         network: perf\n  cidr: 10.80.0.0/24\n  gateway: 10.80.0.1\n  vni: 42\n{limit}"
    )
}

/// Builds one variant of `vxlan`.
///
/// # Errors
/// A setup step fails, vswitchd refuses the configuration (skip), or OVS is asked for
/// (skip: the OVS column covers `l2` only).
pub fn prepare(variant: Variant, context: &Context) -> Result<Prepared, PrepareError> {
    prepare_with(variant, context, None)
}

/// [`prepare`], with room for `mac_limit` MACs in vswitchd's stretched Subnet (`macs`).
///
/// # Errors
/// As [`prepare`].
pub fn prepare_with(
    variant: Variant,
    context: &Context,
    mac_limit: Option<u32>,
) -> Result<Prepared, PrepareError> {
    if variant == Variant::Ovs {
        return Err(PrepareError::Skip(
            "the Open vSwitch column covers l2 only".into(),
        ));
    }
    let mut topology = Topology::new();
    let nodes = [topology.namespace("node1")?, topology.namespace("node2")?];
    let containers = [topology.namespace("c1")?, topology.namespace("c2")?];
    topology.veth(&nodes[0], "u0", &nodes[1], "u0")?;
    for (node, address) in nodes.iter().zip(UNDERLAY) {
        topology.address(node, "u0", &format!("{address}/24"))?;
    }
    match variant {
        Variant::Vswitch { kind, settings } => {
            let binaries = context.binaries()?;
            let mut daemons = Vec::new();
            for (index, node) in nodes.iter().enumerate() {
                let dir = topology.scratch(&format!("vswitchd{}", index + 1))?;
                let daemon = Daemon::start(binaries, node, settings, &dir)?;
                daemon
                    .apply(
                        "overlay",
                        &overlay(
                            UNDERLAY[index],
                            UNDERLAY[1 - index],
                            context.vxlan_rco,
                            mac_limit,
                        ),
                    )
                    .map_err(refusal_is_unsupported)?;
                daemons.push(daemon);
            }
            daemons[0]
                .attach(&containers[0], "c1", kind, Some("perf"), Some("10.80.0.2"))
                .map_err(refusal_is_unsupported)?;
            daemons[1]
                .attach(&containers[1], "c2", kind, Some("perf"), Some("10.80.0.3"))
                .map_err(refusal_is_unsupported)?;
            let server_ip = daemons[1].interface_ip("c2", &containers[1])?;
            settle()?;
            let cpu = SwitchCpu::Processes(daemons.iter().map(Daemon::pid).collect());
            let [c1, c2] = containers;
            Ok(Prepared {
                daemons,
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip: server_ip.into(),
                backends: Vec::new(),
                connrate_ip: None,
                cpu,
                unreachable_is_unsupported: true,
                datagrams: true,
                applied: None,
                flood: None,
                table: None,
            })
        }
        _ => {
            for (index, node) in nodes.iter().enumerate() {
                let container = &containers[index];
                topology.ip(node, &["link", "add", "br0", "type", "bridge"])?;
                topology.ip(
                    node,
                    &[
                        "link",
                        "add",
                        "vxlan0",
                        "type",
                        "vxlan",
                        "id",
                        "42",
                        "local",
                        UNDERLAY[index],
                        "remote",
                        UNDERLAY[1 - index],
                        "dstport",
                        "4789",
                        "dev",
                        "u0",
                    ],
                )?;
                topology.veth(node, "v0", container, "eth0")?;
                for port in ["vxlan0", "v0"] {
                    topology.ip(node, &["link", "set", port, "master", "br0"])?;
                }
                topology.ip(node, &["link", "set", "vxlan0", "up"])?;
                topology.ip(node, &["link", "set", "br0", "up"])?;
                topology.ip(container, &["link", "set", "eth0", "mtu", "1450"])?;
                topology.address(container, "eth0", &format!("10.80.0.{}/24", index + 2))?;
            }
            let [c1, c2] = containers;
            Ok(Prepared {
                daemons: Vec::new(),
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip: SERVER_IP.into(),
                backends: Vec::new(),
                connrate_ip: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_document_names_both_ends() {
        let doc = overlay("10.79.0.1", "10.79.0.2", true, None);
        assert!(
            doc.starts_with("apiVersion: vswitch/v1alpha1\nkind: Overlay\n"),
            "{doc}"
        );
        assert!(doc.contains("  localAddress: 10.79.0.1\n"), "{doc}");
        assert!(doc.contains("  - 10.79.0.2\n"), "{doc}");
        assert!(doc.contains("  vni: 42\n"), "{doc}");
        assert!(doc.contains("  remoteChecksumOffload: true\n"), "{doc}");
        assert!(!doc.contains("macTableLimit"), "{doc}");
        let roomy = overlay("10.79.0.1", "10.79.0.2", false, Some(150_000));
        assert!(
            roomy.ends_with("  vni: 42\n  macTableLimit: 150000\n"),
            "{roomy}"
        );
    }
}
