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

use std::net::Ipv4Addr;

use super::{Context, PrepareError, Prepared, Variant, refusal_is_unsupported, settle};
use crate::tools::cpu::SwitchCpu;
use crate::tools::vswitchd::Daemon;
use crate::topo::Topology;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 2, 2);

/// The two Subnets of the vswitch variant.
const SUBNETS: &str = "\
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata:
  name: perf-a
spec:
  network: default
  cidr: 10.78.1.0/24
  gateway: 10.78.1.1
  mtu: 1500
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata:
  name: perf-b
spec:
  network: default
  cidr: 10.78.2.0/24
  gateway: 10.78.2.1
  mtu: 1500
";

/// Builds one variant of `routed`.
///
/// # Errors
/// A setup step fails, vswitchd refuses the configuration (skip), or OVS is asked for
/// (skip: the OVS column covers `l2` only).
pub fn prepare(variant: Variant, context: &Context) -> Result<Prepared, PrepareError> {
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
                .apply("subnets", SUBNETS)
                .map_err(refusal_is_unsupported)?;
            daemon
                .attach(&c1, "c1", kind, Some("perf-a"), None)
                .map_err(refusal_is_unsupported)?;
            daemon
                .attach(&c2, "c2", kind, Some("perf-b"), None)
                .map_err(refusal_is_unsupported)?;
            let server_ip = daemon.interface_ip("c2", &c2)?;
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
            Ok(Prepared {
                daemons: Vec::new(),
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: c2,
                server_ip: SERVER_IP,
                backends: Vec::new(),
                connrate_ip: None,
                cpu: SwitchCpu::Kernel,
                unreachable_is_unsupported: false,
                datagrams: true,
                applied: None,
                flood: None,
            })
        }
    }
}
