//! Conditioning embeddings: sinusoidal timestep features, the `temb` vector, the SigLIP
//! image projection and the multi-scale patch embeddings of the clean context.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::nn::{LoraLinear, LoraSlot, PatchEmbed};
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// Width of the sinusoidal timestep features.
pub const TIMESTEP_FEATURES: usize = 256;

/// Sinusoidal features `[cos(t·f_k) | sin(t·f_k)]`, `f_k = exp(-ln(10000)·k/128)`, for each
/// value of `t`; shape `[len, 256]`, fp32.
///
/// Computed on the host in fp32 with the reference's operation order (diffusers'
/// `get_timestep_embedding`, `flip_sin_to_cos=True`): the guidance value 9984 is a large angle
/// and fp64 "exact" maths would differ from the reference by 1e-3.
pub fn timestep_features(t: &[f32]) -> Vec<f32> {
    let half = TIMESTEP_FEATURES / 2;
    let log_period = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((log_period * k as f32) / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(t.len() * TIMESTEP_FEATURES);
    for &t in t {
        out.extend(freqs.iter().map(|f| (t * f).cos()));
        out.extend(freqs.iter().map(|f| (t * f).sin()));
    }
    out
}

/// Uploads [`timestep_features`] of `t` as a `[len, 256]` tensor of `dtype`.
pub fn timestep_features_tensor<B: Backend>(
    t: &[f32],
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, 2> {
    let data = TensorData::new(timestep_features(t), [t.len(), TIMESTEP_FEATURES]);
    Tensor::<B, 2>::from_data(data, (device, DType::F32)).cast(dtype)
}

/// `Linear → SiLU → Linear` with keys `linear_1`, `linear_2`: diffusers' `TimestepEmbedding`
/// and `PixArtAlphaTextProjection` share this shape.
#[derive(Debug, Clone)]
pub struct SiluMlp<B: FramePackBackend> {
    linear_1: LoraLinear<B>,
    linear_2: LoraLinear<B>,
}

impl<B: FramePackBackend> SiluMlp<B> {
    /// Loads `{prefix}.linear_1` (`in → out`) and `{prefix}.linear_2` (`out → out`).
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            linear_1: LoraLinear::load(
                src,
                &join(prefix, "linear_1"),
                in_features,
                out_features,
                true,
                dtype,
            )?,
            linear_2: LoraLinear::load(
                src,
                &join(prefix, "linear_2"),
                out_features,
                out_features,
                true,
                dtype,
            )?,
        })
    }

    /// The two linear layers, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        out.extend([self.linear_1.slot(), self.linear_2.slot()]);
    }

    /// Applies the MLP to `x` `[batch, in]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(B::silu(self.linear_1.forward(x)))
    }
}

/// `temb = TE_t(t) + TE_g(g) + TP(pooled CLIP)` (`time_text_embed`): one conditioning vector
/// shared by every block.
#[derive(Debug, Clone)]
pub struct ConditionEmbedding<B: FramePackBackend> {
    timestep_embedder: SiluMlp<B>,
    guidance_embedder: Option<SiluMlp<B>>,
    text_embedder: SiluMlp<B>,
}

impl<B: FramePackBackend> ConditionEmbedding<B> {
    /// Loads `{prefix}.timestep_embedder`, `.guidance_embedder` (if `guidance`) and
    /// `.text_embedder`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        hidden: usize,
        pooled_dim: usize,
        guidance: bool,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            timestep_embedder: SiluMlp::load(
                src,
                &join(prefix, "timestep_embedder"),
                TIMESTEP_FEATURES,
                hidden,
                dtype,
            )?,
            guidance_embedder: if guidance {
                Some(SiluMlp::load(
                    src,
                    &join(prefix, "guidance_embedder"),
                    TIMESTEP_FEATURES,
                    hidden,
                    dtype,
                )?)
            } else {
                None
            },
            text_embedder: SiluMlp::load(
                src,
                &join(prefix, "text_embedder"),
                pooled_dim,
                hidden,
                dtype,
            )?,
        })
    }

    /// The linear layers of all embedders, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        self.timestep_embedder.lora_linears(out);
        if let Some(g) = &mut self.guidance_embedder {
            g.lora_linears(out);
        }
        self.text_embedder.lora_linears(out);
    }

    /// `temb` `[batch, hidden]` from per-sample timesteps, guidance values and pooled text.
    /// The sum order `(t + g) + pooled` is FramePack's.
    pub fn forward(
        &self,
        timestep: &[f32],
        guidance: &[f32],
        pooled: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let dtype = pooled.dtype();
        let device = pooled.device();
        let mut temb = self
            .timestep_embedder
            .forward(timestep_features_tensor::<B>(timestep, dtype, &device));
        if let Some(g) = &self.guidance_embedder {
            temb = temb + g.forward(timestep_features_tensor::<B>(guidance, dtype, &device));
        }
        temb + self.text_embedder.forward(pooled)
    }

    /// The timestep branch alone (the token refiner's `temb` has no guidance term).
    pub fn timestep_only(&self, timestep: &[f32], pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        let dtype = pooled.dtype();
        let device = pooled.device();
        self.timestep_embedder
            .forward(timestep_features_tensor::<B>(timestep, dtype, &device))
            + self.text_embedder.forward(pooled)
    }
}

/// `image_projection`: SigLIP features (1152) → 3·hidden → SiLU → hidden.
#[derive(Debug, Clone)]
pub struct ImageProjection<B: FramePackBackend> {
    up: LoraLinear<B>,
    down: LoraLinear<B>,
}

impl<B: FramePackBackend> ImageProjection<B> {
    /// Loads `{prefix}.up` and `{prefix}.down`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_features: usize,
        hidden: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            up: LoraLinear::load(
                src,
                &join(prefix, "up"),
                in_features,
                3 * hidden,
                true,
                dtype,
            )?,
            down: LoraLinear::load(src, &join(prefix, "down"), 3 * hidden, hidden, true, dtype)?,
        })
    }

    /// The two linear layers, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        out.extend([self.up.slot(), self.down.slot()]);
    }

    /// Projects `[batch, tokens, in]` to `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down.forward(B::silu(self.up.forward(x)))
    }
}

/// The packed history embedders (`clean_x_embedder`): full-resolution clean latents at
/// (1,2,2), and 2×/4× compressed history at (2,4,4) and (4,8,8).
#[derive(Debug, Clone)]
pub struct CleanLatentEmbedder<B: FramePackBackend> {
    /// `proj`: kernel (1, 2, 2).
    pub proj: PatchEmbed<B>,
    /// `proj_2x`: kernel (2, 4, 4).
    pub proj_2x: PatchEmbed<B>,
    /// `proj_4x`: kernel (4, 8, 8).
    pub proj_4x: PatchEmbed<B>,
}

impl<B: FramePackBackend> CleanLatentEmbedder<B> {
    /// Loads `{prefix}.proj`, `.proj_2x`, `.proj_4x`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_channels: usize,
        hidden: usize,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            proj: PatchEmbed::load(
                src,
                &join(prefix, "proj"),
                in_channels,
                hidden,
                [1, 2, 2],
                dtype,
            )?,
            proj_2x: PatchEmbed::load(
                src,
                &join(prefix, "proj_2x"),
                in_channels,
                hidden,
                [2, 4, 4],
                dtype,
            )?,
            proj_4x: PatchEmbed::load(
                src,
                &join(prefix, "proj_4x"),
                in_channels,
                hidden,
                [4, 8, 8],
                dtype,
            )?,
        })
    }

    /// The three patch projections, for attaching LoRA adapters.
    pub(crate) fn lora_linears<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        out.extend([self.proj.slot(), self.proj_2x.slot(), self.proj_4x.slot()]);
    }
}

/// Replicate-pads `x` `[b, c, t, h, w]` at the end of t, h and w up to multiples of `kernel`
/// (the reference's `pad_for_3d_conv`).
pub fn pad_to_multiple<B: Backend>(x: Tensor<B, 5>, kernel: [usize; 3]) -> Tensor<B, 5> {
    let mut x = x;
    for (axis, k) in kernel.into_iter().enumerate() {
        let dim = 2 + axis;
        let len = x.dims()[dim];
        let pad = (k - len % k) % k;
        if pad > 0 {
            let last = x.clone().narrow(dim, len - 1, 1);
            let repeated = last.repeat_dim(dim, pad);
            x = Tensor::cat(vec![x, repeated], dim);
        }
    }
    x
}
