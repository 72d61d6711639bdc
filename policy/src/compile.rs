//! The compiler: the world as the control plane resolved it (namespaces, interfaces,
//! load balancers, validated policies) in, per-interface classifier tables out.
//!
//! Everything that depends on labels is decided here, once per change, never per
//! connection: which policies select which interface, which interfaces a peer selector
//! matches, which port number a named port is on which interface, which addresses a
//! LoadBalancer peer stands for.
//!
//! # What a table is
//! Each interface gets, per direction, either nothing (no policy of that type selects it:
//! *not isolated*) or a table, shared by every interface selected by the same policies
//! (and, for ingress tables that use named ports, with the same named ports). A table
//! answers "which rule, if any, allows this remote end, protocol and destination port?"
//! with up to three lookups, each a binary search:
//! - `by_endpoint`: remote interface → port map. Holds the rules whose selector peers
//!   match that interface, and, for egress, named ports resolved on that interface.
//! - `v4` / `v6`: remote address → port map, over disjoint sorted address ranges. Holds
//!   the `ipBlock` rules (each `except` already cut out), LoadBalancer peers (their
//!   addresses), and the rules without peers (every address).
//! - `by_endpoint_addr` (egress only, usually empty): (remote interface, its address) →
//!   port map, for egress rules that combine an `ipBlock` with a named port: the name
//!   resolves on the interface the block's address belongs to.
//!
//! A port map is a sorted list of disjoint intervals over the key `protocol << 16 | port`,
//! each carrying the *first* rule (in policy order, then rule order) that allows it. The
//! lookups of one connection are unioned by taking the smallest rule ordinal found, so the
//! rule reported is always the first allowing rule of the first allowing policy, whatever
//! the layout. Port maps are interned: identical maps are stored once.
//!
//! # Cost
//! Compile time is dominated by resolving selectors (cached per distinct selector and
//! scope: O(distinct selectors × interfaces)) and by building the tables (per distinct
//! table: O(r log r) in the port intervals r its rules contribute, plus an address sweep
//! O(b log b) in its address ranges b). A lookup costs O(log n) per structure, with n the
//! entries of that one table, never a walk over policies or rules.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;

use ipnet::IpNet;

use crate::model::{
    Direction, METADATA_NAME_LABEL, NamedPort, Namespace, NamespaceScope, PeerSelector, Policy,
    PortSpec, Protocol,
};
use crate::selector::{LabelSelector, Labels};

/// Identity of an interface (an endpoint of connections), chosen by the switch (its port
/// index, say). Unique within a [`World`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An interface as policies see it: the part a pod plays in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its identity in connections.
    pub id: EndpointId,
    /// Its resource name (for explanations).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its Network (what the seed form's `network` scopes to).
    pub network: String,
    /// Its labels: what `podSelector` / `networkInterfaceSelector` / `objectSelector` match.
    pub labels: Labels,
    /// Its addresses (IPv4 and IPv6): what `ipBlock` peers match.
    pub addresses: Vec<IpAddr>,
    /// Its named ports: what a named `port` resolves to when it is the destination.
    pub ports: Vec<NamedPort>,
}

/// A LoadBalancer as policies see it: the seed form's `objectSelector` of kind
/// LoadBalancer matches its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    /// Its resource name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its Network.
    pub network: String,
    /// Its labels.
    pub labels: Labels,
    /// Its addresses (virtual IPs).
    pub addresses: Vec<IpAddr>,
}

/// Everything the compiler needs, as the control plane resolved it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// Namespaces with their labels. A namespace that an interface or policy names but that
    /// is missing here is taken as existing with no labels but its name label.
    pub namespaces: Vec<Namespace>,
    /// Every interface of the switch, in any order.
    pub endpoints: Vec<Endpoint>,
    /// LoadBalancers, for the seed form's LoadBalancer peers.
    pub load_balancers: Vec<LoadBalancer>,
    /// Validated policies, in any order (they are sorted by namespace and name).
    pub policies: Vec<Policy>,
}

/// Index of a policy in [`Compiled::policies`] (sorted by namespace, then name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u32);

/// One rule of one policy: what allowed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleRef {
    /// Dense index of the rule over the whole compiled set (`0..Compiled::rule_count()`),
    /// in policy order then ingress before egress then rule order: an index for counter
    /// arrays.
    pub ordinal: u32,
    /// The policy.
    pub policy: PolicyId,
    /// Ingress or egress.
    pub direction: Direction,
    /// The rule's index in the policy's `ingress` or `egress` list.
    pub index: u32,
}

/// Why a world does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Two interfaces have the same id.
    #[error("two interfaces have id {0}; ids must be unique")]
    DuplicateEndpoint(EndpointId),
    /// Two policies have the same namespace and name.
    #[error("two policies are named {namespace}/{name}; names are unique per namespace")]
    DuplicatePolicy {
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
    },
    /// Two namespaces have the same name.
    #[error("namespace {0} is listed twice")]
    DuplicateNamespace(String),
    /// More rules or tables than a `u32` indexes.
    #[error("too many rules or tables to index ({0})")]
    TooLarge(usize),
}

/// A span of an arena: `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

impl Span {
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// One interval of a port map: keys `lo..=hi` (`protocol << 16 | port`) allowed by rule
/// ordinal `rule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PortInterval {
    pub(crate) lo: u32,
    pub(crate) hi: u32,
    pub(crate) rule: u32,
}

/// "No table" / "no map" / "no rule".
pub(crate) const NONE: u32 = u32::MAX;

/// A classifier table for one direction of the interfaces that share it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table {
    /// Into `Compiled::selecting`: the policies that select these interfaces.
    pub(crate) selecting: Span,
    /// Into `Compiled::by_endpoint`.
    pub(crate) by_endpoint: Span,
    /// Into `Compiled::by_endpoint_addr`.
    pub(crate) by_endpoint_addr: Span,
    /// Into `Compiled::v4`.
    pub(crate) v4: Span,
    /// Into `Compiled::v6`.
    pub(crate) v6: Span,
}

/// Sizes of a compiled set, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileStats {
    /// Interfaces.
    pub endpoints: usize,
    /// Policies.
    pub policies: usize,
    /// Rules, both directions.
    pub rules: usize,
    /// Distinct tables (shared between interfaces selected by the same policies).
    pub tables: usize,
    /// Distinct port maps.
    pub port_maps: usize,
    /// Port intervals over all maps.
    pub port_intervals: usize,
    /// Remote-interface entries over all tables.
    pub endpoint_entries: usize,
    /// Address ranges over all tables (IPv4 and IPv6).
    pub address_ranges: usize,
}

/// The compiled policies: per interface and direction, "not isolated" or a table; see the
/// module doc. Immutable; build a new one on any change.
#[derive(Debug)]
pub struct Compiled {
    pub(crate) world: World,
    pub(crate) namespace_labels: BTreeMap<String, Labels>,
    /// Sorted ids; the index is the endpoint's dense index into `world.endpoints`.
    pub(crate) endpoint_ids: Vec<u32>,
    /// Per dense endpoint index: `[ingress table, egress table]`, `NONE` when not isolated.
    pub(crate) endpoint_tables: Vec<[u32; 2]>,
    pub(crate) tables: Vec<Table>,
    pub(crate) selecting: Vec<PolicyId>,
    /// (remote dense endpoint index, map), sorted per table.
    pub(crate) by_endpoint: Vec<(u32, u32)>,
    /// (remote dense endpoint index, address, map), sorted per table.
    pub(crate) by_endpoint_addr: Vec<(u32, IpAddr, u32)>,
    /// (first address of a range, map or `NONE`), sorted per table, the first range at 0.
    pub(crate) v4: Vec<(u32, u32)>,
    /// The same for IPv6.
    pub(crate) v6: Vec<(u128, u32)>,
    /// Map id → its intervals.
    pub(crate) maps: Vec<Span>,
    pub(crate) intervals: Vec<PortInterval>,
    /// Rule ordinal → rule.
    pub(crate) rules: Vec<RuleRef>,
}

fn index_u32(n: usize) -> Result<u32, CompileError> {
    u32::try_from(n)
        .ok()
        .filter(|&v| v != NONE)
        .ok_or(CompileError::TooLarge(n))
}

/// Index of an arena element; arenas are bounded by `index_u32` checks on what feeds them.
fn at(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(NONE)
}

/// The key of a port: `protocol << 16 | port`.
pub(crate) fn port_key(protocol: u8, port: u16) -> u32 {
    (u32::from(protocol) << 16) | u32::from(port)
}

/// Every protocol and port.
const ALL_KEYS: (u32, u32) = (0, 0x00FF_FFFF);

/// An `ipBlock` (or a LoadBalancer address, or "everything"): a CIDR minus holes.
#[derive(Debug, Clone)]
struct Block {
    cidr: IpNet,
    except: Vec<IpNet>,
}

/// A rule with its peers resolved, compiled once and used by every table of its policy.
#[derive(Debug)]
struct PreRule {
    ordinal: u32,
    /// No peers: every remote end.
    all_peers: bool,
    /// Interfaces its selector peers match (dense indices, sorted).
    endpoint_sets: Vec<Rc<[u32]>>,
    /// Address peers.
    blocks: Vec<Block>,
    /// Numeric ports as key ranges (all keys when the rule has no ports).
    numeric: Vec<(u32, u32)>,
    /// Named ports: (protocol, name), resolved on the destination.
    named: Vec<(Protocol, String)>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum ScopeKey<'w> {
    Own(&'w str),
    Matching(&'w LabelSelector),
}

/// What an endpoint set is cached by: its namespaces, Network and selector.
type PeerKey<'w> = (ScopeKey<'w>, Option<&'w str>, &'w LabelSelector);

/// Compile-time state: the world's indices and the arenas being filled.
struct Builder<'w> {
    world: &'w World,
    namespace_labels: &'w BTreeMap<String, Labels>,
    /// Dense endpoint indices per namespace.
    endpoints_in: HashMap<&'w str, Vec<u32>>,
    /// Dense endpoint indices having a port of this name.
    endpoints_with_port: HashMap<&'w str, Vec<u32>>,
    namespace_cache: HashMap<&'w LabelSelector, Vec<&'w str>>,
    /// Endpoint sets per (namespaces, Network, selector).
    peer_cache: HashMap<PeerKey<'w>, Rc<[u32]>>,
    map_ids: HashMap<Vec<PortInterval>, u32>,
    out: Arenas,
}

#[derive(Default)]
struct Arenas {
    tables: Vec<Table>,
    selecting: Vec<PolicyId>,
    by_endpoint: Vec<(u32, u32)>,
    by_endpoint_addr: Vec<(u32, IpAddr, u32)>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u32)>,
    maps: Vec<Span>,
    intervals: Vec<PortInterval>,
}

impl Compiled {
    /// Compiles a world.
    ///
    /// # Errors
    /// [`CompileError`] when ids or names repeat, or the world is too large to index.
    pub fn compile(mut world: World) -> Result<Compiled, CompileError> {
        world.endpoints.sort_by_key(|endpoint| endpoint.id);
        if let Some(pair) = world.endpoints.windows(2).find(|p| p[0].id == p[1].id) {
            return Err(CompileError::DuplicateEndpoint(pair[0].id));
        }
        world
            .policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        if let Some(pair) = world
            .policies
            .windows(2)
            .find(|p| (&p[0].namespace, &p[0].name) == (&p[1].namespace, &p[1].name))
        {
            return Err(CompileError::DuplicatePolicy {
                namespace: pair[0].namespace.clone(),
                name: pair[0].name.clone(),
            });
        }
        world.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = world.namespaces.windows(2).find(|p| p[0].name == p[1].name) {
            return Err(CompileError::DuplicateNamespace(pair[0].name.clone()));
        }
        index_u32(world.endpoints.len())?;
        index_u32(world.policies.len())?;

        let mut namespace_labels: BTreeMap<String, Labels> = world
            .namespaces
            .iter()
            .map(|ns| (ns.name.clone(), ns.effective_labels()))
            .collect();
        let mentioned = world
            .endpoints
            .iter()
            .map(|e| &e.namespace)
            .chain(world.policies.iter().map(|p| &p.namespace))
            .chain(world.load_balancers.iter().map(|lb| &lb.namespace));
        for name in mentioned {
            namespace_labels
                .entry(name.clone())
                .or_insert_with(|| Labels::from([(METADATA_NAME_LABEL.to_owned(), name.clone())]));
        }

        // Rule ordinals: policy order, ingress then egress, rule order.
        let mut rules = Vec::new();
        for (policy_index, policy) in world.policies.iter().enumerate() {
            for direction in [Direction::Ingress, Direction::Egress] {
                for index in 0..policy.rules(direction).map_or(0, <[_]>::len) {
                    rules.push(RuleRef {
                        ordinal: index_u32(rules.len())?,
                        policy: PolicyId(at(policy_index)),
                        direction,
                        index: index_u32(index)?,
                    });
                }
            }
        }

        let (endpoint_tables, out) = {
            let mut builder = Builder::new(&world, &namespace_labels);
            let endpoint_tables = builder.build(&rules)?;
            (endpoint_tables, builder.out)
        };

        Ok(Compiled {
            endpoint_ids: world.endpoints.iter().map(|e| e.id.0).collect(),
            world,
            namespace_labels,
            endpoint_tables,
            tables: out.tables,
            selecting: out.selecting,
            by_endpoint: out.by_endpoint,
            by_endpoint_addr: out.by_endpoint_addr,
            v4: out.v4,
            v6: out.v6,
            maps: out.maps,
            intervals: out.intervals,
            rules,
        })
    }

    /// The policies, sorted by namespace then name; [`PolicyId`] indexes this.
    pub fn policies(&self) -> &[Policy] {
        &self.world.policies
    }

    /// A policy by id.
    ///
    /// # Panics
    /// When the id is not of this compiled set.
    pub fn policy(&self, id: PolicyId) -> &Policy {
        &self.world.policies[id.0 as usize]
    }

    /// The interfaces, sorted by id.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.world.endpoints
    }

    /// An interface by id.
    pub fn endpoint(&self, id: EndpointId) -> Option<&Endpoint> {
        self.endpoint_index(id)
            .map(|index| &self.world.endpoints[index as usize])
    }

    /// The world this was compiled from (sorted).
    pub fn world(&self) -> &World {
        &self.world
    }

    /// How many rules there are: [`RuleRef::ordinal`] is below this.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Every rule, by ordinal.
    pub fn rules(&self) -> &[RuleRef] {
        &self.rules
    }

    /// True when some policy of this direction selects the interface.
    pub fn is_isolated(&self, id: EndpointId, direction: Direction) -> bool {
        self.endpoint_index(id)
            .is_some_and(|index| self.table_of(index, direction) != NONE)
    }

    /// The policies of this direction that select the interface (empty: not isolated).
    pub fn selecting_policies(&self, id: EndpointId, direction: Direction) -> &[PolicyId] {
        match self.endpoint_index(id).map(|i| self.table_of(i, direction)) {
            Some(table) if table != NONE => {
                &self.selecting[self.tables[table as usize].selecting.range()]
            }
            _ => &[],
        }
    }

    /// Sizes, for logs and benchmarks.
    pub fn stats(&self) -> CompileStats {
        CompileStats {
            endpoints: self.world.endpoints.len(),
            policies: self.world.policies.len(),
            rules: self.rules.len(),
            tables: self.tables.len(),
            port_maps: self.maps.len(),
            port_intervals: self.intervals.len(),
            endpoint_entries: self.by_endpoint.len() + self.by_endpoint_addr.len(),
            address_ranges: self.v4.len() + self.v6.len(),
        }
    }

    /// The labels a namespace's selectors see (its own, with the name label).
    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespace_labels.get(namespace)
    }

    /// Dense index of an endpoint id: a binary search.
    #[inline]
    pub(crate) fn endpoint_index(&self, id: EndpointId) -> Option<u32> {
        self.endpoint_ids.binary_search(&id.0).ok().map(at)
    }

    #[inline]
    pub(crate) fn table_of(&self, index: u32, direction: Direction) -> u32 {
        self.endpoint_tables[index as usize][match direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }]
    }
}

impl<'w> Builder<'w> {
    fn new(world: &'w World, namespace_labels: &'w BTreeMap<String, Labels>) -> Builder<'w> {
        let mut endpoints_in: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut endpoints_with_port: HashMap<&str, Vec<u32>> = HashMap::new();
        for (index, endpoint) in world.endpoints.iter().enumerate() {
            endpoints_in
                .entry(endpoint.namespace.as_str())
                .or_default()
                .push(at(index));
            for port in &endpoint.ports {
                let list = endpoints_with_port.entry(port.name.as_str()).or_default();
                if list.last() != Some(&at(index)) {
                    list.push(at(index));
                }
            }
        }
        Builder {
            world,
            namespace_labels,
            endpoints_in,
            endpoints_with_port,
            namespace_cache: HashMap::new(),
            peer_cache: HashMap::new(),
            map_ids: HashMap::new(),
            out: Arenas::default(),
        }
    }

    /// Builds every table; returns the per-endpoint table ids.
    fn build(&mut self, rules: &[RuleRef]) -> Result<Vec<[u32; 2]>, CompileError> {
        let world = self.world;
        // Resolve every rule's peers once.
        let mut pre_rules: Vec<[Vec<PreRule>; 2]> = Vec::with_capacity(world.policies.len());
        let mut ordinal = 0usize;
        for policy in &world.policies {
            let mut per_direction: [Vec<PreRule>; 2] = [Vec::new(), Vec::new()];
            for (slot, direction) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .enumerate()
            {
                for rule in policy.rules(direction).unwrap_or_default() {
                    let pre = self.pre_rule(policy, rule, rules[ordinal].ordinal);
                    per_direction[slot].push(pre);
                    ordinal += 1;
                }
            }
            pre_rules.push(per_direction);
        }

        // Which policies select which endpoint, per direction (in policy order).
        let mut selected_by: Vec<[Vec<u32>; 2]> =
            vec![[Vec::new(), Vec::new()]; world.endpoints.len()];
        for (policy_index, policy) in world.policies.iter().enumerate() {
            let targets = self.endpoint_set(
                ScopeKey::Own(&policy.namespace),
                policy.network.as_deref(),
                &policy.selector,
            );
            for &endpoint in targets.iter() {
                if policy.ingress.is_some() {
                    selected_by[endpoint as usize][0].push(at(policy_index));
                }
                if policy.egress.is_some() {
                    selected_by[endpoint as usize][1].push(at(policy_index));
                }
            }
        }

        // One table per distinct (direction, selecting policies, named-port signature).
        type TableKey = (Direction, Vec<u32>, Vec<NamedPort>);
        let mut table_ids: HashMap<TableKey, u32> = HashMap::new();
        let mut endpoint_tables = Vec::with_capacity(world.endpoints.len());
        for (endpoint_index, selected) in selected_by.into_iter().enumerate() {
            let mut ids = [NONE; 2];
            for (slot, (direction, policies)) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .zip(selected)
                .enumerate()
            {
                if policies.is_empty() {
                    continue;
                }
                // Ingress named ports resolve on this endpoint, so they are part of the key.
                let uses_named = direction == Direction::Ingress
                    && policies
                        .iter()
                        .any(|&p| pre_rules[p as usize][0].iter().any(|r| !r.named.is_empty()));
                let signature = if uses_named {
                    let mut ports = world.endpoints[endpoint_index].ports.clone();
                    ports.sort();
                    ports
                } else {
                    Vec::new()
                };
                let key = (direction, policies, signature);
                let id = match table_ids.get(&key) {
                    Some(&id) => id,
                    None => {
                        let local = uses_named.then_some(at(endpoint_index));
                        let id = self.build_table(direction, &key.1, local, &pre_rules)?;
                        table_ids.insert(key, id);
                        id
                    }
                };
                ids[slot] = id;
            }
            endpoint_tables.push(ids);
        }
        Ok(endpoint_tables)
    }

    /// Resolves a rule's peers and splits its ports.
    fn pre_rule(
        &mut self,
        policy: &'w Policy,
        rule: &'w crate::model::Rule,
        ordinal: u32,
    ) -> PreRule {
        let mut pre = PreRule {
            ordinal,
            all_peers: rule.peers.is_empty(),
            endpoint_sets: Vec::new(),
            blocks: Vec::new(),
            numeric: Vec::new(),
            named: Vec::new(),
        };
        let network = policy.network.as_deref();
        for peer in &rule.peers {
            match peer {
                PeerSelector::Endpoints {
                    namespaces,
                    selector,
                } => {
                    let scope = match namespaces {
                        NamespaceScope::Own => ScopeKey::Own(&policy.namespace),
                        NamespaceScope::Matching(selector) => ScopeKey::Matching(selector),
                    };
                    let set = self.endpoint_set(scope, network, selector);
                    if !set.is_empty() {
                        pre.endpoint_sets.push(set);
                    }
                }
                PeerSelector::LoadBalancers { selector } => {
                    for lb in &self.world.load_balancers {
                        if lb.namespace == policy.namespace
                            && network.is_none_or(|n| lb.network == n)
                            && selector.matches(&lb.labels)
                        {
                            pre.blocks.extend(lb.addresses.iter().map(|&addr| Block {
                                cidr: IpNet::from(addr),
                                except: Vec::new(),
                            }));
                        }
                    }
                }
                PeerSelector::IpBlock { cidr, except } => pre.blocks.push(Block {
                    cidr: *cidr,
                    except: except.clone(),
                }),
            }
        }
        if rule.ports.is_empty() {
            pre.numeric.push(ALL_KEYS);
        }
        for port in &rule.ports {
            let protocol = port.protocol.number();
            match &port.port {
                PortSpec::Any => pre
                    .numeric
                    .push((port_key(protocol, 0), port_key(protocol, u16::MAX))),
                PortSpec::Range { first, last } => pre.numeric.push((
                    port_key(protocol, *first),
                    port_key(protocol, (*last).max(*first)),
                )),
                PortSpec::Named(name) => pre.named.push((port.protocol, name.clone())),
            }
        }
        pre
    }

    /// The endpoints (dense indices, sorted) of a scope and Network matching a selector.
    fn endpoint_set(
        &mut self,
        scope: ScopeKey<'w>,
        network: Option<&'w str>,
        selector: &'w LabelSelector,
    ) -> Rc<[u32]> {
        let key = (scope.clone(), network, selector);
        if let Some(set) = self.peer_cache.get(&key) {
            return Rc::clone(set);
        }
        let namespaces: Vec<&'w str> = match scope {
            ScopeKey::Own(namespace) => vec![namespace],
            ScopeKey::Matching(namespace_selector) => self.namespaces_matching(namespace_selector),
        };
        let world = self.world;
        let mut set: Vec<u32> = namespaces
            .iter()
            .filter_map(|ns| self.endpoints_in.get(ns))
            .flatten()
            .copied()
            .filter(|&index| {
                let endpoint = &world.endpoints[index as usize];
                network.is_none_or(|n| endpoint.network == n) && selector.matches(&endpoint.labels)
            })
            .collect();
        set.sort_unstable();
        let set: Rc<[u32]> = set.into();
        self.peer_cache.insert(key, Rc::clone(&set));
        set
    }

    fn namespaces_matching(&mut self, selector: &'w LabelSelector) -> Vec<&'w str> {
        let labels = self.namespace_labels;
        self.namespace_cache
            .entry(selector)
            .or_insert_with(|| {
                labels
                    .iter()
                    .filter(|(_, labels)| selector.matches(labels))
                    .map(|(name, _)| name.as_str())
                    .collect()
            })
            .clone()
    }

    /// The keys of named ports resolved on an endpoint, as intervals of rule `ordinal`.
    fn resolve_named(
        &self,
        named: &[(Protocol, String)],
        endpoint: u32,
        ordinal: u32,
    ) -> Vec<PortInterval> {
        let ports = &self.world.endpoints[endpoint as usize].ports;
        let mut out = Vec::new();
        for (protocol, name) in named {
            // A name may repeat on an interface (Kubernetes checks uniqueness per container,
            // not per pod: cilium/cilium#30003); every match counts.
            for port in ports
                .iter()
                .filter(|p| &p.name == name && p.protocol == *protocol)
            {
                let key = port_key(protocol.number(), port.port);
                out.push(PortInterval {
                    lo: key,
                    hi: key,
                    rule: ordinal,
                });
            }
        }
        out
    }

    /// Builds the table of one direction for interfaces selected by `policies`. `local`:
    /// the interface ingress named ports resolve on.
    fn build_table(
        &mut self,
        direction: Direction,
        policies: &[u32],
        local: Option<u32>,
        pre_rules: &[[Vec<PreRule>; 2]],
    ) -> Result<u32, CompileError> {
        let slot = match direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        // Contributions: port intervals of one rule (or one rule resolved on one
        // endpoint), referred to by index so that shared ones are not copied per endpoint.
        let mut contributions: Vec<Vec<PortInterval>> = Vec::new();
        let mut by_endpoint: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut by_endpoint_addr: BTreeMap<(u32, IpAddr), Vec<u32>> = BTreeMap::new();
        let all_v4 = Block {
            cidr: IpNet::V4(ipnet::Ipv4Net::default()),
            except: Vec::new(),
        };
        let all_v6 = Block {
            cidr: IpNet::V6(ipnet::Ipv6Net::default()),
            except: Vec::new(),
        };
        let mut blocks: Vec<(&Block, u32)> = Vec::new();

        for &policy in policies {
            for rule in &pre_rules[policy as usize][slot] {
                let mut numeric: Vec<PortInterval> = rule
                    .numeric
                    .iter()
                    .map(|&(lo, hi)| PortInterval {
                        lo,
                        hi,
                        rule: rule.ordinal,
                    })
                    .collect();
                if let Some(local) = local {
                    numeric.extend(self.resolve_named(&rule.named, local, rule.ordinal));
                }
                let named_on_remote = direction == Direction::Egress && !rule.named.is_empty();
                let numeric_id = if numeric.is_empty() {
                    None
                } else {
                    contributions.push(numeric);
                    Some(at(contributions.len() - 1))
                };

                if rule.all_peers {
                    if let Some(id) = numeric_id {
                        blocks.push((&all_v4, id));
                        blocks.push((&all_v6, id));
                    }
                    if named_on_remote {
                        // An empty `to` with a named port: every interface with the name
                        // (kube-router#1036 missed this case).
                        for remote in self.endpoints_having(&rule.named) {
                            let resolved = self.resolve_named(&rule.named, remote, rule.ordinal);
                            if !resolved.is_empty() {
                                contributions.push(resolved);
                                by_endpoint
                                    .entry(remote)
                                    .or_default()
                                    .push(at(contributions.len() - 1));
                            }
                        }
                    }
                    continue;
                }
                for set in &rule.endpoint_sets {
                    for &remote in set.iter() {
                        if let Some(id) = numeric_id {
                            by_endpoint.entry(remote).or_default().push(id);
                        }
                        if named_on_remote {
                            let resolved = self.resolve_named(&rule.named, remote, rule.ordinal);
                            if !resolved.is_empty() {
                                contributions.push(resolved);
                                by_endpoint
                                    .entry(remote)
                                    .or_default()
                                    .push(at(contributions.len() - 1));
                            }
                        }
                    }
                }
                for block in &rule.blocks {
                    if let Some(id) = numeric_id {
                        blocks.push((block, id));
                    }
                    if named_on_remote {
                        // The block covers some interfaces' addresses: the name resolves on
                        // the interface the address belongs to (AWS's controller missed this:
                        // amazon-network-policy-controller-k8s#81).
                        for remote in self.endpoints_having(&rule.named) {
                            let endpoint = &self.world.endpoints[remote as usize];
                            for &addr in &endpoint.addresses {
                                if block_contains(block, addr) {
                                    let resolved =
                                        self.resolve_named(&rule.named, remote, rule.ordinal);
                                    if !resolved.is_empty() {
                                        contributions.push(resolved);
                                        by_endpoint_addr
                                            .entry((remote, addr))
                                            .or_default()
                                            .push(at(contributions.len() - 1));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        let mut memo: HashMap<Vec<u32>, u32> = HashMap::new();
        let selecting_start = self.out.selecting.len();
        self.out
            .selecting
            .extend(policies.iter().map(|&p| PolicyId(p)));

        let by_endpoint_start = self.out.by_endpoint.len();
        for (remote, ids) in by_endpoint {
            let map = self.map_of(ids, &contributions, &mut memo);
            if map != NONE {
                self.out.by_endpoint.push((remote, map));
            }
        }
        let by_endpoint_addr_start = self.out.by_endpoint_addr.len();
        for ((remote, addr), ids) in by_endpoint_addr {
            let map = self.map_of(ids, &contributions, &mut memo);
            if map != NONE {
                self.out.by_endpoint_addr.push((remote, addr, map));
            }
        }

        let v4_start = self.out.v4.len();
        for (start, ids) in address_regions(&blocks, false) {
            let map = self.map_of(ids, &contributions, &mut memo);
            if self.out.v4.len() > v4_start && self.out.v4.last().is_some_and(|last| last.1 == map)
            {
                continue;
            }
            // IPv4 regions start at IPv4 addresses.
            self.out
                .v4
                .push((u32::try_from(start).unwrap_or(u32::MAX), map));
        }
        if self.out.v4[v4_start..].iter().all(|&(_, map)| map == NONE) {
            self.out.v4.truncate(v4_start);
        }
        let v6_start = self.out.v6.len();
        for (start, ids) in address_regions(&blocks, true) {
            let map = self.map_of(ids, &contributions, &mut memo);
            if self.out.v6.len() > v6_start && self.out.v6.last().is_some_and(|last| last.1 == map)
            {
                continue;
            }
            self.out.v6.push((start, map));
        }
        if self.out.v6[v6_start..].iter().all(|&(_, map)| map == NONE) {
            self.out.v6.truncate(v6_start);
        }

        let span = |start: usize, end: usize| -> Result<Span, CompileError> {
            Ok(Span {
                start: index_u32(start)?,
                len: index_u32(end - start)?,
            })
        };
        let table = Table {
            selecting: span(selecting_start, self.out.selecting.len())?,
            by_endpoint: span(by_endpoint_start, self.out.by_endpoint.len())?,
            by_endpoint_addr: span(by_endpoint_addr_start, self.out.by_endpoint_addr.len())?,
            v4: span(v4_start, self.out.v4.len())?,
            v6: span(v6_start, self.out.v6.len())?,
        };
        self.out.tables.push(table);
        index_u32(self.out.tables.len() - 1)
    }

    /// Dense indices of endpoints having a port of any of these names (sorted, unique).
    fn endpoints_having(&self, named: &[(Protocol, String)]) -> Vec<u32> {
        let mut out: Vec<u32> = named
            .iter()
            .filter_map(|(_, name)| self.endpoints_with_port.get(name.as_str()))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The interned map of the union of some contributions (`NONE` when empty).
    fn map_of(
        &mut self,
        mut ids: Vec<u32>,
        contributions: &[Vec<PortInterval>],
        memo: &mut HashMap<Vec<u32>, u32>,
    ) -> u32 {
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return NONE;
        }
        if let Some(&map) = memo.get(&ids) {
            return map;
        }
        let merged = normalize_intervals(
            ids.iter()
                .flat_map(|&id| contributions[id as usize].iter().copied()),
        );
        let map = self.intern(merged);
        memo.insert(ids, map);
        map
    }

    fn intern(&mut self, intervals: Vec<PortInterval>) -> u32 {
        if intervals.is_empty() {
            return NONE;
        }
        if let Some(&id) = self.map_ids.get(&intervals) {
            return id;
        }
        let span = Span {
            start: at(self.out.intervals.len()),
            len: at(intervals.len()),
        };
        self.out.intervals.extend_from_slice(&intervals);
        self.out.maps.push(span);
        let id = at(self.out.maps.len() - 1);
        self.map_ids.insert(intervals, id);
        id
    }
}

/// True when the block holds the address.
fn block_contains(block: &Block, addr: IpAddr) -> bool {
    block.cidr.contains(&addr) && !block.except.iter().any(|e| e.contains(&addr))
}

/// The first and last address of a prefix, as numbers.
fn net_bounds(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(v4) => (
            u128::from(u32::from(v4.network())),
            u128::from(u32::from(v4.broadcast())),
        ),
        IpNet::V6(v6) => (u128::from(v6.network()), u128::from(v6.broadcast())),
    }
}

/// Sweeps the blocks of one family into disjoint regions covering the whole family's
/// space, in order: (first address, the contributions active there). Within a block, the
/// `except` ranges are cut out first, so a region is either wholly in a block or wholly
/// out of it (OVN-Kubernetes gets the same effect with a higher-priority drop per except).
fn address_regions(blocks: &[(&Block, u32)], v6: bool) -> Vec<(u128, Vec<u32>)> {
    let max: u128 = if v6 { u128::MAX } else { u128::from(u32::MAX) };
    // (position, +1 / -1, contribution)
    let mut events: Vec<(u128, bool, u32)> = Vec::new();
    for (block, contribution) in blocks {
        if matches!(block.cidr, IpNet::V6(_)) != v6 {
            continue;
        }
        let (lo, hi) = net_bounds(&block.cidr);
        let mut holes: Vec<(u128, u128)> = block
            .except
            .iter()
            .filter(|e| matches!(e, IpNet::V6(_)) == v6)
            .map(net_bounds)
            .collect();
        holes.sort_unstable();
        let mut cursor = lo;
        let mut open = true; // whether `cursor` is still inside the block
        for (hole_lo, hole_hi) in holes {
            if !open || hole_hi < cursor {
                continue;
            }
            if hole_lo > cursor {
                events.push((cursor, true, *contribution));
                events.push((hole_lo, false, *contribution));
            }
            if hole_hi >= hi {
                open = false;
            } else {
                cursor = hole_hi + 1;
            }
        }
        if open && cursor <= hi {
            events.push((cursor, true, *contribution));
            if hi < max {
                events.push((hi + 1, false, *contribution));
            }
        }
    }
    events.sort_unstable();
    let mut regions: Vec<(u128, Vec<u32>)> = Vec::new();
    let mut active: BTreeMap<u32, u32> = BTreeMap::new();
    let mut i = 0;
    if events.first().is_none_or(|e| e.0 > 0) {
        regions.push((0, Vec::new()));
    }
    while i < events.len() {
        let position = events[i].0;
        while i < events.len() && events[i].0 == position {
            let (_, start, contribution) = events[i];
            if start {
                *active.entry(contribution).or_default() += 1;
            } else if let Some(count) = active.get_mut(&contribution) {
                *count -= 1;
                if *count == 0 {
                    active.remove(&contribution);
                }
            }
            i += 1;
        }
        let set: Vec<u32> = active.keys().copied().collect();
        if regions.last().is_some_and(|last| last.1 == set) {
            continue;
        }
        regions.push((position, set));
    }
    regions
}

/// Merges intervals into sorted disjoint ones, each carrying the smallest rule ordinal that
/// covers it; neighbours with the same rule are joined.
pub(crate) fn normalize_intervals(
    intervals: impl Iterator<Item = PortInterval>,
) -> Vec<PortInterval> {
    // (position, is_start, rule); an interval ends at hi + 1 (keys are 24-bit: no overflow).
    let mut events: Vec<(u32, bool, u32)> = Vec::new();
    for interval in intervals {
        events.push((interval.lo, true, interval.rule));
        events.push((interval.hi + 1, false, interval.rule));
    }
    events.sort_unstable();
    let mut active: BTreeMap<u32, u32> = BTreeMap::new();
    let mut out: Vec<PortInterval> = Vec::new();
    let mut open: Option<(u32, u32)> = None; // (start, rule)
    let mut i = 0;
    while i < events.len() {
        let position = events[i].0;
        while i < events.len() && events[i].0 == position {
            let (_, start, rule) = events[i];
            if start {
                *active.entry(rule).or_default() += 1;
            } else if let Some(count) = active.get_mut(&rule) {
                *count -= 1;
                if *count == 0 {
                    active.remove(&rule);
                }
            }
            i += 1;
        }
        let current = active.keys().next().copied();
        match (open, current) {
            (Some((_, rule)), Some(now)) if rule == now => {}
            (Some((start, rule)), _) => {
                out.push(PortInterval {
                    lo: start,
                    hi: position - 1,
                    rule,
                });
                open = current.map(|now| (position, now));
            }
            (None, Some(now)) => open = Some((position, now)),
            (None, None) => {}
        }
    }
    // Join neighbours of the same rule (an interval ending where the next begins).
    let mut joined: Vec<PortInterval> = Vec::with_capacity(out.len());
    for interval in out {
        match joined.last_mut() {
            Some(last) if last.rule == interval.rule && last.hi + 1 == interval.lo => {
                last.hi = interval.hi;
            }
            _ => joined.push(interval),
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(lo: u32, hi: u32, rule: u32) -> PortInterval {
        PortInterval { lo, hi, rule }
    }

    #[test]
    fn compiled_sets_can_be_shared_between_workers() {
        // Published with arc-swap and read by every worker.
        fn shareable<T: Send + Sync>() {}
        shareable::<Compiled>();
    }

    #[test]
    fn intervals_keep_the_first_rule() {
        let out = normalize_intervals(
            [iv(10, 20, 5), iv(15, 30, 2), iv(25, 40, 7), iv(50, 50, 9)].into_iter(),
        );
        assert_eq!(
            out,
            [iv(10, 14, 5), iv(15, 30, 2), iv(31, 40, 7), iv(50, 50, 9)]
        );
        let out = normalize_intervals([iv(0, 0x00FF_FFFF, 3), iv(5, 6, 1)].into_iter());
        assert_eq!(out, [iv(0, 4, 3), iv(5, 6, 1), iv(7, 0x00FF_FFFF, 3)]);
        let out = normalize_intervals([iv(1, 2, 4), iv(3, 4, 4), iv(2, 3, 4)].into_iter());
        assert_eq!(out, [iv(1, 4, 4)], "same rule, touching: one interval");
        assert!(normalize_intervals(std::iter::empty()).is_empty());
    }

    #[test]
    fn address_regions_cut_excepts_out() {
        let block = Block {
            cidr: "10.0.0.0/8".parse().expect("cidr"),
            except: vec![
                "10.1.0.0/16".parse().expect("cidr"),
                "10.1.2.0/24".parse().expect("cidr"),
                "10.255.0.0/16".parse().expect("cidr"),
            ],
        };
        let all = Block {
            cidr: "0.0.0.0/0".parse().expect("cidr"),
            except: vec![],
        };
        let v4 = |s: &str| u128::from(u32::from(s.parse::<std::net::Ipv4Addr>().expect("ip")));
        let regions = address_regions(&[(&block, 1), (&all, 0)], false);
        assert_eq!(
            regions,
            [
                (0, vec![0]),
                (v4("10.0.0.0"), vec![0, 1]),
                (v4("10.1.0.0"), vec![0]),
                (v4("10.2.0.0"), vec![0, 1]),
                (v4("10.255.0.0"), vec![0]),
            ]
        );
        let regions = address_regions(&[(&block, 1)], false);
        assert_eq!(
            regions,
            [
                (0, vec![]),
                (v4("10.0.0.0"), vec![1]),
                (v4("10.1.0.0"), vec![]),
                (v4("10.2.0.0"), vec![1]),
                (v4("10.255.0.0"), vec![]),
            ]
        );
        assert_eq!(
            address_regions(&[(&block, 1)], true),
            [(0, vec![])],
            "other family"
        );
    }
}
