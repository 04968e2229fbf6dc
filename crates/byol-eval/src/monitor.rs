//! The kNN monitor of pretraining: the weighted kNN top-1/top-5 of an
//! encoder (or of raw pixels, the floor to beat) with the labelled training
//! images as memory and the test images as queries, as lightly's and
//! solo-learn's benchmarks report it during training.

use std::sync::Arc;

use burn::prelude::*;
use byol_data::{Dataset, Subset};
use byol_model::Encoder;
use rand::SeedableRng;
use rand::seq::SliceRandom;

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

    /// The same monitor with at most `bank_size` bank images: all of them
    /// when the bank holds no more, else the [`balanced_subset`] of
    /// `seed`, so that evaluation memory is O(`bank_size` × feature dim)
    /// whatever the size of the training split.
    ///
    /// # Errors
    ///
    /// None in practice: the subset's indices are in range by construction
    /// ([`EvalError::Dataset`] otherwise).
    pub fn limit_bank(self, bank_size: usize, seed: u64) -> Result<Self, EvalError> {
        if self.bank.len() <= bank_size {
            return Ok(self);
        }
        let keep = balanced_subset(&self.bank_labels, bank_size, seed);
        let bank_labels = keep.iter().map(|&i| self.bank_labels[i]).collect();
        let bank: Arc<dyn Dataset> = Arc::new(Subset::new(self.bank, keep)?);
        Ok(Self {
            bank,
            bank_labels,
            ..self
        })
    }

    /// Whether the raw-pixel baseline is affordable for images of
    /// `size`×`size`: at most [`RAW_PIXELS_MAX_VALUES`] values per image.
    pub fn raw_pixels_fit(&self, size: usize) -> bool {
        self.bank.channels() * size * size <= RAW_PIXELS_MAX_VALUES
    }
}

/// The largest image, in values (channels × height × width), for which
/// the monitor computes the raw-pixel baseline: 64×64×3. Larger images
/// (224-px photos: 150,528 values, 588 KiB a bank image) would make the
/// baseline the biggest thing in memory for a figure that means little at
/// that size.
pub const RAW_PIXELS_MAX_VALUES: usize = 64 * 64 * 3;

/// Indices of at most `n` of the samples labelled `labels`, balanced
/// across classes: each class's indices shuffled under `seed`, then taken
/// in turn, one per class, until `n` are taken (a class that runs out
/// leaves its turns to the others). Sorted, so that reading the subset
/// walks the dataset forwards. All indices when `n >= labels.len()`.
pub fn balanced_subset(labels: &[u32], n: usize, seed: u64) -> Vec<usize> {
    if n >= labels.len() {
        return (0..labels.len()).collect();
    }
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &label) in labels.iter().enumerate() {
        by_class[label as usize].push(i);
    }
    for (class, members) in by_class.iter_mut().enumerate() {
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(byol_augment::mix_seed(seed, class as u64, 7));
        members.shuffle(&mut rng);
    }
    let mut keep = Vec::with_capacity(n);
    let mut round = 0;
    while keep.len() < n {
        for members in &by_class {
            if let Some(&i) = members.get(round) {
                keep.push(i);
                if keep.len() == n {
                    break;
                }
            }
        }
        round += 1;
    }
    keep.sort_unstable();
    keep
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
                ..KnnConfig::default()
            },
        }
    }

    #[test]
    fn a_balanced_subset_takes_each_class_in_turn_and_depends_on_the_seed() {
        // 90 of class 0, 10 of class 1, 5 of class 2
        let labels: Vec<u32> = (0..105)
            .map(|i| {
                if i < 90 {
                    0
                } else if i < 100 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let count = |keep: &[usize], c: u32| keep.iter().filter(|&&i| labels[i] == c).count();
        let keep = balanced_subset(&labels, 30, 3);
        assert_eq!(keep.len(), 30);
        assert!(keep.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        // class 2 runs out after 5 turns, class 1 after 10: 15 from class 0
        assert_eq!(
            [count(&keep, 0), count(&keep, 1), count(&keep, 2)],
            [15, 10, 5]
        );
        let small = balanced_subset(&labels, 9, 3);
        assert_eq!(
            [count(&small, 0), count(&small, 1), count(&small, 2)],
            [3, 3, 3]
        );
        assert_eq!(balanced_subset(&labels, 30, 3), keep, "seeded");
        assert_ne!(
            balanced_subset(&labels, 30, 4),
            keep,
            "another seed, another subset"
        );
        assert_eq!(
            balanced_subset(&labels, 500, 3),
            (0..105).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_limited_bank_keeps_labels_in_step_with_images() {
        let data = KnnData::new(halves(20), halves(10)).expect("labelled");
        let limited = data.limit_bank(6, 1).expect("in range");
        assert_eq!(limited.bank.len(), 6);
        assert_eq!(limited.queries.len(), 10, "queries untouched");
        for i in 0..6 {
            assert_eq!(limited.bank.label(i), Some(limited.bank_labels[i]));
        }
        assert_eq!(limited.bank_labels.iter().filter(|&&l| l == 0).count(), 3);
        let all = KnnData::new(halves(20), halves(10))
            .expect("labelled")
            .limit_bank(20, 1)
            .expect("all");
        assert_eq!(all.bank.len(), 20);
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
