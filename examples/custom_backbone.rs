//! BYOL pretraining of a backbone of your own, from Rust.
//!
//! The command line trains the built-in ResNets; any burn module that maps
//! images to vectors can be pretrained instead by implementing
//! [`byol_model::Encoder`] and calling [`byol_train::pretrain_encoder`],
//! which runs the same loop: heads, optimizers, schedules, kNN monitor,
//! checkpoints and `--resume`-style continuation.
//!
//! ```sh
//! cargo run --release -p byol-examples --example custom_backbone -- runs/custom
//! ```
//!
//! trains a four-layer CNN for 2 epochs on the shipped Fashion-MNIST sample
//! (about a minute on 2 cores) and prints the kNN figures. The encoder is
//! saved as `runs/custom/encoder.mpk`; load it with
//! `TinyCnnConfig::new(1).init(&device).load_file(path, &recorder, &device)`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d, Relu};
use burn::prelude::*;
use byol_model::Encoder;
use byol_train::{PretrainOptions, RunConfig, pretrain_encoder};

/// A small CNN: four 3×3 convolutions (the 2nd and 4th with stride 2),
/// each followed by BatchNorm and ReLU, then global average pooling.
#[derive(Module, Debug)]
pub struct TinyCnn<B: Backend> {
    convs: Vec<Conv2d<B>>,
    norms: Vec<BatchNorm<B>>,
    pool: AdaptiveAvgPool2d,
    relu: Relu,
    width: usize,
}

/// How to build a [`TinyCnn`].
#[derive(Config, Debug)]
pub struct TinyCnnConfig {
    /// Image channels.
    pub in_channels: usize,
    /// Channels of the last layer, the representation's length.
    #[config(default = 64)]
    pub width: usize,
}

impl TinyCnnConfig {
    /// A freshly initialised network.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TinyCnn<B> {
        let half = self.width / 2;
        let shapes = [
            (self.in_channels, half, 1),
            (half, half, 2),
            (half, self.width, 1),
            (self.width, self.width, 2),
        ];
        let convs = shapes
            .iter()
            .map(|&(i, o, stride)| {
                Conv2dConfig::new([i, o], [3, 3])
                    .with_stride([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(false)
                    .init(device)
            })
            .collect();
        let norms = shapes
            .iter()
            .map(|&(_, o, _)| BatchNormConfig::new(o).init(device))
            .collect();
        TinyCnn {
            convs,
            norms,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            relu: Relu::new(),
            width: self.width,
        }
    }
}

impl<B: Backend> Encoder<B> for TinyCnn<B> {
    /// # Shapes
    /// `[batch, channels, height, width]` → `[batch, width]`
    fn encode(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = images;
        for (conv, norm) in self.convs.iter().zip(&self.norms) {
            x = self.relu.forward(norm.forward(conv.forward(x)));
        }
        // [batch, width, 1, 1] → [batch, width]
        self.pool.forward(x).flatten(1, 3)
    }

    fn output_dim(&self) -> usize {
        self.width
    }
}

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("runs/custom-backbone"), PathBuf::from);
    // the default run's data, views and heads, over 2 epochs; every key
    // can be set here as in a config file (docs/configs.md)
    let overrides: Vec<String> = [
        "data.path=\"data/fashion-mnist-sample\"",
        "augment.mean=[0.286]",
        "augment.std=[0.353]",
        "augment.view1.crop_scale=[0.35, 1.0]",
        "augment.view2.crop_scale=[0.35, 1.0]",
        "augment.view1.blur_p=0.0",
        "augment.view2.blur_p=0.0",
        "train.epochs=2",
        "train.tau_base=0.98",
        "train.predictor_lr_multiplier=10",
    ]
    .map(String::from)
    .to_vec();
    let config = RunConfig::load(None, &overrides)?;
    type B = Autodiff<Flex>;
    let device = Default::default();
    let summary = pretrain_encoder::<B, _>(
        &config,
        &out,
        &device,
        PretrainOptions {
            progress: true,
            ..Default::default()
        },
        |channels, device| TinyCnnConfig::new(channels).init(device),
    )
    .with_context(|| format!("pretraining into {}", out.display()))?;
    let pct = |a: Option<byol_eval::KnnAccuracy>| a.map_or(f64::NAN, |a| 100.0 * a.top1);
    println!(
        "kNN top-1 (k = {}): raw pixels {:.2}%, random init {:.2}%, BYOL {:.2}%; run folder {}",
        config.eval.knn.k,
        pct(summary.knn_raw_pixels),
        pct(summary.knn_random_init),
        pct(summary.knn_trained),
        out.display()
    );
    Ok(())
}
