//! `Uplink`: the node's way out, a host interface where the switch owns NAT and
//! virtual-IP addresses (at most one per node).

#[allow(unused_imports)]
use super::prelude::*;

/// One address the switch owns on the Uplink: `A.B.C.D/N` (the address with the prefix of
/// the link it is on, as `ip addr add` takes it) or `A.B.C.D` (the address alone, `/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UplinkAddress(pub Ipv4Net);

impl UplinkAddress {
    /// The address the switch owns.
    pub fn addr(self) -> Ipv4Addr {
        self.0.addr()
    }

    /// The on-link prefix (host bits cleared).
    pub fn prefix(self) -> Ipv4Net {
        self.0.trunc()
    }
}

impl fmt::Display for UplinkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == 32 {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// An uplink address that does not parse or cannot be owned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid uplink address {text:?}: {why}")]
pub struct UplinkAddressError {
    /// The text as written.
    pub text: String,
    /// What is wrong, and what would be valid.
    pub why: String,
}

impl FromStr for UplinkAddress {
    type Err = UplinkAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| UplinkAddressError {
            text: s.to_string(),
            why: why.to_string(),
        };
        let form = "write A.B.C.D/N (the address with its link's prefix, e.g. 198.51.100.10/24) or A.B.C.D";
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => {
                let len = len
                    .parse::<u8>()
                    .ok()
                    .filter(|len| *len <= 32)
                    .ok_or_else(|| err(&format!("the prefix length must be 0..=32; {form}")))?;
                (addr, len)
            }
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| err(&format!("{addr:?} is not an IPv4 address; {form}")))?;
        let net = Ipv4Net::new(addr, len)
            .map_err(|_| err(&format!("the prefix length must be 0..=32; {form}")))?;
        if addr.is_unspecified()
            || addr.is_loopback()
            || addr.is_multicast()
            || addr.is_broadcast()
            || addr.octets()[0] >= 240
        {
            return Err(err(
                "not a unicast host address (0.0.0.0/8, loopback, multicast and reserved \
                 addresses cannot be owned); use an address of the uplink's network",
            ));
        }
        if len <= 30 && (addr == net.network() || addr == net.broadcast()) {
            let which = if addr == net.network() {
                "network"
            } else {
                "broadcast"
            };
            return Err(err(&format!(
                "{addr} is the {which} address of {}; the switch owns one address per entry: \
                 write a host address with its link's prefix (e.g. {}/{len}), or list single \
                 addresses",
                net.trunc(),
                Ipv4Addr::from(u32::from(net.network()) + 1)
            )));
        }
        Ok(UplinkAddress(net))
    }
}

impl Serialize for UplinkAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UplinkAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// Spec of the Uplink: the host interface the switch reads and writes with AF_PACKET, the
/// addresses it owns there, and the next hop toward the outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UplinkSpec {
    /// A host interface in vswitchd's namespace (e.g. `eth1`); not one of the switch's ports.
    #[serde(deserialize_with = "de_ifname")]
    pub interface: String,
    /// The addresses the switch owns on the link (NAT addresses, virtual IPs, forwarded
    /// addresses come from them). Never the host's own addresses.
    #[serde(deserialize_with = "de_uplink_addresses")]
    pub addresses: Vec<UplinkAddress>,
    /// The next hop toward the outside, inside the prefix of one of `addresses`.
    #[serde(deserialize_with = "de_ipv4")]
    pub gateway: Ipv4Addr,
    /// The switch's own MAC on the link (unicast, not the interface's); when absent, derived
    /// from this node's id and the Uplink's name, so it is stable across restarts.
    #[serde(
        default,
        deserialize_with = "de_opt_unicast_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<MacAddr>,
}

impl UplinkSpec {
    /// True when `addr` is one of the addresses the switch owns here.
    pub fn owns(&self, addr: Ipv4Addr) -> bool {
        self.addresses.iter().any(|a| a.addr() == addr)
    }
}

/// Status of the Uplink: the device as opened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UplinkStatus {
    /// The MAC the switch uses on the link (the spec's, or the derived one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The interface's MTU, read when it was opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// `pending`, `up` or `lost`.
    #[serde(default)]
    pub state: InterfaceState,
    /// Why the state is what it is, when not `up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The node's uplink (at most one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Uplink {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `Uplink`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: UplinkSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: UplinkStatus,
}

impl ResourceKind for Uplink {
    type Spec = UplinkSpec;
    type Status = UplinkStatus;

    const INFO: KindInfo = KindInfo {
        name: "Uplink",
        plural: "uplinks",
        aliases: &[],
        summary: "the node's way out (at most one): a host interface where the switch owns NAT and virtual-IP addresses",
        example: "\
apiVersion: vswitch/v1alpha1
kind: Uplink
metadata:
  name: wan
spec:
  interface: eth1
  addresses: [198.51.100.10/24, 198.51.100.11]
  gateway: 198.51.100.1
",
    };

    fn spec(&self) -> &UplinkSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut UplinkStatus {
        &mut self.status
    }

    /// The device's state (MAC, MTU, up or lost) is the controller's.
    fn carry_status(&mut self, old: Option<&Self>) {
        self.status = old.map(|o| o.status.clone()).unwrap_or_default();
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(check_uplink(cx.origin, cx.next, cx.batch, self));
    }

    fn dependants(state: &State, _name: &str) -> Vec<(&'static str, Vec<String>)> {
        vec![
            ("NATGateways", state.nat_gateways.keys().cloned().collect()),
            (
                "PortForwards",
                state.port_forwards.keys().cloned().collect(),
            ),
            ("VirtualIPs", state.virtual_ips.keys().cloned().collect()),
            (
                "Public LoadBalancers",
                state
                    .load_balancers
                    .values()
                    .filter(|b| b.spec.lb_type == LoadBalancerType::Public)
                    .map(|b| b.metadata.name.clone())
                    .collect(),
            ),
        ]
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "INTERFACE", "ADDRESSES", "GATEWAY", "MAC", "STATE"];
        if wide {
            columns.extend(["MTU", "LABELS", "MESSAGE"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let (spec, status) = (&self.spec, &self.status);
        let mut row = vec![
            self.metadata.name.clone(),
            spec.interface.clone(),
            cells(&spec.addresses),
            spec.gateway.to_string(),
            cells(status.mac.or(spec.mac).iter()),
            status.state.to_string(),
        ];
        if wide {
            row.extend([
                cells(status.mtu.iter()),
                labels_cell(&self.metadata),
                cell(status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}

/// The Uplink: one per node; interface not one of our ports nor loopback; addresses each
/// once; gateway on the link and not an owned address; no overlap with a Subnet; no address
/// removed while a resource outside the batch uses it.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
fn check_uplink(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    uplink: &Uplink,
) -> Result<(), ApiError> {
    let name = &uplink.metadata.name;
    let spec = &uplink.spec;
    if let Some(other) = next.uplinks.values().find(|u| u.metadata.name != *name) {
        return Err(origin.conflict(
            "metadata.name",
            format!(
                "Uplink {:?} already exists (interface {}); a node has one Uplink: change that one, or delete it first",
                other.metadata.name, other.spec.interface
            ),
        ));
    }
    if spec.interface == "lo" {
        return Err(origin.invalid(
            "spec.interface",
            "lo is the loopback interface; name the host interface that leads outside (e.g. eth1)",
        ));
    }
    let ours = next.network_interfaces.values().find(|nic| {
        nic.status.host_ifname.as_deref() == Some(spec.interface.as_str())
            || (nic.spec.kind == PortKind::Veth
                && crate::port::host_ifname(&nic.metadata.key()) == spec.interface)
    });
    if let Some(nic) = ours {
        return Err(origin.invalid(
            "spec.interface",
            format!(
                "{} is the host end of NetworkInterface {:?}, a port of this switch; name a host interface that leads outside (e.g. eth1)",
                spec.interface, nic.metadata.key()
            ),
        ));
    }
    let mut seen: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (index, address) in spec.addresses.iter().enumerate() {
        let field = format!("spec.addresses[{index}]");
        if let Some(first) = seen.insert(address.addr(), index) {
            return Err(origin.invalid(
                &field,
                format!(
                    "{} is also spec.addresses[{first}]; list each address once",
                    address.addr()
                ),
            ));
        }
        for subnet in next.subnets.values() {
            if routing::overlaps(subnet.spec.cidr, address.prefix()) {
                return Err(origin.invalid(
                    &field,
                    format!(
                        "{address} (link {}) overlaps Subnet {:?} ({}) of Network {:?}; the uplink's link and the Subnets must not overlap: use another address or prefix",
                        address.prefix(),
                        subnet.metadata.name,
                        subnet.spec.cidr,
                        subnet.spec.network
                    ),
                ));
            }
        }
    }
    let gateway = spec.gateway;
    if spec.owns(gateway) {
        return Err(origin.invalid(
            "spec.gateway",
            format!(
                "gateway {gateway} is one of the uplink's own addresses; write the address of the next hop toward the outside (a router on the link)"
            ),
        ));
    }
    let on_link = spec.addresses.iter().find(|a| {
        let prefix = a.prefix();
        prefix.contains(&gateway)
            && (prefix.prefix_len() >= 31
                || (gateway != prefix.network() && gateway != prefix.broadcast()))
    });
    if on_link.is_none() {
        return Err(origin.invalid(
            "spec.gateway",
            format!(
                "gateway {gateway} is not a host address inside the prefix of any of the uplink's addresses ({}); write the next hop on the link, or give an address its link's prefix (e.g. 198.51.100.10/24)",
                nat_rules::describe_addresses(uplink)
            ),
        ));
    }
    // Addresses in use by resources outside the batch must stay (those in the batch are
    // checked against the new addresses by their own checks).
    let outside: Vec<(Kind, String, Ipv4Addr)> = next
        .nat_gateways
        .values()
        .filter(|g| !batch.contains(Kind::NatGateway, &g.metadata.name))
        .flat_map(|g| {
            g.spec
                .ips
                .iter()
                .map(|ip| (Kind::NatGateway, g.metadata.name.clone(), *ip))
        })
        .chain(
            next.port_forwards
                .values()
                .filter(|f| !batch.contains(Kind::PortForward, &f.metadata.name))
                .map(|f| (Kind::PortForward, f.metadata.name.clone(), f.spec.ip)),
        )
        .chain(
            next.virtual_ips
                .values()
                .filter(|v| !batch.contains(Kind::VirtualIp, &v.metadata.name))
                .filter_map(|v| {
                    Some((
                        Kind::VirtualIp,
                        v.metadata.name.clone(),
                        nat_rules::virtual_ip_address(v)?,
                    ))
                }),
        )
        .collect();
    if let Some((kind, user, ip)) = outside.into_iter().find(|(_, _, ip)| !spec.owns(*ip)) {
        return Err(origin.conflict(
            "spec.addresses",
            format!(
                "{ip} is used by {kind} {user:?} but is not among the new addresses ({}); keep it, or change or delete {kind} {user:?} first",
                nat_rules::describe_addresses(uplink)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{apply, doc, forward, gateway, ip, nat_base, refused, vip};

    #[test]
    fn uplink_checks() {
        let state = nat_base();
        let other = doc(
            "Uplink",
            "wan2",
            "{interface: eth8, addresses: [203.0.113.5/24], gateway: 203.0.113.1}",
        );
        refused(
            &state,
            &other,
            409,
            "documents[0].metadata.name",
            &[
                "Uplink \"wan\" already exists (interface eth9)",
                "one Uplink",
            ],
        );
        let uplink = |spec: &str| doc("Uplink", "wan", spec);
        refused(
            &state,
            &uplink("{interface: lo, addresses: [198.51.100.10/24], gateway: 198.51.100.1}"),
            400,
            "documents[0].spec.interface",
            &["lo is the loopback interface"],
        );
        let host_end = crate::port::host_ifname("c2");
        refused(
            &state,
            &uplink(&format!(
                "{{interface: {host_end}, addresses: [198.51.100.10/24], gateway: 198.51.100.1}}"
            )),
            400,
            "documents[0].spec.interface",
            &[&host_end, "host end of NetworkInterface \"c2\""],
        );
        refused(
            &state,
            &uplink(
                "{interface: eth9, addresses: [198.51.100.10/24, 198.51.100.10], gateway: 198.51.100.1}",
            ),
            400,
            "documents[0].spec.addresses[1]",
            &["198.51.100.10 is also spec.addresses[0]"],
        );
        refused(
            &state,
            &uplink("{interface: eth9, addresses: [10.1.9.9/16], gateway: 10.1.0.254}"),
            400,
            "documents[0].spec.addresses[0]",
            &["10.1.9.9/16 (link 10.1.0.0/16) overlaps Subnet \"web\" (10.1.0.0/24)"],
        );
        refused(
            &state,
            &uplink("{interface: eth9, addresses: [198.51.100.10/24], gateway: 198.51.100.10}"),
            400,
            "documents[0].spec.gateway",
            &["gateway 198.51.100.10 is one of the uplink's own addresses"],
        );
        for gateway in ["203.0.113.1", "198.51.100.0", "198.51.100.255"] {
            refused(
                &state,
                &uplink(&format!(
                    "{{interface: eth9, addresses: [198.51.100.10/24, 198.51.100.11], gateway: {gateway}}}"
                )),
                400,
                "documents[0].spec.gateway",
                &[
                    &format!("gateway {gateway} is not a host address inside the prefix"),
                    "198.51.100.10/24, 198.51.100.11",
                ],
            );
        }
        // A gateway on a /31 link is fine.
        apply(
            &State::default(),
            &uplink("{interface: eth9, addresses: [192.0.2.0/31], gateway: 192.0.2.1}"),
        );
    }

    #[test]
    fn an_address_in_use_stays_on_the_uplink() {
        let state = apply(
            &nat_base(),
            &format!(
                "{}{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                forward("web", "198.51.100.12", "tcp", 8080, "c1"),
                vip("v", Some("198.51.100.11"))
            ),
        );
        let narrower = |addresses: &str| {
            doc(
                "Uplink",
                "wan",
                &format!("{{interface: eth9, addresses: [{addresses}], gateway: 198.51.100.1}}"),
            )
        };
        refused(
            &state,
            &narrower("198.51.100.11/24, 198.51.100.12"),
            409,
            "documents[0].spec.addresses",
            &[
                "198.51.100.10 is used by NATGateway \"gw\"",
                "change or delete",
            ],
        );
        refused(
            &state,
            &narrower("198.51.100.10/24, 198.51.100.12"),
            409,
            "documents[0].spec.addresses",
            &["198.51.100.11 is used by VirtualIP \"v\""],
        );
        refused(
            &state,
            &narrower("198.51.100.10/24, 198.51.100.11"),
            409,
            "documents[0].spec.addresses",
            &["198.51.100.12 is used by PortForward \"web\""],
        );
        // Moving the user in the same batch is fine.
        let moved = apply(
            &state,
            &format!(
                "{}{}",
                narrower("198.51.100.11/24, 198.51.100.12, 198.51.100.13"),
                gateway("gw", "blue", "198.51.100.13")
            ),
        );
        assert_eq!(moved.nat_gateways["gw"].spec.ips, [ip("198.51.100.13")]);
    }
}
