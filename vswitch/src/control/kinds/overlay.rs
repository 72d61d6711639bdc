//! `Overlay`: the node's VXLAN overlay (at most one): mesh, hub or runner.

#[allow(unused_imports)]
use super::prelude::*;
use crate::control::overlay::MAX_VNI;

/// What a node is in the VXLAN overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayRole {
    /// Every node a peer: Subnets with a `vni` are stretched over all `peers`.
    Mesh,
    /// The hub of a hub-and-spoke overlay: gives runners their IDs and routes between them.
    Hub,
    /// A runner of a hub-and-spoke overlay: registers with the hub and gets its subnet.
    Runner,
}

impl fmt::Display for OverlayRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverlayRole::Mesh => "mesh",
            OverlayRole::Hub => "hub",
            OverlayRole::Runner => "runner",
        })
    }
}

/// Default VXLAN UDP port (IANA).
pub const DEFAULT_OVERLAY_PORT: u16 = 4789;
/// Default VNI base: runner N gets VNI base + N.
pub const DEFAULT_VNI_BASE: u32 = 100;
/// Default overlay MTU: a 1500-byte underlay minus the 50 bytes of VXLAN over IPv4.
pub const DEFAULT_OVERLAY_MTU: u16 = 1450;
/// Default TCP port of the hub's registration API.
pub const DEFAULT_HUB_API_PORT: u16 = 4799;
/// Default interval between a runner's heartbeats.
pub const DEFAULT_HEARTBEAT_SECONDS: u64 = 5;
/// Default time after which the hub marks a silent runner offline.
pub const DEFAULT_RUNNER_TIMEOUT_SECONDS: u64 = 20;

fn default_overlay_port() -> u16 {
    DEFAULT_OVERLAY_PORT
}
fn default_vni_base() -> u32 {
    DEFAULT_VNI_BASE
}
fn default_overlay_mtu() -> u16 {
    DEFAULT_OVERLAY_MTU
}
fn default_hub_api_port() -> u16 {
    DEFAULT_HUB_API_PORT
}
fn default_heartbeat_seconds() -> u64 {
    DEFAULT_HEARTBEAT_SECONDS
}
fn default_runner_timeout_seconds() -> u64 {
    DEFAULT_RUNNER_TIMEOUT_SECONDS
}
fn default_source_ports() -> String {
    "32768-60999".into()
}
fn is_false(value: &bool) -> bool {
    !*value
}

/// Where a runner finds its hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubRef {
    /// The hub's reachable underlay address (its `localAddress`).
    #[serde(deserialize_with = "de_ipv4")]
    pub address: Ipv4Addr,
    /// The hub's registration API port (TCP).
    #[serde(default = "default_hub_api_port")]
    pub api_port: u16,
    /// The bearer token the hub expects.
    pub token: String,
}

/// A runner the hub serves without registration (e.g. a node built from kernel VXLAN pieces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticRunner {
    /// Its name in the runner pool.
    pub name: String,
    /// Its VTEP address.
    #[serde(deserialize_with = "de_ipv4")]
    pub address: Ipv4Addr,
}

/// Spec of the Overlay: this node's VTEP and its place in the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverlaySpec {
    /// `mesh`, `hub` or `runner`.
    pub role: OverlayRole,
    /// The address the other nodes reach this one at (the VTEP's, and the hub API's); an
    /// address of an interface in vswitchd's namespace, never loopback or 0.0.0.0.
    #[serde(deserialize_with = "de_ipv4")]
    pub local_address: Ipv4Addr,
    /// The VXLAN UDP port (must match on every node).
    #[serde(default = "default_overlay_port")]
    pub port: u16,
    /// Runner N gets VNI `vniBase + N` (must match on every node).
    #[serde(default = "default_vni_base")]
    pub vni_base: u32,
    /// The MTU of interfaces on overlay subnets (must match on every node): the underlay's
    /// MTU minus 50.
    #[serde(default = "default_overlay_mtu")]
    pub mtu: u16,
    /// Fill in the outer UDP checksum (default off, as RFC 7348 allows over IPv4).
    #[serde(default, skip_serializing_if = "is_false")]
    pub udp_checksum: bool,
    /// VXLAN remote checksum offload (draft-herbert-vxlan-rco, Linux `remcsumtx` and
    /// `remcsumrx`): TCP super-frames go into the tunnel with their inner checksums left for
    /// the receiver, and datagrams carrying the option are taken. Every node of the overlay
    /// must agree (default off: a VTEP without it drops such datagrams).
    #[serde(default, skip_serializing_if = "is_false")]
    pub remote_checksum_offload: bool,
    /// The outer UDP source ports, hashed from the inner flow: `MIN-MAX`.
    #[serde(default = "default_source_ports")]
    pub source_ports: String,
    /// Mesh: the other nodes' VTEP addresses.
    #[serde(
        default,
        deserialize_with = "de_ipv4_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers: Vec<Ipv4Addr>,
    /// Runner: the hub to register with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubRef>,
    /// Hub: the TCP port of the registration API (on `localAddress`).
    #[serde(default = "default_hub_api_port")]
    pub api_port: u16,
    /// Hub: the bearer token runners must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Hub: how runner subnets are carved (default 10.0.0.0/8 in /16s, gateway .0.1, hub
    /// .0.254, hub address 10.0.0.1).
    #[serde(default)]
    pub address_plan: vxlan::AddressPlan,
    /// Hub: runners served without registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<StaticRunner>,
    /// Runner: seconds between heartbeats.
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u64,
    /// Hub: seconds of silence after which a runner is marked offline.
    #[serde(default = "default_runner_timeout_seconds")]
    pub runner_timeout_seconds: u64,
}

/// Where the Overlay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OverlayState {
    /// Not set up yet.
    #[default]
    #[serde(alias = "pending")]
    Pending,
    /// Mesh or hub: the VTEP is open.
    #[serde(alias = "up")]
    Up,
    /// Runner: registering with the hub.
    #[serde(alias = "registering")]
    Registering,
    /// Runner: registered, heartbeats answered.
    #[serde(alias = "registered")]
    Registered,
    /// Runner: the hub cannot be reached or refused us; retrying.
    #[serde(alias = "hubUnreachable")]
    HubUnreachable,
    /// The VTEP could not be opened.
    #[serde(alias = "failed")]
    Failed,
}

impl fmt::Display for OverlayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OverlayState::Pending => "Pending",
            OverlayState::Up => "Up",
            OverlayState::Registering => "Registering",
            OverlayState::Registered => "Registered",
            OverlayState::HubUnreachable => "HubUnreachable",
            OverlayState::Failed => "Failed",
        })
    }
}

/// Status of the Overlay.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverlayStatus {
    /// Where it is.
    #[serde(default)]
    pub state: OverlayState,
    /// Why, when not up or registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Runner: the plan the hub gave (persisted: the runner keeps its subnet across restarts
    /// while the hub is away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<vxlan::RunnerPlan>,
    /// Runner: when the hub last answered (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<u64>,
}

/// The node's VXLAN overlay (at most one per node; its name is the node's name in the
/// overlay: the runner name it registers with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overlay {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `Overlay`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: OverlaySpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: OverlayStatus,
}

/// What tokens are shown as when a resource is read back.
pub const REDACTED: &str = "<redacted>";

impl Overlay {
    /// A copy with the tokens replaced by [`REDACTED`], for output.
    pub fn redacted(&self) -> Overlay {
        let mut copy = self.clone();
        if copy.spec.token.is_some() {
            copy.spec.token = Some(REDACTED.into());
        }
        if let Some(hub) = &mut copy.spec.hub {
            hub.token = REDACTED.into();
        }
        copy
    }

    /// The label that marks resources this Overlay generated (`vswitch/owner`).
    pub fn owner_label(&self) -> String {
        format!("Overlay/{}", self.metadata.name)
    }
}

impl ResourceKind for Overlay {
    type Spec = OverlaySpec;
    type Status = OverlayStatus;

    const INFO: KindInfo = KindInfo {
        name: "Overlay",
        plural: "overlays",
        aliases: &[],
        summary: "the node's VXLAN overlay (at most one): a mesh member, the hub of a hub-and-spoke overlay, or a runner",
        example: "\
apiVersion: vswitch/v1alpha1
kind: Overlay
metadata:
  name: hub
spec:
  role: hub
  localAddress: 192.168.50.1
  token: change-me
",
    };

    fn spec(&self) -> &OverlaySpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut OverlayStatus {
        &mut self.status
    }

    /// The status (a runner's plan, its registration state) is the controller's.
    fn carry_status(&mut self, old: Option<&Self>) {
        self.status = old.map(|o| o.status.clone()).unwrap_or_default();
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(check_overlay(cx.origin, cx.next, self));
    }

    fn shown(&self) -> Self {
        self.redacted()
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "ROLE", "LOCAL-ADDRESS", "PORT", "VNI-BASE", "STATE"];
        if wide {
            columns.extend(["MTU", "HUB", "SUBNET", "LABELS", "MESSAGE"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let (spec, status) = (&self.spec, &self.status);
        let mut row = vec![
            self.metadata.name.clone(),
            spec.role.to_string(),
            spec.local_address.to_string(),
            spec.port.to_string(),
            spec.vni_base.to_string(),
            status.state.to_string(),
        ];
        if wide {
            let hub = spec
                .hub
                .as_ref()
                .map(|hub| format!("{}:{}", hub.address, hub.api_port));
            let subnet = status.plan.as_ref().map(|plan| plan.subnet);
            row.extend([
                spec.mtu.to_string(),
                cells(hub.iter()),
                cells(subnet.iter()),
                labels_cell(&self.metadata),
                cell(status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}

/// Checks the Overlay `overlay` against the state it would be part of.
///
/// # Errors
/// [`ApiError`] naming the field and what to write.
fn check_overlay(origin: &Origin, next: &State, overlay: &Overlay) -> Result<(), ApiError> {
    let spec = &overlay.spec;
    if let Some(other) = next.overlays.keys().find(|n| **n != overlay.metadata.name) {
        return Err(origin.conflict(
            "metadata.name",
            format!(
                "this node already has Overlay {other:?}; a node has one Overlay (delete it first, or apply with its name)"
            ),
        ));
    }
    vxlan::membership::validate_runner_name(&overlay.metadata.name)
        .map_err(|err| origin.invalid("metadata.name", err))?;
    overlay::check_reachable(origin, "spec.localAddress", spec.local_address)?;
    if spec.port == 0 {
        return Err(origin.invalid("spec.port", "must be 1..=65535 (VXLAN's is 4789)"));
    }
    if spec.vni_base == 0 || spec.vni_base.saturating_add(255) > MAX_VNI {
        return Err(origin.invalid(
            "spec.vniBase",
            format!(
                "{} leaves no room for runner VNIs: it must be 1..={} (runner N gets vniBase + N, up to {MAX_VNI})",
                spec.vni_base,
                MAX_VNI - 255
            ),
        ));
    }
    if !(576..=9000).contains(&spec.mtu) {
        return Err(origin.invalid(
            "spec.mtu",
            format!(
                "{} is out of range: use 576..=9000 (the underlay MTU minus 50: 1450 for a 1500-byte underlay, 8950 for jumbo frames)",
                spec.mtu
            ),
        ));
    }
    overlay::source_ports(&spec.source_ports)
        .map_err(|err| origin.invalid("spec.sourcePorts", err))?;
    if spec.heartbeat_seconds == 0 || spec.runner_timeout_seconds == 0 {
        let field = if spec.heartbeat_seconds == 0 {
            "spec.heartbeatSeconds"
        } else {
            "spec.runnerTimeoutSeconds"
        };
        return Err(origin.invalid(field, "must be at least 1"));
    }
    let only = |field: &str, present: bool, role: &str| -> Result<(), ApiError> {
        if present {
            Err(origin.invalid(
                field,
                format!(
                    "applies to role {role} only; remove it for role {}",
                    spec.role
                ),
            ))
        } else {
            Ok(())
        }
    };
    only(
        "spec.peers",
        !spec.peers.is_empty() && spec.role != OverlayRole::Mesh,
        "mesh",
    )?;
    only(
        "spec.hub",
        spec.hub.is_some() && spec.role != OverlayRole::Runner,
        "runner",
    )?;
    only(
        "spec.token",
        spec.token.is_some() && spec.role != OverlayRole::Hub,
        "hub",
    )?;
    only(
        "spec.runners",
        !spec.runners.is_empty() && spec.role != OverlayRole::Hub,
        "hub",
    )?;
    match spec.role {
        OverlayRole::Mesh => {
            for (i, peer) in spec.peers.iter().enumerate() {
                let field = format!("spec.peers[{i}]");
                overlay::check_reachable(origin, &field, *peer)?;
                if *peer == spec.local_address {
                    return Err(origin.invalid(&field, "is this node's own localAddress"));
                }
            }
        }
        OverlayRole::Runner => {
            let Some(HubRef { address, token, .. }) = &spec.hub else {
                return Err(origin.invalid(
                    "spec.hub",
                    "role runner needs the hub: hub: {address: HUB-ADDRESS, apiPort: 4799, token: TOKEN}",
                ));
            };
            overlay::check_reachable(origin, "spec.hub.address", *address)?;
            if token.is_empty() {
                return Err(origin.invalid("spec.hub.token", "must not be empty"));
            }
        }
        OverlayRole::Hub => {
            if spec.token.as_deref().is_none_or(str::is_empty) {
                return Err(origin.invalid(
                    "spec.token",
                    "role hub needs a token that runners must present (token: SOME-SECRET)",
                ));
            }
            spec.address_plan
                .validate(spec.vni_base)
                .map_err(|err| origin.invalid("spec.addressPlan", err))?;
            let mut names = std::collections::BTreeSet::new();
            for (i, runner) in spec.runners.iter().enumerate() {
                let field = format!("spec.runners[{i}]");
                vxlan::membership::validate_runner_name(&runner.name)
                    .map_err(|err| origin.invalid(&format!("{field}.name"), err))?;
                overlay::check_reachable(origin, &format!("{field}.address"), runner.address)?;
                if !names.insert(runner.name.as_str()) {
                    return Err(origin.invalid(
                        &format!("{field}.name"),
                        format!("{:?} is listed twice", runner.name),
                    ));
                }
            }
        }
    }
    // The names the switch generates must be free for it.
    for (kind, name, taken) in generated_names(next) {
        if taken {
            return Err(origin.conflict(
                "spec.role",
                format!(
                    "the Overlay needs the name {name:?} for its {kind}, but a {kind} of that name exists that the Overlay did not create; rename or delete it"
                ),
            ));
        }
    }
    Ok(())
}

/// The names a hub or runner generates that exist without the owner label.
fn generated_names(state: &State) -> Vec<(&'static str, &'static str, bool)> {
    let foreign = |metadata: Option<&Metadata>| metadata.is_some_and(|m| !overlay::is_owned(m));
    let Some(overlay) = state.overlays.values().next() else {
        return Vec::new();
    };
    match overlay.spec.role {
        OverlayRole::Mesh => Vec::new(),
        OverlayRole::Runner => vec![
            (
                "Network",
                overlay::NETWORK,
                foreign(state.networks.get(overlay::NETWORK).map(|r| &r.metadata)),
            ),
            (
                "Subnet",
                overlay::RUNNER_SUBNET,
                foreign(
                    state
                        .subnets
                        .get(overlay::RUNNER_SUBNET)
                        .map(|r| &r.metadata),
                ),
            ),
            (
                "Route",
                overlay::HUB_ROUTE,
                foreign(state.routes.get(overlay::HUB_ROUTE).map(|r| &r.metadata)),
            ),
        ],
        OverlayRole::Hub => vec![
            (
                "Network",
                overlay::NETWORK,
                foreign(state.networks.get(overlay::NETWORK).map(|r| &r.metadata)),
            ),
            (
                "Subnet",
                overlay::HOST,
                foreign(state.subnets.get(overlay::HOST).map(|r| &r.metadata)),
            ),
            (
                "NetworkInterface",
                overlay::HOST,
                foreign(
                    state
                        .network_interfaces
                        .get(overlay::HOST)
                        .map(|r| &r.metadata),
                ),
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{overlay_of, state_with};

    fn check(overlay: &Overlay) -> Result<(), ApiError> {
        let state = state_with(overlay.clone());
        check_overlay(&Origin::resource(Kind::Overlay, "node-a"), &state, overlay)
    }

    #[test]
    fn defaults_follow_the_issue() {
        let o = overlay_of(OverlayRole::Hub);
        assert_eq!(
            (o.spec.port, o.spec.vni_base, o.spec.mtu),
            (4789, 100, 1450)
        );
        assert_eq!(
            overlay::source_ports(&o.spec.source_ports),
            Ok(vxlan::encap::SourcePortRange::DEFAULT)
        );
        assert!(!overlay::encap_config(&o).udp_checksum_ipv4);
        check(&o).expect("valid hub");
        check(&overlay_of(OverlayRole::Runner)).expect("valid runner");
        check(&overlay_of(OverlayRole::Mesh)).expect("valid mesh");
    }

    #[test]
    fn loopback_and_unspecified_addresses_are_refused_with_advice() {
        for bad in ["127.0.0.1", "0.0.0.0"] {
            let mut o = overlay_of(OverlayRole::Hub);
            o.spec.local_address = bad.parse().unwrap();
            let err = check(&o).expect_err(bad).to_string();
            assert!(
                err.contains("spec.localAddress") || err.contains(bad),
                "{err}"
            );
            assert!(err.contains("address the other nodes reach"), "{err}");
        }
    }

    #[test]
    fn role_fields_are_checked() {
        let mut runner = overlay_of(OverlayRole::Runner);
        runner.spec.hub = None;
        assert!(
            check(&runner)
                .unwrap_err()
                .to_string()
                .contains("needs the hub")
        );
        let mut hub = overlay_of(OverlayRole::Hub);
        hub.spec.token = None;
        assert!(check(&hub).unwrap_err().to_string().contains("token"));
        let mut mesh = overlay_of(OverlayRole::Mesh);
        mesh.spec.token = Some("x".into());
        assert!(
            check(&mesh)
                .unwrap_err()
                .to_string()
                .contains("role hub only")
        );
        let mut mtu = overlay_of(OverlayRole::Mesh);
        mtu.spec.mtu = 100;
        assert!(check(&mtu).unwrap_err().to_string().contains("8950"));
        let mut ports = overlay_of(OverlayRole::Mesh);
        ports.spec.source_ports = "9-3".into();
        assert!(check(&ports).is_err());
    }
}
