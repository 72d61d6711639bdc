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
//!
//! Over IPv6 (`--family 6`): the kernel and OVS containers get fd00:77::2/64 and ::3/64
//! (`nodad`); vswitchd's are attached to a dual-stack Subnet `perf6` (10.79.0.0/24,
//! fd00:79::/64) and the traffic goes to c2's IPv6 address from IPAM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    Context, Family, PrepareError, Prepared, Variant, refusal_is_unsupported, settle,
    vswitch_with_containers,
};
use crate::tools::cpu::SwitchCpu;
use crate::tools::ovs::Ovs;
use crate::topo::Topology;

/// c2's address in the kernel and OVS variants.
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// c2's IPv6 address in the kernel and OVS variants.
const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 3);

/// The dual-stack Subnet of the vswitch variant over IPv6.
const SUBNET6: &str = "\
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata:
  name: perf6
spec:
  network: default
  cidr: 10.79.0.0/24
  ipv6:
    cidr: fd00:79::/64
";

/// Builds one variant of `l2`.
///
/// # Errors
/// A setup step fails ([`PrepareError::Fail`]) or Open vSwitch is missing (skip).
pub fn prepare(
    variant: Variant,
    context: &Context,
    family: Family,
) -> Result<Prepared, PrepareError> {
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
            let server_ip = match family {
                Family::V4 => IpAddr::V4(SERVER_IP),
                Family::V6 => {
                    for (container, cidr) in [(&c1, "fd00:77::2/64"), (&c2, "fd00:77::3/64")] {
                        topology.ip(
                            container,
                            &["-6", "addr", "add", cidr, "dev", "eth0", "nodad"],
                        )?;
                    }
                    IpAddr::V6(SERVER_IP6)
                }
            };
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
                server_ip,
                backends: Vec::new(),
                connrate_ip: None,
                cpu,
                unreachable_is_unsupported: false,
                datagrams: true,
                applied: None,
                flood: None,
                table: None,
            })
        }
        Variant::Vswitch { kind, settings } => {
            let (daemon, server_ip) = match family {
                Family::V4 => {
                    let (daemon, addresses) = vswitch_with_containers(
                        &topology,
                        context,
                        &node,
                        settings,
                        kind,
                        &[(&c1, "c1"), (&c2, "c2")],
                    )?;
                    (daemon, IpAddr::V4(addresses[1]))
                }
                Family::V6 => {
                    let binaries = context.binaries()?;
                    let daemon = crate::tools::vswitchd::Daemon::start(
                        binaries,
                        &node,
                        settings,
                        &topology.scratch("vswitchd")?,
                    )?;
                    daemon
                        .apply("subnets", SUBNET6)
                        .map_err(refusal_is_unsupported)?;
                    for (netns, name) in [(&c1, "c1"), (&c2, "c2")] {
                        daemon
                            .attach(netns, name, kind, Some("perf6"), None)
                            .map_err(refusal_is_unsupported)?;
                    }
                    let server_ip = daemon.interface_ipv6("c2", &c2)?;
                    settle()?;
                    (daemon, IpAddr::V6(server_ip))
                }
            };
            let cpu = SwitchCpu::Processes(vec![daemon.pid()]);
            Ok(Prepared {
                daemons: vec![daemon],
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip,
                backends: Vec::new(),
                connrate_ip: None,
                cpu,
                // IPv4 l2 is the switch's first job; IPv6 routing needs dual-stack Subnets.
                unreachable_is_unsupported: family == Family::V6,
                datagrams: true,
                applied: None,
                flood: None,
                table: None,
            })
        }
    }
}
