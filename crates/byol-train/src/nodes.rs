//! Several machines (`train.nodes`): one process per machine, each with
//! the peers of its `train.devices`, all in one burn-collective group.
//!
//! Node 0 hosts burn-collective's orchestrator (the rendezvous of the
//! nodes' registrations, WebSocket on the coordinator's PORT) and alone
//! writes the run folder. The gradients travel between the nodes' own data
//! services (PORT + 2 + rank), as burn-collective's global all-reduce
//! moves them; byol-rs adds no transport of tensors.
//!
//! burn-collective has no timeout anywhere: a node that never joins keeps
//! the others in their registration, and one that dies leaves them in an
//! all-reduce, for ever. So the nodes also keep a watch channel of their
//! own, plain TCP lines between node 0 (PORT + 1) and each other node:
//!
//! - the join: each node says `hello` with its rank, the node count, its
//!   peers, the checkpoint step it resumes from (`fresh` when it does not)
//!   and a hash of its config; node 0 answers `go` once every node has
//!   said it and all agree, or names the nodes missing after
//!   `train.node_timeout_s`;
//! - heartbeats every second both ways: a closed connection (a killed
//!   process) or `train.node_timeout_s` of silence names the lost node,
//!   and every node exits with [`EXIT_NODE_LOST`]; node 0's say `busy`
//!   instead of `hb` while it evaluates or checkpoints between steps, so
//!   that the other nodes' stall watches ([`crate::stall`]) wait for it;
//! - the end of a run: `done` when a node has left the group; node 0 waits
//!   for everyone's before it ends (its orchestrator must outlive their
//!   leaving); `stopped STEP` from node 0 when its run stopped early (a
//!   stop request, after its checkpoint): the other nodes, stuck in the
//!   next step's all-reduce, exit with [`EXIT_STOPPED`]; `abort WHY` when a
//!   node's run failed. A stop request on another node is sent to node 0
//!   as `stop`, so that node 0 checkpoints and the run stops as one.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burn_collective::{AllReduceStrategy, CollectiveConfig};
use burn_communication::Address;

use crate::config::{TrainConfig, invalid};
use crate::stall::Progress;
use crate::trainer::StopSignal;
use crate::{RunConfig, TrainError};

/// The exit status of a node whose run lost another node (it did not join,
/// its process died, it fell silent, or its run failed).
pub const EXIT_NODE_LOST: i32 = 71;

/// The exit status of a node whose run node 0 stopped early (a stop
/// request; node 0 has written the checkpoint): 128 + SIGINT, as the
/// stopped node 0 itself exits.
pub const EXIT_STOPPED: i32 = 130;

/// How long the peers of a run that ended early have to leave the group
/// before the process exits anyway ([`NodeLink::ended`]).
const LEAVE_GRACE: Duration = Duration::from_secs(5);

/// How long a node whose all-reduce failed waits for its watch channel to
/// name a lost node before it reports its own error.
const LOSS_NOTICE: Duration = Duration::from_secs(2);

/// How often the nodes tell each other they are alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// `HOST` and `PORT` of `train.coordinator` for a run of `nodes` machines.
///
/// # Errors
///
/// [`TrainError::InvalidConfig`] naming `train.coordinator` when it is not
/// `HOST:PORT` or when PORT leaves no room for every node's ports.
pub fn parse_coordinator(coordinator: &str, nodes: usize) -> Result<(String, u16), TrainError> {
    let top = 65535 - 1 - nodes.min(65534);
    let bad = |why: &str| {
        invalid(
            "train.coordinator",
            format!("{coordinator:?}"),
            &format!(
                "HOST:PORT of node 0 with train.nodes = {nodes} (e.g. \"10.0.0.1:29400\"), \
                 PORT from 1 to {top} (node r listens on PORT + 2 + r, at most 65535){why}"
            ),
        )
    };
    let Some((host, port)) = coordinator.rsplit_once(':') else {
        return Err(bad(""));
    };
    let host = host.trim();
    if host.is_empty() {
        return Err(bad(": the host is missing"));
    }
    match port.trim().parse::<u16>() {
        Ok(port) if port >= 1 && usize::from(port) <= top => Ok((host.to_string(), port)),
        _ => Err(bad("")),
    }
}

/// A stable hash of the text of a config (FNV-1a, 64 bits).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The hash every node of a run must share: its config with the node rank
/// left out.
///
/// # Errors
///
/// [`TrainError::InvalidConfig`] when the config cannot be written.
pub fn config_hash(config: &RunConfig) -> Result<u64, TrainError> {
    let mut shared = config.clone();
    shared.train.node_rank = 0;
    Ok(fnv(&shared.to_toml()?))
}

/// This process's place in a multi-node run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Machines of the run.
    pub nodes: usize,
    /// This machine's rank.
    pub rank: usize,
    /// Node 0's host, as the others reach it.
    pub host: String,
    /// The orchestrator's port; the watch channel's is the next.
    pub port: u16,
    /// `train.node_timeout_s`.
    pub timeout: Duration,
    /// Peers on each machine (`train.devices`).
    pub local_peers: usize,
    /// The checkpoint step this node resumes from, `None` for a fresh
    /// start: every node must say the same, or the nodes would train
    /// different weights with one averaged gradient.
    pub resume: Option<usize>,
    /// [`config_hash`].
    pub config_hash: u64,
}

impl NodeSpec {
    /// The spec of `config`'s run, `None` with one machine; `resume` is
    /// the step of the checkpoint the run is to resume from.
    ///
    /// # Errors
    ///
    /// [`TrainError::InvalidConfig`] for a bad `train.coordinator`.
    pub fn of(config: &RunConfig, resume: Option<usize>) -> Result<Option<Self>, TrainError> {
        let t: &TrainConfig = &config.train;
        if t.nodes <= 1 {
            return Ok(None);
        }
        let (host, port) = parse_coordinator(&t.coordinator, t.nodes)?;
        Ok(Some(Self {
            nodes: t.nodes,
            rank: t.node_rank,
            host,
            port,
            timeout: Duration::from_secs_f64(t.node_timeout_s),
            local_peers: t.peers(),
            resume,
            config_hash: config_hash(config)?,
        }))
    }

    fn watch_port(&self) -> u16 {
        self.port + 1
    }

    fn data_port(&self) -> u16 {
        // parse_coordinator keeps this within 65535
        self.port + 2 + self.rank as u16
    }

    fn hello(&self) -> String {
        format!(
            "hello {} {} {} {} {:016x}",
            self.rank,
            self.nodes,
            self.local_peers,
            resume_word(self.resume),
            self.config_hash
        )
    }

    /// What is wrong with another node's `hello` line, if anything; its
    /// rank when it fits.
    fn check_hello(&self, line: &str) -> Result<usize, String> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let ["hello", rank, nodes, peers, resume, hash] = parts[..] else {
            return Err(format!("not a byol-rs node: {line:?}"));
        };
        let rank: usize = rank
            .parse()
            .map_err(|_| format!("a bad rank in {line:?}"))?;
        let who = format!("node {rank}");
        if rank == 0 || rank >= self.nodes {
            return Err(format!(
                "{who}: train.node_rank must be 1 to {} beside node 0",
                self.nodes - 1
            ));
        }
        if nodes != self.nodes.to_string() {
            return Err(format!(
                "{who} has train.nodes = {nodes}, node 0 has {}",
                self.nodes
            ));
        }
        if peers != self.local_peers.to_string() {
            return Err(format!(
                "{who} has {peers} peers (train.devices), node 0 has {}; every node needs \
                 as many",
                self.local_peers
            ));
        }
        let ours = resume_word(self.resume);
        if resume != ours {
            let says = |word: &str| match word {
                "fresh" => "starts afresh".to_string(),
                step => format!("resumes from the checkpoint of step {step}"),
            };
            let hint = if resume == "fresh" || ours == "fresh" {
                "pass --resume to every node or to none"
            } else {
                "every node must see the same checkpoints in its --out folder (one \
                 shared folder, or copies of node 0's)"
            };
            return Err(format!(
                "{who} {} and node 0 {}; {hint}",
                says(resume),
                says(&ours)
            ));
        }
        if hash != format!("{:016x}", self.config_hash) {
            return Err(format!(
                "{who}'s config differs from node 0's (compare their config files, --set \
                 flags and --data: all but train.node_rank must agree)"
            ));
        }
        Ok(rank)
    }
}

/// What the watch threads share.
struct Watch {
    spec: NodeSpec,
    /// This node has left the collective group, or its run has ended: the
    /// other nodes' fate no longer matters to it.
    finished: AtomicBool,
    /// Write halves: node 0 holds one per other node (index rank − 1),
    /// the others one to node 0.
    links: Mutex<Vec<(usize, TcpStream)>>,
    /// This node's stall watch: node 0's heartbeats say `busy` while it
    /// is busy between steps, and the other nodes, waiting for it in
    /// their next all-reduce meanwhile, restart theirs.
    stall: Progress,
    /// Node 0: which nodes have said `done`.
    done: Mutex<Vec<bool>>,
    done_changed: Condvar,
}

impl Watch {
    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send_all(&self, line: &str) {
        for (_, stream) in Self::lock(&self.links).iter_mut() {
            // a dead link shows in its reader
            let _ = writeln!(stream, "{line}");
        }
    }

    /// Ends the process with `message`, unless this node is finished.
    fn exit(&self, code: i32, message: &str) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::error!("{message}");
        eprintln!("error: {message}");
        std::process::exit(code);
    }

    /// Another node is gone: node 0 tells the rest, then every node exits.
    fn lost(&self, rank: usize, why: &str) {
        if self.finished.load(Ordering::SeqCst) {
            return;
        }
        let (me, nodes) = (self.spec.rank, self.spec.nodes);
        let message = format!(
            "node {rank} of {nodes} {why}; the run cannot go on without it: node {me} \
             exits with status {EXIT_NODE_LOST} (node 0's newest checkpoint is intact; \
             --resume on every node continues from it)"
        );
        if me == 0 {
            self.send_all(&format!("abort {message}"));
        }
        self.exit(EXIT_NODE_LOST, &message);
    }

    /// Reads `rank`'s lines until its link ends.
    fn read(self: &Arc<Self>, rank: usize, stream: TcpStream, stop: &StopSignal) {
        let timeout = self.spec.timeout;
        if stream.set_read_timeout(Some(timeout)).is_err() {
            self.lost(rank, "could not be watched");
            return;
        }
        let mut said_done = false;
        for line in BufReader::new(stream).lines() {
            let line = match line {
                Ok(line) => line,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if !said_done {
                        self.lost(
                            rank,
                            &format!(
                                "fell silent for {} s (train.node_timeout_s)",
                                timeout.as_secs_f64()
                            ),
                        );
                    }
                    return;
                }
                Err(e) => {
                    if !said_done {
                        self.lost(rank, &format!("broke its connection ({e})"));
                    }
                    return;
                }
            };
            let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match word {
                "hb" => {}
                "busy" => self.stall.touch(),
                "done" => {
                    said_done = true;
                    let mut done = Self::lock(&self.done);
                    if let Some(d) = done.get_mut(rank.wrapping_sub(1)) {
                        *d = true;
                    }
                    self.done_changed.notify_all();
                }
                "stop" if self.spec.rank == 0 => {
                    tracing::warn!("node {rank} asks the run to stop; stopping after this step");
                    stop.request();
                }
                "stopped" => {
                    let message = format!(
                        "node 0 stopped the run after step {rest} (a stop request; its \
                         checkpoint is written): --resume on every node continues it"
                    );
                    if !self.finished.swap(true, Ordering::SeqCst) {
                        tracing::warn!("{message}");
                        eprintln!("{message}");
                        std::process::exit(EXIT_STOPPED);
                    }
                    return;
                }
                "abort" => {
                    if self.spec.rank == 0 {
                        self.send_all(&format!("abort {rest}"));
                    }
                    self.exit(EXIT_NODE_LOST, rest);
                    return;
                }
                _ => tracing::warn!("node {rank} sent an unknown line {line:?}; ignored"),
            }
        }
        if !said_done {
            self.lost(
                rank,
                "closed its connection (its process ended or was killed)",
            );
        }
    }
}

/// This process's membership of a multi-node run ([`NodeLink::join`]).
pub struct NodeLink {
    watch: Arc<Watch>,
    /// The stop request the session obeys: node 0's own; on the other
    /// nodes one that only node 0's `stopped` ends (their own requests go
    /// to node 0).
    session_stop: StopSignal,
    /// This node's address for the other nodes' downloads.
    node_host: String,
}

impl std::fmt::Debug for NodeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLink")
            .field("spec", &self.watch.spec)
            .field("node_host", &self.node_host)
            .finish()
    }
}

fn nodes_error(message: String) -> TrainError {
    TrainError::Nodes(message)
}

/// A checkpoint step in words.
fn step_phrase(step: Option<usize>) -> String {
    step.map_or_else(
        || "no checkpoint".into(),
        |step| format!("the checkpoint of step {step}"),
    )
}

/// How `hello` says where a node starts: `fresh`, or the step it resumes
/// from.
fn resume_word(resume: Option<usize>) -> String {
    resume.map_or_else(|| "fresh".into(), |step| step.to_string())
}

impl NodeLink {
    /// Joins the run `spec` describes: node 0 starts the orchestrator and
    /// waits for every other node's `hello`; the others reach node 0 and
    /// wait for its `go`. Then the heartbeats start. `stop` is the
    /// process's own stop request.
    ///
    /// # Errors
    ///
    /// [`TrainError::Nodes`] naming the nodes that did not join within
    /// `train.node_timeout_s`, a node whose settings differ from node 0's,
    /// a port that is taken.
    pub fn join(spec: NodeSpec, stop: StopSignal, stall: Progress) -> Result<Self, TrainError> {
        let deadline = Instant::now() + spec.timeout;
        let (links, node_host) = if spec.rank == 0 {
            (host_the_join(&spec, deadline)?, spec.host.clone())
        } else {
            reach_node_0(&spec, deadline)?
        };
        let watch = Arc::new(Watch {
            done: Mutex::new(vec![false; spec.nodes - 1]),
            spec,
            finished: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            stall,
            done_changed: Condvar::new(),
        });
        let session_stop = if watch.spec.rank == 0 {
            stop.clone()
        } else {
            StopSignal::default()
        };
        for (rank, stream) in links {
            let read = stream
                .try_clone()
                .map_err(|e| nodes_error(format!("watching node {rank}: {e}")))?;
            // a node that stops reading must not block the heartbeats
            let _ = stream.set_write_timeout(Some(watch.spec.timeout));
            Watch::lock(&watch.links).push((rank, stream));
            let (w, stop) = (Arc::clone(&watch), stop.clone());
            std::thread::spawn(move || w.read(rank, read, &stop));
        }
        let w = Arc::clone(&watch);
        std::thread::spawn(move || {
            let mut asked = false;
            while !w.finished.load(Ordering::SeqCst) {
                let busy = w.spec.rank == 0 && w.stall.is_busy();
                w.send_all(if busy { "busy" } else { "hb" });
                if w.spec.rank > 0 && !asked && stop.requested() {
                    asked = true;
                    tracing::warn!("stop requested: asking node 0 to stop the run");
                    w.send_all("stop");
                }
                std::thread::sleep(HEARTBEAT);
            }
        });
        let spec = &watch.spec;
        tracing::info!(
            nodes = spec.nodes,
            rank = spec.rank,
            peers = spec.nodes * spec.local_peers,
            "every node has joined"
        );
        Ok(Self {
            watch,
            session_stop,
            node_host,
        })
    }

    /// This node's rank.
    pub fn rank(&self) -> usize {
        self.watch.spec.rank
    }

    /// Machines of the run.
    pub fn nodes(&self) -> usize {
        self.watch.spec.nodes
    }

    /// The global rank of this node's first peer.
    pub fn first_peer(&self) -> usize {
        self.watch.spec.rank * self.watch.spec.local_peers
    }

    /// Peers of the whole run.
    pub fn peers(&self) -> usize {
        self.watch.spec.nodes * self.watch.spec.local_peers
    }

    /// The stop request the session on this node obeys.
    pub fn session_stop(&self) -> StopSignal {
        self.session_stop.clone()
    }

    /// burn-collective's config for this node's peers: its share of the
    /// group, the orchestrator's and this node's addresses. The global
    /// all-reduce is a tree: burn's global ring refuses tensors shorter
    /// than the node count (the loss is one value).
    ///
    /// # Errors
    ///
    /// [`TrainError::Nodes`] when an address does not parse.
    pub fn collective_config(&self) -> Result<CollectiveConfig, TrainError> {
        let spec = &self.watch.spec;
        let address = |host: &str, port: u16| -> Result<Address, TrainError> {
            format!("ws://{host}:{port}")
                .parse()
                .map_err(|e| nodes_error(format!("the address ws://{host}:{port}: {e}")))
        };
        Ok(CollectiveConfig::default()
            .with_num_devices(spec.local_peers)
            .with_num_nodes(spec.nodes as u32)
            .with_global_address(address(&spec.host, spec.port)?)
            .with_node_address(address(&self.node_host, spec.data_port())?)
            .with_data_service_port(spec.data_port())
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2)))
    }

    /// What the stall watch calls before it exits: the other nodes are
    /// told why (`abort`), so that they exit too, naming this node.
    pub fn stall_teller(&self) -> impl FnOnce(&str) + Send + 'static {
        let watch = Arc::clone(&self.watch);
        move |why: &str| {
            if !watch.finished.swap(true, Ordering::SeqCst) {
                let spec = &watch.spec;
                watch.send_all(&format!(
                    "abort node {} of {} stalled: {}",
                    spec.rank,
                    spec.nodes,
                    why.replace('\n', " ")
                ));
            }
        }
    }

    /// Checks that this node's session resumed from the checkpoint it
    /// named at the join (`from`: the step it did resume from). A node
    /// whose newest checkpoint read at the join but did not load falls
    /// back to an older one; it must not train on from there.
    ///
    /// # Errors
    ///
    /// [`TrainError::Nodes`] naming both steps.
    pub fn check_resumed(&self, from: Option<usize>) -> Result<(), TrainError> {
        let said = self.watch.spec.resume;
        if from == said {
            return Ok(());
        }
        Err(nodes_error(format!(
            "node {} of {} resumed from {}, but every node agreed at the join on {}: the \
             newer checkpoint did not load here (the warning above says why). Remove it on \
             every node, or mend it, and --resume again",
            self.rank(),
            self.nodes(),
            step_phrase(from),
            step_phrase(said),
        )))
    }

    /// The run on this node has ended with `result`, before its peers
    /// leave the group: when it failed or stopped early, the other nodes
    /// are told (they would wait for this one in the next all-reduce).
    pub fn ended(&self, result: &Result<(), TrainError>) {
        if let Err(e) = result {
            self.failed(e);
        }
    }

    /// [`NodeLink::ended`] with the error `e`.
    pub fn failed(&self, e: &TrainError) {
        if matches!(e, TrainError::Collective(_)) && !self.watch.finished.load(Ordering::SeqCst) {
            // a failed all-reduce most often means a node is gone: give the
            // watch channel, which names it, the time to see it first
            std::thread::sleep(LOSS_NOTICE);
        }
        if self.watch.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        let spec = &self.watch.spec;
        let code = match e {
            TrainError::Interrupted { step, .. } if spec.rank == 0 => {
                self.watch.send_all(&format!("stopped {step}"));
                EXIT_STOPPED
            }
            e => {
                self.watch.send_all(&format!(
                    "abort node {} of {} failed: {}",
                    spec.rank,
                    spec.nodes,
                    e.to_string().replace('\n', " ")
                ));
                EXIT_NODE_LOST
            }
        };
        // leaving the group goes through node 0's orchestrator, which
        // burn-collective stops on SIGINT and SIGTERM itself, and through
        // nodes that may be gone: it can wait for ever
        let message = format!(
            "{e}\n(this node's peers did not leave burn-collective's group within {} s of \
             the run's end: exiting with status {code})",
            LEAVE_GRACE.as_secs()
        );
        std::thread::spawn(move || {
            std::thread::sleep(LEAVE_GRACE);
            tracing::error!("{message}");
            eprintln!("error: {message}");
            std::process::exit(code);
        });
    }

    /// This node has trained to the end and left the group: node 0 waits
    /// (up to `train.node_timeout_s`) for every node to say the same, so
    /// that its orchestrator sees them leave; the others say it.
    pub fn finish(self) {
        let w = &self.watch;
        if w.spec.rank > 0 {
            w.send_all("done");
            w.finished.store(true, Ordering::SeqCst);
            return;
        }
        let deadline = Instant::now() + w.spec.timeout;
        let mut done = Watch::lock(&w.done);
        while done.iter().any(|d| !d) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing = ranks(
                    done.iter()
                        .enumerate()
                        .filter(|(_, d)| !**d)
                        .map(|(i, _)| i + 1),
                );
                tracing::warn!("node(s) {missing} did not say they finished; ending anyway");
                break;
            }
            done = w
                .done_changed
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        w.finished.store(true, Ordering::SeqCst);
    }
}

fn ranks(ranks: impl Iterator<Item = usize>) -> String {
    ranks.map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

/// Fails with a clear error when `port` is taken (burn-collective would
/// log the bind error and go on without the service).
fn port_free(port: u16, what: &str) -> Result<(), TrainError> {
    TcpListener::bind(("0.0.0.0", port)).map(drop).map_err(|e| {
        nodes_error(format!(
            "port {port} ({what}) cannot be opened on this machine: {e}; choose another \
             PORT in train.coordinator (node r uses PORT, PORT + 1 and PORT + 2 + r)"
        ))
    })
}

/// burn-collective's orchestrator on `port`, on a thread and a runtime of
/// its own; returns once it listens (burn logs a failed bind and goes on:
/// the other nodes would then retry their registration for ever).
fn start_orchestrator(port: u16) -> Result<(), TrainError> {
    std::thread::Builder::new()
        .name("orchestrator".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(burn_collective::start_global_orchestrator(port)),
                Err(e) => tracing::error!("the orchestrator's runtime: {e}"),
            }
            tracing::warn!("burn-collective's orchestrator on port {port} has stopped");
        })
        .map_err(|e| nodes_error(format!("starting the orchestrator: {e}")))?;
    let up = Instant::now();
    while TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_err()
    {
        if up.elapsed() > Duration::from_secs(10) {
            return Err(nodes_error(format!(
                "burn-collective's orchestrator did not start listening on port {port} \
                 within 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Node 0: the orchestrator, then every other node's `hello` until the
/// deadline, then `go`. Returns the links by rank.
fn host_the_join(
    spec: &NodeSpec,
    deadline: Instant,
) -> Result<Vec<(usize, TcpStream)>, TrainError> {
    port_free(spec.port, "burn-collective's orchestrator")?;
    port_free(spec.data_port(), "this node's data service")?;
    let listener = TcpListener::bind(("0.0.0.0", spec.watch_port())).map_err(|e| {
        nodes_error(format!(
            "port {} (the nodes' watch channel) cannot be opened: {e}",
            spec.watch_port()
        ))
    })?;
    let port = spec.port;
    start_orchestrator(port)?;
    listener
        .set_nonblocking(true)
        .map_err(|e| nodes_error(format!("the watch channel: {e}")))?;
    tracing::info!(
        nodes = spec.nodes,
        port,
        "node 0: waiting for the other nodes to join"
    );
    let mut joined: Vec<(usize, TcpStream)> = Vec::new();
    let refuse = |joined: &mut Vec<(usize, TcpStream)>, message: String| {
        for (_, s) in joined.iter_mut() {
            let _ = writeln!(s, "abort {message}");
        }
        nodes_error(message)
    };
    while joined.len() + 1 < spec.nodes {
        if Instant::now() >= deadline {
            let missing = ranks((1..spec.nodes).filter(|r| joined.iter().all(|(j, _)| j != r)));
            let message = format!(
                "node(s) {missing} of {} did not join within {} s (train.node_timeout_s; \
                 node 0 waits on port {} of {})",
                spec.nodes,
                spec.timeout.as_secs_f64(),
                spec.watch_port(),
                spec.host
            );
            return Err(refuse(&mut joined, message));
        }
        let (mut stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(refuse(&mut joined, format!("the watch channel: {e}"))),
        };
        let line = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(10))))
            .and_then(|()| read_line(&stream));
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!("{from} connected to the watch channel but said nothing ({e})");
                continue;
            }
        };
        match spec.check_hello(&line) {
            Ok(rank) if joined.iter().any(|(j, _)| *j == rank) => {
                let message =
                    format!("node {rank} joined twice (two processes with one train.node_rank)");
                let _ = writeln!(stream, "abort {message}");
                return Err(refuse(&mut joined, message));
            }
            Ok(rank) => {
                tracing::info!("node {rank} of {} joined from {from}", spec.nodes);
                joined.push((rank, stream));
            }
            Err(why) => {
                let _ = writeln!(stream, "abort {why}");
                if why.starts_with("not a byol-rs node") {
                    tracing::warn!("{from}: {why}");
                    continue;
                }
                return Err(refuse(&mut joined, why));
            }
        }
    }
    for (_, s) in &mut joined {
        writeln!(s, "go").map_err(|e| nodes_error(format!("telling the nodes to start: {e}")))?;
    }
    joined.sort_by_key(|(r, _)| *r);
    Ok(joined)
}

/// One line from `stream`, without its newline.
fn read_line(stream: &TcpStream) -> std::io::Result<String> {
    let mut line = String::new();
    // byte by byte: a buffered reader could swallow the lines after it
    let mut byte = [0u8; 1];
    loop {
        match std::io::Read::read(&mut &*stream, &mut byte)? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed",
                ));
            }
            _ if byte[0] == b'\n' => return Ok(line),
            _ => line.push(char::from(byte[0])),
        }
    }
}

/// Another node: reach node 0 before the deadline, say `hello`, wait for
/// `go`. Returns the link and this node's host as node 0 sees it.
fn reach_node_0(
    spec: &NodeSpec,
    deadline: Instant,
) -> Result<(Vec<(usize, TcpStream)>, String), TrainError> {
    port_free(spec.data_port(), "this node's data service")?;
    let target = format!("{}:{}", spec.host, spec.watch_port());
    let addresses: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| nodes_error(format!("node 0's address {target}: {e}")))?
        .collect();
    let mut stream = loop {
        let reached = addresses
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).ok());
        if let Some(s) = reached {
            break s;
        }
        if Instant::now() >= deadline {
            return Err(nodes_error(format!(
                "node 0 of {} (the coordinator, {target}) could not be reached within {} s \
                 (train.node_timeout_s): start it, or check train.coordinator",
                spec.nodes,
                spec.timeout.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let node_host = local_host_towards(&stream);
    writeln!(stream, "{}", spec.hello())
        .map_err(|e| nodes_error(format!("joining node 0 at {target}: {e}")))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| nodes_error(format!("joining node 0 at {target}: {e}")))?;
    let line = read_line(&stream).map_err(|e| {
        nodes_error(format!(
            "node 0 of {} did not start the run within {} s of this node's joining \
             (train.node_timeout_s; another node may be missing): {e}",
            spec.nodes,
            spec.timeout.as_secs_f64()
        ))
    })?;
    match line.split_once(' ').unwrap_or((line.as_str(), "")) {
        ("go", _) => Ok((vec![(0, stream)], node_host)),
        ("abort", why) => Err(nodes_error(format!("node 0 refused the run: {why}"))),
        _ => Err(nodes_error(format!("node 0 answered {line:?}, not go"))),
    }
}

/// The address this machine has on the route to node 0: what node 0 and
/// the others connect to for this node's data.
fn local_host_towards(stream: &TcpStream) -> String {
    let ip = stream.local_addr().map(|a| a.ip()).or_else(|_| {
        let udp = UdpSocket::bind("0.0.0.0:0")?;
        udp.connect(stream.peer_addr()?)?;
        udp.local_addr().map(|a| a.ip())
    });
    match ip {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        Ok(ip) => ip.to_string(),
        Err(_) => "127.0.0.1".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coordinator_is_host_and_a_port_with_room_for_every_node() {
        assert_eq!(
            parse_coordinator("10.0.0.1:29400", 4).expect("valid"),
            ("10.0.0.1".to_string(), 29400)
        );
        assert_eq!(
            parse_coordinator("[::1]:9000", 2).expect("valid").0,
            "[::1]"
        );
        assert!(parse_coordinator("h:65532", 2).is_ok());
        for bad in ["", "h", ":9000", "h:0", "h:port", "h:65533"] {
            let e = parse_coordinator(bad, 2).expect_err(bad).to_string();
            assert!(
                e.contains("train.coordinator") && e.contains("HOST:PORT"),
                "{bad}: {e}"
            );
        }
    }

    fn spec(rank: usize) -> NodeSpec {
        NodeSpec {
            nodes: 3,
            rank,
            host: "127.0.0.1".into(),
            port: 9000,
            timeout: Duration::from_secs(5),
            local_peers: 2,
            resume: None,
            config_hash: 0xabc,
        }
    }

    #[test]
    fn node_0_names_what_differs_in_another_nodes_hello() {
        let zero = spec(0);
        assert_eq!(zero.check_hello(&spec(2).hello()), Ok(2));
        let other = |f: &dyn Fn(&mut NodeSpec)| {
            let mut s = spec(1);
            f(&mut s);
            zero.check_hello(&s.hello()).expect_err("differs")
        };
        assert!(other(&|s| s.rank = 0).contains("train.node_rank"));
        assert!(other(&|s| s.rank = 3).contains("train.node_rank"));
        assert!(other(&|s| s.nodes = 4).contains("train.nodes = 4"));
        assert!(other(&|s| s.local_peers = 1).contains("train.devices"));
        assert!(other(&|s| s.resume = Some(4)).contains("pass --resume to every node"));
        let resumed = NodeSpec {
            resume: Some(4),
            ..spec(0)
        };
        let older = NodeSpec {
            resume: Some(2),
            ..spec(1)
        };
        let differs = resumed.check_hello(&older.hello()).expect_err("older");
        assert!(
            differs.contains("node 1 resumes from the checkpoint of step 2")
                && differs.contains("node 0 resumes from the checkpoint of step 4")
                && differs.contains("the same checkpoints"),
            "{differs}"
        );
        assert!(
            resumed
                .check_hello(&spec(1).hello())
                .expect_err("fresh")
                .contains("starts afresh")
        );
        assert!(other(&|s| s.config_hash = 1).contains("config differs"));
        assert!(
            zero.check_hello("GET / HTTP/1.1")
                .expect_err("junk")
                .contains("not a byol-rs node")
        );
    }

    #[test]
    fn the_config_hash_ignores_the_node_rank_only() {
        let mut a = RunConfig::default();
        a.train.nodes = 2;
        let mut b = a.clone();
        b.train.node_rank = 1;
        assert_eq!(
            config_hash(&a).expect("hash"),
            config_hash(&b).expect("hash")
        );
        b.train.batch_size += 2;
        assert_ne!(
            config_hash(&a).expect("hash"),
            config_hash(&b).expect("hash")
        );
    }
}
