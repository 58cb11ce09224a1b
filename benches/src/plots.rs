//! PNG plots of a [`Results`], one per metric: a case parameter (e.g. `services`) on a log x axis,
//! the value on the y axis, one line per subject.
//!
//! Drawn with plotters' bitmap backend and its pure-Rust text renderer (`ab_glyph`): nothing but
//! the DejaVu Sans font file ([`FONT`], Debian package `fonts-dejavu-core`) is needed at run time.
//! Everything before the drawing (grouping runs into series, choosing the axes) is pure and
//! tested without a font.

use std::{
    fmt::Write as _,
    ops::Range,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use plotters::{
    coord::{ranged1d::ValueFormatter, types::RangedCoordf64},
    prelude::*,
};

use crate::results::Results;

/// The font plots are labelled with (Debian package `fonts-dejavu-core`).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Errors writing plots.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The font file could not be read.
    #[error("cannot read the plot font {} (Debian package fonts-dejavu-core)", .path.display())]
    NoFont {
        /// The font file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The font file is not a TrueType or OpenType font.
    #[error("{} is not a TrueType or OpenType font", .path.display())]
    BadFont {
        /// The font file.
        path: PathBuf,
    },
    /// The output directory could not be created.
    #[error("creating {}", .path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Plotters failed drawing or encoding a plot.
    #[error("drawing {}: {message}", .path.display())]
    Draw {
        /// The plot being written.
        path: PathBuf,
        /// Plotters' error (its error types are generic over the backend, so kept as text).
        message: String,
    },
}

/// Image size in pixels.
const SIZE: (u32, u32) = (960, 600);
/// Width of the legend column right of the chart.
const LEGEND_WIDTH: u32 = 170;
const TITLE_FONT: (&str, i32) = ("sans-serif", 26);
const LABEL_FONT: (&str, i32) = ("sans-serif", 15);
const AXIS_DESC_FONT: (&str, i32) = ("sans-serif", 17);
const LEGEND_FONT: (&str, i32) = ("sans-serif", 16);

/// Subject colours (Okabe–Ito, told apart with colour blindness too), by the order in which
/// subjects were first measured, so a subject has the same colour in every plot of a run.
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(0, 0, 0),       // black
];

/// Values spanning more than this factor get a log y axis.
const LOG_SPAN: f64 = 100.0;

/// Writes one PNG per metric into `dir` (`<metric>.png`, `dir` created if needed): x = the case
/// key `x_key` (log scale, e.g. services), y = value, one line+points series per subject, legend,
/// title `<metric> (<unit>)` and axis labels. Returns the files written.
///
/// Runs whose case has no positive number under `x_key` are left out, and so are metrics left
/// with no runs. The y axis is logarithmic when the values span more than 100×, else linear
/// from 0. Fails with [`PlotError::NoFont`] when [`FONT`] is missing.
pub fn write_plots(results: &Results, x_key: &str, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let plots = group(results, x_key);
    if plots.is_empty() {
        return Ok(Vec::new());
    }
    register_font(Path::new(FONT))?;
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let subjects = subjects(results);
    let mut written = Vec::new();
    for plot in &plots {
        let path = dir.join(format!("{}.png", file_stem(&plot.metric)));
        let x: LogCoord<f64> = x_range(plot.points().map(|(x, _)| x)).log_scale().into();
        match y_axis(plot.points().map(|(_, y)| y)) {
            Axis::Log(y) => render(
                &path,
                plot,
                x_key,
                x,
                LogCoord::from(y.log_scale()),
                &subjects,
            )?,
            Axis::Linear(y) => render(&path, plot, x_key, x, RangedCoordf64::from(y), &subjects)?,
        }
        written.push(path);
    }
    Ok(written)
}

/// A markdown `## Plots` section showing `files` (as [`write_plots`] returned them) as images
/// linked under `link_dir`, relative to the report; empty when there are no files.
pub fn report_section(files: &[PathBuf], link_dir: &str) -> String {
    let mut out = String::new();
    if files.is_empty() {
        return out;
    }
    out.push_str("\n## Plots\n\n");
    for file in files {
        let (Some(stem), Some(name)) = (file.file_stem(), file.file_name()) else {
            continue;
        };
        let _ = writeln!(
            out,
            "![{}]({link_dir}/{})\n",
            stem.to_string_lossy(),
            name.to_string_lossy()
        );
    }
    out
}

/// Registers [`FONT`] with plotters as "sans-serif", the family every label uses, once per
/// process. plotters keeps registered fonts for the life of the process and wants `'static`
/// bytes, so one copy is leaked; the lock makes concurrent first callers (parallel tests) read
/// and leak it only once.
fn register_font(path: &Path) -> Result<(), PlotError> {
    static REGISTERED: Mutex<bool> = Mutex::new(false);
    let mut registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    if *registered {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(|source| PlotError::NoFont {
        path: path.to_owned(),
        source,
    })?;
    let bytes: &'static [u8] = bytes.leak();
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| {
        PlotError::BadFont {
            path: path.to_owned(),
        }
    })?;
    *registered = true;
    Ok(())
}

/// One metric's runs, arranged for a plot.
#[derive(Clone, Debug, PartialEq)]
struct Plot {
    metric: String,
    /// The unit of the metric's first run.
    unit: String,
    /// One series per subject, in the order subjects were first measured; points `(x, value)`
    /// sorted by x.
    series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Plot {
    fn points(&self) -> impl Iterator<Item = (f64, f64)> {
        self.series.iter().flat_map(|(_, p)| p.iter().copied())
    }
}

/// Groups `results` into one [`Plot`] per metric, metrics and subjects in the order they were
/// first measured. Runs without a positive number under `x_key` (a log axis cannot place them)
/// or with a non-finite value are left out, and so are metrics left with no runs.
fn group(results: &Results, x_key: &str) -> Vec<Plot> {
    let mut plots: Vec<Plot> = Vec::new();
    for run in &results.runs {
        let Some(x) = run.case.get(x_key).and_then(serde_json::Value::as_f64) else {
            continue;
        };
        let usable = x > 0.0 && x.is_finite() && run.value.is_finite();
        if !usable {
            continue;
        }
        let i = match plots.iter().position(|p| p.metric == run.metric) {
            Some(i) => i,
            None => {
                plots.push(Plot {
                    metric: run.metric.clone(),
                    unit: run.unit.clone(),
                    series: Vec::new(),
                });
                plots.len() - 1
            }
        };
        let series = &mut plots[i].series;
        let j = match series.iter().position(|(s, _)| *s == run.subject) {
            Some(j) => j,
            None => {
                series.push((run.subject.clone(), Vec::new()));
                series.len() - 1
            }
        };
        series[j].1.push((x, run.value));
    }
    for plot in &mut plots {
        for (_, points) in &mut plot.series {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    plots
}

/// Every subject of `results`, in the order first measured (the colour order).
fn subjects(results: &Results) -> Vec<&str> {
    let mut subjects: Vec<&str> = Vec::new();
    for run in &results.runs {
        if !subjects.contains(&run.subject.as_str()) {
            subjects.push(&run.subject);
        }
    }
    subjects
}

fn color(subjects: &[&str], subject: &str) -> RGBColor {
    let i = subjects.iter().position(|s| *s == subject).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// A y axis.
#[derive(Clone, Debug, PartialEq)]
enum Axis {
    /// Linear over the range.
    Linear(Range<f64>),
    /// Logarithmic over the range (both ends positive).
    Log(Range<f64>),
}

/// Log when all values are positive and span more than [`LOG_SPAN`], with a factor of 2 of room
/// at both ends; else linear from 0 (or the lowest value, if negative) to 10% above the highest.
fn y_axis(values: impl IntoIterator<Item = f64>) -> Axis {
    let (lo, hi) = bounds(values);
    if lo > 0.0 && hi / lo > LOG_SPAN {
        return Axis::Log(lo / 2.0..hi * 2.0);
    }
    let lo = lo.min(0.0);
    let hi = if hi > lo {
        hi + (hi - lo) * 0.1
    } else {
        lo + 1.0
    };
    Axis::Linear(lo..hi)
}

/// The log x range around positive `xs`: a factor of 2 of room at both ends, or of 10 when they
/// span less than a decade (a single case), so that at least one power of ten gets a label.
fn x_range(xs: impl IntoIterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = bounds(xs);
    let usable = lo > 0.0 && hi.is_finite();
    if !usable {
        return 0.1..10.0;
    }
    let room = if hi / lo < 10.0 { 10.0 } else { 2.0 };
    lo / room..hi * room
}

/// (lowest, highest); (∞, -∞) when empty.
fn bounds(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        })
}

/// A tick label: at most 2 decimals (more below 1, enough for one significant digit), k/M/G
/// from 10 000 up.
fn short_number(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let decimals = if a > 0.0 && a < 1.0 {
        (1.0 - a.log10().floor()).min(12.0) as usize
    } else {
        2
    };
    let text = format!("{scaled:.decimals$}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    let text = if text == "-0" { "0" } else { text };
    format!("{text}{suffix}")
}

/// A file name for `metric`: anything but ASCII letters, digits, `-` and `_` becomes `_`.
fn file_stem(metric: &str) -> String {
    metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A [`PlotError::Draw`] for the plot at `path` (plotters' errors are generic over the backend).
fn draw_error(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Draws `plot` into the PNG at `path`: title on top, the chart, the legend in a column to its
/// right.
fn render<Y>(
    path: &Path,
    plot: &Plot,
    x_key: &str,
    x: LogCoord<f64>,
    y: Y,
    subjects: &[&str],
) -> Result<(), PlotError>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_error(path, e))?;
    let title = format!("{} ({})", plot.metric, plot.unit);
    let body = root
        .margin(10, 10, 10, 10)
        .titled(&title, TITLE_FONT)
        .map_err(|e| draw_error(path, e))?;
    let chart_width = body.dim_in_pixel().0.saturating_sub(LEGEND_WIDTH);
    let (chart_area, legend_area) = body.split_horizontally(chart_width);

    let mut chart = ChartBuilder::on(&chart_area)
        .margin(10)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
        .map_err(|e| draw_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_key)
        .y_desc(plot.unit.as_str())
        .x_label_formatter(&|v: &f64| short_number(*v))
        .y_label_formatter(&|v: &f64| short_number(*v))
        .label_style(LABEL_FONT)
        .axis_desc_style(AXIS_DESC_FONT)
        .draw()
        .map_err(|e| draw_error(path, e))?;

    for ((subject, points), legend_y) in plot.series.iter().zip((40_i32..).step_by(28)) {
        let style = color(subjects, subject).filled().stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style).point_size(4))
            .map_err(|e| draw_error(path, e))?;
        legend_area
            .draw(&PathElement::new(
                vec![(10, legend_y), (40, legend_y)],
                style,
            ))
            .map_err(|e| draw_error(path, e))?;
        legend_area
            .draw(&Circle::new((25, legend_y), 4, style))
            .map_err(|e| draw_error(path, e))?;
        legend_area
            .draw(&Text::new(
                subject.as_str(),
                (50, legend_y - 9),
                LEGEND_FONT,
            ))
            .map_err(|e| draw_error(path, e))?;
    }
    root.present().map_err(|e| draw_error(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Results {
        let mut r = Results::new("forwarding");
        for (subject, rates) in [
            ("iptables", [9000.0, 7000.0, 2000.0]),
            ("ebpf-tc", [30000.0, 30000.0, 29000.0]),
        ] {
            for (n, v) in [1, 1000, 10000].into_iter().zip(rates) {
                r.push(
                    subject,
                    &[("services", json!(n))],
                    "new_conns_per_s",
                    v,
                    "1/s",
                );
            }
        }
        // Pushed out of x order, and spanning more than 100×.
        let update = "update_one_service_us";
        r.push(
            "iptables",
            &[("services", json!(10000))],
            update,
            250_000.0,
            "µs",
        );
        r.push("iptables", &[("services", json!(1))], update, 900.0, "µs");
        r.push("ebpf-tc", &[("services", json!(1))], update, 12.0, "µs");
        r.push("ebpf-tc", &[("services", json!(10000))], update, 15.0, "µs");
        // A single case.
        r.push("none", &[("services", json!(1))], "udp_pps", 1.5e6, "1/s");
        // Nothing to put on the x axis.
        r.push("none", &[], "no_case", 1.0, "1");
        r.push(
            "none",
            &[("services", json!("many"))],
            "text_case",
            1.0,
            "1",
        );
        r
    }

    #[test]
    fn runs_are_grouped_per_metric_and_subject_sorted_by_x() {
        let plots = group(&sample(), "services");
        let metrics: Vec<&str> = plots.iter().map(|p| p.metric.as_str()).collect();
        assert_eq!(
            metrics,
            ["new_conns_per_s", "update_one_service_us", "udp_pps"]
        );
        assert_eq!(
            plots[0].series,
            vec![
                (
                    "iptables".to_owned(),
                    vec![(1.0, 9000.0), (1000.0, 7000.0), (10000.0, 2000.0)]
                ),
                (
                    "ebpf-tc".to_owned(),
                    vec![(1.0, 30000.0), (1000.0, 30000.0), (10000.0, 29000.0)]
                ),
            ]
        );
        assert_eq!(plots[1].unit, "µs");
        assert_eq!(
            plots[1].series[0],
            (
                "iptables".to_owned(),
                vec![(1.0, 900.0), (10000.0, 250_000.0)]
            )
        );
        assert!(group(&sample(), "nodes").is_empty());
    }

    #[test]
    fn subjects_keep_one_colour_across_plots() {
        let results = sample();
        let subjects = subjects(&results);
        assert_eq!(subjects, ["iptables", "ebpf-tc", "none"]);
        assert_eq!(color(&subjects, "ebpf-tc"), COLORS[1]);
    }

    #[test]
    fn y_axis_is_log_only_for_positive_values_spanning_more_than_100x() {
        assert_eq!(y_axis([12.0, 900.0, 250_000.0]), Axis::Log(6.0..500_000.0));
        assert_eq!(y_axis([2.0, 200.0]), Axis::Linear(0.0..220.0));
        assert_eq!(y_axis([0.0, 1000.0]), Axis::Linear(0.0..1100.0));
        assert_eq!(y_axis([0.0]), Axis::Linear(0.0..1.0));
        assert_eq!(y_axis([]), Axis::Linear(0.0..1.0));
        assert_eq!(y_axis([-10.0, 10.0]), Axis::Linear(-10.0..12.0));
    }

    #[test]
    fn x_range_leaves_room_and_spans_a_decade_for_a_single_case() {
        assert_eq!(x_range([1.0, 1000.0, 10000.0]), 0.5..20000.0);
        assert_eq!(x_range([1000.0]), 100.0..10000.0);
        assert_eq!(x_range([]), 0.1..10.0);
    }

    #[test]
    fn tick_labels_are_short() {
        for (v, want) in [
            (0.0, "0"),
            (0.5, "0.5"),
            (0.002, "0.002"),
            (1.23456, "1.23"),
            (12.0, "12"),
            (1000.0, "1000"),
            (25_000.0, "25k"),
            (1.5e6, "1.5M"),
            (2e9, "2G"),
            (-0.0, "0"),
        ] {
            assert_eq!(short_number(v), want, "{v}");
        }
    }

    #[test]
    fn file_names_and_report_links() {
        assert_eq!(file_stem("rr_p99_us"), "rr_p99_us");
        assert_eq!(file_stem("a/b c"), "a_b_c");
        let files = [
            PathBuf::from("/out/plots/udp_pps.png"),
            PathBuf::from("/out/plots/rr_p99_us.png"),
        ];
        assert_eq!(
            report_section(&files, "plots"),
            "\n## Plots\n\n![udp_pps](plots/udp_pps.png)\n\n![rr_p99_us](plots/rr_p99_us.png)\n\n"
        );
        assert_eq!(report_section(&[], "plots"), "");
    }

    #[test]
    fn writes_one_png_per_metric() {
        if !Path::new(FONT).exists() {
            eprintln!("skipped: {FONT} is missing (Debian package fonts-dejavu-core)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plots");
        let files = write_plots(&sample(), "services", &dir).unwrap();
        assert_eq!(
            files,
            [
                dir.join("new_conns_per_s.png"),
                dir.join("update_one_service_us.png"),
                dir.join("udp_pps.png"),
            ]
        );
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{} is not a PNG",
                file.display()
            );
        }
    }
}
