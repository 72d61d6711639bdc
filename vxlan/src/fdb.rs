//! The remote FDB: per VNI, inner MAC -> remote VTEP, plus a flood list per VNI.
//!
//! It answers "where does a frame for this inner MAC go?": to one remote VTEP
//! ([`Destination::Unicast`]), or, for broadcast, multicast and unknown unicast, to every VTEP
//! on the VNI's flood list ([`Destination::Flood`], head-end replication, like the all-zeros
//! entries that `bridge fdb append 00:00:00:00:00:00 dev vx0 dst <peer>` adds on Linux).
//!
//! Entries are **learned** from decapsulated frames (inner source MAC -> outer source IP) or
//! **static** (configured). As in Linux `vxlan_snoop`:
//! - a learned entry points at the outer source *address* and the configured VXLAN port
//!   ([`FdbConfig::learned_port`]), never at the outer UDP source port, which the sender
//!   hashes per flow;
//! - learning never overrides a static entry. A frame whose source MAC is pinned to another
//!   VTEP yields [`Learn::StaticConflict`], and Linux drops such frames
//!   (`SKB_DROP_REASON_VXLAN_ENTRY_EXISTS`); [`Learn::should_drop`] says so;
//! - a MAC seen behind a new VTEP moves there ([`Learn::Moved`]);
//! - group and all-zero source MACs are never learned (`is_valid_ether_addr`).
//!
//! **Ageing.** A learned entry is alive while `now - last_seen < ageing_ms` (default 300 s, the
//! Linux vxlan default) and gone from the moment the difference reaches `ageing_ms`. Lookups
//! apply the rule themselves; [`Fdb::sweep`] only frees memory. Static entries never age.
//!
//! **Limit.** At most [`FdbConfig::max_learned_per_vni`] learned entries per VNI (live or not
//! yet swept). When the limit is reached nothing new is learned ([`Learn::LimitReached`]):
//! frames to unknown MACs flood, as they would anyway. Static entries do not count.
//!
//! **Time** is a `u64` of milliseconds from a monotonic clock, passed in; nothing here reads a
//! clock. **Sharing:** lookups and [`Fdb::refresh`] take `&self` (the last-seen time is an
//! atomic), so workers can share the table behind a read lock and take the write lock only for
//! [`Fdb::learn`] when `refresh` returns `false` (a new or moved MAC: rare).
//!
//! **Shared between workers:** [`SharedFdb`] is the MAC table alone (no flood lists), split
//! into [`SHARDS`] shards by a hash of (VNI, MAC), each behind its own read-write lock, like
//! the switch's local MAC table: every method takes `&self`, a lookup or refresh read-locks one
//! shard, a new or moved MAC write-locks one shard, and workers whose frames hash to different
//! shards never touch the same lock. Its entries follow the same rules as [`Fdb`]'s (the code
//! is shared); the per-VNI limit counts across all shards.

use core::fmt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::header::{UDP_PORT, Vni};

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// True for a MAC that may be learned or pinned: not a group address (I/G bit clear) and not
/// all zeros (Linux `is_valid_ether_addr`).
#[inline]
pub fn is_valid_unicast(mac: Mac) -> bool {
    mac[0] & 0x01 == 0 && mac != [0; 6]
}

/// A remote VXLAN tunnel endpoint: the underlay address and UDP port frames are sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vtep {
    /// The remote VTEP's underlay address.
    pub ip: IpAddr,
    /// The remote VTEP's VXLAN UDP port.
    pub port: u16,
}

impl Vtep {
    /// The VTEP at `ip`, port `port`.
    pub const fn new(ip: IpAddr, port: u16) -> Vtep {
        Vtep { ip, port }
    }

    /// Checks that frames can be sent to this VTEP: a unicast, specified address and a
    /// non-zero port. Head-end replication sends one copy per VTEP, so multicast underlay
    /// groups are not VTEPs here.
    ///
    /// # Errors
    ///
    /// [`FdbError::UnusableVtep`] naming the problem.
    pub fn validate(self) -> Result<(), FdbError> {
        let ip = self.ip.to_canonical();
        let reason = if ip.is_unspecified() {
            "the address is unspecified"
        } else if ip.is_multicast() {
            "the address is multicast (head-end replication needs each VTEP's unicast address)"
        } else if ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
            "the address is the broadcast address"
        } else if self.port == 0 {
            "the port is 0"
        } else {
            return Ok(());
        };
        Err(FdbError::UnusableVtep { vtep: self, reason })
    }
}

impl fmt::Display for Vtep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", SocketAddr::from(*self))
    }
}

impl From<Vtep> for SocketAddr {
    fn from(vtep: Vtep) -> SocketAddr {
        SocketAddr::new(vtep.ip, vtep.port)
    }
}

/// Tunables of an [`Fdb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbConfig {
    /// How long a learned entry lives without traffic, in milliseconds. Default 300 000 (the
    /// Linux vxlan `ageing` default).
    pub ageing_ms: u64,
    /// Learned entries per VNI; 0 disables learning (Linux `nolearning`). Default 8192.
    pub max_learned_per_vni: usize,
    /// The UDP port learned VTEPs are reached on: the overlay's VXLAN port. Default 4789.
    pub learned_port: u16,
}

impl Default for FdbConfig {
    fn default() -> FdbConfig {
        FdbConfig {
            ageing_ms: 300_000,
            max_learned_per_vni: 8192,
            learned_port: UDP_PORT,
        }
    }
}

/// Whether an entry was configured or learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Configured; never aged, never overridden by learning.
    Static,
    /// Learned from a decapsulated frame; aged.
    Learned,
}

/// What [`Fdb::learn`] did with a frame's inner source MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Learn {
    /// The MAC was known behind this VTEP; its age was reset.
    Refreshed,
    /// The MAC is new in the VNI (or its old entry had expired).
    Learned,
    /// The MAC was behind another VTEP and now points here.
    Moved {
        /// The VTEP it was learned behind before.
        from: Vtep,
    },
    /// The MAC has a static entry for this very VTEP: nothing to do.
    StaticMatch,
    /// The MAC has a static entry for another VTEP: not learned. Linux drops the frame.
    StaticConflict {
        /// Where the static entry points.
        pinned: Vtep,
    },
    /// The VNI holds its maximum of learned entries (or learning is off): not learned.
    LimitReached,
    /// A group or all-zero source MAC, or an unusable source address: never learned.
    InvalidSource,
}

impl Learn {
    /// True when Linux would drop the frame: its source MAC is pinned to another VTEP.
    #[inline]
    pub const fn should_drop(self) -> bool {
        matches!(self, Learn::StaticConflict { .. })
    }
}

/// Where a frame for an inner destination MAC goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    /// To this one VTEP.
    Unicast(Vtep),
    /// A copy to every VTEP of the VNI's flood list (possibly empty: then nowhere). Callers
    /// leave out the VTEP the frame came from (split horizon).
    Flood(&'a [Vtep]),
}

/// One entry, as listed by [`Fdb::entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    /// The VNI.
    pub vni: Vni,
    /// The inner MAC.
    pub mac: Mac,
    /// Where frames to it go.
    pub vtep: Vtep,
    /// Static or learned.
    pub kind: EntryKind,
    /// Milliseconds since a frame from it was last seen (`None` for static entries).
    pub age_ms: Option<u64>,
}

/// A refused configuration change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FdbError {
    /// A static entry for a broadcast, multicast or all-zero MAC.
    #[error(
        "MAC {} cannot have a static FDB entry: it is a group or all-zero address; \
         use the VNI's flood list for broadcast and multicast",
        format_mac(.mac)
    )]
    NotUnicast {
        /// The MAC given.
        mac: Mac,
    },
    /// A VTEP frames cannot be sent to.
    #[error("VTEP {vtep} is not usable: {reason}")]
    UnusableVtep {
        /// The VTEP given.
        vtep: Vtep,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Formats a MAC as `02:00:00:00:00:01`.
pub fn format_mac(mac: &Mac) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The entries of a table (or of one shard), keyed by foldhash rather than std's SipHash: they
/// are looked up for every frame sent into or learned from the overlay.
/// `foldhash::fast::RandomState` is seeded per process and per map; foldhash is only
/// "minimally DoS-resistant" (no claim against an attacker who recovers the seed).
type Table = HashMap<(Vni, Mac), Entry, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Entry {
    vtep: Vtep,
    kind: EntryKind,
    /// Milliseconds; meaningful for learned entries only.
    last_seen: AtomicU64,
}

/// The rules of the module docs for one entry, shared by [`Fdb`] and [`SharedFdb`] so both
/// tables answer alike.
impl Entry {
    /// A new learned entry, last seen at `now_ms`.
    fn learned(vtep: Vtep, now_ms: u64) -> Entry {
        Entry {
            vtep,
            kind: EntryKind::Learned,
            last_seen: AtomicU64::new(now_ms),
        }
    }

    /// A static entry (never aged).
    fn pinned(vtep: Vtep) -> Entry {
        Entry {
            vtep,
            kind: EntryKind::Static,
            last_seen: AtomicU64::new(0),
        }
    }

    /// Whether lookups use the entry at `now_ms`: static, or learned less than `ageing_ms`
    /// ago.
    #[inline]
    fn alive(&self, ageing_ms: u64, now_ms: u64) -> bool {
        match self.kind {
            EntryKind::Static => true,
            EntryKind::Learned => {
                now_ms.saturating_sub(self.last_seen.load(Ordering::Relaxed)) < ageing_ms
            }
        }
    }

    /// [`Fdb::refresh`] of this entry: true (and the age reset) when it is static or a live
    /// learned entry, and points at `remote`.
    #[inline]
    fn refresh(&self, ageing_ms: u64, remote: IpAddr, now_ms: u64) -> bool {
        if self.vtep.ip != remote.to_canonical() {
            return false;
        }
        match self.kind {
            EntryKind::Static => true,
            EntryKind::Learned if self.alive(ageing_ms, now_ms) => {
                // Store only when the value changes, so a busy MAC does not dirty the cache
                // line on every frame.
                if self.last_seen.load(Ordering::Relaxed) != now_ms {
                    self.last_seen.store(now_ms, Ordering::Relaxed);
                }
                true
            }
            EntryKind::Learned => false,
        }
    }

    /// [`Fdb::learn`] for a MAC that already has this entry, with `vtep` the (valid) VTEP the
    /// frame came from: updates the entry and says what learning did. A static entry is
    /// never changed.
    fn relearn(&mut self, vtep: Vtep, ageing_ms: u64, now_ms: u64) -> Learn {
        let alive = now_ms.saturating_sub(*self.last_seen.get_mut()) < ageing_ms;
        let outcome = match self.kind {
            EntryKind::Static if self.vtep.ip == vtep.ip => return Learn::StaticMatch,
            EntryKind::Static => return Learn::StaticConflict { pinned: self.vtep },
            EntryKind::Learned if !alive => Learn::Learned,
            EntryKind::Learned if self.vtep.ip == vtep.ip => Learn::Refreshed,
            EntryKind::Learned => Learn::Moved { from: self.vtep },
        };
        *self.last_seen.get_mut() = now_ms;
        self.vtep = vtep;
        outcome
    }

    /// The entry as [`Fdb::entries`] lists it.
    fn row(&self, vni: Vni, mac: Mac, now_ms: u64) -> FdbEntry {
        FdbEntry {
            vni,
            mac,
            vtep: self.vtep,
            kind: self.kind,
            age_ms: match self.kind {
                EntryKind::Static => None,
                EntryKind::Learned => {
                    Some(now_ms.saturating_sub(self.last_seen.load(Ordering::Relaxed)))
                }
            },
        }
    }
}

/// The VTEP a frame of `mac` from `remote` teaches, or `None` when it teaches nothing (a group
/// or all-zero MAC, an unusable address).
fn learnable(config: &FdbConfig, mac: Mac, remote: IpAddr) -> Option<Vtep> {
    let vtep = Vtep::new(remote.to_canonical(), config.learned_port);
    (is_valid_unicast(mac) && vtep.validate().is_ok()).then_some(vtep)
}

/// True when a learning outcome changes what lookups answer: an expired entry came back or a
/// MAC moved (the generation is bumped then).
fn changes_lookups(outcome: Learn) -> bool {
    matches!(outcome, Learn::Learned | Learn::Moved { .. })
}

/// The remote FDB of one VTEP: learned and static entries per VNI, and flood lists.
#[derive(Debug, Default)]
pub struct Fdb {
    config: FdbConfig,
    /// Keyed by foldhash (see [`Table`]).
    entries: Table,
    /// Learned entries per VNI (live or not yet swept), for the limit.
    learned: HashMap<Vni, usize>,
    flood: HashMap<Vni, Vec<Vtep>>,
    generation: u64,
}

impl Fdb {
    /// An empty table.
    pub fn new(config: FdbConfig) -> Fdb {
        Fdb {
            config,
            ..Fdb::default()
        }
    }

    /// The table's tunables.
    pub fn config(&self) -> &FdbConfig {
        &self.config
    }

    /// Bumped whenever an entry or flood list is added, changed or removed, so per-worker
    /// caches can tell they are stale. Ageing alone does not bump it: a cache that keeps
    /// learned destinations must apply the age itself, or rely on [`Fdb::sweep`] (which bumps).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn alive(&self, entry: &Entry, now_ms: u64) -> bool {
        entry.alive(self.config.ageing_ms, now_ms)
    }

    /// The VTEP behind `mac` in `vni`, if a static or live learned entry says so.
    pub fn lookup(&self, vni: Vni, mac: Mac, now_ms: u64) -> Option<Vtep> {
        self.entries
            .get(&(vni, mac))
            .filter(|entry| self.alive(entry, now_ms))
            .map(|entry| entry.vtep)
    }

    /// Where a frame for `dst` in `vni` goes: group and unknown MACs flood.
    pub fn destination(&self, vni: Vni, dst: Mac, now_ms: u64) -> Destination<'_> {
        if dst[0] & 0x01 == 0 {
            if let Some(vtep) = self.lookup(vni, dst, now_ms) {
                return Destination::Unicast(vtep);
            }
        }
        Destination::Flood(self.flood_list(vni))
    }

    /// The fast path of learning, under a shared reference: if `mac` is already known behind
    /// `remote` (a live learned entry, or a static one), resets its age and returns `true`.
    /// Otherwise returns `false` and changes nothing; then call [`Fdb::learn`].
    pub fn refresh(&self, vni: Vni, mac: Mac, remote: IpAddr, now_ms: u64) -> bool {
        self.entries
            .get(&(vni, mac))
            .is_some_and(|entry| entry.refresh(self.config.ageing_ms, remote, now_ms))
    }

    /// Learns that inner source `mac` of `vni` sits behind the VTEP at `remote` (the outer
    /// source address of the frame); see the module docs for the rules.
    pub fn learn(&mut self, vni: Vni, mac: Mac, remote: IpAddr, now_ms: u64) -> Learn {
        let Some(vtep) = learnable(&self.config, mac, remote) else {
            return Learn::InvalidSource;
        };
        let ageing_ms = self.config.ageing_ms;
        if let Some(entry) = self.entries.get_mut(&(vni, mac)) {
            let outcome = entry.relearn(vtep, ageing_ms, now_ms);
            if changes_lookups(outcome) {
                self.generation += 1;
            }
            return outcome;
        }
        let count = self.learned.entry(vni).or_insert(0);
        if *count >= self.config.max_learned_per_vni {
            return Learn::LimitReached;
        }
        *count += 1;
        self.entries
            .insert((vni, mac), Entry::learned(vtep, now_ms));
        self.generation += 1;
        Learn::Learned
    }

    /// Pins `mac` of `vni` to `vtep`, replacing any entry for it; returns the VTEP it pointed
    /// at before, if any.
    ///
    /// # Errors
    ///
    /// [`FdbError::NotUnicast`] for a group or all-zero MAC, [`FdbError::UnusableVtep`] for a
    /// VTEP frames cannot be sent to. The table is unchanged then.
    pub fn add_static(&mut self, vni: Vni, mac: Mac, vtep: Vtep) -> Result<Option<Vtep>, FdbError> {
        if !is_valid_unicast(mac) {
            return Err(FdbError::NotUnicast { mac });
        }
        vtep.validate()?;
        let vtep = Vtep::new(vtep.ip.to_canonical(), vtep.port);
        let previous = self.entries.insert((vni, mac), Entry::pinned(vtep));
        if let Some(Entry {
            kind: EntryKind::Learned,
            ..
        }) = previous
        {
            self.uncount_learned(vni);
        }
        self.generation += 1;
        Ok(previous.map(|entry| entry.vtep))
    }

    /// Removes the static entry for `mac` of `vni`; returns whether there was one. Learned
    /// entries are left alone.
    pub fn remove_static(&mut self, vni: Vni, mac: Mac) -> bool {
        let key = (vni, mac);
        match self.entries.get(&key) {
            Some(entry) if entry.kind == EntryKind::Static => {
                self.entries.remove(&key);
                self.generation += 1;
                true
            }
            _ => false,
        }
    }

    fn uncount_learned(&mut self, vni: Vni) {
        if let Some(count) = self.learned.get_mut(&vni) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.learned.remove(&vni);
            }
        }
    }

    /// Number of learned entries of `vni`, live or not yet swept (what the limit counts).
    pub fn learned_count(&self, vni: Vni) -> usize {
        self.learned.get(&vni).copied().unwrap_or(0)
    }

    /// Removes expired learned entries; returns how many.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let ageing_ms = self.config.ageing_ms;
        self.remove_learned_where(|_, entry| {
            now_ms.saturating_sub(entry.last_seen.load(Ordering::Relaxed)) >= ageing_ms
        })
    }

    /// Removes every learned entry pointing at the VTEP at `ip` (a peer or runner that went
    /// away); returns how many. Static entries and flood lists are left alone.
    pub fn forget_vtep(&mut self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.remove_learned_where(|_, entry| entry.vtep.ip == ip)
    }

    fn remove_learned_where(&mut self, condition: impl Fn(Vni, &Entry) -> bool) -> usize {
        let mut removed_per_vni: Vec<Vni> = Vec::new();
        self.entries.retain(|&(vni, _), entry| {
            let remove = entry.kind == EntryKind::Learned && condition(vni, entry);
            if remove {
                removed_per_vni.push(vni);
            }
            !remove
        });
        for &vni in &removed_per_vni {
            self.uncount_learned(vni);
        }
        if !removed_per_vni.is_empty() {
            self.generation += 1;
        }
        removed_per_vni.len()
    }

    /// Removes everything about `vni`: entries of both kinds and its flood list.
    pub fn remove_vni(&mut self, vni: Vni) {
        self.entries.retain(|&(entry_vni, _), _| entry_vni != vni);
        self.learned.remove(&vni);
        self.flood.remove(&vni);
        self.generation += 1;
    }

    /// The VTEPs that get a copy of `vni`'s broadcast, multicast and unknown-unicast frames.
    pub fn flood_list(&self, vni: Vni) -> &[Vtep] {
        self.flood.get(&vni).map_or(&[], Vec::as_slice)
    }

    /// Adds `vtep` to `vni`'s flood list; returns `false` if it was already there.
    ///
    /// # Errors
    ///
    /// [`FdbError::UnusableVtep`]; the list is unchanged then.
    pub fn add_flood(&mut self, vni: Vni, vtep: Vtep) -> Result<bool, FdbError> {
        vtep.validate()?;
        let vtep = Vtep::new(vtep.ip.to_canonical(), vtep.port);
        let list = self.flood.entry(vni).or_default();
        if list.contains(&vtep) {
            return Ok(false);
        }
        list.push(vtep);
        self.generation += 1;
        Ok(true)
    }

    /// Removes `vtep` from `vni`'s flood list; returns whether it was there.
    pub fn remove_flood(&mut self, vni: Vni, vtep: Vtep) -> bool {
        let Some(list) = self.flood.get_mut(&vni) else {
            return false;
        };
        let before = list.len();
        list.retain(|&existing| existing != vtep);
        let removed = list.len() != before;
        if list.is_empty() {
            self.flood.remove(&vni);
        }
        if removed {
            self.generation += 1;
        }
        removed
    }

    /// Replaces `vni`'s flood list (duplicates are dropped, order kept).
    ///
    /// # Errors
    ///
    /// [`FdbError::UnusableVtep`] for the first bad VTEP; the list is unchanged then.
    pub fn set_flood_list(
        &mut self,
        vni: Vni,
        vteps: impl IntoIterator<Item = Vtep>,
    ) -> Result<(), FdbError> {
        let mut list: Vec<Vtep> = Vec::new();
        for vtep in vteps {
            vtep.validate()?;
            let vtep = Vtep::new(vtep.ip.to_canonical(), vtep.port);
            if !list.contains(&vtep) {
                list.push(vtep);
            }
        }
        if list.is_empty() {
            self.flood.remove(&vni);
        } else {
            self.flood.insert(vni, list);
        }
        self.generation += 1;
        Ok(())
    }

    /// Every static and live learned entry, sorted by VNI then MAC (for the API and CLI).
    pub fn entries(&self, now_ms: u64) -> Vec<FdbEntry> {
        let mut list: Vec<FdbEntry> = self
            .entries
            .iter()
            .filter(|(_, entry)| self.alive(entry, now_ms))
            .map(|(&(vni, mac), entry)| entry.row(vni, mac, now_ms))
            .collect();
        list.sort_by_key(|entry| (entry.vni, entry.mac));
        list
    }
}

/// Number of shards of a [`SharedFdb`]; a power of two (as the switch's local MAC table).
pub const SHARDS: usize = 64;

/// The shard of `(vni, mac)`: Fibonacci hashing of the MAC and VNI (as the switch's local MAC
/// table), whose top bits mix every input bit.
#[inline]
fn shard_index(vni: Vni, mac: Mac) -> usize {
    let mut bytes = [0u8; 8];
    bytes[..6].copy_from_slice(&mac);
    let word = u64::from_le_bytes(bytes) ^ u64::from(vni.get()).rotate_left(48);
    let mixed = word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // SHARDS is 64, so the shift leaves 6 bits, which always fit a usize.
    usize::try_from(mixed >> (64 - SHARDS.trailing_zeros())).unwrap_or(0) % SHARDS
}

/// One shard of a [`SharedFdb`], on a cache line of its own so that workers reading two
/// shards never write the same lock line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard {
    /// Keyed by foldhash (see [`Table`]).
    table: RwLock<Table>,
}

/// The remote MAC table of one VTEP shared by the workers: learned and static entries per VNI
/// (no flood lists), sharded (see the module docs). Every method takes `&self`.
#[derive(Debug)]
pub struct SharedFdb {
    config: FdbConfig,
    shards: Box<[Shard]>,
    /// Learned entries per VNI (live or not yet swept), for the limit. Read-locked to find a
    /// VNI's counter; write-locked only the first time a VNI learns anything. Taken while a
    /// shard's lock is held, never the other way round.
    learned: RwLock<HashMap<Vni, Arc<AtomicUsize>>>,
    /// See [`SharedFdb::generation`].
    generation: AtomicU64,
}

impl Default for SharedFdb {
    fn default() -> SharedFdb {
        SharedFdb::new(FdbConfig::default())
    }
}

impl SharedFdb {
    /// An empty table.
    pub fn new(config: FdbConfig) -> SharedFdb {
        SharedFdb {
            config,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            learned: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The table's tunables.
    pub fn config(&self) -> &FdbConfig {
        &self.config
    }

    /// Bumped whenever an entry is added, changed or removed, as [`Fdb::generation`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    #[inline]
    fn shard(&self, vni: Vni, mac: Mac) -> &RwLock<Table> {
        &self.shards[shard_index(vni, mac)].table
    }

    /// The VTEP behind `mac` in `vni`, if a static or live learned entry says so (one shard's
    /// read lock).
    #[inline]
    pub fn lookup(&self, vni: Vni, mac: Mac, now_ms: u64) -> Option<Vtep> {
        let table = self.shard(vni, mac).read();
        table
            .get(&(vni, mac))
            .filter(|entry| entry.alive(self.config.ageing_ms, now_ms))
            .map(|entry| entry.vtep)
    }

    /// As [`Fdb::refresh`], under one shard's read lock: true when `mac` is known behind
    /// `remote` (its age is reset); otherwise nothing changes, and [`SharedFdb::learn`] is next.
    #[inline]
    pub fn refresh(&self, vni: Vni, mac: Mac, remote: IpAddr, now_ms: u64) -> bool {
        let table = self.shard(vni, mac).read();
        table
            .get(&(vni, mac))
            .is_some_and(|entry| entry.refresh(self.config.ageing_ms, remote, now_ms))
    }

    /// As [`Fdb::learn`], under one shard's write lock.
    pub fn learn(&self, vni: Vni, mac: Mac, remote: IpAddr, now_ms: u64) -> Learn {
        self.learn_within(vni, mac, remote, now_ms, self.config.max_learned_per_vni)
    }

    /// As [`SharedFdb::learn`], with `vni`'s limit of learned entries given by the caller
    /// (a switch whose segments each have their own limit) instead of
    /// [`FdbConfig::max_learned_per_vni`]. A limit below the entries already learned learns
    /// nothing new and forgets nothing.
    pub fn learn_within(
        &self,
        vni: Vni,
        mac: Mac,
        remote: IpAddr,
        now_ms: u64,
        limit: usize,
    ) -> Learn {
        let Some(vtep) = learnable(&self.config, mac, remote) else {
            return Learn::InvalidSource;
        };
        let mut table = self.shard(vni, mac).write();
        if let Some(entry) = table.get_mut(&(vni, mac)) {
            let outcome = entry.relearn(vtep, self.config.ageing_ms, now_ms);
            drop(table);
            if changes_lookups(outcome) {
                self.bump();
            }
            return outcome;
        }
        let counter = self.counter(vni);
        if counter.fetch_add(1, Ordering::AcqRel) >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Learn::LimitReached;
        }
        table.insert((vni, mac), Entry::learned(vtep, now_ms));
        drop(table);
        self.bump();
        Learn::Learned
    }

    /// `vni`'s learned-entry counter, created on first use.
    fn counter(&self, vni: Vni) -> Arc<AtomicUsize> {
        if let Some(counter) = self.learned.read().get(&vni) {
            return Arc::clone(counter);
        }
        Arc::clone(self.learned.write().entry(vni).or_default())
    }

    /// Takes `removed` learned entries of `vni` off its count.
    fn uncount_learned(&self, vni: Vni, removed: usize) {
        if removed == 0 {
            return;
        }
        if let Some(counter) = self.learned.read().get(&vni) {
            // Never below zero, as `Fdb` (the closure always returns `Some`).
            let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                Some(count.saturating_sub(removed))
            });
        }
    }

    /// As [`Fdb::add_static`].
    ///
    /// # Errors
    ///
    /// [`FdbError::NotUnicast`] for a group or all-zero MAC, [`FdbError::UnusableVtep`] for a
    /// VTEP frames cannot be sent to. The table is unchanged then.
    pub fn add_static(&self, vni: Vni, mac: Mac, vtep: Vtep) -> Result<Option<Vtep>, FdbError> {
        if !is_valid_unicast(mac) {
            return Err(FdbError::NotUnicast { mac });
        }
        vtep.validate()?;
        let vtep = Vtep::new(vtep.ip.to_canonical(), vtep.port);
        let mut table = self.shard(vni, mac).write();
        let previous = table.insert((vni, mac), Entry::pinned(vtep));
        if previous
            .as_ref()
            .is_some_and(|entry| entry.kind == EntryKind::Learned)
        {
            self.uncount_learned(vni, 1);
        }
        drop(table);
        self.bump();
        Ok(previous.map(|entry| entry.vtep))
    }

    /// As [`Fdb::remove_static`].
    pub fn remove_static(&self, vni: Vni, mac: Mac) -> bool {
        let key = (vni, mac);
        let mut table = self.shard(vni, mac).write();
        let pinned = table
            .get(&key)
            .is_some_and(|entry| entry.kind == EntryKind::Static);
        if !pinned {
            return false;
        }
        table.remove(&key);
        drop(table);
        self.bump();
        true
    }

    /// Number of learned entries of `vni`, live or not yet swept (what the limit counts).
    pub fn learned_count(&self, vni: Vni) -> usize {
        self.learned
            .read()
            .get(&vni)
            .map_or(0, |counter| counter.load(Ordering::Acquire))
    }

    /// Removes expired learned entries; returns how many. Only the shards holding some are
    /// write-locked.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let ageing_ms = self.config.ageing_ms;
        self.remove_learned_where(|_, entry| {
            now_ms.saturating_sub(entry.last_seen.load(Ordering::Relaxed)) >= ageing_ms
        })
    }

    /// As [`Fdb::forget_vtep`]: removes every learned entry pointing at the VTEP at `ip`;
    /// returns how many. Static entries are left alone.
    pub fn forget_vtep(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.remove_learned_where(|_, entry| entry.vtep.ip == ip)
    }

    /// Removes every entry of `vni`, of both kinds.
    pub fn remove_vni(&self, vni: Vni) {
        let mut removed_learned = 0;
        for shard in self.shards.iter() {
            shard.table.write().retain(|&(entry_vni, _), entry| {
                let keep = entry_vni != vni;
                if !keep && entry.kind == EntryKind::Learned {
                    removed_learned += 1;
                }
                keep
            });
        }
        self.uncount_learned(vni, removed_learned);
        self.bump();
    }

    /// Removes the learned entries `doomed` selects: a read-locked pass finds whether a shard
    /// has any, and only those shards are write-locked.
    fn remove_learned_where(&self, doomed: impl Fn(Vni, &Entry) -> bool) -> usize {
        let mut removed_per_vni: HashMap<Vni, usize> = HashMap::new();
        for shard in self.shards.iter() {
            if !shard
                .table
                .read()
                .iter()
                .any(|(&(vni, _), entry)| entry.kind == EntryKind::Learned && doomed(vni, entry))
            {
                continue;
            }
            shard.table.write().retain(|&(vni, _), entry| {
                let remove = entry.kind == EntryKind::Learned && doomed(vni, entry);
                if remove {
                    *removed_per_vni.entry(vni).or_default() += 1;
                }
                !remove
            });
        }
        let mut total = 0;
        for (vni, removed) in removed_per_vni {
            self.uncount_learned(vni, removed);
            total += removed;
        }
        if total > 0 {
            self.bump();
        }
        total
    }

    /// Every static and live learned entry, sorted by VNI then MAC (for the API and CLI;
    /// allocates).
    pub fn entries(&self, now_ms: u64) -> Vec<FdbEntry> {
        let mut list = Vec::new();
        for shard in self.shards.iter() {
            list.extend(
                shard
                    .table
                    .read()
                    .iter()
                    .filter(|(_, entry)| entry.alive(self.config.ageing_ms, now_ms))
                    .map(|(&(vni, mac), entry)| entry.row(vni, mac, now_ms)),
            );
        }
        list.sort_by_key(|entry| (entry.vni, entry.mac));
        list
    }

    /// Number of entries stored, static and learned (live or not yet swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.table.read().len())
            .sum()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::net::Ipv4Addr;

    /// A clock that moves only when told to.
    struct FakeClock(Cell<u64>);

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock(Cell::new(1_000))
        }
        fn now(&self) -> u64 {
            self.0.get()
        }
        fn advance(&self, ms: u64) {
            self.0.set(self.0.get() + ms);
        }
    }

    const VNI_A: Vni = match Vni::new(101) {
        Some(vni) => vni,
        None => Vni::MAX,
    };
    const VNI_B: Vni = match Vni::new(102) {
        Some(vni) => vni,
        None => Vni::MAX,
    };
    const MAC_1: Mac = [0x02, 0, 0, 0, 0, 0x01];
    const MAC_2: Mac = [0x02, 0, 0, 0, 0, 0x02];

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 168, 50, last))
    }

    fn vtep(last: u8) -> Vtep {
        Vtep::new(ip(last), 4789)
    }

    fn fdb() -> Fdb {
        Fdb::new(FdbConfig {
            ageing_ms: 10_000,
            max_learned_per_vni: 3,
            learned_port: 4789,
        })
    }

    #[test]
    fn learn_then_lookup_then_refresh() {
        let clock = FakeClock::new();
        let mut fdb = fdb();
        assert_eq!(fdb.lookup(VNI_A, MAC_1, clock.now()), None);
        assert!(
            !fdb.refresh(VNI_A, MAC_1, ip(2), clock.now()),
            "unknown MAC: learn needed"
        );
        assert_eq!(fdb.learn(VNI_A, MAC_1, ip(2), clock.now()), Learn::Learned);
        assert_eq!(fdb.lookup(VNI_A, MAC_1, clock.now()), Some(vtep(2)));
        assert_eq!(
            fdb.lookup(VNI_B, MAC_1, clock.now()),
            None,
            "VNIs are separate"
        );
        assert_eq!(
            fdb.learn(VNI_A, MAC_1, ip(2), clock.now()),
            Learn::Refreshed
        );
        clock.advance(9_000);
        assert!(
            fdb.refresh(VNI_A, MAC_1, ip(2), clock.now()),
            "known: refreshed in place"
        );
        clock.advance(9_000);
        assert_eq!(
            fdb.lookup(VNI_A, MAC_1, clock.now()),
            Some(vtep(2)),
            "refresh reset age"
        );
        assert!(
            !fdb.refresh(VNI_A, MAC_1, ip(3), clock.now()),
            "another VTEP: learn needed"
        );
    }

    #[test]
    fn learned_port_is_the_overlay_port_not_the_source_port() {
        let mut fdb = Fdb::new(FdbConfig {
            learned_port: 8472,
            ..FdbConfig::default()
        });
        fdb.learn(VNI_A, MAC_1, ip(2), 0);
        assert_eq!(fdb.lookup(VNI_A, MAC_1, 0), Some(Vtep::new(ip(2), 8472)));
    }

    #[test]
    fn ageing_boundary() {
        let clock = FakeClock::new();
        let mut fdb = fdb();
        fdb.learn(VNI_A, MAC_1, ip(2), clock.now());
        clock.advance(9_999);
        assert_eq!(
            fdb.lookup(VNI_A, MAC_1, clock.now()),
            Some(vtep(2)),
            "alive at age - 1"
        );
        clock.advance(1);
        assert_eq!(
            fdb.lookup(VNI_A, MAC_1, clock.now()),
            None,
            "gone at exactly the age"
        );
        assert!(
            !fdb.refresh(VNI_A, MAC_1, ip(2), clock.now()),
            "expired entries need learn"
        );
        assert!(fdb.entries(clock.now()).is_empty());
        assert_eq!(fdb.learned_count(VNI_A), 1, "not swept yet");
        assert_eq!(
            fdb.learn(VNI_A, MAC_1, ip(3), clock.now()),
            Learn::Learned,
            "not Moved"
        );
        assert_eq!(fdb.learned_count(VNI_A), 1);
        assert_eq!(fdb.lookup(VNI_A, MAC_1, clock.now()), Some(vtep(3)));
    }

    #[test]
    fn sweep_frees_expired_entries_only() {
        let clock = FakeClock::new();
        let mut fdb = fdb();
        fdb.learn(VNI_A, MAC_1, ip(2), clock.now());
        clock.advance(5_000);
        fdb.learn(VNI_A, MAC_2, ip(2), clock.now());
        fdb.add_static(VNI_A, [0x02, 0, 0, 0, 0, 0x09], vtep(9))
            .expect("valid static entry");
        clock.advance(5_000);
        let generation = fdb.generation();
        assert_eq!(fdb.sweep(clock.now()), 1);
        assert!(fdb.generation() > generation);
        assert_eq!(fdb.learned_count(VNI_A), 1);
        assert_eq!(fdb.lookup(VNI_A, MAC_2, clock.now()), Some(vtep(2)));
        clock.advance(1_000_000);
        assert_eq!(fdb.sweep(clock.now()), 1);
        assert_eq!(fdb.sweep(clock.now()), 0);
        assert_eq!(fdb.learned_count(VNI_A), 0);
        assert_eq!(
            fdb.lookup(VNI_A, [0x02, 0, 0, 0, 0, 0x09], clock.now()),
            Some(vtep(9)),
            "static entries never age"
        );
    }

    #[test]
    fn moved_mac() {
        let mut fdb = fdb();
        fdb.learn(VNI_A, MAC_1, ip(2), 0);
        let generation = fdb.generation();
        assert_eq!(
            fdb.learn(VNI_A, MAC_1, ip(3), 10),
            Learn::Moved { from: vtep(2) }
        );
        assert!(fdb.generation() > generation);
        assert_eq!(fdb.lookup(VNI_A, MAC_1, 10), Some(vtep(3)));
        assert_eq!(fdb.learned_count(VNI_A), 1);
    }

    #[test]
    fn limit_per_vni() {
        let clock = FakeClock::new();
        let mut fdb = fdb();
        for last in 1..=3 {
            let outcome = fdb.learn(VNI_A, [0x02, 0, 0, 0, 0, last], ip(2), clock.now());
            assert_eq!(outcome, Learn::Learned);
        }
        let fourth = [0x02, 0, 0, 0, 0, 4];
        assert_eq!(
            fdb.learn(VNI_A, fourth, ip(2), clock.now()),
            Learn::LimitReached
        );
        assert_eq!(fdb.lookup(VNI_A, fourth, clock.now()), None);
        assert_eq!(
            fdb.learn(VNI_B, fourth, ip(2), clock.now()),
            Learn::Learned,
            "other VNI"
        );
        // Known MACs still refresh and move at the limit.
        assert_eq!(
            fdb.learn(VNI_A, MAC_1, ip(3), clock.now()),
            Learn::Moved { from: vtep(2) }
        );
        // Static entries do not count, and replacing a learned one frees its slot.
        fdb.add_static(VNI_A, MAC_2, vtep(7)).expect("valid");
        assert_eq!(fdb.learned_count(VNI_A), 2);
        assert_eq!(fdb.learn(VNI_A, fourth, ip(2), clock.now()), Learn::Learned);
        // Expired entries hold their slots until swept.
        clock.advance(10_000);
        let fifth = [0x02, 0, 0, 0, 0, 5];
        assert_eq!(
            fdb.learn(VNI_A, fifth, ip(2), clock.now()),
            Learn::LimitReached
        );
        fdb.sweep(clock.now());
        assert_eq!(fdb.learn(VNI_A, fifth, ip(2), clock.now()), Learn::Learned);
    }

    #[test]
    fn learning_disabled() {
        let mut fdb = Fdb::new(FdbConfig {
            max_learned_per_vni: 0,
            ..FdbConfig::default()
        });
        assert_eq!(fdb.learn(VNI_A, MAC_1, ip(2), 0), Learn::LimitReached);
        assert!(fdb.entries(0).is_empty());
    }

    #[test]
    fn static_entries_are_not_overridden() {
        let clock = FakeClock::new();
        let mut fdb = fdb();
        assert_eq!(fdb.add_static(VNI_A, MAC_1, vtep(5)), Ok(None));
        let conflict = fdb.learn(VNI_A, MAC_1, ip(6), clock.now());
        assert_eq!(conflict, Learn::StaticConflict { pinned: vtep(5) });
        assert!(
            conflict.should_drop(),
            "Linux drops frames from a MAC pinned elsewhere"
        );
        assert_eq!(
            fdb.learn(VNI_A, MAC_1, ip(5), clock.now()),
            Learn::StaticMatch
        );
        assert!(!Learn::StaticMatch.should_drop());
        assert!(fdb.refresh(VNI_A, MAC_1, ip(5), clock.now()));
        assert!(!fdb.refresh(VNI_A, MAC_1, ip(6), clock.now()));
        clock.advance(1_000_000);
        assert_eq!(
            fdb.lookup(VNI_A, MAC_1, clock.now()),
            Some(vtep(5)),
            "never aged"
        );
        assert_eq!(fdb.learned_count(VNI_A), 0);
        assert!(!fdb.remove_static(VNI_B, MAC_1));
        assert!(fdb.remove_static(VNI_A, MAC_1));
        assert_eq!(fdb.lookup(VNI_A, MAC_1, clock.now()), None);
    }

    #[test]
    fn static_replaces_learned_and_remove_static_leaves_learned() {
        let mut fdb = fdb();
        fdb.learn(VNI_A, MAC_1, ip(2), 0);
        assert_eq!(fdb.add_static(VNI_A, MAC_1, vtep(5)), Ok(Some(vtep(2))));
        assert_eq!(fdb.learned_count(VNI_A), 0);
        fdb.learn(VNI_A, MAC_2, ip(2), 0);
        assert!(
            !fdb.remove_static(VNI_A, MAC_2),
            "learned entries are not static"
        );
        assert_eq!(fdb.lookup(VNI_A, MAC_2, 0), Some(vtep(2)));
    }

    #[test]
    fn invalid_sources_are_not_learned() {
        let mut fdb = fdb();
        for mac in [
            [0xff; 6],
            [0x01, 0x00, 0x5e, 0, 0, 1],
            [0x33, 0x33, 0, 0, 0, 1],
            [0; 6],
        ] {
            assert_eq!(
                fdb.learn(VNI_A, mac, ip(2), 0),
                Learn::InvalidSource,
                "{mac:?}"
            );
        }
        let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            fdb.learn(VNI_A, MAC_1, unspecified, 0),
            Learn::InvalidSource
        );
        assert!(fdb.entries(0).is_empty());
        assert_eq!(fdb.generation(), 0);
    }

    #[test]
    fn ipv4_mapped_sources_are_canonical() {
        let mut fdb = fdb();
        let mapped: IpAddr = "::ffff:192.168.50.2".parse().expect("address");
        fdb.learn(VNI_A, MAC_1, mapped, 0);
        assert_eq!(fdb.lookup(VNI_A, MAC_1, 0), Some(vtep(2)));
        assert!(fdb.refresh(VNI_A, MAC_1, ip(2), 0));
    }

    #[test]
    fn flood_list_and_destinations() {
        let clock = FakeClock::new();
        let mut fdb = fdb();
        assert_eq!(
            fdb.destination(VNI_A, [0xff; 6], clock.now()),
            Destination::Flood(&[]),
            "no flood list: nowhere"
        );
        assert_eq!(fdb.add_flood(VNI_A, vtep(2)), Ok(true));
        assert_eq!(fdb.add_flood(VNI_A, vtep(3)), Ok(true));
        assert_eq!(fdb.add_flood(VNI_A, vtep(2)), Ok(false), "no duplicates");
        assert_eq!(fdb.flood_list(VNI_A), &[vtep(2), vtep(3)]);
        assert!(fdb.flood_list(VNI_B).is_empty());

        let both = [vtep(2), vtep(3)];
        let broadcast = fdb.destination(VNI_A, [0xff; 6], clock.now());
        assert_eq!(broadcast, Destination::Flood(&both));
        let multicast = fdb.destination(VNI_A, [0x01, 0x00, 0x5e, 0, 0, 1], clock.now());
        assert_eq!(multicast, Destination::Flood(&both));
        let unknown = fdb.destination(VNI_A, MAC_1, clock.now());
        assert_eq!(unknown, Destination::Flood(&both));
        fdb.learn(VNI_A, MAC_1, ip(3), clock.now());
        assert_eq!(
            fdb.destination(VNI_A, MAC_1, clock.now()),
            Destination::Unicast(vtep(3))
        );
        clock.advance(10_000);
        assert_eq!(
            fdb.destination(VNI_A, MAC_1, clock.now()),
            Destination::Flood(&both),
            "expired: flood again"
        );

        assert!(fdb.remove_flood(VNI_A, vtep(2)));
        assert!(!fdb.remove_flood(VNI_A, vtep(2)));
        assert!(!fdb.remove_flood(VNI_B, vtep(2)));
        assert_eq!(fdb.flood_list(VNI_A), &[vtep(3)]);

        fdb.set_flood_list(VNI_B, [vtep(4), vtep(5), vtep(4)])
            .expect("valid");
        assert_eq!(fdb.flood_list(VNI_B), &[vtep(4), vtep(5)]);
        let bad = Vtep::new(IpAddr::V4(Ipv4Addr::new(239, 1, 1, 1)), 4789);
        assert!(fdb.set_flood_list(VNI_B, [vtep(6), bad]).is_err());
        assert_eq!(
            fdb.flood_list(VNI_B),
            &[vtep(4), vtep(5)],
            "unchanged on error"
        );
        fdb.set_flood_list(VNI_B, []).expect("empty is fine");
        assert!(fdb.flood_list(VNI_B).is_empty());
    }

    #[test]
    fn forget_vtep_and_remove_vni() {
        let mut fdb = fdb();
        fdb.learn(VNI_A, MAC_1, ip(2), 0);
        fdb.learn(VNI_B, MAC_1, ip(2), 0);
        fdb.learn(VNI_A, MAC_2, ip(3), 0);
        fdb.add_static(VNI_A, [0x02, 0, 0, 0, 0, 9], vtep(2))
            .expect("valid");
        assert_eq!(fdb.forget_vtep(ip(2)), 2);
        assert_eq!(fdb.learned_count(VNI_A), 1);
        assert_eq!(fdb.learned_count(VNI_B), 0);
        assert_eq!(
            fdb.lookup(VNI_A, [0x02, 0, 0, 0, 0, 9], 0),
            Some(vtep(2)),
            "static kept"
        );
        fdb.add_flood(VNI_A, vtep(2)).expect("valid");
        fdb.remove_vni(VNI_A);
        assert!(fdb.entries(0).is_empty());
        assert!(fdb.flood_list(VNI_A).is_empty());
        assert_eq!(fdb.learned_count(VNI_A), 0);
    }

    #[test]
    fn entries_listing() {
        let clock = FakeClock::new();
        let mut fdb = fdb();
        fdb.learn(VNI_B, MAC_1, ip(2), clock.now());
        fdb.add_static(VNI_A, MAC_2, vtep(3)).expect("valid");
        clock.advance(250);
        assert_eq!(
            fdb.entries(clock.now()),
            vec![
                FdbEntry {
                    vni: VNI_A,
                    mac: MAC_2,
                    vtep: vtep(3),
                    kind: EntryKind::Static,
                    age_ms: None
                },
                FdbEntry {
                    vni: VNI_B,
                    mac: MAC_1,
                    vtep: vtep(2),
                    kind: EntryKind::Learned,
                    age_ms: Some(250)
                },
            ]
        );
    }

    #[test]
    fn configuration_errors() {
        let mut fdb = fdb();
        let group = fdb.add_static(VNI_A, [0xff; 6], vtep(2));
        assert_eq!(group, Err(FdbError::NotUnicast { mac: [0xff; 6] }));
        assert_eq!(
            group.expect_err("refused").to_string(),
            "MAC ff:ff:ff:ff:ff:ff cannot have a static FDB entry: it is a group or all-zero \
             address; use the VNI's flood list for broadcast and multicast"
        );
        let unspecified = Vtep::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 4789);
        let error = fdb
            .add_static(VNI_A, MAC_1, unspecified)
            .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "VTEP 0.0.0.0:4789 is not usable: the address is unspecified"
        );
        let port_zero = Vtep::new(ip(2), 0);
        assert!(matches!(
            fdb.add_flood(VNI_A, port_zero),
            Err(FdbError::UnusableVtep { .. })
        ));
        let v6_multicast = Vtep::new("ff02::1".parse().expect("address"), 4789);
        assert!(fdb.add_flood(VNI_A, v6_multicast).is_err());
        assert!(fdb.entries(0).is_empty());
        assert!(fdb.flood_list(VNI_A).is_empty());
        assert_eq!(vtep(2).to_string(), "192.168.50.2:4789");
        let v6 = Vtep::new("fd00::2".parse().expect("address"), 4789);
        assert_eq!(v6.to_string(), "[fd00::2]:4789");
    }

    fn shared() -> SharedFdb {
        SharedFdb::new(FdbConfig {
            ageing_ms: 10_000,
            max_learned_per_vni: 3,
            learned_port: 4789,
        })
    }

    #[test]
    fn shared_learn_lookup_refresh_and_age() {
        let clock = FakeClock::new();
        let fdb = shared();
        assert_eq!(fdb.lookup(VNI_A, MAC_1, clock.now()), None);
        assert!(!fdb.refresh(VNI_A, MAC_1, ip(2), clock.now()));
        assert_eq!(fdb.learn(VNI_A, MAC_1, ip(2), clock.now()), Learn::Learned);
        assert_eq!(fdb.lookup(VNI_A, MAC_1, clock.now()), Some(vtep(2)));
        assert_eq!(
            fdb.lookup(VNI_B, MAC_1, clock.now()),
            None,
            "VNIs are separate"
        );
        clock.advance(9_000);
        assert!(fdb.refresh(VNI_A, MAC_1, ip(2), clock.now()));
        assert!(
            !fdb.refresh(VNI_A, MAC_1, ip(3), clock.now()),
            "another VTEP"
        );
        clock.advance(9_999);
        assert_eq!(
            fdb.lookup(VNI_A, MAC_1, clock.now()),
            Some(vtep(2)),
            "refresh reset age"
        );
        clock.advance(1);
        assert_eq!(
            fdb.lookup(VNI_A, MAC_1, clock.now()),
            None,
            "gone at the age"
        );
        assert_eq!(fdb.learned_count(VNI_A), 1, "not swept yet");
        let generation = fdb.generation();
        assert_eq!(fdb.sweep(clock.now()), 1);
        assert!(fdb.generation() > generation);
        assert_eq!(fdb.learned_count(VNI_A), 0);
        assert!(fdb.is_empty());
        assert_eq!(fdb.sweep(clock.now()), 0);
    }

    #[test]
    fn shared_limit_counts_across_shards() {
        // Four MACs in four different shards.
        let mut picked: Vec<Mac> = Vec::new();
        let mut shards: Vec<usize> = Vec::new();
        for n in 1..=255u8 {
            let mac = [0x02, 0, 0, 0, 1, n];
            let shard = shard_index(VNI_A, mac);
            if !shards.contains(&shard) {
                shards.push(shard);
                picked.push(mac);
            }
            if picked.len() == 4 {
                break;
            }
        }
        assert_eq!(picked.len(), 4);
        let fdb = shared();
        for &mac in &picked[..3] {
            assert_eq!(fdb.learn(VNI_A, mac, ip(2), 0), Learn::Learned);
        }
        assert_eq!(fdb.learn(VNI_A, picked[3], ip(2), 0), Learn::LimitReached);
        assert_eq!(fdb.lookup(VNI_A, picked[3], 0), None);
        assert_eq!(fdb.learned_count(VNI_A), 3);
        assert_eq!(
            fdb.learn(VNI_B, picked[3], ip(2), 0),
            Learn::Learned,
            "other VNI"
        );
        // Known MACs still move at the limit.
        assert_eq!(
            fdb.learn(VNI_A, picked[0], ip(3), 0),
            Learn::Moved { from: vtep(2) }
        );
        // A static entry replacing a learned one frees its slot.
        assert_eq!(fdb.add_static(VNI_A, picked[1], vtep(7)), Ok(Some(vtep(2))));
        assert_eq!(fdb.learned_count(VNI_A), 2);
        assert_eq!(fdb.learn(VNI_A, picked[3], ip(2), 0), Learn::Learned);
        // picked[2] and picked[3] of VNI_A, picked[3] of VNI_B.
        assert_eq!(fdb.forget_vtep(ip(2)), 3);
        assert_eq!(fdb.learned_count(VNI_A), 1);
        assert_eq!(fdb.learned_count(VNI_B), 0);
        assert_eq!(
            fdb.lookup(VNI_A, picked[1], 0),
            Some(vtep(7)),
            "static kept"
        );
        assert_eq!(fdb.len(), 2);
    }

    #[test]
    fn shared_static_entries_and_listing() {
        let fdb = shared();
        assert_eq!(fdb.add_static(VNI_A, MAC_1, vtep(5)), Ok(None));
        assert_eq!(
            fdb.learn(VNI_A, MAC_1, ip(6), 0),
            Learn::StaticConflict { pinned: vtep(5) }
        );
        assert_eq!(fdb.learn(VNI_A, MAC_1, ip(5), 0), Learn::StaticMatch);
        assert!(fdb.refresh(VNI_A, MAC_1, ip(5), 0));
        assert_eq!(
            fdb.lookup(VNI_A, MAC_1, 1_000_000),
            Some(vtep(5)),
            "never aged"
        );
        assert_eq!(fdb.sweep(1_000_000), 0);
        assert_eq!(
            fdb.add_static(VNI_A, [0xff; 6], vtep(5)),
            Err(FdbError::NotUnicast { mac: [0xff; 6] })
        );
        assert!(!fdb.remove_static(VNI_B, MAC_1));
        assert_eq!(fdb.learn(VNI_A, MAC_2, ip(2), 100), Learn::Learned);
        assert!(
            !fdb.remove_static(VNI_A, MAC_2),
            "learned entries are not static"
        );
        assert_eq!(
            fdb.entries(350),
            vec![
                FdbEntry {
                    vni: VNI_A,
                    mac: MAC_1,
                    vtep: vtep(5),
                    kind: EntryKind::Static,
                    age_ms: None
                },
                FdbEntry {
                    vni: VNI_A,
                    mac: MAC_2,
                    vtep: vtep(2),
                    kind: EntryKind::Learned,
                    age_ms: Some(250)
                },
            ]
        );
        assert!(fdb.remove_static(VNI_A, MAC_1));
        assert_eq!(fdb.lookup(VNI_A, MAC_1, 0), None);
        fdb.remove_vni(VNI_A);
        assert!(fdb.is_empty());
        assert_eq!(fdb.learned_count(VNI_A), 0);
    }

    #[test]
    fn shared_concurrent_learning_respects_the_limit() {
        let fdb = SharedFdb::new(FdbConfig {
            max_learned_per_vni: 500,
            ..FdbConfig::default()
        });
        std::thread::scope(|scope| {
            for t in 0..4u8 {
                let fdb = &fdb;
                scope.spawn(move || {
                    for n in 0..=255u8 {
                        fdb.learn(VNI_A, [0x02, 0, 0, 0, t, n], ip(2), 0);
                    }
                });
            }
        });
        assert_eq!(fdb.len(), 500);
        assert_eq!(fdb.learned_count(VNI_A), 500);
    }

    #[test]
    fn shared_limit_given_per_call_overrides_the_config() {
        let fdb = SharedFdb::new(FdbConfig {
            max_learned_per_vni: 2,
            ..FdbConfig::default()
        });
        for n in 0..10u8 {
            assert_eq!(
                fdb.learn_within(VNI_A, [0x02, 0, 0, 0, 0, n], ip(2), 0, 10),
                Learn::Learned
            );
        }
        assert_eq!(
            fdb.learn_within(VNI_A, [0x02, 0, 0, 0, 1, 0], ip(2), 0, 10),
            Learn::LimitReached
        );
        // A smaller limit learns nothing new and forgets nothing; the config's applies to
        // `learn`.
        assert_eq!(
            fdb.learn_within(VNI_A, [0x02, 0, 0, 0, 1, 1], ip(2), 0, 5),
            Learn::LimitReached
        );
        assert_eq!(
            fdb.learn(VNI_B, [0x02, 0, 0, 0, 2, 0], ip(2), 0),
            Learn::Learned
        );
        assert_eq!(
            fdb.learn(VNI_B, [0x02, 0, 0, 0, 2, 1], ip(2), 0),
            Learn::Learned
        );
        assert_eq!(
            fdb.learn(VNI_B, [0x02, 0, 0, 0, 2, 2], ip(2), 0),
            Learn::LimitReached
        );
        assert_eq!(fdb.learned_count(VNI_A), 10);
        assert_eq!(
            fdb.lookup(VNI_A, [0x02, 0, 0, 0, 0, 9], 1).map(|v| v.ip),
            Some(ip(2))
        );
    }

    #[test]
    fn shared_shards_spread() {
        let mut used = [false; SHARDS];
        for n in 0..1024u16 {
            let [high, low] = n.to_be_bytes();
            used[shard_index(VNI_A, [0x02, 0x42, 0, 0, high, low])] = true;
        }
        assert!(used.iter().filter(|&&u| u).count() > SHARDS / 2);
    }

    /// One operation of the equivalence property below.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Learn(bool, u8, u8),
        Refresh(bool, u8, u8),
        Static(bool, u8, u8),
        RemoveStatic(bool, u8),
        Sweep,
        Forget(u8),
        RemoveVni(bool),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<bool>(), 0u8..6, 1u8..4).prop_map(|(v, m, i)| Op::Learn(v, m, i)),
            2 => (any::<bool>(), 0u8..6, 1u8..4).prop_map(|(v, m, i)| Op::Refresh(v, m, i)),
            1 => (any::<bool>(), 0u8..6, 1u8..4).prop_map(|(v, m, i)| Op::Static(v, m, i)),
            1 => (any::<bool>(), 0u8..6).prop_map(|(v, m)| Op::RemoveStatic(v, m)),
            1 => Just(Op::Sweep),
            1 => (1u8..4).prop_map(Op::Forget),
            1 => any::<bool>().prop_map(Op::RemoveVni),
            2 => (0u64..6_000).prop_map(Op::Advance),
        ]
    }

    fn op_vni(a: bool) -> Vni {
        if a { VNI_A } else { VNI_B }
    }

    /// MAC 0 is the broadcast address (never learned nor pinned).
    fn op_mac(n: u8) -> Mac {
        if n == 0 {
            [0xff; 6]
        } else {
            [0x02, 0, 0, 0, 0, n]
        }
    }

    proptest! {
        #[test]
        fn shared_fdb_answers_as_fdb(ops in proptest::collection::vec(op(), 0..80)) {
            let config = FdbConfig {
                ageing_ms: 10_000,
                max_learned_per_vni: 3,
                learned_port: 4789,
            };
            let mut single = Fdb::new(config);
            let shared = SharedFdb::new(config);
            let mut now = 1_000u64;
            for op in ops {
                match op {
                    Op::Learn(v, m, i) => {
                        let (vni, mac, remote) = (op_vni(v), op_mac(m), ip(i));
                        prop_assert_eq!(
                            single.learn(vni, mac, remote, now),
                            shared.learn(vni, mac, remote, now)
                        );
                    }
                    Op::Refresh(v, m, i) => {
                        let (vni, mac, remote) = (op_vni(v), op_mac(m), ip(i));
                        prop_assert_eq!(
                            single.refresh(vni, mac, remote, now),
                            shared.refresh(vni, mac, remote, now)
                        );
                    }
                    Op::Static(v, m, i) => {
                        let (vni, mac) = (op_vni(v), op_mac(m));
                        prop_assert_eq!(
                            single.add_static(vni, mac, vtep(i)),
                            shared.add_static(vni, mac, vtep(i))
                        );
                    }
                    Op::RemoveStatic(v, m) => {
                        let (vni, mac) = (op_vni(v), op_mac(m));
                        prop_assert_eq!(single.remove_static(vni, mac), shared.remove_static(vni, mac));
                    }
                    Op::Sweep => {
                        prop_assert_eq!(single.sweep(now), shared.sweep(now));
                    }
                    Op::Forget(i) => {
                        prop_assert_eq!(single.forget_vtep(ip(i)), shared.forget_vtep(ip(i)));
                    }
                    Op::RemoveVni(v) => {
                        single.remove_vni(op_vni(v));
                        shared.remove_vni(op_vni(v));
                    }
                    Op::Advance(ms) => now += ms,
                }
                prop_assert_eq!(single.entries(now), shared.entries(now));
                prop_assert_eq!(single.generation(), shared.generation());
                for vni in [VNI_A, VNI_B] {
                    prop_assert_eq!(single.learned_count(vni), shared.learned_count(vni));
                    for n in 0..6 {
                        prop_assert_eq!(
                            single.lookup(vni, op_mac(n), now),
                            shared.lookup(vni, op_mac(n), now)
                        );
                    }
                }
            }
        }
    }
}
