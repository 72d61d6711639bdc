//! `Subnet`: an L2 segment of a Network, with its addressing and IPAM range.

#[allow(unused_imports)]
use super::prelude::*;

/// Spec of a Subnet: an L2 segment with its addressing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetSpec {
    /// The Network it belongs to.
    #[serde(deserialize_with = "de_name")]
    pub network: String,
    /// The subnet, canonical (host bits zero), /30 or shorter.
    #[serde(deserialize_with = "de_subnet_cidr")]
    pub cidr: Ipv4Net,
    /// The switch's address in the subnet; the interfaces' default route.
    #[serde(deserialize_with = "de_ipv4")]
    pub gateway: Ipv4Addr,
    /// MTU given to interfaces that do not set their own (68..=65535).
    #[serde(default = "default_mtu", deserialize_with = "de_mtu")]
    pub mtu: u16,
    /// First address IPAM may hand out (default: the first host address).
    #[serde(
        default,
        deserialize_with = "de_opt_ipv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub range_start: Option<Ipv4Addr>,
    /// Last address IPAM may hand out (default: the last host address).
    #[serde(
        default,
        deserialize_with = "de_opt_ipv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub range_end: Option<Ipv4Addr>,
    /// Addresses IPAM never hands out (static assignment may still use them).
    #[serde(
        default,
        deserialize_with = "de_ipv4_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub reserved: Vec<Ipv4Addr>,
    /// How long a learned MAC lives without traffic (1..=604800 s).
    #[serde(default = "default_mac_ageing")]
    pub mac_ageing_seconds: u64,
    /// Most learned MACs in this subnet (1..=1048576).
    #[serde(default = "default_mac_limit")]
    pub mac_table_limit: usize,
    /// The gateway's MAC (unicast); when absent, derived from this node's id and the
    /// Subnet's name, so it is stable across restarts.
    #[serde(
        default,
        deserialize_with = "de_opt_unicast_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_mac: Option<MacAddr>,
    /// The VXLAN network identifier that stretches this subnet over the overlay
    /// (1..=16777215); frames for MACs not on this node are tunnelled to the remote VTEPs.
    /// Needs an Overlay on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The remote VTEPs that receive this subnet's broadcast and unknown unicast (head-end
    /// replication). Default: the Overlay's `peers`. Only with `vni`.
    #[serde(
        default,
        deserialize_with = "de_ipv4_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub remote_vteps: Vec<Ipv4Addr>,
}

/// Status of a Subnet (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetStatus {
    /// Addresses held by interfaces.
    #[serde(default)]
    pub allocated: u64,
    /// Addresses IPAM can still hand out.
    #[serde(default)]
    pub available: u64,
    /// The MAC the gateway answers ARP with (the spec's, or the derived one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mac: Option<MacAddr>,
}

/// An L2 segment of a Network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subnet {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `Subnet`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: SubnetSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: SubnetStatus,
}

impl ResourceKind for Subnet {
    type Spec = SubnetSpec;
    type Status = SubnetStatus;

    const INFO: KindInfo = KindInfo {
        name: "Subnet",
        plural: "subnets",
        aliases: &[],
        summary: "an L2 segment of a Network: CIDR, gateway owned by the switch, MTU, IPAM range; Subnets of one Network route to each other",
        example: "\
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata:
  name: web
spec:
  network: blue
  cidr: 10.1.0.0/24
  gateway: 10.1.0.1
  mtu: 1500
  rangeStart: 10.1.0.10
  rangeEnd: 10.1.0.200
",
    };

    fn spec(&self) -> &SubnetSpec {
        &self.spec
    }

    /// Without `gateway`, the first usable address of the CIDR, as Docker and CNI's
    /// host-local give it.
    fn apply_defaults(document: &mut serde_json::Map<String, serde_json::Value>) {
        let Some(serde_json::Value::Object(spec)) = document.get_mut("spec") else {
            return;
        };
        if spec.contains_key("gateway") {
            return;
        }
        let first = spec
            .get("cidr")
            .and_then(serde_json::Value::as_str)
            .and_then(|cidr| parse_subnet_cidr(cidr).ok())
            .and_then(|cidr| cidr.hosts().next());
        if let Some(first) = first {
            spec.insert("gateway".into(), first.to_string().into());
        }
    }

    fn status_mut(&mut self) -> &mut SubnetStatus {
        &mut self.status
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        let old = cx.current.subnets.get(&self.metadata.name);
        if let Some(old) = old {
            errors.check(validate::check_subnet_immutables(cx.origin, old, self));
        }
        errors.check(validate::check_subnet(cx.origin, old, cx.next, self));
        if old.is_none() {
            errors.check(validate::check_new_subnet_neighbours(
                cx.origin, cx.next, self,
            ));
            errors.check(nat_rules::check_subnet_against_uplink(
                cx.origin, cx.next, self,
            ));
        }
        errors.check(overlay::check_subnet(
            cx.origin,
            cx.next,
            &self.metadata.name,
            self,
        ));
    }

    fn dependants(state: &State, name: &str) -> Vec<(&'static str, Vec<String>)> {
        let Some(subnet) = state.subnets.get(name) else {
            return Vec::new();
        };
        vec![
            (
                "NetworkInterfaces",
                state
                    .network_interfaces
                    .values()
                    .filter(|n| n.spec.subnet == name)
                    .map(|n| n.metadata.name.clone())
                    .collect(),
            ),
            // Routes whose next hop is on this Subnet would lose their egress.
            (
                "Routes through it",
                state
                    .routes
                    .values()
                    .filter(|r| {
                        r.spec.network == subnet.spec.network
                            && subnet.spec.cidr.contains(&r.spec.next_hop)
                    })
                    .map(|r| r.metadata.name.clone())
                    .collect(),
            ),
        ]
    }

    fn observe(&mut self, state: &State, _view: &StatusView) {
        let leases = validate::leases(state)
            .remove(&self.metadata.name)
            .unwrap_or_default();
        let pool = ipam::Pool::new(&self.spec);
        self.status.allocated = u64::try_from(leases.held().count()).unwrap_or(u64::MAX);
        self.status.available = pool.available(leases.held());
        self.status.gateway_mac = Some(routing::gateway_mac(state, self));
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "NETWORK", "CIDR", "GATEWAY", "MTU"];
        if wide {
            columns.extend(["RANGE", "RESERVED", "GATEWAY-MAC", "LABELS"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let spec = &self.spec;
        let mut row = vec![
            self.metadata.name.clone(),
            spec.network.clone(),
            spec.cidr.to_string(),
            spec.gateway.to_string(),
            spec.mtu.to_string(),
        ];
        if wide {
            let range = match (spec.range_start, spec.range_end) {
                (None, None) => cell(""),
                (start, end) => format!("{}..{}", cells(start.iter()), cells(end.iter())),
            };
            let gateway_mac = self.status.gateway_mac.or(spec.gateway_mac);
            row.extend([
                range,
                cells(&spec.reserved),
                cells(gateway_mac.iter()),
                labels_cell(&self.metadata),
            ]);
        }
        row
    }
}
