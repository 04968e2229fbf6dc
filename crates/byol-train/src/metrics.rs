//! `metrics.jsonl`: one JSON object per line, flushed as written so that a
//! crash loses nothing already logged.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Logged every `train.log_every` steps.
    Step {
        /// Optimizer steps done.
        step: usize,
        /// Epoch, from 1.
        epoch: usize,
        /// BYOL loss of this step.
        loss: f32,
        /// τ used for this step's target update.
        tau: f64,
        /// Learning rate of the step (encoder and projector group).
        lr: f64,
        /// Training throughput since the previous record.
        images_per_sec: f64,
        /// Fraction of the wall time since the previous record spent
        /// waiting for data.
        data_wait_fraction: f64,
        /// Collapse monitors of the step's batch (see
        /// [`crate::collapse`]).
        #[serde(flatten)]
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
        top1: f64,
        /// kNN top-5 accuracy.
        top5: f64,
    },
    /// End of an epoch.
    Epoch {
        /// Epoch, from 1.
        epoch: usize,
        /// Optimizer steps done.
        step: usize,
        /// Mean loss over the epoch's steps.
        loss: f64,
        /// Wall time of the epoch's training steps.
        seconds: f64,
        /// Images per second over the epoch.
        images_per_sec: f64,
        /// Fraction of the epoch's wall time spent waiting for data.
        data_wait_fraction: f64,
    },
}

/// Appends records to a `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
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
            out: BufWriter::new(file),
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
            out: BufWriter::new(file),
        })
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
        let line = serde_json::to_string(record).map_err(|e| err(e.to_string()))?;
        writeln!(self.out, "{line}").map_err(|e| err(e.to_string()))?;
        self.out.flush().map_err(|e| err(e.to_string()))
    }
}
