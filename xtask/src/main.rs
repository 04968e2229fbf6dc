//! `cargo xtask`: the byol-rs command line. Thin: everything real lives in
//! the library crates.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod backend;
mod bench;

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
    /// Benchmarks (figures go in docs/results.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(clap::Args, Debug)]
struct PretrainArgs {
    /// TOML run config.
    #[arg(long, default_value = "configs/default.toml")]
    config: PathBuf,
    /// Override a config key, e.g. `--set train.epochs=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Device: `cpu` for the CPU backends, `cuda` or `cuda:N` with the cuda
    /// feature.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
    /// Run folder (default: runs/<config name>-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Pretrain(args) => pretrain(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

struct Pretrain<'a> {
    config: &'a byol_train::RunConfig,
    out: &'a std::path::Path,
    progress: bool,
}

impl backend::Task for Pretrain<'_> {
    type Output = byol_train::RunSummary;
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
    ) -> Result<Self::Output> {
        Ok(byol_train::pretrain::<B>(
            self.config,
            self.out,
            &device,
            self.progress,
        )?)
    }
}

fn pretrain(args: PretrainArgs) -> Result<()> {
    if !args.config.is_file() {
        bail!("config file {} not found", args.config.display());
    }
    let config = byol_train::RunConfig::load(Some(&args.config), &args.set)?;
    let out = match args.out {
        Some(out) => out,
        None => {
            let stem = args
                .config
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("run");
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from("runs").join(format!("{stem}-{secs}"))
        }
    };
    let summary = backend::run(
        &args.device,
        Pretrain {
            config: &config,
            out: &out,
            progress: !args.no_progress,
        },
    )
    .with_context(|| format!("pretraining with {}", args.config.display()))?;
    let pct = |x: f64| 100.0 * x;
    println!("kNN top-1 on the test split (k = {}):", config.eval.knn.k);
    println!(
        "  raw pixels          {:6.2}%",
        pct(summary.knn_raw_pixels.top1)
    );
    println!(
        "  random-init encoder {:6.2}%",
        pct(summary.knn_random_init.top1)
    );
    println!(
        "  BYOL encoder        {:6.2}%",
        pct(summary.knn_trained.top1)
    );
    println!(
        "{} steps in {:.0}s, final loss {:.4}; run folder: {}",
        summary.steps,
        summary.seconds,
        summary.final_loss,
        out.display()
    );
    Ok(())
}
