//! The HTML report (`perf --report`, `perf report DIR`): charts of the medians, min..max and
//! ratios to the kernel, drawn as SVG, with the tables and the setup of the run, in one page
//! beside the JSON results it is drawn from.
//!
//! It is always drawn from the JSON document (`stored`), whether the run just finished or
//! finished a year ago, so the two cannot differ. Drawing is pure ([`render`]); only
//! [`load`] and [`write`] touch files.

pub mod chart;
pub mod page;
pub mod stored;
pub mod svg;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use stored::StoredResults;

/// The file a results directory keeps its JSON in.
pub const RESULTS_FILE: &str = "results.json";

/// The page a results directory gets.
pub const REPORT_FILE: &str = "report.html";

/// A drawn chart.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedChart {
    /// `report-tcp_1stream`, for a file name or an anchor.
    pub stem: String,
    /// The SVG document.
    pub svg: String,
}

/// A drawn report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The page, charts inline.
    pub html: String,
    /// Every chart, also on its own.
    pub charts: Vec<RenderedChart>,
}

/// Draws every chart the results hold and the page around them; `source` names where the
/// results came from (shown on the page).
///
/// # Errors
/// plotters fails to draw a chart.
pub fn render(results: &StoredResults, source: &str) -> Result<Report> {
    let mut sections = Vec::new();
    let mut charts = Vec::new();
    for (section, bar_charts) in chart::bar_charts(results) {
        let mut drawn = Vec::new();
        for bar_chart in bar_charts {
            let svg = svg::render(&bar_chart)?;
            charts.push(RenderedChart {
                stem: bar_chart.file_stem(),
                svg: svg.clone(),
            });
            drawn.push((bar_chart, svg));
        }
        sections.push((section, drawn));
    }
    let mut curves = Vec::new();
    for curve_chart in chart::curve_charts(results) {
        let svg = svg::render_curve(&curve_chart)?;
        charts.push(RenderedChart {
            stem: curve_chart.file_stem(),
            svg: svg.clone(),
        });
        curves.push((curve_chart, svg));
    }
    Ok(Report {
        html: page::render(results, &sections, &curves, source),
        charts,
    })
}

/// Where a report is read from and written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The JSON document.
    pub json: PathBuf,
    /// The directory the page goes to.
    pub dir: PathBuf,
    /// The page's file name (`report.html`, or `<stem>.html` beside a named JSON file).
    pub page: String,
}

impl Source {
    /// A results directory (its `results.json`) or a JSON file written with `--json`.
    ///
    /// # Errors
    /// The path is neither a directory holding `results.json` nor a file.
    pub fn locate(path: &Path) -> Result<Source> {
        if path.is_dir() {
            let json = path.join(RESULTS_FILE);
            if !json.is_file() {
                let inside = results_inside(path);
                let hint = if inside.is_empty() {
                    String::new()
                } else {
                    format!(" (try: perf report {})", inside.join(" "))
                };
                bail!(
                    "{} holds no {RESULTS_FILE}; give a results directory written by perf, or \
                     a JSON file written with --json{hint}",
                    path.display()
                );
            }
            return Ok(Source {
                json,
                dir: path.to_owned(),
                page: REPORT_FILE.to_owned(),
            });
        }
        if !path.is_file() {
            bail!("{}: no such results directory or JSON file", path.display());
        }
        let stem = path
            .file_stem()
            .map_or_else(|| "report".to_owned(), |s| s.to_string_lossy().into_owned());
        Ok(Source {
            json: path.to_owned(),
            dir: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned(),
            page: format!("{stem}.html"),
        })
    }
}

/// What a directory without `results.json` holds that `perf report` could draw: its JSON
/// files, its subdirectories with a `results.json`, and the JSON files of its other
/// subdirectories; sorted.
fn results_inside(dir: &Path) -> Vec<String> {
    let json_files = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = json_files(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for path in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
            if path.join(RESULTS_FILE).is_file() {
                found.push(path);
            } else if path.is_dir() {
                found.extend(json_files(&path));
            }
        }
    }
    let mut found: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
    found.sort();
    found
}

/// Reads and parses a results document.
///
/// # Errors
/// It cannot be read, or is not a perf results document.
pub fn load(json: &Path) -> Result<StoredResults> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    stored::parse(&text).with_context(|| {
        format!(
            "{} is not a perf results document (results.json or --json)",
            json.display()
        )
    })
}

/// Writes the page as `dir/page` and, with `svg_files`, each chart as `dir/<stem>.svg`
/// (`<page stem>-<metric>.svg` unless the page is `report.html`); returns the files written.
///
/// # Errors
/// A file cannot be written.
pub fn write(dir: &Path, page: &str, report: &Report, svg_files: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let path = dir.join(page);
    std::fs::write(&path, &report.html).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    if svg_files {
        let prefix = page
            .strip_suffix(".html")
            .filter(|stem| *stem != "report")
            .map(|stem| format!("{stem}-"))
            .unwrap_or_default();
        for chart in &report.charts {
            let path = dir.join(format!("{prefix}{}.svg", chart.stem));
            std::fs::write(&path, &chart.svg)
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// `perf --report`: draws the page from the JSON document just written into the results
/// directory `dir` and writes it there as `report.html`; returns its path.
///
/// # Errors
/// The JSON does not read back, a chart cannot be drawn, or the page cannot be written.
pub fn write_beside_results(dir: &Path, json: &str) -> Result<PathBuf> {
    let results = stored::parse(json).context("reading back the JSON results")?;
    let report = render(&results, &dir.join(RESULTS_FILE).display().to_string())?;
    let written = write(dir, REPORT_FILE, &report, false)?;
    Ok(written
        .into_iter()
        .next()
        .unwrap_or_else(|| dir.join(REPORT_FILE)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::html::page::tests::assert_well_formed;

    /// Two scenarios: `l2` with the kernel, two vswitchd variants and Open vSwitch, and
    /// `vxlan` whose veth variant was skipped; TCP 1 stream, UDP 64B and RTT p99 only.
    pub(crate) fn fixture() -> StoredResults {
        let metric = |key: &str, median: f64, min: f64, max: f64, ratio: Option<f64>| {
            serde_json::json!({
                "metric": key, "label": key, "unit": "u", "higher_is_better": true,
                "median": median, "min": min, "max": max, "count": 3,
                "runs": [min, median, max], "ratio_to_kernel": ratio,
                "check": {"unit": "bytes", "sent": 1000, "delivered": 990}
            })
        };
        let variant = |name: &str, tcp: f64, ratio: f64| {
            serde_json::json!({
                "variant": name, "status": "measured",
                "metrics": [
                    metric("tcp_1stream", tcp, tcp - 2.0, tcp + 1.0, Some(ratio)),
                    metric("udp64_pps", 500_000.0 * ratio, 400_000.0, 600_000.0, Some(ratio)),
                    metric("rtt_p99", 100.0 / ratio, 90.0, 200.0, Some(1.0 / ratio)),
                ]
            })
        };
        let document = serde_json::json!({
            "harness": "perf 0.1.0",
            "run": {
                "started_utc": "2026-12-03T07:09:31Z", "host": "vm",
                "kernel": "Linux 6.18 x86_64", "cpu": "AMD EPYC", "cores": 2,
                "memory": "24683568 kB", "command": "perf --quick --scenario l2,vxlan",
                "tools": ["iperf 3.12"], "settings": ["runs per variant: 3 <after one warmup>"]
            },
            "scenarios": [
                {
                    "scenario": "l2", "description": "two containers on one node",
                    "variants": [
                        variant("kernel", 16.0, 1.0),
                        variant("vswitch-tap-w1", 14.0, 0.875),
                        variant("vswitch-veth-w1", 13.0, 0.8125),
                        variant("ovs-netdev", 3.0, 0.1875),
                    ]
                },
                {
                    "scenario": "vxlan", "description": "two nodes & a VXLAN underlay",
                    "variants": [
                        variant("kernel", 10.0, 1.0),
                        variant("vswitch-tap-w1", 8.0, 0.8),
                        {"variant": "vswitch-veth-w1", "status": "skipped",
                         "reason": "not supported by this vswitchd yet", "metrics": []},
                    ]
                }
            ],
            "method": ["Ratios are variant median / kernel median."]
        });
        serde_json::from_value(document).expect("fixture")
    }

    #[test]
    fn page_holds_every_scenario_chart_and_fact() {
        let report = render(&fixture(), "fixture").expect("report");
        let html = &report.html;
        assert_well_formed(html);
        for text in [
            "<title>perf results, 2026-12-03T07:09:31Z on vm</title>",
            "id=\"scenario-l2\"",
            "id=\"scenario-vxlan\"",
            "two nodes &amp; a VXLAN underlay",
            "runs per variant: 3 &lt;after one warmup&gt;",
            "AMD EPYC (2 online)",
            "vswitch-veth-w1: skipped: not supported by this vswitchd yet",
            "<h2>Throughput</h2>",
            "<h2>Latency</h2>",
            "id=\"report-tcp_1stream\">TCP 1 stream (Gbit/s, higher is better)</h3>",
            "id=\"report-rtt_p99\">RTT p99 (us, lower is better)</h3>",
            "id=\"report-udp64_pps\"",
            "id=\"report-rtt_p99\"",
            // The chart's table: median and ratio, the kernel without one.
            "<td class=\"num\">14.0 (0.88x)</td>",
            "<td class=\"num\">16.0</td>",
            "Ratios are variant median / kernel median.",
        ] {
            assert!(html.contains(text), "{text} missing from\n{html}");
        }
        assert!(!html.contains("<script"));
        assert_eq!(html.matches("<svg ").count(), 3);
        assert_eq!(html.matches("</svg>").count(), 3);
        let stems: Vec<&str> = report.charts.iter().map(|c| c.stem.as_str()).collect();
        assert_eq!(
            stems,
            ["report-tcp_1stream", "report-udp64_pps", "report-rtt_p99"]
        );
    }

    #[test]
    fn page_draws_the_curves_of_growing_tables() {
        let report = render(&crate::html::chart::tests::growing(), "growing").expect("report");
        let html = &report.html;
        assert_well_formed(html);
        for text in [
            "<h2>As the tables grow</h2>",
            "<a href=\"#curve-routes-tcp_1stream\">routes TCP 1 stream</a>",
            "id=\"curve-routes-tcp_1stream\">routes: TCP 1 stream as routes grow (Gbit/s, higher is better)</h3>",
            "<th>variant \\ routes</th><th>0</th><th>1,000</th><th>1,000,000</th>",
            "<td class=\"num\">16.0</td><td class=\"num\">-</td>",
        ] {
            assert!(html.contains(text), "{text} missing from\n{html}");
        }
        let stems: Vec<&str> = report.charts.iter().map(|c| c.stem.as_str()).collect();
        assert!(
            stems.contains(&"curve-routes-cpu_machine_per_gb"),
            "{stems:?}"
        );
    }

    /// What a run writes reads back: the JSON the harness serialises (`JsonReport`) is the
    /// JSON the report parses, ratios, skips and all.
    #[test]
    fn a_run_s_own_json_reads_back_into_its_report() {
        use crate::report::{Check, JsonReport, Metric, Outcome, RunInfo, Sample, VariantResult};
        let sample = |variant: &str, metric, run, value| Sample {
            scenario: "l2".into(),
            variant: String::from(variant),
            metric,
            run,
            value,
            check: Check {
                unit: "bytes",
                sent: 100,
                delivered: 100,
            },
        };
        let results = vec![
            VariantResult {
                scenario: "l2".into(),
                variant: "kernel".into(),
                outcome: Outcome::Measured,
                samples: vec![
                    sample("kernel", Metric::TcpGbps1, 1, 16.0),
                    sample("kernel", Metric::TcpGbps1, 2, 18.0),
                    sample("kernel", Metric::RttP999Us, 1, 300.0),
                ],
            },
            VariantResult {
                scenario: "l2".into(),
                variant: "vswitch-tap-w1".into(),
                outcome: Outcome::Measured,
                samples: vec![
                    sample("vswitch-tap-w1", Metric::TcpGbps1, 1, 13.6),
                    sample("vswitch-tap-w1", Metric::TcpGbps1, 2, 15.3),
                    sample("vswitch-tap-w1", Metric::RttP999Us, 1, 450.0),
                ],
            },
            VariantResult {
                scenario: "l2".into(),
                variant: "vswitch-veth-w1".into(),
                outcome: Outcome::Failed("vswitchd exited".into()),
                samples: vec![],
            },
        ];
        let summaries = crate::report::summarize(&results, |_| "two containers".into());
        let info = RunInfo {
            started_utc: "2026-12-04T10:00:00Z".into(),
            host: "vm".into(),
            kernel: "Linux".into(),
            cpu: "cpu".into(),
            cores: 2,
            memory: "1 kB".into(),
            command: "perf --report".into(),
            tools: vec![],
            settings: vec![],
        };
        let json = serde_json::to_string_pretty(&JsonReport {
            harness: "perf test".into(),
            run: &info,
            scenarios: &summaries,
            method: crate::report::METHOD,
        })
        .expect("json");
        let dir = scratch("report-run");
        let page = write_beside_results(&dir, &json).expect("report");
        assert_eq!(page, dir.join(REPORT_FILE));
        let html = std::fs::read_to_string(&page).expect("page");
        assert_well_formed(&html);
        for text in [
            "id=\"report-tcp_1stream\"",
            "id=\"report-rtt_p99_9\"",
            // 14.45 / 17.0: the ratio the harness computed, carried through the JSON.
            "<td class=\"num\">14.4 (0.85x)</td>",
            "<li class=\"failed\">vswitch-veth-w1: failed: vswitchd exited</li>",
            "<code>perf --report</code>",
        ] {
            assert!(html.contains(text), "{text} missing from\n{html}");
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vsperf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// A committed results directory (every scenario of the 2026-12-03 run, seven variants
    /// each) renders, and every scenario it holds is on the page.
    #[test]
    fn renders_a_committed_results_dir() {
        let committed =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("results/2026-12-03-vm-issue12/after");
        let source = Source::locate(&committed).expect("committed results");
        assert_eq!(source.page, REPORT_FILE);
        let results = load(&source.json).expect("committed results parse");
        let report = render(&results, &committed.display().to_string()).expect("report");
        assert_well_formed(&report.html);
        let scenarios: Vec<&str> = results
            .scenarios
            .iter()
            .map(|s| s.scenario.as_str())
            .collect();
        assert_eq!(scenarios, ["l2", "routed", "vxlan", "nat"]);
        let tcp_labels = svg::tests::texts(&report.charts[0].svg);
        for scenario in &scenarios {
            assert!(report.html.contains(&format!("id=\"scenario-{scenario}\"")));
            assert!(tcp_labels.iter().any(|t| t == scenario), "{scenario}");
        }
        let stems: Vec<&str> = report.charts.iter().map(|c| c.stem.as_str()).collect();
        assert_eq!(
            stems,
            [
                "report-tcp_1stream",
                "report-tcp_4streams",
                "report-udp64_pps",
                "report-udp64_loss",
                "report-rtt_p50",
                "report-rtt_p99",
                "report-rtt_p99_9",
                "report-cpu_machine_per_gb",
                "report-cpu_switch_per_gb",
            ]
        );

        // Written elsewhere, never into the committed directory.
        let out = scratch("report-committed");
        let written = write(&out, &source.page, &report, true).expect("write");
        assert_eq!(written.len(), 1 + report.charts.len());
        let page = std::fs::read_to_string(out.join(REPORT_FILE)).expect("page");
        assert_eq!(page, report.html);
        assert!(out.join("report-tcp_1stream.svg").is_file());
        std::fs::remove_dir_all(&out).expect("cleanup");
    }

    /// The chart the top-level README shows is what `perf report --svg` draws from its
    /// results today.
    #[test]
    fn readme_chart_is_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results/2026-12-03-vm-issue12/after");
        let results = load(&dir.join(RESULTS_FILE)).expect("committed results");
        let report = render(&results, "committed").expect("report");
        let committed =
            std::fs::read_to_string(dir.join("report-tcp_1stream.svg")).expect("committed chart");
        assert!(
            report.charts[0].svg == committed,
            "the README's chart is stale: run `perf report --svg --out-dir /tmp/r {}` and copy \
             /tmp/r/report-tcp_1stream.svg over it",
            dir.display()
        );
    }

    #[test]
    fn sources_are_directories_or_json_files() {
        let dir = scratch("report-source");
        let missing = Source::locate(&dir).expect_err("no results.json");
        assert!(format!("{missing:#}").contains("holds no results.json"));
        let json = dir.join("lb-quick.json");
        std::fs::write(&json, "{\"scenarios\": []}").expect("json");
        let missing = Source::locate(&dir).expect_err("no results.json");
        assert!(
            format!("{missing:#}").ends_with(&format!("(try: perf report {})", json.display())),
            "{missing:#}"
        );
        let source = Source::locate(&json).expect("json file");
        assert_eq!(source.page, "lb-quick.html");
        assert_eq!(source.dir, dir);
        let report = render(&load(&json).expect("load"), "empty").expect("empty report");
        assert_well_formed(&report.html);
        assert!(report.charts.is_empty());
        let written = write(&dir, &source.page, &report, true).expect("write");
        assert_eq!(written, [dir.join("lb-quick.html")]);
        std::fs::write(&json, "[]").expect("json");
        let refused = load(&json).expect_err("not a results document");
        assert!(format!("{refused:#}").contains("not a perf results document"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
