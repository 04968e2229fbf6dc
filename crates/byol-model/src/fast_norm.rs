//! BatchNorm's training step as one operation on burn's Flex CPU backend.
//!
//! Written with tensor operations ([`crate::norm`]), BatchNorm with batch
//! statistics is about ten element-wise passes over the activations
//! forward (sums, centring, squares, scaling, shifting) and as many
//! again backward, each allocating its output, most of them serial on the
//! calling thread while rayon's workers wait.
//!
//! Here, on `Autodiff<Flex>`, it is one recorded operation with parents
//! `x`, `γ` and `β`: forward, per-channel sums (in parallel over channels)
//! and one pass writing `y = (x − μ)·γ/σ + β`; backward, per-channel sums
//! of `dy` and `dy·(x − μ)`, then one pass writing
//! `dx = γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂))`. The backward step keeps
//! `x` (one activation-sized tensor, as the tensor formula kept its
//! centred copy) and the per-channel statistics, and recomputes `x̂` from
//! them. Every other backend computes BatchNorm with tensor operations,
//! unchanged. What it bought on the step: docs/results-log.md,
//! "Optimising the step".

use burn::prelude::*;

/// BatchNorm of `x` with batch statistics, `y = (x − μ) / √(σ² + ε) · γ +
/// β` per channel (dim 1), as one operation on `Autodiff<Flex>` (see the
/// module docs); also the batch mean and biased variance, outside the
/// autodiff graph. `None` on any other backend or for tensors that are
/// not `f32`.
///
/// # Shapes
/// `x`: `[batch, channels, pixels]`, `gamma`, `beta`: `[channels]` → `y`:
/// `[batch, channels, pixels]`, mean and variance `[channels]`
pub fn batch_norm_train<B: Backend>(
    x: &Tensor<B, 3>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    epsilon: f64,
) -> Option<(Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>)> {
    #[cfg(feature = "flex")]
    {
        if crate::kernels::paths::<B>().batch_norm_train != crate::kernels::KernelPath::Ours {
            return None;
        }
        flex::try_batch_norm(x, gamma, beta, epsilon)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (x, gamma, beta, epsilon);
        None
    }
}

#[cfg(feature = "flex")]
mod flex {
    use std::any::Any;

    use burn::backend::autodiff::NodeId;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, Flex};
    use burn::prelude::Backend;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};
    use rayon::prelude::*;

    type FlexAd = Autodiff<Flex>;

    /// Lanes of the partial sums (two AVX-512 or four AVX2 registers).
    const LANES: usize = 16;

    pub(super) fn try_batch_norm<B: Backend>(
        x: &Tensor<B, 3>,
        gamma: &Tensor<B, 1>,
        beta: &Tensor<B, 1>,
        epsilon: f64,
    ) -> Option<(Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>)> {
        let x = (x as &dyn Any).downcast_ref::<Tensor<FlexAd, 3>>()?;
        let gamma = (gamma as &dyn Any).downcast_ref::<Tensor<FlexAd, 1>>()?;
        let beta = (beta as &dyn Any).downcast_ref::<Tensor<FlexAd, 1>>()?;
        if [x.dtype(), gamma.dtype(), beta.dtype()] != [DType::F32; 3] {
            return None;
        }
        let [n, c, pixels] = x.dims();
        if n * c * pixels == 0 || gamma.dims() != [c] || beta.dims() != [c] {
            return None;
        }
        let (y, stats) = batch_norm(x.clone(), gamma.clone(), beta.clone(), epsilon);
        let device = x.device();
        let vector = |v: Vec<f32>| Tensor::<FlexAd, 1>::from_data(TensorData::new(v, [c]), &device);
        let out: Box<dyn Any> = Box::new((y, vector(stats.mean), vector(stats.var)));
        out.downcast::<(Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>)>()
            .ok()
            .map(|out| *out)
    }

    /// Per-channel statistics of one batch.
    #[derive(Debug, Clone)]
    struct Stats {
        mean: Vec<f32>,
        /// Biased variance.
        var: Vec<f32>,
        /// `1 / √(var + ε)`.
        inv_std: Vec<f32>,
    }

    #[derive(Debug)]
    struct BatchNormBackward;

    impl Backward<Flex, 3> for BatchNormBackward {
        /// `x`, the statistics, and `γ`.
        type State = (NodeId, Stats, Vec<f32>);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (x_state, stats, gamma) = ops.state;
            let x = checkpointer
                .retrieve_node_output::<FloatTensor<Flex>>(x_state)
                .to_contiguous();
            let shape: [usize; 3] = x.shape().dims();
            let (xs, dys) = (x.storage::<f32>(), grad.storage::<f32>());
            let sums = grad_sums(xs, dys, shape, &stats.mean);
            let c = shape[1];
            let vector = |v: Vec<f32>| FlexTensor::from_data(TensorData::new(v, [c]));
            if let Some(node) = node_x {
                let dx = input_grad_f32(xs, dys, shape, &stats, &gamma, &sums);
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, shape)));
            }
            if let Some(node) = node_gamma {
                // Σ dy·x̂ = Σ dy·(x − μ) / σ
                let dgamma = sums
                    .dy_centered
                    .iter()
                    .zip(&stats.inv_std)
                    .map(|(s, r)| s * r)
                    .collect();
                grads.register::<Flex>(node.id, vector(dgamma));
            }
            if let Some(node) = node_beta {
                grads.register::<Flex>(node.id, vector(sums.dy));
            }
        }
    }

    fn batch_norm(
        x: Tensor<FlexAd, 3>,
        gamma: Tensor<FlexAd, 1>,
        beta: Tensor<FlexAd, 1>,
        epsilon: f64,
    ) -> (Tensor<FlexAd, 3>, Stats) {
        let x = x.into_primitive().tensor();
        let gamma = gamma.into_primitive().tensor();
        let beta = beta.into_primitive().tensor();
        let gammas: Vec<f32> = gamma
            .primitive
            .clone()
            .to_contiguous()
            .storage::<f32>()
            .to_vec();
        let betas = beta.primitive.clone().to_contiguous();
        let xs = x.primitive.clone().to_contiguous();
        let shape: [usize; 3] = xs.shape().dims();
        let (ys, stats) = forward_f32(
            xs.storage::<f32>(),
            &gammas,
            betas.storage::<f32>(),
            shape,
            epsilon,
        );
        let y = FlexTensor::from_data(TensorData::new(ys, shape));
        let out = match BatchNormBackward
            .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                prep.finish((x_state, stats.clone(), gammas), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (Tensor::from_primitive(TensorPrimitive::Float(out)), stats)
    }

    /// `y` and the statistics of `xs` (`[n, c, pixels]`, none of them 0:
    /// [`try_batch_norm`] leaves empty tensors to the tensor formula).
    fn forward_f32(
        xs: &[f32],
        gamma: &[f32],
        beta: &[f32],
        [n, c, pixels]: [usize; 3],
        epsilon: f64,
    ) -> (Vec<f32>, Stats) {
        let count = (n * pixels) as f64;
        let rows = |ch: usize| (0..n).map(move |i| &xs[(i * c + ch) * pixels..][..pixels]);
        let (mean, var): (Vec<f32>, Vec<f32>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut sum = Lanes::default();
                rows(ch).for_each(|row| sum.add(row, row, |x, _| x));
                let mean = (sum.total() / count) as f32;
                let mut squares = Lanes::default();
                rows(ch).for_each(|row| squares.add(row, row, |x, _| (x - mean) * (x - mean)));
                (mean, (squares.total() / count) as f32)
            })
            .unzip();
        let inv_std: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32)
            .collect();
        let mut ys = vec![0.0f32; xs.len()];
        ys.par_chunks_mut(c * pixels)
            .zip(xs.par_chunks(c * pixels))
            .for_each(|(y_image, x_image)| {
                for (ch, (y, x)) in y_image
                    .chunks_mut(pixels)
                    .zip(x_image.chunks(pixels))
                    .enumerate()
                {
                    let (m, scale, shift) = (mean[ch], gamma[ch] * inv_std[ch], beta[ch]);
                    for (y, x) in y.iter_mut().zip(x) {
                        *y = (x - m) * scale + shift;
                    }
                }
            });
        (ys, Stats { mean, var, inv_std })
    }

    /// Per-channel `Σ dy` and `Σ dy·(x − μ)`.
    struct GradSums {
        dy: Vec<f32>,
        dy_centered: Vec<f32>,
    }

    fn grad_sums(xs: &[f32], dys: &[f32], [n, c, pixels]: [usize; 3], mean: &[f32]) -> GradSums {
        let (dy, dy_centered) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut s, mut s_centered, m) = (Lanes::default(), Lanes::default(), mean[ch]);
                for i in 0..n {
                    let at = (i * c + ch) * pixels;
                    let (x, dy) = (&xs[at..at + pixels], &dys[at..at + pixels]);
                    s.add(dy, dy, |g, _| g);
                    s_centered.add(dy, x, |g, x| g * (x - m));
                }
                (s.total() as f32, s_centered.total() as f32)
            })
            .unzip();
        GradSums { dy, dy_centered }
    }

    /// `dx = γ/σ · (dy − Σdy/m) − γ/σ³ · (x − μ) · Σdy(x − μ)/m`, `m` the
    /// values per channel.
    fn input_grad_f32(
        xs: &[f32],
        dys: &[f32],
        [n, c, pixels]: [usize; 3],
        stats: &Stats,
        gamma: &[f32],
        sums: &GradSums,
    ) -> Vec<f32> {
        let count = (n * pixels) as f32;
        // dx = a·dy + b·(x − μ) + d per channel
        let coefficients: Vec<[f32; 4]> = (0..c)
            .map(|ch| {
                let r = stats.inv_std[ch];
                let a = gamma[ch] * r;
                let b = -a * r * r * sums.dy_centered[ch] / count;
                let d = -a * sums.dy[ch] / count;
                [a, b, d, stats.mean[ch]]
            })
            .collect();
        let mut dx = vec![0.0f32; xs.len()];
        dx.par_chunks_mut(c * pixels)
            .zip(xs.par_chunks(c * pixels))
            .zip(dys.par_chunks(c * pixels))
            .for_each(|((dx_image, x_image), dy_image)| {
                for (ch, ((dx, x), dy)) in dx_image
                    .chunks_mut(pixels)
                    .zip(x_image.chunks(pixels))
                    .zip(dy_image.chunks(pixels))
                    .enumerate()
                {
                    let [a, b, d, m] = coefficients[ch];
                    for ((dx, x), dy) in dx.iter_mut().zip(x).zip(dy) {
                        *dx = a * dy + b * (x - m) + d;
                    }
                }
            });
        dx
    }

    /// A sum over the rows of one channel, kept in `LANES` partial sums
    /// (which the compiler vectorises) and one for the rows' tails, added
    /// up once at the end.
    #[derive(Default)]
    struct Lanes {
        lanes: [f32; LANES],
        tail: f32,
    }

    impl Lanes {
        /// Adds `f(a[i], b[i])` over a row (`a`, `b` of the same length).
        #[inline(always)]
        fn add(&mut self, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
            let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
            for (&x, &y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
                self.tail += f(x, y);
            }
            for (a, b) in a_chunks.zip(b_chunks) {
                let (Ok(a), Ok(b)) = (<&[f32; LANES]>::try_from(a), <&[f32; LANES]>::try_from(b))
                else {
                    continue;
                };
                for k in 0..LANES {
                    self.lanes[k] += f(a[k], b[k]);
                }
            }
        }

        fn total(&self) -> f64 {
            self.lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(self.tail)
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::{BatchNorm, BatchNormConfig};
    use burn::tensor::Distribution;

    type A = Autodiff<Flex>;

    fn max_diff<const D: usize>(a: Tensor<A, D>, b: Tensor<A, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    fn layer(device: &burn::tensor::Device<A>) -> BatchNorm<A> {
        BatchNorm {
            gamma: Param::from_tensor(Tensor::from_floats([0.5, -1.5, 2.0, 1.0], device)),
            beta: Param::from_tensor(Tensor::from_floats([0.0, 1.0, -0.5, 3.0], device)),
            ..BatchNormConfig::new(4).init::<A>(device)
        }
    }

    #[test]
    fn taken_on_autodiff_flex_only() {
        let device = Default::default();
        let x = Tensor::<Flex, 3>::ones([2, 3, 4], &device);
        let v = Tensor::<Flex, 1>::ones([3], &device);
        assert!(batch_norm_train(&x, &v, &v, 1e-5).is_none());
        let (x, v) = (Tensor::<A, 3>::from_inner(x), Tensor::<A, 1>::from_inner(v));
        assert!(batch_norm_train(&x, &v, &v, 1e-5).is_some());
        // mismatched channels: left to the tensor formula
        let v2 = Tensor::<A, 1>::ones([2], &device);
        assert!(batch_norm_train(&x, &v2, &v2, 1e-5).is_none());
    }

    /// The target network: nothing tracked, batch statistics all the same.
    #[test]
    fn untracked_forward_uses_batch_statistics() {
        let device = Default::default();
        let bn = layer(&device).no_grad();
        let x = Tensor::<A, 4>::random([5, 4, 3, 3], Distribution::Normal(1.0, 2.0), &device);
        let ours = crate::norm::batch_norm(&bn, x.clone());
        assert!(max_diff(ours, bn.forward(x)) < 1e-4);
    }
}
