//! Label selectors, as Kubernetes has them (`metav1.LabelSelector`): `matchLabels` and
//! `matchExpressions`, all ANDed. NetworkPolicy picks the interfaces it applies to and the
//! peers it allows with them.
//!
//! Semantics (`k8s.io/apimachinery/pkg/apis/meta/v1.LabelSelectorAsSelector` and
//! `k8s.io/apimachinery/pkg/labels`):
//! - `matchLabels: {k: v}` is `{key: k, operator: In, values: [v]}`;
//! - `In` / `NotIn` need at least one value; `Exists` / `DoesNotExist` take none;
//! - `NotIn` and `DoesNotExist` match an object that lacks the key;
//! - an empty selector (`{}`) matches everything. What a *missing* selector means is the
//!   caller's to define (a NetworkPolicy peer without `podSelector` means "every pod").
//!
//! The operator is kept as written: an unknown one (`Like`) is not a parse error but a
//! validation problem with its field path, so that one answer lists every problem. A
//! selector with an unknown operator matches nothing; validation refuses it before any
//! policy is compiled.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::validation::{FieldPath, ValidationErrors, check_label_key, check_label_value};

/// Labels of an object: key → value.
pub type Labels = BTreeMap<String, String>;

/// A label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    /// Further requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement on a label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// How the key and values are tested.
    pub operator: SelectorOperator,
    /// The values (`In`, `NotIn`); none for `Exists`, `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A requirement's operator, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SelectorOperator {
    /// The label is one of the values.
    In,
    /// The label is absent or none of the values.
    NotIn,
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// Anything else, kept so that validation can name it; matches nothing.
    Unknown(String),
}

impl From<String> for SelectorOperator {
    fn from(text: String) -> SelectorOperator {
        match text.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            _ => SelectorOperator::Unknown(text),
        }
    }
}

impl From<SelectorOperator> for String {
    fn from(operator: SelectorOperator) -> String {
        operator.as_str().to_owned()
    }
}

impl SelectorOperator {
    /// The operator as written.
    pub fn as_str(&self) -> &str {
        match self {
            SelectorOperator::In => "In",
            SelectorOperator::NotIn => "NotIn",
            SelectorOperator::Exists => "Exists",
            SelectorOperator::DoesNotExist => "DoesNotExist",
            SelectorOperator::Unknown(text) => text,
        }
    }
}

impl LabelSelector {
    /// The empty selector: matches everything.
    pub fn everything() -> LabelSelector {
        LabelSelector::default()
    }

    /// A selector of exact labels (`matchLabels`).
    pub fn with_labels<K: Into<String>, V: Into<String>>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// True when `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }

    /// True when the selector has no requirement (it matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Records every problem of the selector below `path`, in the order Kubernetes'
    /// `ValidateLabelSelector` reports them: `matchLabels` keys and values, then each
    /// expression's key, operator and values.
    pub fn validate(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        let labels_path = path.child("matchLabels");
        for (key, value) in &self.match_labels {
            if let Err(why) = check_label_key(key) {
                errors.push(&labels_path.key(key), why);
            }
            if let Err(why) = check_label_value(value) {
                errors.push(&labels_path.key(key), why);
            }
        }
        for (index, requirement) in self.match_expressions.iter().enumerate() {
            let at = path.child("matchExpressions").index(index);
            if let Err(why) = check_label_key(&requirement.key) {
                errors.push(&at.child("key"), why);
            }
            match &requirement.operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    if requirement.values.is_empty() {
                        errors.push(
                            &at.child("values"),
                            format!(
                                "operator {} needs at least one value",
                                requirement.operator.as_str()
                            ),
                        );
                    }
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist => {
                    if !requirement.values.is_empty() {
                        errors.push(
                            &at.child("values"),
                            format!(
                                "operator {} takes no values; remove them",
                                requirement.operator.as_str()
                            ),
                        );
                    }
                }
                SelectorOperator::Unknown(text) => errors.push(
                    &at.child("operator"),
                    format!(
                        "unsupported value {text:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                    ),
                ),
            }
            for (value_index, value) in requirement.values.iter().enumerate() {
                if let Err(why) = check_label_value(value) {
                    errors.push(&at.child("values").index(value_index), why);
                }
            }
        }
    }
}

impl LabelSelectorRequirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
            SelectorOperator::Unknown(_) => false,
        }
    }
}

/// Kubernetes' selector string (`labels.Selector.String`): `app=web,tier in (a,b),!debug`;
/// the empty selector prints as `(all)`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(all)");
        }
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            if first {
                first = false;
                Ok(())
            } else {
                f.write_str(",")
            }
        };
        for (key, value) in &self.match_labels {
            sep(f)?;
            write!(f, "{key}={value}")?;
        }
        for requirement in &self.match_expressions {
            sep(f)?;
            let values = requirement.values.join(",");
            match &requirement.operator {
                SelectorOperator::In => write!(f, "{} in ({values})", requirement.key)?,
                SelectorOperator::NotIn => write!(f, "{} notin ({values})", requirement.key)?,
                SelectorOperator::Exists => write!(f, "{}", requirement.key)?,
                SelectorOperator::DoesNotExist => write!(f, "!{}", requirement.key)?,
                SelectorOperator::Unknown(op) => {
                    write!(f, "{} {op}? ({values})", requirement.key)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn selector(yaml: &str) -> LabelSelector {
        serde_norway::from_str(yaml).expect("selector")
    }

    #[test]
    fn kubernetes_semantics() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let none = labels(&[]);
        let s = selector("matchLabels: {app: web}");
        assert!(s.matches(&web) && !s.matches(&db) && !s.matches(&none));
        let s = selector("matchExpressions: [{key: tier, operator: NotIn, values: [back]}]");
        assert!(
            s.matches(&web) && s.matches(&db) && s.matches(&none),
            "NotIn matches absent keys"
        );
        let s = selector("matchExpressions: [{key: tier, operator: Exists}]");
        assert!(s.matches(&web) && !s.matches(&db));
        let s = selector("matchExpressions: [{key: tier, operator: DoesNotExist}]");
        assert!(!s.matches(&web) && s.matches(&db) && s.matches(&none));
        let s = selector(
            "matchLabels: {app: web}\nmatchExpressions: [{key: tier, operator: In, values: [front, mid]}]",
        );
        assert!(s.matches(&web) && !s.matches(&db), "requirements are ANDed");
        assert!(selector("{}").matches(&none), "{{}} matches everything");
        let s = selector("matchExpressions: [{key: tier, operator: Like, values: [x]}]");
        assert!(!s.matches(&web), "an unknown operator matches nothing");
    }

    #[test]
    fn problems_name_each_field() {
        let s = selector(
            "matchLabels: {'-bad': ok}\nmatchExpressions:\n- {key: a, operator: In}\n- {key: b, operator: Exists, values: [x]}\n- {key: 'example.com/c', operator: In, values: ['not ok']}\n- {key: d, operator: Like, values: [x]}",
        );
        let mut errors = ValidationErrors::new();
        s.validate(&FieldPath::new("spec").child("podSelector"), &mut errors);
        assert_eq!(
            errors.paths(),
            [
                "spec.podSelector.matchLabels[-bad]",
                "spec.podSelector.matchExpressions[0].values",
                "spec.podSelector.matchExpressions[1].values",
                "spec.podSelector.matchExpressions[2].values[0]",
                "spec.podSelector.matchExpressions[3].operator",
            ],
            "{errors}"
        );
        assert!(errors.0[4].message.contains("\"Like\""), "{errors}");
    }

    #[test]
    fn round_trips_as_written_and_prints_like_kubectl() {
        let text = "matchLabels:\n  app: web\nmatchExpressions:\n- key: tier\n  operator: NotIn\n  values:\n  - back\n- key: debug\n  operator: DoesNotExist\n";
        let s = selector(text);
        assert_eq!(serde_norway::to_string(&s).expect("yaml"), text);
        assert_eq!(s.to_string(), "app=web,tier notin (back),!debug");
        assert_eq!(LabelSelector::everything().to_string(), "(all)");
        let unknown: Result<LabelSelector, _> = serde_norway::from_str("matchLabelz: {}");
        assert!(unknown.is_err(), "unknown fields are refused");
    }
}
