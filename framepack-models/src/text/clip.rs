//! The CLIP ViT-L/14 text tower (`text_encoder_2`, transformers' `CLIPTextModel`), for its
//! pooled output.
//!
//! `x = token_embedding[ids] + position_embedding[0..n]`, 12 pre-LN layers with causal
//! attention and quick-GELU MLPs, `final_layer_norm`. The pooled output is the final state at
//! the EOS position; causality lets us run only the tokens up to it.

use std::path::Path;

use burn::tensor::{DType, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::error::ModelError;
use crate::load::{load_folder, read_config, KeyRoot, LoadOptions};
use crate::nn::{EncoderActivation, EncoderAttention, EncoderLayer, EncoderLayerConfig, LayerNorm};
use crate::ops::FramePackBackend;
use crate::weights::{TensorSource, WeightError};

/// Hyper-parameters of `CLIPTextModel`, as in the checkpoint's `config.json`.
///
/// The defaults are those of `hunyuanvideo-community/HunyuanVideo/text_encoder_2` (the text
/// tower of `openai/clip-vit-large-patch14`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Model width (768).
    pub hidden_size: usize,
    /// MLP width (3072).
    pub intermediate_size: usize,
    /// Encoder layers (12).
    pub num_hidden_layers: usize,
    /// Attention heads (12 × 64).
    pub num_attention_heads: usize,
    /// Positions, the longest tokenization (77).
    pub max_position_embeddings: usize,
    /// Vocabulary size (49408).
    pub vocab_size: usize,
    /// MLP activation: `quick_gelu` (CLIP-L) or `gelu`.
    pub hidden_act: String,
    /// LayerNorm epsilon (1e-5).
    pub layer_norm_eps: f64,
    /// The config's EOS id. The published config says 2 (a legacy value), which makes the
    /// reference pool at the position of the largest id, i.e. the first `<|endoftext|>`.
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            vocab_size: 49408,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 2,
        }
    }
}

impl ClipTextConfig {
    /// The published CLIP-L text tower.
    pub fn clip_vit_large_patch14() -> Self {
        Self::default()
    }

    /// A small configuration of the same architecture for CPU tests: 2 layers, 4 heads × 16,
    /// width 64, vocabulary 512.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            vocab_size: 512,
            ..Self::default()
        }
    }

    /// Reads and validates a `config.json` (a `CLIPTextConfig`, or a full `CLIPConfig` whose
    /// `text_config` is used).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        read_config(path.as_ref(), Some("text_config"), |config: &mut Self| {
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
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(format!(
                "hidden_act `{}` is not supported (quick_gelu or gelu)",
                self.hidden_act
            ));
        }
        Ok(())
    }

    /// Whether a checkpoint key is one the text tower never reads (the `position_ids`
    /// buffer some exports carry).
    pub fn is_unused_key(key: &str) -> bool {
        key.ends_with("position_ids")
    }

    /// The shape of one encoder layer: causal attention, `quick_gelu` (else exact GELU).
    fn encoder_layer(&self) -> EncoderLayerConfig {
        EncoderLayerConfig {
            hidden: self.hidden_size,
            mlp: self.intermediate_size,
            heads: self.num_attention_heads,
            eps: self.layer_norm_eps,
            attention: EncoderAttention::Causal,
            activation: if self.hidden_act == "quick_gelu" {
                EncoderActivation::QuickGelu
            } else {
                EncoderActivation::Gelu
            },
        }
    }
}

/// What one call computes: the final-LN states of the tokens run, and the pooled output.
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: FramePackBackend> {
    /// `final_layer_norm` states `[1, n, hidden]` of tokens `0..=pooled_index` (the tokens
    /// after the EOS do not influence these and are not run).
    pub last_hidden_state: Tensor<B, 3>,
    /// The pooled output `[1, hidden]`: the state at the EOS position.
    pub pooled: Tensor<B, 2>,
    /// The EOS position the pooled output was taken from.
    pub pooled_index: usize,
}

/// The CLIP text tower.
#[derive(Debug, Clone)]
pub struct ClipTextEncoder<B: FramePackBackend> {
    config: ClipTextConfig,
    dtype: DType,
    token_embedding: Tensor<B, 2>,
    position_embedding: Tensor<B, 2>,
    layers: Vec<EncoderLayer<B>>,
    final_layer_norm: LayerNorm<B>,
}

impl<B: FramePackBackend> ClipTextEncoder<B> {
    /// The root of the tower's keys in the published checkpoint (`text_model.embeddings.…`) and
    /// a key under it that every checkpoint stores: `Rerooted::detect(src, files, KEY_ROOT)`
    /// reads the published keys from a checkpoint saved without the root (transformers ≥ 5).
    pub const KEY_ROOT: KeyRoot = ("text_model.", "embeddings.token_embedding.weight");

    /// Builds the tower from `src`, with the published keys `text_model.embeddings.…`,
    /// `text_model.encoder.layers.…`, `text_model.final_layer_norm.…` (see
    /// [`ClipTextEncoder::KEY_ROOT`] for checkpoints without the root), computing in
    /// `options.dtype`. CLIP is always resident, dense and without LoRA: other options are an
    /// error.
    pub fn load<S: TensorSource<B>>(
        mut src: S,
        config: ClipTextConfig,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        options.check("CLIP text encoder", false)?;
        let dtype = options.dtype;
        config
            .validate()
            .map_err(|reason| ModelError::input("config", reason))?;
        let p = |name: &str| format!("{}{name}", Self::KEY_ROOT.0);
        let d = config.hidden_size;
        let src = &mut src;
        Ok(Self {
            token_embedding: src.tensor(
                &p("embeddings.token_embedding.weight"),
                [config.vocab_size, d],
                dtype,
            )?,
            position_embedding: src.tensor(
                &p("embeddings.position_embedding.weight"),
                [config.max_position_embeddings, d],
                dtype,
            )?,
            layers: (0..config.num_hidden_layers)
                .map(|i| {
                    EncoderLayer::load(
                        src,
                        &p(&format!("encoder.layers.{i}")),
                        config.encoder_layer(),
                        dtype,
                    )
                })
                .collect::<Result<_, _>>()?,
            final_layer_norm: LayerNorm::load(
                src,
                &p("final_layer_norm"),
                d,
                config.layer_norm_eps,
                dtype,
            )?,
            config: config.clone(),
            dtype,
        })
    }

    /// [`ClipTextEncoder::load`] from the published folder (`config.json` +
    /// `model.safetensors`), checking that every stored tensor was used. Keys are expected
    /// under `text_model.` (transformers 4.x exports); files without that prefix (saved by
    /// transformers ≥ 5) are accepted too.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        load_folder(
            folder.as_ref(),
            device,
            |dir| ClipTextConfig::from_file(dir.join("config.json")),
            Some(Self::KEY_ROOT),
            |src, config| Self::load(src, config, options),
            ClipTextConfig::is_unused_key,
        )
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The position the reference pools at: with the legacy `eos_token_id == 2`, the first
    /// position of the largest id (`<|endoftext|>` = 49407 is the largest id of the CLIP
    /// vocabulary); otherwise the first `eos_token_id`.
    pub fn pooled_index(&self, ids: &[u32]) -> Result<usize, ModelError> {
        if ids.is_empty() {
            return Err(ModelError::input("ids", "no tokens"));
        }
        if self.config.eos_token_id == 2 {
            let max = ids.iter().copied().max().unwrap_or(0);
            Ok(ids.iter().position(|&id| id == max).unwrap_or(0))
        } else {
            ids.iter()
                .position(|&id| id == self.config.eos_token_id)
                .ok_or_else(|| {
                    ModelError::input(
                        "ids",
                        format!("no EOS token ({}) to pool at", self.config.eos_token_id),
                    )
                })
        }
    }

    /// Runs the tower on the ids of one prompt (`<|startoftext|> … <|endoftext|>`, padded or
    /// not) up to the pooled position.
    pub fn forward(&self, ids: &[u32]) -> Result<ClipTextOutput<B>, ModelError> {
        let max_len = self.config.max_position_embeddings;
        if ids.len() > max_len {
            return Err(ModelError::input(
                "ids",
                format!("{} tokens, CLIP takes at most {max_len}", ids.len()),
            ));
        }
        if let Some(&bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(ModelError::input(
                "ids",
                format!(
                    "token id {bad} is outside the vocabulary of {} (wrong tokenizer?)",
                    self.config.vocab_size
                ),
            ));
        }
        let pooled_index = self.pooled_index(ids)?;
        let n = pooled_index + 1;
        let device = self.token_embedding.device();
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(ids[..n].iter().map(|&i| i as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let d = self.config.hidden_size;
        let tokens = self.token_embedding.clone().select(0, index);
        let positions = self.position_embedding.clone().narrow(0, 0, n);
        let mut x = (tokens + positions).reshape([1, n, d]);
        for layer in &self.layers {
            x = layer.forward(x);
        }
        let x = self.final_layer_norm.forward(x);
        let pooled = x.clone().narrow(1, pooled_index, 1).reshape([1, d]);
        Ok(ClipTextOutput {
            last_hidden_state: x,
            pooled,
            pooled_index,
        })
    }

    /// The pooled output `[1, hidden]` (FramePack's `clip_l_pooler`).
    pub fn pooled(&self, ids: &[u32]) -> Result<Tensor<B, 2>, ModelError> {
        Ok(self.forward(ids)?.pooled)
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}
