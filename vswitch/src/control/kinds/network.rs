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
        errors.check(validate::check_network(
            cx.origin, cx.current, cx.next, self,
        ));
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
