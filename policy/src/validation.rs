//! Validation results: every problem of a resource, each with the field path it is at.
//!
//! As Kubernetes' `field.ErrorList` (`k8s.io/apimachinery/pkg/util/validation/field`):
//! validation walks the whole resource, builds the path while walking
//! (`spec.ingress[0].from[1].ipBlock.except[0]`), and collects every problem instead of
//! stopping at the first, so one answer tells the user everything to fix. A resource with
//! any problem is refused whole.
//!
//! The syntax checks of names Kubernetes uses (label keys and values, DNS labels and
//! subdomains, port names) live here too, each citing the apimachinery function it follows.

use std::fmt;

/// A field path: `spec.ingress[0].from[1].ipBlock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// A root path (`spec`, `metadata`).
    pub fn new(root: &str) -> FieldPath {
        FieldPath(root.to_owned())
    }

    /// The path of a field below this one.
    #[must_use]
    pub fn child(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_owned())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// The path of a list element.
    #[must_use]
    pub fn index(&self, index: usize) -> FieldPath {
        FieldPath(format!("{}[{index}]", self.0))
    }

    /// The path of a map entry (`matchLabels[app]`), as Kubernetes' `Path.Key`.
    #[must_use]
    pub fn key(&self, key: &str) -> FieldPath {
        FieldPath(format!("{}[{key}]", self.0))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One problem: where it is and what is wrong (with the offending value and the valid form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.ingress[0].from[1].ipBlock.except[0]`.
    pub path: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem of a refused resource, in the order validation found them (the order of
/// the fields in the resource).
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// No problems yet.
    pub fn new() -> ValidationErrors {
        ValidationErrors(Vec::new())
    }

    /// Records a problem at `path`.
    pub fn push(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.as_str().to_owned(),
            message: message.into(),
        });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The paths of the problems, in order (handy in tests and for a short summary).
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|error| error.path.as_str()).collect()
    }

    /// `Ok(())` when nothing was recorded, else the problems.
    ///
    /// # Errors
    /// Every recorded problem, when there is at least one.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.len() {
            0 => f.write_str("no problems"),
            1 => write!(f, "{}", self.0[0]),
            n => {
                write!(f, "{n} problems:")?;
                for error in &self.0 {
                    write!(f, "\n  {error}")?;
                }
                Ok(())
            }
        }
    }
}

/// A label key (`IsQualifiedName`): an optional DNS-subdomain prefix and `/`, then a name
/// of 1 to 63 characters (letters, digits, `-`, `_`, `.`), starting and ending with a
/// letter or digit.
pub(crate) fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(format!("label key {key:?}: the prefix before '/' is empty"));
        }
        check_dns_subdomain(prefix).map_err(|why| format!("label key {key:?}: prefix: {why}"))?;
    }
    if name.is_empty() {
        return Err(format!("label key {key:?}: the name part is empty"));
    }
    check_label_name(name).map_err(|why| format!("label key {key:?}: {why}"))
}

/// A label value (`IsValidLabelValue`): empty, or 1 to 63 characters (letters, digits, `-`,
/// `_`, `.`), starting and ending with a letter or digit.
pub(crate) fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_name(value).map_err(|why| format!("label value {value:?}: {why}"))
}

fn check_label_name(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    if bytes.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
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

/// A DNS label (RFC 1123, `IsDNS1123Label`): 1 to 63 lowercase letters, digits and `-`,
/// starting and ending with a letter or digit. Namespaces and Networks are named so.
pub(crate) fn check_dns_label(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.len() > 63 {
        return Err(format!("{text:?} is longer than 63 characters"));
    }
    let ok_edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = text.as_bytes();
    if !bytes.first().is_some_and(ok_edge) || !bytes.last().is_some_and(ok_edge) {
        return Err(format!(
            "{text:?} must start and end with a lowercase letter or digit"
        ));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(format!(
            "{text:?} may hold only lowercase letters, digits and '-'"
        ));
    }
    Ok(())
}

/// A DNS subdomain (RFC 1123, `IsDNS1123Subdomain`): at most 253 characters, dot-separated
/// DNS labels. NetworkPolicy names are DNS subdomains.
pub(crate) fn check_dns_subdomain(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.len() > 253 {
        return Err(format!("{text:?} is longer than 253 characters"));
    }
    for label in text.split('.') {
        check_dns_label(label).map_err(|_| {
            format!(
                "{text:?} must be lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit"
            )
        })?;
    }
    Ok(())
}

/// A port name (`IsValidPortName`, an IANA service name per RFC 6335): 1 to 15 lowercase
/// letters, digits and `-`, with at least one letter, not starting or ending with `-`, and
/// no `--`.
pub fn check_port_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("port name {name:?} must be 1 to 15 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "port name {name:?} may hold only lowercase letters, digits and '-'"
        ));
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "port name {name:?} must contain at least one letter (a number is written unquoted)"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(format!(
            "port name {name:?} must not start or end with '-' nor contain \"--\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_built_while_walking() {
        let path = FieldPath::new("spec")
            .child("ingress")
            .index(0)
            .child("from")
            .index(1)
            .child("ipBlock")
            .child("except")
            .index(0);
        assert_eq!(path.as_str(), "spec.ingress[0].from[1].ipBlock.except[0]");
        assert_eq!(
            FieldPath::new("spec")
                .child("podSelector")
                .child("matchLabels")
                .key("app")
                .as_str(),
            "spec.podSelector.matchLabels[app]"
        );
    }

    #[test]
    fn errors_display_every_problem() {
        let mut errors = ValidationErrors::new();
        assert!(errors.clone().into_result().is_ok());
        errors.push(&FieldPath::new("spec").child("a"), "bad a");
        assert_eq!(errors.to_string(), "spec.a: bad a");
        errors.push(&FieldPath::new("spec").child("b"), "bad b");
        assert_eq!(
            errors.to_string(),
            "2 problems:\n  spec.a: bad a\n  spec.b: bad b"
        );
        assert_eq!(errors.paths(), ["spec.a", "spec.b"]);
    }

    #[test]
    fn label_syntax() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("kubernetes.io/metadata.name").is_ok());
        assert!(check_label_key("-app").is_err());
        assert!(
            check_label_key("Example.com/app").is_err(),
            "prefix is lowercase"
        );
        assert!(check_label_key("/app").is_err());
        assert!(check_label_key("example.com/").is_err());
        assert!(check_label_key(&"a".repeat(64)).is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("Web_1.x").is_ok());
        assert!(check_label_value("not ok").is_err());
    }

    #[test]
    fn dns_names() {
        assert!(check_dns_label("x").is_ok());
        assert!(check_dns_label("kube-system").is_ok());
        assert!(check_dns_label("Kube").is_err());
        assert!(check_dns_label("a.b").is_err());
        assert!(check_dns_label("").is_err());
        assert!(check_dns_subdomain("allow.from-web").is_ok());
        assert!(check_dns_subdomain("a..b").is_err());
    }

    #[test]
    fn port_names_follow_iana() {
        assert!(check_port_name("serve-80-tcp").is_ok());
        assert!(check_port_name("http").is_ok());
        assert!(check_port_name("80").is_err(), "no letter");
        assert!(check_port_name("a--b").is_err());
        assert!(check_port_name("-http").is_err());
        assert!(check_port_name("HTTP").is_err());
        assert!(
            check_port_name("abcdefghijklmnop").is_err(),
            "16 characters"
        );
    }
}
