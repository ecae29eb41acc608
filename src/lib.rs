//! FramePack image-to-video generation (next-frame-section prediction with the packed
//! HunyuanVideo transformer) in native Rust.
//!
//! This facade crate is what applications use: a [`Pipeline`] built once (models loaded from the
//! published Hugging Face checkpoints, or the tiny random-weight demo model), a [`Request`] per
//! video with every control of FramePack and FramePack-eichi, a progress callback with previews,
//! and a [`Video`] holding the frames, the latent history and the [`RunRecord`] of every
//! parameter. [`Video::save`] writes an H.264 MP4, PNG frames, the latents and the JSON record,
//! each atomically. The `framepack` binary (feature `cli`) wraps all of it.
//!
//! ```
//! use framepack::{InputImage, Pipeline, Request, Resolution};
//!
//! // `tiny_random` builds small random networks of the real architectures: the whole pipeline
//! // runs on a CPU in seconds, and the output is noise. For real videos use
//! // `Pipeline::builder().download(true).build()?` (about 40 GB of checkpoints).
//! let mut pipeline = Pipeline::builder().tiny_random(0).dtype(framepack::DType::F32).build()?;
//! let image = InputImage::from_rgb8(48, 32, vec![30; 48 * 32 * 3])?;
//! let request = Request::new(image, "a boat drifts").seconds(2.0).steps(2)
//!     .resolution(Resolution::Exact { height: 32, width: 48 });
//! let video = pipeline.generate(&request, |_| {})?;
//! assert_eq!(video.frames.len(), 73); // 2 sections: 36·2 + 1 frames at 30 fps
//! # Ok::<(), framepack::Error>(())
//! ```
//!
//! The layers underneath are re-exported: [`framepack_core`] (buckets, section schedules,
//! context packing, the eichi chain; no tensors), [`framepack_models`] (the networks on burn)
//! and [`framepack_sampling`] (noise, sigmas, UniPC, TeaCache, the section loops).

#![warn(missing_docs)]

mod device;
pub mod error;
mod frames;
pub mod hub;
mod input;
mod kisekae;
mod lora;
mod magcache;
pub mod memory;
mod on_demand;
mod pipeline;
pub mod record;
mod request;
#[cfg(feature = "serve")]
pub mod serve;
mod tiny;
pub mod video;

pub use burn::tensor::DType;
pub use device::DeviceChoice;
pub use error::{Error, Result};
pub use framepack_models::ops::DeviceMemory;
pub use framepack_models::runtime::RuntimeOptions;
pub use frames::Frames;
pub use input::InputImage;
pub use kisekae::KisekaeReference;
pub use lora::{LoraChoice, LoraMode, DEFAULT_LORA_STRENGTH};
pub use magcache::{read_ratios, MagCacheSettings};
pub use memory::{Dtypes, MemoryMode};
pub use pipeline::{
    Outputs, Pipeline, PipelineBuilder, Progress, SectionProgress, Stage, StepProgress, Video,
    WeightFormat,
};
pub use record::{ModelKind, RunRecord};
pub use request::{EndFrame, JobPlan, Request, Resolution};

pub use framepack_core;
pub use framepack_core::{Flavor, Mode, SectionPlan, WindowSize};
pub use framepack_models;
pub use framepack_models::FramePackBackend;
pub use framepack_sampling;
pub use framepack_sampling::{CancelToken, History, LatentHistory};

/// The README's code blocks, compiled and run as doctests so that the README stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
