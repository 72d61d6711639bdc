//! `routed`: two containers in two subnets, routed through the gateway.
//!
//! ```text
//!  c1 10.78.1.2/24 ── (ra0) router (rb0) ── c2 10.78.2.2/24
//!   kernel:  a router namespace with 10.78.1.1/24 and 10.78.2.1/24 and ip_forward=1;
//!            each container's default route points at its gateway
//!   vswitch: vswitchd in the router's place; Subnets `perf-a` 10.78.1.0/24 and `perf-b`
//!            10.78.2.0/24 in the default Network (routing between Subnets of one Network
//!            is vswitchd's job, from the L3 issue on); c1 attached to perf-a, c2 to perf-b
//! ```
//! A vswitchd that refuses the Subnets or does not route between them is reported as
//! "not supported by this vswitchd yet"; the kernel side is measured regardless.
//!
//! Over IPv6 (`--family 6`): the same, with fd00:78:1::/64 and fd00:78:2::/64 beside the
//! IPv4 subnets (the kernel router forwards IPv6, the containers' addresses are `nodad`;
//! vswitchd's Subnets are dual stack) and the traffic goes to c2's IPv6 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Context, Family, PrepareError, Prepared, Variant, refusal_is_unsupported, settle};
use crate::tools::cpu::SwitchCpu;
use crate::tools::vswitchd::Daemon;
use crate::topo::Topology;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 2, 2);

/// c2's IPv6 address on the kernel side.
const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 2, 0, 0, 0, 0, 2);

/// The two Subnets of the vswitch variant, perf-a 10.78.1.0/24 and perf-b 10.78.2.0/24, dual
/// stack (fd00:78:1::/64, fd00:78:2::/64) over IPv6.
fn subnets(family: Family) -> String {
    let subnet = |name: &str, n: u8| {
        let ipv6 = match family {
            Family::V4 => String::new(),
            Family::V6 => format!("  ipv6:\n    cidr: fd00:78:{n}::/64\n"),
        };
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: {name}\nspec:\n  \
             network: default\n  cidr: 10.78.{n}.0/24\n  gateway: 10.78.{n}.1\n  mtu: 1500\n{ipv6}"
        )
    };
    format!("{}---\n{}", subnet("perf-a", 1), subnet("perf-b", 2))
}

/// Builds one variant of `routed`.
///
/// # Errors
/// A setup step fails, vswitchd refuses the configuration (skip), or OVS is asked for
/// (skip: the OVS column covers `l2` only).
pub fn prepare(
    variant: Variant,
    context: &Context,
    family: Family,
) -> Result<Prepared, PrepareError> {
    if variant == Variant::Ovs {
        return Err(PrepareError::Skip(
            "the Open vSwitch column covers l2 only".into(),
        ));
    }
    let mut topology = Topology::new();
    let router = topology.namespace("router")?;
    let c1 = topology.namespace("c1")?;
    let c2 = topology.namespace("c2")?;
    match variant {
        Variant::Vswitch { kind, settings } => {
            let binaries = context.binaries()?;
            let daemon =
                Daemon::start(binaries, &router, settings, &topology.scratch("vswitchd")?)?;
            daemon
                .apply("subnets", &subnets(family))
                .map_err(refusal_is_unsupported)?;
            daemon
                .attach(&c1, "c1", kind, Some("perf-a"), None)
                .map_err(refusal_is_unsupported)?;
            daemon
                .attach(&c2, "c2", kind, Some("perf-b"), None)
                .map_err(refusal_is_unsupported)?;
            let server_ip = match family {
                Family::V4 => IpAddr::V4(daemon.interface_ip("c2", &c2)?),
                Family::V6 => IpAddr::V6(daemon.interface_ipv6("c2", &c2)?),
            };
            settle()?;
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
                unreachable_is_unsupported: true,
                datagrams: true,
                applied: None,
                flood: None,
                table: None,
            })
        }
        _ => {
            topology.veth(&router, "ra0", &c1, "eth0")?;
            topology.veth(&router, "rb0", &c2, "eth0")?;
            topology.address(&router, "ra0", "10.78.1.1/24")?;
            topology.address(&router, "rb0", "10.78.2.1/24")?;
            topology.sysctl(&router, "net.ipv4.ip_forward", "1")?;
            topology.address(&c1, "eth0", "10.78.1.2/24")?;
            topology.address(&c2, "eth0", "10.78.2.2/24")?;
            topology.ip(&c1, &["route", "add", "default", "via", "10.78.1.1"])?;
            topology.ip(&c2, &["route", "add", "default", "via", "10.78.2.1"])?;
            let server_ip = match family {
                Family::V4 => IpAddr::V4(SERVER_IP),
                Family::V6 => {
                    topology.sysctl(&router, "net.ipv6.conf.all.forwarding", "1")?;
                    let v6 = [
                        (&router, "ra0", "fd00:78:1::1/64"),
                        (&router, "rb0", "fd00:78:2::1/64"),
                        (&c1, "eth0", "fd00:78:1::2/64"),
                        (&c2, "eth0", "fd00:78:2::2/64"),
                    ];
                    for (ns, dev, cidr) in v6 {
                        topology.ip(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"])?;
                    }
                    topology.ip(
                        &c1,
                        &["-6", "route", "add", "default", "via", "fd00:78:1::1"],
                    )?;
                    topology.ip(
                        &c2,
                        &["-6", "route", "add", "default", "via", "fd00:78:2::1"],
                    )?;
                    IpAddr::V6(SERVER_IP6)
                }
            };
            Ok(Prepared {
                daemons: Vec::new(),
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip,
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
    fn subnets_are_dual_stack_over_ipv6_only() {
        let v4 = subnets(Family::V4);
        assert_eq!(v4.matches("kind: Subnet").count(), 2);
        assert!(v4.contains("  name: perf-b\nspec:\n  network: default\n  cidr: 10.78.2.0/24\n"));
        assert!(!v4.contains("ipv6"));
        let v6 = subnets(Family::V6);
        assert!(v6.contains("  mtu: 1500\n  ipv6:\n    cidr: fd00:78:1::/64\n---\n"));
        assert!(v6.ends_with("  ipv6:\n    cidr: fd00:78:2::/64\n"));
    }
}
