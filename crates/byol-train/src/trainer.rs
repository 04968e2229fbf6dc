//! The pretraining loop.

use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{Adam, AdamConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_data::{IdxDataset, ImageRef, Split};
use byol_eval::{EvalTransform, KnnAccuracy, extract_features, knn_classify, pixel_features};
use byol_model::{Byol, Encoder, ResNet};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::checkpoint::{save_module, save_record};
use crate::config::{DataFormat, OptimizerKind, RunConfig};
use crate::metrics::{MetricsLog, Record};
use crate::{TrainError, byol_loss, schedule};

/// The optimizers a run can use, over the whole BYOL module (the target's
/// parameters get no gradients, so the optimizers leave them alone).
#[derive(Clone)]
pub enum ByolOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    /// See [`OptimizerKind::Adam`].
    Adam(OptimizerAdaptor<Adam, M, B>),
    /// See [`OptimizerKind::Sgd`].
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> ByolOptimizer<M, B> {
    /// Builds the optimizer named by `kind`. burn's defaults differ from
    /// PyTorch's (Adam ε 1e-5, SGD dampening 0.1); these are set as PyTorch.
    pub fn new(kind: OptimizerKind, weight_decay: f64, momentum: f64) -> Self {
        let decay = (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32));
        match kind {
            OptimizerKind::Adam => Self::Adam(
                AdamConfig::new()
                    .with_epsilon(1e-8)
                    .with_weight_decay(decay)
                    .init(),
            ),
            OptimizerKind::Sgd => Self::Sgd(
                SgdConfig::new()
                    .with_momentum(Some(MomentumConfig {
                        momentum,
                        dampening: 0.0,
                        nesterov: false,
                    }))
                    .with_weight_decay(decay)
                    .init(),
            ),
        }
    }

    /// One optimizer step.
    pub fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        match self {
            Self::Adam(o) => o.step(lr, module, grads),
            Self::Sgd(o) => o.step(lr, module, grads),
        }
    }
}

/// One BYOL training step: forward both views, symmetric loss, backward,
/// optimizer step on the online network, then the target update with `tau`.
/// Returns the updated model and the (device-resident) loss.
pub fn byol_step<B: AutodiffBackend, E: Encoder<B> + AutodiffModule<B>>(
    model: Byol<B, E>,
    optimizer: &mut ByolOptimizer<Byol<B, E>, B>,
    view1: Tensor<B, 4>,
    view2: Tensor<B, 4>,
    lr: f64,
    tau: f64,
) -> (Byol<B, E>, Tensor<B::InnerBackend, 1>)
where
    Byol<B, E>: AutodiffModule<B>,
{
    let out = model.forward(view1, view2);
    let loss = byol_loss(out.p1, out.p2, out.z1, out.z2);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optimizer.step(lr, model, grads);
    (model.update_target(tau), loss.inner())
}

/// The figures a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// kNN on raw pixels (the floor to beat).
    pub knn_raw_pixels: KnnAccuracy,
    /// kNN of the encoder before training.
    pub knn_random_init: KnnAccuracy,
    /// kNN of the encoder after training.
    pub knn_trained: KnnAccuracy,
    /// Optimizer steps done.
    pub steps: usize,
    /// Final epoch's mean loss.
    pub final_loss: f64,
    /// Wall time of the whole run, evaluation included.
    pub seconds: f64,
}

struct Splits {
    train: IdxDataset,
    test: IdxDataset,
}

fn load_data(config: &RunConfig) -> Result<Splits, TrainError> {
    let d = &config.data;
    let (mut train, mut test) = match d.format {
        DataFormat::Idx => (
            IdxDataset::load_dir(&d.path, Split::Train)?,
            IdxDataset::load_dir(&d.path, Split::Test)?,
        ),
    };
    if d.train_limit > 0 {
        train = train.take(d.train_limit);
    }
    if d.test_limit > 0 {
        test = test.take(d.test_limit);
    }
    if train.len() < config.train.batch_size {
        return Err(TrainError::Dataset(format!(
            "{}: {} training images, fewer than train.batch_size = {}",
            d.path.display(),
            train.len(),
            config.train.batch_size
        )));
    }
    Ok(Splits { train, test })
}

/// kNN of features from `encode` on the labelled splits, or `None` when a
/// split has no labels.
fn knn<B: Backend>(
    splits: &Splits,
    config: &RunConfig,
    encode: impl Fn(&byol_data::ImageSet) -> Result<Tensor<B, 2>, TrainError>,
) -> Result<Option<KnnAccuracy>, TrainError> {
    let (Some(train_labels), Some(test_labels)) = (&splits.train.labels, &splits.test.labels)
    else {
        return Ok(None);
    };
    let bank = encode(&splits.train.images)?;
    let queries = encode(&splits.test.images)?;
    Ok(Some(knn_classify(
        bank,
        train_labels,
        queries,
        test_labels,
        &config.eval.knn,
    )?))
}

fn encoder_knn<B: Backend>(
    encoder: &ResNet<B>,
    splits: &Splits,
    config: &RunConfig,
    device: &B::Device,
) -> Result<Option<KnnAccuracy>, TrainError> {
    let transform = EvalTransform {
        size: config.augment.size,
        mean: config.augment.mean.clone(),
        std: config.augment.std.clone(),
    };
    knn(splits, config, |images| {
        Ok(extract_features(
            encoder,
            images,
            &transform,
            config.eval.batch_size,
            device,
        )?)
    })
}

fn create_dir(path: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(path).map_err(|e| TrainError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), TrainError> {
    std::fs::write(path, text).map_err(|e| TrainError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn progress_bar(total: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Splitmix64: derives independent seeds from (seed, a, b).
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs BYOL pretraining as `config` says, writing into `out_dir`:
/// `config.toml` (resolved), `metrics.jsonl`, `checkpoint/` (model and
/// optimizer), `encoder.mpk` (the online encoder alone) and `summary.json`.
///
/// Reports kNN accuracy of raw pixels, of the random-init encoder and of the
/// encoder after each `eval.every_epochs` epochs on the test split.
///
/// # Errors
///
/// Any [`TrainError`]: bad config values (checked before any work), data,
/// output files, or a diverging loss.
pub fn pretrain<B: AutodiffBackend>(
    config: &RunConfig,
    out_dir: &Path,
    device: &B::Device,
    show_progress: bool,
) -> Result<RunSummary, TrainError> {
    let started = Instant::now();
    config.validate()?;
    let splits = load_data(config)?;
    let channels = splits.train.images.channels;
    config.augment.check_channels(channels)?;
    let encoder_cfg = config.model.encoder_config(channels);
    encoder_cfg.validate("model")?;

    create_dir(out_dir)?;
    write_file(&out_dir.join("config.toml"), &config.to_toml()?)?;
    let mut metrics = MetricsLog::create(&out_dir.join("metrics.jsonl"))?;
    tracing::info!(
        out = %out_dir.display(),
        train = splits.train.len(),
        test = splits.test.len(),
        encoder = ?config.model.encoder,
        "pretraining"
    );

    B::seed(device, config.seed);
    let mut model: Byol<B, ResNet<B>> = Byol::new(
        encoder_cfg.init(device),
        encoder_cfg.init(device),
        &config.model.heads_config(),
        device,
    );
    let mut optimizer = ByolOptimizer::new(
        config.train.optimizer,
        config.train.weight_decay,
        config.train.momentum,
    );

    let none = KnnAccuracy {
        top1: 0.0,
        top5: 0.0,
    };
    let log_knn = |metrics: &mut MetricsLog, name: &str, epoch, step, acc: Option<KnnAccuracy>| {
        if let Some(acc) = acc {
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
            })?;
        }
        Ok::<_, TrainError>(acc.unwrap_or(none))
    };
    let inner_device = device.clone();
    let raw = knn::<B::InnerBackend>(&splits, config, |images| {
        Ok(pixel_features(images, &inner_device))
    })?;
    let knn_raw_pixels = log_knn(&mut metrics, "raw_pixels", 0, 0, raw)?;
    let random = encoder_knn(&model.online.encoder.valid(), &splits, config, device)?;
    let knn_random_init = log_knn(&mut metrics, "random_init", 0, 0, random)?;
    let mut knn_trained = knn_random_init;

    let t = &config.train;
    let batch = t.batch_size;
    let steps_per_epoch = splits.train.len() / batch;
    let mut total_steps = steps_per_epoch * t.epochs;
    if t.max_steps > 0 {
        total_steps = total_steps.min(t.max_steps);
    }
    let epochs = total_steps.div_ceil(steps_per_epoch);
    let (size, c) = (config.augment.size, channels);
    let bar = progress_bar(total_steps as u64, show_progress);
    let mut step = 0;
    let mut final_loss = f64::NAN;
    let mut indices: Vec<usize> = (0..splits.train.len()).collect();
    let mut tau = schedule::tau(0, total_steps, t.tau_base);

    for epoch in 1..=epochs {
        let span = tracing::info_span!("epoch", n = epoch);
        let _enter = span.enter();
        bar.set_prefix(format!("epoch {epoch}/{epochs}"));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(config.seed, epoch as u64, 0));
        indices.shuffle(&mut rng);
        let epoch_start = Instant::now();
        let mut last_log = Instant::now();
        let mut logged_since = 0usize;
        let mut loss_sum = Tensor::<B::InnerBackend, 1>::zeros([1], device);
        let mut epoch_steps = 0;
        for chunk in indices.chunks_exact(batch) {
            if step >= total_steps {
                break;
            }
            let images: Vec<ImageRef<'_>> = chunk
                .iter()
                .map(|&i| splits.train.images.image(i))
                .collect();
            let (v1, v2) = byol_augment::two_views(
                &images,
                &config.augment,
                mix(config.seed, epoch as u64, step as u64 + 1),
            );
            let v1 =
                Tensor::<B, 1>::from_floats(v1.as_slice(), device).reshape([batch, c, size, size]);
            let v2 =
                Tensor::<B, 1>::from_floats(v2.as_slice(), device).reshape([batch, c, size, size]);
            tau = schedule::tau(step, total_steps, t.tau_base);
            let (next, loss) = byol_step(model, &mut optimizer, v1, v2, t.lr, tau);
            model = next;
            step += 1;
            epoch_steps += 1;
            logged_since += batch;
            loss_sum = loss_sum + loss.clone();
            if step % t.log_every == 0 || step == total_steps {
                // the only host synchronisation of the step loop
                let value: f32 = loss.into_scalar().elem();
                if !value.is_finite() {
                    bar.abandon();
                    return Err(TrainError::NonFinite { step, loss: value });
                }
                let ips = logged_since as f64 / last_log.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "{ips:.0} img/s loss {value:.4} τ {tau:.4} lr {:.2e}",
                    t.lr
                ));
                tracing::debug!(step, loss = value, tau, "step");
                metrics.write(&Record::Step {
                    step,
                    epoch,
                    loss: value,
                    tau,
                    lr: t.lr,
                    images_per_sec: ips,
                })?;
                last_log = Instant::now();
                logged_since = 0;
            }
            bar.inc(1);
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        let mean: f32 = loss_sum.into_scalar().elem();
        final_loss = f64::from(mean) / epoch_steps.max(1) as f64;
        if !final_loss.is_finite() {
            bar.abandon();
            return Err(TrainError::NonFinite {
                step,
                loss: final_loss as f32,
            });
        }
        let images_per_sec = (epoch_steps * batch) as f64 / seconds.max(1e-9);
        bar.suspend(|| {
            tracing::info!(
                "epoch {epoch}: loss {final_loss:.4}, {images_per_sec:.0} img/s, {seconds:.1}s, tau {tau:.4}"
            )
        });
        metrics.write(&Record::Epoch {
            epoch,
            step,
            loss: final_loss,
            seconds,
            images_per_sec,
        })?;
        if epoch % config.eval.every_epochs == 0 || epoch == epochs {
            let acc = bar
                .suspend(|| encoder_knn(&model.online.encoder.valid(), &splits, config, device))?;
            knn_trained = bar.suspend(|| log_knn(&mut metrics, "epoch", epoch, step, acc))?;
        }
    }
    bar.finish_and_clear();

    let ckpt = out_dir.join("checkpoint");
    create_dir(&ckpt)?;
    let optim_path = ckpt.join("optimizer.mpk");
    match &optimizer {
        ByolOptimizer::Adam(o) => save_record::<B, _>(o.to_record(), &optim_path)?,
        ByolOptimizer::Sgd(o) => save_record::<B, _>(o.to_record(), &optim_path)?,
    }
    write_file(
        &ckpt.join("state.json"),
        &serde_json::json!({ "step": step, "epoch": epochs, "tau": tau }).to_string(),
    )?;
    save_module::<B, _>(model.online.encoder.clone(), &out_dir.join("encoder.mpk"))?;
    save_module::<B, _>(model, &ckpt.join("model.mpk"))?;

    let summary = RunSummary {
        knn_raw_pixels,
        knn_random_init,
        knn_trained,
        steps: step,
        final_loss,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_file(
        &out_dir.join("summary.json"),
        &serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Output {
            path: out_dir.join("summary.json"),
            message: e.to_string(),
        })?,
    )?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Distribution;
    use byol_model::{HeadsConfig, ResNetConfig};

    /// Every float tensor of a module, flattened, in visiting order.
    fn values<B: Backend, M: Module<B>>(m: &M) -> Vec<f32> {
        struct V(Vec<f32>);
        impl<B: Backend> ModuleVisitor<B> for V {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                self.0
                    .extend(p.val().into_data().to_vec::<f32>().expect("f32"));
            }
        }
        let mut v = V(Vec::new());
        m.visit(&mut v);
        v.0
    }

    /// The trainable parameters of an encoder (BatchNorm running statistics
    /// left out: the target's also move by its own forward passes).
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

    fn step_changes_weights<B: AutodiffBackend>(size: usize, batch: usize) {
        let device = Default::default();
        let cfg = ResNetConfig::small();
        let model: Byol<B, ResNet<B>> = Byol::new(
            cfg.init(&device),
            cfg.init(&device),
            &HeadsConfig::new(32, 16, 32),
            &device,
        );
        let mut optim = ByolOptimizer::new(OptimizerKind::Adam, 0.0, 0.9);
        let x1 = Tensor::<B, 4>::random([batch, 1, size, size], Distribution::Default, &device);
        let x2 = Tensor::<B, 4>::random([batch, 1, size, size], Distribution::Default, &device);
        let (enc0, tgt0) = (
            weights(&model.online.encoder),
            weights(&model.target.encoder),
        );
        assert_eq!(enc0, tgt0, "the target starts as a copy");
        let (model, loss) = byol_step(model, &mut optim, x1, x2, 1e-2, 0.5);
        let loss: f32 = loss.into_scalar().elem();
        assert!(
            loss.is_finite() && (0.0..=4.0).contains(&loss),
            "loss {loss}"
        );
        let (enc1, tgt1) = (
            weights(&model.online.encoder),
            weights(&model.target.encoder),
        );
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
    fn sgd_momentum_has_no_dampening_as_pytorch() {
        // loss = sum(x·W): a constant gradient g = x per weight row. Two SGD
        // steps with momentum 0.9 and PyTorch's dampening 0 move W by
        // lr·g·(1 + 1.9) = 2.9·lr·g (burn's default dampening 0.1 gives 2.8).
        type A = Autodiff<Flex>;
        let device = Default::default();
        let mut linear = burn::nn::LinearConfig::new(3, 1)
            .with_bias(false)
            .init::<A>(&device);
        let w0 = values(&linear);
        let x = Tensor::<A, 2>::from_floats([[1.0, 2.0, 3.0]], &device);
        let mut optim = ByolOptimizer::<burn::nn::Linear<A>, A>::new(OptimizerKind::Sgd, 0.0, 0.9);
        for _ in 0..2 {
            let grads =
                GradientsParams::from_grads(linear.forward(x.clone()).sum().backward(), &linear);
            linear = optim.step(0.1, linear, grads);
        }
        for ((w1, w0), g) in values(&linear).iter().zip(&w0).zip([1.0, 2.0, 3.0]) {
            assert!(
                (w0 - w1 - 0.29 * g).abs() < 1e-5,
                "moved {} instead of {}",
                w0 - w1,
                0.29 * g
            );
        }
    }

    #[test]
    fn mix_separates_nearby_inputs() {
        let seeds: std::collections::HashSet<u64> = (0..100)
            .flat_map(|a| (0..100).map(move |b| mix(7, a, b)))
            .collect();
        assert_eq!(seeds.len(), 10_000);
    }
}
