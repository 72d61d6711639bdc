//! `Namespace`: a name and labels that NetworkPolicies' `namespaceSelector`s match.
//!
//! Namespaced kinds (NetworkInterface, LoadBalancer, NetworkPolicy) name their namespace in
//! `metadata.namespace` (`default` when absent). Namespaces are implicit: a resource that
//! names one is in it whether or not a `Namespace` object exists; the object only gives the
//! namespace labels. It always carries `kubernetes.io/metadata.name: <name>`, as Kubernetes'
//! API server sets it, so `namespaceSelector`s can pick a namespace by name. Deleting a
//! Namespace drops its labels and nothing else: the resources in it stay (Kubernetes deletes
//! them; the switch refuses to lose interfaces behind a label change).

#[allow(unused_imports)]
use super::prelude::*;

/// The label every namespace carries, with its name as the value.
pub const METADATA_NAME_LABEL: &str = policy::METADATA_NAME_LABEL;

/// Spec of a Namespace: nothing (Kubernetes' `finalizers` has no meaning here).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {}

/// Status of a Namespace (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceStatus {
    /// Always `Active` (the switch has no namespace deletion phase).
    #[serde(default)]
    pub phase: String,
    /// NetworkInterfaces in the namespace.
    #[serde(default)]
    pub network_interfaces: u32,
    /// LoadBalancers in the namespace.
    #[serde(default)]
    pub load_balancers: u32,
    /// NetworkPolicies in the namespace.
    #[serde(default)]
    pub network_policies: u32,
}

/// A namespace's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// Always `v1`.
    pub api_version: String,
    /// Always `Namespace`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Nothing.
    #[serde(default)]
    pub spec: NamespaceSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: NamespaceStatus,
}

/// The labels of namespace `name` as selectors see them: the Namespace object's, if any,
/// and always [`METADATA_NAME_LABEL`].
pub fn effective_labels(state: &State, name: &str) -> BTreeMap<String, String> {
    let mut labels = state
        .namespaces
        .get(name)
        .map(|ns| ns.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert(METADATA_NAME_LABEL.to_owned(), name.to_owned());
    labels
}

/// Every namespace in use: those with a Namespace object, those a namespaced resource
/// names, and `default`.
pub fn all(state: &State) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = state.namespaces.keys().cloned().collect();
    names.insert(DEFAULT_NAMESPACE.to_owned());
    names.extend(
        state
            .network_interfaces
            .values()
            .map(|r| r.metadata.namespace().to_owned()),
    );
    names.extend(
        state
            .load_balancers
            .values()
            .map(|r| r.metadata.namespace().to_owned()),
    );
    names.extend(
        state
            .network_policies
            .values()
            .map(|r| r.metadata.namespace().to_owned()),
    );
    names
}

impl ResourceKind for Namespace {
    type Spec = NamespaceSpec;
    type Status = NamespaceStatus;

    const API_VERSIONS: &'static [&'static str] = &["v1"];

    const INFO: KindInfo = KindInfo {
        name: "Namespace",
        plural: "namespaces",
        aliases: &["ns"],
        summary: "labels of a namespace, which NetworkPolicies' namespaceSelectors match (namespaces themselves are implicit)",
        example: "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: payments
",
    };

    fn spec(&self) -> &NamespaceSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut NamespaceStatus {
        &mut self.status
    }

    /// `kubernetes.io/metadata.name` is set to the name, as Kubernetes' API server does.
    fn apply_defaults(document: &mut serde_json::Map<String, serde_json::Value>) {
        let Some(serde_json::Value::Object(metadata)) = document.get_mut("metadata") else {
            return;
        };
        let Some(name) = metadata.get("name").cloned() else {
            return;
        };
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let serde_json::Value::Object(labels) = labels {
            labels.entry(METADATA_NAME_LABEL).or_insert(name);
        }
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        let value = self.metadata.labels.get(METADATA_NAME_LABEL);
        if value != Some(&self.metadata.name) {
            errors.push(cx.origin.invalid(
                &format!("metadata.labels.{METADATA_NAME_LABEL}"),
                format!(
                    "must be the namespace's name {:?} (the switch sets it; leave it out)",
                    self.metadata.name
                ),
            ));
        }
    }

    fn observe(&mut self, state: &State, _view: &StatusView) {
        let name = self.metadata.name.as_str();
        let count = |namespaces: &mut dyn Iterator<Item = &str>| {
            u32::try_from(namespaces.filter(|ns| *ns == name).count()).unwrap_or(u32::MAX)
        };
        self.status = NamespaceStatus {
            phase: "Active".into(),
            network_interfaces: count(
                &mut state
                    .network_interfaces
                    .values()
                    .map(|r| r.metadata.namespace()),
            ),
            load_balancers: count(
                &mut state
                    .load_balancers
                    .values()
                    .map(|r| r.metadata.namespace()),
            ),
            network_policies: count(
                &mut state
                    .network_policies
                    .values()
                    .map(|r| r.metadata.namespace()),
            ),
        };
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "STATUS", "INTERFACES", "POLICIES"];
        if wide {
            columns.extend(["LOADBALANCERS", "LABELS"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let mut row = vec![
            self.metadata.name.clone(),
            cell(&self.status.phase),
            self.status.network_interfaces.to_string(),
            self.status.network_policies.to_string(),
        ];
        if wide {
            row.extend([
                self.status.load_balancers.to_string(),
                labels_cell(&self.metadata),
            ]);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use crate::control::resource::{Resource, parse_documents};

    #[test]
    fn the_name_label_is_set_and_cannot_lie() {
        let docs = parse_documents(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a}}\n",
        )
        .expect("parses");
        let Resource::Namespace(ns) = &docs[0].resource else {
            panic!("{docs:?}");
        };
        assert_eq!(
            ns.metadata
                .labels
                .get(super::METADATA_NAME_LABEL)
                .map(String::as_str),
            Some("shop")
        );
        let err = parse_documents(
            "apiVersion: vswitch/v1alpha1\nkind: Namespace\nmetadata: {name: shop}\n",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("documents[0].apiVersion"), "{err}");
        let err = parse_documents(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, namespace: x}\n",
        )
        .unwrap_err();
        assert_eq!(
            err.field(),
            Some("documents[0].metadata.namespace"),
            "{err}"
        );
    }
}
