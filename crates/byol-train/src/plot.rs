//! Pictures of a run, as PNG files (cargo feature `plot`, on by default):
//! charts of its `metrics.jsonl` and a grid of the augmented views.
//!
//! Drawn with plotters' bitmap backend into a buffer and encoded by the
//! `image` crate. Text uses a subset of DejaVu Sans compiled into the
//! binary (`assets/`, plotters' `ab_glyph` feature) rather than system
//! fonts (plotters' `ttf` feature, through font-kit and fontconfig), so the
//! charts look the same on every machine and need no font package.

use std::path::{Path, PathBuf};
use std::sync::Once;

use byol_augment::{augment_batch, to_rgb8};
use byol_data::{Dataset, Image};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde_json::Value;

use crate::{RunConfig, TrainError};

/// The charts' font (see `assets/README.md`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
static REGISTER: Once = Once::new();

fn register() {
    REGISTER.call_once(|| {
        // the font is compiled in and known to parse (tested)
        if register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the bundled chart font did not load: charts will have no text");
        }
    });
}

fn output_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A `step` line of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPoint {
    /// Optimizer steps done.
    pub step: f64,
    /// Epoch, from 1.
    pub epoch: f64,
    /// BYOL loss of the step (`None` when it was not finite).
    pub loss: Option<f64>,
    /// τ of the target update.
    pub tau: Option<f64>,
    /// Learning rate.
    pub lr: Option<f64>,
    /// Std of the normalised projections.
    pub z_std: Option<f64>,
}

/// An `epoch` line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    /// Epoch, from 1.
    pub epoch: f64,
    /// Optimizer steps done at its end.
    pub step: f64,
    /// Mean loss over the epoch.
    pub loss: Option<f64>,
}

/// A `knn` line.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnPoint {
    /// `raw_pixels`, `random_init` or `epoch`.
    pub model: String,
    /// Epoch (0 before training).
    pub epoch: f64,
    /// Top-1 accuracy in [0, 1].
    pub top1: Option<f64>,
    /// Top-5 accuracy in [0, 1].
    pub top5: Option<f64>,
}

/// The records of a `metrics.jsonl`, by kind, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// `{"kind":"step",...}` lines.
    pub steps: Vec<StepPoint>,
    /// `{"kind":"epoch",...}` lines.
    pub epochs: Vec<EpochPoint>,
    /// `{"kind":"knn",...}` lines.
    pub knn: Vec<KnnPoint>,
}

/// Parses `metrics.jsonl` text. Lines that are not JSON objects with a
/// `kind` and a `step` (a line torn by a crash) and unknown kinds are
/// skipped; the count of skipped lines is returned beside the records.
pub fn parse_metrics(text: &str) -> (Metrics, usize) {
    let mut m = Metrics::default();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            skipped += 1;
            continue;
        };
        let num = |key: &str| v.get(key).and_then(Value::as_f64);
        let (Some(kind), Some(step)) = (v.get("kind").and_then(Value::as_str), num("step")) else {
            skipped += 1;
            continue;
        };
        let epoch = num("epoch").unwrap_or(0.0);
        match kind {
            "step" => m.steps.push(StepPoint {
                step,
                epoch,
                loss: num("loss"),
                tau: num("tau"),
                lr: num("lr"),
                z_std: num("z_std"),
            }),
            "epoch" => m.epochs.push(EpochPoint {
                epoch,
                step,
                loss: num("loss"),
            }),
            "knn" => m.knn.push(KnnPoint {
                model: v
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("epoch")
                    .to_string(),
                epoch,
                top1: num("top1"),
                top5: num("top5"),
            }),
            _ => skipped += 1,
        }
    }
    (m, skipped)
}

/// Reads a run's `metrics.jsonl`.
///
/// # Errors
///
/// [`TrainError::Checkpoint`] naming the file when it cannot be read or
/// holds no step record.
pub fn read_metrics(path: &Path) -> Result<Metrics, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let (metrics, skipped) = parse_metrics(&text);
    if skipped > 0 {
        tracing::warn!(path = %path.display(), "{skipped} unreadable lines skipped");
    }
    if metrics.steps.is_empty() {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: "no step record to plot".into(),
        });
    }
    Ok(metrics)
}

/// One line of a chart.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    /// Also draw a dot at each point.
    dots: bool,
}

/// A dashed-free horizontal reference line.
struct Level {
    label: String,
    y: f64,
    color: RGBColor,
}

const WIDTH: u32 = 900;
const HEIGHT: u32 = 500;
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GRAY: RGBColor = RGBColor(127, 127, 127);
const PURPLE: RGBColor = RGBColor(148, 103, 189);

/// `[lo, hi]` widened by 5% (or around a single value) so that lines do
/// not sit on the frame.
fn padded(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        0.05 * (hi - lo)
    } else {
        0.05 * lo.abs().max(1e-12)
    };
    Some((lo - pad, hi + pad))
}

/// Draws one chart into an RGB buffer.
fn draw_chart(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    levels: &[Level],
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    area.fill(&WHITE).map_err(|x| e(&x))?;
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(levels.iter().map(|l| l.y));
    let (Some((x0, x1)), Some((y0, mut y1))) = (padded(xs), padded(ys)) else {
        return Err("no finite value to plot".into());
    };
    let entries = series.len() + levels.len();
    let legend = entries > 1;
    if legend {
        // headroom above the data for the legend box (~22 px an entry), so
        // it never hides a curve near the top (top-5 accuracy, say)
        let plot_px = f64::from(area.dim_in_pixel().1).max(200.0) - 100.0;
        let free = ((22 * entries + 24) as f64 / plot_px).min(0.6);
        y1 += (y1 - y0) * free / (1.0 - free);
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|x| e(&x))?;
    for level in levels {
        let color = level.color;
        chart
            .draw_series(LineSeries::new(
                [(x0, level.y), (x1, level.y)],
                color.stroke_width(1),
            ))
            .map_err(|x| e(&x))?
            .label(&level.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    for s in series {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(&s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if s.dots {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|x| e(&x))?;
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|x| e(&x))?;
    }
    area.present().map_err(|x| e(&x))
}

/// A picture in memory: `width × height` RGB bytes, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8Image {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// `width × height × 3` bytes.
    pub pixels: Vec<u8>,
}

impl Rgb8Image {
    /// A white picture.
    pub fn white(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; width as usize * height as usize * 3],
        }
    }

    /// Writes it as a PNG file.
    ///
    /// # Errors
    ///
    /// [`TrainError::Output`] naming the file.
    pub fn save_png(&self, path: &Path) -> Result<(), TrainError> {
        image::save_buffer_with_format(
            path,
            &self.pixels,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|e| output_err(path, e))
    }
}

fn chart_png(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    levels: &[Level],
) -> Result<(), TrainError> {
    register();
    let mut img = Rgb8Image::white(WIDTH, HEIGHT);
    {
        let area = BitMapBackend::with_buffer(&mut img.pixels, (WIDTH, HEIGHT)).into_drawing_area();
        draw_chart(&area, title, x_desc, y_desc, series, levels)
            .map_err(|e| output_err(path, e))?;
    }
    img.save_png(path)
}

fn step_series(
    m: &Metrics,
    label: &str,
    color: RGBColor,
    f: fn(&StepPoint) -> Option<f64>,
) -> Series {
    Series {
        label: label.into(),
        points: m
            .steps
            .iter()
            .filter_map(|s| Some((s.step, f(s)?)))
            .collect(),
        color,
        dots: m.steps.len() < 3,
    }
}

/// Writes the charts of `metrics` into `out_dir` (created if needed):
/// `loss.png` (logged step losses and epoch means against steps),
/// `knn.png` (kNN top-1 and top-5 against epochs, with the raw-pixel and
/// random-init levels; only when the run has kNN records), `tau.png`,
/// `lr.png` and `z_std.png` (against steps). Returns the files written.
///
/// # Errors
///
/// [`TrainError::Output`] naming the file that cannot be drawn or written.
pub fn plot_metrics(metrics: &Metrics, out_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    std::fs::create_dir_all(out_dir).map_err(|e| output_err(out_dir, e))?;
    let per_epoch = metrics
        .epochs
        .first()
        .map(|e| format!(" ({} per epoch)", e.step))
        .unwrap_or_default();
    let x_steps = format!("optimizer steps{per_epoch}");
    let mut written = Vec::new();

    let path = out_dir.join("loss.png");
    let mut loss = vec![step_series(metrics, "logged step", BLUE, |s| s.loss)];
    if !metrics.epochs.is_empty() {
        loss.push(Series {
            label: "epoch mean".into(),
            points: metrics
                .epochs
                .iter()
                .filter_map(|e| Some((e.step, e.loss?)))
                .collect(),
            color: ORANGE,
            dots: true,
        });
    }
    chart_png(
        &path,
        "BYOL loss",
        &x_steps,
        "loss (2 - 2 cos, both view orders)",
        &loss,
        &[],
    )?;
    written.push(path);

    let trained: Vec<&KnnPoint> = metrics.knn.iter().filter(|k| k.model == "epoch").collect();
    if !trained.is_empty() {
        let path = out_dir.join("knn.png");
        let pct = |v: Option<f64>| v.map(|x| 100.0 * x);
        let series = vec![
            Series {
                label: "BYOL encoder, top-1".into(),
                points: trained
                    .iter()
                    .filter_map(|k| Some((k.epoch, pct(k.top1)?)))
                    .collect(),
                color: BLUE,
                dots: true,
            },
            Series {
                label: "BYOL encoder, top-5".into(),
                points: trained
                    .iter()
                    .filter_map(|k| Some((k.epoch, pct(k.top5)?)))
                    .collect(),
                color: ORANGE,
                dots: true,
            },
        ];
        let levels: Vec<Level> = [
            ("raw_pixels", "raw pixels, top-1", GRAY),
            ("random_init", "random-init encoder, top-1", PURPLE),
        ]
        .into_iter()
        .filter_map(|(model, label, color)| {
            let k = metrics.knn.iter().find(|k| k.model == model)?;
            Some(Level {
                label: label.into(),
                y: pct(k.top1)?,
                color,
            })
        })
        .collect();
        chart_png(
            &path,
            "kNN accuracy on the test split",
            "epoch",
            "accuracy (%)",
            &series,
            &levels,
        )?;
        written.push(path);
    }

    for (file, title, y, f, color) in [
        (
            "tau.png",
            "target moving-average rate τ",
            "τ",
            (|s: &StepPoint| s.tau) as fn(&StepPoint) -> Option<f64>,
            GREEN,
        ),
        (
            "lr.png",
            "learning rate",
            "learning rate",
            |s: &StepPoint| s.lr,
            BLUE,
        ),
        (
            "z_std.png",
            "z-std (std of the L2-normalised projections; collapse → 0)",
            "z-std",
            |s: &StepPoint| s.z_std,
            PURPLE,
        ),
    ] {
        let path = out_dir.join(file);
        chart_png(
            &path,
            title,
            &x_steps,
            y,
            &[step_series(metrics, y, color, f)],
            &[],
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Charts of the run in `run_dir` (its `metrics.jsonl`) into
/// `run_dir/plots/`; see [`plot_metrics`].
///
/// # Errors
///
/// As [`read_metrics`] and [`plot_metrics`].
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let metrics = read_metrics(&run_dir.join("metrics.jsonl"))?;
    plot_metrics(&metrics, &run_dir.join("plots"))
}

/// How [`preview_grid`] lays out the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviewOptions {
    /// Images, one per row.
    pub rows: usize,
    /// Draws of each view per image.
    pub draws: usize,
    /// Seed of the augmentations.
    pub seed: u64,
}

impl Default for PreviewOptions {
    fn default() -> Self {
        Self {
            rows: 8,
            draws: 3,
            seed: 0,
        }
    }
}

const GAP: usize = 4;
const HEADER: usize = 30;

/// A grid of `options.rows` images of `dataset` spread evenly over it: each
/// row the image after the evaluation transform, then `options.draws`
/// random draws of view 1, then of view 2, as `config.augment` makes them,
/// de-normalised back to pixels ([`to_rgb8`]) and enlarged (nearest
/// neighbour) to at least 96 pixels. A header names the columns.
///
/// # Errors
///
/// [`TrainError::Augment`] when `augment` does not fit the images,
/// [`TrainError::Data`] when an image cannot be read,
/// [`TrainError::Dataset`] for an empty dataset or zero rows or draws.
pub fn preview_grid(
    config: &RunConfig,
    dataset: &dyn Dataset,
    options: PreviewOptions,
) -> Result<Rgb8Image, TrainError> {
    let a = &config.augment;
    a.validate("augment")?;
    let c = dataset.channels();
    a.check_channels(c)?;
    if dataset.is_empty() || options.rows == 0 || options.draws == 0 {
        return Err(TrainError::Dataset(format!(
            "preview: {} images, {} rows and {} draws; need at least one of each",
            dataset.len(),
            options.rows,
            options.draws
        )));
    }
    let rows = options.rows.min(dataset.len());
    let size = a.size;
    let scale = 96usize.div_ceil(size).max(1);
    let cell = size * scale;
    let cols = 1 + 2 * options.draws;
    let width = cols * cell + (cols + 1) * GAP + 2 * GAP;
    let height = HEADER + rows * cell + (rows + 1) * GAP;
    let mut grid = Rgb8Image::white(width as u32, height as u32);
    let blit = |grid: &mut Rgb8Image, rgb: &[u8], row: usize, col: usize| {
        // one extra gap between the original and the views, and between the views
        let extra = if col == 0 {
            0
        } else if col <= options.draws {
            GAP
        } else {
            2 * GAP
        };
        let x0 = GAP + col * (cell + GAP) + extra;
        let y0 = HEADER + GAP + row * (cell + GAP);
        for y in 0..cell {
            for x in 0..cell {
                let src = ((y / scale) * size + x / scale) * 3;
                let dst = ((y0 + y) * width + x0 + x) * 3;
                grid.pixels[dst..dst + 3].copy_from_slice(&rgb[src..src + 3]);
            }
        }
    };
    let eval = a.eval_transform();
    let plane = c * size * size;
    for row in 0..rows {
        let index = row * dataset.len() / rows;
        let image: Image = dataset.image(index)?;
        let original = eval.batch(&[image.as_ref()]);
        blit(&mut grid, &to_rgb8(&original, c, &a.mean, &a.std), row, 0);
        let copies = vec![image.as_ref(); options.draws];
        for (v, view) in [&a.view1, &a.view2].into_iter().enumerate() {
            let seed = crate::loader::mix(options.seed, row as u64, v as u64 + 1);
            let views = augment_batch(&copies, view, size, &a.mean, &a.std, seed);
            for (d, values) in views.chunks_exact(plane).enumerate() {
                let rgb = to_rgb8(values, c, &a.mean, &a.std);
                blit(&mut grid, &rgb, row, 1 + v * options.draws + d);
            }
        }
    }
    register();
    {
        let area = BitMapBackend::with_buffer(&mut grid.pixels, (width as u32, height as u32))
            .into_drawing_area();
        let style = ("sans-serif", 18).into_font().color(&BLACK);
        let x_of = |col: usize, extra: usize| (GAP + col * (cell + GAP) + extra) as i32;
        for (text, x) in [
            ("original", x_of(0, 0)),
            ("view 1", x_of(1, GAP)),
            ("view 2", x_of(1 + options.draws, 2 * GAP)),
        ] {
            area.draw(&Text::new(text, (x, 6), style.clone()))
                .map_err(|e| TrainError::Dataset(format!("preview header: {e}")))?;
        }
        area.present()
            .map_err(|e| TrainError::Dataset(format!("preview header: {e}")))?;
    }
    Ok(grid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use byol_data::{IdxDataset, ImageSet};

    const METRICS: &str = r#"{"kind":"knn","model":"raw_pixels","epoch":0,"step":0,"top1":0.77,"top5":0.97}
{"kind":"knn","model":"random_init","epoch":0,"step":0,"top1":0.72,"top5":0.97}
{"kind":"step","step":5,"epoch":1,"loss":1.2,"tau":0.99,"lr":0.001,"images_per_sec":100.0,"data_wait_fraction":0.0,"z_std":0.06,"repr_variance":1.0,"effective_rank":10.0}
{"kind":"step","step":10,"epoch":1,"loss":null,"tau":0.991,"lr":0.001,"images_per_sec":100.0,"data_wait_fraction":0.0,"z_std":0.07,"repr_variance":1.0,"effective_rank":10.0}
{"kind":"epoch","epoch":1,"step":10,"loss":1.1,"seconds":3.0,"images_per_sec":100.0,"data_wait_fraction":0.0}
{"kind":"knn","model":"epoch","epoch":1,"step":10,"top1":0.7,"top5":0.98}
{"kind":"step","step":15,"ep"#;

    #[test]
    fn metrics_lines_are_sorted_by_kind_and_torn_lines_skipped() {
        let (m, skipped) = parse_metrics(METRICS);
        assert_eq!(skipped, 1, "the torn last line");
        assert_eq!(m.steps.len(), 2);
        assert_eq!(m.steps[1].loss, None, "a NaN loss is written as null");
        assert_eq!(m.steps[1].tau, Some(0.991));
        assert_eq!(m.epochs.len(), 1);
        assert_eq!(m.knn.len(), 3);
        assert_eq!(m.knn[1].model, "random_init");
    }

    /// The share of non-white pixels of a PNG file.
    fn ink(path: &Path) -> f64 {
        let img = image::open(path).expect("a PNG").to_rgb8();
        let dark = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        dark as f64 / (img.width() * img.height()) as f64
    }

    #[test]
    fn charts_are_written_with_curves_and_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (m, _) = parse_metrics(METRICS);
        let files = plot_metrics(&m, dir.path()).expect("plotted");
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["loss.png", "knn.png", "tau.png", "lr.png", "z_std.png"]
        );
        for f in &files {
            let share = ink(f);
            // axes, labels and a line, on a mostly white background
            assert!((0.01..0.5).contains(&share), "{}: {share}", f.display());
        }
        // the font renders: a chart without its caption has less ink
        register();
        let with = ink(&files[2]);
        let mut img = Rgb8Image::white(WIDTH, HEIGHT);
        {
            let area =
                BitMapBackend::with_buffer(&mut img.pixels, (WIDTH, HEIGHT)).into_drawing_area();
            let s = [step_series(&m, "τ", GREEN, |s| s.tau)];
            draw_chart(&area, "", "", "", &s, &[]).expect("drawn");
        }
        let blank = dir.path().join("blank.png");
        img.save_png(&blank).expect("saved");
        assert!(
            ink(&blank) < with,
            "text adds ink: {} vs {with}",
            ink(&blank)
        );
    }

    #[test]
    fn the_bundled_font_parses() {
        assert!(register_font("test-font", FontStyle::Normal, FONT).is_ok());
    }

    #[test]
    fn preview_grid_shows_originals_and_views() {
        // 4 images of 8×8: a bright square on black, at another place in each
        let mut pixels = vec![0u8; 4 * 64];
        for i in 0..4 {
            for y in 0..4 {
                for x in 0..4 {
                    pixels[i * 64 + (y + i % 2 * 4) * 8 + x + i / 2 * 4] = 250;
                }
            }
        }
        let ds = IdxDataset::new(
            ImageSet {
                pixels,
                height: 8,
                width: 8,
                channels: 1,
            },
            None,
            "test",
        )
        .expect("valid");
        let mut config = RunConfig::default();
        config.augment.size = 8;
        config.augment.view1.blur_kernel_size = 3;
        config.augment.view2.blur_kernel_size = 3;
        let options = PreviewOptions {
            rows: 2,
            draws: 2,
            seed: 1,
        };
        let grid = preview_grid(&config, &ds, options).expect("grid");
        // cells of 8 × 12 = 96 pixels, 5 columns, 2 rows
        assert_eq!(grid.width as usize, 5 * 96 + 6 * GAP + 2 * GAP);
        assert_eq!(grid.height as usize, HEADER + 2 * 96 + 3 * GAP);
        let px = |x: usize, y: usize| {
            let i = (y * grid.width as usize + x) * 3;
            grid.pixels[i]
        };
        // row 0 shows image 0 (square top-left), row 1 image 2 (top-right)
        let top = HEADER + GAP;
        assert!(px(GAP + 10, top + 10) > 240 && px(GAP + 80, top + 10) < 10);
        let second = top + 96 + GAP;
        assert!(px(GAP + 10, second + 10) < 10 && px(GAP + 80, second + 10) > 240);
        // views differ from each other
        let cell = |col: usize, extra: usize| -> Vec<u8> {
            let x0 = GAP + col * (96 + GAP) + extra;
            (0..96)
                .flat_map(|y| (0..96).map(move |x| (x, y)))
                .map(|(x, y)| px(x0 + x, top + y))
                .collect()
        };
        assert_ne!(cell(1, GAP), cell(2, GAP));
        assert_ne!(cell(1, GAP), cell(3, 2 * GAP));
        // and the same seed draws the same grid
        assert_eq!(grid, preview_grid(&config, &ds, options).expect("grid"));
    }
}
