//! perf: measures vswitchd against the Linux kernel in the same run.
//!
//! Each scenario builds its own namespaces (see `topo`), runs the same traffic over the
//! kernel's equivalent and over vswitchd (tap and veth ports, 1 and 2 workers, workers that
//! sleep when idle and workers that busy-poll for 200 µs after work), optionally
//! over Open vSwitch's userspace datapath, and reports medians, spreads and ratios to the
//! kernel. Results go to the terminal (progress on stderr, tables on stdout), to a JSON file,
//! and to `perf/results/<date>-<host>/` (README.SETUP, raw.csv, summary.txt, results.json, and
//! with `--report` report.html: charts and tables, see `html`). `perf report DIR...` draws that
//! page again from results already written, without measuring (and without root).
//!
//! `perf overlay-scale` measures one overlay hub with N simulated runners (see
//! `overlay_scale`); it has no kernel counterpart.
//!
//! The hidden subcommands (`udp-send`, `udp-recv`, `ping`, `pong`, `conn-rate`, `conn-serve`,
//! `sysctl`, `overlay-sim`) are this same
//! binary re-executed inside a namespace with `ip netns exec`.

#![deny(unsafe_code)]

mod html;
mod overlay_scale;
mod report;
mod scenarios;
mod tools;
mod topo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

use report::{JsonReport, Outcome, RunInfo, VariantResult};
use scenarios::{Case, Context, Family, Scenario, Settings};
use tools::cmd::{self, Interrupted};
use tools::endpoints::EndpointCpus;
use tools::vswitchd::{Binaries, PortKind, WorkerPlacement};

/// Measure vswitchd against the Linux kernel (bridge, routing, vxlan, nftables) in the
/// same run, in network namespaces it creates and removes.
///
/// Needs root, `ip` (iproute2) and `iperf3`. Sends traffic only between the namespaces it
/// creates. Progress goes to stderr, the tables to stdout, and the full results to
/// perf/results/<date>-<host>/. `perf report DIR` draws the charts of results already there.
#[derive(Debug, Parser)]
#[command(name = "perf", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Scenarios to run, comma-separated [default: all but floods, conntrack, routes and macs;
    /// with --quick: l2].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Finish in under two minutes: l2 only (unless --scenario), 3 runs of 1 s.
    #[arg(long)]
    quick: bool,
    /// Measured runs per variant, after one warmup [default: 5; with --quick: 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: Option<u32>,
    /// Seconds of each measurement (TCP, UDP, latency, connections) [default: 3; with
    /// --quick: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: Option<u32>,
    /// Measure the kernel only (no vswitchd needed).
    #[arg(long)]
    kernel_only: bool,
    /// Add Open vSwitch's userspace datapath (datapath_type=netdev) to l2, if installed.
    #[arg(long)]
    with_ovs: bool,
    /// vxlan: give both vswitchd nodes' Overlay `remoteChecksumOffload: true` (the kernel
    /// side keeps its defaults).
    #[arg(long)]
    vxlan_rco: bool,
    /// vswitchd worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: Vec<u32>,
    /// vswitchd busy-poll windows to measure (`--busy-poll-us`), comma-separated: 0 has the
    /// workers sleep whenever they are idle, N keeps them polling for N µs after work
    /// (measured with the fewest workers only).
    #[arg(long, value_delimiter = ',', default_value = "0,200",
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    busy_poll_us: Vec<u32>,
    /// Worker placements to measure, comma-separated: `pinned` is vswitchd's default
    /// (`--worker-cpus auto`), `floating` lets the scheduler move the workers
    /// (`--worker-cpus none`; its labels end in `-float`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pinned")]
    placements: Vec<WorkerPlacement>,
    /// Pin the client tools (iperf3 -c, UDP sender, ping) to the lowest CPU and the server
    /// tools to the highest, in every variant, the kernel's included (vswitchd's first
    /// worker, pinned to the highest CPU, then shares the server's). Figures then depend
    /// less on where the scheduler happens to put three busy threads on few cores.
    #[arg(long)]
    pin_endpoints: bool,
    /// policy: the policy counts to measure, comma-separated (one table each).
    #[arg(long, value_delimiter = ',', default_values_t = scenarios::policy::COUNTS,
          value_parser = clap::value_parser!(u32).range(0..=16_384))]
    policies: Vec<u32>,
    /// conntrack: the connection counts to measure with, comma-separated (one table each;
    /// each count's connections are made by UDP datagrams from the client before its runs).
    #[arg(long, value_delimiter = ',', default_values_t = scenarios::conntrack::COUNTS,
          value_parser = clap::value_parser!(u32).range(0..=4_000_000))]
    connections: Vec<u32>,
    /// routes: the static route counts to measure with, comma-separated (one table each).
    #[arg(long, value_delimiter = ',', default_values_t = scenarios::routes::COUNTS,
          value_parser = clap::value_parser!(u32).range(0..=scenarios::routes::MAX))]
    routes: Vec<u32>,
    /// macs: the learned MAC counts to measure with, comma-separated (one table each; the
    /// MACs are learned from VXLAN frames the remote node's namespace sends before the runs).
    #[arg(long, value_delimiter = ',', default_values_t = scenarios::macs::COUNTS,
          value_parser = clap::value_parser!(u32).range(0..=scenarios::macs::MAX))]
    macs: Vec<u32>,
    /// Address families to measure, comma-separated: 4, 6 or both (`l2` and `routed` run
    /// over IPv6 as cases of their own, `l2-ipv6` and `routed-ipv6`; the other scenarios are
    /// IPv4 only).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "4")]
    family: Vec<Family>,
    /// Port kinds to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tap,veth")]
    kinds: Vec<PortKind>,
    /// The vswitchd binary [default: next to perf, then PATH].
    #[arg(long, value_name = "PATH")]
    vswitchd: Option<PathBuf>,
    /// The vswitchctl binary [default: next to perf, then PATH].
    #[arg(long, value_name = "PATH")]
    vswitchctl: Option<PathBuf>,
    /// Where result directories go [default: perf/results of the source tree].
    #[arg(long, value_name = "DIR")]
    results_dir: Option<PathBuf>,
    /// Also write the JSON results to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Do not write a results directory (the JSON goes only to --json, if given).
    #[arg(long, conflicts_with = "report")]
    no_results_dir: bool,
    /// Also write report.html into the results directory: SVG charts of every figure (median,
    /// min..max, ratio to the kernel) and the tables, one page, no script.
    #[arg(long)]
    report: bool,
    /// After each variant's measured runs, record one more 1-stream TCP run with Linux
    /// `perf record -e cpu-clock -a` and write where the machine's time went to
    /// DIR/<case>-<variant>.txt (by command, then by command, object and symbol).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
}

/// `perf report`: draw the HTML report of results already written.
#[derive(Debug, Args)]
struct ReportArgs {
    /// Results directories (holding results.json) or JSON files written with --json; each
    /// gets its own page: DIR/report.html, or NAME.html beside NAME.json.
    #[arg(required = true, value_name = "RESULTS")]
    results: Vec<PathBuf>,
    /// Also write every chart as its own SVG file beside the page (report-<metric>.svg).
    #[arg(long)]
    svg: bool,
    /// Write the page (and charts) into this directory instead of beside the results; one
    /// RESULTS at a time.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// `report`, and the hidden subcommands the harness re-executes inside namespaces.
#[derive(Debug, Subcommand)]
enum Command {
    /// Draw report.html (SVG charts and tables) from results already written, without
    /// measuring: `perf report perf/results/<dir>`.
    Report(ReportArgs),
    /// One overlay hub with N simulated runners (no containers): registrations per second,
    /// the hub's CPU and memory per runner, heartbeats in steady state, and the time until
    /// every runner is served again after `kill -9` of the hub. Needs root and `ip`.
    #[command(name = "overlay-scale")]
    OverlayScale(OverlayScaleArgs),
    /// Simulated runners against a hub (run by overlay-scale in its namespace).
    #[command(name = "overlay-sim", hide = true)]
    OverlaySim(OverlaySimArgs),
    /// UDP packet-rate sender.
    #[command(name = "udp-send", hide = true)]
    UdpSend {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = tools::udp::PAYLOAD_64B_FRAME)]
        payload: usize,
    },
    /// UDP packet-rate receiver.
    #[command(name = "udp-recv", hide = true)]
    UdpRecv {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        max_seconds: f64,
    },
    /// Latency client.
    #[command(hide = true)]
    Ping {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = tools::udp::PAYLOAD_64B_FRAME)]
        payload: usize,
        #[arg(long, default_value_t = 500)]
        timeout_ms: u64,
        #[arg(long)]
        until_reply: bool,
    },
    /// Latency echo server.
    #[command(hide = true)]
    Pong {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        max_seconds: f64,
    },
    /// Short TCP connections, counted (new connections per second).
    #[command(name = "conn-rate", hide = true)]
    ConnRate {
        #[arg(long)]
        dst: SocketAddr,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = tools::connrate::WORKERS)]
        workers: u32,
    },
    /// Accepts, writes one byte, closes; counts accepts.
    #[command(name = "conn-serve", hide = true)]
    ConnServe {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        max_seconds: f64,
    },
    /// Write a sysctl in the current namespace.
    #[command(hide = true)]
    Sysctl { key: String, value: String },
    /// One UDP datagram on each of COUNT flows to DST (conntrack entries).
    #[command(hide = true)]
    Flows {
        #[arg(long)]
        dst: std::net::IpAddr,
        #[arg(long)]
        count: u32,
    },
    /// COUNT VXLAN frames, each from its own source MAC, from SRC to the VTEP at VTEP.
    #[command(name = "vxlan-macs", hide = true)]
    VxlanMacs {
        #[arg(long)]
        src: std::net::Ipv4Addr,
        #[arg(long)]
        vtep: std::net::Ipv4Addr,
        #[arg(long)]
        vni: u32,
        #[arg(long)]
        inner_dst: String,
        #[arg(long)]
        count: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Some(command) => run_command(command).map(|()| ExitCode::SUCCESS),
        None => run(&cli.run),
    };
    match outcome {
        Ok(code) => code,
        Err(err) if err.is::<Interrupted>() => {
            eprintln!(
                "perf: interrupted; the namespaces it created are removed, no results written"
            );
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("perf: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// `perf overlay-sim` (hidden): see `tools::overlay_sim`.
#[derive(Debug, Args)]
struct OverlaySimArgs {
    #[arg(long)]
    hub: std::net::IpAddr,
    #[arg(long, default_value_t = 4799)]
    port: u16,
    #[arg(long)]
    token: String,
    #[arg(long)]
    fingerprint: Option<String>,
    #[arg(long)]
    first: std::net::Ipv4Addr,
    #[arg(long)]
    runners: u32,
    #[arg(long)]
    concurrency: usize,
    #[arg(long)]
    heartbeat_seconds: u64,
    #[arg(long)]
    steady_seconds: u64,
}

impl From<OverlaySimArgs> for tools::overlay_sim::SimOptions {
    fn from(args: OverlaySimArgs) -> tools::overlay_sim::SimOptions {
        tools::overlay_sim::SimOptions {
            hub: args.hub,
            port: args.port,
            token: args.token,
            fingerprint: args.fingerprint,
            first: args.first,
            runners: args.runners,
            concurrency: args.concurrency,
            heartbeat: Duration::from_secs(args.heartbeat_seconds),
            steady: Duration::from_secs(args.steady_seconds),
            recover_limit: Duration::from_secs(300),
        }
    }
}

/// `perf overlay-scale`.
#[derive(Debug, Args)]
struct OverlayScaleArgs {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,4000")]
    runners: Vec<u32>,
    /// First registrations in flight at once (a fleet coming up together).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The runners' heartbeat interval (the Overlay's default is 5 s).
    #[arg(long, default_value_t = 5)]
    heartbeat_seconds: u64,
    /// How long to measure the steady state.
    #[arg(long, default_value_t = 20)]
    steady_seconds: u64,
    /// Plain HTTP instead of TLS (TLS, with the hub's generated certificate pinned, is what
    /// runners use by default).
    #[arg(long)]
    plain: bool,
    /// Keep the runners in etcd (`spec.store.etcd`; etcd runs in the hub's namespace)
    /// rather than in the hub's state directory.
    #[arg(long)]
    etcd: bool,
    /// The hub's `--workers`.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Write overlay-scale.json, overlay-scale.md and README.SETUP here.
    #[arg(long, value_name = "DIR")]
    results_dir: Option<PathBuf>,
    /// vswitchd to run [default: next to perf, else in PATH].
    #[arg(long, value_name = "PATH")]
    vswitchd: Option<PathBuf>,
    /// vswitchctl to use [default: next to perf, else in PATH].
    #[arg(long, value_name = "PATH")]
    vswitchctl: Option<PathBuf>,
}

/// `perf overlay-scale`.
fn overlay_scale(args: &OverlayScaleArgs) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("perf overlay-scale needs root: it creates network namespaces");
    }
    cmd::install_interrupt_handler()?;
    let binaries = Binaries {
        vswitchd: tools::vswitchd::locate("vswitchd", args.vswitchd.as_deref())?,
        vswitchctl: tools::vswitchd::locate("vswitchctl", args.vswitchctl.as_deref())?,
    };
    overlay_scale::run(
        &binaries,
        &overlay_scale::ScaleOptions {
            runners: args.runners.clone(),
            concurrency: args.concurrency,
            heartbeat_seconds: args.heartbeat_seconds,
            steady_seconds: args.steady_seconds,
            plain: args.plain,
            etcd: args.etcd,
            workers: args.workers,
            results_dir: args.results_dir.clone(),
        },
    )
}

/// `perf report`: one page per results directory or JSON file.
fn report_from(args: &ReportArgs) -> Result<()> {
    if args.out_dir.is_some() && args.results.len() > 1 {
        bail!(
            "--out-dir takes one results directory at a time ({} given); leave it out to \
             write each report beside its results",
            args.results.len()
        );
    }
    for path in &args.results {
        let source = html::Source::locate(path)?;
        let results = html::load(&source.json)?;
        let report = html::render(&results, &source.json.display().to_string())?;
        let dir = args.out_dir.as_deref().unwrap_or(&source.dir);
        let written = html::write(dir, &source.page, &report, args.svg)?;
        eprintln!(
            "perf: {} ({} chart(s) from {})",
            written[0].display(),
            report.charts.len(),
            source.json.display()
        );
    }
    Ok(())
}

fn run_command(command: Command) -> Result<()> {
    match command {
        Command::Report(args) => report_from(&args),
        Command::OverlayScale(args) => overlay_scale(&args),
        Command::OverlaySim(args) => tools::overlay_sim::main(args.into()),
        Command::UdpSend {
            dst,
            seconds,
            payload,
        } => tools::udp::send_main(dst, seconds, payload),
        Command::UdpRecv { bind, max_seconds } => tools::udp::recv_main(bind, max_seconds),
        Command::Ping {
            dst,
            seconds,
            payload,
            timeout_ms,
            until_reply,
        } => tools::latency::ping_main(tools::latency::PingOptions {
            dst,
            seconds,
            payload,
            timeout: Duration::from_millis(timeout_ms),
            until_reply,
        }),
        Command::Pong { bind, max_seconds } => tools::latency::pong_main(bind, max_seconds),
        Command::ConnRate {
            dst,
            seconds,
            workers,
        } => tools::connrate::client_main(dst, seconds, workers),
        Command::ConnServe { bind, max_seconds } => tools::connrate::serve_main(bind, max_seconds),
        Command::Sysctl { key, value } => topo::sysctl_main(&key, &value),
        Command::Flows { dst, count } => {
            let report = tools::flows::send(dst, count)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::VxlanMacs {
            src,
            vtep,
            vni,
            inner_dst,
            count,
        } => {
            let inner_dst = tools::macs::parse_mac(&inner_dst)?;
            let report = tools::macs::send(src, vtep, vni, inner_dst, count)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

/// The table sizes of the scenarios with one case per size.
fn counts(args: &RunArgs) -> scenarios::Counts {
    scenarios::Counts {
        policies: args.policies.clone(),
        connections: args.connections.clone(),
        routes: args.routes.clone(),
        macs: args.macs.clone(),
    }
}

/// The settings after applying --quick, --runs and --seconds.
fn settings(args: &RunArgs) -> Result<Settings> {
    let mut settings = if args.quick {
        Settings::QUICK
    } else {
        Settings::FULL
    };
    if let Some(runs) = args.runs {
        settings.runs = runs;
    }
    if let Some(seconds) = args.seconds {
        settings.tcp_seconds = seconds;
        settings.udp_seconds = f64::from(seconds);
        settings.rtt_seconds = f64::from(seconds);
        settings.conn_seconds = f64::from(seconds);
    }
    if args.pin_endpoints {
        settings.endpoint_cpus = Some(EndpointCpus::spread()?);
    }
    Ok(settings)
}

/// The scenarios to run.
fn selected_scenarios(args: &RunArgs) -> Vec<Scenario> {
    if !args.scenario.is_empty() {
        let mut list = Vec::new();
        for scenario in &args.scenario {
            if !list.contains(scenario) {
                list.push(*scenario);
            }
        }
        list
    } else if args.quick {
        vec![Scenario::L2]
    } else {
        Scenario::DEFAULT.to_vec()
    }
}

/// Refuses to start without root or without the tools every scenario needs.
fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "must run as root: it creates network namespaces, veth pairs, bridges and TAP \
             devices (try: sudo {})",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
    }
    let missing: Vec<&str> = [("ip", "iproute2"), ("iperf3", "iperf3")]
        .into_iter()
        .filter(|(program, _)| cmd::which(program).is_none())
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (install with: apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    Ok(())
}

fn locate_binaries(args: &RunArgs) -> Result<Binaries> {
    Ok(Binaries {
        vswitchd: tools::vswitchd::locate("vswitchd", args.vswitchd.as_deref())?,
        vswitchctl: tools::vswitchd::locate("vswitchctl", args.vswitchctl.as_deref())?,
    })
}

fn run(args: &RunArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    preflight()?;
    cmd::install_interrupt_handler()?;
    for stale in topo::sweep_stale() {
        eprintln!("perf: removed {stale}, left by an earlier run that did not finish");
    }
    let binaries = if args.kernel_only {
        None
    } else {
        Some(locate_binaries(args)?)
    };
    let ovs = if args.with_ovs {
        match tools::ovs::tools() {
            Ok(tools) => Some(tools),
            Err(err) => {
                eprintln!("perf: --with-ovs: {err:#}; the Open vSwitch column is left out");
                None
            }
        }
    } else {
        None
    };
    let settings = settings(args)?;
    let scenarios = selected_scenarios(args);
    let ipv4_only: Vec<&str> = scenarios
        .iter()
        .filter(|scenario| scenario.cases(&counts(args), &args.family).is_empty())
        .map(|scenario| scenario.key())
        .collect();
    if !ipv4_only.is_empty() {
        anyhow::bail!(
            "--family {}: {} measure IPv4 only (IPv6 covers l2, routed and nat); add 4 to --family or choose --scenario l2,routed,nat",
            args.family
                .iter()
                .map(|f| if *f == Family::V4 { "4" } else { "6" })
                .collect::<Vec<_>>()
                .join(","),
            ipv4_only.join(", ")
        );
    }
    let variants = scenarios::variants(
        args.kernel_only,
        &args.kinds,
        &args.workers,
        &args.busy_poll_us,
        &args.placements,
        ovs.is_some(),
    );
    let profile = match &args.profile {
        Some(dir) => Some(scenarios::Profiler {
            perf: tools::profile::linux_perf()?,
            dir: dir.clone(),
        }),
        None => None,
    };
    let context = Context {
        binaries,
        ovs,
        vxlan_rco: args.vxlan_rco,
        profile,
    };
    let info = run_info(args, &settings, &context, started_at);
    eprintln!(
        "perf: {} scenario(s) x {} variant(s), {} runs each",
        scenarios.len(),
        variants.len(),
        settings.runs
    );

    let mut results: Vec<VariantResult> = Vec::new();
    for scenario in &scenarios {
        for case in scenario.cases(&counts(args), &args.family) {
            for variant in &variants {
                results.push(scenarios::run_variant(case, *variant, &context, &settings)?);
            }
            let done: Vec<VariantResult> = results
                .iter()
                .filter(|r| r.scenario == case.key())
                .cloned()
                .collect();
            for summary in report::summarize(&done, describe) {
                println!("{}", report::render_scenario(&summary));
            }
        }
    }

    let summaries = report::summarize(&results, describe);
    if let Some(overview) = report::render_policy_overview(&summaries) {
        println!("{overview}");
    }
    let json = serde_json::to_string_pretty(&JsonReport {
        harness: format!("perf {}", env!("CARGO_PKG_VERSION")),
        run: &info,
        scenarios: &summaries,
        method: report::METHOD,
    })?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("perf: JSON written to {}", path.display());
    }
    if !args.no_results_dir {
        let base = args
            .results_dir
            .clone()
            .unwrap_or_else(default_results_base);
        let date = &info.started_utc[..10];
        let dir = report::create_results_dir(&base, date, &info.host)?;
        report::write_results_dir(
            &dir,
            &report::render_setup(&info, &cmd::command_log()),
            &report::render_csv(&results),
            &report::render_summary(&info, &summaries),
            &json,
        )?;
        eprintln!("perf: results in {}", dir.display());
        if args.report {
            let page = html::write_beside_results(&dir, &json)?;
            eprintln!("perf: report in {}", page.display());
        }
    }
    eprintln!("perf: finished in {:.0} s", started.elapsed().as_secs_f64());
    let failed = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .count();
    if failed > 0 {
        eprintln!("perf: {failed} variant(s) failed; see the tables");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(key: &str) -> String {
    Case::from_key(key).map_or_else(String::new, Case::description)
}

/// `perf/results` of the source tree when it exists (a cargo build), else `./perf-results`.
fn default_results_base() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    if source.is_dir() {
        source.join("results")
    } else {
        PathBuf::from("perf-results")
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn first_line_of(program: &str, args: &[&str]) -> String {
    cmd::output_within(cmd::command(program, args), Duration::from_secs(5))
        .ok()
        .and_then(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{program}: unknown version"))
}

fn run_info(args: &RunArgs, settings: &Settings, context: &Context, started_at: u64) -> RunInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(
            || "unknown CPU".to_owned(),
            |(_, model)| model.trim().to_owned(),
        );
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .map_or_else(
            || "unknown memory".to_owned(),
            |line| {
                line.split_whitespace()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
    let mut tools = vec![
        first_line_of("iperf3", &["--version"]),
        first_line_of("ip", &["-V"]),
    ];
    if let Some(binaries) = &context.binaries {
        tools.push(format!("vswitchd: {}", binaries.vswitchd.display()));
        tools.push(format!("vswitchctl: {}", binaries.vswitchctl.display()));
    }
    let source = env!("CARGO_MANIFEST_DIR");
    if Path::new(source).is_dir() {
        let rev = first_line_of("git", &["-C", source, "rev-parse", "--short", "HEAD"]);
        tools.push(format!(
            "source revision: {rev} (uncommitted changes not shown)"
        ));
    }
    let mut described = settings.describe();
    if selected_scenarios(args).contains(&Scenario::Policy) {
        described.push(format!("policy counts: {:?}", args.policies));
    }
    if selected_scenarios(args).contains(&Scenario::Conntrack) {
        described.push(format!("connection counts: {:?}", args.connections));
    }
    if selected_scenarios(args).contains(&Scenario::Routes) {
        described.push(format!("route counts: {:?}", args.routes));
    }
    if selected_scenarios(args).contains(&Scenario::Macs) {
        described.push(format!("MAC counts: {:?}", args.macs));
    }
    described.push(format!(
        "variants: kernel{}{}",
        if args.kernel_only {
            String::new()
        } else {
            format!(
                ", vswitch kinds {:?} x workers {:?} x busy-poll µs {:?} x placements {:?}",
                args.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                args.workers,
                args.busy_poll_us,
                args.placements
            )
        },
        if context.ovs.is_some() {
            ", ovs-netdev (l2)"
        } else {
            ""
        }
    ));
    RunInfo {
        started_utc: report::utc_timestamp(started_at),
        host: read_trimmed("/proc/sys/kernel/hostname"),
        kernel: format!(
            "{} {} {} {}",
            read_trimmed("/proc/sys/kernel/ostype"),
            read_trimmed("/proc/sys/kernel/osrelease"),
            read_trimmed("/proc/sys/kernel/version"),
            std::env::consts::ARCH
        ),
        cpu,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory,
        command: cmd::display(&{
            let mut args = std::env::args();
            let mut command =
                std::process::Command::new(args.next().unwrap_or_else(|| "perf".into()));
            command.args(args);
            command
        }),
        tools,
        settings: described,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("perf").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn quick_defaults_to_l2_and_short_runs() {
        let cli = parse(&["--quick", "--kernel-only"]);
        assert!(cli.command.is_none());
        assert_eq!(selected_scenarios(&cli.run), [Scenario::L2]);
        assert_eq!(settings(&cli.run).expect("settings"), Settings::QUICK);
    }

    #[test]
    fn full_defaults_to_every_scenario() {
        let cli = parse(&[]);
        assert_eq!(selected_scenarios(&cli.run), Scenario::DEFAULT);
        let full = settings(&cli.run).expect("settings");
        assert_eq!(full.runs, 5);
        assert_eq!(full.endpoint_cpus, None, "endpoints float by default");
        assert_eq!(cli.run.workers, [1, 2]);
        assert_eq!(cli.run.busy_poll_us, [0, 200]);
        assert_eq!(cli.run.placements, [WorkerPlacement::Pinned]);
        assert_eq!(cli.run.kinds, [PortKind::Tap, PortKind::Veth]);
        assert_eq!(cli.run.policies, [0, 100, 1_000, 10_000]);
    }

    #[test]
    fn overrides_and_lists() {
        let cli = parse(&[
            "--scenario",
            "l2,nat,l2",
            "--runs",
            "7",
            "--seconds",
            "2",
            "--workers",
            "1,4",
            "--kinds",
            "veth",
            "--busy-poll-us",
            "0,50,1000",
            "--placements",
            "floating,pinned",
            "--pin-endpoints",
            "--policies",
            "0,1000",
        ]);
        assert_eq!(cli.run.policies, [0, 1000]);
        assert_eq!(selected_scenarios(&cli.run), [Scenario::L2, Scenario::Nat]);
        assert!(cli.run.pin_endpoints);
        let settings = settings(&cli.run).expect("settings (needs 2 CPUs for --pin-endpoints)");
        let cpus = settings.endpoint_cpus.expect("--pin-endpoints");
        assert!(cpus.client < cpus.server, "{cpus:?}");
        assert_eq!((settings.runs, settings.tcp_seconds), (7, 2));
        assert_eq!(settings.udp_seconds, 2.0);
        assert_eq!(cli.run.workers, [1, 4]);
        assert_eq!(cli.run.kinds, [PortKind::Veth]);
        assert_eq!(cli.run.busy_poll_us, [0, 50, 1000]);
        assert_eq!(
            cli.run.placements,
            [WorkerPlacement::Floating, WorkerPlacement::Pinned]
        );
    }

    #[test]
    fn overlay_scale_and_its_simulator_parse() {
        let Some(Command::OverlayScale(args)) = parse(&["overlay-scale", "--plain"]).command else {
            panic!("overlay-scale");
        };
        assert_eq!(args.runners, [100, 1000, 4000]);
        assert_eq!((args.concurrency, args.heartbeat_seconds), (32, 5));
        assert!(args.plain);
        let Some(Command::OverlaySim(args)) = parse(&[
            "overlay-sim",
            "--hub",
            "172.20.0.1",
            "--token",
            "t",
            "--first",
            "198.18.0.1",
            "--runners",
            "10",
            "--concurrency",
            "4",
            "--heartbeat-seconds",
            "5",
            "--steady-seconds",
            "3",
        ])
        .command
        else {
            panic!("overlay-sim");
        };
        let options = tools::overlay_sim::SimOptions::from(args);
        assert_eq!(options.port, 4799);
        assert_eq!(
            options.fingerprint, None,
            "plain HTTP without a fingerprint"
        );
        assert_eq!(options.steady, Duration::from_secs(3));
    }

    #[test]
    fn bad_values_are_refused() {
        let parse_err = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("perf").chain(args.iter().copied())).is_err()
        };
        assert!(parse_err(&["--runs", "0"]));
        assert!(parse_err(&["--scenario", "bogus"]));
        assert!(parse_err(&["--workers", "0"]));
        assert!(parse_err(&["--kinds", "macvlan"]));
        assert!(parse_err(&["--busy-poll-us", "1000000"]));
        assert!(parse_err(&["--policies", "20000"]));
    }

    #[test]
    fn report_parses_as_a_flag_and_a_subcommand() {
        let cli = parse(&["--quick", "--report"]);
        assert!(cli.run.report);
        let parse_err = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("perf").chain(args.iter().copied())).is_err()
        };
        // A report is written into the results directory, so it needs one.
        assert!(parse_err(&["--report", "--no-results-dir"]));
        // `perf report` needs results to draw from.
        assert!(parse_err(&["report"]));
        let cli = parse(&["report", "perf/results/a", "b/lb-quick.json", "--svg"]);
        let Some(Command::Report(args)) = cli.command else {
            panic!("not a report: {cli:?}");
        };
        assert_eq!(
            args.results,
            [
                PathBuf::from("perf/results/a"),
                PathBuf::from("b/lb-quick.json")
            ]
        );
        assert!(args.svg);
        assert_eq!(args.out_dir, None);
        let refused = report_from(&ReportArgs {
            results: args.results,
            svg: false,
            out_dir: Some(PathBuf::from("/nonexistent")),
        })
        .expect_err("two results, one --out-dir");
        assert!(format!("{refused:#}").contains("one results directory at a time"));
    }

    #[test]
    fn helpers_parse() {
        let cli = parse(&["udp-send", "--dst", "10.0.0.2:9000", "--seconds", "1.5"]);
        assert!(matches!(
            cli.command,
            Some(Command::UdpSend { payload: 18, .. })
        ));
        let cli = parse(&[
            "ping",
            "--dst",
            "10.0.0.2:9001",
            "--seconds",
            "1",
            "--until-reply",
        ]);
        assert!(matches!(
            cli.command,
            Some(Command::Ping {
                until_reply: true,
                timeout_ms: 500,
                ..
            })
        ));
        let cli = parse(&["conn-rate", "--dst", "172.30.0.81:9002", "--seconds", "1"]);
        assert!(matches!(
            cli.command,
            Some(Command::ConnRate { workers: 4, .. })
        ));
        let cli = parse(&[
            "conn-serve",
            "--bind",
            "172.30.0.2:9002",
            "--max-seconds",
            "21",
        ]);
        assert!(matches!(cli.command, Some(Command::ConnServe { .. })));
    }
}
