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

/// The kernel variant's masquerade for `family`, loaded with `nft -f` inside the gateway
/// namespace: an `ip` table, or an `ip6` one for NAT66.
fn ruleset(family: Family) -> String {
    let table = match family {
        Family::V4 => "ip vsperf_nat",
        Family::V6 => "ip6 vsperf_nat6",
    };
    format!(
        "table {table} {{\n    chain postrouting {{\n        type nat hook postrouting priority srcnat; policy accept;\n        oifname \"o0\" masquerade\n    }}\n}}\n"
    )
}

/// The vswitch variant's NAT configuration: o0 as the Uplink, where the switch owns
/// 10.82.0.1 (the outside server is its on-link next hop), and a NATGateway masquerading the
/// default Network behind that address. For NAT66 also a dual-stack Subnet `perf-nat` for
/// c1, the Uplink's IPv6 (fd00:82::1/64, the server as its on-link next hop) and fd00:82::1
/// among the NATGateway's addresses.
fn configuration(family: Family) -> String {
    let (subnet, uplink6, ips) = match family {
        Family::V4 => (String::new(), "", "[10.82.0.1]"),
        Family::V6 => (
            "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: perf-nat\nspec:\n  network: default\n  cidr: 10.81.0.0/24\n  gateway: 10.81.0.1\n  mtu: 1500\n  ipv6:\n    cidr: fd00:81::/64\n---\n".to_owned(),
            "  ipv6:\n    addresses: ['fd00:82::1/64']\n    gateway: 'fd00:82::2'\n",
            "[10.82.0.1, 'fd00:82::1']",
        ),
    };
    format!(
        "{subnet}apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata:\n  name: perf\nspec:\n  interface: o0\n  addresses: [10.82.0.1/24]\n  gateway: 10.82.0.2\n{uplink6}---\napiVersion: vswitch/v1alpha1\nkind: NATGateway\nmetadata:\n  name: perf\nspec:\n  network: default\n  ips: {ips}\n"
    )
}

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
            let subnet = (family == Family::V6).then_some("perf-nat");
            daemon
                .apply("natgateway", &configuration(family))
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
                table: None,
            })
        }
        _ => {
            topology.veth(&gateway, "in0", &c1, "eth0")?;
            topology.address(&gateway, "in0", "10.81.0.1/24")?;
            topology.address(&gateway, "o0", "10.82.0.1/24")?;
            topology.sysctl(&gateway, "net.ipv4.ip_forward", "1")?;
            topology.address(&c1, "eth0", "10.81.0.2/24")?;
            topology.ip(&c1, &["route", "add", "default", "via", "10.81.0.1"])?;
            match family {
                Family::V4 => {}
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
                }
            }
            let rules = topology.scratch("nft")?.join("masquerade.nft");
            std::fs::write(&rules, ruleset(family)).map_err(anyhow::Error::from)?;
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
                table: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_and_ruleset_per_family() {
        let v4 = configuration(Family::V4);
        assert!(!v4.contains("ipv6") && !v4.contains("kind: Subnet"));
        assert!(v4.ends_with("  network: default\n  ips: [10.82.0.1]\n"));
        let v6 = configuration(Family::V6);
        assert!(v6.starts_with("apiVersion: vswitch/v1alpha1\nkind: Subnet\n"));
        assert!(v6.contains("  gateway: 10.82.0.2\n  ipv6:\n    addresses: ['fd00:82::1/64']\n"));
        assert!(v6.ends_with("  ips: [10.82.0.1, 'fd00:82::1']\n"));
        assert!(ruleset(Family::V4).starts_with("table ip vsperf_nat {\n"));
        assert!(ruleset(Family::V6).starts_with("table ip6 vsperf_nat6 {\n"));
        assert!(ruleset(Family::V6).contains("        oifname \"o0\" masquerade\n"));
    }
}
