//! `cargo xtask export`: the encoder as a safetensors file with
//! torchvision's keys, for PyTorch.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use byol_model::torchvision::{architecture_metadata, save_torchvision};
use byol_train::Run;

use crate::backend::{self, Task};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Run folder whose encoder is exported.
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// Output file (`.safetensors`).
    #[arg(long)]
    out: PathBuf,
    /// Device, as for `pretrain`.
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
}

struct Export<'a> {
    run: &'a Run,
    out: &'a std::path::Path,
}

impl Task for Export<'_> {
    type Output = std::collections::BTreeMap<String, String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        let encoder = self.run.load_encoder::<B::InnerBackend>(&device)?;
        save_torchvision(&encoder, self.out)?;
        Ok(architecture_metadata(&encoder))
    }
}

pub fn run(args: ExportArgs) -> Result<()> {
    let run = Run::open(&args.run)?;
    let meta = backend::run(
        &args.device,
        Export {
            run: &run,
            out: &args.out,
        },
    )
    .with_context(|| format!("exporting {}", args.run.display()))?;
    println!(
        "{} written: {:?} encoder, stem {}, {} input channels, blocks [{}], widths [{}], {} features",
        args.out.display(),
        run.config.model.encoder,
        meta["stem"],
        meta["in_channels"],
        meta["blocks"],
        meta["widths"],
        meta["output_dim"]
    );
    match meta["stem"].as_str() {
        "imagenet" => {}
        "cifar" | "small" => println!(
            "torchvision's stem differs: replace model.conv1 and set model.maxpool = nn.Identity() before loading (docs/usage.md)"
        ),
        _ => {}
    }
    println!(
        "check it in PyTorch: python scripts/torchvision_check.py --weights {}",
        args.out.display()
    );
    Ok(())
}
