//! `cargo xtask plot` and `cargo xtask preview`: PNG pictures of a run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use byol_train::plot::{PreviewOptions, plot_run, preview_grid};

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Run folder; the charts go to RUN_DIR/plots/.
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
