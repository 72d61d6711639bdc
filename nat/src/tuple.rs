//! Flow identity: zones, protocols, endpoints, 5-tuples and conntrack keys.
//!
//! A [`Tuple`] is what one packet carries (protocol, source and destination address and port);
//! a [`FlowKey`] adds the [`Zone`] the packet is seen in. Every connection has two keys: the
//! *original* one (the first packet's) and the *reply* one (what a reply looks like on the wire
//! where it arrives, after the NAT decided for the connection). Both find the connection.
//!
//! Addresses are [`IpAddr`], so the key is ready for IPv6; only IPv4 packets are parsed today.
//!
//! ICMP echo has no ports. Its identifier stands in for one, in a direction-aware way so that a
//! reply key is the plain reversal of a request key:
//! - echo request: `src_port = identifier`, `dst_port = 0`;
//! - echo reply: `src_port = 0`, `dst_port = identifier`.
//!
//! Reversing the request tuple `(A -> B, id, 0)` gives `(B -> A, 0, id)`, exactly the tuple of
//! the matching reply, and an echo *request* from B can never be mistaken for a reply.

use std::fmt;
use std::net::IpAddr;

/// A conntrack zone: the Network a packet is seen in (its resource id), or [`Zone::EXTERNAL`]
/// for the uplink side. Keys in different zones never match each other, so two Networks may
/// reuse the same private addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Zone(pub u32);

impl Zone {
    /// The outside world as seen through the uplink: where masqueraded flows' replies arrive
    /// and where port-forwarded and virtual-IP flows come from.
    pub const EXTERNAL: Zone = Zone(u32::MAX);
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Zone::EXTERNAL {
            f.write_str("external")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// The transport protocols conntrack follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// ICMP echo (IP protocol 1), tracked by identifier.
    Icmp,
}

impl Protocol {
    /// The IP protocol number.
    #[inline]
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
        }
    }

    /// The protocol for an IP protocol number, if conntrack follows it.
    #[inline]
    pub const fn from_number(number: u8) -> Option<Protocol> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            1 => Some(Protocol::Icmp),
            _ => None,
        }
    }

    /// Lower-case name, as shown by the API (`tcp`, `udp`, `icmp`).
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }

    /// A dense index (0, 1, 2), for per-protocol arrays.
    #[inline]
    pub(crate) const fn index(self) -> usize {
        match self {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
            Protocol::Icmp => 2,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An address and a port (for ICMP echo, the identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The address.
    pub addr: IpAddr,
    /// The port or echo identifier.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint from its parts.
    #[inline]
    pub const fn new(addr: IpAddr, port: u16) -> Endpoint {
        Endpoint { addr, port }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(addr) => write!(f, "{addr}:{}", self.port),
            IpAddr::V6(addr) => write!(f, "[{addr}]:{}", self.port),
        }
    }
}

/// A packet's 5-tuple. See the module doc for how ICMP echo fills the ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// The transport protocol.
    pub protocol: Protocol,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (echo request: the identifier; echo reply: 0).
    pub src_port: u16,
    /// Destination port (echo request: 0; echo reply: the identifier).
    pub dst_port: u16,
}

impl Tuple {
    /// A tuple from its source and destination endpoints.
    #[inline]
    pub const fn new(protocol: Protocol, src: Endpoint, dst: Endpoint) -> Tuple {
        Tuple {
            protocol,
            src: src.addr,
            dst: dst.addr,
            src_port: src.port,
            dst_port: dst.port,
        }
    }

    /// The tuple a packet going the other way carries.
    #[inline]
    #[must_use]
    pub const fn reversed(&self) -> Tuple {
        Tuple {
            protocol: self.protocol,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }

    /// The source endpoint.
    #[inline]
    pub const fn source(&self) -> Endpoint {
        Endpoint::new(self.src, self.src_port)
    }

    /// The destination endpoint.
    #[inline]
    pub const fn destination(&self) -> Endpoint {
        Endpoint::new(self.dst, self.dst_port)
    }

    /// The same tuple with the source replaced.
    #[inline]
    #[must_use]
    pub const fn with_source(mut self, source: Endpoint) -> Tuple {
        self.src = source.addr;
        self.src_port = source.port;
        self
    }

    /// The same tuple with the destination replaced.
    #[inline]
    #[must_use]
    pub const fn with_destination(mut self, destination: Endpoint) -> Tuple {
        self.dst = destination.addr;
        self.dst_port = destination.port;
        self
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            self.protocol,
            self.source(),
            self.destination()
        )
    }
}

/// What conntrack is keyed by: a zone and a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The zone the packet is seen in.
    pub zone: Zone,
    /// The packet's tuple.
    pub tuple: Tuple,
}

impl FlowKey {
    /// A key from its parts.
    #[inline]
    pub const fn new(zone: Zone, tuple: Tuple) -> FlowKey {
        FlowKey { zone, tuple }
    }

    /// A cheap, well-mixed hash used only to pick a shard (the shard's map hashes again with a
    /// keyed hasher, so a crafted key can at worst crowd one shard, never degrade a map).
    pub(crate) fn shard_hash(&self) -> u64 {
        fn addr_word(addr: IpAddr) -> u64 {
            match addr {
                IpAddr::V4(v4) => u64::from(u32::from(v4)),
                IpAddr::V6(v6) => {
                    let bits = u128::from(v6);
                    let [a, b] = [bits >> 64, bits & u128::from(u64::MAX)]
                        .map(|half| u64::try_from(half).unwrap_or(u64::MAX));
                    a ^ b.rotate_left(29)
                }
            }
        }
        let t = &self.tuple;
        let mut word = addr_word(t.src) ^ addr_word(t.dst).rotate_left(32);
        word ^= (u64::from(t.src_port) << 16 | u64::from(t.dst_port)).rotate_left(11);
        word ^= u64::from(self.zone.0).rotate_left(43) ^ u64::from(t.protocol.number()) << 56;
        // Fibonacci hashing: the top bits of the product depend on every input bit.
        word.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zone {} {}", self.zone, self.tuple)
    }
}

/// Which way a packet goes relative to the connection's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The direction of the packet that created the connection.
    Original,
    /// The other direction.
    Reply,
}

impl Direction {
    /// The other direction.
    #[inline]
    #[must_use]
    pub const fn opposite(self) -> Direction {
        match self {
            Direction::Original => Direction::Reply,
            Direction::Reply => Direction::Original,
        }
    }

    /// 0 for original, 1 for reply (index into per-direction arrays).
    #[inline]
    pub(crate) const fn index(self) -> usize {
        match self {
            Direction::Original => 0,
            Direction::Reply => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn reversal_swaps_both_ends_and_is_an_involution() {
        let t = Tuple::new(
            Protocol::Udp,
            Endpoint::new(v4(10, 0, 0, 1), 5000),
            Endpoint::new(v4(8, 8, 8, 8), 53),
        );
        let r = t.reversed();
        assert_eq!(r.src, v4(8, 8, 8, 8));
        assert_eq!(r.dst_port, 5000);
        assert_eq!(r.reversed(), t);
    }

    #[test]
    fn echo_request_reversed_is_the_reply_tuple() {
        let request = Tuple {
            protocol: Protocol::Icmp,
            src: v4(10, 0, 0, 1),
            dst: v4(1, 1, 1, 1),
            src_port: 77,
            dst_port: 0,
        };
        let reply = Tuple {
            protocol: Protocol::Icmp,
            src: v4(1, 1, 1, 1),
            dst: v4(10, 0, 0, 1),
            src_port: 0,
            dst_port: 77,
        };
        assert_eq!(request.reversed(), reply);
    }

    #[test]
    fn protocol_numbers_round_trip() {
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
        assert_eq!(Protocol::from_number(47), None);
    }

    #[test]
    fn shard_hash_depends_on_zone_and_ports() {
        let t = Tuple::new(
            Protocol::Tcp,
            Endpoint::new(v4(10, 0, 0, 1), 1),
            Endpoint::new(v4(10, 0, 0, 2), 2),
        );
        let a = FlowKey::new(Zone(1), t).shard_hash();
        assert_ne!(a, FlowKey::new(Zone(2), t).shard_hash());
        assert_ne!(a, FlowKey::new(Zone(1), t.reversed()).shard_hash());
    }

    #[test]
    fn display_is_readable() {
        let t = Tuple::new(
            Protocol::Tcp,
            Endpoint::new(v4(10, 0, 0, 1), 1234),
            Endpoint::new(v4(10, 0, 0, 2), 80),
        );
        assert_eq!(
            FlowKey::new(Zone::EXTERNAL, t).to_string(),
            "zone external tcp 10.0.0.1:1234 -> 10.0.0.2:80"
        );
    }
}
