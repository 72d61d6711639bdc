//! `describe`: every field of a resource for people, then the tables its kind shows.

use std::fmt::Write as _;

use serde_json::Value;

use super::{NONE, cell, joined, listing_table, table_section};
use crate::control::kinds::{self, Kind};

/// The first present, non-empty value among JSON pointers (e.g. status before spec).
fn first<'a>(resource: &'a Value, pointers: &[&str]) -> Option<&'a Value> {
    pointers.iter().find_map(|pointer| {
        resource
            .pointer(pointer)
            .filter(|value| cell(Some(value)) != NONE)
    })
}

fn at(resource: &Value, pointers: &[&str]) -> String {
    cell(first(resource, pointers))
}

/// `metadata.labels` as `k=v,k=v` (sorted by key), or `-`.
pub fn labels(resource: &Value) -> String {
    match resource
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
    {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => NONE.to_owned(),
    }
}

/// `describe`: every field of a resource, for people. Name, kind, API version and labels
/// first, then other metadata, then spec, status and any other section; then the tables
/// its kind shows (a Network's peerings with their state, a NATGateway's ports in use).
///
/// # Errors
/// A message when the resource does not parse as its kind (a daemon of another version).
pub fn describe(resource: &Value) -> Result<String, String> {
    let kind = resource
        .get("kind")
        .and_then(Value::as_str)
        .and_then(|kind| Kind::parse(kind).ok());
    let tables = match kind {
        Some(kind) => kinds::describe_tables(kind, resource)?,
        None => Vec::new(),
    };
    let mut shown = resource.clone();
    if let Some(Value::Object(status)) = shown.get_mut("status") {
        for table in &tables {
            status.remove(table.replaces);
        }
    }
    let mut text = describe_fields(&shown);
    for table in &tables {
        text.push_str(&table_section(table.title, &listing_table(&table.listing)));
    }
    Ok(text)
}

fn describe_fields(resource: &Value) -> String {
    let mut text = String::new();
    let metadata = resource.get("metadata");
    let mut head: Vec<(String, String)> = vec![("Name".into(), at(resource, &["/metadata/name"]))];
    if resource.pointer("/metadata/namespace").is_some() {
        head.push(("Namespace".into(), at(resource, &["/metadata/namespace"])));
    }
    head.push(("Kind".into(), at(resource, &["/kind"])));
    head.push(("API version".into(), at(resource, &["/apiVersion"])));
    if let Some(Value::Object(meta)) = metadata {
        for (key, value) in meta {
            if !["name", "namespace", "labels"].contains(&key.as_str())
                && !value.is_object()
                && !value.is_array()
            {
                head.push((key.clone(), cell(Some(value))));
            }
        }
    }
    let label_lines: Vec<String> = match resource.pointer("/metadata/labels") {
        Some(Value::Object(map)) if !map.is_empty() => map
            .iter()
            .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
            .collect(),
        _ => vec!["<none>".into()],
    };
    head.push(("Labels".into(), label_lines.join("\n")));
    // `Key:` plus two spaces.
    let width = head.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 3;
    for (key, value) in &head {
        let mut lines = value.lines();
        let first_line = lines.next().unwrap_or_default();
        let _ = writeln!(text, "{:<width$}{first_line}", format!("{key}:"));
        for line in lines {
            let _ = writeln!(text, "{:width$}{line}", "");
        }
    }
    if let Some(Value::Object(meta)) = metadata {
        for (key, value) in meta {
            if key != "labels" && (value.is_object() || value.is_array()) {
                section(&mut text, key, value);
            }
        }
    }
    for key in ["spec", "status"] {
        section(
            &mut text,
            &title(key),
            resource.get(key).unwrap_or(&Value::Null),
        );
    }
    if let Value::Object(map) = resource {
        for (key, value) in map {
            if !matches!(
                key.as_str(),
                "apiVersion" | "kind" | "metadata" | "spec" | "status"
            ) {
                section(&mut text, &title(key), value);
            }
        }
    }
    text
}

/// One `describe` section: `Key:` then the value's fields indented below it.
pub fn describe_section(key: &str, value: &Value) -> String {
    let mut text = String::new();
    section(&mut text, key, value);
    text
}

fn title(key: &str) -> String {
    let mut chars = key.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// `Key:` then the value's fields indented below it, or `Key:  <none>`.
fn section(text: &mut String, key: &str, value: &Value) {
    if is_empty(value) {
        let _ = writeln!(text, "{key}:  <none>");
        return;
    }
    let _ = writeln!(text, "{key}:");
    nested(text, value, 2);
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn is_scalar_like(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items
            .iter()
            .all(|item| !item.is_object() && !item.is_array()),
        _ => true,
    }
}

fn nested(text: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) => {
            let width = map
                .iter()
                .filter(|(_, v)| is_scalar_like(v))
                .map(|(key, _)| key.len() + 1)
                .max()
                .unwrap_or(0)
                + 2;
            for (key, item) in map {
                if is_scalar_like(item) {
                    let shown = if is_empty(item) {
                        "<none>".to_owned()
                    } else {
                        joined(Some(item), ", ")
                    };
                    let _ = writeln!(text, "{:indent$}{:<width$}{shown}", "", format!("{key}:"));
                } else {
                    let _ = writeln!(text, "{:indent$}{key}:", "");
                    nested(text, item, indent + 2);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                if is_scalar_like(item) {
                    let _ = writeln!(text, "{:indent$}- {}", "", cell(Some(item)));
                } else {
                    let _ = writeln!(text, "{:indent$}-", "");
                    nested(text, item, indent + 2);
                }
            }
        }
        other => {
            let _ = writeln!(text, "{:indent$}{}", "", cell(Some(other)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::fixtures::{interface, peered_network};
    use serde_json::json;

    /// `describe` of a fixture: typed when it is a whole resource, else the generic view
    /// (fixtures of unknown kinds or without a spec).
    fn describe(resource: &Value) -> String {
        let mut typed = resource.clone();
        if typed.get("apiVersion").is_none() {
            typed["apiVersion"] = json!("vswitch/v1alpha1");
        }
        super::describe(&typed).unwrap_or_else(|_| describe_fields(resource))
    }

    #[test]
    fn describe_network_lists_peerings_with_state() {
        let text = describe(&peered_network());
        assert!(
            text.ends_with(
                "\
Status:
  subnets:  web, db
Peerings:
  NAME       NETWORK   STATE     MESSAGE
  to-red     red       Ready     -
  to-green   green     Pending   Network \"green\" does not exist yet
"
            ),
            "{text}"
        );
        assert!(
            text.contains("Spec:\n  peerings:\n    -\n      name:     to-red\n"),
            "{text}"
        );
        let bare = describe(&json!({"kind": "Network", "metadata": {"name": "n"}, "spec": {}}));
        assert!(
            bare.ends_with("Status:  <none>\nPeerings:  <none>\n"),
            "{bare}"
        );
    }

    #[test]
    fn describe_nat_gateway_lists_ports_in_use() {
        let gateway = json!({"kind": "NATGateway", "metadata": {"name": "gw"},
            "spec": {"network": "blue", "ips": ["198.51.100.10"], "portsPerNetworkInterface": 2048},
            "status": {"ips": ["198.51.100.10"], "portsInUse": [
                {"interface": "c1", "ip": "198.51.100.10", "blocks": ["1024-3071"], "tcp": 2, "udp": 1, "icmp": 0}]}});
        let text = describe(&gateway);
        assert!(
            text.ends_with(
                "\
Status:
  ips:  198.51.100.10
Ports in use:
  INTERFACE   NAT-IP          BLOCKS      TCP   UDP   ICMP
  c1          198.51.100.10   1024-3071   2     1     0
"
            ),
            "{text}"
        );
        let idle = json!({"kind": "NATGateway", "metadata": {"name": "gw"},
            "spec": {"network": "blue", "ips": ["198.51.100.10"]}, "status": {"ips": [], "portsInUse": []}});
        assert!(describe(&idle).ends_with("Ports in use:  <none>\n"));
    }

    #[test]
    fn describe_shows_every_field() {
        let mut r = interface("c1", Some("Up"));
        r["metadata"]["labels"] = json!({"app": "web", "tier": "front"});
        r["status"]["message"] = json!("");
        let text = describe(&r);
        assert_eq!(
            text,
            "\
Name:         c1
Kind:         NetworkInterface
API version:  vswitch/v1alpha1
Labels:       app=web
              tier=front
Spec:
  ifname:  eth0
  kind:    tap
  netns:   c1
  subnet:  default
Status:
  ips:      172.30.0.2/16
  mac:      02:00:ac:1e:00:02
  message:  -
  state:    Up
"
        );
        let bare = describe(&json!({"kind": "Subnet", "metadata": {"name": "n"}, "spec": {}}));
        assert!(
            bare.contains("Labels:       <none>\nSpec:  <none>\nStatus:  <none>\n"),
            "{bare}"
        );
    }

    #[test]
    fn describe_nests_objects_and_lists() {
        let r = json!({"kind": "Overlay", "metadata": {"name": "n"},
                       "spec": {"peerings": [{"network": "b"}], "reserved": ["10.0.0.2", "10.0.0.3"]},
                       "status": {"peerings": {"b": "Pending"}}});
        let text = describe(&r);
        assert!(
            text.contains(
                "Spec:\n  peerings:\n    -\n      network:  b\n  reserved:  10.0.0.2, 10.0.0.3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("Status:\n  peerings:\n    b:  Pending\n"),
            "{text}"
        );
    }
}
