//! The node's views: learned MACs, neighbours, counters, routing tables, conntrack, NAT and
//! the overlay. Each answer is read into the type the daemon serialises it from
//! ([`parse_answer`]), and the text is built from its fields.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{NONE, Table, describe_section, format_age, key_values};
use crate::api::{HubView, OverlayView};
use crate::cli::error::CliError;
use crate::control::resource::{LoadBalancerView, RunnerToRunner};
use crate::control::{ConntrackKey, ConntrackRow, NatPortsInUse, NatReport, RoutingTableRow};
use crate::runtime::{FdbRow, NeighborRow, PortStats, StatsReport};

/// An API answer as the daemon's type `T`; `endpoint` (`GET /v1/fdb`) names it in the error.
/// Fields `T` does not have are ignored (what a newer daemon adds); a missing field or an
/// unknown value (a state, an overlay role) is an error, not a silent `-`.
///
/// # Errors
/// [`CliError::BadResponse`] when the answer does not parse as `T` (a daemon of another
/// version).
pub fn parse_answer<T: DeserializeOwned>(endpoint: &str, answer: Value) -> Result<T, CliError> {
    serde_json::from_value(answer)
        .map_err(|error| CliError::BadResponse(format!("{endpoint} does not parse: {error}")))
}

/// A value as text, `-` when that is empty.
fn shown(value: impl Display) -> String {
    let text = value.to_string();
    if text.is_empty() {
        NONE.to_owned()
    } else {
        text
    }
}

/// An optional value as text, `-` when absent (or empty).
fn optional<T: Display>(value: Option<&T>) -> String {
    value.map_or_else(|| NONE.to_owned(), shown)
}

/// Items joined with `,`, `-` when there are none.
fn list<T: Display>(items: &[T]) -> String {
    if items.is_empty() {
        return NONE.to_owned();
    }
    items.iter().map(shown).collect::<Vec<_>>().join(",")
}

/// The computed routing tables (`GET /v1/routing-table`): NETWORK DESTINATION NEXTHOP
/// SUBNET ORIGIN; NEXTHOP is `direct` when the destination is on the egress Subnet.
pub fn routing_table(rows: &[RoutingTableRow]) -> Table {
    let mut table = Table::new(&["NETWORK", "DESTINATION", "NEXTHOP", "SUBNET", "ORIGIN"]);
    for row in rows {
        table.push(vec![
            shown(&row.network),
            shown(row.destination),
            row.next_hop.map_or_else(|| "direct".to_owned(), shown),
            shown(&row.subnet),
            shown(&row.origin),
        ]);
    }
    table
}

/// The neighbour table (`GET /v1/neighbors`): SUBNET IP MAC STATE AGE.
pub fn neighbors_table(rows: &[NeighborRow]) -> Table {
    let mut table = Table::new(&["SUBNET", "IP", "MAC", "STATE", "AGE"]);
    for row in rows {
        table.push(vec![
            shown(&row.subnet),
            shown(&row.ip),
            shown(&row.mac),
            shown(&row.state),
            format_age(row.age_seconds),
        ]);
    }
    table
}

/// The `fdb` table (`GET /v1/fdb`): SUBNET MAC PORT VTEP AGE (VTEP: the remote VTEP of a
/// MAC learned on a subnet's tunnel, `-` otherwise).
pub fn fdb_table(rows: &[FdbRow]) -> Table {
    let mut table = Table::new(&["SUBNET", "MAC", "PORT", "VTEP", "AGE"]);
    for row in rows {
        table.push(vec![
            shown(&row.subnet),
            shown(&row.mac),
            shown(&row.port),
            optional(row.vtep.as_ref()),
            format_age(row.age_seconds),
        ]);
    }
    table
}

/// An endpoint of a conntrack key: `A.B.C.D:P`, or for ICMP echo the address alone (the
/// identifier is shown once per side by [`conntrack_side`]).
fn endpoint(address: &str, port: u16, icmp: bool) -> String {
    if icmp {
        shown(address)
    } else {
        format!("{}:{port}", shown(address))
    }
}

/// One side of a connection: `SRC:P -> DST:P` (ICMP: `SRC -> DST id N`).
fn conntrack_side(key: &ConntrackKey, icmp: bool) -> String {
    let text = format!(
        "{} -> {}",
        endpoint(&key.src, key.src_port, icmp),
        endpoint(&key.dst, key.dst_port, icmp)
    );
    if icmp {
        // The echo identifier is the non-zero one of the two "ports".
        format!("{text} id {}", key.src_port.max(key.dst_port))
    } else {
        text
    }
}

/// The conntrack table (`GET /v1/conntrack`): PROTO ORIGINAL REPLY STATE TIMEOUT/AGE ZONE
/// (wide: ASSURED). ZONE is the original side's Network, and `NETWORK->external` (or
/// `->OTHER`) when replies arrive in another zone.
pub fn conntrack_table(entries: &[ConntrackRow], wide: bool) -> Table {
    let mut headers = vec!["PROTO", "ORIGINAL", "REPLY", "STATE", "TIMEOUT/AGE", "ZONE"];
    if wide {
        headers.push("ASSURED");
    }
    let mut table = Table::new(&headers);
    for entry in entries {
        let icmp = entry.protocol == "icmp";
        let zone = shown(&entry.original.zone);
        let reply_zone = shown(&entry.reply.zone);
        let zone = if zone == reply_zone {
            zone
        } else {
            format!("{zone}->{reply_zone}")
        };
        let mut row = vec![
            shown(&entry.protocol),
            conntrack_side(&entry.original, icmp),
            conntrack_side(&entry.reply, icmp),
            shown(&entry.state),
            format!(
                "{}/{}",
                format_age(entry.timeout_seconds),
                format_age(entry.age_seconds)
            ),
            zone,
        ];
        if wide {
            row.push(entry.assured.to_string());
        }
        table.push(row);
    }
    table
}

/// The masquerade ports in use of `GET /v1/nat`: NATGATEWAY NETWORK INTERFACE NAT-IP BLOCKS
/// TCP UDP ICMP.
fn ports_table(rows: &[NatPortsInUse]) -> Table {
    let mut table = Table::new(&[
        "NATGATEWAY",
        "NETWORK",
        "INTERFACE",
        "NAT-IP",
        "BLOCKS",
        "TCP",
        "UDP",
        "ICMP",
    ]);
    for row in rows {
        table.push(vec![
            shown(&row.nat_gateway),
            shown(&row.network),
            shown(&row.interface),
            shown(row.ip),
            list(&row.blocks),
            row.tcp.to_string(),
            row.udp.to_string(),
            row.icmp.to_string(),
        ]);
    }
    table
}

/// `vswitchctl lb NAME`: a line about the LoadBalancer, then one row per backend.
pub fn load_balancer_view(view: &LoadBalancerView) -> String {
    let addresses: Vec<String> = view.addresses.iter().map(ToString::to_string).collect();
    let mut text = format!(
        "loadbalancer {} (network {}, {} {}), Maglev table of {} slots{}\n",
        view.name,
        view.network,
        if addresses.len() > 1 {
            "addresses"
        } else {
            "address"
        },
        if addresses.is_empty() {
            "-".to_owned()
        } else {
            addresses.join(", ")
        },
        view.table_size,
        if addresses.len() > 1 {
            " per family"
        } else {
            ""
        }
    );
    if view.backends.is_empty() {
        text.push_str(
            "no backends: its selector picks no attached NetworkInterface of the Network\n",
        );
        return text;
    }
    let mut table = Table::new(&["INTERFACE", "IP", "STATE", "SLOTS", "SHARE", "CONNECTIONS"]);
    for backend in &view.backends {
        let share = f64::from(backend.slots) * 100.0 / f64::from(view.table_size.max(1));
        table.push(vec![
            backend.interface.clone(),
            shown(backend.ip),
            shown(format!("{:?}", backend.state)),
            shown(backend.slots),
            format!("{share:.1}%"),
            shown(backend.connections),
        ]);
    }
    text.push_str(&table.render());
    text
}

/// The `nat` report (`GET /v1/nat`): the Uplink, its addresses and their users, masquerade
/// ports in use per interface, conntrack counters, drops by reason (non-zero ones unless
/// `show_zero`).
pub fn nat_report(report: &NatReport, show_zero: bool) -> String {
    let mut text = String::new();
    match &report.uplink {
        Some(uplink) => {
            let _ = writeln!(
                text,
                "uplink: {} (interface {}, mac {}, gateway {}): {}",
                shown(&uplink.name),
                shown(&uplink.interface),
                optional(uplink.mac.as_ref()),
                shown(uplink.gateway),
                shown(&uplink.state)
            );
        }
        None => text.push_str("uplink: none (vswitchctl apply an Uplink first)\n"),
    }
    let mut addresses = Table::new(&["ADDRESS", "USED-BY"]);
    for row in &report.addresses {
        addresses.push(vec![shown(row.ip), list(&row.used_by)]);
    }
    if !addresses.is_empty() {
        text.push('\n');
        text.push_str(&addresses.render());
    }
    text.push_str("\nports in use:\n");
    let ports = ports_table(&report.ports_in_use);
    if ports.is_empty() {
        text.push_str("no ports in use\n");
    } else {
        text.push_str(&ports.render());
    }
    let conntrack = &report.conntrack;
    let _ = writeln!(
        text,
        "\nconntrack: {} entries (limit {}), {} created, {} expired, {} evicted, {} refused \
         (table full), {} clashes, {} NAT mappings",
        conntrack.entries,
        conntrack.max_entries,
        conntrack.created,
        conntrack.expired,
        conntrack.evicted,
        conntrack.refused_full,
        conntrack.clashes,
        conntrack.nat_mappings,
    );
    text.push_str("\ndrops by reason:\n");
    let drops = counts_table("REASON", &report.drops, show_zero);
    if drops.is_empty() {
        text.push_str("no drops\n");
    } else {
        text.push_str(&drops.render());
    }
    text
}

/// `{reason: count}` as a table, leaving out zeros unless `show_zero`.
fn counts_table(header: &str, counts: &BTreeMap<String, u64>, show_zero: bool) -> Table {
    let mut table = Table::new(&[header, "COUNT"]);
    for (key, count) in counts {
        if show_zero || *count != 0 {
            table.push(vec![key.clone(), count.to_string()]);
        }
    }
    table
}

/// The `stats` report (`GET /v1/stats`): the workers, the per-port table, then drops by
/// reason, then events. Reasons and events that are zero are left out unless `show_zero`.
pub fn stats_report(stats: &StatsReport, show_zero: bool) -> String {
    let mut text = String::new();
    let mut ports = Table::new(&[
        "PORT", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "DROPS",
    ]);
    for port in &stats.ports {
        ports.push(vec![
            shown(&port.name),
            port.rx_packets.to_string(),
            port.rx_bytes.to_string(),
            port.tx_packets.to_string(),
            port.tx_bytes.to_string(),
            port.drops.values().sum::<u64>().to_string(),
        ]);
    }
    // A CPU per worker, or none when they float.
    let placement = match &stats.worker_cpus {
        Some(cpus) => {
            let cpus: Vec<String> = cpus.iter().map(ToString::to_string).collect();
            format!(", pinned to CPUs {}", cpus.join(","))
        }
        None => ", floating".to_owned(),
    };
    let _ = writeln!(text, "workers: {}{placement}\n", stats.workers);
    if ports.is_empty() {
        text.push_str("no ports\n");
    } else {
        text.push_str(&ports.render());
    }
    text.push_str("\ndrops by reason:\n");
    let drops = counts_table("REASON", &stats.drops, show_zero);
    if drops.is_empty() {
        text.push_str("no drops\n");
    } else {
        text.push_str(&drops.render());
    }
    text.push_str("\nevents:\n");
    let events = counts_table("EVENT", &stats.events, show_zero);
    if events.is_empty() {
        text.push_str("no events\n");
    } else {
        text.push_str(&events.render());
    }
    text.push_str("\ncaptures:\n");
    if stats.captures.is_empty() {
        text.push_str("no captures running\n");
    } else {
        let mut captures =
            Table::new(&["ID", "PORT", "DIRECTION", "FILTER", "CAPTURED", "DROPPED"]);
        for capture in &stats.captures {
            captures.push(vec![
                capture.id.to_string(),
                shown(&capture.port),
                capture.direction.as_str().to_owned(),
                shown(&capture.filter),
                capture.captured.to_string(),
                capture.dropped.to_string(),
            ]);
        }
        text.push_str(&captures.render());
    }
    text.push_str("\ndatapath (all workers, since start):\n");
    text.push_str(&datapath_section(&stats.datapath, show_zero));
    text
}

/// What the workers spent, for `vswitchctl stats`: time, batches, wake-ups, system calls (by
/// call; zero counts only with `show_zero`) and software work.
fn datapath_section(d: &crate::runtime::DatapathStats, show_zero: bool) -> String {
    let mut text = String::new();
    let per_batch = if d.batches == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}", d.batch_frames as f64 / d.batches as f64)
    };
    let seconds = |ns: u64| format!("{:.2}s", ns as f64 / 1e9);
    let _ = writeln!(
        text,
        "  busy {}, idle {}; {} batches, {per_batch} frames per batch; {} wake-ups, {} preemptions",
        seconds(d.busy_ns),
        seconds(d.idle_ns),
        d.batches,
        d.wakeups,
        d.preemptions,
    );
    let calls: Vec<String> = d
        .syscalls
        .iter()
        .filter(|(_, n)| show_zero || **n > 0)
        .map(|(call, n)| format!("{call} {n}"))
        .collect();
    let _ = writeln!(
        text,
        "  system calls {}{}{}; {} reads found nothing",
        d.total_syscalls(),
        if calls.is_empty() { "" } else { ": " },
        calls.join(", "),
        d.empty_reads,
    );
    let _ = writeln!(
        text,
        "  software: checksummed {} B, segmented {} B into {} segments, coalesced {} segments; {} UDP_SEGMENT sends",
        d.checksum_bytes, d.segmented_bytes, d.segments, d.coalesced_segments, d.udp_gso_sends,
    );
    text
}

/// A port's counters (of `GET /v1/stats`) as the `Counters:` section of `describe`: every
/// field but the name, as the API spells it.
pub fn port_counters(port: &PortStats) -> String {
    // Serialising plain counters and maps of them cannot fail.
    let mut counters = serde_json::to_value(port).unwrap_or_default();
    if let Some(map) = counters.as_object_mut() {
        map.remove("name");
    }
    describe_section("Counters", &counters)
}

/// What `vswitchctl overlay` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayReport {
    /// The text for standard output.
    Text(String),
    /// A hub without runners: how its API is served for standard output, and a note for
    /// standard error.
    NoRunners {
        /// The hub's API lines (its TLS fingerprint); empty when unknown.
        text: String,
        /// The note.
        note: String,
    },
}

/// How a hub serves its registration API, as `key  value` lines: TLS and the certificate's
/// fingerprint (what runners pin), or a warning for plain HTTP; empty while unknown.
fn hub_api_lines(view: &HubView) -> String {
    let mut lines = Vec::new();
    if !view.tls.enabled {
        lines.push((
            "API",
            "plain HTTP (spec.tls.mode: Disabled): the token crosses the underlay in clear"
                .to_owned(),
        ));
    } else if let Some(fingerprint) = &view.tls.fingerprint {
        let source = if view.tls.generated {
            "TLS, self-signed certificate"
        } else {
            "TLS, spec.tls.certificateFile"
        };
        lines.push(("API", source.to_owned()));
        lines.push(("FINGERPRINT", fingerprint.clone()));
    }
    if let Some(store) = &view.store {
        let state = match (&store.message, store.ready) {
            (Some(message), _) => format!(" ({message})"),
            (None, true) => String::new(),
            (None, false) => " (not read yet)".to_owned(),
        };
        lines.push((
            "STORE",
            format!("etcd {} {}{state}", store.etcd.join(","), store.prefix),
        ));
    }
    if view.runner_to_runner == RunnerToRunner::Direct {
        lines.push((
            "RUNNERS",
            "reach each other directly (spec.runnerToRunner: Direct)".to_owned(),
        ));
    }
    if !view.encapsulation.is_vxlan() {
        lines.push(("ENCAPSULATION", unencapsulated(view.routed_address)));
    }
    if lines.is_empty() {
        return String::new();
    }
    key_values(&lines)
}

/// The ENCAPSULATION line of a node routing without it: where it is routed.
fn unencapsulated(routed: Option<std::net::Ipv4Addr>) -> String {
    match routed {
        Some(address) => format!("None: routed at {address} on the Uplink's link"),
        None => "None: no Uplink address on localAddress's link".to_owned(),
    }
}

/// The hub's runners: ID NAME ADDRESS VNI SUBNET LAST-SEEN STATE.
pub fn overlay_runners_table(view: &HubView) -> Table {
    let shared = view.store.is_some();
    let mut columns = vec![
        "ID",
        "NAME",
        "ADDRESS",
        "VNI",
        "SUBNET",
        "LAST-SEEN",
        "STATE",
    ];
    if shared {
        // Which hub of the overlay serves the runner now.
        columns.push("HUB");
    }
    let mut table = Table::new(&columns);
    for runner in &view.runners {
        let mut row = vec![
            runner.id.to_string(),
            shown(&runner.name),
            shown(runner.address),
            optional(runner.vni.as_ref()),
            match (&runner.subnet, &runner.subnet6) {
                (Some(subnet), Some(subnet6)) => format!("{subnet}, {subnet6}"),
                _ => optional(runner.subnet.as_ref()),
            },
            format!("{} ago", format_age(runner.last_seen_seconds_ago)),
            shown(runner.state),
        ];
        if shared {
            row.push(optional(runner.hub.as_ref()));
        }
        table.push(row);
    }
    table
}

/// The `overlay` report of `GET /v1/overlay`: on a hub one row per runner; on a runner its
/// ID, subnet, VNI, gateway, hub, state and message; on a mesh node its address, peers and
/// state.
pub fn overlay_report(view: &OverlayView) -> OverlayReport {
    match view {
        OverlayView::Hub(hub) => {
            let table = overlay_runners_table(hub);
            let mut text = hub_api_lines(hub);
            if table.is_empty() {
                OverlayReport::NoRunners {
                    text,
                    note: "no runners have registered with this hub yet".to_owned(),
                }
            } else {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&table.render());
                OverlayReport::Text(text)
            }
        }
        OverlayView::Runner(runner) => {
            let mut rows = vec![
                ("ID", optional(runner.id.as_ref())),
                ("SUBNET", optional(runner.subnet.as_ref())),
            ];
            if let Some(subnet6) = &runner.subnet6 {
                rows.push(("IPV6-SUBNET", subnet6.to_string()));
            }
            rows.extend([
                ("VNI", optional(runner.vni.as_ref())),
                ("GATEWAY", optional(runner.gateway.as_ref())),
                ("HUB", optional(runner.hub.as_ref())),
            ]);
            if let Some(direct) = runner.direct_peers {
                let how = if runner.encapsulation.is_vxlan() {
                    "straight to their VTEPs"
                } else {
                    "routed to their nodes"
                };
                rows.push(("DIRECT", format!("{direct} other runners, {how}")));
            }
            if !runner.encapsulation.is_vxlan() {
                rows.push(("ENCAPSULATION", unencapsulated(runner.routed_address)));
            }
            rows.extend([
                ("STATE", shown(runner.state)),
                ("MESSAGE", optional(runner.message.as_ref())),
            ]);
            OverlayReport::Text(key_values(&rows))
        }
        OverlayView::Mesh(mesh) => OverlayReport::Text(key_values(&[
            ("ROLE", "mesh".to_owned()),
            ("NAME", shown(&mesh.name)),
            ("LOCAL-ADDRESS", shown(mesh.local_address)),
            ("PEERS", list(&mesh.peers)),
            ("STATE", shown(mesh.state)),
            ("MESSAGE", optional(mesh.message.as_ref())),
        ])),
    }
}

/// `vswitchctl uplink`: the Uplink's line, its bond's members (with their frame counters
/// from `stats`) and the Subnets on its VLANs.
pub fn uplink_report(uplink: &Value, stats: &StatsReport) -> String {
    let text_of = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => NONE.to_string(),
        other => other.to_string(),
    };
    let yes = |value: &Value| {
        if value.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
        .to_string()
    };
    let spec = &uplink["spec"];
    let status = &uplink["status"];
    let name = text_of(&uplink["metadata"]["name"]);
    let interfaces = match spec["interfaces"].as_array() {
        Some(list) if !list.is_empty() => list.iter().map(text_of).collect::<Vec<_>>().join("+"),
        _ => text_of(&spec["interface"]),
    };
    let mode = spec["bond"]["mode"]
        .as_str()
        .map_or_else(|| NONE.to_string(), str::to_string);
    let mut head = Table::new(&["UPLINK", "INTERFACES", "BOND", "MAC", "MTU", "STATE"]);
    head.push(vec![
        name.clone(),
        interfaces,
        mode,
        text_of(&status["mac"]),
        text_of(&status["mtu"]),
        text_of(&status["state"]),
    ]);
    let mut text = head.render();
    if let Some(members) = status["members"].as_array().filter(|m| !m.is_empty()) {
        let mut table = Table::new(&[
            "MEMBER",
            "CARRIER",
            "CARRIES",
            "ACTIVE",
            "PROBES",
            "LACP",
            "PARTNER",
            "PARTNER-STATE",
            "RX-PKTS",
            "TX-PKTS",
        ]);
        for member in members {
            let interface = text_of(&member["interface"]);
            let counters = stats
                .ports
                .iter()
                .find(|port| port.name == format!("{name}/{interface}"));
            let lacp = &member["lacp"];
            let (state, partner, partner_state) = if lacp.is_object() {
                (
                    format!(
                        "{}{}",
                        text_of(&lacp["state"]),
                        if lacp["selected"] == true {
                            ",selected"
                        } else {
                            ""
                        }
                    ),
                    format!(
                        "{} key {} port {}",
                        text_of(&lacp["partnerSystem"]),
                        text_of(&lacp["partnerKey"]),
                        text_of(&lacp["partnerPort"])
                    ),
                    text_of(&lacp["partnerState"]),
                )
            } else {
                (NONE.into(), NONE.into(), NONE.into())
            };
            table.push(vec![
                interface,
                yes(&member["carrier"]),
                yes(&member["carriesTraffic"]),
                yes(&member["active"]),
                if member["probesAnswered"] == true {
                    "answered"
                } else {
                    "unanswered"
                }
                .into(),
                state,
                partner,
                partner_state,
                counters.map_or_else(|| NONE.into(), |c| c.rx_packets.to_string()),
                counters.map_or_else(|| NONE.into(), |c| c.tx_packets.to_string()),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    if let Some(vlans) = status["vlans"].as_array().filter(|v| !v.is_empty()) {
        // Frames of a VLAN are received (and counted) on the uplink's members; its port
        // counts what was sent into it and what could not leave.
        let mut table = Table::new(&["VLAN", "SUBNET", "TX-PKTS", "TX-DROPS"]);
        for vlan in vlans {
            let port = format!("{name}.{}", text_of(&vlan["vlan"]));
            let counters = stats.ports.iter().find(|p| p.name == port);
            table.push(vec![
                text_of(&vlan["vlan"]),
                text_of(&vlan["subnet"]),
                counters.map_or_else(|| NONE.into(), |c| c.tx_packets.to_string()),
                counters.map_or_else(
                    || NONE.into(),
                    |c| c.drops.values().sum::<u64>().to_string(),
                ),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::table_section;
    use serde::Serialize;
    use serde_json::json;

    /// A fixture as the daemon's type `T`. It must be exactly what the daemon sends: it
    /// parses, and serialises back to the same JSON.
    fn typed<T: Serialize + DeserializeOwned>(fixture: Value) -> T {
        let value: T = parse_answer("the fixture", fixture.clone()).expect("the fixture parses");
        assert_eq!(
            serde_json::to_value(&value).expect("serialises"),
            fixture,
            "the fixture is not what the daemon sends"
        );
        value
    }

    #[test]
    fn routing_and_neighbor_tables() {
        let rows: Vec<RoutingTableRow> = typed(json!([
            {"network": "blue", "destination": "10.1.0.0/24", "nextHop": null, "subnet": "web", "origin": "connected"},
            {"network": "blue", "destination": "10.2.0.0/24", "nextHop": null, "subnet": "db", "origin": "peering:red"},
            {"network": "blue", "destination": "0.0.0.0/0", "nextHop": "10.1.0.254", "subnet": "web", "origin": "static:default"},
        ]));
        assert_eq!(
            routing_table(&rows).render(),
            "\
NETWORK   DESTINATION   NEXTHOP      SUBNET   ORIGIN
blue      10.1.0.0/24   direct       web      connected
blue      10.2.0.0/24   direct       db       peering:red
blue      0.0.0.0/0     10.1.0.254   web      static:default
"
        );
        let neighbors: Vec<NeighborRow> = typed(json!([
            {"subnet": "web", "ip": "10.1.0.5", "mac": "02:00:00:00:00:05", "state": "Reachable", "ageSeconds": 12},
            {"subnet": "web", "ip": "10.1.0.254", "mac": "", "state": "Incomplete", "ageSeconds": 0},
        ]));
        assert_eq!(
            neighbors_table(&neighbors).render(),
            "\
SUBNET   IP           MAC                 STATE        AGE
web      10.1.0.5     02:00:00:00:00:05   Reachable    12s
web      10.1.0.254   -                   Incomplete   0s
"
        );
        assert!(neighbors_table(&[]).is_empty());
        assert_eq!(
            table_section("Routes", &routing_table(&[])),
            "Routes:  <none>\n"
        );
    }

    #[test]
    fn conntrack_rows() {
        let entries: Vec<ConntrackRow> = typed(json!([
            {"protocol": "tcp", "state": "ESTABLISHED", "assured": true, "ageSeconds": 12, "timeoutSeconds": 7428,
             "original": {"zone": "blue", "src": "10.1.0.5", "srcPort": 40000, "dst": "203.0.113.9", "dstPort": 443},
             "reply": {"zone": "external", "src": "203.0.113.9", "srcPort": 443, "dst": "198.51.100.10", "dstPort": 40000}},
            {"protocol": "icmp", "state": "REPLIED", "assured": true, "ageSeconds": 3, "timeoutSeconds": 57,
             "original": {"zone": "red", "src": "10.2.0.5", "srcPort": 7, "dst": "10.2.0.9", "dstPort": 0},
             "reply": {"zone": "red", "src": "10.2.0.9", "srcPort": 0, "dst": "10.2.0.5", "dstPort": 7}},
        ]));
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
        assert!(wide.contains("   blue->external   true\n"), "{wide}");
        assert!(conntrack_table(&[], false).is_empty());
    }

    #[test]
    fn nat_report_sections() {
        let report: NatReport = typed(json!({
            "uplink": {"name": "wan", "interface": "eth1", "mac": "02:00:00:00:00:09",
                       "gateway": "198.51.100.1", "state": "Up"},
            "addresses": [{"ip": "198.51.100.10", "usedBy": ["NATGateway/gw", "PortForward/web"]},
                          {"ip": "198.51.100.11", "usedBy": []}],
            "portsInUse": [{"natGateway": "gw", "network": "blue", "interface": "c1", "ip": "198.51.100.10",
                            "blocks": ["1024-3071"], "tcp": 2, "udp": 0, "icmp": 1}],
            "conntrack": {"entries": 3, "maxEntries": 1000000, "created": 10, "expired": 7,
                          "evicted": 0, "refusedFull": 0, "clashes": 0, "natMappings": 3},
            "drops": {"nat.unsolicited": 4, "nat.pool_exhausted": 0},
        }));
        assert_eq!(
            nat_report(&report, false),
            "\
uplink: wan (interface eth1, mac 02:00:00:00:00:09, gateway 198.51.100.1): Up

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
        let empty: NatReport = typed(json!({
            "uplink": null, "addresses": [], "portsInUse": [],
            "conntrack": {"entries": 0, "maxEntries": 1000000, "created": 0, "expired": 0,
                          "evicted": 0, "refusedFull": 0, "clashes": 0, "natMappings": 0},
            "drops": {"nat.unsolicited": 0},
        }));
        let empty = nat_report(&empty, false);
        assert!(
            empty.starts_with("uplink: none (vswitchctl apply an Uplink first)\n\nports in use:\nno ports in use\n"),
            "{empty}"
        );
        assert!(empty.ends_with("drops by reason:\nno drops\n"), "{empty}");
        // An uplink whose device was never opened has no MAC yet.
        let pending: NatReport = typed(json!({
            "uplink": {"name": "wan", "interface": "eth1", "mac": null,
                       "gateway": "198.51.100.1", "state": "Pending"},
            "addresses": [], "portsInUse": [],
            "conntrack": {"entries": 0, "maxEntries": 1000000, "created": 0, "expired": 0,
                          "evicted": 0, "refusedFull": 0, "clashes": 0, "natMappings": 0},
            "drops": {},
        }));
        assert!(nat_report(&pending, false).starts_with(
            "uplink: wan (interface eth1, mac -, gateway 198.51.100.1): Pending\n\nports in use:\n"
        ));
    }

    #[test]
    fn fdb_table_from_rows() {
        // `vtep` is only sent for a MAC learned on a tunnel.
        let fdb: Vec<FdbRow> = typed(json!([
            {"subnet": "default", "mac": "02:00:ac:1e:00:02", "port": "c1", "ageSeconds": 3},
            {"subnet": "default", "mac": "02:00:ac:1e:00:03", "port": "vxlan/default", "ageSeconds": 125, "vtep": "192.168.50.2"},
        ]));
        assert_eq!(
            fdb_table(&fdb).render(),
            "\
SUBNET    MAC                 PORT            VTEP           AGE
default   02:00:ac:1e:00:02   c1              -              3s
default   02:00:ac:1e:00:03   vxlan/default   192.168.50.2   2m5s
"
        );
        assert!(fdb_table(&[]).is_empty());
    }

    /// The `datapath` of a switch that has done nothing.
    fn idle_datapath() -> Value {
        serde_json::to_value(crate::runtime::DatapathStats::default()).expect("plain counters")
    }

    /// A `GET /v1/stats` answer with one port.
    fn stats_fixture(worker_cpus: Value) -> StatsReport {
        typed(json!({
            "workers": 2,
            "workerCpus": worker_cpus,
            "captures": [],
            "ports": [
                {"name": "c1", "rxPackets": 10, "rxBytes": 980, "txPackets": 8, "txBytes": 784,
                 "txGeneratedPackets": 1, "txGeneratedBytes": 42, "rxErrors": 0, "rxBackoffs": 0,
                 "drops": {"port_security.src_mac": 2, "parse.runt": 1}},
            ],
            "drops": {"port_security.src_mac": 2, "parse.runt": 1, "tx.error": 0},
            "events": {"l2.mac_aged": 0},
            "datapath": {
                "busyNs": 1_500_000_000_u64, "idleNs": 250_000_000, "batches": 6,
                "batchFrames": 133, "syscalls": {"read": 140, "write": 133, "epoll_wait": 7},
                "emptyReads": 6, "checksumBytes": 9000, "segmentedBytes": 0, "segments": 0,
                "coalescedSegments": 0, "udpGsoSends": 0, "wakeups": 5, "preemptions": 1,
            },
        }))
    }

    #[test]
    fn stats_report_sections() {
        let stats = stats_fixture(json!([1, 0]));
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

captures:
no captures running

datapath (all workers, since start):
  busy 1.50s, idle 0.25s; 6 batches, 22.2 frames per batch; 5 wake-ups, 1 preemptions
  system calls 280: epoll_wait 7, read 140, write 133; 6 reads found nothing
  software: checksummed 9000 B, segmented 0 B into 0 segments, coalesced 0 segments; 0 UDP_SEGMENT sends
"
        );
        let all = stats_report(&stats, true);
        assert!(all.contains("\ntx.error                0\n"), "{all}");
        assert!(all.contains("\nl2.mac_aged   0\n"), "{all}");
        let floating = stats_report(&stats_fixture(Value::Null), false);
        assert!(
            floating.starts_with("workers: 2, floating\n\n"),
            "{floating}"
        );
        let idle: StatsReport = typed(json!({
            "workers": 1, "workerCpus": null, "ports": [], "drops": {}, "events": {},
            "captures": [], "datapath": idle_datapath(),
        }));
        assert_eq!(
            stats_report(&idle, false),
            "workers: 1, floating\n\nno ports\n\ndrops by reason:\nno drops\n\nevents:\nno events\n\ncaptures:\nno captures running\n\n\
             datapath (all workers, since start):\n  \
             busy 0.00s, idle 0.00s; 0 batches, - frames per batch; 0 wake-ups, 0 preemptions\n  \
             system calls 0; 0 reads found nothing\n  \
             software: checksummed 0 B, segmented 0 B into 0 segments, coalesced 0 segments; 0 UDP_SEGMENT sends\n"
        );
        let capturing: StatsReport = typed(json!({
            "workers": 1, "workerCpus": null, "ports": [], "drops": {}, "events": {},
            "datapath": idle_datapath(),
            "captures": [{"id": 3, "port": "c1", "direction": "rx", "filter": "icmp",
                          "captured": 12, "dropped": 0}],
        }));
        let text = stats_report(&capturing, false);
        assert!(
            text.contains("captures:\nID   PORT   DIRECTION   FILTER   CAPTURED   DROPPED\n3    c1     rx          icmp     12         0\n\n"),
            "{text}"
        );
    }

    #[test]
    fn port_counters_section() {
        let stats = stats_fixture(json!([0]));
        let text = port_counters(&stats.ports[0]);
        assert_eq!(
            text,
            "\
Counters:
  drops:
    parse.runt:             1
    port_security.src_mac:  2
  rxBackoffs:          0
  rxBytes:             980
  rxErrors:            0
  rxPackets:           10
  txBytes:             784
  txGeneratedBytes:    42
  txGeneratedPackets:  1
  txPackets:           8
"
        );
    }

    #[test]
    fn an_answer_of_another_shape_is_an_error() {
        // A daemon that predates the typed answers (no `ports`, `drops`, `events`).
        let err = parse_answer::<StatsReport>("GET /v1/stats", json!({"workers": 1}))
            .expect_err("not a StatsReport");
        let text = err.render();
        assert!(
            text.starts_with(
                "vswitchctl: unexpected answer from vswitchd: GET /v1/stats does not parse: missing field `ports`"
            ),
            "{text}"
        );
        // An overlay role this CLI does not know.
        let err =
            parse_answer::<OverlayView>("GET /v1/overlay", json!({"role": "relay", "name": "x"}))
                .expect_err("no such role");
        assert!(
            err.render()
                .contains("GET /v1/overlay does not parse: unknown variant `relay`"),
            "{}",
            err.render()
        );
    }

    #[test]
    fn a_hub_with_a_shared_store_says_which_hub_serves_each_runner() {
        let view: OverlayView = typed(json!({
            "role": "hub", "name": "hub-b", "localAddress": "192.168.50.5", "hubAddress": "10.0.0.1/8",
            "state": "Up", "message": null, "runnerToRunner": "ViaHub",
            "tls": {"enabled": false, "fingerprint": null, "generated": true},
            "store": {"etcd": ["http://192.168.50.20:2379"], "prefix": "/vswitch/overlay/", "ready": true},
            "runners": [
                {"id": 1, "name": "runner-a", "address": "192.168.50.2", "vni": 101,
                 "subnet": "10.1.0.0/16", "lastSeenSecondsAgo": 3, "state": "Online",
                 "hub": "192.168.50.1"},
                {"id": 2, "name": "runner-b", "address": "192.168.50.3", "vni": 102,
                 "subnet": "10.2.0.0/16", "lastSeenSecondsAgo": 30, "state": "Offline"},
            ],
        }));
        let OverlayReport::Text(text) = overlay_report(&view) else {
            panic!("runners are listed");
        };
        assert!(
            text.contains("STORE   etcd http://192.168.50.20:2379 /vswitch/overlay/\n"),
            "{text}"
        );
        assert!(text.contains("plain HTTP"), "{text}");
        assert!(
            text.contains("STATE     HUB\n") && text.contains("Online    192.168.50.1\n"),
            "{text}"
        );
        assert!(text.contains("Offline   -\n"), "{text}");
    }

    #[test]
    fn overlay_hub_table() {
        let view: OverlayView = typed(json!({
            "role": "hub", "name": "hub", "localAddress": "192.168.50.1", "hubAddress": "10.0.0.1/8",
            "state": "Up", "message": null, "runnerToRunner": "ViaHub",
            "tls": {"enabled": true, "fingerprint": null, "generated": true},
            "runners": [
                {"id": 1, "name": "runner-a", "address": "192.168.50.2", "vni": 101,
                 "subnet": "10.1.0.0/16", "lastSeenSecondsAgo": 3, "state": "Online"},
                {"id": 12, "name": "b", "address": "192.168.50.3", "vni": 112,
                 "subnet": "10.12.0.0/16", "lastSeenSecondsAgo": 250, "state": "Offline"},
                {"id": 13, "name": "c", "address": "192.168.50.4", "vni": null,
                 "subnet": null, "lastSeenSecondsAgo": 0, "state": "Offline"},
            ],
        }));
        assert_eq!(
            overlay_report(&view),
            OverlayReport::Text(
                "\
ID   NAME       ADDRESS        VNI   SUBNET         LAST-SEEN   STATE
1    runner-a   192.168.50.2   101   10.1.0.0/16    3s ago      Online
12   b          192.168.50.3   112   10.12.0.0/16   4m10s ago   Offline
13   c          192.168.50.4   -     -              0s ago      Offline
"
                .to_owned()
            )
        );
        let empty: OverlayView = typed(json!({
            "role": "hub", "name": "hub1", "localAddress": "192.168.50.1", "hubAddress": "10.0.0.1/8",
            "state": "Up", "message": null, "runnerToRunner": "ViaHub",
            "tls": {"enabled": true, "fingerprint": "AB:CD", "generated": true},
            "runners": [],
        }));
        assert_eq!(
            overlay_report(&empty),
            OverlayReport::NoRunners {
                text: "API           TLS, self-signed certificate\nFINGERPRINT   AB:CD\n".into(),
                note: "no runners have registered with this hub yet".into()
            }
        );
        let plain: OverlayView = typed(json!({
            "role": "hub", "name": "hub1", "localAddress": "192.168.50.1", "hubAddress": "10.0.0.1/8",
            "state": "Up", "message": null, "runnerToRunner": "ViaHub",
            "tls": {"enabled": false, "fingerprint": null, "generated": true},
            "runners": [],
        }));
        let OverlayReport::NoRunners { text, .. } = overlay_report(&plain) else {
            panic!("no runners");
        };
        assert!(text.contains("plain HTTP"), "{text}");
    }

    #[test]
    fn overlay_runner_lines() {
        let view: OverlayView = typed(json!({
            "role": "runner", "name": "runner-a", "localAddress": "192.168.50.2",
            "id": 3, "vni": 103, "subnet": "10.3.0.0/16", "gateway": "10.3.0.1",
            "hub": "192.168.50.1:4799", "tls": "Fingerprint",
            "state": "HubUnreachable",
            "message": "cannot reach the hub at 192.168.50.1:4799: Connection refused; retrying in 4s",
            "lastContact": 1_700_000_000,
        }));
        assert_eq!(
            overlay_report(&view),
            OverlayReport::Text(
                "\
ID        3
SUBNET    10.3.0.0/16
VNI       103
GATEWAY   10.3.0.1
HUB       192.168.50.1:4799
STATE     HubUnreachable
MESSAGE   cannot reach the hub at 192.168.50.1:4799: Connection refused; retrying in 4s
"
                .to_owned()
            )
        );
        // Not registered yet: no ID, no plan.
        let fresh: OverlayView = typed(json!({
            "role": "runner", "name": "r", "localAddress": "192.168.50.2", "id": null,
            "vni": null, "subnet": null, "gateway": null, "hub": "192.168.50.1:4799", "tls": "CaFile",
            "state": "Registering", "message": null, "lastContact": null,
        }));
        let OverlayReport::Text(text) = overlay_report(&fresh) else {
            panic!("a runner prints lines");
        };
        assert!(text.starts_with("ID        -\n"), "{text}");
        assert!(text.contains("\nHUB       192.168.50.1:4799\n"), "{text}");
        assert!(text.ends_with("\nMESSAGE   -\n"), "{text}");
        // Reaching the other runners directly.
        let direct: OverlayView = typed(json!({
            "role": "runner", "name": "r", "localAddress": "192.168.50.2", "id": 1,
            "vni": 101, "subnet": "10.1.0.0/16", "gateway": "10.1.0.1", "hub": "192.168.50.1:4799",
            "tls": "Disabled", "state": "Registered", "message": null, "lastContact": null,
            "directPeers": 4,
        }));
        let OverlayReport::Text(text) = overlay_report(&direct) else {
            panic!("a runner prints lines");
        };
        assert!(
            text.contains("\nDIRECT    4 other runners, straight to their VTEPs\n"),
            "{text}"
        );
        let hub: OverlayView = typed(json!({
            "role": "hub", "name": "hub", "localAddress": "192.168.50.1", "hubAddress": "10.0.0.1/8",
            "state": "Up", "message": null, "runnerToRunner": "Direct",
            "tls": {"enabled": true, "fingerprint": null, "generated": true}, "runners": [],
        }));
        let OverlayReport::NoRunners { text, .. } = overlay_report(&hub) else {
            panic!("no runners");
        };
        assert!(
            text.contains("RUNNERS   reach each other directly"),
            "{text}"
        );
    }

    #[test]
    fn overlay_mesh_lines() {
        let view: OverlayView = typed(json!({
            "role": "mesh", "name": "n1", "localAddress": "192.168.50.1",
            "peers": ["192.168.50.2", "192.168.50.3"], "state": "Up", "message": null,
        }));
        assert_eq!(
            overlay_report(&view),
            OverlayReport::Text(
                "\
ROLE            mesh
NAME            n1
LOCAL-ADDRESS   192.168.50.1
PEERS           192.168.50.2,192.168.50.3
STATE           Up
MESSAGE         -
"
                .to_owned()
            )
        );
    }
}
