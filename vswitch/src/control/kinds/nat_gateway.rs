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
    /// NAT addresses: addresses of the Uplink, not used by another NATGateway or a
    /// VirtualIP.
    #[serde(deserialize_with = "de_ipv4_list")]
    pub ips: Vec<Ipv4Addr>,
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
    pub ip: Ipv4Addr,
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
    pub ips: Vec<Ipv4Addr>,
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
        errors.check(nat_rules::check_nat_gateway(
            cx.origin, cx.next, cx.batch, self,
        ));
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
