//! Formatting API answers for people: tables, `describe` text, and JSON/YAML dumps.
//!
//! `table` holds the text [`Table`] and the resource listings, `describe` the `describe`
//! text of a resource, `node` the node's views (learned MACs, neighbours, counters, routing
//! tables, conntrack, NAT, overlay). Everything is a pure function from the API's answers to
//! text; a missing or empty value is printed as `-`.

mod describe;
mod node;
mod table;

use std::fmt::Write as _;

use serde_json::Value;

pub use describe::{describe, describe_section, labels};
pub use node::{
    OverlayReport, conntrack_table, fdb_table, load_balancer_view, nat_report, neighbors_table,
    overlay_report, overlay_runners_table, parse_answer, port_counters, routing_table,
    stats_report, uplink_report,
};
pub use table::{Table, listing_table, resource_table, table_section};

/// Printed for a missing or empty value.
const NONE: &str = "-";

/// Spaces between table columns.
const COLUMN_GAP: usize = 3;

/// A scalar as text: strings bare, numbers and booleans as JSON, arrays joined with `,`,
/// null or missing or empty as `-`.
pub fn cell(value: Option<&Value>) -> String {
    joined(value, ",")
}

/// Like [`cell`], with list items joined by `separator`.
fn joined(value: Option<&Value>, separator: &str) -> String {
    match value {
        None | Some(Value::Null) => NONE.to_owned(),
        Some(Value::String(text)) if text.is_empty() => NONE.to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) if items.is_empty() => NONE.to_owned(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| cell(Some(item)))
            .collect::<Vec<_>>()
            .join(separator),
        Some(Value::Object(map)) if map.is_empty() => NONE.to_owned(),
        Some(other) => other.to_string(),
    }
}

/// Seconds as a short age: `42s`, `4m10s`, `2h5m`, `3d4h`.
pub fn format_age(seconds: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    match seconds {
        s if s < MINUTE => format!("{s}s"),
        s if s < HOUR => format!("{}m{}s", s / MINUTE, s % MINUTE),
        s if s < DAY => format!("{}h{}m", s / HOUR, (s % HOUR) / MINUTE),
        s => format!("{}d{}h", s / DAY, (s % DAY) / HOUR),
    }
}

/// Pretty JSON with a final newline.
pub fn to_json(value: &Value) -> String {
    // Serialising a `Value` to a string cannot fail: keys are strings and there is no I/O.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// YAML; a list of resources becomes several `---`-separated documents, so the output can be
/// fed back to `vswitchctl apply -f -`.
///
/// # Errors
/// The serialiser's message (not expected for values that came from JSON).
pub fn to_yaml(value: &Value) -> Result<String, String> {
    let documents: Vec<&Value> = match value {
        Value::Array(items) if !items.is_empty() => items.iter().collect(),
        other => vec![other],
    };
    let mut text = String::new();
    for (index, document) in documents.into_iter().enumerate() {
        if index > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_norway::to_string(document).map_err(|error| error.to_string())?);
    }
    Ok(text)
}

/// `KEY   value` lines, keys padded to the widest (for one-object reports).
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(key, _)| key.chars().count())
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (key, value) in pairs {
        let pad = width - key.chars().count() + COLUMN_GAP;
        let _ = writeln!(text, "{key}{}{value}", " ".repeat(pad));
    }
    text
}

#[cfg(test)]
mod fixtures {
    use serde_json::{Value, json};

    pub(super) fn interface(name: &str, state: Option<&str>) -> Value {
        let mut r = json!({
            "apiVersion": "vswitch/v1alpha1",
            "kind": "NetworkInterface",
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"subnet": "default", "netns": name, "ifname": "eth0", "kind": "tap"},
        });
        if let Some(state) = state {
            r["status"] =
                json!({"ips": ["172.30.0.2/16"], "mac": "02:00:ac:1e:00:02", "state": state});
        }
        r
    }

    pub(super) fn peered_network() -> Value {
        json!({"kind": "Network", "metadata": {"name": "blue"},
               "spec": {"peerings": [{"name": "to-red", "network": "red"},
                                     {"name": "to-green", "network": "green"}]},
               "status": {"subnets": ["web", "db"],
                          "peerings": [{"name": "to-red", "network": "red", "state": "Ready"},
                                       {"name": "to-green", "network": "green", "state": "Pending",
                                        "message": "Network \"green\" does not exist yet"}]}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages() {
        assert_eq!(format_age(0), "0s");
        assert_eq!(format_age(59), "59s");
        assert_eq!(format_age(250), "4m10s");
        assert_eq!(format_age(7500), "2h5m");
        assert_eq!(format_age(3 * 86400 + 4 * 3600), "3d4h");
    }

    #[test]
    fn yaml_lists_become_documents() {
        let list = json!([
            {"kind": "Network", "metadata": {"name": "a"}},
            {"kind": "Network", "metadata": {"name": "b"}},
        ]);
        let text = to_yaml(&list).expect("yaml");
        assert_eq!(
            text,
            "kind: Network\nmetadata:\n  name: a\n---\nkind: Network\nmetadata:\n  name: b\n"
        );
        assert_eq!(to_yaml(&json!([])).expect("yaml"), "[]\n");
        assert_eq!(to_json(&json!({"a": 1})), "{\n  \"a\": 1\n}\n");
    }
}
