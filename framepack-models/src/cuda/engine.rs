//! The CUDA side of the tuned path: one context, stream, kernel module and cuBLASLt handle per
//! device, created on first use.
//!
//! burn's CubeCL runtime runs on its own non-blocking stream, which it does not expose. Each
//! tuned operation therefore (1) waits for burn's queued work (`Backend::sync`), (2) runs on
//! our stream, and (3) waits for it before handing the output back to burn. Unsynchronised,
//! the two streams read each other's half-written buffers (seen on an H100 while this path was
//! built: relative errors of 0.05-0.21).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::attention::{
    self, AttentionCall, AttentionKernel, FLASH_SMEM, HOPPER_KERNELS, SM80_KERNEL,
};
use super::error::CudaError;
use super::gemm::Gemm;

/// The kernel source, compiled at run time for the device's architecture.
const KERNELS: &str = include_str!("kernels.cu");

pub(crate) struct Kernels {
    pub ln_modulate: CudaFunction,
    pub ln_modulate_vec: CudaFunction,
    pub gated_residual_vec: CudaFunction,
    pub rms_norm_rope: CudaFunction,
    pub gated_residual: CudaFunction,
    pub gelu_tanh: CudaFunction,
    pub silu: CudaFunction,
    pub fp8_dequant: CudaFunction,
    /// Rows of bf16 activations to e4m3 codes and per-row scales (FP8 tensor-core GEMMs).
    pub quantize_rows_e4m3: CudaFunction,
    /// GroupNorm's passes (fp16 / bf16): partial sums, statistics, normalisation (+ SiLU).
    pub group_norm_partials: CudaFunction,
    pub group_norm_stats: CudaFunction,
    pub group_norm_apply: CudaFunction,
    /// The convolution's crop + bias + rounding of its fp32 accumulator.
    pub conv_epilogue: CudaFunction,
    /// The causal convolution's replicate padding, written channels-last.
    pub pad_channels_last: CudaFunction,
    /// The softmax of the cuBLASLt attention, fp32 scores to fp16/bf16 probabilities.
    pub softmax_rows: CudaFunction,
    /// The sm_80 tensor-core attention kernel.
    pub flash_attention: AttentionKernel,
    /// The wgmma kernels (sm_90a only) that passed the start-up self-test against the sm_80
    /// kernel, best first.
    pub hopper_attention: Vec<AttentionKernel>,
    _module: Arc<CudaModule>,
}

/// Everything the tuned operations of one device need.
pub(crate) struct Engine {
    pub stream: Arc<CudaStream>,
    /// A second stream for host-to-device weight copies (the low-VRAM mode), so that they
    /// overlap the compute on `stream`.
    pub copy_stream: Arc<CudaStream>,
    pub gemm: Gemm,
    /// `None` on GPUs older than compute capability 8.0 (no bf16 tensor cores): GEMMs still
    /// go through cuBLASLt, the other operations take the portable path.
    pub kernels: Option<Kernels>,
    pub multiprocessors: u32,
    pub ctx: Arc<CudaContext>,
    /// The CUDA device index.
    pub index: usize,
}

/// Whether the tuned kernels are on for the calling thread
/// ([`RuntimeOptions::tuned_kernels`](crate::runtime::RuntimeOptions)).
pub fn tuned_kernels() -> bool {
    crate::runtime::with_current(|o| o.tuned_kernels)
}

fn compile(ctx: &Arc<CudaContext>, major: i32, minor: i32) -> Result<Kernels, String> {
    // Hopper's warpgroup MMA needs the architecture-specific target (sm_90a).
    let suffix = if (major, minor) == (9, 0) { "a" } else { "" };
    let arch = format!("--gpu-architecture=compute_{major}{minor}{suffix}");
    let opts = CompileOptions {
        options: vec![arch, "--std=c++17".into()],
        ..Default::default()
    };
    // FRAMEPACK_KERNELS_SOURCE: a kernels.cu to compile instead of the built-in one, so that
    // kernel changes can be measured on a GPU machine without rebuilding (development only).
    let source = match std::env::var_os("FRAMEPACK_KERNELS_SOURCE") {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|e| format!("FRAMEPACK_KERNELS_SOURCE {}: {e}", path.to_string_lossy()))?,
        None => KERNELS.to_string(),
    };
    let ptx = compile_ptx_with_opts(source, opts).map_err(|e| format!("NVRTC: {e:?}"))?;
    let module = ctx
        .load_module(ptx)
        .map_err(|e| format!("loading kernels: {e:?}"))?;
    let f = |name: &str| {
        module
            .load_function(name)
            .map_err(|e| format!("kernel {name}: {e:?}"))
    };
    let attention_kernel = |name: &'static str, smem: u32, tma: bool| {
        let func = module.load_function(name).ok()?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .ok()?;
        Some(AttentionKernel {
            func,
            smem,
            name,
            tma,
        })
    };
    let flash_attention = attention_kernel(SM80_KERNEL, FLASH_SMEM, false)
        .ok_or_else(|| format!("kernel {SM80_KERNEL} unavailable"))?;
    // Absent unless compiled for sm_90a; a kernel whose shared memory cannot be granted is
    // skipped, and each must pass the self-test in `Engine::new`.
    let hopper_attention = HOPPER_KERNELS
        .iter()
        .filter_map(|&(name, smem, tma)| attention_kernel(name, smem, tma))
        .collect();
    Ok(Kernels {
        hopper_attention,
        ln_modulate: f("ln_modulate_bf16")?,
        ln_modulate_vec: f("ln_modulate_vec_bf16")?,
        gated_residual_vec: f("gated_residual_vec_bf16")?,
        rms_norm_rope: f("rms_norm_rope_bf16")?,
        gated_residual: f("gated_residual_bf16")?,
        gelu_tanh: f("gelu_tanh_bf16")?,
        silu: f("silu_bf16")?,
        fp8_dequant: f("fp8_dequant_bf16")?,
        quantize_rows_e4m3: f("quantize_rows_e4m3_bf16")?,
        group_norm_partials: f("group_norm_partials")?,
        group_norm_stats: f("group_norm_stats")?,
        group_norm_apply: f("group_norm_apply")?,
        conv_epilogue: f("conv_epilogue")?,
        pad_channels_last: f("pad_channels_last")?,
        softmax_rows: f("softmax_rows")?,
        flash_attention,
        _module: module,
    })
}

impl Kernels {
    /// The attention kernel for `call`, or the one in use where no call is given
    /// ([`attention::selected`]).
    pub(crate) fn attention(&self, call: Option<&AttentionCall>) -> &AttentionKernel {
        crate::runtime::with_current(|o| {
            attention::selected(
                &self.hopper_attention,
                &self.flash_attention,
                o.hopper_attention,
                o.attention_kernel.as_deref(),
                call,
            )
        })
    }
}

impl Engine {
    fn new(index: usize) -> Result<Self, String> {
        let ctx = CudaContext::new(index).map_err(|e| format!("CUDA context: {e:?}"))?;
        let attr = |a| {
            ctx.attribute(a)
                .map_err(|e| format!("device attribute: {e:?}"))
        };
        let major = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let multiprocessors =
            attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("CUDA stream: {e:?}"))?;
        let copy_stream = ctx
            .new_stream()
            .map_err(|e| format!("CUDA stream: {e:?}"))?;
        let gemm = Gemm::new(stream.clone())?;
        let mut kernels = if major >= 8 {
            Some(compile(&ctx, major, minor)?)
        } else {
            None
        };
        if let Some(k) = kernels.as_mut() {
            let candidates = std::mem::take(&mut k.hopper_attention);
            for candidate in candidates {
                match self_test_attention(&stream, &k.flash_attention, &candidate) {
                    Ok(()) => k.hopper_attention.push(candidate),
                    Err(e) => eprintln!(
                        "framepack: attention kernel {} disabled ({e})",
                        candidate.name
                    ),
                }
            }
        }
        Ok(Self {
            stream,
            copy_stream,
            gemm,
            kernels,
            multiprocessors,
            ctx,
            index,
        })
    }

    /// Makes this engine's context current on the calling thread (a no-op where it already
    /// is). Every entry point that makes raw driver or cuBLASLt calls starts with it: those
    /// calls use the thread's current context, which a thread other than the one that created
    /// the engine does not have (`CUDA_ERROR_INVALID_CONTEXT` for the TMA descriptors).
    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(|e| CudaError::Context {
            device: self.index,
            reason: format!("{e:?}"),
        })
    }
}

/// The engine of device `index`, or `None` (with one warning on stderr) if CUDA, NVRTC or
/// cuBLASLt cannot be set up; callers then take the portable path.
pub(crate) fn engine(index: usize) -> Option<Arc<Engine>> {
    static ENGINES: OnceLock<Mutex<HashMap<usize, Option<Arc<Engine>>>>> = OnceLock::new();
    let engines = ENGINES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut engines = engines.lock().ok()?;
    engines
        .entry(index)
        .or_insert_with(|| match Engine::new(index) {
            Ok(engine) => Some(Arc::new(engine)),
            Err(e) => {
                eprintln!("framepack: tuned CUDA operations unavailable on device {index} ({e}); using portable kernels");
                None
            }
        })
        .clone()
}

/// Name, and (used, total) bytes of memory, of CUDA device `index`.
pub fn device_report(index: usize) -> Option<(String, usize, usize)> {
    let ctx = CudaContext::new(index).ok()?;
    let name = ctx.name().ok()?;
    ctx.bind_to_thread().ok()?;
    let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
    Some((name, total - free, total))
}

/// Runs a Hopper attention kernel and the sm_80 kernel on the same random problem (edges
/// included) and fails unless they agree to bf16 precision.
fn self_test_attention(
    stream: &Arc<CudaStream>,
    sm80: &AttentionKernel,
    hopper: &AttentionKernel,
) -> Result<(), String> {
    use cudarc::driver::DevicePtr;
    let (heads, seq_q, seq_k) = (2usize, 300usize, 333usize);
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut random = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0;
                (v.to_bits() >> 16) as u16
            })
            .collect()
    };
    let e = |what: &str, err: cudarc::driver::DriverError| format!("{what}: {err:?}");
    let q = stream
        .clone_htod(&random(seq_q * heads * 128))
        .map_err(|x| e("upload", x))?;
    let kk = stream
        .clone_htod(&random(seq_k * heads * 128))
        .map_err(|x| e("upload", x))?;
    let v = stream
        .clone_htod(&random(seq_k * heads * 128))
        .map_err(|x| e("upload", x))?;
    let mut outputs = Vec::new();
    for kernel in [sm80, hopper] {
        let out = stream
            .alloc_zeros::<u16>(seq_q * heads * 128)
            .map_err(|x| e("alloc", x))?;
        {
            let ptr = |s: &cudarc::driver::CudaSlice<u16>| s.device_ptr(stream).0;
            let call = AttentionCall {
                q: ptr(&q),
                k: ptr(&kk),
                v: ptr(&v),
                o: ptr(&out),
                batch: 1,
                seq_q,
                seq_k,
                heads,
                v_row_stride: heads * 128,
                v_batch_stride: heads * 128 * seq_k,
            };
            attention::launch(stream, kernel, &call)?;
        }
        outputs.push(stream.clone_dtoh(&out).map_err(|x| e("download", x))?);
    }
    let f = |b: u16| f32::from_bits((b as u32) << 16) as f64;
    let (mut diff, mut norm) = (0f64, 0f64);
    for (a, b) in outputs[0].iter().zip(&outputs[1]) {
        let (a, b) = (f(*a), f(*b));
        if !b.is_finite() {
            return Err("non-finite output".into());
        }
        diff += (a - b) * (a - b);
        norm += a * a;
    }
    let err = (diff / norm.max(1e-30)).sqrt();
    if err > 1e-2 {
        return Err(format!("relative L2 {err:.3e} against the sm_80 kernel"));
    }
    Ok(())
}

/// A one-line description of the tuned path on device `index` (for logs and benchmarks).
pub fn engine_summary(index: usize) -> String {
    match engine(index) {
        None => "portable burn kernels (tuned CUDA path unavailable)".into(),
        Some(e) => match &e.kernels {
            None => "cuBLASLt GEMMs, portable kernels (GPU older than sm_80)".into(),
            Some(k) => format!(
                "cuBLASLt GEMMs + NVRTC kernels, attention: {}",
                k.attention(None).name
            ),
        },
    }
}
