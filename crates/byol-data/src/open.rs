//! Choosing the reader: [`Format`], [`detect`] and [`open`].

use std::path::{Path, PathBuf};

use crate::cifar::{Cifar100Labels, CifarDataset, CifarKind};
use crate::folder::{FolderDataset, IMAGE_EXTENSIONS};
use crate::idx::IdxDataset;
use crate::stl10::Stl10Dataset;
use crate::{DataError, Dataset, Split};

/// Which reader to use, as written in a TOML config (`data.format = "auto"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Detect from the files present (see [`detect`]).
    #[default]
    Auto,
    /// IDX files of MNIST / Fashion-MNIST.
    Idx,
    /// CIFAR-10 binary version.
    Cifar10,
    /// CIFAR-100 binary version.
    Cifar100,
    /// STL-10 binary version.
    Stl10,
    /// A folder of image files.
    Folder,
}

/// What to do with bad files found when an image folder is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCorrupt {
    /// Fail with one [`DataError::CorruptFiles`] listing every bad file.
    #[default]
    Fail,
    /// Drop each bad file with a warning; the dataset lists them
    /// ([`FolderDataset::skipped`], [`Dataset::skipped_count`]).
    Skip,
}

/// How [`open`] reads the data, beyond format and split.
#[derive(Clone, Copy, Default)]
pub struct OpenOptions<'a> {
    /// Policy for bad files in image folders (other formats fail on any
    /// defect: a binary file with a bad record is not trustworthy).
    pub on_corrupt: OnCorrupt,
    /// Which CIFAR-100 label to use.
    pub cifar100_labels: Cifar100Labels,
    /// Called as `progress(done, total)` while an image folder is
    /// pre-scanned, every 1024 files and at the end, possibly from several
    /// threads at once.
    pub progress: Option<&'a (dyn Fn(usize, usize) + Sync)>,
}

impl std::fmt::Debug for OpenOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("on_corrupt", &self.on_corrupt)
            .field("cifar100_labels", &self.cifar100_labels)
            .field("progress", &self.progress.map(|_| "Fn(done, total)"))
            .finish()
    }
}

/// CIFAR-100 record: coarse label, fine label, 3072 pixel bytes.
const CIFAR100_RECORD: u64 = 3074;

/// The folder names of the official archives, once extracted.
const KNOWN_SUBFOLDERS: [(&str, Format); 3] = [
    ("cifar-10-batches-bin", Format::Cifar10),
    ("cifar-100-binary", Format::Cifar100),
    ("stl10_binary", Format::Stl10),
];

/// The names that mark each binary format, for detection and its error.
fn markers(format: Format) -> &'static [&'static str] {
    match format {
        Format::Idx => &[
            "train-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte",
            "train-images.idx3-ubyte",
            "t10k-images-idx3-ubyte.gz",
            "t10k-images-idx3-ubyte",
            "t10k-images.idx3-ubyte",
        ],
        Format::Cifar10 => &["data_batch_1.bin", "test_batch.bin"],
        Format::Cifar100 => &["train.bin", "test.bin"],
        Format::Stl10 => &["train_X.bin", "test_X.bin", "unlabeled_X.bin"],
        Format::Auto | Format::Folder => &[],
    }
}

/// Whether `dir` holds files of the binary `format`. CIFAR-100's generic
/// names must also hold whole 3074-byte records; a near miss is noted.
fn holds(dir: &Path, format: Format, notes: &mut Vec<String>) -> bool {
    markers(format).iter().any(|name| {
        let path = dir.join(name);
        if format != Format::Cifar100 {
            return path.is_file();
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                let len = meta.len();
                let whole = len > 0 && len.is_multiple_of(CIFAR100_RECORD);
                if !whole {
                    notes.push(format!(
                        "{} exists but its {len} bytes are not a whole number of \
                         {CIFAR100_RECORD}-byte CIFAR-100 records",
                        path.display()
                    ));
                }
                whole
            }
            _ => false,
        }
    })
}

/// What [`detect`] looks for, in its order.
fn looked_for() -> String {
    let binary: Vec<String> = [
        ("IDX", Format::Idx),
        ("CIFAR-10", Format::Cifar10),
        ("CIFAR-100 (whole 3074-byte records)", Format::Cifar100),
        ("STL-10", Format::Stl10),
    ]
    .iter()
    .map(|(what, f)| format!("{what}: {}", markers(*f).join(" or ")))
    .collect();
    let subfolders: Vec<&str> = KNOWN_SUBFOLDERS.iter().map(|(name, _)| *name).collect();
    format!(
        "{}; the same inside {}/; or image files ({}) for an image folder",
        binary.join("; "),
        subfolders.join("/, "),
        IMAGE_EXTENSIONS.join(", ")
    )
}

/// Detects the format of the data at `path` and the folder that holds its
/// files, from the names present, in this order: IDX, CIFAR-10, CIFAR-100,
/// STL-10 (see `docs/data.md` for the names); then the same inside the
/// folders the official archives extract to (`cifar-10-batches-bin/`,
/// `cifar-100-binary/`, `stl10_binary/`); else any folder is taken for an
/// image folder. Never returns [`Format::Auto`].
///
/// # Errors
///
/// [`DataError::NotFound`] when `path` does not exist,
/// [`DataError::NotRecognized`] when it is not a folder.
pub fn detect(path: &Path) -> Result<(Format, PathBuf), DataError> {
    must_exist(path)?;
    detect_noting(path, &mut Vec::new())
}

/// [`DataError::NotFound`] unless `path` exists, so that a mistyped path
/// is not reported as an unknown layout or a missing file inside it.
fn must_exist(path: &Path) -> Result<(), DataError> {
    match path.try_exists() {
        Ok(true) => Ok(()),
        Ok(false) => Err(DataError::NotFound {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(DataError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn detect_noting(path: &Path, notes: &mut Vec<String>) -> Result<(Format, PathBuf), DataError> {
    const BINARY: [Format; 4] = [
        Format::Idx,
        Format::Cifar10,
        Format::Cifar100,
        Format::Stl10,
    ];
    if let Some(format) = BINARY.into_iter().find(|f| holds(path, *f, notes)) {
        return Ok((format, path.to_path_buf()));
    }
    for (name, format) in KNOWN_SUBFOLDERS {
        let sub = path.join(name);
        if holds(&sub, format, notes) {
            return Ok((format, sub));
        }
    }
    if path.is_dir() {
        return Ok((Format::Folder, path.to_path_buf()));
    }
    Err(DataError::NotRecognized {
        path: path.to_path_buf(),
        looked_for: format!("a folder ({})", looked_for()),
    })
}

/// The folder holding the files of an explicit `format`: `path`, or the
/// official archive's subfolder of it when only that holds them.
fn locate(path: &Path, format: Format) -> PathBuf {
    let mut notes = Vec::new();
    if holds(path, format, &mut notes) {
        return path.to_path_buf();
    }
    KNOWN_SUBFOLDERS
        .iter()
        .filter(|(_, f)| *f == format)
        .map(|(name, _)| path.join(name))
        .find(|sub| holds(sub, format, &mut notes))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Opens one split of the data at `path` behind the [`Dataset`] trait.
///
/// With [`Format::Auto`] the format is found by [`detect`]; an explicit
/// format is read as asked (also from the official archive's subfolder,
/// e.g. `path/cifar-10-batches-bin/`). Binary formats are checked whole when
/// opened (record sizes, labels); image folders are pre-scanned under
/// `options.on_corrupt`.
///
/// # Errors
///
/// [`DataError::NotFound`] when `path` does not exist (checked first),
/// [`DataError::NotRecognized`] when `Auto` finds no known layout (the
/// message lists what was looked for), [`DataError::UnsupportedSplit`] /
/// [`DataError::NoSplit`] for a split the data lacks, and every error of the
/// chosen reader.
pub fn open(
    path: &Path,
    format: Format,
    split: Split,
    options: &OpenOptions<'_>,
) -> Result<Box<dyn Dataset>, DataError> {
    must_exist(path)?;
    let mut notes = Vec::new();
    let auto = format == Format::Auto;
    let (format, dir) = match format {
        Format::Auto => detect_noting(path, &mut notes)?,
        explicit => (explicit, locate(path, explicit)),
    };
    tracing::debug!(path = %path.display(), dir = %dir.display(), ?format, ?split, "opening dataset");
    Ok(match format {
        Format::Idx => Box::new(IdxDataset::load_dir(&dir, split)?),
        Format::Cifar10 => Box::new(CifarDataset::open(&dir, CifarKind::Cifar10, split)?),
        Format::Cifar100 => Box::new(CifarDataset::open(
            &dir,
            CifarKind::Cifar100(options.cifar100_labels),
            split,
        )?),
        Format::Stl10 => Box::new(Stl10Dataset::open(&dir, split)?),
        Format::Folder | Format::Auto => match FolderDataset::open(&dir, split, options) {
            Err(DataError::EmptyFolder { .. }) if auto => {
                notes.insert(0, looked_for());
                return Err(DataError::NotRecognized {
                    path: path.to_path_buf(),
                    looked_for: notes.join("; note: "),
                });
            }
            other => Box::new(other?),
        },
    })
}
