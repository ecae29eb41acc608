//! The tuned CUDA implementation of [`FramePackBackend`].
//!
//! [`CudaBackend`] is burn's CubeCL backend on the CUDA runtime (without burn's fusion layer, so
//! that every tensor has device memory our kernels can address). Its hot operations run on
//! cuBLASLt (dense layers, with bias and GELU in the epilogue) and on kernels of ours compiled
//! with NVRTC at run time (`kernels.cu`: flash attention, fused LayerNorm + modulation,
//! RMSNorm + RoPE, gated residual, activations). Anything a kernel does not cover (other
//! dtypes, masks, head sizes) takes the portable burn path, as does everything when the
//! engine cannot be created or the [`RuntimeOptions`](crate::runtime::RuntimeOptions) of the
//! calling thread turn the tuned kernels off.

mod attention;
mod attention_gemm;
mod conv;
mod engine;
mod error;
mod gemm;
mod stream;
mod timing;

use std::sync::Arc;

use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::cuda::CudaRuntime;
use cudarc::driver::{LaunchConfig, PushKernelArg};

pub use cubecl::cuda::CudaDevice;
pub use engine::{device_report, engine_summary, tuned_kernels};
pub use error::CudaError;
pub use stream::CudaStreamer;
pub use timing::{time_kernels, KernelTime};

use crate::fp8::Fp8Weight;
use crate::ops::{portable, FramePackBackend};
use attention::AttentionCall;
use engine::Engine;
use gemm::{Epilogue, GemmCall, GemmType};

/// burn's CUDA backend as FramePack runs it (CubeCL, no fusion), with the tuned operations.
pub type CudaBackend = CubeBackend<CudaRuntime, f32, i32, u8>;

/// Bytes burn's memory pool on `device` hands out now (`in_use`) and holds from the driver
/// (`reserved`, which only shrinks on `Backend::memory_cleanup`).
pub fn pool_usage(device: &CudaDevice) -> (u64, u64) {
    use cubecl::Runtime;
    match CudaRuntime::client(device).memory_usage() {
        Ok(usage) => (usage.bytes_in_use, usage.bytes_reserved),
        Err(_) => (0, 0),
    }
}

pub(crate) type Prim = CubeTensor<CudaRuntime>;

/// Whether products with FP8 weights can run on this device's FP8 tensor cores (when the
/// [`RuntimeOptions::fp8_tensor_cores`](crate::runtime::RuntimeOptions) ask for it): cuBLASLt offers an e4m3 GEMM with per-row scales here (Hopper
/// and later, with a cuBLASLt of CUDA 12.9 or newer). Elsewhere they expand the weight.
pub fn fp8_tensor_cores_available(device: &CudaDevice) -> bool {
    fp8_tensor_cores_check(device).is_ok()
}

/// [`fp8_tensor_cores_available`], with the reason when not (for benchmarks and logs).
pub fn fp8_tensor_cores_check(device: &CudaDevice) -> Result<(), String> {
    let engine = engine_for(device).ok_or("the tuned CUDA path is off or unavailable")?;
    engine.bind().map_err(|e| e.to_string())?;
    if engine.kernels.is_none() {
        return Err("GPU older than sm_80".into());
    }
    engine.gemm.check(&GemmCall {
        x: 0,
        w: 0,
        out: 0,
        bias: None,
        m: 128,
        n: 128,
        k: 128,
        epilogue: Epilogue::None,
        ty: GemmType::Fp8E4m3,
        f32_out: false,
        accumulate: false,
        scales: None,
    })
}

/// The names of the attention kernels usable on `device`, the default first (the sm_80 kernel
/// last), for [`RuntimeOptions::attention_kernel`](crate::runtime::RuntimeOptions); empty where the tuned kernels are unavailable.
pub fn attention_kernels(device: &CudaDevice) -> Vec<&'static str> {
    match engine_for(device).as_ref().and_then(|e| e.kernels.as_ref()) {
        Some(k) => k
            .hopper_attention
            .iter()
            .chain([&k.flash_attention])
            .map(|k| k.name)
            .collect(),
        None => Vec::new(),
    }
}

/// The engine for `device` if the tuned path is on and available.
fn engine_for(device: &CudaDevice) -> Option<Arc<Engine>> {
    if !tuned_kernels() {
        return None;
    }
    engine::engine(device.index)
}

fn prim<const D: usize>(t: Tensor<CudaBackend, D>) -> Prim {
    into_contiguous(t.into_primitive().tensor())
}

/// `t` `[batch, seq, heads, dim]` with each token's `heads × dim` values contiguous, and its
/// strides between tokens and between batch entries (in elements). A view that already has
/// that layout (q, k or v narrowed out of a fused projection) is used in place; anything else
/// is made contiguous first.
fn prim_token_rows(t: Tensor<CudaBackend, 4>) -> (Prim, i64, i64) {
    let [_, seq, heads, dim] = t.dims();
    let p = t.into_primitive().tensor();
    let s = p.meta.strides();
    // 16-byte vector loads: the strides (and so every row start) must be multiples of 8.
    if s[3] == 1 && s[2] == dim && s[1].is_multiple_of(8) && s[0].is_multiple_of(8) {
        let (row, batch) = (s[1] as i64, s[0] as i64);
        return (p, row, batch);
    }
    let row = (heads * dim) as i64;
    (into_contiguous(p), row, row * seq as i64)
}

fn wrap<const D: usize>(t: Prim) -> Tensor<CudaBackend, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// An uninitialised, densely packed tensor. Not `Tensor::empty`: burn's CUDA allocator pads
/// rows whose byte width is not a multiple of its power-of-two alignment (a 48-wide fp32 row
/// takes 256 bytes), and our kernels and GEMMs write rows back to back.
fn empty<const D: usize>(shape: [usize; D], dtype: DType, device: &CudaDevice) -> Prim {
    use cubecl::Runtime;
    burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        CudaRuntime::client(device),
        device.clone(),
        shape.into(),
        dtype,
    )
}

/// `x` with zeros appended along `dim` up to `size`.
fn pad_to<const D: usize>(
    x: Tensor<CudaBackend, D>,
    dim: usize,
    size: usize,
) -> Tensor<CudaBackend, D> {
    let mut shape = x.dims();
    if shape[dim] >= size {
        return x;
    }
    shape[dim] = size - shape[dim];
    let zeros = Tensor::zeros(shape, (&x.device(), x.dtype()));
    Tensor::cat(vec![x, zeros], dim)
}

/// Runs `work` with the device pointers of `tensors`, ordered after burn's queued work and
/// finished before burn touches the outputs (see `engine.rs` for why both waits are needed).
/// The engine's context is made current on the calling thread first: raw driver and cuBLASLt
/// calls (unlike cudarc's safe ones) use whatever context the thread has. A failure unwinds
/// as a typed [`CudaError`] ([`crate::failure`]).
fn run(
    engine: &Engine,
    device: &CudaDevice,
    tensors: &[&Prim],
    mut work: impl FnMut(&Engine, &[u64]) -> Result<(), String>,
) {
    if let Err(e) = run_checked(engine, device, tensors, &mut work) {
        raise(e);
    }
}

fn run_checked(
    engine: &Engine,
    device: &CudaDevice,
    tensors: &[&Prim],
    work: &mut impl FnMut(&Engine, &[u64]) -> Result<(), String>,
) -> Result<(), CudaError> {
    engine.bind()?;
    let resources = tensors
        .iter()
        .map(|t| {
            t.client
                .get_resource(t.handle.clone())
                .map_err(|e| CudaError::Memory {
                    what: "an operand",
                    reason: format!("{e:?}"),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pointers: Vec<u64> = resources.iter().map(|r| r.resource().ptr).collect();
    CudaBackend::sync(device).map_err(|e| CudaError::Sync {
        stream: "burn's",
        reason: format!("{e:?}"),
    })?;
    work(engine, &pointers)
        .and_then(|()| timing::repeat(engine, || work(engine, &pointers)))
        .map_err(CudaError::Launch)?;
    engine.stream.synchronize().map_err(|e| CudaError::Sync {
        stream: "the tuned path's",
        reason: format!("{e:?}"),
    })?;
    drop(resources);
    Ok(())
}

/// Unwinds with a tuned operation's failure (see [`crate::failure`]).
fn raise(error: CudaError) -> ! {
    crate::failure::raise(error.into())
}

fn launch_err(e: cudarc::driver::DriverError) -> String {
    format!("kernel launch: {e:?}")
}

/// `kernels.cu`'s code for an element type (`half_store`'s `is_f16`, `conv_epilogue`'s `kind`).
const KERNEL_F32: i32 = 2;

fn kernel_dtype(dtype: DType) -> Option<i32> {
    match dtype {
        DType::BF16 => Some(0),
        DType::F16 => Some(1),
        DType::F32 => Some(KERNEL_F32),
        _ => None,
    }
}

/// Grid of `blocks` blocks of `threads` threads.
fn grid(blocks: usize, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// Blocks for a grid-stride element-wise kernel over `n` elements.
fn elementwise_blocks(engine: &Engine, n: usize) -> usize {
    n.div_ceil(256).min(engine.multiprocessors as usize * 32)
}

fn dense_tuned<const D: usize>(
    x: &Tensor<CudaBackend, D>,
    weight: &Tensor<CudaBackend, 2>,
    bias: &Option<Tensor<CudaBackend, 1>>,
    gelu: bool,
) -> Option<Tensor<CudaBackend, D>> {
    let device = x.device();
    let engine = engine_for(&device)?;
    let dtype = x.dtype();
    let ty = GemmType::of(dtype)?;
    if weight.dtype() != dtype || bias.as_ref().is_some_and(|b| b.dtype() != dtype) {
        return None;
    }
    let dims = x.dims();
    let [n, k] = weight.dims();
    let m: usize = dims[..D - 1].iter().product();
    if dims[D - 1] != k || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let xp = prim(x.clone().reshape([m, k]));
    let wp = prim(weight.clone());
    let bp = bias.clone().map(prim);
    let out = empty([m, n], dtype, &device);
    let epilogue = Epilogue::of(gelu, bp.is_some());
    let mut tensors = vec![&xp, &wp, &out];
    if let Some(b) = &bp {
        tensors.push(b);
    }
    run(&engine, &device, &tensors, |e, p| {
        e.gemm.run(&GemmCall {
            x: p[0],
            w: p[1],
            out: p[2],
            bias: p.get(3).copied(),
            m: m as u64,
            n: n as u64,
            k: k as u64,
            epilogue,
            ty,
            f32_out: false,
            accumulate: false,
            scales: None,
        })
    });
    let mut out_dims = dims;
    out_dims[D - 1] = n;
    Some(wrap::<2>(out).reshape(out_dims))
}

/// [`FramePackBackend::dense_fp8`] on FP8 tensor cores: the rows of `x` quantised to e4m3 by
/// our kernel, then one cuBLASLt FP8 GEMM with both operands' per-row scales. `None` where
/// cuBLASLt has no algorithm for it (no FP8 tensor cores, an older cuBLASLt) or the operands
/// do not fit its rules (bf16 only; `k` and `n` multiples of 16).
fn dense_fp8_tuned<const D: usize>(
    x: &Tensor<CudaBackend, D>,
    weight: &Fp8Weight<CudaBackend>,
    bias: &Option<Tensor<CudaBackend, 1>>,
    gelu: bool,
) -> Option<Tensor<CudaBackend, D>> {
    if !crate::runtime::with_current(|o| o.fp8_tensor_cores) {
        return None;
    }
    let device = x.device();
    let engine = engine_for(&device)?;
    // Cached: where cuBLASLt has no FP8 algorithm, fall back before any allocation or sync.
    if !fp8_tensor_cores_available(&device) {
        return None;
    }
    let bf16 = DType::BF16;
    if x.dtype() != bf16
        || weight.dtype != bf16
        || weight.codes.dtype() != DType::U8
        || weight.scales.dtype() != DType::F32
        || bias.as_ref().is_some_and(|b| b.dtype() != bf16)
    {
        return None;
    }
    let dims = x.dims();
    let [n, k] = weight.dims();
    let m: usize = dims[..D - 1].iter().product();
    if dims[D - 1] != k || m == 0 || n % 16 != 0 || k % 16 != 0 {
        return None;
    }
    let xp = prim(x.clone().reshape([m, k]));
    let codes = into_contiguous(weight.codes.clone().into_primitive());
    let scales = prim(weight.scales.clone());
    let bp = bias.clone().map(prim);
    let x_codes = empty([m, k], DType::U8, &device);
    let x_scales = empty([m], DType::F32, &device);
    let out = empty([m, n], bf16, &device);
    let epilogue = Epilogue::of(gelu, bp.is_some());
    let mut tensors = vec![&xp, &codes, &scales, &x_codes, &x_scales, &out];
    if let Some(b) = &bp {
        tensors.push(b);
    }
    let mut supported = true;
    run(&engine, &device, &tensors, |e, p| {
        let call = GemmCall {
            x: p[3],
            w: p[1],
            out: p[5],
            bias: p.get(6).copied(),
            m: m as u64,
            n: n as u64,
            k: k as u64,
            epilogue,
            ty: GemmType::Fp8E4m3,
            f32_out: false,
            accumulate: false,
            scales: Some((p[2], p[4])),
        };
        // 16-byte loads of x, 8-byte stores of its codes.
        if p[0] % 16 != 0 || p[3] % 8 != 0 || !e.gemm.supports(&call) {
            supported = false;
            return Ok(());
        }
        let kernels = e.kernels.as_ref().ok_or("no kernels")?;
        let cols = k as i32;
        let mut launch = e.stream.launch_builder(&kernels.quantize_rows_e4m3);
        launch.arg(&p[0]).arg(&p[3]).arg(&p[4]).arg(&cols);
        // SAFETY: contiguous bf16 x of m x k, u8 codes of m x k and fp32 scales of m.
        unsafe { launch.launch(grid(m, 128, 0)) }.map_err(launch_err)?;
        e.gemm.run(&call)
    });
    if !supported {
        return None;
    }
    let mut out_dims = dims;
    out_dims[D - 1] = n;
    Some(wrap::<2>(out).reshape(out_dims))
}

fn attend_tuned(
    q: &Tensor<CudaBackend, 4>,
    k: &Tensor<CudaBackend, 4>,
    v: &Tensor<CudaBackend, 4>,
) -> Option<Tensor<CudaBackend, 4>> {
    let device = q.device();
    let engine = engine_for(&device)?;
    let [b, seq_q, heads, dim] = q.dims();
    let [kb, seq_k, kh, kd] = k.dims();
    if dim != 128
        || k.dims() != v.dims()
        || kb != b
        || kh != heads
        || kd != dim
        || seq_q == 0
        || seq_k == 0
    {
        return None;
    }
    if [q.dtype(), k.dtype(), v.dtype()] != [DType::BF16; 3] {
        return None;
    }
    engine.kernels.as_ref()?;
    let (qp, kp) = (prim(q.clone()), prim(k.clone()));
    let (vp, v_row, v_batch) = prim_token_rows(v.clone());
    // The kernels take 32-bit sizes and token strides.
    if [seq_q, seq_k, heads]
        .iter()
        .any(|&x| i32::try_from(x).is_err())
        || i32::try_from(v_row).is_err()
    {
        return None;
    }
    let v_row = usize::try_from(v_row).ok()?;
    let v_batch = usize::try_from(v_batch).ok()?;
    let out = empty([b, seq_q, heads, dim], DType::BF16, &device);
    run(&engine, &device, &[&qp, &kp, &vp, &out], |e, p| {
        let kernels = e.kernels.as_ref().ok_or("no kernels")?;
        let call = AttentionCall {
            q: p[0],
            k: p[1],
            v: p[2],
            o: p[3],
            batch: b,
            seq_q,
            seq_k,
            heads,
            v_row_stride: v_row,
            v_batch_stride: v_batch,
        };
        attention::launch(&e.stream, kernels.attention(Some(&call)), &call)
    });
    Some(wrap(out))
}

fn layer_norm_tuned<const D: usize>(
    x: &Tensor<CudaBackend, D>,
    modulation: Option<(&Tensor<CudaBackend, D>, &Tensor<CudaBackend, D>)>,
    eps: f64,
) -> Option<Tensor<CudaBackend, D>> {
    let device = x.device();
    let engine = engine_for(&device)?;
    engine.kernels.as_ref()?;
    let dims = x.dims();
    let dim = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    if x.dtype() != DType::BF16 || rows == 0 {
        return None;
    }
    // Modulation vectors broadcast over the sequence: [batch, 1, dim].
    let (batch, mods) = match modulation {
        Some((shift, scale)) => {
            let (sd, cd) = (shift.dims(), scale.dims());
            let batch = dims[0];
            let ok = D == 3 && sd == cd && sd[0] == batch && sd[D - 2] == 1 && sd[D - 1] == dim;
            if !ok || shift.dtype() != DType::BF16 || scale.dtype() != DType::BF16 {
                return None;
            }
            (batch, Some((prim(shift.clone()), prim(scale.clone()))))
        }
        None => (1, None),
    };
    let xp = prim(x.clone());
    let out = empty(dims, DType::BF16, &device);
    let mut tensors = vec![&xp, &out];
    if let Some((s, c)) = &mods {
        tensors.push(s);
        tensors.push(c);
    }
    let has_mod = mods.is_some() as i32;
    // One 16-byte chunk per thread and the row in registers when the width allows it.
    let vectorised = dim.is_multiple_of(256) && dim / 8 <= 1024;
    run(&engine, &device, &tensors, |e, p| {
        let kernels = e.kernels.as_ref().ok_or("no kernels")?;
        let (shift, scale) = if has_mod == 1 { (p[2], p[3]) } else { (0, 0) };
        let (r, per_batch, d, eps) = (rows as i32, (rows / batch) as i32, dim as i32, eps as f32);
        if vectorised && p.iter().all(|ptr| ptr % 16 == 0) {
            let mut launch = e.stream.launch_builder(&kernels.ln_modulate_vec);
            launch
                .arg(&p[0])
                .arg(&shift)
                .arg(&scale)
                .arg(&p[1])
                .arg(&per_batch)
                .arg(&d)
                .arg(&eps)
                .arg(&has_mod);
            // SAFETY: contiguous, 16-byte aligned bf16 tensors of the checked shapes; a block per row.
            return unsafe { launch.launch(grid(rows, (dim / 8) as u32, 0)) }
                .map(|_| ())
                .map_err(launch_err);
        }
        let mut launch = e.stream.launch_builder(&kernels.ln_modulate);
        launch
            .arg(&p[0])
            .arg(&shift)
            .arg(&scale)
            .arg(&p[1])
            .arg(&r)
            .arg(&per_batch)
            .arg(&d)
            .arg(&eps)
            .arg(&has_mod);
        // SAFETY: contiguous bf16 tensors of the checked shapes; one warp per row.
        unsafe { launch.launch(grid(rows.div_ceil(4), 128, 0)) }
            .map(|_| ())
            .map_err(launch_err)
    });
    Some(wrap(out))
}

fn rms_norm_rope_tuned<const D: usize>(
    x: &Tensor<CudaBackend, D>,
    weight: &Tensor<CudaBackend, 1>,
    eps: f64,
    rope: Option<(&Tensor<CudaBackend, 2>, &Tensor<CudaBackend, 2>)>,
) -> Option<Tensor<CudaBackend, D>> {
    let device = x.device();
    let engine = engine_for(&device)?;
    engine.kernels.as_ref()?;
    let dims = x.dims();
    let head_dim = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    if x.dtype() != DType::BF16
        || weight.dtype() != DType::BF16
        || !head_dim.is_multiple_of(4)
        || rows == 0
    {
        return None;
    }
    let (seq, heads) = if D == 4 { (dims[1], dims[2]) } else { (1, 1) };
    let tables = match rope {
        Some((cos, sin)) => {
            let [tokens, d] = cos.dims();
            if D != 4 || sin.dims() != [tokens, d] || d != head_dim || tokens > seq {
                return None;
            }
            if cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
                return None;
            }
            Some((prim(cos.clone()), prim(sin.clone()), tokens))
        }
        None => None,
    };
    // Heads of [batch, seq, heads, dim] may be read in place from a wider fused row.
    let (xp, x_row, x_batch) = if D == 4 {
        prim_token_rows(x.clone().reshape([dims[0], seq, heads, head_dim]))
    } else {
        (prim(x.clone()), head_dim as i64, head_dim as i64)
    };
    let wp = prim(weight.clone());
    let out = empty(dims, DType::BF16, &device);
    let mut tensors = vec![&xp, &wp, &out];
    let rope_tokens = tables.as_ref().map_or(0, |t| t.2) as i32;
    if let Some((c, s, _)) = &tables {
        tensors.push(c);
        tensors.push(s);
    }
    run(&engine, &device, &tensors, |e, p| {
        let kernels = e.kernels.as_ref().ok_or("no kernels")?;
        let (cos, sin) = if rope_tokens > 0 {
            (p[3], p[4])
        } else {
            (0, 0)
        };
        let (r, s, h, d, eps) = (
            rows as i32,
            seq as i32,
            heads as i32,
            head_dim as i32,
            eps as f32,
        );
        let mut launch = e.stream.launch_builder(&kernels.rms_norm_rope);
        launch
            .arg(&p[0])
            .arg(&p[1])
            .arg(&cos)
            .arg(&sin)
            .arg(&p[2])
            .arg(&r)
            .arg(&s)
            .arg(&h)
            .arg(&d)
            .arg(&rope_tokens)
            .arg(&eps)
            .arg(&x_row)
            .arg(&x_batch);
        // SAFETY: tensors of the checked shapes, x with the strides passed (heads adjacent),
        // the others contiguous; one warp per head.
        unsafe { launch.launch(grid(rows.div_ceil(4), 128, 0)) }
            .map(|_| ())
            .map_err(launch_err)
    });
    Some(wrap(out))
}

fn gated_residual_tuned(
    x: &Tensor<CudaBackend, 3>,
    gate: &Tensor<CudaBackend, 3>,
    y: &Tensor<CudaBackend, 3>,
) -> Option<Tensor<CudaBackend, 3>> {
    let device = x.device();
    let engine = engine_for(&device)?;
    engine.kernels.as_ref()?;
    let [b, s, d] = x.dims();
    if y.dims() != [b, s, d] || gate.dims() != [b, 1, d] {
        return None;
    }
    if [x.dtype(), gate.dtype(), y.dtype()] != [DType::BF16; 3] {
        return None;
    }
    let (xp, gp, yp) = (prim(x.clone()), prim(gate.clone()), prim(y.clone()));
    let out = empty([b, s, d], DType::BF16, &device);
    let n = b * s * d;
    run(&engine, &device, &[&xp, &gp, &yp, &out], |e, p| {
        let kernels = e.kernels.as_ref().ok_or("no kernels")?;
        let (dim, per_batch) = (d as i32, (s * d) as i64);
        if d % 8 == 0 && p.iter().all(|ptr| ptr % 16 == 0) {
            let chunks = (n / 8) as i64;
            let mut launch = e.stream.launch_builder(&kernels.gated_residual_vec);
            launch
                .arg(&p[0])
                .arg(&p[1])
                .arg(&p[2])
                .arg(&p[3])
                .arg(&chunks)
                .arg(&dim)
                .arg(&per_batch);
            // SAFETY: contiguous, 16-byte aligned bf16 tensors of the checked shapes.
            return unsafe { launch.launch(grid(elementwise_blocks(e, n / 8), 256, 0)) }
                .map(|_| ())
                .map_err(launch_err);
        }
        let n64 = n as i64;
        let mut launch = e.stream.launch_builder(&kernels.gated_residual);
        launch
            .arg(&p[0])
            .arg(&p[1])
            .arg(&p[2])
            .arg(&p[3])
            .arg(&n64)
            .arg(&dim)
            .arg(&per_batch);
        // SAFETY: contiguous bf16 tensors of the checked shapes.
        unsafe { launch.launch(grid(elementwise_blocks(e, n), 256, 0)) }
            .map(|_| ())
            .map_err(launch_err)
    });
    Some(wrap(out))
}

fn activation_tuned<const D: usize>(
    x: &Tensor<CudaBackend, D>,
    gelu: bool,
) -> Option<Tensor<CudaBackend, D>> {
    let device = x.device();
    let engine = engine_for(&device)?;
    engine.kernels.as_ref()?;
    if x.dtype() != DType::BF16 {
        return None;
    }
    let dims = x.dims();
    let n: usize = dims.iter().product();
    let xp = prim(x.clone());
    let out = empty(dims, DType::BF16, &device);
    run(&engine, &device, &[&xp, &out], |e, p| {
        let kernels = e.kernels.as_ref().ok_or("no kernels")?;
        let f = if gelu {
            &kernels.gelu_tanh
        } else {
            &kernels.silu
        };
        let n64 = n as i64;
        let mut launch = e.stream.launch_builder(f);
        launch.arg(&p[0]).arg(&p[1]).arg(&n64);
        // SAFETY: contiguous bf16 tensors of `n` elements.
        unsafe { launch.launch(grid(elementwise_blocks(e, n), 256, 0)) }
            .map(|_| ())
            .map_err(launch_err)
    });
    Some(wrap(out))
}

/// [`FramePackBackend::group_norm`] for fp16 and bf16 in three passes of our kernels (see
/// `kernels.cu`): no fp32 copy of the activation, which at the VAE's full resolution is
/// gigabytes.
fn group_norm_tuned(
    x: &Tensor<CudaBackend, 5>,
    weight: &Tensor<CudaBackend, 1>,
    bias: &Tensor<CudaBackend, 1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Option<Tensor<CudaBackend, 5>> {
    let device = x.device();
    let engine = engine_for(&device)?;
    engine.kernels.as_ref()?;
    let dtype = x.dtype();
    let is_f16 = kernel_dtype(dtype).filter(|&k| k != KERNEL_F32)?;
    let dims = x.dims();
    let [batch, channels, t, h, w] = dims;
    if weight.dtype() != dtype
        || bias.dtype() != dtype
        || weight.dims() != [channels]
        || bias.dims() != [channels]
        || groups == 0
        || channels % groups != 0
    {
        return None;
    }
    let per_channel = t * h * w;
    let span = channels / groups * per_channel;
    let n = batch * channels * per_channel;
    // One grid row per (batch, channel).
    if n == 0 || batch * channels > 65535 {
        return None;
    }
    let groups_total = batch * groups;
    // About 32k values per block: thousands of blocks at the VAE's full resolution.
    let chunks = (span / 32768).clamp(1, 1024);
    let xp = prim(x.clone());
    let wp = prim(weight.clone());
    let bp = prim(bias.clone());
    let sums = empty([groups_total * chunks], DType::F32, &device);
    let squares = empty([groups_total * chunks], DType::F32, &device);
    let stats = empty([groups_total * 2], DType::F32, &device);
    let out = empty(dims, dtype, &device);
    let tensors = [&xp, &wp, &bp, &sums, &squares, &stats, &out];
    run(&engine, &device, &tensors, |e, p| {
        let k = e.kernels.as_ref().ok_or("no kernels")?;
        let (span, chunks32, eps) = (span as i64, chunks as i32, eps as f32);
        let partials = LaunchConfig {
            grid_dim: (chunks as u32, groups_total as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let null = 0u64;
        for (previous, target) in [(&null, &p[3]), (&p[3], &p[4])] {
            let mut launch = e.stream.launch_builder(&k.group_norm_partials);
            launch
                .arg(&p[0])
                .arg(previous)
                .arg(target)
                .arg(&span)
                .arg(&chunks32)
                .arg(&is_f16);
            // SAFETY: x holds groups_total spans; the partial buffers groups_total x chunks.
            unsafe { launch.launch(partials) }.map_err(launch_err)?;
        }
        let total = groups_total as i32;
        let mut launch = e.stream.launch_builder(&k.group_norm_stats);
        launch
            .arg(&p[3])
            .arg(&p[4])
            .arg(&p[5])
            .arg(&total)
            .arg(&chunks32)
            .arg(&span)
            .arg(&eps);
        // SAFETY: stats holds two floats per group.
        unsafe { launch.launch(grid(groups_total.div_ceil(128), 128, 0)) }.map_err(launch_err)?;
        let (per_channel64, c, g, silu) = (
            per_channel as i64,
            channels as i32,
            groups as i32,
            i32::from(silu),
        );
        let mut launch = e.stream.launch_builder(&k.group_norm_apply);
        launch
            .arg(&p[0])
            .arg(&p[5])
            .arg(&p[1])
            .arg(&p[2])
            .arg(&p[6])
            .arg(&per_channel64)
            .arg(&c)
            .arg(&g)
            .arg(&is_f16)
            .arg(&silu);
        // One row of blocks per channel, about 8 values per thread.
        let apply = LaunchConfig {
            grid_dim: (
                per_channel.div_ceil(256 * 8).min(4096) as u32,
                (batch * channels) as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: contiguous x and out of n elements, weight and bias of `channels`.
        unsafe { launch.launch(apply) }
            .map(|_| ())
            .map_err(launch_err)
    });
    Some(wrap(out))
}

fn dequantize_fp8_tuned(
    codes: &Tensor<CudaBackend, 2, Int>,
    scales: &Tensor<CudaBackend, 1>,
    dtype: DType,
) -> Option<Tensor<CudaBackend, 2>> {
    let device = codes.device();
    let engine = engine_for(&device)?;
    engine.kernels.as_ref()?;
    let [rows, cols] = codes.dims();
    if dtype != DType::BF16 || codes.dtype() != DType::U8 || scales.dtype() != DType::F32 {
        return None;
    }
    if cols % 8 != 0 || rows == 0 || scales.dims() != [rows] {
        return None;
    }
    let cp = into_contiguous(codes.clone().into_primitive());
    let sp = prim(scales.clone());
    let out = empty([rows, cols], DType::BF16, &device);
    let chunks = rows * cols / 8;
    run(&engine, &device, &[&cp, &sp, &out], |e, p| {
        let kernels = e.kernels.as_ref().ok_or("no kernels")?;
        if p[0] % 8 != 0 {
            return Err(format!("fp8 codes at {:#x} are not 8-byte aligned", p[0]));
        }
        let (n, c) = (chunks as i64, cols as i32);
        let mut launch = e.stream.launch_builder(&kernels.fp8_dequant);
        launch.arg(&p[0]).arg(&p[1]).arg(&p[2]).arg(&n).arg(&c);
        // SAFETY: contiguous u8 codes and bf16 output of rows x cols, fp32 scales of rows.
        unsafe { launch.launch(grid(elementwise_blocks(e, chunks), 256, 0)) }
            .map(|_| ())
            .map_err(launch_err)
    });
    Some(wrap(out))
}

impl FramePackBackend for CudaBackend {
    fn conv3d_valid(
        x: Tensor<Self, 5>,
        weight: Tensor<Self, 5>,
        bias: Option<Tensor<Self, 1>>,
        stride: [usize; 3],
    ) -> Tensor<Self, 5> {
        conv::conv3d_tuned(&x, &weight, &bias, stride)
            .unwrap_or_else(|| portable::conv3d_valid::<Self>(x, weight, bias, stride))
    }

    fn group_norm(
        x: Tensor<Self, 5>,
        weight: Tensor<Self, 1>,
        bias: Tensor<Self, 1>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Tensor<Self, 5> {
        group_norm_tuned(&x, &weight, &bias, groups, eps, silu)
            .unwrap_or_else(|| crate::ops::group_norm_unfused(x, weight, bias, groups, eps, silu))
    }

    fn conv3d_replicate_padded(
        x: Tensor<Self, 5>,
        weight: Tensor<Self, 5>,
        bias: Option<Tensor<Self, 1>>,
        stride: [usize; 3],
        padding: [usize; 3],
    ) -> Tensor<Self, 5> {
        conv::conv3d_padded_tuned(&x, &weight, &bias, stride, padding)
            .unwrap_or_else(|| crate::ops::pad_then_conv3d(x, weight, bias, stride, padding))
    }

    fn with_exact_allocations<R>(device: &CudaDevice, work: impl FnOnce() -> R) -> R {
        use cubecl::Runtime;
        /// cubecl asks for `Send` because the work could run elsewhere; it runs right here,
        /// on the calling thread, before `memory_persistent_allocation` returns.
        struct OnThisThread<T>(T);
        // SAFETY: see above: the value never leaves the calling thread.
        unsafe impl<T> Send for OnThisThread<T> {}
        let work = OnThisThread(work);
        let client = CudaRuntime::client(device);
        let result = client.memory_persistent_allocation((), move |()| {
            let work = work;
            OnThisThread((work.0)())
        });
        match result {
            Ok(out) => out.0,
            Err(e) => raise(CudaError::Launch(format!(
                "exact-size allocation mode: {e:?}"
            ))),
        }
    }

    fn dequantize_fp8(
        codes: Tensor<Self, 2, Int>,
        scales: Tensor<Self, 1>,
        dtype: DType,
    ) -> Tensor<Self, 2> {
        dequantize_fp8_tuned(&codes, &scales, dtype)
            .unwrap_or_else(|| portable::dequantize_fp8::<Self>(codes, scales, dtype))
    }

    fn device_memory(device: &CudaDevice) -> Option<crate::ops::DeviceMemory> {
        device_report(device.index).map(|(_, used, total)| crate::ops::DeviceMemory {
            free: (total - used) as u64,
            total: total as u64,
        })
    }

    fn block_streamer(device: &CudaDevice) -> Box<dyn crate::streaming::BlockStreamer<Self>> {
        match stream::CudaStreamer::new(device) {
            Some(streamer) => Box::new(streamer),
            None => Box::new(crate::streaming::PortableStreamer::<Self>::new(device)),
        }
    }

    fn dense<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        dense_tuned(&x, &weight, &bias, false)
            .unwrap_or_else(|| portable::dense::<Self, D>(x, weight, bias))
    }

    fn dense_fp8<const D: usize>(
        x: Tensor<Self, D>,
        weight: &Fp8Weight<Self>,
        bias: Option<Tensor<Self, 1>>,
        gelu: bool,
    ) -> Tensor<Self, D> {
        dense_fp8_tuned(&x, weight, &bias, gelu)
            .unwrap_or_else(|| crate::ops::dense_fp8_expanded(x, weight, bias, gelu))
    }

    fn dense_gelu<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        dense_tuned(&x, &weight, &bias, true)
            .unwrap_or_else(|| Self::gelu_tanh(portable::dense::<Self, D>(x, weight, bias)))
    }

    fn attend(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        masked_keys: Option<Tensor<Self, 2, Bool>>,
    ) -> Tensor<Self, 4> {
        match masked_keys {
            None => attend_tuned(&q, &k, &v)
                .or_else(|| attention_gemm::attend_gemm(&q, &k, &v, false))
                .unwrap_or_else(|| portable::attend::<Self>(q, k, v, None)),
            mask => portable::attend::<Self>(q, k, v, mask),
        }
    }

    fn attend_causal(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
    ) -> Tensor<Self, 4> {
        attention_gemm::attend_gemm(&q, &k, &v, true)
            .unwrap_or_else(|| portable::attend_causal::<Self>(q, k, v))
    }

    fn layer_norm_fp32<const D: usize>(
        x: Tensor<Self, D>,
        weight: Option<Tensor<Self, 1>>,
        bias: Option<Tensor<Self, 1>>,
        eps: f64,
    ) -> Tensor<Self, D> {
        if weight.is_none() && bias.is_none() {
            if let Some(out) = layer_norm_tuned(&x, None, eps) {
                return out;
            }
        }
        portable::layer_norm_fp32::<Self, D>(x, weight, bias, eps)
    }

    fn layer_norm_modulate(
        x: Tensor<Self, 3>,
        shift: Tensor<Self, 3>,
        scale: Tensor<Self, 3>,
        eps: f64,
    ) -> Tensor<Self, 3> {
        layer_norm_tuned(&x, Some((&shift, &scale)), eps).unwrap_or_else(|| {
            portable::modulate::<Self>(
                portable::layer_norm_fp32::<Self, 3>(x, None, None, eps),
                shift,
                scale,
            )
        })
    }

    fn rms_norm<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> Tensor<Self, D> {
        rms_norm_rope_tuned(&x, &weight, eps, None)
            .unwrap_or_else(|| portable::rms_norm::<Self, D>(x, weight, eps))
    }

    fn rms_norm_rope(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 1>,
        eps: f64,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
    ) -> Tensor<Self, 4> {
        if let Some(out) = rms_norm_rope_tuned(&x, &weight, eps, Some((&cos, &sin))) {
            return out;
        }
        let normed = portable::rms_norm::<Self, 4>(x, weight, eps);
        let seq = normed.dims()[1];
        let rotated = cos.dims()[0];
        let head = portable::rope::<Self>(normed.clone().narrow(1, 0, rotated), cos, sin);
        if rotated == seq {
            head
        } else {
            Tensor::cat(vec![head, normed.narrow(1, rotated, seq - rotated)], 1)
        }
    }

    fn gated_residual(
        x: Tensor<Self, 3>,
        gate: Tensor<Self, 3>,
        y: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        gated_residual_tuned(&x, &gate, &y)
            .unwrap_or_else(|| portable::gated_residual::<Self>(x, gate, y))
    }

    fn gelu_tanh<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        activation_tuned(&x, true).unwrap_or_else(|| portable::gelu_tanh::<Self, D>(x))
    }

    fn silu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        activation_tuned(&x, false).unwrap_or_else(|| portable::silu::<Self, D>(x))
    }
}
