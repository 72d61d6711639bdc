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
        errors.check(check_route(cx.origin, cx.next, self));
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

/// A Route: its Network exists, its next hop is a router's address in one of the Network's
/// Subnets, and its destination is neither a connected prefix nor another Route's.
fn check_route(origin: &Origin, next: &State, route: &Route) -> Result<(), ApiError> {
    let spec = &route.spec;
    let network = &spec.network;
    let destination = spec.destination;
    let hop = spec.next_hop;
    if !next.networks.contains_key(network) {
        return Err(origin.invalid(
            "spec.network",
            format!(
                "Network {network:?} does not exist; create it first (it may be in the same input)"
            ),
        ));
    }
    let subnets = routing::describe_subnets(next, network);
    let Some(subnet) = routing::subnets_of(next, network)
        .into_iter()
        .find(|s| s.spec.cidr.contains(&hop))
    else {
        return Err(origin.invalid(
            "spec.nextHop",
            format!(
                "nextHop {hop} is not inside any Subnet of Network {network:?} (Subnets: {subnets}); write the address of a router in one of them"
            ),
        ));
    };
    let cidr = subnet.spec.cidr;
    let reserved = if hop == subnet.spec.gateway {
        Some("the gateway (the switch itself)")
    } else if hop == cidr.network() {
        Some("the network address")
    } else if hop == cidr.broadcast() {
        Some("the broadcast address")
    } else {
        None
    };
    if let Some(what) = reserved {
        return Err(origin.invalid(
            "spec.nextHop",
            format!(
                "nextHop {hop} is {what} of Subnet {:?} ({cidr}); write the address of a router in a Subnet of Network {network:?} (Subnets: {subnets}), not a gateway, network or broadcast address",
                subnet.metadata.name
            ),
        ));
    }
    if let Some(connected) = routing::subnets_of(next, network)
        .into_iter()
        .find(|s| s.spec.cidr == destination)
    {
        return Err(origin.invalid(
            "spec.destination",
            format!(
                "{destination} is the CIDR of Subnet {:?} of Network {network:?}: its connected route takes precedence, so this Route would never be used; route a more specific prefix, or another one",
                connected.metadata.name
            ),
        ));
    }
    let twin = next.routes.values().find(|other| {
        other.metadata.name != route.metadata.name
            && other.spec.network == *network
            && other.spec.destination == destination
    });
    if let Some(twin) = twin {
        return Err(origin.conflict(
            "spec.destination",
            format!(
                "Route {:?} of Network {network:?} already has destination {destination}; a Network has one route per destination: change that Route instead",
                twin.metadata.name
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{apply, base, network, refusal, route, subnet};

    #[test]
    fn routes_are_checked() {
        let current = apply(&base(), &subnet("db", "blue", "10.1.1.0/24", "10.1.1.1"));
        let cases = [
            (
                route("r", "green", "10.9.0.0/16", "10.1.0.9"),
                "spec.network: Network \"green\" does not exist; create it first",
            ),
            (
                route("r", "blue", "10.9.0.0/16", "10.7.0.9"),
                "spec.nextHop: nextHop 10.7.0.9 is not inside any Subnet of Network \"blue\" \
                 (Subnets: db 10.1.1.0/24, web 10.1.0.0/24); write the address of a router in one of them",
            ),
            (
                route("r", "blue", "10.9.0.0/16", "10.1.0.1"),
                "spec.nextHop: nextHop 10.1.0.1 is the gateway (the switch itself) of Subnet \"web\" \
                 (10.1.0.0/24); write the address of a router in a Subnet of Network \"blue\" \
                 (Subnets: db 10.1.1.0/24, web 10.1.0.0/24), not a gateway, network or broadcast address",
            ),
            (
                route("r", "blue", "10.9.0.0/16", "10.1.1.0"),
                "nextHop 10.1.1.0 is the network address of Subnet \"db\"",
            ),
            (
                route("r", "blue", "10.9.0.0/16", "10.1.1.255"),
                "nextHop 10.1.1.255 is the broadcast address of Subnet \"db\"",
            ),
            (
                route("r", "blue", "10.1.1.0/24", "10.1.0.9"),
                "spec.destination: 10.1.1.0/24 is the CIDR of Subnet \"db\" of Network \"blue\": \
                 its connected route takes precedence, so this Route would never be used",
            ),
            (
                route("r", "blue", "10.9.0.1/16", "10.1.0.9"),
                "spec.destination: invalid CIDR \"10.9.0.1/16\": host bits are set; the network is 10.9.0.0/16",
            ),
            (
                route("r", "blue", "10.9.0.0/16", "ten"),
                "spec.nextHop: invalid IPv4 address \"ten\"",
            ),
        ];
        for (text, want) in cases {
            let err = refusal(&current, &text);
            let msg = err.to_string();
            assert!(msg.starts_with("document 1 (Route \"r\"): "), "{msg}");
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
            assert_eq!(err.status(), 400, "{msg}");
        }
        // More specific than a connected prefix, a default route, a /32: fine.
        let text = format!(
            "{}{}{}",
            route("half", "blue", "10.1.1.128/25", "10.1.0.9"),
            route("default", "blue", "0.0.0.0/0", "10.1.0.9"),
            route("host", "blue", "192.168.1.1/32", "10.1.1.9"),
        );
        let state = apply(&current, &text);
        assert_eq!(state.routes.len(), 3);
        // One route per destination.
        let err = refusal(&state, &route("again", "blue", "0.0.0.0/0", "10.1.1.7"));
        assert_eq!(err.status(), 409);
        assert_eq!(
            err.to_string(),
            "document 1 (Route \"again\"): spec.destination: Route \"default\" of Network \"blue\" \
             already has destination 0.0.0.0/0; a Network has one route per destination: change \
             that Route instead"
        );
        // Changing a Route in place is fine.
        let state = apply(&state, &route("default", "blue", "0.0.0.0/0", "10.1.1.7"));
        assert_eq!(
            state.routes["default"].spec.next_hop,
            Ipv4Addr::new(10, 1, 1, 7)
        );
        // A Route may come before its Network and Subnet in one input.
        let text = format!(
            "{}{}{}",
            route("r", "green", "0.0.0.0/0", "10.8.0.9"),
            network("green", ""),
            subnet("g", "green", "10.8.0.0/24", "10.8.0.1")
        );
        assert_eq!(apply(&State::default(), &text).routes.len(), 1);
    }
}
