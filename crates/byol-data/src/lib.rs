//! Datasets for byol-rs.
//!
//! Images are kept as `u8` pixels in `(height, width, channels)` order, the
//! layout every decoder produces; the augmentation crate turns them into
//! normalised `f32` views. Today this crate reads the IDX format of the
//! official MNIST and Fashion-MNIST downloads (gzipped or raw).
//!
//! ```no_run
//! use byol_data::{IdxDataset, Split};
//! let train = IdxDataset::load_dir("data/fashion-mnist-sample", Split::Train)?;
//! assert_eq!(train.images.image(0).pixels.len(), 28 * 28);
//! # Ok::<(), byol_data::DataError>(())
//! ```

mod idx;

pub use idx::{IdxDataset, Split, read_idx_images, read_idx_labels};

use std::path::PathBuf;

/// Errors raised while reading datasets. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the expected magic number.
    #[error("{path}: bad magic number {found:#010x}, expected {expected:#010x} ({what})")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number read.
        found: u32,
        /// The magic number expected.
        expected: u32,
        /// What kind of file was expected.
        what: &'static str,
    },
    /// The file ends before the size its header announces.
    #[error("{path}: truncated: header announces {expected} bytes of data, found {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes of payload the header announces.
        expected: u64,
        /// Bytes of payload present.
        found: u64,
    },
    /// The file is longer than its header announces.
    #[error("{path}: {extra} unexpected trailing bytes after the data the header announces")]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Number of extra bytes.
        extra: u64,
    },
    /// The header is well-formed but its values cannot be used.
    #[error("{path}: invalid header: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Images and labels disagree on the number of samples.
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Number of images.
        n_images: usize,
        /// The label file.
        labels: PathBuf,
        /// Number of labels.
        n_labels: usize,
    },
    /// No file of the expected names exists in a folder.
    #[error("{dir}: no {what} file found (looked for {candidates})")]
    Missing {
        /// The folder searched.
        dir: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// The file names tried, comma separated.
        candidates: String,
    },
}

/// A borrowed image: `height × width × channels` bytes in row-major HWC order.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    /// Pixel bytes, `height * width * channels` long.
    pub pixels: &'a [u8],
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
}

/// Many images of one size stored contiguously, with optional labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// All pixels, image after image, each in HWC order.
    pub pixels: Vec<u8>,
    /// Rows of every image.
    pub height: usize,
    /// Columns of every image.
    pub width: usize,
    /// Channels of every image.
    pub channels: usize,
}

impl ImageSet {
    /// Bytes in one image.
    pub fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match self.image_len() {
            0 => 0,
            n => self.pixels.len() / n,
        }
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`-th image.
    ///
    /// # Panics
    ///
    /// When `index >= self.len()`.
    pub fn image(&self, index: usize) -> ImageRef<'_> {
        let n = self.image_len();
        ImageRef {
            pixels: &self.pixels[index * n..(index + 1) * n],
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }

    /// A new set holding the first `n` images (all of them if fewer).
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.len());
        ImageSet {
            pixels: self.pixels[..n * self.image_len()].to_vec(),
            ..*self
        }
    }
}
