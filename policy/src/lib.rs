//! Network policy model, compiler and classifier (Kubernetes NetworkPolicy semantics); no I/O.
//!
//! Being built: so far the NetworkPolicy model (both written forms, validation with field
//! paths, the normalized policy), its label selectors and validation errors.

#![forbid(unsafe_code)]

pub mod model;
pub mod selector;
pub mod validation;

pub use model::{
    DEFAULT_NAMESPACE, Direction, KUBERNETES_API_VERSION, METADATA_NAME_LABEL, NamedPort,
    Namespace, NamespaceScope, NetworkPolicy, PeerSelector, Policy, PortMatch, PortSpec, Protocol,
    Rule, VSWITCH_API_VERSION,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, Labels, SelectorOperator};
pub use validation::{FieldError, ValidationErrors};
