//! `cargo xtask check-step --device cuda`: one BYOL forward and backward on
//! the device and on the CPU from the same weights and views, the loss and
//! every gradient compared (`byol_train::parity`). The first thing
//! `scripts/gpu-check.sh` runs on a GPU machine.

use anyhow::{Result, bail};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;
use byol_model::{HeadsConfig, ResNetConfig, Stem};
use byol_train::parity::{ParityReport, ParitySetup, step_parity};

use crate::backend::{self, Task};

/// Which model to compare.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckModel {
    /// The default CPU encoder at 28×28×1, 64 → 32 heads.
    Small,
    /// ResNet-18 with the CIFAR stem at 32×32×3, 512 → 128 heads.
    Resnet18Cifar,
}

#[derive(clap::Args, Debug)]
pub struct CheckStepArgs {
    /// The device to check against the CPU (`cuda`, `cuda:N`, `wgpu`,
    /// `wgpu-cpu`; `cpu` compares the CPU with itself).
    #[arg(long, default_value = backend::DEFAULT_DEVICE)]
    device: String,
    /// Model to compare.
    #[arg(long, value_enum, default_value = "small")]
    model: CheckModel,
    /// Images per view.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Largest relative difference allowed for the loss and for any
    /// parameter's gradient.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
}

struct Check(ParitySetup);

impl Task for Check {
    type Output = ParityReport;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output> {
        Ok(step_parity::<Autodiff<Flex>, B>(
            &Default::default(),
            &device,
            &self.0,
        )?)
    }
}

fn setup(args: &CheckStepArgs) -> Result<ParitySetup> {
    if args.batch < 2 {
        bail!(
            "--batch {}: expected at least 2 (BatchNorm needs two images)",
            args.batch
        );
    }
    if !(args.tolerance > 0.0 && args.tolerance.is_finite()) {
        bail!("--tolerance {}: expected a positive number", args.tolerance);
    }
    let small = ParitySetup {
        batch: args.batch,
        ..ParitySetup::small()
    };
    Ok(match args.model {
        CheckModel::Small => small,
        CheckModel::Resnet18Cifar => ParitySetup {
            encoder: ResNetConfig::resnet18().with_stem(Stem::Cifar),
            heads: HeadsConfig::new(512, 128, 512),
            channels: 3,
            size: 32,
            ..small
        },
    })
}

/// Runs the comparison, prints one line and fails above the tolerance.
pub fn run(args: CheckStepArgs) -> Result<()> {
    let setup = setup(&args)?;
    let report = backend::run(&args.device, Check(setup))?;
    let verdict = if report.within(args.tolerance) {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "check-step {:?} on {} ({}) vs cpu (flex): loss {:.6} vs {:.6} (relative {:.2e}); {} gradients, largest relative difference {:.2e} (parameter {} {}); tolerance {:.0e}: {verdict}",
        args.model,
        args.device,
        backend::name(&args.device),
        report.loss_reference,
        report.loss_other,
        report.loss_relative(),
        report.parameters,
        report.worst.relative,
        report.worst.index,
        report.worst.dims,
        args.tolerance,
    );
    if verdict != "ok" {
        bail!(
            "{} computes the BYOL step differently from the CPU beyond {:.0e}",
            args.device,
            args.tolerance
        );
    }
    Ok(())
}
