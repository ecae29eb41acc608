//! The flash-attention kernels of `kernels.cu`: which exist on this GPU, which one runs, and
//! how each is launched (one place for the engine's self-test and for the tuned op).
//!
//! Every kernel takes 128 query rows per block of 256 threads (two warpgroups) and the same
//! arguments; the TMA kernel also takes a tensor map of K and of V, which the Hopper copy
//! engine uses to fetch whole key tiles into shared memory (already in the 128-byte swizzle
//! that wgmma reads) without the threads issuing a load each.

use cudarc::driver::sys::{
    self, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaFunction, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

/// Dynamic shared memory of the sm_80 kernel: Q (32 KB) + 2 stages of K and V (64 KB).
pub(crate) const FLASH_SMEM: u32 = 96 * 1024;

/// One 128-key tile of K or V in shared memory (bf16, head dim 128).
const TILE_BYTES: u32 = 32 * 1024;

/// One attention kernel: its function, dynamic shared memory, symbol and argument form.
pub(crate) struct AttentionKernel {
    pub func: CudaFunction,
    pub smem: u32,
    pub name: &'static str,
    /// Takes tensor maps of K and V after the common arguments.
    pub tma: bool,
}

/// The Hopper (sm_90a, wgmma) kernels, best first: (symbol, dynamic shared memory, TMA).
/// Shared memory is 1 KB of alignment slack, Q and three stages of K and V tiles, except the
/// simple kernel's two.
pub(crate) const HOPPER_KERNELS: [(&str, u32, bool); 3] = [
    (
        "flash_attention_wgmma_tma_bf16",
        1024 + 7 * TILE_BYTES,
        true,
    ),
    (
        "flash_attention_wgmma_pipelined_bf16",
        1024 + 7 * TILE_BYTES,
        false,
    ),
    ("flash_attention_wgmma_bf16", 1024 + 5 * TILE_BYTES, false),
];

/// The sm_80 (mma.sync) kernel, available on every GPU the tuned path runs on.
pub(crate) const SM80_KERNEL: &str = "flash_attention_fwd_bf16";

/// The kernel attention runs on: the one `choice` names where it exists, else the first Hopper
/// kernel (unless Hopper kernels are switched off), else the sm_80 kernel; a TMA kernel gives
/// way to the next one where `call`'s operands do not suit it.
pub(crate) fn selected<'a>(
    hopper: &'a [AttentionKernel],
    sm80: &'a AttentionKernel,
    hopper_enabled: bool,
    choice: Option<&str>,
    call: Option<&AttentionCall>,
) -> &'a AttentionKernel {
    let usable = |k: &&AttentionKernel| !k.tma || call.is_none_or(AttentionCall::tma_ready);
    let chosen = choice.and_then(|name| {
        hopper
            .iter()
            .chain([sm80])
            .filter(usable)
            .find(|k| k.name == name)
    });
    if let Some(k) = chosen {
        return k;
    }
    if !hopper_enabled {
        return sm80;
    }
    hopper.iter().find(usable).unwrap_or(sm80)
}

/// The problem one launch solves: `q`, `k`, `o` contiguous `[batch, seq, heads, 128]` bf16,
/// `v` of `k`'s shape with its own token and batch strides (elements).
pub(crate) struct AttentionCall {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub batch: usize,
    pub seq_q: usize,
    pub seq_k: usize,
    pub heads: usize,
    pub v_row_stride: usize,
    pub v_batch_stride: usize,
}

impl AttentionCall {
    /// Whether the TMA kernel can describe these operands: 16-byte aligned addresses and
    /// strides (as the other kernels' 16-byte loads need too).
    pub(crate) fn tma_ready(&self) -> bool {
        self.k.is_multiple_of(16)
            && self.v.is_multiple_of(16)
            && (2 * self.v_row_stride).is_multiple_of(16)
            && (2 * self.v_batch_stride).is_multiple_of(16)
    }
}

/// A TMA descriptor, passed to the kernel by value (`const __grid_constant__`).
#[repr(transparent)]
#[derive(Clone, Copy)]
struct TensorMap(sys::CUtensorMap);

// SAFETY: a plain 128-byte descriptor; the kernel declares the parameter with this layout.
unsafe impl DeviceRepr for TensorMap {}

/// The tensor map of one `[batch, seq, heads, 128]` bf16 operand with token stride
/// `row_stride` and batch stride `batch_stride` (elements): boxes of 64 dims x 1 head x 128
/// tokens, swizzled by 128 bytes; tokens past `seq` read as zeros.
fn tensor_map(
    ptr: u64,
    heads: usize,
    seq: usize,
    batch: usize,
    row_stride: usize,
    batch_stride: usize,
) -> Result<TensorMap, String> {
    let dims: [u64; 4] = [128, heads as u64, seq as u64, batch as u64];
    // Byte strides of dimensions 1..3 (dimension 0 is contiguous).
    let strides: [u64; 3] = [256, 2 * row_stride as u64, 2 * batch_stride as u64];
    if !ptr.is_multiple_of(16) || strides.iter().any(|s| s % 16 != 0) {
        return Err("attention operand not 16-byte aligned for TMA".into());
    }
    let boxes: [u32; 4] = [64, 1, 128, 1];
    let element_strides: [u32; 4] = [1; 4];
    // SAFETY: a plain-old-data struct that the call below fills.
    let mut map: sys::CUtensorMap = unsafe { std::mem::zeroed() };
    // SAFETY: the arrays have the rank's length; the address is only recorded, not read.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            4,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("TMA descriptor: {status:?}"));
    }
    Ok(TensorMap(map))
}

/// Enqueues `kernel` on `stream` for `call`.
pub(crate) fn launch(
    stream: &CudaStream,
    kernel: &AttentionKernel,
    call: &AttentionCall,
) -> Result<(), String> {
    let narrow = |x: usize, what: &str| {
        i32::try_from(x).map_err(|_| format!("attention {what} {x} exceeds the kernel's range"))
    };
    let (sq, sk, h) = (
        narrow(call.seq_q, "queries")?,
        narrow(call.seq_k, "keys")?,
        narrow(call.heads, "heads")?,
    );
    let v_row = narrow(call.v_row_stride, "value stride")?;
    let v_batch = call.v_batch_stride as i64;
    let scale_log2 = std::f32::consts::LOG2_E / 128f32.sqrt();
    if !call.v.is_multiple_of(16) {
        return Err(format!("v at {:#x} is not 16-byte aligned", call.v));
    }
    let maps = if kernel.tma {
        let heads = call.heads;
        Some((
            tensor_map(
                call.k,
                heads,
                call.seq_k,
                call.batch,
                heads * 128,
                call.seq_k * heads * 128,
            )?,
            tensor_map(
                call.v,
                heads,
                call.seq_k,
                call.batch,
                call.v_row_stride,
                call.v_batch_stride,
            )?,
        ))
    } else {
        None
    };
    let cfg = LaunchConfig {
        grid_dim: (
            call.seq_q.div_ceil(128) as u32,
            call.heads as u32,
            call.batch as u32,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: kernel.smem,
    };
    let mut launch = stream.launch_builder(&kernel.func);
    launch
        .arg(&call.q)
        .arg(&call.k)
        .arg(&call.v)
        .arg(&call.o)
        .arg(&sq)
        .arg(&sk)
        .arg(&h)
        .arg(&scale_log2)
        .arg(&v_row)
        .arg(&v_batch);
    if let Some((map_k, map_v)) = &maps {
        launch.arg(map_k).arg(map_v);
    }
    // SAFETY: q, k and o are contiguous bf16 tensors of the shapes in `call`; v has k's shape
    // with the strides passed; the tensor maps describe the same memory.
    unsafe { launch.launch(cfg) }
        .map(|_| ())
        .map_err(|e| format!("attention kernel {}: {e:?}", kernel.name))
}
