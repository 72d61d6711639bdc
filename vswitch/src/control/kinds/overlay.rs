//! `Overlay`: the node's VXLAN overlay (at most one): mesh, hub or runner.

#[allow(unused_imports)]
use super::prelude::*;
use std::path::PathBuf;

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

/// How a hub's runners reach each other (`spec.runnerToRunner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RunnerToRunner {
    /// Through the hub: a runner routes the whole overlay range to the hub, which routes
    /// into the other runner's subnet (two routed hops, the hub's capacity shared by all).
    #[default]
    ViaHub,
    /// Straight between the runners' VTEPs: each runner learns the others from the hub
    /// (`GET /v1/overlay/peers`) and holds a copy of each other runner's subnet, so it routes
    /// into it itself (one routed hop) and tunnels to that runner. The hub stays the control
    /// point and the hub address's gateway; while it is away, runners keep the last list.
    Direct,
}

impl RunnerToRunner {
    fn is_via_hub(&self) -> bool {
        *self == RunnerToRunner::ViaHub
    }
}

impl fmt::Display for RunnerToRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunnerToRunner::ViaHub => "ViaHub",
            RunnerToRunner::Direct => "Direct",
        })
    }
}

/// Default VXLAN UDP port (IANA).
pub const DEFAULT_OVERLAY_PORT: u16 = 4789;
/// Default VNI base: runner N gets VNI base + N.
pub const DEFAULT_VNI_BASE: u32 = 100;
/// Default overlay MTU: a 1500-byte underlay minus the 50 bytes of VXLAN over IPv4.
pub const DEFAULT_OVERLAY_MTU: u16 = 1450;
/// Default overlay MTU over an IPv6 underlay: a 1500-byte underlay minus the 70 bytes of
/// VXLAN over IPv6 (as Linux gives a VXLAN device over IPv6).
pub const DEFAULT_OVERLAY_MTU_IPV6: u16 = 1430;
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

/// Whether the hub's registration API runs over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TlsMode {
    /// TLS 1.3 (the default): the token and the registrations are encrypted, and the runner
    /// checks the hub's certificate.
    #[default]
    Enabled,
    /// Plain HTTP: the token crosses the underlay in clear. Only on request, and warned
    /// about in the status and the log.
    Disabled,
}

impl TlsMode {
    fn is_enabled(&self) -> bool {
        *self == TlsMode::Enabled
    }
}

/// Hub: the TLS of the registration API (`spec.tls`). Without a certificate the hub
/// generates a self-signed one once, kept in its state directory; its fingerprint is in the
/// status and `vswitchctl overlay`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubTls {
    /// `Enabled` (default) or `Disabled` (plain HTTP).
    #[serde(default, skip_serializing_if = "TlsMode::is_enabled")]
    pub mode: TlsMode,
    /// The certificate chain (PEM, the hub's own certificate first); an absolute path on
    /// the hub's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_file: Option<String>,
    /// The certificate's private key (PEM); an absolute path on the hub's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// Runner: how it trusts the hub (`spec.hub.tls`): a CA file, or the pinned fingerprint of
/// the hub's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubClientTls {
    /// `Enabled` (default) or `Disabled` (plain HTTP, for a hub with `tls.mode: Disabled`).
    #[serde(default, skip_serializing_if = "TlsMode::is_enabled")]
    pub mode: TlsMode,
    /// CA certificates (PEM) the hub's certificate must chain to; an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// With `caFile`: the name the hub's certificate must carry (default: the hub address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The SHA-256 fingerprint of the hub's certificate (`AB:CD:...`, as the hub's
    /// `vswitchctl overlay` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// The key prefix of the overlay in etcd when `spec.store.etcd.prefix` is not given.
pub const DEFAULT_ETCD_PREFIX: &str = "/vswitch/overlay/";
/// Default TTL of a hub's etcd lease: how long after a hub dies its runners stop being
/// shown as served by it.
pub const DEFAULT_ETCD_LEASE_SECONDS: u64 = 10;

fn default_etcd_prefix() -> String {
    DEFAULT_ETCD_PREFIX.into()
}
fn default_etcd_lease_seconds() -> u64 {
    DEFAULT_ETCD_LEASE_SECONDS
}

/// Hub: where the runner registry is kept (`spec.store`). Without it, on the hub's own
/// disk (its state directory); with `etcd`, in an etcd cluster that several hubs of one
/// overlay share.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverlayStoreSpec {
    /// The etcd cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStoreSpec>,
}

/// The etcd cluster holding the overlay's runners (`spec.store.etcd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdStoreSpec {
    /// Client URLs of the cluster's members (`http://HOST:2379`, or `https://` with
    /// `tls`); each call tries them in turn.
    pub endpoints: Vec<String>,
    /// The key prefix of this overlay (every hub of the overlay uses the same).
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    /// TTL of this hub's lease, in seconds: the runners it serves are shown served by no
    /// hub this long after it dies.
    #[serde(default = "default_etcd_lease_seconds")]
    pub lease_seconds: u64,
    /// TLS to the cluster (for `https://` endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd (`spec.store.etcd.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdTls {
    /// The CA certificates (PEM) etcd's certificate must chain to; an absolute path.
    pub ca_file: String,
    /// The hub's client certificate (PEM), for an etcd with `--client-cert-auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_file: Option<String>,
    /// Its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// Where a runner finds its hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubRef {
    /// The hub's reachable underlay address (its `localAddress`), IPv4 or IPv6.
    #[serde(deserialize_with = "de_ip")]
    pub address: IpAddr,
    /// The hub's registration API port (TCP).
    #[serde(default = "default_hub_api_port")]
    pub api_port: u16,
    /// The bearer token the hub expects.
    pub token: String,
    /// How the runner trusts the hub (required: a `fingerprint` or a `caFile`, or
    /// `mode: Disabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HubClientTls>,
    /// More hubs of the same overlay (sharing its store, `spec.store.etcd` on the hubs),
    /// in the order the runner fails over to them when the one it uses cannot be
    /// reached; each takes the same token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternates: Vec<AlternateHub>,
}

/// Another hub a runner may register with (`spec.hub.alternates[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlternateHub {
    /// Its reachable underlay address.
    #[serde(deserialize_with = "de_ip")]
    pub address: IpAddr,
    /// Its registration API port (default: `spec.hub.apiPort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_port: Option<u16>,
    /// How to trust it (default: `spec.hub.tls`, right with a `caFile` or `mode:
    /// Disabled`; a pinned fingerprint is one hub's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HubClientTls>,
}

impl HubRef {
    /// Every hub the runner may register with, in order: this one, then the alternates
    /// (address, API port, TLS).
    pub fn all(&self) -> Vec<(IpAddr, u16, Option<&HubClientTls>)> {
        std::iter::once((self.address, self.api_port, self.tls.as_ref()))
            .chain(self.alternates.iter().map(|other| {
                (
                    other.address,
                    other.api_port.unwrap_or(self.api_port),
                    other.tls.as_ref().or(self.tls.as_ref()),
                )
            }))
            .collect()
    }
}

/// A runner the hub serves without registration (e.g. a node built from kernel VXLAN pieces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticRunner {
    /// Its name in the runner pool.
    pub name: String,
    /// Its VTEP address (of the hub's `localAddress`'s family).
    #[serde(deserialize_with = "de_ip")]
    pub address: IpAddr,
}

/// Spec of the Overlay: this node's VTEP and its place in the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverlaySpec {
    /// `mesh`, `hub` or `runner`.
    pub role: OverlayRole,
    /// The address the other nodes reach this one at (the VTEP's, and the hub API's); an
    /// address of an interface in vswitchd's namespace, never loopback or 0.0.0.0. IPv4 or
    /// IPv6: the underlay's family, which every peer, runner and hub address shares.
    #[serde(deserialize_with = "de_ip")]
    pub local_address: IpAddr,
    /// The VXLAN UDP port (must match on every node).
    #[serde(default = "default_overlay_port")]
    pub port: u16,
    /// Runner N gets VNI `vniBase + N` (must match on every node).
    #[serde(default = "default_vni_base")]
    pub vni_base: u32,
    /// The MTU of interfaces on overlay subnets (must match on every node): the underlay's
    /// MTU minus 50 over IPv4, minus 70 over IPv6. Default 1450 over IPv4, 1430 over IPv6
    /// (a 1500-byte underlay); read it with [`OverlaySpec::mtu`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
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
    /// Mesh: the other nodes' VTEP addresses (of `localAddress`'s family).
    #[serde(
        default,
        deserialize_with = "de_ip_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers: Vec<IpAddr>,
    /// Runner: the hub to register with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubRef>,
    /// Hub: the TCP port of the registration API (on `localAddress`).
    #[serde(default = "default_hub_api_port")]
    pub api_port: u16,
    /// Hub: the bearer token runners must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Hub: the TLS of the registration API (default: on, with a generated certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HubTls>,
    /// Hub: how runner subnets are carved (default 10.0.0.0/8 in /16s, gateway .0.1, hub
    /// .0.254, hub address 10.0.0.1).
    #[serde(default)]
    pub address_plan: vxlan::AddressPlan,
    /// Hub: runners served without registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runners: Vec<StaticRunner>,
    /// Hub: where the runner registry is kept (default: the hub's state directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<Box<OverlayStoreSpec>>,
    /// Hub: how runners reach each other: `ViaHub` (default) or `Direct` (runners that
    /// support it learn the others and tunnel to them straight; the runners must reach each
    /// other's `localAddress` on the underlay).
    #[serde(default, skip_serializing_if = "RunnerToRunner::is_via_hub")]
    pub runner_to_runner: RunnerToRunner,
    /// Hub and runner: `VXLAN` (default) or `None`: each runner's subnet is routed to its
    /// node's address on the underlay link (the switch's own, an Uplink address on
    /// `localAddress`'s link), without a tunnel header. Every node must agree.
    #[serde(default, skip_serializing_if = "vxlan::Encapsulation::is_vxlan")]
    pub encapsulation: vxlan::Encapsulation,
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
    pub plan: Option<Box<vxlan::RunnerPlan>>,
    /// Runner: when the hub last answered (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<u64>,
    /// Hub: the SHA-256 fingerprint of the certificate the registration API serves (what a
    /// runner pins in `spec.hub.tls.fingerprint`); absent while not serving, or without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<String>,
    /// Runner: the hub that admitted it last (one of `spec.hub` and its alternates): its
    /// tunnel goes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_address: Option<IpAddr>,
    /// Hub: why its shared store (`spec.store`) cannot be used; absent when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_message: Option<String>,
    /// Runner: the other runners, as the hub answered them when it asks runners to reach
    /// each other directly (`spec.runnerToRunner: Direct` on the hub); persisted, so direct
    /// paths survive a restart while the hub is away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Box<vxlan::OverlayPeers>>,
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

impl OverlaySpec {
    /// The overlay MTU: `mtu` when given, else the default of the underlay's family
    /// ([`DEFAULT_OVERLAY_MTU`] over IPv4, [`DEFAULT_OVERLAY_MTU_IPV6`] over IPv6).
    pub fn mtu(&self) -> u16 {
        if self.encapsulation == vxlan::Encapsulation::None {
            // Nothing is added to the frames: the underlay's own MTU.
            return self.mtu.unwrap_or(DEFAULT_UNENCAPSULATED_MTU);
        }
        self.mtu.unwrap_or(if self.local_address.is_ipv6() {
            DEFAULT_OVERLAY_MTU_IPV6
        } else {
            DEFAULT_OVERLAY_MTU
        })
    }
}

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
        // The runner list belongs to the overlay it came from: another role, VNI base or hub
        // starts without it (the new hub's heartbeats bring its own).
        if let Some(old) = old {
            let hub = |spec: &OverlaySpec| spec.hub.as_ref().map(|hub| hub.address);
            if old.spec.role != self.spec.role
                || old.spec.vni_base != self.spec.vni_base
                || hub(&old.spec) != hub(&self.spec)
            {
                self.status.peers = None;
            }
        }
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        errors.check(check_overlay(cx.origin, cx.next, self));
        check_tls(cx.origin, &self.spec, errors);
        check_store(cx.origin, &self.spec, errors);
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
                .map(|hub| std::net::SocketAddr::new(hub.address, hub.api_port));
            let subnet = status.plan.as_ref().map(|plan| plan.subnet);
            row.extend([
                spec.mtu().to_string(),
                cells(hub.iter()),
                cells(subnet.iter()),
                labels_cell(&self.metadata),
                cell(status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}

/// The default MTU without encapsulation: that of a 1500-byte underlay, nothing added.
pub const DEFAULT_UNENCAPSULATED_MTU: u16 = 1500;

/// `encapsulation: None`: a hub or runner over IPv4, routing on the underlay link through
/// the Uplink (which must have an address on `localAddress`'s link); a hub has no IPv6 plan
/// (routed Networks are IPv4) and lets its runners route to each other (it cannot carry
/// their traffic: it would route it back out of the link it came in by).
fn check_unencapsulated(origin: &Origin, next: &State, spec: &OverlaySpec) -> Result<(), ApiError> {
    const FIELD: &str = "spec.encapsulation";
    if spec.role == OverlayRole::Mesh {
        return Err(origin.invalid(
            FIELD,
            "a mesh stretches Subnets between nodes, which needs VXLAN; routing without encapsulation is for a hub and its runners (role hub or runner)",
        ));
    }
    if spec.local_address.is_ipv6() {
        return Err(origin.invalid(
            FIELD,
            format!(
                "without encapsulation the overlay is routed over the Uplink's IPv4 link, and localAddress {} is IPv6; give this node's IPv4 address on the underlay",
                spec.local_address
            ),
        ));
    }
    if spec.role == OverlayRole::Hub {
        if spec.address_plan.ipv6.is_some() {
            return Err(origin.invalid(
                "spec.addressPlan.ipv6",
                "without encapsulation the overlay is routed through the Uplink, which routes IPv4 only; remove addressPlan.ipv6, or keep encapsulation: VXLAN",
            ));
        }
        if spec.runner_to_runner != RunnerToRunner::Direct {
            return Err(origin.invalid(
                "spec.runnerToRunner",
                "without encapsulation runners route to each other on the underlay link (the hub would have to route their traffic back out of the link it came in by): write runnerToRunner: Direct",
            ));
        }
    }
    if overlay::routed_address(next, spec.local_address).is_none() {
        let uplinks: Vec<String> = next
            .uplinks
            .values()
            .map(|uplink| {
                let addresses: Vec<String> = uplink
                    .spec
                    .addresses
                    .iter()
                    .map(|a| a.0.to_string())
                    .collect();
                format!(
                    "Uplink {:?} has {}",
                    uplink.metadata.name,
                    addresses.join(", ")
                )
            })
            .collect();
        return Err(origin.invalid(
            FIELD,
            format!(
                "without encapsulation this node routes the overlay on its underlay link through the Uplink, and no Uplink address is on the link of localAddress {} ({}); add an address on that link to the Uplink (e.g. its interface's prefix), in the same input or first",
                spec.local_address,
                if uplinks.is_empty() {
                    "there is no Uplink".to_owned()
                } else {
                    uplinks.join("; ")
                }
            ),
        ));
    }
    Ok(())
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
    if !(576..=9000).contains(&spec.mtu()) {
        return Err(origin.invalid(
            "spec.mtu",
            format!(
                "{} is out of range: use 576..=9000 (the underlay MTU minus 50 over IPv4, minus 70 over IPv6: 1450 or 1430 for a 1500-byte underlay, 8950 or 8930 for jumbo frames)",
                spec.mtu()
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
        "spec.tls",
        spec.tls.is_some() && spec.role != OverlayRole::Hub,
        "hub",
    )?;
    only(
        "spec.runners",
        !spec.runners.is_empty() && spec.role != OverlayRole::Hub,
        "hub",
    )?;
    only(
        "spec.store",
        spec.store.is_some() && spec.role != OverlayRole::Hub,
        "hub",
    )?;
    only(
        "spec.runnerToRunner",
        spec.runner_to_runner != RunnerToRunner::ViaHub && spec.role != OverlayRole::Hub,
        "hub",
    )?;
    match spec.role {
        OverlayRole::Mesh => {
            for (i, peer) in spec.peers.iter().enumerate() {
                let field = format!("spec.peers[{i}]");
                overlay::check_reachable(origin, &field, *peer)?;
                overlay::check_family(origin, &field, *peer, spec.local_address)?;
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
            overlay::check_family(origin, "spec.hub.address", *address, spec.local_address)?;
            let mut seen = vec![*address];
            for (i, other) in spec.hub.iter().flat_map(|hub| &hub.alternates).enumerate() {
                let field = format!("spec.hub.alternates[{i}].address");
                overlay::check_reachable(origin, &field, other.address)?;
                overlay::check_family(origin, &field, other.address, spec.local_address)?;
                if seen.contains(&other.address) {
                    return Err(origin.invalid(
                        &field,
                        format!("{} is listed twice among the hubs", other.address),
                    ));
                }
                seen.push(other.address);
                if other.api_port == Some(0) {
                    return Err(origin.invalid(
                        &format!("spec.hub.alternates[{i}].apiPort"),
                        "must be 1..=65535",
                    ));
                }
            }
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
            let max = spec
                .address_plan
                .max_runners(spec.vni_base)
                .map_err(|err| origin.invalid("spec.addressPlan", err))?;
            // A plan that drops a registered runner's subnet would stop the hub serving
            // anyone (its pool cannot shrink below an ID in use).
            let beyond = next
                .runner_pool
                .iter()
                .flat_map(vxlan::RunnerPool::runners)
                .filter(|runner| runner.id.get() > max.get())
                .last();
            if let Some(runner) = beyond {
                return Err(origin.invalid(
                    "spec.addressPlan",
                    format!(
                        "runner {:?} holds ID {}, and this plan has subnets for runners 1 to {max} only; keep a plan with room for every registered runner",
                        runner.name, runner.id
                    ),
                ));
            }
            let mut names = std::collections::BTreeSet::new();
            for (i, runner) in spec.runners.iter().enumerate() {
                let field = format!("spec.runners[{i}]");
                vxlan::membership::validate_runner_name(&runner.name)
                    .map_err(|err| origin.invalid(&format!("{field}.name"), err))?;
                overlay::check_reachable(origin, &format!("{field}.address"), runner.address)?;
                overlay::check_family(
                    origin,
                    &format!("{field}.address"),
                    runner.address,
                    spec.local_address,
                )?;
                if !names.insert(runner.name.as_str()) {
                    return Err(origin.invalid(
                        &format!("{field}.name"),
                        format!("{:?} is listed twice", runner.name),
                    ));
                }
            }
        }
    }
    if spec.encapsulation == vxlan::Encapsulation::None {
        check_unencapsulated(origin, next, spec)?;
    }
    // Subnets stretched over given remote VTEPs keep working only over their family.
    for (name, subnet) in &next.subnets {
        if let Some((i, vtep)) = subnet
            .spec
            .remote_vteps
            .iter()
            .enumerate()
            .find(|(_, vtep)| vtep.is_ipv6() != spec.local_address.is_ipv6())
        {
            return Err(origin.invalid(
                "spec.localAddress",
                format!(
                    "{} is of the other family than Subnet {name:?}'s spec.remoteVteps[{i}] \
                     {vtep}: the underlay is of one family (change that Subnet's remoteVteps \
                     first, or keep localAddress's family)",
                    spec.local_address
                ),
            ));
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

/// Checks the TLS fields of a hub (`spec.tls`) or runner (`spec.hub.tls`), pushing every
/// problem with its field path. Files are read here, on the daemon's node, so that a path
/// that does not work is refused when applied rather than found by the agent later.
fn check_tls(origin: &Origin, spec: &OverlaySpec, errors: &mut Errors) {
    match (spec.role, &spec.tls, &spec.hub) {
        (OverlayRole::Hub, Some(tls), _) => check_hub_tls(origin, tls, errors),
        (OverlayRole::Runner, _, Some(hub)) => {
            match &hub.tls {
                Some(tls) => check_runner_tls(origin, "spec.hub.tls", tls, errors),
                None => errors.push(origin.invalid(
                    "spec.hub.tls",
                    "a runner must know how to trust its hub: set tls: {fingerprint: \
                     AB:CD:...} (the hub's `vswitchctl overlay` shows it) or tls: {caFile: \
                     /path/ca.pem}, or tls: {mode: Disabled} for plain HTTP (the token then \
                     crosses the underlay in clear)",
                )),
            }
            for (i, other) in hub.alternates.iter().enumerate() {
                if let Some(tls) = &other.tls {
                    check_runner_tls(
                        origin,
                        &format!("spec.hub.alternates[{i}].tls"),
                        tls,
                        errors,
                    );
                }
            }
        }
        _ => {}
    }
}

/// Checks `spec.store`, pushing every problem with its field path. TLS files are read here
/// (see [`check_tls`]).
fn check_store(origin: &Origin, spec: &OverlaySpec, errors: &mut Errors) {
    let Some(store) = &spec.store else {
        return;
    };
    if !spec.runners.is_empty() {
        errors.push(origin.invalid(
            "spec.runners",
            "static runners are kept in the hub's state directory, not in the shared store: \
             with spec.store, let those nodes register (role: runner), or remove spec.store",
        ));
    }
    let Some(etcd) = &store.etcd else {
        errors.push(origin.invalid(
            "spec.store",
            "names no store: write store: {etcd: {endpoints: [http://HOST:2379]}}, or remove \
             it to keep the runners in the hub's state directory",
        ));
        return;
    };
    if etcd.endpoints.is_empty() {
        errors.push(origin.invalid(
            "spec.store.etcd.endpoints",
            "needs at least one client URL of the etcd cluster, e.g. [http://10.0.0.5:2379]",
        ));
    }
    let mut https = false;
    let mut seen = std::collections::BTreeSet::new();
    for (i, url) in etcd.endpoints.iter().enumerate() {
        let field = format!("spec.store.etcd.endpoints[{i}]");
        match crate::etcd::Endpoint::parse(url) {
            Ok(endpoint) => https |= endpoint.tls,
            Err(why) => errors.push(origin.invalid(&field, why)),
        }
        if !seen.insert(url.as_str()) {
            errors.push(origin.invalid(&field, format!("{url:?} is listed twice")));
        }
    }
    let prefix = &etcd.prefix;
    if !prefix.starts_with('/')
        || !prefix.ends_with('/')
        || prefix.len() > 200
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        errors.push(origin.invalid(
            "spec.store.etcd.prefix",
            format!(
                "{prefix:?} is not a key prefix: it must start and end with / (e.g. \
                 {DEFAULT_ETCD_PREFIX}), without spaces, at most 200 bytes"
            ),
        ));
    }
    if !(2..=300).contains(&etcd.lease_seconds) {
        errors.push(origin.invalid(
            "spec.store.etcd.leaseSeconds",
            format!(
                "{} is out of range: use 2..=300 (the hub renews its lease every third of it)",
                etcd.lease_seconds
            ),
        ));
    }
    match (&etcd.tls, https) {
        (None, true) => errors.push(origin.invalid(
            "spec.store.etcd.tls",
            "https endpoints need tls: {caFile: /path/etcd-ca.pem} (the CA etcd's \
             certificate chains to)",
        )),
        (Some(_), false) if !etcd.endpoints.is_empty() => errors.push(origin.invalid(
            "spec.store.etcd.tls",
            "applies to https:// endpoints only; the endpoints are http://",
        )),
        (Some(tls), _) => {
            if let Err(error) = etcd_tls_config(origin, tls) {
                errors.push(error);
            }
        }
        (None, false) => {}
    }
}

/// The TLS client configuration of `spec.store.etcd.tls`, its files read.
///
/// # Errors
/// [`ApiError`] naming the field whose file cannot be used.
pub fn etcd_tls_config(
    origin: &Origin,
    tls: &EtcdTls,
) -> Result<std::sync::Arc<rustls::ClientConfig>, ApiError> {
    let ca = absolute_path(origin, "spec.store.etcd.tls.caFile", &tls.ca_file)?;
    let identity = match (&tls.certificate_file, &tls.key_file) {
        (None, None) => None,
        (Some(certificate), Some(key)) => Some((
            absolute_path(origin, "spec.store.etcd.tls.certificateFile", certificate)?,
            absolute_path(origin, "spec.store.etcd.tls.keyFile", key)?,
        )),
        (Some(_), None) => {
            return Err(origin.invalid(
                "spec.store.etcd.tls.keyFile",
                "certificateFile needs its keyFile (PEM)",
            ));
        }
        (None, Some(_)) => {
            return Err(origin.invalid(
                "spec.store.etcd.tls.certificateFile",
                "keyFile needs its certificateFile (PEM)",
            ));
        }
    };
    crate::tls::etcd_client_config(
        &ca,
        identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .map_err(|(field, error)| origin.invalid(&format!("spec.store.etcd.tls.{field}"), error))
}

/// An absolute path, or an error for `field`.
fn absolute_path(origin: &Origin, field: &str, path: &str) -> Result<PathBuf, ApiError> {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(origin.invalid(
            field,
            format!(
                "{:?} is not an absolute path: vswitchd reads it, from its own working \
                 directory",
                path.display()
            ),
        ))
    }
}

fn check_hub_tls(origin: &Origin, tls: &HubTls, errors: &mut Errors) {
    if tls.mode == TlsMode::Disabled {
        for (field, present) in [
            ("spec.tls.certificateFile", tls.certificate_file.is_some()),
            ("spec.tls.keyFile", tls.key_file.is_some()),
        ] {
            if present {
                errors.push(origin.invalid(
                    field,
                    "applies with TLS only; remove it, or remove mode: Disabled",
                ));
            }
        }
        return;
    }
    let (certificate, key) = match (&tls.certificate_file, &tls.key_file) {
        (None, None) => return,
        (Some(certificate), Some(key)) => (certificate, key),
        (Some(_), None) => {
            errors.push(origin.invalid(
                "spec.tls.keyFile",
                "certificateFile needs its keyFile (PEM); or remove both to let the hub \
                 generate a self-signed certificate",
            ));
            return;
        }
        (None, Some(_)) => {
            errors.push(origin.invalid(
                "spec.tls.certificateFile",
                "keyFile needs its certificateFile (PEM); or remove both to let the hub \
                 generate a self-signed certificate",
            ));
            return;
        }
    };
    let certificate_path = absolute_path(origin, "spec.tls.certificateFile", certificate);
    let key_path = absolute_path(origin, "spec.tls.keyFile", key);
    let certificates = certificate_path.and_then(|path| {
        crate::tls::read_certificates(&path)
            .map_err(|error| origin.invalid("spec.tls.certificateFile", error))
    });
    let key = key_path.and_then(|path| {
        crate::tls::read_private_key(&path)
            .map_err(|error| origin.invalid("spec.tls.keyFile", error))
    });
    match (certificates, key) {
        (Ok(certificates), Ok(key)) => {
            if let Err(error) = crate::tls::server_config(certificates, key) {
                errors.push(origin.invalid("spec.tls.keyFile", error));
            }
        }
        (certificates, key) => {
            errors.check(certificates.map(drop));
            errors.check(key.map(drop));
        }
    }
}

fn check_runner_tls(origin: &Origin, path: &str, tls: &HubClientTls, errors: &mut Errors) {
    let field = |name: &str| format!("{path}.{name}");
    if tls.mode == TlsMode::Disabled {
        for (field, present) in [
            ("caFile", tls.ca_file.is_some()),
            ("serverName", tls.server_name.is_some()),
            ("fingerprint", tls.fingerprint.is_some()),
        ] {
            if present {
                errors.push(origin.invalid(
                    &format!("{path}.{field}"),
                    "applies with TLS only; remove it, or remove mode: Disabled",
                ));
            }
        }
        return;
    }
    match (&tls.ca_file, &tls.fingerprint) {
        (None, None) => errors.push(origin.invalid(
            path,
            "name how to trust the hub: fingerprint (the hub's `vswitchctl overlay` shows it) \
             or caFile",
        )),
        (Some(_), Some(_)) => errors.push(origin.invalid(
            &field("fingerprint"),
            "give either caFile or fingerprint, not both",
        )),
        _ => {}
    }
    if let Some(fingerprint) = &tls.fingerprint {
        errors.check(
            crate::tls::Fingerprint::parse(fingerprint)
                .map(drop)
                .map_err(|error| origin.invalid(&field("fingerprint"), error)),
        );
        if tls.server_name.is_some() {
            errors.push(origin.invalid(
                &field("serverName"),
                "applies with caFile only: a pinned fingerprint names the certificate itself",
            ));
        }
    }
    if let Some(file) = &tls.ca_file {
        let trust = absolute_path(origin, &field("caFile"), file).and_then(|path| {
            let trust = crate::tls::HubTrust::Ca {
                file: path,
                server_name: None,
            };
            crate::tls::client_config(&trust, std::net::IpAddr::from([0, 0, 0, 0]))
                .map_err(|error| origin.invalid(&field("caFile"), error))
        });
        errors.check(trust.map(drop));
    }
    if let Some(name) = &tls.server_name {
        errors.check(
            rustls::pki_types::ServerName::try_from(name.as_str())
                .map(drop)
                .map_err(|error| {
                    origin.invalid(
                        &field("serverName"),
                        format!("{name:?} is not a DNS name or an IP address: {error}"),
                    )
                }),
        );
    }
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

    fn store_errors(store: &str) -> Vec<String> {
        let mut hub = overlay_of(OverlayRole::Hub);
        hub.spec.store = Some(serde_norway::from_str(store).expect("store YAML"));
        let mut errors = Errors::new();
        check_store(
            &Origin::resource(Kind::Overlay, "node-a"),
            &hub.spec,
            &mut errors,
        );
        match errors.into_result() {
            Ok(()) => Vec::new(),
            Err(ApiError::Aggregate(all)) => all.iter().map(ToString::to_string).collect(),
            Err(one) => vec![one.to_string()],
        }
    }

    /// `spec.store.etcd` is checked whole: every wrong field named with its path.
    #[test]
    fn the_etcd_store_is_checked_field_by_field() {
        assert!(store_errors("etcd: {endpoints: ['http://10.0.0.5:2379']}").is_empty());
        assert!(
            store_errors(
                "etcd: {endpoints: ['http://10.0.0.5:2379', 'http://10.0.0.6:2379'], prefix: /ci/overlay/, leaseSeconds: 30}"
            )
            .is_empty()
        );
        let errors = store_errors(
            "etcd: {endpoints: ['10.0.0.5:2379', 'http://a:1', 'http://a:1', 'https://b:2379/'], prefix: nope, leaseSeconds: 1}",
        );
        let joined = errors.join("\n");
        for field in [
            "spec.store.etcd.endpoints[0]",
            "spec.store.etcd.endpoints[2]",
            "spec.store.etcd.prefix",
            "spec.store.etcd.leaseSeconds",
            "spec.store.etcd.tls",
        ] {
            assert!(joined.contains(field), "{field} is named:\n{joined}");
        }
        assert!(joined.contains("listed twice"), "{joined}");
        assert!(joined.contains("https endpoints need tls"), "{joined}");
        let joined = store_errors("{}").join("\n");
        assert!(
            joined.contains("spec.store") && joined.contains("names no store"),
            "{joined}"
        );
        let joined = store_errors("etcd: {endpoints: []}").join("\n");
        assert!(joined.contains("spec.store.etcd.endpoints"), "{joined}");
        let joined =
            store_errors("etcd: {endpoints: ['http://a:2379'], tls: {caFile: /etc/ca.pem}}")
                .join("\n");
        assert!(
            joined.contains("applies to https:// endpoints only"),
            "{joined}"
        );
        let joined = store_errors(
            "etcd: {endpoints: ['https://a:2379'], tls: {caFile: relative.pem, certificateFile: /c.pem}}",
        )
        .join("\n");
        assert!(
            joined.contains("spec.store.etcd.tls.caFile") && joined.contains("absolute"),
            "{joined}"
        );
        let joined = store_errors(
            "etcd: {endpoints: ['https://a:2379'], tls: {caFile: /nonexistent/ca.pem}}",
        )
        .join("\n");
        assert!(
            joined.contains("spec.store.etcd.tls.caFile") && joined.contains("/nonexistent/ca.pem"),
            "{joined}"
        );
        // Unknown fields are refused by the parser, with their path.
        let parsed: Result<OverlayStoreSpec, _> =
            serde_norway::from_str("etcd: {endpoints: ['http://a:1'], leases: 3}");
        assert!(parsed.is_err());
        // Static runners live in the state directory only.
        let mut hub = overlay_of(OverlayRole::Hub);
        hub.spec.store =
            Some(serde_norway::from_str("etcd: {endpoints: ['http://a:2379']}").expect("store"));
        hub.spec.runners = vec![StaticRunner {
            name: "kernel-node".into(),
            address: "192.168.50.9".parse().unwrap(),
        }];
        let mut errors = Errors::new();
        check_store(
            &Origin::resource(Kind::Overlay, "node-a"),
            &hub.spec,
            &mut errors,
        );
        let joined = errors
            .into_result()
            .expect_err("static runners")
            .to_string();
        assert!(
            joined.contains("spec.runners") && joined.contains("static runners"),
            "{joined}"
        );
        // Only a hub has a store.
        let mut runner = overlay_of(OverlayRole::Runner);
        runner.spec.store = Some(Box::default());
        let err = check(&runner)
            .expect_err("a runner has no store")
            .to_string();
        assert!(
            err.contains("spec.store") && err.contains("role hub"),
            "{err}"
        );
    }

    /// A hub's plan must keep a subnet for every registered runner.
    #[test]
    fn a_plan_cannot_drop_a_registered_runner() {
        let mut hub = overlay_of(OverlayRole::Hub);
        let mut state = state_with(hub.clone());
        let mut pool = vxlan::RunnerPool::default();
        for n in 1..=20 {
            pool.register(&format!("r{n}"), "192.168.50.2".parse().unwrap(), 1)
                .unwrap();
        }
        state.runner_pool = Some(pool);
        let origin = Origin::resource(Kind::Overlay, "node-a");
        check_overlay(&origin, &state, &hub).expect("the default plan has room for 255");
        hub.spec.address_plan = vxlan::AddressPlan {
            overlay: "10.16.0.0/12".parse().unwrap(),
            hub_address: "10.16.0.1".parse().unwrap(),
            ..vxlan::AddressPlan::default()
        };
        let err = check_overlay(&origin, &state, &hub)
            .expect_err("15 runners only")
            .to_string();
        assert!(
            err.contains("spec.addressPlan") && err.contains("runner \"r20\" holds ID 20"),
            "{err}"
        );
    }

    #[test]
    fn defaults_follow_the_issue() {
        let o = overlay_of(OverlayRole::Hub);
        assert_eq!(
            (o.spec.port, o.spec.vni_base, o.spec.mtu()),
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

    /// The runner list a runner follows belongs to its overlay: pointed at another hub (or
    /// another VNI base), the runner starts without it; other changes keep it.
    #[test]
    fn a_runner_pointed_at_another_hub_forgets_the_runner_list() {
        let mut old = overlay_of(OverlayRole::Runner);
        old.status.peers = Some(Box::new(
            vxlan::RunnerPool::default().peers(&vxlan::AddressPlan::default(), 100),
        ));
        let mut same = old.clone();
        same.status = OverlayStatus::default();
        same.spec.heartbeat_seconds = 2;
        same.carry_status(Some(&old));
        assert!(same.status.peers.is_some(), "same hub");
        let mut moved = old.clone();
        moved.status = OverlayStatus::default();
        if let Some(hub) = moved.spec.hub.as_mut() {
            hub.address = "192.168.50.9".parse().expect("address");
        }
        moved.carry_status(Some(&old));
        assert!(moved.status.peers.is_none(), "another hub");
    }

    /// `encapsulation: None`: hub and runners over IPv4 with an Uplink address on
    /// localAddress's link; the hub without an IPv6 plan and with Direct runners; never a
    /// mesh. Every refusal names its field.
    #[test]
    fn without_encapsulation_a_node_needs_an_uplink_on_its_link() {
        use crate::control::testing::apply;
        let uplink = |addresses: &str, gateway: &str| {
            apply(
                &State::default(),
                &format!(
                    "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {{name: wan}}\nspec: \
                     {{interface: eth9, addresses: [{addresses}], gateway: {gateway}}}\n"
                ),
            )
        };
        let on_link = uplink("192.168.50.11/24", "192.168.50.254");
        let check_in = |state: &State, overlay: &Overlay| {
            let mut state = state.clone();
            state
                .overlays
                .insert(overlay.metadata.name.clone(), overlay.clone());
            check_overlay(&Origin::resource(Kind::Overlay, "node-a"), &state, overlay)
                .map_err(|error| error.to_string())
        };
        let mut hub = overlay_of(OverlayRole::Hub);
        hub.spec.encapsulation = vxlan::Encapsulation::None;
        hub.spec.runner_to_runner = RunnerToRunner::Direct;
        assert_eq!(check_in(&on_link, &hub), Ok(()));
        assert_eq!(hub.spec.mtu(), 1500, "nothing is added to the frames");
        let mut runner = overlay_of(OverlayRole::Runner);
        runner.spec.encapsulation = vxlan::Encapsulation::None;
        assert_eq!(check_in(&on_link, &runner), Ok(()));
        let refused = |state: &State, overlay: &Overlay, field: &str, words: &str| {
            let error = check_in(state, overlay).expect_err(words);
            assert!(
                error.contains(&format!("{field}: ")) && error.contains(words),
                "want {field} and {words:?} in {error}"
            );
        };
        refused(
            &State::default(),
            &hub,
            "spec.encapsulation",
            "no Uplink address is on the link of localAddress 192.168.50.1 (there is no Uplink)",
        );
        refused(
            &uplink("192.168.60.11/24", "192.168.60.254"),
            &runner,
            "spec.encapsulation",
            "Uplink \"wan\" has 192.168.60.11/24",
        );
        refused(
            &uplink("192.168.60.11/24, 192.168.50.11", "192.168.60.254"),
            &hub,
            "spec.encapsulation",
            "no Uplink address is on the link",
        );
        let mut via_hub = hub.clone();
        via_hub.spec.runner_to_runner = RunnerToRunner::ViaHub;
        refused(
            &on_link,
            &via_hub,
            "spec.runnerToRunner",
            "write runnerToRunner: Direct",
        );
        let mut six = hub.clone();
        six.spec.address_plan.ipv6 = Some(vxlan::AddressPlan6 {
            overlay: "fd00:10::/48".parse().unwrap(),
            hub_address: None,
        });
        refused(&on_link, &six, "spec.addressPlan.ipv6", "routes IPv4 only");
        let mut mesh = overlay_of(OverlayRole::Mesh);
        mesh.spec.encapsulation = vxlan::Encapsulation::None;
        refused(&on_link, &mesh, "spec.encapsulation", "needs VXLAN");
        let mut v6 = runner.clone();
        v6.spec.local_address = "fd00::2".parse().unwrap();
        if let Some(hub) = &mut v6.spec.hub {
            hub.address = "fd00::1".parse().unwrap();
        }
        refused(&on_link, &v6, "spec.encapsulation", "is IPv6");
        // The Uplink cannot leave the link, nor go, while the Overlay routes there.
        let mut state = on_link.clone();
        state.overlays.insert(runner.metadata.name.clone(), runner);
        let moved = crate::control::testing::refusal(
            &state,
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {name: wan}\nspec: \
             {interface: eth9, addresses: [192.168.60.11/24], gateway: 192.168.60.254}\n",
        );
        assert_eq!(moved.status(), 409, "{moved}");
        assert!(
            moved.to_string().contains("routes without encapsulation"),
            "{moved}"
        );
        let deleted = crate::control::validate::check_delete(&state, Kind::Uplink, "wan")
            .expect_err("the Overlay routes through it");
        assert!(
            deleted
                .to_string()
                .contains("an Overlay without encapsulation: node-a"),
            "{deleted}"
        );
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
        let mut direct = overlay_of(OverlayRole::Runner);
        direct.spec.runner_to_runner = RunnerToRunner::Direct;
        let error = check(&direct).unwrap_err().to_string();
        assert!(
            error.contains("spec.runnerToRunner") && error.contains("role hub only"),
            "{error}"
        );
        let mut mtu = overlay_of(OverlayRole::Mesh);
        mtu.spec.mtu = Some(100);
        assert!(check(&mtu).unwrap_err().to_string().contains("8950"));
        let mut ports = overlay_of(OverlayRole::Mesh);
        ports.spec.source_ports = "9-3".into();
        assert!(check(&ports).is_err());
    }

    /// An IPv6 underlay: every address of the other family is refused with its path, the
    /// MTU defaults to 1430, unusable IPv6 addresses are refused with the reason.
    #[test]
    fn an_ipv6_underlay_is_one_family() {
        let ipv6 = |o: &mut Overlay| o.spec.local_address = "fd00:50::1".parse().unwrap();
        let mut mesh = overlay_of(OverlayRole::Mesh);
        ipv6(&mut mesh);
        let err = check(&mesh).unwrap_err().to_string();
        assert!(
            err.contains("spec.peers[0]") && err.contains("192.168.50.2 is an IPv4 address"),
            "{err}"
        );
        mesh.spec.peers = vec!["fd00:50::2".parse().unwrap()];
        check(&mesh).expect("an IPv6 mesh");
        assert_eq!(mesh.spec.mtu(), 1430, "1500 minus 70 over IPv6");
        mesh.spec.mtu = Some(8930);
        assert_eq!(mesh.spec.mtu(), 8930, "given, kept");

        let mut runner = overlay_of(OverlayRole::Runner);
        ipv6(&mut runner);
        let err = check(&runner).unwrap_err().to_string();
        assert!(err.contains("spec.hub.address"), "{err}");
        if let Some(hub) = &mut runner.spec.hub {
            hub.address = "fd00:50::9".parse().unwrap();
        }
        check(&runner).expect("an IPv6 runner");

        let mut hub = overlay_of(OverlayRole::Hub);
        ipv6(&mut hub);
        hub.spec.runners = vec![StaticRunner {
            name: "kernel".into(),
            address: "192.168.50.9".parse().unwrap(),
        }];
        let err = check(&hub).unwrap_err().to_string();
        assert!(err.contains("spec.runners[0].address"), "{err}");
        hub.spec.runners[0].address = "fd00:50::9".parse().unwrap();
        check(&hub).expect("an IPv6 hub");

        // A Subnet stretched over IPv4 remote VTEPs keeps the underlay IPv4.
        let subnet: Subnet = serde_norway::from_str(
            "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: s}\nspec: {network: n, cidr: 10.9.0.0/24, gateway: 10.9.0.1, vni: 9, remoteVteps: [192.168.50.7]}\n",
        )
        .unwrap();
        let mut state = state_with(mesh.clone());
        state.subnets.insert("s".into(), subnet);
        let origin = Origin::resource(Kind::Overlay, "node-a");
        let err = check_overlay(&origin, &state, &mesh)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.localAddress") && err.contains("spec.remoteVteps[0] 192.168.50.7"),
            "{err}"
        );
        for (bad, why) in [
            ("fe80::1", "link-local"),
            ("::ffff:192.168.50.1", "IPv4-mapped"),
            ("ff02::1", "not a unicast address"),
            ("::1", "loopback"),
        ] {
            let mut o = overlay_of(OverlayRole::Hub);
            o.spec.local_address = bad.parse().unwrap();
            let err = check(&o).expect_err(bad).to_string();
            assert!(
                err.contains("spec.localAddress") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }
}
