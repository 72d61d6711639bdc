//! Whole-batch validation and planning: given the current [`State`] and parsed documents,
//! compute the next state (with MACs and IPAM leases filled in) and the port work to do, or
//! refuse the whole batch. Pure: no I/O, so every refusal is testable without devices.
//!
//! Every document is checked against the current state *plus the batch*: a Subnet may name a
//! Network defined later in the same input, and two new interfaces may not take one address.
//! Checks that span resources (peered Networks must not overlap, a Route must not shadow a
//! connected prefix) refuse only what the batch would newly break, and blame the first
//! document, in input order, that breaks it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::ApiError;
use super::ipam::{IpamError, Leases, Pool};
use super::kinds::{CheckContext, Errors, KindVisitor, ResourceVisitor};
use super::nat_rules::{self, Batch};
use super::overlay;
use super::resource::OWNER_LABEL;
use super::resource::{
    Document, InterfaceState, Kind, MAX_MAC_AGEING_SECONDS, MAX_MAC_TABLE_LIMIT, MacAddr, Network,
    NetworkInterface, Origin, ResourceKind, Route, Subnet,
};
use super::routing;
use super::store::{State, SubnetIpamState};

/// How names that already exist are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create or update (`vswitchctl apply`).
    Apply,
    /// Create only: an existing name is a conflict (`vswitchctl attach`, `POST`).
    Create,
    /// Create or update resources the switch generates itself (the Overlay's); only the
    /// controller uses it. The other modes refuse to touch such resources.
    Generated,
}

/// What the Uplink's device needs after a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkWork {
    /// Open it: the Uplink (by name) is new.
    Open(String),
    /// Close and open it again: its interface or MAC changed, or it is not up (a retry).
    Reopen(String),
}

/// What `apply` did to one document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppliedResource {
    /// Canonical kind (`Subnet`).
    pub kind: String,
    /// Resource name.
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub action: String,
}

/// What applying a batch means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The state once the batch is applied. New and re-created interfaces have state
    /// `pending`; the controller sets `up` once their device exists.
    pub next: State,
    /// One entry per document, in input order.
    pub applied: Vec<AppliedResource>,
    /// NetworkInterfaces whose device must be created.
    pub attach: Vec<String>,
    /// NetworkInterfaces whose device must be removed and created again (their MAC,
    /// addresses or MTU changed).
    pub recreate: Vec<String>,
    /// What the Uplink's device needs, if anything.
    pub uplink: Option<UplinkWork>,
    /// False when every document was unchanged.
    pub changed: bool,
    /// Where each resource of the batch came from, for error messages.
    pub origins: BTreeMap<(Kind, String), Origin>,
}

/// Validates `docs` against `current` and plans the change.
///
/// # Errors
/// [`ApiError::Invalid`] or [`ApiError::Conflict`] for the first document that is wrong, in
/// input order, naming the document, kind/name and field. `current` is never modified.
pub fn plan(current: &State, docs: Vec<Document>, mode: Mode) -> Result<Plan, ApiError> {
    check_duplicates(&docs)?;
    let mut next = current.clone();
    let mut applied = Vec::with_capacity(docs.len());
    let mut origins: BTreeMap<(Kind, String), Origin> = BTreeMap::new();
    let mut changed_nics = Vec::new();
    let mut created_nics = Vec::new();
    let mut virtual_ips = Vec::new();

    // Overlay the batch on the current state; each kind keeps the status it owns.
    for doc in docs {
        let origin = doc.origin;
        let kind = doc.resource.kind();
        let name = doc.resource.name().to_string();
        let action = doc.resource.visit(Stage {
            current,
            next: &mut next,
        });
        match (kind, action) {
            (Kind::NetworkInterface, Action::Created) => created_nics.push(name.clone()),
            (Kind::NetworkInterface, Action::Configured) => changed_nics.push(name.clone()),
            (Kind::VirtualIp, Action::Created | Action::Configured) => {
                virtual_ips.push(name.clone());
            }
            _ => {}
        }
        applied.push(AppliedResource {
            kind: kind.as_str().to_string(),
            name: name.clone(),
            action: action.as_str().to_string(),
        });
        origins.insert((kind, name), origin);
    }

    // Semantic checks in input order; every problem of every document is collected.
    let batch = Batch::new(&origins);
    let mut ordered: Vec<(&(Kind, String), &Origin)> = origins.iter().collect();
    ordered.sort_by_key(|(_, origin)| origin.document);
    let mut errors = Errors::new();
    for ((kind, name), origin) in &ordered {
        if mode != Mode::Generated {
            errors.check(check_not_generated(origin, current, &next, *kind, name));
        }
        if current.contains(*kind, name) && mode == Mode::Create {
            errors.push(origin.conflict(
                "metadata.name",
                format!(
                    "{kind} {name:?} already exists; choose another name or delete the existing one first"
                ),
            ));
        }
        let cx = CheckContext {
            current,
            next: &next,
            batch,
            origin,
        };
        kind.visit(Check {
            cx: &cx,
            name,
            errors: &mut errors,
        });
    }
    errors.into_result()?;

    let origin_of = |name: &String| {
        origins
            .get(&(Kind::NetworkInterface, name.clone()))
            .cloned()
            .unwrap_or_else(|| Origin::resource(Kind::NetworkInterface, name))
    };
    let in_input_order = |names: &mut Vec<String>| {
        names.sort_by_key(|name| origin_of(name).document);
    };
    in_input_order(&mut created_nics);
    in_input_order(&mut changed_nics);
    let vip_origin = |name: &String| {
        origins
            .get(&(Kind::VirtualIp, name.clone()))
            .cloned()
            .unwrap_or_else(|| Origin::resource(Kind::VirtualIp, name))
    };
    virtual_ips.sort_by_key(|name| vip_origin(name).document);
    nat_rules::assign_virtual_ips(&mut next, &virtual_ips, &vip_origin)?;

    // Addresses and MACs of new and changed interfaces.
    let old_effective: BTreeMap<String, Effective> = changed_nics
        .iter()
        .filter_map(|name| {
            Some((
                name.clone(),
                effective(current, current.network_interfaces.get(name)?)?,
            ))
        })
        .collect();
    assign_addresses(&mut next, current, &created_nics, &changed_nics, &origin_of)?;
    assign_macs(&mut next, &created_nics, &changed_nics, &origin_of)?;

    let mut recreate = Vec::new();
    for name in &changed_nics {
        let Some(nic) = next.network_interfaces.get(name) else {
            continue;
        };
        if effective(&next, nic).as_ref() != old_effective.get(name) {
            recreate.push(name.clone());
            if let Some(nic) = next.network_interfaces.get_mut(name) {
                nic.status.state = InterfaceState::Pending;
                nic.status.message = None;
            }
        }
    }
    for name in &created_nics {
        if let Some(nic) = next.network_interfaces.get_mut(name) {
            nic.status.state = InterfaceState::Pending;
            nic.status.message = None;
            nic.status.host_ifname = None;
        }
    }

    let uplink = uplink_work(current, &mut next, &applied);
    if let Some(UplinkWork::Reopen(name)) = &uplink {
        // A retry of a lost Uplink re-configures its device even when the spec is the same.
        for entry in &mut applied {
            if entry.kind == Kind::Uplink.as_str() && entry.name == *name {
                entry.action = Action::Configured.as_str().to_string();
            }
        }
    }
    let changed = uplink.is_some()
        || applied
            .iter()
            .any(|a| a.action != Action::Unchanged.as_str());
    Ok(Plan {
        next,
        applied,
        attach: created_nics,
        recreate,
        uplink,
        changed,
        origins,
    })
}

/// What the Uplink's device needs: opening when new; re-opening when its interface or MAC
/// changed, or when it is not up (applying it again retries). Marks it `pending` then.
fn uplink_work(
    current: &State,
    next: &mut State,
    applied: &[AppliedResource],
) -> Option<UplinkWork> {
    let kind = Kind::Uplink.as_str();
    let applied = applied.iter().find(|a| a.kind == kind)?;
    let name = applied.name.clone();
    let new = next.uplinks.get(&name)?;
    let work = match current.uplinks.get(&name) {
        None => UplinkWork::Open(name.clone()),
        Some(old) => {
            let moved = old.spec.interface != new.spec.interface
                || nat_rules::uplink_mac(current, old) != nat_rules::uplink_mac(next, new);
            let retry = old.status.state != InterfaceState::Up;
            if !moved && !retry {
                return None;
            }
            UplinkWork::Reopen(name.clone())
        }
    };
    if let Some(uplink) = next.uplinks.get_mut(&name) {
        uplink.status.state = InterfaceState::Pending;
        uplink.status.message = None;
    }
    Some(work)
}

/// Checks that `kind`/`name` may be deleted from `current`.
///
/// # Errors
/// [`ApiError::NotFound`], or [`ApiError::Conflict`] naming the resources that depend on it.
pub fn check_delete(current: &State, kind: Kind, name: &str) -> Result<(), ApiError> {
    if !current.contains(kind, name) {
        return Err(ApiError::NotFound {
            kind: kind.as_str().into(),
            name: name.into(),
        });
    }
    for (what, dependants) in current.dependants(kind, name) {
        if !dependants.is_empty() {
            return Err(ApiError::Conflict {
                message: format!(
                    "{kind} {name:?} still has {what}: {}; delete them first",
                    dependants.join(", ")
                ),
                field: None,
            });
        }
    }
    Ok(())
}

/// Refuses a user's document for a resource the switch generated (or one that claims to be).
fn check_not_generated(
    origin: &Origin,
    current: &State,
    next: &State,
    kind: Kind,
    name: &str,
) -> Result<(), ApiError> {
    let owner = |state: &State| generated_by(state, kind, name);
    if let Some(owner) = owner(current) {
        return Err(origin.conflict(
            "metadata.name",
            format!(
                "{kind} {name:?} is generated by {owner}; change the {owner} instead (its generated resources follow it)"
            ),
        ));
    }
    if owner(next).is_some() {
        return Err(origin.invalid(
            &format!("metadata.labels.{OWNER_LABEL}"),
            "is reserved for resources the switch generates; remove the label",
        ));
    }
    Ok(())
}

/// The generated resource's owner label, if `kind`/`name` is one.
pub fn generated_by(state: &State, kind: Kind, name: &str) -> Option<String> {
    state.metadata(kind, name)?.labels.get(OWNER_LABEL).cloned()
}

/// True when `state` holds a resource `kind`/`name`.
pub fn exists(state: &State, kind: Kind, name: &str) -> bool {
    state.contains(kind, name)
}

/// Puts one document's resource into the next state, with the status its kind keeps, and
/// says what applying it does.
struct Stage<'a> {
    current: &'a State,
    next: &'a mut State,
}

impl ResourceVisitor for Stage<'_> {
    type Output = Action;

    fn visit<K: ResourceKind>(self, mut resource: K) -> Action {
        let name = resource.metadata().name.clone();
        let old = K::table(self.current).get(&name);
        resource.carry_status(old);
        let action = action(
            old.map(|o| (o.metadata(), o.spec())),
            (resource.metadata(), resource.spec()),
        );
        K::table_mut(self.next).insert(name, resource);
        action
    }
}

/// Runs one resource's kind checks.
struct Check<'a, 'b> {
    cx: &'a CheckContext<'b>,
    name: &'a str,
    errors: &'a mut Errors,
}

impl KindVisitor for Check<'_, '_> {
    type Output = ();

    fn visit<K: ResourceKind>(self) {
        if let Some(resource) = K::table(self.cx.next).get(self.name) {
            resource.check(self.cx, self.errors);
        }
    }
}

/// The leases of every Subnet, rebuilt from the interfaces' status, with the persisted
/// cursors. Addresses of interfaces whose subnet is missing are ignored.
pub fn leases(state: &State) -> BTreeMap<String, Leases> {
    let mut all: BTreeMap<String, Leases> = state
        .subnets
        .keys()
        .map(|name| {
            let last = state.ipam.get(name).and_then(|i| i.last_allocated);
            (name.clone(), Leases::new(last))
        })
        .collect();
    for nic in state.network_interfaces.values() {
        if let Some(leases) = all.get_mut(&nic.spec.subnet) {
            for ip in &nic.status.ips {
                leases.insert(ip.addr(), &nic.metadata.name);
            }
        }
    }
    all
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Created,
    Configured,
    Unchanged,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        }
    }
}

fn action<M: PartialEq, S: PartialEq>(old: Option<(&M, &S)>, new: (&M, &S)) -> Action {
    match old {
        None => Action::Created,
        Some(old) if old == new => Action::Unchanged,
        Some(_) => Action::Configured,
    }
}

/// What the device of an interface is configured with; a change means re-creating it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Effective {
    mac: Option<MacAddr>,
    ips: Vec<Ipv4Net>,
    mtu: u16,
}

fn effective(state: &State, nic: &NetworkInterface) -> Option<Effective> {
    let subnet = state.subnets.get(&nic.spec.subnet)?;
    Some(Effective {
        mac: nic.status.mac,
        ips: nic.status.ips.clone(),
        mtu: overlay::interface_mtu(state, nic, subnet),
    })
}

fn check_duplicates(docs: &[Document]) -> Result<(), ApiError> {
    let mut seen: BTreeMap<(Kind, &str), usize> = BTreeMap::new();
    for (position, doc) in docs.iter().enumerate() {
        let key = (doc.resource.kind(), doc.resource.name());
        if let Some(first) = seen.insert(key, position) {
            let first = docs[first].origin.document.map_or(first, |d| d) + 1;
            return Err(doc.origin.invalid(
                "metadata.name",
                format!(
                    "{} {:?} is also defined in document {first}; define each resource once per input",
                    key.0, key.1
                ),
            ));
        }
    }
    Ok(())
}

fn recreate_hint(kind: Kind) -> String {
    format!("delete the {kind} and create it again")
}

pub(crate) fn check_subnet_immutables(
    origin: &Origin,
    old: &Subnet,
    new: &Subnet,
) -> Result<(), ApiError> {
    let name = &old.metadata.name;
    let hint = recreate_hint(Kind::Subnet);
    if old.spec.network != new.spec.network {
        return Err(origin.invalid(
            "spec.network",
            format!(
                "Subnet {name:?} belongs to Network {:?}; network cannot change: {hint}",
                old.spec.network
            ),
        ));
    }
    if old.spec.cidr != new.spec.cidr {
        return Err(origin.invalid(
            "spec.cidr",
            format!(
                "Subnet {name:?} has cidr {}; cidr cannot change: {hint}",
                old.spec.cidr
            ),
        ));
    }
    if old.spec.gateway != new.spec.gateway {
        return Err(origin.invalid(
            "spec.gateway",
            format!(
                "Subnet {name:?} has gateway {}; gateway cannot change: {hint}",
                old.spec.gateway
            ),
        ));
    }
    Ok(())
}

pub(crate) fn check_interface_immutables(
    origin: &Origin,
    old: &NetworkInterface,
    new: &NetworkInterface,
) -> Result<(), ApiError> {
    let name = &old.metadata.name;
    let hint = recreate_hint(Kind::NetworkInterface);
    let (o, n) = (&old.spec, &new.spec);
    let refuse = |field: &str, was: String| {
        Err(origin.invalid(
            &format!("spec.{field}"),
            format!("NetworkInterface {name:?} has {field} {was}; {field} cannot change: {hint}"),
        ))
    };
    if o.subnet != n.subnet {
        return refuse("subnet", format!("{:?}", o.subnet));
    }
    if o.netns != n.netns {
        return refuse("netns", o.netns.to_string());
    }
    if o.ifname != n.ifname {
        return refuse("ifname", o.ifname.clone());
    }
    if o.kind != n.kind {
        return refuse("kind", format!("{:?}", o.kind).to_lowercase());
    }
    Ok(())
}

pub(crate) fn check_subnet(
    origin: &Origin,
    old: Option<&Subnet>,
    next: &State,
    subnet: &Subnet,
) -> Result<(), ApiError> {
    let spec = &subnet.spec;
    let name = &subnet.metadata.name;
    let cidr = spec.cidr;
    if !next.networks.contains_key(&spec.network) {
        return Err(origin.invalid(
            "spec.network",
            format!(
                "Network {:?} does not exist; create it first (it may be in the same input)",
                spec.network
            ),
        ));
    }
    let host = |field: &str, what: &str, addr: Ipv4Addr| -> Result<(), ApiError> {
        if !cidr.contains(&addr) {
            Err(origin.invalid(
                field,
                format!("{what} {addr} is outside {cidr}; use a host address inside the subnet"),
            ))
        } else if addr == cidr.network() || addr == cidr.broadcast() {
            let which = if addr == cidr.network() {
                "network"
            } else {
                "broadcast"
            };
            Err(origin.invalid(
                field,
                format!(
                    "{what} {addr} is the {which} address of {cidr}; use a host address ({}..={})",
                    Ipv4Addr::from(u32::from(cidr.network()) + 1),
                    Ipv4Addr::from(u32::from(cidr.broadcast()) - 1)
                ),
            ))
        } else {
            Ok(())
        }
    };
    host("spec.gateway", "gateway", spec.gateway)?;
    if let Some(start) = spec.range_start {
        host("spec.rangeStart", "rangeStart", start)?;
    }
    if let Some(end) = spec.range_end {
        host("spec.rangeEnd", "rangeEnd", end)?;
    }
    if let (Some(start), Some(end)) = (spec.range_start, spec.range_end) {
        if start > end {
            return Err(origin.invalid(
                "spec.rangeEnd",
                format!("rangeEnd {end} is before rangeStart {start}; rangeStart must not be after rangeEnd"),
            ));
        }
    }
    for (index, addr) in spec.reserved.iter().enumerate() {
        if !cidr.contains(addr) {
            return Err(origin.invalid(
                &format!("spec.reserved[{index}]"),
                format!(
                    "reserved address {addr} is outside {cidr}; list addresses inside the subnet"
                ),
            ));
        }
    }
    if !(1..=MAX_MAC_AGEING_SECONDS).contains(&spec.mac_ageing_seconds) {
        return Err(origin.invalid(
            "spec.macAgeingSeconds",
            format!(
                "invalid macAgeingSeconds {}: must be 1..={MAX_MAC_AGEING_SECONDS} (default 300)",
                spec.mac_ageing_seconds
            ),
        ));
    }
    if !(1..=MAX_MAC_TABLE_LIMIT).contains(&spec.mac_table_limit) {
        return Err(origin.invalid(
            "spec.macTableLimit",
            format!(
                "invalid macTableLimit {}: must be 1..={MAX_MAC_TABLE_LIMIT} (default 8192)",
                spec.mac_table_limit
            ),
        ));
    }
    if let Some(mac) = spec.gateway_mac {
        let user = next
            .network_interfaces
            .values()
            .find(|n| n.spec.subnet == *name && n.spec.mac.or(n.status.mac) == Some(mac));
        if let Some(user) = user {
            return Err(origin.conflict(
                "spec.gatewayMac",
                format!(
                    "MAC {mac} is used by NetworkInterface {:?} in Subnet {name:?}; choose another gatewayMac, or leave it out to derive one",
                    user.metadata.name
                ),
            ));
        }
    }
    for other in next.subnets.values() {
        let other_cidr = other.spec.cidr;
        if other.metadata.name != *name
            && other.spec.network == spec.network
            && (cidr.contains(&other_cidr.network()) || other_cidr.contains(&cidr.network()))
        {
            return Err(origin.invalid(
                "spec.cidr",
                format!(
                    "{cidr} overlaps Subnet {:?} ({other_cidr}) of Network {:?}; the Subnets of one Network must not overlap",
                    other.metadata.name, spec.network
                ),
            ));
        }
    }
    // The MTU of interfaces that inherit it is fixed while they exist.
    if let Some(old) = old.map(|o| o.spec.mtu) {
        let inheriting: Vec<&str> = next
            .network_interfaces
            .values()
            .filter(|n| n.spec.subnet == *name && n.spec.mtu.is_none())
            .map(|n| n.metadata.name.as_str())
            .collect();
        if old != spec.mtu && !inheriting.is_empty() {
            return Err(origin.invalid(
                "spec.mtu",
                format!(
                    "Subnet {name:?} has mtu {old}, used by NetworkInterfaces {}; the mtu cannot change while they use it: delete them first, or give each its own spec.mtu",
                    inheriting.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// A Network's peerings: not itself, each name and peer once, and no peering this batch makes
/// `Ready` between Networks whose Subnets overlap.
pub(crate) fn check_network(
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

/// A new Subnet must not overlap a Subnet of a Network its own is `Ready`-peered with, and
/// must not take the destination of a Route of its Network (its connected route would hide
/// the Route).
pub(crate) fn check_new_subnet_neighbours(
    origin: &Origin,
    next: &State,
    subnet: &Subnet,
) -> Result<(), ApiError> {
    let network = &subnet.spec.network;
    let cidr = subnet.spec.cidr;
    for peer in routing::ready_peers(next, network) {
        let other = routing::subnets_of(next, peer)
            .into_iter()
            .find(|o| routing::overlaps(o.spec.cidr, cidr));
        if let Some(other) = other {
            return Err(origin.invalid(
                "spec.cidr",
                format!(
                    "{cidr} of Network {network:?} overlaps Subnet {:?} ({}) of Network {peer:?}, which is peered with Network {network:?} (Ready); peered Networks must not have overlapping CIDRs: choose a CIDR outside the peer's Subnets, or remove the peering",
                    other.metadata.name, other.spec.cidr
                ),
            ));
        }
    }
    let route = next
        .routes
        .values()
        .find(|r| r.spec.network == *network && r.spec.destination == cidr);
    if let Some(route) = route {
        return Err(origin.invalid(
            "spec.cidr",
            format!(
                "{cidr} is the destination of Route {:?} of Network {network:?}; this Subnet's connected route would hide it: delete the Route first, or choose another CIDR",
                route.metadata.name
            ),
        ));
    }
    Ok(())
}

/// A Route: its Network exists, its next hop is a router's address in one of the Network's
/// Subnets, and its destination is neither a connected prefix nor another Route's.
pub(crate) fn check_route(origin: &Origin, next: &State, route: &Route) -> Result<(), ApiError> {
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

pub(crate) fn check_interface(
    origin: &Origin,
    next: &State,
    nic: &NetworkInterface,
) -> Result<(), ApiError> {
    let spec = &nic.spec;
    let name = &nic.metadata.name;
    let Some(subnet) = next.subnets.get(&spec.subnet) else {
        return Err(origin.invalid(
            "spec.subnet",
            format!(
                "Subnet {:?} does not exist; name an existing Subnet (default) or create it first",
                spec.subnet
            ),
        ));
    };
    for other in next.network_interfaces.values() {
        if other.metadata.name == *name {
            continue;
        }
        if other.spec.netns == spec.netns && other.spec.ifname == spec.ifname {
            return Err(origin.conflict(
                "spec.ifname",
                format!(
                    "interface {} in netns {} is already NetworkInterface {:?}; choose another ifname",
                    spec.ifname, spec.netns, other.metadata.name
                ),
            ));
        }
        let other_mac = other.spec.mac.or(other.status.mac);
        if other.spec.subnet == spec.subnet && spec.mac.is_some() && spec.mac == other_mac {
            let mac = spec.mac.map(|m| m.to_string()).unwrap_or_default();
            return Err(origin.conflict(
                "spec.mac",
                format!(
                    "MAC {mac} is already used by NetworkInterface {:?} in Subnet {:?}; choose another or leave mac empty to generate one",
                    other.metadata.name, spec.subnet
                ),
            ));
        }
    }
    if let Some(mac) = spec.mac {
        if mac == routing::gateway_mac(next, subnet) {
            return Err(origin.conflict(
                "spec.mac",
                format!(
                    "MAC {mac} is the gateway MAC of Subnet {:?}; choose another or leave mac empty to generate one",
                    spec.subnet
                ),
            ));
        }
    }
    let pool = Pool::new(&subnet.spec);
    let prefix = subnet.spec.cidr.prefix_len();
    let mut seen = BTreeSet::new();
    for (index, request) in spec.ips.iter().enumerate() {
        let field = format!("spec.ips[{index}]");
        if let Some(len) = request.prefix_len.filter(|len| *len != prefix) {
            return Err(origin.invalid(
                &field,
                format!(
                    "{request} has prefix /{len} but Subnet {:?} is {}; write {}/{prefix} or {}",
                    spec.subnet, subnet.spec.cidr, request.addr, request.addr
                ),
            ));
        }
        if !seen.insert(request.addr) {
            return Err(origin.invalid(&field, format!("{} is listed twice", request.addr)));
        }
        if let Err(err) = pool.check_host(request.addr) {
            return Err(origin.invalid(&field, err));
        }
    }
    Ok(())
}

/// Gives new and changed interfaces their addresses: static ones first (so automatic
/// allocation never takes an address the batch asks for), then allocated ones.
fn assign_addresses(
    next: &mut State,
    current: &State,
    created: &[String],
    changed: &[String],
    origin_of: &dyn Fn(&String) -> Origin,
) -> Result<(), ApiError> {
    let mut all = leases(next);
    let mut statics: Vec<&String> = Vec::new();
    let mut dynamic: Vec<&String> = Vec::new();
    for name in created.iter().chain(changed) {
        let Some(nic) = next.network_interfaces.get(name) else {
            continue;
        };
        let old = current.network_interfaces.get(name);
        let keep = nic.spec.ips.is_empty()
            && old.is_some_and(|o| o.spec.ips.is_empty() && !o.status.ips.is_empty());
        if keep {
            continue;
        }
        if let Some(leases) = all.get_mut(&nic.spec.subnet) {
            leases.release(name);
        }
        if nic.spec.ips.is_empty() {
            dynamic.push(name);
        } else {
            statics.push(name);
        }
    }
    // Every name below comes from `next` and its subnet exists (checked before).
    for name in statics {
        let Some(nic) = next.network_interfaces.get_mut(name) else {
            continue;
        };
        let (Some(subnet), Some(leases)) = (
            next.subnets.get(&nic.spec.subnet),
            all.get_mut(&nic.spec.subnet),
        ) else {
            continue;
        };
        let pool = Pool::new(&subnet.spec);
        let mut ips = Vec::new();
        for (index, request) in nic.spec.ips.iter().enumerate() {
            leases
                .lease_static(&pool, request.addr, name)
                .map_err(|err| ipam_error(&origin_of(name), &format!("spec.ips[{index}]"), err))?;
            ips.push(with_prefix(request.addr, &subnet.spec.cidr));
        }
        nic.status.ips = ips;
    }
    for name in dynamic {
        let Some(nic) = next.network_interfaces.get_mut(name) else {
            continue;
        };
        let (Some(subnet), Some(leases)) = (
            next.subnets.get(&nic.spec.subnet),
            all.get_mut(&nic.spec.subnet),
        ) else {
            continue;
        };
        let pool = Pool::new(&subnet.spec);
        let addr = leases
            .allocate(&pool, name)
            .map_err(|err| ipam_error(&origin_of(name), "spec.ips", err))?;
        nic.status.ips = vec![with_prefix(addr, &subnet.spec.cidr)];
    }
    for (subnet, leases) in all {
        match leases.last {
            Some(last) => {
                next.ipam.insert(
                    subnet,
                    SubnetIpamState {
                        last_allocated: Some(last),
                    },
                );
            }
            None => {
                next.ipam.remove(&subnet);
            }
        }
    }
    Ok(())
}

fn with_prefix(addr: Ipv4Addr, cidr: &Ipv4Net) -> Ipv4Net {
    // The prefix comes from a valid Ipv4Net, so it is <= 32 and `new` cannot fail.
    Ipv4Net::new(addr, cidr.prefix_len()).unwrap_or(*cidr)
}

fn ipam_error(origin: &Origin, field: &str, err: IpamError) -> ApiError {
    match err {
        IpamError::InUse { .. } | IpamError::Exhausted { .. } => origin.conflict(field, err),
        _ => origin.invalid(field, err),
    }
}

/// Gives new interfaces their MAC (the spec's, else a generated one) and changed ones the
/// spec's when set (else they keep theirs).
fn assign_macs(
    next: &mut State,
    created: &[String],
    changed: &[String],
    origin_of: &dyn Fn(&String) -> Origin,
) -> Result<(), ApiError> {
    for name in created.iter().chain(changed) {
        let Some(nic) = next.network_interfaces.get(name) else {
            continue;
        };
        let subnet = nic.spec.subnet.clone();
        let mac = match (nic.spec.mac, nic.status.mac) {
            (Some(mac), _) => mac,
            (None, Some(mac)) if !created.contains(name) => mac,
            (None, _) => {
                let mut used: BTreeSet<MacAddr> = next
                    .network_interfaces
                    .values()
                    .filter(|n| n.spec.subnet == subnet && n.metadata.name != *name)
                    .filter_map(|n| n.spec.mac.or(n.status.mac))
                    .collect();
                if let Some(subnet) = next.subnets.get(&subnet) {
                    used.insert(routing::gateway_mac(next, subnet));
                }
                let mut attempt = 0u32;
                loop {
                    let mac = MacAddr::random(&format!("{name}/{attempt}"));
                    if !used.contains(&mac) {
                        break mac;
                    }
                    attempt += 1;
                    if attempt > 64 {
                        return Err(origin_of(name).conflict(
                            "spec.mac",
                            "could not generate a MAC address unused in the subnet; set spec.mac",
                        ));
                    }
                }
            }
        };
        if let Some(nic) = next.network_interfaces.get_mut(name) {
            nic.status.mac = Some(mac);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::resource::parse_documents;

    const BASE: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
";

    fn nic(name: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {name}}}\nspec: {{subnet: web, netns: {name}{extra}}}\n"
        )
    }

    fn try_plan(current: &State, text: &str) -> Result<Plan, ApiError> {
        plan(current, parse_documents(text)?, Mode::Apply)
    }

    fn apply(current: &State, text: &str) -> State {
        try_plan(current, text).unwrap().next
    }

    fn refusal(current: &State, text: &str) -> ApiError {
        try_plan(current, text).unwrap_err()
    }

    fn base() -> State {
        apply(&State::default(), BASE)
    }

    fn ips(state: &State, name: &str) -> Vec<String> {
        state.network_interfaces[name]
            .status
            .ips
            .iter()
            .map(|ip| ip.to_string())
            .collect()
    }

    #[test]
    fn actions_and_changed() {
        let plan = try_plan(&State::default(), BASE).unwrap();
        assert!(plan.changed);
        let actions: Vec<_> = plan.applied.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(actions, ["created", "created"]);
        let again = try_plan(&plan.next, BASE).unwrap();
        assert!(!again.changed);
        assert!(again.applied.iter().all(|a| a.action == "unchanged"));
        let relabel = BASE.replace("{name: web}", "{name: web, labels: {a: b}}");
        let plan = try_plan(&again.next, &relabel).unwrap();
        assert_eq!(plan.applied[1].action, "configured");
        assert!(plan.changed);
    }

    #[test]
    fn subnet_may_name_a_network_later_in_the_batch() {
        let docs: Vec<&str> = BASE.split("---\n").collect();
        let reversed = format!("{}---\n{}", docs[1], docs[0]);
        assert_eq!(apply(&State::default(), &reversed).subnets.len(), 1);
        let err = refusal(&State::default(), docs[1]);
        assert_eq!(
            err.to_string(),
            "document 1 (Subnet \"web\"): spec.network: Network \"blue\" does not exist; create \
             it first (it may be in the same input)"
        );
        assert_eq!(err.field(), Some("documents[0].spec.network"));
    }

    #[test]
    fn subnet_address_checks() {
        let cases = [
            (
                "gateway: 10.1.0.1",
                "gateway: 10.2.0.1",
                "spec.gateway: gateway 10.2.0.1 is outside 10.1.0.0/24",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.0",
                "spec.gateway: gateway 10.1.0.0 is the network address of 10.1.0.0/24; use a host address (10.1.0.1..=10.1.0.254)",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.255",
                "is the broadcast address",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, rangeStart: 10.1.0.50, rangeEnd: 10.1.0.40",
                "spec.rangeEnd: rangeEnd 10.1.0.40 is before rangeStart 10.1.0.50",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, rangeStart: 10.1.1.5",
                "spec.rangeStart: rangeStart 10.1.1.5 is outside",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, rangeEnd: 10.1.0.255",
                "spec.rangeEnd: rangeEnd 10.1.0.255 is the broadcast address",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, reserved: [10.1.0.9, 10.9.0.9]",
                "spec.reserved[1]: reserved address 10.9.0.9 is outside 10.1.0.0/24",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, macAgeingSeconds: 0",
                "spec.macAgeingSeconds: invalid macAgeingSeconds 0: must be 1..=604800",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, macTableLimit: 0",
                "spec.macTableLimit: invalid macTableLimit 0",
            ),
        ];
        for (from, to, want) in cases {
            let text = BASE.replace(from, to);
            let msg = refusal(&State::default(), &text).to_string();
            assert!(msg.starts_with("document 2 (Subnet \"web\"): "), "{msg}");
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
        }
    }

    #[test]
    fn subnets_of_one_network_must_not_overlap() {
        let other = "---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: db}\nspec: {network: NET, cidr: 10.1.0.128/25, gateway: 10.1.0.129}\n";
        let err = refusal(&base(), &other.replace("NET", "blue"));
        assert_eq!(
            err.to_string(),
            "document 1 (Subnet \"db\"): spec.cidr: 10.1.0.128/25 overlaps Subnet \"web\" \
             (10.1.0.0/24) of Network \"blue\"; the Subnets of one Network must not overlap"
        );
        // Another Network is another address space.
        let red = "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: red}\n";
        let text = format!("{red}{}", other.replace("NET", "red"));
        assert_eq!(apply(&base(), &text).subnets.len(), 2);
    }

    #[test]
    fn duplicates_in_one_input() {
        let text = format!("{BASE}---\n{}", BASE.split("---\n").nth(1).unwrap());
        let err = refusal(&State::default(), &text);
        assert_eq!(
            err.to_string(),
            "document 3 (Subnet \"web\"): metadata.name: Subnet \"web\" is also defined in \
             document 2; define each resource once per input"
        );
    }

    #[test]
    fn create_refuses_an_existing_name() {
        let docs = parse_documents(BASE).unwrap();
        let err = plan(&base(), docs, Mode::Create).unwrap_err();
        assert_eq!(err.status(), 409);
        assert!(
            err.to_string().contains("Network \"blue\" already exists"),
            "{err}"
        );
    }

    #[test]
    fn allocates_in_order_and_keeps_the_cursor() {
        let text = format!("{}{}{}", nic("a", ""), nic("b", ""), nic("c", ""));
        let state = apply(&base(), &text);
        assert_eq!(ips(&state, "a"), ["10.1.0.2/24"]);
        assert_eq!(ips(&state, "b"), ["10.1.0.3/24"]);
        assert_eq!(ips(&state, "c"), ["10.1.0.4/24"]);
        assert_eq!(
            state.ipam["web"].last_allocated,
            Some(Ipv4Addr::new(10, 1, 0, 4))
        );
        for name in ["a", "b", "c"] {
            let status = &state.network_interfaces[name].status;
            assert_eq!(status.state, InterfaceState::Pending);
            let mac = status.mac.unwrap();
            assert_eq!(mac.0[0] & 3, 2, "{mac}");
        }
        // Deleting b and adding d continues after c (host-local), not at b's address.
        let mut current = state.clone();
        current.network_interfaces.remove("b");
        let state = apply(&current, &nic("d", ""));
        assert_eq!(ips(&state, "d"), ["10.1.0.5/24"]);
    }

    #[test]
    fn reapplying_keeps_allocations_and_mac() {
        let first = apply(&base(), &nic("a", ""));
        let plan = try_plan(&first, &nic("a", "")).unwrap();
        assert!(!plan.changed);
        assert_eq!(plan.next, first);
    }

    #[test]
    fn static_addresses_are_checked() {
        let cases = [
            (
                ", ips: [10.2.0.5]",
                400,
                "spec.ips[0]: address 10.2.0.5 is outside subnet 10.1.0.0/24",
            ),
            (
                ", ips: [10.1.0.1]",
                400,
                "spec.ips[0]: address 10.1.0.1 is the gateway of 10.1.0.0/24",
            ),
            (", ips: [10.1.0.0]", 400, "is the network address"),
            (", ips: [10.1.0.255/24]", 400, "is the broadcast address"),
            (
                ", ips: [10.1.0.9/16]",
                400,
                "spec.ips[0]: 10.1.0.9/16 has prefix /16 but Subnet \"web\" is 10.1.0.0/24; write 10.1.0.9/24 or 10.1.0.9",
            ),
            (
                ", ips: [10.1.0.9, 10.1.0.9/24]",
                400,
                "spec.ips[1]: 10.1.0.9 is listed twice",
            ),
            (
                ", ips: [10.1.0.2]",
                409,
                "spec.ips[0]: address 10.1.0.2 is already used by NetworkInterface \"a\"",
            ),
        ];
        let current = apply(&base(), &nic("a", ""));
        for (extra, status, want) in cases {
            let err = refusal(&current, &nic("b", extra));
            assert_eq!(err.status(), status, "{err}");
            let msg = err.to_string();
            assert!(
                msg.starts_with("document 1 (NetworkInterface \"b\"): "),
                "{msg}"
            );
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
        }
        let state = apply(&current, &nic("b", ", ips: [10.1.0.9/24, 10.1.0.10]"));
        assert_eq!(ips(&state, "b"), ["10.1.0.9/24", "10.1.0.10/24"]);
        // A static address does not move the cursor.
        assert_eq!(
            state.ipam["web"].last_allocated,
            Some(Ipv4Addr::new(10, 1, 0, 2))
        );
    }

    #[test]
    fn one_batch_cannot_take_an_address_twice() {
        let text = format!(
            "{}{}",
            nic("a", ", ips: [10.1.0.7]"),
            nic("b", ", ips: [10.1.0.7]")
        );
        let err = refusal(&base(), &text);
        assert_eq!(err.status(), 409);
        assert!(err.to_string().starts_with("document 2 (NetworkInterface \"b\"): spec.ips[0]: address 10.1.0.7 is already used by NetworkInterface \"a\""), "{err}");
    }

    #[test]
    fn allocation_avoids_statics_of_the_same_batch() {
        let text = format!("{}{}", nic("a", ""), nic("b", ", ips: [10.1.0.2]"));
        let state = apply(&base(), &text);
        assert_eq!(ips(&state, "a"), ["10.1.0.3/24"]);
        assert_eq!(ips(&state, "b"), ["10.1.0.2/24"]);
    }

    #[test]
    fn exhausted_range_is_a_conflict() {
        let small = BASE.replace(
            "gateway: 10.1.0.1",
            "gateway: 10.1.0.1, rangeStart: 10.1.0.2, rangeEnd: 10.1.0.3",
        );
        let current = apply(&State::default(), &small);
        let current = apply(&current, &format!("{}{}", nic("a", ""), nic("b", "")));
        let err = refusal(&current, &nic("c", ""));
        assert_eq!(err.status(), 409);
        assert!(
            err.to_string()
                .contains("spec.ips: no free address left in 10.1.0.2..=10.1.0.3"),
            "{err}"
        );
    }

    #[test]
    fn interface_references_and_collisions() {
        let current = apply(&base(), &nic("a", ", mac: '02:00:00:00:00:0a'"));
        let err = refusal(&current, &nic("b", "").replace("subnet: web", "subnet: db"));
        assert_eq!(
            err.to_string(),
            "document 1 (NetworkInterface \"b\"): spec.subnet: Subnet \"db\" does not exist; \
             name an existing Subnet (default) or create it first"
        );
        let err = refusal(&current, &nic("b", "").replace("netns: b", "netns: a"));
        assert_eq!(err.status(), 409);
        assert!(err.to_string().contains("spec.ifname: interface eth0 in netns a is already NetworkInterface \"a\"; choose another ifname"), "{err}");
        let ok = nic("b", ", ifname: eth1").replace("netns: b", "netns: a");
        assert_eq!(apply(&current, &ok).network_interfaces.len(), 2);
        let err = refusal(&current, &nic("b", ", mac: '02:00:00:00:00:0a'"));
        assert_eq!(err.status(), 409);
        assert!(
            err.to_string().contains(
                "spec.mac: MAC 02:00:00:00:00:0a is already used by NetworkInterface \"a\""
            ),
            "{err}"
        );
        // A generated MAC counts too.
        let generated = apply(&base(), &nic("a", ""));
        let mac = generated.network_interfaces["a"].status.mac.unwrap();
        let err = refusal(&generated, &nic("b", &format!(", mac: '{mac}'")));
        assert_eq!(err.status(), 409);
    }

    #[test]
    fn immutable_fields_need_delete_and_create() {
        let current = apply(&base(), &nic("a", ""));
        let cases = [
            (
                nic("a", "").replace("netns: a", "netns: b"),
                "spec.netns: NetworkInterface \"a\" has netns a; netns cannot change: delete the NetworkInterface and create it again",
            ),
            (
                nic("a", ", ifname: eth1"),
                "spec.ifname: NetworkInterface \"a\" has ifname eth0; ifname cannot change",
            ),
            (
                nic("a", ", kind: veth"),
                "spec.kind: NetworkInterface \"a\" has kind tap; kind cannot change",
            ),
        ];
        for (text, want) in cases {
            let msg = refusal(&current, &text).to_string();
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
        }
        let moved = BASE.replace(
            "cidr: 10.1.0.0/24, gateway: 10.1.0.1",
            "cidr: 10.2.0.0/24, gateway: 10.2.0.1",
        );
        let msg = refusal(&current, &moved).to_string();
        assert!(msg.contains("spec.cidr: Subnet \"web\" has cidr 10.1.0.0/24; cidr cannot change: delete the Subnet and create it again"), "{msg}");
    }

    #[test]
    fn subnet_mtu_is_fixed_while_interfaces_inherit_it() {
        let current = apply(&base(), &nic("a", ""));
        let bigger = BASE.replace("gateway: 10.1.0.1", "gateway: 10.1.0.1, mtu: 9000");
        let msg = refusal(&current, &bigger).to_string();
        assert!(
            msg.contains("spec.mtu: Subnet \"web\" has mtu 1500, used by NetworkInterfaces a;"),
            "{msg}"
        );
        // Fine once the interface has its own MTU, or with no interfaces.
        let text = format!("{bigger}{}", nic("a", ", mtu: 1500"));
        assert!(try_plan(&current, &text).is_ok());
        assert_eq!(apply(&base(), &bigger).subnets["web"].spec.mtu, 9000);
    }

    #[test]
    fn changes_that_need_a_new_device() {
        let mut current = apply(&base(), &nic("a", ""));
        current
            .network_interfaces
            .get_mut("a")
            .unwrap()
            .status
            .state = InterfaceState::Up;
        // Labels only: no device work.
        let labelled = nic("a", "").replace("{name: a}", "{name: a, labels: {x: y}}");
        let plan = try_plan(&current, &labelled).unwrap();
        assert_eq!(plan.applied[0].action, "configured");
        assert!(plan.recreate.is_empty() && plan.attach.is_empty());
        assert_eq!(
            plan.next.network_interfaces["a"].status.state,
            InterfaceState::Up
        );
        // New addresses, MAC or MTU: re-create.
        for extra in [
            ", ips: [10.1.0.50]",
            ", mac: '02:00:00:00:00:99'",
            ", mtu: 9000",
        ] {
            let plan = try_plan(&current, &nic("a", extra)).unwrap();
            assert_eq!(plan.recreate, ["a"], "{extra}");
            assert_eq!(
                plan.next.network_interfaces["a"].status.state,
                InterfaceState::Pending
            );
        }
        let plan = try_plan(&current, &nic("a", ", ips: [10.1.0.50]")).unwrap();
        assert_eq!(ips(&plan.next, "a"), ["10.1.0.50/24"]);
        // A MAC equal to the generated one is no change of the device.
        let mac = current.network_interfaces["a"].status.mac.unwrap();
        let plan = try_plan(&current, &nic("a", &format!(", mac: '{mac}'"))).unwrap();
        assert!(plan.recreate.is_empty());
    }

    #[test]
    fn lost_interfaces_can_be_relabelled() {
        let mut current = apply(&base(), &nic("a", ""));
        current
            .network_interfaces
            .get_mut("a")
            .unwrap()
            .status
            .state = InterfaceState::Lost;
        let labelled = nic("a", "").replace("{name: a}", "{name: a, labels: {x: y}}");
        let plan = try_plan(&current, &labelled).unwrap();
        assert!(plan.recreate.is_empty());
        assert_eq!(
            plan.next.network_interfaces["a"].status.state,
            InterfaceState::Lost
        );
    }

    #[test]
    fn every_wrong_document_is_reported() {
        let current = apply(&base(), &nic("a", ""));
        let text = format!(
            "{}{}",
            nic("b", ", ips: [10.9.9.9]"),
            nic("a", "").replace("netns: a", "netns: z")
        );
        let err = refusal(&current, &text);
        let causes: Vec<String> = err.causes().iter().map(ToString::to_string).collect();
        assert_eq!(causes.len(), 2, "{err}");
        assert!(
            causes[0].starts_with("document 1 (NetworkInterface \"b\"): spec.ips[0]"),
            "{err}"
        );
        assert!(
            causes[1].starts_with("document 2 (NetworkInterface \"a\"): spec.netns"),
            "{err}"
        );
        assert_eq!(err.field(), Some("documents[0].spec.ips[0]"));
    }

    #[test]
    fn delete_checks_dependants() {
        let current = apply(&base(), &format!("{}{}", nic("a", ""), nic("b", "")));
        let err = check_delete(&current, Kind::Network, "blue").unwrap_err();
        assert_eq!(err.status(), 409);
        assert_eq!(
            err.to_string(),
            "Network \"blue\" still has Subnets: web; delete them first"
        );
        let err = check_delete(&current, Kind::Subnet, "web").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Subnet \"web\" still has NetworkInterfaces: a, b; delete them first"
        );
        assert!(check_delete(&current, Kind::NetworkInterface, "a").is_ok());
        let err = check_delete(&current, Kind::Subnet, "nope").unwrap_err();
        assert_eq!(err.status(), 404);
        assert_eq!(err.to_string(), "Subnet \"nope\" not found");
    }

    fn network(name: &str, peerings: &str) -> String {
        format!(
            "---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {{peerings: [{peerings}]}}\n"
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

    /// Network blue (web 10.1.0.0/24) plus Network red with `red_cidr`, neither peered.
    fn blue_and_red(red_cidr: &str, red_gateway: &str) -> State {
        apply(
            &base(),
            &format!(
                "{}{}",
                network("red", ""),
                subnet("r1", "red", red_cidr, red_gateway)
            ),
        )
    }

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
    fn a_new_subnet_may_not_overlap_a_ready_peer() {
        let current = blue_and_red("10.2.0.0/24", "10.2.0.1");
        let peered = apply(
            &current,
            &format!(
                "{}{}",
                network("blue", "{name: to-red, network: red}"),
                network("red", "{name: to-blue, network: blue}")
            ),
        );
        let err = refusal(&peered, &subnet("r2", "red", "10.1.0.128/25", "10.1.0.129"));
        assert_eq!(
            err.to_string(),
            "document 1 (Subnet \"r2\"): spec.cidr: 10.1.0.128/25 of Network \"red\" overlaps \
             Subnet \"web\" (10.1.0.0/24) of Network \"blue\", which is peered with Network \"red\" \
             (Ready); peered Networks must not have overlapping CIDRs: choose a CIDR outside the \
             peer's Subnets, or remove the peering"
        );
        // The unchanged Networks earlier in the input are not blamed for the new Subnet.
        let text = format!(
            "{}{}",
            network("red", "{name: to-blue, network: blue}"),
            subnet("r2", "red", "10.1.0.128/25", "10.1.0.129")
        );
        assert!(
            refusal(&peered, &text)
                .to_string()
                .starts_with("document 2 (Subnet \"r2\")")
        );
        // Pending peerings do not constrain addresses: remove one side, and it fits.
        let pending = apply(&peered, &network("red", ""));
        let state = apply(
            &pending,
            &subnet("r2", "red", "10.1.0.128/25", "10.1.0.129"),
        );
        assert_eq!(state.subnets.len(), 3);
        // ...but then the peering cannot become Ready again.
        let err = refusal(&state, &network("red", "{name: to-blue, network: blue}"));
        assert!(err.to_string().contains("(10.1.0.128/25)"), "{err}");
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

    #[test]
    fn a_new_subnet_may_not_take_a_routes_destination() {
        let current = apply(&base(), &route("lab", "blue", "10.5.0.0/24", "10.1.0.9"));
        let err = refusal(&current, &subnet("lab", "blue", "10.5.0.0/24", "10.5.0.1"));
        assert_eq!(
            err.to_string(),
            "document 1 (Subnet \"lab\"): spec.cidr: 10.5.0.0/24 is the destination of Route \
             \"lab\" of Network \"blue\"; this Subnet's connected route would hide it: delete the \
             Route first, or choose another CIDR"
        );
        // A wider Subnet is fine: the Route is more specific.
        assert_eq!(
            apply(&current, &subnet("lab", "blue", "10.5.0.0/16", "10.5.0.1"))
                .subnets
                .len(),
            2
        );
    }

    #[test]
    fn delete_checks_routes() {
        let current = apply(&base(), &route("lab", "blue", "10.5.0.0/24", "10.1.0.9"));
        let err = check_delete(&current, Kind::Subnet, "web").unwrap_err();
        assert_eq!(err.status(), 409);
        assert_eq!(
            err.to_string(),
            "Subnet \"web\" still has Routes through it: lab; delete them first"
        );
        let mut no_subnets = current.clone();
        no_subnets.subnets.clear();
        let err = check_delete(&no_subnets, Kind::Network, "blue").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Network \"blue\" still has Routes: lab; delete them first"
        );
        assert!(check_delete(&current, Kind::Route, "lab").is_ok());
        let err = check_delete(&current, Kind::Route, "nope").unwrap_err();
        assert_eq!(err.to_string(), "Route \"nope\" not found");
    }

    #[test]
    fn gateway_mac_override_and_collisions() {
        let with_mac = BASE.replace(
            "gateway: 10.1.0.1}",
            "gateway: 10.1.0.1, gatewayMac: '02:00:00:00:00:01'}",
        );
        let state = apply(&State::default(), &with_mac);
        let web = &state.subnets["web"];
        assert_eq!(
            routing::gateway_mac(&state, web).to_string(),
            "02:00:00:00:00:01"
        );
        // Multicast is refused when parsed.
        let msg = refusal(
            &State::default(),
            &with_mac.replace("02:00:00:00:00:01", "01:00:5e:00:00:01"),
        )
        .to_string();
        assert!(
            msg.contains("spec.gatewayMac: MAC address 01:00:5e:00:00:01 is not a unicast address"),
            "{msg}"
        );
        // An interface may not take the gateway's MAC...
        let err = refusal(&state, &nic("a", ", mac: '02:00:00:00:00:01'"));
        assert_eq!(err.status(), 409);
        assert!(
            err.to_string()
                .contains("spec.mac: MAC 02:00:00:00:00:01 is the gateway MAC of Subnet \"web\""),
            "{err}"
        );
        // ...nor the gateway an interface's.
        let state = apply(&base(), &nic("a", ", mac: '02:00:00:00:00:0a'"));
        let err = refusal(&state, &with_mac.replace(":01'", ":0a'"));
        assert_eq!(err.status(), 409);
        assert!(
            err.to_string().contains(
                "spec.gatewayMac: MAC 02:00:00:00:00:0a is used by NetworkInterface \"a\" in Subnet \"web\""
            ),
            "{err}"
        );
    }

    /// Every sample in `fixtures/resources/`: `bad-*.yaml` are refused whole, the others
    /// apply to an empty state.
    #[test]
    fn fixture_resource_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/resources");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let result =
                parse_documents(&text).and_then(|docs| plan(&State::default(), docs, Mode::Apply));
            if file.starts_with("bad-") {
                let err = result.expect_err(&file).to_string();
                let want: &[&str] = match file.as_str() {
                    "bad-peering-overlap.yaml" => {
                        &["10.40.0.0/24", "10.40.0.0/16", "green", "yellow"]
                    }
                    "bad-route-next-hop.yaml" => &["spec.nextHop", "is the gateway"],
                    "bad-nat-address.yaml" => &[
                        "document 3 (NATGateway \"apps-out\"): spec.ips[0]",
                        "203.0.113.7 is not an address of Uplink \"wan\"",
                    ],
                    "bad-vip-shared.yaml" => &[
                        "document 6 (NetworkInterface \"b\"): spec.virtualIP",
                        "already used by NetworkInterface \"a\"",
                    ],
                    "bad-overlay-loopback.yaml" => {
                        &["spec.localAddress", "the address the other nodes reach"]
                    }
                    _ => &[],
                };
                for word in want {
                    assert!(err.contains(word), "{file}: {word:?} not in {err}");
                }
            } else {
                let plan = result.unwrap_or_else(|err| panic!("{file}: {err}"));
                if file == "uplink-nat.yaml" {
                    let state = &plan.next;
                    assert_eq!(
                        state.virtual_ips["db-public"].status.ip,
                        Some(Ipv4Addr::new(198, 51, 100, 11))
                    );
                    assert_eq!(plan.uplink, Some(UplinkWork::Open("wan".into())));
                    let ids = [("apps".to_string(), crate::engine::NetworkId(0))]
                        .into_iter()
                        .collect();
                    let rules = nat_rules::compile(state, &ids);
                    assert!(rules.gateway(nat::Zone(0)).is_some());
                    let db = state.network_interfaces["db-1"].status.ips[0].addr();
                    assert_eq!(
                        rules.virtual_ip_of(nat::Zone(0), db),
                        Some(Ipv4Addr::new(198, 51, 100, 11))
                    );
                }
                if file == "peered-networks.yaml" {
                    let state = plan.next;
                    assert_eq!(routing::ready_peers(&state, "blue"), ["red"]);
                    assert_eq!(
                        routing::routed_sources(&state, "blue-edge", Ipv4Addr::new(10, 20, 9, 254)),
                        ["192.168.50.0/24".parse::<Ipv4Net>().unwrap()]
                    );
                }
            }
            seen.push(file);
        }
        seen.sort();
        for expected in [
            "bad-peering-overlap.yaml",
            "bad-route-next-hop.yaml",
            "bad-nat-address.yaml",
            "bad-vip-shared.yaml",
            "peered-networks.yaml",
            "two-subnets.yaml",
            "uplink-nat.yaml",
        ] {
            assert!(
                seen.iter().any(|f| f == expected),
                "{expected} missing from {seen:?}"
            );
        }
    }

    #[test]
    fn leases_are_rebuilt_from_status() {
        let state = apply(
            &base(),
            &format!("{}{}", nic("a", ""), nic("b", ", ips: [10.1.0.77]")),
        );
        let leases = leases(&state);
        let web = &leases["web"];
        assert_eq!(web.owner(Ipv4Addr::new(10, 1, 0, 2)), Some("a"));
        assert_eq!(web.owner(Ipv4Addr::new(10, 1, 0, 77)), Some("b"));
        assert_eq!(web.last, Some(Ipv4Addr::new(10, 1, 0, 2)));
    }
}
