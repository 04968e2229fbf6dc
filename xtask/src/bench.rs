//! `cargo xtask bench ...`: benchmarks that print a table. Their figures go
//! in docs/results.md with the command, the machine and the date.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use byol_model::Stem;
use byol_train::bench::{StepBenchConfig, StepBenchResult, bench_step};
use byol_train::{EncoderKind, ModelConfig};
use clap::{Subcommand, ValueEnum};

use crate::backend::{self, Task};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Images/s of one full BYOL step (both views, online with backward,
    /// target, Adam, EMA) on random inputs.
    Step(StepArgs),
}

/// Which model settings `bench step` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StepModel {
    /// The default CPU encoder at 28×28×1 with 512 → 128 heads.
    Small,
    /// ResNet-18 with the CIFAR stem at 32×32×3 with 4096 → 256 heads.
    Resnet18Cifar,
    /// Both.
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
    /// Device, as for `pretrain`.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Step(args) => step(args),
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
    match args.model {
        StepModel::Small => vec![small],
        StepModel::Resnet18Cifar => vec![r18],
        StepModel::All => vec![small, r18],
    }
}

struct Steps(Vec<StepBenchConfig>);

impl Task for Steps {
    type Output = Vec<StepBenchResult>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        self.0
            .iter()
            .map(|c| Ok(bench_step::<B>(c, &device)?))
            .collect()
    }
}

fn step(args: StepArgs) -> Result<()> {
    let results = backend::run(&args.device, Steps(step_configs(&args)))?;
    let threads = rayon::current_num_threads();
    println!(
        "BYOL step, backend {}, device {}, {threads} rayon threads",
        backend::NAME,
        args.device
    );
    println!("| model | batch | steps | img/s | ms/step | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {} |",
            r.config.name,
            r.config.batch_size,
            r.config.steps,
            r.images_per_sec,
            r.ms_per_step,
            r.peak_rss_mib
                .map_or_else(|| "n/a".to_string(), |m| format!("{m:.0}"))
        );
    }
    Ok(())
}
