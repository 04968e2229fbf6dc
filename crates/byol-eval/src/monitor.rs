//! The kNN monitor of pretraining: the weighted kNN top-1/top-5 of an
//! encoder (or of raw pixels, the floor to beat) with the labelled training
//! images as memory and the test images as queries, as lightly's and
//! solo-learn's benchmarks report it during training.

use std::sync::Arc;

use burn::prelude::*;
use byol_data::Dataset;
use byol_model::Encoder;

use crate::{
    EvalError, EvalTransform, KnnAccuracy, KnnConfig, extract_features_unless, knn_classify,
    labels, pixel_features,
};

/// The labelled splits of the kNN monitor: the memory bank and the queries,
/// with their labels read once.
pub struct KnnData {
    /// Memory bank images (the training split).
    pub bank: Arc<dyn Dataset>,
    /// Labels of `bank`, in order.
    pub bank_labels: Vec<u32>,
    /// Query images (the test split).
    pub queries: Arc<dyn Dataset>,
    /// Labels of `queries`, in order.
    pub query_labels: Vec<u32>,
}

impl KnnData {
    /// The monitor's data, labels read from both datasets.
    ///
    /// # Errors
    ///
    /// [`EvalError::Unlabelled`] naming the first image without a label.
    pub fn new(bank: Arc<dyn Dataset>, queries: Arc<dyn Dataset>) -> Result<Self, EvalError> {
        Ok(Self {
            bank_labels: labels(&*bank, 0)?,
            query_labels: labels(&*queries, 0)?,
            bank,
            queries,
        })
    }
}

/// How the monitor extracts and compares features.
#[derive(Debug, Clone)]
pub struct KnnMonitorSettings {
    /// The evaluation transform (the run's `[augment]` size, mean, std).
    pub transform: EvalTransform,
    /// Images per forward pass.
    pub batch_size: usize,
    /// k and temperature.
    pub knn: KnnConfig,
}

/// Weighted-kNN accuracy of `encoder`'s features (raw pixels when `None`)
/// on `data`. `stop` is asked before each batch of features: when it
/// returns `true` the evaluation gives up and returns `Ok(None)`, so that a
/// stop request does not wait for a long evaluation.
///
/// # Errors
///
/// Decoding, transform and kNN errors ([`EvalError`]).
pub fn knn_eval<B: Backend, E: Encoder<B>>(
    encoder: Option<&E>,
    data: &KnnData,
    settings: &KnnMonitorSettings,
    device: &B::Device,
    stop: &dyn Fn() -> bool,
) -> Result<Option<KnnAccuracy>, EvalError> {
    let (transform, batch) = (&settings.transform, settings.batch_size);
    let features = |ds: &dyn Dataset| -> Result<Option<Tensor<B, 2>>, EvalError> {
        let computed = match encoder {
            Some(e) => extract_features_unless(e, ds, 0, transform, batch, device, stop),
            None => pixel_features(ds, 0, transform, batch, device, stop),
        };
        match computed {
            Ok(f) => Ok(Some(f)),
            Err(EvalError::Stopped) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let Some(bank) = features(&*data.bank)? else {
        return Ok(None);
    };
    let Some(queries) = features(&*data.queries)? else {
        return Ok(None);
    };
    knn_classify(
        bank,
        &data.bank_labels,
        queries,
        &data.query_labels,
        &settings.knn,
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use byol_data::{IdxDataset, ImageSet};
    use byol_model::{ResNet, ResNetConfig};

    /// `n` 4×4 grey images of two classes: class 0 bright on the left half,
    /// class 1 on the right, with a little per-image variation.
    fn halves(n: usize) -> Arc<dyn Dataset> {
        let mut pixels = Vec::with_capacity(n * 16);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = i % 2;
            for p in 0..16 {
                let left = p % 4 < 2;
                let on = left == (class == 0);
                pixels.push(if on {
                    200 + (i % 7) as u8
                } else {
                    (i % 5) as u8
                });
            }
            labels.push(class as u8);
        }
        let set = ImageSet {
            pixels,
            height: 4,
            width: 4,
            channels: 1,
        };
        Arc::new(IdxDataset::new(set, Some(labels), "halves").expect("one label per image"))
    }

    fn settings() -> KnnMonitorSettings {
        KnnMonitorSettings {
            transform: EvalTransform {
                size: 4,
                resize: 0,
                mean: vec![0.5],
                std: vec![0.25],
            },
            batch_size: 3,
            knn: KnnConfig {
                k: 3,
                temperature: 0.1,
            },
        }
    }

    #[test]
    fn raw_pixels_separate_two_clearly_different_classes() {
        let data = KnnData::new(halves(20), halves(10)).expect("labelled");
        let acc =
            knn_eval::<Flex, ResNet<Flex>>(None, &data, &settings(), &Default::default(), &|| {
                false
            })
            .expect("evaluated")
            .expect("not stopped");
        assert_eq!(acc.top1, 1.0);
    }

    #[test]
    fn a_stop_request_gives_up_without_a_figure() {
        let data = KnnData::new(halves(20), halves(10)).expect("labelled");
        let device = Default::default();
        let encoder = ResNetConfig::small().init::<Flex>(&device);
        let acc = knn_eval(Some(&encoder), &data, &settings(), &device, &|| true)
            .expect("a stop is not an error");
        assert!(acc.is_none());
    }
}
