//! Network policy model, compiler and classifier (Kubernetes NetworkPolicy semantics); no I/O.
//!
//! Being built: so far the label selectors NetworkPolicy uses and the validation errors
//! (every problem with its field path) the policy model will report.

#![forbid(unsafe_code)]

pub mod selector;
pub mod validation;

pub use selector::{LabelSelector, LabelSelectorRequirement, Labels, SelectorOperator};
pub use validation::{FieldError, ValidationErrors};
