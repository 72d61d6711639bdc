//! Label selectors, as Kubernetes has them (`metav1.LabelSelector`): the `policy` crate's
//! type, shared by LoadBalancers (which interfaces are backends) and NetworkPolicies (which
//! interfaces and peers a rule applies to), so that both read selectors the same way.
//!
//! Semantics (`k8s.io/apimachinery/pkg/labels`, see [`policy::selector`]): `matchLabels`
//! and `matchExpressions` are ANDed; `NotIn` and `DoesNotExist` match an object without the
//! key; an empty selector matches everything. A missing selector is the caller's to define
//! (a LoadBalancer without one selects nothing, as a Service without a selector).

pub use policy::selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};

/// Every problem of `selector`, each with its field path below `path` (such as
/// `spec.networkInterfaceSelector.matchExpressions[0].values`), in the order Kubernetes
/// reports them.
pub fn problems(selector: &LabelSelector, path: &str) -> Vec<(String, String)> {
    let mut errors = policy::validation::ValidationErrors::new();
    selector.validate(&policy::validation::FieldPath::new(path), &mut errors);
    errors
        .0
        .into_iter()
        .map(|error| (error.path, error.message))
        .collect()
}
