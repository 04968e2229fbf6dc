//! Turning images into feature vectors.

use burn::prelude::*;
use byol_augment::EvalTransform;
use byol_data::{Dataset, Image};
use byol_model::Encoder;
use rayon::prelude::*;

use crate::EvalError;

/// The first `limit` samples of `dataset` (all of them when `limit` is 0).
pub fn sample_count(dataset: &dyn Dataset, limit: usize) -> usize {
    match limit {
        0 => dataset.len(),
        n => n.min(dataset.len()),
    }
}

/// Labels of the first `limit` samples (`limit` 0: all).
///
/// # Errors
///
/// [`EvalError::Unlabelled`] naming the first sample without a label.
pub fn labels(dataset: &dyn Dataset, limit: usize) -> Result<Vec<u32>, EvalError> {
    (0..sample_count(dataset, limit))
        .map(|i| {
            dataset
                .label(i)
                .ok_or_else(|| EvalError::Unlabelled(dataset.name(i)))
        })
        .collect()
}

/// Runs `per_batch` on the evaluation-transformed images of the first
/// `limit` samples, `batch_size` at a time, decoding in parallel; calls
/// `progress(done)` after each batch, and gives up with
/// [`EvalError::Stopped`] when `stop()` says so before a batch.
fn transformed_batches<T>(
    dataset: &dyn Dataset,
    limit: usize,
    transform: &EvalTransform,
    batch_size: usize,
    progress: &dyn Fn(usize),
    stop: &dyn Fn() -> bool,
    mut per_batch: impl FnMut(Vec<f32>, usize) -> Result<T, EvalError>,
) -> Result<Vec<T>, EvalError> {
    if batch_size == 0 {
        return Err(EvalError::InvalidConfig {
            key: "eval.batch_size".into(),
            value: "0".into(),
            expected: "at least 1".into(),
        });
    }
    let n = sample_count(dataset, limit);
    let mut out = Vec::with_capacity(n.div_ceil(batch_size));
    let mut start = 0;
    while start < n {
        if stop() {
            return Err(EvalError::Stopped);
        }
        let end = (start + batch_size).min(n);
        let images: Vec<Image> = (start..end)
            .into_par_iter()
            .map(|i| dataset.image(i))
            .collect::<Result<_, _>>()?;
        let refs: Vec<_> = images.iter().map(Image::as_ref).collect();
        out.push(per_batch(transform.batch(&refs), end - start)?);
        progress(end);
        start = end;
    }
    Ok(out)
}

/// Encodes the first `limit` images of `dataset` (`limit` 0: all) with
/// `encoder`, after the evaluation transform, `batch_size` at a time.
/// Returns `[n, encoder.output_dim()]`.
///
/// Run it on an evaluation-mode encoder (`model.valid()`), whose BatchNorm
/// layers use running statistics. `progress(done)` is called after each
/// batch.
///
/// # Errors
///
/// [`EvalError::InvalidConfig`] when `batch_size` is 0, [`EvalError::Data`]
/// when an image cannot be decoded.
pub fn extract_features<B: Backend, E: Encoder<B>>(
    encoder: &E,
    dataset: &dyn Dataset,
    limit: usize,
    transform: &EvalTransform,
    batch_size: usize,
    device: &B::Device,
    progress: &dyn Fn(usize),
) -> Result<Tensor<B, 2>, EvalError> {
    features_of(
        encoder,
        dataset,
        limit,
        transform,
        batch_size,
        device,
        progress,
        &|| false,
    )
}

/// [`extract_features`] without progress reports that can be called off:
/// `stop()` is asked before each batch, and when it says so the work ends
/// with [`EvalError::Stopped`] (a long evaluation inside a training run
/// that was asked to stop).
///
/// # Errors
///
/// As [`extract_features`], and [`EvalError::Stopped`].
pub fn extract_features_unless<B: Backend, E: Encoder<B>>(
    encoder: &E,
    dataset: &dyn Dataset,
    limit: usize,
    transform: &EvalTransform,
    batch_size: usize,
    device: &B::Device,
    stop: &dyn Fn() -> bool,
) -> Result<Tensor<B, 2>, EvalError> {
    features_of(
        encoder,
        dataset,
        limit,
        transform,
        batch_size,
        device,
        &|_| {},
        stop,
    )
}

#[allow(clippy::too_many_arguments)] // private; the two public entries above have fewer
fn features_of<B: Backend, E: Encoder<B>>(
    encoder: &E,
    dataset: &dyn Dataset,
    limit: usize,
    transform: &EvalTransform,
    batch_size: usize,
    device: &B::Device,
    progress: &dyn Fn(usize),
    stop: &dyn Fn() -> bool,
) -> Result<Tensor<B, 2>, EvalError> {
    let (c, s) = (dataset.channels(), transform.size);
    let chunks = transformed_batches(
        dataset,
        limit,
        transform,
        batch_size,
        progress,
        stop,
        |pixels, n| {
            let x = Tensor::<B, 1>::from_floats(pixels.as_slice(), device).reshape([n, c, s, s]);
            Ok(encoder.encode(x))
        },
    )?;
    if chunks.is_empty() {
        return Ok(Tensor::zeros([0, encoder.output_dim()], device));
    }
    Ok(Tensor::cat(chunks, 0))
}

/// Encodes the first `limit` images of `dataset` (`limit` 0: all) as
/// [`extract_features`] does, but hands each batch's features to
/// `per_batch(first_index, values)` as they come, row-major
/// `[rows, encoder.output_dim()]` on the host, so that datasets larger than
/// the device's memory can be written out. The images done so far are
/// `first_index + values.len() / output_dim` (for a progress report).
///
/// # Errors
///
/// As [`extract_features`], and whatever `per_batch` returns.
pub fn for_each_feature_batch<B: Backend, E: Encoder<B>>(
    encoder: &E,
    dataset: &dyn Dataset,
    limit: usize,
    transform: &EvalTransform,
    batch_size: usize,
    device: &B::Device,
    per_batch: &mut dyn FnMut(usize, Vec<f32>) -> Result<(), EvalError>,
) -> Result<(), EvalError> {
    let (c, s) = (dataset.channels(), transform.size);
    let mut start = 0;
    transformed_batches(
        dataset,
        limit,
        transform,
        batch_size,
        &|_| {},
        &|| false,
        |pixels, n| {
            let x = Tensor::<B, 1>::from_floats(pixels.as_slice(), device).reshape([n, c, s, s]);
            let values: Vec<f32> = encoder
                .encode(x)
                .into_data()
                .convert::<f32>()
                .into_vec()
                .map_err(|e| EvalError::Data(format!("{e:?}")))?;
            per_batch(start, values)?;
            start += n;
            Ok(())
        },
    )?;
    Ok(())
}

/// Raw pixels in [0, 1] after the geometric part of `transform` (resize and
/// centre crop, no normalisation), one row per image: the baseline a
/// learned representation has to beat. `stop` is asked before each batch,
/// as in [`extract_features_unless`].
///
/// # Errors
///
/// As [`extract_features_unless`].
pub fn pixel_features<B: Backend>(
    dataset: &dyn Dataset,
    limit: usize,
    transform: &EvalTransform,
    batch_size: usize,
    device: &B::Device,
    stop: &dyn Fn() -> bool,
) -> Result<Tensor<B, 2>, EvalError> {
    let plain = EvalTransform {
        mean: vec![0.0],
        std: vec![1.0],
        ..transform.clone()
    };
    let d = dataset.channels() * plain.size * plain.size;
    let chunks = transformed_batches(
        dataset,
        limit,
        &plain,
        batch_size,
        &|_| {},
        stop,
        |pixels, n| Ok(Tensor::<B, 1>::from_floats(pixels.as_slice(), device).reshape([n, d])),
    )?;
    if chunks.is_empty() {
        return Ok(Tensor::zeros([0, d], device));
    }
    Ok(Tensor::cat(chunks, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    use burn::backend::Flex;
    use byol_data::{IdxDataset, ImageSet};

    /// The 4×4 images as they are, normalised by (0.5, 0.25).
    fn transform() -> EvalTransform {
        EvalTransform {
            size: 4,
            resize: 0,
            mean: vec![0.5],
            std: vec![0.25],
        }
    }

    fn dataset() -> IdxDataset {
        let pixels: Vec<u8> = (0..5 * 4 * 4).map(|i| (i * 7 % 256) as u8).collect();
        IdxDataset::new(
            ImageSet {
                pixels,
                height: 4,
                width: 4,
                channels: 1,
            },
            Some(vec![0, 1, 2, 1, 0]),
            "test",
        )
        .expect("as many labels as images")
    }

    #[test]
    fn feature_extraction_stops_when_asked_and_not_otherwise() {
        let ds = dataset();
        let t = transform();
        let device = Default::default();
        let encoder = byol_model::ResNetConfig::small().init::<Flex>(&device);
        let all = extract_features(&encoder, &ds, 0, &t, 2, &device, &|_| {}).expect("features");
        let never =
            extract_features_unless(&encoder, &ds, 0, &t, 2, &device, &|| false).expect("features");
        assert_eq!(never.dims(), [5, 128]);
        assert_eq!(
            never.into_data().to_vec::<f32>().expect("f32"),
            all.into_data().to_vec::<f32>().expect("f32")
        );
        // asked before each of the three batches; says stop at the second
        let asked = Cell::new(0);
        let stopped =
            extract_features_unless(&encoder, &ds, 0, &t, 2, &device, &second_ask_stops(&asked));
        assert!(matches!(stopped, Err(EvalError::Stopped)), "{stopped:?}");
        assert_eq!(asked.get(), 2, "no batch after the stop");
    }

    /// A stop flag that counts the times it is asked and says stop at the
    /// second.
    fn second_ask_stops(asked: &Cell<usize>) -> impl Fn() -> bool + '_ {
        move || {
            asked.set(asked.get() + 1);
            asked.get() == 2
        }
    }

    #[test]
    fn pixel_features_stop_between_batches() {
        let ds = dataset();
        let t = transform();
        let asked = Cell::new(0);
        let stopped = pixel_features::<Flex>(
            &ds,
            0,
            &t,
            2,
            &Default::default(),
            &second_ask_stops(&asked),
        );
        assert!(matches!(stopped, Err(EvalError::Stopped)), "{stopped:?}");
        assert_eq!(asked.get(), 2, "no batch after the stop");
    }

    #[test]
    fn pixel_features_are_the_pixels_scaled_to_unit_range() {
        let ds = dataset();
        let t = transform();
        let f = pixel_features::<Flex>(&ds, 3, &t, 2, &Default::default(), &|| false)
            .expect("features");
        assert_eq!(f.dims(), [3, 16]);
        let v: Vec<f32> = f.into_data().to_vec().expect("f32");
        let expected: Vec<f32> = ds.images.pixels[..48]
            .iter()
            .map(|&p| f32::from(p) / 255.0)
            .collect();
        assert_eq!(v, expected);
        assert_eq!(labels(&ds, 0).expect("labelled"), vec![0, 1, 2, 1, 0]);
        assert_eq!(labels(&ds, 2).expect("labelled"), vec![0, 1]);
    }

    #[test]
    fn unlabelled_data_is_an_error_naming_the_sample() {
        let mut ds = dataset();
        ds.labels = None;
        let err = labels(&ds, 0).expect_err("no labels");
        assert!(matches!(err, EvalError::Unlabelled(_)), "{err}");
    }
}
