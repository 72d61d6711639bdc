//! Results: samples, medians and spreads, ratios to the kernel, and every output format
//! (the terminal table, raw.csv, the JSON file, summary.txt, README.SETUP).
//!
//! Everything here is pure (no I/O besides [`write_results_dir`]) so it is unit-tested.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// The variant every ratio is taken against.
pub const BASELINE: &str = "kernel";

/// One figure the harness measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// iperf3, one TCP stream.
    TcpGbps1,
    /// iperf3, four TCP streams.
    TcpGbps4,
    /// 64-byte UDP frames received per second.
    UdpPps,
    /// Share of those frames lost.
    UdpLossPercent,
    /// Round trip, median.
    RttP50Us,
    /// Round trip, 99th percentile.
    RttP99Us,
    /// Round trip, 99.9th percentile.
    RttP999Us,
    /// New TCP connections completed per second (scenarios with a load balancer).
    TcpConnPerSecond,
    /// Busy CPU of the whole machine per GB moved (TCP, 1 stream).
    CpuMachineSecondsPerGb,
    /// CPU of the switch per GB moved (TCP, 1 stream).
    CpuSwitchSecondsPerGb,
    /// Time to apply the scenario's rule set (`policy`), once per variant.
    PolicyApplySeconds,
    /// iperf3, one TCP stream, while another container floods (`floods`).
    TcpGbps1Flood,
    /// That stream's rate during the flood over its rate without, in the same run
    /// (`floods`; goal >= 0.8).
    FloodRatio,
    /// Context switches of the whole machine per GB moved (TCP, 1 stream; `ctxt` of
    /// `/proc/stat`).
    CtxSwitchesMachinePerGb,
    /// vswitchd's workers: times they slept and were woken, per GB moved (TCP, 1 stream).
    WakeupsPerGb,
    /// vswitchd's workers: system calls per GB moved (TCP, 1 stream).
    SyscallsPerGb,
    /// vswitchd's workers: frames per received batch (TCP, 1 stream).
    FramesPerBatch,
    /// vswitchd's workers: bytes summed by the software checksum per byte moved.
    SoftwareChecksumRatio,
    /// vswitchd's workers: bytes written by software segmentation per byte moved.
    SoftwareSegmentationRatio,
    /// `conntrack`, `routes`, `macs`: the table's entries right after the 1-stream TCP run.
    TableEntries,
    /// vswitchd's resident memory (`VmRSS`, every daemon of the variant) right after the
    /// 1-stream TCP run.
    SwitchResidentMib,
}

impl Metric {
    /// Every metric, in table order.
    pub const ALL: [Metric; 21] = [
        Metric::TcpGbps1,
        Metric::TcpGbps4,
        Metric::UdpPps,
        Metric::UdpLossPercent,
        Metric::RttP50Us,
        Metric::RttP99Us,
        Metric::RttP999Us,
        Metric::TcpConnPerSecond,
        Metric::CpuMachineSecondsPerGb,
        Metric::CpuSwitchSecondsPerGb,
        Metric::PolicyApplySeconds,
        Metric::TcpGbps1Flood,
        Metric::FloodRatio,
        Metric::CtxSwitchesMachinePerGb,
        Metric::WakeupsPerGb,
        Metric::SyscallsPerGb,
        Metric::FramesPerBatch,
        Metric::SoftwareChecksumRatio,
        Metric::SoftwareSegmentationRatio,
        Metric::TableEntries,
        Metric::SwitchResidentMib,
    ];

    /// Stable key (CSV, JSON).
    pub fn key(self) -> &'static str {
        match self {
            Metric::TcpGbps1 => "tcp_1stream",
            Metric::TcpGbps4 => "tcp_4streams",
            Metric::UdpPps => "udp64_pps",
            Metric::UdpLossPercent => "udp64_loss",
            Metric::RttP50Us => "rtt_p50",
            Metric::RttP99Us => "rtt_p99",
            Metric::RttP999Us => "rtt_p99.9",
            Metric::TcpConnPerSecond => "tcp_conn_rate",
            Metric::CpuMachineSecondsPerGb => "cpu_machine_per_gb",
            Metric::CpuSwitchSecondsPerGb => "cpu_switch_per_gb",
            Metric::PolicyApplySeconds => "policy_apply",
            Metric::TcpGbps1Flood => "tcp_1stream_flood",
            Metric::FloodRatio => "flood_ratio",
            Metric::CtxSwitchesMachinePerGb => "ctxt_machine_per_gb",
            Metric::WakeupsPerGb => "switch_wakeups_per_gb",
            Metric::SyscallsPerGb => "switch_syscalls_per_gb",
            Metric::FramesPerBatch => "switch_frames_per_batch",
            Metric::SoftwareChecksumRatio => "switch_sw_checksum",
            Metric::SoftwareSegmentationRatio => "switch_sw_segmentation",
            Metric::TableEntries => "table_entries",
            Metric::SwitchResidentMib => "switch_resident_mib",
        }
    }

    /// Label for the table.
    pub fn label(self) -> &'static str {
        match self {
            Metric::TcpGbps1 => "TCP 1 stream",
            Metric::TcpGbps4 => "TCP 4 streams",
            Metric::UdpPps => "UDP 64B rate",
            Metric::UdpLossPercent => "UDP 64B loss",
            Metric::RttP50Us => "RTT p50",
            Metric::RttP99Us => "RTT p99",
            Metric::RttP999Us => "RTT p99.9",
            Metric::TcpConnPerSecond => "TCP conn/s",
            Metric::CpuMachineSecondsPerGb => "CPU machine/GB",
            Metric::CpuSwitchSecondsPerGb => "CPU switch/GB",
            Metric::PolicyApplySeconds => "Apply",
            Metric::TcpGbps1Flood => "TCP 1 stream, flooded",
            Metric::FloodRatio => "flooded / quiet",
            Metric::CtxSwitchesMachinePerGb => "Ctx switches machine/GB",
            Metric::WakeupsPerGb => "Worker wake-ups/GB",
            Metric::SyscallsPerGb => "Worker syscalls/GB",
            Metric::FramesPerBatch => "Frames per batch",
            Metric::SoftwareChecksumRatio => "SW checksum bytes/byte",
            Metric::SoftwareSegmentationRatio => "SW segmentation bytes/byte",
            Metric::TableEntries => "Table entries",
            Metric::SwitchResidentMib => "vswitchd resident",
        }
    }

    /// Unit of the value.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::TcpGbps1 | Metric::TcpGbps4 | Metric::TcpGbps1Flood => "Gbit/s",
            Metric::FloodRatio
            | Metric::SoftwareChecksumRatio
            | Metric::SoftwareSegmentationRatio => "x",
            Metric::CtxSwitchesMachinePerGb | Metric::WakeupsPerGb | Metric::SyscallsPerGb => "/GB",
            Metric::FramesPerBatch => "frames",
            Metric::TableEntries => "entries",
            Metric::SwitchResidentMib => "MiB",
            Metric::UdpPps => "pkt/s",
            Metric::UdpLossPercent => "%",
            Metric::RttP50Us | Metric::RttP99Us | Metric::RttP999Us => "us",
            Metric::TcpConnPerSecond => "conn/s",
            Metric::CpuMachineSecondsPerGb | Metric::CpuSwitchSecondsPerGb => "s/GB",
            Metric::PolicyApplySeconds => "s",
        }
    }

    /// Whether a larger value is better (for the reader; ratios are always variant/kernel).
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::TcpGbps1
                | Metric::TcpGbps4
                | Metric::UdpPps
                | Metric::TcpConnPerSecond
                | Metric::TcpGbps1Flood
                | Metric::FloodRatio
                | Metric::FramesPerBatch
        )
    }
}

/// The equivalence check carried by every sample: what was sent and what arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `bytes`, `packets`, `replies` or `connections`.
    pub unit: &'static str,
    /// Sent by the source.
    pub sent: u64,
    /// Delivered to the sink.
    pub delivered: u64,
}

impl Check {
    /// Adds another run's counts.
    pub fn add(self, other: Check) -> Check {
        Check {
            unit: self.unit,
            sent: self.sent + other.sent,
            delivered: self.delivered + other.delivered,
        }
    }

    /// `delivered / sent` in percent (0 if nothing was sent).
    pub fn delivered_percent(self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.delivered as f64 * 100.0 / self.sent as f64
        }
    }
}

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Scenario key (`l2`, ...).
    pub scenario: String,
    /// Variant label (`kernel`, `vswitch-tap-w1`, ...).
    pub variant: String,
    /// What was measured.
    pub metric: Metric,
    /// 1-based run number (warmups are not recorded).
    pub run: u32,
    /// The value, in `metric.unit()`.
    pub value: f64,
    /// What was sent and delivered in that run.
    pub check: Check,
}

/// What happened to one variant of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// Measured; the samples are in the result.
    Measured,
    /// Not run, and that is expected (a missing tool, a feature this vswitchd lacks).
    Skipped(String),
    /// Tried and broke.
    Failed(String),
}

/// The samples of one variant of one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantResult {
    /// Scenario key.
    pub scenario: String,
    /// Variant label.
    pub variant: String,
    /// Measured, skipped or failed.
    pub outcome: Outcome,
    /// The recorded samples (possibly partial if it failed midway).
    pub samples: Vec<Sample>,
}

/// Median and spread of one metric's runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of runs.
    pub count: usize,
}

/// Median, min and max of `values`; `None` when empty. NaNs are ignored.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: sorted[0],
        max: sorted[n - 1],
        count: n,
    })
}

/// `value / baseline`, or `None` when the baseline is missing or zero.
pub fn ratio(value: f64, baseline: Option<f64>) -> Option<f64> {
    baseline
        .filter(|b| *b != 0.0 && b.is_finite())
        .map(|b| value / b)
}

/// One metric of one variant, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSummary {
    /// Metric key.
    pub metric: &'static str,
    /// Table label.
    pub label: &'static str,
    /// Unit.
    pub unit: &'static str,
    /// Whether larger is better.
    pub higher_is_better: bool,
    /// Median and spread.
    #[serde(flatten)]
    pub spread: Spread,
    /// Each run's value, in order.
    pub runs: Vec<f64>,
    /// Median over the kernel's median in the same run of the harness.
    pub ratio_to_kernel: Option<f64>,
    /// Sent/delivered, summed over the runs.
    pub check: Check,
}

/// One variant of one scenario, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantSummary {
    /// Variant label.
    pub variant: String,
    /// Measured, skipped or failed (with the reason).
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The figures.
    pub metrics: Vec<MetricSummary>,
}

/// One scenario, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioSummary {
    /// Scenario key.
    pub scenario: String,
    /// What the scenario is.
    pub description: String,
    /// Its variants, in the order they ran.
    pub variants: Vec<VariantSummary>,
}

/// Groups results by scenario (in order of first appearance) and computes medians, spreads
/// and ratios to the kernel variant of the same scenario.
pub fn summarize(
    results: &[VariantResult],
    describe: impl Fn(&str) -> String,
) -> Vec<ScenarioSummary> {
    let mut scenarios: Vec<ScenarioSummary> = Vec::new();
    for result in results {
        let baseline = results
            .iter()
            .find(|r| r.scenario == result.scenario && r.variant == BASELINE);
        let metrics = Metric::ALL
            .iter()
            .filter_map(|&metric| {
                let samples: Vec<&Sample> = result
                    .samples
                    .iter()
                    .filter(|s| s.metric == metric)
                    .collect();
                let runs: Vec<f64> = samples.iter().map(|s| s.value).collect();
                let spread = spread(&runs)?;
                let check = samples.iter().map(|s| s.check).reduce(Check::add)?;
                let base = baseline.and_then(|b| {
                    let values: Vec<f64> = b
                        .samples
                        .iter()
                        .filter(|s| s.metric == metric)
                        .map(|s| s.value)
                        .collect();
                    self::spread(&values).map(|s| s.median)
                });
                Some(MetricSummary {
                    metric: metric.key(),
                    label: metric.label(),
                    unit: metric.unit(),
                    higher_is_better: metric.higher_is_better(),
                    spread,
                    runs,
                    ratio_to_kernel: ratio(spread.median, base),
                    check,
                })
            })
            .collect();
        let summary = VariantSummary {
            variant: result.variant.clone(),
            outcome: result.outcome.clone(),
            metrics,
        };
        match scenarios.iter_mut().find(|s| s.scenario == result.scenario) {
            Some(scenario) => scenario.variants.push(summary),
            None => scenarios.push(ScenarioSummary {
                scenario: result.scenario.clone(),
                description: describe(&result.scenario),
                variants: vec![summary],
            }),
        }
    }
    scenarios
}

/// Formats a figure with about three significant digits, or an integer when large.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        group_thousands(value)
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// A count with thousands grouped: `0`, `100`, `10,000`.
pub fn format_count(count: u64) -> String {
    group_thousands(count as f64)
}

fn group_thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if value < 0.0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// A count in human units: `1.23 GB`, `4.5M pkts`.
pub fn format_amount(count: u64, unit: &str) -> String {
    let value = count as f64;
    let (scaled, suffix) = if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let number = if suffix.is_empty() {
        format!("{count}")
    } else {
        format!("{scaled:.2}")
    };
    match unit {
        "bytes" => format!("{number} {suffix}B"),
        other => format!("{number}{suffix} {other}"),
    }
}

/// Renders rows as aligned columns; `align` has one letter per column, `l` (left) or `r`
/// (right; also for missing letters); two spaces between columns; no trailing spaces.
pub fn render_columns(header: &[&str], rows: &[Vec<String>], align: &str) -> String {
    let left: Vec<bool> = (0..header.len())
        .map(|i| align.as_bytes().get(i) == Some(&b'l'))
        .collect();
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if left[i] {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// The terminal table of one scenario (also the body of summary.txt).
pub fn render_scenario(scenario: &ScenarioSummary) -> String {
    let mut out = format!("== {}: {} ==\n", scenario.scenario, scenario.description);
    let header = [
        "metric",
        "variant",
        "median",
        "min",
        "max",
        "unit",
        "vs kernel",
        "runs",
        "delivered",
    ];
    let mut rows = Vec::new();
    for metric in Metric::ALL {
        let mut first = true;
        for variant in &scenario.variants {
            let Some(summary) = variant.metrics.iter().find(|m| m.metric == metric.key()) else {
                continue;
            };
            rows.push(vec![
                if first {
                    metric.label().to_owned()
                } else {
                    String::new()
                },
                variant.variant.clone(),
                format_value(summary.spread.median),
                format_value(summary.spread.min),
                format_value(summary.spread.max),
                metric.unit().to_owned(),
                summary
                    .ratio_to_kernel
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
                summary.spread.count.to_string(),
                format!(
                    "{:.1}% of {}",
                    summary.check.delivered_percent(),
                    format_amount(summary.check.sent, summary.check.unit)
                ),
            ]);
            first = false;
        }
    }
    if rows.is_empty() {
        out.push_str("(no figures)\n");
    } else {
        out.push_str(&render_columns(&header, &rows, "llrrrlrrl"));
    }
    for variant in &scenario.variants {
        match &variant.outcome {
            Outcome::Measured => {}
            Outcome::Skipped(reason) => {
                let _ = writeln!(out, "{}: skipped: {reason}", variant.variant);
            }
            Outcome::Failed(reason) => {
                let _ = writeln!(out, "{}: FAILED: {reason}", variant.variant);
            }
        }
    }
    out
}

/// The scenario keys of the `policy` cases (`policy-<count>`) and their counts.
fn policy_count(key: &str) -> Option<u64> {
    key.strip_prefix("policy-")?.parse().ok()
}

/// The `policy` overview: per policy count and variant, TCP 1 stream and TCP conn/s with
/// their ratios to the same variant without policies (`vs 0`) and to the kernel with the
/// same policies (`vs kernel`), and the time the rule set took to apply; `None` when no
/// `policy` case ran.
pub fn render_policy_overview(scenarios: &[ScenarioSummary]) -> Option<String> {
    let cases: Vec<(u64, &ScenarioSummary)> = scenarios
        .iter()
        .filter_map(|scenario| Some((policy_count(&scenario.scenario)?, scenario)))
        .collect();
    if cases.is_empty() {
        return None;
    }
    let median = |scenario: &ScenarioSummary, variant: &str, metric: Metric| {
        scenario
            .variants
            .iter()
            .find(|v| v.variant == variant)?
            .metrics
            .iter()
            .find(|m| m.metric == metric.key())
            .map(|m| m.spread.median)
    };
    let without = cases
        .iter()
        .find(|(count, _)| *count == 0)
        .map(|(_, scenario)| *scenario);
    let times = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
    let figure = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), format_value);
    let mut rows = Vec::new();
    for (count, scenario) in &cases {
        for variant in &scenario.variants {
            if variant.outcome != Outcome::Measured {
                continue;
            }
            let name = variant.variant.as_str();
            let mut row = vec![format_count(*count), name.to_owned()];
            for metric in [Metric::TcpGbps1, Metric::TcpConnPerSecond] {
                let value = median(scenario, name, metric);
                let own = without.and_then(|zero| median(zero, name, metric));
                let kernel = median(scenario, BASELINE, metric);
                row.push(figure(value));
                row.push(times(value.and_then(|v| ratio(v, own))));
                row.push(times(value.and_then(|v| ratio(v, kernel))));
            }
            row.push(figure(median(scenario, name, Metric::PolicyApplySeconds)));
            rows.push(row);
        }
    }
    let header = [
        "policies",
        "variant",
        "TCP Gbit/s",
        "vs 0",
        "vs kernel",
        "conn/s",
        "vs 0",
        "vs kernel",
        "apply s",
    ];
    Some(format!(
        "== policy: overview (medians; vs 0 = the same variant without policies, vs kernel = \
         the kernel with the same policies, both from this run) ==\n{}",
        render_columns(&header, &rows, "rl")
    ))
}

/// Quotes a CSV field when it needs it (RFC 4180).
pub fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// raw.csv: one line per sample.
pub fn render_csv(results: &[VariantResult]) -> String {
    let mut out =
        String::from("scenario,variant,metric,unit,run,value,check_unit,sent,delivered\n");
    for sample in results.iter().flat_map(|r| &r.samples) {
        let fields = [
            csv_field(&sample.scenario),
            csv_field(&sample.variant),
            sample.metric.key().to_owned(),
            csv_field(sample.metric.unit()),
            sample.run.to_string(),
            format!("{}", sample.value),
            sample.check.unit.to_owned(),
            sample.check.sent.to_string(),
            sample.check.delivered.to_string(),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Facts about the machine and the run, for README.SETUP, summary.txt and the JSON (and read
/// back from it by `perf report`; fields an older file lacks are empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RunInfo {
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started_utc: String,
    /// Host name.
    pub host: String,
    /// `uname -srvm`.
    pub kernel: String,
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cores: usize,
    /// MemTotal.
    pub memory: String,
    /// The perf command line.
    pub command: String,
    /// Tool versions (iperf3, ip, vswitchd).
    pub tools: Vec<String>,
    /// The settings in effect (runs, durations, variants).
    pub settings: Vec<String>,
}

/// The whole JSON document.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// Harness name and version.
    pub harness: String,
    /// Machine and run facts.
    pub run: &'a RunInfo,
    /// Per-scenario figures.
    pub scenarios: &'a [ScenarioSummary],
    /// How the figures are taken.
    pub method: &'a [&'a str],
}

/// The method notes printed under every table and into README.SETUP.
pub const METHOD: &[&str] = &[
    "Every variant of a scenario runs in the same invocation, one after the other, on its own fresh namespaces; ratios are variant median / kernel median of that invocation.",
    "Per variant: a connectivity check, a warmup (TCP and UDP, and short connections in lb, not recorded), then N runs; each run measures TCP 1 stream, TCP 4 streams, UDP 64-byte rate and round-trip latency in that order (then TCP conn/s in lb). Figures are medians with min..max.",
    "TCP: iperf3 -J, receiver-side rate (end.sum_received). Check: bytes sent vs received.",
    "UDP 64B: our sender (sendmmsg, 64 per call, 18-byte payload = 64-byte frame with FCS) for the run's duration, our counting receiver (recvmmsg); rate = packets received / sending time; loss = 1 - received/sent. Check: packets sent vs received.",
    "RTT: our UDP ping-pong, one request in flight, 18-byte payload, HDR histogram (3 significant digits); a reply later than 500 ms counts as lost. Check: requests vs replies.",
    "TCP conn/s (lb and policy, measured last in each run): 4 client workers, each opening a TCP connection to the virtual IP (policy: to the server itself), reading the one byte the server writes, waiting for the server's close and closing, in a loop; figure = connections completed / client run time. Check: connections attempted vs completed (a connection counts as failed after 1 s without progress).",
    "CPU machine/GB: busy jiffies of all CPUs (/proc/stat user+nice+system+irq+softirq) during the 1-stream TCP run, per 10^9 bytes delivered; includes sender, receiver and switch, so it compares like with like.",
    "CPU switch/GB: vswitchd's (or ovs-vswitchd's) utime+stime from /proc/<pid>/stat during the same run; for the kernel, machine-wide system+softirq, which also holds both endpoints' TCP/IP stack work, so it is an upper bound of the kernel's switching cost.",
    "Apply (policy and routes, once per variant): in policy, the kernel's `nft -f` of the whole rule set; vswitchd, from the first `vswitchctl apply -f` until `vswitchctl get networkpolicies -A` lists every policy (it compiles them within about a second after; the harness waits 2 s). Check: policies in the rule set vs policies found (vswitchd: listed; kernel: jumps in the server's ingress chain). In routes, the kernel's `ip -batch` of every route; vswitchd's `vswitchctl apply -f` of every Route, 100,000 per request. Check: routes asked vs static routes in the table.",
    "Table entries (conntrack, routes, macs; after each run): the table's size: tracked connections (vswitchctl conntrack --count; nf_conntrack_count), static routes (vswitchctl routes --count; ip route), MACs learned behind the remote node (vswitchctl fdb --count, behind a VTEP; bridge fdb entries of br0 on vxlan0).",
    "Containers keep default offloads (TSO/GSO, checksum offload) in every variant; MTU 1500 unless the scenario says otherwise.",
];

/// summary.txt: run facts, the tables and the method.
pub fn render_summary(info: &RunInfo, scenarios: &[ScenarioSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "perf results, {} on {}", info.started_utc, info.host);
    let _ = writeln!(out, "command: {}", info.command);
    let _ = writeln!(
        out,
        "machine: {}, {} x {}, {}",
        info.kernel, info.cores, info.cpu, info.memory
    );
    let _ = writeln!(out, "settings: {}", info.settings.join("; "));
    out.push('\n');
    for scenario in scenarios {
        out.push_str(&render_scenario(scenario));
        out.push('\n');
    }
    if let Some(overview) = render_policy_overview(scenarios) {
        out.push_str(&overview);
        out.push('\n');
    }
    out.push_str("Method:\n");
    for line in METHOD {
        let _ = writeln!(out, "- {line}");
    }
    out
}

/// README.SETUP: machine, tools, settings, method and every command the harness ran.
pub fn render_setup(info: &RunInfo, commands: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "perf run of {} on {}\n", info.started_utc, info.host);
    let _ = writeln!(out, "Command:  {}", info.command);
    let _ = writeln!(out, "Kernel:   {}", info.kernel);
    let _ = writeln!(out, "CPU:      {} ({} online)", info.cpu, info.cores);
    let _ = writeln!(out, "Memory:   {}", info.memory);
    out.push_str("\nTools:\n");
    for tool in &info.tools {
        let _ = writeln!(out, "- {tool}");
    }
    out.push_str("\nSettings:\n");
    for setting in &info.settings {
        let _ = writeln!(out, "- {setting}");
    }
    out.push_str("\nMethod:\n");
    for line in METHOD {
        let _ = writeln!(out, "- {line}");
    }
    out.push_str("\nCommands run by the harness (first occurrence of each, in order):\n");
    for command in commands {
        let _ = writeln!(out, "  {command}");
    }
    out
}

/// The civil date `(year, month, day)` of a count of days since 1970-01-01 (proleptic
/// Gregorian; the well-known days-to-civil algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn utc_timestamp(epoch_seconds: u64) -> String {
    let days = i64::try_from(epoch_seconds / 86_400).unwrap_or(0);
    let rest = epoch_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A fresh results directory `<base>/<date>-<host>` (with `-2`, `-3`, ... if taken).
///
/// # Errors
/// It cannot be created.
pub fn create_results_dir(base: &Path, date: &str, host: &str) -> Result<PathBuf> {
    let safe_host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    for attempt in 1u32.. {
        let name = if attempt == 1 {
            format!("{date}-{safe_host}")
        } else {
            format!("{date}-{safe_host}-{attempt}")
        };
        let dir = base.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err).with_context(|| format!("creating {}", dir.display())),
        }
    }
    unreachable!("u32 attempts exhausted")
}

/// Writes README.SETUP, raw.csv, summary.txt and results.json into `dir`.
///
/// # Errors
/// A file cannot be written.
pub fn write_results_dir(
    dir: &Path,
    setup: &str,
    csv: &str,
    summary: &str,
    json: &str,
) -> Result<()> {
    for (name, text) in [
        ("README.SETUP", setup),
        ("raw.csv", csv),
        ("summary.txt", summary),
        ("results.json", json),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(variant: &str, metric: Metric, run: u32, value: f64) -> Sample {
        Sample {
            scenario: "l2".into(),
            variant: variant.into(),
            metric,
            run,
            value,
            check: Check {
                unit: "bytes",
                sent: 1000,
                delivered: 990,
            },
        }
    }

    fn results() -> Vec<VariantResult> {
        vec![
            VariantResult {
                scenario: "l2".into(),
                variant: "kernel".into(),
                outcome: Outcome::Measured,
                samples: vec![
                    sample("kernel", Metric::TcpGbps1, 1, 10.0),
                    sample("kernel", Metric::TcpGbps1, 2, 30.0),
                    sample("kernel", Metric::TcpGbps1, 3, 20.0),
                ],
            },
            VariantResult {
                scenario: "l2".into(),
                variant: "vswitch-tap-w1".into(),
                outcome: Outcome::Measured,
                samples: vec![
                    sample("vswitch-tap-w1", Metric::TcpGbps1, 1, 15.0),
                    sample("vswitch-tap-w1", Metric::TcpGbps1, 2, 5.0),
                ],
            },
            VariantResult {
                scenario: "l2".into(),
                variant: "vswitch-veth-w1".into(),
                outcome: Outcome::Failed("vswitchd exited".into()),
                samples: vec![],
            },
        ]
    }

    #[test]
    fn spread_odd_even_empty_nan() {
        let odd = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            (odd.median, odd.min, odd.max, odd.count),
            (2.0, 1.0, 3.0, 3)
        );
        let even = spread(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[f64::NAN]), None);
        assert_eq!(spread(&[f64::NAN, 7.0]).unwrap().median, 7.0);
    }

    #[test]
    fn ratio_needs_a_usable_baseline() {
        assert_eq!(ratio(5.0, Some(10.0)), Some(0.5));
        assert_eq!(ratio(5.0, Some(0.0)), None);
        assert_eq!(ratio(5.0, None), None);
    }

    #[test]
    fn summarize_computes_ratio_to_kernel_of_same_scenario() {
        let scenarios = summarize(&results(), |_| "two containers".into());
        assert_eq!(scenarios.len(), 1);
        let variants = &scenarios[0].variants;
        assert_eq!(variants.len(), 3);
        let kernel = &variants[0].metrics[0];
        assert_eq!(kernel.spread.median, 20.0);
        assert_eq!(kernel.ratio_to_kernel, Some(1.0));
        assert_eq!(kernel.check.sent, 3000);
        let tap = &variants[1].metrics[0];
        assert_eq!(tap.spread.median, 10.0);
        assert_eq!(tap.ratio_to_kernel, Some(0.5));
        assert!(variants[2].metrics.is_empty());
    }

    #[test]
    fn table_layout() {
        let scenarios = summarize(&results(), |_| "two containers".into());
        let table = render_scenario(&scenarios[0]);
        let expected = "\
== l2: two containers ==
metric        variant         median   min   max  unit    vs kernel  runs  delivered
------------  --------------  ------  ----  ----  ------  ---------  ----  ----------------
TCP 1 stream  kernel            20.0  10.0  30.0  Gbit/s      1.00x     3  99.0% of 3.00 kB
              vswitch-tap-w1    10.0  5.00  15.0  Gbit/s      0.50x     2  99.0% of 2.00 kB
vswitch-veth-w1: FAILED: vswitchd exited
";
        assert_eq!(table, expected, "got:\n{table}");
    }

    fn policy_summaries() -> Vec<ScenarioSummary> {
        let case = |count: u32, figures: &[(&str, f64, f64, f64)]| {
            let mut samples = Vec::new();
            let mut results = Vec::new();
            for &(variant, tcp, conn, apply) in figures {
                let sample = |metric, value| Sample {
                    scenario: format!("policy-{count}"),
                    variant: variant.into(),
                    metric,
                    run: 1,
                    value,
                    check: Check {
                        unit: "bytes",
                        sent: 1,
                        delivered: 1,
                    },
                };
                samples.push(sample(Metric::TcpGbps1, tcp));
                samples.push(sample(Metric::TcpConnPerSecond, conn));
                if apply > 0.0 {
                    samples.push(sample(Metric::PolicyApplySeconds, apply));
                }
                results.push(VariantResult {
                    scenario: format!("policy-{count}"),
                    variant: variant.into(),
                    outcome: Outcome::Measured,
                    samples: std::mem::take(&mut samples),
                });
            }
            results
        };
        let mut results = case(
            0,
            &[
                ("kernel", 20.0, 10_000.0, 0.0),
                ("vswitch-tap-w1", 10.0, 8_000.0, 0.0),
            ],
        );
        results.extend(case(
            1000,
            &[
                ("kernel", 18.0, 5_000.0, 1.5),
                ("vswitch-tap-w1", 9.6, 8_000.0, 0.25),
            ],
        ));
        results.push(VariantResult {
            scenario: "policy-1000".into(),
            variant: "vswitch-veth-w1".into(),
            outcome: Outcome::Skipped("not supported".into()),
            samples: vec![],
        });
        summarize(&results, |_| "policy".into())
    }

    #[test]
    fn policy_overview() {
        assert_eq!(
            render_policy_overview(&summarize(&results(), |_| "l2".into())),
            None
        );
        let text = render_policy_overview(&policy_summaries()).expect("policy cases");
        let expected = "\
== policy: overview (medians; vs 0 = the same variant without policies, vs kernel = the kernel with the same policies, both from this run) ==
policies  variant         TCP Gbit/s   vs 0  vs kernel  conn/s   vs 0  vs kernel  apply s
--------  --------------  ----------  -----  ---------  ------  -----  ---------  -------
       0  kernel                20.0  1.00x      1.00x  10,000  1.00x      1.00x        -
       0  vswitch-tap-w1        10.0  1.00x      0.50x   8,000  1.00x      0.80x        -
   1,000  kernel                18.0  0.90x      1.00x   5,000  0.50x      1.00x     1.50
   1,000  vswitch-tap-w1        9.60  0.96x      0.53x   8,000  1.00x      1.60x    0.250
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn columns_align_and_trim() {
        let text = render_columns(
            &["a", "num"],
            &[
                vec!["long".into(), "1".into()],
                vec!["x".into(), "12345".into()],
            ],
            "l",
        );
        assert_eq!(text, "a       num\n----  -----\nlong      1\nx     12345\n");
    }

    #[test]
    fn value_and_amount_formatting() {
        assert_eq!(format_value(1_234_567.4), "1,234,567");
        assert_eq!(format_value(999.6), "1000");
        assert_eq!(format_value(38.21), "38.2");
        assert_eq!(format_value(1.234), "1.23");
        assert_eq!(format_value(0.01234), "0.012");
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(10_000), "10,000");
        assert_eq!(format_amount(23_100_000_000, "bytes"), "23.10 GB");
        assert_eq!(format_amount(3_100_000, "packets"), "3.10M packets");
        assert_eq!(format_amount(12, "replies"), "12 replies");
    }

    #[test]
    fn csv_rows_and_quoting() {
        let csv = render_csv(&results());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "scenario,variant,metric,unit,run,value,check_unit,sent,delivered"
        );
        assert_eq!(lines[1], "l2,kernel,tcp_1stream,Gbit/s,1,10,bytes,1000,990");
        assert_eq!(lines.len(), 1 + 5);
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn json_has_status_and_ratios() {
        let scenarios = summarize(&results(), |_| "d".into());
        let json = serde_json::to_value(&scenarios).unwrap();
        assert_eq!(json[0]["variants"][0]["status"], "measured");
        assert_eq!(json[0]["variants"][2]["status"], "failed");
        assert_eq!(json[0]["variants"][2]["reason"], "vswitchd exited");
        assert_eq!(json[0]["variants"][1]["metrics"][0]["ratio_to_kernel"], 0.5);
        assert_eq!(json[0]["variants"][1]["metrics"][0]["median"], 10.0);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn results_dir_gets_a_suffix_when_taken() {
        let base = std::env::temp_dir().join(format!("vsperf-test-{}", std::process::id()));
        let first = create_results_dir(&base, "2026-01-02", "my host").unwrap();
        let second = create_results_dir(&base, "2026-01-02", "my host").unwrap();
        assert_eq!(first.file_name().unwrap(), "2026-01-02-my_host");
        assert_eq!(second.file_name().unwrap(), "2026-01-02-my_host-2");
        write_results_dir(&first, "s", "c", "m", "{}").unwrap();
        assert_eq!(std::fs::read_to_string(first.join("raw.csv")).unwrap(), "c");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
