//! What the encoder learned, by eye: test images, each followed by its
//! nearest training images under the trained encoder and, on a second row,
//! under raw pixels.
//!
//! "Nearest" is the kNN monitor's measure: cosine similarity of the
//! features of the evaluation transform's images, the encoder in
//! evaluation mode (BatchNorm on its running statistics).

use burn::prelude::*;
use byol_augment::to_rgb8;
use byol_data::{Dataset, Split, Subset};
use byol_eval::{extract_features, pixel_features};
use byol_model::Encoder;
use byol_train::run::{check_fits, open_split};
use byol_train::{Run, RunConfig};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{PlotError, Rgb8Image, draw_err, register};

/// How many test images [`find_neighbours`] takes and how many neighbours
/// of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighboursOptions {
    /// Test images (queries), spread evenly over the test split.
    pub queries: usize,
    /// Nearest training images shown for each, under each measure.
    pub k: usize,
}

impl Default for NeighboursOptions {
    fn default() -> Self {
        Self { queries: 8, k: 8 }
    }
}

/// The queries and their nearest training images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbours {
    /// Indices of the query images in the test split.
    pub queries: Vec<usize>,
    /// For each query, the indices of its `k` nearest training images
    /// under the encoder, most similar first.
    pub encoder: Vec<Vec<usize>>,
    /// The same under raw pixels.
    pub pixels: Vec<Vec<usize>>,
}

/// How many of the neighbours shown share their query's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SameClass {
    /// Under the encoder.
    pub encoder: usize,
    /// Under raw pixels.
    pub pixels: usize,
    /// Neighbours shown under each measure.
    pub total: usize,
}

/// A neighbours picture and what it shows.
#[derive(Debug, Clone)]
pub struct NeighboursPicture {
    /// The grid.
    pub image: Rgb8Image,
    /// The queries and neighbours drawn.
    pub neighbours: Neighbours,
    /// Same-class counts; `None` when the images have no labels.
    pub same_class: Option<SameClass>,
}

/// Rows of `x` scaled to unit length.
fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// For each row of `queries`, the indices of the `k` rows of `bank` with
/// the highest cosine similarity to it, most similar first (ties in index
/// order).
///
/// # Errors
///
/// [`PlotError::Eval`] when the similarities cannot be read back.
///
/// # Panics
///
/// When `bank` and `queries` have different feature dimensions.
pub fn nearest<B: Backend>(
    bank: Tensor<B, 2>,
    queries: Tensor<B, 2>,
    k: usize,
) -> Result<Vec<Vec<usize>>, PlotError> {
    let [n_bank, _] = bank.dims();
    let k = k.min(n_bank);
    if k == 0 {
        return Ok(vec![Vec::new(); queries.dims()[0]]);
    }
    // [queries, n_bank]
    let sim = l2_normalize(queries).matmul(l2_normalize(bank).transpose());
    let sim: Vec<f32> = sim
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| byol_eval::EvalError::Data(format!("{e:?}")))?;
    Ok(sim
        .chunks_exact(n_bank)
        .map(|row| {
            let by_similarity = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            let mut idx: Vec<usize> = (0..n_bank).collect();
            if k < n_bank {
                idx.select_nth_unstable_by(k - 1, by_similarity);
                idx.truncate(k);
            }
            idx.sort_by(by_similarity);
            idx
        })
        .collect())
}

/// `options.queries` test images spread evenly over `test`, and for each
/// its `options.k` nearest images of `train` under `encoder`'s features
/// and under raw pixels, both after `config`'s evaluation transform (as
/// the kNN monitor compares them). Run it on an evaluation-mode encoder
/// (a backend without autodiff, or `model.valid()`).
///
/// # Errors
///
/// [`PlotError::InvalidOption`] for zero queries or neighbours,
/// [`PlotError::EmptyDataset`] when a split has no image,
/// [`PlotError::Eval`] when an image cannot be read or encoded.
pub fn find_neighbours<B: Backend, E: Encoder<B>>(
    config: &RunConfig,
    encoder: &E,
    train: &dyn Dataset,
    test: &dyn Dataset,
    options: NeighboursOptions,
    device: &B::Device,
) -> Result<Neighbours, PlotError> {
    for (option, value) in [("n", options.queries), ("k", options.k)] {
        if value == 0 {
            return Err(PlotError::InvalidOption {
                option: option.into(),
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
    }
    for (what, ds) in [("the train split", train), ("the test split", test)] {
        if ds.is_empty() {
            return Err(PlotError::EmptyDataset {
                what: what.into(),
                path: config.data.path.clone(),
            });
        }
    }
    let n = options.queries.min(test.len());
    let queries: Vec<usize> = (0..n).map(|i| i * test.len() / n).collect();
    let query_set = Subset::new(test, queries.clone())?;
    let transform = config.augment.eval_transform();
    let batch = config.eval.batch_size;
    let none = |_: usize| {};
    let never = || false;
    tracing::info!(
        train = train.len(),
        queries = n,
        "encoding the training images"
    );
    let bank = extract_features(encoder, train, 0, &transform, batch, device, &none)?;
    let asked = extract_features(encoder, &query_set, 0, &transform, batch, device, &none)?;
    let encoder_nn = nearest(bank, asked, options.k)?;
    let bank = pixel_features::<B>(train, 0, &transform, batch, device, &never)?;
    let asked = pixel_features::<B>(&query_set, 0, &transform, batch, device, &never)?;
    let pixel_nn = nearest(bank, asked, options.k)?;
    Ok(Neighbours {
        queries,
        encoder: encoder_nn,
        pixels: pixel_nn,
    })
}

const GAP: usize = 8;
/// Between a query and its neighbours.
const QUERY_GAP: usize = 18;
/// Between one query's two rows and the next query's.
const PAIR_GAP: usize = 20;
const LABEL_W: usize = 150;
const HEADER: usize = 34;
const FOOTER: usize = 50;
const MIN_WIDTH: usize = 720;
const FRAME: usize = 3;
const MISMATCH: [u8; 3] = [214, 39, 40];

/// Top of the query's cell: centred on its two rows.
fn query_y(top: usize, cell: usize) -> usize {
    top + (cell + GAP) / 2
}

/// Same-class counts, when every image shown has a label.
fn same_class(train: &dyn Dataset, test: &dyn Dataset, found: &Neighbours) -> Option<SameClass> {
    let mut counts = SameClass {
        encoder: 0,
        pixels: 0,
        total: 0,
    };
    for (i, &q) in found.queries.iter().enumerate() {
        let label = test.label(q)?;
        for (rows, count) in [
            (&found.encoder, &mut counts.encoder),
            (&found.pixels, &mut counts.pixels),
        ] {
            for &j in &rows[i] {
                *count += usize::from(train.label(j)? == label);
            }
        }
        counts.total += found.encoder[i].len();
    }
    Some(counts)
}

/// The grid of `found`: for each query, the test image at the left of two
/// rows, its nearest training images under the encoder on the first
/// ("encoder") and under raw pixels on the second ("raw pixels"), most
/// similar first. When the images have labels, a neighbour of another
/// class than its query has a red frame and each row says how many share
/// the query's class. Images are shown after the evaluation transform,
/// enlarged (nearest neighbour) to at least 64 pixels.
///
/// # Errors
///
/// [`PlotError::Data`] when an image cannot be read,
/// [`PlotError::Augment`] when `config.augment` does not fit the images,
/// [`PlotError::Draw`] when the text cannot be drawn.
///
/// # Panics
///
/// When `found` holds an index outside `train` or `test`, or its rows do
/// not match its queries.
pub fn neighbours_grid(
    config: &RunConfig,
    train: &dyn Dataset,
    test: &dyn Dataset,
    found: &Neighbours,
) -> Result<NeighboursPicture, PlotError> {
    assert!(
        found.encoder.len() == found.queries.len() && found.pixels.len() == found.queries.len(),
        "neighbours should have one row per query"
    );
    let a = &config.augment;
    let c = test.channels();
    a.check_channels(c)?;
    let transform = a.eval_transform();
    let size = a.size;
    let scale = 64usize.div_ceil(size).max(1);
    let cell = size * scale;
    let k = found
        .encoder
        .iter()
        .chain(&found.pixels)
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    let n = found.queries.len();
    let layout = Layout {
        cell,
        k,
        n,
        pair_h: 2 * cell + GAP + PAIR_GAP,
        neighbours_x: LABEL_W + cell + QUERY_GAP,
    };
    let (width, height) = layout.size();
    let mut grid = Rgb8Image::white(width as u32, height as u32);
    let rgb_of = |ds: &dyn Dataset, i: usize| -> Result<Vec<u8>, PlotError> {
        let image = ds.image(i)?;
        Ok(to_rgb8(
            &transform.batch(&[image.as_ref()]),
            c,
            &a.mean,
            &a.std,
        ))
    };
    let counts = same_class(train, test, found);
    for (i, &q) in found.queries.iter().enumerate() {
        let top = HEADER + i * layout.pair_h;
        // the query, centred on its two rows
        grid.blit(&rgb_of(test, q)?, size, scale, LABEL_W, query_y(top, cell));
        let label = test.label(q);
        for (r, row) in [&found.encoder[i], &found.pixels[i]]
            .into_iter()
            .enumerate()
        {
            let y0 = top + r * (cell + GAP);
            for (col, &j) in row.iter().enumerate() {
                let x0 = layout.neighbours_x + col * (cell + GAP);
                grid.blit(&rgb_of(train, j)?, size, scale, x0, y0);
                if counts.is_some() && train.label(j) != label {
                    grid.frame(x0, y0, cell, cell, FRAME, MISMATCH);
                }
            }
        }
    }
    draw_text(&mut grid, &layout, train, test, found, counts.is_some())?;
    Ok(NeighboursPicture {
        image: grid,
        neighbours: found.clone(),
        same_class: counts,
    })
}

/// Where the parts of the neighbours grid go.
struct Layout {
    /// Side of one image cell, in pixels.
    cell: usize,
    /// Neighbours per row.
    k: usize,
    /// Queries (pairs of rows).
    n: usize,
    /// Height of one query's pair of rows, with the gaps.
    pair_h: usize,
    /// Left edge of the first neighbour.
    neighbours_x: usize,
}

impl Layout {
    /// (width, height) of the whole picture.
    fn size(&self) -> (usize, usize) {
        let width = (self.neighbours_x + self.k * (self.cell + GAP) + GAP).max(MIN_WIDTH);
        (width, HEADER + self.n * self.pair_h + FOOTER)
    }
}

/// The grid's text: the header, each row's name and same-class count, each
/// query's class, the separators and the footer.
fn draw_text(
    grid: &mut Rgb8Image,
    layout: &Layout,
    train: &dyn Dataset,
    test: &dyn Dataset,
    found: &Neighbours,
    labelled: bool,
) -> Result<(), PlotError> {
    register();
    let (width, height) = layout.size();
    let Layout {
        cell,
        k,
        n,
        pair_h,
        neighbours_x,
    } = *layout;
    let e = draw_err("the neighbours grid");
    let area = BitMapBackend::with_buffer(&mut grid.pixels, (width as u32, height as u32))
        .into_drawing_area();
    let left_mid = Pos::new(HPos::Left, VPos::Center);
    let header = ("sans-serif", 17).into_font().color(&BLACK);
    let name = ("sans-serif", 17).into_font().color(&BLACK).pos(left_mid);
    let note = ("sans-serif", 13)
        .into_font()
        .color(&RGBColor(90, 90, 90))
        .pos(left_mid);
    let centre = Pos::new(HPos::Center, VPos::Top);
    area.draw(&Text::new(
        "test image",
        ((LABEL_W + cell / 2) as i32, 8),
        header.clone().pos(centre),
    ))
    .map_err(|x| e(&x))?;
    area.draw(&Text::new(
        format!("its {k} nearest training images, most similar first →"),
        (neighbours_x as i32, 8),
        header.clone(),
    ))
    .map_err(|x| e(&x))?;
    let names = test.class_names();
    for i in 0..n {
        let top = HEADER + i * pair_h;
        for (r, (title, row)) in [
            ("encoder", &found.encoder[i]),
            ("raw pixels", &found.pixels[i]),
        ]
        .into_iter()
        .enumerate()
        {
            let mid = (top + r * (cell + GAP) + cell / 2) as i32;
            if labelled {
                let label = test.label(found.queries[i]);
                let same = row.iter().filter(|&&j| train.label(j) == label).count();
                area.draw(&Text::new(title, (10, mid - 9), name.clone()))
                    .map_err(|x| e(&x))?;
                area.draw(&Text::new(
                    format!("{same}/{} same class", row.len()),
                    (10, mid + 11),
                    note.clone(),
                ))
                .map_err(|x| e(&x))?;
            } else {
                area.draw(&Text::new(title, (10, mid), name.clone()))
                    .map_err(|x| e(&x))?;
            }
        }
        // the query's class: its name where the dataset knows it
        let class = test.label(found.queries[i]).map(|l| {
            names
                .as_ref()
                .and_then(|n| n.get(l as usize).cloned())
                .unwrap_or_else(|| format!("class {l}"))
        });
        if let Some(class) = class {
            let below = (query_y(top, cell) + cell + 4) as i32;
            area.draw(&Text::new(
                class,
                ((LABEL_W + cell / 2) as i32, below),
                note.clone().pos(centre),
            ))
            .map_err(|x| e(&x))?;
        }
        if i + 1 < n {
            let y = (top + pair_h - PAIR_GAP / 2) as i32;
            area.draw(&PathElement::new(
                vec![(10, y), (width as i32 - 10, y)],
                RGBColor(200, 200, 200),
            ))
            .map_err(|x| e(&x))?;
        }
    }
    draw_footer(&area, height, labelled)?;
    area.present().map_err(|x| e(&x))
}

/// The footer's two lines: what "nearest" means and what a red frame says.
fn draw_footer(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    height: usize,
    labelled: bool,
) -> Result<(), PlotError> {
    let e = draw_err("the neighbours grid");
    let footer = ("sans-serif", 13).into_font().color(&RGBColor(60, 60, 60));
    let y = (height - FOOTER + 6) as i32;
    let lines = [
        "nearest by cosine similarity: of the trained encoder's features, and of the pixels themselves",
        if labelled {
            "red frame: a training image of another class than the test image"
        } else {
            "the images have no labels: classes are not compared"
        },
    ];
    for (l, line) in lines.into_iter().enumerate() {
        area.draw(&Text::new(line, (10, y + 20 * l as i32), footer.clone()))
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

/// The neighbours picture of a run: its trained encoder (`encoder.mpk`),
/// the training split as the images searched and the test split as the
/// queries, both as `config` describes the data (the run's config, or it
/// with another `data.path`); see [`find_neighbours`] and
/// [`neighbours_grid`]. `B` should be a backend without autodiff, so that
/// the encoder runs in evaluation mode.
///
/// # Errors
///
/// [`PlotError::Train`] naming `encoder.mpk` when the run has not finished,
/// or the data folder when a split is missing or does not fit the encoder;
/// as [`find_neighbours`] and [`neighbours_grid`].
pub fn run_neighbours<B: Backend>(
    run: &Run,
    config: &RunConfig,
    options: NeighboursOptions,
    device: &B::Device,
) -> Result<NeighboursPicture, PlotError> {
    let encoder = run.load_encoder::<B>(device)?;
    let train = open_split(config, Split::Train, 0)?;
    let test = open_split(config, Split::Test, 0)?;
    check_fits(config, &encoder, &*train)?;
    check_fits(config, &encoder, &*test)?;
    let found = find_neighbours(config, &encoder, &*train, &*test, options, device)?;
    neighbours_grid(config, &*train, &*test, &found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use byol_data::{IdxDataset, ImageSet};

    const SIDE: usize = 16;

    /// Image `i`: a bright 4×4 square at a place of its own on a dim
    /// gradient, so that every image differs from every other.
    fn pattern(i: usize) -> Vec<u8> {
        let mut px: Vec<u8> = (0..SIDE * SIDE).map(|p| (p * 7 % 50) as u8).collect();
        let (sx, sy) = (i % 4 * 4, i / 4 % 4 * 4);
        for y in 0..4 {
            for x in 0..4 {
                px[(sy + y) * SIDE + sx + x] = 200 + (i * 3 % 50) as u8;
            }
        }
        px
    }

    fn dataset(images: &[usize], labels: Option<Vec<u8>>) -> IdxDataset {
        let pixels = images.iter().flat_map(|&i| pattern(i)).collect();
        IdxDataset::new(
            ImageSet {
                pixels,
                height: SIDE,
                width: SIDE,
                channels: 1,
            },
            labels,
            "synthetic",
        )
        .expect("valid")
    }

    fn config() -> RunConfig {
        let mut config = RunConfig::default();
        config.augment.size = SIDE;
        config.augment.eval_resize = 0;
        config.augment.mean = vec![0.5];
        config.augment.std = vec![0.25];
        config.eval.batch_size = 4;
        config
    }

    #[test]
    fn nearest_orders_by_cosine_similarity_not_distance() {
        let device = Default::default();
        let bank = Tensor::<Flex, 2>::from_floats(
            [[1.0, 0.0], [0.0, 1.0], [10.0, 1.0], [1.0, 1.0]],
            &device,
        );
        let queries = Tensor::<Flex, 2>::from_floats([[2.0, 0.0], [0.0, 0.5]], &device);
        let nn = nearest(bank, queries, 3).expect("nearest");
        // a scaled copy is the nearest (cosine 1), however far it is
        assert_eq!(nn, [vec![0, 2, 3], vec![1, 3, 2]]);
    }

    #[test]
    fn duplicates_of_the_query_come_first_under_both_measures() {
        // training images 0..8, then copies of 9 and 11 (the test images)
        // twice each; test images: 9, 10, 11
        let train = dataset(&[0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 9, 11], None);
        let test = dataset(&[9, 10, 11], None);
        let config = config();
        let device = Default::default();
        let encoder = config.model.encoder_config(1).init::<Flex>(&device);
        let options = NeighboursOptions { queries: 3, k: 4 };
        let found =
            find_neighbours(&config, &encoder, &train, &test, options, &device).expect("found");
        assert_eq!(found.queries, [0, 1, 2], "spread over the test split");
        for rows in [&found.encoder, &found.pixels] {
            assert_eq!(rows[0][..2], [8, 10], "the two copies of image 9");
            assert_eq!(rows[2][..2], [9, 11], "the two copies of image 11");
            assert!(rows.iter().all(|r| r.len() == 4));
        }
    }

    #[test]
    fn queries_are_spread_over_the_test_split() {
        let train = dataset(&[0, 1, 2], None);
        let test = dataset(&(0..10).collect::<Vec<_>>(), None);
        let config = config();
        let device = Default::default();
        let encoder = config.model.encoder_config(1).init::<Flex>(&device);
        let options = NeighboursOptions { queries: 4, k: 8 };
        let found =
            find_neighbours(&config, &encoder, &train, &test, options, &device).expect("found");
        assert_eq!(found.queries, [0, 2, 5, 7]);
        assert!(found.encoder.iter().all(|r| r.len() == 3), "k is capped");
        let zero = NeighboursOptions { queries: 0, k: 8 };
        let e = find_neighbours(&config, &encoder, &train, &test, zero, &device)
            .expect_err("no queries");
        assert!(e.to_string().contains("`n`"), "{e}");
    }

    #[test]
    fn neighbours_of_another_class_get_a_red_frame() {
        let train = dataset(&[9, 1, 2], Some(vec![0, 1, 0]));
        let test = dataset(&[9], Some(vec![0]));
        let found = Neighbours {
            queries: vec![0],
            encoder: vec![vec![0, 1]],
            pixels: vec![vec![2, 1]],
        };
        let picture = neighbours_grid(&config(), &train, &test, &found).expect("grid");
        assert_eq!(
            picture.same_class,
            Some(SameClass {
                encoder: 1,
                pixels: 1,
                total: 2
            })
        );
        let img = &picture.image;
        let cell = SIDE * 4;
        assert_eq!(img.width as usize, MIN_WIDTH);
        assert_eq!(
            img.height as usize,
            HEADER + 2 * cell + GAP + PAIR_GAP + FOOTER
        );
        let px = |x: usize, y: usize| {
            let i = (y * img.width as usize + x) * 3;
            [img.pixels[i], img.pixels[i + 1], img.pixels[i + 2]]
        };
        let x0 = LABEL_W + cell + QUERY_GAP;
        let (first, second) = (x0, x0 + cell + GAP);
        // just left of each neighbour's cell, mid-height of the first row
        let y = HEADER + cell / 2;
        assert_ne!(px(first - 2, y), MISMATCH, "same class: no frame");
        assert_eq!(px(second - 2, y), MISMATCH, "another class: framed");

        // without labels nothing is framed
        let train = dataset(&[9, 1, 2], None);
        let test = dataset(&[9], None);
        let plain = neighbours_grid(&config(), &train, &test, &found).expect("grid");
        assert_eq!(plain.same_class, None);
        let img = &plain.image;
        let i = (y * img.width as usize + second - 2) * 3;
        assert_ne!(img.pixels[i..i + 3], MISMATCH);
    }
}
