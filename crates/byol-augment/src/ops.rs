//! The transformations, on planar `f32` images (`[channels][height][width]`)
//! with values in [0, 1].

use byol_data::ImageRef;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::ViewConfig;

/// A planar float image.
#[derive(Debug, Clone)]
pub(crate) struct Planar {
    pub data: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Planar {
    /// Bilinear resize of the window `(top, left, height, width)` of `img` to
    /// `size × size`, scaling bytes to [0, 1]. Sampling is aligned on pixel
    /// centres (PyTorch's `align_corners = False`), without antialiasing.
    pub fn crop_resize(img: ImageRef<'_>, top: usize, left: usize, height: usize, width: usize, size: usize) -> Self {
        let c = img.channels;
        let mut data = vec![0f32; c * size * size];
        let scale_y = height as f32 / size as f32;
        let scale_x = width as f32 / size as f32;
        // precompute the horizontal taps once per column
        let taps_x: Vec<(usize, usize, f32)> = (0..size).map(|x| taps(x, scale_x, width)).collect();
        for y in 0..size {
            let (y0, y1, fy) = taps(y, scale_y, height);
            let row0 = (top + y0) * img.width;
            let row1 = (top + y1) * img.width;
            for (x, &(x0, x1, fx)) in taps_x.iter().enumerate() {
                let (a0, a1) = ((left + x0) * c, (left + x1) * c);
                for ch in 0..c {
                    let v00 = f32::from(img.pixels[row0 * c + a0 + ch]);
                    let v01 = f32::from(img.pixels[row0 * c + a1 + ch]);
                    let v10 = f32::from(img.pixels[row1 * c + a0 + ch]);
                    let v11 = f32::from(img.pixels[row1 * c + a1 + ch]);
                    let top_v = v00 + (v01 - v00) * fx;
                    let bot_v = v10 + (v11 - v10) * fx;
                    data[(ch * size + y) * size + x] = (top_v + (bot_v - top_v) * fy) / 255.0;
                }
            }
        }
        Self {
            data,
            channels: c,
            height: size,
            width: size,
        }
    }

    fn plane_len(&self) -> usize {
        self.height * self.width
    }

    pub fn flip_horizontal(&mut self) {
        let w = self.width;
        for row in self.data.chunks_exact_mut(w) {
            row.reverse();
        }
    }

    fn clamp(&mut self) {
        for v in &mut self.data {
            *v = v.clamp(0.0, 1.0);
        }
    }

    /// ITU-R 601-2 luma of each pixel (the plane itself for one channel).
    fn luma(&self) -> Vec<f32> {
        let n = self.plane_len();
        if self.channels == 1 {
            return self.data.clone();
        }
        let (r, rest) = self.data.split_at(n);
        let (g, b) = rest.split_at(n);
        (0..n).map(|i| 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i]).collect()
    }

    pub fn brightness(&mut self, factor: f32) {
        for v in &mut self.data {
            *v *= factor;
        }
        self.clamp();
    }

    pub fn contrast(&mut self, factor: f32) {
        let luma = self.luma();
        let mean = luma.iter().sum::<f32>() / luma.len().max(1) as f32;
        for v in &mut self.data {
            *v = factor * *v + (1.0 - factor) * mean;
        }
        self.clamp();
    }

    /// No-op on one channel.
    pub fn saturation(&mut self, factor: f32) {
        if self.channels != 3 {
            return;
        }
        let luma = self.luma();
        let n = self.plane_len();
        for plane in self.data.chunks_exact_mut(n) {
            for (v, g) in plane.iter_mut().zip(&luma) {
                *v = factor * *v + (1.0 - factor) * g;
            }
        }
        self.clamp();
    }

    /// Rotates the hue by `shift` turns. No-op on one channel.
    pub fn hue(&mut self, shift: f32) {
        if self.channels != 3 || shift == 0.0 {
            return;
        }
        let n = self.plane_len();
        for i in 0..n {
            let (r, g, b) = (self.data[i], self.data[n + i], self.data[2 * n + i]);
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r, g, b) = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
            self.data[i] = r;
            self.data[n + i] = g;
            self.data[2 * n + i] = b;
        }
        self.clamp();
    }

    /// Sets every channel to the luma. No-op on one channel.
    pub fn grayscale(&mut self) {
        if self.channels != 3 {
            return;
        }
        let luma = self.luma();
        let n = self.plane_len();
        for plane in self.data.chunks_exact_mut(n) {
            plane.copy_from_slice(&luma);
        }
        // luma weights sum to 1 only up to rounding
        self.clamp();
    }

    /// Separable gaussian blur with reflect padding.
    pub fn blur(&mut self, sigma: f32, kernel_size: usize) {
        let radius = kernel_size / 2;
        let mut kernel: Vec<f32> = (0..kernel_size)
            .map(|i| {
                let d = i as f32 - radius as f32;
                (-(d * d) / (2.0 * sigma * sigma)).exp()
            })
            .collect();
        let sum: f32 = kernel.iter().sum();
        kernel.iter_mut().for_each(|k| *k /= sum);
        let (h, w) = (self.height, self.width);
        let mut tmp = vec![0f32; h * w];
        for plane in self.data.chunks_exact_mut(h * w) {
            for y in 0..h {
                for x in 0..w {
                    tmp[y * w + x] = kernel
                        .iter()
                        .enumerate()
                        .map(|(k, kv)| kv * plane[y * w + reflect(x as isize + k as isize - radius as isize, w)])
                        .sum();
                }
            }
            for y in 0..h {
                for x in 0..w {
                    plane[y * w + x] = kernel
                        .iter()
                        .enumerate()
                        .map(|(k, kv)| kv * tmp[reflect(y as isize + k as isize - radius as isize, h) * w + x])
                        .sum();
                }
            }
        }
        // the kernel sums to 1 only up to rounding
        self.clamp();
    }

    pub fn solarize(&mut self, threshold: f32) {
        for v in &mut self.data {
            if *v >= threshold {
                *v = 1.0 - *v;
            }
        }
    }

    /// Writes `(x − mean) / std` per channel into `out`.
    pub fn normalize_into(&self, mean: &[f32], std: &[f32], out: &mut [f32]) {
        let n = self.plane_len();
        for (ch, (src, dst)) in self.data.chunks_exact(n).zip(out.chunks_exact_mut(n)).enumerate() {
            let m = if mean.len() == 1 { mean[0] } else { mean[ch] };
            let s = if std.len() == 1 { std[0] } else { std[ch] };
            for (d, v) in dst.iter_mut().zip(src) {
                *d = (v - m) / s;
            }
        }
    }
}

/// Source rows/columns and weight of output index `i` when a length `len`
/// is resized by `scale = len / size`.
fn taps(i: usize, scale: f32, len: usize) -> (usize, usize, f32) {
    let src = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (len - 1) as f32);
    let i0 = src.floor() as usize;
    let i1 = (i0 + 1).min(len - 1);
    (i0, i1, src - i0 as f32)
}

/// Index `i` reflected into `0..len` (PyTorch's `reflect`: the edge pixel is
/// not repeated).
fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let m = i.rem_euclid(period);
    (if m < len as isize { m } else { period - m }) as usize
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let h = if delta == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match (sector as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// The crop window `(top, left, height, width)` of a random resized crop, as
/// torchvision draws it: up to 10 tries of an area fraction uniform in
/// `scale` and a log-uniform aspect ratio, else a centre crop clamped to the
/// ratio range.
pub(crate) fn crop_window(rng: &mut impl Rng, height: usize, width: usize, cfg: &ViewConfig) -> (usize, usize, usize, usize) {
    let area = (height * width) as f32;
    let [s0, s1] = cfg.crop_scale;
    let (l0, l1) = (cfg.crop_ratio[0].ln(), cfg.crop_ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(rng, s0, s1);
        let ratio = uniform(rng, l0, l1).exp();
        let w = (target * ratio).sqrt().round() as usize;
        let h = (target / ratio).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f32 / height as f32;
    let (h, w) = if in_ratio < cfg.crop_ratio[0] {
        (((width as f32 / cfg.crop_ratio[0]).round() as usize).clamp(1, height), width)
    } else if in_ratio > cfg.crop_ratio[1] {
        (height, ((height as f32 * cfg.crop_ratio[1]).round() as usize).clamp(1, width))
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// Uniform in `[lo, hi]` (exactly `lo` when the range is empty).
pub(crate) fn uniform(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// The blur kernel side for a view of `size` pixels.
pub(crate) fn kernel_size(cfg: &ViewConfig, size: usize) -> usize {
    if cfg.blur_kernel_size > 0 {
        return cfg.blur_kernel_size;
    }
    let k = (0.1 * size as f32).round() as usize;
    (k | 1).max(3)
}

/// Applies the colour jitter: four factors drawn, applied in random order.
pub(crate) fn color_jitter(img: &mut Planar, cfg: &ViewConfig, rng: &mut impl Rng) {
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let factor = |rng: &mut _, a: f32| uniform(rng, (1.0 - a).max(0.0), 1.0 + a);
    let b = factor(rng, cfg.brightness);
    let c = factor(rng, cfg.contrast);
    let s = factor(rng, cfg.saturation);
    let h = uniform(rng, -cfg.hue, cfg.hue);
    for op in order {
        match op {
            0 => img.brightness(b),
            1 => img.contrast(c),
            2 => img.saturation(s),
            _ => img.hue(h),
        }
    }
}
