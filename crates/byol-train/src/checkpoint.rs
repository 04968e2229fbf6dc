//! Saving what a run learned, so that a crash never loses more than the
//! steps since the last checkpoint.
//!
//! A checkpoint is a folder `checkpoints/step-NNNNNNNNN/` of the run folder
//! holding `model.mpk` (online and target networks, BatchNorm statistics
//! included), `optimizer.mpk` and `optimizer-predictor.mpk` (the two
//! parameter groups' states) and `state.json` ([`TrainState`]). It is
//! written whole under a hidden temporary name, every file synced, then
//! renamed into place (a rename within a folder is atomic), so a process
//! killed while writing leaves at most a stray temporary folder and never a
//! torn checkpoint where a good one was. Older checkpoints beyond the
//! configured number are removed only after the new one is in place.

use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::Backend;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use byol_eval::KnnAccuracy;

/// The recorder of every byol-rs file: named MessagePack, full precision.
pub type ByolRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Folder of the checkpoints inside a run folder.
pub const CHECKPOINTS: &str = "checkpoints";

fn output_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn checkpoint_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Where the loop stands, saved beside the weights. Everything random in a
/// run is a function of the seed, the epoch and the step (see
/// [`crate::loader`]), so `step` is the position of every random stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// Sum of the losses of the current epoch's steps so far (as the f32
    /// accumulator held it).
    pub epoch_loss_sum: f64,
    /// Steps of the current epoch so far.
    pub epoch_steps: usize,
    /// τ of the last target update.
    pub tau: f64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Mean loss of the last finished epoch.
    pub last_epoch_loss: Option<f64>,
    /// kNN of raw pixels, measured once at the start.
    pub knn_raw_pixels: Option<KnnAccuracy>,
    /// kNN of the random-init encoder, measured once at the start.
    pub knn_random_init: Option<KnnAccuracy>,
    /// The latest kNN of the trained encoder.
    pub knn_trained: Option<KnnAccuracy>,
    /// The latest test top-1 of the online linear classifier.
    #[serde(default)]
    pub online_linear_top1: Option<f64>,
    /// Its top-5.
    #[serde(default)]
    pub online_linear_top5: Option<f64>,
    /// The online linear classifier's training losses of the current
    /// epoch so far, summed (as its f32 accumulator held them).
    #[serde(default)]
    pub online_linear_loss_sum: f64,
    /// Its training steps of the current epoch so far.
    #[serde(default)]
    pub online_linear_steps: usize,
    /// Logged intervals in a row with a z-std under the collapse threshold.
    pub low_z_std_intervals: usize,
    /// Images skipped as unreadable so far.
    pub skipped_images: usize,
    /// Training wall time so far (all sessions), seconds.
    pub train_seconds: f64,
    /// Time spent waiting for data so far, seconds.
    pub data_wait_seconds: f64,
}

impl TrainState {
    /// The state of a run before its first step.
    pub fn fresh(tau_base: f64) -> Self {
        Self {
            step: 0,
            epoch_loss_sum: 0.0,
            epoch_steps: 0,
            tau: tau_base,
            lr: 0.0,
            last_epoch_loss: None,
            knn_raw_pixels: None,
            knn_random_init: None,
            knn_trained: None,
            online_linear_top1: None,
            online_linear_top5: None,
            online_linear_loss_sum: 0.0,
            online_linear_steps: 0,
            low_z_std_intervals: 0,
            skipped_images: 0,
            train_seconds: 0.0,
            data_wait_seconds: 0.0,
        }
    }
}

/// Writes any burn record (a module's, an optimizer's) to `path` (ending in
/// `.mpk`) under a temporary name, synced, then renamed into place.
///
/// # Errors
///
/// [`TrainError::Output`] when writing or renaming fails.
pub fn save_record<B: Backend, R: Record<B>>(record: R, path: &Path) -> Result<(), TrainError> {
    // the recorder replaces the extension with `.mpk`: write to a hidden
    // `.<name>.mpk` beside the target, then rename it into place
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = path.with_file_name(format!(".{name}.partial"));
    ByolRecorder::new()
        .record(record, base.clone())
        .map_err(|e| output_err(path, e))?;
    let written = base.with_extension("mpk");
    sync_file(&written)?;
    std::fs::rename(&written, path).map_err(|e| output_err(path, e))
}

/// Writes a module's record atomically.
///
/// # Errors
///
/// As [`save_record`].
pub fn save_module<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<(), TrainError> {
    save_record::<B, _>(module.into_record(), path)
}

/// Loads a record written by [`save_record`].
///
/// # Errors
///
/// [`TrainError::Checkpoint`] naming the file when it cannot be read or
/// decoded.
pub fn load_record<B: Backend, R: Record<B>>(
    path: &Path,
    device: &B::Device,
) -> Result<R, TrainError> {
    if !path.is_file() {
        return Err(checkpoint_err(path, "no such file"));
    }
    ByolRecorder::new()
        .load(path.to_path_buf(), device)
        .map_err(|e| checkpoint_err(path, e))
}

/// Loads a module's weights written by [`save_module`] into `module`.
///
/// # Errors
///
/// As [`load_record`]; the record must match the module's structure.
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    Ok(module.load_record(load_record::<B, _>(path, device)?))
}

fn sync_file(path: &Path) -> Result<(), TrainError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| output_err(path, e))
}

/// Writes text to `path` atomically (temporary file, sync, rename).
///
/// # Errors
///
/// [`TrainError::Output`] naming the file.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), TrainError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| output_err(path, e))?;
    sync_file(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| output_err(path, e))
}

/// Name of the checkpoint folder of `step`.
pub fn checkpoint_name(step: usize) -> String {
    format!("step-{step:09}")
}

/// The complete checkpoints of a run folder, newest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let dir = run_dir.join(CHECKPOINTS);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    found
}

/// The newest checkpoint of a run whose `state.json` reads and whose folder
/// `load` accepts: its folder, state and what `load` made of it. Each checkpoint
/// refused on the way (a partial write, a file of another model) is logged
/// as a warning and skipped; `None` when none is usable.
pub fn newest_usable<T>(
    run_dir: &Path,
    mut load: impl FnMut(&Path) -> Result<T, TrainError>,
) -> Option<(PathBuf, TrainState, T)> {
    list_checkpoints(run_dir).into_iter().find_map(|(_, dir)| {
        match read_state(&dir).and_then(|state| Ok((load(&dir)?, state))) {
            Ok((loaded, state)) => Some((dir, state, loaded)),
            Err(e) => {
                tracing::warn!(path = %dir.display(), "skipping an unusable checkpoint: {e}");
                None
            }
        }
    })
}

/// The step of the newest checkpoint whose `state.json` reads: the one
/// [`newest_usable`] tries first (it may still refuse its weights).
pub fn newest_readable_step(run_dir: &Path) -> Option<usize> {
    list_checkpoints(run_dir)
        .into_iter()
        .find_map(|(_, dir)| read_state(&dir).ok().map(|state| state.step))
}

/// Writes the checkpoint of `state.step`: `write` fills a temporary folder,
/// `state.json` is added, everything is synced and the folder renamed into
/// place; then all but the newest `keep` checkpoints are removed.
///
/// # Errors
///
/// [`TrainError::Output`] naming what could not be written.
pub fn write_checkpoint(
    run_dir: &Path,
    state: &TrainState,
    keep: usize,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    let root = run_dir.join(CHECKPOINTS);
    std::fs::create_dir_all(&root).map_err(|e| output_err(&root, e))?;
    let name = checkpoint_name(state.step);
    let tmp = root.join(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| output_err(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| output_err(&tmp, e))?;
    write(&tmp)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| output_err(&tmp, e))?;
    write_atomic(&tmp.join("state.json"), &json)?;
    let target = root.join(&name);
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(|e| output_err(&target, e))?;
    }
    std::fs::rename(&tmp, &target).map_err(|e| output_err(&target, e))?;
    File::open(&root)
        .and_then(|d| d.sync_all())
        .map_err(|e| output_err(&root, e))?;
    for (_, old) in list_checkpoints(run_dir).into_iter().skip(keep) {
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(path = %old.display(), "could not remove an old checkpoint: {e}");
        }
    }
    Ok(target)
}

/// Reads `state.json` of a checkpoint folder.
///
/// # Errors
///
/// [`TrainError::Checkpoint`] naming the file.
pub fn read_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| checkpoint_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| checkpoint_err(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            epoch_loss_sum: 1.5,
            epoch_steps: 2,
            lr: 0.1,
            train_seconds: 1.0,
            ..TrainState::fresh(0.99)
        }
    }

    fn write(run: &Path, step: usize, keep: usize) -> PathBuf {
        write_checkpoint(run, &state(step), keep, |dir| {
            std::fs::write(dir.join("model.mpk"), b"weights").map_err(|e| output_err(dir, e))
        })
        .expect("checkpoint written")
    }

    #[test]
    fn checkpoints_are_listed_newest_first_and_only_the_last_k_kept() {
        let run = tempfile::tempdir().expect("tempdir");
        for step in [10, 20, 30] {
            write(run.path(), step, 2);
        }
        let steps: Vec<usize> = list_checkpoints(run.path()).iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![30, 20]);
        let newest = &list_checkpoints(run.path())[0].1;
        assert_eq!(read_state(newest).expect("state").step, 30);
    }

    #[test]
    fn a_checkpoint_interrupted_while_written_is_never_listed() {
        let run = tempfile::tempdir().expect("tempdir");
        write(run.path(), 10, 2);
        // a writer that dies half-way: its files stay in the hidden folder
        let err = write_checkpoint(run.path(), &state(20), 2, |dir| {
            std::fs::write(dir.join("model.mpk"), b"half").map_err(|e| output_err(dir, e))?;
            Err(output_err(dir, "killed"))
        });
        assert!(err.is_err());
        let listed = list_checkpoints(run.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, 10);
        assert_eq!(
            std::fs::read(listed[0].1.join("model.mpk")).expect("intact"),
            b"weights"
        );
        // the next write of the same step replaces the stray partial folder
        write(run.path(), 20, 2);
        assert_eq!(list_checkpoints(run.path())[0].0, 20);
    }

    #[test]
    fn records_are_written_beside_and_renamed_into_place() {
        use burn::backend::Flex;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("layer.mpk");
        let layer = burn::nn::LinearConfig::new(2, 3).init::<Flex>(&Default::default());
        let weights: Vec<f32> = layer.weight.val().into_data().to_vec().expect("f32");
        save_module::<Flex, _>(layer, &path).expect("saved");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["layer.mpk".to_string()]);
        let fresh = burn::nn::LinearConfig::new(2, 3).init::<Flex>(&Default::default());
        let loaded = load_module(fresh, &path, &Default::default()).expect("loads");
        let again: Vec<f32> = loaded.weight.val().into_data().to_vec().expect("f32");
        assert_eq!(weights, again);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let run = tempfile::tempdir().expect("tempdir");
        let dir = write(run.path(), 5, 1);
        std::fs::write(dir.join("state.json"), "{ not json").expect("write");
        let err = read_state(&dir).expect_err("corrupt");
        assert!(err.to_string().contains("state.json"), "{err}");
    }
}
