//! Snapshots shared by the unit tests of the tables, the stages and the runtime: two subnets
//! of a Network with five ports, optionally routed, optionally with an uplink and NAT rules.
//! The frames the stage tests send are in `pipeline::fixtures`, which re-exports these.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::port::{Capabilities, PortId, PortIo, PortKind};
use crate::tables::snapshot::{
    DEFAULT_MAC_AGEING, DEFAULT_MAC_LIMIT, Egress, NetworkEntry, NetworkId, NextHop, PortEntry,
    RouteEntry, RouteEntry6, RouteOrigin, Snapshot, Subnet6, SubnetEntry, SubnetId, Tunnel,
    UplinkEntry, UplinkIo, VtepEntry,
};

/// MAC of port 1 (subnet 1, 172.30.0.2).
pub const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
/// MAC of port 2 (subnet 1, 172.30.0.3).
pub const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];
/// MAC of port 3 (subnet 1, 172.30.0.4).
pub const MAC_C: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0c];
/// MAC of port 4 (subnet 2, 10.9.0.2).
pub const MAC_D: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0d];
/// MAC of port 5 (subnet 2, 10.9.0.3).
pub const MAC_E: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0e];
/// The broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Address of port 1.
pub const IP_A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// Address of port 2.
pub const IP_B: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
/// Address of port 4.
pub const IP_D: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);

/// IPv6 address of port 1 (subnet 1's prefix fd00::/64).
pub const IP6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xa);
/// IPv6 address of port 2.
pub const IP6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xb);
/// IPv6 address of port 4 (subnet 2's prefix fd00:9::/64).
pub const IP6_D: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 0xd);
/// IPv6 gateway of subnet 1.
pub const GW6_BLUE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// IPv6 gateway of subnet 2.
pub const GW6_RED: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1);

fn port(id: u32, subnet: u32, mac: [u8; 6], ips: &[Ipv4Addr]) -> PortEntry {
    let mut port = PortEntry::detached_tap(PortId(id), SubnetId(subnet), mac, ips.to_vec());
    let last = u16::from(mac[5]);
    let prefix = if subnet == 1 { 0 } else { 9 };
    port.ips6
        .push(Ipv6Addr::new(0xfd00, prefix, 0, 0, 0, 0, 0, last));
    port
}

/// Subnet 1 (`blue`: ports 1, 2, 3) and subnet 2 (`red`: ports 4, 5), with `mac_limit`
/// learned MACs per subnet.
pub fn snapshot_with_limit(mac_limit: usize) -> Snapshot {
    let ports = vec![
        port(1, 1, MAC_A, &[IP_A]),
        port(2, 1, MAC_B, &[IP_B]),
        port(3, 1, MAC_C, &[Ipv4Addr::new(172, 30, 0, 4)]),
        port(4, 2, MAC_D, &[IP_D]),
        port(5, 2, MAC_E, &[Ipv4Addr::new(10, 9, 0, 3)]),
    ];
    let subnet = |id: u32, name: &str, cidr: &str, gateway: Ipv4Addr, ports: &[u32]| SubnetEntry {
        id: SubnetId(id),
        name: name.to_string(),
        network: "default".to_string(),
        network_id: NetworkId(0),
        cidr: cidr.parse().expect("cidr"),
        gateway,
        gateway_mac: [0x02, 0, 0, 0, 0xee, u8::try_from(id).expect("small id")],
        shared_gateway: false,
        mtu: 1500,
        ports: ports.iter().map(|&p| PortId(p)).collect(),
        mac_ageing: DEFAULT_MAC_AGEING,
        mac_limit,
        dhcp: None,
        v6: Some(Subnet6::new(
            if id == 1 { "fd00::/64" } else { "fd00:9::/64" }
                .parse()
                .expect("cidr"),
            if id == 1 { GW6_BLUE } else { GW6_RED },
            [0x02, 0, 0, 0, 0xee, u8::try_from(id).expect("small id")],
            true,
            false,
        )),
    };
    Snapshot::new(
        ports,
        vec![
            subnet(
                1,
                "blue",
                "172.30.0.0/16",
                Ipv4Addr::new(172, 30, 0, 1),
                &[1, 2, 3],
            ),
            subnet(2, "red", "10.9.0.0/24", Ipv4Addr::new(10, 9, 0, 1), &[4, 5]),
        ],
    )
}

/// [`snapshot_with_limit`] with the default limit.
pub fn snapshot() -> Snapshot {
    snapshot_with_limit(DEFAULT_MAC_LIMIT)
}

/// [`snapshot`] with `extra` ports added to their subnets' flood lists.
pub fn snapshot_with_ports(extra: Vec<PortEntry>) -> Snapshot {
    let base = snapshot();
    let mut subnets = base.subnets().to_vec();
    for port in &extra {
        if let Some(subnet) = subnets.iter_mut().find(|s| s.id == port.subnet) {
            subnet.ports.push(port.id);
        }
    }
    let mut ports = base.ports().to_vec();
    ports.extend(extra);
    Snapshot::new(ports, subnets)
}

/// Gateway MAC of subnet 1 (`blue`, gateway 172.30.0.1).
pub const GW_BLUE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xee, 1];
/// Gateway MAC of subnet 2 (`red`, gateway 10.9.0.1).
pub const GW_RED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xee, 2];
/// Gateway of subnet 1.
pub const GW_BLUE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// Gateway of subnet 2.
pub const GW_RED: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

/// A connected route.
pub fn connected(prefix: &str, subnet: u32) -> RouteEntry {
    RouteEntry {
        prefix: prefix.parse().expect("prefix"),
        subnet: SubnetId(subnet),
        next_hop: NextHop::Direct,
        origin: RouteOrigin::Connected,
    }
}

/// [`snapshot`] with Network 0 routing between `blue` and `red` (connected routes), plus
/// `extra` routes.
pub fn routed_snapshot_with(extra: Vec<RouteEntry>) -> Snapshot {
    let base = snapshot();
    let mut routes = vec![connected("172.30.0.0/16", 1), connected("10.9.0.0/24", 2)];
    routes.extend(extra);
    Snapshot::new(base.ports().to_vec(), base.subnets().to_vec()).with_networks(vec![
        NetworkEntry::new(NetworkId(0), "default".into(), routes).with_routes6(vec![
            RouteEntry6 {
                prefix: "fd00::/64".parse().expect("prefix"),
                subnet: SubnetId(1),
                next_hop: NextHop::Direct,
                origin: RouteOrigin::Connected,
            },
            RouteEntry6 {
                prefix: "fd00:9::/64".parse().expect("prefix"),
                subnet: SubnetId(2),
                next_hop: NextHop::Direct,
                origin: RouteOrigin::Connected,
            },
        ]),
    ])
}

/// [`routed_snapshot_with`] no extra route.
pub fn routed_snapshot() -> Snapshot {
    routed_snapshot_with(Vec::new())
}

/// Port id of the uplink in [`uplink_snapshot`].
pub const UPLINK: PortId = PortId(9);
/// The uplink's segment in [`uplink_snapshot`].
pub const UPLINK_SEGMENT: SubnetId = SubnetId(99);
/// The switch's MAC on the uplink.
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x99, 0x01];
/// The uplink's gateway's MAC.
pub const OUTSIDE_GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x77, 0x01];
/// The uplink's gateway.
pub const OUTSIDE_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The NAT address (NATGateway of Network 0, and PortForward tcp/8080 -> port 2:80).
pub const NAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The virtual IP of port 4 (10.9.0.2).
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// An uplink address nothing uses.
pub const SPARE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
/// A server beyond the uplink's gateway.
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// The uplink of [`uplink_snapshot`]: 203.0.113.10/24, .20/24, .30/24, gateway .1.
pub fn uplink_entry() -> UplinkEntry {
    UplinkEntry {
        id: UPLINK,
        name: "up".into(),
        ifname: "eth9".into(),
        mac: UPLINK_MAC,
        addresses: ["203.0.113.10/24", "203.0.113.20/24", "203.0.113.30/24"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect(),
        gateway: OUTSIDE_GW,
        mtu: 1500,
        segment: UPLINK_SEGMENT,
        io: Arc::new(UplinkIo::single(
            UPLINK,
            "up",
            "eth9",
            PortIo {
                kind: PortKind::Veth,
                queues: Vec::new(),
                capabilities: Capabilities {
                    vnet_hdr: true,
                    tx_partial_csum: true,
                    tx_gso: true,
                    tun_offload_flags: 0,
                },
                host_ifname: Some("eth9".into()),
            },
        )),
        routing: Default::default(),
        vlans: std::collections::HashMap::new(),
        ipv6: None,
    }
}

/// NAT for Network 0: NATGateway 203.0.113.10, PortForward tcp 203.0.113.10:8080 ->
/// 172.30.0.3:80 (port 2), VirtualIP 203.0.113.20 -> 10.9.0.2 (port 4).
pub fn nat_rules() -> nat::NatRules {
    let zone = nat::Zone(0);
    let mut rules = nat::NatRules::new();
    rules
        .add_gateway(zone, nat::Gateway::new(vec![NAT_IP.into()]))
        .expect("gateway");
    rules
        .add_port_forward(nat::PortForward {
            address: NAT_IP.into(),
            protocol: nat::Protocol::Tcp,
            port: 8080,
            zone,
            target: nat::Endpoint::new(IP_B.into(), 80),
        })
        .expect("forward");
    rules
        .add_virtual_ip(nat::VirtualIp {
            public: VIP.into(),
            zone,
            private: IP_D.into(),
        })
        .expect("vip");
    rules
}

/// [`routed_snapshot`] with [`uplink_entry`], `rules` and a fresh conntrack table.
pub fn uplink_snapshot_with(rules: nat::NatRules) -> Snapshot {
    let conntrack = Arc::new(nat::Conntrack::new(nat::ConntrackConfig::default()));
    routed_snapshot()
        .with_uplink(Some(uplink_entry()))
        .with_nat(Arc::new(rules), conntrack)
}

/// [`uplink_snapshot_with`] [`nat_rules`].
pub fn uplink_snapshot() -> Snapshot {
    uplink_snapshot_with(nat_rules())
}

/// The tunnel port of subnet 1 (`blue`) in [`overlay_snapshot`].
pub const TUNNEL: PortId = PortId(20);
/// The VTEP's id (its counters) in [`overlay_snapshot`].
pub const VTEP: PortId = PortId(21);
/// Subnet 1's VNI in [`overlay_snapshot`].
pub const BLUE_VNI: u32 = 42;
/// The remote VTEP of subnet 1 in [`overlay_snapshot`].
pub const REMOTE_VTEP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 50, 2));
/// A second remote VTEP of subnet 1 in [`overlay_snapshot`].
pub const OTHER_VTEP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 50, 3));

/// [`snapshot`] with subnet 1 (`blue`) stretched over the overlay: its tunnel port
/// [`TUNNEL`] (VNI [`BLUE_VNI`], overlay MTU 1450, remote VTEPs [`REMOTE_VTEP`] and
/// [`OTHER_VTEP`]) and the VTEP [`VTEP`] on 192.168.50.1:4789, with no queues.
pub fn overlay_snapshot() -> Snapshot {
    let vni = vxlan::Vni::new(BLUE_VNI).expect("valid VNI");
    let tunnel = PortEntry {
        id: TUNNEL,
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
            vni,
            remotes: vec![REMOTE_VTEP, OTHER_VTEP],
            mtu: 1450,
        }),
    };
    let vtep = VtepEntry {
        id: VTEP,
        local: "192.168.50.1:4789".parse().expect("address"),
        encap: vxlan::VxlanEncapConfig::default(),
        io: Arc::new(crate::port::Vtep {
            local: "192.168.50.1:4789".parse().expect("address"),
            queues: Vec::new(),
        }),
        tunnels: std::collections::HashMap::from([(BLUE_VNI, TUNNEL)]),
    };
    snapshot_with_ports(vec![tunnel]).with_vtep(Some(vtep))
}
