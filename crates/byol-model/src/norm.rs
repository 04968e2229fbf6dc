//! BatchNorm forward, written for speed on burn's CPU backend.
//!
//! burn's own `BatchNorm::forward` broadcasts `[1, C, 1, 1]` statistics over
//! `[N, C, H, W]` activations. On the Flex backend (burn 0.21) that broadcast
//! pattern has no SIMD kernel and falls back to a scalar strided walk, which
//! was measured at 40% of a whole BYOL step of the small encoder. Here the
//! per-channel vectors are repeated to `[N, C, 1]` first (N·C values), so
//! every full-size operation is either element-wise on equal shapes or a
//! per-row scalar broadcast over `[N, C, H·W]`, both of which Flex runs with
//! SIMD. The arithmetic is the same as burn's and PyTorch's: batch statistics
//! on an autodiff backend (training), running statistics otherwise.
//!
//! One difference from burn, kept on purpose: the running variance is
//! updated with the *unbiased* batch variance (divided by `n − 1`), as
//! PyTorch does, so that running statistics match a torchvision model
//! trained the same way. Normalisation itself uses the biased variance, as
//! both libraries do.

use burn::nn::BatchNorm;
use burn::prelude::*;

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
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    type A = Autodiff<Flex>;

    fn close(a: Tensor<A, 4>, b: Tensor<A, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
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
        let x = Tensor::<A, 4>::random([4, 3, 5, 6], Distribution::Normal(2.0, 3.0), &device)
            .require_grad();
        let ours = batch_norm(&bn, x.clone());
        let theirs = bn.forward(x.clone());
        assert!(close(ours.clone(), theirs.clone()) < 1e-4);

        let w = Tensor::<A, 4>::random([4, 3, 5, 6], Distribution::Default, &device);
        let g1 = (ours * w.clone()).sum().backward();
        let g2 = (theirs * w).sum().backward();
        let gx1 = x.grad(&g1).expect("x grad");
        let gx2 = x.grad(&g2).expect("x grad");
        let diff: f32 = (gx1 - gx2).abs().max().into_scalar();
        assert!(diff < 1e-4, "input gradients differ by {diff}");
        for (p1, p2) in [
            (bn.gamma.grad(&g1), bn.gamma.grad(&g2)),
            (bn.beta.grad(&g1), bn.beta.grad(&g2)),
        ] {
            let diff: f32 = (p1.expect("grad") - p2.expect("grad"))
                .abs()
                .max()
                .into_scalar();
            assert!(diff < 1e-3, "parameter gradients differ by {diff}");
        }
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
