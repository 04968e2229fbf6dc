//! The encoder's normalisation layers — BatchNorm, GroupNorm with weight
//! standardisation, or none — with forwards written for speed on burn's CPU
//! backend.
//!
//! ## BatchNorm
//!
//! burn's own `BatchNorm::forward` broadcasts `[1, C, 1, 1]` statistics over
//! `[N, C, H, W]` activations. On the Flex backend (burn 0.21) that broadcast
//! pattern has no SIMD kernel and falls back to a scalar strided walk over
//! every activation (what that cost a step: docs/results-log.md,
//! "Optimising the step", first row). Here the
//! per-channel vectors are repeated to `[N, C, 1]` first (N·C values), so
//! every full-size operation is either element-wise on equal shapes or a
//! per-row scalar broadcast over `[N, C, H·W]`, both of which Flex runs with
//! SIMD. The arithmetic is the same as burn's and PyTorch's: batch statistics
//! on an autodiff backend (training), running statistics otherwise. On
//! `Autodiff<Flex>` the batch-statistics case is one operation of ours
//! instead ([`crate::fast_norm`]).
//!
//! One difference from burn, kept on purpose: the running variance is
//! updated with the *unbiased* batch variance (divided by `n − 1`), as
//! PyTorch does, so that running statistics match a torchvision model
//! trained the same way. Normalisation itself uses the biased variance, as
//! both libraries do.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig};
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Serialize};

use crate::cross_replica::{CrossReplica, installed};
use crate::fast_norm::batch_norm_train;
use crate::precision::{Precision, conv2d_in};

/// The normalisation of the encoder's convolutions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// BatchNorm after every convolution (torchvision, the paper).
    #[default]
    Batch,
    /// GroupNorm after every convolution, whose weights are standardised
    /// (zero mean, unit variance per output channel) at every forward.
    ///
    /// "BYOL works even without batch statistics": "we replace BN by [...]
    /// group normalization and weight standardization"
    /// [Richemond et al. 2020, arXiv:2010.10241].
    GroupWs,
    /// No normalisation (an ablation: expect slower, less stable training).
    None,
}

/// A parameter-free stand-in where the encoder has no normalisation.
#[derive(Module, Clone, Debug)]
pub struct Identity {
    /// Channels it passes through (for display and checks only).
    pub channels: usize,
}

/// One normalisation layer of the encoder, of the kind of [`NormKind`].
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    /// See [`NormKind::Batch`].
    Batch(BatchNorm<B>),
    /// See [`NormKind::GroupWs`] (the GroupNorm half).
    Group(GroupNorm<B>),
    /// See [`NormKind::None`].
    Identity(Identity),
}

impl NormKind {
    /// A layer for `channels` channels; GroupNorm uses
    /// `min(groups, channels)` groups.
    ///
    /// # Panics
    ///
    /// When GroupNorm's group count does not divide `channels` (checked by
    /// the config validation first).
    pub fn init<B: Backend>(self, channels: usize, groups: usize, device: &B::Device) -> Norm<B> {
        match self {
            NormKind::Batch => Norm::Batch(BatchNormConfig::new(channels).init(device)),
            NormKind::GroupWs => {
                Norm::Group(GroupNormConfig::new(groups.min(channels), channels).init(device))
            }
            NormKind::None => Norm::Identity(Identity { channels }),
        }
    }

    /// Whether convolutions standardise their weights under this kind.
    pub fn standardizes_weights(self) -> bool {
        self == NormKind::GroupWs
    }
}

impl<B: Backend> Norm<B> {
    /// # Shapes
    /// `[batch, channels, height, width]` → same shape
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Norm::Batch(bn) => batch_norm(bn, x),
            Norm::Group(gn) => group_norm(gn, x),
            Norm::Identity(_) => x,
        }
    }
}

/// GroupNorm: statistics over each group of channels of each sample, then a
/// per-channel affine map. Reshaped to `[N, G, C/G·H·W]` rows so that Flex
/// runs every broadcast as a per-row scalar.
///
/// # Shapes
/// `[batch, channels, ...]` → same shape
///
/// # Panics
///
/// When the channels differ from the layer's.
pub fn group_norm<B: Backend, const D: usize>(gn: &GroupNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let (n, c) = (dims[0], dims[1]);
    assert_eq!(
        c, gn.num_channels,
        "GroupNorm channels should match its input"
    );
    let g = gn.num_groups;
    let rest: usize = dims[2..].iter().product();
    let per_group = c / g * rest;
    let x = x.reshape([n, g, per_group]);
    let mean = x.clone().mean_dim(2); // [n, g, 1]
    let centered = x - mean;
    let var = centered.clone().square().mean_dim(2);
    let normed = (centered / var.add_scalar(gn.epsilon).sqrt()).reshape([n, c, rest]);
    let y = match (&gn.gamma, &gn.beta) {
        (Some(gamma), Some(beta)) => {
            let per_row = |v: Tensor<B, 1>| v.reshape([1, c, 1]).repeat_dim(0, n);
            normed * per_row(gamma.val()) + per_row(beta.val())
        }
        _ => normed,
    };
    y.reshape(dims)
}

/// A convolution of `conv`'s weights, standardised per output channel
/// first when `standardize` is set: `ŵ = (w − mean) / √(var + 1e-5)` over
/// each filter's `in × k × k` values [Qiao et al. 2019, arXiv:1903.10520].
/// Padding is `kernel / 2` on every side, as every convolution of this
/// crate is built.
///
/// # Shapes
/// `[batch, in, h, w]` → `[batch, out, h / stride, w / stride]`
pub fn conv_forward<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    standardize: bool,
) -> Tensor<B, 4> {
    conv_forward_in(conv, x, standardize, Precision::F32)
}

/// [`conv_forward`] with the convolution computed in `precision` (the
/// weight standardisation and the bias in f32).
///
/// # Shapes
/// `[batch, in, h, w]` → `[batch, out, h / stride, w / stride]`
pub fn conv_forward_in<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    standardize: bool,
    precision: Precision,
) -> Tensor<B, 4> {
    let options = ConvOptions::new(
        conv.stride,
        [conv.kernel_size[0] / 2, conv.kernel_size[1] / 2],
        conv.dilation,
        conv.groups,
    );
    let w = conv.weight.val();
    if !standardize {
        // this crate's convolutions: no bias, `kernel / 2` on every side
        let [p_h, p_w] = options.padding;
        if conv.bias.is_none() && conv.padding == PaddingConfig2d::Explicit(p_h, p_w, p_h, p_w) {
            return conv2d_in(x, w, options, precision);
        }
        if precision == Precision::F32 {
            return conv.forward(x);
        }
    }
    let w = if standardize {
        let [out, inp, kh, kw] = w.dims();
        let flat = w.reshape([out, inp * kh * kw]);
        let mean = flat.clone().mean_dim(1);
        let centered = flat - mean;
        let var = centered.clone().square().mean_dim(1);
        (centered / var.add_scalar(1e-5).sqrt()).reshape([out, inp, kh, kw])
    } else {
        w
    };
    match (&conv.bias, precision) {
        (Some(b), Precision::F32) => conv2d(x, w, Some(b.val()), options),
        (Some(b), _) => {
            let [c] = b.dims();
            conv2d_in(x, w, options, precision) + b.val().reshape([1, c, 1, 1])
        }
        (None, _) => conv2d_in(x, w, options, precision),
    }
}

/// `y = (x − mean) / √(var + ε) · γ + β` per channel (dim 1), with batch
/// statistics when the backend tracks gradients and running statistics
/// otherwise; updates the running statistics in the first case.
///
/// # Shapes
/// `[batch, channels, ...]` → same shape
///
/// # Panics
///
/// When `D < 2` or the channel count differs from the layer's.
pub fn batch_norm<B: Backend, const D: usize>(bn: &BatchNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    assert!(D >= 2, "BatchNorm needs [batch, channels, ...] inputs");
    let dims = x.dims();
    let (n, c) = (dims[0], dims[1]);
    let rest: usize = dims[2..].iter().product();
    // [n, c, rest]: a view of the contiguous activations
    let x3 = x.reshape([n, c, rest]);
    // a [c] vector as [n, c, 1], contiguous, so that it broadcasts per row
    let per_row = |v: Tensor<B, 1>| v.reshape([1, c, 1]).repeat_dim(0, n);
    let gamma = bn.gamma.val();
    let beta = bn.beta.val();
    let y = if B::ad_enabled(&x3.device()) {
        let count = n * rest;
        if let Some(cross) = installed::<B>() {
            let (y, mean, var) = cross_replica_batch_norm(&cross, x3, gamma, beta, bn.epsilon);
            update_running(bn, mean, var, count * cross.replicas);
            return y.reshape(dims);
        }
        if let Some((y, mean, var)) = batch_norm_train(&x3, &gamma, &beta, bn.epsilon) {
            update_running(bn, mean, var, count);
            return y.reshape(dims);
        }
        // [1, c, 1]
        let mean = x3.clone().sum_dim(2).sum_dim(0).div_scalar(count as f64);
        let centered = x3 - mean.clone().repeat_dim(0, n);
        let var = centered
            .clone()
            .square()
            .sum_dim(2)
            .sum_dim(0)
            .div_scalar(count as f64)
            .reshape([c]);
        update_running(bn, mean.reshape([c]), var.clone(), count);
        let scale = gamma / var.add_scalar(bn.epsilon).sqrt();
        centered * per_row(scale) + per_row(beta)
    } else {
        let mean = bn.running_mean.value();
        let var = bn.running_var.value();
        let scale = gamma / var.add_scalar(bn.epsilon).sqrt();
        let shift = beta - mean * scale.clone();
        x3 * per_row(scale) + per_row(shift)
    };
    y.reshape(dims)
}

/// BatchNorm of `x` (`[n, c, rest]`, this replica's shard) with the mean
/// and biased variance of the whole global batch: per-channel sums, summed
/// over the replicas by `cross` ([`crate::cross_replica`]), in two passes
/// (the mean, then the centred squares) so that the arithmetic is the one
/// of a single device over the whole batch. Also the statistics, for the
/// running averages.
fn cross_replica_batch_norm<B: Backend>(
    cross: &CrossReplica<B>,
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
) -> (Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>) {
    let [n, c, rest] = x.dims();
    let total = (n * rest * cross.replicas) as f64;
    let per_row = |v: Tensor<B, 1>| v.reshape([1, c, 1]).repeat_dim(0, n);
    let per_channel = |t: Tensor<B, 3>| t.sum_dim(2).sum_dim(0).reshape([c]);
    let mean = (cross.sum)(per_channel(x.clone())).div_scalar(total);
    let centered = x - per_row(mean.clone());
    let var = (cross.sum)(per_channel(centered.clone().square())).div_scalar(total);
    let scale = gamma / var.clone().add_scalar(epsilon).sqrt();
    (centered * per_row(scale) + per_row(beta), mean, var)
}

/// running ← (1 − momentum)·running + momentum·batch, with the unbiased
/// variance as PyTorch.
fn update_running<B: Backend>(
    bn: &BatchNorm<B>,
    mean: Tensor<B, 1>,
    var: Tensor<B, 1>,
    count: usize,
) {
    let m = bn.momentum;
    let unbiased = if count > 1 {
        var.detach().mul_scalar(count as f64 / (count - 1) as f64)
    } else {
        var.detach()
    };
    let running_mean = bn
        .running_mean
        .value_sync()
        .mul_scalar(1.0 - m)
        .add(mean.detach().mul_scalar(m));
    let running_var = bn
        .running_var
        .value_sync()
        .mul_scalar(1.0 - m)
        .add(unbiased.mul_scalar(m));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{Param, RunningState};
    use burn::tensor::Distribution;

    type A = Autodiff<Flex>;

    fn close(a: Tensor<A, 4>, b: Tensor<A, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// How far [`batch_norm`] is from burn's `BatchNorm::forward` on `x`
    /// (training: batch statistics), for the loss `Σ w ⊙ y` with a random
    /// `w`: the largest differences of the outputs, of the input gradients,
    /// and of the γ and β gradients; and the largest input gradient, for
    /// scale.
    struct FromBurn {
        output: f32,
        input_grad: f32,
        input_grad_scale: f32,
        param_grad: f32,
    }

    fn from_burn(bn: &BatchNorm<A>, x: Tensor<A, 4>) -> FromBurn {
        let device = x.device();
        let x = x.require_grad();
        let ours = batch_norm(bn, x.clone());
        let theirs = bn.forward(x.clone());
        let output = close(ours.clone(), theirs.clone());
        let w = Tensor::<A, 4>::random(x.dims(), Distribution::Default, &device);
        let g1 = (ours * w.clone()).sum().backward();
        let g2 = (theirs * w).sum().backward();
        let gx1 = x.grad(&g1).expect("x grad");
        let gx2 = x.grad(&g2).expect("x grad");
        let input_grad_scale: f32 = gx2.clone().abs().max().into_scalar();
        let input_grad: f32 = (gx1 - gx2).abs().max().into_scalar();
        let param_grad = [
            (bn.gamma.grad(&g1), bn.gamma.grad(&g2)),
            (bn.beta.grad(&g1), bn.beta.grad(&g2)),
        ]
        .into_iter()
        .map(|(p1, p2)| -> f32 {
            (p1.expect("grad") - p2.expect("grad"))
                .abs()
                .max()
                .into_scalar()
        })
        .fold(0.0, f32::max);
        FromBurn {
            output,
            input_grad,
            input_grad_scale,
            param_grad,
        }
    }

    /// [`batch_norm`] on one replica with cross-replica statistics (the
    /// tensor formula in two passes) against the same without (our fused
    /// kernel on `Autodiff<Flex>`): outputs, input and parameter gradients
    /// of `Σ w ⊙ y`, each largest difference relative to the largest value.
    fn cross_replica_against_fused(x: Tensor<A, 2>, gamma: Tensor<A, 1>) -> [f32; 4] {
        use crate::cross_replica::{CrossReplica, with_cross_replica};
        let device = x.device();
        let [_, c] = x.dims();
        let bn = BatchNorm {
            gamma: Param::from_tensor(gamma),
            ..BatchNormConfig::new(c).init::<A>(&device)
        };
        let w = Tensor::<A, 2>::random(x.dims(), Distribution::Default, &device);
        let run = |cross: bool| {
            let x = x.clone().require_grad();
            let y = if cross {
                let one = CrossReplica::<A> {
                    sum: std::sync::Arc::new(|t| t),
                    replicas: 1,
                };
                with_cross_replica(one, || batch_norm(&bn, x.clone()))
            } else {
                batch_norm(&bn, x.clone())
            };
            let g = (y.clone() * w.clone()).sum().backward();
            let flat = |t: Tensor<A, 2>| t.into_data().to_vec::<f32>().expect("f32");
            let flat1 = |t: Tensor<A, 1>| t.into_data().to_vec::<f32>().expect("f32");
            [
                flat(y),
                flat(Tensor::from_inner(x.grad(&g).expect("x grad"))),
                flat1(Tensor::from_inner(bn.gamma.grad(&g).expect("γ grad"))),
                flat1(Tensor::from_inner(bn.beta.grad(&g).expect("β grad"))),
            ]
        };
        let (a, b) = (run(false), run(true));
        std::array::from_fn(|i| {
            let scale = a[i].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = a[i]
                .iter()
                .zip(&b[i])
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
            diff / scale
        })
    }

    #[test]
    fn cross_replica_statistics_on_one_replica_equal_the_fused_kernel() {
        let device = Default::default();
        // a head's hidden layer: [batch, features], some features spread
        // little around a far mean
        let x = Tensor::<A, 2>::random([64, 64], Distribution::Normal(0.5, 1.0), &device);
        let narrow = Tensor::<A, 2>::random([64, 8], Distribution::Normal(3.0, 0.01), &device);
        let x = Tensor::cat(vec![x.narrow(1, 0, 56), narrow], 1);
        let gamma = Tensor::<A, 1>::random([64], Distribution::Normal(1.0, 0.3), &device);
        // measured 1e-7, 3.4e-6, 3e-8 and 0 (2026-12-01)
        let gaps = cross_replica_against_fused(x, gamma);
        for (what, gap) in ["output", "input gradient", "γ gradient", "β gradient"]
            .iter()
            .zip(gaps)
        {
            assert!(gap < 3e-5, "{what}: {gap} of the largest value");
        }
    }

    #[test]
    fn training_forward_and_gradients_match_burn_batch_norm() {
        let device = Default::default();
        // non-trivial γ, β
        let bn = BatchNorm {
            gamma: Param::from_tensor(Tensor::from_floats([1.5, 0.5, -2.0], &device)),
            beta: Param::from_tensor(Tensor::from_floats([0.25, -1.0, 0.0], &device)),
            ..BatchNormConfig::new(3).init::<A>(&device)
        };
        let x = Tensor::<A, 4>::random([4, 3, 5, 6], Distribution::Normal(2.0, 3.0), &device);
        let d = from_burn(&bn, x);
        assert!(d.output < 1e-4, "outputs differ by {}", d.output);
        assert!(
            d.input_grad < 1e-4,
            "input gradients differ by {}",
            d.input_grad
        );
        assert!(
            d.param_grad < 1e-3,
            "parameter gradients differ by {}",
            d.param_grad
        );
    }

    /// Many pixels per row (the vectorised sums of `fast_norm` and their
    /// remainders), an offset mean and a small spread (the centring's
    /// precision).
    #[test]
    fn matches_burn_batch_norm_on_wide_rows_far_from_zero() {
        let device = Default::default();
        let bn = BatchNorm {
            gamma: Param::from_tensor(Tensor::from_floats([0.5, -1.5, 2.0, 1.0], &device)),
            beta: Param::from_tensor(Tensor::from_floats([0.0, 1.0, -0.5, 3.0], &device)),
            ..BatchNormConfig::new(4).init::<A>(&device)
        };
        let x = Tensor::<A, 4>::random([6, 4, 7, 7], Distribution::Normal(20.0, 0.5), &device);
        let d = from_burn(&bn, x);
        assert!(d.output < 1e-3, "outputs differ by {}", d.output);
        assert!(
            d.input_grad < 1e-3 * d.input_grad_scale.max(1.0),
            "input gradients differ by {}",
            d.input_grad
        );
        assert!(
            d.param_grad < 1e-2,
            "parameter gradients differ by {}",
            d.param_grad
        );
    }

    #[test]
    fn running_statistics_follow_pytorch_with_unbiased_variance() {
        let device = Default::default();
        let bn = BatchNormConfig::new(2).init::<A>(&device);
        // channel 0: values 0, 2 (mean 1, unbiased var 2); channel 1: all 5
        let x = Tensor::<A, 1>::from_floats([0.0, 5.0, 2.0, 5.0], &device).reshape([2, 2]);
        let _ = batch_norm(&bn, x);
        let mean: Vec<f32> = bn
            .running_mean
            .value_sync()
            .into_data()
            .to_vec()
            .expect("f32");
        let var: Vec<f32> = bn
            .running_var
            .value_sync()
            .into_data()
            .to_vec()
            .expect("f32");
        // momentum 0.1 from (0, 1)
        assert!(
            (mean[0] - 0.1).abs() < 1e-6 && (mean[1] - 0.5).abs() < 1e-6,
            "{mean:?}"
        );
        assert!(
            (var[0] - (0.9 + 0.2)).abs() < 1e-6 && (var[1] - 0.9).abs() < 1e-6,
            "{var:?}"
        );
    }

    #[test]
    fn group_norm_matches_burn_group_norm() {
        let device = Default::default();
        let gn = GroupNormConfig::new(2, 4).init::<A>(&device);
        let gn = GroupNorm {
            gamma: Some(Param::from_tensor(Tensor::from_floats(
                [1.0, 2.0, -1.0, 0.5],
                &device,
            ))),
            beta: Some(Param::from_tensor(Tensor::from_floats(
                [0.0, 1.0, 2.0, -3.0],
                &device,
            ))),
            ..gn
        };
        let x = Tensor::<A, 4>::random([3, 4, 5, 5], Distribution::Normal(1.0, 2.0), &device);
        assert!(close(group_norm(&gn, x.clone()), gn.forward(x)) < 1e-4);
    }

    #[test]
    fn standardized_convolution_equals_a_convolution_of_standardized_weights() {
        let device = Default::default();
        let conv = crate::block::conv(3, 4, 3, 2).init::<A>(&device);
        let x = Tensor::<A, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
        // unstandardised: the plain convolution
        assert!(
            close(
                conv_forward(&conv, x.clone(), false),
                conv.forward(x.clone())
            ) < 1e-6
        );
        // standardised weights, computed by hand, in a plain convolution
        let w: Vec<f32> = conv.weight.val().into_data().to_vec().expect("f32");
        let per = w.len() / 4;
        let std_w: Vec<f32> = w
            .chunks(per)
            .flat_map(|f| {
                let m = f.iter().sum::<f32>() / per as f32;
                let v = f.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / per as f32;
                f.iter()
                    .map(move |x| (x - m) / (v + 1e-5).sqrt())
                    .collect::<Vec<_>>()
            })
            .collect();
        let by_hand = Conv2d {
            weight: Param::from_tensor(
                Tensor::<A, 1>::from_floats(std_w.as_slice(), &device).reshape([4, 3, 3, 3]),
            ),
            ..crate::block::conv(3, 4, 3, 2).init::<A>(&device)
        };
        assert!(close(conv_forward(&conv, x.clone(), true), by_hand.forward(x)) < 1e-4);
    }

    #[test]
    fn no_norm_is_the_identity() {
        let device = Default::default();
        let norm = NormKind::None.init::<A>(3, 32, &device);
        let x = Tensor::<A, 4>::random([2, 3, 4, 4], Distribution::Default, &device);
        assert_eq!(close(norm.forward(x.clone()), x), 0.0);
        assert!(
            matches!(NormKind::GroupWs.init::<A>(16, 32, &device), Norm::Group(g) if g.num_groups == 16)
        );
    }

    #[test]
    fn inference_uses_running_statistics() {
        let device = Default::default();
        let bn = BatchNorm {
            running_mean: RunningState::new(Tensor::from_floats([1.0, -1.0], &device)),
            running_var: RunningState::new(Tensor::from_floats([4.0, 0.25], &device)),
            ..BatchNormConfig::new(2).init::<Flex>(&device)
        };
        let x = Tensor::<Flex, 1>::from_floats([3.0, 0.0], &device).reshape([1, 2]);
        let y: Vec<f32> = batch_norm(&bn, x).into_data().to_vec().expect("f32");
        let eps = 1e-5f32;
        assert!((y[0] - 2.0 / (4.0 + eps).sqrt()).abs() < 1e-5, "{y:?}");
        assert!((y[1] - 1.0 / (0.25 + eps).sqrt()).abs() < 1e-5, "{y:?}");
    }
}
