//! Networks for BYOL on burn: ResNet encoders, MLP heads and the online /
//! target pair.
//!
//! Everything is generic over burn's [`Backend`](burn::prelude::Backend);
//! only the binary names a concrete one. The [`Encoder`] trait lets any burn
//! module that maps images to vectors serve as the backbone.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use byol_model::{Byol, HeadsConfig, ResNetConfig};
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let encoder = ResNetConfig::small();
//! // two independent inits: the target is never a clone of the online network
//! let byol = Byol::new(
//!     encoder.init::<B>(&device),
//!     Some(encoder.init::<B>(&device)),
//!     &HeadsConfig::new(512, 128, 512),
//!     &device,
//! );
//! let views = burn::tensor::Tensor::<B, 4>::zeros([4, 1, 28, 28], &device);
//! let out = byol.forward(views.clone(), views);
//! assert_eq!(out.p1.dims(), [4, 128]);
//! ```

mod block;
mod byol;
pub mod cross_replica;
pub mod fast_conv;
mod fast_norm;
mod footprint;
mod head;
pub mod kernels;
mod norm;
mod precision;
mod resnet;
mod rng;
pub mod torchvision;

pub use block::{BasicBlock, Block, Bottleneck, Downsample, NormSpec};
pub use byol::{Byol, ByolOutput, ForwardOptions, HeadsConfig, OnlineNetwork, TargetNetwork};
pub use cross_replica::{CrossReplica, ReplicaSum, with_cross_replica};
pub use footprint::{EncoderFootprint, HeadFootprint, HeadsFootprint};
pub use head::{MlpHead, MlpHeadConfig};
pub use norm::{Identity, Norm, NormKind, batch_norm, conv_forward, conv_forward_in, group_norm};
pub use precision::{Precision, linear};
pub use resnet::{BlockKind, ResNet, ResNetConfig, Stage, Stem};
pub use rng::{materialize, seeded};

use burn::prelude::*;

/// A backbone: any module mapping a batch of images to a batch of vectors.
///
/// "the encoder f_θ [...] outputs a representation y_θ"
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.1].
pub trait Encoder<B: Backend>: Module<B> + burn::module::ModuleDisplay {
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, self.output_dim()]`
    fn encode(&self, images: Tensor<B, 4>) -> Tensor<B, 2>;

    /// Whether [`Encoder::encode_in`] computes in `precision`. The default
    /// says f32 only: an encoder of the caller's computes as its own layers
    /// do, and a run asked for bf16 refuses it rather than train in f32.
    fn computes_in(&self, precision: Precision) -> bool {
        precision == Precision::F32
    }

    /// [`Encoder::encode`] with the convolutions and matrix products in
    /// `precision` ([`Precision`]).
    ///
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, self.output_dim()]`
    ///
    /// # Panics
    ///
    /// When `!self.computes_in(precision)`.
    fn encode_in(&self, images: Tensor<B, 4>, precision: Precision) -> Tensor<B, 2> {
        assert!(
            self.computes_in(precision),
            "this encoder computes in f32 only, not {precision}"
        );
        self.encode(images)
    }

    /// Whether every BatchNorm layer of the encoder follows
    /// [`with_cross_replica`] (cross-replica statistics,
    /// `train.sync_batchnorm`). True of an encoder without BatchNorm, and
    /// of one whose BatchNorm layers run through [`batch_norm`]. The
    /// default says no: an encoder of the caller's normalises as its own
    /// layers do, and a run asked for synchronised BatchNorm refuses it
    /// rather than normalise per shard.
    fn syncs_batch_norm(&self) -> bool {
        false
    }

    /// Length of the representation.
    fn output_dim(&self) -> usize;
}

/// Errors of model configuration.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A configuration value is out of its range.
    #[error("invalid value for `{key}`: {value} (expected {expected})")]
    InvalidConfig {
        /// Full key, e.g. `model.in_channels`.
        key: String,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// The encoder's normalisation has no torchvision layout.
    #[error(
        "only encoders with BatchNorm (model.norm = \"batch\") have torchvision's layout; this one has norm = \"{norm}\""
    )]
    UnsupportedNorm {
        /// The encoder's normalisation.
        norm: &'static str,
    },
    /// A weights file cannot be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The weights lack a tensor the encoder needs.
    #[error(
        "{path}: no tensor `{key}`, which the encoder needs (is it a torchvision ResNet state dict of the same architecture?)"
    )]
    MissingTensor {
        /// The file.
        path: String,
        /// torchvision's key.
        key: String,
    },
    /// A tensor's shape differs from the encoder's.
    #[error("{path}: `{key}` has shape {file:?} in the file but the encoder expects {model:?}")]
    ShapeMismatch {
        /// The file.
        path: String,
        /// torchvision's key.
        key: String,
        /// Shape in the file.
        file: Vec<usize>,
        /// Shape the encoder has.
        model: Vec<usize>,
    },
    /// The weights hold tensors that match no layer of the encoder.
    #[error("{path}: tensors that match no layer of the encoder (another architecture?): {}", keys.join(", "))]
    UnexpectedTensors {
        /// The file.
        path: String,
        /// The keys, sorted.
        keys: Vec<String>,
    },
    /// A tensor has a data type that cannot be loaded.
    #[error("{path}: `{key}` has dtype {dtype}; weights must be F32 or F64")]
    Dtype {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// Its dtype.
        dtype: String,
    },
    /// Reading tensor data back from the device failed.
    #[error("reading weights from the device: {0}")]
    Data(String),
}
