//! Resource kinds: one module per kind, each implementing [`ResourceKind`], and the registry
//! that lists them.
//!
//! A kind's module holds its spec and status types, its defaults (serde), its validation
//! ([`ResourceKind::check`]), what keeps it from being deleted ([`ResourceKind::dependants`]),
//! its status as read ([`ResourceKind::observe`]), its table columns and rows, its `describe`
//! tables and an example. The registry below is the only list of kinds: the [`Kind`] enum,
//! the typed [`Resource`], the tables of [`State`], kind parsing, the CLI's tables and
//! `describe` views, `--help` and the "unknown kind" message are all generated from it, so
//! adding a kind is a new file here plus one registry line (see `docs/adding-a-kind.md`).

pub mod load_balancer;
pub mod load_balancer_routing;
pub mod namespace;
pub mod nat_gateway;
pub mod network;
pub mod network_interface;
pub mod network_policy;
pub mod overlay;
pub mod port_forward;
pub mod route;
pub mod subnet;
pub mod uplink;
pub mod virtual_ip;

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::resource::{Metadata, Origin};

/// What every kind's module imports.
mod prelude {
    pub(crate) use std::collections::{BTreeMap, BTreeSet};
    pub(crate) use std::fmt;
    pub(crate) use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    pub(crate) use std::str::FromStr;

    pub(crate) use ipnet::{IpNet, Ipv4Net, Ipv6Net};
    pub(crate) use serde::de::Error as _;
    pub(crate) use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) use super::network_interface::InterfaceState;
    pub(crate) use super::{
        Batch, CheckContext, CheckMemo, Completion, DescribeTable, Errors, KindInfo, Listing,
        ResourceKind, State, StatusView, cell, cells, json_text, labels_cell, recreate_hint,
    };
    pub(crate) use crate::control::ApiError;
    pub(crate) use crate::control::resource::*;
    pub(crate) use crate::control::{ipam, nat_rules, overlay, routing};
    pub(crate) use crate::port::PortKind;
    pub(crate) use crate::sys::netns::NetnsRef;
}

/// What the registry knows of a kind besides its types.
#[derive(Debug)]
pub struct KindInfo {
    /// The canonical name, as `kind:` says it (`NATGateway`).
    pub name: &'static str,
    /// The lowercase plural used in API paths (`natgateways`).
    pub plural: &'static str,
    /// Short forms a user may type instead (lowercase, singular: `natgw`).
    pub aliases: &'static [&'static str],
    /// One line: what the kind is.
    pub summary: &'static str,
    /// A complete example document (YAML), as `docs/api.md` and `vswitchctl explain` show it.
    pub example: &'static str,
}

/// A table as rows of text: the columns of `vswitchctl get` or of a `describe` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Column headers.
    pub headers: Vec<&'static str>,
    /// One row per item, a cell per header.
    pub rows: Vec<Vec<String>>,
}

/// A `describe` section shown as a table, in place of a status field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeTable {
    /// The status field (camelCase, as serialised) the table replaces in the generic view.
    pub replaces: &'static str,
    /// The section's title (`Peerings`).
    pub title: &'static str,
    /// The table.
    pub listing: Listing,
}

/// Printed for a missing or empty value in tables.
pub const NONE: &str = "-";

/// A value as a table cell: `-` when empty.
pub fn cell(value: impl fmt::Display) -> String {
    let text = value.to_string();
    if text.is_empty() {
        NONE.to_owned()
    } else {
        text
    }
}

/// Items as one cell, joined with `,`; `-` when there are none.
pub fn cells<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let joined: Vec<String> = items.into_iter().map(|item| item.to_string()).collect();
    cell(joined.join(","))
}

/// A value as its JSON text without quotes (an enum as the API spells it: `tap`, `Public`).
pub fn json_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(text)) => cell(text),
        Ok(other) => cell(other),
        Err(_) => cell(""),
    }
}

/// Labels as `k=v,k=v` (sorted by key), or `-`.
pub fn labels_cell(metadata: &Metadata) -> String {
    cells(
        metadata
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}")),
    )
}

/// Validation errors of one request, collected rather than returned at the first: the API
/// answers with all of them (as Kubernetes aggregates a `field.ErrorList`).
#[derive(Debug, Default)]
pub struct Errors {
    errors: Vec<ApiError>,
}

impl Errors {
    /// No errors yet.
    pub fn new() -> Errors {
        Errors::default()
    }

    /// Records an error.
    pub fn push(&mut self, error: ApiError) {
        self.errors.push(error);
    }

    /// Records the error of a check, if it failed.
    pub fn check(&mut self, result: Result<(), ApiError>) {
        if let Err(error) = result {
            self.push(error);
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// How many errors were recorded (a check can tell whether its own steps added any).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// `Ok` when nothing was recorded, else every error as one [`ApiError`].
    ///
    /// # Errors
    /// The recorded errors, aggregated by [`ApiError::aggregate`].
    pub fn into_result(self) -> Result<(), ApiError> {
        match ApiError::aggregate(self.errors) {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }
}

/// What a kind's validation sees: the state before the batch, the state with the batch
/// applied, which resources the batch holds, and where the resource came from.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    /// The state before the batch.
    pub current: &'a State,
    /// The state with the whole batch applied (statuses carried, not yet computed).
    pub next: &'a State,
    /// The resources of the batch, with their origins.
    pub batch: Batch<'a>,
    /// Where the checked resource came from (document, kind, name), for messages.
    pub origin: &'a Origin,
    /// Indexes of `next` shared by the checks of the batch.
    pub memo: &'a CheckMemo<'a>,
}

/// Indexes of the batch's next state that the checks of many resources share, each built at
/// its first use: a check of each resource that scanned all the others would be quadratic
/// (10^5 Routes in one input, 10^10 comparisons).
#[derive(Debug, Default)]
pub struct CheckMemo<'a> {
    /// The names of the Routes of each (Network, destination), in name order.
    pub route_destinations: std::cell::OnceCell<RouteDestinations<'a>>,
    /// The Subnets by prefix, VNI and VLAN.
    pub subnets: std::cell::OnceCell<subnet::SubnetIndex<'a>>,
}

impl<'a> CheckMemo<'a> {
    /// The Subnets of `next` by prefix, VNI and VLAN (built at the first call).
    pub fn subnets(&self, next: &'a State) -> &subnet::SubnetIndex<'a> {
        self.subnets.get_or_init(|| subnet::SubnetIndex::of(next))
    }

    /// The Routes of `next` by (Network, destination) (built at the first call).
    pub fn route_destinations(&self, next: &'a State) -> &RouteDestinations<'a> {
        self.route_destinations.get_or_init(|| {
            let mut index = RouteDestinations::new();
            for route in next.routes.values() {
                index
                    .entry((route.spec.network.as_str(), route.spec.destination))
                    .or_default()
                    .push(route.metadata.name.as_str());
            }
            index
        })
    }
}

/// Route names by (Network, destination).
pub type RouteDestinations<'a> = std::collections::HashMap<(&'a str, ipnet::IpNet), Vec<&'a str>>;

/// Where the documents of the batch being planned came from: which resources are in it, and
/// in which order.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    origins: &'a BTreeMap<(Kind, String), Origin>,
}

impl<'a> Batch<'a> {
    /// The batch of `origins` (every document of the input, by kind and name).
    pub fn new(origins: &'a BTreeMap<(Kind, String), Origin>) -> Batch<'a> {
        Batch { origins }
    }

    /// True when `kind`/`name` is existing state not in the batch, or a document before
    /// `than` in the input: the resource `than` must give way to.
    pub fn before(&self, kind: Kind, name: &str, than: &Origin) -> bool {
        match self.origins.get(&(kind, name.to_string())) {
            None => true,
            Some(origin) => origin.document < than.document,
        }
    }

    /// True when `kind`/`name` is in the batch.
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        self.origins.contains_key(&(kind, name.to_string()))
    }
}

/// The advice for a field that cannot change: `delete the Subnet and create it again`.
pub(crate) fn recreate_hint(kind: Kind) -> String {
    format!("delete the {kind} and create it again")
}

/// What [`ResourceKind::complete`] may read: the state with the batch applied, as far as a
/// default needs it.
#[derive(Debug, Default)]
pub struct Completion {
    /// VLAN -> the Subnet bound to it (the batch's Subnets over the stored ones).
    pub vlan_subnets: BTreeMap<u16, String>,
}

/// What a kind's status, as read, may use besides the state: the running datapath's view.
#[derive(Debug, Default)]
pub struct StatusView {
    /// Masquerade ports in use per interface (NATGateways).
    pub nat_usage: Vec<nat::InterfaceUsage>,
    /// NetworkInterface names by port id.
    pub port_names: BTreeMap<u32, String>,
    /// LoadBalancers as the datapath serves them, by key.
    pub load_balancers: BTreeMap<String, LoadBalancerLive>,
    /// NetworkPolicies as compiled and counted, by key.
    pub network_policies: BTreeMap<String, network_policy::NetworkPolicyStatus>,
    /// The Uplink's bond members as its monitor sees them.
    pub uplink_members: Vec<uplink::MemberStatus>,
    /// The routing tables, computed at the first Route's status and kept for the others
    /// (a view serves one read of one state).
    pub routing: std::sync::OnceLock<crate::control::routing::Tables>,
}

/// A LoadBalancer as the datapath serves it: its backend counts and backends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadBalancerLive {
    /// Backend counts (all but `selected`, which the state gives).
    pub counts: load_balancer::BackendCounts,
    /// Each backend: interface, address, state.
    pub backends: Vec<(String, std::net::IpAddr, load_balancer::BackendStateView)>,
}

/// A resource kind. Implemented once per kind, in its own module; the registry
/// ([`Stored`]) provides the rest.
pub trait ResourceKind: Stored {
    /// The spec type.
    type Spec: PartialEq + fmt::Debug;
    /// The status type.
    type Status: Default + PartialEq + fmt::Debug;

    /// Name, plural, short forms, summary and example.
    const INFO: KindInfo;

    /// True for kinds whose resources live in a namespace (`metadata.namespace`, default
    /// `default`; names unique per namespace); false for cluster-wide kinds, which refuse a
    /// namespace.
    const NAMESPACED: bool = false;

    /// The `apiVersion`s a document of this kind may say; the first is the one written when
    /// a request leaves it out.
    const API_VERSIONS: &'static [&'static str] = &[crate::control::resource::API_VERSION];

    /// The spec.
    fn spec(&self) -> &Self::Spec;

    /// Defaults that depend on other fields of the document (serde defaults cover the
    /// rest), set on the document's JSON before it is typed: what an omitted field means.
    fn apply_defaults(document: &mut serde_json::Map<String, Value>) {
        let _ = document;
    }

    /// The status.
    fn status_mut(&mut self) -> &mut Self::Status;

    /// The status a resource being applied keeps: by default none (statuses are computed);
    /// kinds whose status the controller owns (a device's state, an allocation) carry the
    /// old one over.
    fn carry_status(&mut self, old: Option<&Self>) {
        let _ = old;
        *self.status_mut() = Self::Status::default();
    }

    /// Fills in what the spec leaves to the rest of the state (a NetworkInterface's Subnet
    /// from its VLAN), before the resource is compared with the stored one and checked.
    fn complete(&mut self, cx: &Completion) {
        let _ = cx;
    }

    /// Checks the resource against the state with the batch applied; records every
    /// problem in `errors` (each with its field path) rather than stopping at the first.
    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors);

    /// What keeps resource `name` from being deleted: `(what, names)` pairs, e.g.
    /// `("Subnets", ["web"])`. Empty when nothing depends on it.
    fn dependants(state: &State, name: &str) -> Vec<(&'static str, Vec<String>)> {
        let _ = (state, name);
        Vec::new()
    }

    /// Fills in the status as read (`get`, `list`): computed fields such as a Network's
    /// Subnets or a NATGateway's ports in use.
    fn observe(&mut self, state: &State, view: &StatusView) {
        let _ = (state, view);
    }

    /// The resource as shown to clients (secrets redacted).
    fn shown(&self) -> Self {
        self.clone()
    }

    /// Column headers of `vswitchctl get`; `wide` adds columns.
    fn columns(wide: bool) -> Vec<&'static str>;

    /// The cells of one row, matching [`columns`](Self::columns).
    fn row(&self, wide: bool) -> Vec<String>;

    /// Sections `describe` shows as tables instead of the generic field listing.
    fn describe_tables(&self) -> Vec<DescribeTable> {
        Vec::new()
    }
}

/// What the registry implements for each kind: where its resources live in the [`State`]
/// and how it wraps into a [`Resource`].
pub trait Stored:
    Clone + PartialEq + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The kind.
    const KIND: Kind;
    /// Name and labels.
    fn metadata(&self) -> &Metadata;
    /// Name and labels, to change.
    fn metadata_mut(&mut self) -> &mut Metadata;
    /// This kind's resources by name.
    fn table(state: &State) -> &BTreeMap<String, Self>;
    /// This kind's resources by name, to change.
    fn table_mut(state: &mut State) -> &mut BTreeMap<String, Self>;
    /// As a resource of any kind.
    fn into_resource(self) -> Resource;
}

/// Code written once over every kind: [`Kind::visit`] calls `visit::<K>()` with the kind's
/// type, so no `match` over kinds is needed outside the registry.
pub trait KindVisitor {
    /// What the visit returns.
    type Output;
    /// Called with the visited kind's type.
    fn visit<K: ResourceKind>(self) -> Self::Output;
}

/// Like [`KindVisitor`], with the resource itself.
pub trait ResourceVisitor {
    /// What the visit returns.
    type Output;
    /// Called with the resource, typed.
    fn visit<K: ResourceKind>(self, resource: K) -> Self::Output;
}

/// A kind name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown kind {0:?}; valid kinds: {kinds} (any case, singular or plural; short forms: {aliases})",
    kinds = Kind::names().join(", "),
    aliases = Kind::alias_help(),
)]
pub struct UnknownKind(pub String);

impl From<UnknownKind> for ApiError {
    fn from(err: UnknownKind) -> ApiError {
        ApiError::invalid("kind", err.to_string())
    }
}

/// Version of the state file format this code writes. Formats 1 (no node id, no Routes),
/// 2 (no Uplink, NATGateways, PortForwards, VirtualIPs) and 3 (no namespaces, Namespaces or
/// NetworkPolicies) are still read; the next save writes them as format 4. An older
/// vswitchd refuses format 4 as too new rather than as corrupt.
pub const STATE_FORMAT: u32 = 4;

/// The oldest state file format this code reads.
pub const OLDEST_STATE_FORMAT: u32 = 1;

/// IPAM state of one Subnet that is not derivable from the interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetIpamState {
    /// The last address handed out automatically (host-local's `lastReservedIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated: Option<std::net::Ipv4Addr>,
    /// The last IPv6 address handed out automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_allocated_v6: Option<std::net::Ipv6Addr>,
}

/// Generates, from the one list of kinds: [`Kind`], [`Resource`], [`State`] and [`Stored`].
macro_rules! registry {
    ($( $variant:ident => $module:ident :: $ty:ident in $field:ident as $key:literal; )*) => {
        /// A resource kind. The variants are in dependency order: a kind depends only on
        /// kinds before it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $(
                #[doc = concat!("`", stringify!($ty), "` (see [`", stringify!($module), "`]).")]
                $variant,
            )*
        }

        impl Kind {
            /// Every kind, in dependency order.
            pub const ALL: [Kind; [$(stringify!($variant)),*].len()] = [$(Kind::$variant),*];

            /// Name, plural, short forms, summary and example.
            pub fn info(self) -> &'static KindInfo {
                match self {
                    $(Kind::$variant => &<$module::$ty as ResourceKind>::INFO,)*
                }
            }

            /// Runs `visitor` with this kind's type.
            pub fn visit<V: KindVisitor>(self, visitor: V) -> V::Output {
                match self {
                    $(Kind::$variant => visitor.visit::<$module::$ty>(),)*
                }
            }
        }

        /// A typed resource of any kind.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Resource {
            $(
                #[doc = concat!("A `", stringify!($ty), "`.")]
                $variant($module::$ty),
            )*
        }

        impl Resource {
            /// Its kind.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Resource::$variant(_) => Kind::$variant,)*
                }
            }

            /// Its metadata.
            pub fn metadata(&self) -> &Metadata {
                match self {
                    $(Resource::$variant(r) => &r.metadata,)*
                }
            }

            /// Runs `visitor` with the typed resource.
            pub fn visit<V: ResourceVisitor>(self, visitor: V) -> V::Output {
                match self {
                    $(Resource::$variant(r) => visitor.visit(r),)*
                }
            }
        }

        $(
            impl Stored for $module::$ty {
                const KIND: Kind = Kind::$variant;
                fn metadata(&self) -> &Metadata {
                    &self.metadata
                }
                fn metadata_mut(&mut self) -> &mut Metadata {
                    &mut self.metadata
                }
                fn table(state: &State) -> &BTreeMap<String, Self> {
                    &state.$field
                }
                fn table_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
                    &mut state.$field
                }
                fn into_resource(self) -> Resource {
                    Resource::$variant(self)
                }
            }
        )*

        /// Everything persisted: the node id, resources by kind and name (with the status
        /// the controller owns), IPAM cursors by Subnet name, and a hub's runner-ID pool.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct State {
            /// [`STATE_FORMAT`].
            pub format: u32,
            /// This node's id; the controller generates it on first boot.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub node_id: Option<super::node::NodeId>,
            $(
                #[doc = concat!("`", stringify!($ty), "` resources by name.")]
                #[serde(default, rename = $key)]
                pub $field: BTreeMap<String, $module::$ty>,
            )*
            /// IPAM cursors by Subnet name.
            #[serde(default)]
            pub ipam: BTreeMap<String, SubnetIpamState>,
            /// Hub: the runner-ID pool (IDs survive restarts).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub runner_pool: Option<vxlan::RunnerPool>,
        }

        impl Default for State {
            fn default() -> State {
                State {
                    format: STATE_FORMAT,
                    node_id: None,
                    $($field: BTreeMap::new(),)*
                    ipam: BTreeMap::new(),
                    runner_pool: None,
                }
            }
        }

        impl State {
            /// True when no resource exists (the node id does not count).
            pub fn is_empty(&self) -> bool {
                true $(&& self.$field.is_empty())*
            }
        }
    };
}

// The registry: every kind, in dependency order (a kind depends only on kinds above it).
// Variant => module::Type in State field as "key in the state file".
registry! {
    Namespace => namespace::Namespace in namespaces as "namespaces";
    Overlay => overlay::Overlay in overlays as "overlays";
    Network => network::Network in networks as "networks";
    Subnet => subnet::Subnet in subnets as "subnets";
    Uplink => uplink::Uplink in uplinks as "uplinks";
    VirtualIp => virtual_ip::VirtualIp in virtual_ips as "virtualIPs";
    NetworkInterface => network_interface::NetworkInterface in network_interfaces as "networkInterfaces";
    Route => route::Route in routes as "routes";
    NatGateway => nat_gateway::NatGateway in nat_gateways as "natGateways";
    PortForward => port_forward::PortForward in port_forwards as "portForwards";
    LoadBalancer => load_balancer::LoadBalancer in load_balancers as "loadBalancers";
    LoadBalancerRouting => load_balancer_routing::LoadBalancerRouting in load_balancer_routings as "loadBalancerRoutings";
    NetworkPolicy => network_policy::NetworkPolicy in network_policies as "networkPolicies";
}

impl Kind {
    /// The canonical name (`NetworkInterface`).
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// The lowercase plural used in API paths (`networkinterfaces`).
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// The `apiVersion`s the kind accepts ([`ResourceKind::API_VERSIONS`]).
    pub fn api_versions(self) -> &'static [&'static str] {
        struct Versions;
        impl KindVisitor for Versions {
            type Output = &'static [&'static str];
            fn visit<K: ResourceKind>(self) -> Self::Output {
                K::API_VERSIONS
            }
        }
        self.visit(Versions)
    }

    /// True when the kind's resources live in namespaces ([`ResourceKind::NAMESPACED`]).
    pub fn is_namespaced(self) -> bool {
        struct Namespaced;
        impl KindVisitor for Namespaced {
            type Output = bool;
            fn visit<K: ResourceKind>(self) -> bool {
                K::NAMESPACED
            }
        }
        self.visit(Namespaced)
    }

    /// Every kind's canonical name, in registry order.
    pub fn names() -> Vec<&'static str> {
        Kind::ALL.iter().map(|kind| kind.as_str()).collect()
    }

    /// The short forms, as `nic (NetworkInterface), natgw (NATGateway), ...`.
    pub fn alias_help() -> String {
        let mut parts = Vec::new();
        for kind in Kind::ALL {
            for alias in kind.info().aliases {
                parts.push(format!("{alias} ({kind})"));
            }
        }
        parts.join(", ")
    }

    /// The kinds for `--help`: name, short forms and what each is, one per line.
    pub fn help() -> String {
        let mut text = String::from("Kinds (any case, singular or plural):\n");
        for kind in Kind::ALL {
            let info = kind.info();
            let aliases = if info.aliases.is_empty() {
                String::new()
            } else {
                format!(" ({})", info.aliases.join(", "))
            };
            text.push_str(&format!("  {}{aliases}: {}\n", info.name, info.summary));
        }
        text
    }

    /// Parses a kind as a user writes it: any case, singular or plural, or a short form
    /// (`Subnets`, `networkinterface`, `NICs`, `natgws`, `VIPs`).
    ///
    /// # Errors
    /// [`UnknownKind`], whose message lists the valid kinds.
    pub fn parse(text: &str) -> Result<Kind, UnknownKind> {
        let lower = text.trim().to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        Kind::ALL
            .into_iter()
            .find(|kind| {
                let info = kind.info();
                let name = info.name.to_ascii_lowercase();
                lower == name
                    || lower == info.plural
                    || singular == name
                    || info
                        .aliases
                        .iter()
                        .any(|alias| lower == *alias || singular == *alias)
            })
            .ok_or_else(|| UnknownKind(text.to_string()))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::parse(s)
    }
}

impl Resource {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// Its key in its kind's table: the name, `namespace/name` outside `default`
    /// ([`Metadata::key`]).
    pub fn key(&self) -> String {
        self.metadata().key()
    }

    /// The resource as JSON, as clients see it (secrets redacted).
    ///
    /// # Errors
    /// [`ApiError::Internal`] if serialisation fails (it does not for these types).
    pub fn to_json(&self) -> Result<Value, ApiError> {
        struct ToJson;
        impl ResourceVisitor for ToJson {
            type Output = Result<Value, ApiError>;
            fn visit<K: ResourceKind>(self, resource: K) -> Self::Output {
                to_json(&resource.shown())
            }
        }
        self.clone().visit(ToJson)
    }
}

/// A resource of one kind as JSON.
///
/// # Errors
/// [`ApiError::Internal`] if serialisation fails (it does not for these types).
pub fn to_json<K: ResourceKind>(resource: &K) -> Result<Value, ApiError> {
    serde_json::to_value(resource).map_err(|err| ApiError::Internal {
        message: format!(
            "cannot serialise {} {:?}: {err}",
            K::KIND,
            resource.metadata().name
        ),
    })
}

impl State {
    /// The metadata of `kind`/`name`, if it exists.
    pub fn metadata(&self, kind: Kind, name: &str) -> Option<&Metadata> {
        struct Find<'a, 'b>(&'a State, &'b str);
        impl<'a> KindVisitor for Find<'a, '_> {
            type Output = Option<&'a Metadata>;
            fn visit<K: ResourceKind>(self) -> Self::Output {
                K::table(self.0).get(self.1).map(Stored::metadata)
            }
        }
        kind.visit(Find(self, name))
    }

    /// True when `kind`/`name` exists.
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        self.metadata(kind, name).is_some()
    }

    /// The names of `kind`'s resources, sorted.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        struct Names<'a>(&'a State);
        impl KindVisitor for Names<'_> {
            type Output = Vec<String>;
            fn visit<K: ResourceKind>(self) -> Self::Output {
                K::table(self.0).keys().cloned().collect()
            }
        }
        kind.visit(Names(self))
    }

    /// A copy of `kind`/`name`, if it exists.
    pub fn resource(&self, kind: Kind, name: &str) -> Option<Resource> {
        struct Get<'a>(&'a State, &'a str);
        impl KindVisitor for Get<'_> {
            type Output = Option<Resource>;
            fn visit<K: ResourceKind>(self) -> Self::Output {
                K::table(self.0)
                    .get(self.1)
                    .cloned()
                    .map(Stored::into_resource)
            }
        }
        kind.visit(Get(self, name))
    }

    /// Inserts `resource`, replacing the one of its kind and name.
    pub fn put(&mut self, resource: Resource) {
        struct Put<'a>(&'a mut State);
        impl ResourceVisitor for Put<'_> {
            type Output = ();
            fn visit<K: ResourceKind>(self, resource: K) {
                let key = resource.metadata().key();
                K::table_mut(self.0).insert(key, resource);
            }
        }
        resource.visit(Put(self));
    }

    /// Removes `kind`/`name`; true when it existed.
    pub fn remove(&mut self, kind: Kind, name: &str) -> bool {
        struct Remove<'a>(&'a mut State, &'a str);
        impl KindVisitor for Remove<'_> {
            type Output = bool;
            fn visit<K: ResourceKind>(self) -> Self::Output {
                K::table_mut(self.0).remove(self.1).is_some()
            }
        }
        kind.visit(Remove(self, name))
    }

    /// `kind`/`name` as read: a copy with its status computed ([`ResourceKind::observe`]).
    pub fn observed(&self, kind: Kind, name: &str, view: &StatusView) -> Option<Resource> {
        struct Observe<'a>(&'a State, &'a str, &'a StatusView);
        impl KindVisitor for Observe<'_> {
            type Output = Option<Resource>;
            fn visit<K: ResourceKind>(self) -> Self::Output {
                let mut resource = K::table(self.0).get(self.1)?.clone();
                resource.observe(self.0, self.2);
                Some(resource.into_resource())
            }
        }
        kind.visit(Observe(self, name, view))
    }

    /// Gives every resource of a namespaced kind its namespace (`default` when a state file
    /// written before namespaces has none), as parsing does for documents.
    pub fn normalize_namespaces(&mut self) {
        struct Normalize<'a>(&'a mut State);
        impl KindVisitor for Normalize<'_> {
            type Output = ();
            fn visit<K: ResourceKind>(self) {
                if !K::NAMESPACED {
                    return;
                }
                for resource in K::table_mut(self.0).values_mut() {
                    resource.metadata_mut().namespace.get_or_insert_with(|| {
                        crate::control::resource::DEFAULT_NAMESPACE.to_owned()
                    });
                }
            }
        }
        for kind in Kind::ALL {
            kind.visit(Normalize(self));
        }
    }

    /// Checks that every resource is stored under its key ([`Metadata::key`]) and that
    /// only namespaced kinds have a namespace.
    ///
    /// # Errors
    /// A message naming the first resource that is not.
    pub fn check_keys(&self) -> Result<(), String> {
        struct Keys<'a>(&'a State);
        impl KindVisitor for Keys<'_> {
            type Output = Result<(), String>;
            fn visit<K: ResourceKind>(self) -> Self::Output {
                for (key, resource) in K::table(self.0) {
                    let metadata = resource.metadata();
                    if metadata.key() != *key {
                        return Err(format!(
                            "{} stored under {key:?} is {:?}",
                            K::KIND,
                            metadata.key()
                        ));
                    }
                    if !K::NAMESPACED && metadata.namespace.is_some() {
                        return Err(format!(
                            "{} {key:?} has a namespace, but the kind is cluster-wide",
                            K::KIND
                        ));
                    }
                }
                Ok(())
            }
        }
        for kind in Kind::ALL {
            kind.visit(Keys(self))?;
        }
        Ok(())
    }

    /// What keeps `kind`/`name` from being deleted ([`ResourceKind::dependants`]).
    pub fn dependants(&self, kind: Kind, name: &str) -> Vec<(&'static str, Vec<String>)> {
        struct Dependants<'a>(&'a State, &'a str);
        impl KindVisitor for Dependants<'_> {
            type Output = Vec<(&'static str, Vec<String>)>;
            fn visit<K: ResourceKind>(self) -> Self::Output {
                K::dependants(self.0, self.1)
            }
        }
        kind.visit(Dependants(self, name))
    }
}

/// The table `vswitchctl get` prints for resources of one kind, given as JSON (as the API
/// returns them): each is deserialised into its kind's type, so a field the CLI and the
/// daemon disagree on is an error, not a silent `-`.
///
/// # Errors
/// A message naming the resource that does not parse as `kind`.
pub fn listing(kind: Kind, resources: &[Value], wide: bool) -> Result<Listing, String> {
    struct Rows<'a>(&'a [Value], bool);
    impl KindVisitor for Rows<'_> {
        type Output = Result<Listing, String>;
        fn visit<K: ResourceKind>(self) -> Self::Output {
            let mut listing = Listing {
                headers: K::columns(self.1),
                rows: Vec::with_capacity(self.0.len()),
            };
            for value in self.0 {
                let resource: K = typed(value)?;
                listing.rows.push(resource.row(self.1));
            }
            Ok(listing)
        }
    }
    kind.visit(Rows(resources, wide))
}

/// The `describe` tables of one resource given as JSON ([`ResourceKind::describe_tables`]).
///
/// # Errors
/// A message naming the resource when it does not parse as `kind`.
pub fn describe_tables(kind: Kind, resource: &Value) -> Result<Vec<DescribeTable>, String> {
    struct Tables<'a>(&'a Value);
    impl KindVisitor for Tables<'_> {
        type Output = Result<Vec<DescribeTable>, String>;
        fn visit<K: ResourceKind>(self) -> Self::Output {
            Ok(typed::<K>(self.0)?.describe_tables())
        }
    }
    kind.visit(Tables(resource))
}

/// A JSON resource as kind `K`.
fn typed<K: ResourceKind>(value: &Value) -> Result<K, String> {
    K::deserialize(value).map_err(|err| {
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        format!("the daemon's {} {name:?} does not parse: {err}", K::KIND)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_by_name_plural_and_alias() {
        for kind in Kind::ALL {
            let info = kind.info();
            assert_eq!(Kind::parse(info.name), Ok(kind));
            assert_eq!(Kind::parse(&info.name.to_ascii_uppercase()), Ok(kind));
            assert_eq!(Kind::parse(info.plural), Ok(kind));
            for alias in info.aliases {
                assert_eq!(Kind::parse(alias), Ok(kind), "{alias}");
                assert_eq!(Kind::parse(&format!("{alias}s")), Ok(kind), "{alias}s");
            }
        }
        assert_eq!(Kind::parse("NICs"), Ok(Kind::NetworkInterface));
        assert_eq!(Kind::parse("natgws"), Ok(Kind::NatGateway));
    }

    #[test]
    fn names_and_aliases_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in Kind::ALL {
            let info = kind.info();
            for word in [info.name.to_ascii_lowercase(), info.plural.to_string()]
                .into_iter()
                .chain(info.aliases.iter().map(|a| a.to_string()))
            {
                assert!(seen.insert(word.clone()), "{word} names two kinds");
            }
        }
    }

    #[test]
    fn unknown_kind_lists_every_kind() {
        let message = Kind::parse("gizmo").unwrap_err().to_string();
        for kind in Kind::ALL {
            assert!(message.contains(kind.as_str()), "{message}");
        }
        assert!(message.contains("nic (NetworkInterface)"), "{message}");
    }

    #[test]
    fn every_example_parses_and_has_a_row() {
        for kind in Kind::ALL {
            let info = kind.info();
            let docs = crate::control::resource::parse_documents(info.example)
                .unwrap_or_else(|err| panic!("{kind}'s example: {err}"));
            assert!(docs.iter().any(|d| d.resource.kind() == kind), "{kind}");
            for doc in docs.into_iter().filter(|d| d.resource.kind() == kind) {
                let value = doc.resource.to_json().expect("serialises");
                for wide in [false, true] {
                    let listing = listing(kind, std::slice::from_ref(&value), wide)
                        .unwrap_or_else(|err| panic!("{kind}: {err}"));
                    assert_eq!(listing.rows.len(), 1);
                    assert_eq!(listing.rows[0].len(), listing.headers.len(), "{kind}");
                    assert_eq!(listing.headers[0], "NAME");
                }
            }
        }
    }

    #[test]
    fn a_subnet_without_gateway_gets_the_first_usable_address() {
        let docs = crate::control::resource::parse_documents(
            "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: a}\nspec: {network: n, cidr: 10.1.0.0/24}\n",
        )
        .expect("parses");
        let Resource::Subnet(subnet) = &docs[0].resource else {
            panic!("{docs:?}");
        };
        assert_eq!(subnet.spec.gateway, std::net::Ipv4Addr::new(10, 1, 0, 1));
        // A bad CIDR is still reported as such, not as a missing gateway.
        let err = crate::control::resource::parse_documents(
            "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: a}\nspec: {network: n, cidr: 10.1.0.0/33}\n",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("documents[0].spec.cidr"), "{err}");
    }

    #[test]
    fn every_wrong_document_is_reported_at_once() {
        let err = crate::control::resource::parse_documents(
            "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: a}\nspec: {network: n, cidr: 10.1.0.0/33}\n---\n\
             apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: b}\nspec: {colour: blue}\n",
        )
        .unwrap_err();
        let fields: Vec<&str> = err.causes().iter().filter_map(ApiError::field).collect();
        assert_eq!(fields.len(), 2, "{err}");
        assert_eq!(fields[0], "documents[0].spec.cidr", "{err}");
        assert!(fields[1].starts_with("documents[1].spec"), "{err}");
        assert_eq!(err.status(), 400);
        assert!(err.to_string().starts_with("2 problems"), "{err}");
        assert_eq!(
            err.to_json()["error"]["causes"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn docs_describe_every_kind() {
        let api = include_str!("../../../../docs/api.md");
        for kind in Kind::ALL {
            assert!(
                api.contains(&format!("### {}", kind.as_str())),
                "docs/api.md has no section for {kind}"
            );
        }
    }
}
