//! A run folder after pretraining: its resolved config and the encoder it
//! learned, for evaluation, embeddings and export.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use byol_data::{Dataset, OpenOptions, Split, Subset};
use byol_model::{Byol, ResNet};
use serde::Serialize;

use crate::checkpoint::{load_record, newest_usable};
use crate::{RunConfig, TrainError};

/// Which of BYOL's two encoders to take from a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The online encoder f_θ, trained by gradient descent: the one BYOL
    /// keeps, saved as `encoder.mpk` when the run ends.
    #[default]
    Online,
    /// The target encoder f_ξ, the moving average of the online one, from
    /// the run's newest checkpoint (finished or not). solo-learn and lightly
    /// monitor it too; it can be a little better or worse than the online
    /// encoder.
    Target,
}

/// An encoder taken from a run, and where its weights came from.
#[derive(Debug)]
pub struct LoadedEncoder<B: Backend> {
    /// The encoder, in whatever mode `B` gives it (evaluation on a
    /// non-autodiff backend).
    pub encoder: ResNet<B>,
    /// The file its weights were read from.
    pub weights: PathBuf,
    /// The training step of those weights, when known (checkpoints record
    /// it; `encoder.mpk` is the run's last step).
    pub step: Option<usize>,
}

/// File name of the trained encoder inside a run folder.
pub const ENCODER_FILE: &str = "encoder.mpk";

/// A run folder written by [`crate::pretrain`]: `config.toml`,
/// `encoder.mpk`, `metrics.jsonl`, `summary.json`, `checkpoints/`.
#[derive(Debug, Clone)]
pub struct Run {
    /// The folder.
    pub dir: PathBuf,
    /// Its resolved config (`config.toml`).
    pub config: RunConfig,
}

impl Run {
    /// Reads the run's `config.toml`.
    ///
    /// # Errors
    ///
    /// [`TrainError::ConfigFile`] naming the file when it is missing or
    /// invalid.
    pub fn open(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.toml");
        if !path.is_file() {
            return Err(TrainError::ConfigFile {
                path: path.display().to_string(),
                message: format!(
                    "no such file: {} is not a run folder (cargo xtask pretrain --out DIR makes one)",
                    dir.display()
                ),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config: RunConfig::load(Some(&path), &[])?,
        })
    }

    /// Path of the trained encoder's weights.
    pub fn encoder_path(&self) -> PathBuf {
        self.dir.join(ENCODER_FILE)
    }

    /// Path of `metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// Loads the trained encoder (the online encoder at the end of the run)
    /// onto `device`, as the run's config describes it; the number of input
    /// channels is read from the weights.
    ///
    /// # Errors
    ///
    /// [`TrainError::Checkpoint`] naming `encoder.mpk` when it is missing
    /// (the run has not finished) or unreadable.
    pub fn load_encoder<B: Backend>(&self, device: &B::Device) -> Result<ResNet<B>, TrainError> {
        let path = self.encoder_path();
        if !path.is_file() {
            return Err(TrainError::Checkpoint {
                path,
                message: "no such file: the run has not finished (its checkpoints hold the networks so far; resume it with `cargo xtask pretrain --resume`, or measure the target encoder of its newest checkpoint with `--network target`)".into(),
            });
        }
        let record: <ResNet<B> as Module<B>>::Record = load_record::<B, _>(&path, device)?;
        let [_, channels, _, _] = record.conv1.weight.val().dims();
        let config = self.config.model.encoder_config(channels);
        config.validate("model")?;
        let expected = config.output_dim();
        let encoder = config.init::<B>(device).load_record(record);
        if encoder.output_dim != expected {
            return Err(TrainError::Checkpoint {
                path,
                message: format!(
                    "the weights give {} features but the run's config.toml describes an encoder of {expected}",
                    encoder.output_dim
                ),
            });
        }
        Ok(encoder)
    }

    /// Loads `network`'s encoder: [`Run::load_encoder`] for the online one;
    /// for the target, the target network of the newest checkpoint whose
    /// state and weights read back.
    ///
    /// # Errors
    ///
    /// As [`Run::load_encoder`] for the online encoder. For the target:
    /// [`TrainError::Checkpoint`] when the run trained without one
    /// (`train.use_momentum = false`), has no checkpoint, or none of them
    /// loads.
    pub fn load_network<B: Backend>(
        &self,
        network: Network,
        device: &B::Device,
    ) -> Result<LoadedEncoder<B>, TrainError> {
        match network {
            Network::Online => Ok(LoadedEncoder {
                encoder: self.load_encoder(device)?,
                weights: self.encoder_path(),
                step: None,
            }),
            Network::Target => self.load_target_encoder(device),
        }
    }

    fn load_target_encoder<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<LoadedEncoder<B>, TrainError> {
        let root = self.dir.join(crate::checkpoint::CHECKPOINTS);
        if !self.config.train.use_momentum {
            return Err(TrainError::Checkpoint {
                path: self.dir.join("config.toml"),
                message: "the run trained without a target network (train.use_momentum = false, the SimSiam variant); evaluate its online encoder".into(),
            });
        }
        newest_usable(&self.dir, |dir| {
            self.target_from_checkpoint::<B>(&dir.join("model.mpk"), device)
        })
        .map(|(dir, state, encoder)| LoadedEncoder {
            encoder,
            weights: dir.join("model.mpk"),
            step: Some(state.step),
        })
        .ok_or_else(|| TrainError::Checkpoint {
            path: root,
            message: "no usable checkpoint (the target network is saved only in checkpoints)"
                .into(),
        })
    }

    fn target_from_checkpoint<B: Backend>(
        &self,
        path: &Path,
        device: &B::Device,
    ) -> Result<ResNet<B>, TrainError> {
        type Record<B> = <Byol<B, ResNet<B>> as Module<B>>::Record;
        let record: Record<B> = load_record::<B, _>(path, device)?;
        let [_, channels, _, _] = record.online.encoder.conv1.weight.val().dims();
        let config = self.config.model.encoder_config(channels);
        config.validate("model")?;
        // the skeleton's own weights are drawn (then replaced): under the
        // guard, so as not to disturb a run initialising beside it
        let byol = Byol::seeded(
            self.config.seed,
            device,
            &self.config.model.heads_config(),
            true,
            |device| config.init::<B>(device),
        );
        // a record without a target (a SimSiam run's) loads as `None`
        byol.load_record(record)
            .target
            .map(|target| target.encoder)
            .ok_or_else(|| TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: "holds no target network".into(),
            })
    }
}

/// Input channels of an encoder.
pub fn encoder_channels<B: Backend>(encoder: &ResNet<B>) -> usize {
    encoder.conv1.weight.dims()[1]
}

/// A callback of a folder scan: `(files checked, files in all)`.
pub type Progress<'a> = Option<&'a (dyn Fn(usize, usize) + Sync)>;

/// Opens one split of the run's data (`data.path`, `data.format`, ...),
/// keeping only its first `limit` images when `limit > 0`.
///
/// # Errors
///
/// [`TrainError::Data`] naming the files when the split cannot be read.
pub fn open_split(
    config: &RunConfig,
    split: Split,
    limit: usize,
) -> Result<Arc<dyn Dataset>, TrainError> {
    open_split_with(config, split, limit, None)
}

/// [`open_split`] reporting the scan of an image folder to `progress`. A
/// split with unreadable files skipped (`data.on_corrupt = "skip"`) is
/// logged with their count.
///
/// # Errors
///
/// As [`open_split`].
pub fn open_split_with(
    config: &RunConfig,
    split: Split,
    limit: usize,
    progress: Progress<'_>,
) -> Result<Arc<dyn Dataset>, TrainError> {
    let d = &config.data;
    let options = OpenOptions {
        on_corrupt: d.on_corrupt,
        cifar100_labels: d.cifar100_labels,
        progress,
    };
    let ds = byol_data::open(&d.path, d.format, split, &options)?;
    if ds.skipped_count() > 0 {
        tracing::warn!(
            "{} unreadable files skipped (data.on_corrupt = \"skip\")",
            ds.skipped_count()
        );
    }
    Ok(if limit > 0 {
        Arc::new(Subset::first(ds, limit))
    } else {
        Arc::from(ds)
    })
}

/// Checks that `dataset` fits `encoder` and the run's transform.
///
/// # Errors
///
/// [`TrainError::Dataset`] naming the data folder when the channel counts
/// differ, [`TrainError::Augment`] when `augment.mean`/`std` do not fit.
pub fn check_fits<B: Backend>(
    config: &RunConfig,
    encoder: &ResNet<B>,
    dataset: &dyn Dataset,
) -> Result<(), TrainError> {
    let (want, have) = (encoder_channels(encoder), dataset.channels());
    if want != have {
        return Err(TrainError::Dataset(format!(
            "{}: {have}-channel images, but the encoder was trained on {want}-channel images",
            config.data.path.display()
        )));
    }
    config.augment.check_channels(have)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn opening_a_folder_without_config_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Run::open(dir.path()).expect_err("no config.toml");
        assert!(err.to_string().contains("config.toml"), "{err}");
    }

    #[test]
    fn an_unfinished_run_has_no_encoder_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.toml"), "").expect("write");
        let run = Run::open(dir.path()).expect("default config");
        let err = run
            .load_encoder::<Flex>(&Default::default())
            .expect_err("no encoder.mpk");
        assert!(err.to_string().contains("encoder.mpk"), "{err}");
    }

    #[test]
    fn a_run_without_checkpoints_has_no_target_and_says_where_it_looked() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.toml"), "").expect("write");
        let run = Run::open(dir.path()).expect("default config");
        let err = run
            .load_network::<Flex>(Network::Target, &Default::default())
            .expect_err("no checkpoints");
        let text = err.to_string();
        assert!(
            text.contains("checkpoints") && text.contains("no usable checkpoint"),
            "{text}"
        );
    }

    #[test]
    fn the_encoder_loads_with_the_channels_of_its_weights() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.toml"), "").expect("write");
        let device = Default::default();
        // the default config describes the small encoder; weights of a
        // 3-channel one
        let saved = RunConfig::default()
            .model
            .encoder_config(3)
            .init::<Flex>(&device);
        // features first, then the module itself is saved: burn initialises
        // parameters lazily, and a clone of a module not yet used draws its
        // own random weights
        let x = Tensor::<Flex, 4>::ones([1, 3, 28, 28], &device);
        let a: Vec<f32> = saved.forward(x.clone()).into_data().to_vec().expect("f32");
        crate::checkpoint::save_module::<Flex, _>(saved, &dir.path().join(ENCODER_FILE))
            .expect("saved");
        let run = Run::open(dir.path()).expect("run");
        let loaded = run.load_encoder::<Flex>(&device).expect("loads");
        assert_eq!(encoder_channels(&loaded), 3);
        let b: Vec<f32> = loaded.forward(x).into_data().to_vec().expect("f32");
        assert_eq!(a, b);
        // and a fresh encoder differs: the comparison can fail
        let fresh = RunConfig::default()
            .model
            .encoder_config(3)
            .init::<Flex>(&device);
        let c: Vec<f32> = fresh
            .forward(Tensor::ones([1, 3, 28, 28], &device))
            .into_data()
            .to_vec()
            .expect("f32");
        assert_ne!(a, c);
    }
}
