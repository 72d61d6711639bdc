//! `Uplink`: the node's way out, a host interface where the switch owns NAT and
//! virtual-IP addresses (at most one per node).

#[allow(unused_imports)]
use super::prelude::*;

/// One address the switch owns on the Uplink: `A.B.C.D/N` (the address with the prefix of
/// the link it is on, as `ip addr add` takes it) or `A.B.C.D` (the address alone, `/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UplinkAddress(pub Ipv4Net);

impl UplinkAddress {
    /// The address the switch owns.
    pub fn addr(self) -> Ipv4Addr {
        self.0.addr()
    }

    /// The on-link prefix (host bits cleared).
    pub fn prefix(self) -> Ipv4Net {
        self.0.trunc()
    }
}

impl fmt::Display for UplinkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == 32 {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// An uplink address that does not parse or cannot be owned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid uplink address {text:?}: {why}")]
pub struct UplinkAddressError {
    /// The text as written.
    pub text: String,
    /// What is wrong, and what would be valid.
    pub why: String,
}

impl FromStr for UplinkAddress {
    type Err = UplinkAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| UplinkAddressError {
            text: s.to_string(),
            why: why.to_string(),
        };
        let form = "write A.B.C.D/N (the address with its link's prefix, e.g. 198.51.100.10/24) or A.B.C.D";
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => {
                let len = len
                    .parse::<u8>()
                    .ok()
                    .filter(|len| *len <= 32)
                    .ok_or_else(|| err(&format!("the prefix length must be 0..=32; {form}")))?;
                (addr, len)
            }
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| err(&format!("{addr:?} is not an IPv4 address; {form}")))?;
        let net = Ipv4Net::new(addr, len)
            .map_err(|_| err(&format!("the prefix length must be 0..=32; {form}")))?;
        if addr.is_unspecified()
            || addr.is_loopback()
            || addr.is_multicast()
            || addr.is_broadcast()
            || addr.octets()[0] >= 240
        {
            return Err(err(
                "not a unicast host address (0.0.0.0/8, loopback, multicast and reserved \
                 addresses cannot be owned); use an address of the uplink's network",
            ));
        }
        if len <= 30 && (addr == net.network() || addr == net.broadcast()) {
            let which = if addr == net.network() {
                "network"
            } else {
                "broadcast"
            };
            return Err(err(&format!(
                "{addr} is the {which} address of {}; the switch owns one address per entry: \
                 write a host address with its link's prefix (e.g. {}/{len}), or list single \
                 addresses",
                net.trunc(),
                Ipv4Addr::from(u32::from(net.network()) + 1)
            )));
        }
        Ok(UplinkAddress(net))
    }
}

impl Serialize for UplinkAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UplinkAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// The shortest on-link prefix an Uplink IPv6 address may have.
pub const MIN_UPLINK6_PREFIX: u8 = 16;

/// One IPv6 address the switch owns on the Uplink: `X:X::X/N` (with its link's prefix) or
/// `X:X::X` (`/128`). Global or unique-local unicast: the switch's link-local address on the
/// link is derived from its MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UplinkAddress6(pub Ipv6Net);

impl UplinkAddress6 {
    /// The address the switch owns.
    pub fn addr(self) -> Ipv6Addr {
        self.0.addr()
    }

    /// The on-link prefix (host bits cleared).
    pub fn prefix(self) -> Ipv6Net {
        self.0.trunc()
    }
}

impl fmt::Display for UplinkAddress6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == 128 {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl FromStr for UplinkAddress6 {
    type Err = UplinkAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| UplinkAddressError {
            text: s.to_string(),
            why: why.to_string(),
        };
        let form =
            "write X:X::X/N (the address with its link's prefix, e.g. 2001:db8::10/64) or X:X::X";
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => {
                let len = len
                    .parse::<u8>()
                    .ok()
                    .filter(|len| *len <= 128)
                    .ok_or_else(|| err(&format!("the prefix length must be 0..=128; {form}")))?;
                (addr, len)
            }
            None => (s, 128),
        };
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| err(&format!("{addr:?} is not an IPv6 address; {form}")))?;
        let net = Ipv6Net::new(addr, len)
            .map_err(|_| err(&format!("the prefix length must be 0..=128; {form}")))?;
        if addr.is_unspecified()
            || addr.is_loopback()
            || addr.is_multicast()
            || addr.to_ipv4_mapped().is_some()
        {
            return Err(err(
                "not a unicast address (unspecified, loopback, multicast and IPv4-mapped \
                 addresses cannot be owned); use an address of the uplink's network",
            ));
        }
        if len < MIN_UPLINK6_PREFIX {
            return Err(err(&format!(
                "the prefix length must be {MIN_UPLINK6_PREFIX}..=128: a shorter one would put most of the IPv6 Internet on the link; {form}"
            )));
        }
        if addr.segments()[0] & 0xffc0 == 0xfe80 {
            return Err(err(
                "a link-local address; the switch derives its own link-local address from its \
                 MAC: list global or unique-local addresses",
            ));
        }
        if len < 127 && addr == net.network() {
            return Err(err(&format!(
                "{addr} is the subnet-router anycast address of {}; write a host address with \
                 its link's prefix",
                net.trunc()
            )));
        }
        Ok(UplinkAddress6(net))
    }
}

impl Serialize for UplinkAddress6 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UplinkAddress6 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

/// `spec.ipv6` of the Uplink: the IPv6 addresses the switch owns on the link (NAT66,
/// IPv6 port forwards) and the IPv6 next hop toward the outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UplinkIpv6 {
    /// The IPv6 addresses the switch owns on the link; it answers neighbour solicitations for
    /// them (and for its link-local address) from its MAC.
    pub addresses: Vec<UplinkAddress6>,
    /// The IPv6 next hop: a router's link-local address (as routers advertise themselves), or
    /// a global address inside the prefix of one of `addresses`. Resolved by neighbour
    /// discovery.
    #[serde(deserialize_with = "de_ipv6")]
    pub gateway: Ipv6Addr,
}

/// Spec of the Uplink: the host interface the switch reads and writes with AF_PACKET, the
/// addresses it owns there, and the next hop toward the outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UplinkSpec {
    /// A host interface in vswitchd's namespace (e.g. `eth1`); not one of the switch's ports.
    /// Give it, or `interfaces` for a bond.
    #[serde(
        default,
        deserialize_with = "de_ifname",
        skip_serializing_if = "String::is_empty"
    )]
    pub interface: String,
    /// Host interfaces bonded into one uplink (2 to 8; with `bond`), instead of `interface`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// How `interfaces` are bonded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondSpec>,
    /// The tags of the trunk's VLANs (the Subnets with a `vlan`): `802.1Q` (the default,
    /// TPID 0x8100), or `802.1ad` (service tags, TPID 0x88a8, as a provider's QinQ network
    /// takes them). Frames tagged with the other protocol, and stacked tags, are refused.
    #[serde(default, skip_serializing_if = "VlanProtocol::is_default")]
    pub vlan_protocol: VlanProtocol,
    /// The addresses the switch owns on the link (NAT addresses, virtual IPs, forwarded
    /// addresses come from them). Never the host's own addresses.
    #[serde(deserialize_with = "de_uplink_addresses")]
    pub addresses: Vec<UplinkAddress>,
    /// The next hop toward the outside, inside the prefix of one of `addresses`.
    #[serde(deserialize_with = "de_ipv4")]
    pub gateway: Ipv4Addr,
    /// The switch's own MAC on the link (unicast, not the interface's); when absent, derived
    /// from this node's id and the Uplink's name, so it is stable across restarts.
    #[serde(
        default,
        deserialize_with = "de_opt_unicast_mac",
        skip_serializing_if = "Option::is_none"
    )]
    pub mac: Option<MacAddr>,
    /// Node protection: what unsolicited traffic from outside may start a connection; absent
    /// (or `policy: Accept`): everything the switch serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundSpec>,
    /// IPv6 on the link: addresses the switch owns and the IPv6 next hop; absent, the
    /// switch does not serve IPv6 on the uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<UplinkIpv6>,
}

/// `spec.inbound.policy`: what becomes of unsolicited traffic from outside that no `allow`
/// entry lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum InboundPolicy {
    /// Taken (today's behaviour; `allow` is then refused as meaningless).
    #[default]
    Accept,
    /// Dropped and counted (`uplink.inbound_denied`).
    Drop,
}

/// The protocol of an `allow` entry (as Kubernetes writes it; lower case is accepted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InboundProtocol {
    /// TCP: connections start with a SYN.
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP", alias = "udp")]
    Udp,
    /// ICMP echo requests (ping); ports do not apply.
    #[serde(rename = "ICMP", alias = "icmp")]
    Icmp,
}

impl fmt::Display for InboundProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InboundProtocol::Tcp => "TCP",
            InboundProtocol::Udp => "UDP",
            InboundProtocol::Icmp => "ICMP",
        })
    }
}

/// One `allow` entry: a protocol and, for TCP and UDP, a destination port or range
/// (`port`..=`endPort`, as a NetworkPolicy writes it); without `port`, every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundAllow {
    /// `TCP`, `UDP` or `ICMP`.
    pub protocol: InboundProtocol,
    /// The destination port, or the first of the range.
    #[serde(
        default,
        deserialize_with = "de_opt_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u16>,
    /// The last port of the range (inclusive; needs `port`, not below it).
    #[serde(
        default,
        deserialize_with = "de_opt_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_port: Option<u16>,
}

impl fmt::Display for InboundAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.end_port) {
            (Some(port), Some(end)) if end != port => write!(f, "{}/{port}-{end}", self.protocol),
            (Some(port), _) => write!(f, "{}/{port}", self.protocol),
            (None, _) => write!(f, "{}", self.protocol),
        }
    }
}

/// `spec.inbound`: node protection, as seed 000's firewall has it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundSpec {
    /// `Accept` (the default) or `Drop`.
    #[serde(default)]
    pub policy: InboundPolicy,
    /// With `Drop`: what may still start a connection from outside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<InboundAllow>,
}

impl InboundSpec {
    /// True when unsolicited traffic is filtered (`policy: Drop`).
    pub fn filters(&self) -> bool {
        self.policy == InboundPolicy::Drop
    }
}

/// An optional port, 1..=65535.
fn de_opt_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u16>, D::Error> {
    let Some(value) = Option::<u64>::deserialize(deserializer)? else {
        return Ok(None);
    };
    u16::try_from(value)
        .ok()
        .filter(|port| *port != 0)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("invalid port {value}: must be 1..=65535")))
}

/// `spec.vlanProtocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum VlanProtocol {
    /// 802.1Q customer tags (TPID 0x8100).
    #[default]
    #[serde(rename = "802.1Q", alias = "802.1q")]
    Dot1q,
    /// 802.1ad service tags (TPID 0x88a8).
    #[serde(rename = "802.1ad")]
    Dot1ad,
}

impl VlanProtocol {
    /// The Tag Protocol Identifier.
    pub fn tpid(self) -> u16 {
        match self {
            VlanProtocol::Dot1q => crate::pipeline::tx::TPID_8021Q,
            VlanProtocol::Dot1ad => crate::pipeline::tx::TPID_8021AD,
        }
    }

    fn is_default(&self) -> bool {
        *self == VlanProtocol::Dot1q
    }
}

/// `spec.bond.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum BondModeSpec {
    /// One member carries everything; another takes over when it fails.
    #[default]
    #[serde(rename = "active-backup")]
    ActiveBackup,
    /// Flows are spread over the members that are up by a hash of their addresses and
    /// ports (a flow keeps its member: never reordered); no protocol with the peer.
    #[serde(rename = "balance-xor")]
    BalanceXor,
    /// LACP (IEEE 802.1AX): flows are spread over the members the switch and its partner
    /// aggregated.
    #[serde(rename = "802.3ad")]
    Lacp,
}

impl fmt::Display for BondModeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mode().as_str())
    }
}

impl BondModeSpec {
    /// The datapath's mode.
    pub fn mode(self) -> crate::tables::bond::BondMode {
        match self {
            BondModeSpec::ActiveBackup => crate::tables::bond::BondMode::ActiveBackup,
            BondModeSpec::BalanceXor => crate::tables::bond::BondMode::BalanceXor,
            BondModeSpec::Lacp => crate::tables::bond::BondMode::Lacp,
        }
    }
}

/// `spec.bond.lacp.rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LacpRate {
    /// The partner sends a PDU every second; it is expired after 3 s of silence.
    #[default]
    Fast,
    /// Every 30 s; expired after 90 s.
    Slow,
}

/// `spec.bond.lacp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LacpSpec {
    /// `fast` (the default) or `slow`.
    #[serde(default)]
    pub rate: LacpRate,
    /// Send LACPDUs unprompted (the default) or only answer (`false`: passive).
    #[serde(default = "yes")]
    pub active: bool,
    /// The system priority (lower wins); 65535 by default.
    #[serde(default = "lowest_priority")]
    pub system_priority: u16,
}

impl Default for LacpSpec {
    fn default() -> LacpSpec {
        LacpSpec {
            rate: LacpRate::Fast,
            active: true,
            system_priority: u16::MAX,
        }
    }
}

fn yes() -> bool {
    true
}

fn lowest_priority() -> u16 {
    u16::MAX
}

fn one() -> u8 {
    1
}

/// `spec.bond.arpMonitor`: ARP probes that prove a member works beyond its carrier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArpMonitorSpec {
    /// How often the targets are asked, ms (10..=60000): on every member in balance-xor, on
    /// the active one in active-backup.
    pub interval_ms: u64,
    /// The addresses asked (1 to 16), on the link of the uplink's addresses.
    pub targets: Vec<Ipv4Addr>,
}

/// `spec.bond`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BondSpec {
    /// `active-backup` (the default), `balance-xor` or `802.3ad`.
    #[serde(default)]
    pub mode: BondModeSpec,
    /// active-backup: the member used whenever it is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// 802.3ad: LACP settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacp: Option<LacpSpec>,
    /// Optional ARP probes (active-backup, balance-xor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_monitor: Option<ArpMonitorSpec>,
    /// Gratuitous ARPs (for IPv6 addresses: unsolicited neighbour advertisements) sent per
    /// address when the active member changes (0..=16, 1 by default).
    #[serde(default = "one")]
    pub peer_notifications: u8,
}

/// The most members a bond takes.
pub const MAX_BOND_MEMBERS: usize = crate::tables::bond::MAX_MEMBERS;

impl UplinkSpec {
    /// The host interfaces: `interfaces`, or `interface` alone.
    pub fn members(&self) -> Vec<&str> {
        if self.interfaces.is_empty() {
            vec![self.interface.as_str()]
        } else {
            self.interfaces.iter().map(String::as_str).collect()
        }
    }

    /// The interfaces as the table and messages show them (`a+b` for a bond).
    pub fn interfaces_text(&self) -> String {
        self.members().join("+")
    }

    /// True when `addr` is one of the addresses the switch owns here (either family).
    pub fn owns(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(addr) => self.addresses.iter().any(|a| a.addr() == addr),
            IpAddr::V6(addr) => self
                .ipv6
                .as_ref()
                .is_some_and(|v6| v6.addresses.iter().any(|a| a.addr() == addr)),
        }
    }

    /// Every address the switch owns here, IPv4 first, in the spec's order.
    pub fn all_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().map(|a| IpAddr::V4(a.addr())).chain(
            self.ipv6
                .iter()
                .flat_map(|v6| v6.addresses.iter().map(|a| IpAddr::V6(a.addr()))),
        )
    }
}

/// Status of the Uplink: the device as opened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UplinkStatus {
    /// The MAC the switch uses on the link (the spec's, or the derived one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The interface's MTU, read when it was opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// `pending`, `up` or `lost`.
    #[serde(default)]
    pub state: InterfaceState,
    /// Why the state is what it is, when not `up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A bond's members as its monitor sees them now (not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The Subnets bound to the uplink's VLANs (not stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<VlanStatus>,
}

/// A Subnet on a VLAN of the uplink.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VlanStatus {
    /// The VLAN ID.
    pub vlan: u16,
    /// The Subnet.
    pub subnet: String,
}

/// One bond member's state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberStatus {
    /// The host interface.
    pub interface: String,
    /// The link has carrier.
    pub carrier: bool,
    /// Frames leave on it (it is up, and in 802.3ad aggregated with the partner).
    pub carries_traffic: bool,
    /// The active member (active-backup).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub active: bool,
    /// ARP probes are answered (true without an ARP monitor).
    pub probes_answered: bool,
    /// LACP (802.3ad).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacp: Option<LacpStatus>,
}

/// One member's LACP state, in Open vSwitch's words.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LacpStatus {
    /// `current`, `expired` or `defaulted`.
    pub state: String,
    /// Aggregated with the partner.
    pub selected: bool,
    /// Our state bits (`activity timeout aggregation synchronized collecting distributing`).
    pub actor_state: String,
    /// The partner's system id (its MAC).
    pub partner_system: String,
    /// The partner's key.
    pub partner_key: u16,
    /// The partner's port.
    pub partner_port: u16,
    /// The partner's state bits.
    pub partner_state: String,
    /// LACPDUs received.
    pub pdus_received: u64,
    /// LACPDUs sent.
    pub pdus_sent: u64,
    /// Malformed ones received.
    pub bad_pdus: u64,
}

/// The node's uplink (at most one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Uplink {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `Uplink`.
    pub kind: String,
    /// Name and labels.
    pub metadata: Metadata,
    /// Desired state.
    pub spec: UplinkSpec,
    /// Observed state (ignored on input).
    #[serde(default)]
    pub status: UplinkStatus,
}

impl ResourceKind for Uplink {
    type Spec = UplinkSpec;
    type Status = UplinkStatus;

    const INFO: KindInfo = KindInfo {
        name: "Uplink",
        plural: "uplinks",
        aliases: &[],
        summary: "the node's way out (at most one): a host interface where the switch owns NAT and virtual-IP addresses",
        example: "\
apiVersion: vswitch/v1alpha1
kind: Uplink
metadata:
  name: wan
spec:
  interface: eth1
  addresses: [198.51.100.10/24, 198.51.100.11]
  gateway: 198.51.100.1
",
    };

    fn spec(&self) -> &UplinkSpec {
        &self.spec
    }

    fn status_mut(&mut self) -> &mut UplinkStatus {
        &mut self.status
    }

    /// The device's state (MAC, MTU, up or lost) is the controller's.
    fn carry_status(&mut self, old: Option<&Self>) {
        self.status = old.map(|o| o.status.clone()).unwrap_or_default();
    }

    /// The bond's members as the monitor sees them, the Subnets on the uplink's VLANs.
    fn observe(&mut self, state: &State, view: &StatusView) {
        self.status.members.clone_from(&view.uplink_members);
        self.status.vlans = state
            .subnets
            .iter()
            .filter_map(|(name, subnet)| {
                subnet.spec.vlan.map(|vlan| VlanStatus {
                    vlan,
                    subnet: name.clone(),
                })
            })
            .collect();
        self.status.vlans.sort_by_key(|v| v.vlan);
    }

    fn check(&self, cx: &CheckContext<'_>, errors: &mut Errors) {
        let before = errors.len();
        check_members(cx.origin, &self.spec, errors);
        if errors.len() > before {
            return;
        }
        errors.check(check_uplink(cx.origin, cx.next, cx.batch, self));
        if let Some(inbound) = &self.spec.inbound {
            check_inbound(cx.origin, inbound, errors);
        }
    }

    fn dependants(state: &State, _name: &str) -> Vec<(&'static str, Vec<String>)> {
        vec![
            ("NATGateways", state.nat_gateways.keys().cloned().collect()),
            (
                "PortForwards",
                state.port_forwards.keys().cloned().collect(),
            ),
            ("VirtualIPs", state.virtual_ips.keys().cloned().collect()),
            (
                "an Overlay without encapsulation",
                state
                    .overlays
                    .values()
                    .filter(|overlay| overlay.spec.encapsulation == vxlan::Encapsulation::None)
                    .map(|overlay| overlay.metadata.name.clone())
                    .collect(),
            ),
            (
                "Public LoadBalancers",
                state
                    .load_balancers
                    .values()
                    .filter(|b| b.spec.lb_type == LoadBalancerType::Public)
                    .map(|b| b.metadata.name.clone())
                    .collect(),
            ),
        ]
    }

    fn columns(wide: bool) -> Vec<&'static str> {
        let mut columns = vec![
            "NAME",
            "INTERFACE",
            "ADDRESSES",
            "GATEWAY",
            "MAC",
            "INBOUND",
            "STATE",
        ];
        if wide {
            columns.extend(["MTU", "LABELS", "MESSAGE"]);
        }
        columns
    }

    fn row(&self, wide: bool) -> Vec<String> {
        let (spec, status) = (&self.spec, &self.status);
        let mut row = vec![
            self.metadata.name.clone(),
            match &spec.bond {
                Some(bond) => format!("{}({})", spec.interfaces_text(), bond.mode),
                None => spec.interfaces_text(),
            },
            cells(
                spec.addresses.iter().map(ToString::to_string).chain(
                    spec.ipv6
                        .iter()
                        .flat_map(|v6| v6.addresses.iter().map(ToString::to_string)),
                ),
            ),
            match &spec.ipv6 {
                Some(v6) => format!("{},{}", spec.gateway, v6.gateway),
                None => spec.gateway.to_string(),
            },
            cells(status.mac.or(spec.mac).iter()),
            inbound_cell(spec.inbound.as_ref()),
            status.state.to_string(),
        ];
        if wide {
            row.extend([
                cells(status.mtu.iter()),
                labels_cell(&self.metadata),
                cell(status.message.as_deref().unwrap_or_default()),
            ]);
        }
        row
    }
}

/// `spec.interface`, `spec.interfaces` and `spec.bond`, each wrong field pushed to
/// `errors` with its path.
fn check_members(origin: &Origin, spec: &UplinkSpec, errors: &mut Errors) {
    match (spec.interface.is_empty(), spec.interfaces.is_empty()) {
        (true, true) => errors.push(origin.invalid(
            "spec.interface",
            "an Uplink needs a host interface: give interface: eth1, or interfaces: [eth1, eth2] with bond for a bond",
        )),
        (false, false) => errors.push(origin.invalid(
            "spec.interfaces",
            "give interface (one host interface) or interfaces (a bond), not both",
        )),
        _ => {}
    }
    if !spec.interfaces.is_empty() && !(2..=MAX_BOND_MEMBERS).contains(&spec.interfaces.len()) {
        errors.push(origin.invalid(
            "spec.interfaces",
            format!(
                "a bond has 2 to {MAX_BOND_MEMBERS} members, not {}; for one interface write interface: NAME",
                spec.interfaces.len()
            ),
        ));
    }
    let mut seen = BTreeMap::new();
    for (i, member) in spec.interfaces.iter().enumerate() {
        let field = format!("spec.interfaces[{i}]");
        if let Err(message) = crate::control::resource::check_ifname(member) {
            errors.push(origin.invalid(&field, message));
        }
        if let Some(first) = seen.insert(member.as_str(), i) {
            errors.push(origin.invalid(
                &field,
                format!("{member} is already spec.interfaces[{first}]: list each member once"),
            ));
        }
    }
    let Some(bond) = &spec.bond else {
        if spec.interfaces.len() > 1 {
            errors.push(origin.invalid(
                "spec.bond",
                "several interfaces need a bond: add bond: {mode: active-backup | balance-xor | 802.3ad}",
            ));
        }
        return;
    };
    if spec.interfaces.is_empty() {
        errors.push(origin.invalid(
            "spec.bond",
            "a bond bonds spec.interfaces: list the members there (interfaces: [eth1, eth2]) instead of interface",
        ));
    }
    if let Some(primary) = &bond.primary {
        if bond.mode != BondModeSpec::ActiveBackup {
            errors.push(origin.invalid(
                "spec.bond.primary",
                format!("only active-backup has a primary member, not {}", bond.mode),
            ));
        } else if !spec.interfaces.contains(primary) {
            errors.push(origin.invalid(
                "spec.bond.primary",
                format!(
                    "{primary} is not one of spec.interfaces ({})",
                    spec.interfaces.join(", ")
                ),
            ));
        }
    }
    if bond.lacp.is_some() && bond.mode != BondModeSpec::Lacp {
        errors.push(origin.invalid(
            "spec.bond.lacp",
            format!("LACP settings need mode: 802.3ad, not {}", bond.mode),
        ));
    }
    if let Some(arp) = &bond.arp_monitor {
        if bond.mode == BondModeSpec::Lacp {
            errors.push(origin.invalid(
                "spec.bond.arpMonitor",
                "802.3ad members are proven by LACP; an ARP monitor is for active-backup and balance-xor",
            ));
        }
        if !(10..=60_000).contains(&arp.interval_ms) {
            errors.push(origin.invalid(
                "spec.bond.arpMonitor.intervalMs",
                format!("{} is out of range: 10..=60000 ms", arp.interval_ms),
            ));
        }
        if arp.targets.is_empty() || arp.targets.len() > 16 {
            errors.push(origin.invalid(
                "spec.bond.arpMonitor.targets",
                format!("give 1 to 16 addresses to probe, not {}", arp.targets.len()),
            ));
        }
        for (i, target) in arp.targets.iter().enumerate() {
            if target.is_unspecified() || target.is_broadcast() || target.is_multicast() {
                errors.push(origin.invalid(
                    &format!("spec.bond.arpMonitor.targets[{i}]"),
                    format!("{target} is not a host address"),
                ));
            }
        }
    }
    if bond.peer_notifications > 16 {
        errors.push(origin.invalid(
            "spec.bond.peerNotifications",
            format!("{} is out of range: 0..=16", bond.peer_notifications),
        ));
    }
}

/// The INBOUND cell: `Accept`, or `Drop` and what it allows (`Drop:TCP/22,ICMP`).
fn inbound_cell(inbound: Option<&InboundSpec>) -> String {
    match inbound {
        Some(inbound) if inbound.filters() && !inbound.allow.is_empty() => {
            format!("Drop:{}", cells(&inbound.allow))
        }
        Some(inbound) if inbound.filters() => "Drop".to_owned(),
        _ => "Accept".to_owned(),
    }
}

/// `spec.inbound`: `allow` only with `Drop`; TCP and UDP ranges well formed, ICMP without
/// ports; each entry once. Every problem is recorded.
fn check_inbound(origin: &Origin, inbound: &InboundSpec, errors: &mut Errors) {
    if !inbound.filters() && !inbound.allow.is_empty() {
        errors.push(origin.invalid(
            "spec.inbound.allow",
            "allow lists what policy Drop lets through; with policy Accept everything is taken already: set policy: Drop, or remove allow",
        ));
    }
    let mut seen: BTreeMap<InboundAllow, usize> = BTreeMap::new();
    for (index, rule) in inbound.allow.iter().enumerate() {
        let field = format!("spec.inbound.allow[{index}]");
        if rule.protocol == InboundProtocol::Icmp {
            for (name, value) in [("port", rule.port), ("endPort", rule.end_port)] {
                if value.is_some() {
                    errors.push(origin.invalid(
                        &format!("{field}.{name}"),
                        "ICMP has no ports (the entry allows echo requests, ping); remove it",
                    ));
                }
            }
        }
        match (rule.port, rule.end_port) {
            (None, Some(end)) => errors.push(origin.invalid(
                &format!("{field}.endPort"),
                format!(
                    "endPort {end} needs port, the first port of the range; write port: N, endPort: {end}"
                ),
            )),
            (Some(port), Some(end)) if end < port => errors.push(origin.invalid(
                &format!("{field}.endPort"),
                format!(
                    "endPort {end} is below port {port}; the range is port..=endPort: write endPort >= {port}"
                ),
            )),
            _ => {}
        }
        if let Some(first) = seen.insert(*rule, index) {
            errors.push(origin.invalid(
                &field,
                format!("{rule} is also spec.inbound.allow[{first}]; list each entry once"),
            ));
        }
    }
}

/// The Uplink: one per node; interface not one of our ports nor loopback; addresses each
/// once; gateway on the link and not an owned address; no overlap with a Subnet; no address
/// removed while a resource outside the batch uses it.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
fn check_uplink(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    uplink: &Uplink,
) -> Result<(), ApiError> {
    let name = &uplink.metadata.name;
    let spec = &uplink.spec;
    if let Some(other) = next.uplinks.values().find(|u| u.metadata.name != *name) {
        return Err(origin.conflict(
            "metadata.name",
            format!(
                "Uplink {:?} already exists (interface {}); a node has one Uplink: change that one, or delete it first",
                other.metadata.name, other.spec.interfaces_text()
            ),
        ));
    }
    for (i, member) in spec.members().into_iter().enumerate() {
        let field = if spec.interfaces.is_empty() {
            "spec.interface".to_string()
        } else {
            format!("spec.interfaces[{i}]")
        };
        if member == "lo" {
            return Err(origin.invalid(
                &field,
                "lo is the loopback interface; name the host interface that leads outside (e.g. eth1)",
            ));
        }
        let ours = next.network_interfaces.values().find(|nic| {
            nic.status.host_ifname.as_deref() == Some(member)
                || (nic.spec.kind == PortKind::Veth
                    && crate::port::host_ifname(&nic.metadata.key()) == member)
        });
        if let Some(nic) = ours {
            return Err(origin.invalid(
                &field,
                format!(
                    "{member} is the host end of NetworkInterface {:?}, a port of this switch; name a host interface that leads outside (e.g. eth1)",
                    nic.metadata.key()
                ),
            ));
        }
    }
    let mut seen: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (index, address) in spec.addresses.iter().enumerate() {
        let field = format!("spec.addresses[{index}]");
        if let Some(first) = seen.insert(address.addr(), index) {
            return Err(origin.invalid(
                &field,
                format!(
                    "{} is also spec.addresses[{first}]; list each address once",
                    address.addr()
                ),
            ));
        }
        for subnet in next.subnets.values() {
            if routing::overlaps(subnet.spec.cidr, address.prefix()) {
                return Err(origin.invalid(
                    &field,
                    format!(
                        "{address} (link {}) overlaps Subnet {:?} ({}) of Network {:?}; the uplink's link and the Subnets must not overlap: use another address or prefix",
                        address.prefix(),
                        subnet.metadata.name,
                        subnet.spec.cidr,
                        subnet.spec.network
                    ),
                ));
            }
        }
    }
    let gateway = spec.gateway;
    if spec.owns(IpAddr::V4(gateway)) {
        return Err(origin.invalid(
            "spec.gateway",
            format!(
                "gateway {gateway} is one of the uplink's own addresses; write the address of the next hop toward the outside (a router on the link)"
            ),
        ));
    }
    let on_link = spec.addresses.iter().find(|a| {
        let prefix = a.prefix();
        prefix.contains(&gateway)
            && (prefix.prefix_len() >= 31
                || (gateway != prefix.network() && gateway != prefix.broadcast()))
    });
    if on_link.is_none() {
        return Err(origin.invalid(
            "spec.gateway",
            format!(
                "gateway {gateway} is not a host address inside the prefix of any of the uplink's addresses ({}); write the next hop on the link, or give an address its link's prefix (e.g. 198.51.100.10/24)",
                nat_rules::describe_addresses(uplink)
            ),
        ));
    }
    if let Some(v6) = &spec.ipv6 {
        check_uplink6(origin, next, uplink, v6)?;
    }
    // Addresses in use by resources outside the batch must stay (those in the batch are
    // checked against the new addresses by their own checks).
    let outside: Vec<(Kind, String, IpAddr)> = next
        .nat_gateways
        .values()
        .filter(|g| !batch.contains(Kind::NatGateway, &g.metadata.name))
        .flat_map(|g| {
            g.spec
                .ips
                .iter()
                .map(|ip| (Kind::NatGateway, g.metadata.name.clone(), *ip))
        })
        .chain(
            next.port_forwards
                .values()
                .filter(|f| !batch.contains(Kind::PortForward, &f.metadata.name))
                .map(|f| (Kind::PortForward, f.metadata.name.clone(), f.spec.ip)),
        )
        .chain(
            next.virtual_ips
                .values()
                .filter(|v| !batch.contains(Kind::VirtualIp, &v.metadata.name))
                .filter_map(|v| {
                    Some((
                        Kind::VirtualIp,
                        v.metadata.name.clone(),
                        nat_rules::virtual_ip_address(v)?,
                    ))
                }),
        )
        .chain(
            next.load_balancers
                .values()
                .filter(|b| b.spec.lb_type == super::load_balancer::LoadBalancerType::Public)
                .filter(|b| !batch.contains(Kind::LoadBalancer, &b.metadata.key()))
                .flat_map(|b| {
                    b.status
                        .ips
                        .iter()
                        .map(|ip| (Kind::LoadBalancer, b.metadata.key(), *ip))
                }),
        )
        .collect();
    // An Overlay without encapsulation (outside the batch) routes at the address on its
    // localAddress's link.
    let unencapsulated = next.overlays.values().find(|overlay| {
        overlay.spec.encapsulation == vxlan::Encapsulation::None
            && !batch.contains(Kind::Overlay, &overlay.metadata.name)
    });
    if let Some(overlay) = unencapsulated
        && crate::control::overlay::routed_address(next, overlay.spec.local_address).is_none()
    {
        return Err(origin.conflict(
            "spec.addresses",
            format!(
                "Overlay {:?} routes without encapsulation at an Uplink address on the link of its localAddress {}, and none of the new addresses ({}) is on it; keep one, or change the Overlay first",
                overlay.metadata.name,
                overlay.spec.local_address,
                nat_rules::describe_addresses(uplink)
            ),
        ));
    }
    if let Some((kind, user, ip)) = outside.into_iter().find(|(_, _, ip)| !spec.owns(*ip)) {
        let field = if ip.is_ipv6() {
            "spec.ipv6.addresses"
        } else {
            "spec.addresses"
        };
        return Err(origin.conflict(
            field,
            format!(
                "{ip} is used by {kind} {user:?} but is not among the new addresses ({}); keep it, or change or delete {kind} {user:?} first",
                nat_rules::describe_addresses(uplink)
            ),
        ));
    }
    Ok(())
}

/// `spec.ipv6`: each address once, none overlapping a Subnet's IPv6 prefix; the gateway a
/// unicast router address on the link that is not the switch's own.
fn check_uplink6(
    origin: &Origin,
    next: &State,
    uplink: &Uplink,
    v6: &UplinkIpv6,
) -> Result<(), ApiError> {
    if v6.addresses.is_empty() {
        return Err(origin.invalid(
            "spec.ipv6.addresses",
            "no address; list at least one IPv6 address the switch owns on the link (e.g. 2001:db8::10/64), or leave ipv6 out",
        ));
    }
    let mut seen: BTreeMap<Ipv6Addr, usize> = BTreeMap::new();
    for (index, address) in v6.addresses.iter().enumerate() {
        let field = format!("spec.ipv6.addresses[{index}]");
        if let Some(first) = seen.insert(address.addr(), index) {
            return Err(origin.invalid(
                &field,
                format!(
                    "{} is also spec.ipv6.addresses[{first}]; list each address once",
                    address.addr()
                ),
            ));
        }
        for subnet in next.subnets.values() {
            let Some(subnet6) = &subnet.spec.ipv6 else {
                continue;
            };
            let (a, b) = (address.prefix(), subnet6.cidr);
            if a.contains(&b.network()) || b.contains(&a.network()) {
                return Err(origin.invalid(
                    &field,
                    format!(
                        "{address} (link {a}) overlaps the IPv6 prefix {b} of Subnet {:?} of Network {:?}; the uplink's link and the Subnets must not overlap: use another address or prefix",
                        subnet.metadata.name, subnet.spec.network
                    ),
                ));
            }
        }
    }
    let gateway = v6.gateway;
    if gateway.is_unspecified() || gateway.is_loopback() || gateway.is_multicast() {
        return Err(origin.invalid(
            "spec.ipv6.gateway",
            format!("{gateway} is not a unicast address; write the router's address on the link (its link-local address, e.g. fe80::1, or a global one)"),
        ));
    }
    let own_link_local =
        crate::wire::ipv6::link_local_from_mac(nat_rules::uplink_mac(next, uplink).0);
    if seen.contains_key(&gateway) || gateway == own_link_local {
        return Err(origin.invalid(
            "spec.ipv6.gateway",
            format!("gateway {gateway} is one of the uplink's own addresses; write the address of the router toward the outside"),
        ));
    }
    let link_local = gateway.segments()[0] & 0xffc0 == 0xfe80;
    if !link_local && !v6.addresses.iter().any(|a| a.prefix().contains(&gateway)) {
        let listed = v6
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(origin.invalid(
            "spec.ipv6.gateway",
            format!("gateway {gateway} is neither link-local nor inside the prefix of any of the uplink's IPv6 addresses ({listed}); write the router's link-local address, or give an address its link's prefix (e.g. 2001:db8::10/64)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{apply, doc, forward, gateway, ip, nat_base, refused, vip};

    /// The Uplink's IPv6, and the NAT resources that use it: each wrong field named.
    #[test]
    fn uplink_ipv6_checks() {
        let state = nat_base();
        let uplink = |v6: &str| {
            doc(
                "Uplink",
                "wan",
                &format!(
                    "{{interface: eth9, addresses: [198.51.100.10/24, 198.51.100.11, 198.51.100.12], gateway: 198.51.100.1, ipv6: {v6}}}"
                ),
            )
        };
        let cases: [(&str, &str, &[&str]); 8] = [
            (
                "{addresses: ['fe80::10/64'], gateway: 'fe80::1'}",
                "documents[0].spec.ipv6.addresses[0]",
                &["a link-local address"],
            ),
            (
                "{addresses: ['2001:db8:1::/64'], gateway: 'fe80::1'}",
                "documents[0].spec.ipv6.addresses[0]",
                &["subnet-router anycast"],
            ),
            (
                "{addresses: ['ff02::1'], gateway: 'fe80::1'}",
                "documents[0].spec.ipv6.addresses[0]",
                &["not a unicast address"],
            ),
            (
                "{addresses: ['2001:db8:1::10/8'], gateway: 'fe80::1'}",
                "documents[0].spec.ipv6.addresses[0]",
                &["the prefix length must be 16..=128"],
            ),
            (
                "{addresses: [], gateway: 'fe80::1'}",
                "documents[0].spec.ipv6.addresses",
                &["no address"],
            ),
            (
                "{addresses: ['2001:db8:1::10/64', '2001:db8:1::10'], gateway: 'fe80::1'}",
                "documents[0].spec.ipv6.addresses[1]",
                &["also spec.ipv6.addresses[0]"],
            ),
            (
                "{addresses: ['2001:db8:1::10/64'], gateway: '2001:db8:2::1'}",
                "documents[0].spec.ipv6.gateway",
                &["neither link-local nor inside the prefix"],
            ),
            (
                "{addresses: ['2001:db8:1::10/64'], gateway: '2001:db8:1::10'}",
                "documents[0].spec.ipv6.gateway",
                &["one of the uplink's own addresses"],
            ),
        ];
        for (v6, field, words) in cases {
            refused(&state, &uplink(v6), 400, field, words);
        }
        // A link-local or on-link gateway is fine; NAT resources may then use the address.
        let state = apply(
            &state,
            &uplink("{addresses: ['2001:db8:1::10/64', '2001:db8:1::11'], gateway: 'fe80::1'}"),
        );
        // A Subnet may not take an IPv6 prefix on the uplink's link, new or existing.
        refused(
            &state,
            &doc(
                "Subnet",
                "web",
                "{network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1, ipv6: {cidr: '2001:db8:1::/64'}}",
            ),
            400,
            "documents[0].spec.ipv6.cidr",
            &["2001:db8:1::/64 overlaps the link 2001:db8:1::/64 of address 2001:db8:1::10/64"],
        );
        // An IPv6 forward needs a target with an IPv6 address.
        refused(
            &state,
            &forward("f6", "'2001:db8:1::11'", "tcp", 8080, "c1"),
            400,
            "documents[0].spec.target.interface",
            &["is IPv6 but NetworkInterface \"c1\" is on Subnet \"web\", which has no IPv6 prefix"],
        );
        let state = apply(
            &state,
            &format!(
                "{}{}{}",
                doc(
                    "Subnet",
                    "web",
                    "{network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1, ipv6: {cidr: 'fd00:1::/64'}}"
                ),
                gateway("gw", "blue", "198.51.100.10, '2001:db8:1::10'"),
                forward("f6", "'2001:db8:1::11'", "tcp", 8080, "c1"),
            ),
        );
        assert_eq!(
            state.nat_gateways["gw"].spec.ips,
            [
                ip::<IpAddr>("198.51.100.10"),
                ip::<IpAddr>("2001:db8:1::10")
            ]
        );
        // An IPv6 address the Uplink does not own is refused, pointing at spec.ipv6.
        refused(
            &state,
            &gateway("gw2", "red", "'2001:db8:1::99'"),
            400,
            "documents[0].spec.ips[0]",
            &[
                "2001:db8:1::99 is not an address of Uplink",
                "spec.ipv6.addresses",
            ],
        );
        // Dropping an address a PortForward uses is refused.
        refused(
            &state,
            &uplink("{addresses: ['2001:db8:1::10/64'], gateway: 'fe80::1'}"),
            409,
            "documents[0].spec.ipv6.addresses",
            &["2001:db8:1::11 is used by PortForward \"f6\""],
        );
    }

    #[test]
    fn uplink_checks() {
        let state = nat_base();
        let other = doc(
            "Uplink",
            "wan2",
            "{interface: eth8, addresses: [203.0.113.5/24], gateway: 203.0.113.1}",
        );
        refused(
            &state,
            &other,
            409,
            "documents[0].metadata.name",
            &[
                "Uplink \"wan\" already exists (interface eth9)",
                "one Uplink",
            ],
        );
        let uplink = |spec: &str| doc("Uplink", "wan", spec);
        refused(
            &state,
            &uplink("{interface: lo, addresses: [198.51.100.10/24], gateway: 198.51.100.1}"),
            400,
            "documents[0].spec.interface",
            &["lo is the loopback interface"],
        );
        let host_end = crate::port::host_ifname("c2");
        refused(
            &state,
            &uplink(&format!(
                "{{interface: {host_end}, addresses: [198.51.100.10/24], gateway: 198.51.100.1}}"
            )),
            400,
            "documents[0].spec.interface",
            &[&host_end, "host end of NetworkInterface \"c2\""],
        );
        refused(
            &state,
            &uplink(
                "{interface: eth9, addresses: [198.51.100.10/24, 198.51.100.10], gateway: 198.51.100.1}",
            ),
            400,
            "documents[0].spec.addresses[1]",
            &["198.51.100.10 is also spec.addresses[0]"],
        );
        refused(
            &state,
            &uplink("{interface: eth9, addresses: [10.1.9.9/16], gateway: 10.1.0.254}"),
            400,
            "documents[0].spec.addresses[0]",
            &["10.1.9.9/16 (link 10.1.0.0/16) overlaps Subnet \"web\" (10.1.0.0/24)"],
        );
        refused(
            &state,
            &uplink("{interface: eth9, addresses: [198.51.100.10/24], gateway: 198.51.100.10}"),
            400,
            "documents[0].spec.gateway",
            &["gateway 198.51.100.10 is one of the uplink's own addresses"],
        );
        for gateway in ["203.0.113.1", "198.51.100.0", "198.51.100.255"] {
            refused(
                &state,
                &uplink(&format!(
                    "{{interface: eth9, addresses: [198.51.100.10/24, 198.51.100.11], gateway: {gateway}}}"
                )),
                400,
                "documents[0].spec.gateway",
                &[
                    &format!("gateway {gateway} is not a host address inside the prefix"),
                    "198.51.100.10/24, 198.51.100.11",
                ],
            );
        }
        // A gateway on a /31 link is fine.
        apply(
            &State::default(),
            &uplink("{interface: eth9, addresses: [192.0.2.0/31], gateway: 192.0.2.1}"),
        );
    }

    #[test]
    fn inbound_is_checked_with_field_paths() {
        let state = nat_base();
        let wan = |inbound: &str| {
            doc(
                "Uplink",
                "wan",
                &format!(
                    "{{interface: eth9, addresses: [198.51.100.10/24, 198.51.100.11, 198.51.100.12], gateway: 198.51.100.1, inbound: {inbound}}}"
                ),
            )
        };
        let good = apply(
            &state,
            &wan(
                "{policy: Drop, allow: [{protocol: TCP, port: 22}, {protocol: udp, port: 4789, endPort: 4790}, {protocol: ICMP}, {protocol: UDP}]}",
            ),
        );
        let inbound = good.uplinks["wan"].spec.inbound.as_ref().unwrap();
        assert!(inbound.filters());
        assert_eq!(inbound.allow[1].protocol, InboundProtocol::Udp);
        assert_eq!(inbound.allow[1].end_port, Some(4790));
        assert_eq!(
            inbound_cell(Some(inbound)),
            "Drop:TCP/22,UDP/4789-4790,ICMP,UDP"
        );
        // Drop with nothing allowed is fine; so is Accept alone.
        apply(&state, &wan("{policy: Drop}"));
        apply(&state, &wan("{policy: Accept}"));
        for (inbound, field, words) in [
            (
                "{policy: Reject}",
                "documents[0].spec.inbound.policy",
                &["Reject"][..],
            ),
            (
                "{policy: Drop, allow: [{protocol: SCTP, port: 1}]}",
                "documents[0].spec.inbound.allow[0].protocol",
                &["SCTP"],
            ),
            (
                "{policy: Drop, allow: [{protocol: TCP, port: 70000}]}",
                "documents[0].spec.inbound.allow[0].port",
                &["invalid port 70000: must be 1..=65535"],
            ),
            (
                "{policy: Drop, allow: [{protocol: TCP, port: 0}]}",
                "documents[0].spec.inbound.allow[0].port",
                &["invalid port 0"],
            ),
            (
                "{policy: Drop, allow: [{protocol: TCP, ports: 22}]}",
                "documents[0].spec.inbound.allow[0].ports",
                &["unknown field `ports`"],
            ),
            (
                "{policy: Accept, allow: [{protocol: TCP, port: 22}]}",
                "documents[0].spec.inbound.allow",
                &["with policy Accept everything is taken already"],
            ),
            (
                "{policy: Drop, allow: [{protocol: UDP, port: 53}, {protocol: TCP, port: 30, endPort: 20}]}",
                "documents[0].spec.inbound.allow[1].endPort",
                &["endPort 20 is below port 30"],
            ),
            (
                "{policy: Drop, allow: [{protocol: TCP, endPort: 20}]}",
                "documents[0].spec.inbound.allow[0].endPort",
                &["endPort 20 needs port"],
            ),
            (
                "{policy: Drop, allow: [{protocol: ICMP, port: 8}]}",
                "documents[0].spec.inbound.allow[0].port",
                &["ICMP has no ports"],
            ),
            (
                "{policy: Drop, allow: [{protocol: TCP, port: 22}, {protocol: tcp, port: 22}]}",
                "documents[0].spec.inbound.allow[1]",
                &["TCP/22 is also spec.inbound.allow[0]"],
            ),
        ] {
            refused(&state, &wan(inbound), 400, field, words);
        }
        // Every problem at once, and the state unchanged.
        let err = crate::control::testing::refusal(
            &state,
            &wan(
                "{policy: Accept, allow: [{protocol: ICMP, port: 1, endPort: 2}, {protocol: TCP, port: 9, endPort: 8}]}",
            ),
        );
        let causes: Vec<String> = err.causes().iter().map(ToString::to_string).collect();
        for want in [
            "spec.inbound.allow: allow lists what policy Drop",
            "spec.inbound.allow[0].port: ICMP has no ports",
            "spec.inbound.allow[0].endPort: ICMP has no ports",
            "spec.inbound.allow[1].endPort: endPort 8 is below port 9",
        ] {
            assert!(
                causes.iter().any(|c| c.contains(want)),
                "{want:?} not in {causes:?}"
            );
        }
        assert_eq!(state.uplinks["wan"].spec.inbound, None);
    }

    #[test]
    fn an_address_in_use_stays_on_the_uplink() {
        let state = apply(
            &nat_base(),
            &format!(
                "{}{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                forward("web", "198.51.100.12", "tcp", 8080, "c1"),
                vip("v", Some("198.51.100.11"))
            ),
        );
        let narrower = |addresses: &str| {
            doc(
                "Uplink",
                "wan",
                &format!("{{interface: eth9, addresses: [{addresses}], gateway: 198.51.100.1}}"),
            )
        };
        refused(
            &state,
            &narrower("198.51.100.11/24, 198.51.100.12"),
            409,
            "documents[0].spec.addresses",
            &[
                "198.51.100.10 is used by NATGateway \"gw\"",
                "change or delete",
            ],
        );
        refused(
            &state,
            &narrower("198.51.100.10/24, 198.51.100.12"),
            409,
            "documents[0].spec.addresses",
            &["198.51.100.11 is used by VirtualIP \"v\""],
        );
        refused(
            &state,
            &narrower("198.51.100.10/24, 198.51.100.11"),
            409,
            "documents[0].spec.addresses",
            &["198.51.100.12 is used by PortForward \"web\""],
        );
        // Moving the user in the same batch is fine.
        let moved = apply(
            &state,
            &format!(
                "{}{}",
                narrower("198.51.100.11/24, 198.51.100.12, 198.51.100.13"),
                gateway("gw", "blue", "198.51.100.13")
            ),
        );
        assert_eq!(
            moved.nat_gateways["gw"].spec.ips,
            [ip::<IpAddr>("198.51.100.13")]
        );
    }
}
