//! The NetworkPolicy resource in its two written forms, their validation, and the one
//! normalized [`Policy`] both map onto.
//!
//! # The two forms
//! - `apiVersion: networking.k8s.io/v1` ([`KubernetesNetworkPolicy`]): Kubernetes' own,
//!   field for field (`k8s.io/api/networking/v1/types.go`): `podSelector`, `policyTypes`,
//!   `ingress[].from` / `egress[].to` peers of `podSelector`, `namespaceSelector` and
//!   `ipBlock`, and `ports[]` of `protocol`, numeric or named `port`, and `endPort`.
//! - `apiVersion: vswitch/v1alpha1` ([`VswitchNetworkPolicy`]): the form of the cloud API
//!   our seed document 004 describes (IronCore's `networking.ironcore.dev/v1alpha1`
//!   NetworkPolicy): a `network`, a `networkInterfaceSelector`, and peers that are an
//!   `objectSelector` (of `kind` NetworkInterface or LoadBalancer) or an `ipBlock`.
//!
//! Both are kept as written (lists that were absent stay absent; nothing defaulted is
//! written back), so that what the user applied is what `get` shows. Defaults are applied
//! when a resource is turned into a [`Policy`] by [`NetworkPolicy::to_policy`]:
//! - `policyTypes` absent or empty: `Ingress`, plus `Egress` when there is at least one
//!   egress rule (`SetDefaults_NetworkPolicy`, `pkg/apis/networking/v1/defaults.go`). An
//!   explicit `policyTypes` wins: `[Egress]` with ingress rules ignores those rules.
//! - a port's `protocol` absent: TCP.
//! - `metadata.namespace` absent: `default`.
//! - a selector absent: `{}` (every interface of the namespace).
//!
//! # Validation
//! [`NetworkPolicy::validate`] reports every problem with its field path, following
//! Kubernetes' `ValidateNetworkPolicySpec` (`pkg/apis/networking/validation/validation.go`)
//! for the first form and IronCore's `validateNetworkPolicySpec`
//! (`internal/apis/networking/validation/networkpolicy.go`) for the second. CIDRs are held to
//! Kubernetes' *strict* form (`IsValidCIDRForLegacyField` with `StrictIPCIDRValidation`): no
//! bits set past the prefix length, no IPv4-mapped IPv6, no leading zeros. Where the two
//! upstreams differ we say so at the check.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::selector::{LabelSelector, Labels};
use crate::validation::{
    FieldPath, ValidationErrors, check_dns_label, check_dns_subdomain, check_label_key,
    check_label_value, check_port_name,
};

/// `apiVersion` of Kubernetes' NetworkPolicy.
pub const KUBERNETES_API_VERSION: &str = "networking.k8s.io/v1";
/// `apiVersion` of the switch's own resources, and of the seed form of NetworkPolicy.
pub const VSWITCH_API_VERSION: &str = "vswitch/v1alpha1";
/// The label every Namespace carries, with its name as the value (set by the API server in
/// Kubernetes since 1.21; `namespaceSelector`s commonly use it).
pub const METADATA_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The namespace of a resource whose `metadata.namespace` is absent.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A Namespace: a name and labels. NetworkPolicies and the interfaces they select live in
/// one; `namespaceSelector` peers match its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// The namespace's name (a DNS label).
    pub name: String,
    /// Its labels as written; [`Namespace::effective_labels`] adds
    /// [`METADATA_NAME_LABEL`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with these labels.
    pub fn new(name: impl Into<String>, labels: Labels) -> Namespace {
        Namespace {
            name: name.into(),
            labels,
        }
    }

    /// The labels selectors see: the written ones, and always
    /// `kubernetes.io/metadata.name: <name>` (overriding a written value, as Kubernetes'
    /// API server does).
    pub fn effective_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert(METADATA_NAME_LABEL.to_owned(), self.name.clone());
        labels
    }
}

/// A transport protocol a policy port can name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum Protocol {
    /// TCP (IP protocol 6), the default.
    #[default]
    TCP,
    /// UDP (17).
    UDP,
    /// SCTP (132).
    SCTP,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::TCP => 6,
            Protocol::UDP => 17,
            Protocol::SCTP => 132,
        }
    }

    /// The protocol of an IP protocol number, if it is one of the three.
    pub fn from_number(number: u8) -> Option<Protocol> {
        match number {
            6 => Some(Protocol::TCP),
            17 => Some(Protocol::UDP),
            132 => Some(Protocol::SCTP),
            _ => None,
        }
    }

    fn parse(text: &str) -> Option<Protocol> {
        match text {
            "TCP" => Some(Protocol::TCP),
            "UDP" => Some(Protocol::UDP),
            "SCTP" => Some(Protocol::SCTP),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
        })
    }
}

/// A named port of an interface (a pod's `containerPort` with a `name`): what a policy's
/// named `port` resolves to on the destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedPort {
    /// The name (an IANA service name: `http`, `serve-80-tcp`).
    pub name: String,
    /// The port number.
    pub port: u16,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Protocol,
}

impl NamedPort {
    /// A named port.
    pub fn new(name: impl Into<String>, port: u16, protocol: Protocol) -> NamedPort {
        NamedPort {
            name: name.into(),
            port,
            protocol,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The written forms.

/// A NetworkPolicy as written, in either form; `apiVersion` says which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "apiVersion")]
pub enum NetworkPolicy {
    /// `apiVersion: networking.k8s.io/v1`.
    #[serde(rename = "networking.k8s.io/v1")]
    Kubernetes(KubernetesNetworkPolicy),
    /// `apiVersion: vswitch/v1alpha1`.
    #[serde(rename = "vswitch/v1alpha1")]
    Vswitch(VswitchNetworkPolicy),
}

/// Name, namespace and labels of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The policy's name (a DNS subdomain), unique in its namespace.
    #[serde(default)]
    pub name: String,
    /// Its namespace (a DNS label); `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels of the policy itself (not used for matching).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Annotations (kept, not interpreted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ObjectMeta {
    /// Metadata with a name and a namespace.
    pub fn named(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        }
    }

    /// The namespace, `default` when absent.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// Kubernetes' NetworkPolicy (`networking.k8s.io/v1`), as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesNetworkPolicy {
    /// Always `NetworkPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// What the policy selects and allows.
    #[serde(default)]
    pub spec: KubernetesNetworkPolicySpec,
}

/// Spec of a Kubernetes NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesNetworkPolicySpec {
    /// The interfaces (pods) of the policy's namespace it applies to; absent or `{}`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// `Ingress`, `Egress`, or both; see the module doc for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
    /// Allowed incoming connections; none (absent or empty) allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<KubernetesIngressRule>>,
    /// Allowed outgoing connections; none (absent or empty) allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<KubernetesEgressRule>>,
}

/// An ingress rule: connections from any of `from` to any of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesIngressRule {
    /// Destination ports; absent or empty: all ports (and all protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
    /// Sources; absent or empty: every source, inside the switch or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<KubernetesPeer>>,
}

/// An egress rule: connections to any of `to` on any of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesEgressRule {
    /// Destination ports; absent or empty: all ports (and all protocols).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
    /// Destinations; absent or empty: every destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<KubernetesPeer>>,
}

/// A Kubernetes peer: pods by selector (in the policy's namespace, or in the namespaces a
/// `namespaceSelector` picks; both in one peer are ANDed), or an `ipBlock` alone.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesPeer {
    /// Pods (interfaces) by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by label; `{}` is every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses, with exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// Addresses of a CIDR, minus the `except` CIDRs inside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// The block, e.g. `10.0.0.0/16` or `fd00::/64`.
    #[serde(default)]
    pub cidr: String,
    /// Parts of `cidr` that do not match (each a strict subset of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// A destination port of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A port number or the name of a port of the destination; absent: every port of the
    /// protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortValue>,
    /// With a numeric `port`: the last port of the range `port..=endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// A port as written: a number or a name (Kubernetes' `IntOrString`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// A port number (valid: 1 to 65535).
    Number(i64),
    /// The name of a port of the destination interface.
    Name(String),
}

/// The seed document's NetworkPolicy (`vswitch/v1alpha1`), as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VswitchNetworkPolicy {
    /// Always `NetworkPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// What the policy selects and allows.
    pub spec: VswitchNetworkPolicySpec,
}

/// Spec of a `vswitch/v1alpha1` NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VswitchNetworkPolicySpec {
    /// The Network whose interfaces the policy regulates (required).
    #[serde(default)]
    pub network: String,
    /// The NetworkInterfaces (of the namespace and Network) it applies to; absent or
    /// `{}`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_selector: Option<LabelSelector>,
    /// `Ingress`, `Egress`, or both; defaulted as Kubernetes does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
    /// Allowed incoming connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<VswitchIngressRule>>,
    /// Allowed outgoing connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<VswitchEgressRule>>,
}

/// An ingress rule of the seed form.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VswitchIngressRule {
    /// Destination ports; absent or empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
    /// Sources; absent or empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<VswitchPeer>>,
}

/// An egress rule of the seed form.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VswitchEgressRule {
    /// Destination ports; absent or empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
    /// Destinations; absent or empty: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<VswitchPeer>>,
}

/// A peer of the seed form: exactly one of `objectSelector` and `ipBlock`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VswitchPeer {
    /// Objects of a kind, by label, in the policy's namespace and Network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<ObjectSelector>,
    /// Addresses, with exceptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// Objects of one kind by label (IronCore's `ObjectSelector`: a kind and an inline label
/// selector).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectSelector {
    /// `NetworkInterface` or `LoadBalancer`.
    #[serde(default)]
    pub kind: String,
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    /// Further requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<crate::selector::LabelSelectorRequirement>,
}

impl ObjectSelector {
    /// The label selector part.
    pub fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: self.match_labels.clone(),
            match_expressions: self.match_expressions.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The normalized policy.

/// Direction of a rule, as seen from the interface a policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Connections to the interface.
    Ingress,
    /// Connections from the interface.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`: the spec field of the rules.
    pub fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// `from` or `to`: the rule field of the peers.
    pub fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// A validated policy, with every default applied: what the compiler takes. Both written
/// forms map onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// The seed form's Network: the policy selects, and its NetworkInterface and
    /// LoadBalancer peers match, only objects of this Network. `None` (Kubernetes form):
    /// any.
    pub network: Option<String>,
    /// The interfaces of the namespace (and Network) the policy applies to.
    pub selector: LabelSelector,
    /// `Some` when the policy is of type Ingress: it isolates the interfaces it selects
    /// for ingress, and these rules allow (an empty list allows nothing).
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy is of type Egress.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// The rules of a direction, when the policy has that type.
    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// A rule: a connection matches when its remote end matches one of `peers` (or `peers` is
/// empty) and its protocol and destination port match one of `ports` (or `ports` is
/// empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// Remote ends; empty: every remote end, inside the switch or outside it.
    pub peers: Vec<PeerSelector>,
    /// Protocols and destination ports; empty: every protocol and port.
    pub ports: Vec<PortMatch>,
}

/// What a peer of a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerSelector {
    /// Interfaces (pods) inside the switch, by label, in some namespaces. Never an address
    /// outside the switch.
    Endpoints {
        /// Which namespaces.
        namespaces: NamespaceScope,
        /// Which interfaces of them.
        selector: LabelSelector,
    },
    /// The addresses of LoadBalancers of the policy's namespace (and Network), by label.
    LoadBalancers {
        /// Which LoadBalancers.
        selector: LabelSelector,
    },
    /// Addresses: `cidr` minus each of `except`. Matches interfaces' addresses too.
    IpBlock {
        /// The block.
        cidr: IpNet,
        /// Holes in it.
        except: Vec<IpNet>,
    },
}

/// The namespaces an [`PeerSelector::Endpoints`] peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamespaceScope {
    /// The policy's own namespace (a `podSelector` alone).
    Own,
    /// The namespaces whose labels match (`namespaceSelector`; `{}` is all).
    Matching(LabelSelector),
}

/// A protocol and destination ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortMatch {
    /// The protocol.
    pub protocol: Protocol,
    /// Which of its ports.
    pub port: PortSpec,
}

/// Destination ports of a [`PortMatch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// Every port of the protocol.
    Any,
    /// `first..=last`.
    Range {
        /// The first port.
        first: u16,
        /// The last port (`first` for a single port).
        last: u16,
    },
    /// The port of this name on the destination interface (with the rule's protocol); on
    /// a destination outside the switch it matches nothing.
    Named(String),
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortSpec::Any => write!(f, "{} (any port)", self.protocol),
            PortSpec::Range { first, last } if first == last => {
                write!(f, "{first}/{}", self.protocol)
            }
            PortSpec::Range { first, last } => write!(f, "{first}-{last}/{}", self.protocol),
            PortSpec::Named(name) => write!(f, "{name:?}/{}", self.protocol),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validation and normalization.

impl NetworkPolicy {
    /// The policy's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            NetworkPolicy::Kubernetes(policy) => &policy.metadata,
            NetworkPolicy::Vswitch(policy) => &policy.metadata,
        }
    }

    /// The policy's namespace (`default` when absent).
    pub fn namespace(&self) -> &str {
        self.metadata().namespace()
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// Every problem of the policy, with its field path.
    ///
    /// # Errors
    /// All the problems found, in field order, when there is at least one.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        match self {
            NetworkPolicy::Kubernetes(policy) => {
                check_kind(&policy.kind, &mut errors);
                check_metadata(&policy.metadata, &mut errors);
                validate_kubernetes_spec(&policy.spec, &mut errors);
            }
            NetworkPolicy::Vswitch(policy) => {
                check_kind(&policy.kind, &mut errors);
                check_metadata(&policy.metadata, &mut errors);
                validate_vswitch_spec(&policy.spec, &mut errors);
            }
        }
        errors.into_result()
    }

    /// The normalized policy, once the resource is valid.
    ///
    /// # Errors
    /// Every problem [`NetworkPolicy::validate`] finds: a policy is refused whole.
    pub fn to_policy(&self) -> Result<Policy, ValidationErrors> {
        self.validate()?;
        Ok(match self {
            NetworkPolicy::Kubernetes(policy) => normalize_kubernetes(policy),
            NetworkPolicy::Vswitch(policy) => normalize_vswitch(policy),
        })
    }
}

fn check_kind(kind: &str, errors: &mut ValidationErrors) {
    if kind != "NetworkPolicy" {
        errors.push(
            &FieldPath::new("kind"),
            format!("unsupported value {kind:?}: must be \"NetworkPolicy\""),
        );
    }
}

fn check_metadata(metadata: &ObjectMeta, errors: &mut ValidationErrors) {
    let path = FieldPath::new("metadata");
    if metadata.name.is_empty() {
        errors.push(&path.child("name"), "required: the policy needs a name");
    } else if let Err(why) = check_dns_subdomain(&metadata.name) {
        errors.push(&path.child("name"), why);
    }
    if let Some(namespace) = &metadata.namespace
        && let Err(why) = check_dns_label(namespace)
    {
        errors.push(&path.child("namespace"), why);
    }
    for (key, value) in metadata.labels.iter().flatten() {
        let at = path.child("labels").key(key);
        if let Err(why) = check_label_key(key) {
            errors.push(&at, why);
        }
        if let Err(why) = check_label_value(value) {
            errors.push(&at, why);
        }
    }
}

fn validate_kubernetes_spec(spec: &KubernetesNetworkPolicySpec, errors: &mut ValidationErrors) {
    let path = FieldPath::new("spec");
    if let Some(selector) = &spec.pod_selector {
        selector.validate(&path.child("podSelector"), errors);
    }
    // Kubernetes' order: per rule its ports, then its peers; ingress, egress, policyTypes.
    for (index, rule) in spec.ingress.iter().flatten().enumerate() {
        let rule_path = path.child("ingress").index(index);
        validate_ports(rule.ports.as_deref(), &rule_path, errors);
        for (peer_index, peer) in rule.from.iter().flatten().enumerate() {
            validate_kubernetes_peer(peer, &rule_path.child("from").index(peer_index), errors);
        }
    }
    for (index, rule) in spec.egress.iter().flatten().enumerate() {
        let rule_path = path.child("egress").index(index);
        validate_ports(rule.ports.as_deref(), &rule_path, errors);
        for (peer_index, peer) in rule.to.iter().flatten().enumerate() {
            validate_kubernetes_peer(peer, &rule_path.child("to").index(peer_index), errors);
        }
    }
    validate_policy_types(spec.policy_types.as_deref(), &path, errors);
}

fn validate_vswitch_spec(spec: &VswitchNetworkPolicySpec, errors: &mut ValidationErrors) {
    let path = FieldPath::new("spec");
    if spec.network.is_empty() {
        errors.push(
            &path.child("network"),
            "required: the Network whose interfaces the policy regulates",
        );
    } else if let Err(why) = check_dns_label(&spec.network) {
        errors.push(&path.child("network"), why);
    }
    if let Some(selector) = &spec.network_interface_selector {
        selector.validate(&path.child("networkInterfaceSelector"), errors);
    }
    for (index, rule) in spec.ingress.iter().flatten().enumerate() {
        let rule_path = path.child("ingress").index(index);
        for (peer_index, peer) in rule.from.iter().flatten().enumerate() {
            validate_vswitch_peer(peer, &rule_path.child("from").index(peer_index), errors);
        }
        validate_ports(rule.ports.as_deref(), &rule_path, errors);
    }
    for (index, rule) in spec.egress.iter().flatten().enumerate() {
        let rule_path = path.child("egress").index(index);
        for (peer_index, peer) in rule.to.iter().flatten().enumerate() {
            validate_vswitch_peer(peer, &rule_path.child("to").index(peer_index), errors);
        }
        validate_ports(rule.ports.as_deref(), &rule_path, errors);
    }
    validate_policy_types(spec.policy_types.as_deref(), &path, errors);
}

/// `policyTypes`: at most two, each `Ingress` or `Egress`. Kubernetes accepts a repeated
/// type (it is harmless), and so do we.
fn validate_policy_types(
    types: Option<&[String]>,
    spec: &FieldPath,
    errors: &mut ValidationErrors,
) {
    let Some(types) = types else { return };
    let path = spec.child("policyTypes");
    if types.len() > 2 {
        errors.push(&path, "may not specify more than two policyTypes");
        return;
    }
    for (index, policy_type) in types.iter().enumerate() {
        if policy_type != "Ingress" && policy_type != "Egress" {
            errors.push(
                &path.index(index),
                format!(
                    "unsupported value {policy_type:?}: supported values: \"Ingress\", \"Egress\""
                ),
            );
        }
    }
}

/// The `ports` of a rule (`ValidateNetworkPolicyPort`).
fn validate_ports(
    ports: Option<&[NetworkPolicyPort]>,
    rule: &FieldPath,
    errors: &mut ValidationErrors,
) {
    for (index, port) in ports.iter().copied().flatten().enumerate() {
        let path = rule.child("ports").index(index);
        if let Some(protocol) = &port.protocol
            && Protocol::parse(protocol).is_none()
        {
            errors.push(
                &path.child("protocol"),
                format!(
                    "unsupported value {protocol:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                ),
            );
        }
        match &port.port {
            Some(PortValue::Number(number)) => {
                if !(1..=65535).contains(number) {
                    errors.push(
                        &path.child("port"),
                        format!("invalid value {number}: must be between 1 and 65535, inclusive"),
                    );
                }
                if let Some(end) = port.end_port {
                    if end < *number {
                        errors.push(
                            &path.child("endPort"),
                            format!(
                                "invalid value {end}: must be greater than or equal to port ({number})"
                            ),
                        );
                    }
                    if !(1..=65535).contains(&end) {
                        errors.push(
                            &path.child("endPort"),
                            format!("invalid value {end}: must be between 1 and 65535, inclusive"),
                        );
                    }
                }
            }
            Some(PortValue::Name(name)) => {
                if let Some(end) = port.end_port {
                    errors.push(
                        &path.child("endPort"),
                        format!(
                            "invalid value {end}: may not be specified when port is non-numeric (a named port)"
                        ),
                    );
                }
                if let Err(why) = check_port_name(name) {
                    errors.push(&path.child("port"), why);
                }
            }
            None => {
                if let Some(end) = port.end_port {
                    errors.push(
                        &path.child("endPort"),
                        format!(
                            "invalid value {end}: may not be specified when port is not specified"
                        ),
                    );
                }
            }
        }
    }
}

/// A Kubernetes peer (`ValidateNetworkPolicyPeer`): at least one field; `ipBlock` alone.
fn validate_kubernetes_peer(
    peer: &KubernetesPeer,
    path: &FieldPath,
    errors: &mut ValidationErrors,
) {
    let mut fields = 0;
    if let Some(selector) = &peer.pod_selector {
        fields += 1;
        selector.validate(&path.child("podSelector"), errors);
    }
    if let Some(selector) = &peer.namespace_selector {
        fields += 1;
        selector.validate(&path.child("namespaceSelector"), errors);
    }
    if let Some(block) = &peer.ip_block {
        fields += 1;
        validate_ip_block(block, &path.child("ipBlock"), errors);
    }
    if fields == 0 {
        errors.push(
            path,
            "required: a peer needs podSelector, namespaceSelector or ipBlock",
        );
    } else if fields > 1 && peer.ip_block.is_some() {
        errors.push(path, "may not specify both ipBlock and another peer");
    }
}

/// A seed-form peer (IronCore's `validateNetworkPolicyPeer`): exactly one of
/// `objectSelector` and `ipBlock`. IronCore accepts an empty peer (and then matches
/// nothing); we refuse it as Kubernetes does, since it is surely a mistake.
fn validate_vswitch_peer(peer: &VswitchPeer, path: &FieldPath, errors: &mut ValidationErrors) {
    match (&peer.object_selector, &peer.ip_block) {
        (None, None) => errors.push(path, "required: a peer needs objectSelector or ipBlock"),
        (Some(_), Some(_)) => {
            errors.push(path, "may not specify both objectSelector and ipBlock");
        }
        _ => {}
    }
    if let Some(object) = &peer.object_selector {
        let at = path.child("objectSelector");
        match object.kind.as_str() {
            "NetworkInterface" | "LoadBalancer" => {}
            "" => errors.push(
                &at.child("kind"),
                "required: \"NetworkInterface\" or \"LoadBalancer\"",
            ),
            other => errors.push(
                &at.child("kind"),
                format!(
                    "unsupported value {other:?}: supported values: \"NetworkInterface\", \"LoadBalancer\""
                ),
            ),
        }
        object.selector().validate(&at, errors);
    }
    if let Some(block) = &peer.ip_block {
        validate_ip_block(block, &path.child("ipBlock"), errors);
    }
}

/// `ipBlock` (`ValidateIPBlock`): a strict CIDR, and every `except` a strict CIDR of the
/// same family strictly inside it.
fn validate_ip_block(block: &IpBlock, path: &FieldPath, errors: &mut ValidationErrors) {
    if block.cidr.is_empty() {
        errors.push(&path.child("cidr"), "required: a CIDR such as 10.0.0.0/16");
        return;
    }
    let cidr = match parse_cidr(&block.cidr) {
        Ok(cidr) => Some(cidr),
        Err(why) => {
            errors.push(&path.child("cidr"), why);
            None
        }
    };
    for (index, text) in block.except.iter().flatten().enumerate() {
        let at = path.child("except").index(index);
        match parse_cidr(text) {
            Err(why) => errors.push(&at, why),
            Ok(except) => {
                if let Some(cidr) = cidr
                    && !(cidr.contains(&except) && except.prefix_len() > cidr.prefix_len())
                {
                    errors.push(
                        &at,
                        format!(
                            "invalid value {text:?}: must be a strict subset of cidr {}",
                            block.cidr
                        ),
                    );
                }
            }
        }
    }
}

/// A CIDR in strict form: `addr/len`, the address the network address (no bits set past
/// the prefix length), not IPv4-mapped IPv6.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let invalid =
        || format!("invalid value {text:?}: must be a CIDR such as 10.0.0.0/16 or fd00::/64");
    let net = IpNet::from_str(text).map_err(|_| invalid())?;
    // Leading zeros are ambiguous (octal to some parsers): Kubernetes' strict validation
    // refuses them in IPv4 octets and in the prefix length.
    let (addr, len) = text.split_once('/').ok_or_else(invalid)?;
    let leading_zero = |part: &str| part.len() > 1 && part.starts_with('0');
    if leading_zero(len) || (net.addr().is_ipv4() && addr.split('.').any(leading_zero)) {
        return Err(format!(
            "invalid value {text:?}: must not have leading zeros; the block is {net}"
        ));
    }
    if net.addr() != net.network() {
        return Err(format!(
            "invalid value {text:?}: has bits set past the prefix length; the block is {}",
            net.trunc()
        ));
    }
    if let IpNet::V6(v6) = net
        && v6.addr().to_ipv4_mapped().is_some()
        && v6.prefix_len() >= 96
    {
        return Err(format!(
            "invalid value {text:?}: an IPv4-mapped IPv6 CIDR; write the IPv4 CIDR instead"
        ));
    }
    Ok(net)
}

/// The policy types after Kubernetes' defaulting.
fn effective_types(types: Option<&[String]>, has_egress_rules: bool) -> (bool, bool) {
    match types {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, has_egress_rules),
    }
}

fn normalize_ports(ports: Option<&[NetworkPolicyPort]>) -> Vec<PortMatch> {
    ports
        .unwrap_or_default()
        .iter()
        .map(|port| {
            let protocol = port
                .protocol
                .as_deref()
                .and_then(Protocol::parse)
                .unwrap_or_default();
            let spec = match &port.port {
                None => PortSpec::Any,
                Some(PortValue::Name(name)) => PortSpec::Named(name.clone()),
                Some(PortValue::Number(number)) => {
                    // Validated: 1..=65535, and endPort in number..=65535.
                    let first = u16::try_from(*number).unwrap_or(u16::MAX);
                    let last = port
                        .end_port
                        .map_or(first, |end| u16::try_from(end).unwrap_or(u16::MAX));
                    PortSpec::Range { first, last }
                }
            };
            PortMatch {
                protocol,
                port: spec,
            }
        })
        .collect()
}

fn normalize_block(block: &IpBlock) -> PeerSelector {
    // Validated: every CIDR parses.
    let parse = |text: &str| parse_cidr(text).ok();
    PeerSelector::IpBlock {
        cidr: parse(&block.cidr).unwrap_or_default(),
        except: block
            .except
            .iter()
            .flatten()
            .filter_map(|e| parse(e))
            .collect(),
    }
}

fn normalize_kubernetes_peer(peer: &KubernetesPeer) -> PeerSelector {
    if let Some(block) = &peer.ip_block {
        return normalize_block(block);
    }
    PeerSelector::Endpoints {
        namespaces: match &peer.namespace_selector {
            Some(selector) => NamespaceScope::Matching(selector.clone()),
            None => NamespaceScope::Own,
        },
        selector: peer.pod_selector.clone().unwrap_or_default(),
    }
}

fn normalize_kubernetes(policy: &KubernetesNetworkPolicy) -> Policy {
    let spec = &policy.spec;
    let egress_rules = spec.egress.as_deref().unwrap_or_default();
    let (ingress, egress) = effective_types(spec.policy_types.as_deref(), !egress_rules.is_empty());
    Policy {
        namespace: policy.metadata.namespace().to_owned(),
        name: policy.metadata.name.clone(),
        network: None,
        selector: spec.pod_selector.clone().unwrap_or_default(),
        ingress: ingress.then(|| {
            spec.ingress
                .iter()
                .flatten()
                .map(|rule| Rule {
                    peers: rule
                        .from
                        .iter()
                        .flatten()
                        .map(normalize_kubernetes_peer)
                        .collect(),
                    ports: normalize_ports(rule.ports.as_deref()),
                })
                .collect()
        }),
        egress: egress.then(|| {
            egress_rules
                .iter()
                .map(|rule| Rule {
                    peers: rule
                        .to
                        .iter()
                        .flatten()
                        .map(normalize_kubernetes_peer)
                        .collect(),
                    ports: normalize_ports(rule.ports.as_deref()),
                })
                .collect()
        }),
    }
}

fn normalize_vswitch_peer(peer: &VswitchPeer) -> PeerSelector {
    match (&peer.object_selector, &peer.ip_block) {
        (Some(object), _) if object.kind == "LoadBalancer" => PeerSelector::LoadBalancers {
            selector: object.selector(),
        },
        (Some(object), _) => PeerSelector::Endpoints {
            namespaces: NamespaceScope::Own,
            selector: object.selector(),
        },
        (None, Some(block)) => normalize_block(block),
        // Refused by validation.
        (None, None) => PeerSelector::Endpoints {
            namespaces: NamespaceScope::Own,
            selector: LabelSelector::default(),
        },
    }
}

fn normalize_vswitch(policy: &VswitchNetworkPolicy) -> Policy {
    let spec = &policy.spec;
    let egress_rules = spec.egress.as_deref().unwrap_or_default();
    let (ingress, egress) = effective_types(spec.policy_types.as_deref(), !egress_rules.is_empty());
    Policy {
        namespace: policy.metadata.namespace().to_owned(),
        name: policy.metadata.name.clone(),
        network: Some(spec.network.clone()),
        selector: spec.network_interface_selector.clone().unwrap_or_default(),
        ingress: ingress.then(|| {
            spec.ingress
                .iter()
                .flatten()
                .map(|rule| Rule {
                    peers: rule
                        .from
                        .iter()
                        .flatten()
                        .map(normalize_vswitch_peer)
                        .collect(),
                    ports: normalize_ports(rule.ports.as_deref()),
                })
                .collect()
        }),
        egress: egress.then(|| {
            egress_rules
                .iter()
                .map(|rule| Rule {
                    peers: rule
                        .to
                        .iter()
                        .flatten()
                        .map(normalize_vswitch_peer)
                        .collect(),
                    ports: normalize_ports(rule.ports.as_deref()),
                })
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> NetworkPolicy {
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn kubernetes_defaulting() {
        let policy = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  egress:\n  - ports: [{port: 53, protocol: UDP}, {port: 80}]\n",
        );
        let p = policy.to_policy().expect("valid");
        assert_eq!(p.namespace, "default");
        assert!(p.selector.is_empty());
        assert_eq!(p.ingress, Some(vec![]), "Ingress is always a default type");
        let egress = p.egress.expect("Egress because there are egress rules");
        assert_eq!(
            egress[0].ports,
            [
                PortMatch {
                    protocol: Protocol::UDP,
                    port: PortSpec::Range {
                        first: 53,
                        last: 53
                    }
                },
                PortMatch {
                    protocol: Protocol::TCP,
                    port: PortSpec::Range {
                        first: 80,
                        last: 80
                    }
                },
            ],
            "protocol defaults to TCP"
        );

        let policy = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  policyTypes: [Egress]\n  ingress: [{}]\n",
        );
        let p = policy.to_policy().expect("valid");
        assert_eq!(
            p.ingress, None,
            "explicit policyTypes wins over ingress rules"
        );
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn peers_normalize() {
        let policy = parse(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - namespaceSelector: {}
    - podSelector: {}
      namespaceSelector: {matchLabels: {team: t}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
",
        );
        let p = policy.to_policy().expect("valid");
        let peers = &p.ingress.expect("ingress")[0].peers;
        assert_eq!(
            peers[0],
            PeerSelector::Endpoints {
                namespaces: NamespaceScope::Own,
                selector: LabelSelector::with_labels([("pod", "b")])
            }
        );
        assert_eq!(
            peers[1],
            PeerSelector::Endpoints {
                namespaces: NamespaceScope::Matching(LabelSelector::default()),
                selector: LabelSelector::default()
            }
        );
        assert_eq!(
            peers[2],
            PeerSelector::Endpoints {
                namespaces: NamespaceScope::Matching(LabelSelector::with_labels([("team", "t")])),
                selector: LabelSelector::default()
            }
        );
        assert_eq!(
            peers[3],
            PeerSelector::IpBlock {
                cidr: "10.0.0.0/8".parse().expect("cidr"),
                except: vec!["10.1.0.0/16".parse().expect("cidr")]
            }
        );
    }

    #[test]
    fn seed_form_maps_onto_the_same_model() {
        // Seed 004's example, with `network` as vswitch names it.
        let policy = parse(
            "apiVersion: vswitch/v1alpha1
kind: NetworkPolicy
metadata:
  namespace: default
  name: my-network-policy
spec:
  network: my-network
  networkInterfaceSelector:
    matchLabels:
      app: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
    - objectSelector:
        kind: NetworkInterface
        matchLabels:
          app: web
    - objectSelector:
        kind: LoadBalancer
        matchLabels:
          app: web
    ports:
    - protocol: TCP
      port: 5432
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 8080
",
        );
        let p = policy.to_policy().expect("valid");
        assert_eq!(p.network.as_deref(), Some("my-network"));
        assert_eq!(p.selector, LabelSelector::with_labels([("app", "db")]));
        let ingress = p.ingress.expect("ingress");
        assert_eq!(ingress[0].peers.len(), 3);
        assert!(matches!(
            ingress[0].peers[1],
            PeerSelector::Endpoints {
                namespaces: NamespaceScope::Own,
                ..
            }
        ));
        assert!(matches!(
            ingress[0].peers[2],
            PeerSelector::LoadBalancers { .. }
        ));
        assert_eq!(p.egress.expect("egress").len(), 1);
    }

    #[test]
    fn stored_and_shown_as_written() {
        let text = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: p
  namespace: x
spec:
  podSelector: {}
  ingress:
  - from: []
    ports:
    - port: serve-80-tcp
    - protocol: UDP
      port: 1000
      endPort: 2000
";
        let policy = parse(text);
        let json = serde_json::to_value(&policy).expect("json");
        assert_eq!(json["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(json["spec"]["podSelector"], serde_json::json!({}));
        assert_eq!(json["spec"]["ingress"][0]["from"], serde_json::json!([]));
        assert_eq!(
            json["spec"]["ingress"][0]["ports"][0],
            serde_json::json!({"port": "serve-80-tcp"})
        );
        assert!(
            json["spec"].get("policyTypes").is_none(),
            "defaults are not written back"
        );
        assert!(
            json["spec"]["ingress"][0]["ports"][0]
                .get("protocol")
                .is_none()
        );
        let back: NetworkPolicy = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, policy);
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        for yaml in [
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelectr: {}}\n",
            "apiVersion: networking.k8s.io/v2\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n",
            "apiVersion: vswitch/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {network: n, ingress: [{from: [{podSelector: {}}]}]}\n",
        ] {
            assert!(
                serde_norway::from_str::<NetworkPolicy>(yaml).is_err(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn strict_cidrs() {
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("fd00::/64").is_ok());
        assert!(parse_cidr("0.0.0.0/0").is_ok());
        let host_bits = parse_cidr("10.0.0.1/8").expect_err("host bits");
        assert!(host_bits.contains("10.0.0.0/8"), "{host_bits}");
        assert!(parse_cidr("10.0.0.0").is_err(), "no prefix length");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("010.0.0.0/8").is_err(), "leading zeros");
        assert!(parse_cidr("10.0.0.0/08").is_err(), "leading zeros");
        assert!(parse_cidr("::ffff:10.0.0.0/104").is_err(), "IPv4-mapped");
    }

    #[test]
    fn namespaces_always_carry_their_name_label() {
        let ns = Namespace::new(
            "x",
            Labels::from([(METADATA_NAME_LABEL.to_owned(), "forged".to_owned())]),
        );
        assert_eq!(ns.effective_labels()[METADATA_NAME_LABEL], "x");
    }
}
