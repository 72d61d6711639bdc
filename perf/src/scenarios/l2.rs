//! `l2`: two containers on one node, one L2 segment.
//!
//! ```text
//!  c1 (eth0) ──┐                 ┌── (eth0) c2
//!              └── node namespace ┘
//!   kernel:  veth v1/v2 enslaved to bridge br0; c1 10.77.0.2/24, c2 10.77.0.3/24
//!   vswitch: vswitchd runs in the node namespace; `attach c1|c2 --kind tap|veth`,
//!            addresses from the embedded default subnet 172.30.0.0/16
//!   ovs:     veth v1/v2 added to a netdev bridge of a private Open vSwitch; the
//!            containers' TX checksum offload is off (OVS userspace cannot complete it)
//! ```
//! Traffic goes c1 -> c2 (iperf3 client, UDP sender and ping in c1).

use std::net::Ipv4Addr;

use super::{Context, PrepareError, Prepared, Variant, vswitch_with_containers};
use crate::tools::cpu::SwitchCpu;
use crate::tools::ovs::Ovs;
use crate::topo::Topology;

/// c2's address in the kernel and OVS variants.
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// Builds one variant of `l2`.
///
/// # Errors
/// A setup step fails ([`PrepareError::Fail`]) or Open vSwitch is missing (skip).
pub fn prepare(variant: Variant, context: &Context) -> Result<Prepared, PrepareError> {
    let mut topology = Topology::new();
    let node = topology.namespace("node")?;
    let c1 = topology.namespace("c1")?;
    let c2 = topology.namespace("c2")?;
    match variant {
        Variant::Kernel | Variant::Ovs => {
            topology.veth(&node, "v1", &c1, "eth0")?;
            topology.veth(&node, "v2", &c2, "eth0")?;
            topology.address(&c1, "eth0", "10.77.0.2/24")?;
            topology.address(&c2, "eth0", "10.77.0.3/24")?;
            let (ovs, cpu) = if variant == Variant::Kernel {
                topology.ip(&node, &["link", "add", "br0", "type", "bridge"])?;
                topology.ip(&node, &["link", "set", "v1", "master", "br0"])?;
                topology.ip(&node, &["link", "set", "v2", "master", "br0"])?;
                topology.ip(&node, &["link", "set", "br0", "up"])?;
                (None, SwitchCpu::Kernel)
            } else {
                let tools = context.ovs()?;
                // Open vSwitch's userspace datapath does not complete checksums that a
                // container left partial (its documented veth caveat): turn TX checksum
                // offload off in the containers for this variant only.
                for container in [&c1, &c2] {
                    topology.exec(container, "ethtool", &["-K", "eth0", "tx", "off"])?;
                }
                let ovs = Ovs::start(tools, &node, &topology.scratch("ovs")?, &["v1", "v2"])?;
                let pid = ovs.pid().into_iter().collect();
                (Some(ovs), SwitchCpu::Processes(pid))
            };
            Ok(Prepared {
                daemons: Vec::new(),
                ovs,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip: SERVER_IP,
                backends: Vec::new(),
                connrate_ip: None,
                cpu,
                unreachable_is_unsupported: false,
                datagrams: true,
                applied: None,
                flood: None,
            })
        }
        Variant::Vswitch { kind, settings } => {
            let (daemon, addresses) = vswitch_with_containers(
                &topology,
                context,
                &node,
                settings,
                kind,
                &[(&c1, "c1"), (&c2, "c2")],
            )?;
            let cpu = SwitchCpu::Processes(vec![daemon.pid()]);
            Ok(Prepared {
                daemons: vec![daemon],
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip: addresses[1],
                backends: Vec::new(),
                connrate_ip: None,
                cpu,
                unreachable_is_unsupported: false,
                datagrams: true,
                applied: None,
                flood: None,
            })
        }
    }
}
