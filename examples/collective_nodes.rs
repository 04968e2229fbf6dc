//! burn-collective's multi-node path on loopback, on its own: one
//! orchestrator and N node processes (one peer each, Flex), each node
//! making a few all-reduces in a row, every one watched by a deadline.
//! It is the smallest thing a multi-node `pretrain` stands on.
//!
//! What it found (2026-12-01, 2 nodes on loopback): with burn-collective
//! 0.21.0 as released, the first all-reduce of a registration returns and
//! the second never does. The barrier that ends every cross-node
//! all-reduce (`SyncService::sync`, `src/global/node/sync.rs`) clears a
//! copy of its list of synced nodes instead of the list itself, so from the
//! second call on the list never equals the set of nodes again. The
//! workspace now builds a patched copy (`vendor/burn-collective`, see its
//! PATCHED.md); with it, 500 all-reduces on 2 nodes and 200 on 3 returned
//! correct sums. The default global strategy (ring) also refuses tensors
//! shorter than the node count, hence `Tree(2)` here.
//!
//!   cargo run --release -p byol-examples --example collective_nodes -- launch
//!   cargo run --release -p byol-examples --example collective_nodes -- launch --nodes 2 --calls 3 --deadline 30 --port 29500
//!
//! `launch` starts the other processes (`orchestrator --port P`, `node
//! --rank R --nodes N --port P --calls C`) from this same binary, prints
//! what each node got, and exits non-zero when a node fails or misses the
//! deadline (the processes are then killed: nothing is left running).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_collective::{
    AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective,
    register,
};
use burn_communication::Address;

/// The value of `--name` in `args`, or `default`.
fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let value = args
                .get(i + 1)
                .with_context(|| format!("{name} needs a value"))?;
            value
                .parse()
                .map_err(|_| anyhow!("{name} {value}: expected a number"))
        }
    }
}

fn address(port: u16) -> Result<Address> {
    format!("ws://127.0.0.1:{port}")
        .parse()
        .map_err(|e| anyhow!("address of port {port}: {e}"))
}

/// One node: register (a barrier over every node), `calls` all-reduces
/// (sum) of `[rank + 1; 4]`, each printed as it returns, then finish.
fn node(rank: usize, nodes: usize, port: u16, calls: usize) -> Result<()> {
    let device = Default::default();
    let data_port = port + 1 + rank as u16;
    let config = CollectiveConfig::default()
        .with_num_devices(1)
        .with_num_nodes(nodes as u32)
        .with_global_address(address(port)?)
        .with_node_address(address(data_port)?)
        .with_data_service_port(data_port)
        // the default global ring refuses tensors shorter than the node count
        .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2));
    let peer = PeerId::from(rank);
    register::<Flex>(peer, device, config).map_err(|e| anyhow!("register: {e:?}"))?;
    say("registered")?;
    let expected = (1..=nodes).sum::<usize>() as f32;
    for call in 1..=calls {
        let t = Tensor::<Flex, 1>::full([4], (rank + 1) as f32, &Default::default());
        let sum = all_reduce::<Flex>(peer, t.into_primitive().tensor(), ReduceOperation::Sum)
            .map_err(|e| anyhow!("all-reduce {call}: {e:?}"))?;
        let sum = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(sum));
        let values = sum
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow!("{e:?}"))?;
        if values.iter().any(|&v| v != expected) {
            bail!("all-reduce {call}: {values:?}, expected {expected} everywhere");
        }
        say(&format!("all-reduce {call} ok"))?;
    }
    finish_collective::<Flex>(peer).map_err(|e| anyhow!("finish: {e:?}"))?;
    say("finished")
}

/// A line of ours on stdout, marked for the launcher (burn-communication
/// installs its own INFO logger on stdout too).
fn say(what: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{what}")?;
    Ok(out.flush()?)
}

const MARK: &str = "@collective_nodes ";

fn orchestrator(port: u16) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

/// What a node's process said, line by line, and how it ended.
enum Event {
    Line(usize, String),
    Closed,
}

fn launch(nodes: usize, port: u16, calls: usize, deadline: Duration) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = Vec::new();
    let kill_all = |children: &mut Vec<Child>| {
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    };
    children.push(
        Command::new(&exe)
            .args(["orchestrator", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the orchestrator")?,
    );
    let (tx, rx) = mpsc::channel();
    for rank in 0..nodes {
        let mut child = Command::new(&exe)
            .args([
                "node",
                "--rank",
                &rank.to_string(),
                "--nodes",
                &nodes.to_string(),
            ])
            .args(["--port", &port.to_string(), "--calls", &calls.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting node {rank}"))?;
        let out = child.stdout.take().context("node stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(ours) = line.strip_prefix(MARK) {
                    let _ = tx.send(Event::Line(rank, ours.to_string()));
                }
            }
            let _ = tx.send(Event::Closed);
        });
        children.push(child);
    }
    drop(tx);
    let mut last: Vec<String> = vec!["started".into(); nodes];
    let mut open = nodes;
    let mut at = Instant::now();
    while open > 0 {
        let wait = deadline.saturating_sub(at.elapsed());
        match rx.recv_timeout(wait) {
            Ok(Event::Line(rank, line)) => {
                println!("node {rank}: {line}");
                last[rank] = line;
                at = Instant::now();
            }
            Ok(Event::Closed) => open -= 1,
            Err(_) => {
                kill_all(&mut children);
                let stuck: Vec<String> = last
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.as_str() != "finished")
                    .map(|(r, l)| format!("node {r} after \"{l}\""))
                    .collect();
                bail!(
                    "no node made progress for {} s: {} (all killed)",
                    deadline.as_secs(),
                    stuck.join(", ")
                );
            }
        }
    }
    let mut failed = Vec::new();
    for (rank, child) in children.iter_mut().enumerate().skip(1) {
        if !child.wait()?.success() {
            failed.push(rank - 1);
        }
    }
    kill_all(&mut children);
    if !failed.is_empty() {
        bail!("nodes {failed:?} exited with an error");
    }
    println!("{nodes} nodes, {calls} all-reduces each: all correct");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = arg(&args, "--port", 29500)?;
    match args.first().map(String::as_str) {
        Some("launch") => launch(
            arg(&args, "--nodes", 2)?,
            port,
            arg(&args, "--calls", 3)?,
            Duration::from_secs(arg(&args, "--deadline", 30)?),
        ),
        Some("orchestrator") => orchestrator(port),
        Some("node") => node(
            arg(&args, "--rank", 0)?,
            arg(&args, "--nodes", 2)?,
            port,
            arg(&args, "--calls", 3)?,
        ),
        _ => bail!(
            "usage: collective_nodes launch [--nodes N] [--calls C] [--deadline S] [--port P]"
        ),
    }
}
