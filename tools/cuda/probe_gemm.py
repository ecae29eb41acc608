"""What this GPU's cuBLASLt accepts for FP8 GEMMs, and PyTorch's kernel rates on the transformer's
shapes, both timed with CUDA events around back-to-back launches.

Run by hand on the GPU machine (PyTorch with CUDA; no Rust needed):

    LD_LIBRARY_PATH=/usr/local/cuda/lib64 python3 tools/cuda/probe_gemm.py

For each FP8 scale mode of A (the weight) and B (the activations) and each epilogue it asks
cuBLASLt's heuristic for an algorithm on the layout our engine uses (`framepack-models/src/cuda/
gemm.rs`: A = W transposed, B = x, C = D = y, bf16 out), runs the first algorithm with all
scales 1, compares with a float32 product of the same codes and prints the time. Then PyTorch's
own bf16 matmuls, `torch._scaled_mm` and flash attention on the same shapes, as the card's
reference rates. Prints a table last.
"""

import ctypes

import torch

# cuBLASLt enum values (cublasLt.h, CUDA 12.9+ / 13).
COMPUTE_32F = 68
R_32F, R_16BF, R_8F_E4M3 = 0, 14, 28
DESC_TRANSA, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 7, 8
DESC_A_SCALE_POINTER, DESC_B_SCALE_POINTER = 17, 18
DESC_FAST_ACCUM, DESC_A_SCALE_MODE, DESC_B_SCALE_MODE = 25, 31, 32
PREF_MAX_WORKSPACE = 1
EPILOGUES = {"none": 1, "bias": 4, "gelu+bias": 36}
SCALE_MODES = {"scalar": 0, "outer-vec": 3, "vec128": 4, "blk128x128": 5}

WORKSPACE = 32 << 20


def load_lt():
    for name in ("libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise SystemExit("libcublasLt not found: set LD_LIBRARY_PATH")


class HeuristicResult(ctypes.Structure):
    _fields_ = [
        ("algo", ctypes.c_uint64 * 8),
        ("workspace", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


lt = load_lt()
handle = ctypes.c_void_p()
assert lt.cublasLtCreate(ctypes.byref(handle)) == 0
lt.cublasLtGetVersion.restype = ctypes.c_size_t
print("cuBLASLt version", lt.cublasLtGetVersion(), "torch", torch.__version__, torch.version.cuda)
print("device", torch.cuda.get_device_name())


def set_attr(fn, obj, attr, value, ctype):
    v = ctype(value)
    status = fn(obj, attr, ctypes.byref(v), ctypes.sizeof(v))
    if status != 0:
        raise RuntimeError(f"attribute {attr}: status {status}")


def layout(dtype, rows, cols, ld):
    lay = ctypes.c_void_p()
    assert lt.cublasLtMatrixLayoutCreate(ctypes.byref(lay), dtype, ctypes.c_uint64(rows),
                                         ctypes.c_uint64(cols), ctypes.c_int64(ld)) == 0
    return lay


def events_time(fn, iters=20):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / iters / 1e3)
    return best


def fp8_case(m, n, k, a_mode, b_mode, epilogue, fast_accum, pointers_before_heuristic=True,
             align=None):
    """(status text, seconds or None, relative L2 error or None). `pointers_before_heuristic`
    False leaves the scale pointers unset until the product runs; `align` sets the preference's
    minimum operand alignments (bytes)."""
    w = (torch.randn(n, k, device="cuda") * 0.5).to(torch.float8_e4m3fn)
    x = (torch.randn(m, k, device="cuda") * 0.5).to(torch.float8_e4m3fn)
    bias = torch.randn(n, device="cuda").to(torch.bfloat16)
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    # Generous scale buffers of ones: every mode reads at most this many floats.
    a_scales = torch.ones(n * (k // 128 + 1), device="cuda")
    b_scales = torch.ones(m * (k // 128 + 1), device="cuda")
    workspace = torch.empty(WORKSPACE, device="cuda", dtype=torch.uint8)

    desc = ctypes.c_void_p()
    assert lt.cublasLtMatmulDescCreate(ctypes.byref(desc), COMPUTE_32F, R_32F) == 0
    set_attr(lt.cublasLtMatmulDescSetAttribute, desc, DESC_TRANSA, 1, ctypes.c_int32)
    set_attr(lt.cublasLtMatmulDescSetAttribute, desc, DESC_EPILOGUE, EPILOGUES[epilogue], ctypes.c_int32)
    if epilogue != "none":
        set_attr(lt.cublasLtMatmulDescSetAttribute, desc, DESC_BIAS_POINTER, bias.data_ptr(), ctypes.c_uint64)
    try:
        set_attr(lt.cublasLtMatmulDescSetAttribute, desc, DESC_A_SCALE_MODE, SCALE_MODES[a_mode], ctypes.c_int32)
        set_attr(lt.cublasLtMatmulDescSetAttribute, desc, DESC_B_SCALE_MODE, SCALE_MODES[b_mode], ctypes.c_int32)
    except RuntimeError as e:
        return f"scale mode refused ({e})", None, None
    def set_scale_pointers():
        set_attr(lt.cublasLtMatmulDescSetAttribute, desc, DESC_A_SCALE_POINTER, a_scales.data_ptr(), ctypes.c_uint64)
        set_attr(lt.cublasLtMatmulDescSetAttribute, desc, DESC_B_SCALE_POINTER, b_scales.data_ptr(), ctypes.c_uint64)

    if pointers_before_heuristic:
        set_scale_pointers()
    if fast_accum:
        set_attr(lt.cublasLtMatmulDescSetAttribute, desc, DESC_FAST_ACCUM, 1, ctypes.c_int8)
    a = layout(R_8F_E4M3, k, n, k)
    b = layout(R_8F_E4M3, k, m, k)
    c = layout(R_16BF, n, m, n)
    pref = ctypes.c_void_p()
    assert lt.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)) == 0
    set_attr(lt.cublasLtMatmulPreferenceSetAttribute, pref, PREF_MAX_WORKSPACE, WORKSPACE, ctypes.c_size_t)
    if align is not None:
        for attr in (5, 6, 7, 8):  # CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES
            set_attr(lt.cublasLtMatmulPreferenceSetAttribute, pref, attr, align, ctypes.c_uint32)
    results = (HeuristicResult * 8)()
    count = ctypes.c_int(0)
    status = lt.cublasLtMatmulAlgoGetHeuristic(handle, desc, a, b, c, c, pref, 8, results, ctypes.byref(count))
    if status != 0 or count.value == 0:
        return f"heuristic status {status}, {count.value} algorithms", None, None
    if not pointers_before_heuristic:
        set_scale_pointers()
    algo = results[0].algo
    alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
    stream = torch.cuda.current_stream().cuda_stream

    def run():
        st = lt.cublasLtMatmul(handle, desc, ctypes.byref(alpha), ctypes.c_void_p(w.data_ptr()), a,
                               ctypes.c_void_p(x.data_ptr()), b, ctypes.byref(beta),
                               ctypes.c_void_p(out.data_ptr()), c, ctypes.c_void_p(out.data_ptr()), c,
                               ctypes.byref(algo), ctypes.c_void_p(workspace.data_ptr()),
                               ctypes.c_size_t(WORKSPACE), ctypes.c_void_p(stream))
        if st != 0:
            raise RuntimeError(f"matmul status {st}")

    try:
        run()
        torch.cuda.synchronize()
    except RuntimeError as e:
        return str(e), None, None
    expect = x.float() @ w.float().t()
    if epilogue != "none":
        expect = expect + bias.float()
    if epilogue == "gelu+bias":
        expect = torch.nn.functional.gelu(expect, approximate="tanh")
    err = ((out.float() - expect).norm() / expect.norm()).item()
    return f"ok ({count.value} algorithms)", events_time(run), err


SHAPES = [
    ("fused qkv", 17500, 3072, 9216),
    ("attn out", 17500, 3072, 3072),
    ("ff in", 17500, 3072, 12288),
    ("ff out", 17500, 12288, 3072),
    ("single out", 18261, 15360, 3072),
]

rows = []
torch.manual_seed(0)
m, k, n = 17500, 3072, 3072
for a_mode, b_mode in [("scalar", "scalar"), ("outer-vec", "outer-vec"), ("blk128x128", "vec128"),
                       ("vec128", "vec128")]:
    for epilogue in EPILOGUES:
        for fast in (False, True):
            status, t, err = fp8_case(m, n, k, a_mode, b_mode, epilogue, fast)
            rate = f"{2 * m * n * k / t / 1e12:.0f} TFLOP/s, {t * 1e3:.3f} ms" if t else ""
            rows.append((f"FP8 {a_mode}/{b_mode} {epilogue}{' fast-accum' if fast else ''} "
                         f"{m}x{k}->{n}", status, rate, f"{err:.2e}" if err is not None else ""))

for label, before, align in [("scale pointers set after the heuristic", False, None),
                             ("alignment preferences 256", True, 256),
                             ("both", False, 256)]:
    status, t, err = fp8_case(m, n, k, "outer-vec", "outer-vec", "bias", False, before, align)
    rows.append((f"FP8 outer-vec bias, {label}", status, f"{t * 1e3:.3f} ms" if t else "",
                 f"{err:.2e}" if err is not None else ""))

for name, m, k, n in SHAPES:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    t = events_time(lambda: torch.nn.functional.linear(x, w, bias))
    rows.append((f"PyTorch bf16 linear {name} {m}x{k}->{n}", "", f"{2 * m * n * k / t / 1e12:.0f} TFLOP/s, "
                 f"{t * 1e3:.3f} ms", ""))
    x8, w8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
    for label, sa, sb in [("per tensor", torch.ones((), device="cuda"), torch.ones((), device="cuda")),
                          ("per row", torch.ones(m, 1, device="cuda"), torch.ones(1, n, device="cuda"))]:
        try:
            t = events_time(lambda: torch._scaled_mm(x8, w8.t(), scale_a=sa, scale_b=sb, bias=bias,
                                                     out_dtype=torch.bfloat16))
            rate = f"{2 * m * n * k / t / 1e12:.0f} TFLOP/s, {t * 1e3:.3f} ms"
            status = ""
        except Exception as e:  # noqa: BLE001 - report whatever PyTorch refuses
            rate, status = "", f"refused: {str(e)[:60]}"
        rows.append((f"PyTorch _scaled_mm {label} {name}", status, rate, ""))

for seq in (4096, 18261):
    q, kk, v = (torch.randn(1, 24, seq, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        t = events_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, v), iters=10)
    rows.append((f"PyTorch flash attention 24 x {seq} x 128", "", f"{4 * seq * seq * 128 * 24 / t / 1e12:.0f} "
                 f"TFLOP/s, {t * 1e3:.3f} ms", ""))
    try:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            t = events_time(lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, v), iters=10)
        rows.append((f"PyTorch cuDNN attention 24 x {seq} x 128", "", f"{4 * seq * seq * 128 * 24 / t / 1e12:.0f} "
                     f"TFLOP/s, {t * 1e3:.3f} ms", ""))
    except Exception as e:  # noqa: BLE001
        rows.append((f"PyTorch cuDNN attention 24 x {seq} x 128", f"refused: {str(e)[:60]}", "", ""))

width = max(len(r[0]) for r in rows)
print(f"\n{'case':<{width}} | status | rate | rel. L2 vs fp32")
for r in rows:
    print(f"{r[0]:<{width}} | {r[1]} | {r[2]} | {r[3]}")
