//! Fixtures of the control plane's unit tests: documents as a user writes them, planned
//! against a state by [`validate::plan`](super::validate::plan), as `vswitchctl apply` would.
//! Each kind's module tests its checks with these; `validate`'s tests use them for planning.

use std::collections::BTreeMap;

use super::ApiError;
use super::resource::{
    API_VERSION, Metadata, Overlay, OverlayRole, OverlaySpec, OverlayStatus, parse_documents,
};
use super::store::State;
use super::validate::{Mode, Plan, plan};

/// Network blue with Subnet web (10.1.0.0/24, gateway 10.1.0.1).
pub const BASE: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
";

/// Networks blue (Subnet web, 10.1.0.0/24) and red (Subnet db, 10.2.0.0/24), interfaces c1
/// and c2 (a veth) on web and d1 on db, and Uplink wan (eth9: 198.51.100.10/24, .11 and .12
/// alone; gateway .1).
pub const NAT_BASE: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: red}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: db}
spec: {network: red, cidr: 10.2.0.0/24, gateway: 10.2.0.1}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c1}
spec: {subnet: web, netns: c1}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c2}
spec: {subnet: web, netns: c2, kind: veth}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: d1}
spec: {subnet: db, netns: d1}
---
apiVersion: vswitch/v1alpha1
kind: Uplink
metadata: {name: wan}
spec: {interface: eth9, addresses: [198.51.100.10/24, 198.51.100.11, 198.51.100.12], gateway: 198.51.100.1}
";

/// A document of `kind` with a flow-style `spec`.
pub fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: vswitch/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// NetworkInterface `name` on Subnet web, in netns `name`, with `extra` spec fields
/// (`, ips: [10.1.0.7]`).
pub fn nic(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {name}}}\nspec: {{subnet: web, netns: {name}{extra}}}\n"
    )
}

/// Network `name` with `peerings` (flow-style list items).
pub fn network(name: &str, peerings: &str) -> String {
    format!(
        "---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: {name}}}\nspec: {{peerings: [{peerings}]}}\n"
    )
}

/// Subnet `name` of `network`.
pub fn subnet(name: &str, network: &str, cidr: &str, gateway: &str) -> String {
    format!(
        "---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: {name}}}\nspec: {{network: {network}, cidr: {cidr}, gateway: {gateway}}}\n"
    )
}

/// Route `name` of `network`.
pub fn route(name: &str, network: &str, destination: &str, next_hop: &str) -> String {
    format!(
        "---\napiVersion: vswitch/v1alpha1\nkind: Route\nmetadata: {{name: {name}}}\nspec: {{network: {network}, destination: {destination}, nextHop: {next_hop}}}\n"
    )
}

/// NATGateway `name` of `network` with addresses `ips` (`198.51.100.10, 198.51.100.11`).
pub fn gateway(name: &str, network: &str, ips: &str) -> String {
    doc(
        "NATGateway",
        name,
        &format!("{{network: {network}, ips: [{ips}]}}"),
    )
}

/// PortForward `name` of `ip`'s `protocol` `port` to port 80 of interface `target`.
pub fn forward(name: &str, ip: &str, protocol: &str, port: u16, target: &str) -> String {
    doc(
        "PortForward",
        name,
        &format!(
            "{{ip: {ip}, protocol: {protocol}, port: {port}, target: {{interface: {target}, port: 80}}}}"
        ),
    )
}

/// Public VirtualIP `name`, with address `ip` or allocated.
pub fn vip(name: &str, ip: Option<&str>) -> String {
    let ip = ip.map(|ip| format!(", ip: {ip}")).unwrap_or_default();
    doc("VirtualIP", name, &format!("{{type: Public{ip}}}"))
}

/// The plan of `text` applied to `current`.
///
/// # Errors
/// The refusal.
pub fn try_plan(current: &State, text: &str) -> Result<Plan, ApiError> {
    plan(current, parse_documents(text)?, Mode::Apply)
}

/// `current` with `text` applied; panics with the refusal.
pub fn apply(current: &State, text: &str) -> State {
    try_plan(current, text)
        .unwrap_or_else(|err| panic!("{err}"))
        .next
}

/// The refusal of `text` on `current`; panics if it is accepted.
pub fn refusal(current: &State, text: &str) -> ApiError {
    try_plan(current, text).expect_err(text)
}

/// Checks the refusal of `text` on `current`: status, field and message (which must contain
/// every `words`).
pub fn refused(current: &State, text: &str, status: u16, field: &str, words: &[&str]) {
    let err = refusal(current, text);
    let message = err.to_string();
    assert_eq!(err.status(), status, "{message}");
    assert_eq!(err.field(), Some(field), "{message}");
    for word in words {
        assert!(message.contains(word), "{word:?} not in {message:?}");
    }
}

/// [`BASE`], applied.
pub fn base() -> State {
    apply(&State::default(), BASE)
}

/// [`NAT_BASE`], applied.
pub fn nat_base() -> State {
    apply(&State::default(), NAT_BASE)
}

/// Network blue (web 10.1.0.0/24) plus Network red with `red_cidr`, neither peered.
pub fn blue_and_red(red_cidr: &str, red_gateway: &str) -> State {
    apply(
        &base(),
        &format!(
            "{}{}",
            network("red", ""),
            subnet("r1", "red", red_cidr, red_gateway)
        ),
    )
}

/// The addresses of interface `name` in its status (`10.1.0.2/24`).
pub fn ips(state: &State, name: &str) -> Vec<String> {
    state.network_interfaces[name]
        .status
        .ips
        .iter()
        .map(|ip| ip.to_string())
        .collect()
}

/// An address of the type the caller needs (`Ipv4Addr` or `IpAddr`).
pub fn ip<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().expect("an address")
}

/// A valid Overlay `node-a` of `role` (a hub or mesh on 192.168.50.1, a runner on .2 with
/// the hub at .1).
pub fn overlay_of(role: OverlayRole) -> Overlay {
    let yaml = match role {
        OverlayRole::Mesh => "role: mesh\nlocalAddress: 192.168.50.1\npeers: [192.168.50.2]\n",
        OverlayRole::Hub => "role: hub\nlocalAddress: 192.168.50.1\ntoken: s3cret\n",
        OverlayRole::Runner => {
            "role: runner\nlocalAddress: 192.168.50.2\nhub: {address: 192.168.50.1, token: s3cret, tls: {fingerprint: 'sha256:0000000000000000000000000000000000000000000000000000000000000000'}}\n"
        }
    };
    let spec: OverlaySpec = serde_norway::from_str(yaml).expect("spec parses");
    Overlay {
        api_version: API_VERSION.into(),
        kind: "Overlay".into(),
        metadata: Metadata {
            name: "node-a".into(),
            namespace: None,
            labels: BTreeMap::new(),
        },
        spec,
        status: OverlayStatus::default(),
    }
}

/// A state holding only `overlay`.
pub fn state_with(overlay: Overlay) -> State {
    let mut state = State::default();
    state
        .overlays
        .insert(overlay.metadata.name.clone(), overlay);
    state
}
