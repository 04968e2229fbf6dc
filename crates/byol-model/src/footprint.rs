//! What a network costs in memory, counted from its config alone, before
//! any weight exists: so that a run can be refused before it allocates.
//!
//! Parameters are counted exactly as burn's `Module::num_params` counts
//! them (BatchNorm's running mean and variance included, as buffers; the
//! tests compare with initialised networks). Activations are the values
//! per image that the autodiff graph keeps for the backward pass, counted
//! layer by layer for this crate's forward passes (`norm.rs`, `block.rs`,
//! `head.rs`):
//!
//! - a convolution keeps its input (the tensor before it, counted there)
//!   and its weights, not its output;
//! - BatchNorm keeps one tensor the size of its input (`fast_norm` keeps
//!   `x`; the tensor formula of other backends keeps `x − mean`), GroupNorm
//!   two (`x − mean` and the normalised values, which the scale
//!   multiplies), no normalisation none;
//! - a ReLU keeps its input (burn's autodiff ReLU checkpoints it), and its
//!   output is the next convolution's input, kept there: two tensors;
//! - the residual sum keeps nothing (the ReLU after it keeps the sum); the
//!   max-pool keeps its input (the ReLU's output) and its indices, one
//!   value (i32) per output, and its output is the next convolution's
//!   input;
//! - a head keeps its input (the pooled features, counted by the encoder;
//!   the projection, by the projector), its hidden BatchNorm's input, its
//!   ReLU's input and output, and its output.
//!
//! So a convolution + BatchNorm + ReLU costs three values per output
//! element, one without the ReLU. With the training budget's working set
//! (`byol_train::budget`) these counts give the growth of a step's peak
//! memory with the batch to within 10% on the CPU (docs/results.md,
//! "Memory"). Values are f32 on every backend here: four bytes each.
//! Counts are `u64` and saturate, so an absurd size (`augment.size =
//! 100000`) gives a huge number instead of an overflow.

use crate::block::BOTTLENECK_EXPANSION;
use crate::norm::NormKind;
use crate::resnet::{BlockKind, ResNetConfig, Stem};
use crate::{HeadsConfig, MlpHeadConfig};

/// Memory counts of an encoder at one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncoderFootprint {
    /// Values burn's `num_params` counts: weights, biases and BatchNorm
    /// running statistics.
    pub params: u64,
    /// Of `params`, the BatchNorm running means and variances, which no
    /// optimizer updates.
    pub buffers: u64,
    /// Values per image that the autodiff graph keeps for the backward
    /// pass, the input image included (see the module docs).
    pub activations: u64,
    /// Values per image of the largest single tensor of the forward pass
    /// (a layer's output, or the input): what a forward without a graph
    /// holds at once, a few times over.
    pub largest: u64,
    /// Length of the features.
    pub output_dim: u64,
}

impl EncoderFootprint {
    /// Parameters an optimizer updates: `params − buffers`.
    pub fn trainable(&self) -> u64 {
        self.params.saturating_sub(self.buffers)
    }
}

/// Memory counts of an MLP head (see [`MlpHeadConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadFootprint {
    /// Values burn's `num_params` counts.
    pub params: u64,
    /// Of `params`, the hidden BatchNorm's running statistics.
    pub buffers: u64,
    /// Values per image kept for the backward pass: the hidden layer's
    /// ReLU input and output (and BatchNorm's input, with it) and the
    /// output; the input is its producer's.
    pub activations: u64,
}

impl HeadFootprint {
    /// Parameters an optimizer updates.
    pub fn trainable(&self) -> u64 {
        self.params.saturating_sub(self.buffers)
    }
}

/// The projector's and the predictor's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadsFootprint {
    /// g: features → projection.
    pub projector: HeadFootprint,
    /// q: projection → prediction.
    pub predictor: HeadFootprint,
}

/// Spatial size after a stride-2 layer of this crate (every one pads
/// `kernel / 2`, and the max-pool 1): `⌈h / 2⌉`.
fn halve(h: u64) -> u64 {
    h.saturating_sub(1) / 2 + 1
}

/// Adds up a network's counts as its layers are visited in forward order.
struct Counter {
    norm: NormKind,
    out: EncoderFootprint,
}

impl Counter {
    /// Keeps `times` tensors of `values` per image.
    fn keep(&mut self, values: u64, times: u64) {
        self.out.activations = self
            .out
            .activations
            .saturating_add(values.saturating_mul(times));
        self.out.largest = self.out.largest.max(values);
    }

    fn add_params(&mut self, n: u64) {
        self.out.params = self.out.params.saturating_add(n);
    }

    /// A `k×k` convolution without bias to `c_out` channels of `hw` pixels;
    /// returns its output's values per image.
    fn conv(&mut self, c_in: u64, c_out: u64, k: u64, hw: u64) -> u64 {
        self.add_params(c_out.saturating_mul(c_in).saturating_mul(k * k));
        let out = c_out.saturating_mul(hw);
        self.out.largest = self.out.largest.max(out);
        out
    }

    /// The normalisation of `c` channels after a convolution with `values`
    /// outputs per image.
    fn norm(&mut self, c: u64, values: u64) {
        match self.norm {
            NormKind::Batch => {
                self.add_params(c.saturating_mul(4));
                self.out.buffers = self.out.buffers.saturating_add(c.saturating_mul(2));
                self.keep(values, 1);
            }
            NormKind::GroupWs => {
                self.add_params(c.saturating_mul(2));
                self.keep(values, 2);
            }
            NormKind::None => {}
        }
    }

    /// A ReLU over `values` per image: its input and its output.
    fn relu(&mut self, values: u64) {
        self.keep(values, 2);
    }

    /// Convolution and normalisation; returns the output's values.
    fn conv_norm(&mut self, c_in: u64, c_out: u64, k: u64, hw: u64) -> u64 {
        let out = self.conv(c_in, c_out, k, hw);
        self.norm(c_out, out);
        out
    }
}

impl ResNetConfig {
    /// The counts of this encoder for `size`×`size` inputs.
    pub fn footprint(&self, size: usize) -> EncoderFootprint {
        let mut n = Counter {
            norm: self.norm,
            out: EncoderFootprint::default(),
        };
        let s = size as u64;
        let stem_width = (self.base_width as u64).saturating_mul(self.width_multiplier as u64);
        // the input image, kept by the first convolution
        n.keep(
            (self.in_channels as u64).saturating_mul(s.saturating_mul(s)),
            1,
        );
        let (kernel, mut h) = match self.stem {
            Stem::Imagenet => (7, halve(s)),
            Stem::Cifar => (3, s),
            Stem::Small => (3, halve(s)),
        };
        let stem = n.conv_norm(
            self.in_channels as u64,
            stem_width,
            kernel,
            h.saturating_mul(h),
        );
        n.relu(stem);
        if self.stem == Stem::Imagenet {
            h = halve(h);
            // the pooled output (the next convolutions' input) and its indices
            n.keep(stem_width.saturating_mul(h.saturating_mul(h)), 2);
        }
        let mut channels = stem_width;
        for (i, &blocks) in self.layers.iter().enumerate() {
            let planes = stem_width.checked_shl(i as u32).unwrap_or(u64::MAX);
            for j in 0..blocks {
                let stride2 = i > 0 && j == 0;
                let h_out = if stride2 { halve(h) } else { h };
                let (hw_in, hw) = (h.saturating_mul(h), h_out.saturating_mul(h_out));
                let out_channels = match self.block {
                    BlockKind::Basic => {
                        let a = n.conv_norm(channels, planes, 3, hw);
                        n.relu(a);
                        n.conv_norm(planes, planes, 3, hw);
                        planes
                    }
                    BlockKind::Bottleneck => {
                        // v1.5: the stride is on the 3×3
                        let a = n.conv_norm(channels, planes, 1, hw_in);
                        n.relu(a);
                        let b = n.conv_norm(planes, planes, 3, hw);
                        n.relu(b);
                        let out = planes.saturating_mul(BOTTLENECK_EXPANSION as u64);
                        n.conv_norm(planes, out, 1, hw);
                        out
                    }
                };
                if stride2 || channels != out_channels {
                    n.conv_norm(channels, out_channels, 1, hw);
                }
                // the ReLU after the residual sum: the sum and the block's output
                n.relu(out_channels.saturating_mul(hw));
                channels = out_channels;
                h = h_out;
            }
        }
        // the pooled features, kept by the projector's first layer
        n.keep(channels, 1);
        n.out.output_dim = channels;
        n.out
    }
}

impl MlpHeadConfig {
    /// The counts of this head.
    pub fn footprint(&self) -> HeadFootprint {
        let (d_in, hidden, d_out) = (
            self.d_input as u64,
            self.d_hidden as u64,
            self.d_output as u64,
        );
        let linear = |i: u64, o: u64| i.saturating_mul(o).saturating_add(o);
        let bn = u64::from(self.batch_norm);
        HeadFootprint {
            params: linear(d_in, hidden)
                .saturating_add(linear(hidden, d_out))
                .saturating_add(hidden.saturating_mul(4 * bn)),
            buffers: hidden.saturating_mul(2 * bn),
            activations: hidden.saturating_mul(2 + bn).saturating_add(d_out),
        }
    }
}

impl HeadsConfig {
    /// The counts of the projector (from `features` inputs) and the
    /// predictor, as [`crate::Byol::new`] builds them.
    pub fn footprint(&self, features: usize) -> HeadsFootprint {
        let head = |d_input, d_hidden| {
            MlpHeadConfig::new(d_input, d_hidden, self.projection_dim)
                .with_batch_norm(self.batch_norm)
                .footprint()
        };
        HeadsFootprint {
            projector: head(features, self.projector_hidden),
            predictor: head(self.projection_dim, self.predictor_hidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Module;

    type B = Flex;

    fn num_params(config: &ResNetConfig) -> u64 {
        config.init::<B>(&Default::default()).num_params() as u64
    }

    #[test]
    fn parameter_counts_equal_burns_for_the_shipped_encoders() {
        for config in [
            ResNetConfig::small(),
            ResNetConfig::resnet18(),
            ResNetConfig::resnet50(),
            ResNetConfig::resnet18().with_stem(Stem::Cifar),
            ResNetConfig::small().with_norm(NormKind::GroupWs, 8),
            ResNetConfig::small().with_norm(NormKind::None, 1),
            ResNetConfig::small()
                .with_width_multiplier(2)
                .with_in_channels(3),
        ] {
            let counted = config.footprint(32);
            assert_eq!(counted.params, num_params(&config), "{config:?}");
            assert_eq!(counted.output_dim, config.output_dim() as u64);
        }
    }

    #[test]
    fn buffers_are_the_batch_norm_running_statistics() {
        // resnet18: 4,800 BatchNorm channels, a mean and a variance each
        assert_eq!(ResNetConfig::resnet18().footprint(224).buffers, 2 * 4_800);
        let gn = ResNetConfig::resnet18().with_norm(NormKind::GroupWs, 32);
        assert_eq!(gn.footprint(224).buffers, 0);
    }

    #[test]
    fn head_counts_equal_burns() {
        let device = Default::default();
        for bn in [true, false] {
            let config = MlpHeadConfig::new(128, 512, 64).with_batch_norm(bn);
            let head = config.init::<B>(&device);
            assert_eq!(config.footprint().params, head.num_params() as u64);
        }
        let heads = HeadsConfig::new(64, 16, 32);
        let byol = crate::Byol::new(
            ResNetConfig::small().init::<B>(&device),
            None,
            &heads,
            &device,
        );
        let f = heads.footprint(128);
        assert_eq!(
            f.projector.params + f.predictor.params,
            byol.online.projector.num_params() as u64 + byol.online.predictor.num_params() as u64
        );
    }

    #[test]
    fn resnet50_at_224_keeps_31_million_values_per_image() {
        // Σ over its 53 convolutions of the kept tensors, as the module
        // docs count them: 124 MB per 224-px image, pinned so that a change
        // of the counting shows
        let f = ResNetConfig::resnet50().footprint(224);
        assert_eq!(f.activations, 30_885_376);
        // the largest tensor is a stage-1 bottleneck's 256 × 56 × 56 output
        // (as large as the stem's 64 × 112 × 112)
        assert_eq!(f.largest, 64 * 112 * 112);
    }

    #[test]
    fn activations_grow_with_the_pixels_and_saturate_instead_of_overflowing() {
        let small = ResNetConfig::small();
        let (a, b) = (small.footprint(28), small.footprint(56));
        let ratio = b.activations as f64 / a.activations as f64;
        assert!((3.0..4.5).contains(&ratio), "{ratio}");
        let huge = ResNetConfig::resnet50()
            .with_width_multiplier(1 << 20)
            .footprint(100_000);
        assert!(huge.activations > 1 << 50);
        assert!(huge.params > 1 << 50);
    }
}
