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
        let mut columns = vec!["NAME", "SUBNETS", "PEERINGS"];
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
    use crate::control::testing::{apply, base, blue_and_red, network, refusal};
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
