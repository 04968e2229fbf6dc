//! One BYOL training step: both views through the online and target
//! networks, the symmetric loss, backward, the optimizer steps of the two
//! parameter groups and the target's moving average.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_model::{Byol, Encoder, ForwardOptions};

use crate::optim::{ByolOptimizer, OptimizerSettings, clip_global_norm, split_gradients};
use crate::{TrainError, byol_loss};

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

    pub(crate) fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.main.save(&dir.join("optimizer.mpk"))?;
        self.predictor.save(&dir.join("optimizer-predictor.mpk"))
    }

    pub(crate) fn load(self, dir: &Path, device: &B::Device) -> Result<Self, TrainError> {
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
    /// Micro-batches the views are cut into, each forward and backward on
    /// its own, their gradients summed before the optimizer step
    /// (`train.accumulate`; 1 = the whole batch at once).
    pub accumulate: usize,
    /// With several data-parallel peers, BatchNorm statistics over the
    /// whole global batch (`train.sync_batchnorm`, [`crate::parallel`]);
    /// on one device the shard is the batch and nothing changes.
    pub sync_batchnorm: bool,
    /// With several data-parallel peers, every peer's output carries the
    /// representations of the whole global batch, in batch order (the
    /// online linear classifier trains on them); one device's output holds
    /// the whole batch anyway.
    pub gather_representations: bool,
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
            accumulate: 1,
            sync_batchnorm: false,
            gather_representations: false,
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
///
/// With `settings.accumulate = k > 1` the views are cut into k
/// micro-batches; each runs forward and backward alone with its loss
/// divided by k, and the summed gradients make the one optimizer step: the
/// gradient of the mean loss over the whole batch, with BatchNorm
/// statistics per micro-batch. The output's loss is the mean of the
/// micro-batches' and its monitors cover the whole batch.
///
/// # Panics
///
/// When the batch does not divide into `settings.accumulate` equal
/// micro-batches (the loop's batches always do).
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
    let (grads, output) = step_gradients(&model, view1, view2, settings);
    (apply_gradients(model, optimizers, grads, settings), output)
}

/// The first half of [`byol_step`]: forward and backward of the views
/// (cut into `settings.accumulate` micro-batches), the gradients not yet
/// applied. A data-parallel peer averages them with the others' here.
pub fn step_gradients<B: AutodiffBackend, E: Encoder<B> + AutodiffModule<B>>(
    model: &Byol<B, E>,
    view1: Tensor<B, 4>,
    view2: Tensor<B, 4>,
    settings: &StepSettings,
) -> (GradientsParams, StepOutput<B::InnerBackend>)
where
    Byol<B, E>: AutodiffModule<B>,
{
    if settings.accumulate > 1 {
        accumulated_gradients(model, view1, view2, settings)
    } else {
        gradients(model, view1, view2, settings.forward, 1)
    }
}

/// The second half of [`byol_step`]: the optional global-norm clip, an
/// optimizer step per parameter group, then the target update.
pub fn apply_gradients<B: AutodiffBackend, E: Encoder<B> + AutodiffModule<B>>(
    model: Byol<B, E>,
    optimizers: &mut Optimizers<Byol<B, E>, B>,
    mut grads: GradientsParams,
    settings: &StepSettings,
) -> Byol<B, E>
where
    Byol<B, E>: AutodiffModule<B>,
{
    if settings.grad_clip_norm > 0.0 {
        clip_global_norm::<B, _>(&mut grads, &model.online, settings.grad_clip_norm);
    }
    let predictor_grads = split_gradients::<B, _>(&mut grads, &model.online.predictor);
    let model = optimizers.main.step(settings.lr, model, grads);
    let model = optimizers
        .predictor
        .step(settings.predictor_lr, model, predictor_grads);
    model.update_target(settings.tau)
}

/// Forward and backward of one (micro-)batch, the loss divided by `parts`
/// before backward; the output's loss is the undivided one.
fn gradients<B: AutodiffBackend, E: Encoder<B> + AutodiffModule<B>>(
    model: &Byol<B, E>,
    view1: Tensor<B, 4>,
    view2: Tensor<B, 4>,
    forward: ForwardOptions,
    parts: usize,
) -> (GradientsParams, StepOutput<B::InnerBackend>)
where
    Byol<B, E>: AutodiffModule<B>,
{
    let out = model.forward_with(view1, view2, forward);
    let loss = byol_loss(out.p1, out.p2, out.z1, out.z2);
    let scaled = if parts > 1 {
        loss.clone().div_scalar(parts as f64)
    } else {
        loss.clone()
    };
    let grads = GradientsParams::from_grads(scaled.backward(), model);
    let output = StepOutput {
        loss: loss.inner(),
        representations: out.y1.inner(),
        projections: out.h1.inner(),
    };
    (grads, output)
}

/// [`gradients`] of each of `settings.accumulate` micro-batches, summed.
fn accumulated_gradients<B: AutodiffBackend, E: Encoder<B> + AutodiffModule<B>>(
    model: &Byol<B, E>,
    view1: Tensor<B, 4>,
    view2: Tensor<B, 4>,
    settings: &StepSettings,
) -> (GradientsParams, StepOutput<B::InnerBackend>)
where
    Byol<B, E>: AutodiffModule<B>,
{
    let parts = settings.accumulate;
    let n = view1.dims()[0];
    assert!(
        n.is_multiple_of(parts) && n >= parts,
        "a batch of {n} does not cut into {parts} equal micro-batches"
    );
    let micro = n / parts;
    let mut sum = GradientsAccumulator::<Byol<B, E>>::new();
    let (mut losses, mut reps, mut projs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..parts {
        let cut = |v: &Tensor<B, 4>| v.clone().narrow(0, i * micro, micro);
        let (grads, out) = gradients(model, cut(&view1), cut(&view2), settings.forward, parts);
        sum.accumulate(model, grads);
        losses.push(out.loss);
        reps.push(out.representations);
        projs.push(out.projections);
    }
    let output = StepOutput {
        loss: Tensor::cat(losses, 0).mean(),
        representations: Tensor::cat(reps, 0),
        projections: Tensor::cat(projs, 0),
    };
    (sum.grads(), output)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::tensor::Distribution;
    use byol_model::{HeadsConfig, ResNet, ResNetConfig};

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
        OptimizerSettings::adam(0.0)
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
            loss.is_finite() && (0.0..=8.0).contains(&loss),
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

    /// A seeded pair: GroupNorm + WS encoder and heads without BatchNorm
    /// (`batch_norm = false`), or BatchNorm everywhere. The data-parallel
    /// tests start from it too.
    pub(crate) fn seeded_byol(batch_norm: bool) -> Byol<Autodiff<Flex>, ResNet<Autodiff<Flex>>> {
        let cfg = ResNetConfig {
            norm: if batch_norm {
                byol_model::NormKind::Batch
            } else {
                byol_model::NormKind::GroupWs
            },
            norm_groups: 8,
            ..ResNetConfig::small()
        };
        let heads = HeadsConfig {
            batch_norm,
            ..HeadsConfig::new(32, 16, 32)
        };
        Byol::seeded(11, &Default::default(), &heads, true, |d| cfg.init(d))
    }

    /// The loss of each of `steps` SGD steps over the same batch of 8, cut
    /// into `accumulate` micro-batches, and the weights after them (online
    /// encoder, predictor, target encoder).
    /// Each run starts from a copy of `first` (weights drawn again per run
    /// could differ: other tests draw from burn's generator at once).
    fn run_accumulated(
        first: &Byol<Autodiff<Flex>, ResNet<Autodiff<Flex>>>,
        batch_norm: bool,
        accumulate: usize,
        steps: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let mut model =
            crate::parallel::replica(first, seeded_byol(batch_norm), &device).expect("replica");
        let mut optim = Optimizers::new(&OptimizerSettings {
            kind: OptimizerKind::Sgd,
            ..settings()
        });
        // not burn's generator, which other tests running at once draw from
        let x1 = fixed_images::<A>(5, [8, 1, 16, 16], &device);
        let x2 = fixed_images::<A>(6, [8, 1, 16, 16], &device);
        let step = StepSettings {
            accumulate,
            ..StepSettings::simple(0.05, 0.9)
        };
        let mut losses = Vec::new();
        for _ in 0..steps {
            let (next, out) = byol_step(model, &mut optim, x1.clone(), x2.clone(), &step);
            model = next;
            losses.push(out.loss.into_scalar().elem::<f32>());
        }
        let mut w = weights(&model.online.encoder);
        w.extend(
            model
                .online
                .predictor
                .linear1
                .weight
                .val()
                .into_data()
                .to_vec::<f32>()
                .expect("f32"),
        );
        w.extend(weights(&model.target.as_ref().expect("target").encoder));
        (losses, w)
    }

    /// Images uniform in [0, 1) drawn from their own ChaCha8 stream.
    fn fixed_images<B: Backend>(seed: u64, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random()).collect();
        Tensor::<B, 1>::from_floats(values.as_slice(), device).reshape(shape)
    }

    /// ‖a − b‖ / ‖a‖.
    fn norm_gap(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let diff: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        diff / a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
    }

    fn max_relative_gap(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1e-3 + x.abs().max(y.abs())))
            .fold(0.0, f32::max)
    }

    #[test]
    fn accumulated_micro_batches_equal_the_whole_batch_without_batchnorm() {
        let first = seeded_byol(false);
        let (loss1, w1) = run_accumulated(&first, false, 1, 3);
        for parts in [2, 4] {
            let (loss, w) = run_accumulated(&first, false, parts, 3);
            assert!(
                max_relative_gap(&loss1, &loss) < 1e-5,
                "{parts}: {loss1:?} vs {loss:?}"
            );
            // the same sums in another order: measured against the
            // weights' norm, since a weight near zero can carry a rounding
            // difference (and Flex's parallel sums are not in a fixed order)
            let gap = norm_gap(&w1, &w);
            assert!(gap < 1e-5, "{parts} micro-batches: weights differ by {gap}");
        }
        // and the steps did move the weights
        let (_, w0) = run_accumulated(&first, false, 1, 0);
        assert!(max_relative_gap(&w0, &w1) > 1e-3);
    }

    #[test]
    fn with_batchnorm_each_micro_batch_has_its_own_statistics() {
        let first = seeded_byol(true);
        let (loss1, w1) = run_accumulated(&first, true, 1, 1);
        let (loss2, w2) = run_accumulated(&first, true, 2, 1);
        assert!(
            max_relative_gap(&loss1, &loss2) > 1e-4 || max_relative_gap(&w1, &w2) > 1e-4,
            "BatchNorm over 4 images should differ from over 8"
        );
    }

    #[test]
    #[should_panic(expected = "does not cut into 3 equal micro-batches")]
    fn a_batch_that_does_not_divide_is_refused() {
        run_accumulated(&seeded_byol(false), false, 3, 1);
    }
}
