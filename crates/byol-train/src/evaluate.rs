//! Measuring a trained encoder the standard ways: the weighted kNN of the
//! pretraining monitor and the linear probe, on the labelled train and
//! test splits; and writing its embeddings of a split to a file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use byol_data::{Dataset, Split};
use byol_eval::{
    EmbeddingWriter, EvalError, KnnAccuracy, KnnConfig, KnnData, ProbeConfig, ProbeResult,
    balanced_subset, extract_features, for_each_feature_batch, knn_classify, knn_eval,
    linear_probe,
};
use byol_model::{Encoder, ResNet};
use serde::Serialize;

use crate::checkpoint::write_atomic;
use crate::progress::bar;
use crate::run::{Network, Run, check_fits, open_split};
use crate::{RunConfig, TrainError};

/// The figures of `cargo xtask eval`, as written to `eval.json`
/// (`eval-target.json` for the target encoder).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Which encoder of the run was measured ([`evaluate`] of an encoder
    /// handed to it says `online`).
    pub network: Network,
    /// The file its weights came from (set by [`evaluate_run`]).
    pub weights: Option<PathBuf>,
    /// The training step of those weights, when known.
    pub step: Option<usize>,
    /// Dataset folder.
    pub data: PathBuf,
    /// Labelled training images (kNN memory, probe training set).
    pub train_images: usize,
    /// Test images (kNN queries, probe test set).
    pub test_images: usize,
    /// Length of the encoder's features.
    pub feature_dim: usize,
    /// Weighted kNN on the test split.
    pub knn: KnnAccuracy,
    /// Its settings.
    pub knn_config: KnnConfig,
    /// The same kNN on raw pixels in [0, 1]: the floor the encoder has to
    /// beat, at the same `k`, temperature and bank; `None` for images over
    /// [`byol_eval::RAW_PIXELS_MAX_VALUES`] values.
    pub knn_raw_pixels: Option<KnnAccuracy>,
    /// Training images in the kNN bank (at most `eval.knn.bank_size`;
    /// the linear probe trains on all `train_images`).
    pub knn_bank_images: usize,
    /// Linear probe on the test split.
    pub probe: ProbeResult,
    /// Its settings.
    pub probe_config: ProbeConfig,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// How [`evaluate`] and [`embed`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UseOptions {
    /// Show progress bars.
    pub progress: bool,
}

/// Features of a whole dataset with a progress bar.
fn features<B: Backend>(
    encoder: &ResNet<B>,
    dataset: &dyn Dataset,
    config: &RunConfig,
    device: &B::Device,
    what: &str,
    show: bool,
) -> Result<Tensor<B, 2>, TrainError> {
    let pb = bar(
        show,
        dataset.len(),
        &format!(
            "features of {what} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}}"
        ),
    );
    let f = extract_features(
        encoder,
        dataset,
        0,
        &config.augment.eval_transform(),
        config.eval.batch_size,
        device,
        &|done| pb.set_position(done as u64),
    )?;
    pb.finish_and_clear();
    Ok(f)
}

/// kNN and linear-probe accuracy of `encoder` (evaluation mode, on the inner
/// backend of `B`) on the config's labelled train and test splits, each cut
/// to `data.train_limit` / `data.test_limit` images as in pretraining. The
/// probe's classifier trains on `B` as `eval.probe` says, seeded by `seed`.
///
/// # Errors
///
/// [`TrainError::Data`] / [`TrainError::Eval`] when a split is missing or
/// unlabelled, [`TrainError::Dataset`] when the images do not fit the
/// encoder, [`TrainError::Eval`] when the probe fails.
pub fn evaluate<B: AutodiffBackend>(
    config: &RunConfig,
    encoder: &ResNet<B::InnerBackend>,
    device: &B::Device,
    options: UseOptions,
) -> Result<EvalReport, TrainError> {
    let started = Instant::now();
    let train = open_split(config, Split::Train, config.data.train_limit)?;
    let test = open_split(config, Split::Test, config.data.test_limit)?;
    check_fits(config, encoder, &*train)?;
    check_fits(config, encoder, &*test)?;
    let split = KnnData::new(train, test)?;
    let (train_labels, test_labels) = (split.bank_labels.clone(), split.query_labels.clone());
    let show = options.progress;
    let train_f = features(encoder, &*split.bank, config, device, "train", show)?;
    let test_f = features(encoder, &*split.queries, config, device, "test", show)?;
    let (knn, knn_raw_pixels, bank_images) =
        knn_on_bank(&train_f, test_f.clone(), split, config, device)?;
    let p = &config.eval.probe;
    let pb = bar(
        show,
        p.epochs,
        "linear probe [{bar:30.cyan/blue}] epoch {pos}/{len} ETA {eta}",
    );
    let probe = linear_probe::<B>(
        train_f,
        &train_labels,
        test_f,
        &test_labels,
        p,
        config.seed,
        &|done, _| pb.set_position(done as u64),
    )?;
    pb.finish_and_clear();
    tracing::info!(
        "linear probe ({:?}, {} epochs): top-1 {:.2}%  top-5 {:.2}%  (train top-1 {:.2}%)",
        p.optimizer,
        p.epochs,
        100.0 * probe.top1,
        100.0 * probe.top5,
        100.0 * probe.train_top1
    );
    Ok(EvalReport {
        network: Network::Online,
        weights: None,
        step: None,
        data: config.data.path.clone(),
        train_images: train_labels.len(),
        knn_bank_images: bank_images,
        test_images: test_labels.len(),
        feature_dim: encoder.output_dim(),
        knn,
        knn_config: config.eval.knn.clone(),
        knn_raw_pixels,
        probe,
        probe_config: p.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The kNN of `train_f` (the features of `split.bank`, in order) on at
/// most `eval.knn.bank_size` of its rows, and the raw-pixel floor on the
/// same bank when the images are small enough; also the bank's size.
fn knn_on_bank<B: Backend>(
    train_f: &Tensor<B, 2>,
    test_f: Tensor<B, 2>,
    split: KnnData,
    config: &RunConfig,
    device: &B::Device,
) -> Result<(KnnAccuracy, Option<KnnAccuracy>, usize), TrainError> {
    let keep = balanced_subset(&split.bank_labels, config.eval.knn.bank_size, config.seed);
    let split = split.limit_bank(config.eval.knn.bank_size, config.seed)?;
    let bank_f = if keep.len() < train_f.dims()[0] {
        let rows: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [keep.len()]), device);
        train_f.clone().select(0, rows)
    } else {
        train_f.clone()
    };
    let k = config.eval.knn.k;
    let knn = knn_classify(
        bank_f,
        &split.bank_labels,
        test_f,
        &split.query_labels,
        &config.eval.knn,
    )?;
    tracing::info!(
        "kNN (k = {k}, bank {}): top-1 {:.2}%  top-5 {:.2}%",
        split.bank.len(),
        100.0 * knn.top1,
        100.0 * knn.top5
    );
    if !split.raw_pixels_fit(config.augment.size) {
        tracing::info!("no raw-pixel kNN baseline: images over byol_eval::RAW_PIXELS_MAX_VALUES");
        return Ok((knn, None, split.bank.len()));
    }
    // `None` only for a stop, never requested here
    let raw = knn_eval::<B, ResNet<B>>(None, &split, &config.knn_monitor(), device, &|| false)?
        .ok_or(EvalError::Stopped)?;
    tracing::info!(
        "kNN of raw pixels (k = {k}): top-1 {:.2}%  top-5 {:.2}%",
        100.0 * raw.top1,
        100.0 * raw.top5
    );
    Ok((knn, Some(raw), split.bank.len()))
}

/// Name of the file [`evaluate_run`] writes for `network`.
pub fn eval_file(network: Network) -> &'static str {
    match network {
        Network::Online => "eval.json",
        Network::Target => "eval-target.json",
    }
}

/// [`evaluate`] of one of a run's encoders with `config` (the run's,
/// possibly with other data or eval settings), then the report written into
/// the run folder as [`eval_file`] names it.
///
/// # Errors
///
/// As [`Run::load_network`] and [`evaluate`]; [`TrainError::Output`] when
/// the report cannot be written.
pub fn evaluate_run<B: AutodiffBackend>(
    run: &Run,
    network: Network,
    config: &RunConfig,
    device: &B::Device,
    options: UseOptions,
) -> Result<EvalReport, TrainError> {
    let loaded = run.load_network::<B::InnerBackend>(network, device)?;
    let mut report = evaluate::<B>(config, &loaded.encoder, device, options)?;
    report.network = network;
    report.weights = Some(loaded.weights);
    report.step = loaded.step;
    let path = run.dir.join(eval_file(network));
    let json = serde_json::to_string_pretty(&report).map_err(|e| TrainError::Output {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&path, &json)?;
    Ok(report)
}

/// What [`embed`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSummary {
    /// Rows (images).
    pub rows: usize,
    /// Values per row.
    pub dim: usize,
    /// The files written (the embeddings, and the names sidecar of `.npy`).
    pub files: Vec<PathBuf>,
}

/// Writes `encoder`'s features of every image of `split` of the config's
/// data (no `data.*_limit`) to `out`, one row per image in dataset order
/// with the image's name, in the format of `out`'s extension (see
/// [`byol_eval::embeddings`]). The encoder should be in evaluation mode
/// (the inner backend).
///
/// # Errors
///
/// [`TrainError::Eval`] for an unknown extension or a failed write,
/// [`TrainError::Data`] when the split cannot be read,
/// [`TrainError::Dataset`] when its images do not fit the encoder.
pub fn embed<B: Backend>(
    config: &RunConfig,
    encoder: &ResNet<B>,
    split: Split,
    out: &Path,
    device: &B::Device,
    options: UseOptions,
) -> Result<EmbedSummary, TrainError> {
    // an unknown extension fails before any data is read
    byol_eval::EmbeddingFormat::from_path(out)?;
    let dataset = open_split(config, split, 0)?;
    check_fits(config, encoder, &*dataset)?;
    let n = dataset.len();
    let dim = encoder.output_dim();
    let names: Vec<String> = (0..n).map(|i| dataset.name(i)).collect();
    let mut writer = EmbeddingWriter::create(out, names, dim)?;
    let pb = bar(
        options.progress,
        n,
        "embedding [{bar:30.cyan/blue}] {pos}/{len} {per_sec} ETA {eta}",
    );
    for_each_feature_batch(
        encoder,
        &*dataset,
        0,
        &config.augment.eval_transform(),
        config.eval.batch_size,
        device,
        &mut |start, values| {
            pb.set_position((start + values.len() / dim.max(1)) as u64);
            writer.write_rows(&values)
        },
    )?;
    pb.finish_and_clear();
    let files = writer.finish()?;
    Ok(EmbedSummary {
        rows: n,
        dim,
        files,
    })
}
