//! LARS: layer-wise adaptive rate scaling [You et al. 2017,
//! arXiv:1708.03888], as BYOL trains: "we use the LARS optimizer [...] with
//! a cosine decay learning rate schedule [...] over 1000 epochs [...] we
//! exclude the biases and batch normalization parameters from both LARS
//! adaptation and weight decay" [BYOL, Grill et al. 2020, arXiv:2006.07733,
//! appendix C.1].
//!
//! Per parameter tensor `w` with gradient `g`, in the order of the BYOL
//! reference (optax's `lars`): `u = g + λw`; `u ← η‖w‖/‖u‖ · u` (the trust
//! ratio; 1 when either norm is 0); `v ← μv + u` (`v₀ = u`); `w ← w − lr·v`.
//! Biases and normalisation parameters — the one-dimensional tensors of our
//! networks — skip the weight decay and the trust ratio but keep momentum.
//! Optionally the ratio is clipped as solo-learn's `clip_lr` does it:
//! `ratio ← min(ratio / lr, 1)`, so that a tensor's own rate `lr·ratio`
//! never exceeds the global rate `lr` (LARC's clipping mode).
//!
//! Written as burn writes SGD: a config, a state record and
//! [`SimpleOptimizer`], wrapped by burn's `OptimizerAdaptor`.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::SimpleOptimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;

/// Settings of [`Lars`].
#[derive(Config, Debug)]
pub struct LarsConfig {
    /// Momentum μ (no dampening).
    #[config(default = 0.9)]
    pub momentum: f64,
    /// Weight decay λ, added to the gradient of adapted tensors.
    #[config(default = 1e-6)]
    pub weight_decay: f64,
    /// Trust coefficient η (BYOL: 1e-3).
    #[config(default = 1e-3)]
    pub trust_coefficient: f64,
    /// Leave one-dimensional tensors (biases, normalisation scales and
    /// shifts) out of weight decay and trust-ratio adaptation.
    #[config(default = true)]
    pub exclude_bias_and_norm: bool,
    /// Clip the trust ratio relative to the learning rate,
    /// `ratio ← min(ratio / lr, 1)`, so no tensor steps faster than the
    /// global rate (solo-learn's `clip_lr`, LARC's clipping mode).
    #[config(default = false)]
    pub clip_ratio: bool,
}

/// The LARS optimizer; see the module docs.
#[derive(Clone, Debug)]
pub struct Lars {
    momentum: f64,
    weight_decay: f64,
    trust_coefficient: f64,
    exclude_bias_and_norm: bool,
    clip_ratio: bool,
}

/// Per-tensor state: the momentum buffer.
#[derive(Record, Clone, Debug)]
pub struct LarsState<B: Backend, const D: usize> {
    /// v, the running sum of adapted updates.
    pub velocity: Tensor<B, D>,
}

impl LarsConfig {
    /// The optimizer itself.
    pub fn build(&self) -> Lars {
        Lars {
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            trust_coefficient: self.trust_coefficient,
            exclude_bias_and_norm: self.exclude_bias_and_norm,
            clip_ratio: self.clip_ratio,
        }
    }

    /// The optimizer for module `M`, as burn's `SgdConfig::init`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<Lars, M, B> {
        OptimizerAdaptor::from(self.build())
    }
}

impl<B: Backend> SimpleOptimizer<B> for Lars {
    type State<const D: usize> = LarsState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let adapt = !(self.exclude_bias_and_norm && D == 1);
        let mut update = grad;
        if adapt {
            if self.weight_decay > 0.0 {
                update = update + tensor.clone().mul_scalar(self.weight_decay);
            }
            // [1]: both norms stay on the device, no host synchronisation
            let w_norm = tensor.clone().square().sum().sqrt();
            let u_norm = update.clone().square().sum().sqrt();
            let both_positive = (w_norm.clone() * u_norm.clone()).greater_elem(0.0);
            let ratio =
                (w_norm / u_norm.clamp_min(f32::MIN_POSITIVE)).mul_scalar(self.trust_coefficient);
            let ratio = ratio.ones_like().mask_where(both_positive, ratio);
            let ratio = if self.clip_ratio {
                // lr·min(ratio/lr, 1) = min(lr·ratio, lr); lr = 0 steps by 0
                ratio.div_scalar(lr.max(f64::MIN_POSITIVE)).clamp_max(1.0)
            } else {
                ratio
            };
            update = update * ratio.reshape([1; D]);
        }
        let velocity = match state {
            Some(state) => state.velocity.mul_scalar(self.momentum) + update,
            None => update,
        };
        let tensor = tensor - velocity.clone().mul_scalar(lr);
        (tensor, Some(LarsState { velocity }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        LarsState {
            velocity: state.velocity.to_device(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn t<const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<B, D> {
        Tensor::<B, 1>::from_floats(values, &Default::default()).reshape(shape)
    }

    fn vec<const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
        x.into_data().to_vec().expect("f32")
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn one_step_on_a_matrix_follows_the_formula() {
        let lars = LarsConfig::new()
            .with_weight_decay(0.1)
            .with_trust_coefficient(0.01)
            .build();
        let w = [3.0f32, 4.0, 0.0, 0.0]; // ‖w‖ = 5
        let g = [1.0f32, -2.0, 2.0, 0.0];
        // by hand: u = g + 0.1 w = (1.3, -1.6, 2, 0); ‖u‖ = √(1.69 + 2.56 + 4) = √8.25
        let u = [1.3f32, -1.6, 2.0, 0.0];
        let ratio = 0.01 * 5.0 / 8.25f32.sqrt();
        let lr = 0.5;
        let expected: Vec<f32> = w.iter().zip(u).map(|(w, u)| w - lr * ratio * u).collect();
        let (new_w, state) =
            SimpleOptimizer::<B>::step(&lars, lr as f64, t(&w, [2, 2]), t(&g, [2, 2]), None);
        close(&vec(new_w.clone()), &expected);
        let v1: Vec<f32> = u.iter().map(|u| ratio * u).collect();
        let state = state.expect("state");
        close(&vec(state.velocity.clone()), &v1);

        // second step: v = 0.9 v + u', with the ratio of the new weights
        let w1 = vec(new_w.clone());
        let u2: Vec<f32> = g.iter().zip(&w1).map(|(g, w)| g + 0.1 * w).collect();
        let w1_norm = w1.iter().map(|x| x * x).sum::<f32>().sqrt();
        let u2_norm = u2.iter().map(|x| x * x).sum::<f32>().sqrt();
        let ratio2 = 0.01 * w1_norm / u2_norm;
        let v2: Vec<f32> = v1
            .iter()
            .zip(&u2)
            .map(|(v, u)| 0.9 * v + ratio2 * u)
            .collect();
        let expected2: Vec<f32> = w1.iter().zip(&v2).map(|(w, v)| w - lr * v).collect();
        let (w2, _) =
            SimpleOptimizer::<B>::step(&lars, lr as f64, new_w, t(&g, [2, 2]), Some(state));
        close(&vec(w2), &expected2);
    }

    #[test]
    fn biases_skip_decay_and_trust_ratio_but_keep_momentum() {
        let lars = LarsConfig::new()
            .with_weight_decay(0.1)
            .with_trust_coefficient(0.01)
            .build();
        let w = [1.0f32, 2.0];
        let g = [0.5f32, -1.0];
        let (w1, s) = SimpleOptimizer::<B>::step(&lars, 0.1, t(&w, [2]), t(&g, [2]), None);
        close(&vec(w1.clone()), &[1.0 - 0.05, 2.0 + 0.1]);
        let (w2, _) = SimpleOptimizer::<B>::step(&lars, 0.1, w1, t(&g, [2]), s);
        // v = 0.9 g + g = 1.9 g
        close(&vec(w2), &[0.95 - 0.1 * 1.9 * 0.5, 2.1 + 0.1 * 1.9]);
        // without the exclusion the same vector is adapted
        let adapted = LarsConfig::new()
            .with_weight_decay(0.1)
            .with_trust_coefficient(0.01)
            .with_exclude_bias_and_norm(false)
            .build();
        let (w1, _) = SimpleOptimizer::<B>::step(&adapted, 0.1, t(&w, [2]), t(&g, [2]), None);
        assert!((vec(w1)[0] - 0.95).abs() > 1e-3);
    }

    #[test]
    fn a_clipped_trust_ratio_caps_the_tensor_rate_at_the_global_rate() {
        // ‖w‖ = 5, ‖g‖ = 0.05, η = 1e-3: ratio 0.1
        let step = |clip: bool, lr: f64| {
            let lars = LarsConfig::new()
                .with_weight_decay(0.0)
                .with_trust_coefficient(1e-3)
                .with_clip_ratio(clip)
                .build();
            let (w1, _) = SimpleOptimizer::<B>::step(
                &lars,
                lr,
                t(&[3.0, 4.0], [1, 2]),
                t(&[0.03, 0.04], [1, 2]),
                None,
            );
            vec(w1)
        };
        // lr 0.01: ratio / lr = 10, clipped to 1, so the step is lr·g
        close(&step(true, 0.01), &[3.0 - 0.01 * 0.03, 4.0 - 0.01 * 0.04]);
        // unclipped, the same lr steps by lr·0.1·g
        close(
            &step(false, 0.01),
            &[3.0 - 0.001 * 0.03, 4.0 - 0.001 * 0.04],
        );
        // lr 1: ratio / lr = 0.1 < 1, clipping changes nothing
        close(&step(true, 1.0), &step(false, 1.0));
        close(&step(true, 1.0), &[3.0 - 0.1 * 0.03, 4.0 - 0.1 * 0.04]);
    }

    #[test]
    fn zero_weights_use_a_trust_ratio_of_one() {
        let lars = LarsConfig::new().with_weight_decay(0.0).build();
        let (w1, _) = SimpleOptimizer::<B>::step(
            &lars,
            0.1,
            t(&[0.0, 0.0, 0.0, 0.0], [2, 2]),
            t(&[1.0, 2.0, 3.0, 4.0], [2, 2]),
            None,
        );
        close(&vec(w1), &[-0.1, -0.2, -0.3, -0.4]);
    }
}
