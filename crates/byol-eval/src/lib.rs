//! Measuring a representation: feature extraction and the weighted k-nearest
//! neighbour classifier used by lightly's and solo-learn's benchmarks.
//!
//! ```
//! use burn::backend::Flex;
//! use byol_eval::{KnnConfig, knn_classify};
//! type B = Flex;
//! let device = Default::default();
//! let bank = burn::tensor::Tensor::<B, 2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
//! let queries = burn::tensor::Tensor::<B, 2>::from_floats([[0.9, 0.1]], &device);
//! let acc = knn_classify(bank, &[0, 1], queries, &[0], &KnnConfig { k: 1, temperature: 0.1 })?;
//! assert_eq!(acc.top1, 1.0);
//! # Ok::<(), byol_eval::EvalError>(())
//! ```

mod features;
mod knn;

pub use byol_augment::EvalTransform;
pub use features::{extract_features, labels, pixel_features, sample_count};
pub use knn::{KnnAccuracy, KnnConfig, knn_classify};

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
}
