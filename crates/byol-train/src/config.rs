//! The run configuration: one TOML file, every key documented in
//! `docs/configs.md`, unknown keys rejected.
//!
//! burn's `#[config(default = ..)]` is not applied when a TOML file omits a
//! field, so run configs are plain serde structs with `Default` impls.

use std::path::{Path, PathBuf};

use byol_augment::AugmentConfig;
use byol_data::{Cifar100Labels, Format, OnCorrupt, Split};
use byol_eval::{KnnConfig, ProbeConfig};
use byol_model::{HeadsConfig, NormKind, Precision, ResNetConfig, Stem};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Everything a pretraining run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Seed of weights, shuffling and augmentation.
    pub seed: u64,
    /// Where the images come from.
    pub data: DataConfig,
    /// The two random views.
    pub augment: AugmentConfig,
    /// Encoder and heads.
    pub model: ModelConfig,
    /// Optimisation.
    pub train: TrainConfig,
    /// Monitoring.
    pub eval: EvalConfig,
}

/// The settings that define what a run is: a resumed run must have the
/// same, compared with `==`, or its checkpoints would continue another
/// run (other weights' shapes, other batches, other views). Everything
/// else in [`RunConfig`] (epochs, learning rate, τ₀, logging, kNN, the
/// loader's prefetch) may change between sessions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunIdentity {
    /// `seed`: initial weights, shuffles and views.
    pub seed: u64,
    /// `[data]` without `prefetch`: which images, in which order.
    pub data: DataIdentity,
    /// `[model]`: the networks' shapes and initial weights.
    pub model: ModelConfig,
    /// `[augment]`: the views.
    pub augment: AugmentConfig,
    /// `train.batch_size`: which images form each micro-batch.
    pub batch_size: usize,
    /// `train.accumulate`: micro-batches per step, so which images form
    /// each step.
    pub accumulate: usize,
    /// `train.use_momentum`: whether a target network exists.
    pub use_momentum: bool,
    /// `train.precision`: the number format of the products, which changes
    /// every step's numbers.
    pub precision: Precision,
}

/// The part of [`DataConfig`] that belongs to a run's [`RunIdentity`]:
/// every field but `prefetch`, which changes only how far ahead the
/// loader works.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataIdentity {
    /// `data.path`.
    pub path: PathBuf,
    /// `data.format`.
    pub format: Format,
    /// `data.pretrain_split`.
    pub pretrain_split: Split,
    /// `data.on_corrupt`.
    pub on_corrupt: OnCorrupt,
    /// `data.cifar100_labels`.
    pub cifar100_labels: Cifar100Labels,
    /// `data.train_limit`.
    pub train_limit: usize,
    /// `data.test_limit`.
    pub test_limit: usize,
}

impl RunIdentity {
    /// The identity of `config`.
    pub fn of(config: &RunConfig) -> Self {
        // destructured whole, so that a new [data] key must be placed
        // here or explicitly left out
        let DataConfig {
            path,
            format,
            pretrain_split,
            on_corrupt,
            cifar100_labels,
            train_limit,
            test_limit,
            prefetch: _,
        } = config.data.clone();
        Self {
            seed: config.seed,
            data: DataIdentity {
                path,
                format,
                pretrain_split,
                on_corrupt,
                cifar100_labels,
                train_limit,
                test_limit,
            },
            model: config.model.clone(),
            augment: config.augment.clone(),
            batch_size: config.train.batch_size,
            accumulate: config.train.accumulate,
            use_momentum: config.train.use_momentum,
            precision: config.train.precision,
        }
    }

    /// The config keys (dotted, as in `--set`) whose values differ between
    /// `self` and `other`, each as `key: run has A, now B`; empty when the
    /// two are equal.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        if self == other {
            return Vec::new();
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        flatten_json("", &self.as_json(), &mut a);
        flatten_json("", &other.as_json(), &mut b);
        let mut keys: Vec<&String> = a.iter().chain(&b).map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        let get = |t: &[(String, String)], k: &str| {
            t.iter()
                .find(|(key, _)| key == k)
                .map_or_else(|| "(unset)".to_string(), |(_, v)| v.clone())
        };
        keys.into_iter()
            .filter(|k| get(&a, k) != get(&b, k))
            .map(|k| format!("{k}: run has {}, now {}", get(&a, k), get(&b, k)))
            .collect()
    }

    /// As JSON under the config's own key names (`batch_size`,
    /// `accumulate`, `use_momentum` and `precision` under `train`).
    fn as_json(&self) -> serde_json::Value {
        serde_json::json!({
            "seed": self.seed,
            "data": self.data,
            "model": self.model,
            "augment": self.augment,
            "train": {
                "batch_size": self.batch_size,
                "accumulate": self.accumulate,
                "use_momentum": self.use_momentum,
                "precision": self.precision,
            },
        })
    }
}

/// `value`'s leaves as (dotted key, value as text).
fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&key, v, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.to_string())),
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder of the dataset, relative to the working directory.
    pub path: PathBuf,
    /// Format of the files in `path`; `auto` detects it from the files.
    pub format: Format,
    /// The split pretraining reads: `train`, or for STL-10 `unlabeled` or
    /// `train_unlabeled` (the 105,000 images). kNN always uses `train` as
    /// memory and `test` as queries.
    pub pretrain_split: Split,
    /// Image folders: `fail` (stop before training, listing every bad file
    /// found) or `skip` (drop bad files, log each, count them).
    pub on_corrupt: OnCorrupt,
    /// CIFAR-100: `fine` (100 classes) or `coarse` (20) labels.
    pub cifar100_labels: Cifar100Labels,
    /// Use only the first N pretraining images (0 = all).
    pub train_limit: usize,
    /// Use only the first N test images for kNN (0 = all).
    pub test_limit: usize,
    /// Batches decoded and augmented ahead of the model (at least 1).
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/fashion-mnist-sample"),
            format: Format::Auto,
            pretrain_split: Split::Train,
            on_corrupt: OnCorrupt::Fail,
            cifar100_labels: Cifar100Labels::Fine,
            train_limit: 0,
            test_limit: 0,
            prefetch: 2,
        }
    }
}

/// Encoder architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// Three stages of one basic block, 32/64/128 planes (CPU default).
    Small,
    /// torchvision ResNet-18.
    Resnet18,
    /// torchvision ResNet-34.
    Resnet34,
    /// torchvision ResNet-50.
    Resnet50,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Encoder architecture.
    pub encoder: EncoderKind,
    /// Stem: `imagenet` (7×7/2 + max-pool), `cifar` (3×3/1), `small` (3×3/2).
    pub stem: Stem,
    /// Multiplies every encoder width.
    pub width_multiplier: usize,
    /// Encoder normalisation: `batch`, `group_ws` (GroupNorm + weight
    /// standardisation) or `none`.
    pub norm: NormKind,
    /// GroupNorm groups with `norm = "group_ws"`.
    pub norm_groups: usize,
    /// Hidden width of the projector MLP.
    pub projector_hidden: usize,
    /// Output of the projector and predictor.
    pub projection_dim: usize,
    /// Hidden width of the predictor MLP.
    pub predictor_hidden: usize,
    /// BatchNorm in the hidden layer of projector and predictor.
    pub head_batchnorm: bool,
    /// Start pretraining from these encoder weights: a safetensors file
    /// with torchvision's keys (an export of `cargo xtask export`, or a
    /// torchvision ResNet's `state_dict`). Empty = fresh weights.
    pub init_from: PathBuf,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            encoder: EncoderKind::Small,
            stem: Stem::Small,
            width_multiplier: 1,
            norm: NormKind::Batch,
            norm_groups: 32,
            projector_hidden: 512,
            projection_dim: 128,
            predictor_hidden: 512,
            head_batchnorm: true,
            init_from: PathBuf::new(),
        }
    }
}

impl ModelConfig {
    /// The encoder for images with `in_channels` channels.
    pub fn encoder_config(&self, in_channels: usize) -> ResNetConfig {
        let base = match self.encoder {
            EncoderKind::Small => ResNetConfig::small(),
            EncoderKind::Resnet18 => ResNetConfig::resnet18(),
            EncoderKind::Resnet34 => ResNetConfig::resnet34(),
            EncoderKind::Resnet50 => ResNetConfig::resnet50(),
        };
        base.with_stem(self.stem)
            .with_in_channels(in_channels)
            .with_width_multiplier(self.width_multiplier)
            .with_norm(self.norm, self.norm_groups)
    }

    /// The projector and predictor sizes.
    pub fn heads_config(&self) -> HeadsConfig {
        HeadsConfig::new(
            self.projector_hidden,
            self.projection_dim,
            self.predictor_hidden,
        )
        .with_batch_norm(self.head_batchnorm)
    }
}

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (β = 0.9, 0.999, ε = 1e-8 as PyTorch), L2 weight decay.
    Adam,
    /// AdamW (as Adam, decoupled weight decay).
    Adamw,
    /// SGD with momentum (no dampening, as PyTorch), L2 weight decay.
    Sgd,
    /// LARS (the paper's), see [`crate::lars`].
    Lars,
}

/// Learning-rate schedule after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Cosine decay from the base rate to `min_lr` at the last step.
    Cosine,
}

/// How the base learning rate depends on the batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScale {
    /// `lr` as written.
    None,
    /// `lr × batch_size / 256` (the paper's rule).
    Linear,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per forward and backward pass (each gives two views); a step
    /// takes `accumulate` of them. Incomplete last batches are dropped.
    pub batch_size: usize,
    /// Gradient accumulation: micro-batches of `batch_size` whose
    /// gradients are summed (each loss divided by `accumulate`) before one
    /// optimizer step and one target update, so a step sees an effective
    /// batch of `batch_size × accumulate` images, and `lr_scale` uses that.
    /// BatchNorm normalises each micro-batch with its own statistics, as
    /// with `accumulate` devices that do not synchronise them.
    pub accumulate: usize,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Base learning rate (before `lr_scale`).
    pub lr: f64,
    /// Scaling of the base rate with the batch size.
    pub lr_scale: LrScale,
    /// Schedule after the warm-up.
    pub lr_schedule: LrSchedule,
    /// Linear warm-up from 0, in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Final rate of the cosine schedule.
    pub min_lr: f64,
    /// Multiplier of the predictor's learning rate (its own parameter
    /// group).
    pub predictor_lr_multiplier: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// ε of Adam and AdamW (PyTorch's 1e-8; setting another value with
    /// SGD/LARS is an error). With the summed loss, Adam at
    /// (2λ, 2ε) takes exactly the steps Adam at (λ, ε) took with the mean
    /// of the two directions (docs/results.md, "The loss is the paper's sum").
    pub adam_epsilon: f64,
    /// Momentum of SGD and LARS (setting it with Adam/AdamW is an error).
    pub momentum: f64,
    /// LARS trust coefficient η.
    pub lars_eta: f64,
    /// LARS: biases and normalisation parameters skip decay and adaptation.
    pub lars_exclude_bias_and_norm: bool,
    /// LARS: clip the trust ratio to min(ratio / lr, 1), so no tensor's
    /// rate exceeds the global rate (solo-learn's `clip_lr`).
    pub lars_clip: bool,
    /// Clip gradients to this global L2 norm (0 = off).
    pub grad_clip_norm: f64,
    /// τ₀ of the target's moving average, raised to 1 on a cosine.
    pub tau_base: f64,
    /// `false`: the SimSiam variant — the target is the online network
    /// under stop-gradient, no moving average.
    pub use_momentum: bool,
    /// Run both views through each network as one batch of 2 × batch_size
    /// (shared BatchNorm statistics; faster on some devices).
    pub concat_views: bool,
    /// Number format of the convolutions and matrix products: `"f32"`, or
    /// `"bf16"` (mixed precision: parameters, optimizer state, the target,
    /// BatchNorm and the loss stay f32). The evaluation forward passes
    /// (kNN monitor, `encoder.mpk`'s users) compute in f32.
    pub precision: Precision,
    /// Steps between logged losses and collapse monitors.
    pub log_every: usize,
    /// Stop after this many steps in all (0 = no limit); for smoke tests.
    pub max_steps: usize,
    /// Steps between checkpoints (0 = only at the end of each epoch and of
    /// the run).
    pub checkpoint_every: usize,
    /// Checkpoints kept (the newest ones), at least 1.
    pub keep_checkpoints: usize,
    /// Stop when the projections' z-std stays below this for
    /// `collapse_patience` logged intervals (0 = never stop, warn only).
    pub collapse_stop: f64,
    /// Logged intervals of low z-std before the stop or the warning.
    pub collapse_patience: usize,
    /// Devices of the data-parallel peers, one peer per entry
    /// (`["cpu", "cpu"]`, `["cuda:0", "cuda:1"]`); empty = the one device
    /// the caller gives. `batch_size` is the global batch: each peer takes
    /// an equal, fixed slice of it, and their gradients are averaged
    /// (burn-collective) before every step.
    pub devices: Vec<String>,
    /// BatchNorm statistics over the whole global batch (cross-replica),
    /// forward and backward, in the encoder and the heads, online and
    /// target; `false`: each peer normalises with its own shard's, as
    /// PyTorch DDP. With one device the shard is the batch either way.
    pub sync_batchnorm: bool,
    /// With several peers: seconds the run has to end after a peer fails
    /// in a step (an error or a panic) before the process exits with
    /// status 70 and an error naming that peer. The others are then
    /// waiting in an all-reduce, which burn-collective 0.21 can neither
    /// time out nor cancel: without this the process would hang.
    pub peer_failure_grace_s: f64,
    /// With several peers or machines: seconds without a finished step
    /// (evaluations and checkpoints between steps not counted) after
    /// which the process exits with status 72 and an error
    /// ([`crate::stall`]); at least 20 times the slowest step so far.
    /// A peer stuck in a step (a hung device) otherwise holds the others
    /// in their all-reduce for ever. 0 = no watch.
    pub stall_timeout_s: f64,
    /// Machines of a multi-node run (1 = this one). Each runs this config
    /// with its own `node_rank` and the peers of its `devices`; the global
    /// batch is split over all of them ([`crate::nodes`]).
    pub nodes: usize,
    /// This machine's rank among `nodes`: 0 hosts the orchestrator and
    /// alone writes the run folder.
    pub node_rank: usize,
    /// `HOST:PORT` of rank 0 ("" = single machine): burn-collective's
    /// orchestrator listens on PORT, the nodes' watch channel on PORT + 1,
    /// node r's data service on PORT + 2 + r.
    pub coordinator: String,
    /// With several machines: seconds a node waits for the others to join,
    /// and the silence after which a node counts as lost; then every node
    /// exits with status 71 and an error naming the missing one.
    pub node_timeout_s: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            accumulate: 1,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            lr_scale: LrScale::None,
            lr_schedule: LrSchedule::Constant,
            warmup_epochs: 0.0,
            min_lr: 0.0,
            predictor_lr_multiplier: 1.0,
            weight_decay: 1e-6,
            adam_epsilon: 1e-8,
            momentum: 0.9,
            lars_eta: 1e-3,
            lars_exclude_bias_and_norm: true,
            lars_clip: false,
            grad_clip_norm: 0.0,
            tau_base: 0.996,
            use_momentum: true,
            concat_views: false,
            precision: Precision::F32,
            log_every: 10,
            max_steps: 0,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            collapse_stop: 0.0,
            collapse_patience: 5,
            devices: Vec::new(),
            sync_batchnorm: false,
            peer_failure_grace_s: 30.0,
            stall_timeout_s: 1800.0,
            nodes: 1,
            node_rank: 0,
            coordinator: String::new(),
            node_timeout_s: 60.0,
        }
    }
}

impl TrainConfig {
    /// The base rate after `lr_scale`.
    pub fn base_lr(&self) -> f64 {
        match self.lr_scale {
            LrScale::None => self.lr,
            LrScale::Linear => self.lr * self.effective_batch() as f64 / 256.0,
        }
    }

    /// Images per optimizer step: `batch_size × accumulate`.
    pub fn effective_batch(&self) -> usize {
        self.batch_size.saturating_mul(self.accumulate)
    }

    /// Data-parallel peers: the entries of `devices`, at least 1.
    pub fn peers(&self) -> usize {
        self.devices.len().max(1)
    }

    /// Checks the data-parallel keys: the batch divides among the peers
    /// (of this machine, and of all machines), the device names, the
    /// multi-node keys.
    fn validate_parallel(&self) -> Result<(), TrainError> {
        let peers = self.peers();
        if !self.batch_size.is_multiple_of(peers) {
            return Err(invalid(
                "train.batch_size",
                self.batch_size,
                &format!(
                    "a multiple of the {peers} peers of train.devices (each takes an equal \
                     share of the global batch); {} does not divide by {peers}",
                    self.batch_size
                ),
            ));
        }
        if let Some(d) = self.devices.iter().find(|d| d.trim().is_empty()) {
            return Err(invalid(
                "train.devices",
                format!("{d:?}"),
                "device names such as \"cpu\", \"cuda:0\", \"wgpu:1\"",
            ));
        }
        self.validate_nodes()
    }

    /// Peers of the whole run: `nodes ×` this machine's.
    pub fn global_peers(&self) -> usize {
        self.nodes.max(1).saturating_mul(self.peers())
    }

    /// Checks the multi-node keys.
    fn validate_nodes(&self) -> Result<(), TrainError> {
        if self.nodes == 0 {
            return Err(invalid("train.nodes", self.nodes, "at least 1"));
        }
        if self.node_rank >= self.nodes {
            return Err(invalid(
                "train.node_rank",
                self.node_rank,
                &format!(
                    "a rank below train.nodes = {} (0 to {})",
                    self.nodes,
                    self.nodes - 1
                ),
            ));
        }
        seconds("train.node_timeout_s", self.node_timeout_s, None)?;
        if self.nodes == 1 {
            if !self.coordinator.is_empty() {
                return Err(invalid(
                    "train.coordinator",
                    format!("{:?}", self.coordinator),
                    "\"\" with train.nodes = 1 (a coordinator joins several machines; \
                     set train.nodes too)",
                ));
            }
            return Ok(());
        }
        crate::nodes::parse_coordinator(&self.coordinator, self.nodes)?;
        let peers = self.global_peers();
        if !self.batch_size.is_multiple_of(peers) {
            return Err(invalid(
                "train.batch_size",
                self.batch_size,
                &format!(
                    "a multiple of the {peers} peers of the run (train.nodes = {} × {} of \
                     train.devices); {} does not divide by {peers}",
                    self.nodes,
                    self.peers(),
                    self.batch_size
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a key set for another optimizer than the run's: `momentum`
    /// with Adam/AdamW, `adam_epsilon` with SGD/LARS (each would be
    /// ignored).
    fn validate_optimizer_keys(&self) -> Result<(), TrainError> {
        let t = self;
        let default = TrainConfig::default();
        let adam = matches!(t.optimizer, OptimizerKind::Adam | OptimizerKind::Adamw);
        if adam && t.momentum != default.momentum {
            return Err(invalid(
                "train.momentum",
                t.momentum,
                "no value with optimizer = \"adam\" or \"adamw\" (momentum is for sgd and lars)",
            ));
        }
        if !(t.adam_epsilon > 0.0 && t.adam_epsilon.is_finite()) {
            return Err(invalid(
                "train.adam_epsilon",
                t.adam_epsilon,
                "a finite number > 0",
            ));
        }
        if !adam && t.adam_epsilon != default.adam_epsilon {
            return Err(invalid(
                "train.adam_epsilon",
                t.adam_epsilon,
                "no value with optimizer = \"sgd\" or \"lars\" (ε is Adam's and AdamW's)",
            ));
        }
        Ok(())
    }

    /// Checks the `[train]` values against their ranges.
    ///
    /// # Errors
    ///
    /// [`TrainError::InvalidConfig`] naming the first bad key.
    pub fn validate(&self) -> Result<(), TrainError> {
        let t = self;
        if !(0.0..=1.0).contains(&t.tau_base) {
            return Err(invalid("train.tau_base", t.tau_base, "a number in [0, 1]"));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(invalid("train.lr", t.lr, "a finite number > 0"));
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return Err(invalid(
                "train.weight_decay",
                t.weight_decay,
                "a finite number >= 0",
            ));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(invalid("train.momentum", t.momentum, "a number in [0, 1)"));
        }
        t.validate_optimizer_keys()?;
        for (key, v) in [
            ("train.min_lr", t.min_lr),
            ("train.warmup_epochs", t.warmup_epochs),
            ("train.grad_clip_norm", t.grad_clip_norm),
            ("train.collapse_stop", t.collapse_stop),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(invalid(key, v, "a finite number >= 0"));
            }
        }
        if t.min_lr > t.base_lr() {
            return Err(invalid(
                "train.min_lr",
                t.min_lr,
                &format!("at most the base learning rate ({})", t.base_lr()),
            ));
        }
        if t.warmup_epochs > t.epochs as f64 {
            return Err(invalid(
                "train.warmup_epochs",
                t.warmup_epochs,
                &format!("at most train.epochs ({})", t.epochs),
            ));
        }
        if !(t.predictor_lr_multiplier > 0.0 && t.predictor_lr_multiplier.is_finite()) {
            return Err(invalid(
                "train.predictor_lr_multiplier",
                t.predictor_lr_multiplier,
                "a finite number > 0",
            ));
        }
        if !(t.lars_eta > 0.0 && t.lars_eta.is_finite()) {
            return Err(invalid("train.lars_eta", t.lars_eta, "a finite number > 0"));
        }
        seconds("train.peer_failure_grace_s", t.peer_failure_grace_s, None)?;
        seconds(
            "train.stall_timeout_s",
            t.stall_timeout_s,
            Some("no stall watch"),
        )?;
        if t.keep_checkpoints == 0 {
            return Err(invalid("train.keep_checkpoints", 0, "at least 1"));
        }
        if t.collapse_patience == 0 {
            return Err(invalid("train.collapse_patience", 0, "at least 1"));
        }
        if t.epochs == 0 {
            return Err(invalid("train.epochs", 0, "at least 1"));
        }
        if t.batch_size < 2 {
            return Err(invalid(
                "train.batch_size",
                t.batch_size,
                "at least 2 (BatchNorm needs a batch)",
            ));
        }
        if t.log_every == 0 {
            return Err(invalid("train.log_every", 0, "at least 1"));
        }
        if t.accumulate == 0 {
            return Err(invalid(
                "train.accumulate",
                0,
                "at least 1 micro-batch per step",
            ));
        }
        t.validate_parallel()
    }

    /// Checks that backend `B` computes in `train.precision` on `device`
    /// (bf16: Flex and CUDA do; NdArray and wgpu on WGSL do not), so a run
    /// is refused rather than trained in f32.
    ///
    /// # Errors
    ///
    /// [`TrainError::InvalidConfig`] naming `train.precision` and the
    /// backend.
    pub fn check_precision<B: burn::prelude::Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(), TrainError> {
        if self.precision.supported_on::<B>(device) {
            return Ok(());
        }
        Err(invalid(
            "train.precision",
            self.precision,
            &format!(
                "\"f32\": backend {} has no {} support on this device",
                std::any::type_name::<B>(),
                self.precision
            ),
        ))
    }

    /// Checks that `encoder` computes in `train.precision`
    /// ([`byol_model::Encoder::computes_in`]; the built-in ResNets do).
    ///
    /// # Errors
    ///
    /// [`TrainError::InvalidConfig`] naming `train.precision`.
    pub fn check_encoder_precision<B: burn::prelude::Backend, E: byol_model::Encoder<B>>(
        &self,
        encoder: &E,
    ) -> Result<(), TrainError> {
        if encoder.computes_in(self.precision) {
            return Ok(());
        }
        Err(invalid(
            "train.precision",
            self.precision,
            &format!(
                "\"f32\": encoder {} computes in f32 only",
                std::any::type_name::<E>()
            ),
        ))
    }

    /// Checks that `encoder` synchronises its BatchNorm layers when
    /// `train.sync_batchnorm` asks for it
    /// ([`byol_model::Encoder::syncs_batch_norm`]; the built-in ResNets do).
    ///
    /// # Errors
    ///
    /// [`TrainError::InvalidConfig`] naming `train.sync_batchnorm`.
    pub fn check_encoder_batch_norm<B: burn::prelude::Backend, E: byol_model::Encoder<B>>(
        &self,
        encoder: &E,
    ) -> Result<(), TrainError> {
        if !self.sync_batchnorm || encoder.syncs_batch_norm() {
            return Ok(());
        }
        Err(invalid(
            "train.sync_batchnorm",
            true,
            &format!(
                "false: encoder {} does not say its BatchNorm layers follow \
                 byol_model::with_cross_replica (Encoder::syncs_batch_norm)",
                std::any::type_name::<E>()
            ),
        ))
    }

    /// The optimizer settings of these values.
    pub fn optimizer_settings(&self) -> crate::optim::OptimizerSettings {
        crate::optim::OptimizerSettings {
            kind: self.optimizer,
            weight_decay: self.weight_decay,
            adam_epsilon: self.adam_epsilon,
            momentum: self.momentum,
            lars_eta: self.lars_eta,
            lars_exclude_bias_and_norm: self.lars_exclude_bias_and_norm,
            lars_clip: self.lars_clip,
        }
    }
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Run the kNN monitor during pretraining (when the data has labelled
    /// train and test splits).
    pub monitor: bool,
    /// The kNN monitor.
    pub knn: KnnConfig,
    /// Images per forward pass when extracting features.
    pub batch_size: usize,
    /// Run the kNN monitor every N epochs (and always after the last).
    pub every_epochs: usize,
    /// The linear probe of `cargo xtask eval`.
    pub probe: ProbeConfig,
    /// Train a linear classifier on the detached online representation of
    /// the labelled training images as they pass (its own Adam, not part of
    /// the BYOL loss) and report its top-1/top-5 on the test split at every
    /// epoch end, as DeepMind's BYOL, solo-learn and lightly do; needs the
    /// monitor's labelled train and test splits.
    pub online_linear: bool,
    /// Learning rate of the online linear classifier's Adam.
    pub online_linear_lr: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            monitor: true,
            knn: KnnConfig::default(),
            batch_size: 256,
            every_epochs: 1,
            probe: ProbeConfig::default(),
            online_linear: true,
            online_linear_lr: 1e-3,
        }
    }
}

/// Checks that `value` is a finite number of seconds: > 0, or >= 0 where
/// `zero` says what 0 means.
fn seconds(key: &str, value: f64, zero: Option<&str>) -> Result<(), TrainError> {
    match zero {
        None if !(value > 0.0 && value.is_finite()) => {
            Err(invalid(key, value, "a finite number of seconds > 0"))
        }
        Some(means) if !(value >= 0.0 && value.is_finite()) => Err(invalid(
            key,
            value,
            &format!("a finite number of seconds >= 0 (0: {means})"),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn invalid(key: &str, value: impl ToString, expected: &str) -> TrainError {
    TrainError::InvalidConfig {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

impl RunConfig {
    /// Reads a TOML file, applies `key=value` overrides (dotted keys, values
    /// in TOML syntax, bare words taken as strings) and validates the result.
    ///
    /// # Errors
    ///
    /// [`TrainError::ConfigFile`] for unreadable files, TOML syntax errors,
    /// unknown keys and values of the wrong type: an error of the file shows
    /// its line and key, an error of an override starts with that override
    /// (`--set model.arch=resnet18: unknown field `arch`, expected one of
    /// ...`). [`TrainError::InvalidConfig`] for out-of-range values.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, TrainError> {
        let (name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|e| TrainError::ConfigFile {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?,
            ),
            None => ("<defaults>".to_string(), String::new()),
        };
        let config =
            Self::from_toml(&text, overrides).map_err(|message| TrainError::ConfigFile {
                path: name,
                message,
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text with overrides applied, without validating values.
    ///
    /// The text is read alone first, so that its errors point at its own
    /// lines; then each override is applied and the result read again, so
    /// that an error is the first override's that causes it, named as
    /// `--set KEY=VALUE: ...`.
    fn from_toml(text: &str, overrides: &[String]) -> Result<Self, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut config: Self = if retire_nan_switch(&mut table)? {
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| e.to_string())?
        } else {
            // parsed from the text, so that errors point at its lines
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("--set {item}: expected KEY=VALUE"))?;
            let (key, value) = (key.trim(), value.trim());
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            set_dotted(&mut table, key, parsed).map_err(|e| format!("--set {item}: {e}"))?;
            config = toml::Value::Table(table.clone()).try_into().map_err(|e| {
                // serde's message, then `in `key`` on its own line
                let lines: Vec<String> = e.to_string().lines().map(str::to_string).collect();
                format!("--set {item}: {}", lines.join(" "))
            })?;
        }
        Ok(config)
    }

    /// Checks every value against its range, naming the key on failure.
    ///
    /// # Errors
    ///
    /// [`TrainError::InvalidConfig`] naming the first bad key.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.train.validate()?;
        if self.data.prefetch == 0 {
            return Err(invalid("data.prefetch", 0, "at least 1"));
        }
        let m = &self.model;
        for (key, v) in [
            ("model.projector_hidden", m.projector_hidden),
            ("model.projection_dim", m.projection_dim),
            ("model.predictor_hidden", m.predictor_hidden),
            ("model.width_multiplier", m.width_multiplier),
        ] {
            if v == 0 {
                return Err(invalid(key, 0, "at least 1"));
            }
        }
        if self.eval.batch_size == 0 {
            return Err(invalid("eval.batch_size", 0, "at least 1"));
        }
        if self.eval.every_epochs == 0 {
            return Err(invalid("eval.every_epochs", 0, "at least 1"));
        }
        let lr = self.eval.online_linear_lr;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(invalid("eval.online_linear_lr", lr, "a finite number > 0"));
        }
        self.eval.knn.validate("eval.knn")?;
        self.eval.probe.validate("eval.probe")?;
        // channels come from the data; 3 passes every width check
        self.model.encoder_config(3).validate("model")?;
        self.augment.validate("augment")?;
        Ok(())
    }

    /// The kNN monitor's settings: the evaluation transform of `[augment]`,
    /// `eval.batch_size` and `eval.knn`.
    pub fn knn_monitor(&self) -> byol_eval::KnnMonitorSettings {
        byol_eval::KnnMonitorSettings {
            transform: self.augment.eval_transform(),
            batch_size: self.eval.batch_size,
            knn: self.eval.knn.clone(),
        }
    }

    /// The resolved config as TOML text, as written into the run folder.
    ///
    /// # Errors
    ///
    /// [`TrainError::ConfigFile`] if serialisation fails.
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string_pretty(self).map_err(|e| TrainError::ConfigFile {
            path: "<resolved>".into(),
            message: e.to_string(),
        })
    }
}

/// `train.inject_nan_at_step`, a test switch that the resolved config of
/// every run before it was retired holds as `0`: removed from `table` when
/// it is `0` (off, so the run is the same without it), so that those run
/// folders still resume; any other value is refused. Returns whether it
/// was there.
fn retire_nan_switch(table: &mut toml::Table) -> Result<bool, String> {
    let Some(toml::Value::Table(train)) = table.get_mut("train") else {
        return Ok(false);
    };
    match train.get("inject_nan_at_step") {
        None => Ok(false),
        Some(toml::Value::Integer(0)) => {
            train.remove("inject_nan_at_step");
            Ok(true)
        }
        Some(other) => Err(format!(
            "train.inject_nan_at_step = {other}: this test switch was removed (only 0, \"off\", \
             is still read, from the config.toml of older runs)"
        )),
    }
}

/// Sets the dotted `key` of `table` to `value`, making the tables on the
/// way; the error says what is wrong with the key alone.
fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "empty key".to_string())?;
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_runs_config_with_the_retired_nan_switch_at_zero_still_loads() {
        let old = "[train]\nepochs = 3\ninject_nan_at_step = 0\n";
        let config = RunConfig::from_toml(old, &[]).expect("an older run's config");
        assert_eq!(config.train.epochs, 3);
        let err = RunConfig::from_toml("[train]\ninject_nan_at_step = 5\n", &[])
            .expect_err("the switch is gone");
        assert!(err.contains("train.inject_nan_at_step"), "{err}");
    }

    fn err(text: &str, overrides: &[&str]) -> String {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        match RunConfig::from_toml(text, &overrides) {
            Err(e) => e,
            Ok(c) => c
                .validate()
                .expect_err("config should be rejected")
                .to_string(),
        }
    }

    #[test]
    fn adam_epsilon_reaches_adam_and_adamw() {
        for optimizer in ["adam", "adamw"] {
            let c = RunConfig::from_toml(
                "[train]\nadam_epsilon = 2e-8\n",
                &[format!("train.optimizer={optimizer}")],
            )
            .expect("valid");
            c.validate().expect("valid with adam and adamw");
            assert_eq!(c.train.optimizer_settings().adam_epsilon, 2e-8);
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = RunConfig::from_toml("", &[]).expect("empty is valid");
        assert_eq!(c, RunConfig::default());
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn omitted_fields_keep_their_defaults() {
        let c = RunConfig::from_toml("[train]\nlr = 0.5\n", &[]).expect("valid");
        assert_eq!(c.train.lr, 0.5);
        assert_eq!(c.train.batch_size, TrainConfig::default().batch_size);
        assert_eq!(c.eval.knn.k, 20);
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_key() {
        assert!(err("[train]\nlearning_rate = 0.1\n", &[]).contains("learning_rate"));
        assert!(err("", &["model.depth=18"]).contains("depth"));
        assert!(err("[augment.view1]\nblurr_p = 0.1\n", &[]).contains("blurr_p"));
    }

    #[test]
    fn out_of_range_values_are_rejected_naming_the_key() {
        assert!(err("", &["train.tau_base=1.5"]).contains("train.tau_base"));
        assert!(err("", &["train.lr=-0.1"]).contains("train.lr"));
        assert!(
            err("", &["augment.view1.crop_scale=[0.9, 0.5]"]).contains("augment.view1.crop_scale")
        );
        assert!(err("", &["train.momentum=0.5"]).contains("train.momentum"));
        assert!(err("", &["train.adam_epsilon=0"]).contains("train.adam_epsilon"));
        assert!(err("", &["train.adam_epsilon=nan"]).contains("train.adam_epsilon"));
        let lars = err("", &["train.optimizer=lars", "train.adam_epsilon=1e-6"]);
        assert!(
            lars.contains("train.adam_epsilon") && lars.contains("lars"),
            "{lars}"
        );
        assert!(err("", &["train.peer_failure_grace_s=0"]).contains("seconds > 0"));
        assert!(err("", &["train.stall_timeout_s=-1"]).contains("0: no stall watch"));
        assert!(err("", &["eval.probe.epochs=0"]).contains("eval.probe.epochs"));
        assert!(err("", &["train.stall_timeout_s=-1"]).contains("train.stall_timeout_s"));
        assert!(err("", &["train.stall_timeout_s=inf"]).contains("train.stall_timeout_s"));
        assert!(err("", &["eval.probe.momentum=1.0"]).contains("eval.probe.momentum"));
        assert!(err("", &["eval.probe.optimizer=adam"]).contains("adam"));
    }

    #[test]
    fn probe_and_init_from_keys_parse() {
        let c = RunConfig::from_toml(
            "[model]\ninit_from = \"w.safetensors\"\n[eval.probe]\noptimizer = \"lbfgs\"\nepochs = 7\n",
            &[],
        )
        .expect("valid");
        assert_eq!(c.model.init_from, PathBuf::from("w.safetensors"));
        assert_eq!(c.eval.probe.optimizer, byol_eval::ProbeOptimizer::Lbfgs);
        assert_eq!(c.eval.probe.epochs, 7);
        assert_eq!(c.eval.probe.lr, ProbeConfig::default().lr);
        assert_eq!(RunConfig::default().model.init_from, PathBuf::new());
    }

    #[test]
    fn overrides_parse_toml_values_and_bare_words() {
        let o: Vec<String> = [
            "train.optimizer=sgd",
            "train.lr=0.05",
            "model.head_batchnorm=false",
            "data.path=/x/y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = RunConfig::from_toml("", &o).expect("valid overrides");
        assert_eq!(c.train.optimizer, OptimizerKind::Sgd);
        assert_eq!(c.train.lr, 0.05);
        assert!(!c.model.head_batchnorm);
        assert_eq!(c.data.path, PathBuf::from("/x/y"));
    }

    #[test]
    fn a_bad_override_is_named_with_the_keys_of_its_table() {
        let e = err("", &["model.arch=resnet18"]);
        assert!(
            e.starts_with("--set model.arch=resnet18: unknown field `arch`, expected one of"),
            "{e}"
        );
        assert!(e.contains("`encoder`") && e.contains("`stem`"), "{e}");
        assert!(e.ends_with(" in `model`"), "{e}");
        let e = err(
            "[train]\nepochs = 2\n",
            &["train.lr=0.1", "train.epochs=abc"],
        );
        assert!(e.starts_with("--set train.epochs=abc: invalid type"), "{e}");
        let e = err("[train]\nepochs = 2\n", &["train.epochs.n=1"]);
        assert_eq!(e, "--set train.epochs.n=1: `epochs` is not a table");
        let e = err("", &["train.epochs.n=1"]);
        assert_eq!(
            e,
            "--set train.epochs.n=1: invalid type: map, expected usize in `train.epochs`"
        );
        let e = err("", &["train.epochs"]);
        assert_eq!(e, "--set train.epochs: expected KEY=VALUE");
    }

    #[test]
    fn an_error_of_the_file_names_the_file_and_its_line_not_an_override() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("run.toml");
        std::fs::write(
            &path,
            "seed = 1\n[train]\nepochs = 2\nlearning_rate = 0.1\n",
        )
        .expect("write");
        let e = RunConfig::load(Some(&path), &["train.lr=0.5".into()])
            .expect_err("unknown key")
            .to_string();
        assert!(e.starts_with(&format!("config {}:", path.display())), "{e}");
        assert!(e.contains("line 4") && e.contains("learning_rate"), "{e}");
        assert!(!e.contains("--set"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = RunConfig::from_toml("seed = 3\n[train]\nepochs = 2\n", &[]).expect("valid");
        let again =
            RunConfig::from_toml(&c.to_toml().expect("serialisable"), &[]).expect("round trip");
        assert_eq!(c, again);
    }

    #[test]
    fn shipped_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                RunConfig::load(Some(&path), &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 1, "no config found in {}", dir.display());
    }

    #[test]
    fn a_global_batch_that_does_not_divide_among_the_devices_names_both_numbers() {
        let msg = err(
            "",
            &[
                "train.devices=[\"cpu\", \"cpu\", \"cpu\"]",
                "train.batch_size=64",
            ],
        );
        assert!(
            msg.contains("train.batch_size") && msg.contains("64"),
            "{msg}"
        );
        assert!(msg.contains("3 peers"), "{msg}");
        let c =
            RunConfig::from_toml("", &["train.devices=[\"cpu\", \"cpu\"]".into()]).expect("parses");
        c.validate().expect("128 divides by 2");
        assert_eq!(c.train.peers(), 2);
        assert_eq!(RunConfig::default().train.peers(), 1);
    }

    /// An encoder of the caller's, whose normalisation byol-model cannot see.
    #[derive(burn::module::Module, Debug)]
    struct Flat<B: burn::prelude::Backend> {
        linear: burn::nn::Linear<B>,
    }

    impl<B: burn::prelude::Backend> byol_model::Encoder<B> for Flat<B> {
        fn encode(&self, images: burn::prelude::Tensor<B, 4>) -> burn::prelude::Tensor<B, 2> {
            let [n, ..] = images.dims();
            self.linear.forward(images.reshape([n as i32, -1]))
        }

        fn output_dim(&self) -> usize {
            self.linear.weight.dims()[1]
        }
    }

    #[test]
    fn synchronised_batchnorm_refuses_an_encoder_that_does_not_follow_it() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let flat = Flat::<B> {
            linear: burn::nn::LinearConfig::new(4, 2).init(&device),
        };
        let resnet = byol_model::ResNetConfig::small().init::<B>(&device);
        let mut train = TrainConfig::default();
        train
            .check_encoder_batch_norm(&flat)
            .expect("not asked for");
        train.sync_batchnorm = true;
        train
            .check_encoder_batch_norm(&resnet)
            .expect("ours follow it");
        let e = train
            .check_encoder_batch_norm(&flat)
            .expect_err("a custom encoder")
            .to_string();
        assert!(
            e.contains("train.sync_batchnorm") && e.contains("Flat"),
            "{e}"
        );
    }

    #[test]
    fn bad_multi_node_keys_are_refused_naming_the_key_and_the_value() {
        for (sets, key, expected) in [
            (vec!["train.nodes=0"], "train.nodes", "at least 1"),
            (
                vec!["train.node_rank=1"],
                "train.node_rank",
                "below train.nodes = 1",
            ),
            (
                vec!["train.coordinator=\"10.0.0.1:9000\""],
                "train.coordinator",
                "train.nodes = 1",
            ),
            (vec!["train.nodes=2"], "train.coordinator", "HOST:PORT"),
            (
                vec!["train.nodes=2", "train.coordinator=\"10.0.0.1\""],
                "train.coordinator",
                "HOST:PORT",
            ),
            (
                vec!["train.nodes=2", "train.coordinator=\"h:65534\""],
                "train.coordinator",
                "65535",
            ),
            (
                vec![
                    "train.nodes=2",
                    "train.coordinator=\"h:9000\"",
                    "train.batch_size=127",
                ],
                "train.batch_size",
                "2 peers",
            ),
            (
                vec![
                    "train.nodes=2",
                    "train.coordinator=\"h:9000\"",
                    "train.node_timeout_s=0",
                ],
                "train.node_timeout_s",
                "> 0",
            ),
        ] {
            let msg = err("", &sets);
            assert!(
                msg.contains(key) && msg.contains(expected),
                "{sets:?}: {msg}"
            );
        }
        let ok = RunConfig::from_toml(
            "",
            &[
                "train.nodes=2".into(),
                "train.node_rank=1".into(),
                "train.coordinator=\"10.0.0.1:9000\"".into(),
                "train.devices=[\"cpu\", \"cpu\"]".into(),
            ],
        )
        .expect("parses");
        ok.validate().expect("a valid multi-node config");
        assert_eq!(ok.train.global_peers(), 4);
        assert!(err("", &["train.devices=[\"cpu\", \"\"]"]).contains("train.devices"));
    }
}
