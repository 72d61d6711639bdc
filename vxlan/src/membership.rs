//! Hub-and-spoke overlay membership (the KohakuRiver model): the hub's runner-ID pool, the
//! address plan derived from an ID, and the checks a registration must pass.
//!
//! **Runner IDs** are 1 and up ([`RunnerId`], a `u32`), at most the pool's capacity: as many
//! runner subnets as the address plan has (255 for the default /16 per runner out of a /8,
//! 4,095 for a /20 per runner, [`AddressPlan::max_runners`]). [`RunnerPool::register`]:
//! - gives a name it already knows the same ID again (a reconnect; after a hub restart too,
//!   once the pool is restored from its serialised form);
//! - gives a new name the lowest free ID;
//! - when every ID is taken, reclaims the ID of the runner unseen for longest (least recently
//!   used; ties go to the lower ID) and reports who was evicted
//!   ([`RegistrationOutcome::Reclaimed`]).
//!
//! Heartbeats call [`RunnerPool::touch`]; [`RunnerPool::mark_offline`] marks runners unseen for
//! a timeout offline. Online/offline is not persisted: a restored pool starts with every runner
//! offline until it registers or sends a heartbeat.
//!
//! **Runners that read their ID as a byte.** Before IDs were widened, a runner parsed the ID
//! the hub answered as a `u8`. A runner that reads wider IDs says so with the
//! [`FEATURES_HEADER`] request header ([`FEATURE_WIDE_IDS`]); the hub gives the others only
//! IDs up to [`RunnerId::NARROW_MAX`] ([`IdWidth`]), and refuses them, naming the upgrade, when
//! none of those is free and the pool is not full (a full pool reclaims among them).
//!
//! **Time** is a `u64` of milliseconds passed in. The pool is persisted and restored across
//! restarts, so its times must come from a clock that survives them: wall-clock milliseconds
//! since the UNIX epoch, not the engine's monotonic clock. Only their order matters (for LRU)
//! and their differences (for the offline timeout); a clock that steps back is tolerated.
//!
//! **The address plan** ([`AddressPlan`]) maps runner N to its VNI (`vniBase + N`), its subnet
//! (the N-th `/runnerPrefixLen` of the overlay range: 10.N.0.0/16 by default), its gateway
//! (10.N.0.1, owned by the runner's switch), the hub's address in that subnet (10.N.0.254), and
//! the hub's overlay-wide address (10.0.0.1/8). It is configurable and validated as a whole.
//!
//! **Registration** ([`validate_registration`], [`RunnerPool::admit`]) refuses a runner whose
//! vniBase, UDP port or MTU differ from the hub's, naming the setting and both values
//! (`mtu differs: hub 1450, runner 1400`), and a loopback or unspecified address, with a
//! message saying to use the address the other nodes reach.
//!
//! **A name is one runner** ([`RunnerPool::check_takeover`]): [`RunnerPool::admit`] refuses a
//! name the pool holds from another address while that runner is online (marked online and
//! seen within the runner timeout), naming both addresses
//! ([`MembershipError::NameOnlineElsewhere`]); two nodes configured with one name would
//! otherwise take the ID from each other at every registration. The same address registering
//! again (a restart) is a reconnect; once the old runner is offline, another address takes the
//! name and keeps its ID (a runner that moved). [`RunnerPool::register`] does not check this:
//! it is for the hub's own configuration (static runners), whose word is final.

use core::fmt;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::header::{UDP_PORT, Vni};

/// Errors of this module: refused registrations, bad plans, bad persisted state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The runner's overlay settings differ from the hub's (each mismatch listed).
    #[error("{}", join_mismatches(.0))]
    SettingsDiffer(Vec<SettingMismatch>),
    /// The runner's reachable address cannot be used by other nodes.
    #[error(
        "localAddress {address} is {kind}: set localAddress to the underlay address the \
         other nodes reach"
    )]
    UnusableAddress {
        /// The address given.
        address: IpAddr,
        /// What it is ("a loopback address", "the unspecified address", ...).
        kind: &'static str,
    },
    /// A runner name that cannot be used.
    #[error("runner name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is valid.
        reason: &'static str,
    },
    /// A registration of a name the pool holds from another address while that runner is
    /// online: two nodes share the name (or one moved before the other stopped).
    #[error(
        "runner {name:?} is online from {online_from}; refusing the registration from \
         {refused_from} (stop the other runner, or wait until it is offline: {} without \
         heartbeats)",
        seconds(.timeout_ms)
    )]
    NameOnlineElsewhere {
        /// The name.
        name: String,
        /// The address the online runner registered from.
        online_from: IpAddr,
        /// The address of the refused registration.
        refused_from: IpAddr,
        /// The runner timeout (milliseconds): silence after which the name is free to move.
        timeout_ms: u64,
    },
    /// A heartbeat or lookup for a name the pool does not hold (never registered, removed,
    /// or evicted because its ID was reclaimed).
    #[error("no runner named {name:?} is registered with the hub: register again")]
    UnknownRunner {
        /// The name given.
        name: String,
    },
    /// Runner ID 0.
    #[error("runner ID {id} is out of range: runner IDs start at 1")]
    InvalidRunnerId {
        /// The ID given.
        id: u32,
    },
    /// A runner that reads its ID as a byte would get an ID above 255.
    #[error(
        "runner {name:?} holds or would get ID {id}, but its vswitchd reads runner IDs only \
         up to {} (it does not send 'Vswitch-Overlay-Features: runner-id-u32'): upgrade \
         vswitchd on that runner",
        RunnerId::NARROW_MAX
    )]
    NarrowIdUnavailable {
        /// The runner's name.
        name: String,
        /// The ID it holds or would get.
        id: RunnerId,
    },
    /// An address plan field is invalid.
    #[error("address plan: {field} {value}: {reason}")]
    InvalidPlan {
        /// The field (as in the resource: `overlay`, `runnerPrefixLen`, ...).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong, and what would be valid.
        reason: String,
    },
    /// A runner ID beyond what the address plan has subnets for.
    #[error("runner ID {id} has no subnet: the address plan has room for runners 1 to {max}")]
    RunnerOutsidePlan {
        /// The ID.
        id: RunnerId,
        /// The highest ID the plan serves.
        max: u32,
    },
    /// Shrinking the pool below an ID that is in use.
    #[error(
        "the runner pool cannot shrink to {capacity} IDs: runner {name:?} holds ID {id}; \
         remove it first"
    )]
    CapacityBelowAssigned {
        /// The capacity asked for.
        capacity: u32,
        /// The ID in use beyond it.
        id: RunnerId,
        /// The runner holding it.
        name: String,
    },
    /// The persisted pool is inconsistent (hand-edited or corrupt).
    #[error("runner pool state is invalid: {0}")]
    CorruptState(String),
}

fn join_mismatches(mismatches: &[SettingMismatch]) -> String {
    let parts: Vec<String> = mismatches.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// Milliseconds as seconds for a message: `20 s`, `1.5 s`.
fn seconds(ms: &u64) -> String {
    let (whole, rest) = (ms / 1000, ms % 1000);
    if rest == 0 {
        format!("{whole} s")
    } else {
        let fraction = format!("{rest:03}");
        format!("{whole}.{} s", fraction.trim_end_matches('0'))
    }
}

/// A runner ID, 1 and up. Runner N gets VNI `vniBase + N` and the N-th subnet of the plan,
/// so the plan bounds it ([`AddressPlan::max_runners`]): VNIs are 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct RunnerId(NonZeroU32);

impl RunnerId {
    /// The lowest ID, 1.
    pub const MIN: RunnerId = RunnerId(NonZeroU32::MIN);
    /// The highest ID a runner from before wider IDs reads (it parsed the ID as a `u8`).
    pub const NARROW_MAX: RunnerId = match NonZeroU32::new(255) {
        Some(id) => RunnerId(id),
        None => RunnerId(NonZeroU32::MIN),
    };

    /// The ID `value`, or `None` for 0.
    pub const fn new(value: u32) -> Option<RunnerId> {
        match NonZeroU32::new(value) {
            Some(value) => Some(RunnerId(value)),
            None => None,
        }
    }

    /// The ID as a number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<u32> for RunnerId {
    type Error = MembershipError;

    fn try_from(value: u32) -> Result<RunnerId, MembershipError> {
        RunnerId::new(value).ok_or(MembershipError::InvalidRunnerId { id: value })
    }
}

impl From<RunnerId> for u32 {
    fn from(id: RunnerId) -> u32 {
        id.get()
    }
}

/// The request header in which a runner lists the overlay features it has, comma-separated.
/// A header, not a field of the registration: hubs from before it refuse unknown fields.
pub const FEATURES_HEADER: &str = "vswitch-overlay-features";
/// The feature of a runner that reads runner IDs above 255.
pub const FEATURE_WIDE_IDS: &str = "runner-id-u32";
/// The feature of a runner that reaches the other runners directly when the hub says so: its
/// heartbeats are then answered with the version of the hub's runner list (`peers`), which it
/// reads when the version changes.
pub const FEATURE_PEERS: &str = "peers";

/// Whether a [`FEATURES_HEADER`] value (`None`: no header) lists `feature`.
pub fn has_feature(header: Option<&str>, feature: &str) -> bool {
    header.is_some_and(|value| {
        value
            .split(',')
            .any(|listed| listed.trim().eq_ignore_ascii_case(feature))
    })
}

/// The runners of an overlay whose runners reach each other directly, as a hub answers them:
/// each runner builds, from every other one's ID and address and the hub's plan, a path
/// straight to that runner's subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayPeers {
    /// Changes whenever the runners (IDs, names, addresses) or the plan do; hubs sharing a
    /// store answer the same version for the same runners ([`RunnerPool::peers_version`]).
    pub version: String,
    /// The overlay's VNI base: runner N's VNI is `vniBase + N`.
    pub vni_base: u32,
    /// The hub's address plan: where runner N's subnet is.
    pub address_plan: AddressPlan,
    /// Every runner holding an ID, by ID (the asking runner among them).
    pub runners: Vec<Peer>,
}

/// One runner of [`OverlayPeers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Its ID.
    pub id: RunnerId,
    /// Its name.
    pub name: String,
    /// Its VTEP address.
    pub address: IpAddr,
}

/// Which runner IDs a registering runner can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdWidth {
    /// Only up to [`RunnerId::NARROW_MAX`]: a runner from before wider IDs.
    Narrow,
    /// Any ID.
    #[default]
    Wide,
}

impl IdWidth {
    /// The width a runner's [`FEATURES_HEADER`] value says (`None`: no header, a runner from
    /// before it).
    pub fn from_features(header: Option<&str>) -> IdWidth {
        if has_feature(header, FEATURE_WIDE_IDS) {
            IdWidth::Wide
        } else {
            IdWidth::Narrow
        }
    }

    /// The highest ID such a runner reads.
    pub fn max(self) -> Option<RunnerId> {
        match self {
            IdWidth::Narrow => Some(RunnerId::NARROW_MAX),
            IdWidth::Wide => None,
        }
    }
}

impl fmt::Display for RunnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// Whether the hub currently hears from a runner. Written `Online` / `Offline`, in
/// PascalCase like every status value of the API (`Up`, `Lost`, `HubUnreachable`, `Ready`);
/// the lowercase forms of an earlier version are still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunnerState {
    /// Registered or sent a heartbeat within the timeout.
    #[serde(alias = "online")]
    Online,
    /// Unseen for the timeout, or not seen since the hub restarted.
    #[serde(alias = "offline")]
    Offline,
}

impl fmt::Display for RunnerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunnerState::Online => "Online",
            RunnerState::Offline => "Offline",
        })
    }
}

/// A runner the hub knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Runner {
    /// Its ID.
    pub id: RunnerId,
    /// Its name (unique in the pool).
    pub name: String,
    /// Its reachable underlay address (its VTEP).
    pub address: IpAddr,
    /// When it was first given this ID (milliseconds, the pool's clock).
    pub registered_ms: u64,
    /// When it last registered or sent a heartbeat.
    pub last_seen_ms: u64,
    /// Online or offline.
    pub state: RunnerState,
}

impl Runner {
    /// Whether the runner is online at `now_ms` for a runner timeout of `timeout_ms`: marked
    /// online and seen less than `timeout_ms` before (as [`RunnerPool::mark_offline`] would
    /// judge it now, so a sweep that has not run yet changes nothing; a clock that stepped
    /// back counts as just seen).
    pub fn is_online_at(&self, now_ms: u64, timeout_ms: u64) -> bool {
        self.state == RunnerState::Online && now_ms.saturating_sub(self.last_seen_ms) < timeout_ms
    }
}

/// A runner whose ID was reclaimed for a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictedRunner {
    /// The ID it held (now the new runner's).
    pub id: RunnerId,
    /// Its name.
    pub name: String,
    /// Its address (the hub should forget FDB entries and flood targets for it).
    pub address: IpAddr,
    /// When it was last seen.
    pub last_seen_ms: u64,
    /// Whether it was still marked online (only if it was the least recently seen anyway).
    pub was_online: bool,
}

/// How a registration got its ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// A new name got the lowest free ID.
    Assigned,
    /// A known name got its ID back.
    Reconnected {
        /// Its address before, if the runner now registers from another one.
        previous_address: Option<IpAddr>,
    },
    /// The pool was full: the least recently seen runner's ID was reclaimed.
    Reclaimed {
        /// Who lost the ID.
        evicted: EvictedRunner,
    },
}

/// The IDs one of several hubs that share a pool prefers to give: those `i` with
/// `(i - 1) % count == index`. Hubs committing new runners to one store at the same time
/// then seldom race for the same ID (each would otherwise take the lowest free one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShare {
    /// This hub's place among the hubs, from 0.
    pub index: u32,
    /// How many hubs there are.
    pub count: u32,
}

/// The result of [`RunnerPool::register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The runner's ID.
    pub id: RunnerId,
    /// How it got it.
    pub outcome: RegistrationOutcome,
}

/// The result of [`RunnerPool::admit`]: the registration and the runner's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The ID and how it was given.
    pub registration: Registration,
    /// What the hub sends back to the runner.
    pub plan: RunnerPlan,
}

/// The hub's runner-ID pool. Serialises to (and restores from) a versioned, validated form
/// for the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerPool {
    capacity: NonZeroU32,
    runners: BTreeMap<RunnerId, Runner>,
    by_name: HashMap<String, RunnerId>,
    /// The wrapping sum of [`member_hash`] over the runners: kept as they come and go, so
    /// that [`RunnerPool::peers_version`] costs nothing per heartbeat.
    digest: u64,
}

/// Seed of the hashes behind [`RunnerPool::peers_version`]: fixed, so that every hub (and
/// every restart) computes the same version for the same runners.
const PEERS_SEED: u64 = 0x7673_7769_7463_6821;

/// A runner's part of the pool's digest: its ID, name and address.
fn member_hash(id: RunnerId, name: &str, address: IpAddr) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(PEERS_SEED).hash_one((id.get(), name, address))
}

impl Default for RunnerPool {
    fn default() -> RunnerPool {
        // The default plan's 255 runners.
        RunnerPool::new(RunnerId::NARROW_MAX.0)
    }
}

impl RunnerPool {
    /// An empty pool handing out IDs 1..=`capacity` (use [`AddressPlan::max_runners`]).
    pub fn new(capacity: NonZeroU32) -> RunnerPool {
        RunnerPool {
            capacity,
            runners: BTreeMap::new(),
            by_name: HashMap::new(),
            digest: 0,
        }
    }

    /// Puts `runner` in (its ID and name free), keeping the digest.
    fn insert_member(&mut self, runner: Runner) {
        self.digest =
            self.digest
                .wrapping_add(member_hash(runner.id, &runner.name, runner.address));
        self.by_name.insert(runner.name.clone(), runner.id);
        self.runners.insert(runner.id, runner);
    }

    /// Takes the runner holding `id` out, keeping the digest.
    fn remove_member(&mut self, id: RunnerId) -> Option<Runner> {
        let runner = self.runners.remove(&id)?;
        self.by_name.remove(&runner.name);
        self.digest =
            self.digest
                .wrapping_sub(member_hash(runner.id, &runner.name, runner.address));
        Some(runner)
    }

    /// The version of the runner list and plan that [`OverlayPeers`] carries: it changes
    /// when a runner comes, goes or moves, or when the plan or VNI base changes, and is the
    /// same on every hub holding the same runners.
    pub fn peers_version(&self, plan: &AddressPlan, vni_base: u32) -> String {
        use std::hash::BuildHasher;
        let plan = foldhash::fast::FixedState::with_seed(PEERS_SEED).hash_one((plan, vni_base));
        format!("{:016x}", self.digest ^ plan)
    }

    /// The runners as [`OverlayPeers`] lists them, with their version.
    pub fn peers(&self, plan: &AddressPlan, vni_base: u32) -> OverlayPeers {
        OverlayPeers {
            version: self.peers_version(plan, vni_base),
            vni_base,
            address_plan: *plan,
            runners: self
                .runners
                .values()
                .map(|runner| Peer {
                    id: runner.id,
                    name: runner.name.clone(),
                    address: runner.address,
                })
                .collect(),
        }
    }

    /// The highest ID the pool hands out.
    pub fn capacity(&self) -> NonZeroU32 {
        self.capacity
    }

    /// Changes the capacity (after the address plan changed).
    ///
    /// # Errors
    ///
    /// [`MembershipError::CapacityBelowAssigned`] if a runner holds an ID above `capacity`;
    /// the pool is unchanged then.
    pub fn set_capacity(&mut self, capacity: NonZeroU32) -> Result<(), MembershipError> {
        if let Some((&id, runner)) = self.runners.last_key_value()
            && id.get() > capacity.get()
        {
            return Err(MembershipError::CapacityBelowAssigned {
                capacity: capacity.get(),
                id,
                name: runner.name.clone(),
            });
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Number of runners holding an ID.
    pub fn len(&self) -> usize {
        self.runners.len()
    }

    /// True when no runner holds an ID.
    pub fn is_empty(&self) -> bool {
        self.runners.is_empty()
    }

    /// True when every ID is taken: the next new name reclaims one.
    pub fn is_full(&self) -> bool {
        self.runners.len() >= usize::try_from(self.capacity.get()).unwrap_or(usize::MAX)
    }

    /// The runner called `name`.
    pub fn get(&self, name: &str) -> Option<&Runner> {
        self.by_name.get(name).and_then(|id| self.runners.get(id))
    }

    /// The runner holding `id`.
    pub fn get_by_id(&self, id: RunnerId) -> Option<&Runner> {
        self.runners.get(&id)
    }

    /// Every runner, by ID.
    pub fn runners(&self) -> impl Iterator<Item = &Runner> {
        self.runners.values()
    }

    /// The lowest free ID of `share` up to the capacity and `max`, else the lowest free ID.
    fn free_id(&self, max: Option<RunnerId>, share: Option<IdShare>) -> Option<RunnerId> {
        let Some(share) = share.filter(|share| share.count > 1 && share.index < share.count) else {
            return self.lowest_free_id(max);
        };
        let limit = max.map_or(self.capacity.get(), |max| {
            max.get().min(self.capacity.get())
        });
        let mut next = share.index + 1;
        while next <= limit {
            let id = RunnerId::new(next)?;
            if !self.runners.contains_key(&id) {
                return Some(id);
            }
            next = next.checked_add(share.count)?;
        }
        self.lowest_free_id(max)
    }

    /// The lowest ID not held, up to the capacity and to `max`: the first gap in the held
    /// IDs, found in one ordered walk.
    fn lowest_free_id(&self, max: Option<RunnerId>) -> Option<RunnerId> {
        let limit = max.map_or(self.capacity.get(), |max| {
            max.get().min(self.capacity.get())
        });
        let mut next = 1u32;
        for id in self.runners.keys() {
            if id.get() != next {
                break;
            }
            next += 1;
        }
        RunnerId::new(next).filter(|id| id.get() <= limit)
    }

    /// Registers `name` at `address` (see the module docs for which ID it gets) and marks it
    /// online, seen at `now_ms`. A name held from another address moves to `address`
    /// whether or not its runner is online: this is for the hub's own configuration (static
    /// runners); a runner's registration goes through [`RunnerPool::admit`], which refuses
    /// that while the other runner is online ([`RunnerPool::check_takeover`]).
    ///
    /// # Errors
    ///
    /// [`MembershipError::InvalidName`] or [`MembershipError::UnusableAddress`]; the pool is
    /// unchanged then.
    pub fn register(
        &mut self,
        name: &str,
        address: IpAddr,
        now_ms: u64,
    ) -> Result<Registration, MembershipError> {
        self.register_as(name, address, now_ms, IdWidth::Wide)
    }

    /// [`RunnerPool::register`] for a runner that reads IDs of `width`: a narrow one gets the
    /// lowest free ID up to [`RunnerId::NARROW_MAX`], or when the pool is full the ID of the
    /// least recently seen runner among those.
    ///
    /// # Errors
    ///
    /// Those of [`RunnerPool::register`], and [`MembershipError::NarrowIdUnavailable`] if a
    /// narrow runner holds or would get an ID above [`RunnerId::NARROW_MAX`]; the pool is
    /// unchanged then.
    pub fn register_as(
        &mut self,
        name: &str,
        address: IpAddr,
        now_ms: u64,
        width: IdWidth,
    ) -> Result<Registration, MembershipError> {
        self.register_with(name, address, now_ms, width, None)
    }

    /// [`RunnerPool::register_as`] where a new name takes the lowest free ID of `share`
    /// when there is one (else the lowest free ID).
    ///
    /// # Errors
    ///
    /// Those of [`RunnerPool::register_as`].
    pub fn register_with(
        &mut self,
        name: &str,
        address: IpAddr,
        now_ms: u64,
        width: IdWidth,
        share: Option<IdShare>,
    ) -> Result<Registration, MembershipError> {
        validate_runner_name(name)?;
        validate_local_address(address)?;
        let address = address.to_canonical();

        if let Some(&id) = self.by_name.get(name) {
            if width.max().is_some_and(|max| id > max) {
                return Err(MembershipError::NarrowIdUnavailable {
                    name: name.to_owned(),
                    id,
                });
            }
            if let Some(runner) = self.runners.get_mut(&id) {
                let previous_address = (runner.address != address).then_some(runner.address);
                if let Some(previous) = previous_address {
                    self.digest = self
                        .digest
                        .wrapping_sub(member_hash(id, name, previous))
                        .wrapping_add(member_hash(id, name, address));
                }
                runner.address = address;
                runner.last_seen_ms = now_ms;
                runner.state = RunnerState::Online;
                return Ok(Registration {
                    id,
                    outcome: RegistrationOutcome::Reconnected { previous_address },
                });
            }
        }

        let (id, outcome) = match self.free_id(width.max(), share) {
            Some(id) => (id, RegistrationOutcome::Assigned),
            None if !self.is_full() => {
                // Only a narrow runner finds no free ID in a pool that is not full.
                let id = self.lowest_free_id(None).ok_or_else(|| {
                    MembershipError::CorruptState("a pool that is not full has no free ID".into())
                })?;
                return Err(MembershipError::NarrowIdUnavailable {
                    name: name.to_owned(),
                    id,
                });
            }
            None => {
                let evicted = self.evict_least_recently_seen(width.max()).ok_or_else(|| {
                    MembershipError::CorruptState("a full pool has no runner to evict".into())
                })?;
                (evicted.id, RegistrationOutcome::Reclaimed { evicted })
            }
        };
        self.insert_member(Runner {
            id,
            name: name.to_owned(),
            address,
            registered_ms: now_ms,
            last_seen_ms: now_ms,
            state: RunnerState::Online,
        });
        Ok(Registration { id, outcome })
    }

    fn evict_least_recently_seen(&mut self, max: Option<RunnerId>) -> Option<EvictedRunner> {
        let id = self
            .runners
            .values()
            .filter(|runner| max.is_none_or(|max| runner.id <= max))
            .min_by_key(|runner| (runner.last_seen_ms, runner.id))
            .map(|runner| runner.id)?;
        let runner = self.remove_member(id)?;
        Some(EvictedRunner {
            id,
            name: runner.name,
            address: runner.address,
            last_seen_ms: runner.last_seen_ms,
            was_online: runner.state == RunnerState::Online,
        })
    }

    /// Checks that `name` may be registered from `address` at `now_ms`, the hub's runner
    /// timeout being `timeout_ms`: not while the pool holds it from another address and that
    /// runner is online ([`Runner::is_online_at`]). The same address (a restart), an unknown
    /// name, or a runner that is offline (one that moved) pass.
    ///
    /// # Errors
    ///
    /// [`MembershipError::NameOnlineElsewhere`] naming both addresses.
    pub fn check_takeover(
        &self,
        name: &str,
        address: IpAddr,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Result<(), MembershipError> {
        let address = address.to_canonical();
        match self.get(name) {
            Some(runner)
                if runner.address.to_canonical() != address
                    && runner.is_online_at(now_ms, timeout_ms) =>
            {
                Err(MembershipError::NameOnlineElsewhere {
                    name: name.to_owned(),
                    online_from: runner.address,
                    refused_from: address,
                    timeout_ms,
                })
            }
            _ => Ok(()),
        }
    }

    /// Validates a registration against the hub's settings and plan and against the runner
    /// holding its name ([`RunnerPool::check_takeover`], with the hub's runner timeout
    /// `timeout_ms`), then registers it and computes its plan. Nothing changes unless
    /// everything is valid.
    ///
    /// # Errors
    ///
    /// Those of [`validate_registration`] and [`AddressPlan::max_runners`],
    /// [`MembershipError::InvalidPlan`] if the pool hands out IDs the plan has no subnet for,
    /// [`MembershipError::NameOnlineElsewhere`] if the name is online from another
    /// address, and [`MembershipError::NarrowIdUnavailable`] (see
    /// [`RunnerPool::register_as`]) for a runner reading IDs of `width`.
    pub fn admit(
        &mut self,
        hub: &OverlaySettings,
        plan: &AddressPlan,
        request: &RegistrationRequest,
        now_ms: u64,
        timeout_ms: u64,
        width: IdWidth,
    ) -> Result<Admission, MembershipError> {
        self.admit_with(hub, plan, request, now_ms, timeout_ms, width, None)
    }

    /// [`RunnerPool::admit`] where a new runner takes an ID of `share` when one is free
    /// ([`RunnerPool::register_with`]).
    ///
    /// # Errors
    ///
    /// Those of [`RunnerPool::admit`].
    #[allow(clippy::too_many_arguments)]
    pub fn admit_with(
        &mut self,
        hub: &OverlaySettings,
        plan: &AddressPlan,
        request: &RegistrationRequest,
        now_ms: u64,
        timeout_ms: u64,
        width: IdWidth,
        share: Option<IdShare>,
    ) -> Result<Admission, MembershipError> {
        validate_registration(hub, request)?;
        let max = plan.max_runners(hub.vni_base)?;
        if self.capacity > max {
            return Err(MembershipError::InvalidPlan {
                field: "runnerPrefixLen",
                value: plan.runner_prefix_len.to_string(),
                reason: format!(
                    "the plan has subnets for {max} runners but the runner pool hands out \
                     IDs up to {}",
                    self.capacity
                ),
            });
        }
        self.check_takeover(&request.name, request.local_address, now_ms, timeout_ms)?;
        let registration =
            self.register_with(&request.name, request.local_address, now_ms, width, share)?;
        let plan = plan.runner(registration.id, hub.vni_base)?;
        Ok(Admission { registration, plan })
    }

    /// Records a heartbeat from `name` at `now_ms` and marks it online; returns its ID.
    ///
    /// # Errors
    ///
    /// [`MembershipError::UnknownRunner`] if the name holds no ID (it must register again).
    pub fn touch(&mut self, name: &str, now_ms: u64) -> Result<RunnerId, MembershipError> {
        let runner = self
            .by_name
            .get(name)
            .and_then(|id| self.runners.get_mut(id))
            .ok_or_else(|| MembershipError::UnknownRunner {
                name: name.to_owned(),
            })?;
        runner.last_seen_ms = now_ms;
        runner.state = RunnerState::Online;
        Ok(runner.id)
    }

    /// Marks offline every online runner unseen for `timeout_ms` or more at `now_ms`; returns
    /// their IDs. Offline runners keep their IDs.
    pub fn mark_offline(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<RunnerId> {
        let mut marked = Vec::new();
        for runner in self.runners.values_mut() {
            if runner.state == RunnerState::Online
                && now_ms.saturating_sub(runner.last_seen_ms) >= timeout_ms
            {
                runner.state = RunnerState::Offline;
                marked.push(runner.id);
            }
        }
        marked
    }

    /// Puts `runner` in the pool with its own ID, as another holder of the truth (the
    /// overlay's shared store) gives it: whoever held that ID or that name is displaced,
    /// and returned.
    ///
    /// # Errors
    ///
    /// [`MembershipError::InvalidName`] or [`MembershipError::UnusableAddress`], and
    /// [`MembershipError::CapacityBelowAssigned`] when the ID is above the capacity; the
    /// pool is unchanged then.
    pub fn restore(&mut self, runner: Runner) -> Result<Vec<Runner>, MembershipError> {
        validate_runner_name(&runner.name)?;
        validate_local_address(runner.address)?;
        if runner.id.get() > self.capacity.get() {
            return Err(MembershipError::CapacityBelowAssigned {
                capacity: self.capacity.get(),
                id: runner.id,
                name: runner.name,
            });
        }
        let mut displaced = Vec::new();
        if let Some(old) = self.remove(&runner.name) {
            displaced.push(old);
        }
        if let Some(old) = self.remove_member(runner.id) {
            displaced.push(old);
        }
        self.insert_member(Runner {
            address: runner.address.to_canonical(),
            ..runner
        });
        Ok(displaced)
    }

    /// Removes `name` from the pool (an administrator deregistering it), freeing its ID.
    pub fn remove(&mut self, name: &str) -> Option<Runner> {
        let id = *self.by_name.get(name)?;
        self.remove_member(id)
    }
}

/// Version of the persisted pool format. IDs and the capacity were bytes in the first
/// builds and are `u32` now, in the same format: a pool of at most 255 runners reads in
/// either, and an older build refuses a wider one as corrupt rather than misreading it.
const PERSISTED_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PersistedPool {
    version: u32,
    capacity: u32,
    runners: Vec<PersistedRunner>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PersistedRunner {
    id: u32,
    name: String,
    address: IpAddr,
    registered_ms: u64,
    last_seen_ms: u64,
}

impl TryFrom<PersistedPool> for RunnerPool {
    type Error = MembershipError;

    fn try_from(persisted: PersistedPool) -> Result<RunnerPool, MembershipError> {
        if persisted.version != PERSISTED_VERSION {
            return Err(MembershipError::CorruptState(format!(
                "version {} is not supported (this build reads version {PERSISTED_VERSION})",
                persisted.version
            )));
        }
        let capacity = NonZeroU32::new(persisted.capacity)
            .ok_or_else(|| MembershipError::CorruptState("capacity is 0".into()))?;
        let mut pool = RunnerPool::new(capacity);
        for runner in persisted.runners {
            let id = RunnerId::try_from(runner.id)
                .map_err(|error| MembershipError::CorruptState(error.to_string()))?;
            if id.get() > capacity.get() {
                return Err(MembershipError::CorruptState(format!(
                    "runner {:?} holds ID {id}, above the capacity {capacity}",
                    runner.name
                )));
            }
            validate_runner_name(&runner.name)
                .map_err(|error| MembershipError::CorruptState(error.to_string()))?;
            if let Some(other) = pool.runners.get(&id) {
                return Err(MembershipError::CorruptState(format!(
                    "ID {id} is held by both {:?} and {:?}",
                    other.name, runner.name
                )));
            }
            if pool.by_name.contains_key(&runner.name) {
                return Err(MembershipError::CorruptState(format!(
                    "runner {:?} appears twice",
                    runner.name
                )));
            }
            pool.insert_member(Runner {
                id,
                name: runner.name,
                address: runner.address,
                registered_ms: runner.registered_ms,
                last_seen_ms: runner.last_seen_ms,
                // Nobody is known to be online after a restart.
                state: RunnerState::Offline,
            });
        }
        Ok(pool)
    }
}

impl Serialize for RunnerPool {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PersistedPool {
            version: PERSISTED_VERSION,
            capacity: self.capacity.get(),
            runners: self
                .runners
                .values()
                .map(|runner| PersistedRunner {
                    id: runner.id.get(),
                    name: runner.name.clone(),
                    address: runner.address,
                    registered_ms: runner.registered_ms,
                    last_seen_ms: runner.last_seen_ms,
                })
                .collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RunnerPool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RunnerPool, D::Error> {
        let persisted = PersistedPool::deserialize(deserializer)?;
        RunnerPool::try_from(persisted).map_err(serde::de::Error::custom)
    }
}

/// Checks a runner name: 1 to 253 bytes of ASCII letters, digits, `-`, `_` and `.` (a
/// hostname fits).
///
/// # Errors
///
/// [`MembershipError::InvalidName`] saying what is valid.
pub fn validate_runner_name(name: &str) -> Result<(), MembershipError> {
    let reason = if name.is_empty() {
        "it is empty; use the runner's hostname"
    } else if name.len() > 253 {
        "it is longer than 253 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "use only ASCII letters, digits, '-', '_' and '.'"
    } else {
        return Ok(());
    };
    Err(MembershipError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Checks that an address can be a VTEP that other nodes reach: not loopback, unspecified,
/// multicast or broadcast (IPv4-mapped IPv6 addresses are judged as IPv4). Used for a runner's
/// registration and for a node's own `localAddress`.
///
/// # Errors
///
/// [`MembershipError::UnusableAddress`], whose message says to use the address the other
/// nodes reach.
pub fn validate_local_address(address: IpAddr) -> Result<(), MembershipError> {
    let canonical = address.to_canonical();
    let kind = if canonical.is_loopback() {
        "a loopback address"
    } else if canonical.is_unspecified() {
        "the unspecified address"
    } else if canonical.is_multicast() {
        "a multicast address"
    } else if canonical == IpAddr::V4(Ipv4Addr::BROADCAST) {
        "the broadcast address"
    } else {
        return Ok(());
    };
    Err(MembershipError::UnusableAddress { address, kind })
}

/// The overlay settings that must be equal on the hub and every runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OverlaySettings {
    /// Base VNI: runner N uses `vniBase + N`. Default 100.
    pub vni_base: u32,
    /// VXLAN UDP port. Default 4789.
    pub port: u16,
    /// Overlay MTU. Default 1450 (1500 minus 50 bytes of VXLAN over IPv4).
    pub mtu: u16,
    /// VXLAN remote checksum offload (see [`crate::header`]): every node must send it only
    /// to nodes that take it. Default `false`.
    #[serde(skip_serializing_if = "is_false")]
    pub remote_checksum_offload: bool,
    /// How frames cross the underlay between nodes. Default [`Encapsulation::Vxlan`].
    #[serde(skip_serializing_if = "Encapsulation::is_vxlan")]
    pub encapsulation: Encapsulation,
}

/// How the overlay's frames cross the underlay between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Encapsulation {
    /// In VXLAN tunnels between the nodes' VTEPs (the default).
    #[default]
    #[serde(rename = "VXLAN", alias = "Vxlan", alias = "vxlan")]
    Vxlan,
    /// Not at all: each runner's subnet is routed to its node's address on one underlay
    /// link, as Calico's BGP mode does between nodes of one L2 network.
    #[serde(alias = "none")]
    None,
}

impl Encapsulation {
    /// True for the default, [`Encapsulation::Vxlan`] (left out when serialised).
    pub fn is_vxlan(&self) -> bool {
        *self == Encapsulation::Vxlan
    }
}

impl fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encapsulation::Vxlan => "VXLAN",
            Encapsulation::None => "None",
        })
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Default for OverlaySettings {
    fn default() -> OverlaySettings {
        OverlaySettings {
            vni_base: 100,
            port: UDP_PORT,
            mtu: 1450,
            remote_checksum_offload: false,
            encapsulation: Encapsulation::Vxlan,
        }
    }
}

/// A setting that must match between hub and runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    /// `vniBase`.
    VniBase,
    /// `port`.
    Port,
    /// `mtu`.
    Mtu,
    /// `remoteChecksumOffload` (1 on, 0 off).
    RemoteChecksumOffload,
    /// `encapsulation` (0 VXLAN, 1 None).
    Encapsulation,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Setting::VniBase => "vniBase",
            Setting::Port => "port",
            Setting::Mtu => "mtu",
            Setting::RemoteChecksumOffload => "remoteChecksumOffload",
            Setting::Encapsulation => "encapsulation",
        })
    }
}

/// One setting that differs: `mtu differs: hub 1450, runner 1400`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SettingMismatch {
    /// Which setting.
    pub setting: Setting,
    /// The hub's value.
    pub hub: u32,
    /// The runner's value.
    pub runner: u32,
}

impl fmt::Display for SettingMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.setting == Setting::RemoteChecksumOffload {
            return write!(
                f,
                "{} differs: hub {}, runner {}",
                self.setting,
                self.hub != 0,
                self.runner != 0
            );
        }
        if self.setting == Setting::Encapsulation {
            let name = |value: u32| {
                if value == 0 {
                    Encapsulation::Vxlan
                } else {
                    Encapsulation::None
                }
            };
            return write!(
                f,
                "{} differs: hub {}, runner {}",
                self.setting,
                name(self.hub),
                name(self.runner)
            );
        }
        write!(
            f,
            "{} differs: hub {}, runner {}",
            self.setting, self.hub, self.runner
        )
    }
}

impl OverlaySettings {
    /// Compares a runner's settings with these (the hub's).
    ///
    /// # Errors
    ///
    /// [`MembershipError::SettingsDiffer`] listing every mismatch, in the order vniBase, port,
    /// mtu, remoteChecksumOffload, encapsulation.
    pub fn compare(&self, runner: &OverlaySettings) -> Result<(), MembershipError> {
        let mismatches: Vec<SettingMismatch> = [
            (Setting::VniBase, self.vni_base, runner.vni_base),
            (Setting::Port, u32::from(self.port), u32::from(runner.port)),
            (Setting::Mtu, u32::from(self.mtu), u32::from(runner.mtu)),
            (
                Setting::RemoteChecksumOffload,
                u32::from(self.remote_checksum_offload),
                u32::from(runner.remote_checksum_offload),
            ),
            (
                Setting::Encapsulation,
                u32::from(!self.encapsulation.is_vxlan()),
                u32::from(!runner.encapsulation.is_vxlan()),
            ),
        ]
        .into_iter()
        .filter(|(_, hub, runner)| hub != runner)
        .map(|(setting, hub, runner)| SettingMismatch {
            setting,
            hub,
            runner,
        })
        .collect();
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(MembershipError::SettingsDiffer(mismatches))
        }
    }
}

/// What a runner sends to register.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationRequest {
    /// The runner's name (its hostname, usually).
    pub name: String,
    /// The runner's reachable underlay address.
    pub local_address: IpAddr,
    /// The runner's vniBase.
    pub vni_base: u32,
    /// The runner's VXLAN UDP port.
    pub port: u16,
    /// The runner's overlay MTU.
    pub mtu: u16,
    /// Whether the runner sends and takes VXLAN remote checksum offload (left out when off,
    /// so that hubs from before the setting admit a runner without it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub remote_checksum_offload: bool,
    /// How the runner's frames cross the underlay (left out for VXLAN, so that hubs from
    /// before the setting admit a VXLAN runner, and refuse an unencapsulated one). Without
    /// encapsulation `localAddress` is the runner's routed address: the switch's own on the
    /// underlay link, where the others route its subnet.
    #[serde(default, skip_serializing_if = "Encapsulation::is_vxlan")]
    pub encapsulation: Encapsulation,
}

impl RegistrationRequest {
    /// The settings part of the request.
    pub fn settings(&self) -> OverlaySettings {
        OverlaySettings {
            vni_base: self.vni_base,
            port: self.port,
            mtu: self.mtu,
            remote_checksum_offload: self.remote_checksum_offload,
            encapsulation: self.encapsulation,
        }
    }
}

/// Checks a registration: the name, the address, then the settings against the hub's.
///
/// # Errors
///
/// [`MembershipError::InvalidName`], [`MembershipError::UnusableAddress`] or
/// [`MembershipError::SettingsDiffer`], the first that applies in that order.
pub fn validate_registration(
    hub: &OverlaySettings,
    request: &RegistrationRequest,
) -> Result<(), MembershipError> {
    validate_runner_name(&request.name)?;
    validate_local_address(request.local_address)?;
    hub.compare(&request.settings())
}

/// How runner IDs map to addresses. The defaults are KohakuRiver's: runner N gets
/// 10.N.0.0/16 with gateway 10.N.0.1 and the hub at 10.N.0.254; the hub is also 10.0.0.1/8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AddressPlan {
    /// The overlay's whole IPv4 range; runner subnets are carved from it. Default 10.0.0.0/8.
    pub overlay: Ipv4Net,
    /// The prefix length of each runner's subnet. Default 16.
    pub runner_prefix_len: u8,
    /// The runner gateway's host number in its subnet. Default 1 (10.N.0.1).
    pub gateway_host: u32,
    /// The hub's host number in each runner subnet. Default 254 (10.N.0.254).
    pub hub_host: u32,
    /// The hub's overlay-wide address (with the overlay's prefix). Default 10.0.0.1.
    pub hub_address: Ipv4Addr,
    /// IPv6 inside the overlay too (default none): runner N's subnet gets the N-th /64 of
    /// this range beside its IPv4 one, with the same host numbers (gateway `::1`, hub
    /// `::fe` by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<AddressPlan6>,
}

/// The IPv6 half of an [`AddressPlan`]: runner N gets the N-th /64 of `overlay`
/// (`fd00:10:0:N::/64` from `fd00:10::/48`); the first /64, which no runner gets, holds the
/// hub's overlay-wide address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressPlan6 {
    /// The overlay's whole IPv6 range, at most a /63 (room for one runner): e.g.
    /// `fd00:10::/48`.
    pub overlay: Ipv6Net,
    /// The hub's overlay-wide IPv6 address, in the first /64 (default: its `::1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_address: Option<Ipv6Addr>,
}

/// The prefix length of a runner's IPv6 subnet.
pub const RUNNER_PREFIX_LEN6: u8 = 64;

impl AddressPlan6 {
    /// The hub's overlay-wide address.
    pub fn hub_address(&self) -> Ipv6Addr {
        self.hub_address
            .unwrap_or_else(|| Ipv6Addr::from_bits(self.overlay.network().to_bits() + 1))
    }

    /// The hub's overlay-wide interface address (with the overlay's prefix).
    pub fn hub_interface(&self) -> Ipv6Net {
        // An Ipv6Net's prefix is at most 128: new_assert cannot fire.
        Ipv6Net::new_assert(self.hub_address(), self.overlay.prefix_len())
    }

    /// The `index`-th /64 of the overlay (0: the hub's).
    pub fn subnet(&self, index: u32) -> Ipv6Net {
        let network = self.overlay.network().to_bits() + (u128::from(index) << 64);
        Ipv6Net::new_assert(Ipv6Addr::from_bits(network), RUNNER_PREFIX_LEN6)
    }

    /// How many runner /64s the range holds (at most `u32::MAX`), after checking it.
    fn max_runners(&self) -> Result<u32, MembershipError> {
        let overlay = self.overlay;
        if overlay.addr() != overlay.network() {
            return Err(AddressPlan::invalid(
                "ipv6.overlay",
                overlay,
                format!("host bits are set; did you mean {}?", overlay.trunc()),
            ));
        }
        if overlay.prefix_len() >= RUNNER_PREFIX_LEN6 {
            return Err(AddressPlan::invalid(
                "ipv6.overlay",
                overlay,
                "must be shorter than /64: runners get a /64 each (e.g. a /48 or a /56)".into(),
            ));
        }
        let bits = u32::from(RUNNER_PREFIX_LEN6 - overlay.prefix_len()).min(32);
        let max = u32::try_from((1u64 << bits) - 1).unwrap_or(u32::MAX);
        let hub = self.hub_address();
        if !self.subnet(0).contains(&hub) || hub == self.subnet(0).network() {
            return Err(AddressPlan::invalid(
                "ipv6.hubAddress",
                hub,
                format!(
                    "must be a host address in {}, the overlay's first /64, which no runner gets",
                    self.subnet(0)
                ),
            ));
        }
        Ok(max)
    }
}

impl Default for AddressPlan {
    fn default() -> AddressPlan {
        AddressPlan {
            // new_assert panics only for a prefix above 32.
            overlay: Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
            runner_prefix_len: 16,
            gateway_host: 1,
            hub_host: 254,
            hub_address: Ipv4Addr::new(10, 0, 0, 1),
            ipv6: None,
        }
    }
}

/// What runner N is given: sent back by the hub on registration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerPlan {
    /// The runner's ID.
    pub runner_id: RunnerId,
    /// Its VNI: `vniBase + N`.
    pub vni: Vni,
    /// Its subnet: 10.N.0.0/16 by default.
    pub subnet: Ipv4Net,
    /// Its gateway, owned by the runner's switch: 10.N.0.1 by default.
    pub gateway: Ipv4Addr,
    /// The hub's address inside the runner's subnet: 10.N.0.254 by default.
    pub hub_address: Ipv4Addr,
    /// The hub's overlay-wide address, reachable from every container: 10.0.0.1/8.
    pub hub_overlay_address: Ipv4Net,
    /// First address of the subnet's IPAM range (the first host).
    pub range_start: Ipv4Addr,
    /// Last address of the subnet's IPAM range (the last host).
    pub range_end: Ipv4Addr,
    /// Addresses inside the range that IPAM must not hand out: the gateway and the hub.
    pub reserved: Vec<Ipv4Addr>,
    /// Its IPv6 half, when the hub's plan has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<RunnerPlan6>,
    /// Without encapsulation: the hub's routed address on the underlay link, the next hop
    /// of the runner's route to the whole overlay (set by the hub when it answers; a
    /// runner from before the setting never registers without encapsulation, so never
    /// reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_router: Option<IpAddr>,
}

/// The IPv6 half of a [`RunnerPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerPlan6 {
    /// Its /64: the N-th of the plan's IPv6 range.
    pub subnet: Ipv6Net,
    /// Its gateway, owned by the runner's switch (`::1` by default).
    pub gateway: Ipv6Addr,
    /// The hub's address inside the runner's /64 (`::fe` by default).
    pub hub_address: Ipv6Addr,
    /// The hub's overlay-wide IPv6 address, with the range's prefix.
    pub hub_overlay_address: Ipv6Net,
}

impl AddressPlan {
    fn invalid(field: &'static str, value: impl fmt::Display, reason: String) -> MembershipError {
        MembershipError::InvalidPlan {
            field,
            value: value.to_string(),
            reason,
        }
    }

    /// Validates the plan for an overlay whose VNI base is `vni_base` and returns how many
    /// runners it serves: one per runner subnet, leaving out the first (it holds the hub's
    /// overlay address). A /16 per runner from a /8 gives 255; from a /12, 15; a /20 from a
    /// /8, 4,095; a /24 from a /8, 65,535. Runner N's VNI is `vniBase + N`, so the plan must
    /// leave that within 24 bits.
    ///
    /// # Errors
    ///
    /// [`MembershipError::InvalidPlan`] naming the field, its value and what is valid.
    pub fn max_runners(&self, vni_base: u32) -> Result<NonZeroU32, MembershipError> {
        let overlay = self.overlay;
        if overlay.addr() != overlay.network() {
            return Err(AddressPlan::invalid(
                "overlay",
                overlay,
                format!("host bits are set; did you mean {}?", overlay.trunc()),
            ));
        }
        let prefix = self.runner_prefix_len;
        if prefix <= overlay.prefix_len() || prefix > 30 {
            return Err(AddressPlan::invalid(
                "runnerPrefixLen",
                prefix,
                format!(
                    "must be longer than the overlay's /{} and at most 30",
                    overlay.prefix_len()
                ),
            ));
        }
        let subnet_bits = u32::from(prefix - overlay.prefix_len());
        // subnet_bits is 1..=30, so this neither overflows nor is below 1.
        let subnets = 1u64 << subnet_bits;
        let max = u32::try_from(subnets - 1).unwrap_or(u32::MAX);
        let max = NonZeroU32::new(max).ok_or_else(|| {
            AddressPlan::invalid("runnerPrefixLen", prefix, "leaves no runner subnet".into())
        })?;
        // With IPv6 inside, as many runners as both halves hold.
        let max = match &self.ipv6 {
            Some(ipv6) => NonZeroU32::new(ipv6.max_runners()?.min(max.get())).unwrap_or(max),
            None => max,
        };

        let host_count = 1u64 << (32 - u32::from(prefix));
        for (field, host) in [
            ("gatewayHost", self.gateway_host),
            ("hubHost", self.hub_host),
        ] {
            if host == 0 || u64::from(host) >= host_count - 1 {
                return Err(AddressPlan::invalid(
                    field,
                    host,
                    format!(
                        "must be a host of a /{prefix} subnet: 1 to {}",
                        host_count - 2
                    ),
                ));
            }
        }
        if self.gateway_host == self.hub_host {
            return Err(AddressPlan::invalid(
                "hubHost",
                self.hub_host,
                "must differ from gatewayHost: the gateway and the hub need an address each".into(),
            ));
        }

        let hub = self.hub_address;
        if !overlay.contains(&hub) || hub == overlay.network() || hub == overlay.broadcast() {
            return Err(AddressPlan::invalid(
                "hubAddress",
                hub,
                format!("must be a host address inside the overlay {overlay}"),
            ));
        }
        let hub_index = (hub.to_bits() - overlay.network().to_bits()) >> (32 - u32::from(prefix));
        if (1..=max.get()).contains(&hub_index) {
            return Err(AddressPlan::invalid(
                "hubAddress",
                hub,
                format!(
                    "lies in runner {hub_index}'s subnet; use an address in {}, which no \
                     runner gets",
                    // prefix was checked to be at most 30 above: new_assert cannot fire.
                    Ipv4Net::new_assert(overlay.network(), prefix)
                ),
            ));
        }

        if u64::from(vni_base) + u64::from(max.get()) > u64::from(Vni::MAX.get()) {
            let reason = match Vni::MAX.get().checked_sub(max.get()) {
                Some(room) => format!(
                    "vniBase + {max} (the plan's last runner) must fit in 24 bits: at most {room}"
                ),
                None => format!(
                    "the plan has {max} runner subnets, more than the {} VNIs: use a shorter \
                     runnerPrefixLen or a smaller overlay",
                    Vni::MAX.get()
                ),
            };
            return Err(AddressPlan::invalid("vniBase", vni_base, reason));
        }
        Ok(max)
    }

    /// Validates the plan (see [`AddressPlan::max_runners`]).
    ///
    /// # Errors
    ///
    /// [`MembershipError::InvalidPlan`].
    pub fn validate(&self, vni_base: u32) -> Result<(), MembershipError> {
        self.max_runners(vni_base).map(|_| ())
    }

    /// The hub's overlay-wide interface address: `hubAddress` with the overlay's prefix
    /// (10.0.0.1/8 by default).
    pub fn hub_interface(&self) -> Ipv4Net {
        // An Ipv4Net's prefix is at most 32, so new_assert cannot fire.
        Ipv4Net::new_assert(self.hub_address, self.overlay.prefix_len())
    }

    /// The subnet of runner `id`, the `id`-th `/runnerPrefixLen` of the overlay.
    fn subnet(&self, id: RunnerId) -> Ipv4Net {
        let shift = 32 - u32::from(self.runner_prefix_len);
        let network = self.overlay.network().to_bits() + (id.get() << shift);
        // Called only after max_runners checked runner_prefix_len <= 30: cannot fire.
        Ipv4Net::new_assert(Ipv4Addr::from_bits(network), self.runner_prefix_len)
    }

    /// What runner `id` gets, for an overlay whose VNI base is `vni_base`.
    ///
    /// # Errors
    ///
    /// [`MembershipError::InvalidPlan`] for an invalid plan, and
    /// [`MembershipError::RunnerOutsidePlan`] if the plan has no subnet for `id`.
    pub fn runner(&self, id: RunnerId, vni_base: u32) -> Result<RunnerPlan, MembershipError> {
        let max = self.max_runners(vni_base)?;
        if id.get() > max.get() {
            return Err(MembershipError::RunnerOutsidePlan { id, max: max.get() });
        }
        let subnet = self.subnet(id);
        let network = subnet.network().to_bits();
        let gateway = Ipv4Addr::from_bits(network + self.gateway_host);
        let hub_address = Ipv4Addr::from_bits(network + self.hub_host);
        // max_runners bounded vni_base + max to 24 bits.
        let vni = Vni::try_from(vni_base + id.get())
            .map_err(|error| AddressPlan::invalid("vniBase", vni_base, error.to_string()))?;
        Ok(RunnerPlan {
            runner_id: id,
            vni,
            subnet,
            gateway,
            hub_address,
            hub_overlay_address: self.hub_interface(),
            range_start: Ipv4Addr::from_bits(network + 1),
            range_end: Ipv4Addr::from_bits(subnet.broadcast().to_bits() - 1),
            reserved: vec![gateway, hub_address],
            ipv6: self.ipv6.map(|ipv6| {
                let subnet = ipv6.subnet(id.get());
                let network = subnet.network().to_bits();
                RunnerPlan6 {
                    subnet,
                    gateway: Ipv6Addr::from_bits(network + u128::from(self.gateway_host)),
                    hub_address: Ipv6Addr::from_bits(network + u128::from(self.hub_host)),
                    hub_overlay_address: ipv6.hub_interface(),
                }
            }),
            hub_router: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(value: u32) -> RunnerId {
        RunnerId::new(value).expect("non-zero")
    }

    fn addr(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 168, 50, last))
    }

    fn capacity(value: u32) -> NonZeroU32 {
        NonZeroU32::new(value).expect("non-zero")
    }

    /// The runner timeout of the takeover tests: the default 20 s.
    const TIMEOUT: u64 = 20_000;

    /// An address of TEST-NET-1 (RFC 5737), as in the issue's example.
    fn test_net(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    /// The peers version depends on the runners (ID, name, address) and the plan, not on
    /// the order they came in, heartbeats or online state, and survives persistence: two
    /// hubs holding the same runners answer the same version.
    #[test]
    fn the_peers_version_follows_the_runners_and_the_plan() {
        let plan = AddressPlan::default();
        let mut a = RunnerPool::default();
        let mut b = RunnerPool::default();
        let empty = a.peers_version(&plan, 100);
        a.register("r1", addr(1), 0).unwrap();
        a.register("r2", addr(2), 0).unwrap();
        b.restore(Runner {
            id: id(2),
            name: "r2".into(),
            address: addr(2),
            registered_ms: 7,
            last_seen_ms: 7,
            state: RunnerState::Offline,
        })
        .unwrap();
        b.register("r1", addr(1), 5).unwrap();
        let version = a.peers_version(&plan, 100);
        assert_ne!(version, empty);
        assert_eq!(b.peers_version(&plan, 100), version, "order and times");
        a.touch("r1", 99).unwrap();
        a.mark_offline(1_000_000, 10);
        assert_eq!(a.peers_version(&plan, 100), version, "liveness");
        let restored: RunnerPool =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(restored.peers_version(&plan, 100), version, "persisted");
        assert_ne!(a.peers_version(&plan, 200), version, "the VNI base");
        a.register("r2", addr(9), 0).unwrap();
        let moved = a.peers_version(&plan, 100);
        assert_ne!(moved, version, "an address");
        a.register("r2", addr(2), 0).unwrap();
        assert_eq!(a.peers_version(&plan, 100), version, "moved back");
        a.remove("r2");
        a.remove("r1");
        assert_eq!(a.peers_version(&plan, 100), empty);
        let peers = b.peers(&plan, 100);
        assert_eq!(peers.version, version);
        let ids: Vec<u32> = peers.runners.iter().map(|p| p.id.get()).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(peers.runners[1].address, addr(2));
    }

    #[test]
    fn runner_states_are_written_pascal_case_and_read_in_either_case() {
        assert_eq!(
            serde_json::to_string(&RunnerState::Online).unwrap(),
            "\"Online\""
        );
        assert_eq!(RunnerState::Offline.to_string(), "Offline");
        for (text, state) in [
            ("\"offline\"", RunnerState::Offline),
            ("\"Online\"", RunnerState::Online),
        ] {
            assert_eq!(serde_json::from_str::<RunnerState>(text).unwrap(), state);
        }
    }

    #[test]
    fn first_free_id_and_same_id_on_reconnect() {
        let mut pool = RunnerPool::default();
        let a = pool.register("runner-a", addr(11), 1_000).expect("valid");
        assert_eq!(
            a,
            Registration {
                id: id(1),
                outcome: RegistrationOutcome::Assigned
            }
        );
        let b = pool.register("runner-b", addr(12), 2_000).expect("valid");
        assert_eq!(b.id, id(2));
        let again = pool.register("runner-a", addr(11), 3_000).expect("valid");
        assert_eq!(
            again,
            Registration {
                id: id(1),
                outcome: RegistrationOutcome::Reconnected {
                    previous_address: None
                }
            }
        );
        let moved = pool.register("runner-a", addr(21), 4_000).expect("valid");
        assert_eq!(
            moved.outcome,
            RegistrationOutcome::Reconnected {
                previous_address: Some(addr(11))
            }
        );
        assert_eq!(pool.get("runner-a").map(|r| r.address), Some(addr(21)));
        // A freed ID is the lowest free one again.
        assert!(pool.remove("runner-a").is_some());
        let c = pool.register("runner-c", addr(13), 5_000).expect("valid");
        assert_eq!(c.id, id(1));
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn full_pool_reclaims_least_recently_seen() {
        let mut pool = RunnerPool::default();
        for n in 1..=255u8 {
            let name = format!("runner-{n}");
            let registration = pool.register(&name, addr(n), u64::from(n)).expect("valid");
            assert_eq!(registration.id, id(u32::from(n)));
        }
        assert!(pool.is_full());
        // runner-1 was seen last at 1 ms, but a heartbeat makes runner-2 the oldest.
        pool.touch("runner-1", 1_000).expect("known");
        pool.mark_offline(1_000, 500);
        let registration = pool.register("newcomer", addr(200), 2_000).expect("valid");
        assert_eq!(registration.id, id(2));
        assert_eq!(
            registration.outcome,
            RegistrationOutcome::Reclaimed {
                evicted: EvictedRunner {
                    id: id(2),
                    name: "runner-2".into(),
                    address: addr(2),
                    last_seen_ms: 2,
                    was_online: false,
                }
            }
        );
        assert!(pool.get("runner-2").is_none());
        assert_eq!(
            pool.get_by_id(id(2)).map(|r| r.name.as_str()),
            Some("newcomer")
        );
        assert_eq!(
            pool.touch("runner-2", 2_001),
            Err(MembershipError::UnknownRunner {
                name: "runner-2".into()
            })
        );
        assert_eq!(pool.len(), 255);
        // The evicted runner comes back: it takes the next least recently seen ID (3).
        let back = pool.register("runner-2", addr(2), 3_000).expect("valid");
        assert_eq!(back.id, id(3));
    }

    #[test]
    fn lru_ties_go_to_the_lower_id() {
        let mut pool = RunnerPool::new(capacity(3));
        for name in ["a", "b", "c"] {
            pool.register(name, addr(1), 10).expect("valid");
        }
        let registration = pool.register("d", addr(4), 20).expect("valid");
        assert_eq!(registration.id, id(1));
        let RegistrationOutcome::Reclaimed { evicted } = registration.outcome else {
            panic!("expected a reclaim, got {:?}", registration.outcome);
        };
        assert_eq!(evicted.name, "a");
        assert!(evicted.was_online, "never marked offline");
    }

    #[test]
    fn heartbeats_and_offline() {
        let mut pool = RunnerPool::default();
        pool.register("a", addr(1), 0).expect("valid");
        pool.register("b", addr(2), 0).expect("valid");
        assert_eq!(pool.touch("a", 25_000), Ok(id(1)));
        assert_eq!(pool.mark_offline(29_999, 30_000), Vec::<RunnerId>::new());
        assert_eq!(pool.mark_offline(30_000, 30_000), vec![id(2)]);
        assert_eq!(
            pool.mark_offline(40_000, 30_000),
            Vec::<RunnerId>::new(),
            "only once"
        );
        assert_eq!(pool.get("b").map(|r| r.state), Some(RunnerState::Offline));
        assert_eq!(pool.get("a").map(|r| r.state), Some(RunnerState::Online));
        assert_eq!(
            pool.get("b").map(|r| r.id),
            Some(id(2)),
            "offline keeps the ID"
        );
        assert_eq!(pool.touch("b", 41_000), Ok(id(2)));
        assert_eq!(pool.get("b").map(|r| r.state), Some(RunnerState::Online));
        assert_eq!(pool.mark_offline(60_000, 30_000), vec![id(1)]);
        // A clock that stepped back does not mark anyone offline.
        assert_eq!(pool.mark_offline(10, 30_000), Vec::<RunnerId>::new());
    }

    #[test]
    fn persisted_pool_survives_a_restart() {
        let mut pool = RunnerPool::default();
        pool.register("a", addr(1), 100).expect("valid");
        pool.register("b", addr(2), 200).expect("valid");
        pool.remove("a");
        pool.register("c", addr(3), 300).expect("valid");
        let json = serde_json::to_string(&pool).expect("serialise");
        assert_eq!(
            json,
            r#"{"version":1,"capacity":255,"runners":[{"id":1,"name":"c","address":"192.168.50.3","registeredMs":300,"lastSeenMs":300},{"id":2,"name":"b","address":"192.168.50.2","registeredMs":200,"lastSeenMs":200}]}"#
        );
        let mut restored: RunnerPool = serde_json::from_str(&json).expect("restore");
        assert!(restored.runners().all(|r| r.state == RunnerState::Offline));
        let again = restored.register("b", addr(2), 400).expect("valid");
        assert_eq!(again.id, id(2));
        assert_eq!(
            restored.register("d", addr(4), 500).expect("valid").id,
            id(3)
        );
    }

    #[test]
    fn corrupt_persisted_state_is_refused() {
        let cases = [
            (
                r#"{"version":2,"capacity":255,"runners":[]}"#,
                "version 2 is not supported",
            ),
            (
                r#"{"version":1,"capacity":0,"runners":[]}"#,
                "capacity is 0",
            ),
            (
                r#"{"version":1,"capacity":5,"runners":[{"id":6,"name":"a","address":"192.0.2.1","registeredMs":0,"lastSeenMs":0}]}"#,
                "above the capacity",
            ),
            (
                r#"{"version":1,"capacity":5,"runners":[{"id":0,"name":"a","address":"192.0.2.1","registeredMs":0,"lastSeenMs":0}]}"#,
                "runner ID 0 is out of range",
            ),
            (
                r#"{"version":1,"capacity":5,"runners":[{"id":1,"name":"a","address":"192.0.2.1","registeredMs":0,"lastSeenMs":0},{"id":1,"name":"b","address":"192.0.2.2","registeredMs":0,"lastSeenMs":0}]}"#,
                "ID 1 is held by both",
            ),
            (
                r#"{"version":1,"capacity":5,"runners":[{"id":1,"name":"a","address":"192.0.2.1","registeredMs":0,"lastSeenMs":0},{"id":2,"name":"a","address":"192.0.2.2","registeredMs":0,"lastSeenMs":0}]}"#,
                "appears twice",
            ),
            (
                r#"{"version":1,"capacity":5,"runners":[],"extra":1}"#,
                "unknown field",
            ),
        ];
        for (json, expected) in cases {
            let error = serde_json::from_str::<RunnerPool>(json)
                .expect_err(json)
                .to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn capacity_changes() {
        let mut pool = RunnerPool::default();
        pool.register("a", addr(1), 0).expect("valid");
        pool.register("b", addr(2), 0).expect("valid");
        assert_eq!(
            pool.set_capacity(capacity(1)),
            Err(MembershipError::CapacityBelowAssigned {
                capacity: 1,
                id: id(2),
                name: "b".into()
            })
        );
        assert_eq!(pool.capacity(), capacity(255));
        pool.set_capacity(capacity(2)).expect("both IDs fit");
        assert!(pool.is_full());
    }

    #[test]
    fn names_and_addresses_are_validated() {
        let mut pool = RunnerPool::default();
        for bad in ["", "has space", "ünïcode", &"x".repeat(254)] {
            assert!(
                matches!(
                    pool.register(bad, addr(1), 0),
                    Err(MembershipError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        let loopback = pool.register("a", IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        assert_eq!(
            loopback.expect_err("refused").to_string(),
            "localAddress 127.0.0.1 is a loopback address: set localAddress to the underlay \
             address the other nodes reach"
        );
        for (bad, kind) in [
            ("0.0.0.0", "the unspecified address"),
            ("::", "the unspecified address"),
            ("::1", "a loopback address"),
            ("::ffff:127.0.0.1", "a loopback address"),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
        ] {
            let address: IpAddr = bad.parse().expect("address");
            assert_eq!(
                validate_local_address(address),
                Err(MembershipError::UnusableAddress { address, kind }),
                "{bad}"
            );
        }
        assert!(validate_local_address("2001:db8::5".parse().expect("address")).is_ok());
        assert!(pool.is_empty(), "refused registrations change nothing");
    }

    fn request(mtu: u16) -> RegistrationRequest {
        RegistrationRequest {
            encapsulation: Encapsulation::Vxlan,
            name: "runner-a".into(),
            local_address: addr(11),
            vni_base: 100,
            port: 4789,
            mtu,
            remote_checksum_offload: false,
        }
    }

    #[test]
    fn settings_mismatch_names_the_setting_and_both_values() {
        let hub = OverlaySettings::default();
        let error = validate_registration(&hub, &request(1400)).expect_err("refused");
        assert_eq!(error.to_string(), "mtu differs: hub 1450, runner 1400");
        let all_wrong = RegistrationRequest {
            encapsulation: Encapsulation::Vxlan,
            vni_base: 200,
            port: 8472,
            ..request(9000)
        };
        let error = validate_registration(&hub, &all_wrong).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "vniBase differs: hub 100, runner 200; port differs: hub 4789, runner 8472; \
             mtu differs: hub 1450, runner 9000"
        );
        assert!(validate_registration(&hub, &request(1450)).is_ok());
        let rco = RegistrationRequest {
            encapsulation: Encapsulation::Vxlan,
            remote_checksum_offload: true,
            ..request(1450)
        };
        let error = validate_registration(&hub, &rco).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "remoteChecksumOffload differs: hub false, runner true"
        );
        // On the wire only when on, so that older hubs admit runners without it.
        let json = serde_json::to_string(&rco).expect("serialise");
        assert!(json.contains(r#""remoteChecksumOffload":true"#), "{json}");
        let json = serde_json::to_string(&request(1450)).expect("serialise");
        assert!(!json.contains("remoteChecksumOffload"), "{json}");
        assert!(!json.contains("encapsulation"), "{json}");
        // Without encapsulation on one side only.
        let routed = RegistrationRequest {
            encapsulation: Encapsulation::None,
            ..request(1450)
        };
        let error = validate_registration(&hub, &routed).expect_err("refused");
        assert_eq!(
            error.to_string(),
            "encapsulation differs: hub VXLAN, runner None"
        );
        let json = serde_json::to_string(&routed).expect("serialise");
        assert!(json.contains(r#""encapsulation":"None""#), "{json}");
        let back: RegistrationRequest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, routed);
        let hub = OverlaySettings {
            encapsulation: Encapsulation::None,
            ..OverlaySettings::default()
        };
        assert!(validate_registration(&hub, &routed).is_ok());
    }

    #[test]
    fn registration_request_wire_form() {
        let json = r#"{"name":"runner-a","localAddress":"192.168.50.11","vniBase":100,"port":4789,"mtu":1450}"#;
        let parsed: RegistrationRequest = serde_json::from_str(json).expect("parse");
        assert_eq!(parsed, request(1450));
        assert!(
            serde_json::from_str::<RegistrationRequest>(
                r#"{"name":"a","localAddress":"192.0.2.1","vniBase":1,"port":1,"mtu":1,"x":1}"#
            )
            .is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn admit_validates_then_registers() {
        let hub = OverlaySettings::default();
        let plan = AddressPlan::default();
        let mut pool = RunnerPool::default();
        let error = pool
            .admit(&hub, &plan, &request(1400), 0, TIMEOUT, IdWidth::Wide)
            .expect_err("mtu differs");
        assert_eq!(error.to_string(), "mtu differs: hub 1450, runner 1400");
        assert!(pool.is_empty(), "nothing registered on error");
        let admission = pool
            .admit(&hub, &plan, &request(1450), 0, TIMEOUT, IdWidth::Wide)
            .expect("valid");
        assert_eq!(admission.registration.id, id(1));
        assert_eq!(admission.plan.vni.get(), 101);
        assert_eq!(admission.plan.subnet.to_string(), "10.1.0.0/16");

        // A pool handing out more IDs than the plan has subnets is refused before registering.
        let small_plan = AddressPlan {
            overlay: "10.0.0.0/12".parse().expect("net"),
            ..AddressPlan::default()
        };
        let other = RegistrationRequest {
            encapsulation: Encapsulation::Vxlan,
            name: "runner-b".into(),
            ..request(1450)
        };
        let error = pool
            .admit(&hub, &small_plan, &other, 0, TIMEOUT, IdWidth::Wide)
            .expect_err("pool too big");
        assert!(
            error.to_string().contains("subnets for 15 runners"),
            "{error}"
        );
        assert_eq!(pool.len(), 1);
    }

    /// Admits `name` from `address` at `now` with the default settings and plan and a
    /// runner timeout of [`TIMEOUT`].
    fn admit_as(
        pool: &mut RunnerPool,
        name: &str,
        address: IpAddr,
        now: u64,
    ) -> Result<Admission, MembershipError> {
        let request = RegistrationRequest {
            encapsulation: Encapsulation::Vxlan,
            name: name.into(),
            local_address: address,
            ..request(1450)
        };
        pool.admit(
            &OverlaySettings::default(),
            &AddressPlan::default(),
            &request,
            now,
            TIMEOUT,
            IdWidth::Narrow,
        )
    }

    #[test]
    fn a_name_online_from_another_address_is_refused() {
        let mut pool = RunnerPool::default();
        let first = admit_as(&mut pool, "r1", test_net(10), 1_000).expect("first registration");
        assert_eq!(first.registration.id, id(1));
        pool.touch("r1", 10_000).expect("heartbeat");

        // 19.999 s after the last heartbeat: still online.
        let error = admit_as(&mut pool, "r1", test_net(11), 29_999)
            .expect_err("r1 is online from another address");
        assert_eq!(
            error,
            MembershipError::NameOnlineElsewhere {
                name: "r1".into(),
                online_from: test_net(10),
                refused_from: test_net(11),
                timeout_ms: TIMEOUT,
            }
        );
        assert_eq!(
            error.to_string(),
            "runner \"r1\" is online from 192.0.2.10; refusing the registration from \
             192.0.2.11 (stop the other runner, or wait until it is offline: 20 s without \
             heartbeats)"
        );
        // Nothing changed: the online runner keeps its name, ID, address and last-seen time.
        let runner = pool.get("r1").expect("still held");
        assert_eq!(
            (runner.id, runner.address, runner.last_seen_ms, runner.state),
            (id(1), test_net(10), 10_000, RunnerState::Online)
        );
        assert_eq!(pool.len(), 1);
        assert_eq!(
            pool.check_takeover("r1", test_net(11), 29_999, TIMEOUT),
            Err(error)
        );
        // Another name from that address is a runner of its own.
        let other = admit_as(&mut pool, "r2", test_net(11), 29_999).expect("another name");
        assert_eq!(other.registration.id, id(2));
    }

    #[test]
    fn the_same_address_registers_again_while_online() {
        let mut pool = RunnerPool::default();
        admit_as(&mut pool, "r1", test_net(10), 1_000).expect("first registration");
        // A restart of the same runner: at once, and in the IPv4-mapped IPv6 form.
        let mapped: IpAddr = "::ffff:192.0.2.10".parse().expect("address");
        for (address, now) in [(test_net(10), 2_000), (mapped, 3_000)] {
            let again = admit_as(&mut pool, "r1", address, now).expect("same address");
            assert_eq!(
                again.registration,
                Registration {
                    id: id(1),
                    outcome: RegistrationOutcome::Reconnected {
                        previous_address: None
                    }
                }
            );
            assert_eq!(pool.get("r1").map(|r| r.last_seen_ms), Some(now));
        }
    }

    #[test]
    fn a_name_moves_once_its_runner_is_offline() {
        let mut pool = RunnerPool::default();
        admit_as(&mut pool, "r0", test_net(9), 500).expect("r0");
        admit_as(&mut pool, "r1", test_net(10), 1_000).expect("r1");

        // Silent for the whole timeout: offline, even before a sweep marked it so.
        assert_eq!(pool.get("r1").map(|r| r.state), Some(RunnerState::Online));
        let moved =
            admit_as(&mut pool, "r1", test_net(11), 21_000).expect("offline: the name moves");
        assert_eq!(
            moved.registration,
            Registration {
                id: id(2),
                outcome: RegistrationOutcome::Reconnected {
                    previous_address: Some(test_net(10))
                }
            },
            "the ID is kept"
        );
        assert_eq!(moved.plan.subnet.to_string(), "10.2.0.0/16");
        assert_eq!(pool.get("r1").map(|r| r.address), Some(test_net(11)));

        // Now the runner at the old address is the newcomer, refused while the moved one is
        // online.
        let error = admit_as(&mut pool, "r1", test_net(10), 22_000)
            .expect_err("the moved runner is online");
        assert!(
            matches!(
                error,
                MembershipError::NameOnlineElsewhere { online_from, refused_from, .. }
                    if online_from == test_net(11) && refused_from == test_net(10)
            ),
            "{error:?}"
        );

        // Marked offline by a sweep: it moves back, keeping its ID.
        assert_eq!(pool.mark_offline(50_000, TIMEOUT), vec![id(1), id(2)]);
        let back =
            admit_as(&mut pool, "r1", test_net(10), 50_000).expect("offline: the name moves");
        assert_eq!(back.registration.id, id(2));

        // After a hub restart nobody is online: the first to register takes the name.
        let json = serde_json::to_string(&pool).expect("serialise");
        let mut restored: RunnerPool = serde_json::from_str(&json).expect("restore");
        let after_restart = admit_as(&mut restored, "r1", test_net(12), 50_100)
            .expect("restored runners are offline");
        assert_eq!(after_restart.registration.id, id(2));
    }

    #[test]
    fn register_moves_a_name_whatever_its_state() {
        // The hub's own configuration (static runners) is final: no takeover check.
        let mut pool = RunnerPool::default();
        pool.register("s1", test_net(10), 1_000).expect("valid");
        let moved = pool.register("s1", test_net(11), 1_001).expect("valid");
        assert_eq!(
            moved.outcome,
            RegistrationOutcome::Reconnected {
                previous_address: Some(test_net(10))
            }
        );
    }

    #[test]
    fn timeouts_are_written_in_seconds() {
        assert_eq!(seconds(&20_000), "20 s");
        assert_eq!(seconds(&1_500), "1.5 s");
        assert_eq!(seconds(&250), "0.25 s");
        assert_eq!(seconds(&0), "0 s");
    }

    #[test]
    fn default_plan_is_kohakuriver() {
        let plan = AddressPlan::default();
        assert_eq!(plan.max_runners(100), Ok(capacity(255)));
        assert_eq!(plan.hub_interface().to_string(), "10.0.0.1/8");
        let runner = plan.runner(id(7), 100).expect("in plan");
        assert_eq!(
            runner,
            RunnerPlan {
                runner_id: id(7),
                vni: Vni::new(107).expect("fits"),
                subnet: "10.7.0.0/16".parse().expect("net"),
                gateway: Ipv4Addr::new(10, 7, 0, 1),
                hub_address: Ipv4Addr::new(10, 7, 0, 254),
                hub_overlay_address: "10.0.0.1/8".parse().expect("net"),
                range_start: Ipv4Addr::new(10, 7, 0, 1),
                range_end: Ipv4Addr::new(10, 7, 255, 254),
                reserved: vec![Ipv4Addr::new(10, 7, 0, 1), Ipv4Addr::new(10, 7, 0, 254)],
                ipv6: None,
                hub_router: None,
            }
        );
        let last = plan.runner(id(255), 100).expect("in plan");
        assert_eq!(last.subnet.to_string(), "10.255.0.0/16");
        assert_eq!(last.vni.get(), 355);
        let json = serde_json::to_value(&runner).expect("serialise");
        assert_eq!(json["subnet"], "10.7.0.0/16");
        assert_eq!(json["hubOverlayAddress"], "10.0.0.1/8");
        assert_eq!(json["runnerId"], 7);
    }

    /// IPv6 inside: runner N gets the N-th /64 beside its IPv4 subnet, gateway ::1 and the
    /// hub ::fe in it; the range bounds the runner count; bad ranges are named.
    #[test]
    fn ipv6_plan() {
        let ipv6 = |overlay: &str| AddressPlan {
            ipv6: Some(AddressPlan6 {
                overlay: overlay.parse().expect("net"),
                hub_address: None,
            }),
            ..AddressPlan::default()
        };
        let plan = ipv6("fd00:10::/48");
        assert_eq!(plan.max_runners(100), Ok(capacity(255)));
        let runner = plan.runner(id(7), 100).expect("in plan");
        let six = runner.ipv6.expect("an IPv6 half");
        assert_eq!(six.subnet.to_string(), "fd00:10:0:7::/64");
        assert_eq!(six.gateway.to_string(), "fd00:10:0:7::1");
        assert_eq!(six.hub_address.to_string(), "fd00:10:0:7::fe");
        assert_eq!(six.hub_overlay_address.to_string(), "fd00:10::1/48");
        assert_eq!(
            runner.subnet.to_string(),
            "10.7.0.0/16",
            "the IPv4 half unchanged"
        );
        let json = serde_json::to_value(&runner).expect("serialise");
        assert_eq!(json["ipv6"]["subnet"], "fd00:10:0:7::/64");
        let back: RunnerPlan = serde_json::from_value(json).expect("parse back");
        assert_eq!(back, runner);
        // A plan without IPv6 says nothing of it (older runners read it).
        let json = serde_json::to_value(AddressPlan::default().runner(id(1), 100).unwrap());
        assert!(json.expect("serialise").get("ipv6").is_none());
        // A /60 holds 15 runner /64s after the hub's.
        assert_eq!(ipv6("fd00:10::/60").max_runners(100), Ok(capacity(15)));
        for (bad, why) in [
            ("fd00:10::/64", "must be shorter than /64"),
            ("fd00:10::1/48", "host bits are set"),
        ] {
            let err = ipv6(bad).validate(100).expect_err(bad).to_string();
            assert!(
                err.contains("ipv6.overlay") && err.contains(why),
                "{bad}: {err}"
            );
        }
        let mut hub_elsewhere = ipv6("fd00:10::/48");
        if let Some(six) = &mut hub_elsewhere.ipv6 {
            six.hub_address = Some("fd00:10:0:3::1".parse().expect("address"));
        }
        let err = hub_elsewhere
            .validate(100)
            .expect_err("in runner 3's /64")
            .to_string();
        assert!(err.contains("ipv6.hubAddress"), "{err}");
    }

    /// Plans wider than 255 runners: a /20 per runner out of a /8 serves 4,095, a /24 65,535;
    /// the VNIs must fit; IPv6 inside bounds the count by its /64s.
    #[test]
    fn wide_plans() {
        let plan = AddressPlan {
            runner_prefix_len: 20,
            hub_host: 4094,
            ..AddressPlan::default()
        };
        assert_eq!(plan.max_runners(100), Ok(capacity(4095)));
        let last = plan.runner(id(4095), 100).expect("in plan");
        assert_eq!(last.subnet.to_string(), "10.255.240.0/20");
        assert_eq!(last.gateway, Ipv4Addr::new(10, 255, 240, 1));
        assert_eq!(last.hub_address, Ipv4Addr::new(10, 255, 255, 254));
        assert_eq!(last.vni.get(), 4195);
        let r300 = plan.runner(id(300), 100).expect("in plan");
        assert_eq!(r300.subnet.to_string(), "10.18.192.0/20");
        assert_eq!(
            plan.runner(id(4096), 100),
            Err(MembershipError::RunnerOutsidePlan {
                id: id(4096),
                max: 4095
            })
        );
        let per_24 = AddressPlan {
            runner_prefix_len: 24,
            ..AddressPlan::default()
        };
        assert_eq!(per_24.max_runners(100), Ok(capacity(65_535)));
        // VNIs are 24 bits: a plan of 4M /30s from a /8 fits only below vniBase 12,582,913.
        let per_30 = AddressPlan {
            runner_prefix_len: 30,
            gateway_host: 1,
            hub_host: 2,
            ..AddressPlan::default()
        };
        assert_eq!(per_30.max_runners(100), Ok(capacity(4_194_303)));
        assert_eq!(
            per_30.validate(12_582_913).map_err(|e| e.to_string()),
            Err(
                "address plan: vniBase 12582913: vniBase + 4194303 (the plan's last runner) \
                 must fit in 24 bits: at most 12582912"
                    .into()
            )
        );
        let huge = AddressPlan {
            overlay: "0.0.0.0/1".parse().expect("net"),
            runner_prefix_len: 30,
            gateway_host: 1,
            hub_host: 2,
            hub_address: Ipv4Addr::new(0, 0, 0, 1),
            ipv6: None,
        };
        let error = huge
            .validate(1)
            .expect_err("more runners than VNIs")
            .to_string();
        assert!(error.contains("more than the 16777215 VNIs"), "{error}");
        // IPv6 inside: a /48 has 65,535 runner /64s, a /52 4,095.
        let six = |overlay: &str| AddressPlan {
            ipv6: Some(AddressPlan6 {
                overlay: overlay.parse().expect("net"),
                hub_address: None,
            }),
            ..per_24
        };
        assert_eq!(six("fd00:10::/48").max_runners(100), Ok(capacity(65_535)));
        assert_eq!(six("fd00:10::/52").max_runners(100), Ok(capacity(4095)));
        let r4000 = six("fd00:10::/48").runner(id(4000), 100).expect("in plan");
        assert_eq!(
            r4000.ipv6.expect("IPv6 half").subnet.to_string(),
            "fd00:10:0:fa0::/64"
        );
    }

    /// Runners that read their ID as a byte (no features header) get IDs up to 255 only,
    /// whatever the pool's capacity; wider runners get the rest.
    #[test]
    fn hubs_sharing_a_pool_prefer_their_own_ids() {
        let cap = |n| NonZeroU32::new(n).unwrap();
        let share = |index| Some(IdShare { index, count: 2 });
        let mut pool = RunnerPool::new(cap(6));
        let id = |r: Registration| r.id.get();
        let first = pool.register_with("a", addr(1), 0, IdWidth::Wide, share(1));
        assert_eq!(first.map(id), Ok(2), "the second hub starts at 2");
        let next = pool.register_with("b", addr(2), 0, IdWidth::Wide, share(1));
        assert_eq!(next.map(id), Ok(4));
        let other = pool.register_with("c", addr(3), 0, IdWidth::Wide, share(0));
        assert_eq!(other.map(id), Ok(1), "the first hub starts at 1");
        pool.register_with("d", addr(4), 0, IdWidth::Wide, share(1))
            .unwrap();
        // The second hub's share (2, 4, 6) is full: it takes the lowest free ID.
        let spill = pool.register_with("e", addr(5), 0, IdWidth::Wide, share(1));
        assert_eq!(spill.map(id), Ok(3));
        // A share out of range is no share.
        let mut pool = RunnerPool::new(cap(6));
        let odd = pool.register_with(
            "a",
            addr(1),
            0,
            IdWidth::Wide,
            Some(IdShare { index: 5, count: 2 }),
        );
        assert_eq!(odd.map(id), Ok(1));
    }

    #[test]
    fn a_restored_runner_displaces_its_id_and_its_name() {
        let mut pool = RunnerPool::new(NonZeroU32::new(4).unwrap());
        pool.register("a", addr(1), 0).unwrap();
        pool.register("b", addr(2), 0).unwrap();
        let runner = |id, name: &str| Runner {
            id: RunnerId::new(id).unwrap(),
            name: name.into(),
            address: addr(9),
            registered_ms: 5,
            last_seen_ms: 5,
            state: RunnerState::Offline,
        };
        // "b" (ID 2) is given ID 1 elsewhere: "a" loses 1, "b" leaves 2.
        let displaced = pool.restore(runner(1, "b")).unwrap();
        let mut names: Vec<String> = displaced.into_iter().map(|r| r.name).collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.get("b").map(|r| r.id.get()), Some(1));
        assert!(pool.get_by_id(RunnerId::new(2).unwrap()).is_none());
        assert!(matches!(
            pool.restore(runner(5, "c")),
            Err(MembershipError::CapacityBelowAssigned { .. })
        ));
        assert!(pool.restore(runner(3, "not a name!")).is_err());
        assert_eq!(pool.len(), 1, "a refused runner changes nothing");
    }

    #[test]
    fn narrow_runners_get_ids_up_to_255() {
        assert_eq!(IdWidth::from_features(None), IdWidth::Narrow);
        assert_eq!(IdWidth::from_features(Some("other")), IdWidth::Narrow);
        assert_eq!(
            IdWidth::from_features(Some("other, Runner-ID-u32")),
            IdWidth::Wide
        );
        let mut pool = RunnerPool::new(capacity(300));
        for n in 1..=254u32 {
            let registration = pool
                .register_as(&format!("r{n}"), addr(1), u64::from(n), IdWidth::Wide)
                .expect("free");
            assert_eq!(registration.id, id(n));
        }
        let narrow = pool
            .register_as("old-1", addr(2), 1_000, IdWidth::Narrow)
            .expect("255 is free");
        assert_eq!(narrow.id, id(255));
        // 1..=255 held and the pool not full: a narrow runner is refused, the pool unchanged.
        let before = pool.clone();
        let error = pool
            .register_as("old-2", addr(3), 1_001, IdWidth::Narrow)
            .expect_err("no narrow ID");
        assert_eq!(
            error,
            MembershipError::NarrowIdUnavailable {
                name: "old-2".into(),
                id: id(256)
            }
        );
        assert!(error.to_string().contains("upgrade vswitchd"), "{error}");
        assert_eq!(pool, before);
        // A wide one gets 256.
        let wide = pool
            .register_as("new-1", addr(4), 1_002, IdWidth::Wide)
            .expect("free");
        assert_eq!(wide.id, id(256));
        // A name holding an ID above 255 cannot come back narrow (a downgraded runner).
        let error = pool
            .register_as("new-1", addr(4), 1_003, IdWidth::Narrow)
            .expect_err("holds 256");
        assert_eq!(
            error,
            MembershipError::NarrowIdUnavailable {
                name: "new-1".into(),
                id: id(256)
            }
        );
        // A full pool reclaims, for a narrow runner, the least recently seen of IDs 1..=255.
        for n in 257..=300u32 {
            pool.register_as(&format!("w{n}"), addr(5), 10, IdWidth::Wide)
                .expect("free");
        }
        assert!(pool.is_full());
        let reclaimed = pool
            .register_as("old-3", addr(6), 2_000, IdWidth::Narrow)
            .expect("reclaims");
        assert_eq!(reclaimed.id, id(1), "r1 was seen at 1 ms; w257.. at 10 ms");
        assert!(pool.get("r1").is_none());
        let wide_reclaim = pool
            .register_as("new-2", addr(7), 2_001, IdWidth::Wide)
            .expect("reclaims");
        assert_eq!(
            wide_reclaim.id,
            id(2),
            "r2, seen at 2 ms, is the oldest of all"
        );
    }

    /// A pool of 4,095 runners: IDs in order, a freed one is given again, and it persists.
    #[test]
    fn a_pool_of_4095() {
        let mut pool = RunnerPool::new(capacity(4095));
        for n in 1..=4095u32 {
            let registration = pool
                .register(&format!("runner-{n}"), addr(9), u64::from(n))
                .expect("free");
            assert_eq!(registration.id, id(n));
        }
        assert!(pool.is_full());
        assert!(pool.remove("runner-3000").is_some());
        let again = pool.register("late", addr(9), 5_000).expect("free");
        assert_eq!(again.id, id(3000));
        let text = serde_json::to_string(&pool).expect("serialise");
        let restored: RunnerPool = serde_json::from_str(&text).expect("restore");
        assert_eq!(restored.capacity(), capacity(4095));
        assert_eq!(restored.get("late").map(|r| r.id), Some(id(3000)));
        assert_eq!(restored.len(), 4095);
        assert_eq!(
            pool.set_capacity(capacity(255)),
            Err(MembershipError::CapacityBelowAssigned {
                capacity: 255,
                id: id(4095),
                name: "runner-4095".into()
            })
        );
    }

    #[test]
    fn custom_plan() {
        // 172.16.0.0/12 with a /20 per runner: 255 runners (of 255 possible subnets).
        let plan = AddressPlan {
            overlay: "172.16.0.0/12".parse().expect("net"),
            runner_prefix_len: 20,
            gateway_host: 1,
            hub_host: 4094,
            hub_address: Ipv4Addr::new(172, 16, 0, 1),
            ipv6: None,
        };
        assert_eq!(plan.max_runners(5000), Ok(capacity(255)));
        let runner = plan.runner(id(3), 5000).expect("in plan");
        assert_eq!(runner.subnet.to_string(), "172.16.48.0/20");
        assert_eq!(runner.gateway, Ipv4Addr::new(172, 16, 48, 1));
        assert_eq!(runner.hub_address, Ipv4Addr::new(172, 16, 63, 254));
        assert_eq!(runner.vni.get(), 5003);
        assert_eq!(runner.hub_overlay_address.to_string(), "172.16.0.1/12");

        // A /16 per runner from a /12: only 15 runners.
        let small = AddressPlan {
            overlay: "10.16.0.0/12".parse().expect("net"),
            hub_address: Ipv4Addr::new(10, 16, 0, 1),
            ..AddressPlan::default()
        };
        assert_eq!(small.max_runners(100), Ok(capacity(15)));
        assert_eq!(
            small.runner(id(16), 100),
            Err(MembershipError::RunnerOutsidePlan {
                id: id(16),
                max: 15
            })
        );
        assert_eq!(
            small
                .runner(id(15), 100)
                .expect("in plan")
                .subnet
                .to_string(),
            "10.31.0.0/16"
        );
    }

    #[test]
    fn plan_validation_errors() {
        let base = AddressPlan::default();
        let cases: [(AddressPlan, u32, &str); 9] = [
            (
                AddressPlan {
                    overlay: "10.1.0.0/8".parse().expect("net"),
                    ..base
                },
                100,
                "address plan: overlay 10.1.0.0/8: host bits are set; did you mean 10.0.0.0/8?",
            ),
            (
                AddressPlan {
                    runner_prefix_len: 8,
                    ..base
                },
                100,
                "address plan: runnerPrefixLen 8: must be longer than the overlay's /8 and at most 30",
            ),
            (
                AddressPlan {
                    runner_prefix_len: 31,
                    ..base
                },
                100,
                "address plan: runnerPrefixLen 31: must be longer than the overlay's /8 and at most 30",
            ),
            (
                AddressPlan {
                    gateway_host: 0,
                    ..base
                },
                100,
                "address plan: gatewayHost 0: must be a host of a /16 subnet: 1 to 65534",
            ),
            (
                AddressPlan {
                    hub_host: 65535,
                    ..base
                },
                100,
                "address plan: hubHost 65535: must be a host of a /16 subnet: 1 to 65534",
            ),
            (
                AddressPlan {
                    hub_host: 1,
                    ..base
                },
                100,
                "address plan: hubHost 1: must differ from gatewayHost: the gateway and the hub need an address each",
            ),
            (
                AddressPlan {
                    hub_address: Ipv4Addr::new(192, 168, 0, 1),
                    ..base
                },
                100,
                "address plan: hubAddress 192.168.0.1: must be a host address inside the overlay 10.0.0.0/8",
            ),
            (
                AddressPlan {
                    hub_address: Ipv4Addr::new(10, 3, 0, 1),
                    ..base
                },
                100,
                "address plan: hubAddress 10.3.0.1: lies in runner 3's subnet; use an address in 10.0.0.0/16, which no runner gets",
            ),
            (
                base,
                16_777_000,
                "address plan: vniBase 16777000: vniBase + 255 (the plan's last runner) must fit in 24 bits: at most 16776960",
            ),
        ];
        for (plan, vni_base, expected) in cases {
            let error = plan.validate(vni_base).expect_err(expected);
            assert_eq!(error.to_string(), expected);
            assert!(plan.runner(id(1), vni_base).is_err());
        }
        assert!(base.validate(16_776_960).is_ok());
        let parsed: AddressPlan = serde_json::from_str(r#"{"runnerPrefixLen":20}"#).expect("ok");
        assert_eq!(parsed.overlay, base.overlay, "unset fields take defaults");
        assert!(serde_json::from_str::<AddressPlan>(r#"{"bogus":1}"#).is_err());
    }

    #[test]
    fn runner_id_bounds() {
        assert_eq!(RunnerId::new(0), None);
        assert_eq!(RunnerId::MIN.get(), 1);
        assert_eq!(RunnerId::NARROW_MAX.get(), 255);
        assert_eq!(RunnerId::new(70_000).map(RunnerId::get), Some(70_000));
        assert_eq!(serde_json::to_string(&id(4095)).unwrap(), "4095");
        assert_eq!(
            serde_json::from_str::<RunnerId>("4095").ok(),
            Some(id(4095))
        );
        assert_eq!(
            RunnerId::try_from(0),
            Err(MembershipError::InvalidRunnerId { id: 0 })
        );
        assert!(serde_json::from_str::<RunnerId>("0").is_err());
        assert_eq!(serde_json::from_str::<RunnerId>("9").expect("ok"), id(9));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register(usize),
        Touch(usize),
        Advance(u64),
        MarkOffline(u64),
        Remove(usize),
        Restart,
    }

    fn op(names: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..names).prop_map(Op::Register),
            3 => (0..names).prop_map(Op::Touch),
            3 => (0u64..5_000).prop_map(Op::Advance),
            1 => (0u64..10_000).prop_map(Op::MarkOffline),
            1 => (0..names).prop_map(Op::Remove),
            1 => Just(Op::Restart),
        ]
    }

    /// Runs `ops` against a pool and a simple model of it: name -> (ID, last seen). With
    /// `prefill`, names 0..cap first register one millisecond apart, so the pool starts full.
    fn check_against_model(cap: u32, prefill: bool, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut pool = RunnerPool::new(capacity(cap));
        let mut model: HashMap<String, (RunnerId, u64)> = HashMap::new();
        let mut now = 1_000u64;
        let name = |index: usize| format!("runner-{index}");
        let prefill_ops: Vec<Op> = if prefill {
            (0..cap as usize)
                .flat_map(|index| [Op::Register(index), Op::Advance(1)])
                .collect()
        } else {
            Vec::new()
        };
        for op in prefill_ops.iter().chain(ops) {
            match op {
                Op::Register(index) => {
                    let name = name(*index);
                    let registration = pool.register(&name, addr(1), now).expect("valid");
                    if let Some(&(known, _)) = model.get(&name) {
                        prop_assert_eq!(registration.id, known, "same name, same ID");
                        let reconnected = matches!(
                            registration.outcome,
                            RegistrationOutcome::Reconnected { .. }
                        );
                        prop_assert!(reconnected);
                    } else if model.len() < cap as usize {
                        let lowest = (1..=cap)
                            .filter_map(RunnerId::new)
                            .find(|id| model.values().all(|(held, _)| held != id))
                            .expect("a free ID exists");
                        prop_assert_eq!(registration.id, lowest, "lowest free ID");
                        prop_assert_eq!(&registration.outcome, &RegistrationOutcome::Assigned);
                    } else {
                        let (lru_name, &(lru_id, lru_seen)) = model
                            .iter()
                            .min_by_key(|(_, (id, seen))| (*seen, *id))
                            .expect("full model is not empty");
                        let RegistrationOutcome::Reclaimed { evicted } = &registration.outcome
                        else {
                            return Err(TestCaseError::fail("a full pool must reclaim"));
                        };
                        prop_assert_eq!(&evicted.name, lru_name);
                        prop_assert_eq!(evicted.id, lru_id);
                        prop_assert_eq!(evicted.last_seen_ms, lru_seen);
                        prop_assert_eq!(registration.id, lru_id);
                        let lru_name = lru_name.clone();
                        model.remove(&lru_name);
                    }
                    model.insert(name, (registration.id, now));
                }
                Op::Touch(index) => {
                    let name = name(*index);
                    match (pool.touch(&name, now), model.get_mut(&name)) {
                        (Ok(id), Some((known, seen))) => {
                            prop_assert_eq!(id, *known);
                            *seen = now;
                        }
                        (Err(MembershipError::UnknownRunner { .. }), None) => {}
                        (result, entry) => {
                            return Err(TestCaseError::fail(format!(
                                "touch {name}: pool {result:?}, model {entry:?}"
                            )));
                        }
                    }
                }
                Op::Advance(ms) => now += ms,
                Op::MarkOffline(timeout) => {
                    for id in pool.mark_offline(now, *timeout) {
                        let runner = pool.get_by_id(id).expect("marked runners exist");
                        prop_assert!(now - runner.last_seen_ms >= *timeout);
                    }
                }
                Op::Remove(index) => {
                    let name = name(*index);
                    prop_assert_eq!(pool.remove(&name).is_some(), model.remove(&name).is_some());
                }
                Op::Restart => {
                    let json = serde_json::to_string(&pool).expect("serialise");
                    pool = serde_json::from_str(&json).expect("restore");
                }
            }
            // Invariants: the pool and the model agree; IDs are unique and in range.
            prop_assert_eq!(pool.len(), model.len());
            prop_assert!(pool.len() <= cap as usize);
            let mut seen_ids = std::collections::HashSet::new();
            for runner in pool.runners() {
                prop_assert!(runner.id.get() <= cap);
                prop_assert!(seen_ids.insert(runner.id), "ID {} twice", runner.id);
                prop_assert_eq!(model.get(&runner.name).map(|(id, _)| *id), Some(runner.id));
                prop_assert_eq!(pool.get(&runner.name).map(|r| r.id), Some(runner.id));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn ids_stay_unique_and_stable(
            cap in 1u32..=6,
            prefill in any::<bool>(),
            ops in proptest::collection::vec(op(10), 1..120),
        ) {
            check_against_model(cap, prefill, &ops)?;
        }
    }

    proptest! {
        // Each case runs up to 855 operations on a full pool of 255 (with restarts that
        // serialise it): fewer cases keep the suite quick.
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn ids_stay_unique_and_stable_at_full_size(
            ops in proptest::collection::vec(op(300), 100..600),
        ) {
            check_against_model(255, true, &ops)?;
        }
    }
}
