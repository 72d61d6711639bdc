//! `Subnet`: an L2 segment of a Network, with its addressing and IPAM range.

#[allow(unused_imports)]
use super::prelude::*;
use crate::control::overlay::MAX_VNI;

/// The Subnets of a state by prefix (per Network and family), VNI and VLAN: what the checks
/// that look for another Subnet holding the same thing ask, answered without scanning every
/// Subnet for each (a hub with thousands of runners plans thousands of Subnets at once).
#[derive(Debug, Default)]
pub struct SubnetIndex<'a> {
    /// (Network, IPv6?) -> (network address, prefix length) -> Subnet names, in name order.
    prefixes: std::collections::HashMap<(&'a str, bool), Prefixes<'a>>,
    vnis: std::collections::HashMap<u32, Vec<&'a str>>,
    vlans: std::collections::HashMap<u16, Vec<&'a str>>,
}

/// Subnet names by (network address as a number, prefix length).
type Prefixes<'a> = BTreeMap<(u128, u8), Vec<&'a str>>;

impl<'a> SubnetIndex<'a> {
    /// The index of `state`'s Subnets.
    pub fn of(state: &'a State) -> SubnetIndex<'a> {
        let mut index = SubnetIndex::default();
        for (name, subnet) in &state.subnets {
            let network = subnet.spec.network.as_str();
            let cidrs = std::iter::once(IpNet::V4(subnet.spec.cidr))
                .chain(subnet.spec.ipv6.as_ref().map(|v6| IpNet::V6(v6.cidr)));
            for cidr in cidrs {
                index
                    .prefixes
                    .entry((network, cidr.addr().is_ipv6()))
                    .or_default()
                    .entry(prefix_key(cidr))
                    .or_default()
                    .push(name.as_str());
            }
            if let Some(vni) = subnet.spec.vni {
                index.vnis.entry(vni).or_default().push(name.as_str());
            }
            if let Some(vlan) = subnet.spec.vlan {
                index.vlans.entry(vlan).or_default().push(name.as_str());
            }
        }
        index
    }

    /// The Subnets of `network` other than `except` whose prefix of `cidr`'s family overlaps
    /// `cidr`, in name order.
    pub fn overlapping(&self, network: &str, cidr: IpNet, except: &str) -> Vec<&'a str> {
        let Some(prefixes) = self.prefixes.get(&(network, cidr.addr().is_ipv6())) else {
            return Vec::new();
        };
        let (start, len) = prefix_key(cidr);
        let width: u8 = if cidr.addr().is_ipv6() { 128 } else { 32 };
        let host_bits = u32::from(width - cidr.prefix_len());
        let end = start | low_bits(host_bits);
        let mut names: Vec<&'a str> = Vec::new();
        // The prefixes that hold `cidr` (its own length included) ...
        for shorter in 0..=cidr.prefix_len() {
            let mask = !low_bits(u32::from(width - shorter));
            if let Some(held) = prefixes.get(&(start & mask, shorter)) {
                names.extend(held);
            }
        }
        // ... and those inside it (a network address inside `cidr`).
        for ((_, other_len), held) in prefixes.range((start, 0)..=(end, width)) {
            if *other_len > len {
                names.extend(held);
            }
        }
        names.retain(|name| *name != except);
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The first Subnet by name other than `except` with VNI `vni`.
    pub fn with_vni(&self, vni: u32, except: &str) -> Option<&'a str> {
        first_other(self.vnis.get(&vni), except)
    }

    /// The first Subnet by name other than `except` on VLAN `vlan`.
    pub fn with_vlan(&self, vlan: u16, except: &str) -> Option<&'a str> {
        first_other(self.vlans.get(&vlan), except)
    }
}

fn first_other<'a>(names: Option<&Vec<&'a str>>, except: &str) -> Option<&'a str> {
    names?.iter().copied().find(|name| *name != except)
}

/// The `bits` low bits set (`bits` up to 128).
fn low_bits(bits: u32) -> u128 {
    u128::MAX.checked_shr(128 - bits).unwrap_or(0)
}

/// A prefix as the index keys it: its network address as a number (IPv4 in the low 32
/// bits) and its length.
fn prefix_key(cidr: IpNet) -> (u128, u8) {
    let network = match cidr.network() {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    };
    (network, cidr.prefix_len())
}

/// Spec of a Subnet: an L2 segment with its addressing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetSpec {
    /// The Network it belongs to.
    #[serde(deserialize_with = "de_name")]
    pub network: String,
    /// The subnet, canonical (host bits zero), /30 or shorter.
    #[serde(deserialize_with = "de_subnet_cidr")]
    pub cidr: Ipv4Net,
    /// The switch's address in the subnet; the interfaces' default route.
    #[serde(deserialize_with = "de_ipv4")]
    pub gateway: Ipv4Addr,
    /// MTU given to interfaces that do not set their own (68..=65535).
    #[serde(default = "default_mtu", deserialize_with = "de_mtu")]
    pub mtu: u16,
    /// First address IPAM may hand out (default: the first host address).
    #[serde(
        default,
        deserialize_with = "de_opt_ipv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub range_start: Option<Ipv4Addr>,
    /// Last address IPAM may hand out (default: the last host address).
    #[serde(
        default,
        deserialize_with = "de_opt_ipv4",
        skip_serializing_if = "Option::is_none"
    )]
    pub range_end: Option<Ipv4Addr>,
    /// Addresses IPAM never hands out (static assignment may still use them).
    #[serde(
        default,
        deserialize_with = "de_ipv4_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub reserved: Vec<Ipv4Addr>,
    /// How long a learned MAC lives without traffic (1..=604800 s).
    #[serde(default = "default_mac_ageing")]
    pub mac_ageing_seconds: u64,
    /// Most learned MACs in this subnet (1..=1048576).
    #[serde(default = "default_mac_limit")]
    pub mac_table_limit: usize,
    /// The gateway's MAC (unicast); when absent, derived from this node's id and the
    /// Subnet's name, so it is stable across restarts.
    #[serde(
        default,
        deserialize_with = "de_opt_unicast_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_mac: Option<MacAddr>,
    /// The VXLAN network identifier that stretches this subnet over the overlay
    /// (1..=16777215); frames for MACs not on this node are tunnelled to the remote VTEPs.
    /// Needs an Overlay on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The 802.1Q VLAN (1..=4094) this subnet is bound to on the node's Uplink: the uplink
    /// becomes a trunk, the subnet's frames leave it tagged with this VLAN and tagged frames
    /// of this VLAN arriving there are switched into the subnet (hosts outside are on the
    /// subnet's L2 segment; the gateway stays the switch's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The remote VTEPs that receive this subnet's broadcast and unknown unicast (head-end
    /// replication). Default: the Overlay's `peers`. Only with `vni`.
    #[serde(
        default,
        deserialize_with = "de_ip_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub remote_vteps: Vec<IpAddr>,
    /// The gateway address is also held by other nodes stretched over this VNI (an anycast
    /// gateway: the hub's address in a runner's subnet, held by each runner that reaches that
    /// runner directly). The switch then never claims it on the segment: it resolves
    /// neighbours with ARP probes (sender 0.0.0.0, RFC 5227) and IPv6 solicitations from its
    /// link-local address, so the segment's own router keeps its neighbour entry for the
    /// address. Only with `vni`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_gateway: bool,
    /// The resolver settings interfaces get: in the CNI result, in
    /// `/etc/netns/NAME/resolv.conf` for an interface attached to a named namespace, and in
    /// DHCP answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<SubnetDns>,
    /// The switch's DHCPv4 server on this Subnet (opt in): it leases each interface its
    /// IPAM address, answered from the datapath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<SubnetDhcp>,
    /// The Subnet's IPv6 prefix (dual stack): interfaces get an IPv6 address from it too,
    /// the switch is its IPv6 router (neighbour discovery, router advertisements, routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<SubnetIpv6>,
}

/// `spec.ipv6` of a Subnet: its IPv6 prefix, gateway and IPAM range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetIpv6 {
    /// The prefix, canonical, /16 to /124 (/64 for SLAAC).
    #[serde(deserialize_with = "de_subnet_cidr6")]
    pub cidr: Ipv6Net,
    /// The switch's address in the prefix (default: the first after the Subnet-Router
    /// anycast address, `prefix::1`). The gateway also answers on its link-local address,
    /// derived from the gateway MAC.
    #[serde(
        default,
        deserialize_with = "de_opt_ipv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway: Option<Ipv6Addr>,
    /// First address IPAM may hand out (default `prefix::2`... after the gateway).
    #[serde(
        default,
        deserialize_with = "de_opt_ipv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub range_start: Option<Ipv6Addr>,
    /// Last address IPAM may hand out (default: the last of the prefix, at most
    /// 2^32 addresses after the start).
    #[serde(
        default,
        deserialize_with = "de_opt_ipv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub range_end: Option<Ipv6Addr>,
    /// Addresses IPAM never hands out.
    #[serde(
        default,
        deserialize_with = "de_ipv6_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub reserved: Vec<Ipv6Addr>,
    /// Router advertisements from the switch: answers to router solicitations (a host
    /// sends them when its interface comes up) with the prefix, the MTU and the switch as
    /// default router, and unsolicited ones to each interface when it is attached and every
    /// 200 to 600 s after (default true).
    #[serde(default = "default_true")]
    pub router_advertisements: bool,
    /// The advertised prefix may be used for stateless autoconfiguration (SLAAC, the
    /// `A` flag): interfaces may also use `prefix + EUI-64(MAC)`, which port security then
    /// accepts. Needs a /64 (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slaac: bool,
}

impl SubnetIpv6 {
    /// The gateway: the spec's, else `prefix::1`.
    pub fn gateway(&self) -> Ipv6Addr {
        self.gateway
            .unwrap_or_else(|| Ipv6Addr::from(u128::from(self.cidr.network()) | 1))
    }
}

/// Most nameservers a Subnet may list: the resolver reads three (glibc's `MAXNS`).
pub const MAX_NAMESERVERS: usize = 3;

/// Most search domains a Subnet may list (glibc's historical `MAXDNSRCH`).
pub const MAX_SEARCH_DOMAINS: usize = 6;

/// Most resolver options a Subnet may list.
pub const MAX_RESOLVER_OPTIONS: usize = 16;

/// Most classless static routes a Subnet's DHCP server may hand out.
pub const MAX_DHCP_ROUTES: usize = 16;

/// Shortest DHCP lease (seconds): clients renew at half of it.
pub const MIN_LEASE_SECONDS: u32 = 10;

/// Longest finite DHCP lease (seconds): one year.
pub const MAX_LEASE_SECONDS: u32 = 365 * 24 * 3600;

/// `spec.dns` of a Subnet: resolv.conf's `nameserver`, `search` and `options` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetDns {
    /// Resolver addresses (IPv4 or IPv6), at most [`MAX_NAMESERVERS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Search domains, at most [`MAX_SEARCH_DOMAINS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options (`ndots:5`, `edns0`, `timeout:2`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl SubnetDns {
    /// The IPv4 nameservers (DHCP carries only those).
    pub fn ipv4_nameservers(&self) -> Vec<Ipv4Addr> {
        self.nameservers
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// The text of a resolv.conf with these settings.
    pub fn resolv_conf(&self, header: &str) -> String {
        let mut text = format!("# {header}\n");
        for server in &self.nameservers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !self.search.is_empty() {
            text.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            text.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        text
    }
}

/// `spec.dhcp` of a Subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetDhcp {
    /// Whether the switch answers DHCP on this Subnet (default true once `dhcp` is given).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Lease time in seconds ([`MIN_LEASE_SECONDS`]..=[`MAX_LEASE_SECONDS`], default 3600);
    /// clients renew at half of it.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u32,
    /// Classless static routes (option 121) besides the default route via the gateway,
    /// which is always sent with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<DhcpRoute>,
}

/// One classless static route a DHCP client is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DhcpRoute {
    /// The destination prefix (canonical).
    #[serde(deserialize_with = "de_route_cidr")]
    pub destination: Ipv4Net,
    /// The router, an address of the Subnet.
    #[serde(deserialize_with = "de_ipv4")]
    pub via: Ipv4Addr,
}

fn default_true() -> bool {
    true
}

fn default_lease_seconds() -> u32 {
    3600
}

/// Status of a Subnet (computed when read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetStatus {
    /// Addresses held by interfaces.
    #[serde(default)]
    pub allocated: u64,
    /// Addresses IPAM can still hand out.
    #[serde(default)]
    pub available: u64,
    /// The MAC the gateway answers ARP with (the spec's, or the derived one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mac: Option<MacAddr>,
}

/// An L2 segment of a Network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subnet {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `Subnet`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: SubnetSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: SubnetStatus,
}

impl ResourceKind for Subnet {
    type Spec = SubnetSpec;
    type Status = SubnetStatus;

    const INFO: KindInfo = KindInfo {
        name: "Subnet",
        plural: "subnets",
        aliases: &[],
        summary: "an L2 segment of a Network: CIDR, gateway owned by the switch, MTU, IPAM range; Subnets of one Network route to each other",
        example: "\
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata:
  name: web
spec:
  network: blue
  cidr: 10.1.0.0/24
  gateway: 10.1.0.1
  mtu: 1500
  rangeStart: 10.1.0.10
  rangeEnd: 10.1.0.200
",
    };

    fn spec(&self) -> &SubnetSpec {
        &self.spec
    }

    /// Without `gateway`, the first usable address of the CIDR, as Docker and CNI's
    /// host-local give it.
    fn apply_defaults(document: &mut serde_json::Map<String, serde_json::Value>) {
        let Some(serde_json::Value::Object(spec)) = document.get_mut("spec") else {
            return;
        };
        let first = spec
            .get("cidr")
            .and_then(serde_json::Value::as_str)
            .and_then(|cidr| parse_subnet_cidr(cidr).ok())
            .and_then(|cidr| cidr.hosts().next());
        if let (false, Some(first)) = (spec.contains_key("gateway"), first) {
            spec.insert("gateway".into(), first.to_string().into());
        }
        if let Some(serde_json::Value::Object(ipv6)) = spec.get_mut("ipv6") {
            let first = ipv6
                .get("cidr")
                .and_then(serde_json::Value::as_str)
                .and_then(|cidr| parse_subnet_cidr6(cidr).ok())
                .map(|cidr| Ipv6Addr::from(u128::from(cidr.network()) | 1));
            if let (false, Some(first)) = (ipv6.contains_key("gateway"), first) {
                ipv6.insert("gateway".into(), first.to_string().into());
            }
        }
    }

    fn status_mut(&mut self) -> &mut SubnetStatus {
        &mut self.status
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        let old = cx.current.subnets.get(&self.metadata.name);
        if let Some(old) = old {
            errors.check(check_immutables(cx.origin, old, self));
        }
        let index = cx.memo.subnets(cx.next);
        errors.check(check_subnet(cx.origin, old, cx.next, index, self));
        // Always: an existing Subnet may take an IPv6 prefix (its IPv4 cidr is immutable and
        // was checked when it was created, and the Uplink's own check keeps them apart).
        errors.check(check_against_uplink(cx.origin, cx.next, self));
        if old.is_none() {
            errors.check(check_new_neighbours(cx.origin, cx.next, cx.memo, self));
            errors.check(super::network::check_routed_subnet(
                cx.origin, cx.next, self,
            ));
        }
        errors.check(check_vni(cx.origin, cx.next, index, self));
        errors.check(check_vlan(cx.origin, cx.current, cx.next, index, self));
        check_dns(cx.origin, &self.spec, errors);
        check_dhcp(cx.origin, &self.spec, errors);
        check_ipv6(cx.origin, old, cx.next, cx.memo, self, errors);
        let served = |s: &Subnet| s.spec.dhcp.as_ref().is_some_and(|d| d.enabled);
        // Turning DHCP off under interfaces that use it (new ones are refused on their own).
        if old.is_some_and(served) && !served(self) {
            let clients: Vec<&str> = cx
                .next
                .network_interfaces
                .values()
                .filter(|n| n.spec.dhcp && n.spec.subnet == self.metadata.name)
                .map(|n| n.metadata.name.as_str())
                .collect();
            if !clients.is_empty() {
                errors.push(cx.origin.invalid(
                    "spec.dhcp",
                    format!(
                        "NetworkInterfaces {} are configured over DHCP on this Subnet; keep dhcp enabled while they exist",
                        clients.join(", ")
                    ),
                ));
            }
        }
    }

    fn dependants(state: &State, name: &str) -> Vec<(&'static str, Vec<String>)> {
        let Some(subnet) = state.subnets.get(name) else {
            return Vec::new();
        };
        vec![
            (
                "NetworkInterfaces",
                state
                    .network_interfaces
                    .values()
                    .filter(|n| n.spec.subnet == name)
                    .map(|n| n.metadata.name.clone())
                    .collect(),
            ),
            // Trunks of its VLAN would pick the VLAN up again with whatever Subnet takes it.
            (
                "trunk NetworkInterfaces of its VLAN",
                state
                    .network_interfaces
                    .values()
                    .filter(|n| subnet.spec.vlan.is_some_and(|v| n.spec.trunk.contains(&v)))
                    .map(|n| n.metadata.name.clone())
                    .collect(),
            ),
            // Routes whose next hop is on this Subnet would lose their egress.
            (
                "Routes through it",
                state
                    .routes
                    .values()
                    .filter(|r| {
                        r.spec.network == subnet.spec.network
                            && routing::prefixes(subnet).any(|p| p.contains(&r.spec.next_hop))
                    })
                    .map(|r| r.metadata.name.clone())
                    .collect(),
            ),
        ]
    }

    fn observe(&mut self, state: &State, _view: &StatusView) {
        let leases = ipam::leases(state)
            .remove(&self.metadata.name)
            .unwrap_or_default();
        let pool = ipam::Pool::new(&self.spec);
        self.status.allocated = u64::try_from(leases.held().count()).unwrap_or(u64::MAX);
        self.status.available = pool.available(leases.held());
        self.status.gateway_mac = Some(routing::gateway_mac(state, self));
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec!["NAME", "NETWORK", "CIDR", "GATEWAY", "MTU"];
        if wide {
            columns.extend(["RANGE", "RESERVED", "GATEWAY-MAC", "VLAN", "IPV6", "LABELS"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let spec = &self.spec;
        let mut row = vec![
            self.metadata.name.clone(),
            spec.network.clone(),
            spec.cidr.to_string(),
            spec.gateway.to_string(),
            spec.mtu.to_string(),
        ];
        if wide {
            let range = match (spec.range_start, spec.range_end) {
                (None, None) => cell(""),
                (start, end) => format!("{}..{}", cells(start.iter()), cells(end.iter())),
            };
            let gateway_mac = self.status.gateway_mac.or(spec.gateway_mac);
            row.extend([
                range,
                cells(&spec.reserved),
                cells(gateway_mac.iter()),
                cells(spec.vlan.iter()),
                cells(spec.ipv6.iter().map(|v6| v6.cidr)),
                labels_cell(&self.metadata),
            ]);
        }
        row
    }
}

/// `spec.ipv6`: the gateway, range and reserved addresses inside the prefix (never its
/// Subnet-Router anycast address), SLAAC only on a /64, no overlap with another Subnet of
/// the Network, and the prefix and gateway fixed once interfaces hold addresses from them.
fn check_ipv6<'a>(
    origin: &Origin,
    old: Option<&Subnet>,
    next: &'a State,
    memo: &CheckMemo<'a>,
    subnet: &Subnet,
    errors: &mut Errors,
) {
    let name = &subnet.metadata.name;
    let old_v6 = old.and_then(|o| o.spec.ipv6.as_ref());
    // Who holds IPv6 addresses of the Subnet's current prefix: its interfaces, and the
    // LoadBalancers of its Network with an address inside it.
    let holders = || -> Vec<String> {
        let interfaces = next
            .network_interfaces
            .values()
            .filter(|n| n.spec.subnet == *name && n.status.ipv6.is_some())
            .map(|n| format!("NetworkInterface {:?}", n.metadata.name));
        let balancers = next
            .load_balancers
            .values()
            .filter(|b| b.spec.network == subnet.spec.network)
            .filter(|b| {
                b.spec.ips.iter().chain(&b.status.ips).any(|ip| match ip {
                    IpAddr::V6(v6) => old_v6.is_some_and(|p| p.cidr.contains(v6)),
                    IpAddr::V4(_) => false,
                })
            })
            .map(|b| format!("LoadBalancer {:?}", b.metadata.key()));
        interfaces.chain(balancers).collect()
    };
    // IPv6 Routes whose router this Subnet's prefix holds must keep it.
    if let Some(old) = old.filter(|_| old_v6.is_some()) {
        let serves = |s: &Subnet, hop: IpAddr| {
            routing::prefix_for(s, hop).is_some_and(|prefix| prefix.contains(&hop))
                && routing::reserved_role(s, hop).is_none()
        };
        let stranded: Vec<String> = next
            .routes
            .values()
            .filter(|r| r.spec.network == subnet.spec.network && r.spec.next_hop.is_ipv6())
            .filter(|r| serves(old, r.spec.next_hop) && !serves(subnet, r.spec.next_hop))
            .map(|r| format!("{} (nextHop {})", r.metadata.name, r.spec.next_hop))
            .collect();
        if !stranded.is_empty() {
            errors.push(origin.invalid(
                "spec.ipv6",
                format!(
                    "Routes {} go through routers in this Subnet's IPv6 prefix; this change would leave them without one: change or delete those Routes first",
                    stranded.join(", ")
                ),
            ));
        }
    }
    let Some(v6) = &subnet.spec.ipv6 else {
        let holders = holders();
        if old_v6.is_some() && !holders.is_empty() {
            errors.push(origin.invalid(
                "spec.ipv6",
                format!(
                    "{} hold IPv6 addresses of this Subnet; delete them (or give the LoadBalancers other addresses) before removing ipv6",
                    holders.join(", ")
                ),
            ));
        }
        return;
    };
    let cidr = v6.cidr;
    if let Some(old_v6) = old_v6 {
        let holders = holders();
        for (field, changed) in [
            ("cidr", old_v6.cidr != v6.cidr),
            ("gateway", old_v6.gateway() != v6.gateway()),
        ] {
            if changed && !holders.is_empty() {
                errors.push(origin.invalid(
                    &format!("spec.ipv6.{field}"),
                    format!(
                        "{} hold IPv6 addresses of this Subnet; the {field} cannot change while they exist",
                        holders.join(", ")
                    ),
                ));
            }
        }
    }
    let mut host = |field: &str, what: &str, addr: Ipv6Addr| {
        if !cidr.contains(&addr) {
            errors.push(origin.invalid(
                &format!("spec.ipv6.{field}"),
                format!("{what} {addr} is outside {cidr}; use an address inside the prefix"),
            ));
        } else if addr == cidr.network() {
            errors.push(origin.invalid(
                &format!("spec.ipv6.{field}"),
                format!(
                    "{what} {addr} is the Subnet-Router anycast address of {cidr}; use another address"
                ),
            ));
        }
    };
    host("gateway", "gateway", v6.gateway());
    if let Some(start) = v6.range_start {
        host("rangeStart", "rangeStart", start);
    }
    if let Some(end) = v6.range_end {
        host("rangeEnd", "rangeEnd", end);
    }
    for (index, addr) in v6.reserved.iter().enumerate() {
        if !cidr.contains(addr) {
            errors.push(origin.invalid(
                &format!("spec.ipv6.reserved[{index}]"),
                format!(
                    "reserved address {addr} is outside {cidr}; list addresses inside the prefix"
                ),
            ));
        }
    }
    if let (Some(start), Some(end)) = (v6.range_start, v6.range_end) {
        if start > end {
            errors.push(origin.invalid(
                "spec.ipv6.rangeEnd",
                format!("rangeEnd {end} is before rangeStart {start}; rangeStart must not be after rangeEnd"),
            ));
        }
    }
    if v6.slaac && cidr.prefix_len() != 64 {
        errors.push(origin.invalid(
            "spec.ipv6.slaac",
            format!("SLAAC needs a /64 prefix (RFC 4862 with Ethernet's 64-bit interface identifiers); {cidr} is not"),
        ));
    }
    let overlapping = memo
        .subnets(next)
        .overlapping(&subnet.spec.network, IpNet::V6(cidr), name);
    for other in overlapping.iter().filter_map(|o| next.subnets.get(*o)) {
        let Some(other_v6) = &other.spec.ipv6 else {
            continue;
        };
        errors.push(origin.invalid(
            "spec.ipv6.cidr",
            format!(
                "{cidr} overlaps Subnet {:?} ({}) of Network {:?}; the Subnets of one Network must not overlap",
                other.metadata.name, other_v6.cidr, subnet.spec.network
            ),
        ));
    }
    let route = memo
        .route_destinations(next)
        .get(&(subnet.spec.network.as_str(), IpNet::V6(cidr)))
        .and_then(|names| names.first())
        .and_then(|name| next.routes.get(*name));
    if let Some(route) = route {
        errors.push(origin.invalid(
            "spec.ipv6.cidr",
            format!(
                "{cidr} is the destination of Route {:?} of Network {:?}; this Subnet's connected route would hide it: delete the Route first, or choose another prefix",
                route.metadata.name, subnet.spec.network
            ),
        ));
    }
}

/// `spec.dns`: nameservers are addresses, search domains DNS names, options resolver words;
/// every wrong item is named.
fn check_dns(origin: &Origin, spec: &SubnetSpec, errors: &mut Errors) {
    let Some(dns) = &spec.dns else {
        return;
    };
    let mut at_most = |field: &str, len: usize, max: usize, why: &str| {
        if len > max {
            errors.push(origin.invalid(
                &format!("spec.dns.{field}"),
                format!("{len} {field}; {why} at most {max}"),
            ));
        }
    };
    at_most(
        "nameservers",
        dns.nameservers.len(),
        MAX_NAMESERVERS,
        "the resolver reads",
    );
    at_most("search", dns.search.len(), MAX_SEARCH_DOMAINS, "list");
    at_most("options", dns.options.len(), MAX_RESOLVER_OPTIONS, "list");
    for (index, server) in dns.nameservers.iter().enumerate() {
        if server.parse::<std::net::IpAddr>().is_err() {
            errors.push(origin.invalid(
                &format!("spec.dns.nameservers[{index}]"),
                format!("{server:?} is not an IP address; write e.g. 10.0.0.53 or fd00::53"),
            ));
        }
    }
    for (index, domain) in dns.search.iter().enumerate() {
        if let Err(why) = check_domain(domain) {
            errors.push(origin.invalid(
                &format!("spec.dns.search[{index}]"),
                format!("{domain:?} is not a domain name: {why}"),
            ));
        }
    }
    for (index, option) in dns.options.iter().enumerate() {
        let (word, value) = option.split_once(':').unwrap_or((option, ""));
        let word_ok = !word.is_empty()
            && word.len() <= 32
            && word
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        let value_ok = !option.contains(':')
            || (!value.is_empty() && value.len() <= 5 && value.chars().all(|c| c.is_ascii_digit()));
        if !word_ok || !value_ok {
            errors.push(origin.invalid(
                &format!("spec.dns.options[{index}]"),
                format!(
                    "{option:?} is not a resolver option; write a word or word:number, e.g. ndots:5, edns0, timeout:2"
                ),
            ));
        }
    }
}

/// A DNS name as a search domain: labels of 1-63 letters, digits, `-` and `_`, 253
/// characters at most, a trailing dot allowed.
pub fn check_domain(domain: &str) -> Result<(), &'static str> {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label (between dots) must have 1-63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("use letters, digits, '-' and '_' between the dots");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label must not start or end with '-'");
        }
    }
    Ok(())
}

/// `spec.dhcp`: the lease time in range; routes via addresses of the Subnet, at most
/// [`MAX_DHCP_ROUTES`], the default route not among them (it is always sent).
fn check_dhcp(origin: &Origin, spec: &SubnetSpec, errors: &mut Errors) {
    let Some(dhcp) = &spec.dhcp else {
        return;
    };
    if !(MIN_LEASE_SECONDS..=MAX_LEASE_SECONDS).contains(&dhcp.lease_seconds) {
        errors.push(origin.invalid(
            "spec.dhcp.leaseSeconds",
            format!(
                "invalid leaseSeconds {}: must be {MIN_LEASE_SECONDS}..={MAX_LEASE_SECONDS} (default 3600)",
                dhcp.lease_seconds
            ),
        ));
    }
    if dhcp.routes.len() > MAX_DHCP_ROUTES {
        errors.push(origin.invalid(
            "spec.dhcp.routes",
            format!(
                "{} routes; a DHCP answer carries at most {MAX_DHCP_ROUTES}",
                dhcp.routes.len()
            ),
        ));
    }
    for (index, route) in dhcp.routes.iter().enumerate() {
        if route.destination.prefix_len() == 0 {
            errors.push(origin.invalid(
                &format!("spec.dhcp.routes[{index}].destination"),
                format!(
                    "the default route is always sent, via the gateway {}; list other destinations only",
                    spec.gateway
                ),
            ));
        }
        let via = route.via;
        if !spec.cidr.contains(&via) || via == spec.cidr.network() || via == spec.cidr.broadcast() {
            errors.push(origin.invalid(
                &format!("spec.dhcp.routes[{index}].via"),
                format!(
                    "router {via} is not a host address of {}; a client reaches only routers on its own subnet",
                    spec.cidr
                ),
            ));
        }
    }
}

/// What a Subnet keeps for life: its Network, CIDR and gateway.
fn check_immutables(origin: &Origin, old: &Subnet, new: &Subnet) -> Result<(), ApiError> {
    let name = &old.metadata.name;
    let hint = recreate_hint(Kind::Subnet);
    if old.spec.network != new.spec.network {
        return Err(origin.invalid(
            "spec.network",
            format!(
                "Subnet {name:?} belongs to Network {:?}; network cannot change: {hint}",
                old.spec.network
            ),
        ));
    }
    if old.spec.cidr != new.spec.cidr {
        return Err(origin.invalid(
            "spec.cidr",
            format!(
                "Subnet {name:?} has cidr {}; cidr cannot change: {hint}",
                old.spec.cidr
            ),
        ));
    }
    if old.spec.gateway != new.spec.gateway {
        return Err(origin.invalid(
            "spec.gateway",
            format!(
                "Subnet {name:?} has gateway {}; gateway cannot change: {hint}",
                old.spec.gateway
            ),
        ));
    }
    Ok(())
}

/// A Subnet against the state: its Network exists; gateway, range and reserved addresses are
/// host addresses of the CIDR; MAC ageing and limit in range; `gatewayMac` no interface's; no
/// overlap with another Subnet of its Network; an MTU that interfaces inherit stays.
fn check_subnet(
    origin: &Origin,
    old: Option<&Subnet>,
    next: &State,
    index: &SubnetIndex<'_>,
    subnet: &Subnet,
) -> Result<(), ApiError> {
    let spec = &subnet.spec;
    let name = &subnet.metadata.name;
    let cidr = spec.cidr;
    if !next.networks.contains_key(&spec.network) {
        return Err(origin.invalid(
            "spec.network",
            format!(
                "Network {:?} does not exist; create it first (it may be in the same input)",
                spec.network
            ),
        ));
    }
    let host = |field: &str, what: &str, addr: Ipv4Addr| -> Result<(), ApiError> {
        if !cidr.contains(&addr) {
            Err(origin.invalid(
                field,
                format!("{what} {addr} is outside {cidr}; use a host address inside the subnet"),
            ))
        } else if addr == cidr.network() || addr == cidr.broadcast() {
            let which = if addr == cidr.network() {
                "network"
            } else {
                "broadcast"
            };
            Err(origin.invalid(
                field,
                format!(
                    "{what} {addr} is the {which} address of {cidr}; use a host address ({}..={})",
                    Ipv4Addr::from(u32::from(cidr.network()) + 1),
                    Ipv4Addr::from(u32::from(cidr.broadcast()) - 1)
                ),
            ))
        } else {
            Ok(())
        }
    };
    host("spec.gateway", "gateway", spec.gateway)?;
    if let Some(start) = spec.range_start {
        host("spec.rangeStart", "rangeStart", start)?;
    }
    if let Some(end) = spec.range_end {
        host("spec.rangeEnd", "rangeEnd", end)?;
    }
    if let (Some(start), Some(end)) = (spec.range_start, spec.range_end) {
        if start > end {
            return Err(origin.invalid(
                "spec.rangeEnd",
                format!("rangeEnd {end} is before rangeStart {start}; rangeStart must not be after rangeEnd"),
            ));
        }
    }
    for (index, addr) in spec.reserved.iter().enumerate() {
        if !cidr.contains(addr) {
            return Err(origin.invalid(
                &format!("spec.reserved[{index}]"),
                format!(
                    "reserved address {addr} is outside {cidr}; list addresses inside the subnet"
                ),
            ));
        }
    }
    if !(1..=MAX_MAC_AGEING_SECONDS).contains(&spec.mac_ageing_seconds) {
        return Err(origin.invalid(
            "spec.macAgeingSeconds",
            format!(
                "invalid macAgeingSeconds {}: must be 1..={MAX_MAC_AGEING_SECONDS} (default 300)",
                spec.mac_ageing_seconds
            ),
        ));
    }
    if !(1..=MAX_MAC_TABLE_LIMIT).contains(&spec.mac_table_limit) {
        return Err(origin.invalid(
            "spec.macTableLimit",
            format!(
                "invalid macTableLimit {}: must be 1..={MAX_MAC_TABLE_LIMIT} (default 8192)",
                spec.mac_table_limit
            ),
        ));
    }
    if let Some(mac) = spec.gateway_mac {
        let user = next
            .network_interfaces
            .values()
            .find(|n| n.spec.subnet == *name && n.spec.mac.or(n.status.mac) == Some(mac));
        if let Some(user) = user {
            return Err(origin.conflict(
                "spec.gatewayMac",
                format!(
                    "MAC {mac} is used by NetworkInterface {:?} in Subnet {name:?}; choose another gatewayMac, or leave it out to derive one",
                    user.metadata.name
                ),
            ));
        }
    }
    let overlapping = index.overlapping(&spec.network, IpNet::V4(cidr), name);
    if let Some(other) = overlapping.first().and_then(|o| next.subnets.get(*o)) {
        return Err(origin.invalid(
            "spec.cidr",
            format!(
                "{cidr} overlaps Subnet {:?} ({}) of Network {:?}; the Subnets of one Network must not overlap",
                other.metadata.name, other.spec.cidr, spec.network
            ),
        ));
    }
    // The MTU of interfaces that inherit it is fixed while they exist.
    if let Some(old) = old.map(|o| o.spec.mtu) {
        let inheriting: Vec<&str> = next
            .network_interfaces
            .values()
            .filter(|n| n.spec.subnet == *name && n.spec.mtu.is_none())
            .map(|n| n.metadata.name.as_str())
            .collect();
        if old != spec.mtu && !inheriting.is_empty() {
            return Err(origin.invalid(
                "spec.mtu",
                format!(
                    "Subnet {name:?} has mtu {old}, used by NetworkInterfaces {}; the mtu cannot change while they use it: delete them first, or give each its own spec.mtu",
                    inheriting.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// A new Subnet must not overlap a Subnet of a Network its own is `Ready`-peered with, and
/// must not take the destination of a Route of its Network (its connected route would hide
/// the Route).
fn check_new_neighbours<'a>(
    origin: &Origin,
    next: &'a State,
    memo: &CheckMemo<'a>,
    subnet: &Subnet,
) -> Result<(), ApiError> {
    let network = &subnet.spec.network;
    let cidr = subnet.spec.cidr;
    for peer in routing::ready_peers(next, network) {
        let other = routing::subnets_of(next, peer)
            .into_iter()
            .find(|o| routing::overlaps(o.spec.cidr, cidr));
        if let Some(other) = other {
            return Err(origin.invalid(
                "spec.cidr",
                format!(
                    "{cidr} of Network {network:?} overlaps Subnet {:?} ({}) of Network {peer:?}, which is peered with Network {network:?} (Ready); peered Networks must not have overlapping CIDRs: choose a CIDR outside the peer's Subnets, or remove the peering",
                    other.metadata.name, other.spec.cidr
                ),
            ));
        }
    }
    let route = memo
        .route_destinations(next)
        .get(&(network.as_str(), IpNet::V4(cidr)))
        .and_then(|names| names.first())
        .and_then(|name| next.routes.get(*name));
    if let Some(route) = route {
        return Err(origin.invalid(
            "spec.cidr",
            format!(
                "{cidr} is the destination of Route {:?} of Network {network:?}; this Subnet's connected route would hide it: delete the Route first, or choose another CIDR",
                route.metadata.name
            ),
        ));
    }
    Ok(())
}

/// A new Subnet must not overlap the link of an Uplink address.
///
/// # Errors
/// [`ApiError::Invalid`] on `spec.cidr`.
fn check_against_uplink(origin: &Origin, next: &State, subnet: &Subnet) -> Result<(), ApiError> {
    let Some(uplink) = nat_rules::uplink(next) else {
        return Ok(());
    };
    let cidr = subnet.spec.cidr;
    if let Some(address) = uplink
        .spec
        .addresses
        .iter()
        .find(|a| routing::overlaps(a.prefix(), cidr))
    {
        return Err(origin.invalid(
            "spec.cidr",
            format!(
                "{cidr} overlaps the link {} of address {address} of Uplink {:?}; the uplink's link and the Subnets must not overlap: choose another CIDR",
                address.prefix(),
                uplink.metadata.name
            ),
        ));
    }
    let (Some(subnet6), Some(uplink6)) = (&subnet.spec.ipv6, &uplink.spec.ipv6) else {
        return Ok(());
    };
    let cidr6 = subnet6.cidr;
    if let Some(address) = uplink6
        .addresses
        .iter()
        .find(|a| a.prefix().contains(&cidr6.network()) || cidr6.contains(&a.prefix().network()))
    {
        return Err(origin.invalid(
            "spec.ipv6.cidr",
            format!(
                "{cidr6} overlaps the link {} of address {address} of Uplink {:?}; the uplink's link and the Subnets must not overlap: choose another prefix",
                address.prefix(),
                uplink.metadata.name
            ),
        ));
    }
    Ok(())
}

/// The highest 802.1Q VLAN ID a Subnet may take (4095 is reserved, 0 means no VLAN).
pub const MAX_VLAN: u16 = 4094;

/// `spec.vlan`: in range, and no other Subnet's (one Uplink per node: a VLAN is one segment).
fn check_vlan(
    origin: &Origin,
    current: &State,
    next: &State,
    index: &SubnetIndex<'_>,
    subnet: &Subnet,
) -> Result<(), ApiError> {
    let name = subnet.metadata.name.as_str();
    // The Subnet keeps the VLAN its interfaces use: its access ports', trunks' of it.
    let old = current
        .subnets
        .get(name)
        .and_then(|s| s.spec.vlan)
        .filter(|old| subnet.spec.vlan != Some(*old));
    let user = old.and_then(|old| {
        next.network_interfaces.values().find(|nic| {
            (nic.spec.subnet == name && nic.spec.vlan == Some(old)) || nic.spec.trunk.contains(&old)
        })
    });
    if let (Some(vlan), Some(nic)) = (old, user) {
        return Err(origin.conflict(
            "spec.vlan",
            format!(
                "NetworkInterface {:?} uses VLAN {vlan} of this Subnet (an access port or a trunk of it); change or delete it first",
                nic.metadata.key()
            ),
        ));
    }
    let Some(vlan) = subnet.spec.vlan else {
        return Ok(());
    };
    if subnet.spec.vni.is_some() {
        // Two nodes on one VLAN would pass a broadcast VLAN -> overlay -> VLAN without end.
        return Err(origin.invalid(
            "spec.vlan",
            "a Subnet is stretched over the overlay (vni) or onto a VLAN of the Uplink, not both: a broadcast could loop between them",
        ));
    }
    if vlan == 0 || vlan > MAX_VLAN {
        return Err(origin.invalid(
            "spec.vlan",
            format!(
                "{vlan} is out of range: an 802.1Q VLAN ID is 1..={MAX_VLAN} (0 and 4095 are reserved)"
            ),
        ));
    }
    if let Some(other) = index.with_vlan(vlan, name) {
        return Err(origin.conflict(
            "spec.vlan",
            format!(
                "VLAN {vlan} of the Uplink is already Subnet {other:?}'s; each VLAN is one segment: choose another VLAN"
            ),
        ));
    }
    Ok(())
}

/// A Subnet's overlay fields: a VNI in range and no other Subnet's, remote VTEPs only
/// with a VNI, each reachable.
///
/// # Errors
/// [`ApiError`] naming the field.
fn check_vni(
    origin: &Origin,
    next: &State,
    index: &SubnetIndex<'_>,
    subnet: &Subnet,
) -> Result<(), ApiError> {
    let name = subnet.metadata.name.as_str();
    let Some(vni) = subnet.spec.vni else {
        if !subnet.spec.remote_vteps.is_empty() {
            return Err(origin.invalid(
                "spec.remoteVteps",
                "only a Subnet with a vni has remote VTEPs; add vni: N or remove remoteVteps",
            ));
        }
        if subnet.spec.shared_gateway {
            return Err(origin.invalid(
                "spec.sharedGateway",
                "only a Subnet with a vni shares its gateway with other nodes; add vni: N or \
                 remove sharedGateway",
            ));
        }
        return Ok(());
    };
    if vni == 0 || vni > MAX_VNI {
        return Err(origin.invalid(
            "spec.vni",
            format!("{vni} is out of range: a VNI is 1..={MAX_VNI}"),
        ));
    }
    if let Some(other) = index.with_vni(vni, name) {
        return Err(origin.conflict(
            "spec.vni",
            format!(
                "VNI {vni} is already Subnet {other:?}'s; each stretched Subnet has its own VNI"
            ),
        ));
    }
    let local = next.overlays.values().next().map(|o| o.spec.local_address);
    for (i, vtep) in subnet.spec.remote_vteps.iter().enumerate() {
        let field = format!("spec.remoteVteps[{i}]");
        overlay::check_reachable(origin, &field, *vtep)?;
        if let Some(local) = local {
            overlay::check_family(origin, &field, *vtep, local)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{
        BASE, apply, base, blue_and_red, doc, nat_base, network, nic, refusal, refused, route,
        subnet, try_plan,
    };

    /// The index answers what a scan of every Subnet answers: overlaps both ways (holding,
    /// held, equal), per Network and family, never the Subnet itself; VNIs and VLANs.
    #[test]
    fn the_subnet_index_agrees_with_a_scan() {
        let mut state = State::default();
        let cidrs = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.0/24",
            "10.2.0.0/16",
            "10.255.255.252/30",
            "192.168.0.0/24",
            "0.0.0.0/1",
            "172.16.0.0/12",
        ];
        for (i, cidr) in cidrs.iter().enumerate() {
            let network = if i % 4 == 3 { "red" } else { "blue" };
            let cidr: Ipv4Net = cidr.parse().unwrap();
            let gateway = Ipv4Addr::from_bits(cidr.network().to_bits() + 1);
            let six = if i % 2 == 0 {
                format!(r#","ipv6":{{"cidr":"fd00:{i}::/{}"}}"#, 32 + i * 4)
            } else {
                String::new()
            };
            let subnet: Subnet = serde_json::from_str(&format!(
                r#"{{"apiVersion":"vswitch/v1alpha1","kind":"Subnet","metadata":{{"name":"s{i}"}},"spec":{{"network":"{network}","cidr":"{cidr}","gateway":"{gateway}","vni":{},"vlan":{}{six}}}}}"#,
                100 + i % 3,
                10 + i % 2
            ))
            .unwrap();
            state.subnets.insert(format!("s{i}"), subnet);
        }
        let index = SubnetIndex::of(&state);
        let probes: Vec<IpNet> = [
            "10.0.0.0/8",
            "10.1.2.128/25",
            "10.3.0.0/16",
            "0.0.0.0/0",
            "11.0.0.0/8",
            "10.255.255.254/32",
            "fd00::/16",
            "fd00:2::/48",
            "fd00:7::/64",
        ]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
        let overlaps = |a: IpNet, b: IpNet| a.contains(&b.network()) || b.contains(&a.network());
        for network in ["blue", "red", "green"] {
            for probe in &probes {
                for except in ["s0", "s2", "none"] {
                    let scanned: Vec<&str> = state
                        .subnets
                        .values()
                        .filter(|s| s.spec.network == network && s.metadata.name != except)
                        .filter(|s| match probe {
                            IpNet::V4(_) => overlaps(IpNet::V4(s.spec.cidr), *probe),
                            IpNet::V6(_) => s
                                .spec
                                .ipv6
                                .as_ref()
                                .is_some_and(|v6| overlaps(IpNet::V6(v6.cidr), *probe)),
                        })
                        .map(|s| s.metadata.name.as_str())
                        .collect();
                    assert_eq!(
                        index.overlapping(network, *probe, except),
                        scanned,
                        "{network} {probe} except {except}"
                    );
                }
            }
        }
        assert_eq!(index.with_vni(100, "s0"), Some("s3"));
        assert_eq!(index.with_vni(101, "none"), Some("s1"));
        assert_eq!(index.with_vni(105, "none"), None);
        assert_eq!(index.with_vlan(11, "s1"), Some("s3"));
        assert_eq!(index.with_vlan(12, "s1"), None);
    }

    /// `BASE`'s Network with Subnet `web` carrying `extra` in its spec (flow style).
    fn web_with(extra: &str) -> String {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: blue}}\n---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: web}}\nspec: {{network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1, {extra}}}\n"
        )
    }

    #[test]
    fn dns_and_dhcp_are_checked_field_by_field() {
        let good = web_with(
            "dns: {nameservers: [10.1.0.53, 'fd00::53'], search: [svc.example, example.], options: ['ndots:5', edns0]}, dhcp: {leaseSeconds: 600, routes: [{destination: 10.200.0.0/16, via: 10.1.0.254}]}",
        );
        let state = apply(&State::default(), &good);
        let spec = &state.subnets["web"].spec;
        assert_eq!(
            spec.dhcp.as_ref().map(|d| (d.enabled, d.lease_seconds)),
            Some((true, 600))
        );
        assert_eq!(
            spec.dns.as_ref().map(SubnetDns::ipv4_nameservers),
            Some(vec![Ipv4Addr::new(10, 1, 0, 53)])
        );
        let cases = [
            (
                "dns: {nameservers: [10.1.0.300]}",
                "documents[1].spec.dns.nameservers[0]",
                "not an IP address",
            ),
            (
                "dns: {nameservers: [1.1.1.1, 1.1.1.2, 1.1.1.3, 1.1.1.4]}",
                "documents[1].spec.dns.nameservers",
                "at most 3",
            ),
            (
                "dns: {search: [ok.example, 'bad domain']}",
                "documents[1].spec.dns.search[1]",
                "not a domain name",
            ),
            (
                "dns: {search: ['-x.example']}",
                "documents[1].spec.dns.search[0]",
                "must not start or end",
            ),
            (
                "dns: {options: ['ndots:x']}",
                "documents[1].spec.dns.options[0]",
                "not a resolver option",
            ),
            (
                "dhcp: {leaseSeconds: 5}",
                "documents[1].spec.dhcp.leaseSeconds",
                "must be 10..=",
            ),
            (
                "dhcp: {routes: [{destination: 0.0.0.0/0, via: 10.1.0.254}]}",
                "documents[1].spec.dhcp.routes[0].destination",
                "always sent",
            ),
            (
                "dhcp: {routes: [{destination: 10.9.0.0/16, via: 10.2.0.1}]}",
                "documents[1].spec.dhcp.routes[0].via",
                "not a host address of 10.1.0.0/24",
            ),
            (
                "dhcp: {lease: 5}",
                "documents[1].spec.dhcp.lease",
                "unknown field `lease`",
            ),
        ];
        for (extra, field, words) in cases {
            refused(&State::default(), &web_with(extra), 400, field, &[words]);
        }
        // Every wrong item is reported, not only the first.
        let both = refusal(
            &State::default(),
            &web_with("dns: {nameservers: [x]}, dhcp: {leaseSeconds: 1}"),
        )
        .to_string();
        assert!(
            both.contains("nameservers[0]") && both.contains("leaseSeconds"),
            "{both}"
        );
    }

    #[test]
    fn interfaces_over_dhcp_need_the_subnets_server() {
        let plain = web_with("mtu: 1500");
        refused(
            &State::default(),
            &format!("{plain}{}", nic("c1", ", dhcp: true")),
            400,
            "documents[2].spec.dhcp",
            &["serves no DHCP"],
        );
        let served = format!("{}{}", web_with("dhcp: {}"), nic("c1", ", dhcp: true"));
        let state = apply(&State::default(), &served);
        assert!(state.network_interfaces["c1"].spec.dhcp);
        // The Subnet cannot stop serving while the interface relies on it.
        refused(
            &state,
            &web_with("dhcp: {enabled: false}"),
            400,
            "documents[1].spec.dhcp",
            &["c1", "configured over DHCP"],
        );
        refused(
            &State::default(),
            &format!(
                "{}{}",
                web_with("dhcp: {}"),
                nic("c1", ", dhcp: true, routes: [10.9.0.0/16]")
            ),
            400,
            "documents[2].spec.routes",
            &["dhcp.routes"],
        );
    }

    #[test]
    fn subnet_may_name_a_network_later_in_the_batch() {
        let docs: Vec<&str> = BASE.split("---\n").collect();
        let reversed = format!("{}---\n{}", docs[1], docs[0]);
        assert_eq!(apply(&State::default(), &reversed).subnets.len(), 1);
        let err = refusal(&State::default(), docs[1]);
        assert_eq!(
            err.to_string(),
            "document 1 (Subnet \"web\"): spec.network: Network \"blue\" does not exist; create \
             it first (it may be in the same input)"
        );
        assert_eq!(err.field(), Some("documents[0].spec.network"));
    }

    #[test]
    fn subnet_address_checks() {
        let cases = [
            (
                "gateway: 10.1.0.1",
                "gateway: 10.2.0.1",
                "spec.gateway: gateway 10.2.0.1 is outside 10.1.0.0/24",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.0",
                "spec.gateway: gateway 10.1.0.0 is the network address of 10.1.0.0/24; use a host address (10.1.0.1..=10.1.0.254)",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.255",
                "is the broadcast address",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, rangeStart: 10.1.0.50, rangeEnd: 10.1.0.40",
                "spec.rangeEnd: rangeEnd 10.1.0.40 is before rangeStart 10.1.0.50",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, rangeStart: 10.1.1.5",
                "spec.rangeStart: rangeStart 10.1.1.5 is outside",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, rangeEnd: 10.1.0.255",
                "spec.rangeEnd: rangeEnd 10.1.0.255 is the broadcast address",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, reserved: [10.1.0.9, 10.9.0.9]",
                "spec.reserved[1]: reserved address 10.9.0.9 is outside 10.1.0.0/24",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, macAgeingSeconds: 0",
                "spec.macAgeingSeconds: invalid macAgeingSeconds 0: must be 1..=604800",
            ),
            (
                "gateway: 10.1.0.1",
                "gateway: 10.1.0.1, macTableLimit: 0",
                "spec.macTableLimit: invalid macTableLimit 0",
            ),
        ];
        for (from, to, want) in cases {
            let text = BASE.replace(from, to);
            let msg = refusal(&State::default(), &text).to_string();
            assert!(msg.starts_with("document 2 (Subnet \"web\"): "), "{msg}");
            assert!(msg.contains(want), "want {want:?} in {msg:?}");
        }
    }

    #[test]
    fn subnets_of_one_network_must_not_overlap() {
        let other = "---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: db}\nspec: {network: NET, cidr: 10.1.0.128/25, gateway: 10.1.0.129}\n";
        let err = refusal(&base(), &other.replace("NET", "blue"));
        assert_eq!(
            err.to_string(),
            "document 1 (Subnet \"db\"): spec.cidr: 10.1.0.128/25 overlaps Subnet \"web\" \
             (10.1.0.0/24) of Network \"blue\"; the Subnets of one Network must not overlap"
        );
        // Another Network is another address space.
        let red = "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: red}\n";
        let text = format!("{red}{}", other.replace("NET", "red"));
        assert_eq!(apply(&base(), &text).subnets.len(), 2);
    }

    #[test]
    fn subnet_mtu_is_fixed_while_interfaces_inherit_it() {
        let current = apply(&base(), &nic("a", ""));
        let bigger = BASE.replace("gateway: 10.1.0.1", "gateway: 10.1.0.1, mtu: 9000");
        let msg = refusal(&current, &bigger).to_string();
        assert!(
            msg.contains("spec.mtu: Subnet \"web\" has mtu 1500, used by NetworkInterfaces a;"),
            "{msg}"
        );
        // Fine once the interface has its own MTU, or with no interfaces.
        let text = format!("{bigger}{}", nic("a", ", mtu: 1500"));
        assert!(try_plan(&current, &text).is_ok());
        assert_eq!(apply(&base(), &bigger).subnets["web"].spec.mtu, 9000);
    }

    #[test]
    fn a_new_subnet_may_not_overlap_a_ready_peer() {
        let current = blue_and_red("10.2.0.0/24", "10.2.0.1");
        let peered = apply(
            &current,
            &format!(
                "{}{}",
                network("blue", "{name: to-red, network: red}"),
                network("red", "{name: to-blue, network: blue}")
            ),
        );
        let err = refusal(&peered, &subnet("r2", "red", "10.1.0.128/25", "10.1.0.129"));
        assert_eq!(
            err.to_string(),
            "document 1 (Subnet \"r2\"): spec.cidr: 10.1.0.128/25 of Network \"red\" overlaps \
             Subnet \"web\" (10.1.0.0/24) of Network \"blue\", which is peered with Network \"red\" \
             (Ready); peered Networks must not have overlapping CIDRs: choose a CIDR outside the \
             peer's Subnets, or remove the peering"
        );
        // The unchanged Networks earlier in the input are not blamed for the new Subnet.
        let text = format!(
            "{}{}",
            network("red", "{name: to-blue, network: blue}"),
            subnet("r2", "red", "10.1.0.128/25", "10.1.0.129")
        );
        assert!(
            refusal(&peered, &text)
                .to_string()
                .starts_with("document 2 (Subnet \"r2\")")
        );
        // Pending peerings do not constrain addresses: remove one side, and it fits.
        let pending = apply(&peered, &network("red", ""));
        let state = apply(
            &pending,
            &subnet("r2", "red", "10.1.0.128/25", "10.1.0.129"),
        );
        assert_eq!(state.subnets.len(), 3);
        // ...but then the peering cannot become Ready again.
        let err = refusal(&state, &network("red", "{name: to-blue, network: blue}"));
        assert!(err.to_string().contains("(10.1.0.128/25)"), "{err}");
    }

    #[test]
    fn a_new_subnet_may_not_take_a_routes_destination() {
        let current = apply(&base(), &route("lab", "blue", "10.5.0.0/24", "10.1.0.9"));
        let err = refusal(&current, &subnet("lab", "blue", "10.5.0.0/24", "10.5.0.1"));
        assert_eq!(
            err.to_string(),
            "document 1 (Subnet \"lab\"): spec.cidr: 10.5.0.0/24 is the destination of Route \
             \"lab\" of Network \"blue\"; this Subnet's connected route would hide it: delete the \
             Route first, or choose another CIDR"
        );
        // A wider Subnet is fine: the Route is more specific.
        assert_eq!(
            apply(&current, &subnet("lab", "blue", "10.5.0.0/16", "10.5.0.1"))
                .subnets
                .len(),
            2
        );
    }

    #[test]
    fn a_new_subnet_may_not_overlap_the_uplinks_link() {
        let state = nat_base();
        refused(
            &state,
            &doc(
                "Subnet",
                "outside",
                "{network: blue, cidr: 198.51.100.128/25, gateway: 198.51.100.129}",
            ),
            400,
            "documents[0].spec.cidr",
            &["overlaps the link 198.51.100.0/24 of address 198.51.100.10/24 of Uplink \"wan\""],
        );
    }

    #[test]
    fn subnet_vnis_are_checked() {
        let mut state = State::default();
        let doc: Subnet = serde_norway::from_str(
            "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: a}\nspec: {network: n, cidr: 10.9.0.0/24, gateway: 10.9.0.1, vni: 42}\n",
        )
        .unwrap();
        let origin = Origin::resource(Kind::Subnet, "b");
        check_vni(&origin, &state, &SubnetIndex::of(&state), &doc).expect("valid");
        state.subnets.insert("a".into(), doc.clone());
        let mut b = doc.clone();
        b.metadata.name = "b".into();
        let err = check_vni(&origin, &state, &SubnetIndex::of(&state), &b)
            .unwrap_err()
            .to_string();
        assert!(err.contains("VNI 42 is already Subnet \"a\""), "{err}");
        let mut zero = doc.clone();
        zero.spec.vni = Some(0);
        assert!(check_vni(&origin, &state, &SubnetIndex::of(&state), &zero).is_err());
        let mut orphan = doc.clone();
        orphan.spec.vni = None;
        orphan.spec.remote_vteps = vec![Ipv4Addr::new(192, 168, 1, 1).into()];
        assert!(check_vni(&origin, &state, &SubnetIndex::of(&state), &orphan).is_err());
        // Remote VTEPs are of the underlay's family (the Overlay's localAddress).
        let mut overlay = crate::control::testing::overlay_of(OverlayRole::Mesh);
        overlay.spec.local_address = "fd00:50::1".parse().unwrap();
        state.overlays.insert("node-a".into(), overlay);
        let mut stretched = doc;
        stretched.spec.remote_vteps = vec![
            "fd00:50::2".parse().unwrap(),
            Ipv4Addr::new(192, 168, 1, 1).into(),
        ];
        let err = check_vni(&origin, &state, &SubnetIndex::of(&state), &stretched)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.remoteVteps[1]") && err.contains("fd00:50::1 is IPv6"),
            "{err}"
        );
        stretched.spec.remote_vteps.pop();
        check_vni(&origin, &state, &SubnetIndex::of(&state), &stretched)
            .expect("an IPv6 remote VTEP");
    }
}
