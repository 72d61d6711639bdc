//! `NetworkInterface`: a port, an interface in a container's namespace.

#[allow(unused_imports)]
use super::prelude::*;

/// Spec of a NetworkInterface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterfaceSpec {
    /// The Subnet it joins (default: the Subnet bound to `vlan`, else `default`).
    #[serde(default = "default_subnet", deserialize_with = "de_name")]
    pub subnet: String,
    /// An access port of this 802.1Q VLAN (1..=4094): the interface joins the Subnet bound
    /// to it (frames stay untagged in the container; they leave the uplink's trunk tagged).
    /// With `subnet` too, that Subnet must be the VLAN's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// A trunk of these VLANs (each bound to a Subnet): the container sends and receives
    /// frames tagged with them (its `eth0.20`), each switched in that VLAN's Subnet from its
    /// MAC, with sources inside that Subnet's prefix (it configures its addresses there
    /// itself); untagged frames stay its own Subnet's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunk: Vec<u16>,
    /// The container's namespace: a name under /run/netns, a path, or `pid:N`.
    #[serde(deserialize_with = "de_netns", serialize_with = "ser_display")]
    pub netns: NetnsRef,
    /// Interface name inside the container (default `eth0`).
    #[serde(default = "default_ifname", deserialize_with = "de_ifname")]
    pub ifname: String,
    /// `tap` (default) or `veth`.
    #[serde(default)]
    pub kind: PortKind,
    /// MAC address; generated (random, locally administered) when absent.
    #[serde(
        default,
        deserialize_with = "de_opt_unicast_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<MacAddr>,
    /// Static addresses; empty means one address from IPAM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpRequest>,
    /// MTU (68..=65535); the subnet's when absent.
    #[serde(
        default,
        deserialize_with = "de_opt_mtu",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtu: Option<u16>,
    /// The VirtualIP (by name) the interface is reachable on from outside, and whose address
    /// its traffic to the outside leaves with. One interface per VirtualIP.
    #[serde(
        rename = "virtualIP",
        default,
        deserialize_with = "de_opt_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub virtual_ip: Option<String>,
    /// VirtualIPs (by name), at most one per family: a dual-stack interface's IPv4 and IPv6
    /// VirtualIPs. Instead of `virtualIP`, not beside it.
    #[serde(
        rename = "virtualIPs",
        default,
        deserialize_with = "de_name_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub virtual_ips: Vec<String>,
    /// Install a default route via the Subnet's gateway in the namespace (default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub default_route: bool,
    /// Further routes installed in the namespace via the Subnet's gateway of the route's
    /// family (an IPv6 one via the Subnet's IPv6 gateway: the interface needs IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
    /// Named ports, as a container declares them (`{name: http, port: 80, protocol: TCP}`):
    /// a NetworkPolicy's named `port` resolves on the destination interface's list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<policy::NamedPort>,
    /// The container configures the interface itself over DHCP (the Subnet's `dhcp` must be
    /// enabled): the switch leases it `status.ips` and leaves the interface unaddressed,
    /// without routes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// The address families it gets addresses of: `[IPv4]`, or `[IPv4, IPv6]` on a Subnet
    /// with `ipv6` (default: every family its Subnet has).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_families: Vec<IpFamily>,
    /// A static IPv6 address in the Subnet's `ipv6` prefix; allocated when absent.
    #[serde(
        default,
        deserialize_with = "de_opt_ipv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6: Option<Ipv6Addr>,
}

impl NetworkInterfaceSpec {
    /// The VirtualIPs it references: `virtualIP`, then `virtualIPs`.
    pub fn virtual_ip_names(&self) -> impl Iterator<Item = &String> {
        self.virtual_ip.iter().chain(&self.virtual_ips)
    }

    /// Whether the interface has an IPv6 address on `subnet`: the Subnet has a prefix and
    /// the interface does not leave IPv6 out of its families.
    pub fn wants_ipv6(&self, subnet: &SubnetSpec) -> bool {
        subnet.ipv6.is_some()
            && (self.ip_families.is_empty() || self.ip_families.contains(&IpFamily::IPv6))
    }
}

fn default_true() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// Lifecycle of a device: a NetworkInterface's, or the Uplink's. Status values are written
/// in PascalCase, as Kubernetes writes phases; the lowercase forms of earlier versions (in
/// state files) are still read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum InterfaceState {
    /// Not attached yet.
    #[default]
    #[serde(alias = "pending")]
    Pending,
    /// The device exists and its queues are open.
    #[serde(alias = "up")]
    Up,
    /// The device or its namespace is gone (see `message`); delete the resource to clean up.
    #[serde(alias = "lost")]
    Lost,
}

impl fmt::Display for InterfaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterfaceState::Pending => "Pending",
            InterfaceState::Up => "Up",
            InterfaceState::Lost => "Lost",
        })
    }
}

/// Status of a NetworkInterface: what was allocated and how the device is.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterfaceStatus {
    /// Addresses with the subnet's prefix length (static or leased from IPAM).
    #[serde(default)]
    pub ips: Vec<Ipv4Net>,
    /// The IPv6 address with the prefix length (static or leased), on a dual-stack Subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Net>,
    /// The MAC in use (given or generated).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// `pending`, `up` or `lost`.
    #[serde(default)]
    pub state: InterfaceState,
    /// Why the state is what it is, when not `up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The device's name in the daemon's namespace (veth host end), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    /// A unique identity the switch gives the interface when it is created (a UUID), kept
    /// for its life; LoadBalancerRoutings list backends by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The addresses of its VirtualIPs (`virtualIP` or `virtualIPs`), once they have one
    /// (computed when read).
    #[serde(rename = "virtualIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<IpAddr>,
}

/// A port: an interface in a container's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterface {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `NetworkInterface`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: NetworkInterfaceSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: NetworkInterfaceStatus,
}

impl NetworkInterface {
    /// The MTU the interface gets: its own, else its subnet's.
    pub fn effective_mtu(&self, subnet: &SubnetSpec) -> u16 {
        self.spec.mtu.unwrap_or(subnet.mtu)
    }
}

impl ResourceKind for NetworkInterface {
    type Spec = NetworkInterfaceSpec;
    type Status = NetworkInterfaceStatus;

    const NAMESPACED: bool = true;

    const INFO: KindInfo = KindInfo {
        name: "NetworkInterface",
        plural: "networkinterfaces",
        aliases: &["nic", "interface", "netif"],
        summary: "a port: a TAP or veth interface in a container's network namespace, with its MAC and addresses",
        example: "\
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata:
  name: web-1
  labels:
    app: web
spec:
  subnet: web
  netns: web-1
  ifname: eth0
  kind: tap
",
    };

    fn spec(&self) -> &NetworkInterfaceSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut NetworkInterfaceStatus {
        &mut self.status
    }

    /// The device's state and the allocated addresses and MAC are the controller's.
    fn carry_status(&mut self, old: Option<&Self>) {
        self.status = old.map(|o| o.status.clone()).unwrap_or_default();
        self.status.virtual_ips.clear();
    }

    /// The addresses of its VirtualIPs, as seed 004's `status.virtualIP` shows them.
    fn observe(&mut self, state: &State, _view: &StatusView) {
        self.status.virtual_ips = self
            .spec
            .virtual_ip_names()
            .filter_map(|name| state.virtual_ips.get(name))
            .filter_map(nat_rules::virtual_ip_address)
            .collect();
    }

    /// An access port left in the default Subnet joins the Subnet bound to its VLAN.
    fn complete(&mut self, cx: &Completion) {
        let Some(bound) = self.spec.vlan.and_then(|vlan| cx.vlan_subnets.get(&vlan)) else {
            return;
        };
        if self.spec.subnet == default_subnet() {
            self.spec.subnet.clone_from(bound);
        }
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        if let Some(vlan) = self.spec.vlan {
            errors.check(check_access_vlan(cx.origin, cx.next, &self.spec, vlan));
        }
        check_trunk(cx.origin, cx.next, &self.spec, errors);
        if let Some(old) = cx.current.network_interfaces.get(&self.metadata.key()) {
            errors.check(check_immutables(cx.origin, old, self));
        }
        errors.check(check_interface(cx.origin, cx.next, self));
        check_families(cx.origin, cx.next, self, errors);
        errors.check(check_virtual_ip(cx.origin, cx.next, cx.batch, self));
        check_ports(cx.origin, self, errors);
    }

    fn dependants(state: &State, name: &str) -> Vec<(&'static str, Vec<String>)> {
        vec![(
            "PortForwards to it",
            state
                .port_forwards
                .values()
                .filter(|f| f.spec.target.interface == name)
                .map(|f| f.metadata.name.clone())
                .collect(),
        )]
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "NETNS", "KIND", "IFNAME", "MAC", "IPS", "STATE"];
        if wide {
            columns.extend(["SUBNET", "MTU", "LABELS", "MESSAGE"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let (spec, status) = (&self.spec, &self.status);
        let mac = status.mac.or(spec.mac);
        let ips4: Vec<String> = if status.ips.is_empty() {
            spec.ips.iter().map(ToString::to_string).collect()
        } else {
            status.ips.iter().map(ToString::to_string).collect()
        };
        let ips = cells(
            ips4.into_iter().chain(
                status
                    .ipv6
                    .map(|ip| ip.to_string())
                    .or_else(|| spec.ipv6.map(|ip| ip.to_string())),
            ),
        );
        let mut row = vec![
            self.metadata.name.clone(),
            spec.netns.to_string(),
            json_text(&spec.kind),
            spec.ifname.clone(),
            cells(mac.iter()),
            ips,
            status.state.to_string(),
        ];
        if wide {
            row.extend([
                spec.subnet.clone(),
                cells(spec.mtu.iter()),
                labels_cell(&self.metadata),
                cell(status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}

/// `spec.vlan`: an access port joins the Subnet bound to its VLAN.
fn check_access_vlan(
    origin: &Origin,
    next: &State,
    spec: &NetworkInterfaceSpec,
    vlan: u16,
) -> Result<(), ApiError> {
    if vlan == 0 || vlan > super::subnet::MAX_VLAN {
        return Err(origin.invalid(
            "spec.vlan",
            format!(
                "{vlan} is out of range: an 802.1Q VLAN ID is 1..={}",
                super::subnet::MAX_VLAN
            ),
        ));
    }
    let bound = next
        .subnets
        .iter()
        .find(|(_, subnet)| subnet.spec.vlan == Some(vlan))
        .map(|(name, _)| name);
    match bound {
        None => Err(origin.invalid(
            "spec.vlan",
            format!(
                "no Subnet is bound to VLAN {vlan}: give a Subnet vlan: {vlan} (in this batch or before), or attach the interface to a Subnet instead"
            ),
        )),
        Some(name) if *name != spec.subnet => Err(origin.invalid(
            "spec.vlan",
            format!(
                "VLAN {vlan} is Subnet {name:?}'s, not spec.subnet {:?}'s: leave subnet out, or make them agree",
                spec.subnet
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// `spec.trunk`: each VLAN in range, listed once, bound to a Subnet other than the
/// interface's own, and not on an access port.
fn check_trunk(origin: &Origin, next: &State, spec: &NetworkInterfaceSpec, errors: &mut Errors) {
    if spec.trunk.is_empty() {
        return;
    }
    if spec.vlan.is_some() {
        errors.push(origin.invalid(
            "spec.trunk",
            "an access port (spec.vlan) is not a trunk: give vlan or trunk, not both",
        ));
    }
    if spec.trunk.len() > 64 {
        errors.push(origin.invalid(
            "spec.trunk",
            format!("at most 64 VLANs per trunk, not {}", spec.trunk.len()),
        ));
    }
    for (i, vlan) in spec.trunk.iter().enumerate() {
        let field = format!("spec.trunk[{i}]");
        if *vlan == 0 || *vlan > super::subnet::MAX_VLAN {
            errors.push(origin.invalid(
                &field,
                format!(
                    "{vlan} is out of range: an 802.1Q VLAN ID is 1..={}",
                    super::subnet::MAX_VLAN
                ),
            ));
            continue;
        }
        if let Some(first) = spec
            .trunk
            .iter()
            .position(|v| v == vlan)
            .filter(|first| *first < i)
        {
            errors.push(origin.invalid(
                &field,
                format!("VLAN {vlan} is already spec.trunk[{first}]: list each VLAN once"),
            ));
            continue;
        }
        match next.subnets.iter().find(|(_, s)| s.spec.vlan == Some(*vlan)) {
            None => errors.push(origin.invalid(
                &field,
                format!("no Subnet is bound to VLAN {vlan}: give a Subnet vlan: {vlan} first"),
            )),
            Some((name, _)) if *name == spec.subnet => errors.push(origin.invalid(
                &field,
                format!(
                    "VLAN {vlan} is the interface's own Subnet {name:?}, whose frames it sends untagged"
                ),
            )),
            Some(_) => {}
        }
    }
}

/// What a NetworkInterface keeps for life: its Subnet, namespace, ifname and kind.
fn check_immutables(
    origin: &Origin,
    old: &NetworkInterface,
    new: &NetworkInterface,
) -> Result<(), ApiError> {
    let name = &old.metadata.name;
    let hint = recreate_hint(Kind::NetworkInterface);
    let (o, n) = (&old.spec, &new.spec);
    let refuse = |field: &str, was: String| {
        Err(origin.invalid(
            &format!("spec.{field}"),
            format!("NetworkInterface {name:?} has {field} {was}; {field} cannot change: {hint}"),
        ))
    };
    if o.subnet != n.subnet {
        return refuse("subnet", format!("{:?}", o.subnet));
    }
    if o.netns != n.netns {
        return refuse("netns", o.netns.to_string());
    }
    if o.ifname != n.ifname {
        return refuse("ifname", o.ifname.clone());
    }
    if o.kind != n.kind {
        return refuse("kind", format!("{:?}", o.kind).to_lowercase());
    }
    if o.dhcp != n.dhcp {
        return refuse("dhcp", o.dhcp.to_string());
    }
    Ok(())
}

/// A NetworkInterface against the state: its Subnet exists; its ifname in its namespace and
/// its MAC in its Subnet are no other interface's; the MAC is not the gateway's; its static
/// addresses have the Subnet's prefix, are listed once and are host addresses IPAM accepts.
fn check_interface(origin: &Origin, next: &State, nic: &NetworkInterface) -> Result<(), ApiError> {
    let spec = &nic.spec;
    let key = nic.metadata.key();
    let Some(subnet) = next.subnets.get(&spec.subnet) else {
        return Err(origin.invalid(
            "spec.subnet",
            format!(
                "Subnet {:?} does not exist; name an existing Subnet (default) or create it first",
                spec.subnet
            ),
        ));
    };
    if spec.dhcp {
        if !subnet.spec.dhcp.as_ref().is_some_and(|d| d.enabled) {
            return Err(origin.invalid(
                "spec.dhcp",
                format!(
                    "Subnet {:?} serves no DHCP; enable it there (spec.dhcp: {{enabled: true}}) or configure the interface statically (dhcp: false)",
                    spec.subnet
                ),
            ));
        }
        if !spec.routes.is_empty() {
            return Err(origin.invalid(
                "spec.routes",
                "an interface configured over DHCP gets its routes from the Subnet's dhcp.routes; remove routes here",
            ));
        }
    }
    if let Some(index) = spec
        .routes
        .iter()
        .position(|route| matches!(route, IpNet::V6(_)))
        && !spec.wants_ipv6(&subnet.spec)
    {
        return Err(origin.invalid(
            &format!("spec.routes[{index}]"),
            format!(
                "{} is an IPv6 route, but the interface has no IPv6 address on Subnet {:?} (give the Subnet spec.ipv6, or leave IPv6 in ipFamilies)",
                spec.routes[index], spec.subnet
            ),
        ));
    }
    for other in next.network_interfaces.values() {
        if other.metadata.key() == key {
            continue;
        }
        if other.spec.netns == spec.netns && other.spec.ifname == spec.ifname {
            return Err(origin.conflict(
                "spec.ifname",
                format!(
                    "interface {} in netns {} is already NetworkInterface {:?}; choose another ifname",
                    spec.ifname, spec.netns, other.metadata.key()
                ),
            ));
        }
        let other_mac = other.spec.mac.or(other.status.mac);
        if other.spec.subnet == spec.subnet && spec.mac.is_some() && spec.mac == other_mac {
            let mac = spec.mac.map(|m| m.to_string()).unwrap_or_default();
            return Err(origin.conflict(
                "spec.mac",
                format!(
                    "MAC {mac} is already used by NetworkInterface {:?} in Subnet {:?}; choose another or leave mac empty to generate one",
                    other.metadata.key(), spec.subnet
                ),
            ));
        }
    }
    if let Some(mac) = spec.mac {
        if mac == routing::gateway_mac(next, subnet) {
            return Err(origin.conflict(
                "spec.mac",
                format!(
                    "MAC {mac} is the gateway MAC of Subnet {:?}; choose another or leave mac empty to generate one",
                    spec.subnet
                ),
            ));
        }
    }
    let pool = ipam::Pool::new(&subnet.spec);
    let prefix = subnet.spec.cidr.prefix_len();
    let mut seen = BTreeSet::new();
    for (index, request) in spec.ips.iter().enumerate() {
        let field = format!("spec.ips[{index}]");
        if let Some(len) = request.prefix_len.filter(|len| *len != prefix) {
            return Err(origin.invalid(
                &field,
                format!(
                    "{request} has prefix /{len} but Subnet {:?} is {}; write {}/{prefix} or {}",
                    spec.subnet, subnet.spec.cidr, request.addr, request.addr
                ),
            ));
        }
        if !seen.insert(request.addr) {
            return Err(origin.invalid(&field, format!("{} is listed twice", request.addr)));
        }
        if let Err(err) = pool.check_host(request.addr) {
            return Err(origin.invalid(&field, err));
        }
    }
    Ok(())
}

/// `spec.ipFamilies` and `spec.ipv6`: each family once, IPv4 always (an IPv6-only
/// interface is not supported: the Subnet's IPv4 prefix is mandatory), IPv6 only on a
/// Subnet with an IPv6 prefix, and a static IPv6 address inside it.
fn check_families(origin: &Origin, next: &State, nic: &NetworkInterface, errors: &mut Errors) {
    let spec = &nic.spec;
    let Some(subnet) = next.subnets.get(&spec.subnet) else {
        return; // check_interface names it.
    };
    let mut seen = BTreeSet::new();
    for (index, family) in spec.ip_families.iter().enumerate() {
        if !seen.insert(*family) {
            errors.push(origin.invalid(
                &format!("spec.ipFamilies[{index}]"),
                format!("{family} is listed twice"),
            ));
        }
        if *family == IpFamily::IPv6 && subnet.spec.ipv6.is_none() {
            errors.push(origin.invalid(
                &format!("spec.ipFamilies[{index}]"),
                format!(
                    "Subnet {:?} has no IPv6 prefix; give it spec.ipv6.cidr or leave IPv6 out",
                    spec.subnet
                ),
            ));
        }
    }
    if !spec.ip_families.is_empty() && !seen.contains(&IpFamily::IPv4) {
        errors.push(origin.invalid(
            "spec.ipFamilies",
            "IPv6-only interfaces are not supported: list IPv4 too ([IPv4] or [IPv4, IPv6])",
        ));
    }
    if let Some(addr) = spec.ipv6 {
        match &subnet.spec.ipv6 {
            None => errors.push(origin.invalid(
                "spec.ipv6",
                format!(
                    "Subnet {:?} has no IPv6 prefix; give it spec.ipv6.cidr or remove this address",
                    spec.subnet
                ),
            )),
            Some(_) if !spec.wants_ipv6(&subnet.spec) => errors.push(origin.invalid(
                "spec.ipv6",
                "ipFamilies leaves IPv6 out; add IPv6 to ipFamilies or remove this address",
            )),
            Some(v6) => {
                if let Err(why) = ipam::Pool6::new(v6).check_host(addr) {
                    errors.push(origin.invalid("spec.ipv6", why));
                }
            }
        }
    }
}

/// A NetworkInterface's named ports: valid port names (IANA service names), ports 1-65535,
/// each name once per protocol, as Kubernetes checks a container's ports.
fn check_ports(origin: &Origin, nic: &NetworkInterface, errors: &mut Errors) {
    let mut seen = BTreeSet::new();
    for (index, port) in nic.spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{index}]");
        if let Err(why) = policy::check_port_name(&port.name) {
            errors.push(origin.invalid(&format!("{field}.name"), why));
        }
        if port.port == 0 {
            errors.push(origin.invalid(&format!("{field}.port"), "must be from 1 to 65535"));
        }
        if !seen.insert(port.name.clone()) {
            errors.push(origin.invalid(
                &format!("{field}.name"),
                format!("{:?} is listed twice; port names are unique", port.name),
            ));
        }
    }
}

/// A NetworkInterface's `virtualIP` or `virtualIPs`: not both; each VirtualIP exists, is of
/// a family the interface has an address of, and no other interface references it; at
/// most one per family.
///
/// # Errors
/// [`ApiError`] on `origin`'s `spec.virtualIP` or `spec.virtualIPs[i]`.
fn check_virtual_ip(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    nic: &NetworkInterface,
) -> Result<(), ApiError> {
    if nic.spec.virtual_ip.is_some() && !nic.spec.virtual_ips.is_empty() {
        return Err(origin.invalid(
            "spec.virtualIPs",
            "give virtualIP (one VirtualIP) or virtualIPs (one per family), not both",
        ));
    }
    let fields = nic
        .spec
        .virtual_ip
        .iter()
        .map(|vip| ("spec.virtualIP".to_owned(), vip))
        .chain(
            nic.spec
                .virtual_ips
                .iter()
                .enumerate()
                .map(|(index, vip)| (format!("spec.virtualIPs[{index}]"), vip)),
        );
    let mut families: Vec<(IpFamily, &String)> = Vec::new();
    for (field, vip) in fields {
        let Some(resource) = next.virtual_ips.get(vip) else {
            return Err(origin.invalid(
                &field,
                format!(
                    "VirtualIP {vip:?} does not exist; create it first (it may be in the same input)"
                ),
            ));
        };
        let family = resource.spec.family();
        if let Some((_, first)) = families.iter().find(|(f, _)| *f == family) {
            return Err(origin.invalid(
                &field,
                format!(
                    "VirtualIP {vip:?} is {family}, as {first:?} is; an interface has at most one VirtualIP per family"
                ),
            ));
        }
        families.push((family, vip));
        if !nat_rules::has_family(next, batch, nic, family) {
            return Err(origin.invalid(
                &field,
                format!(
                    "VirtualIP {vip:?} is {family} but the interface has no {family} address (its Subnet has no ipv6, or its ipFamilies leave IPv6 out); a VirtualIP maps to an address of its own family"
                ),
            ));
        }
        let other = next.network_interfaces.values().find(|other| {
            other.metadata.key() != nic.metadata.key()
                && other.spec.virtual_ip_names().any(|v| v == vip)
                && batch.before(Kind::NetworkInterface, &other.metadata.key(), origin)
        });
        if let Some(other) = other {
            return Err(origin.conflict(
                &field,
                format!(
                    "VirtualIP {vip:?} is already used by NetworkInterface {:?}; a VirtualIP maps to one interface: create another VirtualIP",
                    other.metadata.key()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{
        apply, base, doc, ips, nat_base, nic, refusal, refused, try_plan, vip,
    };

    #[test]
    fn static_addresses_are_checked() {
        let cases = [
            (
                ", ips: [10.2.0.5]",
                400,
                "spec.ips[0]: address 10.2.0.5 is outside subnet 10.1.0.0/24",
            ),
            (
                ", ips: [10.1.0.1]",
                400,
                "spec.ips[0]: address 10.1.0.1 is the gateway of 10.1.0.0/24",
            ),
            (", ips: [10.1.0.0]", 400, "is the network address"),
            (", ips: [10.1.0.255/24]", 400, "is the broadcast address"),
            (
                ", ips: [10.1.0.9/16]",
                400,
                "spec.ips[0]: 10.1.0.9/16 has prefix /16 but Subnet \"web\" is 10.1.0.0/24; write 10.1.0.9/24 or 10.1.0.9",
            ),
            (
                ", ips: [10.1.0.9, 10.1.0.9/24]",
                400,
                "spec.ips[1]: 10.1.0.9 is listed twice",
            ),
            (
                ", ips: [10.1.0.2]",
                409,
                "spec.ips[0]: address 10.1.0.2 is already used by NetworkInterface \"a\"",
            ),
        ];
        let current = apply(&base(), &nic("a", ""));
        for (extra, status, want) in cases {
            let err = refusal(&current, &nic("b", extra));
            assert_eq!(err.status(), status, "{err}");
            let msg = err.to_string();
            assert!(
                msg.starts_with("document 1 (NetworkInterface \"b\"): "),
                "{msg}"
            );
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
        }
        let state = apply(&current, &nic("b", ", ips: [10.1.0.9/24, 10.1.0.10]"));
        assert_eq!(ips(&state, "b"), ["10.1.0.9/24", "10.1.0.10/24"]);
        // A static address does not move the cursor.
        assert_eq!(
            state.ipam["web"].last_allocated,
            Some(Ipv4Addr::new(10, 1, 0, 2))
        );
    }

    #[test]
    fn interface_references_and_collisions() {
        let current = apply(&base(), &nic("a", ", mac: '02:00:00:00:00:0a'"));
        let err = refusal(&current, &nic("b", "").replace("subnet: web", "subnet: db"));
        assert_eq!(
            err.to_string(),
            "document 1 (NetworkInterface \"b\"): spec.subnet: Subnet \"db\" does not exist; \
             name an existing Subnet (default) or create it first"
        );
        let err = refusal(&current, &nic("b", "").replace("netns: b", "netns: a"));
        assert_eq!(err.status(), 409);
        assert!(err.to_string().contains("spec.ifname: interface eth0 in netns a is already NetworkInterface \"a\"; choose another ifname"), "{err}");
        let ok = nic("b", ", ifname: eth1").replace("netns: b", "netns: a");
        assert_eq!(apply(&current, &ok).network_interfaces.len(), 2);
        let err = refusal(&current, &nic("b", ", mac: '02:00:00:00:00:0a'"));
        assert_eq!(err.status(), 409);
        assert!(
            err.to_string().contains(
                "spec.mac: MAC 02:00:00:00:00:0a is already used by NetworkInterface \"a\""
            ),
            "{err}"
        );
        // A generated MAC counts too.
        let generated = apply(&base(), &nic("a", ""));
        let mac = generated.network_interfaces["a"].status.mac.unwrap();
        let err = refusal(&generated, &nic("b", &format!(", mac: '{mac}'")));
        assert_eq!(err.status(), 409);
    }

    #[test]
    fn interfaces_reference_one_virtual_ip_each() {
        let state = apply(&nat_base(), &vip("v", None));
        let with_vip = |name: &str, netns: &str, vip: &str| {
            // c2 of BASE is a veth.
            let kind = if name == "c2" { ", kind: veth" } else { "" };
            doc(
                "NetworkInterface",
                name,
                &format!("{{subnet: web, netns: {netns}{kind}, virtualIP: {vip}}}"),
            )
        };
        refused(
            &state,
            &with_vip("c1", "c1", "nope"),
            400,
            "documents[0].spec.virtualIP",
            &["VirtualIP \"nope\" does not exist"],
        );
        let state = apply(&state, &with_vip("c1", "c1", "v"));
        refused(
            &state,
            &with_vip("c2", "c2", "v"),
            409,
            "documents[0].spec.virtualIP",
            &["VirtualIP \"v\" is already used by NetworkInterface \"c1\""],
        );
        // In one batch the later interface is blamed.
        refused(
            &apply(&nat_base(), &vip("v", None)),
            &format!("{}{}", with_vip("c1", "c1", "v"), with_vip("c2", "c2", "v")),
            409,
            "documents[1].spec.virtualIP",
            &["already used by NetworkInterface \"c1\""],
        );
        // Adding a VirtualIP to an interface does not re-create its device.
        let plan = try_plan(
            &nat_base(),
            &format!("{}{}", vip("v", None), with_vip("c1", "c1", "v")),
        )
        .expect("plans");
        assert!(plan.recreate.is_empty() && plan.attach.is_empty());
        assert_eq!(
            nat_rules::virtual_ip_user(&plan.next, "v").map(|n| n.metadata.name.as_str()),
            Some("c1")
        );
    }
}
