//! What ADD names and labels, so that DEL, CHECK and GC find it again from the container
//! ID and interface name alone (DEL may come without `CNI_ARGS`, and after the namespace is
//! gone).
//!
//! - The NetworkInterface is `cni-<id>` with `<id>` the first 12 characters of a
//!   hexadecimal container ID (Docker's and podman's short ID), or the whole ID when it is a
//!   short DNS label (`ctr run ... c1`), or a cut prefix plus a hash of the ID otherwise;
//!   `-<ifname>` is appended when the interface is not `eth0`. Always a DNS label of at most
//!   45 characters, so that PortForward names built on it stay within 63.
//! - Labels: [`LABEL_CONTAINER`] (the container ID, cut at 63 characters, the limit of a
//!   label value), [`LABEL_NETWORK`] (the CNI network name), [`LABEL_IFNAME`], and
//!   [`LABEL_POD_NAME`] when the runtime gave `K8S_POD_NAME`.

use std::collections::BTreeMap;

use crate::CniError;

/// Label: the container ID this plugin attached (cut at 63 characters).
pub const LABEL_CONTAINER: &str = "vswitch.dev/cni-container";
/// Label: the CNI network (conflist `name`) the attachment belongs to; GC works per network.
pub const LABEL_NETWORK: &str = "vswitch.dev/cni-network";
/// Label: the interface name in the container (`CNI_IFNAME`).
pub const LABEL_IFNAME: &str = "vswitch.dev/cni-ifname";
/// Label: the pod (or podman container) name, from `K8S_POD_NAME`.
pub const LABEL_POD_NAME: &str = "vswitch.dev/pod-name";

/// The longest label value vswitchd accepts.
const LABEL_VALUE_MAX: usize = 63;
/// The longest interface name this module makes.
const NAME_MAX: usize = 45;

/// A label value for `value`: cut at 63 characters (CNI IDs and names are ASCII).
pub fn label_value(value: &str) -> String {
    value.chars().take(LABEL_VALUE_MAX).collect()
}

/// FNV-1a, 32 bits: a stable hash for names (not for security).
fn fnv1a(text: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// `text` lowercased with every character outside `[a-z0-9-]` replaced by `-`.
fn dns_chars(text: &str) -> String {
    text.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The NetworkInterface name of (`container_id`, `ifname`): see the module doc.
pub fn interface_name(container_id: &str, ifname: &str) -> String {
    let is_hex = container_id.len() >= 12 && container_id.bytes().all(|b| b.is_ascii_hexdigit());
    let suffix = match dns_chars(ifname).trim_matches('-') {
        _ if ifname == "eth0" => String::new(),
        "" => format!("-{:08x}", fnv1a(ifname)),
        cleaned => format!("-{cleaned}"),
    };
    let room = NAME_MAX - "cni-".len() - suffix.len();
    let cleaned = dns_chars(container_id);
    let id = if is_hex {
        cleaned[..12].to_string()
    } else if cleaned == container_id && container_id.len() <= room && !container_id.ends_with('-')
    {
        cleaned
    } else {
        // Not a plain short label: keep a readable prefix and make it unique with a hash
        // of the whole ID.
        let hash = format!("{:08x}", fnv1a(container_id));
        let prefix: String = cleaned.chars().take(room - hash.len() - 1).collect();
        format!("{}-{hash}", prefix.trim_end_matches('-'))
    };
    format!("cni-{id}{suffix}")
}

/// The PortForward name of one published port of the interface `interface`.
pub fn port_forward_name(interface: &str, protocol: &str, host_port: u16) -> String {
    format!("{interface}-{protocol}-{host_port}")
}

/// The labels that mark an attachment as this plugin's: container, network, ifname.
pub fn ownership_labels(
    container_id: &str,
    network: &str,
    ifname: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CONTAINER.to_string(), label_value(container_id)),
        (LABEL_NETWORK.to_string(), label_value(network)),
        (LABEL_IFNAME.to_string(), label_value(ifname)),
    ])
}

/// True when `labels` mark the attachment of (`container_id`, `network`, `ifname`).
pub fn is_owned_by(
    labels: &BTreeMap<String, String>,
    container_id: &str,
    network: &str,
    ifname: &str,
) -> bool {
    ownership_labels(container_id, network, ifname)
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// True when `value` is a DNS label (1..=63 of `[a-z0-9-]`, not starting or ending in `-`):
/// what vswitchd accepts as a namespace.
pub fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// The namespace of the NetworkInterface: `K8S_POD_NAMESPACE`, else the config's
/// `namespace`, else `default`.
///
/// # Errors
/// [`CniError::InvalidEnvValue`] (4) when `K8S_POD_NAMESPACE` is not a DNS label,
/// [`CniError::InvalidNetworkConfig`] (7) when the config's is not.
pub fn namespace(from_args: Option<&str>, from_conf: Option<&str>) -> Result<String, CniError> {
    if let Some(ns) = from_args {
        if !is_dns_label(ns) {
            return Err(CniError::InvalidEnvValue(format!(
                "CNI_ARGS K8S_POD_NAMESPACE={ns:?} is not a DNS label (lowercase letters, digits \
                 and '-', at most 63)"
            )));
        }
        return Ok(ns.to_string());
    }
    if let Some(ns) = from_conf {
        if !is_dns_label(ns) {
            return Err(CniError::InvalidNetworkConfig(format!(
                "namespace {ns:?} is not a DNS label (lowercase letters, digits and '-', at \
                 most 63)"
            )));
        }
        return Ok(ns.to_string());
    }
    Ok("default".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_use_the_short_id() {
        let id = "3f2a9c0d1e4b5a6978877665544332211000ffeeddccbbaa9988776655443322";
        assert_eq!(interface_name(id, "eth0"), "cni-3f2a9c0d1e4b");
        assert_eq!(interface_name(id, "net1"), "cni-3f2a9c0d1e4b-net1");
        assert_eq!(
            interface_name(&id.to_uppercase(), "eth0"),
            "cni-3f2a9c0d1e4b"
        );
    }

    #[test]
    fn short_label_ids_are_kept() {
        assert_eq!(interface_name("c1", "eth0"), "cni-c1");
        assert_eq!(interface_name("web-1", "eth1"), "cni-web-1-eth1");
    }

    #[test]
    fn other_ids_get_a_prefix_and_a_hash() {
        let a = interface_name("My_Container.1", "eth0");
        let b = interface_name("My_Container.2", "eth0");
        assert_ne!(a, b);
        assert!(a.starts_with("cni-my-container-1-"), "{a}");
        let long = "x".repeat(200);
        let name = interface_name(&long, "a-very-long-if");
        assert!(name.len() <= NAME_MAX, "{name}");
        assert!(is_dns_label(&name), "{name}");
        assert_eq!(
            name,
            interface_name(&long, "a-very-long-if"),
            "deterministic"
        );
        // Every name, and the PortForward names on it, are DNS labels.
        for id in ["c1", "ABCDEF0123456789", &long, "a.b_c", "-x", "9"] {
            for ifname in ["eth0", "net1", "A.B", "-"] {
                let name = interface_name(id, ifname);
                assert!(is_dns_label(&name), "{id} {ifname}: {name}");
                assert!(
                    is_dns_label(&port_forward_name(&name, "tcp", 65535)),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn ownership_round_trips_with_long_ids() {
        let id = "a".repeat(64);
        let labels = ownership_labels(&id, "vs", "eth0");
        assert_eq!(labels[LABEL_CONTAINER].len(), 63);
        assert!(is_owned_by(&labels, &id, "vs", "eth0"));
        assert!(!is_owned_by(&labels, &id, "vs", "eth1"));
        assert!(!is_owned_by(&labels, &id, "other", "eth0"));
    }

    #[test]
    fn namespace_precedence() {
        assert_eq!(namespace(None, None).unwrap(), "default");
        assert_eq!(namespace(None, Some("blog")).unwrap(), "blog");
        assert_eq!(namespace(Some("shop"), Some("blog")).unwrap(), "shop");
        assert_eq!(u32::from(&namespace(Some("Shop"), None).unwrap_err()), 4);
        assert_eq!(u32::from(&namespace(None, Some("a_b")).unwrap_err()), 7);
    }
}
