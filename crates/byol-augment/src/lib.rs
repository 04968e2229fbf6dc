//! The random views of BYOL, drawn per image.
//!
//! "[...] we apply the following sequence of transformations: random
//! cropping [...], optional left-right flip, color jittering [...], color
//! dropping [...], Gaussian blurring and solarization"
//! [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.3, Table 6 and appendix B].
//!
//! Every view goes through, in torchvision's order: random resized crop
//! (bilinear, pixel-centre aligned, antialiased where a side shrinks more
//! than 2×), horizontal flip, colour jitter (its four parts in a random
//! order), grayscale, gaussian blur, solarisation, then normalisation
//! `(x - mean) / std`. Values are in `[0, 1]` until the normalisation. Probabilities and ranges are in
//! [`ViewConfig`]; [`ViewConfig::view1`] and [`ViewConfig::view2`] are the
//! paper's two views.
//!
//! Each image of a batch gets its own ChaCha8 random stream, seeded from the
//! batch seed and its index in the batch through splitmix64: two images
//! never share crop or jitter parameters, and a batch is bitwise the same
//! whatever the number of rayon threads that made it. Every view draws the
//! same random numbers whether or not an operation is applied, so changing
//! e.g. `grayscale_p` does not move the crops of a seed. Outputs are `f32`,
//! `[batch, channels, size, size]` flattened.
//!
//! **Single-channel images** (MNIST, Fashion-MNIST) are supported:
//! brightness and contrast apply, while saturation, hue and grayscale are
//! no-ops, there being no colour to change. Only 3-channel images are
//! treated as RGB.
//!
//! ```
//! use byol_augment::{AugmentConfig, two_views};
//! use byol_data::ImageRef;
//!
//! let pixels: Vec<u8> = (0..28 * 28).map(|i| (i % 251) as u8).collect();
//! let img = ImageRef { pixels: &pixels, height: 28, width: 28, channels: 1 };
//! let cfg = AugmentConfig::default();
//! cfg.validate("augment")?;
//! cfg.check_channels(img.channels)?;
//! let (v1, v2) = two_views(&[img, img], &cfg, 42);
//! assert_eq!(v1.len(), 2 * 1 * 28 * 28);
//! assert_ne!(v1, v2);
//! let eval = cfg.eval_transform().batch(&[img]);
//! assert_eq!(eval[0], (0.0 - 0.5) / 0.5);
//! # Ok::<(), byol_augment::AugmentError>(())
//! ```

mod blur;
mod color;
mod config;
mod crop;
mod simd;

pub use config::{AugmentConfig, ViewConfig};

use serde::{Deserialize, Serialize};

use byol_data::ImageRef;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use blur::BlurScratch;
use color::{Jitter, uniform};
use crop::{ResizeScratch, Window};

/// Errors of augmentation settings.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    /// A setting is out of its range.
    #[error("invalid value for `{key}`: {value} (expected {expected})")]
    InvalidConfig {
        /// Full key, e.g. `augment.view2.crop_scale`.
        key: String,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

/// Output side and normalisation.
struct Target<'a> {
    size: usize,
    mean: &'a [f32],
    std: &'a [f32],
}

/// Buffers reused from image to image within one rayon task.
#[derive(Debug, Default)]
struct Scratch {
    resize: ResizeScratch,
    blur: BlurScratch,
}

/// One random BYOL view of `img`, written to `out` as `[channels, size,
/// size]` [BYOL, Grill et al. 2020, arXiv:2006.07733, Table 6].
///
/// In order: random resized crop to `size × size`, horizontal flip, colour
/// jitter, grayscale, gaussian blur, solarisation, each with the probability
/// of `cfg`, then `(x - mean[c]) / std[c]`. `cfg` should have passed
/// [`ViewConfig::validate`]. Every call draws the same random numbers
/// whatever is applied, except that the crop takes up to 10 tries.
///
/// # Panics
///
/// When `img` is empty or its pixels are not `height × width × channels`
/// long, when `out` is not `channels × size × size` long, or when `mean`
/// or `std` hold neither 1 nor `channels` values (check with
/// [`AugmentConfig::check_channels`]).
pub fn augment_view(
    img: ImageRef<'_>,
    cfg: &ViewConfig,
    size: usize,
    mean: &[f32],
    std: &[f32],
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    let target = Target { size, mean, std };
    augment_into(img, cfg, &target, rng, out, &mut Scratch::default());
}

fn augment_into(
    img: ImageRef<'_>,
    cfg: &ViewConfig,
    target: &Target<'_>,
    rng: &mut impl Rng,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    check_inputs(img, target, out);
    let draw = ViewDraw::new(rng, cfg, img.height, img.width);
    simd::dispatch(Render {
        img,
        draw: &draw,
        cfg,
        target,
        out,
        scratch,
    });
}

/// The random parameters of one view of a `height × width` image, drawn
/// in a fixed order, whatever is applied.
#[derive(Debug, Clone)]
struct ViewDraw {
    window: Window,
    flip: bool,
    jitter_on: bool,
    jitter: Jitter,
    gray: bool,
    blur_on: bool,
    sigma: f32,
    solarize: bool,
}

impl ViewDraw {
    fn new(rng: &mut impl Rng, cfg: &ViewConfig, height: usize, width: usize) -> Self {
        let window = crop::random_crop_window(rng, height, width, cfg.crop_scale, cfg.crop_ratio);
        Self {
            window,
            flip: coin(rng, cfg.flip_p),
            jitter_on: coin(rng, cfg.jitter_p),
            jitter: Jitter::draw(rng, cfg),
            gray: coin(rng, cfg.grayscale_p),
            blur_on: coin(rng, cfg.blur_p),
            sigma: uniform(rng, cfg.blur_sigma[0], cfg.blur_sigma[1]),
            solarize: coin(rng, cfg.solarize_p),
        }
    }
}

/// Making one view from its draw, as a [`simd::Kernel`].
struct Render<'a, 'i> {
    img: ImageRef<'i>,
    draw: &'a ViewDraw,
    cfg: &'a ViewConfig,
    target: &'a Target<'a>,
    out: &'a mut [f32],
    scratch: &'a mut Scratch,
}

impl simd::Kernel for Render<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            img,
            draw,
            cfg,
            target,
            out,
            scratch,
        } = self;
        let (size, c) = (target.size, img.channels);
        crop::resize_window(img, draw.window, size, draw.flip, &mut scratch.resize, out);
        if draw.jitter_on {
            draw.jitter.apply(out, c);
        }
        if draw.gray {
            color::to_grayscale(out, c);
        }
        if draw.blur_on {
            let k = blur::kernel_size(cfg.blur_kernel_size, size);
            blur::blur(out, size, size, draw.sigma, k, &mut scratch.blur);
        }
        if draw.solarize {
            color::solarize(out, cfg.solarize_threshold);
        }
        normalise(out, c, target.mean, target.std);
    }
}

/// True with probability `p` (never for 0, always for 1); draws one number.
fn coin(rng: &mut impl Rng, p: f32) -> bool {
    rng.random::<f32>() < p
}

fn check_inputs(img: ImageRef<'_>, target: &Target<'_>, out: &[f32]) {
    let c = img.channels;
    assert!(
        img.height > 0 && img.width > 0 && c > 0,
        "the image should have rows, columns and channels"
    );
    assert_eq!(
        img.pixels.len(),
        img.height * img.width * c,
        "the image should hold height × width × channels bytes"
    );
    assert_eq!(
        out.len(),
        c * target.size * target.size,
        "the output should hold channels × size × size values"
    );
    for list in [target.mean, target.std] {
        assert!(
            list.len() == 1 || list.len() == c,
            "mean and std should hold 1 value or one per channel ({c}), not {}",
            list.len()
        );
    }
}

/// `(x - mean[c]) / std[c]` on every plane; one-value lists broadcast.
#[inline(always)]
fn normalise(data: &mut [f32], channels: usize, mean: &[f32], std: &[f32]) {
    let plane = data.len() / channels;
    if plane == 0 {
        return;
    }
    for (c, values) in data.chunks_exact_mut(plane).enumerate() {
        let m = mean[if mean.len() == 1 { 0 } else { c }];
        let s = std[if std.len() == 1 { 0 } else { c }];
        for v in values {
            *v = (*v - m) / s;
        }
    }
}

/// Back to pixels: a normalised `[channels, size, size]` image (a view or
/// the evaluation transform's output) as `size × size` RGB bytes in HWC
/// order, `x · std[c] + mean[c]` clamped to [0, 1] and rounded to 0..=255;
/// a single channel is repeated into gray. For looking at the views.
///
/// # Panics
///
/// When `channels` is neither 1 nor 3, `values` is not `channels` square
/// planes, or `mean`/`std` hold neither 1 nor `channels` values.
pub fn to_rgb8(values: &[f32], channels: usize, mean: &[f32], std: &[f32]) -> Vec<u8> {
    assert!(
        channels == 1 || channels == 3,
        "images should have 1 or 3 channels"
    );
    let plane = values.len() / channels;
    assert_eq!(
        plane * channels,
        values.len(),
        "values should be whole planes"
    );
    for list in [mean, std] {
        assert!(
            list.len() == 1 || list.len() == channels,
            "mean and std should hold 1 value or one per channel"
        );
    }
    let byte = |c: usize, i: usize| {
        let m = mean[if mean.len() == 1 { 0 } else { c }];
        let s = std[if std.len() == 1 { 0 } else { c }];
        ((values[c * plane + i] * s + m).clamp(0.0, 1.0) * 255.0).round() as u8
    };
    (0..plane)
        .flat_map(|i| {
            let (r, g, b) = if channels == 1 {
                let v = byte(0, i);
                (v, v, v)
            } else {
                (byte(0, i), byte(1, i), byte(2, i))
            };
            [r, g, b]
        })
        .collect()
}

/// splitmix64's increment, ⌊2⁶⁴/φ⌋ (the golden ratio).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The first multiplier of splitmix64's finaliser, also the weight of the
/// second index in [`mix_seed`].
const MIX_MUL_1: u64 = 0xBF58_476D_1CE4_E5B9;

/// splitmix64's finaliser (Stafford's "Mix13"): a bijection of `u64` that
/// spreads nearby inputs apart.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(MIX_MUL_1);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The output of splitmix64 [Steele, Lea & Flood 2014; Vigna's
/// `splitmix64.c`] from the state `x`: `x` advanced by the golden-ratio
/// increment, then finalised. A bijection of `u64` that spreads nearby
/// inputs apart; the one seed hash of the workspace (see also [`mix_seed`]).
///
/// ```
/// // the first output of Vigna's generator seeded with 0
/// assert_eq!(byol_augment::splitmix64(0), 0xE220_A839_7B1D_CDAF);
/// ```
pub fn splitmix64(x: u64) -> u64 {
    finalize(x.wrapping_add(GOLDEN_GAMMA))
}

/// An independent seed for the pair of indices `(a, b)` under `seed`, e.g.
/// (epoch, step): splitmix64's finaliser of `seed ^ a·γ ^ b·m`, with γ the
/// golden-ratio increment and m the finaliser's first multiplier (both
/// products wrapping). For a fixed `seed` and `b`, distinct `a` give
/// distinct seeds, and likewise for `b`.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    finalize(seed ^ a.wrapping_mul(GOLDEN_GAMMA) ^ b.wrapping_mul(MIX_MUL_1))
}

/// Seed of image `index` of a batch drawn with `seed`; distinct indices give
/// distinct seeds (a bijection of the index for a fixed batch seed).
fn image_seed(seed: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ index)
}

/// Batch seeds of the two views of [`two_views`], in their own domain.
fn view_seeds(seed: u64) -> (u64, u64) {
    const VIEWS: u64 = 0x5649_4557_535f_4259; // "VIEWS_BY"
    let base = splitmix64(seed ^ VIEWS);
    (splitmix64(base ^ 1), splitmix64(base ^ 2))
}

/// One random view of every image, `[batch, channels, size, size]`
/// flattened, made in parallel with rayon. Image `i` draws from its own
/// ChaCha8 stream seeded from `(seed, i)`, so the result depends on `seed`
/// and the images only, never on the thread count. Images may differ in
/// size but not in channel count.
///
/// See [`augment_view`]; [BYOL, Grill et al. 2020, arXiv:2006.07733,
/// Table 6].
///
/// # Panics
///
/// When the images differ in channel count, or as [`augment_view`].
pub fn augment_batch(
    images: &[ImageRef<'_>],
    cfg: &ViewConfig,
    size: usize,
    mean: &[f32],
    std: &[f32],
    seed: u64,
) -> Vec<f32> {
    let Some(first) = images.first() else {
        return Vec::new();
    };
    let per_image = first.channels * size * size;
    let mut out = vec![0f32; images.len() * per_image];
    if per_image == 0 {
        return out;
    }
    let target = Target { size, mean, std };
    out.par_chunks_mut(per_image)
        .zip(images.par_iter())
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (i, (dst, img))| {
            let mut rng = ChaCha8Rng::seed_from_u64(image_seed(seed, i as u64));
            augment_into(*img, cfg, &target, &mut rng, dst, scratch);
        });
    out
}

/// The two BYOL views of a batch, `(view1, view2)`, each
/// `[batch, channels, size, size]`: [`augment_batch`] with `cfg.view1` and
/// `cfg.view2` and two seeds derived from `seed`
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.3]. Both views of an
/// image are made by the same rayon task, one after the other.
///
/// # Panics
///
/// As [`augment_batch`]; run [`AugmentConfig::validate`] and
/// [`AugmentConfig::check_channels`] first.
pub fn two_views(images: &[ImageRef<'_>], cfg: &AugmentConfig, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let Some(first) = images.first() else {
        return (Vec::new(), Vec::new());
    };
    let per_image = first.channels * cfg.size * cfg.size;
    let mut view1 = vec![0f32; images.len() * per_image];
    let mut view2 = vec![0f32; images.len() * per_image];
    if per_image == 0 {
        return (view1, view2);
    }
    let seeds = view_seeds(seed);
    view1
        .par_chunks_mut(per_image)
        .zip(view2.par_chunks_mut(per_image))
        .zip(images.par_iter())
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (i, ((out1, out2), img))| {
            both_views(*img, cfg, seeds, i, out1, out2, scratch);
        });
    (view1, view2)
}

/// Both views of image `i` of a batch whose view seeds are `seeds`, into
/// `out1` and `out2`: what [`two_views`] makes of it.
fn both_views(
    img: ImageRef<'_>,
    cfg: &AugmentConfig,
    seeds: (u64, u64),
    i: usize,
    out1: &mut [f32],
    out2: &mut [f32],
    scratch: &mut Scratch,
) {
    let target = Target {
        size: cfg.size,
        mean: &cfg.mean,
        std: &cfg.std,
    };
    for (view, seed, out) in [(&cfg.view1, seeds.0, out1), (&cfg.view2, seeds.1, out2)] {
        let mut rng = ChaCha8Rng::seed_from_u64(image_seed(seed, i as u64));
        augment_into(img, view, &target, &mut rng, out, scratch);
    }
}

/// The views of [`two_views_with`], and the images that could not be had.
#[derive(Debug)]
pub struct LoadedViews<E> {
    /// First views, `[count, channels, size, size]`; zeros where an image
    /// failed.
    pub view1: Vec<f32>,
    /// Second views, likewise.
    pub view2: Vec<f32>,
    /// `(index, error)` of every image `load` failed on, in index order.
    pub failed: Vec<(usize, E)>,
}

/// [`two_views`] of `count` images that `load(i)` decodes on the fly: each
/// rayon task decodes one image and makes both its views at once, so that
/// decoding and augmenting overlap across the batch (no phase waits for
/// the slowest decode) and only one decoded image per thread exists at a
/// time, hot in cache when it is read. Where every image loads, the views
/// are bitwise those of [`two_views`] over the decoded images; an image
/// that fails leaves zeros and its error in [`LoadedViews::failed`] (its
/// neighbours keep their seeds, those of their index).
///
/// # Panics
///
/// When a loaded image has not `channels` channels, or as [`two_views`].
pub fn two_views_with<E, F>(
    count: usize,
    channels: usize,
    cfg: &AugmentConfig,
    seed: u64,
    load: F,
) -> LoadedViews<E>
where
    E: Send,
    F: Fn(usize) -> Result<byol_data::Image, E> + Sync,
{
    let per_image = channels * cfg.size * cfg.size;
    let mut view1 = vec![0f32; count * per_image];
    let mut view2 = vec![0f32; count * per_image];
    if per_image == 0 {
        return LoadedViews {
            view1,
            view2,
            failed: Vec::new(),
        };
    }
    let seeds = view_seeds(seed);
    let failed = view1
        .par_chunks_mut(per_image)
        .zip(view2.par_chunks_mut(per_image))
        .enumerate()
        .map_init(Scratch::default, |scratch, (i, (out1, out2))| {
            let img = load(i).map_err(|e| (i, e))?;
            both_views(img.as_ref(), cfg, seeds, i, out1, out2, scratch);
            Ok(())
        })
        .filter_map(Result::err)
        .collect();
    LoadedViews {
        view1,
        view2,
        failed,
    }
}

/// [`EvalTransform::apply`] as a [`simd::Kernel`].
struct EvalRender<'a, 'i> {
    transform: &'a EvalTransform,
    img: ImageRef<'i>,
    out: &'a mut [f32],
    scratch: &'a mut ResizeScratch,
}

impl simd::Kernel for EvalRender<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        self.transform.apply_body(self.img, self.out, self.scratch);
    }
}

/// The deterministic evaluation transform, as torchvision's
/// `Resize(resize) → CenterCrop(size) → Normalize`: the centred square
/// that a resize of the shorter side to `resize` followed by a
/// `size × size` centre crop would keep is taken from the source and
/// resized bilinearly to `size × size` in one step, then normalised as
/// `(x − mean[c]) / std[c]`. `resize = 0` means `resize = size` (the
/// largest centred square). An image that already is `size × size` with
/// `resize` 0 or `size` keeps its exact pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalTransform {
    /// Output side in pixels.
    pub size: usize,
    /// Side the shorter image side is resized to before the centre crop;
    /// 0 = `size`.
    pub resize: usize,
    /// Per-channel mean (one value broadcasts).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (one value broadcasts).
    pub std: Vec<f32>,
}

impl EvalTransform {
    /// The source window kept from an `height × width` image.
    fn window(&self, height: usize, width: usize) -> Window {
        let resize = if self.resize == 0 {
            self.size
        } else {
            self.resize
        };
        let short = height.min(width) as f64;
        let side = ((short * self.size as f64 / resize as f64).round() as usize)
            .clamp(1, height.min(width));
        Window {
            top: (height - side) / 2,
            left: (width - side) / 2,
            height: side,
            width: side,
        }
    }

    /// Writes the transformed `img` to `out` as `[channels, size, size]`.
    ///
    /// # Panics
    ///
    /// As [`augment_view`].
    pub fn apply(&self, img: ImageRef<'_>, out: &mut [f32]) {
        self.apply_into(img, out, &mut ResizeScratch::default());
    }

    fn apply_into(&self, img: ImageRef<'_>, out: &mut [f32], scratch: &mut ResizeScratch) {
        simd::dispatch(EvalRender {
            transform: self,
            img,
            out,
            scratch,
        });
    }

    #[inline(always)]
    fn apply_body(&self, img: ImageRef<'_>, out: &mut [f32], scratch: &mut ResizeScratch) {
        let target = Target {
            size: self.size,
            mean: &self.mean,
            std: &self.std,
        };
        check_inputs(img, &target, out);
        let (size, c) = (self.size, img.channels);
        let window = self.window(img.height, img.width);
        if window == Window::full(size, size) && img.height == size && img.width == size {
            let plane = size * size;
            for (i, px) in img.pixels.chunks_exact(c).enumerate() {
                for (ch, &v) in px.iter().enumerate() {
                    out[ch * plane + i] = f32::from(v) / 255.0;
                }
            }
        } else {
            crop::resize_window(img, window, size, false, scratch, out);
        }
        normalise(out, c, &self.mean, &self.std);
    }

    /// The transform of every image, `[batch, channels, size, size]`
    /// flattened, in parallel with rayon. Images may differ in size.
    ///
    /// # Panics
    ///
    /// When the images differ in channel count, or as [`augment_view`].
    pub fn batch(&self, images: &[ImageRef<'_>]) -> Vec<f32> {
        let Some(first) = images.first() else {
            return Vec::new();
        };
        let per_image = first.channels * self.size * self.size;
        let mut out = vec![0f32; images.len() * per_image];
        if per_image == 0 {
            return out;
        }
        out.par_chunks_mut(per_image)
            .zip(images.par_iter())
            .for_each_init(ResizeScratch::default, |scratch, (dst, img)| {
                self.apply_into(*img, dst, scratch)
            });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_seed_keeps_the_loaders_values() {
        // the loader's seeds of (seed, epoch, step + 1) before the helper
        // moved here, so that runs draw the batches they drew before
        assert_eq!(mix_seed(42, 1, 0), 0xBDD7_3226_2FEB_6E95);
        assert_eq!(mix_seed(42, 3, 8), 0x006A_A0D0_35B5_195C);
        assert_eq!(mix_seed(7, 0, 1), 0x5905_16E8_1868_EDF1);
        assert_ne!(mix_seed(42, 1, 2), mix_seed(42, 2, 1));
    }

    /// A deterministic test image with structure in every channel.
    fn pattern(h: usize, w: usize, c: usize) -> Vec<u8> {
        (0..h * w * c)
            .map(|i| ((i * 37 + (i / (w * c)) * 11) % 256) as u8)
            .collect()
    }

    fn img(p: &[u8], h: usize, w: usize, c: usize) -> ImageRef<'_> {
        ImageRef {
            pixels: p,
            height: h,
            width: w,
            channels: c,
        }
    }

    /// Everything off and a crop of the whole (square) image.
    fn identity() -> ViewConfig {
        ViewConfig {
            crop_scale: [1.0, 1.0],
            crop_ratio: [1.0, 1.0],
            flip_p: 0.0,
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            solarize_p: 0.0,
            ..ViewConfig::view1()
        }
    }

    /// Everything on, with wide ranges.
    fn everything() -> ViewConfig {
        ViewConfig {
            flip_p: 1.0,
            jitter_p: 1.0,
            brightness: 2.0,
            contrast: 2.0,
            saturation: 2.0,
            hue: 0.5,
            grayscale_p: 0.5,
            blur_p: 1.0,
            solarize_p: 1.0,
            solarize_threshold: 0.3,
            ..ViewConfig::view1()
        }
    }

    fn ev(size: usize, resize: usize, mean: &[f32], std: &[f32]) -> EvalTransform {
        EvalTransform {
            size,
            resize,
            mean: mean.to_vec(),
            std: std.to_vec(),
        }
    }

    #[test]
    fn eval_transform_centre_crops_like_resize_then_centre_crop() {
        // a 20 × 40 image: the centred 20 × 20 square is kept (resize 0);
        // its left edge is column 10
        let p: Vec<u8> = (0..20 * 40).map(|i| (i % 40) as u8).collect();
        let mut out = vec![0f32; 20 * 20];
        ev(20, 0, &[0.0], &[1.0]).apply(img(&p, 20, 40, 1), &mut out);
        assert_eq!(out[0], 10.0 / 255.0);
        assert_eq!(out[19], 29.0 / 255.0);
        // resize 40 before a centre crop of 20: the central 10 × 10 source
        // square (columns 15..25) stretched to 20
        let mut out = vec![0f32; 20 * 20];
        ev(20, 40, &[0.0], &[1.0]).apply(img(&p, 20, 40, 1), &mut out);
        let first = out[0] * 255.0;
        let last = out[19] * 255.0;
        assert!(
            (15.0..=15.5).contains(&first) && (23.5..=24.0).contains(&last),
            "{first} {last}"
        );
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn unit(p: &[u8]) -> Vec<f32> {
        p.iter().map(|&v| f32::from(v) / 255.0).collect()
    }

    /// HWC bytes as CHW values in [0, 1].
    fn planar(p: &[u8], c: usize) -> Vec<f32> {
        (0..c)
            .flat_map(|ch| unit(p).into_iter().skip(ch).step_by(c))
            .collect()
    }

    #[test]
    fn to_rgb8_undoes_the_evaluation_transform() {
        for c in [1, 3] {
            let p = pattern(28, 28, c);
            let (mean, std) = ([0.3, 0.4, 0.5], [0.2, 0.25, 0.3]);
            let t = ev(28, 0, &mean[..c], &std[..c]);
            let normalised = t.batch(&[img(&p, 28, 28, c)]);
            let rgb = to_rgb8(&normalised, c, &mean[..c], &std[..c]);
            let expected: Vec<u8> = if c == 3 {
                p.clone()
            } else {
                p.iter().flat_map(|&v| [v, v, v]).collect()
            };
            assert_eq!(rgb, expected, "{c} channels");
        }
        // values beyond the pixel range are clamped
        assert_eq!(
            to_rgb8(&[-9.0, 9.0], 1, &[0.5], &[0.5]),
            vec![0, 0, 0, 255, 255, 255]
        );
    }

    #[test]
    fn output_shape_is_batch_channels_size_size() {
        for c in [1, 3] {
            for (h, w, size) in [(28, 28, 28), (28, 28, 32), (28, 28, 16), (20, 30, 28)] {
                let p = pattern(h, w, c);
                let refs = [img(&p, h, w, c); 3];
                let expected = 3 * c * size * size;
                for view in [ViewConfig::view1(), ViewConfig::view2(), everything()] {
                    let out = augment_batch(&refs, &view, size, &[0.5], &[0.5], 1);
                    assert_eq!(out.len(), expected, "{c} channels, {h}×{w} → {size}");
                    assert!(out.iter().all(|v| v.is_finite()));
                }
                assert_eq!(ev(size, 0, &[0.5], &[0.5]).batch(&refs).len(), expected);
                let cfg = AugmentConfig {
                    size,
                    ..AugmentConfig::default()
                };
                let (v1, v2) = two_views(&refs, &cfg, 0);
                assert_eq!((v1.len(), v2.len()), (expected, expected));
            }
        }
        assert!(augment_batch(&[], &ViewConfig::view1(), 28, &[0.5], &[0.5], 0).is_empty());
        assert!(ev(28, 0, &[0.5], &[0.5]).batch(&[]).is_empty());
    }

    #[test]
    fn images_of_different_sizes_share_a_batch() {
        let (a, b) = (pattern(28, 28, 1), pattern(40, 17, 1));
        let refs = [img(&a, 28, 28, 1), img(&b, 40, 17, 1)];
        assert_eq!(
            augment_batch(&refs, &everything(), 24, &[0.0], &[1.0], 5).len(),
            2 * 24 * 24
        );
    }

    #[test]
    fn values_stay_in_unit_range_with_mean_0_and_std_1() {
        for c in [1, 3] {
            let p = pattern(28, 28, c);
            let refs = [img(&p, 28, 28, c); 8];
            for seed in 0..40 {
                for view in [ViewConfig::view1(), ViewConfig::view2(), everything()] {
                    let out = augment_batch(&refs, &view, 28, &[0.0], &[1.0], seed);
                    let bad = out.iter().find(|v| !(0.0..=1.0).contains(*v));
                    assert!(bad.is_none(), "seed {seed}, {c} channels: {bad:?}");
                }
            }
        }
    }

    #[test]
    fn same_seed_gives_a_bitwise_identical_batch_and_another_seed_does_not() {
        let p = pattern(28, 28, 3);
        let refs = [img(&p, 28, 28, 3); 4];
        let cfg = AugmentConfig::default();
        let (a1, a2) = two_views(&refs, &cfg, 5);
        let (b1, b2) = two_views(&refs, &cfg, 5);
        assert_eq!((bits(&a1), bits(&a2)), (bits(&b1), bits(&b2)));
        let (c1, c2) = two_views(&refs, &cfg, 6);
        assert_ne!(bits(&a1), bits(&c1));
        assert_ne!(bits(&a2), bits(&c2));
        let view = ViewConfig::view1();
        let x = augment_batch(&refs, &view, 28, &[0.5], &[0.5], 11);
        let y = augment_batch(&refs, &view, 28, &[0.5], &[0.5], 11);
        let z = augment_batch(&refs, &view, 28, &[0.5], &[0.5], 12);
        assert_eq!(bits(&x), bits(&y));
        assert_ne!(bits(&x), bits(&z));
    }

    #[test]
    fn eight_copies_of_one_image_get_eight_different_views() {
        for c in [1, 3] {
            let p = pattern(28, 28, c);
            let refs = [img(&p, 28, 28, c); 8];
            for view in [ViewConfig::view1(), ViewConfig::view2()] {
                let out = augment_batch(&refs, &view, 28, &[0.5], &[0.5], 3);
                let views: Vec<&[f32]> = out.chunks_exact(c * 28 * 28).collect();
                for i in 0..views.len() {
                    for j in i + 1..views.len() {
                        assert_ne!(views[i], views[j], "views {i} and {j} are identical");
                    }
                }
            }
        }
    }

    #[test]
    fn per_image_seeds_are_distinct_and_views_use_other_seeds() {
        let mut seeds: Vec<u64> = (0..10_000).map(|i| image_seed(7, i)).collect();
        let (s1, s2) = view_seeds(7);
        seeds.extend([s1, s2]);
        seeds.sort_unstable();
        seeds.dedup();
        assert_eq!(seeds.len(), 10_002);
    }

    #[test]
    fn thread_count_does_not_change_the_result() {
        let p = pattern(28, 28, 3);
        let refs = [img(&p, 28, 28, 3); 33];
        let cfg = AugmentConfig::default();
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a thread pool should build")
                .install(|| {
                    let (v1, v2) = two_views(&refs, &cfg, 9);
                    let e = ev(32, 0, &[0.5], &[0.5]).batch(&refs);
                    (bits(&v1), bits(&v2), bits(&e))
                })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }

    #[test]
    fn two_views_are_batches_of_view1_and_view2_with_their_own_seeds() {
        let p = pattern(28, 28, 1);
        let refs = [img(&p, 28, 28, 1); 4];
        let cfg = AugmentConfig::default();
        let (v1, v2) = two_views(&refs, &cfg, 21);
        let (s1, s2) = view_seeds(21);
        assert_eq!(
            v1,
            augment_batch(&refs, &cfg.view1, 28, &cfg.mean, &cfg.std, s1)
        );
        assert_eq!(
            v2,
            augment_batch(&refs, &cfg.view2, 28, &cfg.mean, &cfg.std, s2)
        );
        assert_ne!(v1, v2);
    }

    #[test]
    fn every_probability_zero_with_a_full_crop_is_the_identity_up_to_normalisation() {
        for c in [1, 3] {
            let p = pattern(28, 28, c);
            let refs = [img(&p, 28, 28, c); 2];
            let expected = planar(&p, c);
            for seed in 0..5 {
                let out = augment_batch(&refs, &identity(), 28, &[0.0], &[1.0], seed);
                assert_eq!(&out[..expected.len()], expected.as_slice());
                assert_eq!(&out[expected.len()..], expected.as_slice());
            }
            let out = augment_batch(&refs[..1], &identity(), 28, &[0.25], &[0.5], 0);
            let norm: Vec<f32> = expected.iter().map(|v| (v - 0.25) / 0.5).collect();
            assert_eq!(out, norm);
        }
    }

    #[test]
    fn flip_p_one_mirrors_the_image_exactly() {
        let p = pattern(28, 28, 3);
        let plain = planar(&p, 3);
        let cfg = ViewConfig {
            flip_p: 1.0,
            ..identity()
        };
        let out = augment_batch(&[img(&p, 28, 28, 3)], &cfg, 28, &[0.0], &[1.0], 0);
        for c in 0..3 {
            for y in 0..28 {
                for x in 0..28 {
                    let i = c * 784 + y * 28;
                    assert_eq!(out[i + x], plain[i + 27 - x], "({c}, {y}, {x})");
                }
            }
        }
    }

    #[test]
    fn solarize_p_one_inverts_values_at_or_above_the_threshold_only() {
        let p: Vec<u8> = vec![0, 64, 127, 128, 191, 255];
        let cfg = ViewConfig {
            solarize_p: 1.0,
            crop_ratio: [1.5, 1.5],
            ..identity()
        };
        let out = augment_batch(&[img(&p, 2, 3, 1)], &cfg, 2, &[0.0], &[1.0], 0);
        assert_eq!(out.len(), 4);
        // the 2×3 image cropped whole (ratio 1.5) and resized to 2×2 mixes
        // pixels: compare with solarising the unsolarised view
        let plain = augment_batch(
            &[img(&p, 2, 3, 1)],
            &ViewConfig {
                solarize_p: 0.0,
                ..cfg.clone()
            },
            2,
            &[0.0],
            &[1.0],
            0,
        );
        for (s, v) in out.iter().zip(&plain) {
            let expected = if *v >= 0.5 { 1.0 - v } else { *v };
            assert_eq!(*s, expected);
        }
        assert!(plain.iter().any(|v| *v >= 0.5) && plain.iter().any(|v| *v < 0.5));
        // and on a square image, pixel by pixel
        let out = augment_batch(
            &[img(&p[..4], 2, 2, 1)],
            &ViewConfig {
                solarize_p: 1.0,
                ..identity()
            },
            2,
            &[0.0],
            &[1.0],
            0,
        );
        let expected = [0.0, 64.0 / 255.0, 127.0 / 255.0, 1.0 - 128.0 / 255.0];
        assert_eq!(out, expected);
    }

    #[test]
    fn grayscale_p_one_makes_the_three_channels_equal() {
        let p = pattern(8, 8, 3);
        let plain = planar(&p, 3);
        assert_ne!(
            plain[..64],
            plain[64..128],
            "the test image should have colour"
        );
        let cfg = ViewConfig {
            grayscale_p: 1.0,
            ..identity()
        };
        let out = augment_batch(&[img(&p, 8, 8, 3)], &cfg, 8, &[0.0], &[1.0], 0);
        assert_eq!(out[..64], out[64..128]);
        assert_eq!(out[64..128], out[128..]);
        let l = 0.299 * plain[0] + 0.587 * plain[64] + 0.114 * plain[128];
        assert!((out[0] - l).abs() < 1e-6);
    }

    #[test]
    fn blur_p_one_smooths_a_checkerboard_and_keeps_a_constant_image() {
        let board: Vec<u8> = (0..16 * 16)
            .map(|i| if (i % 16 + i / 16) % 2 == 0 { 0 } else { 255 })
            .collect();
        let cfg = ViewConfig {
            blur_p: 1.0,
            blur_sigma: [0.5, 2.0],
            ..identity()
        };
        let var = |v: &[f32]| {
            let m = v.iter().sum::<f32>() / v.len() as f32;
            v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32
        };
        let raw = augment_batch(
            &[img(&board, 16, 16, 1)],
            &identity(),
            16,
            &[0.0],
            &[1.0],
            0,
        );
        for seed in 0..5 {
            let blurred = augment_batch(&[img(&board, 16, 16, 1)], &cfg, 16, &[0.0], &[1.0], seed);
            assert!(
                var(&blurred) < 0.5 * var(&raw),
                "{} vs {}",
                var(&blurred),
                var(&raw)
            );
        }
        let flat = vec![100u8; 16 * 16 * 3];
        for seed in 0..5 {
            let out = augment_batch(&[img(&flat, 16, 16, 3)], &cfg, 16, &[0.0], &[1.0], seed);
            assert!(out.iter().all(|v| (v - 100.0 / 255.0).abs() < 1e-5));
        }
    }

    #[test]
    fn one_channel_ignores_saturation_hue_and_grayscale_but_not_brightness() {
        let p = pattern(28, 28, 1);
        let refs = [img(&p, 28, 28, 1); 4];
        let colour_only = ViewConfig {
            jitter_p: 1.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 1.0,
            hue: 0.5,
            grayscale_p: 1.0,
            ..identity()
        };
        let plain = augment_batch(&refs, &identity(), 28, &[0.0], &[1.0], 4);
        assert_eq!(
            augment_batch(&refs, &colour_only, 28, &[0.0], &[1.0], 4),
            plain
        );
        let bright = ViewConfig {
            brightness: 0.4,
            ..colour_only
        };
        assert_ne!(augment_batch(&refs, &bright, 28, &[0.0], &[1.0], 4), plain);
        // on RGB the colour parts do act
        let p3 = pattern(28, 28, 3);
        let refs3 = [img(&p3, 28, 28, 3); 4];
        let plain3 = augment_batch(&refs3, &identity(), 28, &[0.0], &[1.0], 4);
        let colour_only = ViewConfig {
            grayscale_p: 0.0,
            ..bright
        };
        assert_ne!(
            augment_batch(&refs3, &colour_only, 28, &[0.0], &[1.0], 4),
            plain3
        );
    }

    #[test]
    fn applying_an_operation_or_not_leaves_the_random_stream_in_step() {
        // neutral jitter and grayscale on one channel change nothing, so
        // crops and flips must be the same whether they are "applied" or not
        let p = pattern(28, 28, 1);
        let refs = [img(&p, 28, 28, 1); 8];
        let base = ViewConfig {
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            solarize_p: 0.0,
            ..ViewConfig::view1()
        };
        let toggled = ViewConfig {
            jitter_p: 1.0,
            brightness: 0.0,
            contrast: 0.0,
            grayscale_p: 1.0,
            ..base.clone()
        };
        let a = augment_batch(&refs, &base, 28, &[0.0], &[1.0], 2);
        assert_eq!(a, augment_batch(&refs, &toggled, 28, &[0.0], &[1.0], 2));
    }

    #[test]
    fn a_gray_rgb_image_gets_the_same_views_as_its_one_channel_version() {
        // same random numbers whatever the channel count: the colour parts
        // change nothing on gray pixels, so every channel matches
        let gray = pattern(28, 28, 1);
        let rgb: Vec<u8> = gray.iter().flat_map(|&v| [v, v, v]).collect();
        for view in [ViewConfig::view1(), ViewConfig::view2()] {
            let one = augment_batch(&[img(&gray, 28, 28, 1); 16], &view, 28, &[0.0], &[1.0], 8);
            let three = augment_batch(&[img(&rgb, 28, 28, 3); 16], &view, 28, &[0.0], &[1.0], 8);
            for (i, plane) in three.chunks_exact(784).enumerate() {
                let (image, expected) = (i / 3, &one[(i / 3) * 784..(i / 3 + 1) * 784]);
                let worst = plane
                    .iter()
                    .zip(expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-4, "image {image}, channel {}: {worst}", i % 3);
            }
        }
    }

    #[test]
    fn eval_transform_is_exact_at_the_same_size_and_normalises_per_channel() {
        let p = pattern(4, 4, 3);
        let mut out = vec![0f32; 3 * 16];
        let (mean, std) = ([0.1, 0.2, 0.3], [0.5, 0.25, 2.0]);
        ev(4, 0, &mean, &std).apply(img(&p, 4, 4, 3), &mut out);
        let plain = planar(&p, 3);
        for (i, (o, v)) in out.iter().zip(&plain).enumerate() {
            assert_eq!(*o, (v - mean[i / 16]) / std[i / 16], "{i}");
        }
        // resized: the same as a full-window bilinear crop of the view pipeline
        let q = pattern(28, 28, 1);
        let mut resized = vec![0f32; 32 * 32];
        ev(32, 0, &[0.0], &[1.0]).apply(img(&q, 28, 28, 1), &mut resized);
        let view = augment_batch(&[img(&q, 28, 28, 1)], &identity(), 32, &[0.0], &[1.0], 0);
        assert_eq!(resized, view);
        let batch = ev(32, 0, &[0.0], &[1.0]).batch(&[img(&q, 28, 28, 1); 2]);
        assert_eq!(batch[..1024], resized[..]);
        assert_eq!(batch[1024..], resized[..]);
    }

    #[test]
    #[should_panic(expected = "channels × size × size")]
    fn a_wrongly_sized_output_panics() {
        let p = pattern(28, 28, 1);
        let mut out = vec![0f32; 10];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        augment_view(
            img(&p, 28, 28, 1),
            &ViewConfig::view1(),
            28,
            &[0.5],
            &[0.5],
            &mut rng,
            &mut out,
        );
    }

    #[test]
    #[should_panic(expected = "one per channel")]
    fn mismatched_normalisation_lists_panic() {
        let p = pattern(8, 8, 1);
        let mut out = vec![0f32; 64];
        ev(8, 0, &[0.5, 0.5], &[0.5, 0.5]).apply(img(&p, 8, 8, 1), &mut out);
    }

    /// A hash of the bits of `v` (splitmix64 chained).
    fn bit_hash(v: &[f32]) -> u64 {
        v.iter()
            .fold(0u64, |h, x| splitmix64(h ^ u64::from(x.to_bits())))
    }

    /// Noise bytes, `h × w × c`.
    fn noise(h: usize, w: usize, c: usize, salt: usize) -> Vec<u8> {
        (0..h * w * c)
            .map(|i| (splitmix64((i * 7 + salt) as u64) >> 56) as u8)
            .collect()
    }

    fn imagenet_views() -> AugmentConfig {
        AugmentConfig {
            size: 224,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            view1: ViewConfig {
                blur_kernel_size: 23,
                ..ViewConfig::view1()
            },
            view2: ViewConfig {
                blur_kernel_size: 23,
                ..ViewConfig::view2()
            },
            ..AugmentConfig::default()
        }
    }

    #[test]
    fn views_are_bitwise_those_of_the_plain_loops() {
        // hashes of the views made by the scalar loops of commit d4a2c26
        // (before the separable resize, the blocked blur and the SIMD
        // dispatch), for the default 28-px views and for 224-px views whose
        // crops are never shrunk more than 2× (so not antialiased): the
        // rewrite changed the speed, not one bit
        let cfg = AugmentConfig::default();
        for (c, golden, eval_golden) in [
            (
                1,
                [0x2707_3177_0c41_d823, 0xc079_57a5_b284_0de8],
                0x4986_bf4a_4b68_31a3,
            ),
            (
                3,
                [0xcc67_9654_e2b1_62db, 0x94bb_b05d_549d_aa1c],
                0xd233_25f0_f438_1979,
            ),
        ] {
            let p = noise(28, 28, c, 1);
            let refs = vec![img(&p, 28, 28, c); 8];
            let (a, b) = two_views(&refs, &cfg, 5);
            assert_eq!(
                [bit_hash(&a), bit_hash(&b)],
                golden,
                "28 px, {c} channel(s)"
            );
            let e = cfg.eval_transform().batch(&refs);
            assert_eq!(bit_hash(&e), eval_golden, "evaluation, {c} channel(s)");
        }
        let cfg = imagenet_views();
        for (h, w, golden) in [
            (375, 500, [0x5931_3bb4_49e5_23b3, 0xff98_3da6_43a8_6298]),
            (48, 64, [0xbf91_f893_a2e8_dfab, 0x98c2_aa65_0e11_28a4]),
        ] {
            let p = noise(h, w, 3, 2);
            let refs = vec![img(&p, h, w, 3); 6];
            let (a, b) = two_views(&refs, &cfg, 9);
            assert_eq!([bit_hash(&a), bit_hash(&b)], golden, "224 px from {h}×{w}");
        }
    }

    #[test]
    fn two_views_with_decodes_into_the_views_of_two_views_and_reports_failures() {
        let cfg = imagenet_views();
        let pixels: Vec<Vec<u8>> = (0..5).map(|i| noise(60 + 7 * i, 90, 3, i)).collect();
        let image = |i: usize| byol_data::Image {
            pixels: pixels[i].clone(),
            height: 60 + 7 * i,
            width: 90,
            channels: 3,
        };
        let refs: Vec<_> = (0..5).map(|i| img(&pixels[i], 60 + 7 * i, 90, 3)).collect();
        let (v1, v2) = two_views(&refs, &cfg, 3);
        let loaded = two_views_with(5, 3, &cfg, 3, |i| Ok::<_, String>(image(i)));
        assert!(loaded.failed.is_empty());
        assert_eq!(
            (bits(&loaded.view1), bits(&loaded.view2)),
            (bits(&v1), bits(&v2))
        );
        // image 2 fails: zeros there, its error reported, the others as before
        let loaded = two_views_with(5, 3, &cfg, 3, |i| {
            if i == 2 {
                Err(format!("bad {i}"))
            } else {
                Ok(image(i))
            }
        });
        assert_eq!(loaded.failed, vec![(2, "bad 2".to_string())]);
        let per = 3 * 224 * 224;
        for (i, (a, b)) in loaded.view1.chunks(per).zip(v1.chunks(per)).enumerate() {
            if i == 2 {
                assert!(a.iter().all(|&v| v == 0.0));
            } else {
                assert_eq!(bits(a), bits(b), "image {i}");
            }
        }
        assert!(
            two_views_with(0, 3, &cfg, 3, |i| Ok::<_, String>(image(i)))
                .view1
                .is_empty()
        );
    }
}
