//! The seam for speed: the hot operations of FramePack's networks.
//!
//! Every network is written once against [`FramePackBackend`]. Its default methods are plain
//! burn tensor code that runs on any backend (the CPU, wgpu); a backend with tuned kernels
//! (CUDA: cuBLASLt GEMMs, flash attention, fused norms) overrides them without touching the
//! model code. The defaults also pin down the numerics the reference uses (which steps run in
//! fp32, where results are rounded back to the compute dtype), so an override has a precise
//! contract to meet.

use burn::tensor::{
    activation, backend::Backend, module, Bool, DType, Int, IntDType, Tensor, TensorData,
};

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

    /// GroupNorm of `x` `[batch, channels, t, h, w]` with `groups` groups and an affine
    /// `weight`/`bias` `[channels]`: statistics over each group's channels and positions in
    /// fp32, the result `x · (γ·rstd) + (β − mean·γ·rstd)` rounded once to `x`'s dtype, then
    /// (`silu`) SiLU of that rounded value, evaluated in fp32 and rounded again: the VAE's
    /// `GroupNorm` and `SiLU(GroupNorm)` as PyTorch computes them in fp16.
    fn group_norm(
        x: Tensor<Self, 5>,
        weight: Tensor<Self, 1>,
        bias: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Tensor<Self, 5> {
        group_norm_unfused(x, weight, bias, groups, eps, silu)
    }

    /// The VAE's causal convolution: `x` replicate-padded by `padding[0]` frames in front and
    /// `padding[1]`/`padding[2]` on both sides of height and width, then
    /// [`conv3d_valid`](FramePackBackend::conv3d_valid). Overrides can build the padded input
    /// in the layout their convolution wants in one pass (at the VAE's full resolution each
    /// copy is hundreds of megabytes).
    fn conv3d_replicate_padded(
        x: Tensor<Self, 5>,
        weight: Tensor<Self, 5>,
        bias: Option<Tensor<Self, 1>>,
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Tensor<Self, 5> {
        pad_then_conv3d(x, weight, bias, stride, padding)
    }

    /// A 3D convolution without padding ("valid"; the VAE pads its inputs itself): `x`
    /// `[batch, in, t, h, w]`, `weight` `[out, in, kt, kh, kw]`, `bias` `[out]`, one stride per
    /// axis. Overrides should accumulate in fp32 and round once to `x`'s dtype, as cuDNN does
    /// for the reference's fp16 VAE.
    fn conv3d_valid(
        x: Tensor<Self, 5>,
        weight: Tensor<Self, 5>,
        bias: Option<Tensor<Self, 1>>,
        stride: [usize; 3],
    ) -> Tensor<Self, 5> {
        portable::conv3d_valid::<Self>(x, weight, bias, stride)
    }

    /// Runs `work` with the device's new buffers sized exactly, each freed buffer reused only
    /// by a request of the same size, instead of carved from large pooled pages. In a loop of
    /// fixed shapes (the low-VRAM mode's streamed blocks, step after step) the device then
    /// holds little more than the live tensors; burn's default pools reserve pages of up to a
    /// quarter of the device for large tensors. Freed buffers stay reserved until
    /// [`Backend::memory_cleanup`]. By default `work` just runs.
    fn with_exact_allocations<R>(_device: &Self::Device, work: impl FnOnce() -> R) -> R {
        work()
    }

    /// `y = x · Wᵀ + b` (then GELU-tanh when `gelu`) for an FP8 weight, called when the
    /// thread's [`RuntimeOptions::fp8_tensor_cores`](crate::runtime::RuntimeOptions) is on: on
    /// FP8 tensor cores, each row of `x` rounded to e4m3 with its own absmax scale (as the weight's
    /// rows are) and the products accumulated in fp32. By default, and wherever a backend has
    /// no such path, the weight is expanded to the compute dtype and `x` is used as it is (the
    /// numbers of [`WeightFormat::Fp8`](crate::nn::WeightFormat::Fp8)).
    fn dense_fp8<const D: usize>(
        x: Tensor<Self, D>,
        weight: &crate::fp8::Fp8Weight<Self>,
        bias: Option<Tensor<Self, 1>>,
        gelu: bool,
    ) -> Tensor<Self, D> {
        dense_fp8_expanded(x, weight, bias, gelu)
    }

    /// An FP8 weight expanded to `dtype`: `e4m3(codes[r, c]) · scales[r]` computed in fp32
    /// and rounded once (see [`crate::fp8`]). `codes` are `u8`, `scales` fp32.
    fn dequantize_fp8(
        codes: Tensor<Self, 2, Int>,
        scales: Tensor<Self, 1>,
        dtype: DType,
    ) -> Tensor<Self, 2> {
        portable::dequantize_fp8::<Self>(codes, scales, dtype)
    }
}

/// [`FramePackBackend::dense_fp8`] with the weight expanded to its compute dtype: the default,
/// and the fallback of backends with FP8 tensor cores for operands their path does not take.
pub fn dense_fp8_expanded<B: FramePackBackend, const D: usize>(
    x: Tensor<B, D>,
    weight: &crate::fp8::Fp8Weight<B>,
    bias: Option<Tensor<B, 1>>,
    gelu: bool,
) -> Tensor<B, D> {
    let w = weight.dequantize();
    if gelu {
        B::dense_gelu(x, w, bias)
    } else {
        B::dense(x, w, bias)
    }
}

/// [`FramePackBackend::group_norm`] as the portable normalisation followed by the backend's
/// SiLU: the default, and the fallback of backends with a fused kernel.
pub fn group_norm_unfused<B: FramePackBackend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 1>,
    bias: Tensor<B, 1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Tensor<B, 5> {
    let y = portable::group_norm::<B>(x, weight, bias, groups, eps);
    if silu {
        B::silu(y)
    } else {
        y
    }
}

/// [`FramePackBackend::conv3d_replicate_padded`] as the portable padding followed by the
/// backend's `conv3d_valid`: the default, and the fallback of backends with a fused path.
pub fn pad_then_conv3d<B: FramePackBackend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    stride: [usize; 3],
    [front, height, width]: [usize; 3],
) -> Tensor<B, 5> {
    let x = portable::replicate_pad_front(portable::replicate_pad_hw(x, height, width), front);
    B::conv3d_valid(x, weight, bias, stride)
}

/// The portable implementations of [`FramePackBackend`]: plain burn ops that run on every
/// backend. Tuned backends call them for the cases their kernels do not cover.
pub mod portable {
    use super::*;

    /// [`FramePackBackend::conv3d_valid`] as burn's convolution.
    pub fn conv3d_valid<B: Backend>(
        x: Tensor<B, 5>,
        weight: Tensor<B, 5>,
        bias: Option<Tensor<B, 1>>,
        stride: [usize; 3],
    ) -> Tensor<B, 5> {
        module::conv3d(
            x,
            weight,
            bias,
            burn::tensor::ops::ConvOptions::new(stride, [0, 0, 0], [1, 1, 1], 1),
        )
    }

    /// [`FramePackBackend::dequantize_fp8`] as a lookup in the table of the 256 code values.
    pub fn dequantize_fp8<B: Backend>(
        codes: Tensor<B, 2, Int>,
        scales: Tensor<B, 1>,
        dtype: DType,
    ) -> Tensor<B, 2> {
        let [rows, cols] = codes.dims();
        let device = codes.device();
        let table = Tensor::<B, 1>::from_data(
            TensorData::new(crate::fp8::e4m3_table().to_vec(), [256]),
            (&device, DType::F32),
        );
        let indices = codes.cast(IntDType::I32).reshape([rows * cols]);
        let values = table.select(0, indices).reshape([rows, cols]);
        (values * scales.cast(DType::F32).unsqueeze_dim::<2>(1)).cast(dtype)
    }

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

    /// The most attention scores (`batch · heads · queries · keys`) one attention call is
    /// given: 2^28, 1 GiB in fp32. Burn's generic attention (the CPU) and
    /// [`AttentionKernel::Explicit`] hold every score at once: 29 GiB at FramePack's 17.5k tokens,
    /// more than a wgpu buffer may hold. The queries are split into blocks under this bound;
    /// softmax is per query, so the result is the same.
    pub const MAX_SCORES_PER_CALL: usize = 1 << 28;

    /// How one block of queries is attended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AttentionKernel {
        /// burn's `module::attention` (the backend's own, possibly fused, kernel).
        Burn,
        /// `softmax(q·kᵀ/√d)·v` in plain tensor ops, the softmax in fp32: for backends whose
        /// fused attention is slow to build (burn's flash-attention shaders take minutes to
        /// compile on software Vulkan and have no tensor-core path in WGSL).
        Explicit,
    }

    /// Softmax attention with scale `1/sqrt(head_dim)` over `[batch, seq, heads, head_dim]`.
    ///
    /// `masked_keys` (`[batch, seq_k]`, true = ignore) hides padded keys; `None` is dense
    /// attention, the batch-1 path of the reference. Long sequences run in query blocks of
    /// at most [`MAX_SCORES_PER_CALL`] scores.
    pub fn attend<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        masked_keys: Option<Tensor<B, 2, Bool>>,
    ) -> Tensor<B, 4> {
        attend_with(q, k, v, masked_keys, AttentionKernel::Burn)
    }

    /// [`attend`] through the given kernel.
    pub fn attend_with<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        masked_keys: Option<Tensor<B, 2, Bool>>,
        kernel: AttentionKernel,
    ) -> Tensor<B, 4> {
        let block = query_block(&q, &k);
        attend_in_blocks(q, k, v, masked_keys, block, kernel)
    }

    /// [`attend`] with the queries split into blocks of `block` rows.
    pub fn attend_in_blocks<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        masked_keys: Option<Tensor<B, 2, Bool>>,
        block: usize,
        kernel: AttentionKernel,
    ) -> Tensor<B, 4> {
        let [batch, seq_q, _, _] = q.dims();
        let block = block.max(1);
        if seq_q <= block {
            return attend_block(q, k, v, masked_keys, false, kernel);
        }
        let blocks = (0..seq_q)
            .step_by(block)
            .map(|start| {
                let end = (start + block).min(seq_q);
                let q = q.clone().slice([0..batch, start..end]);
                attend_block(q, k.clone(), v.clone(), masked_keys.clone(), false, kernel)
            })
            .collect();
        Tensor::cat(blocks, 1)
    }

    /// Queries per block for `q` attending over `k`.
    fn query_block<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>) -> usize {
        let [batch, _, heads, _] = q.dims();
        query_rows(batch * heads * k.dims()[1])
    }

    /// Queries per block so that a block holds at most [`MAX_SCORES_PER_CALL`] scores, given
    /// the scores of one query (`batch · heads · seq_k`); a multiple of 64 (a kernel tile)
    /// where that fits.
    pub fn query_rows(scores_per_query: usize) -> usize {
        let rows = MAX_SCORES_PER_CALL / scores_per_query.max(1);
        if rows >= 64 {
            rows / 64 * 64
        } else {
            rows.max(1)
        }
    }

    /// One block over `[batch, seq, heads, head_dim]`; `causal` aligns the first query with
    /// the first key.
    fn attend_block<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        masked_keys: Option<Tensor<B, 2, Bool>>,
        causal: bool,
        kernel: AttentionKernel,
    ) -> Tensor<B, 4> {
        let [batch, seq_q, heads, head_dim] = q.dims();
        let seq_k = k.dims()[1];
        let mask = masked_keys.map(|m| {
            m.reshape([batch, 1, 1, seq_k])
                .expand([batch, heads, seq_q, seq_k])
        });
        let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        let out = match kernel {
            AttentionKernel::Burn => module::attention(
                q,
                k,
                v,
                mask,
                None,
                burn::tensor::ops::AttentionModuleOptions {
                    is_causal: causal,
                    ..Default::default()
                },
            ),
            AttentionKernel::Explicit => {
                let dtype = q.dtype();
                let scores = q
                    .matmul(k.swap_dims(2, 3))
                    .cast(DType::F32)
                    .mul_scalar((head_dim as f64).powf(-0.5));
                let device = scores.device();
                let scores = match mask {
                    Some(m) => scores.mask_fill(m, f32::NEG_INFINITY),
                    None => scores,
                };
                let scores = if causal {
                    // True above the diagonal (burn's `tril_mask` marks what is not kept).
                    let future = Tensor::<B, 2, Bool>::tril_mask([seq_q, seq_k], 0, &device);
                    scores.mask_fill(
                        future.unsqueeze::<4>().expand([batch, heads, seq_q, seq_k]),
                        f32::NEG_INFINITY,
                    )
                } else {
                    scores
                };
                activation::softmax(scores, 3).cast(dtype).matmul(v)
            }
        };
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
        attend_causal_with(q, k, v, AttentionKernel::Burn)
    }

    /// [`attend_causal`] through the given kernel (one block: the text encoders' sequences
    /// are at most a few hundred tokens).
    pub fn attend_causal_with<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        kernel: AttentionKernel,
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
        attend_block(q, repeat(k), repeat(v), None, true, kernel)
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

    /// [`FramePackBackend::group_norm`] without the SiLU, in burn ops (fp32 statistics).
    pub fn group_norm<B: Backend>(
        x: Tensor<B, 5>,
        weight: Tensor<B, 1>,
        bias: Tensor<B, 1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<B, 5> {
        let dtype = x.dtype();
        let [b, c, t, h, w] = x.dims();
        let g = groups;
        let x = x.cast(DType::F32);
        let grouped = x.clone().reshape([b, g, (c / g) * t * h * w]);
        let mean = grouped.clone().mean_dim(2);
        let var = (grouped - mean.clone()).powi_scalar(2).mean_dim(2);
        let rstd = var.add_scalar(eps).sqrt().recip();
        let per_channel = |v: Tensor<B, 3>| v.expand([b, g, c / g]).reshape([b, c]);
        let scale = per_channel(rstd) * weight.cast(DType::F32).unsqueeze::<2>();
        let shift = bias.cast(DType::F32).unsqueeze::<2>() - per_channel(mean) * scale.clone();
        let y = x * scale.reshape([b, c, 1, 1, 1]) + shift.reshape([b, c, 1, 1, 1]);
        y.cast(dtype)
    }

    /// `x` `[b, c, t, h, w]` with its first frame repeated `n` times in front.
    pub fn replicate_pad_front<B: Backend>(x: Tensor<B, 5>, n: usize) -> Tensor<B, 5> {
        if n == 0 {
            return x;
        }
        let [b, c, _, h, w] = x.dims();
        let first = x.clone().narrow(2, 0, 1).expand([b, c, n, h, w]);
        Tensor::cat(vec![first, x], 2)
    }

    /// `x` `[b, c, t, h, w]` with its edge rows repeated `ph` times above and below, then its
    /// edge columns `pw` times left and right.
    pub fn replicate_pad_hw<B: Backend>(x: Tensor<B, 5>, ph: usize, pw: usize) -> Tensor<B, 5> {
        let [b, c, t, h, w] = x.dims();
        let x = if ph == 0 {
            x
        } else {
            let top = x.clone().narrow(3, 0, 1).expand([b, c, t, ph, w]);
            let bottom = x.clone().narrow(3, h - 1, 1).expand([b, c, t, ph, w]);
            Tensor::cat(vec![top, x, bottom], 3)
        };
        if pw == 0 {
            return x;
        }
        let h = h + 2 * ph;
        let left = x.clone().narrow(4, 0, 1).expand([b, c, t, h, pw]);
        let right = x.clone().narrow(4, w - 1, 1).expand([b, c, t, h, pw]);
        Tensor::cat(vec![left, x, right], 4)
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

/// wgpu runs the portable path, with attention written out in plain ops
/// ([`portable::AttentionKernel::Explicit`]).
#[cfg(feature = "wgpu")]
impl<F, I, BT> FramePackBackend for burn::backend::Wgpu<F, I, BT>
where
    F: burn::backend::wgpu::FloatElement,
    I: burn::backend::wgpu::IntElement,
    BT: burn::backend::wgpu::BoolElement,
{
    fn attend(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        masked_keys: Option<Tensor<Self, 2, Bool>>,
    ) -> Tensor<Self, 4> {
        portable::attend_with::<Self>(q, k, v, masked_keys, portable::AttentionKernel::Explicit)
    }

    fn attend_causal(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        portable::attend_causal_with::<Self>(q, k, v, portable::AttentionKernel::Explicit)
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    type B = burn::backend::Flex;

    #[test]
    fn query_blocks_hold_at_most_the_score_bound() {
        // FramePack's window: 24 heads over 17,469 keys.
        let per_query = 24 * 17_469;
        let block = portable::query_rows(per_query);
        assert_eq!(block % 64, 0);
        assert!(block * per_query <= portable::MAX_SCORES_PER_CALL);
        assert!((block + 64) * per_query > portable::MAX_SCORES_PER_CALL);
        // Short sequences are one block; huge rows still make progress.
        assert!(portable::query_rows(24 * 512) >= 512);
        assert_eq!(portable::query_rows(usize::MAX), 1);
    }

    #[test]
    fn attention_in_query_blocks_equals_one_call() {
        let device = Default::default();
        let q = Tensor::<B, 4>::random([2, 37, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 4>::random([2, 29, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 4>::random([2, 29, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let mut hidden = vec![false; 2 * 29];
        hidden[29 + 20..].iter_mut().for_each(|m| *m = true);
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(hidden, [2, 29]), &device);
        let whole = |mask: Option<Tensor<B, 2, Bool>>| {
            let kernel = portable::AttentionKernel::Burn;
            portable::attend_in_blocks(q.clone(), k.clone(), v.clone(), mask, usize::MAX, kernel)
        };
        for mask in [None, Some(mask)] {
            let expected = whole(mask.clone());
            for kernel in [
                portable::AttentionKernel::Burn,
                portable::AttentionKernel::Explicit,
            ] {
                let blocked = portable::attend_in_blocks(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    mask.clone(),
                    8,
                    kernel,
                );
                assert_eq!(blocked.dims(), [2, 37, 3, 8]);
                assert_close(
                    &blocked,
                    &expected,
                    1e-5,
                    &format!("{kernel:?}, 8-row blocks"),
                );
            }
        }
    }

    fn assert_close(a: &Tensor<B, 4>, b: &Tensor<B, 4>, rel: f32, what: &str) {
        let diff = (a.clone() - b.clone()).abs().max().into_scalar();
        let scale = b.clone().abs().max().into_scalar();
        assert!(
            diff <= rel * scale,
            "{what}: differs by {diff} (scale {scale})"
        );
    }

    #[test]
    fn explicit_causal_attention_equals_burns_with_grouped_heads() {
        let device = Default::default();
        // 4 query heads over 2 key/value heads, as LLaMA's 32 over 8.
        let q = Tensor::<B, 4>::random([1, 11, 4, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 4>::random([1, 11, 2, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 4>::random([1, 11, 2, 8], Distribution::Normal(0.0, 1.0), &device);
        let expected = portable::attend_causal(q.clone(), k.clone(), v.clone());
        let explicit = portable::attend_causal_with(
            q.clone(),
            k.clone(),
            v.clone(),
            portable::AttentionKernel::Explicit,
        );
        assert_close(&explicit, &expected, 1e-5, "explicit causal");
        // The first query sees only the first key: its output is that key's value.
        let first = explicit.slice([0..1, 0..1, 0..1]).reshape([8]);
        let value = v.slice([0..1, 0..1, 0..1]).reshape([8]);
        let diff = (first - value).abs().max().into_scalar();
        assert!(diff <= 1e-6, "query 0 attends beyond key 0: {diff}");
    }
}
