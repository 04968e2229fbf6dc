//! Reading a run's `metrics.jsonl` through the type that writes it,
//! [`byol_train::metrics::Record`], into the series the charts draw.

use std::path::Path;

use byol_train::metrics::Record;

use crate::PlotError;

/// A `step` record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPoint {
    /// Optimizer steps done.
    pub step: usize,
    /// Epoch, from 1.
    pub epoch: usize,
    /// BYOL loss of the step (NaN when it was not finite).
    pub loss: f64,
    /// τ of the target update.
    pub tau: f64,
    /// Learning rate.
    pub lr: f64,
    /// Std of the normalised projections.
    pub z_std: f64,
    /// Effective rank of the batch of representations.
    pub effective_rank: f64,
}

/// An `epoch` record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Optimizer steps done at its end.
    pub step: usize,
    /// Mean loss over the epoch.
    pub loss: f64,
}

/// A `knn` record.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnPoint {
    /// `raw_pixels`, `random_init` or `epoch`.
    pub model: String,
    /// Epoch (0 before training).
    pub epoch: usize,
    /// Top-1 accuracy in [0, 1].
    pub top1: f64,
    /// Top-5 accuracy in [0, 1].
    pub top5: f64,
}

/// A line of `metrics.jsonl` that did not read as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// The line, from 1.
    pub line: usize,
    /// serde_json's reason (a line torn by a crash: "EOF while parsing").
    pub reason: String,
}

/// The records of a `metrics.jsonl`, by kind, in file order. Values that
/// were not finite when written read back as NaN; charts leave them out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// `{"kind":"step",...}` records.
    pub steps: Vec<StepPoint>,
    /// `{"kind":"epoch",...}` records.
    pub epochs: Vec<EpochPoint>,
    /// `{"kind":"knn",...}` records.
    pub knn: Vec<KnnPoint>,
    /// `{"kind":"online_linear",...}` records, as points of model
    /// `online_linear`.
    pub online_linear: Vec<KnnPoint>,
    /// Lines that are not records (torn by a crash, an unknown kind).
    pub skipped: Vec<SkippedLine>,
}

impl Metrics {
    /// Adds one record.
    pub fn push(&mut self, record: Record) {
        match record {
            Record::Step {
                step,
                epoch,
                loss,
                tau,
                lr,
                collapse,
                ..
            } => self.steps.push(StepPoint {
                step,
                epoch,
                loss: f64::from(loss),
                tau,
                lr,
                z_std: collapse.z_std,
                effective_rank: collapse.effective_rank,
            }),
            Record::Epoch {
                epoch, step, loss, ..
            } => self.epochs.push(EpochPoint { epoch, step, loss }),
            Record::Knn {
                model,
                epoch,
                top1,
                top5,
                ..
            } => self.knn.push(KnnPoint {
                model,
                epoch,
                top1,
                top5,
            }),
            Record::OnlineLinear {
                epoch, top1, top5, ..
            } => self.online_linear.push(KnnPoint {
                model: "online_linear".into(),
                epoch,
                top1,
                top5,
            }),
        }
    }

    /// The kNN records of the trained encoder (`model = "epoch"`).
    pub fn trained_knn(&self) -> impl Iterator<Item = &KnnPoint> {
        self.knn.iter().filter(|k| k.model == "epoch")
    }

    /// The top-1 of the baseline `model` (`raw_pixels` or `random_init`),
    /// when it was measured and finite.
    pub fn baseline_top1(&self, model: &str) -> Option<f64> {
        self.knn
            .iter()
            .find(|k| k.model == model)
            .map(|k| k.top1)
            .filter(|v| v.is_finite())
    }

    /// Optimizer steps per epoch, from the first epoch record.
    pub fn steps_per_epoch(&self) -> Option<usize> {
        self.epochs.first().map(|e| e.step).filter(|&s| s > 0)
    }
}

/// Parses `metrics.jsonl` text, one [`Record`] a line. Blank lines are
/// ignored; lines that are not records (a line torn by a crash, an unknown
/// kind) are listed in [`Metrics::skipped`].
pub fn parse_metrics(text: &str) -> Metrics {
    let mut m = Metrics::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(record) => m.push(record),
            Err(e) => m.skipped.push(SkippedLine {
                line: i + 1,
                reason: e.to_string(),
            }),
        }
    }
    m
}

/// Reads a run's `metrics.jsonl`; skipped lines are logged as a warning.
///
/// # Errors
///
/// [`PlotError::Metrics`] naming the file when it cannot be read, or when
/// it holds no step record (naming the first line that did not read, if
/// any).
pub fn read_metrics(path: &Path) -> Result<Metrics, PlotError> {
    let err = |line: Option<usize>, message: String| PlotError::Metrics {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(None, e.to_string()))?;
    let metrics = parse_metrics(&text);
    if let Some(first) = metrics.skipped.first() {
        tracing::warn!(
            path = %path.display(),
            "{} lines are not metrics records and were skipped (first: line {}, {})",
            metrics.skipped.len(),
            first.line,
            first.reason
        );
    }
    if metrics.steps.is_empty() {
        return Err(match metrics.skipped.first() {
            Some(first) => err(
                Some(first.line),
                format!("{}; no step record to plot", first.reason),
            ),
            None => err(None, "no step record to plot".into()),
        });
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use byol_train::collapse::CollapseMetrics;
    use byol_train::metrics::MetricsLog;

    fn step(step: usize, loss: f32, z_std: f64) -> Record {
        Record::Step {
            step,
            epoch: 1,
            loss,
            tau: 0.99,
            lr: 1e-3,
            images_per_sec: 100.0,
            data_wait_fraction: 0.0,
            collapse: CollapseMetrics {
                z_std,
                repr_variance: 1.0,
                effective_rank: 12.5,
            },
        }
    }

    #[test]
    fn records_round_trip_through_the_file_with_non_finite_values_as_nan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&path).expect("created");
        log.write(&Record::Knn {
            model: "raw_pixels".into(),
            epoch: 0,
            step: 0,
            top1: 0.769,
            top5: 0.975,
        })
        .expect("written");
        log.write(&step(5, 1.25, 0.06)).expect("written");
        log.write(&step(10, f32::NAN, f64::INFINITY))
            .expect("written");
        log.write(&Record::Epoch {
            epoch: 1,
            step: 10,
            loss: 1.1,
            seconds: 3.0,
            images_per_sec: 100.0,
            data_wait_fraction: 0.0,
        })
        .expect("written");
        log.write(&Record::OnlineLinear {
            epoch: 1,
            step: 10,
            train_loss: 2.1,
            top1: 0.42,
            top5: 0.9,
        })
        .expect("written");
        drop(log);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains(r#""loss":null"#),
            "serde_json writes a NaN as null: {text}"
        );

        let m = read_metrics(&path).expect("read back");
        assert!(m.skipped.is_empty(), "{:?}", m.skipped);
        assert_eq!(m.steps.len(), 2);
        assert_eq!(m.steps[0].loss, 1.25);
        assert_eq!(m.steps[0].z_std, 0.06);
        assert_eq!(m.steps[0].effective_rank, 12.5);
        assert_eq!(m.steps[0].lr, 1e-3, "floats read back exactly");
        assert!(m.steps[1].loss.is_nan(), "null reads back as NaN");
        assert!(
            m.steps[1].z_std.is_nan(),
            "so does a flattened collapse field"
        );
        assert_eq!(
            m.epochs,
            [EpochPoint {
                epoch: 1,
                step: 10,
                loss: 1.1
            }]
        );
        assert_eq!(m.baseline_top1("raw_pixels"), Some(0.769));
        assert_eq!(m.steps_per_epoch(), Some(10));
        assert_eq!(m.online_linear.len(), 1);
        assert_eq!(
            (m.online_linear[0].epoch, m.online_linear[0].top1),
            (1, 0.42)
        );
    }

    #[test]
    fn torn_and_unknown_lines_are_skipped_and_counted_with_their_line() {
        let good = serde_json::to_string(&step(5, 1.0, 0.05)).expect("json");
        let text = format!(
            "{good}\n\n{{\"kind\":\"mystery\",\"step\":6}}\n{good}\n{}",
            &good[..good.len() / 2]
        );
        let m = parse_metrics(&text);
        assert_eq!(m.steps.len(), 2);
        let lines: Vec<usize> = m.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [3, 5], "the unknown kind and the torn last line");
    }

    #[test]
    fn a_file_without_step_records_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, "{\"kind\":\"step\",\"st").expect("written");
        let e = read_metrics(&path).expect_err("nothing to plot");
        let text = e.to_string();
        assert!(
            text.contains("metrics.jsonl:1:") && text.contains("no step record"),
            "{text}"
        );
        let missing = read_metrics(&dir.path().join("none.jsonl")).expect_err("missing");
        assert!(missing.to_string().contains("none.jsonl"), "{missing}");
    }
}
