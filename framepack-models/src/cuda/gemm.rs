//! Dense layers through cuBLASLt: bf16, fp16 or fp32 operands, fp32 accumulation, bias and GELU
//! fused into the epilogue.
//!
//! Row-major `y[M, N] = x[M, K] · W[N, K]ᵀ + b` is column-major `yᵀ = op(W) · xᵀ` with
//! `op = transpose`: cuBLASLt sees `A = W` (K×N, ld K, transposed), `B = x` (K×M, ld K) and
//! `C = y` (N×M, ld N), and the bias runs along its rows, the output features. Descriptors and
//! the chosen algorithm are cached per shape.
//!
//! FP8 products ([`GemmType::Fp8E4m3`], Hopper and later): `A` and `B` are e4m3 codes, each with
//! one fp32 scale per row of the row-major matrices (cuBLASLt's outer-vector scaling: one per
//! output feature for `W`, one per token for `x`), the output bf16.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

/// What the epilogue adds to the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    /// `x · Wᵀ`
    None,
    /// `x · Wᵀ + b`
    Bias,
    /// `GELU_tanh(x · Wᵀ + b)`
    GeluBias,
    /// `GELU_tanh(x · Wᵀ)`
    Gelu,
}

impl Epilogue {
    /// The epilogue of a dense layer with or without GELU and bias.
    pub(crate) fn of(gelu: bool, bias: bool) -> Self {
        match (gelu, bias) {
            (false, false) => Self::None,
            (false, true) => Self::Bias,
            (true, true) => Self::GeluBias,
            (true, false) => Self::Gelu,
        }
    }
}

/// Element type of all operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GemmType {
    Bf16,
    /// fp16 (the text and image encoders and the VAE run in fp16, as the reference).
    F16,
    F32,
    /// e4m3 weights and activations with per-row fp32 scales ([`GemmCall::scales`]), bf16 out.
    Fp8E4m3,
}

impl GemmType {
    /// The operand type for tensors of `dtype`, if cuBLASLt is wired for it.
    pub(crate) fn of(dtype: burn::tensor::DType) -> Option<Self> {
        use burn::tensor::DType;
        match dtype {
            DType::BF16 => Some(Self::Bf16),
            DType::F16 => Some(Self::F16),
            DType::F32 => Some(Self::F32),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    m: u64,
    n: u64,
    k: u64,
    epilogue: Epilogue,
    ty: GemmType,
    /// Output (and accumulator) in fp32 whatever the operands' type.
    f32_out: bool,
    /// Smallest alignment (bytes, power of two up to 256) of the operand pointers.
    align: u32,
}

/// Cached descriptors and algorithm for one shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    /// The heuristic's other candidates, timed on the first call of the shape.
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
}

/// How many algorithms the heuristic is asked for; the fastest on the real operands wins.
const CANDIDATES: usize = 16;

// SAFETY: the descriptors are plain host objects owned by the plan; they are only used while
// the `Gemm` mutex is held.
unsafe impl Send for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by cuBLASLt for this plan and is destroyed once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle with its workspace and plan cache.
pub(crate) struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<PlanKey, Plan>>,
    /// Shapes and types cuBLASLt has no algorithm for ([`Gemm::supports`]), with its error.
    unsupported: Mutex<HashMap<PlanKey, String>>,
    stream: Arc<CudaStream>,
}

// SAFETY: the handle is used only under the plans mutex (one GEMM at a time).
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        if let Ok(mut plans) = self.plans.lock() {
            plans.clear();
        }
        // SAFETY: the handle was created in `new` and is destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// One dense call: device pointers and sizes.
pub(crate) struct GemmCall {
    pub x: u64,
    pub w: u64,
    pub bias: Option<u64>,
    pub out: u64,
    /// Rows of `x` (tokens).
    pub m: u64,
    /// Output features.
    pub n: u64,
    /// Input features.
    pub k: u64,
    pub epilogue: Epilogue,
    pub ty: GemmType,
    /// `out` is fp32 (for bf16 or fp16 operands too).
    pub f32_out: bool,
    /// `out += x · Wᵀ` instead of `out = x · Wᵀ` (with `f32_out`: a sum of products rounded
    /// once, the convolution's taps).
    pub accumulate: bool,
    /// [`GemmType::Fp8E4m3`]: device pointers of the fp32 row scales of `W` (`n` of them) and
    /// of `x` (`m`).
    pub scales: Option<(u64, u64)>,
}

/// Sets one attribute of a matmul descriptor to `value`.
///
/// # Safety
/// `T` must be the type cuBLASLt documents for `attr`, and `desc` a live descriptor.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), lt::CublasError> {
    lt::set_matmul_desc_attribute(
        desc,
        attr,
        value as *const T as *const c_void,
        size_of::<T>(),
    )
}

fn alignment(ptrs: &[u64]) -> u32 {
    ptrs.iter()
        .map(|&p| {
            if p == 0 {
                256
            } else {
                1u64 << p.trailing_zeros().min(8)
            }
        })
        .min()
        .unwrap_or(256) as u32
}

impl Gemm {
    pub(crate) fn new(stream: Arc<CudaStream>) -> Result<Self, String> {
        let handle = lt::create_handle().map_err(|e| format!("cuBLASLt handle: {e:?}"))?;
        // 32 MiB: cuBLASLt's recommendation for Hopper.
        let workspace = unsafe { stream.alloc::<u8>(32 << 20) }
            .map_err(|e| format!("cuBLASLt workspace: {e:?}"))?;
        Ok(Self {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
            unsupported: Mutex::new(HashMap::new()),
            stream,
        })
    }

    fn plan(&self, key: PlanKey) -> Result<Plan, String> {
        let err = |what: &str, e: lt::CublasError| format!("cuBLASLt {what}: {e:?}");
        let (data, compute) = match key.ty {
            GemmType::Bf16 => (
                sys::cudaDataType_t::CUDA_R_16BF,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            GemmType::F16 => (
                sys::cudaDataType_t::CUDA_R_16F,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            GemmType::F32 => (
                sys::cudaDataType_t::CUDA_R_32F,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            GemmType::Fp8E4m3 => (
                sys::cudaDataType_t::CUDA_R_8F_E4M3,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
        };
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType_t::CUDA_R_32F)
            .map_err(|e| err("desc", e))?;
        let a = lt::create_matrix_layout(data, key.k, key.n, key.k as i64)
            .map_err(|e| err("layout A", e))?;
        let b = lt::create_matrix_layout(data, key.k, key.m, key.k as i64)
            .map_err(|e| err("layout B", e))?;
        let out_type = match (key.f32_out, key.ty) {
            (true, _) => sys::cudaDataType_t::CUDA_R_32F,
            (false, GemmType::Fp8E4m3) => sys::cudaDataType_t::CUDA_R_16BF,
            (false, _) => data,
        };
        let c = lt::create_matrix_layout(out_type, key.n, key.m, key.n as i64)
            .map_err(|e| err("layout C", e))?;
        let mut plan = Plan {
            desc,
            a,
            b,
            c,
            // SAFETY: a plain-old-data struct, filled by the heuristic below.
            algo: unsafe { std::mem::zeroed() },
            candidates: Vec::new(),
        };
        let transpose: i32 = 1;
        let epilogue = match key.epilogue {
            Epilogue::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluBias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
            Epilogue::Gelu => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU,
        };
        // SAFETY: the attribute buffers live for the duration of each call and have the sizes
        // cuBLASLt documents for these attributes.
        unsafe {
            set_desc(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &transpose,
            )
            .map_err(|e| err("transa", e))?;
            set_desc(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue,
            )
            .map_err(|e| err("epilogue", e))?;
            if matches!(key.epilogue, Epilogue::Bias | Epilogue::GeluBias) {
                // A non-null placeholder so the heuristic knows a bias exists; set per call.
                let placeholder: u64 = 256;
                set_desc(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &placeholder,
                )
                .map_err(|e| err("bias pointer", e))?;
            }
            if key.ty == GemmType::Fp8E4m3 {
                let mode =
                    sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F
                        as i32;
                // Non-null placeholders, set per call: cuBLASLt 13.1's heuristic answers
                // INVALID_VALUE for vector scales without pointers (measured on an H100).
                let placeholder: u64 = 256;
                for (mode_attr, pointer_attr) in [
                    (
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                    ),
                    (
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                    ),
                ] {
                    set_desc(desc, mode_attr, &mode).map_err(|e| err("scale mode", e))?;
                    set_desc(desc, pointer_attr, &placeholder)
                        .map_err(|e| err("scale pointer", e))?;
                }
                // Fast accumulation (no periodic promotion of the tensor cores' partial sums):
                // 1.27x faster on an H100 at 17500x3072x3072, with a relative error of the
                // product of 2.0e-3 instead of 1.7e-3, both far below e4m3's rounding of the
                // operands (tools/cuda/probe_gemm.py).
                let fast: i8 = 1;
                set_desc(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_FAST_ACCUM,
                    &fast,
                )
                .map_err(|e| err("fast accumulation", e))?;
            }
            let pref = lt::create_matmul_pref().map_err(|e| err("preference", e))?;
            let ws: usize = 32 << 20;
            let align = key.align;
            let set_pref = |attr, value: *const c_void, size| {
                lt::set_matmul_pref_attribute(pref, attr, value, size)
            };
            let result = (|| {
                set_pref(
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const usize as *const c_void,
                    size_of::<usize>(),
                )?;
                for attr in [
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                ] {
                    set_pref(attr, &align as *const u32 as *const c_void, size_of::<u32>())?;
                }
                let mut results: [sys::cublasLtMatmulHeuristicResult_t; CANDIDATES] =
                    std::mem::zeroed();
                let mut count: i32 = 0;
                sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    desc,
                    a,
                    b,
                    c,
                    c,
                    pref,
                    CANDIDATES as i32,
                    results.as_mut_ptr(),
                    &mut count,
                )
                .result()?;
                Ok(results[..count.max(0) as usize]
                    .iter()
                    .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                    .map(|r| r.algo)
                    .collect::<Vec<_>>())
            })();
            let _ = lt::destroy_matmul_pref(pref);
            let algos = result.map_err(|e| err("heuristic", e))?;
            plan.algo = *algos.first().ok_or_else(|| {
                format!(
                    "cuBLASLt has no algorithm for {}x{}x{}",
                    key.m, key.n, key.k
                )
            })?;
            plan.candidates = algos;
        }
        Ok(plan)
    }

    fn key(call: &GemmCall) -> PlanKey {
        let mut ptrs = vec![call.x, call.w, call.out];
        ptrs.extend(call.bias);
        PlanKey {
            m: call.m,
            n: call.n,
            k: call.k,
            epilogue: call.epilogue,
            ty: call.ty,
            f32_out: call.f32_out,
            align: alignment(&ptrs),
        }
    }

    /// Whether cuBLASLt has an algorithm for `call` on this GPU (FP8 products need FP8
    /// tensor cores and, for per-row scales, a recent cuBLASLt); the answer is cached.
    pub(crate) fn supports(&self, call: &GemmCall) -> bool {
        self.check(call).is_ok()
    }

    /// [`Gemm::supports`], with cuBLASLt's reason when not.
    pub(crate) fn check(&self, call: &GemmCall) -> Result<(), String> {
        let key = Self::key(call);
        let mut unsupported = self
            .unsupported
            .lock()
            .map_err(|_| "cuBLASLt plan cache poisoned".to_string())?;
        if let Some(reason) = unsupported.get(&key) {
            return Err(reason.clone());
        }
        if self
            .plans
            .lock()
            .is_ok_and(|plans| plans.contains_key(&key))
        {
            return Ok(());
        }
        self.plan(key).map(drop).inspect_err(|reason| {
            unsupported.insert(key, reason.clone());
        })
    }

    /// Enqueues one dense layer on the engine's stream.
    pub(crate) fn run(&self, call: &GemmCall) -> Result<(), String> {
        let key = Self::key(call);
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| "cuBLASLt plan cache poisoned".to_string())?;
        if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(key) {
            let mut plan = self.plan(key)?;
            self.autotune(&mut plan, call)?;
            e.insert(plan);
        }
        let plan = &plans[&key];
        self.launch(plan, &plan.algo, call)
    }

    /// Times every candidate algorithm on the call's own operands (a few tens of
    /// milliseconds, once per shape) and keeps the fastest: the heuristic's first guess is not
    /// always the best for the transformer's shapes. Each candidate's time is the best of
    /// three rounds taken in turn over all candidates, so a change of clock speed during the
    /// search does not favour whichever candidate ran in the fast moment.
    fn autotune(&self, plan: &mut Plan, call: &GemmCall) -> Result<(), String> {
        // Timing runs write the output: an accumulating call would add them up. Its plan keeps
        // the heuristic's first choice.
        if plan.candidates.len() < 2
            || call.accumulate
            || std::env::var_os("FRAMEPACK_GEMM_NO_AUTOTUNE").is_some()
        {
            return Ok(());
        }
        let sync = || {
            self.stream
                .synchronize()
                .map_err(|e| format!("cuBLASLt autotune: {e:?}"))
        };
        // An algorithm that refuses these operands is simply skipped.
        let usable: Vec<_> = plan
            .candidates
            .iter()
            .filter(|algo| self.launch(plan, algo, call).is_ok())
            .copied()
            .collect();
        sync()?;
        let mut best_times = vec![f64::INFINITY; usable.len()];
        for _round in 0..3 {
            for (algo, best) in usable.iter().zip(best_times.iter_mut()) {
                let start = std::time::Instant::now();
                for _ in 0..4 {
                    self.launch(plan, algo, call)?;
                }
                sync()?;
                *best = best.min(start.elapsed().as_secs_f64());
            }
        }
        if let Some((i, _)) = best_times
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
        {
            plan.algo = usable[i];
        }
        Ok(())
    }

    /// Enqueues the product with `algo`.
    fn launch(
        &self,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        call: &GemmCall,
    ) -> Result<(), String> {
        let (alpha, beta) = (1f32, if call.accumulate { 1f32 } else { 0f32 });
        let (workspace, _record) = self.workspace.device_ptr(&self.stream);
        // SAFETY: pointers come from live allocations of the right sizes (checked by the
        // caller from the tensors' shapes); the stream outlives the call.
        unsafe {
            if let Some(bias) = call.bias {
                set_desc(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bias,
                )
                .map_err(|e| format!("cuBLASLt bias pointer: {e:?}"))?;
            }
            if let Some((w_scales, x_scales)) = call.scales {
                for (attr, ptr) in [
                    (
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                        w_scales,
                    ),
                    (
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                        x_scales,
                    ),
                ] {
                    set_desc(plan.desc, attr, &ptr)
                        .map_err(|e| format!("cuBLASLt scale pointer: {e:?}"))?;
                }
            }
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                call.w as *const c_void,
                plan.a,
                call.x as *const c_void,
                plan.b,
                call.out as *const c_void,
                plan.c,
                call.out as *mut c_void,
                plan.c,
                algo,
                workspace as *mut c_void,
                32 << 20,
                self.stream.cu_stream() as *mut _,
            )
            .map_err(|e| format!("cuBLASLt matmul {}x{}x{}: {e:?}", call.m, call.n, call.k))
        }
    }
}
