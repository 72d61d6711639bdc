//! The Uplink and the NAT resources (NATGateway, PortForward, VirtualIP): whole-batch checks,
//! VirtualIP address allocation, computed status, and compilation into [`nat::NatRules`].
//! Pure functions of the desired [`State`], like [`routing`](super::routing), so that what
//! `get` shows and what the workers use cannot differ.
//!
//! Invariants of a state that passed [`validate`](super::validate):
//! - At most one Uplink. Its addresses are unicast host addresses, each once; its gateway is
//!   inside the prefix of one of them and is none of them; no address prefix overlaps a
//!   Subnet of any Network; its interface is not the host end of one of our veth ports.
//! - Every NAT address (NATGateway `ips`, PortForward `ip`, VirtualIP `status.ip`) is an
//!   address of the Uplink. An address is used by at most one NATGateway, and a VirtualIP's
//!   address by nothing else; PortForwards may share a NATGateway's address (their ports are
//!   then never used for masquerade), never a VirtualIP's; `(ip, protocol, port)` is
//!   forwarded once.
//! - A Network has at most one NATGateway. A PortForward's target interface exists. A
//!   VirtualIP is referenced by at most one NetworkInterface, and a referenced VirtualIP
//!   exists. Every VirtualIP has `status.ip` once planned.
//!
//! Conflicts between documents of one batch blame the later document (input order); an
//! existing resource not in the batch counts as earlier. An address a VirtualIP holds by
//! allocation counts as taken for every claimant.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::ApiError;
use super::resource::{
    ForwardState, InterfaceState, Kind, MacAddr, NatGateway, NetworkInterface, Origin, PortForward,
    PortForwardStatus, PortsInUse, Subnet, Uplink, VirtualIp,
};
use super::routing;
use super::store::{NodeId, State};
use crate::port::{self, PortKind};
use crate::tables::snapshot::NetworkId;

/// Where the documents of the batch being planned came from: which resources are in it, and
/// in which order.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    origins: &'a BTreeMap<(Kind, String), Origin>,
}

impl<'a> Batch<'a> {
    /// The batch of `origins` (every document of the input, by kind and name).
    pub fn new(origins: &'a BTreeMap<(Kind, String), Origin>) -> Batch<'a> {
        Batch { origins }
    }

    /// True when `kind`/`name` is existing state not in the batch, or a document before
    /// `than` in the input: the resource `than` must give way to.
    fn before(&self, kind: Kind, name: &str, than: &Origin) -> bool {
        match self.origins.get(&(kind, name.to_string())) {
            None => true,
            Some(origin) => origin.document < than.document,
        }
    }

    /// True when `kind`/`name` is in the batch.
    fn contains(&self, kind: Kind, name: &str) -> bool {
        self.origins.contains_key(&(kind, name.to_string()))
    }
}

/// The MAC derived from this node's id and the Uplink's name (locally administered unicast,
/// stable across restarts, different on another node), as for gateways
/// ([`routing::derived_gateway_mac`], with a key no Subnet name can take).
pub fn derived_uplink_mac(node: Option<NodeId>, uplink: &str) -> MacAddr {
    routing::derived_gateway_mac(node, &format!("uplink:{uplink}"))
}

/// The MAC the switch uses on the Uplink: `spec.mac`, else the derived one.
pub fn uplink_mac(state: &State, uplink: &Uplink) -> MacAddr {
    uplink
        .spec
        .mac
        .unwrap_or_else(|| derived_uplink_mac(state.node_id, &uplink.metadata.name))
}

/// The Uplink, if one exists.
pub fn uplink(state: &State) -> Option<&Uplink> {
    state.uplinks.values().next()
}

/// The address a VirtualIP uses: its spec's, else the allocated one.
pub fn virtual_ip_address(vip: &VirtualIp) -> Option<Ipv4Addr> {
    vip.spec.ip.or(vip.status.ip)
}

/// The NetworkInterface that references VirtualIP `name`, if one does.
pub fn virtual_ip_user<'a>(state: &'a State, name: &str) -> Option<&'a NetworkInterface> {
    state
        .network_interfaces
        .values()
        .find(|nic| nic.spec.virtual_ip.as_deref() == Some(name))
}

/// `wan` addresses as a list for messages: `198.51.100.10/24, 198.51.100.11`.
fn describe_addresses(uplink: &Uplink) -> String {
    uplink
        .spec
        .addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who uses `addr` among the NAT resources, as `(kind, name)`: NATGateways, PortForwards,
/// VirtualIPs (by spec or allocation), in that order.
pub fn users_of(state: &State, addr: Ipv4Addr) -> Vec<(Kind, String)> {
    let mut users = Vec::new();
    for gateway in state.nat_gateways.values() {
        if gateway.spec.ips.contains(&addr) {
            users.push((Kind::NatGateway, gateway.metadata.name.clone()));
        }
    }
    for forward in state.port_forwards.values() {
        if forward.spec.ip == addr {
            users.push((Kind::PortForward, forward.metadata.name.clone()));
        }
    }
    for vip in state.virtual_ips.values() {
        if virtual_ip_address(vip) == Some(addr) {
            users.push((Kind::VirtualIp, vip.metadata.name.clone()));
        }
    }
    users
}

/// Every address of the Uplink with the resources that use it (`NATGateway/gw`), in the
/// Uplink's order.
pub fn address_uses(state: &State) -> Vec<(Ipv4Addr, Vec<String>)> {
    let Some(uplink) = uplink(state) else {
        return Vec::new();
    };
    uplink
        .spec
        .addresses
        .iter()
        .map(|address| {
            let users = users_of(state, address.addr())
                .into_iter()
                .map(|(kind, name)| format!("{kind}/{name}"))
                .collect();
            (address.addr(), users)
        })
        .collect()
}

/// The Uplink: one per node; interface not one of our ports nor loopback; addresses each
/// once; gateway on the link and not an owned address; no overlap with a Subnet; no address
/// removed while a resource outside the batch uses it.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
pub fn check_uplink(
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
                other.metadata.name, other.spec.interface
            ),
        ));
    }
    if spec.interface == "lo" {
        return Err(origin.invalid(
            "spec.interface",
            "lo is the loopback interface; name the host interface that leads outside (e.g. eth1)",
        ));
    }
    let ours = next.network_interfaces.values().find(|nic| {
        nic.status.host_ifname.as_deref() == Some(spec.interface.as_str())
            || (nic.spec.kind == PortKind::Veth
                && port::host_ifname(&nic.metadata.name) == spec.interface)
    });
    if let Some(nic) = ours {
        return Err(origin.invalid(
            "spec.interface",
            format!(
                "{} is the host end of NetworkInterface {:?}, a port of this switch; name a host interface that leads outside (e.g. eth1)",
                spec.interface, nic.metadata.name
            ),
        ));
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
    if spec.owns(gateway) {
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
                describe_addresses(uplink)
            ),
        ));
    }
    // Addresses in use by resources outside the batch must stay (those in the batch are
    // checked against the new addresses by their own checks).
    let outside: Vec<(Kind, String, Ipv4Addr)> = next
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
                        virtual_ip_address(v)?,
                    ))
                }),
        )
        .collect();
    if let Some((kind, user, ip)) = outside.into_iter().find(|(_, _, ip)| !spec.owns(*ip)) {
        return Err(origin.conflict(
            "spec.addresses",
            format!(
                "{ip} is used by {kind} {user:?} but is not among the new addresses ({}); keep it, or change or delete {kind} {user:?} first",
                describe_addresses(uplink)
            ),
        ));
    }
    Ok(())
}

/// A new Subnet must not overlap the link of an Uplink address.
///
/// # Errors
/// [`ApiError::Invalid`] on `spec.cidr`.
pub fn check_subnet_against_uplink(
    origin: &Origin,
    next: &State,
    subnet: &Subnet,
) -> Result<(), ApiError> {
    let Some(uplink) = uplink(next) else {
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
    Ok(())
}

/// The Uplink a NAT resource needs, and the check that `ip` is one of its addresses.
fn owned_by_uplink<'a>(
    origin: &Origin,
    next: &'a State,
    field: &str,
    ip: Option<Ipv4Addr>,
) -> Result<&'a Uplink, ApiError> {
    let Some(uplink) = uplink(next) else {
        return Err(origin.invalid(
            field,
            "no Uplink exists; create the Uplink first (it may be in the same input): NAT addresses are addresses the switch owns on it",
        ));
    };
    if let Some(ip) = ip {
        if !uplink.spec.owns(ip) {
            return Err(origin.invalid(
                field,
                format!(
                    "{ip} is not an address of Uplink {:?} (addresses: {}); use one of them, or add it to the Uplink's spec.addresses",
                    uplink.metadata.name,
                    describe_addresses(uplink)
                ),
            ));
        }
    }
    Ok(uplink)
}

/// `NATGateway "gw"`, `VirtualIP "web" (allocated)`.
fn describe_user(state: &State, kind: Kind, name: &str) -> String {
    let allocated = kind == Kind::VirtualIp
        && state
            .virtual_ips
            .get(name)
            .is_some_and(|v| v.spec.ip.is_none());
    if allocated {
        format!("{kind} {name:?} (allocated to it)")
    } else {
        format!("{kind} {name:?}")
    }
}

/// The first user of `addr` of the given kinds that `origin`'s resource must give way to:
/// an existing one, one earlier in the batch, or a VirtualIP holding it by allocation.
fn blocking_user(
    next: &State,
    batch: Batch<'_>,
    origin: &Origin,
    me: (Kind, &str),
    addr: Ipv4Addr,
    kinds: &[Kind],
) -> Option<String> {
    users_of(next, addr)
        .into_iter()
        .filter(|(kind, name)| (*kind, name.as_str()) != me && kinds.contains(kind))
        .find(|(kind, name)| {
            let allocated = *kind == Kind::VirtualIp
                && next
                    .virtual_ips
                    .get(name)
                    .is_some_and(|v| v.spec.ip.is_none());
            allocated || batch.before(*kind, name, origin)
        })
        .map(|(kind, name)| describe_user(next, kind, &name))
}

/// A NATGateway: its Network exists and has no other; its addresses are the Uplink's, each
/// once, used by no other NATGateway and no VirtualIP.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
pub fn check_nat_gateway(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    gateway: &NatGateway,
) -> Result<(), ApiError> {
    let name = &gateway.metadata.name;
    let spec = &gateway.spec;
    if !next.networks.contains_key(&spec.network) {
        return Err(origin.invalid(
            "spec.network",
            format!(
                "Network {:?} does not exist; create it first (it may be in the same input)",
                spec.network
            ),
        ));
    }
    let twin = next.nat_gateways.values().find(|other| {
        other.metadata.name != *name
            && other.spec.network == spec.network
            && batch.before(Kind::NatGateway, &other.metadata.name, origin)
    });
    if let Some(twin) = twin {
        return Err(origin.conflict(
            "spec.network",
            format!(
                "Network {:?} already has NATGateway {:?}; a Network has one NATGateway: add the addresses to that one instead",
                spec.network, twin.metadata.name
            ),
        ));
    }
    if spec.ips.is_empty() {
        return Err(origin.invalid(
            "spec.ips",
            "no NAT address; list at least one address of the Uplink",
        ));
    }
    owned_by_uplink(origin, next, "spec.ips", None)?;
    let mut seen: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (index, ip) in spec.ips.iter().enumerate() {
        let field = format!("spec.ips[{index}]");
        if let Some(first) = seen.insert(*ip, index) {
            return Err(origin.invalid(
                &field,
                format!("{ip} is also spec.ips[{first}]; list each address once"),
            ));
        }
        owned_by_uplink(origin, next, &field, Some(*ip))?;
        if let Some(user) = blocking_user(
            next,
            batch,
            origin,
            (Kind::NatGateway, name),
            *ip,
            &[Kind::NatGateway, Kind::VirtualIp],
        ) {
            return Err(origin.conflict(
                &field,
                format!(
                    "{ip} is already used by {user}; a NAT address serves one NATGateway and is never a VirtualIP: choose another address of the Uplink"
                ),
            ));
        }
    }
    Ok(())
}

/// A PortForward: its address is the Uplink's and no VirtualIP's, `(ip, protocol, port)` is
/// forwarded once, its target interface exists.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
pub fn check_port_forward(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    forward: &PortForward,
) -> Result<(), ApiError> {
    let name = &forward.metadata.name;
    let spec = &forward.spec;
    owned_by_uplink(origin, next, "spec.ip", Some(spec.ip))?;
    if let Some(user) = blocking_user(
        next,
        batch,
        origin,
        (Kind::PortForward, name),
        spec.ip,
        &[Kind::VirtualIp],
    ) {
        return Err(origin.conflict(
            "spec.ip",
            format!(
                "{} is the address of {user}, which takes every port of it; forward a port of another address of the Uplink",
                spec.ip
            ),
        ));
    }
    let twin = next.port_forwards.values().find(|other| {
        other.metadata.name != *name
            && other.spec.ip == spec.ip
            && other.spec.protocol == spec.protocol
            && other.spec.port == spec.port
            && batch.before(Kind::PortForward, &other.metadata.name, origin)
    });
    if let Some(twin) = twin {
        return Err(origin.conflict(
            "spec.port",
            format!(
                "{} {}:{} is already forwarded by PortForward {:?}; choose another port, or change that PortForward",
                spec.protocol, spec.ip, spec.port, twin.metadata.name
            ),
        ));
    }
    if !next.network_interfaces.contains_key(&spec.target.interface) {
        return Err(origin.invalid(
            "spec.target.interface",
            format!(
                "NetworkInterface {:?} does not exist; name an existing one (vswitchctl get networkinterfaces) or create it first",
                spec.target.interface
            ),
        ));
    }
    Ok(())
}

/// A VirtualIP: its address, when given, is the Uplink's and used by nothing else.
///
/// # Errors
/// [`ApiError`] on `origin`'s field.
pub fn check_virtual_ip(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    vip: &VirtualIp,
) -> Result<(), ApiError> {
    owned_by_uplink(origin, next, "spec.ip", vip.spec.ip)?;
    if let Some(ip) = vip.spec.ip {
        if let Some(user) = blocking_user(
            next,
            batch,
            origin,
            (Kind::VirtualIp, &vip.metadata.name),
            ip,
            &[Kind::NatGateway, Kind::PortForward, Kind::VirtualIp],
        ) {
            return Err(origin.conflict(
                "spec.ip",
                format!(
                    "{ip} is already used by {user}; a VirtualIP's address serves nothing else: choose another address of the Uplink, or leave ip out to allocate one"
                ),
            ));
        }
    }
    Ok(())
}

/// A NetworkInterface's `virtualIP`: the VirtualIP exists and no other interface references
/// it.
///
/// # Errors
/// [`ApiError`] on `origin`'s `spec.virtualIP`.
pub fn check_interface_virtual_ip(
    origin: &Origin,
    next: &State,
    batch: Batch<'_>,
    nic: &NetworkInterface,
) -> Result<(), ApiError> {
    let Some(vip) = &nic.spec.virtual_ip else {
        return Ok(());
    };
    if !next.virtual_ips.contains_key(vip) {
        return Err(origin.invalid(
            "spec.virtualIP",
            format!(
                "VirtualIP {vip:?} does not exist; create it first (it may be in the same input)"
            ),
        ));
    }
    let other = next.network_interfaces.values().find(|other| {
        other.metadata.name != nic.metadata.name
            && other.spec.virtual_ip.as_deref() == Some(vip.as_str())
            && batch.before(Kind::NetworkInterface, &other.metadata.name, origin)
    });
    if let Some(other) = other {
        return Err(origin.conflict(
            "spec.virtualIP",
            format!(
                "VirtualIP {vip:?} is already used by NetworkInterface {:?}; a VirtualIP maps to one interface: create another VirtualIP",
                other.metadata.name
            ),
        ));
    }
    Ok(())
}

/// Gives every VirtualIP of the batch its address: the spec's; else the one it holds, while
/// it is still the Uplink's and taken by nothing else; else the first address of the Uplink
/// (in its order) that nothing uses.
///
/// # Errors
/// [`ApiError::Conflict`] on `spec.ip` when no address is free.
pub fn assign_virtual_ips(
    next: &mut State,
    in_batch: &[String],
    origin_of: &dyn Fn(&String) -> Origin,
) -> Result<(), ApiError> {
    // Statics first, so an allocation never takes an address the batch asks for.
    for name in in_batch {
        if let Some(vip) = next.virtual_ips.get_mut(name) {
            if let Some(ip) = vip.spec.ip {
                vip.status.ip = Some(ip);
            }
        }
    }
    for name in in_batch {
        let Some(vip) = next.virtual_ips.get(name) else {
            continue;
        };
        if vip.spec.ip.is_some() {
            continue;
        }
        let Some(uplink) = uplink(next) else {
            continue;
        };
        let free = |addr: Ipv4Addr| {
            users_of(next, addr)
                .iter()
                .all(|(kind, user)| *kind == Kind::VirtualIp && user == name)
        };
        let held = vip
            .status
            .ip
            .filter(|ip| uplink.spec.owns(*ip) && free(*ip));
        let chosen = held.or_else(|| {
            uplink
                .spec
                .addresses
                .iter()
                .map(|a| a.addr())
                .find(|addr| free(*addr))
        });
        let Some(chosen) = chosen else {
            return Err(origin_of(name).conflict(
                "spec.ip",
                format!(
                    "no free address left on Uplink {:?} (addresses: {}; each is used by a NATGateway, PortForward or VirtualIP); add an address to the Uplink, or free one",
                    uplink.metadata.name,
                    describe_addresses(uplink)
                ),
            ));
        };
        if let Some(vip) = next.virtual_ips.get_mut(name) {
            vip.status.ip = Some(chosen);
        }
    }
    Ok(())
}

/// The Network id (conntrack zone) and first address of a NetworkInterface.
fn zone_and_address(
    state: &State,
    network_ids: &BTreeMap<String, NetworkId>,
    nic: &NetworkInterface,
) -> Option<(nat::Zone, Ipv4Addr)> {
    let subnet = state.subnets.get(&nic.spec.subnet)?;
    let id = network_ids.get(&subnet.spec.network)?;
    let addr = nic.status.ips.first()?.addr();
    Some((nat::Zone(id.0), addr))
}

/// Ports per block when `portsPerNetworkInterface` is a multiple of it.
const PORT_BLOCK: u16 = 256;

/// Splits an interface's port budget into blocks: `(ports per block, blocks)`.
///
/// The budget is what bounds one container; the blocks are how it is claimed. Small blocks let
/// the allocator keep a flow's source port (RFC 4787 port preservation) in whichever block
/// that port falls, instead of only inside the one block the interface's first flow claimed
/// (a ping's ICMP identifier would otherwise decide which ports can ever be preserved). A
/// budget that is not a multiple of 256 stays one block.
fn port_blocks(ports_per_interface: u16) -> (u16, u16) {
    if ports_per_interface >= PORT_BLOCK && ports_per_interface % PORT_BLOCK == 0 {
        (PORT_BLOCK, ports_per_interface / PORT_BLOCK)
    } else {
        (ports_per_interface, 1)
    }
}

/// The NAT rules of `state`: a masquerade gateway per NATGateway (zone = its Network's id),
/// every PortForward whose target has an address, and every VirtualIP referenced by an
/// interface. A rule `nat` refuses (validation prevents it) is logged and left out.
pub fn compile(state: &State, network_ids: &BTreeMap<String, NetworkId>) -> nat::NatRules {
    let mut rules = nat::NatRules::new();
    for gateway in state.nat_gateways.values() {
        let Some(id) = network_ids.get(&gateway.spec.network) else {
            continue;
        };
        let mut compiled = nat::Gateway::new(gateway.spec.ips.clone());
        let (block, blocks) = port_blocks(gateway.spec.ports_per_network_interface);
        compiled.ports_per_interface = block;
        compiled.blocks_per_interface = blocks;
        if let Err(err) = rules.add_gateway(nat::Zone(id.0), compiled) {
            tracing::warn!(natgateway = %gateway.metadata.name, "NAT gateway left out: {err}");
        }
    }
    for forward in state.port_forwards.values() {
        let Some(nic) = state.network_interfaces.get(&forward.spec.target.interface) else {
            continue;
        };
        let Some((zone, addr)) = zone_and_address(state, network_ids, nic) else {
            continue;
        };
        let compiled = nat::PortForward {
            address: forward.spec.ip,
            protocol: forward.spec.protocol.to_nat(),
            port: forward.spec.port,
            zone,
            target: nat::Endpoint::new(IpAddr::V4(addr), forward.spec.target.port),
        };
        if let Err(err) = rules.add_port_forward(compiled) {
            tracing::warn!(portforward = %forward.metadata.name, "port forward left out: {err}");
        }
    }
    for nic in state.network_interfaces.values() {
        let Some(vip) = nic
            .spec
            .virtual_ip
            .as_ref()
            .and_then(|name| state.virtual_ips.get(name))
        else {
            continue;
        };
        let (Some(public), Some((zone, private))) = (
            virtual_ip_address(vip),
            zone_and_address(state, network_ids, nic),
        ) else {
            continue;
        };
        let compiled = nat::VirtualIp {
            public,
            zone,
            private,
        };
        if let Err(err) = rules.add_virtual_ip(compiled) {
            tracing::warn!(virtualip = %vip.metadata.name, "virtual IP left out: {err}");
        }
    }
    rules
}

/// The computed status of a PortForward: `Ready` when the Uplink and the target interface
/// are up, else `Pending` with the reason.
pub fn port_forward_status(state: &State, forward: &PortForward) -> PortForwardStatus {
    let target = &forward.spec.target;
    let nic = state.network_interfaces.get(&target.interface);
    let destination = nic
        .and_then(|n| n.status.ips.first())
        .map(|ip| format!("{}:{}", ip.addr(), target.port));
    let pending = |message: String| PortForwardStatus {
        state: ForwardState::Pending,
        destination: destination.clone(),
        message: Some(message),
    };
    let Some(uplink) = uplink(state) else {
        return pending("no Uplink exists".into());
    };
    if uplink.status.state != InterfaceState::Up {
        return pending(format!(
            "Uplink {:?} is {}",
            uplink.metadata.name, uplink.status.state
        ));
    }
    let Some(nic) = nic else {
        return pending(format!(
            "NetworkInterface {:?} does not exist",
            target.interface
        ));
    };
    if nic.status.state != InterfaceState::Up {
        return pending(format!(
            "NetworkInterface {:?} is {}",
            target.interface, nic.status.state
        ));
    }
    if destination.is_none() {
        return pending(format!(
            "NetworkInterface {:?} has no address",
            target.interface
        ));
    }
    PortForwardStatus {
        state: ForwardState::Ready,
        destination,
        message: None,
    }
}

/// Masquerade ports in use by the interfaces of a NATGateway, from the conntrack's usage:
/// rows whose NAT address is one of the gateway's, with the interface named through
/// `port_names` (port id -> NetworkInterface name).
pub fn ports_in_use(
    gateway: &NatGateway,
    usage: &[nat::InterfaceUsage],
    port_names: &BTreeMap<u32, String>,
) -> Vec<PortsInUse> {
    let mut rows: Vec<PortsInUse> = usage
        .iter()
        .filter(|u| gateway.spec.ips.contains(&u.ip))
        .map(|u| PortsInUse {
            interface: port_names
                .get(&u.interface.0)
                .cloned()
                .unwrap_or_else(|| format!("port {}", u.interface.0)),
            ip: u.ip,
            blocks: u
                .blocks
                .iter()
                .map(|b| format!("{}-{}", b.start(), b.end()))
                .collect(),
            tcp: u.in_use[0],
            udp: u.in_use[1],
            icmp: u.in_use[2],
        })
        .collect();
    rows.sort_by(|a, b| (&a.interface, a.ip).cmp(&(&b.interface, b.ip)));
    rows
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_budget_is_split_into_256_port_blocks_when_it_can_be() {
        assert_eq!(super::port_blocks(2048), (256, 8));
        assert_eq!(super::port_blocks(256), (256, 1));
        assert_eq!(super::port_blocks(64), (64, 1));
        assert_eq!(super::port_blocks(1000), (1000, 1));
        assert_eq!(super::port_blocks(64512), (256, 252));
    }

    use super::*;
    use crate::control::resource::parse_documents;
    use crate::control::validate::{self, Mode, Plan, UplinkWork};

    /// Network blue with Subnet web (10.1.0.0/24), interfaces c1 and c2, and Uplink wan
    /// (eth9: 198.51.100.10/24, .11 and .12 alone; gateway .1).
    const BASE: &str = "\
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

    fn doc(kind: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: vswitch/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        )
    }

    fn gateway(name: &str, network: &str, ips: &str) -> String {
        doc(
            "NATGateway",
            name,
            &format!("{{network: {network}, ips: [{ips}]}}"),
        )
    }

    fn forward(name: &str, ip: &str, protocol: &str, port: u16, target: &str) -> String {
        doc(
            "PortForward",
            name,
            &format!(
                "{{ip: {ip}, protocol: {protocol}, port: {port}, target: {{interface: {target}, port: 80}}}}"
            ),
        )
    }

    fn vip(name: &str, ip: Option<&str>) -> String {
        let ip = ip.map(|ip| format!(", ip: {ip}")).unwrap_or_default();
        doc("VirtualIP", name, &format!("{{type: Public{ip}}}"))
    }

    fn try_plan(current: &State, text: &str) -> Result<Plan, ApiError> {
        validate::plan(current, parse_documents(text)?, Mode::Apply)
    }

    fn apply(current: &State, text: &str) -> State {
        try_plan(current, text)
            .unwrap_or_else(|err| panic!("{err}"))
            .next
    }

    fn base() -> State {
        apply(&State::default(), BASE)
    }

    /// The refusal of `text` on `current`: status, field and message (which must contain
    /// every `words`).
    fn refused(current: &State, text: &str, status: u16, field: &str, words: &[&str]) {
        let err = try_plan(current, text).expect_err(text);
        let message = err.to_string();
        assert_eq!(err.status(), status, "{message}");
        assert_eq!(err.field(), Some(field), "{message}");
        for word in words {
            assert!(message.contains(word), "{word:?} not in {message:?}");
        }
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("an address")
    }

    #[test]
    fn uplink_checks() {
        let state = base();
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
        let host_end = port::host_ifname("c2");
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
        // A new Subnet may not overlap the uplink's link.
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
    fn an_address_in_use_stays_on_the_uplink() {
        let state = apply(
            &base(),
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
        assert_eq!(moved.nat_gateways["gw"].spec.ips, [ip("198.51.100.13")]);
    }

    #[test]
    fn nat_gateway_checks() {
        let state = base();
        refused(
            &state,
            &gateway("gw", "green", "198.51.100.10"),
            400,
            "documents[0].spec.network",
            &["Network \"green\" does not exist"],
        );
        refused(
            &state,
            &gateway("gw", "blue", ""),
            400,
            "documents[0].spec.ips",
            &["no NAT address"],
        );
        refused(
            &state,
            &gateway("gw", "blue", "203.0.113.7"),
            400,
            "documents[0].spec.ips[0]",
            &[
                "203.0.113.7 is not an address of Uplink \"wan\"",
                "198.51.100.10/24, 198.51.100.11, 198.51.100.12",
            ],
        );
        refused(
            &state,
            &gateway("gw", "blue", "198.51.100.10, 198.51.100.10"),
            400,
            "documents[0].spec.ips[1]",
            &["198.51.100.10 is also spec.ips[0]"],
        );
        let without_uplink = apply(
            &State::default(),
            "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: blue}\n",
        );
        refused(
            &without_uplink,
            &gateway("gw", "blue", "198.51.100.10"),
            400,
            "documents[0].spec.ips",
            &["no Uplink exists; create the Uplink first"],
        );
        let with_gw = apply(&state, &gateway("gw", "blue", "198.51.100.10"));
        assert_eq!(
            with_gw.nat_gateways["gw"].spec.ports_per_network_interface,
            2048
        );
        refused(
            &with_gw,
            &gateway("gw2", "blue", "198.51.100.11"),
            409,
            "documents[0].spec.network",
            &["Network \"blue\" already has NATGateway \"gw\""],
        );
        refused(
            &with_gw,
            &gateway("gw2", "red", "198.51.100.10"),
            409,
            "documents[0].spec.ips[0]",
            &["198.51.100.10 is already used by NATGateway \"gw\""],
        );
        // Two gateways of one batch: the later document is blamed.
        refused(
            &state,
            &format!(
                "{}{}",
                gateway("a", "blue", "198.51.100.10"),
                gateway("b", "red", "198.51.100.10")
            ),
            409,
            "documents[1].spec.ips[0]",
            &["document 2 (NATGateway \"b\")", "used by NATGateway \"a\""],
        );
        let with_vip = apply(&state, &vip("v", Some("198.51.100.11")));
        refused(
            &with_vip,
            &gateway("gw", "blue", "198.51.100.11"),
            409,
            "documents[0].spec.ips[0]",
            &["198.51.100.11 is already used by VirtualIP \"v\""],
        );
        // A gateway may change its own addresses, and share one with port forwards.
        let state = apply(
            &with_gw,
            &format!(
                "{}{}",
                gateway("gw", "blue", "198.51.100.10, 198.51.100.12"),
                forward("web", "198.51.100.10", "tcp", 8080, "c1")
            ),
        );
        assert_eq!(state.nat_gateways["gw"].spec.ips.len(), 2);
    }

    #[test]
    fn port_forward_checks() {
        let state = apply(&base(), &vip("v", Some("198.51.100.11")));
        refused(
            &state,
            &forward("web", "203.0.113.7", "tcp", 8080, "c1"),
            400,
            "documents[0].spec.ip",
            &["203.0.113.7 is not an address of Uplink \"wan\""],
        );
        refused(
            &state,
            &forward("web", "198.51.100.11", "tcp", 8080, "c1"),
            409,
            "documents[0].spec.ip",
            &["198.51.100.11 is the address of VirtualIP \"v\""],
        );
        refused(
            &state,
            &forward("web", "198.51.100.10", "tcp", 8080, "nobody"),
            400,
            "documents[0].spec.target.interface",
            &["NetworkInterface \"nobody\" does not exist"],
        );
        let state = apply(&state, &forward("web", "198.51.100.10", "tcp", 8080, "c1"));
        refused(
            &state,
            &forward("web2", "198.51.100.10", "tcp", 8080, "c2"),
            409,
            "documents[0].spec.port",
            &["tcp 198.51.100.10:8080 is already forwarded by PortForward \"web\""],
        );
        // Another protocol, port or address is fine; so is changing the forward itself.
        let state = apply(
            &state,
            &format!(
                "{}{}{}",
                forward("dns", "198.51.100.10", "udp", 8080, "c2"),
                forward("web2", "198.51.100.12", "tcp", 8080, "c2"),
                forward("web", "198.51.100.10", "tcp", 8080, "d1"),
            ),
        );
        assert_eq!(state.port_forwards.len(), 3);
        let without_uplink = apply(
            &State::default(),
            &format!(
                "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: n}}\n{}{}",
                doc(
                    "Subnet",
                    "s",
                    "{network: n, cidr: 10.9.0.0/24, gateway: 10.9.0.1}"
                ),
                doc("NetworkInterface", "c", "{subnet: s, netns: c}")
            ),
        );
        refused(
            &without_uplink,
            &forward("web", "198.51.100.10", "tcp", 80, "c"),
            400,
            "documents[0].spec.ip",
            &["no Uplink exists"],
        );
    }

    #[test]
    fn virtual_ip_checks() {
        let state = apply(
            &base(),
            &format!(
                "{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                forward("web", "198.51.100.12", "tcp", 8080, "c1")
            ),
        );
        refused(
            &state,
            &vip("v", Some("203.0.113.7")),
            400,
            "documents[0].spec.ip",
            &["203.0.113.7 is not an address of Uplink \"wan\""],
        );
        refused(
            &state,
            &vip("v", Some("198.51.100.10")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.10 is already used by NATGateway \"gw\""],
        );
        refused(
            &state,
            &vip("v", Some("198.51.100.12")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.12 is already used by PortForward \"web\""],
        );
        let state = apply(&state, &vip("v", Some("198.51.100.11")));
        refused(
            &state,
            &vip("w", Some("198.51.100.11")),
            409,
            "documents[0].spec.ip",
            &["198.51.100.11 is already used by VirtualIP \"v\""],
        );
        // Every address is taken now: an allocation fails, naming the Uplink.
        refused(
            &state,
            &vip("w", None),
            409,
            "documents[0].spec.ip",
            &["no free address left on Uplink \"wan\""],
        );
        let without_uplink = apply(
            &State::default(),
            "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: blue}\n",
        );
        refused(
            &without_uplink,
            &vip("v", None),
            400,
            "documents[0].spec.ip",
            &["no Uplink exists"],
        );
    }

    #[test]
    fn interfaces_reference_one_virtual_ip_each() {
        let state = apply(&base(), &vip("v", None));
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
            &apply(&base(), &vip("v", None)),
            &format!("{}{}", with_vip("c1", "c1", "v"), with_vip("c2", "c2", "v")),
            409,
            "documents[1].spec.virtualIP",
            &["already used by NetworkInterface \"c1\""],
        );
        // Adding a VirtualIP to an interface does not re-create its device.
        let plan = try_plan(
            &base(),
            &format!("{}{}", vip("v", None), with_vip("c1", "c1", "v")),
        )
        .expect("plans");
        assert!(plan.recreate.is_empty() && plan.attach.is_empty());
        assert_eq!(
            virtual_ip_user(&plan.next, "v").map(|n| n.metadata.name.as_str()),
            Some("c1")
        );
    }

    #[test]
    fn virtual_ips_are_allocated_in_the_uplinks_order_and_kept() {
        let state = apply(
            &base(),
            &format!(
                "{}{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                vip("a", None),
                vip("b", Some("198.51.100.11"))
            ),
        );
        // The static one is reserved first; the dynamic one skips the gateway's address.
        let address = |state: &State, name: &str| state.virtual_ips[name].status.ip;
        assert_eq!(address(&state, "a"), Some(ip("198.51.100.12")));
        assert_eq!(address(&state, "b"), Some(ip("198.51.100.11")));
        // Re-applying keeps the allocation, and so does a relabel.
        let again = apply(&state, &vip("a", None));
        assert_eq!(address(&again, "a"), Some(ip("198.51.100.12")));
        let relabelled = apply(
            &state,
            &vip("a", None).replace("{name: a}", "{name: a, labels: {x: y}}"),
        );
        assert_eq!(address(&relabelled, "a"), Some(ip("198.51.100.12")));
        // An allocated address counts as taken for later claims, whatever the order.
        refused(
            &state,
            &forward("web", "198.51.100.12", "tcp", 80, "c1"),
            409,
            "documents[0].spec.ip",
            &["VirtualIP \"a\" (allocated to it)"],
        );
        // Freed addresses are reused.
        let mut freed = state.clone();
        freed.virtual_ips.remove("b");
        let next = apply(&freed, &vip("c", None));
        assert_eq!(address(&next, "c"), Some(ip("198.51.100.11")));
        // Two allocations in one batch take different addresses.
        let two = apply(&base(), &format!("{}{}", vip("x", None), vip("y", None)));
        assert_eq!(address(&two, "x"), Some(ip("198.51.100.10")));
        assert_eq!(address(&two, "y"), Some(ip("198.51.100.11")));
        let uses = address_uses(&two);
        assert_eq!(
            uses,
            [
                (ip("198.51.100.10"), vec!["VirtualIP/x".to_string()]),
                (ip("198.51.100.11"), vec!["VirtualIP/y".to_string()]),
                (ip("198.51.100.12"), vec![]),
            ]
        );
    }

    #[test]
    fn deletes_check_dependants() {
        let state = apply(
            &base(),
            &format!(
                "{}{}{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                forward("web", "198.51.100.10", "tcp", 8080, "c1"),
                vip("v", None),
                doc(
                    "NetworkInterface",
                    "c2",
                    "{subnet: web, netns: c2, kind: veth, virtualIP: v}"
                )
            ),
        );
        let refusal = |kind: Kind, name: &str| {
            let err = validate::check_delete(&state, kind, name).expect_err(name);
            assert_eq!(err.status(), 409, "{err}");
            err.to_string()
        };
        assert_eq!(
            refusal(Kind::Uplink, "wan"),
            "Uplink \"wan\" still has NATGateways: gw; delete them first"
        );
        assert_eq!(
            refusal(Kind::Network, "blue"),
            "Network \"blue\" still has NATGateways: gw; delete them first"
        );
        assert_eq!(
            refusal(Kind::NetworkInterface, "c1"),
            "NetworkInterface \"c1\" still has PortForwards to it: web; delete them first"
        );
        assert_eq!(
            refusal(Kind::VirtualIp, "v"),
            "VirtualIP \"v\" still has NetworkInterfaces using it: c2; delete them first"
        );
        for (kind, name) in [
            (Kind::NatGateway, "gw"),
            (Kind::PortForward, "web"),
            (Kind::NetworkInterface, "c2"),
        ] {
            validate::check_delete(&state, kind, name).expect(name);
        }
        let err = validate::check_delete(&state, Kind::VirtualIp, "nope").expect_err("404");
        assert_eq!(err.status(), 404);
        let mut bare = state.clone();
        bare.nat_gateways.clear();
        bare.port_forwards.clear();
        assert_eq!(
            validate::check_delete(&bare, Kind::Uplink, "wan")
                .expect_err("a VirtualIP")
                .to_string(),
            "Uplink \"wan\" still has VirtualIPs: v; delete them first"
        );
    }

    #[test]
    fn uplink_work_follows_the_device() {
        let plan = try_plan(&State::default(), BASE).expect("plans");
        assert_eq!(plan.uplink, Some(UplinkWork::Open("wan".into())));
        assert_eq!(
            plan.next.uplinks["wan"].status.state,
            InterfaceState::Pending
        );
        let mut state = plan.next;
        state.uplinks.get_mut("wan").expect("wan").status.state = InterfaceState::Up;
        let uplink = BASE.split("---\n").last().expect("the uplink");
        // Unchanged, or only new addresses: nothing to do with the device.
        let plan = try_plan(&state, uplink).expect("plans");
        assert_eq!(plan.uplink, None);
        assert!(!plan.changed);
        let plan = try_plan(
            &state,
            &uplink.replace("198.51.100.12]", "198.51.100.12, 198.51.100.13]"),
        )
        .expect("plans");
        assert_eq!(plan.uplink, None);
        assert_eq!(plan.applied[0].action, "configured");
        // Another interface or MAC: re-open.
        let plan = try_plan(&state, &uplink.replace("eth9", "eth8")).expect("plans");
        assert_eq!(plan.uplink, Some(UplinkWork::Reopen("wan".into())));
        let plan = try_plan(
            &state,
            &uplink.replace(
                "gateway: 198.51.100.1",
                "gateway: 198.51.100.1, mac: '02:00:00:00:00:99'",
            ),
        )
        .expect("plans");
        assert_eq!(plan.uplink, Some(UplinkWork::Reopen("wan".into())));
        // A lost uplink is retried by applying it again, even unchanged.
        state.uplinks.get_mut("wan").expect("wan").status.state = InterfaceState::Lost;
        let plan = try_plan(&state, uplink).expect("plans");
        assert_eq!(plan.uplink, Some(UplinkWork::Reopen("wan".into())));
        assert!(plan.changed);
        assert_eq!(plan.applied[0].action, "configured");
    }

    #[test]
    fn uplink_macs_are_derived_and_stable() {
        let node = Some(NodeId([3; 16]));
        let mac = derived_uplink_mac(node, "wan");
        assert_eq!(mac, derived_uplink_mac(node, "wan"));
        assert_ne!(mac, derived_uplink_mac(node, "wan2"));
        assert_ne!(mac, derived_uplink_mac(Some(NodeId([4; 16])), "wan"));
        assert_eq!(mac.0[0] & 0x03, 0x02, "locally administered unicast: {mac}");
        // Never a gateway MAC of a Subnet with the same name.
        assert_ne!(mac, routing::derived_gateway_mac(node, "wan"));
        let mut state = base();
        state.node_id = node;
        assert_eq!(uplink_mac(&state, &state.uplinks["wan"]), mac);
    }

    #[test]
    fn compile_into_nat_rules() {
        let state = apply(
            &base(),
            &format!(
                "{}{}{}{}{}",
                gateway("gw", "blue", "198.51.100.10"),
                forward("web", "198.51.100.10", "tcp", 8080, "c1"),
                vip("v", None),
                doc(
                    "NetworkInterface",
                    "c2",
                    "{subnet: web, netns: c2, kind: veth, virtualIP: v}"
                ),
                doc(
                    "NATGateway",
                    "gw-red",
                    "{network: red, ips: [198.51.100.12], portsPerNetworkInterface: 512}"
                ),
            ),
        );
        let ids: BTreeMap<String, NetworkId> = [
            ("blue".to_string(), NetworkId(4)),
            ("red".to_string(), NetworkId(9)),
        ]
        .into_iter()
        .collect();
        let rules = compile(&state, &ids);
        let (blue, red) = (nat::Zone(4), nat::Zone(9));
        for owned in ["198.51.100.10", "198.51.100.11", "198.51.100.12"] {
            assert!(rules.owns(ip(owned)), "{owned}");
        }
        assert!(!rules.owns(ip("198.51.100.1")));
        let gw = rules.gateway(blue).expect("blue's gateway");
        assert_eq!(gw.ips, [ip("198.51.100.10")]);
        let budget = |g: &nat::Gateway| g.ports_per_interface * g.blocks_per_interface;
        assert_eq!(budget(gw), 2048);
        assert_eq!((gw.ports_per_interface, gw.blocks_per_interface), (256, 8));
        assert_eq!(rules.gateway(red).map(budget), Some(512));
        let c1 = state.network_interfaces["c1"].status.ips[0].addr();
        let c2 = state.network_interfaces["c2"].status.ips[0].addr();
        assert_eq!(rules.virtual_ip_of(blue, c2), Some(ip("198.51.100.11")));
        assert_eq!(rules.virtual_ip_of(blue, c1), None);
        let outside = nat::Endpoint::new(IpAddr::V4(ip("203.0.113.9")), 5555);
        let key = |dst: &str, port: u16| {
            nat::FlowKey::new(
                nat::Zone::EXTERNAL,
                nat::Tuple::new(
                    nat::Protocol::Tcp,
                    outside,
                    nat::Endpoint::new(IpAddr::V4(ip(dst)), port),
                ),
            )
        };
        let dnat = rules
            .destination(&key("198.51.100.10", 8080))
            .expect("forwarded");
        assert_eq!(dnat.target, nat::Endpoint::new(IpAddr::V4(c1), 80));
        assert_eq!(dnat.zone, blue);
        let dnat = rules
            .destination(&key("198.51.100.11", 22))
            .expect("virtual IP");
        assert_eq!(dnat.target, nat::Endpoint::new(IpAddr::V4(c2), 22));
        assert!(rules.destination(&key("198.51.100.10", 22)).is_none());
        // A Network without an id in this run (not published yet) is left out.
        let partial = compile(&state, &BTreeMap::new());
        assert!(partial.gateway(blue).is_none() && !partial.owns(ip("198.51.100.10")));
    }

    #[test]
    fn port_forward_status_says_why_it_is_pending() {
        let mut state = apply(&base(), &forward("web", "198.51.100.10", "tcp", 8080, "c1"));
        let status = |state: &State| port_forward_status(state, &state.port_forwards["web"]);
        let c1 = state.network_interfaces["c1"].status.ips[0].addr();
        let pending = status(&state);
        assert_eq!(pending.state, ForwardState::Pending);
        assert_eq!(
            pending.message.as_deref(),
            Some("Uplink \"wan\" is pending")
        );
        assert_eq!(pending.destination, Some(format!("{c1}:80")));
        state.uplinks.get_mut("wan").expect("wan").status.state = InterfaceState::Up;
        assert_eq!(
            status(&state).message.as_deref(),
            Some("NetworkInterface \"c1\" is pending")
        );
        state
            .network_interfaces
            .get_mut("c1")
            .expect("c1")
            .status
            .state = InterfaceState::Up;
        let ready = status(&state);
        assert_eq!(ready.state, ForwardState::Ready);
        assert_eq!(ready.message, None);
    }

    #[test]
    fn ports_in_use_name_the_interfaces() {
        let state = apply(&base(), &gateway("gw", "blue", "198.51.100.10"));
        let usage = vec![
            nat::InterfaceUsage {
                interface: nat::InterfaceId(3),
                ip: ip("198.51.100.10"),
                blocks: vec![1024..=3071],
                in_use: [2, 1, 0],
            },
            nat::InterfaceUsage {
                interface: nat::InterfaceId(5),
                ip: ip("198.51.100.99"),
                blocks: vec![3072..=5119],
                in_use: [1, 0, 0],
            },
        ];
        let names: BTreeMap<u32, String> = [(3, "c1".to_string())].into_iter().collect();
        let rows = ports_in_use(&state.nat_gateways["gw"], &usage, &names);
        assert_eq!(
            rows,
            [PortsInUse {
                interface: "c1".into(),
                ip: ip("198.51.100.10"),
                blocks: vec!["1024-3071".into()],
                tcp: 2,
                udp: 1,
                icmp: 0,
            }]
        );
    }
}
