//! `perf overlay-sim`: N simulated overlay runners, without containers or switches, against
//! one hub's registration API. Each runner is a task doing what the real agent
//! (`vswitch::agent::runner`) does: register, then a heartbeat every `heartbeat` seconds; on
//! a 404 or another ID it registers again at once; on any other error it waits (1 s doubling
//! to 30 s, the agent's backoff) and registers again. Every runner connects from its own
//! address (as a real one connects from its `localAddress`), through the same
//! [`HubClient`] the agent uses, in TLS when the hub's fingerprint is given.
//!
//! It talks to `perf overlay-scale` (the parent) in lines. On stdout, one JSON object per
//! phase: `registered` once every runner holds an ID, `steady` after `steady` seconds of
//! heartbeats, `recovered` once every runner was served again after the hub was killed (or
//! `recover_limit` passed). On stdin, the parent writes `killed MS` (the wall-clock
//! milliseconds of its `kill -9`) once the `steady` line is out.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};
use vswitch::agent::{Backoff, HubCallError, HubClient};
use vswitch::tls::{Fingerprint, HubTrust};

/// What the simulator is asked to do.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The hub's API address.
    pub hub: IpAddr,
    /// The hub's API port.
    pub port: u16,
    /// The overlay's token.
    pub token: String,
    /// The hub certificate's fingerprint; `None`: plain HTTP.
    pub fingerprint: Option<String>,
    /// The first runner's address; runner i uses `first + i`.
    pub first: Ipv4Addr,
    /// How many runners.
    pub runners: u32,
    /// Registrations in flight at once during the first registration.
    pub concurrency: usize,
    /// The heartbeat interval.
    pub heartbeat: Duration,
    /// How long the steady phase lasts.
    pub steady: Duration,
    /// The longest wait for every runner to be served again after the kill.
    pub recover_limit: Duration,
}

/// The `registered` line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registered {
    /// Seconds from the first request to the last runner holding an ID.
    pub seconds: f64,
    /// Runners holding an ID.
    pub runners: u64,
    /// Registrations that failed and were tried again.
    pub retries: u64,
    /// Runners the hub refused (an HTTP error: no retry).
    pub refused: u64,
    /// The hub's message for the first refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Median and 99th percentile of one registration (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// The highest ID given.
    pub max_id: u32,
}

/// The `steady` line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Steady {
    /// The phase's length (s).
    pub seconds: f64,
    /// Heartbeats answered.
    pub heartbeats: u64,
    /// Heartbeats that failed.
    pub failed: u64,
    /// Median heartbeat (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
}

/// The `recovered` line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recovered {
    /// Runners served again (a heartbeat or registration sent after the kill answered).
    pub served: u64,
    /// Runners not served again within the limit.
    pub unserved: u64,
    /// Seconds from the kill until half the runners were served again.
    pub p50_seconds: f64,
    /// Seconds from the kill until the last runner was served again.
    pub all_seconds: f64,
    /// Runners whose ID changed.
    pub changed_ids: u64,
}

/// One line of the simulator's stdout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// Every runner holds an ID.
    Registered(Registered),
    /// The steady phase ended.
    Steady(Steady),
    /// The runners were served again after the kill.
    Recovered(Recovered),
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Per-runner and shared state of the run.
struct Shared {
    /// When the parent killed the hub (wall ms; 0: not yet).
    killed_ms: AtomicU64,
    /// Per runner: when it was first served after the kill (wall ms; 0: not yet).
    served_ms: Vec<AtomicU64>,
    /// Per runner: its first ID.
    first_id: Vec<AtomicU64>,
    changed_ids: AtomicUsize,
    heartbeats: AtomicU64,
    heartbeat_failures: AtomicU64,
    heartbeat_latency: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Records an answered call of runner `i` sent at `sent_ms` with ID `id`.
    fn served(&self, i: usize, sent_ms: u64, id: u32) {
        let first = self.first_id[i].load(Ordering::Relaxed);
        if first != 0 && first != u64::from(id) {
            self.changed_ids.fetch_add(1, Ordering::Relaxed);
        }
        let killed = self.killed_ms.load(Ordering::Relaxed);
        if killed != 0 && sent_ms >= killed {
            let _ = self.served_ms[i].compare_exchange(
                0,
                wall_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits: cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn emit(event: &Event) -> Result<()> {
    println!("{}", serde_json::to_string(event)?);
    Ok(())
}

fn request(name: &str, address: IpAddr) -> vxlan::RegistrationRequest {
    let settings = vxlan::OverlaySettings::default();
    vxlan::RegistrationRequest {
        encapsulation: vxlan::Encapsulation::Vxlan,
        name: name.to_owned(),
        local_address: address,
        vni_base: settings.vni_base,
        port: settings.port,
        mtu: settings.mtu,
        remote_checksum_offload: false,
    }
}

/// Runs the simulation (see the module docs) and writes its lines to stdout.
///
/// # Errors
/// The fingerprint is invalid, the runtime cannot start, or the first registrations fail
/// for good.
pub fn main(options: SimOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(options))
}

async fn run(options: SimOptions) -> Result<()> {
    let mut base = HubClient::new(options.hub, options.port, &options.token);
    if let Some(fingerprint) = &options.fingerprint {
        let fingerprint = Fingerprint::parse(fingerprint).map_err(|e| anyhow!(e))?;
        let (config, name) =
            vswitch::tls::client_config(&HubTrust::Pinned(fingerprint), options.hub)
                .map_err(|e| anyhow!(e))?;
        base = base.with_tls(config, name);
    }
    wait_listening(&options).await?;
    let count = usize::try_from(options.runners)?;
    let runners: Vec<(String, HubClient, vxlan::RegistrationRequest)> = (0..options.runners)
        .map(|i| {
            let address = IpAddr::V4(Ipv4Addr::from_bits(options.first.to_bits() + i));
            let name = format!("sim-{}", i + 1);
            let client = base.clone().with_source(address);
            let request = request(&name, address);
            (name, client, request)
        })
        .collect();
    let runners = Arc::new(runners);
    let shared = Arc::new(Shared {
        killed_ms: AtomicU64::new(0),
        served_ms: (0..count).map(|_| AtomicU64::new(0)).collect(),
        first_id: (0..count).map(|_| AtomicU64::new(0)).collect(),
        changed_ids: AtomicUsize::new(0),
        heartbeats: AtomicU64::new(0),
        heartbeat_failures: AtomicU64::new(0),
        heartbeat_latency: Mutex::new(histogram()),
    });

    // Phase 1: everyone registers, `concurrency` at a time.
    let gate = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let latency = Arc::new(Mutex::new(histogram()));
    let retries = Arc::new(AtomicU64::new(0));
    let refusal: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (gate, latency, retries) = (gate.clone(), latency.clone(), retries.clone());
        let refusal = refusal.clone();
        let (runners, shared) = (runners.clone(), shared.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let (_, client, request) = &runners[i];
            // Some(None): refused; None: never answered.
            let mut backoff = Backoff::new();
            for _ in 0..8 {
                let sent = Instant::now();
                match client.register(request).await {
                    Ok(plan) => {
                        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = latency.lock().await.record(micros.max(1));
                        shared.first_id[i]
                            .store(u64::from(plan.runner_id.get()), Ordering::Relaxed);
                        return Some(Some(plan.runner_id.get()));
                    }
                    Err(HubCallError::Status { status, message }) => {
                        refusal
                            .lock()
                            .await
                            .get_or_insert_with(|| format!("HTTP {status}: {message}"));
                        return Some(None);
                    }
                    Err(_) => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
            None
        });
    }
    let mut max_id = 0;
    let mut registered = 0u64;
    let mut refused = 0u64;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Some(Some(id))) => {
                registered += 1;
                max_id = max_id.max(id);
            }
            Ok(Some(None)) => refused += 1,
            _ => {}
        }
    }
    let held: Vec<bool> = (0..count)
        .map(|i| shared.first_id[i].load(Ordering::Relaxed) != 0)
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    {
        let latency = latency.lock().await;
        emit(&Event::Registered(Registered {
            seconds,
            runners: registered,
            retries: retries.load(Ordering::Relaxed),
            refused,
            refusal: refusal.lock().await.clone(),
            p50_ms: ms(&latency, 0.5),
            p99_ms: ms(&latency, 0.99),
            max_id,
        }))?;
    }
    if registered + refused != u64::from(options.runners) {
        return Err(anyhow!(
            "only {registered} of {} runners registered ({refused} refused, the others never \
             answered)",
            options.runners
        ));
    }
    // The refused runners take no further part: the hub has no room for them.
    let count_held = held.iter().filter(|h| **h).count();

    // Phase 2: every runner runs the agent's loop; heartbeats spread over the interval.
    let mut agents = tokio::task::JoinSet::new();
    for i in (0..count).filter(|&i| held[i]) {
        let (runners, shared) = (runners.clone(), shared.clone());
        let offset = options.heartbeat.mul_f64(i as f64 / count as f64);
        let heartbeat = options.heartbeat;
        agents.spawn(async move {
            tokio::time::sleep(offset).await;
            agent(&runners[i], i, heartbeat, &shared).await;
        });
    }
    let steady_started = Instant::now();
    tokio::time::sleep(options.steady).await;
    {
        let latency = shared.heartbeat_latency.lock().await;
        emit(&Event::Steady(Steady {
            seconds: steady_started.elapsed().as_secs_f64(),
            heartbeats: shared.heartbeats.load(Ordering::Relaxed),
            failed: shared.heartbeat_failures.load(Ordering::Relaxed),
            p50_ms: ms(&latency, 0.5),
            p99_ms: ms(&latency, 0.99),
        }))?;
    }

    // Phase 3: the parent kills the hub and says when.
    let killed = tokio::task::spawn_blocking(|| -> Result<u64> {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim()
            .strip_prefix("killed ")
            .and_then(|ms| ms.parse().ok())
            .ok_or_else(|| anyhow!("expected `killed MS` on stdin, got {line:?}"))
    })
    .await??;
    shared.killed_ms.store(killed, Ordering::Relaxed);
    let deadline = Instant::now() + options.recover_limit;
    loop {
        let served = shared
            .served_ms
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) != 0)
            .count();
        if served == count_held || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times: Vec<u64> = shared
        .served_ms
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .filter(|&t| t != 0)
        .map(|t| t.saturating_sub(killed))
        .collect();
    times.sort_unstable();
    // The `rank`-th smallest of `times` (1-based), in seconds.
    let at = |rank: usize| {
        times
            .get(rank.saturating_sub(1))
            .map_or(f64::NAN, |&t| t as f64 / 1000.0)
    };
    emit(&Event::Recovered(Recovered {
        served: times.len() as u64,
        unserved: (count_held - times.len()) as u64,
        p50_seconds: at(times.len().div_ceil(2)),
        all_seconds: at(times.len()),
        changed_ids: shared.changed_ids.load(Ordering::Relaxed) as u64,
    }))?;
    agents.abort_all();
    Ok(())
}

/// Waits until the hub's API accepts connections (it opens a moment after the Overlay is
/// up), so that the registration phase's clock measures registrations only.
async fn wait_listening(options: &SimOptions) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect((options.hub, options.port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "the hub's API at {}:{} does not accept connections after 30 s",
                options.hub,
                options.port
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's loop for runner `i` (already registered): heartbeats, registering again
/// when the hub forgot it, backing off while it cannot be reached.
async fn agent(
    runner: &(String, HubClient, vxlan::RegistrationRequest),
    i: usize,
    heartbeat: Duration,
    shared: &Shared,
) {
    let (name, client, request) = runner;
    let mut backoff = Backoff::new();
    let mut registered = true;
    loop {
        if registered {
            tokio::time::sleep(heartbeat).await;
            let sent_ms = wall_ms();
            let sent = Instant::now();
            match client.heartbeat(name).await {
                Ok(answer) => {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = shared.heartbeat_latency.lock().await.record(micros.max(1));
                    shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                    shared.served(i, sent_ms, answer.id.get());
                    backoff.reset();
                }
                Err(HubCallError::Status { status: 404, .. }) => {
                    shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                    registered = false;
                }
                Err(_) => {
                    shared.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff.next_delay()).await;
                    registered = false;
                }
            }
        } else {
            let sent_ms = wall_ms();
            match client.register(request).await {
                Ok(plan) => {
                    shared.served(i, sent_ms, plan.runner_id.get());
                    backoff.reset();
                    registered = true;
                }
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }
}
