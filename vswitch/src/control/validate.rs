//! Whole-batch validation and planning: given the current [`State`] and parsed documents,
//! compute the next state (with MACs and IPAM leases filled in) and the port work to do, or
//! refuse the whole batch. Pure: no I/O, so every refusal is testable without devices.
//!
//! Every document is checked against the current state *plus the batch*: a Subnet may name a
//! Network defined later in the same input, and two new interfaces may not take one address.
//! Checks that span resources (peered Networks must not overlap, a Route must not shadow a
//! connected prefix) refuse only what the batch would newly break, and blame the first
//! document, in input order, that breaks it.
//!
//! The checks themselves are each kind's [`ResourceKind::check`], in its module under
//! [`kinds`](super::kinds); this module stages the batch, runs them, and plans what follows
//! (addresses, MACs, VirtualIP allocations, device work).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::ApiError;
use super::ipam::{self, IpamError, Pool};
use super::kinds::{
    Batch, CheckContext, CheckMemo, Completion, Errors, KindVisitor, Resource, ResourceVisitor,
};
use super::nat_rules;
use super::overlay;
use super::resource::OWNER_LABEL;
use super::resource::{
    Document, InterfaceState, Kind, MacAddr, NetworkInterface, Origin, ResourceKind,
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

    // What defaults need from the whole batch: the Subnets' VLANs.
    let mut completion = Completion::default();
    let mut subnets: BTreeMap<String, Option<u16>> = current
        .subnets
        .iter()
        .map(|(name, subnet)| (name.clone(), subnet.spec.vlan))
        .collect();
    for doc in &docs {
        if let Resource::Subnet(subnet) = &doc.resource {
            subnets.insert(subnet.metadata.key(), subnet.spec.vlan);
        }
    }
    for (name, vlan) in subnets {
        if let Some(vlan) = vlan {
            completion.vlan_subnets.entry(vlan).or_insert(name);
        }
    }

    // Overlay the batch on the current state; each kind keeps the status it owns.
    for doc in docs {
        let origin = doc.origin;
        let kind = doc.resource.kind();
        let name = doc.resource.key();
        let action = doc.resource.visit(Stage {
            current,
            next: &mut next,
            completion: &completion,
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
    let memo = CheckMemo::default();
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
            memo: &memo,
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
    crate::control::kinds::load_balancer::assign_addresses(&mut next, &origins)?;
    crate::control::kinds::load_balancer_routing::sync(&mut next);
    assign_macs(&mut next, &created_nics, &changed_nics, &origin_of)?;
    for name in &created_nics {
        if let Some(nic) = next.network_interfaces.get_mut(name) {
            nic.status
                .uid
                .get_or_insert_with(crate::control::node::random_uuid);
        }
    }

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
                || old.spec.interfaces != new.spec.interfaces
                || old.spec.bond != new.spec.bond
                || old.spec.vlan_protocol != new.spec.vlan_protocol
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
    completion: &'a Completion,
}

impl ResourceVisitor for Stage<'_> {
    type Output = Action;

    fn visit<K: ResourceKind>(self, mut resource: K) -> Action {
        let name = resource.metadata().key();
        let old = K::table(self.current).get(&name);
        resource.complete(self.completion);
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
    /// The IPv6 address configured in the container (an interface whose Subnet gained
    /// `ipv6`, or whose static `ipv6` changed, is configured anew).
    ipv6: Option<ipnet::Ipv6Net>,
    /// The routes installed in the container, and whether it has default routes.
    routes: Vec<ipnet::IpNet>,
    default_route: bool,
}

fn effective(state: &State, nic: &NetworkInterface) -> Option<Effective> {
    let subnet = state.subnets.get(&nic.spec.subnet)?;
    Some(Effective {
        mac: nic.status.mac,
        ips: nic.status.ips.clone(),
        mtu: overlay::interface_mtu(state, nic, subnet),
        ipv6: nic.status.ipv6,
        routes: nic.spec.routes.clone(),
        default_route: nic.spec.default_route,
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

/// Gives new and changed interfaces their addresses: static ones first (so automatic
/// allocation never takes an address the batch asks for), then allocated ones.
fn assign_addresses(
    next: &mut State,
    current: &State,
    created: &[String],
    changed: &[String],
    origin_of: &dyn Fn(&String) -> Origin,
) -> Result<(), ApiError> {
    let mut all = ipam::leases(next);
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
    let mut all6 = assign_ipv6(next, current, created, changed, origin_of)?;
    for (subnet, leases) in all {
        let last_allocated_v6 = all6.remove(&subnet).and_then(|l| l.last);
        if leases.last.is_none() && last_allocated_v6.is_none() {
            next.ipam.remove(&subnet);
        } else {
            next.ipam.insert(
                subnet,
                SubnetIpamState {
                    last_allocated: leases.last,
                    last_allocated_v6,
                },
            );
        }
    }
    Ok(())
}

/// Gives new and changed interfaces of dual-stack Subnets their IPv6 address (static ones
/// first, then allocated ones), and takes it from those that no longer want one. An
/// unchanged interface keeps its address. Returns the leases with their cursors.
fn assign_ipv6(
    next: &mut State,
    current: &State,
    created: &[String],
    changed: &[String],
    origin_of: &dyn Fn(&String) -> Origin,
) -> Result<BTreeMap<String, ipam::Leases6>, ApiError> {
    let mut all = ipam::leases6(next);
    let mut statics = Vec::new();
    let mut dynamic = Vec::new();
    for name in created.iter().chain(changed) {
        let Some(nic) = next.network_interfaces.get_mut(name) else {
            continue;
        };
        let wants = next
            .subnets
            .get(&nic.spec.subnet)
            .is_some_and(|s| nic.spec.wants_ipv6(&s.spec));
        let old = current.network_interfaces.get(name);
        let keep = wants
            && nic.spec.ipv6.is_none()
            && old.is_some_and(|o| o.spec.ipv6.is_none() && o.status.ipv6.is_some());
        if keep {
            continue;
        }
        if let Some(leases) = all.get_mut(&nic.spec.subnet) {
            leases.release(name);
        }
        nic.status.ipv6 = None;
        match (wants, nic.spec.ipv6) {
            (false, _) => {}
            (true, Some(addr)) => statics.push((name, addr)),
            (true, None) => dynamic.push(name),
        }
    }
    let subnet_of = |next: &State, name: &String| {
        let nic = next.network_interfaces.get(name)?;
        let v6 = next.subnets.get(&nic.spec.subnet)?.spec.ipv6.clone()?;
        Some((nic.spec.subnet.clone(), v6))
    };
    for (name, addr) in statics {
        let Some((subnet, v6)) = subnet_of(next, name) else {
            continue;
        };
        let Some(leases) = all.get_mut(&subnet) else {
            continue;
        };
        leases
            .lease_static(&ipam::Pool6::new(&v6), addr, name)
            .map_err(|(conflict, why)| {
                let origin = origin_of(name);
                if conflict {
                    origin.conflict("spec.ipv6", why)
                } else {
                    origin.invalid("spec.ipv6", why)
                }
            })?;
        if let Some(nic) = next.network_interfaces.get_mut(name) {
            nic.status.ipv6 = Ipv6Net::new(addr, v6.cidr.prefix_len()).ok();
        }
    }
    for name in dynamic {
        let Some((subnet, v6)) = subnet_of(next, name) else {
            continue;
        };
        let Some(leases) = all.get_mut(&subnet) else {
            continue;
        };
        let addr = leases
            .allocate(&ipam::Pool6::new(&v6), name)
            .map_err(|why| origin_of(name).conflict("spec.ipv6", why))?;
        if let Some(nic) = next.network_interfaces.get_mut(name) {
            nic.status.ipv6 = Ipv6Net::new(addr, v6.cidr.prefix_len()).ok();
        }
    }
    Ok(all)
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
                    .filter(|n| n.spec.subnet == subnet && n.metadata.key() != *name)
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
    use crate::control::testing::{
        BASE, NAT_BASE, apply, base, doc, forward, gateway, ips, nat_base, nic, refusal, route,
        try_plan, vip,
    };

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
        // New addresses, MAC, MTU or routes: re-create (the routes are the container's).
        for extra in [
            ", ips: [10.1.0.50]",
            ", mac: '02:00:00:00:00:99'",
            ", mtu: 9000",
            ", routes: [10.9.0.0/16]",
            ", defaultRoute: false",
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
                    "bad-overlay-tls.yaml" => &[
                        "problems",
                        "spec.hub.tls.fingerprint: \"AB:CD:EF\" is not a SHA-256 fingerprint",
                        "spec.hub.tls.fingerprint: give either caFile or fingerprint",
                        "spec.hub.tls.serverName: applies with caFile only",
                        "spec.hub.tls.caFile: \"ca.pem\" is not an absolute path",
                    ],
                    "bad-overlay-store.yaml" => &[
                        "problems",
                        "spec.store.etcd.endpoints[0]: \"192.168.50.20:2379\" is not an etcd endpoint",
                        "spec.store.etcd.endpoints[2]: \"http://192.168.50.21:2379\" is listed twice",
                        "spec.store.etcd.prefix",
                        "spec.store.etcd.leaseSeconds: 1 is out of range",
                        "spec.store.etcd.tls: https endpoints need tls",
                    ],
                    "bad-overlay-loopback.yaml" => {
                        &["spec.localAddress", "the address the other nodes reach"]
                    }
                    "bad-overlay-family.yaml" => &[
                        "spec.peers[1]",
                        "192.168.51.3 is an IPv4 address, but the Overlay's localAddress fd00:51::1 is IPv6",
                    ],
                    "bad-network-policy.yaml" => &[
                        "3 problems",
                        "spec.ingress[0].from[0].ipBlock.except[0]",
                        "spec.ingress[0].ports[0].endPort",
                        "spec.ingress[0].ports[1].protocol",
                    ],
                    "bad-bond.yaml" => &[
                        "spec.vlan: 4095 is out of range",
                        "spec.interfaces[1]: eth1 is already spec.interfaces[0]",
                        "spec.bond.primary: only active-backup has a primary member",
                        "spec.bond.lacp: LACP settings need mode: 802.3ad",
                        "spec.bond.arpMonitor.intervalMs: 5 is out of range",
                        "spec.bond.arpMonitor.targets: give 1 to 16 addresses",
                        "spec.bond.peerNotifications: 20 is out of range",
                        "spec.vlan: VLAN 20 is Subnet \"v20\"'s, not spec.subnet \"v10\"'s",
                    ],
                    "bad-dual-stack.yaml" => &[
                        "8 problems",
                        "spec.ips[0]: fd00:30:200::80 is IPv6, a family spec.ipFamilies does not list",
                        "Subnet-Router anycast address",
                        "spec.ipv6.gateway: gateway fd00:31::1 is outside fd00:30:200::/56",
                        "spec.ipv6.rangeEnd: rangeEnd fd00:30:200::100 is before rangeStart",
                        "spec.ipv6.slaac: SLAAC needs a /64 prefix",
                        "spec.ipFamilies: IPv6-only interfaces are not supported",
                        "spec.ipFamilies[1]: Subnet \"v4only\" has no IPv6 prefix",
                        "spec.nextHop: nextHop 10.30.3.254 is an IPv4 address but destination fd00:99::/48 is IPv6",
                    ],
                    "bad-nat66.yaml" => &[
                        "spec.ipv6.gateway: gateway 2001:db8:7::1 is neither link-local nor inside the prefix",
                        "spec.target.interface: spec.ip 2001:db8:1::10 is IPv6 but NetworkInterface \"old-1\"",
                        "spec.ip: 2001:db8:1::99 is an IPv6 address but spec.ipFamily is IPv4",
                        "spec.virtualIP: VirtualIP \"old-public6\" is IPv6 but the interface has no IPv6 address",
                    ],
                    "bad-routed-overlap.yaml" => &[
                        "spec.uplink.mode",
                        "routed through the Uplink",
                        "spec.inbound.allow[0].endPort: endPort 4789 is below port 4790",
                    ],
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
                        Some(std::net::IpAddr::from([198, 51, 100, 11]))
                    );
                    assert_eq!(plan.uplink, Some(UplinkWork::Open("wan".into())));
                    let ids = [("apps".to_string(), crate::tables::snapshot::NetworkId(0))]
                        .into_iter()
                        .collect();
                    let rules = nat_rules::compile(state, &ids);
                    assert!(rules.gateway(nat::Zone(0)).is_some());
                    let db = state.network_interfaces["db-1"].status.ips[0].addr();
                    assert_eq!(
                        rules.virtual_ip_of(nat::Zone(0), db.into()),
                        Some(Ipv4Addr::new(198, 51, 100, 11).into())
                    );
                }
                if file == "uplink-nat66.yaml" {
                    let state = &plan.next;
                    let ids = [("apps".to_string(), crate::tables::snapshot::NetworkId(0))]
                        .into_iter()
                        .collect();
                    let rules = nat_rules::compile(state, &ids);
                    let six: std::net::IpAddr = "2001:db8:1::10".parse().unwrap();
                    assert!(rules.owns(six) && rules.owns("2001:db8:1::11".parse().unwrap()));
                    let db = &state.network_interfaces["db-1"];
                    let db4 = std::net::IpAddr::V4(db.status.ips[0].addr());
                    let db6 = std::net::IpAddr::V6(db.status.ipv6.expect("dual-stack").addr());
                    assert_eq!(
                        rules.virtual_ip_of(nat::Zone(0), db4),
                        Some("198.51.100.11".parse().unwrap())
                    );
                    assert_eq!(
                        rules.virtual_ip_of(nat::Zone(0), db6),
                        Some("2001:db8:1::12".parse().unwrap())
                    );
                    let forward = &state.port_forwards["web-https6"];
                    assert_eq!(
                        nat_rules::port_forward_status(state, forward)
                            .destination
                            .as_deref(),
                        Some("[fd00:60::2]:443")
                    );
                }
                if file == "dual-stack.yaml" {
                    let nics = &plan.next.network_interfaces;
                    let v6 = |name: &str| nics[name].status.ipv6.map(|ip| ip.to_string());
                    assert_eq!(v6("web-1").as_deref(), Some("fd00:20:1::2/64"));
                    assert_eq!(v6("legacy-1"), None, "ipFamilies: [IPv4]");
                    assert_eq!(v6("db-1").as_deref(), Some("fd00:20:2::150/64"));
                    let lab6 = &plan.next.routes["lab6"];
                    let status = crate::control::routing::route_status(&plan.next, lab6);
                    assert_eq!(
                        status.state,
                        crate::control::resource::RouteState::Ready,
                        "{status:?}"
                    );
                    assert_eq!(status.subnet.as_deref(), Some("backend"));
                    // The dual-stack LoadBalancer: its IPv6 address given, its IPv4 one
                    // allocated from the Network's first Subnet by name (backend).
                    let web = &plan.next.load_balancers["web"].status.ips;
                    assert_eq!(web.len(), 2, "{web:?}");
                    assert_eq!(web[1], "fd00:20:1::80".parse::<std::net::IpAddr>().unwrap());
                    let std::net::IpAddr::V4(v4) = web[0] else {
                        panic!("{web:?}");
                    };
                    assert!(plan.next.subnets["backend"].spec.cidr.contains(&v4));
                    for nic in nics.values() {
                        assert!(nic.status.ips.iter().all(|a| a.addr() != v4), "{web:?}");
                    }
                }
                if file == "network-policy.yaml" {
                    let state = &plan.next;
                    assert_eq!(state.network_policies.len(), 3);
                    assert!(state.network_policies.contains_key("shop/db-from-web"));
                    assert!(state.network_policies.contains_key("seed-form"));
                    assert_eq!(
                        state.network_interfaces["shop/web-1"].spec.ports[0].name,
                        "http"
                    );
                }
                if file == "peered-networks.yaml" {
                    let state = plan.next;
                    assert_eq!(routing::ready_peers(&state, "blue"), ["red"]);
                    assert_eq!(
                        routing::routed_sources(
                            &state,
                            "blue-edge",
                            "10.20.9.254".parse().unwrap()
                        ),
                        ["192.168.50.0/24".parse::<ipnet::IpNet>().unwrap()]
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
            "uplink-nat66.yaml",
            "bad-nat66.yaml",
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
        let leases = ipam::leases(&state);
        let web = &leases["web"];
        assert_eq!(web.owner(Ipv4Addr::new(10, 1, 0, 2)), Some("a"));
        assert_eq!(web.owner(Ipv4Addr::new(10, 1, 0, 77)), Some("b"));
        assert_eq!(web.last, Some(Ipv4Addr::new(10, 1, 0, 2)));
    }

    #[test]
    fn deletes_check_dependants() {
        let state = apply(
            &nat_base(),
            &format!(
                "{}{}{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                forward("web", "198.51.100.10", "tcp", 8080, "c1"),
                vip("v", None),
                doc(
                    "NetworkInterface",
                    "c2",
                    "{subnet: web, netns: c2, kind: veth, virtualIP: v}"
                )
            ),
        );
        let refusal = |kind: Kind, name: &str| {
            let err = check_delete(&state, kind, name).expect_err(name);
            assert_eq!(err.status(), 409, "{err}");
            err.to_string()
        };
        assert_eq!(
            refusal(Kind::Uplink, "wan"),
            "Uplink \"wan\" still has NATGateways: gw; delete them first"
        );
        assert_eq!(
            refusal(Kind::Network, "blue"),
            "Network \"blue\" still has NATGateways: gw; delete them first"
        );
        assert_eq!(
            refusal(Kind::NetworkInterface, "c1"),
            "NetworkInterface \"c1\" still has PortForwards to it: web; delete them first"
        );
        assert_eq!(
            refusal(Kind::VirtualIp, "v"),
            "VirtualIP \"v\" still has NetworkInterfaces using it: c2; delete them first"
        );
        for (kind, name) in [
            (Kind::NatGateway, "gw"),
            (Kind::PortForward, "web"),
            (Kind::NetworkInterface, "c2"),
        ] {
            check_delete(&state, kind, name).expect(name);
        }
        let err = check_delete(&state, Kind::VirtualIp, "nope").expect_err("404");
        assert_eq!(err.status(), 404);
        let mut bare = state.clone();
        bare.nat_gateways.clear();
        bare.port_forwards.clear();
        assert_eq!(
            check_delete(&bare, Kind::Uplink, "wan")
                .expect_err("a VirtualIP")
                .to_string(),
            "Uplink \"wan\" still has VirtualIPs: v; delete them first"
        );
    }

    #[test]
    fn uplink_work_follows_the_device() {
        let plan = try_plan(&State::default(), NAT_BASE).expect("plans");
        assert_eq!(plan.uplink, Some(UplinkWork::Open("wan".into())));
        assert_eq!(
            plan.next.uplinks["wan"].status.state,
            InterfaceState::Pending
        );
        let mut state = plan.next;
        state.uplinks.get_mut("wan").expect("wan").status.state = InterfaceState::Up;
        let uplink = NAT_BASE.split("---\n").last().expect("the uplink");
        // Unchanged, or only new addresses: nothing to do with the device.
        let plan = try_plan(&state, uplink).expect("plans");
        assert_eq!(plan.uplink, None);
        assert!(!plan.changed);
        let plan = try_plan(
            &state,
            &uplink.replace("198.51.100.12]", "198.51.100.12, 198.51.100.13]"),
        )
        .expect("plans");
        assert_eq!(plan.uplink, None);
        assert_eq!(plan.applied[0].action, "configured");
        // Another interface or MAC: re-open.
        let plan = try_plan(&state, &uplink.replace("eth9", "eth8")).expect("plans");
        assert_eq!(plan.uplink, Some(UplinkWork::Reopen("wan".into())));
        let plan = try_plan(
            &state,
            &uplink.replace(
                "gateway: 198.51.100.1",
                "gateway: 198.51.100.1, mac: '02:00:00:00:00:99'",
            ),
        )
        .expect("plans");
        assert_eq!(plan.uplink, Some(UplinkWork::Reopen("wan".into())));
        // A lost uplink is retried by applying it again, even unchanged.
        state.uplinks.get_mut("wan").expect("wan").status.state = InterfaceState::Lost;
        let plan = try_plan(&state, uplink).expect("plans");
        assert_eq!(plan.uplink, Some(UplinkWork::Reopen("wan".into())));
        assert!(plan.changed);
        assert_eq!(plan.applied[0].action, "configured");
    }
}
