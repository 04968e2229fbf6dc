//! The IDX format of the MNIST and Fashion-MNIST downloads.
//!
//! A file is a big-endian header — magic `0x0000_08TT` where the third byte is
//! the element type (`0x08` = unsigned byte) and the fourth the number of
//! dimensions — then one `u32` per dimension, then the data. Images are
//! `[n, rows, cols]` (magic `0x00000803`), labels `[n]` (`0x00000801`).
//! Files ending in `.gz` are decompressed on the fly.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{DataError, Dataset, Format, Image, ImageSet, Split, check_index};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// File-name prefix of a split: `train-...` and `t10k-...`.
fn prefix(dir: &Path, split: Split) -> Result<&'static str, DataError> {
    match split {
        Split::Train => Ok("train"),
        Split::Test => Ok("t10k"),
        Split::Unlabeled | Split::TrainUnlabeled => Err(DataError::UnsupportedSplit {
            path: dir.to_path_buf(),
            format: Format::Idx,
            split,
        }),
    }
}

/// Images with optional labels read from an IDX pair, held in memory
/// (MNIST's 60,000 training images take 47 MB).
///
/// As a [`Dataset`] it yields single-channel images in file order; its
/// number of classes is the largest label + 1 (IDX stores no class count) and
/// its samples are named `train-images-idx3-ubyte.gz#123`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxDataset {
    /// The images, single channel.
    pub images: ImageSet,
    /// One label per image, when a label file was found.
    pub labels: Option<Vec<u8>>,
    /// File name of the images file, for sample names and errors.
    source: String,
}

impl IdxDataset {
    /// Reads one split of a folder laid out as the official downloads
    /// (`train-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte`, ...).
    ///
    /// The images file must exist; the labels file is optional (unlabelled
    /// data). Both gzipped and raw names are accepted.
    ///
    /// # Errors
    ///
    /// [`DataError::Missing`] when no images file exists,
    /// [`DataError::UnsupportedSplit`] for the STL-10-only splits, and any error of
    /// [`read_idx_images`] / [`read_idx_labels`], or
    /// [`DataError::CountMismatch`] when the two files disagree.
    pub fn load_dir(dir: impl AsRef<Path>, split: Split) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let prefix = prefix(dir, split)?;
        let images_path =
            find(dir, prefix, "images-idx3-ubyte").ok_or_else(|| DataError::Missing {
                dir: dir.to_path_buf(),
                what: "IDX images",
                candidates: candidates(prefix, "images-idx3-ubyte"),
            })?;
        let images = read_idx_images(&images_path)?;
        let labels = match find(dir, prefix, "labels-idx1-ubyte") {
            Some(labels_path) => {
                let labels = read_idx_labels(&labels_path)?;
                if labels.len() != images.len() {
                    return Err(DataError::CountMismatch {
                        images: images_path,
                        n_images: images.len(),
                        labels: labels_path,
                        n_labels: labels.len(),
                    });
                }
                Some(labels)
            }
            None => None,
        };
        tracing::debug!(path = %images_path.display(), n = images.len(), labelled = labels.is_some(), "read IDX split");
        let source = file_name(&images_path);
        Ok(Self {
            images,
            labels,
            source,
        })
    }

    /// Wraps images and optional labels already in memory; `source` names
    /// them in sample names and errors.
    ///
    /// # Errors
    ///
    /// [`DataError::CountMismatch`] when there are labels but not one per
    /// image.
    pub fn new(images: ImageSet, labels: Option<Vec<u8>>, source: &str) -> Result<Self, DataError> {
        if let Some(l) = &labels
            && l.len() != images.len()
        {
            return Err(DataError::CountMismatch {
                images: source.into(),
                n_images: images.len(),
                labels: source.into(),
                n_labels: l.len(),
            });
        }
        Ok(Self {
            images,
            labels,
            source: source.to_string(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The first `n` images and labels.
    pub fn take(&self, n: usize) -> Self {
        let images = self.images.take(n);
        let labels = self.labels.as_ref().map(|l| l[..images.len()].to_vec());
        Self {
            images,
            labels,
            source: self.source.clone(),
        }
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn channels(&self) -> usize {
        self.images.channels
    }

    fn image(&self, index: usize) -> Result<Image, DataError> {
        check_index(&self.source, index, self.images.len())?;
        Ok(self.images.to_image(index))
    }

    fn label(&self, index: usize) -> Option<u32> {
        assert!(
            index < self.images.len(),
            "{}: index {index} out of range",
            self.source
        );
        self.labels.as_ref().map(|l| u32::from(l[index]))
    }

    fn num_classes(&self) -> Option<usize> {
        let labels = self.labels.as_ref()?;
        Some(labels.iter().max().map_or(0, |&m| usize::from(m) + 1))
    }

    fn class_names(&self) -> Option<Vec<String>> {
        None
    }

    fn name(&self, index: usize) -> String {
        assert!(
            index < self.images.len(),
            "{}: index {index} out of range",
            self.source
        );
        format!("{}#{index}", self.source)
    }
}

/// The last component of `path`, lossily as UTF-8.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn candidates(prefix: &str, stem: &str) -> String {
    [
        format!("{prefix}-{stem}.gz"),
        format!("{prefix}-{stem}"),
        format!("{prefix}-{}.gz", stem.replacen('-', ".", 1)),
        format!("{prefix}-{}", stem.replacen('-', ".", 1)),
    ]
    .join(", ")
}

fn find(dir: &Path, prefix: &str, stem: &str) -> Option<PathBuf> {
    candidates(prefix, stem)
        .split(", ")
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

/// Reads an IDX images file (`[n, rows, cols]` of `u8`, magic `0x00000803`).
///
/// # Errors
///
/// [`DataError::Io`] when the file cannot be read, [`DataError::BadMagic`],
/// [`DataError::BadHeader`], [`DataError::Truncated`] or
/// [`DataError::TrailingBytes`] when its content does not match the format.
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<ImageSet, DataError> {
    let path = path.as_ref();
    parse_idx_images(path, &read_all(path)?)
}

/// Parses the bytes of an IDX images file (`[n, rows, cols]` of `u8`, magic
/// `0x00000803`, not gzipped). `source` only names the bytes in errors.
///
/// This is the pure parser behind [`read_idx_images`], exposed for fuzzing
/// and for data already in memory.
///
/// # Errors
///
/// [`DataError::BadMagic`], [`DataError::BadHeader`],
/// [`DataError::Truncated`] or [`DataError::TrailingBytes`].
pub fn parse_idx_images(source: &Path, bytes: &[u8]) -> Result<ImageSet, DataError> {
    let (dims, pixels) = parse_idx(source, bytes, IMAGES_MAGIC, "IDX u8 images [n, rows, cols]")?;
    let [_, rows, cols] = dims[..] else {
        unreachable!("parse_idx checked the number of dimensions from the magic")
    };
    Ok(ImageSet {
        pixels,
        height: rows,
        width: cols,
        channels: 1,
    })
}

/// Reads an IDX labels file (`[n]` of `u8`, magic `0x00000801`).
///
/// # Errors
///
/// As [`read_idx_images`].
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>, DataError> {
    let path = path.as_ref();
    parse_idx_labels(path, &read_all(path)?)
}

/// Parses the bytes of an IDX labels file (`[n]` of `u8`, magic
/// `0x00000801`, not gzipped). `source` only names the bytes in errors.
///
/// # Errors
///
/// As [`parse_idx_images`].
pub fn parse_idx_labels(source: &Path, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let (_, labels) = parse_idx(source, bytes, LABELS_MAGIC, "IDX u8 labels [n]")?;
    Ok(labels)
}

/// Reads a whole file, decompressing it when its name ends in `.gz`.
fn read_all(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Parses the bytes of an IDX file whose magic must be `magic`.
fn parse_idx(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    what: &'static str,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let ndim = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndim;
    let be_u32 =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header_len as u64,
            found: bytes.len() as u64,
        });
    }
    let found = be_u32(0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found,
            expected: magic,
            what,
        });
    }
    if bytes.len() < header_len {
        return Err(DataError::BadHeader {
            path: path.to_path_buf(),
            reason: format!(
                "header needs {header_len} bytes for {ndim} dimensions, file has {}",
                bytes.len()
            ),
        });
    }
    let dims: Vec<usize> = (0..ndim).map(|d| be_u32(4 + 4 * d) as usize).collect();
    if ndim > 1 && dims[1..].contains(&0) {
        return Err(DataError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("zero-sized image dimension in {dims:?}"),
        });
    }
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| DataError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("dimensions {dims:?} overflow"),
        })?;
    let payload = (bytes.len() - header_len) as u64;
    if payload < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: payload,
        });
    }
    if payload > expected {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            extra: payload - expected,
        });
    }
    Ok((dims, bytes[header_len..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        if name.ends_with(".gz") {
            let mut enc = flate2::write::GzEncoder::new(
                File::create(&path).expect("temp file should be creatable"),
                flate2::Compression::fast(),
            );
            enc.write_all(bytes).expect("gzip write should succeed");
            enc.finish().expect("gzip finish should succeed");
        } else {
            std::fs::write(&path, bytes).expect("temp file should be writable");
        }
        path
    }

    #[test]
    fn reads_images_and_labels_gzipped_and_raw() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        write(
            dir.path(),
            "train-images-idx3-ubyte.gz",
            &idx_bytes(IMAGES_MAGIC, &[2, 3, 4], &pixels),
        );
        write(
            dir.path(),
            "train-labels-idx1-ubyte",
            &idx_bytes(LABELS_MAGIC, &[2], &[7, 9]),
        );
        let ds = IdxDataset::load_dir(dir.path(), Split::Train).expect("valid files should load");
        assert_eq!(ds.len(), 2);
        assert_eq!(
            (ds.images.height, ds.images.width, ds.images.channels),
            (3, 4, 1)
        );
        assert_eq!(ds.images.image(1).pixels, &pixels[12..24]);
        assert_eq!(ds.labels, Some(vec![7, 9]));
    }

    #[test]
    fn labels_are_optional() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "t10k-images-idx3-ubyte",
            &idx_bytes(IMAGES_MAGIC, &[1, 2, 2], &[1, 2, 3, 4]),
        );
        let ds = IdxDataset::load_dir(dir.path(), Split::Test).expect("images alone should load");
        assert_eq!(ds.labels, None);
        assert_eq!(ds.len(), 1);
    }

    #[test]
    fn bad_magic_names_file_and_expected_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "x.idx", &idx_bytes(LABELS_MAGIC, &[1], &[0]));
        let err = read_idx_images(&path).expect_err("labels magic is not images magic");
        assert!(matches!(
            err,
            DataError::BadMagic {
                found: LABELS_MAGIC,
                expected: IMAGES_MAGIC,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("x.idx") && msg.contains("0x00000803"), "{msg}");
    }

    #[test]
    fn truncated_data_is_reported_with_sizes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "t.gz",
            &idx_bytes(IMAGES_MAGIC, &[2, 2, 2], &[0; 5]),
        );
        match read_idx_images(&path) {
            Err(DataError::Truncated {
                expected: 8,
                found: 5,
                path: p,
            }) => assert_eq!(p, path),
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    #[test]
    fn truncated_header_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = idx_bytes(IMAGES_MAGIC, &[2, 2, 2], &[0; 8]);
        for cut in 0..12 {
            bytes.truncate(cut);
            let path = write(dir.path(), "h", &bytes);
            assert!(read_idx_images(&path).is_err(), "cut at {cut} should fail");
        }
    }

    #[test]
    fn valid_idx_truncated_anywhere_is_an_error_never_a_panic() {
        let images = idx_bytes(IMAGES_MAGIC, &[3, 4, 5], &[7; 60]);
        let labels = idx_bytes(LABELS_MAGIC, &[3], &[1, 2, 3]);
        assert!(parse_idx_images(Path::new("i"), &images).is_ok());
        assert!(parse_idx_labels(Path::new("l"), &labels).is_ok());
        for cut in 0..images.len() {
            let err = parse_idx_images(Path::new("i"), &images[..cut]);
            assert!(err.is_err(), "images cut at {cut} should fail");
        }
        for cut in 0..labels.len() {
            let err = parse_idx_labels(Path::new("l"), &labels[..cut]);
            assert!(err.is_err(), "labels cut at {cut} should fail");
        }
    }

    #[test]
    fn random_bytes_never_panic_in_the_byte_parsers() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        for _ in 0..2000 {
            let len = rng.random_range(0..48);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if bytes.len() >= 4 && rng.random_bool(0.7) {
                let magic = if rng.random_bool(0.5) {
                    IMAGES_MAGIC
                } else {
                    LABELS_MAGIC
                };
                bytes[..4].copy_from_slice(&magic.to_be_bytes());
                // Small dimensions so some headers match their payload.
                for d in bytes[4..].chunks_mut(4).take(3) {
                    let small = rng.random_range(0..4u32).to_be_bytes();
                    d.copy_from_slice(&small[4 - d.len()..]);
                }
            }
            if let Ok(set) = parse_idx_images(Path::new("r"), &bytes) {
                assert_eq!(set.pixels.len() + 16, bytes.len());
            }
            if let Ok(labels) = parse_idx_labels(Path::new("r"), &bytes) {
                assert_eq!(labels.len() + 8, bytes.len());
            }
        }
    }

    #[test]
    fn idx_dataset_yields_u32_labels_and_named_samples_through_the_trait() {
        let images = ImageSet {
            pixels: vec![1, 2, 3, 4],
            height: 1,
            width: 2,
            channels: 1,
        };
        let ds = IdxDataset::new(images, Some(vec![4, 2]), "x.gz").expect("2 images, 2 labels");
        let d: &dyn Dataset = &ds;
        assert_eq!((d.len(), d.channels(), d.num_classes()), (2, 1, Some(5)));
        assert_eq!((d.label(1), d.name(1)), (Some(2), "x.gz#1".to_string()));
        assert_eq!(d.image(1).expect("in range").pixels, vec![3, 4]);
        assert!(matches!(
            d.image(2),
            Err(DataError::IndexOutOfRange { index: 2, .. })
        ));
        assert!(matches!(
            IdxDataset::new(ds.images.clone(), Some(vec![1]), "x"),
            Err(DataError::CountMismatch {
                n_images: 2,
                n_labels: 1,
                ..
            })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "l", &idx_bytes(LABELS_MAGIC, &[2], &[1, 2, 3]));
        assert!(matches!(
            read_idx_labels(&path),
            Err(DataError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx_bytes(IMAGES_MAGIC, &[2, 1, 1], &[1, 2]),
        );
        write(
            dir.path(),
            "train-labels-idx1-ubyte",
            &idx_bytes(LABELS_MAGIC, &[3], &[1, 2, 3]),
        );
        let err = IdxDataset::load_dir(dir.path(), Split::Train).expect_err("2 images, 3 labels");
        let msg = err.to_string();
        assert!(
            msg.contains("train-images-idx3-ubyte") && msg.contains("train-labels-idx1-ubyte"),
            "{msg}"
        );
        assert!(matches!(
            err,
            DataError::CountMismatch {
                n_images: 2,
                n_labels: 3,
                ..
            }
        ));
    }

    #[test]
    fn missing_file_lists_names_tried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = IdxDataset::load_dir(dir.path(), Split::Train).expect_err("empty folder");
        assert!(
            err.to_string().contains("train-images-idx3-ubyte.gz"),
            "{err}"
        );
        let err = read_idx_labels(dir.path().join("nope")).expect_err("no such file");
        assert!(matches!(err, DataError::Io { .. }));
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..200 {
            let len = rng.random_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if i % 2 == 0 && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&IMAGES_MAGIC.to_be_bytes());
            }
            let path = write(dir.path(), "r", &bytes);
            let _ = read_idx_images(&path);
        }
    }

    #[test]
    fn shipped_sample_loads_with_expected_counts() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-sample");
        let train = IdxDataset::load_dir(&dir, Split::Train).expect("shipped sample should load");
        let test = IdxDataset::load_dir(&dir, Split::Test).expect("shipped sample should load");
        assert_eq!((train.len(), test.len()), (4000, 1000));
        assert_eq!((train.images.height, train.images.width), (28, 28));
        let labels = train.labels.expect("sample is labelled");
        for class in 0..10u8 {
            assert_eq!(labels.iter().filter(|&&l| l == class).count(), 400);
        }
    }
}
