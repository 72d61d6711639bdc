//! Masquerade port allocation: endpoint-independent mappings carved from per-interface port
//! blocks.
//!
//! # Model
//! - Each NAT address's port range (default 1024-65535) is cut into aligned *blocks* of
//!   [`Gateway::ports_per_interface`] ports (default 2048; the last block may be shorter). A
//!   block covers the same port numbers for TCP, UDP and ICMP identifiers; each protocol has
//!   its own bitmap inside it.
//! - A NetworkInterface ([`InterfaceId`]) owns at most [`Gateway::blocks_per_interface`]
//!   blocks (default 1) per address family, all on one NAT address of that family ("paired"
//!   pooling, RFC 4787 REQ-2; an IPv6 flow is masqueraded to an IPv6 address), claimed
//!   on demand and released when its last mapping in them goes away. One busy container thus
//!   never takes more than its blocks, and a container that never goes out takes nothing.
//! - A *mapping* `(zone, protocol, internal address, internal port)` -> `(NAT address, port)`
//!   is shared by every connection from that internal endpoint, whatever the destination
//!   (endpoint-independent mapping, RFC 4787 REQ-1; RFC 5508 REQ-1 for ICMP identifiers). It
//!   is reference-counted by the connections using it.
//! - The internal port is kept when it lies in a block the interface owns or may claim and is
//!   free (port preservation, RFC 4787 REQ-3's "port preservation" variant), else the lowest
//!   free port of the interface's blocks is used, else a new block is claimed.
//! - Ports reserved by port forwards on a NAT address are never handed out.
//!
//! # Cost
//! Allocation runs only when a connection is created, under one mutex. It scans at most the
//! interface's blocks (`blocks_per_interface * ports_per_interface / 64` words) and the address's
//! block table (at most 64 entries at the default size): bounded, and never a loop that waits.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use crate::tuple::{Endpoint, Protocol, Zone};

/// Default ports per block (the NATGateway's `portsPerNetworkInterface`).
pub const DEFAULT_PORTS_PER_INTERFACE: u16 = 2048;

/// Default number of blocks one interface may hold on its NAT address.
pub const DEFAULT_BLOCKS_PER_INTERFACE: u16 = 1;

/// Default port range handed out: the non-privileged ports.
pub const DEFAULT_PORT_RANGE: RangeInclusive<u16> = 1024..=65535;

/// Identifies the NetworkInterface (port) a flow enters from; port blocks are owned by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceId(pub u32);

impl fmt::Display for InterfaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The masquerade settings of one Network's NATGateway. Build it with [`Gateway::new`] and
/// adjust the public fields; [`NatRules`](crate::NatRules) keeps the ports reserved by port
/// forwards on its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// NAT addresses (from the uplink's addresses), of either family: a flow takes one of its
    /// own family.
    pub ips: Vec<IpAddr>,
    /// Ports per block (`portsPerNetworkInterface`), at least 1.
    pub ports_per_interface: u16,
    /// Blocks one interface may hold, at least 1.
    pub blocks_per_interface: u16,
    /// The ports handed out.
    pub port_range: RangeInclusive<u16>,
    /// Sorted `(address, protocol, port)` held by port forwards; kept by `NatRules`.
    pub(crate) reserved: Vec<(IpAddr, Protocol, u16)>,
}

impl Gateway {
    /// A gateway over `ips` with the default block size, block count and port range.
    pub fn new(ips: Vec<IpAddr>) -> Gateway {
        Gateway {
            ips,
            ports_per_interface: DEFAULT_PORTS_PER_INTERFACE,
            blocks_per_interface: DEFAULT_BLOCKS_PER_INTERFACE,
            port_range: DEFAULT_PORT_RANGE,
            reserved: Vec::new(),
        }
    }

    fn is_reserved(&self, ip: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.reserved.binary_search(&(ip, protocol, port)).is_ok()
    }
}

/// Why no NAT mapping could be made. The datapath drops the packet and counts the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NatError {
    /// The gateway lists no NAT address of the flow's family.
    #[error("the NAT gateway has no address of the flow's family")]
    NoAddress,
    /// Every block of the NAT address is owned by other interfaces.
    #[error("no free port block left on the NAT address")]
    PoolExhausted,
    /// The interface's blocks are full and it may not claim another one.
    #[error("the interface used every port of its port blocks")]
    InterfaceExhausted,
}

impl NatError {
    /// The stable counter key (`nat.<reason>`).
    pub const fn key(self) -> &'static str {
        match self {
            NatError::NoAddress => "nat.no_address",
            NatError::PoolExhausted => "nat.pool_exhausted",
            NatError::InterfaceExhausted => "nat.interface_ports_exhausted",
        }
    }
}

/// What a mapping is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MappingKey {
    pub zone: Zone,
    pub protocol: Protocol,
    pub internal: Endpoint,
}

#[derive(Debug)]
struct Mapping {
    external: Endpoint,
    refs: u32,
}

#[derive(Debug)]
struct Block {
    owner: InterfaceId,
    /// One bitmap per protocol; bit `i` is port `start + i`.
    used: [Vec<u64>; 3],
    in_use: [u32; 3],
}

impl Block {
    fn new(owner: InterfaceId, len: usize) -> Block {
        let words = len.div_ceil(64);
        Block {
            owner,
            used: [vec![0; words], vec![0; words], vec![0; words]],
            in_use: [0; 3],
        }
    }

    fn is_used(&self, protocol: Protocol, offset: usize) -> bool {
        self.used[protocol.index()]
            .get(offset / 64)
            .is_some_and(|word| word & (1 << (offset % 64)) != 0)
    }

    fn set(&mut self, protocol: Protocol, offset: usize, used: bool) {
        if let Some(word) = self.used[protocol.index()].get_mut(offset / 64) {
            let bit = 1u64 << (offset % 64);
            if used && *word & bit == 0 {
                *word |= bit;
                self.in_use[protocol.index()] += 1;
            } else if !used && *word & bit != 0 {
                *word &= !bit;
                self.in_use[protocol.index()] -= 1;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.in_use.iter().all(|&n| n == 0)
    }
}

/// The blocks of one NAT address.
#[derive(Debug)]
struct AddressPorts {
    first: u16,
    last: u16,
    block_size: u16,
    blocks: Vec<Option<Block>>,
}

impl AddressPorts {
    fn new(gateway: &Gateway) -> AddressPorts {
        let (first, last) = (*gateway.port_range.start(), *gateway.port_range.end());
        let block_size = gateway.ports_per_interface.max(1);
        let span = usize::from(last.saturating_sub(first)) + 1;
        let count = if first > last {
            0
        } else {
            span.div_ceil(usize::from(block_size))
        };
        AddressPorts {
            first,
            last,
            block_size,
            blocks: (0..count).map(|_| None).collect(),
        }
    }

    fn same_layout(&self, gateway: &Gateway) -> bool {
        self.first == *gateway.port_range.start()
            && self.last == *gateway.port_range.end()
            && self.block_size == gateway.ports_per_interface.max(1)
    }

    fn is_idle(&self) -> bool {
        self.blocks.iter().all(Option::is_none)
    }

    fn free_blocks(&self) -> usize {
        self.blocks.iter().filter(|b| b.is_none()).count()
    }

    /// The block and offset of `port`, if it is in the range.
    fn locate(&self, port: u16) -> Option<(usize, usize)> {
        if port < self.first || port > self.last {
            return None;
        }
        let index = usize::from(port - self.first);
        let size = usize::from(self.block_size);
        Some((index / size, index % size))
    }

    /// Ports in block `block` (the last block may be short).
    fn block_len(&self, block: usize) -> usize {
        let size = usize::from(self.block_size);
        let span = usize::from(self.last - self.first) + 1;
        span.saturating_sub(block * size).min(size)
    }

    fn port(&self, block: usize, offset: usize) -> Option<u16> {
        let index = block * usize::from(self.block_size) + offset;
        u16::try_from(usize::from(self.first) + index).ok()
    }

    fn claim(&mut self, block: usize, owner: InterfaceId) -> bool {
        let len = self.block_len(block);
        match self.blocks.get_mut(block) {
            Some(slot @ None) => {
                *slot = Some(Block::new(owner, len));
                true
            }
            _ => false,
        }
    }

    /// The lowest free, unreserved port of `block` for `protocol`.
    fn free_port(
        &self,
        gateway: &Gateway,
        ip: IpAddr,
        block: usize,
        protocol: Protocol,
    ) -> Option<u16> {
        let state = self.blocks.get(block)?.as_ref()?;
        let len = self.block_len(block);
        for (w, &word) in state.used[protocol.index()].iter().enumerate() {
            let mut free = !word;
            while free != 0 {
                let bit = usize::try_from(free.trailing_zeros()).unwrap_or(64);
                let offset = w * 64 + bit;
                if offset >= len {
                    break;
                }
                let port = self.port(block, offset)?;
                if !gateway.is_reserved(ip, protocol, port) {
                    return Some(port);
                }
                free &= free - 1;
            }
        }
        None
    }
}

#[derive(Debug)]
struct InterfacePorts {
    ip: IpAddr,
    blocks: Vec<usize>,
}

/// Ports in use by one interface, for `vswitchctl nat` and the NATGateway status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceUsage {
    /// The interface.
    pub interface: InterfaceId,
    /// Its NAT address.
    pub ip: IpAddr,
    /// The port ranges of its blocks.
    pub blocks: Vec<RangeInclusive<u16>>,
    /// Mappings in use: TCP, UDP, ICMP.
    pub in_use: [u32; 3],
}

/// All masquerade state: NAT addresses' blocks, interfaces' blocks, mappings.
#[derive(Debug, Default)]
pub(crate) struct PortAllocator {
    addresses: HashMap<IpAddr, AddressPorts>,
    /// Per interface and family (IPv6: true).
    interfaces: HashMap<(InterfaceId, bool), InterfacePorts>,
    mappings: HashMap<MappingKey, Mapping>,
}

impl PortAllocator {
    /// The external endpoint for `internal`, shared with every other connection from it
    /// (its reference count goes up by one).
    pub fn acquire(
        &mut self,
        gateway: &Gateway,
        interface: InterfaceId,
        key: MappingKey,
    ) -> Result<Endpoint, NatError> {
        if let Some(mapping) = self.mappings.get_mut(&key) {
            mapping.refs += 1;
            return Ok(mapping.external);
        }
        let v6 = key.internal.addr.is_ipv6();
        let owner = (interface, v6);
        let ip = match self.interfaces.get(&owner) {
            Some(owned) => owned.ip,
            None => self.pick_address(gateway, v6)?,
        };
        let addresses = self
            .addresses
            .entry(ip)
            .or_insert_with(|| AddressPorts::new(gateway));
        if addresses.is_idle() && !addresses.same_layout(gateway) {
            *addresses = AddressPorts::new(gateway);
        }
        let owned: &[usize] = self
            .interfaces
            .get(&owner)
            .map_or(&[], |i| i.blocks.as_slice());
        let may_claim = owned.len() < usize::from(gateway.blocks_per_interface.max(1));
        let protocol = key.protocol;
        let wanted = key.internal.port;

        // 1. Keep the internal port if its block is ours (or claimable) and it is free.
        let mut choice = None;
        if let Some((block, offset)) = addresses.locate(wanted) {
            if !gateway.is_reserved(ip, protocol, wanted) {
                let ours = owned.contains(&block);
                let claimable = may_claim && addresses.blocks[block].is_none();
                let free = addresses.blocks[block]
                    .as_ref()
                    .is_none_or(|b| !b.is_used(protocol, offset));
                if (ours || claimable) && free {
                    choice = Some((block, wanted, !ours));
                }
            }
        }
        // 2. The lowest free port of a block we own.
        if choice.is_none() {
            choice = owned.iter().find_map(|&block| {
                addresses
                    .free_port(gateway, ip, block, protocol)
                    .map(|port| (block, port, false))
            });
        }
        // 3. A new block.
        if choice.is_none() && may_claim {
            let block = addresses
                .blocks
                .iter()
                .position(Option::is_none)
                .ok_or(NatError::PoolExhausted)?;
            addresses.claim(block, interface);
            match addresses.free_port(gateway, ip, block, protocol) {
                Some(port) => choice = Some((block, port, true)),
                None => {
                    // Every port of the block is reserved by port forwards; give it back.
                    addresses.blocks[block] = None;
                    return Err(NatError::PoolExhausted);
                }
            }
        }
        let Some((block, port, claim)) = choice else {
            return Err(NatError::InterfaceExhausted);
        };
        if claim {
            addresses.claim(block, interface);
            self.interfaces
                .entry(owner)
                .or_insert_with(|| InterfacePorts {
                    ip,
                    blocks: Vec::new(),
                })
                .blocks
                .push(block);
        }
        let Some((_, offset)) = addresses.locate(port) else {
            return Err(NatError::PoolExhausted);
        };
        if let Some(state) = addresses.blocks[block].as_mut() {
            state.set(protocol, offset, true);
        }
        let external = Endpoint::new(ip, port);
        self.mappings.insert(key, Mapping { external, refs: 1 });
        Ok(external)
    }

    /// Drops one reference to the mapping of `key`; the last one frees the port, and an
    /// interface's block with no port left in use goes back to the pool.
    pub fn release(&mut self, key: &MappingKey) {
        let Some(mapping) = self.mappings.get_mut(key) else {
            return;
        };
        mapping.refs = mapping.refs.saturating_sub(1);
        if mapping.refs > 0 {
            return;
        }
        let Some(mapping) = self.mappings.remove(key) else {
            return;
        };
        let ip = mapping.external.addr;
        let Some(addresses) = self.addresses.get_mut(&ip) else {
            return;
        };
        let Some((block, offset)) = addresses.locate(mapping.external.port) else {
            return;
        };
        let emptied = match addresses.blocks.get_mut(block).and_then(Option::as_mut) {
            Some(state) => {
                state.set(key.protocol, offset, false);
                state.is_empty().then_some(state.owner)
            }
            None => None,
        };
        if let Some(owner) = emptied {
            addresses.blocks[block] = None;
            let owner = (owner, ip.is_ipv6());
            if let Some(owned) = self.interfaces.get_mut(&owner) {
                owned.blocks.retain(|&b| b != block);
                if owned.blocks.is_empty() {
                    self.interfaces.remove(&owner);
                }
            }
        }
    }

    /// The NAT address with the most free blocks (a new interface goes there).
    fn pick_address(&self, gateway: &Gateway, v6: bool) -> Result<IpAddr, NatError> {
        gateway
            .ips
            .iter()
            .filter(|ip| ip.is_ipv6() == v6)
            .map(|ip| {
                let free = self.addresses.get(ip).map_or_else(
                    || AddressPorts::new(gateway).free_blocks(),
                    |a| a.free_blocks(),
                );
                (free, *ip)
            })
            // Most free blocks; among equals, the first listed address.
            .rev()
            .max_by_key(|&(free, _)| free)
            .map(|(_, ip)| ip)
            .ok_or(NatError::NoAddress)
    }

    /// Ports in use per interface.
    pub fn usage(&self) -> Vec<InterfaceUsage> {
        let mut usage: Vec<InterfaceUsage> = self
            .interfaces
            .iter()
            .map(|(&(interface, _), owned)| {
                let mut in_use = [0u32; 3];
                let mut blocks = Vec::new();
                if let Some(addresses) = self.addresses.get(&owned.ip) {
                    for &block in &owned.blocks {
                        if let Some(state) = addresses.blocks.get(block).and_then(Option::as_ref) {
                            for (total, n) in in_use.iter_mut().zip(state.in_use) {
                                *total += n;
                            }
                        }
                        let len = addresses.block_len(block);
                        if let (Some(start), Some(end)) = (
                            addresses.port(block, 0),
                            addresses.port(block, len.saturating_sub(1)),
                        ) {
                            blocks.push(start..=end);
                        }
                    }
                }
                InterfaceUsage {
                    interface,
                    ip: owned.ip,
                    blocks,
                    in_use,
                }
            })
            .collect();
        usage.sort_by_key(|u| (u.interface, u.ip.is_ipv6()));
        usage
    }

    /// Number of live mappings.
    pub fn mappings(&self) -> usize {
        self.mappings.len()
    }

    /// The owner of the block containing `ip:port`, if any (for tests and status).
    #[cfg(test)]
    fn owner(&self, ip: IpAddr, port: u16) -> Option<InterfaceId> {
        let addresses = self.addresses.get(&ip)?;
        let (block, _) = addresses.locate(port)?;
        addresses.blocks.get(block)?.as_ref().map(|b| b.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    const N1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    const N2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
    const N6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

    fn key(protocol: Protocol, host: u8, port: u16) -> MappingKey {
        MappingKey {
            zone: Zone(1),
            protocol,
            internal: Endpoint::new(IpAddr::V4(Ipv4Addr::new(172, 30, 0, host)), port),
        }
    }

    fn port_of(e: Endpoint) -> u16 {
        e.port
    }

    #[test]
    fn ipv6_flows_take_an_ipv6_address_and_blocks_of_their_own() {
        let gateway = Gateway::new(vec![N1, N6]);
        let mut ports = PortAllocator::default();
        let v4 = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Tcp, 5, 40000))
            .expect("maps");
        let internal6 = MappingKey {
            zone: Zone(1),
            protocol: Protocol::Tcp,
            internal: Endpoint::new(
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)),
                40000,
            ),
        };
        let v6 = ports
            .acquire(&gateway, InterfaceId(1), internal6)
            .expect("maps");
        assert_eq!(v4, Endpoint::new(N1, 40000));
        assert_eq!(v6, Endpoint::new(N6, 40000));
        // One block per family for the same interface, each on its own address.
        let usage = ports.usage();
        assert_eq!(usage.len(), 2);
        assert_eq!((usage[0].ip, usage[1].ip), (N1, N6));
        ports.release(&internal6);
        assert_eq!(ports.usage().len(), 1);
        // No IPv6 address: an IPv6 flow is refused, never given an IPv4 one.
        let only4 = Gateway::new(vec![N1]);
        assert_eq!(
            ports.acquire(&only4, InterfaceId(2), internal6),
            Err(NatError::NoAddress)
        );
    }

    #[test]
    fn preserves_the_port_and_claims_the_block_around_it() {
        let gateway = Gateway::new(vec![N1]);
        let mut ports = PortAllocator::default();
        let external = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 5, 40000))
            .expect("maps");
        assert_eq!(external, Endpoint::new(N1, 40000));
        assert_eq!(ports.owner(N1, 40000), Some(InterfaceId(1)));
        let usage = ports.usage();
        // 1024 + 19 * 2048 = 39936: the block holding 40000.
        assert_eq!(usage[0].blocks, vec![39936..=41983]);
        assert_eq!(usage[0].in_use, [0, 1, 0]);
    }

    #[test]
    fn same_internal_endpoint_shares_the_mapping() {
        let gateway = Gateway::new(vec![N1]);
        let mut ports = PortAllocator::default();
        let k = key(Protocol::Tcp, 5, 5555);
        let a = ports.acquire(&gateway, InterfaceId(1), k).expect("maps");
        let b = ports.acquire(&gateway, InterfaceId(1), k).expect("maps");
        assert_eq!(a, b);
        assert_eq!(ports.mappings(), 1);
        ports.release(&k);
        assert_eq!(ports.mappings(), 1);
        ports.release(&k);
        assert_eq!(ports.mappings(), 0);
        assert!(ports.usage().is_empty(), "the block went back to the pool");
    }

    #[test]
    fn a_port_outside_the_interface_block_is_not_preserved() {
        let gateway = Gateway::new(vec![N1]);
        let mut ports = PortAllocator::default();
        ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 5, 40000))
            .expect("maps");
        let other = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 5, 50000))
            .expect("maps");
        assert_eq!(port_of(other), 39936, "lowest free port of the owned block");
    }

    #[test]
    fn protocols_have_separate_port_spaces() {
        let gateway = Gateway::new(vec![N1]);
        let mut ports = PortAllocator::default();
        let tcp = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Tcp, 5, 40000))
            .expect("maps");
        let udp = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 5, 40000))
            .expect("maps");
        assert_eq!(tcp, udp);
    }

    #[test]
    fn two_interfaces_wanting_the_same_port() {
        let gateway = Gateway::new(vec![N1]);
        let mut ports = PortAllocator::default();
        let first = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 5, 40000))
            .expect("maps");
        let second = ports
            .acquire(&gateway, InterfaceId(2), key(Protocol::Udp, 6, 40000))
            .expect("maps");
        assert_eq!(port_of(first), 40000);
        assert_ne!(ports.owner(N1, port_of(second)), Some(InterfaceId(1)));
        assert_eq!(ports.owner(N1, port_of(second)), Some(InterfaceId(2)));
    }

    #[test]
    fn an_interface_is_capped_at_its_blocks() {
        let mut gateway = Gateway::new(vec![N1]);
        gateway.ports_per_interface = 4;
        let mut ports = PortAllocator::default();
        let mut seen = Vec::new();
        for source in 0..4 {
            let e = ports
                .acquire(
                    &gateway,
                    InterfaceId(1),
                    key(Protocol::Udp, 5, 2000 + source),
                )
                .expect("maps");
            seen.push(port_of(e));
        }
        seen.sort_unstable();
        // 2000 starts a block (1024 + 244 * 4): all four ports are preserved.
        assert_eq!(seen, [2000, 2001, 2002, 2003]);
        assert_eq!(
            ports.acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 5, 9999)),
            Err(NatError::InterfaceExhausted)
        );
        // Another interface is unaffected.
        assert!(
            ports
                .acquire(&gateway, InterfaceId(2), key(Protocol::Udp, 6, 9999))
                .is_ok()
        );
        // A release makes room again.
        ports.release(&key(Protocol::Udp, 5, 2000));
        assert!(
            ports
                .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 5, 9999))
                .is_ok()
        );
    }

    #[test]
    fn more_blocks_per_interface_when_allowed() {
        let mut gateway = Gateway::new(vec![N1]);
        gateway.ports_per_interface = 2;
        gateway.blocks_per_interface = 2;
        let mut ports = PortAllocator::default();
        for source in 0..4 {
            ports
                .acquire(&gateway, InterfaceId(1), key(Protocol::Tcp, 5, source))
                .expect("maps");
        }
        assert_eq!(ports.usage()[0].blocks.len(), 2);
        assert_eq!(
            ports.acquire(&gateway, InterfaceId(1), key(Protocol::Tcp, 5, 99)),
            Err(NatError::InterfaceExhausted)
        );
    }

    #[test]
    fn the_pool_runs_out_of_blocks() {
        let mut gateway = Gateway::new(vec![N1]);
        gateway.port_range = 1000..=1007;
        gateway.ports_per_interface = 4;
        let mut ports = PortAllocator::default();
        assert!(
            ports
                .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 1, 1))
                .is_ok()
        );
        assert!(
            ports
                .acquire(&gateway, InterfaceId(2), key(Protocol::Udp, 2, 1))
                .is_ok()
        );
        assert_eq!(
            ports.acquire(&gateway, InterfaceId(3), key(Protocol::Udp, 3, 1)),
            Err(NatError::PoolExhausted)
        );
    }

    #[test]
    fn a_short_last_block_only_hands_out_ports_in_range() {
        let mut gateway = Gateway::new(vec![N1]);
        gateway.port_range = 1000..=1004;
        gateway.ports_per_interface = 4;
        let mut ports = PortAllocator::default();
        // Interface 1 takes block 0 (1000-1003); interface 2 gets the short block (1004).
        ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 1, 1000))
            .expect("maps");
        let e = ports
            .acquire(&gateway, InterfaceId(2), key(Protocol::Udp, 2, 1))
            .expect("maps");
        assert_eq!(port_of(e), 1004);
        assert_eq!(
            ports.acquire(&gateway, InterfaceId(2), key(Protocol::Udp, 2, 2)),
            Err(NatError::InterfaceExhausted)
        );
    }

    #[test]
    fn the_range_can_end_at_65535() {
        let mut gateway = Gateway::new(vec![N1]);
        gateway.port_range = 65534..=65535;
        let mut ports = PortAllocator::default();
        let a = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 1, 65535))
            .expect("maps");
        assert_eq!(port_of(a), 65535);
        let b = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 1, 7))
            .expect("maps");
        assert_eq!(port_of(b), 65534);
    }

    #[test]
    fn reserved_ports_are_skipped() {
        let mut gateway = Gateway::new(vec![N1]);
        gateway.port_range = 8080..=8083;
        gateway.ports_per_interface = 4;
        gateway.reserved = vec![(N1, Protocol::Tcp, 8080), (N1, Protocol::Tcp, 8081)];
        let mut ports = PortAllocator::default();
        let e = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Tcp, 1, 8080))
            .expect("maps");
        assert_eq!(port_of(e), 8082);
        // UDP 8080 is not reserved.
        let u = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 1, 8080))
            .expect("maps");
        assert_eq!(port_of(u), 8080);
    }

    #[test]
    fn interfaces_spread_over_addresses_and_stay_on_theirs() {
        let mut gateway = Gateway::new(vec![N1, N2]);
        gateway.port_range = 1000..=1007;
        gateway.ports_per_interface = 4;
        gateway.blocks_per_interface = 2;
        let mut ports = PortAllocator::default();
        let a = ports
            .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 1, 1))
            .expect("maps");
        let b = ports
            .acquire(&gateway, InterfaceId(2), key(Protocol::Udp, 2, 1))
            .expect("maps");
        assert_eq!(a.addr, N1);
        assert_eq!(b.addr, N2);
        // Interface 1 keeps N1 (paired pooling) even for its second block.
        for source in 2..=8 {
            let e = ports
                .acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 1, source))
                .expect("maps");
            assert_eq!(e.addr, N1);
        }
    }

    #[test]
    fn a_gateway_without_addresses_refuses() {
        let gateway = Gateway::new(vec![]);
        let mut ports = PortAllocator::default();
        assert_eq!(
            ports.acquire(&gateway, InterfaceId(1), key(Protocol::Udp, 1, 1)),
            Err(NatError::NoAddress)
        );
    }

    proptest! {
        /// Any sequence of acquires and releases: mappings are unique per (address,
        /// protocol, port), each lies in a block owned by its interface, no interface holds
        /// more than its blocks, and releasing everything empties the pool.
        #[test]
        fn allocation_invariants(
            ops in proptest::collection::vec((0u32..4, 0u8..3, 0u16..40, any::<bool>()), 1..200)
        ) {
            let mut gateway = Gateway::new(vec![N1, N2]);
            gateway.port_range = 1000..=1039;
            gateway.ports_per_interface = 8;
            gateway.blocks_per_interface = 2;
            let mut ports = PortAllocator::default();
            let mut held: Vec<MappingKey> = Vec::new();
            for (interface, proto, source, release) in ops {
                let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp][usize::from(proto)];
                let host = u8::try_from(interface).expect("small");
                let k = key(protocol, host, source);
                if release {
                    if let Some(i) = held.iter().position(|h| *h == k) {
                        held.swap_remove(i);
                        ports.release(&k);
                    }
                } else if let Ok(e) = ports.acquire(&gateway, InterfaceId(interface), k) {
                    held.push(k);
                    prop_assert_eq!(ports.owner(e.addr, e.port), Some(InterfaceId(interface)));
                    prop_assert!(gateway.port_range.contains(&e.port));
                }
                let mut seen = std::collections::HashSet::new();
                for (k, m) in &ports.mappings {
                    prop_assert!(seen.insert((m.external, k.protocol)), "duplicate external");
                }
                for owned in ports.interfaces.values() {
                    prop_assert!(owned.blocks.len() <= 2);
                }
            }
            for k in held {
                ports.release(&k);
            }
            prop_assert_eq!(ports.mappings(), 0);
            prop_assert!(ports.usage().is_empty());
            prop_assert!(ports.addresses.values().all(AddressPorts::is_idle));
        }
    }
}
