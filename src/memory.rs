//! Where the models live while a pipeline runs, and in which precision.

use burn::tensor::{backend::Backend, DType};
use framepack_models::ops::DeviceMemory;
use serde::{Deserialize, Serialize};

/// How the models are kept in memory (spec §6).
///
/// [`MemoryMode::Auto`] (the default) picks [`Resident`](MemoryMode::Resident) when the device
/// reports at least [`RESIDENT_MIN_FREE_GIB`] GiB free (FramePack's `high_vram` test) or
/// cannot report at all (the CPU), and [`LowVram`](MemoryMode::LowVram) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MemoryMode {
    /// Chosen when the pipeline is built, from the device's free memory.
    #[default]
    Auto,
    /// Every model is loaded onto the device when the pipeline is built and stays there (the
    /// reference's high-VRAM mode): the transformer (bf16, ~26 GB), LLaMA layers 0–29 (fp16,
    /// ~14 GB), CLIP-L, SigLIP and the VAE. The VAE decodes with temporal tiles only.
    Resident,
    /// FramePack's low-VRAM mode, done our way: the transformer's 60 blocks live in (pinned)
    /// host memory and are copied to the device just ahead of use, overlapped with compute;
    /// the text encoders and SigLIP are loaded from their mapped files when a job needs them
    /// and dropped when it has its embeddings (the prompt cache keeps those); the VAE stays,
    /// decoding with spatial tiles as well (`vae.enable_tiling()`).
    LowVram,
}

/// Free device memory (GiB) at or above which [`MemoryMode::Auto`] keeps everything resident;
/// FramePack's `high_vram = free_mem_gb > 60`.
pub const RESIDENT_MIN_FREE_GIB: f64 = 60.0;

impl MemoryMode {
    /// The concrete mode for a device with `memory` (`None`: the backend cannot tell, as on
    /// the CPU, where the models live in host memory anyway).
    pub fn resolve(self, memory: Option<DeviceMemory>) -> MemoryMode {
        match (self, memory) {
            (Self::Auto, Some(m)) if (m.free as f64) < RESIDENT_MIN_FREE_GIB * GIB => Self::LowVram,
            (Self::Auto, _) => Self::Resident,
            (mode, _) => mode,
        }
    }

    /// Whether the transformer blocks stream from host memory and the encoders load on demand.
    pub fn is_low_vram(self) -> bool {
        self == Self::LowVram
    }
}

const GIB: f64 = (1u64 << 30) as f64;

impl std::fmt::Display for MemoryMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Resident => "resident",
            Self::LowVram => "low_vram",
        })
    }
}

impl std::str::FromStr for MemoryMode {
    type Err = String;

    /// `auto`, `resident` (or `high`), `low_vram` (or `low-vram`, `low`).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "auto" => Ok(Self::Auto),
            "resident" | "high" | "high_vram" => Ok(Self::Resident),
            "low_vram" | "low" | "lowvram" => Ok(Self::LowVram),
            other => Err(format!(
                "unknown memory mode `{other}` (expected auto, resident or low-vram)"
            )),
        }
    }
}

/// The compute dtype of each network. In run records a map of names:
/// `{"transformer": "bf16", "vae": "f16", "text": "f16", "image": "f16"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dtypes {
    /// The packed transformer (reference: bf16; its `proj_out` always runs in fp32).
    #[serde(with = "dtype_serde")]
    pub transformer: DType,
    /// The VAE (reference: fp16).
    #[serde(with = "dtype_serde")]
    pub vae: DType,
    /// LLaMA and CLIP (reference: fp16).
    #[serde(with = "dtype_serde")]
    pub text: DType,
    /// SigLIP (reference: fp16).
    #[serde(with = "dtype_serde")]
    pub image: DType,
}

/// A dtype as its name ([`dtype_name`], [`parse_dtype`]).
mod dtype_serde {
    use burn::tensor::DType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(dtype: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::dtype_name(*dtype))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let name = String::deserialize(d)?;
        super::parse_dtype(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown dtype `{name}`")))
    }
}

impl Dtypes {
    /// FramePack's dtypes: bf16 transformer, fp16 everything else.
    pub const fn reference() -> Self {
        Self {
            transformer: DType::BF16,
            vae: DType::F16,
            text: DType::F16,
            image: DType::F16,
        }
    }

    /// The dtypes a device computes best in: the reference's where it has bf16 (CUDA, the
    /// CPU backend), fp16 for every network where it has fp16 but no bf16 (wgpu: WGSL has no
    /// bf16; most Vulkan / Metal / DX12 adapters offer `shader-f16`), else fp32.
    pub fn for_device<B: Backend>(device: &B::Device) -> Self {
        if B::supports_dtype(device, DType::BF16) {
            Self::reference()
        } else if B::supports_dtype(device, DType::F16) {
            Self::all(DType::F16)
        } else {
            Self::all(DType::F32)
        }
    }

    /// Each network's name and dtype, in the order transformer, VAE, text, image.
    pub fn named(&self) -> [(&'static str, DType); 4] {
        [
            ("transformer", self.transformer),
            ("vae", self.vae),
            ("text", self.text),
            ("image", self.image),
        ]
    }

    /// One dtype for every network (e.g. `F32` on a CPU, where half precision is emulated).
    pub const fn all(dtype: DType) -> Self {
        Self {
            transformer: dtype,
            vae: dtype,
            text: dtype,
            image: dtype,
        }
    }
}

impl std::fmt::Display for Dtypes {
    /// `transformer bf16, vae f16, text f16, image f16`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .named()
            .iter()
            .map(|(name, d)| format!("{name} {}", dtype_name(*d)))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

impl Default for Dtypes {
    fn default() -> Self {
        Self::reference()
    }
}

/// The short name of a float dtype (`f32`, `f16`, `bf16`).
pub fn dtype_name(dtype: DType) -> String {
    match dtype {
        DType::F32 => "f32".into(),
        DType::F16 => "f16".into(),
        DType::BF16 => "bf16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Parses `f32`, `f16`/`fp16` or `bf16` (run records).
pub(crate) fn parse_dtype(s: &str) -> Option<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Some(DType::F32),
        "f16" | "fp16" | "float16" => Some(DType::F16),
        "bf16" | "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_backend_gets_the_reference_dtypes_and_names_them() {
        // burn-flex computes in bf16 and f16, so nothing is downgraded.
        let dtypes = Dtypes::for_device::<framepack_models::CpuBackend>(&Default::default());
        assert_eq!(dtypes, Dtypes::reference());
        assert_eq!(
            dtypes.to_string(),
            "transformer bf16, vae f16, text f16, image f16"
        );
        assert_eq!(Dtypes::all(DType::F32).named()[1], ("vae", DType::F32));
    }
}
