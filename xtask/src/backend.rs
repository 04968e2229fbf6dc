//! The one place a concrete backend is named, chosen by cargo feature:
//! `cuda` if enabled, else `flex` (default), else `ndarray`.
//!
//! Commands implement [`Task`], a job generic over the autodiff backend;
//! [`run`] parses `--device` and runs it on the compiled backend.

use anyhow::Result;
#[cfg(not(feature = "cuda"))]
use anyhow::bail;
use burn::tensor::backend::AutodiffBackend;

/// Work that runs on whichever backend this binary was built with.
pub trait Task {
    /// What the work returns.
    type Output;
    /// Runs the work on backend `B` and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

#[cfg(feature = "cuda")]
pub const DEFAULT_DEVICE: &str = "cuda:0";
#[cfg(not(feature = "cuda"))]
pub const DEFAULT_DEVICE: &str = "cpu";

/// The backend's name, for reports.
#[cfg(feature = "cuda")]
pub const NAME: &str = "cuda";
#[cfg(all(not(feature = "cuda"), feature = "flex"))]
pub const NAME: &str = "flex";
#[cfg(all(not(feature = "cuda"), not(feature = "flex"), feature = "ndarray"))]
pub const NAME: &str = "ndarray";

#[cfg(feature = "cuda")]
pub fn run<T: Task>(device: &str, task: T) -> Result<T::Output> {
    use burn::backend::{Autodiff, Cuda, cuda::CudaDevice};
    let index = match device {
        "cuda" => 0,
        d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => anyhow::bail!(
                "--device {d}: expected `cuda` or `cuda:N` (this binary was built with the cuda backend)"
            ),
        },
    };
    task.run::<Autodiff<Cuda>>(CudaDevice::new(index))
}

#[cfg(all(not(feature = "cuda"), feature = "flex"))]
pub fn run<T: Task>(device: &str, task: T) -> Result<T::Output> {
    use burn::backend::{Autodiff, Flex};
    check_cpu(device)?;
    task.run::<Autodiff<Flex>>(Default::default())
}

#[cfg(all(not(feature = "cuda"), not(feature = "flex"), feature = "ndarray"))]
pub fn run<T: Task>(device: &str, task: T) -> Result<T::Output> {
    use burn::backend::{Autodiff, NdArray};
    check_cpu(device)?;
    task.run::<Autodiff<NdArray>>(Default::default())
}

#[cfg(not(any(feature = "cuda", feature = "flex", feature = "ndarray")))]
compile_error!("enable one backend feature of xtask: flex (default), ndarray or cuda");

#[cfg(not(feature = "cuda"))]
fn check_cpu(device: &str) -> Result<()> {
    if device != "cpu" {
        bail!(
            "--device {device}: this binary was built with the {NAME} CPU backend, which only has `cpu`; rebuild with `--features cuda` for GPUs"
        );
    }
    Ok(())
}
