//! The random views of BYOL, drawn per image.
//!
//! "[...] we apply the following sequence of transformations: random
//! cropping [...], optional left-right flip, color jittering [...], color
//! dropping [...], Gaussian blurring and solarization"
//! [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.3 and Table 6].
//!
//! Each image of a batch gets its own ChaCha8 random stream, derived from the
//! batch seed and its index in the batch: two images never share crop or
//! jitter parameters, and a batch is the same whatever the number of rayon
//! threads that made it. Outputs are `f32`, `[batch, channels, size, size]`,
//! normalised by the configured mean and standard deviation.
//!
//! Single-channel images work: brightness and contrast apply, while
//! saturation, hue and grayscale are no-ops (there is no colour to change).
//! Resizing is bilinear without antialiasing.
//!
//! ```
//! use byol_augment::{AugmentConfig, two_views};
//! use byol_data::ImageRef;
//! let pixels = vec![128u8; 28 * 28];
//! let img = ImageRef { pixels: &pixels, height: 28, width: 28, channels: 1 };
//! let (v1, v2) = two_views(&[img, img], &AugmentConfig::default(), 42);
//! assert_eq!(v1.len(), 2 * 28 * 28);
//! assert_ne!(v1, v2);
//! ```

mod ops;
mod settings;

pub use settings::{AugmentConfig, ViewConfig};

use byol_data::ImageRef;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use ops::{Planar, color_jitter, crop_window, kernel_size, uniform};

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

/// One random view of `img`, written to `out` as `[channels, size, size]`.
///
/// Order as the BYOL pipeline: random resized crop, flip, colour jitter (with
/// probability `jitter_p`, its parts in random order), grayscale, blur,
/// solarize, normalise.
///
/// # Panics
///
/// When `out` is not `channels × size × size` long, or `mean`/`std` have
/// neither 1 nor `channels` values (check with
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
    assert_eq!(out.len(), img.channels * size * size, "output should hold channels × size × size values");
    let (top, left, h, w) = crop_window(rng, img.height, img.width, cfg);
    let mut view = Planar::crop_resize(img, top, left, h, w, size);
    // every draw is made whatever its outcome, so streams stay aligned
    let flip = rng.random::<f32>() < cfg.flip_p;
    let jitter = rng.random::<f32>() < cfg.jitter_p;
    if flip {
        view.flip_horizontal();
    }
    if jitter {
        color_jitter(&mut view, cfg, rng);
    }
    if rng.random::<f32>() < cfg.grayscale_p {
        view.grayscale();
    }
    let blur = rng.random::<f32>() < cfg.blur_p;
    let sigma = uniform(rng, cfg.blur_sigma[0], cfg.blur_sigma[1]);
    if blur {
        view.blur(sigma, kernel_size(cfg, size));
    }
    if rng.random::<f32>() < cfg.solarize_p {
        view.solarize(cfg.solarize_threshold);
    }
    view.normalize_into(mean, std, out);
}

/// Splitmix64 of (seed, index): independent streams for nearby inputs.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One view of every image, `[batch, channels, size, size]` flattened, made
/// in parallel; image `i` draws from a stream seeded by `(seed, i)`.
///
/// # Panics
///
/// When the images differ in channel count, or as [`augment_view`].
pub fn augment_batch(images: &[ImageRef<'_>], cfg: &ViewConfig, size: usize, mean: &[f32], std: &[f32], seed: u64) -> Vec<f32> {
    let Some(first) = images.first() else {
        return Vec::new();
    };
    let per_image = first.channels * size * size;
    let mut out = vec![0f32; images.len() * per_image];
    out.par_chunks_mut(per_image)
        .zip(images.par_iter())
        .enumerate()
        .for_each(|(i, (dst, img))| {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, i as u64));
            augment_view(*img, cfg, size, mean, std, &mut rng, dst);
        });
    out
}

/// The two BYOL views of a batch, from independent streams.
pub fn two_views(images: &[ImageRef<'_>], cfg: &AugmentConfig, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (s1, s2) = (mix(seed, u64::MAX - 1), mix(seed, u64::MAX - 2));
    rayon::join(
        || augment_batch(images, &cfg.view1, cfg.size, &cfg.mean, &cfg.std, s1),
        || augment_batch(images, &cfg.view2, cfg.size, &cfg.mean, &cfg.std, s2),
    )
}

/// The deterministic evaluation transform: the whole image resized
/// (bilinear) to `size × size`, then normalised; written to `out` as
/// `[channels, size, size]`.
///
/// # Panics
///
/// As [`augment_view`].
pub fn eval_transform(img: ImageRef<'_>, size: usize, mean: &[f32], std: &[f32], out: &mut [f32]) {
    assert_eq!(out.len(), img.channels * size * size, "output should hold channels × size × size values");
    Planar::crop_resize(img, 0, 0, img.height, img.width, size).normalize_into(mean, std, out);
}

/// [`eval_transform`] of every image, `[batch, channels, size, size]`.
pub fn eval_batch(images: &[ImageRef<'_>], size: usize, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let Some(first) = images.first() else {
        return Vec::new();
    };
    let per_image = first.channels * size * size;
    let mut out = vec![0f32; images.len() * per_image];
    out.par_chunks_mut(per_image)
        .zip(images.par_iter())
        .for_each(|(dst, img)| eval_transform(*img, size, mean, std, dst));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic test image with structure in every channel.
    fn image(h: usize, w: usize, c: usize) -> Vec<u8> {
        (0..h * w * c).map(|i| ((i * 37 + (i / w) * 11) % 256) as u8).collect()
    }

    fn img(p: &[u8], h: usize, w: usize, c: usize) -> ImageRef<'_> {
        ImageRef { pixels: p, height: h, width: w, channels: c }
    }

    /// Everything off but the crop, which takes the whole image.
    fn identity() -> ViewConfig {
        ViewConfig {
            crop_scale: [0.999, 1.0],
            crop_ratio: [1.0, 1.0],
            flip_p: 0.0,
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            solarize_p: 0.0,
            ..ViewConfig::view1()
        }
    }

    #[test]
    fn output_shape_follows_channels_and_size() {
        for (c, size) in [(1, 28), (3, 28), (1, 32), (3, 16)] {
            let p = image(28, 28, c);
            let refs = [img(&p, 28, 28, c); 3];
            for view in [ViewConfig::view1(), ViewConfig::view2()] {
                assert_eq!(augment_batch(&refs, &view, size, &[0.5], &[0.5], 1).len(), 3 * c * size * size);
            }
            assert_eq!(eval_batch(&refs, size, &[0.5], &[0.5]).len(), 3 * c * size * size);
        }
    }

    #[test]
    fn values_stay_in_unit_range_before_normalisation() {
        for c in [1, 3] {
            let p = image(28, 28, c);
            let refs = [img(&p, 28, 28, c); 8];
            for seed in 0..20 {
                for view in [ViewConfig::view1(), ViewConfig::view2()] {
                    let out = augment_batch(&refs, &view, 28, &[0.0], &[1.0], seed);
                    assert!(out.iter().all(|v| (0.0..=1.0).contains(v)), "seed {seed}, {c} channels");
                }
            }
        }
    }

    #[test]
    fn same_seed_same_batch_other_seed_other_batch() {
        let p = image(28, 28, 3);
        let refs = [img(&p, 28, 28, 3); 4];
        let cfg = AugmentConfig::default();
        assert_eq!(two_views(&refs, &cfg, 5), two_views(&refs, &cfg, 5));
        assert_ne!(two_views(&refs, &cfg, 5).0, two_views(&refs, &cfg, 6).0);
    }

    #[test]
    fn images_in_a_batch_get_different_parameters() {
        let p = image(28, 28, 1);
        let refs = [img(&p, 28, 28, 1); 8];
        let out = augment_batch(&refs, &ViewConfig::view1(), 28, &[0.5], &[0.5], 3);
        let views: Vec<&[f32]> = out.chunks_exact(28 * 28).collect();
        for i in 0..views.len() {
            for j in i + 1..views.len() {
                assert_ne!(views[i], views[j], "views {i} and {j} are identical");
            }
        }
    }

    #[test]
    fn result_does_not_depend_on_thread_count() {
        let p = image(28, 28, 3);
        let refs = [img(&p, 28, 28, 3); 16];
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool")
                .install(|| two_views(&refs, &AugmentConfig::default(), 9))
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn identity_settings_reproduce_the_image_and_flip_mirrors_it() {
        let p = image(28, 28, 1);
        let refs = [img(&p, 28, 28, 1)];
        let out = augment_batch(&refs, &identity(), 28, &[0.0], &[1.0], 0);
        let expected: Vec<f32> = p.iter().map(|&v| f32::from(v) / 255.0).collect();
        assert!(out.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-6));
        let flipped = augment_batch(&refs, &ViewConfig { flip_p: 1.0, ..identity() }, 28, &[0.0], &[1.0], 0);
        for y in 0..28 {
            for x in 0..28 {
                assert!((flipped[y * 28 + x] - expected[y * 28 + 27 - x]).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn normalisation_uses_mean_and_std_per_channel() {
        let p = image(4, 4, 3);
        let mut out = vec![0f32; 3 * 16];
        eval_transform(img(&p, 4, 4, 3), 4, &[0.1, 0.2, 0.3], &[0.5, 0.25, 2.0], &mut out);
        for ch in 0..3 {
            let raw = f32::from(p[ch]) / 255.0; // pixel (0, 0), channel ch
            let expected = (raw - [0.1, 0.2, 0.3][ch]) / [0.5, 0.25, 2.0][ch];
            assert!((out[ch * 16] - expected).abs() < 1e-6);
        }
    }

    #[test]
    fn solarize_inverts_bright_pixels_only() {
        let p: Vec<u8> = vec![0, 64, 191, 255];
        let refs = [img(&p, 2, 2, 1)];
        let cfg = ViewConfig { solarize_p: 1.0, ..identity() };
        let out = augment_batch(&refs, &cfg, 2, &[0.0], &[1.0], 0);
        let expected = [0.0, 64.0 / 255.0, 1.0 - 191.0 / 255.0, 0.0];
        assert!(out.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn grayscale_makes_channels_equal() {
        let p = image(8, 8, 3);
        let refs = [img(&p, 8, 8, 3)];
        let out = augment_batch(&refs, &ViewConfig { grayscale_p: 1.0, ..identity() }, 8, &[0.0], &[1.0], 0);
        let (r, rest) = out.split_at(64);
        let (g, b) = rest.split_at(64);
        assert_eq!(r, g);
        assert_eq!(g, b);
        assert_ne!(image(8, 8, 3)[0], image(8, 8, 3)[1], "test image should have colour");
    }

    #[test]
    fn blur_smooths_a_checkerboard_and_keeps_a_constant_image() {
        let board: Vec<u8> = (0..16 * 16).map(|i| if (i % 16 + i / 16) % 2 == 0 { 0 } else { 255 }).collect();
        let cfg = ViewConfig { blur_p: 1.0, blur_sigma: [1.0, 1.0], ..identity() };
        let var = |v: &[f32]| {
            let m = v.iter().sum::<f32>() / v.len() as f32;
            v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32
        };
        let raw = augment_batch(&[img(&board, 16, 16, 1)], &identity(), 16, &[0.0], &[1.0], 0);
        let blurred = augment_batch(&[img(&board, 16, 16, 1)], &cfg, 16, &[0.0], &[1.0], 0);
        assert!(var(&blurred) < 0.2 * var(&raw), "{} vs {}", var(&blurred), var(&raw));
        let flat = vec![100u8; 256];
        let out = augment_batch(&[img(&flat, 16, 16, 1)], &cfg, 16, &[0.0], &[1.0], 0);
        assert!(out.iter().all(|v| (v - 100.0 / 255.0).abs() < 1e-5));
    }

    #[test]
    fn jitter_on_one_channel_changes_intensity_only() {
        let p = image(28, 28, 1);
        let cfg = ViewConfig { jitter_p: 1.0, ..identity() };
        let out = augment_batch(&[img(&p, 28, 28, 1)], &cfg, 28, &[0.0], &[1.0], 4);
        let plain = augment_batch(&[img(&p, 28, 28, 1)], &identity(), 28, &[0.0], &[1.0], 4);
        assert_ne!(out, plain, "brightness/contrast should act on grayscale");
    }

    #[test]
    fn validate_names_bad_keys() {
        let cases = [
            (ViewConfig { crop_scale: [0.5, 0.5], ..ViewConfig::view1() }, "augment.view1.crop_scale"),
            (ViewConfig { flip_p: 1.5, ..ViewConfig::view1() }, "augment.view1.flip_p"),
            (ViewConfig { brightness: -0.1, ..ViewConfig::view1() }, "augment.view1.brightness"),
            (ViewConfig { blur_kernel_size: 4, ..ViewConfig::view1() }, "augment.view1.blur_kernel_size"),
        ];
        for (view, key) in cases {
            let cfg = AugmentConfig { view1: view, ..AugmentConfig::default() };
            let err = cfg.validate("augment").expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
        AugmentConfig::default().validate("augment").expect("defaults are valid");
        let two_means = AugmentConfig { mean: vec![0.5, 0.5], std: vec![0.5, 0.5], ..AugmentConfig::default() };
        assert!(two_means.check_channels(1).is_err());
        assert!(two_means.check_channels(2).is_ok());
    }

    #[test]
    fn default_views_follow_the_paper() {
        let (v1, v2) = (ViewConfig::view1(), ViewConfig::view2());
        assert_eq!((v1.blur_p, v2.blur_p), (1.0, 0.1));
        assert_eq!((v1.solarize_p, v2.solarize_p), (0.0, 0.2));
        assert_eq!((v1.jitter_p, v1.grayscale_p, v1.flip_p), (0.8, 0.2, 0.5));
        assert_eq!(kernel_size(&v1, 224), 23);
        assert_eq!(kernel_size(&v1, 28), 3);
    }
}
