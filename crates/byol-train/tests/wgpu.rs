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
use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_data::{Dataset, IdxDataset, Split};
use byol_eval::{EvalTransform, extract_features};
use byol_model::{Byol, HeadsConfig, ResNet, ResNetConfig};
use byol_train::checkpoint::{load_module, save_module};
use byol_train::parity::{ParitySetup, step_parity};
use byol_train::{PretrainOptions, RunConfig};

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

#[test]
fn one_step_on_wgpu_has_the_loss_and_gradients_of_flex() {
    let Some(gpu) = lavapipe() else { return };
    let report =
        step_parity::<F, W>(&Default::default(), &gpu, &ParitySetup::small()).expect("compared");
    assert!(
        report.parameters > 20,
        "only {} gradients",
        report.parameters
    );
    assert!(report.within(1e-3), "{report:?}");
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
