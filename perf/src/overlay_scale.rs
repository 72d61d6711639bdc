//! `perf overlay-scale`: how one overlay hub copes with N runners, without containers.
//!
//! For each N of `--runners`: two namespaces joined by a veth, the hub's vswitchd in one
//! (an Overlay with `role: hub`, TLS by default, a plan wide enough for N: a /20 per runner
//! out of 10.0.0.0/8 up to 4,095 runners, a /24 beyond), and in the other `perf overlay-sim`
//! (see `tools::overlay_sim`): N simulated runners, each from its own address of
//! 198.18.0.0/15 (routed to the simulator's namespace, so the hub keeps one neighbour),
//! doing what the real agent does. Measured:
//! - **registration**: N runners registering, `--concurrency` at a time: registrations per
//!   second, each one's latency, the hub's CPU per registration and its resident memory per
//!   runner (after, less before);
//! - **steady state**: `--steady-seconds` of heartbeats every `--heartbeat-seconds`: the
//!   hub's CPU (share of one core) and the heartbeats' latency;
//! - **a hub killed**: `kill -9` of the hub, restarted at once on its state directory (with
//!   the local store a hub has no standby: its restart is the failover); the time until
//!   half and all of the runners are served again (a heartbeat or registration sent after
//!   the kill answered), and how many came back with another ID.
//!
//! With `--etcd` the hub keeps its runners in etcd (`spec.store.etcd`): an etcd of one
//! member runs in the hub's namespace (Debian's `etcd-server`), every registration is
//! committed there before it is answered, and etcd's CPU per registration and in the
//! steady state is reported beside the hub's; the restarted hub reads the runners back
//! from etcd.
//!
//! There is no kernel counterpart: a registry of runners is not something Linux does.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use crate::tools::cmd::{self, Background};
use crate::tools::cpu;
use crate::tools::overlay_sim::{Event, Recovered, Registered, Steady};
use crate::tools::vswitchd::{Binaries, Daemon, DaemonSettings};
use crate::topo::Topology;

/// The hub's underlay address, on the veth.
const HUB: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 1);
/// The simulator's end of the veth.
const SIM: Ipv4Addr = Ipv4Addr::new(172, 20, 0, 2);
/// The first simulated runner's address; the range is 198.18.0.0/15 (RFC 2544's
/// benchmarking block), routed to the simulator.
const FIRST_RUNNER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const TOKEN: &str = "perf-overlay-scale-token";

/// What `perf overlay-scale` was asked.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// The fleet sizes.
    pub runners: Vec<u32>,
    /// First registrations in flight at once.
    pub concurrency: usize,
    /// The runners' heartbeat interval (s).
    pub heartbeat_seconds: u64,
    /// The steady phase (s).
    pub steady_seconds: u64,
    /// Plain HTTP instead of TLS.
    pub plain: bool,
    /// Keep the runners in etcd (`spec.store.etcd`) rather than the hub's state directory.
    pub etcd: bool,
    /// The hub's `--workers`.
    pub workers: u32,
    /// Where to write `overlay-scale.json` (none: stdout only).
    pub results_dir: Option<PathBuf>,
}

/// The figures of one fleet size.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    /// N.
    pub runners: u32,
    /// The plan's runner prefix length.
    pub runner_prefix_len: u8,
    /// TLS or plain HTTP.
    pub tls: bool,
    /// Where the hub keeps its runners: `local` or `etcd`.
    pub store: String,
    /// With etcd: its CPU per registration (ms).
    pub etcd_cpu_ms_per_registration: Option<f64>,
    /// With etcd: its CPU during the steady phase, as a share of one core (%).
    pub etcd_steady_cpu_percent: Option<f64>,
    /// The registration phase.
    pub registered: Registered,
    /// Registrations per second.
    pub registrations_per_second: f64,
    /// The hub's CPU (process time, user + system) per registration (ms).
    pub hub_cpu_ms_per_registration: f64,
    /// The hub's resident memory before the first registration (MiB).
    pub hub_resident_before_mib: f64,
    /// After the last one (MiB).
    pub hub_resident_after_mib: f64,
    /// (after - before) / N (KiB).
    pub hub_resident_per_runner_kib: f64,
    /// The steady phase.
    pub steady: Steady,
    /// The hub's CPU during it, as a share of one core (%).
    pub steady_hub_cpu_percent: f64,
    /// Heartbeats per second the hub answered.
    pub heartbeats_per_second: f64,
    /// Seconds from the kill until the restarted hub's socket was open.
    pub restart_seconds: f64,
    /// The recovery after the kill.
    pub recovered: Recovered,
    /// The hub's resident memory after the recovery (MiB).
    pub hub_resident_restarted_mib: f64,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The smallest runner prefix out of a /8 that numbers `runners`: a /20 (4,095) or a /24
/// (65,535).
fn prefix_for(runners: u32) -> Result<u8> {
    match runners {
        0 => bail!("--runners: 0 runners measure nothing"),
        1..=4095 => Ok(20),
        4096..=65_535 => Ok(24),
        _ => bail!("--runners: at most 65,535 (a /24 per runner out of 10.0.0.0/8)"),
    }
}

/// etcd's client URL, inside the hub's namespace.
const ETCD: &str = "http://127.0.0.1:2379";

fn hub_overlay(prefix: u8, plain: bool, heartbeat: u64, etcd: bool) -> String {
    let hub_host = (1u32 << (32 - u32::from(prefix))) - 2;
    let mut tls = if plain {
        "  tls: {mode: Disabled}\n".to_owned()
    } else {
        String::new()
    };
    if etcd {
        tls.push_str(&format!("  store: {{etcd: {{endpoints: ['{ETCD}']}}}}\n"));
    }
    // Runners time out after four missed heartbeats, as with the defaults (5 s, 20 s).
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Overlay\nmetadata:\n  name: hub\nspec:\n  role: hub\n  \
         localAddress: {HUB}\n  token: {TOKEN}\n  heartbeatSeconds: {heartbeat}\n  \
         runnerTimeoutSeconds: {}\n{tls}  addressPlan: {{runnerPrefixLen: {prefix}, hubHost: \
         {hub_host}}}\n",
        heartbeat * 4
    )
}

/// Runs every fleet size, prints a table, and writes the JSON.
///
/// # Errors
/// A topology, the hub or the simulator fails.
pub fn run(binaries: &Binaries, options: &ScaleOptions) -> Result<()> {
    let mut results = Vec::new();
    for &runners in &options.runners {
        eprintln!("perf: overlay-scale: {runners} runners");
        let result = measure(binaries, options, runners)
            .with_context(|| format!("overlay-scale with {runners} runners"))?;
        print_row(&result);
        results.push(result);
    }
    let mut text = render(&results);
    for r in results.iter().filter(|r| r.registered.refused > 0) {
        if let Some(refusal) = &r.registered.refusal {
            text.push_str(&format!(
                "\nWith {} runners the hub refused {}: {refusal}\n",
                r.runners, r.registered.refused
            ));
        }
    }
    println!("{text}");
    if let Some(dir) = &options.results_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(&results)?;
        std::fs::write(dir.join("overlay-scale.json"), json)?;
        std::fs::write(dir.join("overlay-scale.md"), &text)?;
        let mut setup = std::fs::File::create(dir.join("README.SETUP"))?;
        for line in cmd::command_log() {
            writeln!(setup, "{line}")?;
        }
        eprintln!("perf: overlay-scale results in {}", dir.display());
    }
    Ok(())
}

fn print_row(r: &ScaleResult) {
    eprintln!(
        "perf: {} runners: {:.0} registrations/s, {:.2} ms hub CPU each, {:.1} KiB per \
         runner; steady {:.1}% of a core; all served {:.1} s after kill -9",
        r.runners,
        r.registrations_per_second,
        r.hub_cpu_ms_per_registration,
        r.hub_resident_per_runner_kib,
        r.steady_hub_cpu_percent,
        r.recovered.all_seconds
    );
}

/// The Markdown table of `results`.
pub fn render(results: &[ScaleResult]) -> String {
    let mut text = String::from(
        "| runners | plan | registrations/s | registration p50 / p99 (ms) | hub CPU per \
         registration (ms) | hub resident before → after (MiB) | per runner (KiB) | \
         heartbeats/s | hub CPU, steady (% of a core) | heartbeat p50 / p99 (ms) | hub \
         restart (s) | served again after kill -9: half / all (s) | IDs changed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let runners = if r.registered.refused > 0 {
            format!(
                "{} ({} registered, {} refused)",
                r.runners, r.registered.runners, r.registered.refused
            )
        } else {
            r.runners.to_string()
        };
        text.push_str(&format!(
            "| {} | /{} {} {} | {:.0} | {:.1} / {:.1} | {:.2} | {:.1} → {:.1} | {:.1} | {:.0} | \
             {:.1} | {:.1} / {:.1} | {:.2} | {:.1} / {:.1}{} | {} |\n",
            runners,
            r.runner_prefix_len,
            if r.tls { "TLS" } else { "plain" },
            r.store,
            r.registrations_per_second,
            r.registered.p50_ms,
            r.registered.p99_ms,
            r.hub_cpu_ms_per_registration,
            r.hub_resident_before_mib,
            r.hub_resident_after_mib,
            r.hub_resident_per_runner_kib,
            r.heartbeats_per_second,
            r.steady_hub_cpu_percent,
            r.steady.p50_ms,
            r.steady.p99_ms,
            r.restart_seconds,
            r.recovered.p50_seconds,
            r.recovered.all_seconds,
            if r.recovered.unserved > 0 {
                format!(" ({} never)", r.recovered.unserved)
            } else {
                String::new()
            },
            r.recovered.changed_ids,
        ));
    }
    for r in results {
        if let (Some(registration), Some(steady)) =
            (r.etcd_cpu_ms_per_registration, r.etcd_steady_cpu_percent)
        {
            text.push_str(&format!(
                "\netcd with {} runners: {registration:.2} ms of CPU per registration, \
                 {steady:.1}% of a core in the steady state.\n",
                r.runners
            ));
        }
    }
    text
}

fn parse_event(line: &str) -> Result<Event> {
    serde_json::from_str(line).with_context(|| format!("unexpected simulator line {line:?}"))
}

fn measure(binaries: &Binaries, options: &ScaleOptions, runners: u32) -> Result<ScaleResult> {
    let prefix = prefix_for(runners)?;
    let mut topo = Topology::new();
    let hub_ns = topo.namespace("hub")?;
    let sim_ns = topo.namespace("sim")?;
    topo.veth(&hub_ns, "eth0", &sim_ns, "eth0")?;
    topo.address(&hub_ns, "eth0", &format!("{HUB}/24"))?;
    topo.address(&sim_ns, "eth0", &format!("{SIM}/24"))?;
    topo.ip(
        &hub_ns,
        &["route", "add", "198.18.0.0/15", "via", &SIM.to_string()],
    )?;
    // The runners' addresses, in one `ip -batch`.
    let batch = topo.scratch("addresses")?.join("batch");
    let mut lines = String::new();
    for i in 0..runners {
        let address = Ipv4Addr::from_bits(FIRST_RUNNER.to_bits() + i);
        lines.push_str(&format!("address add {address}/32 dev lo\n"));
    }
    std::fs::write(&batch, lines)?;
    topo.exec_within(
        &sim_ns,
        "ip",
        &["-batch", &batch.to_string_lossy()],
        Duration::from_secs(300),
    )?;

    let etcd = if options.etcd {
        Some(start_etcd(&topo, &hub_ns)?)
    } else {
        None
    };
    let etcd_cpu = || -> Result<u64> { etcd.as_ref().map_or(Ok(0), |e| cpu::pid_now(e.pid())) };

    let settings = DaemonSettings {
        workers: options.workers,
        busy_poll_us: 0,
        pinned: false,
        conntrack_max: None,
    };
    let mut hub = Daemon::start(binaries, &hub_ns, settings, &topo.scratch("hub")?)?;
    hub.apply(
        "overlay",
        &hub_overlay(
            prefix,
            options.plain,
            options.heartbeat_seconds,
            options.etcd,
        ),
    )?;
    let fingerprint = wait_hub(&hub)?;
    let resident_before = hub.resident_bytes()?;

    let exe = std::env::current_exe().context("locating the perf binary")?;
    let mut args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        sim_ns.clone(),
        exe.to_string_lossy().into_owned(),
        "overlay-sim".into(),
        "--hub".into(),
        HUB.to_string(),
        "--token".into(),
        TOKEN.into(),
        "--first".into(),
        FIRST_RUNNER.to_string(),
        "--runners".into(),
        runners.to_string(),
        "--concurrency".into(),
        options.concurrency.to_string(),
        "--heartbeat-seconds".into(),
        options.heartbeat_seconds.to_string(),
        "--steady-seconds".into(),
        options.steady_seconds.to_string(),
    ];
    if let Some(fingerprint) = &fingerprint {
        args.push("--fingerprint".into());
        args.push(fingerprint.clone());
    }
    let mut sim = Background::spawn(cmd::command("ip", &args), std::process::Stdio::inherit())?;

    let cpu_before = cpu::pid_now(hub.pid())?;
    let etcd_before = etcd_cpu()?;
    let line = sim.next_line(Duration::from_secs(600))?;
    let cpu_after = cpu::pid_now(hub.pid())?;
    let etcd_registration = etcd_cpu()? - etcd_before;
    let Event::Registered(registered) = parse_event(&line)? else {
        bail!("expected the `registered` line, got {line}");
    };
    let resident_after = hub.resident_bytes()?;
    let tick = cpu::seconds_per_tick();
    let registration_cpu_ms = (cpu_after - cpu_before) as f64 * tick * 1000.0;
    // Per runner the hub took (refused ones cost little and hold nothing).
    let held = registered.runners.max(1) as f64;

    let steady_cpu_before = cpu::pid_now(hub.pid())?;
    let steady_etcd_before = etcd_cpu()?;
    let steady_started = Instant::now();
    let line = sim.next_line(Duration::from_secs(options.steady_seconds + 120))?;
    let steady_cpu = (cpu::pid_now(hub.pid())? - steady_cpu_before) as f64 * tick;
    let steady_etcd = (etcd_cpu()? - steady_etcd_before) as f64 * tick;
    let steady_elapsed = steady_started.elapsed().as_secs_f64();
    let Event::Steady(steady) = parse_event(&line)? else {
        bail!("expected the `steady` line, got {line}");
    };

    let killed = wall_ms();
    let restart_started = Instant::now();
    hub.kill9_and_restart()?;
    let restart_seconds = restart_started.elapsed().as_secs_f64();
    sim.send_line(&format!("killed {killed}"))?;
    let line = sim.next_line(Duration::from_secs(400))?;
    let Event::Recovered(recovered) = parse_event(&line)? else {
        bail!("expected the `recovered` line, got {line}");
    };
    let _ = sim.wait(Duration::from_secs(10));
    let resident_restarted = hub.resident_bytes()?;

    Ok(ScaleResult {
        runners,
        runner_prefix_len: prefix,
        tls: fingerprint.is_some(),
        store: if options.etcd { "etcd" } else { "local" }.to_owned(),
        etcd_cpu_ms_per_registration: options
            .etcd
            .then(|| etcd_registration as f64 * tick * 1000.0 / held),
        etcd_steady_cpu_percent: options.etcd.then(|| 100.0 * steady_etcd / steady_elapsed),
        registrations_per_second: held / registered.seconds,
        hub_cpu_ms_per_registration: registration_cpu_ms / held,
        hub_resident_before_mib: mib(resident_before),
        hub_resident_after_mib: mib(resident_after),
        hub_resident_per_runner_kib: (resident_after.saturating_sub(resident_before)) as f64
            / 1024.0
            / held,
        registered,
        steady_hub_cpu_percent: 100.0 * steady_cpu / steady_elapsed,
        heartbeats_per_second: steady.heartbeats as f64 / steady.seconds,
        steady,
        restart_seconds,
        recovered,
        hub_resident_restarted_mib: mib(resident_restarted),
    })
}

/// Starts etcd (one member, a data directory in the scratch space) in `netns` on
/// [`ETCD`] and waits until it answers.
fn start_etcd(topo: &Topology, netns: &str) -> Result<Background> {
    let data = topo.scratch("etcd")?.join("data");
    let args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        netns.into(),
        "etcd".into(),
        "--data-dir".into(),
        data.to_string_lossy().into_owned(),
        "--listen-client-urls".into(),
        ETCD.into(),
        "--advertise-client-urls".into(),
        ETCD.into(),
        "--listen-peer-urls".into(),
        "http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls".into(),
        "http://127.0.0.1:2380".into(),
        "--initial-cluster".into(),
        "default=http://127.0.0.1:2380".into(),
        "--log-level".into(),
        "error".into(),
        "--logger".into(),
        "zap".into(),
    ];
    let etcd = Background::spawn(cmd::command("ip", &args), std::process::Stdio::null())
        .context("starting etcd (apt-get install etcd-server)")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = cmd::command(
            "ip",
            &[
                "netns",
                "exec",
                netns,
                "etcdctl",
                "--endpoints",
                ETCD,
                "endpoint",
                "health",
            ],
        );
        if cmd::run(health, Duration::from_secs(10)).is_ok() {
            return Ok(etcd);
        }
        if Instant::now() > deadline {
            bail!("etcd did not answer within 30 s");
        }
        cmd::sleep(Duration::from_millis(200))?;
    }
}

/// Waits for the hub's Overlay to be up and its API to listen; returns its certificate's
/// fingerprint (none with plain HTTP).
fn wait_hub(hub: &Daemon) -> Result<Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        cmd::check_interrupted()?;
        let view: serde_json::Value = serde_json::from_str(&hub.ctl(&["overlay", "-o", "json"])?)?;
        if view["state"] == "Up" {
            let tls = view["tls"]["enabled"] == true;
            let fingerprint = view["tls"]["fingerprint"].as_str().map(str::to_owned);
            if !tls {
                return Ok(None);
            }
            if let Some(fingerprint) = fingerprint {
                return Ok(Some(fingerprint));
            }
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("the hub's Overlay is not up after 30 s: {view}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_wide_enough() {
        assert_eq!(prefix_for(100).unwrap(), 20);
        assert_eq!(prefix_for(4095).unwrap(), 20);
        assert_eq!(prefix_for(4096).unwrap(), 24);
        assert!(prefix_for(0).is_err());
        assert!(prefix_for(70_000).is_err());
        let yaml = hub_overlay(20, false, 5, false);
        assert!(
            yaml.contains("runnerPrefixLen: 20, hubHost: 4094"),
            "{yaml}"
        );
        assert!(yaml.contains("runnerTimeoutSeconds: 20"), "{yaml}");
        assert!(!yaml.contains("Disabled"), "{yaml}");
        assert!(hub_overlay(24, true, 5, false).contains("hubHost: 254"));
        assert!(
            hub_overlay(20, true, 5, true)
                .contains("store: {etcd: {endpoints: ['http://127.0.0.1:2379']}}")
        );
    }
}
