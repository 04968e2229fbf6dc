//! Residual blocks, as torchvision's `BasicBlock` and `Bottleneck`
//! (ResNet v1.5: the stride sits on the 3×3 convolution of a bottleneck).
//!
//! Weights follow torchvision's initialisation: Kaiming-normal (fan-out,
//! ReLU gain) for convolutions, BatchNorm γ = 1 and β = 0, no conv bias.

use burn::module::Initializer;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::norm::{Norm, NormKind, conv_forward_in};
use crate::precision::Precision;

/// How a block normalises: the layer kind, GroupNorm's group count, and
/// whether convolutions standardise their weights (with GroupNorm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormSpec {
    /// Layer kind.
    pub kind: NormKind,
    /// Groups of GroupNorm (at most the channel count).
    pub groups: usize,
}

impl NormSpec {
    pub(crate) fn init<B: Backend>(&self, channels: usize, device: &B::Device) -> Norm<B> {
        self.kind.init(channels, self.groups, device)
    }
}

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
    /// Normalisation after it.
    pub bn: Norm<B>,
    /// Whether `conv` standardises its weights.
    pub standardize: bool,
}

impl<B: Backend> Downsample<B> {
    fn new(
        channels_in: usize,
        channels_out: usize,
        stride: usize,
        norm: NormSpec,
        device: &B::Device,
    ) -> Self {
        Self {
            conv: conv(channels_in, channels_out, 1, stride).init(device),
            bn: norm.init(channels_out, device),
            standardize: norm.kind.standardizes_weights(),
        }
    }

    fn forward(&self, x: Tensor<B, 4>, precision: Precision) -> Tensor<B, 4> {
        self.bn
            .forward(conv_forward_in(&self.conv, x, self.standardize, precision))
    }
}

/// Two 3×3 convolutions with a residual connection, as torchvision's
/// `BasicBlock` (ResNet-18/34). Expansion 1.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    /// First 3×3 convolution, carries the stride.
    pub conv1: Conv2d<B>,
    /// Normalisation after `conv1`.
    pub bn1: Norm<B>,
    /// Second 3×3 convolution.
    pub conv2: Conv2d<B>,
    /// Normalisation after `conv2`.
    pub bn2: Norm<B>,
    /// Shortcut projection when the shape changes.
    pub downsample: Option<Downsample<B>>,
    /// Whether the convolutions standardise their weights.
    pub standardize: bool,
}

impl<B: Backend> BasicBlock<B> {
    /// A block mapping `channels_in` to `planes` channels with `stride`.
    pub fn new(
        channels_in: usize,
        planes: usize,
        stride: usize,
        norm: NormSpec,
        device: &B::Device,
    ) -> Self {
        let downsample = (stride != 1 || channels_in != planes)
            .then(|| Downsample::new(channels_in, planes, stride, norm, device));
        Self {
            conv1: conv(channels_in, planes, 3, stride).init(device),
            bn1: norm.init(planes, device),
            conv2: conv(planes, planes, 3, 1).init(device),
            bn2: norm.init(planes, device),
            downsample,
            standardize: norm.kind.standardizes_weights(),
        }
    }

    /// # Shapes
    /// `[batch, channels_in, h, w]` → `[batch, planes, h / stride, w / stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_in(x, Precision::F32)
    }

    /// [`BasicBlock::forward`] with the convolutions in `precision`.
    ///
    /// # Shapes
    /// `[batch, channels_in, h, w]` → `[batch, planes, h / stride, w / stride]`
    pub fn forward_in(&self, x: Tensor<B, 4>, precision: Precision) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone(), precision),
            None => x.clone(),
        };
        let conv = |c: &Conv2d<B>, x| conv_forward_in(c, x, self.standardize, precision);
        let out = relu(self.bn1.forward(conv(&self.conv1, x)));
        let out = self.bn2.forward(conv(&self.conv2, out));
        relu(out + identity)
    }
}

/// 1×1 → 3×3 → 1×1 convolutions with expansion 4, as torchvision's
/// `Bottleneck` (ResNet-50), v1.5 stride on the 3×3.
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    /// 1×1 reduction.
    pub conv1: Conv2d<B>,
    /// Normalisation after `conv1`.
    pub bn1: Norm<B>,
    /// 3×3 convolution, carries the stride.
    pub conv2: Conv2d<B>,
    /// Normalisation after `conv2`.
    pub bn2: Norm<B>,
    /// 1×1 expansion to `4 × planes`.
    pub conv3: Conv2d<B>,
    /// Normalisation after `conv3`.
    pub bn3: Norm<B>,
    /// Shortcut projection when the shape changes.
    pub downsample: Option<Downsample<B>>,
    /// Whether the convolutions standardise their weights.
    pub standardize: bool,
}

/// Output channels of a bottleneck relative to its `planes`.
pub const BOTTLENECK_EXPANSION: usize = 4;

impl<B: Backend> Bottleneck<B> {
    /// A block mapping `channels_in` to `4 × planes` channels with `stride`.
    pub fn new(
        channels_in: usize,
        planes: usize,
        stride: usize,
        norm: NormSpec,
        device: &B::Device,
    ) -> Self {
        let out = planes * BOTTLENECK_EXPANSION;
        let downsample = (stride != 1 || channels_in != out)
            .then(|| Downsample::new(channels_in, out, stride, norm, device));
        Self {
            conv1: conv(channels_in, planes, 1, 1).init(device),
            bn1: norm.init(planes, device),
            conv2: conv(planes, planes, 3, stride).init(device),
            bn2: norm.init(planes, device),
            conv3: conv(planes, out, 1, 1).init(device),
            bn3: norm.init(out, device),
            downsample,
            standardize: norm.kind.standardizes_weights(),
        }
    }

    /// # Shapes
    /// `[batch, channels_in, h, w]` → `[batch, 4 × planes, h / stride, w / stride]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_in(x, Precision::F32)
    }

    /// [`Bottleneck::forward`] with the convolutions in `precision`.
    ///
    /// # Shapes
    /// `[batch, channels_in, h, w]` → `[batch, 4 × planes, h / stride, w / stride]`
    pub fn forward_in(&self, x: Tensor<B, 4>, precision: Precision) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(d) => d.forward(x.clone(), precision),
            None => x.clone(),
        };
        let conv = |c: &Conv2d<B>, x| conv_forward_in(c, x, self.standardize, precision);
        let out = relu(self.bn1.forward(conv(&self.conv1, x)));
        let out = relu(self.bn2.forward(conv(&self.conv2, out)));
        let out = self.bn3.forward(conv(&self.conv3, out));
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
        self.forward_in(x, Precision::F32)
    }

    /// [`Block::forward`] with the convolutions in `precision`.
    ///
    /// # Shapes
    /// `[batch, c_in, h, w]` → `[batch, c_out, h / stride, w / stride]`
    pub fn forward_in(&self, x: Tensor<B, 4>, precision: Precision) -> Tensor<B, 4> {
        match self {
            Block::Basic(b) => b.forward_in(x, precision),
            Block::Bottleneck(b) => b.forward_in(x, precision),
        }
    }
}
