//! `cargo xtask eval`: kNN and linear-probe accuracy of a run's encoder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use byol_train::{EvalReport, Network, Run, RunConfig, UseOptions};
use clap::ValueEnum;

use crate::backend::{self, Task};

/// The encoders `--network` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// The online encoder, `RUN_DIR/encoder.mpk` (the run must have finished).
    Online,
    /// The target (moving-average) encoder of the run's newest checkpoint.
    Target,
}

impl From<NetworkArg> for Network {
    fn from(n: NetworkArg) -> Self {
        match n {
            NetworkArg::Online => Network::Online,
            NetworkArg::Target => Network::Target,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run folder (from `cargo xtask pretrain --out`).
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// Which encoder to measure; `target` writes `eval-target.json`.
    #[arg(long, value_enum, default_value = "online")]
    network: NetworkArg,
    /// Evaluate on another dataset folder than the run's `data.path`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Override an `eval.*` or `data.*` key of the run's config, e.g.
    /// `--set eval.probe.optimizer=lbfgs` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Device, as for `pretrain`.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
    /// Hide the progress bars.
    #[arg(long)]
    no_progress: bool,
}

/// The run's config with `--set` and `--data` applied; only `eval.*` and
/// `data.*` may change (the encoder is the run's).
pub fn run_config(
    run_dir: &std::path::Path,
    set: &[String],
    data: Option<&PathBuf>,
) -> Result<RunConfig> {
    let mut overrides = Vec::new();
    for item in set {
        let key = item
            .split_once('=')
            .map_or(item.as_str(), |(k, _)| k)
            .trim();
        if !(key.starts_with("eval.") || key.starts_with("data.")) {
            bail!(
                "--set {item}: only eval.* and data.* keys can change here (the encoder is the run's)"
            );
        }
        overrides.push(item.clone());
    }
    if let Some(data) = data {
        crate::data_exists(data)?;
        overrides.push(format!(
            "data.path={}",
            toml::Value::String(data.display().to_string())
        ));
    }
    let path = run_dir.join("config.toml");
    Ok(RunConfig::load(Some(&path), &overrides)?)
}

struct Evaluate<'a> {
    run: &'a Run,
    network: Network,
    config: &'a RunConfig,
    options: UseOptions,
}

impl Task for Evaluate<'_> {
    type Output = EvalReport;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        Ok(byol_train::evaluate_run::<B>(
            self.run,
            self.network,
            self.config,
            &device,
            self.options,
        )?)
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    let run = Run::open(&args.run)?;
    let config = run_config(&args.run, &args.set, args.data.as_ref())?;
    let report = backend::run(
        &args.device,
        Evaluate {
            run: &run,
            network: args.network.into(),
            config: &config,
            options: UseOptions {
                progress: !args.no_progress,
            },
        },
    )
    .with_context(|| format!("evaluating {}", args.run.display()))?;
    let weights = match (&report.weights, report.step) {
        (Some(path), Some(step)) => format!("{} (step {step})", path.display()),
        (Some(path), None) => path.display().to_string(),
        (None, _) => String::new(),
    };
    println!("{:?} encoder: {weights}", report.network);
    println!(
        "{}: {}-d features, {} training images, {} test images ({})",
        args.run.display(),
        report.feature_dim,
        report.train_images,
        report.test_images,
        report.data.display()
    );
    let knn = format!(
        "kNN (k = {}, T = {}, bank {})",
        report.knn_config.k, report.knn_config.temperature, report.knn_bank_images
    );
    println!(
        "  {knn:<32} top-1 {:6.2}%  top-5 {:6.2}%",
        100.0 * report.knn.top1,
        100.0 * report.knn.top5
    );
    match report.knn_raw_pixels {
        Some(raw) => println!(
            "  {:<32} top-1 {:6.2}%  top-5 {:6.2}%",
            "  the same on raw pixels",
            100.0 * raw.top1,
            100.0 * raw.top5
        ),
        None => println!(
            "  {:<32} n/a (images too large)",
            "  the same on raw pixels"
        ),
    }
    let p = &report.probe_config;
    let name = format!("linear probe ({:?}, {} epochs)", p.optimizer, p.epochs).to_lowercase();
    println!(
        "  {name:<32} top-1 {:6.2}%  top-5 {:6.2}%  (train top-1 {:.2}%)",
        100.0 * report.probe.top1,
        100.0 * report.probe.top5,
        100.0 * report.probe.train_top1
    );
    println!(
        "{:.0}s; written to {}",
        report.seconds,
        args.run
            .join(byol_train::eval_file(report.network))
            .display()
    );
    Ok(())
}
