//! The GPU code path without a GPU: burn's `wgpu` backend on Mesa's
//! software Vulkan driver (lavapipe), against `flex`. wgpu runs burn's own
//! convolution, BatchNorm, fusion and autotune (the path CUDA takes), where
//! `flex` runs our kernels, so these tests are where the two meet.
//!
//! They need lavapipe (`apt-get install mesa-vulkan-drivers libvulkan1`,
//! as `.ci/run` does). Without it they say so and pass, unless
//! `BYOL_REQUIRE_WGPU=1` (set by `.ci/run`), which makes a missing driver a
//! failure. Kept few and small: the first kernels compile for seconds.

use std::path::Path;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_data::{Dataset, IdxDataset, Split};
use byol_eval::{EvalTransform, extract_features};
use byol_model::{Byol, ForwardOptions, HeadsConfig, ResNet, ResNetConfig};
use byol_train::checkpoint::{load_module, save_module};
use byol_train::{PretrainOptions, RunConfig, byol_loss};

type F = Autodiff<Flex>;
type W = Autodiff<Wgpu>;

/// lavapipe's device, or `None` (after saying why) when the driver is not
/// installed and `BYOL_REQUIRE_WGPU` is not set.
fn lavapipe() -> Option<WgpuDevice> {
    let icds = std::fs::read_dir("/usr/share/vulkan/icd.d")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
        })
        .unwrap_or(false);
    let required = std::env::var("BYOL_REQUIRE_WGPU").is_ok_and(|v| v == "1");
    if icds {
        return Some(WgpuDevice::Cpu);
    }
    assert!(
        !required,
        "BYOL_REQUIRE_WGPU=1 but no lavapipe ICD in /usr/share/vulkan/icd.d \
         (apt-get install mesa-vulkan-drivers libvulkan1)"
    );
    eprintln!("skipped: no lavapipe (apt-get install mesa-vulkan-drivers libvulkan1)");
    None
}

fn sample_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-sample")
}

/// The small encoder with 64 → 32 heads, BatchNorm everywhere.
fn heads() -> HeadsConfig {
    HeadsConfig::new(64, 32, 64)
}

/// A seeded pair on `B`.
fn pair<B: AutodiffBackend>(device: &B::Device, seed: u64) -> Byol<B, ResNet<B>>
where
    Byol<B, ResNet<B>>: AutodiffModule<B>,
{
    Byol::seeded(seed, device, &heads(), true, |d| {
        ResNetConfig::small().init(d)
    })
}

/// `model`'s weights carried to `B2` through a record file, as a
/// checkpoint carries them.
fn carried<M1, M2, B1: Backend, B2: Backend>(model: M1, skeleton: M2, device: &B2::Device) -> M2
where
    M1: Module<B1>,
    M2: Module<B2>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weights.mpk");
    save_module::<B1, _>(model, &path).expect("saved");
    load_module::<B2, _>(skeleton, &path, device).expect("loaded")
}

/// Deterministic views in [-1, 1], `[n, 1, 28, 28]`, on the host.
fn views(n: usize, salt: u64) -> Vec<f32> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ salt;
    (0..n * 28 * 28)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn upload<B: Backend>(v: &[f32], n: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::<B, 1>::from_floats(v, device).reshape([n, 1, 28, 28])
}

/// Every parameter's gradient, in the module's visiting order.
struct Grads<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    out: Vec<(String, Vec<f32>)>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let dims = format!("{:?}", g.dims());
            self.out
                .push((dims, g.into_data().convert::<f32>().to_vec().expect("f32")));
        }
    }
}

/// The loss and every gradient of one BYOL forward and backward.
fn loss_and_grads<B: AutodiffBackend>(
    model: &Byol<B, ResNet<B>>,
    v1: Tensor<B, 4>,
    v2: Tensor<B, 4>,
) -> (f32, Vec<(String, Vec<f32>)>)
where
    Byol<B, ResNet<B>>: AutodiffModule<B>,
{
    let out = model.forward_with(v1, v2, ForwardOptions::default());
    let loss = byol_loss(out.p1, out.p2, out.z1, out.z2);
    let value: f32 = loss.clone().into_scalar().elem();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let mut visitor = Grads::<B> {
        grads: &grads,
        out: Vec::new(),
        _b: std::marker::PhantomData,
    };
    model.visit(&mut visitor);
    (value, visitor.out)
}

fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// ‖a − b‖ / max(‖a‖, floor).
fn relative(a: &[f32], b: &[f32], floor: f64) -> f64 {
    let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&diff) / norm(a).max(floor)
}

#[test]
fn one_step_on_wgpu_has_the_loss_and_gradients_of_flex() {
    let Some(gpu) = lavapipe() else { return };
    let cpu = Default::default();
    let on_flex = pair::<F>(&cpu, 7);
    let on_wgpu = carried::<_, _, F, W>(on_flex.clone(), pair::<W>(&gpu, 99), &gpu);
    let n = 16;
    let (a, b) = (views(n, 1), views(n, 2));
    let (loss_f, grads_f) = loss_and_grads(&on_flex, upload(&a, n, &cpu), upload(&b, n, &cpu));
    let (loss_w, grads_w) = loss_and_grads(&on_wgpu, upload(&a, n, &gpu), upload(&b, n, &gpu));
    assert!(
        (f64::from(loss_f - loss_w) / f64::from(loss_f)).abs() < 1e-3,
        "loss: flex {loss_f}, wgpu {loss_w}"
    );
    assert_eq!(
        grads_f.len(),
        grads_w.len(),
        "the same parameters have gradients"
    );
    assert!(grads_f.len() > 20, "only {} gradients", grads_f.len());
    // a bias followed by BatchNorm (the heads' first layers) has a zero
    // gradient in exact arithmetic, and rounding noise on both backends:
    // such a tensor is compared against the scale of the largest gradient
    let floor = 1e-4 * grads_f.iter().map(|(_, g)| norm(g)).fold(0.0, f64::max);
    for (i, ((dims_f, gf), (dims_w, gw))) in grads_f.iter().zip(&grads_w).enumerate() {
        assert_eq!(dims_f, dims_w, "parameter {i}");
        let r = relative(gf, gw, floor);
        assert!(
            r < 1e-3,
            "parameter {i} {dims_f}: gradients differ by {r:.2e} (relative; norms {:.3e} / {:.3e})",
            norm(gf),
            norm(gw)
        );
    }
}

#[test]
fn embeddings_on_wgpu_equal_those_on_flex() {
    let Some(gpu) = lavapipe() else { return };
    let cpu = Default::default();
    let encoder = pair::<F>(&cpu, 3).online.encoder.valid();
    let skeleton = pair::<W>(&gpu, 4).online.encoder.valid();
    let on_wgpu = carried::<_, _, Flex, Wgpu>(encoder.clone(), skeleton, &gpu);
    let test = IdxDataset::load_dir(sample_dir(), Split::Test).expect("the sample loads");
    let transform = EvalTransform {
        size: 28,
        resize: 0,
        mean: vec![0.286],
        std: vec![0.353],
    };
    let ds = &test as &dyn Dataset;
    let f = extract_features(&encoder, ds, 64, &transform, 32, &cpu, &|_| {}).expect("flex");
    let w = extract_features(&on_wgpu, ds, 64, &transform, 32, &gpu, &|_| {}).expect("wgpu");
    let (f, w): (Vec<f32>, Vec<f32>) = (
        f.into_data().to_vec().expect("f32"),
        w.into_data().to_vec().expect("f32"),
    );
    let scale = f.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = f
        .iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 1e-4 * scale.max(1.0),
        "largest difference {worst} (largest feature {scale})"
    );
}

fn small_run(overrides: &[&str]) -> RunConfig {
    let mut all: Vec<String> = vec![
        format!("data.path={:?}", sample_dir().display().to_string()),
        "data.train_limit=256".into(),
        "data.test_limit=100".into(),
        "train.batch_size=32".into(),
        "train.epochs=1".into(),
        "train.log_every=2".into(),
        "model.projector_hidden=64".into(),
        "model.predictor_hidden=64".into(),
        "model.projection_dim=32".into(),
        "augment.mean=[0.286]".into(),
        "augment.std=[0.353]".into(),
    ];
    all.extend(overrides.iter().map(|s| s.to_string()));
    RunConfig::load(None, &all).expect("valid test config")
}

#[test]
fn a_run_pretrains_on_wgpu_with_its_monitor_and_resumes_on_flex() {
    let Some(gpu) = lavapipe() else { return };
    let out = tempfile::tempdir().expect("tempdir");
    let first = small_run(&["train.max_steps=4"]);
    let summary = byol_train::pretrain::<W>(&first, out.path(), &gpu, PretrainOptions::default())
        .expect("a run on wgpu");
    assert_eq!(summary.steps, 4);
    assert!(summary.final_loss.is_finite(), "{summary:?}");
    let knn = summary.knn_trained.expect("the monitor ran on wgpu");
    assert!(knn.top1 > 0.2, "{summary:?}");
    assert!(summary.online_linear_top1.is_some(), "{summary:?}");
    // the checkpoint wgpu wrote continues on flex
    let longer = small_run(&["train.max_steps=6"]);
    let resumed = byol_train::pretrain::<F>(
        &longer,
        out.path(),
        &Default::default(),
        PretrainOptions {
            resume: true,
            ..Default::default()
        },
    )
    .expect("resumed on flex");
    assert_eq!((resumed.resumed_from, resumed.steps), (Some(4), 6));
    assert!(resumed.final_loss.is_finite(), "{resumed:?}");
}
