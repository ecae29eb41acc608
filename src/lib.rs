//! FramePack image-to-video generation in native Rust.
//!
//! This facade crate gathers the workspace:
//! - [`framepack_core`]: buckets, section schedules, context packing and the eichi chain
//!   (plain data, no tensors);
//! - [`framepack_models`]: the networks on burn, loading the published checkpoints;
//! - [`framepack_sampling`]: noise, sigmas, the UniPC sampler and the section loops.

pub use framepack_core;
pub use framepack_models;
pub use framepack_sampling;

pub use framepack_core::{GenerationRequest, Mode, SectionPlan};
