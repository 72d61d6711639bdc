//! NAT configuration as the datapath sees it, and the decision for a connection's first
//! packet: [`NatRules::plan`] -> [`NatPlan`].
//!
//! The control plane compiles the NATGateway, PortForward and VirtualIP resources into one
//! immutable [`NatRules`] (part of the published snapshot). Workers consult it only on a
//! conntrack miss; every later packet of the flow takes its translation from the entry.
//!
//! # Decisions
//! 1. **DNAT** (any source zone): a TCP/UDP packet to a PortForward's `address:port` goes to
//!    its target; any packet to a VirtualIP's public address goes to the private address (port
//!    kept). Applying it to inside sources too is what makes hairpinning work.
//! 2. **Route**: the caller's routing function says where the (post-DNAT) packet leaves:
//!    [`Egress::External`] (the uplink) or [`Egress::Zone`] (a Network). A DNATed packet goes
//!    to the target's zone.
//! 3. **SNAT**, only for sources inside a Network, when the packet leaves through the uplink
//!    or was DNATed (hairpin, or one container reaching another's public address): the
//!    source's VirtualIP if it has one (1:1, port kept), else the Network's NATGateway
//!    (masquerade with endpoint-independent mapping), else nothing. Leaving through the
//!    uplink with no NAT address is refused ([`PlanError::NoExternalAddress`]): a private
//!    address must not leak.
//! 4. The **reply zone**, where replies will arrive: [`Zone::EXTERNAL`] when leaving through
//!    the uplink, else the destination's zone.
//!
//! Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): container A in Network Z connects to
//! `N:P`, forwarded to container B in Z. The plan DNATs to B and SNATs A to its own external
//! mapping, with reply zone Z, so B sees A's external address and B's replies come back
//! through the switch and are translated back (both ways) before A sees them.
//!
//! Unsolicited inbound traffic (from [`Zone::EXTERNAL`] to no forward or virtual IP) is
//! refused ([`PlanError::Unsolicited`]): masquerade mappings filter by address and port
//! (RFC 4787 "address and port-dependent filtering", what Linux masquerade does).

use std::collections::HashMap;
use std::net::IpAddr;

use crate::ports::{Gateway, InterfaceId};
use crate::tuple::{Endpoint, FlowKey, Protocol, Zone};

/// A PortForward: `address:port` on the uplink reaches a container's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortForward {
    /// The uplink address.
    pub address: IpAddr,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on the uplink address.
    pub port: u16,
    /// The Network of the target.
    pub zone: Zone,
    /// The container's address and port.
    pub target: Endpoint,
}

/// A VirtualIP: a public address mapped 1:1 to a container's private address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VirtualIp {
    /// The public (uplink) address.
    pub public: IpAddr,
    /// The Network of the container.
    pub zone: Zone,
    /// The container's address.
    pub private: IpAddr,
}

/// A DNAT decision: where the packet really goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dnat {
    /// The new destination.
    pub target: Endpoint,
    /// The zone it lives in.
    pub zone: Zone,
}

/// Where a packet leaves, as the routing stage decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Egress {
    /// Through the uplink, to the outside.
    External,
    /// Into a Network.
    Zone(Zone),
}

/// How a new connection's source is translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Snat<'a> {
    /// Not at all.
    None,
    /// To a fixed address, port kept (a VirtualIP's outbound traffic).
    Static(IpAddr),
    /// Masquerade through a NATGateway, with a port from the interface's blocks.
    Masquerade {
        /// The gateway.
        gateway: &'a Gateway,
        /// The interface the flow comes from (owner of the port blocks).
        interface: InterfaceId,
    },
}

/// Everything conntrack needs to create a connection's NAT state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPlan<'a> {
    /// The new destination, if DNATed.
    pub dnat: Option<Endpoint>,
    /// The source translation.
    pub snat: Snat<'a>,
    /// The zone replies arrive in.
    pub reply_zone: Zone,
}

impl NatPlan<'_> {
    /// No translation; replies come back in `zone`.
    pub const fn none(zone: Zone) -> NatPlan<'static> {
        NatPlan {
            dnat: None,
            snat: Snat::None,
            reply_zone: zone,
        }
    }
}

/// Why no plan could be made for a new flow. The datapath drops and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PlanError {
    /// From outside to an address and port with no forward or virtual IP.
    #[error("unsolicited packet from outside (no port forward or virtual IP)")]
    Unsolicited,
    /// Leaving through the uplink from a Network with no NATGateway or VirtualIP.
    #[error("no NAT address for traffic leaving the network")]
    NoExternalAddress,
}

impl PlanError {
    /// The stable counter key (`nat.<reason>`).
    pub const fn key(self) -> &'static str {
        match self {
            PlanError::Unsolicited => "nat.unsolicited",
            PlanError::NoExternalAddress => "nat.no_external_address",
        }
    }
}

/// A rule that contradicts one already added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// The zone already has a NATGateway.
    #[error("network {zone} already has a NAT gateway")]
    DuplicateGateway {
        /// The zone.
        zone: Zone,
    },
    /// A gateway with no address, a zero block size or an empty port range.
    #[error("NAT gateway of network {zone}: {reason}")]
    InvalidGateway {
        /// The zone.
        zone: Zone,
        /// What is wrong, and what is valid.
        reason: &'static str,
    },
    /// The address is already used by a gateway of another zone or by a virtual IP.
    #[error("address {address} is already used by {used_by}")]
    AddressInUse {
        /// The address.
        address: IpAddr,
        /// What uses it ("the NAT gateway of network 3", "virtual IP of 172.30.0.5").
        used_by: String,
    },
    /// The same address, protocol and port is forwarded twice.
    #[error("{protocol} {address}:{port} is already forwarded")]
    DuplicateForward {
        /// The address.
        address: IpAddr,
        /// The protocol.
        protocol: Protocol,
        /// The port.
        port: u16,
    },
    /// A forward's or virtual IP's two addresses are of different families (no NAT46).
    #[error("{public} and {private} are of different address families")]
    AddressFamily {
        /// The public (uplink) address.
        public: IpAddr,
        /// The container's address.
        private: IpAddr,
    },
    /// Port forwards are TCP or UDP only.
    #[error("port forwards are tcp or udp, not {protocol}")]
    ForwardProtocol {
        /// The protocol given.
        protocol: Protocol,
    },
    /// The container already has a virtual IP.
    #[error("{private} in network {zone} already has virtual IP {public}")]
    DuplicatePrivate {
        /// The zone.
        zone: Zone,
        /// The container's address.
        private: IpAddr,
        /// Its virtual IP.
        public: IpAddr,
    },
}

/// The compiled NAT configuration.
#[derive(Clone, Debug, Default)]
pub struct NatRules {
    gateways: HashMap<Zone, Gateway>,
    forwards: HashMap<(IpAddr, Protocol, u16), PortForward>,
    vips: HashMap<IpAddr, VirtualIp>,
    vips_by_private: HashMap<(Zone, IpAddr), IpAddr>,
}

impl NatRules {
    /// No NAT at all.
    pub fn new() -> NatRules {
        NatRules::default()
    }

    /// Adds the NATGateway of `zone`.
    ///
    /// # Errors
    /// [`RulesError`] when the zone has one already, the gateway is invalid (no address, zero
    /// block size or block count, empty range), or one of its addresses is a virtual IP or
    /// another zone's NAT address.
    pub fn add_gateway(&mut self, zone: Zone, mut gateway: Gateway) -> Result<(), RulesError> {
        if self.gateways.contains_key(&zone) {
            return Err(RulesError::DuplicateGateway { zone });
        }
        let invalid = |reason| Err(RulesError::InvalidGateway { zone, reason });
        if gateway.ips.is_empty() {
            return invalid("no NAT address; list at least one uplink address in ips");
        }
        if gateway.ports_per_interface == 0 || gateway.blocks_per_interface == 0 {
            return invalid("portsPerNetworkInterface and the block count must be at least 1");
        }
        if gateway.port_range.is_empty() {
            return invalid("the port range is empty; use first <= last");
        }
        for &address in &gateway.ips {
            if let Some(vip) = self.vips.get(&address) {
                return Err(RulesError::AddressInUse {
                    address,
                    used_by: format!("the virtual IP of {}", vip.private),
                });
            }
            if let Some((other, _)) = self.gateways.iter().find(|(_, g)| g.ips.contains(&address)) {
                return Err(RulesError::AddressInUse {
                    address,
                    used_by: format!("the NAT gateway of network {other}"),
                });
            }
        }
        gateway.reserved = self
            .forwards
            .keys()
            .filter(|(address, _, _)| gateway.ips.contains(address))
            .copied()
            .collect();
        gateway.reserved.sort_unstable();
        self.gateways.insert(zone, gateway);
        Ok(())
    }

    /// Adds a PortForward. A forwarded port on a NAT address is never used for masquerade.
    ///
    /// # Errors
    /// [`RulesError`] when the protocol is not TCP/UDP, the address and port are forwarded
    /// already, or the address is a virtual IP.
    pub fn add_port_forward(&mut self, forward: PortForward) -> Result<(), RulesError> {
        if forward.protocol == Protocol::Icmp {
            return Err(RulesError::ForwardProtocol {
                protocol: forward.protocol,
            });
        }
        if forward.address.is_ipv6() != forward.target.addr.is_ipv6() {
            return Err(RulesError::AddressFamily {
                public: forward.address,
                private: forward.target.addr,
            });
        }
        let key = (forward.address, forward.protocol, forward.port);
        if self.forwards.contains_key(&key) {
            return Err(RulesError::DuplicateForward {
                address: forward.address,
                protocol: forward.protocol,
                port: forward.port,
            });
        }
        if let Some(vip) = self.vips.get(&forward.address) {
            return Err(RulesError::AddressInUse {
                address: forward.address,
                used_by: format!("the virtual IP of {}", vip.private),
            });
        }
        self.forwards.insert(key, forward);
        for gateway in self.gateways.values_mut() {
            if gateway.ips.contains(&forward.address) {
                if let Err(at) = gateway.reserved.binary_search(&key) {
                    gateway.reserved.insert(at, key);
                }
            }
        }
        Ok(())
    }

    /// Adds a VirtualIP.
    ///
    /// # Errors
    /// [`RulesError`] when the public address is a NAT address, another virtual IP or a
    /// port-forwarded address, or the container already has a virtual IP.
    pub fn add_virtual_ip(&mut self, vip: VirtualIp) -> Result<(), RulesError> {
        let address = vip.public;
        if address.is_ipv6() != vip.private.is_ipv6() {
            return Err(RulesError::AddressFamily {
                public: address,
                private: vip.private,
            });
        }
        if let Some(other) = self.vips.get(&address) {
            return Err(RulesError::AddressInUse {
                address,
                used_by: format!("the virtual IP of {}", other.private),
            });
        }
        if let Some((zone, _)) = self.gateways.iter().find(|(_, g)| g.ips.contains(&address)) {
            return Err(RulesError::AddressInUse {
                address,
                used_by: format!("the NAT gateway of network {zone}"),
            });
        }
        if let Some(forward) = self.forwards.values().find(|f| f.address == address) {
            return Err(RulesError::AddressInUse {
                address,
                used_by: format!("a port forward to {}", forward.target),
            });
        }
        if let Some(&public) = self.vips_by_private.get(&(vip.zone, vip.private)) {
            return Err(RulesError::DuplicatePrivate {
                zone: vip.zone,
                private: vip.private,
                public,
            });
        }
        self.vips.insert(address, vip);
        self.vips_by_private
            .insert((vip.zone, vip.private), address);
        Ok(())
    }

    /// The NATGateway of `zone`.
    pub fn gateway(&self, zone: Zone) -> Option<&Gateway> {
        self.gateways.get(&zone)
    }

    /// The virtual IP of a container, if it has one.
    pub fn virtual_ip_of(&self, zone: Zone, private: IpAddr) -> Option<IpAddr> {
        self.vips_by_private.get(&(zone, private)).copied()
    }

    /// True when `address` is one the NAT owns (a NAT address, virtual IP or forwarded
    /// address): the uplink answers ARP for these and hands their packets to conntrack.
    pub fn owns(&self, address: IpAddr) -> bool {
        self.vips.contains_key(&address)
            || self.gateways.values().any(|g| g.ips.contains(&address))
            || self.forwards.keys().any(|(a, _, _)| *a == address)
    }

    /// The DNAT decision for a packet, from any zone (see the module doc).
    pub fn destination(&self, key: &FlowKey) -> Option<Dnat> {
        let dst = key.tuple.dst;
        if let Some(forward) = self
            .forwards
            .get(&(dst, key.tuple.protocol, key.tuple.dst_port))
        {
            return Some(Dnat {
                target: forward.target,
                zone: forward.zone,
            });
        }
        self.vips.get(&dst).map(|vip| Dnat {
            target: Endpoint::new(vip.private, key.tuple.dst_port),
            zone: vip.zone,
        })
    }

    /// The NAT decision for the first packet of a flow (see the module doc). `interface` is
    /// the NetworkInterface the packet came from (ignored for outside sources); `route` is the
    /// routing decision for the packet as it will be after DNAT, called only when the packet
    /// is not DNATed.
    ///
    /// # Errors
    /// [`PlanError::Unsolicited`] for outside packets to nothing forwarded;
    /// [`PlanError::NoExternalAddress`] for inside packets routed to the uplink from a
    /// Network with neither NATGateway nor VirtualIP for the source.
    pub fn plan(
        &self,
        key: &FlowKey,
        interface: InterfaceId,
        route: impl FnOnce(&FlowKey) -> Egress,
    ) -> Result<NatPlan<'_>, PlanError> {
        let dnat = self.destination(key);
        let egress = match dnat {
            Some(d) => Egress::Zone(d.zone),
            None => route(key),
        };
        let reply_zone = match egress {
            Egress::External => Zone::EXTERNAL,
            Egress::Zone(zone) => zone,
        };
        if key.zone == Zone::EXTERNAL {
            return match dnat {
                Some(d) => Ok(NatPlan {
                    dnat: Some(d.target),
                    snat: Snat::None,
                    reply_zone,
                }),
                None if egress == Egress::External => Err(PlanError::Unsolicited),
                // Routed into a Network without translation (no NAT involved).
                None => Ok(NatPlan::none(reply_zone)),
            };
        }
        let needs_snat = egress == Egress::External || dnat.is_some();
        let snat = if !needs_snat {
            Snat::None
        } else if let Some(vip) = self.virtual_ip_of(key.zone, key.tuple.src) {
            Snat::Static(vip)
        } else if let Some(gateway) = self
            .gateways
            .get(&key.zone)
            // A gateway with no address of the flow's family does not NAT it.
            .filter(|g| {
                g.ips
                    .iter()
                    .any(|ip| ip.is_ipv6() == key.tuple.src.is_ipv6())
            })
        {
            Snat::Masquerade { gateway, interface }
        } else if egress == Egress::External {
            return Err(PlanError::NoExternalAddress);
        } else {
            // Hairpin without an external address for the source: DNAT only.
            Snat::None
        };
        Ok(NatPlan {
            dnat: dnat.map(|d| d.target),
            snat,
            reply_zone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::Tuple;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const Z: Zone = Zone(7);
    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 30, 0, 5));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 30, 0, 6));
    const X: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    const N: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    const V: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 50));

    fn ep(addr: IpAddr, port: u16) -> Endpoint {
        Endpoint::new(addr, port)
    }

    fn key(zone: Zone, protocol: Protocol, src: Endpoint, dst: Endpoint) -> FlowKey {
        FlowKey::new(zone, Tuple::new(protocol, src, dst))
    }

    fn rules() -> NatRules {
        let mut rules = NatRules::new();
        rules
            .add_gateway(Z, Gateway::new(vec![N]))
            .expect("gateway");
        rules
            .add_port_forward(PortForward {
                address: N,
                protocol: Protocol::Tcp,
                port: 8080,
                zone: Z,
                target: ep(B, 80),
            })
            .expect("forward");
        rules
            .add_virtual_ip(VirtualIp {
                public: V,
                zone: Z,
                private: B,
            })
            .expect("vip");
        rules
    }

    fn outside(_: &FlowKey) -> Egress {
        Egress::External
    }

    #[test]
    fn masquerade_to_the_outside() {
        let rules = rules();
        let k = key(Z, Protocol::Tcp, ep(A, 40000), ep(X, 443));
        let plan = rules.plan(&k, InterfaceId(1), outside).expect("plans");
        assert_eq!(plan.dnat, None);
        assert_eq!(plan.reply_zone, Zone::EXTERNAL);
        assert!(matches!(
            plan.snat,
            Snat::Masquerade {
                interface: InterfaceId(1),
                ..
            }
        ));
    }

    #[test]
    fn a_container_with_a_virtual_ip_leaves_with_it() {
        let rules = rules();
        let k = key(Z, Protocol::Udp, ep(B, 5000), ep(X, 53));
        let plan = rules.plan(&k, InterfaceId(2), outside).expect("plans");
        assert_eq!(plan.snat, Snat::Static(V));
    }

    #[test]
    fn port_forward_from_outside() {
        let rules = rules();
        let k = key(Zone::EXTERNAL, Protocol::Tcp, ep(X, 5555), ep(N, 8080));
        let plan = rules
            .plan(&k, InterfaceId(0), |_| {
                unreachable!("DNATed flows are not routed")
            })
            .expect("plans");
        assert_eq!(plan.dnat, Some(ep(B, 80)));
        assert_eq!(plan.snat, Snat::None);
        assert_eq!(plan.reply_zone, Z);
    }

    #[test]
    fn virtual_ip_from_outside_keeps_the_port_and_works_for_icmp() {
        let rules = rules();
        let k = key(Zone::EXTERNAL, Protocol::Icmp, ep(X, 9), ep(V, 0));
        let plan = rules.plan(&k, InterfaceId(0), outside).expect("plans");
        assert_eq!(plan.dnat, Some(ep(B, 0)));
        assert_eq!(plan.reply_zone, Z);
    }

    #[test]
    fn hairpin_gets_dnat_and_snat() {
        let rules = rules();
        let k = key(Z, Protocol::Tcp, ep(A, 40000), ep(N, 8080));
        let plan = rules.plan(&k, InterfaceId(1), outside).expect("plans");
        assert_eq!(plan.dnat, Some(ep(B, 80)));
        assert!(matches!(plan.snat, Snat::Masquerade { .. }));
        assert_eq!(plan.reply_zone, Z);
    }

    #[test]
    fn unsolicited_and_unnatted_traffic_is_refused() {
        let rules = rules();
        let k = key(Zone::EXTERNAL, Protocol::Tcp, ep(X, 5555), ep(N, 22));
        assert_eq!(
            rules.plan(&k, InterfaceId(0), outside),
            Err(PlanError::Unsolicited)
        );
        let k = key(Zone(8), Protocol::Tcp, ep(A, 1), ep(X, 443));
        assert_eq!(
            rules.plan(&k, InterfaceId(1), outside),
            Err(PlanError::NoExternalAddress)
        );
    }

    #[test]
    fn traffic_inside_the_network_is_not_translated() {
        let rules = rules();
        let k = key(Z, Protocol::Tcp, ep(A, 1), ep(B, 80));
        let plan = rules
            .plan(&k, InterfaceId(1), |_| Egress::Zone(Z))
            .expect("plans");
        assert_eq!(plan, NatPlan::none(Z));
    }

    #[test]
    fn forwarded_ports_on_a_nat_address_are_reserved_whatever_the_order() {
        let forward = PortForward {
            address: N,
            protocol: Protocol::Udp,
            port: 5353,
            zone: Z,
            target: ep(B, 53),
        };
        let mut first = NatRules::new();
        first.add_port_forward(forward).expect("forward");
        first
            .add_gateway(Z, Gateway::new(vec![N]))
            .expect("gateway");
        let mut second = NatRules::new();
        second
            .add_gateway(Z, Gateway::new(vec![N]))
            .expect("gateway");
        second.add_port_forward(forward).expect("forward");
        for rules in [first, second] {
            let gateway = rules.gateway(Z).expect("gateway");
            assert_eq!(gateway.reserved, vec![(N, Protocol::Udp, 5353)]);
        }
    }

    #[test]
    fn conflicts_are_refused() {
        let mut r = rules();
        assert_eq!(
            r.add_gateway(Z, Gateway::new(vec![IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1))])),
            Err(RulesError::DuplicateGateway { zone: Z })
        );
        assert!(matches!(
            r.add_gateway(Zone(8), Gateway::new(vec![N])),
            Err(RulesError::AddressInUse { .. })
        ));
        assert!(matches!(
            r.add_gateway(Zone(8), Gateway::new(vec![V])),
            Err(RulesError::AddressInUse { .. })
        ));
        assert!(matches!(
            r.add_gateway(Zone(8), Gateway::new(vec![])),
            Err(RulesError::InvalidGateway { .. })
        ));
        assert!(matches!(
            r.add_port_forward(PortForward {
                address: N,
                protocol: Protocol::Tcp,
                port: 8080,
                zone: Z,
                target: ep(A, 1),
            }),
            Err(RulesError::DuplicateForward { .. })
        ));
        assert!(matches!(
            r.add_port_forward(PortForward {
                address: V,
                protocol: Protocol::Tcp,
                port: 1,
                zone: Z,
                target: ep(A, 1),
            }),
            Err(RulesError::AddressInUse { .. })
        ));
        assert!(matches!(
            r.add_port_forward(PortForward {
                address: N,
                protocol: Protocol::Icmp,
                port: 1,
                zone: Z,
                target: ep(A, 1),
            }),
            Err(RulesError::ForwardProtocol { .. })
        ));
        assert!(matches!(
            r.add_virtual_ip(VirtualIp {
                public: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 51)),
                zone: Z,
                private: B,
            }),
            Err(RulesError::DuplicatePrivate { .. })
        ));
        assert!(matches!(
            r.add_virtual_ip(VirtualIp {
                public: N,
                zone: Z,
                private: A,
            }),
            Err(RulesError::AddressInUse { .. })
        ));
        assert!(r.owns(N) && r.owns(V) && !r.owns(X));
        assert_eq!(
            RulesError::DuplicateGateway { zone: Z }.to_string(),
            "network 7 already has a NAT gateway"
        );
    }

    #[test]
    fn ipv6_forwards_virtual_ips_and_masquerade() {
        let n6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50));
        let a6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5));
        let b6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 6));
        let x6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 9));
        let mut r = NatRules::new();
        r.add_gateway(Z, Gateway::new(vec![N, n6]))
            .expect("gateway");
        r.add_port_forward(PortForward {
            address: n6,
            protocol: Protocol::Tcp,
            port: 8080,
            zone: Z,
            target: ep(b6, 80),
        })
        .expect("forward");
        r.add_virtual_ip(VirtualIp {
            public: v6,
            zone: Z,
            private: a6,
        })
        .expect("vip");
        // A gateway without an address of the flow's family does not take it: an IPv6 flow
        // of a Network whose gateway is IPv4 only has no external address.
        let mut only4 = NatRules::new();
        only4
            .add_gateway(Z, Gateway::new(vec![N]))
            .expect("gateway");
        let out6 = key(Z, Protocol::Tcp, ep(a6, 5000), ep(x6, 443));
        assert_eq!(
            only4.plan(&out6, InterfaceId(1), |_| Egress::External),
            Err(PlanError::NoExternalAddress)
        );
        // Mixed families are refused, naming both addresses.
        assert_eq!(
            r.add_port_forward(PortForward {
                address: n6,
                protocol: Protocol::Udp,
                port: 53,
                zone: Z,
                target: ep(B, 53),
            }),
            Err(RulesError::AddressFamily {
                public: n6,
                private: B
            })
        );
        assert!(matches!(
            r.add_virtual_ip(VirtualIp {
                public: V,
                zone: Z,
                private: b6
            }),
            Err(RulesError::AddressFamily { .. })
        ));
        assert!(r.owns(n6) && r.owns(v6) && !r.owns(x6));
        // From outside to the forwarded port: DNAT to the container over IPv6.
        let inbound = key(Zone::EXTERNAL, Protocol::Tcp, ep(x6, 4000), ep(n6, 8080));
        let plan = r
            .plan(&inbound, InterfaceId(0), |_| Egress::External)
            .expect("plan");
        assert_eq!(plan.dnat, Some(ep(b6, 80)));
        // The virtual IP's container leaves 1:1 from it; another masquerades.
        let out = key(Z, Protocol::Udp, ep(a6, 5000), ep(x6, 53));
        let plan = r
            .plan(&out, InterfaceId(1), |_| Egress::External)
            .expect("plan");
        assert_eq!(plan.snat, Snat::Static(v6));
        let out = key(Z, Protocol::Udp, ep(b6, 5000), ep(x6, 53));
        let plan = r
            .plan(&out, InterfaceId(2), |_| Egress::External)
            .expect("plan");
        assert!(matches!(plan.snat, Snat::Masquerade { .. }));
    }
}
