//! What the binary's integration tests share: the shipped sample and
//! default config, a tiny run's settings, and the metrics a run logs
//! without their timings.

use std::path::{Path, PathBuf};

/// The shipped 4,000-image Fashion-MNIST sample.
pub fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist-sample")
}

/// configs/default.toml.
pub fn default_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/default.toml")
}

/// `--set`s of a tiny run: 6 steps per epoch, 3 epochs, a checkpoint
/// every 2 steps.
pub const TINY_RUN: [&str; 10] = [
    "data.train_limit=384",
    "data.test_limit=100",
    "train.batch_size=64",
    "train.epochs=3",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=20",
    "model.projector_hidden=64",
    "model.predictor_hidden=64",
    "model.projection_dim=32",
];

/// The records of `dir`'s metrics.jsonl without their timings.
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json line");
            if let Some(o) = v.as_object_mut() {
                for key in ["images_per_sec", "seconds", "data_wait_fraction"] {
                    o.remove(key);
                }
            }
            v
        })
        .collect()
}
