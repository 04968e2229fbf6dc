//! Gaussian blur: a separable kernel as torchvision's `gaussian_blur`, with
//! reflect padding (the edge pixel is not repeated).

/// The kernel side of a view of `size` pixels: `configured` when not 0, else
/// 10% of `size` rounded, made odd (rounded up), at least 3.
pub(crate) fn kernel_size(configured: usize, size: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    (((size + 5) / 10) | 1).max(3)
}

/// Fills `kernel` with `len` normalised gaussian weights of standard
/// deviation `sigma`, centred: `exp(-x² / 2σ²)` at
/// `x = -(len-1)/2 ..= (len-1)/2`. A `sigma` that is not positive gives the
/// identity kernel.
pub(crate) fn gaussian_kernel(len: usize, sigma: f32, kernel: &mut Vec<f32>) {
    let sigma = if sigma > 0.0 {
        sigma
    } else {
        f32::MIN_POSITIVE
    };
    let half = (len as f32 - 1.0) / 2.0;
    kernel.clear();
    kernel.extend((0..len).map(|i| {
        let x = (i as f32 - half) / sigma;
        (-0.5 * x * x).exp()
    }));
    let sum: f32 = kernel.iter().sum();
    for k in kernel.iter_mut() {
        *k /= sum;
    }
}

/// Index `i` reflected into `0..len` without repeating the edge
/// (`-1 -> 1`, `len -> len - 2`), periodically for indices further out.
pub(crate) fn reflect(i: isize, len: usize) -> usize {
    if len <= 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let m = i.rem_euclid(period);
    (if m < len as isize { m } else { period - m }) as usize
}

/// Scratch space of [`blur`].
#[derive(Debug, Default)]
pub(crate) struct BlurScratch {
    kernel: Vec<f32>,
    /// (offset from the first tap, weight) of the taps that add something.
    taps: Vec<(usize, f32)>,
    /// (start in the source, weight) of the rows under the taps.
    rows: Vec<(usize, f32)>,
    plane: Vec<f32>,
    line: Vec<f32>,
}

/// Blurs every `height × width` plane of `data` with a gaussian of
/// standard deviation `sigma` and side `kernel_len` (odd), reflect padded;
/// values are clamped back into `[0, 1]` against rounding.
///
/// Each output is the sum of the kernel's products taken in kernel order,
/// as [`reference::blur`] (the plain loop) computes it, so the result is the
/// same to the bit. The loops run over blocks of outputs kept in registers
/// while every tap is added, which the compiler vectorises; taps
/// whose weight is exactly 0 (the tails of a narrow gaussian, below `f32`'s
/// range) are skipped, which adds nothing to a sum of non-negative values.
/// The values must be in `[0, 1]` (the views' range), where every product
/// is `+0.0` or more. Inlined, so that it is compiled into the caller's
/// [`crate::simd`] copy.
#[inline(always)]
pub(crate) fn blur(
    data: &mut [f32],
    height: usize,
    width: usize,
    sigma: f32,
    kernel_len: usize,
    scratch: &mut BlurScratch,
) {
    let n = height * width;
    if n == 0 {
        return;
    }
    gaussian_kernel(kernel_len, sigma, &mut scratch.kernel);
    let radius = kernel_len / 2;
    scratch.taps.clear();
    let nonzero = scratch.kernel.iter().copied().enumerate();
    scratch.taps.extend(nonzero.filter(|&(_, k)| k != 0.0));
    let taps = &scratch.taps;
    scratch.plane.resize(n, 0.0);
    let tmp = &mut scratch.plane;
    let line = &mut scratch.line;
    let rows = &mut scratch.rows;
    for plane in data.chunks_exact_mut(n) {
        // horizontal: each row padded into `line`, then convolved into `tmp`
        for (src, dst) in plane.chunks_exact(width).zip(tmp.chunks_exact_mut(width)) {
            pad_reflect(src, radius, line);
            sum_of_shifted(line, taps, dst);
        }
        // vertical: for each output row, the rows of `tmp` under the taps
        for (y, dst) in plane.chunks_exact_mut(width).enumerate() {
            rows.clear();
            rows.extend(taps.iter().map(|&(k, w)| {
                let sy = reflect(y as isize + k as isize - radius as isize, height);
                (sy * width, w)
            }));
            sum_of_shifted(tmp, rows, dst);
            for d in dst.iter_mut() {
                *d = d.clamp(0.0, 1.0);
            }
        }
    }
}

/// `dst[x] = Σ w · src[start + x]` over `terms` = (start, w), the terms
/// added in their order to 0. Blocks of 64, then 16 outputs (four and one
/// AVX-512 registers) stay in registers while every term is added; the
/// last few go one by one.
#[inline(always)]
fn sum_of_shifted(src: &[f32], terms: &[(usize, f32)], dst: &mut [f32]) {
    let mut x0 = 0;
    let mut wide = dst.chunks_exact_mut(64);
    for block in &mut wide {
        sum_block::<64>(src, terms, x0, block);
        x0 += 64;
    }
    let mut narrow = wide.into_remainder().chunks_exact_mut(16);
    for block in &mut narrow {
        sum_block::<16>(src, terms, x0, block);
        x0 += 16;
    }
    let rest = narrow.into_remainder();
    let len = rest.len();
    rest.fill(0.0);
    for &(start, w) in terms {
        let from = start + x0;
        for (a, v) in rest.iter_mut().zip(&src[from..from + len]) {
            *a += w * v;
        }
    }
}

/// One block of `N` outputs of [`sum_of_shifted`] from `x0` on, summed in
/// a local array the compiler keeps in registers.
#[inline(always)]
fn sum_block<const N: usize>(src: &[f32], terms: &[(usize, f32)], x0: usize, dst: &mut [f32]) {
    let mut acc = [0f32; N];
    for &(start, w) in terms {
        let from = start + x0;
        for (a, v) in acc.iter_mut().zip(&src[from..from + N]) {
            *a += w * v;
        }
    }
    dst.copy_from_slice(&acc);
}

/// `src` with `radius` values reflected (without repeating the edge) on
/// each side, into `line`: the interior copied whole, only the margins
/// reflected one by one.
fn pad_reflect(src: &[f32], radius: usize, line: &mut Vec<f32>) {
    let width = src.len();
    line.clear();
    line.extend((0..radius).map(|i| src[reflect(i as isize - radius as isize, width)]));
    line.extend_from_slice(src);
    line.extend((0..radius).map(|i| src[reflect((width + i) as isize, width)]));
}

/// The plain loops [`blur`] must agree with, bit for bit.
#[cfg(test)]
pub(crate) mod reference {
    use super::{gaussian_kernel, reflect};

    /// Horizontal then vertical pass, each output a dot product of the
    /// kernel with the reflect-padded neighbourhood, in kernel order.
    pub(crate) fn blur(data: &mut [f32], height: usize, width: usize, sigma: f32, len: usize) {
        let n = height * width;
        let mut kernel = Vec::new();
        gaussian_kernel(len, sigma, &mut kernel);
        let radius = (len / 2) as isize;
        let mut tmp = vec![0f32; n];
        for plane in data.chunks_exact_mut(n) {
            for (src, dst) in plane.chunks_exact(width).zip(tmp.chunks_exact_mut(width)) {
                let line: Vec<f32> = (-radius..width as isize + radius)
                    .map(|i| src[reflect(i, width)])
                    .collect();
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = kernel.iter().zip(&line[x..]).map(|(k, v)| k * v).sum();
                }
            }
            for (y, dst) in plane.chunks_exact_mut(width).enumerate() {
                dst.fill(0.0);
                for (k, &kv) in kernel.iter().enumerate() {
                    let sy = reflect(y as isize + k as isize - radius, height);
                    for (d, s) in dst.iter_mut().zip(&tmp[sy * width..(sy + 1) * width]) {
                        *d += kv * s;
                    }
                }
                for d in dst.iter_mut() {
                    *d = d.clamp(0.0, 1.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variance(v: &[f32]) -> f32 {
        let m = v.iter().sum::<f32>() / v.len() as f32;
        v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / v.len() as f32
    }

    fn checkerboard(side: usize) -> Vec<f32> {
        (0..side * side)
            .map(|i| ((i % side + i / side) % 2) as f32)
            .collect()
    }

    #[test]
    fn automatic_kernel_is_a_tenth_of_the_size_odd_and_at_least_3() {
        assert_eq!(kernel_size(0, 224), 23);
        assert_eq!(kernel_size(0, 96), 11);
        assert_eq!(kernel_size(0, 50), 5);
        assert_eq!(kernel_size(0, 32), 3);
        assert_eq!(kernel_size(0, 28), 3);
        assert_eq!(kernel_size(0, 8), 3);
        assert_eq!(kernel_size(7, 28), 7);
    }

    #[test]
    fn kernel_matches_torchvision_for_sigma_1() {
        // torchvision _get_gaussian_kernel1d(3, 1.0)
        let mut k = Vec::new();
        gaussian_kernel(3, 1.0, &mut k);
        let expected = [0.274_068_6, 0.451_862_8, 0.274_068_6];
        assert!(
            k.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6),
            "{k:?}"
        );
        gaussian_kernel(5, 0.0, &mut k);
        assert_eq!(k, vec![0.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn reflection_does_not_repeat_the_edge() {
        let padded: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(padded, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(reflect(-5, 1), 0);
    }

    #[test]
    fn blur_reduces_the_variance_of_a_checkerboard() {
        let mut d = checkerboard(16);
        let before = variance(&d);
        blur(&mut d, 16, 16, 1.0, 3, &mut BlurScratch::default());
        let after = variance(&d);
        // each axis scales the alternation by 0.452 - 2·0.274 ≈ -0.096
        assert!(after < 0.05 * before, "{after} vs {before}");
        assert!(d.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn blur_preserves_a_constant_image_in_every_plane() {
        let mut d: Vec<f32> = [0.2f32, 0.7, 1.0]
            .iter()
            .flat_map(|&v| vec![v; 5 * 6])
            .collect();
        // kernel wider than the image exercises repeated reflection
        blur(&mut d, 5, 6, 2.0, 11, &mut BlurScratch::default());
        for (i, v) in d.iter().enumerate() {
            let expected = [0.2, 0.7, 1.0][i / 30];
            assert!((v - expected).abs() < 1e-6, "{i}: {v}");
        }
    }

    #[test]
    fn blur_of_an_impulse_is_the_separable_kernel() {
        let mut d = vec![0.0f32; 49];
        d[24] = 1.0;
        blur(&mut d, 7, 7, 1.0, 3, &mut BlurScratch::default());
        let mut k = Vec::new();
        gaussian_kernel(3, 1.0, &mut k);
        for y in 0..7 {
            for x in 0..7 {
                let (dy, dx) = (y as isize - 3, x as isize - 3);
                let expected = if dy.abs() <= 1 && dx.abs() <= 1 {
                    k[(dy + 1) as usize] * k[(dx + 1) as usize]
                } else {
                    0.0
                };
                assert!((d[y * 7 + x] - expected).abs() < 1e-6, "({y}, {x})");
            }
        }
    }

    #[test]
    fn blur_is_bitwise_the_plain_loops_for_every_sigma_and_shape() {
        let mut state = 1u64;
        let mut next = || {
            state = crate::splitmix64(state);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        for (h, w, c, len) in [
            (28, 28, 1, 3),
            (16, 9, 3, 7),
            (224, 224, 3, 23),
            (5, 6, 1, 11),
        ] {
            let data: Vec<f32> = (0..h * w * c).map(|_| next()).collect();
            for sigma in [0.1, 0.3, 0.76, 1.0, 2.0] {
                let mut fast = data.clone();
                blur(&mut fast, h, w, sigma, len, &mut BlurScratch::default());
                let mut plain = data.clone();
                reference::blur(&mut plain, h, w, sigma, len);
                let same = fast
                    .iter()
                    .zip(&plain)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{h}×{w}×{c}, kernel {len}, sigma {sigma}");
            }
        }
    }
}
