//! The ADD result (spec section 5.1): what vswitchd attached, after what earlier plugins in
//! the list reported (`prevResult`).
//!
//! Order: `prevResult`'s interfaces, then the host end of a veth (no sandbox), then the
//! container's interface (with its sandbox); each address points at the container's
//! interface by index and names the Subnet's gateway; routes are the ones vswitchd installs
//! in the container (a default route unless `defaultRoute: false`, then `routes`), via the
//! gateway; `dns` is the config's when it has one, else the Subnet's, else `prevResult`'s.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use crate::{CNIResult, Dns, Interface, Invocation, IpConfig, Route};

/// The host end of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEnd {
    /// Its name in vswitchd's namespace.
    pub name: String,
    /// Its MAC (empty when unknown).
    pub mac: String,
}

/// What vswitchd attached for this invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The host end, for a veth.
    pub host: Option<HostEnd>,
    /// The container interface's MAC.
    pub mac: String,
    /// Its MTU, when known.
    pub mtu: Option<u32>,
    /// Its addresses, with the Subnet's prefix length.
    pub ips: Vec<Ipv4Net>,
    /// The Subnet's gateway.
    pub gateway: Ipv4Addr,
    /// The Subnet's resolver settings, when it has some.
    pub dns: Option<Dns>,
}

fn interface(name: &str, mac: &str, mtu: Option<u32>, sandbox: Option<String>) -> Interface {
    Interface {
        name: name.to_string(),
        mac: mac.to_string(),
        mtu,
        sandbox,
        socket_path: None,
        pci_id: None,
    }
}

impl Invocation {
    /// The ADD result for `attached`: see the module doc.
    pub fn add_result(&self, attached: &Attached) -> CNIResult {
        let mut result = self.conf.prev_result.clone().unwrap_or_default();
        if let Some(host) = &attached.host {
            result
                .interfaces
                .push(interface(&host.name, &host.mac, None, None));
        }
        // A result with more than 4 billion interfaces is not a thing; saturate anyway.
        let index = u32::try_from(result.interfaces.len()).unwrap_or(u32::MAX);
        let sandbox = self.netns.as_ref().map(|p| p.display().to_string());
        result.interfaces.push(interface(
            &self.ifname,
            &attached.mac,
            attached.mtu,
            sandbox,
        ));
        let gateway = attached.gateway.into();
        result
            .ips
            .extend(attached.ips.iter().map(|address| IpConfig {
                interface: Some(index),
                address: IpNet::V4(*address),
                gateway: Some(gateway),
            }));
        let route = |dst: Ipv4Net| Route {
            dst: IpNet::V4(dst),
            gw: Some(gateway),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        };
        if self.plugin.default_route {
            result.routes.push(route(Ipv4Net::default()));
        }
        result
            .routes
            .extend(self.plugin.routes.iter().copied().map(route));
        if self.conf.dns.is_some() {
            result.dns.clone_from(&self.conf.dns);
        } else if attached.dns.is_some() {
            result.dns.clone_from(&attached.dns);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::invocation::{Parsed, Reply};

    fn invocation(conf: serde_json::Value) -> Invocation {
        let env = |name: &str| {
            match name {
                "CNI_COMMAND" => Some("ADD"),
                "CNI_CONTAINERID" => Some("c1"),
                "CNI_NETNS" => Some("/run/netns/c1"),
                "CNI_IFNAME" => Some("eth0"),
                _ => None,
            }
            .map(str::to_string)
        };
        match Invocation::parse(&env, conf.to_string().as_bytes()).expect("valid") {
            Parsed::Run(invocation) => *invocation,
            Parsed::Version(_) => panic!("not ADD"),
        }
    }

    fn attached(host: bool) -> Attached {
        Attached {
            host: host.then(|| HostEnd {
                name: "vs1234".to_string(),
                mac: "02:00:00:00:00:aa".to_string(),
            }),
            mac: "02:00:00:00:00:01".to_string(),
            mtu: Some(1500),
            ips: vec!["172.30.0.2/16".parse().expect("net")],
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            dns: None,
        }
    }

    #[test]
    fn tap_result() {
        let inv = invocation(
            json!({"cniVersion": "1.0.0", "name": "vs", "type": "vswitch-cni",
            "dns": {"nameservers": ["10.0.0.53"]}}),
        );
        let text = Reply::Result(inv.add_result(&attached(false))).to_json(inv.version);
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            value,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1500,
                                "sandbox": "/run/netns/c1"}],
                "ips": [{"interface": 0, "address": "172.30.0.2/16", "gateway": "172.30.0.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "172.30.0.1"}],
                "dns": {"nameservers": ["10.0.0.53"]}
            })
        );
    }

    #[test]
    fn the_subnets_dns_unless_the_config_names_one() {
        let mut with_dns = attached(false);
        with_dns.dns = Some(Dns {
            nameservers: vec!["172.30.0.53".into()],
            domain: Some("svc.example".into()),
            search: Some(vec!["svc.example".into()]),
            options: Some(vec!["ndots:2".into()]),
        });
        let plain = invocation(json!({"cniVersion": "1.0.0", "name": "vs", "type": "vswitch-cni"}));
        assert_eq!(plain.add_result(&with_dns).dns, with_dns.dns);
        let configured = invocation(
            json!({"cniVersion": "1.0.0", "name": "vs", "type": "vswitch-cni",
            "dns": {"nameservers": ["10.0.0.53"]}}),
        );
        assert_eq!(
            configured.add_result(&with_dns).dns.map(|d| d.nameservers),
            Some(vec!["10.0.0.53".to_string()])
        );
    }

    #[test]
    fn veth_host_end_first_and_extra_routes() {
        let inv = invocation(
            json!({"cniVersion": "1.1.0", "name": "vs", "type": "vswitch-cni",
            "kind": "veth", "defaultRoute": false, "routes": ["10.9.0.0/16"]}),
        );
        let result = inv.add_result(&attached(true));
        assert_eq!(result.interfaces[0].name, "vs1234");
        assert_eq!(result.interfaces[0].sandbox, None);
        assert_eq!(result.interfaces[1].name, "eth0");
        assert_eq!(result.ips[0].interface, Some(1));
        assert_eq!(result.routes.len(), 1);
        assert_eq!(result.routes[0].dst.to_string(), "10.9.0.0/16");
        assert_eq!(result.dns, None);
    }

    #[test]
    fn after_prev_result() {
        let inv = invocation(
            json!({"cniVersion": "1.0.0", "name": "vs", "type": "vswitch-cni",
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "lo0", "sandbox": "/run/netns/c1"}],
                "ips": [{"interface": 0, "address": "127.0.0.1/8"}],
                "dns": {"nameservers": ["192.0.2.1"]}
            }}),
        );
        let result = inv.add_result(&attached(false));
        assert_eq!(result.interfaces.len(), 2);
        assert_eq!(result.ips[0].interface, Some(0));
        assert_eq!(
            result.ips[1].interface,
            Some(1),
            "ours points at our interface"
        );
        assert_eq!(
            result.dns.map(|d| d.nameservers),
            Some(vec!["192.0.2.1".to_string()]),
            "prevResult's DNS is kept when the config has none"
        );
    }
}
