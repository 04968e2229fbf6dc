//! `train.precision = "bf16"` on the CPU (Flex): one step from the same
//! weights as f32 gives nearly the same loss and gradients, parameters and
//! optimizer state stay f32, and backends or encoders without bf16 are
//! refused instead of trained in f32.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use byol_model::{Byol, Encoder, ForwardOptions, Precision, ResNet};
use byol_train::config::RunIdentity;
use byol_train::{
    ModelConfig, OptimizerSettings, Optimizers, RunConfig, StepSettings, TrainError, byol_loss,
    byol_step,
};

type B = Autodiff<Flex>;

/// The default run's networks (small encoder, 512 → 128 heads), seeded.
fn pair(seed: u64) -> Byol<B, ResNet<B>> {
    let model = ModelConfig::default();
    let encoder = model.encoder_config(1);
    Byol::seeded(
        seed,
        &Default::default(),
        &model.heads_config(),
        true,
        |d| encoder.init(d),
    )
}

/// Two batches of 28×28 views, drawn under the generator's guard.
fn views(batch: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let device = Default::default();
    let _guard = byol_model::seeded::<B>(&device, 7);
    let shape = [batch, 1, 28, 28];
    let normal = Distribution::Normal(0.0, 1.0);
    (
        Tensor::random(shape, normal, &device),
        Tensor::random(shape, normal, &device),
    )
}

fn options(precision: Precision) -> ForwardOptions {
    ForwardOptions {
        precision,
        ..ForwardOptions::default()
    }
}

/// Every gradient of the online network, flattened, in visiting order.
struct Grads<'a> {
    grads: &'a GradientsParams,
    out: Vec<Vec<f32>>,
}

impl ModuleVisitor<B> for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<Flex, D>(param.id) {
            assert_eq!(g.dtype(), DType::F32, "gradients reach parameters as f32");
            self.out.push(g.into_data().to_vec().expect("f32 gradient"));
        }
    }
}

/// The loss and the online gradients of one forward and backward.
fn loss_and_grads(model: &Byol<B, ResNet<B>>, precision: Precision) -> (f32, Vec<Vec<f32>>) {
    let (v1, v2) = views(32);
    let out = model.forward_with(v1, v2, options(precision));
    for t in [&out.p1, &out.z1, &out.y1] {
        assert_eq!(t.dtype(), DType::F32, "outputs are f32");
    }
    let loss = byol_loss(out.p1, out.p2, out.z1, out.z2);
    let value: f32 = loss.clone().into_scalar().elem();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let mut visitor = Grads {
        grads: &grads,
        out: Vec::new(),
    };
    model.online.visit(&mut visitor);
    (value, visitor.out)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

#[test]
fn a_bf16_step_gives_the_f32_loss_within_2e_2_and_close_gradients() {
    let model = pair(11);
    let (loss32, grads32) = loss_and_grads(&model, Precision::F32);
    let (loss16, grads16) = loss_and_grads(&model, Precision::Bf16);
    assert!(loss16.is_finite(), "bf16 loss {loss16}");
    assert!(
        (loss16 - loss32).abs() < 2e-2,
        "bf16 loss {loss16} vs f32 {loss32}"
    );
    assert_ne!(loss16, loss32, "the bf16 forward should round something");
    assert_eq!(grads16.len(), grads32.len());
    assert!(grads32.len() > 20, "{} gradients", grads32.len());
    let norm = |g: &[f32]| dot(g, g).sqrt();
    let (mut both, mut n16, mut n32) = (0.0, 0.0, 0.0);
    for (i, (g16, g32)) in grads16.iter().zip(&grads32).enumerate() {
        assert!(g16.iter().all(|v| v.is_finite()), "gradient {i} not finite");
        if norm(g32) < 1e-5 {
            // a bias followed by BatchNorm (the heads' hidden layers, and
            // the projector's output, which feeds the predictor's): zero
            // in exact arithmetic, rounding noise in both precisions
            assert!(
                norm(g16) < 1e-3,
                "gradient {i}: {} where f32 has ~0",
                norm(g16)
            );
            continue;
        }
        // bf16 rounds activations, weights and gradients at every product
        // (2⁻⁹ relative each): measured cosines 0.95–0.98 in the encoder,
        // ≥ 0.98 in the heads
        let cos = dot(g16, g32) / (norm(g16) * norm(g32));
        assert!(cos > 0.93, "gradient {i}: cosine {cos} with f32");
        let ratio = norm(g16) / norm(g32);
        assert!(
            (0.9..1.1).contains(&ratio),
            "gradient {i}: norm ratio {ratio}"
        );
        both += dot(g16, g32);
        n16 += dot(g16, g16);
        n32 += dot(g32, g32);
    }
    let cos = both / (n16 * n32).sqrt();
    assert!(cos > 0.97, "all gradients: cosine {cos} with f32");
}

#[test]
fn a_bf16_training_step_keeps_parameters_and_target_in_f32() {
    let model = pair(12);
    let mut optimizers = Optimizers::new(&OptimizerSettings::adam(1e-6));
    let settings = StepSettings {
        forward: options(Precision::Bf16),
        ..StepSettings::simple(1e-3, 0.99)
    };
    let (v1, v2) = views(16);
    let conv1 = |m: &Byol<B, ResNet<B>>| -> Vec<f32> {
        let w = m.online.encoder.conv1.weight.val();
        w.into_data().to_vec().expect("f32")
    };
    let before = conv1(&model);
    let (model, out) = byol_step(model, &mut optimizers, v1, v2, &settings);
    let loss: f32 = out.loss.into_scalar().elem();
    assert!(loss.is_finite());
    struct Dtypes(Vec<DType>);
    impl ModuleVisitor<B> for Dtypes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().dtype());
        }
    }
    let mut dtypes = Dtypes(Vec::new());
    model.visit(&mut dtypes);
    assert!(dtypes.0.iter().all(|d| *d == DType::F32), "{:?}", dtypes.0);
    assert_ne!(before, conv1(&model), "the step should move the weights");
}

#[test]
fn the_precision_key_parses_and_is_part_of_a_runs_identity() {
    let bf16 = RunConfig::load(None, &["train.precision=bf16".into()]).expect("bf16 is valid");
    assert_eq!(bf16.train.precision, Precision::Bf16);
    assert_eq!(RunConfig::default().train.precision, Precision::F32);
    let e = RunConfig::load(None, &["train.precision=f16".into()])
        .expect_err("f16 is not offered")
        .to_string();
    assert!(
        e.contains("train.precision=f16") && e.contains("`f32`") && e.contains("`bf16`"),
        "{e}"
    );
    let diff = RunIdentity::of(&RunConfig::default()).differences(&RunIdentity::of(&bf16));
    assert_eq!(
        diff,
        vec!["train.precision: run has \"f32\", now \"bf16\"".to_string()]
    );
}

#[test]
fn bf16_is_refused_on_a_backend_without_it_and_allowed_on_flex() {
    let mut config = RunConfig::default();
    config.train.precision = Precision::Bf16;
    config
        .train
        .check_precision::<B>(&Default::default())
        .expect("Flex computes bf16");
    let e = config
        .train
        .check_precision::<Autodiff<NdArray>>(&Default::default())
        .expect_err("NdArray has no bf16");
    assert!(matches!(&e, TrainError::InvalidConfig { key, .. } if key == "train.precision"));
    assert!(e.to_string().contains("NdArray"), "{e}");
    config.train.precision = Precision::F32;
    config
        .train
        .check_precision::<Autodiff<NdArray>>(&Default::default())
        .expect("f32 everywhere");
}

/// An encoder of the caller's with no bf16 path of its own.
#[derive(Module, Debug)]
struct Flat<B: Backend> {
    linear: burn::nn::Linear<B>,
}

impl<B: Backend> Encoder<B> for Flat<B> {
    fn encode(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let [n, ..] = images.dims();
        self.linear.forward(images.reshape([n as i32, -1]))
    }

    fn output_dim(&self) -> usize {
        self.linear.weight.dims()[1]
    }
}

#[test]
fn an_encoder_without_a_bf16_path_is_refused_naming_the_key() {
    let encoder = Flat::<B> {
        linear: burn::nn::LinearConfig::new(4, 2).init(&Default::default()),
    };
    let mut config = RunConfig::default();
    config
        .train
        .check_encoder_precision(&encoder)
        .expect("f32 is every encoder's");
    config.train.precision = Precision::Bf16;
    let e = config
        .train
        .check_encoder_precision(&encoder)
        .expect_err("no bf16 path")
        .to_string();
    assert!(e.contains("train.precision") && e.contains("Flat"), "{e}");
}

/// wgpu compiles WGSL, which has no bf16 type: on lavapipe (where
/// installed) burn reports no bf16, so the run is refused.
#[test]
fn bf16_is_refused_on_wgpu_where_lavapipe_runs() {
    let lavapipe = std::fs::read_dir("/usr/share/vulkan/icd.d").is_ok_and(|dir| {
        dir.filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
    });
    if !lavapipe {
        eprintln!("skipped: no lavapipe (apt-get install mesa-vulkan-drivers libvulkan1)");
        return;
    }
    let device = burn::backend::wgpu::WgpuDevice::Cpu;
    let mut config = RunConfig::default();
    config.train.precision = Precision::Bf16;
    let e = config
        .train
        .check_precision::<Autodiff<burn::backend::Wgpu>>(&device)
        .expect_err("WGSL has no bf16");
    assert!(e.to_string().contains("train.precision"), "{e}");
}
