//! `metrics.jsonl`: one JSON object per line, flushed as written so that a
//! crash loses nothing already logged.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One line of `metrics.jsonl`, written by [`MetricsLog::write`] and read
/// back with serde_json (`byol_plot` charts them).
///
/// JSON has no NaN or infinity: serde_json writes such a float as `null`,
/// and a `null` reads back as NaN, so the record of a step that diverged
/// still reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Logged every `train.log_every` steps.
    Step {
        /// Optimizer steps done.
        step: usize,
        /// Epoch, from 1.
        epoch: usize,
        /// BYOL loss of this step.
        #[serde(deserialize_with = "null_as_nan")]
        loss: f32,
        /// τ used for this step's target update.
        #[serde(deserialize_with = "null_as_nan")]
        tau: f64,
        /// Learning rate of the step (encoder and projector group).
        #[serde(deserialize_with = "null_as_nan")]
        lr: f64,
        /// Training throughput since the previous record.
        #[serde(deserialize_with = "null_as_nan")]
        images_per_sec: f64,
        /// Fraction of the wall time since the previous record spent
        /// waiting for data.
        #[serde(deserialize_with = "null_as_nan")]
        data_wait_fraction: f64,
        /// Collapse monitors of the step's batch (see
        /// [`crate::collapse`]).
        #[serde(flatten, deserialize_with = "collapse_null_as_nan")]
        collapse: crate::collapse::CollapseMetrics,
    },
    /// A kNN evaluation.
    Knn {
        /// What was evaluated: `raw_pixels`, `random_init` or `epoch`.
        model: String,
        /// Epoch (0 before training).
        epoch: usize,
        /// Optimizer steps done.
        step: usize,
        /// kNN top-1 accuracy on the test split, in [0, 1].
        #[serde(deserialize_with = "null_as_nan")]
        top1: f64,
        /// kNN top-5 accuracy.
        #[serde(deserialize_with = "null_as_nan")]
        top5: f64,
    },
    /// The online linear classifier at an epoch end.
    OnlineLinear {
        /// Epoch, from 1.
        epoch: usize,
        /// Optimizer steps done.
        step: usize,
        /// Mean cross-entropy of its training steps in the epoch (on the
        /// augmented views it trained on).
        #[serde(deserialize_with = "null_as_nan")]
        train_loss: f64,
        /// Top-1 accuracy on the test split, in [0, 1].
        #[serde(deserialize_with = "null_as_nan")]
        top1: f64,
        /// Top-5 accuracy.
        #[serde(deserialize_with = "null_as_nan")]
        top5: f64,
    },
    /// End of an epoch.
    Epoch {
        /// Epoch, from 1.
        epoch: usize,
        /// Optimizer steps done.
        step: usize,
        /// Mean loss over the epoch's steps.
        #[serde(deserialize_with = "null_as_nan")]
        loss: f64,
        /// Wall time of the epoch's training steps.
        #[serde(deserialize_with = "null_as_nan")]
        seconds: f64,
        /// Images per second over the epoch.
        #[serde(deserialize_with = "null_as_nan")]
        images_per_sec: f64,
        /// Fraction of the epoch's wall time spent waiting for data.
        #[serde(deserialize_with = "null_as_nan")]
        data_wait_fraction: f64,
    },
}

/// A float type with a NaN, for [`null_as_nan`].
trait Float: Sized {
    const NAN: Self;
}

impl Float for f32 {
    const NAN: Self = f32::NAN;
}

impl Float for f64 {
    const NAN: Self = f64::NAN;
}

/// Reads a float that serde_json may have written as `null` (a NaN or an
/// infinity) as NaN.
fn null_as_nan<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Float,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or(T::NAN))
}

/// [`crate::collapse::CollapseMetrics`] read with [`null_as_nan`] (its
/// fields are flattened into the step record).
fn collapse_null_as_nan<'de, D>(d: D) -> Result<crate::collapse::CollapseMetrics, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Collapse {
        #[serde(deserialize_with = "null_as_nan")]
        z_std: f64,
        #[serde(deserialize_with = "null_as_nan")]
        repr_variance: f64,
        #[serde(deserialize_with = "null_as_nan")]
        effective_rank: f64,
    }
    let c = Collapse::deserialize(d)?;
    Ok(crate::collapse::CollapseMetrics {
        z_std: c.z_std,
        repr_variance: c.repr_variance,
        effective_rank: c.effective_rank,
    })
}

/// Appends records to a `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    /// `None`: [`MetricsLog::discard`].
    out: Option<BufWriter<File>>,
}

impl MetricsLog {
    /// Creates (or truncates) the file.
    ///
    /// # Errors
    ///
    /// [`TrainError::Output`] if it cannot be created.
    pub fn create(path: &Path) -> Result<Self, TrainError> {
        let file = File::create(path).map_err(|e| TrainError::Output {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(file)),
        })
    }

    /// Opens the log of an interrupted run to continue it from `step`: the
    /// records of later steps (written after the checkpoint the run resumes
    /// from) are dropped, the rest kept, and new records are appended.
    ///
    /// # Errors
    ///
    /// [`TrainError::Output`] if the file cannot be read or rewritten.
    pub fn resume(path: &Path, step: usize) -> Result<Self, TrainError> {
        let err = |e: String| TrainError::Output {
            path: path.to_path_buf(),
            message: e,
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut kept = String::new();
        for line in text.lines() {
            // a line torn by the crash does not parse: it goes too
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if value["step"].as_u64().is_some_and(|s| s as usize <= step) {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        crate::checkpoint::write_atomic(path, &kept)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(file)),
        })
    }

    /// A log that writes nothing: a node of a multi-node run other than
    /// rank 0, which keeps the run's folder.
    pub fn discard() -> Self {
        Self {
            path: PathBuf::new(),
            out: None,
        }
    }

    /// Writes one line and flushes it.
    ///
    /// # Errors
    ///
    /// [`TrainError::Output`] on a write failure.
    pub fn write(&mut self, record: &Record) -> Result<(), TrainError> {
        let err = |e: String| TrainError::Output {
            path: self.path.clone(),
            message: e,
        };
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        let line = serde_json::to_string(record).map_err(|e| err(e.to_string()))?;
        writeln!(out, "{line}").map_err(|e| err(e.to_string()))?;
        out.flush().map_err(|e| err(e.to_string()))
    }
}
