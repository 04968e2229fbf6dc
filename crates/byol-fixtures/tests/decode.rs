//! Every variant the writer makes decodes with the `image` crate (the
//! decoder byol-data uses) to the pixels it was given.

use byol_fixtures::jpeg::{JpegOptions, Pixels, encode};
use byol_fixtures::{PhotoFolder, photo, photo_folder};

/// Mean absolute difference of two sample buffers.
fn mad(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / a.len() as f64
}

fn decode(bytes: &[u8]) -> image::DynamicImage {
    image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).expect("decodes")
}

#[test]
fn baseline_and_progressive_rgb_decode_to_the_source_pixels() {
    let (w, h, rgb) = photo(3, 7);
    let mut decoded = Vec::new();
    for progressive in [false, true] {
        let options = JpegOptions {
            progressive,
            ..JpegOptions::default()
        };
        let bytes = encode(w, h, Pixels::Rgb(&rgb), &options).expect("encodes");
        assert_eq!(bytes[..2], [0xFF, 0xD8]);
        let sof = if progressive { 0xC2 } else { 0xC0 };
        assert!(bytes.windows(2).any(|m| m == [0xFF, sof]), "SOF{sof:#x}");
        let img = decode(&bytes);
        assert_eq!((img.width() as usize, img.height() as usize), (w, h));
        let pixels = img.to_rgb8().into_raw();
        // the photos' per-pixel grain is what quality 90 loses most of
        let err = mad(&pixels, &rgb);
        assert!(err < 10.0, "progressive {progressive}: mean error {err}");
        decoded.push(pixels);
    }
    // both code the same quantised coefficients
    let between = mad(&decoded[0], &decoded[1]);
    assert!(
        between < 0.5,
        "baseline and progressive differ by {between}"
    );
}

#[test]
fn odd_sizes_gray_and_exif_decode() {
    let gray: Vec<u8> = (0..37 * 23).map(|i| (i * 7 % 251) as u8).collect();
    let options = JpegOptions {
        quality: 100,
        exif_orientation: Some(6),
        ..JpegOptions::default()
    };
    let bytes = encode(37, 23, Pixels::Gray(&gray), &options).expect("encodes");
    let img = decode(&bytes);
    assert_eq!(img.color(), image::ColorType::L8);
    assert_eq!((img.width(), img.height()), (37, 23));
    assert!(mad(img.to_luma8().as_raw(), &gray) < 8.0);
    let mut decoder =
        image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&bytes)).expect("header reads");
    use image::ImageDecoder;
    assert_eq!(
        decoder.orientation().expect("orientation reads"),
        image::metadata::Orientation::Rotate90
    );
}

#[test]
fn cmyk_decodes_to_three_channels_near_the_source_colours() {
    let (w, h, rgb) = photo(5, 1);
    let cmyk: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| {
            let max = *p.iter().max().expect("three");
            let ink = |v: u8| {
                if max == 0 {
                    0
                } else {
                    ((max - v) as u32 * 255 / max as u32) as u8
                }
            };
            [ink(p[0]), ink(p[1]), ink(p[2]), 255 - max]
        })
        .collect();
    let bytes = encode(w, h, Pixels::Cmyk(&cmyk), &JpegOptions::default()).expect("encodes");
    assert!(
        bytes.windows(5).any(|m| m == b"Adobe"),
        "an Adobe APP14 marker"
    );
    let img = decode(&bytes);
    let rgb_out = img.to_rgb8();
    assert_eq!(
        (rgb_out.width() as usize, rgb_out.height() as usize),
        (w, h)
    );
    let err = mad(rgb_out.as_raw(), &rgb);
    assert!(err < 12.0, "CMYK → RGB mean error {err}");
}

#[test]
fn a_photo_folder_holds_every_variant_in_class_folders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = PhotoFolder {
        classes: 2,
        train_per_class: 17,
        val_per_class: 4,
        distinct: Some(3),
        seed: 1,
    };
    let written = photo_folder(dir.path(), &spec).expect("written");
    assert_eq!(written.files, 2 * 17 + 2 * 4);
    assert_eq!(
        (
            written.progressive.len(),
            written.cmyk.len(),
            written.gray.len()
        ),
        (4, 4, 4)
    );
    assert!(
        dir.path().join("train/n000/n000_00004.JPEG") == dir.path().join(&written.exif_rotated)
    );
    let cut = std::fs::read(dir.path().join(&written.truncated)).expect("written");
    assert_ne!(cut[cut.len() - 2..], [0xFF, 0xD9], "no end-of-image marker");
    for rel in written
        .progressive
        .iter()
        .chain(&written.cmyk)
        .chain(&written.gray)
    {
        let bytes = std::fs::read(dir.path().join(rel)).expect("written");
        let img = decode(&bytes);
        assert!(
            img.width() >= 281 && img.height() >= 281,
            "{}",
            rel.display()
        );
    }
    assert!(
        photo_folder(
            dir.path(),
            &PhotoFolder {
                train_per_class: 5,
                ..spec
            }
        )
        .is_err()
    );
}
