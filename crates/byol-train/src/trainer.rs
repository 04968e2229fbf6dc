//! The pretraining loop: data, the BYOL step, monitors, checkpoints and
//! resume.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_data::{DataError, Dataset, OpenOptions, Split, Subset};
use byol_eval::{
    EvalError, KnnAccuracy, extract_features_unless, knn_classify, labels, pixel_features,
};
use byol_model::{Byol, Encoder, ForwardOptions, ResNet};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::checkpoint::{
    TrainState, load_module, newest_usable, save_module, write_atomic, write_checkpoint,
};
use crate::collapse::{CollapseMetrics, collapse_metrics};
use crate::config::{LrSchedule, RunConfig};
use crate::loader::{Plan, with_loader};
use crate::metrics::{MetricsLog, Record};
use crate::optim::{ByolOptimizer, OptimizerSettings, clip_global_norm, split_gradients};
use crate::{TrainError, byol_loss, schedule};

/// The two parameter groups' optimizers: encoder + projector, and the
/// predictor (with its own learning-rate multiplier).
#[derive(Clone)]
pub struct Optimizers<M: AutodiffModule<B>, B: AutodiffBackend> {
    /// Encoder and projector.
    pub main: ByolOptimizer<M, B>,
    /// Predictor.
    pub predictor: ByolOptimizer<M, B>,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Optimizers<M, B> {
    /// Both groups with the same settings.
    pub fn new(settings: &OptimizerSettings) -> Self {
        Self {
            main: ByolOptimizer::new(settings),
            predictor: ByolOptimizer::new(settings),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.main.save(&dir.join("optimizer.mpk"))?;
        self.predictor.save(&dir.join("optimizer-predictor.mpk"))
    }

    fn load(self, dir: &Path, device: &B::Device) -> Result<Self, TrainError> {
        Ok(Self {
            main: self.main.load(&dir.join("optimizer.mpk"), device)?,
            predictor: self
                .predictor
                .load(&dir.join("optimizer-predictor.mpk"), device)?,
        })
    }
}

/// What one step uses besides the model and the views.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    /// Learning rate of the encoder and projector.
    pub lr: f64,
    /// Learning rate of the predictor.
    pub predictor_lr: f64,
    /// τ of the target update after the step.
    pub tau: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip_norm: f64,
    /// How the views go through the networks.
    pub forward: ForwardOptions,
    /// Make the loss NaN (the guard's test switch).
    pub poison: bool,
}

impl StepSettings {
    /// One learning rate for everything, no clipping, views apart.
    pub fn simple(lr: f64, tau: f64) -> Self {
        Self {
            lr,
            predictor_lr: lr,
            tau,
            grad_clip_norm: 0.0,
            forward: ForwardOptions::default(),
            poison: false,
        }
    }
}

/// What a step leaves for the loop, all on the inner backend and detached.
#[derive(Debug, Clone)]
pub struct StepOutput<B: Backend> {
    /// The loss, `[1]`, still on the device.
    pub loss: Tensor<B, 1>,
    /// Online representations of view 1, `[batch, dim]`.
    pub representations: Tensor<B, 2>,
    /// Online projections of view 1, `[batch, projection_dim]`.
    pub projections: Tensor<B, 2>,
}

/// One BYOL training step: forward both views, symmetric loss, backward,
/// optional global-norm clip, an optimizer step per parameter group, then
/// the target update ξ ← τξ + (1 − τ)θ
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.1].
pub fn byol_step<B: AutodiffBackend, E: Encoder<B> + AutodiffModule<B>>(
    model: Byol<B, E>,
    optimizers: &mut Optimizers<Byol<B, E>, B>,
    view1: Tensor<B, 4>,
    view2: Tensor<B, 4>,
    settings: &StepSettings,
) -> (Byol<B, E>, StepOutput<B::InnerBackend>)
where
    Byol<B, E>: AutodiffModule<B>,
{
    let out = model.forward_with(view1, view2, settings.forward);
    let mut loss = byol_loss(out.p1, out.p2, out.z1, out.z2);
    if settings.poison {
        loss = loss.mul_scalar(f64::NAN);
    }
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    if settings.grad_clip_norm > 0.0 {
        clip_global_norm::<B, _>(&mut grads, &model.online, settings.grad_clip_norm);
    }
    let predictor_grads = split_gradients::<B, _>(&mut grads, &model.online.predictor);
    let model = optimizers.main.step(settings.lr, model, grads);
    let model = optimizers
        .predictor
        .step(settings.predictor_lr, model, predictor_grads);
    let output = StepOutput {
        loss: loss.inner(),
        representations: out.y1.inner(),
        projections: out.h1.inner(),
    };
    (model.update_target(settings.tau), output)
}

/// The figures a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// kNN on raw pixels (the floor to beat); `None` without labelled
    /// train and test splits.
    pub knn_raw_pixels: Option<KnnAccuracy>,
    /// kNN of the encoder before training.
    pub knn_random_init: Option<KnnAccuracy>,
    /// kNN of the encoder after training.
    pub knn_trained: Option<KnnAccuracy>,
    /// Optimizer steps done.
    pub steps: usize,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Training wall time (all sessions of a resumed run), seconds.
    pub train_seconds: f64,
    /// Wall time of this session, evaluation included, seconds.
    pub seconds: f64,
    /// Fraction of the training time spent waiting for data.
    pub data_wait_fraction: f64,
    /// Images skipped as unreadable (`data.on_corrupt = "skip"`).
    pub skipped_images: usize,
    /// Images of the pretraining set.
    pub train_images: usize,
    /// The step this session resumed from, if it did.
    pub resumed_from: Option<usize>,
}

/// How [`pretrain`] runs.
#[derive(Debug, Clone, Default)]
pub struct PretrainOptions {
    /// Show progress bars.
    pub progress: bool,
    /// Continue the run in the output folder from its newest valid
    /// checkpoint.
    pub resume: bool,
    /// Asks the run to stop early (on Ctrl-C, for one).
    pub stop: StopSignal,
}

/// A request to stop a [`pretrain`] run before its end. The run notices it
/// after the step in flight, writes a checkpoint of that step and returns
/// [`TrainError::Interrupted`]; `--resume` continues from there. Clones
/// share one request, so a signal handler can hold [`StopSignal::flag`].
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// The shared flag: setting it to `true` requests the stop.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }

    /// Requests the stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The labelled splits of the kNN monitor.
pub(crate) struct KnnData {
    pub(crate) bank: Arc<dyn Dataset>,
    pub(crate) bank_labels: Vec<u32>,
    pub(crate) queries: Arc<dyn Dataset>,
    pub(crate) query_labels: Vec<u32>,
}

struct Data {
    train: Arc<dyn Dataset>,
    knn: Option<KnnData>,
}

fn progress_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Opens the pretraining split and, when labelled train and test splits
/// exist, the kNN monitor's.
fn open_data(config: &RunConfig, show: bool) -> Result<Data, TrainError> {
    let d = &config.data;
    let scan_bar = if show {
        ProgressBar::new(0).with_style(progress_style(
            "checking files [{bar:30.cyan/blue}] {pos}/{len} {per_sec} ETA {eta}",
        ))
    } else {
        ProgressBar::hidden()
    };
    let report = |done: usize, total: usize| {
        scan_bar.set_length(total as u64);
        scan_bar.set_position(done as u64);
    };
    let options = OpenOptions {
        on_corrupt: d.on_corrupt,
        cifar100_labels: d.cifar100_labels,
        progress: Some(&report),
    };
    let open = |split| byol_data::open(&d.path, d.format, split, &options);
    let limited = |ds: Box<dyn Dataset>, limit: usize| -> Arc<dyn Dataset> {
        if limit > 0 {
            Arc::new(Subset::first(ds, limit))
        } else {
            Arc::from(ds)
        }
    };
    let train = limited(open(d.pretrain_split)?, d.train_limit);
    if !config.eval.monitor {
        scan_bar.finish_and_clear();
        return Ok(Data { train, knn: None });
    }
    let bank = if d.pretrain_split == Split::Train {
        Some(train.clone())
    } else {
        optional(open(Split::Train))?.map(|ds| limited(ds, d.train_limit))
    };
    let queries = optional(open(Split::Test))?.map(|ds| limited(ds, d.test_limit));
    scan_bar.finish_and_clear();
    for ds in [Some(&train), bank.as_ref(), queries.as_ref()]
        .into_iter()
        .flatten()
    {
        if ds.skipped_count() > 0 {
            tracing::warn!(
                "{} unreadable files skipped (data.on_corrupt = \"skip\")",
                ds.skipped_count()
            );
        }
    }
    let knn = match (bank, queries) {
        (Some(bank), Some(queries)) => match (labels(&*bank, 0), labels(&*queries, 0)) {
            (Ok(bank_labels), Ok(query_labels)) => Some(KnnData {
                bank,
                bank_labels,
                queries,
                query_labels,
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::info!("no kNN monitor: {e}");
                None
            }
        },
        _ => {
            tracing::info!(path = %d.path.display(), "no labelled train and test splits: no kNN monitor");
            None
        }
    };
    Ok(Data { train, knn })
}

/// A split that may not exist: `None` when the dataset has no such split.
fn optional(
    result: Result<Box<dyn Dataset>, DataError>,
) -> Result<Option<Box<dyn Dataset>>, TrainError> {
    match result {
        Ok(ds) => Ok(Some(ds)),
        Err(
            DataError::NoSplit { .. }
            | DataError::UnsupportedSplit { .. }
            | DataError::Missing { .. },
        ) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Weighted-kNN accuracy of `encoder`'s features (raw pixels when `None`)
/// on the run's kNN data; `None` when `stop` is requested before the
/// features are complete, so that a stop does not wait for a long
/// evaluation.
pub(crate) fn knn_eval<B: Backend, E: Encoder<B>>(
    encoder: Option<&E>,
    knn: &KnnData,
    config: &RunConfig,
    device: &B::Device,
    stop: &StopSignal,
) -> Result<Option<KnnAccuracy>, TrainError> {
    let transform = config.augment.eval_transform();
    let batch = config.eval.batch_size;
    let features = |ds: &dyn Dataset| -> Result<Option<Tensor<B, 2>>, TrainError> {
        let stopped = || stop.requested();
        let computed = match encoder {
            Some(e) => extract_features_unless(e, ds, 0, &transform, batch, device, &stopped),
            None => pixel_features(ds, 0, &transform, batch, device, &stopped),
        };
        match computed {
            Ok(f) => Ok(Some(f)),
            Err(EvalError::Stopped) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let Some(bank) = features(&*knn.bank)? else {
        return Ok(None);
    };
    let Some(queries) = features(&*knn.queries)? else {
        return Ok(None);
    };
    Ok(Some(knn_classify(
        bank,
        &knn.bank_labels,
        queries,
        &knn.query_labels,
        &config.eval.knn,
    )?))
}

fn create_dir(path: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(path).map_err(|e| TrainError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The keys of `a` and `b` (flattened, dotted) whose values differ, among
/// those that must not change when resuming.
fn resume_conflicts(a: &RunConfig, b: &RunConfig) -> Result<Vec<String>, TrainError> {
    fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let table = |c: &RunConfig| -> Result<Vec<(String, String)>, TrainError> {
        let value: toml::Value =
            toml::from_str(&c.to_toml()?).map_err(|e| TrainError::ConfigFile {
                path: "<resolved>".into(),
                message: e.to_string(),
            })?;
        let mut out = Vec::new();
        flatten("", &value, &mut out);
        Ok(out)
    };
    let fixed = |key: &str| {
        key == "seed"
            || key == "train.batch_size"
            || key == "train.use_momentum"
            || (key.starts_with("data.") && key != "data.prefetch")
            || key.starts_with("model.")
            || key.starts_with("augment.")
    };
    let (ta, tb) = (table(a)?, table(b)?);
    let mut keys: Vec<String> = ta
        .iter()
        .chain(&tb)
        .map(|(k, _)| k.clone())
        .filter(|k| fixed(k))
        .collect();
    keys.sort();
    keys.dedup();
    let get =
        |t: &[(String, String)], k: &str| t.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    Ok(keys
        .into_iter()
        .filter(|k| get(&ta, k) != get(&tb, k))
        .map(|k| {
            format!(
                "{k}: run has {}, now {}",
                get(&ta, &k).unwrap_or_else(|| "(unset)".into()),
                get(&tb, &k).unwrap_or_else(|| "(unset)".into())
            )
        })
        .collect())
}

/// The networks of a run, freshly initialised from the seed (under
/// [`byol_model::seeded`], every parameter materialised); with
/// `init_from`, the online encoder then takes those torchvision-keyed
/// weights, before `Byol::new` copies it into the target.
fn new_model<B: AutodiffBackend>(
    config: &RunConfig,
    channels: usize,
    device: &B::Device,
    init_from: Option<&Path>,
) -> Result<Byol<B, ResNet<B>>, TrainError> {
    // under the guard, every weight is drawn now from the run's seed alone,
    // even with other runs initialising in the process at the same time
    let _generator = byol_model::seeded::<B>(device, config.seed);
    let encoder = config.model.encoder_config(channels);
    let mut online = encoder.init(device);
    let target = config.train.use_momentum.then(|| encoder.init(device));
    if let Some(path) = init_from {
        online = byol_model::torchvision::load_torchvision(online, path, device)
            .map_err(TrainError::InitFrom)?;
        tracing::info!(path = %path.display(), "encoder initialised from model.init_from");
    }
    let model = Byol::new(online, target, &config.model.heads_config(), device);
    byol_model::materialize(&model);
    Ok(model)
}

/// `model.init_from` when set, checked to be a file.
fn init_from(config: &RunConfig) -> Result<Option<&Path>, TrainError> {
    let path = config.model.init_from.as_path();
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    if !path.is_file() {
        return Err(TrainError::InvalidConfig {
            key: "model.init_from".into(),
            value: path.display().to_string(),
            expected: "an existing safetensors file, or \"\" for fresh weights".into(),
        });
    }
    Ok(Some(path))
}

/// Runs BYOL pretraining as `config` says, in the run folder `out_dir`:
/// `config.toml` (resolved), `metrics.jsonl`, `checkpoints/step-N/`,
/// `encoder.mpk` (the online encoder alone) and `summary.json`.
///
/// Reports kNN accuracy of raw pixels, of the random-init encoder and of the
/// encoder every `eval.every_epochs` epochs, when the data has labelled
/// train and test splits. With `options.resume`, continues the run in
/// `out_dir` from its newest valid checkpoint; `config` must then agree with
/// the run's on data, model, augmentation, seed and batch size.
///
/// # Errors
///
/// Any [`TrainError`]: bad config values (checked before any work), data,
/// output files, a resume that does not fit, a diverging loss or collapse.
pub fn pretrain<B: AutodiffBackend>(
    config: &RunConfig,
    out_dir: &Path,
    device: &B::Device,
    options: PretrainOptions,
) -> Result<RunSummary, TrainError> {
    let started = Instant::now();
    config.validate()?;
    let config_path = out_dir.join("config.toml");
    if options.resume {
        let saved = RunConfig::load(Some(&config_path), &[])
            .map_err(|e| TrainError::Resume(format!("{}: {e}", out_dir.display())))?;
        let conflicts = resume_conflicts(&saved, config)?;
        if !conflicts.is_empty() {
            return Err(TrainError::Resume(format!(
                "{} was trained with other settings; refusing to resume:\n  {}",
                out_dir.display(),
                conflicts.join("\n  ")
            )));
        }
    } else if config_path.exists() || out_dir.join(crate::checkpoint::CHECKPOINTS).exists() {
        return Err(TrainError::Output {
            path: out_dir.to_path_buf(),
            message: "already holds a run; pass --resume to continue it, or choose another --out"
                .into(),
        });
    }
    if !options.resume {
        // checked before the data is scanned
        init_from(config)?;
    }
    let data = open_data(config, options.progress)?;
    let train = &data.train;
    let channels = train.channels();
    config.augment.check_channels(channels)?;
    config.model.encoder_config(channels).validate("model")?;

    let t = &config.train;
    let steps_per_epoch = train.len() / t.batch_size;
    if steps_per_epoch == 0 {
        return Err(TrainError::Dataset(format!(
            "{}: {} training images, fewer than train.batch_size = {}",
            config.data.path.display(),
            train.len(),
            t.batch_size
        )));
    }
    let mut total_steps = steps_per_epoch * t.epochs;
    if t.max_steps > 0 {
        total_steps = total_steps.min(t.max_steps);
    }
    let epochs = total_steps.div_ceil(steps_per_epoch);
    let warmup_steps = (t.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let base_lr = t.base_lr();

    let settings = t.optimizer_settings();
    let (model, mut optimizers, mut state, mut metrics, resumed_from) = if options.resume {
        let found = newest_usable(out_dir, |dir| {
            let model = load_module(
                new_model::<B>(config, channels, device, None)?,
                &dir.join("model.mpk"),
                device,
            )?;
            let optimizers = Optimizers::new(&settings).load(dir, device)?;
            Ok((model, optimizers))
        })
        .map(|(dir, state, (model, optimizers))| {
            tracing::info!(step = state.step, path = %dir.display(), "resuming");
            (model, optimizers, state)
        });
        let (model, optimizers, state) = found.ok_or_else(|| {
            TrainError::Resume(format!(
                "{}: no usable checkpoint in {}",
                out_dir.display(),
                out_dir.join(crate::checkpoint::CHECKPOINTS).display()
            ))
        })?;
        let finished = state.step == total_steps && out_dir.join("summary.json").exists();
        if state.step > total_steps || finished {
            return Err(TrainError::Resume(format!(
                "{}: its checkpoint is at step {}, and this config ends at step {total_steps} \
                 (train.epochs = {} × {steps_per_epoch} steps{}); nothing to train. \
                 To train further, raise train.epochs (--set train.epochs=N)",
                out_dir.display(),
                state.step,
                t.epochs,
                if t.max_steps > 0 {
                    format!(", train.max_steps = {}", t.max_steps)
                } else {
                    String::new()
                }
            )));
        }
        // the resolved config of the run from now on (train.epochs, lr, ...
        // may have changed): a later plain --resume continues with it
        write_atomic(&config_path, &config.to_toml()?)?;
        let metrics = MetricsLog::resume(&out_dir.join("metrics.jsonl"), state.step)?;
        let from = state.step;
        (model, optimizers, state, metrics, Some(from))
    } else {
        create_dir(out_dir)?;
        write_atomic(&config_path, &config.to_toml()?)?;
        let mut metrics = MetricsLog::create(&out_dir.join("metrics.jsonl"))?;
        let model = new_model::<B>(config, channels, device, init_from(config)?)?;
        let mut state = TrainState {
            step: 0,
            epoch_loss_sum: 0.0,
            epoch_steps: 0,
            tau: t.tau_base,
            lr: 0.0,
            last_epoch_loss: None,
            knn_raw_pixels: None,
            knn_random_init: None,
            knn_trained: None,
            low_z_std_intervals: 0,
            skipped_images: 0,
            train_seconds: 0.0,
            data_wait_seconds: 0.0,
        };
        if let Some(knn) = &data.knn {
            // a stop requested here skips the baselines; the loop then stops
            // after its first step
            let stop = &options.stop;
            let raw = knn_eval::<B::InnerBackend, ResNet<B::InnerBackend>>(
                None, knn, config, device, stop,
            )?;
            if let Some(raw) = raw {
                log_knn(&mut metrics, "raw_pixels", 0, 0, raw)?;
                state.knn_raw_pixels = Some(raw);
            }
            let random = knn_eval(
                Some(&model.online.encoder.valid()),
                knn,
                config,
                device,
                stop,
            )?;
            if let Some(random) = random {
                log_knn(&mut metrics, "random_init", 0, 0, random)?;
                state.knn_random_init = Some(random);
                state.knn_trained = Some(random);
            }
        }
        (model, Optimizers::new(&settings), state, metrics, None)
    };
    tracing::info!(
        out = %out_dir.display(),
        train = train.len(),
        steps = total_steps,
        from = state.step,
        encoder = ?config.model.encoder,
        "pretraining"
    );

    let bar = if options.progress {
        ProgressBar::new(total_steps as u64).with_style(progress_style(
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}",
        ))
    } else {
        ProgressBar::hidden()
    };
    bar.set_position(state.step as u64);
    let (size, c) = (config.augment.size, channels);
    let proj_dim = config.model.projection_dim;
    let warn_z_std = 0.1 / (proj_dim as f64).sqrt();
    let plan = Plan {
        seed: config.seed,
        batch_size: t.batch_size,
        steps_per_epoch,
        total_steps,
        start_step: state.step,
    };
    let session_start = Instant::now();
    let session_train_seconds = state.train_seconds;
    let session_wait_seconds = state.data_wait_seconds;
    let result = with_loader(
        &**train,
        plan,
        &config.augment,
        config.data.on_corrupt,
        config.data.prefetch,
        |loader| {
            let mut loss_sum =
                Tensor::<B::InnerBackend, 1>::from_floats([state.epoch_loss_sum as f32], device);
            let mut last_log = (Instant::now(), loader.waited(), 0usize);
            // this session's part of the epoch: after a resume mid-epoch the
            // images before the checkpoint were not timed here
            let mut epoch_start = (Instant::now(), loader.waited(), 0usize);
            let mut model = model;
            while let Some(batch) = loader.next_batch()? {
                let step = batch.step;
                let epoch = batch.epoch;
                bar.set_prefix(format!("epoch {epoch}/{epochs}"));
                for (name, reason) in &batch.skipped {
                    bar.suspend(|| tracing::warn!("skipped {name}: {reason}"));
                }
                state.skipped_images += batch.skipped.len();
                let n = batch.len;
                let v1 = Tensor::<B, 1>::from_floats(batch.view1.as_slice(), device)
                    .reshape([n, c, size, size]);
                let v2 = Tensor::<B, 1>::from_floats(batch.view2.as_slice(), device)
                    .reshape([n, c, size, size]);
                let lr = schedule::learning_rate(
                    step,
                    total_steps,
                    warmup_steps,
                    base_lr,
                    t.min_lr,
                    t.lr_schedule == LrSchedule::Cosine,
                );
                let tau = schedule::tau(step, total_steps, t.tau_base);
                let step_settings = StepSettings {
                    lr,
                    predictor_lr: lr * t.predictor_lr_multiplier,
                    tau,
                    grad_clip_norm: t.grad_clip_norm,
                    forward: ForwardOptions {
                        concat_views: t.concat_views,
                    },
                    poison: t.inject_nan_at_step == step + 1,
                };
                let (next, out) = byol_step(model, &mut optimizers, v1, v2, &step_settings);
                model = next;
                state.step = step + 1;
                state.tau = tau;
                state.lr = lr;
                state.epoch_steps += 1;
                last_log.2 += n;
                epoch_start.2 += n;
                loss_sum = loss_sum + out.loss.clone();
                bar.inc(1);

                if state.step % t.log_every == 0 || state.step == total_steps {
                    // the host synchronisations of the loop: one per log interval
                    let loss: f32 = out.loss.into_scalar().elem();
                    if !loss.is_finite() {
                        bar.abandon();
                        return Err(TrainError::NonFinite {
                            step: state.step,
                            loss,
                        });
                    }
                    let [_, dim] = out.representations.dims();
                    let reps: Vec<f32> = out
                        .representations
                        .into_data()
                        .to_vec()
                        .map_err(|e| TrainError::Dataset(format!("{e:?}")))?;
                    let projs: Vec<f32> = out
                        .projections
                        .into_data()
                        .to_vec()
                        .map_err(|e| TrainError::Dataset(format!("{e:?}")))?;
                    let collapse: CollapseMetrics = collapse_metrics(&reps, dim, &projs, proj_dim);
                    let elapsed = last_log.0.elapsed().as_secs_f64().max(1e-9);
                    let waited = (loader.waited() - last_log.1).as_secs_f64();
                    let ips = last_log.2 as f64 / elapsed;
                    bar.set_message(format!(
                        "{ips:.0} img/s loss {loss:.4} z-std {:.3} τ {tau:.4} lr {lr:.2e}",
                        collapse.z_std
                    ));
                    tracing::debug!(
                        step = state.step,
                        loss,
                        tau,
                        lr,
                        z_std = collapse.z_std,
                        "step"
                    );
                    metrics.write(&Record::Step {
                        step: state.step,
                        epoch,
                        loss,
                        tau,
                        lr,
                        images_per_sec: ips,
                        data_wait_fraction: waited / elapsed,
                        collapse,
                    })?;
                    last_log = (Instant::now(), loader.waited(), 0);
                    let threshold = if t.collapse_stop > 0.0 {
                        t.collapse_stop
                    } else {
                        warn_z_std
                    };
                    if collapse.z_std < threshold {
                        state.low_z_std_intervals += 1;
                    } else {
                        state.low_z_std_intervals = 0;
                    }
                    if state.low_z_std_intervals >= t.collapse_patience {
                        if t.collapse_stop > 0.0 {
                            bar.abandon();
                            return Err(TrainError::Collapsed {
                                step: state.step,
                                z_std: collapse.z_std,
                                threshold,
                            });
                        }
                        if state.low_z_std_intervals == t.collapse_patience {
                            bar.suspend(|| tracing::warn!(
                            "z-std {:.4} below {threshold:.4} for {} logged intervals: the representation may be collapsing (healthy ≈ {:.4})",
                            collapse.z_std, t.collapse_patience, 1.0 / (proj_dim as f64).sqrt()
                        ));
                        }
                    }
                }

                let epoch_end = state.step % steps_per_epoch == 0 || state.step == total_steps;
                if epoch_end {
                    let sum: f32 = loss_sum.clone().into_scalar().elem();
                    let mean = f64::from(sum) / state.epoch_steps.max(1) as f64;
                    if !mean.is_finite() {
                        bar.abandon();
                        return Err(TrainError::NonFinite {
                            step: state.step,
                            loss: mean as f32,
                        });
                    }
                    let seconds = epoch_start.0.elapsed().as_secs_f64().max(1e-9);
                    let waited = (loader.waited() - epoch_start.1).as_secs_f64();
                    let images_per_sec = epoch_start.2 as f64 / seconds;
                    bar.suspend(|| tracing::info!(
                    "epoch {epoch}: loss {mean:.4}, {images_per_sec:.0} img/s, {seconds:.1}s, data wait {:.1}%, τ {tau:.4}",
                    100.0 * waited / seconds, tau = state.tau
                ));
                    metrics.write(&Record::Epoch {
                        epoch,
                        step: state.step,
                        loss: mean,
                        seconds,
                        images_per_sec,
                        data_wait_fraction: waited / seconds,
                    })?;
                    state.last_epoch_loss = Some(mean);
                    if let Some(knn) = &data.knn
                        && (epoch % config.eval.every_epochs == 0 || state.step == total_steps)
                    {
                        let encoder = model.online.encoder.valid();
                        let acc = bar.suspend(|| {
                            knn_eval(Some(&encoder), knn, config, device, &options.stop)
                        })?;
                        if let Some(acc) = acc {
                            bar.suspend(|| log_knn(&mut metrics, "epoch", epoch, state.step, acc))?;
                            state.knn_trained = Some(acc);
                        } else {
                            bar.suspend(|| {
                                tracing::info!("kNN of epoch {epoch} skipped: a stop was requested")
                            });
                        }
                    }
                    state.epoch_loss_sum = 0.0;
                    state.epoch_steps = 0;
                    loss_sum = Tensor::zeros([1], device);
                }
                // a stop request at the last step changes nothing: the run
                // ends and saves as usual
                let stop = options.stop.requested() && state.step < total_steps;
                if epoch_end
                    || stop
                    || (t.checkpoint_every > 0 && state.step % t.checkpoint_every == 0)
                {
                    let sum: f32 = loss_sum.clone().into_scalar().elem();
                    if !sum.is_finite() {
                        bar.abandon();
                        return Err(TrainError::NonFinite {
                            step: state.step,
                            loss: sum,
                        });
                    }
                    state.epoch_loss_sum = f64::from(sum);
                    state.train_seconds =
                        session_train_seconds + session_start.elapsed().as_secs_f64();
                    state.data_wait_seconds = session_wait_seconds + loader.waited().as_secs_f64();
                    let model_ref = &model;
                    let opt_ref = &optimizers;
                    write_checkpoint(out_dir, &state, t.keep_checkpoints, |dir| {
                        save_module::<B, _>(model_ref.clone(), &dir.join("model.mpk"))?;
                        opt_ref.save(dir)
                    })?;
                }
                if stop {
                    bar.abandon();
                    return Err(TrainError::Interrupted {
                        step: state.step,
                        total: total_steps,
                        out: out_dir.to_path_buf(),
                    });
                }
                if epoch_end {
                    epoch_start = (Instant::now(), loader.waited(), 0);
                }
            }
            state.train_seconds = session_train_seconds + session_start.elapsed().as_secs_f64();
            state.data_wait_seconds = session_wait_seconds + loader.waited().as_secs_f64();
            Ok(model)
        },
    );
    let model = result?;
    bar.finish_and_clear();

    save_module::<B, _>(model.online.encoder.clone(), &out_dir.join("encoder.mpk"))?;
    let summary = RunSummary {
        knn_raw_pixels: state.knn_raw_pixels,
        knn_random_init: state.knn_random_init,
        knn_trained: state.knn_trained,
        steps: state.step,
        final_loss: state.last_epoch_loss.unwrap_or(f64::NAN),
        train_seconds: state.train_seconds,
        seconds: started.elapsed().as_secs_f64(),
        data_wait_fraction: state.data_wait_seconds / state.train_seconds.max(1e-9),
        skipped_images: state.skipped_images + train.skipped_count(),
        train_images: train.len(),
        resumed_from,
    };
    let json = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Output {
        path: out_dir.join("summary.json"),
        message: e.to_string(),
    })?;
    write_atomic(&out_dir.join("summary.json"), &json)?;
    Ok(summary)
}

fn log_knn(
    metrics: &mut MetricsLog,
    name: &str,
    epoch: usize,
    step: usize,
    acc: KnnAccuracy,
) -> Result<(), TrainError> {
    tracing::info!(
        "kNN {name:<12} epoch {epoch:>3}: top-1 {:.2}%  top-5 {:.2}%",
        100.0 * acc.top1,
        100.0 * acc.top5
    );
    metrics.write(&Record::Knn {
        model: name.to_string(),
        epoch,
        step,
        top1: acc.top1,
        top5: acc.top5,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::Distribution;
    use byol_model::{HeadsConfig, ResNetConfig};

    use crate::config::OptimizerKind;

    /// The trainable weights of an encoder's convolutions and BatchNorm
    /// scales (running statistics left out: the target's also move by its
    /// own forward passes).
    fn weights<B: Backend>(e: &ResNet<B>) -> Vec<f32> {
        let mut tensors = vec![e.conv1.weight.val().reshape([-1])];
        if let byol_model::Norm::Batch(bn) = &e.bn1 {
            tensors.extend([bn.gamma.val(), bn.beta.val()]);
        }
        for stage in &e.stages {
            for block in &stage.blocks {
                if let byol_model::Block::Basic(b) = block {
                    tensors.extend([
                        b.conv1.weight.val().reshape([-1]),
                        b.conv2.weight.val().reshape([-1]),
                    ]);
                }
            }
        }
        tensors
            .into_iter()
            .flat_map(|t| t.into_data().to_vec::<f32>().expect("f32"))
            .collect()
    }

    fn settings() -> OptimizerSettings {
        OptimizerSettings {
            kind: OptimizerKind::Adam,
            weight_decay: 0.0,
            momentum: 0.9,
            lars_eta: 1e-3,
            lars_exclude_bias_and_norm: true,
            lars_clip: false,
        }
    }

    /// The small encoder with 32 → 16 heads, online and target built apart.
    fn tiny_byol<B: AutodiffBackend>(device: &B::Device) -> Byol<B, ResNet<B>> {
        let cfg = ResNetConfig::small();
        Byol::new(
            cfg.init(device),
            Some(cfg.init(device)),
            &HeadsConfig::new(32, 16, 32),
            device,
        )
    }

    fn step_changes_weights<B: AutodiffBackend>(size: usize, batch: usize) {
        let device = Default::default();
        let model = tiny_byol::<B>(&device);
        let mut optim = Optimizers::new(&settings());
        let x1 = Tensor::<B, 4>::random([batch, 1, size, size], Distribution::Default, &device);
        let x2 = Tensor::<B, 4>::random([batch, 1, size, size], Distribution::Default, &device);
        let target0 = model.target.as_ref().expect("target");
        let (enc0, tgt0) = (weights(&model.online.encoder), weights(&target0.encoder));
        assert_eq!(enc0, tgt0, "the target starts as a copy");
        let (model, out) = byol_step(model, &mut optim, x1, x2, &StepSettings::simple(1e-2, 0.5));
        let loss: f32 = out.loss.into_scalar().elem();
        assert!(
            loss.is_finite() && (0.0..=4.0).contains(&loss),
            "loss {loss}"
        );
        let target1 = model.target.as_ref().expect("target");
        let (enc1, tgt1) = (weights(&model.online.encoder), weights(&target1.encoder));
        let changed = enc0.iter().zip(&enc1).filter(|(a, b)| a != b).count();
        assert!(
            changed > enc0.len() / 2,
            "only {changed} of {} encoder weights moved",
            enc0.len()
        );
        // τ = 0.5: the target moved halfway towards the updated online encoder
        for ((t0, t1), o) in tgt0.iter().zip(&tgt1).zip(&enc1) {
            let expected = 0.5 * t0 + 0.5 * o;
            assert!(
                (t1 - expected).abs() <= 1e-5 * (1.0 + o.abs()),
                "target {t1}, expected {expected}"
            );
        }
    }

    #[test]
    fn encoder_weights_change_after_a_step_and_target_follows() {
        step_changes_weights::<Autodiff<Flex>>(28, 8);
    }

    #[test]
    fn a_step_runs_on_the_ndarray_backend() {
        step_changes_weights::<Autodiff<NdArray>>(12, 4);
    }

    #[test]
    fn the_predictor_group_gets_its_own_learning_rate() {
        // lr 0 for encoder and projector: only the predictor moves
        type A = Autodiff<Flex>;
        let device = Default::default();
        let model = tiny_byol::<A>(&device);
        let predictor = |m: &Byol<A, ResNet<A>>| -> Vec<f32> {
            let w = m.online.predictor.linear1.weight.val();
            w.into_data().to_vec().expect("f32")
        };
        let pred0 = predictor(&model);
        let enc0 = weights(&model.online.encoder);
        let x = Tensor::<A, 4>::random([4, 1, 28, 28], Distribution::Default, &device);
        let mut optim = Optimizers::new(&settings());
        let step = StepSettings {
            predictor_lr: 1e-2,
            ..StepSettings::simple(0.0, 1.0)
        };
        let (model, _) = byol_step(model, &mut optim, x.clone(), x, &step);
        assert_ne!(pred0, predictor(&model));
        assert_eq!(enc0, weights(&model.online.encoder));
    }

    #[test]
    fn a_poisoned_step_gives_a_nan_loss() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let model = tiny_byol::<A>(&device);
        let x = Tensor::<A, 4>::random([4, 1, 28, 28], Distribution::Default, &device);
        let step = StepSettings {
            poison: true,
            ..StepSettings::simple(1e-3, 0.99)
        };
        let (_, out) = byol_step(
            model,
            &mut Optimizers::new(&settings()),
            x.clone(),
            x,
            &step,
        );
        let loss: f32 = out.loss.into_scalar().elem();
        assert!(loss.is_nan());
    }

    /// The eval-mode features of `encoder` on a fixed batch.
    fn features<B: Backend>(encoder: &ResNet<B>) -> Vec<f32> {
        let x = Tensor::<B, 1>::from_floats(
            (0..2 * 28 * 28)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect::<Vec<_>>()
                .as_slice(),
            &Default::default(),
        )
        .reshape([2, 1, 28, 28]);
        encoder.forward(x).into_data().to_vec().expect("f32")
    }

    #[test]
    fn init_from_loads_the_weights_into_online_and_target_encoders() {
        use byol_model::torchvision::{
            TensorValues, apply_torchvision_state, save_torchvision, torchvision_state_dict,
        };
        type A = Autodiff<Flex>;
        let device = Default::default();
        // weights of another seed, with running statistics moved off (0, 1)
        Flex::seed(&device, 99);
        let source = ResNetConfig::small().init::<Flex>(&device);
        let mut state = std::collections::BTreeMap::new();
        for mut t in torchvision_state_dict(&source).expect("batch norm") {
            if let TensorValues::F32(v) = &mut t.values
                && t.name.contains("running")
            {
                v.iter_mut().for_each(|x| *x += 0.25);
            }
            state.insert(t.name.clone(), t);
        }
        let source = apply_torchvision_state(source, &state, "test", &device).expect("own layout");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        save_torchvision(&source, &path).expect("saved");

        let fresh = new_model::<A>(&RunConfig::default(), 1, &device, None).expect("model");
        let mut config = RunConfig::default();
        config.model.init_from = path;
        let model = new_model::<A>(&config, 1, &device, init_from(&config).expect("a file"))
            .expect("model");
        let expected = features(&source);
        assert_ne!(features(&fresh.online.encoder.valid()), expected);
        assert_eq!(features(&model.online.encoder.valid()), expected);
        let target = model.target.as_ref().expect("target");
        assert_eq!(features(&target.encoder.valid()), expected);
    }

    #[test]
    fn init_from_of_another_architecture_names_the_key_and_both_shapes() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let other = ResNetConfig::resnet18()
            .with_stem(byol_model::Stem::Small)
            .with_in_channels(1)
            .init::<Flex>(&device);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r18.safetensors");
        byol_model::torchvision::save_torchvision(&other, &path).expect("saved");
        let mut config = RunConfig::default();
        config.model.init_from = path;
        let Err(err) = new_model::<A>(&config, 1, &device, init_from(&config).expect("a file"))
        else {
            panic!("ResNet-18 weights should not load into the small encoder");
        };
        let msg = err.to_string();
        assert!(msg.starts_with("model.init_from"), "{msg}");
        assert!(
            msg.contains("conv1.weight")
                && msg.contains("[64, 1, 3, 3]")
                && msg.contains("[32, 1, 3, 3]"),
            "{msg}"
        );
        config.model.init_from = dir.path().join("missing.safetensors");
        let err = init_from(&config).expect_err("no such file");
        assert!(err.to_string().contains("model.init_from"), "{err}");
    }

    #[test]
    fn resume_conflicts_name_the_keys_that_matter() {
        let a = RunConfig::default();
        let mut b = RunConfig::default();
        b.train.epochs = 99; // allowed: a longer run
        b.train.lr = 0.5;
        assert!(resume_conflicts(&a, &b).expect("comparable").is_empty());
        b.model.projection_dim = 64;
        b.data.train_limit = 10;
        b.seed = 4;
        let conflicts = resume_conflicts(&a, &b).expect("comparable").join("; ");
        for key in ["model.projection_dim", "data.train_limit", "seed"] {
            assert!(conflicts.contains(key), "{conflicts}");
        }
        assert!(!conflicts.contains("train.lr"), "{conflicts}");
    }
}
