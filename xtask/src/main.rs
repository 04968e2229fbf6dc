//! `cargo xtask`: the byol-rs command line. Thin: everything real lives in
//! the library crates.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc keeps freed pages for reuse, so the megabyte-sized im2col and
/// product buffers that every convolution allocates on every step are
/// recycled; glibc's malloc hands buffers that large back to the kernel and
/// gets them again as fresh zeroed pages (page faults, `clear_page`). What
/// it bought: docs/results-log.md, "Optimising the step".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backend;
mod bench;
mod check_step;
mod dry_run;
mod embed;
mod eval;
mod export;
mod plot;

/// Self-supervised pretraining of image encoders with BYOL.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pretrain an encoder with BYOL, then report kNN accuracy.
    Pretrain(PretrainArgs),
    /// kNN and linear-probe accuracy of a run's encoder; writes RUN_DIR/eval.json.
    Eval(eval::EvalArgs),
    /// One vector per image of a split, to .npy, .safetensors or .csv.
    Embed(embed::EmbedArgs),
    /// The encoder as safetensors with torchvision's keys, for PyTorch.
    Export(export::ExportArgs),
    /// PNG charts of a run's metrics (loss, kNN, τ, learning rate, z-std, rank) and a dashboard.
    Plot(plot::PlotArgs),
    /// A PNG grid of images and their augmented views.
    Preview(plot::PreviewArgs),
    /// A PNG grid of test images and their nearest training images, under the encoder and raw pixels.
    Neighbours(plot::NeighboursArgs),
    /// One BYOL step on a device and on the CPU from the same weights: loss and gradients compared.
    CheckStep(check_step::CheckStepArgs),
    /// Benchmarks (figures go in docs/results.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(clap::Args, Debug)]
struct PretrainArgs {
    /// TOML run config (default: configs/default.toml, or the run's own
    /// config.toml with --resume).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.epochs=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Dataset folder (`--set data.path=PATH`); its format is detected from
    /// the files, whatever the config file says, unless `--set data.format=...`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Device: `cpu` for the CPU backends, `cuda` or `cuda:N` with the cuda
    /// feature.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
    /// Data-parallel peers, one per device, all of one backend: `cpu,cpu`,
    /// `cuda:0,cuda:1,...`, `wgpu:0,wgpu:1` (`--set train.devices=[...]`;
    /// replaces --device). `train.batch_size` is the global batch.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    devices: Vec<String>,
    /// Machines of a multi-node run (`train.nodes`); every machine runs
    /// `pretrain` with the same config, `--out` and `--coordinator`, and its
    /// own `--node-rank`.
    #[arg(long, env = "BYOL_NODES")]
    nodes: Option<usize>,
    /// This machine's rank, 0 to nodes − 1 (`train.node_rank`); node 0
    /// hosts the orchestrator and writes the run folder.
    #[arg(long, env = "BYOL_NODE_RANK")]
    node_rank: Option<usize>,
    /// `HOST:PORT` of node 0 (`train.coordinator`): the orchestrator on
    /// PORT, the nodes' watch channel on PORT + 1, node r's data on
    /// PORT + 2 + r.
    #[arg(long, env = "BYOL_COORDINATOR")]
    coordinator: Option<String>,
    /// Run folder (default: runs/<config name>-<unix time>).
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its newest valid checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Hide the progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Print the plan (images, steps, memory per step by part, the kNN
    /// monitor and its memory, the device) and exit, without training or
    /// making the run folder; exits non-zero when the run would be refused.
    #[arg(long)]
    dry_run: bool,
}

/// `RUST_LOG` (default `info`), with the chatty dependencies at `warn`
/// unless it names them: cubecl logs each autotune at info (one line per
/// kernel shape), burn-collective and burn-communication every connection
/// and tensor download of a multi-node all-reduce.
fn log_filter(rust_log: Option<String>) -> EnvFilter {
    let given = rust_log.filter(|s| !s.trim().is_empty());
    let mut spec = given.clone().unwrap_or_else(|| "info".to_string());
    for quiet in [
        "cubecl",
        "cubecl_runtime",
        "burn_collective",
        "burn_communication",
    ] {
        if !given.as_deref().is_some_and(|g| g.contains(quiet)) {
            spec.push_str(&format!(",{quiet}=warn"));
        }
    }
    EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok()))
        .with_target(false)
        // colour codes only for a terminal (a log piped to a file or CI
        // reads as plain text), and not there either under NO_COLOR
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Pretrain(args) => pretrain(args),
        Command::Eval(args) => eval::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Export(args) => export::run(args),
        Command::Plot(args) => plot::plot(args),
        Command::Preview(args) => plot::preview(args),
        Command::Neighbours(args) => plot::neighbours(args),
        Command::CheckStep(args) => check_step::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

struct Pretrain<'a> {
    config: &'a byol_train::RunConfig,
    out: &'a std::path::Path,
    options: byol_train::PretrainOptions,
}

impl backend::PeersTask for Pretrain<'_> {
    type Output = byol_train::RunSummary;
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        devices: Vec<B::Device>,
    ) -> Result<Self::Output> {
        Ok(byol_train::pretrain_on::<B>(
            self.config,
            self.out,
            &devices,
            self.options,
        )?)
    }
}

/// The `--set` overrides of the data-parallel and multi-node flags, after
/// the user's own (a flag wins over `--set`).
fn parallel_overrides(args: &PretrainArgs) -> Vec<String> {
    let mut set = args.set.clone();
    if !args.devices.is_empty() {
        let list = toml::Value::Array(
            args.devices
                .iter()
                .map(|d| toml::Value::String(d.trim().to_string()))
                .collect(),
        );
        set.push(format!("train.devices={list}"));
    }
    if let Some(n) = args.nodes {
        set.push(format!("train.nodes={n}"));
    }
    if let Some(r) = args.node_rank {
        set.push(format!("train.node_rank={r}"));
    }
    if let Some(c) = &args.coordinator {
        set.push(format!(
            "train.coordinator={}",
            toml::Value::String(c.clone())
        ));
    }
    set
}

/// The devices of a run: `train.devices` when it lists any, else `--device`.
fn run_devices(config: &byol_train::RunConfig, device: &str) -> Vec<String> {
    if config.train.devices.is_empty() {
        vec![device.to_string()]
    } else {
        config.train.devices.clone()
    }
}

/// The exit status of a run stopped by a signal after saving its
/// checkpoint (128 + SIGINT, as shells report Ctrl-C).
const INTERRUPTED_EXIT: i32 = 130;

/// A stop request that Ctrl-C, SIGTERM or SIGQUIT sets: the run finishes
/// its step, saves a checkpoint and exits with [`INTERRUPTED_EXIT`]. A
/// second signal exits at once (the last checkpoint stays intact).
fn stop_on_signals() -> Result<byol_train::StopSignal> {
    let stop = byol_train::StopSignal::default();
    for &signal in signal_hook::consts::TERM_SIGNALS {
        // the shutdown goes first: it sees the flag still unset on the
        // first signal, and set on the second
        signal_hook::flag::register_conditional_shutdown(signal, INTERRUPTED_EXIT, stop.flag())
            .and_then(|_| signal_hook::flag::register(signal, stop.flag()))
            .with_context(|| format!("installing the handler of signal {signal}"))?;
    }
    Ok(stop)
}

/// Fails unless the `--data` path exists, before any format detection
/// could report it as an unknown layout.
fn data_exists(data: &std::path::Path) -> Result<()> {
    if !data
        .try_exists()
        .with_context(|| format!("--data {}", data.display()))?
    {
        bail!("--data {}: no such file or folder", data.display());
    }
    Ok(())
}

/// A run config: `path` (default `configs/default.toml`), then the
/// `--set` overrides, then `--data`. Returns it with the file it came from.
fn load_config(
    path: Option<&PathBuf>,
    set: &[String],
    data: Option<&PathBuf>,
) -> Result<(byol_train::RunConfig, PathBuf)> {
    let config_path = path
        .cloned()
        .unwrap_or_else(|| PathBuf::from("configs/default.toml"));
    if !config_path.is_file() {
        bail!("config file {} not found", config_path.display());
    }
    let mut overrides = Vec::with_capacity(set.len() + 2);
    if let Some(data) = data {
        data_exists(data)?;
        overrides.push(format!(
            "data.path={}",
            toml::Value::String(data.display().to_string())
        ));
        // another folder: the config file's format (the default run's
        // "idx") says nothing about it, so detect it; a `--set
        // data.format=...` below still wins
        overrides.push("data.format=auto".to_string());
    }
    overrides.extend_from_slice(set);
    let config = byol_train::RunConfig::load(Some(&config_path), &overrides)?;
    Ok((config, config_path))
}

fn pretrain(args: PretrainArgs) -> Result<()> {
    let set = parallel_overrides(&args);
    let (config, config_path) = load_config(Some(&config_file(&args)), &set, args.data.as_ref())?;
    let devices = run_devices(&config, &args.device);
    let memory = backend::memory(&devices[0])?;
    if args.dry_run {
        return dry_run::run(&config, &config_path, &memory)
            .with_context(|| format!("planning a run of {}", config_path.display()));
    }
    let t = &config.train;
    if t.nodes > 1 && args.out.is_none() && args.resume.is_none() {
        bail!(
            "a run on {} machines (train.nodes) needs its folder named: pass --out DIR, the \
             same on every node (node 0 writes it; a shared filesystem lets the others \
             resume from it)",
            t.nodes
        );
    }
    let out = run_folder(&args, &config_path);
    tracing::info!("device {}", memory.description);
    let peers = t.global_peers();
    if peers > 1 {
        tracing::info!(
            "{peers} data-parallel peers ({} machine(s) × {}): {} images each per step",
            t.nodes,
            devices.join(","),
            t.batch_size / peers
        );
    }
    let stop = stop_on_signals()?;
    let result = backend::run_peers(
        &devices,
        Pretrain {
            config: &config,
            out: &out,
            options: byol_train::PretrainOptions {
                progress: !args.no_progress,
                resume: args.resume.is_some(),
                stop,
                memory: memory.limit,
            },
        },
    );
    if let Err(e) = &result
        && let Some(interrupted @ byol_train::TrainError::Interrupted { .. }) = e.downcast_ref()
    {
        eprintln!("{interrupted}");
        std::process::exit(INTERRUPTED_EXIT);
    }
    let summary = result.with_context(|| format!("pretraining with {}", config_path.display()))?;
    if config.train.node_rank > 0 {
        println!(
            "node {} of {}: trained {} steps; node 0 wrote the run folder {}",
            config.train.node_rank,
            config.train.nodes,
            summary.steps,
            out.display()
        );
        return Ok(());
    }
    print_run_summary(&config, &summary, &out);
    plot(&out);
    Ok(())
}

/// The config a `pretrain` reads: `--config`, else the resumed run's own,
/// else the default run's.
fn config_file(args: &PretrainArgs) -> PathBuf {
    match (&args.config, &args.resume) {
        (Some(path), _) => path.clone(),
        (None, Some(run)) => run.join("config.toml"),
        (None, None) => PathBuf::from("configs/default.toml"),
    }
}

/// The run folder: the resumed one, `--out`, else
/// `runs/<config name>-<unix seconds>`.
fn run_folder(args: &PretrainArgs, config_path: &Path) -> PathBuf {
    match (&args.resume, &args.out) {
        (Some(run), _) => run.clone(),
        (None, Some(out)) => out.clone(),
        (None, None) => {
            let stem = config_path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("run");
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from("runs").join(format!("{stem}-{secs}"))
        }
    }
}

/// What a finished run prints: the kNN figures against their baselines,
/// the online classifier's, the steps and where the run folder is.
fn print_run_summary(config: &byol_train::RunConfig, summary: &byol_train::RunSummary, out: &Path) {
    let pct = |x: Option<byol_eval::KnnAccuracy>| {
        x.map_or_else(
            || "   n/a".to_string(),
            |a| format!("{:6.2}%", 100.0 * a.top1),
        )
    };
    if summary.knn_trained.is_some() {
        println!("kNN top-1 on the test split (k = {}):", config.eval.knn.k);
    } else if !config.eval.monitor {
        println!("kNN: off (eval.monitor = false)");
    } else {
        println!("kNN: n/a (the data has no labelled train and test splits)");
    }
    println!("  raw pixels           {}", pct(summary.knn_raw_pixels));
    println!("  random-init encoder  {}", pct(summary.knn_random_init));
    println!("  BYOL encoder         {}", pct(summary.knn_trained));
    if let (Some(top1), Some(top5)) = (summary.online_linear_top1, summary.online_linear_top5) {
        println!(
            "online linear classifier on the test split: top-1 {:.2}%  top-5 {:.2}%",
            100.0 * top1,
            100.0 * top5
        );
    }
    if summary.skipped_images > 0 {
        println!("{} unreadable images skipped", summary.skipped_images);
    }
    println!(
        "{} steps in {:.0}s (data wait {:.1}%), final loss {:.4}; run folder: {}",
        summary.steps,
        summary.train_seconds,
        100.0 * summary.data_wait_fraction,
        summary.final_loss,
        out.display()
    );
}

/// The run's charts. The run is finished and saved: a chart that cannot
/// be drawn only warns.
fn plot(out: &Path) {
    match byol_plot::plot_run(out) {
        Ok(files) => println!(
            "charts: {}",
            files
                .first()
                .and_then(|f| f.parent())
                .map_or_else(String::new, |d| d.display().to_string())
        ),
        Err(e) => tracing::warn!("could not plot the run's metrics: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use byol_data::Format;

    #[test]
    fn data_flag_detects_the_format_unless_set_says_otherwise() {
        let default = PathBuf::from("../configs/default.toml");
        let (plain, _) = load_config(Some(&default), &[], None).expect("default config");
        assert_eq!(
            plain.data.format,
            Format::Idx,
            "the default config names its format"
        );

        let tmp = tempfile::tempdir().expect("temp dir");
        let folder = tmp.path().to_path_buf();
        let (with_data, _) = load_config(Some(&default), &[], Some(&folder)).expect("config");
        assert_eq!(with_data.data.format, Format::Auto);
        assert_eq!(with_data.data.path, folder);

        let set = ["data.format=folder".to_string()];
        let (explicit, _) = load_config(Some(&default), &set, Some(&folder)).expect("config");
        assert_eq!(explicit.data.format, Format::Folder);
    }

    #[test]
    fn a_data_path_that_does_not_exist_is_named_before_detection() {
        let default = PathBuf::from("../configs/default.toml");
        let missing = PathBuf::from("/no/such/byol-data");
        let err = load_config(Some(&default), &[], Some(&missing)).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "--data /no/such/byol-data: no such file or folder"
        );
    }
}
