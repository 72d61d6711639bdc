//! `vswitchd`: the vswitch daemon. One per node; attaches containers, switches their traffic,
//! and serves the control API on a Unix socket (on an overlay hub, also the runners'
//! registration API on TCP).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info};

use vswitch::control::{Controller, EMBEDDED_DEFAULT_CONFIG};
use vswitch::runtime::{Engine, EngineConfig, WorkerCpus};
use vswitch::tables::clock::{Clock, MonotonicClock};

/// CAP_NET_ADMIN (include/uapi/linux/capability.h): create TAP devices, configure links.
const CAP_NET_ADMIN: u32 = 12;
/// CAP_SYS_ADMIN: setns() into a container's network namespace.
const CAP_SYS_ADMIN: u32 = 21;

/// The vswitch daemon: a userspace virtual switch for container hosts.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The control socket (HTTP+JSON); created with mode 0600.
    #[arg(long, default_value = "/run/vswitch/vswitchd.sock")]
    socket: PathBuf,
    /// Where resources and allocations are persisted; a restart restores them.
    #[arg(long, default_value = "/var/lib/vswitch")]
    state_dir: PathBuf,
    /// Resources applied at every boot: a file (YAML or JSON), or a directory whose `*.yaml`,
    /// `*.yml` and `*.json` files are applied in name order, all-or-nothing (a bad file stops
    /// the start, naming the file and document). Without it, a first boot applies the
    /// embedded default: Network `default`, Subnet `default` 172.30.0.0/16.
    #[arg(long, env = "VSWITCH_CONFIG")]
    config: Option<PathBuf>,
    /// Worker threads; default one per core.
    #[arg(long)]
    workers: Option<usize>,
    /// Microseconds a worker keeps polling without sleeping after it last found work (0, the
    /// default: sleep at once). Polling saves a wake-up per batch and lowers latency while
    /// traffic flows, at the cost of CPU time; it pays when workers have cores to themselves.
    #[arg(
        long,
        value_name = "MICROSECONDS",
        default_value_t = default_busy_poll_us(),
        env = "VSWITCH_BUSY_POLL_US"
    )]
    busy_poll_us: u64,
    /// Where the workers run: `auto` pins worker i to the i-th highest CPU this process may
    /// use; a list such as `1` or `2-5,7` pins worker i to its i-th entry (wrapping); `none`
    /// lets the scheduler move them. A pinned worker keeps its cache, and the containers'
    /// threads are placed around it instead of taking turns with it on one core.
    #[arg(
        long,
        value_name = "auto|none|CPUS",
        default_value = "auto",
        env = "VSWITCH_WORKER_CPUS"
    )]
    worker_cpus: WorkerCpus,
    /// The most connections conntrack tracks at once (NAT, LoadBalancers, policy). On a full
    /// table a new connection evicts one that never saw a reply, or is dropped and counted
    /// (`conntrack.table_full`); established ones are kept. Each entry takes a few hundred
    /// bytes.
    #[arg(
        long,
        value_name = "N",
        default_value_t = default_conntrack_max(),
        value_parser = clap::value_parser!(u64).range(1..),
        env = "VSWITCH_CONNTRACK_MAX"
    )]
    conntrack_max: u64,
    /// Storm control: the broadcast and multicast frames one container may have flooded per
    /// second (as many at once), per worker; beyond it they are dropped and counted
    /// (`l2.storm_control`). 0 turns it off (for multicast applications between containers).
    #[arg(
        long,
        value_name = "PPS",
        default_value_t = vswitch::pipeline::STORM_CONTROL_PPS,
        env = "VSWITCH_STORM_CONTROL_PPS"
    )]
    storm_control_pps: u64,
    /// The workers' nice value, -20 (most favoured) to 19, or `keep` for the process's. The
    /// kernel switches a frame in a softirq, ahead of any process; favoured workers come
    /// closer to that, so a container busy on a worker's core slows the others' traffic
    /// less. -10 is what `ovs-ctl` gives ovs-vswitchd. Needs CAP_SYS_NICE (else a warning).
    #[arg(
        long,
        value_name = "NICE|keep",
        default_value = "-10",
        allow_hyphen_values = true,
        value_parser = parse_nice,
        env = "VSWITCH_WORKER_NICE"
    )]
    worker_nice: Nice,
    /// Log level: error, warn, info, debug, trace (or a tracing filter such as `vswitch=debug`).
    #[arg(long, default_value = "info", env = "VSWITCH_LOG")]
    log_level: String,
    /// Log format: `text` (colours only when stderr is a terminal) or `json` (one object per
    /// line, for log shippers).
    #[arg(long, value_enum, default_value = "text", env = "VSWITCH_LOG_FORMAT")]
    log_format: LogFormat,
    /// Also serve `GET /metrics` (and nothing else) on this TCP address, e.g.
    /// 127.0.0.1:9469, for a Prometheus that cannot reach the control socket.
    #[arg(long, value_name = "ADDRESS:PORT")]
    metrics_address: Option<std::net::SocketAddr>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--worker-nice`: a nice value, or none (`keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nice(Option<i32>);

fn parse_nice(text: &str) -> Result<Nice, String> {
    if text == "keep" {
        return Ok(Nice(None));
    }
    match text.parse::<i32>() {
        Ok(nice) if (-20..=19).contains(&nice) => Ok(Nice(Some(nice))),
        _ => Err(format!("{text:?} is not a nice value: -20 to 19, or keep")),
    }
}

/// The conntrack crate's default table limit, for `--help`.
fn default_conntrack_max() -> u64 {
    u64::try_from(nat::ConntrackConfig::default().max_entries).unwrap_or(u64::MAX)
}

/// [`EngineConfig::DEFAULT_BUSY_POLL`] in microseconds, for `--help`.
fn default_busy_poll_us() -> u64 {
    u64::try_from(EngineConfig::DEFAULT_BUSY_POLL.as_micros()).unwrap_or(u64::MAX)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(message) = check_privileges() {
        eprintln!("vswitchd: {message}");
        return ExitCode::from(2);
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            subscriber.with_ansi(std::io::stderr().is_terminal()).init();
        }
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            error!("{message}");
            eprintln!("vswitchd: {message}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let workers = match args.workers {
        Some(0) => return Err("--workers must be at least 1".into()),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    // Claim the socket first: a second daemon on the same socket stops here, before it
    // touches ports or state.
    let listener = vswitch::api::ApiListener::bind(&args.socket).map_err(|e| e.to_string())?;
    let metrics_listener = match args.metrics_address {
        Some(address) => Some(
            std::net::TcpListener::bind(address)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| format!("cannot listen for metrics on {address}: {e}"))?,
        ),
        None => None,
    };
    // One clock for the datapath and the control plane, so the ages and timeouts the API
    // reports (conntrack, neighbours, learned MACs) are the ones the workers enforce.
    let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
    let engine_config = EngineConfig {
        workers,
        busy_poll: Duration::from_micros(args.busy_poll_us),
        cpus: args.worker_cpus.clone(),
        conntrack_max_entries: usize::try_from(args.conntrack_max).unwrap_or(usize::MAX),
        storm_control_pps: args.storm_control_pps,
        worker_nice: args.worker_nice.0,
    };
    let engine = Engine::start_with_clock(engine_config, Arc::clone(&clock))
        .map_err(|e| format!("cannot start the {workers} worker threads: {e}"))?;
    let controller = Controller::open_with_clock(&args.state_dir, engine, clock).map_err(|e| {
        format!(
            "cannot restore state from {}: {e}",
            args.state_dir.display()
        )
    })?;
    let controller = Arc::new(controller);
    apply_boot_config(&controller, args.config.as_deref())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vswitch-api")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the API runtime: {e}"))?;
    info!(
        socket = %args.socket.display(),
        state_dir = %args.state_dir.display(),
        workers,
        busy_poll_us = args.busy_poll_us,
        worker_cpus = %args.worker_cpus,
        "vswitchd running"
    );
    let served = runtime.block_on(async {
        // The overlay agent (the hub's registration API, a runner's registration and
        // heartbeats) starts once the controller is open and the control socket is bound, and
        // stops before the controller does.
        let agent = vswitch::agent::spawn(Arc::clone(&controller));
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = match metrics_listener.map(tokio::net::TcpListener::from_std) {
            Some(Ok(tcp)) => {
                info!(address = ?tcp.local_addr().ok(), "metrics listening");
                let controller = Arc::clone(&controller);
                Some(tokio::spawn(vswitch::api::metrics::serve(
                    tcp,
                    controller,
                    async move {
                        let _ = metrics_stopped.await;
                    },
                )))
            }
            Some(Err(e)) => {
                error!("cannot serve metrics: {e}");
                None
            }
            None => None,
        };
        // The socket is bound and listening (connections wait in its backlog) and the boot
        // config is applied: tell systemd (Type=notify) the service is ready.
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving the control socket"),
        ]);
        let served = listener
            .serve(Arc::clone(&controller), shutdown_signal())
            .await;
        notify(&[sd_notify::NotifyState::Stopping]);
        agent.shutdown().await;
        let _ = stop_metrics.send(());
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        served
    });
    controller.shutdown();
    info!("vswitchd stopped");
    served.map_err(|e| e.to_string())
}

/// `--config` is applied at every boot (the file is the node's declared state); without it,
/// the embedded default is applied only on a first boot, so a user may delete or change it.
fn apply_boot_config(controller: &Controller, config: Option<&Path>) -> Result<(), String> {
    let applied = match config {
        Some(path) => {
            let files = read_config(path)?;
            if files.is_empty() {
                tracing::warn!(config = %path.display(), "the config directory holds no *.yaml, *.yml or *.json file: nothing applied");
                return Ok(());
            }
            controller
                .apply_files(&files)
                .map_err(|e| format!("--config: {e}"))?
        }
        None if controller.is_empty() => controller
            .apply(EMBEDDED_DEFAULT_CONFIG)
            .map_err(|e| format!("the embedded default config: {e}"))?,
        None => return Ok(()),
    };
    for resource in applied {
        info!(kind = %resource.kind, name = %resource.name, action = %resource.action, "boot config");
    }
    Ok(())
}

/// The files of `--config` with their text: the file itself, or a directory's `*.yaml`,
/// `*.yml` and `*.json` files in name order (other entries, and hidden files, ignored).
fn read_config(path: &Path) -> Result<Vec<(String, String)>, String> {
    let read = |file: &Path| {
        std::fs::read_to_string(file)
            .map(|text| (file.display().to_string(), text))
            .map_err(|e| format!("cannot read --config {}: {e}", file.display()))
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![read(path)?]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot list --config {}: {e}", path.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|file| {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
            !name.starts_with('.') && ["yaml", "yml", "json"].contains(&ext) && file.is_file()
        })
        .collect();
    files.sort();
    files.iter().map(|file| read(file)).collect()
}

/// Sends `states` to the service manager when `NOTIFY_SOCKET` names one (a no-op otherwise);
/// a failure is logged, not fatal.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager: {err}");
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop vswitchd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, stopping"),
        _ = int.recv() => info!("SIGINT received, stopping"),
    }
}

/// vswitchd creates TAP devices and veth pairs (CAP_NET_ADMIN) and enters containers'
/// namespaces (CAP_SYS_ADMIN); say so up front rather than fail on the first attach.
fn check_privileges() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status to check privileges: {e}"))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_NET_ADMIN) && has(CAP_SYS_ADMIN) {
        Ok(())
    } else {
        Err(
            "vswitchd must run as root (or with CAP_NET_ADMIN and CAP_SYS_ADMIN): it creates \
             TAP devices and veth pairs and enters containers' network namespaces. \
             Try: sudo vswitchd"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_nice_takes_a_nice_value_or_keep() {
        assert_eq!(parse_nice("-10"), Ok(Nice(Some(-10))));
        assert_eq!(parse_nice("19"), Ok(Nice(Some(19))));
        assert_eq!(parse_nice("keep"), Ok(Nice(None)));
        for bad in ["-21", "20", "x", ""] {
            assert!(parse_nice(bad).is_err(), "{bad}");
        }
    }
}
