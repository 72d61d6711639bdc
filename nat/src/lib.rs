//! Connection tracking and NAT on packet bytes; no I/O.
//!
//! Everything here works on plain values and on IPv4 or IPv6 packet bytes (starting at the
//! IP header; NAT44 and NAT66, never between families): no sockets, no threads, no clock. Time comes in as a monotonic `u64` of
//! milliseconds (`now_ms`), the same clock the vswitch engine uses for its FDB.
//!
//! # Pieces
//! - [`parse`]: packet bytes -> [`PacketInfo`] (5-tuple, TCP flags, echo or ICMP error;
//!   IPv6 extension headers walked, ICMPv6 echo and errors).
//! - [`Conntrack`]: the connection table, keyed by [`Zone`] (the Network) + [`Tuple`]; both
//!   the original and the reply key find a connection. TCP state machine ([`TcpProgress`]),
//!   UDP unreplied/replied, ICMP echo by identifier; idle timeouts from [`Timeouts`]; a table
//!   limit with eviction of unassured entries; an incremental [`Conntrack::sweep`]. Each
//!   entry carries [`Attachments`] for the policy and load-balancer stages.
//! - [`NatRules`]: the compiled NATGateway / PortForward / VirtualIP configuration, and
//!   [`NatRules::plan`], the NAT decision for a flow's first packet (masquerade, 1:1, DNAT,
//!   hairpinning).
//! - Port blocks ([`Gateway`]): endpoint-independent masquerade mappings with port
//!   preservation, each interface confined to its own block(s) of `portsPerNetworkInterface`
//!   ports; exhaustion is an error value ([`NatError`]), never a wait.
//! - [`translate()`]: rewrites addresses, ports and echo identifiers in place with RFC 1624
//!   incremental checksums, ICMP errors with their quoted packet included, for complete or
//!   partial (offloaded) checksums ([`ChecksumMode`]).
//!
//! # Sharing between workers
//! One [`Conntrack`] is shared by all workers (behind an `Arc`), sharded 64 ways with a
//! read-write lock per shard, like vswitch's other mutable shared tables (hits are
//! read-only, updates are rare; see `docs/architecture.md`). Per-worker tables would need
//! flow steering that puts both directions of a flow on the same worker, and we cannot have
//! it: a masqueraded flow's packets leave through a TAP queue chosen by the container's
//! kernel and come back through the uplink's AF_PACKET fanout, which hashes the
//! *translated* tuple. So:
//! - a hit (any packet after the first, either direction) takes one shard's read lock (an
//!   atomic write to the shard's lock word on entry and exit, see [`conntrack`]) and
//!   otherwise updates only atomics inside its entry (state by compare-and-swap, the idle
//!   timer only when the millisecond changed);
//! - a flow's first packet, a removal and an eviction take the write locks of at most two
//!   shards, in index order; masquerade port allocation has its own mutex, taken only then;
//! - a per-worker flow cache, which vswitch does not have, could keep a flow's
//!   [`Tracked::target`] and skip even the read lock, revalidating with a periodic lookup
//!   (to refresh the idle timer and follow TCP state) and on snapshot change.
//!
//! # Eviction and refusal
//! When the table holds `max_entries` (default 1,000,000), a new flow looks at most
//! [`conntrack::EVICT_SCAN`] slots in each of two non-empty shards for an unassured, expired, or TCP
//! `TIME_WAIT`/`CLOSE` entry and evicts it; if none is found the flow is refused with
//! [`CreateError::TableFull`] and counted. Assured connections are never evicted.
//!
//! # How the vswitch datapath uses it
//! vswitch's `nat` stage (`vswitch/src/pipeline/nat.rs`) uses it for the packets that cross
//! the uplink: outbound, when the ingress port's Network has no route for the destination
//! and the node has an uplink; inbound, for IPv4 to an address the switch owns on the
//! uplink (`nat6.rs` for IPv6). Flows inside Networks do not touch conntrack. Once per such
//! packet, on the IP packet (after the Ethernet header):
//! 1. `parse(ip_bytes)`; on error count `error.key()` and drop.
//! 2. `zone` = the ingress port's Network id, or [`Zone::EXTERNAL`] for the uplink.
//! 3. `conntrack.lookup(zone, &info, now_ms)`. On a miss (and not an ICMP error):
//!    `rules.plan(&key, ingress_interface, |k| route(k))` with the snapshot's [`NatRules`],
//!    then `conntrack.create(zone, &info, &plan, attachments, now_ms)`; count and drop on
//!    [`PlanError`] / [`CreateError`]. An ICMP error that misses is dropped.
//! 4. Route in `tracked.egress_zone` toward the translated destination, check TTL and MTU,
//!    then, if `tracked.target` is `Some`, `translate(ip_bytes, &target, mode)` with
//!    [`ChecksumMode::Partial`] when the frame's virtio header has `NEEDS_CSUM`, else
//!    `Full`.
//! 5. Each worker calls `conntrack.sweep(now_ms, 256)` at most once a millisecond.
//!
//! The uplink answers ARP (IPv6: neighbour solicitations) for [`NatRules::owns`] addresses
//! and hands their packets to the same path with zone [`Zone::EXTERNAL`]. Fragments are refused by [`parse`]: reassemble
//! first or count them.

#![forbid(unsafe_code)]

pub mod checksum;
pub mod config;
pub mod conntrack;
pub mod packet;
pub mod ports;
pub mod rules;
pub mod tcp;
pub mod translate;
pub mod tuple;
mod wire;

pub use config::{ConntrackConfig, Timeouts};
pub use conntrack::{
    Attachments, ConnInfo, ConnState, Conntrack, ConntrackStats, CreateError, SweepReport, Tracked,
};
pub use packet::{EchoKind, PacketInfo, PacketKind, ParseError, parse};
pub use ports::{Gateway, InterfaceId, InterfaceUsage, NatError};
pub use rules::{
    Dnat, Egress, NatPlan, NatRules, PlanError, PortForward, RulesError, Snat, VirtualIp,
};
pub use tcp::{TcpFlags, TcpProgress, TcpState};
pub use translate::{ChecksumMode, TranslateError, translate};
pub use tuple::{Direction, Endpoint, FlowKey, Protocol, Tuple, Zone};
