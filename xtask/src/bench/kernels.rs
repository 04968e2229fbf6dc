//! What `cargo xtask bench step` and `bench data` time: the training step
//! on random inputs and the loader's work per batch. Figures from here go in
//! docs/results.md with the command that made them; they are never asserted
//! by tests.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::backend::AutodiffBackend;
use byol_model::{Byol, ResNet};
use byol_train::loader::{Plan, epoch_order, make_batch};
use byol_train::{ModelConfig, OptimizerSettings, Optimizers, StepSettings, byol_step};
use serde::Serialize;

/// One BYOL step setting to time.
#[derive(Debug, Clone, Serialize)]
pub struct StepBenchConfig {
    /// Short name printed in the table.
    pub name: String,
    /// Encoder and heads.
    pub model: ModelConfig,
    /// Image channels.
    pub channels: usize,
    /// Image side.
    pub size: usize,
    /// Images per step (each gives two views).
    pub batch_size: usize,
    /// Untimed steps first (allocator and caches warm up).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Run both views as one batch of 2 × `batch_size`.
    pub concat_views: bool,
    /// Number format of the convolutions and matrix products.
    pub precision: byol_model::Precision,
    /// With several peers, cross-replica BatchNorm (`train.sync_batchnorm`).
    pub sync_batchnorm: bool,
}

/// What [`bench_step`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepBenchResult {
    /// The setting.
    pub config: StepBenchConfig,
    /// Images (not views) per second over the timed steps.
    pub images_per_sec: f64,
    /// Mean wall time of one step, in milliseconds.
    pub ms_per_step: f64,
    /// Peak resident memory of the process so far, in MiB (Linux; `None`
    /// elsewhere). Host memory: on a GPU backend it does not include the
    /// device's.
    pub peak_rss_mib: Option<f64>,
}

/// The optimizer every `bench step` times, as `bench/torch_byol_step.py`:
/// Adam with PyTorch's ε, weight decay 1e-6.
pub fn bench_optimizer() -> OptimizerSettings {
    OptimizerSettings::adam(1e-6)
}

/// Fails naming the first of `values` that is zero.
fn at_least_one(values: &[(&str, usize)]) -> Result<()> {
    if let Some((key, _)) = values.iter().find(|(_, v)| *v == 0) {
        bail!("bench: {key} is 0, expected at least 1");
    }
    Ok(())
}

/// Times the full BYOL step of [`byol_step`] — both views through the
/// online network with backward, both through the target, the Adam step and
/// the EMA update — on random images, so that data loading is not counted.
///
/// # Errors
///
/// A zero batch, step count or size, or an invalid encoder config.
pub fn bench_step<B: AutodiffBackend>(
    config: &StepBenchConfig,
    device: &B::Device,
) -> Result<StepBenchResult> {
    at_least_one(&[
        ("batch_size", config.batch_size),
        ("steps", config.steps),
        ("size", config.size),
    ])?;
    if !config.precision.supported_on::<B>(device) {
        bail!(
            "bench step --precision {}: backend {} has no {} support on this device",
            config.precision,
            std::any::type_name::<B>(),
            config.precision
        );
    }
    let encoder = config.model.encoder_config(config.channels);
    encoder
        .validate("model")
        .with_context(|| format!("bench step {}", config.name))?;
    let shape = [config.batch_size, config.channels, config.size, config.size];
    let mut model: Byol<B, ResNet<B>> =
        Byol::seeded(0, device, &config.model.heads_config(), true, |device| {
            encoder.init(device)
        });
    // inputs made before the clock starts, reused in turn, drawn under the
    // generator's guard like the weights
    let generator = byol_model::seeded::<B>(device, 1);
    let inputs: Vec<(Tensor<B, 4>, Tensor<B, 4>)> = (0..4)
        .map(|_| {
            (
                Tensor::random(shape, Distribution::Normal(0.0, 1.0), device),
                Tensor::random(shape, Distribution::Normal(0.0, 1.0), device),
            )
        })
        .collect();
    drop(generator);
    let mut optimizer = Optimizers::new(&bench_optimizer());
    let mut run = |model: Byol<B, ResNet<B>>, n: usize| {
        let mut model = model;
        let mut last = None;
        for i in 0..n {
            let (v1, v2) = inputs[i % inputs.len()].clone();
            let (next, out) = byol_step(
                model,
                &mut optimizer,
                v1,
                v2,
                &StepSettings {
                    forward: byol_model::ForwardOptions {
                        concat_views: config.concat_views,
                        precision: config.precision,
                    },
                    ..StepSettings::simple(1e-3, 0.99)
                },
            );
            model = next;
            last = Some(out.loss);
        }
        // wait for the device before the clock stops
        if let Some(loss) = last {
            let _: f32 = loss.into_scalar().elem();
        }
        model
    };
    model = run(model, config.warmup);
    let start = Instant::now();
    let _model = run(model, config.steps);
    let seconds = start.elapsed().as_secs_f64();
    Ok(StepBenchResult {
        config: config.clone(),
        images_per_sec: (config.steps * config.batch_size) as f64 / seconds,
        ms_per_step: 1e3 * seconds / config.steps as f64,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Images per second of the loader's work — decoding a batch's images and
/// making their two views ([`make_batch`]) — over `batches` batches of
/// `dataset`, on a rayon pool of `threads` threads.
///
/// # Errors
///
/// Zero threads or batches, a batch larger than the dataset, a decode
/// error, or a thread pool that cannot be built.
pub fn bench_data(
    dataset: &dyn byol_data::Dataset,
    augment: &byol_augment::AugmentConfig,
    batch_size: usize,
    batches: usize,
    threads: usize,
) -> Result<f64> {
    at_least_one(&[
        ("threads", threads),
        ("batches", batches),
        ("batch_size", batch_size),
    ])?;
    let steps_per_epoch = dataset.len() / batch_size;
    if steps_per_epoch == 0 {
        bail!(
            "bench: batch_size {batch_size} is more than the dataset's {} images",
            dataset.len()
        );
    }
    let plan = Plan {
        seed: 0,
        batch_size,
        steps_per_epoch,
        total_steps: batches,
        start_step: 0,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .with_context(|| format!("building a pool of {threads} threads"))?;
    pool.install(|| {
        let start = Instant::now();
        let mut images = 0;
        let mut order = (0, Vec::new());
        for step in 0..batches {
            let epoch = step / steps_per_epoch + 1;
            if order.0 != epoch {
                order = (epoch, epoch_order(0, epoch, dataset.len()));
            }
            let batch = make_batch(
                dataset,
                &order.1,
                &plan,
                step,
                augment,
                byol_data::OnCorrupt::Fail,
            )?;
            images += batch.len;
        }
        Ok(images as f64 / start.elapsed().as_secs_f64())
    })
}

/// Peak resident set size of this process (`VmHWM`), in MiB, on Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use byol_data::{IdxDataset, ImageSet};

    fn dataset(n: usize) -> IdxDataset {
        let pixels: Vec<u8> = (0..n * 64).map(|i| (i * 31 % 256) as u8).collect();
        let images = ImageSet {
            pixels,
            height: 8,
            width: 8,
            channels: 1,
        };
        IdxDataset::new(images, None, "t").expect("no labels")
    }

    fn augment() -> byol_augment::AugmentConfig {
        byol_augment::AugmentConfig {
            size: 8,
            ..Default::default()
        }
    }

    #[test]
    fn bench_data_times_a_small_dataset_at_a_positive_rate() {
        let ips = bench_data(&dataset(10), &augment(), 4, 3, 1).expect("runs");
        assert!(ips.is_finite() && ips > 0.0, "{ips}");
    }

    #[test]
    fn zero_sizes_and_a_batch_larger_than_the_data_are_refused_by_name() {
        let ds = dataset(10);
        for (batch, batches, threads, key) in [
            (4, 3, 0, "threads"),
            (4, 0, 1, "batches"),
            (0, 3, 1, "batch_size"),
            (11, 3, 1, "batch_size"),
        ] {
            let err = bench_data(&ds, &augment(), batch, batches, threads)
                .expect_err("refused")
                .to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
