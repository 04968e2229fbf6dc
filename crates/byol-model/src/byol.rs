//! The BYOL networks: online (encoder → projector → predictor) and target
//! (encoder → projector), the target an exponential moving average of the
//! online weights.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::Encoder;
use crate::head::{MlpHead, MlpHeadConfig};
use crate::precision::Precision;

/// Sizes of the projector and predictor MLPs.
#[derive(Config, Debug)]
pub struct HeadsConfig {
    /// Hidden width of the projector (4096 in the paper).
    pub projector_hidden: usize,
    /// Projection dimension, also the predictor's output (256 in the paper).
    pub projection_dim: usize,
    /// Hidden width of the predictor (4096 in the paper).
    pub predictor_hidden: usize,
    /// BatchNorm in the hidden layer of both heads.
    #[config(default = true)]
    pub batch_norm: bool,
}

/// "The online network is defined by a set of weights θ and is comprised of
/// three stages: an encoder f_θ, a projector g_θ and a predictor q_θ"
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.1].
#[derive(Module, Debug)]
pub struct OnlineNetwork<B: Backend, E> {
    /// f_θ.
    pub encoder: E,
    /// g_θ.
    pub projector: MlpHead<B>,
    /// q_θ.
    pub predictor: MlpHead<B>,
}

/// "The target network has the same architecture as the online network, but
/// uses a different set of weights ξ" — without the predictor
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.1].
#[derive(Module, Debug)]
pub struct TargetNetwork<B: Backend, E> {
    /// f_ξ.
    pub encoder: E,
    /// g_ξ.
    pub projector: MlpHead<B>,
}

/// What one BYOL forward pass gives the loss, and the monitors.
#[derive(Debug, Clone)]
pub struct ByolOutput<B: Backend> {
    /// Online prediction of view 1, `[batch, projection_dim]`.
    pub p1: Tensor<B, 2>,
    /// Online prediction of view 2.
    pub p2: Tensor<B, 2>,
    /// Target projection of view 1, detached.
    pub z1: Tensor<B, 2>,
    /// Target projection of view 2, detached.
    pub z2: Tensor<B, 2>,
    /// Online representation (encoder output) of view 1, detached, for the
    /// collapse monitors: `[batch, encoder dim]`.
    pub y1: Tensor<B, 2>,
    /// Online projection of view 1, detached: `[batch, projection_dim]`.
    pub h1: Tensor<B, 2>,
}

/// How a forward pass runs the two views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardOptions {
    /// Run both views through each network as one batch of `2 × batch`
    /// (fewer, larger kernels, as byol-pytorch does). BatchNorm statistics
    /// are then shared by the two views instead of per view.
    pub concat_views: bool,
    /// The number format of the convolutions and matrix products of both
    /// networks (`train.precision`); parameters, normalisations and the
    /// outputs stay f32.
    pub precision: Precision,
}

/// The online and target networks of BYOL.
///
/// The target stays on the same (autodiff) backend as the online network so
/// that its BatchNorm layers normalise with batch statistics, as the PyTorch
/// references run it (train mode), but its parameters never require
/// gradients: optimizers skip them, and [`Byol::update_target`] moves them.
///
/// Its BatchNorm running statistics are never used during training; they are
/// moved by the same moving average as the parameters (running means and
/// variances are visited like parameters), so a saved target is usable in
/// evaluation mode.
#[derive(Module, Debug)]
pub struct Byol<B: Backend, E> {
    /// Trained by gradient descent.
    pub online: OnlineNetwork<B, E>,
    /// Moving average of `online` (without the predictor); `None` in the
    /// SimSiam variant, whose target is the online network under
    /// stop-gradient [Chen & He 2020, arXiv:2011.10566].
    pub target: Option<TargetNetwork<B, E>>,
}

impl<B: Backend, E: Encoder<B>> OnlineNetwork<B, E> {
    /// Representation, projection and prediction of one batch.
    ///
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, dim]`,
    /// `[batch, projection_dim]`, `[batch, projection_dim]`
    pub fn forward_all(&self, images: Tensor<B, 4>) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        self.forward_all_in(images, Precision::F32)
    }

    /// [`OnlineNetwork::forward_all`] with the products in `precision`.
    ///
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, dim]`,
    /// `[batch, projection_dim]`, `[batch, projection_dim]`
    ///
    /// # Panics
    ///
    /// When the encoder does not compute in `precision`.
    pub fn forward_all_in(
        &self,
        images: Tensor<B, 4>,
        precision: Precision,
    ) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        let y = self.encoder.encode_in(images, precision);
        let h = self.projector.forward_in(y.clone(), precision);
        let p = self.predictor.forward_in(h.clone(), precision);
        (y, h, p)
    }

    /// Projection g_θ(f_θ(x)).
    ///
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, projection_dim]`
    pub fn project(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.projector.forward(self.encoder.encode(images))
    }

    /// Prediction q_θ(g_θ(f_θ(x))).
    ///
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, projection_dim]`
    pub fn predict(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.predictor.forward(self.project(images))
    }
}

impl<B: Backend, E: Encoder<B>> TargetNetwork<B, E> {
    /// Projection g_ξ(f_ξ(x)), detached from any graph.
    ///
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, projection_dim]`
    pub fn project(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.project_in(images, Precision::F32)
    }

    /// [`TargetNetwork::project`] with the products in `precision`.
    ///
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, projection_dim]`
    pub fn project_in(&self, images: Tensor<B, 4>, precision: Precision) -> Tensor<B, 2> {
        let y = self.encoder.encode_in(images, precision);
        self.projector.forward_in(y, precision).detach()
    }
}

impl<B: Backend, E: Encoder<B>> Byol<B, E> {
    /// Assembles BYOL from two encoders built independently from the same
    /// config, then copies the online weights into the target. Without a
    /// target encoder, the SimSiam variant (no moving average).
    ///
    /// The target must not be a `clone()` of the online encoder: burn clones
    /// share BatchNorm running statistics and lazily initialised parameters.
    ///
    /// # Panics
    ///
    /// When the two encoders do not have the same parameter shapes.
    pub fn new(
        online_encoder: E,
        target_encoder: Option<E>,
        heads: &HeadsConfig,
        device: &B::Device,
    ) -> Self {
        let dim = online_encoder.output_dim();
        let projector = MlpHeadConfig::new(dim, heads.projector_hidden, heads.projection_dim)
            .with_batch_norm(heads.batch_norm);
        let predictor = MlpHeadConfig::new(
            heads.projection_dim,
            heads.predictor_hidden,
            heads.projection_dim,
        )
        .with_batch_norm(heads.batch_norm);
        let online = OnlineNetwork {
            encoder: online_encoder,
            projector: projector.init(device),
            predictor: predictor.init(device),
        };
        let target = target_encoder.map(|encoder| {
            TargetNetwork {
                encoder,
                projector: projector.init(device),
            }
            .no_grad()
        });
        Self { online, target }.update_target(0.0)
    }

    /// [`Byol::new`] with every weight drawn from `seed` alone: under
    /// [`crate::seeded`] it builds the online encoder, the target encoder
    /// (when `with_target`; none is the SimSiam variant) and the heads, and
    /// [`crate::materialize`]s every parameter before the guard drops, so
    /// that another model initialising in the process at the same time
    /// cannot interleave its draws with these.
    ///
    /// `encoder` is called once per network and must build a fresh encoder
    /// each time (never a `clone()`: see [`Byol::new`]).
    pub fn seeded(
        seed: u64,
        device: &B::Device,
        heads: &HeadsConfig,
        with_target: bool,
        mut encoder: impl FnMut(&B::Device) -> E,
    ) -> Self {
        let _generator = crate::seeded::<B>(device, seed);
        let online = encoder(device);
        let target = with_target.then(|| encoder(device));
        let model = Self::new(online, target, heads, device);
        crate::materialize(&model);
        model
    }

    /// One BYOL forward pass over the two views of a batch, each view
    /// through the networks on its own (BatchNorm statistics per view, as
    /// lightly and solo-learn).
    ///
    /// # Shapes
    /// `view1`, `view2`: `[batch, channels, height, width]`
    pub fn forward(&self, view1: Tensor<B, 4>, view2: Tensor<B, 4>) -> ByolOutput<B> {
        self.forward_with(view1, view2, ForwardOptions::default())
    }

    /// [`Byol::forward`] with the views run as `options` says.
    ///
    /// # Shapes
    /// `view1`, `view2`: `[batch, channels, height, width]`
    ///
    /// # Panics
    ///
    /// When the encoder does not compute in `options.precision`
    /// ([`Encoder::computes_in`]).
    pub fn forward_with(
        &self,
        view1: Tensor<B, 4>,
        view2: Tensor<B, 4>,
        options: ForwardOptions,
    ) -> ByolOutput<B> {
        let [batch, ..] = view1.dims();
        // [2 × batch, d] → two [batch, d]
        let split = |t: Tensor<B, 2>| (t.clone().narrow(0, 0, batch), t.narrow(0, batch, batch));
        let precision = options.precision;
        let ((y1, _), (h1, h2), (p1, p2)) = if options.concat_views {
            let both = Tensor::cat(vec![view1.clone(), view2.clone()], 0);
            let (y, h, p) = self.online.forward_all_in(both, precision);
            (split(y), split(h), split(p))
        } else {
            let (y1, h1, p1) = self.online.forward_all_in(view1.clone(), precision);
            let (y2, h2, p2) = self.online.forward_all_in(view2.clone(), precision);
            ((y1, y2), (h1, h2), (p1, p2))
        };
        let (z1, z2) = match &self.target {
            Some(target) if options.concat_views => {
                split(target.project_in(Tensor::cat(vec![view1, view2], 0), precision))
            }
            Some(target) => (
                target.project_in(view1, precision),
                target.project_in(view2, precision),
            ),
            // SimSiam: the online projections under stop-gradient
            None => (h1.clone().detach(), h2.detach()),
        };
        ByolOutput {
            p1,
            p2,
            z1,
            z2,
            y1: y1.detach(),
            h1: h1.detach(),
        }
    }

    /// The target update ξ ← τξ + (1 − τ)θ over the encoder and projector.
    ///
    /// "the target network parameters ξ are an exponential moving average of
    /// the online parameters θ. More precisely, given a target decay rate
    /// τ ∈ [0, 1], after each training step we perform the following update,
    /// ξ ← τξ + (1 − τ)θ" [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.1].
    ///
    /// `tau = 1` leaves the target as it is, `tau = 0` copies the online
    /// weights. BatchNorm running statistics are averaged the same way.
    ///
    /// # Panics
    ///
    /// When the target and online networks differ in structure.
    pub fn update_target(mut self, tau: f64) -> Self {
        let Some(mut target) = self.target.take() else {
            return self;
        };
        let mut online = Collect::<B>::default();
        self.online.encoder.visit(&mut online);
        self.online.projector.visit(&mut online);
        let mut ema = Ema {
            online: online.tensors.into_iter(),
            tau,
        };
        target.encoder = target.encoder.map(&mut ema);
        target.projector = target.projector.map(&mut ema);
        assert!(
            ema.online.next().is_none(),
            "the target network should have as many tensors as the online network"
        );
        self.target = Some(target);
        self
    }
}

/// Gathers the online tensors, flattened and detached, in visiting order.
struct Collect<B: Backend> {
    tensors: Vec<Tensor<B, 1>>,
}

impl<B: Backend> Default for Collect<B> {
    fn default() -> Self {
        Self {
            tensors: Vec::new(),
        }
    }
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val().detach();
        let n = tensor.shape().num_elements();
        self.tensors.push(tensor.reshape([n]));
    }
}

/// Moves each target tensor towards the online tensor in the same place.
struct Ema<B: Backend> {
    online: std::vec::IntoIter<Tensor<B, 1>>,
    tau: f64,
}

impl<B: Backend> ModuleMapper<B> for Ema<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, target, mapper) = param.consume();
        let online = self
            .online
            .next()
            .expect("the online network should have as many tensors as the target network");
        let shape = target.shape();
        assert_eq!(
            online.shape().num_elements(),
            shape.num_elements(),
            "online and target tensors should have the same size (shape {shape:?})"
        );
        let updated = if self.tau == 0.0 {
            online.reshape(shape)
        } else {
            target
                .detach()
                .mul_scalar(self.tau)
                .add(online.reshape(shape).mul_scalar(1.0 - self.tau))
        };
        Param::from_mapped_value(id, updated.set_require_grad(false), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResNetConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;

    type B = Autodiff<Flex>;

    fn tiny() -> Byol<B, crate::ResNet<B>> {
        let device = Default::default();
        let cfg = ResNetConfig::small();
        Byol::new(
            cfg.init(&device),
            Some(cfg.init(&device)),
            &HeadsConfig::new(32, 16, 32),
            &device,
        )
    }

    fn flat<M: Module<B>>(m: &M) -> Vec<f32> {
        let mut c = Collect::<B>::default();
        m.visit(&mut c);
        c.tensors
            .into_iter()
            .flat_map(|t| t.into_data().to_vec::<f32>().expect("f32 tensor"))
            .collect()
    }

    fn online_part(b: &Byol<B, crate::ResNet<B>>) -> Vec<f32> {
        let mut v = flat(&b.online.encoder);
        v.extend(flat(&b.online.projector));
        v
    }

    fn target_part(b: &Byol<B, crate::ResNet<B>>) -> Vec<f32> {
        let target = b.target.as_ref().expect("a BYOL target");
        let mut v = flat(&target.encoder);
        v.extend(flat(&target.projector));
        v
    }

    /// Adds noise to every online tensor so online and target differ.
    fn perturb(b: Byol<B, crate::ResNet<B>>) -> Byol<B, crate::ResNet<B>> {
        struct Noise;
        impl ModuleMapper<B> for Noise {
            fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                p.map(|t| {
                    let noise =
                        Tensor::random(t.shape(), Distribution::Normal(0.0, 1.0), &t.device());
                    t + noise
                })
            }
        }
        let mut b = b;
        b.online = b.online.map(&mut Noise);
        b
    }

    #[test]
    fn new_target_equals_online_and_requires_no_grad() {
        let b = tiny();
        assert_eq!(online_part(&b), target_part(&b));
        struct Grad(bool, bool);
        impl ModuleVisitor<B> for Grad {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                self.0 |= p.val().is_require_grad();
                self.1 &= p.val().is_require_grad();
            }
        }
        let mut t = Grad(false, true);
        b.target.visit(&mut t);
        assert!(!t.0, "no target tensor should require grad");
        let mut o = Grad(false, true);
        b.online.projector.visit(&mut o);
        assert!(o.0, "online parameters should require grad");
    }

    #[test]
    fn ema_with_tau_one_leaves_target_unchanged() {
        let b = perturb(tiny());
        let before = target_part(&b);
        assert_ne!(before, online_part(&b));
        let b = b.update_target(1.0);
        assert_eq!(target_part(&b), before);
    }

    #[test]
    fn ema_with_tau_zero_copies_online() {
        let b = perturb(tiny()).update_target(0.0);
        assert_eq!(target_part(&b), online_part(&b));
    }

    #[test]
    fn ema_interpolates_each_value() {
        let b = perturb(tiny());
        let (t0, o) = (target_part(&b), online_part(&b));
        let b = b.update_target(0.9);
        for ((t1, t0), o) in target_part(&b).iter().zip(&t0).zip(&o) {
            let expected = 0.9 * t0 + 0.1 * o;
            assert!(
                (t1 - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
                "{t1} vs {expected}"
            );
        }
    }

    #[test]
    fn gradients_reach_the_online_network_only() {
        let b = tiny();
        let x = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Default, &Default::default());
        let out = b.forward(x.clone(), x);
        // the target projections take part in the loss, yet get no gradient
        let loss = (out.p1 * out.z2).sum() + (out.p2 * out.z1).sum();
        let grads = loss.backward();
        assert!(b.online.encoder.conv1.weight.grad(&grads).is_some());
        assert!(b.online.predictor.linear2.weight.grad(&grads).is_some());
        let target = b.target.as_ref().expect("a BYOL target");
        assert!(target.encoder.conv1.weight.grad(&grads).is_none());
        assert!(target.projector.linear1.weight.grad(&grads).is_none());
    }

    #[test]
    fn concatenated_views_give_the_same_shapes_and_finite_values() {
        let b = tiny();
        let x1 = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Default, &Default::default());
        let x2 = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Default, &Default::default());
        let options = ForwardOptions {
            concat_views: true,
            ..ForwardOptions::default()
        };
        let out = b.forward_with(x1, x2, options);
        for t in [out.p1, out.p2, out.z1, out.z2, out.h1] {
            assert_eq!(t.dims(), [4, 16]);
            let v: Vec<f32> = t.into_data().to_vec().expect("f32");
            assert!(v.iter().all(|x| x.is_finite()));
        }
        assert_eq!(out.y1.dims(), [4, 128]);
    }

    #[test]
    fn simsiam_targets_are_the_detached_online_projections() {
        let device = Default::default();
        let cfg = ResNetConfig::small();
        let b: Byol<B, crate::ResNet<B>> = Byol::new(
            cfg.init(&device),
            None,
            &HeadsConfig::new(32, 16, 32),
            &device,
        );
        assert!(b.target.is_none());
        let x1 = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Default, &device);
        let x2 = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Default, &device);
        let out = b.forward(x1, x2);
        let (z1, h1): (Vec<f32>, Vec<f32>) = (
            out.z1.clone().into_data().to_vec().expect("f32"),
            out.h1.clone().into_data().to_vec().expect("f32"),
        );
        assert_eq!(z1, h1);
        // no gradient flows through the targets
        let grads = (out.z1.sum() + out.z2.sum()).backward();
        assert!(b.online.encoder.conv1.weight.grad(&grads).is_none());
        // and the EMA update is a no-op
        let b = b.update_target(0.5);
        assert!(b.target.is_none());
    }
}
