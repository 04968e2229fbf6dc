//! Geometry: the random resized crop's window, and the resizing of a window
//! of `u8` pixels into planar `f32` values in `[0, 1]` (bilinear,
//! antialiased beyond a 2× downscale), mirrored for the horizontal flip.

use byol_data::ImageRef;
use rand::Rng;

/// A rectangle of source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl Window {
    /// The whole of a `height × width` image.
    pub fn full(height: usize, width: usize) -> Self {
        Self {
            top: 0,
            left: 0,
            height,
            width,
        }
    }
}

/// The window of a random resized crop of a `height × width` image, drawn as
/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of an area
/// fraction uniform in `scale` and an aspect ratio (width / height)
/// log-uniform in `ratio`, sides rounded half to even as Python's `round`;
/// the first that fits is placed uniformly. If none fits, the centre crop
/// of the largest window whose ratio is clamped into `ratio`.
pub(crate) fn random_crop_window(
    rng: &mut impl Rng,
    height: usize,
    width: usize,
    scale: [f32; 2],
    ratio: [f32; 2],
) -> Window {
    let area = (height * width) as f64;
    let (scale_lo, scale_hi) = (f64::from(scale[0]), f64::from(scale[1]));
    let (log_lo, log_hi) = (f64::from(ratio[0]).ln(), f64::from(ratio[1]).ln());
    for _ in 0..10 {
        let target_area = area * uniform_f64(rng, scale_lo, scale_hi);
        let aspect = uniform_f64(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        // NaN (from a ratio <= 0) fails these comparisons too
        if w >= 1.0 && w <= width as f64 && h >= 1.0 && h <= height as f64 {
            let (h, w) = (h as usize, w as usize);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return Window {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (lo, hi) = (f64::from(ratio[0]), f64::from(ratio[1]));
    let (h, w) = if in_ratio < lo {
        let h = (width as f64 / lo).round_ties_even() as usize;
        (h.clamp(1, height), width)
    } else if in_ratio > hi {
        let w = (height as f64 * hi).round_ties_even() as usize;
        (height, w.clamp(1, width))
    } else {
        (height, width)
    };
    Window {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// Uniform in `[lo, hi)`; exactly `lo` when `lo == hi`. Always draws one
/// number.
fn uniform_f64(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// The two source indices and the weight of the second one for output
/// coordinate `i` of a length `len` resized by `scale = len / out_len`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Tap {
    i0: usize,
    i1: usize,
    frac: f32,
}

impl Tap {
    /// Pixel-centre alignment (PyTorch's `align_corners = False`): output
    /// centre `i + 0.5` maps to source position `(i + 0.5) * scale - 0.5`,
    /// clamped into the source.
    fn new(i: usize, scale: f32, len: usize) -> Self {
        let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src as usize).min(len - 1);
        let i1 = (i0 + 1).min(len - 1);
        let frac = if i0 == len - 1 { 0.0 } else { src - i0 as f32 };
        Self { i0, i1, frac }
    }
}

/// Beyond this downscale (source pixels per output pixel) an axis is
/// resampled with the antialiasing filter; up to it, with the two-tap
/// bilinear interpolation, which at 2× still averages every pair of source
/// pixels.
pub(crate) const ANTIALIAS_ABOVE: f32 = 2.0;

/// The source weights of every output coordinate along one axis.
///
/// Up to [`ANTIALIAS_ABOVE`]: the two bilinear taps of [`Tap`] per output,
/// `w0 · source[i0] + w1 · source[i1]` (at the far edge `i1 = i0` and
/// `w1 = 0`), the very terms of plain bilinear interpolation. Beyond it:
/// the triangle filter stretched by the scale, as PIL's and torchvision's
/// `antialias=True` bilinear resize: output centre `c = (i + 0.5) · scale`,
/// source pixels `j` whose centre is within `scale` of it, weights
/// `1 − |j + 0.5 − c| / scale` normalised to sum to 1, the filter cut at
/// the window's edges; output `i` is then
/// `Σ_k weights[offset + k] · source[first + k]` over `count` taps.
#[derive(Debug, Default)]
pub(crate) struct AxisTaps {
    /// Whether the axis uses the spans (antialiasing) or the pairs.
    antialias: bool,
    i0: Vec<usize>,
    i1: Vec<usize>,
    w0: Vec<f32>,
    w1: Vec<f32>,
    /// (first source index, count, offset into `weights`) per output.
    spans: Vec<(usize, usize, usize)>,
    weights: Vec<f32>,
}

impl AxisTaps {
    /// The taps of `out_len` outputs from `len` source pixels, in reverse
    /// output order when `reversed`.
    fn build(&mut self, len: usize, out_len: usize, reversed: bool) {
        for v in [&mut self.i0, &mut self.i1] {
            v.clear();
        }
        for v in [&mut self.w0, &mut self.w1, &mut self.weights] {
            v.clear();
        }
        self.spans.clear();
        let scale = len as f32 / out_len as f32;
        self.antialias = scale > ANTIALIAS_ABOVE;
        for o in 0..out_len {
            let i = if reversed { out_len - 1 - o } else { o };
            if self.antialias {
                self.push_triangle(i, f64::from(scale), len);
            } else {
                let t = Tap::new(i, scale, len);
                self.i0.push(t.i0);
                self.i1.push(t.i1);
                self.w0.push(1.0 - t.frac);
                self.w1.push(t.frac);
            }
        }
    }

    /// Pushes the antialiasing span of output `i`.
    fn push_triangle(&mut self, i: usize, scale: f64, len: usize) {
        let centre = (i as f64 + 0.5) * scale;
        let first = ((centre - scale + 0.5).floor().max(0.0) as usize).min(len - 1);
        let end = ((centre + scale + 0.5).floor() as usize).clamp(first + 1, len);
        let offset = self.weights.len();
        let mut sum = 0.0;
        for j in first..end {
            let w = (1.0 - ((j as f64 + 0.5 - centre) / scale).abs()).max(0.0);
            self.weights.push(w as f32);
            sum += w;
        }
        if sum > 0.0 {
            for w in &mut self.weights[offset..] {
                *w = (f64::from(*w) / sum) as f32;
            }
        }
        self.spans.push((first, end - first, offset));
    }

    /// The source indices used, `lo..hi`.
    fn range(&self) -> (usize, usize) {
        if self.antialias {
            let lo = self.spans.iter().map(|s| s.0).min().unwrap_or(0);
            let hi = self.spans.iter().map(|s| s.0 + s.1).max().unwrap_or(0);
            (lo, hi)
        } else {
            let lo = self.i0.iter().copied().min().unwrap_or(0);
            let hi = self.i1.iter().copied().max().map_or(0, |i| i + 1);
            (lo, hi)
        }
    }

    /// `dst[o]` = output `o` of this axis over the values `src` (one per
    /// source index).
    #[inline(always)]
    fn apply(&self, src: &[f32], dst: &mut [f32]) {
        if self.antialias {
            for (d, &(first, count, offset)) in dst.iter_mut().zip(&self.spans) {
                let terms = self.weights[offset..offset + count]
                    .iter()
                    .zip(&src[first..]);
                let mut acc = 0.0;
                for (k, (&w, &v)) in terms.enumerate() {
                    acc = if k == 0 { w * v } else { acc + w * v };
                }
                *d = acc;
            }
            return;
        }
        let Some(last) = src.len().checked_sub(1) else {
            return;
        };
        let src = &src[..=last];
        let taps = self
            .i0
            .iter()
            .zip(&self.i1)
            .zip(self.w0.iter().zip(&self.w1));
        for (d, ((&i0, &i1), (&w0, &w1))) in dst.iter_mut().zip(taps) {
            // indices are in range by construction; the `min` lets the
            // compiler drop the bounds checks
            *d = w0 * src[i0.min(last)] + w1 * src[i1.min(last)];
        }
    }
}

/// The `c` channels of interleaved `src` as `c` planes of `f32` in `dst`
/// (`src.len()` values).
#[inline(always)]
fn deinterleave(src: &[u8], c: usize, dst: &mut [f32]) {
    let w = src.len() / c;
    if c == 3 {
        let (r, rest) = dst.split_at_mut(w);
        let (g, b) = rest.split_at_mut(w);
        for (((px, r), g), b) in src.chunks_exact(3).zip(r).zip(g).zip(b) {
            (*r, *g, *b) = (f32::from(px[0]), f32::from(px[1]), f32::from(px[2]));
        }
        return;
    }
    for (ch, plane) in dst.chunks_exact_mut(w).enumerate() {
        for (d, px) in plane.iter_mut().zip(src.chunks_exact(c)) {
            *d = f32::from(px[ch]);
        }
    }
}

/// Scratch space of [`resize_window`].
#[derive(Debug, Default)]
pub(crate) struct ResizeScratch {
    x: AxisTaps,
    y: AxisTaps,
    /// One source row as `f32` planes, `[channels, window width]`.
    line: Vec<f32>,
    /// Rows resized along x: `[channels, rows, size]`.
    rows: Vec<f32>,
}

/// Writes `window` of `img` resized to `size × size` into `out`
/// (`[channels, size, size]`), as values in `[0, 1]` (bytes / 255),
/// mirrored left to right when `flip`. Separable: the window's rows are
/// resized along x, then those rows combined along y; each axis is
/// bilinear (pixel-centre aligned, as PyTorch's `align_corners = False`),
/// or antialiased where it is downscaled more than [`ANTIALIAS_ABOVE`]
/// times ([`AxisTaps`]). Where neither axis is, the values are bitwise
/// those of [`reference::resize_window`] (plain bilinear, output by
/// output): the same products, added in the same order. Inlined, so that
/// it is compiled into the caller's [`crate::simd`] copy.
///
/// # Panics
///
/// When the window is empty or outside the image, or `out` has not
/// `channels × size × size` values.
#[inline(always)]
pub(crate) fn resize_window(
    img: ImageRef<'_>,
    window: Window,
    size: usize,
    flip: bool,
    scratch: &mut ResizeScratch,
    out: &mut [f32],
) {
    assert!(
        window.height > 0
            && window.width > 0
            && window.top + window.height <= img.height
            && window.left + window.width <= img.width,
        "the crop window should be a non-empty part of the image"
    );
    let c = img.channels;
    let plane = size * size;
    assert_eq!(
        out.len(),
        c * plane,
        "output should hold channels × size × size values"
    );
    if plane == 0 {
        return;
    }
    let ResizeScratch { x, y, line, rows } = scratch;
    x.build(window.width, size, flip);
    y.build(window.height, size, false);
    let (r0, r1) = y.range();
    let n_rows = r1 - r0;
    rows.resize(c * n_rows * size, 0.0);
    let row_len = img.width * c;
    let w = window.width;
    line.resize(c * w, 0.0);
    // along x: each needed row of the window, split into planes of `f32`
    for r in r0..r1 {
        let start = (window.top + r) * row_len + window.left * c;
        let src = &img.pixels[start..start + w * c];
        deinterleave(src, c, line);
        for (ch, plane) in line.chunks_exact(w).enumerate() {
            x.apply(plane, &mut rows[(ch * n_rows + r - r0) * size..][..size]);
        }
    }
    // along y: rows combined, whole rows at a time
    for ch in 0..c {
        let rows = &rows[ch * n_rows * size..(ch + 1) * n_rows * size];
        let row = |i: usize| &rows[(i - r0) * size..][..size];
        let dst_plane = &mut out[ch * plane..(ch + 1) * plane];
        for (o, dst) in dst_plane.chunks_exact_mut(size).enumerate() {
            if y.antialias {
                let (first, count, offset) = y.spans[o];
                let weights = &y.weights[offset..offset + count];
                for (d, v) in dst.iter_mut().zip(row(first)) {
                    *d = weights[0] * v;
                }
                for (k, &w) in weights.iter().enumerate().skip(1) {
                    for (d, v) in dst.iter_mut().zip(row(first + k)) {
                        *d += w * v;
                    }
                }
                for d in dst.iter_mut() {
                    *d /= 255.0;
                }
            } else {
                let (w0, w1) = (y.w0[o], y.w1[o]);
                let (a, b) = (row(y.i0[o]), row(y.i1[o]));
                for ((d, a), b) in dst.iter_mut().zip(a).zip(b) {
                    *d = (w0 * a + w1 * b) / 255.0;
                }
            }
        }
    }
}

/// The plain loops that [`resize_window`] must agree with, bit for bit,
/// where it interpolates.
#[cfg(test)]
pub(crate) mod reference {
    use super::{ImageRef, Tap, Window};

    /// Mirrors every row of planar `data` whose rows are `width` long.
    #[inline(always)]
    pub(crate) fn flip_horizontal(data: &mut [f32], width: usize) {
        if width == 0 {
            return;
        }
        for row in data.chunks_exact_mut(width) {
            row.reverse();
        }
    }

    /// Bilinear, output by output: the two horizontal interpolations of
    /// the rows above and below, then the vertical one, then / 255.
    pub(crate) fn resize_window(img: ImageRef<'_>, window: Window, size: usize, out: &mut [f32]) {
        let c = img.channels;
        let plane = size * size;
        let scale_y = window.height as f32 / size as f32;
        let scale_x = window.width as f32 / size as f32;
        let taps: Vec<Tap> = (0..size)
            .map(|x| Tap::new(x, scale_x, window.width))
            .collect();
        let row_len = img.width * c;
        for y in 0..size {
            let ty = Tap::new(y, scale_y, window.height);
            let row0 = (window.top + ty.i0) * row_len + window.left * c;
            let row1 = (window.top + ty.i1) * row_len + window.left * c;
            let (wy0, wy1) = (1.0 - ty.frac, ty.frac);
            for (x, tx) in taps.iter().enumerate() {
                let (wx0, wx1) = (1.0 - tx.frac, tx.frac);
                let (a, b) = (tx.i0 * c, tx.i1 * c);
                for ch in 0..c {
                    let p = |i: usize| f32::from(img.pixels[i + ch]);
                    let top = wx0 * p(row0 + a) + wx1 * p(row0 + b);
                    let bottom = wx0 * p(row1 + a) + wx1 * p(row1 + b);
                    out[ch * plane + y * size + x] = (wy0 * top + wy1 * bottom) / 255.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn resize(
        pixels: &[u8],
        h: usize,
        w: usize,
        c: usize,
        window: Window,
        size: usize,
    ) -> Vec<f32> {
        let img = ImageRef {
            pixels,
            height: h,
            width: w,
            channels: c,
        };
        let mut out = vec![f32::NAN; c * size * size];
        resize_window(
            img,
            window,
            size,
            false,
            &mut ResizeScratch::default(),
            &mut out,
        );
        out
    }

    #[test]
    fn crop_windows_stay_inside_the_image_and_respect_scale_and_ratio() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (scale, ratio) = ([0.08, 1.0], [0.75, 4.0 / 3.0]);
        let mut areas = Vec::new();
        for (h, w) in [(28, 28), (32, 20), (224, 300)] {
            for _ in 0..500 {
                let win = random_crop_window(&mut rng, h, w, scale, ratio);
                assert!(win.height >= 1 && win.width >= 1);
                assert!(
                    win.top + win.height <= h && win.left + win.width <= w,
                    "{win:?}"
                );
                if (h, w) == (224, 300) {
                    // rounding to whole pixels blurs the bounds a little
                    let frac = (win.height * win.width) as f64 / (h * w) as f64;
                    assert!((0.075..=1.0).contains(&frac), "{frac}");
                    let r = win.width as f64 / win.height as f64;
                    assert!((0.73..=1.37).contains(&r), "{r}");
                    areas.push(frac);
                }
            }
        }
        let mean = areas.iter().sum::<f64>() / areas.len() as f64;
        // area fraction is uniform on [0.08, 1] when every first try fits;
        // retries favour smaller crops a little
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }

    #[test]
    fn impossible_crops_fall_back_to_the_centre_clamped_to_the_ratio_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // a wide image and a ratio range of tall crops the full area can't hold
        let win = random_crop_window(&mut rng, 10, 40, [1.0, 1.0], [1.0, 1.0]);
        assert_eq!(
            win,
            Window {
                top: 0,
                left: 15,
                height: 10,
                width: 10
            }
        );
        let win = random_crop_window(&mut rng, 40, 10, [1.0, 1.0], [0.5, 0.5]);
        assert_eq!(
            win,
            Window {
                top: 10,
                left: 0,
                height: 20,
                width: 10
            }
        );
        let win = random_crop_window(&mut rng, 28, 28, [1.0, 1.0], [1.0, 1.0]);
        assert_eq!(win, Window::full(28, 28));
    }

    #[test]
    fn resize_to_the_same_size_is_exact() {
        let pixels: Vec<u8> = (0..5 * 7 * 3).map(|i| (i * 13 % 256) as u8).collect();
        let out = resize(&pixels, 5, 7, 3, Window::full(5, 7), 5);
        // a 5×7 window into 5×5 is not the identity; a 5×5 one is
        assert_ne!(out[1], f32::from(pixels[3]) / 255.0);
        let sq: Vec<u8> = (0..6 * 6 * 3).map(|i| (i * 29 % 256) as u8).collect();
        let out = resize(&sq, 6, 6, 3, Window::full(6, 6), 6);
        for y in 0..6 {
            for x in 0..6 {
                for c in 0..3 {
                    assert_eq!(
                        out[c * 36 + y * 6 + x],
                        f32::from(sq[(y * 6 + x) * 3 + c]) / 255.0
                    );
                }
            }
        }
    }

    #[test]
    fn resize_samples_at_pixel_centres_as_pytorch_bilinear() {
        // F.interpolate([[0, 255]], size=4, mode="bilinear", align_corners=False)
        // gives [0, 0.25, 0.75, 1] × 255 along the row
        let out = resize(&[0, 255], 1, 2, 1, Window::full(1, 2), 4);
        let row = &out[..4];
        for (a, b) in row.iter().zip([0.0, 0.25, 0.75, 1.0]) {
            assert!((a - b).abs() < 1e-6, "{row:?}");
        }
        // 4 → 2 averages pairs (source positions 0.5 and 2.5)
        let out = resize(&[0, 100, 200, 250], 1, 4, 1, Window::full(1, 4), 2);
        assert!((out[0] - 50.0 / 255.0).abs() < 1e-6, "{out:?}");
        assert!(
            (out[2] - 50.0 / 255.0).abs() < 1e-6,
            "rows are copies: {out:?}"
        );
        assert!((out[1] - 225.0 / 255.0).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn resize_reads_only_the_window() {
        // 4×4 image, window = the 2×2 block at (1, 2) holding 10, 20 / 30, 40
        let mut pixels = vec![255u8; 16];
        for (i, v) in [(6, 10), (7, 20), (10, 30), (11, 40)] {
            pixels[i] = v;
        }
        let win = Window {
            top: 1,
            left: 2,
            height: 2,
            width: 2,
        };
        let out = resize(&pixels, 4, 4, 1, win, 2);
        let expected = [10.0, 20.0, 30.0, 40.0].map(|v| v / 255.0);
        assert_eq!(out, expected);
    }

    #[test]
    fn flip_mirrors_each_row() {
        let mut data = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        reference::flip_horizontal(&mut data, 3);
        assert_eq!(data, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    }

    /// Random bytes from a splitmix64 stream.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = crate::splitmix64(state);
                (state >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn resize_is_bitwise_plain_bilinear_up_to_a_2x_downscale_flipped_or_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for (h, w, c, size) in [
            (28, 28, 1, 28),
            (40, 30, 3, 32),
            (375, 500, 3, 224),
            (9, 7, 3, 16),
        ] {
            let pixels = noise(h * w * c, (h * w) as u64);
            let img = ImageRef {
                pixels: &pixels,
                height: h,
                width: w,
                channels: c,
            };
            for _ in 0..40 {
                let win = random_crop_window(&mut rng, h, w, [0.08, 1.0], [0.75, 4.0 / 3.0]);
                if win.height.max(win.width) > 2 * size {
                    continue;
                }
                let mut plain = vec![0f32; c * size * size];
                reference::resize_window(img, win, size, &mut plain);
                for flip in [false, true] {
                    let mut fast = vec![f32::NAN; c * size * size];
                    resize_window(
                        img,
                        win,
                        size,
                        flip,
                        &mut ResizeScratch::default(),
                        &mut fast,
                    );
                    if flip {
                        reference::flip_horizontal(&mut fast, size);
                    }
                    let same = fast
                        .iter()
                        .zip(&plain)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{h}×{w}×{c} → {size}, {win:?}, flip {flip}");
                }
            }
        }
    }

    #[test]
    fn downscaling_more_than_2x_is_antialiased_as_torchvision() {
        // torch.nn.functional.interpolate(x, size=(1, n), mode="bilinear",
        // antialias=True, align_corners=False), torch 2.15:
        //   x = [0, 10, ..., 70]          -> n = 2: [18.9286, 51.0714]
        //   x = [0, 255] * 10 (20 values) -> n = 7: [125.0, 118.5526,
        //       131.9737, 127.5, 123.0263, 136.4474, 130.0]
        let ramp: Vec<u8> = (0..8).map(|i| i * 10).collect();
        let out = resize(&ramp, 1, 8, 1, Window::full(1, 8), 2);
        for (a, b) in out[..2].iter().zip([18.9286, 51.0714]) {
            assert!((a * 255.0 - b).abs() < 1e-3, "{out:?}");
        }
        let stripes: Vec<u8> = (0..20).map(|i| if i % 2 == 0 { 0 } else { 255 }).collect();
        let out = resize(&stripes, 1, 20, 1, Window::full(1, 20), 7);
        let expected = [125.0, 118.5526, 131.9737, 127.5, 123.0263, 136.4474, 130.0];
        for (a, b) in out[..7].iter().zip(expected) {
            assert!((a * 255.0 - b).abs() < 1e-3, "{out:?}");
        }
    }

    #[test]
    fn a_checkerboard_downscaled_4x_comes_out_mid_grey_not_aliased() {
        let board: Vec<u8> = (0..96 * 96)
            .map(|i| if (i % 96 + i / 96) % 2 == 0 { 0 } else { 255 })
            .collect();
        let antialiased = resize(&board, 96, 96, 1, Window::full(96, 96), 24);
        let worst = antialiased
            .iter()
            .map(|v| (v - 0.5).abs())
            .fold(0.0, f32::max);
        assert!(worst < 0.05, "{worst}");
        // plain bilinear at 96 → 23 (4.2×) samples the squares and aliases
        let mut plain = vec![0f32; 23 * 23];
        let img = ImageRef {
            pixels: &board,
            height: 96,
            width: 96,
            channels: 1,
        };
        reference::resize_window(img, Window::full(96, 96), 23, &mut plain);
        let worst = plain.iter().map(|v| (v - 0.5).abs()).fold(0.0, f32::max);
        assert!(worst > 0.3, "{worst}");
        let antialiased = resize(&board, 96, 96, 1, Window::full(96, 96), 23);
        let worst = antialiased
            .iter()
            .map(|v| (v - 0.5).abs())
            .fold(0.0, f32::max);
        assert!(worst < 0.05, "{worst}");
    }

    #[test]
    fn antialiased_resizing_keeps_a_constant_image_and_reads_only_the_window() {
        let mut pixels = vec![255u8; 100 * 100 * 3];
        for y in 10..90 {
            for x in 20..80 {
                for c in 0..3 {
                    pixels[(y * 100 + x) * 3 + c] = 40 + 20 * c as u8;
                }
            }
        }
        let win = Window {
            top: 10,
            left: 20,
            height: 80,
            width: 60,
        };
        let out = resize(&pixels, 100, 100, 3, win, 7);
        for (i, v) in out.iter().enumerate() {
            let expected = f32::from(40 + 20 * (i / 49) as u8) / 255.0;
            assert!((v - expected).abs() < 1e-6, "{i}: {v}");
        }
    }
}
