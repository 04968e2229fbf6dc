//! Saving what a run learned. Every file is written under a temporary name
//! and renamed into place, so a crash mid-write never leaves a torn file
//! where a good one was.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::Backend;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};

use crate::TrainError;

/// The recorder of every byol-rs file: named MessagePack, full precision.
pub type ByolRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

fn output_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes a module's record to `path` (which should end in `.mpk`)
/// atomically.
///
/// # Errors
///
/// [`TrainError::Output`] when writing or renaming fails.
pub fn save_module<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<(), TrainError> {
    save_record::<B, _>(module.into_record(), path)
}

/// Writes any burn record (a module's, an optimizer's) atomically.
///
/// # Errors
///
/// [`TrainError::Output`] when writing or renaming fails.
pub fn save_record<B: Backend, R: Record<B>>(record: R, path: &Path) -> Result<(), TrainError> {
    // the recorder sets the `.mpk` extension itself
    let tmp: PathBuf = path.with_extension("tmp");
    ByolRecorder::new()
        .record(record, tmp.clone())
        .map_err(|e| output_err(path, e))?;
    std::fs::rename(tmp.with_extension("mpk"), path).map_err(|e| output_err(path, e))
}

/// Loads a module's weights written by [`save_module`] into `module`.
///
/// # Errors
///
/// [`TrainError::Output`] naming the file when it cannot be read or does not
/// match the module.
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, TrainError> {
    let record = ByolRecorder::new()
        .load(path.to_path_buf(), device)
        .map_err(|e| output_err(path, e))?;
    Ok(module.load_record(record))
}
