//! FramePack sampling: torch-exact noise, the flow-matching sigma schedule, UniPC bh1, guidance,
//! step caches, and the section loops that grow a latent history (spec `pipeline.md` §2–§5).
//!
//! The crate works on already-encoded tensors and knows nothing about transformers: the loops
//! drive a [`Denoiser`] (an x0-predictor). [`FlowDenoiser`] makes one out of any
//! [`VelocityModel`] exactly as the reference's `fm_wrapper` does, and [`FramePackModel`] is the
//! packed transformer as a velocity model, with an optional [`CacheMode`].
//!
//! - [`noise`]: [`NoiseGenerator`], PyTorch's CPU `torch.randn` for a seed.
//! - [`sigmas`]: [`SigmaSchedule`] (exponential time shift, μ clamped to ln 7), bf16 inputs.
//! - [`unipc`]: [`UniPc`], orders 1, 2, 3, 3, …, returning the last x0 estimate.
//! - [`guidance`]: [`Guidance`] (distilled, real CFG, rescale).
//! - [`cache`]: TeaCache and MagCache around the block stack.
//! - [`history`]: [`History`], its slicing and its safetensors file.
//! - [`sections`]: [`SectionSampler`], the inverted / F1 / one-frame loops with eichi's controls.
//! - [`progress`]: per-step and per-window [`Event`]s, [`CancelToken`].
//!
//! ```no_run
//! # use framepack_models::{CpuBackend as B, burn::tensor::Tensor};
//! # use framepack_models::transformer::FramePackTransformer;
//! use framepack_core::GenerationRequest;
//! use framepack_sampling::*;
//!
//! # fn encoded() -> (FramePackTransformer<B>, PromptEmbedding<B>, Tensor<B, 3>, Tensor<B, 5>) { unimplemented!() }
//! let (transformer, prompt, siglip, start_latent) = encoded();
//! let plan = GenerationRequest::new(5.0).validate()?;
//! let model = FramePackModel::new(&transformer, Conditions::new(prompt, siglip))
//!     .cache(CacheMode::TeaCache(TeaCache::default()));
//! let mut denoiser = FlowDenoiser::new(model, Guidance::default());
//! let output = SectionSampler::new(&plan).steps(25).seed(31337).run(
//!     &mut denoiser,
//!     &SectionInputs::new(start_latent),
//!     &CancelToken::new(),
//!     |event| {
//!         if let Event::Section(s) = event {
//!             println!("window {} added {:?}", s.window.index, s.latents.dims());
//!         }
//!     },
//! )?;
//! output.history.save("job.safetensors", &GenerationParams::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod cache;
pub mod denoiser;
pub mod error;
pub mod guidance;
pub mod history;
pub mod noise;
pub mod progress;
pub mod sections;
pub mod sigmas;
mod transformer;
pub mod unipc;

pub use cache::{CacheMode, CacheStats, MagCache, MagRatios, StepCache, TeaCache};
pub use denoiser::{
    Branch, ContextLatents, Denoiser, FlowDenoiser, ModelCall, VelocityModel, WindowContext,
};
pub use error::{Result, SamplingError};
pub use guidance::Guidance;
pub use history::{GenerationParams, History, LatentHistory};
pub use noise::NoiseGenerator;
pub use progress::{CancelToken, Event, SectionEvent, StepEvent};
pub use sections::{Completion, SectionInputs, SectionOutput, SectionSampler};
pub use sigmas::{Shift, SigmaSchedule};
pub use transformer::{Conditions, FramePackModel, PromptEmbedding};
pub use unipc::{CoefficientPrecision, Sampled, UniPc};
