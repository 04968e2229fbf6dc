//! Pictures of BYOL runs, as PNG files: charts of a run's `metrics.jsonl`
//! and a one-figure dashboard of them ([`plot_run`]), a grid of images and
//! their augmented views ([`preview_grid`]), and a grid of test images with
//! their nearest training images under the trained encoder and under raw
//! pixels ([`neighbours_grid`]).
//!
//! Drawn with plotters' bitmap backend into a buffer and encoded by the
//! `image` crate. Text uses a subset of DejaVu Sans compiled into the
//! binary (`assets/`, plotters' `ab_glyph` feature) rather than system
//! fonts (plotters' `ttf` feature, through font-kit and fontconfig), so the
//! pictures look the same on every machine and need no font package.
//!
//! ```no_run
//! use std::path::Path;
//!
//! // runs/default/plots/{loss,knn,tau,lr,z_std,dashboard}.png
//! let files = byol_plot::plot_run(Path::new("runs/default"))?;
//! # Ok::<(), byol_plot::PlotError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::style::{FontStyle, register_font};

mod axis;
mod charts;
mod metrics;
mod neighbours;
mod preview;

pub use charts::{DASHBOARD_SIZE, plot_metrics, plot_run};
pub use metrics::{
    EpochPoint, KnnPoint, Metrics, SkippedLine, StepPoint, parse_metrics, read_metrics,
};
pub use neighbours::{
    Neighbours, NeighboursOptions, NeighboursPicture, SameClass, find_neighbours, nearest,
    neighbours_grid, run_neighbours,
};
pub use preview::{PreviewOptions, preview_grid};

/// Errors of drawing and writing pictures.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// plotters could not draw a picture.
    #[error("drawing {what}: {message}")]
    Draw {
        /// The picture (a file name, or `preview grid`).
        what: String,
        /// plotters' message.
        message: String,
    },
    /// There is nothing to draw: no finite value in any series.
    #[error("{what}: no finite value to plot")]
    NoData {
        /// The chart.
        what: String,
    },
    /// A PNG file cannot be encoded or written.
    #[error("cannot write {}: {source}", path.display())]
    Png {
        /// The file.
        path: PathBuf,
        /// The encoder's or the file system's error.
        source: image::ImageError,
    },
    /// An output folder cannot be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The file system's error.
        source: std::io::Error,
    },
    /// `metrics.jsonl` cannot be read, or holds nothing to plot; `line`
    /// (from 1) names the first line that did not read, when one did not.
    #[error(
        "{}{}: {message}",
        path.display(),
        line.map(|l| format!(":{l}")).unwrap_or_default()
    )]
    Metrics {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: Option<usize>,
        /// What went wrong.
        message: String,
    },
    /// An option is out of its range.
    #[error("invalid value for `{option}`: {value} (expected {expected})")]
    InvalidOption {
        /// The option, e.g. `n` or `neighbours.k`.
        option: String,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A dataset holds no image where a picture needs some.
    #[error("{what} of {}: no images", path.display())]
    EmptyDataset {
        /// Which split, e.g. `the test split`.
        what: String,
        /// The dataset.
        path: PathBuf,
    },
    /// A run folder or its config cannot be used.
    #[error(transparent)]
    Train(#[from] byol_train::TrainError),
    /// Features cannot be computed.
    #[error(transparent)]
    Eval(#[from] byol_eval::EvalError),
    /// An image cannot be read.
    #[error(transparent)]
    Data(#[from] byol_data::DataError),
    /// The augmentation config does not fit the images.
    #[error(transparent)]
    Augment(#[from] byol_augment::AugmentError),
}

/// The pictures' font (see `assets/README.md`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
static REGISTER: Once = Once::new();

/// Registers the bundled font as plotters' `sans-serif`, once.
fn register() {
    REGISTER.call_once(|| {
        // the font is compiled in and known to parse (tested)
        if register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::warn!("the bundled chart font did not load: pictures will have no text");
        }
    });
}

/// A plotters error as [`PlotError::Draw`] of `what`.
fn draw_err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError::Draw {
        what: what.to_string(),
        message: e.to_string(),
    }
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
    /// [`PlotError::Png`] naming the file.
    pub fn save_png(&self, path: &Path) -> Result<(), PlotError> {
        image::save_buffer_with_format(
            path,
            &self.pixels,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|source| PlotError::Png {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Copies `rgb` (`side × side` RGB bytes) enlarged `scale` times
    /// (nearest neighbour) with its top-left corner at `(x0, y0)`.
    ///
    /// # Panics
    ///
    /// When the enlarged square does not fit inside the picture.
    fn blit(&mut self, rgb: &[u8], side: usize, scale: usize, x0: usize, y0: usize) {
        let width = self.width as usize;
        let cell = side * scale;
        assert!(
            x0 + cell <= width && y0 + cell <= self.height as usize,
            "a cell should fit inside the picture"
        );
        for y in 0..cell {
            for x in 0..cell {
                let src = ((y / scale) * side + x / scale) * 3;
                let dst = ((y0 + y) * width + x0 + x) * 3;
                self.pixels[dst..dst + 3].copy_from_slice(&rgb[src..src + 3]);
            }
        }
    }

    /// Paints a `thickness`-pixel frame of `color` just outside the
    /// `w × h` box at `(x0, y0)`, clipped to the picture.
    fn frame(
        &mut self,
        x0: usize,
        y0: usize,
        w: usize,
        h: usize,
        thickness: usize,
        color: [u8; 3],
    ) {
        let (width, height) = (self.width as i64, self.height as i64);
        let t = thickness as i64;
        let (x0, y0, w, h) = (x0 as i64, y0 as i64, w as i64, h as i64);
        for y in (y0 - t)..(y0 + h + t) {
            for x in (x0 - t)..(x0 + w + t) {
                let inside = x >= x0 && x < x0 + w && y >= y0 && y < y0 + h;
                if inside || x < 0 || y < 0 || x >= width || y >= height {
                    continue;
                }
                let i = ((y * width + x) * 3) as usize;
                self.pixels[i..i + 3].copy_from_slice(&color);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_font_parses() {
        assert!(register_font("test-font", FontStyle::Normal, FONT).is_ok());
    }

    #[test]
    fn a_frame_surrounds_the_box_and_leaves_it_alone() {
        let mut img = Rgb8Image::white(10, 10);
        img.frame(3, 3, 4, 4, 1, [255, 0, 0]);
        let px = |x: usize, y: usize| {
            let i = (y * 10 + x) * 3;
            [img.pixels[i], img.pixels[i + 1], img.pixels[i + 2]]
        };
        assert_eq!(px(2, 2), [255, 0, 0]);
        assert_eq!(px(7, 5), [255, 0, 0]);
        assert_eq!(px(4, 4), [255, 255, 255]);
        assert_eq!(px(0, 0), [255, 255, 255]);
    }

    #[test]
    fn metrics_errors_name_the_file_and_line() {
        let e = PlotError::Metrics {
            path: "run/metrics.jsonl".into(),
            line: Some(3),
            message: "missing field `tau`".into(),
        };
        assert_eq!(e.to_string(), "run/metrics.jsonl:3: missing field `tau`");
    }
}
