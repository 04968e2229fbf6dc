//! End to end: a short pretraining run on real images from the shipped
//! Fashion-MNIST sample.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use byol_data::{IdxDataset, Split};
use byol_eval::{EvalTransform, extract_features};
use byol_train::RunConfig;
use byol_train::checkpoint::load_module;

type B = Autodiff<Flex>;

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-sample")
}

fn config(overrides: &[&str]) -> RunConfig {
    let mut all: Vec<String> = vec![
        format!("data.path={:?}", sample_dir().display().to_string()),
        "data.train_limit=384".into(),
        "data.test_limit=200".into(),
        "train.batch_size=64".into(),
        "train.epochs=3".into(),
        "train.log_every=1".into(),
        "train.tau_base=0.99".into(),
        "model.projector_hidden=128".into(),
        "model.predictor_hidden=128".into(),
        "model.projection_dim=32".into(),
        "augment.mean=[0.286]".into(),
        "augment.std=[0.353]".into(),
    ];
    all.extend(overrides.iter().map(|s| s.to_string()));
    RunConfig::load(None, &all).expect("test config should be valid")
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl should exist")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line should be JSON"))
        .collect()
}

#[test]
fn short_run_lowers_loss_and_writes_a_usable_encoder() {
    let out = tempfile::tempdir().expect("tempdir");
    let config = config(&[]);
    let summary = byol_train::pretrain::<B>(&config, out.path(), &Default::default(), false)
        .expect("run should finish");
    assert_eq!(summary.steps, 3 * (384 / 64));

    for file in [
        "config.toml",
        "metrics.jsonl",
        "encoder.mpk",
        "summary.json",
        "checkpoint/model.mpk",
        "checkpoint/optimizer.mpk",
        "checkpoint/state.json",
    ] {
        assert!(
            out.path().join(file).is_file(),
            "{file} should be in the run folder"
        );
    }
    // the resolved config reloads to the same values
    let resolved =
        RunConfig::load(Some(&out.path().join("config.toml")), &[]).expect("resolved config loads");
    assert_eq!(resolved, config);

    let recs = records(out.path());
    let epoch_losses: Vec<f64> = recs
        .iter()
        .filter(|r| r["kind"] == "epoch")
        .map(|r| r["loss"].as_f64().expect("loss is a number"))
        .collect();
    assert_eq!(epoch_losses.len(), 3);
    assert!(
        epoch_losses
            .iter()
            .all(|l| l.is_finite() && (0.0..=4.0).contains(l)),
        "{epoch_losses:?}"
    );
    assert!(
        epoch_losses[2] < epoch_losses[0],
        "loss should go down: {epoch_losses:?}"
    );
    let knn: Vec<&str> = recs
        .iter()
        .filter(|r| r["kind"] == "knn")
        .map(|r| r["model"].as_str().expect("model name"))
        .collect();
    assert_eq!(
        knn,
        ["raw_pixels", "random_init", "epoch", "epoch", "epoch"]
    );
    assert!(
        summary.knn_raw_pixels.top1 > 0.5,
        "raw pixels should classify the sample: {summary:?}"
    );

    // the saved encoder loads into a fresh network and gives finite features
    let device = Default::default();
    let fresh = config.model.encoder_config(1).init::<Flex>(&device);
    let encoder =
        load_module(fresh, &out.path().join("encoder.mpk"), &device).expect("encoder.mpk loads");
    let test = IdxDataset::load_dir(sample_dir(), Split::Test)
        .expect("sample loads")
        .take(64);
    let transform = EvalTransform {
        size: 28,
        mean: vec![0.286],
        std: vec![0.353],
    };
    let features =
        extract_features(&encoder, &test.images, &transform, 32, &device).expect("features");
    assert_eq!(features.dims(), [64, 128]);
    let values = features.into_data().to_vec::<f32>().expect("f32");
    assert!(values.iter().all(|v| v.is_finite()));
    let spread = values.iter().map(|v| v.abs()).sum::<f32>();
    assert!(spread > 0.0, "features should not be all zero");
}

#[test]
fn bad_values_are_rejected_before_any_work() {
    let out = tempfile::tempdir().expect("tempdir");
    let run = out.path().join("never");
    let mut config = config(&[]);
    config.train.tau_base = 1.5;
    let err =
        byol_train::pretrain::<B>(&config, &run, &Default::default(), false).expect_err("tau 1.5");
    assert!(err.to_string().contains("train.tau_base"), "{err}");
    assert!(
        !run.exists(),
        "nothing should be written for a rejected config"
    );
}

#[test]
fn missing_dataset_names_the_folder() {
    let out = tempfile::tempdir().expect("tempdir");
    let config = config(&["data.path=\"/nonexistent/fashion\""]);
    let err = byol_train::pretrain::<B>(&config, out.path(), &Default::default(), false)
        .expect_err("no data");
    assert!(err.to_string().contains("/nonexistent/fashion"), "{err}");
}
