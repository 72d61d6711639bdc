//! Formatting API answers for people: tables, `describe` text, and JSON/YAML dumps.
//!
//! Everything here is a pure function from JSON values to text, tolerant of missing fields
//! (printed as `-`), so a newer daemon with more fields never breaks an older CLI.

use std::fmt::Write as _;

use serde_json::Value;

use crate::control::kinds::{self, Kind, Listing};

/// Printed for a missing or empty value.
const NONE: &str = "-";

/// Spaces between table columns.
const COLUMN_GAP: usize = 3;

/// A text table: a header row and data rows, left-aligned columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are printed empty, extra cells are dropped.
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Removes the column with this header, if there is one.
    pub fn drop_column(&mut self, header: &str) {
        if let Some(index) = self.headers.iter().position(|h| h == header) {
            self.headers.remove(index);
            for row in &mut self.rows {
                row.remove(index);
            }
        }
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True without data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: columns padded to their widest cell, no trailing spaces, a newline
    /// after each row.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(&widths).enumerate() {
                line.push_str(cell);
                if index + 1 < row.len() {
                    let pad = width - cell.chars().count() + COLUMN_GAP;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

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

/// A kind's table ([`Listing`]) as text.
pub fn listing_table(listing: &Listing) -> Table {
    let mut table = Table::new(&listing.headers);
    for row in &listing.rows {
        table.push(row.clone());
    }
    table
}

/// The table for resources of one kind (as the API returns them): each is read as its
/// kind's type, and the kind's module says the columns. `wide` adds columns.
///
/// # Errors
/// A message when a resource does not parse as its kind (a daemon of another version).
pub fn resource_table(kind: Kind, resources: &[Value], wide: bool) -> Result<Table, String> {
    Ok(listing_table(&kinds::listing(kind, resources, wide)?))
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

/// The rows of an answer that is a list, or an object holding the list under `key`.
fn rows<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    match value {
        Value::Array(items) => items,
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice),
        _ => &[],
    }
}

/// The computed routing tables: NETWORK DESTINATION NEXTHOP SUBNET ORIGIN; NEXTHOP is
/// `direct` when the destination is on the egress Subnet.
pub fn routing_table(rows_value: &Value) -> Table {
    let mut table = Table::new(&["NETWORK", "DESTINATION", "NEXTHOP", "SUBNET", "ORIGIN"]);
    for row in rows(rows_value, "routes") {
        let next_hop = match first(row, &["/nextHop"]) {
            Some(value) => cell(Some(value)),
            None => "direct".to_owned(),
        };
        table.push(vec![
            at(row, &["/network"]),
            at(row, &["/destination"]),
            next_hop,
            at(row, &["/subnet"]),
            at(row, &["/origin"]),
        ]);
    }
    table
}

/// The neighbour table: SUBNET IP MAC STATE AGE.
pub fn neighbors_table(neighbors: &Value) -> Table {
    let mut table = Table::new(&["SUBNET", "IP", "MAC", "STATE", "AGE"]);
    for row in rows(neighbors, "neighbors") {
        let age = row
            .get("ageSeconds")
            .and_then(Value::as_u64)
            .map_or_else(|| NONE.to_owned(), format_age);
        table.push(vec![
            at(row, &["/subnet"]),
            at(row, &["/ip"]),
            at(row, &["/mac"]),
            at(row, &["/state"]),
            age,
        ]);
    }
    table
}

/// An endpoint of a conntrack key: `A.B.C.D:P`, or for ICMP echo the address alone (the
/// identifier is shown once per side by [`conntrack_side`]).
fn endpoint(address: &str, port: &str, icmp: bool) -> String {
    if icmp {
        address.to_owned()
    } else {
        format!("{address}:{port}")
    }
}

/// One side of a connection: `SRC:P -> DST:P` (ICMP: `SRC -> DST id N`).
fn conntrack_side(key: Option<&Value>, icmp: bool) -> String {
    let Some(key) = key else {
        return NONE.to_owned();
    };
    let text = format!(
        "{} -> {}",
        endpoint(&at(key, &["/src"]), &at(key, &["/srcPort"]), icmp),
        endpoint(&at(key, &["/dst"]), &at(key, &["/dstPort"]), icmp)
    );
    if icmp {
        // The echo identifier is the non-zero one of the two "ports".
        let id = counter(key, &["srcPort"]).max(counter(key, &["dstPort"]));
        format!("{text} id {id}")
    } else {
        text
    }
}

/// The conntrack table: PROTO ORIGINAL REPLY STATE TIMEOUT/AGE ZONE (wide: ASSURED). ZONE is
/// the original side's Network, and `NETWORK->external` (or `->OTHER`) when replies arrive
/// in another zone.
pub fn conntrack_table(entries: &Value, wide: bool) -> Table {
    let mut headers = vec!["PROTO", "ORIGINAL", "REPLY", "STATE", "TIMEOUT/AGE", "ZONE"];
    if wide {
        headers.push("ASSURED");
    }
    let mut table = Table::new(&headers);
    for entry in rows(entries, "entries") {
        let protocol = at(entry, &["/protocol"]);
        let icmp = protocol == "icmp";
        let seconds = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_u64)
                .map_or_else(|| NONE.to_owned(), format_age)
        };
        let zone = at(entry, &["/original/zone"]);
        let reply_zone = at(entry, &["/reply/zone"]);
        let zone = if zone == reply_zone {
            zone
        } else {
            format!("{zone}->{reply_zone}")
        };
        let mut row = vec![
            protocol,
            conntrack_side(entry.get("original"), icmp),
            conntrack_side(entry.get("reply"), icmp),
            at(entry, &["/state"]),
            format!("{}/{}", seconds("timeoutSeconds"), seconds("ageSeconds")),
            zone,
        ];
        if wide {
            row.push(at(entry, &["/assured"]));
        }
        table.push(row);
    }
    table
}

/// The masquerade ports table: NATGATEWAY NETWORK INTERFACE NAT-IP BLOCKS TCP UDP ICMP
/// (rows of `GET /v1/nat`), or INTERFACE NAT-IP BLOCKS TCP UDP ICMP (a NATGateway's
/// `status.portsInUse`).
fn ports_table(rows_value: &[Value], with_gateway: bool) -> Table {
    let mut headers = Vec::new();
    if with_gateway {
        headers.extend(["NATGATEWAY", "NETWORK"]);
    }
    headers.extend(["INTERFACE", "NAT-IP", "BLOCKS", "TCP", "UDP", "ICMP"]);
    let mut table = Table::new(&headers);
    for row in rows_value {
        let mut cells = Vec::new();
        if with_gateway {
            cells.extend([at(row, &["/natGateway"]), at(row, &["/network"])]);
        }
        cells.extend([
            at(row, &["/interface"]),
            at(row, &["/ip"]),
            at(row, &["/blocks"]),
            counter(row, &["tcp"]).to_string(),
            counter(row, &["udp"]).to_string(),
            counter(row, &["icmp"]).to_string(),
        ]);
        table.push(cells);
    }
    table
}

/// The `nat` report: the Uplink, its addresses and their users, masquerade ports in use per
/// interface, conntrack counters, drops by reason (non-zero ones unless `show_zero`).
pub fn nat_report(report: &Value, show_zero: bool) -> String {
    let mut text = String::new();
    match report.get("uplink").filter(|u| !u.is_null()) {
        Some(uplink) => {
            let _ = writeln!(
                text,
                "uplink: {} (interface {}, mac {}, gateway {}): {}",
                at(uplink, &["/name"]),
                at(uplink, &["/interface"]),
                at(uplink, &["/mac"]),
                at(uplink, &["/gateway"]),
                at(uplink, &["/state"])
            );
        }
        None => text.push_str("uplink: none (vswitchctl apply an Uplink first)\n"),
    }
    let mut addresses = Table::new(&["ADDRESS", "USED-BY"]);
    for row in rows(report, "addresses") {
        addresses.push(vec![at(row, &["/ip"]), at(row, &["/usedBy"])]);
    }
    if !addresses.is_empty() {
        text.push('\n');
        text.push_str(&addresses.render());
    }
    text.push_str("\nports in use:\n");
    let ports = ports_table(rows(report, "portsInUse"), true);
    if ports.is_empty() {
        text.push_str("no ports in use\n");
    } else {
        text.push_str(&ports.render());
    }
    let conntrack = report.get("conntrack").unwrap_or(&Value::Null);
    let _ = writeln!(
        text,
        "\nconntrack: {} entries (limit {}), {} created, {} expired, {} evicted, {} refused \
         (table full), {} clashes, {} NAT mappings",
        counter(conntrack, &["entries"]),
        counter(conntrack, &["maxEntries"]),
        counter(conntrack, &["created"]),
        counter(conntrack, &["expired"]),
        counter(conntrack, &["evicted"]),
        counter(conntrack, &["refusedFull"]),
        counter(conntrack, &["clashes"]),
        counter(conntrack, &["natMappings"]),
    );
    text.push_str("\ndrops by reason:\n");
    let drops = counts_table("REASON", report.get("drops"), show_zero);
    if drops.is_empty() {
        text.push_str("no drops\n");
    } else {
        text.push_str(&drops.render());
    }
    text
}

/// A table as a `describe` section: `Key:` then the table indented by two, or `Key:  <none>`.
pub fn table_section(key: &str, table: &Table) -> String {
    if table.is_empty() {
        return format!("{key}:  <none>\n");
    }
    let mut text = format!("{key}:\n");
    for line in table.render().lines() {
        let _ = writeln!(text, "  {line}");
    }
    text
}

/// The `fdb` table: SUBNET MAC PORT VTEP AGE (VTEP: the remote VTEP of a MAC learned on a
/// subnet's tunnel, `-` otherwise).
pub fn fdb_table(fdb: &Value) -> Table {
    let mut table = Table::new(&["SUBNET", "MAC", "PORT", "VTEP", "AGE"]);
    for row in rows(fdb, "entries") {
        let age = row
            .get("ageSeconds")
            .and_then(Value::as_u64)
            .map_or_else(|| NONE.to_owned(), format_age);
        table.push(vec![
            at(row, &["/subnet"]),
            at(row, &["/mac"]),
            at(row, &["/port"]),
            at(row, &["/vtep"]),
            age,
        ]);
    }
    table
}

fn counter(value: &Value, keys: &[&str]) -> u64 {
    keys.iter()
        .find_map(|key| value.get(*key).and_then(Value::as_u64))
        .unwrap_or(0)
}

/// Sum of a `{reason: count}` object.
fn total(counts: Option<&Value>) -> u64 {
    counts
        .and_then(Value::as_object)
        .map_or(0, |map| map.values().filter_map(Value::as_u64).sum())
}

fn counts_table(header: &str, counts: Option<&Value>, show_zero: bool) -> Table {
    let mut table = Table::new(&[header, "COUNT"]);
    if let Some(map) = counts.and_then(Value::as_object) {
        for (key, count) in map {
            if show_zero || count.as_u64() != Some(0) {
                table.push(vec![key.clone(), cell(Some(count))]);
            }
        }
    }
    table
}

/// The `stats` report: the per-port table, then drops by reason, then events. Reasons and
/// events that are zero are left out unless `show_zero`.
pub fn stats_report(stats: &Value, show_zero: bool) -> String {
    let mut text = String::new();
    let mut ports = Table::new(&[
        "PORT", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "DROPS",
    ]);
    for port in rows(stats, "ports") {
        ports.push(vec![
            at(port, &["/name"]),
            counter(port, &["rxPackets"]).to_string(),
            counter(port, &["rxBytes", "rxBytes"]).to_string(),
            counter(port, &["txPackets"]).to_string(),
            counter(port, &["txBytes", "txBytes"]).to_string(),
            total(port.get("drops")).to_string(),
        ]);
    }
    if let Some(workers) = stats.get("workers").and_then(Value::as_u64) {
        // `worker_cpus`: a CPU per worker, or null when they float (absent from daemons
        // that predate pinning).
        let placement = match stats.get("workerCpus") {
            Some(Value::Array(cpus)) => {
                let cpus: Vec<String> = cpus.iter().map(Value::to_string).collect();
                format!(", pinned to CPUs {}", cpus.join(","))
            }
            Some(Value::Null) => ", floating".to_string(),
            _ => String::new(),
        };
        let _ = writeln!(text, "workers: {workers}{placement}\n");
    }
    if ports.is_empty() {
        text.push_str("no ports\n");
    } else {
        text.push_str(&ports.render());
    }
    text.push_str("\ndrops by reason:\n");
    let drops = counts_table("REASON", stats.get("drops"), show_zero);
    if drops.is_empty() {
        text.push_str("no drops\n");
    } else {
        text.push_str(&drops.render());
    }
    text.push_str("\nevents:\n");
    let events = counts_table("EVENT", stats.get("events"), show_zero);
    if events.is_empty() {
        text.push_str("no events\n");
    } else {
        text.push_str(&events.render());
    }
    text
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
    let mut head: Vec<(String, String)> = vec![
        ("Name".into(), at(resource, &["/metadata/name"])),
        ("Kind".into(), at(resource, &["/kind"])),
        ("API version".into(), at(resource, &["/apiVersion"])),
    ];
    if let Some(Value::Object(meta)) = metadata {
        for (key, value) in meta {
            if key != "name" && key != "labels" && !value.is_object() && !value.is_array() {
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

/// What `vswitchctl overlay` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayReport {
    /// The text for standard output.
    Text(String),
    /// A hub without runners: a note for standard error (nothing on standard output).
    NoRunners(String),
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

/// Seconds since a runner was last heard from, as `3s ago` (`-` when unknown).
fn last_seen(row: &Value) -> String {
    row.get("lastSeenSecondsAgo")
        .and_then(Value::as_u64)
        .map_or_else(|| NONE.to_owned(), |s| format!("{} ago", format_age(s)))
}

/// Where a runner's hub is: `ADDRESS:PORT` from `{"address", "apiPort"}`, or the value as is.
fn hub_endpoint(hub: Option<&Value>) -> String {
    match hub {
        Some(Value::Object(map)) => {
            let address = cell(map.get("address"));
            match map.get("apiPort").filter(|port| !port.is_null()) {
                Some(port) => format!("{address}:{}", cell(Some(port))),
                None => address,
            }
        }
        other => cell(other),
    }
}

/// The hub's runners: ID NAME ADDRESS VNI SUBNET LAST-SEEN STATE.
pub fn overlay_runners_table(view: &Value) -> Table {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "ADDRESS",
        "VNI",
        "SUBNET",
        "LAST-SEEN",
        "STATE",
    ]);
    for row in rows(view, "runners") {
        table.push(vec![
            at(row, &["/id"]),
            at(row, &["/name"]),
            at(row, &["/address"]),
            at(row, &["/vni"]),
            at(row, &["/subnet"]),
            last_seen(row),
            at(row, &["/state"]),
        ]);
    }
    table
}

/// The `overlay` report of `GET /v1/overlay`: on a hub one row per runner; on a runner its
/// ID, subnet, VNI, gateway, hub, state and message; on a mesh node its address, peers and
/// state.
pub fn overlay_report(view: &Value) -> OverlayReport {
    let role = view.get("role").and_then(Value::as_str).unwrap_or_default();
    match role {
        "hub" => {
            let table = overlay_runners_table(view);
            if table.is_empty() {
                OverlayReport::NoRunners("no runners have registered with this hub yet".to_owned())
            } else {
                OverlayReport::Text(table.render())
            }
        }
        "runner" => OverlayReport::Text(key_values(&[
            ("ID", at(view, &["/id"])),
            ("SUBNET", at(view, &["/subnet"])),
            ("VNI", at(view, &["/vni"])),
            ("GATEWAY", at(view, &["/gateway"])),
            ("HUB", hub_endpoint(view.get("hub"))),
            ("STATE", at(view, &["/state"])),
            ("MESSAGE", at(view, &["/message"])),
        ])),
        "mesh" => OverlayReport::Text(key_values(&[
            ("ROLE", "mesh".to_owned()),
            ("NAME", at(view, &["/name"])),
            ("LOCAL-ADDRESS", at(view, &["/localAddress"])),
            ("PEERS", at(view, &["/peers"])),
            ("STATE", at(view, &["/state"])),
            ("MESSAGE", at(view, &["/message"])),
        ])),
        // A role this CLI does not know (a newer daemon): every top-level field.
        _ => {
            let pairs: Vec<(String, String)> = view
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, value)| (key.to_ascii_uppercase(), cell(Some(value))))
                .collect();
            let borrowed: Vec<(&str, String)> = pairs
                .iter()
                .map(|(key, value)| (key.as_str(), value.clone()))
                .collect();
            OverlayReport::Text(key_values(&borrowed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    /// The typed table of fixtures that leave out `apiVersion`.
    fn resource_table(items: &[Value], wide: bool) -> Table {
        let items: Vec<Value> = items
            .iter()
            .map(|item| {
                let mut item = item.clone();
                item["apiVersion"] = json!("vswitch/v1alpha1");
                item
            })
            .collect();
        let kind = Kind::parse(items[0]["kind"].as_str().unwrap()).unwrap();
        super::resource_table(kind, &items, wide).unwrap()
    }

    fn interface(name: &str, state: Option<&str>) -> Value {
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

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut table = Table::new(&["A", "LONGER"]);
        table.push(vec!["wide-cell".into(), "x".into()]);
        table.push(vec!["b".into()]);
        assert_eq!(table.render(), "A           LONGER\nwide-cell   x\nb\n");
    }

    #[test]
    fn interface_table() {
        let table = resource_table(
            &[interface("c1", Some("up")), interface("c2-long", None)],
            false,
        );
        assert_eq!(
            table.render(),
            "\
NAME      NETNS     KIND   IFNAME   MAC                 IPS             STATE
c1        c1        tap    eth0     02:00:ac:1e:00:02   172.30.0.2/16   up
c2-long   c2-long   tap    eth0     -                   -               pending
"
        );
        let wide = resource_table(&[interface("c1", Some("up"))], true);
        assert!(
            wide.render()
                .starts_with("NAME   NETNS   KIND   IFNAME   MAC   "),
            "{}",
            wide.render()
        );
        assert!(
            wide.render().contains("default   -     app=web   -\n"),
            "{}",
            wide.render()
        );
    }

    #[test]
    fn interface_table_prefers_status_over_spec() {
        let mut r = interface("c1", Some("up"));
        r["spec"]["ips"] = json!(["10.0.0.9/24"]);
        r["status"]["ips"] = json!(["10.0.0.9/24", "10.0.0.10/24"]);
        let text = resource_table(&[r], false).render();
        assert!(text.contains(" 10.0.0.9/24,10.0.0.10/24 "), "{text}");
    }

    #[test]
    fn subnet_and_network_tables() {
        let subnets = vec![
            json!({"kind": "Subnet", "metadata": {"name": "default"},
                   "spec": {"network": "default", "cidr": "172.30.0.0/16", "gateway": "172.30.0.1", "mtu": 1500}}),
            json!({"kind": "Subnet", "metadata": {"name": "b"},
                   "spec": {"network": "default", "cidr": "10.9.0.0/24", "gateway": "10.9.0.1", "mtu": 9000,
                            "rangeStart": "10.9.0.10", "rangeEnd": "10.9.0.20", "reserved": ["10.9.0.15"]}}),
        ];
        assert_eq!(
            resource_table(&subnets, false).render(),
            "\
NAME      NETWORK   CIDR            GATEWAY      MTU
default   default   172.30.0.0/16   172.30.0.1   1500
b         default   10.9.0.0/24     10.9.0.1     9000
"
        );
        let wide = resource_table(&subnets, true).render();
        assert!(wide.contains("10.9.0.10..10.9.0.20   10.9.0.15"), "{wide}");
        let networks = vec![
            json!({"kind": "Network", "metadata": {"name": "default"}, "spec": {},
                   "status": {"subnets": ["default", "b"]}}),
            json!({"kind": "Network", "metadata": {"name": "empty", "labels": {"a": "1", "b": "2"}}}),
        ];
        assert_eq!(
            resource_table(&networks, false).render(),
            "\
NAME      SUBNETS     PEERINGS
default   default,b   -
empty     -           -
"
        );
        let wide = resource_table(&networks, true);
        assert!(wide.render().contains("   a=1,b=2\n"), "{}", wide.render());
    }

    fn peered_network() -> Value {
        json!({"kind": "Network", "metadata": {"name": "blue"},
               "spec": {"peerings": [{"name": "to-red", "network": "red"},
                                     {"name": "to-green", "network": "green"}]},
               "status": {"subnets": ["web", "db"],
                          "peerings": [{"name": "to-red", "network": "red", "state": "Ready"},
                                       {"name": "to-green", "network": "green", "state": "Pending",
                                        "message": "Network \"green\" does not exist yet"}]}})
    }

    #[test]
    fn network_table_shows_peerings_with_state() {
        assert_eq!(
            resource_table(&[peered_network()], false).render(),
            "\
NAME   SUBNETS   PEERINGS
blue   web,db    red:Ready,green:Pending
"
        );
        // Without a status (an older daemon), the spec's peer Networks.
        let mut bare = peered_network();
        bare.as_object_mut().unwrap().remove("status");
        let text = resource_table(&[bare], false).render();
        assert!(text.contains("   red,green\n"), "{text}");
    }

    #[test]
    fn route_table() {
        let routes = vec![
            json!({"kind": "Route", "metadata": {"name": "lab", "labels": {"a": "b"}},
                   "spec": {"network": "blue", "destination": "192.168.50.0/24", "nextHop": "10.1.1.254"},
                   "status": {"subnet": "edge", "state": "Ready"}}),
            json!({"kind": "Route", "metadata": {"name": "old"},
                   "spec": {"network": "blue", "destination": "10.2.0.0/24", "nextHop": "10.1.0.9"},
                   "status": {"subnet": "web", "state": "Shadowed", "message": "peering wins"}}),
        ];
        assert_eq!(
            resource_table(&routes, false).render(),
            "\
NAME   NETWORK   DESTINATION       NEXTHOP      STATE
lab    blue      192.168.50.0/24   10.1.1.254   Ready
old    blue      10.2.0.0/24       10.1.0.9     Shadowed
"
        );
        let wide = resource_table(&routes, true).render();
        assert!(wide.contains("   SUBNET   LABELS   MESSAGE\n"), "{wide}");
        assert!(
            wide.contains("   Shadowed   web      -        peering wins\n"),
            "{wide}"
        );
    }

    #[test]
    fn routing_and_neighbor_tables() {
        let rows = json!([
            {"network": "blue", "destination": "10.1.0.0/24", "nextHop": null, "subnet": "web", "origin": "connected"},
            {"network": "blue", "destination": "10.2.0.0/24", "subnet": "db", "origin": "peering:red"},
            {"network": "blue", "destination": "0.0.0.0/0", "nextHop": "10.1.0.254", "subnet": "web", "origin": "static:default"},
        ]);
        assert_eq!(
            routing_table(&rows).render(),
            "\
NETWORK   DESTINATION   NEXTHOP      SUBNET   ORIGIN
blue      10.1.0.0/24   direct       web      connected
blue      10.2.0.0/24   direct       db       peering:red
blue      0.0.0.0/0     10.1.0.254   web      static:default
"
        );
        let neighbors = json!([
            {"subnet": "web", "ip": "10.1.0.5", "mac": "02:00:00:00:00:05", "state": "reachable", "ageSeconds": 12},
            {"subnet": "web", "ip": "10.1.0.254", "mac": "", "state": "incomplete", "ageSeconds": 0},
        ]);
        assert_eq!(
            neighbors_table(&neighbors).render(),
            "\
SUBNET   IP           MAC                 STATE        AGE
web      10.1.0.5     02:00:00:00:00:05   reachable    12s
web      10.1.0.254   -                   incomplete   0s
"
        );
        assert!(neighbors_table(&json!([])).is_empty());
        assert_eq!(
            table_section("Routes", &routing_table(&json!([]))),
            "Routes:  <none>\n"
        );
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
    fn nat_resource_tables() {
        let uplinks = vec![json!({"kind": "Uplink", "metadata": {"name": "wan"},
            "spec": {"interface": "eth1", "addresses": ["198.51.100.10/24", "198.51.100.11"],
                     "gateway": "198.51.100.1"},
            "status": {"mac": "02:00:00:00:00:09", "mtu": 1500, "state": "up"}})];
        assert_eq!(
            resource_table(&uplinks, false).render(),
            "\
NAME   INTERFACE   ADDRESSES                        GATEWAY        MAC                 STATE
wan    eth1        198.51.100.10/24,198.51.100.11   198.51.100.1   02:00:00:00:00:09   up
"
        );
        let wide = resource_table(&uplinks, true).render();
        assert!(wide.contains("   MTU    LABELS   MESSAGE\n"), "{wide}");
        assert!(wide.contains("   up      1500   -        -\n"), "{wide}");
        let gateways = vec![json!({"kind": "NATGateway", "metadata": {"name": "gw"},
            "spec": {"network": "blue", "ips": ["198.51.100.10"], "portsPerNetworkInterface": 2048},
            "status": {"ips": ["198.51.100.10"], "portsInUse": [
                {"interface": "c1", "ip": "198.51.100.10", "blocks": ["1024-3071"], "tcp": 2, "udp": 1, "icmp": 0},
                {"interface": "c2", "ip": "198.51.100.10", "blocks": ["3072-5119"], "tcp": 0, "udp": 0, "icmp": 4}]}})];
        assert_eq!(
            resource_table(&gateways, false).render(),
            "\
NAME   NETWORK   IPS             PORTS/INTERFACE   PORTS-IN-USE
gw     blue      198.51.100.10   2048              7
"
        );
        let wide = resource_table(&gateways, true).render();
        assert!(
            wide.contains("   7              c1,c2        -\n"),
            "{wide}"
        );
        let forwards = vec![json!({"kind": "PortForward", "metadata": {"name": "web"},
            "spec": {"ip": "198.51.100.10", "protocol": "tcp", "port": 8080,
                     "target": {"interface": "c1", "port": 80}},
            "status": {"state": "Pending", "destination": "10.1.0.5:80",
                       "message": "Uplink \"wan\" is lost"}})];
        assert_eq!(
            resource_table(&forwards, false).render(),
            "\
NAME   IP              PROTOCOL   PORT   TARGET   STATE
web    198.51.100.10   tcp        8080   c1:80    Pending
"
        );
        let wide = resource_table(&forwards, true).render();
        assert!(
            wide.contains("Pending   10.1.0.5:80   -        Uplink \"wan\" is lost\n"),
            "{wide}"
        );
        let vips = vec![
            json!({"kind": "VirtualIP", "metadata": {"name": "v"}, "spec": {"type": "Public"},
                   "status": {"ip": "198.51.100.11", "interface": "c2"}}),
            json!({"kind": "VirtualIP", "metadata": {"name": "w"},
                   "spec": {"type": "Public", "ip": "198.51.100.12"}}),
        ];
        assert_eq!(
            resource_table(&vips, false).render(),
            "\
NAME   TYPE     IP              INTERFACE
v      Public   198.51.100.11   c2
w      Public   198.51.100.12   -
"
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
    fn conntrack_rows() {
        let entries = json!([
            {"protocol": "tcp", "state": "ESTABLISHED", "assured": true, "ageSeconds": 12, "timeoutSeconds": 7428,
             "original": {"zone": "blue", "src": "10.1.0.5", "srcPort": 40000, "dst": "203.0.113.9", "dstPort": 443},
             "reply": {"zone": "external", "src": "203.0.113.9", "srcPort": 443, "dst": "198.51.100.10", "dstPort": 40000}},
            {"protocol": "icmp", "state": "REPLIED", "assured": true, "ageSeconds": 3, "timeoutSeconds": 57,
             "original": {"zone": "red", "src": "10.2.0.5", "srcPort": 7, "dst": "10.2.0.9", "dstPort": 0},
             "reply": {"zone": "red", "src": "10.2.0.9", "srcPort": 0, "dst": "10.2.0.5", "dstPort": 7}},
        ]);
        assert_eq!(
            conntrack_table(&entries, false).render(),
            "\
PROTO   ORIGINAL                            REPLY                                    STATE         TIMEOUT/AGE   ZONE
tcp     10.1.0.5:40000 -> 203.0.113.9:443   203.0.113.9:443 -> 198.51.100.10:40000   ESTABLISHED   2h3m/12s      blue->external
icmp    10.2.0.5 -> 10.2.0.9 id 7           10.2.0.9 -> 10.2.0.5 id 7                REPLIED       57s/3s        red
"
        );
        let wide = conntrack_table(&entries, true).render();
        assert!(
            wide.lines()
                .next()
                .unwrap()
                .ends_with("ZONE             ASSURED"),
            "{wide}"
        );
        assert!(conntrack_table(&json!([]), false).is_empty());
    }

    #[test]
    fn nat_report_sections() {
        let report = json!({
            "uplink": {"name": "wan", "interface": "eth1", "mac": "02:00:00:00:00:09",
                       "gateway": "198.51.100.1", "state": "up"},
            "addresses": [{"ip": "198.51.100.10", "usedBy": ["NATGateway/gw", "PortForward/web"]},
                          {"ip": "198.51.100.11", "usedBy": []}],
            "portsInUse": [{"natGateway": "gw", "network": "blue", "interface": "c1", "ip": "198.51.100.10",
                            "blocks": ["1024-3071"], "tcp": 2, "udp": 0, "icmp": 1}],
            "conntrack": {"entries": 3, "maxEntries": 1000000, "created": 10, "expired": 7,
                          "evicted": 0, "refusedFull": 0, "clashes": 0, "natMappings": 3},
            "drops": {"nat.unsolicited": 4, "nat.pool_exhausted": 0},
        });
        assert_eq!(
            nat_report(&report, false),
            "\
uplink: wan (interface eth1, mac 02:00:00:00:00:09, gateway 198.51.100.1): up

ADDRESS         USED-BY
198.51.100.10   NATGateway/gw,PortForward/web
198.51.100.11   -

ports in use:
NATGATEWAY   NETWORK   INTERFACE   NAT-IP          BLOCKS      TCP   UDP   ICMP
gw           blue      c1          198.51.100.10   1024-3071   2     0     1

conntrack: 3 entries (limit 1000000), 10 created, 7 expired, 0 evicted, 0 refused (table full), 0 clashes, 3 NAT mappings

drops by reason:
REASON            COUNT
nat.unsolicited   4
"
        );
        assert!(nat_report(&report, true).contains("\nnat.pool_exhausted   0\n"));
        let empty = nat_report(
            &json!({"uplink": null, "addresses": [], "portsInUse": []}),
            false,
        );
        assert!(
            empty.starts_with("uplink: none (vswitchctl apply an Uplink first)\n\nports in use:\nno ports in use\n"),
            "{empty}"
        );
        assert!(empty.ends_with("drops by reason:\nno drops\n"), "{empty}");
    }

    #[test]
    fn overlay_table() {
        let overlay = json!({"kind": "Overlay", "metadata": {"name": "hub"},
            "spec": {"role": "hub", "localAddress": "192.168.50.1", "token": "<redacted>"},
            "status": {"state": "up"}});
        let text = resource_table(std::slice::from_ref(&overlay), false).render();
        assert_eq!(
            text,
            "\
NAME   ROLE   LOCAL-ADDRESS   PORT   VNI-BASE   STATE
hub    hub    192.168.50.1    4789   100        up
"
        );
        let wide = resource_table(&[overlay], true).render();
        assert!(
            wide.contains("   1450   -     -        -        -\n"),
            "{wide}"
        );
    }

    #[test]
    fn a_resource_the_cli_cannot_read_is_an_error() {
        let odd = json!({"apiVersion": "vswitch/v1alpha1", "kind": "Overlay",
                         "metadata": {"name": "o"}, "spec": {"role": "bridge"}});
        let err = super::resource_table(Kind::Overlay, &[odd], false).unwrap_err();
        assert!(
            err.starts_with("the daemon's Overlay \"o\" does not parse: "),
            "{err}"
        );
    }

    #[test]
    fn ages() {
        assert_eq!(format_age(0), "0s");
        assert_eq!(format_age(59), "59s");
        assert_eq!(format_age(250), "4m10s");
        assert_eq!(format_age(7500), "2h5m");
        assert_eq!(format_age(3 * 86400 + 4 * 3600), "3d4h");
    }

    #[test]
    fn fdb_table_from_rows() {
        let fdb = json!([
            {"subnet": "default", "mac": "02:00:ac:1e:00:02", "port": "c1", "ageSeconds": 3},
            {"subnet": "default", "mac": "02:00:ac:1e:00:03", "port": "vxlan/default", "ageSeconds": 125, "vtep": "192.168.50.2"},
        ]);
        assert_eq!(
            fdb_table(&fdb).render(),
            "\
SUBNET    MAC                 PORT            VTEP           AGE
default   02:00:ac:1e:00:02   c1              -              3s
default   02:00:ac:1e:00:03   vxlan/default   192.168.50.2   2m5s
"
        );
        assert_eq!(fdb_table(&json!({"entries": fdb})).len(), 2);
    }

    #[test]
    fn stats_report_sections() {
        let stats = json!({
            "workers": 2,
            "workerCpus": [1, 0],
            "ports": [
                {"name": "c1", "rxPackets": 10, "rxBytes": 980, "txPackets": 8, "txBytes": 784,
                 "drops": {"port_security.src_mac": 2, "parse.runt": 1}},
            ],
            "drops": {"port_security.src_mac": 2, "parse.runt": 1, "tx.error": 0},
            "events": {"l2.mac_aged": 0},
        });
        assert_eq!(
            stats_report(&stats, false),
            "\
workers: 2, pinned to CPUs 1,0

PORT   RX-PKTS   RX-BYTES   TX-PKTS   TX-BYTES   DROPS
c1     10        980        8         784        3

drops by reason:
REASON                  COUNT
parse.runt              1
port_security.src_mac   2

events:
no events
"
        );
        let all = stats_report(&stats, true);
        assert!(all.contains("\ntx.error                0\n"), "{all}");
        assert!(all.contains("\nl2.mac_aged   0\n"), "{all}");
        let floating = stats_report(&json!({"workers": 1, "workerCpus": null}), false);
        assert!(floating.starts_with("workers: 1, floating\n"), "{floating}");
        let older = stats_report(&json!({"workers": 1}), false);
        assert!(older.starts_with("workers: 1\n"), "{older}");
        let empty = stats_report(&json!({}), false);
        assert!(
            empty.contains("no ports\n") && empty.contains("no drops\n"),
            "{empty}"
        );
    }

    #[test]
    fn describe_shows_every_field() {
        let mut r = interface("c1", Some("up"));
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
  state:    up
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

    #[test]
    fn overlay_hub_table() {
        let view = json!({
            "role": "hub", "name": "hub", "localAddress": "192.168.50.1",
            "runners": [
                {"id": 1, "name": "runner-a", "address": "192.168.50.2", "vni": 101,
                 "subnet": "10.1.0.0/16", "lastSeenSecondsAgo": 3, "state": "online"},
                {"id": 12, "name": "b", "address": "192.168.50.3", "vni": 112,
                 "subnet": "10.12.0.0/16", "lastSeenSecondsAgo": 250, "state": "Offline"},
                {"id": 13, "name": "c", "address": "192.168.50.4", "vni": 113,
                 "subnet": "10.13.0.0/16", "lastSeenSecondsAgo": null, "state": "Offline"},
            ],
        });
        assert_eq!(
            overlay_report(&view),
            OverlayReport::Text(
                "\
ID   NAME       ADDRESS        VNI   SUBNET         LAST-SEEN   STATE
1    runner-a   192.168.50.2   101   10.1.0.0/16    3s ago      online
12   b          192.168.50.3   112   10.12.0.0/16   4m10s ago   Offline
13   c          192.168.50.4   113   10.13.0.0/16   -           Offline
"
                .to_owned()
            )
        );
        let empty = json!({"role": "hub", "name": "hub1", "runners": []});
        assert_eq!(
            overlay_report(&empty),
            OverlayReport::NoRunners("no runners have registered with this hub yet".into())
        );
    }

    #[test]
    fn overlay_runner_lines() {
        let view = json!({
            "role": "runner", "name": "runner-a", "id": 3, "vni": 103,
            "subnet": "10.3.0.0/16", "gateway": "10.3.0.1",
            "hub": {"address": "192.168.50.1", "apiPort": 4799},
            "state": "hubUnreachable",
            "message": "cannot reach the hub at 192.168.50.1:4799: Connection refused; retrying in 4s",
        });
        assert_eq!(
            overlay_report(&view),
            OverlayReport::Text(
                "\
ID        3
SUBNET    10.3.0.0/16
VNI       103
GATEWAY   10.3.0.1
HUB       192.168.50.1:4799
STATE     hubUnreachable
MESSAGE   cannot reach the hub at 192.168.50.1:4799: Connection refused; retrying in 4s
"
                .to_owned()
            )
        );
        // Not registered yet; the hub given as a plain string.
        let fresh = json!({"role": "runner", "name": "r", "id": null, "hub": "192.168.50.1",
                           "state": "registering"});
        let OverlayReport::Text(text) = overlay_report(&fresh) else {
            panic!("a runner prints lines");
        };
        assert!(text.starts_with("ID        -\n"), "{text}");
        assert!(text.contains("\nHUB       192.168.50.1\n"), "{text}");
        assert!(text.ends_with("\nMESSAGE   -\n"), "{text}");
    }

    #[test]
    fn overlay_mesh_and_unknown_roles() {
        let view = json!({"role": "mesh", "name": "n1", "localAddress": "192.168.50.1",
                          "peers": ["192.168.50.2", "192.168.50.3"], "state": "up",
                          "message": null});
        assert_eq!(
            overlay_report(&view),
            OverlayReport::Text(
                "\
ROLE            mesh
NAME            n1
LOCAL-ADDRESS   192.168.50.1
PEERS           192.168.50.2,192.168.50.3
STATE           up
MESSAGE         -
"
                .to_owned()
            )
        );
        let other = json!({"role": "relay", "name": "x"});
        assert_eq!(
            overlay_report(&other),
            OverlayReport::Text("NAME   x\nROLE   relay\n".to_owned())
        );
    }
}
