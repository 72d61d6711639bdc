//! Draws a [`BarChart`] as SVG with plotters: one group of bars per scenario, the median as
//! the bar, the runs' min..max as a whisker, the ratio to the kernel above each vswitchd
//! (or Open vSwitch) bar, and a legend on the right.
//!
//! Text stays `<text>` elements for the browser to lay out, so no font is loaded; plotters
//! only estimates text widths, which is why the margins here are generous.

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::chart::{BarChart, CurveChart, Rgb};
use crate::report::format_value;

/// Pixels per bar (the group's share of the width is this times its widest group).
const BAR_PIXELS: u32 = 22;
/// Pixels between groups, and the smallest group.
const GROUP_GAP_PIXELS: u32 = 28;
/// The plot's height, unless the legend needs more.
const HEIGHT: u32 = 400;
/// The legend's first entry's top.
const LEGEND_TOP: i32 = 48;
/// A legend entry's height.
const LEGEND_ENTRY: i32 = 22;
/// A note's height.
const LEGEND_NOTE: i32 = 16;
/// The notes under the legend.
const LEGEND_NOTES: [&str; 3] = [
    "bar: median of the runs",
    "whisker: min..max",
    "label: median / kernel median",
];
/// Left of the plot: the y labels and the unit.
const Y_AXIS_PIXELS: u32 = 80;
/// Right of the plot: the legend.
const LEGEND_PIXELS: u32 = 250;
/// Below the smallest plot width, labels collide.
const MIN_PLOT_PIXELS: u32 = 360;
/// A ratio label set horizontally needs about this much room.
const HORIZONTAL_LABEL_PIXELS: f64 = 34.0;
/// Room above the tallest whisker for its label, as a share of the axis.
const HEADROOM: f64 = 1.22;
/// One group's width on the x axis. The axis is integer (plotters formats labels at chosen
/// key points only for integer axes); a group is 1000 units wide, bars are placed inside.
const GROUP: i32 = 1000;

fn color(rgb: Rgb) -> RGBColor {
    RGBColor(rgb[0], rgb[1], rgb[2])
}

/// The drawing's size: wide enough for every bar.
pub fn size(chart: &BarChart) -> (u32, u32) {
    let groups = u32::try_from(chart.groups.len()).unwrap_or(u32::MAX);
    let bars = u32::try_from(chart.widest_group()).unwrap_or(u32::MAX);
    let plot = groups
        .saturating_mul(
            bars.saturating_mul(BAR_PIXELS)
                .saturating_add(GROUP_GAP_PIXELS),
        )
        .max(MIN_PLOT_PIXELS);
    let entries = i32::try_from(chart.legend.len()).unwrap_or(i32::MAX);
    let notes = i32::try_from(LEGEND_NOTES.len()).unwrap_or(0);
    let legend = entries
        .saturating_mul(LEGEND_ENTRY)
        .saturating_add(LEGEND_TOP + (notes + 1) * LEGEND_NOTE);
    (
        Y_AXIS_PIXELS
            .saturating_add(plot)
            .saturating_add(LEGEND_PIXELS),
        HEIGHT.max(u32::try_from(legend).unwrap_or(HEIGHT)),
    )
}

/// The chart as an SVG document (`<svg ...>...</svg>`).
///
/// # Errors
/// plotters refuses to draw (it does not for finite figures; NaNs are left out before).
pub fn render(chart: &BarChart) -> Result<String> {
    let (width, height) = size(chart);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_horizontally(width - LEGEND_PIXELS);
        draw_bars(chart, &plot_area)?;
        draw_legend(chart, &legend_area)?;
        root.present()
            .with_context(|| format!("drawing the {} chart", chart.metric.key()))?;
    }
    Ok(svg)
}

fn draw_bars(
    chart: &BarChart,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> Result<()> {
    let metric = chart.metric;
    let groups = i32::try_from(chart.groups.len()).unwrap_or(i32::MAX / GROUP);
    let top = match chart.top() {
        top if top > 0.0 => top * HEADROOM,
        _ => 1.0,
    };
    let centers: Vec<i32> = (0..groups).map(|i| i * GROUP + GROUP / 2).collect();
    let mut plot = ChartBuilder::on(area)
        .caption(
            format!("{} ({})", metric.label(), metric.unit()),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(Y_AXIS_PIXELS - 10)
        .build_cartesian_2d((0..groups * GROUP).with_key_points(centers), 0.0..top)?;
    let scenario_of = |x: &i32| {
        // Key points sit at group centres.
        usize::try_from(x / GROUP)
            .ok()
            .and_then(|i| chart.groups.get(i))
            .map(|g| g.scenario.clone())
            .unwrap_or_default()
    };
    let value_label = |y: &f64| axis_value(*y);
    plot.configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .x_label_formatter(&scenario_of)
        .y_label_formatter(&value_label)
        .y_desc(metric.unit())
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 13))
        .draw()?;

    let pixels_per_group = f64::from(plot.plotting_area().dim_in_pixel().0) / f64::from(groups);
    for (i, group) in (0..groups).zip(&chart.groups) {
        let slots = i32::try_from(group.bars.len()).unwrap_or(1).max(1);
        // 10% of the group on either side is the gap between groups.
        let slot = GROUP * 8 / 10 / slots;
        let slot_pixels = f64::from(slot) / f64::from(GROUP) * pixels_per_group;
        let horizontal = slot_pixels >= HORIZONTAL_LABEL_PIXELS;
        for (j, bar) in (0..slots).zip(&group.bars) {
            let left = i * GROUP + GROUP / 10 + slot * j;
            let right = left + slot * 88 / 100;
            let middle = (left + right) / 2;
            let fill = color(bar.color);
            plot.draw_series(std::iter::once(Rectangle::new(
                [(left, 0.0), (right, bar.median)],
                fill.filled(),
            )))?;
            if bar.runs > 1 && bar.max > bar.min {
                // A whisker: min..max with caps 40% of the bar's width.
                let cap = (right - left) * 2 / 10;
                let ink = BLACK.stroke_width(1);
                plot.draw_series([
                    PathElement::new([(middle, bar.min), (middle, bar.max)], ink),
                    PathElement::new([(middle - cap, bar.min), (middle + cap, bar.min)], ink),
                    PathElement::new([(middle - cap, bar.max), (middle + cap, bar.max)], ink),
                ])?;
            }
            if bar.is_baseline() {
                continue;
            }
            let Some(ratio) = bar.ratio_to_kernel else {
                continue;
            };
            let label = format!("{ratio:.2}x");
            let (x, y) = plot.backend_coord(&(middle, bar.max.max(bar.median)));
            let style = TextStyle::from(("sans-serif", 12).into_font()).color(&BLACK);
            let style = if horizontal {
                style.pos(Pos::new(HPos::Center, VPos::Bottom))
            } else {
                style
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Left, VPos::Center))
            };
            area.draw(&Text::new(label, (x, y - 4), style))?;
        }
    }
    Ok(())
}

fn draw_legend(
    chart: &BarChart,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> Result<()> {
    let font = ("sans-serif", 13).into_font();
    let mut y = LEGEND_TOP;
    for entry in &chart.legend {
        area.draw(&Rectangle::new(
            [(8, y), (22, y + 14)],
            color(entry.color).filled(),
        ))?;
        area.draw(&Text::new(
            entry.variant.clone(),
            (30, y + 7),
            TextStyle::from(font.clone()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        y += LEGEND_ENTRY;
    }
    let note = ("sans-serif", 11)
        .into_font()
        .color(&RGBColor(0x55, 0x55, 0x55));
    for line in LEGEND_NOTES {
        y += LEGEND_NOTE;
        area.draw(&Text::new(line, (8, y), note.clone()))?;
    }
    Ok(())
}

/// The width of a curve chart's plot: a step per table size.
const CURVE_PLOT_PIXELS: u32 = 520;

/// A curve chart ([`CurveChart`]) as an SVG document: the table sizes evenly spaced on the x
/// axis (they grow by orders of magnitude, so the spacing is close to logarithmic), a line
/// per variant through its medians, the runs' min..max as whiskers, the legend on the right.
///
/// # Errors
/// plotters refuses to draw.
pub fn render_curve(chart: &CurveChart) -> Result<String> {
    let width = Y_AXIS_PIXELS + CURVE_PLOT_PIXELS + LEGEND_PIXELS;
    let entries = i32::try_from(chart.curves.len()).unwrap_or(i32::MAX);
    let legend = entries
        .saturating_mul(LEGEND_ENTRY)
        .saturating_add(LEGEND_TOP + 3 * LEGEND_NOTE);
    let height = HEIGHT.max(u32::try_from(legend).unwrap_or(HEIGHT));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot_area, legend_area) = root.split_horizontally(width - LEGEND_PIXELS);
        let steps = i32::try_from(chart.counts.len()).unwrap_or(1).max(1);
        let top = match chart.top() {
            top if top > 0.0 => top * 1.1,
            _ => 1.0,
        };
        let mut plot = ChartBuilder::on(&plot_area)
            .caption(
                format!(
                    "{}: {} ({}) as {} grow",
                    chart.scenario,
                    chart.metric.label(),
                    chart.metric.unit(),
                    chart.counted
                ),
                ("sans-serif", 18),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(Y_AXIS_PIXELS - 10)
            .build_cartesian_2d(
                // A quarter step of room on either side, so the end points are not on the
                // axes.
                (-GROUP / 4..(steps - 1) * GROUP + GROUP / 4)
                    .with_key_points((0..steps).map(|i| i * GROUP).collect()),
                0.0..top,
            )?;
        let count_of = |x: &i32| {
            usize::try_from(x / GROUP)
                .ok()
                .and_then(|i| chart.counts.get(i))
                .map(|count| axis_value(*count as f64))
                .unwrap_or_default()
        };
        let value_label = |y: &f64| axis_value(*y);
        plot.configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .x_label_formatter(&count_of)
            .y_label_formatter(&value_label)
            .x_desc(chart.counted)
            .y_desc(chart.metric.unit())
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .draw()?;
        let x_of = |count: u64| {
            let step = chart.counts.iter().position(|c| *c == count).unwrap_or(0);
            i32::try_from(step).unwrap_or(0) * GROUP
        };
        for curve in &chart.curves {
            let ink = color(curve.color);
            let line: Vec<(i32, f64)> = curve
                .points
                .iter()
                .map(|p| (x_of(p.count), p.median))
                .collect();
            plot.draw_series(std::iter::once(PathElement::new(line, ink.stroke_width(2))))?;
            plot.draw_series(
                curve
                    .points
                    .iter()
                    .map(|p| Circle::new((x_of(p.count), p.median), 4, ink.filled())),
            )?;
            for p in curve.points.iter().filter(|p| p.max > p.min) {
                let x = x_of(p.count);
                plot.draw_series(std::iter::once(PathElement::new(
                    [(x, p.min), (x, p.max)],
                    ink.stroke_width(1),
                )))?;
            }
        }
        let font = ("sans-serif", 13).into_font();
        let mut y = LEGEND_TOP;
        for curve in &chart.curves {
            legend_area.draw(&Rectangle::new(
                [(8, y + 5), (22, y + 9)],
                color(curve.color).filled(),
            ))?;
            legend_area.draw(&Text::new(
                curve.variant.clone(),
                (30, y + 7),
                TextStyle::from(font.clone()).pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
            y += LEGEND_ENTRY;
        }
        let note = ("sans-serif", 11)
            .into_font()
            .color(&RGBColor(0x55, 0x55, 0x55));
        for line in ["point: median of the runs", "whisker: min..max"] {
            y += LEGEND_NOTE;
            legend_area.draw(&Text::new(line, (8, y), note.clone()))?;
        }
        root.present()
            .with_context(|| format!("drawing the {} chart", chart.file_stem()))?;
    }
    Ok(svg)
}

/// An axis figure: [`format_value`] without trailing zeros (`0`, `2`, `12.5`, `1,000`).
pub fn axis_value(value: f64) -> String {
    let text = format_value(value);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::html::chart::{bar_chart, variant_colors};
    use crate::html::tests::fixture;
    use crate::report::Metric;

    /// The text of every `<text>` element, in document order.
    pub(crate) fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|element| {
                let (_, rest) = element.split_once('>')?;
                let (content, _) = rest.split_once("</text>")?;
                Some(content.trim().to_owned())
            })
            .collect()
    }

    fn tcp_svg() -> String {
        let results = fixture();
        let colors = variant_colors(&results);
        let chart = bar_chart(&results, &colors, Metric::TcpGbps1).expect("tcp chart");
        render(&chart).expect("svg")
    }

    #[test]
    fn svg_names_scenarios_variants_and_ratios() {
        let svg = tcp_svg();
        assert!(svg.starts_with("<svg "), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        let texts = texts(&svg);
        for text in [
            "TCP 1 stream (Gbit/s)",
            "l2",
            "vxlan",
            "kernel",
            "vswitch-tap-w1",
            "vswitch-veth-w1",
            "ovs-netdev",
            "0.88x",
            "0.81x",
            "0.19x",
            "0.80x",
            "Gbit/s",
        ] {
            assert!(
                texts.iter().any(|t| t == text),
                "{text} missing from {texts:?}"
            );
        }
        // The kernel's bar carries no ratio: it is 1.00x by definition.
        assert!(!texts.iter().any(|t| t == "1.00x"), "{texts:?}");
    }

    #[test]
    fn bars_take_their_variant_colors() {
        let svg = tcp_svg();
        // kernel grey and the first vswitchd blue, as fills.
        assert!(svg.contains("fill=\"#6B6B6B\""), "{svg}");
        assert!(svg.contains("fill=\"#0072B2\""), "{svg}");
    }

    #[test]
    fn curve_svg_names_sizes_variants_and_axes() {
        let charts = crate::html::chart::curve_charts(&crate::html::chart::tests::growing());
        let svg = render_curve(&charts[0]).expect("svg");
        assert!(svg.starts_with("<svg "), "{}", &svg[..80]);
        let texts = texts(&svg);
        for text in [
            "routes: TCP 1 stream (Gbit/s) as routes grow",
            "0",
            "1,000",
            "1,000,000",
            "kernel",
            "vswitch-tap-w1",
            "routes",
        ] {
            assert!(
                texts.iter().any(|t| t == text),
                "{text} missing from {texts:?}"
            );
        }
        assert!(svg.contains("#6B6B6B"), "the kernel's grey");
        assert!(svg.contains("#0072B2"), "the first vswitchd's blue");
    }

    #[test]
    fn axis_values_drop_trailing_zeros() {
        assert_eq!(axis_value(0.0), "0");
        assert_eq!(axis_value(2.0), "2");
        assert_eq!(axis_value(12.5), "12.5");
        assert_eq!(axis_value(0.25), "0.25");
        assert_eq!(axis_value(1_000_000.0), "1,000,000");
    }

    #[test]
    fn wide_charts_grow() {
        let results = fixture();
        let colors = variant_colors(&results);
        let chart = bar_chart(&results, &colors, Metric::TcpGbps1).expect("tcp chart");
        let (narrow, _) = size(&chart);
        let mut wide = chart.clone();
        for n in 0..10 {
            let mut group = chart.groups[0].clone();
            group.scenario = format!("copy-{n}");
            wide.groups.push(group);
        }
        assert!(size(&wide).0 > narrow);
        let (_, short) = size(&chart);
        let mut tall = chart.clone();
        for n in 0..20 {
            tall.legend.push(crate::html::chart::LegendEntry {
                variant: format!("vswitch-tap-w{n}"),
                color: [0, 0, 0],
            });
        }
        assert!(
            size(&tall).1 > short,
            "a long legend stays inside the drawing"
        );
    }
}
