//! What one transformer call takes.

use burn::tensor::{backend::Backend, Tensor};

/// A group of clean context latents and their RoPE frame indices.
#[derive(Debug, Clone)]
pub struct ContextGroup<B: Backend> {
    /// `[batch, channels, frames, h, w]` latents.
    pub latents: Tensor<B, 5>,
    /// One RoPE time index per frame (shared by the batch).
    pub indices: Vec<f32>,
}

/// Inputs of one forward call, named as in FramePack's `sample_hunyuan`.
///
/// Timesteps and guidance are plain numbers: the sampler quantises them to bf16 before the
/// call (996, not 994.08), exactly as the reference does.
#[derive(Debug, Clone)]
pub struct TransformerInputs<B: Backend> {
    /// Noisy window `[batch, 16, frames, h, w]` (h, w: latent size, multiples of 2).
    pub latents: Tensor<B, 5>,
    /// RoPE time index of each noisy frame.
    pub latent_indices: Vec<f32>,
    /// `σ·1000` per sample (bf16-rounded by the caller).
    pub timestep: Vec<f32>,
    /// Distilled guidance `gs·1000` per sample (bf16-rounded by the caller).
    pub guidance: Vec<f32>,
    /// LLaMA features `[batch, tokens, 4096]`, valid tokens first, zero padding after.
    pub text: Tensor<B, 3>,
    /// Number of valid text tokens per sample (the mask's prefix length, at least 1).
    pub text_lengths: Vec<usize>,
    /// CLIP-L pooled output `[batch, 768]`.
    pub pooled_text: Tensor<B, 2>,
    /// SigLIP `last_hidden_state` `[batch, 729, 1152]`.
    pub image_embeddings: Tensor<B, 3>,
    /// Full-resolution clean latents (start image and the nearest history frame).
    pub clean: Option<ContextGroup<B>>,
    /// History compressed 2× in t, y, x.
    pub clean_2x: Option<ContextGroup<B>>,
    /// History compressed 4× in t, y, x.
    pub clean_4x: Option<ContextGroup<B>>,
}
