//! The packed HunyuanVideo transformer of FramePack (`HunyuanVideoTransformer3DModelPacked`).
//!
//! Data flow of one call (see `docs/transformer.md`):
//! 1. the noisy window and the clean, 2× and 4× history are patch-embedded into one image
//!    stream `[4x | 2x | clean | noisy]`, with matching 3D RoPE tables;
//! 2. `temb` = timestep + guidance + pooled CLIP embedding;
//! 3. the LLaMA features are refined and prefixed with the projected SigLIP tokens;
//! 4. 20 double-stream blocks, then 40 single-stream blocks on the joint sequence;
//! 5. the noisy tokens are normalised, projected in fp32 and unpatchified into the velocity.

mod blocks;
mod config;
pub mod embeddings;
mod inputs;
mod load;
mod model;
mod refiner;
pub mod rope;

/// [`crate::load::LoadOptions`], re-exported where the transformer's users look for it.
pub use crate::load::LoadOptions;
/// The transformer's name for [`crate::load::Residency`]: where its 60 blocks live.
pub use crate::load::Residency as BlockResidency;
pub use blocks::{DoubleStreamBlock, Rotary, SingleStreamBlock};
pub use config::TransformerConfig;
pub use inputs::{ContextGroup, TransformerInputs};
pub use model::{FramePackTransformer, PreparedInputs, STREAMED_TOKEN_CHUNK};
pub use refiner::TokenRefiner;
