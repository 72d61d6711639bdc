//! What the report draws: one grouped bar chart per metric, a group per scenario and a bar
//! per measured variant, each bar its median with the runs' min..max and its ratio to the
//! kernel's median of the same invocation.
//!
//! Pure data, no drawing: `svg` turns a [`BarChart`] into an image and `page` into a table,
//! so both show the same figures.

use crate::report::{BASELINE, Metric};

use super::stored::StoredResults;

/// An sRGB colour.
pub type Rgb = [u8; 3];

/// The kernel, the baseline every ratio is taken against: neutral grey.
const KERNEL_COLOR: Rgb = [0x6b, 0x6b, 0x6b];

/// Open vSwitch, the other userspace switch: a colour no vswitchd variant gets.
const OVS_COLOR: Rgb = [0xd9, 0x5f, 0x02];

/// The vswitchd variants, in the order they first appear (Okabe-Ito, then Tableau, hues that
/// stay apart for most colour-blind readers), then again from the start: sixteen, more than
/// a full run's kinds x workers x polling x placements.
const VSWITCH_COLORS: [Rgb; 16] = [
    [0x00, 0x72, 0xb2],
    [0x00, 0x9e, 0x73],
    [0x56, 0xb4, 0xe9],
    [0xcc, 0x79, 0xa7],
    [0xe6, 0x9f, 0x00],
    [0x8c, 0x56, 0x4b],
    [0x4e, 0x79, 0xa7],
    [0x59, 0xa1, 0x4f],
    [0xb0, 0x7a, 0xa1],
    [0x9c, 0x75, 0x5f],
    [0x76, 0xb7, 0xb2],
    [0xe1, 0x57, 0x59],
    [0xed, 0xc9, 0x48],
    [0xff, 0x9d, 0xa7],
    [0x1f, 0x3b, 0x73],
    [0x8c, 0x8c, 0x2b],
];

/// The chart sections of the page, in order, with the metrics each holds.
pub const SECTIONS: [(&str, &[Metric]); 7] = [
    (
        "Throughput",
        &[
            Metric::TcpGbps1,
            Metric::TcpGbps4,
            Metric::UdpPps,
            Metric::UdpLossPercent,
            Metric::TcpConnPerSecond,
        ],
    ),
    (
        "Latency",
        &[Metric::RttP50Us, Metric::RttP99Us, Metric::RttP999Us],
    ),
    (
        "CPU per GB",
        &[
            Metric::CpuMachineSecondsPerGb,
            Metric::CpuSwitchSecondsPerGb,
        ],
    ),
    (
        "Where the cycles go",
        &[
            Metric::CtxSwitchesMachinePerGb,
            Metric::WakeupsPerGb,
            Metric::SyscallsPerGb,
            Metric::FramesPerBatch,
            Metric::SoftwareChecksumRatio,
            Metric::SoftwareSegmentationRatio,
        ],
    ),
    ("Memory", &[Metric::SwitchResidentMib]),
    ("Apply (policy, routes)", &[Metric::PolicyApplySeconds]),
    ("Floods", &[Metric::TcpGbps1Flood, Metric::FloodRatio]),
];

/// One variant's figure in one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Variant label.
    pub variant: String,
    /// Its colour, the same in every chart of a report.
    pub color: Rgb,
    /// The plotted value.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
    /// Number of runs.
    pub runs: usize,
    /// Median over the kernel's median (`None` for metrics without one, such as loss).
    pub ratio_to_kernel: Option<f64>,
}

impl Bar {
    /// Whether this is the baseline's bar (drawn without a ratio label).
    pub fn is_baseline(&self) -> bool {
        self.variant == BASELINE
    }
}

/// One scenario's bars.
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    /// Scenario key.
    pub scenario: String,
    /// Its measured variants, in the order they ran (the kernel first).
    pub bars: Vec<Bar>,
}

/// A legend entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegendEntry {
    /// Variant label.
    pub variant: String,
    /// Its colour.
    pub color: Rgb,
}

/// One metric over every scenario that measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// The metric.
    pub metric: Metric,
    /// One group per scenario, in the order they ran.
    pub groups: Vec<BarGroup>,
    /// The variants drawn, in the report's order.
    pub legend: Vec<LegendEntry>,
}

impl BarChart {
    /// The largest value drawn (a whisker's top), at least 0.
    pub fn top(&self) -> f64 {
        self.groups
            .iter()
            .flat_map(|g| &g.bars)
            .map(|b| b.max.max(b.median))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
    }

    /// The most bars in one group.
    pub fn widest_group(&self) -> usize {
        self.groups.iter().map(|g| g.bars.len()).max().unwrap_or(0)
    }

    /// File-name stem of the chart: `report-tcp_1stream`, `report-rtt_p99_9`.
    pub fn file_stem(&self) -> String {
        let key: String = self
            .metric
            .key()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("report-{key}")
    }
}

/// Every variant of the results, the kernel first, then in order of first appearance, each
/// with the colour it has in every chart.
pub fn variant_colors(results: &StoredResults) -> Vec<LegendEntry> {
    let mut names: Vec<&str> = Vec::new();
    for variant in results.scenarios.iter().flat_map(|s| &s.variants) {
        if !names.contains(&variant.variant.as_str()) {
            names.push(&variant.variant);
        }
    }
    names.sort_by_key(|name| *name != BASELINE);
    let mut next = 0;
    names
        .into_iter()
        .map(|name| {
            let color = if name == BASELINE {
                KERNEL_COLOR
            } else if name.starts_with("ovs") {
                OVS_COLOR
            } else {
                next += 1;
                VSWITCH_COLORS[(next - 1) % VSWITCH_COLORS.len()]
            };
            LegendEntry {
                variant: name.to_owned(),
                color,
            }
        })
        .collect()
}

/// The chart of `metric`: a group per scenario with at least one measured variant that has
/// it; `None` when no scenario has it.
pub fn bar_chart(
    results: &StoredResults,
    colors: &[LegendEntry],
    metric: Metric,
) -> Option<BarChart> {
    let color_of = |variant: &str| {
        colors
            .iter()
            .find(|entry| entry.variant == variant)
            .map_or(KERNEL_COLOR, |entry| entry.color)
    };
    let groups: Vec<BarGroup> = results
        .scenarios
        .iter()
        .filter_map(|scenario| {
            let bars: Vec<Bar> = scenario
                .variants
                .iter()
                .filter(|v| v.is_measured())
                .filter_map(|variant| {
                    let figures = variant.metric(metric.key())?;
                    Some(Bar {
                        variant: variant.variant.clone(),
                        color: color_of(&variant.variant),
                        median: figures.median,
                        min: figures.min,
                        max: figures.max,
                        runs: figures.count,
                        ratio_to_kernel: figures.ratio_to_kernel,
                    })
                })
                .collect();
            (!bars.is_empty()).then(|| BarGroup {
                scenario: scenario.scenario.clone(),
                bars,
            })
        })
        .collect();
    if groups.is_empty() {
        return None;
    }
    let legend = colors
        .iter()
        .filter(|entry| {
            groups
                .iter()
                .any(|g| g.bars.iter().any(|b| b.variant == entry.variant))
        })
        .cloned()
        .collect();
    Some(BarChart {
        metric,
        groups,
        legend,
    })
}

/// Every chart the results hold, section by section ([`SECTIONS`]).
pub fn bar_charts(results: &StoredResults) -> Vec<(&'static str, Vec<BarChart>)> {
    let colors = variant_colors(results);
    SECTIONS
        .iter()
        .map(|(section, metrics)| {
            let charts = metrics
                .iter()
                .filter_map(|&metric| bar_chart(results, &colors, metric))
                .collect();
            (*section, charts)
        })
        .filter(|(_, charts): &(&str, Vec<BarChart>)| !charts.is_empty())
        .collect()
}

/// The scenarios measured once per table size (`policy-N`, `conntrack-N`, `routes-N`,
/// `macs-N`), what their count counts, and the metrics their curves show.
pub const GROWING: [(&str, &str); 4] = [
    ("policy", "policies"),
    ("conntrack", "connections"),
    ("routes", "routes"),
    ("macs", "MACs"),
];

/// The metrics a curve is drawn of.
pub const CURVE_METRICS: [Metric; 4] = [
    Metric::TcpGbps1,
    Metric::CpuMachineSecondsPerGb,
    Metric::CpuSwitchSecondsPerGb,
    Metric::SwitchResidentMib,
];

/// One variant's figure at one table size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The table size.
    pub count: u64,
    /// Median of the runs.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
}

/// One variant over the table sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Variant label.
    pub variant: String,
    /// Its colour.
    pub color: Rgb,
    /// Its figures, by size.
    pub points: Vec<Point>,
}

/// One metric of one growing scenario as its table grows: a curve per variant.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveChart {
    /// The scenario (`routes`).
    pub scenario: &'static str,
    /// What its count counts (`routes`).
    pub counted: &'static str,
    /// The metric.
    pub metric: Metric,
    /// The sizes measured, ascending (the x axis, one step each).
    pub counts: Vec<u64>,
    /// A curve per variant, in the report's order.
    pub curves: Vec<Curve>,
}

impl CurveChart {
    /// File-name stem: `curve-routes-tcp_1stream`.
    pub fn file_stem(&self) -> String {
        let key: String = self
            .metric
            .key()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("curve-{}-{key}", self.scenario)
    }

    /// The largest value drawn (a whisker's top), at least 0.
    pub fn top(&self) -> f64 {
        self.curves
            .iter()
            .flat_map(|c| &c.points)
            .map(|p| p.max.max(p.median))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
    }
}

/// The curves the results hold: for each growing scenario measured at two sizes or more, one
/// chart per [`CURVE_METRICS`] metric.
pub fn curve_charts(results: &StoredResults) -> Vec<CurveChart> {
    let colors = variant_colors(results);
    let mut charts = Vec::new();
    for (scenario, counted) in GROWING {
        let prefix = format!("{scenario}-");
        let mut sized: Vec<(u64, &super::stored::StoredScenario)> = results
            .scenarios
            .iter()
            .filter_map(|s| Some((s.scenario.strip_prefix(&prefix)?.parse().ok()?, s)))
            .collect();
        sized.sort_by_key(|(count, _)| *count);
        sized.dedup_by_key(|(count, _)| *count);
        if sized.len() < 2 {
            continue;
        }
        for metric in CURVE_METRICS {
            let curves: Vec<Curve> = colors
                .iter()
                .filter_map(|entry| {
                    let points: Vec<Point> = sized
                        .iter()
                        .filter_map(|(count, s)| {
                            let variant = s
                                .variants
                                .iter()
                                .find(|v| v.variant == entry.variant && v.is_measured())?;
                            let figures = variant.metric(metric.key())?;
                            Some(Point {
                                count: *count,
                                median: figures.median,
                                min: figures.min,
                                max: figures.max,
                            })
                        })
                        .collect();
                    (!points.is_empty()).then(|| Curve {
                        variant: entry.variant.clone(),
                        color: entry.color,
                        points,
                    })
                })
                .collect();
            if curves.is_empty() {
                continue;
            }
            charts.push(CurveChart {
                scenario,
                counted,
                metric,
                counts: sized.iter().map(|(count, _)| *count).collect(),
                curves,
            });
        }
    }
    charts
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::html::tests::fixture;

    #[test]
    fn kernel_first_and_colors_stable() {
        let colors = variant_colors(&fixture());
        let names: Vec<&str> = colors.iter().map(|e| e.variant.as_str()).collect();
        assert_eq!(
            names,
            ["kernel", "vswitch-tap-w1", "vswitch-veth-w1", "ovs-netdev"]
        );
        assert_eq!(colors[0].color, KERNEL_COLOR);
        assert_eq!(colors[1].color, VSWITCH_COLORS[0]);
        assert_eq!(colors[2].color, VSWITCH_COLORS[1]);
        assert_eq!(colors[3].color, OVS_COLOR);
    }

    #[test]
    fn groups_hold_measured_variants_with_the_metric() {
        let results = fixture();
        let colors = variant_colors(&results);
        let chart = bar_chart(&results, &colors, Metric::TcpGbps1).expect("tcp chart");
        let groups: Vec<(&str, Vec<&str>)> = chart
            .groups
            .iter()
            .map(|g| {
                (
                    g.scenario.as_str(),
                    g.bars.iter().map(|b| b.variant.as_str()).collect(),
                )
            })
            .collect();
        // vxlan's veth variant was skipped: no bar, and the group is narrower.
        assert_eq!(
            groups,
            [
                (
                    "l2",
                    vec!["kernel", "vswitch-tap-w1", "vswitch-veth-w1", "ovs-netdev"]
                ),
                ("vxlan", vec!["kernel", "vswitch-tap-w1"]),
            ]
        );
        let tap = &chart.groups[0].bars[1];
        assert_eq!(
            (tap.median, tap.min, tap.max, tap.runs),
            (14.0, 12.0, 15.0, 3)
        );
        assert_eq!(tap.ratio_to_kernel, Some(0.875));
        assert!(chart.groups[0].bars[0].is_baseline());
        assert_eq!(chart.widest_group(), 4);
        assert_eq!(chart.top(), 17.0);
        assert_eq!(chart.legend.len(), 4);
    }

    #[test]
    fn metrics_nobody_measured_have_no_chart() {
        let results = fixture();
        let colors = variant_colors(&results);
        assert!(bar_chart(&results, &colors, Metric::TcpConnPerSecond).is_none());
        let sections: Vec<(&str, Vec<Metric>)> = bar_charts(&results)
            .into_iter()
            .map(|(name, charts)| (name, charts.iter().map(|c| c.metric).collect()))
            .collect();
        assert_eq!(
            sections,
            [
                ("Throughput", vec![Metric::TcpGbps1, Metric::UdpPps]),
                ("Latency", vec![Metric::RttP99Us]),
            ]
        );
    }

    #[test]
    fn file_stems_are_plain() {
        let results = fixture();
        let colors = variant_colors(&results);
        let chart = bar_chart(&results, &colors, Metric::RttP99Us).expect("rtt chart");
        assert_eq!(chart.file_stem(), "report-rtt_p99");
        let mut renamed = chart;
        renamed.metric = Metric::RttP999Us;
        assert_eq!(renamed.file_stem(), "report-rtt_p99_9");
    }

    /// `routes` at three sizes (given out of order, the largest without vswitchd) and
    /// `conntrack` at one: TCP and machine CPU per GB in each.
    pub(crate) fn growing() -> StoredResults {
        let metric = |key: &str, median: f64| {
            serde_json::json!({
                "metric": key, "label": key, "unit": "u", "higher_is_better": true,
                "median": median, "min": median - 1.0, "max": median + 1.0, "count": 3,
                "runs": [median - 1.0, median, median + 1.0], "ratio_to_kernel": null,
                "check": {"unit": "bytes", "sent": 1000, "delivered": 1000}
            })
        };
        let variant = |name: &str, tcp: f64| {
            serde_json::json!({
                "variant": name, "status": "measured",
                "metrics": [metric("tcp_1stream", tcp), metric("cpu_machine_per_gb", 1.0)]
            })
        };
        let scenario = |key: &str, variants: Vec<serde_json::Value>| serde_json::json!({"scenario": key, "variants": variants});
        let skipped = serde_json::json!({"variant": "vswitch-tap-w1", "status": "failed",
                                          "reason": "apply refused", "metrics": []});
        serde_json::from_value(serde_json::json!({
            "scenarios": [
                scenario("routes-1000", vec![variant("kernel", 19.0), variant("vswitch-tap-w1", 16.0)]),
                scenario("routes-0", vec![variant("kernel", 20.0), variant("vswitch-tap-w1", 17.0)]),
                scenario("routes-1000000", vec![variant("kernel", 18.0), skipped]),
                scenario("conntrack-0", vec![variant("kernel", 18.0)]),
                scenario("l2", vec![variant("kernel", 17.0)]),
            ]
        }))
        .expect("growing fixture")
    }

    #[test]
    fn curves_follow_each_growing_scenario_by_size() {
        let charts = curve_charts(&growing());
        let keys: Vec<(&str, Metric)> = charts.iter().map(|c| (c.scenario, c.metric)).collect();
        assert_eq!(
            keys,
            [
                ("routes", Metric::TcpGbps1),
                ("routes", Metric::CpuMachineSecondsPerGb)
            ],
            "conntrack has one size, l2 none: no curve"
        );
        let tcp = &charts[0];
        assert_eq!(tcp.counts, [0, 1000, 1_000_000]);
        assert_eq!(tcp.file_stem(), "curve-routes-tcp_1stream");
        assert_eq!(tcp.counted, "routes");
        let kernel: Vec<(u64, f64)> = tcp.curves[0]
            .points
            .iter()
            .map(|p| (p.count, p.median))
            .collect();
        assert_eq!(tcp.curves[0].variant, "kernel");
        assert_eq!(kernel, [(0, 20.0), (1000, 19.0), (1_000_000, 18.0)]);
        let vswitch: Vec<u64> = tcp.curves[1].points.iter().map(|p| p.count).collect();
        assert_eq!(vswitch, [0, 1000], "a failed variant has no point");
        assert!((tcp.top() - 21.0).abs() < 1e-9);
        assert!(curve_charts(&fixture()).is_empty());
    }
}
