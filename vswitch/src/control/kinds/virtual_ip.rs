//! `VirtualIP`: a public uplink address mapped 1:1 to the NetworkInterface that uses it.

#[allow(unused_imports)]
use super::prelude::*;

/// The type of a VirtualIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum VirtualIpType {
    /// An address of the Uplink, reachable from outside.
    #[default]
    Public,
}

/// Spec of a VirtualIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualIpSpec {
    /// `Public`.
    #[serde(rename = "type")]
    pub ip_type: VirtualIpType,
    /// `IPv4` or `IPv6`: the family of the address. Default: `ip`'s family when given, else
    /// IPv4. An IPv6 VirtualIP takes an address of the Uplink's `spec.ipv6.addresses` and
    /// maps to its interface's IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<IpFamily>,
    /// The address: one of the Uplink's, not used by a NATGateway, PortForward or another
    /// VirtualIP. When absent, one such address of the family is allocated (and kept).
    #[serde(
        default,
        deserialize_with = "de_opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip: Option<IpAddr>,
}

impl VirtualIpSpec {
    /// The family: `ipFamily`, else `ip`'s, else IPv4.
    pub fn family(&self) -> IpFamily {
        self.ip_family
            .or(self.ip.map(IpFamily::of))
            .unwrap_or(IpFamily::IPv4)
    }
}

/// Status of a VirtualIP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualIpStatus {
    /// The address (the spec's, or the allocated one; persisted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// The NetworkInterface that references it (computed when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// A public address mapped 1:1 to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualIp {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `VirtualIP`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: VirtualIpSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: VirtualIpStatus,
}

impl ResourceKind for VirtualIp {
    type Spec = VirtualIpSpec;
    type Status = VirtualIpStatus;

    const INFO: KindInfo = KindInfo {
        name: "VirtualIP",
        plural: "virtualips",
        aliases: &["vip"],
        summary: "a public Uplink address mapped 1:1 to the NetworkInterface that references it",
        example: "\
apiVersion: vswitch/v1alpha1
kind: VirtualIP
metadata:
  name: db-public
spec:
  type: Public
  ipFamily: IPv4
",
    };

    fn spec(&self) -> &VirtualIpSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut VirtualIpStatus {
        &mut self.status
    }

    /// The allocated address is kept; the user is computed when read.
    fn carry_status(&mut self, old: Option<&Self>) {
        self.status.ip = old.and_then(|o| o.status.ip);
        self.status.interface = None;
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(check_virtual_ip(cx.origin, cx.next, cx.batch, self));
    }

    fn dependants(state: &State, name: &str) -> Vec<(&'static str, Vec<String>)> {
        vec![(
            "NetworkInterfaces using it",
            state
                .network_interfaces
                .values()
                .filter(|n| n.spec.virtual_ip_names().any(|v| v == name))
                .map(|n| n.metadata.key())
                .collect(),
        )]
    }

    fn observe(&mut self, state: &State, _view: &StatusView) {
        self.status.ip = nat_rules::virtual_ip_address(self);
        self.status.interface =
            nat_rules::virtual_ip_user(state, &self.metadata.name).map(|nic| nic.metadata.key());
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "TYPE", "FAMILY", "IP", "INTERFACE"];
        if wide {
            columns.push("LABELS");
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            self.metadata.name.clone(),
            json_text(&self.spec.ip_type),
            self.spec.family().to_string(),
            cells(self.status.ip.or(self.spec.ip).iter()),
            cell(self.status.interface.as_deref().unwrap_or_default()),
        ];
        if wide {
            row.push(labels_cell(&self.metadata));
        }
        row
    }
}

/// A VirtualIP: its address, when given, is of its family, the Uplink's and used by nothing
/// else; the Uplink has addresses of its family; the interface that uses it has an address
/// of its family.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
fn check_virtual_ip(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    vip: &VirtualIp,
) -> Result<(), ApiError> {
    let family = vip.spec.family();
    if let (Some(ip), Some(declared)) = (vip.spec.ip, vip.spec.ip_family) {
        if IpFamily::of(ip) != declared {
            return Err(origin.invalid(
                "spec.ip",
                format!(
                    "{ip} is an {} address but spec.ipFamily is {declared}; give an {declared} address, or change ipFamily",
                    IpFamily::of(ip)
                ),
            ));
        }
    }
    let uplink = nat_rules::owned_by_uplink(origin, next, "spec.ip", vip.spec.ip)?;
    if family == IpFamily::IPv6 && uplink.spec.ipv6.is_none() {
        return Err(origin.invalid(
            "spec.ipFamily",
            format!(
                "Uplink {:?} has no IPv6 addresses; add spec.ipv6.addresses to the Uplink, or use ipFamily IPv4",
                uplink.metadata.name
            ),
        ));
    }
    if let Some(nic) = nat_rules::virtual_ip_user(next, &vip.metadata.name) {
        if !nat_rules::has_family(next, batch, nic, family) {
            return Err(origin.invalid(
                "spec.ipFamily",
                format!(
                    "NetworkInterface {:?} uses this VirtualIP and has no {family} address; a VirtualIP maps to an address of its own family",
                    nic.metadata.key()
                ),
            ));
        }
        let sibling = nic
            .spec
            .virtual_ip_names()
            .filter(|name| **name != vip.metadata.name)
            .find(|name| {
                next.virtual_ips
                    .get(*name)
                    .is_some_and(|other| other.spec.family() == family)
            });
        if let Some(sibling) = sibling {
            return Err(origin.invalid(
                "spec.ipFamily",
                format!(
                    "NetworkInterface {:?} uses this VirtualIP and VirtualIP {sibling:?}, which is {family} too; an interface has at most one VirtualIP per family",
                    nic.metadata.key()
                ),
            ));
        }
    }
    if let Some(ip) = vip.spec.ip {
        if let Some(user) = nat_rules::blocking_user(
            next,
            batch,
            origin,
            (Kind::VirtualIp, &vip.metadata.name),
            ip,
            &[
                Kind::NatGateway,
                Kind::PortForward,
                Kind::VirtualIp,
                Kind::LoadBalancer,
            ],
        ) {
            return Err(origin.conflict(
                "spec.ip",
                format!(
                    "{ip} is already used by {user}; a VirtualIP's address serves nothing else: choose another address of the Uplink, or leave ip out to allocate one"
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
    fn virtual_ip_checks() {
        let state = apply(
            &nat_base(),
            &format!(
                "{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                forward("web", "198.51.100.12", "tcp", 8080, "c1")
            ),
        );
        refused(
            &state,
            &vip("v", Some("203.0.113.7")),
            400,
            "documents[0].spec.ip",
            &["203.0.113.7 is not an address of Uplink \"wan\""],
        );
        refused(
            &state,
            &vip("v", Some("198.51.100.10")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.10 is already used by NATGateway \"gw\""],
        );
        refused(
            &state,
            &vip("v", Some("198.51.100.12")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.12 is already used by PortForward \"web\""],
        );
        let state = apply(&state, &vip("v", Some("198.51.100.11")));
        refused(
            &state,
            &vip("w", Some("198.51.100.11")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.11 is already used by VirtualIP \"v\""],
        );
        // Every address is taken now: an allocation fails, naming the Uplink.
        refused(
            &state,
            &vip("w", None),
            409,
            "documents[0].spec.ip",
            &["no free IPv4 address left on Uplink \"wan\""],
        );
        let without_uplink = apply(
            &State::default(),
            "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: blue}\n",
        );
        refused(
            &without_uplink,
            &vip("v", None),
            400,
            "documents[0].spec.ip",
            &["no Uplink exists"],
        );
    }

    /// IPv6 VirtualIPs: allocated from the Uplink's IPv6 addresses, mapped to the interface's
    /// IPv6 address; the family is checked against the address, the Uplink and the interface;
    /// a dual-stack interface takes one VirtualIP per family.
    #[test]
    fn ipv6_virtual_ips() {
        use crate::control::testing::{doc, ip, nic};
        use crate::tables::snapshot::NetworkId;

        let v6 = |name: &str, extra: &str| {
            doc(
                "VirtualIP",
                name,
                &format!("{{type: Public, ipFamily: IPv6{extra}}}"),
            )
        };
        // Without IPv6 on the Uplink, an IPv6 VirtualIP has nothing to take.
        refused(
            &nat_base(),
            &v6("v6", ""),
            400,
            "documents[0].spec.ipFamily",
            &[
                "Uplink \"wan\" has no IPv6 addresses",
                "spec.ipv6.addresses",
            ],
        );
        let state = apply(
            &nat_base(),
            &format!(
                "{}{}",
                doc(
                    "Uplink",
                    "wan",
                    "{interface: eth9, addresses: [198.51.100.10/24, 198.51.100.11, 198.51.100.12], gateway: 198.51.100.1, ipv6: {addresses: ['2001:db8:1::10/64', '2001:db8:1::11'], gateway: 'fe80::1'}}",
                ),
                doc(
                    "Subnet",
                    "web",
                    "{network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1, ipv6: {cidr: 'fd00:1::/64'}}",
                ),
            ),
        );
        refused(
            &state,
            &doc(
                "VirtualIP",
                "v",
                "{type: Public, ipFamily: IPv4, ip: '2001:db8:1::10'}",
            ),
            400,
            "documents[0].spec.ip",
            &["2001:db8:1::10 is an IPv6 address but spec.ipFamily is IPv4"],
        );
        // Allocation takes the first free address of the family; the family follows `ip`.
        let state = apply(
            &state,
            &format!(
                "{}{}{}",
                v6("a6", ""),
                doc("VirtualIP", "b6", "{type: Public, ip: '2001:db8:1::11'}"),
                vip("a4", None)
            ),
        );
        let address = |state: &State, name: &str| state.virtual_ips[name].status.ip;
        assert_eq!(address(&state, "a6"), Some(ip("2001:db8:1::10")));
        assert_eq!(state.virtual_ips["b6"].spec.family(), IpFamily::IPv6);
        assert_eq!(address(&state, "a4"), Some(ip("198.51.100.10")));
        refused(
            &state,
            &v6("c6", ""),
            409,
            "documents[0].spec.ip",
            &[
                "no free IPv6 address left on Uplink \"wan\"",
                "spec.ipv6.addresses",
            ],
        );
        // An interface without an IPv6 address cannot take an IPv6 VirtualIP.
        refused(
            &state,
            &doc(
                "NetworkInterface",
                "d1",
                "{subnet: db, netns: d1, virtualIP: a6}",
            ),
            400,
            "documents[0].spec.virtualIP",
            &["VirtualIP \"a6\" is IPv6 but the interface has no IPv6 address"],
        );
        refused(
            &state,
            &nic("c1", ", ipFamilies: [IPv4], virtualIPs: [a4, a6]"),
            400,
            "documents[0].spec.virtualIPs[1]",
            &["has no IPv6 address"],
        );
        refused(
            &state,
            &nic("c1", ", virtualIPs: [a6, b6]"),
            400,
            "documents[0].spec.virtualIPs[1]",
            &[
                "VirtualIP \"b6\" is IPv6, as \"a6\" is",
                "one VirtualIP per family",
            ],
        );
        refused(
            &state,
            &nic("c1", ", virtualIP: a4, virtualIPs: [a6]"),
            400,
            "documents[0].spec.virtualIPs",
            &["not both"],
        );
        // A dual-stack interface with one VirtualIP per family: both map to it.
        let state = apply(&state, &nic("c1", ", virtualIPs: [a4, a6]"));
        refused(
            &state,
            &v6("a4", ""),
            400,
            "documents[0].spec.ipFamily",
            &["uses this VirtualIP and VirtualIP \"a6\", which is IPv6 too"],
        );
        refused(
            &state,
            &nic("c2", ", kind: veth, virtualIPs: [b6, a4]"),
            409,
            "documents[0].spec.virtualIPs[1]",
            &["VirtualIP \"a4\" is already used by NetworkInterface \"c1\""],
        );
        // Changing the family of a VirtualIP in use is checked against its interface.
        let with_d4 = apply(
            &state,
            &format!(
                "{}{}",
                vip("d4", None),
                doc(
                    "NetworkInterface",
                    "d1",
                    "{subnet: db, netns: d1, virtualIP: d4}"
                )
            ),
        );
        refused(
            &with_d4,
            &v6("d4", ""),
            400,
            "documents[0].spec.ipFamily",
            &["NetworkInterface \"d1\" uses this VirtualIP and has no IPv6 address"],
        );
        let ids = [
            ("blue".to_string(), NetworkId(4)),
            ("red".to_string(), NetworkId(9)),
        ]
        .into_iter()
        .collect();
        let rules = nat_rules::compile(&state, &ids);
        let c1 = &state.network_interfaces["c1"];
        let c1_v4 = IpAddr::V4(c1.status.ips[0].addr());
        let c1_v6 = IpAddr::V6(c1.status.ipv6.expect("dual-stack").addr());
        let blue = ::nat::Zone(4);
        assert_eq!(rules.virtual_ip_of(blue, c1_v4), Some(ip("198.51.100.10")));
        assert_eq!(rules.virtual_ip_of(blue, c1_v6), Some(ip("2001:db8:1::10")));
        let vip = &state.virtual_ips["a6"];
        let mut observed = vip.clone();
        observed.observe(&state, &StatusView::default());
        assert_eq!(observed.status.interface.as_deref(), Some("c1"));
        let mut shown = c1.clone();
        shown.observe(&state, &StatusView::default());
        assert_eq!(
            shown.status.virtual_ips,
            [ip::<IpAddr>("198.51.100.10"), ip("2001:db8:1::10")]
        );
        assert!(c1.status.virtual_ips.is_empty(), "computed, never stored");
        // Deleting the Uplink's IPv6 while a VirtualIP holds one of its addresses is refused.
        refused(
            &state,
            &doc(
                "Uplink",
                "wan",
                "{interface: eth9, addresses: [198.51.100.10/24, 198.51.100.11, 198.51.100.12], gateway: 198.51.100.1}",
            ),
            409,
            "documents[0].spec.ipv6.addresses",
            &["2001:db8:1::10 is used by VirtualIP \"a6\""],
        );
    }
}
