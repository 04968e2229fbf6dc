//! The optimizers of a run and what surrounds a step of them: the global
//! gradient-norm clip and the split of the predictor into its own parameter
//! group (for its learning-rate multiplier).

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    Adam, AdamConfig, AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig,
};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::config::OptimizerKind;
use crate::lars::{Lars, LarsConfig};

/// The optimizers a run can use, over a whole module (parameters without a
/// gradient — the target network's — are left alone).
#[derive(Clone)]
pub enum ByolOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    /// See [`OptimizerKind::Adam`].
    Adam(OptimizerAdaptor<Adam, M, B>),
    /// See [`OptimizerKind::Adamw`].
    AdamW(OptimizerAdaptor<AdamW, M, B>),
    /// See [`OptimizerKind::Sgd`].
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
    /// See [`OptimizerKind::Lars`].
    Lars(OptimizerAdaptor<Lars, M, B>),
}

/// The settings every optimizer kind draws from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    /// Which optimizer.
    pub kind: OptimizerKind,
    /// Weight decay (L2 in the gradient for Adam and SGD, decoupled for
    /// AdamW, in the gradient of adapted tensors for LARS).
    pub weight_decay: f64,
    /// ε of Adam and AdamW, added to the root of the second moment.
    pub adam_epsilon: f64,
    /// Momentum of SGD and LARS.
    pub momentum: f64,
    /// LARS trust coefficient η.
    pub lars_eta: f64,
    /// LARS: leave biases and normalisation parameters out of decay and
    /// adaptation.
    pub lars_exclude_bias_and_norm: bool,
    /// LARS: clip the trust ratio to min(ratio / lr, 1) (solo-learn).
    pub lars_clip: bool,
}

impl OptimizerSettings {
    /// Adam with PyTorch's ε (1e-8) and `weight_decay`; the SGD and LARS
    /// fields at their config defaults.
    pub fn adam(weight_decay: f64) -> Self {
        Self {
            kind: OptimizerKind::Adam,
            weight_decay,
            adam_epsilon: 1e-8,
            momentum: 0.9,
            lars_eta: 1e-3,
            lars_exclude_bias_and_norm: true,
            lars_clip: false,
        }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> ByolOptimizer<M, B> {
    /// Builds the optimizer. burn's defaults differ from PyTorch's (Adam ε
    /// 1e-5, SGD dampening 0.1, AdamW weight decay 1e-4); every value is set
    /// here as PyTorch sets it, ε from `adam_epsilon`.
    pub fn new(s: &OptimizerSettings) -> Self {
        let decay = (s.weight_decay > 0.0).then(|| WeightDecayConfig::new(s.weight_decay as f32));
        match s.kind {
            OptimizerKind::Adam => Self::Adam(
                AdamConfig::new()
                    .with_epsilon(s.adam_epsilon as f32)
                    .with_weight_decay(decay)
                    .init(),
            ),
            OptimizerKind::Adamw => Self::AdamW(
                AdamWConfig::new()
                    .with_epsilon(s.adam_epsilon as f32)
                    .with_weight_decay(s.weight_decay as f32)
                    .init(),
            ),
            OptimizerKind::Sgd => Self::Sgd(
                SgdConfig::new()
                    .with_momentum((s.momentum > 0.0).then_some(MomentumConfig {
                        momentum: s.momentum,
                        dampening: 0.0,
                        nesterov: false,
                    }))
                    .with_weight_decay(decay)
                    .init(),
            ),
            OptimizerKind::Lars => Self::Lars(
                LarsConfig::new()
                    .with_momentum(s.momentum)
                    .with_weight_decay(s.weight_decay)
                    .with_trust_coefficient(s.lars_eta)
                    .with_exclude_bias_and_norm(s.lars_exclude_bias_and_norm)
                    .with_clip_ratio(s.lars_clip)
                    .init(),
            ),
        }
    }

    /// One optimizer step over the parameters that have a gradient in
    /// `grads`.
    pub fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        match self {
            Self::Adam(o) => o.step(lr, module, grads),
            Self::AdamW(o) => o.step(lr, module, grads),
            Self::Sgd(o) => o.step(lr, module, grads),
            Self::Lars(o) => o.step(lr, module, grads),
        }
    }

    /// Saves the state (moments, momentum buffers) atomically to `path`.
    ///
    /// # Errors
    ///
    /// As [`crate::checkpoint::save_record`].
    pub fn save(&self, path: &std::path::Path) -> Result<(), crate::TrainError> {
        match self {
            Self::Adam(o) => crate::checkpoint::save_record::<B, _>(o.to_record(), path),
            Self::AdamW(o) => crate::checkpoint::save_record::<B, _>(o.to_record(), path),
            Self::Sgd(o) => crate::checkpoint::save_record::<B, _>(o.to_record(), path),
            Self::Lars(o) => crate::checkpoint::save_record::<B, _>(o.to_record(), path),
        }
    }

    /// Loads a state written by [`ByolOptimizer::save`] for the same kind.
    ///
    /// # Errors
    ///
    /// [`crate::TrainError::Checkpoint`] naming the file when it cannot be
    /// read or is of another optimizer.
    pub fn load(
        self,
        path: &std::path::Path,
        device: &B::Device,
    ) -> Result<Self, crate::TrainError> {
        use crate::checkpoint::load_record;
        Ok(match self {
            Self::Adam(o) => Self::Adam(o.load_record(load_record::<B, _>(path, device)?)),
            Self::AdamW(o) => Self::AdamW(o.load_record(load_record::<B, _>(path, device)?)),
            Self::Sgd(o) => Self::Sgd(o.load_record(load_record::<B, _>(path, device)?)),
            Self::Lars(o) => Self::Lars(o.load_record(load_record::<B, _>(path, device)?)),
        })
    }
}

/// Moves the gradients of `part`'s parameters out of `all` into a group of
/// their own.
pub fn split_gradients<B: AutodiffBackend, M: Module<B>>(
    all: &mut GradientsParams,
    part: &M,
) -> GradientsParams {
    struct Move<'a> {
        from: &'a mut GradientsParams,
        to: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Move<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
                self.to.register::<B::InnerBackend, D>(param.id, g);
            }
        }
    }
    let mut mover = Move {
        from: all,
        to: GradientsParams::new(),
    };
    part.visit(&mut mover);
    mover.to
}

/// Scales every gradient of `module`'s parameters in `grads` by
/// `min(1, max_norm / ‖g‖)`, where ‖g‖ is the L2 norm of all of them
/// together (PyTorch's `clip_grad_norm_`, ε = 1e-6). Stays on the device:
/// no host synchronisation.
pub fn clip_global_norm<B: AutodiffBackend, M: Module<B>>(
    grads: &mut GradientsParams,
    module: &M,
    max_norm: f64,
) {
    struct SumSquares<'a, B: Backend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<B, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a, B: Backend> {
        grads: &'a mut GradientsParams,
        factor: Tensor<B, 1>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                let scaled = g * self.factor.clone().reshape([1; D]);
                self.grads.register::<B::InnerBackend, D>(param.id, scaled);
            }
        }
    }
    let mut sum = SumSquares::<B::InnerBackend> { grads, total: None };
    module.visit(&mut sum);
    let Some(total) = sum.total else {
        return;
    };
    let factor = total
        .sqrt()
        .add_scalar(1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    let mut scale = Scale { grads, factor };
    module.visit(&mut scale);
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{Linear, LinearConfig};

    type A = Autodiff<Flex>;

    fn values<M: Module<A>>(m: &M) -> Vec<f32> {
        struct V(Vec<f32>);
        impl ModuleVisitor<A> for V {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
                self.0
                    .extend(p.val().into_data().to_vec::<f32>().expect("f32"));
            }
        }
        let mut v = V(Vec::new());
        m.visit(&mut v);
        v.0
    }

    fn settings(kind: OptimizerKind) -> OptimizerSettings {
        OptimizerSettings {
            kind,
            ..OptimizerSettings::adam(0.0)
        }
    }

    fn linear() -> Linear<A> {
        LinearConfig::new(3, 1)
            .with_bias(false)
            .init::<A>(&Default::default())
    }

    #[test]
    fn sgd_momentum_has_no_dampening_as_pytorch() {
        // loss = sum(x·W): a constant gradient g = x per weight row. Two SGD
        // steps with momentum 0.9 and PyTorch's dampening 0 move W by
        // lr·g·(1 + 1.9) = 2.9·lr·g (burn's default dampening 0.1 gives 2.8).
        let device = Default::default();
        let mut layer = linear();
        let w0 = values(&layer);
        let x = Tensor::<A, 2>::from_floats([[1.0, 2.0, 3.0]], &device);
        let mut optim = ByolOptimizer::<Linear<A>, A>::new(&settings(OptimizerKind::Sgd));
        for _ in 0..2 {
            let grads =
                GradientsParams::from_grads(layer.forward(x.clone()).sum().backward(), &layer);
            layer = optim.step(0.1, layer, grads);
        }
        for ((w1, w0), g) in values(&layer).iter().zip(&w0).zip([1.0, 2.0, 3.0]) {
            assert!(
                (w0 - w1 - 0.29 * g).abs() < 1e-5,
                "moved {} instead of {}",
                w0 - w1,
                0.29 * g
            );
        }
    }

    #[test]
    fn adamw_decays_weights_decoupled_from_the_gradient() {
        // zero gradient: Adam's update is 0, AdamW still shrinks w by lr·λ·w
        let device = Default::default();
        let layer = linear();
        let w0 = values(&layer);
        let x = Tensor::<A, 2>::zeros([1, 3], &device);
        let mut optim = ByolOptimizer::<Linear<A>, A>::new(&OptimizerSettings {
            weight_decay: 0.5,
            ..settings(OptimizerKind::Adamw)
        });
        let grads = GradientsParams::from_grads(layer.forward(x).sum().backward(), &layer);
        let layer = optim.step(0.1, layer, grads);
        for (w1, w0) in values(&layer).iter().zip(&w0) {
            assert!((w1 - w0 * (1.0 - 0.1 * 0.5)).abs() < 1e-6, "{w1} vs {w0}");
        }
    }

    #[test]
    fn adam_at_twice_the_decay_and_epsilon_retraces_half_the_gradient() {
        // The summed loss doubles every gradient of the mean of the two
        // directions (loss.rs). Adam at (2λ, 2ε) on 2g moves each weight
        // exactly as Adam at (λ, ε) on g: the decayed gradient 2g + 2λw, both
        // moments and the denominator √v + ε scale by powers of two, which
        // floating point carries exactly.
        let device = Default::default();
        let start = linear();
        values(&start); // drawn before the copies share it
        let adam = |weight_decay, adam_epsilon| {
            ByolOptimizer::<Linear<A>, A>::new(&OptimizerSettings {
                weight_decay,
                adam_epsilon,
                ..OptimizerSettings::adam(0.0)
            })
        };
        let run = |mut optim: ByolOptimizer<Linear<A>, A>, scale: f32| {
            let mut layer = start.clone();
            for i in 0..6 {
                let x = Tensor::<A, 2>::from_floats([[1.0, i as f32 - 2.5, 0.5]], &device);
                let loss = layer.forward(x).powi_scalar(2).sum().mul_scalar(scale);
                let grads = GradientsParams::from_grads(loss.backward(), &layer);
                layer = optim.step(0.1, layer, grads);
            }
            values(&layer)
        };
        let mean = run(adam(1e-2, 1e-3), 1.0);
        assert_ne!(mean, values(&start));
        assert_eq!(run(adam(2e-2, 2e-3), 2.0), mean);
        // each of the two counts: ε or λ left as they were part the runs
        assert_ne!(run(adam(2e-2, 1e-3), 2.0), mean);
        assert_ne!(run(adam(1e-2, 2e-3), 2.0), mean);
    }

    #[test]
    fn global_norm_clip_scales_all_gradients_together() {
        let device = Default::default();
        let layer = linear();
        let x = Tensor::<A, 2>::from_floats([[3.0, 4.0, 0.0]], &device);
        let grads_of = |layer: &Linear<A>| {
            GradientsParams::from_grads(layer.forward(x.clone()).sum().backward(), layer)
        };
        let get = |g: &GradientsParams| -> Vec<f32> {
            g.get::<Flex, 2>(layer.weight.id)
                .expect("grad")
                .into_data()
                .to_vec()
                .expect("f32")
        };
        // ‖g‖ = 5: a limit of 1 scales by 1/5, a limit of 10 leaves it
        let mut g = grads_of(&layer);
        clip_global_norm::<A, _>(&mut g, &layer, 1.0);
        let clipped = get(&g);
        assert!(
            (clipped[0] - 0.6).abs() < 1e-5 && (clipped[1] - 0.8).abs() < 1e-5,
            "{clipped:?}"
        );
        let mut g = grads_of(&layer);
        clip_global_norm::<A, _>(&mut g, &layer, 10.0);
        assert_eq!(get(&g)[..2], [3.0, 4.0]);
    }
}
