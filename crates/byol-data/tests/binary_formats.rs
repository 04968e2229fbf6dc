//! CIFAR-10, CIFAR-100 and STL-10 files written by a generator with known
//! random pixels and labels must read back exactly, through `open`.

use std::path::Path;

use byol_data::{
    Cifar100Labels, DataError, Dataset, Format, OpenOptions, Split, Stl10Dataset, detect, open,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One generated image: HWC pixels as the reader must return them.
struct Sample {
    hwc: Vec<u8>,
    label: u32,
}

fn random_hwc(rng: &mut impl Rng, side: usize) -> Vec<u8> {
    (0..side * side * 3).map(|_| rng.random()).collect()
}

/// CHW bytes of an HWC image (CIFAR's layout).
fn to_chw(hwc: &[u8], side: usize) -> Vec<u8> {
    let mut chw = vec![0; hwc.len()];
    for y in 0..side {
        for x in 0..side {
            for c in 0..3 {
                chw[c * side * side + y * side + x] = hwc[(y * side + x) * 3 + c];
            }
        }
    }
    chw
}

/// Column-major CHW bytes of an HWC image (STL-10's layout).
fn to_stl(hwc: &[u8], side: usize) -> Vec<u8> {
    let mut out = vec![0; hwc.len()];
    for y in 0..side {
        for x in 0..side {
            for c in 0..3 {
                out[c * side * side + x * side + y] = hwc[(y * side + x) * 3 + c];
            }
        }
    }
    out
}

/// Writes a CIFAR-10 file of `n` records; returns what it holds.
fn write_cifar10(dir: &Path, name: &str, n: usize, rng: &mut impl Rng) -> Vec<Sample> {
    let mut bytes = Vec::new();
    let samples: Vec<Sample> = (0..n)
        .map(|_| {
            let hwc = random_hwc(rng, 32);
            let label = rng.random_range(0..10u8);
            bytes.push(label);
            bytes.extend(to_chw(&hwc, 32));
            Sample {
                hwc,
                label: u32::from(label),
            }
        })
        .collect();
    std::fs::write(dir.join(name), bytes).expect("temp file should be writable");
    samples
}

/// Writes a CIFAR-100 file; returns (coarse, fine) samples.
fn write_cifar100(dir: &Path, name: &str, n: usize, rng: &mut impl Rng) -> Vec<(Sample, u32)> {
    let mut bytes = Vec::new();
    let samples = (0..n)
        .map(|_| {
            let hwc = random_hwc(rng, 32);
            let (coarse, fine) = (rng.random_range(0..20u8), rng.random_range(0..100u8));
            bytes.extend([coarse, fine]);
            bytes.extend(to_chw(&hwc, 32));
            (
                Sample {
                    hwc,
                    label: u32::from(fine),
                },
                u32::from(coarse),
            )
        })
        .collect();
    std::fs::write(dir.join(name), bytes).expect("temp file should be writable");
    samples
}

/// Writes STL-10 images (and labels, 1..=10 in the file, when `labelled`).
fn write_stl10(dir: &Path, x: &str, y: Option<&str>, n: usize, rng: &mut impl Rng) -> Vec<Sample> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let samples = (0..n)
        .map(|_| {
            let hwc = random_hwc(rng, 96);
            let label = rng.random_range(1..=10u8);
            images.extend(to_stl(&hwc, 96));
            labels.push(label);
            Sample {
                hwc,
                label: u32::from(label) - 1,
            }
        })
        .collect();
    std::fs::write(dir.join(x), images).expect("temp file should be writable");
    if let Some(y) = y {
        std::fs::write(dir.join(y), labels).expect("temp file should be writable");
    }
    samples
}

/// Checks every image, label and the image shape of `ds` against `want`.
fn assert_reads_back(ds: &dyn Dataset, want: &[&Sample], side: usize, labelled: bool) {
    assert_eq!(ds.len(), want.len());
    assert_eq!(ds.channels(), 3);
    for (i, sample) in want.iter().enumerate() {
        let img = ds.image(i).expect("valid sample should decode");
        assert_eq!((img.height, img.width, img.channels), (side, side, 3));
        assert!(
            img.pixels == sample.hwc,
            "pixels of sample {i} ({})",
            ds.name(i)
        );
        assert_eq!(
            ds.label(i),
            labelled.then_some(sample.label),
            "label of {i}"
        );
    }
}

fn opts() -> OpenOptions<'static> {
    OpenOptions::default()
}

#[test]
fn cifar10_files_read_back_pixel_by_pixel_in_batch_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut train = Vec::new();
    for b in 1..=5 {
        train.extend(write_cifar10(
            dir.path(),
            &format!("data_batch_{b}.bin"),
            3,
            &mut rng,
        ));
    }
    let test = write_cifar10(dir.path(), "test_batch.bin", 4, &mut rng);

    assert_eq!(detect(dir.path()).expect("a folder").0, Format::Cifar10);
    let ds = open(dir.path(), Format::Auto, Split::Train, &opts()).expect("valid CIFAR-10");
    assert_reads_back(&*ds, &train.iter().collect::<Vec<_>>(), 32, true);
    assert_eq!(ds.name(7), "data_batch_3.bin#1");
    assert_eq!(ds.num_classes(), Some(10));
    let names = ds.class_names().expect("CIFAR-10 names are known");
    assert_eq!(
        (names[0].as_str(), names[9].as_str()),
        ("airplane", "truck")
    );

    let ds = open(dir.path(), Format::Cifar10, Split::Test, &opts()).expect("valid CIFAR-10");
    assert_reads_back(&*ds, &test.iter().collect::<Vec<_>>(), 32, true);
    assert_eq!(ds.name(3), "test_batch.bin#3");
}

#[test]
fn cifar10_class_names_come_from_batches_meta_when_present() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    write_cifar10(dir.path(), "test_batch.bin", 1, &mut rng);
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    std::fs::write(
        dir.path().join("batches.meta.txt"),
        names.join("\n") + "\n\n",
    )
    .expect("writable");
    let ds = open(dir.path(), Format::Cifar10, Split::Test, &opts()).expect("valid");
    assert_eq!(ds.class_names(), Some(names));

    std::fs::write(dir.path().join("batches.meta.txt"), "a\nb\n").expect("writable");
    let err = open(dir.path(), Format::Cifar10, Split::Test, &opts()).expect_err("2 names");
    assert!(matches!(
        err,
        DataError::BadClassNames {
            expected: 10,
            found: 2,
            ..
        }
    ));
    assert!(err.to_string().contains("batches.meta.txt"), "{err}");
}

#[test]
fn cifar10_missing_training_batch_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for b in [1, 2, 4, 5] {
        write_cifar10(dir.path(), &format!("data_batch_{b}.bin"), 1, &mut rng);
    }
    let err = open(dir.path(), Format::Auto, Split::Train, &opts()).expect_err("batch 3 missing");
    assert!(matches!(err, DataError::Missing { .. }));
    assert!(err.to_string().contains("data_batch_3.bin"), "{err}");
}

#[test]
fn truncated_cifar_file_names_file_and_offset_through_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    write_cifar10(dir.path(), "test_batch.bin", 2, &mut rng);
    let path = dir.path().join("test_batch.bin");
    let bytes = std::fs::read(&path).expect("readable");
    std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("writable");
    let err = open(dir.path(), Format::Cifar10, Split::Test, &opts()).expect_err("truncated");
    match &err {
        DataError::RecordSize {
            path: p,
            len,
            record_len: 3073,
            ..
        } => {
            assert_eq!((p, *len), (&path, 2 * 3073 - 10));
        }
        other => panic!("expected RecordSize, got {other:?}"),
    }
    assert!(err.to_string().contains("offset 3073"), "{err}");
}

#[test]
fn cifar100_reads_fine_labels_by_default_and_coarse_on_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let train = write_cifar100(dir.path(), "train.bin", 5, &mut rng);
    write_cifar100(dir.path(), "test.bin", 2, &mut rng);
    let fine: Vec<&Sample> = train.iter().map(|(s, _)| s).collect();

    assert_eq!(detect(dir.path()).expect("a folder").0, Format::Cifar100);
    let ds = open(dir.path(), Format::Auto, Split::Train, &opts()).expect("valid CIFAR-100");
    assert_reads_back(&*ds, &fine, 32, true);
    assert_eq!((ds.num_classes(), ds.class_names()), (Some(100), None));

    let coarse = OpenOptions {
        cifar100_labels: Cifar100Labels::Coarse,
        ..opts()
    };
    let ds = open(dir.path(), Format::Cifar100, Split::Train, &coarse).expect("valid");
    let labels: Vec<Option<u32>> = (0..ds.len()).map(|i| ds.label(i)).collect();
    let want: Vec<Option<u32>> = train.iter().map(|(_, c)| Some(*c)).collect();
    assert_eq!(labels, want);
    assert_eq!(ds.num_classes(), Some(20));
    assert_eq!(ds.name(4), "train.bin#4");
}

#[test]
fn cifar100_with_a_wrong_size_is_not_detected_and_the_error_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("train.bin"), vec![0u8; 3074 + 1]).expect("writable");
    let err = open(dir.path(), Format::Auto, Split::Train, &opts()).expect_err("no format");
    assert!(matches!(err, DataError::NotRecognized { .. }));
    let msg = err.to_string();
    assert!(msg.contains("train.bin exists but its 3075 bytes"), "{msg}");
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("unlabeled_X.bin"),
        "{msg}"
    );
    assert!(msg.contains("jpg"), "{msg}");
}

#[test]
fn stl10_files_read_back_transposed_with_labels_shifted_to_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let train = write_stl10(dir.path(), "train_X.bin", Some("train_y.bin"), 3, &mut rng);
    let test = write_stl10(dir.path(), "test_X.bin", Some("test_y.bin"), 2, &mut rng);
    let unlabeled = write_stl10(dir.path(), "unlabeled_X.bin", None, 4, &mut rng);

    assert_eq!(detect(dir.path()).expect("a folder").0, Format::Stl10);
    let ds = open(dir.path(), Format::Auto, Split::Train, &opts()).expect("valid STL-10");
    assert_reads_back(&*ds, &train.iter().collect::<Vec<_>>(), 96, true);
    assert_eq!(ds.class_names().expect("known")[7], "monkey");
    let ds = open(dir.path(), Format::Stl10, Split::Test, &opts()).expect("valid STL-10");
    assert_reads_back(&*ds, &test.iter().collect::<Vec<_>>(), 96, true);

    let ds = open(dir.path(), Format::Stl10, Split::Unlabeled, &opts()).expect("valid");
    assert_reads_back(&*ds, &unlabeled.iter().collect::<Vec<_>>(), 96, false);
    assert_eq!(
        (ds.num_classes(), ds.name(3)),
        (None, "unlabeled_X.bin#3".to_string())
    );

    let ds = open(dir.path(), Format::Stl10, Split::TrainUnlabeled, &opts()).expect("valid");
    assert_eq!((ds.len(), ds.num_classes()), (7, Some(10)));
    for (i, sample) in train.iter().chain(&unlabeled).enumerate() {
        let img = ds.image(i).expect("valid sample should decode");
        assert!(img.pixels == sample.hwc, "pixels of sample {i}");
        assert_eq!(ds.label(i), (i < 3).then_some(sample.label), "label of {i}");
    }
    assert_eq!(
        (ds.name(2), ds.name(3)),
        ("train_X.bin#2".into(), "unlabeled_X.bin#0".into())
    );
}

#[test]
fn stl10_images_file_not_a_whole_number_of_records_is_rejected_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    write_stl10(dir.path(), "unlabeled_X.bin", None, 2, &mut rng);
    let path = dir.path().join("unlabeled_X.bin");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("writable");
    file.set_len(27648 + 5).expect("truncatable");
    let err = open(dir.path(), Format::Stl10, Split::Unlabeled, &opts()).expect_err("truncated");
    assert!(matches!(
        err,
        DataError::RecordSize {
            len: 27653,
            record_len: 27648,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("unlabeled_X.bin") && msg.contains("offset 27648"),
        "{msg}"
    );
}

#[test]
fn stl10_file_truncated_after_open_gives_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    write_stl10(dir.path(), "unlabeled_X.bin", None, 3, &mut rng);
    let ds = Stl10Dataset::open(dir.path(), Split::Unlabeled).expect("valid");
    let path = dir.path().join("unlabeled_X.bin");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("writable");
    file.set_len(27648 + 100).expect("truncatable");
    assert!(ds.image(0).is_ok());
    let err = ds.image(2).expect_err("record 2 is gone");
    assert!(matches!(err, DataError::IoAt { offset: 55296, .. }));
    assert!(err.to_string().contains("unlabeled_X.bin"), "{err}");
    assert!(matches!(
        ds.image(3),
        Err(DataError::IndexOutOfRange {
            index: 3,
            len: 3,
            ..
        })
    ));
}

#[test]
fn stl10_bad_labels_are_typed_errors_naming_the_label_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    write_stl10(dir.path(), "train_X.bin", Some("train_y.bin"), 3, &mut rng);
    std::fs::write(dir.path().join("train_y.bin"), [1u8, 0, 3]).expect("writable");
    let err = open(dir.path(), Format::Stl10, Split::Train, &opts()).expect_err("label 0");
    assert!(matches!(
        err,
        DataError::LabelOutOfRange {
            index: 1,
            label: 0,
            ..
        }
    ));
    assert!(err.to_string().contains("train_y.bin"), "{err}");

    std::fs::write(dir.path().join("train_y.bin"), [1u8, 2]).expect("writable");
    let err = open(dir.path(), Format::Stl10, Split::Train, &opts()).expect_err("2 labels");
    assert!(matches!(
        err,
        DataError::CountMismatch {
            n_images: 3,
            n_labels: 2,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("train_X.bin") && msg.contains("train_y.bin"),
        "{msg}"
    );

    std::fs::remove_file(dir.path().join("train_y.bin")).expect("removable");
    let err = open(dir.path(), Format::Stl10, Split::Train, &opts()).expect_err("no labels");
    assert!(matches!(err, DataError::Io { .. }));
    assert!(err.to_string().contains("train_y.bin"), "{err}");
}

#[test]
fn unlabeled_splits_exist_only_for_stl10() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    write_cifar10(dir.path(), "test_batch.bin", 1, &mut rng);
    for split in [Split::Unlabeled, Split::TrainUnlabeled] {
        let err = open(dir.path(), Format::Auto, split, &opts()).expect_err("CIFAR-10");
        assert!(matches!(
            err,
            DataError::UnsupportedSplit {
                format: Format::Cifar10,
                ..
            }
        ));
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-sample");
    let err = open(&sample, Format::Auto, Split::Unlabeled, &opts()).expect_err("IDX");
    assert!(matches!(
        err,
        DataError::UnsupportedSplit {
            format: Format::Idx,
            ..
        }
    ));
}

#[test]
fn official_archive_subfolders_are_found_by_auto_and_explicit_formats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("stl10_binary");
    std::fs::create_dir(&sub).expect("creatable");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    write_stl10(&sub, "test_X.bin", Some("test_y.bin"), 1, &mut rng);
    assert_eq!(
        detect(dir.path()).expect("a folder"),
        (Format::Stl10, sub.clone())
    );
    for format in [Format::Auto, Format::Stl10] {
        let ds = open(dir.path(), format, Split::Test, &opts()).expect("found in stl10_binary/");
        assert_eq!(ds.len(), 1);
    }
}

#[test]
fn shipped_idx_sample_opens_through_the_trait() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist-sample");
    assert_eq!(detect(&sample).expect("a folder").0, Format::Idx);
    let ds = open(&sample, Format::Auto, Split::Test, &opts()).expect("shipped sample");
    assert_eq!(
        (ds.len(), ds.channels(), ds.num_classes()),
        (1000, 1, Some(10))
    );
    let img = ds.image(999).expect("in range");
    assert_eq!((img.height, img.width, img.pixels.len()), (28, 28, 784));
    assert!(ds.label(0).is_some_and(|l| l < 10));
    assert_eq!(ds.name(5), "t10k-images-idx3-ubyte.gz#5");
}

#[test]
fn cifar_and_stl10_files_cut_anywhere_fail_to_open_with_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    write_cifar10(dir.path(), "test_batch.bin", 2, &mut rng);
    write_stl10(dir.path(), "test_X.bin", Some("test_y.bin"), 2, &mut rng);
    for (name, format) in [
        ("test_batch.bin", Format::Cifar10),
        ("test_X.bin", Format::Stl10),
    ] {
        let path = dir.path().join(name);
        let whole = std::fs::read(&path).expect("readable");
        let record = whole.len() / 2;
        let cuts = (0..whole.len())
            .step_by(37)
            .chain([1, record - 1, record + 1, whole.len() - 1]);
        for cut in cuts {
            std::fs::write(&path, &whole[..cut]).expect("writable");
            match open(dir.path(), format, Split::Test, &opts()) {
                Err(
                    DataError::RecordSize { .. }
                    | DataError::EmptyFile { .. }
                    | DataError::CountMismatch { .. },
                ) => {}
                other => panic!("{name} cut at {cut}: expected a size error, got {other:?}"),
            }
        }
        std::fs::write(&path, &whole).expect("writable");
    }
}
