//! The one place a concrete backend is named, chosen by cargo feature:
//! `cuda` if enabled, else `flex` (default), else `ndarray`.

use std::path::Path;

use anyhow::{Result, bail};
use byol_train::{RunConfig, RunSummary};

#[cfg(feature = "cuda")]
pub const DEFAULT_DEVICE: &str = "cuda:0";
#[cfg(not(feature = "cuda"))]
pub const DEFAULT_DEVICE: &str = "cpu";

#[cfg(feature = "cuda")]
pub fn pretrain(config: &RunConfig, out: &Path, device: &str, progress: bool) -> Result<RunSummary> {
    use burn::backend::{Autodiff, Cuda, cuda::CudaDevice};
    let index = match device {
        "cuda" => 0,
        d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => bail!("--device {d}: expected `cuda` or `cuda:N` (this binary was built with the cuda backend)"),
        },
    };
    Ok(byol_train::pretrain::<Autodiff<Cuda>>(config, out, &CudaDevice::new(index), progress)?)
}

#[cfg(all(not(feature = "cuda"), feature = "flex"))]
pub fn pretrain(config: &RunConfig, out: &Path, device: &str, progress: bool) -> Result<RunSummary> {
    use burn::backend::{Autodiff, Flex};
    check_cpu(device, "flex")?;
    Ok(byol_train::pretrain::<Autodiff<Flex>>(config, out, &Default::default(), progress)?)
}

#[cfg(all(not(feature = "cuda"), not(feature = "flex"), feature = "ndarray"))]
pub fn pretrain(config: &RunConfig, out: &Path, device: &str, progress: bool) -> Result<RunSummary> {
    use burn::backend::{Autodiff, NdArray};
    check_cpu(device, "ndarray")?;
    Ok(byol_train::pretrain::<Autodiff<NdArray>>(config, out, &Default::default(), progress)?)
}

#[cfg(not(any(feature = "cuda", feature = "flex", feature = "ndarray")))]
compile_error!("enable one backend feature of xtask: flex (default), ndarray or cuda");

#[cfg(not(feature = "cuda"))]
fn check_cpu(device: &str, backend: &str) -> Result<()> {
    if device != "cpu" {
        bail!("--device {device}: this binary was built with the {backend} CPU backend, which only has `cpu`; rebuild with `--features cuda` for GPUs");
    }
    Ok(())
}
