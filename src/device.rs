//! Which device a pipeline runs on, as the command line and run records name it.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A backend and device: `cpu`, `cuda` / `cuda:N`, or `wgpu`. Which ones a build can run
/// depends on its features (`cpu`, `cuda`, `wgpu`).
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
    /// The CPU (burn-flex).
    #[default]
    Cpu,
    /// NVIDIA GPU `N` (burn-cuda with the tuned kernels).
    Cuda(usize),
    /// The wgpu fallback's default adapter (Vulkan / Metal / DX12).
    Wgpu,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Wgpu => f.write_str("wgpu"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    /// `cpu`, `cuda` (device 0; also `gpu`), `cuda:N`, `wgpu`.
    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        match name.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "wgpu" => Ok(Self::Wgpu),
            _ => match name.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(Self::Cuda(i)),
                _ => Err(Error::invalid(
                    "device",
                    format!("`{s}`: expected cpu, cuda, cuda:N or wgpu"),
                )),
            },
        }
    }
}
