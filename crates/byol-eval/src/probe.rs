//! The linear probe: a linear classifier trained on the frozen encoder's
//! features of the labelled training split, scored on the test split.
//!
//! "we follow the standard linear evaluation protocol [...] training a
//! linear classifier on top of the frozen representation"
//! [BYOL, Grill et al. 2020, arXiv:2006.07733, §4.1]. As in most
//! small-scale benchmarks (solo-learn's and lightly's offline probes,
//! SimCLR's transfer protocol) the features are computed once, with the
//! evaluation transform and no augmentation, and standardised with the
//! mean and standard deviation of the training features (a dimension of
//! zero spread is left unscaled). The classifier is trained with
//! cross-entropy by mini-batch SGD with momentum and a cosine learning
//! rate, or by full-batch L-BFGS with a strong-Wolfe line search (burn's
//! port of PyTorch's `torch.optim.LBFGS`).

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, LBFGSConfig, LineSearchFn, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// How the probe's classifier is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOptimizer {
    /// Mini-batch SGD with momentum (dampening 0, as PyTorch), L2 weight
    /// decay on every parameter, learning rate decayed from `lr` to 0 on a
    /// cosine over all steps.
    Sgd,
    /// Full-batch L-BFGS (history 10, strong-Wolfe line search), each
    /// "epoch" one optimizer step of up to 20 iterations; `lr` is the first
    /// trial step of each line search. Weight decay adds
    /// `weight_decay / 2 · ‖W‖²` to the loss (the bias is not decayed).
    Lbfgs,
}

/// Settings of the linear probe (`[eval.probe]` of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// How the classifier is trained.
    pub optimizer: ProbeOptimizer,
    /// Passes over the training features (SGD), or L-BFGS steps.
    pub epochs: usize,
    /// Initial learning rate (SGD) or first trial step (L-BFGS).
    pub lr: f64,
    /// Feature rows per SGD step (L-BFGS uses all of them).
    pub batch_size: usize,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// SGD momentum, in [0, 1).
    pub momentum: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            optimizer: ProbeOptimizer::Sgd,
            epochs: 100,
            lr: 0.1,
            batch_size: 256,
            weight_decay: 0.0,
            momentum: 0.9,
        }
    }
}

impl ProbeConfig {
    /// Checks the values; `prefix` names the config section in errors.
    ///
    /// # Errors
    ///
    /// [`EvalError::InvalidConfig`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), EvalError> {
        let bad = |key: &str, value: String, expected: &str| {
            Err(EvalError::InvalidConfig {
                key: format!("{prefix}.{key}"),
                value,
                expected: expected.to_string(),
            })
        };
        if self.epochs == 0 {
            return bad("epochs", "0".into(), "at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr.to_string(), "a finite number > 0");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(
                "weight_decay",
                self.weight_decay.to_string(),
                "a finite number >= 0",
            );
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", self.momentum.to_string(), "a number in [0, 1)");
        }
        Ok(())
    }
}

/// What the probe measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Top-1 accuracy on the test features, in [0, 1].
    pub top1: f64,
    /// Top-5 accuracy on the test features (top-k with k = the number of
    /// classes when there are fewer than 5).
    pub top5: f64,
    /// Top-1 accuracy on the training features (how well the classifier fit).
    pub train_top1: f64,
    /// Cross-entropy on the training features at the end, without the
    /// weight-decay term.
    pub train_loss: f64,
    /// Classes of the classifier (the largest label + 1).
    pub classes: usize,
}

/// Per-dimension mean and standard deviation of `x`'s rows; a spread
/// below 1e-6 is replaced by 1 so that the dimension is only centred.
fn standardizer<B: Backend>(x: &Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let mean = x.clone().mean_dim(0); // [1, dim]
    let var = (x.clone() - mean.clone()).square().mean_dim(0);
    let std = var.sqrt();
    let flat = std.clone().lower_elem(1e-6);
    (mean, std.mask_fill(flat, 1.0))
}

fn labels_tensor<B: Backend>(labels: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

/// Top-1 and top-k (k = min(5, classes)) accuracy of `logits` against
/// `labels`; ties count against the right class.
///
/// # Errors
///
/// [`EvalError::Data`] when the logits cannot be read back.
pub fn logit_accuracy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: &[u32],
) -> Result<(f64, f64), EvalError> {
    let [n, classes] = logits.dims();
    if n == 0 {
        return Ok((0.0, 0.0));
    }
    let v: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| EvalError::Data(format!("{e:?}")))?;
    let k = 5.min(classes);
    let (mut hits1, mut hits5) = (0usize, 0usize);
    for (row, &label) in v.chunks_exact(classes).zip(labels) {
        let right = row[label as usize];
        let better = row
            .iter()
            .enumerate()
            .filter(|&(c, &s)| c != label as usize && s >= right)
            .count();
        hits1 += usize::from(better == 0);
        hits5 += usize::from(better < k);
    }
    Ok((hits1 as f64 / n as f64, hits5 as f64 / n as f64))
}

/// Trains a linear classifier on `train` (features, one row per image) and
/// `train_labels`, and scores it on `test`; features are standardised with
/// the training set's statistics first. `seed` fixes the SGD shuffles;
/// `progress(epoch, epochs)` is called after each epoch.
///
/// Features come on the inner backend (from an evaluation-mode encoder);
/// only the classifier is trained, on `B`.
///
/// # Errors
///
/// [`EvalError::InvalidConfig`] for a bad `config`,
/// [`EvalError::CountMismatch`] when rows and labels disagree,
/// [`EvalError::Data`] when the training set is empty or the loss becomes
/// NaN.
///
/// # Panics
///
/// When `train` and `test` have different feature dimensions.
pub fn linear_probe<B: AutodiffBackend>(
    train: Tensor<B::InnerBackend, 2>,
    train_labels: &[u32],
    test: Tensor<B::InnerBackend, 2>,
    test_labels: &[u32],
    config: &ProbeConfig,
    seed: u64,
    progress: &dyn Fn(usize, usize),
) -> Result<ProbeResult, EvalError> {
    config.validate("eval.probe")?;
    let [n, dim] = train.dims();
    let [n_test, _] = test.dims();
    for (what, rows, labels) in [
        ("probe training set", n, train_labels.len()),
        ("probe test set", n_test, test_labels.len()),
    ] {
        if rows != labels {
            return Err(EvalError::CountMismatch {
                what,
                features: rows,
                labels,
            });
        }
    }
    if n == 0 {
        return Err(EvalError::Data(
            "the linear probe needs at least one training image".into(),
        ));
    }
    let classes = *train_labels.iter().chain(test_labels).max().unwrap_or(&0) as usize + 1;
    let device = train.device();
    let (mean, std) = standardizer(&train);
    let train = (train - mean.clone()) / std.clone();
    let test = (test - mean) / std;
    let x = Tensor::<B, 2>::from_inner(train.clone());
    let y = labels_tensor::<B>(train_labels, &device);
    let model: Linear<B> = LinearConfig::new(dim, classes)
        .with_initializer(Initializer::Zeros)
        .init(&device);
    let model = match config.optimizer {
        ProbeOptimizer::Sgd => train_sgd(model, &x, &y, config, seed, progress),
        ProbeOptimizer::Lbfgs => train_lbfgs(model, &x, &y, config, progress),
    };

    let model = model.valid();
    let train_logits = model.forward(train);
    let train_loss: f64 = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(train_logits.clone(), labels_tensor(train_labels, &device))
        .into_scalar()
        .elem();
    if !train_loss.is_finite() {
        return Err(EvalError::Data(format!(
            "the linear probe diverged (training loss {train_loss}); lower eval.probe.lr"
        )));
    }
    let (train_top1, _) = logit_accuracy(train_logits, train_labels)?;
    let (top1, top5) = logit_accuracy(model.forward(test), test_labels)?;
    Ok(ProbeResult {
        top1,
        top5,
        train_top1,
        train_loss,
        classes,
    })
}

/// The probe's classifier trained by mini-batch SGD with a cosine
/// learning rate, in an order shuffled per epoch from `seed`.
fn train_sgd<B: AutodiffBackend>(
    mut model: Linear<B>,
    x: &Tensor<B, 2>,
    y: &Tensor<B, 1, Int>,
    config: &ProbeConfig,
    seed: u64,
    progress: &dyn Fn(usize, usize),
) -> Linear<B> {
    let [n, _] = x.dims();
    let device = x.device();
    let ce = CrossEntropyLossConfig::new().init(&device);
    let decay =
        (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    let mut optim = SgdConfig::new()
        .with_momentum((config.momentum > 0.0).then_some(MomentumConfig {
            momentum: config.momentum,
            dampening: 0.0,
            nesterov: false,
        }))
        .with_weight_decay(decay)
        .init::<B, Linear<B>>();
    let steps_per_epoch = n.div_ceil(config.batch_size);
    let total = steps_per_epoch * config.epochs;
    let mut order: Vec<usize> = (0..n).collect();
    for epoch in 0..config.epochs {
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(byol_augment::mix_seed(seed, epoch as u64, 0));
        order.shuffle(&mut rng);
        for (k, chunk) in order.chunks(config.batch_size).enumerate() {
            let step = epoch * steps_per_epoch + k;
            let lr =
                0.5 * config.lr * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            let idx: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [chunk.len()]), &device);
            let logits = model.forward(x.clone().select(0, idx.clone()));
            let loss = ce.forward(logits, y.clone().select(0, idx));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
        }
        progress(epoch + 1, config.epochs);
    }
    model
}

/// The probe's classifier trained by full-batch L-BFGS (strong Wolfe line
/// search), the L2 penalty added to the loss.
fn train_lbfgs<B: AutodiffBackend>(
    mut model: Linear<B>,
    x: &Tensor<B, 2>,
    y: &Tensor<B, 1, Int>,
    config: &ProbeConfig,
    progress: &dyn Fn(usize, usize),
) -> Linear<B> {
    let ce = CrossEntropyLossConfig::new().init(&x.device());
    let mut optim = LBFGSConfig::new()
        .with_history_size(10)
        .with_line_search_fn(LineSearchFn::StrongWolfe)
        .init::<B>();
    let wd = config.weight_decay;
    for epoch in 0..config.epochs {
        let closure = |m: Linear<B>| {
            let mut loss = ce.forward(m.forward(x.clone()), y.clone());
            if wd > 0.0 {
                loss = loss + m.weight.val().square().sum().mul_scalar(wd / 2.0);
            }
            let value: f64 = loss.clone().into_scalar().elem();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            (value, grads)
        };
        let (next, _) = optim.step(config.lr, model, closure);
        model = next;
        progress(epoch + 1, config.epochs);
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type A = Autodiff<Flex>;
    type B = Flex;

    /// `n` points per class around `k` class centres in `dim` dimensions,
    /// plus a useless dimension of huge scale that standardisation must
    /// tame; deterministic.
    fn blobs(k: usize, n: usize, dim: usize, spread: f32, seed: u64) -> (Tensor<B, 2>, Vec<u32>) {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for _ in 0..n {
            for c in 0..k {
                for d in 0..dim {
                    let centre = if d % k == c { 1.0 } else { 0.0 };
                    values.push(centre + spread * next());
                }
                values.push(1000.0 * next());
                labels.push(c as u32);
            }
        }
        let t = Tensor::<B, 1>::from_floats(values.as_slice(), &Default::default())
            .reshape([n * k, dim + 1]);
        (t, labels)
    }

    fn probe(optimizer: ProbeOptimizer, spread: f32) -> ProbeResult {
        let (train, train_labels) = blobs(4, 50, 8, spread, 1);
        let (test, test_labels) = blobs(4, 25, 8, spread, 2);
        let config = ProbeConfig {
            optimizer,
            epochs: 20,
            batch_size: 32,
            ..ProbeConfig::default()
        };
        linear_probe::<A>(
            train,
            &train_labels,
            test,
            &test_labels,
            &config,
            0,
            &|_, _| {},
        )
        .expect("valid inputs")
    }

    #[test]
    fn separable_classes_are_learned_by_both_optimizers() {
        for optimizer in [ProbeOptimizer::Sgd, ProbeOptimizer::Lbfgs] {
            let r = probe(optimizer, 0.5);
            assert_eq!(r.classes, 4);
            assert!(r.top1 > 0.95, "{optimizer:?}: {r:?}");
            assert_eq!(r.top5, 1.0, "4 classes: top-5 is always right");
            assert!(r.train_loss < 0.5, "{optimizer:?}: {r:?}");
        }
    }

    #[test]
    fn overlapping_classes_are_not_separable() {
        // with a spread of 20 the class centres are lost in the noise: the
        // probe cannot do much better than chance (1/4)
        let r = probe(ProbeOptimizer::Sgd, 20.0);
        assert!(r.top1 < 0.5, "{r:?}");
    }

    #[test]
    fn standardizer_centres_and_scales_and_leaves_constant_dims_alone() {
        let x =
            Tensor::<B, 2>::from_floats([[1.0, 5.0, 3.0], [3.0, 5.0, -3.0]], &Default::default());
        let (mean, std) = standardizer(&x);
        let mean: Vec<f32> = mean.into_data().to_vec().expect("f32");
        let std: Vec<f32> = std.into_data().to_vec().expect("f32");
        assert_eq!(mean, vec![2.0, 5.0, 0.0]);
        assert_eq!(std, vec![1.0, 1.0, 3.0]);
    }

    #[test]
    fn accuracy_counts_ties_against_the_right_class() {
        let logits = Tensor::<B, 2>::from_floats(
            [
                [3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            ],
            &Default::default(),
        );
        // row 0 right; row 1 tied (wrong at top-1, in the top 5); row 2:
        // class 0 is last of 7
        let (top1, top5) = logit_accuracy(logits, &[0, 0, 0]).expect("valid");
        assert!((top1 - 1.0 / 3.0).abs() < 1e-12, "{top1}");
        assert!((top5 - 2.0 / 3.0).abs() < 1e-12, "{top5}");
    }

    #[test]
    fn bad_settings_name_the_key() {
        let config = ProbeConfig {
            lr: 0.0,
            ..ProbeConfig::default()
        };
        let err = config.validate("eval.probe").expect_err("lr 0");
        assert!(err.to_string().contains("eval.probe.lr"), "{err}");
        let (x, labels) = blobs(2, 3, 2, 0.1, 0);
        let err = linear_probe::<A>(
            x.clone(),
            &labels[..5],
            x,
            &labels,
            &ProbeConfig::default(),
            0,
            &|_, _| {},
        )
        .expect_err("5 labels for 6 rows");
        assert!(matches!(err, EvalError::CountMismatch { .. }), "{err}");
    }
}
