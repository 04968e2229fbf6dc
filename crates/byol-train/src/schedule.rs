//! Per-step schedules, pure functions of (step, total steps).

/// The target decay rate at step `k` of `total`:
/// τ(k) = 1 − (1 − τ₀)(cos(πk/K) + 1)/2.
///
/// "we increase τ from τ_base to one during training [...]
/// τ ≜ 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 with k the current training step
/// and K the maximum number of training steps"
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.2]. Steps past `total`
/// give 1; `total = 0` gives τ₀.
pub fn tau(step: usize, total: usize, tau_base: f64) -> f64 {
    if total == 0 {
        return tau_base;
    }
    let progress = (step.min(total) as f64) / (total as f64);
    1.0 - (1.0 - tau_base) * ((std::f64::consts::PI * progress).cos() + 1.0) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tau_starts_at_base_and_reaches_one_at_last_step() {
        for base in [0.0, 0.9, 0.99, 0.996, 1.0] {
            assert!((tau(0, 1000, base) - base).abs() < 1e-12);
            assert!((tau(1000, 1000, base) - 1.0).abs() < 1e-12);
            assert!((tau(5000, 1000, base) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn tau_is_monotone_and_halfway_at_middle() {
        let total = 777;
        let mut last = tau(0, total, 0.99);
        for k in 1..=total {
            let t = tau(k, total, 0.99);
            assert!(t >= last, "tau decreased at step {k}");
            last = t;
        }
        assert!((tau(500, 1000, 0.99) - 0.995).abs() < 1e-12);
    }
}
