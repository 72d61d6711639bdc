//! `nat`: a container reaches a server outside its network through masquerade.
//!
//! ```text
//!  c1 10.81.0.2/24 ── (in0) gateway (o0 10.82.0.1/24) ── outside 10.82.0.2/24
//!   kernel:  the gateway namespace forwards (ip_forward=1) and masquerades what leaves
//!            through o0 (nftables, `oifname "o0" masquerade`); the outside namespace has
//!            no route back to 10.81.0.0/24, so only translated traffic gets answers
//!   vswitch: vswitchd in the gateway's place, o0 as its uplink, a NATGateway for the
//!            default Network with 10.82.0.1 as NAT address; c1 attached from the default
//!            subnet
//! ```
//! nft is needed for the kernel side: when it is missing, that variant is skipped with
//! the package to install (the harness installs nothing itself). A vswitchd that refuses
//! the NATGateway is reported as "not supported by this vswitchd yet".
//!
//! Over IPv6 (`--family 6`, NAT66): the same with fd00:81::/64 inside and fd00:82::/64
//! outside (addresses `nodad`). The kernel masquerades with an `ip6` nftables table and
//! forwards IPv6; vswitchd gets a dual-stack Subnet `perf-nat` (10.81.0.0/24,
//! fd00:81::/64) for c1, `spec.ipv6` on the Uplink (fd00:82::1/64, the outside server as
//! its on-link next hop) and fd00:82::1 among the NATGateway's addresses. The outside has no
//! route back to fd00:81::/64 in either variant.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Context, Family, PrepareError, Prepared, Variant, refusal_is_unsupported, settle};
use crate::tools::cmd;
use crate::tools::cpu::SwitchCpu;
use crate::tools::vswitchd::Daemon;
use crate::topo::Topology;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 82, 0, 2);

/// The outside server's IPv6 address.
const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x82, 0, 0, 0, 0, 0, 2);

/// The kernel variant's NAT66 masquerade.
const RULESET6: &str = "\
table ip6 vsperf_nat6 {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"o0\" masquerade
    }
}
";

/// The vswitch variant's NAT66 configuration: a dual-stack Subnet for c1, the Uplink with
/// IPv6 (fd00:82::1/64, the server as its on-link next hop), and a NATGateway masquerading
/// both families.
const NAT_GATEWAY6: &str = "\
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata:
  name: perf-nat
spec:
  network: default
  cidr: 10.81.0.0/24
  gateway: 10.81.0.1
  mtu: 1500
  ipv6:
    cidr: fd00:81::/64
---
apiVersion: vswitch/v1alpha1
kind: Uplink
metadata:
  name: perf
spec:
  interface: o0
  addresses: [10.82.0.1/24]
  gateway: 10.82.0.2
  ipv6:
    addresses: ['fd00:82::1/64']
    gateway: 'fd00:82::2'
---
apiVersion: vswitch/v1alpha1
kind: NATGateway
metadata:
  name: perf
spec:
  network: default
  ips: [10.82.0.1, 'fd00:82::1']
";

/// The kernel variant's masquerade, loaded with `nft -f` inside the gateway namespace.
const RULESET: &str = "\
table ip vsperf_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"o0\" masquerade
    }
}
";

/// The vswitch variant's NAT configuration: o0 as the Uplink, where the switch owns
/// 10.82.0.1 (the outside server is its on-link next hop), and a NATGateway masquerading the
/// default Network behind that address.
const NAT_GATEWAY: &str = "\
apiVersion: vswitch/v1alpha1
kind: Uplink
metadata:
  name: perf
spec:
  interface: o0
  addresses: [10.82.0.1/24]
  gateway: 10.82.0.2
---
apiVersion: vswitch/v1alpha1
kind: NATGateway
metadata:
  name: perf
spec:
  network: default
  ips: [10.82.0.1]
";

/// Builds one variant of `nat`.
///
/// # Errors
/// A setup step fails, nft is missing (skip), vswitchd refuses the configuration (skip),
/// or OVS is asked for (skip: the OVS column covers `l2` only).
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
    if variant == Variant::Kernel && cmd::which("nft").is_none() {
        return Err(PrepareError::Skip(
            "nft not found: the kernel masquerade needs nftables (apt-get install nftables)".into(),
        ));
    }
    let mut topology = Topology::new();
    let gateway = topology.namespace("gw")?;
    let c1 = topology.namespace("c1")?;
    let outside = topology.namespace("out")?;
    topology.veth(&gateway, "o0", &outside, "eth0")?;
    topology.address(&outside, "eth0", "10.82.0.2/24")?;
    let server_ip = match family {
        Family::V4 => IpAddr::V4(SERVER_IP),
        Family::V6 => {
            topology.ip(
                &outside,
                &["-6", "addr", "add", "fd00:82::2/64", "dev", "eth0", "nodad"],
            )?;
            IpAddr::V6(SERVER_IP6)
        }
    };
    match variant {
        Variant::Vswitch { kind, settings } => {
            let binaries = context.binaries()?;
            let daemon =
                Daemon::start(binaries, &gateway, settings, &topology.scratch("vswitchd")?)?;
            let (config, subnet) = match family {
                Family::V4 => (NAT_GATEWAY, None),
                Family::V6 => (NAT_GATEWAY6, Some("perf-nat")),
            };
            daemon
                .apply("natgateway", config)
                .map_err(refusal_is_unsupported)?;
            daemon
                .attach(&c1, "c1", kind, subnet, None)
                .map_err(refusal_is_unsupported)?;
            settle()?;
            let cpu = SwitchCpu::Processes(vec![daemon.pid()]);
            Ok(Prepared {
                daemons: vec![daemon],
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: outside,
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
            topology.veth(&gateway, "in0", &c1, "eth0")?;
            topology.address(&gateway, "in0", "10.81.0.1/24")?;
            topology.address(&gateway, "o0", "10.82.0.1/24")?;
            topology.sysctl(&gateway, "net.ipv4.ip_forward", "1")?;
            topology.address(&c1, "eth0", "10.81.0.2/24")?;
            topology.ip(&c1, &["route", "add", "default", "via", "10.81.0.1"])?;
            let ruleset = match family {
                Family::V4 => RULESET,
                Family::V6 => {
                    topology.sysctl(&gateway, "net.ipv6.conf.all.forwarding", "1")?;
                    let v6 = [
                        (&gateway, "in0", "fd00:81::1/64"),
                        (&gateway, "o0", "fd00:82::1/64"),
                        (&c1, "eth0", "fd00:81::2/64"),
                    ];
                    for (ns, dev, cidr) in v6 {
                        topology.ip(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"])?;
                    }
                    topology.ip(&c1, &["-6", "route", "add", "default", "via", "fd00:81::1"])?;
                    RULESET6
                }
            };
            let rules = topology.scratch("nft")?.join("masquerade.nft");
            std::fs::write(&rules, ruleset).map_err(anyhow::Error::from)?;
            topology.exec(&gateway, "nft", &["-f", &rules.to_string_lossy()])?;
            Ok(Prepared {
                daemons: Vec::new(),
                ovs: None,
                topology,
                client_ns: c1,
                server_ns: outside,
                server_ip,
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
