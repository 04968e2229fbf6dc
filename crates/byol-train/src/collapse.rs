//! Collapse monitors, computed on the host from one batch at each logged
//! step.
//!
//! BYOL can collapse to a constant representation; these numbers show it
//! early. "z-std": the standard deviation over the batch of each dimension
//! of the L2-normalised projections, averaged over dimensions — 0 when every
//! projection is the same, about 1/√d for projections spread over the unit
//! sphere (as lightly's `std_of_l2_normalized`). "Representation variance":
//! the mean over dimensions of the batch variance of the encoder output.
//! "Effective rank": exp of the entropy of the normalised singular values of
//! the centred batch of representations [Roy & Vetterli 2007]: 1 for a
//! rank-one batch, up to min(batch, dim).

use serde::{Deserialize, Serialize};

/// The three monitors of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CollapseMetrics {
    /// Std of the L2-normalised projections (healthy ≈ 1/√d, collapse → 0).
    pub z_std: f64,
    /// Mean per-dimension variance of the encoder output.
    pub repr_variance: f64,
    /// Effective rank of the batch of encoder outputs.
    pub effective_rank: f64,
}

/// Monitors of a batch: `representations` is `[batch, dim]` row-major,
/// `projections` `[batch, proj_dim]`.
///
/// # Panics
///
/// When a slice is not a whole number of rows.
pub fn collapse_metrics(
    representations: &[f32],
    dim: usize,
    projections: &[f32],
    proj_dim: usize,
) -> CollapseMetrics {
    CollapseMetrics {
        z_std: z_std(projections, proj_dim),
        repr_variance: mean_variance(representations, dim),
        effective_rank: effective_rank(representations, dim),
    }
}

/// Rows as f64, checked.
fn rows(values: &[f32], dim: usize) -> Vec<Vec<f64>> {
    assert!(
        dim > 0 && values.len().is_multiple_of(dim),
        "values should be whole rows of {dim}"
    );
    values
        .chunks_exact(dim)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect()
}

/// Per-dimension (mean, unbiased variance) over the rows.
fn column_stats(rows: &[Vec<f64>], dim: usize) -> Vec<(f64, f64)> {
    let n = rows.len() as f64;
    (0..dim)
        .map(|j| {
            let mean = rows.iter().map(|r| r[j]).sum::<f64>() / n;
            let ss = rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>();
            (mean, if n > 1.0 { ss / (n - 1.0) } else { 0.0 })
        })
        .collect()
}

/// See [`CollapseMetrics::z_std`].
pub fn z_std(projections: &[f32], dim: usize) -> f64 {
    let mut rows = rows(projections, dim);
    if rows.is_empty() {
        return 0.0;
    }
    for r in &mut rows {
        let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= norm);
    }
    column_stats(&rows, dim)
        .iter()
        .map(|(_, var)| var.sqrt())
        .sum::<f64>()
        / dim as f64
}

/// See [`CollapseMetrics::repr_variance`].
pub fn mean_variance(values: &[f32], dim: usize) -> f64 {
    let rows = rows(values, dim);
    if rows.is_empty() {
        return 0.0;
    }
    column_stats(&rows, dim).iter().map(|(_, v)| v).sum::<f64>() / dim as f64
}

/// See [`CollapseMetrics::effective_rank`].
pub fn effective_rank(values: &[f32], dim: usize) -> f64 {
    let mut rows = rows(values, dim);
    let n = rows.len();
    if n == 0 {
        return 0.0;
    }
    let stats = column_stats(&rows, dim);
    for r in &mut rows {
        for (v, (mean, _)) in r.iter_mut().zip(&stats) {
            *v -= mean;
        }
    }
    // the smaller of the Gram (n × n) and covariance (dim × dim) matrices:
    // both have the squared singular values as eigenvalues
    let m = n.min(dim);
    let mut g = vec![0.0; m * m];
    for a in 0..m {
        for b in a..m {
            let v = if n <= dim {
                rows[a]
                    .iter()
                    .zip(&rows[b])
                    .map(|(x, y)| x * y)
                    .sum::<f64>()
            } else {
                rows.iter().map(|r| r[a] * r[b]).sum::<f64>()
            };
            g[a * m + b] = v;
            g[b * m + a] = v;
        }
    }
    let singular: Vec<f64> = symmetric_eigenvalues(g, m)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    let total: f64 = singular.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = singular
        .iter()
        .map(|s| s / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    entropy.exp()
}

/// Eigenvalues of a symmetric `m × m` matrix by cyclic Jacobi rotations.
fn symmetric_eigenvalues(mut a: Vec<f64>, m: usize) -> Vec<f64> {
    let scale: f64 = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    for _sweep in 0..50 {
        let off: f64 = (0..m)
            .flat_map(|i| (0..m).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * m + j].powi(2))
            .sum();
        if off.sqrt() <= 1e-12 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..m {
            for q in p + 1..m {
                let apq = a[p * m + q];
                if apq.abs() < f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..m {
                    let akp = a[k * m + p];
                    let akq = a[k * m + q];
                    a[k * m + p] = c * akp - s * akq;
                    a[k * m + q] = s * akp + c * akq;
                }
                for k in 0..m {
                    let apk = a[p * m + k];
                    let aqk = a[q * m + k];
                    a[p * m + k] = c * apk - s * aqk;
                    a[q * m + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..m).map(|i| a[i * m + i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * d)
            .map(|_| {
                // Box–Muller: standard normal values
                let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }

    #[test]
    fn collapsed_projections_have_zero_z_std_and_spread_ones_about_one_over_sqrt_d() {
        let same: Vec<f32> = [0.3f32, -1.0, 2.0, 0.5].repeat(64);
        assert!(z_std(&same, 4) < 1e-9);
        let d = 64;
        let spread = z_std(&random(512, d, 1), d);
        let healthy = 1.0 / (d as f64).sqrt();
        assert!(
            (spread - healthy).abs() < 0.1 * healthy,
            "{spread} vs {healthy}"
        );
    }

    #[test]
    fn effective_rank_counts_independent_directions() {
        // rank one: every row a multiple of the same vector
        let rank_one: Vec<f32> = (0..32)
            .flat_map(|i| [1.0f32, 2.0, -1.0, 0.5].map(|v| v * (i as f32 - 15.5)))
            .collect();
        assert!((effective_rank(&rank_one, 4) - 1.0).abs() < 1e-6);
        // two orthogonal directions with equal energy: rank 2
        let two: Vec<f32> = (0..40)
            .flat_map(|i| match i % 4 {
                0 => [1.0f32, 0.0, 0.0],
                1 => [-1.0, 0.0, 0.0],
                2 => [0.0, 1.0, 0.0],
                _ => [0.0, -1.0, 0.0],
            })
            .collect();
        assert!((effective_rank(&two, 3) - 2.0).abs() < 1e-6);
        // isotropic noise in 16 dims, many rows: close to 16
        let r = effective_rank(&random(400, 16, 2), 16);
        assert!(r > 14.5 && r <= 16.0 + 1e-9, "{r}");
        // more dims than rows: at most the number of rows (centred: rows - 1)
        let r = effective_rank(&random(8, 64, 3), 64);
        assert!(r <= 7.0 + 1e-6 && r > 5.0, "{r}");
    }

    #[test]
    fn jacobi_finds_known_eigenvalues() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3
        let mut e = symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2);
        e.sort_by(f64::total_cmp);
        assert!(
            (e[0] - 1.0).abs() < 1e-12 && (e[1] - 3.0).abs() < 1e-12,
            "{e:?}"
        );
    }

    #[test]
    fn variance_is_the_mean_of_unbiased_column_variances() {
        // column 0: 1, 3 (var 2); column 1: 0, 0 (var 0)
        assert!((mean_variance(&[1.0, 0.0, 3.0, 0.0], 2) - 1.0).abs() < 1e-12);
    }
}
