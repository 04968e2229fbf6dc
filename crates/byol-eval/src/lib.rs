//! Measuring a representation and taking it out: feature extraction, the
//! weighted k-nearest-neighbour classifier of lightly's and solo-learn's
//! benchmarks, the linear probe, and embedding files (`.npy`,
//! `.safetensors`, `.csv`) for other tools.
//!
//! ```
//! use burn::backend::Flex;
//! use byol_eval::{KnnConfig, knn_classify};
//! type B = Flex;
//! let device = Default::default();
//! let bank = burn::tensor::Tensor::<B, 2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
//! let queries = burn::tensor::Tensor::<B, 2>::from_floats([[0.9, 0.1]], &device);
//! let acc = knn_classify(bank, &[0, 1], queries, &[0], &KnnConfig { k: 1, ..KnnConfig::default() })?;
//! assert_eq!(acc.top1, 1.0);
//! # Ok::<(), byol_eval::EvalError>(())
//! ```
//!
//! The whole use of a trained encoder, without the command line: load the
//! `encoder.mpk` a run saved, measure it with kNN and a linear probe, and
//! write one vector per test image with its name (`cargo xtask eval` and
//! `cargo xtask embed` do the same through `byol_train::Run`, which also
//! reads the run's `config.toml`):
//!
//! ```no_run
//! use std::path::Path;
//! use burn::backend::{Autodiff, Flex};
//! use burn::module::Module;
//! use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
//! use byol_data::{Format, OpenOptions, Split, open};
//! use byol_eval::{
//!     EmbeddingWriter, EvalTransform, KnnConfig, ProbeConfig, extract_features,
//!     for_each_feature_batch, knn_classify, labels, linear_probe,
//! };
//! use byol_model::ResNetConfig;
//!
//! type B = Flex; // evaluation runs on the inner backend; the probe trains on Autodiff<B>
//! let device = Default::default();
//! // the default run's encoder: small ResNet, 1-channel 28×28 images
//! let encoder = ResNetConfig::small().init::<B>(&device).load_file(
//!     "runs/dev/encoder.mpk",
//!     &NamedMpkFileRecorder::<FullPrecisionSettings>::new(),
//!     &device,
//! )?;
//! let data = Path::new("data/fashion-mnist-sample");
//! let train = open(data, Format::Auto, Split::Train, &OpenOptions::default())?;
//! let test = open(data, Format::Auto, Split::Test, &OpenOptions::default())?;
//! // the run's evaluation transform: [augment] size, eval_resize, mean, std
//! let transform = EvalTransform { size: 28, resize: 0, mean: vec![0.286], std: vec![0.353] };
//! let train_x = extract_features(&encoder, &*train, 0, &transform, 256, &device, &|_| {})?;
//! let test_x = extract_features(&encoder, &*test, 0, &transform, 256, &device, &|_| {})?;
//! let (train_y, test_y) = (labels(&*train, 0)?, labels(&*test, 0)?);
//!
//! let knn = knn_classify(train_x.clone(), &train_y, test_x.clone(), &test_y, &KnnConfig::default())?;
//! let probe = linear_probe::<Autodiff<B>>(
//!     train_x, &train_y, test_x, &test_y, &ProbeConfig::default(), 0, &|_, _| {},
//! )?;
//! println!("kNN top-1 {:.2}%, linear probe top-1 {:.2}%", 100.0 * knn.top1, 100.0 * probe.top1);
//!
//! // test.npy ([1000, 128] float32) and test.names.txt
//! let names = (0..test.len()).map(|i| test.name(i)).collect();
//! let mut out = EmbeddingWriter::create(Path::new("test.npy"), names, encoder.output_dim)?;
//! for_each_feature_batch(&encoder, &*test, 0, &transform, 256, &device, &mut |_, rows| {
//!     out.write_rows(&rows)
//! })?;
//! out.finish()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod embeddings;
mod features;
mod knn;
mod monitor;
mod probe;

pub use byol_augment::EvalTransform;
pub use embeddings::{EmbeddingFormat, EmbeddingWriter};
pub use features::{
    extract_features, extract_features_unless, for_each_feature_batch, labels, pixel_features,
    sample_count,
};
pub use knn::{DEFAULT_BANK_SIZE, KnnAccuracy, KnnConfig, TopK, knn_classify};
pub use monitor::{KnnData, KnnMonitorSettings, RAW_PIXELS_MAX_VALUES, balanced_subset, knn_eval};
pub use probe::{ProbeConfig, ProbeOptimizer, ProbeResult, linear_probe, logit_accuracy};

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Features and labels disagree in count.
    #[error("{what}: {features} feature rows but {labels} labels")]
    CountMismatch {
        /// Which set.
        what: &'static str,
        /// Rows of features.
        features: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid value for `{key}`: {value} (expected {expected})")]
    InvalidConfig {
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// The work was called off before it ended (a stop request).
    #[error("stopped on request before the evaluation ended")]
    Stopped,
    /// A dataset has no label where evaluation needs one.
    #[error("{0}: no label (kNN and linear probes need a labelled dataset)")]
    Unlabelled(String),
    /// Reading a sample failed.
    #[error(transparent)]
    Dataset(#[from] byol_data::DataError),
    /// Reading tensor data back from the device failed.
    #[error("reading features from the device: {0}")]
    Data(String),
    /// The image set cannot be transformed as asked.
    #[error(transparent)]
    Augment(#[from] byol_augment::AugmentError),
    /// An embeddings file name whose extension names no known format.
    #[error("{}: unknown embeddings format (use .npy, .safetensors or .csv)", .0.display())]
    UnknownFormat(std::path::PathBuf),
    /// Writing an output file failed.
    #[error("cannot write {}: {message}", path.display())]
    Output {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}
