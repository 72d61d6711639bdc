//! The resource model: `apiVersion`, `kind`, `metadata`, `spec`, `status`, and the parser that
//! turns one text (YAML or JSON, one or several documents) into typed resources.
//!
//! Parsing is the syntactic half of validation: every field is typed, unknown fields are
//! refused, and values that can be judged on their own (names, CIDRs, addresses, MACs, MTUs)
//! are checked here, so that an error names the document, the resource and the field path:
//!
//! ```text
//! document 2 (Subnet "web"): spec.cidr: invalid CIDR "10.0.0.0/33": the prefix length must be 0..=32
//! ```
//!
//! Checks that need other resources (references, overlaps, addresses in use) are each kind's
//! [`ResourceKind::check`], in its module under [`kinds`](super::kinds), run over the whole
//! batch by [`validate`](super::validate).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::ApiError;
pub use super::kinds::load_balancer::*;
pub use super::kinds::load_balancer_routing::*;
pub use super::kinds::nat_gateway::*;
pub use super::kinds::network::*;
pub use super::kinds::network_interface::*;
pub use super::kinds::overlay::*;
pub use super::kinds::port_forward::*;
pub use super::kinds::route::*;
pub use super::kinds::subnet::*;
pub use super::kinds::uplink::*;
pub use super::kinds::virtual_ip::*;
pub use super::kinds::{Kind, KindVisitor, Resource, ResourceKind, Stored, UnknownKind};
use crate::sys::netns::NetnsRef;

/// The only `apiVersion` this daemon serves.
pub const API_VERSION: &str = "vswitch/v1alpha1";

/// Default MTU of a Subnet.
pub const DEFAULT_MTU: u16 = 1500;

/// Smallest MTU accepted (RFC 791: every IPv4 host must handle 68-byte datagrams).
pub const MIN_MTU: u16 = 68;

/// Default MAC ageing of a Subnet, in seconds (as the Linux bridge).
pub const DEFAULT_MAC_AGEING_SECONDS: u64 = 300;

/// Default learned-MAC limit of a Subnet.
pub const DEFAULT_MAC_TABLE_LIMIT: usize = 8192;

/// The largest learned-MAC limit a Subnet may ask for.
pub const MAX_MAC_TABLE_LIMIT: usize = 1 << 20;

/// The longest MAC ageing a Subnet may ask for: one week.
pub const MAX_MAC_AGEING_SECONDS: u64 = 7 * 24 * 3600;

/// Longest interface name: IFNAMSIZ (16) minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// Where a resource came from, so that an error can name it: the document (0-based) in an
/// `apply`, the kind and the name when they are known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file the input came from (a boot config), when it came from one.
    pub source: Option<std::sync::Arc<str>>,
    /// Index of the document in the input (0-based; messages show it 1-based).
    pub document: Option<usize>,
    /// The kind, once known.
    pub kind: Option<Kind>,
    /// The name, once known.
    pub name: Option<String>,
}

impl Origin {
    /// The origin of an existing resource (not from an input document).
    pub fn resource(kind: Kind, name: &str) -> Origin {
        Origin {
            source: None,
            document: None,
            kind: Some(kind),
            name: Some(name.to_string()),
        }
    }

    /// `document 2 (Subnet "web")`, `Subnet "web"`, `document 2`, or nothing.
    fn describe(&self) -> String {
        let what = match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => Some(format!("{kind} {name:?}")),
            (Some(kind), None) => Some(kind.to_string()),
            (None, Some(name)) => Some(format!("{name:?}")),
            (None, None) => None,
        };
        let described = match (self.document, what) {
            (Some(index), Some(what)) => format!("document {} ({what})", index + 1),
            (Some(index), None) => format!("document {}", index + 1),
            (None, Some(what)) => what,
            (None, None) => String::new(),
        };
        match &self.source {
            Some(source) if described.is_empty() => source.to_string(),
            Some(source) => format!("{source}: {described}"),
            None => described,
        }
    }

    /// The field path as the API reports it: `documents[1].spec.cidr` (or `spec.cidr`).
    fn field_path(&self, field: &str) -> Option<String> {
        match (self.document, field.is_empty()) {
            (Some(index), true) => Some(format!("documents[{index}]")),
            (Some(index), false) => Some(format!("documents[{index}].{field}")),
            (None, true) => None,
            (None, false) => Some(field.to_string()),
        }
    }

    /// `document 2 (Subnet "web"): spec.cidr: MESSAGE`.
    fn message(&self, field: &str, message: &dyn fmt::Display) -> String {
        let mut out = self.describe();
        if !field.is_empty() {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(field);
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&message.to_string());
        out
    }

    /// A 400 error about `field` (a path inside the resource, e.g. `spec.cidr`; empty for
    /// the whole document).
    pub fn invalid(&self, field: &str, message: impl fmt::Display) -> ApiError {
        ApiError::Invalid {
            message: self.message(field, &message),
            field: self.field_path(field),
        }
    }

    /// A 500 error: the request was valid but the system refused it.
    pub fn internal(&self, message: impl fmt::Display) -> ApiError {
        ApiError::Internal {
            message: self.message("", &message),
        }
    }

    /// A 409 error about `field`: the value conflicts with existing state.
    pub fn conflict(&self, field: &str, message: impl fmt::Display) -> ApiError {
        ApiError::Conflict {
            message: self.message(field, &message),
            field: self.field_path(field),
        }
    }
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff` (`-` separators and upper case are accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// True for a group (multicast or broadcast) address: the I/G bit of the first octet.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for 00:00:00:00:00:00.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    /// A random locally administered unicast address (first octet `x2`, `x6`, `xa` or `xe`),
    /// as the kernel's `eth_random_addr`. The bits come from std's per-process random hash
    /// keys mixed with `salt` and the clock, which is plenty for avoiding collisions (the
    /// controller also refuses a duplicate within a subnet).
    pub fn random(salt: &str) -> MacAddr {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write(salt.as_bytes());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        hasher.write_u128(nanos);
        let bits = hasher.finish().to_be_bytes();
        let mut mac = [bits[0], bits[1], bits[2], bits[3], bits[4], bits[5]];
        mac[0] = (mac[0] & 0xfe) | 0x02;
        MacAddr(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A MAC address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: write six hex octets separated by ':', e.g. 02:00:00:00:00:01")]
pub struct MacAddrError(pub String);

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacAddrError(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for octet in &mut mac {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// One requested address of a NetworkInterface: `A.B.C.D` or `A.B.C.D/N` (N must then be the
/// subnet's prefix length).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRequest {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, when written.
    pub prefix_len: Option<u8>,
}

impl fmt::Display for IpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len {
            Some(len) => write!(f, "{}/{len}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// An address request that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {0:?}: write A.B.C.D or A.B.C.D/N, e.g. 172.30.0.10 or 172.30.0.10/16")]
pub struct IpRequestError(pub String);

impl FromStr for IpRequest {
    type Err = IpRequestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpRequestError(s.to_string());
        let (addr, prefix_len) = match s.split_once('/') {
            Some((addr, len)) => {
                let len: u8 = len.parse().map_err(|_| err())?;
                if len > 32 {
                    return Err(err());
                }
                (addr, Some(len))
            }
            None => (s, None),
        };
        let addr = addr.parse().map_err(|_| err())?;
        Ok(IpRequest { addr, prefix_len })
    }
}

impl Serialize for IpRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// Name, namespace and labels of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// DNS-label-like: 1..=63 lowercase letters, digits and '-', starting and ending with a
    /// letter or digit.
    #[serde(deserialize_with = "de_name")]
    pub name: String,
    /// The namespace of a namespaced kind (NetworkInterface, LoadBalancer, NetworkPolicy):
    /// `default` when absent. Names are unique per kind and namespace. Cluster-wide kinds
    /// have none.
    #[serde(
        default,
        deserialize_with = "de_opt_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
    /// Free-form labels (selectors use them).
    #[serde(default, deserialize_with = "de_labels")]
    pub labels: BTreeMap<String, String>,
}

/// The namespace of namespaced resources that name none (Kubernetes' `default`).
pub const DEFAULT_NAMESPACE: &str = "default";

impl Metadata {
    /// Metadata with a name only (a cluster-wide resource, or one in `default`).
    pub fn named(name: impl Into<String>) -> Metadata {
        Metadata {
            name: name.into(),
            ..Metadata::default()
        }
    }

    /// The namespace: `default` when none is set.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The resource's key in its kind's table: its name in the `default` namespace (and
    /// for cluster-wide kinds), `namespace/name` in any other. References between
    /// resources (a PortForward's target interface, say) use this key.
    pub fn key(&self) -> String {
        object_key(self.namespace(), &self.name)
    }
}

/// The table key of `name` in `namespace` (see [`Metadata::key`]).
pub fn object_key(namespace: &str, name: &str) -> String {
    if namespace == DEFAULT_NAMESPACE {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// A table key split into namespace and name (see [`Metadata::key`]).
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((DEFAULT_NAMESPACE, key))
}

/// The label key on resources generated by the switch itself (the Overlay's Network,
/// Subnets, Route and host interface); users cannot change or delete them.
pub const OWNER_LABEL: &str = "vswitch/owner";

/// One parsed document of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Where it came from (document index, kind, name).
    pub origin: Origin,
    /// The typed resource; its status is whatever the input said (callers ignore it).
    pub resource: Resource,
}

/// Parses one text holding YAML or JSON: `---`-separated YAML documents, a JSON array of
/// objects, or a single object. Empty YAML documents are skipped.
///
/// # Errors
/// [`ApiError::Invalid`] for the first document that is malformed, of an unknown kind or
/// apiVersion, or has an unknown or invalid field; the message names the document (1-based),
/// kind and name when known, and the field path.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, ApiError> {
    parse_documents_from(None, text)
}

/// [`parse_documents`] of a text read from `source` (a file of a boot config): every
/// message, here and in validation, starts with the file's name.
///
/// # Errors
/// As [`parse_documents`].
pub fn parse_documents_from(
    source: Option<std::sync::Arc<str>>,
    text: &str,
) -> Result<Vec<Document>, ApiError> {
    let Some(source) = source else {
        return parse_documents_inner(text);
    };
    let mut documents = parse_documents_inner(text).map_err(|e| e.within(&source))?;
    for document in &mut documents {
        document.origin.source = Some(std::sync::Arc::clone(&source));
    }
    Ok(documents)
}

fn parse_documents_inner(text: &str) -> Result<Vec<Document>, ApiError> {
    let values = split_documents(text)?;
    if values.is_empty() {
        return Err(ApiError::Invalid {
            message: "the input holds no resources; write YAML or JSON documents with \
                      apiVersion, kind, metadata and spec"
                .into(),
            field: None,
        });
    }
    // Every malformed document is reported, not only the first.
    let mut documents = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        match parse_value(Some(index), None, value) {
            Ok(document) => documents.push(document),
            Err(error) => errors.push(error),
        }
    }
    match ApiError::aggregate(errors) {
        None => Ok(documents),
        Some(error) => Err(error),
    }
}

/// Parses the body of a create request: exactly one resource, whose kind must be `kind`
/// (`apiVersion` and `kind` may be omitted from the body).
///
/// # Errors
/// [`ApiError::Invalid`] as for [`parse_documents`], and when the body is not exactly one
/// resource of `kind`.
pub fn parse_one(kind: Kind, text: &str) -> Result<Resource, ApiError> {
    let mut values = split_documents(text)?;
    if values.len() != 1 {
        return Err(ApiError::Invalid {
            message: format!(
                "expected one {kind} in the request body, found {} documents",
                values.len()
            ),
            field: None,
        });
    }
    let value = values.remove(0);
    Ok(parse_value(None, Some(kind), value)?.resource)
}

/// Splits the input into one JSON value per document.
fn split_documents(text: &str) -> Result<Vec<Value>, ApiError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => return Ok(items),
            Ok(value) => return Ok(vec![value]),
            Err(json_err) => {
                // A YAML flow collection also starts with `{` or `[`; only if it is not YAML
                // either is the JSON error the one to show.
                if let Ok(values) = split_yaml(text) {
                    return Ok(values);
                }
                return Err(ApiError::Invalid {
                    message: format!("invalid JSON: {json_err}"),
                    field: None,
                });
            }
        }
    }
    split_yaml(text)
}

fn split_yaml(text: &str) -> Result<Vec<Value>, ApiError> {
    let mut values = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => values.push(value),
            Err(err) => {
                // The iterator repeats a syntax error forever: stop at the first.
                return Err(Origin {
                    document: Some(index),
                    ..Origin::default()
                }
                .invalid("", format!("invalid YAML: {err}")));
            }
        }
    }
    Ok(values)
}

/// Checks `apiVersion` and `kind`, then deserialises the typed resource.
fn parse_value(
    document: Option<usize>,
    expected: Option<Kind>,
    mut value: Value,
) -> Result<Document, ApiError> {
    let mut origin = Origin {
        document,
        ..Origin::default()
    };
    let Value::Object(object) = &mut value else {
        return Err(origin.invalid(
            "",
            format!(
                "expected a resource (a mapping with apiVersion, kind, metadata, spec), found {}",
                json_type(&value)
            ),
        ));
    };
    origin.name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(|name| {
            let namespace = object
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_NAMESPACE);
            object_key(namespace, name)
        });

    let kind = match object.get("kind") {
        Some(Value::String(text)) => {
            Kind::parse(text).map_err(|err| origin.invalid("kind", err))?
        }
        Some(other) => {
            return Err(origin.invalid(
                "kind",
                format!(
                    "expected a string ({}), found {}",
                    Kind::names().join(", "),
                    json_type(other)
                ),
            ));
        }
        None => match expected {
            Some(kind) => kind,
            None => {
                return Err(origin.invalid(
                    "kind",
                    format!("missing; write kind: {}", Kind::names().join(", ")),
                ));
            }
        },
    };
    origin.kind = Some(kind);
    if let Some(expected) = expected.filter(|expected| *expected != kind) {
        return Err(origin.invalid(
            "kind",
            format!("this request creates a {expected}, but the body is a {kind}"),
        ));
    }
    object.insert("kind".into(), Value::String(kind.as_str().into()));

    let versions = kind.api_versions();
    let served = versions.join(" or ");
    match object.get("apiVersion") {
        Some(Value::String(version)) if versions.contains(&version.as_str()) => {}
        Some(Value::String(version)) => {
            return Err(origin.invalid(
                "apiVersion",
                format!(
                    "unsupported apiVersion {version:?} for {kind}; this daemon serves {served}"
                ),
            ));
        }
        Some(other) => {
            return Err(origin.invalid(
                "apiVersion",
                format!("expected the string {served}, found {}", json_type(other)),
            ));
        }
        None if expected.is_some() => {
            object.insert("apiVersion".into(), Value::String(versions[0].into()));
        }
        None => {
            return Err(origin.invalid(
                "apiVersion",
                format!("missing; write apiVersion: {}", versions[0]),
            ));
        }
    }

    // `spec:` or `status:` with nothing after it is YAML null: treat it as absent.
    for key in ["spec", "status"] {
        if object.get(key).is_some_and(Value::is_null) {
            object.remove(key);
        }
    }
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        if metadata.get("labels").is_some_and(Value::is_null) {
            metadata.remove("labels");
        }
    }

    struct Typed<'a>(&'a Origin, Value);
    impl KindVisitor for Typed<'_> {
        type Output = Result<Resource, ApiError>;
        fn visit<K: ResourceKind>(self) -> Self::Output {
            let mut value = self.1;
            if let Value::Object(document) = &mut value {
                let namespace = document
                    .get("metadata")
                    .and_then(|m| m.get("namespace"))
                    .filter(|n| !n.is_null());
                match (K::NAMESPACED, namespace) {
                    (true, None) => {
                        if let Some(Value::Object(metadata)) = document.get_mut("metadata") {
                            metadata.insert(
                                "namespace".into(),
                                Value::String(DEFAULT_NAMESPACE.into()),
                            );
                        }
                    }
                    (false, Some(_)) => {
                        return Err(self.0.invalid(
                            "metadata.namespace",
                            format!(
                                "{} is cluster-wide, not namespaced; remove metadata.namespace",
                                K::KIND
                            ),
                        ));
                    }
                    _ => {}
                }
                K::apply_defaults(document);
            }
            Ok(typed::<K>(self.0, value)?.into_resource())
        }
    }
    let resource = kind.visit(Typed(&origin, value))?;
    Ok(Document { origin, resource })
}

fn typed<T: serde::de::DeserializeOwned>(origin: &Origin, value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { String::new() } else { path };
        origin.invalid(&field, err.into_inner())
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Checks a resource name: 1..=63 lowercase letters, digits and '-', starting and ending
/// with a letter or digit (an RFC 1123 DNS label).
///
/// # Errors
/// A message naming the value and the valid form.
pub fn check_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let valid_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(valid_char)
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1-63 lowercase letters, digits and '-', starting and \
             ending with a letter or digit (e.g. web-1)"
        ))
    }
}

/// Checks an interface name as the kernel's `dev_valid_name` does: 1..=15 bytes, not `.` or
/// `..`, no '/', ':' or whitespace.
///
/// # Errors
/// A message naming the value and the valid form.
pub fn check_ifname(ifname: &str) -> Result<(), String> {
    let ok = !ifname.is_empty()
        && ifname.len() <= MAX_IFNAME_LEN
        && ifname != "."
        && ifname != ".."
        && !ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid interface name {ifname:?}: use 1-{MAX_IFNAME_LEN} characters without '/', \
             ':' or whitespace (e.g. eth0)"
        ))
    }
}

/// Checks an MTU: 68..=65535.
///
/// # Errors
/// A message naming the value and the valid range.
pub fn check_mtu(mtu: u64) -> Result<u16, String> {
    u16::try_from(mtu)
        .ok()
        .filter(|m| *m >= MIN_MTU)
        .ok_or_else(|| format!("invalid MTU {mtu}: must be {MIN_MTU}..=65535"))
}

/// Parses a subnet CIDR: `A.B.C.D/N`, canonical (host bits zero), /30 or shorter.
///
/// # Errors
/// A message naming the value, what is wrong and the valid form.
pub fn parse_subnet_cidr(text: &str) -> Result<Ipv4Net, String> {
    let net = parse_cidr(text)?;
    if net.prefix_len() > 30 {
        return Err(format!(
            "invalid CIDR {text:?}: too small: a subnet needs room for its gateway and at least one interface; use /30 or shorter"
        ));
    }
    Ok(net)
}

/// Parses a route destination: `A.B.C.D/N`, canonical (host bits zero), /0 to /32.
///
/// # Errors
/// A message naming the value, what is wrong and the valid form.
pub fn parse_route_cidr(text: &str) -> Result<Ipv4Net, String> {
    parse_cidr(text)
}

/// Parses a Route's destination of either family: `A.B.C.D/N` (/0 to /32) or `X:X::/N`
/// (/0 to /128), canonical (host bits zero).
///
/// # Errors
/// A message naming the value, what is wrong and the valid form.
pub fn parse_route_prefix(text: &str) -> Result<IpNet, String> {
    if !text.contains(':') {
        return parse_cidr(text).map(IpNet::V4);
    }
    let net: Ipv6Net = text.parse().map_err(|_| {
        format!("invalid IPv6 CIDR {text:?}: write X:X::/N (N 0..=128), e.g. fd00:9::/48")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "invalid IPv6 CIDR {text:?}: host bits are set; the network is {}",
            net.trunc()
        ));
    }
    Ok(IpNet::V6(net))
}

/// `A.B.C.D/N`, N in 0..=32, host bits zero.
fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    let bad = |why: &str| format!("invalid CIDR {text:?}: {why}");
    let Some((addr, len)) = text.split_once('/') else {
        return Err(bad(
            "missing the prefix length; write A.B.C.D/N, e.g. 10.1.0.0/24",
        ));
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| {
        bad(&format!(
            "{addr:?} is not an IPv4 address; write A.B.C.D/N, e.g. 10.1.0.0/24"
        ))
    })?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| bad("the prefix length must be 0..=32"))?;
    let net = Ipv4Net::new(addr, len).map_err(|_| bad("the prefix length must be 0..=32"))?;
    if net.network() != addr {
        return Err(bad(&format!(
            "host bits are set; the network is {}/{len}",
            net.network()
        )));
    }
    Ok(net)
}

pub(crate) fn default_mtu() -> u16 {
    DEFAULT_MTU
}

pub(crate) fn default_mac_ageing() -> u64 {
    DEFAULT_MAC_AGEING_SECONDS
}

pub(crate) fn default_mac_limit() -> usize {
    DEFAULT_MAC_TABLE_LIMIT
}

pub(crate) fn default_subnet() -> String {
    "default".into()
}

pub(crate) fn default_ifname() -> String {
    "eth0".into()
}

pub(crate) fn de_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    check_name(&name).map_err(D::Error::custom)?;
    Ok(name)
}

pub(crate) fn de_opt_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let Some(name) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    check_name(&name).map_err(D::Error::custom)?;
    Ok(Some(name))
}

pub(crate) fn de_name_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(deserializer)?;
    for name in &names {
        check_name(name).map_err(D::Error::custom)?;
    }
    Ok(names)
}

pub(crate) fn default_ports_per_interface() -> u16 {
    DEFAULT_PORTS_PER_INTERFACE
}

pub(crate) fn de_ports_per_interface<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u16, D::Error> {
    let value = u64::deserialize(deserializer)?;
    u16::try_from(value)
        .ok()
        .filter(|v| (MIN_PORTS_PER_INTERFACE..=MAX_PORTS_PER_INTERFACE).contains(v))
        .ok_or_else(|| {
            D::Error::custom(format!(
                "invalid portsPerNetworkInterface {value}: must be \
                 {MIN_PORTS_PER_INTERFACE}..={MAX_PORTS_PER_INTERFACE} (the ports 1024-65535 of \
                 a NAT address are cut into blocks of this size; default \
                 {DEFAULT_PORTS_PER_INTERFACE})"
            ))
        })
}

pub(crate) fn de_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let value = u64::deserialize(deserializer)?;
    u16::try_from(value)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| D::Error::custom(format!("invalid port {value}: must be 1..=65535")))
}

pub(crate) fn de_uplink_addresses<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<UplinkAddress>, D::Error> {
    let addresses = Vec::<UplinkAddress>::deserialize(deserializer)?;
    if addresses.is_empty() {
        return Err(D::Error::custom(
            "no address; list at least one address the switch owns on the uplink, e.g. \
             [198.51.100.10/24]",
        ));
    }
    Ok(addresses)
}

pub(crate) fn de_labels<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let labels = BTreeMap::<String, String>::deserialize(deserializer)?;
    for (key, value) in &labels {
        let key_ok = !key.is_empty()
            && key.len() <= 253
            && !key.chars().any(|c| c.is_whitespace() || c.is_control());
        if !key_ok {
            return Err(D::Error::custom(format!(
                "invalid label key {key:?}: use 1-253 characters without whitespace (e.g. app)"
            )));
        }
        if value.len() > 63 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(D::Error::custom(format!(
                "invalid value {value:?} of label {key:?}: use at most 63 characters without whitespace"
            )));
        }
    }
    Ok(labels)
}

pub(crate) fn de_subnet_cidr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Ipv4Net, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_subnet_cidr(&text).map_err(D::Error::custom)
}

pub(crate) fn de_route_cidr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Ipv4Net, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_route_cidr(&text).map_err(D::Error::custom)
}

pub(crate) fn de_route_prefix<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<IpNet, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_route_prefix(&text).map_err(D::Error::custom)
}

/// An address of either family, whose parse error names the value.
pub(crate) fn de_ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        D::Error::custom(format!(
            "invalid IP address {text:?}: write A.B.C.D or X:X::X, e.g. 10.1.0.254 or fd00:1::fe"
        ))
    })
}

/// An address of either family whose parse error names the value.
struct IpText(IpAddr);

impl<'de> Deserialize<'de> for IpText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        de_ip(deserializer).map(IpText)
    }
}

pub(crate) fn de_opt_ip<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpAddr>, D::Error> {
    Ok(Option::<IpText>::deserialize(deserializer)?.map(|a| a.0))
}

pub(crate) fn de_ip_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpAddr>, D::Error> {
    Ok(Vec::<IpText>::deserialize(deserializer)?
        .into_iter()
        .map(|a| a.0)
        .collect())
}

pub(crate) fn de_ipv6<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ipv6Addr, D::Error> {
    Ok(Ipv6Text::deserialize(deserializer)?.0)
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpFamily {
    /// IPv4.
    IPv4,
    /// IPv6.
    IPv6,
}

impl IpFamily {
    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> IpFamily {
        if addr.is_ipv6() {
            IpFamily::IPv6
        } else {
            IpFamily::IPv4
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        })
    }
}

/// Shortest IPv6 subnet prefix a Subnet may have.
pub const MIN_SUBNET6_PREFIX: u8 = 16;

/// Longest IPv6 subnet prefix a Subnet may have (room for the gateway and interfaces).
pub const MAX_SUBNET6_PREFIX: u8 = 124;

/// Parses a Subnet's IPv6 prefix: `X::/N`, canonical (host bits zero), /16 to /124.
///
/// # Errors
/// A message naming the value, what is wrong and the valid form.
pub fn parse_subnet_cidr6(text: &str) -> Result<Ipv6Net, String> {
    let net: Ipv6Net = text
        .parse()
        .map_err(|_| format!("invalid IPv6 CIDR {text:?}: write X:X::/N, e.g. fd00:1::/64"))?;
    if net.trunc() != net {
        return Err(format!(
            "invalid IPv6 CIDR {text:?}: host bits are set; write {}",
            net.trunc()
        ));
    }
    if !(MIN_SUBNET6_PREFIX..=MAX_SUBNET6_PREFIX).contains(&net.prefix_len()) {
        return Err(format!(
            "invalid IPv6 CIDR {text:?}: the prefix must be /{MIN_SUBNET6_PREFIX} to /{MAX_SUBNET6_PREFIX} (/64 for SLAAC)"
        ));
    }
    Ok(net)
}

pub(crate) fn de_subnet_cidr6<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Ipv6Net, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_subnet_cidr6(&text).map_err(D::Error::custom)
}

/// An IPv6 address whose parse error names the value.
struct Ipv6Text(Ipv6Addr);

impl<'de> Deserialize<'de> for Ipv6Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(Ipv6Text).map_err(|_| {
            D::Error::custom(format!(
                "invalid IPv6 address {text:?}: write X:X::X, e.g. fd00:1::10"
            ))
        })
    }
}

pub(crate) fn de_opt_ipv6<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Ipv6Addr>, D::Error> {
    Ok(Option::<Ipv6Text>::deserialize(deserializer)?.map(|a| a.0))
}

pub(crate) fn de_ipv6_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Ipv6Addr>, D::Error> {
    Ok(Vec::<Ipv6Text>::deserialize(deserializer)?
        .into_iter()
        .map(|a| a.0)
        .collect())
}

/// An IPv4 address whose parse error names the value.
struct Ipv4Text(Ipv4Addr);

impl<'de> Deserialize<'de> for Ipv4Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(Ipv4Text).map_err(|_| {
            D::Error::custom(format!(
                "invalid IPv4 address {text:?}: write A.B.C.D, e.g. 172.30.0.1"
            ))
        })
    }
}

pub(crate) fn de_ipv4<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ipv4Addr, D::Error> {
    Ok(Ipv4Text::deserialize(deserializer)?.0)
}

pub(crate) fn de_opt_ipv4<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Ipv4Addr>, D::Error> {
    Ok(Option::<Ipv4Text>::deserialize(deserializer)?.map(|a| a.0))
}

pub(crate) fn de_ipv4_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Ipv4Addr>, D::Error> {
    Ok(Vec::<Ipv4Text>::deserialize(deserializer)?
        .into_iter()
        .map(|a| a.0)
        .collect())
}

pub(crate) fn de_mtu<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    check_mtu(u64::deserialize(deserializer)?).map_err(D::Error::custom)
}

pub(crate) fn de_opt_mtu<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u16>, D::Error> {
    match Option::<u64>::deserialize(deserializer)? {
        Some(mtu) => check_mtu(mtu).map(Some).map_err(D::Error::custom),
        None => Ok(None),
    }
}

pub(crate) fn de_ifname<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let ifname = String::deserialize(deserializer)?;
    check_ifname(&ifname).map_err(D::Error::custom)?;
    Ok(ifname)
}

pub(crate) fn de_netns<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NetnsRef, D::Error> {
    String::deserialize(deserializer)?
        .parse()
        .map_err(D::Error::custom)
}

pub(crate) fn de_opt_unicast_mac<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<MacAddr>, D::Error> {
    let Some(mac) = Option::<MacAddr>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if mac.is_multicast() || mac.is_zero() {
        return Err(D::Error::custom(format!(
            "MAC address {mac} is not a unicast address: the low bit of the first octet must be \
             0 and the address not all zeros (e.g. 02:00:00:00:00:01)"
        )));
    }
    Ok(Some(mac))
}

pub(crate) fn ser_display<T: fmt::Display, S: Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::PortKind;

    const GOOD: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata:
  name: blue
---
apiVersion: vswitch/v1alpha1
kind: subnets
metadata:
  name: web
  labels:
    tier: front
spec:
  network: blue
  cidr: 10.1.0.0/24
  gateway: 10.1.0.1
  rangeStart: 10.1.0.10
  rangeEnd: 10.1.0.20
  reserved: [10.1.0.15]
  macAgeingSeconds: 60
---
apiVersion: vswitch/v1alpha1
kind: NIC
metadata:
  name: c1
spec:
  subnet: web
  netns: c1
  kind: veth
  mac: 02:AA:bb:cc:dd:ee
  ips: [10.1.0.5/24, 10.1.0.6]
  mtu: 9000
";

    fn message(err: &ApiError) -> String {
        err.to_string()
    }

    #[test]
    fn kinds_parse_in_any_case_and_plural() {
        for text in ["Network", "network", "NETWORKS", "networks", "net"] {
            assert_eq!(Kind::parse(text), Ok(Kind::Network), "{text}");
        }
        for text in ["Subnet", "subnets", "SUBNET"] {
            assert_eq!(Kind::parse(text), Ok(Kind::Subnet), "{text}");
        }
        for text in ["Route", "routes", "ROUTES"] {
            assert_eq!(Kind::parse(text), Ok(Kind::Route), "{text}");
        }
        assert!(Kind::parse("routers").is_err());
        for text in [
            "NetworkInterface",
            "networkinterfaces",
            "NetworkInterfaces",
            "nic",
            "NICs",
            "interfaces",
        ] {
            assert_eq!(Kind::parse(text), Ok(Kind::NetworkInterface), "{text}");
        }
        let err = Kind::parse("router").unwrap_err().to_string();
        assert!(err.contains("\"router\""), "{err}");
        assert!(err.contains("Network, Subnet, Uplink"), "{err}");
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.plural()), Ok(kind));
            assert_eq!(Kind::parse(kind.as_str()), Ok(kind));
        }
    }

    #[test]
    fn routes_and_peerings_parse() {
        let text = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
spec:
  peerings:
  - {name: to-red, network: red}
---
apiVersion: vswitch/v1alpha1
kind: routes
metadata: {name: lab}
spec: {network: blue, destination: 0.0.0.0/0, nextHop: 10.1.0.254}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1, gatewayMac: 02-00-00-00-00-AA}
";
        let docs = parse_documents(text).unwrap();
        let Resource::Network(network) = &docs[0].resource else {
            panic!("not a network");
        };
        assert_eq!(
            network.spec.peerings,
            [Peering {
                name: "to-red".into(),
                network: "red".into()
            }]
        );
        let Resource::Route(route) = &docs[1].resource else {
            panic!("not a route");
        };
        assert_eq!(route.kind, "Route");
        assert_eq!(route.spec.destination.to_string(), "0.0.0.0/0");
        assert_eq!(route.spec.next_hop, Ipv4Addr::new(10, 1, 0, 254));
        let Resource::Subnet(subnet) = &docs[2].resource else {
            panic!("not a subnet");
        };
        assert_eq!(
            subnet.spec.gateway_mac.map(|m| m.to_string()).as_deref(),
            Some("02:00:00:00:00:aa")
        );
        for doc in &docs {
            let json = doc.resource.to_json().unwrap().to_string();
            assert_eq!(parse_documents(&json).unwrap()[0].resource, doc.resource);
        }
        let json = docs[1].resource.to_json().unwrap();
        assert_eq!(
            json["spec"],
            serde_json::json!({"network": "blue", "destination": "0.0.0.0/0", "nextHop": "10.1.0.254"})
        );
        assert_eq!(json["status"], serde_json::json!({"state": "Pending"}));
        // A Network without peerings serialises its spec as before: `{}`.
        let plain =
            parse_documents("apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: a}\n")
                .unwrap();
        assert_eq!(
            plain[0].resource.to_json().unwrap()["spec"],
            serde_json::json!({})
        );

        let bad = [
            (
                "destination: 0.0.0.0/0",
                "destination: 10.0.0.0/33",
                "document 2 (Route \"lab\"): spec.destination: invalid CIDR \"10.0.0.0/33\"",
            ),
            (
                "destination: 0.0.0.0/0",
                "destination: 10.0.0.1/8",
                "spec.destination: invalid CIDR \"10.0.0.1/8\": host bits are set; the network is 10.0.0.0/8",
            ),
            (
                "nextHop: 10.1.0.254",
                "nextHop: 10.1.0.254/24",
                "spec.nextHop: invalid IP address \"10.1.0.254/24\"",
            ),
            (
                "nextHop: 10.1.0.254}",
                "nextHop: 10.1.0.254, via: x}",
                "spec.via: unknown field `via`",
            ),
            (
                "{name: to-red, network: red}",
                "{name: to-red}",
                "spec.peerings[0]: missing field `network`",
            ),
            (
                "{name: to-red, network: red}",
                "{name: to-red, network: Red}",
                "spec.peerings[0].network: invalid name \"Red\"",
            ),
            (
                "gatewayMac: 02-00-00-00-00-AA",
                "gatewayMac: 00:00:00:00:00:00",
                "spec.gatewayMac: MAC address 00:00:00:00:00:00 is not a unicast address",
            ),
        ];
        for (from, to, want) in bad {
            assert!(text.contains(from), "fixture lacks {from:?}");
            let msg = message(&parse_documents(&text.replacen(from, to, 1)).unwrap_err());
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
        }
        let msg =
            message(&parse_documents(&text.replace("destination: 0.0.0.0/0, ", "")).unwrap_err());
        assert!(
            msg.contains("(Route \"lab\"): spec: missing field `destination`"),
            "{msg}"
        );
    }

    const NAT: &str = "\
apiVersion: vswitch/v1alpha1
kind: uplinks
metadata: {name: wan}
spec:
  interface: eth1
  addresses: [198.51.100.10/24, 198.51.100.11]
  gateway: 198.51.100.1
  mac: 02:00:00:00:aa:01
---
apiVersion: vswitch/v1alpha1
kind: natgw
metadata: {name: gw}
spec: {network: blue, ips: [198.51.100.10]}
---
apiVersion: vswitch/v1alpha1
kind: PF
metadata: {name: web}
spec: {ip: 198.51.100.10, protocol: tcp, port: 8080, target: {interface: c1, port: 80}}
---
apiVersion: vswitch/v1alpha1
kind: VIPs
metadata: {name: v}
spec: {type: Public, ip: 198.51.100.11}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c1}
spec: {netns: c1, virtualIP: v}
";

    #[test]
    fn nat_kinds_parse() {
        for (text, kind) in [
            ("Uplink", Kind::Uplink),
            ("uplinks", Kind::Uplink),
            ("NATGateway", Kind::NatGateway),
            ("natgateways", Kind::NatGateway),
            ("natgw", Kind::NatGateway),
            ("NATGWs", Kind::NatGateway),
            ("PortForward", Kind::PortForward),
            ("portforwards", Kind::PortForward),
            ("pf", Kind::PortForward),
            ("PFs", Kind::PortForward),
            ("VirtualIP", Kind::VirtualIp),
            ("virtualips", Kind::VirtualIp),
            ("vip", Kind::VirtualIp),
            ("VIPS", Kind::VirtualIp),
        ] {
            assert_eq!(Kind::parse(text), Ok(kind), "{text}");
        }
        assert_eq!(Kind::NatGateway.as_str(), "NATGateway");
        assert_eq!(Kind::VirtualIp.as_str(), "VirtualIP");

        let docs = parse_documents(NAT).unwrap();
        let Resource::Uplink(uplink) = &docs[0].resource else {
            panic!("not an uplink: {:?}", docs[0]);
        };
        assert_eq!(uplink.kind, "Uplink");
        assert_eq!(uplink.spec.interface, "eth1");
        let addresses: Vec<String> = uplink
            .spec
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(addresses, ["198.51.100.10/24", "198.51.100.11"]);
        assert_eq!(uplink.spec.addresses[1].0.prefix_len(), 32);
        assert_eq!(
            uplink.spec.addresses[0].prefix(),
            "198.51.100.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert!(uplink.spec.owns(Ipv4Addr::new(198, 51, 100, 11).into()));
        assert!(!uplink.spec.owns(Ipv4Addr::new(198, 51, 100, 1).into()));
        assert_eq!(uplink.spec.mac, Some(MacAddr([2, 0, 0, 0, 0xaa, 1])));
        let Resource::NatGateway(gateway) = &docs[1].resource else {
            panic!("not a NAT gateway: {:?}", docs[1]);
        };
        assert_eq!(gateway.kind, "NATGateway");
        assert_eq!(gateway.spec.ports_per_network_interface, 2048);
        let Resource::PortForward(forward) = &docs[2].resource else {
            panic!("not a port forward: {:?}", docs[2]);
        };
        assert_eq!(forward.spec.protocol, ForwardProtocol::Tcp);
        assert_eq!((forward.spec.port, forward.spec.target.port), (8080, 80));
        let Resource::VirtualIp(vip) = &docs[3].resource else {
            panic!("not a virtual IP: {:?}", docs[3]);
        };
        assert_eq!(vip.kind, "VirtualIP");
        assert_eq!(vip.spec.ip, Some(IpAddr::from([198, 51, 100, 11])));
        let Resource::NetworkInterface(nic) = &docs[4].resource else {
            panic!("not an interface: {:?}", docs[4]);
        };
        assert_eq!(nic.spec.virtual_ip.as_deref(), Some("v"));
        // JSON round trip, with the names the API shows.
        for doc in &docs {
            let json = doc.resource.to_json().unwrap();
            assert_eq!(
                parse_documents(&json.to_string()).unwrap()[0].resource,
                doc.resource
            );
        }
        assert_eq!(
            docs[0].resource.to_json().unwrap()["spec"]["addresses"],
            serde_json::json!(["198.51.100.10/24", "198.51.100.11"])
        );
        assert_eq!(
            docs[3].resource.to_json().unwrap()["spec"]["type"],
            "Public"
        );
        assert_eq!(
            docs[4].resource.to_json().unwrap()["spec"]["virtualIP"],
            "v"
        );
        let bare = parse_documents(&NAT.replace(", ip: 198.51.100.11}", "}")).unwrap();
        let Resource::VirtualIp(vip) = &bare[3].resource else {
            panic!("not a virtual IP");
        };
        assert_eq!(vip.spec.ip, None);
    }

    #[test]
    fn nat_field_errors() {
        let cases = [
            (
                "198.51.100.10/24,",
                "198.51.100.10/33,",
                "document 1 (Uplink \"wan\"): spec.addresses[0]: invalid uplink address \
                 \"198.51.100.10/33\": the prefix length must be 0..=32",
            ),
            (
                "198.51.100.10/24,",
                "x/24,",
                "spec.addresses[0]: invalid uplink address \"x/24\": \"x\" is not an IPv4 address",
            ),
            (
                "198.51.100.10/24,",
                "198.51.100.0/24,",
                "spec.addresses[0]: invalid uplink address \"198.51.100.0/24\": 198.51.100.0 is the \
                 network address of 198.51.100.0/24",
            ),
            (
                "198.51.100.10/24,",
                "198.51.100.255/24,",
                "is the broadcast address of 198.51.100.0/24",
            ),
            (
                "198.51.100.11]",
                "0.0.0.0]",
                "spec.addresses[1]: invalid uplink address \"0.0.0.0\": not a unicast host address",
            ),
            (
                "198.51.100.11]",
                "127.0.0.1]",
                "\"127.0.0.1\": not a unicast host address",
            ),
            (
                "198.51.100.11]",
                "224.0.0.5]",
                "\"224.0.0.5\": not a unicast host address",
            ),
            (
                "198.51.100.11]",
                "240.0.0.5]",
                "\"240.0.0.5\": not a unicast host address",
            ),
            (
                "198.51.100.11]",
                "255.255.255.255]",
                "\"255.255.255.255\": not a unicast host address",
            ),
            (
                "[198.51.100.10/24, 198.51.100.11]",
                "[]",
                "spec.addresses: no address; list at least one address",
            ),
            (
                "interface: eth1",
                "interface: a/b",
                "spec.interface: invalid interface name \"a/b\"",
            ),
            (
                "gateway: 198.51.100.1",
                "gateway: 198.51.100.1/24",
                "spec.gateway: invalid IPv4 address \"198.51.100.1/24\"",
            ),
            (
                "mac: 02:00:00:00:aa:01",
                "mac: 01:00:5e:00:00:01",
                "spec.mac: MAC address 01:00:5e:00:00:01 is not a unicast address",
            ),
            (
                "mac: 02:00:00:00:aa:01",
                "mac: 02:00:00:00:aa:01\n  vlan: 3",
                "spec.vlan: unknown field `vlan`",
            ),
            (
                "ips: [198.51.100.10]}",
                "ips: [198.51.100.10], portsPerNetworkInterface: 63}",
                "document 2 (NATGateway \"gw\"): spec.portsPerNetworkInterface: invalid \
                 portsPerNetworkInterface 63: must be 64..=64512",
            ),
            (
                "ips: [198.51.100.10]}",
                "ips: [198.51.100.10], portsPerNetworkInterface: 65536}",
                "invalid portsPerNetworkInterface 65536: must be 64..=64512",
            ),
            (
                "ips: [198.51.100.10]}",
                "ips: [198.51.100.10, nat]}",
                "spec.ips[1]: invalid IP address \"nat\"",
            ),
            (
                "{network: blue, ips",
                "{network: Blue, ips",
                "spec.network: invalid name \"Blue\"",
            ),
            (
                "ips: [198.51.100.10]}",
                "}",
                "(NATGateway \"gw\"): spec: missing field `ips`",
            ),
            (
                "protocol: tcp",
                "protocol: sctp",
                "document 3 (PortForward \"web\"): spec.protocol: unknown variant `sctp`, expected \
                 `tcp` or `udp`",
            ),
            (
                "port: 8080",
                "port: 0",
                "spec.port: invalid port 0: must be 1..=65535",
            ),
            (
                "port: 8080",
                "port: 65536",
                "spec.port: invalid port 65536: must be 1..=65535",
            ),
            (
                "port: 80}}",
                "port: 0}}",
                "spec.target.port: invalid port 0: must be 1..=65535",
            ),
            (
                "{interface: c1, port: 80}",
                "{port: 80}",
                "spec.target: missing field `interface`",
            ),
            (
                "{interface: c1, port: 80}",
                "{interface: c1, port: 80, ip: 10.0.0.1}",
                "spec.target.ip: unknown field `ip`",
            ),
            (
                "ip: 198.51.100.10, protocol",
                "ip: 198.51.100.10/32, protocol",
                "spec.ip: invalid IP address \"198.51.100.10/32\"",
            ),
            (
                "type: Public",
                "type: Private",
                "document 4 (VirtualIP \"v\"): spec.type: unknown variant `Private`, expected \
                 `Public`",
            ),
            (
                "{type: Public, ip",
                "{ip",
                "(VirtualIP \"v\"): spec: missing field `type`",
            ),
            (
                "ip: 198.51.100.11}",
                "ip: eleven}",
                "spec.ip: invalid IP address \"eleven\"",
            ),
            (
                "virtualIP: v",
                "virtualIP: V_1",
                "document 5 (NetworkInterface \"c1\"): spec.virtualIP: invalid name \"V_1\"",
            ),
            (
                "virtualIP: v",
                "virtualIp: v",
                "spec.virtualIp: unknown field `virtualIp`",
            ),
        ];
        for (from, to, want) in cases {
            assert!(NAT.contains(from), "fixture lacks {from:?}");
            let msg = message(&parse_documents(&NAT.replacen(from, to, 1)).unwrap_err());
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
        }
        assert_eq!(MAX_PORTS_PER_INTERFACE, 64512);
    }

    #[test]
    fn parses_yaml_documents() {
        let docs = parse_documents(GOOD).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1].origin.document, Some(1));
        let Resource::Subnet(subnet) = &docs[1].resource else {
            panic!("not a subnet: {:?}", docs[1]);
        };
        assert_eq!(subnet.kind, "Subnet");
        assert_eq!(subnet.spec.cidr, "10.1.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(subnet.spec.mtu, DEFAULT_MTU);
        assert_eq!(subnet.spec.mac_ageing_seconds, 60);
        assert_eq!(subnet.spec.mac_table_limit, DEFAULT_MAC_TABLE_LIMIT);
        assert_eq!(subnet.spec.reserved, vec![Ipv4Addr::new(10, 1, 0, 15)]);
        assert_eq!(subnet.metadata.labels["tier"], "front");
        let Resource::NetworkInterface(nic) = &docs[2].resource else {
            panic!("not an interface: {:?}", docs[2]);
        };
        assert_eq!(nic.kind, "NetworkInterface");
        assert_eq!(nic.spec.kind, PortKind::Veth);
        assert_eq!(nic.spec.ifname, "eth0");
        assert_eq!(nic.spec.netns, NetnsRef::Name("c1".into()));
        assert_eq!(
            nic.spec.mac,
            Some(MacAddr([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]))
        );
        assert_eq!(nic.spec.ips[0].to_string(), "10.1.0.5/24");
        assert_eq!(nic.spec.ips[1].to_string(), "10.1.0.6");
        assert_eq!(nic.spec.mtu, Some(9000));
    }

    #[test]
    fn parses_json_object_and_array() {
        let one = r#"{"apiVersion":"vswitch/v1alpha1","kind":"Network","metadata":{"name":"a"},"spec":{}}"#;
        assert_eq!(parse_documents(one).unwrap().len(), 1);
        let many = format!("[{one}, {}]", one.replace("\"a\"", "\"b\""));
        let docs = parse_documents(&many).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].resource.name(), "b");
    }

    #[test]
    fn yaml_flow_mapping_is_not_mistaken_for_json() {
        let text = "{apiVersion: vswitch/v1alpha1, kind: Network, metadata: {name: a}}";
        assert_eq!(parse_documents(text).unwrap()[0].resource.name(), "a");
    }

    #[test]
    fn round_trips_through_json() {
        for doc in parse_documents(GOOD).unwrap() {
            let json = doc.resource.to_json().unwrap().to_string();
            let again = parse_documents(&json).unwrap();
            assert_eq!(again[0].resource, doc.resource);
        }
    }

    #[test]
    fn empty_input_and_empty_documents() {
        assert!(message(&parse_documents("").unwrap_err()).contains("no resources"));
        let text = format!("---\n{GOOD}---\n");
        assert_eq!(parse_documents(&text).unwrap().len(), 3);
    }

    #[test]
    fn malformed_yaml_names_the_document_and_line() {
        let text = "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: [oops\n";
        let err = parse_documents(text).unwrap_err();
        let msg = message(&err);
        assert!(msg.starts_with("document 1: invalid YAML"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn malformed_json_is_reported_as_json() {
        let err = parse_documents("{\"apiVersion\": ").unwrap_err();
        assert!(
            message(&err).starts_with("invalid JSON"),
            "{}",
            message(&err)
        );
    }

    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        let text = "apiVersion: vswitch/v1alpha1\nkind: Router\nmetadata:\n  name: r\n";
        let err = parse_documents(text).unwrap_err();
        let message = message(&err);
        assert!(
            message.starts_with(
                "document 1 (\"r\"): kind: unknown kind \"Router\"; valid kinds: Namespace, Overlay, Network, Subnet, "
            ),
            "{message}"
        );
        for kind in Kind::ALL {
            assert!(message.contains(kind.as_str()), "{message}");
        }
        assert!(message.contains("nic (NetworkInterface)"), "{message}");
    }

    #[test]
    fn unknown_api_version_names_the_supported_one() {
        let text = "apiVersion: v1\nkind: Network\nmetadata:\n  name: a\n";
        let msg = message(&parse_documents(text).unwrap_err());
        assert!(msg.contains("unsupported apiVersion \"v1\""), "{msg}");
        assert!(msg.contains(API_VERSION), "{msg}");
        let text = "kind: Network\nmetadata:\n  name: a\n";
        let msg = message(&parse_documents(text).unwrap_err());
        assert!(msg.contains("apiVersion: missing"), "{msg}");
    }

    #[test]
    fn unknown_field_names_the_path() {
        let text = GOOD.replace("  mtu: 9000\n", "  mtu: 9000\n  colour: red\n");
        let err = parse_documents(&text).unwrap_err();
        let msg = message(&err);
        assert!(
            msg.starts_with(
                "document 3 (NetworkInterface \"c1\"): spec.colour: unknown field `colour`"
            ),
            "{msg}"
        );
        assert_eq!(err.field(), Some("documents[2].spec.colour"));
        let text = GOOD.replace("kind: Network\n", "kind: Network\nspecs: {}\n");
        let msg = message(&parse_documents(&text).unwrap_err());
        assert!(msg.contains("specs: unknown field `specs`"), "{msg}");
    }

    #[test]
    fn invalid_cidr_messages() {
        let cases = [
            (
                "10.0.0.0/33",
                "invalid CIDR \"10.0.0.0/33\": the prefix length must be 0..=32",
            ),
            ("10.0.0.0", "missing the prefix length"),
            ("10.0.0.300/24", "\"10.0.0.300\" is not an IPv4 address"),
            (
                "10.1.0.5/24",
                "host bits are set; the network is 10.1.0.0/24",
            ),
            ("10.1.0.0/31", "use /30 or shorter"),
        ];
        for (cidr, want) in cases {
            let text = GOOD.replace("cidr: 10.1.0.0/24", &format!("cidr: {cidr}"));
            let err = parse_documents(&text).unwrap_err();
            let msg = message(&err);
            assert!(
                msg.starts_with("document 2 (Subnet \"web\"): spec.cidr: invalid CIDR"),
                "{msg}"
            );
            assert!(msg.contains(want), "{cidr}: want {want:?} in {msg}");
            assert_eq!(err.field(), Some("documents[1].spec.cidr"));
        }
    }

    #[test]
    fn field_level_errors() {
        let cases = [
            (
                "name: web\n",
                "name: Web_1\n",
                "metadata.name: invalid name \"Web_1\"",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: ten",
                "spec.gateway: invalid IPv4 address \"ten\"",
            ),
            (
                "mtu: 9000",
                "mtu: 70000",
                "spec.mtu: invalid MTU 70000: must be 68..=65535",
            ),
            ("mtu: 9000", "mtu: 10", "spec.mtu: invalid MTU 10"),
            (
                "reserved: [10.1.0.15]",
                "reserved: [10.1.0.15, x]",
                "spec.reserved[1]: invalid IPv4 address \"x\"",
            ),
            (
                "kind: veth",
                "kind: macvlan",
                "spec.kind: unknown variant `macvlan`, expected `tap` or `veth`",
            ),
            (
                "mac: 02:AA:bb:cc:dd:ee",
                "mac: 03:00:00:00:00:01",
                "spec.mac: MAC address 03:00:00:00:00:01 is not a unicast",
            ),
            (
                "mac: 02:AA:bb:cc:dd:ee",
                "mac: 02:00:00",
                "spec.mac: invalid MAC address \"02:00:00\"",
            ),
            (
                "ips: [10.1.0.5/24, 10.1.0.6]",
                "ips: [10.1.0.5/40]",
                "spec.ips[0]: invalid address \"10.1.0.5/40\"",
            ),
            (
                "netns: c1",
                "netns: pid:abc",
                "spec.netns: invalid netns \"pid:abc\"",
            ),
            (
                "netns: c1",
                "netns: a/b",
                "spec.netns: invalid netns \"a/b\"",
            ),
            (
                "kind: veth",
                "kind: veth\n  ifname: a-very-long-name0",
                "spec.ifname: invalid interface name \"a-very-long-name0\"",
            ),
            (
                "subnet: web",
                "subnet: Web",
                "spec.subnet: invalid name \"Web\"",
            ),
            (
                "tier: front",
                "tier: two words",
                "metadata.labels: invalid value \"two words\"",
            ),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "fixture lacks {from:?}");
            let text = GOOD.replacen(from, to, 1);
            let msg = message(&parse_documents(&text).unwrap_err());
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
        }
    }

    #[test]
    fn missing_required_fields() {
        let text = GOOD.replace("  cidr: 10.1.0.0/24\n", "");
        let msg = message(&parse_documents(&text).unwrap_err());
        assert!(
            msg.contains("(Subnet \"web\"): spec: missing field `cidr`"),
            "{msg}"
        );
        let text = "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: s\nspec:\n";
        let msg = message(&parse_documents(text).unwrap_err());
        assert!(msg.contains("missing field `spec`"), "{msg}");
        let text = "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {}\n";
        let msg = message(&parse_documents(text).unwrap_err());
        assert!(msg.contains("metadata: missing field `name`"), "{msg}");
    }

    #[test]
    fn network_spec_may_be_absent_or_empty() {
        for spec in ["", "spec:\n", "spec: {}\n"] {
            let text = format!(
                "apiVersion: vswitch/v1alpha1\nkind: network\nmetadata:\n  name: a\n{spec}"
            );
            let docs = parse_documents(&text).unwrap();
            assert_eq!(docs[0].resource.kind(), Kind::Network);
        }
    }

    #[test]
    fn document_that_is_not_a_mapping() {
        let msg = message(&parse_documents("- a\n- b\n").unwrap_err());
        assert!(msg.starts_with("document 1: expected a resource"), "{msg}");
    }

    #[test]
    fn parse_one_fills_kind_and_api_version() {
        let body = r#"{"metadata":{"name":"c1"},"spec":{"netns":"c1"}}"#;
        let Resource::NetworkInterface(nic) = parse_one(Kind::NetworkInterface, body).unwrap()
        else {
            panic!("wrong kind");
        };
        assert_eq!(nic.api_version, API_VERSION);
        assert_eq!(nic.spec.subnet, "default");
        let err = parse_one(
            Kind::Subnet,
            r#"{"kind":"Network","metadata":{"name":"a"}}"#,
        )
        .unwrap_err();
        assert!(message(&err).contains("creates a Subnet, but the body is a Network"));
        let err = parse_one(
            Kind::NetworkInterface,
            r#"{"metadata":{"name":"c1"},"spec":{}}"#,
        )
        .unwrap_err();
        assert_eq!(
            message(&err),
            "NetworkInterface \"c1\": spec: missing field `netns`"
        );
        assert_eq!(err.field(), Some("spec"));
    }

    #[test]
    fn names_and_ifnames() {
        for good in ["a", "web-1", "0", &"a".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["eth0", "a", "x.y-z_1", &"e".repeat(15)] {
            assert!(check_ifname(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a:b", &"e".repeat(16)] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_macs_are_local_unicast() {
        for i in 0..64 {
            let mac = MacAddr::random(&i.to_string());
            assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}");
        }
        assert_ne!(MacAddr::random("x"), MacAddr::random("x"));
    }

    #[test]
    fn mac_parse_and_display() {
        let mac: MacAddr = "02-AB-cd-00-11-ff".parse().unwrap();
        assert_eq!(mac.to_string(), "02:ab:cd:00:11:ff");
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "2:ab:cd:00:11:ff",
            "zz:ab:cd:00:11:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
