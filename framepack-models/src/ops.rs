//! The seam for speed: the hot operations of FramePack's networks.
//!
//! Every network is written once against [`FramePackBackend`]. Its default methods are plain
//! burn tensor code that runs on any backend (the CPU, wgpu); a backend with tuned kernels
//! (CUDA: cuBLASLt GEMMs, flash attention, fused norms) overrides them without touching the
//! model code. The defaults also pin down the numerics the reference uses (which steps run in
//! fp32, where results are rounded back to the compute dtype), so an override has a precise
//! contract to meet.

use burn::tensor::{activation, backend::Backend, module, Bool, DType, Tensor};

/// Free and total bytes of a device's memory (the whole device, every process included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes no allocation holds.
    pub free: u64,
    /// The device's memory.
    pub total: u64,
}

impl DeviceMemory {
    /// Bytes in use (`total - free`).
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.free)
    }
}

/// A burn backend with FramePack's hot operations.
///
/// Tensors follow PyTorch conventions: linear weights are `[out, in]`, attention takes
/// `[batch, sequence, heads, head_dim]` (the layout the projections produce, no transposes in
/// the model code).
pub trait FramePackBackend: Backend {
    /// `y = x · Wᵀ + b` with `weight` in PyTorch's `[out, in]` layout.
    fn dense<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        portable::dense::<Self, D>(x, weight, bias)
    }

    /// Softmax attention with scale `1/sqrt(head_dim)` over `[batch, seq, heads, head_dim]`.
    ///
    /// `masked_keys` (`[batch, seq_k]`, true = ignore) hides padded keys; `None` is dense
    /// attention, the batch-1 path of the reference.
    fn attend(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        masked_keys: Option<Tensor<Self, 2, Bool>>,
    ) -> Tensor<Self, 4> {
        portable::attend::<Self>(q, k, v, masked_keys)
    }

    /// Causal softmax attention (query `i` sees keys `0..=i`) with scale `1/sqrt(head_dim)` over
    /// `[batch, seq, heads, head_dim]`, the attention of the text encoders (LLaMA, CLIP).
    ///
    /// `k` and `v` may have fewer heads than `q` (grouped-query attention, LLaMA-3's 32 query
    /// heads over 8 key/value heads): query head `h` reads key/value head
    /// `h / (heads / kv_heads)`. The default repeats the key/value heads; a kernel can read
    /// them in place.
    fn attend_causal(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        portable::attend_causal::<Self>(q, k, v)
    }

    /// Layer normalisation over the last dimension, statistics and affine in fp32, result in
    /// the input's dtype (PyTorch's `layer_norm` on bf16).
    fn layer_norm_fp32<const D: usize>(
        x: Tensor<Self, D>,
        weight: Option<Tensor<Self, 1>>,
        bias: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> Tensor<Self, D> {
        portable::layer_norm_fp32::<Self, D>(x, weight, bias, eps)
    }

    /// AdaLN modulation `x · (1 + scale) + shift`, in the compute dtype like the reference.
    /// `shift` and `scale` broadcast over the sequence (`[batch, 1, dim]`).
    fn modulate(
        x: Tensor<Self, 3>,
        shift: Tensor<Self, 3>,
        scale: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        portable::modulate::<Self>(x, shift, scale)
    }

    /// RMS normalisation over the last dimension: the statistic and the division in fp32, the
    /// result rounded to the input dtype before the weight (FramePack's patched `RMSNorm`).
    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        portable::rms_norm::<Self, D>(x, weight, eps)
    }

    /// Rotary embedding with interleaved pairs `(2i, 2i+1)` on `[batch, seq, heads, head_dim]`,
    /// with per-token `cos`/`sin` tables `[seq, head_dim]` in fp32. Computed in fp32 and rounded
    /// back to the input dtype.
    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 2>, sin: Tensor<Self, 2>) -> Tensor<Self, 4> {
        portable::rope::<Self>(x, cos, sin)
    }

    /// Free and total memory of `device` in bytes, where the backend can tell (`None` on the
    /// CPU): what a pipeline's automatic memory mode reads, and what benchmarks report.
    fn device_memory(_device: &Self::Device) -> Option<DeviceMemory> {
        None
    }

    /// The streamer that moves transformer blocks between host and device in the low-VRAM
    /// mode (see [`crate::streaming`]): by default, synchronous uploads from ordinary memory.
    fn block_streamer(device: &Self::Device) -> Box<dyn crate::streaming::BlockStreamer<Self>> {
        Box::new(crate::streaming::PortableStreamer::<Self>::new(device))
    }

    /// LayerNorm without affine parameters (fp32 statistics, eps `eps`) followed by the AdaLN
    /// modulation `· (1 + scale) + shift`: the input of every block's attention and MLP.
    fn layer_norm_modulate(
        x: Tensor<Self, 3>,
        shift: Tensor<Self, 3>,
        scale: Tensor<Self, 3>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        Self::modulate(Self::layer_norm_fp32(x, None, None, eps), shift, scale)
    }

    /// Per-head RMS normalisation of `[batch, seq, heads, head_dim]` followed by the rotary
    /// embedding of the first `cos.dims()[0]` tokens of every sequence (the image tokens; text
    /// tokens come after them and are not rotated).
    fn rms_norm_rope(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 1>,
        eps: f64,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
    ) -> Tensor<Self, 4> {
        let normed = Self::rms_norm(x, weight, eps);
        let seq = normed.dims()[1];
        let rotated = cos.dims()[0];
        if rotated == seq {
            Self::rope(normed, cos, sin)
        } else {
            let head = Self::rope(normed.clone().narrow(1, 0, rotated), cos, sin);
            Tensor::cat(vec![head, normed.narrow(1, rotated, seq - rotated)], 1)
        }
    }

    /// `GELU_tanh(x · Wᵀ + b)`: the first half of every feed-forward network.
    fn dense_gelu<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        Self::gelu_tanh(Self::dense(x, weight, bias))
    }

    /// Gated residual `x + gate · y`, the update of every transformer block.
    fn gated_residual(
        x: Tensor<Self, 3>,
        gate: Tensor<Self, 3>,
        y: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        portable::gated_residual::<Self>(x, gate, y)
    }

    /// GELU with the tanh approximation, evaluated in fp32 and rounded once (as PyTorch does
    /// for bf16 inputs).
    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        portable::gelu_tanh::<Self, D>(x)
    }

    /// SiLU `x · sigmoid(x)`, evaluated in fp32 and rounded once.
    fn silu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        portable::silu::<Self, D>(x)
    }
}

/// The portable implementations of [`FramePackBackend`]: plain burn ops that run on every
/// backend. Tuned backends call them for the cases their kernels do not cover.
pub mod portable {
    use super::*;

    /// `y = x · Wᵀ + b` with `weight` in PyTorch's `[out, in]` layout.
    pub fn dense<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) -> Tensor<B, D> {
        let dims = x.dims();
        let [out_features, in_features] = weight.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let y = x.reshape([rows, in_features]).matmul(weight.transpose());
        let y = match bias {
            Some(b) => y + b.unsqueeze::<2>(),
            None => y,
        };
        let mut out_dims = dims;
        out_dims[D - 1] = out_features;
        y.reshape(out_dims)
    }

    /// Softmax attention with scale `1/sqrt(head_dim)` over `[batch, seq, heads, head_dim]`.
    ///
    /// `masked_keys` (`[batch, seq_k]`, true = ignore) hides padded keys; `None` is dense
    /// attention, the batch-1 path of the reference.
    pub fn attend<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        masked_keys: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 4> {
        let [batch, seq_q, heads, _] = q.dims();
        let seq_k = k.dims()[1];
        let mask = masked_keys.map(|m| {
            m.reshape([batch, 1, 1, seq_k])
                .expand([batch, heads, seq_q, seq_k])
        });
        let out = module::attention(
            q.swap_dims(1, 2),
            k.swap_dims(1, 2),
            v.swap_dims(1, 2),
            mask,
            None,
            Default::default(),
        );
        out.swap_dims(1, 2)
    }

    /// Causal softmax attention (query `i` sees keys `0..=i`) with scale `1/sqrt(head_dim)` over
    /// `[batch, seq, heads, head_dim]`, the attention of the text encoders (LLaMA, CLIP).
    ///
    /// `k` and `v` may have fewer heads than `q` (grouped-query attention, LLaMA-3's 32 query
    /// heads over 8 key/value heads): query head `h` reads key/value head
    /// `h / (heads / kv_heads)`. The default repeats the key/value heads; a kernel can read
    /// them in place.
    pub fn attend_causal<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let [batch, _, heads, _] = q.dims();
        let repeat = |x: Tensor<B, 4>| {
            let [_, seq, kv_heads, head_dim] = x.dims();
            if kv_heads == heads {
                return x;
            }
            let group = heads / kv_heads;
            x.unsqueeze_dim::<5>(3)
                .expand([batch, seq, kv_heads, group, head_dim])
                .reshape([batch, seq, heads, head_dim])
        };
        let out = module::attention(
            q.swap_dims(1, 2),
            repeat(k).swap_dims(1, 2),
            repeat(v).swap_dims(1, 2),
            None,
            None,
            burn::tensor::ops::AttentionModuleOptions {
                is_causal: true,
                ..Default::default()
            },
        );
        out.swap_dims(1, 2)
    }

    /// Layer normalisation over the last dimension, statistics and affine in fp32, result in
    /// the input's dtype (PyTorch's `layer_norm` on bf16).
    pub fn layer_norm_fp32<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        weight: Option<Tensor<B, 1>>,
        bias: Option<Tensor<B, 1>>,
        eps: f64,
    ) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
        let mut y = centered / var.add_scalar(eps).sqrt();
        if let Some(w) = weight {
            y = y * w.cast(DType::F32).unsqueeze::<D>();
        }
        if let Some(b) = bias {
            y = y + b.cast(DType::F32).unsqueeze::<D>();
        }
        y.cast(dtype)
    }

    /// AdaLN modulation `x · (1 + scale) + shift`, in the compute dtype like the reference.
    /// `shift` and `scale` broadcast over the sequence (`[batch, 1, dim]`).
    pub fn modulate<B: Backend>(
        x: Tensor<B, 3>,
        shift: Tensor<B, 3>,
        scale: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        x * scale.add_scalar(1.0) + shift
    }

    /// RMS normalisation over the last dimension: the statistic and the division in fp32, the
    /// result rounded to the input dtype before the weight (FramePack's patched `RMSNorm`).
    pub fn rms_norm<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        weight: Tensor<B, 1>,
        eps: f64,
    ) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let var = x.clone().powi_scalar(2).mean_dim(D - 1);
        let y = (x / var.add_scalar(eps).sqrt()).cast(dtype);
        y * weight.cast(dtype).unsqueeze::<D>()
    }

    /// Rotary embedding with interleaved pairs `(2i, 2i+1)` on `[batch, seq, heads, head_dim]`,
    /// with per-token `cos`/`sin` tables `[seq, head_dim]` in fp32. Computed in fp32 and rounded
    /// back to the input dtype.
    pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 4> {
        let dtype = x.dtype();
        let [b, s, h, d] = x.dims();
        let x = x.cast(DType::F32);
        let pairs = x.clone().reshape([b, s, h, d / 2, 2]);
        let real = pairs.clone().narrow(4, 0, 1);
        let imag = pairs.narrow(4, 1, 1);
        let rotated = Tensor::cat(vec![imag.neg(), real], 4).reshape([b, s, h, d]);
        let cos = cos.reshape([1, s, 1, d]);
        let sin = sin.reshape([1, s, 1, d]);
        (x * cos + rotated * sin).cast(dtype)
    }

    /// Gated residual `x + gate · y`, the update of every transformer block.
    pub fn gated_residual<B: Backend>(
        x: Tensor<B, 3>,
        gate: Tensor<B, 3>,
        y: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        x + y * gate
    }

    /// GELU with the tanh approximation, evaluated in fp32 and rounded once (as PyTorch does
    /// for bf16 inputs).
    pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        activation::gelu_approximate(x.cast(DType::F32)).cast(dtype)
    }

    /// SiLU `x · sigmoid(x)`, evaluated in fp32 and rounded once.
    pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        activation::silu(x.cast(DType::F32)).cast(dtype)
    }
}

#[cfg(feature = "cpu")]
impl FramePackBackend for burn::backend::Flex {}

#[cfg(feature = "ndarray")]
impl FramePackBackend for burn::backend::NdArray {}

// The CUDA backend (`crate::cuda::CudaBackend`) implements the trait with tuned kernels.

#[cfg(feature = "wgpu")]
impl<F, I> FramePackBackend for burn::backend::Wgpu<F, I> where burn::backend::Wgpu<F, I>: Backend {}
