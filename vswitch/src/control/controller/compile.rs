//! The engine's snapshot of the state: ids for new Subnets, Networks and tunnels, every
//! Subnet, Network routing table, opened port, the Uplink, the VTEP and the NAT rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::Inner;
use super::ids::IdPool;
use crate::control::resource::{InboundProtocol, InterfaceState, Uplink};
use crate::control::store::State;
use crate::control::{nat_rules, overlay, routing};
use crate::port::PortId;
use crate::runtime::Engine;
use crate::tables::snapshot::{Egress, Tunnel};
use crate::tables::snapshot::{
    InboundFilter, InboundRule, RoutedNetwork, UplinkEntry, UplinkRouting,
};
use crate::tables::snapshot::{
    NetworkEntry, NetworkId, NextHop, PortEntry, RouteEntry, RouteEntry6, Snapshot, Subnet6,
    SubnetEntry, SubnetId,
};

/// Assigns ids to new Subnets and Networks and frees those of deleted ones, then compiles
/// and publishes the snapshot.
pub(super) fn publish(engine: &Engine, inner: &mut Inner) {
    sync_ids(
        &mut inner.subnet_ids,
        &mut inner.subnet_id_pool,
        inner.state.subnets.keys(),
        SubnetId,
        |id| id.0,
    );
    sync_ids(
        &mut inner.network_ids,
        &mut inner.network_id_pool,
        inner.state.networks.keys(),
        NetworkId,
        |id| id.0,
    );
    sync_tunnel_ids(engine, inner);
    sync_vlan_ids(engine, inner);
    sync_trunk_ids(engine, inner);
    sync_uplink_trunk(inner);
    let now = inner.clock.now_ms() / 1000;
    inner.balancers.sync(&inner.state, &inner.ports, now);
    let rules = nat_rules::compile(&inner.state, &inner.network_ids);
    // The same table in every snapshot of the run: connections survive reconfiguration.
    let current = engine.current();
    let conntrack = Arc::clone(&current.conntrack);
    let policy = super::policies::compile(inner, current.policy.as_ref());
    engine.publish(
        compile(inner)
            .with_nat(Arc::new(rules), conntrack)
            .with_policy(policy),
    );
}

/// Makes `ids` hold exactly the names in `names`: ids of names that are gone go back to
/// `pool`, new names get one from it (dense ids, reused after deletes).
fn sync_ids<'a, Id: Copy>(
    ids: &mut BTreeMap<String, Id>,
    pool: &mut IdPool,
    names: impl Iterator<Item = &'a String> + Clone,
    make: fn(u32) -> Id,
    raw: fn(Id) -> u32,
) {
    let wanted: std::collections::BTreeSet<&String> = names.collect();
    ids.retain(|name, id| {
        let keep = wanted.contains(name);
        if !keep {
            pool.release(raw(*id));
        }
        keep
    });
    for name in wanted {
        if !ids.contains_key(name) {
            if let Some(id) = pool.allocate() {
                ids.insert(name.clone(), make(id));
            }
        }
    }
}

/// The IPv6 sources a port may use (see [`PortEntry::ips6`]): its address, its EUI-64
/// link-local address, and its SLAAC address when the Subnet advertises SLAAC.
fn port_ips6(
    nic: &crate::control::kinds::network_interface::NetworkInterface,
    subnet: &crate::control::resource::SubnetSpec,
    mac: [u8; 6],
) -> Vec<std::net::Ipv6Addr> {
    use crate::wire::ipv6;
    let mut ips6 = vec![ipv6::link_local_from_mac(mac)];
    ips6.extend(nic.status.ipv6.map(|ip| ip.addr()));
    if let Some(v6) = subnet.ipv6.as_ref().filter(|v6| v6.slaac) {
        ips6.push(ipv6::slaac_address(v6.cidr.network(), mac));
    }
    ips6
}

/// A Network's routing tables as the workers use them: its table of `tables` split by family,
/// names turned into ids.
fn routes(
    inner: &Inner,
    tables: &routing::Tables,
    network: &str,
) -> (Vec<RouteEntry>, Vec<RouteEntry6>) {
    let (mut routes, mut routes6) = (Vec::new(), Vec::new());
    for route in tables.table(network).iter().cloned() {
        let Some(&subnet) = inner.subnet_ids.get(&route.subnet) else {
            continue;
        };
        let origin = route.origin;
        // Validation keeps a Route's next hop in its destination's family: a mix is skipped.
        match (route.prefix, route.next_hop) {
            (IpNet::V4(prefix), hop) => {
                let next_hop = match hop {
                    NextHop::Direct => NextHop::Direct,
                    NextHop::Via(IpAddr::V4(router)) => NextHop::Via(router),
                    NextHop::Via(IpAddr::V6(_)) => continue,
                };
                routes.push(RouteEntry {
                    prefix,
                    subnet,
                    next_hop,
                    origin,
                });
            }
            (IpNet::V6(prefix), hop) => {
                let next_hop = match hop {
                    NextHop::Direct => NextHop::Direct,
                    NextHop::Via(IpAddr::V6(router)) => NextHop::Via(router),
                    NextHop::Via(IpAddr::V4(_)) => continue,
                };
                routes6.push(RouteEntry6 {
                    prefix,
                    subnet,
                    next_hop,
                    origin,
                });
            }
        }
    }
    (routes, routes6)
}

/// The snapshot of the current state: every Subnet, and every opened port.
fn compile(inner: &Inner) -> Snapshot {
    let state = &inner.state;
    let tables = routing::Tables::of(state);
    let mut ports = Vec::with_capacity(inner.ports.len());
    let mut floods: BTreeMap<&str, Vec<PortId>> = BTreeMap::new();
    for (name, port) in &inner.ports {
        let Some(nic) = state.network_interfaces.get(name) else {
            continue;
        };
        let (Some(subnet), Some(subnet_id), Some(mac)) = (
            state.subnets.get(&nic.spec.subnet),
            inner.subnet_ids.get(&nic.spec.subnet),
            nic.status.mac,
        ) else {
            continue;
        };
        if nic.status.state != InterfaceState::Up {
            continue;
        }
        let ips: Vec<Ipv4Addr> = nic.status.ips.iter().map(|ip| ip.addr()).collect();
        let ips6 = port_ips6(nic, &subnet.spec, mac.0);
        let routed = |ip: IpAddr| tables.routed_sources(&nic.spec.subnet, ip).iter().copied();
        let allowed_sources = ips
            .iter()
            .flat_map(|ip| routed(IpAddr::V4(*ip)))
            .filter_map(|net| match net {
                IpNet::V4(net) => Some(net),
                IpNet::V6(_) => None,
            })
            .collect();
        let allowed_sources6 = ips6
            .iter()
            .filter(|ip| !crate::wire::ipv6::is_link_local(**ip))
            .flat_map(|ip| routed(IpAddr::V6(*ip)))
            .filter_map(|net| match net {
                IpNet::V6(net) => Some(net),
                IpNet::V4(_) => None,
            })
            .collect();
        ports.push(PortEntry {
            id: port.id,
            name: name.clone(),
            subnet: *subnet_id,
            mac: mac.0,
            ips,
            mtu: overlay::interface_mtu(state, nic, subnet),
            allowed_sources,
            allowed_sources6,
            ips6,
            proxy_arp: false,
            egress: Egress::Queue(Arc::clone(&port.io)),
        });
        floods
            .entry(nic.spec.subnet.as_str())
            .or_default()
            .push(port.id);
    }
    // Each stretched Subnet's tunnel: a port that sends through the VTEP.
    let mut tunnels = std::collections::HashMap::new();
    let overlay = state.overlays.values().next();
    if let (Some(_), Some(overlay)) = (&inner.vtep, overlay) {
        for (name, id) in &inner.tunnel_ids {
            let (Some(subnet), Some(subnet_id)) =
                (state.subnets.get(name), inner.subnet_ids.get(name))
            else {
                continue;
            };
            let Some(vni) = subnet.spec.vni.and_then(vxlan::Vni::new) else {
                continue;
            };
            let remotes = if subnet.spec.remote_vteps.is_empty() {
                overlay.spec.peers.clone()
            } else {
                subnet.spec.remote_vteps.clone()
            };
            let mtu = overlay::subnet_mtu(state, subnet);
            ports.push(PortEntry {
                id: *id,
                name: format!("vxlan/{name}"),
                subnet: *subnet_id,
                mac: [0; 6],
                ips: Vec::new(),
                mtu,
                allowed_sources: Vec::new(),
                allowed_sources6: Vec::new(),
                ips6: Vec::new(),
                proxy_arp: false,
                egress: Egress::Tunnel(Tunnel { vni, remotes, mtu }),
            });
            floods.entry(name.as_str()).or_default().push(*id);
            tunnels.insert(u32::from(vni), *id);
        }
    }
    // Each VLAN of a trunk NetworkInterface: a port on that VLAN's Subnet whose frames
    // leave the interface's device tagged.
    let mut trunks: std::collections::HashMap<PortId, Vec<(u16, PortId)>> =
        std::collections::HashMap::new();
    for ((name, vlan), id) in &inner.trunk_ids {
        let (Some(port), Some(nic)) = (inner.ports.get(name), state.network_interfaces.get(name))
        else {
            continue;
        };
        let Some((subnet_name, subnet)) = state
            .subnets
            .iter()
            .find(|(_, s)| s.spec.vlan == Some(*vlan))
        else {
            continue;
        };
        let (Some(subnet_id), Some(mac)) = (inner.subnet_ids.get(subnet_name), nic.status.mac)
        else {
            continue;
        };
        if nic.status.state != InterfaceState::Up {
            continue;
        }
        ports.push(PortEntry {
            id: *id,
            name: format!("{name}.{vlan}"),
            subnet: *subnet_id,
            mac: mac.0,
            ips: Vec::new(),
            mtu: subnet.spec.mtu,
            // The container addresses itself on the VLAN: any source of the Subnet's.
            allowed_sources: vec![subnet.spec.cidr],
            allowed_sources6: Vec::new(),
            ips6: Vec::new(),
            proxy_arp: false,
            egress: Egress::Tagged {
                io: Arc::clone(&port.io),
                vlan: *vlan,
            },
        });
        floods.entry(subnet_name.as_str()).or_default().push(*id);
        trunks.entry(port.id).or_default().push((*vlan, *id));
    }
    // Each Subnet bound to a VLAN of the uplink: a port whose frames leave the uplink
    // tagged, where the uplink's tagged frames of that VLAN come in.
    let mut vlans = std::collections::HashMap::new();
    if let Some(open) = &inner.uplink {
        for ((name, vlan), id) in &inner.vlan_ids {
            let (Some(subnet), Some(subnet_id)) =
                (state.subnets.get(name), inner.subnet_ids.get(name))
            else {
                continue;
            };
            let vlan = *vlan;
            if subnet.spec.vlan != Some(vlan) {
                continue;
            }
            ports.push(PortEntry {
                id: *id,
                name: format!("{}.{vlan}", open.name),
                subnet: *subnet_id,
                mac: [0; 6],
                ips: Vec::new(),
                // AF_PACKET sends 4 bytes over the MTU for an 802.1Q tag only.
                mtu: subnet
                    .spec
                    .mtu
                    .min(if open.io.tpid == crate::pipeline::tx::TPID_8021Q {
                        open.mtu
                    } else {
                        open.mtu.saturating_sub(4)
                    }),
                allowed_sources: Vec::new(),
                allowed_sources6: Vec::new(),
                ips6: Vec::new(),
                proxy_arp: false,
                egress: Egress::Uplink {
                    io: Arc::clone(&open.io),
                    vlan: Some(vlan),
                },
            });
            floods.entry(name.as_str()).or_default().push(*id);
            vlans.insert(vlan, *id);
        }
    }
    let vtep = match (&inner.vtep, overlay) {
        (Some(vtep), Some(overlay)) => Some(crate::tables::snapshot::VtepEntry {
            id: vtep.id,
            local: vtep.local,
            encap: overlay::encap_config(overlay),
            io: Arc::clone(&vtep.io),
            tunnels,
        }),
        _ => None,
    };
    let network_ids = &inner.network_ids;
    let subnets = state
        .subnets
        .iter()
        .filter_map(|(name, subnet)| {
            let id = *inner.subnet_ids.get(name)?;
            let network_id = *network_ids.get(subnet.spec.network.as_str())?;
            let mut flood = floods.remove(name.as_str()).unwrap_or_default();
            flood.sort();
            Some(SubnetEntry {
                id,
                name: name.clone(),
                network: subnet.spec.network.clone(),
                network_id,
                cidr: subnet.spec.cidr,
                gateway: subnet.spec.gateway,
                gateway_mac: routing::gateway_mac(state, subnet).0,
                shared_gateway: subnet.spec.shared_gateway,
                mtu: overlay::subnet_mtu(state, subnet),
                ports: flood,
                mac_ageing: Duration::from_secs(subnet.spec.mac_ageing_seconds),
                mac_limit: subnet.spec.mac_table_limit,
                dhcp: dhcp_server(subnet),
                v6: subnet.spec.ipv6.as_ref().map(|v6| {
                    Subnet6::new(
                        v6.cidr,
                        v6.gateway(),
                        routing::gateway_mac(state, subnet).0,
                        v6.router_advertisements,
                        v6.slaac,
                    )
                }),
            })
        })
        .collect();
    let networks = state
        .networks
        .keys()
        .filter_map(|name| {
            let id = *network_ids.get(name)?;
            let (routes, routes6) = routes(inner, &tables, name);
            Some(NetworkEntry::new(id, name.clone(), routes).with_routes6(routes6))
        })
        .collect();
    let uplink = inner.uplink.as_ref().and_then(|open| {
        let uplink = state.uplinks.get(&open.name)?;
        Some(UplinkEntry {
            id: open.id,
            name: open.name.clone(),
            ifname: uplink.spec.interface.clone(),
            mac: nat_rules::uplink_mac(state, uplink).0,
            addresses: uplink.spec.addresses.iter().map(|a| a.0).collect(),
            gateway: uplink.spec.gateway,
            mtu: open.mtu,
            segment: open.segment,
            io: Arc::clone(&open.io),
            routing: uplink_routing(state, network_ids, uplink),
            vlans,
            ipv6: uplink.spec.ipv6.as_ref().map(|v6| {
                let mac = nat_rules::uplink_mac(state, uplink).0;
                crate::tables::snapshot::UplinkIpv6Entry {
                    addresses: v6.addresses.iter().map(|a| a.0).collect(),
                    gateway: v6.gateway,
                    link_local: crate::wire::ipv6::link_local_from_mac(mac),
                }
            }),
        })
    });
    let (balancers, backends) = inner.balancers.compile(state, network_ids);
    Snapshot::new(ports, subnets)
        .with_networks(networks)
        .with_uplink(uplink)
        .with_vtep(vtep)
        .with_balancers(balancers, &backends)
        .with_trunks(trunks)
        .with_probes(inner.balancers.board())
}

/// The Networks routed through the Uplink (with their Subnets' prefixes and destinations)
/// and its inbound filter, as the `uplink` stage uses them.
fn uplink_routing(
    state: &State,
    network_ids: &BTreeMap<String, NetworkId>,
    uplink: &Uplink,
) -> UplinkRouting {
    let networks = state
        .networks
        .iter()
        .filter(|(_, network)| network.spec.is_routed())
        .filter_map(|(name, network)| {
            let id = *network_ids.get(name)?;
            let destinations = network
                .spec
                .uplink
                .iter()
                .flat_map(|uplink| uplink.destinations.iter().map(|d| d.0))
                .collect();
            let cidrs = routing::subnets_of(state, name)
                .into_iter()
                .map(|subnet| subnet.spec.cidr)
                .collect();
            Some((RoutedNetwork { id, destinations }, cidrs))
        })
        .collect();
    // Routes of routed Networks through routers on the Uplink's link.
    let mut through: BTreeMap<NetworkId, Vec<(ipnet::Ipv4Net, std::net::Ipv4Addr, String)>> =
        BTreeMap::new();
    for route in state.routes.values() {
        let spec = &route.spec;
        let (ipnet::IpNet::V4(prefix), std::net::IpAddr::V4(hop)) =
            (spec.destination, spec.next_hop)
        else {
            continue;
        };
        let Some(id) = network_ids.get(&spec.network) else {
            continue;
        };
        let routed = state
            .networks
            .get(&spec.network)
            .is_some_and(|network| network.spec.is_routed());
        if routed
            && routing::egress_subnet(state, &spec.network, spec.next_hop).is_none()
            && routing::uplink_egress(state, &spec.network, spec.next_hop).is_ok()
        {
            through
                .entry(*id)
                .or_default()
                .push((prefix, hop, route.metadata.name.clone()));
        }
    }
    let filter = uplink
        .spec
        .inbound
        .as_ref()
        .filter(|inbound| inbound.filters())
        .map(|inbound| InboundFilter {
            allow: inbound
                .allow
                .iter()
                .map(|allow| InboundRule {
                    protocol: match allow.protocol {
                        InboundProtocol::Tcp => nat::Protocol::Tcp,
                        InboundProtocol::Udp => nat::Protocol::Udp,
                        InboundProtocol::Icmp => nat::Protocol::Icmp,
                    },
                    ports: allow
                        .port
                        .map(|port| (port, allow.end_port.unwrap_or(port))),
                })
                .collect(),
        });
    through.into_iter().fold(
        UplinkRouting::new(networks, filter),
        |routing, (id, routes)| routing.with_routes(id, routes),
    )
}

/// Gives every Subnet with a VLAN a port id while the Uplink is open (ids of VLANs that
/// went are freed; new ones start with clean counters).
fn sync_vlan_ids(engine: &Engine, inner: &mut Inner) {
    // Keyed by the VLAN too: a Subnet that moves to another VLAN gets a new port (its
    // learned MACs, of the old VLAN, are forgotten with the old id).
    let wanted: BTreeSet<(String, u16)> = if inner.uplink.is_some() {
        inner
            .state
            .subnets
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.spec.vlan?)))
            .collect()
    } else {
        BTreeSet::new()
    };
    let Inner {
        vlan_ids, port_ids, ..
    } = inner;
    sync_port_ids(engine, vlan_ids, port_ids, wanted, "a Subnet's VLAN");
}

/// Gives every VLAN of every trunk NetworkInterface with a device a port id (ids of VLANs
/// that went are freed; new ones start with clean counters).
fn sync_trunk_ids(engine: &Engine, inner: &mut Inner) {
    let wanted: BTreeSet<(String, u16)> = inner
        .state
        .network_interfaces
        .iter()
        .filter(|(name, _)| inner.ports.contains_key(*name))
        .flat_map(|(name, nic)| nic.spec.trunk.iter().map(|vlan| (name.clone(), *vlan)))
        .collect();
    let Inner {
        trunk_ids,
        port_ids,
        ..
    } = inner;
    sync_port_ids(engine, trunk_ids, port_ids, wanted, "a trunk's VLAN");
}

/// Makes the Uplink's members VLAN trunks while a Subnet is bound to a VLAN (and plain
/// uplinks again when none is), and keeps what a bond's failover announces current.
fn sync_uplink_trunk(inner: &mut Inner) {
    let trunk = inner.state.subnets.values().any(|s| s.spec.vlan.is_some());
    let announce = inner
        .uplink
        .as_ref()
        .and_then(|open| inner.state.uplinks.get(&open.name))
        .map(|uplink| {
            (
                announcements(&inner.state, uplink),
                nat_rules::uplink_mac(&inner.state, uplink).0,
            )
        });
    let Some(open) = inner.uplink.as_mut() else {
        return;
    };
    if let (Some(monitor), Some((announce, _))) = (&open.monitor, &announce) {
        let mut current = monitor.shared.announce.lock();
        if *current != *announce {
            current.clone_from(announce);
        }
    }
    if open.trunk == trunk {
        return;
    }
    let Some((_, mac)) = announce else {
        return;
    };
    for member in &open.io.members {
        if let Err(error) = crate::port::uplink::set_trunk(&member.io, member.ifindex, mac, trunk) {
            tracing::error!(uplink = %open.name, interface = %member.ifname, %error, trunk, "cannot change the uplink's VLAN trunk state");
        }
    }
    open.trunk = trunk;
}

/// What a bond's new active member announces: the uplink's addresses, and each VLAN
/// Subnet's gateway on its VLAN.
pub(super) fn announcements(state: &State, uplink: &Uplink) -> crate::port::bond::Announcements {
    use crate::wire::ipv6::link_local_from_mac;
    let uplink_mac = nat_rules::uplink_mac(state, uplink).0;
    let addresses6 = uplink
        .spec
        .ipv6
        .iter()
        .flat_map(|v6| v6.addresses.iter().map(|a| a.addr()))
        .chain(
            uplink
                .spec
                .ipv6
                .is_some()
                .then(|| link_local_from_mac(uplink_mac)),
        )
        .collect();
    let vlan_subnets = || {
        state
            .subnets
            .values()
            .filter_map(|subnet| Some((subnet.spec.vlan?, subnet)))
    };
    crate::port::bond::Announcements {
        addresses: uplink.spec.addresses.iter().map(|a| a.addr()).collect(),
        gateways: vlan_subnets()
            .map(|(vlan, subnet)| {
                (
                    vlan,
                    subnet.spec.gateway,
                    routing::gateway_mac(state, subnet).0,
                )
            })
            .collect(),
        addresses6,
        gateways6: vlan_subnets()
            .flat_map(|(vlan, subnet)| {
                let mac = routing::gateway_mac(state, subnet).0;
                subnet.spec.ipv6.iter().flat_map(move |v6| {
                    [
                        (vlan, v6.gateway(), mac),
                        (vlan, link_local_from_mac(mac), mac),
                    ]
                })
            })
            .collect(),
    }
}

/// Gives every Subnet with a VNI a tunnel port id while the VTEP is open (ids of tunnels
/// that went are freed; new ones start with clean counters).
fn sync_tunnel_ids(engine: &Engine, inner: &mut Inner) {
    let wanted: BTreeSet<String> = if inner.vtep.is_some() {
        inner
            .state
            .subnets
            .iter()
            .filter(|(_, s)| s.spec.vni.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    } else {
        BTreeSet::new()
    };
    let Inner {
        tunnel_ids,
        port_ids,
        ..
    } = inner;
    sync_port_ids(engine, tunnel_ids, port_ids, wanted, "a Subnet's tunnel");
}

/// Makes `ids` hold a port id for exactly the keys in `wanted`: ids of keys that went go
/// back to `pool`; new keys get one, with clean counters.
fn sync_port_ids<K: Ord + Clone + std::fmt::Debug>(
    engine: &Engine,
    ids: &mut BTreeMap<K, PortId>,
    pool: &mut IdPool,
    wanted: BTreeSet<K>,
    what: &str,
) {
    ids.retain(|key, id| {
        let keep = wanted.contains(key);
        if !keep {
            // Its learned MACs go with it (frames to them would find no port).
            engine.reset_port(*id);
            pool.release(id.0);
        }
        keep
    });
    for key in wanted {
        if ids.contains_key(&key) {
            continue;
        }
        match pool.allocate() {
            Some(id) => {
                engine.reset_port(PortId(id));
                ids.insert(key, PortId(id));
            }
            None => tracing::error!(?key, "no port id left for {what}"),
        }
    }
}

/// The DHCP server of `subnet`, when its `dhcp` is enabled: the options every answer carries,
/// encoded once.
fn dhcp_server(
    subnet: &crate::control::resource::Subnet,
) -> Option<Arc<crate::tables::dhcp::DhcpServer>> {
    let dhcp = subnet.spec.dhcp.as_ref().filter(|d| d.enabled)?;
    let dns = subnet
        .spec
        .dns
        .as_ref()
        .map(|d| d.ipv4_nameservers())
        .unwrap_or_default();
    let search = subnet
        .spec
        .dns
        .as_ref()
        .map(|d| d.search.clone())
        .unwrap_or_default();
    let routes: Vec<_> = dhcp.routes.iter().map(|r| (r.destination, r.via)).collect();
    Some(Arc::new(crate::tables::dhcp::DhcpServer::new(
        &crate::tables::dhcp::DhcpSettings {
            lease_seconds: dhcp.lease_seconds,
            cidr: subnet.spec.cidr,
            gateway: subnet.spec.gateway,
            dns: &dns,
            search: &search,
            routes: &routes,
        },
    )))
}
