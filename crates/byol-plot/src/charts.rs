//! Charts of a run's metrics: one PNG per quantity, and `dashboard.png`
//! with all of them in one figure.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::axis::{
    accuracy_range, from_zero, integer_range, integer_ticks, nice_ticks, padded, tick_label,
    tick_step,
};
use crate::metrics::{Metrics, StepPoint, read_metrics};
use crate::{PlotError, Rgb8Image, draw_err, register};

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 500;
/// Width and height of `dashboard.png`: three panels by two, under a title.
pub const DASHBOARD_SIZE: (u32, u32) = (1500, 900);
const DASHBOARD_TITLE: u32 = 44;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const GRAY: RGBColor = RGBColor(110, 110, 110);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const BROWN: RGBColor = RGBColor(140, 86, 75);

/// One line of a chart.
#[derive(Debug, Clone)]
struct Series {
    label: String,
    /// Finite points only.
    points: Vec<(f64, f64)>,
    color: RGBColor,
    /// Also draw a dot at each point.
    dots: bool,
    /// A dashed line (the baselines).
    dashed: bool,
}

impl Series {
    fn line(label: &str, points: impl Iterator<Item = (f64, f64)>, color: RGBColor) -> Self {
        Self {
            label: label.into(),
            points: points
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect(),
            color,
            dots: false,
            dashed: false,
        }
    }

    fn dotted(mut self) -> Self {
        self.dots = true;
        self
    }
}

/// A horizontal reference line across the chart (a baseline's accuracy).
#[derive(Debug, Clone)]
struct Level {
    label: String,
    y: f64,
    color: RGBColor,
}

/// One axis: its range and its tick values.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    range: (f64, f64),
    ticks: Vec<f64>,
}

/// What an axis shows, which decides its range and ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    /// Any value: the data's range, padded 5%.
    Fit,
    /// From 0 to the largest value (a learning rate).
    FromZero,
    /// Whole numbers (epochs, steps): integer ticks only.
    Whole,
    /// Accuracy in percent: fitted to the data, never past 100%.
    Percent,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, scale: Scale, max_ticks: usize) -> Option<Self> {
        let range = match scale {
            Scale::Fit => padded(values)?,
            Scale::FromZero => from_zero(values)?,
            Scale::Whole => integer_range(values)?,
            Scale::Percent => {
                let (lo, hi) = accuracy_range(values.map(|v| v / 100.0))?;
                (100.0 * lo, 100.0 * hi)
            }
        };
        let ticks = match scale {
            Scale::Whole => integer_ticks(range.0, range.1, max_ticks),
            Scale::Fit | Scale::FromZero | Scale::Percent => {
                nice_ticks(range.0, range.1, max_ticks)
            }
        };
        Some(Self { range, ticks })
    }

    fn label(&self, value: f64, percent: bool) -> String {
        let text = tick_label(value, tick_step(&self.ticks));
        if percent { format!("{text}%") } else { text }
    }
}

/// A plotters coordinate of `f64` whose tick marks are [`Axis::ticks`]
/// (plotters' own `with_key_points` offers no label formatter for `f64`).
struct Ticked {
    linear: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(axis: &Axis) -> Self {
        Self {
            linear: (axis.range.0..axis.range.1).into(),
            ticks: axis.ticks.clone(),
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // the ticks as the bold mesh lines and labels, no light lines
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.linear.range()
    }
}

/// A chart, its axes computed from its data.
#[derive(Debug, Clone)]
struct Chart {
    title: String,
    x_desc: String,
    y_desc: String,
    series: Vec<Series>,
    levels: Vec<Level>,
    x: Axis,
    y: Axis,
    percent: bool,
}

impl Chart {
    /// `None` when no series has a finite point.
    fn new(
        title: &str,
        (x_desc, x_scale): (&str, Scale),
        (y_desc, y_scale): (&str, Scale),
        series: Vec<Series>,
        levels: Vec<Level>,
    ) -> Option<Self> {
        let series: Vec<Series> = series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect();
        let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
        let ys = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(levels.iter().map(|l| l.y));
        Some(Self {
            title: title.into(),
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            x: Axis::new(xs, x_scale, 8)?,
            y: Axis::new(ys, y_scale, 6)?,
            series,
            levels,
            percent: y_scale == Scale::Percent,
        })
    }

    /// The legend's entries: the series, then the levels (dashed).
    fn legend(&self) -> Vec<Entry> {
        let series = self
            .series
            .iter()
            .map(|s| (s.label.clone(), s.color, s.dots, s.dashed));
        let levels = self
            .levels
            .iter()
            .map(|l| (l.label.clone(), l.color, false, true));
        series.chain(levels).collect()
    }
}

/// Font sizes and margins of a chart.
#[derive(Debug, Clone, Copy)]
struct Style {
    caption: u32,
    labels: u32,
    desc: u32,
    legend: u32,
    y_label_area: u32,
    x_label_area: u32,
}

const SINGLE: Style = Style {
    caption: 24,
    labels: 15,
    desc: 17,
    legend: 15,
    y_label_area: 80,
    x_label_area: 50,
};

const PANEL: Style = Style {
    caption: 19,
    labels: 13,
    desc: 14,
    legend: 13,
    y_label_area: 72,
    x_label_area: 44,
};

/// Draws `chart` into `area`: the chart, and below it a legend when there
/// is more than one line (outside the data, so that it never hides one).
fn draw_chart(area: &Area<'_>, chart: &Chart, style: Style, what: &str) -> Result<(), PlotError> {
    let e = draw_err(what);
    area.fill(&WHITE).map_err(|x| e(&x))?;
    let entries = chart.legend();
    let plot_area = if entries.len() > 1 {
        let rows = legend_rows(area, &entries, style, what)?;
        let row_h = style.legend as i32 + 10;
        let height = area.dim_in_pixel().1 as i32;
        let (plot, legend) = area.split_vertically(height - rows.len() as i32 * row_h - 8);
        draw_legend(&legend, &entries, &rows, style, what)?;
        plot
    } else {
        area.clone()
    };
    let (x0, x1) = chart.x.range;
    let mut ctx = ChartBuilder::on(&plot_area)
        .caption(&chart.title, ("sans-serif", style.caption))
        .margin(12)
        .margin_right(22)
        .x_label_area_size(style.x_label_area)
        .y_label_area_size(style.y_label_area)
        .build_cartesian_2d(Ticked::new(&chart.x), Ticked::new(&chart.y))
        .map_err(|x| e(&x))?;
    let x_label = |v: &f64| chart.x.label(*v, false);
    let y_label = |v: &f64| chart.y.label(*v, chart.percent);
    ctx.configure_mesh()
        .x_desc(&chart.x_desc)
        .y_desc(&chart.y_desc)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(("sans-serif", style.labels))
        .axis_desc_style(("sans-serif", style.desc))
        .bold_line_style(BLACK.mix(0.08))
        .draw()
        .map_err(|x| e(&x))?;
    for level in &chart.levels {
        ctx.draw_series(DashedLineSeries::new(
            [(x0, level.y), (x1, level.y)],
            9,
            6,
            level.color.stroke_width(2),
        ))
        .map_err(|x| e(&x))?;
    }
    for s in &chart.series {
        ctx.draw_series(LineSeries::new(
            s.points.iter().copied(),
            s.color.stroke_width(2),
        ))
        .map_err(|x| e(&x))?;
        if s.dots {
            ctx.draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, s.color.filled())),
            )
            .map_err(|x| e(&x))?;
        }
    }
    area.present().map_err(|x| e(&x))
}

const SAMPLE: i32 = 30;
const ENTRY_GAP: i32 = 22;

/// A legend entry: label, colour, dots, dashed.
type Entry = (String, RGBColor, bool, bool);

/// The legend's rows, laid out left to right within `area`'s width: each
/// row the entries' indices and x offsets.
fn legend_rows(
    area: &Area<'_>,
    entries: &[Entry],
    style: Style,
    what: &str,
) -> Result<Vec<Vec<(usize, i32)>>, PlotError> {
    let font = ("sans-serif", style.legend).into_font().color(&BLACK);
    let width = area.dim_in_pixel().0 as i32 - 2 * style.y_label_area.min(40) as i32;
    let mut rows: Vec<Vec<(usize, i32)>> = vec![Vec::new()];
    let mut x = 0;
    for (i, (label, ..)) in entries.iter().enumerate() {
        let (w, _) = area
            .estimate_text_size(label, &font)
            .map_err(|x| draw_err(what)(&x))?;
        let entry = SAMPLE + 8 + w as i32;
        let row = rows.last_mut().expect("rows start with one row");
        if x > 0 && x + entry > width {
            rows.push(vec![(i, 0)]);
            x = entry + ENTRY_GAP;
        } else {
            row.push((i, x));
            x += entry + ENTRY_GAP;
        }
    }
    Ok(rows)
}

/// Draws the legend entries laid out as `rows`, each row centred.
fn draw_legend(
    area: &Area<'_>,
    entries: &[Entry],
    rows: &[Vec<(usize, i32)>],
    style: Style,
    what: &str,
) -> Result<(), PlotError> {
    let e = draw_err(what);
    let font = ("sans-serif", style.legend)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let row_h = style.legend as i32 + 10;
    let width = area.dim_in_pixel().0 as i32;
    for (r, row) in rows.iter().enumerate() {
        let Some(&(last, last_x)) = row.last() else {
            continue;
        };
        let (w, _) = area
            .estimate_text_size(&entries[last].0, &font)
            .map_err(|x| e(&x))?;
        let used = last_x + SAMPLE + 8 + w as i32;
        let left = ((width - used) / 2).max(4);
        let y = 4 + r as i32 * row_h + row_h / 2;
        for &(i, x) in row {
            let (label, color, dots, dashed) = &entries[i];
            let x = left + x;
            let stroke = color.stroke_width(2);
            if *dashed {
                for seg in [(0, 9), (15, 24)] {
                    area.draw(&PathElement::new(
                        vec![(x + seg.0, y), (x + seg.1, y)],
                        stroke,
                    ))
                    .map_err(|x| e(&x))?;
                }
            } else {
                area.draw(&PathElement::new(vec![(x, y), (x + SAMPLE - 6, y)], stroke))
                    .map_err(|x| e(&x))?;
            }
            if *dots {
                area.draw(&Circle::new((x + (SAMPLE - 6) / 2, y), 4, color.filled()))
                    .map_err(|x| e(&x))?;
            }
            area.draw(&Text::new(
                label.as_str(),
                (x + SAMPLE + 2, y),
                font.clone(),
            ))
            .map_err(|x| e(&x))?;
        }
    }
    Ok(())
}

/// Draws `f` into a white `width × height` picture.
fn render(
    width: u32,
    height: u32,
    f: impl FnOnce(&Area<'_>) -> Result<(), PlotError>,
) -> Result<Rgb8Image, PlotError> {
    register();
    let mut img = Rgb8Image::white(width, height);
    {
        let area = BitMapBackend::with_buffer(&mut img.pixels, (width, height)).into_drawing_area();
        f(&area)?;
    }
    Ok(img)
}

/// The x axis of charts against optimizer steps.
fn steps_desc(metrics: &Metrics, short: bool) -> String {
    let word = if short { "steps" } else { "optimizer steps" };
    match metrics.steps_per_epoch() {
        Some(n) => format!("{word} ({n} per epoch)"),
        None => word.into(),
    }
}

/// A series of the step records.
fn step_series(
    metrics: &Metrics,
    label: &str,
    color: RGBColor,
    f: fn(&StepPoint) -> f64,
) -> Series {
    let s = Series::line(
        label,
        metrics.steps.iter().map(|s| (s.step as f64, f(s))),
        color,
    );
    if s.points.len() < 3 { s.dotted() } else { s }
}

/// `loss.png`: the logged step losses and the epoch means.
fn loss_chart(metrics: &Metrics, short: bool) -> Option<Chart> {
    let epochs = Series::line(
        "epoch mean",
        metrics.epochs.iter().map(|e| (e.step as f64, e.loss)),
        ORANGE,
    )
    .dotted();
    Chart::new(
        "BYOL loss",
        (&steps_desc(metrics, short), Scale::Whole),
        ("loss (2 − 2·cos, both view orders)", Scale::Fit),
        vec![
            step_series(metrics, "logged step", BLUE, |s| s.loss),
            epochs,
        ],
        Vec::new(),
    )
}

/// The raw-pixel and random-init kNN top-1, as dashed levels.
fn baselines(metrics: &Metrics) -> Vec<Level> {
    [
        ("raw_pixels", "raw pixels (baseline)", GRAY),
        ("random_init", "random-init encoder (baseline)", RED),
    ]
    .into_iter()
    .filter_map(|(model, label, color)| {
        Some(Level {
            label: label.into(),
            y: 100.0 * metrics.baseline_top1(model)?,
            color,
        })
    })
    .collect()
}

/// `knn.png`: the trained encoder's kNN top-1 (and top-5 when
/// `with_top5`) per epoch, with the baselines' top-1; `None` without kNN
/// records of the trained encoder.
fn knn_chart(metrics: &Metrics, with_top5: bool) -> Option<Chart> {
    let top1 = Series::line(
        "BYOL encoder, top-1",
        metrics
            .trained_knn()
            .map(|k| (k.epoch as f64, 100.0 * k.top1)),
        BLUE,
    )
    .dotted();
    let mut series = vec![top1];
    if with_top5 {
        series.push(
            Series::line(
                "BYOL encoder, top-5",
                metrics
                    .trained_knn()
                    .map(|k| (k.epoch as f64, 100.0 * k.top5)),
                ORANGE,
            )
            .dotted(),
        );
    }
    if series[0].points.is_empty() {
        return None;
    }
    let online = !metrics.online_linear.is_empty();
    if online {
        series.push(
            Series::line(
                "online linear classifier, top-1",
                metrics
                    .online_linear
                    .iter()
                    .map(|k| (k.epoch as f64, 100.0 * k.top1)),
                GREEN,
            )
            .dotted(),
        );
    }
    let (title, y) = match (with_top5, online) {
        (true, false) => ("kNN accuracy on the test split", "accuracy"),
        (false, false) => ("kNN top-1 on the test split", "top-1 accuracy"),
        (true, true) => (
            "kNN and online linear accuracy on the test split",
            "accuracy",
        ),
        (false, true) => (
            "kNN and online linear top-1 on the test split",
            "top-1 accuracy",
        ),
    };
    Chart::new(
        title,
        ("epoch", Scale::Whole),
        (y, Scale::Percent),
        series,
        baselines(metrics),
    )
}

/// The charts of the step records other than the loss: (file, chart).
fn step_charts(metrics: &Metrics, short: bool) -> Vec<(&'static str, Option<Chart>)> {
    let x = steps_desc(metrics, short);
    let one = |title: &str, y: &str, color, scale, f: fn(&StepPoint) -> f64| {
        Chart::new(
            title,
            (&x, Scale::Whole),
            (y, scale),
            vec![step_series(metrics, y, color, f)],
            Vec::new(),
        )
    };
    vec![
        (
            "tau.png",
            one(
                "target moving-average rate τ",
                "τ",
                GREEN,
                Scale::Fit,
                |s| s.tau,
            ),
        ),
        (
            "lr.png",
            one(
                "learning rate",
                "learning rate",
                BLUE,
                Scale::FromZero,
                |s| s.lr,
            ),
        ),
        (
            "z_std.png",
            one(
                if short {
                    "z-std (collapse → 0)"
                } else {
                    "z-std (std of the L2-normalised projections; collapse → 0)"
                },
                "z-std",
                PURPLE,
                Scale::Fit,
                |s| s.z_std,
            ),
        ),
        (
            "effective_rank.png",
            one(
                if short {
                    "effective rank (collapse → 1)"
                } else {
                    "effective rank of the batch of representations (collapse → 1)"
                },
                "effective rank",
                BROWN,
                Scale::Fit,
                |s| s.effective_rank,
            ),
        ),
    ]
}

/// A panel that says why it is empty.
fn draw_note(area: &Area<'_>, title: &str, note: &str, what: &str) -> Result<(), PlotError> {
    let e = draw_err(what);
    area.fill(&WHITE).map_err(|x| e(&x))?;
    let (w, h) = area.dim_in_pixel();
    let center = Pos::new(HPos::Center, VPos::Center);
    let title_font = ("sans-serif", PANEL.caption)
        .into_font()
        .color(&BLACK)
        .pos(center);
    let font = ("sans-serif", PANEL.labels)
        .into_font()
        .color(&GRAY)
        .pos(center);
    area.draw(&Text::new(title, (w as i32 / 2, 24), title_font))
        .map_err(|x| e(&x))?;
    area.draw(&Text::new(note, (w as i32 / 2, h as i32 / 2), font))
        .map_err(|x| e(&x))?;
    area.present().map_err(|x| e(&x))
}

/// The dashboard's title: what the run did and reached.
fn dashboard_title(metrics: &Metrics) -> String {
    let steps = metrics.steps.last().map_or(0, |s| s.step);
    let epochs = metrics.epochs.last().map_or(0, |e| e.epoch);
    let mut title = format!("BYOL run: {steps} steps, {epochs} epochs");
    if let Some(loss) = metrics
        .epochs
        .last()
        .map(|e| e.loss)
        .filter(|l| l.is_finite())
    {
        title += &format!(", last epoch's loss {loss:.4}");
    }
    if let Some(k) = metrics.trained_knn().last().filter(|k| k.top1.is_finite()) {
        title += &format!(", kNN top-1 {:.2}%", 100.0 * k.top1);
        if let Some(raw) = metrics.baseline_top1("raw_pixels") {
            title += &format!(" (raw pixels {:.2}%)", 100.0 * raw);
        }
    }
    if let Some(o) = metrics.online_linear.last().filter(|o| o.top1.is_finite()) {
        title += &format!(", online linear {:.2}%", 100.0 * o.top1);
    }
    title
}

/// `dashboard.png`: loss, kNN top-1 with its baselines, τ, learning rate,
/// z-std and effective rank in one [`DASHBOARD_SIZE`] figure.
fn dashboard(metrics: &Metrics) -> Result<Rgb8Image, PlotError> {
    const WHAT: &str = "dashboard.png";
    let (width, height) = DASHBOARD_SIZE;
    render(width, height, |area| {
        let e = draw_err(WHAT);
        area.fill(&WHITE).map_err(|x| e(&x))?;
        let (top, body) = area.split_vertically(DASHBOARD_TITLE);
        let font = ("sans-serif", 22)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        top.draw(&Text::new(
            dashboard_title(metrics),
            (width as i32 / 2, DASHBOARD_TITLE as i32 / 2 + 4),
            font,
        ))
        .map_err(|x| e(&x))?;
        let panels = body.split_evenly((2, 3));
        let mut charts = vec![
            (
                "BYOL loss",
                "no finite loss was logged",
                loss_chart(metrics, true),
            ),
            (
                "kNN top-1 on the test split",
                "no kNN monitor: the data has no labelled train and test splits",
                knn_chart(metrics, false),
            ),
        ];
        for (file, chart) in step_charts(metrics, true) {
            let name = file.trim_end_matches(".png");
            charts.push((name, "no finite value was logged", chart));
        }
        for (panel, (title, note, chart)) in panels.iter().zip(charts) {
            match chart {
                Some(chart) => draw_chart(panel, &chart, PANEL, WHAT)?,
                None => draw_note(panel, title, note, WHAT)?,
            }
        }
        area.present().map_err(|x| e(&x))
    })
}

/// Writes the charts of `metrics` into `out_dir` (created if needed):
/// `loss.png` (logged step losses and epoch means against steps),
/// `knn.png` (kNN top-1 and top-5 against epochs, with the raw-pixel and
/// random-init top-1 as dashed lines; only when the run has kNN records),
/// `tau.png`, `lr.png`, `z_std.png` and `effective_rank.png` (against
/// steps), and `dashboard.png` with all of them in one figure. A chart
/// with no finite value is left out with a warning. Returns the files
/// written.
///
/// # Errors
///
/// [`PlotError::CreateDir`] for `out_dir`, [`PlotError::Draw`] or
/// [`PlotError::Png`] naming the chart that cannot be drawn or written.
pub fn plot_metrics(metrics: &Metrics, out_dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(out_dir).map_err(|source| PlotError::CreateDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut charts = vec![("loss.png", loss_chart(metrics, false))];
    if metrics.trained_knn().next().is_some() {
        charts.push(("knn.png", knn_chart(metrics, true)));
    }
    charts.extend(step_charts(metrics, false));
    let mut written = Vec::new();
    for (file, chart) in charts {
        let Some(chart) = chart else {
            tracing::warn!("{file}: no finite value to plot; not drawn");
            continue;
        };
        let path = out_dir.join(file);
        render(WIDTH, HEIGHT, |area| draw_chart(area, &chart, SINGLE, file))?.save_png(&path)?;
        written.push(path);
    }
    let path = out_dir.join("dashboard.png");
    dashboard(metrics)?.save_png(&path)?;
    written.push(path);
    Ok(written)
}

/// Charts of the run in `run_dir` (its `metrics.jsonl`) into
/// `run_dir/plots/`; see [`plot_metrics`].
///
/// # Errors
///
/// As [`read_metrics`] and [`plot_metrics`].
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let metrics = read_metrics(&run_dir.join("metrics.jsonl"))?;
    plot_metrics(&metrics, &run_dir.join("plots"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::parse_metrics;

    const METRICS: &str = r#"{"kind":"knn","model":"raw_pixels","epoch":0,"step":0,"top1":0.769,"top5":0.975}
{"kind":"knn","model":"random_init","epoch":0,"step":0,"top1":0.721,"top5":0.97}
{"kind":"step","step":5,"epoch":1,"loss":1.2,"tau":0.99,"lr":0.001,"images_per_sec":100.0,"data_wait_fraction":0.0,"z_std":0.06,"repr_variance":1.0,"effective_rank":10.0}
{"kind":"step","step":10,"epoch":1,"loss":null,"tau":0.991,"lr":0.001,"images_per_sec":100.0,"data_wait_fraction":0.0,"z_std":0.07,"repr_variance":1.0,"effective_rank":11.0}
{"kind":"epoch","epoch":1,"step":10,"loss":1.1,"seconds":3.0,"images_per_sec":100.0,"data_wait_fraction":0.0}
{"kind":"knn","model":"epoch","epoch":1,"step":10,"top1":0.70,"top5":0.98}
{"kind":"step","step":15,"epoch":2,"loss":0.9,"tau":0.992,"lr":0.0008,"images_per_sec":100.0,"data_wait_fraction":0.0,"z_std":0.065,"repr_variance":1.0,"effective_rank":12.0}
{"kind":"epoch","epoch":2,"step":20,"loss":0.8,"seconds":3.0,"images_per_sec":100.0,"data_wait_fraction":0.0}
{"kind":"knn","model":"epoch","epoch":2,"step":20,"top1":0.74,"top5":0.995}
{"kind":"step","step":25,"ep"#;

    /// The share of non-white pixels of a PNG file.
    fn ink(path: &Path) -> f64 {
        let img = image::open(path).expect("a PNG").to_rgb8();
        let dark = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        dark as f64 / (img.width() * img.height()) as f64
    }

    #[test]
    fn the_accuracy_axis_fits_the_data_and_stays_at_or_below_100_percent() {
        let m = parse_metrics(METRICS);
        for with_top5 in [false, true] {
            let chart = knn_chart(&m, with_top5).expect("a kNN chart");
            let (lo, hi) = chart.y.range;
            assert!(hi <= 100.0, "{hi}");
            assert!(lo > 60.0, "fitted, not from 0: {lo}");
            // every accuracy and baseline is on the chart
            assert!(lo < 70.0 && hi >= if with_top5 { 99.5 } else { 76.9 });
            assert!(chart.y.ticks.iter().all(|t| *t <= 100.0));
            assert!(
                chart
                    .y
                    .label(*chart.y.ticks.last().expect("ticks"), true)
                    .ends_with('%')
            );
        }
    }

    #[test]
    fn epoch_and_step_axes_have_integer_ticks() {
        let m = parse_metrics(METRICS);
        let knn = knn_chart(&m, true).expect("chart");
        assert_eq!(knn.x.ticks, [1.0, 2.0], "epochs 1 and 2, no 1.5");
        let loss = loss_chart(&m, false).expect("chart");
        assert!(!loss.x.ticks.is_empty());
        assert!(
            loss.x.ticks.iter().all(|t| t.fract() == 0.0),
            "{:?}",
            loss.x.ticks
        );
        assert!(
            loss.x
                .ticks
                .iter()
                .all(|t| !chart_label_has_point(&loss.x.label(*t, false)))
        );
    }

    fn chart_label_has_point(label: &str) -> bool {
        label.contains('.')
    }

    #[test]
    fn the_baselines_are_labelled_dashed_lines() {
        let m = parse_metrics(METRICS);
        let chart = knn_chart(&m, false).expect("chart");
        let legend = chart.legend();
        let dashed: Vec<&str> = legend
            .iter()
            .filter(|e| e.3)
            .map(|e| e.0.as_str())
            .collect();
        assert_eq!(
            dashed,
            ["raw pixels (baseline)", "random-init encoder (baseline)"]
        );
        assert_eq!(chart.levels[0].y, 76.9);
    }

    #[test]
    fn charts_and_dashboard_are_written_with_curves_and_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = parse_metrics(METRICS);
        let files = plot_metrics(&m, dir.path()).expect("plotted");
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "loss.png",
                "knn.png",
                "tau.png",
                "lr.png",
                "z_std.png",
                "effective_rank.png",
                "dashboard.png"
            ]
        );
        for f in &files {
            let share = ink(f);
            // axes, labels and a line, on a mostly white background
            assert!((0.01..0.5).contains(&share), "{}: {share}", f.display());
        }
        let dashboard = image::open(dir.path().join("dashboard.png")).expect("a PNG");
        assert_eq!(
            (dashboard.width(), dashboard.height()),
            DASHBOARD_SIZE,
            "the dashboard's size"
        );
        let single = image::open(&files[0]).expect("a PNG");
        assert_eq!((single.width(), single.height()), (WIDTH, HEIGHT));

        // the font renders: a chart without its text has less ink
        let chart = step_charts(&m, false).remove(0).1.expect("τ chart");
        let blank = Chart {
            title: String::new(),
            x_desc: String::new(),
            y_desc: String::new(),
            ..chart.clone()
        };
        let path = dir.path().join("blank.png");
        render(WIDTH, HEIGHT, |a| draw_chart(a, &blank, SINGLE, "blank"))
            .expect("drawn")
            .save_png(&path)
            .expect("saved");
        assert!(
            ink(&path) < ink(&files[2]),
            "text adds ink: {} vs {}",
            ink(&path),
            ink(&files[2])
        );
    }

    #[test]
    fn a_run_without_knn_records_still_gets_a_dashboard() {
        let text: String = METRICS
            .lines()
            .filter(|l| !l.contains(r#""kind":"knn""#))
            .map(|l| format!("{l}\n"))
            .collect();
        let m = parse_metrics(&text);
        let dir = tempfile::tempdir().expect("tempdir");
        let files = plot_metrics(&m, dir.path()).expect("plotted");
        assert!(!files.iter().any(|f| f.ends_with("knn.png")));
        assert!(files.iter().any(|f| f.ends_with("dashboard.png")));
    }
}
