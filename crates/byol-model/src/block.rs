//! Residual blocks, as torchvision's `BasicBlock` and `Bottleneck`
//! (ResNet v1.5: the stride sits on the 3×3 convolution of a bottleneck).
//!
//! Weights follow torchvision's initialisation: Kaiming-normal (fan-out,
//! ReLU gain) for convolutions, BatchNorm γ = 1 and β = 0, no conv bias.

use burn::module::Initializer;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::norm::batch_norm;

/// A `k×k` convolution without bias, initialised as torchvision's ResNet.
pub(crate) fn conv(
    channels_in: usize,
    channels_out: usize,
    kernel: usize,
    stride: usize,
) -> Conv2dConfig {
    let pad = kernel / 2;
    Conv2dConfig::new([channels_in, channels_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: core::f64::consts::SQRT_2,
            fan_out_only: true,
        })
}

/// The 1×1 convolution + BatchNorm on the shortcut when a block changes
/// resolution or width (torchvision's `downsample`).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1×1 convolution with the block's stride.
    pub conv: Conv2d<B>,
    /// BatchNorm after it.
    pub bn: BatchNorm<B>,
}

impl<B: Backend> Downsample<B> {
    fn new(channels_in: usize, channels_out: usize, stride: usize, device: &B::Device) -> Self {
        Self {
            conv: conv(channels_in, channels_out, 1, stride).init(device),
            bn: BatchNormConfig::new(channels_out).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        batch_norm(&self.bn, self.conv.forward(x))
    }
}

/// Two 3×3 convolutions with a residual connection, as torchvision's
/// `BasicBlock` (ResNet-18/34). Expansion 1.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    /// First 3×3 convolution, carries the stride.
    pub conv1: Conv2d<B>,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm<B>,
    /// Second 3×3 convolution.
    pub conv2: Conv2d<B>,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm<B>,
    /// Shortcut projection when the shape changes.
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> BasicBlock<B> {
    /// A block mapping `channels_in` to `planes` channels with `stride`.
    pub fn new(channels_in: usize, planes: usize, stride: usize, device: &B::Device) -> Self {
        let downsample = (stride != 1 || channels_in != planes)
            .then(|| Downsample::new(channels_in, planes, stride, device));
        Self {
            conv1: conv(channels_in, planes, 3, stride).init(device),
            bn1: BatchNormConfig::new(planes).init(device),
            conv2: conv(planes, planes, 3, 1).init(device),
            bn2: BatchNormConfig::new(planes).init(device),
            downsample,
        }
    }

    /// # Shapes
    /// `[batch, channels_in, h, w]` → `[batch, planes, h / stride, w / stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        let out = relu(batch_norm(&self.bn1, self.conv1.forward(x)));
        let out = batch_norm(&self.bn2, self.conv2.forward(out));
        relu(out + identity)
    }
}

/// 1×1 → 3×3 → 1×1 convolutions with expansion 4, as torchvision's
/// `Bottleneck` (ResNet-50), v1.5 stride on the 3×3.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    /// 1×1 reduction.
    pub conv1: Conv2d<B>,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm<B>,
    /// 3×3 convolution, carries the stride.
    pub conv2: Conv2d<B>,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm<B>,
    /// 1×1 expansion to `4 × planes`.
    pub conv3: Conv2d<B>,
    /// BatchNorm after `conv3`.
    pub bn3: BatchNorm<B>,
    /// Shortcut projection when the shape changes.
    pub downsample: Option<Downsample<B>>,
}

/// Output channels of a bottleneck relative to its `planes`.
pub const BOTTLENECK_EXPANSION: usize = 4;

impl<B: Backend> Bottleneck<B> {
    /// A block mapping `channels_in` to `4 × planes` channels with `stride`.
    pub fn new(channels_in: usize, planes: usize, stride: usize, device: &B::Device) -> Self {
        let out = planes * BOTTLENECK_EXPANSION;
        let downsample = (stride != 1 || channels_in != out)
            .then(|| Downsample::new(channels_in, out, stride, device));
        Self {
            conv1: conv(channels_in, planes, 1, 1).init(device),
            bn1: BatchNormConfig::new(planes).init(device),
            conv2: conv(planes, planes, 3, stride).init(device),
            bn2: BatchNormConfig::new(planes).init(device),
            conv3: conv(planes, out, 1, 1).init(device),
            bn3: BatchNormConfig::new(out).init(device),
            downsample,
        }
    }

    /// # Shapes
    /// `[batch, channels_in, h, w]` → `[batch, 4 × planes, h / stride, w / stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        let out = relu(batch_norm(&self.bn1, self.conv1.forward(x)));
        let out = relu(batch_norm(&self.bn2, self.conv2.forward(out)));
        let out = batch_norm(&self.bn3, self.conv3.forward(out));
        relu(out + identity)
    }
}

/// A residual block of either kind.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Block<B: Backend> {
    /// See [`BasicBlock`].
    Basic(BasicBlock<B>),
    /// See [`Bottleneck`].
    Bottleneck(Bottleneck<B>),
}

impl<B: Backend> Block<B> {
    /// # Shapes
    /// `[batch, c_in, h, w]` → `[batch, c_out, h / stride, w / stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Block::Basic(b) => b.forward(x),
            Block::Bottleneck(b) => b.forward(x),
        }
    }
}
