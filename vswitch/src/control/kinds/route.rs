//! `Route`: a static route in a Network's table, through a router on one of its Subnets.

#[allow(unused_imports)]
use super::prelude::*;

/// Spec of a Route: traffic of `network` toward `destination` goes to the router at
/// `nextHop`, on the Subnet that contains it. Either family: an IPv6 destination takes an
/// IPv6 next hop inside a dual-stack Subnet's IPv6 prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// The Network whose table gets the route.
    #[serde(deserialize_with = "de_name")]
    pub network: String,
    /// The destination prefix, canonical (host bits zero); `0.0.0.0/0` or `::/0` is a
    /// default route.
    #[serde(deserialize_with = "de_route_prefix")]
    pub destination: IpNet,
    /// The router: a host address inside one of the Network's Subnets (of the destination's
    /// family), not its gateway.
    #[serde(deserialize_with = "de_ip")]
    pub next_hop: IpAddr,
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
    /// The egress Uplink, for a route of a routed Network through a router on the Uplink's
    /// link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
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
        errors.check(check_route(cx, self));
    }

    fn observe(&mut self, state: &State, view: &StatusView) {
        let tables = view.routing.get_or_init(|| routing::Tables::of(state));
        let winner = tables.winner(&self.spec.network, self.spec.destination);
        self.status = routing::route_status_with(state, self, winner);
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
            let egress = match (&self.status.subnet, &self.status.uplink) {
                (Some(subnet), _) => subnet.clone(),
                (None, Some(uplink)) => format!("uplink:{uplink}"),
                (None, None) => String::new(),
            };
            row.extend([
                cell(&egress),
                labels_cell(&self.metadata),
                cell(self.status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}

/// A Route: its Network exists, its next hop is a router's address (of the destination's
/// family) in one of the Network's Subnets, and its destination is neither a connected prefix
/// nor another Route's.
fn check_route(cx: &CheckContext<'_>, route: &Route) -> Result<(), ApiError> {
    let (origin, next) = (cx.origin, cx.next);
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
    let (family, other) = match destination {
        IpNet::V4(_) => ("IPv4", "IPv6"),
        IpNet::V6(_) => ("IPv6", "IPv4"),
    };
    if hop.is_ipv4() != matches!(destination, IpNet::V4(_)) {
        return Err(origin.invalid(
            "spec.nextHop",
            format!(
                "nextHop {hop} is an {other} address but destination {destination} is {family}; a Route's next hop is of its destination's family"
            ),
        ));
    }
    if let IpNet::V6(prefix) = destination {
        let scoped: [(Ipv6Net, &str); 2] = [
            ("fe80::/10".parse().expect("literal"), "link-local"),
            ("ff00::/8".parse().expect("literal"), "multicast"),
        ];
        let what = scoped
            .iter()
            .find(|(scope, _)| scope.contains(&prefix))
            .map(|(_, what)| *what)
            .or_else(|| {
                (prefix.prefix_len() == 128)
                    .then(|| match prefix.addr() {
                        Ipv6Addr::LOCALHOST => Some("the loopback address"),
                        Ipv6Addr::UNSPECIFIED => Some("the unspecified address"),
                        _ => None,
                    })
                    .flatten()
            });
        if let Some(what) = what {
            return Err(origin.invalid(
                "spec.destination",
                format!(
                    "{destination} is {what}: the switch never routes it; route a global or unique-local prefix"
                ),
            ));
        }
    }
    let subnets = match hop {
        IpAddr::V4(_) => routing::describe_subnets(next, network),
        IpAddr::V6(_) => routing::describe_subnets6(next, network),
    };
    let subnet = routing::subnets_of(next, network)
        .into_iter()
        .find(|s| routing::prefix_for(s, hop).is_some_and(|prefix| prefix.contains(&hop)));
    let routed = next
        .networks
        .get(network)
        .is_some_and(|network| network.spec.is_routed());
    if subnet.is_none() && routed && hop.is_ipv4() {
        // A router on the Uplink's link, for a Network routed through it.
        if let Err(why) = routing::uplink_egress(next, network, hop) {
            return Err(origin.invalid(
                "spec.nextHop",
                format!(
                    "nextHop {hop} is not inside any Subnet of Network {network:?} (Subnets: {subnets}), nor a router on the Uplink's link: {why}; write the address of a router in one of them"
                ),
            ));
        }
        let destinations = next.networks[network]
            .spec
            .uplink
            .iter()
            .flat_map(|uplink| uplink.destinations.iter().map(|d| d.0))
            .collect::<Vec<_>>();
        let IpNet::V4(prefix) = destination else {
            unreachable!("the next hop is of the destination's family");
        };
        if !destinations.is_empty() && !destinations.iter().any(|d| d.contains(&prefix)) {
            let listed: Vec<String> = destinations.iter().map(ToString::to_string).collect();
            return Err(origin.invalid(
                "spec.destination",
                format!(
                    "{destination} is outside the destinations Network {network:?} is routed to through the Uplink ({}): traffic toward it never leaves untranslated; add it to the Network's spec.uplink.destinations, or route a prefix inside them",
                    listed.join(", ")
                ),
            ));
        }
    }
    let Some(subnet) = subnet else {
        if routed && hop.is_ipv4() {
            return check_destination(cx, route);
        }
        let which = if hop.is_ipv6() {
            "the IPv6 prefix of any dual-stack Subnet"
        } else {
            "any Subnet"
        };
        return Err(origin.invalid(
            "spec.nextHop",
            format!(
                "nextHop {hop} is not inside {which} of Network {network:?} (Subnets: {subnets}); write the address of a router in one of them"
            ),
        ));
    };
    if let Some(what) = routing::reserved_role(subnet, hop) {
        let prefix = routing::prefix_for(subnet, hop).expect("found by its prefix");
        return Err(origin.invalid(
            "spec.nextHop",
            format!(
                "nextHop {hop} is {what} of Subnet {:?} ({prefix}); write the address of a router in a Subnet of Network {network:?} (Subnets: {subnets}), not a gateway, network or broadcast address",
                subnet.metadata.name
            ),
        ));
    }
    check_destination(cx, route)
}

/// The destination of a Route whose next hop was checked: not a connected prefix of its
/// Network, nor another Route's.
fn check_destination(cx: &CheckContext<'_>, route: &Route) -> Result<(), ApiError> {
    let (origin, next) = (cx.origin, cx.next);
    let network = &route.spec.network;
    let destination = route.spec.destination;
    if let Some(connected) = routing::subnets_of(next, network)
        .into_iter()
        .find(|s| routing::prefixes(s).any(|prefix| prefix == destination))
    {
        return Err(origin.invalid(
            "spec.destination",
            format!(
                "{destination} is the CIDR of Subnet {:?} of Network {network:?}: its connected route takes precedence, so this Route would never be used; route a more specific prefix, or another one",
                connected.metadata.name
            ),
        ));
    }
    let by_destination = cx.memo.route_destinations(next);
    let twin = by_destination
        .get(&(network.as_str(), destination))
        .and_then(|names| names.iter().find(|name| **name != route.metadata.name));
    if let Some(twin) = twin {
        return Err(origin.conflict(
            "spec.destination",
            format!(
                "Route {twin:?} of Network {network:?} already has destination {destination}; a Network has one route per destination: change that Route instead"
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
                "spec.nextHop: invalid IP address \"ten\"",
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
            IpAddr::V4(Ipv4Addr::new(10, 1, 1, 7))
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

    #[test]
    fn routes_through_a_router_on_the_uplinks_link() {
        use crate::control::testing::{doc, nat_base, refused};
        let routed = doc(
            "Network",
            "blue",
            "{uplink: {mode: Routed, destinations: [10.0.0.0/8, 192.0.2.0/24]}}",
        );
        let state = apply(&nat_base(), &routed);
        let state = apply(&state, &route("far", "blue", "10.9.0.0/16", "198.51.100.7"));
        let status = routing::route_status(&state, &state.routes["far"]);
        assert_eq!(status.uplink.as_deref(), Some("wan"), "{status:?}");
        assert_eq!(status.subnet, None);
        assert_eq!(status.state, RouteState::Ready);
        let cases = [
            (
                route("r", "blue", "10.8.0.0/16", "198.51.100.10"),
                "documents[0].spec.nextHop",
                "nor a router on the Uplink's link: 198.51.100.10 is an address of Uplink \"wan\" itself",
            ),
            (
                route("r", "blue", "10.8.0.0/16", "198.51.101.7"),
                "documents[0].spec.nextHop",
                "198.51.101.7 is not a host on the link of Uplink \"wan\" (198.51.100.10/24",
            ),
            (
                route("r", "blue", "10.8.0.0/16", "198.51.100.255"),
                "documents[0].spec.nextHop",
                "198.51.100.255 is not a host on the link of Uplink \"wan\"",
            ),
            (
                route("r", "blue", "172.16.0.0/16", "198.51.100.7"),
                "documents[0].spec.destination",
                "172.16.0.0/16 is outside the destinations Network \"blue\" is routed to through \
                 the Uplink (10.0.0.0/8, 192.0.2.0/24)",
            ),
            (
                route("r", "blue", "10.9.0.0/16", "198.51.100.8"),
                "documents[0].spec.destination",
                "Route \"far\" of Network \"blue\" already has destination 10.9.0.0/16",
            ),
            // red is not routed through the Uplink: a router must be in one of its Subnets.
            (
                route("r", "red", "10.8.0.0/16", "198.51.100.7"),
                "documents[0].spec.nextHop",
                "nextHop 198.51.100.7 is not inside any Subnet of Network \"red\" (Subnets: db \
                 10.2.0.0/24); write the address of a router in one of them",
            ),
        ];
        for (text, field, want) in cases {
            let status = if want.contains("already has") {
                409
            } else {
                400
            };
            refused(&state, &text, status, field, &[want]);
        }
        // Covered by a route of the Network's table (looked up first): Shadowed, not Ready.
        let state = apply(
            &state,
            &route("inner", "blue", "10.1.0.128/25", "198.51.100.7"),
        );
        let status = routing::route_status(&state, &state.routes["inner"]);
        assert_eq!(status.state, RouteState::Shadowed, "{status:?}");
        assert!(
            status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("10.1.0.0/24 through Subnet \"web\" covers it")),
            "{status:?}"
        );
        // Destinations narrowed since: Pending (the datapath only routes toward them).
        let narrowed = apply(
            &state,
            &doc(
                "Network",
                "blue",
                "{uplink: {mode: Routed, destinations: [192.0.2.0/24]}}",
            ),
        );
        let status = routing::route_status(&narrowed, &narrowed.routes["far"]);
        assert_eq!(status.state, RouteState::Pending, "{status:?}");
        // Without an Uplink the route waits (Pending).
        let mut gone = state.clone();
        gone.uplinks.clear();
        let status = routing::route_status(&gone, &gone.routes["far"]);
        assert_eq!(status.state, RouteState::Pending, "{status:?}");
        // The table view names the Uplink.
        let row = state.routes["far"].row(true);
        let mut with_status = state.routes["far"].clone();
        with_status.status = routing::route_status(&state, &with_status);
        assert!(
            with_status.row(true).contains(&"uplink:wan".to_owned()),
            "{row:?}"
        );
    }

    #[test]
    fn ipv6_routes_are_checked() {
        use crate::control::testing::{doc, refused};
        let dual = doc(
            "Subnet",
            "v6",
            "{network: blue, cidr: 10.1.5.0/24, ipv6: {cidr: 'fd00:5::/64'}}",
        );
        let current = apply(&base(), &dual);
        let cases = [
            (
                route("r", "blue", "fd00:9::/48", "10.1.5.9"),
                "spec.nextHop",
                "nextHop 10.1.5.9 is an IPv4 address but destination fd00:9::/48 is IPv6",
            ),
            (
                route("r", "blue", "10.9.0.0/16", "'fd00:5::9'"),
                "spec.nextHop",
                "nextHop fd00:5::9 is an IPv6 address but destination 10.9.0.0/16 is IPv4",
            ),
            (
                route("r", "blue", "'fd00:9::/48'", "'fd00:7::9'"),
                "spec.nextHop",
                "nextHop fd00:7::9 is not inside the IPv6 prefix of any dual-stack Subnet of \
                 Network \"blue\" (Subnets: v6 fd00:5::/64)",
            ),
            (
                route("r", "blue", "'fd00:9::/48'", "'fd00:5::1'"),
                "spec.nextHop",
                "nextHop fd00:5::1 is the gateway (the switch itself) of Subnet \"v6\" (fd00:5::/64)",
            ),
            (
                route("r", "blue", "'fd00:9::/48'", "'fd00:5::'"),
                "spec.nextHop",
                "nextHop fd00:5:: is the subnet-router anycast address of Subnet \"v6\"",
            ),
            (
                route("r", "blue", "'fd00:5::/64'", "'fd00:5::9'"),
                "spec.destination",
                "fd00:5::/64 is the CIDR of Subnet \"v6\" of Network \"blue\"",
            ),
            (
                route("r", "blue", "'fe80::/64'", "'fd00:5::9'"),
                "spec.destination",
                "fe80::/64 is link-local: the switch never routes it",
            ),
            (
                route("r", "blue", "'::1/128'", "'fd00:5::9'"),
                "spec.destination",
                "::1/128 is the loopback address: the switch never routes it",
            ),
            (
                route("r", "blue", "'fd00:9::1/48'", "'fd00:5::9'"),
                "spec.destination",
                "invalid IPv6 CIDR \"fd00:9::1/48\": host bits are set; the network is fd00:9::/48",
            ),
            (
                route("r", "blue", "'fd00:9::/48'", "'fd00:5::zz'"),
                "spec.nextHop",
                "invalid IP address \"fd00:5::zz\"",
            ),
        ];
        for (text, field, want) in cases {
            refused(
                &current,
                &text,
                400,
                &format!("documents[0].{field}"),
                &[want],
            );
        }
        let text = format!(
            "{}{}",
            route("far", "blue", "'fd00:9::/48'", "'fd00:5::9'"),
            route("default6", "blue", "'::/0'", "'fd00:5::9'"),
        );
        let state = apply(&current, &text);
        crate::control::routing::tests::assert_tables_agree(&state);
        let table = routing::table(&state, "blue");
        let far = table
            .iter()
            .find(|r| r.prefix.to_string() == "fd00:9::/48")
            .expect("the IPv6 route is in the table");
        assert_eq!(far.subnet, "v6");
        assert_eq!(
            far.next_hop,
            crate::tables::snapshot::NextHop::Via("fd00:5::9".parse().unwrap())
        );
        assert_eq!(
            routing::route_status(&state, &state.routes["default6"]).state,
            RouteState::Ready
        );
        // The router may send from the routed prefixes.
        let sources = routing::routed_sources(&state, "v6", "fd00:5::9".parse().unwrap());
        let sources: Vec<String> = sources.iter().map(ToString::to_string).collect();
        assert_eq!(sources, ["::/0", "fd00:9::/48"]);
        // The Subnet cannot drop, move or re-gateway its IPv6 prefix under the Routes' router.
        for spec in [
            "{network: blue, cidr: 10.1.5.0/24}",
            "{network: blue, cidr: 10.1.5.0/24, ipv6: {cidr: 'fd00:6::/64'}}",
            "{network: blue, cidr: 10.1.5.0/24, ipv6: {cidr: 'fd00:5::/64', gateway: 'fd00:5::9'}}",
        ] {
            refused(
                &state,
                &doc("Subnet", "v6", spec),
                400,
                "documents[0].spec.ipv6",
                &["Routes default6 (nextHop fd00:5::9), far (nextHop fd00:5::9)"],
            );
        }
        // Moving the Routes in the same input is fine.
        let text = format!(
            "{}{}{}",
            doc(
                "Subnet",
                "v6",
                "{network: blue, cidr: 10.1.5.0/24, ipv6: {cidr: 'fd00:6::/64'}}"
            ),
            route("far", "blue", "'fd00:9::/48'", "'fd00:6::9'"),
            route("default6", "blue", "'::/0'", "'fd00:6::9'"),
        );
        assert_eq!(apply(&state, &text).routes.len(), 2);
    }
}
