//! The binary versions of CIFAR-10 and CIFAR-100
//! (<https://www.cs.toronto.edu/~kriz/cifar.html>, "binary version").
//!
//! A file is a sequence of fixed-size records with no header:
//!
//! - CIFAR-10 (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`):
//!   1 label byte (0..=9), then 3072 pixel bytes;
//! - CIFAR-100 (`train.bin`, `test.bin`): 1 coarse label byte (0..=19),
//!   1 fine label byte (0..=99), then 3072 pixel bytes.
//!
//! The pixels of a record are channel-major, `[3, 32, 32]` (CHW: the 1024
//! red values row by row, then green, then blue); they are turned into HWC
//! when the file is read.

use std::path::{Path, PathBuf};

use crate::{
    DataError, Dataset, Format, Image, ImageSet, Records, Split, check_index, file_name,
    read_class_names,
};

/// Side of a CIFAR image.
const SIDE: usize = 32;
/// Pixel bytes in one record: `3 × 32 × 32`.
const PIXELS: usize = 3 * SIDE * SIDE;

/// The CIFAR-10 class names, in label order, used when `batches.meta.txt` is
/// absent (they are fixed by the dataset).
const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which of CIFAR-100's two labels to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cifar100Labels {
    /// The 100 fine classes (the usual benchmark).
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// Which CIFAR binary format to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// CIFAR-10: records of 1 label byte + 3072 pixel bytes.
    Cifar10,
    /// CIFAR-100: records of coarse label, fine label, 3072 pixel bytes.
    Cifar100(Cifar100Labels),
}

impl CifarKind {
    /// Bytes of labels before the pixels of a record.
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100(_) => 2,
        }
    }

    /// Bytes in one record: 3073 for CIFAR-10, 3074 for CIFAR-100.
    pub fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }

    /// Number of classes of the selected label.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100(Cifar100Labels::Fine) => 100,
            CifarKind::Cifar100(Cifar100Labels::Coarse) => 20,
        }
    }

    /// Human name of the record format, for errors.
    fn what(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "CIFAR-10",
            CifarKind::Cifar100(_) => "CIFAR-100",
        }
    }

    /// Number of classes of each label byte of a record, in record order.
    fn label_classes(self) -> &'static [usize] {
        match self {
            CifarKind::Cifar10 => &[10],
            CifarKind::Cifar100(_) => &[20, 100],
        }
    }

    /// Position in the record of the selected label byte.
    fn label_pos(self) -> usize {
        match self {
            CifarKind::Cifar10 | CifarKind::Cifar100(Cifar100Labels::Coarse) => 0,
            CifarKind::Cifar100(Cifar100Labels::Fine) => 1,
        }
    }

    fn format(self) -> Format {
        match self {
            CifarKind::Cifar10 => Format::Cifar10,
            CifarKind::Cifar100(_) => Format::Cifar100,
        }
    }

    /// File names of a split, in reading order.
    fn files(self, dir: &Path, split: Split) -> Result<Vec<&'static str>, DataError> {
        match (self, split) {
            (CifarKind::Cifar10, Split::Train) => Ok(vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ]),
            (CifarKind::Cifar10, Split::Test) => Ok(vec!["test_batch.bin"]),
            (CifarKind::Cifar100(_), Split::Train) => Ok(vec!["train.bin"]),
            (CifarKind::Cifar100(_), Split::Test) => Ok(vec!["test.bin"]),
            (_, Split::Unlabeled | Split::TrainUnlabeled) => Err(DataError::UnsupportedSplit {
                path: dir.to_path_buf(),
                format: self.format(),
                split,
            }),
        }
    }
}

/// Parses the bytes of one CIFAR binary file: checks that they are a whole,
/// non-zero number of records and that every label byte (both of them for
/// CIFAR-100) is in range, and turns the pixels from CHW into HWC. `source`
/// only names the bytes in errors.
///
/// This is the pure parser behind [`CifarDataset`], exposed for fuzzing and
/// for data already in memory. The labels of the result are always `Some`.
///
/// # Errors
///
/// [`DataError::EmptyFile`], [`DataError::RecordSize`] (names the offset of
/// the incomplete last record) or [`DataError::LabelOutOfRange`] (names the
/// record and the label's byte offset).
pub fn parse_cifar(source: &Path, bytes: &[u8], kind: CifarKind) -> Result<Records, DataError> {
    let record_len = kind.record_len();
    if bytes.is_empty() {
        return Err(DataError::EmptyFile {
            path: source.to_path_buf(),
            what: kind.what(),
        });
    }
    if !bytes.len().is_multiple_of(record_len) {
        return Err(DataError::RecordSize {
            path: source.to_path_buf(),
            len: bytes.len() as u64,
            record_len,
            what: kind.what(),
        });
    }
    let n = bytes.len() / record_len;
    let mut pixels = vec![0u8; n * PIXELS];
    let mut labels = Vec::with_capacity(n);
    for (index, (record, out)) in bytes
        .chunks_exact(record_len)
        .zip(pixels.chunks_exact_mut(PIXELS))
        .enumerate()
    {
        for (pos, &classes) in kind.label_classes().iter().enumerate() {
            let label = record[pos];
            if usize::from(label) >= classes {
                return Err(DataError::LabelOutOfRange {
                    path: source.to_path_buf(),
                    index,
                    offset: (index * record_len + pos) as u64,
                    label: u32::from(label),
                    first: 0,
                    num_classes: classes,
                });
            }
        }
        labels.push(u32::from(record[kind.label_pos()]));
        chw_to_hwc(&record[kind.label_bytes()..], out);
    }
    Ok(Records {
        images: ImageSet {
            pixels,
            height: SIDE,
            width: SIDE,
            channels: 3,
        },
        labels: Some(labels),
    })
}

/// Writes the `[3, 32, 32]` planes of `chw` into `hwc` as `[32, 32, 3]`.
fn chw_to_hwc(chw: &[u8], hwc: &mut [u8]) {
    let plane = SIDE * SIDE;
    for (i, px) in hwc.chunks_exact_mut(3).enumerate() {
        for (c, v) in px.iter_mut().enumerate() {
            *v = chw[c * plane + i];
        }
    }
}

/// One split of CIFAR-10 or CIFAR-100, read whole into memory when opened.
///
/// Samples are in file order, files in the order of their names
/// (`data_batch_1.bin` .. `data_batch_5.bin`), and are named
/// `data_batch_3.bin#123` (record 123 of that file). Images are 32×32 RGB,
/// HWC. Memory: the decoded pixels (154 MB for the 50,000 training images)
/// plus, while opening, one file's bytes and its decoded copy.
#[derive(Debug, Clone)]
pub struct CifarDataset {
    kind: CifarKind,
    dir: PathBuf,
    images: ImageSet,
    labels: Vec<u32>,
    /// File name and index of its first sample, in sample order.
    files: Vec<(String, usize)>,
    class_names: Option<Vec<String>>,
}

impl CifarDataset {
    /// Reads one split of a folder laid out as the official binary download
    /// (`cifar-10-batches-bin/` or `cifar-100-binary/`).
    ///
    /// Class names come from `batches.meta.txt` (CIFAR-10; the official names
    /// when it is absent) or `fine_label_names.txt` / `coarse_label_names.txt`
    /// (CIFAR-100; none when absent).
    ///
    /// # Errors
    ///
    /// [`DataError::UnsupportedSplit`] for the STL-10-only splits,
    /// [`DataError::Missing`] when a file of the split is absent (every one of
    /// the five CIFAR-10 training batches is required), [`DataError::Io`], any
    /// error of [`parse_cifar`], and [`DataError::BadClassNames`].
    pub fn open(dir: &Path, kind: CifarKind, split: Split) -> Result<Self, DataError> {
        let names = kind.files(dir, split)?;
        if let Some(missing) = names.iter().find(|n| !dir.join(n).is_file()) {
            return Err(DataError::Missing {
                dir: dir.to_path_buf(),
                what: kind.what(),
                candidates: format!("{missing} (the split needs {})", names.join(", ")),
            });
        }
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        let mut files = Vec::new();
        for name in names {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
            let records = parse_cifar(&path, &bytes, kind)?;
            files.push((name.to_string(), labels.len()));
            if pixels.is_empty() {
                pixels = records.images.pixels;
            } else {
                pixels.extend_from_slice(&records.images.pixels);
            }
            labels.extend(records.labels.into_iter().flatten());
        }
        let class_names = match kind {
            CifarKind::Cifar10 => Some(
                read_class_names(&dir.join("batches.meta.txt"), 10)?
                    .unwrap_or_else(|| CIFAR10_NAMES.map(String::from).to_vec()),
            ),
            CifarKind::Cifar100(Cifar100Labels::Fine) => {
                read_class_names(&dir.join("fine_label_names.txt"), 100)?
            }
            CifarKind::Cifar100(Cifar100Labels::Coarse) => {
                read_class_names(&dir.join("coarse_label_names.txt"), 20)?
            }
        };
        tracing::debug!(dir = %dir.display(), ?kind, ?split, n = labels.len(), "read CIFAR split");
        Ok(Self {
            kind,
            dir: dir.to_path_buf(),
            images: ImageSet {
                pixels,
                height: SIDE,
                width: SIDE,
                channels: 3,
            },
            labels,
            files,
            class_names,
        })
    }

    /// All images, HWC, in sample order.
    pub fn images(&self) -> &ImageSet {
        &self.images
    }

    /// All labels, in sample order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The format read.
    pub fn kind(&self) -> CifarKind {
        self.kind
    }
}

impl Dataset for CifarDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn channels(&self) -> usize {
        3
    }

    fn image(&self, index: usize) -> Result<Image, DataError> {
        check_index(&file_name(&self.dir), index, self.labels.len())?;
        Ok(self.images.to_image(index))
    }

    fn label(&self, index: usize) -> Option<u32> {
        Some(self.labels[index])
    }

    fn num_classes(&self) -> Option<usize> {
        Some(self.kind.num_classes())
    }

    fn class_names(&self) -> Option<Vec<String>> {
        self.class_names.clone()
    }

    fn name(&self, index: usize) -> String {
        assert!(
            index < self.labels.len(),
            "CIFAR index {index} out of range"
        );
        let file = self.files.partition_point(|(_, start)| *start <= index) - 1;
        let (name, start) = &self.files[file];
        format!("{name}#{}", index - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A record with a known CHW pixel pattern: returns the record and the
    /// HWC image it must decode to.
    fn record(rng: &mut impl Rng, labels: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let chw: Vec<u8> = (0..PIXELS).map(|_| rng.random()).collect();
        let mut hwc = vec![0; PIXELS];
        for y in 0..SIDE {
            for x in 0..SIDE {
                for c in 0..3 {
                    hwc[(y * SIDE + x) * 3 + c] = chw[c * SIDE * SIDE + y * SIDE + x];
                }
            }
        }
        let mut rec = labels.to_vec();
        rec.extend_from_slice(&chw);
        (rec, hwc)
    }

    #[test]
    fn cifar10_bytes_decode_chw_to_hwc_with_labels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for label in [3u8, 9, 0] {
            let (rec, hwc) = record(&mut rng, &[label]);
            bytes.extend(rec);
            want.push(hwc);
        }
        let r = parse_cifar(Path::new("b"), &bytes, CifarKind::Cifar10).expect("valid bytes");
        assert_eq!(r.labels, Some(vec![3, 9, 0]));
        for (i, hwc) in want.iter().enumerate() {
            assert_eq!(r.images.image(i).pixels, &hwc[..], "image {i}");
        }
    }

    #[test]
    fn cifar100_selects_fine_or_coarse_label() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let (rec, _) = record(&mut rng, &[19, 99]);
        let fine = parse_cifar(
            Path::new("b"),
            &rec,
            CifarKind::Cifar100(Cifar100Labels::Fine),
        );
        let coarse = parse_cifar(
            Path::new("b"),
            &rec,
            CifarKind::Cifar100(Cifar100Labels::Coarse),
        );
        assert_eq!(fine.expect("valid").labels, Some(vec![99]));
        assert_eq!(coarse.expect("valid").labels, Some(vec![19]));
    }

    #[test]
    fn truncated_cifar_record_names_file_and_offset() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (mut bytes, _) = record(&mut rng, &[1]);
        let (second, _) = record(&mut rng, &[2]);
        bytes.extend_from_slice(&second[..100]);
        let err = parse_cifar(Path::new("data_batch_2.bin"), &bytes, CifarKind::Cifar10)
            .expect_err("one record and a bit");
        assert!(matches!(
            err,
            DataError::RecordSize {
                len: 3173,
                record_len: 3073,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("data_batch_2.bin")
                && msg.contains("offset 3073")
                && msg.contains("100 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn cifar_label_out_of_range_names_record_and_offset() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (mut bytes, _) = record(&mut rng, &[5, 50]);
        let (bad, _) = record(&mut rng, &[5, 100]);
        bytes.extend(bad);
        let err = parse_cifar(
            Path::new("train.bin"),
            &bytes,
            CifarKind::Cifar100(Cifar100Labels::Coarse),
        )
        .expect_err("fine label 100 is invalid even when coarse labels are used");
        assert!(matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                offset: 3075,
                label: 100,
                num_classes: 100,
                ..
            }
        ));
        assert!(err.to_string().contains("train.bin"), "{err}");
    }

    #[test]
    fn empty_cifar_file_is_an_error() {
        let err = parse_cifar(Path::new("test_batch.bin"), &[], CifarKind::Cifar10)
            .expect_err("no record");
        assert!(matches!(err, DataError::EmptyFile { .. }));
        assert!(err.to_string().contains("test_batch.bin"));
    }

    #[test]
    fn valid_cifar_truncated_anywhere_is_an_error_never_a_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for kind in [
            CifarKind::Cifar10,
            CifarKind::Cifar100(Cifar100Labels::Fine),
        ] {
            let labels: &[u8] = if kind == CifarKind::Cifar10 {
                &[7]
            } else {
                &[7, 77]
            };
            let mut bytes = Vec::new();
            for _ in 0..2 {
                bytes.extend(record(&mut rng, labels).0);
            }
            let record_len = kind.record_len();
            for cut in 0..bytes.len() {
                let result = parse_cifar(Path::new("t"), &bytes[..cut], kind);
                if cut == record_len {
                    assert!(result.is_ok(), "one whole record at {cut}");
                } else {
                    assert!(result.is_err(), "{kind:?} cut at {cut} should fail");
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_cifar() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        for _ in 0..300 {
            let records = rng.random_range(0..3);
            let extra = if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(0..5)
            };
            let len = records * 3074 + extra;
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            for kind in [
                CifarKind::Cifar10,
                CifarKind::Cifar100(Cifar100Labels::Fine),
            ] {
                if let Ok(r) = parse_cifar(Path::new("r"), &bytes, kind) {
                    let labels = r.labels.expect("CIFAR is labelled");
                    assert!(labels.iter().all(|&l| (l as usize) < kind.num_classes()));
                    assert_eq!(labels.len() * kind.record_len(), bytes.len());
                }
            }
        }
    }
}
