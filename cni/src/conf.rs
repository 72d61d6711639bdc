//! The plugin's network configuration: the keys of a `vswitch-cni` entry in a conflist
//! beside the spec's (`cniVersion`, `name`, `type`, `dns`, `args`, `runtimeConfig`,
//! `prevResult`, ...), and what the runtime adds (`runtimeConfig.portMappings`, labels).
//!
//! ```json
//! {"type": "vswitch-cni", "socket": "/run/vswitch/vswitchd.sock", "subnet": "default",
//!  "kind": "tap", "namespace": "default", "labels": {"team": "a"},
//!  "capabilities": {"portMappings": true},
//!  "dns": {"nameservers": ["10.0.0.53"], "search": ["svc.local"]}}
//! ```
//!
//! Unknown keys are refused (error 7) rather than ignored, so that a typo (`subent`) does
//! not silently attach containers to the default Subnet.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use rscni_types::types::{NetConf, Protocol};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::CniError;

/// Where vswitchd listens unless the config says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitchd.sock";

/// The kind of device the container gets, as the NetworkInterface's `spec.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceKind {
    /// A TAP device in the container's namespace, whose queues vswitchd holds (the
    /// NetworkInterface default).
    #[default]
    Tap,
    /// A veth pair: one end in the container, the other in vswitchd's namespace.
    Veth,
}

/// The plugin's own keys of its network configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginConf {
    /// vswitchd's control socket.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The Subnet containers join; it must exist in vswitchd.
    #[serde(default = "default_subnet")]
    pub subnet: String,
    /// `tap` (default) or `veth`.
    #[serde(default)]
    pub kind: InterfaceKind,
    /// The interface MTU; the Subnet's when absent.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// The NetworkInterfaces' namespace when the runtime names none (`K8S_POD_NAMESPACE`
    /// wins); `default` when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels every NetworkInterface of this network gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Install a default route via the Subnet's gateway in the container (default true).
    #[serde(default = "default_true")]
    pub default_route: bool,
    /// Further routes installed in the container via the gateway.
    #[serde(default)]
    pub routes: Vec<Ipv4Net>,
    /// How long one request to vswitchd may take.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_subnet() -> String {
    "default".to_string()
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> u64 {
    10
}

impl PluginConf {
    /// Reads the plugin's keys from the network configuration (the keys the spec does not
    /// define land in `conf.custom`).
    ///
    /// # Errors
    /// [`CniError::InvalidNetworkConfig`] (code 7) naming the key and what is valid.
    pub fn from_netconf(conf: &NetConf) -> Result<PluginConf, CniError> {
        let object: serde_json::Map<String, Value> = conf
            .custom
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let plugin: PluginConf = serde_json::from_value(Value::Object(object)).map_err(|e| {
            CniError::InvalidNetworkConfig(format!(
                "network {:?}: {e}; vswitch-cni's keys are socket, subnet, kind (tap or veth), \
                 mtu, namespace, labels, defaultRoute, routes, timeoutSeconds (docs/cni.md)",
                conf.name
            ))
        })?;
        if plugin.subnet.is_empty() {
            return Err(CniError::InvalidNetworkConfig(format!(
                "network {:?}: subnet is empty; name a Subnet of vswitchd (vswitchctl get subnets)",
                conf.name
            )));
        }
        if plugin.timeout_seconds == 0 {
            return Err(CniError::InvalidNetworkConfig(format!(
                "network {:?}: timeoutSeconds must be at least 1",
                conf.name
            )));
        }
        Ok(plugin)
    }
}

/// Labels from the conventions' `args` (`{"args": {"cni": {"labels": [{"key": K, "value":
/// V}]}}}`, CNI CONVENTIONS.md) and from `runtimeConfig.labels` (an object).
///
/// # Errors
/// [`CniError::InvalidNetworkConfig`] when either is not of that shape.
pub fn extra_labels(conf: &NetConf) -> Result<BTreeMap<String, String>, CniError> {
    let mut labels = BTreeMap::new();
    if let Some(list) = conf
        .args
        .as_ref()
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("labels"))
    {
        #[derive(Deserialize)]
        struct Pair {
            key: String,
            value: String,
        }
        let pairs: Vec<Pair> = serde_json::from_value(list.clone()).map_err(|e| {
            CniError::InvalidNetworkConfig(format!(
                "args.cni.labels: {e}; write a list of {{\"key\": K, \"value\": V}}"
            ))
        })?;
        labels.extend(pairs.into_iter().map(|p| (p.key, p.value)));
    }
    if let Some(map) = conf
        .runtime_config
        .as_ref()
        .and_then(|r| r.custom.get("labels"))
    {
        let map: BTreeMap<String, String> = serde_json::from_value(map.clone()).map_err(|e| {
            CniError::InvalidNetworkConfig(format!(
                "runtimeConfig.labels: {e}; write an object of string values"
            ))
        })?;
        labels.extend(map);
    }
    Ok(labels)
}

/// One `runtimeConfig.portMappings` entry, checked: what becomes a PortForward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPublish {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The port on the Uplink address.
    pub host_port: u16,
    /// The container's port.
    pub container_port: u16,
    /// `hostIP`, when the runtime gave one (an IPv4 address of the Uplink).
    pub host_ip: Option<Ipv4Addr>,
}

/// The port mappings the runtime asks for (`runtimeConfig.portMappings`, the
/// `portMappings` capability), checked.
///
/// # Errors
/// [`CniError::InvalidNetworkConfig`] for a port outside 1..=65535, SCTP (a PortForward
/// carries TCP or UDP), or a `hostIP` that is not IPv4. An empty or `0.0.0.0` `hostIP` is
/// no `hostIP`.
pub fn port_mappings(conf: &NetConf) -> Result<Vec<PortPublish>, CniError> {
    let Some(runtime) = conf.runtime_config.as_ref() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, mapping) in runtime.port_mappings.iter().enumerate() {
        let port = |value: u32, field: &str| {
            u16::try_from(value)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    CniError::InvalidNetworkConfig(format!(
                        "runtimeConfig.portMappings[{i}].{field}: {value} is not a port (1..=65535)"
                    ))
                })
        };
        let protocol = match mapping.protocol {
            None | Some(Protocol::Tcp) => "tcp",
            Some(Protocol::Udp) => "udp",
            Some(Protocol::Sctp) => {
                return Err(CniError::InvalidNetworkConfig(format!(
                    "runtimeConfig.portMappings[{i}].protocol: sctp cannot be published; \
                     vswitch PortForwards carry tcp or udp"
                )));
            }
        };
        let host_ip = match mapping.custom.get("hostIP") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() || s == "0.0.0.0" => None,
            Some(Value::String(s)) => Some(s.parse::<Ipv4Addr>().map_err(|_| {
                CniError::InvalidNetworkConfig(format!(
                    "runtimeConfig.portMappings[{i}].hostIP: {s:?} is not an IPv4 address"
                ))
            })?),
            Some(other) => {
                return Err(CniError::InvalidNetworkConfig(format!(
                    "runtimeConfig.portMappings[{i}].hostIP: {other} is not an IPv4 address"
                )));
            }
        };
        out.push(PortPublish {
            protocol,
            host_port: port(mapping.host_port, "hostPort")?,
            container_port: port(mapping.container_port, "containerPort")?,
            host_ip,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netconf(json: &str) -> NetConf {
        serde_json::from_str(json).expect("valid NetConf")
    }

    #[test]
    fn defaults() {
        let conf = netconf(r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni"}"#);
        let plugin = PluginConf::from_netconf(&conf).expect("valid");
        assert_eq!(plugin.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(plugin.subnet, "default");
        assert_eq!(plugin.kind, InterfaceKind::Tap);
        assert!(plugin.default_route);
        assert_eq!(plugin.timeout_seconds, 10);
    }

    #[test]
    fn every_key() {
        let conf = netconf(
            r#"{"cniVersion":"1.1.0","name":"vs","type":"vswitch-cni","socket":"/tmp/x.sock",
                "subnet":"web","kind":"veth","mtu":1400,"namespace":"shop",
                "labels":{"team":"a"},"defaultRoute":false,"routes":["10.9.0.0/16"],
                "timeoutSeconds":3,"dns":{"nameservers":["10.0.0.53"]}}"#,
        );
        let plugin = PluginConf::from_netconf(&conf).expect("valid");
        assert_eq!(plugin.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(plugin.subnet, "web");
        assert_eq!(plugin.kind, InterfaceKind::Veth);
        assert_eq!(plugin.mtu, Some(1400));
        assert_eq!(plugin.namespace.as_deref(), Some("shop"));
        assert_eq!(plugin.labels["team"], "a");
        assert!(!plugin.default_route);
        assert_eq!(
            plugin.routes,
            vec!["10.9.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn unknown_key_is_error_7_naming_it() {
        let conf =
            netconf(r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni","subent":"x"}"#);
        let error = PluginConf::from_netconf(&conf).expect_err("typo");
        assert_eq!(u32::from(&error), 7);
        assert!(error.details().contains("subent"), "{error}");
    }

    #[test]
    fn bad_kind_is_error_7() {
        let conf =
            netconf(r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni","kind":"macvlan"}"#);
        let error = PluginConf::from_netconf(&conf).expect_err("bad kind");
        assert_eq!(u32::from(&error), 7);
        assert!(error.details().contains("macvlan"), "{error}");
    }

    #[test]
    fn port_mappings_are_checked() {
        let conf = netconf(
            r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni","runtimeConfig":{"portMappings":[
                {"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                {"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"198.51.100.10"},
                {"hostPort":9000,"containerPort":9000,"hostIP":""}]}}"#,
        );
        let ports = port_mappings(&conf).expect("valid");
        assert_eq!(
            ports,
            vec![
                PortPublish {
                    protocol: "tcp",
                    host_port: 8080,
                    container_port: 80,
                    host_ip: None
                },
                PortPublish {
                    protocol: "udp",
                    host_port: 5353,
                    container_port: 53,
                    host_ip: Some(Ipv4Addr::new(198, 51, 100, 10))
                },
                PortPublish {
                    protocol: "tcp",
                    host_port: 9000,
                    container_port: 9000,
                    host_ip: None
                },
            ]
        );
        let bad = netconf(
            r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni","runtimeConfig":{"portMappings":[
                {"hostPort":70000,"containerPort":80}]}}"#,
        );
        let error = port_mappings(&bad).expect_err("port too big");
        assert!(
            error.details().contains("portMappings[0].hostPort"),
            "{error}"
        );
        let sctp = netconf(
            r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni","runtimeConfig":{"portMappings":[
                {"hostPort":1,"containerPort":1,"protocol":"sctp"}]}}"#,
        );
        assert_eq!(u32::from(&port_mappings(&sctp).expect_err("sctp")), 7);
    }

    #[test]
    fn labels_from_args_and_runtime_config() {
        let conf = netconf(
            r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni",
                "args":{"cni":{"labels":[{"key":"app","value":"web"}]}},
                "runtimeConfig":{"labels":{"tier":"front"}}}"#,
        );
        let labels = extra_labels(&conf).expect("valid");
        assert_eq!(labels["app"], "web");
        assert_eq!(labels["tier"], "front");
        let bad = netconf(
            r#"{"cniVersion":"1.0.0","name":"vs","type":"vswitch-cni","args":{"cni":{"labels":{"a":"b"}}}}"#,
        );
        assert_eq!(u32::from(&extra_labels(&bad).expect_err("not a list")), 7);
    }

    #[test]
    fn the_fixture_conflist_is_valid() {
        let text = include_str!("../../fixtures/cni/10-vswitch.conflist");
        let list: rscni_types::types::NetConfList = serde_json::from_str(text).expect("conflist");
        assert_eq!(list.cni_version, "1.0.0");
        for plugin in &list.plugins {
            let mut conf = plugin.clone();
            conf.name.clone_from(&list.name);
            conf.cni_version.clone_from(&list.cni_version);
            let parsed = PluginConf::from_netconf(&conf).expect("valid plugin entry");
            assert_eq!(parsed.socket, PathBuf::from(DEFAULT_SOCKET));
            assert_eq!(conf.dns.as_ref().map(|d| d.nameservers.len()), Some(1));
        }
    }
}
