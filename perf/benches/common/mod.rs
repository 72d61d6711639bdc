//! Fixtures the benchmarks share (a module of each bench crate that includes it).

use std::net::Ipv4Addr;

use vswitch::port::PortId;
use vswitch::tables::snapshot::{DEFAULT_MAC_AGEING, NetworkId, SubnetEntry, SubnetId};

/// Subnet `blue` (172.30.0.0/16, gateway .1, MTU 1500) of the default Network with ports 1
/// and 2, holding at most `mac_limit` learned MACs.
pub fn subnet(mac_limit: usize) -> SubnetEntry {
    SubnetEntry {
        id: SubnetId(1),
        name: "blue".to_string(),
        network: "default".to_string(),
        network_id: NetworkId(0),
        cidr: "172.30.0.0/16".parse().expect("cidr"),
        gateway: Ipv4Addr::new(172, 30, 0, 1),
        gateway_mac: [0x02, 0, 0, 0, 0xee, 1],
        shared_gateway: false,
        mtu: 1500,
        ports: vec![PortId(1), PortId(2)],
        mac_ageing: DEFAULT_MAC_AGEING,
        mac_limit,
        dhcp: None,
        v6: None,
    }
}
