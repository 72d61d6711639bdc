//! Whole frames through the ingress stages (`pipeline::process`): parse, port security,
//! learning, DHCP, ARP, neighbour discovery, routing between two dual-stack subnets (IPv4
//! and IPv6), ICMP and ICMPv6, L2 forwarding. The first byte picks the ingress port; the
//! rest is the frame (virtio header and Ethernet). Every frame ends in a verdict (a counted
//! drop at worst), never a panic, and the tables stay bounded.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vswitch::pipeline::{self, Context, Local};
use vswitch::port::PortId;
use vswitch::tables::dhcp::{DhcpServer, DhcpSettings};
use vswitch::tables::fdb::Fdb;
use vswitch::tables::neigh::Neighbors;
use vswitch::tables::snapshot::{
    DEFAULT_MAC_AGEING, NetworkEntry, NetworkId, NextHop, PortEntry, RouteEntry, RouteEntry6,
    RouteOrigin, Snapshot, Subnet6, SubnetEntry, SubnetId,
};

/// Two subnets of one Network, routed to each other; `blue` has the DHCP server on.
fn snapshot() -> Snapshot {
    let port = |id: u32, subnet: u32, ip: Ipv4Addr| {
        let mac = [0x02, 0, 0, 0, 0, u8::try_from(id).unwrap_or(0)];
        let mut entry = PortEntry::detached_tap(PortId(id), SubnetId(subnet), mac, vec![ip]);
        let prefix = if subnet == 1 { 0xfd00 } else { 0xfd09 };
        entry.ips6.push(Ipv6Addr::new(
            prefix,
            0,
            0,
            0,
            0,
            0,
            0,
            u16::try_from(id).unwrap_or(0) + 1,
        ));
        entry
    };
    let subnet = |id: u32, name: &str, cidr: &str, gateway: Ipv4Addr, ports: Vec<PortId>| {
        let cidr = cidr.parse().expect("cidr");
        SubnetEntry {
            id: SubnetId(id),
            name: name.to_string(),
            network: "default".to_string(),
            network_id: NetworkId(0),
            cidr,
            gateway,
            gateway_mac: [0x02, 0, 0, 0, 0xee, u8::try_from(id).unwrap_or(0)],
            // One segment resolves its neighbours with probes (an anycast gateway).
            shared_gateway: id == 2,
            mtu: 1500,
            ports,
            mac_ageing: DEFAULT_MAC_AGEING,
            mac_limit: 64,
            dhcp: (id == 1).then(|| {
                Arc::new(DhcpServer::new(&DhcpSettings {
                    lease_seconds: 600,
                    cidr,
                    gateway,
                    dns: &[Ipv4Addr::new(172, 30, 0, 53)],
                    search: &["svc.example".to_string()],
                    routes: &[(
                        "10.200.0.0/16".parse().expect("cidr"),
                        Ipv4Addr::new(172, 30, 0, 254),
                    )],
                }))
            }),
            // Blue advertises SLAAC, red does not.
            v6: Some(Subnet6::new(
                if id == 1 { "fd00::/64" } else { "fd09::/64" }
                    .parse()
                    .expect("cidr"),
                Ipv6Addr::new(if id == 1 { 0xfd00 } else { 0xfd09 }, 0, 0, 0, 0, 0, 0, 1),
                [0x02, 0, 0, 0, 0xee, u8::try_from(id).unwrap_or(0)],
                true,
                id == 1,
            )),
        }
    };
    let blue_gw = Ipv4Addr::new(172, 30, 0, 1);
    let red_gw = Ipv4Addr::new(10, 9, 0, 1);
    let snapshot = Snapshot::new(
        vec![
            port(1, 1, Ipv4Addr::new(172, 30, 0, 2)),
            port(2, 1, Ipv4Addr::new(172, 30, 0, 3)),
            port(3, 2, Ipv4Addr::new(10, 9, 0, 2)),
        ],
        vec![
            subnet(
                1,
                "blue",
                "172.30.0.0/16",
                blue_gw,
                vec![PortId(1), PortId(2)],
            ),
            subnet(2, "red", "10.9.0.0/24", red_gw, vec![PortId(3)]),
        ],
    );
    let route = |prefix: &str, subnet: u32| RouteEntry {
        prefix: prefix.parse().expect("prefix"),
        subnet: SubnetId(subnet),
        next_hop: NextHop::Direct,
        origin: RouteOrigin::Connected,
    };
    let route6 = |prefix: &str, subnet: u32| RouteEntry6 {
        prefix: prefix.parse().expect("prefix"),
        subnet: SubnetId(subnet),
        next_hop: NextHop::Direct,
        origin: RouteOrigin::Connected,
    };
    snapshot.with_networks(vec![
        NetworkEntry::new(
            NetworkId(0),
            "default".to_string(),
            vec![route("172.30.0.0/16", 1), route("10.9.0.0/24", 2)],
        )
        .with_routes6(vec![route6("fd00::/64", 1), route6("fd09::/64", 2)]),
    ])
}

struct World {
    snapshot: Snapshot,
    fdb: Fdb,
    neighbors: Neighbors,
    remote_fdb: vxlan::VxlanSharedFdb,
}

static WORLD: OnceLock<World> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let world = WORLD.get_or_init(|| World {
        snapshot: snapshot(),
        fdb: Fdb::new(),
        neighbors: Neighbors::new(),
        remote_fdb: vxlan::VxlanSharedFdb::new(Default::default()),
    });
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let port = PortId(u32::from(selector % 3) + 1);
    let ingress = world.snapshot.port(port).expect("fixture port");
    let ctx = Context {
        snapshot: &world.snapshot,
        fdb: &world.fdb,
        neighbors: &world.neighbors,
        remote_fdb: &world.remote_fdb,
        now_ms: u64::from(selector) * 1000,
        trace: None,
    };
    let mut local = Local::new(0);
    let mut bytes = frame.to_vec();
    let outcome = pipeline::process(&ctx, ingress, &mut bytes, &mut local);
    std::hint::black_box(outcome);
    // Learned MACs stay within the subnets' limits.
    assert!(world.fdb.len() <= 2 * 64);
});
