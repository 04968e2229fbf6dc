//! `cargo xtask plot`, `preview` and `neighbours`: PNG pictures of a run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use byol_plot::{NeighboursOptions, NeighboursPicture, PreviewOptions, plot_run, preview_grid};
use byol_train::{Run, RunConfig};

use crate::backend::{self, Task};

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Run folder; the charts and dashboard.png go to RUN_DIR/plots/.
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
}

pub fn plot(args: PlotArgs) -> Result<()> {
    let files = plot_run(&args.run).with_context(|| format!("plotting {}", args.run.display()))?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct PreviewArgs {
    /// TOML run config (default: configs/default.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set augment.view2.solarize_p=1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Dataset folder (same as `--set data.path=PATH`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Images (rows), spread evenly over the pretraining split.
    #[arg(long, default_value_t = 8)]
    n: usize,
    /// Draws of each view per image.
    #[arg(long, default_value_t = 3)]
    draws: usize,
    /// Seed of the augmentations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn preview(args: PreviewArgs) -> Result<()> {
    let (config, config_path) =
        crate::load_config(args.config.as_ref(), &args.set, args.data.as_ref())?;
    let split = config.data.pretrain_split;
    let dataset = byol_train::run::open_split(&config, split, 0).with_context(|| {
        format!(
            "opening the {split:?} split of {}",
            config.data.path.display()
        )
    })?;
    let grid = preview_grid(
        &config,
        &*dataset,
        PreviewOptions {
            rows: args.n,
            draws: args.draws,
            seed: args.seed,
        },
    )
    .with_context(|| format!("augmenting with {}", config_path.display()))?;
    grid.save_png(&args.out)?;
    println!(
        "{} written: {} images of {}, each the original then {} draws of view 1 and of view 2",
        args.out.display(),
        args.n.min(dataset.len()),
        config.data.path.display(),
        args.draws
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct NeighboursArgs {
    /// Run folder whose trained encoder (encoder.mpk) finds the neighbours.
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// Dataset folder with train and test splits (default: the run's
    /// `data.path`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Test images (rows), spread evenly over the test split.
    #[arg(long, default_value_t = 8)]
    n: usize,
    /// Nearest training images shown for each, under the encoder and under
    /// raw pixels.
    #[arg(long, default_value_t = 8)]
    k: usize,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Device, as for `pretrain`.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
}

struct Neighbours<'a> {
    run: &'a Run,
    config: &'a RunConfig,
    options: NeighboursOptions,
}

impl Task for Neighbours<'_> {
    type Output = NeighboursPicture;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        // the inner backend: the encoder in evaluation mode
        Ok(byol_plot::run_neighbours::<B::InnerBackend>(
            self.run,
            self.config,
            self.options,
            &device,
        )?)
    }
}

pub fn neighbours(args: NeighboursArgs) -> Result<()> {
    let run = Run::open(&args.run)?;
    // another dataset's format is detected from its files, as pretrain does
    let detect: &[String] = match args.data {
        Some(_) => &["data.format=auto".to_string()],
        None => &[],
    };
    let config = crate::eval::run_config(&args.run, detect, args.data.as_ref())?;
    let picture = backend::run(
        &args.device,
        Neighbours {
            run: &run,
            config: &config,
            options: NeighboursOptions {
                queries: args.n,
                k: args.k,
            },
        },
    )
    .with_context(|| format!("neighbours with {}", args.run.display()))?;
    picture.image.save_png(&args.out)?;
    let n = &picture.neighbours;
    println!(
        "{} written: {} test images of {}, each with its {} nearest training images under the encoder and under raw pixels",
        args.out.display(),
        n.queries.len(),
        config.data.path.display(),
        n.encoder.first().map_or(0, Vec::len)
    );
    if let Some(same) = picture.same_class {
        println!(
            "same class as the test image: encoder {}/{}, raw pixels {}/{}",
            same.encoder, same.total, same.pixels, same.total
        );
    }
    Ok(())
}
