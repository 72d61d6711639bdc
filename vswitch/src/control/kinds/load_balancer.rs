//! `LoadBalancer`: a virtual IP in a Network whose connections are spread over the
//! NetworkInterfaces its selector picks, by Maglev consistent hashing (the `lb` crate).
//!
//! The model is family-agnostic (addresses are `IpAddr`), as seed 004 has it; the datapath
//! is IPv4 until the dual-stack work, so an IPv6 family or address is refused with a message
//! that says so. `type: Internal` takes its addresses from `ips`, or has one allocated from
//! the Network's Subnets (the first, by name, with a free address); `type: Public` gets one
//! of the Uplink's, like a VirtualIP, and is reached from outside through the uplink.

use std::net::IpAddr;

#[allow(unused_imports)]
use super::prelude::*;
use crate::control::selector::LabelSelector;

/// The largest Maglev table a LoadBalancer may ask for (a prime; about 2 MiB of entries).
pub const MAX_TABLE_SIZE: u32 = 1_048_573;

/// Where a LoadBalancer is reachable from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoadBalancerType {
    /// On an address of the Uplink, from outside.
    Public,
    /// On an address of the Network, from its interfaces.
    Internal,
}

pub use crate::control::resource::IpFamily;

/// A load-balanced protocol.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum LbProtocol {
    /// TCP (the default).
    #[default]
    TCP,
    /// UDP.
    UDP,
    /// SCTP (refused: the connection tracker handles TCP and UDP).
    SCTP,
}

impl LbProtocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            LbProtocol::TCP => 6,
            LbProtocol::UDP => 17,
            LbProtocol::SCTP => 132,
        }
    }
}

/// One port (or range) of a LoadBalancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: LbProtocol,
    /// The port on the load balancer's addresses.
    pub port: u16,
    /// The last port of a range starting at `port` (each port maps to itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// The backends' port for `port`, when it differs (as a Kubernetes Service's
    /// `targetPort`); not with `endPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// Whether a client keeps its backend across connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SessionAffinity {
    /// Each connection is hashed on its own 5-tuple.
    #[default]
    None,
    /// A client's new connections go to the backend of its last one, until it has been
    /// idle for `sessionAffinityTimeoutSeconds`.
    ClientIP,
}

/// Active health checks of the backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Seconds between checks of a backend (default 5).
    #[serde(default = "default_interval")]
    pub interval_seconds: u32,
    /// Seconds a check waits for its answer (default 1; less than the interval).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u32,
    /// Passing checks in a row that make a backend healthy (default 2).
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
    /// Failing checks in a row that make it unhealthy (default 3).
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
}

fn default_interval() -> u32 {
    5
}
fn default_timeout() -> u32 {
    1
}
fn default_healthy() -> u32 {
    2
}
fn default_unhealthy() -> u32 {
    3
}
fn default_families() -> Vec<IpFamily> {
    vec![IpFamily::IPv4]
}

/// Spec of a LoadBalancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// `Public` or `Internal`.
    #[serde(rename = "type")]
    pub lb_type: LoadBalancerType,
    /// The families it has addresses of (default `[IPv4]`).
    #[serde(default = "default_families")]
    pub ip_families: Vec<IpFamily>,
    /// Internal only: its addresses; allocated when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// The Network its addresses and backends are in.
    pub network: String,
    /// The NetworkInterfaces (of the Network) that serve it. Without one it has no backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_selector: Option<LabelSelector>,
    /// The ports it serves (at least one).
    pub ports: Vec<LoadBalancerPort>,
    /// `None` (default) or `ClientIP`.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// With `ClientIP`: seconds of idleness after which a client's backend is forgotten
    /// (default 10800, as Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_timeout_seconds: Option<u32>,
    /// Active health checks; without them every selected backend counts as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Seconds the connections of a backend that left the selection may continue (default
    /// 30); it takes no new ones meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<u32>,
    /// The Maglev lookup table's size: a prime, at least 100 times the backends it will
    /// have (default 16381, as Cilium).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_table_size: Option<u32>,
}

impl LoadBalancerSpec {
    /// The affinity timeout in seconds (when `ClientIP`).
    pub fn affinity_timeout(&self) -> u32 {
        self.session_affinity_timeout_seconds.unwrap_or(10_800)
    }

    /// Seconds a leaving backend's connections continue.
    pub fn drain(&self) -> u32 {
        self.drain_seconds.unwrap_or(30)
    }

    /// The Maglev table size.
    pub fn table_size(&self) -> u32 {
        self.maglev_table_size.unwrap_or(lb::DEFAULT_TABLE_SIZE)
    }

    /// True when the selector picks an interface with `labels`.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.network_interface_selector
            .as_ref()
            .is_some_and(|selector| selector.matches(labels))
    }
}

/// Where a LoadBalancer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LoadBalancerState {
    /// Not in effect yet.
    #[default]
    Pending,
    /// Serving: at least one backend takes new connections.
    Ready,
    /// Its addresses answer, but no backend takes new connections (TCP gets a reset, UDP
    /// an ICMP port unreachable).
    NoBackends,
}

/// Backend counts of a LoadBalancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendCounts {
    /// NetworkInterfaces the selector picks (attached or not).
    pub selected: u32,
    /// Of those, taking new connections.
    pub healthy: u32,
    /// Failing their health checks.
    pub unhealthy: u32,
    /// Gone from the selection, their connections finishing.
    pub draining: u32,
}

/// Status of a LoadBalancer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerStatus {
    /// Its addresses (the spec's, or allocated; persisted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// `Pending`, `Ready` or `NoBackends` (computed when read).
    #[serde(default)]
    pub state: LoadBalancerState,
    /// Backend counts (computed when read).
    #[serde(default)]
    pub backends: BackendCounts,
}

/// A load-balanced virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `LoadBalancer`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: LoadBalancerSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: LoadBalancerStatus,
}

impl LoadBalancer {
    /// True when the LoadBalancer's selector picks `nic`: an interface of its namespace
    /// whose labels match (as a Service selects pods of its own namespace).
    pub fn selects(&self, nic: &super::network_interface::NetworkInterface) -> bool {
        nic.metadata.namespace() == self.metadata.namespace()
            && self.spec.selects(&nic.metadata.labels)
    }
}

impl ResourceKind for LoadBalancer {
    type Spec = LoadBalancerSpec;
    type Status = LoadBalancerStatus;

    const NAMESPACED: bool = true;

    const INFO: KindInfo = KindInfo {
        name: "LoadBalancer",
        plural: "loadbalancers",
        aliases: &["lb"],
        summary: "a virtual IP whose connections are spread over selected NetworkInterfaces (Maglev)",
        example: "\
apiVersion: vswitch/v1alpha1
kind: LoadBalancer
metadata:
  name: web
spec:
  type: Internal
  network: blue
  networkInterfaceSelector:
    matchLabels: {app: web}
  ports:
  - {protocol: TCP, port: 80, targetPort: 8080}
",
    };

    fn spec(&self) -> &LoadBalancerSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut LoadBalancerStatus {
        &mut self.status
    }

    /// Allocated addresses are kept (when the spec still allows them); the rest is computed.
    fn carry_status(&mut self, old: Option<&Self>) {
        let ips = old
            .filter(|old| old.spec.network == self.spec.network && self.spec.ips.is_empty())
            .map(|old| old.status.ips.clone())
            .unwrap_or_default();
        self.status = LoadBalancerStatus {
            ips,
            ..LoadBalancerStatus::default()
        };
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        check_load_balancer(cx, self, errors);
    }

    fn observe(&mut self, state: &State, view: &StatusView) {
        let live = view.load_balancers.get(&self.metadata.key());
        let selected = state
            .network_interfaces
            .values()
            .filter(|nic| self.selects(nic))
            .filter(|nic| {
                state
                    .subnets
                    .get(&nic.spec.subnet)
                    .is_some_and(|s| s.spec.network == self.spec.network)
            })
            .count();
        self.status.backends = live.map_or(
            BackendCounts {
                selected: u32::try_from(selected).unwrap_or(u32::MAX),
                ..BackendCounts::default()
            },
            |live| BackendCounts {
                selected: u32::try_from(selected).unwrap_or(u32::MAX),
                ..live.counts
            },
        );
        self.status.state = match live {
            None => LoadBalancerState::Pending,
            Some(live) if live.counts.healthy > 0 => LoadBalancerState::Ready,
            Some(_) => LoadBalancerState::NoBackends,
        };
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec![
            "NAME", "TYPE", "NETWORK", "IPS", "PORTS", "STATE", "BACKENDS",
        ];
        if wide {
            columns.extend(["AFFINITY", "LABELS"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let ports = self.spec.ports.iter().map(port_text);
        let backends = self.status.backends;
        let mut row = vec![
            self.metadata.name.clone(),
            json_text(&self.spec.lb_type),
            self.spec.network.clone(),
            cells(self.status.ips.iter()),
            cells(ports),
            json_text(&self.status.state),
            format!("{}/{}", backends.healthy, backends.selected),
        ];
        if wide {
            row.push(json_text(&self.spec.session_affinity));
            row.push(labels_cell(&self.metadata));
        }
        row
    }
}

/// `80/TCP`, `5000-5010/UDP`, `80->8080/TCP`.
fn port_text(port: &LoadBalancerPort) -> String {
    let protocol = json_text(&port.protocol);
    match (port.end_port, port.target_port) {
        (Some(end), _) => format!("{}-{end}/{protocol}", port.port),
        (None, Some(target)) => format!("{}->{target}/{protocol}", port.port),
        (None, None) => format!("{}/{protocol}", port.port),
    }
}

fn check_load_balancer(cx: &CheckContext<'_>, lb: &LoadBalancer, errors: &mut Errors) {
    let origin = cx.origin;
    let spec = &lb.spec;
    if spec.lb_type == LoadBalancerType::Public {
        errors.check(nat_rules::owned_by_uplink(origin, cx.next, "spec.type", None).map(|_| ()));
    }
    if spec.ip_families.is_empty() {
        errors.push(origin.invalid("spec.ipFamilies", "name at least one family: [IPv4]"));
    }
    for (index, family) in spec.ip_families.iter().enumerate() {
        if *family == IpFamily::IPv6 {
            errors.push(origin.invalid(
                &format!("spec.ipFamilies[{index}]"),
                "IPv6 load balancing is not supported yet (the switch routes IPv4 only); use [IPv4]",
            ));
        }
    }
    let network = cx.next.networks.get(&spec.network);
    if network.is_none() {
        errors.push(origin.invalid(
            "spec.network",
            format!("Network {:?} does not exist; create it first", spec.network),
        ));
    }
    if !spec.ips.is_empty() && spec.lb_type != LoadBalancerType::Internal {
        errors.push(origin.invalid(
            "spec.ips",
            "ips can only be given for type Internal; a Public LoadBalancer's address is allocated from the Uplink",
        ));
    }
    for (index, ip) in spec.ips.iter().enumerate() {
        let field = format!("spec.ips[{index}]");
        let IpAddr::V4(v4) = ip else {
            errors.push(origin.invalid(
                &field,
                format!("{ip} is IPv6: IPv6 load balancing is not supported yet"),
            ));
            continue;
        };
        if v4.is_loopback() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
            errors.push(origin.invalid(
                &field,
                format!("{ip} cannot be a load balancer's address (loopback, unspecified, multicast or broadcast)"),
            ));
            continue;
        }
        if let Some(why) = address_conflict(cx.next, &lb.metadata.key(), &spec.network, *v4) {
            errors.push(origin.conflict(&field, why));
        }
    }
    if spec.ips.len() > 1 {
        errors.push(origin.invalid(
            "spec.ips",
            "at most one address per family (one IPv4 address)",
        ));
    }
    if let Some(selector) = &spec.network_interface_selector {
        let problems =
            crate::control::selector::problems(selector, "spec.networkInterfaceSelector");
        for (field, why) in problems {
            errors.push(origin.invalid(&field, why));
        }
    }
    if spec.ports.is_empty() {
        errors.push(origin.invalid("spec.ports", "name at least one port"));
    }
    let mut seen: Vec<(LbProtocol, u16, u16, usize)> = Vec::new();
    for (index, port) in spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{index}]");
        if port.protocol == LbProtocol::SCTP {
            errors.push(origin.invalid(
                &format!("{at}.protocol"),
                "SCTP is not supported: the switch's connection tracker handles TCP and UDP",
            ));
        }
        if port.port == 0 {
            errors.push(origin.invalid(&format!("{at}.port"), "must be 1 to 65535"));
        }
        let end = port.end_port.unwrap_or(port.port);
        if let Some(end_port) = port.end_port {
            if end_port < port.port {
                errors.push(origin.invalid(
                    &format!("{at}.endPort"),
                    format!("{end_port} is below port {}", port.port),
                ));
            }
            if port.target_port.is_some() {
                errors.push(origin.invalid(
                    &format!("{at}.targetPort"),
                    "a port range maps each port to itself: drop targetPort or endPort",
                ));
            }
        }
        if port.target_port == Some(0) {
            errors.push(origin.invalid(&format!("{at}.targetPort"), "must be 1 to 65535"));
        }
        if let Some((_, lo, hi, other)) = seen
            .iter()
            .find(|(p, lo, hi, _)| *p == port.protocol && port.port <= *hi && end >= *lo)
        {
            errors.push(origin.invalid(
                &format!("{at}.port"),
                format!(
                    "overlaps spec.ports[{other}] ({lo}-{hi}/{})",
                    json_text(&port.protocol)
                ),
            ));
        }
        seen.push((port.protocol, port.port, end, index));
    }
    if spec.health_check.is_some() && !spec.ports.iter().any(|p| p.protocol == LbProtocol::TCP) {
        errors.push(origin.invalid(
            "spec.healthCheck",
            "health checks probe the first TCP port's target; this LoadBalancer serves no TCP port",
        ));
    }
    if spec.session_affinity_timeout_seconds.is_some()
        && spec.session_affinity != SessionAffinity::ClientIP
    {
        errors.push(origin.invalid(
            "spec.sessionAffinityTimeoutSeconds",
            "only with sessionAffinity: ClientIP",
        ));
    }
    if let Some(timeout) = spec.session_affinity_timeout_seconds {
        if timeout == 0 || timeout > 86_400 {
            errors.push(origin.invalid(
                "spec.sessionAffinityTimeoutSeconds",
                "must be 1 to 86400 (Kubernetes' bounds)",
            ));
        }
    }
    if let Some(check) = &spec.health_check {
        if check.interval_seconds == 0 || check.interval_seconds > 300 {
            errors.push(origin.invalid("spec.healthCheck.intervalSeconds", "must be 1 to 300"));
        }
        if check.timeout_seconds == 0 || check.timeout_seconds >= check.interval_seconds.max(1) {
            errors.push(origin.invalid(
                "spec.healthCheck.timeoutSeconds",
                format!(
                    "must be at least 1 and less than intervalSeconds ({})",
                    check.interval_seconds
                ),
            ));
        }
        for (field, value) in [
            ("healthyThreshold", check.healthy_threshold),
            ("unhealthyThreshold", check.unhealthy_threshold),
        ] {
            if value == 0 || value > 10 {
                errors
                    .push(origin.invalid(&format!("spec.healthCheck.{field}"), "must be 1 to 10"));
            }
        }
    }
    if let Some(drain) = spec.drain_seconds {
        if drain > 3600 {
            errors.push(origin.invalid("spec.drainSeconds", "must be 0 to 3600"));
        }
    }
    if let Some(size) = spec.maglev_table_size {
        if !lb::is_prime(size) || !(101..=MAX_TABLE_SIZE).contains(&size) {
            errors.push(origin.invalid(
                "spec.maglevTableSize",
                format!(
                    "{size} must be a prime from 101 to {MAX_TABLE_SIZE} (e.g. 16381, 65521, 131071), well above 100 times the backends"
                ),
            ));
        }
    }
}

/// Why `ip` cannot be LoadBalancer `name`'s address in Network `network`: another
/// LoadBalancer's, a NetworkInterface's or a Subnet's gateway or broadcast address.
fn address_conflict(state: &State, name: &str, network: &str, ip: Ipv4Addr) -> Option<String> {
    if let Some(other) = state.load_balancers.values().find(|other| {
        other.metadata.key() != name
            && other.spec.network == network
            && (other.spec.ips.contains(&IpAddr::V4(ip))
                || other.status.ips.contains(&IpAddr::V4(ip)))
    }) {
        return Some(format!(
            "{ip} is already LoadBalancer {:?}'s address",
            other.metadata.key()
        ));
    }
    for subnet in state
        .subnets
        .values()
        .filter(|s| s.spec.network == network && s.spec.cidr.contains(&ip))
    {
        if subnet.spec.gateway == ip {
            return Some(format!(
                "{ip} is Subnet {:?}'s gateway",
                subnet.metadata.name
            ));
        }
        if ip == subnet.spec.cidr.network() || ip == subnet.spec.cidr.broadcast() {
            return Some(format!(
                "{ip} is Subnet {:?}'s network or broadcast address",
                subnet.metadata.name
            ));
        }
        if let Some(nic) = state.network_interfaces.values().find(|nic| {
            nic.spec.subnet == subnet.metadata.name && nic.status.ips.iter().any(|a| a.addr() == ip)
        }) {
            return Some(format!(
                "{ip} is NetworkInterface {:?}'s address",
                nic.metadata.key()
            ));
        }
    }
    None
}

/// Gives the LoadBalancers of the batch their addresses: the spec's; else the one they
/// had, if it is still theirs; else the next free address of their Network's first Subnet
/// (by name) that has one. Runs after the interfaces got theirs, whose leases it sees.
///
/// # Errors
/// 409 on `spec.ips` when no Subnet of the Network has a free address.
pub fn assign_addresses(
    next: &mut State,
    origins: &BTreeMap<(Kind, String), Origin>,
) -> Result<(), ApiError> {
    let names: Vec<String> = origins
        .keys()
        .filter(|(kind, _)| *kind == Kind::LoadBalancer)
        .map(|(_, name)| name.clone())
        .collect();
    for name in names {
        let Some(balancer) = next.load_balancers.get(&name) else {
            continue;
        };
        if balancer.spec.lb_type == LoadBalancerType::Public {
            assign_public(next, &name, origins)?;
            continue;
        }
        if !balancer.spec.ips.is_empty() {
            let ips = balancer.spec.ips.clone();
            if let Some(balancer) = next.load_balancers.get_mut(&name) {
                balancer.status.ips = ips;
            }
            continue;
        }
        if !balancer.status.ips.is_empty() {
            continue;
        }
        let owner = format!("LoadBalancer/{name}");
        let network = balancer.spec.network.clone();
        let mut leases = ipam::leases(next);
        let mut chosen = None;
        for (subnet_name, subnet) in next
            .subnets
            .iter()
            .filter(|(_, s)| s.spec.network == network)
        {
            let Some(leases) = leases.get_mut(subnet_name) else {
                continue;
            };
            if let Ok(address) = leases.allocate(&ipam::Pool::new(&subnet.spec), &owner) {
                chosen = Some((subnet_name.clone(), address, leases.last));
                break;
            }
        }
        let origin = origins
            .get(&(Kind::LoadBalancer, name.clone()))
            .cloned()
            .unwrap_or_else(|| Origin::resource(Kind::LoadBalancer, &name));
        let Some((subnet, address, last)) = chosen else {
            return Err(origin.conflict(
                "spec.ips",
                format!(
                    "no Subnet of Network {network:?} has a free address for the LoadBalancer; free one, add a Subnet, or give ips (an address outside the Subnets works too)"
                ),
            ));
        };
        if let Some(last) = last {
            next.ipam.entry(subnet).or_default().last_allocated = Some(last);
        }
        if let Some(balancer) = next.load_balancers.get_mut(&name) {
            balancer.status.ips = vec![IpAddr::V4(address)];
        }
    }
    Ok(())
}

/// `vswitchctl lb NAME` (`GET /v1/loadbalancers/NAME/backends`): a LoadBalancer's backends as the datapath
/// serves them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerView {
    /// The LoadBalancer.
    pub name: String,
    /// Its Network.
    pub network: String,
    /// Its address, once assigned.
    pub address: Option<Ipv4Addr>,
    /// Slots of its Maglev table.
    pub table_size: u32,
    /// Its backends, by interface name.
    pub backends: Vec<BackendView>,
}

/// One backend of a [`LoadBalancerView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendView {
    /// The NetworkInterface.
    pub interface: String,
    /// Its address.
    pub ip: IpAddr,
    /// `Healthy` (or not checked), `Unhealthy`, `Draining`.
    pub state: BackendStateView,
    /// Table slots it holds (its share of new connections: `slots / tableSize`).
    pub slots: u32,
    /// Tracked connections to it.
    pub connections: u64,
}

/// A backend's state as shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendStateView {
    /// Takes new connections (health checked and passing, or not checked).
    Healthy,
    /// Failing its health checks: no new connections.
    Unhealthy,
    /// Left the selection: no new connections, its own continue until the deadline.
    Draining,
}

/// Gives Public LoadBalancer `name` an address of the Uplink: the one it holds while it is
/// still the Uplink's and used by nothing else, else the first free one (in the Uplink's
/// order), as a VirtualIP gets its own.
fn assign_public(
    next: &mut State,
    name: &str,
    origins: &BTreeMap<(Kind, String), Origin>,
) -> Result<(), ApiError> {
    let Some(uplink) = nat_rules::uplink(next) else {
        return Ok(());
    };
    let held = next.load_balancers.get(name).and_then(ipv4).map(IpAddr::V4);
    let Some(chosen) =
        nat_rules::free_uplink_address(next, (Kind::LoadBalancer, name), IpFamily::IPv4, held)
    else {
        let origin = origins
            .get(&(Kind::LoadBalancer, name.to_string()))
            .cloned()
            .unwrap_or_else(|| Origin::resource(Kind::LoadBalancer, name));
        return Err(nat_rules::no_free_address(
            &origin,
            "spec.type",
            uplink,
            IpFamily::IPv4,
        ));
    };
    if let Some(balancer) = next.load_balancers.get_mut(name) {
        balancer.status.ips = vec![chosen];
    }
    Ok(())
}

/// The Subnet of Network `network` whose CIDR holds `ip`, if any.
pub fn subnet_of<'a>(state: &'a State, network: &str, ip: Ipv4Addr) -> Option<&'a Subnet> {
    state
        .subnets
        .values()
        .find(|s| s.spec.network == network && s.spec.cidr.contains(&ip))
}

/// The IPv4 address of a LoadBalancer, once assigned.
pub fn ipv4(lb: &LoadBalancer) -> Option<Ipv4Addr> {
    lb.status.ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{apply, refusal};

    const BASE: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
";

    fn lb(extra: &str) -> String {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {{name: front}}\nspec:\n  type: Internal\n  network: blue\n  networkInterfaceSelector: {{matchLabels: {{app: web}}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n{extra}"
        )
    }

    fn nic(name: &str) -> String {
        format!(
            "---\napiVersion: vswitch/v1alpha1\nkind: NetworkInterface\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec: {{subnet: web, netns: vsctl-test-no-such-netns}}\n"
        )
    }

    #[test]
    fn an_internal_load_balancer_gets_an_address_of_its_network() {
        let base = apply(&State::default(), BASE);
        let state = apply(&base, &lb(""));
        let first = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(state.load_balancers["front"].status.ips, [first]);
        // Kept when applied again; interfaces get other addresses.
        let state = apply(&state, &format!("{}{}", lb(""), nic("c1")));
        assert_eq!(state.load_balancers["front"].status.ips, [first]);
        assert_ne!(
            state.network_interfaces["c1"].status.ips[0].addr(),
            Ipv4Addr::new(10, 1, 0, 2)
        );
        // A service address outside every Subnet is taken as given.
        let state = apply(&base, &lb("  ips: [10.96.0.10]\n"));
        assert_eq!(
            state.load_balancers["front"].status.ips,
            [IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))]
        );
        // An interface's address is refused.
        let with_nic = apply(
            &base,
            &nic("c1").replace(
                "netns: vsctl-test-no-such-netns",
                "netns: vsctl-test-no-such-netns, ips: [10.1.0.9]",
            ),
        );
        let err = refusal(&with_nic, &lb("  ips: [10.1.0.9]\n"));
        assert_eq!(err.status(), 409, "{err}");
        assert!(err.to_string().contains("NetworkInterface \"c1\""), "{err}");
    }

    #[test]
    fn every_wrong_field_is_named() {
        let state = apply(&State::default(), BASE);
        let text = "apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {name: bad}\nspec:\n  type: Public\n  ipFamilies: [IPv6]\n  ips: ['fd00::1', 10.1.0.1]\n  network: green\n  networkInterfaceSelector: {matchExpressions: [{key: app, operator: In}]}\n  ports: [{protocol: SCTP, port: 80}, {port: 79, endPort: 81}, {port: 90, endPort: 80, targetPort: 9}, {port: 81}]\n  sessionAffinityTimeoutSeconds: 5\n  healthCheck: {intervalSeconds: 1, timeoutSeconds: 1}\n  maglevTableSize: 16380\n";
        let err = refusal(&state, text);
        let fields: Vec<String> = err
            .causes()
            .iter()
            .filter_map(|c| c.field().map(str::to_string))
            .collect();
        for want in [
            "documents[0].spec.type",
            "documents[0].spec.ipFamilies[0]",
            "documents[0].spec.network",
            "documents[0].spec.ips",
            "documents[0].spec.ips[0]",
            "documents[0].spec.networkInterfaceSelector.matchExpressions[0].values",
            "documents[0].spec.ports[0].protocol",
            "documents[0].spec.ports[3].port",
            "documents[0].spec.ports[2].endPort",
            "documents[0].spec.ports[2].targetPort",
            "documents[0].spec.sessionAffinityTimeoutSeconds",
            "documents[0].spec.healthCheck.timeoutSeconds",
            "documents[0].spec.maglevTableSize",
        ] {
            assert!(
                fields.iter().any(|f| f == want),
                "{want} missing from {fields:?}"
            );
        }
    }
}
