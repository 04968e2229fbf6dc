//! The pretraining loop. [`pretrain`] is a short driver over a
//! `Session` (a run in progress, `session.rs`): check the run folder, open
//! the data, start fresh or resume, feed it the loader's batches, finish.
//! What happens at each step, log interval, epoch end and checkpoint is a
//! method of the session; the collapse guard (`guard.rs`), where the
//! networks come from (`model.rs`) and the data of a run (`data.rs`) sit
//! beside it.

mod data;
mod guard;
mod model;
mod online;
mod peers;
mod plan;
mod readback;
mod session;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_eval::KnnAccuracy;
use byol_model::{Byol, Encoder, ResNet};
use serde::Serialize;

use crate::budget::{DataFacts, DeviceMemory};
use crate::loader::{Batch, with_prepared_loader};
use crate::nodes::{NodeLink, NodeSpec};
use crate::stall::Progress;
use crate::{RunConfig, TrainError};
use model::{Custom, ModelSource, ResNets, init_from};
pub use plan::{RunPlan, StepCounts, plan_run};
use session::{Folder, Session, check_run_folder};

/// The figures a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// kNN on raw pixels (the floor to beat); `None` without labelled
    /// train and test splits.
    pub knn_raw_pixels: Option<KnnAccuracy>,
    /// kNN of the encoder before training.
    pub knn_random_init: Option<KnnAccuracy>,
    /// kNN of the encoder after training.
    pub knn_trained: Option<KnnAccuracy>,
    /// Test top-1 of the online linear classifier after the last epoch;
    /// `None` with `eval.online_linear = false` or without labels.
    pub online_linear_top1: Option<f64>,
    /// Its top-5.
    pub online_linear_top5: Option<f64>,
    /// Optimizer steps done.
    pub steps: usize,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Training wall time (all sessions of a resumed run), seconds.
    pub train_seconds: f64,
    /// Wall time of this session, evaluation included, seconds.
    pub seconds: f64,
    /// Fraction of the training time spent waiting for data.
    pub data_wait_fraction: f64,
    /// Images skipped as unreadable (`data.on_corrupt = "skip"`).
    pub skipped_images: usize,
    /// Images of the pretraining set.
    pub train_images: usize,
    /// The step this session resumed from, if it did.
    pub resumed_from: Option<usize>,
}

/// How [`pretrain`] runs.
#[derive(Debug, Clone, Default)]
pub struct PretrainOptions {
    /// Show progress bars.
    pub progress: bool,
    /// Continue the run in the output folder from its newest valid
    /// checkpoint.
    pub resume: bool,
    /// Asks the run to stop early (on Ctrl-C, for one).
    pub stop: StopSignal,
    /// The memory the run may use: a run whose estimate exceeds it (or
    /// [`crate::budget::ABSURD_BYTES`], whatever it is) is refused before
    /// any work ([`crate::MemoryPlan::check`]).
    pub memory: DeviceMemory,
}

/// A request to stop a [`pretrain`] run before its end. The run notices it
/// after the step in flight, writes a checkpoint of that step and returns
/// [`TrainError::Interrupted`]; `--resume` continues from there. Clones
/// share one request, so a signal handler can hold [`StopSignal::flag`].
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// The shared flag: setting it to `true` requests the stop.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }

    /// Requests the stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Test-only interventions in a run, so that tests reach paths (a NaN
/// loss) that no config can ask for. Empty outside this crate's tests.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hooks {
    /// Make the loss of this step (1-based) NaN; 0 = never.
    #[cfg(test)]
    pub(crate) poison_step: usize,
    /// Make this peer (rank) panic in this step of its own (1-based; 0:
    /// as it registers, a follower only).
    #[cfg(test)]
    pub(crate) panic_peer: Option<(usize, usize)>,
    /// Make this peer (rank, a follower) hang for ever in this step of its
    /// own (1-based), as a hung device would.
    #[cfg(test)]
    pub(crate) hang_peer: Option<(usize, usize)>,
}

impl Hooks {
    /// Whether the loss of `step` (1-based) is to be made NaN.
    #[cfg(test)]
    fn poisons(&self, step: usize) -> bool {
        self.poison_step == step
    }

    #[cfg(not(test))]
    fn poisons(&self, _step: usize) -> bool {
        false
    }

    /// Panics when `rank` is to panic in its `step` (1-based).
    #[cfg(test)]
    fn panic_if(&self, rank: usize, step: usize) {
        if self.panic_peer == Some((rank, step)) {
            panic!("test hook: peer {rank} panics in step {step}");
        }
    }

    #[cfg(not(test))]
    fn panic_if(&self, _rank: usize, _step: usize) {}

    /// Hangs for ever when `rank` is to hang in its `step` (1-based).
    #[cfg(test)]
    fn hang_if(&self, rank: usize, step: usize) {
        if self.hang_peer == Some((rank, step)) {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }

    #[cfg(not(test))]
    fn hang_if(&self, _rank: usize, _step: usize) {}
}

/// Runs BYOL pretraining of the built-in ResNet encoder of `config.model`
/// as `config` says, in the run folder `out_dir`: `config.toml`
/// (resolved), `metrics.jsonl`, `checkpoints/step-N/`, `encoder.mpk` (the
/// online encoder alone) and `summary.json`.
///
/// Reports kNN accuracy of raw pixels, of the random-init encoder and of the
/// encoder every `eval.every_epochs` epochs, when the data has labelled
/// train and test splits. With `options.resume`, continues the run in
/// `out_dir` from its newest valid checkpoint; `config` must then have the
/// run's [`crate::config::RunIdentity`] (data, model, augmentation, seed,
/// batch size, `use_momentum`).
///
/// # Errors
///
/// Any [`TrainError`]: bad config values and a run that cannot fit in
/// `options.memory` ([`TrainError::TooLarge`]), both checked before any
/// work, data, output files, a resume that does not fit, a diverging loss
/// or collapse.
pub fn pretrain<B: AutodiffBackend>(
    config: &RunConfig,
    out_dir: &Path,
    device: &B::Device,
    options: PretrainOptions,
) -> Result<RunSummary, TrainError> {
    pretrain_on::<B>(config, out_dir, std::slice::from_ref(device), options)
}

/// [`pretrain`] data-parallel over `devices`, one peer each, as
/// `train.devices` lists them (resolved by the caller: the library does
/// not name backends): `train.batch_size` is the global batch, each peer
/// takes a fixed slice of it and the peers average their gradients before
/// every step (`crate::parallel`). Peer 0, on `devices[0]` and the calling
/// thread, logs, evaluates and writes the run folder. One device is
/// exactly [`pretrain`].
///
/// # Errors
///
/// As [`pretrain`]; [`TrainError::InvalidConfig`] naming `train.devices`
/// when `devices` does not match it; [`TrainError::Collective`] when the
/// peers cannot register or exchange.
pub fn pretrain_on<B: AutodiffBackend>(
    config: &RunConfig,
    out_dir: &Path,
    devices: &[B::Device],
    options: PretrainOptions,
) -> Result<RunSummary, TrainError> {
    config.validate()?;
    check_devices(config, devices.len())?;
    // checked before the data is scanned; a resumed run loads its weights
    // from the checkpoint instead
    let init_from = if options.resume {
        None
    } else {
        init_from(config)?
    };
    let source = ResNets { config, init_from };
    run::<B, ResNet<B>>(config, out_dir, devices, options, &source, Hooks::default())
}

/// Checks that the caller resolved `train.devices` into `given` devices.
fn check_devices(config: &RunConfig, given: usize) -> Result<(), TrainError> {
    let listed = config.train.peers();
    if given == listed {
        return Ok(());
    }
    Err(TrainError::InvalidConfig {
        key: "train.devices".into(),
        value: format!("{:?}", config.train.devices),
        expected: format!(
            "{given} device(s), the number the caller passed (pretrain takes one device; \
             pretrain_on one per entry of train.devices)"
        ),
    })
}

/// [`pretrain`] with an encoder of your own: `encoder(channels, device)`
/// returns a freshly initialised encoder for `channels`-channel images,
/// under the run's seed (called for the online network, for the target
/// when `train.use_momentum`, and again for each checkpoint tried when
/// resuming, whose weights then replace the fresh ones). The heads, optimizers, schedules, monitors,
/// checkpoints and resume are those of [`pretrain`]; the `[model]` keys
/// that describe the built-in ResNets (`encoder`, `stem`,
/// `width_multiplier`, `norm`, `norm_groups`) are not used, and
/// `model.init_from` is refused (it loads torchvision ResNet weights).
/// `cargo xtask eval`/`embed` read only the built-in ResNets; the saved
/// `encoder.mpk` loads into your encoder with burn's recorder.
///
/// # Errors
///
/// As [`pretrain`], and [`TrainError::InvalidConfig`] when
/// `model.init_from` is set.
pub fn pretrain_encoder<B, E>(
    config: &RunConfig,
    out_dir: &Path,
    device: &B::Device,
    options: PretrainOptions,
    encoder: impl Fn(usize, &B::Device) -> E,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    E::InnerModule: Encoder<B::InnerBackend>,
    Byol<B, E>: AutodiffModule<B>,
{
    config.validate()?;
    check_devices(config, 1)?;
    if !config.model.init_from.as_os_str().is_empty() {
        return Err(TrainError::InvalidConfig {
            key: "model.init_from".into(),
            value: config.model.init_from.display().to_string(),
            expected: "\"\" with an encoder of your own (it loads torchvision ResNet weights)"
                .into(),
        });
    }
    let source = Custom {
        config,
        build: encoder,
    };
    run::<B, E>(
        config,
        out_dir,
        std::slice::from_ref(device),
        options,
        &source,
        Hooks::default(),
    )
}

/// The driver: folder check, data, start or resume, the peers (several
/// `devices`), the loop, the finish.
fn run<B, E>(
    config: &RunConfig,
    out_dir: &Path,
    devices: &[B::Device],
    options: PretrainOptions,
    source: &dyn ModelSource<B, E>,
    hooks: Hooks,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    E::InnerModule: Encoder<B::InnerBackend>,
    Byol<B, E>: AutodiffModule<B>,
{
    let started = Instant::now();
    let Some((device, others)) = devices.split_first() else {
        return Err(TrainError::InvalidConfig {
            key: "train.devices".into(),
            value: "[]".into(),
            expected: "at least one device".into(),
        });
    };
    config.train.check_precision::<B>(device)?;
    // what cannot fit is refused before any work: first before the data is
    // read (a lower bound: the fewest channels, no monitor), then exactly,
    // before the networks are built
    source
        .memory_plan(config, &DataFacts::default())
        .check(options.memory)?;
    let stall = Progress::new(Duration::from_secs_f64(config.train.stall_timeout_s));
    let (link, writes, options) = join_nodes(config, out_dir, options, &stall)?;
    let data = data::open_data(config, options.progress)?;
    source
        .memory_plan(config, &data.facts())
        .check(options.memory)?;
    let layout = layout(link.as_ref(), devices.len())?;
    // burn's collective is one group per process: a second data-parallel
    // run waits here for the first to end
    let _group = layout.is_some().then(crate::parallel::group_lock);
    let folder = Folder {
        path: out_dir,
        writes,
    };
    // node 0's kNN baselines keep the other nodes waiting
    let busy = stall.busy();
    let opened = Session::start(config, folder, device, options, data, source, hooks);
    let mut session = checked_against_join(link.as_ref(), opened)?;
    drop(busy);
    let replicas = session.replicas(others, source)?;
    let shape = {
        let size = config.augment.size;
        [session.train_data().channels(), size, size]
    };
    let watchdog = peers::Watchdog::new(config.train.peer_failure_grace_s);
    let trained = std::thread::scope(|scope| {
        let followers = match &layout {
            None => None,
            Some(layout) => {
                let (group, followers) =
                    peers::start(scope, replicas, shape, device, &watchdog, hooks, layout)?;
                session.set_group(Some(group));
                session.report_to(stall.clone());
                watch_for_stalls(&stall, link.as_ref(), layout.peers);
                Some(followers)
            }
        };
        let trained = train_loop(config, &mut session);
        stall.end();
        // the other machines wait for this one in the next all-reduce:
        // they are told before its peers leave
        if let Some(link) = &link {
            link.ended(&trained);
        }
        // the followers end whatever the loop's outcome: the scope waits
        // for them
        let stopped = match (session.set_group(None), followers) {
            (Some(group), Some(followers)) => peers::stop(group, followers).map(drop),
            _ => Ok(()),
        };
        trained.and(stopped)
    });
    // every peer's thread has ended: nothing is left waiting
    watchdog.end();
    if let Some(link) = link {
        link.ended(&trained);
        if trained.is_ok() {
            link.finish();
        }
    }
    if let Err(e) = trained {
        session.abandon();
        return Err(e);
    }
    session.finish(started)
}

/// `opened`, a session just started, checked against the join: it must
/// have resumed from the step this node named there. A node that cannot
/// start after the join tells the others why.
fn checked_against_join<'a, B, E>(
    link: Option<&NodeLink>,
    opened: Result<Session<'a, B, E>, TrainError>,
) -> Result<Session<'a, B, E>, TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    E::InnerModule: Encoder<B::InnerBackend>,
    Byol<B, E>: AutodiffModule<B>,
{
    let Some(link) = link else {
        return opened;
    };
    let checked = opened.and_then(|s| link.check_resumed(s.resumed_from()).map(|()| s));
    if let Err(e) = &checked {
        link.failed(e);
    }
    checked
}

/// The peers of the run: those of every node, or the `devices` of this
/// process (`None` for one).
fn layout(link: Option<&NodeLink>, devices: usize) -> Result<Option<peers::Layout>, TrainError> {
    Ok(match link {
        Some(link) => Some(peers::Layout {
            first: link.first_peer(),
            peers: link.peers(),
            config: link.collective_config()?,
        }),
        None => (devices > 1).then(|| peers::Layout::local(devices)),
    })
}

/// Starts the stall watch of a data-parallel run of `peers` peers; with
/// several machines a stall is told to the other nodes.
fn watch_for_stalls(stall: &Progress, link: Option<&NodeLink>, peers: usize) {
    match link {
        Some(link) => stall.watch(
            format!("node {} of {}", link.rank(), link.nodes()),
            link.stall_teller(),
        ),
        None => stall.watch(format!("{peers} peers"), |_| {}),
    }
}

/// The run folder's check and, with several machines, the join: this
/// node's link to the others, whether it writes the run folder (node 0
/// does; the others read it when they resume), and the options with the
/// stop request the session is to obey.
///
/// # Errors
///
/// [`check_run_folder`]'s, and [`NodeLink::join`]'s.
fn join_nodes(
    config: &RunConfig,
    out_dir: &Path,
    mut options: PretrainOptions,
    stall: &Progress,
) -> Result<(Option<NodeLink>, bool, PretrainOptions), TrainError> {
    let t = &config.train;
    let writes = t.nodes <= 1 || t.node_rank == 0;
    if writes || options.resume {
        check_run_folder(config, out_dir, options.resume)?;
    }
    // every node names the checkpoint it will resume from at the join
    let resume_step = match (options.resume, t.nodes > 1) {
        (true, true) => Some(
            crate::checkpoint::newest_readable_step(out_dir)
                .ok_or_else(|| session::no_checkpoint(out_dir))?,
        ),
        _ => None,
    };
    let spec = NodeSpec::of(config, resume_step)?;
    let Some(spec) = spec else {
        return Ok((None, writes, options));
    };
    let link = NodeLink::join(spec, options.stop.clone(), stall.clone())?;
    options.stop = link.session_stop();
    Ok((Some(link), writes, options))
}

/// Feeds the session the loader's batches to the end of the run.
fn train_loop<B, E>(config: &RunConfig, session: &mut Session<'_, B, E>) -> Result<(), TrainError>
where
    B: AutodiffBackend,
    E: Encoder<B> + AutodiffModule<B>,
    E::InnerModule: Encoder<B::InnerBackend>,
    Byol<B, E>: AutodiffModule<B>,
{
    let (train, plan) = (session.train_data(), session.plan());
    let d = &config.data;
    // one device: the loader thread uploads the views; several: the
    // session hands each peer its shard
    let upload = session.upload();
    with_prepared_loader(
        &*train,
        plan,
        &config.augment,
        d.on_corrupt,
        d.prefetch,
        &|batch| upload.as_ref().map(|u| u.views(batch)),
        |loader| {
            while let Some((batch, views)) = loader.next_prepared()? {
                session.on_batch(batch, views, loader.waited())?;
            }
            session.end_loop(loader.waited());
            Ok(())
        },
    )
}

/// A batch's two views on the device, `[n, channels, size, size]` each.
pub(crate) type Views<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// The loader thread's upload of each batch's views to the device: the copy
/// overlaps the step in flight, and the host buffers are freed there.
pub(crate) struct Upload<B: Backend> {
    pub(crate) device: B::Device,
    pub(crate) channels: usize,
    pub(crate) size: usize,
}

impl<B: Backend> Upload<B> {
    fn views(&self, batch: &mut Batch) -> Views<B> {
        let shape = [batch.len, self.channels, self.size, self.size];
        let up = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, shape), &self.device);
        (
            up(std::mem::take(&mut batch.view1)),
            up(std::mem::take(&mut batch.view2)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    use crate::checkpoint::list_checkpoints;

    fn sample_config(overrides: &[&str]) -> RunConfig {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-sample");
        let mut all: Vec<String> = vec![
            format!("data.path={:?}", sample.display().to_string()),
            "data.train_limit=256".into(),
            "data.test_limit=100".into(),
            "train.batch_size=64".into(),
            "train.epochs=2".into(),
            "model.projector_hidden=64".into(),
            "model.predictor_hidden=64".into(),
            "model.projection_dim=16".into(),
        ];
        all.extend(overrides.iter().map(|s| s.to_string()));
        RunConfig::load(None, &all).expect("a valid test config")
    }

    fn run_with(
        config: &RunConfig,
        out: &Path,
        resume: bool,
        hooks: Hooks,
    ) -> Result<RunSummary, TrainError> {
        let options = PretrainOptions {
            resume,
            ..Default::default()
        };
        let source = ResNets {
            config,
            init_from: None,
        };
        run::<Autodiff<Flex>, ResNet<Autodiff<Flex>>>(
            config,
            out,
            &[Default::default()],
            options,
            &source,
            hooks,
        )
    }

    #[test]
    fn a_run_that_cannot_fit_is_refused_before_its_folder_is_made() {
        let out = tempfile::tempdir().expect("tempdir");
        let dir = out.path().join("run");
        let refuse = |config: &RunConfig, memory| {
            let options = PretrainOptions {
                memory,
                ..Default::default()
            };
            pretrain::<Autodiff<Flex>>(config, &dir, &Default::default(), options)
                .expect_err("refused")
        };
        let err = refuse(
            &sample_config(&["augment.size=100000"]),
            DeviceMemory::Unknown,
        );
        assert!(matches!(err, TrainError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("augment.size = 100000"), "{err}");
        // the sample fits a few MiB only once its data is known: refused
        // by the second check, after the data is read and before the folder
        let err = refuse(&sample_config(&[]), DeviceMemory::Shared(1 << 20));
        assert!(err.to_string().contains("1.0 MiB available"), "{err}");
        assert!(!dir.exists());
    }

    /// Hooks that make the loss of `step` (1-based) NaN.
    fn poisoned(step: usize) -> Hooks {
        Hooks {
            poison_step: step,
            ..Hooks::default()
        }
    }

    #[test]
    fn a_nan_loss_stops_the_run_and_leaves_the_last_checkpoint_loadable() {
        let config = sample_config(&["train.checkpoint_every=2", "train.log_every=3"]);
        let out = tempfile::tempdir().expect("tempdir");
        let err =
            run_with(&config, out.path(), false, poisoned(3)).expect_err("the NaN stops the run");
        assert!(
            matches!(err, TrainError::NonFinite { step: 3, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("NaN") && msg.contains("step"), "{msg}");
        let ckpts = list_checkpoints(out.path());
        assert_eq!(ckpts[0].0, 2, "nothing written after the NaN");
        let summary = run_with(&config, out.path(), true, Hooks::default())
            .expect("the checkpoint resumes once the poison is gone");
        assert_eq!(summary.resumed_from, Some(2));
        assert_eq!(summary.steps, 8);
        assert!(summary.final_loss.is_finite());
    }

    #[test]
    fn a_step_reads_nothing_back_and_the_log_intervals_read_three_tensors() {
        // 8 steps, logged at 3, 6 and 8, no checkpoint but the epoch ends'
        let config = sample_config(&["train.log_every=3", "train.checkpoint_every=0"]);
        let out = tempfile::tempdir().expect("tempdir");
        let (all0, in_steps0) = readback::counts();
        let summary = run_with(&config, out.path(), false, Hooks::default()).expect("a run");
        assert_eq!(summary.steps, 8);
        let (all, in_steps) = readback::counts();
        assert_eq!(in_steps - in_steps0, 0, "a step read a tensor back");
        // 3 log intervals × (loss, representations, projections), and at
        // each of the 2 epoch ends its loss sum, the checkpoint's loss sum
        // and the online classifier's loss, twice
        assert_eq!(all - all0, 3 * 3 + 2 * 4, "reads of the loop");
    }

    #[test]
    fn a_nan_between_log_intervals_is_caught_before_the_checkpoint() {
        // step 3 poisoned, logged only at 4: the loss sum read before the
        // step-4 checkpoint finds it
        let config = sample_config(&["train.checkpoint_every=4", "train.log_every=5"]);
        let out = tempfile::tempdir().expect("tempdir");
        let err =
            run_with(&config, out.path(), false, poisoned(3)).expect_err("the NaN stops the run");
        assert!(
            matches!(err, TrainError::NonFinite { step: 4, .. }),
            "{err}"
        );
        assert!(list_checkpoints(out.path()).is_empty());
    }

    /// The logged step losses of a run.
    fn step_losses(out: &Path) -> Vec<f32> {
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
        text.lines()
            .filter_map(|l| match serde_json::from_str(l).expect("a record") {
                crate::metrics::Record::Step { loss, .. } => Some(loss),
                _ => None,
            })
            .collect()
    }

    /// `one` run on one device (by `one_device`) and on two CPU peers
    /// (`train.sync_batchnorm` as `sync`): the two run folders and
    /// summaries, and the two peers' config.
    fn on_one_and_two(
        one: &RunConfig,
        sync: bool,
        one_device: impl FnOnce(&RunConfig, &Path) -> Result<RunSummary, TrainError>,
    ) -> ([tempfile::TempDir; 2], [RunSummary; 2], RunConfig) {
        let mut two = one.clone();
        two.train.devices = vec!["cpu".into(), "cpu".into()];
        two.train.sync_batchnorm = sync;
        let outs = [
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        ];
        let s1 = one_device(one, outs[0].path()).expect("one device");
        let s2 = pretrain_on::<Autodiff<Flex>>(
            &two,
            outs[1].path(),
            &[Default::default(), Default::default()],
            PretrainOptions::default(),
        )
        .expect("two peers");
        (outs, [s1, s2], two)
    }

    /// The logged losses of `set`'s 3-step run on one device (run by
    /// `one_device`) and on two CPU peers (`train.sync_batchnorm` as
    /// `sync`), and the two peers' config.
    fn one_and_two_peers(
        set: &[&str],
        sync: bool,
        one_device: impl FnOnce(&RunConfig, &Path) -> Result<RunSummary, TrainError>,
    ) -> (Vec<f32>, Vec<f32>, RunConfig) {
        let mut set = set.to_vec();
        set.extend([
            "train.max_steps=3",
            "train.log_every=1",
            "eval.monitor=false",
        ]);
        let ([out1, out2], [s1, s2], two) = on_one_and_two(&sample_config(&set), sync, one_device);
        assert_eq!((s1.steps, s2.steps), (3, 3));
        let (l1, l2) = (step_losses(out1.path()), step_losses(out2.path()));
        assert_eq!((l1.len(), l2.len()), (3, 3));
        (l1, l2, two)
    }

    #[test]
    fn two_cpu_peers_train_the_run_one_device_trains_without_batchnorm() {
        type A = Autodiff<Flex>;
        let set = ["model.norm=\"group_ws\"", "model.head_batchnorm=false"];
        let (l1, l2, two) = one_and_two_peers(&set, false, |config, out| {
            pretrain::<A>(config, out, &Default::default(), PretrainOptions::default())
        });
        for (a, b) in l1.iter().zip(&l2) {
            assert!((a - b).abs() <= 1e-5 * a.abs(), "losses {l1:?} vs {l2:?}");
        }
        // a config that lists two devices refuses one
        let out = tempfile::tempdir().expect("dir");
        let err = pretrain::<A>(
            &two,
            out.path(),
            &Default::default(),
            PretrainOptions::default(),
        )
        .expect_err("one device for two");
        assert!(err.to_string().contains("train.devices"), "{err}");
    }

    #[test]
    fn two_cpu_peers_train_the_online_classifier_on_the_whole_global_batch() {
        // without BatchNorm two peers compute what one device computes; the
        // classifier of rank 0 then trains on every peer's images, not on
        // its own shard alone (it did until 2026-12-07: its training loss
        // was that of half the batch)
        type A = Autodiff<Flex>;
        let one = sample_config(&[
            "model.norm=\"group_ws\"",
            "model.head_batchnorm=false",
            "train.max_steps=3",
            "eval.online_linear_lr=0.05",
        ]);
        let ([out1, out2], [s1, s2], _) = on_one_and_two(&one, false, |config, out| {
            pretrain::<A>(config, out, &Default::default(), PretrainOptions::default())
        });
        let scores = |out: &Path| -> Vec<(f64, f64)> {
            let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
            text.lines()
                .filter_map(|l| match serde_json::from_str(l).expect("a record") {
                    crate::metrics::Record::OnlineLinear {
                        train_loss, top1, ..
                    } => Some((train_loss, top1)),
                    _ => None,
                })
                .collect()
        };
        let (a, b) = (scores(out1.path()), scores(out2.path()));
        assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
        let ((loss1, top1_1), (loss2, top1_2)) = (a[0], b[0]);
        assert!(
            (loss1 - loss2).abs() <= 1e-4 * loss1,
            "classifier training loss: one device {loss1}, two peers {loss2}"
        );
        assert_eq!(top1_1, top1_2);
        assert_eq!(s1.online_linear_top1, s2.online_linear_top1);
    }

    /// The child process of
    /// [`a_peer_that_fails_mid_run_ends_the_process_naming_it_instead_of_hanging`]:
    /// two peers, one of which (`BYOL_TEST_PANIC_RANK`) panics in its
    /// second step, with a checkpoint after the first. It ends its process
    /// (that is what it shows), so it runs only there.
    #[test]
    #[ignore = "a subprocess of a_peer_that_fails_mid_run_...: it exits its process"]
    fn child_two_peers_one_of_which_panics() {
        let number = |var: &str| -> usize {
            std::env::var(var)
                .unwrap_or_else(|_| panic!("{var}"))
                .parse()
                .expect("a number")
        };
        let (rank, step) = (
            number("BYOL_TEST_PANIC_RANK"),
            number("BYOL_TEST_PANIC_STEP"),
        );
        let out = std::env::var("BYOL_TEST_OUT").expect("BYOL_TEST_OUT");
        let hang = std::env::var("BYOL_TEST_HANG").is_ok();
        let mut config = sample_config(&[
            "train.max_steps=4",
            "train.checkpoint_every=1",
            "eval.monitor=false",
            "train.peer_failure_grace_s=1",
        ]);
        config.train.devices = vec!["cpu".into(), "cpu".into()];
        if hang {
            config.train.stall_timeout_s = 2.0;
        }
        let source = ResNets {
            config: &config,
            init_from: None,
        };
        let hooks = Hooks {
            panic_peer: (!hang).then_some((rank, step)),
            hang_peer: hang.then_some((rank, step)),
            ..Hooks::default()
        };
        let result = run::<Autodiff<Flex>, ResNet<Autodiff<Flex>>>(
            &config,
            Path::new(&out),
            &[Default::default(), Default::default()],
            PretrainOptions::default(),
            &source,
            hooks,
        );
        // reached only if the run ended by itself
        match result {
            Err(e) => {
                eprintln!("the run ended by itself: {e}");
                std::process::exit(3);
            }
            Ok(_) => {
                eprintln!("the run finished");
                std::process::exit(4);
            }
        }
    }

    /// [`child_two_peers_one_of_which_panics`] in a process of its own,
    /// peer `rank` panicking (or with `hang`, hanging) in its `step`: its
    /// exit code, its stderr and the checkpoints it left.
    fn failing_child(
        rank: usize,
        step: usize,
        hang: bool,
    ) -> (Option<i32>, String, Vec<(usize, std::path::PathBuf)>) {
        let out = tempfile::tempdir().expect("dir");
        let run = out.path().join("run");
        let mut command = std::process::Command::new(std::env::current_exe().expect("exe"));
        command
            .args([
                "--ignored",
                "--exact",
                "trainer::tests::child_two_peers_one_of_which_panics",
                "--nocapture",
            ])
            .env("BYOL_TEST_PANIC_RANK", rank.to_string())
            .env("BYOL_TEST_PANIC_STEP", step.to_string())
            .env("BYOL_TEST_OUT", &run)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if hang {
            command.env("BYOL_TEST_HANG", "1");
        }
        let mut child = command.spawn().expect("the test binary again");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > std::time::Duration::from_secs(300) {
                let _ = child.kill();
                panic!("peer {rank} failed and the run hung (killed after 300 s)");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        (status.code(), stderr, list_checkpoints(&run))
    }

    #[test]
    fn a_peer_that_fails_mid_run_ends_the_process_naming_it_instead_of_hanging() {
        // (rank, its step): a follower in step 2, rank 0 in step 2, a
        // follower as it registers (rank 0 then waits in its own)
        for (rank, step) in [(1, 2), (0, 2), (1, 0)] {
            let (code, stderr, kept) = failing_child(rank, step, false);
            // A follower that panics leaves rank 0 in an all-reduce: the
            // watchdog ends the process. Rank 0 panicking before its
            // all-reduce lets the run end by itself with an error (its
            // leaving the group fails the follower's all-reduce); either
            // way the error names the peer.
            if rank == 0 {
                assert!(
                    [Some(peers::EXIT_PEER_FAILED), Some(3)].contains(&code),
                    "peer 0: {code:?}: {stderr}"
                );
            } else {
                assert_eq!(code, Some(peers::EXIT_PEER_FAILED), "peer {rank}: {stderr}");
                let named = format!("peer {rank} of 2 failed");
                assert!(stderr.contains(&named), "{named:?} not in: {stderr}");
            }
            let named = format!("peer {rank} of 2 panicked");
            assert!(stderr.contains(&named), "{named:?} not in: {stderr}");
            // the checkpoint of step 1 is whole: a run can resume from it
            assert_eq!(kept.len(), usize::from(step > 1), "{kept:?}");
        }
    }

    #[test]
    fn a_peer_stuck_in_a_step_ends_the_process_after_the_stall_timeout() {
        // a follower hangs in its second step, as on a hung device: rank 0
        // waits in the all-reduce, which has no timeout, until the stall
        // watch (2 s, or 20 × the slowest step) ends the process
        let (code, stderr, kept) = failing_child(1, 2, true);
        assert_eq!(code, Some(crate::stall::EXIT_STALLED), "{stderr}");
        assert!(
            stderr.contains("2 peers: no step has finished for")
                && stderr.contains("train.stall_timeout_s = 2 s"),
            "{stderr}"
        );
        // the checkpoint of step 1 is whole
        assert_eq!(kept.iter().map(|c| c.0).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn two_cpu_peers_with_synchronised_batchnorm_train_the_run_one_device_trains() {
        type A = Autodiff<Flex>;
        // SGD: Adam's first step is the sign of each gradient element, which
        // turns the rounding of near-zero ones into whole steps (with Adam
        // the losses part by 1.1e-5 relative at step 2; measured 2026-12-01)
        let set = ["train.optimizer=\"sgd\"", "train.lr=0.01"];
        // The one device normalises by the peers' formula (two passes of
        // tensor sums), with a sum over its one replica: our fused Flex
        // BatchNorm agrees with it per layer to 3e-6 (norm.rs's tests) but
        // three SGD steps through seven BatchNorm layers magnify that to
        // 7e-4 of the loss (measured 2026-12-01 at lr 0.05), which would
        // hide what this test is for.
        let (l1, l2, _) = one_and_two_peers(&set, true, |config, out| {
            let alone = byol_model::CrossReplica::<A> {
                sum: std::sync::Arc::new(|t| t),
                replicas: 1,
            };
            byol_model::with_cross_replica(alone, || {
                pretrain::<A>(config, out, &Default::default(), PretrainOptions::default())
            })
        });
        // the first step's forward is the same computation (measured equal
        // to the last bit); later steps part by the rounding of sums taken
        // over two halves, which BatchNorm magnifies, by how much depends on
        // the CPU's GEMM kernels: at step 3, 2.3e-5 relative on an AVX-512
        // Intel Xeon, 1.2e-4 on an AVX2-only AMD EPYC (2026-12-07, which
        // failed the 1e-4 this test had). Without the all-reduce in the
        // backward the losses part by 1.4e-2 at step 2 and 6e-2 at step 3
        // (measured on the AMD), so 1e-3 still tells the two apart.
        // parallel.rs's test of the step holds the weights to 1e-5.
        assert!(
            (l1[0] - l2[0]).abs() <= 1e-6 * l1[0].abs(),
            "{l1:?} vs {l2:?}"
        );
        for (a, b) in l1.iter().zip(&l2) {
            assert!((a - b).abs() <= 1e-3 * a.abs(), "losses {l1:?} vs {l2:?}");
        }
    }
}
