//! What [`crate::pretrain`] would do with a config, found without
//! training: the images, counted as cheaply as the format allows, the
//! steps, and the memory (`cargo xtask pretrain --dry-run`).

use byol_data::{FolderDataset, Format, Split};

use super::data;
use super::session::RunLength;
use crate::budget::{DataFacts, MemoryPlan, MonitorImages};
use crate::{RunConfig, TrainError};

/// The plan of a run: see [`plan_run`].
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// What is known of the data.
    pub data: DataFacts,
    /// How the images were counted, or why they were not.
    pub notes: Vec<String>,
    /// The run's length, when the images are counted and fill a batch.
    pub steps: Option<StepCounts>,
    /// The memory of the run's built-in ResNet, by part.
    pub memory: MemoryPlan,
}

/// The length of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCounts {
    /// Optimizer steps per epoch (the incomplete last batch is dropped).
    pub per_epoch: usize,
    /// Steps of the whole run (`train.epochs`, cut by `train.max_steps`).
    pub total: usize,
    /// Epochs started, the last possibly cut short.
    pub epochs: usize,
}

/// The plan of `config`'s run, without building a network or reading an
/// image: the data is opened as the run opens it (IDX and CIFAR read their
/// files, STL-10 its headers), except an image folder, whose files are
/// only listed ([`FolderDataset::list`]), not pre-scanned. Data that does
/// not exist or does not open is not an error: the plan says so in
/// `notes` and leaves the counts unknown (the memory per step does not
/// depend on them).
///
/// # Errors
///
/// [`TrainError::InvalidConfig`] (and the other config errors of
/// [`RunConfig::validate`]) for a bad config.
pub fn plan_run(config: &RunConfig) -> Result<RunPlan, TrainError> {
    config.validate()?;
    let (data, mut notes) = survey(config);
    let steps = data
        .train_images
        .and_then(|n| match RunLength::new(config, n) {
            Ok(length) => Some(StepCounts {
                per_epoch: length.steps_per_epoch,
                total: length.total_steps,
                epochs: length.epochs,
            }),
            Err(e) => {
                notes.push(e.to_string());
                None
            }
        });
    Ok(RunPlan {
        memory: MemoryPlan::new(config, &data),
        data,
        notes,
        steps,
    })
}

/// What can be learnt of the data cheaply, and how (or why nothing).
fn survey(config: &RunConfig) -> (DataFacts, Vec<String>) {
    let d = &config.data;
    let unknown = |why: String| {
        (
            DataFacts::default(),
            vec![format!("{why}: the images are not counted")],
        )
    };
    match d.path.try_exists() {
        Ok(true) => {}
        Ok(false) => {
            return unknown(format!(
                "data.path {}: no such file or folder",
                d.path.display()
            ));
        }
        Err(e) => return unknown(format!("data.path {}: {e}", d.path.display())),
    }
    let format = match d.format {
        Format::Auto => match byol_data::detect(&d.path) {
            Ok((format, _)) => format,
            Err(e) => return unknown(e.to_string()),
        },
        format => format,
    };
    if format == Format::Folder {
        return list_folder(config);
    }
    match data::open_data(config, false) {
        Ok(run) => (run.facts(), Vec::new()),
        Err(e) => unknown(e.to_string()),
    }
}

/// The counts of an image folder from a listing of its files.
fn list_folder(config: &RunConfig) -> (DataFacts, Vec<String>) {
    let d = &config.data;
    let cut = |n: usize, limit: usize| if limit > 0 { n.min(limit) } else { n };
    let train = match FolderDataset::list(&d.path, d.pretrain_split) {
        Ok(listing) => listing,
        Err(e) => {
            return (
                DataFacts::default(),
                vec![format!("{e}: the images are not counted")],
            );
        }
    };
    let images = cut(train.images, d.train_limit);
    let test = FolderDataset::list(&d.path, Split::Test).ok();
    let monitor = match test {
        Some(test) if config.eval.monitor && train.classes > 0 => MonitorImages::Counted {
            bank: images.min(config.eval.knn.bank_size),
            queries: cut(test.images, d.test_limit),
        },
        _ => MonitorImages::Off,
    };
    let facts = DataFacts {
        train_images: Some(images),
        // image folders are read as RGB
        channels: Some(3),
        monitor,
    };
    let note = "an image folder: its files are listed, not opened (the run's pre-scan of \
                their headers may find bad ones)"
        .to_string();
    (facts, vec![note])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(file: &str, overrides: &[&str]) -> RunConfig {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut all = vec![format!(
            "data.path={:?}",
            root.join("data/fashion-mnist-sample").display().to_string()
        )];
        all.extend(overrides.iter().map(|s| s.to_string()));
        RunConfig::load(Some(&root.join("configs").join(file)), &all).expect("a valid config")
    }

    #[test]
    fn the_default_run_is_planned_from_its_counted_images() {
        let c = config("default.toml", &[]);
        let plan = plan_run(&c).expect("plan");
        assert_eq!(plan.data.train_images, Some(4_000));
        assert_eq!(plan.data.channels, Some(1));
        assert_eq!(
            plan.data.monitor,
            MonitorImages::Counted {
                bank: 4_000,
                queries: 1_000
            }
        );
        // 4,000 / 64 = 62 steps per epoch
        let steps = plan.steps.expect("counted");
        assert_eq!(c.train.batch_size, 64);
        assert_eq!(
            (steps.per_epoch, steps.total, steps.epochs),
            (62, 62 * c.train.epochs, c.train.epochs)
        );
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    }

    #[test]
    fn data_that_is_not_there_leaves_the_counts_unknown_and_says_so() {
        let plan = plan_run(&config(
            "imagenet-resnet50.toml",
            &["data.path=no/such/imagenet"],
        ))
        .expect("the plan still builds");
        assert_eq!(plan.data, DataFacts::default());
        assert!(plan.steps.is_none());
        assert!(
            plan.notes[0].contains("no/such/imagenet: no such file or folder"),
            "{:?}",
            plan.notes
        );
        assert!(plan.memory.step_bytes() > 0);
    }

    #[test]
    fn an_image_folder_is_listed_without_opening_its_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        for rel in [
            "train/a/1.png",
            "train/a/2.png",
            "train/b/3.png",
            "val/b/4.png",
        ] {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            // not an image: a listing does not look inside
            std::fs::write(&path, b"not a png").expect("write");
        }
        let path = format!("data.path={:?}", dir.path().display().to_string());
        let c = config(
            "default.toml",
            &[
                &path,
                "data.format=auto",
                "train.batch_size=2",
                "augment.mean=[0.5]",
            ],
        );
        let plan = plan_run(&c).expect("plan");
        assert_eq!(plan.data.train_images, Some(3));
        assert_eq!(plan.data.channels, Some(3));
        assert_eq!(
            plan.data.monitor,
            MonitorImages::Counted {
                bank: 3,
                queries: 1
            }
        );
        assert_eq!(plan.steps.map(|s| s.per_epoch), Some(1));
        assert!(
            plan.notes[0].contains("listed, not opened"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn fewer_images_than_a_batch_is_a_note_not_an_error() {
        let plan = plan_run(&config("default.toml", &["data.train_limit=10"])).expect("plan");
        assert!(plan.steps.is_none());
        assert!(plan.notes[0].contains("fewer than"), "{:?}", plan.notes);
    }
}
