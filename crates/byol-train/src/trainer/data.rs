//! The images of a run: the pretraining split and, when the data has
//! labelled train and test splits, the kNN monitor's bank and queries.

use std::sync::Arc;

use byol_data::{DataError, Dataset, Split};
use byol_eval::KnnData;

use crate::budget::{DataFacts, MonitorImages};
use crate::run::{Progress, open_split_with};
use crate::{RunConfig, TrainError, progress};

/// What a run reads.
pub(crate) struct RunData {
    /// The pretraining split (`data.pretrain_split`, cut to
    /// `data.train_limit`).
    pub(crate) train: Arc<dyn Dataset>,
    /// The kNN monitor's data; `None` with `eval.monitor = false` or
    /// without labelled train and test splits.
    pub(crate) knn: Option<KnnData>,
}

impl RunData {
    /// What a memory plan needs to know of this data.
    pub(crate) fn facts(&self) -> DataFacts {
        DataFacts {
            train_images: Some(self.train.len()),
            channels: Some(self.train.channels()),
            monitor: self
                .knn
                .as_ref()
                .map_or(MonitorImages::Off, |knn| MonitorImages::Counted {
                    bank: knn.bank.len(),
                    queries: knn.queries.len(),
                }),
        }
    }
}

/// Opens the pretraining split and, when the monitor is on and labelled
/// train and test splits exist, the kNN monitor's; a scan of image
/// folders shows a progress bar when `show`.
///
/// # Errors
///
/// [`TrainError::Data`] naming the files when a split that exists cannot
/// be read.
pub(crate) fn open_data(config: &RunConfig, show: bool) -> Result<RunData, TrainError> {
    let d = &config.data;
    let scan = progress::bar(
        show,
        0,
        "checking files [{bar:30.cyan/blue}] {pos}/{len} {per_sec} ETA {eta}",
    );
    let report = |done: usize, total: usize| {
        scan.set_length(total as u64);
        scan.set_position(done as u64);
    };
    let progress: Progress<'_> = Some(&report);
    let train = open_split_with(config, d.pretrain_split, d.train_limit, progress)?;
    if !config.eval.monitor {
        scan.finish_and_clear();
        return Ok(RunData { train, knn: None });
    }
    let bank = if d.pretrain_split == Split::Train {
        Some(train.clone())
    } else {
        optional(open_split_with(
            config,
            Split::Train,
            d.train_limit,
            progress,
        ))?
    };
    let queries = optional(open_split_with(config, Split::Test, d.test_limit, progress))?;
    scan.finish_and_clear();
    let knn = match (bank, queries) {
        (Some(bank), Some(queries)) => match KnnData::new(bank, queries) {
            Ok(knn) => Some(limit_bank(knn, config)?),
            Err(e) => {
                tracing::info!("no kNN monitor: {e}");
                None
            }
        },
        _ => {
            tracing::info!(path = %d.path.display(), "no labelled train and test splits: no kNN monitor");
            None
        }
    };
    Ok(RunData { train, knn })
}

/// `knn` with at most `eval.knn.bank_size` bank images, saying so when
/// that leaves some out.
fn limit_bank(knn: KnnData, config: &RunConfig) -> Result<KnnData, TrainError> {
    let (all, size) = (knn.bank.len(), config.eval.knn.bank_size);
    let knn = knn.limit_bank(size, config.seed)?;
    if knn.bank.len() < all {
        tracing::info!(
            "kNN bank: {} of {all} training images, class-balanced (eval.knn.bank_size = {size})",
            knn.bank.len()
        );
    }
    Ok(knn)
}

/// A split that may not exist: `None` when the dataset has no such split.
fn optional(
    result: Result<Arc<dyn Dataset>, TrainError>,
) -> Result<Option<Arc<dyn Dataset>>, TrainError> {
    match result {
        Ok(ds) => Ok(Some(ds)),
        Err(TrainError::Data(
            DataError::NoSplit { .. }
            | DataError::UnsupportedSplit { .. }
            | DataError::Missing { .. },
        )) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_bank_is_cut_to_bank_size_while_pretraining_keeps_every_image() {
        let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/fashion-mnist-sample")
            .display()
            .to_string();
        let config = RunConfig::load(
            None,
            &[
                format!("data.path={sample:?}"),
                "eval.knn.bank_size=100".into(),
            ],
        )
        .expect("valid");
        let data = open_data(&config, false).expect("the sample opens");
        assert_eq!(data.train.len(), 4_000, "pretraining sees the whole split");
        let knn = data.knn.expect("the sample is labelled");
        assert_eq!((knn.bank.len(), knn.bank_labels.len()), (100, 100));
        assert_eq!(knn.queries.len(), 1_000, "the queries are not cut");
        for class in 0..10 {
            let n = knn.bank_labels.iter().filter(|&&l| l == class).count();
            assert_eq!(n, 10, "class {class}: balanced");
        }
    }
}
