//! The binary version of STL-10 (<https://cs.stanford.edu/~acoates/stl10/>).
//!
//! `train_X.bin` (5,000 images), `test_X.bin` (8,000) and `unlabeled_X.bin`
//! (100,000) hold `[n, 3, 96, 96]` bytes with no header, each channel plane
//! stored column-major: byte `c·9216 + x·96 + y` of a record is the pixel at
//! row `y`, column `x` of channel `c` (the files were written from MATLAB).
//! `train_y.bin` and `test_y.bin` hold one label byte per image, `1..=10`;
//! they are mapped to `0..=9`.
//!
//! The unlabelled file is 2.7 GB, so images are read on demand, one record
//! per call with a positioned read; only the labels are held in memory.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{DataError, Dataset, Image, ImageSet, Records, Split, read_class_names};

/// Side of an STL-10 image.
const SIDE: usize = 96;
/// Bytes in one image record: `3 × 96 × 96`.
const RECORD: usize = 3 * SIDE * SIDE;
/// Number of classes.
const CLASSES: usize = 10;

/// The STL-10 class names, in label order, used when `class_names.txt` is
/// absent (they are fixed by the dataset).
const NAMES: [&str; CLASSES] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// Number of records in an images file of `len` bytes.
fn record_count(path: &Path, len: u64) -> Result<usize, DataError> {
    if len == 0 {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
            what: "STL-10 images",
        });
    }
    if !len.is_multiple_of(RECORD as u64) {
        return Err(DataError::RecordSize {
            path: path.to_path_buf(),
            len,
            record_len: RECORD,
            what: "STL-10 image",
        });
    }
    usize::try_from(len / RECORD as u64).map_err(|_| DataError::BadHeader {
        path: path.to_path_buf(),
        reason: format!("{len} bytes do not fit in memory addresses"),
    })
}

/// Checks one label byte per image, each `1..=10`, and maps them to `0..=9`.
fn parse_labels(
    images: &Path,
    n_images: usize,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<u32>, DataError> {
    if bytes.len() != n_images {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            n_images,
            labels: path.to_path_buf(),
            n_labels: bytes.len(),
        });
    }
    bytes
        .iter()
        .enumerate()
        .map(|(index, &label)| match label {
            1..=10 => Ok(u32::from(label) - 1),
            _ => Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                offset: index as u64,
                label: u32::from(label),
                first: 1,
                num_classes: CLASSES,
            }),
        })
        .collect()
}

/// Writes a `[3, 96(col), 96(row)]` record into `hwc` as `[96, 96, 3]`.
fn transpose_record(record: &[u8], hwc: &mut [u8]) {
    let plane = SIDE * SIDE;
    for y in 0..SIDE {
        for x in 0..SIDE {
            let out = &mut hwc[(y * SIDE + x) * 3..][..3];
            for (c, v) in out.iter_mut().enumerate() {
                *v = record[c * plane + x * SIDE + y];
            }
        }
    }
}

/// Parses the bytes of an STL-10 images file and, optionally, of its labels
/// file: checks that the images are a whole, non-zero number of 27,648-byte
/// records, that there is one label per image and that every label is
/// `1..=10`; transposes the column-major planes into HWC images and maps the
/// labels to `0..=9`. The paths only name the bytes in errors.
///
/// This is the pure parser whose checks [`Stl10Dataset`] applies to files on
/// disk, exposed for fuzzing and for data already in memory.
///
/// # Errors
///
/// [`DataError::EmptyFile`], [`DataError::RecordSize`],
/// [`DataError::CountMismatch`] or [`DataError::LabelOutOfRange`].
pub fn parse_stl10(
    images_source: &Path,
    images: &[u8],
    labels: Option<(&Path, &[u8])>,
) -> Result<Records, DataError> {
    let n = record_count(images_source, images.len() as u64)?;
    let labels = labels
        .map(|(path, bytes)| parse_labels(images_source, n, path, bytes))
        .transpose()?;
    let mut pixels = vec![0u8; n * RECORD];
    for (record, out) in images
        .chunks_exact(RECORD)
        .zip(pixels.chunks_exact_mut(RECORD))
    {
        transpose_record(record, out);
    }
    Ok(Records {
        images: ImageSet {
            pixels,
            height: SIDE,
            width: SIDE,
            channels: 3,
        },
        labels,
    })
}

/// One STL-10 images file, open for positioned reads, with its labels.
#[derive(Debug)]
struct Part {
    path: PathBuf,
    name: String,
    file: File,
    len: usize,
    labels: Option<Vec<u32>>,
}

impl Part {
    fn open(dir: &Path, images: &str, labels: Option<&str>) -> Result<Self, DataError> {
        let path = dir.join(images);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        let file = File::open(&path).map_err(io(&path))?;
        let bytes = file.metadata().map_err(io(&path))?.len();
        let len = record_count(&path, bytes)?;
        let labels = match labels {
            Some(name) => {
                let labels_path = dir.join(name);
                let bytes = std::fs::read(&labels_path).map_err(io(&labels_path))?;
                Some(parse_labels(&path, len, &labels_path, &bytes)?)
            }
            None => None,
        };
        Ok(Self {
            path,
            name: images.to_string(),
            file,
            len,
            labels,
        })
    }

    fn image(&self, index: usize) -> Result<Image, DataError> {
        let offset = (index * RECORD) as u64;
        let mut record = vec![0u8; RECORD];
        read_exact_at(&self.file, &mut record, offset).map_err(|source| DataError::IoAt {
            path: self.path.clone(),
            offset,
            source,
        })?;
        let mut pixels = vec![0u8; RECORD];
        transpose_record(&record, &mut pixels);
        Ok(Image {
            pixels,
            height: SIDE,
            width: SIDE,
            channels: 3,
        })
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One split of STL-10, read from disk one image per call.
///
/// Opening checks every file's length against the record size and reads
/// and checks the labels (the only thing held in memory: 4 bytes per
/// labelled image). Each [`Dataset::image`] call is one 27,648-byte
/// positioned read, safe from many threads at once. Samples are in file
/// order and named `unlabeled_X.bin#123`; `TrainUnlabeled` is the 5,000
/// training images then the 100,000 unlabelled ones (labels `None`).
#[derive(Debug)]
pub struct Stl10Dataset {
    dir: PathBuf,
    parts: Vec<Part>,
    class_names: Option<Vec<String>>,
}

impl Stl10Dataset {
    /// Opens one split of a folder laid out as the official binary download
    /// (`stl10_binary/`). Class names come from `class_names.txt`, or are the
    /// official ones when it is absent.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] when a file of the split is missing or unreadable,
    /// [`DataError::EmptyFile`], [`DataError::RecordSize`],
    /// [`DataError::CountMismatch`], [`DataError::LabelOutOfRange`] and
    /// [`DataError::BadClassNames`].
    pub fn open(dir: &Path, split: Split) -> Result<Self, DataError> {
        let train = || Part::open(dir, "train_X.bin", Some("train_y.bin"));
        let unlabeled = || Part::open(dir, "unlabeled_X.bin", None);
        let parts = match split {
            Split::Train => vec![train()?],
            Split::Test => vec![Part::open(dir, "test_X.bin", Some("test_y.bin"))?],
            Split::Unlabeled => vec![unlabeled()?],
            Split::TrainUnlabeled => vec![train()?, unlabeled()?],
        };
        let class_names = Some(
            read_class_names(&dir.join("class_names.txt"), CLASSES)?
                .unwrap_or_else(|| NAMES.map(String::from).to_vec()),
        );
        let n: usize = parts.iter().map(|p| p.len).sum();
        tracing::debug!(dir = %dir.display(), ?split, n, "opened STL-10 split");
        Ok(Self {
            dir: dir.to_path_buf(),
            parts,
            class_names,
        })
    }

    /// The part holding sample `index`, and the index within it.
    fn locate(&self, mut index: usize) -> Option<(&Part, usize)> {
        for part in &self.parts {
            if index < part.len {
                return Some((part, index));
            }
            index -= part.len;
        }
        None
    }

    fn labelled(&self) -> bool {
        self.parts.iter().any(|p| p.labels.is_some())
    }
}

impl Dataset for Stl10Dataset {
    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len).sum()
    }

    fn channels(&self) -> usize {
        3
    }

    fn image(&self, index: usize) -> Result<Image, DataError> {
        let Some((part, i)) = self.locate(index) else {
            return Err(DataError::IndexOutOfRange {
                source_name: self.dir.display().to_string(),
                index,
                len: self.len(),
            });
        };
        part.image(i)
    }

    fn label(&self, index: usize) -> Option<u32> {
        let (part, i) = self
            .locate(index)
            .expect("STL-10 label index should be < len()");
        part.labels.as_ref().map(|l| l[i])
    }

    fn num_classes(&self) -> Option<usize> {
        self.labelled().then_some(CLASSES)
    }

    fn class_names(&self) -> Option<Vec<String>> {
        if self.labelled() {
            self.class_names.clone()
        } else {
            None
        }
    }

    fn name(&self, index: usize) -> String {
        let (part, i) = self
            .locate(index)
            .expect("STL-10 name index should be < len()");
        format!("{}#{i}", part.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random images as HWC, and their records as the STL-10 files store them.
    fn images(rng: &mut impl Rng, n: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut hwc_all = Vec::new();
        let mut file = Vec::new();
        for _ in 0..n {
            let hwc: Vec<u8> = (0..RECORD).map(|_| rng.random()).collect();
            let mut record = vec![0u8; RECORD];
            for c in 0..3 {
                for x in 0..SIDE {
                    for y in 0..SIDE {
                        record[c * SIDE * SIDE + x * SIDE + y] = hwc[(y * SIDE + x) * 3 + c];
                    }
                }
            }
            file.extend(record);
            hwc_all.push(hwc);
        }
        (hwc_all, file)
    }

    #[test]
    fn stl10_bytes_transpose_column_major_planes_and_shift_labels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        let (want, bytes) = images(&mut rng, 3);
        let r = parse_stl10(Path::new("x"), &bytes, Some((Path::new("y"), &[1, 10, 4])))
            .expect("valid bytes");
        assert_eq!(r.labels, Some(vec![0, 9, 3]));
        for (i, hwc) in want.iter().enumerate() {
            assert_eq!(r.images.image(i).pixels, &hwc[..], "image {i}");
        }
    }

    #[test]
    fn stl10_pixel_position_follows_the_column_major_layout() {
        // One bright pixel at byte c·9216 + x·96 + y must land at row y, column x.
        let (c, x, y) = (2, 5, 70);
        let mut bytes = vec![0u8; RECORD];
        bytes[c * SIDE * SIDE + x * SIDE + y] = 255;
        let r = parse_stl10(Path::new("x"), &bytes, None).expect("one record");
        let img = r.images.image(0);
        assert_eq!(img.pixels[(y * SIDE + x) * 3 + c], 255);
        assert_eq!(img.pixels.iter().filter(|&&v| v != 0).count(), 1);
    }

    #[test]
    fn stl10_label_zero_or_eleven_is_out_of_range() {
        let bytes = vec![0u8; 2 * RECORD];
        for bad in [0u8, 11] {
            let err = parse_stl10(
                Path::new("x"),
                &bytes,
                Some((Path::new("train_y.bin"), &[3, bad])),
            )
            .expect_err("labels are 1..=10");
            assert!(matches!(
                err,
                DataError::LabelOutOfRange {
                    index: 1,
                    offset: 1,
                    first: 1,
                    ..
                }
            ));
            let msg = err.to_string();
            assert!(
                msg.contains("train_y.bin") && msg.contains("1..=10"),
                "{msg}"
            );
        }
    }

    #[test]
    fn stl10_label_count_must_match_images() {
        let bytes = vec![0u8; 2 * RECORD];
        let err = parse_stl10(
            Path::new("test_X.bin"),
            &bytes,
            Some((Path::new("test_y.bin"), &[1])),
        )
        .expect_err("2 images, 1 label");
        assert!(matches!(
            err,
            DataError::CountMismatch {
                n_images: 2,
                n_labels: 1,
                ..
            }
        ));
    }

    #[test]
    fn valid_stl10_truncated_anywhere_is_an_error_never_a_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (_, bytes) = images(&mut rng, 2);
        let labels = [2u8, 5];
        // Cutting the images anywhere but at the record boundary fails; at the
        // boundary, the two labels no longer match one image.
        for cut in (0..bytes.len())
            .step_by(97)
            .chain([RECORD - 1, RECORD, RECORD + 1])
        {
            let r = parse_stl10(
                Path::new("x"),
                &bytes[..cut],
                Some((Path::new("y"), &labels)),
            );
            assert!(r.is_err(), "images cut at {cut} should fail");
            if cut == RECORD {
                assert!(parse_stl10(Path::new("x"), &bytes[..cut], None).is_ok());
            }
        }
        for cut in 0..labels.len() {
            let r = parse_stl10(
                Path::new("x"),
                &bytes,
                Some((Path::new("y"), &labels[..cut])),
            );
            assert!(r.is_err(), "labels cut at {cut} should fail");
        }
    }

    #[test]
    fn random_bytes_never_panic_stl10() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for _ in 0..100 {
            let n = rng.random_range(0..3);
            let extra = if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(0..3)
            };
            let bytes: Vec<u8> = (0..n * RECORD + extra).map(|_| rng.random()).collect();
            let labels: Vec<u8> = (0..rng.random_range(0..4))
                .map(|_| rng.random_range(0..12))
                .collect();
            if let Ok(r) = parse_stl10(Path::new("x"), &bytes, Some((Path::new("y"), &labels))) {
                let labels = r.labels.expect("labels given");
                assert!(labels.iter().all(|&l| l < 10));
                assert_eq!(labels.len(), r.images.len());
            }
        }
    }
}
