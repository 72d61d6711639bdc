//! `NetworkPolicy`: which connections the interfaces it selects may take and accept, with
//! Kubernetes' semantics. Accepted in two forms, stored and shown as written:
//! `networking.k8s.io/v1` (Kubernetes' object verbatim: `podSelector`, `namespaceSelector`,
//! `ipBlock`, named and numeric ports, `endPort`) and `vswitch/v1alpha1` (the seed's:
//! `network`, `networkInterfaceSelector`, `objectSelector` of NetworkInterfaces or
//! LoadBalancers, `ipBlock`). The model, validation, compiler and classifier are the
//! `policy` crate's; this module stores the object, checks it with the crate's field paths
//! and shows what the datapath made of it (selected interfaces, connections allowed and
//! denied per rule).

#[allow(unused_imports)]
use super::prelude::*;

use serde_json::Value;

/// Connections a policy's rules allowed and its isolation denied, as the datapath counted
/// them since the policy's last change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyCounters {
    /// Connections its ingress rules allowed.
    #[serde(default)]
    pub ingress_allowed: u64,
    /// Connections its egress rules allowed.
    #[serde(default)]
    pub egress_allowed: u64,
    /// Connections denied on ingress while it (among others) isolated the destination.
    #[serde(default)]
    pub ingress_denied: u64,
    /// Connections denied on egress while it (among others) isolated the source.
    #[serde(default)]
    pub egress_denied: u64,
}

/// One rule's count.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleCounter {
    /// `Ingress` or `Egress`.
    pub direction: String,
    /// The rule's index in `ingress` or `egress`.
    pub index: u32,
    /// Connections it allowed (the first allowing rule is counted).
    pub allowed: u64,
}

/// Status of a NetworkPolicy (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyStatus {
    /// The policy types in effect (`policyTypes`, or Kubernetes' default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    /// Interfaces (`namespace/name`, `name` in `default`) the policy selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selected: Vec<String>,
    /// Connection counters.
    #[serde(default)]
    pub counters: PolicyCounters,
    /// Per-rule counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleCounter>,
}

/// A NetworkPolicy as written (either form) with the switch's view of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Name, namespace and labels (the written object's).
    pub metadata: Metadata,
    /// The object as written.
    pub written: policy::NetworkPolicy,
    /// Observed state (ignored on input).
    pub status: NetworkPolicyStatus,
}

impl NetworkPolicy {
    /// A policy from its written form.
    pub fn new(written: policy::NetworkPolicy) -> NetworkPolicy {
        let meta = written.metadata();
        NetworkPolicy {
            metadata: Metadata {
                name: meta.name.clone(),
                namespace: Some(meta.namespace().to_owned()),
                labels: meta.labels.clone().unwrap_or_default(),
            },
            written,
            status: NetworkPolicyStatus::default(),
        }
    }

    /// The policy types in effect, as the compiler sees them.
    pub fn effective_types(&self) -> Vec<String> {
        let Ok(normalized) = self.written.to_policy() else {
            return Vec::new();
        };
        let mut types = Vec::new();
        if normalized.ingress.is_some() {
            types.push("Ingress".to_owned());
        }
        if normalized.egress.is_some() {
            types.push("Egress".to_owned());
        }
        types
    }
}

impl Serialize for NetworkPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut value = serde_json::to_value(&self.written).map_err(S::Error::custom)?;
        if let Value::Object(object) = &mut value {
            // The labels live in `metadata` (a `label` change edits them there).
            if let Some(Value::Object(meta)) = object.get_mut("metadata") {
                if self.metadata.labels.is_empty() {
                    meta.remove("labels");
                } else {
                    let labels =
                        serde_json::to_value(&self.metadata.labels).map_err(S::Error::custom)?;
                    meta.insert("labels".into(), labels);
                }
            }
            let status = serde_json::to_value(&self.status).map_err(S::Error::custom)?;
            object.insert("status".into(), status);
        }
        value.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for NetworkPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(deserializer)?;
        let status = match &mut value {
            Value::Object(object) => object.remove("status"),
            _ => None,
        };
        // Each form on its own: serde loses field paths inside an internally tagged enum.
        let version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Value::Object(object) = &mut value {
            object.remove("apiVersion");
        }
        fn typed<T: serde::de::DeserializeOwned, E: serde::de::Error>(
            value: Value,
        ) -> Result<T, E> {
            serde_path_to_error::deserialize(value).map_err(|err| {
                let path = err.path().to_string();
                if path == "." {
                    E::custom(err.into_inner())
                } else {
                    E::custom(format!("{path}: {}", err.into_inner()))
                }
            })
        }
        let written = match version.as_str() {
            policy::KUBERNETES_API_VERSION => {
                policy::NetworkPolicy::Kubernetes(typed::<_, D::Error>(value)?)
            }
            policy::VSWITCH_API_VERSION => {
                policy::NetworkPolicy::Vswitch(typed::<_, D::Error>(value)?)
            }
            other => {
                return Err(D::Error::custom(format!(
                    "apiVersion {other:?}: write {} or {}",
                    policy::KUBERNETES_API_VERSION,
                    policy::VSWITCH_API_VERSION
                )));
            }
        };
        let mut policy = NetworkPolicy::new(written);
        if let Some(status) = status.filter(|s| !s.is_null()) {
            policy.status = serde_json::from_value(status).map_err(D::Error::custom)?;
        }
        Ok(policy)
    }
}

impl ResourceKind for NetworkPolicy {
    type Spec = policy::NetworkPolicy;
    type Status = NetworkPolicyStatus;

    const NAMESPACED: bool = true;

    const API_VERSIONS: &'static [&'static str] =
        &[policy::KUBERNETES_API_VERSION, policy::VSWITCH_API_VERSION];

    const INFO: KindInfo = KindInfo {
        name: "NetworkPolicy",
        plural: "networkpolicies",
        aliases: &["netpol", "policy"],
        summary: "which connections the interfaces it selects may open and accept (Kubernetes' NetworkPolicy, or the seed's form), stateful",
        example: "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-web
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: db
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - protocol: TCP
      port: 5432
",
    };

    fn spec(&self) -> &policy::NetworkPolicy {
        &self.written
    }

    fn status_mut(&mut self) -> &mut NetworkPolicyStatus {
        &mut self.status
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        if let Err(problems) = self.written.validate() {
            for problem in problems.0 {
                errors.push(cx.origin.invalid(&problem.path, problem.message));
            }
        }
        if let policy::NetworkPolicy::Vswitch(seed) = &self.written {
            let network = &seed.spec.network;
            if !network.is_empty() && !cx.next.networks.contains_key(network) {
                errors.push(cx.origin.invalid(
                    "spec.network",
                    format!("Network {network:?} does not exist; name an existing Network"),
                ));
            }
        }
    }

    fn observe(&mut self, _state: &State, view: &StatusView) {
        self.status = view
            .network_policies
            .get(&self.metadata.key())
            .cloned()
            .unwrap_or_default();
        self.status.policy_types = self.effective_types();
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "TYPES", "SELECTED", "ALLOWED", "DENIED"];
        if wide {
            columns.extend(["API", "LABELS"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let counters = &self.status.counters;
        let mut row = vec![
            self.metadata.name.clone(),
            cells(&self.status.policy_types),
            self.status.selected.len().to_string(),
            (counters.ingress_allowed + counters.egress_allowed).to_string(),
            (counters.ingress_denied + counters.egress_denied).to_string(),
        ];
        if wide {
            let api = match &self.written {
                policy::NetworkPolicy::Kubernetes(_) => policy::KUBERNETES_API_VERSION,
                policy::NetworkPolicy::Vswitch(_) => policy::VSWITCH_API_VERSION,
            };
            row.extend([api.to_owned(), labels_cell(&self.metadata)]);
        }
        row
    }

    fn describe_tables(&self) -> Vec<DescribeTable> {
        let mut tables = vec![DescribeTable {
            replaces: "selected",
            title: "Selected interfaces",
            listing: Listing {
                headers: vec!["INTERFACE"],
                rows: self
                    .status
                    .selected
                    .iter()
                    .map(|name| vec![name.clone()])
                    .collect(),
            },
        }];
        tables.push(DescribeTable {
            replaces: "rules",
            title: "Rules",
            listing: Listing {
                headers: vec!["DIRECTION", "RULE", "ALLOWED"],
                rows: self
                    .status
                    .rules
                    .iter()
                    .map(|rule| {
                        vec![
                            rule.direction.clone(),
                            rule.index.to_string(),
                            rule.allowed.to_string(),
                        ]
                    })
                    .collect(),
            },
        });
        tables
    }
}

#[cfg(test)]
mod tests {
    use crate::control::ApiError;
    use crate::control::resource::{Resource, parse_documents};

    #[test]
    fn both_forms_parse_and_keep_their_namespace() {
        let docs = parse_documents(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n---\n\
             apiVersion: vswitch/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: seed}\nspec: {network: blue}\n",
        )
        .expect("parses");
        let Resource::NetworkPolicy(k8s) = &docs[0].resource else {
            panic!("{docs:?}");
        };
        assert_eq!(k8s.metadata.key(), "shop/deny");
        let Resource::NetworkPolicy(seed) = &docs[1].resource else {
            panic!("{docs:?}");
        };
        assert_eq!(seed.metadata.namespace(), "default");
        // Shown as written, with the namespace filled in.
        let json = docs[0].resource.to_json().expect("json");
        assert_eq!(json["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(json["metadata"]["namespace"], "shop");
        assert_eq!(json["spec"]["podSelector"], serde_json::json!({}));
    }

    #[test]
    fn an_unknown_field_names_its_path() {
        let err = parse_documents(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {ingress: [{form: []}]}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("spec.ingress[0]"), "{err}");
        assert!(err.to_string().contains("form"), "{err}");
        let _: &ApiError = &err;
    }
}
