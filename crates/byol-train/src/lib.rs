//! Training BYOL: the loss, the τ schedule, the optimizers, the loop and its
//! checkpoints.
//!
//! The whole method, as [`byol_step`] runs it:
//! online = encoder + projector + predictor; target = encoder + projector,
//! updated by EMA ξ ← τξ + (1 − τ)θ after each optimizer step;
//! loss = ℓ(p₁, sg(z₂)) + ℓ(p₂, sg(z₁)) (the paper's sum, §3.1) with
//! ℓ = 2 − 2·cos
//! [BYOL, Grill et al. 2020, arXiv:2006.07733].

pub mod budget;
pub mod checkpoint;
pub mod collapse;
pub mod config;
pub mod evaluate;
pub mod lars;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod nodes;
pub mod optim;
pub mod parallel;
pub mod parity;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod stall;
pub mod step;
pub mod trainer;

pub use budget::{DataFacts, DeviceMemory, MemoryPlan, MonitorImages};
pub use config::{
    DataConfig, DataIdentity, EncoderKind, EvalConfig, LrScale, LrSchedule, ModelConfig,
    OptimizerKind, RunConfig, RunIdentity, TrainConfig,
};
pub use evaluate::{
    EmbedSummary, EvalReport, UseOptions, embed, eval_file, evaluate, evaluate_run,
};
pub use loss::{byol_loss, regression_loss};
pub use optim::{ByolOptimizer, OptimizerSettings};
pub use run::{LoadedEncoder, Network, Run};
pub use schedule::{learning_rate, tau};
pub use step::{Optimizers, StepOutput, StepSettings, byol_step};
pub use trainer::{
    PretrainOptions, RunPlan, RunSummary, StepCounts, StopSignal, plan_run, pretrain,
    pretrain_encoder, pretrain_on,
};

use std::path::PathBuf;

/// Errors of training runs.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is out of its range.
    #[error("invalid value for `{key}`: {value} (expected {expected})")]
    InvalidConfig {
        /// The full key, e.g. `train.tau_base`.
        key: String,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// The config file cannot be read or parsed.
    #[error("config {path}: {message}")]
    ConfigFile {
        /// The file.
        path: String,
        /// What went wrong (TOML errors show the line and key).
        message: String,
    },
    /// Reading the dataset failed.
    #[error(transparent)]
    Data(#[from] byol_data::DataError),
    /// The augmentation rejected its config.
    #[error(transparent)]
    Augment(#[from] byol_augment::AugmentError),
    /// The model rejected its config.
    #[error(transparent)]
    Model(#[from] byol_model::ModelError),
    /// `model.init_from` cannot be loaded into the encoder. The message
    /// holds the model error's (which names the file), so it is not also
    /// given as the source: a chain printed by anyhow would repeat it.
    #[error("model.init_from: {0}")]
    InitFrom(byol_model::ModelError),
    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] byol_eval::EvalError),
    /// The dataset cannot be used as configured.
    #[error("{0}")]
    Dataset(String),
    /// Writing run outputs failed.
    #[error("cannot write {path}: {message}")]
    Output {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "loss is {loss} at step {step}: training diverged (lower train.lr, or set train.grad_clip_norm); the last checkpoint before it is intact"
    )]
    NonFinite {
        /// The step.
        step: usize,
        /// The value.
        loss: f32,
    },
    /// The run was asked to stop (see [`StopSignal`]) and saved a
    /// checkpoint of its last step.
    #[error(
        "stopped at step {step} of {total}: checkpoint saved; continue with `cargo xtask pretrain --resume {}`{}",
        out.display(),
        if *nodes > 1 { format!(" on every one of the {nodes} nodes") } else { String::new() }
    )]
    Interrupted {
        /// The last step done and saved.
        step: usize,
        /// The run's last step.
        total: usize,
        /// The run folder.
        out: PathBuf,
        /// Machines of the run (`train.nodes`): each resumes.
        nodes: usize,
    },
    /// The projections collapsed (see `train.collapse_stop`).
    #[error(
        "representation collapse at step {step}: z-std {z_std:.5} stayed below train.collapse_stop = {threshold}; the last checkpoint is intact"
    )]
    Collapsed {
        /// The step.
        step: usize,
        /// The last z-std.
        z_std: f64,
        /// The threshold.
        threshold: f64,
    },
    /// Values could not be read back from the device.
    #[error("reading {what} back from the device: {message}")]
    ReadBack {
        /// What was read (`representations`, ...).
        what: &'static str,
        /// The backend's error.
        message: String,
    },
    /// A checkpoint file cannot be read.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A run cannot be resumed as asked.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// The data-parallel peers failed to register, exchange or finish
    /// (burn-collective), or a peer stopped.
    #[error("data-parallel peers: {0}")]
    Collective(String),
    /// The machines of a multi-node run could not join, or one was lost
    /// ([`nodes`]).
    #[error("several machines: {0}")]
    Nodes(String),
    /// The run would not fit in memory: refused before any work
    /// ([`MemoryPlan::check`]).
    #[error("{}", budget::refusal(*exceeded, *needed, *limit, parts))]
    TooLarge {
        /// Which limit the estimate exceeds.
        exceeded: budget::Exceeded,
        /// The estimate, bytes.
        needed: u64,
        /// The limit, bytes.
        limit: u64,
        /// The largest parts of the estimate, each with the config keys
        /// that size it and their values.
        parts: String,
    },
}
