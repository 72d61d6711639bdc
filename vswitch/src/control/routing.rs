//! Peerings, routing tables and gateway MACs: pure functions of the desired [`State`], shared
//! by validation, the computed status of Networks and Routes, and the compiled snapshot, so
//! that what `get` shows and what the workers use cannot differ.
//!
//! Invariants of a state that passed [`validate`](super::validate):
//! - A peering is `Ready` exactly when both Networks exist and each lists the other; a Network
//!   never lists itself.
//! - The Subnets of two Networks with a `Ready` peering do not overlap, so a peering route
//!   never hides a connected one.
//! - A Route's next hop is a host address, other than the gateway, of a Subnet of its
//!   Network, or (a Network routed through the Uplink) a host on the Uplink's link, other
//!   than its own addresses ([`uplink_egress`]; such Routes are not in the table); no Route has the prefix of a connected route of its Network, and no two Routes
//!   of a Network share a destination.
//!
//! A Network's table lists connected routes first, then peering routes, then static routes;
//! when two share a prefix, the first wins (as [`NetworkEntry::new`] does).
//!
//! [`NetworkEntry::new`]: crate::tables::snapshot::NetworkEntry::new

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::resource::{
    MacAddr, Network, Peering, PeeringState, PeeringStatus, Route, RouteState, RouteStatus, Subnet,
    Uplink,
};
use super::store::{NodeId, State};
use crate::tables::snapshot::{NextHop, RouteOrigin};

/// One entry of a Network's table (either family), with names rather than ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRoute {
    /// Destination prefix.
    pub prefix: IpNet,
    /// The egress Subnet's name (a Subnet of a peered Network for a peering route).
    pub subnet: String,
    /// Direct, or via a router on the egress Subnet (of the prefix's family).
    pub next_hop: NextHop<IpAddr>,
    /// Why the route exists.
    pub origin: RouteOrigin,
}

/// True when the two prefixes share an address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The Subnets of `network`, by name.
pub fn subnets_of<'a>(state: &'a State, network: &str) -> Vec<&'a Subnet> {
    state
        .subnets
        .values()
        .filter(|subnet| subnet.spec.network == network)
        .collect()
}

/// `web 10.1.0.0/24, db 10.2.0.0/24`, or `none` when `network` has no Subnets: for messages
/// that must say which addresses would be valid.
pub fn describe_subnets(state: &State, network: &str) -> String {
    let listed: Vec<String> = subnets_of(state, network)
        .into_iter()
        .map(|s| format!("{} {}", s.metadata.name, s.spec.cidr))
        .collect();
    if listed.is_empty() {
        "none".into()
    } else {
        listed.join(", ")
    }
}

/// `web fd00:1::/64, db fd00:2::/64`: the IPv6 prefixes of `network`'s dual-stack Subnets, or
/// `none`.
pub fn describe_subnets6(state: &State, network: &str) -> String {
    let listed: Vec<String> = subnets_of(state, network)
        .into_iter()
        .filter_map(|s| {
            Some(format!(
                "{} {}",
                s.metadata.name,
                s.spec.ipv6.as_ref()?.cidr
            ))
        })
        .collect();
    if listed.is_empty() {
        "none".into()
    } else {
        listed.join(", ")
    }
}

/// The prefixes of `subnet`: its IPv4 CIDR, then its IPv6 prefix when it is dual stack.
pub fn prefixes(subnet: &Subnet) -> impl Iterator<Item = IpNet> + '_ {
    std::iter::once(IpNet::V4(subnet.spec.cidr))
        .chain(subnet.spec.ipv6.as_ref().map(|v6| IpNet::V6(v6.cidr)))
}

/// The prefix of `subnet` of `address`'s family, if the Subnet has one.
pub fn prefix_for(subnet: &Subnet, address: IpAddr) -> Option<IpNet> {
    match address {
        IpAddr::V4(_) => Some(IpNet::V4(subnet.spec.cidr)),
        IpAddr::V6(_) => subnet.spec.ipv6.as_ref().map(|v6| IpNet::V6(v6.cidr)),
    }
}

/// What `address` is to `subnet` when it is not an address a host may have there: the
/// gateway, the network address (IPv6's subnet-router anycast) or the IPv4 broadcast.
pub fn reserved_role(subnet: &Subnet, address: IpAddr) -> Option<&'static str> {
    let prefix = prefix_for(subnet, address)?;
    let gateway = match address {
        IpAddr::V4(_) => IpAddr::V4(subnet.spec.gateway),
        IpAddr::V6(_) => IpAddr::V6(subnet.spec.ipv6.as_ref()?.gateway()),
    };
    if address == gateway {
        Some("the gateway (the switch itself)")
    } else if address == prefix.network() {
        Some(match address {
            IpAddr::V4(_) => "the network address",
            IpAddr::V6(_) => "the subnet-router anycast address",
        })
    } else if matches!(prefix, IpNet::V4(_)) && address == prefix.broadcast() {
        Some("the broadcast address")
    } else {
        None
    }
}

/// Whether `peering` of Network `network` is `Ready`: the peer exists and lists `network`.
pub fn is_ready(state: &State, network: &str, peering: &Peering) -> bool {
    peering.network != network
        && state.networks.get(&peering.network).is_some_and(|peer| {
            peer.spec
                .peerings
                .iter()
                .any(|back| back.network == network)
        })
}

/// The state of each peering of `network`, in spec order, with the reason when `Pending`.
pub fn peering_status(state: &State, network: &Network) -> Vec<PeeringStatus> {
    let name = &network.metadata.name;
    network
        .spec
        .peerings
        .iter()
        .map(|peering| {
            let (state_now, message) = if is_ready(state, name, peering) {
                (PeeringState::Ready, None)
            } else if state.networks.contains_key(&peering.network) {
                (
                    PeeringState::Pending,
                    Some(format!(
                        "Network {:?} does not list a peering with {name:?}; add one to its spec.peerings",
                        peering.network
                    )),
                )
            } else {
                (
                    PeeringState::Pending,
                    Some(format!("Network {:?} does not exist yet", peering.network)),
                )
            };
            PeeringStatus {
                name: peering.name.clone(),
                network: peering.network.clone(),
                state: state_now,
                message,
            }
        })
        .collect()
}

/// The Networks `network` has a `Ready` peering with, in the order of its spec, each once.
pub fn ready_peers<'a>(state: &'a State, network: &str) -> Vec<&'a str> {
    let Some(own) = state.networks.get(network) else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    own.spec
        .peerings
        .iter()
        .filter(|peering| is_ready(state, network, peering))
        .map(|peering| peering.network.as_str())
        .filter(|peer| seen.insert(*peer))
        .collect()
}

/// The first pair of overlapping Subnets of `a` and `b` (a's first), if any.
pub fn first_overlap<'a>(
    state: &'a State,
    a: &'a str,
    b: &'a str,
) -> Option<(&'a Subnet, &'a Subnet)> {
    subnets_of(state, a).into_iter().find_map(|mine| {
        subnets_of(state, b)
            .into_iter()
            .find(|theirs| overlaps(mine.spec.cidr, theirs.spec.cidr))
            .map(|theirs| (mine, theirs))
    })
}

/// The Subnet of `network` whose host addresses (of `next_hop`'s family) include
/// `next_hop`: inside its prefix and not a [reserved](reserved_role) address.
pub fn egress_subnet<'a>(state: &'a State, network: &str, next_hop: IpAddr) -> Option<&'a Subnet> {
    subnets_of(state, network).into_iter().find(|subnet| {
        prefix_for(subnet, next_hop).is_some_and(|prefix| prefix.contains(&next_hop))
            && reserved_role(subnet, next_hop).is_none()
    })
}

/// The Uplink a Route of `network` through `next_hop` leaves by, when the Network is routed
/// through it (`spec.uplink.mode: Routed`) and `next_hop` is a host on the link of one of
/// its addresses, other than the switch's own: such a Route carries what the Network's table
/// does not cover to that router rather than to the Uplink's gateway.
///
/// # Errors
/// Why the next hop cannot be on the Uplink, for messages.
pub fn uplink_egress<'a>(
    state: &'a State,
    network: &str,
    next_hop: IpAddr,
) -> Result<&'a Uplink, String> {
    let routed = state
        .networks
        .get(network)
        .is_some_and(|network| network.spec.is_routed());
    if !routed {
        return Err(format!(
            "Network {network:?} is not routed through the Uplink (spec.uplink.mode: Routed)"
        ));
    }
    let IpAddr::V4(hop) = next_hop else {
        return Err("a routed Network reaches the Uplink's link over IPv4 only".into());
    };
    let Some(uplink) = state.uplinks.values().next() else {
        return Err("there is no Uplink".into());
    };
    if uplink
        .spec
        .addresses
        .iter()
        .any(|address| address.addr() == hop)
    {
        return Err(format!(
            "{hop} is an address of Uplink {:?} itself",
            uplink.metadata.name
        ));
    }
    if !on_uplink_link(uplink, hop) {
        let links: Vec<String> = uplink
            .spec
            .addresses
            .iter()
            .map(|address| address.0.to_string())
            .collect();
        return Err(format!(
            "{hop} is not a host on the link of Uplink {:?} ({})",
            uplink.metadata.name,
            links.join(", ")
        ));
    }
    Ok(uplink)
}

/// True when `hop` is a host on the link of one of `uplink`'s addresses (inside its prefix,
/// neither its network nor its broadcast address), as the datapath's on-link test says.
pub fn on_uplink_link(uplink: &Uplink, hop: std::net::Ipv4Addr) -> bool {
    uplink.spec.addresses.iter().any(|address| {
        let prefix = address.0.trunc();
        prefix.prefix_len() < 32
            && prefix.contains(&hop)
            && (prefix.prefix_len() >= 31 || (hop != prefix.network() && hop != prefix.broadcast()))
    })
}

/// The routing table of `network`, both families: connected routes (by CIDR, each Subnet's
/// IPv4 then IPv6 prefix), then the Subnets of `Ready` peers (peers in spec order, their
/// Subnets by CIDR), then Routes (by name). A prefix appears once: the first route with it
/// wins. Routes whose next hop is in no Subnet are left out.
pub fn table(state: &State, network: &str) -> Vec<TableRoute> {
    let own = state
        .routes
        .values()
        .filter(|route| route.spec.network == network);
    table_with(state, network, own)
}

/// [`table`], given the Routes of `network` in name order (so that a caller building every
/// Network's table walks the Routes once, not once per Network).
fn table_with<'a>(
    state: &State,
    network: &str,
    own_routes: impl Iterator<Item = &'a Route>,
) -> Vec<TableRoute> {
    let mut routes = Vec::new();
    let by_cidr = |network: &str| {
        let mut subnets = subnets_of(state, network);
        subnets.sort_by_key(|s| (s.spec.cidr.network(), s.spec.cidr.prefix_len()));
        subnets
    };
    for subnet in by_cidr(network) {
        for prefix in prefixes(subnet) {
            routes.push(TableRoute {
                prefix,
                subnet: subnet.metadata.name.clone(),
                next_hop: NextHop::Direct,
                origin: RouteOrigin::Connected,
            });
        }
    }
    for peer in ready_peers(state, network) {
        for subnet in by_cidr(peer) {
            for prefix in prefixes(subnet) {
                routes.push(TableRoute {
                    prefix,
                    subnet: subnet.metadata.name.clone(),
                    next_hop: NextHop::Direct,
                    origin: RouteOrigin::Peering(peer.to_string()),
                });
            }
        }
    }
    let own = subnets_of(state, network);
    let egress_of = |hop: IpAddr| {
        own.iter().find(|subnet| {
            prefix_for(subnet, hop).is_some_and(|prefix| prefix.contains(&hop))
                && reserved_role(subnet, hop).is_none()
        })
    };
    for route in own_routes {
        if let Some(egress) = egress_of(route.spec.next_hop) {
            routes.push(TableRoute {
                prefix: route.spec.destination,
                subnet: egress.metadata.name.clone(),
                next_hop: NextHop::Via(route.spec.next_hop),
                origin: RouteOrigin::Static(route.metadata.name.clone()),
            });
        }
    }
    let mut seen = BTreeSet::new();
    routes.retain(|route| seen.insert(route.prefix.trunc()));
    routes
}

/// The computed status of a Route: its egress Subnet, and whether its Network's table uses it.
pub fn route_status(state: &State, route: &Route) -> RouteStatus {
    let winner = table(state, &route.spec.network)
        .into_iter()
        .find(|entry| entry.prefix.trunc() == route.spec.destination.trunc());
    route_status_with(state, route, winner.as_ref())
}

/// [`route_status`] with the entry of the Route's table that has its destination (the one
/// that won the prefix), as [`Tables::winner`] gives it.
pub fn route_status_with(state: &State, route: &Route, winner: Option<&TableRoute>) -> RouteStatus {
    let spec = &route.spec;
    let Some(egress) = egress_subnet(state, &spec.network, spec.next_hop) else {
        if let Ok(uplink) = uplink_egress(state, &spec.network, spec.next_hop) {
            return uplink_route_status(state, route, uplink, winner);
        }
        let subnets = match spec.next_hop {
            IpAddr::V4(_) => describe_subnets(state, &spec.network),
            IpAddr::V6(_) => describe_subnets6(state, &spec.network),
        };
        return RouteStatus {
            subnet: None,
            uplink: None,
            state: RouteState::Pending,
            message: Some(format!(
                "nextHop {} is in no Subnet of Network {:?} (Subnets: {subnets})",
                spec.next_hop, spec.network,
            )),
        };
    };
    let subnet = Some(egress.metadata.name.clone());
    let message = match winner.map(|entry| (&entry.origin, &entry.subnet)) {
        Some((RouteOrigin::Static(name), _)) if *name == route.metadata.name => {
            return RouteStatus {
                subnet,
                uplink: None,
                state: RouteState::Ready,
                message: None,
            };
        }
        Some((RouteOrigin::Connected, by)) => {
            format!("the connected route of Subnet {by:?} has the same prefix and takes precedence")
        }
        Some((RouteOrigin::Peering(peer), by)) => format!(
            "the peering route to Subnet {by:?} of Network {peer:?} has the same prefix and takes precedence; delete this Route or the peering"
        ),
        Some((RouteOrigin::Static(other), _)) => {
            format!("Route {other:?} has the same destination and takes precedence")
        }
        None => "not in the table of its Network".to_string(),
    };
    RouteStatus {
        subnet,
        uplink: None,
        state: RouteState::Shadowed,
        message: Some(message),
    }
}

/// The status of a Route through a router on the Uplink's link: `Ready` unless the datapath
/// would never use it: the Network's table holds a route that covers its destination
/// (looked up first: `Shadowed`), or the destination is outside the Network's
/// `spec.uplink.destinations` (narrowed since: `Pending`).
fn uplink_route_status(
    state: &State,
    route: &Route,
    uplink: &Uplink,
    winner: Option<&TableRoute>,
) -> RouteStatus {
    let spec = &route.spec;
    let status = |state: RouteState, message: Option<String>| RouteStatus {
        subnet: None,
        uplink: Some(uplink.metadata.name.clone()),
        state,
        message,
    };
    let IpNet::V4(destination) = spec.destination else {
        return status(RouteState::Pending, Some("IPv4 only".into()));
    };
    let destinations: Vec<Ipv4Net> = state
        .networks
        .get(&spec.network)
        .and_then(|network| network.spec.uplink.as_ref())
        .map(|uplink| uplink.destinations.iter().map(|d| d.0).collect())
        .unwrap_or_default();
    if !destinations.is_empty() && !destinations.iter().any(|d| d.contains(&destination)) {
        return status(
            RouteState::Pending,
            Some(format!(
                "{destination} is outside the destinations Network {:?} is routed to through the Uplink",
                spec.network
            )),
        );
    }
    let covering = winner.cloned().or_else(|| {
        table(state, &spec.network)
            .into_iter()
            .filter(|entry| match entry.prefix {
                IpNet::V4(prefix) => prefix.contains(&destination),
                IpNet::V6(_) => false,
            })
            .max_by_key(|entry| entry.prefix.prefix_len())
    });
    match covering {
        None => status(RouteState::Ready, None),
        Some(entry) => status(
            RouteState::Shadowed,
            Some(format!(
                "the route to {} through Subnet {:?} covers it in the Network's table, which is \
                 looked up before the Uplink's routes",
                entry.prefix, entry.subnet
            )),
        ),
    }
}

/// The destinations of `Ready` Routes whose next hop is `addr` on Subnet `subnet`: traffic
/// from them may enter through the interface that owns `addr` (it routes for them).
pub fn routed_sources(state: &State, subnet: &str, addr: IpAddr) -> Vec<IpNet> {
    let Some(network) = state.subnets.get(subnet).map(|s| s.spec.network.as_str()) else {
        return Vec::new();
    };
    table(state, network)
        .into_iter()
        .filter(|entry| {
            entry.subnet == subnet
                && entry.next_hop == NextHop::Via(addr)
                && matches!(entry.origin, RouteOrigin::Static(_))
        })
        .map(|entry| entry.prefix)
        .collect()
}

/// Every Network's table, computed once and indexed: what the statuses of many Routes and
/// the compile of many ports ask, answered without computing a table per Route or port
/// (with 10^5 Routes, once per Route is 10^10 steps). Building it walks the Routes once.
#[derive(Debug, Default)]
pub struct Tables {
    /// Each Network's table ([`table`]).
    tables: HashMap<String, Vec<TableRoute>>,
    /// Where the entry that holds each (Network, truncated prefix) is in its table.
    winners: HashMap<(String, IpNet), usize>,
    /// [`routed_sources`] of each (Subnet, router address), in table order.
    routed: HashMap<(String, IpAddr), Vec<IpNet>>,
}

impl Tables {
    /// The tables of every Network of `state`.
    pub fn of(state: &State) -> Tables {
        let mut by_network: HashMap<&str, Vec<&Route>> = HashMap::new();
        for route in state.routes.values() {
            by_network
                .entry(route.spec.network.as_str())
                .or_default()
                .push(route);
        }
        let mut tables = Tables::default();
        for network in state.networks.keys() {
            let own = by_network
                .get(network.as_str())
                .map_or(&[][..], Vec::as_slice);
            let table = table_with(state, network, own.iter().copied());
            for (index, entry) in table.iter().enumerate() {
                if let (NextHop::Via(hop), RouteOrigin::Static(_)) = (entry.next_hop, &entry.origin)
                {
                    tables
                        .routed
                        .entry((entry.subnet.clone(), hop))
                        .or_default()
                        .push(entry.prefix);
                }
                tables
                    .winners
                    .insert((network.clone(), entry.prefix.trunc()), index);
            }
            tables.tables.insert(network.clone(), table);
        }
        tables
    }

    /// `network`'s table, as [`table`] computes it (empty for an unknown Network).
    pub fn table(&self, network: &str) -> &[TableRoute] {
        self.tables.get(network).map_or(&[], Vec::as_slice)
    }

    /// The entry of `network`'s table with `prefix` (the route that won it).
    pub fn winner(&self, network: &str, prefix: IpNet) -> Option<&TableRoute> {
        let index = *self.winners.get(&(network.to_string(), prefix.trunc()))?;
        self.tables.get(network)?.get(index)
    }

    /// As [`routed_sources`].
    pub fn routed_sources(&self, subnet: &str, addr: IpAddr) -> &[IpNet] {
        self.routed
            .get(&(subnet.to_string(), addr))
            .map_or(&[], Vec::as_slice)
    }
}

/// The gateway MAC derived from this node's id and the Subnet's name: locally administered
/// and unicast (first octet `x2`, `x6`, `xa` or `xe`). The same node and name always give the
/// same MAC, so containers' ARP caches stay valid across restarts; two nodes give different
/// ones. The formula is part of the contract: changing it changes every gateway's MAC on
/// upgrade.
pub fn derived_gateway_mac(node: Option<NodeId>, subnet: &str) -> MacAddr {
    // FNV-1a over the node id, a separator and the name, then the SplitMix64 finaliser so
    // that every output bit depends on every input bit.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let node = node.map(|n| n.0).unwrap_or_default();
    for byte in node.iter().chain(&[0xff]).chain(subnet.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    let b = hash.to_be_bytes();
    MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// The MAC the gateway of `subnet` uses: `spec.gatewayMac`, else the derived one.
pub fn gateway_mac(state: &State, subnet: &Subnet) -> MacAddr {
    subnet
        .spec
        .gateway_mac
        .unwrap_or_else(|| derived_gateway_mac(state.node_id, &subnet.metadata.name))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::resource::parse_documents;
    use crate::control::validate::{Mode, plan};

    fn network(name: &str, peers: &[(&str, &str)]) -> String {
        let peerings: Vec<String> = peers
            .iter()
            .map(|(peering, peer)| format!("{{name: {peering}, network: {peer}}}"))
            .collect();
        format!(
            "---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {{peerings: [{}]}}\n",
            peerings.join(", ")
        )
    }

    fn subnet(name: &str, network: &str, cidr: &str, gateway: &str) -> String {
        format!(
            "---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: {name}}}\nspec: {{network: {network}, cidr: {cidr}, gateway: {gateway}}}\n"
        )
    }

    fn route(name: &str, network: &str, destination: &str, next_hop: &str) -> String {
        format!(
            "---\napiVersion: vswitch/v1alpha1\nkind: Route\nmetadata: {{name: {name}}}\nspec: {{network: {network}, destination: {destination}, nextHop: {next_hop}}}\n"
        )
    }

    fn apply(current: &State, text: &str) -> State {
        plan(current, parse_documents(text).unwrap(), Mode::Apply)
            .unwrap()
            .next
    }

    fn two_networks(a_peers: &[(&str, &str)], b_peers: &[(&str, &str)]) -> State {
        let text = format!(
            "{}{}{}{}{}",
            network("a", a_peers),
            network("b", b_peers),
            subnet("a1", "a", "10.1.0.0/24", "10.1.0.1"),
            subnet("a2", "a", "10.1.1.0/24", "10.1.1.1"),
            subnet("b1", "b", "10.2.0.0/24", "10.2.0.1"),
        );
        apply(&State::default(), &text)
    }

    fn states(state: &State, network: &str) -> Vec<(String, PeeringState)> {
        peering_status(state, &state.networks[network])
            .into_iter()
            .map(|p| (p.network, p.state))
            .collect()
    }

    fn rows(state: &State, network: &str) -> Vec<String> {
        table(state, network)
            .into_iter()
            .map(|r| {
                let via = match r.next_hop {
                    NextHop::Direct => "direct".to_string(),
                    NextHop::Via(addr) => addr.to_string(),
                };
                let origin = match r.origin {
                    RouteOrigin::Connected => "connected".to_string(),
                    RouteOrigin::Static(name) => format!("static:{name}"),
                    RouteOrigin::Peering(peer) => format!("peering:{peer}"),
                };
                format!("{} {via} {} {origin}", r.prefix, r.subnet)
            })
            .collect()
    }

    #[test]
    fn peering_is_ready_only_when_mutual() {
        let one_sided = two_networks(&[("to-b", "b")], &[]);
        assert_eq!(
            states(&one_sided, "a"),
            [("b".to_string(), PeeringState::Pending)]
        );
        let status = &peering_status(&one_sided, &one_sided.networks["a"])[0];
        assert_eq!(
            status.message.as_deref(),
            Some("Network \"b\" does not list a peering with \"a\"; add one to its spec.peerings")
        );
        assert!(ready_peers(&one_sided, "a").is_empty());
        assert_eq!(
            rows(&one_sided, "a"),
            [
                "10.1.0.0/24 direct a1 connected",
                "10.1.1.0/24 direct a2 connected"
            ]
        );

        let mutual = two_networks(&[("to-b", "b")], &[("to-a", "a")]);
        assert_eq!(
            states(&mutual, "a"),
            [("b".to_string(), PeeringState::Ready)]
        );
        assert_eq!(
            states(&mutual, "b"),
            [("a".to_string(), PeeringState::Ready)]
        );
        assert_eq!(
            rows(&mutual, "a"),
            [
                "10.1.0.0/24 direct a1 connected",
                "10.1.1.0/24 direct a2 connected",
                "10.2.0.0/24 direct b1 peering:b",
            ]
        );
        assert_eq!(
            rows(&mutual, "b"),
            [
                "10.2.0.0/24 direct b1 connected",
                "10.1.0.0/24 direct a1 peering:a",
                "10.1.1.0/24 direct a2 peering:a",
            ]
        );

        // Removing one side: Pending again, and the routes are gone on both sides.
        let removed = apply(&mutual, &network("b", &[]));
        assert_eq!(
            states(&removed, "a"),
            [("b".to_string(), PeeringState::Pending)]
        );
        assert_eq!(rows(&removed, "b"), ["10.2.0.0/24 direct b1 connected"]);
        assert_eq!(rows(&removed, "a").len(), 2);
    }

    #[test]
    fn peer_that_does_not_exist_is_pending() {
        let state = apply(&State::default(), &network("a", &[("later", "zz")]));
        let status = peering_status(&state, &state.networks["a"]);
        assert_eq!(status[0].state, PeeringState::Pending);
        assert_eq!(
            status[0].message.as_deref(),
            Some("Network \"zz\" does not exist yet")
        );
        // Once it exists and lists a, both are Ready.
        let state = apply(&state, &network("zz", &[("back", "a")]));
        assert_eq!(states(&state, "a"), [("zz".into(), PeeringState::Ready)]);
    }

    #[test]
    fn static_routes_come_last_and_egress_is_the_next_hops_subnet() {
        let state = two_networks(&[("to-b", "b")], &[("to-a", "a")]);
        let text = format!(
            "{}{}{}",
            route("lab", "a", "192.168.50.0/24", "10.1.1.254"),
            route("default", "a", "0.0.0.0/0", "10.1.0.254"),
            route("narrow", "a", "10.2.0.128/25", "10.1.0.253"),
        );
        let state = apply(&state, &text);
        assert_eq!(
            rows(&state, "a"),
            [
                "10.1.0.0/24 direct a1 connected",
                "10.1.1.0/24 direct a2 connected",
                "10.2.0.0/24 direct b1 peering:b",
                "0.0.0.0/0 10.1.0.254 a1 static:default",
                "192.168.50.0/24 10.1.1.254 a2 static:lab",
                "10.2.0.128/25 10.1.0.253 a1 static:narrow",
            ]
        );
        let status = route_status(&state, &state.routes["lab"]);
        assert_eq!(status.subnet.as_deref(), Some("a2"));
        assert_eq!(status.state, RouteState::Ready);
        assert_eq!(status.message, None);
        assert_eq!(
            routed_sources(&state, "a1", "10.1.0.254".parse().unwrap()),
            ["0.0.0.0/0".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            routed_sources(&state, "a2", "10.1.1.254".parse().unwrap()),
            ["192.168.50.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(routed_sources(&state, "a2", "10.1.0.254".parse().unwrap()).is_empty());
        assert!(routed_sources(&state, "nope", "10.1.0.254".parse().unwrap()).is_empty());
    }

    #[test]
    fn a_route_hidden_by_a_later_peering_is_shadowed() {
        let state = two_networks(&[("to-b", "b")], &[]);
        let state = apply(&state, &route("to-b1", "a", "10.2.0.0/24", "10.1.0.9"));
        assert_eq!(
            route_status(&state, &state.routes["to-b1"]).state,
            RouteState::Ready
        );
        let state = apply(&state, &network("b", &[("to-a", "a")]));
        let status = route_status(&state, &state.routes["to-b1"]);
        assert_eq!(status.state, RouteState::Shadowed);
        assert_eq!(status.subnet.as_deref(), Some("a1"));
        assert!(
            status
                .message
                .as_deref()
                .unwrap()
                .starts_with("the peering route to Subnet \"b1\" of Network \"b\""),
            "{status:?}"
        );
        assert!(routed_sources(&state, "a1", "10.1.0.9".parse().unwrap()).is_empty());
        assert_tables_agree(&state);
    }

    /// [`Tables`] answers as [`route_status`] and [`routed_sources`] do, for every Route and
    /// every (Subnet, next hop) of `state`.
    pub(crate) fn assert_tables_agree(state: &State) {
        let tables = Tables::of(state);
        for route in state.routes.values() {
            let winner = tables.winner(&route.spec.network, route.spec.destination);
            assert_eq!(
                route_status_with(state, route, winner),
                route_status(state, route),
                "{}",
                route.metadata.name
            );
            for subnet in state.subnets.keys() {
                assert_eq!(
                    tables.routed_sources(subnet, route.spec.next_hop),
                    routed_sources(state, subnet, route.spec.next_hop),
                    "{subnet} via {}",
                    route.spec.next_hop
                );
            }
        }
    }

    #[test]
    fn the_indexed_tables_agree_with_the_per_route_answers() {
        let state = two_networks(&[("to-b", "b")], &[("to-a", "a")]);
        let text = format!(
            "{}{}{}{}",
            route("lab", "a", "192.168.50.0/24", "10.1.1.254"),
            route("default", "a", "0.0.0.0/0", "10.1.0.254"),
            route("narrow", "a", "10.2.0.128/25", "10.1.0.253"),
            route("wide", "a", "172.16.0.0/12", "10.1.0.254"),
        );
        let state = apply(&state, &text);
        assert_tables_agree(&state);
        assert_eq!(
            Tables::of(&state).routed_sources("a1", "10.1.0.254".parse().unwrap()),
            [
                "0.0.0.0/0".parse::<IpNet>().unwrap(),
                "172.16.0.0/12".parse().unwrap()
            ]
        );
        assert!(
            Tables::of(&state)
                .winner("nope", "10.0.0.0/8".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn gateway_macs_are_stable_local_unicast_and_per_node() {
        let node = Some(NodeId([1; 16]));
        let mac = derived_gateway_mac(node, "web");
        assert_eq!(mac, derived_gateway_mac(node, "web"));
        assert_ne!(mac, derived_gateway_mac(node, "db"));
        assert_ne!(mac, derived_gateway_mac(Some(NodeId([2; 16])), "web"));
        for index in 0..256u32 {
            let mac = derived_gateway_mac(node, &format!("s{index}"));
            assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}");
        }
        // Pinned: the formula is part of the contract (MACs must not change on upgrade).
        assert_eq!(
            derived_gateway_mac(Some(NodeId([0; 16])), "default").to_string(),
            "92:d7:6d:82:43:2f"
        );
        assert_eq!(mac.to_string(), "ce:72:a9:cf:e4:48");
        assert_eq!(
            derived_gateway_mac(None, "default"),
            derived_gateway_mac(Some(NodeId([0; 16])), "default")
        );
        let state = apply(
            &State::default(),
            &format!(
                "{}{}",
                network("a", &[]),
                subnet("a1", "a", "10.1.0.0/24", "10.1.0.1")
            ),
        );
        assert_eq!(
            gateway_mac(&state, &state.subnets["a1"]),
            derived_gateway_mac(None, "a1")
        );
        let mut fixed = state.subnets["a1"].clone();
        fixed.spec.gateway_mac = Some(MacAddr([2, 0, 0, 0, 0, 0x42]));
        assert_eq!(gateway_mac(&state, &fixed).to_string(), "02:00:00:00:00:42");
    }

    #[test]
    fn subnet_lists_for_messages() {
        let state = two_networks(&[], &[]);
        assert_eq!(
            describe_subnets(&state, "a"),
            "a1 10.1.0.0/24, a2 10.1.1.0/24"
        );
        assert_eq!(describe_subnets(&state, "nope"), "none");
        assert!(overlaps(
            "10.0.0.0/8".parse().unwrap(),
            "10.1.0.0/24".parse().unwrap()
        ));
        assert!(!overlaps(
            "10.1.0.0/24".parse().unwrap(),
            "10.1.1.0/24".parse().unwrap()
        ));
    }
}
