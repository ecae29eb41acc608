//! The LLaMA-3-8B text tower of llava-llama-3-8b (`text_encoder`, transformers' `LlamaModel`),
//! run only as far as FramePack reads it.
//!
//! FramePack reads `hidden_states[-3]`: with 32 layers the tuple is `[embeddings, out_1, …,
//! out_31, norm(out_32)]`, so `[-3]` is the raw output of the 30th decoder layer
//! (`layers.29`), **without** the final RMSNorm. Only layers `0..=29` are loaded and run;
//! `layers.30`, `layers.31` and `norm` are never read from disk (7.07 of the 7.5 B parameters
//! are used).
//!
//! Per layer (pre-norm): `x += o_proj(attn(rope(q), rope(k), v))` on `RMSNorm(x)`, then
//! `x += down_proj(SiLU(gate_proj(m)) · up_proj(m))` on `RMSNorm(x)`. Attention is causal with
//! 32 query heads over 8 key/value heads; RoPE is the half-split (`rotate_half`) kind.

use std::path::Path;

use burn::tensor::{DType, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::error::ModelError;
use crate::load::{read_config, LoadOptions, Residency};
use crate::nn::{Linear, RmsNorm};
use crate::ops::FramePackBackend;
use crate::weights::{
    join, CheckpointFiles, ManifestRecorder, SafetensorsSource, SharedSource, TensorSource,
    WeightError,
};

/// How far from the end of `hidden_states` FramePack reads (`hidden_states[-3]`).
pub const FRAMEPACK_HIDDEN_STATE: usize = 3;

/// Hyper-parameters of the LLaMA text tower, as in the checkpoint's `config.json`.
///
/// The defaults are the published values of `hunyuanvideo-community/HunyuanVideo/text_encoder`
/// (llava-llama-3-8b-v1_1).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    /// Model width (4096).
    pub hidden_size: usize,
    /// Gated-MLP width (14336).
    pub intermediate_size: usize,
    /// Decoder layers in the checkpoint (32); FramePack runs the first 30.
    pub num_hidden_layers: usize,
    /// Query heads (32).
    pub num_attention_heads: usize,
    /// Key/value heads (8): grouped-query attention.
    pub num_key_value_heads: usize,
    /// Channels per head; `hidden_size / num_attention_heads` (128) when absent.
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon (1e-5).
    pub rms_norm_eps: f64,
    /// RoPE base (500000).
    pub rope_theta: f64,
    /// RoPE scaling; only `null` (plain RoPE, as LLaMA-3.0) is supported.
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 spell the RoPE settings as `rope_parameters: {rope_theta, rope_type}`.
    pub rope_parameters: Option<serde_json::Value>,
    /// Vocabulary size (128320: the LLaMA-3 tokens plus llava's additions, padded).
    pub vocab_size: usize,
    /// Longest sequence the model was trained for (8192).
    pub max_position_embeddings: usize,
    /// MLP activation; only `silu`.
    pub hidden_act: String,
    /// Biases on the attention projections; LLaMA has none.
    pub attention_bias: bool,
    /// Biases on the MLP projections; LLaMA has none.
    pub mlp_bias: bool,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: None,
            rope_parameters: None,
            vocab_size: 128_320,
            max_position_embeddings: 8192,
            hidden_act: "silu".into(),
            attention_bias: false,
            mlp_bias: false,
        }
    }
}

impl LlamaConfig {
    /// The published text encoder of HunyuanVideo / FramePack.
    pub fn llava_llama3_8b() -> Self {
        Self::default()
    }

    /// A small configuration of the same architecture for CPU tests: 4 layers (2 run),
    /// 4 query heads × 16 over 2 key/value heads, width 64, vocabulary 256.
    pub fn tiny() -> Self {
        Self {
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            vocab_size: 256,
            max_position_embeddings: 512,
            ..Self::default()
        }
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        read_config(path.as_ref(), None, |config: &mut Self| {
            // transformers ≥ 5 spell it `rope_parameters: {rope_theta, …}`.
            if let Some(theta) = config
                .rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .and_then(|t| t.as_f64())
            {
                config.rope_theta = theta;
            }
            config.validate()
        })
    }

    /// Checks the invariants the implementation relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_hidden_layers < FRAMEPACK_HIDDEN_STATE - 1 {
            return Err(format!(
                "num_hidden_layers {} is too small: FramePack reads hidden_states[-{FRAMEPACK_HIDDEN_STATE}]",
                self.num_hidden_layers
            ));
        }
        let heads = self.num_attention_heads;
        let kv = self.num_key_value_heads;
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv}"
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {heads}",
                self.hidden_size
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        let scaling = self.rope_scaling.as_ref().or_else(|| {
            self.rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_type"))
        });
        match scaling {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s == "default" => {}
            Some(other) => {
                return Err(format!(
                    "RoPE scaling {other} is not supported (the FramePack text encoder uses none)"
                ))
            }
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act `{}` is not supported (only silu)",
                self.hidden_act
            ));
        }
        if self.attention_bias || self.mlp_bias {
            return Err("attention_bias / mlp_bias are not supported (LLaMA has no biases)".into());
        }
        Ok(())
    }

    /// Channels per head (128).
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Decoder layers FramePack needs: those up to `hidden_states[-3]` (30 of 32).
    pub fn layers_needed(&self) -> usize {
        self.num_hidden_layers + 1 - FRAMEPACK_HIDDEN_STATE
    }

    /// Whether a checkpoint key (without any `model.` prefix) is one FramePack never reads:
    /// the layers after `hidden_states[-3]`, the final norm, and buffers / heads that some
    /// exports carry (`rotary_emb.inv_freq`, `lm_head.weight`).
    pub fn is_unused_key(&self, key: &str) -> bool {
        if key == "norm.weight" || key == "lm_head.weight" || key.ends_with("rotary_emb.inv_freq") {
            return true;
        }
        key.strip_prefix("layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= self.layers_needed())
    }
}

/// RoPE of LLaMA: channel `i` pairs with channel `i + head_dim/2` (`rotate_half`), unlike the
/// interleaved pairs of the video transformer. `cos`/`sin` are `[seq, head_dim]` in `x`'s
/// dtype (the reference casts its fp32 tables to the model dtype and rotates there).
pub fn rope_rotate_half<B: FramePackBackend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
) -> Tensor<B, 4> {
    let [_, seq, _, head_dim] = x.dims();
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos = cos.reshape([1, seq, 1, head_dim]);
    let sin = sin.reshape([1, seq, 1, head_dim]);
    x * cos + rotated * sin
}

/// The `[seq, head_dim]` cos and sin tables for positions `0..seq`, in fp32 as transformers'
/// `LlamaRotaryEmbedding` computes them: `inv_freq_i = 1 / θ^(2i/d)`, angle = position ·
/// inv_freq, each frequency used for channels `i` and `i + d/2`.
pub fn rope_tables(seq: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let theta = theta as f32;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = vec![0f32; seq * head_dim];
    let mut sin = vec![0f32; seq * head_dim];
    for pos in 0..seq {
        for (i, f) in inv_freq.iter().enumerate() {
            let angle = pos as f32 * f;
            let (s, c) = angle.sin_cos();
            for ch in [i, i + half] {
                cos[pos * head_dim + ch] = c;
                sin[pos * head_dim + ch] = s;
            }
        }
    }
    (cos, sin)
}

/// One decoder layer (`layers.{i}`): causal GQA self-attention and a SiLU-gated MLP, each
/// after an RMSNorm, each added to the residual.
#[derive(Debug, Clone)]
pub struct LlamaDecoderLayer<B: FramePackBackend> {
    input_layernorm: RmsNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    post_attention_layernorm: RmsNorm<B>,
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl<B: FramePackBackend> LlamaDecoderLayer<B> {
    /// Loads the 9 tensors of `{prefix}`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        config: &LlamaConfig,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let p = |name: &str| join(prefix, name);
        let hidden = config.hidden_size;
        let head_dim = config.head_dim();
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let mlp = config.intermediate_size;
        let eps = config.rms_norm_eps;
        let lin = |src: &mut S, name: &str, i: usize, o: usize| {
            Linear::load(src, &p(name), i, o, false, dtype)
        };
        Ok(Self {
            input_layernorm: RmsNorm::load(src, &p("input_layernorm"), hidden, eps, dtype)?,
            q_proj: lin(src, "self_attn.q_proj", hidden, heads * head_dim)?,
            k_proj: lin(src, "self_attn.k_proj", hidden, kv_heads * head_dim)?,
            v_proj: lin(src, "self_attn.v_proj", hidden, kv_heads * head_dim)?,
            o_proj: lin(src, "self_attn.o_proj", heads * head_dim, hidden)?,
            post_attention_layernorm: RmsNorm::load(
                src,
                &p("post_attention_layernorm"),
                hidden,
                eps,
                dtype,
            )?,
            gate_proj: lin(src, "mlp.gate_proj", hidden, mlp)?,
            up_proj: lin(src, "mlp.up_proj", hidden, mlp)?,
            down_proj: lin(src, "mlp.down_proj", mlp, hidden)?,
            heads,
            kv_heads,
            head_dim,
        })
    }

    /// `x` `[1, seq, hidden]`, RoPE tables `[seq, head_dim]` in the compute dtype.
    pub fn forward(&self, x: Tensor<B, 3>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let d = self.head_dim;

        let h = self.input_layernorm.forward(x.clone());
        let q = self
            .q_proj
            .forward(h.clone())
            .reshape([b, s, self.heads, d]);
        let k = self
            .k_proj
            .forward(h.clone())
            .reshape([b, s, self.kv_heads, d]);
        let v = self.v_proj.forward(h).reshape([b, s, self.kv_heads, d]);
        let q = rope_rotate_half(q, cos.clone(), sin.clone());
        let k = rope_rotate_half(k, cos.clone(), sin.clone());
        let attn = B::attend_causal(q, k, v).reshape([b, s, self.heads * d]);
        let x = x + self.o_proj.forward(attn);

        let m = self.post_attention_layernorm.forward(x.clone());
        let gated = B::silu(self.gate_proj.forward(m.clone())) * self.up_proj.forward(m);
        x + self.down_proj.forward(gated)
    }
}

/// The LLaMA text tower truncated to the layers FramePack reads.
#[derive(Debug, Clone)]
pub struct LlamaTextEncoder<B: FramePackBackend> {
    config: LlamaConfig,
    dtype: DType,
    embed_tokens: Tensor<B, 2>,
    layers: Layers<B>,
}

/// The network's name in errors.
const NAME: &str = "LLaMA text encoder";

/// The key of decoder layer `i`.
fn layer_key(i: usize) -> String {
    format!("layers.{i}")
}

/// Where the decoder layers' weights live.
#[derive(Clone)]
enum Layers<B: FramePackBackend> {
    /// All on the device (14 GB in fp16 for the published model).
    Resident(Vec<LlamaDecoderLayer<B>>),
    /// Read from their source one at a time during each call, each dropped once it has run:
    /// one layer (436 MB in fp16) on the device at a time ([`Residency::Streamed`]).
    Streamed {
        count: usize,
        source: SharedSource<B>,
    },
}

impl<B: FramePackBackend> std::fmt::Debug for Layers<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resident(layers) => write!(f, "Resident({} layers)", layers.len()),
            Self::Streamed { count, source } => write!(f, "Streamed({count} layers, {source:?})"),
        }
    }
}

impl<B: FramePackBackend> LlamaTextEncoder<B> {
    /// Builds the encoder from `src` (keys as in the checkpoint: `embed_tokens.weight`,
    /// `layers.{i}.…`), computing in `options.dtype` (FramePack: fp16). Only the embedding and
    /// layers `0..config.layers_needed()` are requested.
    ///
    /// With `residency: Streamed` (the low-VRAM mode) only the token embedding goes to the
    /// device now; each decoder layer is read from `src` again when a call reaches it and
    /// dropped after, so the 14 GB of layers never sit on the device together. `src` must
    /// then be one that can be read again ([`TensorSource::shared`]: a checkpoint, whose
    /// mapped files make the re-read cheap, or random weights); its layers are not checked
    /// now (see [`LlamaTextEncoder::from_folder`], which checks them from the headers). LLaMA
    /// takes dense weights and no LoRA: other options are an error.
    pub fn load<S: TensorSource<B>>(
        mut src: S,
        config: LlamaConfig,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        options.check(NAME, true)?;
        let dtype = options.dtype;
        config
            .validate()
            .map_err(|reason| ModelError::input("config", reason))?;
        let embed_tokens = src.tensor(
            "embed_tokens.weight",
            [config.vocab_size, config.hidden_size],
            dtype,
        )?;
        let count = config.layers_needed();
        let layers = match options.residency {
            Residency::Resident => Layers::Resident(
                (0..count)
                    .map(|i| LlamaDecoderLayer::load(&mut src, &layer_key(i), &config, dtype))
                    .collect::<Result<_, _>>()?,
            ),
            Residency::Streamed => Layers::Streamed {
                count,
                source: src.shared().ok_or_else(|| ModelError::UnsupportedOption {
                    network: NAME,
                    option: "`residency: Streamed` from a source that cannot be read again \
                             (stream from a checkpoint or random weights)"
                        .into(),
                })?,
            },
        };
        Ok(Self {
            config,
            dtype,
            embed_tokens,
            layers,
        })
    }

    /// [`LlamaTextEncoder::load`] from the published checkpoint folder (`config.json` +
    /// safetensors shards), accepting keys with or without a `model.` prefix, and failing on
    /// any stored tensor that is neither used nor known to be unused
    /// ([`LlamaConfig::is_unused_key`]). Streamed, every key and shape is checked now from
    /// the files' headers, so a bad checkpoint fails here and not in the middle of a job.
    pub fn from_folder(
        folder: impl AsRef<Path>,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let folder = folder.as_ref();
        let config = LlamaConfig::from_file(folder.join("config.json"))?;
        let files = CheckpointFiles::open(folder)?;
        let prefix = files.prefix_of("embed_tokens.weight", "", "model.");
        let unused = |key: &str| config.is_unused_key(key);
        let streamed = options.residency == Residency::Streamed;
        if streamed {
            let mut recorder = ManifestRecorder::<B>::new(device);
            Self::load(
                &mut recorder,
                config.clone(),
                &LoadOptions::new(options.dtype),
            )?;
            files.check(&recorder.into_entries(), prefix, unused)?;
        }
        let mut src = SafetensorsSource::new(files, device).with_prefix(prefix);
        let model = Self::load(&mut src, config.clone(), options)?;
        if !streamed {
            src.finish(unused)?;
        }
        Ok(model)
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Decoder layers held and run (30 for the published model).
    pub fn num_layers(&self) -> usize {
        match &self.layers {
            Layers::Resident(layers) => layers.len(),
            Layers::Streamed { count, .. } => *count,
        }
    }

    /// `hidden_states[-3]` of the token ids `ids` (a batch of one, no padding): the raw output
    /// of the last needed layer, `[1, ids.len(), hidden]` in the compute dtype.
    ///
    /// The reference pads to 351 tokens with an attention mask; with causal attention and
    /// right padding the valid positions are identical, so only the real tokens are run.
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Tensor<B, 3>, ModelError> {
        let n = ids.len();
        if n == 0 {
            return Err(ModelError::input("ids", "no tokens"));
        }
        if n > self.config.max_position_embeddings {
            return Err(ModelError::input(
                "ids",
                format!(
                    "{n} tokens, more than max_position_embeddings {}",
                    self.config.max_position_embeddings
                ),
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
        let device = self.embed_tokens.device();
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let mut x =
            self.embed_tokens
                .clone()
                .select(0, index)
                .reshape([1, n, self.config.hidden_size]);

        let head_dim = self.config.head_dim();
        let (cos, sin) = rope_tables(n, head_dim, self.config.rope_theta);
        let table = |values: Vec<f32>| {
            Tensor::<B, 2>::from_data(
                TensorData::new(values, [n, head_dim]),
                (&device, DType::F32),
            )
            .cast(self.dtype)
        };
        let (cos, sin) = (table(cos), table(sin));
        match &self.layers {
            Layers::Resident(layers) => {
                for layer in layers {
                    x = layer.forward(x, &cos, &sin);
                }
            }
            Layers::Streamed { count, source } => {
                let mut source = source.clone();
                for i in 0..*count {
                    let key = layer_key(i);
                    let layer =
                        LlamaDecoderLayer::load(&mut source, &key, &self.config, self.dtype)?;
                    x = layer.forward(x, &cos, &sin);
                }
            }
        }
        Ok(x)
    }
}
