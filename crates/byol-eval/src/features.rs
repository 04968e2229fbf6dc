//! Turning images into feature vectors.

use burn::prelude::*;
use byol_data::{ImageRef, ImageSet};
use byol_model::Encoder;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// The deterministic transform applied before the encoder at evaluation:
/// resize to `size` and normalise, no random view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalTransform {
    /// Output side in pixels.
    pub size: usize,
    /// Per-channel mean (one value broadcasts).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (one value broadcasts).
    pub std: Vec<f32>,
}

/// Encodes every image of `images` with `encoder`, `batch_size` at a time.
///
/// Run it on an evaluation-mode encoder (`model.valid()`), whose BatchNorm
/// layers use running statistics; the result is `[images.len(), dim]`.
///
/// # Errors
///
/// [`EvalError::InvalidConfig`] when `batch_size` is 0.
pub fn extract_features<B: Backend, E: Encoder<B>>(
    encoder: &E,
    images: &ImageSet,
    transform: &EvalTransform,
    batch_size: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>, EvalError> {
    if batch_size == 0 {
        return Err(EvalError::InvalidConfig {
            key: "eval.batch_size".into(),
            value: "0".into(),
            expected: "at least 1".into(),
        });
    }
    let refs: Vec<ImageRef<'_>> = (0..images.len()).map(|i| images.image(i)).collect();
    let (c, s) = (images.channels, transform.size);
    let chunks: Vec<Tensor<B, 2>> = refs
        .chunks(batch_size)
        .map(|chunk| {
            let pixels = byol_augment::eval_batch(chunk, s, &transform.mean, &transform.std);
            let x = Tensor::<B, 1>::from_floats(pixels.as_slice(), device).reshape([
                chunk.len(),
                c,
                s,
                s,
            ]);
            encoder.encode(x)
        })
        .collect();
    if chunks.is_empty() {
        return Ok(Tensor::zeros([0, encoder.output_dim()], device));
    }
    Ok(Tensor::cat(chunks, 0))
}

/// Raw pixels scaled to [0, 1], one row per image: the baseline a learned
/// representation has to beat.
pub fn pixel_features<B: Backend>(images: &ImageSet, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = images
        .pixels
        .iter()
        .map(|&p| f32::from(p) / 255.0)
        .collect();
    Tensor::<B, 1>::from_floats(values.as_slice(), device)
        .reshape([images.len(), images.image_len()])
}
