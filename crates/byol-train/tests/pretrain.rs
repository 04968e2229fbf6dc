//! End to end: short pretraining runs on real images from the shipped
//! Fashion-MNIST sample.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use byol_data::{Dataset, IdxDataset, Split};
use byol_eval::extract_features;
use byol_train::checkpoint::{CHECKPOINTS, list_checkpoints, load_module};
use byol_train::{Network, PretrainOptions, Run, RunConfig, StopSignal, TrainError, UseOptions};

type B = Autodiff<Flex>;

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-sample")
}

fn config(overrides: &[&str]) -> RunConfig {
    let mut all: Vec<String> = vec![
        format!("data.path={:?}", sample_dir().display().to_string()),
        "data.train_limit=384".into(),
        "data.test_limit=200".into(),
        "train.batch_size=64".into(),
        "train.epochs=3".into(),
        "train.log_every=1".into(),
        "train.tau_base=0.99".into(),
        "model.projector_hidden=128".into(),
        "model.predictor_hidden=128".into(),
        "model.projection_dim=32".into(),
        "augment.mean=[0.286]".into(),
        "augment.std=[0.353]".into(),
    ];
    all.extend(overrides.iter().map(|s| s.to_string()));
    RunConfig::load(None, &all).expect("test config should be valid")
}

/// `byol_train::pretrain` on the default device with `options`.
fn pretrain_with(
    config: &RunConfig,
    out: &Path,
    options: PretrainOptions,
) -> Result<byol_train::RunSummary, TrainError> {
    byol_train::pretrain::<B>(config, out, &Default::default(), options)
}

fn run(config: &RunConfig, out: &Path) -> Result<byol_train::RunSummary, TrainError> {
    pretrain_with(config, out, PretrainOptions::default())
}

fn resume(config: &RunConfig, out: &Path) -> Result<byol_train::RunSummary, TrainError> {
    pretrain_with(
        config,
        out,
        PretrainOptions {
            resume: true,
            ..Default::default()
        },
    )
}

/// A run (`resume`: resumed) asked to stop before it starts, as by Ctrl-C;
/// the error it ends with.
fn stopped_at_once(config: &RunConfig, out: &Path, resume: bool) -> TrainError {
    let stop = StopSignal::default();
    stop.request();
    pretrain_with(
        config,
        out,
        PretrainOptions {
            resume,
            stop,
            ..Default::default()
        },
    )
    .expect_err("the stop request ends the run early")
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl should exist")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line should be JSON"))
        .collect()
}

/// The records without the fields that measure time.
fn deterministic(dir: &Path) -> Vec<serde_json::Value> {
    records(dir)
        .into_iter()
        .map(|mut r| {
            if let Some(o) = r.as_object_mut() {
                for key in ["images_per_sec", "seconds", "data_wait_fraction"] {
                    o.remove(key);
                }
            }
            r
        })
        .collect()
}

#[test]
fn short_run_lowers_loss_and_writes_a_usable_encoder() {
    let out = tempfile::tempdir().expect("tempdir");
    let config = config(&["eval.online_linear_lr=0.02"]);
    let summary = run(&config, out.path()).expect("run should finish");
    assert_eq!(summary.steps, 3 * (384 / 64));

    for file in [
        "config.toml",
        "metrics.jsonl",
        "encoder.mpk",
        "summary.json",
    ] {
        assert!(
            out.path().join(file).is_file(),
            "{file} should be in the run folder"
        );
    }
    let checkpoints = list_checkpoints(out.path());
    assert_eq!(checkpoints[0].0, 18, "the last checkpoint is the last step");
    for file in [
        "model.mpk",
        "optimizer.mpk",
        "optimizer-predictor.mpk",
        "state.json",
    ] {
        assert!(
            checkpoints[0].1.join(file).is_file(),
            "{file} should be in the checkpoint"
        );
    }
    // the resolved config reloads to the same values
    let resolved =
        RunConfig::load(Some(&out.path().join("config.toml")), &[]).expect("resolved config loads");
    assert_eq!(resolved, config);

    let recs = records(out.path());
    let epoch_losses: Vec<f64> = recs
        .iter()
        .filter(|r| r["kind"] == "epoch")
        .map(|r| r["loss"].as_f64().expect("loss is a number"))
        .collect();
    assert_eq!(epoch_losses.len(), 3);
    assert!(
        epoch_losses
            .iter()
            .all(|l| l.is_finite() && (0.0..=4.0).contains(l)),
        "{epoch_losses:?}"
    );
    assert!(
        epoch_losses[2] < epoch_losses[0],
        "loss should go down: {epoch_losses:?}"
    );
    let steps: Vec<&serde_json::Value> = recs.iter().filter(|r| r["kind"] == "step").collect();
    assert_eq!(steps.len(), 18);
    for s in &steps {
        let z = s["z_std"].as_f64().expect("z_std logged");
        assert!(z > 0.0 && z <= 1.0, "z-std {z}");
        assert!(s["effective_rank"].as_f64().expect("rank logged") >= 1.0);
        assert!(s["repr_variance"].as_f64().expect("variance logged") > 0.0);
    }
    let knn: Vec<&str> = recs
        .iter()
        .filter(|r| r["kind"] == "knn")
        .map(|r| r["model"].as_str().expect("model name"))
        .collect();
    assert_eq!(
        knn,
        ["raw_pixels", "random_init", "epoch", "epoch", "epoch"]
    );
    // the online linear classifier, scored at every epoch end
    let online: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["kind"] == "online_linear")
        .collect();
    assert_eq!(online.len(), 3, "one per epoch");
    let top1 = |r: &serde_json::Value| r["top1"].as_f64().expect("top1");
    assert!(
        online
            .iter()
            .all(|r| r["train_loss"].as_f64().is_some_and(f64::is_finite))
    );
    assert_eq!(summary.online_linear_top1, Some(top1(online[2])));
    assert!(
        top1(online[2]) > 0.15 && top1(online[2]) > top1(online[0]),
        "10 classes: the classifier learns, beyond chance (0.1): {online:?}"
    );
    assert!(
        checkpoints[0].1.join("online-linear.mpk").is_file(),
        "the classifier is checkpointed"
    );
    let raw = summary.knn_raw_pixels.expect("the sample is labelled");
    assert!(
        raw.top1 > 0.5,
        "raw pixels should classify the sample: {summary:?}"
    );

    // the saved encoder loads into a fresh network and gives finite features
    let device = Default::default();
    let fresh = config.model.encoder_config(1).init::<Flex>(&device);
    let encoder =
        load_module(fresh, &out.path().join("encoder.mpk"), &device).expect("encoder.mpk loads");
    let features = test_features(&config, &encoder);
    assert_eq!(features.dims(), [64, 128]);
    let values = features.into_data().to_vec::<f32>().expect("f32");
    assert!(values.iter().all(|v| v.is_finite()));
    assert!(
        values.iter().any(|v| *v != 0.0),
        "features should not be all zero"
    );
}

/// Features of the first 64 sample test images.
fn test_features(config: &RunConfig, encoder: &byol_model::ResNet<Flex>) -> Tensor<Flex, 2> {
    let test = IdxDataset::load_dir(sample_dir(), Split::Test).expect("sample loads");
    extract_features(
        encoder,
        &test as &dyn Dataset,
        64,
        &config.augment.eval_transform(),
        32,
        &Default::default(),
        &|_| {},
    )
    .expect("features")
}

#[test]
fn the_target_encoder_is_read_from_the_newest_checkpoint_and_evaluated() {
    let out = tempfile::tempdir().expect("tempdir");
    // a fast-moving average, so that target and online differ clearly
    let config = config(&[
        "train.epochs=1",
        "train.max_steps=4",
        "train.tau_base=0.5",
        "eval.probe.epochs=5",
    ]);
    let summary = run(&config, out.path()).expect("run should finish");
    let device = Default::default();
    let run = Run::open(out.path()).expect("run folder");
    let target = run
        .load_network::<Flex>(Network::Target, &device)
        .expect("the target loads");
    let newest = &list_checkpoints(out.path())[0];
    assert_eq!(target.step, Some(4));
    assert_eq!(target.weights, newest.1.join("model.mpk"));
    let online = run
        .load_network::<Flex>(Network::Online, &device)
        .expect("the online encoder loads");
    assert_eq!(online.weights, out.path().join("encoder.mpk"));

    // the same as the target network of the checkpoint loaded by hand, and
    // not the online encoder
    let encoder = config.model.encoder_config(1);
    // drawn under the guard, not to disturb the runs of the tests beside it
    let byol = {
        let _generator = byol_model::seeded::<Flex>(&device, 0);
        byol_model::Byol::new(
            encoder.init::<Flex>(&device),
            Some(encoder.init::<Flex>(&device)),
            &config.model.heads_config(),
            &device,
        )
    };
    let byol = load_module(byol, &newest.1.join("model.mpk"), &device).expect("model.mpk loads");
    let by_hand = byol.target.expect("a BYOL checkpoint has a target").encoder;
    let values = |e| -> Vec<f32> { test_features(&config, e).into_data().to_vec().expect("f32") };
    let t = values(&target.encoder);
    assert_eq!(t, values(&by_hand));
    assert_ne!(t, values(&online.encoder));

    let report = byol_train::evaluate_run::<B>(
        &run,
        Network::Target,
        &config,
        &device,
        UseOptions::default(),
    )
    .expect("the target evaluates");
    assert_eq!(report.step, Some(4));
    assert!(report.knn.top1 > 0.3, "{report:?}");
    // the floor at the same k, as the pretraining measured it
    assert_eq!(report.knn_raw_pixels, summary.knn_raw_pixels, "{report:?}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("eval-target.json")).expect("eval-target.json"),
    )
    .expect("JSON");
    assert_eq!(json["network"], "target");
    assert!(
        !out.path().join("eval.json").exists(),
        "the online encoder's report is not overwritten"
    );
}

#[test]
fn a_resumed_run_ends_exactly_as_an_uninterrupted_one() {
    let overrides = ["train.checkpoint_every=4", "train.keep_checkpoints=10"];
    let config = config(&overrides);
    let full = tempfile::tempdir().expect("tempdir");
    run(&config, full.path()).expect("uninterrupted run");

    // the state of a run that died at step 10, mid-epoch 2: its newest
    // checkpoint is step 8, its log ran ahead, and a checkpoint was torn
    let cut = tempfile::tempdir().expect("tempdir");
    let log = copy_run(full.path(), cut.path(), 8, 10);
    std::fs::create_dir(cut.path().join(CHECKPOINTS).join(".step-000000012.partial"))
        .expect("mkdir");
    std::fs::write(
        cut.path().join("metrics.jsonl"),
        log.join("\n") + "\n{\"kind\":\"st",
    )
    .expect("write");

    let summary = resume(&config, cut.path()).expect("resumed run");
    assert_eq!(summary.resumed_from, Some(8));
    assert_eq!(deterministic(full.path()), deterministic(cut.path()));
    let full_summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(full.path().join("summary.json")).expect("summary"),
    )
    .expect("json");
    assert_eq!(
        full_summary["knn_trained"],
        serde_json::to_value(summary.knn_trained).expect("json")
    );
    assert_eq!(
        full_summary["final_loss"],
        serde_json::json!(summary.final_loss)
    );

    // the same run resumed from step 4 and asked to stop (Ctrl-C) at once:
    // it ends step 5, saves it although 5 is no multiple of
    // checkpoint_every, and a second resume reaches the same end
    let stopped = tempfile::tempdir().expect("tempdir");
    copy_run(full.path(), stopped.path(), 4, 4);
    let err = stopped_at_once(&config, stopped.path(), true);
    assert!(
        matches!(
            err,
            TrainError::Interrupted {
                step: 5,
                total: 18,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--resume"), "{err}");
    assert_eq!(list_checkpoints(stopped.path())[0].0, 5);
    assert!(!stopped.path().join("summary.json").exists());
    let summary = resume(&config, stopped.path()).expect("resumed after the stop");
    assert_eq!(summary.resumed_from, Some(5));
    assert_eq!(deterministic(full.path()), deterministic(stopped.path()));
}

/// Copies the run in `from` as a run that died after `log_step`: its config,
/// its checkpoints up to `last_checkpoint` and its log up to `log_step`.
/// Returns the log's lines.
fn copy_run(from: &Path, to: &Path, last_checkpoint: usize, log_step: u64) -> Vec<String> {
    let ckpts = to.join(CHECKPOINTS);
    std::fs::create_dir_all(&ckpts).expect("mkdir");
    std::fs::copy(from.join("config.toml"), to.join("config.toml")).expect("copy");
    for (step, dir) in list_checkpoints(from) {
        if step <= last_checkpoint {
            let dst = ckpts.join(dir.file_name().expect("name"));
            std::fs::create_dir(&dst).expect("mkdir");
            for f in std::fs::read_dir(&dir).expect("read") {
                let f = f.expect("entry").path();
                std::fs::copy(&f, dst.join(f.file_name().expect("name"))).expect("copy");
            }
        }
    }
    let log: Vec<String> = std::fs::read_to_string(from.join("metrics.jsonl"))
        .expect("log")
        .lines()
        .map(String::from)
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["step"].as_u64().expect("step") <= log_step
        })
        .collect();
    std::fs::write(to.join("metrics.jsonl"), log.join("\n") + "\n").expect("write");
    log
}

#[test]
fn runs_started_at_once_in_one_process_start_from_the_same_weights() {
    // burn's RNG is global to the process; the runs' initialisations hold
    // it in turn (byol_model::seeded), so concurrent runs of one seed agree
    let config = config(&["train.epochs=1", "train.max_steps=2"]);
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    std::thread::scope(|s| {
        for dir in &dirs {
            let config = &config;
            s.spawn(move || run(config, dir.path()).expect("run should finish"));
        }
    });
    let first = deterministic(dirs[0].path());
    assert!(first.iter().any(|r| r["model"] == "random_init"));
    for dir in &dirs[1..] {
        assert_eq!(deterministic(dir.path()), first);
    }
}

#[test]
fn a_stop_skips_the_knn_evaluations_instead_of_waiting_for_them() {
    // one step an epoch: the first step ends an epoch, so a stop requested
    // from the start meets the baselines, then an epoch-end kNN
    let config = config(&["data.train_limit=64", "train.epochs=3"]);
    let out = tempfile::tempdir().expect("tempdir");
    let err = stopped_at_once(&config, out.path(), false);
    assert!(
        matches!(
            err,
            TrainError::Interrupted {
                step: 1,
                total: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(list_checkpoints(out.path())[0].0, 1);
    let knn = |dir: &Path| -> Vec<(String, u64)> {
        records(dir)
            .iter()
            .filter(|r| r["kind"] == "knn")
            .map(|r| {
                let model = r["model"].as_str().expect("model name").to_string();
                (model, r["epoch"].as_u64().expect("epoch"))
            })
            .collect()
    };
    assert_eq!(knn(out.path()), [], "no evaluation ran");
    resume(&config, out.path()).expect("resumed after the stop");
    // the skipped evaluations stay skipped; the later epochs are evaluated
    assert_eq!(
        knn(out.path()),
        [("epoch".to_string(), 2), ("epoch".to_string(), 3)]
    );
}

#[test]
fn an_unusable_newest_checkpoint_falls_back_to_the_one_before() {
    let config = config(&[
        "train.epochs=2",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=3",
    ]);
    let out = tempfile::tempdir().expect("tempdir");
    run(&config, out.path()).expect("run");
    let ckpts = list_checkpoints(out.path());
    assert_eq!(
        ckpts.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![12, 9, 6]
    );
    // the newest model file is torn
    std::fs::write(ckpts[0].1.join("model.mpk"), b"torn").expect("write");
    let summary = resume(&config, out.path()).expect("resumes from step 9");
    assert_eq!(summary.resumed_from, Some(9));
    assert_eq!(summary.steps, 12);
}

// The NaN guard's test is in the trainer's unit tests: it needs a test
// hook that no config can set.

#[test]
fn collapse_stop_ends_the_run_with_a_clear_message() {
    // a threshold no healthy run stays above: the guard must fire
    let config = config(&["train.collapse_stop=10.0", "train.collapse_patience=2"]);
    let out = tempfile::tempdir().expect("tempdir");
    let err = run(&config, out.path()).expect_err("collapse guard");
    assert!(
        matches!(err, TrainError::Collapsed { step: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("train.collapse_stop"), "{err}");
}

#[test]
fn variants_train_simsiam_group_norm_lars_and_concatenated_views() {
    for overrides in [
        &["train.use_momentum=false"][..],
        &["model.norm=\"group_ws\"", "model.norm_groups=8"],
        &[
            "train.optimizer=lars",
            "train.lr=0.3",
            "train.lr_scale=\"linear\"",
            "train.lr_schedule=\"cosine\"",
            "train.warmup_epochs=1",
            "train.grad_clip_norm=1.0",
            "train.predictor_lr_multiplier=10.0",
        ],
        &[
            "train.concat_views=true",
            "model.head_batchnorm=false",
            "train.optimizer=adamw",
        ],
    ] {
        let mut all = vec!["train.epochs=1", "train.max_steps=3"];
        all.extend_from_slice(overrides);
        let out = tempfile::tempdir().expect("tempdir");
        let summary =
            run(&config(&all), out.path()).unwrap_or_else(|e| panic!("{overrides:?}: {e}"));
        assert_eq!(summary.steps, 3, "{overrides:?}");
        if overrides.contains(&"train.use_momentum=false") {
            let err = Run::open(out.path())
                .expect("run folder")
                .load_network::<Flex>(Network::Target, &Default::default())
                .expect_err("SimSiam has no target");
            assert!(err.to_string().contains("use_momentum"), "{err}");
        }
        assert!(
            summary.final_loss.is_finite() && summary.final_loss <= 8.0,
            "{overrides:?}"
        );
    }
}

#[test]
fn resuming_with_another_model_is_refused_naming_the_keys() {
    let out = tempfile::tempdir().expect("tempdir");
    run(
        &config(&["train.epochs=1", "train.max_steps=2"]),
        out.path(),
    )
    .expect("run");
    let other = config(&[
        "train.epochs=1",
        "train.max_steps=2",
        "model.projection_dim=16",
        "seed=5",
    ]);
    let err = resume(&other, out.path()).expect_err("another model");
    let msg = err.to_string();
    assert!(
        msg.contains("model.projection_dim") && msg.contains("seed"),
        "{msg}"
    );
    // and a fresh run into an existing run folder is refused too
    let err = run(&config(&[]), out.path()).expect_err("occupied");
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn resume_keeps_new_epochs_and_refuses_a_finished_run() {
    let out = tempfile::tempdir().expect("tempdir");
    let one = config(&["train.epochs=1"]);
    let first = run(&one, out.path()).expect("one epoch");
    let per_epoch = first.steps;

    // resuming a finished run with the same config has nothing to do
    let err = resume(&one, out.path()).expect_err("finished");
    assert!(err.to_string().contains("train.epochs"), "{err}");

    // more epochs continue it, and the run folder remembers the new length
    let two = config(&["train.epochs=2"]);
    let summary = resume(&two, out.path()).expect("second epoch");
    assert_eq!(summary.resumed_from, Some(per_epoch));
    assert_eq!(summary.steps, 2 * per_epoch);
    let saved = RunConfig::load(Some(&out.path().join("config.toml")), &[]).expect("saved");
    assert_eq!(saved.train.epochs, 2);

    // a plain resume (the saved config) of the finished run is refused, and
    // so is one that would end before the checkpoint; neither touches it
    let encoder = std::fs::read(out.path().join("encoder.mpk")).expect("encoder");
    let err = resume(&saved, out.path()).expect_err("finished again");
    assert!(
        err.to_string().contains(&format!("step {}", 2 * per_epoch)),
        "{err}"
    );
    resume(&one, out.path()).expect_err("shorter than done");
    assert_eq!(
        std::fs::read(out.path().join("encoder.mpk")).expect("encoder"),
        encoder
    );

    // killed after its last checkpoint, before the encoder and summary were
    // written: a resume writes them without training
    std::fs::remove_file(out.path().join("encoder.mpk")).expect("rm");
    std::fs::remove_file(out.path().join("summary.json")).expect("rm");
    let summary = resume(&saved, out.path()).expect("finish the outputs");
    assert_eq!(summary.steps, 2 * per_epoch);
    assert!(out.path().join("encoder.mpk").exists());
    assert!(out.path().join("summary.json").exists());
}

#[test]
fn bad_values_are_rejected_before_any_work() {
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("never");
    let mut config = config(&[]);
    config.train.tau_base = 1.5;
    let err = run(&config, &target).expect_err("tau 1.5");
    assert!(err.to_string().contains("train.tau_base"), "{err}");
    assert!(
        !target.exists(),
        "nothing should be written for a rejected config"
    );
}

#[test]
fn missing_dataset_names_the_folder() {
    let out = tempfile::tempdir().expect("tempdir");
    let config = config(&["data.path=\"/nonexistent/fashion\""]);
    let err = run(&config, out.path()).expect_err("no data");
    assert!(err.to_string().contains("/nonexistent/fashion"), "{err}");
}

/// An encoder of the caller's: one linear layer over the flattened pixels.
#[derive(burn::module::Module, Debug)]
struct Flat<B: burn::prelude::Backend> {
    linear: burn::nn::Linear<B>,
}

impl<B: burn::prelude::Backend> byol_model::Encoder<B> for Flat<B> {
    fn encode(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.linear.forward(images.flatten(1, 3))
    }

    fn output_dim(&self) -> usize {
        24
    }
}

/// `pretrain_encoder` of a [`Flat`] encoder.
fn pretrain_flat(
    config: &RunConfig,
    out: &Path,
    resume: bool,
) -> Result<byol_train::RunSummary, TrainError> {
    byol_train::pretrain_encoder::<B, _>(
        config,
        out,
        &Default::default(),
        PretrainOptions {
            resume,
            ..Default::default()
        },
        |channels, device| Flat {
            linear: burn::nn::LinearConfig::new(channels * 28 * 28, 24).init(device),
        },
    )
}

#[test]
fn an_encoder_of_ones_own_trains_checkpoints_and_resumes() {
    let config = config(&["train.epochs=2"]);
    let out = tempfile::tempdir().expect("tempdir");
    let summary = pretrain_flat(&config, out.path(), false).expect("the run finishes");
    assert_eq!(summary.steps, 2 * (384 / 64));
    assert!(summary.final_loss.is_finite());
    assert!(summary.knn_trained.is_some() && summary.knn_raw_pixels.is_some());
    assert!(out.path().join("encoder.mpk").is_file());
    // a longer schedule continues from the last checkpoint
    let mut longer = config.clone();
    longer.train.epochs = 3;
    let resumed = pretrain_flat(&longer, out.path(), true).expect("resumes");
    assert_eq!(resumed.resumed_from, Some(2 * (384 / 64)));
    assert_eq!(resumed.steps, 3 * (384 / 64));
    // torchvision weights cannot go into it: refused, naming the key
    let mut bad = config.clone();
    bad.model.init_from = PathBuf::from("weights.safetensors");
    let err = pretrain_flat(&bad, &out.path().join("other"), false)
        .expect_err("init_from is for the built-in ResNets");
    assert!(err.to_string().contains("model.init_from"), "{err}");
}
