//! The connection table shared by all workers.
//!
//! # Layout
//! [`SHARDS`] shards, each a `parking_lot::RwLock` over a map `FlowKey -> Arc<Conn>` and a slab
//! of the connections it owns. A connection is owned by the shard of its original key; its
//! reply key lives in whichever shard that key hashes to, pointing at the same `Arc`. The
//! shards are cache-line aligned so two workers on two shards never share a lock's line.
//!
//! # Hits take no write lock
//! [`Conntrack::lookup`] takes one shard's read lock. Everything a packet can change lives in
//! atomics inside the entry: the status word (TCP state, replied, assured, dead) moves by
//! compare-and-swap, `last_seen` only when the millisecond changed, and the attachments are
//! plain atomic loads. So the steady state of any flow, in either direction, takes no write
//! lock. It does write two shared lines, though: its entry's (a status change, or `last_seen`
//! once per millisecond) and its shard's lock word: a `parking_lot` read lock is an atomic
//! add on the lock word to enter and a subtract to leave, so every hit writes that line, and
//! workers whose flows hash to the same shard bounce it between their cores (the padding
//! above only keeps *different* shards off each other's lines).
//!
//! # Updates are rare and bounded
//! [`Conntrack::create`] (a flow's first packet) and removals take the write locks of the (at
//! most two) shards holding the entry's keys, always in shard-index order, so they cannot
//! deadlock. The port allocator has its own mutex, taken only to create or remove a
//! masqueraded connection, never while a shard lock is held.
//!
//! # Limit and eviction
//! The table holds at most `max_entries` connections. A new flow on a full table scans at most
//! [`EVICT_SCAN`] slots in each of the next two non-empty shards (from cursors that move on
//! every time) for an entry that is unassured, expired, or in TCP `TIME_WAIT`/`CLOSE`, and
//! evicts the first one found (what Linux `early_drop` does). If none is found the flow is refused
//! ([`CreateError::TableFull`]) and counted: never a stall, never an unbounded scan.
//!
//! # Expiry
//! An entry past its timeout is treated as absent by every lookup at once; memory is reclaimed
//! by [`Conntrack::sweep`], which visits at most `budget` slots per call, continuing where the
//! previous call stopped (call it once per batch or from a housekeeping tick), and by `create`
//! when it meets an expired entry on its key.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::config::{ConntrackConfig, millis};
use crate::packet::{EchoKind, PacketInfo, PacketKind};
use crate::ports::{InterfaceUsage, MappingKey, NatError, PortAllocator};
use crate::rules::{NatPlan, Snat};
use crate::tcp::{TcpProgress, TcpState};
use crate::tuple::{Direction, FlowKey, Protocol, Tuple, Zone};

/// Number of shards; a power of two.
pub const SHARDS: usize = 64;

/// Slots examined per shard when a full table looks for an entry to evict.
pub const EVICT_SCAN: usize = 32;

/// Non-empty shards examined when a full table looks for an entry to evict.
const EVICT_SHARDS: usize = 2;

// The status word.
const TCP_MASK: u32 = 0x0f;
const SEEN_REPLY: u32 = 1 << 4;
const ASSURED: u32 = 1 << 5;
const DEAD: u32 = 1 << 6;

/// Per-connection values owned by other stages (stateful policy, load balancing): set when
/// the connection is created or later with [`Conntrack::set_attachments`], handed back with
/// every hit. Add a field here (and a slot in `Conn`) for a new consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attachments {
    /// The load balancer's chosen backend (its id in the LB's backend table).
    pub lb_backend: Option<u32>,
    /// The policy stage's verdict for the connection (its own encoding).
    pub policy: Option<u32>,
}

impl Attachments {
    fn encode(value: Option<u32>) -> u64 {
        value.map_or(0, |v| 1 << 32 | u64::from(v))
    }

    fn decode(word: u64) -> Option<u32> {
        (word >> 32 != 0).then(|| u32::try_from(word & u64::from(u32::MAX)).unwrap_or(0))
    }
}

/// A connection's protocol state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// TCP, with its state.
    Tcp(TcpState),
    /// UDP: unreplied until a packet went the reply way.
    Udp {
        /// A reply was seen.
        replied: bool,
    },
    /// ICMP echo.
    Icmp {
        /// A reply was seen.
        replied: bool,
    },
}

impl ConnState {
    /// The name shown by `vswitchctl conntrack` (TCP states as Linux prints them; UDP and
    /// ICMP as `UNREPLIED`/`REPLIED`).
    pub const fn name(self) -> &'static str {
        match self {
            ConnState::Tcp(state) => state.name(),
            ConnState::Udp { replied: false } | ConnState::Icmp { replied: false } => "UNREPLIED",
            ConnState::Udp { replied: true } | ConnState::Icmp { replied: true } => "REPLIED",
        }
    }
}

/// What conntrack says about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The packet's direction in its connection.
    pub direction: Direction,
    /// This packet created the connection.
    pub new: bool,
    /// The packet is an ICMP error about the connection (it changed no state).
    pub related: bool,
    /// The protocol state after this packet.
    pub state: ConnState,
    /// The connection has seen traffic both ways (TCP: a completed handshake).
    pub assured: bool,
    /// The tuple to rewrite the packet to ([`translate`](fn@crate::translate)), or `None` when
    /// the connection is not NATed.
    pub target: Option<Tuple>,
    /// The zone the packet continues in after translation.
    pub egress_zone: Zone,
    /// Other stages' per-connection values.
    pub attachments: Attachments,
}

/// Why a new connection was not created. The datapath drops the packet and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CreateError {
    /// The packet cannot start a connection: a TCP RST (or non-SYN without loose mode), an
    /// ICMP echo reply, or an ICMP error.
    #[error("packet cannot start a connection")]
    NotAStart,
    /// The table is full and nothing evictable was found.
    #[error("conntrack table full")]
    TableFull,
    /// No NAT mapping could be made.
    #[error(transparent)]
    Nat(#[from] NatError),
    /// The reply key is taken by another live connection.
    #[error("reply tuple already in use by another connection")]
    Clash,
}

impl CreateError {
    /// The stable counter key.
    pub const fn key(self) -> &'static str {
        match self {
            CreateError::NotAStart => "conntrack.not_a_start",
            CreateError::TableFull => "conntrack.table_full",
            CreateError::Nat(error) => error.key(),
            CreateError::Clash => "conntrack.clash",
        }
    }
}

/// True when an echo packet of `kind` meets its connection in the wrong direction: a reply
/// the request's way, or a request the reply's (possible with identifier 0, where both have
/// ports 0 and 0).
fn echo_against(kind: PacketKind, direction: Direction) -> bool {
    matches!(
        (kind, direction),
        (PacketKind::IcmpEcho(EchoKind::Reply), Direction::Original)
            | (PacketKind::IcmpEcho(EchoKind::Request), Direction::Reply)
    )
}

/// One connection as listed by [`Conntrack::entries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The original key.
    pub original: FlowKey,
    /// The reply key.
    pub reply: FlowKey,
    /// Protocol state.
    pub state: ConnState,
    /// Seen both ways.
    pub assured: bool,
    /// Milliseconds since the connection was created.
    pub age_ms: u64,
    /// Milliseconds until it expires without traffic.
    pub expires_in_ms: u64,
    /// Other stages' values.
    pub attachments: Attachments,
}

/// Table-wide counters (rare events; per-packet outcomes are returned to the caller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// Connections in the table (live or expired, not yet swept).
    pub entries: usize,
    /// Connections created.
    pub created: u64,
    /// Connections removed because they expired.
    pub expired: u64,
    /// Connections evicted to make room.
    pub evicted: u64,
    /// New flows refused because the table was full.
    pub refused_full: u64,
    /// New flows refused because their reply key was taken.
    pub clashes: u64,
    /// Live masquerade mappings.
    pub nat_mappings: usize,
}

/// What one [`Conntrack::sweep`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Slots visited.
    pub scanned: usize,
    /// Connections removed.
    pub expired: usize,
}

#[derive(Debug)]
struct Conn {
    /// Original and reply key.
    keys: [FlowKey; 2],
    /// Per direction, the tuple a packet must leave with; `None` when not NATed.
    targets: [Option<Tuple>; 2],
    created_ms: u64,
    last_seen: AtomicU64,
    status: AtomicU32,
    lb_backend: AtomicU64,
    policy: AtomicU64,
    /// The masquerade mapping this connection holds a reference to.
    binding: Option<MappingKey>,
    /// Index in the owner shard's slab.
    slot: u32,
}

impl Conn {
    fn protocol(&self) -> Protocol {
        self.keys[0].tuple.protocol
    }

    fn direction_of(&self, key: &FlowKey) -> Direction {
        if self.keys[0] == *key {
            Direction::Original
        } else {
            Direction::Reply
        }
    }

    fn attachments(&self) -> Attachments {
        Attachments {
            lb_backend: Attachments::decode(self.lb_backend.load(Ordering::Relaxed)),
            policy: Attachments::decode(self.policy.load(Ordering::Relaxed)),
        }
    }
}

fn state_of(protocol: Protocol, status: u32) -> ConnState {
    let replied = status & SEEN_REPLY != 0;
    match protocol {
        Protocol::Tcp => ConnState::Tcp(tcp_progress(status).state),
        Protocol::Udp => ConnState::Udp { replied },
        Protocol::Icmp => ConnState::Icmp { replied },
    }
}

fn tcp_progress(status: u32) -> TcpProgress {
    TcpProgress::unpack(u8::try_from(status & TCP_MASK).unwrap_or(0))
}

/// The status after a packet going `direction`.
fn advance(protocol: Protocol, status: u32, direction: Direction, kind: PacketKind) -> u32 {
    let mut next = status;
    if direction == Direction::Reply {
        next |= SEEN_REPLY;
    }
    match (protocol, kind) {
        (Protocol::Tcp, PacketKind::Tcp(flags)) => {
            let before = tcp_progress(status);
            let after = before.advance(direction, flags);
            next = (next & !TCP_MASK) | u32::from(after.pack());
            if after.state == TcpState::SynSent && before.state != TcpState::SynSent {
                // Reopened: a new connection on the same tuple starts unreplied again.
                next &= !(SEEN_REPLY | ASSURED);
            } else if next & SEEN_REPLY != 0
                && matches!(
                    after.state,
                    TcpState::Established
                        | TcpState::FinWait
                        | TcpState::CloseWait
                        | TcpState::LastAck
                        | TcpState::TimeWait
                )
            {
                next |= ASSURED;
            }
        }
        (Protocol::Udp | Protocol::Icmp, _) if next & SEEN_REPLY != 0 => next |= ASSURED,
        _ => {}
    }
    next
}

/// Timeouts in milliseconds, resolved once.
#[derive(Clone, Copy, Debug)]
struct TimeoutsMs {
    tcp: [u64; 8],
    tcp_unreplied: u64,
    udp_unreplied: u64,
    udp_replied: u64,
    icmp: u64,
}

impl TimeoutsMs {
    fn new(config: &ConntrackConfig) -> TimeoutsMs {
        let t = &config.timeouts;
        TimeoutsMs {
            tcp: [
                millis(t.tcp_syn_sent),
                millis(t.tcp_syn_recv),
                millis(t.tcp_established),
                millis(t.tcp_fin_wait),
                millis(t.tcp_close_wait),
                millis(t.tcp_last_ack),
                millis(t.tcp_time_wait),
                millis(t.tcp_close),
            ],
            tcp_unreplied: millis(t.tcp_unreplied),
            udp_unreplied: millis(t.udp_unreplied),
            udp_replied: millis(t.udp_replied),
            icmp: millis(t.icmp),
        }
    }

    fn get(&self, protocol: Protocol, status: u32) -> u64 {
        let replied = status & SEEN_REPLY != 0;
        match protocol {
            Protocol::Tcp => {
                let state = tcp_progress(status).state;
                if state == TcpState::Established && !replied {
                    return self.tcp_unreplied;
                }
                let index = match state {
                    TcpState::SynSent => 0,
                    TcpState::SynRecv => 1,
                    TcpState::Established => 2,
                    TcpState::FinWait => 3,
                    TcpState::CloseWait => 4,
                    TcpState::LastAck => 5,
                    TcpState::TimeWait => 6,
                    TcpState::Close => 7,
                };
                self.tcp[index]
            }
            Protocol::Udp if replied => self.udp_replied,
            Protocol::Udp => self.udp_unreplied,
            Protocol::Icmp => self.icmp,
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Keyed by foldhash rather than std's SipHash: every tracked packet looks its key up
    /// here. Its `RandomState` is seeded per process and per map, so colliding keys cannot be
    /// precomputed; foldhash is only "minimally DoS-resistant" (it does not claim to resist an
    /// attacker who recovers the seed by timing the table).
    map: HashMap<FlowKey, Arc<Conn>, foldhash::fast::RandomState>,
    slots: Vec<Option<Arc<Conn>>>,
    free: Vec<u32>,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct PaddedShard {
    lock: RwLock<Shard>,
    /// Connections owned (changed under the write lock; read without it by eviction).
    owned: AtomicUsize,
    evict_cursor: AtomicUsize,
}

#[derive(Debug, Default)]
struct SweepCursor {
    shard: usize,
    slot: usize,
    scratch: Vec<Arc<Conn>>,
}

#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    refused_full: AtomicU64,
    clashes: AtomicU64,
}

/// Write guards on one or two shards, taken in index order.
struct Pair<'a> {
    low: usize,
    first: RwLockWriteGuard<'a, Shard>,
    second: Option<RwLockWriteGuard<'a, Shard>>,
}

impl Pair<'_> {
    fn get(&mut self, index: usize) -> &mut Shard {
        match self.second.as_mut() {
            Some(second) if index != self.low => second,
            _ => &mut self.first,
        }
    }
}

/// The connection table. Share it between workers behind an `Arc`; every method takes
/// `&self`.
#[derive(Debug)]
pub struct Conntrack {
    shards: Box<[PaddedShard]>,
    config: ConntrackConfig,
    timeouts: TimeoutsMs,
    len: AtomicUsize,
    ports: Mutex<PortAllocator>,
    sweep: Mutex<SweepCursor>,
    counters: Counters,
    /// The shard where the next eviction scan starts.
    evict_shard: AtomicUsize,
}

impl Default for Conntrack {
    fn default() -> Conntrack {
        Conntrack::new(ConntrackConfig::default())
    }
}

impl Conntrack {
    /// An empty table.
    pub fn new(config: ConntrackConfig) -> Conntrack {
        Conntrack {
            shards: (0..SHARDS).map(|_| PaddedShard::default()).collect(),
            timeouts: TimeoutsMs::new(&config),
            config,
            len: AtomicUsize::new(0),
            ports: Mutex::new(PortAllocator::default()),
            sweep: Mutex::new(SweepCursor::default()),
            counters: Counters::default(),
            evict_shard: AtomicUsize::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ConntrackConfig {
        &self.config
    }

    /// Connections in the table (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when the table holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn shard_index(key: &FlowKey) -> usize {
        // SHARDS is 64: the top 6 bits of the hash, which always fit a usize.
        usize::try_from(key.shard_hash() >> (64 - SHARDS.trailing_zeros())).unwrap_or(0) % SHARDS
    }

    fn lock_pair(&self, i: usize, j: usize) -> Pair<'_> {
        let (low, high) = (i.min(j), i.max(j));
        let first = self.shards[low].lock.write();
        let second = (high != low).then(|| self.shards[high].lock.write());
        Pair { low, first, second }
    }

    #[inline]
    fn is_expired(&self, conn: &Conn, status: u32, now_ms: u64) -> bool {
        let idle = now_ms.saturating_sub(conn.last_seen.load(Ordering::Relaxed));
        idle >= self.timeouts.get(conn.protocol(), status)
    }

    #[inline]
    fn is_live(&self, conn: &Conn, now_ms: u64) -> bool {
        let status = conn.status.load(Ordering::Acquire);
        status & DEAD == 0 && !self.is_expired(conn, status, now_ms)
    }

    fn tracked(&self, conn: &Conn, direction: Direction, status: u32, new: bool) -> Tracked {
        Tracked {
            direction,
            new,
            related: false,
            state: state_of(conn.protocol(), status),
            assured: status & ASSURED != 0,
            target: conn.targets[direction.index()],
            egress_zone: conn.keys[direction.opposite().index()].zone,
            attachments: conn.attachments(),
        }
    }

    /// What [`lookup`](Conntrack::lookup) would answer for a packet, changing nothing: the
    /// state it would move the connection to, without moving it or its idle timer (a packet
    /// tracer's dry run must leave the table as it found it).
    pub fn peek(&self, zone: Zone, packet: &PacketInfo, now_ms: u64) -> Option<Tracked> {
        let key = FlowKey::new(zone, packet.tuple);
        let shard = self.shards[Self::shard_index(&key)].lock.read();
        let conn = shard.map.get(&key)?;
        let status = conn.status.load(Ordering::Acquire);
        if status & DEAD != 0 || self.is_expired(conn, status, now_ms) {
            return None;
        }
        let direction = conn.direction_of(&key);
        // An echo request goes the original way and its reply the other. With identifier 0
        // a reply's tuple (ports 0 and 0) equals its request's: a reply sent the request's
        // way (or a request the reply's) is not this connection's, as the kernel's ICMP
        // tuples, which keep the type, tell them apart.
        if echo_against(packet.kind, direction) {
            return None;
        }
        if packet.kind == PacketKind::IcmpError {
            let mut tracked = self.tracked(conn, direction, status, false);
            tracked.related = true;
            return Some(tracked);
        }
        let next = advance(conn.protocol(), status, direction, packet.kind);
        Some(self.tracked(conn, direction, next, false))
    }

    /// Looks a packet up in `zone` and, on a hit, advances the connection's state and idle
    /// timer (ICMP errors change neither). Returns `None` on a miss or when the entry has
    /// expired: call [`create`](Conntrack::create) next if the packet may start a flow.
    ///
    /// Takes one shard's read lock; never allocates.
    pub fn lookup(&self, zone: Zone, packet: &PacketInfo, now_ms: u64) -> Option<Tracked> {
        let key = FlowKey::new(zone, packet.tuple);
        let shard = self.shards[Self::shard_index(&key)].lock.read();
        let conn = shard.map.get(&key)?;
        let mut status = conn.status.load(Ordering::Acquire);
        if status & DEAD != 0 || self.is_expired(conn, status, now_ms) {
            return None;
        }
        let direction = conn.direction_of(&key);
        // An echo request goes the original way and its reply the other. With identifier 0
        // a reply's tuple (ports 0 and 0) equals its request's: a reply sent the request's
        // way (or a request the reply's) is not this connection's, as the kernel's ICMP
        // tuples, which keep the type, tell them apart.
        if echo_against(packet.kind, direction) {
            return None;
        }
        if packet.kind == PacketKind::IcmpError {
            let mut tracked = self.tracked(conn, direction, status, false);
            tracked.related = true;
            return Some(tracked);
        }
        loop {
            let next = advance(conn.protocol(), status, direction, packet.kind);
            if next == status {
                break;
            }
            match conn.status.compare_exchange_weak(
                status,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    status = next;
                    break;
                }
                Err(current) => status = current,
            }
        }
        if conn.last_seen.load(Ordering::Relaxed) < now_ms {
            conn.last_seen.fetch_max(now_ms, Ordering::Relaxed);
        }
        Some(self.tracked(conn, direction, status, false))
    }

    /// Creates the connection a packet starts, with the NAT of `plan` (from
    /// [`NatRules::plan`](crate::NatRules::plan), or [`NatPlan::none`]) and initial
    /// `attachments`. If another worker created it meanwhile, the packet is tracked on that
    /// entry instead (`new` is then false).
    ///
    /// Takes the write locks of at most two shards (and the port allocator's mutex for
    /// masquerade); may evict one entry when the table is full.
    ///
    /// # Errors
    /// [`CreateError`]: the packet cannot start a flow, the table is full, no NAT port is
    /// free, or the reply tuple is taken.
    pub fn create(
        &self,
        zone: Zone,
        packet: &PacketInfo,
        plan: &NatPlan<'_>,
        attachments: Attachments,
        now_ms: u64,
    ) -> Result<Tracked, CreateError> {
        let status = match packet.kind {
            PacketKind::Tcp(flags) => {
                let progress = TcpProgress::start(flags, self.config.tcp_loose)
                    .ok_or(CreateError::NotAStart)?;
                u32::from(progress.pack())
            }
            PacketKind::Udp | PacketKind::IcmpEcho(EchoKind::Request) => 0,
            PacketKind::IcmpEcho(EchoKind::Reply) | PacketKind::IcmpError => {
                return Err(CreateError::NotAStart);
            }
        };
        let original = FlowKey::new(zone, packet.tuple);
        let owner = Self::shard_index(&original);
        self.reserve(now_ms)?;

        // The tuple as it leaves, then the reply key.
        let mut translated = packet.tuple;
        if let Some(destination) = plan.dnat {
            translated = translated.with_destination(destination);
        }
        let mut binding = None;
        match plan.snat {
            Snat::None => {}
            Snat::Static(addr) => translated.src = addr,
            Snat::Masquerade { gateway, interface } => {
                let key = MappingKey {
                    zone,
                    protocol: packet.tuple.protocol,
                    internal: packet.tuple.source(),
                };
                match self.ports.lock().acquire(gateway, interface, key) {
                    Ok(external) => {
                        translated = translated.with_source(external);
                        binding = Some(key);
                    }
                    Err(error) => {
                        self.len.fetch_sub(1, Ordering::AcqRel);
                        return Err(error.into());
                    }
                }
            }
        }
        let reply = FlowKey::new(plan.reply_zone, translated.reversed());
        let natted = reply.tuple != original.tuple.reversed();
        let targets = if natted {
            [Some(translated), Some(original.tuple.reversed())]
        } else {
            [None, None]
        };

        let undo = |this: &Conntrack| {
            this.len.fetch_sub(1, Ordering::AcqRel);
            if let Some(key) = &binding {
                this.ports.lock().release(key);
            }
        };
        let reply_shard = Self::shard_index(&reply);
        let mut pair = self.lock_pair(owner, reply_shard);
        let existing = pair.get(owner).map.get(&original).cloned();
        if let Some(existing) = &existing {
            if self.is_live(existing, now_ms) {
                drop(pair);
                undo(self);
                return self.lookup(zone, packet, now_ms).ok_or(CreateError::Clash);
            }
        }
        let occupant = if reply == original {
            None
        } else {
            pair.get(reply_shard).map.get(&reply).cloned()
        };
        if let Some(occupant) = &occupant {
            if self.is_live(occupant, now_ms) {
                drop(pair);
                undo(self);
                self.counters.clashes.fetch_add(1, Ordering::Relaxed);
                return Err(CreateError::Clash);
            }
        }
        let shard = pair.get(owner);
        let slot = match shard.free.pop() {
            Some(slot) => slot,
            None => match u32::try_from(shard.slots.len()) {
                Ok(slot) => {
                    shard.slots.push(None);
                    slot
                }
                Err(_) => {
                    drop(pair);
                    undo(self);
                    return Err(CreateError::TableFull);
                }
            },
        };
        let conn = Arc::new(Conn {
            keys: [original, reply],
            targets,
            created_ms: now_ms,
            last_seen: AtomicU64::new(now_ms),
            status: AtomicU32::new(status),
            lb_backend: AtomicU64::new(Attachments::encode(attachments.lb_backend)),
            policy: AtomicU64::new(Attachments::encode(attachments.policy)),
            binding,
            slot,
        });
        if let Some(entry) = usize::try_from(slot)
            .ok()
            .and_then(|s| shard.slots.get_mut(s))
        {
            *entry = Some(Arc::clone(&conn));
        }
        shard.map.insert(original, Arc::clone(&conn));
        self.shards[owner].owned.fetch_add(1, Ordering::Relaxed);
        if reply != original {
            pair.get(reply_shard).map.insert(reply, Arc::clone(&conn));
        }
        drop(pair);
        // Entries we replaced were dead or expired; finish removing them.
        for displaced in [existing, occupant].into_iter().flatten() {
            if self.claim(&displaced) {
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
                self.unlink(&displaced);
                self.finish(&displaced);
            }
        }
        self.counters.created.fetch_add(1, Ordering::Relaxed);
        Ok(self.tracked(&conn, Direction::Original, status, true))
    }

    /// Takes one unit of the table limit, evicting once if the table is full.
    fn reserve(&self, now_ms: u64) -> Result<(), CreateError> {
        for attempt in 0..2 {
            if self.len.fetch_add(1, Ordering::AcqRel) < self.config.max_entries {
                return Ok(());
            }
            self.len.fetch_sub(1, Ordering::AcqRel);
            if attempt == 0 && !self.evict_one(now_ms) {
                break;
            }
        }
        self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
        Err(CreateError::TableFull)
    }

    fn is_evictable(&self, conn: &Conn, now_ms: u64) -> bool {
        let status = conn.status.load(Ordering::Acquire);
        if status & DEAD != 0 {
            return false;
        }
        status & ASSURED == 0
            || self.is_expired(conn, status, now_ms)
            || (conn.protocol() == Protocol::Tcp
                && matches!(
                    tcp_progress(status).state,
                    TcpState::TimeWait | TcpState::Close
                ))
    }

    /// Evicts one evictable entry found within the bounded scan: [`EVICT_SCAN`] slots of
    /// each of the next `EVICT_SHARDS` non-empty shards after a rotating cursor (skipping an
    /// empty shard costs one atomic load, at most [`SHARDS`] of them).
    fn evict_one(&self, now_ms: u64) -> bool {
        let start = self.evict_shard.fetch_add(1, Ordering::Relaxed);
        let mut scanned = 0;
        for step in 0..SHARDS {
            let padded = &self.shards[(start + step) % SHARDS];
            if padded.owned.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let candidate = {
                let shard = padded.lock.read();
                let n = shard.slots.len();
                if n == 0 {
                    continue;
                }
                let first = padded.evict_cursor.fetch_add(EVICT_SCAN, Ordering::Relaxed) % n;
                (0..EVICT_SCAN.min(n)).find_map(|offset| {
                    let conn = shard.slots[(first + offset) % n].as_ref()?;
                    self.is_evictable(conn, now_ms).then(|| Arc::clone(conn))
                })
            };
            if let Some(conn) = candidate {
                if self.claim(&conn) {
                    self.unlink(&conn);
                    self.finish(&conn);
                    self.counters.evicted.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
            }
            scanned += 1;
            if scanned == EVICT_SHARDS {
                break;
            }
        }
        false
    }

    /// Marks a connection dead; true for the one caller that did it.
    fn claim(&self, conn: &Conn) -> bool {
        conn.status.fetch_or(DEAD, Ordering::AcqRel) & DEAD == 0
    }

    /// Removes a connection's keys and slot (only where they still point at it).
    fn unlink(&self, conn: &Arc<Conn>) {
        let owner = Self::shard_index(&conn.keys[0]);
        let reply_shard = Self::shard_index(&conn.keys[1]);
        let mut pair = self.lock_pair(owner, reply_shard);
        for (key, index) in [(&conn.keys[0], owner), (&conn.keys[1], reply_shard)] {
            let shard = pair.get(index);
            if shard.map.get(key).is_some_and(|c| Arc::ptr_eq(c, conn)) {
                shard.map.remove(key);
            }
        }
        let shard = pair.get(owner);
        if let Some(slot) = usize::try_from(conn.slot)
            .ok()
            .and_then(|s| shard.slots.get_mut(s))
        {
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                *slot = None;
                shard.free.push(conn.slot);
                self.shards[owner].owned.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Gives back what a removed connection held: its unit of the limit and its mapping.
    fn finish(&self, conn: &Conn) {
        self.len.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = &conn.binding {
            self.ports.lock().release(key);
        }
    }

    fn remove_conn(&self, conn: &Arc<Conn>) -> bool {
        if !self.claim(conn) {
            return false;
        }
        self.unlink(conn);
        self.finish(conn);
        true
    }

    /// Removes the connection one of whose keys is `key`. Returns whether one was removed.
    pub fn remove(&self, key: &FlowKey) -> bool {
        let conn = self.shards[Self::shard_index(key)]
            .lock
            .read()
            .map
            .get(key)
            .cloned();
        conn.is_some_and(|conn| self.remove_conn(&conn))
    }

    /// Replaces the attachments of the connection one of whose keys is `key` (read lock
    /// only). Returns whether the connection exists.
    pub fn set_attachments(&self, key: &FlowKey, attachments: Attachments) -> bool {
        let shard = self.shards[Self::shard_index(key)].lock.read();
        let Some(conn) = shard.map.get(key) else {
            return false;
        };
        conn.lb_backend.store(
            Attachments::encode(attachments.lb_backend),
            Ordering::Relaxed,
        );
        conn.policy
            .store(Attachments::encode(attachments.policy), Ordering::Relaxed);
        true
    }

    /// Frees expired connections, visiting at most `budget` slots (an empty shard counts as
    /// one) and at most one full pass over the table, continuing where the previous call
    /// stopped. Returns at once if another sweep is running.
    pub fn sweep(&self, now_ms: u64, budget: usize) -> SweepReport {
        let Some(mut cursor) = self.sweep.try_lock() else {
            return SweepReport::default();
        };
        let cursor = &mut *cursor;
        let mut report = SweepReport::default();
        let mut shards_left = SHARDS + 1;
        while report.scanned < budget && shards_left > 0 {
            let index = cursor.shard % SHARDS;
            {
                let shard = self.shards[index].lock.read();
                let n = shard.slots.len();
                while cursor.slot < n && report.scanned < budget {
                    if let Some(conn) = &shard.slots[cursor.slot] {
                        let status = conn.status.load(Ordering::Acquire);
                        if status & DEAD == 0 && self.is_expired(conn, status, now_ms) {
                            cursor.scratch.push(Arc::clone(conn));
                        }
                    }
                    cursor.slot += 1;
                    report.scanned += 1;
                }
                if cursor.slot >= n {
                    cursor.shard = (index + 1) % SHARDS;
                    cursor.slot = 0;
                    shards_left -= 1;
                    if n == 0 {
                        report.scanned += 1;
                    }
                }
            }
            for conn in cursor.scratch.drain(..) {
                if self.remove_conn(&conn) {
                    report.expired += 1;
                    self.counters.expired.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        report
    }

    fn collect(&self, mut keep: impl FnMut(&Conn) -> bool) -> Vec<Arc<Conn>> {
        let mut out = Vec::new();
        for padded in self.shards.iter() {
            let shard = padded.lock.read();
            out.extend(shard.slots.iter().flatten().filter(|c| keep(c)).cloned());
        }
        out
    }

    fn in_zone(conn: &Conn, zone: Option<Zone>) -> bool {
        zone.is_none_or(|z| conn.keys[0].zone == z || conn.keys[1].zone == z)
    }

    /// Removes every connection (of `zone`, original or reply side, when given). For the
    /// control plane: takes each shard lock in turn and allocates.
    pub fn flush(&self, zone: Option<Zone>) -> usize {
        self.collect(|c| Self::in_zone(c, zone))
            .iter()
            .filter(|c| self.remove_conn(c))
            .count()
    }

    /// Lists live connections (of `zone`, when given). For the control plane.
    pub fn entries(&self, zone: Option<Zone>, now_ms: u64) -> Vec<ConnInfo> {
        self.collect(|c| Self::in_zone(c, zone) && self.is_live(c, now_ms))
            .iter()
            .map(|conn| {
                let status = conn.status.load(Ordering::Acquire);
                let idle = now_ms.saturating_sub(conn.last_seen.load(Ordering::Relaxed));
                ConnInfo {
                    original: conn.keys[0],
                    reply: conn.keys[1],
                    state: state_of(conn.protocol(), status),
                    assured: status & ASSURED != 0,
                    age_ms: now_ms.saturating_sub(conn.created_ms),
                    expires_in_ms: self
                        .timeouts
                        .get(conn.protocol(), status)
                        .saturating_sub(idle),
                    attachments: conn.attachments(),
                }
            })
            .collect()
    }

    /// Counts live connections (of `zone`, when given). For the control plane.
    ///
    /// Shards are read one after the other, not as one snapshot: while connections are
    /// evicted and created the result may count one that left a shard already read and its
    /// replacement in a later one, so it can pass `max_entries` by the churn during the
    /// walk. The limit itself is enforced on one atomic counter ([`Conntrack::len`]).
    pub fn count(&self, zone: Option<Zone>, now_ms: u64) -> usize {
        self.shards
            .iter()
            .map(|padded| {
                let shard = padded.lock.read();
                shard
                    .slots
                    .iter()
                    .flatten()
                    .filter(|c| Self::in_zone(c, zone) && self.is_live(c, now_ms))
                    .count()
            })
            .sum()
    }

    /// Masquerade ports in use per interface.
    pub fn nat_usage(&self) -> Vec<InterfaceUsage> {
        self.ports.lock().usage()
    }

    /// Table-wide counters.
    pub fn stats(&self) -> ConntrackStats {
        let c = &self.counters;
        ConntrackStats {
            entries: self.len(),
            created: c.created.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            refused_full: c.refused_full.load(Ordering::Relaxed),
            clashes: c.clashes.load(Ordering::Relaxed),
            nat_mappings: self.ports.lock().mappings(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{fixtures, parse};
    use crate::ports::{Gateway, InterfaceId};
    use crate::rules::{Egress, NatRules, PortForward};
    use crate::tcp::TcpFlags;
    use crate::translate::{ChecksumMode, translate};
    use crate::tuple::Endpoint;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};

    const Z: Zone = Zone(7);
    const A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 5);
    const B: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 6);
    const X: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
    const Y: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const N: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const SEC: u64 = 1000;

    fn ep(addr: Ipv4Addr, port: u16) -> Endpoint {
        Endpoint::new(IpAddr::V4(addr), port)
    }

    fn tcp(src: Endpoint, dst: Endpoint, flags: TcpFlags) -> PacketInfo {
        PacketInfo {
            tuple: Tuple::new(Protocol::Tcp, src, dst),
            kind: PacketKind::Tcp(flags),
        }
    }

    fn udp(src: Endpoint, dst: Endpoint) -> PacketInfo {
        PacketInfo {
            tuple: Tuple::new(Protocol::Udp, src, dst),
            kind: PacketKind::Udp,
        }
    }

    /// The reply a peer sends to what `tracked` says the original packet became.
    fn reply_to(packet: &PacketInfo, tracked: &Tracked, kind: PacketKind) -> PacketInfo {
        let sent = tracked.target.unwrap_or(packet.tuple);
        PacketInfo {
            tuple: sent.reversed(),
            kind,
        }
    }

    fn plain() -> NatPlan<'static> {
        NatPlan::none(Z)
    }

    fn masquerade_rules() -> NatRules {
        let mut rules = NatRules::new();
        rules
            .add_gateway(Z, Gateway::new(vec![N.into()]))
            .expect("gateway");
        rules
    }

    fn outside(_: &FlowKey) -> Egress {
        Egress::External
    }

    fn small(max_entries: usize) -> Conntrack {
        Conntrack::new(ConntrackConfig {
            max_entries,
            ..ConntrackConfig::default()
        })
    }

    #[test]
    fn peek_tells_the_next_state_and_changes_nothing() {
        let ct = Conntrack::default();
        let syn = tcp(ep(A, 40000), ep(B, 80), TcpFlags::SYN);
        ct.create(Z, &syn, &plain(), Attachments::default(), 0)
            .expect("creates");
        let syn_ack = tcp(ep(B, 80), ep(A, 40000), TcpFlags::SYN_ACK);
        let peeked = ct.peek(Z, &syn_ack, SEC).expect("hit");
        assert_eq!(peeked.direction, Direction::Reply);
        assert_eq!(peeked.state, ConnState::Tcp(TcpState::SynRecv));
        // Peeking again answers the same: the connection did not move.
        assert_eq!(ct.peek(Z, &syn_ack, SEC), Some(peeked));
        let looked = ct.lookup(Z, &syn_ack, SEC).expect("hit");
        assert_eq!(looked.state, ConnState::Tcp(TcpState::SynRecv));
        // A miss is a miss for both.
        let other = tcp(ep(A, 40001), ep(B, 80), TcpFlags::SYN);
        assert_eq!(ct.peek(Z, &other, SEC), None);
    }

    #[test]
    fn tcp_lifecycle_through_both_directions() {
        let ct = Conntrack::default();
        let syn = tcp(ep(A, 40000), ep(B, 80), TcpFlags::SYN);
        let t = ct
            .create(Z, &syn, &plain(), Attachments::default(), 0)
            .expect("creates");
        assert!(t.new);
        assert_eq!(t.state, ConnState::Tcp(TcpState::SynSent));
        assert_eq!(t.target, None);
        assert!(!t.assured);

        let steps = [
            (
                Direction::Reply,
                TcpFlags::SYN_ACK,
                TcpState::SynRecv,
                false,
            ),
            (
                Direction::Original,
                TcpFlags::ACK,
                TcpState::Established,
                true,
            ),
            (
                Direction::Original,
                TcpFlags::FIN_ACK,
                TcpState::FinWait,
                true,
            ),
            (Direction::Reply, TcpFlags::ACK, TcpState::CloseWait, true),
            (Direction::Reply, TcpFlags::FIN_ACK, TcpState::LastAck, true),
            (Direction::Original, TcpFlags::ACK, TcpState::TimeWait, true),
        ];
        for (i, (direction, flags, state, assured)) in steps.into_iter().enumerate() {
            let packet = match direction {
                Direction::Original => tcp(ep(A, 40000), ep(B, 80), flags),
                Direction::Reply => tcp(ep(B, 80), ep(A, 40000), flags),
            };
            let now = u64::try_from(i).expect("small") * SEC;
            let t = ct.lookup(Z, &packet, now).expect("hit");
            assert_eq!(t.direction, direction);
            assert_eq!(t.state, ConnState::Tcp(state), "step {i}");
            assert_eq!(t.assured, assured, "step {i}");
            assert!(!t.new);
        }
        // TIME_WAIT lasts 4 minutes.
        let probe = tcp(ep(A, 40000), ep(B, 80), TcpFlags::ACK);
        assert_eq!(ct.count(None, 5 * SEC + 239 * SEC), 1);
        assert!(ct.lookup(Z, &probe, 5 * SEC + 240 * SEC).is_none());
    }

    #[test]
    fn rst_closes_and_close_expires_after_ten_seconds() {
        let ct = Conntrack::default();
        let syn = tcp(ep(A, 1), ep(B, 2), TcpFlags::SYN);
        ct.create(Z, &syn, &plain(), Attachments::default(), 0)
            .expect("creates");
        let rst = tcp(ep(B, 2), ep(A, 1), TcpFlags::RST);
        let t = ct.lookup(Z, &rst, 0).expect("hit");
        assert_eq!(t.state, ConnState::Tcp(TcpState::Close));
        assert_eq!(ct.count(None, 9_999), 1);
        assert_eq!(ct.count(None, 10 * SEC), 0);
    }

    #[test]
    fn a_syn_reopens_a_closed_connection_unassured() {
        let ct = Conntrack::default();
        let a = ep(A, 1);
        let b = ep(B, 2);
        ct.create(
            Z,
            &tcp(a, b, TcpFlags::SYN),
            &plain(),
            Attachments::default(),
            0,
        )
        .expect("creates");
        ct.lookup(Z, &tcp(b, a, TcpFlags::SYN_ACK), 0).expect("hit");
        let t = ct.lookup(Z, &tcp(a, b, TcpFlags::ACK), 0).expect("hit");
        assert!(t.assured);
        ct.lookup(Z, &tcp(a, b, TcpFlags::RST), 0).expect("hit");
        let t = ct.lookup(Z, &tcp(a, b, TcpFlags::SYN), 1).expect("hit");
        assert_eq!(t.state, ConnState::Tcp(TcpState::SynSent));
        assert!(!t.assured);
    }

    #[test]
    fn rst_and_strays_do_not_create() {
        let ct = Conntrack::new(ConntrackConfig {
            tcp_loose: false,
            ..ConntrackConfig::default()
        });
        for packet in [
            tcp(ep(A, 1), ep(B, 2), TcpFlags::RST),
            tcp(ep(A, 1), ep(B, 2), TcpFlags::ACK),
            PacketInfo {
                tuple: Tuple::new(Protocol::Icmp, ep(A, 0), ep(B, 5)),
                kind: PacketKind::IcmpEcho(EchoKind::Reply),
            },
            PacketInfo {
                tuple: Tuple::new(Protocol::Udp, ep(A, 1), ep(B, 2)),
                kind: PacketKind::IcmpError,
            },
        ] {
            assert_eq!(
                ct.create(Z, &packet, &plain(), Attachments::default(), 0),
                Err(CreateError::NotAStart)
            );
        }
        assert!(ct.is_empty());
    }

    #[test]
    fn loose_pickup_is_unassured_with_a_short_timeout_until_answered() {
        let ct = Conntrack::default();
        let a = ep(A, 1);
        let b = ep(B, 2);
        let t = ct
            .create(
                Z,
                &tcp(a, b, TcpFlags::ACK),
                &plain(),
                Attachments::default(),
                0,
            )
            .expect("creates");
        assert_eq!(t.state, ConnState::Tcp(TcpState::Established));
        assert!(!t.assured);
        assert_eq!(ct.count(None, 240 * SEC), 0, "unreplied pickup: 4 min");
        let t = ct
            .create(
                Z,
                &tcp(a, b, TcpFlags::ACK),
                &plain(),
                Attachments::default(),
                300 * SEC,
            )
            .expect("recreates over the expired entry");
        assert!(t.new);
        let t = ct
            .lookup(Z, &tcp(b, a, TcpFlags::ACK), 300 * SEC)
            .expect("hit");
        assert!(t.assured);
        let established = 2 * 3600 + 4 * 60;
        assert_eq!(ct.count(None, (300 + established - 1) * SEC), 1);
        assert_eq!(ct.count(None, (300 + established) * SEC), 0);
    }

    #[test]
    fn udp_mapping_survives_119_seconds_after_a_reply_and_not_121() {
        let ct = Conntrack::default();
        let rules = masquerade_rules();
        let out = udp(ep(A, 5353), ep(X, 53));
        let key = FlowKey::new(Z, out.tuple);
        let plan = rules.plan(&key, InterfaceId(1), outside).expect("plans");
        let t = ct
            .create(Z, &out, &plan, Attachments::default(), 0)
            .expect("creates");
        let back = reply_to(&out, &t, PacketKind::Udp);
        let r = ct
            .lookup(Zone::EXTERNAL, &back, 10 * SEC)
            .expect("reply hit");
        assert_eq!(r.state, ConnState::Udp { replied: true });
        let last = 10 * SEC;
        assert_eq!(ct.count(None, last + 119 * SEC), 1);
        assert_eq!(ct.count(None, last + 121 * SEC), 0);
        assert!(ct.lookup(Zone::EXTERNAL, &back, last + 121 * SEC).is_none());
        // Refreshed at 119 s, it lives another 120 s.
        let ct = Conntrack::default();
        let t = ct
            .create(Z, &out, &plan, Attachments::default(), 0)
            .expect("creates");
        let back = reply_to(&out, &t, PacketKind::Udp);
        ct.lookup(Zone::EXTERNAL, &back, 0).expect("hit");
        ct.lookup(Z, &out, 119 * SEC).expect("hit at 119 s");
        assert!(ct.lookup(Z, &out, 238 * SEC).is_some());
    }

    #[test]
    fn unreplied_udp_goes_after_30_seconds() {
        let ct = Conntrack::default();
        let out = udp(ep(A, 1), ep(X, 2));
        ct.create(Z, &out, &plain(), Attachments::default(), 0)
            .expect("creates");
        assert_eq!(ct.count(None, 29 * SEC), 1);
        assert_eq!(ct.count(None, 30 * SEC), 0);
    }

    #[test]
    fn icmp_echo_lives_60_seconds() {
        let ct = Conntrack::default();
        let rules = masquerade_rules();
        let ping = PacketInfo {
            tuple: Tuple {
                protocol: Protocol::Icmp,
                src: IpAddr::V4(A),
                dst: IpAddr::V4(X),
                src_port: 0x77,
                dst_port: 0,
            },
            kind: PacketKind::IcmpEcho(EchoKind::Request),
        };
        let plan = rules
            .plan(&FlowKey::new(Z, ping.tuple), InterfaceId(1), outside)
            .expect("plans");
        let t = ct
            .create(Z, &ping, &plan, Attachments::default(), 0)
            .expect("creates");
        let target = t.target.expect("masqueraded");
        assert_eq!(target.src, IpAddr::V4(N));
        let pong = reply_to(&ping, &t, PacketKind::IcmpEcho(EchoKind::Reply));
        let r = ct.lookup(Zone::EXTERNAL, &pong, SEC).expect("reply hit");
        assert_eq!(r.state, ConnState::Icmp { replied: true });
        assert_eq!(r.egress_zone, Z);
        assert_eq!(r.target.map(|t| t.dst_port), Some(0x77));
        assert_eq!(ct.count(None, SEC + 59 * SEC), 1);
        assert_eq!(ct.count(None, SEC + 60 * SEC), 0);
    }

    /// With identifier 0 an echo reply has its request's tuple (ports 0 and 0): sent the
    /// request's way it is no packet of the request's connection (found by the fuzzer: it
    /// was translated with the request's mapping, and left with identifier 0).
    #[test]
    fn an_echo_reply_the_requests_way_is_not_its_connection() {
        let ct = Conntrack::default();
        let rules = masquerade_rules();
        let echo = |kind| PacketInfo {
            tuple: Tuple {
                protocol: Protocol::Icmp,
                src: IpAddr::V4(A),
                dst: IpAddr::V4(X),
                src_port: 0,
                dst_port: 0,
            },
            kind: PacketKind::IcmpEcho(kind),
        };
        let ping = echo(EchoKind::Request);
        let plan = rules
            .plan(&FlowKey::new(Z, ping.tuple), InterfaceId(1), outside)
            .expect("plans");
        ct.create(Z, &ping, &plan, Attachments::default(), 0)
            .expect("creates");
        assert!(ct.lookup(Z, &ping, SEC).is_some(), "the request's own way");
        let wrong_way = echo(EchoKind::Reply);
        assert_eq!(ct.lookup(Z, &wrong_way, SEC), None);
        assert_eq!(ct.peek(Z, &wrong_way, SEC), None);
        assert_eq!(
            ct.create(Z, &wrong_way, &plan, Attachments::default(), SEC)
                .unwrap_err(),
            CreateError::NotAStart
        );
    }

    #[test]
    fn masquerade_is_endpoint_independent_and_preserves_the_port() {
        let ct = Conntrack::default();
        let rules = masquerade_rules();
        let mut externals = Vec::new();
        for server in [X, Y] {
            let out = udp(ep(A, 40000), ep(server, 53));
            let plan = rules
                .plan(&FlowKey::new(Z, out.tuple), InterfaceId(1), outside)
                .expect("plans");
            let t = ct
                .create(Z, &out, &plan, Attachments::default(), 0)
                .expect("creates");
            assert_eq!(t.egress_zone, Zone::EXTERNAL);
            externals.push(t.target.expect("natted").source());
        }
        assert_eq!(externals[0], externals[1]);
        assert_eq!(externals[0], ep(N, 40000));
        assert_eq!(ct.stats().nat_mappings, 1);
        assert_eq!(ct.nat_usage()[0].in_use, [0, 1, 0]);
        // Both expire; the sweep releases the mapping and the block.
        let report = ct.sweep(31 * SEC, 1000);
        assert_eq!(report.expired, 2);
        assert_eq!(ct.stats().nat_mappings, 0);
        assert!(ct.nat_usage().is_empty());
        assert!(ct.is_empty());
    }

    #[test]
    fn port_exhaustion_is_an_error_and_leaves_no_trace() {
        let ct = Conntrack::default();
        let mut rules = NatRules::new();
        let mut gateway = Gateway::new(vec![N.into()]);
        gateway.ports_per_interface = 2;
        rules.add_gateway(Z, gateway).expect("gateway");
        for source in [1000, 1001] {
            let out = udp(ep(A, source), ep(X, 53));
            let plan = rules
                .plan(&FlowKey::new(Z, out.tuple), InterfaceId(1), outside)
                .expect("plans");
            ct.create(Z, &out, &plan, Attachments::default(), 0)
                .expect("creates");
        }
        let out = udp(ep(A, 1002), ep(X, 53));
        let plan = rules
            .plan(&FlowKey::new(Z, out.tuple), InterfaceId(1), outside)
            .expect("plans");
        assert_eq!(
            ct.create(Z, &out, &plan, Attachments::default(), 0),
            Err(CreateError::Nat(NatError::InterfaceExhausted))
        );
        assert_eq!(ct.len(), 2);
        // Another container still gets ports.
        let other = udp(ep(B, 1002), ep(X, 53));
        let plan = rules
            .plan(&FlowKey::new(Z, other.tuple), InterfaceId(2), outside)
            .expect("plans");
        ct.create(Z, &other, &plan, Attachments::default(), 0)
            .expect("creates");
    }

    #[test]
    fn full_table_evicts_unassured_first_then_refuses() {
        let ct = small(4);
        for port in 0..4 {
            ct.create(
                Z,
                &udp(ep(A, port), ep(X, 53)),
                &plain(),
                Attachments::default(),
                0,
            )
            .expect("creates");
        }
        // A fifth evicts an unassured one.
        ct.create(
            Z,
            &udp(ep(A, 4), ep(X, 53)),
            &plain(),
            Attachments::default(),
            0,
        )
        .expect("evicts and creates");
        assert_eq!(ct.len(), 4);
        assert_eq!(ct.stats().evicted, 1);
        // Make all four assured.
        for info in ct.entries(None, 0) {
            let back = PacketInfo {
                tuple: info.reply.tuple,
                kind: PacketKind::Udp,
            };
            assert!(ct.lookup(Z, &back, 0).expect("hit").assured);
        }
        assert_eq!(
            ct.create(
                Z,
                &udp(ep(A, 9), ep(X, 53)),
                &plain(),
                Attachments::default(),
                0
            ),
            Err(CreateError::TableFull)
        );
        assert_eq!(ct.stats().refused_full, 1);
        assert_eq!(ct.len(), 4);
        // Once they expire, an expired entry is evicted even though it was assured.
        ct.create(
            Z,
            &udp(ep(A, 9), ep(X, 53)),
            &plain(),
            Attachments::default(),
            120 * SEC,
        )
        .expect("creates");
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let ct = small(0);
        assert_eq!(
            ct.create(
                Z,
                &udp(ep(A, 1), ep(X, 2)),
                &plain(),
                Attachments::default(),
                0
            ),
            Err(CreateError::TableFull)
        );
    }

    #[test]
    fn sweep_is_incremental() {
        let ct = Conntrack::default();
        for port in 0..200 {
            ct.create(
                Z,
                &udp(ep(A, port), ep(X, 53)),
                &plain(),
                Attachments::default(),
                0,
            )
            .expect("creates");
        }
        let mut total = 0;
        let mut calls = 0;
        while !ct.is_empty() {
            let report = ct.sweep(30 * SEC, 16);
            assert!(report.scanned <= 16);
            total += report.expired;
            calls += 1;
            assert!(calls < 1000, "sweep makes progress");
        }
        assert_eq!(total, 200);
        assert!(calls > 10, "one call did not do it all");
        assert_eq!(ct.stats().expired, 200);
        // Nothing expired: the sweep removes nothing.
        ct.create(
            Z,
            &udp(ep(A, 1), ep(X, 53)),
            &plain(),
            Attachments::default(),
            0,
        )
        .expect("creates");
        for _ in 0..100 {
            assert_eq!(ct.sweep(SEC, 64).expired, 0);
        }
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn creating_twice_tracks_the_existing_connection() {
        let ct = Conntrack::default();
        let out = udp(ep(A, 1), ep(X, 2));
        ct.create(Z, &out, &plain(), Attachments::default(), 0)
            .expect("creates");
        let again = ct
            .create(Z, &out, &plain(), Attachments::default(), 0)
            .expect("tracks");
        assert!(!again.new);
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn a_taken_reply_key_is_a_clash() {
        let ct = Conntrack::default();
        // Two containers statically NATed to the same address, same ports, same server.
        let plan = NatPlan {
            dnat: None,
            snat: Snat::Static(IpAddr::V4(N)),
            reply_zone: Zone::EXTERNAL,
        };
        ct.create(
            Z,
            &udp(ep(A, 1), ep(X, 2)),
            &plan,
            Attachments::default(),
            0,
        )
        .expect("creates");
        assert_eq!(
            ct.create(
                Z,
                &udp(ep(B, 1), ep(X, 2)),
                &plan,
                Attachments::default(),
                0
            ),
            Err(CreateError::Clash)
        );
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.stats().clashes, 1);
    }

    #[test]
    fn zones_keep_overlapping_addresses_apart() {
        let ct = Conntrack::default();
        let out = udp(ep(A, 1), ep(B, 2));
        ct.create(
            Zone(1),
            &out,
            &NatPlan::none(Zone(1)),
            Attachments::default(),
            0,
        )
        .expect("creates");
        assert!(ct.lookup(Zone(2), &out, 0).is_none());
        ct.create(
            Zone(2),
            &out,
            &NatPlan::none(Zone(2)),
            Attachments::default(),
            0,
        )
        .expect("creates");
        assert_eq!(ct.count(Some(Zone(1)), 0), 1);
        assert_eq!(ct.flush(Some(Zone(2))), 1);
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.flush(None), 1);
        assert!(ct.is_empty());
    }

    #[test]
    fn attachments_are_kept_and_replaced() {
        let ct = Conntrack::default();
        let out = tcp(ep(A, 1), ep(B, 2), TcpFlags::SYN);
        let first = Attachments {
            lb_backend: Some(3),
            policy: None,
        };
        let t = ct.create(Z, &out, &plain(), first, 0).expect("creates");
        assert_eq!(t.attachments, first);
        let back = tcp(ep(B, 2), ep(A, 1), TcpFlags::SYN_ACK);
        let key = FlowKey::new(Z, back.tuple);
        let second = Attachments {
            lb_backend: Some(u32::MAX),
            policy: Some(0),
        };
        assert!(ct.set_attachments(&key, second));
        assert_eq!(ct.lookup(Z, &back, 0).expect("hit").attachments, second);
        assert!(!ct.set_attachments(&FlowKey::new(Zone(9), back.tuple), second));
    }

    #[test]
    fn remove_by_either_key() {
        let ct = Conntrack::default();
        let out = udp(ep(A, 1), ep(X, 2));
        ct.create(Z, &out, &plain(), Attachments::default(), 0)
            .expect("creates");
        assert!(ct.remove(&FlowKey::new(Z, out.tuple.reversed())));
        assert!(!ct.remove(&FlowKey::new(Z, out.tuple)));
        assert!(ct.is_empty());
    }

    /// Container A sends to X through the masquerade; the bytes come back translated, and so
    /// does an ICMP port unreachable about them.
    #[test]
    fn masquerade_end_to_end_on_bytes() {
        let ct = Conntrack::default();
        let rules = masquerade_rules();
        let mut out = fixtures::udp(A, 5353, X, 53, b"query", true);
        let info = parse(&out).expect("parses");
        assert!(ct.lookup(Z, &info, 0).is_none());
        let plan = rules
            .plan(&FlowKey::new(Z, info.tuple), InterfaceId(1), outside)
            .expect("plans");
        let t = ct
            .create(Z, &info, &plan, Attachments::default(), 0)
            .expect("creates");
        translate(&mut out, &t.target.expect("natted"), ChecksumMode::Full).expect("translates");
        assert_eq!(out, fixtures::udp(N, 5353, X, 53, b"query", true));

        let mut back = fixtures::udp(X, 53, N, 5353, b"answer", true);
        let info = parse(&back).expect("parses");
        let r = ct.lookup(Zone::EXTERNAL, &info, SEC).expect("hit");
        assert_eq!(r.direction, Direction::Reply);
        assert_eq!(r.egress_zone, Z);
        translate(&mut back, &r.target.expect("natted"), ChecksumMode::Full).expect("translates");
        assert_eq!(back, fixtures::udp(X, 53, A, 5353, b"answer", true));

        let mut error = fixtures::icmp_error(X, N, 3, 3, &out, out.len());
        let info = parse(&error).expect("parses");
        let e = ct.lookup(Zone::EXTERNAL, &info, SEC).expect("related hit");
        assert!(e.related);
        translate(&mut error, &e.target.expect("natted"), ChecksumMode::Full).expect("translates");
        let original = fixtures::udp(A, 5353, X, 53, b"query", true);
        assert_eq!(
            error,
            fixtures::icmp_error(X, A, 3, 3, &original, original.len())
        );
    }

    /// NAT66: the same masquerade over IPv6 (TCP, echo, and a packet-too-big error quoting
    /// the translated segment), with an IPv4 and an IPv6 NAT address on one gateway.
    #[test]
    fn masquerade66_end_to_end_on_bytes() {
        use std::net::Ipv6Addr;
        let a6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
        let x6 = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 9);
        let n6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        let router = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
        let ct = Conntrack::default();
        let mut rules = NatRules::new();
        rules
            .add_gateway(Z, Gateway::new(vec![N.into(), n6.into()]))
            .expect("gateway");
        let mut syn = fixtures::tcp(a6, 40000, x6, 443, 0x02, b"");
        let info = parse(&syn).expect("parses");
        let plan = rules
            .plan(&FlowKey::new(Z, info.tuple), InterfaceId(1), outside)
            .expect("plans");
        let t = ct
            .create(Z, &info, &plan, Attachments::default(), 0)
            .expect("creates");
        translate(&mut syn, &t.target.expect("natted"), ChecksumMode::Full).expect("translates");
        assert_eq!(syn, fixtures::tcp(n6, 40000, x6, 443, 0x02, b""));

        let mut synack = fixtures::tcp(x6, 443, n6, 40000, 0x12, b"");
        let info = parse(&synack).expect("parses");
        let r = ct.lookup(Zone::EXTERNAL, &info, SEC).expect("hit");
        assert_eq!(r.direction, Direction::Reply);
        translate(&mut synack, &r.target.expect("natted"), ChecksumMode::Full).expect("translates");
        assert_eq!(synack, fixtures::tcp(x6, 443, a6, 40000, 0x12, b""));

        // A router on the way says the translated segment was too big.
        let mut error = fixtures::icmp_error(router, n6, 2, 0, &syn, syn.len());
        let info = parse(&error).expect("parses");
        let e = ct.lookup(Zone::EXTERNAL, &info, SEC).expect("related hit");
        assert!(e.related);
        translate(&mut error, &e.target.expect("natted"), ChecksumMode::Full).expect("translates");
        let original = fixtures::tcp(a6, 40000, x6, 443, 0x02, b"");
        assert_eq!(
            error,
            fixtures::icmp_error(router, a6, 2, 0, &original, original.len())
        );

        // ping -6: the identifier is the mapping's port.
        let mut request = fixtures::echo(a6, x6, true, 77, b"ping");
        let info = parse(&request).expect("parses");
        let plan = rules
            .plan(&FlowKey::new(Z, info.tuple), InterfaceId(1), outside)
            .expect("plans");
        let t = ct
            .create(Z, &info, &plan, Attachments::default(), 0)
            .expect("creates");
        let target = t.target.expect("natted");
        assert_eq!(target.src, IpAddr::V6(n6));
        translate(&mut request, &target, ChecksumMode::Full).expect("translates");
        assert_eq!(
            request,
            fixtures::echo(n6, x6, true, target.src_port, b"ping")
        );
    }

    /// A connects to N:8080, forwarded to B:80 in the same Network: DNAT and SNAT both.
    #[test]
    fn hairpin_end_to_end_on_bytes() {
        let ct = Conntrack::default();
        let mut rules = masquerade_rules();
        rules
            .add_port_forward(PortForward {
                address: N.into(),
                protocol: Protocol::Tcp,
                port: 8080,
                zone: Z,
                target: ep(B, 80),
            })
            .expect("forward");
        let mut syn = fixtures::tcp(A, 40000, N, 8080, 0x02, b"");
        let info = parse(&syn).expect("parses");
        let plan = rules
            .plan(&FlowKey::new(Z, info.tuple), InterfaceId(1), outside)
            .expect("plans");
        let t = ct
            .create(Z, &info, &plan, Attachments::default(), 0)
            .expect("creates");
        assert_eq!(t.egress_zone, Z);
        translate(&mut syn, &t.target.expect("natted"), ChecksumMode::Full).expect("translates");
        assert_eq!(syn, fixtures::tcp(N, 40000, B, 80, 0x02, b""));

        let mut syn_ack = fixtures::tcp(B, 80, N, 40000, 0x12, b"");
        let info = parse(&syn_ack).expect("parses");
        let r = ct.lookup(Z, &info, 0).expect("hit");
        assert_eq!(r.state, ConnState::Tcp(TcpState::SynRecv));
        translate(&mut syn_ack, &r.target.expect("natted"), ChecksumMode::Full)
            .expect("translates");
        assert_eq!(syn_ack, fixtures::tcp(N, 8080, A, 40000, 0x12, b""));
    }

    /// From outside to a forwarded port, and the reply.
    #[test]
    fn port_forward_end_to_end() {
        let ct = Conntrack::default();
        let mut rules = NatRules::new();
        rules
            .add_port_forward(PortForward {
                address: N.into(),
                protocol: Protocol::Udp,
                port: 8053,
                zone: Z,
                target: ep(B, 53),
            })
            .expect("forward");
        let mut query = fixtures::udp(X, 7777, N, 8053, b"q", false);
        let info = parse(&query).expect("parses");
        let plan = rules
            .plan(
                &FlowKey::new(Zone::EXTERNAL, info.tuple),
                InterfaceId(0),
                outside,
            )
            .expect("plans");
        let t = ct
            .create(Zone::EXTERNAL, &info, &plan, Attachments::default(), 0)
            .expect("creates");
        assert_eq!(t.egress_zone, Z);
        translate(&mut query, &t.target.expect("natted"), ChecksumMode::Full).expect("translates");
        assert_eq!(query, fixtures::udp(X, 7777, B, 53, b"q", false));
        let answer = parse(&fixtures::udp(B, 53, X, 7777, b"a", false)).expect("parses");
        let r = ct.lookup(Z, &answer, 0).expect("hit");
        assert_eq!(r.egress_zone, Zone::EXTERNAL);
        assert_eq!(r.target.map(|t| t.source()), Some(ep(N, 8053)));
    }

    #[test]
    fn workers_share_the_table() {
        let ct = Arc::new(small(100_000));
        let rules = masquerade_rules();
        std::thread::scope(|scope| {
            for worker in 0..4u16 {
                let ct = Arc::clone(&ct);
                let rules = &rules;
                scope.spawn(move || {
                    for i in 0..500u16 {
                        let host = u8::try_from(worker + 1).expect("small");
                        let out = udp(ep(Ipv4Addr::new(172, 30, 1, host), 1000 + i), ep(X, 53));
                        let plan = rules
                            .plan(
                                &FlowKey::new(Z, out.tuple),
                                InterfaceId(u32::from(worker)),
                                outside,
                            )
                            .expect("plans");
                        let t = ct
                            .create(Z, &out, &plan, Attachments::default(), 0)
                            .expect("creates");
                        let back = reply_to(&out, &t, PacketKind::Udp);
                        assert!(ct.lookup(Zone::EXTERNAL, &back, 0).is_some());
                        ct.sweep(0, 8);
                    }
                });
            }
        });
        assert_eq!(ct.len(), 2000);
        assert_eq!(ct.count(None, 0), 2000);
        ct.sweep(121 * SEC, 1_000_000);
        assert!(ct.is_empty());
        assert_eq!(ct.stats().nat_mappings, 0);
    }

    /// Both keys of every connection in the table resolve to it.
    fn check_both_keys(ct: &Conntrack) -> Result<(), TestCaseError> {
        for conn in ct.collect(|_| true) {
            for key in &conn.keys {
                let shard = ct.shards[Conntrack::shard_index(key)].lock.read();
                let found = shard.map.get(key);
                prop_assert!(
                    found.is_some_and(|c| Arc::ptr_eq(c, &conn)),
                    "key {key} lost"
                );
            }
        }
        let map_entries: usize = ct.shards.iter().map(|s| s.lock.read().map.len()).sum();
        let conns = ct.collect(|_| true).len();
        prop_assert_eq!(conns, ct.len());
        prop_assert!(map_entries <= 2 * conns);
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create {
            host: u8,
            port: u16,
            server: u8,
            nat: bool,
            tcp: bool,
        },
        Reply {
            index: usize,
        },
        Advance {
            secs: u64,
        },
        Sweep {
            budget: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, 0u16..6, 0u8..3, any::<bool>(), any::<bool>())
                .prop_map(|(host, port, server, nat, tcp)| Op::Create { host, port, server, nat, tcp }),
            3 => (0usize..64).prop_map(|index| Op::Reply { index }),
            1 => (0u64..200).prop_map(|secs| Op::Advance { secs }),
            1 => (0usize..64).prop_map(|budget| Op::Sweep { budget }),
        ]
    }

    proptest! {
        #[test]
        fn table_invariants(ops in proptest::collection::vec(op(), 1..120), limit in 1usize..12) {
            let ct = small(limit);
            let mut rules = NatRules::new();
            let mut gateway = Gateway::new(vec![N.into()]);
            gateway.ports_per_interface = 4;
            rules.add_gateway(Z, gateway).expect("gateway");
            let mut now = 0u64;
            let mut sent: Vec<PacketInfo> = Vec::new();
            for op in ops {
                match op {
                    Op::Create { host, port, server, nat, tcp: is_tcp } => {
                        let src = ep(Ipv4Addr::new(172, 30, 0, host), 1000 + port);
                        let dst = ep(Ipv4Addr::new(203, 0, 113, server), 53);
                        let out = if is_tcp { tcp(src, dst, TcpFlags::SYN) } else { udp(src, dst) };
                        let plan = if nat {
                            rules.plan(&FlowKey::new(Z, out.tuple), InterfaceId(u32::from(host)), outside)
                                .expect("plans")
                        } else {
                            NatPlan::none(Z)
                        };
                        if let Ok(t) = ct.create(Z, &out, &plan, Attachments::default(), now) {
                            let reply_kind = if is_tcp { PacketKind::Tcp(TcpFlags::SYN_ACK) } else { PacketKind::Udp };
                            let back = reply_to(&out, &t, reply_kind);
                            // Both directions find it, right after creation.
                            let zone = t.egress_zone;
                            let r = ct.lookup(zone, &back, now);
                            prop_assert!(r.is_some_and(|r| r.direction == Direction::Reply));
                            prop_assert!(ct.lookup(Z, &out, now).is_some_and(|o| o.direction == Direction::Original));
                            sent.push(back);
                        }
                    }
                    Op::Reply { index } => {
                        if let Some(back) = sent.get(index % sent.len().max(1)) {
                            // Try both zones: a hit must be the reply direction.
                            for zone in [Z, Zone::EXTERNAL] {
                                if let Some(r) = ct.lookup(zone, back, now) {
                                    prop_assert_eq!(r.direction, Direction::Reply);
                                }
                            }
                        }
                    }
                    Op::Advance { secs } => now += secs * SEC,
                    Op::Sweep { budget } => {
                        let report = ct.sweep(now, budget);
                        prop_assert!(report.scanned <= budget);
                    }
                }
                prop_assert!(ct.len() <= limit);
                check_both_keys(&ct)?;
            }
            // Everything expires and is swept; every mapping is released.
            ct.sweep(now + 3 * 3600 * SEC, 1_000_000);
            prop_assert!(ct.is_empty());
            prop_assert_eq!(ct.stats().nat_mappings, 0);
            prop_assert!(ct.nat_usage().is_empty());
        }
    }
}
