//! A pretraining process killed with SIGKILL, or stopped with Ctrl-C
//! (SIGINT), mid-epoch and resumed with `--resume` ends with the same
//! metrics as an uninterrupted run.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use byol_train::checkpoint::{CHECKPOINTS, checkpoint_name, list_checkpoints};
use common::{default_config, metrics, sample};

fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A tiny run: 6 steps per epoch, 3 epochs, a checkpoint every 2 steps.
fn pretrain_args(out: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec!["pretrain".into(), "--no-progress".into()];
    args.extend(["--out".into(), out.display().to_string()]);
    args.extend(["--data".into(), sample().display().to_string()]);
    args.extend(["--config".into(), default_config().display().to_string()]);
    for set in common::TINY_RUN {
        args.extend(["--set".into(), set.into()]);
    }
    args
}

/// Waits until the run in `dir` has written the checkpoint of `step`.
fn wait_for_checkpoint(child: &mut Child, dir: &Path, step: usize) {
    let mark = dir.join(CHECKPOINTS).join(checkpoint_name(step));
    let start = Instant::now();
    while !mark.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no checkpoint at step {step} after 10 minutes"
        );
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the run ended ({status}) before step {step} was saved");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` to its end; it must succeed.
fn succeeds(command: &mut Command) {
    let out = command.output().expect("xtask runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pretrain --resume dir`, which must succeed.
fn resume(dir: &Path) {
    succeeds(
        xtask()
            .args(["pretrain", "--no-progress", "--resume"])
            .arg(dir),
    );
}

#[test]
fn a_run_killed_or_interrupted_mid_epoch_and_resumed_matches_an_uninterrupted_run() {
    let root = tempfile::tempdir().expect("tempdir");
    let (full, killed) = (root.path().join("full"), root.path().join("killed"));

    succeeds(xtask().args(pretrain_args(&full)));

    // kill the second run once the checkpoint of step 8 (mid-epoch 2) exists
    let mut child = xtask()
        .args(pretrain_args(&killed))
        .spawn()
        .expect("xtask starts");
    wait_for_checkpoint(&mut child, &killed, 8);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(
        !killed.join("summary.json").exists(),
        "the run should have died before its end"
    );

    resume(&killed);
    assert_eq!(metrics(&full), metrics(&killed));
    let summary = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).expect("summary"))
            .expect("json")
    };
    let (a, b) = (summary(&full), summary(&killed));
    for key in ["knn_trained", "final_loss", "steps"] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert!(b["resumed_from"].as_u64().is_some_and(|s| s >= 8));

    // Ctrl-C mid-epoch: the run saves the step it is on and exits 130
    let interrupted = root.path().join("interrupted");
    let mut child = xtask()
        .args(pretrain_args(&interrupted))
        .spawn()
        .expect("xtask starts");
    wait_for_checkpoint(&mut child, &interrupted, 4);
    let sent = Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let out = child.wait_with_output().expect("reaped");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("--resume") && stderr.contains("checkpoint saved"),
        "{stderr}"
    );
    assert!(!interrupted.join("summary.json").exists());
    // nothing trained is lost: the newest checkpoint is the last step logged
    let newest = list_checkpoints(&interrupted)
        .first()
        .map(|c| c.0 as u64)
        .expect("a checkpoint");
    let last_logged = metrics(&interrupted)
        .iter()
        .filter_map(|r| r["step"].as_u64())
        .max()
        .expect("a step record");
    assert_eq!(newest, last_logged);
    assert!(
        stderr.contains(&format!("stopped at step {newest} of 18")),
        "{stderr}"
    );

    resume(&interrupted);
    assert_eq!(metrics(&full), metrics(&interrupted));
}

#[test]
fn bad_input_exits_non_zero_with_the_key_or_file_named() {
    let root = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 4] = [
        (&["--set", "train.tau_base=1.5"], "train.tau_base"),
        (&["--set", "train.learning_rate=1"], "learning_rate"),
        (&["--data", "/nonexistent/images"], "/nonexistent/images"),
        (&["--config", "/nonexistent.toml"], "/nonexistent.toml"),
    ];
    let default_config = default_config();
    for (i, (extra, needle)) in cases.iter().enumerate() {
        let mut cmd = xtask();
        cmd.args(["pretrain", "--no-progress", "--out"])
            .arg(root.path().join(format!("r{i}")));
        if !extra.contains(&"--config") {
            cmd.arg("--config").arg(&default_config);
        }
        let out = cmd.args(*extra).output().expect("xtask runs");
        assert!(!out.status.success(), "{extra:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{extra:?} panicked: {err}");
    }
}
