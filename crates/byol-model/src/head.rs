//! The projector and predictor MLPs.

use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::norm::batch_norm;
use crate::precision::{Precision, linear};

/// Linear → BatchNorm → ReLU → Linear.
///
/// "a multi-layer perceptron (MLP) [...] consisting in a linear layer with
/// output size 4096 followed by batch normalization, rectified linear units
/// (ReLU), and a final linear layer with output dimension 256"
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, §3.3].
#[derive(Config, Debug)]
pub struct MlpHeadConfig {
    /// Input features.
    pub d_input: usize,
    /// Hidden features (4096 in the paper).
    pub d_hidden: usize,
    /// Output features (256 in the paper).
    pub d_output: usize,
    /// BatchNorm after the hidden layer; off for the "no BatchNorm" ablation.
    #[config(default = true)]
    pub batch_norm: bool,
}

/// See [`MlpHeadConfig`].
#[derive(Module, Debug)]
pub struct MlpHead<B: Backend> {
    /// First linear layer.
    pub linear1: Linear<B>,
    /// Optional BatchNorm on the hidden layer.
    pub bn: Option<BatchNorm<B>>,
    /// Output linear layer.
    pub linear2: Linear<B>,
}

impl MlpHeadConfig {
    /// Builds the head with fresh weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MlpHead<B> {
        MlpHead {
            // the hidden linear layer needs no bias when BatchNorm follows it,
            // but the references keep it; so do we.
            linear1: LinearConfig::new(self.d_input, self.d_hidden).init(device),
            bn: self
                .batch_norm
                .then(|| BatchNormConfig::new(self.d_hidden).init(device)),
            linear2: LinearConfig::new(self.d_hidden, self.d_output).init(device),
        }
    }
}

impl<B: Backend> MlpHead<B> {
    /// # Shapes
    /// `[batch, d_input]` → `[batch, d_output]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_in(x, Precision::F32)
    }

    /// [`MlpHead::forward`] with the matrix products in `precision`
    /// (BatchNorm and ReLU in f32).
    ///
    /// # Shapes
    /// `[batch, d_input]` → `[batch, d_output]`
    pub fn forward_in(&self, x: Tensor<B, 2>, precision: Precision) -> Tensor<B, 2> {
        let x = linear(&self.linear1, x, precision);
        let x = match &self.bn {
            Some(bn) => batch_norm(bn, x),
            None => x,
        };
        linear(&self.linear2, relu(x), precision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn head_maps_dims_with_and_without_batch_norm() {
        let device = Default::default();
        for bn in [true, false] {
            let head = MlpHeadConfig::new(8, 16, 4)
                .with_batch_norm(bn)
                .init::<Flex>(&device);
            assert_eq!(head.bn.is_some(), bn);
            let y = head.forward(Tensor::<Flex, 2>::ones([5, 8], &device));
            assert_eq!(y.dims(), [5, 4]);
        }
    }
}
