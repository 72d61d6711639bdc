//! Maglev consistent hashing: a lookup table that maps a flow's hash to one of N backends.
//!
//! # What and why
//! A virtual IP's new flows must be spread over its backends so that
//! 1. the spread is even (or proportional to weights),
//! 2. every node (and every worker) picks the same backend for the same flow without talking
//!    to the others, so a flow whose packets arrive through a different node or after a
//!    restart keeps its backend, and
//! 3. adding or removing one backend moves as few other flows as possible.
//!
//! Maglev (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load Balancer",
//! NSDI 2016, section 3.4 "Consistent Hashing") gets all three from a table of M slots, M
//! prime. Each backend `i` has a permutation of the slots given by two hashes of its name:
//! `offset = h1(name) mod M`, `skip = h2(name) mod (M − 1) + 1`, and
//! `permutation[i][j] = (offset + j · skip) mod M` (a full cycle because M is prime and
//! `1 ≤ skip < M`). The table is filled round-robin (the paper's Pseudocode 1): each backend
//! in turn walks its permutation to the first empty slot and takes it, until every slot is
//! taken. A lookup is one array read: `entry[hash mod M]`. Because each backend walks its
//! *own* preference list, removing one backend mostly frees its slots to others and leaves
//! the rest in place; the paper measures a small collateral reshuffle that shrinks as M/N
//! grows, which is why M should be at least 100·N ([`suggested_size`]).
//!
//! # Our choices, and where they differ from the paper
//! - **Identities, not addresses.** A backend is named by stable bytes (vswitch uses the
//!   NetworkInterface's uid), hashed with SipHash-2-4 under two fixed keys for `h1` and
//!   `h2` (see `hash.rs`): the same table on every node, process and version. Cilium also
//!   hashes backend *names* for this reason (its backend ids are node-local). An optional
//!   `seed` (Cilium's `maglev.hashSeed`) changes every permutation; it must be the same on
//!   all nodes.
//! - **Order-independent.** Backends are sorted by identity before the fill, so the table
//!   (read as slot → identity) does not depend on the order of the input slice. Entries are
//!   still indices into *that* slice, so the caller can index its own array. Two backends
//!   with the same identity are an error: they would share a permutation.
//! - **Weights** (weight 0 = not in the table, e.g. draining or administratively off). The
//!   paper gives every backend one turn per round. We give backend `i` its `c`-th slot in
//!   round `ceil(c · w_max / w_i)`: after `k` rounds it holds `floor(k · w_i / w_max)`
//!   slots, so slots are proportional to weight and turns interleave finely. A backend of
//!   weight `w_max` has a turn every round, and with equal weights this *is* the paper's
//!   round-robin. This is the scheme of Envoy's weighted Maglev, which Cilium adopted and
//!   Katran's "modified Maglev" resembles. Linux IPVS `mh` instead gives `w_i / gcd`
//!   consecutive turns per round; that is also proportional but can hand the last, partial
//!   round to a few heavy backends (a bias of up to `max(w) / gcd` slots), which ours bounds
//!   by one slot per backend. Turns are scheduled with a binary heap, so any weights cost
//!   O(M log N), never a pass over idle backends. A backend whose weight is below
//!   `Σw / M` may end up with no slot at all.
//! - **Slot choice** in [`MaglevTable::lookup`] is `(hash · M) >> 64` (Lemire, "Fast Random
//!   Integer Generation in an Interval", 2019) instead of `hash mod M`: one multiply instead of a
//!   64-bit division (tens of cycles), and as uniform for a well-mixed hash such as
//!   [`crate::flow_hash`]. It uses the hash's high bits.
//! - **Entries are `u16`**: a table of M = 65537 slots is 128 KiB and stays in cache better
//!   than a `u32` one. That caps a table at [`MAX_BACKENDS`] = 65535 backends (one value is
//!   the empty marker while filling), Cilium's per-node backend limit too.
//!
//! # Disruption, measured
//! Removing one of N equal backends moves that backend's M/N slots (necessarily) plus a
//! *collateral* share moved between backends that stayed ([`MaglevTable::diff`]). Over
//! random backend names (`disruption_survey` in the tests, 2,000 to 50,000 sets per row),
//! the mean collateral was 0.52% of M for N = 10, 1.0% for N = 50, 1.3% for N = 100 and
//! 1.6% for N = 160 at M = 16381; 0.68% (N = 160) and 0.78% (N = 650) at M = 65537; 0.55%
//! for N = 1000 at M = 131071. Adding a backend moves 1/N of M plus the same collateral.
//! This matches the paper's "M ≥ 100·N keeps it around 1–2%".
//!
//! The tail is heavier than the mean: two backends whose `skip`s are equal (probability
//! 1/(M − 1) per pair) or nearly so walk their permutations in lockstep, and a change
//! cascades along them. 19 of 20,000 random 5-backend sets at M = 16381 exceeded 2.5%, the
//! worst reaching 9.2%; a larger M makes such pairs rarer. This is Maglev's, not ours:
//! Cilium, Katran and IPVS use the same `offset`/`skip` permutations.
//!
//! # Cost
//! Filling takes M turns; each turn walks the backend's permutation to an empty slot. With
//! random-looking permutations the expected total walk is about M·ln M (when k slots are
//! taken a walk needs about M/(M − k) steps), so a build is expected O(M log M) plus the
//! heap's O(M log N). A hard bound: a backend's cursor never goes back, and its permutation
//! covers all M slots, so the total walk is at most N·M steps. Measured
//! (`perf/benches/maglev.rs`, release build, one core of a 2-vCPU AMD EPYC VM): 0.33 ms for
//! 10 backends, 0.62 ms for 100 and 0.82 ms for 1000 at M = 16381; 2.7 ms for 1000 at
//! M = 65537. Per flow, [`crate::flow_hash`] plus a lookup took 1.8 ns for IPv4 and 3.2 ns
//! for IPv6 (256 distinct flows per iteration, table in cache).
//!
//! # Invariants
//! - A non-empty table has every slot filled with the index of a backend of non-zero weight
//!   (so [`MaglevTable::lookup`] never returns a weight-0 backend).
//! - [`MaglevTable::lookup`] neither allocates nor panics; it returns `None` only when no
//!   backend had weight.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fmt;
use std::hash::Hash;

use crate::hash::siphash24;

/// Cilium's default table size (`maglev.tableSize`): a prime good for about 160 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// The largest table size accepted: the largest prime below 2^24 (a 32 MiB table).
pub const MAX_TABLE_SIZE: u32 = 16_777_213;

/// The most backends one table can index (entries are `u16`; `u16::MAX` marks an empty slot
/// during the fill).
pub const MAX_BACKENDS: usize = 65_535;

/// The table sizes Cilium allows for `maglev.tableSize` (Linux IPVS `mh` uses the same list):
/// primes a little below powers of two. Any prime up to [`MAX_TABLE_SIZE`] is accepted; these
/// are the ones [`suggested_size`] picks from first.
pub const PRIMES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131_071,
];

/// The paper's rule of thumb: at least this many slots per backend keeps the collateral
/// reshuffle on a change around 1% or less (Cilium's docs say the same).
pub const SLOTS_PER_BACKEND: u32 = 100;

/// Sentinel for a slot not yet taken (only during the fill).
const EMPTY: u16 = u16::MAX;

/// SipHash-2-4 keys for the permutation hashes: the ASCII bytes of `"lb:maglev:offset"` and
/// `"lb:maglev:skip.."`, read little-endian. Changing them moves every flow of every
/// service on a mixed-version cluster: don't.
const OFFSET_KEY: (u64, u64) = (
    u64::from_le_bytes(*b"lb:magle"),
    u64::from_le_bytes(*b"v:offset"),
);
const SKIP_KEY: (u64, u64) = (
    u64::from_le_bytes(*b"lb:magle"),
    u64::from_le_bytes(*b"v:skip.."),
);

/// Whether `n` is prime (trial division by 6k ± 1; at most about 11,000 divisions for a
/// `u32`, fine for configuration time).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut divisor = 5u32;
    // `divisor <= n / divisor` rather than `divisor * divisor <= n`: no overflow.
    while divisor <= n / divisor {
        if n % divisor == 0 || n % (divisor + 2) == 0 {
            return false;
        }
        divisor += 6;
    }
    true
}

/// The table size for `backends` backends: the smallest prime of [`PRIMES`] that is at least
/// [`SLOTS_PER_BACKEND`] × `backends`, or beyond that list the smallest prime at least that
/// large, capped at [`MAX_TABLE_SIZE`]. For 0 or 1 backend it is 251.
///
/// This is a floor for good disruption behaviour, not a default: a caller that wants stable
/// sizes (changing M remaps every flow) can use `max(DEFAULT_TABLE_SIZE, suggested_size(n))`.
pub fn suggested_size(backends: usize) -> u32 {
    let wanted = u32::try_from(backends)
        .unwrap_or(u32::MAX)
        .saturating_mul(SLOTS_PER_BACKEND);
    if let Some(&prime) = PRIMES.iter().find(|&&p| p >= wanted) {
        return prime;
    }
    if wanted >= MAX_TABLE_SIZE {
        return MAX_TABLE_SIZE;
    }
    // Prime gaps below 2^24 are under 200, so this loop is short; it stops at MAX_TABLE_SIZE,
    // which is prime, in any case.
    let mut candidate = wanted;
    while !is_prime(candidate) {
        candidate += 1;
    }
    candidate
}

/// Why a number is not a usable table size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableSizeError {
    /// The size must be prime so that every `skip` generates a full permutation.
    #[error(
        "Maglev table size {size} is not prime; use a prime such as 16381 or 65521 (the \
         permutations only cover every slot when the size is prime)"
    )]
    NotPrime {
        /// The size asked for.
        size: u32,
    },
    /// The size is above [`MAX_TABLE_SIZE`].
    #[error("Maglev table size {size} is larger than the maximum {max}")]
    TooLarge {
        /// The size asked for.
        size: u32,
        /// [`MAX_TABLE_SIZE`].
        max: u32,
    },
}

/// A valid Maglev table size M: a prime no larger than [`MAX_TABLE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableSize(u32);

impl TableSize {
    /// [`DEFAULT_TABLE_SIZE`].
    pub const DEFAULT: TableSize = TableSize(DEFAULT_TABLE_SIZE);

    /// Checks `size`.
    ///
    /// # Errors
    /// [`TableSizeError::NotPrime`] (0 and 1 included) or [`TableSizeError::TooLarge`].
    pub fn new(size: u32) -> Result<TableSize, TableSizeError> {
        if size > MAX_TABLE_SIZE {
            Err(TableSizeError::TooLarge {
                size,
                max: MAX_TABLE_SIZE,
            })
        } else if !is_prime(size) {
            Err(TableSizeError::NotPrime { size })
        } else {
            Ok(TableSize(size))
        }
    }

    /// [`suggested_size`] for `backends` backends.
    pub fn suggested(backends: usize) -> TableSize {
        TableSize(suggested_size(backends))
    }

    /// The number of slots, M.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl Default for TableSize {
    fn default() -> TableSize {
        TableSize::DEFAULT
    }
}

impl TryFrom<u32> for TableSize {
    type Error = TableSizeError;

    fn try_from(size: u32) -> Result<TableSize, TableSizeError> {
        TableSize::new(size)
    }
}

impl fmt::Display for TableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a table could not be built from a list of backends.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// More backends than a `u16` entry can index.
    #[error("{count} backends given; a Maglev table indexes at most {max}")]
    TooManyBackends {
        /// Backends given (weight 0 included).
        count: usize,
        /// [`MAX_BACKENDS`].
        max: usize,
    },
    /// Two backends have the same identity.
    #[error(
        "backends {first} and {second} have the same identity {key:?}; each backend needs its \
         own (vswitch uses the NetworkInterface's uid)"
    )]
    DuplicateKey {
        /// The identity, lossily decoded as UTF-8.
        key: String,
        /// The index of one of them in the input.
        first: usize,
        /// The index of the other.
        second: usize,
    },
    /// Fewer slots than backends with weight: some would get no slot.
    #[error(
        "a Maglev table of {size} slots cannot hold {backends} weighted backends; use a prime of \
         at least {suggested} (100 slots per backend)"
    )]
    TableTooSmall {
        /// The table size.
        size: u32,
        /// Backends with a non-zero weight.
        backends: usize,
        /// [`suggested_size`] for them.
        suggested: u32,
    },
}

/// A filled Maglev lookup table: slot → index of a backend in the slice it was built from.
///
/// Immutable once built; share it between workers (it is `Send + Sync`).
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    size: TableSize,
    /// M entries, or none when no backend has weight.
    entries: Box<[u16]>,
    /// Slots held, per input index.
    shares: Box<[u32]>,
}

impl fmt::Debug for MaglevTable {
    // The entries would print thousands of numbers: show the shape and the shares.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("size", &self.size.get())
            .field("empty", &self.entries.is_empty())
            .field("shares", &self.shares)
            .finish()
    }
}

/// One backend's fill state.
struct Filler {
    /// Its index in the caller's slice.
    index: u16,
    weight: u64,
    /// The next slot of its permutation to try.
    cursor: u32,
    skip: u32,
    /// Slots taken so far.
    taken: u32,
}

impl Filler {
    /// The round in which this backend takes its next slot: the least `k` with
    /// `floor(k · weight / max_weight) ≥ taken + 1`, i.e. `ceil((taken + 1) · max / weight)`.
    /// At most (M + 1) · 2^32 < 2^57: no overflow.
    fn next_round(&self, max_weight: u64) -> u64 {
        (u64::from(self.taken) + 1)
            .saturating_mul(max_weight)
            .div_ceil(self.weight)
    }
}

impl MaglevTable {
    /// Builds the table for `backends`, each an identity and a weight, with the fixed
    /// permutation keys (seed 0). See [`MaglevTable::build_with_seed`].
    ///
    /// # Errors
    /// As [`MaglevTable::build_with_seed`].
    pub fn build<K: AsRef<[u8]>>(
        backends: &[(K, u32)],
        size: TableSize,
    ) -> Result<MaglevTable, MaglevError> {
        MaglevTable::build_with_seed(backends, size, 0)
    }

    /// Builds the table for `backends`, each an identity and a weight; `seed` perturbs every
    /// permutation (Cilium's `maglev.hashSeed`; the same on every node, or nodes disagree).
    ///
    /// Backends of weight 0 get no slot; if none has weight the table is empty and every
    /// lookup misses. Entries are indices into `backends`; the slot → identity mapping does
    /// not depend on the order of `backends`.
    ///
    /// # Errors
    /// - [`MaglevError::TooManyBackends`]: more than [`MAX_BACKENDS`] entries;
    /// - [`MaglevError::DuplicateKey`]: two entries with the same identity (weight 0 ones
    ///   included: they would collide as soon as they get weight);
    /// - [`MaglevError::TableTooSmall`]: more weighted backends than slots.
    pub fn build_with_seed<K: AsRef<[u8]>>(
        backends: &[(K, u32)],
        size: TableSize,
        seed: u64,
    ) -> Result<MaglevTable, MaglevError> {
        if backends.len() > MAX_BACKENDS {
            return Err(MaglevError::TooManyBackends {
                count: backends.len(),
                max: MAX_BACKENDS,
            });
        }
        // Identity order: the fill's round-robin order, hence order-independence.
        let mut order: Vec<u16> = (0..backends.len())
            .filter_map(|i| u16::try_from(i).ok())
            .collect();
        let key = |i: u16| backends[usize::from(i)].0.as_ref();
        order.sort_unstable_by(|&a, &b| key(a).cmp(key(b)));
        if let Some(pair) = order.windows(2).find(|pair| key(pair[0]) == key(pair[1])) {
            let (a, b) = (usize::from(pair[0]), usize::from(pair[1]));
            return Err(MaglevError::DuplicateKey {
                key: String::from_utf8_lossy(key(pair[0])).into_owned(),
                first: a.min(b),
                second: a.max(b),
            });
        }

        let m = size.get();
        let mut shares = vec![0u32; backends.len()].into_boxed_slice();
        let mut fillers: Vec<Filler> = order
            .iter()
            .filter(|&&i| backends[usize::from(i)].1 > 0)
            .map(|&index| {
                let id = key(index);
                // TableSize guarantees m ≥ 2, so m − 1 ≥ 1.
                let offset = siphash24(OFFSET_KEY.0 ^ seed, OFFSET_KEY.1, id) % u64::from(m);
                let skip = siphash24(SKIP_KEY.0 ^ seed, SKIP_KEY.1, id) % u64::from(m - 1) + 1;
                Filler {
                    index,
                    weight: u64::from(backends[usize::from(index)].1),
                    // Both are below m, a u32.
                    cursor: u32::try_from(offset).unwrap_or(0),
                    skip: u32::try_from(skip).unwrap_or(1),
                    taken: 0,
                }
            })
            .collect();
        if fillers.is_empty() {
            return Ok(MaglevTable {
                size,
                entries: Box::default(),
                shares,
            });
        }
        if fillers.len() > m as usize {
            return Err(MaglevError::TableTooSmall {
                size: m,
                backends: fillers.len(),
                suggested: suggested_size(fillers.len()),
            });
        }

        let max_weight = fillers.iter().map(|f| f.weight).max().unwrap_or(1);
        // (round, rank): the earliest round first, then identity order within a round.
        let mut turns: BinaryHeap<Reverse<(u64, u32)>> = fillers
            .iter()
            .zip(0u32..)
            .map(|(filler, rank)| Reverse((filler.next_round(max_weight), rank)))
            .collect();
        let mut entries = vec![EMPTY; m as usize];
        let mut filled = 0u32;
        while filled < m {
            let Some(Reverse((_, rank))) = turns.pop() else {
                break; // Unreachable: every pop pushes back.
            };
            let Some(filler) = fillers.get_mut(rank as usize) else {
                break; // Unreachable: ranks index `fillers`.
            };
            // Walk the permutation to the first empty slot. There is one among the slots this
            // backend has not visited yet (those it visited are taken for good), so the walk
            // ends within m steps; the bound only guards the impossible.
            for _ in 0..m {
                let slot = filler.cursor as usize;
                filler.cursor += filler.skip;
                if filler.cursor >= m {
                    filler.cursor -= m;
                }
                if entries[slot] == EMPTY {
                    entries[slot] = filler.index;
                    filler.taken += 1;
                    filled += 1;
                    break;
                }
            }
            turns.push(Reverse((filler.next_round(max_weight), rank)));
        }
        for filler in &fillers {
            shares[usize::from(filler.index)] = filler.taken;
        }
        Ok(MaglevTable {
            size,
            entries: entries.into_boxed_slice(),
            shares,
        })
    }

    /// A table with no backend: every lookup misses.
    pub fn empty(size: TableSize) -> MaglevTable {
        MaglevTable {
            size,
            entries: Box::default(),
            shares: Box::default(),
        }
    }

    /// The backend (an index into the slice the table was built from) for a flow hash, or
    /// `None` when no backend has weight. No allocation, no panic.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        self.entries
            .get(self.slot_of(hash)?)
            .map(|&entry| usize::from(entry))
    }

    /// The slot (`0..M`) a flow hash falls in: what [`lookup`](MaglevTable::lookup) reads.
    #[inline]
    pub fn slot_of(&self, hash: u64) -> Option<usize> {
        // (hash · M) >> 64 < M: a slot. An empty table has no entries and `get` misses.
        let slot = (u128::from(hash) * u128::from(self.size.get())) >> 64;
        usize::try_from(slot).ok()
    }

    /// The table size M.
    pub fn size(&self) -> TableSize {
        self.size
    }

    /// True when no backend had weight (every lookup misses).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many backends the table was built from (weight 0 included).
    pub fn backends(&self) -> usize {
        self.shares.len()
    }

    /// Slots held by backend `index` (0 for weight 0 or an index out of range). The shares
    /// of a non-empty table sum to M; `share / M` is the fraction of new flows it gets.
    pub fn share(&self, index: usize) -> u32 {
        self.shares.get(index).copied().unwrap_or(0)
    }

    /// The backend in slot `slot`, if the table is not empty and `slot < M`.
    pub fn slot(&self, slot: usize) -> Option<usize> {
        self.entries.get(slot).map(|&entry| usize::from(entry))
    }

    /// Every slot's backend in slot order (nothing when the table is empty).
    pub fn slots(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.entries.iter().map(|&entry| usize::from(entry))
    }

    /// Compares this table with a `newer` one slot by slot, through each table's own
    /// index → identity mapping (`key` for this one, `newer_key` for the newer one), so that
    /// tables built from different slices compare by backend, not by index.
    ///
    /// A changed slot is *necessary* when its old backend is no longer in the newer table or
    /// its new backend was not in this one; otherwise it is *collateral*: a flow moved
    /// between two backends that both stayed. Maglev promises few collateral moves.
    ///
    /// Tables of different sizes share no slot meaning: every slot counts as changed, and
    /// none as collateral. An empty table's slots count as owned by nobody.
    pub fn diff<T, F, G>(&self, key: F, newer: &MaglevTable, newer_key: G) -> TableDiff
    where
        T: Eq + Hash,
        F: Fn(usize) -> T,
        G: Fn(usize) -> T,
    {
        let slots = self.size.get().max(newer.size.get());
        if self.size != newer.size {
            return TableDiff {
                slots,
                changed: slots,
                collateral: 0,
            };
        }
        let owners = |table: &MaglevTable, key: &dyn Fn(usize) -> T| -> HashSet<T> {
            (0..table.backends())
                .filter(|&i| table.share(i) > 0)
                .map(key)
                .collect()
        };
        let old_owners = owners(self, &key);
        let new_owners = owners(newer, &newer_key);
        let (mut changed, mut collateral) = (0u32, 0u32);
        for slot in 0..slots as usize {
            let old = self.slot(slot).map(&key);
            let new = newer.slot(slot).map(&newer_key);
            if old != new {
                changed += 1;
                let stayed = |owner: &Option<T>, set: &HashSet<T>| {
                    owner.as_ref().is_some_and(|owner| set.contains(owner))
                };
                if stayed(&old, &new_owners) && stayed(&new, &old_owners) {
                    collateral += 1;
                }
            }
        }
        TableDiff {
            slots,
            changed,
            collateral,
        }
    }
}

/// How two tables differ ([`MaglevTable::diff`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableDiff {
    /// Slots compared (M).
    pub slots: u32,
    /// Slots whose backend changed.
    pub changed: u32,
    /// Changed slots that moved between two backends present in both tables.
    pub collateral: u32,
}

impl TableDiff {
    /// `changed / slots` (0 for no slots).
    pub fn changed_fraction(&self) -> f64 {
        fraction(self.changed, self.slots)
    }

    /// `collateral / slots` (0 for no slots).
    pub fn collateral_fraction(&self) -> f64 {
        fraction(self.collateral, self.slots)
    }
}

fn fraction(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn named(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("backend-{i}"), 1)).collect()
    }

    fn size(m: u32) -> TableSize {
        TableSize::new(m).expect("a prime")
    }

    /// Slot → identity, for comparing tables built from different slices.
    fn by_identity(table: &MaglevTable, backends: &[(String, u32)]) -> Vec<String> {
        table.slots().map(|i| backends[i].0.clone()).collect()
    }

    #[test]
    fn primes() {
        let naive = |n: u32| n >= 2 && (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0);
        for n in 0..5000 {
            assert_eq!(is_prime(n), naive(n), "{n}");
        }
        for p in PRIMES
            .iter()
            .chain(&[65_537, MAX_TABLE_SIZE, 4_294_967_291])
        {
            assert!(is_prime(*p), "{p}");
        }
        assert!(!is_prime(u32::MAX)); // 3 · 5 · 17 · 257 · 65537
        assert!(!is_prime(65_536));
        assert!(!is_prime(4_294_967_071)); // 65521 · 65551: a divisor near the loop's end
        assert!(is_prime(4_294_967_279));
    }

    #[test]
    fn table_size_checks() {
        assert_eq!(TableSize::new(16_381), Ok(TableSize::DEFAULT));
        assert_eq!(TableSize::default().get(), 16_381);
        assert_eq!(TableSize::new(7).map(TableSize::get), Ok(7));
        assert_eq!(
            TableSize::new(16_384),
            Err(TableSizeError::NotPrime { size: 16_384 })
        );
        assert_eq!(TableSize::new(0), Err(TableSizeError::NotPrime { size: 0 }));
        assert_eq!(TableSize::new(1), Err(TableSizeError::NotPrime { size: 1 }));
        assert_eq!(
            TableSize::try_from(4_294_967_291),
            Err(TableSizeError::TooLarge {
                size: 4_294_967_291,
                max: MAX_TABLE_SIZE
            })
        );
        let message = TableSize::new(100).unwrap_err().to_string();
        assert!(message.contains("100 is not prime"), "{message}");
    }

    #[test]
    fn suggested_sizes() {
        assert_eq!(suggested_size(0), 251);
        assert_eq!(suggested_size(1), 251);
        assert_eq!(suggested_size(3), 509);
        assert_eq!(suggested_size(160), 16_381);
        assert_eq!(suggested_size(164), 32_749);
        assert_eq!(suggested_size(650), 65_521);
        assert_eq!(suggested_size(1000), 131_071);
        assert_eq!(suggested_size(2000), 200_003);
        assert_eq!(suggested_size(usize::MAX), MAX_TABLE_SIZE);
        for n in [0, 1, 5, 100, 1310, 1311, 5000, 65_535, 167_772, 167_773] {
            let m = suggested_size(n);
            assert!(is_prime(m) && m <= MAX_TABLE_SIZE, "{n} -> {m}");
            let wanted = u32::try_from(n).unwrap().saturating_mul(100);
            assert!(m >= wanted.min(MAX_TABLE_SIZE), "{n} -> {m}");
            assert_eq!(TableSize::suggested(n).get(), m);
        }
    }

    #[test]
    fn the_papers_example_shape() {
        // Section 3.4's example: three backends, M = 7. Our hashes differ from the paper's
        // illustration, but the shape holds: every slot taken, shares 3/2/2.
        let backends = named(3);
        let table = MaglevTable::build(&backends, size(7)).unwrap();
        assert_eq!(table.slots().len(), 7);
        let mut shares: Vec<u32> = (0..3).map(|i| table.share(i)).collect();
        shares.sort_unstable();
        assert_eq!(shares, [2, 2, 3]);
    }

    #[test]
    fn no_weight_means_an_empty_table() {
        let table = MaglevTable::build::<&str>(&[], TableSize::DEFAULT).unwrap();
        assert!(table.is_empty());
        assert_eq!(table.lookup(0), None);
        assert_eq!(table.lookup(u64::MAX), None);
        let drained = [("a", 0), ("b", 0)];
        let table = MaglevTable::build(&drained, TableSize::DEFAULT).unwrap();
        assert!(table.is_empty());
        assert_eq!(table.backends(), 2);
        assert_eq!(table.share(0), 0);
        assert_eq!(table.lookup(12345), None);
        assert_eq!(table.slot(0), None);
        assert_eq!(table.slots().len(), 0);
        let empty = MaglevTable::empty(TableSize::DEFAULT);
        assert_eq!(empty.lookup(1), None);
    }

    #[test]
    fn one_backend_takes_every_slot() {
        let table = MaglevTable::build(&[("only", 5)], size(251)).unwrap();
        assert_eq!(table.share(0), 251);
        assert!(table.slots().all(|i| i == 0));
        assert_eq!(table.lookup(0), Some(0));
        assert_eq!(table.lookup(u64::MAX), Some(0));
    }

    #[test]
    fn weight_zero_backends_never_get_slots() {
        let backends = [("a", 1), ("b", 0), ("c", 1)];
        let table = MaglevTable::build(&backends, size(1021)).unwrap();
        assert_eq!(table.share(1), 0);
        assert!(table.slots().all(|i| i != 1));
        assert_eq!(table.share(0) + table.share(2), 1021);
    }

    #[test]
    fn lookup_covers_the_whole_hash_range() {
        let backends = named(3);
        let table = MaglevTable::build(&backends, size(7)).unwrap();
        // (hash · 7) >> 64: 0 → slot 0, u64::MAX → slot 6.
        assert_eq!(table.lookup(0), table.slot(0));
        assert_eq!(table.lookup(u64::MAX), table.slot(6));
        for slot in 0..7u64 {
            // The first hash of each slot's range.
            let hash = u64::try_from((u128::from(slot) << 64).div_ceil(7)).unwrap();
            assert_eq!(
                table.lookup(hash),
                table.slot(usize::try_from(slot).unwrap())
            );
        }
    }

    #[test]
    fn errors() {
        let dup = [("a", 1), ("b", 1), ("a", 0)];
        let error = MaglevTable::build(&dup, TableSize::DEFAULT).unwrap_err();
        assert_eq!(
            error,
            MaglevError::DuplicateKey {
                key: "a".into(),
                first: 0,
                second: 2
            }
        );
        assert!(error.to_string().contains("same identity \"a\""), "{error}");

        let many = named(8);
        let error = MaglevTable::build(&many, size(7)).unwrap_err();
        assert_eq!(
            error,
            MaglevError::TableTooSmall {
                size: 7,
                backends: 8,
                suggested: 1021
            }
        );
        // Weight-0 backends don't count toward the slot limit.
        let mut some_drained = named(8);
        some_drained[0].1 = 0;
        assert!(MaglevTable::build(&some_drained, size(7)).is_ok());

        let too_many: Vec<(Vec<u8>, u32)> = (0..=MAX_BACKENDS)
            .map(|i| (u32::try_from(i).unwrap().to_be_bytes().to_vec(), 1))
            .collect();
        assert_eq!(
            MaglevTable::build(&too_many, TableSize::DEFAULT).unwrap_err(),
            MaglevError::TooManyBackends {
                count: 65_536,
                max: 65_535
            }
        );
    }

    #[test]
    fn max_backends_fit() {
        // 65535 backends in a table of 131071: indices up to 65534, none confused with the
        // empty marker.
        let backends: Vec<([u8; 4], u32)> = (0..MAX_BACKENDS)
            .map(|i| (u32::try_from(i).unwrap().to_be_bytes(), 1))
            .collect();
        let table = MaglevTable::build(&backends, size(131_071)).unwrap();
        assert!(table.slots().all(|i| i < MAX_BACKENDS));
        assert!((0..MAX_BACKENDS).all(|i| (2..=3).contains(&table.share(i))));
    }

    #[test]
    fn pinned_output() {
        // These slots are part of the cross-node, cross-version contract: a change here
        // moves flows on a cluster running mixed versions. Change only on purpose. The
        // values were checked against an independent Python transcription of the paper's
        // Pseudocode 1 with the same SipHash-2-4 keys.
        let backends = named(3);
        let table = MaglevTable::build(&backends, size(13)).unwrap();
        let slots: Vec<usize> = table.slots().collect();
        assert_eq!(slots, [1, 2, 2, 2, 0, 1, 0, 2, 0, 0, 0, 1, 1]);
        let seeded = MaglevTable::build_with_seed(&backends, size(13), 42).unwrap();
        let slots: Vec<usize> = seeded.slots().collect();
        assert_eq!(slots, [1, 2, 0, 2, 1, 2, 0, 0, 2, 1, 1, 0, 0]);

        // 20 backends, M = 1021: a digest of the whole table, and the first shares.
        let backends: Vec<(String, u32)> = (0..20).map(|i| (format!("nic-{i:04}"), 1)).collect();
        let table = MaglevTable::build(&backends, size(1021)).unwrap();
        let digest: usize = table
            .slots()
            .enumerate()
            .map(|(s, i)| (s + 1) * (i + 1))
            .sum();
        assert_eq!(digest, 5_516_325);
        let shares: Vec<u32> = (0..5).map(|i| table.share(i)).collect();
        assert_eq!(shares, [52, 51, 51, 51, 51]);
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let backends = [("a", 1), ("b", 2), ("c", 3), ("d", 4)];
        let m = 65_521u32;
        let table = MaglevTable::build(&backends, size(m)).unwrap();
        let total: u32 = backends.iter().map(|b| b.1).sum();
        for (i, (_, weight)) in backends.iter().enumerate() {
            let ideal = f64::from(m) * f64::from(*weight) / f64::from(total);
            let got = f64::from(table.share(i));
            assert!((got - ideal).abs() <= 2.0, "{i}: {got} vs {ideal}");
        }
    }

    #[test]
    fn a_tiny_weight_may_get_nothing() {
        let backends = [("heavy", 1_000_000), ("light", 1)];
        let table = MaglevTable::build(&backends, size(251)).unwrap();
        assert_eq!(table.share(0), 251);
        assert_eq!(table.share(1), 0);
    }

    #[test]
    fn extreme_weights_build_quickly() {
        // u32::MAX against 1: the heap schedules turns by round, so the light backends cost
        // nothing per round they skip.
        let mut backends: Vec<(String, u32)> = named(1000);
        backends[0].1 = u32::MAX;
        let table = MaglevTable::build(&backends, size(65_537)).unwrap();
        assert_eq!(table.slots().len(), 65_537);
        assert!(table.share(0) > 65_000);
    }

    #[test]
    fn diff_counts_necessary_and_collateral_moves() {
        let before = named(10);
        let after: Vec<(String, u32)> = before[1..].to_vec();
        let m = size(4093);
        let old = MaglevTable::build(&before, m).unwrap();
        let new = MaglevTable::build(&after, m).unwrap();
        let diff = old.diff(|i| &before[i].0, &new, |i| &after[i].0);
        // The removed backend's slots all move; little else does.
        assert!(diff.changed >= old.share(0));
        assert_eq!(diff.changed - diff.collateral, old.share(0));
        assert_eq!(diff, new.diff(|i| &after[i].0, &old, |i| &before[i].0));
        let same = old.diff(|i| &before[i].0, &old, |i| &before[i].0);
        assert_eq!((same.changed, same.collateral), (0, 0));
        let resized = MaglevTable::build(&before, size(4091)).unwrap();
        let diff = old.diff(|i| &before[i].0, &resized, |i| &before[i].0);
        assert_eq!((diff.slots, diff.changed, diff.collateral), (4093, 4093, 0));
        let empty = MaglevTable::empty(m);
        let diff = old.diff(|i| &before[i].0, &empty, |i| &before[i].0);
        assert_eq!((diff.changed, diff.collateral), (4093, 0));
        assert!((diff.changed_fraction() - 1.0).abs() < f64::EPSILON);
    }

    /// Between `min` and `max` distinct backend names with weights 1..=max_weight.
    fn weighted(
        min: usize,
        max: usize,
        max_weight: u32,
    ) -> impl Strategy<Value = Vec<(String, u32)>> {
        proptest::collection::btree_set("[a-z0-9-]{1,12}", min..=max).prop_flat_map(move |names| {
            let n = names.len();
            (
                Just(names),
                proptest::collection::vec(1..=max_weight, n..=n),
            )
                .prop_map(|(names, weights)| names.into_iter().zip(weights).collect())
        })
    }

    fn table_size() -> impl Strategy<Value = TableSize> {
        prop::sample::select(vec![size(251), size(1021), size(4093), size(16_381)])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every slot holds a weighted backend, and the shares add up to M.
        #[test]
        fn every_slot_filled(
            mut backends in weighted(1, 40, 50),
            zeros in proptest::collection::vec(any::<bool>(), 40),
            m in table_size(),
        ) {
            for (backend, zero) in backends.iter_mut().zip(&zeros).skip(1) {
                if *zero { backend.1 = 0; }
            }
            let table = MaglevTable::build(&backends, m).unwrap();
            prop_assert_eq!(table.slots().len(), m.get() as usize);
            prop_assert!(table.slots().all(|i| backends[i].1 > 0));
            let total: u32 = (0..backends.len()).map(|i| table.share(i)).sum();
            prop_assert_eq!(total, m.get());
            for (i, backend) in backends.iter().enumerate() {
                let counted = u32::try_from(table.slots().filter(|&s| s == i).count()).unwrap();
                prop_assert_eq!(table.share(i), counted, "{:?}", backend);
            }
        }

        /// Equal weights: every backend holds floor(M/N) or ceil(M/N) slots (max − min ≤ 1),
        /// because each round gives every backend exactly one slot (Katran's test asserts the
        /// same of its ring).
        #[test]
        fn equal_weights_are_even(n in 1usize..=160, weight in 1u32..1000, m in table_size()) {
            prop_assume!(n <= m.get() as usize);
            let backends: Vec<(String, u32)> =
                (0..n).map(|i| (format!("nic-{i:04}"), weight)).collect();
            let table = MaglevTable::build(&backends, m).unwrap();
            let shares: Vec<u32> = (0..n).map(|i| table.share(i)).collect();
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            prop_assert!(max - min <= 1, "{:?}", shares);
        }

        /// Weighted: after k rounds backend i holds floor(k·w_i/w_max) or one more, which
        /// bounds |share_i − M·w_i/Σw| by 2 + 2N·w_i/Σw slots (see the module docs).
        #[test]
        fn weighted_shares_are_proportional(backends in weighted(1, 40, 100), m in table_size()) {
            let table = MaglevTable::build(&backends, m).unwrap();
            let total: f64 = backends.iter().map(|b| f64::from(b.1)).sum();
            let n = backends.len() as f64;
            for (i, (name, weight)) in backends.iter().enumerate() {
                let part = f64::from(*weight) / total;
                let ideal = f64::from(m.get()) * part;
                let bound = 2.0 + 2.0 * n * part;
                let got = f64::from(table.share(i));
                prop_assert!((got - ideal).abs() <= bound, "{} w={}: {} vs {:.1} ± {:.1}",
                    name, weight, got, ideal, bound);
            }
        }

        /// Same backends, any order, same slot → identity table; the same again on a rebuild.
        #[test]
        fn deterministic_and_order_independent(
            backends in weighted(1, 30, 5),
            seed in any::<u64>(),
            shuffle in any::<prop::sample::Index>(),
        ) {
            let m = size(1021);
            let table = MaglevTable::build_with_seed(&backends, m, seed).unwrap();
            let again = MaglevTable::build_with_seed(&backends, m, seed).unwrap();
            prop_assert_eq!(&table, &again);
            let mut shuffled = backends.clone();
            shuffled.reverse();
            let k = shuffle.index(shuffled.len());
            shuffled.rotate_left(k);
            let other = MaglevTable::build_with_seed(&shuffled, m, seed).unwrap();
            prop_assert_eq!(by_identity(&table, &backends), by_identity(&other, &shuffled));
        }

        /// Removing one of N backends (M = 16381 ≥ 100·N) moves its own slots and only a few
        /// others: collateral ≤ 2.5% of M. Adding it back moves at most 1/N of M plus the
        /// same slack. The input space (names `nic-0000`…, N ≤ 160, any victim) is finite;
        /// an exhaustive run of it measured a worst collateral of 1.80% (N = 160) and a mean
        /// of 0.7% at N = 20, 1.6% at N = 160, so this test cannot flake. Random names have a
        /// rare heavier tail: see the module docs and `disruption_survey`.
        #[test]
        fn minimal_disruption(n in 2usize..=160, victim in any::<prop::sample::Index>()) {
            let m = TableSize::DEFAULT;
            let all: Vec<(String, u32)> = (0..n).map(|i| (format!("nic-{i:04}"), 1)).collect();
            let v = victim.index(n);
            let rest: Vec<(String, u32)> =
                all.iter().enumerate().filter(|(i, _)| *i != v).map(|(_, b)| b.clone()).collect();
            let full = MaglevTable::build(&all, m).unwrap();
            let less = MaglevTable::build(&rest, m).unwrap();
            let removed = full.diff(|i| &all[i].0, &less, |i| &rest[i].0);
            prop_assert_eq!(removed.changed - removed.collateral, full.share(v));
            prop_assert!(removed.collateral_fraction() <= COLLATERAL_BOUND,
                "n={} collateral {:.4}", n, removed.collateral_fraction());
            let added = less.diff(|i| &rest[i].0, &full, |i| &all[i].0);
            prop_assert!(added.changed_fraction() <= 1.0 / n as f64 + COLLATERAL_BOUND,
                "n={} moved {:.4}", n, added.changed_fraction());
        }

        /// Lookup never panics, and only returns weighted backends.
        #[test]
        fn lookup_is_total(backends in weighted(0, 10, 3), hashes in proptest::collection::vec(any::<u64>(), 100)) {
            let table = MaglevTable::build(&backends, size(251)).unwrap();
            for hash in hashes {
                match table.lookup(hash) {
                    Some(i) => prop_assert!(backends[i].1 > 0),
                    None => prop_assert!(backends.is_empty()),
                }
            }
        }
    }

    /// The bound `minimal_disruption` asserts.
    const COLLATERAL_BOUND: f64 = 0.025;

    /// Measures the collateral reshuffle when one backend is removed, over many sets, and
    /// prints it. Run with
    /// `cargo test -p lb --release -- --ignored --nocapture disruption_survey`.
    #[test]
    #[ignore = "a measurement, not a check; takes a minute"]
    fn disruption_survey() {
        // LB_SURVEY_SCALE multiplies the number of trials.
        let scale: usize = std::env::var("LB_SURVEY_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        for (n, m) in [
            (2, 16_381),
            (5, 16_381),
            (10, 16_381),
            (20, 16_381),
            (50, 16_381),
            (100, 16_381),
            (130, 16_381),
            (160, 16_381),
            (160, 65_537),
            (500, 65_537),
            (650, 65_537),
            (1000, 131_071),
        ] {
            let (mut worst, mut sum, mut count) = (0f64, 0f64, 0u32);
            let (mut worst_add, mut sum_add) = (0f64, 0f64);
            let trials = 20_000 * scale / n;
            for trial in 0..trials {
                let all: Vec<(String, u32)> =
                    (0..n).map(|i| (format!("t{trial}-nic-{i}"), 1)).collect();
                let victim = (trial * 7919) % n;
                let rest: Vec<(String, u32)> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != victim)
                    .map(|(_, b)| b.clone())
                    .collect();
                let full = MaglevTable::build(&all, size(m)).unwrap();
                let less = MaglevTable::build(&rest, size(m)).unwrap();
                let diff = full.diff(|i| &all[i].0, &less, |i| &rest[i].0);
                let added = less.diff(|i| &rest[i].0, &full, |i| &all[i].0);
                worst = worst.max(diff.collateral_fraction());
                sum += diff.collateral_fraction();
                let excess = added.changed_fraction() - 1.0 / n as f64;
                worst_add = worst_add.max(excess);
                sum_add += excess;
                count += 1;
            }
            println!(
                "N={n:5} M={m:6} trials={count:5}: removal collateral mean {:.3}% max {:.3}%; \
                 addition moved − 1/N mean {:+.3}% max {:+.3}%",
                100.0 * sum / f64::from(count),
                100.0 * worst,
                100.0 * sum_add / f64::from(count),
                100.0 * worst_add,
            );
        }
    }
}
