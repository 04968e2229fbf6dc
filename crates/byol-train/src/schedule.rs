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

/// The learning rate at step `k` of `total`: a linear warm-up from 0 to
/// `base` over the first `warmup` steps (the rate of step k is
/// `base·(k + 1)/warmup`, so the first step is not wasted), then `base`
/// (constant) or a cosine decay from `base` to `min` at the last step:
/// `min + (base − min)(1 + cos(π·t))/2` with `t` the fraction of the
/// post-warm-up steps done.
///
/// "we use a cosine decay learning rate schedule [...] with a warm-up
/// period of 10 epochs" [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.3].
pub fn learning_rate(
    step: usize,
    total: usize,
    warmup: usize,
    base: f64,
    min: f64,
    cosine: bool,
) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    if !cosine {
        return base;
    }
    let span = total.saturating_sub(warmup).max(1);
    let t = ((step - warmup) as f64 / span as f64).min(1.0);
    min + (base - min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_linearly_to_the_base_rate() {
        for (k, expected) in [0.2, 0.4, 0.6, 0.8].into_iter().enumerate() {
            let lr = learning_rate(k, 100, 4, 0.8, 0.0, true);
            assert!((lr - expected).abs() < 1e-12, "step {k}: {lr}");
        }
        assert_eq!(learning_rate(4, 100, 4, 0.8, 0.0, true), 0.8);
    }

    #[test]
    fn cosine_decays_from_base_to_min_monotonically() {
        let (total, warmup) = (200, 20);
        let mut last = f64::INFINITY;
        for k in warmup..=total {
            let lr = learning_rate(k, total, warmup, 1.0, 0.1, true);
            assert!(lr <= last + 1e-15, "rose at step {k}");
            last = lr;
        }
        assert!((learning_rate(total, total, warmup, 1.0, 0.1, true) - 0.1).abs() < 1e-12);
        // halfway through the decay: the mean of base and min
        assert!((learning_rate(110, total, warmup, 1.0, 0.1, true) - 0.55).abs() < 1e-12);
        // constant after the warm-up
        assert_eq!(learning_rate(150, total, warmup, 1.0, 0.1, false), 1.0);
    }

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
