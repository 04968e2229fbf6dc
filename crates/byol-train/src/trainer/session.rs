//! A run in progress: its networks, optimizers, state, metrics log and
//! clocks, and what happens at each step, at a log interval, at an epoch
//! end, at a checkpoint and at the finish.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_eval::{KnnAccuracy, knn_eval};
use byol_model::{Byol, Encoder, ForwardOptions};
use indicatif::ProgressBar;

use super::data::RunData;
use super::guard::{CollapseGuard, Verdict};
use super::model::ModelSource;
use super::online::OnlineLinear;
use super::peers::{Group, Replica};
use super::readback::{self, InStep};
use super::{Hooks, PretrainOptions, RunSummary, StopSignal, Upload, Views};
use crate::checkpoint::{
    CHECKPOINTS, TrainState, load_module, newest_usable, save_module, write_atomic,
    write_checkpoint,
};
use crate::collapse::collapse_metrics;
use crate::config::{LrSchedule, RunConfig, RunIdentity};
use crate::loader::{Batch, Plan};
use crate::metrics::{MetricsLog, Record};
use crate::parallel::{peer_step, replica};
use crate::stall::Progress;
use crate::step::{Optimizers, StepOutput, StepSettings, byol_step};
use crate::{TrainError, progress, schedule};

/// The length of a run and its schedules' fixed points, from the config
/// and the size of the pretraining set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RunLength {
    /// Steps of one epoch (the incomplete last batch is dropped).
    pub(crate) steps_per_epoch: usize,
    /// Steps of the whole run (`train.epochs`, cut by `train.max_steps`).
    pub(crate) total_steps: usize,
    /// Epochs started, the last possibly cut short.
    pub(crate) epochs: usize,
    /// Linear warm-up of the learning rate, in steps.
    pub(crate) warmup_steps: usize,
}

impl RunLength {
    /// The length of `config`'s run over `train_images` images.
    ///
    /// # Errors
    ///
    /// [`TrainError::Dataset`] when the set is smaller than one batch.
    pub(crate) fn new(config: &RunConfig, train_images: usize) -> Result<Self, TrainError> {
        let t = &config.train;
        let steps_per_epoch = train_images / t.effective_batch();
        if steps_per_epoch == 0 {
            let batch = if t.accumulate > 1 {
                format!(
                    "train.batch_size × train.accumulate = {} × {} = {}",
                    t.batch_size,
                    t.accumulate,
                    t.effective_batch()
                )
            } else {
                format!("train.batch_size = {}", t.batch_size)
            };
            return Err(TrainError::Dataset(format!(
                "{}: {train_images} training images, fewer than {batch}",
                config.data.path.display(),
            )));
        }
        let mut total_steps = steps_per_epoch * t.epochs;
        if t.max_steps > 0 {
            total_steps = total_steps.min(t.max_steps);
        }
        Ok(Self {
            steps_per_epoch,
            total_steps,
            epochs: total_steps.div_ceil(steps_per_epoch),
            warmup_steps: (t.warmup_epochs * steps_per_epoch as f64).round() as usize,
        })
    }

    /// The learning rates, τ and forward options of the 0-based `step`.
    pub(crate) fn step_settings(&self, config: &RunConfig, step: usize) -> StepSettings {
        let t = &config.train;
        let lr = schedule::learning_rate(
            step,
            self.total_steps,
            self.warmup_steps,
            t.base_lr(),
            t.min_lr,
            t.lr_schedule == LrSchedule::Cosine,
        );
        StepSettings {
            lr,
            predictor_lr: lr * t.predictor_lr_multiplier,
            tau: schedule::tau(step, self.total_steps, t.tau_base),
            grad_clip_norm: t.grad_clip_norm,
            forward: ForwardOptions {
                concat_views: t.concat_views,
                precision: t.precision,
            },
            accumulate: t.accumulate,
            sync_batchnorm: t.sync_batchnorm,
            gather_representations: false,
        }
    }

    /// Whether `steps_done` steps end an epoch (or the run).
    pub(crate) fn ends_epoch(&self, steps_done: usize) -> bool {
        steps_done.is_multiple_of(self.steps_per_epoch) || steps_done == self.total_steps
    }

    /// The loader's plan from `start_step` on.
    pub(crate) fn plan(&self, config: &RunConfig, start_step: usize) -> Plan {
        Plan {
            seed: config.seed,
            batch_size: config.train.effective_batch(),
            steps_per_epoch: self.steps_per_epoch,
            total_steps: self.total_steps,
            start_step,
        }
    }
}

/// A point on the session's clock: when, the loader's total wait then, and
/// the images trained since.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    waited: Duration,
    images: usize,
}

impl Mark {
    fn now(waited: Duration) -> Self {
        Self {
            at: Instant::now(),
            waited,
            images: 0,
        }
    }

    /// (seconds since, share of them waiting for data, images per second).
    fn rates(&self, waited: Duration) -> (f64, f64, f64) {
        let seconds = self.at.elapsed().as_secs_f64().max(1e-9);
        let wait = (waited - self.waited).as_secs_f64();
        (seconds, wait / seconds, self.images as f64 / seconds)
    }
}

/// The time of this session, on top of what earlier sessions of the run
/// recorded in its state.
struct Clock {
    start: Instant,
    train_seconds_before: f64,
    wait_seconds_before: f64,
    last_log: Mark,
    /// This session's part of the epoch: after a resume mid-epoch the
    /// images before the checkpoint were not timed here.
    epoch: Mark,
}

impl Clock {
    /// A clock starting now, on top of the times `state` recorded.
    fn new(state: &TrainState) -> Self {
        Self {
            start: Instant::now(),
            train_seconds_before: state.train_seconds,
            wait_seconds_before: state.data_wait_seconds,
            last_log: Mark::now(Duration::ZERO),
            epoch: Mark::now(Duration::ZERO),
        }
    }
}

/// A run in progress.
/// A run's folder and whether this process writes it: a node of a
/// multi-node run other than 0 only reads it (a resume, from node 0's
/// checkpoints on a shared filesystem).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Folder<'a> {
    pub(crate) path: &'a Path,
    pub(crate) writes: bool,
}

pub(crate) struct Session<'a, B: AutodiffBackend, E>
where
    Byol<B, E>: AutodiffModule<B>,
{
    config: &'a RunConfig,
    out_dir: &'a Path,
    /// Whether this process writes the run folder (all but the nodes
    /// other than 0 of a multi-node run).
    writes: bool,
    device: &'a B::Device,
    stop: StopSignal,
    hooks: Hooks,
    data: RunData,
    length: RunLength,
    /// `None` only while a step has it.
    model: Option<Byol<B, E>>,
    optimizers: Optimizers<Byol<B, E>, B>,
    /// The online linear classifier (`eval.online_linear` with labels).
    online: Option<OnlineLinear<B>>,
    /// Whether the run has the classifier (on node 0): with several peers,
    /// every peer, on every node, then sends its shard's representations
    /// to rank 0 in each step, so that it trains on the whole global batch.
    gathers: bool,
    state: TrainState,
    metrics: MetricsLog,
    guard: CollapseGuard,
    bar: ProgressBar,
    clock: Clock,
    /// The losses of the epoch so far, summed on the device (read back
    /// only at epoch ends and checkpoints).
    loss_sum: Tensor<B::InnerBackend, 1>,
    resumed_from: Option<usize>,
    /// The checkpoint this session resumed from, whose optimizer states
    /// the data-parallel replicas load.
    resumed_dir: Option<PathBuf>,
    /// The data-parallel followers, when `train.devices` lists several.
    group: Option<Group>,
    /// The stall watch's record of the steps, with several peers.
    stall: Option<Progress>,
}

impl<'a, B, E> Session<'a, B, E>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    E::InnerModule: Encoder<B::InnerBackend>,
    Byol<B, E>: AutodiffModule<B>,
{
    /// Starts the run in `out_dir` afresh (measuring the kNN baselines) or,
    /// with `options.resume`, from its newest usable checkpoint.
    ///
    /// # Errors
    ///
    /// A set smaller than a batch, `[augment]` that does not fit the
    /// images, the model source's errors, no usable checkpoint (resume),
    /// output files.
    pub(crate) fn start(
        config: &'a RunConfig,
        folder: Folder<'a>,
        device: &'a B::Device,
        options: PretrainOptions,
        mut data: RunData,
        source: &dyn ModelSource<B, E>,
        hooks: Hooks,
    ) -> Result<Self, TrainError> {
        let Folder {
            path: out_dir,
            writes,
        } = folder;
        // known on every node: the data are the same
        let gathers = config.eval.online_linear && data.knn.is_some();
        if !writes {
            // node 0 runs the monitors, which read nothing from the others
            data.knn = None;
        }
        let length = RunLength::new(config, data.train.len())?;
        let channels = data.train.channels();
        config.augment.check_channels(channels)?;
        let (model, optimizers, state, metrics, resumed) = if options.resume {
            resume(config, folder, device, &length, channels, source)?
        } else {
            fresh(config, folder, device, channels, source)?
        };
        let resumed_at = resumed.as_ref().map(|(_, dir)| (dir.as_path(), &state));
        let online = online_linear(config, &data, &model, device, resumed_at)?;
        let (resumed_from, resumed_dir) = resumed.unzip();
        let bar = progress::bar(
            options.progress,
            length.total_steps,
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}",
        );
        bar.set_position(state.step as u64);
        let clock = Clock::new(&state);
        let loss_sum = Tensor::from_floats([state.epoch_loss_sum as f32], device);
        let mut session = Self {
            config,
            out_dir,
            writes,
            device,
            stop: options.stop,
            hooks,
            data,
            length,
            model: Some(model),
            optimizers,
            online,
            gathers,
            state,
            metrics,
            guard: CollapseGuard::new(&config.train, config.model.projection_dim),
            bar,
            clock,
            loss_sum,
            resumed_from,
            resumed_dir,
            group: None,
            stall: None,
        };
        if resumed_from.is_none() {
            session.measure_baselines()?;
        }
        byol_model::kernels::log_paths::<B>();
        tracing::info!(
            out = %out_dir.display(),
            train = session.data.train.len(),
            steps = length.total_steps,
            from = session.state.step,
            precision = %config.train.precision,
            "pretraining"
        );
        // training time starts here: the data scan and the baselines are
        // not part of it
        session.clock = Clock::new(&session.state);
        Ok(session)
    }

    /// The checkpoint step this session resumed from, if it did.
    pub(crate) fn resumed_from(&self) -> Option<usize> {
        self.resumed_from
    }

    /// The loader's plan for the rest of the run.
    pub(crate) fn plan(&self) -> Plan {
        self.length.plan(self.config, self.state.step)
    }

    /// The loader thread's upload of the views with one device; `None`
    /// with several peers, whose shards the step hands out.
    pub(crate) fn upload(&self) -> Option<Upload<B>> {
        self.group.is_none().then(|| Upload {
            device: self.device.clone(),
            channels: self.data.train.channels(),
            size: self.config.augment.size,
        })
    }

    /// The pretraining images.
    pub(crate) fn train_data(&self) -> std::sync::Arc<dyn byol_data::Dataset> {
        self.data.train.clone()
    }

    /// The kNN of raw pixels and of the random-init encoder, before the
    /// first step. A stop requested here skips them; the loop then stops
    /// after its first step.
    fn measure_baselines(&mut self) -> Result<(), TrainError> {
        let Some(knn) = &self.data.knn else {
            return Ok(());
        };
        let size = self.config.augment.size;
        if !knn.raw_pixels_fit(size) {
            tracing::info!(
                "no raw-pixel kNN baseline: {}×{size}×{size} images exceed {} values \
                 (byol_eval::RAW_PIXELS_MAX_VALUES)",
                knn.bank.channels(),
                byol_eval::RAW_PIXELS_MAX_VALUES
            );
        } else if let Some(raw) = self.knn_of(None)? {
            self.log_knn("raw_pixels", 0, raw)?;
            self.state.knn_raw_pixels = Some(raw);
        }
        let encoder = self.model().online.encoder.valid();
        if let Some(random) = self.knn_of(Some(&encoder))? {
            self.log_knn("random_init", 0, random)?;
            self.state.knn_random_init = Some(random);
            self.state.knn_trained = Some(random);
        }
        Ok(())
    }

    fn model(&self) -> &Byol<B, E> {
        self.model
            .as_ref()
            .expect("the model is in the session between steps")
    }

    /// One batch of the loop: the step, then whatever falls due after it
    /// (log interval, epoch end, checkpoint, stop). `views` are the
    /// batch's views already on the device (uploaded by the loader thread),
    /// or `None` to upload them from `batch` here. `waited` is the loader's
    /// total wait so far.
    ///
    /// # Errors
    ///
    /// [`TrainError::NonFinite`], [`TrainError::Collapsed`],
    /// [`TrainError::Interrupted`] (after its checkpoint), output errors.
    pub(crate) fn on_batch(
        &mut self,
        batch: Batch,
        views: Option<Views<B>>,
        waited: Duration,
    ) -> Result<(), TrainError> {
        let epoch = batch.epoch;
        let out = self.step(batch, views)?;
        let done = self.state.step;
        let total = self.length.total_steps;
        if done.is_multiple_of(self.config.train.log_every) || done == total {
            self.log_interval(out, epoch, waited)?;
        }
        let stall = self.stall.clone();
        if let Some(p) = &stall {
            p.stepped();
        }
        // evaluations and checkpoints are no stall
        let _busy = stall.as_ref().map(Progress::busy);
        let epoch_end = self.length.ends_epoch(done);
        if epoch_end {
            self.end_epoch(epoch, waited)?;
        }
        // a stop request at the last step changes nothing: the run ends
        // and saves as usual
        let stop = self.stop.requested() && done < total;
        let every = self.config.train.checkpoint_every;
        if epoch_end || stop || (every > 0 && done.is_multiple_of(every)) {
            self.checkpoint(waited)?;
        }
        if stop {
            return Err(TrainError::Interrupted {
                step: done,
                total,
                out: self.out_dir.to_path_buf(),
                nodes: self.config.train.nodes,
            });
        }
        if epoch_end {
            self.clock.epoch = Mark::now(waited);
        }
        Ok(())
    }

    /// The BYOL step of `batch` (with several peers, of rank 0's shard,
    /// the others' sent to them); its loss joins the epoch's sum on the
    /// device, unread.
    /// `views` are the whole batch's, already on the device, when the
    /// loader uploaded them (one device).
    ///
    /// # Errors
    ///
    /// With several peers, [`TrainError::Collective`] and a batch that
    /// skipped images left too small to share.
    fn step(
        &mut self,
        batch: Batch,
        views: Option<Views<B>>,
    ) -> Result<StepOutput<B::InnerBackend>, TrainError> {
        let _step = InStep::enter();
        self.bar
            .set_prefix(format!("epoch {}/{}", batch.epoch, self.length.epochs));
        for (name, reason) in &batch.skipped {
            self.bar
                .suspend(|| tracing::warn!("skipped {name}: {reason}"));
        }
        self.state.skipped_images += batch.skipped.len();
        let (c, size) = (self.data.train.channels(), self.config.augment.size);
        let per_image = c * size * size;
        let upload = |v: &[f32], r: &std::ops::Range<usize>| {
            Tensor::<B, 1>::from_floats(&v[r.start * per_image..r.end * per_image], self.device)
                .reshape([r.len(), c, size, size])
        };
        let mut settings = self.length.step_settings(self.config, batch.step);
        settings.gather_representations =
            self.group.is_some() && self.gathers && batch.labels.is_some();
        let model = self
            .model
            .take()
            .expect("the model is in the session between steps");
        let (trained, mine, (model, mut out)) = match &self.group {
            None => {
                let all = 0..batch.len;
                let (v1, v2) = views
                    .unwrap_or_else(|| (upload(&batch.view1, &all), upload(&batch.view2, &all)));
                let stepped = byol_step(model, &mut self.optimizers, v1, v2, &settings);
                (batch.len, all, stepped)
            }
            Some(group) => {
                let usable = group.usable(batch.len, settings.accumulate, batch.step)?;
                group.dispatch(&batch, usable, per_image, settings)?;
                let mine = group.leader().shard(usable);
                let (v1, v2) = (upload(&batch.view1, &mine), upload(&batch.view2, &mine));
                let leader = group.leader();
                let optimizers = &mut self.optimizers;
                let hooks = self.hooks;
                let stepped = catch_unwind(AssertUnwindSafe(|| {
                    hooks.panic_if(0, batch.step + 1);
                    peer_step(leader, model, optimizers, v1, v2, &settings)
                }));
                let stepped = match stepped {
                    Ok(stepped) => stepped,
                    Err(panic) => Err(TrainError::Collective(format!(
                        "peer 0 of {} panicked: {}",
                        leader.peers,
                        super::peers::panic_text(&*panic)
                    ))),
                };
                if let Err(e) = &stepped {
                    group.watchdog().failed(leader, &e.to_string());
                }
                let stepped = stepped?;
                group.collect()?;
                (usable, mine, stepped)
            }
        };
        self.model = Some(model);
        if let (Some(online), Some(labels)) = (&mut self.online, &batch.labels) {
            // with several peers, the whole global batch's, gathered
            let rows = if settings.gather_representations {
                0..trained
            } else {
                mine
            };
            online.train(out.representations.clone(), &labels[rows]);
        }
        if self.hooks.poisons(batch.step + 1) {
            out.loss = out.loss.mul_scalar(f64::NAN);
        }
        self.state.step = batch.step + 1;
        self.state.tau = settings.tau;
        self.state.lr = settings.lr;
        self.state.epoch_steps += 1;
        self.clock.last_log.images += trained;
        self.clock.epoch.images += trained;
        self.loss_sum = self.loss_sum.clone() + out.loss.clone();
        self.bar.inc(1);
        Ok(out)
    }

    /// Replicas of rank 0's networks and optimizers for the followers, one
    /// per device of `devices` (ranks 1, 2, …): networks built by `source`
    /// on their device with rank 0's weights loaded, optimizers fresh or
    /// loaded from the checkpoint this session resumed from.
    ///
    /// # Errors
    ///
    /// The source's errors, an unreadable optimizer state.
    pub(crate) fn replicas(
        &self,
        devices: &[B::Device],
        source: &dyn ModelSource<B, E>,
    ) -> Result<Vec<Replica<B, E>>, TrainError> {
        let channels = self.data.train.channels();
        let settings = self.config.train.optimizer_settings();
        devices
            .iter()
            .map(|device| {
                let model = replica(self.model(), source.skeleton(channels, device)?, device)?;
                let optimizers = Optimizers::new(&settings);
                let optimizers = match &self.resumed_dir {
                    Some(dir) => optimizers.load(dir, device)?,
                    None => optimizers,
                };
                Ok(Replica {
                    model,
                    optimizers,
                    device: device.clone(),
                })
            })
            .collect()
    }

    /// Has the session tell `progress` of every step, and of its work
    /// between steps.
    pub(crate) fn report_to(&mut self, stall: Progress) {
        self.stall = Some(stall);
    }

    /// Hands the session the followers' [`Group`] (`None` to take it back).
    pub(crate) fn set_group(&mut self, group: Option<Group>) -> Option<Group> {
        std::mem::replace(&mut self.group, group)
    }

    /// A log interval: the host reads the loss and the collapse monitors
    /// back (the loop's only synchronisation besides epoch ends and
    /// checkpoints), logs them and asks the collapse guard.
    fn log_interval(
        &mut self,
        out: StepOutput<B::InnerBackend>,
        epoch: usize,
        waited: Duration,
    ) -> Result<(), TrainError> {
        let step = self.state.step;
        let loss = readback::scalar(out.loss);
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step, loss });
        }
        let [_, dim] = out.representations.dims();
        let reps = readback::monitor_rows(out.representations, "representations")?;
        let projs = readback::monitor_rows(out.projections, "projections")?;
        let collapse = collapse_metrics(&reps, dim, &projs, self.config.model.projection_dim);
        let (_, wait_share, ips) = self.clock.last_log.rates(waited);
        let (tau, lr) = (self.state.tau, self.state.lr);
        self.bar.set_message(format!(
            "{ips:.0} img/s loss {loss:.4} z-std {:.3} τ {tau:.4} lr {lr:.2e}",
            collapse.z_std
        ));
        tracing::debug!(step, loss, tau, lr, z_std = collapse.z_std, "step");
        self.metrics.write(&Record::Step {
            step,
            epoch,
            loss,
            tau,
            lr,
            images_per_sec: ips,
            data_wait_fraction: wait_share,
            collapse,
        })?;
        self.clock.last_log = Mark::now(waited);
        if !self.writes {
            // the monitors are of this node's shard: node 0 alone judges
            // collapse (and tells the others when it stops the run)
            return Ok(());
        }
        match self
            .guard
            .observe(&mut self.state.low_z_std_intervals, collapse.z_std)
        {
            Verdict::Healthy => Ok(()),
            Verdict::Warn => {
                let (g, z) = (self.guard, collapse.z_std);
                self.bar.suspend(|| tracing::warn!(
                    "z-std {z:.4} below {:.4} for {} logged intervals: the representation may be collapsing (healthy ≈ {:.4})",
                    g.threshold, g.patience, g.healthy
                ));
                Ok(())
            }
            Verdict::Stop { threshold } => Err(TrainError::Collapsed {
                step,
                z_std: collapse.z_std,
                threshold,
            }),
        }
    }

    /// An epoch end: its mean loss (read back once), its record, and the
    /// kNN monitor when it falls due.
    fn end_epoch(&mut self, epoch: usize, waited: Duration) -> Result<(), TrainError> {
        let sum = readback::scalar(self.loss_sum.clone());
        let mean = f64::from(sum) / self.state.epoch_steps.max(1) as f64;
        if !mean.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.state.step,
                loss: mean as f32,
            });
        }
        let (seconds, wait_share, images_per_sec) = self.clock.epoch.rates(waited);
        let tau = self.state.tau;
        self.bar.suspend(|| tracing::info!(
            "epoch {epoch}: loss {mean:.4}, {images_per_sec:.0} img/s, {seconds:.1}s, data wait {:.1}%, τ {tau:.4}",
            100.0 * wait_share
        ));
        self.metrics.write(&Record::Epoch {
            epoch,
            step: self.state.step,
            loss: mean,
            seconds,
            images_per_sec,
            data_wait_fraction: wait_share,
        })?;
        self.state.last_epoch_loss = Some(mean);
        let due = epoch.is_multiple_of(self.config.eval.every_epochs)
            || self.state.step == self.length.total_steps;
        if self.data.knn.is_some() && due {
            let encoder = self.model().online.encoder.valid();
            match self.knn_of(Some(&encoder))? {
                Some(acc) => {
                    self.log_knn("epoch", epoch, acc)?;
                    self.state.knn_trained = Some(acc);
                }
                None => self.bar.suspend(|| {
                    tracing::info!("kNN of epoch {epoch} skipped: a stop was requested")
                }),
            }
        }
        self.score_online(epoch)?;
        self.state.epoch_loss_sum = 0.0;
        self.state.epoch_steps = 0;
        self.loss_sum = Tensor::zeros([1], self.device);
        Ok(())
    }

    /// The online linear classifier's test top-1/top-5 at the end of
    /// `epoch`, logged and recorded; skipped for a stop request.
    fn score_online(&mut self, epoch: usize) -> Result<(), TrainError> {
        let (Some(online), Some(knn)) = (&mut self.online, &self.data.knn) else {
            return Ok(());
        };
        let Some(model) = self.model.as_ref() else {
            return Ok(());
        };
        let encoder = model.online.encoder.valid();
        let settings = self.config.knn_monitor();
        let stop = || self.stop.requested();
        let features = self.bar.suspend(|| {
            byol_eval::extract_features_unless(
                &encoder,
                &*knn.queries,
                0,
                &settings.transform,
                settings.batch_size,
                self.device,
                &stop,
            )
        });
        let features = match features {
            Ok(f) => f,
            Err(byol_eval::EvalError::Stopped) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let score = online.end_epoch(features, &knn.query_labels)?;
        self.bar.suspend(|| {
            tracing::info!(
                "online linear epoch {epoch:>3}: top-1 {:.2}%  top-5 {:.2}%  (train loss {:.4})",
                100.0 * score.top1,
                100.0 * score.top5,
                score.train_loss
            )
        });
        self.state.online_linear_top1 = Some(score.top1);
        self.state.online_linear_top5 = Some(score.top5);
        self.metrics.write(&Record::OnlineLinear {
            epoch,
            step: self.state.step,
            train_loss: score.train_loss,
            top1: score.top1,
            top5: score.top5,
        })
    }

    /// Writes the checkpoint of the current step, unless the losses summed
    /// since the last epoch end are not finite (then the newest checkpoint
    /// stays the last good one).
    fn checkpoint(&mut self, waited: Duration) -> Result<(), TrainError> {
        let sum = readback::scalar(self.loss_sum.clone());
        if !sum.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.state.step,
                loss: sum,
            });
        }
        self.state.epoch_loss_sum = f64::from(sum);
        if let Some(online) = &self.online {
            (
                self.state.online_linear_loss_sum,
                self.state.online_linear_steps,
            ) = online.epoch_loss();
        }
        self.record_time(waited);
        if !self.writes {
            return Ok(());
        }
        let (model, optimizers, online) = (self.model(), &self.optimizers, &self.online);
        write_checkpoint(
            self.out_dir,
            &self.state,
            self.config.train.keep_checkpoints,
            |dir| {
                save_module::<B, _>(model.clone(), &dir.join("model.mpk"))?;
                optimizers.save(dir)?;
                online.as_ref().map_or(Ok(()), |o| o.save(dir))
            },
        )?;
        Ok(())
    }

    fn record_time(&mut self, waited: Duration) {
        self.state.train_seconds =
            self.clock.train_seconds_before + self.clock.start.elapsed().as_secs_f64();
        self.state.data_wait_seconds = self.clock.wait_seconds_before + waited.as_secs_f64();
    }

    /// The end of the loop: the clocks stop at the loader's total wait.
    pub(crate) fn end_loop(&mut self, waited: Duration) {
        self.record_time(waited);
    }

    /// An error ends the run: the bar stays where it stopped.
    pub(crate) fn abandon(&self) {
        self.bar.abandon();
    }

    /// The finish of a run that trained to its end: `encoder.mpk` (the
    /// online encoder alone) and `summary.json`.
    ///
    /// # Errors
    ///
    /// [`TrainError::Output`] naming the file.
    pub(crate) fn finish(self, started: Instant) -> Result<RunSummary, TrainError> {
        self.bar.finish_and_clear();
        let model = self.model();
        if self.writes {
            save_module::<B, _>(
                model.online.encoder.clone(),
                &self.out_dir.join("encoder.mpk"),
            )?;
        }
        let s = &self.state;
        let summary = RunSummary {
            knn_raw_pixels: s.knn_raw_pixels,
            knn_random_init: s.knn_random_init,
            knn_trained: s.knn_trained,
            online_linear_top1: s.online_linear_top1,
            online_linear_top5: s.online_linear_top5,
            steps: s.step,
            final_loss: s.last_epoch_loss.unwrap_or(f64::NAN),
            train_seconds: s.train_seconds,
            seconds: started.elapsed().as_secs_f64(),
            data_wait_fraction: s.data_wait_seconds / s.train_seconds.max(1e-9),
            skipped_images: s.skipped_images + self.data.train.skipped_count(),
            train_images: self.data.train.len(),
            resumed_from: self.resumed_from,
        };
        if !self.writes {
            return Ok(summary);
        }
        let path = self.out_dir.join("summary.json");
        let json = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Output {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &json)?;
        Ok(summary)
    }

    /// The kNN monitor on `encoder` (raw pixels when `None`); `None` when
    /// a stop was requested before it ended.
    fn knn_of(&self, encoder: Option<&E::InnerModule>) -> Result<Option<KnnAccuracy>, TrainError> {
        let Some(knn) = &self.data.knn else {
            return Ok(None);
        };
        let settings = self.config.knn_monitor();
        let stop = || self.stop.requested();
        let acc = self
            .bar
            .suspend(|| knn_eval(encoder, knn, &settings, self.device, &stop))?;
        Ok(acc)
    }

    fn log_knn(&mut self, name: &str, epoch: usize, acc: KnnAccuracy) -> Result<(), TrainError> {
        self.bar.suspend(|| {
            tracing::info!(
                "kNN {name:<12} epoch {epoch:>3}: top-1 {:.2}%  top-5 {:.2}%",
                100.0 * acc.top1,
                100.0 * acc.top5
            )
        });
        self.metrics.write(&Record::Knn {
            model: name.to_string(),
            epoch,
            step: self.state.step,
            top1: acc.top1,
            top5: acc.top5,
        })
    }
}

/// What a run starts from: the networks, optimizers, state and metrics
/// log, and the step and folder of the checkpoint it resumed from (`None`
/// for a fresh run).
type Resumed<B, E> = (
    Byol<B, E>,
    Optimizers<Byol<B, E>, B>,
    TrainState,
    MetricsLog,
    Option<(usize, std::path::PathBuf)>,
);

/// The online linear classifier of a run: `None` with
/// `eval.online_linear = false` or without the monitor's labelled splits;
/// restored from the checkpoint folder and state of a resumed run.
fn online_linear<B, E>(
    config: &RunConfig,
    data: &RunData,
    model: &Byol<B, E>,
    device: &B::Device,
    resumed: Option<(&Path, &TrainState)>,
) -> Result<Option<OnlineLinear<B>>, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    Byol<B, E>: AutodiffModule<B>,
{
    let Some(knn) = data.knn.as_ref().filter(|_| config.eval.online_linear) else {
        return Ok(None);
    };
    let classes = knn
        .bank_labels
        .iter()
        .chain(&knn.query_labels)
        .max()
        .map_or(1, |&m| m as usize + 1);
    let dim = model.online.encoder.output_dim();
    let seed = byol_augment::mix_seed(config.seed, 0x11ea, 0);
    let fresh = OnlineLinear::new(dim, classes, config.eval.online_linear_lr, seed, device);
    let Some((dir, state)) = resumed else {
        return Ok(Some(fresh));
    };
    let mut online = fresh.load(dir, device)?;
    online.continue_epoch(state.online_linear_loss_sum, state.online_linear_steps);
    Ok(Some(online))
}

/// What a fresh run starts from: new networks (their parameters numbered
/// alike on every node of a multi-node run) checked against the config,
/// fresh optimizers and state, and the metrics log, with the run folder
/// and its resolved config written where this process writes it.
fn fresh<B, E>(
    config: &RunConfig,
    folder: Folder<'_>,
    device: &B::Device,
    channels: usize,
    source: &dyn ModelSource<B, E>,
) -> Result<Resumed<B, E>, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    Byol<B, E>: AutodiffModule<B>,
{
    let mut model = source.fresh(channels, device)?;
    if config.train.nodes > 1 {
        model = crate::parallel::numbered_params(model);
    }
    config
        .train
        .check_encoder_precision(&model.online.encoder)?;
    config
        .train
        .check_encoder_batch_norm(&model.online.encoder)?;
    let out_dir = folder.path;
    let metrics = if folder.writes {
        std::fs::create_dir_all(out_dir).map_err(|e| TrainError::Output {
            path: out_dir.to_path_buf(),
            message: e.to_string(),
        })?;
        write_atomic(&out_dir.join("config.toml"), &config.to_toml()?)?;
        MetricsLog::create(&out_dir.join("metrics.jsonl"))?
    } else {
        MetricsLog::discard()
    };
    let settings = config.train.optimizer_settings();
    let state = TrainState::fresh(config.train.tau_base);
    Ok((model, Optimizers::new(&settings), state, metrics, None))
}

/// A resume with no checkpoint to resume from.
pub(crate) fn no_checkpoint(out_dir: &Path) -> TrainError {
    TrainError::Resume(format!(
        "{}: no usable checkpoint in {}",
        out_dir.display(),
        out_dir.join(CHECKPOINTS).display()
    ))
}

/// The newest usable checkpoint of the run in `out_dir`, checked to fit
/// `config`'s run; the resolved config is written back (a later plain
/// `--resume` continues with today's epochs and learning rate).
fn resume<B, E>(
    config: &RunConfig,
    folder: Folder<'_>,
    device: &B::Device,
    length: &RunLength,
    channels: usize,
    source: &dyn ModelSource<B, E>,
) -> Result<Resumed<B, E>, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    Byol<B, E>: AutodiffModule<B>,
{
    let out_dir = folder.path;
    source.validate(channels)?;
    let settings = config.train.optimizer_settings();
    let found = newest_usable(out_dir, |dir| {
        let skeleton = source.skeleton(channels, device)?;
        let model = load_module(skeleton, &dir.join("model.mpk"), device)?;
        let optimizers = Optimizers::new(&settings).load(dir, device)?;
        Ok((model, optimizers))
    });
    let Some((dir, state, (model, optimizers))) = found else {
        return Err(no_checkpoint(out_dir));
    };
    tracing::info!(step = state.step, path = %dir.display(), "resuming");
    let total = length.total_steps;
    let finished = state.step == total && out_dir.join("summary.json").exists();
    if state.step > total || finished {
        let t = &config.train;
        return Err(TrainError::Resume(format!(
            "{}: its checkpoint is at step {}, and this config ends at step {total} \
             (train.epochs = {} × {} steps{}); nothing to train. \
             To train further, raise train.epochs (--set train.epochs=N)",
            out_dir.display(),
            state.step,
            t.epochs,
            length.steps_per_epoch,
            if t.max_steps > 0 {
                format!(", train.max_steps = {}", t.max_steps)
            } else {
                String::new()
            }
        )));
    }
    let metrics = if folder.writes {
        write_atomic(&out_dir.join("config.toml"), &config.to_toml()?)?;
        MetricsLog::resume(&out_dir.join("metrics.jsonl"), state.step)?
    } else {
        MetricsLog::discard()
    };
    let from = state.step;
    Ok((model, optimizers, state, metrics, Some((from, dir))))
}

/// Checks the run folder before any work: a fresh run needs an empty one;
/// a resumed run's saved config must have the same [`RunIdentity`].
///
/// # Errors
///
/// [`TrainError::Output`] for a fresh run in a used folder,
/// [`TrainError::Resume`] naming every key that differs.
pub(crate) fn check_run_folder(
    config: &RunConfig,
    out_dir: &Path,
    resume: bool,
) -> Result<(), TrainError> {
    let config_path = out_dir.join("config.toml");
    if !resume {
        if config_path.exists() || out_dir.join(CHECKPOINTS).exists() {
            return Err(TrainError::Output {
                path: out_dir.to_path_buf(),
                message:
                    "already holds a run; pass --resume to continue it, or choose another --out"
                        .into(),
            });
        }
        return Ok(());
    }
    let saved = RunConfig::load(Some(&config_path), &[])
        .map_err(|e| TrainError::Resume(format!("{}: {e}", out_dir.display())))?;
    let conflicts = RunIdentity::of(&saved).differences(&RunIdentity::of(config));
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(TrainError::Resume(format!(
        "{} was trained with other settings; refusing to resume:\n  {}",
        out_dir.display(),
        conflicts.join("\n  ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(epochs: usize, max_steps: usize, warmup: f64) -> RunConfig {
        let mut c = RunConfig::default();
        c.train.epochs = epochs;
        c.train.max_steps = max_steps;
        c.train.batch_size = 100;
        c.train.warmup_epochs = warmup;
        c
    }

    #[test]
    fn run_length_drops_the_incomplete_batch_and_obeys_max_steps() {
        let l = RunLength::new(&config(3, 0, 0.5), 1_050).expect("fits");
        assert_eq!((l.steps_per_epoch, l.total_steps, l.epochs), (10, 30, 3));
        assert_eq!(l.warmup_steps, 5);
        let cut = RunLength::new(&config(3, 25, 0.0), 1_050).expect("fits");
        assert_eq!((cut.total_steps, cut.epochs), (25, 3));
        assert!(cut.ends_epoch(10) && cut.ends_epoch(25) && !cut.ends_epoch(24));
    }

    #[test]
    fn a_set_smaller_than_a_batch_is_refused_naming_the_key() {
        let err = RunLength::new(&config(1, 0, 0.0), 99).expect_err("too small");
        assert!(err.to_string().contains("train.batch_size = 100"), "{err}");
    }

    #[test]
    fn accumulation_counts_steps_of_the_effective_batch_and_scales_its_rate() {
        let mut c = config(2, 0, 0.0);
        c.train.accumulate = 4;
        c.train.lr_scale = crate::LrScale::Linear;
        let l = RunLength::new(&c, 1_000).expect("fits");
        // 1,000 images in steps of 100 × 4: 2 steps an epoch
        assert_eq!((l.steps_per_epoch, l.total_steps), (2, 4));
        assert_eq!(
            l.plan(&c, 0).batch_size,
            400,
            "the loader draws whole steps"
        );
        let s = l.step_settings(&c, 0);
        assert_eq!(s.accumulate, 4);
        assert_eq!(c.train.base_lr(), c.train.lr * 400.0 / 256.0);
        let err = RunLength::new(&c, 399).expect_err("less than one step");
        assert!(
            err.to_string()
                .contains("train.batch_size × train.accumulate = 100 × 4 = 400"),
            "{err}"
        );
    }

    #[test]
    fn step_settings_follow_the_schedules() {
        let mut c = config(2, 0, 0.0);
        c.train.predictor_lr_multiplier = 10.0;
        c.train.tau_base = 0.99;
        let l = RunLength::new(&c, 1_000).expect("fits");
        let first = l.step_settings(&c, 0);
        assert_eq!(first.tau, 0.99);
        assert_eq!(first.predictor_lr, 10.0 * first.lr);
        assert!((l.step_settings(&c, l.total_steps).tau - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_fresh_run_refuses_a_used_folder_and_a_resume_names_the_identity_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = RunConfig::default();
        check_run_folder(&c, dir.path(), false).expect("an empty folder is fine");
        std::fs::write(dir.path().join("config.toml"), c.to_toml().expect("toml")).expect("write");
        let err = check_run_folder(&c, dir.path(), false).expect_err("used");
        assert!(err.to_string().contains("--resume"), "{err}");
        check_run_folder(&c, dir.path(), true).expect("the same run resumes");
        let mut other = c.clone();
        other.train.epochs = 99; // a longer run is the same run
        check_run_folder(&other, dir.path(), true).expect("longer is fine");
        other.model.projection_dim = 64;
        other.seed = 7;
        let msg = check_run_folder(&other, dir.path(), true)
            .expect_err("another model")
            .to_string();
        assert!(
            msg.contains("model.projection_dim: run has 128, now 64"),
            "{msg}"
        );
        assert!(msg.contains("seed: run has 0, now 7"), "{msg}");
        assert!(!msg.contains("train.epochs"), "{msg}");
    }
}
