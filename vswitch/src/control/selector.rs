//! Label selectors, as Kubernetes has them (`metav1.LabelSelector`): `matchLabels` and
//! `matchExpressions`, ANDed. A LoadBalancer picks its backends with one; NetworkPolicy picks
//! pods and peers with them.
//!
//! Semantics (`k8s.io/apimachinery/pkg/labels`):
//! - `matchLabels: {k: v}` is `{key: k, operator: In, values: [v]}`;
//! - `In` / `NotIn` need at least one value; `Exists` / `DoesNotExist` take none;
//! - `NotIn` and `DoesNotExist` match an object without the key;
//! - an empty selector (`{}`) matches everything. A missing selector is the caller's to
//!   define (a LoadBalancer without one selects nothing, as a Service without a selector).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One requirement on a label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// How the key and values are tested.
    pub operator: Operator,
    /// The values (`In`, `NotIn`); empty for `Exists`, `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A requirement's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The label is one of the values.
    In,
    /// The label is absent or none of the values.
    NotIn,
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// True when `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
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

    /// Every problem of the selector, as (field path below the selector, message), in the
    /// order Kubernetes reports them: keys and values of `matchLabels`, then each
    /// expression's key, operator and values.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (key, value) in &self.match_labels {
            if let Err(why) = check_key(key) {
                problems.push((format!("matchLabels.{key}"), why));
            }
            if let Err(why) = check_value(value) {
                problems.push((format!("matchLabels.{key}"), why));
            }
        }
        for (index, requirement) in self.match_expressions.iter().enumerate() {
            let at = format!("matchExpressions[{index}]");
            if let Err(why) = check_key(&requirement.key) {
                problems.push((format!("{at}.key"), why));
            }
            match requirement.operator {
                Operator::In | Operator::NotIn if requirement.values.is_empty() => {
                    problems.push((
                        format!("{at}.values"),
                        format!(
                            "operator {:?} needs at least one value",
                            requirement.operator
                        ),
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !requirement.values.is_empty() => {
                    problems.push((
                        format!("{at}.values"),
                        format!(
                            "operator {:?} takes no values; remove them",
                            requirement.operator
                        ),
                    ));
                }
                _ => {}
            }
            for (value_index, value) in requirement.values.iter().enumerate() {
                if let Err(why) = check_value(value) {
                    problems.push((format!("{at}.values[{value_index}]"), why));
                }
            }
        }
        problems
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of 1 to 63
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "label key {key:?}: the prefix before '/' must be a DNS subdomain (lowercase letters, digits, '-' and '.')"
            ));
        }
    }
    if name.is_empty() {
        return Err(format!("label key {key:?}: the name part is empty"));
    }
    check_name_part(name).map_err(|why| format!("label key {key:?}: {why}"))
}

/// A label value: empty, or 1 to 63 alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name_part(value).map_err(|why| format!("label value {value:?}: {why}"))
}

fn check_name_part(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    if bytes.len() > 63 {
        return Err("longer than 63 characters".into());
    }
    let edge_ok = |b: u8| b.is_ascii_alphanumeric();
    if !bytes.first().copied().is_some_and(edge_ok) || !bytes.last().copied().is_some_and(edge_ok) {
        return Err("must start and end with a letter or digit".into());
    }
    if let Some(bad) = bytes
        .iter()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
    {
        return Err(format!(
            "{:?} is not allowed (letters, digits, '-', '_' and '.')",
            char::from(*bad)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
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
        assert!(
            selector("{}").matches(&none),
            "an empty selector matches everything"
        );
    }

    #[test]
    fn problems_name_each_field() {
        let s = selector(
            "matchLabels: {'-bad': ok}\nmatchExpressions:\n- {key: a, operator: In}\n- {key: b, operator: Exists, values: [x]}\n- {key: 'example.com/c', operator: In, values: ['not ok']}",
        );
        let problems = s.problems();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "matchLabels.-bad",
                "matchExpressions[0].values",
                "matchExpressions[1].values",
                "matchExpressions[2].values[0]"
            ],
            "{problems:?}"
        );
        assert!(
            selector("matchLabels: {'example.com/app': web}")
                .problems()
                .is_empty()
        );
        let unknown: Result<LabelSelector, _> =
            serde_norway::from_str("matchExpressions: [{key: a, operator: Like}]");
        assert!(unknown.is_err(), "unknown operators are refused");
    }
}
