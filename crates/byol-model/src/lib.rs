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
mod head;
mod norm;
mod resnet;

pub use block::{BasicBlock, Block, Bottleneck, Downsample, NormSpec};
pub use byol::{Byol, ByolOutput, ForwardOptions, HeadsConfig, OnlineNetwork, TargetNetwork};
pub use head::{MlpHead, MlpHeadConfig};
pub use norm::{Identity, Norm, NormKind, batch_norm, conv_forward, group_norm};
pub use resnet::{BlockKind, ResNet, ResNetConfig, Stage, Stem};

use burn::prelude::*;

/// A backbone: any module mapping a batch of images to a batch of vectors.
///
/// "the encoder f_θ [...] outputs a representation y_θ"
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.1].
pub trait Encoder<B: Backend>: Module<B> + burn::module::ModuleDisplay {
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, self.output_dim()]`
    fn encode(&self, images: Tensor<B, 4>) -> Tensor<B, 2>;

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
}
