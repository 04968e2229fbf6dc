//! `bench data --size N` (N ≠ 28): the loader at ImageNet size. A folder of
//! JPEGs the size of ImageNet's typical 500×375 photos is written once into
//! a temporary folder, then decoded and made into the paper's two views at
//! N px, at 1 and 2 threads, beside the same work in PIL + torchvision
//! (`bench/torch_data.py`, `--peer`).
//!
//! No dataset is downloaded: each photo is a Fashion-MNIST image enlarged to
//! 500×375, tinted, laid over a smooth colour gradient with a coarse
//! colour texture and per-pixel noise, and saved at JPEG quality 90, so
//! that the files carry about as many bytes as ImageNet's (110 KB on
//! average) and decode at about the same speed.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use byol_augment::{AugmentConfig, splitmix64};
use byol_data::{Dataset, FolderDataset, IdxDataset, OpenOptions, Split};
use byol_train::RunConfig;
use rayon::prelude::*;

use super::kernels::bench_data;
use super::{DataArgs, PROBE_PREFETCH, peer_python, record, run_probe};

/// The run config whose views are timed: the paper's (Table 6).
const RECIPE: &str = "configs/imagenet-resnet50.toml";

/// Width and height of the written photos: ImageNet's most common size.
pub const PHOTO_SIZE: (u32, u32) = (500, 375);

/// JPEG quality of the written photos.
const QUALITY: u8 = 90;

/// Amplitude of the per-pixel noise (triangular, in [-a, a] of the unit
/// range): with it the files average about 114 KB, ImageNet's ~110 KB.
const NOISE: f32 = 0.09;

/// A number in [0, 1) from a hash of `key`.
fn unit(key: u64) -> f32 {
    (splitmix64(key) >> 40) as f32 / (1u64 << 24) as f32
}

/// The RGB pixels of photo `index` made from the gray image `gray`
/// (`side × side`).
fn photo(gray: &[u8], side: u32, index: u64) -> Result<Vec<u8>> {
    let (w, h) = (PHOTO_SIZE.0 as usize, PHOTO_SIZE.1 as usize);
    let small = image::GrayImage::from_raw(side, side, gray.to_vec()).context("gray image")?;
    let big = image::imageops::resize(
        &small,
        PHOTO_SIZE.0,
        PHOTO_SIZE.1,
        image::imageops::FilterType::Triangle,
    );
    let seed = splitmix64(index ^ 0x5048_4f54_4f53); // "PHOTOS"
    let r = |k: u64| unit(seed ^ k.wrapping_mul(0x9E37_79B9));
    let tint = [r(1), r(2), r(3)];
    let corners: Vec<[f32; 3]> = (0..4u64)
        .map(|c| [r(10 + 3 * c), r(11 + 3 * c), r(12 + 3 * c)])
        .collect();
    // a coarse texture: a 21 × 16 grid of random colours, interpolated
    let (gw, gh) = (21usize, 16usize);
    let grid: Vec<f32> = (0..gw * gh * 3).map(|k| r(100 + k as u64) - 0.5).collect();
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        let v = y as f32 / (h - 1) as f32;
        let gy = v * (gh - 1) as f32;
        let iy = (gy as usize).min(gh - 2);
        let fy = gy - iy as f32;
        for x in 0..w {
            let u = x as f32 / (w - 1) as f32;
            let gx = u * (gw - 1) as f32;
            let ix = (gx as usize).min(gw - 2);
            let fx = gx - ix as f32;
            let g = f32::from(big.get_pixel(x as u32, y as u32)[0]) / 255.0;
            for c in 0..3 {
                let bg = corners[0][c] * (1.0 - u) * (1.0 - v)
                    + corners[1][c] * u * (1.0 - v)
                    + corners[2][c] * (1.0 - u) * v
                    + corners[3][c] * u * v;
                let t = |xx: usize, yy: usize| grid[(yy * gw + xx) * 3 + c];
                let texture = t(ix, iy) * (1.0 - fx) * (1.0 - fy)
                    + t(ix + 1, iy) * fx * (1.0 - fy)
                    + t(ix, iy + 1) * (1.0 - fx) * fy
                    + t(ix + 1, iy + 1) * fx * fy;
                let k = ((y * w + x) * 3 + c) as u64;
                let noise = unit(seed ^ k) + unit(seed.rotate_left(17) ^ k) - 1.0;
                let value = g * tint[c] + (1.0 - g) * bg + 0.25 * texture + NOISE * noise;
                out[(y * w + x) * 3 + c] = (value.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    Ok(out)
}

/// Writes `n` photos made from the first `n` images of `source` (repeated
/// if it holds fewer) as `dir/c<label>/<i>.jpg`; returns the mean file size
/// in bytes.
pub fn write_photos(source: &IdxDataset, n: usize, dir: &Path) -> Result<f64> {
    let sizes: Vec<usize> = (0..n)
        .into_par_iter()
        .map(|i| -> Result<usize> {
            let j = i % source.len();
            let img = source.images.image(j);
            anyhow::ensure!(
                img.height == img.width && img.channels == 1,
                "the photo source should hold square gray images"
            );
            let pixels = photo(img.pixels, img.width as u32, i as u64)?;
            let class = dir.join(format!("c{}", source.label(j).unwrap_or(0)));
            std::fs::create_dir_all(&class)?;
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, QUALITY)
                .encode(
                    &pixels,
                    PHOTO_SIZE.0,
                    PHOTO_SIZE.1,
                    image::ExtendedColorType::Rgb8,
                )
                .with_context(|| format!("encoding photo {i}"))?;
            std::fs::write(class.join(format!("{i:05}.jpg")), &bytes)
                .with_context(|| format!("writing photo {i}"))?;
            Ok(bytes.len())
        })
        .collect::<Result<_>>()?;
    Ok(sizes.iter().sum::<usize>() as f64 / n.max(1) as f64)
}

/// The `[augment]` of [`RECIPE`] at `size` px.
pub fn augment(size: usize) -> Result<AugmentConfig> {
    augment_from(Path::new(RECIPE), size)
}

/// The `[augment]` of the run config `recipe` at `size` px.
fn augment_from(recipe: &Path, size: usize) -> Result<AugmentConfig> {
    let augment = RunConfig::load(Some(recipe), &[])?.augment;
    let augment = AugmentConfig { size, ..augment };
    augment.validate("augment")?;
    Ok(augment)
}

/// One line of `bench/torch_data.py`.
#[derive(serde::Deserialize)]
struct Peer {
    workers: usize,
    images: usize,
    images_per_sec: f64,
    torch: String,
    torchvision: String,
    pil: String,
}

/// The two torchvision pipelines timed: the views as the brief of the
/// bench states them, and as lightly and solo-learn run them.
const PEERS: [(&str, &[&str]); 2] = [
    ("torchvision v2 on uint8 tensors, `GaussianBlur(23)`", &[]),
    (
        "torchvision v2 on PIL images, PIL's `GaussianBlur`",
        &["--input", "pil", "--blur", "pil"],
    ),
];

/// Runs `bench/torch_data.py` with `extra` arguments at 1 and 2 workers.
fn run_peer(args: &DataArgs, folder: &Path, extra: &[&str]) -> Result<Vec<Peer>> {
    let python = peer_python(args.python.as_deref());
    let out = Command::new(&python)
        .arg("bench/torch_data.py")
        .arg("--folder")
        .arg(folder)
        .args(["--size", &args.size.to_string()])
        .args(["--batch", &args.batch().to_string()])
        .args(["--batches", &args.batches().to_string()])
        .args(["--workers", "1,2"])
        .args(extra)
        .output()
        .with_context(|| format!("running {} bench/torch_data.py", python.display()))?;
    if !out.status.success() {
        bail!(
            "the torchvision peer failed ({}; are torch and torchvision installed for {}?):\n{}",
            out.status,
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("peer output: {l}")))
        .collect()
}

/// The CPU's model name and whether it has AVX-512 (the widest loops of
/// the views run where it does).
fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[cfg(target_arch = "x86_64")]
    let simd = if std::is_x86_feature_detected!("avx512f") {
        "AVX-512 present"
    } else if std::is_x86_feature_detected!("avx2") {
        "AVX2, no AVX-512"
    } else {
        "neither AVX2 nor AVX-512"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let simd = "not x86-64";
    format!("{model} ({simd})")
}

/// The commit of the working tree, `+` uncommitted changes when there are.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{head} + uncommitted changes"),
        _ => head,
    }
}

/// `bench data --size N`, N ≠ 28.
pub fn bench(args: &DataArgs) -> Result<()> {
    let aug = augment(args.size)?;
    let (batch, batches) = (args.batch(), args.batches());
    let source = IdxDataset::load_dir(&args.data, Split::Train)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let tmp = tempfile::tempdir()?;
    let folder = tmp.path().join("photos");
    eprintln!(
        "writing {} JPEG photos of {}×{} to {} ...",
        args.photos,
        PHOTO_SIZE.0,
        PHOTO_SIZE.1,
        folder.display()
    );
    let mean_bytes = write_photos(&source, args.photos, &folder)?;
    let ds = FolderDataset::open(&folder, Split::Train, &OpenOptions::default())?;
    let peers = if args.peer {
        PEERS
            .iter()
            .map(|(name, extra)| Ok((*name, run_peer(args, &folder, extra)?)))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let mut table = String::from(
        "| pipeline | threads | images | img/s | img/s per core | byol-rs / this |\n|---|---|---|---|---|---|\n",
    );
    for threads in [1usize, 2] {
        let ours = bench_data(&ds, &aug, batch, batches, threads)?;
        table.push_str(&format!(
            "| byol-rs | {threads} | {} | {ours:.1} | {:.1} | 1.00 |\n",
            batch * batches,
            ours / threads as f64
        ));
        for (name, lines) in &peers {
            if let Some(p) = lines.iter().find(|p| p.workers == threads) {
                table.push_str(&format!(
                    "| {name} | {threads} | {} | {:.1} | {:.1} | {:.2} |\n",
                    p.images,
                    p.images_per_sec,
                    p.images_per_sec / threads as f64,
                    ours / p.images_per_sec
                ));
            }
        }
    }
    let view_mib = (2 * batch * 3 * args.size * args.size * 4) as f64 / (1 << 20) as f64;
    let rss = run_probe(&folder, ds.len(), args, Some(batches))?;
    table.push_str(&format!(
        "\n| loader over the photos, {batches} batches, prefetch {PROBE_PREFETCH} | peak RSS of the process MiB | views of one batch MiB |\n|---|---|---|\n| {} threads | {rss:.0} | {view_mib:.0} |\n",
        rayon::current_num_threads()
    ));
    print!("{table}");
    if !args.no_record {
        let versions = peers
            .first()
            .and_then(|(_, l)| l.first())
            .map_or(String::new(), |p| {
                format!(
                    " Peer: `bench/torch_data.py`, torch {}, torchvision {}, Pillow {}; DataLoader with 1 or 2 worker processes (one torch thread each), batches collated in the workers.",
                    p.torch, p.torchvision, p.pil
                )
            });
        let notes = format!(
            "\nCPU: {cpu}. Commit: {commit}. {n} JPEG photos of {w}×{h} (quality {QUALITY}, mean {kb:.0} KB) in {classes} class folders, written by the bench; each image decoded and made into the two views of `{RECIPE}` at {size} px (crop 0.08–1, flip, jitter p 0.8, grayscale p 0.2, blur 23 p 1.0 / 0.1, solarize p 0 / 0.2, normalised `f32`), batches of {batch}; the clock covers every batch.{versions} img/s per core: img/s / threads (or workers). Memory: a child process runs the loader over the photos; at most prefetch + 2 batches of views exist at once.\n",
            cpu = cpu(),
            commit = commit(),
            n = ds.len(),
            w = PHOTO_SIZE.0,
            h = PHOTO_SIZE.1,
            kb = mean_bytes / 1000.0,
            classes = ds.num_classes().unwrap_or(0),
            size = args.size,
        );
        record(
            &format!("Benchmark: data pipeline at {} px", args.size),
            "none (data loading only)",
            &table,
            &notes,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use byol_data::{FolderDataset, ImageSet, OpenOptions, Split};

    #[test]
    fn the_photo_bench_uses_the_papers_views_at_the_given_size() {
        let aug = augment_from(&Path::new("..").join(RECIPE), 224).expect("the recipe loads");
        assert_eq!(aug.size, 224);
        assert_eq!((aug.view1.blur_p, aug.view2.blur_p), (1.0, 0.1));
        assert_eq!((aug.view1.solarize_p, aug.view2.solarize_p), (0.0, 0.2));
        assert_eq!(aug.view1.blur_kernel_size, 23);
        assert_eq!(aug.mean, vec![0.485, 0.456, 0.406]);
        let small = augment_from(&Path::new("..").join(RECIPE), 96).expect("any side");
        assert_eq!(small.size, 96);
    }

    #[test]
    fn photos_are_imagenet_sized_jpegs_in_class_folders_with_realistic_bytes() {
        let side = 28;
        let pixels: Vec<u8> = (0..3 * side * side).map(|i| (i * 7 % 256) as u8).collect();
        let images = ImageSet {
            pixels,
            height: side,
            width: side,
            channels: 1,
        };
        let source = IdxDataset::new(images, Some(vec![0, 1, 1]), "t").expect("labels fit");
        let tmp = tempfile::tempdir().expect("tempdir");
        let mean = write_photos(&source, 4, tmp.path()).expect("written");
        // noise keeps the entropy of a photograph: tens of KB, not a few
        assert!((60_000.0..200_000.0).contains(&mean), "{mean}");
        let ds = FolderDataset::open(tmp.path(), Split::Train, &OpenOptions::default())
            .expect("a folder of JPEGs");
        assert_eq!((ds.len(), ds.num_classes()), (4, Some(2)));
        let img = ds.image(0).expect("decodes");
        assert_eq!(
            (img.width, img.height, img.channels),
            (PHOTO_SIZE.0 as usize, PHOTO_SIZE.1 as usize, 3)
        );
    }
}
