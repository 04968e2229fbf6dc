//! Several machines on loopback: two `pretrain` processes with `--nodes 2`
//! train what two peers in one process train, bit for bit; a node killed
//! with SIGKILL makes the other exit with an error naming it, and the run
//! resumes on both nodes from node 0's checkpoint to the same metrics;
//! nodes that would resume from different checkpoints are stopped; a
//! node that never joins is named after `train.node_timeout_s`.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use byol_train::checkpoint::{CHECKPOINTS, checkpoint_name};
use byol_train::nodes::{EXIT_NODE_LOST, EXIT_STOPPED};
use common::{default_config, metrics, sample};

/// A tiny run: 6 steps per epoch, 3 epochs, a checkpoint every 2 steps.
fn run_args(out: &Path, resume: bool) -> Vec<String> {
    let mut args: Vec<String> = vec!["pretrain".into(), "--no-progress".into()];
    if resume {
        args.extend(["--resume".into(), out.display().to_string()]);
        return args;
    }
    args.extend(["--out".into(), out.display().to_string()]);
    args.extend(["--data".into(), sample().display().to_string()]);
    args.extend(["--config".into(), default_config().display().to_string()]);
    for set in common::TINY_RUN
        .into_iter()
        .chain(["train.node_timeout_s=20"])
    {
        args.extend(["--set".into(), set.into()]);
    }
    args
}

fn xtask(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        // burn-collective prints its connection attempts on stdout
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A base port P with P to P + 3 free on loopback (the orchestrator, the
/// watch channel, the two nodes' data services).
fn free_ports() -> u16 {
    for _ in 0..50 {
        let Ok(probe) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = probe.local_addr() else {
            continue;
        };
        drop(probe);
        let base = addr.port();
        if base < 60000 && (0..4).all(|i| TcpListener::bind(("0.0.0.0", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no four free ports in a row on loopback");
}

/// Node `rank` of two, with the coordinator on `port`.
fn node(args: &[String], rank: usize, port: u16) -> Child {
    let mut args = args.to_vec();
    args.extend([
        "--nodes".into(),
        "2".into(),
        "--node-rank".into(),
        rank.to_string(),
        "--coordinator".into(),
        format!("127.0.0.1:{port}"),
    ]);
    xtask(&args).spawn().expect("start a node")
}

/// Waits for `child` at most `limit`; kills it and fails when it hangs.
fn finish(mut child: Child, limit: Duration, what: &str) -> (ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut stderr).expect("stderr");
            }
            return (status, stderr);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: still running after {limit:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn succeeds(child: Child, what: &str) {
    let (status, stderr) = finish(child, Duration::from_secs(600), what);
    assert!(status.success(), "{what}: {status}\n{stderr}");
}

/// Node 1, then node 0, of a two-node run of `args`: both must succeed.
fn two_nodes(args: &[String], what: &str) {
    let port = free_ports();
    let one = node(args, 1, port);
    succeeds(node(args, 0, port), &format!("{what}: node 0"));
    succeeds(one, &format!("{what}: node 1"));
}

/// Both nodes of a two-node run of `args`, node 1 in `out_1` rather than
/// `out_0`: both must fail, each naming what `expected` says.
fn two_nodes_fail(out_0: &Path, out_1: &Path, expected: [&str; 2]) {
    let port = free_ports();
    let one = node(&run_args(out_1, true), 1, port);
    let zero = node(&run_args(out_0, true), 0, port);
    for (rank, child, expected) in [(0, zero, expected[0]), (1, one, expected[1])] {
        let (status, stderr) = finish(child, Duration::from_secs(60), "a refused node");
        assert!(!status.success(), "node {rank}: {stderr}");
        assert!(stderr.contains(expected), "node {rank}: {stderr}");
    }
}

/// A copy of the run folder `from` at `to`.
fn copy_run(from: &Path, to: &Path) {
    let copied = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(copied.success());
}

/// Waits until node 0 has written the checkpoint of `step`.
fn wait_for_checkpoint(nodes: &mut [Child], dir: &Path, step: usize) {
    let mark = dir.join(CHECKPOINTS).join(checkpoint_name(step));
    let start = Instant::now();
    while !mark.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no checkpoint at step {step} after 10 minutes"
        );
        for n in nodes.iter_mut() {
            if let Some(status) = n.try_wait().expect("wait") {
                panic!("a node ended ({status}) before step {step} was saved");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills node `victim` of a two-node run once step 2 is saved; the other
/// must exit with [`EXIT_NODE_LOST`] naming it, well within its timeout.
fn kill_one(out: &Path, victim: usize) {
    let port = free_ports();
    let args = run_args(out, false);
    let mut nodes = [node(&args, 0, port), node(&args, 1, port)];
    wait_for_checkpoint(&mut nodes, out, 2);
    let [zero, one] = nodes;
    let (mut victim_node, survivor) = if victim == 0 {
        (zero, one)
    } else {
        (one, zero)
    };
    let killed = Instant::now();
    victim_node.kill().expect("SIGKILL");
    let _ = victim_node.wait();
    let (status, stderr) = finish(survivor, Duration::from_secs(30), "the surviving node");
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(status.code(), Some(EXIT_NODE_LOST), "{stderr}");
    assert!(stderr.contains(&format!("node {victim} of 2")), "{stderr}");
    if victim == 1 {
        // node 0's newest checkpoint is whole: the resume below loads it
        assert!(
            out.join(CHECKPOINTS)
                .join(checkpoint_name(2))
                .join("model.mpk")
                .exists()
        );
    }
}

#[test]
fn two_nodes_train_what_two_peers_of_one_process_train_and_survive_a_killed_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    // the reference: two peers in one process
    let peers = dir.path().join("peers");
    let mut args = run_args(&peers, false);
    args.extend(["--devices".into(), "cpu,cpu".into()]);
    succeeds(xtask(&args).spawn().expect("start"), "two peers");
    let reference = metrics(&peers);

    // two processes on loopback, one peer each: the same metrics
    let nodes = dir.path().join("nodes");
    two_nodes(&run_args(&nodes, false), "two nodes");
    assert_eq!(metrics(&nodes), reference, "two nodes against two peers");

    // node 1 killed: node 0 names it; both resume from node 0's checkpoint
    // and end where the uninterrupted run ends
    let killed = dir.path().join("killed");
    kill_one(&killed, 1);
    two_nodes(&run_args(&killed, true), "resumed");
    assert_eq!(metrics(&killed), reference, "killed and resumed");

    // node 0 killed: node 1 names it
    kill_one(&dir.path().join("killed-0"), 0);

    // Ctrl-C on node 1: node 1 asks node 0 to stop; node 0 checkpoints
    // after its step and both exit as a stopped run does
    let stopped = dir.path().join("stopped");
    let port = free_ports();
    let args = run_args(&stopped, false);
    let mut nodes = [node(&args, 0, port), node(&args, 1, port)];
    wait_for_checkpoint(&mut nodes, &stopped, 2);
    let sent = Command::new("kill")
        .args(["-INT", &nodes[1].id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let [zero, one] = nodes;
    for (rank, child) in [(0, zero), (1, one)] {
        let (status, stderr) = finish(child, Duration::from_secs(60), "a stopped node");
        assert_eq!(status.code(), Some(EXIT_STOPPED), "node {rank}: {stderr}");
        if rank == 0 {
            assert!(
                stderr.contains("--resume") && stderr.contains("on every one of the 2 nodes"),
                "{stderr}"
            );
        }
    }
    assert!(!stopped.join("summary.json").exists());
    let saved: Vec<usize> = byol_train::checkpoint::list_checkpoints(&stopped)
        .into_iter()
        .map(|(step, _)| step)
        .collect();
    assert!(
        saved.first().is_some_and(|&s| s > 2),
        "checkpoints {saved:?}"
    );

    // node 1's copy of the folder lacks the newest checkpoint: the nodes
    // would resume different weights, and the join refuses
    let (newest, older) = (saved[0], saved[1]);
    let behind = dir.path().join("stopped-behind");
    copy_run(&stopped, &behind);
    let newest_dir = |out: &Path| out.join(CHECKPOINTS).join(checkpoint_name(newest));
    std::fs::remove_dir_all(newest_dir(&behind)).expect("remove a checkpoint");
    let differs = format!("node 1 resumes from the checkpoint of step {older}");
    two_nodes_fail(&stopped, &behind, [&differs, &differs]);
    // its newest checkpoint reads at the join but does not load: node 1
    // would fall back to the older one, and stops instead
    let broken = dir.path().join("stopped-broken");
    copy_run(&stopped, &broken);
    std::fs::write(newest_dir(&broken).join("model.mpk"), b"not a model").expect("break");
    two_nodes_fail(
        &stopped,
        &broken,
        [
            "node 1 of 2 failed",
            &format!("but every node agreed at the join on the checkpoint of step {newest}"),
        ],
    );
    // the folder itself still resumes, to the uninterrupted run's end
    two_nodes(&run_args(&stopped, true), "stopped, resumed");
    assert_eq!(metrics(&stopped), reference, "stopped and resumed");

    // BatchNorm over the whole global batch, across the two processes
    let sync = ["train.sync_batchnorm=true", "train.epochs=1"];
    let with_sync = |mut args: Vec<String>| {
        for set in sync {
            args.extend(["--set".into(), set.into()]);
        }
        args
    };
    let peers = dir.path().join("peers-sync");
    let mut args = with_sync(run_args(&peers, false));
    args.extend(["--devices".into(), "cpu,cpu".into()]);
    succeeds(xtask(&args).spawn().expect("start"), "two synced peers");
    let nodes = dir.path().join("nodes-sync");
    two_nodes(&with_sync(run_args(&nodes, false)), "synced");
    assert_eq!(
        metrics(&nodes),
        metrics(&peers),
        "synced: two nodes against two peers"
    );
}

#[test]
fn a_node_that_never_joins_is_named_after_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("alone");
    let mut args = run_args(&out, false);
    args.extend(["--set".into(), "train.node_timeout_s=2".into()]);
    let port = free_ports();
    for (rank, expected) in [
        (0, "node(s) 1 of 2 did not join within 2 s"),
        (1, "node 0 of 2 (the coordinator"),
    ] {
        let (status, stderr) = finish(
            node(&args, rank, port),
            Duration::from_secs(30),
            "a lone node",
        );
        assert!(!status.success(), "node {rank}: {stderr}");
        assert!(stderr.contains(expected), "node {rank}: {stderr}");
    }
    assert!(
        !out.join("config.toml").exists(),
        "nothing written before the join"
    );
}
