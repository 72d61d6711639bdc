//! The Uplink and the NAT resources (NATGateway, PortForward, VirtualIP): what their checks
//! share (the Uplink, its addresses and who uses them; the checks themselves are the kinds',
//! in [`kinds`](super::kinds)), VirtualIP address allocation, computed status, and
//! compilation into [`nat::NatRules`]. Pure functions of the desired [`State`], like
//! [`routing`](super::routing), so that what `get` shows and what the workers use cannot
//! differ.
//!
//! Invariants of a state that passed [`validate`](super::validate) (the checks of the
//! Uplink, NATGateway, PortForward, VirtualIP and NetworkInterface kinds):
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
use std::net::IpAddr;

use super::ApiError;
use super::kinds::Batch;
use super::resource::{
    ForwardState, InterfaceState, IpFamily, Kind, MacAddr, NatGateway, NetworkInterface, Origin,
    PortForward, PortForwardStatus, PortsInUse, Uplink, VirtualIp,
};
use super::routing;
use super::store::{NodeId, State};

use crate::tables::snapshot::NetworkId;

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

/// The address a VirtualIP uses: its spec's, else the allocated one (of its family).
pub fn virtual_ip_address(vip: &VirtualIp) -> Option<IpAddr> {
    vip.spec.ip.or(vip
        .status
        .ip
        .filter(|ip| IpFamily::of(*ip) == vip.spec.family()))
}

/// The NetworkInterface that references VirtualIP `name`, if one does.
pub fn virtual_ip_user<'a>(state: &'a State, name: &str) -> Option<&'a NetworkInterface> {
    state
        .network_interfaces
        .values()
        .find(|nic| nic.spec.virtual_ip_names().any(|v| v == name))
}

/// Whether interface `nic` has (or, being in `batch`, will have) an address of `family`:
/// every interface has IPv4; IPv6 when it holds an IPv6 address or, in the batch, its
/// Subnet has a prefix and its families do not leave IPv6 out (addresses are assigned
/// after the checks, and only to interfaces of the batch).
pub fn has_family(
    state: &State,
    batch: Batch<'_>,
    nic: &NetworkInterface,
    family: IpFamily,
) -> bool {
    match family {
        IpFamily::IPv4 => true,
        IpFamily::IPv6 if batch.contains(Kind::NetworkInterface, &nic.metadata.key()) => state
            .subnets
            .get(&nic.spec.subnet)
            .is_some_and(|subnet| nic.spec.wants_ipv6(&subnet.spec)),
        IpFamily::IPv6 => nic.status.ipv6.is_some(),
    }
}

/// `wan` addresses as a list for messages: `198.51.100.10/24, 198.51.100.11`, then the
/// IPv6 ones.
pub(crate) fn describe_addresses(uplink: &Uplink) -> String {
    let v6 = uplink.spec.ipv6.iter().flat_map(|v6| &v6.addresses);
    uplink
        .spec
        .addresses
        .iter()
        .map(ToString::to_string)
        .chain(v6.map(ToString::to_string))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who uses `addr` among the NAT resources, as `(kind, name)`: NATGateways, PortForwards,
/// VirtualIPs (by spec or allocation), Public LoadBalancers (by allocation), in that order.
pub fn users_of(state: &State, addr: IpAddr) -> Vec<(Kind, String)> {
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
    for balancer in state.load_balancers.values() {
        if balancer.spec.lb_type == crate::control::resource::LoadBalancerType::Public
            && balancer.status.ips.contains(&addr)
        {
            users.push((Kind::LoadBalancer, balancer.metadata.key()));
        }
    }
    users
}

/// Every address of the Uplink with the resources that use it (`NATGateway/gw`), in the
/// Uplink's order.
pub fn address_uses(state: &State) -> Vec<(IpAddr, Vec<String>)> {
    let Some(uplink) = uplink(state) else {
        return Vec::new();
    };
    uplink
        .spec
        .all_addresses()
        .map(|address| {
            let users = users_of(state, address)
                .into_iter()
                .map(|(kind, name)| format!("{kind}/{name}"))
                .collect();
            (address, users)
        })
        .collect()
}

/// The Uplink a NAT resource needs, and the check that `ip` is one of its addresses.
pub(crate) fn owned_by_uplink<'a>(
    origin: &Origin,
    next: &'a State,
    field: &str,
    ip: Option<IpAddr>,
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
                    "{ip} is not an address of Uplink {:?} (addresses: {}); use one of them, or add it to the Uplink's spec.addresses{}",
                    uplink.metadata.name,
                    describe_addresses(uplink),
                    if ip.is_ipv6() { " (IPv6: spec.ipv6.addresses)" } else { "" }
                ),
            ));
        }
    }
    Ok(uplink)
}

/// `NATGateway "gw"`, `VirtualIP "web" (allocated)`.
pub(crate) fn describe_user(state: &State, kind: Kind, name: &str) -> String {
    let allocated = kind == Kind::LoadBalancer
        || kind == Kind::VirtualIp
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
pub(crate) fn blocking_user(
    next: &State,
    batch: Batch<'_>,
    origin: &Origin,
    me: (Kind, &str),
    addr: IpAddr,
    kinds: &[Kind],
) -> Option<String> {
    users_of(next, addr)
        .into_iter()
        .filter(|(kind, name)| (*kind, name.as_str()) != me && kinds.contains(kind))
        .find(|(kind, name)| {
            let allocated = *kind == Kind::LoadBalancer
                || *kind == Kind::VirtualIp
                    && next
                        .virtual_ips
                        .get(name)
                        .is_some_and(|v| v.spec.ip.is_none());
            allocated || batch.before(*kind, name, origin)
        })
        .map(|(kind, name)| describe_user(next, kind, &name))
}

/// Gives every VirtualIP of the batch its address: the spec's; else the one it holds, while
/// it is still the Uplink's, of its family and taken by nothing else; else the first address
/// of its family of the Uplink (in its order) that nothing uses.
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
        let family = vip.spec.family();
        let Some(chosen) =
            free_uplink_address(next, (Kind::VirtualIp, name), family, vip.status.ip)
        else {
            return Err(no_free_address(&origin_of(name), "spec.ip", uplink, family));
        };
        if let Some(vip) = next.virtual_ips.get_mut(name) {
            vip.status.ip = Some(chosen);
        }
    }
    Ok(())
}

/// The address of `family` that `me` (a VirtualIP or a Public LoadBalancer, which take
/// theirs by allocation) gets on the Uplink: `held` while it is still the Uplink's, of
/// `family` and used by nothing else, else the first address of `family` of the Uplink (in
/// its order) that nothing uses.
pub(crate) fn free_uplink_address(
    state: &State,
    me: (Kind, &str),
    family: IpFamily,
    held: Option<IpAddr>,
) -> Option<IpAddr> {
    let uplink = uplink(state)?;
    let free = |addr: IpAddr| {
        IpFamily::of(addr) == family
            && users_of(state, addr)
                .iter()
                .all(|(kind, user)| *kind == me.0 && user == me.1)
    };
    held.filter(|ip| uplink.spec.owns(*ip) && free(*ip))
        .or_else(|| uplink.spec.all_addresses().find(|addr| free(*addr)))
}

/// The refusal when no address of `family` of `uplink` is left for an allocation, on
/// `field`.
pub(crate) fn no_free_address(
    origin: &Origin,
    field: &str,
    uplink: &Uplink,
    family: IpFamily,
) -> ApiError {
    let where_ = match family {
        IpFamily::IPv4 => "spec.addresses",
        IpFamily::IPv6 => "spec.ipv6.addresses",
    };
    origin.conflict(
        field,
        format!(
            "no free {family} address left on Uplink {:?} (addresses: {}; each is used by a NATGateway, PortForward, VirtualIP or LoadBalancer); add an address to the Uplink's {where_}, or free one",
            uplink.metadata.name,
            describe_addresses(uplink)
        ),
    )
}

/// The Network id (conntrack zone) of a NetworkInterface.
fn zone_of(
    state: &State,
    network_ids: &BTreeMap<String, NetworkId>,
    nic: &NetworkInterface,
) -> Option<nat::Zone> {
    let subnet = state.subnets.get(&nic.spec.subnet)?;
    let id = network_ids.get(&subnet.spec.network)?;
    Some(nat::Zone(id.0))
}

/// The address of a NetworkInterface in `family`'s family (`family` is an address of it):
/// its first IPv4 address, or its IPv6 address.
pub fn interface_address_like(nic: &NetworkInterface, family: IpAddr) -> Option<IpAddr> {
    match family {
        IpAddr::V4(_) => nic.status.ips.first().map(|ip| IpAddr::V4(ip.addr())),
        IpAddr::V6(_) => nic.status.ipv6.map(|ip| IpAddr::V6(ip.addr())),
    }
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
        let Some(zone) = zone_of(state, network_ids, nic) else {
            continue;
        };
        let Some(addr) = interface_address_like(nic, forward.spec.ip) else {
            continue;
        };
        let compiled = nat::PortForward {
            address: forward.spec.ip,
            protocol: forward.spec.protocol.to_nat(),
            port: forward.spec.port,
            zone,
            target: nat::Endpoint::new(addr, forward.spec.target.port),
        };
        if let Err(err) = rules.add_port_forward(compiled) {
            tracing::warn!(portforward = %forward.metadata.name, "port forward left out: {err}");
        }
    }
    for nic in state.network_interfaces.values() {
        let Some(zone) = zone_of(state, network_ids, nic) else {
            continue;
        };
        for vip in nic
            .spec
            .virtual_ip_names()
            .filter_map(|name| state.virtual_ips.get(name))
        {
            let Some(public) = virtual_ip_address(vip) else {
                continue;
            };
            let Some(private) = interface_address_like(nic, public) else {
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
    }
    rules
}

/// The computed status of a PortForward: `Ready` when the Uplink and the target interface
/// are up, else `Pending` with the reason.
pub fn port_forward_status(state: &State, forward: &PortForward) -> PortForwardStatus {
    let target = &forward.spec.target;
    let nic = state.network_interfaces.get(&target.interface);
    let destination = nic
        .and_then(|n| interface_address_like(n, forward.spec.ip))
        .map(|ip| nat::Endpoint::new(ip, target.port).to_string());
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
            "NetworkInterface {:?} has no {} address",
            target.interface,
            if forward.spec.ip.is_ipv6() {
                "IPv6"
            } else {
                "IPv4"
            }
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
    use crate::control::testing::{apply, doc, forward, gateway, ip, nat_base, refused, vip};

    #[test]
    fn virtual_ips_are_allocated_in_the_uplinks_order_and_kept() {
        let state = apply(
            &nat_base(),
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
        let two = apply(
            &nat_base(),
            &format!("{}{}", vip("x", None), vip("y", None)),
        );
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
    fn uplink_macs_are_derived_and_stable() {
        let node = Some(NodeId([3; 16]));
        let mac = derived_uplink_mac(node, "wan");
        assert_eq!(mac, derived_uplink_mac(node, "wan"));
        assert_ne!(mac, derived_uplink_mac(node, "wan2"));
        assert_ne!(mac, derived_uplink_mac(Some(NodeId([4; 16])), "wan"));
        assert_eq!(mac.0[0] & 0x03, 0x02, "locally administered unicast: {mac}");
        // Never a gateway MAC of a Subnet with the same name.
        assert_ne!(mac, routing::derived_gateway_mac(node, "wan"));
        let mut state = nat_base();
        state.node_id = node;
        assert_eq!(uplink_mac(&state, &state.uplinks["wan"]), mac);
    }

    #[test]
    fn compile_into_nat_rules() {
        let state = apply(
            &nat_base(),
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
        assert_eq!(gw.ips, [ip::<IpAddr>("198.51.100.10")]);
        let budget = |g: &nat::Gateway| g.ports_per_interface * g.blocks_per_interface;
        assert_eq!(budget(gw), 2048);
        assert_eq!((gw.ports_per_interface, gw.blocks_per_interface), (256, 8));
        assert_eq!(rules.gateway(red).map(budget), Some(512));
        let c1 = IpAddr::V4(state.network_interfaces["c1"].status.ips[0].addr());
        let c2 = IpAddr::V4(state.network_interfaces["c2"].status.ips[0].addr());
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
        assert_eq!(dnat.target, nat::Endpoint::new(c1, 80));
        assert_eq!(dnat.zone, blue);
        let dnat = rules
            .destination(&key("198.51.100.11", 22))
            .expect("virtual IP");
        assert_eq!(dnat.target, nat::Endpoint::new(c2, 22));
        assert!(rules.destination(&key("198.51.100.10", 22)).is_none());
        // A Network without an id in this run (not published yet) is left out.
        let partial = compile(&state, &BTreeMap::new());
        assert!(partial.gateway(blue).is_none() && !partial.owns(ip("198.51.100.10")));
    }

    #[test]
    fn port_forward_status_says_why_it_is_pending() {
        let mut state = apply(
            &nat_base(),
            &forward("web", "198.51.100.10", "tcp", 8080, "c1"),
        );
        let status = |state: &State| port_forward_status(state, &state.port_forwards["web"]);
        let c1 = state.network_interfaces["c1"].status.ips[0].addr();
        let pending = status(&state);
        assert_eq!(pending.state, ForwardState::Pending);
        assert_eq!(
            pending.message.as_deref(),
            Some("Uplink \"wan\" is Pending")
        );
        assert_eq!(pending.destination, Some(format!("{c1}:80")));
        state.uplinks.get_mut("wan").expect("wan").status.state = InterfaceState::Up;
        assert_eq!(
            status(&state).message.as_deref(),
            Some("NetworkInterface \"c1\" is Pending")
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
        let state = apply(&nat_base(), &gateway("gw", "blue", "198.51.100.10"));
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
