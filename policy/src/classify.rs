//! The classifier: the verdict on the first packet of a connection.
//!
//! A connection passes when the source's egress allows it *and* the destination's ingress
//! allows it (Kubernetes: "for a connection from a source pod to a destination pod to be
//! allowed, both the egress policy on the source pod and the ingress policy on the
//! destination pod need to allow the connection"). Each side is decided on its own:
//! - the side is outside the switch, or no policy of that direction selects the interface:
//!   [`Verdict::NotIsolated`] (allowed);
//! - else the first rule (policy order, then rule order) of a selecting policy that
//!   matches the remote end, protocol and destination port: [`Verdict::Allowed`];
//! - else [`Verdict::Denied`], naming the isolating policies.
//!
//! Policies are allow-lists whose union applies: there is no order between them and no
//! deny rule, so the reported rule is *a* reason, chosen deterministically.
//!
//! Only the first packet of a connection comes here: the switch's connection tracking
//! lets replies and later packets through (kube-router puts its `RELATED,ESTABLISHED`
//! accept first for the same reason), and ARP is never filtered. Ports are the
//! destination's real ports: the switch classifies after load-balancer DNAT
//! (amazon-network-policy-controller-k8s#210 enforced before it, and Service ports slipped
//! through).
//!
//! # Cost
//! [`Compiled::check`] allocates nothing and walks no list of policies or rules: two
//! binary searches find the two interfaces, then per isolated side at most three binary
//! searches (remote interface, remote address range, and rarely remote interface and
//! address) and one per map found (port interval). Each search is over one table's
//! entries, so a check is O(log n) in the size of the tables involved, however many
//! policies there are.

use std::net::IpAddr;

use crate::compile::EndpointId;
use crate::compile::{Compiled, NONE, PolicyId, RuleRef, port_key};
use crate::model::Direction;

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// An interface of the switch, with the address the connection uses.
    Endpoint {
        /// The interface.
        id: EndpointId,
        /// Its address in this connection: one of the addresses it had in the compiled
        /// [`World`](crate::World) (port security guarantees it for sources, the address
        /// lookup for destinations). Selector peers match the interface whatever the
        /// address; `ipBlock` peers match the address; an egress rule joining an `ipBlock`
        /// and a named port matches only the registered addresses.
        addr: IpAddr,
    },
    /// An address outside the switch. Only `ipBlock` peers and rules without peers match
    /// it: pod selectors never do.
    External(IpAddr),
}

impl Peer {
    /// The address.
    pub fn addr(&self) -> IpAddr {
        match *self {
            Peer::Endpoint { addr, .. } | Peer::External(addr) => addr,
        }
    }
}

/// What is classified: the first packet of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection {
    /// Who opens it.
    pub src: Peer,
    /// Who it is to.
    pub dst: Peer,
    /// The IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, ...).
    pub protocol: u8,
    /// The destination port; 0 for protocols without ports.
    pub dst_port: u16,
}

/// The verdict of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// No policy of this direction selects the interface, or the side is outside the
    /// switch: allowed by default.
    NotIsolated,
    /// Allowed by this rule (the first allowing one).
    Allowed(RuleRef),
    /// Isolated, and no rule of the isolating policies allows the connection.
    Denied(Isolation),
}

impl Verdict {
    /// True unless denied.
    pub fn allows(&self) -> bool {
        !matches!(self, Verdict::Denied(_))
    }
}

/// The policies isolating an interface in one direction: a handle, resolved with
/// [`Compiled::isolating_policies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Isolation {
    pub(crate) table: u32,
}

impl Isolation {
    /// A dense index (below [`Compiled::stats`]`().tables`) shared by every interface
    /// isolated by the same policies: a key for "denied" counters.
    pub fn index(self) -> u32 {
        self.table
    }
}

/// The verdict on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// True when both sides allow it.
    pub allowed: bool,
    /// The source's egress side.
    pub egress: Verdict,
    /// The destination's ingress side.
    pub ingress: Verdict,
}

/// The remote end as the tables see it: dense endpoint index (when known) and address.
#[derive(Clone, Copy)]
struct Remote {
    index: Option<u32>,
    addr: IpAddr,
}

impl Compiled {
    /// Classifies the first packet of a connection. No allocation; see the module doc for
    /// the cost. An interface id the compiled set does not know is treated as an address
    /// outside the switch (not isolated, matched by `ipBlock`s only): compile before an
    /// interface carries traffic.
    pub fn check(&self, connection: &Connection) -> Decision {
        let key = port_key(connection.protocol, connection.dst_port);
        let src = self.remote_of(&connection.src);
        let dst = self.remote_of(&connection.dst);
        let egress = match src.index {
            Some(index) => self.side(self.table_of(index, Direction::Egress), dst, key),
            None => Verdict::NotIsolated,
        };
        let ingress = match dst.index {
            Some(index) => self.side(self.table_of(index, Direction::Ingress), src, key),
            None => Verdict::NotIsolated,
        };
        Decision {
            allowed: egress.allows() && ingress.allows(),
            egress,
            ingress,
        }
    }

    /// The policies of isolation table `table` ([`Isolation::index`]), in policy order:
    /// for counters kept per table.
    pub fn isolating_policies_of_table(&self, table: u32) -> &[PolicyId] {
        self.isolating_policies(Isolation { table })
    }

    /// The policies behind a [`Verdict::Denied`], in policy order.
    pub fn isolating_policies(&self, isolation: Isolation) -> &[PolicyId] {
        self.tables
            .get(isolation.table as usize)
            .map_or(&[], |table| &self.selecting[table.selecting.range()])
    }

    #[inline]
    fn remote_of(&self, peer: &Peer) -> Remote {
        match *peer {
            Peer::Endpoint { id, addr } => Remote {
                index: self.endpoint_index(id),
                addr,
            },
            Peer::External(addr) => Remote { index: None, addr },
        }
    }

    /// One side: the smallest rule ordinal over the table's lookups.
    #[inline]
    fn side(&self, table_id: u32, remote: Remote, key: u32) -> Verdict {
        if table_id == NONE {
            return Verdict::NotIsolated;
        }
        let table = &self.tables[table_id as usize];
        let mut best = NONE;
        if let Some(index) = remote.index {
            let entries = &self.by_endpoint[table.by_endpoint.range()];
            if let Ok(i) = entries.binary_search_by_key(&index, |entry| entry.0) {
                best = best.min(self.port_lookup(entries[i].1, key));
            }
            if table.by_endpoint_addr.len > 0 {
                let entries = &self.by_endpoint_addr[table.by_endpoint_addr.range()];
                if let Ok(i) =
                    entries.binary_search_by(|entry| (entry.0, entry.1).cmp(&(index, remote.addr)))
                {
                    best = best.min(self.port_lookup(entries[i].2, key));
                }
            }
        }
        let map = match remote.addr {
            IpAddr::V4(addr) => range_lookup(&self.v4[table.v4.range()], u32::from(addr)),
            IpAddr::V6(addr) => range_lookup(&self.v6[table.v6.range()], u128::from(addr)),
        };
        if map != NONE {
            best = best.min(self.port_lookup(map, key));
        }
        if best == NONE {
            Verdict::Denied(Isolation { table: table_id })
        } else {
            Verdict::Allowed(self.rules[best as usize])
        }
    }

    /// The rule of the interval holding `key`, or `NONE`.
    #[inline]
    fn port_lookup(&self, map: u32, key: u32) -> u32 {
        let intervals = &self.intervals[self.maps[map as usize].range()];
        let i = intervals.partition_point(|interval| interval.lo <= key);
        match i.checked_sub(1).map(|i| intervals[i]) {
            Some(interval) if interval.hi >= key => interval.rule,
            _ => NONE,
        }
    }
}

/// The map of the range holding `addr` (ranges start at their first address, sorted),
/// or `NONE`.
#[inline]
fn range_lookup<T: Ord + Copy>(ranges: &[(T, u32)], addr: T) -> u32 {
    let i = ranges.partition_point(|range| range.0 <= addr);
    match i.checked_sub(1) {
        Some(i) => ranges[i].1,
        None => NONE,
    }
}
