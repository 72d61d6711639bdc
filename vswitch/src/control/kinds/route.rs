//! `Route`: a static route in a Network's table, through a router on one of its Subnets.

#[allow(unused_imports)]
use super::prelude::*;

/// Spec of a Route: traffic of `network` toward `destination` goes to the router at
/// `nextHop`, on the Subnet that contains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// The Network whose table gets the route.
    #[serde(deserialize_with = "de_name")]
    pub network: String,
    /// The destination prefix, canonical (host bits zero); `0.0.0.0/0` is a default route.
    #[serde(deserialize_with = "de_route_cidr")]
    pub destination: Ipv4Net,
    /// The router: a host address inside one of the Network's Subnets, not its gateway.
    #[serde(deserialize_with = "de_ipv4")]
    pub next_hop: Ipv4Addr,
}

/// Whether a Route is in its Network's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RouteState {
    /// Not compiled (see `message`).
    #[default]
    Pending,
    /// In the table: traffic to the destination goes to the next hop.
    Ready,
    /// Another route with the same prefix takes precedence (a peering's); see `message`.
    Shadowed,
}

impl fmt::Display for RouteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteState::Pending => "Pending",
            RouteState::Ready => "Ready",
            RouteState::Shadowed => "Shadowed",
        })
    }
}

/// Status of a Route (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteStatus {
    /// The egress Subnet: the one that contains the next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// `Ready`, `Shadowed` or `Pending`.
    #[serde(default)]
    pub state: RouteState,
    /// Why the state is not `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `Route`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: RouteSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: RouteStatus,
}

impl ResourceKind for Route {
    type Spec = RouteSpec;
    type Status = RouteStatus;

    const INFO: KindInfo = KindInfo {
        name: "Route",
        plural: "routes",
        aliases: &[],
        summary: "a static route in a Network's table, through a router on one of its Subnets",
        example: "\
apiVersion: vswitch/v1alpha1
kind: Route
metadata:
  name: lab
spec:
  network: blue
  destination: 192.168.50.0/24
  nextHop: 10.1.0.254
",
    };

    fn spec(&self) -> &RouteSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut RouteStatus {
        &mut self.status
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(validate::check_route(cx.origin, cx.next, self));
    }

    fn observe(&mut self, state: &State, _view: &StatusView) {
        self.status = routing::route_status(state, self);
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "NETWORK", "DESTINATION", "NEXTHOP", "STATE"];
        if wide {
            columns.extend(["SUBNET", "LABELS", "MESSAGE"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            self.metadata.name.clone(),
            self.spec.network.clone(),
            self.spec.destination.to_string(),
            self.spec.next_hop.to_string(),
            self.status.state.to_string(),
        ];
        if wide {
            row.extend([
                cell(self.status.subnet.as_deref().unwrap_or_default()),
                labels_cell(&self.metadata),
                cell(self.status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}
