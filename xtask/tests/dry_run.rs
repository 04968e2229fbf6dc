//! `cargo xtask pretrain --dry-run` prints the plan of a run and makes
//! nothing; a run that cannot fit is refused with an error naming the
//! keys, before any work, instead of being killed for lack of memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `xtask pretrain ARGS` run in `cwd`, so that a default run folder
/// (`runs/...`) would appear there.
fn pretrain(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .arg("pretrain")
        .arg("--no-progress")
        .args(args)
        .output()
        .expect("xtask runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn default_args() -> Vec<String> {
    let root = root();
    vec![
        "--config".into(),
        root.join("configs/default.toml").display().to_string(),
        "--data".into(),
        root.join("data/fashion-mnist-sample").display().to_string(),
    ]
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("readable")
        .map(|e| e.expect("entry").path())
        .collect()
}

#[test]
fn a_dry_run_prints_the_plan_and_makes_no_folder() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let mut args = default_args();
    args.push("--dry-run".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = pretrain(cwd.path(), &args);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "4,000 training images, 1 channel(s)",
        "62 per epoch",
        "device memory during a step",
        "activations kept for backward",
        "kNN monitor",
        "4,000 bank images, 1,000 queries",
        "loader queue",
        "host and device share",
        "verdict   fits",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert!(
        entries(cwd.path()).is_empty(),
        "a dry run made {:?}",
        entries(cwd.path())
    );
}

#[test]
fn an_absurd_image_size_is_refused_naming_augment_size_and_makes_no_folder() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let out = cwd.path().join("run");
    let mut args = default_args();
    args.extend(["--set".into(), "augment.size=100000".into()]);
    args.extend(["--out".into(), out.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // a real run is refused (exit 1, not killed by the kernel)...
    let run = pretrain(cwd.path(), &args);
    let stderr = text(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("augment.size = 100000"), "{stderr}");
    assert!(stderr.contains("absurd"), "{stderr}");
    assert!(!out.exists(), "the refused run made its folder");
    // ...and so is its dry run, after printing the plan
    let mut dry = args.clone();
    dry.push("--dry-run");
    let run = pretrain(cwd.path(), &dry);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("verdict   refused"), "{stdout}");
    assert!(stderr.contains("augment.size = 100000"), "{stderr}");
    assert!(entries(cwd.path()).is_empty());
}

#[test]
fn the_imagenet_recipe_is_planned_without_its_data() {
    // data/imagenet does not exist under this working directory
    let cwd = tempfile::tempdir().expect("temp dir");
    let config = root().join("configs/imagenet-resnet50.toml");
    let config = config.display().to_string();
    let run = pretrain(
        cwd.path(),
        &["--config", &config, "--device", "cuda", "--dry-run"],
    );
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "images not counted, 3 channel(s) assumed, 224×224",
        "data/imagenet: no such file or folder",
        "steps     unknown; 4,096 images a step",
        "resnet50 encoder",
        "memory unknown",
        "not refused",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert!(entries(cwd.path()).is_empty());
}
