//! The Overlay resource's rules, with no I/O: the encapsulation settings, MTUs on stretched
//! Subnets, the check of addresses other nodes must reach (used by the Overlay's and the
//! Subnets' checks, in [`kinds`](super::kinds)), and the resources the switch generates for it.
//!
//! A hub and a runner get their addressing from the overlay rather than from the user, so
//! the switch writes it as ordinary resources, labelled [`OWNER_LABEL`] `Overlay/<name>`, that
//! go through the same validation, IPAM and routing as the user's (and that users may read
//! but not change or delete):
//! - runner N (once the hub answered): Network `overlay`, Subnet `overlay` (10.N.0.0/16,
//!   gateway 10.N.0.1, VNI base+N, remote VTEP = the hub), Route `overlay-hub` (the hub's
//!   overlay-wide prefix, 10.0.0.0/8, via the hub's address in the subnet, 10.N.0.254);
//! - the hub: Network `overlay`; per runner, Subnet `overlay-rN` (10.N.0.0/16, the hub owns
//!   10.N.0.254, remote VTEP = the runner); Subnet `overlay-host` (the plan's first /16,
//!   which no runner gets) and the host NetworkInterface `overlay-host`: a TAP named
//!   [`HOST_IFNAME`] in vswitchd's own namespace with the hub address (10.0.0.1) and a route
//!   to the whole overlay through the switch, so the hub node's processes are reachable from
//!   every container;
//! - mesh: nothing; the user's Subnets with a `vni` are stretched over `peers`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use vxlan::encap::SourcePortRange;
use vxlan::{RunnerPlan, VxlanEncapConfig};

use super::ApiError;
use super::resource::{
    IpRequest, Metadata, Network, NetworkInterface, NetworkInterfaceSpec, NetworkSpec, OWNER_LABEL,
    Origin, Overlay, OverlayRole, Resource, Route, RouteSpec, RunnerToRunner, Subnet, SubnetIpv6,
    SubnetSpec,
};
use serde::{Deserialize, Serialize};
use vxlan::membership::RunnerState;

use super::resource::API_VERSION;
use super::resource::OverlayState;
use super::store::State;
use crate::port::PortKind;
use crate::sys::netns::NetnsRef;

/// The Network the switch generates for a hub or runner.
pub const NETWORK: &str = "overlay";
/// A runner's generated Subnet.
pub const RUNNER_SUBNET: &str = "overlay";
/// A runner's generated Route to the hub's overlay-wide prefix.
pub const HUB_ROUTE: &str = "overlay-hub";
/// A runner's generated Route to the hub's overlay-wide IPv6 prefix (with an IPv6 plan).
pub const HUB_ROUTE6: &str = "overlay-hub6";
/// The hub's generated Subnet and NetworkInterface for its own stack.
pub const HOST: &str = "overlay-host";
/// The name of the hub's host TAP in vswitchd's namespace.
pub const HOST_IFNAME: &str = "vsoverlay0";
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The hub's generated Subnet for runner `id`.
pub fn runner_subnet_name(id: u32) -> String {
    format!("overlay-r{id}")
}

/// True when `metadata` marks a resource the switch generated.
pub fn is_owned(metadata: &Metadata) -> bool {
    metadata.labels.contains_key(OWNER_LABEL)
}

/// The MTU of Subnet `subnet`: a stretched one (with a VNI) is capped at the Overlay's MTU,
/// so that what is routed into it fits the underlay once encapsulated.
pub fn subnet_mtu(state: &State, subnet: &Subnet) -> u16 {
    match (subnet.spec.vni, state.overlays.values().next()) {
        (Some(_), Some(overlay)) => subnet.spec.mtu.min(overlay.spec.mtu()),
        _ => subnet.spec.mtu,
    }
}

/// The MTU an interface gets: its own, else its Subnet's, capped at the Overlay's MTU on a
/// stretched Subnet ("attached interfaces on overlay subnets get the overlay MTU").
pub fn interface_mtu(state: &State, nic: &NetworkInterface, subnet: &Subnet) -> u16 {
    let mtu = nic.effective_mtu(&subnet.spec);
    match (subnet.spec.vni, state.overlays.values().next()) {
        (Some(_), Some(overlay)) => mtu.min(overlay.spec.mtu()),
        _ => mtu,
    }
}

/// Parses `MIN-MAX` (the `sourcePorts` field).
///
/// # Errors
/// A message saying what to write.
pub fn source_ports(text: &str) -> Result<SourcePortRange, String> {
    let parsed = text.split_once('-').and_then(|(min, max)| {
        Some((
            min.trim().parse::<u16>().ok()?,
            max.trim().parse::<u16>().ok()?,
        ))
    });
    let Some((min, max)) = parsed else {
        return Err(format!(
            "{text:?} is not a port range; write MIN-MAX, e.g. 32768-60999"
        ));
    };
    SourcePortRange::new(min, max).map_err(|err| err.to_string())
}

/// The encapsulation settings of the Overlay (validated: the range parses).
pub fn encap_config(overlay: &Overlay) -> VxlanEncapConfig {
    VxlanEncapConfig {
        udp_checksum_ipv4: overlay.spec.udp_checksum,
        source_ports: source_ports(&overlay.spec.source_ports).unwrap_or_default(),
        remote_checksum_offload: overlay.spec.remote_checksum_offload,
        ..VxlanEncapConfig::default()
    }
}

/// The settings every node of the overlay must share.
pub fn settings(overlay: &Overlay) -> vxlan::OverlaySettings {
    vxlan::OverlaySettings {
        vni_base: overlay.spec.vni_base,
        port: overlay.spec.port,
        mtu: overlay.spec.mtu(),
        remote_checksum_offload: overlay.spec.remote_checksum_offload,
        encapsulation: overlay.spec.encapsulation,
    }
}

/// Without encapsulation: this node's routed address, where the other nodes route its
/// subnets: the first Uplink address whose link holds `local` (the node's own address on
/// the underlay). `None` without such an address.
pub fn routed_address(state: &State, local: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V4(local) = local else {
        return None;
    };
    let uplink = state.uplinks.values().next()?;
    uplink
        .spec
        .addresses
        .iter()
        .find(|address| {
            let prefix = address.0.trunc();
            prefix.prefix_len() < 32 && prefix.contains(&local) && address.addr() != local
        })
        .map(|address| address.addr())
}

/// Checks an address other nodes must reach: not loopback, unspecified, multicast,
/// broadcast, IPv6 link-local (it needs an interface beside it) or IPv4-mapped.
pub(crate) fn check_reachable(
    origin: &Origin,
    field: &str,
    address: IpAddr,
) -> Result<(), ApiError> {
    let why = if address.is_loopback() {
        Some("is a loopback address")
    } else if address.is_unspecified() {
        Some("is unspecified")
    } else if address.is_multicast() || address == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("is not a unicast address")
    } else if matches!(address, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
        Some("is an IPv6 link-local address (it names no interface)")
    } else if matches!(address, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
        Some("is an IPv4-mapped IPv6 address (write the IPv4 address)")
    } else {
        None
    };
    match why {
        Some(why) => Err(origin.invalid(
            field,
            format!(
                "{address} {why}: the other nodes cannot reach it; use the address the other nodes reach this node at (its address on the underlay network)"
            ),
        )),
        None => Ok(()),
    }
}

/// Why a runner registering from `address` cannot be served by a hub on `local`: not a
/// unicast address others reach, IPv6 link-local or IPv4-mapped, or of the other family.
pub(crate) fn registration_problem(address: IpAddr, local: IpAddr) -> Option<String> {
    let origin = Origin::default();
    let problem = check_reachable(&origin, "localAddress", address)
        .and_then(|()| check_family(&origin, "localAddress", address, local));
    problem.err().map(|error| error.to_string())
}

/// Checks that `address` (a remote VTEP, hub or runner) is of the underlay's family: that
/// of the Overlay's `localAddress`, `local`. The VTEP's sockets are of one family.
pub(crate) fn check_family(
    origin: &Origin,
    field: &str,
    address: IpAddr,
    local: IpAddr,
) -> Result<(), ApiError> {
    if address.is_ipv6() == local.is_ipv6() {
        return Ok(());
    }
    let family = |address: IpAddr| if address.is_ipv6() { "IPv6" } else { "IPv4" };
    Err(origin.invalid(
        field,
        format!(
            "{address} is an {} address, but the Overlay's localAddress {local} is {}: the \
             underlay is of one family (give this node's {} address as localAddress, or the \
             other node's {} address here)",
            family(address),
            family(local),
            family(address),
            family(local),
        ),
    ))
}

fn metadata(name: &str, owner: &str) -> Metadata {
    Metadata {
        name: name.to_string(),
        namespace: None,
        labels: BTreeMap::from([(OWNER_LABEL.to_string(), owner.to_string())]),
    }
}

fn network(owner: &str) -> Resource {
    Resource::Network(Network {
        api_version: API_VERSION.into(),
        kind: "Network".into(),
        metadata: metadata(NETWORK, owner),
        spec: NetworkSpec::default(),
        status: Default::default(),
    })
}

/// A generated Subnet of Network [`NETWORK`].
#[allow(clippy::too_many_arguments)]
fn subnet(
    name: &str,
    owner: &str,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u16,
    vni: Option<u32>,
    remote_vteps: Vec<IpAddr>,
    reserved: Vec<Ipv4Addr>,
    ipv6: Option<SubnetIpv6>,
) -> Resource {
    Resource::Subnet(Subnet {
        api_version: API_VERSION.into(),
        kind: "Subnet".into(),
        metadata: metadata(name, owner),
        spec: SubnetSpec {
            network: NETWORK.into(),
            cidr,
            gateway,
            mtu,
            range_start: None,
            range_end: None,
            reserved,
            mac_ageing_seconds: super::resource::DEFAULT_MAC_AGEING_SECONDS,
            mac_table_limit: super::resource::DEFAULT_MAC_TABLE_LIMIT,
            gateway_mac: None,
            vni,
            vlan: None,
            remote_vteps,
            shared_gateway: false,
            dns: None,
            dhcp: None,
            ipv6,
        },
        status: Default::default(),
    })
}

/// A generated Subnet's IPv6 half: `cidr` with the switch's `gateway`, `reserved` kept from
/// IPAM, router advertisements only from the runner's own switch (`advertise`): on a
/// stretched segment the hub's copy must not advertise itself as a second router.
fn subnet6(
    cidr: Ipv6Net,
    gateway: Ipv6Addr,
    reserved: Vec<Ipv6Addr>,
    advertise: bool,
) -> SubnetIpv6 {
    SubnetIpv6 {
        cidr,
        gateway: Some(gateway),
        range_start: None,
        range_end: None,
        reserved,
        router_advertisements: advertise,
        slaac: false,
    }
}

fn route(name: &str, owner: &str, destination: IpNet, next_hop: IpAddr) -> Resource {
    Resource::Route(Route {
        api_version: API_VERSION.into(),
        kind: "Route".into(),
        metadata: metadata(name, owner),
        spec: RouteSpec {
            network: NETWORK.into(),
            destination,
            next_hop,
        },
        status: Default::default(),
    })
}

/// The Subnet, Network and Route a runner generates from the hub's `plan`.
fn runner_resources(overlay: &Overlay, plan: &RunnerPlan, hub: IpAddr) -> Vec<Resource> {
    let owner = overlay.owner_label();
    let ipv6 = plan
        .ipv6
        .map(|six| subnet6(six.subnet, six.gateway, vec![six.hub_address], true));
    let mut resources = vec![
        network(&owner),
        subnet(
            RUNNER_SUBNET,
            &owner,
            plan.subnet,
            plan.gateway,
            overlay.spec.mtu(),
            Some(u32::from(plan.vni)),
            vec![hub],
            vec![plan.hub_address],
            ipv6,
        ),
        route(
            HUB_ROUTE,
            &owner,
            plan.hub_overlay_address.trunc().into(),
            plan.hub_address.into(),
        ),
    ];
    if let Some(six) = plan.ipv6 {
        resources.push(route(
            HUB_ROUTE6,
            &owner,
            six.hub_overlay_address.trunc().into(),
            six.hub_address.into(),
        ));
    }
    if let Some(peers) = &overlay.status.peers {
        resources.extend(peer_subnets(overlay, plan, peers));
    }
    resources
}

/// Most other runners one runner reaches directly: each copy of a runner's subnet takes one
/// of the switch's 4,096 port ids for its tunnel. Runners beyond it (the highest IDs) are
/// still reached, through the hub, by the runner's route to the whole overlay.
pub const MAX_DIRECT_PEERS: usize = 2048;

/// A runner's copies of the other runners' subnets (`spec.runnerToRunner: Direct` at the
/// hub): the same shape as the hub's (`overlay-rM`, VNI base+M, the runner M as the only
/// remote VTEP), so the runner routes into runner M's subnet itself and its frames go
/// straight to runner M. The copy's gateway is the hub's address in that subnet (10.M.0.254,
/// which runner M's IPAM never hands out), held by every runner reaching M directly and by
/// the hub: `sharedGateway`, so none of them claims it on the segment and runner M keeps
/// sending its own traffic for the hub to the hub. More specific than the route to the
/// whole overlay through the hub, which still carries the hub address and anything
/// without a copy.
fn peer_subnets(overlay: &Overlay, own: &RunnerPlan, peers: &vxlan::OverlayPeers) -> Vec<Resource> {
    let owner = overlay.owner_label();
    let local = overlay.spec.local_address;
    // A list whose plan is not valid gives no copies (the runner keeps its route via the
    // hub), rather than failing the runner's own Subnet with them.
    if peers.address_plan.max_runners(peers.vni_base).is_err() {
        return Vec::new();
    }
    let overlaps6 = |plan: &RunnerPlan| match (plan.ipv6, own.ipv6) {
        (Some(theirs), Some(ours)) => {
            theirs.subnet.contains(&ours.subnet.network())
                || ours.subnet.contains(&theirs.subnet.network())
        }
        _ => false,
    };
    peers
        .runners
        .iter()
        .filter(|peer| {
            peer.id != own.runner_id
                && peer.address != local
                && peer.address.is_ipv6() == local.is_ipv6()
        })
        .filter_map(|peer| {
            let plan = peers.address_plan.runner(peer.id, peers.vni_base).ok()?;
            if plan.subnet.contains(&own.subnet.network())
                || own.subnet.contains(&plan.subnet.network())
                || overlaps6(&plan)
                || check_reachable(&Origin::default(), "address", peer.address).is_err()
            {
                return None;
            }
            let mut generated = subnet(
                &runner_subnet_name(peer.id.get()),
                &owner,
                plan.subnet,
                plan.hub_address,
                overlay.spec.mtu(),
                Some(u32::from(plan.vni)),
                vec![peer.address],
                vec![plan.gateway],
                plan.ipv6
                    .map(|six| subnet6(six.subnet, six.hub_address, vec![six.gateway], false)),
            );
            if let Resource::Subnet(subnet) = &mut generated {
                subnet.spec.shared_gateway = true;
            }
            Some(generated)
        })
        .take(MAX_DIRECT_PEERS)
        .collect()
}

/// The hub's Network, host Subnet and host NetworkInterface, and a Subnet per runner in
/// `pool`. A runner another hub serves (`elsewhere`, from the shared store) gets a copy
/// whose gateway is this node's own MAC and `sharedGateway`: the frames this hub routes
/// into its subnet then never teach the runner that the hub address's MAC (the VNI's, the
/// same on every hub) is behind this hub, so the runner keeps sending its traffic for the
/// hub, 10.0.0.1's included, to the hub that serves it.
fn hub_resources(
    overlay: &Overlay,
    pool: Option<&vxlan::RunnerPool>,
    elsewhere: &dyn Fn(&str) -> bool,
) -> Vec<Resource> {
    let owner = overlay.owner_label();
    let spec = &overlay.spec;
    let plan = &spec.address_plan;
    let host_cidr = Ipv4Net::new(plan.overlay.network(), plan.runner_prefix_len)
        .unwrap_or(plan.overlay)
        .trunc();
    let host_gateway = nth_host(host_cidr, plan.hub_host).unwrap_or(plan.hub_address);
    // With IPv6 inside: the first /64 is the host's, its gateway at the hub host number.
    let host6 = plan.ipv6.map(|six| {
        let cidr = six.subnet(0);
        let gateway = Ipv6Addr::from_bits(cidr.network().to_bits() + u128::from(plan.hub_host));
        (six, subnet6(cidr, gateway, Vec::new(), true))
    });
    let mut routes = vec![IpNet::V4(plan.overlay)];
    routes.extend(host6.as_ref().map(|(six, _)| IpNet::V6(six.overlay)));
    let mut resources = vec![
        network(&owner),
        subnet(
            HOST,
            &owner,
            host_cidr,
            host_gateway,
            spec.mtu(),
            None,
            Vec::new(),
            Vec::new(),
            host6.as_ref().map(|(_, subnet)| subnet.clone()),
        ),
        Resource::NetworkInterface(NetworkInterface {
            api_version: API_VERSION.into(),
            kind: "NetworkInterface".into(),
            metadata: Metadata {
                namespace: Some(super::resource::DEFAULT_NAMESPACE.into()),
                ..metadata(HOST, &owner)
            },
            spec: NetworkInterfaceSpec {
                vlan: None,
                trunk: Vec::new(),
                subnet: HOST.into(),
                netns: NetnsRef::Path(PathBuf::from("/proc/self/ns/net")),
                ifname: HOST_IFNAME.into(),
                kind: PortKind::Tap,
                mac: None,
                ips: vec![IpRequest {
                    addr: plan.hub_address,
                    prefix_len: None,
                }],
                mtu: None,
                virtual_ip: None,
                virtual_ips: Vec::new(),
                default_route: false,
                routes,
                ports: Vec::new(),
                dhcp: false,
                ip_families: Vec::new(),
                ipv6: host6.map(|(six, _)| six.hub_address()),
            },
            status: Default::default(),
        }),
    ];
    for runner in pool.into_iter().flat_map(vxlan::RunnerPool::runners) {
        let address = runner.address;
        if address.is_ipv6() != spec.local_address.is_ipv6() {
            // Registered before the hub's underlay changed family: unreachable now (it
            // registers again from an address of the new family).
            continue;
        }
        let Ok(runner_plan) = plan.runner(runner.id, spec.vni_base) else {
            continue;
        };
        let mut generated = subnet(
            &runner_subnet_name(runner.id.get()),
            &owner,
            runner_plan.subnet,
            runner_plan.hub_address,
            spec.mtu(),
            Some(u32::from(runner_plan.vni)),
            vec![address],
            vec![runner_plan.gateway],
            runner_plan
                .ipv6
                .map(|six| subnet6(six.subnet, six.hub_address, vec![six.gateway], false)),
        );
        if let Resource::Subnet(subnet) = &mut generated {
            if elsewhere(&runner.name) {
                subnet.spec.shared_gateway = true;
            } else {
                subnet.spec.gateway_mac = Some(hub_gateway_mac(u32::from(runner_plan.vni)));
            }
        }
        resources.push(generated);
    }
    resources
}

/// Without encapsulation: the generated Network, routed through the Uplink toward the whole
/// overlay `range` (and accepting only sources from it).
fn routed_network(owner: &str, range: Ipv4Net) -> Resource {
    let mut generated = network(owner);
    if let Resource::Network(network) = &mut generated {
        network.spec.uplink = Some(super::resource::NetworkUplink {
            mode: super::resource::UplinkMode::Routed,
            destinations: vec![super::resource::RoutedDestination(range.trunc())],
        });
    }
    generated
}

/// Without encapsulation: Route `overlay-rN` to runner `id`'s `subnet` via its routed
/// address.
fn runner_route(owner: &str, id: vxlan::RunnerId, subnet: Ipv4Net, via: IpAddr) -> Resource {
    route(&runner_subnet_name(id.get()), owner, subnet.into(), via)
}

/// Without encapsulation: the routers on the Uplink's link, other than its own addresses,
/// as a test of an address (what a Route through the Uplink accepts: one bad address, a
/// runner registered at one of this switch's own, must not fail the whole generation).
fn on_link(state: &State) -> impl Fn(IpAddr) -> bool + '_ {
    let uplink = state.uplinks.values().next();
    move |address| match (address, uplink) {
        (IpAddr::V4(address), Some(uplink)) => {
            super::routing::on_uplink_link(uplink, address)
                && !uplink
                    .spec
                    .addresses
                    .iter()
                    .any(|own| own.addr() == address)
        }
        _ => false,
    }
}

/// A runner's resources without encapsulation: the Network routed through the Uplink toward
/// the overlay, its Subnet (no VNI: nothing stretches it), a Route to the whole overlay via
/// the hub's routed address (the plan's `hubRouter`), and a Route to each other runner's
/// subnet via that runner's routed address (from the hub's list): the runner routes
/// straight to the node that holds a subnet, as Calico's BGP mode does. Routers off the
/// Uplink's link are left out (the runner cannot reach them in one hop).
fn routed_runner_resources(state: &State, overlay: &Overlay, plan: &RunnerPlan) -> Vec<Resource> {
    let owner = overlay.owner_label();
    let range = plan.hub_overlay_address.trunc();
    let on_link = on_link(state);
    let mut resources = vec![
        routed_network(&owner, range),
        subnet(
            RUNNER_SUBNET,
            &owner,
            plan.subnet,
            plan.gateway,
            overlay.spec.mtu(),
            None,
            Vec::new(),
            vec![plan.hub_address],
            None,
        ),
    ];
    if let Some(router) = plan.hub_router.filter(|router| on_link(*router)) {
        resources.push(route(HUB_ROUTE, &owner, range.into(), router));
    }
    let Some(peers) = &overlay.status.peers else {
        return resources;
    };
    if peers.address_plan.max_runners(peers.vni_base).is_err() {
        return resources;
    }
    for peer in &peers.runners {
        if peer.id == plan.runner_id || !on_link(peer.address) {
            continue;
        }
        let Ok(theirs) = peers.address_plan.runner(peer.id, peers.vni_base) else {
            continue;
        };
        if theirs.subnet.contains(&plan.subnet.network())
            || plan.subnet.contains(&theirs.subnet.network())
            || !range.contains(&theirs.subnet.network())
        {
            continue;
        }
        resources.push(runner_route(&owner, peer.id, theirs.subnet, peer.address));
    }
    resources
}

/// The hub's resources without encapsulation: the Network routed through the Uplink toward
/// the overlay, the host Subnet and interface as with VXLAN, and a Route to each runner's
/// subnet via its routed address (the address it registered with) when that is on the
/// Uplink's link.
fn routed_hub_resources(state: &State, overlay: &Overlay) -> Vec<Resource> {
    let owner = overlay.owner_label();
    let spec = &overlay.spec;
    let mut resources = hub_resources(overlay, None, &|_| false);
    if let Some(first) = resources.first_mut() {
        *first = routed_network(&owner, spec.address_plan.overlay);
    }
    let on_link = on_link(state);
    for runner in state
        .runner_pool
        .iter()
        .flat_map(vxlan::RunnerPool::runners)
    {
        if !on_link(runner.address) {
            continue;
        }
        let Ok(plan) = spec.address_plan.runner(runner.id, spec.vni_base) else {
            continue;
        };
        resources.push(runner_route(&owner, runner.id, plan.subnet, runner.address));
    }
    resources
}

/// The MAC of the hub's address in a runner's subnet (10.N.0.254): derived from the
/// runner's VNI alone, not from the hub node's id, so that every hub of the overlay
/// answers with the same one and a runner's neighbour entry for it stays right when
/// another hub, or a hub rebuilt on a new disk, takes over.
pub fn hub_gateway_mac(vni: u32) -> super::resource::MacAddr {
    super::routing::derived_gateway_mac(None, &format!("overlay-hub:{vni}"))
}

/// Host number `n` of `cidr` (0 is the network address).
fn nth_host(cidr: Ipv4Net, n: u32) -> Option<Ipv4Addr> {
    let base = u32::from(cidr.network());
    let address = Ipv4Addr::from(base.checked_add(n)?);
    cidr.contains(&address).then_some(address)
}

/// A runner's hub: the one that admitted it last (`status.hubAddress`) while it is still
/// among the configured ones, else `spec.hub.address`.
pub fn runner_hub(overlay: &Overlay) -> Option<IpAddr> {
    let hub = overlay.spec.hub.as_ref()?;
    let configured = |address: IpAddr| {
        address == hub.address || hub.alternates.iter().any(|other| other.address == address)
    };
    Some(
        overlay
            .status
            .hub_address
            .filter(|address| configured(*address))
            .unwrap_or(hub.address),
    )
}

/// The resources the Overlay in `state` wants generated (empty without one, for a mesh,
/// and for a runner the hub has not answered yet).
pub fn owned_resources(state: &State) -> Vec<Resource> {
    owned_resources_serving(state, &|_| false)
}

/// [`owned_resources`] on a hub that knows which runners another hub serves
/// (`elsewhere`, by name).
pub fn owned_resources_serving(state: &State, elsewhere: &dyn Fn(&str) -> bool) -> Vec<Resource> {
    let Some(overlay) = state.overlays.values().next() else {
        return Vec::new();
    };
    if overlay.spec.encapsulation == vxlan::Encapsulation::None {
        return match overlay.spec.role {
            OverlayRole::Mesh => Vec::new(),
            OverlayRole::Runner => match &overlay.status.plan {
                Some(plan) => routed_runner_resources(state, overlay, plan),
                None => Vec::new(),
            },
            OverlayRole::Hub => routed_hub_resources(state, overlay),
        };
    }
    match overlay.spec.role {
        OverlayRole::Mesh => Vec::new(),
        OverlayRole::Runner => match (&overlay.status.plan, runner_hub(overlay)) {
            (Some(plan), Some(hub)) => runner_resources(overlay, plan, hub),
            _ => Vec::new(),
        },
        OverlayRole::Hub => hub_resources(overlay, state.runner_pool.as_ref(), elsewhere),
    }
}

/// The generated resources in `state` owned by Overlay `owner_label` that `wanted` no longer
/// lists, as (kind, name), in deletion order (interfaces, routes, subnets, networks).
pub fn stale_owned(state: &State, wanted: &[Resource]) -> Vec<(super::resource::Kind, String)> {
    use super::resource::Kind;
    let keep = |kind: Kind, name: &str| wanted.iter().any(|r| r.kind() == kind && r.name() == name);
    let mut stale = Vec::new();
    let mut add = |kind: Kind, name: &String, metadata: &Metadata| {
        if is_owned(metadata) && !keep(kind, name) {
            stale.push((kind, name.clone()));
        }
    };
    for (name, r) in &state.network_interfaces {
        add(Kind::NetworkInterface, name, &r.metadata);
    }
    for (name, r) in &state.routes {
        add(Kind::Route, name, &r.metadata);
    }
    for (name, r) in &state.subnets {
        add(Kind::Subnet, name, &r.metadata);
    }
    for (name, r) in &state.networks {
        add(Kind::Network, name, &r.metadata);
    }
    stale
}

/// The answer of `GET /v1/overlay`, by the Overlay's role (`"role": "mesh"`, `"hub"` or
/// `"runner"` beside the role's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub enum OverlayView {
    /// A mesh node: its peers.
    Mesh(MeshView),
    /// A hub: the runners it knows.
    Hub(HubView),
    /// A runner: its ID, plan and registration state.
    Runner(RunnerView),
}

/// A mesh node's overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshView {
    /// The Overlay's name.
    pub name: String,
    /// This node's VTEP address.
    pub local_address: IpAddr,
    /// The other nodes' VTEP addresses.
    pub peers: Vec<IpAddr>,
    /// The Overlay's state.
    pub state: OverlayState,
    /// Why, when not up.
    pub message: Option<String>,
}

/// A hub's overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubView {
    /// The Overlay's name.
    pub name: String,
    /// This node's VTEP (and registration API) address.
    pub local_address: IpAddr,
    /// The hub's address in the overlay, with the overlay's prefix length.
    pub hub_address: Ipv4Net,
    /// The Overlay's state.
    pub state: OverlayState,
    /// Why, when not up.
    pub message: Option<String>,
    /// How runners reach each other.
    #[serde(default)]
    pub runner_to_runner: RunnerToRunner,
    /// How frames cross the underlay (`VXLAN` when absent).
    #[serde(default, skip_serializing_if = "vxlan::Encapsulation::is_vxlan")]
    pub encapsulation: vxlan::Encapsulation,
    /// Without encapsulation: the switch's routed address on the underlay link (where the
    /// runners route the hub's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_address: Option<Ipv4Addr>,
    /// How the registration API is served.
    #[serde(default)]
    pub tls: HubTlsView,
    /// The shared store of the runners (`None`: the hub's state directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreView>,
    /// The runners of the pool, by ID.
    pub runners: Vec<HubRunner>,
}

/// A hub's shared store (`spec.store.etcd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreView {
    /// The etcd endpoints.
    pub etcd: Vec<String>,
    /// The overlay's key prefix.
    pub prefix: String,
    /// Whether the store has been read and registrations are committed to it.
    pub ready: bool,
    /// Why it cannot be used, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a hub serves its registration API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubTlsView {
    /// TLS on (`false`: plain HTTP, `spec.tls.mode: Disabled`).
    pub enabled: bool,
    /// The SHA-256 fingerprint of the certificate served, for runners to pin (`None` until
    /// the API serves, or without TLS).
    pub fingerprint: Option<String>,
    /// Whether the certificate is the hub's own self-signed one (no `spec.tls.certificateFile`).
    pub generated: bool,
}

impl Default for HubTlsView {
    /// What a view without the field (from an older daemon) means: TLS, fingerprint unknown.
    fn default() -> HubTlsView {
        HubTlsView {
            enabled: true,
            fingerprint: None,
            generated: true,
        }
    }
}

/// How a runner trusts its hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunnerTls {
    /// TLS, the hub's certificate pinned by fingerprint.
    Fingerprint,
    /// TLS, the hub's certificate checked against a CA file.
    CaFile,
    /// Plain HTTP: the token crosses the underlay in clear.
    Disabled,
}

/// A runner as the hub knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRunner {
    /// Its runner ID.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its VTEP address.
    pub address: IpAddr,
    /// Its VNI (`None` when the address plan has no room for its ID).
    pub vni: Option<u32>,
    /// Its subnet (`None` like `vni`).
    pub subnet: Option<Ipv4Net>,
    /// Its IPv6 /64, when the plan has IPv6 inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// Seconds since it registered or sent a heartbeat.
    pub last_seen_seconds_ago: u64,
    /// Online or offline.
    pub state: RunnerState,
    /// With a shared store: the hub serving it now (its `localAddress`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
}

/// A runner's overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerView {
    /// The Overlay's name (the runner's name at the hub).
    pub name: String,
    /// This node's VTEP address.
    pub local_address: IpAddr,
    /// The runner ID the hub gave (`None` until it registered).
    pub id: Option<u32>,
    /// Its VNI.
    pub vni: Option<u32>,
    /// Its subnet.
    pub subnet: Option<Ipv4Net>,
    /// The subnet's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Its IPv6 /64, when the hub's plan has IPv6 inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// The hub's registration API.
    pub hub: Option<SocketAddr>,
    /// How it trusts the hub's registration API.
    #[serde(default)]
    pub tls: Option<RunnerTls>,
    /// The Overlay's state.
    pub state: OverlayState,
    /// Why, when not registered.
    pub message: Option<String>,
    /// When the hub last answered (seconds since the Unix epoch).
    pub last_contact: Option<u64>,
    /// How many other runners it reaches directly (`None`: all through the hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_peers: Option<usize>,
    /// How frames cross the underlay (`VXLAN` when absent).
    #[serde(default, skip_serializing_if = "vxlan::Encapsulation::is_vxlan")]
    pub encapsulation: vxlan::Encapsulation,
    /// Without encapsulation: the switch's routed address on the underlay link (where the
    /// hub and the other runners route this runner's subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_address: Option<Ipv4Addr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testing::{overlay_of, state_with};

    #[test]
    fn a_runner_generates_its_subnet_and_route_from_the_plan() {
        let mut o = overlay_of(OverlayRole::Runner);
        assert!(
            owned_resources(&state_with(o.clone())).is_empty(),
            "no plan yet"
        );
        let plan = vxlan::AddressPlan::default()
            .runner(vxlan::RunnerId::try_from(3).unwrap(), 100)
            .unwrap();
        o.status.plan = Some(Box::new(plan));
        let resources = owned_resources(&state_with(o));
        let Resource::Subnet(subnet) = &resources[1] else {
            panic!("{resources:?}")
        };
        assert_eq!(subnet.spec.cidr.to_string(), "10.3.0.0/16");
        assert_eq!(subnet.spec.gateway.to_string(), "10.3.0.1");
        assert_eq!(subnet.spec.vni, Some(103));
        assert_eq!(
            subnet.spec.remote_vteps,
            vec![Ipv4Addr::new(192, 168, 50, 1)]
        );
        assert_eq!(subnet.spec.reserved, vec![Ipv4Addr::new(10, 3, 0, 254)]);
        let Resource::Route(route) = &resources[2] else {
            panic!("{resources:?}")
        };
        assert_eq!(route.spec.destination.to_string(), "10.0.0.0/8");
        assert_eq!(route.spec.next_hop.to_string(), "10.3.0.254");
    }

    /// With the hub's runner list (`spec.runnerToRunner: Direct`), a runner holds a copy of
    /// every other runner's subnet: its own ID, its own address and the other family are
    /// left out; the copy tunnels to that runner alone and shares the hub's gateway address.
    #[test]
    fn a_runner_following_the_hubs_list_copies_the_other_runners_subnets() {
        let mut o = overlay_of(OverlayRole::Runner);
        let own = vxlan::AddressPlan::default()
            .runner(vxlan::RunnerId::try_from(3).unwrap(), 100)
            .unwrap();
        o.status.plan = Some(Box::new(own));
        let mut pool = vxlan::RunnerPool::default();
        for (name, address) in [
            ("a", "192.168.50.7"),
            ("b", "fd00::7"),
            ("me", "192.168.50.2"),
            ("c", "192.168.50.9"),
        ] {
            pool.register(name, address.parse().unwrap(), 1).unwrap();
        }
        let peers = pool.peers(&vxlan::AddressPlan::default(), 100);
        o.status.peers = Some(Box::new(peers));
        let resources = owned_resources(&state_with(o));
        let copies: Vec<&Subnet> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Subnet(s) if s.metadata.name != RUNNER_SUBNET => Some(s),
                _ => None,
            })
            .collect();
        let names: Vec<&str> = copies.iter().map(|s| s.metadata.name.as_str()).collect();
        // IDs 1 (a), 2 (b, IPv6), 3 (me, this runner's ID), 4 (c).
        assert_eq!(names, ["overlay-r1", "overlay-r4"]);
        let r4 = copies[1];
        assert_eq!(r4.spec.cidr.to_string(), "10.4.0.0/16");
        assert_eq!(r4.spec.gateway.to_string(), "10.4.0.254");
        assert_eq!(r4.spec.vni, Some(104));
        assert_eq!(
            r4.spec.remote_vteps,
            vec!["192.168.50.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(r4.spec.reserved, vec![Ipv4Addr::new(10, 4, 0, 1)]);
        assert!(r4.spec.shared_gateway);
        assert!(is_owned(&r4.metadata));
    }

    /// An Uplink `wan` on 192.168.50.0/24 owning .11, beside `overlay` (without
    /// encapsulation, runner-to-runner Direct).
    fn routed_state(mut overlay: Overlay) -> State {
        overlay.spec.encapsulation = vxlan::Encapsulation::None;
        let mut state = crate::control::testing::apply(
            &State::default(),
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata: {name: wan}\nspec: \
             {interface: eth9, addresses: [192.168.50.11/24], gateway: 192.168.50.254}\n",
        );
        state
            .overlays
            .insert(overlay.metadata.name.clone(), overlay);
        state
    }

    /// Without encapsulation a runner's Subnet has no VNI, its Network is routed through
    /// the Uplink toward the overlay, and Routes lead to the hub's routed address and to
    /// each other runner's (those on the Uplink's link; itself and the rest left out).
    #[test]
    fn without_encapsulation_a_runner_routes_to_the_hub_and_the_other_runners() {
        let mut o = overlay_of(OverlayRole::Runner);
        let mut own = vxlan::AddressPlan::default()
            .runner(vxlan::RunnerId::try_from(3).unwrap(), 100)
            .unwrap();
        own.hub_router = Some("192.168.50.10".parse().unwrap());
        o.status.plan = Some(Box::new(own));
        let mut pool = vxlan::RunnerPool::default();
        for (name, address) in [
            ("a", "192.168.50.17"),
            ("off-link", "192.168.60.7"),
            ("me", "192.168.50.11"),
            ("c", "192.168.50.19"),
        ] {
            pool.register(name, address.parse().unwrap(), 1).unwrap();
        }
        o.status.peers = Some(Box::new(pool.peers(&vxlan::AddressPlan::default(), 100)));
        let resources = owned_resources(&routed_state(o));
        let Resource::Network(network) = &resources[0] else {
            panic!("{resources:?}")
        };
        assert!(network.spec.is_routed());
        let Resource::Subnet(subnet) = &resources[1] else {
            panic!("{resources:?}")
        };
        assert_eq!(subnet.spec.cidr.to_string(), "10.3.0.0/16");
        assert_eq!((subnet.spec.vni, subnet.spec.mtu), (None, 1500));
        assert!(subnet.spec.remote_vteps.is_empty());
        let routes: Vec<(String, String, String)> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Route(route) => Some((
                    route.metadata.name.clone(),
                    route.spec.destination.to_string(),
                    route.spec.next_hop.to_string(),
                )),
                _ => None,
            })
            .collect();
        let want = [
            ("overlay-hub", "10.0.0.0/8", "192.168.50.10"),
            ("overlay-r1", "10.1.0.0/16", "192.168.50.17"),
            ("overlay-r4", "10.4.0.0/16", "192.168.50.19"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
            .collect();
        assert_eq!(routes, want);
        assert_eq!(resources.len(), 5, "no Subnet copies: {resources:?}");
    }

    /// Without encapsulation the hub routes each runner's subnet to the runner's routed
    /// address, keeping its host Subnet and interface.
    #[test]
    fn without_encapsulation_a_hub_routes_each_runners_subnet() {
        let mut hub = overlay_of(OverlayRole::Hub);
        hub.spec.runner_to_runner = RunnerToRunner::Direct;
        let mut state = routed_state(hub);
        let mut pool = vxlan::RunnerPool::default();
        pool.register("r1", "192.168.50.12".parse().unwrap(), 1)
            .unwrap();
        pool.register("far", "10.200.0.1".parse().unwrap(), 1)
            .unwrap();
        // At the hub's own routed address: no Route (it would fail the whole generation).
        pool.register("squatter", "192.168.50.11".parse().unwrap(), 1)
            .unwrap();
        state.runner_pool = Some(pool);
        let resources = owned_resources(&state);
        let names: Vec<(crate::control::resource::Kind, &str)> =
            resources.iter().map(|r| (r.kind(), r.name())).collect();
        use crate::control::resource::Kind;
        assert_eq!(
            names,
            [
                (Kind::Network, "overlay"),
                (Kind::Subnet, "overlay-host"),
                (Kind::NetworkInterface, "overlay-host"),
                (Kind::Route, "overlay-r1"),
            ],
            "runner far is off the Uplink's link, squatter at the hub's own address"
        );
        let Resource::Route(route) = &resources[3] else {
            panic!()
        };
        assert_eq!(route.spec.destination.to_string(), "10.1.0.0/16");
        assert_eq!(route.spec.next_hop.to_string(), "192.168.50.12");
        assert_eq!(
            routed_address(&state, "192.168.50.1".parse().unwrap()),
            Some(Ipv4Addr::new(192, 168, 50, 11))
        );
        assert_eq!(
            routed_address(&state, "192.168.60.1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn a_hub_generates_its_host_port_and_a_subnet_per_runner() {
        let o = overlay_of(OverlayRole::Hub);
        let mut state = state_with(o);
        let mut pool = vxlan::RunnerPool::default();
        pool.register("r1", "192.168.50.2".parse().unwrap(), 1)
            .unwrap();
        state.runner_pool = Some(pool);
        let resources = owned_resources(&state);
        let names: Vec<&str> = resources.iter().map(Resource::name).collect();
        assert_eq!(
            names,
            ["overlay", "overlay-host", "overlay-host", "overlay-r1"]
        );
        let Resource::Subnet(host) = &resources[1] else {
            panic!()
        };
        assert_eq!(host.spec.cidr.to_string(), "10.0.0.0/16");
        let Resource::NetworkInterface(nic) = &resources[2] else {
            panic!()
        };
        assert_eq!(nic.spec.ips[0].addr.to_string(), "10.0.0.1");
        assert!(!nic.spec.default_route);
        assert_eq!(nic.spec.routes[0].to_string(), "10.0.0.0/8");
        let Resource::Subnet(r1) = &resources[3] else {
            panic!()
        };
        assert_eq!(r1.spec.gateway.to_string(), "10.1.0.254");
        assert_eq!(r1.spec.vni, Some(101));
        assert_eq!(r1.spec.gateway_mac, Some(hub_gateway_mac(101)));
        assert!(!r1.spec.shared_gateway);
        // Served by another hub of the store: this hub's own MAC, the address shared.
        let resources = owned_resources_serving(&state, &|name| name == "r1");
        let Resource::Subnet(r1) = &resources[3] else {
            panic!()
        };
        assert_eq!(r1.spec.gateway_mac, None);
        assert!(r1.spec.shared_gateway);
    }

    #[test]
    fn registrations_from_unusable_addresses_are_named() {
        let v4: IpAddr = "192.168.50.1".parse().unwrap();
        let v6: IpAddr = "fd00:50::1".parse().unwrap();
        assert_eq!(
            registration_problem("192.168.50.2".parse().unwrap(), v4),
            None
        );
        assert_eq!(
            registration_problem("fd00:50::2".parse().unwrap(), v6),
            None
        );
        for (address, local, why) in [
            ("fd00:50::2", v4, "IPv4"),
            ("192.168.50.2", v6, "IPv6"),
            ("fe80::2", v6, "link-local"),
            ("::ffff:192.168.50.2", v6, "IPv4-mapped"),
        ] {
            let problem = registration_problem(address.parse().unwrap(), local)
                .unwrap_or_else(|| panic!("{address} accepted"));
            assert!(
                problem.contains(address) && problem.contains(why),
                "{problem}"
            );
        }
    }

    /// With IPv6 inside (`addressPlan.ipv6`): the runner's Subnet gets its /64 (gateway ::1,
    /// the hub's ::fe reserved) and a Route to the whole range via the hub; the hub's copies
    /// own ::fe and stay silent (no router advertisements: the runner's switch is the
    /// segment's router), and its host interface gets the hub's overlay-wide IPv6 address
    /// with a route to the range.
    #[test]
    fn an_ipv6_plan_makes_the_generated_subnets_dual_stack() {
        let plan6 = vxlan::AddressPlan {
            ipv6: Some(vxlan::AddressPlan6 {
                overlay: "fd00:10::/48".parse().unwrap(),
                hub_address: None,
            }),
            ..vxlan::AddressPlan::default()
        };
        let mut runner = overlay_of(OverlayRole::Runner);
        runner.status.plan = Some(Box::new(
            plan6
                .runner(vxlan::RunnerId::try_from(3).unwrap(), 100)
                .unwrap(),
        ));
        let resources = owned_resources(&state_with(runner));
        let Resource::Subnet(subnet) = &resources[1] else {
            panic!("{resources:?}")
        };
        let six = subnet.spec.ipv6.as_ref().expect("dual stack");
        assert_eq!(six.cidr.to_string(), "fd00:10:0:3::/64");
        assert_eq!(six.gateway().to_string(), "fd00:10:0:3::1");
        assert_eq!(
            six.reserved,
            vec!["fd00:10:0:3::fe".parse::<Ipv6Addr>().unwrap()]
        );
        assert!(six.router_advertisements);
        let Resource::Route(route) = &resources[3] else {
            panic!("{resources:?}")
        };
        assert_eq!(route.metadata.name, HUB_ROUTE6);
        assert_eq!(route.spec.destination.to_string(), "fd00:10::/48");
        assert_eq!(route.spec.next_hop.to_string(), "fd00:10:0:3::fe");

        let mut hub = overlay_of(OverlayRole::Hub);
        hub.spec.address_plan = plan6;
        let mut state = state_with(hub);
        let mut pool = vxlan::RunnerPool::default();
        pool.register("r1", "192.168.50.2".parse().unwrap(), 1)
            .unwrap();
        state.runner_pool = Some(pool);
        let resources = owned_resources(&state);
        let Resource::Subnet(host) = &resources[1] else {
            panic!()
        };
        let host6 = host.spec.ipv6.as_ref().expect("the host /64");
        assert_eq!(host6.cidr.to_string(), "fd00:10::/64");
        assert_eq!(host6.gateway().to_string(), "fd00:10::fe");
        let Resource::NetworkInterface(nic) = &resources[2] else {
            panic!()
        };
        assert_eq!(nic.spec.ipv6, Some("fd00:10::1".parse().unwrap()));
        assert_eq!(nic.spec.routes[1].to_string(), "fd00:10::/48");
        let Resource::Subnet(r1) = &resources[3] else {
            panic!()
        };
        let r16 = r1.spec.ipv6.as_ref().expect("dual stack");
        assert_eq!(r16.gateway().to_string(), "fd00:10:0:1::fe");
        assert_eq!(
            r16.reserved,
            vec!["fd00:10:0:1::1".parse::<Ipv6Addr>().unwrap()]
        );
        assert!(!r16.router_advertisements, "the hub's copy stays silent");
    }
}
