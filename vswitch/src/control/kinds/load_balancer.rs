//! `LoadBalancer`: a virtual IP in a Network whose connections are spread over the
//! NetworkInterfaces its selector picks, by Maglev consistent hashing (the `lb` crate).
//!
//! `ipFamilies` (`[IPv4]` by default, `[IPv4, IPv6]` for dual stack, as a Kubernetes
//! Service) says which families it has an address of: one per family, in that order in
//! `status.ips`. `type: Internal` takes an address of a family from `ips`, or has one
//! allocated from the Network's Subnets (the first, by name, with a free address of the
//! family: an IPv6 one from a dual-stack Subnet's IPv6 range); `type: Public` gets one of
//! the Uplink's of each family (`spec.addresses`, `spec.ipv6.addresses`), like a VirtualIP,
//! and is reached from outside through the uplink. Each family has its own backends (the
//! selected interfaces' addresses of that family) and its own health checks.

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
    /// The families it has an address of (default `[IPv4]`; `[IPv4, IPv6]` for dual stack).
    #[serde(default = "default_families")]
    pub ip_families: Vec<IpFamily>,
    /// Internal only: its addresses, at most one per family of `ipFamilies`; a family
    /// without one has one allocated.
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
    /// Its addresses, one per family in `ipFamilies`' order (the spec's, or allocated;
    /// persisted).
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

    /// Allocated addresses are kept (those of a family the spec still lists and gives no
    /// address of, in the same Network and of the same type); the rest is computed.
    fn carry_status(&mut self, old: Option<&Self>) {
        let spec = &self.spec;
        let allocated = |ip: &IpAddr| {
            let family = IpFamily::of(*ip);
            spec.ip_families.contains(&family)
                && !spec.ips.iter().any(|given| IpFamily::of(*given) == family)
        };
        let ips = old
            .filter(|old| old.spec.network == spec.network && old.spec.lb_type == spec.lb_type)
            .map(|old| old.status.ips.iter().copied().filter(allocated).collect())
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
        errors.push(origin.invalid(
            "spec.ipFamilies",
            "name at least one family: [IPv4], [IPv6] or [IPv4, IPv6]",
        ));
    }
    for (index, family) in spec.ip_families.iter().enumerate() {
        let field = format!("spec.ipFamilies[{index}]");
        if spec.ip_families[..index].contains(family) {
            errors.push(origin.invalid(&field, format!("{family} is listed twice")));
            continue;
        }
        if *family != IpFamily::IPv6 {
            continue;
        }
        if spec.lb_type == LoadBalancerType::Public
            && nat_rules::uplink(cx.next).is_some_and(|uplink| uplink.spec.ipv6.is_none())
        {
            errors.push(origin.invalid(
                &field,
                "a Public IPv6 LoadBalancer takes an address of the Uplink's spec.ipv6.addresses, and the Uplink has no spec.ipv6; give it IPv6 addresses, or drop IPv6",
            ));
            continue;
        }
        let dual_stack = cx
            .next
            .subnets
            .values()
            .any(|s| s.spec.network == spec.network && s.spec.ipv6.is_some());
        if cx.next.networks.contains_key(&spec.network) && !dual_stack {
            errors.push(origin.invalid(
                &field,
                format!(
                    "Network {:?} has no dual-stack Subnet (spec.ipv6): no interface of it has an IPv6 address to serve the LoadBalancer; add an IPv6 prefix to one of its Subnets, or drop IPv6",
                    spec.network
                ),
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
    let mut given: Vec<IpFamily> = Vec::new();
    for (index, ip) in spec.ips.iter().enumerate() {
        let field = format!("spec.ips[{index}]");
        let family = IpFamily::of(*ip);
        if !spec.ip_families.contains(&family) {
            errors.push(origin.invalid(
                &field,
                format!("{ip} is {family}, a family spec.ipFamilies does not list; add {family} there, or drop the address"),
            ));
            continue;
        }
        if given.contains(&family) {
            errors.push(origin.invalid(
                &field,
                format!("a second {family} address: at most one address per family"),
            ));
            continue;
        }
        given.push(family);
        let unusable = match ip {
            IpAddr::V4(v4) => {
                v4.is_loopback()
                    || v4.is_unspecified()
                    || v4.is_multicast()
                    || v4.is_broadcast()
                    || v4.is_link_local()
            }
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || crate::wire::ipv6::is_link_local(*v6)
                    || v6.to_ipv4_mapped().is_some()
            }
        };
        if unusable {
            errors.push(origin.invalid(
                &field,
                format!("{ip} cannot be a load balancer's address (loopback, unspecified, multicast, broadcast, link-local or IPv4-mapped)"),
            ));
            continue;
        }
        if let Some(why) = address_conflict(cx.next, &lb.metadata.key(), &spec.network, *ip) {
            errors.push(origin.conflict(&field, why));
        }
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
/// LoadBalancer's, a NetworkInterface's or a Subnet's gateway, network, broadcast or
/// Subnet-Router anycast address.
fn address_conflict(state: &State, name: &str, network: &str, ip: IpAddr) -> Option<String> {
    if let Some(other) = state.load_balancers.values().find(|other| {
        other.metadata.key() != name
            && other.spec.network == network
            && (other.spec.ips.contains(&ip) || other.status.ips.contains(&ip))
    }) {
        return Some(format!(
            "{ip} is already LoadBalancer {:?}'s address",
            other.metadata.key()
        ));
    }
    for subnet in state.subnets.values().filter(|s| s.spec.network == network) {
        let (gateway, special, nic_has) = match ip {
            IpAddr::V4(v4) => {
                if !subnet.spec.cidr.contains(&v4) {
                    continue;
                }
                let cidr = subnet.spec.cidr;
                (
                    subnet.spec.gateway == v4,
                    v4 == cidr.network() || v4 == cidr.broadcast(),
                    state.network_interfaces.values().find(|nic| {
                        nic.spec.subnet == subnet.metadata.name
                            && nic.status.ips.iter().any(|a| a.addr() == v4)
                    }),
                )
            }
            IpAddr::V6(v6) => {
                let Some(prefix) = subnet.spec.ipv6.as_ref().filter(|p| p.cidr.contains(&v6))
                else {
                    continue;
                };
                (
                    prefix.gateway() == v6,
                    v6 == prefix.cidr.network(),
                    state.network_interfaces.values().find(|nic| {
                        nic.spec.subnet == subnet.metadata.name
                            && nic.status.ipv6.is_some_and(|a| a.addr() == v6)
                    }),
                )
            }
        };
        if gateway {
            return Some(format!(
                "{ip} is Subnet {:?}'s gateway",
                subnet.metadata.name
            ));
        }
        if special {
            return Some(format!(
                "{ip} is Subnet {:?}'s network, broadcast or Subnet-Router anycast address",
                subnet.metadata.name
            ));
        }
        if let Some(nic) = nic_has {
            return Some(format!(
                "{ip} is NetworkInterface {:?}'s address",
                nic.metadata.key()
            ));
        }
    }
    None
}

/// Gives the LoadBalancers of the batch their addresses, one per family of `ipFamilies`:
/// the spec's; else the one they had, if it is still theirs; else the next free address of
/// the family in their Network's first Subnet (by name) that has one (Internal), or of the
/// Uplink (Public). Runs after the interfaces got theirs, whose leases it sees.
///
/// # Errors
/// 409 on `spec.ips` (Internal) or `spec.type` (Public) when no address of a family is
/// free.
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
        let families = balancer.spec.ip_families.clone();
        let origin = origins
            .get(&(Kind::LoadBalancer, name.clone()))
            .cloned()
            .unwrap_or_else(|| Origin::resource(Kind::LoadBalancer, &name));
        let mut ips = Vec::new();
        for family in families {
            if let Some(address) = assign(next, &name, family, &origin)? {
                ips.push(address);
            }
        }
        if let Some(balancer) = next.load_balancers.get_mut(&name) {
            balancer.status.ips = ips;
        }
    }
    Ok(())
}

/// LoadBalancer `name`'s address of `family` (see [`assign_addresses`]); `None` for a
/// Public one while there is no Uplink (refused before this runs).
fn assign(
    next: &mut State,
    name: &str,
    family: IpFamily,
    origin: &Origin,
) -> Result<Option<IpAddr>, ApiError> {
    let Some(balancer) = next.load_balancers.get(name) else {
        return Ok(None);
    };
    if balancer.spec.lb_type == LoadBalancerType::Public {
        return assign_public(next, name, family, origin);
    }
    if let Some(given) = balancer
        .spec
        .ips
        .iter()
        .find(|ip| IpFamily::of(**ip) == family)
    {
        return Ok(Some(*given));
    }
    if let Some(held) = address_of(balancer, family) {
        return Ok(Some(held));
    }
    let owner = format!("LoadBalancer/{name}");
    let network = balancer.spec.network.clone();
    let in_network = |s: &&Subnet| s.spec.network == network;
    let chosen = match family {
        IpFamily::IPv4 => {
            let mut leases = ipam::leases(next);
            next.subnets.values().filter(in_network).find_map(|subnet| {
                let leases = leases.get_mut(&subnet.metadata.name)?;
                let address = leases
                    .allocate(&ipam::Pool::new(&subnet.spec), &owner)
                    .ok()?;
                Some((
                    subnet.metadata.name.clone(),
                    IpAddr::V4(address),
                    leases.last.map(IpAddr::V4),
                ))
            })
        }
        IpFamily::IPv6 => {
            let mut leases = ipam::leases6(next);
            next.subnets.values().filter(in_network).find_map(|subnet| {
                let prefix = subnet.spec.ipv6.as_ref()?;
                let leases = leases.get_mut(&subnet.metadata.name)?;
                let address = leases.allocate(&ipam::Pool6::new(prefix), &owner).ok()?;
                Some((
                    subnet.metadata.name.clone(),
                    IpAddr::V6(address),
                    leases.last.map(IpAddr::V6),
                ))
            })
        }
    };
    let Some((subnet, address, last)) = chosen else {
        return Err(origin.conflict(
            "spec.ips",
            format!(
                "no Subnet of Network {network:?} has a free {family} address for the LoadBalancer; free one, add a Subnet, or give ips (an address outside the Subnets works too)"
            ),
        ));
    };
    let cursor = next.ipam.entry(subnet).or_default();
    match last {
        Some(IpAddr::V4(last)) => cursor.last_allocated = Some(last),
        Some(IpAddr::V6(last)) => cursor.last_allocated_v6 = Some(last),
        None => {}
    }
    Ok(Some(address))
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
    /// Its addresses (one per family), once assigned.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
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

/// Public LoadBalancer `name`'s address of `family`, one of the Uplink's: the one it holds
/// while it is still the Uplink's and used by nothing else, else the first free one (in the
/// Uplink's order), as a VirtualIP gets its own.
fn assign_public(
    next: &mut State,
    name: &str,
    family: IpFamily,
    origin: &Origin,
) -> Result<Option<IpAddr>, ApiError> {
    let Some(uplink) = nat_rules::uplink(next) else {
        return Ok(None);
    };
    let held = next
        .load_balancers
        .get(name)
        .and_then(|balancer| address_of(balancer, family));
    match nat_rules::free_uplink_address(next, (Kind::LoadBalancer, name), family, held) {
        Some(chosen) => Ok(Some(chosen)),
        None => Err(nat_rules::no_free_address(
            origin,
            "spec.type",
            uplink,
            family,
        )),
    }
}

/// The Subnet of Network `network` whose CIDR holds `ip`, if any.
pub fn subnet_of<'a>(state: &'a State, network: &str, ip: Ipv4Addr) -> Option<&'a Subnet> {
    state
        .subnets
        .values()
        .find(|s| s.spec.network == network && s.spec.cidr.contains(&ip))
}

/// A LoadBalancer's address of `family`, once assigned.
pub fn address_of(lb: &LoadBalancer, family: IpFamily) -> Option<IpAddr> {
    lb.status
        .ips
        .iter()
        .copied()
        .find(|ip| IpFamily::of(*ip) == family)
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
        let text = "apiVersion: vswitch/v1alpha1\nkind: LoadBalancer\nmetadata: {name: bad}\nspec:\n  type: Public\n  ipFamilies: [IPv6, IPv6]\n  ips: ['fd00::1', 10.1.0.1, 'fd00::2']\n  network: green\n  networkInterfaceSelector: {matchExpressions: [{key: app, operator: In}]}\n  ports: [{protocol: SCTP, port: 80}, {port: 79, endPort: 81}, {port: 90, endPort: 80, targetPort: 9}, {port: 81}]\n  sessionAffinityTimeoutSeconds: 5\n  healthCheck: {intervalSeconds: 1, timeoutSeconds: 1}\n  maglevTableSize: 16380\n";
        let err = refusal(&state, text);
        let fields: Vec<String> = err
            .causes()
            .iter()
            .filter_map(|c| c.field().map(str::to_string))
            .collect();
        for want in [
            "documents[0].spec.type",
            "documents[0].spec.ipFamilies[1]",
            "documents[0].spec.network",
            "documents[0].spec.ips",
            "documents[0].spec.ips[1]",
            "documents[0].spec.ips[2]",
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

    const DUAL: &str = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1, ipv6: {cidr: 'fd00:1::/64'}}
";

    #[test]
    fn a_dual_stack_load_balancer_gets_an_address_of_each_family() {
        let base = apply(&State::default(), DUAL);
        let state = apply(&base, &lb("  ipFamilies: [IPv4, IPv6]\n"));
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2));
        let v6: IpAddr = "fd00:1::2".parse().unwrap();
        assert_eq!(state.load_balancers["front"].status.ips, [v4, v6]);
        // Kept when applied again; an interface gets other addresses of both families.
        let state = apply(
            &state,
            &format!("{}{}", lb("  ipFamilies: [IPv4, IPv6]\n"), nic("c1")),
        );
        assert_eq!(state.load_balancers["front"].status.ips, [v4, v6]);
        let c1 = &state.network_interfaces["c1"].status;
        assert_ne!(IpAddr::V4(c1.ips[0].addr()), v4);
        assert_ne!(c1.ipv6.map(|a| IpAddr::V6(a.addr())), Some(v6));
        // Given for one family, allocated for the other, in ipFamilies' order.
        let state = apply(
            &base,
            &lb("  ipFamilies: [IPv6, IPv4]\n  ips: ['fd00:1::80']\n"),
        );
        assert_eq!(
            state.load_balancers["front"].status.ips,
            ["fd00:1::80".parse::<IpAddr>().unwrap(), v4]
        );
        // Dropping IPv6 drops its address; IPv4 keeps its own.
        let state = apply(&state, &lb(""));
        assert_eq!(state.load_balancers["front"].status.ips, [v4]);
        // An interface cannot take a LoadBalancer's IPv6 address.
        let state = apply(&base, &lb("  ipFamilies: [IPv4, IPv6]\n"));
        let err = refusal(
            &state,
            &nic("c2").replace(
                "netns: vsctl-test-no-such-netns",
                "netns: vsctl-test-no-such-netns, ipv6: 'fd00:1::2'",
            ),
        );
        assert!(err.to_string().contains("LoadBalancer \"front\""), "{err}");
    }

    #[test]
    fn ipv6_refusals_name_their_field() {
        // No dual-stack Subnet in the Network.
        let v4_only = apply(&State::default(), BASE);
        let err = refusal(&v4_only, &lb("  ipFamilies: [IPv4, IPv6]\n"));
        let fields: Vec<&str> = err.causes().iter().filter_map(|c| c.field()).collect();
        assert_eq!(fields, ["documents[0].spec.ipFamilies[1]"], "{err}");
        assert!(err.to_string().contains("no dual-stack Subnet"), "{err}");
        let dual = apply(&State::default(), DUAL);
        for (ips, field, words) in [
            ("['fd00:1::1']", "spec.ips[0]", "gateway"),
            ("['fd00:1::']", "spec.ips[0]", "Subnet-Router anycast"),
            ("['fe80::5']", "spec.ips[0]", "link-local"),
            ("['::ffff:10.1.0.9']", "spec.ips[0]", "IPv4-mapped"),
            (
                "['fd00:1::5', 'fd00:1::6']",
                "spec.ips[1]",
                "at most one address per family",
            ),
        ] {
            let err = refusal(&dual, &lb(&format!("  ipFamilies: [IPv6]\n  ips: {ips}\n")));
            let fields: Vec<&str> = err.causes().iter().filter_map(|c| c.field()).collect();
            assert_eq!(fields, [format!("documents[0].{field}")], "{ips}: {err}");
            assert!(err.to_string().contains(words), "{ips}: {err}");
        }
        // An address of a family ipFamilies does not list.
        let err = refusal(&dual, &lb("  ips: ['fd00:1::5']\n"));
        assert!(err.to_string().contains("does not list"), "{err}");
        // A Public IPv6 LoadBalancer needs the Uplink's IPv6.
        let uplink = apply(
            &dual,
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {name: up}\nspec:\n  interface: vsctl-test-none\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n",
        );
        let public = lb("  ipFamilies: [IPv4, IPv6]\n").replace("type: Internal", "type: Public");
        let err = refusal(&uplink, &public);
        let fields: Vec<&str> = err.causes().iter().filter_map(|c| c.field()).collect();
        assert_eq!(fields, ["documents[0].spec.ipFamilies[1]"], "{err}");
        // With it, one address of each family, the Uplink's.
        let uplink = apply(
            &dual,
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {name: up}\nspec:\n  interface: vsctl-test-none\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n  ipv6: {addresses: ['2001:db8::10/64'], gateway: '2001:db8::1'}\n",
        );
        let state = apply(&uplink, &public);
        assert_eq!(
            state.load_balancers["front"].status.ips,
            [
                "203.0.113.10".parse::<IpAddr>().unwrap(),
                "2001:db8::10".parse().unwrap()
            ]
        );
        // The Uplink cannot drop the IPv6 address the Public LoadBalancer holds.
        let err = refusal(
            &state,
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {name: up}\nspec:\n  interface: vsctl-test-none\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n",
        );
        assert!(err.to_string().contains("LoadBalancer \"front\""), "{err}");
        // A Public IPv6 LoadBalancer still needs a dual-stack Subnet for its backends.
        let v4_uplink = apply(
            &v4_only,
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {name: up}\nspec:\n  interface: vsctl-test-none\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n  ipv6: {addresses: ['2001:db8::10/64'], gateway: '2001:db8::1'}\n",
        );
        let err = refusal(&v4_uplink, &public);
        assert!(err.to_string().contains("no dual-stack Subnet"), "{err}");
        // A Subnet's IPv6 prefix cannot move from under an Internal LoadBalancer's address.
        let held = apply(&dual, &lb("  ipFamilies: [IPv4, IPv6]\n"));
        let err = refusal(&held, &DUAL.replace("fd00:1::/64", "fd00:2::/64"));
        assert!(
            err.to_string().contains("LoadBalancer \"front\"")
                && err.to_string().contains("spec.ipv6.cidr"),
            "{err}"
        );
        // IPv4 link-local is refused as IPv6's is.
        let err = refusal(&dual, &lb("  ips: [169.254.1.5]\n"));
        assert!(err.to_string().contains("link-local"), "{err}");
    }
}
