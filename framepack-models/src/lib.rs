//! FramePack's networks on burn, loading the published Hugging Face checkpoints unchanged.
//!
//! - [`transformer`]: the packed HunyuanVideo transformer (12.9 B parameters).
//! - [`vae`]: HunyuanVideo's causal 3D VAE (encode, reference-exact tiled decode, streamed
//!   cached decode).
//! - [`text`], [`vision`]: the LLaMA and CLIP text encoders, the SigLIP image encoder.
//! - [`load`]: how every network loads: `load(src, config, &LoadOptions)` from any
//!   [`weights::TensorSource`], `from_folder(path, device, &LoadOptions)` from a published
//!   checkpoint folder.
//! - [`lora`]: LoRA files (kohya/musubi, diffusers, HunyuanVideo names), merged while the
//!   weights load or kept as switchable adapters.
//! - [`weights`]: safetensors files and shards, the Hugging Face cache, random and manifest
//!   sources.
//! - [`ops`]: the backend-extension trait through which the hot operations run.
//! - [`fp8`]: FP8 (e4m3, per-row scale) storage for the transformer blocks' weights.
//! - [`failure`]: failures inside backend operations, caught at a job's boundary as typed
//!   errors.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod failure;
pub mod fp8;
pub mod load;
pub mod lora;
pub mod nn;
pub mod ops;
pub mod runtime;
pub mod streaming;
pub mod text;
pub mod transformer;
pub mod vae;
pub mod vision;
pub mod weights;

pub use burn;
pub use error::ModelError;
pub use failure::BackendError;
pub use load::{LoadOptions, Residency};
pub use ops::FramePackBackend;

/// The CPU backend (burn-flex) used by tests and machines without a GPU.
#[cfg(feature = "cpu")]
pub type CpuBackend = burn::backend::Flex;
