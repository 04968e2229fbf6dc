//! `cargo xtask bench ...`: benchmarks that print a markdown table and
//! append it to docs/results.md with the command, the machine and the date
//! (`--no-record` to skip). Never timed tests: figures, not assertions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use byol_data::{Dataset, FolderDataset, IdxDataset, OpenOptions, Split, Subset};
use byol_model::Stem;
use byol_train::{EncoderKind, ModelConfig, PretrainOptions, RunConfig};
use clap::{Subcommand, ValueEnum};

use crate::backend::{self, PeersTask, Task};

mod folder;
mod kernels;
mod peers;
mod photos;

use kernels::{StepBenchConfig, StepBenchResult, bench_data, bench_step, peak_rss_mib};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Images/s of one full BYOL step (both views, online with backward,
    /// target, Adam, EMA) on random inputs; `--peer` runs the same step in
    /// PyTorch (bench/torch_byol_step.py) in the same invocation.
    Step(StepArgs),
    /// Images/s of decoding + two views from a PNG folder and from memory,
    /// at 1 and 2 threads, and the loader's peak memory at 10k and 100k
    /// images.
    Data(DataArgs),
    /// Wall time of one epoch of the full Fashion-MNIST with the default
    /// CPU recipe, data loading and augmentation included.
    Epoch(EpochArgs),
    /// Large image folders made at run time: time to list and to the
    /// first training step and peak memory with 1 % / 10 % / 100 % of
    /// `--files` small JPEGs (default 1,000,000), and with `--photos P` a
    /// ResNet-18 run at 224 px on an ImageNet-like folder.
    Folder(folder::FolderArgs),
}

/// Which model settings `bench step` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StepModel {
    /// The default CPU encoder at 28×28×1 with 512 → 128 heads.
    Small,
    /// ResNet-18 with the CIFAR stem at 32×32×3 with 4096 → 256 heads.
    Resnet18Cifar,
    /// ResNet-50 at 224×224×3 with 4096 → 256 heads (the paper's network;
    /// not in `all`).
    Resnet50,
    /// The small encoder and ResNet-18.
    All,
}

#[derive(clap::Args, Debug)]
pub struct StepArgs {
    /// Model setting(s) to time.
    #[arg(long, value_enum, default_value = "all")]
    model: StepModel,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps before.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Run both views as one batch of 2 × batch.
    #[arg(long)]
    concat_views: bool,
    /// Number format of the convolutions and matrix products: f32, or bf16
    /// (mixed precision, as `train.precision`; refused on a backend
    /// without bf16).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: byol_model::Precision,
    /// Also time PyTorch on the same step (needs a Python with torch and
    /// torchvision: `--python`, else $BYOL_PYTHON, else `python3`).
    #[arg(long)]
    peer: bool,
    /// Python interpreter for `--peer`.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Device, as for `pretrain` (`--peer` uses `cuda` when this is a GPU).
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
    /// Data-parallel peers, one per device (`cpu,cpu`, `cuda:0,cuda:1`):
    /// times the peers' step on shards of the global `--batch` and the
    /// all-reduce's share of it (replaces --device; no `--peer`).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["device", "peer"])]
    devices: Vec<String>,
    /// With --devices: BatchNorm statistics over the whole global batch
    /// (`train.sync_batchnorm`).
    #[arg(long, requires = "devices")]
    sync_batchnorm: bool,
    /// Do not append the table to docs/results.md.
    #[arg(long)]
    no_record: bool,
    /// Also write the figures as JSON lines to this file (for scripts).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// IDX folder the images come from (its train split).
    #[arg(long, default_value = "../shared/data/fashion-mnist")]
    data: PathBuf,
    /// Side of the views in pixels. 28: the Fashion-MNIST bench (a PNG
    /// folder and memory, and the loader's memory at 10k and 100k files).
    /// Any other side: JPEG photos of ImageNet size made into the views of
    /// configs/imagenet-resnet50.toml at that side, at 1 and 2 threads.
    #[arg(long, default_value_t = 28)]
    size: usize,
    /// Images per batch [default: 256 at 28 px, else 64].
    #[arg(long)]
    batch: Option<usize>,
    /// Batches timed per setting [default: 20 at 28 px, else 12].
    #[arg(long)]
    batches: Option<usize>,
    /// Photos written for a side other than 28.
    #[arg(long, default_value_t = 300)]
    photos: usize,
    /// With a side other than 28: also time PIL + torchvision on the same
    /// files (bench/torch_data.py, needs torch and torchvision: `--python`,
    /// else $BYOL_PYTHON, else `python3`).
    #[arg(long)]
    peer: bool,
    /// Python interpreter for `--peer`.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Do not append the table to docs/results.md.
    #[arg(long)]
    no_record: bool,
    /// Internal: run the loader over the first N images of `--folder` and
    /// print this process's peak memory.
    #[arg(long, hide = true)]
    probe_memory: Option<usize>,
    /// Internal: batches the probe runs [default: one epoch].
    #[arg(long, hide = true)]
    probe_batches: Option<usize>,
    /// Internal: the image folder of `--probe-memory`.
    #[arg(long, hide = true)]
    folder: Option<PathBuf>,
}

impl DataArgs {
    /// Whether this is the 28-px Fashion-MNIST bench.
    fn fashion(&self) -> bool {
        self.size == 28
    }

    fn batch(&self) -> usize {
        self.batch.unwrap_or(if self.fashion() { 256 } else { 64 })
    }

    fn batches(&self) -> usize {
        self.batches.unwrap_or(if self.fashion() { 20 } else { 12 })
    }
}

#[derive(clap::Args, Debug)]
pub struct EpochArgs {
    /// Full Fashion-MNIST IDX folder.
    #[arg(long, default_value = "../shared/data/fashion-mnist")]
    data: PathBuf,
    /// Run config (the default CPU recipe).
    #[arg(long, default_value = "configs/default.toml")]
    config: PathBuf,
    /// Override a config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Device, as for `pretrain`.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
    /// Do not append the table to docs/results.md.
    #[arg(long)]
    no_record: bool,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Step(args) => step(args),
        BenchCommand::Data(args) => data(args),
        BenchCommand::Epoch(args) => epoch(args),
        BenchCommand::Folder(args) => folder::bench(args),
    }
}

/// Appends a section to docs/results.md: title, command, machine, backend,
/// date and the table.
fn record(title: &str, backend: &str, table: &str, notes: &str) -> Result<()> {
    let path = Path::new("docs/results.md");
    let command: Vec<String> = std::env::args().collect();
    let command = format!(
        "cargo xtask {}",
        command
            .iter()
            .skip(1)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let text = format!(
        "\n## {title} ({date})\n\n- Command: `{command}`\n- Machine: {machine}\n- Backend: {backend}, {threads} rayon threads\n- Date: {date}\n\n{table}\n{notes}",
        date = today(),
        machine = machine(),
        threads = rayon::current_num_threads(),
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("appending to {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("appending to {}", path.display()))?;
    eprintln!("appended to {}", path.display());
    Ok(())
}

/// CPU model and core count, from /proc/cpuinfo where it exists.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores, {}", std::env::consts::OS)
}

/// Today's UTC date, YYYY-MM-DD (civil-from-days, Howard Hinnant).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// `f32` or `bf16`, as `train.precision` spells them.
fn parse_precision(s: &str) -> Result<byol_model::Precision, String> {
    match s {
        "f32" => Ok(byol_model::Precision::F32),
        "bf16" => Ok(byol_model::Precision::Bf16),
        other => Err(format!("`{other}`: expected f32 or bf16")),
    }
}

fn step_configs(args: &StepArgs) -> Vec<StepBenchConfig> {
    let small = StepBenchConfig {
        name: "small 28x28x1".into(),
        model: ModelConfig::default(),
        channels: 1,
        size: 28,
        batch_size: args.batch,
        warmup: args.warmup,
        steps: args.steps,
        concat_views: args.concat_views,
        precision: args.precision,
        sync_batchnorm: args.sync_batchnorm,
    };
    let r18 = StepBenchConfig {
        name: "resnet18-cifar 32x32x3".into(),
        model: ModelConfig {
            encoder: EncoderKind::Resnet18,
            stem: Stem::Cifar,
            projector_hidden: 4096,
            projection_dim: 256,
            predictor_hidden: 4096,
            ..ModelConfig::default()
        },
        channels: 3,
        size: 32,
        ..small.clone()
    };
    let r50 = StepBenchConfig {
        name: "resnet50 224x224x3".into(),
        model: ModelConfig {
            encoder: EncoderKind::Resnet50,
            stem: Stem::Imagenet,
            ..r18.model.clone()
        },
        size: 224,
        ..r18.clone()
    };
    match args.model {
        StepModel::Small => vec![small],
        StepModel::Resnet18Cifar => vec![r18],
        StepModel::Resnet50 => vec![r50],
        StepModel::All => vec![small, r18],
    }
}

struct Steps(Vec<StepBenchConfig>);

impl Task for Steps {
    type Output = Vec<StepBenchResult>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.0.iter().map(|c| bench_step::<B>(c, &device)).collect()
    }
}

/// One PyTorch figure parsed from the peer script's JSON line.
#[derive(serde::Deserialize)]
struct Peer {
    name: String,
    images_per_sec: f64,
    peak_rss_mib: f64,
    torch: String,
}

/// The Python of a peer: `explicit`, else $BYOL_PYTHON, else `python3`.
fn peer_python(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("BYOL_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn run_peer(args: &StepArgs, threads: usize) -> Result<Vec<Peer>> {
    let python = peer_python(args.python.as_deref());
    let model = match args.model {
        StepModel::Small => "small",
        StepModel::Resnet18Cifar => "resnet18-cifar",
        StepModel::Resnet50 => "resnet50-224",
        StepModel::All => "all",
    };
    let device = if args.device.starts_with("cuda") {
        args.device.as_str()
    } else {
        "cpu"
    };
    let out = Command::new(&python)
        .arg("bench/torch_byol_step.py")
        .args(["--model", model, "--device", device])
        .args(["--batch", &args.batch.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--warmup", &args.warmup.to_string()])
        .args(["--threads", &threads.to_string()])
        .output()
        .with_context(|| format!("running {} bench/torch_byol_step.py", python.display()))?;
    if !out.status.success() {
        bail!(
            "the PyTorch peer failed ({}; is torch installed for {}?):\n{}",
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

struct PeerSteps(Vec<StepBenchConfig>);

impl PeersTask for PeerSteps {
    type Output = Vec<peers::PeersBenchResult>;
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output> {
        self.0
            .iter()
            .map(|c| peers::bench_step_peers::<B>(c, &devices))
            .collect()
    }
}

/// `bench step --devices`: the data-parallel step.
fn step_peers(args: &StepArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    let results = backend::run_peers(&args.devices, PeerSteps(step_configs(args)))?;
    let mut table = String::from(
        "| model | peers | global batch | steps | img/s | ms/step | all-reduce ms/step | all-reduce share |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | {:.1}% |\n",
            r.config.name,
            r.peers,
            r.config.batch_size,
            r.config.steps,
            r.images_per_sec,
            r.ms_per_step,
            r.all_reduce_ms,
            100.0 * r.all_reduce_ms / r.ms_per_step,
        ));
    }
    let devices = args.devices.join(",");
    println!(
        "data-parallel BYOL step, backend {}, devices {devices}, {threads} rayon threads (shared by the peers), BatchNorm {}",
        backend::name(&args.devices[0]),
        if args.sync_batchnorm {
            "synchronised"
        } else {
            "per peer"
        },
    );
    print!("{table}");
    if !args.no_record {
        let notes = if args.sync_batchnorm {
            "\nEach peer a thread with its own replica, on its shard of the global batch, \
             BatchNorm synchronised (its all-reduces inside the step, not in the share); \
             the all-reduce time is rank 0's, waiting for the slowest peer included.\n"
        } else {
            "\nEach peer a thread with its own replica, on its shard of the global batch; \
             the all-reduce time is rank 0's, waiting for the slowest peer included.\n"
        };
        record(
            "Benchmark: data-parallel BYOL step",
            backend::name(&args.devices[0]),
            &table,
            notes,
        )?;
    }
    Ok(())
}

fn step(args: StepArgs) -> Result<()> {
    if !args.devices.is_empty() {
        return step_peers(&args);
    }
    let threads = rayon::current_num_threads();
    let results = backend::run(&args.device, Steps(step_configs(&args)))?;
    if let Some(path) = &args.json {
        let lines: Vec<String> = results
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        std::fs::write(path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let peers = if args.peer {
        run_peer(&args, threads)?
    } else {
        Vec::new()
    };
    let mut table = String::from(
        "| model | batch | steps | byol-rs img/s | ms/step | peak RSS MiB | PyTorch img/s | PyTorch RSS MiB | ours / PyTorch |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        let peer = peers.iter().find(|p| p.name == r.config.name);
        table.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            r.config.name,
            r.config.batch_size,
            r.config.steps,
            r.images_per_sec,
            r.ms_per_step,
            r.peak_rss_mib
                .map_or_else(|| "n/a".to_string(), |m| format!("{m:.0}")),
            peer.map_or("—".into(), |p| format!("{:.1}", p.images_per_sec)),
            peer.map_or("—".into(), |p| format!("{:.0}", p.peak_rss_mib)),
            peer.map_or("—".into(), |p| format!(
                "{:.2}",
                r.images_per_sec / p.images_per_sec
            )),
        ));
    }
    println!(
        "BYOL step, backend {}, device {}, {threads} rayon threads, {}{}",
        backend::name(&args.device),
        args.device,
        args.precision,
        if args.concat_views {
            ", views concatenated"
        } else {
            ""
        }
    );
    print!("{table}");
    if !args.no_record {
        let notes = match peers.first() {
            Some(p) => format!(
                "\nPeer: `bench/torch_byol_step.py`, torch {}, {threads} threads, same model, step, batch and input size. Peak RSS is the whole process's, cumulative over the models timed in one invocation.\n",
                p.torch
            ),
            None => "\nPeak RSS is the whole process's, cumulative over the models timed in one invocation.\n".into(),
        };
        record(
            "Benchmark: BYOL step",
            backend::name(&args.device),
            &table,
            &notes,
        )?;
    }
    Ok(())
}

/// Writes the first `n` images of `source` as PNG files into `dir`, in 100
/// subfolders (a flat folder of 100,000 files is slow on some file systems).
fn write_pngs(source: &IdxDataset, n: usize, dir: &Path) -> Result<()> {
    for i in 0..n {
        let img = source.images.image(i % source.len());
        let sub = dir.join(format!("{:02}", i % 100));
        std::fs::create_dir_all(&sub)?;
        let buf =
            image::GrayImage::from_raw(img.width as u32, img.height as u32, img.pixels.to_vec())
                .context("image buffer")?;
        buf.save(sub.join(format!("{i:06}.png")))
            .with_context(|| format!("writing PNG {i}"))?;
    }
    Ok(())
}

/// The augmentation of the bench at `size`: the default CPU recipe's at 28
/// px (normalised with 0.5 / 0.5 when `rgb`), else the ImageNet recipe's at
/// `size`.
fn bench_augment(size: usize, rgb: bool) -> Result<byol_augment::AugmentConfig> {
    if size == 28 {
        let augment = RunConfig::load(Some(Path::new("configs/default.toml")), &[])?.augment;
        return Ok(if rgb {
            byol_augment::AugmentConfig {
                mean: vec![0.5],
                std: vec![0.5],
                ..augment
            }
        } else {
            augment
        });
    }
    photos::augment(size)
}

/// Child process: the loader (2 batches prefetched) over the first `n`
/// images of `--folder` for `--probe-batches` batches (one epoch by
/// default); prints the images seen and this process's peak memory.
fn probe_memory(args: &DataArgs, n: usize) -> Result<()> {
    let folder = args
        .folder
        .as_ref()
        .context("--probe-memory needs --folder")?;
    let ds = FolderDataset::open(folder, Split::Train, &OpenOptions::default())?;
    let ds = Subset::first(ds, n);
    let aug = bench_augment(args.size, true)?;
    let batch = args.batch();
    let steps_per_epoch = ds.len() / batch;
    let plan = byol_train::loader::Plan {
        seed: 0,
        batch_size: batch,
        steps_per_epoch,
        total_steps: args.probe_batches.unwrap_or(steps_per_epoch),
        start_step: 0,
    };
    let seen = byol_train::loader::with_loader(
        &ds,
        plan,
        &aug,
        byol_data::OnCorrupt::Fail,
        PROBE_PREFETCH,
        |l| -> Result<usize> {
            let mut seen = 0;
            while let Some(b) = l.next_batch()? {
                seen += b.len;
            }
            Ok(seen)
        },
    )?;
    println!(
        "{{\"images\": {seen}, \"peak_rss_mib\": {}}}",
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Batches the memory probe's loader prefetches.
const PROBE_PREFETCH: usize = 2;

/// Runs this binary's memory probe over `n` images of `folder` and returns
/// its peak RSS in MiB.
fn run_probe(folder: &Path, n: usize, args: &DataArgs, batches: Option<usize>) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(&exe);
    cmd.args(["bench", "data", "--probe-memory", &n.to_string()])
        .arg("--folder")
        .arg(folder)
        .args(["--batch", &args.batch().to_string()])
        .args(["--size", &args.size.to_string()]);
    if let Some(b) = batches {
        cmd.args(["--probe-batches", &b.to_string()]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "memory probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN))
}

fn data(args: DataArgs) -> Result<()> {
    if let Some(n) = args.probe_memory {
        return probe_memory(&args, n);
    }
    if !args.fashion() {
        return photos::bench(&args);
    }
    if args.peer {
        bail!("--peer times the JPEG bench: give a --size other than 28 (e.g. --size 224)");
    }
    let augment = bench_augment(28, false)?;
    let (batch, batches) = (args.batch(), args.batches());
    let source = IdxDataset::load_dir(&args.data, Split::Train)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let tmp = tempfile::tempdir()?;
    let folder = tmp.path().join("pngs");
    eprintln!("writing 100,000 PNG files to {} ...", folder.display());
    write_pngs(&source, 100_000, &folder)?;
    let rgb_aug = bench_augment(28, true)?;
    let pngs = Subset::first(
        FolderDataset::open(&folder, Split::Train, &OpenOptions::default())?,
        10_000,
    );
    let mut table = String::from(
        "| source | threads | batch | images | img/s (decode + two views) |\n|---|---|---|---|---|\n",
    );
    let sources: [(&str, &dyn Dataset, &byol_augment::AugmentConfig); 2] = [
        ("PNG folder (28×28 gray → RGB)", &pngs, &rgb_aug),
        ("in memory (IDX)", &source, &augment),
    ];
    for (name, ds, aug) in sources {
        for threads in [1, 2] {
            let ips = bench_data(ds, aug, batch, batches, threads)?;
            table.push_str(&format!(
                "| {name} | {threads} | {batch} | {} | {ips:.0} |\n",
                batch * batches
            ));
        }
    }
    table.push_str("\n| loader over a PNG folder of | peak RSS of the process MiB |\n|---|---|\n");
    for n in [10_000usize, 100_000] {
        let rss = run_probe(&folder, n, &args, None)?;
        table.push_str(&format!("| {n} images | {rss:.0} |\n"));
    }
    print!("{table}");
    if !args.no_record {
        record(
            "Benchmark: data pipeline",
            "none (data loading only)",
            &table,
            "\nimg/s: decoding the batch's images (rayon) and making both views, the loader's whole work per batch. Memory: a child process runs the loader (2 batches prefetched) over one epoch of the first N files of a folder of 28×28 PNGs written from Fashion-MNIST; the folder dataset keeps only a compact list of relative paths.\n",
        )?;
    }
    Ok(())
}

/// A pretraining run as a [`Task`], for the benchmarks that time or
/// measure one (`bench epoch`, `bench folder`).
pub(crate) struct Pretrain<'a> {
    pub(crate) config: &'a RunConfig,
    pub(crate) out: &'a Path,
    pub(crate) progress: bool,
}

impl Task for Pretrain<'_> {
    type Output = byol_train::RunSummary;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        Ok(byol_train::pretrain::<B>(
            self.config,
            self.out,
            &device,
            PretrainOptions {
                progress: self.progress,
                ..Default::default()
            },
        )?)
    }
}

fn epoch(args: EpochArgs) -> Result<()> {
    crate::data_exists(&args.data)?;
    let mut overrides = args.set.clone();
    overrides.push(format!(
        "data.path={}",
        toml::Value::String(args.data.display().to_string())
    ));
    overrides.extend(["train.epochs=1".into(), "eval.monitor=false".into()]);
    let config = RunConfig::load(Some(&args.config), &overrides)?;
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("run");
    let summary = backend::run(
        &args.device,
        Pretrain {
            config: &config,
            out: &out,
            progress: true,
        },
    )?;
    let epoch: serde_json::Value = std::fs::read_to_string(out.join("metrics.jsonl"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["kind"] == "epoch")
        .context("no epoch record in metrics.jsonl")?;
    let table = format!(
        "| images | batch | epoch wall time s | img/s | data wait |\n|---|---|---|---|---|\n| {} | {} | {:.1} | {:.0} | {:.1}% |\n",
        summary.train_images,
        config.train.batch_size,
        epoch["seconds"].as_f64().unwrap_or(f64::NAN),
        epoch["images_per_sec"].as_f64().unwrap_or(f64::NAN),
        100.0 * epoch["data_wait_fraction"].as_f64().unwrap_or(f64::NAN),
    );
    print!("{table}");
    if !args.no_record {
        record(
            "Benchmark: one Fashion-MNIST epoch",
            backend::name(&args.device),
            &table,
            "\nThe default CPU recipe (configs/default.toml) over the full 60,000 training images, one epoch, data loading and augmentation included (the loader prefetches 2 batches); kNN off. Data wait: the share of the epoch the step loop spent blocked on the loader.\n",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        bench: BenchCommand,
    }

    fn data_args(args: &[&str]) -> DataArgs {
        let argv = ["xtask", "data"].iter().chain(args);
        match Cli::try_parse_from(argv)
            .expect("the arguments parse")
            .bench
        {
            BenchCommand::Data(a) => a,
            other => panic!("not bench data: {other:?}"),
        }
    }

    #[test]
    fn bench_data_defaults_to_the_28_px_bench_and_takes_a_size_and_a_peer() {
        let plain = data_args(&[]);
        assert!(plain.fashion() && !plain.peer);
        assert_eq!((plain.size, plain.batch(), plain.batches()), (28, 256, 20));
        let photos = data_args(&["--size", "224", "--peer", "--photos", "50"]);
        assert!(!photos.fashion() && photos.peer);
        assert_eq!(
            (photos.size, photos.batch(), photos.batches()),
            (224, 64, 12)
        );
        assert_eq!(photos.photos, 50);
        let set = data_args(&["--size", "96", "--batch", "32", "--batches", "3"]);
        assert_eq!((set.batch(), set.batches()), (32, 3));
        assert!(Cli::try_parse_from(["xtask", "data", "--size", "big"]).is_err());
    }
}
