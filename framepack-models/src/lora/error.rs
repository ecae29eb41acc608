//! Errors of reading and applying LoRA files.

use std::path::PathBuf;

use crate::weights::WeightError;

/// Everything that can go wrong with a LoRA file; each variant names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// Adapters attach to resident layers; streamed blocks are rebuilt for every use.
    #[error(
        "LoRA adapters need the transformer blocks on the device; with streamed blocks \
         (the low-VRAM mode) merge the LoRAs at load instead"
    )]
    StreamedBlocks,
    /// The file could not be opened or a tensor of it read.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The key names follow no supported LoRA convention.
    #[error(
        "{path}: LoRA format not recognized ({count} keys, e.g. {}); expected kohya/musubi keys \
         (`lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`) or diffusers / \
         diffusion-pipe keys (`diffusion_model.<module>.lora_A.weight`, `.lora_B.weight`, or the \
         prefix `transformer.`)",
        sample.join(", ")
    )]
    UnknownFormat {
        /// The LoRA file.
        path: PathBuf,
        /// How many keys it holds.
        count: usize,
        /// The first few of them, sorted.
        sample: Vec<String>,
    },
    /// The keys follow a LoRA convention but none names a FramePack or HunyuanVideo module.
    #[error(
        "{path}: no LoRA module of this file is a FramePack or HunyuanVideo layer (e.g. {}); \
         is it a LoRA for another model?",
        sample.join(", ")
    )]
    NoTargets {
        /// The LoRA file.
        path: PathBuf,
        /// The first few module names, sorted.
        sample: Vec<String>,
    },
    /// `up` and `down` of one module disagree on the rank, or are not matrices.
    #[error(
        "{path}: `{up_key}` has shape {up_shape:?} and `{down_key}` has shape {down_shape:?}; \
         a LoRA needs down [rank, in, (1...)] and up [out, rank, (1...)]"
    )]
    RankMismatch {
        /// The LoRA file.
        path: PathBuf,
        /// The `down` key.
        down_key: String,
        /// Its stored shape.
        down_shape: Vec<usize>,
        /// The `up` key.
        up_key: String,
        /// Its stored shape.
        up_shape: Vec<usize>,
    },
    /// A fused HunyuanVideo projection cannot be split onto FramePack's modules.
    #[error("{path}: `{key}` has {rows} output rows: {reason}")]
    FusedSplit {
        /// The LoRA file.
        path: PathBuf,
        /// The `up` key of the fused module.
        key: String,
        /// Its output rows.
        rows: usize,
        /// What the split needs.
        reason: String,
    },
    /// `alpha` is not one number.
    #[error("{path}: `{key}` has shape {shape:?}; alpha must be a single number")]
    BadAlpha {
        /// The LoRA file.
        path: PathBuf,
        /// The alpha key.
        key: String,
        /// Its stored shape.
        shape: Vec<usize>,
    },
    /// A LoRA factor does not fit the model weight it patches.
    #[error(
        "{path}: LoRA tensor `{key}` has shape {found:?}, but `{target}` needs {expected:?} \
         (the LoRA was trained for a model of another size or layout)"
    )]
    ShapeMismatch {
        /// The LoRA file.
        path: PathBuf,
        /// The LoRA key (with the rows taken from a fused tensor, if any).
        key: String,
        /// The model weight it patches.
        target: String,
        /// The shape the model weight implies.
        expected: Vec<usize>,
        /// The LoRA factor's shape.
        found: Vec<usize>,
    },
}
