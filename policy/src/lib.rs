//! Network policy model, compiler and classifier (Kubernetes NetworkPolicy semantics); no I/O.
//!
//! Being built: the NetworkPolicy model (both written forms, validation with field paths,
//! the normalized policy), the compiler of a world of interfaces and policies into
//! per-interface tables, and the classifier of connections over those tables.

#![forbid(unsafe_code)]

pub mod classify;
pub mod compile;
pub mod model;
pub mod selector;
pub mod validation;

pub use classify::{Connection, Decision, Isolation, Peer, Verdict};
pub use compile::{
    CompileError, CompileStats, Compiled, Endpoint, EndpointId, LoadBalancer, PolicyId, RuleRef,
    World,
};
pub use model::{
    DEFAULT_NAMESPACE, Direction, KUBERNETES_API_VERSION, METADATA_NAME_LABEL, NamedPort,
    Namespace, NamespaceScope, NetworkPolicy, PeerSelector, Policy, PortMatch, PortSpec, Protocol,
    Rule, VSWITCH_API_VERSION,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, Labels, SelectorOperator};
pub use validation::{FieldError, ValidationErrors};
