//! The SigLIP so400m/14 @384 vision tower (`image_encoder` of `lllyasviel/flux_redux_bfl`,
//! transformers' `SiglipVisionModel`), for its `last_hidden_state`.
//!
//! Patch embedding (Conv2d 3→1152, kernel = stride = 14, no padding: 27×27 = 729 patches, the
//! last 6 pixel rows and columns of the 384×384 input are never read) plus a learned position
//! embedding; 27 pre-LN layers with bidirectional attention and tanh-GELU MLPs;
//! `post_layernorm`. The attention-pooling head is not used by FramePack and is not loaded.

use std::path::Path;

use burn::tensor::{DType, Tensor};
use serde::Deserialize;

use super::preprocess::SiglipImageProcessor;
use crate::error::ModelError;
use crate::load::{load_folder, read_config, KeyRoot, LoadOptions};
use crate::nn::{
    EncoderActivation, EncoderAttention, EncoderLayer, EncoderLayerConfig, LayerNorm, Linear,
};
use crate::ops::FramePackBackend;
use crate::weights::{TensorSource, WeightError};

/// Hyper-parameters of `SiglipVisionModel`, as in the checkpoint's `config.json`; the
/// defaults are those of `google/siglip-so400m-patch14-384`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    /// Model width (1152).
    pub hidden_size: usize,
    /// MLP width (4304).
    pub intermediate_size: usize,
    /// Encoder layers (27).
    pub num_hidden_layers: usize,
    /// Attention heads (16 × 72).
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Input side (384).
    pub image_size: usize,
    /// Patch side = stride (14).
    pub patch_size: usize,
    /// LayerNorm epsilon (1e-6).
    pub layer_norm_eps: f64,
    /// MLP activation; only `gelu_pytorch_tanh`.
    pub hidden_act: String,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 384,
            patch_size: 14,
            layer_norm_eps: 1e-6,
            hidden_act: "gelu_pytorch_tanh".into(),
        }
    }
}

impl SiglipVisionConfig {
    /// The published image encoder of FramePack.
    pub fn so400m_patch14_384() -> Self {
        Self::default()
    }

    /// A small configuration of the same architecture for CPU tests, at the real input size
    /// (384, patch 14: 729 tokens, 6 pixels ignored): 2 layers, 2 heads × 16, width 32.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            ..Self::default()
        }
    }

    /// Reads and validates a `config.json` (a `SiglipVisionConfig`, or a full `SiglipConfig`
    /// whose `vision_config` is used).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        read_config(path.as_ref(), Some("vision_config"), |config: &mut Self| {
            config.validate()
        })
    }

    /// Checks the invariants the implementation relies on.
    pub fn validate(&self) -> Result<(), String> {
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {heads}",
                self.hidden_size
            ));
        }
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(format!(
                "patch_size {} does not fit image_size {}",
                self.patch_size, self.image_size
            ));
        }
        if self.hidden_act != "gelu_pytorch_tanh" {
            return Err(format!(
                "hidden_act `{}` is not supported (only gelu_pytorch_tanh)",
                self.hidden_act
            ));
        }
        Ok(())
    }

    /// Patches per side (27).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Output tokens (729).
    pub fn num_patches(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }

    /// Whether a checkpoint key is one the tower never reads: the attention-pooling head
    /// (`…head.*`) and `position_ids` buffers.
    pub fn is_unused_key(key: &str) -> bool {
        key.starts_with("vision_model.head.")
            || key.starts_with("head.")
            || key.ends_with("position_ids")
    }
}

/// The SigLIP vision tower without its pooling head.
#[derive(Debug, Clone)]
pub struct SiglipVisionEncoder<B: FramePackBackend> {
    config: SiglipVisionConfig,
    dtype: DType,
    /// The Conv2d kernel `[hidden, channels, p, p]` viewed as `[hidden, channels·p·p]`.
    patch_embedding: Linear<B>,
    position_embedding: Tensor<B, 2>,
    layers: Vec<EncoderLayer<B>>,
    post_layernorm: LayerNorm<B>,
}

impl<B: FramePackBackend> SiglipVisionEncoder<B> {
    /// The root of the tower's keys in the published checkpoint (`vision_model.embeddings.…`) and
    /// a key under it that every checkpoint stores: `Rerooted::detect(src, files, KEY_ROOT)`
    /// reads the published keys from a checkpoint saved without the root (transformers ≥ 5).
    pub const KEY_ROOT: KeyRoot = ("vision_model.", "post_layernorm.weight");

    /// Builds the tower from `src`, with the published keys `vision_model.embeddings.…`,
    /// `vision_model.encoder.…`, `vision_model.post_layernorm.…` (see
    /// [`SiglipVisionEncoder::KEY_ROOT`] for checkpoints without the root), computing in
    /// `options.dtype`. SigLIP is always resident, dense and without LoRA: other options are
    /// an error.
    pub fn load<S: TensorSource<B>>(
        mut src: S,
        config: SiglipVisionConfig,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        options.check("SigLIP image encoder", false)?;
        let dtype = options.dtype;
        config
            .validate()
            .map_err(|reason| ModelError::input("config", reason))?;
        let p = |name: &str| format!("{}{name}", Self::KEY_ROOT.0);
        let (d, c, k) = (config.hidden_size, config.num_channels, config.patch_size);
        let src = &mut src;
        let kernel: Tensor<B, 4> =
            src.tensor(&p("embeddings.patch_embedding.weight"), [d, c, k, k], dtype)?;
        let bias = src.tensor(&p("embeddings.patch_embedding.bias"), [d], dtype)?;
        Ok(Self {
            patch_embedding: Linear::new(kernel.reshape([d, c * k * k]), Some(bias)),
            position_embedding: src.tensor(
                &p("embeddings.position_embedding.weight"),
                [config.num_patches(), d],
                dtype,
            )?,
            layers: (0..config.num_hidden_layers)
                .map(|i| {
                    EncoderLayer::load(
                        src,
                        &p(&format!("encoder.layers.{i}")),
                        EncoderLayerConfig {
                            hidden: config.hidden_size,
                            mlp: config.intermediate_size,
                            heads: config.num_attention_heads,
                            eps: config.layer_norm_eps,
                            attention: EncoderAttention::Bidirectional,
                            activation: EncoderActivation::GeluTanh,
                        },
                        dtype,
                    )
                })
                .collect::<Result<_, _>>()?,
            post_layernorm: LayerNorm::load(
                src,
                &p("post_layernorm"),
                d,
                config.layer_norm_eps,
                dtype,
            )?,
            config: config.clone(),
            dtype,
        })
    }

    /// [`SiglipVisionEncoder::load`] from the published folder (`config.json` +
    /// safetensors), checking that every stored tensor was used. Keys are expected under
    /// `vision_model.` (transformers 4.x exports); files without that prefix (saved by
    /// transformers ≥ 5) are accepted too. The pooling head, if stored, is skipped.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        load_folder(
            folder.as_ref(),
            device,
            |dir| SiglipVisionConfig::from_file(dir.join("config.json")),
            Some(Self::KEY_ROOT),
            |src, config| Self::load(src, config, options),
            SiglipVisionConfig::is_unused_key,
        )
    }

    /// The configuration.
    pub fn config(&self) -> &SiglipVisionConfig {
        &self.config
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `last_hidden_state` `[batch, 729, 1152]` of preprocessed pixels
    /// `[batch, 3, 384, 384]` (any float dtype; cast to the compute dtype).
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Result<Tensor<B, 3>, ModelError> {
        let c = &self.config;
        let [b, channels, h, w] = pixel_values.dims();
        if channels != c.num_channels || h != c.image_size || w != c.image_size {
            return Err(ModelError::input(
                "pixel_values",
                format!(
                    "shape {:?}, the model takes [batch, {}, {}, {}] (preprocess the image first)",
                    pixel_values.dims(),
                    c.num_channels,
                    c.image_size,
                    c.image_size
                ),
            ));
        }
        let (k, n) = (c.patch_size, c.patches_per_side());
        // A valid convolution reads only the first n·k rows and columns.
        let patches = pixel_values
            .cast(self.dtype)
            .narrow(2, 0, n * k)
            .narrow(3, 0, n * k)
            .reshape([b, channels, n, k, n, k])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, n * n, channels * k * k]);
        let mut x = self.patch_embedding.forward(patches)
            + self.position_embedding.clone().unsqueeze::<3>();
        for layer in &self.layers {
            x = layer.forward(x);
        }
        Ok(self.post_layernorm.forward(x))
    }

    /// FramePack's `hf_clip_vision_encode`: preprocesses an RGB image (`[height][width][3]`
    /// bytes) with `processor` and returns `last_hidden_state` `[1, 729, 1152]`.
    pub fn encode_image(
        &self,
        processor: &SiglipImageProcessor,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Tensor<B, 3>, ModelError> {
        let device = self.position_embedding.device();
        let pixels = processor.preprocess::<B>(rgb, width, height, &device, self.dtype)?;
        self.forward(pixels)
    }
}
