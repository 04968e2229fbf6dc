//! Datasets for byol-rs.
//!
//! Every format is read behind one object-safe trait, [`Dataset`], that the
//! trainer and the evaluator consume: `len`, `channels`, `image(i)` (decoded
//! on demand, `u8` pixels in `(height, width, channels)` order), `label(i)`
//! and `name(i)`. [`open`] picks the reader from the files present:
//!
//! - IDX (MNIST, Fashion-MNIST; gzipped or raw) — [`IdxDataset`];
//! - CIFAR-10 and CIFAR-100 binary — [`CifarDataset`];
//! - STL-10 binary, including its 100,000 unlabelled images, read from disk
//!   one record at a time — [`Stl10Dataset`];
//! - folders of JPEG/PNG/... images, class subfolders as labels (ImageNet
//!   layout) — [`FolderDataset`], converted to RGB as torchvision's
//!   `ImageFolder` does.
//!
//! Bad input never panics: each reader returns a typed [`DataError`] that
//! names the file and the offset or sample index. Image folders are
//! pre-scanned when opened, and [`OnCorrupt`] decides whether a bad file stops
//! the run (listing every bad file at once) or is dropped with a warning.
//! `docs/data.md` describes the formats, file names, ordering and memory use.
//!
//! ```no_run
//! use std::path::Path;
//! use byol_data::{Format, OpenOptions, Split, open};
//!
//! let train = open(Path::new("data/cifar-10-batches-bin"), Format::Auto, Split::Train,
//!                  &OpenOptions::default())?;
//! let first = train.image(0)?;
//! assert_eq!((first.height, first.width, first.channels), (32, 32, 3));
//! println!("{}: class {:?} of {:?}", train.name(0), train.label(0), train.num_classes());
//! # Ok::<(), byol_data::DataError>(())
//! ```
//!
//! The parsers of the binary formats are also exposed over plain bytes
//! ([`parse_idx_images`], [`parse_cifar`], [`parse_stl10`]) for fuzzing and for
//! data already in memory.

mod cifar;
mod combine;
mod error;
mod folder;
mod idx;
mod open;
mod stl10;

pub use cifar::{Cifar100Labels, CifarDataset, CifarKind, parse_cifar};
pub use combine::{Concat, Subset};
pub use error::{BadFile, DataError};
pub use folder::{FolderDataset, FolderListing, IMAGE_EXTENSIONS};
pub use idx::{IdxDataset, parse_idx_images, parse_idx_labels, read_idx_images, read_idx_labels};
pub use open::{Format, OnCorrupt, OpenOptions, detect, open};
pub use stl10::{Stl10Dataset, parse_stl10};

pub(crate) use idx::file_name;

use std::sync::Arc;

/// Which part of a dataset to read.
///
/// Every format has `Train`; `Test` exists where the download has a test set
/// (an image folder needs `val/` or `test/`); `Unlabeled` and
/// `TrainUnlabeled` exist only for STL-10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The training set.
    Train,
    /// The test (or validation) set.
    Test,
    /// STL-10's 100,000 unlabelled images.
    Unlabeled,
    /// STL-10's 5,000 labelled training images followed by its 100,000
    /// unlabelled ones (labels `None`): the usual self-supervised pool.
    TrainUnlabeled,
}

/// Images and their labels parsed from bytes held in memory, as returned by
/// the pure parsers ([`parse_cifar`], [`parse_stl10`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    /// The images, HWC.
    pub images: ImageSet,
    /// One label per image, `0..num_classes`, when the format has labels.
    pub labels: Option<Vec<u32>>,
}

/// An owned decoded image: `height × width × channels` bytes in row-major HWC
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Pixel bytes, `height * width * channels` long.
    pub pixels: Vec<u8>,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
}

impl Image {
    /// Borrows the image, in the form the augmentations take.
    pub fn as_ref(&self) -> ImageRef<'_> {
        ImageRef {
            pixels: &self.pixels,
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }
}

/// A source of images, decoded one at a time, with optional labels.
///
/// Object-safe and `Send + Sync`, so a `Box<dyn Dataset>` can be shared by
/// data-loading threads. Indices run over `0..len()`; the order is fixed by
/// each format and documented on its type.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there is no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels of every image this dataset yields (1 or 3), known without
    /// decoding.
    fn channels(&self) -> usize;

    /// Decodes sample `index`.
    ///
    /// # Errors
    ///
    /// [`DataError::IndexOutOfRange`] when `index >= len()`; for formats read
    /// on demand, errors that name the file and offset (a file truncated
    /// since it was opened, an image that does not decode).
    fn image(&self, index: usize) -> Result<Image, DataError>;

    /// Label of sample `index`, `0..num_classes()`, if labelled.
    ///
    /// # Panics
    ///
    /// When `index >= len()`.
    fn label(&self, index: usize) -> Option<u32>;

    /// Number of classes when labelled.
    fn num_classes(&self) -> Option<usize>;

    /// Class names when known (folder names, CIFAR-10 names, ...), indexed
    /// by label.
    fn class_names(&self) -> Option<Vec<String>>;

    /// Stable human name of sample `index`: the relative path for folders,
    /// else file and record, e.g. `"test_batch.bin#123"`.
    ///
    /// # Panics
    ///
    /// When `index >= len()`.
    fn name(&self, index: usize) -> String;

    /// Number of files dropped when the dataset was opened with
    /// [`OnCorrupt::Skip`]; 0 for formats that drop nothing.
    fn skipped_count(&self) -> usize {
        0
    }
}

/// A summary (length, channels, classes, first sample's name), so that
/// structs holding a `Box<dyn Dataset>` can derive `Debug`.
impl std::fmt::Debug for dyn Dataset + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("dyn Dataset")
            .field("len", &self.len())
            .field("channels", &self.channels())
            .field("num_classes", &self.num_classes())
            .field("first", &(!self.is_empty()).then(|| self.name(0)))
            .finish()
    }
}

macro_rules! forward_dataset {
    ($($ty:ty),*) => {$(
        impl<D: Dataset + ?Sized> Dataset for $ty {
            fn len(&self) -> usize {
                (**self).len()
            }
            fn is_empty(&self) -> bool {
                (**self).is_empty()
            }
            fn channels(&self) -> usize {
                (**self).channels()
            }
            fn image(&self, index: usize) -> Result<Image, DataError> {
                (**self).image(index)
            }
            fn label(&self, index: usize) -> Option<u32> {
                (**self).label(index)
            }
            fn num_classes(&self) -> Option<usize> {
                (**self).num_classes()
            }
            fn class_names(&self) -> Option<Vec<String>> {
                (**self).class_names()
            }
            fn name(&self, index: usize) -> String {
                (**self).name(index)
            }
            fn skipped_count(&self) -> usize {
                (**self).skipped_count()
            }
        }
    )*};
}

forward_dataset!(Box<D>, Arc<D>, &D);

/// Reads a class-names file, one name per line (blank lines ignored), if it
/// exists.
///
/// # Errors
///
/// [`DataError::Io`] when it exists but cannot be read,
/// [`DataError::BadClassNames`] when it does not hold `expected` names.
pub(crate) fn read_class_names(
    path: &std::path::Path,
    expected: usize,
) -> Result<Option<Vec<String>>, DataError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DataError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let names: Vec<String> = String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() != expected {
        return Err(DataError::BadClassNames {
            path: path.to_path_buf(),
            expected,
            found: names.len(),
        });
    }
    Ok(Some(names))
}

/// [`DataError::IndexOutOfRange`] unless `index < len`.
pub(crate) fn check_index(source_name: &str, index: usize, len: usize) -> Result<(), DataError> {
    if index < len {
        Ok(())
    } else {
        Err(DataError::IndexOutOfRange {
            source_name: source_name.to_string(),
            index,
            len,
        })
    }
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

    /// Copies out the `index`-th image.
    ///
    /// # Panics
    ///
    /// When `index >= self.len()`.
    pub fn to_image(&self, index: usize) -> Image {
        let image = self.image(index);
        Image {
            pixels: image.pixels.to_vec(),
            height: image.height,
            width: image.width,
            channels: image.channels,
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
