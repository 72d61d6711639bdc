//! A bonded uplink as the workers see it: which members may receive, and which member each
//! frame leaves on. The bond's monitor (`port::bond`) decides (carrier, LACP, ARP probes) and
//! publishes its decisions here with relaxed atomic stores; workers read them once per frame
//! or batch, never lock.
//!
//! Transmit: a frame's flow (IPv4 addresses and TCP/UDP ports, Linux's `layer3+4`; the MACs
//! and EtherType otherwise) hashes into one of [`BUCKETS`] buckets, and each bucket names a
//! member (Open vSwitch's `BOND_BUCKETS`). When a member stops carrying traffic only its
//! buckets move, spread over the others; when one comes back it takes back only the buckets
//! that are its by the modulo rule. A flow therefore changes member only when its member
//! changes state, and never takes two members at once: it is never reordered. In
//! active-backup every bucket names the active member.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::wire::VNET_HDR_LEN;

/// Buckets of the transmit hash.
pub const BUCKETS: usize = 256;

/// At most this many members per bond (a bucket names its member in a byte).
pub const MAX_MEMBERS: usize = 8;

/// A bucket no member carries.
const NONE: u8 = u8::MAX;

/// How a bond spreads traffic over its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BondMode {
    /// One member carries everything; the others wait (failover).
    ActiveBackup,
    /// Every member that is up carries the flows that hash to it.
    BalanceXor,
    /// As `BalanceXor`, over the members LACP aggregated with the partner.
    Lacp,
}

impl BondMode {
    /// The name the Uplink's spec uses.
    pub fn as_str(self) -> &'static str {
        match self {
            BondMode::ActiveBackup => "active-backup",
            BondMode::BalanceXor => "balance-xor",
            BondMode::Lacp => "802.3ad",
        }
    }
}

/// One member's published state.
#[derive(Debug, Default)]
struct MemberFlags {
    /// Frames may leave on it (and, but for active-backup's backups, arrive on it).
    carries: AtomicBool,
    /// When a worker last read a frame from it (datapath clock, ms): the ARP monitor's
    /// evidence that the link works.
    last_rx_ms: AtomicU64,
}

/// The state of one bond that workers read and the monitor writes.
#[derive(Debug)]
pub struct Bond {
    mode: BondMode,
    members: Vec<MemberFlags>,
    /// The active member in active-backup ([`NONE`]: none).
    active: AtomicU8,
    buckets: [AtomicU8; BUCKETS],
}

impl Bond {
    /// A bond of `members` members (at most [`MAX_MEMBERS`]), none carrying yet.
    pub fn new(mode: BondMode, members: usize) -> Bond {
        Bond {
            mode,
            members: (0..members.min(MAX_MEMBERS))
                .map(|_| MemberFlags::default())
                .collect(),
            active: AtomicU8::new(NONE),
            buckets: std::array::from_fn(|_| AtomicU8::new(NONE)),
        }
    }

    /// The mode.
    pub fn mode(&self) -> BondMode {
        self.mode
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when the bond has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// True when `member` carries traffic now.
    #[inline]
    pub fn carries(&self, member: usize) -> bool {
        self.members
            .get(member)
            .is_some_and(|m| m.carries.load(Ordering::Relaxed))
    }

    /// The active member (active-backup), if any.
    pub fn active(&self) -> Option<usize> {
        let active = self.active.load(Ordering::Relaxed);
        (active != NONE).then_some(usize::from(active))
    }

    /// True when what arrives on `member` is taken: any member that carries traffic, but in
    /// active-backup only the active one (the partner may flood to every member; taking the
    /// copies from the backup would duplicate them).
    #[inline]
    pub fn receives(&self, member: usize) -> bool {
        match self.mode {
            BondMode::ActiveBackup => self.active() == Some(member),
            BondMode::BalanceXor | BondMode::Lacp => self.carries(member),
        }
    }

    /// Records that a worker read frames from `member` at `now_ms`.
    #[inline]
    pub fn note_rx(&self, member: usize, now_ms: u64) {
        if let Some(flags) = self.members.get(member) {
            // One store per batch; skip it when the value is current (no cache line bounce).
            if flags.last_rx_ms.load(Ordering::Relaxed) != now_ms {
                flags.last_rx_ms.store(now_ms, Ordering::Relaxed);
            }
        }
    }

    /// When a worker last read a frame from `member` (0: never).
    pub fn last_rx_ms(&self, member: usize) -> u64 {
        self.members
            .get(member)
            .map_or(0, |m| m.last_rx_ms.load(Ordering::Relaxed))
    }

    /// The member `frame` (virtio header + untagged Ethernet frame) leaves on, `None` when no
    /// member carries traffic.
    #[inline]
    pub fn member_for(&self, frame: &[u8]) -> Option<usize> {
        let bucket = usize::from(flow_hash(frame.get(VNET_HDR_LEN..).unwrap_or_default()));
        let member = self.buckets.get(bucket)?.load(Ordering::Relaxed);
        (member != NONE).then_some(usize::from(member))
    }

    /// The bond's transmit choice as of now, copied once (a destination's frames are then
    /// sent by it, whatever the monitor publishes meanwhile: a frame is never sent on two
    /// members, nor lost between their passes).
    #[inline]
    pub fn view(&self) -> BondView {
        let mut carries = 0u8;
        for (m, flags) in self.members.iter().enumerate() {
            if flags.carries.load(Ordering::Relaxed) {
                carries |= 1 << m;
            }
        }
        BondView {
            buckets: std::array::from_fn(|i| {
                self.buckets
                    .get(i)
                    .map_or(NONE, |b| b.load(Ordering::Relaxed))
            }),
            carries,
        }
    }

    /// Publishes which members carry traffic (`carrying[i]` for member `i`) and, for
    /// active-backup, which one is active; moves only the buckets whose member changed (see
    /// the module doc). Called by the monitor only.
    pub fn publish(&self, carrying: &[bool], active: Option<usize>) {
        for (flags, carries) in self.members.iter().zip(carrying) {
            flags.carries.store(*carries, Ordering::Relaxed);
        }
        let active = active.filter(|a| carrying.get(*a).copied().unwrap_or(false));
        self.active.store(
            active.and_then(|a| u8::try_from(a).ok()).unwrap_or(NONE),
            Ordering::Relaxed,
        );
        let up: Vec<u8> = (0..self.members.len())
            .filter(|m| carrying.get(*m).copied().unwrap_or(false))
            .filter_map(|m| u8::try_from(m).ok())
            .collect();
        for (index, bucket) in self.buckets.iter().enumerate() {
            let next = match self.mode {
                BondMode::ActiveBackup => active.and_then(|a| u8::try_from(a).ok()),
                BondMode::BalanceXor | BondMode::Lacp => home_member(
                    index,
                    self.members.len(),
                    &up,
                    bucket.load(Ordering::Relaxed),
                ),
            };
            bucket.store(next.unwrap_or(NONE), Ordering::Relaxed);
        }
    }

    /// How many buckets each member holds (for the status and tests).
    pub fn bucket_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.members.len()];
        for bucket in &self.buckets {
            if let Some(count) = counts.get_mut(usize::from(bucket.load(Ordering::Relaxed))) {
                *count += 1;
            }
        }
        counts
    }
}

/// A bond's transmit choice, copied at one moment ([`Bond::view`]).
#[derive(Debug, Clone)]
pub struct BondView {
    buckets: [u8; BUCKETS],
    /// Bit `m`: member `m` carries traffic.
    carries: u8,
}

impl BondView {
    /// True when member `member` carries traffic.
    #[inline]
    pub fn carries(&self, member: usize) -> bool {
        member < MAX_MEMBERS && self.carries & (1 << member) != 0
    }

    /// The member `frame` (virtio header + untagged Ethernet frame) leaves on, `None` when
    /// its bucket's member does not carry traffic.
    #[inline]
    pub fn member_for(&self, frame: &[u8]) -> Option<usize> {
        let bucket = usize::from(flow_hash(frame.get(VNET_HDR_LEN..).unwrap_or_default()));
        let member = usize::from(*self.buckets.get(bucket)?);
        self.carries(member).then_some(member)
    }
}

/// The member bucket `index` goes to when `up` (of `members`) carry traffic and it was
/// `current`'s: its own member by the modulo rule over all members when that one is up (so a
/// member that comes back takes back exactly its own buckets), else its current member when
/// that one is still up (flows stay put), else one picked by the modulo rule over those up.
fn home_member(index: usize, members: usize, up: &[u8], current: u8) -> Option<u8> {
    if up.is_empty() || members == 0 {
        return None;
    }
    let own = u8::try_from(index % members).ok()?;
    if up.contains(&own) {
        return Some(own);
    }
    if up.contains(&current) {
        return Some(current);
    }
    up.get(index % up.len()).copied()
}

/// The bucket of an Ethernet frame's flow: for IPv4, the addresses and (TCP, UDP, not a
/// fragment) the ports, folded as Linux's `layer3+4` hash does; for IPv6 the addresses and
/// next header; otherwise the MACs' last bytes and the EtherType (Linux's `layer2`).
#[inline]
pub fn flow_hash(ethernet: &[u8]) -> u8 {
    let byte = |i: usize| u32::from(ethernet.get(i).copied().unwrap_or(0));
    let word = |i: usize| {
        ethernet
            .get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_be_bytes)
    };
    let ethertype = (byte(12) << 8) | byte(13);
    let mut hash = match ethertype {
        0x0800 => {
            let ip = 14;
            let ihl = (byte(ip) & 0x0f) as usize * 4;
            let protocol = byte(ip + 9);
            let fragment = ((byte(ip + 6) << 8) | byte(ip + 7)) & 0x3fff != 0;
            let ports = if !fragment && (protocol == 6 || protocol == 17) {
                word(ip + ihl)
            } else {
                protocol
            };
            ports ^ word(ip + 12) ^ word(ip + 16)
        }
        0x86dd => {
            let ip = 14;
            (0..8).fold(byte(ip + 6), |h, i| h ^ word(ip + 8 + i * 4))
        }
        _ => byte(5) ^ byte(11) ^ ethertype,
    };
    hash ^= hash >> 16;
    hash ^= hash >> 8;
    (hash & 0xff) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&[0xff; 12]);
        frame.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&sport.to_be_bytes());
        frame.extend_from_slice(&dport.to_be_bytes());
        frame.extend_from_slice(&[0, 8, 0, 0]);
        frame
    }

    #[test]
    fn nothing_leaves_before_a_member_carries() {
        let bond = Bond::new(BondMode::BalanceXor, 2);
        assert_eq!(
            bond.member_for(&udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2)),
            None
        );
        assert!(!bond.receives(0));
    }

    #[test]
    fn flows_spread_and_only_a_dead_members_flows_move() {
        let bond = Bond::new(BondMode::BalanceXor, 2);
        bond.publish(&[true, true], None);
        assert_eq!(bond.bucket_counts(), vec![128, 128]);
        let flows: Vec<Vec<u8>> = (0..200)
            .map(|p| udp([10, 0, 0, 1], [10, 0, 0, 2], 1000 + p, 53))
            .collect();
        let before: Vec<usize> = flows.iter().map(|f| bond.member_for(f).unwrap()).collect();
        assert!(before.contains(&0) && before.contains(&1), "{before:?}");
        bond.publish(&[false, true], None);
        assert!(flows.iter().all(|f| bond.member_for(f) == Some(1)));
        bond.publish(&[true, true], None);
        let after: Vec<usize> = flows.iter().map(|f| bond.member_for(f).unwrap()).collect();
        assert_eq!(
            before, after,
            "members that come back take back their own flows"
        );
    }

    #[test]
    fn three_members_one_fails_the_others_keep_their_flows() {
        let bond = Bond::new(BondMode::Lacp, 3);
        bond.publish(&[true, true, true], None);
        let flows: Vec<Vec<u8>> = (0..300)
            .map(|p| udp([10, 0, 0, 1], [10, 0, 0, 2], 2000 + p, 80))
            .collect();
        let before: Vec<usize> = flows.iter().map(|f| bond.member_for(f).unwrap()).collect();
        bond.publish(&[true, false, true], None);
        for (flow, was) in flows.iter().zip(&before) {
            let now = bond.member_for(flow).unwrap();
            assert_ne!(now, 1);
            if *was != 1 {
                assert_eq!(now, *was, "a flow on a live member moved");
            }
        }
    }

    #[test]
    fn active_backup_uses_and_receives_on_the_active_only() {
        let bond = Bond::new(BondMode::ActiveBackup, 2);
        bond.publish(&[true, true], Some(0));
        assert_eq!(bond.bucket_counts(), vec![256, 0]);
        assert!(bond.receives(0) && !bond.receives(1));
        bond.publish(&[false, true], Some(1));
        assert_eq!(bond.bucket_counts(), vec![0, 256]);
        assert!(!bond.receives(0) && bond.receives(1));
        // An active member that does not carry is no active member.
        bond.publish(&[false, false], Some(1));
        assert_eq!(bond.active(), None);
        assert_eq!(
            bond.member_for(&udp([1, 1, 1, 1], [2, 2, 2, 2], 1, 1)),
            None
        );
    }

    #[test]
    fn a_view_keeps_its_choice_while_the_bond_changes() {
        let bond = Bond::new(BondMode::BalanceXor, 2);
        bond.publish(&[true, true], None);
        let flows: Vec<Vec<u8>> = (0..64)
            .map(|p| udp([10, 0, 0, 1], [10, 0, 0, 2], 3000 + p, 80))
            .collect();
        let view = bond.view();
        let chosen: Vec<Option<usize>> = flows.iter().map(|f| view.member_for(f)).collect();
        bond.publish(&[false, true], None);
        let again: Vec<Option<usize>> = flows.iter().map(|f| view.member_for(f)).collect();
        assert_eq!(chosen, again, "the view is a copy");
        assert!(chosen.contains(&Some(0)));
        let now = bond.view();
        assert!(flows.iter().all(|f| now.member_for(f) == Some(1)));
        assert!(!now.carries(0) && now.carries(1) && !now.carries(9));
    }

    #[test]
    fn fragments_hash_on_addresses_and_short_frames_do_not_panic() {
        let mut first = udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        first[VNET_HDR_LEN + 14 + 6] = 0x20; // MF
        let mut other = udp([10, 0, 0, 1], [10, 0, 0, 2], 9, 9);
        other[VNET_HDR_LEN + 14 + 6] = 0x20;
        assert_eq!(
            flow_hash(&first[VNET_HDR_LEN..]),
            flow_hash(&other[VNET_HDR_LEN..])
        );
        for len in 0..first.len() {
            let _ = flow_hash(&first[..len]);
        }
        let bond = Bond::new(BondMode::BalanceXor, 1);
        bond.publish(&[true], None);
        assert_eq!(bond.member_for(&[]), Some(0));
    }
}
