//! The runner's agent: registers with the hub, applies the plan it answers, then sends
//! heartbeats; retries with backoff while the hub is away or refuses, and says why in the
//! Overlay's status.
//!
//! ```text
//!            +----------------------------------------------+
//!            v                                              |
//!   register --200--> runner_joined --ok--> heartbeat every N s --200--> (again)
//!      |                   |                     |  404 / other ID: register now
//!      | error             | error               |  error: status, backoff, register
//!      v                   v                     v
//!   status hubUnreachable / failed "...; retrying in Ns", wait (1 s doubling to 30 s)
//! ```
//!
//! While the hub is away the runner keeps its last plan (the controller persisted it) and
//! keeps attaching containers; registering again gives the same name the same ID.
//! Each state change is logged once, not each retry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use super::client::{HubCallError, HubClient};
use super::controller_call;
use crate::control::resource::{HubClientTls, OverlayState, TlsMode};
use crate::control::{ApiError, Controller, OverlayAgentConfig};

/// Shortest interval between heartbeats, whatever the Overlay says.
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// What a runner needs to register and stay registered.
#[derive(Debug, Clone)]
pub(super) struct RunnerSettings {
    /// The registration it sends.
    pub request: vxlan::RegistrationRequest,
    /// The hubs' APIs, in order of preference (`spec.hub`, then its alternates).
    pub clients: Vec<HubClient>,
    /// Interval between heartbeats.
    pub heartbeat: Duration,
}

/// What plain HTTP to the hub means, for the status and the log.
pub const PLAINTEXT_WARNING: &str = "the hub is reached over plain HTTP (spec.hub.tls.mode: \
    Disabled): the token and the registrations cross the underlay in clear";

impl RunnerSettings {
    /// The runner's settings from the agent configuration.
    ///
    /// # Errors
    /// Why the runner cannot run: no hub, or a TLS setting that cannot be used (a CA file
    /// gone since the Overlay was applied, say).
    pub fn from_config(config: &OverlayAgentConfig) -> Result<RunnerSettings, String> {
        let hub = config
            .hub
            .as_ref()
            .ok_or("the runner Overlay names no hub: not registering; set spec.hub")?;
        let mut clients = Vec::new();
        for (i, (address, port, tls)) in hub.all().into_iter().enumerate() {
            let field = if i == 0 {
                "spec.hub.tls".to_owned()
            } else {
                format!("spec.hub.alternates[{}].tls", i - 1)
            };
            clients.push(
                hub_client(address, port, &hub.token, tls, config.local_address)
                    .map_err(|error| format!("{field}{error}"))?,
            );
        }
        Ok(RunnerSettings {
            request: vxlan::RegistrationRequest {
                name: config.name.clone(),
                // Without encapsulation the hub routes this runner's subnet to its routed
                // address; the registration itself still comes from `local_address`.
                local_address: config.routed_address.unwrap_or(config.local_address),
                vni_base: config.vni_base,
                port: config.port,
                mtu: config.mtu,
                remote_checksum_offload: config.remote_checksum_offload,
                encapsulation: config.encapsulation,
            },
            clients,
            heartbeat: config.heartbeat.max(MIN_HEARTBEAT),
        })
    }
}

/// A client of the hub at `address:port`; errors start with the rest of the field path
/// (`.fingerprint: ...`).
fn hub_client(
    address: std::net::IpAddr,
    port: u16,
    token: &str,
    tls: Option<&HubClientTls>,
    local: std::net::IpAddr,
) -> Result<HubClient, String> {
    {
        let client = HubClient::new(address, port, token).with_source(local);
        let trust = match tls {
            Some(tls) if tls.mode == TlsMode::Disabled => None,
            Some(HubClientTls {
                ca_file: Some(file),
                server_name,
                ..
            }) => Some(crate::tls::HubTrust::Ca {
                file: file.into(),
                server_name: server_name.clone(),
            }),
            Some(HubClientTls {
                fingerprint: Some(fingerprint),
                ..
            }) => Some(crate::tls::HubTrust::Pinned(
                crate::tls::Fingerprint::parse(fingerprint)
                    .map_err(|error| format!(".fingerprint: {error}"))?,
            )),
            // Validation refuses this; without a way to trust the hub, send nothing.
            _ => {
                return Err(" names no fingerprint or caFile: not registering".into());
            }
        };
        match trust {
            None => Ok(client),
            Some(trust) => {
                let (tls, name) = crate::tls::client_config(&trust, address)
                    .map_err(|error| format!(": {error}"))?;
                Ok(client.with_tls(tls, name))
            }
        }
    }
}

/// What went wrong in one attempt, for the status message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// Registration or heartbeat got no answer, or one that could not be used.
    Call {
        /// The hub API's address.
        hub: SocketAddr,
        /// What the call did (`registration`, `heartbeat`).
        call: &'static str,
        /// Why it failed.
        error: HubCallError,
    },
    /// The hub's plan could not be applied on this node.
    Plan {
        /// The ID the hub gave.
        id: vxlan::RunnerId,
        /// The subnet the hub gave.
        subnet: ipnet::Ipv4Net,
        /// Why the controller refused it.
        error: ApiError,
    },
}

impl Trouble {
    /// The Overlay state it puts the runner in.
    pub fn state(&self) -> OverlayState {
        match self {
            Trouble::Call { .. } => OverlayState::HubUnreachable,
            Trouble::Plan { .. } => OverlayState::Failed,
        }
    }

    /// Why, without the retry delay: what the log says once per change.
    pub fn reason(&self) -> String {
        match self {
            Trouble::Call { hub, error, .. } if matches!(error, HubCallError::Unreachable(_)) => {
                format!("cannot reach the hub at {hub}: {error}")
            }
            Trouble::Call {
                hub,
                error: HubCallError::Untrusted(error),
                ..
            } => format!(
                "the hub at {hub} is not trusted, nothing was sent: {error} (check \
                 spec.hub.tls against the hub's certificate)"
            ),
            Trouble::Call {
                call,
                error: HubCallError::Status { status, message },
                ..
            } if (400..500).contains(status) => format!("the hub refused {call}: {message}"),
            Trouble::Call {
                call,
                error: HubCallError::Status { status, message },
                ..
            } => format!("the hub failed to handle the {call} (HTTP {status}): {message}"),
            Trouble::Call {
                hub, call, error, ..
            } => format!("{call} with the hub at {hub} failed: {error}"),
            Trouble::Plan { id, subnet, error } => {
                format!("cannot apply the hub's plan (runner {id}, subnet {subnet}): {error}")
            }
        }
    }

    /// The status message: the reason and when the next attempt is.
    pub fn message(&self, retry_in: Duration) -> String {
        format!("{}; retrying in {}s", self.reason(), retry_in.as_secs())
    }
}

/// Reports the runner's state to the controller, and logs each change once.
struct Reporter {
    controller: Arc<Controller>,
    /// What was logged last, so a retry with the same outcome is not logged again.
    last_logged: Option<String>,
    /// The status message while registered ([`PLAINTEXT_WARNING`] without TLS).
    warning: Option<String>,
}

impl Reporter {
    async fn status(&self, state: OverlayState, message: Option<String>) {
        controller_call(&self.controller, move |c| c.runner_status(state, message)).await;
    }

    fn log_once(&mut self, key: String) -> bool {
        if self.last_logged.as_deref() == Some(key.as_str()) {
            return false;
        }
        self.last_logged = Some(key);
        true
    }

    async fn registering(&mut self, hub: SocketAddr) {
        if self.log_once("registering".into()) {
            tracing::info!(%hub, "registering with the hub");
        }
        self.status(OverlayState::Registering, None).await;
    }

    async fn registered(&mut self, plan: &vxlan::RunnerPlan) {
        if self.log_once(format!("registered {}", plan.runner_id)) {
            tracing::info!(
                id = %plan.runner_id,
                subnet = %plan.subnet,
                vni = %plan.vni,
                gateway = %plan.gateway,
                "registered with the hub"
            );
        }
        self.status(OverlayState::Registered, self.warning.clone())
            .await;
    }

    async fn trouble(&mut self, trouble: &Trouble, retry_in: Duration) {
        let reason = trouble.reason();
        if self.log_once(reason.clone()) {
            tracing::warn!("{reason}; retrying with backoff (1 s doubling to 30 s)");
        }
        self.status(trouble.state(), Some(trouble.message(retry_in)))
            .await;
    }
}

/// Whether a failed call is worth trying at another hub: no answer, or a failure of that
/// hub (a refusal of the registration itself would be the same at every hub).
fn try_another_hub(error: &HubCallError) -> bool {
    match error {
        HubCallError::Unreachable(_) | HubCallError::Untrusted(_) | HubCallError::BadAnswer(_) => {
            true
        }
        HubCallError::Status { status, .. } => *status >= 500,
        HubCallError::Request(_) => false,
    }
}

/// Runs the runner agent; never returns (the supervisor aborts or drops it to stop it).
///
/// With several hubs it registers with the first that answers and stays with it; when that
/// one stops answering it goes on to the next at once (the hubs share the store, so the
/// runner keeps its ID), and waits with backoff only after every hub failed in a row.
pub(super) async fn run(controller: Arc<Controller>, settings: RunnerSettings) {
    let count = settings.clients.len();
    let Some(first) = settings.clients.first() else {
        return;
    };
    let warning = (!first.uses_tls()).then(|| PLAINTEXT_WARNING.to_owned());
    if let Some(warning) = &warning {
        tracing::warn!(hub = %first.address(), "{warning}");
    }
    let mut reporter = Reporter {
        controller: Arc::clone(&controller),
        last_logged: None,
        warning,
    };
    let mut backoff = Backoff::new();
    // The version of the runner list this runner follows (reaching the others directly).
    let mut followed = controller_call(&controller, Controller::runner_peers_version)
        .await
        .flatten();
    let mut current = 0;
    // Hubs that failed one after the other since the last success.
    let mut failed = 0;
    reporter.registering(first.address()).await;
    loop {
        let client = &settings.clients[current];
        let hub = client.address();
        let plan = match client.register(&settings.request).await {
            Ok(plan) => plan,
            Err(error) => {
                let another = try_another_hub(&error);
                let trouble = Trouble::Call {
                    hub,
                    call: "registration",
                    error,
                };
                if another && count > 1 {
                    current = (current + 1) % count;
                    failed += 1;
                    if failed < count {
                        let next = settings.clients[current].address();
                        tracing::warn!(%hub, %next, "{}; trying the next hub", trouble.reason());
                        continue;
                    }
                }
                failed = 0;
                wait_after(&mut reporter, &mut backoff, &trouble).await;
                continue;
            }
        };
        failed = 0;
        let joined = {
            let plan = plan.clone();
            let hub = hub.ip();
            controller_call(&controller, move |c| c.runner_joined(&plan, hub)).await
        };
        match joined {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                let trouble = Trouble::Plan {
                    id: plan.runner_id,
                    subnet: plan.subnet,
                    error,
                };
                wait_after(&mut reporter, &mut backoff, &trouble).await;
                continue;
            }
            // The controller call panicked (logged by `controller_call`): try again later.
            None => {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        }
        backoff.reset();
        reporter.registered(&plan).await;
        match heartbeats(client, &settings, &plan, &mut reporter, &mut followed).await {
            HeartbeatsEnd::RegisterAgain => {}
            HeartbeatsEnd::Failed(trouble, another) => {
                if another && count > 1 {
                    current = (current + 1) % count;
                    failed = 1;
                    let next = settings.clients[current].address();
                    tracing::warn!(%hub, %next, "{}; failing over to the next hub", trouble.reason());
                } else {
                    wait_after(&mut reporter, &mut backoff, &trouble).await;
                }
            }
        }
    }
}

/// Why [`heartbeats`] stopped.
enum HeartbeatsEnd {
    /// The hub asks the runner to register again (it forgot it, or holds another ID).
    RegisterAgain,
    /// A heartbeat failed; `true` when another hub may do better.
    Failed(Trouble, bool),
}

/// Sends heartbeats to `client` until the runner must register again.
async fn heartbeats(
    client: &HubClient,
    settings: &RunnerSettings,
    plan: &vxlan::RunnerPlan,
    reporter: &mut Reporter,
    followed: &mut Option<String>,
) -> HeartbeatsEnd {
    let hub = client.address();
    loop {
        tokio::time::sleep(settings.heartbeat).await;
        match client.heartbeat(&settings.request.name).await {
            Ok(answer) if answer.id == plan.runner_id => {
                reporter.registered(plan).await;
                follow_peers(client, &reporter.controller, answer.peers, followed).await;
            }
            Ok(answer) => {
                let id = answer.id;
                tracing::info!(
                    %id,
                    registered_as = %plan.runner_id,
                    "the hub holds another ID for this runner; registering again"
                );
                return HeartbeatsEnd::RegisterAgain;
            }
            Err(HubCallError::Status { status: 404, .. }) => {
                tracing::info!(%hub, "the hub no longer knows this runner; registering again");
                return HeartbeatsEnd::RegisterAgain;
            }
            Err(error) => {
                let another = try_another_hub(&error);
                let trouble = Trouble::Call {
                    hub,
                    call: "heartbeat",
                    error,
                };
                return HeartbeatsEnd::Failed(trouble, another);
            }
        }
    }
}

/// Follows the hub's runner list: reads it when the heartbeat answered a `version` other
/// than the one followed, and drops it when the hub answered none (its runners reach each
/// other through it). A list that cannot be read is tried again at the next heartbeat;
/// meanwhile the runner keeps the paths it has.
async fn follow_peers(
    client: &HubClient,
    controller: &Arc<Controller>,
    version: Option<String>,
    followed: &mut Option<String>,
) {
    if version == *followed {
        return;
    }
    let peers = match version {
        None => None,
        Some(_) => match client.peers().await {
            Ok(peers) => Some(peers),
            Err(error) => {
                tracing::warn!(hub = %client.address(), "cannot read the hub's runner list: {error}; trying again at the next heartbeat");
                return;
            }
        },
    };
    let version = peers.as_ref().map(|peers| peers.version.clone());
    match controller_call(controller, move |c| c.runner_peers(peers)).await {
        Some(Ok(())) => *followed = version,
        Some(Err(error)) => {
            tracing::warn!(
                "cannot set up the paths to the other runners: {error}; trying again at the next heartbeat"
            );
        }
        None => {}
    }
}

/// Reports `trouble` with the next backoff delay, then waits that long.
async fn wait_after(reporter: &mut Reporter, backoff: &mut Backoff, trouble: &Trouble) {
    let delay = backoff.next_delay();
    reporter.trouble(trouble, delay).await;
    tokio::time::sleep(delay).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn hub() -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(192, 168, 50, 1).into(), 4799)
    }

    fn call(call: &'static str, error: HubCallError) -> Trouble {
        Trouble::Call {
            hub: hub(),
            call,
            error,
        }
    }

    #[test]
    fn only_a_failing_hub_sends_the_runner_to_the_next() {
        assert!(try_another_hub(&HubCallError::Unreachable(
            "refused".into()
        )));
        assert!(try_another_hub(&HubCallError::Untrusted(
            "other cert".into()
        )));
        assert!(try_another_hub(&HubCallError::Status {
            status: 503,
            message: "not recorded".into(),
        }));
        // A refusal of the registration itself would be the same at every hub.
        for status in [400, 401, 409] {
            assert!(!try_another_hub(&HubCallError::Status {
                status,
                message: String::new(),
            }));
        }
    }

    #[test]
    fn unreachable_message() {
        let trouble = call(
            "registration",
            HubCallError::Unreachable("Connection refused (os error 111)".into()),
        );
        assert_eq!(trouble.state(), OverlayState::HubUnreachable);
        assert_eq!(
            trouble.message(Duration::from_secs(4)),
            "cannot reach the hub at 192.168.50.1:4799: Connection refused (os error 111); \
             retrying in 4s"
        );
    }

    #[test]
    fn refusal_message_quotes_the_hub() {
        let trouble = call(
            "registration",
            HubCallError::Status {
                status: 400,
                message: "mtu differs: hub 1450, runner 1400".into(),
            },
        );
        assert_eq!(trouble.state(), OverlayState::HubUnreachable);
        assert_eq!(
            trouble.message(Duration::from_secs(30)),
            "the hub refused registration: mtu differs: hub 1450, runner 1400; retrying in 30s"
        );
        let server_error = call(
            "heartbeat",
            HubCallError::Status {
                status: 500,
                message: "cannot save state".into(),
            },
        );
        assert_eq!(
            server_error.reason(),
            "the hub failed to handle the heartbeat (HTTP 500): cannot save state"
        );
        let bad = call("registration", HubCallError::BadAnswer("not a plan".into()));
        assert_eq!(
            bad.reason(),
            "registration with the hub at 192.168.50.1:4799 failed: unexpected answer: not a plan"
        );
    }

    #[test]
    fn a_name_online_elsewhere_is_reported_like_other_refusals() {
        // The hub's 409 for a name online from another address: the status quotes it and the
        // runner backs off like for any refusal, rather than retrying at once.
        let trouble = call(
            "registration",
            HubCallError::Status {
                status: 409,
                message: "runner \"r1\" is online from 192.0.2.10; refusing the registration \
                          from 192.0.2.11 (stop the other runner, or wait until it is offline: \
                          20 s without heartbeats)"
                    .into(),
            },
        );
        assert_eq!(trouble.state(), OverlayState::HubUnreachable);
        assert_eq!(
            trouble.message(Duration::from_secs(8)),
            "the hub refused registration: runner \"r1\" is online from 192.0.2.10; refusing \
             the registration from 192.0.2.11 (stop the other runner, or wait until it is \
             offline: 20 s without heartbeats); retrying in 8s"
        );
    }

    #[test]
    fn an_untrusted_hub_says_so() {
        let trouble = call(
            "registration",
            HubCallError::Untrusted(
                "its certificate's SHA-256 fingerprint is AA:.., but spec.hub.tls.fingerprint \
                 is BB:.."
                    .into(),
            ),
        );
        assert_eq!(trouble.state(), OverlayState::HubUnreachable);
        assert_eq!(
            trouble.message(Duration::from_secs(2)),
            "the hub at 192.168.50.1:4799 is not trusted, nothing was sent: its certificate's \
             SHA-256 fingerprint is AA:.., but spec.hub.tls.fingerprint is BB:.. (check \
             spec.hub.tls against the hub's certificate); retrying in 2s"
        );
    }

    #[test]
    fn plan_failure_is_failed() {
        let trouble = Trouble::Plan {
            id: vxlan::RunnerId::new(3).expect("non-zero"),
            subnet: "10.3.0.0/16".parse().expect("cidr"),
            error: ApiError::Conflict {
                message: "Subnet \"overlay\" exists".into(),
                field: None,
            },
        };
        assert_eq!(trouble.state(), OverlayState::Failed);
        assert_eq!(
            trouble.message(Duration::from_secs(1)),
            "cannot apply the hub's plan (runner 3, subnet 10.3.0.0/16): Subnet \"overlay\" \
             exists; retrying in 1s"
        );
    }

    #[test]
    fn settings_come_from_the_config() {
        let mut config = OverlayAgentConfig {
            generation: 1,
            name: "runner-a".into(),
            role: crate::control::resource::OverlayRole::Runner,
            local_address: Ipv4Addr::new(192, 168, 50, 2).into(),
            port: 4789,
            vni_base: 100,
            mtu: 1450,
            remote_checksum_offload: false,
            hub: Some(crate::control::resource::HubRef {
                address: Ipv4Addr::new(192, 168, 50, 1).into(),
                api_port: 4799,
                token: "t".into(),
                tls: Some(HubClientTls {
                    mode: TlsMode::Disabled,
                    ..HubClientTls::default()
                }),
                alternates: Vec::new(),
            }),
            api_port: 4799,
            token: None,
            hub_tls: crate::control::HubTlsConfig::Disabled,
            heartbeat: Duration::ZERO,
            runner_timeout: Duration::from_secs(20),
            store: None,
            encapsulation: vxlan::Encapsulation::Vxlan,
            routed_address: None,
        };
        let settings = RunnerSettings::from_config(&config).expect("has a hub");
        assert_eq!(settings.clients[0].address(), hub());
        assert!(!settings.clients[0].uses_tls());
        assert_eq!(settings.heartbeat, MIN_HEARTBEAT);
        assert_eq!(
            settings.request,
            vxlan::RegistrationRequest {
                encapsulation: vxlan::Encapsulation::Vxlan,
                name: "runner-a".into(),
                local_address: Ipv4Addr::new(192, 168, 50, 2).into(),
                vni_base: 100,
                port: 4789,
                mtu: 1450,
                remote_checksum_offload: false,
            }
        );
        // A pinned fingerprint: TLS.
        let pinned = crate::tls::Fingerprint::of(b"hub certificate").to_string();
        if let Some(hub) = &mut config.hub {
            hub.tls = Some(HubClientTls {
                fingerprint: Some(pinned),
                ..HubClientTls::default()
            });
        }
        let settings = RunnerSettings::from_config(&config).expect("pinned");
        assert!(settings.clients[0].uses_tls());
        // Alternates: one client per hub, in order, their port and TLS the hub's unless
        // given; a bad alternate's TLS is named with its path.
        let other = |last: u8| crate::control::kinds::overlay::AlternateHub {
            address: Ipv4Addr::new(192, 168, 50, last).into(),
            api_port: (last == 4).then_some(5000),
            tls: None,
        };
        if let Some(hub) = &mut config.hub {
            hub.alternates = vec![other(3), other(4)];
        }
        let settings = RunnerSettings::from_config(&config).expect("alternates");
        let addresses: Vec<String> = settings
            .clients
            .iter()
            .map(|client| client.address().to_string())
            .collect();
        assert_eq!(
            addresses,
            [
                "192.168.50.1:4799",
                "192.168.50.3:4799",
                "192.168.50.4:5000"
            ]
        );
        assert!(settings.clients.iter().all(HubClient::uses_tls));
        if let Some(hub) = &mut config.hub {
            hub.alternates[1].tls = Some(HubClientTls {
                fingerprint: Some("not a fingerprint".into()),
                ..HubClientTls::default()
            });
        }
        let error = RunnerSettings::from_config(&config).expect_err("bad alternate");
        assert!(
            error.starts_with("spec.hub.alternates[1].tls.fingerprint: "),
            "{error}"
        );
        if let Some(hub) = &mut config.hub {
            hub.alternates.clear();
        }
        // A CA file that is gone: the runner says why instead of registering.
        if let Some(hub) = &mut config.hub {
            hub.tls = Some(HubClientTls {
                ca_file: Some("/nonexistent/vswitch-ca.pem".into()),
                ..HubClientTls::default()
            });
        }
        let error = RunnerSettings::from_config(&config).expect_err("no CA file");
        assert!(
            error.contains("cannot read /nonexistent/vswitch-ca.pem"),
            "{error}"
        );
        config.hub = None;
        assert!(RunnerSettings::from_config(&config).is_err());
    }
}
