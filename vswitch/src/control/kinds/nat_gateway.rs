//! `NATGateway`: masquerade for a Network's traffic to the outside, through the Uplink.

#[allow(unused_imports)]
use super::prelude::*;

/// Default `portsPerNetworkInterface` of a NATGateway.
pub const DEFAULT_PORTS_PER_INTERFACE: u16 = nat::ports::DEFAULT_PORTS_PER_INTERFACE;

/// Smallest `portsPerNetworkInterface`: one bitmap word per protocol; smaller blocks would
/// let a busy container run out of ports at once.
pub const MIN_PORTS_PER_INTERFACE: u16 = 64;

/// Largest `portsPerNetworkInterface`: every port a NAT address hands out (1024-65535), so
/// one interface holds the whole address.
pub const MAX_PORTS_PER_INTERFACE: u16 = {
    let range = nat::ports::DEFAULT_PORT_RANGE;
    *range.end() - *range.start() + 1
};

/// Spec of a NATGateway: masquerade for one Network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatGatewaySpec {
    /// The Network whose traffic to the outside is masqueraded.
    #[serde(deserialize_with = "de_name")]
    pub network: String,
    /// NAT addresses: addresses of the Uplink (IPv4, or IPv6 from its `ipv6.addresses` for
    /// NAT66; IPv4 flows take an IPv4 one, IPv6 flows an IPv6 one), not used by another
    /// NATGateway or a VirtualIP.
    #[serde(deserialize_with = "de_ip_list")]
    pub ips: Vec<IpAddr>,
    /// Ports in each interface's block on a NAT address
    /// ([`MIN_PORTS_PER_INTERFACE`]..=[`MAX_PORTS_PER_INTERFACE`], default 2048).
    #[serde(
        default = "default_ports_per_interface",
        deserialize_with = "de_ports_per_interface"
    )]
    pub ports_per_network_interface: u16,
}

/// Masquerade ports one NetworkInterface holds (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortsInUse {
    /// The NetworkInterface.
    pub interface: String,
    /// Its NAT address.
    pub ip: IpAddr,
    /// Its port blocks, `first-last`.
    pub blocks: Vec<String>,
    /// TCP mappings.
    pub tcp: u32,
    /// UDP mappings.
    pub udp: u32,
    /// ICMP echo identifiers.
    pub icmp: u32,
}

/// Status of a NATGateway (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatGatewayStatus {
    /// The NAT addresses in use.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Ports in use per NetworkInterface.
    #[serde(default)]
    pub ports_in_use: Vec<PortsInUse>,
}

/// Masquerade for a Network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatGateway {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `NATGateway`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: NatGatewaySpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: NatGatewayStatus,
}

impl ResourceKind for NatGateway {
    type Spec = NatGatewaySpec;
    type Status = NatGatewayStatus;

    const INFO: KindInfo = KindInfo {
        name: "NATGateway",
        plural: "natgateways",
        aliases: &["natgw"],
        summary: "masquerade for a Network's traffic to the outside, through addresses of the Uplink",
        example: "\
apiVersion: vswitch/v1alpha1
kind: NATGateway
metadata:
  name: apps-out
spec:
  network: apps
  ips: [198.51.100.10]
  portsPerNetworkInterface: 2048
",
    };

    fn spec(&self) -> &NatGatewaySpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut NatGatewayStatus {
        &mut self.status
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(check_nat_gateway(cx.origin, cx.next, cx.batch, self));
    }

    fn observe(&mut self, _state: &State, view: &StatusView) {
        self.status.ips = self.spec.ips.clone();
        self.status.ports_in_use = nat_rules::ports_in_use(self, &view.nat_usage, &view.port_names);
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "NETWORK", "IPS", "PORTS/INTERFACE", "PORTS-IN-USE"];
        if wide {
            columns.extend(["INTERFACES", "LABELS"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let usage = &self.status.ports_in_use;
        let in_use: u64 = usage
            .iter()
            .map(|u| u64::from(u.tcp) + u64::from(u.udp) + u64::from(u.icmp))
            .sum();
        let ips = if self.status.ips.is_empty() {
            &self.spec.ips
        } else {
            &self.status.ips
        };
        let mut row = vec![
            self.metadata.name.clone(),
            self.spec.network.clone(),
            cells(ips),
            self.spec.ports_per_network_interface.to_string(),
            in_use.to_string(),
        ];
        if wide {
            row.extend([
                cells(usage.iter().map(|u| &u.interface)),
                labels_cell(&self.metadata),
            ]);
        }
        row
    }

    fn describe_tables(&self) -> Vec<DescribeTable> {
        vec![DescribeTable {
            replaces: "portsInUse",
            title: "Ports in use",
            listing: ports_listing(&self.status.ports_in_use),
        }]
    }
}

/// Masquerade ports held per interface: INTERFACE NAT-IP BLOCKS TCP UDP ICMP.
pub fn ports_listing(usage: &[PortsInUse]) -> Listing {
    Listing {
        headers: vec!["INTERFACE", "NAT-IP", "BLOCKS", "TCP", "UDP", "ICMP"],
        rows: usage
            .iter()
            .map(|u| {
                vec![
                    u.interface.clone(),
                    u.ip.to_string(),
                    cells(&u.blocks),
                    u.tcp.to_string(),
                    u.udp.to_string(),
                    u.icmp.to_string(),
                ]
            })
            .collect(),
    }
}

/// A NATGateway: its Network exists and has no other; its addresses are the Uplink's, each
/// once, used by no other NATGateway and no VirtualIP.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
fn check_nat_gateway(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    gateway: &NatGateway,
) -> Result<(), ApiError> {
    let name = &gateway.metadata.name;
    let spec = &gateway.spec;
    if !next.networks.contains_key(&spec.network) {
        return Err(origin.invalid(
            "spec.network",
            format!(
                "Network {:?} does not exist; create it first (it may be in the same input)",
                spec.network
            ),
        ));
    }
    let twin = next.nat_gateways.values().find(|other| {
        other.metadata.name != *name
            && other.spec.network == spec.network
            && batch.before(Kind::NatGateway, &other.metadata.name, origin)
    });
    if let Some(twin) = twin {
        return Err(origin.conflict(
            "spec.network",
            format!(
                "Network {:?} already has NATGateway {:?}; a Network has one NATGateway: add the addresses to that one instead",
                spec.network, twin.metadata.name
            ),
        ));
    }
    if spec.ips.is_empty() {
        return Err(origin.invalid(
            "spec.ips",
            "no NAT address; list at least one address of the Uplink",
        ));
    }
    nat_rules::owned_by_uplink(origin, next, "spec.ips", None)?;
    let mut seen: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (index, ip) in spec.ips.iter().enumerate() {
        let field = format!("spec.ips[{index}]");
        if let Some(first) = seen.insert(*ip, index) {
            return Err(origin.invalid(
                &field,
                format!("{ip} is also spec.ips[{first}]; list each address once"),
            ));
        }
        nat_rules::owned_by_uplink(origin, next, &field, Some(*ip))?;
        if let Some(user) = nat_rules::blocking_user(
            next,
            batch,
            origin,
            (Kind::NatGateway, name),
            *ip,
            &[Kind::NatGateway, Kind::VirtualIp, Kind::LoadBalancer],
        ) {
            return Err(origin.conflict(
                &field,
                format!(
                    "{ip} is already used by {user}; a NAT address serves one NATGateway and is never a VirtualIP: choose another address of the Uplink"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{apply, forward, gateway, nat_base, refused, vip};

    #[test]
    fn nat_gateway_checks() {
        let state = nat_base();
        refused(
            &state,
            &gateway("gw", "green", "198.51.100.10"),
            400,
            "documents[0].spec.network",
            &["Network \"green\" does not exist"],
        );
        refused(
            &state,
            &gateway("gw", "blue", ""),
            400,
            "documents[0].spec.ips",
            &["no NAT address"],
        );
        refused(
            &state,
            &gateway("gw", "blue", "203.0.113.7"),
            400,
            "documents[0].spec.ips[0]",
            &[
                "203.0.113.7 is not an address of Uplink \"wan\"",
                "198.51.100.10/24, 198.51.100.11, 198.51.100.12",
            ],
        );
        refused(
            &state,
            &gateway("gw", "blue", "198.51.100.10, 198.51.100.10"),
            400,
            "documents[0].spec.ips[1]",
            &["198.51.100.10 is also spec.ips[0]"],
        );
        let without_uplink = apply(
            &State::default(),
            "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: blue}\n",
        );
        refused(
            &without_uplink,
            &gateway("gw", "blue", "198.51.100.10"),
            400,
            "documents[0].spec.ips",
            &["no Uplink exists; create the Uplink first"],
        );
        let with_gw = apply(&state, &gateway("gw", "blue", "198.51.100.10"));
        assert_eq!(
            with_gw.nat_gateways["gw"].spec.ports_per_network_interface,
            2048
        );
        refused(
            &with_gw,
            &gateway("gw2", "blue", "198.51.100.11"),
            409,
            "documents[0].spec.network",
            &["Network \"blue\" already has NATGateway \"gw\""],
        );
        refused(
            &with_gw,
            &gateway("gw2", "red", "198.51.100.10"),
            409,
            "documents[0].spec.ips[0]",
            &["198.51.100.10 is already used by NATGateway \"gw\""],
        );
        // Two gateways of one batch: the later document is blamed.
        refused(
            &state,
            &format!(
                "{}{}",
                gateway("a", "blue", "198.51.100.10"),
                gateway("b", "red", "198.51.100.10")
            ),
            409,
            "documents[1].spec.ips[0]",
            &["document 2 (NATGateway \"b\")", "used by NATGateway \"a\""],
        );
        let with_vip = apply(&state, &vip("v", Some("198.51.100.11")));
        refused(
            &with_vip,
            &gateway("gw", "blue", "198.51.100.11"),
            409,
            "documents[0].spec.ips[0]",
            &["198.51.100.11 is already used by VirtualIP \"v\""],
        );
        // A gateway may change its own addresses, and share one with port forwards.
        let state = apply(
            &with_gw,
            &format!(
                "{}{}",
                gateway("gw", "blue", "198.51.100.10, 198.51.100.12"),
                forward("web", "198.51.100.10", "tcp", 8080, "c1")
            ),
        );
        assert_eq!(state.nat_gateways["gw"].spec.ips.len(), 2);
    }
}
