//! A large ImageNet-like folder, written at test time by byol-fixtures
//! (nothing committed, nothing downloaded): 3,000 training JPEGs of about
//! 500×375 in varied sizes in 10 class folders, 30 validation JPEGs, some
//! progressive, some CMYK, some greyscale, one with an EXIF orientation,
//! one truncated. A ResNet-18 run at 224 px for a few steps on it reports
//! the kNN monitor and the online linear classifier, applies
//! `data.on_corrupt` to the truncated file, and stays within its memory
//! plan.
//!
//! The files cycle through a few distinct photos per class
//! (`PhotoFolder::distinct`) so that writing them in the test profile
//! takes seconds; listing, the pre-scan and the run see 3,030 files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::backend::{Autodiff, Flex};
use byol_data::{Dataset, FolderDataset, OnCorrupt, OpenOptions, Split};
use byol_fixtures::{PhotoFolder, Written, photo_folder};
use byol_train::budget::{DataFacts, MemoryPlan, MonitorImages};
use byol_train::{PretrainOptions, RunConfig, TrainError};

type B = Autodiff<Flex>;

const SPEC: PhotoFolder = PhotoFolder {
    classes: 10,
    train_per_class: 300,
    val_per_class: 3,
    distinct: Some(4),
    seed: 26,
};

/// The folder, written once for every test of this file.
fn folder() -> &'static (tempfile::TempDir, Written) {
    static FOLDER: OnceLock<(tempfile::TempDir, Written)> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = photo_folder(dir.path(), &SPEC).expect("the folder is written");
        (dir, written)
    })
}

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/imagenet-resnet50.toml")
}

/// The ImageNet recipe's data and views (224 px) on a ResNet-18 with
/// small heads, batch 8, `train.max_steps = 2`, a 20-image kNN bank.
fn config(root: &Path, on_corrupt: &str) -> RunConfig {
    let overrides: Vec<String> = vec![
        format!("data.path={:?}", root.display().to_string()),
        format!("data.on_corrupt={on_corrupt:?}"),
        "model.encoder=\"resnet18\"".into(),
        "model.projector_hidden=256".into(),
        "model.projection_dim=64".into(),
        "model.predictor_hidden=256".into(),
        "train.batch_size=8".into(),
        "train.epochs=1".into(),
        "train.warmup_epochs=0".into(),
        "train.max_steps=2".into(),
        "train.log_every=1".into(),
        "train.checkpoint_every=0".into(),
        "eval.batch_size=10".into(),
        "eval.every_epochs=1".into(),
        "eval.knn.k=5".into(),
        "eval.knn.bank_size=20".into(),
        "eval.online_linear=true".into(),
    ];
    RunConfig::load(Some(&recipe()), &overrides).expect("the test config is valid")
}

/// This process's peak resident memory (VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn a_resnet18_run_at_224_px_on_the_folder_reports_knn_and_online_linear() {
    let (dir, written) = folder();
    assert_eq!(written.files, 3_030);
    let config = config(dir.path(), "skip");
    let out = tempfile::tempdir().expect("tempdir");
    let summary = byol_train::pretrain::<B>(
        &config,
        out.path(),
        &Default::default(),
        PretrainOptions::default(),
    )
    .expect("the run finishes");
    assert_eq!(summary.steps, 2);
    assert_eq!(
        summary.train_images, 2_999,
        "the truncated file is left out"
    );
    assert_eq!(summary.skipped_images, 1, "and counted");
    assert!(summary.final_loss.is_finite());
    let knn = summary.knn_trained.expect("a kNN figure after training");
    assert!(summary.knn_random_init.is_some(), "and before");
    assert!(
        summary.knn_raw_pixels.is_none(),
        "224 px images: no raw-pixel baseline"
    );
    let (top1, top5) = (
        summary.online_linear_top1.expect("an online linear top-1"),
        summary.online_linear_top5.expect("and top-5"),
    );
    assert!(
        (0.0..=1.0).contains(&top1) && top1 <= top5 && top5 <= 1.0,
        "{top1} {top5}"
    );
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).expect("metrics");
    assert!(
        metrics.contains("\"online_linear\""),
        "an online linear record"
    );
    // memory: what the plan counts for this data, plus the process itself
    let facts = DataFacts {
        train_images: Some(summary.train_images),
        channels: Some(3),
        monitor: MonitorImages::Counted {
            bank: 20,
            queries: 30,
        },
    };
    let plan = MemoryPlan::new(&config, &facts);
    let planned = plan.device_bytes() + plan.host_bytes();
    let peak = peak_rss().unwrap_or(0);
    eprintln!(
        "large folder: peak RSS {} MiB, plan {} MiB, kNN {knn:?}, online linear top-1 {top1:.3} top-5 {top5:.3}",
        peak >> 20,
        planned >> 20
    );
    assert!(
        peak < planned + (1 << 30),
        "peak RSS {} MiB over the plan's {} MiB + 1 GiB",
        peak >> 20,
        planned >> 20
    );
}

#[test]
fn the_truncated_file_fails_the_run_by_name_under_the_default_policy() {
    let (dir, written) = folder();
    let config = config(dir.path(), "fail");
    let out = tempfile::tempdir().expect("tempdir");
    let err = byol_train::pretrain::<B>(
        &config,
        out.path(),
        &Default::default(),
        PretrainOptions::default(),
    )
    .expect_err("the truncated file is refused");
    assert!(matches!(err, TrainError::Data(_)), "{err:?}");
    let msg = err.to_string();
    let name = written
        .truncated
        .file_name()
        .expect("a file")
        .to_string_lossy();
    assert!(
        msg.contains(&*name) && msg.contains("truncated JPEG"),
        "{msg}"
    );
    assert!(
        !out.path().join("metrics.jsonl").exists(),
        "refused before any work"
    );
}

#[test]
fn cmyk_grey_progressive_and_rotated_files_become_three_channel_224_views() {
    let (dir, written) = folder();
    let skip = OpenOptions {
        on_corrupt: OnCorrupt::Skip,
        ..OpenOptions::default()
    };
    let ds = FolderDataset::open(dir.path(), Split::Train, &skip).expect("opens");
    assert_eq!(ds.skipped().len(), 1, "{:?}", ds.skipped());
    assert_eq!(ds.skipped()[0].path, dir.path().join(&written.truncated));
    let train = Path::new("train");
    let odd: Vec<&PathBuf> = [&written.cmyk[0], &written.gray[0], &written.progressive[0]]
        .into_iter()
        .chain([&written.exif_rotated])
        .collect();
    let augment = config(dir.path(), "skip").augment;
    for rel in odd {
        let name = rel
            .strip_prefix(train)
            .expect("a training file")
            .to_string_lossy();
        let index = (0..ds.len()).find(|&i| ds.name(i) == name).expect("listed");
        let image = ds.image(index).expect("decodes");
        assert_eq!(image.channels, 3, "{name}");
        assert!(
            image.width >= 281 && image.height >= 281,
            "{name}: full size"
        );
        let (v1, v2) = byol_augment::two_views(&[image.as_ref()], &augment, 7);
        assert_eq!(
            (v1.len(), v2.len()),
            (3 * 224 * 224, 3 * 224 * 224),
            "{name}"
        );
        assert!(v1.iter().chain(&v2).all(|v| v.is_finite()), "{name}");
    }
}
