//! Per-backend health: a three-state machine driven by check results, and the check settings.
//!
//! # What and why
//! The switch probes each backend (the probing itself, with its sockets and timers, lives in
//! vswitch) and feeds every result to the backend's [`BackendHealth`] with
//! [`BackendHealth::record`]. The machine debounces: a healthy backend turns
//! [`Unhealthy`](HealthState::Unhealthy) after `unhealthy_threshold` consecutive failures,
//! and an unhealthy one turns [`Healthy`](HealthState::Healthy) after `healthy_threshold`
//! consecutive successes (HAProxy's `fall`/`rise`, Kubernetes' `failureThreshold`/
//! `successThreshold`). A [`Transition`] is returned only when the state changes, so the
//! caller recompiles the service's Maglev table only then.
//!
//! # `Unknown`: eligible, on probation
//! A backend starts [`Unknown`](HealthState::Unknown): no check has answered yet. We count
//! it as **eligible** for new flows, like Kubernetes, which treats an endpoint without a
//! readiness probe as ready, and like Cilium's load balancer before its health-checker
//! extension (which starts backends unhealthy until the first check, Cilium PRs #40780 and
//! #41092). Our reasons:
//! - health checks are optional; a service without them has only `Unknown` backends and
//!   must still work;
//! - when vswitch restarts, every backend is `Unknown` again. If that meant "ineligible",
//!   every service would black-hole for a check interval on each restart, and the Maglev
//!   tables would be rebuilt twice (empty, then full);
//! - a backend added while the others are established is `Unknown` for at most one
//!   interval plus timeout, and its first result settles it at once (next point).
//!
//! `Unknown` is a probation, not a state that needs thresholds: its **first** result decides
//! (`ok` → `Healthy`, failure → `Unhealthy`). A backend that has never answered and then
//! fails is more likely not started than flapping, and it must not keep receiving new flows
//! for `unhealthy_threshold` more intervals. `Unknown` → `Healthy` changes no eligibility,
//! so it costs no table rebuild ([`Transition::eligibility_changed`]).

use std::fmt;

/// Where a backend stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// No check result yet (or checks are off). Eligible for new flows.
    #[default]
    Unknown,
    /// The last `healthy_threshold` checks (or the first one) succeeded.
    Healthy,
    /// The last `unhealthy_threshold` checks (or the first one) failed. Not eligible.
    Unhealthy,
}

impl HealthState {
    /// Whether a backend in this state may receive new flows: `Unknown` and `Healthy`.
    pub const fn is_eligible(self) -> bool {
        !matches!(self, HealthState::Unhealthy)
    }

    /// The state's name as the API and CLI print it.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "Unknown",
            HealthState::Healthy => "Healthy",
            HealthState::Unhealthy => "Unhealthy",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of [`HealthState`] caused by one check result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: HealthState,
    /// The state after.
    pub to: HealthState,
}

impl Transition {
    /// Whether the backend's eligibility for new flows changed, i.e. whether its service's
    /// table must be rebuilt. `Unknown` → `Healthy` does not.
    pub const fn eligibility_changed(self) -> bool {
        self.from.is_eligible() != self.to.is_eligible()
    }
}

/// Smallest accepted `interval_ms`.
pub const MIN_INTERVAL_MS: u32 = 100;
/// Largest accepted `interval_ms` (one hour).
pub const MAX_INTERVAL_MS: u32 = 3_600_000;
/// Largest accepted `healthy_threshold` / `unhealthy_threshold`.
pub const MAX_THRESHOLD: u32 = 100;

/// How a service's backends are checked.
///
/// The defaults are HAProxy's `rise 2` and `fall 3`, with a 5 s interval and a 2 s timeout
/// (HAProxy checks every 2 s; Kubernetes probes every 10 s with a 1 s timeout): a dead
/// backend stops receiving new flows within about 3 × 5 s + 2 s = 17 s, and a recovered one
/// is back after two good checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheckConfig {
    /// Time between two checks of one backend, in milliseconds
    /// ([`MIN_INTERVAL_MS`]..=[`MAX_INTERVAL_MS`]).
    pub interval_ms: u32,
    /// How long a check may take before it counts as failed, in milliseconds
    /// (1..=`interval_ms`, so checks of one backend never overlap).
    pub timeout_ms: u32,
    /// Consecutive successes that turn an unhealthy backend healthy (1..=[`MAX_THRESHOLD`]).
    pub healthy_threshold: u32,
    /// Consecutive failures that turn a healthy backend unhealthy (1..=[`MAX_THRESHOLD`]).
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> HealthCheckConfig {
        HealthCheckConfig {
            interval_ms: 5_000,
            timeout_ms: 2_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// One problem with a [`HealthCheckConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HealthConfigError {
    /// A field is outside its range.
    #[error("{field} is {value}; it must be between {min} and {max}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u32,
        /// The smallest valid value.
        min: u32,
        /// The largest valid value.
        max: u32,
    },
    /// The timeout is longer than the interval.
    #[error(
        "timeout_ms is {timeout_ms}; it must not exceed interval_ms ({interval_ms}), or checks \
         of one backend would overlap"
    )]
    TimeoutExceedsInterval {
        /// The timeout.
        timeout_ms: u32,
        /// The interval.
        interval_ms: u32,
    },
}

impl HealthConfigError {
    /// The name of the field at fault.
    pub const fn field(&self) -> &'static str {
        match self {
            HealthConfigError::OutOfRange { field, .. } => field,
            HealthConfigError::TimeoutExceedsInterval { .. } => "timeout_ms",
        }
    }
}

impl HealthCheckConfig {
    /// Checks every field and returns every problem, each naming its field.
    ///
    /// # Errors
    /// The list of problems, in field order, when there is at least one.
    pub fn validate(&self) -> Result<(), Vec<HealthConfigError>> {
        let mut errors = Vec::new();
        let mut range = |field: &'static str, value: u32, min: u32, max: u32| {
            let ok = (min..=max).contains(&value);
            if !ok {
                errors.push(HealthConfigError::OutOfRange {
                    field,
                    value,
                    min,
                    max,
                });
            }
            ok
        };
        let interval_ok = range(
            "interval_ms",
            self.interval_ms,
            MIN_INTERVAL_MS,
            MAX_INTERVAL_MS,
        );
        let timeout_ok = range("timeout_ms", self.timeout_ms, 1, MAX_INTERVAL_MS);
        if interval_ok && timeout_ok && self.timeout_ms > self.interval_ms {
            errors.push(HealthConfigError::TimeoutExceedsInterval {
                timeout_ms: self.timeout_ms,
                interval_ms: self.interval_ms,
            });
        }
        let mut range = |field: &'static str, value: u32| {
            if !(1..=MAX_THRESHOLD).contains(&value) {
                errors.push(HealthConfigError::OutOfRange {
                    field,
                    value,
                    min: 1,
                    max: MAX_THRESHOLD,
                });
            }
        };
        range("healthy_threshold", self.healthy_threshold);
        range("unhealthy_threshold", self.unhealthy_threshold);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// One backend's health state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    state: HealthState,
    /// Consecutive successes (0 after a failure).
    successes: u32,
    /// Consecutive failures (0 after a success).
    failures: u32,
    rise: u32,
    fall: u32,
}

impl BackendHealth {
    /// A machine in [`HealthState::Unknown`] with `config`'s thresholds (a threshold of 0 is
    /// taken as 1).
    pub fn new(config: &HealthCheckConfig) -> BackendHealth {
        BackendHealth {
            state: HealthState::Unknown,
            successes: 0,
            failures: 0,
            rise: config.healthy_threshold.max(1),
            fall: config.unhealthy_threshold.max(1),
        }
    }

    /// The current state.
    pub const fn state(&self) -> HealthState {
        self.state
    }

    /// Consecutive successes so far (0 after a failure).
    pub const fn successes(&self) -> u32 {
        self.successes
    }

    /// Consecutive failures so far (0 after a success).
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    /// Takes new thresholds, keeping the state and the counts (a backend does not go back
    /// to probation because its service's settings changed).
    pub fn set_thresholds(&mut self, config: &HealthCheckConfig) {
        self.rise = config.healthy_threshold.max(1);
        self.fall = config.unhealthy_threshold.max(1);
    }

    /// Back to [`HealthState::Unknown`] with no history, e.g. when the backend's address
    /// changed and past results say nothing about the new one.
    pub fn reset(&mut self) {
        self.state = HealthState::Unknown;
        self.successes = 0;
        self.failures = 0;
    }

    /// Records one check result; returns the transition if the state changed.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let next = match (self.state, ok) {
            (HealthState::Unknown, true) => HealthState::Healthy,
            (HealthState::Unknown, false) => HealthState::Unhealthy,
            (HealthState::Healthy, false) if self.failures >= self.fall => HealthState::Unhealthy,
            (HealthState::Unhealthy, true) if self.successes >= self.rise => HealthState::Healthy,
            (state, _) => state,
        };
        if next == self.state {
            return None;
        }
        let transition = Transition {
            from: self.state,
            to: next,
        };
        self.state = next;
        Some(transition)
    }
}

impl Default for BackendHealth {
    fn default() -> BackendHealth {
        BackendHealth::new(&HealthCheckConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Healthy, Unhealthy, Unknown};
    use proptest::prelude::*;

    fn config(rise: u32, fall: u32) -> HealthCheckConfig {
        HealthCheckConfig {
            healthy_threshold: rise,
            unhealthy_threshold: fall,
            ..HealthCheckConfig::default()
        }
    }

    fn t(from: HealthState, to: HealthState) -> Option<Transition> {
        Some(Transition { from, to })
    }

    #[test]
    fn unknown_is_eligible_and_settles_on_the_first_result() {
        assert!(Unknown.is_eligible() && Healthy.is_eligible() && !Unhealthy.is_eligible());
        let mut h = BackendHealth::new(&config(2, 3));
        assert_eq!(h.state(), Unknown);
        assert_eq!(h.record(true), t(Unknown, Healthy));
        assert!(!t(Unknown, Healthy).unwrap().eligibility_changed());

        let mut h = BackendHealth::new(&config(2, 3));
        assert_eq!(h.record(false), t(Unknown, Unhealthy));
        assert!(t(Unknown, Unhealthy).unwrap().eligibility_changed());
    }

    #[test]
    fn fall_and_rise_thresholds() {
        let mut h = BackendHealth::new(&config(2, 3));
        h.record(true);
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(false), None);
        assert_eq!(h.failures(), 2);
        assert_eq!(h.record(false), t(Healthy, Unhealthy));
        assert_eq!(h.record(false), None);
        assert_eq!(h.record(true), None);
        assert_eq!(h.successes(), 1);
        assert_eq!(h.record(true), t(Unhealthy, Healthy));
        assert_eq!(h.state(), Healthy);
    }

    #[test]
    fn an_opposite_result_restarts_the_count() {
        let mut h = BackendHealth::new(&config(2, 3));
        h.record(true);
        for _ in 0..10 {
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(false), None);
            assert_eq!(h.record(true), None);
        }
        assert_eq!(h.state(), Healthy);
    }

    #[test]
    fn thresholds_of_one_and_zero() {
        let mut h = BackendHealth::new(&config(0, 1));
        h.record(true);
        assert_eq!(h.record(false), t(Healthy, Unhealthy));
        assert_eq!(h.record(true), t(Unhealthy, Healthy));
    }

    #[test]
    fn reset_and_new_thresholds() {
        let mut h = BackendHealth::new(&config(2, 3));
        h.record(false);
        h.set_thresholds(&config(1, 1));
        assert_eq!(h.state(), Unhealthy);
        assert_eq!(h.record(true), t(Unhealthy, Healthy));
        h.reset();
        assert_eq!((h.state(), h.successes(), h.failures()), (Unknown, 0, 0));
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(HealthCheckConfig::default().validate(), Ok(()));
        let bounds = HealthCheckConfig {
            interval_ms: MIN_INTERVAL_MS,
            timeout_ms: MIN_INTERVAL_MS,
            healthy_threshold: 1,
            unhealthy_threshold: MAX_THRESHOLD,
        };
        assert_eq!(bounds.validate(), Ok(()));
    }

    #[test]
    fn validate_names_every_bad_field() {
        let bad = HealthCheckConfig {
            interval_ms: 0,
            timeout_ms: 0,
            healthy_threshold: 0,
            unhealthy_threshold: 101,
        };
        let errors = bad.validate().unwrap_err();
        let fields: Vec<&str> = errors.iter().map(HealthConfigError::field).collect();
        assert_eq!(
            fields,
            [
                "interval_ms",
                "timeout_ms",
                "healthy_threshold",
                "unhealthy_threshold"
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            "interval_ms is 0; it must be between 100 and 3600000"
        );

        let overlapping = HealthCheckConfig {
            interval_ms: 1_000,
            timeout_ms: 1_001,
            healthy_threshold: 0,
            ..HealthCheckConfig::default()
        };
        let errors = overlapping.validate().unwrap_err();
        assert_eq!(
            errors,
            [
                HealthConfigError::TimeoutExceedsInterval {
                    timeout_ms: 1_001,
                    interval_ms: 1_000
                },
                HealthConfigError::OutOfRange {
                    field: "healthy_threshold",
                    value: 0,
                    min: 1,
                    max: MAX_THRESHOLD
                },
            ]
        );
        assert!(
            errors[0]
                .to_string()
                .contains("must not exceed interval_ms (1000)")
        );
    }

    proptest! {
        /// Against a model: the state is a function of the result history.
        #[test]
        fn matches_a_model(rise in 1u32..5, fall in 1u32..5, results in proptest::collection::vec(any::<bool>(), 0..60)) {
            let mut h = BackendHealth::new(&config(rise, fall));
            let mut state = Unknown;
            for (i, &ok) in results.iter().enumerate() {
                let run = results[..=i].iter().rev().take_while(|&&r| r == ok).count();
                let run = u32::try_from(run).unwrap();
                let expected = match (state, ok) {
                    (Unknown, true) => Healthy,
                    (Unknown, false) => Unhealthy,
                    (Healthy, false) if run >= fall => Unhealthy,
                    (Unhealthy, true) if run >= rise => Healthy,
                    (s, _) => s,
                };
                let transition = h.record(ok);
                prop_assert_eq!(transition.is_some(), expected != state);
                state = expected;
                prop_assert_eq!(h.state(), state);
            }
        }
    }
}
