//! Refusing what cannot fit: the memory a run needs, estimated from its
//! config (and from its data where that is known) before any work, and
//! checked against the device's memory where it is known and always
//! against [`ABSURD_BYTES`].
//!
//! The estimate adds up, in f32 values of four bytes:
//!
//! - **resident on the device** for the whole run: the online and target
//!   parameters (counted as burn's `num_params`, BatchNorm running
//!   statistics included) and the optimizer's state (Adam/AdamW two
//!   values per trained parameter, SGD/LARS one);
//! - **during a step**, on the device: the gradients (twice with
//!   `train.accumulate > 1`: the sum and the micro-batch's), the two
//!   views of the step's `batch_size × accumulate` images, the
//!   activations the graph keeps for the backward pass of one micro-batch
//!   of `train.batch_size` images, both views
//!   ([`byol_model::EncoderFootprint`] says what is kept per layer), and a
//!   working set of three times the largest tensor for the target's
//!   forward pass (no graph: each layer's input and output and a
//!   temporary) or the gradients in flight during the backward pass;
//! - **during a kNN evaluation**, between steps, on the device: the bank
//!   and query features (twice: the batches and their concatenation), the
//!   raw-pixel features of the start-up baseline when the images are small
//!   enough for it ([`byol_eval::RAW_PIXELS_MAX_VALUES`]; before the
//!   encoder's, not with them), one evaluation batch and the similarity
//!   rows of one chunk of queries (as `byol_eval::knn_classify` cuts them);
//! - **on the host**: the loader's `data.prefetch + 2` batches of two
//!   views, and the monitor's evaluation batch and similarity rows read
//!   back. With one device the loader thread uploads each batch's views
//!   as it queues them, so its `data.prefetch` queued batches are resident
//!   on the device instead and two stay on the host (the one being made
//!   and the one being uploaded).
//!
//! The device peak is the resident part plus the larger of the step and
//! the evaluation. Not counted: the decoded source images of a batch
//! (their size is the dataset's), datasets held in memory (IDX, CIFAR:
//! their file size), allocator and backend pools, the online linear
//! classifier (features × classes values) and, with several peers, the
//! global batch's representations gathered for it (batch × features, a
//! small share of the activations), and an encoder of the caller's
//! ([`MemoryPlan::without_encoder`]), whose layers are unknown.

use std::fmt;

use byol_model::{EncoderFootprint, HeadsFootprint};

use crate::{OptimizerKind, RunConfig, TrainError};

/// An estimate above this is refused whatever the device: 1 TiB, more
/// memory than any single GPU has, and than the host of any machine a run
/// of this crate is meant for. It catches absurd configurations
/// (`augment.size = 100000`) where the device's memory is not known, before
/// they are killed for lack of memory.
pub const ABSURD_BYTES: u64 = 1 << 40;

/// Bytes of an f32.
const F32: u64 = 4;

/// The memory a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceMemory {
    /// Not known (burn 0.21 does not report a CUDA device's memory): only
    /// [`ABSURD_BYTES`] is checked.
    #[default]
    Unknown,
    /// A device with this many bytes of its own (a GPU); the host parts
    /// are not counted against it.
    Dedicated(u64),
    /// The device computes in host memory (the CPU backends): host and
    /// device parts together must fit these bytes (the memory available).
    Shared(u64),
}

/// What is known of a run's data when its memory is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataFacts {
    /// Images of the pretraining split, after `data.train_limit`; `None`
    /// when not counted.
    pub train_images: Option<usize>,
    /// Channels of the images; `None` when not known, and then the fewest
    /// the config allows are assumed (3 when `augment.mean` or
    /// `augment.std` has three values, else 1), so that an estimate made
    /// before the data is opened is a lower bound.
    pub channels: Option<usize>,
    /// The kNN monitor's images.
    pub monitor: MonitorImages,
}

/// The images of the kNN monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MonitorImages {
    /// Not counted yet: shown as `eval.knn.bank_size` bank images and as
    /// many queries, but not checked (the run checks again once the data
    /// is open).
    #[default]
    Unknown,
    /// No monitor: `eval.monitor = false`, or no labelled train and test
    /// splits.
    Off,
    /// Counted: bank images (at most `eval.knn.bank_size`) and queries.
    Counted {
        /// Training images in the bank.
        bank: usize,
        /// Test images.
        queries: usize,
    },
}

/// One share of the estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its short name (`activations`), for messages.
    pub name: &'static str,
    /// What it is, with its sizes.
    pub what: String,
    /// Bytes.
    pub bytes: u64,
    /// The config keys that size it, with their values
    /// (`train.batch_size = 64, augment.size = 28`).
    pub keys: String,
}

/// Which limit an estimate exceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// Device memory above [`ABSURD_BYTES`].
    AbsurdDevice,
    /// Host memory above [`ABSURD_BYTES`].
    AbsurdHost,
    /// Device memory above the device's own ([`DeviceMemory::Dedicated`]).
    Device,
    /// Host and device memory above the memory available
    /// ([`DeviceMemory::Shared`]).
    Shared,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AbsurdDevice | Self::Device => "device memory",
            Self::AbsurdHost => "host memory",
            Self::Shared => "memory (host and device share it)",
        })
    }
}

/// The message of [`TrainError::TooLarge`].
pub(crate) fn refusal(exceeded: Exceeded, needed: u64, limit: u64, parts: &str) -> String {
    let limit = match exceeded {
        Exceeded::AbsurdDevice | Exceeded::AbsurdHost => format!(
            "the {} ceiling (no single device holds that much: an absurd configuration)",
            format_bytes(limit)
        ),
        Exceeded::Device => format!("the device's {}", format_bytes(limit)),
        Exceeded::Shared => format!("the {} available", format_bytes(limit)),
    };
    format!(
        "{exceeded}: the run needs about {}, more than {limit}; mostly {parts}",
        format_bytes(needed)
    )
}

/// `bytes` in binary units with one decimal: `340.2 MiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The memory of a run, by part: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Channels of the images the estimate is for.
    pub channels: usize,
    /// Whether `channels` was assumed (the data not opened).
    pub channels_assumed: bool,
    /// The encoder's counts; `None` for an encoder of the caller's.
    pub encoder: Option<EncoderFootprint>,
    /// The heads' counts; `None` with the encoder.
    pub heads: Option<HeadsFootprint>,
    /// On the device for the whole run.
    pub resident: Vec<Part>,
    /// On the device during a step.
    pub step: Vec<Part>,
    /// On the host: the loader's queue of batches.
    pub loader: Part,
    /// The kNN monitor's share; `None` without a monitor.
    pub monitor: Option<MonitorPlan>,
    /// Data-parallel peers (`train.devices`, at least 1). The device parts
    /// are each peer's: its replica and optimizer state, and its shard of
    /// the batch (`train.batch_size / peers` images). Peers that share
    /// the host's memory (the CPU) count once each.
    pub peers: usize,
}

/// The memory of a kNN evaluation, between steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorPlan {
    /// Bank images and queries the parts are for.
    pub bank: u64,
    /// Query images.
    pub queries: u64,
    /// Whether they were counted; if not, `eval.knn.bank_size` of each
    /// are shown and the share is not checked ([`MonitorImages::Unknown`]).
    pub counted: bool,
    /// The encoder's features of bank and queries (`None` for an encoder
    /// of the caller's).
    pub features: Option<Part>,
    /// The raw-pixel baseline's features, at the start only (before the
    /// encoder's), when the images are small enough for it.
    pub raw_pixels: Option<Part>,
    /// The rest on the device: an evaluation batch, the similarity rows.
    pub device: Vec<Part>,
    /// On the host: an evaluation batch, the similarity rows read back.
    pub host: Vec<Part>,
}

impl MonitorPlan {
    /// Device bytes of an evaluation: the larger of the encoder's features
    /// and the raw-pixel baseline's (they are not held at once), and the
    /// rest.
    pub fn device_bytes(&self) -> u64 {
        let bytes = |p: &Option<Part>| p.as_ref().map_or(0, |p| p.bytes);
        bytes(&self.features)
            .max(bytes(&self.raw_pixels))
            .saturating_add(sum(&self.device))
    }

    /// Host bytes of an evaluation.
    pub fn host_bytes(&self) -> u64 {
        sum(&self.host)
    }

    /// The device parts behind [`Self::device_bytes`].
    fn device_parts(&self) -> Vec<&Part> {
        let bytes = |p: &Option<Part>| p.as_ref().map_or(0, |p| p.bytes);
        let larger = if bytes(&self.raw_pixels) > bytes(&self.features) {
            &self.raw_pixels
        } else {
            &self.features
        };
        larger.iter().chain(&self.device).collect()
    }
}

/// Makes [`Part`]s, each with the config's values of its keys.
struct Parts {
    /// The config as JSON, read by key.
    config: serde_json::Value,
}

impl Parts {
    fn new(config: &RunConfig) -> Self {
        Self {
            config: serde_json::to_value(config).unwrap_or_default(),
        }
    }

    fn part(&self, name: &'static str, what: String, bytes: u64, keys: &[&str]) -> Part {
        Part {
            name,
            what,
            bytes,
            keys: self.values(keys),
        }
    }

    /// The config's values of `keys`, as `key = value, ...` (strings
    /// quoted).
    fn values(&self, keys: &[&str]) -> String {
        keys.iter()
            .map(|key| {
                let pointer = format!("/{}", key.replace('.', "/"));
                let value = self
                    .config
                    .pointer(&pointer)
                    .map_or_else(|| "?".to_string(), serde_json::Value::to_string);
                format!("{key} = {value}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The sizes the parts multiply.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Image channels.
    channels: usize,
    /// `augment.size`.
    size: u64,
    /// Values of one view: channels × size².
    image: u64,
    /// `train.batch_size`: images of one forward and backward pass.
    batch: u64,
    /// `train.batch_size × train.accumulate`: images of one step.
    effective: u64,
}

/// The keys that size the networks.
const MODEL_KEYS: [&str; 4] = [
    "model.encoder",
    "model.width_multiplier",
    "model.projector_hidden",
    "model.predictor_hidden",
];

/// The keys that size the activations.
const ACTIVATION_KEYS: [&str; 4] = [
    "train.batch_size",
    "augment.size",
    "model.encoder",
    "model.width_multiplier",
];

/// Saturating products of any number of factors.
fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |acc, &f| acc.saturating_mul(f))
}

fn sum(parts: &[Part]) -> u64 {
    parts
        .iter()
        .fold(0u64, |acc, p| acc.saturating_add(p.bytes))
}

/// `n` with thousands separators: `1,281,167`.
pub fn format_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl MemoryPlan {
    /// The plan of `config`'s run with the built-in ResNet of `[model]`.
    pub fn new(config: &RunConfig, facts: &DataFacts) -> Self {
        Self::build(config, facts, true)
    }

    /// The plan of a run of [`crate::pretrain_encoder`]: the encoder is the
    /// caller's, so its parameters, activations and features (and the
    /// heads, which depend on them) are left out; the views, the loader
    /// and the raw-pixel baseline are counted.
    pub fn without_encoder(config: &RunConfig, facts: &DataFacts) -> Self {
        Self::build(config, facts, false)
    }

    fn build(config: &RunConfig, facts: &DataFacts, builtin: bool) -> Self {
        let parts = Parts::new(config);
        let (t, a) = (&config.train, &config.augment);
        let fewest = if a.mean.len() == 3 || a.std.len() == 3 {
            3
        } else {
            1
        };
        let channels = facts.channels.unwrap_or(fewest);
        let size = a.size as u64;
        // each peer's shard of the run's batch (over every machine): the
        // config refuses a batch that does not divide
        let peers = t.peers();
        let shards = t.global_peers();
        let shape = Shape {
            channels,
            size,
            image: product(&[channels as u64, size, size]),
            batch: (t.batch_size / shards) as u64,
            effective: (t.effective_batch() / shards) as u64,
        };
        let encoder = builtin.then(|| config.model.encoder_config(channels).footprint(a.size));
        let heads = encoder.map(|e| {
            config
                .model
                .heads_config()
                .footprint(usize::try_from(e.output_dim).unwrap_or(usize::MAX))
        });
        let (mut resident, mut step) = (Vec::new(), Vec::new());
        if let (Some(e), Some(h)) = (encoder, heads) {
            resident = network_parts(config, &e, &h, &parts);
            step.push(gradients(config, &e, &h, &parts));
        }
        step.push(parts.part(
            "input views",
            format!(
                "input views: 2 × {} images of {channels}×{size}×{size}",
                format_count(shape.effective)
            ),
            product(&[2, shape.effective, shape.image, F32]),
            &["train.batch_size", "train.accumulate", "augment.size"],
        ));
        if let (Some(e), Some(h)) = (encoder, heads) {
            step.extend(activations(config, shape, &e, &h, &parts));
        }
        let (prefetched, loader) = loader_parts(config, shape, shards, &parts);
        resident.extend(prefetched);
        let images = match (config.eval.monitor, facts.monitor) {
            (false, _) | (_, MonitorImages::Off) => None,
            (true, MonitorImages::Unknown) => {
                let n = config.eval.knn.bank_size as u64;
                Some((n, n, false))
            }
            (true, MonitorImages::Counted { bank, queries }) => {
                Some((bank as u64, queries as u64, true))
            }
        };
        let monitor = images.map(|(bank, queries, counted)| {
            monitor_plan(config, shape, encoder, (bank, queries, counted), &parts)
        });
        Self {
            channels,
            channels_assumed: facts.channels.is_none(),
            encoder,
            heads,
            resident,
            step,
            loader,
            monitor,
            peers,
        }
    }

    /// Bytes resident on the device for the whole run.
    pub fn resident_bytes(&self) -> u64 {
        sum(&self.resident)
    }

    /// Bytes a step adds on the device.
    pub fn step_bytes(&self) -> u64 {
        sum(&self.step)
    }

    /// The monitor when its share is checked: once its images are
    /// counted (see [`MonitorImages::Unknown`]).
    fn checked_monitor(&self) -> Option<&MonitorPlan> {
        self.monitor.as_ref().filter(|m| m.counted)
    }

    /// The device peak: resident, plus the larger of a step and a kNN
    /// evaluation (once the monitor's images are counted).
    pub fn device_bytes(&self) -> u64 {
        let monitor = self.checked_monitor().map_or(0, MonitorPlan::device_bytes);
        self.resident_bytes()
            .saturating_add(self.step_bytes().max(monitor))
    }

    /// What host and devices take together where they share one memory
    /// (the CPU backends): every peer's device bytes and the host's.
    pub fn shared_bytes(&self) -> u64 {
        self.device_bytes()
            .saturating_mul(self.peers as u64)
            .saturating_add(self.host_bytes())
    }

    /// Bytes on the host: the loader's, and the monitor's once counted.
    pub fn host_bytes(&self) -> u64 {
        let monitor = self.checked_monitor().map_or(0, MonitorPlan::host_bytes);
        self.loader.bytes.saturating_add(monitor)
    }

    /// The device parts behind [`Self::device_bytes`].
    fn device_parts(&self) -> Vec<&Part> {
        let mut parts: Vec<&Part> = self.resident.iter().collect();
        match self.checked_monitor() {
            Some(m) if m.device_bytes() > self.step_bytes() => parts.extend(m.device_parts()),
            _ => parts.extend(&self.step),
        }
        parts
    }

    /// The host parts behind [`Self::host_bytes`].
    fn host_parts(&self) -> Vec<&Part> {
        let mut parts = vec![&self.loader];
        if let Some(m) = self.checked_monitor() {
            parts.extend(&m.host);
        }
        parts
    }

    /// Refuses the run when its estimate exceeds [`ABSURD_BYTES`] (device
    /// or host), or `memory` where it is known: a [`DeviceMemory::Dedicated`]
    /// device's own memory, or the memory available to host and device
    /// together ([`DeviceMemory::Shared`]).
    ///
    /// # Errors
    ///
    /// [`TrainError::TooLarge`] naming the estimate, the limit and the
    /// largest parts with the config keys that size them.
    pub fn check(&self, memory: DeviceMemory) -> Result<(), TrainError> {
        let (device, host) = (self.device_bytes(), self.host_bytes());
        let host_parts = self.host_parts();
        let refuse = |exceeded, needed, limit, parts: Vec<&Part>| {
            Err(TrainError::TooLarge {
                exceeded,
                needed,
                limit,
                parts: largest(parts, needed),
            })
        };
        if device > ABSURD_BYTES {
            return refuse(
                Exceeded::AbsurdDevice,
                device,
                ABSURD_BYTES,
                self.device_parts(),
            );
        }
        if host > ABSURD_BYTES {
            return refuse(Exceeded::AbsurdHost, host, ABSURD_BYTES, host_parts);
        }
        match memory {
            DeviceMemory::Dedicated(limit) if device > limit => {
                refuse(Exceeded::Device, device, limit, self.device_parts())
            }
            DeviceMemory::Shared(limit) if self.shared_bytes() > limit => {
                let mut parts = self.device_parts();
                parts.extend(host_parts);
                refuse(Exceeded::Shared, self.shared_bytes(), limit, parts)
            }
            _ => Ok(()),
        }
    }
}

/// Values of the online and target networks, and of the online
/// network's trained parameters.
fn parameter_counts(config: &RunConfig, e: &EncoderFootprint, h: &HeadsFootprint) -> [u64; 3] {
    let target = if config.train.use_momentum {
        e.params.saturating_add(h.projector.params)
    } else {
        0
    };
    let online = e
        .params
        .saturating_add(h.projector.params)
        .saturating_add(h.predictor.params);
    let trained = e
        .trainable()
        .saturating_add(h.projector.trainable())
        .saturating_add(h.predictor.trainable());
    [online, target, trained]
}

/// The parameters and the optimizer's state, resident for the whole run.
fn network_parts(
    config: &RunConfig,
    e: &EncoderFootprint,
    h: &HeadsFootprint,
    parts: &Parts,
) -> Vec<Part> {
    let [online, target, trained] = parameter_counts(config, e, h);
    let (name, per) = match config.train.optimizer {
        OptimizerKind::Adam => ("adam", 2),
        OptimizerKind::Adamw => ("adamw", 2),
        OptimizerKind::Sgd => ("sgd", 1),
        OptimizerKind::Lars => ("lars", 1),
    };
    let mut optimizer_keys = vec!["train.optimizer"];
    optimizer_keys.extend(MODEL_KEYS);
    vec![
        parts.part(
            "parameters",
            format!(
                "parameters: online {} + target {} values",
                format_count(online),
                format_count(target)
            ),
            product(&[online.saturating_add(target), F32]),
            &MODEL_KEYS,
        ),
        parts.part(
            "optimizer state",
            format!("optimizer state: {name}, {per} per trained parameter"),
            product(&[trained, per, F32]),
            &optimizer_keys,
        ),
    ]
}

/// The loader's batches of the global batch (`peers` shards of `shape`'s,
/// over every machine: each node's loader draws the whole batch): on the
/// device, the ones one device's loader thread has uploaded (`None` with
/// several peers, which take host batches); on the host, the rest.
fn loader_parts(
    config: &RunConfig,
    shape: Shape,
    peers: usize,
    parts: &Parts,
) -> (Option<Part>, Part) {
    let Shape {
        channels,
        size,
        image,
        effective,
        ..
    } = shape;
    let global_batch = effective.saturating_mul(peers as u64);
    let prefetch = config.data.prefetch as u64;
    let keys = [
        "data.prefetch",
        "train.batch_size",
        "train.accumulate",
        "augment.size",
    ];
    // one device: the loader thread uploads what it queues
    let (on_host, on_device) = if peers == 1 {
        (2, prefetch)
    } else {
        (prefetch.saturating_add(2), 0)
    };
    let prefetched = (on_device > 0).then(|| {
        parts.part(
            "prefetched views",
            format!(
                "prefetched views: {on_device} batches × 2 views × {} images of \
                 {channels}×{size}×{size}, uploaded by the loader thread",
                format_count(global_batch)
            ),
            product(&[on_device, 2, global_batch, image, F32]),
            &keys,
        )
    });
    let loader = parts.part(
        "loader queue",
        format!(
            "loader queue: {on_host} batches × 2 views × {} images of {channels}×{size}×{size}",
            format_count(global_batch)
        ),
        product(&[on_host, 2, global_batch, image, F32]),
        &keys,
    );
    (prefetched, loader)
}

/// A step's gradients: one set, or the sum and a micro-batch's with
/// `train.accumulate > 1`.
fn gradients(config: &RunConfig, e: &EncoderFootprint, h: &HeadsFootprint, parts: &Parts) -> Part {
    let [_, _, trained] = parameter_counts(config, e, h);
    let copies = if config.train.accumulate > 1 { 2 } else { 1 };
    let mut keys = MODEL_KEYS.to_vec();
    keys.push("train.accumulate");
    parts.part(
        "gradients",
        format!(
            "gradients: {} values{}",
            format_count(trained),
            if copies > 1 {
                " × 2 (the sum and a micro-batch's)"
            } else {
                ""
            }
        ),
        product(&[trained, copies, F32]),
        &keys,
    )
}

/// The activations a micro-batch keeps for its backward pass, and the
/// working set of the target's forward pass or of the backward pass.
fn activations(
    config: &RunConfig,
    shape: Shape,
    e: &EncoderFootprint,
    h: &HeadsFootprint,
    parts: &Parts,
) -> [Part; 2] {
    // the loss keeps the normalised prediction and target of each view
    let loss = 4u64.saturating_mul(config.model.projection_dim as u64);
    let per_image = e
        .activations
        .saturating_add(h.projector.activations)
        .saturating_add(h.predictor.activations)
        .saturating_add(loss);
    let views_at_once = if config.train.concat_views { 2 } else { 1 };
    let mut working_keys = ACTIVATION_KEYS.to_vec();
    working_keys.push("train.concat_views");
    [
        parts.part(
            "activations",
            format!(
                "activations kept for backward: 2 views × {} images × {} values",
                format_count(shape.batch),
                format_count(per_image)
            ),
            product(&[2, shape.batch, per_image, F32]),
            &ACTIVATION_KEYS,
        ),
        parts.part(
            "working set",
            format!(
                "working set (target forward, backward): 3 × {} values × {} images",
                format_count(e.largest),
                format_count(shape.batch.saturating_mul(views_at_once))
            ),
            product(&[3, e.largest, shape.batch, views_at_once, F32]),
            &working_keys,
        ),
    ]
}

/// The kNN monitor's share for `bank` and `queries` images.
fn monitor_plan(
    config: &RunConfig,
    shape: Shape,
    encoder: Option<EncoderFootprint>,
    (bank, queries, counted): (u64, u64, bool),
    parts: &Parts,
) -> MonitorPlan {
    let both = bank.saturating_add(queries);
    let eval_batch = config.eval.batch_size as u64;
    let features = encoder.map(|e| {
        parts.part(
            "kNN features",
            format!(
                "bank and query features: {} × {} values × 2",
                format_count(both),
                format_count(e.output_dim)
            ),
            product(&[both, e.output_dim, 2, F32]),
            &[
                "eval.knn.bank_size",
                "data.test_limit",
                "model.encoder",
                "model.width_multiplier",
            ],
        )
    });
    let raw_fits = product(&[shape.channels as u64, shape.size, shape.size])
        <= byol_eval::RAW_PIXELS_MAX_VALUES as u64;
    let raw_pixels = raw_fits.then(|| {
        parts.part(
            "raw-pixel features",
            format!(
                "raw-pixel features (at the start): {} × {} values × 2",
                format_count(both),
                format_count(shape.image)
            ),
            product(&[both, shape.image, 2, F32]),
            &["eval.knn.bank_size", "data.test_limit", "augment.size"],
        )
    });
    let largest = encoder.map_or(0, |e| e.largest);
    // knn_classify's chunk: 2^22 / bank + 1 query rows of `bank`
    // similarities, on the device and read back to the host
    let rows = (1u64 << 22) / bank.max(1) + 1;
    let similarities = product(&[rows, bank, F32]);
    let similarity_rows = |what: &str| {
        parts.part(
            "similarity rows",
            format!(
                "similarity rows{what}: {} × {} bank images",
                format_count(rows),
                format_count(bank)
            ),
            similarities,
            &["eval.knn.bank_size"],
        )
    };
    MonitorPlan {
        bank,
        queries,
        counted,
        features,
        raw_pixels,
        device: vec![
            parts.part(
                "evaluation batch",
                format!(
                    "evaluation batch: {} images, no graph",
                    format_count(eval_batch)
                ),
                product(&[
                    eval_batch,
                    shape.image.saturating_add(largest.saturating_mul(3)),
                    F32,
                ]),
                &["eval.batch_size", "augment.size", "model.encoder"],
            ),
            similarity_rows(""),
        ],
        host: vec![
            parts.part(
                "evaluation batch",
                format!(
                    "evaluation batch: {} transformed images",
                    format_count(eval_batch)
                ),
                product(&[eval_batch, shape.image, F32]),
                &["eval.batch_size", "augment.size"],
            ),
            similarity_rows(" read back"),
        ],
    }
}

/// The largest of `parts`, with their keys, until they make up 90% of
/// `total` (at most three).
fn largest(mut parts: Vec<&Part>, total: u64) -> String {
    parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    let mut named = Vec::new();
    let mut covered = 0u64;
    for p in parts.into_iter().take(3) {
        named.push(format!("{} {} ({})", p.name, format_bytes(p.bytes), p.keys));
        covered = covered.saturating_add(p.bytes);
        if covered as f64 >= 0.9 * total as f64 {
            break;
        }
    }
    named.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GIB: u64 = 1 << 30;

    fn config(file: Option<&str>, overrides: &[&str]) -> RunConfig {
        let path = file.map(|f| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../configs")
                .join(f)
        });
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RunConfig::load(path.as_deref(), &overrides).expect("a valid config")
    }

    /// The default run's data: 4,000 grey training images, all in the
    /// bank, 1,000 queries.
    fn sample() -> DataFacts {
        DataFacts {
            train_images: Some(4_000),
            channels: Some(1),
            monitor: MonitorImages::Counted {
                bank: 4_000,
                queries: 1_000,
            },
        }
    }

    #[test]
    fn the_default_run_fits_in_a_few_hundred_mib() {
        let plan = MemoryPlan::new(&config(Some("default.toml"), &[]), &sample());
        let total = plan.device_bytes() + plan.host_bytes();
        assert!(
            (10 << 20..400 << 20).contains(&total),
            "{}",
            format_bytes(total)
        );
        plan.check(DeviceMemory::Shared(GIB))
            .expect("fits in 1 GiB");
        // 0.31 M encoder + heads values, online and target
        let e = plan.encoder.expect("built-in encoder");
        assert_eq!(e.output_dim, 128);
        assert!(plan.resident_bytes() < 16 << 20);
    }

    #[test]
    fn an_absurd_image_size_is_refused_naming_augment_size() {
        let c = config(Some("default.toml"), &["augment.size=100000"]);
        let plan = MemoryPlan::new(&c, &DataFacts::default());
        let err = plan
            .check(DeviceMemory::Unknown)
            .expect_err("100000-px images are refused even without a known limit");
        assert!(
            matches!(
                err,
                TrainError::TooLarge {
                    exceeded: Exceeded::AbsurdDevice,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("augment.size = 100000"), "{msg}");
        assert!(msg.contains("train.batch_size = 64"), "{msg}");
        assert!(
            msg.starts_with("device memory: the run needs about"),
            "{msg}"
        );
    }

    #[test]
    fn the_imagenet_recipe_at_batch_4096_is_refused_on_an_80_gib_gpu_but_planned() {
        let c = config(Some("imagenet-resnet50.toml"), &[]);
        assert_eq!(c.train.batch_size, 4096);
        // its data folder is not here: nothing counted
        let plan = MemoryPlan::new(&c, &DataFacts::default());
        assert_eq!((plan.channels, plan.channels_assumed), (3, true));
        let device = plan.device_bytes();
        // two views × 4096 images × 30.9 M values of ResNet-50 at 224 px
        assert!(device > 500 * GIB, "{}", format_bytes(device));
        let err = plan
            .check(DeviceMemory::Dedicated(80 * GIB))
            .expect_err("not on one 80 GiB GPU");
        let msg = err.to_string();
        assert!(msg.contains("the device's 80.0 GiB"), "{msg}");
        assert!(
            msg.contains("activations") && msg.contains("train.batch_size = 4096"),
            "{msg}"
        );
        // the monitor is shown as eval.knn.bank_size images of each, unchecked
        let monitor = plan.monitor.as_ref().expect("eval.monitor is on");
        assert_eq!((monitor.bank, monitor.counted), (100_000, false));
        assert!(
            monitor.raw_pixels.is_none(),
            "224-px images skip the raw-pixel baseline"
        );
        // at batch 64 the step fits an 80 GiB GPU
        let small = MemoryPlan::new(
            &config(Some("imagenet-resnet50.toml"), &["train.batch_size=64"]),
            &DataFacts::default(),
        );
        small
            .check(DeviceMemory::Dedicated(80 * GIB))
            .expect("batch 64 fits");
    }

    #[test]
    fn doubling_the_batch_doubles_the_activations() {
        let at = |batch: usize| {
            let c = config(
                Some("default.toml"),
                &[&format!("train.batch_size={batch}")],
            );
            let plan = MemoryPlan::new(&c, &sample());
            plan.step
                .iter()
                .find(|p| p.what.starts_with("activations"))
                .expect("activations")
                .bytes
        };
        assert_eq!(at(128), 2 * at(64));
    }

    #[test]
    fn accumulation_keeps_the_activations_of_one_micro_batch() {
        let plan = |overrides: &[&str]| {
            MemoryPlan::new(&config(Some("default.toml"), overrides), &sample())
        };
        let (one, four) = (plan(&[]), plan(&["train.accumulate=4"]));
        let bytes = |p: &MemoryPlan, what: &str| {
            p.step
                .iter()
                .find(|x| x.what.starts_with(what))
                .expect("part")
                .bytes
        };
        assert_eq!(bytes(&one, "activations"), bytes(&four, "activations"));
        assert_eq!(4 * bytes(&one, "input"), bytes(&four, "input"));
        assert_eq!(2 * bytes(&one, "gradients"), bytes(&four, "gradients"));
        assert_eq!(4 * one.loader.bytes, four.loader.bytes);
    }

    #[test]
    fn each_peer_holds_its_replica_and_its_shard_and_one_memory_counts_every_peer() {
        let plan = |overrides: &[&str]| {
            MemoryPlan::new(&config(Some("default.toml"), overrides), &sample())
        };
        let one = plan(&["train.batch_size=64"]);
        let four = plan(&[
            "train.batch_size=256",
            "train.devices=[\"cpu\", \"cpu\", \"cpu\", \"cpu\"]",
        ]);
        assert_eq!((one.peers, four.peers), (1, 4));
        // a peer of four with a global batch of 256 is one device with 64,
        // less the batches one device's loader uploads ahead
        let prefetched = |p: &MemoryPlan| {
            p.resident
                .iter()
                .filter(|x| x.what.starts_with("prefetched"))
                .map(|x| x.bytes)
                .sum::<u64>()
        };
        // data.prefetch = 2: as many batches queued on the device as on the host
        assert_eq!((prefetched(&four), one.loader.bytes), (0, prefetched(&one)));
        assert_eq!(
            one.resident_bytes() - prefetched(&one),
            four.resident_bytes()
        );
        assert_eq!(one.step_bytes(), four.step_bytes());
        // the peers' loader holds the whole global batch, all on the host
        // (four batches of 256 against one device's two of 64)
        assert_eq!(8 * one.loader.bytes, four.loader.bytes);
        // in one memory, the four peers count four times
        assert_eq!(
            four.shared_bytes(),
            4 * four.device_bytes() + four.host_bytes()
        );
        let just = four.shared_bytes();
        four.check(DeviceMemory::Shared(just))
            .expect("exactly fits");
        four.check(DeviceMemory::Shared(just - 1))
            .expect_err("one byte short");
        // four GPUs: each its own
        four.check(DeviceMemory::Dedicated(four.device_bytes()))
            .expect("each device fits");
    }

    #[test]
    fn the_optimizer_state_is_two_values_per_parameter_for_adam_one_for_sgd() {
        let state = |opt: &str| {
            let c = config(Some("default.toml"), &[&format!("train.optimizer={opt}")]);
            MemoryPlan::new(&c, &sample()).resident[1].bytes
        };
        assert_eq!(state("adam"), 2 * state("sgd"));
        assert_eq!(state("lars"), state("sgd"));
    }

    #[test]
    fn shared_memory_counts_host_and_device_and_a_dedicated_device_only_its_own() {
        let plan = MemoryPlan::new(&config(Some("default.toml"), &[]), &sample());
        let (device, host) = (plan.device_bytes(), plan.host_bytes());
        plan.check(DeviceMemory::Dedicated(device))
            .expect("exactly fits");
        let err = plan
            .check(DeviceMemory::Shared(device + host - 1))
            .expect_err("one byte short");
        assert!(
            err.to_string()
                .starts_with("memory (host and device share it)"),
            "{err}"
        );
        assert!(plan.check(DeviceMemory::Dedicated(device - 1)).is_err());
    }

    #[test]
    fn an_uncounted_monitor_is_shown_but_not_checked() {
        let c = config(Some("default.toml"), &["eval.knn.bank_size=10000000"]);
        let unknown = MemoryPlan::new(&c, &DataFacts::default());
        let monitor = unknown.monitor.as_ref().expect("monitor on");
        assert!(monitor.device_bytes() > 10 * GIB);
        unknown
            .check(DeviceMemory::Shared(GIB))
            .expect("the bank's size is only a bound before the data is open");
        let counted = MemoryPlan::new(&c, &sample());
        counted
            .check(DeviceMemory::Shared(GIB))
            .expect("4,000 images");
        let off = MemoryPlan::new(
            &config(Some("default.toml"), &["eval.monitor=false"]),
            &sample(),
        );
        assert!(off.monitor.is_none());
    }

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(80 * GIB), "80.0 GiB");
        assert_eq!(format_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(format_count(1_281_167), "1,281,167");
        assert_eq!(format_count(64), "64");
    }
}
