//! Attention for the shapes our flash kernels do not take (the encoders' and the VAE's head
//! sizes, fp16): scores `Q·Kᵀ` on cuBLASLt with fp32 output, softmax in fp32, `P·V` on
//! cuBLASLt, over blocks of queries so that a block's scores stay under 256 MiB.
//!
//! burn's own attention kernel accumulates fp16 inputs in fp16 (the VAE's 512-wide heads
//! overflowed to NaN on random weights) and autotunes every new shape on first use (minutes
//! for a VAE decode); PyTorch's SDPA accumulates in fp32, as this does.

use burn::tensor::{activation, Bool, DType, Tensor, TensorData};
use cudarc::driver::PushKernelArg;

use super::engine::Engine;
use super::gemm::{Epilogue, GemmCall, GemmType};
use super::{
    empty, engine_for, grid, launch_err, pad_to, prim, run, wrap, CudaBackend, CudaDevice, Prim,
};

/// Largest fp32 score block (bytes).
const SCORE_BYTES: usize = 256 << 20;

/// Softmax attention with scale `1/sqrt(head_dim)` over `[batch, seq, heads, head_dim]`,
/// keys and values with `heads / k_heads` query heads per key head; `causal`: query `i` sees
/// keys `0..=i` (needs as many queries as keys). `None` where this does not apply.
pub(super) fn attend_gemm(
    q: &Tensor<CudaBackend, 4>,
    k: &Tensor<CudaBackend, 4>,
    v: &Tensor<CudaBackend, 4>,
    causal: bool,
) -> Option<Tensor<CudaBackend, 4>> {
    let device = q.device();
    let engine = engine_for(&device)?;
    let dtype = q.dtype();
    let ty = GemmType::of(dtype)?;
    if k.dtype() != dtype || v.dtype() != dtype {
        return None;
    }
    let [batch, seq_q, heads, dim] = q.dims();
    let [kb, seq_k, k_heads, kd] = k.dims();
    if kb != batch || kd != dim || v.dims() != k.dims() || k_heads == 0 || heads % k_heads != 0 {
        return None;
    }
    if [batch, seq_q, seq_k, heads, dim].contains(&0) || (causal && seq_q != seq_k) {
        return None;
    }
    let group = heads / k_heads;
    // P·V reads P's rows (seq_k long) and Vᵀ's: pad both to 8 values (16-byte rows).
    let keys_p = seq_k.next_multiple_of(8);
    let qh = prim(q.clone().swap_dims(1, 2)); // [batch, heads, seq_q, dim]
    let kh = prim(k.clone().swap_dims(1, 2)); // [batch, k_heads, seq_k, dim]
    let vt = prim(pad_to(v.clone().permute([0, 2, 3, 1]), 3, keys_p)); // [b, k_heads, dim, keys_p]
    let elt = dtype.size();
    let scale = (dim as f64).powf(-0.5);
    let rows_per_block = (SCORE_BYTES / (heads * keys_p * 4)).clamp(1, seq_q);

    let mut per_batch = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut blocks = Vec::new();
        for first in (0..seq_q).step_by(rows_per_block) {
            let rows = rows_per_block.min(seq_q - first);
            let scores = empty([heads, rows, seq_k], DType::F32, &device);
            run(&engine, &device, &[&qh, &kh, &scores], |e, p| {
                for h in 0..heads {
                    let kv = b * k_heads + h / group;
                    e.gemm.run(&GemmCall {
                        x: p[0] + (((b * heads + h) * seq_q + first) * dim * elt) as u64,
                        w: p[1] + (kv * seq_k * dim * elt) as u64,
                        bias: None,
                        out: p[2] + (h * rows * seq_k * 4) as u64,
                        m: rows as u64,
                        n: seq_k as u64,
                        k: dim as u64,
                        epilogue: Epilogue::None,
                        ty,
                        f32_out: true,
                        accumulate: false,
                        scales: None,
                    })?;
                }
                Ok(())
            });
            let probs = match softmax_kernel(
                &engine,
                &device,
                &scores,
                SoftmaxRows {
                    heads,
                    rows,
                    keys: seq_k,
                    keys_p,
                    first,
                    causal,
                    scale: scale as f32,
                    dtype,
                },
            ) {
                Some(probs) => probs,
                None => softmax_portable(wrap(scores), scale, causal, first, dtype, keys_p),
            };
            let out = empty([heads, rows, dim], dtype, &device);
            run(&engine, &device, &[&probs, &vt, &out], |e, p| {
                for h in 0..heads {
                    let kv = b * k_heads + h / group;
                    e.gemm.run(&GemmCall {
                        x: p[0] + (h * rows * keys_p * elt) as u64,
                        w: p[1] + (kv * dim * keys_p * elt) as u64,
                        bias: None,
                        out: p[2] + (h * rows * dim * elt) as u64,
                        m: rows as u64,
                        n: dim as u64,
                        k: keys_p as u64,
                        epilogue: Epilogue::None,
                        ty,
                        f32_out: false,
                        accumulate: false,
                        scales: None,
                    })?;
                }
                Ok(())
            });
            blocks.push(wrap::<3>(out));
        }
        per_batch.push(Tensor::cat(blocks, 1)); // [heads, seq_q, dim]
    }
    Some(Tensor::stack::<4>(per_batch, 0).swap_dims(1, 2))
}

/// One block of the softmax: `heads × rows` rows of fp32 scores over `keys` keys.
struct SoftmaxRows {
    heads: usize,
    rows: usize,
    keys: usize,
    keys_p: usize,
    first: usize,
    causal: bool,
    scale: f32,
    dtype: DType,
}

/// The softmax on our kernel: scale, causal mask, softmax, rounding and padding in one pass.
/// burn's softmax would autotune its reductions for every new shape (about a minute per
/// shape on a fresh machine, once per encoder and VAE resolution). `None` on GPUs without our
/// kernels (older than sm_80).
fn softmax_kernel(
    engine: &Engine,
    device: &CudaDevice,
    scores: &Prim,
    s: SoftmaxRows,
) -> Option<Prim> {
    engine.kernels.as_ref()?;
    let is_f16 = i32::from(s.dtype == DType::F16);
    let int = |v: usize| i32::try_from(v).ok();
    let (keys, keys_p, rows, first) = (int(s.keys)?, int(s.keys_p)?, int(s.rows)?, int(s.first)?);
    let causal = i32::from(s.causal);
    let probs = empty([s.heads, s.rows, s.keys_p], s.dtype, device);
    run(engine, device, &[scores, &probs], |e, p| {
        let kernels = e.kernels.as_ref().ok_or("no kernels")?;
        let mut launch = e.stream.launch_builder(&kernels.softmax_rows);
        launch
            .arg(&p[0])
            .arg(&p[1])
            .arg(&keys)
            .arg(&keys_p)
            .arg(&rows)
            .arg(&causal)
            .arg(&first)
            .arg(&s.scale)
            .arg(&is_f16);
        // SAFETY: `scores` holds heads·rows rows of `keys` fp32 values, `probs` as many rows
        // of `keys_p` 16-bit values.
        unsafe { launch.launch(grid(s.heads * s.rows, 256, 0)) }
            .map(|_| ())
            .map_err(launch_err)
    });
    Some(probs)
}

/// [`softmax_kernel`] in burn's operations.
fn softmax_portable(
    scores: Tensor<CudaBackend, 3>,
    scale: f64,
    causal: bool,
    first: usize,
    dtype: DType,
    keys_p: usize,
) -> Prim {
    let [heads, rows, seq_k] = scores.dims();
    let device = scores.device();
    let mut scores = scores.mul_scalar(scale);
    if causal {
        // Key `c` is hidden from query `first + r` when `c > first + r`.
        let hidden: Vec<bool> = (0..rows)
            .flat_map(|r| (0..seq_k).map(move |c| c > first + r))
            .collect();
        let hidden = Tensor::<CudaBackend, 2, Bool>::from_data(
            TensorData::new(hidden, [rows, seq_k]),
            &device,
        );
        scores = scores.mask_fill(
            hidden.unsqueeze_dim::<3>(0).expand([heads, rows, seq_k]),
            f32::NEG_INFINITY,
        );
    }
    prim(pad_to(
        activation::softmax(scores, 2).cast(dtype),
        2,
        keys_p,
    ))
}
