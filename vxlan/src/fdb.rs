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

use core::fmt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

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

#[derive(Debug)]
struct Entry {
    vtep: Vtep,
    kind: EntryKind,
    /// Milliseconds; meaningful for learned entries only.
    last_seen: AtomicU64,
}

/// The remote FDB of one VTEP: learned and static entries per VNI, and flood lists.
#[derive(Debug, Default)]
pub struct Fdb {
    config: FdbConfig,
    /// Keyed by foldhash rather than std's SipHash (looked up for every frame sent into or
    /// learned from the overlay), seeded per process and per map; foldhash is only
    /// "minimally DoS-resistant" (no claim against an attacker who recovers the seed).
    entries: HashMap<(Vni, Mac), Entry, foldhash::fast::RandomState>,
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
        match entry.kind {
            EntryKind::Static => true,
            EntryKind::Learned => {
                now_ms.saturating_sub(entry.last_seen.load(Ordering::Relaxed))
                    < self.config.ageing_ms
            }
        }
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
        let Some(entry) = self.entries.get(&(vni, mac)) else {
            return false;
        };
        if entry.vtep.ip != remote.to_canonical() {
            return false;
        }
        match entry.kind {
            EntryKind::Static => true,
            EntryKind::Learned if self.alive(entry, now_ms) => {
                // Store only when the value changes, so a busy MAC does not dirty the cache
                // line on every frame.
                if entry.last_seen.load(Ordering::Relaxed) != now_ms {
                    entry.last_seen.store(now_ms, Ordering::Relaxed);
                }
                true
            }
            EntryKind::Learned => false,
        }
    }

    /// Learns that inner source `mac` of `vni` sits behind the VTEP at `remote` (the outer
    /// source address of the frame); see the module docs for the rules.
    pub fn learn(&mut self, vni: Vni, mac: Mac, remote: IpAddr, now_ms: u64) -> Learn {
        let remote = remote.to_canonical();
        let vtep = Vtep::new(remote, self.config.learned_port);
        if !is_valid_unicast(mac) || vtep.validate().is_err() {
            return Learn::InvalidSource;
        }
        let ageing_ms = self.config.ageing_ms;
        if let Some(entry) = self.entries.get_mut(&(vni, mac)) {
            let last_seen = *entry.last_seen.get_mut();
            let alive = now_ms.saturating_sub(last_seen) < ageing_ms;
            let outcome = match entry.kind {
                EntryKind::Static if entry.vtep.ip == remote => return Learn::StaticMatch,
                EntryKind::Static => {
                    return Learn::StaticConflict { pinned: entry.vtep };
                }
                EntryKind::Learned if !alive => Learn::Learned,
                EntryKind::Learned if entry.vtep.ip == remote => Learn::Refreshed,
                EntryKind::Learned => Learn::Moved { from: entry.vtep },
            };
            *entry.last_seen.get_mut() = now_ms;
            entry.vtep = vtep;
            if outcome != Learn::Refreshed {
                // An expired entry came back or a MAC moved: lookups answer differently.
                self.generation += 1;
            }
            return outcome;
        }
        let count = self.learned.entry(vni).or_insert(0);
        if *count >= self.config.max_learned_per_vni {
            return Learn::LimitReached;
        }
        *count += 1;
        self.entries.insert(
            (vni, mac),
            Entry {
                vtep,
                kind: EntryKind::Learned,
                last_seen: AtomicU64::new(now_ms),
            },
        );
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
        let previous = self.entries.insert(
            (vni, mac),
            Entry {
                vtep,
                kind: EntryKind::Static,
                last_seen: AtomicU64::new(0),
            },
        );
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
            .map(|(&(vni, mac), entry)| FdbEntry {
                vni,
                mac,
                vtep: entry.vtep,
                kind: entry.kind,
                age_ms: match entry.kind {
                    EntryKind::Static => None,
                    EntryKind::Learned => {
                        Some(now_ms.saturating_sub(entry.last_seen.load(Ordering::Relaxed)))
                    }
                },
            })
            .collect();
        list.sort_by_key(|entry| (entry.vni, entry.mac));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
