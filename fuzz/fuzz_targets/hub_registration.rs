//! The hub's registration messages, as its API reads them (JSON bodies of `register` and
//! `heartbeat`), applied to the runner-ID pool. Checked after every message, against a model
//! of which name holds which ID:
//! - a runner that registers again gets its ID back; a new name gets the lowest free ID or,
//!   when the pool is full, the ID of the runner evicted, and only that runner loses its ID;
//! - a heartbeat answers the name's ID, or "unknown" for a name holding none;
//! - every name maps to the runner holding its ID, and the pool never exceeds its capacity;
//! - the persisted form of the pool restores to the same pool, every runner offline (a
//!   restarted hub has heard from nobody yet).
//!
//! Input: lines; the first byte of each says what the rest is: `r` a registration request,
//! `h` a heartbeat, `t` the clock advances by the next byte's seconds, `s` the sweep that
//! marks silent runners offline, `x` a runner name to remove.
#![no_main]

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use libfuzzer_sys::fuzz_target;
use vswitch::api::hub::HeartbeatRequest;
use vxlan::membership::{IdWidth, RegistrationOutcome, RunnerState};
use vxlan::{AddressPlan, MembershipError, OverlaySettings, RegistrationRequest, RunnerPool};

/// A small pool, so that reclaiming is reached.
const CAPACITY: u32 = 4;
/// The hub's runner timeout.
const TIMEOUT_MS: u64 = 30_000;

fuzz_target!(|data: &[u8]| {
    let settings = OverlaySettings::default();
    let plan = AddressPlan::default();
    let mut pool = RunnerPool::new(NonZeroU32::new(CAPACITY).expect("non-zero"));
    let mut model: BTreeMap<String, u32> = BTreeMap::new();
    let mut now = 0u64;
    for line in data.split(|&b| b == b'\n') {
        let Some((&op, body)) = line.split_first() else {
            continue;
        };
        match op {
            b'r' => {
                let Ok(request) = serde_json::from_slice::<RegistrationRequest>(body) else {
                    continue;
                };
                let before = pool.clone();
                match pool.admit(&settings, &plan, &request, now, TIMEOUT_MS, IdWidth::Wide) {
                    Ok(admission) => {
                        let id = admission.registration.id.get();
                        match admission.registration.outcome {
                            RegistrationOutcome::Reconnected { .. } => {
                                assert_eq!(model.get(&request.name), Some(&id), "ID kept");
                            }
                            RegistrationOutcome::Assigned => {
                                assert!(!model.contains_key(&request.name));
                                let lowest = (1..=CAPACITY)
                                    .find(|candidate| !model.values().any(|held| held == candidate));
                                assert_eq!(Some(id), lowest, "the lowest free ID");
                            }
                            RegistrationOutcome::Reclaimed { evicted } => {
                                assert!(!model.contains_key(&request.name));
                                assert_eq!(model.len(), CAPACITY as usize, "only when full");
                                assert_eq!(model.remove(&evicted.name), Some(id));
                            }
                        }
                        model.insert(request.name.clone(), id);
                        assert_eq!(admission.plan.runner_id.get(), id);
                    }
                    Err(error) => {
                        assert!(!error.to_string().is_empty());
                        assert_eq!(pool, before, "a refused registration changes nothing");
                    }
                }
            }
            b'h' => {
                let Ok(request) = serde_json::from_slice::<HeartbeatRequest>(body) else {
                    continue;
                };
                match pool.touch(&request.name, now) {
                    Ok(id) => assert_eq!(model.get(&request.name), Some(&id.get())),
                    Err(MembershipError::UnknownRunner { .. }) => {
                        assert!(!model.contains_key(&request.name));
                    }
                    Err(error) => panic!("heartbeat: {error}"),
                }
            }
            b't' => now += u64::from(body.first().copied().unwrap_or(1)) * 1000,
            b's' => {
                for id in pool.mark_offline(now, TIMEOUT_MS) {
                    assert!(model.values().any(|&held| held == id.get()));
                }
            }
            b'x' => {
                let name = String::from_utf8_lossy(body);
                let removed = pool.remove(&name).map(|runner| runner.id.get());
                assert_eq!(removed, model.remove(name.as_ref()));
            }
            _ => continue,
        }
        assert!(pool.len() <= CAPACITY as usize);
        assert_eq!(pool.len(), model.len());
        for runner in pool.runners() {
            assert_eq!(model.get(&runner.name), Some(&runner.id.get()));
            assert_eq!(pool.get(&runner.name).map(|r| r.id), Some(runner.id));
        }
        let persisted = serde_json::to_vec(&pool).expect("the pool serialises");
        let restored: RunnerPool = serde_json::from_slice(&persisted).expect("and restores");
        // A restarted hub has heard from nobody yet: every runner comes back offline.
        let saved = |pool: &RunnerPool| -> Vec<_> {
            pool.runners()
                .map(|r| (r.id, r.name.clone(), r.address, r.registered_ms, r.last_seen_ms))
                .collect()
        };
        assert_eq!(saved(&restored), saved(&pool));
        assert!(restored.runners().all(|r| r.state == RunnerState::Offline));
        assert_eq!(restored.capacity(), pool.capacity());
    }
});
