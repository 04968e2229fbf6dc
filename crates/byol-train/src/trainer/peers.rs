//! The data-parallel peers of a run (`train.devices`): rank 0 is the
//! session's own thread, which keeps the loader, the logs, the monitors
//! and the checkpoints; ranks 1 and up are follower threads, each with its
//! own replica and optimizers on its device, that take their shard of every
//! global batch from rank 0 and step with it ([`crate::parallel`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use burn::collective::CollectiveConfig;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_model::{Byol, Encoder};

use super::Hooks;
use crate::TrainError;
use crate::loader::Batch;
use crate::parallel::{Peer, peer_step};
use crate::step::{Optimizers, StepSettings};

/// The exit status of a process whose data-parallel peers could not end
/// after one of them failed (`EX_SOFTWARE`).
pub const EXIT_PEER_FAILED: i32 = 70;

/// What keeps a failed peer from hanging the process. When a peer fails in
/// a step (an error or a panic), the others are, or soon will be, waiting
/// in an all-reduce for its share, and burn-collective 0.21 has no timeout
/// and no way to cancel one: the run cannot end, and the scope that holds
/// the peers' threads would wait for them forever. [`Watchdog::failed`]
/// gives the run `train.peer_failure_grace_s` to end by itself (when the
/// collective fails for everyone, it does); then it logs an error naming
/// the peer and exits the process with [`EXIT_PEER_FAILED`]. Checkpoints
/// are written whole or not at all, so the newest one stays usable.
#[derive(Debug, Clone)]
pub(crate) struct Watchdog {
    ended: Arc<AtomicBool>,
    grace: Duration,
}

impl Watchdog {
    pub(crate) fn new(grace_s: f64) -> Self {
        Self {
            ended: Arc::new(AtomicBool::new(false)),
            grace: Duration::from_secs_f64(grace_s),
        }
    }

    /// The run's peers have all ended: a timer started by
    /// [`Watchdog::failed`] does nothing.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// `peer` failed with `what` (in a step, or as it registered): unless
    /// the run ends within the grace period, the process exits.
    pub(crate) fn failed(&self, peer: Peer, what: &str) {
        tracing::error!("peer {} of {} failed: {what}", peer.rank, peer.peers);
        let (ended, grace) = (Arc::clone(&self.ended), self.grace);
        let message = format!(
            "peer {} of {} failed ({what}); the other peers wait in a collective operation \
             that burn-collective cannot cancel, and the run did not end within \
             train.peer_failure_grace_s = {} s: exiting with status {EXIT_PEER_FAILED} \
             (the newest checkpoint is intact; --resume continues from it)",
            peer.rank,
            peer.peers,
            grace.as_secs_f64()
        );
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < grace {
                if ended.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !ended.load(Ordering::SeqCst) {
                tracing::error!("{message}");
                eprintln!("error: {message}");
                std::process::exit(EXIT_PEER_FAILED);
            }
        });
    }
}

/// The text of a caught panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// One follower's part of a step: its images of the global batch.
pub(crate) struct Shard {
    view1: Vec<f32>,
    view2: Vec<f32>,
    len: usize,
    settings: StepSettings,
}

/// What a follower needs to start: its replica, optimizers and device.
pub(crate) struct Replica<B: AutodiffBackend, E>
where
    Byol<B, E>: AutodiffModule<B>,
{
    pub(crate) model: Byol<B, E>,
    pub(crate) optimizers: Optimizers<Byol<B, E>, B>,
    pub(crate) device: B::Device,
}

/// Where this process's peers sit in the run: the global rank of its
/// first, the run's peer count, and burn-collective's config for them.
pub(crate) struct Layout {
    pub(crate) first: usize,
    pub(crate) peers: usize,
    pub(crate) config: CollectiveConfig,
}

impl Layout {
    /// `peers` peers, all in this process.
    pub(crate) fn local(peers: usize) -> Self {
        Self {
            first: 0,
            peers,
            config: CollectiveConfig::default().with_num_devices(peers),
        }
    }
}

/// The followers, seen from this process's first peer (rank 0 of the
/// run, or with several machines the first of this node).
pub(crate) struct Group {
    first: usize,
    peers: usize,
    jobs: Vec<SyncSender<Shard>>,
    done: Receiver<Result<(), TrainError>>,
    watchdog: Watchdog,
}

/// The followers' threads; [`Group`] and these end together.
pub(crate) type Followers<'scope, B, E> =
    Vec<ScopedJoinHandle<'scope, Result<Byol<B, E>, TrainError>>>;

impl Group {
    /// The run's watchdog.
    pub(crate) fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }

    /// This process's first peer: rank 0, or with several machines the
    /// first of this node.
    pub(crate) fn leader(&self) -> Peer {
        Peer {
            rank: self.first,
            peers: self.peers,
        }
    }

    /// The images of a batch of `len` that the peers train on: all of them
    /// unless skipped images left a count that does not cut into equal
    /// shards of whole micro-batches, then the largest count that does.
    ///
    /// # Errors
    ///
    /// [`TrainError::Dataset`] when fewer images than one micro-batch per
    /// peer are left.
    pub(crate) fn usable(
        &self,
        len: usize,
        accumulate: usize,
        step: usize,
    ) -> Result<usize, TrainError> {
        let unit = self.peers * accumulate;
        let usable = len - len % unit;
        if usable == 0 {
            return Err(TrainError::Dataset(format!(
                "step {step}: {len} readable images left in the batch, fewer than one per \
                 peer and micro-batch ({} peers × train.accumulate = {accumulate})",
                self.peers
            )));
        }
        if usable < len {
            tracing::warn!(
                step,
                len,
                usable,
                "skipped images left a batch that does not divide among the peers; trimmed"
            );
        }
        Ok(usable)
    }

    /// Sends ranks 1 and up their shards of the first `usable` images of
    /// `batch`, `per_image` floats each.
    ///
    /// # Errors
    ///
    /// [`TrainError::Collective`] when a follower has stopped.
    pub(crate) fn dispatch(
        &self,
        batch: &Batch,
        usable: usize,
        per_image: usize,
        settings: StepSettings,
    ) -> Result<(), TrainError> {
        for (i, jobs) in self.jobs.iter().enumerate() {
            let peer = Peer {
                rank: self.first + i + 1,
                peers: self.peers,
            };
            let r = peer.shard(usable);
            let floats = r.start * per_image..r.end * per_image;
            let shard = Shard {
                view1: batch.view1[floats.clone()].to_vec(),
                view2: batch.view2[floats].to_vec(),
                len: r.len(),
                settings,
            };
            jobs.send(shard).map_err(|_| {
                TrainError::Collective(format!("peer {} of {} has stopped", peer.rank, self.peers))
            })?;
        }
        Ok(())
    }

    /// Waits until every follower has taken the step.
    ///
    /// # Errors
    ///
    /// The first follower's error, or [`TrainError::Collective`] when one
    /// has stopped.
    pub(crate) fn collect(&self) -> Result<(), TrainError> {
        for _ in &self.jobs {
            self.done.recv().map_err(|_| {
                TrainError::Collective("a peer stopped in the middle of a step".into())
            })??;
        }
        Ok(())
    }
}

/// Starts a follower thread per replica (ranks `layout.first` + 1, + 2, …)
/// in `scope`, then registers the first peer on `device`; returns once
/// every peer of the run has registered.
///
/// # Errors
///
/// [`TrainError::Collective`] when the registration fails.
pub(crate) fn start<'scope, B, E>(
    scope: &'scope Scope<'scope, '_>,
    replicas: Vec<Replica<B, E>>,
    shape: [usize; 3],
    device: &B::Device,
    watchdog: &Watchdog,
    hooks: Hooks,
    layout: &Layout,
) -> Result<(Group, Followers<'scope, B, E>), TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B> + 'scope,
    Byol<B, E>: AutodiffModule<B>,
{
    let (first, peers) = (layout.first, layout.peers);
    let (done_tx, done) = sync_channel(replicas.len() + 1);
    let mut jobs = Vec::new();
    let mut followers = Vec::new();
    for (i, replica) in replicas.into_iter().enumerate() {
        let (tx, rx) = sync_channel(1);
        jobs.push(tx);
        let peer = Peer {
            rank: first + i + 1,
            peers,
        };
        let done = done_tx.clone();
        let watchdog = watchdog.clone();
        let config = layout.config.clone();
        let seat = Seat {
            peer,
            shape,
            config,
        };
        followers.push(scope.spawn(move || follow(seat, replica, &rx, &done, &watchdog, hooks)));
    }
    let group = Group {
        first,
        peers,
        jobs,
        done,
        watchdog: watchdog.clone(),
    };
    // the followers wait in their registration for the first peer's
    if let Err(e) = group.leader().join_with::<B>(device, layout.config.clone()) {
        watchdog.failed(group.leader(), &e.to_string());
        return Err(e);
    }
    tracing::info!(peers, "data-parallel peers registered");
    Ok((group, followers))
}

/// Ends the followers (they see their channel close), unregisters rank 0
/// and collects the followers' replicas.
///
/// # Errors
///
/// A follower's error, or [`TrainError::Collective`] for one that panicked.
pub(crate) fn stop<B, E>(
    group: Group,
    followers: Followers<'_, B, E>,
) -> Result<Vec<Byol<B, E>>, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    Byol<B, E>: AutodiffModule<B>,
{
    let leader = group.leader();
    drop(group);
    let left = leader.leave::<B>();
    let replicas = followers
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            h.join().unwrap_or_else(|_| {
                Err(TrainError::Collective(format!(
                    "peer {} of {} panicked",
                    leader.rank + i + 1,
                    leader.peers
                )))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    left?;
    Ok(replicas)
}

/// A follower's life: register, then one [`peer_step`] per shard received,
/// until rank 0 closes the channel; returns the replica.
/// A follower's place: its peer, the images' `[channels, height, width]`,
/// burn-collective's config.
struct Seat {
    peer: Peer,
    shape: [usize; 3],
    config: CollectiveConfig,
}

fn follow<B, E>(
    seat: Seat,
    replica: Replica<B, E>,
    jobs: &Receiver<Shard>,
    done: &SyncSender<Result<(), TrainError>>,
    watchdog: &Watchdog,
    hooks: Hooks,
) -> Result<Byol<B, E>, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    Byol<B, E>: AutodiffModule<B>,
{
    let Seat {
        peer,
        shape: [c, h, w],
        config,
    } = seat;
    let Replica {
        mut model,
        mut optimizers,
        device,
    } = replica;
    // the others wait in their registration for this peer's: a failure
    // here must not leave them there
    let joined = catch_unwind(AssertUnwindSafe(|| {
        hooks.panic_if(peer.rank, 0);
        peer.join_with::<B>(&device, config)
    }));
    let joined = match joined {
        Ok(joined) => joined,
        Err(panic) => Err(TrainError::Collective(format!(
            "peer {} of {} panicked: {}",
            peer.rank,
            peer.peers,
            panic_text(&*panic)
        ))),
    };
    if let Err(e) = joined {
        watchdog.failed(peer, &e.to_string());
        return Err(e);
    }
    let mut steps = 0;
    while let Ok(shard) = jobs.recv() {
        steps += 1;
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            hooks.panic_if(peer.rank, steps);
            hooks.hang_if(peer.rank, steps);
            let upload =
                |v: &[f32]| Tensor::<B, 1>::from_floats(v, &device).reshape([shard.len, c, h, w]);
            let (v1, v2) = (upload(&shard.view1), upload(&shard.view2));
            peer_step(peer, model, &mut optimizers, v1, v2, &shard.settings)
        }));
        let e = match stepped {
            Ok(Ok((next, _))) => {
                model = next;
                // rank 0 may have stopped waiting; the channel's close ends the loop
                let _ = done.send(Ok(()));
                continue;
            }
            Ok(Err(e)) => e,
            Err(panic) => TrainError::Collective(format!(
                "peer {} of {} panicked: {}",
                peer.rank,
                peer.peers,
                panic_text(&*panic)
            )),
        };
        watchdog.failed(peer, &e.to_string());
        let _ = done.send(Err(TrainError::Collective(e.to_string())));
        return Err(e);
    }
    peer.leave::<B>()?;
    Ok(model)
}
