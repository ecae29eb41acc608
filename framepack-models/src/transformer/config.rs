//! The transformer's configuration, as in the checkpoint's `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::load::read_config;
use crate::weights::WeightError;

/// Hyper-parameters of `HunyuanVideoTransformer3DModelPacked`.
///
/// Field names are those of the checkpoint's `config.json`, so a config can be read from the
/// published file; the defaults are the published values of `lllyasviel/FramePackI2V_HY`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TransformerConfig {
    /// Latent channels in (16).
    pub in_channels: usize,
    /// Latent channels out (16).
    pub out_channels: usize,
    /// Attention heads (24).
    pub num_attention_heads: usize,
    /// Channels per head (128); hidden size = heads · head dim.
    pub attention_head_dim: usize,
    /// Double-stream blocks (20).
    pub num_layers: usize,
    /// Single-stream blocks (40).
    pub num_single_layers: usize,
    /// Token-refiner blocks (2).
    pub num_refiner_layers: usize,
    /// FFN width multiplier (4).
    pub mlp_ratio: f64,
    /// Spatial patch size (2).
    pub patch_size: usize,
    /// Temporal patch size (1).
    pub patch_size_t: usize,
    /// Q/K normalisation; only `rms_norm` exists in the published models.
    pub qk_norm: String,
    /// Whether the distilled-guidance embedding exists (true).
    pub guidance_embeds: bool,
    /// LLaMA feature width (4096).
    pub text_embed_dim: usize,
    /// CLIP pooled width (768).
    pub pooled_projection_dim: usize,
    /// RoPE base (256).
    pub rope_theta: f64,
    /// RoPE channels per axis (t, y, x) = (16, 56, 56); they sum to the head dim.
    pub rope_axes_dim: [usize; 3],
    /// Whether the SigLIP image projection exists (true for FramePack).
    pub has_image_proj: bool,
    /// SigLIP feature width (1152).
    pub image_proj_dim: usize,
    /// Whether the packed clean-latent embedders exist (true for FramePack).
    pub has_clean_x_embedder: bool,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            in_channels: 16,
            out_channels: 16,
            num_attention_heads: 24,
            attention_head_dim: 128,
            num_layers: 20,
            num_single_layers: 40,
            num_refiner_layers: 2,
            mlp_ratio: 4.0,
            patch_size: 2,
            patch_size_t: 1,
            qk_norm: "rms_norm".into(),
            guidance_embeds: true,
            text_embed_dim: 4096,
            pooled_projection_dim: 768,
            rope_theta: 256.0,
            rope_axes_dim: [16, 56, 56],
            has_image_proj: true,
            image_proj_dim: 1152,
            has_clean_x_embedder: true,
        }
    }
}

impl TransformerConfig {
    /// The published FramePack configuration (identical for the inverted and F1 checkpoints).
    pub fn framepack() -> Self {
        Self::default()
    }

    /// A small configuration of the same architecture, for tests and demos that must run on
    /// a CPU in seconds: 2 heads × 16, 2 double and 2 single blocks, 1 refiner block, and
    /// small text/image feature widths.
    pub fn tiny() -> Self {
        Self {
            num_attention_heads: 2,
            attention_head_dim: 16,
            num_layers: 2,
            num_single_layers: 2,
            num_refiner_layers: 1,
            text_embed_dim: 32,
            pooled_projection_dim: 24,
            rope_axes_dim: [4, 6, 6],
            image_proj_dim: 20,
            ..Self::default()
        }
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        read_config(path.as_ref(), None, |config: &mut Self| config.validate())
    }

    /// Checks the invariants the implementation relies on.
    pub fn validate(&self) -> Result<(), String> {
        let head_dim = self.attention_head_dim;
        if self.rope_axes_dim.iter().sum::<usize>() != head_dim {
            return Err(format!(
                "rope_axes_dim {:?} must sum to attention_head_dim {head_dim}",
                self.rope_axes_dim
            ));
        }
        if self.rope_axes_dim.iter().any(|d| d % 2 != 0) {
            return Err(format!(
                "rope_axes_dim {:?} must be even",
                self.rope_axes_dim
            ));
        }
        if self.qk_norm != "rms_norm" {
            return Err(format!(
                "qk_norm `{}` is not supported (only rms_norm)",
                self.qk_norm
            ));
        }
        if !self.has_clean_x_embedder || !self.has_image_proj {
            return Err(
                "not a FramePack checkpoint: has_clean_x_embedder and has_image_proj must be true"
                    .into(),
            );
        }
        if self.patch_size == 0 || self.patch_size_t == 0 {
            return Err("patch sizes must be positive".into());
        }
        Ok(())
    }

    /// Hidden size `heads · head_dim` (3072).
    pub fn hidden_size(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// FFN width `hidden · mlp_ratio` (12288).
    pub fn mlp_dim(&self) -> usize {
        (self.hidden_size() as f64 * self.mlp_ratio) as usize
    }
}
