//! The HTML page: the run's machine and settings, each chart inline with a table of the same
//! medians beside it, every scenario's full table (min, max, ratio, runs, delivered), and the
//! method. One file, no script, no external style sheet or font: it opens from a results
//! directory as it is, and reads the same printed.

use std::fmt::Write as _;

use super::chart::{BarChart, CurveChart, Rgb};
use super::stored::{StoredResults, StoredScenario};
use crate::report::{BASELINE, Metric, format_amount, format_count, format_value};

/// The page's style: readable tables, charts that shrink to the window.
const STYLE: &str = "\
body{font-family:sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.2em .5em;vertical-align:top}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.chart{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start;margin:1em 0 2em}
.chart svg{max-width:100%;height:auto}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:baseline}
.note{color:#555;font-size:.9em}.failed{color:#a00}
";

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// The anchor of a scenario's table (`scenario-policy-1000`).
pub fn scenario_anchor(scenario: &str) -> String {
    let safe: String = scenario
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("scenario-{safe}")
}

fn hex(rgb: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2])
}

/// `0.85x`, or `-` without a ratio.
fn times(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
}

/// The whole page. `sections` are the charts ([`super::chart::bar_charts`]), each with its
/// SVG already drawn; `source` says where the figures came from.
pub fn render(
    results: &StoredResults,
    sections: &[(&str, Vec<(BarChart, String)>)],
    curves: &[(CurveChart, String)],
    source: &str,
) -> String {
    let run = &results.run;
    let title = if run.started_utc.is_empty() {
        "perf results".to_owned()
    } else {
        format!("perf results, {} on {}", run.started_utc, run.host)
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(
        out,
        "<p class=\"note\">vswitchd against the Linux kernel in the same run of the harness; \
         every ratio is a variant's median over the kernel's median of that run. \
         Rendered from <code>{}</code>.</p>",
        escape(source)
    );
    render_setup(&mut out, results);
    out.push_str("<h2 id=\"contents\">Contents</h2>\n<ul>\n");
    for (section, charts) in sections {
        let _ = write!(out, "<li>{}:", escape(section));
        for (chart, _) in charts {
            let _ = write!(
                out,
                " <a href=\"#{}\">{}</a>",
                chart.file_stem(),
                escape(chart.metric.label())
            );
        }
        out.push_str("</li>\n");
    }
    if !curves.is_empty() {
        out.push_str("<li>As the tables grow:");
        for (chart, _) in curves {
            let _ = write!(
                out,
                " <a href=\"#{}\">{} {}</a>",
                chart.file_stem(),
                escape(chart.scenario),
                escape(chart.metric.label())
            );
        }
        out.push_str("</li>\n");
    }
    out.push_str("<li>Tables:");
    for scenario in &results.scenarios {
        let _ = write!(
            out,
            " <a href=\"#{}\">{}</a>",
            scenario_anchor(&scenario.scenario),
            escape(&scenario.scenario)
        );
    }
    out.push_str("</li>\n</ul>\n");
    for (section, charts) in sections {
        let _ = writeln!(out, "<h2>{}</h2>", escape(section));
        for (chart, svg) in charts {
            let _ = writeln!(
                out,
                "<h3 id=\"{}\">{} ({}, {} is better)</h3>\n<div class=\"chart\">\n{}",
                chart.file_stem(),
                escape(chart.metric.label()),
                escape(chart.metric.unit()),
                better(chart.metric),
                svg.trim_end()
            );
            render_chart_table(&mut out, chart);
            out.push_str("</div>\n");
        }
    }
    if !curves.is_empty() {
        out.push_str("<h2>As the tables grow</h2>\n");
    }
    for (chart, svg) in curves {
        let _ = writeln!(
            out,
            "<h3 id=\"{}\">{}: {} as {} grow ({}, {} is better)</h3>\n<div class=\"chart\">\n{}",
            chart.file_stem(),
            escape(chart.scenario),
            escape(chart.metric.label()),
            escape(chart.counted),
            escape(chart.metric.unit()),
            better(chart.metric),
            svg.trim_end()
        );
        render_curve_table(&mut out, chart);
        out.push_str("</div>\n");
    }
    out.push_str("<h2 id=\"tables\">Tables</h2>\n");
    for scenario in &results.scenarios {
        render_scenario_table(&mut out, scenario);
    }
    if !results.method.is_empty() {
        out.push_str("<h2 id=\"method\">Method</h2>\n<ul>\n");
        for line in &results.method {
            let _ = writeln!(out, "<li>{}</li>", escape(line));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn render_setup(out: &mut String, results: &StoredResults) {
    let run = &results.run;
    out.push_str("<h2 id=\"setup\">Machine and setup</h2>\n<table>\n");
    let cores = if run.cores == 0 {
        String::new()
    } else {
        format!(" ({} online)", run.cores)
    };
    for (name, value) in [
        ("Harness", results.harness.clone()),
        ("Started", run.started_utc.clone()),
        ("Host", run.host.clone()),
        ("Command", run.command.clone()),
        ("Kernel", run.kernel.clone()),
        ("CPU", format!("{}{cores}", run.cpu)),
        ("Memory", run.memory.clone()),
    ] {
        if value.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "<tr><th>{name}</th><td><code>{}</code></td></tr>",
            escape(&value)
        );
    }
    for (name, lines) in [("Tools", &run.tools), ("Settings", &run.settings)] {
        if lines.is_empty() {
            continue;
        }
        let _ = write!(out, "<tr><th>{name}</th><td><ul>");
        for line in lines {
            let _ = write!(out, "<li>{}</li>", escape(line));
        }
        out.push_str("</ul></td></tr>\n");
    }
    out.push_str("</table>\n");
}

/// The chart's figures as a table: a row per variant, a column per scenario, each cell the
/// median and the ratio to the kernel.
fn render_chart_table(out: &mut String, chart: &BarChart) {
    out.push_str("<table>\n<tr><th>variant</th>");
    for group in &chart.groups {
        let _ = write!(out, "<th>{}</th>", escape(&group.scenario));
    }
    out.push_str("</tr>\n");
    for entry in &chart.legend {
        let _ = write!(
            out,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td>",
            hex(entry.color),
            escape(&entry.variant)
        );
        for group in &chart.groups {
            match group.bars.iter().find(|b| b.variant == entry.variant) {
                Some(bar) if bar.is_baseline() => {
                    let _ = write!(out, "<td class=\"num\">{}</td>", format_value(bar.median));
                }
                Some(bar) => {
                    let _ = write!(
                        out,
                        "<td class=\"num\">{} ({})</td>",
                        format_value(bar.median),
                        times(bar.ratio_to_kernel)
                    );
                }
                None => out.push_str("<td class=\"num\">-</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// Which way `metric` is better, for a heading.
fn better(metric: Metric) -> &'static str {
    if metric.higher_is_better() {
        "higher"
    } else {
        "lower"
    }
}

/// A curve chart's figures: a row per variant, a column per table size, each cell the
/// median.
fn render_curve_table(out: &mut String, chart: &CurveChart) {
    let _ = write!(
        out,
        "<table>\n<tr><th>variant \\ {}</th>",
        escape(chart.counted)
    );
    for count in &chart.counts {
        let _ = write!(out, "<th>{}</th>", format_count(*count));
    }
    out.push_str("</tr>\n");
    for curve in &chart.curves {
        let _ = write!(
            out,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td>",
            hex(curve.color),
            escape(&curve.variant)
        );
        for count in &chart.counts {
            match curve.points.iter().find(|p| p.count == *count) {
                Some(point) => {
                    let _ = write!(out, "<td class=\"num\">{}</td>", format_value(point.median));
                }
                None => out.push_str("<td class=\"num\">-</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// One scenario as summary.txt has it: per metric and variant, median, min, max, ratio,
/// runs and what was delivered; then the variants that were skipped or failed, and why.
fn render_scenario_table(out: &mut String, scenario: &StoredScenario) {
    let _ = writeln!(
        out,
        "<h3 id=\"{}\">{}: {}</h3>",
        scenario_anchor(&scenario.scenario),
        escape(&scenario.scenario),
        escape(&scenario.description)
    );
    let mut rows = String::new();
    for metric in Metric::ALL {
        for variant in scenario.variants.iter().filter(|v| v.is_measured()) {
            let Some(figures) = variant.metric(metric.key()) else {
                continue;
            };
            let delivered = figures.check.as_ref().map_or_else(String::new, |check| {
                let percent = if check.sent == 0 {
                    0.0
                } else {
                    check.delivered as f64 * 100.0 / check.sent as f64
                };
                format!(
                    "{percent:.1}% of {}",
                    format_amount(check.sent, &check.unit)
                )
            });
            let ratio = if variant.variant == BASELINE {
                "-".to_owned()
            } else {
                times(figures.ratio_to_kernel)
            };
            let _ = writeln!(
                rows,
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td>{}</td><td class=\"num\">{ratio}</td>\
                 <td class=\"num\">{}</td><td>{}</td></tr>",
                escape(metric.label()),
                escape(&variant.variant),
                format_value(figures.median),
                format_value(figures.min),
                format_value(figures.max),
                escape(metric.unit()),
                figures.count,
                escape(&delivered)
            );
        }
    }
    if rows.is_empty() {
        out.push_str("<p>(no figures)</p>\n");
    } else {
        out.push_str(
            "<table>\n<tr><th>metric</th><th>variant</th><th>median</th><th>min</th>\
             <th>max</th><th>unit</th><th>vs kernel</th><th>runs</th><th>delivered</th></tr>\n",
        );
        out.push_str(&rows);
        out.push_str("</table>\n");
    }
    let not_measured: Vec<_> = scenario
        .variants
        .iter()
        .filter(|v| !v.is_measured())
        .collect();
    if !not_measured.is_empty() {
        out.push_str("<ul>\n");
        for variant in not_measured {
            let class = if variant.status == "failed" {
                " class=\"failed\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "<li{class}>{}: {}: {}</li>",
                escape(&variant.variant),
                escape(&variant.status),
                escape(variant.reason.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</ul>\n");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks that every element outside the inline SVGs is closed in order (void elements
    /// aside) and that the SVGs themselves open and close as often: enough to catch a
    /// forgotten `</td>` or a chart cut short.
    pub(crate) fn assert_well_formed(html: &str) {
        const VOID: [&str; 2] = ["meta", "br"];
        assert!(html.starts_with("<!DOCTYPE html>\n"));
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            let end = rest.find('>').expect("unterminated tag");
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().unwrap_or_default();
                assert_eq!(open, name, "</{name}> closes <{open}>");
                continue;
            }
            let name = tag
                .split(|c: char| c.is_whitespace())
                .next()
                .unwrap_or_default()
                .to_owned();
            if !VOID.contains(&name.as_str()) {
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "left open: {stack:?}");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("a<b>&\"c'"),
            "a&lt;b&gt;&amp;&quot;c&#39;".to_owned()
        );
        assert_eq!(scenario_anchor("policy-1000"), "scenario-policy-1000");
        assert_eq!(scenario_anchor("l2 tap"), "scenario-l2-tap");
    }

    #[test]
    fn checker_catches_a_missing_close() {
        let caught = std::panic::catch_unwind(|| {
            assert_well_formed("<!DOCTYPE html>\n<html><body><p>x</body></html>");
        });
        assert!(caught.is_err());
        assert_well_formed("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head></html>");
    }
}
