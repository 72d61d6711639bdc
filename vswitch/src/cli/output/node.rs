//! The node's views: learned MACs, neighbours, counters, routing tables, conntrack, NAT and
//! the overlay.

use std::fmt::Write as _;

use serde_json::Value;

use super::describe::{at, first};
use super::{NONE, Table, cell, format_age, key_values};

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

/// What `vswitchctl overlay` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayReport {
    /// The text for standard output.
    Text(String),
    /// A hub without runners: a note for standard error (nothing on standard output).
    NoRunners(String),
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
    use crate::cli::output::table_section;
    use serde_json::json;

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
