//! The CUDA side of the tuned path: one context, stream, kernel module and cuBLASLt handle per
//! device, created on first use.
//!
//! burn's CubeCL runtime runs on its own non-blocking stream, which it does not expose. Each
//! tuned operation therefore (1) waits for burn's queued work (`Backend::sync`), (2) runs on
//! our stream, and (3) waits for it before handing the output back to burn. Unsynchronised,
//! the two streams read each other's half-written buffers (seen on an H100 while this path was
//! built: relative errors of 0.05-0.21).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::gemm::Gemm;

/// The kernel source, compiled at run time for the device's architecture.
const KERNELS: &str = include_str!("kernels.cu");

/// Dynamic shared memory of the flash-attention kernel: Q (32 KB) + 2 stages of K and V (64 KB).
pub(crate) const FLASH_SMEM: u32 = 96 * 1024;

pub(crate) struct Kernels {
    pub ln_modulate: CudaFunction,
    pub rms_norm_rope: CudaFunction,
    pub gated_residual: CudaFunction,
    pub gelu_tanh: CudaFunction,
    pub silu: CudaFunction,
    pub flash_attention: CudaFunction,
    _module: Arc<CudaModule>,
}

/// Everything the tuned operations of one device need.
pub(crate) struct Engine {
    pub stream: Arc<CudaStream>,
    pub gemm: Gemm,
    /// `None` on GPUs older than compute capability 8.0 (no bf16 tensor cores): GEMMs still
    /// go through cuBLASLt, the other operations take the portable path.
    pub kernels: Option<Kernels>,
    pub multiprocessors: u32,
    _ctx: Arc<CudaContext>,
}

static TUNED: AtomicBool = AtomicBool::new(true);

/// Turns the tuned CUDA kernels on or off for the whole process (on by default). With them
/// off, every operation takes the portable burn path: used to compare both on the same inputs.
pub fn set_tuned_kernels(enabled: bool) {
    TUNED.store(enabled, Ordering::SeqCst);
}

/// Whether the tuned kernels are on.
pub fn tuned_kernels() -> bool {
    TUNED.load(Ordering::SeqCst) && std::env::var_os("FRAMEPACK_PORTABLE_OPS").is_none()
}

fn compile(ctx: &Arc<CudaContext>, major: i32, minor: i32) -> Result<Kernels, String> {
    let arch = format!("--gpu-architecture=compute_{major}{minor}");
    let opts = CompileOptions {
        options: vec![arch, "--std=c++17".into()],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(KERNELS, opts).map_err(|e| format!("NVRTC: {e:?}"))?;
    let module = ctx
        .load_module(ptx)
        .map_err(|e| format!("loading kernels: {e:?}"))?;
    let f = |name: &str| {
        module
            .load_function(name)
            .map_err(|e| format!("kernel {name}: {e:?}"))
    };
    let flash_attention = f("flash_attention_fwd_bf16")?;
    flash_attention
        .set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            FLASH_SMEM as i32,
        )
        .map_err(|e| format!("flash attention shared memory: {e:?}"))?;
    Ok(Kernels {
        ln_modulate: f("ln_modulate_bf16")?,
        rms_norm_rope: f("rms_norm_rope_bf16")?,
        gated_residual: f("gated_residual_bf16")?,
        gelu_tanh: f("gelu_tanh_bf16")?,
        silu: f("silu_bf16")?,
        flash_attention,
        _module: module,
    })
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
        let gemm = Gemm::new(stream.clone())?;
        let kernels = if major >= 8 {
            Some(compile(&ctx, major, minor)?)
        } else {
            None
        };
        Ok(Self {
            stream,
            gemm,
            kernels,
            multiprocessors,
            _ctx: ctx,
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
