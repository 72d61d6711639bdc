//! IPAM with CNI host-local semantics, one pool per Subnet.
//!
//! A [`Pool`] is what a Subnet's spec allows: addresses from `rangeStart..=rangeEnd`
//! (default: the first to the last host address), never the network, broadcast or gateway
//! address, and never a `reserved` one. [`Leases`] are who holds what: allocation walks the
//! range starting after the last address it handed out and wraps around, like host-local's
//! `lastReservedIP`, so a released address is not handed out again at once.
//!
//! Static addresses may lie anywhere among the subnet's host addresses (also outside the
//! range or on a reserved one: reserving keeps an address away from *automatic* allocation)
//! but never on the network, broadcast or gateway address, nor on another holder's address.
//!
//! Leases are not persisted here: the controller rebuilds them from the interfaces' status
//! (`status.ips`) and persists the cursor ([`Leases::last`]) in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::kinds::subnet::SubnetIpv6;
use super::resource::SubnetSpec;
use super::store::State;

/// Why an address cannot be given to an interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The address is not inside the subnet.
    #[error("address {addr} is outside subnet {cidr}; use an address inside {cidr}")]
    OutsideSubnet {
        /// The address.
        addr: Ipv4Addr,
        /// The subnet.
        cidr: Ipv4Net,
    },
    /// The address is the subnet's network address.
    #[error("address {addr} is the network address of {cidr}; use a host address")]
    NetworkAddress {
        /// The address.
        addr: Ipv4Addr,
        /// The subnet.
        cidr: Ipv4Net,
    },
    /// The address is the subnet's broadcast address.
    #[error("address {addr} is the broadcast address of {cidr}; use a host address")]
    BroadcastAddress {
        /// The address.
        addr: Ipv4Addr,
        /// The subnet.
        cidr: Ipv4Net,
    },
    /// The address is the subnet's gateway (owned by the switch).
    #[error("address {addr} is the gateway of {cidr} (owned by the switch); use another address")]
    GatewayAddress {
        /// The address.
        addr: Ipv4Addr,
        /// The subnet.
        cidr: Ipv4Net,
    },
    /// Another interface (or a LoadBalancer) holds the address.
    #[error(
        "address {addr} is already used by {}; choose a free address or leave ips empty to allocate one",
        holder(.owner)
    )]
    InUse {
        /// The address.
        addr: Ipv4Addr,
        /// The NetworkInterface that holds it.
        owner: String,
    },
    /// Every address of the range is taken.
    #[error(
        "no free address left in {start}..={end} of subnet {cidr}; widen rangeStart/rangeEnd, remove reserved addresses or delete unused interfaces"
    )]
    Exhausted {
        /// The subnet.
        cidr: Ipv4Net,
        /// First address of the range.
        start: Ipv4Addr,
        /// Last address of the range.
        end: Ipv4Addr,
    },
}

/// What one Subnet's spec allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    start: u32,
    end: u32,
    reserved: BTreeSet<Ipv4Addr>,
}

impl Pool {
    /// The pool of a validated Subnet spec. A range bound outside the subnet is clamped to
    /// its host addresses (validation refuses such specs; the clamp keeps this total).
    pub fn new(spec: &SubnetSpec) -> Pool {
        let network = u32::from(spec.cidr.network());
        let broadcast = u32::from(spec.cidr.broadcast());
        let first_host = network.saturating_add(1).min(broadcast);
        let last_host = broadcast.saturating_sub(1).max(network);
        let clamp = |addr: u32| addr.clamp(first_host, last_host);
        let start = spec.range_start.map_or(first_host, |a| clamp(u32::from(a)));
        let end = spec.range_end.map_or(last_host, |a| clamp(u32::from(a)));
        // Validation refuses rangeStart > rangeEnd; ordering them keeps this total.
        let (start, end) = (start.min(end), start.max(end));
        Pool {
            cidr: spec.cidr,
            gateway: spec.gateway,
            start,
            end,
            reserved: spec.reserved.iter().copied().collect(),
        }
    }

    /// The subnet.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The first and last address of the allocation range.
    pub fn range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (Ipv4Addr::from(self.start), Ipv4Addr::from(self.end))
    }

    /// Checks that `addr` may be an interface's address at all: inside the subnet, not the
    /// network, broadcast or gateway address.
    ///
    /// # Errors
    /// The [`IpamError`] that says why not.
    pub fn check_host(&self, addr: Ipv4Addr) -> Result<(), IpamError> {
        let cidr = self.cidr;
        if !cidr.contains(&addr) {
            Err(IpamError::OutsideSubnet { addr, cidr })
        } else if addr == cidr.network() {
            Err(IpamError::NetworkAddress { addr, cidr })
        } else if addr == cidr.broadcast() {
            Err(IpamError::BroadcastAddress { addr, cidr })
        } else if addr == self.gateway {
            Err(IpamError::GatewayAddress { addr, cidr })
        } else {
            Ok(())
        }
    }

    /// True when automatic allocation may hand out `addr`.
    pub fn is_allocatable(&self, addr: Ipv4Addr) -> bool {
        let value = u32::from(addr);
        (self.start..=self.end).contains(&value)
            && self.check_host(addr).is_ok()
            && !self.reserved.contains(&addr)
    }

    /// How many addresses automatic allocation could still hand out, given the held ones.
    pub fn available<'a>(&self, held: impl IntoIterator<Item = &'a Ipv4Addr>) -> u64 {
        let size = u64::from(self.end - self.start) + 1;
        let mut excluded: BTreeSet<Ipv4Addr> = self
            .reserved
            .iter()
            .copied()
            .chain([self.gateway, self.cidr.network(), self.cidr.broadcast()])
            .filter(|a| (self.start..=self.end).contains(&u32::from(*a)))
            .collect();
        excluded.extend(held.into_iter().filter(|a| self.is_allocatable(**a)));
        size.saturating_sub(u64::try_from(excluded.len()).unwrap_or(u64::MAX))
    }
}

/// The addresses held in one Subnet and the allocation cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    owners: BTreeMap<Ipv4Addr, String>,
    /// The last address handed out automatically; the next search starts after it.
    pub last: Option<Ipv4Addr>,
}

impl Leases {
    /// Leases with nothing held and the given cursor.
    pub fn new(last: Option<Ipv4Addr>) -> Leases {
        Leases {
            owners: BTreeMap::new(),
            last,
        }
    }

    /// Who holds `addr`, if anyone.
    pub fn owner(&self, addr: Ipv4Addr) -> Option<&str> {
        self.owners.get(&addr).map(String::as_str)
    }

    /// Every held address.
    pub fn held(&self) -> impl Iterator<Item = &Ipv4Addr> {
        self.owners.keys()
    }

    /// Records that `owner` holds `addr`, without checks (used to restore state).
    pub fn insert(&mut self, addr: Ipv4Addr, owner: &str) {
        self.owners.insert(addr, owner.to_string());
    }

    /// Gives `owner` the static address `addr`. Holding it already is fine.
    ///
    /// # Errors
    /// When `addr` is not a valid host address of the pool, or another owner holds it.
    pub fn lease_static(
        &mut self,
        pool: &Pool,
        addr: Ipv4Addr,
        owner: &str,
    ) -> Result<(), IpamError> {
        pool.check_host(addr)?;
        match self.owners.get(&addr) {
            Some(current) if current != owner => Err(IpamError::InUse {
                addr,
                owner: current.clone(),
            }),
            _ => {
                self.owners.insert(addr, owner.to_string());
                Ok(())
            }
        }
    }

    /// Hands `owner` the next free address after the cursor, wrapping around the range, and
    /// moves the cursor to it.
    ///
    /// # Errors
    /// [`IpamError::Exhausted`] when no address of the range is free.
    pub fn allocate(&mut self, pool: &Pool, owner: &str) -> Result<Ipv4Addr, IpamError> {
        let start = u64::from(pool.start);
        let size = u64::from(pool.end) - start + 1;
        let first = match self.last.map(u32::from) {
            Some(last) if (pool.start..pool.end).contains(&last) => u64::from(last) + 1,
            _ => start,
        };
        // Walk the whole range once from `first`, wrapping at `end` back to `start`.
        for step in 0..size {
            let offset = (first - start + step) % size;
            let Ok(value) = u32::try_from(start + offset) else {
                break; // start + offset <= end, a u32: cannot happen.
            };
            let addr = Ipv4Addr::from(value);
            if pool.is_allocatable(addr) && !self.owners.contains_key(&addr) {
                self.owners.insert(addr, owner.to_string());
                self.last = Some(addr);
                return Ok(addr);
            }
        }
        let (start, end) = pool.range();
        Err(IpamError::Exhausted {
            cidr: pool.cidr,
            start,
            end,
        })
    }

    /// Releases every address `owner` holds; returns them.
    pub fn release(&mut self, owner: &str) -> Vec<Ipv4Addr> {
        let addrs: Vec<Ipv4Addr> = self
            .owners
            .iter()
            .filter(|(_, o)| o.as_str() == owner)
            .map(|(a, _)| *a)
            .collect();
        for addr in &addrs {
            self.owners.remove(addr);
        }
        addrs
    }
}

/// Most addresses an IPv6 range spans by default (a /64 has 2^64; a walk for a free address
/// never needs more than the held ones plus one, but `available` reports this bound).
pub const DEFAULT_RANGE6: u128 = 1 << 32;

/// What one Subnet's `spec.ipv6` allows: as [`Pool`], for IPv6. The Subnet-Router anycast
/// address (the prefix itself) and the gateway are never handed out; IPv6 has no broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool6 {
    cidr: Ipv6Net,
    gateway: Ipv6Addr,
    start: u128,
    end: u128,
    reserved: BTreeSet<Ipv6Addr>,
}

impl Pool6 {
    /// The pool of a validated `spec.ipv6` (bounds outside the prefix are clamped).
    pub fn new(spec: &SubnetIpv6) -> Pool6 {
        let network = u128::from(spec.cidr.network());
        let last = u128::from(spec.cidr.broadcast());
        let first_host = network.saturating_add(1).min(last);
        let clamp = |addr: Ipv6Addr| u128::from(addr).clamp(first_host, last);
        let start = spec.range_start.map_or(first_host, clamp);
        let end = spec
            .range_end
            .map_or_else(|| last.min(start.saturating_add(DEFAULT_RANGE6 - 1)), clamp);
        Pool6 {
            cidr: spec.cidr,
            gateway: spec.gateway(),
            start: start.min(end),
            end: start.max(end),
            reserved: spec.reserved.iter().copied().collect(),
        }
    }

    /// The prefix.
    pub fn cidr(&self) -> Ipv6Net {
        self.cidr
    }

    /// Checks that `addr` may be an interface's address: inside the prefix, neither the
    /// Subnet-Router anycast address nor the gateway.
    ///
    /// # Errors
    /// A message that says why not.
    pub fn check_host(&self, addr: Ipv6Addr) -> Result<(), String> {
        let cidr = self.cidr;
        if !cidr.contains(&addr) {
            Err(format!(
                "address {addr} is outside {cidr}; use an address inside the Subnet's ipv6 prefix"
            ))
        } else if addr == cidr.network() {
            Err(format!(
                "address {addr} is the Subnet-Router anycast address of {cidr}; use another address"
            ))
        } else if addr == self.gateway {
            Err(format!(
                "address {addr} is the IPv6 gateway of {cidr} (owned by the switch); use another address"
            ))
        } else {
            Ok(())
        }
    }

    /// True when automatic allocation may hand out `addr`.
    pub fn is_allocatable(&self, addr: Ipv6Addr) -> bool {
        (self.start..=self.end).contains(&u128::from(addr))
            && self.check_host(addr).is_ok()
            && !self.reserved.contains(&addr)
    }

    /// How many addresses automatic allocation could still hand out (saturating).
    pub fn available<'a>(&self, held: impl IntoIterator<Item = &'a Ipv6Addr>) -> u64 {
        let size = u64::try_from(self.end - self.start + 1).unwrap_or(u64::MAX);
        let mut excluded: BTreeSet<Ipv6Addr> = self
            .reserved
            .iter()
            .copied()
            .chain([self.gateway, self.cidr.network()])
            .filter(|a| (self.start..=self.end).contains(&u128::from(*a)))
            .collect();
        excluded.extend(held.into_iter().filter(|a| self.is_allocatable(**a)));
        size.saturating_sub(u64::try_from(excluded.len()).unwrap_or(u64::MAX))
    }
}

/// The IPv6 addresses held in one Subnet and the allocation cursor (as [`Leases`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases6 {
    owners: BTreeMap<Ipv6Addr, String>,
    /// The last address handed out automatically.
    pub last: Option<Ipv6Addr>,
}

impl Leases6 {
    /// Every held address.
    pub fn held(&self) -> impl Iterator<Item = &Ipv6Addr> {
        self.owners.keys()
    }

    /// Records that `owner` holds `addr`.
    pub fn insert(&mut self, addr: Ipv6Addr, owner: &str) {
        self.owners.insert(addr, owner.to_string());
    }

    /// Releases what `owner` holds.
    pub fn release(&mut self, owner: &str) {
        self.owners.retain(|_, o| o != owner);
    }

    /// Gives `owner` the static address `addr`.
    ///
    /// # Errors
    /// `(conflict, message)`: not a host address of the pool (false), or held by another
    /// owner (true).
    pub fn lease_static(
        &mut self,
        pool: &Pool6,
        addr: Ipv6Addr,
        owner: &str,
    ) -> Result<(), (bool, String)> {
        pool.check_host(addr).map_err(|why| (false, why))?;
        match self.owners.get(&addr) {
            Some(current) if current != owner => Err((
                true,
                format!(
                    "address {addr} is already used by {}; choose a free address or leave ipv6 empty to allocate one",
                    holder(current)
                ),
            )),
            _ => {
                self.owners.insert(addr, owner.to_string());
                Ok(())
            }
        }
    }

    /// Hands `owner` the next free address after the cursor, wrapping around the range.
    /// The walk passes at most the held and reserved addresses, so it is short even in a
    /// /64.
    ///
    /// # Errors
    /// A message when no address of the range is free.
    pub fn allocate(&mut self, pool: &Pool6, owner: &str) -> Result<Ipv6Addr, String> {
        let size = pool.end - pool.start + 1;
        let first = match self.last.map(u128::from) {
            Some(last) if (pool.start..pool.end).contains(&last) => last + 1,
            _ => pool.start,
        };
        let bound = u128::try_from(self.owners.len() + pool.reserved.len() + 3)
            .unwrap_or(u128::MAX)
            .min(size);
        for step in 0..bound {
            let addr = Ipv6Addr::from(pool.start + (first - pool.start + step) % size);
            if pool.is_allocatable(addr) && !self.owners.contains_key(&addr) {
                self.owners.insert(addr, owner.to_string());
                self.last = Some(addr);
                return Ok(addr);
            }
        }
        Err(format!(
            "no free IPv6 address left in {}..={} of {}; widen ipv6.rangeStart/rangeEnd or delete unused interfaces",
            Ipv6Addr::from(pool.start),
            Ipv6Addr::from(pool.end),
            pool.cidr
        ))
    }
}

/// Who holds a leased address, as messages name it: `LoadBalancer "web"` for a
/// LoadBalancer's (owner `LoadBalancer/web`), else `NetworkInterface "c1"`.
fn holder(owner: &str) -> String {
    match owner.strip_prefix("LoadBalancer/") {
        Some(name) => format!("LoadBalancer {name:?}"),
        None => format!("NetworkInterface {owner:?}"),
    }
}

/// The IPv6 leases of every Subnet with a prefix, rebuilt from the interfaces' status and
/// the LoadBalancers' IPv6 addresses inside a Subnet of their Network.
pub fn leases6(state: &State) -> BTreeMap<String, Leases6> {
    let mut all: BTreeMap<String, Leases6> = state
        .subnets
        .iter()
        .filter(|(_, s)| s.spec.ipv6.is_some())
        .map(|(name, _)| {
            let last = state.ipam.get(name).and_then(|i| i.last_allocated_v6);
            (
                name.clone(),
                Leases6 {
                    owners: BTreeMap::new(),
                    last,
                },
            )
        })
        .collect();
    for nic in state.network_interfaces.values() {
        if let (Some(leases), Some(ip)) = (all.get_mut(&nic.spec.subnet), nic.status.ipv6) {
            leases.insert(ip.addr(), &nic.metadata.key());
        }
    }
    for balancer in state.load_balancers.values() {
        let owner = format!("LoadBalancer/{}", balancer.metadata.key());
        for address in balancer.spec.ips.iter().chain(&balancer.status.ips) {
            let std::net::IpAddr::V6(address) = address else {
                continue;
            };
            let subnet = state.subnets.iter().find(|(_, s)| {
                s.spec.network == balancer.spec.network
                    && s.spec
                        .ipv6
                        .as_ref()
                        .is_some_and(|p| p.cidr.contains(address))
            });
            if let Some(leases) = subnet.and_then(|(name, _)| all.get_mut(name)) {
                leases.insert(*address, &owner);
            }
        }
    }
    all
}

/// The leases of every Subnet, rebuilt from the interfaces' status, with the persisted
/// cursors. Addresses of interfaces whose subnet is missing are ignored.
pub fn leases(state: &State) -> BTreeMap<String, Leases> {
    let mut all: BTreeMap<String, Leases> = state
        .subnets
        .keys()
        .map(|name| {
            let last = state.ipam.get(name).and_then(|i| i.last_allocated);
            (name.clone(), Leases::new(last))
        })
        .collect();
    for nic in state.network_interfaces.values() {
        if let Some(leases) = all.get_mut(&nic.spec.subnet) {
            for ip in &nic.status.ips {
                leases.insert(ip.addr(), &nic.metadata.key());
            }
        }
    }
    // LoadBalancer addresses inside a Subnet of their Network: the spec's and the allocated.
    for balancer in state.load_balancers.values() {
        let owner = format!("LoadBalancer/{}", balancer.metadata.key());
        let addresses = balancer.spec.ips.iter().chain(&balancer.status.ips);
        for address in addresses {
            let std::net::IpAddr::V4(address) = address else {
                continue;
            };
            let subnet = state.subnets.iter().find(|(_, s)| {
                s.spec.network == balancer.spec.network && s.spec.cidr.contains(address)
            });
            if let Some(leases) = subnet.and_then(|(name, _)| all.get_mut(name)) {
                leases.insert(*address, &owner);
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(cidr: &str, gateway: &str) -> SubnetSpec {
        SubnetSpec {
            network: "n".into(),
            cidr: cidr.parse().unwrap(),
            gateway: gateway.parse().unwrap(),
            mtu: 1500,
            range_start: None,
            range_end: None,
            reserved: Vec::new(),
            mac_ageing_seconds: 300,
            mac_table_limit: 8192,
            gateway_mac: None,
            vni: None,
            vlan: None,
            remote_vteps: Vec::new(),
            shared_gateway: false,
            dns: None,
            dhcp: None,
            ipv6: None,
        }
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn allocates_sequentially_skipping_gateway_and_reserved() {
        let mut s = spec("10.0.0.0/29", "10.0.0.1");
        s.reserved = vec![ip("10.0.0.3")];
        let pool = Pool::new(&s);
        assert_eq!(pool.range(), (ip("10.0.0.1"), ip("10.0.0.6")));
        let mut leases = Leases::default();
        let got: Vec<_> = (0..4)
            .map(|i| leases.allocate(&pool, &format!("i{i}")).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                ip("10.0.0.2"),
                ip("10.0.0.4"),
                ip("10.0.0.5"),
                ip("10.0.0.6")
            ]
        );
        let err = leases.allocate(&pool, "x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free address left in 10.0.0.1..=10.0.0.6 of subnet 10.0.0.0/29; widen \
             rangeStart/rangeEnd, remove reserved addresses or delete unused interfaces"
        );
        assert_eq!(pool.available(leases.held()), 0);
    }

    #[test]
    fn continues_after_the_last_and_wraps() {
        let pool = Pool::new(&spec("10.0.0.0/29", "10.0.0.1"));
        let mut leases = Leases::default();
        assert_eq!(leases.allocate(&pool, "a").unwrap(), ip("10.0.0.2"));
        assert_eq!(leases.allocate(&pool, "b").unwrap(), ip("10.0.0.3"));
        assert_eq!(leases.release("a"), vec![ip("10.0.0.2")]);
        // Not .2 again at once: host-local continues after the last handed out.
        assert_eq!(leases.allocate(&pool, "c").unwrap(), ip("10.0.0.4"));
        assert_eq!(leases.allocate(&pool, "d").unwrap(), ip("10.0.0.5"));
        assert_eq!(leases.allocate(&pool, "e").unwrap(), ip("10.0.0.6"));
        // Range end reached: wrap around to the freed .2.
        assert_eq!(leases.allocate(&pool, "f").unwrap(), ip("10.0.0.2"));
        assert_eq!(leases.last, Some(ip("10.0.0.2")));
    }

    #[test]
    fn cursor_outside_a_changed_range_restarts_at_the_start() {
        let mut s = spec("10.0.0.0/24", "10.0.0.1");
        s.range_start = Some(ip("10.0.0.100"));
        s.range_end = Some(ip("10.0.0.110"));
        let pool = Pool::new(&s);
        let mut leases = Leases::new(Some(ip("10.0.0.7")));
        assert_eq!(leases.allocate(&pool, "a").unwrap(), ip("10.0.0.100"));
        let mut leases = Leases::new(Some(ip("10.0.0.110")));
        assert_eq!(leases.allocate(&pool, "a").unwrap(), ip("10.0.0.100"));
    }

    #[test]
    fn static_addresses() {
        let mut s = spec("10.0.0.0/24", "10.0.0.1");
        s.range_start = Some(ip("10.0.0.100"));
        s.reserved = vec![ip("10.0.0.150")];
        let pool = Pool::new(&s);
        let mut leases = Leases::default();
        // Outside the range and on a reserved address is fine for a static address.
        leases.lease_static(&pool, ip("10.0.0.5"), "a").unwrap();
        leases.lease_static(&pool, ip("10.0.0.150"), "a").unwrap();
        leases.lease_static(&pool, ip("10.0.0.5"), "a").unwrap();
        assert_eq!(
            leases
                .lease_static(&pool, ip("10.0.0.5"), "b")
                .unwrap_err()
                .to_string(),
            "address 10.0.0.5 is already used by NetworkInterface \"a\"; choose a free address \
             or leave ips empty to allocate one"
        );
        let cases = [
            ("10.0.1.5", "is outside subnet 10.0.0.0/24"),
            ("10.0.0.0", "is the network address"),
            ("10.0.0.255", "is the broadcast address"),
            ("10.0.0.1", "is the gateway"),
        ];
        for (addr, want) in cases {
            let err = leases
                .lease_static(&pool, ip(addr), "b")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{addr}: {err}");
        }
        assert_eq!(leases.release("a").len(), 2);
        assert_eq!(leases.owner(ip("10.0.0.5")), None);
    }

    #[test]
    fn available_counts_the_range() {
        let mut s = spec("10.0.0.0/24", "10.0.0.1");
        s.reserved = vec![ip("10.0.0.2"), ip("10.0.1.1")];
        let pool = Pool::new(&s);
        // 254 hosts minus gateway minus one reserved inside.
        assert_eq!(pool.available([]), 252);
        let held = [ip("10.0.0.3"), ip("10.0.0.2"), ip("10.0.0.1")];
        assert_eq!(pool.available(&held), 251);
    }

    #[test]
    fn slash_30_has_one_address() {
        let pool = Pool::new(&spec("10.0.0.0/30", "10.0.0.1"));
        let mut leases = Leases::default();
        assert_eq!(leases.allocate(&pool, "a").unwrap(), ip("10.0.0.2"));
        assert!(leases.allocate(&pool, "b").is_err());
    }

    proptest! {
        #[test]
        fn allocation_invariants(
            prefix in 24u8..=30,
            base in any::<u32>(),
            gateway_offset in 1u32..4,
            reserved_offsets in proptest::collection::vec(0u32..64, 0..6),
            ops in proptest::collection::vec((any::<bool>(), 0u8..8), 1..80),
        ) {
            let net = Ipv4Net::new(Ipv4Addr::from(base), prefix).unwrap().trunc();
            let network = u32::from(net.network());
            let broadcast = u32::from(net.broadcast());
            let gateway = Ipv4Addr::from((network + gateway_offset).min(broadcast - 1));
            let mut s = spec(&net.to_string(), &gateway.to_string());
            s.reserved = reserved_offsets
                .iter()
                .map(|o| Ipv4Addr::from(network + o % (broadcast - network + 1)))
                .collect();
            let pool = Pool::new(&s);
            let allocatable = (network..=broadcast)
                .map(Ipv4Addr::from)
                .filter(|a| pool.is_allocatable(*a))
                .count();
            let mut leases = Leases::default();
            for (allocate, owner) in ops {
                let owner = format!("o{owner}");
                if allocate {
                    let before = pool.available(leases.held());
                    match leases.allocate(&pool, &owner) {
                        Ok(addr) => {
                            prop_assert!(pool.is_allocatable(addr));
                            prop_assert!(pool.check_host(addr).is_ok());
                            prop_assert!(!s.reserved.contains(&addr));
                            prop_assert_eq!(pool.available(leases.held()), before - 1);
                        }
                        Err(_) => {
                            prop_assert_eq!(before, 0);
                            prop_assert_eq!(leases.held().count(), allocatable);
                        }
                    }
                } else {
                    leases.release(&owner);
                }
                let held: Vec<_> = leases.held().copied().collect();
                let unique: BTreeSet<_> = held.iter().copied().collect();
                prop_assert_eq!(held.len(), unique.len());
                prop_assert!(held.len() <= allocatable);
            }
        }
    }
}
