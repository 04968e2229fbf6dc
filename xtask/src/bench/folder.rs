//! `bench folder`: large image folders, made at run time in a temporary
//! folder under `--dir` and deleted after (unless `--keep`).
//!
//! - Many small files (default 1,000,000 JPEGs of 32×32 in 1,000 class
//!   folders, grown in three stages: 1 %, 10 %, 100 %): for each stage a
//!   child process lists the folder and another runs `pretrain` to its
//!   first step (`train.max_steps = 1`, the default CPU encoder at 32 px);
//!   each prints its wall time and peak RSS (VmHWM).
//! - `--photos P`: an ImageNet-like folder of P photos of about 500×375
//!   (byol-fixtures: progressive, CMYK and greyscale JPEGs among them, one
//!   EXIF-rotated, one truncated, and a `val/` split), and a child running
//!   ResNet-18 at 224 px for `--steps` steps with the kNN monitor and the
//!   online linear classifier, `data.on_corrupt = "skip"`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use byol_data::{FolderDataset, Split};
use byol_fixtures::{PhotoFolder, photo_folder};
use byol_train::RunConfig;
use rayon::prelude::*;

use super::kernels::peak_rss_mib;
use super::record;
use crate::backend;

#[derive(clap::Args, Debug)]
pub struct FolderArgs {
    /// Small files in the largest stage.
    #[arg(long, default_value_t = 1_000_000)]
    files: usize,
    /// Class folders the small files are spread over.
    #[arg(long, default_value_t = 1_000)]
    classes: usize,
    /// Side of the small JPEGs, and of the views of their run.
    #[arg(long, default_value_t = 32)]
    side: usize,
    /// ImageNet-like photos for the ResNet-18 run at 224 px (0: none).
    #[arg(long, default_value_t = 0)]
    photos: usize,
    /// Steps of the ResNet-18 run.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Images per step of the ResNet-18 run.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Where the temporary folder is made [default: the system's].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the folders (their path is printed).
    #[arg(long)]
    keep: bool,
    /// Device, as for `pretrain`.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
    /// Do not append the table to docs/results.md.
    #[arg(long)]
    no_record: bool,
    /// Internal: what the child process measures (`list` or `first-step`
    /// on small files, `photos` on the photo folder).
    #[arg(long, hide = true)]
    probe: Option<String>,
    /// Internal: the folder of `--probe`.
    #[arg(long, hide = true)]
    folder: Option<PathBuf>,
}

/// The small files' name: `c<class>/<index>.jpg`.
fn small_path(root: &Path, classes: usize, i: usize) -> PathBuf {
    root.join(format!("c{:04}", i % classes))
        .join(format!("{i:07}.jpg"))
}

/// Writes small files `from..to` (one JPEG's bytes, `side`², grey noise).
fn write_small(root: &Path, args: &FolderArgs, from: usize, to: usize) -> Result<()> {
    let pixels: Vec<u8> = (0..args.side * args.side)
        .map(|i| (byol_augment::splitmix64(i as u64) >> 56) as u8)
        .collect();
    let bytes = byol_fixtures::jpeg::encode(
        args.side,
        args.side,
        byol_fixtures::jpeg::Pixels::Gray(&pixels),
        &byol_fixtures::jpeg::JpegOptions::default(),
    )?;
    for c in 0..args.classes.min(to) {
        std::fs::create_dir_all(root.join(format!("c{c:04}")))?;
    }
    (from..to).into_par_iter().try_for_each(|i| {
        let path = small_path(root, args.classes, i);
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))
    })
}

/// One child's figures.
#[derive(serde::Deserialize)]
struct Probe {
    seconds: f64,
    peak_rss_mib: f64,
    #[serde(default)]
    images: usize,
    #[serde(default)]
    detail: String,
}

/// Runs this binary as `bench folder --probe what --folder folder`.
fn run_probe(args: &FolderArgs, what: &str, folder: &Path) -> Result<Probe> {
    let exe = std::env::current_exe()?;
    let out = Command::new(&exe)
        .args(["bench", "folder", "--probe", what, "--folder"])
        .arg(folder)
        .args(["--side", &args.side.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--device", &args.device])
        .output()?;
    if !out.status.success() {
        bail!(
            "probe {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rfind(|l| l.starts_with('{'))
        .map(str::to_string)
        .context("the probe printed no figures")?;
    serde_json::from_str(&line).with_context(|| format!("probe output: {line}"))
}

/// The config of a probe's run on `folder`.
fn probe_config(args: &FolderArgs, what: &str, folder: &Path) -> Result<RunConfig> {
    let path = format!(
        "data.path={}",
        toml::Value::String(folder.display().to_string())
    );
    let (recipe, sets): (&str, Vec<String>) = if what == "photos" {
        let sets = [
            "model.encoder=\"resnet18\"",
            "data.on_corrupt=\"skip\"",
            "train.epochs=1",
            "train.warmup_epochs=0",
            "train.log_every=1",
            "eval.every_epochs=1",
            "eval.knn.k=20",
            "eval.knn.bank_size=200",
            "eval.online_linear=true",
        ];
        let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        sets.push(format!("train.batch_size={}", args.batch));
        sets.push(format!("train.max_steps={}", args.steps));
        sets.push(format!("eval.batch_size={}", args.batch));
        ("configs/imagenet-resnet50.toml", sets)
    } else {
        let sets = vec![
            "data.format=\"folder\"".to_string(),
            format!("augment.size={}", args.side),
            "augment.mean=[0.5, 0.5, 0.5]".into(),
            "augment.std=[0.5, 0.5, 0.5]".into(),
            format!("train.batch_size={SMALL_BATCH}"),
            "train.max_steps=1".into(),
            "eval.monitor=false".into(),
        ];
        ("configs/default.toml", sets)
    };
    let mut sets = sets;
    sets.push(path);
    Ok(RunConfig::load(Some(Path::new(recipe)), &sets)?)
}

/// Child process: lists `--folder`, or runs pretrain on it; prints the
/// wall time and this process's peak RSS as one JSON line.
fn probe(args: &FolderArgs, what: &str) -> Result<()> {
    let folder = args.folder.as_ref().context("--probe needs --folder")?;
    let start = Instant::now();
    let (images, detail) = if what == "list" {
        let listing = FolderDataset::list(folder, Split::Train)?;
        (listing.images, format!("{} classes", listing.classes))
    } else {
        let config = probe_config(args, what, folder)?;
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("run");
        let s = backend::run(
            &args.device,
            super::Pretrain {
                config: &config,
                out: &out,
                progress: false,
            },
        )?;
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
        let detail = format!(
            "steps {}, skipped {}, kNN top-1 random init {} → trained {}, online linear top-1 {} top-5 {}",
            s.steps,
            s.skipped_images,
            pct(s.knn_random_init.map(|k| k.top1)),
            pct(s.knn_trained.map(|k| k.top1)),
            pct(s.online_linear_top1),
            pct(s.online_linear_top5),
        );
        (s.train_images, detail)
    };
    let line = serde_json::json!({
        "seconds": start.elapsed().as_secs_f64(),
        "peak_rss_mib": peak_rss_mib().unwrap_or(f64::NAN),
        "images": images,
        "detail": detail,
    });
    println!("{line}");
    Ok(())
}

/// Images per step of the small files' run.
const SMALL_BATCH: usize = 32;

/// The stages of the small-file folder: 1 %, 10 % and all of `files`,
/// those of at least one batch.
fn stages(files: usize) -> Vec<usize> {
    let mut s: Vec<usize> = [files / 100, files / 10, files]
        .into_iter()
        .filter(|&n| n >= SMALL_BATCH)
        .collect();
    s.dedup();
    s
}

/// `bench folder`.
pub fn bench(args: FolderArgs) -> Result<()> {
    if let Some(what) = args.probe.clone() {
        return probe(&args, &what);
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("byol-bench-folder-")
        .tempdir_in(&parent)
        .with_context(|| format!("making a folder in {}", parent.display()))?;
    let small = tmp.path().join("small");
    let mut table = String::from(
        "| files | write s | list s | list peak RSS MiB | pretrain to first step s | its peak RSS MiB |\n|---|---|---|---|---|---|\n",
    );
    let mut written = 0;
    for n in stages(args.files) {
        eprintln!("writing files {written}..{n} into {} ...", small.display());
        let start = Instant::now();
        write_small(&small, &args, written, n)?;
        let write_s = start.elapsed().as_secs_f64();
        written = n;
        let list = run_probe(&args, "list", &small)?;
        let first = run_probe(&args, "first-step", &small)?;
        if list.images != n || first.images != n {
            bail!(
                "listed {} and trained on {} of {n} files",
                list.images,
                first.images
            );
        }
        table.push_str(&format!(
            "| {n} | {write_s:.1} | {:.2} | {:.0} | {:.1} | {:.0} |\n",
            list.seconds, list.peak_rss_mib, first.seconds, first.peak_rss_mib
        ));
        eprint!("{table}");
    }
    if args.photos > 0 {
        table.push_str(&photos(&args, &tmp.path().join("photos"))?);
    }
    print!("{table}");
    if args.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    if !args.no_record {
        record(
            "Benchmark: large image folders",
            backend::name(&args.device),
            &table,
            &format!(
                "\nSmall files: {side}×{side} greyscale JPEGs (one file's bytes, {classes} class folders), written into a fresh folder, so listed and read from the page cache (warm). Each figure is a child process of its own: `list` is `FolderDataset::list` (names only); `pretrain to first step` is `byol_train::pretrain` with `configs/default.toml` at {side} px, batch {SMALL_BATCH}, `train.max_steps = 1`, kNN off: listing, the header pre-scan of every file, the model, one step and the run folder's files.\n",
                side = args.side,
                classes = args.classes,
            ),
        )?;
    }
    Ok(())
}

/// Writes the photo folder and runs ResNet-18 at 224 px on it; returns
/// the table rows.
fn photos(args: &FolderArgs, root: &Path) -> Result<String> {
    let classes = 10;
    let spec = PhotoFolder {
        classes,
        train_per_class: args.photos.div_ceil(classes).max(6),
        val_per_class: 10,
        distinct: None,
        seed: 26,
    };
    eprintln!(
        "writing {} photos into {} ...",
        spec.classes * spec.train_per_class,
        root.display()
    );
    let start = Instant::now();
    let written = photo_folder(root, &spec)?;
    let write_s = start.elapsed().as_secs_f64();
    let run = run_probe(args, "photos", root)?;
    Ok(format!(
        "\n| ImageNet-like photos (train + val) | mean KB | write s | ResNet-18 224 px, batch {}, {} steps: wall s | peak RSS MiB | figures |\n|---|---|---|---|---|---|\n| {} | {:.0} | {write_s:.1} | {:.1} | {:.0} | {} |\n",
        args.batch,
        args.steps,
        written.files,
        written.bytes as f64 / written.files as f64 / 1000.0,
        run.seconds,
        run.peak_rss_mib,
        run.detail
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_grow_to_the_file_count() {
        assert_eq!(stages(1_000_000), [10_000, 100_000, 1_000_000]);
        assert_eq!(stages(500), [50, 500]);
        assert_eq!(stages(10), [] as [usize; 0]);
    }

    #[test]
    fn small_files_go_round_the_class_folders() {
        let root = Path::new("r");
        assert_eq!(small_path(root, 1000, 1234), root.join("c0234/0001234.jpg"));
    }
}
