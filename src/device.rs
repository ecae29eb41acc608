//! Which device a pipeline runs on, as the command line and run records name it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A backend and device: `auto`, `cpu`, `cuda` / `cuda:N`, or `wgpu`. Which ones a build can
/// run depends on its features (`cpu`, `cuda`, `wgpu`); [`resolve`](Self::resolve) says.
///
/// ```
/// use framepack::DeviceChoice;
/// assert_eq!("cuda:1".parse::<DeviceChoice>()?, DeviceChoice::Cuda(1));
/// assert_eq!("cuda".parse::<DeviceChoice>()?, DeviceChoice::Cuda(0));
/// assert_eq!(DeviceChoice::Cuda(0).to_string(), "cuda:0");
/// # Ok::<(), framepack::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceChoice {
    /// The best this build and machine offer: the first CUDA GPU when built with `cuda` and
    /// one is present, else the wgpu adapter when built with `wgpu` and one exists, else the
    /// CPU.
    #[default]
    Auto,
    /// The CPU (burn-flex).
    Cpu,
    /// NVIDIA GPU `N` (burn-cuda with the tuned kernels).
    Cuda(usize),
    /// The wgpu fallback's default adapter (Vulkan / Metal / DX12).
    Wgpu,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Wgpu => f.write_str("wgpu"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    /// `auto`, `cpu`, `cuda` (device 0; also `gpu`), `cuda:N`, `wgpu`.
    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        match name.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "wgpu" => Ok(Self::Wgpu),
            _ => match name.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(Self::Cuda(i)),
                _ => Err(Error::invalid(
                    "device",
                    format!("`{s}`: expected auto, cpu, cuda, cuda:N or wgpu"),
                )),
            },
        }
    }
}

impl DeviceChoice {
    /// The device to run on: [`Auto`](Self::Auto) becomes the best one present; a named one is
    /// checked to be built (and, for CUDA, present). Errors name the device and why.
    pub fn resolve(self) -> Result<Self> {
        match self {
            Self::Auto => detect(),
            Self::Cpu if !cfg!(feature = "cpu") => Err(unavailable(
                self,
                "this build has no CPU backend; rebuild with `--features cpu`",
            )),
            Self::Cuda(_) if !cfg!(feature = "cuda") => Err(unavailable(
                self,
                "this build has no CUDA backend; rebuild with `--features cuda`",
            )),
            Self::Cuda(index) if !cuda_present(index) => Err(unavailable(
                self,
                "no such CUDA device (no NVIDIA GPU, or the driver could not be loaded)",
            )),
            Self::Wgpu if !cfg!(feature = "wgpu") => Err(unavailable(
                self,
                "this build has no wgpu backend; rebuild with `--features wgpu`",
            )),
            named => Ok(named),
        }
    }
}

fn unavailable(device: DeviceChoice, reason: &str) -> Error {
    Error::DeviceUnavailable {
        device: device.to_string(),
        reason: reason.into(),
    }
}

/// The first of: CUDA GPU 0, the wgpu adapter, the CPU, that this build has and this machine
/// offers.
fn detect() -> Result<DeviceChoice> {
    if cfg!(feature = "cuda") && cuda_present(0) {
        return Ok(DeviceChoice::Cuda(0));
    }
    if cfg!(feature = "wgpu") && wgpu_present() {
        return Ok(DeviceChoice::Wgpu);
    }
    if cfg!(feature = "cpu") {
        return Ok(DeviceChoice::Cpu);
    }
    Err(unavailable(
        DeviceChoice::Auto,
        "no GPU found and this build has no CPU backend; rebuild with `--features cpu`",
    ))
}

/// Whether CUDA device `index` can be opened (a missing driver library counts as absent).
#[cfg(feature = "cuda")]
fn cuda_present(index: usize) -> bool {
    framepack_models::failure::catch(|| framepack_models::cuda::device_report(index))
        .ok()
        .flatten()
        .is_some()
}

#[cfg(not(feature = "cuda"))]
fn cuda_present(_: usize) -> bool {
    false
}

/// Whether wgpu finds an adapter: a one-element tensor round trip on its default device
/// (burn-wgpu panics when there is none; that counts as absent).
#[cfg(feature = "wgpu")]
fn wgpu_present() -> bool {
    use burn::tensor::Tensor;
    framepack_models::failure::catch(|| {
        let device = Default::default();
        Tensor::<burn::backend::Wgpu, 1>::zeros([1], &device).into_data()
    })
    .is_ok()
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_present() -> bool {
    false
}
