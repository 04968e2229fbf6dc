//! What `cargo xtask bench step --devices a,b,...` times: the data-parallel
//! step (`byol_train::parallel`), one peer thread per device, each on its
//! shard of the global batch, and the share of the step that rank 0 spends
//! in the all-reduce of the gradients (the exchange itself and the wait for
//! the slowest peer). With `--sync-batchnorm`, the BatchNorm layers'
//! all-reduces sit inside the forward and backward, outside that share.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::backend::AutodiffBackend;
use byol_model::{Byol, ResNet};
use byol_train::parallel::{Peer, average, group_lock, peer_gradients, replica};
use byol_train::step::apply_gradients;
use byol_train::{Optimizers, StepSettings};
use serde::Serialize;

use super::kernels::StepBenchConfig;

/// What [`bench_step_peers`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct PeersBenchResult {
    /// The setting (`batch_size` is the global batch).
    pub config: StepBenchConfig,
    /// Peers (devices).
    pub peers: usize,
    /// Images of the global batch per second over the timed steps.
    pub images_per_sec: f64,
    /// Mean wall time of one step, milliseconds.
    pub ms_per_step: f64,
    /// Rank 0's mean time in the all-reduce per step, milliseconds.
    pub all_reduce_ms: f64,
}

type Net<B> = Byol<B, ResNet<B>>;

fn build<B: AutodiffBackend>(config: &StepBenchConfig, device: &B::Device) -> Net<B> {
    let encoder = config.model.encoder_config(config.channels);
    Byol::seeded(0, device, &config.model.heads_config(), true, |d| {
        encoder.init(d)
    })
}

/// Times the data-parallel BYOL step over `devices`, one peer each.
///
/// # Errors
///
/// A global batch that does not divide among the peers, an invalid encoder
/// config, a collective failure.
pub fn bench_step_peers<B: AutodiffBackend>(
    config: &StepBenchConfig,
    devices: &[B::Device],
) -> Result<PeersBenchResult> {
    let peers = devices.len();
    if peers == 0 || !config.batch_size.is_multiple_of(peers) || config.steps == 0 {
        bail!(
            "bench step: --batch {} must be a multiple of the {peers} devices, and --steps at least 1",
            config.batch_size
        );
    }
    if let Some(d) = devices
        .iter()
        .find(|d| !config.precision.supported_on::<B>(d))
    {
        bail!(
            "bench step --precision {}: device {d:?} has no {} support",
            config.precision,
            config.precision
        );
    }
    config
        .model
        .encoder_config(config.channels)
        .validate("model")
        .with_context(|| format!("bench step {}", config.name))?;
    let first = build::<B>(config, &devices[0]);
    let replicas = devices
        .iter()
        .map(|d| replica(&first, build::<B>(config, d), d))
        .collect::<Result<Vec<_>, _>>()?;
    drop(first);
    let _group = group_lock();
    let barrier = Barrier::new(peers);
    let timings = std::thread::scope(|s| {
        let handles: Vec<_> = replicas
            .into_iter()
            .zip(devices)
            .enumerate()
            .map(|(rank, (model, device))| {
                let barrier = &barrier;
                s.spawn(move || run_peer::<B>(Peer { rank, peers }, model, device, config, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(_) => bail!("a bench peer panicked"),
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let seconds = timings
        .iter()
        .map(|(total, _)| total.as_secs_f64())
        .fold(0.0, f64::max);
    let steps = config.steps as f64;
    Ok(PeersBenchResult {
        config: config.clone(),
        peers,
        images_per_sec: steps * config.batch_size as f64 / seconds,
        ms_per_step: 1e3 * seconds / steps,
        all_reduce_ms: 1e3 * timings[0].1.as_secs_f64() / steps,
    })
}

/// One peer: warm-up steps, then the timed ones from a common start;
/// returns (time of the timed steps, time in the all-reduce).
fn run_peer<B: AutodiffBackend>(
    peer: Peer,
    mut model: Net<B>,
    device: &B::Device,
    config: &StepBenchConfig,
    barrier: &Barrier,
) -> Result<(Duration, Duration)> {
    peer.join::<B>(device)?;
    let shard = config.batch_size / peer.peers;
    let shape = [shard, config.channels, config.size, config.size];
    let inputs: Vec<(Tensor<B, 4>, Tensor<B, 4>)> = {
        let _generator = byol_model::seeded::<B>(device, 1 + peer.rank as u64);
        let draw = || Tensor::random(shape, Distribution::Normal(0.0, 1.0), device);
        (0..4).map(|_| (draw(), draw())).collect()
    };
    let mut optimizers = Optimizers::new(&super::kernels::bench_optimizer());
    let settings = StepSettings {
        forward: byol_model::ForwardOptions {
            concat_views: config.concat_views,
            precision: config.precision,
        },
        sync_batchnorm: config.sync_batchnorm,
        ..StepSettings::simple(1e-3, 0.99)
    };
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"));
    let mut reduce = Duration::ZERO;
    let mut start = Instant::now();
    for i in 0..config.warmup + config.steps {
        if i == config.warmup {
            sync()?;
            barrier.wait();
            start = Instant::now();
            reduce = Duration::ZERO;
        }
        let (v1, v2) = inputs[i % inputs.len()].clone();
        let (grads, out) = peer_gradients(peer, &model, v1, v2, &settings)?;
        sync()?;
        let t = Instant::now();
        let (grads, _) = average::<B>(peer, grads, out)?;
        sync()?;
        reduce += t.elapsed();
        model = apply_gradients(model, &mut optimizers, grads, &settings);
    }
    sync()?;
    let total = start.elapsed();
    peer.leave::<B>()?;
    Ok((total, reduce))
}
