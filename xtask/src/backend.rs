//! The one place concrete backends are named, chosen by cargo feature and
//! `--device`: `cpu` runs on `flex` (default feature) or else `ndarray`;
//! `cuda`/`cuda:N` runs on the `cuda` backend when that feature is built in;
//! `wgpu`/`wgpu:N` on the `wgpu` backend (Vulkan, Metal, DirectX: the first
//! or the N-th discrete GPU) and `wgpu-cpu` on its software adapter (Mesa's
//! lavapipe on Linux) when the `wgpu` feature is built in. A GPU build
//! keeps its CPU backend, so one binary serves both.
//!
//! Commands implement [`Task`], a job generic over the autodiff backend;
//! [`run`] parses `--device` and runs it on the matching backend. A job
//! on several devices of one backend (data-parallel peers, `--devices`)
//! implements [`PeersTask`] and runs through [`run_peers`].

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use byol_train::DeviceMemory;

/// Work that runs on whichever backend this binary was built with.
pub trait Task {
    /// What the work returns.
    type Output;
    /// Runs the work on backend `B` and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Work on several devices of one backend (data-parallel peers).
pub trait PeersTask {
    /// What the work returns.
    type Output;
    /// Runs the work on backend `B` and `devices` (at least one).
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output>;
}

/// What the backend functions below run: a [`Task`] on the first device,
/// or a [`PeersTask`] on all.
trait Job {
    type Output;
    fn go<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<Self::Output>;
}

struct One<T>(T);

impl<T: Task> Job for One<T> {
    type Output = T::Output;
    fn go<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<T::Output> {
        let Some(device) = devices.into_iter().next() else {
            bail!("no device given");
        };
        self.0.run::<B>(device)
    }
}

struct Many<T>(T);

impl<T: PeersTask> Job for Many<T> {
    type Output = T::Output;
    fn go<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<T::Output> {
        self.0.run::<B>(devices)
    }
}

#[cfg(feature = "cuda")]
pub const DEFAULT_DEVICE: &str = "cuda:0";
#[cfg(not(feature = "cuda"))]
pub const DEFAULT_DEVICE: &str = "cpu";

#[cfg(not(any(
    feature = "cuda",
    feature = "wgpu",
    feature = "flex",
    feature = "ndarray"
)))]
compile_error!("enable one backend feature of xtask: flex (default), ndarray, cuda or wgpu");

/// What `--device` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    Cpu,
    Cuda(usize),
    /// A GPU through wgpu: `None` for the default adapter, else the N-th
    /// discrete GPU.
    Wgpu(Option<usize>),
    /// wgpu's software (CPU) adapter.
    WgpuCpu,
}

fn parse(device: &str) -> Result<Device> {
    match device {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        "wgpu" => Ok(Device::Wgpu(None)),
        "wgpu-cpu" => Ok(Device::WgpuCpu),
        d => match (
            d.strip_prefix("cuda:").map(str::parse::<usize>),
            d.strip_prefix("wgpu:").map(str::parse::<usize>),
        ) {
            (Some(Ok(i)), _) => Ok(Device::Cuda(i)),
            (_, Some(Ok(i))) => Ok(Device::Wgpu(Some(i))),
            _ => bail!(
                "--device {d}: expected `cpu`, `cuda`, `cuda:N`, `wgpu`, `wgpu:N` or `wgpu-cpu`"
            ),
        },
    }
}

/// The name of the backend `device` runs on, for reports; `?` when this
/// binary cannot run it (then [`run`] fails with the reason).
pub fn name(device: &str) -> &'static str {
    match parse(device) {
        Ok(Device::Cpu) if cfg!(feature = "flex") => "flex",
        Ok(Device::Cpu) if cfg!(feature = "ndarray") => "ndarray",
        Ok(Device::Cuda(_)) if cfg!(feature = "cuda") => "cuda",
        Ok(Device::Wgpu(_) | Device::WgpuCpu) if cfg!(feature = "wgpu") => "wgpu",
        _ => "?",
    }
}

/// The memory a run on `device` may use, and how it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// What [`byol_train::MemoryPlan::check`] compares the estimate with.
    pub limit: DeviceMemory,
    /// The device and its memory, for reports.
    pub description: String,
}

/// The memory of `device`: on the CPU, where host and device are one
/// memory, the host's `MemAvailable` (Linux `/proc/meminfo`); on a CUDA
/// device, unknown (burn 0.21 does not report it).
///
/// # Errors
///
/// When `device` does not parse.
pub fn memory(device: &str) -> Result<Memory> {
    Ok(match parse(device)? {
        Device::Cpu => {
            let available = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|text| mem_available(&text));
            match available {
                Some(bytes) => Memory {
                    limit: DeviceMemory::Shared(bytes),
                    description: format!(
                        "{device} ({}): host and device share the {} available (MemAvailable)",
                        name(device),
                        byol_train::budget::format_bytes(bytes)
                    ),
                },
                None => Memory {
                    limit: DeviceMemory::Unknown,
                    description: format!(
                        "{device} ({}): memory unknown (no MemAvailable in /proc/meminfo)",
                        name(device)
                    ),
                },
            }
        }
        Device::Cuda(_) => Memory {
            limit: DeviceMemory::Unknown,
            description: format!(
                "{device} ({}): memory unknown (burn 0.21 does not report a CUDA device's){}",
                name(device),
                if cfg!(feature = "cuda") {
                    ""
                } else {
                    "; this binary was built without the cuda feature"
                }
            ),
        },
        Device::Wgpu(_) | Device::WgpuCpu => Memory {
            limit: DeviceMemory::Unknown,
            description: format!(
                "{device} ({}): memory unknown (burn 0.21 does not report a wgpu adapter's){}",
                name(device),
                if cfg!(feature = "wgpu") {
                    ""
                } else {
                    "; this binary was built without the wgpu feature"
                }
            ),
        },
    })
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Runs `task` on the backend and device named by `device`.
pub fn run<T: Task>(device: &str, task: T) -> Result<T::Output> {
    dispatch(&[device.to_string()], One(task))
}

/// Runs `task` on the devices named by `devices`, which must all be of one
/// backend (`cpu,cpu`, `cuda:0,cuda:1`, `wgpu:0,wgpu:1`).
///
/// # Errors
///
/// A device that does not parse, an empty list, devices of different
/// backends, a backend this binary was built without.
pub fn run_peers<T: PeersTask>(devices: &[String], task: T) -> Result<T::Output> {
    dispatch(devices, Many(task))
}

fn dispatch<J: Job>(names: &[String], job: J) -> Result<J::Output> {
    let parsed = names.iter().map(|d| parse(d)).collect::<Result<Vec<_>>>()?;
    let Some(first) = parsed.first().copied() else {
        bail!("--devices: no device given (expected e.g. `cpu,cpu` or `cuda:0,cuda:1`)");
    };
    let kind = |d: &Device| std::mem::discriminant(d);
    let same_backend = |d: &Device| match (first, d) {
        (Device::Wgpu(_) | Device::WgpuCpu, Device::Wgpu(_) | Device::WgpuCpu) => true,
        _ => kind(&first) == kind(d),
    };
    if let Some(i) = parsed.iter().position(|d| !same_backend(d)) {
        bail!(
            "--devices {}: {} and {} are of different backends; the peers of a run share one",
            names.join(","),
            names[0],
            names[i]
        );
    }
    let label = names.join(",");
    match first {
        Device::Cpu => run_cpu(names.len(), job),
        Device::Cuda(_) => {
            let indices = parsed
                .iter()
                .map(|d| match d {
                    Device::Cuda(i) => *i,
                    _ => 0,
                })
                .collect();
            run_cuda(&label, indices, job)
        }
        Device::Wgpu(_) | Device::WgpuCpu => {
            let choices = parsed
                .iter()
                .map(|d| match d {
                    Device::Wgpu(index) => wgpu_device(*index),
                    _ => WgpuChoice::Cpu,
                })
                .collect();
            run_wgpu(&label, choices, job)
        }
    }
}

/// Which wgpu adapter to open (named apart from burn's `WgpuDevice`, so
/// that a build without the feature still parses `--device wgpu`).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))] // read only with the feature
enum WgpuChoice {
    Default,
    Discrete(usize),
    Cpu,
}

fn wgpu_device(index: Option<usize>) -> WgpuChoice {
    index.map_or(WgpuChoice::Default, WgpuChoice::Discrete)
}

#[cfg(feature = "wgpu")]
fn run_wgpu<J: Job>(_device: &str, choices: Vec<WgpuChoice>, job: J) -> Result<J::Output> {
    use burn::backend::wgpu::WgpuDevice;
    use burn::backend::{Autodiff, Wgpu};
    let devices = choices
        .into_iter()
        .map(|choice| match choice {
            WgpuChoice::Default => WgpuDevice::DefaultDevice,
            WgpuChoice::Discrete(i) => WgpuDevice::DiscreteGpu(i),
            WgpuChoice::Cpu => WgpuDevice::Cpu,
        })
        .collect();
    job.go::<Autodiff<Wgpu>>(devices)
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<J: Job>(device: &str, _choices: Vec<WgpuChoice>, _job: J) -> Result<J::Output> {
    bail!(
        "--device {device}: this binary was built without the wgpu backend; rebuild with `--features wgpu`, or pass --device cpu"
    )
}

#[cfg(feature = "flex")]
fn run_cpu<J: Job>(count: usize, job: J) -> Result<J::Output> {
    use burn::backend::{Autodiff, Flex};
    job.go::<Autodiff<Flex>>(vec![Default::default(); count])
}

#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
fn run_cpu<J: Job>(count: usize, job: J) -> Result<J::Output> {
    use burn::backend::{Autodiff, NdArray};
    job.go::<Autodiff<NdArray>>(vec![Default::default(); count])
}

#[cfg(not(any(feature = "flex", feature = "ndarray")))]
fn run_cpu<J: Job>(_count: usize, _job: J) -> Result<J::Output> {
    bail!(
        "--device cpu: this binary was built without a CPU backend; rebuild with the `flex` feature (the default)"
    )
}

#[cfg(feature = "cuda")]
fn run_cuda<J: Job>(device: &str, indices: Vec<usize>, job: J) -> Result<J::Output> {
    use burn::backend::{Autodiff, Cuda, cuda::CudaDevice};
    let devices: Vec<CudaDevice> = indices.into_iter().map(CudaDevice::new).collect();
    for cuda in &devices {
        probe_cuda(device, cuda)?;
    }
    job.go::<Autodiff<Cuda>>(devices)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<J: Job>(device: &str, _indices: Vec<usize>, _job: J) -> Result<J::Output> {
    bail!(
        "--device {device}: this binary was built without the cuda backend; rebuild with `--features cuda`, or pass --device cpu"
    )
}

/// Opens `cuda` with one tiny read-back, so that a machine without an NVIDIA
/// driver or without that GPU gets an error naming the device instead of
/// the panics burn's CUDA runtime raises in its device thread (the driver is
/// loaded at run time, so a `cuda` build runs on machines that have none).
#[cfg(feature = "cuda")]
fn probe_cuda(device: &str, cuda: &burn::backend::cuda::CudaDevice) -> Result<()> {
    use burn::backend::Cuda;
    use burn::tensor::Tensor;
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::{Arc, Mutex};

    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&messages);
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if let Ok(mut seen) = seen.lock() {
            seen.push(text);
        }
    }));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        Tensor::<Cuda, 1>::zeros([1], cuda).into_data()
    }));
    panic::set_hook(previous);
    if outcome.is_ok() {
        return Ok(());
    }
    // The first panic is the device thread's own reason; cudarc's names
    // every library file it tried after " - ", which is noise here.
    let reason = messages
        .lock()
        .ok()
        .and_then(|m| m.first().cloned())
        .unwrap_or_default();
    let reason = reason.split(" - ").next().unwrap_or_default().trim();
    bail!(
        "--device {device}: could not open the CUDA device ({reason}); this needs an NVIDIA driver and a visible GPU. Pass --device cpu to run on the CPU"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_bad_ones_are_named() {
        assert_eq!(parse("cpu").ok(), Some(Device::Cpu));
        assert_eq!(parse("cuda").ok(), Some(Device::Cuda(0)));
        assert_eq!(parse("cuda:3").ok(), Some(Device::Cuda(3)));
        assert_eq!(parse("wgpu").ok(), Some(Device::Wgpu(None)));
        assert_eq!(parse("wgpu:1").ok(), Some(Device::Wgpu(Some(1))));
        assert_eq!(parse("wgpu-cpu").ok(), Some(Device::WgpuCpu));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "", "wgpu:", "wgpu-gpu"] {
            let err = parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(&format!("--device {bad}:")), "{bad}: {err}");
        }
    }

    #[test]
    fn peers_of_different_backends_and_an_empty_list_are_refused() {
        struct Count;
        impl PeersTask for Count {
            type Output = usize;
            fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<usize> {
                Ok(devices.len())
            }
        }
        let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = run_peers(&names(&["cpu", "cuda:0"]), Count).expect_err("mixed");
        assert!(err.to_string().contains("different backends"), "{err}");
        assert!(run_peers(&[], Count).is_err());
        #[cfg(any(feature = "flex", feature = "ndarray"))]
        assert_eq!(run_peers(&names(&["cpu", "cpu"]), Count).ok(), Some(2));
    }

    #[test]
    fn mem_available_is_read_in_bytes_and_cuda_memory_is_unknown() {
        let text = "MemTotal:       32000000 kB\nMemFree:  1000 kB\nMemAvailable:   23939324 kB\n";
        assert_eq!(mem_available(text), Some(23_939_324 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        let cuda = memory("cuda:1").expect("parses");
        assert_eq!(cuda.limit, DeviceMemory::Unknown);
        assert!(cuda.description.contains("cuda:1"), "{}", cuda.description);
        assert!(memory("tpu").is_err());
    }

    /// The backend a task actually gets for `cpu`, by its type name.
    struct BackendType;
    impl Task for BackendType {
        type Output = String;
        fn run<B: AutodiffBackend>(self, _device: B::Device) -> Result<String> {
            Ok(std::any::type_name::<B>().to_lowercase())
        }
    }

    #[cfg(any(feature = "flex", feature = "ndarray"))]
    #[test]
    fn cpu_name_is_the_backend_run_dispatches_to() {
        let ran = run("cpu", BackendType).map_err(|e| e.to_string());
        let ran = ran.unwrap_or_else(|e| e);
        let reported = name("cpu");
        assert!(["flex", "ndarray"].contains(&reported), "{reported}");
        assert!(ran.contains(reported), "reported {reported}, ran {ran}");
        assert_eq!(name("tpu"), "?");
    }

    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    #[test]
    fn cpu_without_a_cpu_backend_is_unnamed_and_refused() {
        assert_eq!(name("cpu"), "?");
        assert_eq!(name("tpu"), "?");
        let err = run("cpu", BackendType).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("--device cpu"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        struct Never;
        impl Task for Never {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _device: B::Device) -> Result<()> {
                bail!("must not run")
            }
        }
        let err = run("cuda:1", Never)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("--device cuda:1") && err.contains("--features cuda"),
            "{err}"
        );
        assert_eq!(name("cuda:1"), "?");
    }
}
