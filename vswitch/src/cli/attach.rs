//! `attach`: turns the command line into a NetworkInterface resource.

use serde_json::{Map, Value, json};

use super::args::{AttachArgs, IpRequest, Netns, labels_map};
use crate::api::API_VERSION;

/// The subnet `attach` uses without `--subnet` (the embedded default configuration's).
pub const DEFAULT_SUBNET: &str = "default";

/// The interface name that adds no suffix to the default resource name.
pub const DEFAULT_IFNAME: &str = "eth0";

/// The default NetworkInterface name: the namespace's name (`pid-N` for `pid:N` and for
/// `/proc/N/ns/net`, the last component for another path), plus `-IFNAME` unless IFNAME is
/// `eth0`, made a valid resource name (lower case; characters other than letters, digits and
/// `-` become `-`; at most 63).
pub fn default_name(netns: &Netns, ifname: &str) -> String {
    let base = match netns {
        Netns::Named(name) => name.clone(),
        Netns::Pid(pid) => format!("pid-{pid}"),
        Netns::Path(path) => {
            // `/proc/N/ns/net` is a process's namespace: name it like `pid:N`, not `net`.
            let parts: Vec<_> = path
                .components()
                .filter_map(|c| match c {
                    std::path::Component::Normal(part) => Some(part.to_string_lossy()),
                    _ => None,
                })
                .collect();
            match parts.as_slice() {
                [proc_dir, pid, ns, net]
                    if proc_dir == "proc"
                        && ns == "ns"
                        && net == "net"
                        && pid.parse::<u32>().is_ok() =>
                {
                    format!("pid-{pid}")
                }
                [.., last] => last.to_string(),
                [] => "netns".to_owned(),
            }
        }
    };
    let raw = if ifname == DEFAULT_IFNAME {
        base
    } else {
        format!("{base}-{ifname}")
    };
    resource_name(&raw)
}

/// Longest resource name (a DNS label, RFC 1123).
const NAME_MAX_CHARS: usize = 63;

/// Turns text into a valid resource name, as the controller requires them (1 to 63
/// lowercase letters, digits and `-`, starting and ending with a letter or digit): lower
/// case, other characters become `-`, cut to 63.
fn resource_name(raw: &str) -> String {
    let mapped: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let cut: String = trimmed.chars().take(NAME_MAX_CHARS).collect();
    let cut = cut.trim_end_matches('-');
    if cut.is_empty() {
        "netns".to_owned()
    } else {
        cut.to_owned()
    }
}

/// The NetworkInterface resource for `attach`.
///
/// # Errors
/// A usage message when a label key is given twice.
pub fn build_interface(args: &AttachArgs) -> Result<Value, String> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.netns, &args.ifname));
    let labels = labels_map(&args.labels)?;

    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(name));
    if let Some(namespace) = &args.namespace {
        metadata.insert("namespace".into(), Value::String(namespace.clone()));
    }
    if !labels.is_empty() {
        metadata.insert("labels".into(), json!(labels));
    }

    let mut spec = Map::new();
    // With --vlan alone the switch picks the Subnet bound to the VLAN.
    spec.insert(
        "subnet".into(),
        Value::String(
            args.subnet
                .clone()
                .unwrap_or_else(|| DEFAULT_SUBNET.to_owned()),
        ),
    );
    if let Some(vlan) = args.vlan {
        spec.insert("vlan".into(), json!(vlan));
    }
    spec.insert("netns".into(), Value::String(args.netns.to_string()));
    spec.insert("ifname".into(), Value::String(args.ifname.clone()));
    spec.insert("kind".into(), Value::String(args.kind.as_str().to_owned()));
    if let Some(mac) = &args.mac {
        spec.insert("mac".into(), Value::String(mac.clone()));
    }
    match args.ip {
        IpRequest::Static(..) => {
            spec.insert("ips".into(), json!([args.ip.to_string()]));
        }
        IpRequest::Dhcp => {
            spec.insert("dhcp".into(), json!(true));
        }
        IpRequest::Auto => {}
    }
    if let Some(mtu) = args.mtu {
        spec.insert("mtu".into(), json!(mtu));
    }
    if !args.ports.is_empty() {
        let ports: Vec<Value> = args
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol}))
            .collect();
        spec.insert("ports".into(), Value::Array(ports));
    }

    Ok(json!({
        "apiVersion": API_VERSION,
        "kind": "NetworkInterface",
        "metadata": metadata,
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use clap::Parser;

    fn attach(argv: &[&str]) -> AttachArgs {
        let mut full = vec!["vswitchctl", "attach"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).expect("parse").command {
            Command::Attach(args) => args,
            other => panic!("expected attach, got {other:?}"),
        }
    }

    #[test]
    fn default_names() {
        let cases = [
            (Netns::Named("c1".into()), "eth0", "c1"),
            (Netns::Named("c1".into()), "eth1", "c1-eth1"),
            (Netns::Pid(1234), "eth0", "pid-1234"),
            (Netns::Pid(1234), "net1", "pid-1234-net1"),
            (Netns::Path("/run/netns/web".into()), "eth0", "web"),
            (
                Netns::Path("/var/run/docker/netns/abc123".into()),
                "eth2",
                "abc123-eth2",
            ),
            (Netns::Path("/proc/77/ns/net".into()), "eth0", "pid-77"),
            (Netns::Path("/srv/proc/77/ns/net".into()), "eth0", "net"),
            (Netns::Named("My_NS".into()), "eth0.100", "my-ns-eth0-100"),
            (Netns::Named("_x_".into()), "eth0", "x"),
            (Netns::Named("___".into()), "eth0", "netns"),
            (Netns::Named("a".repeat(70)), "eth0", &"a".repeat(63)),
            (
                Netns::Named(format!("{}_b", "a".repeat(62))),
                "eth0",
                &"a".repeat(62),
            ),
        ];
        for (netns, ifname, expected) in cases {
            assert_eq!(default_name(&netns, ifname), expected, "{netns:?} {ifname}");
        }
    }

    #[test]
    fn minimal_attach_uses_defaults() {
        let resource = build_interface(&attach(&["c1"])).expect("build");
        assert_eq!(
            resource,
            json!({
                "apiVersion": "vswitch/v1alpha1",
                "kind": "NetworkInterface",
                "metadata": {"name": "c1"},
                "spec": {"subnet": "default", "netns": "c1", "ifname": "eth0", "kind": "tap"},
            })
        );
    }

    #[test]
    fn every_option_reaches_the_resource() {
        let resource = build_interface(&attach(&[
            "pid:99",
            "--subnet",
            "blue",
            "--ip",
            "10.1.0.7/24",
            "--kind",
            "veth",
            "--ifname",
            "net1",
            "--mac",
            "02:AA:00:00:00:01",
            "--mtu",
            "9000",
            "--label",
            "app=web",
            "--label",
            "tier=",
        ]))
        .expect("build");
        assert_eq!(
            resource,
            json!({
                "apiVersion": "vswitch/v1alpha1",
                "kind": "NetworkInterface",
                "metadata": {"name": "pid-99-net1", "labels": {"app": "web", "tier": ""}},
                "spec": {
                    "subnet": "blue",
                    "netns": "pid:99",
                    "ifname": "net1",
                    "kind": "veth",
                    "mac": "02:aa:00:00:00:01",
                    "ips": ["10.1.0.7/24"],
                    "mtu": 9000,
                },
            })
        );
    }

    #[test]
    fn explicit_name_wins_and_auto_ip_is_omitted() {
        let resource = build_interface(&attach(&[
            "c2", "--name", "web-1", "--ip", "auto", "--ifname", "eth1",
        ]))
        .expect("build");
        assert_eq!(resource["metadata"]["name"], "web-1");
        assert!(resource["spec"].get("ips").is_none(), "{resource}");
    }

    #[test]
    fn duplicate_label_is_refused() {
        let error = build_interface(&attach(&["c1", "--label", "a=1", "--label", "a=2"]))
            .expect_err("duplicate label");
        assert!(error.contains("more than once"), "{error}");
    }
}
