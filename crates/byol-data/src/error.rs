//! The one error type of the crate, and the record of a bad file.

use std::fmt;
use std::path::PathBuf;

use crate::{Format, Split};

/// How many bad files [`DataError::CorruptFiles`] prints before summarising.
/// The error value itself always holds every one.
const MAX_LISTED: usize = 1000;

/// Errors raised while reading datasets. Every variant names the file or
/// folder, and the offset or sample index where one applies.
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
    /// A read at a known offset failed, e.g. a file truncated after it was
    /// opened.
    #[error("cannot read {path} at byte offset {offset}: {source}")]
    IoAt {
        /// The file.
        path: PathBuf,
        /// Where the read started.
        offset: u64,
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
    /// A file of fixed-size records (CIFAR, STL-10) whose length is not a
    /// whole number of records: truncated, or not the format announced.
    #[error(
        "{path}: {len} bytes is not a whole number of {what} records of {record_len} bytes: \
         the record at offset {} holds only {} bytes",
        partial_record(.len, .record_len).0,
        partial_record(.len, .record_len).1
    )]
    RecordSize {
        /// The file.
        path: PathBuf,
        /// Length of the file in bytes.
        len: u64,
        /// Bytes in one record.
        record_len: usize,
        /// Which record format was expected.
        what: &'static str,
    },
    /// A file that holds no record at all.
    #[error("{path}: empty file, expected {what}")]
    EmptyFile {
        /// The file.
        path: PathBuf,
        /// What the file should hold.
        what: &'static str,
    },
    /// A label outside the classes of the format.
    #[error(
        "{path}: sample {index} (byte offset {offset}): label {label} outside {first}..={}",
        last_label(.first, .num_classes)
    )]
    LabelOutOfRange {
        /// The file holding the label.
        path: PathBuf,
        /// Index of the sample in that file.
        index: usize,
        /// Byte offset of the label in that file.
        offset: u64,
        /// The label read, as stored in the file.
        label: u32,
        /// The smallest valid label as stored (0, or 1 for STL-10).
        first: u32,
        /// Number of classes of the format.
        num_classes: usize,
    },
    /// A class-names file (`batches.meta.txt`, `class_names.txt`, ...) that
    /// does not hold one name per class.
    #[error("{path}: {found} class names, expected {expected} (one per line)")]
    BadClassNames {
        /// The file.
        path: PathBuf,
        /// Number of names expected.
        expected: usize,
        /// Number of names found.
        found: usize,
    },
    /// An image file that could not be decoded (bad header, truncated or
    /// corrupt payload, unsupported variant).
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        reason: String,
    },
    /// The pre-scan of an image folder found bad files and the policy is
    /// [`OnCorrupt::Fail`](crate::OnCorrupt::Fail). Holds every one of them.
    #[error("{dir}: {} bad file(s) found before training{}", files.len(), BadFileList(files))]
    CorruptFiles {
        /// The folder scanned.
        dir: PathBuf,
        /// Every bad file, in dataset order.
        files: Vec<BadFile>,
    },
    /// An image folder that holds no image file.
    #[error("{dir}: no image file found (looked for extensions {extensions}, recursively)")]
    EmptyFolder {
        /// The folder.
        dir: PathBuf,
        /// The extensions looked for, comma separated.
        extensions: String,
    },
    /// The data has no such split (an image folder without `val/` or `test/`).
    #[error("{path}: no {split:?} split: {reason}")]
    NoSplit {
        /// The dataset root.
        path: PathBuf,
        /// The split asked for.
        split: Split,
        /// What was looked for.
        reason: String,
    },
    /// The format has no such split (`Unlabeled` outside STL-10).
    #[error(
        "{path}: the {format:?} format has no {split:?} split (only STL-10 has unlabeled data)"
    )]
    UnsupportedSplit {
        /// The dataset root.
        path: PathBuf,
        /// The format read.
        format: Format,
        /// The split asked for.
        split: Split,
    },
    /// The dataset path given does not exist.
    #[error("{path}: no such file or folder")]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// [`Format::Auto`] found no known layout.
    #[error("{path}: cannot detect the dataset format; looked for {looked_for}")]
    NotRecognized {
        /// The path given.
        path: PathBuf,
        /// Everything looked for.
        looked_for: String,
    },
    /// Parts of a concatenation that cannot be combined.
    #[error("cannot concatenate datasets: {reason}")]
    Incompatible {
        /// What differs.
        reason: String,
    },
    /// A sample index past the end of the dataset.
    #[error("{source_name}: sample index {index} out of range (dataset holds {len})")]
    IndexOutOfRange {
        /// The dataset, e.g. its root folder or first file.
        source_name: String,
        /// The index asked for.
        index: usize,
        /// Number of samples.
        len: usize,
    },
}

/// Offset and length of the incomplete record at the end of a file of `len`
/// bytes made of `record_len`-byte records.
fn partial_record(len: &u64, record_len: &usize) -> (u64, u64) {
    let record_len = (*record_len as u64).max(1);
    (len - len % record_len, len % record_len)
}

/// The largest valid stored label.
fn last_label(first: &u32, num_classes: &usize) -> u32 {
    let n = u32::try_from(*num_classes).unwrap_or(u32::MAX);
    first.saturating_add(n.saturating_sub(1))
}

/// A file of an image folder that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    /// The file (or unreadable folder), as found under the dataset root.
    pub path: PathBuf,
    /// Why it cannot be used: the decoder's or the operating system's message.
    pub reason: String,
}

impl fmt::Display for BadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Formats bad files one a line, the first [`MAX_LISTED`] of them.
struct BadFileList<'a>(&'a [BadFile]);

impl fmt::Display for BadFileList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for bad in self.0.iter().take(MAX_LISTED) {
            write!(f, "\n  {bad}")?;
        }
        if self.0.len() > MAX_LISTED {
            write!(f, "\n  ... and {} more", self.0.len() - MAX_LISTED)?;
        }
        Ok(())
    }
}
