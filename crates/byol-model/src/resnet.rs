//! ResNet encoders (He et al. 2016), laid out as torchvision's `resnet18`,
//! `resnet34` and `resnet50` so that weights and behaviour can be checked
//! against it, plus the small CPU encoder of the default run.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::block::{BOTTLENECK_EXPANSION, BasicBlock, Block, Bottleneck, NormSpec, conv};
use crate::norm::{Norm, NormKind, conv_forward_in};
use crate::precision::Precision;
use crate::{Encoder, ModelError};

/// The first layers of the network, before the residual stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7 convolution stride 2, then 3×3 max-pool stride 2 (torchvision;
    /// for 224×224 images: 224 → 56).
    Imagenet,
    /// 3×3 convolution stride 1, no max-pool (the usual CIFAR variant,
    /// solo-learn and lightly; 32 → 32).
    Cifar,
    /// 3×3 convolution stride 2, no max-pool (28 → 14): keeps small images
    /// cheap on CPU without full-resolution stages.
    Small,
}

/// Residual block kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1, 3×3, 1×1 with expansion 4 (ResNet-50).
    Bottleneck,
}

/// Shape of a ResNet encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Number of blocks in each stage; stage `i > 0` halves the resolution.
    pub layers: Vec<usize>,
    /// Block kind.
    pub block: BlockKind,
    /// Width of the stem and the first stage (64 in torchvision); stage `i`
    /// has `base_width × 2^i` planes.
    pub base_width: usize,
    /// Multiplies every width (the paper's ResNet-50 ×2, ×4 variants).
    pub width_multiplier: usize,
    /// Stem variant.
    pub stem: Stem,
    /// Input channels: 1 (grayscale) or 3 (RGB).
    pub in_channels: usize,
    /// Normalisation after each convolution.
    pub norm: NormKind,
    /// Groups of GroupNorm (with `norm = GroupWs`); must divide every
    /// stage's width or exceed it (then one group per channel).
    pub norm_groups: usize,
}

impl ResNetConfig {
    /// torchvision `resnet18`: basic blocks `[2, 2, 2, 2]`, 512 features.
    pub fn resnet18() -> Self {
        Self::new(vec![2, 2, 2, 2], BlockKind::Basic, 64)
    }

    /// torchvision `resnet34`: basic blocks `[3, 4, 6, 3]`, 512 features.
    pub fn resnet34() -> Self {
        Self::new(vec![3, 4, 6, 3], BlockKind::Basic, 64)
    }

    /// torchvision `resnet50`: bottlenecks `[3, 4, 6, 3]`, 2048 features.
    pub fn resnet50() -> Self {
        Self::new(vec![3, 4, 6, 3], BlockKind::Bottleneck, 64)
    }

    /// The default CPU encoder: small stem, one basic block in each of three
    /// stages of 32/64/128 planes (28×28 → 14 → 7 → 4), 128 features.
    pub fn small() -> Self {
        Self {
            stem: Stem::Small,
            in_channels: 1,
            ..Self::new(vec![1, 1, 1], BlockKind::Basic, 32)
        }
    }

    fn new(layers: Vec<usize>, block: BlockKind, base_width: usize) -> Self {
        Self {
            layers,
            block,
            base_width,
            width_multiplier: 1,
            stem: Stem::Imagenet,
            in_channels: 3,
            norm: NormKind::Batch,
            norm_groups: 32,
        }
    }

    /// Returns the config with another normalisation.
    pub fn with_norm(mut self, norm: NormKind, groups: usize) -> Self {
        self.norm = norm;
        self.norm_groups = groups;
        self
    }

    /// Returns the config with another stem.
    pub fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }

    /// Returns the config with another number of input channels.
    pub fn with_in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    /// Returns the config with another width multiplier.
    pub fn with_width_multiplier(mut self, width_multiplier: usize) -> Self {
        self.width_multiplier = width_multiplier;
        self
    }

    /// Dimension of the pooled features.
    pub fn output_dim(&self) -> usize {
        let last = (self.base_width * self.width_multiplier) << self.layers.len().saturating_sub(1);
        match self.block {
            BlockKind::Basic => last,
            BlockKind::Bottleneck => last * BOTTLENECK_EXPANSION,
        }
    }

    /// Checks the values; `prefix` names the config section in errors.
    ///
    /// # Errors
    ///
    /// [`ModelError::InvalidConfig`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), ModelError> {
        let bad = |key: &str, value: String, expected: &str| {
            Err(ModelError::InvalidConfig {
                key: format!("{prefix}.{key}"),
                value,
                expected: expected.to_string(),
            })
        };
        if !matches!(self.in_channels, 1 | 3) {
            return bad("in_channels", self.in_channels.to_string(), "1 or 3");
        }
        if self.width_multiplier == 0 {
            return bad("width_multiplier", "0".into(), "an integer >= 1");
        }
        if self.norm == NormKind::GroupWs {
            let base = self.base_width * self.width_multiplier;
            let bad_width = (0..self.layers.len()).map(|i| base << i).find(|&w| {
                self.norm_groups == 0 || (self.norm_groups < w && w % self.norm_groups != 0)
            });
            if let Some(w) = bad_width {
                return bad(
                    "norm_groups",
                    self.norm_groups.to_string(),
                    &format!("a positive number of groups dividing every width (here {w})"),
                );
            }
        }
        if self.layers.is_empty() || self.layers.contains(&0) {
            return bad(
                "layers",
                format!("{:?}", self.layers),
                "at least one stage, each with >= 1 block",
            );
        }
        Ok(())
    }

    /// Builds the network with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let stem_width = self.base_width * self.width_multiplier;
        let (kernel, stride) = match self.stem {
            Stem::Imagenet => (7, 2),
            Stem::Cifar => (3, 1),
            Stem::Small => (3, 2),
        };
        let maxpool = (self.stem == Stem::Imagenet).then(|| {
            MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init()
        });
        let norm = NormSpec {
            kind: self.norm,
            groups: self.norm_groups,
        };
        let mut channels = stem_width;
        let stages = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let planes = stem_width << i;
                let blocks = (0..n)
                    .map(|j| {
                        let stride = if i > 0 && j == 0 { 2 } else { 1 };
                        let block = match self.block {
                            BlockKind::Basic => Block::Basic(BasicBlock::new(
                                channels, planes, stride, norm, device,
                            )),
                            BlockKind::Bottleneck => Block::Bottleneck(Bottleneck::new(
                                channels, planes, stride, norm, device,
                            )),
                        };
                        channels = match self.block {
                            BlockKind::Basic => planes,
                            BlockKind::Bottleneck => planes * BOTTLENECK_EXPANSION,
                        };
                        block
                    })
                    .collect();
                Stage { blocks }
            })
            .collect();
        ResNet {
            conv1: conv(self.in_channels, stem_width, kernel, stride).init(device),
            bn1: norm.init(stem_width, device),
            maxpool,
            stages,
            output_dim: channels,
            standardize: self.norm.standardizes_weights(),
        }
    }
}

/// One resolution of the network (torchvision's `layer1` … `layer4`).
#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    /// The residual blocks; the first carries the stage's stride.
    pub blocks: Vec<Block<B>>,
}

/// A ResNet without its classifier: image → pooled feature vector.
///
/// "We use a convolutional residual network with 50 layers and post-activation
/// (ResNet-50(1×) v1) as our base parametric encoders"
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.3].
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// Stem convolution.
    pub conv1: Conv2d<B>,
    /// Stem normalisation.
    pub bn1: Norm<B>,
    /// Stem max-pool (ImageNet stem only).
    pub maxpool: Option<MaxPool2d>,
    /// Residual stages.
    pub stages: Vec<Stage<B>>,
    /// Dimension of the output features.
    pub output_dim: usize,
    /// Whether the stem convolution standardises its weights.
    pub standardize: bool,
}

impl<B: Backend> ResNet<B> {
    /// Pooled features.
    ///
    /// # Shapes
    /// `[batch, in_channels, height, width]` → `[batch, output_dim]`
    ///
    /// # Panics
    ///
    /// When the input's channels differ from the configured `in_channels`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_in(x, Precision::F32)
    }

    /// [`ResNet::forward`] with the convolutions in `precision`; BatchNorm,
    /// pooling and the output stay f32.
    ///
    /// # Shapes
    /// `[batch, in_channels, height, width]` → `[batch, output_dim]`
    ///
    /// # Panics
    ///
    /// When the input's channels differ from the configured `in_channels`.
    pub fn forward_in(&self, x: Tensor<B, 4>, precision: Precision) -> Tensor<B, 2> {
        let stem = conv_forward_in(&self.conv1, x, self.standardize, precision);
        let x = relu(self.bn1.forward(stem));
        let mut x = match &self.maxpool {
            Some(pool) => pool.forward(x),
            None => x,
        };
        for stage in &self.stages {
            for block in &stage.blocks {
                x = block.forward_in(x, precision);
            }
        }
        let [batch, channels, h, w] = x.dims();
        // global average pooling: [batch, channels, h, w] -> [batch, channels]
        x.reshape([batch, channels, h * w])
            .mean_dim(2)
            .reshape([batch, channels])
    }
}

impl<B: Backend> Encoder<B> for ResNet<B> {
    fn encode(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward(images)
    }

    fn computes_in(&self, _precision: Precision) -> bool {
        true
    }

    fn encode_in(&self, images: Tensor<B, 4>, precision: Precision) -> Tensor<B, 2> {
        self.forward_in(images, precision)
    }

    /// Every normalisation of the ResNets is [`crate::batch_norm`],
    /// [`crate::group_norm`] (per sample, nothing to synchronise) or none.
    fn syncs_batch_norm(&self) -> bool {
        true
    }

    fn output_dim(&self) -> usize {
        self.output_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn small_encoder_maps_28px_grayscale_to_128_features() {
        let device = Default::default();
        let cfg = ResNetConfig::small();
        let net = cfg.init::<B>(&device);
        let x =
            Tensor::<B, 4>::random([3, 1, 28, 28], burn::tensor::Distribution::Default, &device);
        assert_eq!(net.forward(x).dims(), [3, 128]);
        assert_eq!(cfg.output_dim(), 128);
    }

    #[test]
    fn resnet18_cifar_stem_gives_512_and_resnet50_gives_2048() {
        let device = Default::default();
        let x = Tensor::<B, 4>::zeros([2, 3, 16, 16], &device);
        let r18 = ResNetConfig::resnet18()
            .with_stem(Stem::Cifar)
            .init::<B>(&device);
        assert_eq!(r18.forward(x.clone()).dims(), [2, 512]);
        let r50 = ResNetConfig::resnet50().init::<B>(&device);
        assert_eq!(r50.forward(x).dims(), [2, 2048]);
        assert_eq!(ResNetConfig::resnet50().output_dim(), 2048);
        assert_eq!(
            ResNetConfig::resnet34()
                .with_width_multiplier(2)
                .output_dim(),
            1024
        );
    }

    #[test]
    fn resnet18_has_torchvision_parameter_count() {
        // torchvision resnet18: 11,689,512 parameters, 513,000 of them in fc.
        // burn's `num_params` also counts the BatchNorm running mean and
        // variance (buffers in PyTorch): 2 × 4,800 BatchNorm channels.
        let net = ResNetConfig::resnet18().init::<B>(&Default::default());
        assert_eq!(net.num_params(), 11_689_512 - 513_000 + 2 * 4_800);
    }

    #[test]
    fn validate_names_the_key() {
        let err = ResNetConfig::small()
            .with_in_channels(2)
            .validate("model")
            .expect_err("2 channels");
        assert!(err.to_string().contains("model.in_channels"), "{err}");
    }
}
