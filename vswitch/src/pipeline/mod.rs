//! The packet stages, one file each, with their drop reasons beside them (VPP style).
//!
//! A frame received on a port (a `virtio_net_hdr` followed by the Ethernet frame) goes through
//! [`parse`] -> [`port_security`] -> [`l2`] (learning), then one of:
//! - [`dhcp`]: on a Subnet whose DHCP server is enabled, DHCP client messages are answered
//!   (or dropped) by the switch, and server messages from ports are dropped;
//! - [`arp`]: ARP for the subnet's gateway is answered (or, a reply, consumed) by the switch;
//!   ARP from a port refreshes the neighbour table;
//! - [`l3`]: IPv4 addressed to the subnet's gateway MAC is routed: to the switch itself
//!   ([`icmp`] echo replies), or by longest-prefix match in the port's Network, with TTL,
//!   MTU, fragmentation, ICMP errors and neighbour resolution; the rewritten frame then goes
//!   to the [`l2`] decision in the egress subnet;
//! - [`l2`] forwarding in the ingress subnet.
//!
//! When the Network has no route for a destination and the node has an uplink, [`l3`] hands
//! the packet to [`nat`]: conntrack, the NAT decision, translation, then forwarding in the
//! flow's egress zone (out of the uplink, or back into a Network for hairpinning).
//!
//! When NetworkPolicies isolate an end of the flow, [`policy`] judges the first packet of
//! each connection where its destination is final: after the [`l2`] decision, before
//! [`l3`] forwards, where [`nat`] and [`lb`] create a connection (after DNAT), and on the
//! routed uplink paths.
//!
//! A frame received on the uplink goes through [`process_uplink`] instead: [`parse`] ->
//! [`uplink`] (only frames to the switch's uplink MAC or broadcast; ARP for the addresses the
//! switch owns there; IPv4 to those addresses) -> [`nat`] -> forwarding into a Network.
//!
//! A datagram received by the VTEP goes through [`vxlan_input`] (decapsulation in place,
//! learning the inner source MAC behind the sending VTEP) and then, as if received on its
//! subnet's tunnel port, through [`process_tunnel`]: the stages above without port security,
//! and never flooded back into the overlay. [`input`] picks the first stage by where the
//! frame came from.
//!
//! The result is a [`Verdict`]: forward to one port, flood a subnet, consumed by the switch,
//! or drop with a [`DropCause`] (a stage and its reason). Frames the switch emits itself
//! (ARP and ICMP answers, fragments, held packets released later) go into the worker's
//! [`generated::Generated`] arena, each with its own verdict. On the way out, the egress
//! adjacency of each destination (`tables::snapshot::Egress`) picks the last stage: [`tx`]
//! adapts a frame to what a device's queue can take (completing partial checksums), and
//! [`vxlan_encap`] sends a frame for a stretched subnet's tunnel into the overlay (the
//! learned remote VTEP, else head-end replication to all of them; super-frames segmented).
//!
//! [`process`] runs the ingress stages for one frame; it is a function of the snapshot, the
//! shared tables (FDB, neighbours, remote MACs), the clock value, the bytes and the worker's
//! [`Local`] state, so every stage is unit-tested on static fixtures. It rewrites the frame
//! in place when routing it. It never panics on packet content: every malformed frame ends in
//! a counted drop.
//! The worker (in `runtime`) counts every drop through one path, keyed by
//! [`DropCause::key`] (`parse.runt`, `port_security.src_mac`, ...), which is stable: counters,
//! the API and tests use these strings.
//!
//! The stages read and write the [`tables`](crate::tables) (and use `port` and `wire`); they
//! never use the runtime that drives them.

/// Notes what a stage decided in the frame's trace (see [`trace`]) when it is traced: the
/// arguments are formatted only then, so an untraced frame pays one branch on a `None`.
macro_rules! trace_note {
    ($ctx:expr, $step:ident, $($arg:tt)+) => {
        if let Some(trace) = $ctx.trace {
            trace.note($crate::pipeline::trace::Step::$step, format_args!($($arg)+));
        }
    };
}

pub mod arp;
pub mod dhcp;
pub mod generated;
pub mod icmp;
pub mod l2;
pub mod l3;
pub mod lb;
pub mod nat;
pub mod nat6;
pub mod nd;
pub mod parse;
pub mod policy;
pub mod port_security;
pub mod route6;
pub mod trace;
pub mod tx;
pub mod uplink;
pub mod vxlan_encap;
pub mod vxlan_input;

use core::fmt;
use std::net::SocketAddr;

use crate::port::PortId;
use crate::tables::counters::EventTally;
use crate::tables::fdb::{Fdb, Learn};
use crate::tables::held::HeldQueue;
use crate::tables::neigh::Neighbors;
use crate::tables::ratelimit::{PortBuckets, TokenBucket};
use crate::tables::snapshot::{Ingress, PortEntry, Snapshot, SubnetEntry, SubnetId, UplinkEntry};
use generated::Generated;
use parse::L3;

/// The stages a frame can be dropped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// [`parse`]: the virtio header and the L2/L3 headers are well-formed.
    Parse,
    /// [`port_security`]: the port sends only from its own addresses.
    PortSecurity,
    /// [`l2`]: MAC learning and forwarding.
    L2,
    /// [`l3`] (with [`arp`] and [`icmp`]): the switch as the subnets' router.
    L3,
    /// [`uplink`]: frames received on the uplink.
    Uplink,
    /// [`nat`]: NAT decisions and translation.
    Nat,
    /// [`nat`]'s connection tracking.
    Conntrack,
    /// [`tx`]: the egress port takes the frame.
    Tx,
    /// [`vxlan_input`]: datagrams received from the overlay.
    VxlanInput,
    /// [`vxlan_encap`]: frames sent into the overlay.
    VxlanEncap,
    /// [`lb`]: connections to LoadBalancers.
    Lb,
    /// [`policy`]: NetworkPolicies.
    Policy,
    /// [`dhcp`]: the switch's DHCPv4 server.
    Dhcp,
}

impl Stage {
    /// The stage's name, the prefix of its drop keys.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::PortSecurity => "port_security",
            Stage::L2 => "l2",
            Stage::L3 => "l3",
            Stage::Uplink => "uplink",
            Stage::Nat => "nat",
            Stage::Conntrack => "conntrack",
            Stage::Tx => "tx",
            // Both overlay stages keep the keys they had as one stage: `vxlan.*`.
            Stage::VxlanInput | Stage::VxlanEncap => "vxlan",
            Stage::Lb => "lb",
            Stage::Policy => "policy",
            Stage::Dhcp => "dhcp",
        }
    }
}

/// Why a frame was dropped: the stage and that stage's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropCause {
    /// Dropped by [`parse`].
    Parse(parse::DropReason),
    /// Dropped by [`port_security`].
    PortSecurity(port_security::DropReason),
    /// Dropped by [`l2`].
    L2(l2::DropReason),
    /// Dropped by [`l3`], [`arp`] or [`icmp`].
    L3(l3::DropReason),
    /// Dropped by [`uplink`].
    Uplink(uplink::DropReason),
    /// Dropped by [`nat`].
    Nat(nat::DropReason),
    /// Dropped by [`nat`]'s connection tracking.
    Conntrack(nat::ConntrackReason),
    /// Dropped by [`tx`] (or by the egress queue).
    Tx(tx::DropReason),
    /// Dropped by [`vxlan_input`].
    VxlanInput(vxlan_input::DropReason),
    /// Dropped by [`vxlan_encap`].
    VxlanEncap(vxlan_encap::DropReason),
    /// Dropped by [`lb`].
    Lb(lb::DropReason),
    /// Dropped by [`policy`].
    Policy(policy::DropReason),
    /// Dropped by [`dhcp`].
    Dhcp(dhcp::DropReason),
}

const PARSE_BASE: usize = 0;
const PORT_SECURITY_BASE: usize = PARSE_BASE + parse::DropReason::COUNT;
const L2_BASE: usize = PORT_SECURITY_BASE + port_security::DropReason::COUNT;
const L3_BASE: usize = L2_BASE + l2::DropReason::COUNT;
const UPLINK_BASE: usize = L3_BASE + l3::DropReason::COUNT;
const NAT_BASE: usize = UPLINK_BASE + uplink::DropReason::COUNT;
const CONNTRACK_BASE: usize = NAT_BASE + nat::DropReason::COUNT;
const TX_BASE: usize = CONNTRACK_BASE + nat::ConntrackReason::COUNT;
const VXLAN_INPUT_BASE: usize = TX_BASE + tx::DropReason::COUNT;
const VXLAN_ENCAP_BASE: usize = VXLAN_INPUT_BASE + vxlan_input::DropReason::COUNT;
const LB_BASE: usize = VXLAN_ENCAP_BASE + vxlan_encap::DropReason::COUNT;
const POLICY_BASE: usize = LB_BASE + lb::DropReason::COUNT;
const DHCP_BASE: usize = POLICY_BASE + policy::DropReason::COUNT;

impl DropCause {
    /// Number of distinct causes (the length of a per-port drop counter array).
    pub const COUNT: usize = DHCP_BASE + dhcp::DropReason::COUNT;

    /// The stage that dropped the frame.
    pub const fn stage(self) -> Stage {
        match self {
            DropCause::Parse(_) => Stage::Parse,
            DropCause::PortSecurity(_) => Stage::PortSecurity,
            DropCause::L2(_) => Stage::L2,
            DropCause::L3(_) => Stage::L3,
            DropCause::Uplink(_) => Stage::Uplink,
            DropCause::Nat(_) => Stage::Nat,
            DropCause::Conntrack(_) => Stage::Conntrack,
            DropCause::Tx(_) => Stage::Tx,
            DropCause::VxlanInput(_) => Stage::VxlanInput,
            DropCause::VxlanEncap(_) => Stage::VxlanEncap,
            DropCause::Lb(_) => Stage::Lb,
            DropCause::Policy(_) => Stage::Policy,
            DropCause::Dhcp(_) => Stage::Dhcp,
        }
    }

    /// The stable key, e.g. `parse.runt`.
    pub const fn key(self) -> &'static str {
        match self {
            DropCause::Parse(reason) => reason.key(),
            DropCause::PortSecurity(reason) => reason.key(),
            DropCause::L2(reason) => reason.key(),
            DropCause::L3(reason) => reason.key(),
            DropCause::Uplink(reason) => reason.key(),
            DropCause::Nat(reason) => reason.key(),
            DropCause::Conntrack(reason) => reason.key(),
            DropCause::Tx(reason) => reason.key(),
            DropCause::VxlanInput(reason) => reason.key(),
            DropCause::VxlanEncap(reason) => reason.key(),
            DropCause::Lb(reason) => reason.key(),
            DropCause::Policy(reason) => reason.key(),
            DropCause::Dhcp(reason) => reason.key(),
        }
    }

    /// One line saying why the frame was dropped.
    pub const fn description(self) -> &'static str {
        match self {
            DropCause::Parse(reason) => reason.description(),
            DropCause::PortSecurity(reason) => reason.description(),
            DropCause::L2(reason) => reason.description(),
            DropCause::L3(reason) => reason.description(),
            DropCause::Uplink(reason) => reason.description(),
            DropCause::Nat(reason) => reason.description(),
            DropCause::Conntrack(reason) => reason.description(),
            DropCause::Tx(reason) => reason.description(),
            DropCause::VxlanInput(reason) => reason.description(),
            DropCause::VxlanEncap(reason) => reason.description(),
            DropCause::Lb(reason) => reason.description(),
            DropCause::Policy(reason) => reason.description(),
            DropCause::Dhcp(reason) => reason.description(),
        }
    }

    /// Dense index (`0..COUNT`) into per-port drop counters.
    pub const fn index(self) -> usize {
        match self {
            DropCause::Parse(reason) => PARSE_BASE + reason.index(),
            DropCause::PortSecurity(reason) => PORT_SECURITY_BASE + reason.index(),
            DropCause::L2(reason) => L2_BASE + reason.index(),
            DropCause::L3(reason) => L3_BASE + reason.index(),
            DropCause::Uplink(reason) => UPLINK_BASE + reason.index(),
            DropCause::Nat(reason) => NAT_BASE + reason.index(),
            DropCause::Conntrack(reason) => CONNTRACK_BASE + reason.index(),
            DropCause::Tx(reason) => TX_BASE + reason.index(),
            DropCause::VxlanInput(reason) => VXLAN_INPUT_BASE + reason.index(),
            DropCause::VxlanEncap(reason) => VXLAN_ENCAP_BASE + reason.index(),
            DropCause::Lb(reason) => LB_BASE + reason.index(),
            DropCause::Policy(reason) => POLICY_BASE + reason.index(),
            DropCause::Dhcp(reason) => DHCP_BASE + reason.index(),
        }
    }

    /// Every cause, in index order.
    pub fn all() -> impl Iterator<Item = DropCause> {
        let parse = parse::DropReason::ALL.iter().map(|&r| DropCause::Parse(r));
        let port_security = port_security::DropReason::ALL
            .iter()
            .map(|&r| DropCause::PortSecurity(r));
        let l2 = l2::DropReason::ALL.iter().map(|&r| DropCause::L2(r));
        let l3 = l3::DropReason::ALL.iter().map(|&r| DropCause::L3(r));
        let uplink = uplink::DropReason::ALL
            .iter()
            .map(|&r| DropCause::Uplink(r));
        let nat = nat::DropReason::ALL.iter().map(|&r| DropCause::Nat(r));
        let conntrack = nat::ConntrackReason::ALL
            .iter()
            .map(|&r| DropCause::Conntrack(r));
        let tx = tx::DropReason::ALL.iter().map(|&r| DropCause::Tx(r));
        let vxlan_input = vxlan_input::DropReason::ALL
            .iter()
            .map(|&r| DropCause::VxlanInput(r));
        let vxlan_encap = vxlan_encap::DropReason::ALL
            .iter()
            .map(|&r| DropCause::VxlanEncap(r));
        let lb = lb::DropReason::ALL.iter().map(|&r| DropCause::Lb(r));
        let policy = policy::DropReason::ALL
            .iter()
            .map(|&r| DropCause::Policy(r));
        let dhcp = dhcp::DropReason::ALL.iter().map(|&r| DropCause::Dhcp(r));
        parse
            .chain(port_security)
            .chain(l2)
            .chain(l3)
            .chain(uplink)
            .chain(nat)
            .chain(conntrack)
            .chain(tx)
            .chain(vxlan_input)
            .chain(vxlan_encap)
            .chain(lb)
            .chain(policy)
            .chain(dhcp)
    }
}

impl fmt::Display for DropCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl From<parse::DropReason> for DropCause {
    fn from(reason: parse::DropReason) -> DropCause {
        DropCause::Parse(reason)
    }
}

impl From<port_security::DropReason> for DropCause {
    fn from(reason: port_security::DropReason) -> DropCause {
        DropCause::PortSecurity(reason)
    }
}

impl From<l2::DropReason> for DropCause {
    fn from(reason: l2::DropReason) -> DropCause {
        DropCause::L2(reason)
    }
}

impl From<l3::DropReason> for DropCause {
    fn from(reason: l3::DropReason) -> DropCause {
        DropCause::L3(reason)
    }
}

impl From<uplink::DropReason> for DropCause {
    fn from(reason: uplink::DropReason) -> DropCause {
        DropCause::Uplink(reason)
    }
}

impl From<dhcp::DropReason> for DropCause {
    fn from(reason: dhcp::DropReason) -> DropCause {
        DropCause::Dhcp(reason)
    }
}

impl From<lb::DropReason> for DropCause {
    fn from(reason: lb::DropReason) -> DropCause {
        DropCause::Lb(reason)
    }
}

impl From<policy::DropReason> for DropCause {
    fn from(reason: policy::DropReason) -> DropCause {
        DropCause::Policy(reason)
    }
}

impl From<nat::DropReason> for DropCause {
    fn from(reason: nat::DropReason) -> DropCause {
        DropCause::Nat(reason)
    }
}

impl From<nat::ConntrackReason> for DropCause {
    fn from(reason: nat::ConntrackReason) -> DropCause {
        DropCause::Conntrack(reason)
    }
}

impl From<tx::DropReason> for DropCause {
    fn from(reason: tx::DropReason) -> DropCause {
        DropCause::Tx(reason)
    }
}

impl From<vxlan_input::DropReason> for DropCause {
    fn from(reason: vxlan_input::DropReason) -> DropCause {
        DropCause::VxlanInput(reason)
    }
}

impl From<vxlan_encap::DropReason> for DropCause {
    fn from(reason: vxlan_encap::DropReason) -> DropCause {
        DropCause::VxlanEncap(reason)
    }
}

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send to this port. For switched frames never the ingress port; a routed frame or the
    /// switch's own answer may go back where it came from.
    Forward(PortId),
    /// Send to every port of the ingress port's subnet except the ingress port (L2 flood).
    Flood,
    /// Send to every port of `subnet` except `except`: a routed frame whose next hop's MAC
    /// has not been learned on a port, or an ARP request the switch broadcasts.
    FloodSubnet {
        /// The subnet whose ports receive it.
        subnet: SubnetId,
        /// A port left out (the ingress port of a routed frame).
        except: Option<PortId>,
    },
    /// Taken by the switch: answered (ARP, echo), held for ARP, or replaced by its fragments.
    /// Not a drop; what the switch sent instead is in [`Local::out`].
    Consumed,
    /// Drop, counted under this cause on the ingress port.
    Drop(DropCause),
}

impl Verdict {
    /// The verdict of a drop for `reason`.
    pub fn drop(reason: impl Into<DropCause>) -> Verdict {
        Verdict::Drop(reason.into())
    }
}

/// The result of the ingress stages for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Where the frame goes.
    pub verdict: Verdict,
    /// What learning the source MAC did (`None` when the frame was dropped before L2, or its
    /// source cannot be learned).
    pub learn: Option<Learn>,
}

impl Outcome {
    /// A drop before learning.
    pub fn dropped(cause: impl Into<DropCause>) -> Outcome {
        Outcome {
            verdict: Verdict::Drop(cause.into()),
            learn: None,
        }
    }
}

/// What the stages read besides the frame.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The configuration the worker loaded for this batch.
    pub snapshot: &'a Snapshot,
    /// Learned MACs, shared by all workers.
    pub fdb: &'a Fdb,
    /// The neighbour (ARP) table, shared by all workers.
    pub neighbors: &'a Neighbors,
    /// Remote MACs behind the overlay, (VNI, MAC) -> remote VTEP: learned by
    /// [`vxlan_input`], read by `vxlan-encap`; shared by all workers.
    pub remote_fdb: &'a ::vxlan::VxlanSharedFdb,
    /// The engine's clock, milliseconds (monotonic).
    pub now_ms: u64,
    /// The recorder when this frame is traced (see [`trace`]); `None` on the fast path.
    pub trace: Option<&'a trace::Trace>,
}

impl Context<'_> {
    /// A dry run of the packet tracer: the stages must change no shared table.
    #[inline]
    pub fn is_dry_run(&self) -> bool {
        self.trace.is_some_and(trace::Trace::is_dry_run)
    }

    /// The connection of `info` in `zone`: [`::nat::Conntrack::lookup`], which advances its
    /// state, or in a dry run a peek (at the real table, then at the trace's scratch one).
    #[inline]
    pub(crate) fn conntrack_lookup(
        &self,
        zone: ::nat::Zone,
        info: &::nat::PacketInfo,
    ) -> Option<::nat::Tracked> {
        let conntrack = &self.snapshot.conntrack;
        match self.trace {
            Some(trace) if trace.is_dry_run() => {
                conntrack.peek(zone, info, self.now_ms).or_else(|| {
                    trace
                        .scratch_conntrack(conntrack)
                        .peek(zone, info, self.now_ms)
                })
            }
            _ => conntrack.lookup(zone, info, self.now_ms),
        }
    }

    /// Creates the connection `info` starts ([`::nat::Conntrack::create`]); a dry run creates
    /// it in the trace's scratch table, so no entry or NAT port is kept.
    #[inline]
    pub(crate) fn conntrack_create(
        &self,
        zone: ::nat::Zone,
        info: &::nat::PacketInfo,
        plan: &::nat::NatPlan<'_>,
        attachments: ::nat::Attachments,
    ) -> Result<::nat::Tracked, ::nat::CreateError> {
        let conntrack = &self.snapshot.conntrack;
        match self.trace {
            Some(trace) if trace.is_dry_run() => trace.scratch_conntrack(conntrack).create(
                zone,
                info,
                plan,
                attachments,
                self.now_ms,
            ),
            _ => conntrack.create(zone, info, plan, attachments, self.now_ms),
        }
    }
}

/// ICMP errors a worker may send at once (RFC 1812 4.3.2.8 asks for a limit; Linux's
/// `icmp_msgs_burst` is 50).
pub const ICMP_BURST: u64 = 50;

/// ICMP errors a worker may send per second, on average.
pub const ICMP_PER_SECOND: u64 = 100;

/// ARP requests (and replies) to the switch's own addresses in a subnet that one port may
/// send at once, per worker. A container asks for its gateway once per neighbour timeout,
/// so only a storm meets the limit.
pub const ARP_BURST: u64 = 100;

/// ARP to the switch's own addresses one port may send per second, per worker, on average.
pub const ARP_PER_SECOND: u64 = 100;

/// ICMP to a gateway address (echo requests) one port may send at once, per worker.
pub const ECHO_BURST: u64 = 100;

/// ICMP to a gateway address one port may send per second, per worker, on average (`ping -i
/// 0.01` passes; `ping -f` meets it).
pub const ECHO_PER_SECOND: u64 = 100;

/// Broadcast and multicast frames one port may have flooded per second, per worker, on
/// average, by default (`vswitchd --storm-control-pps`); as many at once. ARP for other
/// containers, DHCP and IPv6 neighbour discovery stay far below it; a storm meets it.
pub const STORM_CONTROL_PPS: u64 = 1_000;

/// What the stages of one worker write besides the frame they process.
#[derive(Debug)]
pub struct Output {
    /// Frames the switch emits, sent with the batch.
    pub generated: Generated,
    /// Limits the ICMP errors this worker sends.
    pub icmp_limiter: TokenBucket,
    /// Limits, per port, the ARP for the switch's addresses this worker answers or learns
    /// from (over the limit: `l3.arp_rate_limited`).
    pub arp_limiter: PortBuckets,
    /// Limits, per port, the ICMP to gateway addresses this worker answers (over the limit:
    /// `l3.echo_rate_limited`).
    pub echo_limiter: PortBuckets,
    /// Limits, per port, the broadcast and multicast frames this worker floods from
    /// containers (over the limit: `l2.storm_control`); `None`: no limit.
    pub flood_limiter: Option<PortBuckets>,
    /// Events, added to the worker's counters per batch.
    pub events: EventTally,
    /// Set when an ARP answer resolved a neighbour other workers may hold packets for.
    pub neighbor_resolved: bool,
    /// Set when a new NAT connection was refused for want of ports (the worker logs it,
    /// rate-limited).
    pub nat_exhausted: bool,
    /// The IP identification of the next packet the switch originates.
    ident: u16,
}

impl Output {
    /// Counts what a neighbour-table confirmation changed (a new, moved or resolved
    /// neighbour; a resolved one wakes the workers holding packets for it).
    pub(crate) fn note_confirmation(&mut self, confirmation: crate::tables::neigh::Confirmation) {
        use crate::tables::neigh::Confirmation;
        if matches!(
            confirmation,
            Confirmation::Created | Confirmation::Changed | Confirmation::Resolved
        ) {
            self.events
                .add(crate::tables::counters::Event::NeighborLearned);
            self.neighbor_resolved |= confirmation == Confirmation::Resolved;
        }
    }
    /// The identification for the next packet the switch originates.
    pub fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }
}

/// One worker's mutable L3 state, allocated once: its [`Output`] and its held packets.
#[derive(Debug)]
pub struct Local {
    /// What the stages emit.
    pub out: Output,
    /// Packets waiting for ARP.
    pub held: HeldQueue,
}

impl Local {
    /// Holds `frame` while its next hop is resolved: consumed, or dropped when the packet or
    /// the queue is too big.
    pub(crate) fn hold(&mut self, held: crate::tables::held::Held, frame: &[u8]) -> Verdict {
        use crate::tables::held::HoldError;
        match self.held.hold(held, frame) {
            Ok(()) => {
                self.out.events.add(crate::tables::counters::Event::Held);
                Verdict::Consumed
            }
            Err(HoldError::TooBig) => Verdict::drop(l3::DropReason::HeldTooBig),
            Err(HoldError::NextHopFull | HoldError::Full) => {
                Verdict::drop(l3::DropReason::HeldQueueFull)
            }
        }
    }

    /// The state of worker `worker` (its index seeds the IP identifications, so workers do
    /// not start on the same numbers).
    pub fn new(worker: usize) -> Local {
        let seed = u16::try_from(worker % 16).unwrap_or(0) << 12;
        Local {
            out: Output {
                generated: Generated::new(),
                icmp_limiter: TokenBucket::new(ICMP_BURST, ICMP_PER_SECOND),
                arp_limiter: PortBuckets::new(ARP_BURST, ARP_PER_SECOND),
                echo_limiter: PortBuckets::new(ECHO_BURST, ECHO_PER_SECOND),
                flood_limiter: Some(PortBuckets::new(STORM_CONTROL_PPS, STORM_CONTROL_PPS)),
                events: EventTally::new(),
                neighbor_resolved: false,
                nat_exhausted: false,
                ident: seed,
            },
            held: HeldQueue::new(),
        }
    }
}

/// Runs the stages for one frame that `ingress` received (from `peer`, for the VTEP's
/// datagrams; unspecified otherwise; with the VLAN `tag` the kernel took off, for the
/// uplink's: `TPID << 16 | TCI`, 0 for none): the first stage is ingress's own, [`process`]
/// for a port, [`process_uplink`] or [`process_uplink_vlan`] for the uplink,
/// [`vxlan_input::receive`] for the VTEP. The frame is rewritten in place as those say.
#[inline]
pub fn input(
    ctx: &Context<'_>,
    ingress: Ingress<'_>,
    frame: &mut [u8],
    peer: SocketAddr,
    tag: u32,
    local: &mut Local,
) -> Outcome {
    match ingress {
        Ingress::Port(port, _) if port.vlan().is_some() => process_trunk(ctx, port, frame, local),
        Ingress::Port(port, _) => process(ctx, port, frame, local),
        Ingress::Uplink(uplink, _, member) => {
            if let Some(bond) = &uplink.io.bond {
                if !bond.receives(member) {
                    return Outcome::dropped(uplink::DropReason::InactiveMember);
                }
            }
            if tag == 0 {
                process_uplink(ctx, uplink, frame, local)
            } else {
                process_uplink_vlan(ctx, uplink, frame, tag, local)
            }
        }
        Ingress::Vtep(vtep) => vxlan_input::receive(ctx, vtep, frame, peer, local),
    }
}

/// Runs the stages for one tagged frame received on the uplink (the kernel took the tag
/// off: `tag` is `TPID << 16 | TCI`): a tag of the trunk's protocol (802.1Q, or 802.1ad
/// when the Uplink says so) of a VLAN a Subnet is bound to switches
/// the frame into that Subnet as if received on the Subnet's VLAN port ([`process_tunnel`]:
/// no port security, never flooded back out of the uplink); a tag of VLAN 0 (priority only)
/// is no VLAN. Anything else is dropped: another VLAN (`uplink.vlan_unknown`), a tag of the
/// other protocol (802.1ad on an 802.1Q trunk, or the reverse) or stacked tags
/// (`uplink.vlan_qinq`).
pub fn process_uplink_vlan(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    frame: &mut [u8],
    tag: u32,
    local: &mut Local,
) -> Outcome {
    let tpid = tag >> 16;
    let vid = u16::try_from(tag & 0x0fff).unwrap_or(0);
    if tpid != u32::from(uplink.io.tpid) {
        return Outcome::dropped(uplink::DropReason::VlanQinq);
    }
    let inner = frame
        .get(crate::wire::VNET_HDR_LEN + 12..crate::wire::VNET_HDR_LEN + 14)
        .map(|b| u16::from_be_bytes([b[0], b[1]]));
    if inner.is_some_and(|ethertype| parse::VLAN_ETHERTYPES.contains(&ethertype)) {
        return Outcome::dropped(uplink::DropReason::VlanQinq);
    }
    if vid == 0 {
        return process_uplink(ctx, uplink, frame, local);
    }
    let Some(port) = uplink.vlans.get(&vid).and_then(|id| ctx.snapshot.port(*id)) else {
        trace_note!(ctx, Parse, "VLAN {vid}: no Subnet is bound to it");
        return Outcome::dropped(uplink::DropReason::VlanUnknown);
    };
    trace_note!(ctx, Parse, "VLAN {vid}: Subnet port {}", port.name);
    process_tunnel(ctx, port, frame, local)
}

/// Runs the ingress stages for one frame received on `ingress`: parse, port security,
/// learning, then ARP for the gateway, routing (frames to the gateway MAC) or switching.
/// `frame` is the `virtio_net_hdr` followed by the Ethernet frame; routing rewrites it in
/// place. Frames the switch sends in answer go to `local.out.generated`.
pub fn process(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    frame: &mut [u8],
    local: &mut Local,
) -> Outcome {
    process_with(ctx, ingress, frame, local, true)
}

/// Runs the ingress stages for one frame a trunk NetworkInterface sent tagged with one of
/// its VLANs, its tag taken off, as received on `port`: the interface's port on that VLAN's
/// Subnet. As [`process`] (port security included), and a flood floods that Subnet (not the
/// trunk's own, whose frames share the batch).
pub fn process_trunk(
    ctx: &Context<'_>,
    port: &PortEntry,
    frame: &mut [u8],
    local: &mut Local,
) -> Outcome {
    confine_flood(port, process_with(ctx, port, frame, local, true))
}

/// A flood of a frame received on `port` floods `port`'s subnet but `port`, whatever the
/// batch's ingress (a subnet's tunnel or VLAN port, or a trunk's VLAN port, whose frames
/// arrive with other ports' in one batch).
fn confine_flood(port: &PortEntry, mut outcome: Outcome) -> Outcome {
    if outcome.verdict == Verdict::Flood {
        outcome.verdict = Verdict::FloodSubnet {
            subnet: port.subnet,
            except: Some(port.id),
        };
    }
    outcome
}

/// Runs the ingress stages for one frame decapsulated from the overlay (see [`vxlan_input`]), as
/// if received on the subnet's tunnel port `tunnel`: as [`process`], without port security
/// (the remote side has its own). A flood verdict floods the subnet's local ports only.
pub fn process_tunnel(
    ctx: &Context<'_>,
    tunnel: &PortEntry,
    frame: &mut [u8],
    local: &mut Local,
) -> Outcome {
    // Split horizon: what came from the overlay (or a VLAN) never goes back into it.
    confine_flood(tunnel, process_with(ctx, tunnel, frame, local, false))
}

fn process_with(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    frame: &mut [u8],
    local: &mut Local,
    port_security: bool,
) -> Outcome {
    trace_note!(ctx, Parse, "{}", trace::describe_frame(frame));
    let parsed = match parse::parse(frame) {
        Ok(parsed) => parsed,
        Err(reason) => return Outcome::dropped(reason),
    };
    if port_security {
        let checked = port_security::check(ingress, &parsed, frame);
        trace_note!(
            ctx,
            PortSecurity,
            "{}: port {} may send from MAC {}, addresses {:?}, routed sources {:?}{}",
            if checked.is_ok() { "passes" } else { "refused" },
            ingress.name,
            trace::Mac(ingress.mac),
            ingress.ips,
            ingress.allowed_sources,
            if matches!(parsed.l3, parse::L3::Ipv6 { .. }) {
                format!(
                    ", IPv6 {:?}, routed IPv6 sources {:?}",
                    ingress.ips6, ingress.allowed_sources6
                )
            } else {
                String::new()
            }
        );
        if let Err(reason) = checked {
            return Outcome::dropped(reason);
        }
    }
    let Some(subnet) = ctx.snapshot.subnet(ingress.subnet) else {
        return Outcome::dropped(l2::DropReason::NoSubnet);
    };
    let learn = l2::learn(ctx, ingress, subnet, &parsed);
    if let Some(server) = &subnet.dhcp {
        if let Some(verdict) = dhcp::intercept(server, ingress, subnet, &parsed, frame, local) {
            trace_note!(
                ctx,
                Dhcp,
                "for the Subnet's DHCP server (gateway {}, lease {} s): {}",
                subnet.gateway,
                server.lease_seconds,
                match verdict {
                    Verdict::Drop(cause) => cause.key(),
                    _ => "answered",
                }
            );
            return Outcome { verdict, learn };
        }
    }
    if ctx.snapshot.is_balanced_port(ingress.id) {
        if let Some(verdict) = lb::reply(ctx, ingress, subnet, &parsed, frame, local) {
            return Outcome { verdict, learn };
        }
    }
    let verdict = if let L3::Arp { .. } = parsed.l3 {
        match arp::handle(ctx, ingress, subnet, &parsed, &mut local.out) {
            Some(verdict) => {
                trace_note!(ctx, Arp, "for the switch (gateway {})", subnet.gateway);
                verdict
            }
            None => l2::forward(ctx, ingress, subnet, &parsed),
        }
    } else if let Some(verdict) = nd::handle(ctx, ingress, subnet, &parsed, frame, &mut local.out) {
        trace_note!(ctx, Arp, "neighbour discovery for the switch: {verdict:?}");
        verdict
    } else if parsed.dst_mac == subnet.gateway_mac {
        trace_note!(
            ctx,
            L2,
            "to the gateway MAC of subnet {} ({}): routed",
            subnet.name,
            trace::Mac(subnet.gateway_mac)
        );
        if let L3::Ipv6 { .. } = parsed.l3 {
            route6::route(ctx, ingress, subnet, &parsed, frame, local)
        } else {
            l3::route(ctx, ingress, subnet, &parsed, frame, local)
        }
    } else {
        let verdict = l2::forward(ctx, ingress, subnet, &parsed);
        let verdict = admit_switched(ctx, ingress, subnet, &parsed, frame, verdict);
        fit_tunnel(ctx, ingress, subnet, &parsed, frame, local, verdict)
    };
    let verdict = if port_security {
        storm_control(ctx, ingress, &parsed, &mut local.out, verdict)
    } else {
        verdict
    };
    Outcome { verdict, learn }
}

/// Storm control: a container's broadcast and multicast frames are flooded up to its port's
/// rate ([`Output::flood_limiter`]); beyond it they are dropped (`l2.storm_control`), before
/// their copies cost a write to every other port of the subnet.
#[inline]
fn storm_control(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    parsed: &parse::Parsed,
    out: &mut Output,
    verdict: Verdict,
) -> Verdict {
    if !matches!(verdict, Verdict::Flood | Verdict::FloodSubnet { .. })
        || !crate::tables::fdb::is_group(parsed.dst_mac)
        || ctx.is_dry_run()
    {
        return verdict;
    }
    let Some(limiter) = &mut out.flood_limiter else {
        return verdict;
    };
    if limiter.allow(ingress.id, ctx.now_ms) {
        return verdict;
    }
    trace_note!(
        ctx,
        L2,
        "storm control: port {} is over its broadcast and multicast rate",
        ingress.name
    );
    Verdict::drop(l2::DropReason::StormControl)
}

/// NetworkPolicies on a switched IPv4 frame (see [`policy`]): toward the port the FDB gave,
/// or, flooded, toward the owner of its destination address.
#[inline]
fn admit_switched(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &parse::Parsed,
    frame: &[u8],
    verdict: Verdict,
) -> Verdict {
    if ctx.snapshot.policy.is_none() || !matches!(parsed.l3, L3::Ipv4 { .. } | L3::Ipv6 { .. }) {
        return verdict;
    }
    let to = match verdict {
        Verdict::Forward(port) => Some(port),
        Verdict::Flood | Verdict::FloodSubnet { .. } => None,
        Verdict::Consumed | Verdict::Drop(_) => return verdict,
    };
    match policy::admit(ctx, subnet.network_id, Some(ingress.id), to, frame) {
        Ok(()) => verdict,
        Err(cause) => Verdict::Drop(cause),
    }
}

/// A frame switched into a subnet's tunnel must fit the overlay MTU once encapsulated: one
/// that does not is dropped (`vxlan.too_big`), and when it is IPv4 with DF its sender gets
/// "fragmentation needed" with the overlay MTU from the subnet's gateway, as Linux does for
/// a bridged VXLAN device (`skb_tunnel_check_pmtu`). GSO frames are cut to size later.
fn fit_tunnel(
    ctx: &Context<'_>,
    ingress: &PortEntry,
    subnet: &SubnetEntry,
    parsed: &parse::Parsed,
    frame: &[u8],
    local: &mut Local,
    verdict: Verdict,
) -> Verdict {
    let Verdict::Forward(to) = verdict else {
        return verdict;
    };
    let Some(tunnel) = ctx.snapshot.port(to).and_then(PortEntry::tunnel) else {
        return verdict;
    };
    if parsed.vnet.gso.is_some()
        || !vxlan_encap::exceeds_mtu(
            frame.get(crate::wire::VNET_HDR_LEN..).unwrap_or(&[]),
            tunnel.mtu,
        )
    {
        return verdict;
    }
    if let (L3::Ipv4 { .. }, Some((start, end))) = (&parsed.l3, l3::ip_bounds(frame)) {
        let dont_fragment = frame.get(start + 6).is_some_and(|flags| flags & 0x40 != 0);
        if dont_fragment {
            if let Some(original) = frame.get(start..end) {
                icmp::send_error(
                    &mut local.out,
                    ctx.now_ms,
                    crate::wire::IcmpErrorKind::FragmentationNeeded {
                        next_hop_mtu: tunnel.mtu,
                    },
                    subnet,
                    ingress.id,
                    parsed.src_mac,
                    original,
                );
            }
        }
    }
    Verdict::drop(vxlan_encap::DropReason::TooBig)
}

/// Runs the stages for one frame received on the uplink (see [`uplink`]): nothing is
/// learned there; frames for the switch's addresses are answered or NATed and routed into a
/// Network. `frame` is the `virtio_net_hdr` followed by the Ethernet frame.
pub fn process_uplink(
    ctx: &Context<'_>,
    uplink: &UplinkEntry,
    frame: &mut [u8],
    local: &mut Local,
) -> Outcome {
    Outcome {
        verdict: uplink::receive(ctx, uplink, frame, local),
        learn: None,
    }
}

/// Fixtures shared by the stage tests: frames as a container sends them, a bench running the
/// stages, and (re-exported) the snapshots of [`crate::tables::fixtures`].
#[cfg(test)]
pub(crate) mod fixtures {
    use std::cell::RefCell;
    use std::net::Ipv4Addr;

    use smoltcp::wire::{IpProtocol, Ipv4Packet};

    use super::generated::Origin;
    use super::{Context, Local, Outcome, Verdict, process, process_uplink};
    use crate::port::PortId;
    use crate::tables::fdb::Fdb;
    pub use crate::tables::fixtures::*;
    use crate::tables::neigh::Neighbors;
    use crate::tables::snapshot::Snapshot;
    use crate::wire::VNET_HDR_LEN;

    /// An ARP request from port 1 (02:00:00:00:00:0a, 172.30.0.2) for 172.30.0.3, broadcast,
    /// with a plain virtio_net_hdr, padded to the 60-byte Ethernet minimum.
    pub static ARP_REQUEST: [u8; 70] = [
        // virtio_net_hdr
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        // Ethernet: dst ff:ff:ff:ff:ff:ff, src 02:00:00:00:00:0a, ARP
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x06,
        // ARP: Ethernet, IPv4, hlen 6, plen 4, request
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, //
        // sender 02:00:00:00:00:0a 172.30.0.2
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 172, 30, 0, 2, //
        // target 00:00:00:00:00:00 172.30.0.3
        0, 0, 0, 0, 0, 0, 172, 30, 0, 3, //
        // padding
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// An ICMP echo request 172.30.0.2 -> 172.30.0.3 from port 1 to port 2's MAC, with correct
    /// IPv4 and ICMP checksums.
    pub static ICMP_ECHO: [u8; 10 + 14 + 20 + 12] = [
        // virtio_net_hdr
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        // Ethernet: dst 02:00:00:00:00:0b, src 02:00:00:00:00:0a, IPv4
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x00,
        // IPv4: v4 ihl 5, tos 0, total 32, id 1, DF, ttl 64, ICMP, checksum, src, dst
        0x45, 0x00, 0x00, 0x20, 0x00, 0x01, 0x40, 0x00, 0x40, 0x01, 0xe2, 0x9a, 172, 30, 0, 2, 172,
        30, 0, 3, //
        // ICMP echo request, checksum, id 1, seq 1, payload "ping"
        0x08, 0x00, 0x19, 0x2d, 0x00, 0x01, 0x00, 0x01, b'p', b'i', b'n', b'g',
    ];

    /// A DHCPDISCOVER-shaped frame: 0.0.0.0:68 -> 255.255.255.255:67 from port 1, broadcast
    /// (the UDP payload is cut short: only the headers matter to the switch).
    pub static DHCP_DISCOVER: [u8; 10 + 14 + 20 + 8 + 4] = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x00,
        // IPv4: total 32, UDP, 0.0.0.0 -> 255.255.255.255
        0x45, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x40, 0x11, 0x7a, 0xce, 0, 0, 0, 0, 255,
        255, 255, 255, //
        // UDP 68 -> 67, length 12, no checksum
        0x00, 0x44, 0x00, 0x43, 0x00, 0x0c, 0x00, 0x00, //
        0x01, 0x01, 0x06, 0x00,
    ];

    /// An IPv6 frame (ICMPv6 echo fd00::a -> fd00::b) from port 1 to port 2's MAC.
    pub static IPV6_ECHO: [u8; 10 + 14 + 40 + 8] = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x86, 0xdd,
        // IPv6: version 6, payload 8, next header 58, hop limit 64
        0x60, 0x00, 0x00, 0x00, 0x00, 0x08, 58, 64, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, //
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b, //
        0x80, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    /// Returns `frame` with the Ethernet source replaced.
    pub fn with_src_mac(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
        let mut bytes = frame.to_vec();
        bytes[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&mac);
        bytes
    }

    /// Returns `frame` with the Ethernet destination replaced.
    pub fn with_dst_mac(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
        let mut bytes = frame.to_vec();
        bytes[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&mac);
        bytes
    }

    /// Returns `frame` with byte `at` of the Ethernet frame (after the virtio header) set.
    pub fn with_byte(frame: &[u8], at: usize, value: u8) -> Vec<u8> {
        let mut bytes = frame.to_vec();
        bytes[VNET_HDR_LEN + at] = value;
        bytes
    }

    /// An IPv4 frame (plain virtio header) with `payload` after a 20-byte header; the header
    /// checksum is filled.
    #[allow(clippy::too_many_arguments)]
    pub fn ipv4_frame(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        protocol: IpProtocol,
        dont_frag: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN + 14 + 20 + payload.len()];
        frame[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst_mac);
        frame[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&src_mac);
        frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x08, 0x00]);
        frame[VNET_HDR_LEN + 34..].copy_from_slice(payload);
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[VNET_HDR_LEN + 14..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(u16::try_from(20 + payload.len()).expect("small"));
        ip.set_ident(0x4242);
        ip.set_dont_frag(dont_frag);
        ip.set_hop_limit(ttl);
        ip.set_next_header(protocol);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        frame
    }

    /// A TCP segment `src:sport -> dst:dport` with `flags` (0x02 SYN, 0x12 SYN-ACK, 0x10
    /// ACK), sequence number 1000, window 512, 4 bytes of data ("data"), DF set, checksums
    /// filled.
    pub fn tcp_frame(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
        flags: u8,
    ) -> Vec<u8> {
        let l4 = VNET_HDR_LEN + 14 + 20;
        let mut frame = ipv4_frame(
            src_mac,
            dst_mac,
            src,
            dst,
            64,
            IpProtocol::Tcp,
            true,
            &[0u8; 24],
        );
        let segment = &mut frame[l4..];
        segment[12] = 0x50;
        segment[13] = flags;
        segment[20..24].copy_from_slice(b"data");
        let mut packet = smoltcp::wire::TcpPacket::new_unchecked(segment);
        packet.set_src_port(sport);
        packet.set_dst_port(dport);
        packet.set_seq_number(smoltcp::wire::TcpSeqNumber(1000));
        packet.set_window_len(512);
        packet.fill_checksum(&src.into(), &dst.into());
        frame
    }

    /// An ICMP echo request (or reply) `src -> dst` with identifier `ident`, sequence 1 and
    /// "ping", checksums filled.
    pub fn echo_frame(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ident: u16,
        request: bool,
    ) -> Vec<u8> {
        let kind = if request { 8 } else { 0 };
        let mut message = vec![kind, 0, 0, 0, 0, 0, 0, 1, b'p', b'i', b'n', b'g'];
        message[4..6].copy_from_slice(&ident.to_be_bytes());
        let mut frame = ipv4_frame(
            src_mac,
            dst_mac,
            src,
            dst,
            64,
            IpProtocol::Icmp,
            false,
            &message,
        );
        smoltcp::wire::Icmpv4Packet::new_unchecked(&mut frame[VNET_HDR_LEN + 14 + 20..])
            .fill_checksum();
        frame
    }

    /// A UDP datagram `src:sport -> dst:dport` carrying `data`, checksums filled.
    #[allow(clippy::too_many_arguments)]
    pub fn udp_frame(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        (src, sport): (Ipv4Addr, u16),
        (dst, dport): (Ipv4Addr, u16),
        ttl: u8,
        dont_frag: bool,
        data: &[u8],
    ) -> Vec<u8> {
        let l4 = VNET_HDR_LEN + 14 + 20;
        let mut payload = vec![0u8; 8 + data.len()];
        payload[8..].copy_from_slice(data);
        let mut frame = ipv4_frame(
            src_mac,
            dst_mac,
            src,
            dst,
            ttl,
            IpProtocol::Udp,
            dont_frag,
            &payload,
        );
        let mut packet = smoltcp::wire::UdpPacket::new_unchecked(&mut frame[l4..]);
        packet.set_src_port(sport);
        packet.set_dst_port(dport);
        packet.set_len(u16::try_from(8 + data.len()).expect("small"));
        packet.fill_checksum(&src.into(), &dst.into());
        frame
    }

    /// The stages with their shared tables and one worker's state, for tests.
    pub struct Bench {
        /// The configuration.
        pub snapshot: Snapshot,
        /// Learned MACs.
        pub fdb: Fdb,
        /// Neighbours.
        pub neighbors: Neighbors,
        /// Remote MACs behind the overlay.
        pub remote_fdb: ::vxlan::VxlanSharedFdb,
        /// The worker's state.
        pub local: RefCell<Local>,
    }

    impl Bench {
        /// A bench over [`snapshot`].
        pub fn new() -> Bench {
            Bench::with(snapshot())
        }

        /// A bench over `snapshot`.
        pub fn with(snapshot: Snapshot) -> Bench {
            Bench {
                snapshot,
                fdb: Fdb::new(),
                neighbors: Neighbors::new(),
                remote_fdb: ::vxlan::VxlanSharedFdb::new(Default::default()),
                local: RefCell::new(Local::new(0)),
            }
        }

        /// The context at `now_ms`.
        pub fn ctx(&self, now_ms: u64) -> Context<'_> {
            Context {
                snapshot: &self.snapshot,
                fdb: &self.fdb,
                neighbors: &self.neighbors,
                remote_fdb: &self.remote_fdb,
                now_ms,
                trace: None,
            }
        }

        /// Runs the stages on a copy of `frame` from port `port` at `now_ms` (the frames
        /// generated before are forgotten first); returns the outcome and the frame as the
        /// stages left it.
        pub fn run(&self, port: u32, frame: &[u8], now_ms: u64) -> (Outcome, Vec<u8>) {
            let mut bytes = frame.to_vec();
            let mut local = self.local.borrow_mut();
            local.out.generated.clear();
            let ingress = self.snapshot.port(PortId(port)).expect("fixture port");
            let outcome = process(&self.ctx(now_ms), ingress, &mut bytes, &mut local);
            (outcome, bytes)
        }

        /// [`run`](Bench::run) for a frame received on the snapshot's uplink.
        pub fn run_uplink(&self, frame: &[u8], now_ms: u64) -> (Outcome, Vec<u8>) {
            let mut bytes = frame.to_vec();
            let mut local = self.local.borrow_mut();
            local.out.generated.clear();
            let uplink = self.snapshot.uplink.as_ref().expect("fixture uplink");
            let outcome = process_uplink(&self.ctx(now_ms), uplink, &mut bytes, &mut local);
            (outcome, bytes)
        }

        /// [`run`](Bench::run), the outcome only.
        pub fn send(&self, port: u32, frame: &[u8], now_ms: u64) -> Outcome {
            self.run(port, frame, now_ms).0
        }

        /// The frames generated since the last run: verdict, origin and bytes (virtio
        /// header included).
        pub fn generated(&self) -> Vec<(Verdict, Origin, Vec<u8>)> {
            let local = self.local.borrow();
            let generated = &local.out.generated;
            (0..generated.len())
                .map(|i| {
                    let meta = generated.meta(i).expect("in range");
                    let bytes = generated.frame(i).expect("in range").to_vec();
                    (meta.verdict, meta.origin, bytes)
                })
                .collect()
        }

        /// A frame from `port` (its own MAC and IP, so port security passes) to `dst`.
        pub fn frame_from(&self, port: u32, dst: [u8; 6]) -> Vec<u8> {
            let entry = self.snapshot.port(PortId(port)).expect("fixture port");
            let mut frame = with_dst_mac(&with_src_mac(&ICMP_ECHO, entry.mac), dst);
            frame[10 + 14 + 12..10 + 14 + 16].copy_from_slice(&entry.ips[0].octets());
            frame
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn cause_indexes_are_dense_and_keys_unique() {
        let causes: Vec<DropCause> = DropCause::all().collect();
        assert_eq!(causes.len(), DropCause::COUNT);
        for (index, cause) in causes.iter().enumerate() {
            assert_eq!(cause.index(), index, "{cause}");
            assert!(
                cause
                    .key()
                    .starts_with(&format!("{}.", cause.stage().name())),
                "{} must start with its stage name",
                cause.key()
            );
            assert!(!cause.description().is_empty());
        }
        let mut keys: Vec<&str> = causes.iter().map(|c| c.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), DropCause::COUNT, "keys are unique");
    }

    #[test]
    fn process_arp_request_floods_and_learns() {
        let bench = Bench::new();
        let outcome = bench.send(1, &ARP_REQUEST, 1_000);
        assert_eq!(outcome.verdict, Verdict::Flood);
        assert_eq!(outcome.learn, Some(Learn::Learned));
        let blue = bench.snapshot.subnet(SubnetId(1)).unwrap();
        assert_eq!(bench.fdb.lookup(blue, MAC_A, 1_000), Some(PortId(1)));
        assert!(
            bench.generated().is_empty(),
            "not for the gateway: no answer"
        );
    }

    #[test]
    fn process_reply_goes_unicast_after_learning() {
        let bench = Bench::new();
        // Port 2 has not spoken yet: port 1's echo to its MAC is unknown unicast.
        assert_eq!(bench.send(1, &ICMP_ECHO, 5).verdict, Verdict::Flood);
        // Port 2 answers (source B, destination A, source IP B).
        let mut reply = with_src_mac(&with_dst_mac(&ICMP_ECHO, MAC_A), MAC_B);
        reply[10 + 14 + 12..10 + 14 + 16].copy_from_slice(&IP_B.octets());
        reply[10 + 14 + 16..10 + 14 + 20].copy_from_slice(&IP_A.octets());
        assert_eq!(
            bench.send(2, &reply, 5).verdict,
            Verdict::Forward(PortId(1))
        );
        assert_eq!(
            bench.send(1, &ICMP_ECHO, 5).verdict,
            Verdict::Forward(PortId(2))
        );
    }

    #[test]
    fn process_drops_in_stage_order() {
        let bench = Bench::new();
        assert_eq!(
            bench.send(1, &ICMP_ECHO[..20], 0).verdict,
            Verdict::Drop(DropCause::Parse(parse::DropReason::Runt))
        );
        assert_eq!(
            bench.send(1, &with_src_mac(&ICMP_ECHO, MAC_B), 0).verdict,
            Verdict::Drop(DropCause::PortSecurity(port_security::DropReason::SrcMac))
        );
        // A dropped frame teaches nothing.
        assert_eq!(bench.fdb.len(), 0);
    }
}
