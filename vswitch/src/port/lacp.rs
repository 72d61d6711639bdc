//! LACP (IEEE 802.1AX) for bonded uplinks: the LACPDU wire format ([`parse`], [`encode`]),
//! one state machine per member ([`Member`]) and the aggregation choice over a bond's members
//! ([`select`]), in the subset Open vSwitch and Linux bonding need of their partner.
//!
//! The module is pure: no sockets, no clocks, no threads. Time comes in as `now_ms` (any
//! monotonic millisecond clock) and frames come in and go out as byte slices, so every timer
//! and every corner is unit tested without a network. The caller (the bond monitor) owns
//! the [`ETH_P_SLOW`] socket and the carrier watch, and per wake-up does, for each member:
//! [`Member::set_carrier`] on a carrier change, [`Member::receive`] for each slow-protocol
//! frame, [`Member::tick`]; then [`select`] over the bond's members; then
//! [`Member::poll_transmit`] on each member and sends what it returns; and sleeps until the
//! earliest [`Member::next_deadline`]. Running [`select`] after every change is what keeps
//! the actor's Synchronization bit honest, so it is cheap (a pass over a handful of members).
//!
//! What is kept of 802.1AX, and why the rest is not:
//! - Receive machine: CURRENT, EXPIRED and DEFAULTED. A PDU makes the partner current and
//!   restarts `current_while` (3 s with the short timeout, 90 s with the long one). The first
//!   expiry clears the partner's Synchronization and forces its Timeout short, so that we
//!   send fast and solicit a PDU; the second zeroes the partner. Carrier loss expires the
//!   partner at once, as Linux and OVS do.
//! - Periodic and transmit machines: the period follows the *partner's* Timeout bit (1 s or
//!   30 s); a change of our own information, or a partner that echoes us wrongly (OVS's
//!   `info_tx_equal`), sets need-to-transmit; never more than 3 PDUs in any second. The
//!   partner TLV we send is exactly what the partner last said of itself: OVS compares it
//!   field by field and otherwise transmits on every pass of its loop.
//! - Selection and mux: one aggregator per bond, coupled control without `Aggregate_Wait` (as
//!   OVS): a selected member is at once in sync, collecting and distributing. The lead is
//!   chosen by our own (port priority, port) rather than by the higher-priority system's
//!   port, which only matters when members reach different partners; then one partner wins
//!   and the other members stay out, which is all 802.1AX promises.
//! - Not kept: churn detection (it only reports), the Marker responder (OVS never answers
//!   Markers either, and we never move conversations between live members, so there is no
//!   flush to wait for) and administrative partner defaults (a defaulted partner is zeros).

use std::fmt;

/// The Slow Protocols multicast group every LACPDU is sent to (802.1AX 6.2.11.2).
pub const LACP_MULTICAST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x02];
/// The Slow Protocols ethertype (LACP, Marker, OAM).
pub const ETH_P_SLOW: u16 = 0x8809;
/// A whole LACPDU frame: the 14-byte Ethernet header and the 110-byte PDU, without FCS.
pub const LACPDU_LEN: usize = 124;

/// Period of our PDUs when the partner asks for the short timeout.
pub const FAST_PERIODIC_MS: u64 = 1_000;
/// Period of our PDUs when the partner accepts the long timeout.
pub const SLOW_PERIODIC_MS: u64 = 30_000;
/// How long a partner stays current without a PDU with the short timeout (3 fast periods).
pub const SHORT_TIMEOUT_MS: u64 = 3 * FAST_PERIODIC_MS;
/// How long a partner stays current without a PDU with the long timeout (3 slow periods).
pub const LONG_TIMEOUT_MS: u64 = 3 * SLOW_PERIODIC_MS;
/// 802.1AX allows at most this many LACPDUs in any [`FAST_PERIODIC_MS`].
pub const TX_BURST: usize = 3;

const ETH_HLEN: usize = 14;
/// Every LACPDU is padded to 110 bytes; OVS refuses shorter ones, and so do we.
const PDU_LEN: usize = LACPDU_LEN - ETH_HLEN;
const SUBTYPE_LACP: u8 = 1;
const SUBTYPE_MARKER: u8 = 2;
const LACP_VERSION: u8 = 1;
const TLV_ACTOR: u8 = 1;
const TLV_PARTNER: u8 = 2;
const TLV_COLLECTOR: u8 = 3;
/// Length of the Actor and Partner TLVs, their type and length bytes included.
const INFO_TLV_LEN: u8 = 20;
const INFO_LEN: usize = INFO_TLV_LEN as usize;
const COLLECTOR_LEN: u8 = 16;
/// Offsets in the frame (notes 2.1); the terminator at 72 and the padding stay zero.
const ACTOR_AT: usize = 16;
const PARTNER_AT: usize = ACTOR_AT + INFO_LEN;
const COLLECTOR_AT: usize = PARTNER_AT + INFO_LEN;

/// The bits of an actor or partner state byte (802.1AX 6.4.2.3).
pub mod state {
    /// `LACP_Activity`: 1 = active (always sends), 0 = passive.
    pub const ACTIVITY: u8 = 0x01;
    /// `LACP_Timeout`: 1 = short ("send me a PDU every second"), 0 = long.
    pub const TIMEOUT: u8 = 0x02;
    /// Aggregation: 1 = the link may be aggregated, 0 = individual.
    pub const AGGREGATION: u8 = 0x04;
    /// Synchronization: attached to the right aggregator.
    pub const SYNCHRONIZATION: u8 = 0x08;
    /// Collecting: accepting frames on this link.
    pub const COLLECTING: u8 = 0x10;
    /// Distributing: sending frames on this link.
    pub const DISTRIBUTING: u8 = 0x20;
    /// Defaulted: the partner information is the defaults, not from a PDU.
    pub const DEFAULTED: u8 = 0x40;
    /// Expired: the receive machine is in EXPIRED.
    pub const EXPIRED: u8 = 0x80;
}

/// One side's identity as a PDU carries it (Actor or Partner TLV).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortInfo {
    /// System priority: lower is better.
    pub system_priority: u16,
    /// System id, a MAC address.
    pub system: [u8; 6],
    /// Aggregation key: links with the same key may be aggregated together.
    pub key: u16,
    /// Port priority: lower is better.
    pub port_priority: u16,
    /// Port number, unique within the system.
    pub port: u16,
    /// The [`state`] bits.
    pub state: u8,
}

impl PortInfo {
    /// Whether `self`, as the partner echoes us, matches our actor information `ours` in
    /// everything OVS's `info_tx_equal` compares: the identity and the Activity, Timeout,
    /// Aggregation and Synchronization bits (the others change too often to matter).
    fn echoes(&self, ours: &PortInfo) -> bool {
        const MASK: u8 =
            state::ACTIVITY | state::TIMEOUT | state::AGGREGATION | state::SYNCHRONIZATION;
        self.system_priority == ours.system_priority
            && self.system == ours.system
            && self.key == ours.key
            && self.port_priority == ours.port_priority
            && self.port == ours.port
            && self.state & MASK == ours.state & MASK
    }

    /// The TLV carrying `self`, of type `t`.
    fn to_tlv(self, t: u8) -> [u8; INFO_LEN] {
        let [p0, p1] = self.system_priority.to_be_bytes();
        let [s0, s1, s2, s3, s4, s5] = self.system;
        let [k0, k1] = self.key.to_be_bytes();
        let [q0, q1] = self.port_priority.to_be_bytes();
        let [n0, n1] = self.port.to_be_bytes();
        let (len, st) = (INFO_TLV_LEN, self.state);
        [
            t, len, p0, p1, s0, s1, s2, s3, s4, s5, k0, k1, q0, q1, n0, n1, st, 0, 0, 0,
        ]
    }

    /// Reads a TLV of type `tlv_type`; `None` when its type or length is not that of an
    /// Actor/Partner TLV (the reserved bytes are not checked, as OVS does not).
    fn from_tlv(tlv: &[u8; INFO_LEN], tlv_type: u8) -> Option<PortInfo> {
        // Destructuring the fixed-size array cannot go out of bounds, whatever the packet.
        let [t, len, p0, p1, body @ ..] = *tlv;
        let [system @ .., k0, k1, q0, q1, n0, n1, state, _, _, _] = body;
        (t == tlv_type && len == INFO_TLV_LEN).then_some(PortInfo {
            system_priority: u16::from_be_bytes([p0, p1]),
            system,
            key: u16::from_be_bytes([k0, k1]),
            port_priority: u16::from_be_bytes([q0, q1]),
            port: u16::from_be_bytes([n0, n1]),
            state,
        })
    }
}

/// What a parsed LACPDU says: the sender's own information and its view of us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lacpdu {
    /// The sender (our partner) as it describes itself.
    pub actor: PortInfo,
    /// What the sender believes about us (its partner).
    pub partner: PortInfo,
}

/// Why a frame is not a usable LACPDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduError {
    /// Shorter than the Ethernet header plus the 110-byte PDU.
    Short,
    /// The ethertype is not [`ETH_P_SLOW`].
    NotSlowProtocol,
    /// A Marker PDU (subtype 2): counted, never answered (as OVS).
    Marker,
    /// Another slow protocol (OAM is 3) or garbage.
    UnknownSubtype(u8),
    /// The first TLV is not an Actor TLV (type 1, length 20).
    BadActorTlv,
    /// The second TLV is not a Partner TLV (type 2, length 20).
    BadPartnerTlv,
}

impl PduError {
    /// A stable snake-case key for counters and logs.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            PduError::Short => "short",
            PduError::NotSlowProtocol => "not_slow_protocol",
            PduError::Marker => "marker",
            PduError::UnknownSubtype(_) => "unknown_subtype",
            PduError::BadActorTlv => "bad_actor_tlv",
            PduError::BadPartnerTlv => "bad_partner_tlv",
        }
    }
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad LACPDU: {}", self.key())
    }
}

impl std::error::Error for PduError {}

/// Parses a whole Ethernet frame (dst, src, ethertype 0x8809, PDU). Accept as OVS does: >= 110
/// bytes of PDU after the 14-byte header, subtype 1, actor TLV type 1 len 20, partner TLV type
/// 2 len 20; do not check version/collector/terminator.
///
/// The destination MAC is not checked either: the socket's multicast join decides what
/// reaches us, and OVS accepts any.
///
/// # Errors
///
/// The [`PduError`] naming the first check the frame fails, in the order of the fields.
pub fn parse(frame: &[u8]) -> Result<Lacpdu, PduError> {
    let (eth, pdu) = chunk::<ETH_HLEN>(frame)?;
    let [.., t0, t1] = *eth;
    if u16::from_be_bytes([t0, t1]) != ETH_P_SLOW {
        return Err(PduError::NotSlowProtocol);
    }
    // The subtype is judged before the length so that a short Marker counts as a Marker.
    let (&[subtype, _version], tlvs) = chunk::<2>(pdu)?;
    match subtype {
        SUBTYPE_LACP => {}
        SUBTYPE_MARKER => return Err(PduError::Marker),
        other => return Err(PduError::UnknownSubtype(other)),
    }
    if pdu.len() < PDU_LEN {
        return Err(PduError::Short);
    }
    let (actor, rest) = chunk::<INFO_LEN>(tlvs)?;
    let (partner, _) = chunk::<INFO_LEN>(rest)?;
    Ok(Lacpdu {
        actor: PortInfo::from_tlv(actor, TLV_ACTOR).ok_or(PduError::BadActorTlv)?,
        partner: PortInfo::from_tlv(partner, TLV_PARTNER).ok_or(PduError::BadPartnerTlv)?,
    })
}

/// The first `N` bytes of `bytes` as an array, and the rest: reading through fixed-size
/// arrays is what keeps every field access in bounds whatever the frame.
fn chunk<const N: usize>(bytes: &[u8]) -> Result<(&[u8; N], &[u8]), PduError> {
    bytes.split_first_chunk::<N>().ok_or(PduError::Short)
}

/// Encodes a whole frame: dst [`LACP_MULTICAST`], src = `src_mac` (the member's own MAC), the
/// Actor TLV, the Partner TLV (what we last heard, echoed exactly), Collector TLV (max delay
/// 0), terminator, zero padding.
#[must_use]
pub fn encode(src_mac: [u8; 6], actor: &PortInfo, partner: &PortInfo) -> [u8; LACPDU_LEN] {
    // All offsets are constants inside a fixed-size array: nothing here depends on input.
    let mut frame = [0; LACPDU_LEN];
    frame[..6].copy_from_slice(&LACP_MULTICAST);
    frame[6..12].copy_from_slice(&src_mac);
    frame[12..ETH_HLEN].copy_from_slice(&ETH_P_SLOW.to_be_bytes());
    frame[ETH_HLEN] = SUBTYPE_LACP;
    frame[ETH_HLEN + 1] = LACP_VERSION;
    frame[ACTOR_AT..PARTNER_AT].copy_from_slice(&actor.to_tlv(TLV_ACTOR));
    frame[PARTNER_AT..COLLECTOR_AT].copy_from_slice(&partner.to_tlv(TLV_PARTNER));
    frame[COLLECTOR_AT] = TLV_COLLECTOR;
    frame[COLLECTOR_AT + 1] = COLLECTOR_LEN;
    // CollectorMaxDelay 0 (as OVS), reserved bytes, terminator (type 0, length 0) and the
    // padding are the array's zeros.
    frame
}

/// Human words for a state byte as OVS prints them: "activity timeout aggregation
/// synchronized collecting distributing defaulted expired" (only the set bits, space
/// separated).
#[must_use]
pub fn state_words(state: u8) -> String {
    let words =
        "activity timeout aggregation synchronized collecting distributing defaulted expired";
    let set: Vec<&str> = (words.split(' ').enumerate())
        .filter_map(|(bit, word)| (state >> bit & 1 == 1).then_some(word))
        .collect();
    set.join(" ")
}

/// A member's configuration (fixed while it runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActorConfig {
    /// Our system id: the bond's MAC, the same on every member.
    pub system: [u8; 6],
    /// Our system priority (OVS defaults to 65534).
    pub system_priority: u16,
    /// Our aggregation key, the same on every member of one bond.
    pub key: u16,
    /// This member's port number (1..N), unique within the system.
    pub port: u16,
    /// This member's port priority: the lowest (priority, port) with a partner leads.
    pub port_priority: u16,
    /// Short timeout: ask the partner for 1 s PDUs, expire after 3 s.
    pub fast: bool,
    /// LACP active: always sends; passive sends only once it hears a partner.
    pub active: bool,
}

/// The receive machine's state (802.1AX 6.4.12), as OVS names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxState {
    /// A PDU arrived within the timeout.
    Current,
    /// One timeout without a PDU: the partner is kept but out of sync.
    Expired,
    /// Two timeouts (or never heard): the partner is zeros.
    Defaulted,
}

impl RxState {
    /// "current", "expired" or "defaulted".
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RxState::Current => "current",
            RxState::Expired => "expired",
            RxState::Defaulted => "defaulted",
        }
    }
}

/// Things that happened, for the caller's counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LacpEvent {
    /// The partner went silent for one timeout, or the carrier went down.
    PartnerExpired,
    /// The partner stayed silent for a second timeout and was forgotten.
    PartnerDefaulted,
    /// A PDU came from a partner whose identity (system priority, system, key, port
    /// priority, port) differs from the one we held, a zeroed one included.
    PartnerChanged,
}

impl LacpEvent {
    /// A stable snake-case key for counters and logs.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            LacpEvent::PartnerExpired => "partner_expired",
            LacpEvent::PartnerDefaulted => "partner_defaulted",
            LacpEvent::PartnerChanged => "partner_changed",
        }
    }
}

/// A member's tallies, in the spirit of `ovs-appctl lacp/show-stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberCounters {
    /// Valid LACPDUs received with carrier up.
    pub pdus_rx: u64,
    /// LACPDUs returned by [`Member::poll_transmit`].
    pub pdus_tx: u64,
    /// Frames [`parse`] refused, Markers excepted.
    pub bad_pdus: u64,
    /// Marker PDUs received (never answered).
    pub markers: u64,
    /// Times the partner expired.
    pub expired: u64,
    /// Times the partner was defaulted.
    pub defaulted: u64,
}

/// One bond member's LACP machines: receive, periodic/transmit and the mux of its own state.
#[derive(Clone, Debug)]
pub struct Member {
    config: ActorConfig,
    carrier: bool,
    selected: bool,
    rx: RxState,
    /// The partner as it last described itself (its Actor TLV), aged by the receive
    /// machine; sent back verbatim as our Partner TLV.
    partner: PortInfo,
    /// When the current receive state times out (meaningless while defaulted).
    current_while: u64,
    /// Need To Transmit: our information changed or the partner has it wrong.
    ntt: bool,
    last_tx: Option<u64>,
    /// When the last [`TX_BURST`] PDUs were sent, oldest first.
    tx_times: [Option<u64>; TX_BURST],
    counters: MemberCounters,
}

impl Member {
    /// A member that starts Defaulted, carrier down, needing to transmit (NTT) once carrier
    /// is up. `now_ms` seeds the receive timer.
    #[must_use]
    pub fn new(config: ActorConfig, now_ms: u64) -> Member {
        Member {
            config,
            carrier: false,
            selected: false,
            rx: RxState::Defaulted,
            partner: PortInfo::default(),
            current_while: now_ms,
            ntt: true,
            last_tx: None,
            tx_times: [None; TX_BURST],
            counters: MemberCounters::default(),
        }
    }

    /// Records a carrier change. Down: unselected at once and a current partner is expired
    /// (Linux and OVS do the same: the link may come back to another partner). Up: transmit
    /// at once, for OVS otherwise waits for our next periodic PDU (up to 1 s) to re-enable
    /// the link.
    pub fn set_carrier(&mut self, up: bool, now_ms: u64) -> Option<LacpEvent> {
        if up == self.carrier {
            return None;
        }
        self.tracking_actor(|m| {
            m.carrier = up;
            if up {
                m.ntt = true;
                None
            } else {
                m.selected = false;
                (m.rx == RxState::Current).then(|| m.expire(now_ms))
            }
        })
    }

    /// Parses and records one slow-protocol frame received on this member.
    ///
    /// While the carrier is down the frame is dropped unread (`Ok(None)`), as OVS drops it:
    /// our carrier report is late, and the partner's next PDU will count. A PDU whose
    /// Partner TLV does not echo our actor information sets need-to-transmit, as OVS's
    /// `info_tx_equal` does. The caller should run [`select`] after any PDU.
    ///
    /// # Errors
    ///
    /// The frame is not a LACPDU; it is counted in [`MemberCounters::markers`] or
    /// [`MemberCounters::bad_pdus`] and otherwise ignored.
    pub fn receive(&mut self, frame: &[u8], now_ms: u64) -> Result<Option<LacpEvent>, PduError> {
        if !self.carrier {
            return Ok(None);
        }
        let pdu = parse(frame).inspect_err(|e| match e {
            PduError::Marker => self.counters.markers += 1,
            _ => self.counters.bad_pdus += 1,
        })?;
        self.counters.pdus_rx += 1;
        let timeout = self.timeout();
        let event = self.tracking_actor(|m| {
            let changed = !same_identity(&m.partner, &pdu.actor);
            m.partner = pdu.actor;
            m.rx = RxState::Current;
            m.current_while = now_ms.saturating_add(timeout);
            changed.then_some(LacpEvent::PartnerChanged)
        });
        if !pdu.partner.echoes(&self.actor()) {
            self.ntt = true;
        }
        Ok(event)
    }

    /// Runs the receive timer (`current_while`): Current -> Expired (partner Synchronization
    /// cleared, partner Timeout forced short so we send fast; our Expired bit) -> after
    /// another timeout Defaulted (partner zeroed, our Defaulted bit, unselected). The timeout
    /// is 3 s if `config.fast` else 90 s. One step per call: a late caller sees each event.
    pub fn tick(&mut self, now_ms: u64) -> Option<LacpEvent> {
        if self.rx == RxState::Defaulted || now_ms < self.current_while {
            return None;
        }
        self.tracking_actor(|m| match m.rx {
            RxState::Current => Some(m.expire(now_ms)),
            RxState::Expired => {
                m.rx = RxState::Defaulted;
                m.partner = PortInfo::default();
                m.selected = false;
                m.counters.defaulted += 1;
                Some(LacpEvent::PartnerDefaulted)
            }
            RxState::Defaulted => None,
        })
    }

    /// Sets the selection (called by [`select`]): selected means in sync, collecting and
    /// distributing at once (coupled mux without `Aggregate_Wait`, as OVS); any change of our
    /// state sets need-to-transmit.
    pub fn set_selected(&mut self, selected: bool) {
        self.tracking_actor(|m| m.selected = selected);
    }

    /// The PDU to send now, if any: when the carrier is up and need-to-transmit is set or a
    /// period is due (1 s if the partner's Timeout bit is set, or the partner is
    /// expired/defaulted and we are fast; else 30 s), and no more than [`TX_BURST`] PDUs went
    /// out in the last second. A passive member sends only while its partner is active.
    pub fn poll_transmit(&mut self, now_ms: u64, src_mac: [u8; 6]) -> Option<[u8; LACPDU_LEN]> {
        if now_ms < self.next_transmit()? {
            return None;
        }
        self.ntt = false;
        self.last_tx = Some(now_ms);
        self.tx_times.rotate_left(1);
        self.tx_times[TX_BURST - 1] = Some(now_ms);
        self.counters.pdus_tx += 1;
        Some(encode(src_mac, &self.actor(), &self.partner))
    }

    /// The earliest `now_ms` at which [`tick`](Self::tick) or
    /// [`poll_transmit`](Self::poll_transmit) has work: a time in the past means now, and
    /// `u64::MAX` means nothing until the next frame or carrier change.
    #[must_use]
    pub fn next_deadline(&self) -> u64 {
        let rx = match self.rx {
            RxState::Defaulted => u64::MAX,
            RxState::Current | RxState::Expired => self.current_while,
        };
        rx.min(self.next_transmit().unwrap_or(u64::MAX))
    }

    /// Whether the member may carry the bond's traffic: carrier, selected, partner current
    /// and in sync and collecting (what OVS calls `may_enable`, plus Collecting, which
    /// Linux sets only once it takes frames).
    #[must_use]
    pub fn carries_traffic(&self) -> bool {
        const PARTNER_READY: u8 = state::SYNCHRONIZATION | state::COLLECTING;
        self.carrier
            && self.selected
            && self.rx == RxState::Current
            && self.partner.state & PARTNER_READY == PARTNER_READY
    }

    /// The receive machine's state.
    #[must_use]
    pub fn rx_state(&self) -> RxState {
        self.rx
    }

    /// Our information as the next PDU carries it. State: Activity if active, Timeout if
    /// fast, Aggregation always, Synchronization/Collecting/Distributing if selected,
    /// Defaulted/Expired per the receive state.
    #[must_use]
    pub fn actor(&self) -> PortInfo {
        let c = &self.config;
        let flag = |on: bool, bits: u8| if on { bits } else { 0 };
        let selected = state::SYNCHRONIZATION | state::COLLECTING | state::DISTRIBUTING;
        let bits = state::AGGREGATION
            | flag(c.active, state::ACTIVITY)
            | flag(c.fast, state::TIMEOUT)
            | flag(self.selected, selected)
            | flag(self.rx == RxState::Expired, state::EXPIRED)
            | flag(self.rx == RxState::Defaulted, state::DEFAULTED);
        PortInfo {
            system_priority: c.system_priority,
            system: c.system,
            key: c.key,
            port_priority: c.port_priority,
            port: c.port,
            state: bits,
        }
    }

    /// The partner as it last described itself, aged by the receive machine (zeros when
    /// defaulted).
    #[must_use]
    pub fn partner(&self) -> PortInfo {
        self.partner
    }

    /// Whether [`select`] last selected this member.
    #[must_use]
    pub fn selected(&self) -> bool {
        self.selected
    }

    /// The carrier as last set.
    #[must_use]
    pub fn carrier(&self) -> bool {
        self.carrier
    }

    /// The member's tallies.
    #[must_use]
    pub fn counters(&self) -> MemberCounters {
        self.counters
    }

    /// The configuration it was created with.
    #[must_use]
    pub fn config(&self) -> &ActorConfig {
        &self.config
    }

    /// Runs `change` and sets need-to-transmit if our actor information changed: 802.1AX
    /// asks for a PDU on every change, so the partner never acts on stale bits.
    fn tracking_actor<T>(&mut self, change: impl FnOnce(&mut Self) -> T) -> T {
        let before = self.actor();
        let out = change(self);
        if self.actor() != before {
            self.ntt = true;
        }
        out
    }

    /// Current -> Expired.
    fn expire(&mut self, now_ms: u64) -> LacpEvent {
        self.rx = RxState::Expired;
        self.partner.state &= !state::SYNCHRONIZATION;
        // Asks ourselves to send every second: the partner may only have lost our PDUs.
        self.partner.state |= state::TIMEOUT;
        self.current_while = now_ms.saturating_add(self.timeout());
        self.counters.expired += 1;
        LacpEvent::PartnerExpired
    }

    /// How long the partner stays current without a PDU, per our own Timeout bit.
    fn timeout(&self) -> u64 {
        if self.config.fast {
            SHORT_TIMEOUT_MS
        } else {
            LONG_TIMEOUT_MS
        }
    }

    /// When the next PDU may go out, or `None` if the member may not send at all.
    fn next_transmit(&self) -> Option<u64> {
        // 802.1AX's periodic machine stops when both ends are passive; a passive member
        // thus waits for an active partner (and stops again when it is defaulted).
        let may_send = self.config.active || self.partner.state & state::ACTIVITY != 0;
        if !self.carrier || !may_send {
            return None;
        }
        let fast = self.partner.state & state::TIMEOUT != 0
            || (self.rx != RxState::Current && self.config.fast);
        let period = if fast {
            FAST_PERIODIC_MS
        } else {
            SLOW_PERIODIC_MS
        };
        let due = match self.last_tx {
            Some(last) if !self.ntt => last.saturating_add(period),
            _ => 0,
        };
        // The oldest of the last TX_BURST PDUs must be a full fast period old.
        let [oldest, ..] = self.tx_times;
        let allowed = oldest.map_or(0, |t| t.saturating_add(FAST_PERIODIC_MS));
        Some(due.max(allowed))
    }
}

/// Whether two descriptions are the same port of the same system (state aside).
fn same_identity(a: &PortInfo, b: &PortInfo) -> bool {
    PortInfo { state: 0, ..*a } == PortInfo { state: 0, ..*b }
}

/// Aggregation selection for the members of one bond (one aggregator): the lead is the
/// member with the best (lowest) (`port_priority`, `port`) among those with carrier, rx
/// Current, partner Aggregation set, and partner system != our own system (loopback: never
/// selected). A member is selected iff it passes those same tests and its partner's
/// (`system_priority`, `system`, `key`) equal the lead's. Calls [`Member::set_selected`] on
/// every member. Returns the index of the lead, if any.
pub fn select(members: &mut [Member]) -> Option<usize> {
    fn eligible(m: &Member) -> bool {
        m.carrier
            && m.rx == RxState::Current
            && m.partner.state & state::AGGREGATION != 0
            && m.partner.system != m.config.system
    }
    fn aggregator(m: &Member) -> (u16, [u8; 6], u16) {
        (m.partner.system_priority, m.partner.system, m.partner.key)
    }
    // min_by_key keeps the first of equals, so ties go to the lower index.
    let (lead, lead_aggregator) = members
        .iter()
        .enumerate()
        .filter(|(_, m)| eligible(m))
        .min_by_key(|(_, m)| (m.config.port_priority, m.config.port))
        .map(|(i, m)| (i, aggregator(m)))
        .unzip();
    for m in members.iter_mut() {
        let selected = eligible(m) && Some(aggregator(m)) == lead_aggregator;
        m.set_selected(selected);
    }
    lead
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS_A: [u8; 6] = [0x02, 0, 0, 0, 0x21, 0x0a];
    const SYS_B: [u8; 6] = [0x02, 0, 0, 0, 0x21, 0x0b];
    const SYS_C: [u8; 6] = [0x02, 0, 0, 0, 0x21, 0x0c];
    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 1];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 1];
    const READY: u8 = 0x3f; // activity timeout aggregation synchronized collecting distributing
    const SLOW_READY: u8 = READY & !state::TIMEOUT;

    fn config(system: [u8; 6], port: u16, fast: bool) -> ActorConfig {
        let (system_priority, key, port_priority, active) = (65534, 1, 65535, true);
        ActorConfig {
            system,
            system_priority,
            key,
            port,
            port_priority,
            fast,
            active,
        }
    }

    /// A partner's actor information, as another member configured like ours describes itself.
    fn peer(system: [u8; 6], key: u16, port: u16, state: u8) -> PortInfo {
        let mut p = Member::new(config(system, port, true), 0).actor();
        (p.key, p.state) = (key, state);
        p
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        let byte = |p: &[u8]| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok();
        digits.chunks(2).map(|p| byte(p).expect("hex")).collect()
    }

    /// Feeds `m` a PDU from `partner` that echoes `echo` (our own actor if `None`).
    fn hear(m: &mut Member, peer: PortInfo, echo: Option<PortInfo>, now: u64) -> Option<LacpEvent> {
        let pdu = encode(MAC_B, &peer, &echo.unwrap_or_else(|| m.actor()));
        m.receive(&pdu, now).expect("a valid PDU")
    }

    /// A member with carrier up that heard `partner` (echoing it right) at time 0.
    fn heard(cfg: ActorConfig, partner: PortInfo) -> Member {
        let mut m = Member::new(cfg, 0);
        m.set_carrier(true, 0);
        hear(&mut m, partner, None, 0);
        m
    }

    fn sel(m: &mut Member) -> Option<usize> {
        select(std::slice::from_mut(m))
    }

    fn tx(m: &mut Member, now: u64) -> bool {
        m.poll_transmit(now, MAC_A).is_some()
    }

    #[test]
    fn encodes_the_bytes_ovs_sends() {
        // OVS 3.1's first PDU (notes 2.1), whose partner was still unknown.
        let system = [0xd6, 0x7c, 0x7c, 0x3a, 0x52, 0x4a];
        let actor = peer(system, 1, 1, 0xbf);
        let mut want = hex(
            "0180c2000002 6ebeae80ad49 8809 0101 0114 fffe d67c7c3a524a 0001 ffff 0001 bf000000
             0214 0000 000000000000 0000 0000 0000 00000000 0310 0000 000000000000000000000000
             0000",
        );
        want.resize(LACPDU_LEN, 0);
        let partner = PortInfo::default();
        let frame = encode([0x6e, 0xbe, 0xae, 0x80, 0xad, 0x49], &actor, &partner);
        assert_eq!(frame.as_slice(), want.as_slice());
        assert_eq!(parse(&frame), Ok(Lacpdu { actor, partner }));

        // What our own member sends first with OVS's defaults: defaulted, not selected.
        let mut m = Member::new(config(system, 1, true), 0);
        m.set_carrier(true, 0);
        let first = m.poll_transmit(0, MAC_A).expect("sends at once");
        let want_actor = hex("0101 0114 fffe d67c7c3a524a 0001 ffff 0001 47000000");
        assert_eq!(first.get(14..36), Some(want_actor.as_slice()));
        assert_eq!(first.get(36..), want.get(36..), "unknown partner: zeros");
        assert_eq!(state_words(0x47), "activity timeout aggregation defaulted");
    }

    #[test]
    fn round_trips() {
        let actor = peer(SYS_A, 0x1234, 0x0102, READY | state::EXPIRED);
        let mut partner = peer(SYS_B, 0xfffe, 0xfeed, 0x5a);
        partner.system_priority = 1;
        let frame = encode(MAC_A, &actor, &partner);
        assert_eq!(frame.get(..12), Some(&[LACP_MULTICAST, MAC_A].concat()[..]));
        assert_eq!(parse(&frame), Ok(Lacpdu { actor, partner }));
        // Longer frames (padding, an FCS) are fine, as in OVS.
        let long = [&frame[..], &[0xff; 8]].concat();
        assert_eq!(parse(&long), Ok(Lacpdu { actor, partner }));
    }

    #[test]
    fn every_pdu_error() {
        let good = encode(MAC_A, &peer(SYS_A, 1, 1, READY), &PortInfo::default());
        let with = |at: usize, value: u8| {
            let mut f = good;
            f[at] = value;
            f
        };
        assert_eq!(parse(&good[..10]), Err(PduError::Short));
        assert_eq!(parse(&good[..LACPDU_LEN - 1]), Err(PduError::Short));
        assert_eq!(parse(&with(12, 0x08)), Err(PduError::NotSlowProtocol));
        assert_eq!(parse(&with(14, 2)), Err(PduError::Marker));
        assert_eq!(parse(&with(14, 2)[..40]), Err(PduError::Marker));
        assert_eq!(parse(&with(14, 3)), Err(PduError::UnknownSubtype(3)));
        assert_eq!(parse(&with(16, 3)), Err(PduError::BadActorTlv));
        assert_eq!(parse(&with(17, 19)), Err(PduError::BadActorTlv));
        assert_eq!(parse(&with(36, 1)), Err(PduError::BadPartnerTlv));
        assert_eq!(parse(&with(37, 21)), Err(PduError::BadPartnerTlv));
        // Not checked, as in OVS: version, collector, terminator.
        for (at, value) in [(15, 9), (56, 0), (72, 7)] {
            assert!(parse(&with(at, value)).is_ok());
        }
        assert_eq!(PduError::UnknownSubtype(3).key(), "unknown_subtype");
        assert_eq!(PduError::Marker.to_string(), "bad LACPDU: marker");

        let mut m = Member::new(config(SYS_A, 1, true), 0);
        m.set_carrier(true, 0);
        assert_eq!(m.receive(&with(14, 2), 0), Err(PduError::Marker));
        assert_eq!(m.receive(&good[..50], 0), Err(PduError::Short));
        let c = m.counters();
        assert_eq!((c.markers, c.bad_pdus, c.pdus_rx), (1, 1, 0));
        assert_eq!(m.rx_state(), RxState::Defaulted);
    }

    /// Ticks, selects and polls `from`; delivers its PDU to `to`. Returns whether it sent.
    fn step(from: &mut Member, to: &mut Member, mac: [u8; 6], now: u64) -> bool {
        from.tick(now);
        sel(from);
        let Some(frame) = from.poll_transmit(now, mac) else {
            return false;
        };
        to.receive(&frame, now).expect("our PDUs parse");
        sel(to);
        true
    }

    #[test]
    fn back_to_back_members_agree() {
        let mut a = Member::new(config(SYS_A, 1, true), 0);
        let mut b = Member::new(config(SYS_B, 7, true), 0);
        a.set_carrier(true, 0);
        b.set_carrier(true, 0);
        let (mut now, mut sent) = (0, 0);
        while !(a.carries_traffic() && b.carries_traffic()) {
            assert!(sent <= 6 && now < 3_000, "{sent} PDUs, {now} ms");
            sent += u32::from(step(&mut a, &mut b, MAC_A, now));
            sent += u32::from(step(&mut b, &mut a, MAC_B, now));
            now += 10;
        }
        assert_eq!((a.partner().system, b.partner().system), (SYS_B, SYS_A));
        // Steady state: each echoes the other exactly, so only the 1 s periodic PDUs flow.
        let before = a.counters().pdus_tx + b.counters().pdus_tx;
        for t in (now..now + 10_000).step_by(10) {
            step(&mut a, &mut b, MAC_A, t);
            step(&mut b, &mut a, MAC_B, t);
            assert!(a.carries_traffic() && b.carries_traffic(), "lost at {t}");
        }
        let periodic = a.counters().pdus_tx + b.counters().pdus_tx - before;
        assert!((18..=22).contains(&periodic), "{periodic} PDUs in 10 s");
    }

    #[test]
    fn silent_partner_expires_then_defaults() {
        let mut m = heard(config(SYS_A, 1, true), peer(SYS_B, 1, 1, READY));
        sel(&mut m);
        assert!(m.carries_traffic());
        assert_eq!(m.next_deadline(), 0, "selection changed: NTT");
        assert!(tx(&mut m, 0));
        assert_eq!(m.next_deadline(), 1_000);
        assert_eq!(m.tick(2_999), None);
        assert_eq!(m.tick(3_000), Some(LacpEvent::PartnerExpired));
        assert_eq!(m.rx_state(), RxState::Expired);
        assert!(!m.carries_traffic());
        assert_eq!(
            m.partner().state & (state::SYNCHRONIZATION | state::TIMEOUT),
            state::TIMEOUT
        );
        assert_ne!(m.actor().state & state::EXPIRED, 0);
        assert!(tx(&mut m, 3_000), "expiry changes our state");
        assert_eq!(m.tick(5_999), None);
        assert_eq!(m.tick(6_000), Some(LacpEvent::PartnerDefaulted));
        assert_eq!(m.rx_state(), RxState::Defaulted);
        assert_eq!(m.partner(), PortInfo::default());
        assert_eq!(m.actor().state & 0xc0, state::DEFAULTED);
        assert!(!m.selected());
        assert_eq!(m.tick(60_000), None);
        let c = m.counters();
        assert_eq!((c.expired, c.defaulted, c.pdus_rx), (1, 1, 1));
        // Defaulted but fast: still solicit every second.
        assert!(tx(&mut m, 6_000));
        assert_eq!(m.next_deadline(), 7_000);
    }

    #[test]
    fn carrier_down_stops_traffic_and_up_transmits() {
        let mut m = heard(config(SYS_A, 1, true), peer(SYS_B, 1, 1, READY));
        sel(&mut m);
        assert!(m.carries_traffic() && tx(&mut m, 0));
        assert_eq!(m.set_carrier(false, 500), Some(LacpEvent::PartnerExpired));
        assert!(!m.carries_traffic() && !m.selected());
        assert_eq!(m.rx_state(), RxState::Expired);
        assert!(!tx(&mut m, 5_000), "no carrier, no PDU");
        assert_eq!(m.set_carrier(false, 600), None);
        assert_eq!(m.set_carrier(true, 1_200), None);
        assert!(tx(&mut m, 1_200), "carrier up sends at once");
        // The partner answers: back in business.
        assert_eq!(hear(&mut m, peer(SYS_B, 1, 1, READY), None, 1_210), None);
        sel(&mut m);
        assert!(m.carries_traffic());
    }

    #[test]
    fn receive_while_carrier_down_is_ignored() {
        let mut m = Member::new(config(SYS_A, 1, true), 0);
        assert_eq!(hear(&mut m, peer(SYS_B, 1, 1, READY), None, 0), None);
        assert_eq!(m.receive(&[0; 3], 0), Ok(None));
        assert_eq!(m.rx_state(), RxState::Defaulted);
        assert_eq!(m.partner(), PortInfo::default());
        assert_eq!(m.counters(), MemberCounters::default());
        assert_eq!(m.next_deadline(), u64::MAX);
    }

    #[test]
    fn select_refuses_other_keys_and_loopback() {
        let mut bond = [
            heard(config(SYS_A, 2, true), peer(SYS_B, 1, 12, READY)),
            heard(config(SYS_A, 1, true), peer(SYS_B, 1, 11, READY)),
            heard(config(SYS_A, 3, true), peer(SYS_B, 2, 13, READY)),
        ];
        assert_eq!(select(&mut bond), Some(1), "lowest port leads");
        assert_eq!(bond.each_ref().map(Member::selected), [true, true, false]);
        assert!(!bond[2].carries_traffic());
        // A partner without Aggregation is never selected.
        let individual = READY & !state::AGGREGATION;
        bond[1] = heard(config(SYS_A, 1, true), peer(SYS_B, 1, 11, individual));
        assert_eq!(select(&mut bond), Some(0));
        assert_eq!(bond.each_ref().map(Member::selected), [true, false, false]);

        // Our own PDUs coming back (a looped cable, or both ends on one switch).
        let mut looped = heard(config(SYS_A, 1, true), peer(SYS_A, 1, 2, READY));
        assert_eq!(sel(&mut looped), None);
        assert!(!looped.selected());
        assert_eq!(select(&mut []), None);
    }

    #[test]
    fn transmit_rate_is_limited() {
        let mut m = Member::new(config(SYS_A, 1, true), 0);
        m.set_carrier(true, 0);
        let mut sent = Vec::new();
        for now in (0..2_000).step_by(50) {
            m.set_selected(now % 100 == 0); // a change, hence NTT, every 50 ms
            if tx(&mut m, now) {
                sent.push(now);
            }
        }
        assert_eq!(sent, [0, 50, 100, 1_000, 1_050, 1_100]);
    }

    #[test]
    fn long_timeout_partner_gets_30s_periodic() {
        let mut m = heard(config(SYS_A, 1, false), peer(SYS_B, 1, 1, SLOW_READY));
        assert!(tx(&mut m, 0), "answers the first PDU");
        assert_eq!(hear(&mut m, peer(SYS_B, 1, 1, SLOW_READY), None, 100), None);
        assert!(!tx(&mut m, 100), "right echo: nothing to say");
        assert_eq!(m.next_deadline(), 30_000);
        assert!(!tx(&mut m, 29_999));
        assert!(tx(&mut m, 30_000));
        assert_eq!(m.tick(30_000), None, "long timeout: 90 s");
        assert_eq!(m.tick(90_100), Some(LacpEvent::PartnerExpired));
        // Expired forces the partner's Timeout short, so we solicit every second.
        assert!(tx(&mut m, 90_100) && tx(&mut m, 91_100));
    }

    #[test]
    fn wrong_echo_sets_ntt() {
        let partner = peer(SYS_B, 1, 1, READY);
        let mut m = heard(config(SYS_A, 1, true), partner);
        sel(&mut m);
        assert!(tx(&mut m, 0));
        let ok = m.actor();
        // Collecting/Distributing/Expired are not compared (as OVS): no PDU.
        let echo = |change: fn(&mut PortInfo)| {
            let mut p = ok;
            change(&mut p);
            Some(p)
        };
        hear(&mut m, partner, echo(|p| p.state &= !0x30), 400);
        assert!(!tx(&mut m, 400));
        // 400 ms apart: before the next periodic PDU, within the rate limit.
        let wrong = [
            echo(|p| p.key = 2),
            echo(|p| p.port = 9),
            echo(|p| p.system = SYS_B),
            echo(|p| p.state &= !state::SYNCHRONIZATION),
        ];
        for (now, wrong) in (400..).step_by(400).zip(wrong) {
            hear(&mut m, partner, wrong, now);
            assert!(tx(&mut m, now), "{wrong:?}");
        }
    }

    #[test]
    fn passive_waits_for_an_active_partner() {
        let mut m = Member::new(
            ActorConfig {
                active: false,
                ..config(SYS_A, 1, true)
            },
            0,
        );
        m.set_carrier(true, 0);
        assert!(!tx(&mut m, 0));
        assert_eq!(m.next_deadline(), u64::MAX);
        let passive = peer(SYS_B, 1, 1, READY & !state::ACTIVITY);
        hear(&mut m, passive, None, 10);
        assert!(!tx(&mut m, 10), "both passive: silence");
        let event = hear(&mut m, peer(SYS_C, 1, 1, READY), None, 20);
        assert_eq!(event, Some(LacpEvent::PartnerChanged));
        assert!(tx(&mut m, 20));
        let words = (m.rx_state().as_str(), event.map(LacpEvent::key));
        assert_eq!(words, ("current", Some("partner_changed")));
    }

    #[test]
    fn never_panics_on_garbage() {
        let good = encode(MAC_B, &peer(SYS_B, 1, 1, READY), &peer(SYS_A, 1, 1, READY));
        let mut m = Member::new(config(SYS_A, 1, true), 0);
        m.set_carrier(true, 0);
        for len in 0..LACPDU_LEN {
            assert_eq!(parse(&good[..len]), Err(PduError::Short), "len {len}");
            assert!(m.receive(&good[..len], 0).is_err());
        }
        // xorshift64: deterministic, no dependencies.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut small = |n: u64| usize::try_from(next() % n).expect("small");
        let mut parsed = 0;
        for round in 0..20_000_u64 {
            let mut frame = good.to_vec();
            if round % 2 == 0 {
                // Random bytes of a random length, with a slow-protocol header half the time.
                frame = (0..small(200))
                    .map(|_| small(256).to_le_bytes()[0])
                    .collect();
                if round % 4 == 0 && frame.len() > 15 {
                    frame[12..16].copy_from_slice(&[0x88, 0x09, 1, 1]);
                }
            } else {
                // A valid frame with a few bytes changed and maybe cut short.
                for _ in 0..small(4) {
                    let at = small(80);
                    frame[at] = small(256).to_le_bytes()[0];
                }
                frame.truncate(small(140));
            }
            parsed += u32::from(parse(&frame).is_ok());
            let _ = m.receive(&frame, round);
            m.tick(round);
            sel(&mut m);
            let _ = m.poll_transmit(round, MAC_A);
            let _ = m.next_deadline();
        }
        assert!(parsed > 100, "the valid paths are reached too ({parsed})");
    }
}
