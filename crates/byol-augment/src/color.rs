//! Colour transformations on planar `f32` images (`[channels, height ×
//! width]`, values in `[0, 1]`): colour jitter, grayscale and solarisation,
//! with torchvision's formulas for float tensors.
//!
//! Colour proper (saturation, hue, grayscale) needs three channels; on any
//! other channel count those operations leave the image unchanged, while
//! brightness and contrast treat every channel as an intensity.

use rand::Rng;
use rand::seq::SliceRandom;

use crate::ViewConfig;

/// ITU-R 601-2 luma weights of red, green and blue.
pub(crate) const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// One of the four parts of the colour jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JitterOp {
    Brightness,
    Contrast,
    Saturation,
    Hue,
}

/// The random parameters of one colour jitter, drawn as torchvision's
/// `ColorJitter.get_params`: a random order, then the four factors.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Jitter {
    /// Order in which the parts are applied.
    pub order: [JitterOp; 4],
    /// Brightness factor.
    pub brightness: f32,
    /// Contrast factor.
    pub contrast: f32,
    /// Saturation factor.
    pub saturation: f32,
    /// Hue shift, in turns.
    pub hue: f32,
}

impl Jitter {
    /// Draws the order and all four factors (always the same amount of
    /// random numbers, whatever the settings).
    pub fn draw(rng: &mut impl Rng, cfg: &ViewConfig) -> Self {
        let mut order = [
            JitterOp::Brightness,
            JitterOp::Contrast,
            JitterOp::Saturation,
            JitterOp::Hue,
        ];
        order.shuffle(rng);
        let factor = |rng: &mut _, a: f32| uniform(rng, (1.0 - a).max(0.0), 1.0 + a);
        Self {
            order,
            brightness: factor(rng, cfg.brightness),
            contrast: factor(rng, cfg.contrast),
            saturation: factor(rng, cfg.saturation),
            hue: uniform(rng, -cfg.hue, cfg.hue),
        }
    }

    /// Applies the four parts in order, clamping to `[0, 1]` after each.
    #[inline(always)]
    pub fn apply(&self, data: &mut [f32], channels: usize) {
        for op in self.order {
            match op {
                JitterOp::Brightness => adjust_brightness(data, self.brightness),
                JitterOp::Contrast => adjust_contrast(data, channels, self.contrast),
                JitterOp::Saturation => adjust_saturation(data, channels, self.saturation),
                JitterOp::Hue => adjust_hue(data, channels, self.hue),
            }
        }
    }
}

/// Uniform in `[lo, hi)`; exactly `lo` when `lo == hi`. Always draws one
/// number.
pub(crate) fn uniform(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// The three planes of an RGB image, or `None` for other channel counts.
#[inline(always)]
fn rgb_planes(data: &mut [f32], channels: usize) -> Option<(&mut [f32], &mut [f32], &mut [f32])> {
    if channels != 3 {
        return None;
    }
    let n = data.len() / 3;
    let (r, rest) = data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    Some((r, g, b))
}

#[inline(always)]
fn luma(r: f32, g: f32, b: f32) -> f32 {
    LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
}

/// `clamp(factor·x + (1 − factor)·other)`, torchvision's `_blend`.
#[inline(always)]
fn blend(x: f32, other: f32, factor: f32) -> f32 {
    (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)
}

/// Multiplies every value by `factor` (a blend with black).
#[inline(always)]
pub(crate) fn adjust_brightness(data: &mut [f32], factor: f32) {
    for v in data {
        *v = blend(*v, 0.0, factor);
    }
}

/// Blends with the mean of the grayscale image (of the image itself on one
/// channel).
#[inline(always)]
pub(crate) fn adjust_contrast(data: &mut [f32], channels: usize, factor: f32) {
    if data.is_empty() {
        return;
    }
    let mean = match rgb_planes(data, channels) {
        Some((r, g, b)) => {
            let sum: f64 = (0..r.len())
                .map(|i| f64::from(luma(r[i], g[i], b[i])))
                .sum();
            (sum / r.len() as f64) as f32
        }
        None => (data.iter().map(|&v| f64::from(v)).sum::<f64>() / data.len() as f64) as f32,
    };
    for v in data {
        *v = blend(*v, mean, factor);
    }
}

/// Blends each pixel with its luma. No-op unless three channels.
#[inline(always)]
pub(crate) fn adjust_saturation(data: &mut [f32], channels: usize, factor: f32) {
    let Some((r, g, b)) = rgb_planes(data, channels) else {
        return;
    };
    for i in 0..r.len() {
        let l = luma(r[i], g[i], b[i]);
        r[i] = blend(r[i], l, factor);
        g[i] = blend(g[i], l, factor);
        b[i] = blend(b[i], l, factor);
    }
}

/// Rotates the hue by `shift` turns through HSV. No-op unless three
/// channels, or when `shift` is 0.
#[inline(always)]
pub(crate) fn adjust_hue(data: &mut [f32], channels: usize, shift: f32) {
    if shift == 0.0 {
        return;
    }
    let Some((r, g, b)) = rgb_planes(data, channels) else {
        return;
    };
    for i in 0..r.len() {
        let (h, s, v) = rgb_to_hsv(r[i], g[i], b[i]);
        let (nr, ng, nb) = hsv_to_rgb(wrap_turn(h + shift), s, v);
        r[i] = nr.clamp(0.0, 1.0);
        g[i] = ng.clamp(0.0, 1.0);
        b[i] = nb.clamp(0.0, 1.0);
    }
}

/// Sets the three channels to the luma. No-op unless three channels.
#[inline(always)]
pub(crate) fn to_grayscale(data: &mut [f32], channels: usize) {
    let Some((r, g, b)) = rgb_planes(data, channels) else {
        return;
    };
    for i in 0..r.len() {
        // the weights sum to 1 only up to rounding
        let l = luma(r[i], g[i], b[i]).clamp(0.0, 1.0);
        (r[i], g[i], b[i]) = (l, l, l);
    }
}

/// Inverts (`x -> 1 - x`) the values at or above `threshold`.
#[inline(always)]
pub(crate) fn solarize(data: &mut [f32], threshold: f32) {
    for v in data {
        if *v >= threshold {
            *v = 1.0 - *v;
        }
    }
}

/// `x.rem_euclid(1.0)` for the hue turns met here (`|x| < 2`), without the
/// `fmodf` call: `x − ⌊x⌋` is the same real number rounded once, so the
/// same `f32`, but for the sign of a zero result, which [`hsv_to_rgb`]
/// does not see.
#[inline(always)]
fn wrap_turn(x: f32) -> f32 {
    x - x.floor()
}

/// Hue (turns, in `[0, 1)`), saturation and value of an RGB colour.
#[inline(always)]
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    if delta <= 0.0 {
        return (0.0, 0.0, max);
    }
    let s = delta / max;
    let sector = if max == r {
        (g - b) / delta
    } else if max == g {
        2.0 + (b - r) / delta
    } else {
        4.0 + (r - g) / delta
    };
    (wrap_turn(sector / 6.0), s, max)
}

/// RGB colour of a hue (turns), saturation and value.
#[inline(always)]
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let p = v * (1.0 - s);
    let q = v * (1.0 - s * f);
    let t = v * (1.0 - s * (1.0 - f));
    match (sector as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    /// Pixels as planar RGB.
    fn planar(pixels: &[[f32; 3]]) -> Vec<f32> {
        (0..3)
            .flat_map(|c| pixels.iter().map(move |p| p[c]))
            .collect()
    }

    #[test]
    fn brightness_scales_and_clamps() {
        let mut d = vec![0.0, 0.25, 0.5, 0.9];
        adjust_brightness(&mut d, 1.5);
        assert!(close(&d, &[0.0, 0.375, 0.75, 1.0]), "{d:?}");
    }

    #[test]
    fn contrast_blends_towards_the_mean_of_the_luma() {
        // one channel: mean 0.5
        let mut d = vec![0.0, 1.0, 0.25, 0.75];
        adjust_contrast(&mut d, 1, 0.5);
        assert!(close(&d, &[0.25, 0.75, 0.375, 0.625]), "{d:?}");
        // pure red and pure blue: luma mean (0.299 + 0.114) / 2
        let mut d = planar(&[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]);
        adjust_contrast(&mut d, 3, 0.0);
        let m = (0.299 + 0.114) / 2.0;
        assert!(close(&d, &[m; 6]), "{d:?}");
    }

    #[test]
    fn saturation_zero_gives_gray_and_two_doubles_the_chroma() {
        let px = [0.6, 0.4, 0.2];
        let l = luma(px[0], px[1], px[2]);
        let mut d = planar(&[px]);
        adjust_saturation(&mut d, 3, 0.0);
        assert!(close(&d, &[l, l, l]), "{d:?}");
        let mut d = planar(&[px]);
        adjust_saturation(&mut d, 3, 2.0);
        let expected = px.map(|v| (2.0 * v - l).clamp(0.0, 1.0));
        assert!(close(&d, &expected), "{d:?}");
    }

    #[test]
    fn hue_shift_of_a_third_turn_maps_red_to_green_and_half_to_cyan() {
        let mut d = planar(&[[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]]);
        adjust_hue(&mut d, 3, 1.0 / 3.0);
        assert!(
            close(&d, &planar(&[[0.0, 1.0, 0.0], [0.25, 0.5, 0.25]])),
            "{d:?}"
        );
        let mut d = planar(&[[1.0, 0.0, 0.0]]);
        adjust_hue(&mut d, 3, -0.5);
        assert!(close(&d, &[0.0, 1.0, 1.0]), "{d:?}");
    }

    #[test]
    fn wrap_turn_is_rem_euclid_up_to_the_sign_of_zero() {
        let mut state = 5u64;
        for i in 0..200_000u32 {
            state = crate::splitmix64(state);
            let x = if i < 1000 {
                // whole and half turns, and their neighbours
                (i as f32 - 500.0) / 250.0
            } else {
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            };
            for x in [x, x.next_up(), x.next_down()] {
                let (a, b) = (wrap_turn(x), x.rem_euclid(1.0));
                assert!(a == b, "{x}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn hsv_round_trip_is_the_identity() {
        for i in 0..1000u32 {
            let c = [i % 10, (i / 10) % 10, i / 100].map(|v| v as f32 / 9.0);
            let (h, s, v) = rgb_to_hsv(c[0], c[1], c[2]);
            assert!((0.0..1.0).contains(&h), "{h}");
            let (r, g, b) = hsv_to_rgb(h, s, v);
            assert!(close(&[r, g, b], &c), "{c:?} -> {:?}", (r, g, b));
        }
    }

    #[test]
    fn colour_operations_leave_one_channel_unchanged() {
        let orig = vec![0.1, 0.5, 0.9, 0.3];
        let mut d = orig.clone();
        adjust_saturation(&mut d, 1, 0.0);
        adjust_hue(&mut d, 1, 0.3);
        to_grayscale(&mut d, 1);
        assert_eq!(d, orig);
    }

    #[test]
    fn grayscale_sets_every_channel_to_the_luma() {
        let mut d = planar(&[[1.0, 0.0, 0.0], [0.2, 0.4, 0.8]]);
        to_grayscale(&mut d, 3);
        let l = luma(0.2, 0.4, 0.8);
        assert!(close(&d, &[0.299, l, 0.299, l, 0.299, l]), "{d:?}");
    }

    #[test]
    fn solarize_inverts_values_at_or_above_the_threshold() {
        let mut d = vec![0.0, 0.49, 0.5, 0.8, 1.0];
        solarize(&mut d, 0.5);
        assert!(close(&d, &[0.0, 0.49, 0.5, 0.2, 0.0]), "{d:?}");
    }

    #[test]
    fn jitter_factors_stay_in_their_ranges_and_orders_vary() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let cfg = ViewConfig {
            brightness: 1.5,
            ..ViewConfig::view1()
        };
        let mut orders = std::collections::HashSet::new();
        for _ in 0..500 {
            let j = Jitter::draw(&mut rng, &cfg);
            assert!((0.0..2.5).contains(&j.brightness), "{j:?}");
            assert!((0.6..1.4).contains(&j.contrast), "{j:?}");
            assert!((0.8..1.2).contains(&j.saturation), "{j:?}");
            assert!((-0.1..0.1).contains(&j.hue), "{j:?}");
            orders.insert(j.order.map(|o| o as u8));
        }
        assert_eq!(orders.len(), 24, "all 4! orders should occur");
    }

    #[test]
    fn neutral_jitter_is_the_identity() {
        let cfg = ViewConfig {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            ..ViewConfig::view1()
        };
        let j = Jitter::draw(&mut ChaCha8Rng::seed_from_u64(0), &cfg);
        let orig = planar(&[[0.1, 0.7, 0.3], [0.9, 0.2, 0.5]]);
        let mut d = orig.clone();
        j.apply(&mut d, 3);
        assert_eq!(d, orig);
    }
}
