//! An ImageNet-like folder of JPEG photos with the files that trip
//! loaders up: progressive, CMYK and greyscale JPEGs, one with an EXIF
//! orientation, one truncated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::FixtureError;
use crate::jpeg::{JpegOptions, Pixels, encode};

/// The sizes photos are drawn from: ImageNet's common 500×375 and its
/// neighbours, landscape and portrait.
pub const SIZES: [(usize, usize); 9] = [
    (500, 375),
    (375, 500),
    (500, 333),
    (500, 400),
    (400, 500),
    (500, 500),
    (333, 500),
    (500, 281),
    (450, 338),
];

/// What [`photo_folder`] writes: `root/train/<class>/` and
/// `root/val/<class>/`, classes `n000`, `n001`, ...; of each split's
/// images in every class, the 2nd of each 16 is progressive, the 3rd
/// CMYK, the 4th greyscale, the rest baseline YCbCr. The training split
/// also holds one baseline file with EXIF orientation 6 and one cut to
/// 60 % of its bytes (header intact, no end-of-image marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoFolder {
    /// Class folders in each split.
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Distinct photos per class and split, the files cycling through them
    /// (writing a few thousand files in a debug build stays quick); `None`:
    /// every file is its own photo.
    pub distinct: Option<usize>,
    /// Seed of the pictures and their sizes.
    pub seed: u64,
}

/// The files [`photo_folder`] wrote, relative to its root.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Image files written (the truncated one included).
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Progressive JPEGs.
    pub progressive: Vec<PathBuf>,
    /// CMYK JPEGs.
    pub cmyk: Vec<PathBuf>,
    /// Greyscale JPEGs.
    pub gray: Vec<PathBuf>,
    /// The file with EXIF orientation 6 (rotate 90° clockwise).
    pub exif_rotated: PathBuf,
    /// The truncated file.
    pub truncated: PathBuf,
}

/// The kind of file at one place of the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    Baseline,
    Progressive,
    Cmyk,
    Gray,
    Rotated,
    Truncated,
}

fn variant(index_in_class: usize) -> Variant {
    match index_in_class % 16 {
        1 => Variant::Progressive,
        2 => Variant::Cmyk,
        3 => Variant::Gray,
        _ => Variant::Baseline,
    }
}

/// SplitMix64: a well-mixed number from `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// RGB pixels and size of photo `key` of `class`: a colour of the class
/// over a gradient, stripes whose angle and frequency depend on the
/// class, and per-pixel noise, so each file carries tens of kilobytes.
pub fn photo(class: usize, key: u64) -> (usize, usize, Vec<u8>) {
    let h = mix(key ^ ((class as u64) << 32));
    let (w, ht) = SIZES[(h % SIZES.len() as u64) as usize];
    let c = class as f32;
    let hue = [
        (c * 0.37).sin() * 0.5 + 0.5,
        (c * 0.61 + 1.0).sin() * 0.5 + 0.5,
        (c * 0.89 + 2.0).sin() * 0.5 + 0.5,
    ];
    let (freq, angle) = (0.03 + 0.01 * (class % 7) as f32, c * 0.7);
    let (ca, sa) = (angle.cos(), angle.sin());
    let mut out = Vec::with_capacity(w * ht * 3);
    for y in 0..ht {
        for x in 0..w {
            let (u, v) = (x as f32 / w as f32, y as f32 / ht as f32);
            let stripe = ((x as f32 * ca + y as f32 * sa) * freq).sin() * 0.5 + 0.5;
            let noise = mix(h ^ (y * w + x) as u64);
            for (k, hue) in hue.iter().enumerate() {
                let grain = ((noise >> (8 * k)) & 0xFF) as f32 / 255.0 - 0.5;
                let value = 0.45 * hue + 0.25 * stripe + 0.2 * (u + v) / 2.0 + 0.15 * grain;
                out.push((value.clamp(0.0, 1.0) * 255.0) as u8);
            }
        }
    }
    (w, ht, out)
}

/// `rgb` as CMYK ink (0 = none): K = 1 − max(R, G, B), the rest relative.
fn to_cmyk(rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgb.len() / 3 * 4);
    for p in rgb.chunks_exact(3) {
        let max = p.iter().copied().max().unwrap_or(0);
        let k = 255 - max;
        for &v in p {
            let ink = if max == 0 {
                0
            } else {
                (u32::from(max - v) * 255 / u32::from(max)) as u8
            };
            out.push(ink);
        }
        out.push(k);
    }
    out
}

fn to_gray(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| {
            ((u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114) / 1000) as u8
        })
        .collect()
}

/// The bytes of photo `key` of `class` as `variant`.
fn file_bytes(class: usize, key: u64, variant: Variant) -> Result<Vec<u8>, FixtureError> {
    let (w, h, rgb) = photo(class, key);
    let mut options = JpegOptions {
        quality: 90,
        ..JpegOptions::default()
    };
    let bytes = match variant {
        Variant::Progressive => {
            options.progressive = true;
            encode(w, h, Pixels::Rgb(&rgb), &options)?
        }
        Variant::Cmyk => encode(w, h, Pixels::Cmyk(&to_cmyk(&rgb)), &options)?,
        Variant::Gray => encode(w, h, Pixels::Gray(&to_gray(&rgb)), &options)?,
        Variant::Rotated => {
            options.exif_orientation = Some(6);
            encode(w, h, Pixels::Rgb(&rgb), &options)?
        }
        Variant::Baseline | Variant::Truncated => encode(w, h, Pixels::Rgb(&rgb), &options)?,
    };
    Ok(match variant {
        Variant::Truncated => bytes[..bytes.len() * 6 / 10].to_vec(),
        _ => bytes,
    })
}

/// One file to write.
struct Place {
    rel: PathBuf,
    class: usize,
    key: u64,
    variant: Variant,
}

fn places(spec: &PhotoFolder) -> Vec<Place> {
    let mut out = Vec::new();
    for (split, per_class) in [("train", spec.train_per_class), ("val", spec.val_per_class)] {
        for class in 0..spec.classes {
            for i in 0..per_class {
                let mut v = variant(i);
                if split == "train" && class == 0 && i == 4 {
                    v = Variant::Rotated;
                }
                if split == "train" && class == spec.classes - 1 && i + 1 == per_class {
                    v = Variant::Truncated;
                }
                // the photo is a function of (class, key): `distinct` keys
                // per class and split at most
                let n = match spec.distinct {
                    Some(d) => i % d.max(1),
                    None => i,
                } as u64;
                let split_bit = if split == "val" { 1 << 40 } else { 0 };
                let key = (n | split_bit) ^ spec.seed.rotate_left(20);
                out.push(Place {
                    rel: Path::new(split)
                        .join(format!("n{class:03}"))
                        .join(format!("n{class:03}_{i:05}.JPEG")),
                    class,
                    key,
                    variant: v,
                });
            }
        }
    }
    out
}

/// Writes the folder `spec` describes under `root` (see [`PhotoFolder`]),
/// in parallel.
///
/// # Errors
///
/// [`FixtureError::Spec`] for no class or a training class of fewer than
/// 6 images (the special files need room), [`FixtureError::Io`] when a
/// file cannot be written.
pub fn photo_folder(root: &Path, spec: &PhotoFolder) -> Result<Written, FixtureError> {
    if spec.classes == 0 || spec.train_per_class < 6 {
        return Err(FixtureError::Spec(format!(
            "{} classes of {} training images: need at least 1 class of 6",
            spec.classes, spec.train_per_class
        )));
    }
    let places = places(spec);
    // with `distinct`, encode each (class, key, variant) once
    let unique: HashMap<(usize, u64, Variant), usize> = places
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.class, p.key, p.variant), i))
        .collect();
    let cache: HashMap<(usize, u64, Variant), Vec<u8>> = if spec.distinct.is_some() {
        unique
            .into_par_iter()
            .map(|(k, _)| file_bytes(k.0, k.1, k.2).map(|b| (k, b)))
            .collect::<Result<_, _>>()?
    } else {
        HashMap::new()
    };
    let sizes: Vec<u64> = places
        .par_iter()
        .map(|p| {
            let owned;
            let bytes = match cache.get(&(p.class, p.key, p.variant)) {
                Some(b) => b,
                None => {
                    owned = file_bytes(p.class, p.key, p.variant)?;
                    &owned
                }
            };
            let path = root.join(&p.rel);
            let io = |source| FixtureError::Io {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            std::fs::write(&path, bytes).map_err(io)?;
            Ok(bytes.len() as u64)
        })
        .collect::<Result<_, FixtureError>>()?;
    let mut written = Written {
        files: places.len(),
        bytes: sizes.iter().sum(),
        ..Written::default()
    };
    for p in places {
        match p.variant {
            Variant::Progressive => written.progressive.push(p.rel),
            Variant::Cmyk => written.cmyk.push(p.rel),
            Variant::Gray => written.gray.push(p.rel),
            Variant::Rotated => written.exif_rotated = p.rel,
            Variant::Truncated => written.truncated = p.rel,
            Variant::Baseline => {}
        }
    }
    Ok(written)
}
