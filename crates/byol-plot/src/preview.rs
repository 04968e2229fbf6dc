//! A grid of images and their augmented views, to check a config's
//! augmentations by eye before a long run.

use byol_augment::{augment_batch, to_rgb8};
use byol_data::{Dataset, Image};
use byol_train::RunConfig;
use plotters::prelude::*;

use crate::{PlotError, Rgb8Image, draw_err, register};

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
/// [`PlotError::Augment`] when `augment` does not fit the images,
/// [`PlotError::Data`] when an image cannot be read,
/// [`PlotError::EmptyDataset`] for an empty dataset,
/// [`PlotError::InvalidOption`] for zero rows or draws.
pub fn preview_grid(
    config: &RunConfig,
    dataset: &dyn Dataset,
    options: PreviewOptions,
) -> Result<Rgb8Image, PlotError> {
    let a = &config.augment;
    a.validate("augment")?;
    let c = dataset.channels();
    a.check_channels(c)?;
    for (option, value) in [("n", options.rows), ("draws", options.draws)] {
        if value == 0 {
            return Err(PlotError::InvalidOption {
                option: option.into(),
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
    }
    if dataset.is_empty() {
        return Err(PlotError::EmptyDataset {
            what: "the pretraining split".into(),
            path: config.data.path.clone(),
        });
    }
    let rows = options.rows.min(dataset.len());
    let size = a.size;
    let scale = 96usize.div_ceil(size).max(1);
    let cell = size * scale;
    let cols = 1 + 2 * options.draws;
    let width = cols * cell + (cols + 1) * GAP + 2 * GAP;
    let height = HEADER + rows * cell + (rows + 1) * GAP;
    let mut grid = Rgb8Image::white(width as u32, height as u32);
    // one extra gap between the original and the views, and between the views
    let x_of = |col: usize| {
        let extra = if col == 0 {
            0
        } else if col <= options.draws {
            GAP
        } else {
            2 * GAP
        };
        GAP + col * (cell + GAP) + extra
    };
    let eval = a.eval_transform();
    let plane = c * size * size;
    for row in 0..rows {
        let index = row * dataset.len() / rows;
        let image: Image = dataset.image(index)?;
        let y0 = HEADER + GAP + row * (cell + GAP);
        let original = eval.batch(&[image.as_ref()]);
        let rgb = to_rgb8(&original, c, &a.mean, &a.std);
        grid.blit(&rgb, size, scale, x_of(0), y0);
        let copies = vec![image.as_ref(); options.draws];
        for (v, view) in [&a.view1, &a.view2].into_iter().enumerate() {
            let seed = byol_augment::mix_seed(options.seed, row as u64, v as u64 + 1);
            let views = augment_batch(&copies, view, size, &a.mean, &a.std, seed);
            for (d, values) in views.chunks_exact(plane).enumerate() {
                let rgb = to_rgb8(values, c, &a.mean, &a.std);
                grid.blit(&rgb, size, scale, x_of(1 + v * options.draws + d), y0);
            }
        }
    }
    register();
    {
        let e = draw_err("the preview grid");
        let area = BitMapBackend::with_buffer(&mut grid.pixels, (width as u32, height as u32))
            .into_drawing_area();
        let style = ("sans-serif", 18).into_font().color(&BLACK);
        for (text, col) in [
            ("original", 0),
            ("view 1", 1),
            ("view 2", 1 + options.draws),
        ] {
            area.draw(&Text::new(text, (x_of(col) as i32, 6), style.clone()))
                .map_err(|x| e(&x))?;
        }
        area.present().map_err(|x| e(&x))?;
    }
    Ok(grid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use byol_data::{IdxDataset, ImageSet};

    /// Unlabelled 8×8 grey images of `pixels`, and a config for views of
    /// that size (blur kernels that fit).
    fn eight_by_eight(pixels: Vec<u8>) -> (IdxDataset, RunConfig) {
        let set = ImageSet {
            pixels,
            height: 8,
            width: 8,
            channels: 1,
        };
        let ds = IdxDataset::new(set, None, "test").expect("valid");
        let mut config = RunConfig::default();
        config.augment.size = 8;
        config.augment.view1.blur_kernel_size = 3;
        config.augment.view2.blur_kernel_size = 3;
        (ds, config)
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
        let (ds, config) = eight_by_eight(pixels);
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

    #[test]
    fn zero_rows_is_an_error_naming_the_option() {
        let (ds, config) = eight_by_eight(vec![0; 64]);
        let options = PreviewOptions {
            rows: 0,
            ..PreviewOptions::default()
        };
        let e = preview_grid(&config, &ds, options).expect_err("no rows");
        assert!(e.to_string().contains("`n`"), "{e}");
    }
}
