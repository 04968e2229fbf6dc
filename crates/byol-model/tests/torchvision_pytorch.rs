//! The exported encoder in PyTorch: torchvision loads it (missing only
//! `fc.*`) and computes the same features on the same input, within 1e-4
//! relative error. Runs `scripts/torchvision_check.py` with the first
//! Python that has torch, torchvision, numpy and safetensors: `$BYOL_PYTHON`,
//! `/work/pyenv/bin/python`, then `python3`. Without one the test prints a
//! notice and passes (CI has no torch).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use byol_model::torchvision::{
    NamedTensor, TensorValues, apply_torchvision_state, save_torchvision, torchvision_state_dict,
};
use byol_model::{ResNet, ResNetConfig, Stem};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

type B = Flex;

fn python_with_torch() -> Option<String> {
    let candidates = std::env::var("BYOL_PYTHON")
        .ok()
        .into_iter()
        .chain(["/work/pyenv/bin/python".to_string(), "python3".to_string()]);
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import torch, torchvision, numpy, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    None
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/torchvision_check.py")
}

/// Every float tensor of `net` replaced by pseudo-random values (running
/// variances in [0.5, 1]), so that no layer is the identity at init.
fn randomized(net: ResNet<B>, seed: u64) -> ResNet<B> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let state: BTreeMap<String, NamedTensor> = torchvision_state_dict(&net)
        .expect("batch-norm encoder")
        .into_iter()
        .map(|mut t| {
            let var = t.name.ends_with("running_var");
            let conv = t.shape.len() == 4;
            if let TensorValues::F32(v) = &mut t.values {
                // conv weights scaled to keep activations of deep nets finite
                let scale = if conv { 0.2 } else { 1.0 };
                for x in v.iter_mut() {
                    let r = next();
                    *x = if var { 0.5 + r.abs() } else { scale * r };
                }
            }
            (t.name.clone(), t)
        })
        .collect();
    apply_torchvision_state(net, &state, "random", &Default::default()).expect("own layout")
}

fn write_tensor(path: &Path, name: &str, shape: Vec<usize>, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, shape, &bytes).expect("consistent view");
    safetensors::serialize_to_file([(name, view)], None::<HashMap<String, String>>, path)
        .expect("written");
}

fn check(python: &str, name: &str, cfg: ResNetConfig, size: usize) {
    let device = Default::default();
    let net = randomized(cfg.init::<B>(&device), 11);
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = dir.path().join("encoder.safetensors");
    save_torchvision(&net, &weights).expect("exported");
    let c = cfg.in_channels;
    let x = Tensor::<B, 4>::random([3, c, size, size], Distribution::Normal(0.0, 1.0), &device);
    let input: Vec<f32> = x.clone().into_data().to_vec().expect("f32");
    let features = net.forward(x);
    let dims = features.dims().to_vec();
    let features: Vec<f32> = features.into_data().to_vec().expect("f32");
    assert!(features.iter().all(|v| v.is_finite()), "{name}: non-finite");
    let (input_path, features_path) = (
        dir.path().join("input.safetensors"),
        dir.path().join("features.safetensors"),
    );
    write_tensor(&input_path, "input", vec![3, c, size, size], &input);
    write_tensor(&features_path, "features", dims, &features);
    let out = Command::new(python)
        .arg(script())
        .arg("--weights")
        .arg(&weights)
        .arg("--input")
        .arg(&input_path)
        .arg("--features")
        .arg(&features_path)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{name}: {stdout}");
    assert!(
        out.status.success(),
        "{name}: PyTorch disagrees:\n{stdout}\n{stderr}"
    );
}

#[test]
fn torchvision_loads_the_export_and_computes_the_same_features() {
    let Some(python) = python_with_torch() else {
        println!(
            "skipped: no Python with torch, torchvision, numpy and safetensors \
             (set BYOL_PYTHON to one to run this test)"
        );
        return;
    };
    check(
        &python,
        "resnet18 cifar stem",
        ResNetConfig::resnet18().with_stem(Stem::Cifar),
        32,
    );
    check(
        &python,
        "resnet18 imagenet stem",
        ResNetConfig::resnet18(),
        64,
    );
    check(
        &python,
        "resnet50 imagenet stem, 1 channel",
        ResNetConfig::resnet50().with_in_channels(1),
        64,
    );
    check(&python, "small", ResNetConfig::small(), 28);
}
