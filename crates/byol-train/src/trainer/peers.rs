//! The data-parallel peers of a run (`train.devices`): rank 0 is the
//! session's own thread, which keeps the loader, the logs, the monitors
//! and the checkpoints; ranks 1 and up are follower threads, each with its
//! own replica and optimizers on its device, that take their shard of every
//! global batch from rank 0 and step with it ([`crate::parallel`]).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_model::{Byol, Encoder};

use crate::TrainError;
use crate::loader::Batch;
use crate::parallel::{Peer, peer_step};
use crate::step::{Optimizers, StepSettings};

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

/// The followers, seen from rank 0.
pub(crate) struct Group {
    peers: usize,
    jobs: Vec<SyncSender<Shard>>,
    done: Receiver<Result<(), TrainError>>,
}

/// The followers' threads; [`Group`] and these end together.
pub(crate) type Followers<'scope, B, E> =
    Vec<ScopedJoinHandle<'scope, Result<Byol<B, E>, TrainError>>>;

impl Group {
    /// Rank 0.
    pub(crate) fn leader(&self) -> Peer {
        Peer {
            rank: 0,
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
                rank: i + 1,
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
                TrainError::Collective(format!("peer {} of {} has stopped", i + 1, self.peers))
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

/// Starts a follower thread per replica (ranks 1, 2, …) in `scope`, then
/// registers rank 0 on `device`; returns once every peer has registered.
///
/// # Errors
///
/// [`TrainError::Collective`] when the registration fails.
pub(crate) fn start<'scope, B, E>(
    scope: &'scope Scope<'scope, '_>,
    replicas: Vec<Replica<B, E>>,
    shape: [usize; 3],
    device: &B::Device,
) -> Result<(Group, Followers<'scope, B, E>), TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B> + 'scope,
    Byol<B, E>: AutodiffModule<B>,
{
    let peers = replicas.len() + 1;
    let (done_tx, done) = sync_channel(peers);
    let mut jobs = Vec::new();
    let mut followers = Vec::new();
    for (i, replica) in replicas.into_iter().enumerate() {
        let (tx, rx) = sync_channel(1);
        jobs.push(tx);
        let peer = Peer { rank: i + 1, peers };
        let done = done_tx.clone();
        followers.push(scope.spawn(move || follow(peer, replica, shape, &rx, &done)));
    }
    let group = Group { peers, jobs, done };
    group.leader().join::<B>(device)?;
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
                    i + 1,
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
fn follow<B, E>(
    peer: Peer,
    replica: Replica<B, E>,
    [c, h, w]: [usize; 3],
    jobs: &Receiver<Shard>,
    done: &SyncSender<Result<(), TrainError>>,
) -> Result<Byol<B, E>, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    Byol<B, E>: AutodiffModule<B>,
{
    let Replica {
        mut model,
        mut optimizers,
        device,
    } = replica;
    peer.join::<B>(&device)?;
    while let Ok(shard) = jobs.recv() {
        let upload =
            |v: &[f32]| Tensor::<B, 1>::from_floats(v, &device).reshape([shard.len, c, h, w]);
        let (v1, v2) = (upload(&shard.view1), upload(&shard.view2));
        match peer_step(peer, model, &mut optimizers, v1, v2, &shard.settings) {
            Ok((next, _)) => {
                model = next;
                // rank 0 may have stopped waiting; the channel's close ends the loop
                let _ = done.send(Ok(()));
            }
            Err(e) => {
                let _ = done.send(Err(TrainError::Collective(e.to_string())));
                return Err(e);
            }
        }
    }
    peer.leave::<B>()?;
    Ok(model)
}
