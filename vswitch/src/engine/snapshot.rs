//! The configuration as the workers see it: immutable, compiled by the controller, published
//! with one atomic pointer swap. Workers load it once per batch and never lock.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::port::{PortId, PortIo};

/// Identifies a Subnet (an L2 segment) inside one daemon run; learned MACs are keyed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetId(pub u32);

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
    /// The port's MTU (L3 payload).
    pub mtu: u16,
    /// The opened device.
    pub io: Arc<PortIo>,
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
    /// Ports in the segment: the flood list for broadcast and unknown unicast.
    pub ports: Vec<PortId>,
    /// How long a learned MAC lives without traffic.
    pub mac_ageing: Duration,
    /// At most this many learned MACs; beyond it nothing new is learned (and unknown
    /// destinations flood).
    pub mac_limit: usize,
}

/// An immutable, compiled configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bumped by every publish; caches built from an older snapshot are invalid.
    pub generation: u64,
    ports: Vec<PortEntry>,
    subnets: Vec<SubnetEntry>,
    /// PortId -> index into `ports`.
    port_slots: Vec<Option<usize>>,
    /// SubnetId -> index into `subnets`.
    subnet_slots: Vec<Option<usize>>,
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
        }
    }

    /// The port with this id, if it exists in this snapshot.
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortEntry> {
        let index = (*self.port_slots.get(id.0 as usize)?)?;
        self.ports.get(index)
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
