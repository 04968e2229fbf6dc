//! The collapse guard: a representation whose normalised projections all
//! point the same way (z-std → 0) has collapsed, and BYOL cannot recover
//! from it. The guard watches the z-std at each logged step and warns, or
//! stops the run with `train.collapse_stop > 0`, after
//! `train.collapse_patience` low intervals in a row.

use crate::TrainConfig;

/// What the guard says of one logged interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Nothing to report.
    Healthy,
    /// Low for `patience` intervals in a row: warn once.
    Warn,
    /// Low for `patience` intervals with `collapse_stop` set: stop.
    Stop {
        /// The threshold crossed.
        threshold: f64,
    },
}

/// The guard's settings (its count of low intervals lives in the run's
/// state, so that a resumed run keeps it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CollapseGuard {
    /// z-std under which an interval counts as low.
    pub(crate) threshold: f64,
    /// Whether reaching the patience stops the run (else it warns).
    pub(crate) stops: bool,
    /// Low intervals in a row before the verdict.
    pub(crate) patience: usize,
    /// z-std of a healthy representation, 1/√d, for the warning.
    pub(crate) healthy: f64,
}

impl CollapseGuard {
    /// The guard of `train` for `projection_dim`-d projections: the
    /// threshold is `collapse_stop`, or 0.1/√d when only warning.
    pub(crate) fn new(train: &TrainConfig, projection_dim: usize) -> Self {
        let healthy = 1.0 / (projection_dim as f64).sqrt();
        let stops = train.collapse_stop > 0.0;
        Self {
            threshold: if stops {
                train.collapse_stop
            } else {
                0.1 * healthy
            },
            stops,
            patience: train.collapse_patience,
            healthy,
        }
    }

    /// Counts one logged interval of `z_std` into `low` (the low
    /// intervals in a row so far) and says what to do.
    pub(crate) fn observe(&self, low: &mut usize, z_std: f64) -> Verdict {
        if z_std < self.threshold {
            *low += 1;
        } else {
            *low = 0;
        }
        if *low < self.patience {
            Verdict::Healthy
        } else if self.stops {
            Verdict::Stop {
                threshold: self.threshold,
            }
        } else if *low == self.patience {
            Verdict::Warn
        } else {
            // warned already for this stretch
            Verdict::Healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(stop: f64, patience: usize) -> CollapseGuard {
        let train = TrainConfig {
            collapse_stop: stop,
            collapse_patience: patience,
            ..TrainConfig::default()
        };
        CollapseGuard::new(&train, 100)
    }

    #[test]
    fn warns_once_per_stretch_of_low_intervals_without_collapse_stop() {
        let g = guard(0.0, 2);
        assert!((g.threshold - 0.01).abs() < 1e-12, "0.1/√100");
        let mut low = 0;
        let verdicts: Vec<Verdict> = [0.001, 0.001, 0.001, 0.5, 0.001, 0.001]
            .iter()
            .map(|&z| g.observe(&mut low, z))
            .collect();
        use Verdict::{Healthy, Warn};
        assert_eq!(verdicts, [Healthy, Warn, Healthy, Healthy, Healthy, Warn]);
    }

    #[test]
    fn stops_after_the_patience_with_collapse_stop_and_a_healthy_interval_resets() {
        let g = guard(0.05, 3);
        let mut low = 0;
        assert_eq!(g.observe(&mut low, 0.01), Verdict::Healthy);
        assert_eq!(g.observe(&mut low, 0.01), Verdict::Healthy);
        assert_eq!(g.observe(&mut low, 0.06), Verdict::Healthy);
        assert_eq!(low, 0);
        for _ in 0..2 {
            g.observe(&mut low, 0.01);
        }
        assert_eq!(g.observe(&mut low, 0.01), Verdict::Stop { threshold: 0.05 });
    }
}
