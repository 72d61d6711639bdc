//! The configuration as the workers see it: immutable, compiled by the controller, published
//! with one atomic pointer swap. Workers load it once per batch and never lock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use crate::port::{Capabilities, PortId, PortIo, PortKind, RxQueues, Vtep};
use crate::tables::dhcp::DhcpServer;

/// Identifies a Subnet (an L2 segment) inside one daemon run; learned MACs are keyed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetId(pub u32);

/// Identifies a Network (an isolated L3 domain, a VRF) inside one daemon run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkId(pub u32);

/// Default MAC ageing: 300 s, as the Linux bridge (`ageing_time`) and Open vSwitch.
pub const DEFAULT_MAC_AGEING: Duration = Duration::from_secs(300);

/// Default number of learned MACs per subnet.
pub const DEFAULT_MAC_LIMIT: usize = 8192;

/// A port as the datapath sees it.
#[derive(Debug, Clone)]
pub struct PortEntry {
    /// Dense id (index into per-port arrays).
    pub id: PortId,
    /// NetworkInterface name (counters are reported by it).
    pub name: String,
    /// The subnet (L2 segment) the port belongs to.
    pub subnet: SubnetId,
    /// The only source MAC the port may send from.
    pub mac: [u8; 6],
    /// The only IPv4 source addresses the port may send from.
    pub ips: Vec<Ipv4Addr>,
    /// The only IPv6 source addresses the port may send from: its address on a dual-stack
    /// Subnet, its EUI-64 link-local address and, when the Subnet allows SLAAC, its EUI-64
    /// address in the prefix. Empty: the port sends no IPv6 but link-local.
    pub ips6: Vec<Ipv6Addr>,
    /// The port's MTU (L3 payload).
    pub mtu: u16,
    /// Further IPv4 sources the port may send from: the destinations of Routes whose next
    /// hop is one of the port's addresses (the port is a router for them).
    pub allowed_sources: Vec<Ipv4Net>,
    /// Further IPv6 sources, the same way: destinations of IPv6 Routes through the port.
    pub allowed_sources6: Vec<Ipv6Net>,
    /// Answer ARP for any address but the port's own with the gateway's MAC (the hub's host
    /// port, whose stack treats the whole overlay as on-link).
    pub proxy_arp: bool,
    /// How frames forwarded to the port leave: its device's queues, or (a stretched
    /// subnet's tunnel) the overlay.
    pub egress: Egress,
}

impl PortEntry {
    /// A TAP port named `port{id}` with MTU 1500, `mac`, `ips` and nothing else: no extra
    /// sources, no proxy ARP, and a device with no queues (default capabilities), so frames
    /// forwarded to it go nowhere. What unit tests, benchmarks and fuzz targets put in a
    /// snapshot when they need ports but no devices.
    pub fn detached_tap(
        id: PortId,
        subnet: SubnetId,
        mac: [u8; 6],
        ips: Vec<Ipv4Addr>,
    ) -> PortEntry {
        PortEntry {
            id,
            name: format!("port{}", id.0),
            subnet,
            mac,
            ips,
            mtu: 1500,
            allowed_sources: Vec::new(),
            allowed_sources6: Vec::new(),
            ips6: vec![crate::wire::ipv6::link_local_from_mac(mac)],
            proxy_arp: false,
            egress: Egress::Queue(Arc::new(PortIo {
                kind: PortKind::Tap,
                queues: Vec::new(),
                capabilities: Capabilities::default(),
                host_ifname: None,
            })),
        }
    }

    /// The opened device whose queues the port is read from and written to; `None` for a
    /// subnet's tunnel, which has no device of its own.
    #[inline]
    pub fn io(&self) -> Option<&Arc<PortIo>> {
        match &self.egress {
            Egress::Queue(io) => Some(io),
            Egress::Tunnel(_) | Egress::Uplink { .. } | Egress::Tagged { .. } => None,
        }
    }

    /// The tunnel, when the port is a stretched subnet's tunnel over the overlay.
    #[inline]
    pub fn tunnel(&self) -> Option<&Tunnel> {
        match &self.egress {
            Egress::Tunnel(tunnel) => Some(tunnel),
            Egress::Queue(_) | Egress::Uplink { .. } | Egress::Tagged { .. } => None,
        }
    }

    /// The VLAN, when the port is a Subnet's VLAN on the uplink.
    #[inline]
    pub fn vlan(&self) -> Option<u16> {
        match &self.egress {
            Egress::Uplink { vlan, .. } => *vlan,
            Egress::Tagged { vlan, .. } => Some(*vlan),
            Egress::Queue(_) | Egress::Tunnel(_) => None,
        }
    }
}

/// The egress adjacency of a port id: how a frame forwarded to it leaves the switch. The
/// controller compiles one into every [`PortEntry`] (and the snapshot makes one for the
/// uplink); the worker's transmit looks it up once per destination and batch
/// ([`Snapshot::adjacency`]) instead of asking what kind of port it is.
#[derive(Debug, Clone)]
pub enum Egress {
    /// Written to a device's queue (a container's TAP, a veth's AF_PACKET socket), adapted
    /// to what the device takes (`pipeline::tx`), TCP segments coalesced for a device that
    /// takes super-frames.
    Queue(Arc<PortIo>),
    /// Encapsulated into the overlay by the `vxlan-encap` stage and sent from the VTEP's
    /// queue: to the VTEP learned for the destination MAC, else to every remote VTEP.
    Tunnel(Tunnel),
    /// Written to the uplink's queue (AF_PACKET), as a device's: of the member the bond
    /// picks for the frame's flow, tagged with `vlan` (a Subnet bound to a VLAN of the
    /// uplink, whose frames leave tagged) or untagged (the uplink's own traffic).
    Uplink {
        /// The uplink's members.
        io: Arc<UplinkIo>,
        /// The 802.1Q VLAN ID frames are tagged with.
        vlan: Option<u16>,
    },
    /// Written to a trunk NetworkInterface's device, tagged with one of its VLANs (the
    /// interface's port on that VLAN's Subnet).
    Tagged {
        /// The trunk interface's device.
        io: Arc<PortIo>,
        /// The VLAN.
        vlan: u16,
    },
}

/// The uplink's devices: one interface, or a bond's members and the bond's shared state.
#[derive(Debug)]
pub struct UplinkIo {
    /// The members (one for an uplink that is not bonded).
    pub members: Vec<UplinkMember>,
    /// The bond's state, when the uplink has several members.
    pub bond: Option<Arc<crate::tables::bond::Bond>>,
    /// What the bond's monitor reports (for the Uplink's status).
    pub monitor: Option<Arc<crate::port::bond::MonitorShared>>,
    /// The Tag Protocol Identifier of the trunk's VLAN tags: 0x8100 (802.1Q), or 0x88a8
    /// (802.1ad service tags) when the Uplink says so.
    pub tpid: u16,
}

impl UplinkIo {
    /// An uplink of one interface, `ifname`, counted under `id` and `name`: what tests and
    /// benchmarks put in a snapshot.
    pub fn single(id: PortId, name: &str, ifname: &str, io: PortIo) -> UplinkIo {
        UplinkIo {
            members: vec![UplinkMember {
                id,
                name: name.to_string(),
                ifname: ifname.to_string(),
                ifindex: 0,
                io: Arc::new(io),
            }],
            bond: None,
            monitor: None,
            tpid: crate::pipeline::tx::TPID_8021Q,
        }
    }
}

/// One interface of the uplink.
#[derive(Debug)]
pub struct UplinkMember {
    /// The id its frames are counted under and its epoll token (the uplink's own id for an
    /// uplink that is not bonded).
    pub id: PortId,
    /// The counter name (the Uplink's name, or `uplink/interface` for a bond's member).
    pub name: String,
    /// The host interface.
    pub ifname: String,
    /// Its index.
    pub ifindex: u32,
    /// The opened device (AF_PACKET queues, one per worker).
    pub io: Arc<PortIo>,
}

/// A subnet's tunnel: the virtual port through which a stretched subnet reaches the other
/// nodes. Remote MACs are learned on it like on any port; the VTEP behind each one is in the
/// engine's remote FDB.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The subnet's VNI.
    pub vni: vxlan::Vni,
    /// The remote VTEPs that get broadcast and unknown unicast (head-end replication).
    pub remotes: Vec<IpAddr>,
    /// The overlay MTU (L3): an inner frame must fit it (GSO frames are cut to it).
    pub mtu: u16,
}

/// A destination as the transmit path sees it: the port (or uplink) id its counters are
/// kept under, its name for log lines, and its egress adjacency.
#[derive(Debug, Clone, Copy)]
pub struct Adjacency<'a> {
    /// The port id (or the uplink's).
    pub id: PortId,
    /// The NetworkInterface's, tunnel's or Uplink's name.
    pub name: &'a str,
    /// How frames leave.
    pub egress: &'a Egress,
}

/// The node's VXLAN tunnel endpoint. Not a port: the workers poll its queues and run
/// `vxlan-input` on what they read; frames reach it only through a tunnel port's egress
/// ([`Egress::Tunnel`], the `vxlan-encap` stage).
#[derive(Debug, Clone)]
pub struct VtepEntry {
    /// The id its counters are kept under (and its epoll token): taken from the port ids so
    /// that it shares their counter arrays, but no port has it and nothing forwards to it.
    pub id: PortId,
    /// The local address and UDP port.
    pub local: std::net::SocketAddr,
    /// How outer headers are built.
    pub encap: vxlan::VxlanEncapConfig,
    /// The opened sockets (one queue per worker).
    pub io: Arc<Vtep>,
    /// VNI -> the tunnel port of the subnet with that VNI.
    pub tunnels: std::collections::HashMap<u32, PortId>,
}

impl VtepEntry {
    /// The name its counters are reported under (`/v1/stats`, `vswitchctl stats`).
    pub const NAME: &'static str = "vxlan";
}

/// Something the workers poll, as the snapshot lists it: a NetworkInterface's port (with
/// its device), the uplink, or the VTEP. Each is read the same way ([`Ingress::rx`]); what
/// runs on its frames first is the pipeline's choice (`pipeline::input`).
#[derive(Debug, Clone, Copy)]
pub enum Ingress<'a> {
    /// A port and its device (a subnet's tunnel has none and is not polled).
    Port(&'a PortEntry, &'a Arc<PortIo>),
    /// The uplink: one of its members, and that member's index.
    Uplink(&'a UplinkEntry, &'a UplinkMember, usize),
    /// The VTEP.
    Vtep(&'a VtepEntry),
}

impl<'a> Ingress<'a> {
    /// The id its counters are kept under (and its epoll token).
    pub fn id(self) -> PortId {
        match self {
            Ingress::Port(port, _) => port.id,
            Ingress::Uplink(_, member, _) => member.id,
            Ingress::Vtep(vtep) => vtep.id,
        }
    }

    /// Its name, for log lines.
    pub fn name(self) -> &'a str {
        match self {
            Ingress::Port(port, _) => &port.name,
            Ingress::Uplink(_, member, _) => &member.name,
            Ingress::Vtep(_) => VtepEntry::NAME,
        }
    }

    /// The queues the workers read.
    pub fn rx(self) -> RxQueues<'a> {
        match self {
            Ingress::Port(_, io) => RxQueues::Device(io),
            Ingress::Uplink(_, member, _) => RxQueues::Device(&member.io),
            Ingress::Vtep(vtep) => RxQueues::Vtep(&vtep.io),
        }
    }

    /// The segment an L2 flood of its frames goes to (a port's subnet; the uplink's segment,
    /// which is never flooded; none for the VTEP, whose frames flood their tunnel's subnet
    /// explicitly).
    pub fn segment(self) -> SubnetId {
        match self {
            Ingress::Port(port, _) => port.subnet,
            Ingress::Uplink(uplink, _, _) => uplink.segment,
            Ingress::Vtep(_) => SubnetId(u32::MAX),
        }
    }
}

/// A subnet (L2 segment) as the datapath sees it.
#[derive(Debug, Clone)]
pub struct SubnetEntry {
    /// Dense id.
    pub id: SubnetId,
    /// Subnet resource name.
    pub name: String,
    /// The Network it belongs to.
    pub network: String,
    /// The Network's id.
    pub network_id: NetworkId,
    /// The subnet's prefix.
    pub cidr: Ipv4Net,
    /// The gateway address, owned by the switch (it answers ARP and ICMP echo for it).
    pub gateway: Ipv4Addr,
    /// The gateway's MAC: stable across restarts (derived from the node and the subnet).
    pub gateway_mac: [u8; 6],
    /// The gateway address is other nodes' too (`spec.sharedGateway`): neighbours are
    /// resolved with ARP probes from 0.0.0.0 and IPv6 solicitations from the link-local
    /// address, never claiming the gateway address on the segment.
    pub shared_gateway: bool,
    /// The segment's MTU (L3 payload): packets routed into it must fit.
    pub mtu: u16,
    /// Ports in the segment: the flood list for broadcast and unknown unicast.
    pub ports: Vec<PortId>,
    /// How long a learned MAC lives without traffic.
    pub mac_ageing: Duration,
    /// At most this many learned MACs; beyond it nothing new is learned (and unknown
    /// destinations flood).
    pub mac_limit: usize,
    /// The switch's DHCP server on this subnet, when the Subnet enables it.
    pub dhcp: Option<Arc<DhcpServer>>,
    /// The subnet's IPv6 side, on a dual-stack Subnet.
    pub v6: Option<Subnet6>,
}

/// The IPv6 side of a dual-stack subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet6 {
    /// The prefix.
    pub cidr: Ipv6Net,
    /// The gateway's global address, owned by the switch.
    pub gateway: Ipv6Addr,
    /// The gateway's link-local address (EUI-64 of the gateway MAC): the source of its
    /// router advertisements and neighbour discovery, the containers' next hop.
    pub link_local: Ipv6Addr,
    /// The switch answers router solicitations.
    pub router_advertisements: bool,
    /// The advertised prefix carries the autonomous (SLAAC) flag.
    pub slaac: bool,
}

impl Subnet6 {
    /// The IPv6 side of a subnet with `gateway_mac`.
    pub fn new(
        cidr: Ipv6Net,
        gateway: Ipv6Addr,
        gateway_mac: [u8; 6],
        router_advertisements: bool,
        slaac: bool,
    ) -> Subnet6 {
        Subnet6 {
            cidr,
            gateway,
            link_local: crate::wire::ipv6::link_local_from_mac(gateway_mac),
            router_advertisements,
            slaac,
        }
    }

    /// Whether `address` is one of the gateway's (global or link-local).
    #[inline]
    pub fn is_gateway(&self, address: Ipv6Addr) -> bool {
        address == self.gateway || address == self.link_local
    }
}

/// One IPv6 route of a Network: connected (a Subnet's prefix, of the Network or of a peered
/// one) or static (through a router on one of its Subnets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry6 {
    /// Destination prefix.
    pub prefix: Ipv6Net,
    /// The subnet the packet leaves through.
    pub subnet: SubnetId,
    /// Direct, or via a router on that subnet.
    pub next_hop: NextHop<Ipv6Addr>,
    /// Why the route exists.
    pub origin: RouteOrigin,
}

/// Where a route sends a packet once it leaves through its egress subnet (`A`: the address
/// family's address type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop<A = Ipv4Addr> {
    /// The destination is on the egress subnet itself (a connected route).
    Direct,
    /// Through a router at this address on the egress subnet.
    Via(A),
}

impl<A: Copy> NextHop<A> {
    /// The address to resolve for `destination`: the router's, or the destination itself.
    #[inline]
    pub fn toward(self, destination: A) -> A {
        match self {
            NextHop::Direct => destination,
            NextHop::Via(router) => router,
        }
    }
}

/// Why a route exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteOrigin {
    /// A Subnet of the Network itself.
    Connected,
    /// A `Route` resource (its name).
    Static(String),
    /// A Subnet of a peered Network (the peer's name), present while the peering is Ready.
    Peering(String),
}

/// One entry of a Network's routing table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination prefix.
    pub prefix: Ipv4Net,
    /// The subnet the packet leaves through (possibly of a peered Network).
    pub subnet: SubnetId,
    /// Direct, or via a router on that subnet.
    pub next_hop: NextHop,
    /// Why the route exists.
    pub origin: RouteOrigin,
}

/// A Network (VRF) as the datapath sees it: its routing table.
#[derive(Debug, Clone)]
pub struct NetworkEntry {
    /// Dense id.
    pub id: NetworkId,
    /// Network resource name.
    pub name: String,
    routes: PrefixMap<Ipv4Net, RouteEntry>,
    routes6: PrefixMap<Ipv6Net, RouteEntry6>,
}

impl NetworkEntry {
    /// Builds a Network's table. When two routes share a prefix the first one wins (the
    /// controller orders connected routes before peerings before static routes).
    pub fn new(id: NetworkId, name: String, routes: Vec<RouteEntry>) -> NetworkEntry {
        let mut table = PrefixMap::new();
        for route in routes {
            let prefix = route.prefix.trunc();
            if table.get(&prefix).is_none() {
                table.insert(prefix, route);
            }
        }
        NetworkEntry {
            id,
            name,
            routes: table,
            routes6: PrefixMap::new(),
        }
    }

    /// Sets the Network's IPv6 routes (the first of equal prefixes wins).
    pub fn with_routes6(mut self, routes: Vec<RouteEntry6>) -> NetworkEntry {
        for route in routes {
            let prefix = route.prefix.trunc();
            if self.routes6.get(&prefix).is_none() {
                self.routes6.insert(prefix, route);
            }
        }
        self
    }

    /// Longest-prefix match for an IPv6 `destination`.
    #[inline]
    pub fn lookup6(&self, destination: Ipv6Addr) -> Option<&RouteEntry6> {
        let host = Ipv6Net::from(destination);
        self.routes6.get_lpm(&host).map(|(_, route)| route)
    }

    /// Every IPv6 route, shortest prefixes first.
    pub fn routes6(&self) -> impl Iterator<Item = &RouteEntry6> {
        self.routes6.iter().map(|(_, route)| route)
    }

    /// Longest-prefix match for `destination`.
    #[inline]
    pub fn lookup(&self, destination: Ipv4Addr) -> Option<&RouteEntry> {
        let host = Ipv4Net::from(destination);
        self.routes.get_lpm(&host).map(|(_, route)| route)
    }

    /// Every route, shortest prefixes first.
    pub fn routes(&self) -> impl Iterator<Item = &RouteEntry> {
        self.routes.iter().map(|(_, route)| route)
    }
}

/// The node's uplink: a host interface the switch reads and writes with AF_PACKET, where it
/// owns the NAT and virtual-IP addresses (it answers ARP for them with its own MAC) and
/// reaches the outside through `gateway`. Frames for the host's own addresses are never taken:
/// the switch only accepts frames sent to its own MAC (and broadcast ARP for its addresses).
#[derive(Debug, Clone)]
pub struct UplinkEntry {
    /// Port id of the uplink (counters, epoll token); never used by a NetworkInterface.
    pub id: PortId,
    /// Uplink resource name.
    pub name: String,
    /// The host interface.
    pub ifname: String,
    /// The switch's own MAC on the uplink (not the interface's: the host keeps its own).
    pub mac: [u8; 6],
    /// Addresses the switch owns on the uplink (NAT IPs, virtual IPs, forwarded addresses).
    pub addresses: Vec<Ipv4Net>,
    /// Next hop toward the outside; resolved by ARP.
    pub gateway: Ipv4Addr,
    /// MTU of the uplink.
    pub mtu: u16,
    /// A segment id reserved for the uplink, so neighbour (ARP) state for the outside can be
    /// kept in the same tables as the subnets'. No SubnetEntry has it.
    pub segment: SubnetId,
    /// The opened devices (a bond's members, AF_PACKET queues, one per worker each).
    pub io: Arc<UplinkIo>,
    /// Networks routed through the uplink untranslated, and the inbound filter.
    pub routing: UplinkRouting,
    /// VLAN ID -> the VLAN port of the Subnet bound to it: tagged frames arriving with that
    /// VLAN are switched into the Subnet as if received on that port.
    pub vlans: std::collections::HashMap<u16, PortId>,
    /// IPv6 on the uplink, when the Uplink has `spec.ipv6`.
    pub ipv6: Option<UplinkIpv6Entry>,
}

/// The switch's IPv6 on the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkIpv6Entry {
    /// Addresses the switch owns (NAT66, IPv6 port forwards), with their link's prefix.
    pub addresses: Vec<ipnet::Ipv6Net>,
    /// The IPv6 next hop toward the outside; resolved by neighbour discovery.
    pub gateway: Ipv6Addr,
    /// The switch's link-local address on the uplink (EUI-64 of its uplink MAC): it answers
    /// neighbour solicitations for it and speaks from it to a link-local gateway.
    pub link_local: Ipv6Addr,
}

impl UplinkIpv6Entry {
    /// True when the switch owns `address` on the uplink (its link-local one included).
    #[inline]
    pub fn owns(&self, address: Ipv6Addr) -> bool {
        address == self.link_local || self.addresses.iter().any(|a| a.addr() == address)
    }

    /// The next hop toward `destination`: itself when it is on the link of one of the owned
    /// addresses (or link-local), else the gateway.
    #[inline]
    pub fn next_hop(&self, destination: Ipv6Addr) -> Ipv6Addr {
        let on_link = crate::wire::ipv6::is_link_local(destination)
            || self.addresses.iter().any(|a| a.contains(&destination));
        if on_link { destination } else { self.gateway }
    }

    /// The address the switch speaks from toward `neighbour` (neighbour solicitations): its
    /// link-local address for a link-local neighbour, else the owned address on its link,
    /// else the first owned address.
    #[inline]
    pub fn source_for(&self, neighbour: Ipv6Addr) -> Ipv6Addr {
        if crate::wire::ipv6::is_link_local(neighbour) {
            return self.link_local;
        }
        self.addresses
            .iter()
            .find(|a| a.contains(&neighbour))
            .or_else(|| self.addresses.first())
            .map_or(self.link_local, ipnet::Ipv6Net::addr)
    }
}

/// A Network routed through the uplink without NAT (`Network.spec.uplink.mode: Routed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedNetwork {
    /// The Network.
    pub id: NetworkId,
    /// Destinations outside it reached untranslated through the uplink, and the only sources
    /// accepted from outside; empty means every address.
    pub destinations: Vec<Ipv4Net>,
}

impl RoutedNetwork {
    /// True when `address` is inside `destinations` (or they are empty: everything).
    #[inline]
    pub fn covers(&self, address: Ipv4Addr) -> bool {
        self.destinations.is_empty() || self.destinations.iter().any(|d| d.contains(&address))
    }
}

/// One entry of the inbound filter's allow list: a protocol, and for TCP and UDP a range of
/// destination ports (`None`: every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundRule {
    /// The protocol (ICMP means echo requests).
    pub protocol: nat::Protocol,
    /// First and last destination port, inclusive.
    pub ports: Option<(u16, u16)>,
}

/// `Uplink.spec.inbound` with `policy: Drop`: what unsolicited traffic from the uplink may
/// start a connection (replies of connections started inside always pass).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundFilter {
    /// The allow list (a handful of entries: a linear scan).
    pub allow: Vec<InboundRule>,
}

impl InboundFilter {
    /// True when a new connection of `protocol` to destination port `port` (the echo
    /// identifier is not a port: ICMP ignores it) is allowed.
    pub fn allows(&self, protocol: nat::Protocol, port: u16) -> bool {
        self.allow.iter().any(|rule| {
            rule.protocol == protocol
                && (protocol == nat::Protocol::Icmp
                    || rule
                        .ports
                        .is_none_or(|(first, last)| (first..=last).contains(&port)))
        })
    }
}

/// A routed Network's Routes through routers on the uplink's link: destination -> (router,
/// the Route's name).
type UplinkRoutes = PrefixMap<Ipv4Net, (Ipv4Addr, String)>;

/// What the uplink carries besides NAT: the Networks routed through it untranslated (with
/// their Subnets' prefixes, where traffic from outside is routed to) and the inbound filter.
#[derive(Debug, Clone, Default)]
pub struct UplinkRouting {
    networks: Vec<RoutedNetwork>,
    prefixes: PrefixMap<Ipv4Net, NetworkId>,
    /// Routes through routers on the uplink's link, per routed Network (`Route`s whose next
    /// hop is there): consulted, by longest prefix, for what the Network's table does not
    /// cover, before the uplink's gateway.
    routes: Vec<(NetworkId, UplinkRoutes)>,
    /// The inbound filter, when `Uplink.spec.inbound.policy` is `Drop`.
    pub filter: Option<InboundFilter>,
}

impl UplinkRouting {
    /// The routed `networks`, each with its Subnets' prefixes (which the controller keeps
    /// disjoint between routed Networks), and the inbound `filter`.
    pub fn new(
        networks: Vec<(RoutedNetwork, Vec<Ipv4Net>)>,
        filter: Option<InboundFilter>,
    ) -> UplinkRouting {
        let mut prefixes = PrefixMap::new();
        let mut routed = Vec::with_capacity(networks.len());
        for (network, cidrs) in networks {
            for cidr in cidrs {
                prefixes.insert(cidr.trunc(), network.id);
            }
            routed.push(network);
        }
        UplinkRouting {
            networks: routed,
            prefixes,
            routes: Vec::new(),
            filter,
        }
    }

    /// Adds the routes of routed Network `id` through routers on the uplink's link
    /// (destination, router, the Route's name).
    pub fn with_routes(
        mut self,
        id: NetworkId,
        routes: Vec<(Ipv4Net, Ipv4Addr, String)>,
    ) -> UplinkRouting {
        let mut table = PrefixMap::new();
        for (prefix, router, name) in routes {
            table.insert(prefix.trunc(), (router, name));
        }
        self.routes.retain(|(other, _)| *other != id);
        self.routes.push((id, table));
        self
    }

    /// The router on the uplink's link that Network `id` routes `destination` to, by its
    /// longest-prefix Route through the uplink; `None`: the uplink's own choice (the
    /// destination on the link, else the gateway).
    #[inline]
    pub fn router(&self, id: NetworkId, destination: Ipv4Addr) -> Option<Ipv4Addr> {
        let (_, table) = self.routes.iter().find(|(network, _)| *network == id)?;
        table
            .get_lpm(&Ipv4Net::from(destination))
            .map(|(_, (router, _))| *router)
    }

    /// Every route through a router on the uplink's link: (Network, destination, router,
    /// the Route's name).
    pub fn routes(&self) -> impl Iterator<Item = (NetworkId, Ipv4Net, Ipv4Addr, &str)> {
        self.routes.iter().flat_map(|(id, table)| {
            table
                .iter()
                .map(move |(prefix, (router, name))| (*id, prefix, *router, name.as_str()))
        })
    }

    /// The routed Network `id`, if it is one.
    #[inline]
    pub fn network(&self, id: NetworkId) -> Option<&RoutedNetwork> {
        self.networks.iter().find(|network| network.id == id)
    }

    /// The routed Network whose Subnets hold `destination`: where a packet from outside to
    /// it goes.
    #[inline]
    pub fn network_of(&self, destination: Ipv4Addr) -> Option<&RoutedNetwork> {
        let (_, id) = self.prefixes.get_lpm(&Ipv4Net::from(destination))?;
        self.network(*id)
    }
}

/// Connection tracking shared by every snapshot of a daemon run (the same `Arc`), with the
/// defaults until the controller configures it.
fn default_conntrack() -> Arc<nat::Conntrack> {
    Arc::new(nat::Conntrack::new(nat::ConntrackConfig::default()))
}

/// An immutable, compiled configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped by every publish; caches built from an older snapshot are invalid.
    pub generation: u64,
    ports: Vec<PortEntry>,
    subnets: Vec<SubnetEntry>,
    /// PortId -> index into `ports`.
    port_slots: Vec<Option<usize>>,
    /// SubnetId -> index into `subnets`.
    subnet_slots: Vec<Option<usize>>,
    networks: Vec<NetworkEntry>,
    /// NetworkId -> index into `networks`.
    network_slots: Vec<Option<usize>>,
    /// The uplink, when one is configured.
    pub uplink: Option<UplinkEntry>,
    /// The VTEP, when an Overlay is configured.
    pub vtep: Option<VtepEntry>,
    /// The uplink's egress adjacency (set with [`with_uplink`](Snapshot::with_uplink)).
    uplink_egress: Option<Egress>,
    /// NAT rules (NATGateways, PortForwards, VirtualIPs) compiled by the controller. Zones
    /// are Network ids (`nat::Zone(network_id.0)`), interfaces are port ids
    /// (`nat::InterfaceId(port_id.0)`).
    pub nat: Arc<nat::NatRules>,
    /// Connection tracking: mutable shared state, the same table in every snapshot of a run
    /// (the controller carries it over), so conntrack survives reconfiguration.
    pub conntrack: Arc<nat::Conntrack>,
    /// LoadBalancers by Network and address (one entry per family of a dual-stack one).
    balancers:
        std::collections::HashMap<(NetworkId, IpAddr), Arc<Balancer>, foldhash::fast::RandomState>,
    /// Port id -> whether the port is a backend of some LoadBalancer (its frames may be
    /// replies of balanced connections).
    balanced_ports: Vec<bool>,
    /// The (protocol, first port, last port) the backends of all LoadBalancers serve on:
    /// only frames from those ports can be replies of balanced connections.
    backend_ports: Vec<(u8, u16, u16)>,
    /// Public LoadBalancers by their Uplink address.
    public_balancers: std::collections::HashMap<IpAddr, Arc<Balancer>, foldhash::fast::RandomState>,
    /// Health probes in flight (shared with the controller, carried across snapshots).
    pub probes: Arc<ProbeBoard>,
    /// NetworkPolicies, compiled; `None` when there are none (the `policy` stage then costs
    /// one branch).
    pub policy: Option<Arc<super::policy::PolicySet>>,
    /// Trunk NetworkInterfaces: the port of a trunk -> (VLAN, the port on that VLAN's Subnet).
    trunks: std::collections::HashMap<PortId, Vec<(u16, PortId)>>,
}

/// A LoadBalancer as the datapath serves it over one family: an address of a Network, its
/// ports, and the Maglev table of its backends of that family (a dual-stack LoadBalancer is
/// two of them, with the same name, ports and seed).
#[derive(Debug)]
pub struct Balancer {
    /// The LoadBalancer's name (counters and logs).
    pub name: String,
    /// Its index among the snapshot's LoadBalancers (per-balancer counters).
    pub index: u32,
    /// The Network it is in (its conntrack zone).
    pub network: NetworkId,
    /// Its address (the family of its backends).
    pub address: IpAddr,
    /// The ports it serves.
    pub ports: Vec<BalancedPort>,
    /// Its backends' lookup table (compiled by the controller from the backend set).
    pub table: Arc<lb::BackendTable>,
    /// Seed of the flow hash (the same on every node: a flow maps to the same backend).
    pub seed: u64,
    /// ClientIP session affinity, when asked for.
    pub affinity: Option<Affinity>,
    /// Public: its address is the Uplink's, reached from outside as well.
    pub public: bool,
}

/// The LoadBalancers' health probes in flight: the controller sends a TCP SYN from a
/// Subnet's gateway address (of the backend's family) to a backend's target port and expects an answer here; the
/// worker that reads the backend's SYN-ACK (listening: up) or reset (closed: down) records
/// it. Only expected answers are kept (a table of at most one entry per backend and port), so
/// nothing a container sends can grow it.
#[derive(Debug, Default)]
pub struct ProbeBoard {
    outstanding: parking_lot::Mutex<std::collections::HashMap<(IpAddr, u16), Option<bool>>>,
}

impl ProbeBoard {
    /// The source port of every probe (the gateway address opens no other connection).
    pub const SOURCE_PORT: u16 = 61_000;

    /// Expects an answer from `backend:port` (forgetting an earlier one).
    pub fn expect(&self, backend: IpAddr, port: u16) {
        self.outstanding.lock().insert((backend, port), None);
    }

    /// Records the answer of `backend:port` (`up`: a SYN-ACK); false when none was expected.
    pub fn answer(&self, backend: IpAddr, port: u16, up: bool) -> bool {
        match self.outstanding.lock().get_mut(&(backend, port)) {
            Some(slot) => {
                *slot = Some(up);
                true
            }
            None => false,
        }
    }

    /// The probe of `backend:port`: `None` when none is out, `Some(None)` while unanswered,
    /// `Some(Some(up))` once answered (then forgotten).
    pub fn take(&self, backend: IpAddr, port: u16) -> Option<Option<bool>> {
        let mut outstanding = self.outstanding.lock();
        match outstanding.get(&(backend, port)).copied()? {
            None => Some(None),
            Some(up) => {
                outstanding.remove(&(backend, port));
                Some(Some(up))
            }
        }
    }

    /// Stops expecting an answer from `backend:port`.
    pub fn forget(&self, backend: IpAddr, port: u16) {
        self.outstanding.lock().remove(&(backend, port));
    }
}

/// A LoadBalancer's ClientIP affinity: which backend each client's new connections go to,
/// until the client has been idle for `timeout` seconds. The table is shared state, carried
/// from one snapshot to the next by the controller (like conntrack).
#[derive(Debug, Clone)]
pub struct Affinity {
    /// Client -> backend.
    pub table: Arc<lb::AffinityTable>,
    /// Seconds of idleness after which a client is forgotten.
    pub timeout: u32,
}

/// A port (or range) a LoadBalancer serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalancedPort {
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
    /// The backends' port for `first` (a range maps each port to itself).
    pub target: Option<u16>,
}

impl Balancer {
    /// The backend port for a connection to `port` over `protocol`, when the balancer
    /// serves it.
    pub fn target_port(&self, protocol: u8, port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && (p.first..=p.last).contains(&port))
            .map(|p| p.target.unwrap_or(port))
    }
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot::new(Vec::new(), Vec::new())
    }
}

impl Snapshot {
    /// Builds a snapshot. The generation is set by the engine when it is published.
    ///
    /// # Panics
    /// When two ports (or two subnets) share an id: the controller allocates ids uniquely.
    pub fn new(ports: Vec<PortEntry>, subnets: Vec<SubnetEntry>) -> Snapshot {
        let mut port_slots = Vec::new();
        for (index, port) in ports.iter().enumerate() {
            let slot = port.id.0 as usize;
            if port_slots.len() <= slot {
                port_slots.resize(slot + 1, None);
            }
            assert!(port_slots[slot].is_none(), "duplicate port id {slot}");
            port_slots[slot] = Some(index);
        }
        let mut subnet_slots = Vec::new();
        for (index, subnet) in subnets.iter().enumerate() {
            let slot = subnet.id.0 as usize;
            if subnet_slots.len() <= slot {
                subnet_slots.resize(slot + 1, None);
            }
            assert!(subnet_slots[slot].is_none(), "duplicate subnet id {slot}");
            subnet_slots[slot] = Some(index);
        }
        Snapshot {
            generation: 0,
            ports,
            subnets,
            port_slots,
            subnet_slots,
            networks: Vec::new(),
            network_slots: Vec::new(),
            uplink: None,
            vtep: None,
            uplink_egress: None,
            nat: Arc::new(nat::NatRules::new()),
            conntrack: default_conntrack(),
            balancers: std::collections::HashMap::default(),
            balanced_ports: Vec::new(),
            public_balancers: std::collections::HashMap::default(),
            backend_ports: Vec::new(),
            probes: Arc::default(),
            policy: None,
            trunks: std::collections::HashMap::new(),
        }
    }

    /// Sets the trunk NetworkInterfaces' VLAN ports (see [`Snapshot::trunk_port`]).
    pub fn with_trunks(
        mut self,
        trunks: std::collections::HashMap<PortId, Vec<(u16, PortId)>>,
    ) -> Snapshot {
        self.trunks = trunks;
        self
    }

    /// True when some port is a trunk (its tagged frames are looked up at all).
    #[inline]
    pub fn has_trunks(&self) -> bool {
        !self.trunks.is_empty()
    }

    /// The port of trunk `port` on VLAN `vlan`, if the trunk carries that VLAN.
    #[inline]
    pub fn trunk_port(&self, port: PortId, vlan: u16) -> Option<&PortEntry> {
        let (_, id) = self.trunks.get(&port)?.iter().find(|(v, _)| *v == vlan)?;
        self.port(*id)
    }

    /// Sets the uplink.
    pub fn with_uplink(mut self, uplink: Option<UplinkEntry>) -> Snapshot {
        self.uplink_egress = uplink.as_ref().map(|uplink| Egress::Uplink {
            io: Arc::clone(&uplink.io),
            vlan: None,
        });
        self.uplink = uplink;
        self
    }

    /// Sets the VTEP.
    pub fn with_vtep(mut self, vtep: Option<VtepEntry>) -> Snapshot {
        self.vtep = vtep;
        self
    }

    /// Sets the NetworkPolicies.
    pub fn with_policy(mut self, policy: Option<Arc<super::policy::PolicySet>>) -> Snapshot {
        self.policy = policy;
        self
    }

    /// Sets the LoadBalancers' health probe board.
    pub fn with_probes(mut self, probes: Arc<ProbeBoard>) -> Snapshot {
        self.probes = probes;
        self
    }

    /// Sets the LoadBalancers and marks the ports that are backends of one.
    pub fn with_balancers(mut self, balancers: Vec<Balancer>, backends: &[PortId]) -> Snapshot {
        self.balancers = balancers
            .into_iter()
            .map(|b| ((b.network, b.address), Arc::new(b)))
            .collect();
        self.public_balancers = self
            .balancers
            .values()
            .filter(|b| b.public)
            .map(|b| (b.address, Arc::clone(b)))
            .collect();
        let mut backend_ports: Vec<(u8, u16, u16)> = self
            .balancers
            .values()
            .flat_map(|b| b.ports.iter())
            .map(|p| match p.target {
                Some(target) => (p.protocol, target, target),
                None => (p.protocol, p.first, p.last),
            })
            .collect();
        backend_ports.sort_unstable();
        backend_ports.dedup();
        self.backend_ports = backend_ports;
        for port in backends {
            let slot = port.0 as usize;
            if self.balanced_ports.len() <= slot {
                self.balanced_ports.resize(slot + 1, false);
            }
            self.balanced_ports[slot] = true;
        }
        self
    }

    /// The LoadBalancer of Network `network` at `address`, if any.
    #[inline]
    pub fn balancer(&self, network: NetworkId, address: IpAddr) -> Option<&Arc<Balancer>> {
        if self.balancers.is_empty() {
            return None;
        }
        self.balancers.get(&(network, address))
    }

    /// The Public LoadBalancer at Uplink address `address`, if any.
    #[inline]
    pub fn public_balancer(&self, address: IpAddr) -> Option<&Arc<Balancer>> {
        if self.public_balancers.is_empty() {
            return None;
        }
        self.public_balancers.get(&address)
    }

    /// Every LoadBalancer.
    pub fn balancers(&self) -> impl Iterator<Item = &Arc<Balancer>> {
        self.balancers.values()
    }

    /// True when a backend of some LoadBalancer serves on `protocol` `port` (a frame from
    /// it may be a reply of a balanced connection).
    #[inline]
    pub fn is_backend_port(&self, protocol: u8, port: u16) -> bool {
        self.backend_ports
            .iter()
            .any(|&(p, first, last)| p == protocol && (first..=last).contains(&port))
    }

    /// True when `port` is a backend of some LoadBalancer.
    #[inline]
    pub fn is_balanced_port(&self, port: PortId) -> bool {
        self.balanced_ports
            .get(port.0 as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Sets the NAT rules and the connection-tracking table (carry the same table over
    /// from the previous snapshot).
    pub fn with_nat(
        mut self,
        rules: Arc<nat::NatRules>,
        conntrack: Arc<nat::Conntrack>,
    ) -> Snapshot {
        self.nat = rules;
        self.conntrack = conntrack;
        self
    }

    /// Adds the Networks (routing tables).
    ///
    /// # Panics
    /// When two Networks share an id.
    pub fn with_networks(mut self, networks: Vec<NetworkEntry>) -> Snapshot {
        let mut slots = Vec::new();
        for (index, network) in networks.iter().enumerate() {
            let slot = network.id.0 as usize;
            if slots.len() <= slot {
                slots.resize(slot + 1, None);
            }
            assert!(slots[slot].is_none(), "duplicate network id {slot}");
            slots[slot] = Some(index);
        }
        self.networks = networks;
        self.network_slots = slots;
        self
    }

    /// The Network with this id, if it exists in this snapshot.
    #[inline]
    pub fn network(&self, id: NetworkId) -> Option<&NetworkEntry> {
        let index = (*self.network_slots.get(id.0 as usize)?)?;
        self.networks.get(index)
    }

    /// All Networks.
    pub fn networks(&self) -> &[NetworkEntry] {
        &self.networks
    }

    /// The port with this id, if it exists in this snapshot.
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortEntry> {
        let index = (*self.port_slots.get(id.0 as usize)?)?;
        self.ports.get(index)
    }

    /// The destination `id` (a port, or the uplink) with its egress adjacency, if it exists
    /// in this snapshot.
    #[inline]
    pub fn adjacency(&self, id: PortId) -> Option<Adjacency<'_>> {
        if let Some(port) = self.port(id) {
            return Some(Adjacency {
                id,
                name: &port.name,
                egress: &port.egress,
            });
        }
        match (&self.uplink, &self.uplink_egress) {
            (Some(uplink), Some(egress)) if uplink.id == id => Some(Adjacency {
                id,
                name: &uplink.name,
                egress,
            }),
            _ => None,
        }
    }

    /// What the workers poll under id `id`: a port with a device, the uplink or the VTEP.
    #[inline]
    pub fn ingress(&self, id: PortId) -> Option<Ingress<'_>> {
        if let Some(port) = self.port(id) {
            return port.io().map(|io| Ingress::Port(port, io));
        }
        if let Some(vtep) = self.vtep.as_ref().filter(|vtep| vtep.id == id) {
            return Some(Ingress::Vtep(vtep));
        }
        let uplink = self.uplink.as_ref()?;
        let index = uplink
            .io
            .members
            .iter()
            .position(|member| member.id == id)?;
        let member = uplink.io.members.get(index)?;
        Some(Ingress::Uplink(uplink, member, index))
    }

    /// Everything the workers poll: the ports with a device, then the uplink and the VTEP.
    pub fn ingresses(&self) -> impl Iterator<Item = Ingress<'_>> {
        let ports = self
            .ports
            .iter()
            .filter_map(|port| port.io().map(|io| Ingress::Port(port, io)));
        ports
            .chain(self.uplink.iter().flat_map(|uplink| {
                uplink
                    .io
                    .members
                    .iter()
                    .enumerate()
                    .map(move |(index, member)| Ingress::Uplink(uplink, member, index))
            }))
            .chain(self.vtep.iter().map(Ingress::Vtep))
    }

    /// The subnet with this id, if it exists in this snapshot.
    #[inline]
    pub fn subnet(&self, id: SubnetId) -> Option<&SubnetEntry> {
        let index = (*self.subnet_slots.get(id.0 as usize)?)?;
        self.subnets.get(index)
    }

    /// All ports.
    pub fn ports(&self) -> &[PortEntry] {
        &self.ports
    }

    /// All subnets.
    pub fn subnets(&self) -> &[SubnetEntry] {
        &self.subnets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, subnet: u32, origin: RouteOrigin) -> RouteEntry {
        RouteEntry {
            prefix: prefix.parse().expect("prefix"),
            subnet: SubnetId(subnet),
            next_hop: NextHop::Direct,
            origin,
        }
    }

    #[test]
    fn lookup_is_longest_prefix_and_first_route_wins() {
        let network = NetworkEntry::new(
            NetworkId(0),
            "n".into(),
            vec![
                route("10.0.0.0/8", 1, RouteOrigin::Static("wide".into())),
                route("10.1.0.0/16", 2, RouteOrigin::Connected),
                route("10.1.0.0/16", 3, RouteOrigin::Static("shadowed".into())),
            ],
        );
        let hit = |ip: &str| network.lookup(ip.parse().expect("ip")).map(|r| r.subnet.0);
        assert_eq!(hit("10.1.2.3"), Some(2));
        assert_eq!(hit("10.2.0.1"), Some(1));
        assert_eq!(hit("11.0.0.1"), None);
        assert_eq!(network.routes().count(), 2);
    }

    #[test]
    fn every_destination_has_one_adjacency() {
        use crate::tables::fixtures::{UPLINK, snapshot_with_ports, uplink_snapshot};
        let snapshot = uplink_snapshot();
        let port = snapshot.adjacency(PortId(1)).expect("port 1");
        assert_eq!((port.id, port.name), (PortId(1), "port1"));
        assert!(matches!(port.egress, Egress::Queue(_)));
        let uplink = snapshot.adjacency(UPLINK).expect("the uplink");
        assert_eq!(uplink.name, "up");
        assert!(matches!(uplink.egress, Egress::Uplink { vlan: None, .. }));
        assert!(snapshot.adjacency(PortId(77)).is_none());
        // A tunnel's adjacency is the overlay: no device, no queue of its own.
        let tunnel = PortEntry {
            id: PortId(9),
            name: "vxlan/blue".into(),
            subnet: SubnetId(1),
            mac: [0; 6],
            ips: Vec::new(),
            mtu: 1450,
            allowed_sources: Vec::new(),
            allowed_sources6: Vec::new(),
            ips6: Vec::new(),
            proxy_arp: false,
            egress: Egress::Tunnel(Tunnel {
                vni: vxlan::Vni::new(42).expect("vni"),
                remotes: vec![Ipv4Addr::new(192, 0, 2, 2).into()],
                mtu: 1450,
            }),
        };
        let snapshot = snapshot_with_ports(vec![tunnel]);
        let entry = snapshot.port(PortId(9)).expect("tunnel");
        assert!(entry.io().is_none());
        assert_eq!(entry.tunnel().map(|t| t.mtu), Some(1450));
        let adjacency = snapshot.adjacency(PortId(9)).expect("tunnel");
        assert!(matches!(adjacency.egress, Egress::Tunnel(t) if t.remotes.len() == 1));
        assert!(snapshot.port(PortId(1)).and_then(PortEntry::io).is_some());
    }

    proptest::proptest! {
        /// The trie answers what a linear scan for the longest matching prefix answers.
        #[test]
        fn lookup_matches_a_linear_scan(
            prefixes in proptest::collection::vec((proptest::prelude::any::<u32>(), 0u8..=32), 1..40),
            probes in proptest::collection::vec(proptest::prelude::any::<u32>(), 1..60),
        ) {
            let routes: Vec<RouteEntry> = prefixes
                .iter()
                .enumerate()
                .map(|(i, (addr, len))| RouteEntry {
                    prefix: Ipv4Net::new(Ipv4Addr::from(*addr), *len).expect("len <= 32").trunc(),
                    subnet: SubnetId(u32::try_from(i).expect("small")),
                    next_hop: NextHop::Direct,
                    origin: RouteOrigin::Connected,
                })
                .collect();
            let network = NetworkEntry::new(NetworkId(0), "n".into(), routes.clone());
            for probe in probes.iter().map(|p| Ipv4Addr::from(*p)) {
                // First route wins among equal prefixes, as NetworkEntry::new documents.
                let expected = routes
                    .iter()
                    .filter(|r| r.prefix.contains(&probe))
                    .fold(None::<&RouteEntry>, |best, r| match best {
                        Some(b) if b.prefix.prefix_len() >= r.prefix.prefix_len() => Some(b),
                        _ => Some(r),
                    });
                proptest::prop_assert_eq!(network.lookup(probe).map(|r| r.subnet), expected.map(|r| r.subnet));
            }
        }
    }
}
