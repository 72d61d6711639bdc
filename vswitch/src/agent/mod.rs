//! The overlay agent: the part of the hub-and-spoke overlay that talks to other nodes.
//!
//! [`spawn`] starts a supervisor on the current tokio runtime. Once a second it reads
//! [`Controller::overlay_agent_config`]; when the configuration changes (a new generation)
//! or disappears, it stops the running agent and starts the one the configuration asks for:
//! - **hub** (`hub.rs`): serves the registration API ([`crate::api::hub`]) on TCP
//!   `localAddress:apiPort` and marks silent runners offline every second;
//! - **runner** (`runner.rs`): registers with the hub, applies the plan it answers, sends
//!   heartbeats, and retries with backoff ([`Backoff`]) while the hub is away, saying why in
//!   the Overlay's status;
//! - **mesh**: nothing (peers are static).
//!
//! Invariants:
//! - At most one agent runs; it is stopped before the next one starts, so a hub restarted
//!   with a new configuration can bind its port again.
//! - Controller calls run on the blocking pool, never on the runtime's threads.
//! - [`AgentHandle`] stops everything: gracefully with [`AgentHandle::shutdown`], at once
//!   when dropped.

mod backoff;
mod client;
mod hub;
mod runner;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use backoff::Backoff;
pub use client::{HUB_TIMEOUT, HubCallError, HubClient};
pub use hub::{SWEEP_INTERVAL, bind as bind_hub_listener};
pub use runner::Trouble;

use crate::control::resource::{OverlayRole, OverlayState};
use crate::control::{Controller, OverlayAgentConfig};

/// How often the supervisor reads the agent configuration.
pub const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a stopping agent may take to finish (the hub answers requests in flight) before
/// it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The running overlay agent. Dropping it aborts the agent at once; [`AgentHandle::shutdown`]
/// stops it gracefully.
#[derive(Debug)]
pub struct AgentHandle {
    task: Task,
}

impl AgentHandle {
    /// Stops the agent: the hub stops accepting and answers the requests in flight, a runner
    /// stops where it is. Waits at most [`STOP_GRACE`] per agent, then aborts.
    pub async fn shutdown(self) {
        self.task.stop(STOP_GRACE * 2).await;
    }
}

/// Starts the overlay agent supervisor on the current tokio runtime.
///
/// # Panics
/// When called outside a tokio runtime.
pub fn spawn(controller: Arc<Controller>) -> AgentHandle {
    AgentHandle {
        task: Task::spawn(|stop| supervise(controller, stop)),
    }
}

/// A spawned task with a stop signal; dropping it aborts the task.
#[derive(Debug)]
struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Task {
    fn spawn<F, Fut>(start: F) -> Task
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, receiver) = watch::channel(false);
        Task {
            stop,
            handle: tokio::spawn(start(receiver)),
        }
    }

    /// Signals the task to stop and waits for it at most `grace`, then aborts it.
    async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.handle).await.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis(),
                "an overlay agent task did not stop in time; aborting it"
            );
        }
        // `Drop` aborts it (a no-op when it has finished).
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.handle.abort();
    }
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Runs `call` on the blocking pool; `None` (logged) when it panicked.
async fn controller_call<T, F>(controller: &Arc<Controller>, call: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce(&Controller) -> T + Send + 'static,
{
    let controller = Arc::clone(controller);
    match tokio::task::spawn_blocking(move || call(&controller)).await {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(%error, "a controller call of the overlay agent failed");
            None
        }
    }
}

/// The agent a configuration asks for, started; `None` when it needs none (mesh) or cannot
/// run (logged).
fn start(controller: &Arc<Controller>, config: &OverlayAgentConfig) -> Option<Task> {
    match config.role {
        OverlayRole::Mesh => {
            tracing::debug!(overlay = %config.name, "mesh overlay: no agent to run");
            None
        }
        OverlayRole::Hub => {
            let Some(token) = config.token.clone().filter(|token| !token.is_empty()) else {
                tracing::error!(
                    overlay = %config.name,
                    "the hub Overlay has no token: the registration API is not served; set \
                     spec.token"
                );
                return None;
            };
            let address = std::net::SocketAddr::new(config.local_address, config.api_port);
            tracing::info!(overlay = %config.name, %address, "starting the hub agent");
            let controller = Arc::clone(controller);
            let tls = config.hub_tls.clone();
            let store = config.store.clone();
            Some(Task::spawn(move |stop| {
                hub::run(controller, address, token, tls, store, stop)
            }))
        }
        OverlayRole::Runner => {
            let settings = match runner::RunnerSettings::from_config(config) {
                Ok(settings) => settings,
                Err(error) => {
                    tracing::error!(overlay = %config.name, "{error}");
                    // Said in the status too, from the blocking pool like every call.
                    let controller = Arc::clone(controller);
                    return Some(Task::spawn(move |_| async move {
                        controller_call(&controller, move |c| {
                            c.runner_status(OverlayState::Failed, Some(error));
                        })
                        .await;
                    }));
                }
            };
            tracing::info!(
                overlay = %config.name,
                hub = %settings.clients[0].address(),
                "starting the runner agent"
            );
            let controller = Arc::clone(controller);
            Some(Task::spawn(move |mut stop| async move {
                tokio::select! {
                    () = stopped(&mut stop) => {}
                    () = runner::run(controller, settings) => {}
                }
            }))
        }
    }
}

/// The supervisor: follows the agent configuration until `stop`.
async fn supervise(controller: Arc<Controller>, mut stop: watch::Receiver<bool>) {
    let mut current: Option<(OverlayAgentConfig, Option<Task>)> = None;
    let mut ticker = tokio::time::interval(CONFIG_POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = ticker.tick() => {}
        }
        controller_call(&controller, Controller::maintain).await;
        let Some(wanted) = controller_call(&controller, Controller::overlay_agent_config).await
        else {
            continue;
        };
        if current.as_ref().map(|(config, _)| config) == wanted.as_ref() {
            continue;
        }
        if let Some((old, task)) = current.take() {
            tracing::info!(
                overlay = %old.name,
                role = %old.role,
                generation = old.generation,
                "overlay configuration changed; stopping the agent"
            );
            if let Some(task) = task {
                task.stop(STOP_GRACE).await;
            }
        }
        if let Some(config) = wanted {
            let task = start(&controller, &config);
            current = Some((config, task));
        }
    }
    if let Some((_, Some(task))) = current.take() {
        task.stop(STOP_GRACE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Instant;

    use serde_json::Value;

    use crate::runtime::{Engine, EngineConfig};

    const TOKEN: &str = "agent-test-token";

    /// One node: a controller with its own state directory.
    struct Node {
        controller: Arc<Controller>,
        _dir: tempfile::TempDir,
    }

    impl Node {
        fn open(overlay: &str) -> Node {
            let dir = tempfile::Builder::new()
                .prefix("vsagent")
                .tempdir()
                .expect("tempdir");
            let engine = Engine::start(EngineConfig::new(1)).expect("engine starts");
            let controller =
                Controller::open(&dir.path().join("state"), engine).expect("controller opens");
            controller
                .apply(overlay)
                .unwrap_or_else(|error| panic!("apply {overlay}: {error}"));
            Node {
                controller: Arc::new(controller),
                _dir: dir,
            }
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            self.controller.shutdown();
        }
    }

    fn hub_overlay() -> String {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata: {{name: hub}}\n\
             spec: {{role: hub, localAddress: 192.168.77.1, token: {TOKEN}}}\n"
        )
    }

    fn runner_overlay(name: &str, address: &str, mtu: u16, token: &str, pin: &str) -> String {
        format!(
            "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata: {{name: {name}}}\n\
             spec: {{role: runner, localAddress: {address}, mtu: {mtu}, heartbeatSeconds: 1,\n\
             hub: {{address: 192.168.77.1, token: {token}, tls: {{fingerprint: '{pin}'}}}}}}\n"
        )
    }

    fn ip(args: &[&str]) {
        let output = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("cannot run ip {args:?} (iproute2 needed): {error}"));
        assert!(
            output.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Polls `GET /v1/overlay` of `node` until `done` holds; panics with the last view after
    /// `within`.
    async fn wait_for(
        node: &Node,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let view = controller_call(&node.controller, Controller::overlay_view)
                .await
                .expect("overlay_view ran")
                .expect("the node has an Overlay");
            let view = serde_json::to_value(view).expect("the view is JSON");
            if done(&view) {
                return view;
            }
            assert!(
                started.elapsed() < within,
                "{what}: not within {within:?}; last view: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn message(view: &Value) -> &str {
        view["message"].as_str().unwrap_or_default()
    }

    /// The scenario, in a network namespace of its own with 192.168.77.1 (hub), .2 (runner)
    /// and .3 (a runner with a mismatched MTU).
    fn scenario() {
        ip(&["link", "set", "lo", "up"]);
        ip(&[
            "link", "add", "vsagent0", "type", "veth", "peer", "name", "vsagent1",
        ]);
        ip(&["addr", "add", "192.168.77.1/24", "dev", "vsagent0"]);
        ip(&["addr", "add", "192.168.77.2/24", "dev", "vsagent1"]);
        ip(&["addr", "add", "192.168.77.3/24", "dev", "vsagent1"]);
        ip(&["link", "set", "vsagent0", "up"]);
        ip(&["link", "set", "vsagent1", "up"]);

        let hub = Node::open(&hub_overlay());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let hub_agent = spawn(Arc::clone(&hub.controller));
            // The hub generates its certificate; the runner pins its fingerprint.
            let view = wait_for(&hub, "hub serves TLS", Duration::from_secs(20), |v| {
                v["tls"]["fingerprint"].is_string()
            })
            .await;
            assert_eq!(view["tls"]["enabled"], true, "{view:#}");
            assert_eq!(view["tls"]["generated"], true, "{view:#}");
            let pin = view["tls"]["fingerprint"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let runner = Node::open(&runner_overlay(
                "runner-a",
                "192.168.77.2",
                1450,
                TOKEN,
                &pin,
            ));
            let runner_agent = spawn(Arc::clone(&runner.controller));

            let view = wait_for(&runner, "runner registered", Duration::from_secs(20), |v| {
                v["state"] == "Registered"
            })
            .await;
            assert_eq!(view["id"], 1, "{view:#}");
            assert_eq!(view["vni"], 101, "{view:#}");
            assert_eq!(view["subnet"], "10.1.0.0/16", "{view:#}");
            assert_eq!(view["gateway"], "10.1.0.1", "{view:#}");
            let view = wait_for(&hub, "hub lists the runner", Duration::from_secs(5), |v| {
                v["runners"][0]["state"] == "Online"
            })
            .await;
            assert_eq!(view["runners"][0]["name"], "runner-a", "{view:#}");
            assert_eq!(view["runners"][0]["address"], "192.168.77.2", "{view:#}");
            assert_eq!(view["runners"][0]["id"], 1, "{view:#}");
            assert_eq!(view["state"], "Up", "{view:#}");
            assert_eq!(view["message"], Value::Null, "{view:#}");

            // Another node registering as runner-a while runner-a is online is refused with
            // 409, naming both addresses; the hub keeps runner-a as it was.
            let newcomer = vxlan::RegistrationRequest {
                encapsulation: vxlan::Encapsulation::Vxlan,
                name: "runner-a".into(),
                local_address: std::net::Ipv4Addr::new(192, 168, 77, 3).into(),
                vni_base: 100,
                port: 4789,
                mtu: 1450,
                remote_checksum_offload: false,
            };
            let trust =
                crate::tls::HubTrust::Pinned(crate::tls::Fingerprint::parse(&pin).expect("pin"));
            let hub_address = std::net::Ipv4Addr::new(192, 168, 77, 1);
            let (tls, name) =
                crate::tls::client_config(&trust, hub_address.into()).expect("client config");
            let error = HubClient::new(hub_address.into(), 4799, TOKEN)
                .with_tls(tls, name)
                .register(&newcomer)
                .await
                .expect_err("runner-a is online from 192.168.77.2");
            assert_eq!(
                error,
                HubCallError::Status {
                    status: 409,
                    message: "runner \"runner-a\" is online from 192.168.77.2; refusing the \
                              registration from 192.168.77.3 (stop the other runner, or wait \
                              until it is offline: 20 s without heartbeats)"
                        .into(),
                }
            );
            let view = wait_for(&hub, "hub keeps runner-a", Duration::from_secs(5), |v| {
                v["runners"][0]["state"] == "Online"
            })
            .await;
            assert_eq!(view["runners"][0]["address"], "192.168.77.2", "{view:#}");
            assert_eq!(view["runners"][0]["id"], 1, "{view:#}");
            assert_eq!(
                view["runners"].as_array().map(Vec::len),
                Some(1),
                "{view:#}"
            );

            // A runner whose MTU differs is refused, and its status says why.
            let mismatched = Node::open(&runner_overlay(
                "runner-b",
                "192.168.77.3",
                1400,
                TOKEN,
                &pin,
            ));
            let mismatched_agent = spawn(Arc::clone(&mismatched.controller));
            let view = wait_for(&mismatched, "mtu refused", Duration::from_secs(20), |v| {
                message(v).starts_with("the hub refused registration: ")
            })
            .await;
            assert_eq!(view["state"], "HubUnreachable", "{view:#}");
            for part in ["mtu", "1450", "1400", "; retrying in "] {
                assert!(message(&view).contains(part), "{part}: {view:#}");
            }
            mismatched_agent.shutdown().await;

            // A new configuration (a wrong token) restarts the runner's agent; the hub
            // refuses it with 401.
            runner
                .controller
                .apply(&runner_overlay(
                    "runner-a",
                    "192.168.77.2",
                    1450,
                    "wrong",
                    &pin,
                ))
                .expect("apply a new token");
            let view = wait_for(
                &runner,
                "wrong token refused",
                Duration::from_secs(20),
                |v| message(v).contains("the bearer token is wrong"),
            )
            .await;
            assert_eq!(view["state"], "HubUnreachable", "{view:#}");
            runner
                .controller
                .apply(&runner_overlay(
                    "runner-a",
                    "192.168.77.2",
                    1450,
                    TOKEN,
                    &pin,
                ))
                .expect("apply the right token");
            let view = wait_for(&runner, "registered again", Duration::from_secs(20), |v| {
                v["state"] == "Registered"
            })
            .await;
            assert_eq!(view["id"], 1, "the same name keeps its ID: {view:#}");

            // The hub goes away: the runner says so and retries...
            hub_agent.shutdown().await;
            let view = wait_for(&runner, "hub unreachable", Duration::from_secs(20), |v| {
                v["state"] == "HubUnreachable"
            })
            .await;
            assert!(
                message(&view).starts_with("cannot reach the hub at 192.168.77.1:4799: "),
                "{view:#}"
            );
            assert!(message(&view).contains("; retrying in "), "{view:#}");
            // ...and is registered again, with the same ID, once the hub is back.
            let hub_agent = spawn(Arc::clone(&hub.controller));
            let view = wait_for(
                &runner,
                "back after the hub",
                Duration::from_secs(40),
                |v| v["state"] == "Registered",
            )
            .await;
            assert_eq!(view["id"], 1, "{view:#}");
            assert_eq!(view["message"], Value::Null, "{view:#}");

            runner_agent.shutdown().await;
            hub_agent.shutdown().await;
        });
    }

    #[test]
    fn without_an_overlay_nothing_runs_and_shutdown_is_prompt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::start(EngineConfig::new(1)).expect("engine starts");
        let controller =
            Arc::new(Controller::open(&dir.path().join("state"), engine).expect("controller"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let agent = spawn(Arc::clone(&controller));
            // Let the supervisor read the (absent) configuration at least once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let started = Instant::now();
            agent.shutdown().await;
            assert!(
                started.elapsed() < STOP_GRACE,
                "shutdown took {:?}: the supervisor did not see the stop signal",
                started.elapsed()
            );
            // Dropping a handle (instead of shutting it down) must not panic either.
            drop(spawn(Arc::clone(&controller)));
        });
        controller.shutdown();
    }

    /// Set in the child process that runs the scenario inside its own network namespace.
    const IN_NETNS: &str = "VSWITCH_AGENT_TEST_IN_NETNS";

    /// The test's full name, for re-running it in the child.
    const TEST_NAME: &str = "agent::tests::hub_and_runner_agents_register_refuse_and_recover";

    #[test]
    #[ignore = "needs root: unshare --net, then a veth pair and the hub's TAP"]
    fn hub_and_runner_agents_register_refuse_and_recover() {
        if std::env::var_os(IN_NETNS).is_some() {
            scenario();
            return;
        }
        // The scenario runs in a child process of its own, in a network namespace of its own
        // (`unshare --net`): everything it creates (the veth pair, addresses, sockets, the
        // hub's host TAP) lives and dies with that namespace. A thread-level unshare would
        // not do: the controller creates the hub's host TAP in the process's namespace
        // (`/proc/self/ns/net`), which would be the host's.
        let exe = std::env::current_exe().expect("the test binary's path");
        let output = Command::new("unshare")
            .arg("--net")
            .arg(&exe)
            // The test is #[ignore]d (root only): the child must run it all the same.
            .args([
                TEST_NAME,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(IN_NETNS, "1")
            .output()
            .unwrap_or_else(|error| {
                panic!("cannot run unshare (util-linux) to get a network namespace: {error}")
            });
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "the scenario failed in its namespace (it needs root: unshare --net):\n\
             --- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        // The child must really have run the scenario, not filtered it out.
        assert!(
            stdout.contains("1 passed"),
            "the child ran no test:\n{stdout}\n{stderr}"
        );
    }
}
