//! The text table, and the tables of resources (a kind's own columns, [`kinds::listing`]).

use std::fmt::Write as _;

use serde_json::Value;

use super::COLUMN_GAP;
use crate::control::kinds::{self, Kind, Listing};

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

    /// Inserts a column at `index` with one cell per row (missing cells are `-`).
    pub fn insert_column(&mut self, index: usize, header: &str, cells: Vec<String>) {
        let index = index.min(self.headers.len());
        self.headers.insert(index, header.to_owned());
        let mut cells = cells.into_iter();
        for row in &mut self.rows {
            row.insert(
                index.min(row.len()),
                cells.next().unwrap_or_else(|| "-".to_owned()),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::fixtures::{interface, peered_network};
    use serde_json::json;

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
            &[interface("c1", Some("Up")), interface("c2-long", None)],
            false,
        );
        assert_eq!(
            table.render(),
            "\
NAME      NETNS     KIND   IFNAME   MAC                 IPS             STATE
c1        c1        tap    eth0     02:00:ac:1e:00:02   172.30.0.2/16   Up
c2-long   c2-long   tap    eth0     -                   -               Pending
"
        );
        let wide = resource_table(&[interface("c1", Some("Up"))], true);
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
        let mut r = interface("c1", Some("Up"));
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
        let routed = vec![
            json!({"kind": "Network", "metadata": {"name": "edge"}, "spec": {"uplink": {"mode": "Routed"}}}),
            json!({"kind": "Network", "metadata": {"name": "lab"},
                   "spec": {"uplink": {"mode": "Routed", "destinations": ["10.0.0.0/8", "192.168.0.0/16"]}}}),
        ];
        let text = resource_table(&routed, false).render();
        assert!(text.contains("   Routed\n"), "{text}");
        assert!(
            text.contains("   Routed:10.0.0.0/8,192.168.0.0/16\n"),
            "{text}"
        );
        assert_eq!(
            resource_table(&networks, false).render(),
            "\
NAME      SUBNETS     PEERINGS   UPLINK
default   default,b   -          NAT
empty     -           -          NAT
"
        );
        let wide = resource_table(&networks, true);
        assert!(wide.render().contains("   a=1,b=2\n"), "{}", wide.render());
    }

    #[test]
    fn network_table_shows_peerings_with_state() {
        assert_eq!(
            resource_table(&[peered_network()], false).render(),
            "\
NAME   SUBNETS   PEERINGS                  UPLINK
blue   web,db    red:Ready,green:Pending   NAT
"
        );
        // Without a status (an older daemon), the spec's peer Networks.
        let mut bare = peered_network();
        bare.as_object_mut().unwrap().remove("status");
        let text = resource_table(&[bare], false).render();
        assert!(text.contains("   red,green   NAT\n"), "{text}");
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
    fn nat_resource_tables() {
        let uplinks = vec![json!({"kind": "Uplink", "metadata": {"name": "wan"},
            "spec": {"interface": "eth1", "addresses": ["198.51.100.10/24", "198.51.100.11"],
                     "gateway": "198.51.100.1"},
            "status": {"mac": "02:00:00:00:00:09", "mtu": 1500, "state": "Up"}})];
        assert_eq!(
            resource_table(&uplinks, false).render(),
            "\
NAME   INTERFACE   ADDRESSES                        GATEWAY        MAC                 INBOUND   STATE
wan    eth1        198.51.100.10/24,198.51.100.11   198.51.100.1   02:00:00:00:00:09   Accept    Up
"
        );
        let wide = resource_table(&uplinks, true).render();
        assert!(wide.contains("   MTU    LABELS   MESSAGE\n"), "{wide}");
        assert!(wide.contains("   Up      1500   -        -\n"), "{wide}");
        let mut guarded = uplinks[0].clone();
        guarded["spec"]["inbound"] = json!({"policy": "Drop",
            "allow": [{"protocol": "TCP", "port": 22}, {"protocol": "UDP", "port": 4789, "endPort": 4790},
                      {"protocol": "ICMP"}]});
        let text = resource_table(&[guarded], false).render();
        assert!(
            text.contains("   Drop:TCP/22,UDP/4789-4790,ICMP   Up\n"),
            "{text}"
        );
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
            json!({"kind": "VirtualIP", "metadata": {"name": "v6"},
                   "spec": {"type": "Public", "ipFamily": "IPv6"},
                   "status": {"ip": "2001:db8:1::11"}}),
        ];
        assert_eq!(
            resource_table(&vips, false).render(),
            "\
NAME   TYPE     FAMILY   IP               INTERFACE
v      Public   IPv4     198.51.100.11    c2
w      Public   IPv4     198.51.100.12    -
v6     Public   IPv6     2001:db8:1::11   -
"
        );
    }

    #[test]
    fn overlay_table() {
        let overlay = json!({"kind": "Overlay", "metadata": {"name": "hub"},
            "spec": {"role": "hub", "localAddress": "192.168.50.1", "token": "<redacted>"},
            "status": {"state": "Up"}});
        let text = resource_table(std::slice::from_ref(&overlay), false).render();
        assert_eq!(
            text,
            "\
NAME   ROLE   LOCAL-ADDRESS   PORT   VNI-BASE   STATE
hub    hub    192.168.50.1    4789   100        Up
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
}
