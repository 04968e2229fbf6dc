//! Mixed precision: the convolutions and matrix products of a forward pass
//! computed in bf16, everything else in f32.
//!
//! Parameters stay f32 (so do the optimizer state, the EMA target and
//! BatchNorm statistics, which are made from them); each convolution and
//! linear layer casts its input and weight to bf16 with burn's
//! differentiable [`Tensor::cast`], computes, and casts the result back to
//! f32, so normalisations, activations, pooling and the loss see f32
//! tensors. The backward pass follows the casts: the gradients reaching a
//! product are rounded to bf16, the gradients leaving it towards the f32
//! parameters are f32. This is PyTorch's autocast list for these layers,
//! with the outputs returned to f32 where autocast keeps them in bf16.
//!
//! The moving average of the target cannot be bf16: with τ = 0.996 the
//! update (1 − τ)(θ − ξ) is far below half a bf16 step of ξ (8 bits of
//! mantissa, a relative step of 2⁻⁸), so rounding ξ ← τξ + (1 − τ)θ to bf16
//! leaves most values where they were (the test below shows it).
//!
//! On Flex, where our f32 kernels compute the convolutions, the bf16 path
//! rounds input and weight to bf16 values, runs the same kernels and rounds
//! the result: the numbers of Flex's own bf16 convolution, which converts
//! its bf16 operands to f32, computes in f32 and rounds the result
//! (burn-flex 0.21, `ops/conv.rs`), without its per-image thin products
//! ([`crate::kernels::paths`] decides, field `conv_bf16`).

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::module::{conv2d, linear as linear_op};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

use crate::fast_conv::conv2d_no_bias;
use crate::kernels::{KernelPath, paths};

/// The number format of a forward pass's convolutions and matrix products
/// (`train.precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Convolutions and matrix products in bf16 (f32 accumulation where the
    /// backend does it), the rest in f32. See the module doc.
    Bf16,
}

impl Precision {
    /// The name used in configs: `"f32"` or `"bf16"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether `B` computes in this precision on `device`: f32 always,
    /// bf16 where the backend reports general bf16 support (Flex and CUDA
    /// do; NdArray does not, nor wgpu on WGSL, which has no bf16 type).
    pub fn supported_on<B: Backend>(self, device: &B::Device) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => B::supports_dtype(device, DType::BF16),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `x` rounded to the nearest bf16 value, kept as f32 (differentiable: the
/// gradient is rounded the same way).
fn round_bf16<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(FloatDType::BF16).cast(FloatDType::F32)
}

/// A convolution without bias in `precision`, f32 in and out.
///
/// # Shapes
/// `x`: `[batch, in, h, w]`, `weight`: `[out, in, k_h, k_w]` →
/// `[batch, out, h', w']`
pub(crate) fn conv2d_in<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    options: ConvOptions<2>,
    precision: Precision,
) -> Tensor<B, 4> {
    match precision {
        Precision::F32 => conv2d_no_bias(x, weight, options),
        Precision::Bf16 if paths::<B>().conv_bf16 == KernelPath::Ours => {
            round_bf16(conv2d_no_bias(round_bf16(x), round_bf16(weight), options))
        }
        Precision::Bf16 => conv2d_bf16(x, weight, options),
    }
}

/// The convolution on bf16 tensors, as burn computes it on the backend:
/// the path of every backend but Flex, and the reference the Flex path is
/// tested against.
pub(crate) fn conv2d_bf16<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    let bf16 = FloatDType::BF16;
    conv2d(x.cast(bf16), weight.cast(bf16), None, options).cast(FloatDType::F32)
}

/// A linear layer in `precision`: the product in bf16, the bias added in
/// f32.
///
/// # Shapes
/// `[batch, d_input]` → `[batch, d_output]`
pub fn linear<B: Backend>(
    layer: &Linear<B>,
    x: Tensor<B, 2>,
    precision: Precision,
) -> Tensor<B, 2> {
    match precision {
        Precision::F32 => layer.forward(x),
        Precision::Bf16 => {
            let bf16 = FloatDType::BF16;
            let w = layer.weight.val().cast(bf16);
            let y = linear_op(x.cast(bf16), w, None).cast(FloatDType::F32);
            match &layer.bias {
                Some(b) => y + b.val().unsqueeze_dim(0),
                None => y,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    type B = Autodiff<Flex>;

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec().expect("f32 tensor")
    }

    /// Largest |a − b| relative to the largest |b|.
    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        diff / scale
    }

    #[test]
    fn flex_computes_bf16_and_ndarray_does_not() {
        assert!(Precision::Bf16.supported_on::<B>(&Default::default()));
        assert!(Precision::F32.supported_on::<NdArray>(&Default::default()));
        assert!(!Precision::Bf16.supported_on::<NdArray>(&Default::default()));
    }

    /// Our Flex path (rounded operands, f32 kernels, rounded result) against
    /// burn's convolution on bf16 tensors: the same numbers up to the order
    /// of the f32 sums, forward and both gradients; and both differ from
    /// f32, so the rounding really happens.
    #[test]
    fn flex_bf16_convolution_matches_burns_bf16_convolution() {
        let device = Default::default();
        let _guard = crate::seeded::<B>(&device, 3);
        let normal = Distribution::Normal(0.0, 1.0);
        let x0 = Tensor::<B, 4>::random([4, 8, 10, 10], normal, &device);
        let w0 = Tensor::<B, 4>::random([16, 8, 3, 3], normal, &device);
        let out_grad = Tensor::<B, 4>::random([4, 16, 10, 10], normal, &device);
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let run = |f: &dyn Fn(Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>| {
            let (x, w) = (x0.clone().require_grad(), w0.clone().require_grad());
            let y = f(x.clone(), w.clone());
            let grads = (y.clone() * out_grad.clone()).sum().backward();
            let gx = x.grad(&grads).expect("an input gradient");
            let gw = w.grad(&grads).expect("a weight gradient");
            let flat = |g: Tensor<Flex, 4>| g.into_data().to_vec::<f32>().expect("f32");
            (values(y), flat(gx), flat(gw))
        };
        assert_eq!(paths::<B>().conv_bf16, KernelPath::Ours);
        let ours = run(&|x, w| conv2d_in(x, w, options.clone(), Precision::Bf16));
        let burns = run(&|x, w| conv2d_bf16(x, w, options.clone()));
        let f32s = run(&|x, w| conv2d_in(x, w, options.clone(), Precision::F32));
        for (name, a, b, c) in [
            ("output", &ours.0, &burns.0, &f32s.0),
            ("input gradient", &ours.1, &burns.1, &f32s.1),
            ("weight gradient", &ours.2, &burns.2, &f32s.2),
        ] {
            let e = relative_error(a, b);
            assert!(e < 1e-2, "{name}: ours vs burn's bf16 differ by {e}");
            let e = relative_error(a, c);
            assert!(e > 1e-5 && e < 3e-2, "{name}: bf16 vs f32 differ by {e}");
        }
    }

    #[test]
    fn bf16_linear_is_close_to_f32_and_keeps_f32_parameters() {
        let device = Default::default();
        let _guard = crate::seeded::<B>(&device, 4);
        let layer = LinearConfig::new(64, 32).init::<B>(&device);
        let x = Tensor::<B, 2>::random([8, 64], Distribution::Normal(0.0, 1.0), &device);
        let y16 = linear(&layer, x.clone(), Precision::Bf16);
        assert_eq!(y16.dtype(), DType::F32);
        let grads = y16.clone().sum().backward();
        let g = layer.weight.grad(&grads).expect("a weight gradient");
        assert_eq!(g.dtype(), DType::F32);
        let (a, b) = (values(y16), values(layer.forward(x)));
        let e = relative_error(&a, &b);
        assert!(e > 1e-5 && e < 3e-2, "bf16 vs f32 linear differ by {e}");
    }

    /// Why the target stays f32: one EMA step ξ ← τξ + (1 − τ)θ with
    /// τ = 0.996 and θ a few percent away from ξ (the drift of a few
    /// optimizer steps), its result rounded to bf16 (a target stored in
    /// bf16), leaves most values where they were: the step is ~2·10⁻⁴ of
    /// ξ, half a bf16 step is 2⁻⁹ ≈ 2·10⁻³ of it or more. In f32 every value
    /// moves.
    #[test]
    fn a_bf16_moving_average_leaves_most_values_unchanged() {
        let device = Default::default();
        let _guard = crate::seeded::<Flex>(&device, 5);
        let n = 10_000;
        let xi = Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, 0.05), &device);
        let drift = Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, 0.05), &device);
        let tau = 0.996;
        let ema = |xi: Tensor<Flex, 1>, theta: Tensor<Flex, 1>| {
            xi.mul_scalar(tau).add(theta.mul_scalar(1.0 - tau))
        };
        let changed = |a: Tensor<Flex, 1>, b: Tensor<Flex, 1>| -> f64 {
            let a: Vec<f32> = a.into_data().to_vec().expect("f32");
            let b: Vec<f32> = b.into_data().to_vec().expect("f32");
            a.iter().zip(&b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
        };
        // bf16 storage: ξ and θ are bf16 values, the update is rounded
        let xi16 = round_bf16(xi.clone());
        let theta16 = round_bf16(xi16.clone() * drift.clone().add_scalar(1.0));
        let share16 = changed(round_bf16(ema(xi16.clone(), theta16)), xi16);
        let theta = xi.clone() * drift.add_scalar(1.0);
        let share32 = changed(ema(xi.clone(), theta), xi);
        assert!(share16 < 0.1, "bf16 EMA changed {share16} of the values");
        assert!(
            share32 > 0.99,
            "f32 EMA changed only {share32} of the values"
        );
    }
}
