//! `cargo xtask pretrain --dry-run`: the plan of a run — images, steps,
//! memory by part, the kNN monitor and the device — printed without
//! training, building a network or making the run folder.

use std::path::Path;

use anyhow::Result;
use byol_train::budget::{Part, format_bytes, format_count};
use byol_train::{DeviceMemory, RunConfig, RunPlan};

use crate::backend::Memory;

/// Prints the plan of `config` (from `config_path`) on `memory`'s device,
/// then the verdict of the memory check.
///
/// # Errors
///
/// A bad config, and a run that would be refused
/// ([`byol_train::TrainError::TooLarge`]): after the plan is printed.
pub fn run(config: &RunConfig, config_path: &Path, memory: &Memory) -> Result<()> {
    let plan = byol_train::plan_run(config)?;
    println!(
        "plan of {} (a dry run: nothing is trained, no run folder is made)",
        config_path.display()
    );
    print_summary(config, &plan, memory);
    let m = &plan.memory;
    section(
        "device memory for the whole run",
        &m.resident,
        Some(("whole run", m.resident_bytes())),
    );
    section(
        "device memory during a step",
        &m.step,
        Some(("step", m.step_bytes())),
    );
    print_monitor(config, &plan);
    let mut host = vec![m.loader.clone()];
    if let Some(monitor) = m.monitor.as_ref().filter(|mon| mon.counted) {
        host.extend(monitor.host.iter().cloned());
    }
    section("host memory", &host, Some(("host", m.host_bytes())));
    println!(
        "estimate  device {} (the whole run's + the larger of a step and a kNN evaluation), host {}",
        format_bytes(m.device_bytes()),
        format_bytes(m.host_bytes())
    );
    match m.check(memory.limit) {
        Ok(()) => {
            println!(
                "verdict   {}",
                verdict(m.device_bytes(), m.shared_bytes(), memory.limit)
            );
            Ok(())
        }
        Err(e) => {
            println!("verdict   refused (below)");
            Err(e.into())
        }
    }
}

/// Data, steps, networks, device and notes.
fn print_summary(config: &RunConfig, plan: &RunPlan, memory: &Memory) {
    let (d, t, a) = (&config.data, &config.train, &config.augment);
    let m = &plan.memory;
    let channels = if m.channels_assumed {
        format!("{} channel(s) assumed", m.channels)
    } else {
        format!("{} channel(s)", m.channels)
    };
    let images = plan.data.train_images.map_or_else(
        || "images not counted".to_string(),
        |n| format!("{} training images", count(n)),
    );
    println!(
        "data      {}: {images}, {channels}, {}×{} after augmentation",
        d.path.display(),
        a.size,
        a.size
    );
    let batch = format!(
        "{} images a step (train.batch_size {} × train.accumulate {})",
        count(t.effective_batch()),
        t.batch_size,
        t.accumulate
    );
    match plan.steps {
        Some(s) => println!(
            "steps     {} per epoch × {} epochs = {} steps of {batch}",
            count(s.per_epoch),
            s.epochs,
            count(s.total)
        ),
        None => println!("steps     unknown; {batch}, train.epochs {}", t.epochs),
    }
    let model = &config.model;
    if let (Some(e), Some(h)) = (m.encoder, m.heads) {
        println!(
            "networks  {} encoder (stem {}, width ×{}): {} parameters, {} features; \
             projector {} → {}, predictor {} → {}: {} parameters; target: {}",
            name(&model.encoder),
            name(&model.stem),
            model.width_multiplier,
            format_count(e.params),
            format_count(e.output_dim),
            model.projector_hidden,
            model.projection_dim,
            model.predictor_hidden,
            model.projection_dim,
            format_count(h.projector.params.saturating_add(h.predictor.params)),
            if t.use_momentum {
                "encoder + projector"
            } else {
                "none (train.use_momentum = false)"
            }
        );
    }
    println!("device    {}", memory.description);
    let all = t.global_peers();
    if t.nodes > 1 {
        println!(
            "nodes     {} machines × {} peers: this is node {}'s plan",
            t.nodes, m.peers, t.node_rank
        );
    }
    if all > 1 {
        println!(
            "peers     {}: the device parts below are each peer's (its replicas, its {} of the \
             batch's {} images); peers in one memory (the CPU) count once each",
            m.peers,
            count(t.batch_size / all),
            count(t.batch_size)
        );
    }
    for note in &plan.notes {
        println!("note      {note}");
    }
}

/// The kNN monitor's section, or why there is none.
fn print_monitor(config: &RunConfig, plan: &RunPlan) {
    let Some(monitor) = &plan.memory.monitor else {
        let why = if config.eval.monitor {
            "the data has no labelled train and test splits"
        } else {
            "eval.monitor = false"
        };
        println!("kNN monitor: none ({why})");
        return;
    };
    let when = format!(
        "(at the start and every {} epoch(s), between steps)",
        config.eval.every_epochs
    );
    let title = if monitor.counted {
        format!(
            "kNN monitor {when}: {} bank images, {} queries",
            format_count(monitor.bank),
            format_count(monitor.queries)
        )
    } else {
        format!(
            "kNN monitor {when}, if the data has labelled splits: not counted, shown for \
             eval.knn.bank_size = {} bank images and as many queries, checked once counted",
            format_count(monitor.bank)
        )
    };
    let parts: Vec<Part> = monitor
        .features
        .iter()
        .chain(&monitor.raw_pixels)
        .chain(&monitor.device)
        .cloned()
        .collect();
    section(
        &title,
        &parts,
        Some((
            "kNN evaluation (the larger of the features and raw pixels, + the rest)",
            monitor.device_bytes(),
        )),
    );
}

/// A titled list of parts and, when given, its total.
fn section(title: &str, parts: &[Part], total: Option<(&str, u64)>) {
    println!("{title}");
    for p in parts {
        println!("  {:<76} {:>10}", p.what, format_bytes(p.bytes));
    }
    if let Some((what, bytes)) = total {
        println!("  {:<76} {:>10}", format!("= {what}"), format_bytes(bytes));
    }
}

/// How the estimate compares with the memory, when the check passes.
/// The verdict of a plan that fits: `device` is one peer's device bytes,
/// `shared` what every peer and the host take together in one memory.
fn verdict(device: u64, shared: u64, memory: DeviceMemory) -> String {
    match memory {
        DeviceMemory::Shared(limit) => format!(
            "fits: {} of the {} available",
            format_bytes(shared),
            format_bytes(limit)
        ),
        DeviceMemory::Dedicated(limit) => format!(
            "fits: {} of the device's {}",
            format_bytes(device),
            format_bytes(limit)
        ),
        DeviceMemory::Unknown => format!(
            "not refused: the device's memory is unknown, and the estimate is under the {} ceiling",
            format_bytes(byol_train::budget::ABSURD_BYTES)
        ),
    }
}

/// A config value as the config writes it (`resnet50`, not `Resnet50`).
fn name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// `n` with thousands separators.
fn count(n: usize) -> String {
    format_count(n as u64)
}
