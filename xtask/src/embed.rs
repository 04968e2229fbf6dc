//! `cargo xtask embed`: one vector per image, written to .npy,
//! .safetensors or .csv.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use byol_data::Split;
use byol_train::{EmbedSummary, Run, RunConfig, UseOptions};
use clap::ValueEnum;

use crate::backend::{self, Task};

/// The splits `--split` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// The training set.
    Train,
    /// The test (or validation) set.
    Test,
    /// STL-10's unlabelled images.
    Unlabeled,
    /// STL-10's training then unlabelled images.
    TrainUnlabeled,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
            SplitArg::Unlabeled => Split::Unlabeled,
            SplitArg::TrainUnlabeled => Split::TrainUnlabeled,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Run folder whose encoder embeds.
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// Dataset folder (default: the run's `data.path`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which encoder embeds.
    #[arg(long, value_enum, default_value = "online")]
    network: crate::eval::NetworkArg,
    /// Which split to embed, every image of it.
    #[arg(long, value_enum, default_value = "test")]
    split: SplitArg,
    /// Output file: `.npy` (+ `.names.txt` beside it), `.safetensors` or
    /// `.csv`.
    #[arg(long)]
    out: PathBuf,
    /// Override an `eval.*` or `data.*` key of the run's config (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Device, as for `pretrain`.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

struct Embed<'a> {
    run: &'a Run,
    config: &'a RunConfig,
    args: &'a EmbedArgs,
}

impl Task for Embed<'_> {
    type Output = EmbedSummary;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        let loaded = self
            .run
            .load_network::<B::InnerBackend>(self.args.network.into(), &device)?;
        Ok(byol_train::embed(
            self.config,
            &loaded.encoder,
            self.args.split.into(),
            &self.args.out,
            &device,
            UseOptions {
                progress: !self.args.no_progress,
            },
        )?)
    }
}

pub fn run(args: EmbedArgs) -> Result<()> {
    // an unknown extension is refused before the encoder is loaded
    byol_eval::EmbeddingFormat::from_path(&args.out)?;
    let run = Run::open(&args.run)?;
    let config = crate::eval::run_config(&args.run, &args.set, args.data.as_ref())?;
    let summary = backend::run(
        &args.device,
        Embed {
            run: &run,
            config: &config,
            args: &args,
        },
    )
    .with_context(|| format!("embedding with {}", args.run.display()))?;
    println!(
        "{} images × {} values ({:?} split of {}) written to {}",
        summary.rows,
        summary.dim,
        args.split,
        config.data.path.display(),
        summary
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    Ok(())
}
