//! Logs and progress bars written to a stderr that is not a terminal (a
//! file, a pipe, CI) carry no ANSI escape codes.

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn a_run_whose_stderr_is_a_pipe_logs_plain_text_without_progress_bars() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    // without NO_COLOR, which would turn the colours off on its own
    cmd.env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .arg("pretrain")
        .arg("--config")
        .arg(root.join("configs/default.toml"))
        .arg("--data")
        .arg(root.join("data/fashion-mnist-sample"))
        .arg("--out")
        .arg(out.path().join("run"));
    // a few steps, progress bars on: they must hide themselves
    for set in [
        "data.train_limit=128",
        "data.test_limit=64",
        "train.batch_size=32",
        "train.epochs=1",
        "train.log_every=1",
        "model.projector_hidden=32",
        "model.predictor_hidden=32",
        "model.projection_dim=16",
    ] {
        cmd.args(["--set", set]);
    }
    let run = cmd.output().expect("xtask runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("INFO"), "no log line in:\n{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in a piped log:\n{stderr:?}"
    );
}
