//! `Network`: an isolated L3 domain (a VRF), with its peerings.

#[allow(unused_imports)]
use super::prelude::*;

/// One side of a peering between two Networks. Traffic flows only when both Networks list
/// each other (mutual acceptance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peering {
    /// The peering's name, unique within this Network's peerings.
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    /// The peer Network (it may not exist yet: the peering is then `Pending`).
    #[serde(deserialize_with = "de_name")]
    pub network: String,
}

/// Spec of a Network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// Networks this one accepts traffic from and routes to, once they list it too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peerings: Vec<Peering>,
    /// How the Network's traffic crosses the Uplink; absent: through NAT only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<NetworkUplink>,
}

impl NetworkSpec {
    /// True when the Network is routed through the Uplink untranslated.
    pub fn is_routed(&self) -> bool {
        self.uplink
            .as_ref()
            .is_some_and(|uplink| uplink.mode == UplinkMode::Routed)
    }
}

/// How a Network's traffic crosses the Uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum UplinkMode {
    /// Through NAT only (a NATGateway, VirtualIPs, PortForwards): the default.
    #[default]
    #[serde(rename = "NAT")]
    Nat,
    /// As a plain router: the Network's traffic to `destinations` leaves untranslated, and
    /// traffic from outside to its Subnets' addresses comes in (the outside routes the
    /// Subnets' CIDRs to an address of the Uplink).
    Routed,
}

impl fmt::Display for UplinkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UplinkMode::Nat => "NAT",
            UplinkMode::Routed => "Routed",
        })
    }
}

/// A destination prefix of `spec.uplink.destinations`: canonical, as a Route's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutedDestination(pub Ipv4Net);

impl Serialize for RoutedDestination {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoutedDestination {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_route_cidr(&text)
            .map(RoutedDestination)
            .map_err(D::Error::custom)
    }
}

/// `spec.uplink` of a Network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkUplink {
    /// `NAT` (the default) or `Routed`.
    #[serde(default)]
    pub mode: UplinkMode,
    /// With `Routed`: the destinations reached untranslated (the rest goes through NAT, when
    /// the Network has it), and the only sources accepted from outside. Empty or absent:
    /// every address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<RoutedDestination>,
}

/// Whether a peering carries traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PeeringState {
    /// Only this side lists the peering (or the peer Network does not exist): no routes.
    #[default]
    Pending,
    /// Both Networks list each other: each has routes to the other's Subnets.
    Ready,
}

impl fmt::Display for PeeringState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeeringState::Pending => "Pending",
            PeeringState::Ready => "Ready",
        })
    }
}

/// Status of one peering (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeeringStatus {
    /// The peering's name.
    pub name: String,
    /// The peer Network.
    pub network: String,
    /// `Pending` or `Ready`.
    pub state: PeeringState,
    /// Why it is `Pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Status of a Network (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkStatus {
    /// Names of the Subnets of this Network.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Each peering of the spec, with its state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peerings: Vec<PeeringStatus>,
}

/// An isolated L3 domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `Network`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    #[serde(default)]
    pub spec: NetworkSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: NetworkStatus,
}

impl ResourceKind for Network {
    type Spec = NetworkSpec;
    type Status = NetworkStatus;

    const INFO: KindInfo = KindInfo {
        name: "Network",
        plural: "networks",
        aliases: &["net"],
        summary: "an isolated L3 domain (a VRF); Networks reach each other only through peerings both sides list",
        example: "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata:
  name: blue
spec:
  peerings:
    - name: to-red
      network: red
",
    };

    fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut NetworkStatus {
        &mut self.status
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(check_peerings(cx.origin, cx.current, cx.next, self));
        check_uplink_mode(cx.origin, cx.next, self, errors);
    }

    fn dependants(state: &State, name: &str) -> Vec<(&'static str, Vec<String>)> {
        // Networks that peer with this one are not dependants: their peerings go Pending.
        vec![
            (
                "NATGateways",
                state
                    .nat_gateways
                    .values()
                    .filter(|g| g.spec.network == name)
                    .map(|g| g.metadata.name.clone())
                    .collect(),
            ),
            (
                "Subnets",
                routing::subnets_of(state, name)
                    .into_iter()
                    .map(|s| s.metadata.name.clone())
                    .collect(),
            ),
            (
                "Routes",
                state
                    .routes
                    .values()
                    .filter(|r| r.spec.network == name)
                    .map(|r| r.metadata.name.clone())
                    .collect(),
            ),
            (
                "LoadBalancers",
                state
                    .load_balancers
                    .values()
                    .filter(|b| b.spec.network == name)
                    .map(|b| b.metadata.name.clone())
                    .collect(),
            ),
        ]
    }

    fn observe(&mut self, state: &State, _view: &StatusView) {
        self.status.subnets = routing::subnets_of(state, &self.metadata.name)
            .into_iter()
            .map(|s| s.metadata.name.clone())
            .collect();
        self.status.peerings = routing::peering_status(state, self);
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "SUBNETS", "PEERINGS", "UPLINK"];
        if wide {
            columns.push("LABELS");
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        // With state from the status; from the spec, without, when there is no status.
        let peerings = if self.status.peerings.is_empty() {
            cells(self.spec.peerings.iter().map(|p| &p.network))
        } else {
            cells(
                self.status
                    .peerings
                    .iter()
                    .map(|p| format!("{}:{}", p.network, p.state)),
            )
        };
        let mut row = vec![
            self.metadata.name.clone(),
            cells(&self.status.subnets),
            peerings,
            uplink_cell(self.spec.uplink.as_ref()),
        ];
        if wide {
            row.push(labels_cell(&self.metadata));
        }
        row
    }

    fn describe_tables(&self) -> Vec<DescribeTable> {
        let rows = if self.status.peerings.is_empty() {
            self.spec
                .peerings
                .iter()
                .map(|p| vec![p.name.clone(), p.network.clone(), cell(""), cell("")])
                .collect()
        } else {
            self.status
                .peerings
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.network.clone(),
                        p.state.to_string(),
                        cell(p.message.as_deref().unwrap_or_default()),
                    ]
                })
                .collect()
        };
        vec![DescribeTable {
            replaces: "peerings",
            title: "Peerings",
            listing: Listing {
                headers: vec!["NAME", "NETWORK", "STATE", "MESSAGE"],
                rows,
            },
        }]
    }
}

/// The UPLINK cell: `NAT`, `Routed`, or `Routed:10.0.0.0/8,...` with destinations.
fn uplink_cell(uplink: Option<&NetworkUplink>) -> String {
    match uplink {
        None => UplinkMode::Nat.to_string(),
        Some(uplink) if uplink.destinations.is_empty() => uplink.mode.to_string(),
        Some(uplink) => format!(
            "{}:{}",
            uplink.mode,
            cells(uplink.destinations.iter().map(|d| d.0))
        ),
    }
}

/// A routed Network's Subnet that overlaps a Subnet of another routed Network: traffic
/// from outside to the overlap could go to either.
pub(crate) fn routed_overlap<'a>(
    next: &'a State,
    network: &str,
) -> Option<(&'a Subnet, &'a Subnet)> {
    let routed = |name: &str| next.networks.get(name).is_some_and(|n| n.spec.is_routed());
    if !routed(network) {
        return None;
    }
    let mine = routing::subnets_of(next, network);
    next.subnets
        .values()
        .filter(|theirs| theirs.spec.network != network && routed(&theirs.spec.network))
        .find_map(|theirs| {
            mine.iter()
                .find(|m| routing::overlaps(m.spec.cidr, theirs.spec.cidr))
                .map(|m| (*m, theirs))
        })
}

/// The message for [`routed_overlap`].
pub(crate) fn routed_overlap_message(mine: &Subnet, theirs: &Subnet) -> String {
    format!(
        "Subnet {:?} ({}) of Network {:?} overlaps Subnet {:?} ({}) of Network {:?}, and both Networks are routed through the Uplink: traffic from outside to the overlap could go to either; renumber one of the Subnets, or set one Network's spec.uplink.mode to NAT",
        mine.metadata.name,
        mine.spec.cidr,
        mine.spec.network,
        theirs.metadata.name,
        theirs.spec.cidr,
        theirs.spec.network
    )
}

/// A new Subnet of a routed Network must not overlap a Subnet of another routed Network
/// (called by the Subnet's checks; the Network's catch a mode change).
///
/// # Errors
/// [`ApiError`] on `origin`'s `spec.cidr`.
pub(crate) fn check_routed_subnet(
    origin: &Origin,
    next: &State,
    subnet: &Subnet,
) -> Result<(), ApiError> {
    let routed = |name: &str| next.networks.get(name).is_some_and(|n| n.spec.is_routed());
    if !routed(&subnet.spec.network) {
        return Ok(());
    }
    let clash = next.subnets.values().find(|theirs| {
        theirs.spec.network != subnet.spec.network
            && routed(&theirs.spec.network)
            && routing::overlaps(subnet.spec.cidr, theirs.spec.cidr)
    });
    match clash {
        Some(theirs) => Err(origin.invalid("spec.cidr", routed_overlap_message(subnet, theirs))),
        None => Ok(()),
    }
}

/// `spec.uplink`: destinations only with `Routed`, each once; a routed Network's Subnets
/// disjoint from every other routed Network's.
fn check_uplink_mode(origin: &Origin, next: &State, network: &Network, errors: &mut Errors) {
    let Some(uplink) = &network.spec.uplink else {
        return;
    };
    if uplink.mode == UplinkMode::Nat && !uplink.destinations.is_empty() {
        errors.push(origin.invalid(
            "spec.uplink.destinations",
            "destinations apply only to mode Routed (with NAT, every destination outside the Network goes through NAT); set mode: Routed, or remove destinations",
        ));
    }
    let mut seen: BTreeMap<Ipv4Net, usize> = BTreeMap::new();
    for (index, destination) in uplink.destinations.iter().enumerate() {
        if let Some(first) = seen.insert(destination.0, index) {
            errors.push(origin.invalid(
                &format!("spec.uplink.destinations[{index}]"),
                format!(
                    "{} is also spec.uplink.destinations[{first}]; list each destination once",
                    destination.0
                ),
            ));
        }
    }
    if let Some((mine, theirs)) = routed_overlap(next, &network.metadata.name) {
        errors.push(origin.invalid("spec.uplink.mode", routed_overlap_message(mine, theirs)));
    }
}

/// A Network's peerings: not itself, each name and peer once, and no peering this batch makes
/// `Ready` between Networks whose Subnets overlap.
fn check_peerings(
    origin: &Origin,
    current: &State,
    next: &State,
    network: &Network,
) -> Result<(), ApiError> {
    let name = &network.metadata.name;
    let peerings = &network.spec.peerings;
    let ready_before = routing::ready_peers(current, name);
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut peers: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, peering) in peerings.iter().enumerate() {
        let field = format!("spec.peerings[{index}]");
        let peer = &peering.network;
        if peer == name {
            return Err(origin.invalid(
                &format!("{field}.network"),
                format!("Network {name:?} cannot peer with itself; name another Network"),
            ));
        }
        if let Some(first) = names.insert(peering.name.as_str(), index) {
            return Err(origin.invalid(
                &format!("{field}.name"),
                format!(
                    "peering name {:?} is also used by spec.peerings[{first}]; give each peering its own name",
                    peering.name
                ),
            ));
        }
        if let Some(first) = peers.insert(peer.as_str(), index) {
            return Err(origin.invalid(
                &format!("{field}.network"),
                format!(
                    "Network {peer:?} is already listed by spec.peerings[{first}] ({:?}); list each peer Network once",
                    peerings[first].name
                ),
            ));
        }
        let newly_ready =
            routing::is_ready(next, name, peering) && !ready_before.contains(&peer.as_str());
        if !newly_ready {
            continue;
        }
        if let Some((mine, theirs)) = routing::first_overlap(next, name, peer) {
            return Err(origin.invalid(
                &format!("{field}.network"),
                format!(
                    "cannot peer Network {name:?} with Network {peer:?}: Subnet {:?} ({}) of Network {name:?} overlaps Subnet {:?} ({}) of Network {peer:?}; peered Networks must not have overlapping CIDRs: renumber one of the Subnets, or remove the peering",
                    mine.metadata.name, mine.spec.cidr, theirs.metadata.name, theirs.spec.cidr
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{
        apply, base, blue_and_red, doc, network, refusal, refused, subnet, try_plan,
    };
    use crate::control::validate::check_delete;

    #[test]
    fn peering_shape_is_checked() {
        let cases = [
            (
                "{name: me, network: blue}",
                "spec.peerings[0].network: Network \"blue\" cannot peer with itself; name another Network",
            ),
            (
                "{name: p, network: red}, {name: p, network: green}",
                "spec.peerings[1].name: peering name \"p\" is also used by spec.peerings[0]; give each peering its own name",
            ),
            (
                "{name: p, network: red}, {name: q, network: red}",
                "spec.peerings[1].network: Network \"red\" is already listed by spec.peerings[0] (\"p\"); list each peer Network once",
            ),
        ];
        for (peerings, want) in cases {
            let err = refusal(&base(), &network("blue", peerings));
            let msg = err.to_string();
            assert!(msg.starts_with("document 1 (Network \"blue\"): "), "{msg}");
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
            assert_eq!(err.status(), 400);
        }
        // A peer that does not exist yet is fine (Pending).
        let state = apply(&base(), &network("blue", "{name: p, network: later}"));
        assert_eq!(state.networks["blue"].spec.peerings[0].network, "later");
    }

    #[test]
    fn peering_overlapping_networks_is_refused_naming_both_cidrs() {
        let current = blue_and_red("10.1.0.0/16", "10.1.9.1");
        // One side alone is Pending: no overlap check yet.
        let one = apply(&current, &network("blue", "{name: to-red, network: red}"));
        // The other side would make it Ready.
        let err = refusal(&one, &network("red", "{name: to-blue, network: blue}"));
        assert_eq!(
            err.to_string(),
            "document 1 (Network \"red\"): spec.peerings[0].network: cannot peer Network \"red\" \
             with Network \"blue\": Subnet \"r1\" (10.1.0.0/16) of Network \"red\" overlaps Subnet \
             \"web\" (10.1.0.0/24) of Network \"blue\"; peered Networks must not have overlapping \
             CIDRs: renumber one of the Subnets, or remove the peering"
        );
        assert_eq!(err.field(), Some("documents[0].spec.peerings[0].network"));
        // Both sides in one batch: each document is blamed, the first first.
        let both = format!(
            "{}{}",
            network("blue", "{name: to-red, network: red}"),
            network("red", "{name: to-blue, network: blue}")
        );
        let msg = refusal(&current, &both).causes()[0].to_string();
        assert!(
            msg.starts_with("document 1 (Network \"blue\"): spec.peerings[0].network: cannot peer Network \"blue\" with Network \"red\": Subnet \"web\" (10.1.0.0/24) of Network \"blue\" overlaps Subnet \"r1\" (10.1.0.0/16)"),
            "{msg}"
        );
        // Without overlap, both become Ready.
        let fine = blue_and_red("10.2.0.0/24", "10.2.0.1");
        let state = apply(&fine, &both);
        assert_eq!(routing::ready_peers(&state, "blue"), ["red"]);
    }

    #[test]
    fn uplink_mode_is_checked_with_field_paths() {
        let current = blue_and_red("10.2.0.0/24", "10.2.0.1");
        let blue = |uplink: &str| doc("Network", "blue", &format!("{{uplink: {uplink}}}"));
        // Routed, with and without destinations; NAT spelled out.
        let state = apply(&current, &blue("{mode: Routed}"));
        assert!(state.networks["blue"].spec.is_routed());
        let state = apply(
            &current,
            &blue("{mode: Routed, destinations: [10.0.0.0/8, 0.0.0.0/0]}"),
        );
        assert_eq!(
            state.networks["blue"]
                .spec
                .uplink
                .as_ref()
                .unwrap()
                .destinations[1]
                .0,
            "0.0.0.0/0".parse::<Ipv4Net>().unwrap()
        );
        assert!(
            !apply(&current, &blue("{mode: NAT}")).networks["blue"]
                .spec
                .is_routed()
        );
        refused(
            &current,
            &blue("{mode: Bridged}"),
            400,
            "documents[0].spec.uplink.mode",
            &["Bridged"],
        );
        refused(
            &current,
            &blue("{mode: Routed, destinations: [10.0.0.1/8]}"),
            400,
            "documents[0].spec.uplink.destinations[0]",
            &["10.0.0.1/8"],
        );
        refused(
            &current,
            &blue("{mode: Routed, gateway: 1.2.3.4}"),
            400,
            "documents[0].spec.uplink.gateway",
            &["unknown field `gateway`"],
        );
        // Every problem of the document at once, each with its path.
        let err = refusal(
            &current,
            &blue("{mode: NAT, destinations: [10.0.0.0/8, 10.0.0.0/8]}"),
        );
        let causes: Vec<String> = err.causes().iter().map(ToString::to_string).collect();
        assert_eq!(causes.len(), 2, "{causes:?}");
        assert!(
            causes[0].contains("spec.uplink.destinations: destinations apply only to mode Routed"),
            "{causes:?}"
        );
        assert!(
            causes[1].contains(
                "spec.uplink.destinations[1]: 10.0.0.0/8 is also spec.uplink.destinations[0]"
            ),
            "{causes:?}"
        );
        // The refusal is whole: the state is unchanged.
        assert!(try_plan(&current, &blue("{mode: NAT, destinations: [10.0.0.0/8]}")).is_err());
        assert_eq!(current.networks["blue"].spec.uplink, None);
    }

    #[test]
    fn routed_networks_must_not_overlap() {
        // red's Subnet r1 (10.1.0.0/16) overlaps blue's web (10.1.0.0/24).
        let current = blue_and_red("10.1.0.0/16", "10.1.9.1");
        let routed = |name: &str| doc("Network", name, "{uplink: {mode: Routed}}");
        // One routed Network alone is fine (overlapping a Network that is not routed: they
        // are VRFs); both is not.
        let one = apply(&current, &routed("blue"));
        refused(
            &one,
            &routed("red"),
            400,
            "documents[0].spec.uplink.mode",
            &[
                "Subnet \"r1\" (10.1.0.0/16) of Network \"red\" overlaps Subnet \"web\" (10.1.0.0/24) of Network \"blue\"",
                "routed through the Uplink",
            ],
        );
        // Nor may a new Subnet of a routed Network overlap another routed Network's.
        let fine = apply(
            &blue_and_red("10.2.0.0/24", "10.2.0.1"),
            &format!("{}{}", routed("blue"), routed("red")),
        );
        refused(
            &fine,
            &subnet("r2", "red", "10.1.0.128/25", "10.1.0.129"),
            400,
            "documents[0].spec.cidr",
            &["Subnet \"r2\" (10.1.0.128/25) of Network \"red\" overlaps Subnet \"web\""],
        );
    }

    #[test]
    fn a_peered_network_may_be_deleted() {
        let current = blue_and_red("10.2.0.0/24", "10.2.0.1");
        let peered = apply(
            &current,
            &format!(
                "{}{}",
                network("blue", "{name: to-red, network: red}"),
                network("red", "{name: to-blue, network: blue}")
            ),
        );
        let mut without_subnet = peered.clone();
        without_subnet.subnets.remove("r1");
        assert!(check_delete(&without_subnet, Kind::Network, "red").is_ok());
    }
}
