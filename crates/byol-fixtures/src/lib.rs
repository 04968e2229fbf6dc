//! Synthetic data for byol-rs's tests and benchmarks, written at run time
//! so that nothing large is committed and nothing is downloaded.
//!
//! - [`jpeg`]: a small JPEG writer for what the `image` crate cannot
//!   write (progressive, CMYK) beside baseline greyscale and YCbCr, with an
//!   optional EXIF orientation;
//! - [`photo_folder`]: an ImageNet-like folder (`train/` and `val/`, class
//!   subfolders, photos of about 500×375 in varied sizes) holding some of
//!   each variant, one EXIF-rotated file and one truncated file.

pub mod jpeg;
mod photos;

pub use photos::{PhotoFolder, Written, photo, photo_folder};

/// What can go wrong while writing fixtures.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Pixel buffer and size disagree, or a side is 0 or above 65,535.
    #[error(
        "{samples} samples cannot be a {width}×{height} image of {components} components (sides 1 to 65,535)"
    )]
    Size {
        /// Width asked for.
        width: usize,
        /// Height asked for.
        height: usize,
        /// Samples given.
        samples: usize,
        /// Samples per pixel.
        components: usize,
    },
    /// A file or folder could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A folder spec that makes no sense (no class, no image).
    #[error("bad photo folder: {0}")]
    Spec(String),
}
