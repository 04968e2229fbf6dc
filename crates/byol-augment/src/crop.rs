//! Geometry: the random resized crop's window, bilinear resizing of a window
//! of `u8` pixels into planar `f32` values in `[0, 1]`, and the horizontal
//! flip.

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

/// Writes `window` of `img` bilinearly resized to `size × size` into `out`
/// (`[channels, size, size]`), as values in `[0, 1]` (bytes / 255). No
/// antialiasing. `taps` is scratch space.
///
/// # Panics
///
/// When the window is empty or outside the image, or `out` has not
/// `channels × size × size` values.
pub(crate) fn resize_window(
    img: ImageRef<'_>,
    window: Window,
    size: usize,
    taps: &mut Vec<Tap>,
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
    let scale_y = window.height as f32 / size as f32;
    let scale_x = window.width as f32 / size as f32;
    taps.clear();
    taps.extend((0..size).map(|x| Tap::new(x, scale_x, window.width)));
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

/// Mirrors every row of planar `data` whose rows are `width` long.
pub(crate) fn flip_horizontal(data: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    for row in data.chunks_exact_mut(width) {
        row.reverse();
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
        resize_window(img, window, size, &mut Vec::new(), &mut out);
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
        flip_horizontal(&mut data, 3);
        assert_eq!(data, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    }
}
