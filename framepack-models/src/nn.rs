//! Small building blocks shared by the networks, loaded by their checkpoint key names.

use burn::tensor::{DType, Tensor};

use crate::fp8::Fp8Weight;
use crate::lora::LowRankAdapter;
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// How a linear layer keeps its weight (named `dense`, `fp8` in run records). Whether FP8
/// products run on FP8 tensor cores is an execution choice, not a property of the weights:
/// [`RuntimeOptions::fp8_tensor_cores`](crate::runtime::RuntimeOptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// In the compute dtype.
    #[default]
    Dense,
    /// As FP8 codes with per-row scales ([`crate::fp8`]), expanded at every use (or, with
    /// the FP8 tensor-core option on a GPU that has them, multiplied as they are). Records
    /// of earlier versions name it `fp8_tensor_cores` when that option was on.
    #[serde(alias = "fp8_tensor_cores")]
    Fp8,
}

impl WeightFormat {
    /// Whether weights are kept as FP8 codes.
    pub fn is_fp8(self) -> bool {
        self == Self::Fp8
    }
}

/// Whether FP8 products may run on FP8 tensor cores on this thread
/// ([`RuntimeOptions::fp8_tensor_cores`](crate::runtime::RuntimeOptions)).
fn fp8_tensor_cores() -> bool {
    crate::runtime::with_current(|o| o.fp8_tensor_cores)
}

/// A linear layer's weight `[out, in]`, dense or FP8.
#[derive(Debug, Clone)]
pub enum Weight<B: FramePackBackend> {
    /// In the compute dtype.
    Dense(Tensor<B, 2>),
    /// FP8 codes and per-row scales.
    Fp8(Fp8Weight<B>),
}

impl<B: FramePackBackend> Weight<B> {
    /// The weight in the compute dtype (an FP8 weight is expanded: a new tensor each call).
    pub fn tensor(&self) -> Tensor<B, 2> {
        match self {
            Self::Dense(w) => w.clone(),
            Self::Fp8(w) => w.dequantize(),
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(w) => w.dims(),
            Self::Fp8(w) => w.dims(),
        }
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Dense(w) => w.dtype(),
            Self::Fp8(w) => w.dtype,
        }
    }

    /// The device the weight lives on.
    pub fn device(&self) -> B::Device {
        match self {
            Self::Dense(w) => w.device(),
            Self::Fp8(w) => w.codes.device(),
        }
    }

    /// The weights stacked along the output dimension. FP8 parts stay FP8 (per-row scales
    /// concatenate like the rows); a mix is stacked dense.
    pub fn cat_rows(parts: Vec<Self>) -> Self {
        let fp8: Vec<&Fp8Weight<B>> = parts
            .iter()
            .filter_map(|w| match w {
                Self::Fp8(w) => Some(w),
                Self::Dense(_) => None,
            })
            .collect();
        match fp8.first() {
            Some(first) if fp8.len() == parts.len() => Self::Fp8(Fp8Weight {
                codes: Tensor::cat(fp8.iter().map(|w| w.codes.clone()).collect(), 0),
                scales: Tensor::cat(fp8.iter().map(|w| w.scales.clone()).collect(), 0),
                dtype: first.dtype,
            }),
            _ => Self::Dense(Tensor::cat(parts.iter().map(Self::tensor).collect(), 0)),
        }
    }
}

/// A linear layer holding its weight in PyTorch's `[out, in]` layout (no transpose on load).
#[derive(Debug, Clone)]
pub struct Linear<B: FramePackBackend> {
    /// `[out, in]`.
    pub weight: Weight<B>,
    /// `[out]`.
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: FramePackBackend> Linear<B> {
    /// A layer with a dense weight.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias,
        }
    }

    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`) as `dtype`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Self::load_as(
            src,
            prefix,
            [in_features, out_features],
            bias,
            dtype,
            WeightFormat::Dense,
        )
    }

    /// [`Linear::load`] keeping the weight in `format` (the bias stays in `dtype`).
    pub fn load_as<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        [in_features, out_features]: [usize; 2],
        bias: bool,
        dtype: DType,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let key = join(prefix, "weight");
        let shape = [out_features, in_features];
        let weight = match format {
            WeightFormat::Dense => Weight::Dense(src.tensor(&key, shape, dtype)?),
            WeightFormat::Fp8 => Weight::Fp8(src.fp8_weight(&key, shape, dtype)?),
        };
        let bias = if bias {
            Some(src.tensor(&join(prefix, "bias"), [out_features], dtype)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// `x · Wᵀ + b` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.weight {
            Weight::Fp8(w) if fp8_tensor_cores() => B::dense_fp8(x, w, self.bias.clone(), false),
            weight => B::dense(x, weight.tensor(), self.bias.clone()),
        }
    }

    /// `GELU_tanh(x · Wᵀ + b)`, fused where the backend can.
    pub fn forward_gelu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.weight {
            Weight::Fp8(w) if fp8_tensor_cores() => B::dense_fp8(x, w, self.bias.clone(), true),
            weight => B::dense_gelu(x, weight.tensor(), self.bias.clone()),
        }
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
        Self::load_as(
            src,
            prefix,
            [in_features, out_features],
            bias,
            dtype,
            WeightFormat::Dense,
        )
    }

    /// [`LoraLinear::load`] keeping the weight in `format`.
    pub fn load_as<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        [in_features, out_features]: [usize; 2],
        bias: bool,
        dtype: DType,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let linear = Linear::load_as(
            src,
            prefix,
            [in_features, out_features],
            bias,
            dtype,
            format,
        )?;
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

    /// The layer as LoRA sees it.
    pub(crate) fn slot(&mut self) -> LoraSlot<'_, B> {
        LoraSlot {
            key: &self.key,
            shape: &self.shape,
            weight: &self.linear.weight,
            adapter: &mut self.adapter,
        }
    }
}

/// One checkpoint linear layer as LoRA sees it: its key, its stored shape, the weight whose
/// dtype and device the factors take, and its adapter. A [`FusedLinear`] gives one slot per
/// part, so LoRA files keyed by `attn.to_q`, `attn.to_k`, … still find their layers.
pub struct LoraSlot<'a, B: FramePackBackend> {
    key: &'a str,
    shape: &'a [usize],
    weight: &'a Weight<B>,
    adapter: &'a mut Option<LowRankAdapter<B>>,
}

impl<B: FramePackBackend> LoraSlot<'_, B> {
    /// The checkpoint key, without `.weight`.
    pub fn key(&self) -> &str {
        self.key
    }

    /// The weight's stored shape.
    pub fn shape(&self) -> &[usize] {
        self.shape
    }

    /// The adapter, if one is set.
    pub fn adapter(&self) -> Option<&LowRankAdapter<B>> {
        self.adapter.as_ref()
    }

    /// The dtype adapter factors are stored in (the layer's).
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// The device the layer lives on.
    pub fn device(&self) -> B::Device {
        self.weight.device()
    }

    pub(crate) fn set_adapter(&mut self, adapter: Option<LowRankAdapter<B>>) {
        *self.adapter = adapter;
    }
}

/// One layer of a [`FusedLinear`]: its key, stored shape and adapter.
#[derive(Debug, Clone)]
struct FusedPart<B: FramePackBackend> {
    key: String,
    shape: Vec<usize>,
    adapter: Option<LowRankAdapter<B>>,
}

/// Linear layers that read the same input (the q, k and v projections), run as one GEMM over
/// their weights concatenated along the output dimension.
///
/// One `[tokens, hidden] × [hidden, 3·hidden]` product keeps the tensor cores busier than three
/// `hidden × hidden` ones and costs one launch instead of three. Each part keeps its checkpoint
/// key: the weights load (and LoRAs merge at load) part by part, and adapters attach per part.
#[derive(Debug, Clone)]
pub struct FusedLinear<B: FramePackBackend> {
    /// `[Σ out, in]`.
    linear: Linear<B>,
    parts: Vec<FusedPart<B>>,
}

impl<B: FramePackBackend> FusedLinear<B> {
    /// Loads `{prefix}.weight` `[out, in]` and `{prefix}.bias` for every prefix, concatenated in
    /// the order given.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefixes: &[String],
        [in_features, out_features]: [usize; 2],
        dtype: DType,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let (mut weights, mut biases, mut parts) = (Vec::new(), Vec::new(), Vec::new());
        for prefix in prefixes {
            let linear = Linear::load_as(
                src,
                prefix,
                [in_features, out_features],
                true,
                dtype,
                format,
            )?;
            weights.push(linear.weight);
            biases.extend(linear.bias);
            parts.push(FusedPart {
                key: prefix.clone(),
                shape: vec![out_features, in_features],
                adapter: None,
            });
        }
        let weight = Weight::cat_rows(weights);
        let linear = Linear {
            weight,
            bias: Some(Tensor::cat(biases, 0)),
        };
        Ok(Self { linear, parts })
    }

    /// All parts' outputs side by side, `[…, Σ out]`, each with its adapter's update.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let out = self.linear.forward(x.clone());
        if self.parts.iter().all(|p| p.adapter.is_none()) {
            return out;
        }
        let mut dims = x.dims();
        let updates = self
            .parts
            .iter()
            .map(|part| match &part.adapter {
                Some(adapter) => adapter.forward(x.clone()),
                None => {
                    dims[D - 1] = part.shape[0];
                    Tensor::zeros(dims, (&x.device(), out.dtype()))
                }
            })
            .collect();
        out + Tensor::cat(updates, D - 1)
    }

    /// The concatenated layer.
    pub fn linear(&self) -> &Linear<B> {
        &self.linear
    }

    /// One LoRA slot per part, in load order.
    pub(crate) fn slots<'a>(&'a mut self, out: &mut Vec<LoraSlot<'a, B>>) {
        let weight = &self.linear.weight;
        out.extend(self.parts.iter_mut().map(|part| LoraSlot {
            key: &part.key,
            shape: &part.shape,
            weight,
            adapter: &mut part.adapter,
        }));
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
        let linear = Linear::new(
            weight.reshape([out_channels, in_channels * kt * kh * kw]),
            Some(bias),
        );
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

    /// The projection's LoRA slot (a linear layer over flattened patches).
    pub(crate) fn slot(&mut self) -> LoraSlot<'_, B> {
        self.proj.slot()
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

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::weights::RandomSource;

    type B = crate::CpuBackend;

    /// The fused GEMM gives each part exactly what the part's own layer gives, in load order.
    #[test]
    fn fused_linear_equals_its_parts() {
        let device = Default::default();
        let keys = ["a.to_q", "a.to_k", "a.to_v"].map(String::from);
        let mut src = RandomSource::<B>::host(&device, 3, 0.2);
        let fused =
            FusedLinear::load(&mut src, &keys, [16, 8], DType::F32, WeightFormat::Dense).unwrap();
        let mut src = RandomSource::<B>::host(&device, 3, 0.2);
        let x = Tensor::<B, 3>::random([2, 5, 16], burn::tensor::Distribution::Default, &device);
        let out = fused.forward(x.clone());
        assert_eq!(out.dims(), [2, 5, 24]);
        for (i, key) in keys.iter().enumerate() {
            let part = Linear::load(&mut src, key, 16, 8, true, DType::F32).unwrap();
            let expected = part.forward(x.clone());
            let got = out.clone().narrow(2, 8 * i, 8);
            let diff = (got - expected).abs().max().into_scalar();
            assert!(diff < 1e-6, "{key}: max difference {diff}");
        }
    }
}
