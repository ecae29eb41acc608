//! Small building blocks shared by the networks, loaded by their checkpoint key names.

use burn::tensor::{DType, Tensor};

use crate::lora::LowRankAdapter;
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// A linear layer holding its weight in PyTorch's `[out, in]` layout (no transpose on load).
#[derive(Debug, Clone)]
pub struct Linear<B: FramePackBackend> {
    /// `[out, in]`.
    pub weight: Tensor<B, 2>,
    /// `[out]`.
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: FramePackBackend> Linear<B> {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`) as `dtype`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let weight = src.tensor(&join(prefix, "weight"), [out_features, in_features], dtype)?;
        let bias = if bias {
            Some(src.tensor(&join(prefix, "bias"), [out_features], dtype)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// `x · Wᵀ + b` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::dense(x, self.weight.clone(), self.bias.clone())
    }

    /// `GELU_tanh(x · Wᵀ + b)`, fused where the backend can.
    pub fn forward_gelu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::dense_gelu(x, self.weight.clone(), self.bias.clone())
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

/// A [`Linear`] that knows its checkpoint key and can carry a low-rank adapter (LoRA).
///
/// The transformer builds all its linear layers as this type so that
/// [`FramePackTransformer::set_lora_adapters`](crate::transformer::FramePackTransformer::set_lora_adapters)
/// can find them by key. Without an adapter the forward is exactly [`Linear`]'s.
#[derive(Debug, Clone)]
pub struct LoraLinear<B: FramePackBackend> {
    linear: Linear<B>,
    /// Checkpoint key without `.weight`.
    key: String,
    /// The weight's shape as stored (`[out, in]`, or the kernel of a patch embedding).
    shape: Vec<usize>,
    adapter: Option<LowRankAdapter<B>>,
}

impl<B: FramePackBackend> LoraLinear<B> {
    /// [`Linear::load`], remembering `prefix` as the layer's key.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let linear = Linear::load(src, prefix, in_features, out_features, bias, dtype)?;
        Ok(Self::new(linear, prefix, vec![out_features, in_features]))
    }

    /// Wraps a loaded layer whose weight is stored under `{key}.weight` with `shape`.
    pub fn new(linear: Linear<B>, key: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            linear,
            key: key.into(),
            shape,
            adapter: None,
        }
    }

    /// `x · Wᵀ + b`, plus the adapter's low-rank update when one is set.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.adapter {
            None => self.linear.forward(x),
            Some(adapter) => self.linear.forward(x.clone()) + adapter.forward(x),
        }
    }

    /// `GELU_tanh` of [`LoraLinear::forward`] (fused where the backend can, without adapter).
    pub fn forward_gelu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.adapter {
            None => self.linear.forward_gelu(x),
            Some(_) => B::gelu_tanh(self.forward(x)),
        }
    }

    /// The base layer.
    pub fn linear(&self) -> &Linear<B> {
        &self.linear
    }

    /// The checkpoint key, without `.weight`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The weight's stored shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The adapter, if one is set.
    pub fn adapter(&self) -> Option<&LowRankAdapter<B>> {
        self.adapter.as_ref()
    }

    pub(crate) fn set_adapter(&mut self, adapter: Option<LowRankAdapter<B>>) {
        self.adapter = adapter;
    }
}

/// Layer normalisation over the last dimension, with or without an affine transform.
#[derive(Debug, Clone)]
pub struct LayerNorm<B: FramePackBackend> {
    weight: Option<Tensor<B, 1>>,
    bias: Option<Tensor<B, 1>>,
    eps: f64,
}

impl<B: FramePackBackend> LayerNorm<B> {
    /// A normalisation without parameters (`elementwise_affine=False`).
    pub fn plain(eps: f64) -> Self {
        Self {
            weight: None,
            bias: None,
            eps,
        }
    }

    /// Loads `{prefix}.weight` and `{prefix}.bias`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        dim: usize,
        eps: f64,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            weight: Some(src.tensor(&join(prefix, "weight"), [dim], dtype)?),
            bias: Some(src.tensor(&join(prefix, "bias"), [dim], dtype)?),
            eps,
        })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::layer_norm_fp32(x, self.weight.clone(), self.bias.clone(), self.eps)
    }
}

/// RMS normalisation with a learned scale (the q/k norms of the transformer).
#[derive(Debug, Clone)]
pub struct RmsNorm<B: FramePackBackend> {
    weight: Tensor<B, 1>,
    eps: f64,
}

impl<B: FramePackBackend> RmsNorm<B> {
    /// Loads `{prefix}.weight` of size `dim`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        dim: usize,
        eps: f64,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            weight: src.tensor(&join(prefix, "weight"), [dim], dtype)?,
            eps,
        })
    }

    /// Normalises `x` over its last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::rms_norm(x, self.weight.clone(), self.eps)
    }

    /// Normalises the heads of `x` `[batch, seq, heads, head_dim]` and rotates the first
    /// `cos.dims()[0]` tokens.
    pub fn forward_rope(
        &self,
        x: Tensor<B, 4>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
    ) -> Tensor<B, 4> {
        B::rms_norm_rope(x, self.weight.clone(), self.eps, cos, sin)
    }
}

/// A Conv3d whose kernel equals its stride (a patch embedding), run as patchify + GEMM.
///
/// The stored `[out, in, kt, kh, kw]` kernel is viewed as `[out, in·kt·kh·kw]`: each patch,
/// flattened with the channel slowest, is one row of the GEMM. This is exactly the
/// convolution, and it sends the work through [`FramePackBackend::dense`].
#[derive(Debug, Clone)]
pub struct PatchEmbed<B: FramePackBackend> {
    proj: LoraLinear<B>,
    kernel: [usize; 3],
}

impl<B: FramePackBackend> PatchEmbed<B> {
    /// Loads the Conv3d `{prefix}.weight` `[out, in, kt, kh, kw]` and `{prefix}.bias`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 3],
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let [kt, kh, kw] = kernel;
        let weight: Tensor<B, 5> = src.tensor(
            &join(prefix, "weight"),
            [out_channels, in_channels, kt, kh, kw],
            dtype,
        )?;
        let bias = src.tensor(&join(prefix, "bias"), [out_channels], dtype)?;
        let linear = Linear {
            weight: weight.reshape([out_channels, in_channels * kt * kh * kw]),
            bias: Some(bias),
        };
        Ok(Self {
            proj: LoraLinear::new(linear, prefix, vec![out_channels, in_channels, kt, kh, kw]),
            kernel,
        })
    }

    /// Embeds `x` `[batch, channels, t, h, w]` (each a multiple of the kernel) into tokens
    /// `[batch, t'·h'·w', out]`, flattened in `(t, y, x)` row-major order.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 3> {
        let [b, c, t, h, w] = x.dims();
        let [kt, kh, kw] = self.kernel;
        let (nt, nh, nw) = (t / kt, h / kh, w / kw);
        let patches = x
            .reshape([b, c, nt, kt, nh, kh, nw, kw])
            .permute([0, 2, 4, 6, 1, 3, 5, 7])
            .reshape([b, nt * nh * nw, c * kt * kh * kw]);
        self.proj.forward(patches)
    }

    /// The patch kernel (= stride) `(t, h, w)`.
    pub fn kernel(&self) -> [usize; 3] {
        self.kernel
    }

    /// The projection, as a linear layer over flattened patches.
    pub(crate) fn proj_mut(&mut self) -> &mut LoraLinear<B> {
        &mut self.proj
    }
}

/// How an [`EncoderLayer`] attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderAttention {
    /// Token `i` sees tokens `0..=i` (CLIP's text tower).
    Causal,
    /// Every token sees every token (SigLIP).
    Bidirectional,
}

/// The MLP activation of an [`EncoderLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderActivation {
    /// `u · σ(1.702 u)`, op by op in the compute dtype (CLIP-L's `quick_gelu`).
    QuickGelu,
    /// Exact (erf) GELU in fp32, rounded back (transformers' `gelu`).
    Gelu,
    /// GELU with the tanh approximation (SigLIP's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// The pre-LN encoder layer of transformers' CLIP and SigLIP towers (`encoder.layers.{i}`):
/// `x += out_proj(attn(LN1(x)))`, then `x += fc2(act(fc1(LN2(x))))`.
#[derive(Debug, Clone)]
pub struct EncoderLayer<B: FramePackBackend> {
    layer_norm1: LayerNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    layer_norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    heads: usize,
    attention: EncoderAttention,
    activation: EncoderActivation,
}

/// The shape of an [`EncoderLayer`].
#[derive(Debug, Clone, Copy)]
pub struct EncoderLayerConfig {
    /// Model width.
    pub hidden: usize,
    /// MLP width.
    pub mlp: usize,
    /// Attention heads.
    pub heads: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// How tokens attend.
    pub attention: EncoderAttention,
    /// The MLP activation.
    pub activation: EncoderActivation,
}

impl<B: FramePackBackend> EncoderLayer<B> {
    /// Loads `{prefix}.layer_norm1`, `.self_attn.{q,k,v,out}_proj`, `.layer_norm2` and
    /// `.mlp.fc{1,2}`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        c: EncoderLayerConfig,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        let p = |name: &str| join(prefix, name);
        let (d, mlp, eps) = (c.hidden, c.mlp, c.eps);
        Ok(Self {
            layer_norm1: LayerNorm::load(src, &p("layer_norm1"), d, eps, dtype)?,
            q_proj: Linear::load(src, &p("self_attn.q_proj"), d, d, true, dtype)?,
            k_proj: Linear::load(src, &p("self_attn.k_proj"), d, d, true, dtype)?,
            v_proj: Linear::load(src, &p("self_attn.v_proj"), d, d, true, dtype)?,
            out_proj: Linear::load(src, &p("self_attn.out_proj"), d, d, true, dtype)?,
            layer_norm2: LayerNorm::load(src, &p("layer_norm2"), d, eps, dtype)?,
            fc1: Linear::load(src, &p("mlp.fc1"), d, mlp, true, dtype)?,
            fc2: Linear::load(src, &p("mlp.fc2"), mlp, d, true, dtype)?,
            heads: c.heads,
            attention: c.attention,
            activation: c.activation,
        })
    }

    /// The layer on `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let split = |t: Tensor<B, 3>| t.reshape([b, s, self.heads, d / self.heads]);
        let h = self.layer_norm1.forward(x.clone());
        let (q, k, v) = (
            split(self.q_proj.forward(h.clone())),
            split(self.k_proj.forward(h.clone())),
            split(self.v_proj.forward(h)),
        );
        let attn = match self.attention {
            EncoderAttention::Causal => B::attend_causal(q, k, v),
            EncoderAttention::Bidirectional => B::attend(q, k, v, None),
        };
        let x = x + self.out_proj.forward(attn.reshape([b, s, d]));

        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = match self.activation {
            EncoderActivation::QuickGelu => {
                h.clone() * burn::tensor::activation::sigmoid(h.mul_scalar(1.702))
            }
            EncoderActivation::Gelu => {
                let dtype = h.dtype();
                burn::tensor::activation::gelu(h.cast(DType::F32)).cast(dtype)
            }
            EncoderActivation::GeluTanh => B::gelu_tanh(h),
        };
        x + self.fc2.forward(h)
    }
}
