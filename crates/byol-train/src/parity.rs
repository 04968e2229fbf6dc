//! One BYOL forward and backward on two backends from the same weights and
//! views, and how far apart they land: the check that a backend other
//! than the CPU's (CUDA, wgpu) computes our step as the CPU does. The
//! suite runs it against wgpu on lavapipe; `cargo xtask check-step
//! --device cuda` runs it on a GPU machine (`scripts/gpu-check.sh`).

use std::marker::PhantomData;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use byol_model::{Byol, ForwardOptions, HeadsConfig, ResNet, ResNetConfig};

use crate::{TrainError, byol_loss};

/// The model, views and forward of a comparison.
#[derive(Debug, Clone)]
pub struct ParitySetup {
    /// The encoder (built on both backends; the second gets the first's
    /// weights).
    pub encoder: ResNetConfig,
    /// Projector and predictor.
    pub heads: HeadsConfig,
    /// Image channels.
    pub channels: usize,
    /// Image side, pixels.
    pub size: usize,
    /// Images per view.
    pub batch: usize,
    /// Seed of the weights and the views.
    pub seed: u64,
    /// How the views go through the networks (and at which precision).
    pub forward: ForwardOptions,
}

impl ParitySetup {
    /// The default CPU encoder at 28×28×1 with 64 → 32 heads, BatchNorm
    /// everywhere, 16 images: seconds on any backend.
    pub fn small() -> Self {
        Self {
            encoder: ResNetConfig::small(),
            heads: HeadsConfig::new(64, 32, 64),
            channels: 1,
            size: 28,
            batch: 16,
            seed: 7,
            forward: ForwardOptions::default(),
        }
    }
}

/// How one parameter's gradient compares.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientGap {
    /// Position in the module's visiting order.
    pub index: usize,
    /// Its shape.
    pub dims: String,
    /// ‖a − b‖ / max(‖a‖, floor), floor = 1e-4 × the largest gradient
    /// norm: a bias followed by BatchNorm has a zero gradient in exact
    /// arithmetic and only rounding noise on both backends, so it is
    /// measured against the scale of the largest gradient.
    pub relative: f64,
}

/// The outcome of [`step_parity`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParityReport {
    /// The loss on the reference backend.
    pub loss_reference: f32,
    /// The loss on the backend under test.
    pub loss_other: f32,
    /// Parameters with a gradient on both.
    pub parameters: usize,
    /// The parameter whose gradients differ most.
    pub worst: GradientGap,
}

impl ParityReport {
    /// |loss_reference − loss_other| / |loss_reference|.
    pub fn loss_relative(&self) -> f64 {
        (f64::from(self.loss_reference) - f64::from(self.loss_other)).abs()
            / f64::from(self.loss_reference).abs().max(f64::MIN_POSITIVE)
    }

    /// Whether the loss and every gradient agree within `tolerance`
    /// (relative).
    pub fn within(&self, tolerance: f64) -> bool {
        self.loss_relative() < tolerance && self.worst.relative < tolerance
    }
}

/// One BYOL forward and backward of the same seeded pair and views on `R`
/// (the reference, usually the CPU) and on `O`, the weights carried from
/// `R` to `O` through a record as a checkpoint carries them.
///
/// # Errors
///
/// [`TrainError::Checkpoint`] when the weights cannot be carried,
/// [`TrainError::Eval`] when the backends disagree on which parameters have
/// gradients or on their shapes, or a tensor cannot be read back.
pub fn step_parity<R, O>(
    reference: &R::Device,
    other: &O::Device,
    setup: &ParitySetup,
) -> Result<ParityReport, TrainError>
where
    R: AutodiffBackend,
    O: AutodiffBackend,
    Byol<R, ResNet<R>>: AutodiffModule<R>,
    Byol<O, ResNet<O>>: AutodiffModule<O>,
{
    let on_r = pair::<R>(setup, reference, setup.seed);
    // another seed, so that a failed carry cannot pass for an equal start
    let on_o = carried::<_, _, R, O>(
        on_r.clone(),
        pair::<O>(setup, other, setup.seed ^ 0x5a5a),
        other,
    )?;
    let (n, c, s) = (setup.batch, setup.channels, setup.size);
    let (a, b) = (
        views(n * c * s * s, setup.seed),
        views(n * c * s * s, !setup.seed),
    );
    let up_r = |v: &[f32]| Tensor::<R, 1>::from_floats(v, reference).reshape([n, c, s, s]);
    let up_o = |v: &[f32]| Tensor::<O, 1>::from_floats(v, other).reshape([n, c, s, s]);
    let (loss_r, grads_r) = loss_and_grads(&on_r, up_r(&a), up_r(&b), setup.forward)?;
    let (loss_o, grads_o) = loss_and_grads(&on_o, up_o(&a), up_o(&b), setup.forward)?;
    if grads_r.len() != grads_o.len() {
        return Err(disagree(format!(
            "{} parameters have gradients on the reference backend, {} on the other",
            grads_r.len(),
            grads_o.len()
        )));
    }
    let floor = 1e-4 * grads_r.iter().map(|(_, g)| norm(g)).fold(0.0, f64::max);
    let mut worst = GradientGap {
        index: 0,
        dims: String::new(),
        relative: -1.0,
    };
    for (index, ((dims_r, gr), (dims_o, go))) in grads_r.iter().zip(&grads_o).enumerate() {
        if dims_r != dims_o {
            return Err(disagree(format!(
                "parameter {index}: shape {dims_r} on the reference backend, {dims_o} on the other"
            )));
        }
        let relative = relative(gr, go, floor);
        // a NaN is the worst of all
        if relative.is_nan() || relative > worst.relative {
            worst = GradientGap {
                index,
                dims: dims_r.clone(),
                relative: if relative.is_nan() {
                    f64::INFINITY
                } else {
                    relative
                },
            };
        }
    }
    Ok(ParityReport {
        loss_reference: loss_r,
        loss_other: loss_o,
        parameters: grads_r.len(),
        worst,
    })
}

fn disagree(msg: String) -> TrainError {
    TrainError::Eval(byol_eval::EvalError::Data(msg))
}

/// The seeded pair of `setup` on `B`, online and target built apart.
fn pair<B: AutodiffBackend>(
    setup: &ParitySetup,
    device: &B::Device,
    seed: u64,
) -> Byol<B, ResNet<B>>
where
    Byol<B, ResNet<B>>: AutodiffModule<B>,
{
    let encoder = setup.encoder.clone().with_in_channels(setup.channels);
    Byol::seeded(seed, device, &setup.heads, true, |d| encoder.init(d))
}

/// `model`'s weights in `skeleton` on `B2`, through record bytes.
fn carried<M1, M2, B1: Backend, B2: Backend>(
    model: M1,
    skeleton: M2,
    device: &B2::Device,
) -> Result<M2, TrainError>
where
    M1: Module<B1>,
    M2: Module<B2>,
{
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let failed = |e: burn::record::RecorderError| TrainError::Checkpoint {
        path: "(weights carried between backends)".into(),
        message: e.to_string(),
    };
    let bytes = Recorder::<B1>::record(&recorder, model.into_record(), ()).map_err(failed)?;
    let record = Recorder::<B2>::load(&recorder, bytes, device).map_err(failed)?;
    Ok(skeleton.load_record(record))
}

/// Deterministic values in [-1, 1].
fn views(len: usize, salt: u64) -> Vec<f32> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ salt;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Every parameter's gradient, in the module's visiting order.
struct Grads<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    out: Vec<(String, Vec<f32>)>,
    failed: Option<String>,
    _b: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let dims = format!("{:?}", g.dims());
            match g.into_data().convert::<f32>().to_vec::<f32>() {
                Ok(v) => self.out.push((dims, v)),
                Err(e) => self.failed = Some(format!("a gradient {dims}: {e:?}")),
            }
        }
    }
}

type LossAndGrads = (f32, Vec<(String, Vec<f32>)>);

/// The loss and every gradient of one BYOL forward and backward.
fn loss_and_grads<B: AutodiffBackend>(
    model: &Byol<B, ResNet<B>>,
    v1: Tensor<B, 4>,
    v2: Tensor<B, 4>,
    forward: ForwardOptions,
) -> Result<LossAndGrads, TrainError>
where
    Byol<B, ResNet<B>>: AutodiffModule<B>,
{
    let out = model.forward_with(v1, v2, forward);
    let loss = byol_loss(out.p1, out.p2, out.z1, out.z2);
    let value: f32 = loss.clone().into_scalar().elem();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let mut visitor = Grads::<B> {
        grads: &grads,
        out: Vec::new(),
        failed: None,
        _b: PhantomData,
    };
    model.visit(&mut visitor);
    match visitor.failed {
        Some(e) => Err(disagree(format!("reading back {e}"))),
        None => Ok((value, visitor.out)),
    }
}

fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// ‖a − b‖ / max(‖a‖, floor).
fn relative(a: &[f32], b: &[f32], floor: f64) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / norm(a).max(floor).max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};

    #[test]
    fn flex_and_ndarray_compute_the_same_step() {
        // two CPU backends: our Flex kernels against ndarray's generic ones
        let report = step_parity::<Autodiff<Flex>, Autodiff<NdArray>>(
            &Default::default(),
            &Default::default(),
            &ParitySetup {
                batch: 8,
                ..ParitySetup::small()
            },
        )
        .expect("compared");
        assert!(report.parameters > 20, "{report:?}");
        assert!(report.within(1e-3), "{report:?}");
        assert!(report.loss_reference > 0.0 && report.loss_reference < 8.0);
    }

    #[test]
    fn a_different_step_is_caught() {
        // the same weights, other views on one side: a real difference
        // must show as a large gap, or the check could never fail
        let setup = ParitySetup {
            batch: 8,
            ..ParitySetup::small()
        };
        let device = Default::default();
        let a = pair::<Autodiff<Flex>>(&setup, &device, 1);
        let n = setup.batch;
        let up = |salt| {
            Tensor::<Autodiff<Flex>, 1>::from_floats(views(n * 28 * 28, salt).as_slice(), &device)
                .reshape([n, 1, 28, 28])
        };
        let (_, g1) = loss_and_grads(&a, up(1), up(2), setup.forward).expect("first");
        let (_, g2) = loss_and_grads(&a, up(3), up(4), setup.forward).expect("second");
        let floor = 1e-4 * g1.iter().map(|(_, g)| norm(g)).fold(0.0, f64::max);
        let worst = g1
            .iter()
            .zip(&g2)
            .map(|((_, x), (_, y))| relative(x, y, floor))
            .fold(0.0, f64::max);
        assert!(worst > 1e-2, "{worst}");
    }
}
