// FramePack's hot kernels for NVIDIA GPUs, compiled at run time with NVRTC (sm_80+).
//
// No headers are included (NVRTC may run where no CUDA toolkit is installed): bf16 values are
// handled as their 16-bit patterns, conversions and tensor-core instructions are inline PTX.
// Every kernel reproduces the rounding points of the portable burn path (ops.rs): statistics
// and transcendental functions in fp32, one rounding to bf16 per reference operation.

typedef unsigned short bf16_t;
typedef unsigned int u32;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf2f(bf16_t v) { return __uint_as_float(((u32)v) << 16); }

__device__ __forceinline__ bf16_t f2bf(float f) {
    bf16_t r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Rounds through bf16 and back: the value a bf16 tensor would hold.
__device__ __forceinline__ float round_bf(float f) { return bf2f(f2bf(f)); }

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---------------------------------------------------------------------------------------------
// LayerNorm without affine (fp32 statistics) fused with AdaLN modulation:
//   out = bf16(bf16(bf16(LN(x)) * bf16(1 + scale)) + shift)
// x: [rows, dim], shift/scale: [batch, dim] with rows_per_batch rows per batch entry.
// has_mod = 0 gives the plain LayerNorm. One warp per row.
extern "C" __global__ void ln_modulate_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ shift,
                                            const bf16_t* __restrict__ scale, bf16_t* __restrict__ out,
                                            int rows, int rows_per_batch, int dim, float eps, int has_mod) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const bf16_t* xr = x + (size_t)warp * dim;
    float sum = 0.f;
    for (int i = lane; i < dim; i += 32) sum += bf2f(xr[i]);
    float mean = warp_sum(sum) / dim;
    float sq = 0.f;
    for (int i = lane; i < dim; i += 32) {
        float d = bf2f(xr[i]) - mean;
        sq += d * d;
    }
    float rstd = rsqrtf(warp_sum(sq) / dim + eps);
    int b = warp / rows_per_batch;
    bf16_t* orow = out + (size_t)warp * dim;
    for (int i = lane; i < dim; i += 32) {
        float y = round_bf((bf2f(xr[i]) - mean) * rstd);
        if (has_mod) {
            float s1 = round_bf(1.f + bf2f(scale[(size_t)b * dim + i]));
            y = round_bf(y * s1) + bf2f(shift[(size_t)b * dim + i]);
        }
        orow[i] = f2bf(y);
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm over each head (fp32 statistic, rounded, times the weight) fused with the interleaved
// 3D RoPE on the first rope_tokens tokens of every sequence:
//   y = bf16(bf16(x * rsqrt(mean(x^2) + eps)) * w);  out = bf16(y*cos + rot(y)*sin)
// x/out: [batch, seq, heads, head_dim] with head_dim % 4 == 0; cos/sin: [rope_tokens, head_dim]
// fp32. out is contiguous; x may be a view into wider token rows (q or k of a fused q/k/v
// projection): x_row_stride elements between tokens, x_batch_stride between batch entries,
// heads adjacent. One warp per head.
extern "C" __global__ void rms_norm_rope_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ weight,
                                              const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                              bf16_t* __restrict__ out, int rows, int seq, int heads, int head_dim,
                                              int rope_tokens, float eps, long long x_row_stride,
                                              long long x_batch_stride) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= rows) return;
    int token = (warp / heads) % seq;
    int batch = warp / (heads * seq);
    const bf16_t* xr = x + batch * x_batch_stride + token * x_row_stride + (long long)(warp % heads) * head_dim;
    bf16_t* orow = out + (size_t)warp * head_dim;
    // Lanes own groups of 4 elements (two rotation pairs), read and written 8 bytes at a time.
    int groups = head_dim / 4;
    float sq = 0.f;
    for (int q = lane; q < groups; q += 32) {
        uint2 v = reinterpret_cast<const uint2*>(xr)[q];
        float a = bf2f((bf16_t)(v.x & 0xffffu)), b = bf2f((bf16_t)(v.x >> 16));
        float c = bf2f((bf16_t)(v.y & 0xffffu)), d = bf2f((bf16_t)(v.y >> 16));
        sq += a * a + b * b + c * c + d * d;
    }
    float rstd = rsqrtf(warp_sum(sq) / head_dim + eps);
    bool rope = token < rope_tokens;
    for (int q = lane; q < groups; q += 32) {
        uint2 v = reinterpret_cast<const uint2*>(xr)[q];
        float in[4] = {bf2f((bf16_t)(v.x & 0xffffu)), bf2f((bf16_t)(v.x >> 16)), bf2f((bf16_t)(v.y & 0xffffu)),
                       bf2f((bf16_t)(v.y >> 16))};
        float y[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) y[i] = round_bf(round_bf(in[i] * rstd) * bf2f(weight[4 * q + i]));
        if (rope) {
            size_t t = (size_t)token * head_dim + 4 * q;
#pragma unroll
            for (int p = 0; p < 2; ++p) {
                float y0 = y[2 * p], y1 = y[2 * p + 1];
                y[2 * p] = y0 * cos_t[t + 2 * p] + (-y1) * sin_t[t + 2 * p];
                y[2 * p + 1] = y1 * cos_t[t + 2 * p + 1] + y0 * sin_t[t + 2 * p + 1];
            }
        }
        uint2 o;
        o.x = pack_bf16x2(y[0], y[1]);
        o.y = pack_bf16x2(y[2], y[3]);
        reinterpret_cast<uint2*>(orow)[q] = o;
    }
}

// ---------------------------------------------------------------------------------------------
// Gated residual out = bf16(x + bf16(y * gate)); gate: [batch, dim], rows_per_batch rows each.
extern "C" __global__ void gated_residual_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ gate,
                                               const bf16_t* __restrict__ y, bf16_t* __restrict__ out,
                                               long long n, int dim, long long per_batch) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        long long b = i / per_batch;
        int c = (int)(i % dim);
        float g = bf2f(gate[b * dim + c]);
        out[i] = f2bf(bf2f(x[i]) + round_bf(bf2f(y[i]) * g));
    }
}

// GELU (tanh approximation) and SiLU, evaluated in fp32 and rounded once.
extern "C" __global__ void gelu_tanh_bf16(const bf16_t* __restrict__ x, bf16_t* __restrict__ out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float v = bf2f(x[i]);
        float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        out[i] = f2bf(0.5f * v * (1.f + tanhf(inner)));
    }
}

extern "C" __global__ void silu_bf16(const bf16_t* __restrict__ x, bf16_t* __restrict__ out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        float v = bf2f(x[i]);
        out[i] = f2bf(v / (1.f + expf(-v)));
    }
}

// ---------------------------------------------------------------------------------------------
// FP8 (e4m3fn) weight expansion: out[r, c] = bf16(e4m3(codes[r, c]) * scales[r]), the product in
// fp32 (as the portable table lookup). 8 codes per thread; cols % 8 == 0.
__device__ __forceinline__ float e4m3_value(u32 code) {
    u32 sign = (code & 0x80u) << 24, exponent = (code >> 3) & 0x0fu, mantissa = code & 0x07u;
    if ((code & 0x7fu) == 0x7fu) return __int_as_float(0x7fc00000);
    float magnitude = exponent == 0 ? (float)mantissa * 0.001953125f  // 2^-9
                                    : __int_as_float((int)(((exponent + 120u) << 23) | (mantissa << 20)));
    return __int_as_float(__float_as_int(magnitude) | (int)sign);
}

extern "C" __global__ void fp8_dequant_bf16(const unsigned char* __restrict__ codes, const float* __restrict__ scales,
                                            bf16_t* __restrict__ out, long long chunks, int cols) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    const int chunks_per_row = cols / 8;
    for (; i < chunks; i += stride) {
        float s = scales[i / chunks_per_row];
        uint2 c = reinterpret_cast<const uint2*>(codes)[i];
        uint4 o;
        o.x = pack_bf16x2(e4m3_value(c.x & 0xffu) * s, e4m3_value((c.x >> 8) & 0xffu) * s);
        o.y = pack_bf16x2(e4m3_value((c.x >> 16) & 0xffu) * s, e4m3_value(c.x >> 24) * s);
        o.z = pack_bf16x2(e4m3_value(c.y & 0xffu) * s, e4m3_value((c.y >> 8) & 0xffu) * s);
        o.w = pack_bf16x2(e4m3_value((c.y >> 16) & 0xffu) * s, e4m3_value(c.y >> 24) * s);
        reinterpret_cast<uint4*>(out)[i] = o;
    }
}

// Vectorised LayerNorm + modulation for dim % 256 == 0 (dim / 8 threads per row, one 16-byte
// chunk each, the row held in registers): same arithmetic as ln_modulate_bf16.
__device__ __forceinline__ float block_sum(float v, float* red) {
    v = warp_sum(v);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < warps; ++w) total += red[w];
    return total;
}

__device__ __forceinline__ void unpack8(uint4 raw, float* v) {
    u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[2 * i] = bf2f((bf16_t)(w[i] & 0xffffu));
        v[2 * i + 1] = bf2f((bf16_t)(w[i] >> 16));
    }
}

extern "C" __global__ void ln_modulate_vec_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ shift,
                                                const bf16_t* __restrict__ scale, bf16_t* __restrict__ out,
                                                int rows_per_batch, int dim, float eps, int has_mod) {
    __shared__ float red[32];
    const int row = blockIdx.x, tid = threadIdx.x;
    const size_t base = (size_t)row * dim;
    float v[8];
    unpack8(reinterpret_cast<const uint4*>(x + base)[tid], v);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += v[i];
    const float mean = block_sum(sum, red) / dim;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) sq += (v[i] - mean) * (v[i] - mean);
    const float rstd = rsqrtf(block_sum(sq, red) / dim + eps);
    float y[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) y[i] = round_bf((v[i] - mean) * rstd);
    if (has_mod) {
        const size_t mb = (size_t)(row / rows_per_batch) * dim;
        float sh[8], sc[8];
        unpack8(reinterpret_cast<const uint4*>(shift + mb)[tid], sh);
        unpack8(reinterpret_cast<const uint4*>(scale + mb)[tid], sc);
#pragma unroll
        for (int i = 0; i < 8; ++i) y[i] = round_bf(y[i] * round_bf(1.f + sc[i])) + sh[i];
    }
    uint4 o;
    o.x = pack_bf16x2(y[0], y[1]);
    o.y = pack_bf16x2(y[2], y[3]);
    o.z = pack_bf16x2(y[4], y[5]);
    o.w = pack_bf16x2(y[6], y[7]);
    reinterpret_cast<uint4*>(out + base)[tid] = o;
}

// Vectorised gated residual for dim % 8 == 0: 8 elements per thread.
extern "C" __global__ void gated_residual_vec_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ gate,
                                                   const bf16_t* __restrict__ y, bf16_t* __restrict__ out,
                                                   long long chunks, int dim, long long per_batch) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (; c < chunks; c += stride) {
        long long i = c * 8;
        long long b = i / per_batch;
        int col = (int)(i % dim);
        float xv[8], yv[8], gv[8], r[8];
        unpack8(reinterpret_cast<const uint4*>(x)[c], xv);
        unpack8(reinterpret_cast<const uint4*>(y)[c], yv);
        unpack8(*reinterpret_cast<const uint4*>(gate + b * dim + col), gv);
#pragma unroll
        for (int k = 0; k < 8; ++k) r[k] = xv[k] + round_bf(yv[k] * gv[k]);
        uint4 o;
        o.x = pack_bf16x2(r[0], r[1]);
        o.y = pack_bf16x2(r[2], r[3]);
        o.z = pack_bf16x2(r[4], r[5]);
        o.w = pack_bf16x2(r[6], r[7]);
        reinterpret_cast<uint4*>(out)[c] = o;
    }
}

// ---------------------------------------------------------------------------------------------
// Flash attention forward, head_dim 128, bf16 in/out, fp32 softmax statistics and accumulators.
// q: [batch, seq_q, heads, 128], k/v: [batch, seq_k, heads, 128], o like q; dense (no mask).
// q, k and o are contiguous; v may be a view into a wider row (the v third of a fused q/k/v
// projection): v_row_stride elements between tokens, v_batch_stride between batch entries.
// A CTA owns 128 query rows of one (batch, head): 8 warps x 16 rows. K/V stream through shared
// memory in tiles of 64 keys, double-buffered with cp.async; S = QK^T and O += PV run on the
// tensor cores (mma.sync m16n8k16), P stays in registers between the two products.

// 1 / the full sums of a thread's two softmax rows, whose parts the 4 threads of a quad hold.
__device__ __forceinline__ void inverse_row_sums(const float (&row_sum)[2], float (&inv)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float l = row_sum[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[h] = 1.f / l;
    }
}

#define FA_BM 128
#define FA_BN 64
#define FA_D 128
#define FA_THREADS 256

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows][128] bf16 tile (256 B rows),
// XOR-swizzled so that ldmatrix and cp.async of 8 rows hit 8 distinct bank groups.
__device__ __forceinline__ u32 tile_off(int row, int chunk) { return row * 256 + ((chunk ^ (row & 7)) << 4); }

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    int size = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(size));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Issues the cp.async copies of rows [row0, row0 + rows) of one head of a [batch, seq, heads, 128]
// tensor into a swizzled tile; rows past `seq` are zero-filled.
__device__ __forceinline__ void load_tile(u32 smem, const bf16_t* base, int row0, int rows, int seq,
                                          long long row_stride) {
    for (int c = threadIdx.x; c < rows * 16; c += FA_THREADS) {
        int r = c >> 4, chunk = c & 15;
        int row = row0 + r;
        bool valid = row < seq;
        const bf16_t* src = base + (long long)(valid ? row : 0) * row_stride + chunk * 8;
        cp_async16(smem + tile_off(r, chunk), src, valid);
    }
}

extern "C" __global__ void __launch_bounds__(FA_THREADS, 1)
flash_attention_fwd_bf16(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                         bf16_t* __restrict__ o, int seq_q, int seq_k, int heads, float scale_log2,
                                     int v_row_stride, long long v_batch_stride) {
    extern __shared__ __align__(128) unsigned char smem[];
    const u32 sq = smem_u32(smem);                      // Q: 128 x 128 bf16 = 32 KB
    const u32 sk = sq + FA_BM * 256;                    // K: 2 stages x 64 x 128 = 32 KB
    const u32 sv = sk + 2 * FA_BN * 256;                // V: 2 stages x 64 x 128 = 32 KB

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int q0 = blockIdx.x * FA_BM;
    const long long row_stride = (long long)heads * FA_D;
    const bf16_t* qb = q + ((long long)batch * seq_q * heads + head) * FA_D;
    const bf16_t* kb = k + ((long long)batch * seq_k * heads + head) * FA_D;
    const bf16_t* vb = v + (long long)batch * v_batch_stride + (long long)head * FA_D;
    bf16_t* ob = o + ((long long)batch * seq_q * heads + head) * FA_D;

    const int tiles = (seq_k + FA_BN - 1) / FA_BN;
    load_tile(sq, qb, q0, FA_BM, seq_q, row_stride);
    load_tile(sk, kb, 0, FA_BN, seq_k, row_stride);
    load_tile(sv, vb, 0, FA_BN, seq_k, v_row_stride);
    cp_async_commit();

    // Q fragments of this warp's 16 rows, kept in registers for the whole loop.
    u32 qf[8][4];
    float acc[16][4];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float row_max[2] = {NEG_INF, NEG_INF};
    float row_sum[2] = {0.f, 0.f};

    for (int tile = 0; tile < tiles; ++tile) {
        const int stage = tile & 1;
        if (tile + 1 < tiles) {
            const int next = (tile + 1) & 1;
            load_tile(sk + next * FA_BN * 256, kb, (tile + 1) * FA_BN, FA_BN, seq_k, row_stride);
            load_tile(sv + next * FA_BN * 256, vb, (tile + 1) * FA_BN, FA_BN, seq_k, v_row_stride);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        if (tile == 0) {
#pragma unroll
            for (int kk = 0; kk < 8; ++kk) {
                int mat = lane >> 3, r = lane & 7;
                int row = warp * 16 + (mat & 1) * 8 + r;
                int chunk = kk * 2 + (mat >> 1);
                ldmatrix_x4(sq + tile_off(row, chunk), qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3]);
            }
        }

        // S = Q K^T for 16 rows x 64 keys.
        const u32 ks = sk + stage * FA_BN * 256;
        float s[8][4];
#pragma unroll
        for (int i = 0; i < 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
            for (int nt = 0; nt < 8; nt += 2) {
                int mat = lane >> 3, r = lane & 7;
                int row = (nt + (mat >> 1)) * 8 + r;
                int chunk = kk * 2 + (mat & 1);
                u32 b0, b1, b2, b3;
                ldmatrix_x4(ks + tile_off(row, chunk), b0, b1, b2, b3);
                mma_bf16(s[nt], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b0, b1);
                mma_bf16(s[nt + 1], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b2, b3);
            }
        }

        // Mask keys past the end (last tile only), then the online softmax update.
        if ((tile + 1) * FA_BN > seq_k) {
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                int col = tile * FA_BN + nt * 8 + 2 * t;
                if (col >= seq_k) { s[nt][0] = NEG_INF; s[nt][2] = NEG_INF; }
                if (col + 1 >= seq_k) { s[nt][1] = NEG_INF; s[nt][3] = NEG_INF; }
            }
        }
        float tile_max[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            tile_max[0] = fmaxf(tile_max[0], fmaxf(s[nt][0], s[nt][1]));
            tile_max[1] = fmaxf(tile_max[1], fmaxf(s[nt][2], s[nt][3]));
        }
        float corr[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
            float new_max = fmaxf(row_max[h], tile_max[h] * scale_log2);
            corr[h] = fast_exp2(row_max[h] - new_max);
            row_max[h] = new_max;
            row_sum[h] *= corr[h];
        }
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            acc[i][0] *= corr[0]; acc[i][1] *= corr[0];
            acc[i][2] *= corr[1]; acc[i][3] *= corr[1];
        }
        u32 pf[4][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            float p0 = fast_exp2(s[nt][0] * scale_log2 - row_max[0]);
            float p1 = fast_exp2(s[nt][1] * scale_log2 - row_max[0]);
            float p2 = fast_exp2(s[nt][2] * scale_log2 - row_max[1]);
            float p3 = fast_exp2(s[nt][3] * scale_log2 - row_max[1]);
            row_sum[0] += p0 + p1;
            row_sum[1] += p2 + p3;
            // The S accumulator of key tiles 2j, 2j+1 is the A fragment of k-step j of P V.
            pf[nt >> 1][(nt & 1) * 2 + 0] = pack_bf16x2(p0, p1);
            pf[nt >> 1][(nt & 1) * 2 + 1] = pack_bf16x2(p2, p3);
        }

        // O += P V: 16 rows x 128 dims over 64 keys.
        const u32 vs = sv + stage * FA_BN * 256;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
            for (int dn = 0; dn < 16; dn += 2) {
                int mat = lane >> 3, r = lane & 7;
                int row = kk * 16 + (mat & 1) * 8 + r;
                int chunk = dn + (mat >> 1);
                u32 b0, b1, b2, b3;
                ldmatrix_x4_trans(vs + tile_off(row, chunk), b0, b1, b2, b3);
                mma_bf16(acc[dn], pf[kk][0], pf[kk][1], pf[kk][2], pf[kk][3], b0, b1);
                mma_bf16(acc[dn + 1], pf[kk][0], pf[kk][1], pf[kk][2], pf[kk][3], b2, b3);
            }
        }
        __syncthreads();
    }

    // Normalise, stage the warp's 16 rows through shared memory, write 16-byte chunks.
    float inv[2];
    inverse_row_sums(row_sum, inv);
    unsigned char* so = smem;
#pragma unroll
    for (int dn = 0; dn < 16; ++dn) {
        int r0 = warp * 16 + g, r1 = r0 + 8;
        *reinterpret_cast<u32*>(so + tile_off(r0, dn) + 4 * t) = pack_bf16x2(acc[dn][0] * inv[0], acc[dn][1] * inv[0]);
        *reinterpret_cast<u32*>(so + tile_off(r1, dn) + 4 * t) = pack_bf16x2(acc[dn][2] * inv[1], acc[dn][3] * inv[1]);
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        int c = i * 32 + lane;
        int r = warp * 16 + (c >> 4), chunk = c & 15;
        int row = q0 + r;
        if (row < seq_q) {
            uint4 val = *reinterpret_cast<const uint4*>(so + tile_off(r, chunk));
            *reinterpret_cast<uint4*>(ob + (long long)row * row_stride + chunk * 8) = val;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Flash attention forward for Hopper (sm_90a): the same algorithm as above, with the two
// products on warpgroup MMA (wgmma) reading Q, K and V straight from shared memory.
// A CTA owns 128 query rows: two warpgroups of 64 rows. Keys stream in tiles of 128, double
// buffered with cp.async. Tiles are stored in the canonical 128-byte-swizzle layout wgmma reads:
// each 128-row x 128-dim tile as two 64-dim halves of 128-byte rows, 16-byte chunk c of row r
// at chunk c ^ (r % 8). Q and K are read K-major; V, stored the same way, is read MN-major
// (transposed) for O += P V. P never leaves the registers: the S accumulators of keys
// 16j..16j+15 are exactly the A fragment of k-step j.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

#define WG_BN 128
#define WG_TILE 32768
#define WG_SMEM (1024 + 5 * WG_TILE)

// S += A(smem) * B(smem): m64n128k16, bf16 in, fp32 accumulators (64 per thread).
__device__ __forceinline__ void wgmma_ss_m64n128(float (&d)[64], unsigned long long desc_a, unsigned long long desc_b, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// O += A(registers) * B(smem, MN-major so transposed): m64n128k16.
__device__ __forceinline__ void wgmma_rs_m64n128_tb(float (&d)[64], u32 a0, u32 a1, u32 a2, u32 a3, unsigned long long desc_b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait1() { asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); }
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Shared-memory matrix descriptor: 128-byte swizzle, byte offsets LBO and SBO.
__device__ __forceinline__ unsigned long long smem_desc(u32 addr, u32 lbo, u32 sbo) {
    unsigned long long d = (unsigned long long)((addr & 0x3FFFF) >> 4);
    d |= (unsigned long long)((lbo >> 4) & 0x3FFF) << 16;
    d |= (unsigned long long)((sbo >> 4) & 0x3FFF) << 32;
    d |= 1ull << 62;
    return d;
}

// Byte offset of 16-byte chunk `chunk` (0..15) of row `row` in a swizzled 128-row tile.
__device__ __forceinline__ u32 sw128(int row, int chunk) {
    return (u32)((chunk >> 3) * 16384 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

__device__ __forceinline__ void load_tile_sw(u32 smem, const bf16_t* base, int row0, int seq, int row_stride) {
    for (int c = threadIdx.x; c < 128 * 16; c += FA_THREADS) {
        int r = c >> 4, chunk = c & 15;
        int row = row0 + r;
        bool valid = row < seq;
        const bf16_t* src = base + (long long)(valid ? row : 0) * row_stride + chunk * 8;
        cp_async16(smem + sw128(r, chunk), src, valid);
    }
}

// Divides O by the row sums and writes the warp's 16 rows of the 128-row query tile through
// shared memory (the swizzled layout, in the Q tile's place: each warp's own rows, which only its
// warpgroup's finished products read), 16 bytes per global store.
__device__ __forceinline__ void store_output(unsigned char* smem, const float (&o_acc)[64], const float (&row_sum)[2],
                                             bf16_t* ob, int q0, int seq_q, int row_stride) {
    const int wg = threadIdx.x >> 7;
    const int wi = (threadIdx.x >> 5) & 3;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float inv[2];
    inverse_row_sums(row_sum, inv);
    const int r0 = wg * 64 + wi * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        *reinterpret_cast<u32*>(smem + sw128(r0, j) + 4 * t) = pack_bf16x2(o_acc[4 * j] * inv[0], o_acc[4 * j + 1] * inv[0]);
        *reinterpret_cast<u32*>(smem + sw128(r1, j) + 4 * t) = pack_bf16x2(o_acc[4 * j + 2] * inv[1], o_acc[4 * j + 3] * inv[1]);
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        int c = i * 32 + lane;
        int r = wg * 64 + wi * 16 + (c >> 4), chunk = c & 15;
        int row = q0 + r;
        if (row < seq_q) {
            uint4 val = *reinterpret_cast<const uint4*>(smem + sw128(r, chunk));
            *reinterpret_cast<uint4*>(ob + (long long)row * row_stride + chunk * 8) = val;
        }
    }
}

extern "C" __global__ void __launch_bounds__(FA_THREADS, 1)
flash_attention_wgmma_bf16(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                           bf16_t* __restrict__ o, int seq_q, int seq_k, int heads, float scale_log2,
                                     int v_row_stride, long long v_batch_stride) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned char* smem = smem_raw + (base - smem_u32(smem_raw));
    const u32 sq = base;                       // Q: 32 KB
    const u32 sk = base + WG_TILE;             // K: 2 stages of 32 KB
    const u32 sv = base + 3 * WG_TILE;         // V: 2 stages of 32 KB

    const int wg = threadIdx.x >> 7;           // warpgroup: rows 64*wg ..
    const int t = threadIdx.x & 3;             // column pair of the thread's accumulators
    const int head = blockIdx.y, batch = blockIdx.z;
    const int q0 = blockIdx.x * FA_BM;
    const int row_stride = heads * FA_D;
    const bf16_t* qb = q + ((long long)batch * seq_q * heads + head) * FA_D;
    const bf16_t* kb = k + ((long long)batch * seq_k * heads + head) * FA_D;
    const bf16_t* vb = v + (long long)batch * v_batch_stride + (long long)head * FA_D;
    bf16_t* ob = o + ((long long)batch * seq_q * heads + head) * FA_D;

    const int tiles = (seq_k + WG_BN - 1) / WG_BN;
    load_tile_sw(sq, qb, q0, seq_q, row_stride);
    load_tile_sw(sk, kb, 0, seq_k, row_stride);
    load_tile_sw(sv, vb, 0, seq_k, v_row_stride);
    cp_async_commit();

    float o_acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o_acc[i] = 0.f;
    float row_max[2] = {NEG_INF, NEG_INF};
    float row_sum[2] = {0.f, 0.f};

    for (int tile = 0; tile < tiles; ++tile) {
        const int stage = tile & 1;
        if (tile + 1 < tiles) {
            const int next = (tile + 1) & 1;
            load_tile_sw(sk + next * WG_TILE, kb, (tile + 1) * WG_BN, seq_k, row_stride);
            load_tile_sw(sv + next * WG_TILE, vb, (tile + 1) * WG_BN, seq_k, v_row_stride);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        fence_async_smem();
        __syncthreads();

        // S = Q K^T: 64 rows x 128 keys per warpgroup, 8 k-steps over the head dimension.
        float s[64];
        const u32 ks = sk + stage * WG_TILE;
        wgmma_fence();
#pragma unroll
        for (int step = 0; step < 8; ++step) {
            const u32 half = (step >> 2) * 16384, kofs = (step & 3) * 32;
            unsigned long long da = smem_desc(sq + half + wg * 64 * 128 + kofs, 16, 1024);
            unsigned long long db = smem_desc(ks + half + kofs, 16, 1024);
            wgmma_ss_m64n128(s, da, db, step > 0);
        }
        wgmma_commit();
        wgmma_wait0();

        if ((tile + 1) * WG_BN > seq_k) {
#pragma unroll
            for (int j = 0; j < 16; ++j) {
                int col = tile * WG_BN + j * 8 + 2 * t;
                if (col >= seq_k) { s[4 * j] = NEG_INF; s[4 * j + 2] = NEG_INF; }
                if (col + 1 >= seq_k) { s[4 * j + 1] = NEG_INF; s[4 * j + 3] = NEG_INF; }
            }
        }
        float tile_max[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            tile_max[0] = fmaxf(tile_max[0], fmaxf(s[4 * j], s[4 * j + 1]));
            tile_max[1] = fmaxf(tile_max[1], fmaxf(s[4 * j + 2], s[4 * j + 3]));
        }
        float corr[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
            tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
            float new_max = fmaxf(row_max[h], tile_max[h] * scale_log2);
            corr[h] = fast_exp2(row_max[h] - new_max);
            row_max[h] = new_max;
            row_sum[h] *= corr[h];
        }
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            o_acc[4 * j] *= corr[0]; o_acc[4 * j + 1] *= corr[0];
            o_acc[4 * j + 2] *= corr[1]; o_acc[4 * j + 3] *= corr[1];
        }
        u32 p[32];
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            float p0 = fast_exp2(s[4 * j] * scale_log2 - row_max[0]);
            float p1 = fast_exp2(s[4 * j + 1] * scale_log2 - row_max[0]);
            float p2 = fast_exp2(s[4 * j + 2] * scale_log2 - row_max[1]);
            float p3 = fast_exp2(s[4 * j + 3] * scale_log2 - row_max[1]);
            row_sum[0] += p0 + p1;
            row_sum[1] += p2 + p3;
            p[2 * j] = pack_bf16x2(p0, p1);
            p[2 * j + 1] = pack_bf16x2(p2, p3);
        }

        // O += P V: 8 k-steps of 16 keys; A fragment of step j = S column groups 2j, 2j+1.
        const u32 vs = sv + stage * WG_TILE;
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            unsigned long long db = smem_desc(vs + j * 16 * 128, 16384, 1024);
            wgmma_rs_m64n128_tb(o_acc, p[4 * j], p[4 * j + 1], p[4 * j + 2], p[4 * j + 3], db);
        }
        wgmma_commit();
        wgmma_wait0();
        __syncthreads();
    }

    store_output(smem, o_acc, row_sum, ob, q0, seq_q, row_stride);
}
// Pipelined variant (FA3's intra-warpgroup overlap): while the CUDA cores run the softmax of
// key tile j, the tensor cores compute S for tile j+1 and P V of tile j-1. Three shared-memory
// stages keep tile j+2 loading meanwhile.
#define WG_STAGES 3
#define WG_SMEM_PIPELINED (1024 + (1 + 2 * WG_STAGES) * WG_TILE)


__device__ __forceinline__ void issue_scores(float (&s)[64], u32 sq, u32 ks, int wg) {
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < 8; ++step) {
        const u32 half = (step >> 2) * 16384, kofs = (step & 3) * 32;
        unsigned long long da = smem_desc(sq + half + wg * 64 * 128 + kofs, 16, 1024);
        unsigned long long db = smem_desc(ks + half + kofs, 16, 1024);
        wgmma_ss_m64n128(s, da, db, step > 0);
    }
    wgmma_commit();
}


// Online-softmax update for one 64x128 score tile: new running maxima (log2 units), old sums
// scaled by the correction factors, which are returned for rescaling O.
__device__ __forceinline__ void softmax_tile(const float (&s)[64], float (&row_max)[2], float (&row_sum)[2],
                                             float (&corr)[2], float scale_log2) {
    float tile_max[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        tile_max[0] = fmaxf(tile_max[0], fmaxf(s[4 * j], s[4 * j + 1]));
        tile_max[1] = fmaxf(tile_max[1], fmaxf(s[4 * j + 2], s[4 * j + 3]));
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
        tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
        float new_max = fmaxf(row_max[h], tile_max[h] * scale_log2);
        corr[h] = fast_exp2(row_max[h] - new_max);
        row_max[h] = new_max;
        row_sum[h] *= corr[h];
    }
}

// Rescales O by the correction factors and turns the scores into bf16 probabilities, packed
// as the A fragments of P V.
__device__ __forceinline__ void rescale_and_pack(const float (&s)[64], float (&o_acc)[64], u32 (&p)[32],
                                                 const float (&row_max)[2], const float (&corr)[2],
                                                 float scale_log2, float (&row_sum)[2]) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        o_acc[4 * j] *= corr[0]; o_acc[4 * j + 1] *= corr[0];
        o_acc[4 * j + 2] *= corr[1]; o_acc[4 * j + 3] *= corr[1];
    }
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        float p0 = fast_exp2(s[4 * j] * scale_log2 - row_max[0]);
        float p1 = fast_exp2(s[4 * j + 1] * scale_log2 - row_max[0]);
        float p2 = fast_exp2(s[4 * j + 2] * scale_log2 - row_max[1]);
        float p3 = fast_exp2(s[4 * j + 3] * scale_log2 - row_max[1]);
        row_sum[0] += p0 + p1;
        row_sum[1] += p2 + p3;
        p[2 * j] = pack_bf16x2(p0, p1);
        p[2 * j + 1] = pack_bf16x2(p2, p3);
    }
}

__device__ __forceinline__ void issue_pv(float (&o_acc)[64], const u32 (&p)[32], u32 vs) {
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        unsigned long long db = smem_desc(vs + j * 16 * 128, 16384, 1024);
        wgmma_rs_m64n128_tb(o_acc, p[4 * j], p[4 * j + 1], p[4 * j + 2], p[4 * j + 3], db);
    }
    wgmma_commit();
}

extern "C" __global__ void __launch_bounds__(FA_THREADS, 1)
flash_attention_wgmma_pipelined_bf16(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                     const bf16_t* __restrict__ v, bf16_t* __restrict__ o, int seq_q, int seq_k,
                                     int heads, float scale_log2,
                                     int v_row_stride, long long v_batch_stride) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned char* smem = smem_raw + (base - smem_u32(smem_raw));
    const u32 sq = base;
    const u32 sk = base + WG_TILE;                       // K: 3 stages
    const u32 sv = base + (1 + WG_STAGES) * WG_TILE;     // V: 3 stages

    const int wg = threadIdx.x >> 7;
    const int t = threadIdx.x & 3;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int q0 = blockIdx.x * FA_BM;
    const int row_stride = heads * FA_D;
    const bf16_t* qb = q + ((long long)batch * seq_q * heads + head) * FA_D;
    const bf16_t* kb = k + ((long long)batch * seq_k * heads + head) * FA_D;
    const bf16_t* vb = v + (long long)batch * v_batch_stride + (long long)head * FA_D;
    bf16_t* ob = o + ((long long)batch * seq_q * heads + head) * FA_D;
    const int tiles = (seq_k + WG_BN - 1) / WG_BN;

    // Prologue: Q and tile 0, then tile 1; S of tile 0.
    load_tile_sw(sq, qb, q0, seq_q, row_stride);
    load_tile_sw(sk, kb, 0, seq_k, row_stride);
    load_tile_sw(sv, vb, 0, seq_k, v_row_stride);
    cp_async_commit();
    if (tiles > 1) {
        load_tile_sw(sk + WG_TILE, kb, WG_BN, seq_k, row_stride);
        load_tile_sw(sv + WG_TILE, vb, WG_BN, seq_k, v_row_stride);
    }
    cp_async_commit();
    cp_async_wait<1>();
    fence_async_smem();
    __syncthreads();

    float s_cur[64], s_next[64], o_acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o_acc[i] = 0.f;
    float row_max[2] = {NEG_INF, NEG_INF};
    float row_sum[2] = {0.f, 0.f};
    u32 p[32];
    float corr[2];
    issue_scores(s_cur, sq, sk, wg);
    wgmma_wait0();

    // Steady state (every tile but the last): S of tile j+1 overlaps the softmax of tile j.
    // The loop body has no wgmma under a branch, so ptxas can keep the groups asynchronous.
    for (int tile = 0; tile + 1 < tiles; ++tile) {
        // Tile j+1 has landed, and every thread is past iteration j-1 (whose P V read the
        // stage that tile j+2 now overwrites).
        cp_async_wait<0>();
        fence_async_smem();
        __syncthreads();
        if (tile + 2 < tiles) {
            const int st = (tile + 2) % WG_STAGES;
            load_tile_sw(sk + st * WG_TILE, kb, (tile + 2) * WG_BN, seq_k, row_stride);
            load_tile_sw(sv + st * WG_TILE, vb, (tile + 2) * WG_BN, seq_k, v_row_stride);
        }
        cp_async_commit();
        issue_scores(s_next, sq, sk + ((tile + 1) % WG_STAGES) * WG_TILE, wg);
        softmax_tile(s_cur, row_max, row_sum, corr, scale_log2);
        // S of the next tile and P V of the previous one are done: O and P may change.
        // (wait_group 0, not 1: ptxas cannot tell which group a partial wait retired and
        // would serialise every wgmma.) P V of this tile then overlaps the next iteration's
        // barrier, prefetch and softmax.
        wgmma_wait0();
        rescale_and_pack(s_cur, o_acc, p, row_max, corr, scale_log2, row_sum);
        issue_pv(o_acc, p, sv + (tile % WG_STAGES) * WG_TILE);
#pragma unroll
        for (int i = 0; i < 64; ++i) s_cur[i] = s_next[i];
    }
    // Last tile: mask keys past the end, no further prefetch.
    {
        const int tile = tiles - 1;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            int col = tile * WG_BN + j * 8 + 2 * t;
            if (col >= seq_k) { s_cur[4 * j] = NEG_INF; s_cur[4 * j + 2] = NEG_INF; }
            if (col + 1 >= seq_k) { s_cur[4 * j + 1] = NEG_INF; s_cur[4 * j + 3] = NEG_INF; }
        }
        softmax_tile(s_cur, row_max, row_sum, corr, scale_log2);
        wgmma_wait0();
        rescale_and_pack(s_cur, o_acc, p, row_max, corr, scale_log2, row_sum);
        issue_pv(o_acc, p, sv + (tile % WG_STAGES) * WG_TILE);
    }
    wgmma_wait0();

    store_output(smem, o_acc, row_sum, ob, q0, seq_q, row_stride);
}

// The TMA kernel's order (FA3's): the exponentials of key tile j+1 run on the CUDA cores while
// the tensor cores compute P V of tile j. Each iteration issues S = Q K(j+1) and O += P(j) V(j)
// back to back, waits for S only, runs the softmax of tile j+1 in place in S's registers, then
// waits for P V and rescales O. One S buffer (its P already packed), so fewer registers than the
// pipelined kernel above. (The same order with the threads' own cp.async loads measured no
// faster than the pipelined kernel: 448 against 460 TFLOP/s at 18,261 tokens on an H100. The
// loads are what the TMA kernel saves.)

// Online softmax of one 64x128 score tile, in place: running maxima (log2 units), the
// correction factors of the old sums (returned for rescaling O), s = exp2(s * scale - max),
// and the sums updated.
__device__ __forceinline__ void softmax_exp_tile(float (&s)[64], float (&row_max)[2], float (&row_sum)[2],
                                                 float (&corr)[2], float scale_log2) {
    softmax_tile(s, row_max, row_sum, corr, scale_log2);
    float sum[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        s[4 * j] = fast_exp2(s[4 * j] * scale_log2 - row_max[0]);
        s[4 * j + 1] = fast_exp2(s[4 * j + 1] * scale_log2 - row_max[0]);
        s[4 * j + 2] = fast_exp2(s[4 * j + 2] * scale_log2 - row_max[1]);
        s[4 * j + 3] = fast_exp2(s[4 * j + 3] * scale_log2 - row_max[1]);
        sum[0] += s[4 * j] + s[4 * j + 1];
        sum[1] += s[4 * j + 2] + s[4 * j + 3];
    }
    row_sum[0] += sum[0];
    row_sum[1] += sum[1];
}

// Probabilities to bf16 A fragments of P V (keys 16j..16j+15 are k-step j).
__device__ __forceinline__ void pack_probabilities(const float (&s)[64], u32 (&p)[32]) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        p[2 * j] = pack_bf16x2(s[4 * j], s[4 * j + 1]);
        p[2 * j + 1] = pack_bf16x2(s[4 * j + 2], s[4 * j + 3]);
    }
}

__device__ __forceinline__ void mask_keys(float (&s)[64], int tile, int seq_k, int t) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        int col = tile * WG_BN + j * 8 + 2 * t;
        if (col >= seq_k) { s[4 * j] = NEG_INF; s[4 * j + 2] = NEG_INF; }
        if (col + 1 >= seq_k) { s[4 * j + 1] = NEG_INF; s[4 * j + 3] = NEG_INF; }
    }
}

// Thread 0 asks the Hopper copy engine for each K and V tile
// (four 64-dim x 128-token boxes, written in the 128-byte swizzle wgmma reads) and an mbarrier
// per stage says when a tile has landed, so the other 255 threads issue no loads at all. The
// tensor maps come from the host (`attention.rs`); tokens past the end read as zeros.
struct __align__(64) TensorMap { unsigned long long opaque[16]; };

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done = 0;
    while (!done) {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    }
}
__device__ __forceinline__ void tma_load_4d(u32 dst, const TensorMap* map, u32 bar, int c0, int c1, int c2, int c3) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
                 :: "r"(dst), "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
                 : "memory");
}

extern "C" __global__ void __launch_bounds__(FA_THREADS, 1)
flash_attention_wgmma_tma_bf16(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                               const bf16_t* __restrict__ v, bf16_t* __restrict__ o, int seq_q, int seq_k,
                               int heads, float scale_log2,
                               int v_row_stride, long long v_batch_stride,
                               const __grid_constant__ TensorMap map_k, const __grid_constant__ TensorMap map_v) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    __shared__ __align__(8) unsigned long long full[WG_STAGES];
    const u32 base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    unsigned char* smem = smem_raw + (base - smem_u32(smem_raw));
    const u32 sq = base;
    const u32 sk = base + WG_TILE;                       // K: 3 stages
    const u32 sv = base + (1 + WG_STAGES) * WG_TILE;     // V: 3 stages
    const u32 bar0 = smem_u32(&full[0]);

    const int wg = threadIdx.x >> 7;
    const int t = threadIdx.x & 3;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int q0 = blockIdx.x * FA_BM;
    const int row_stride = heads * FA_D;
    const bf16_t* qb = q + ((long long)batch * seq_q * heads + head) * FA_D;
    bf16_t* ob = o + ((long long)batch * seq_q * heads + head) * FA_D;
    const int tiles = (seq_k + WG_BN - 1) / WG_BN;

    // Thread 0 only: tile `tile` of K and V into stage `stage`, arriving on its barrier.
    auto load_kv = [&](int tile, int stage) {
        const u32 bar = bar0 + 8 * stage;
        mbar_expect_tx(bar, 2 * WG_TILE);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            tma_load_4d(sk + stage * WG_TILE + half * 16384, &map_k, bar, half * 64, head, tile * WG_BN, batch);
            tma_load_4d(sv + stage * WG_TILE + half * 16384, &map_v, bar, half * 64, head, tile * WG_BN, batch);
        }
    };

    if (threadIdx.x == 0) {
#pragma unroll
        for (int st = 0; st < WG_STAGES; ++st) mbar_init(bar0 + 8 * st, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        load_kv(0, 0);
        if (tiles > 1) load_kv(1, 1);
    }
    load_tile_sw(sq, qb, q0, seq_q, row_stride);
    cp_async_commit();
    cp_async_wait<0>();
    fence_async_smem();
    __syncthreads();

    float s[64], o_acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o_acc[i] = 0.f;
    float row_max[2] = {NEG_INF, NEG_INF};
    float row_sum[2] = {0.f, 0.f};
    float corr[2];
    u32 p[32];
    mbar_wait(bar0, 0);
    issue_scores(s, sq, sk, wg);
    wgmma_wait0();
    if (tiles == 1) mask_keys(s, 0, seq_k, t);
    softmax_exp_tile(s, row_max, row_sum, corr, scale_log2);
    pack_probabilities(s, p);

    for (int tile = 0; tile + 1 < tiles; ++tile) {
        // Every thread is past P V of tile j-1, whose stage tile j+2 now overwrites.
        __syncthreads();
        if (threadIdx.x == 0 && tile + 2 < tiles) load_kv(tile + 2, (tile + 2) % WG_STAGES);
        const int st = (tile + 1) % WG_STAGES;
        mbar_wait(bar0 + 8 * st, ((tile + 1) / WG_STAGES) & 1);
        issue_scores(s, sq, sk + st * WG_TILE, wg);
        issue_pv(o_acc, p, sv + (tile % WG_STAGES) * WG_TILE);
        wgmma_wait1();
        if (tile + 2 == tiles) mask_keys(s, tile + 1, seq_k, t);
        softmax_exp_tile(s, row_max, row_sum, corr, scale_log2);
        wgmma_wait0();
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            o_acc[4 * j] *= corr[0]; o_acc[4 * j + 1] *= corr[0];
            o_acc[4 * j + 2] *= corr[1]; o_acc[4 * j + 3] *= corr[1];
        }
        pack_probabilities(s, p);
    }
    issue_pv(o_acc, p, sv + ((tiles - 1) % WG_STAGES) * WG_TILE);
    wgmma_wait0();

    store_output(smem, o_acc, row_sum, ob, q0, seq_q, row_stride);
}
#endif

// ---------------------------------------------------------------------------------------------
// Activations to FP8 for the FP8 tensor-core GEMM: each row of x [rows, cols] (bf16) is scaled so
// that its largest magnitude lands on 448 and rounded to e4m3, exactly as the host quantiser of
// weights (fp8.rs `Fp8Host::quantize`: scale = absmax / 448, or 1 for an all-zero or non-finite
// row; code = e4m3(x * (1 / scale)), ties to even, saturating). One block per row, 8 values per
// thread and step; cols % 8 == 0.
__device__ __forceinline__ u32 f32_to_e4m3(float x) {
    u32 sign = (__float_as_uint(x) >> 24) & 0x80u;
    float a = fabsf(x);
    if (a != a) return 0x7fu;
    u32 magnitude;
    if (a >= 448.f) {
        magnitude = 0x7eu;
    } else if (a < 0.015625f) {  // subnormal range, steps of 2^-9
        magnitude = (u32)__float2int_rn(a * 512.f);
    } else {  // round the fp32 mantissa to 3 bits, ties to even
        u32 bits = __float_as_uint(a);
        u32 rounded = (bits + 0x7ffffu + ((bits >> 20) & 1u)) & ~0xfffffu;
        int exponent = (int)(rounded >> 23) - 127 + 7;
        u32 mantissa = (rounded >> 20) & 7u;
        magnitude = (exponent > 15 || (exponent == 15 && mantissa == 7u)) ? 0x7eu : (((u32)exponent << 3) | mantissa);
    }
    return sign | magnitude;
}

extern "C" __global__ void quantize_rows_e4m3_bf16(const bf16_t* __restrict__ x, unsigned char* __restrict__ codes,
                                                   float* __restrict__ scales, int cols) {
    __shared__ float red[32];
    const size_t base = (size_t)blockIdx.x * cols;
    const uint4* row = reinterpret_cast<const uint4*>(x + base);
    const int chunks = cols / 8;
    float v[8];
    float absmax = 0.f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        unpack8(row[c], v);
#pragma unroll
        for (int i = 0; i < 8; ++i) absmax = fmaxf(absmax, fabsf(v[i]));
    }
    for (int o = 16; o > 0; o >>= 1) absmax = fmaxf(absmax, __shfl_xor_sync(0xffffffffu, absmax, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (lane == 0) red[warp] = absmax;
    __syncthreads();
    absmax = 0.f;
    for (int w = 0; w < warps; ++w) absmax = fmaxf(absmax, red[w]);
    const float scale = (absmax > 0.f && absmax <= 3.402823466e38f) ? absmax / 448.f : 1.f;
    const float inv = 1.f / scale;
    if (threadIdx.x == 0) scales[blockIdx.x] = scale;
    uint2* out = reinterpret_cast<uint2*>(codes + base);
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        unpack8(row[c], v);
        uint2 o;
        o.x = f32_to_e4m3(v[0] * inv) | (f32_to_e4m3(v[1] * inv) << 8) | (f32_to_e4m3(v[2] * inv) << 16) |
              (f32_to_e4m3(v[3] * inv) << 24);
        o.y = f32_to_e4m3(v[4] * inv) | (f32_to_e4m3(v[5] * inv) << 8) | (f32_to_e4m3(v[6] * inv) << 16) |
              (f32_to_e4m3(v[7] * inv) << 24);
        out[c] = o;
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm (+ SiLU) over [batch, channels, t, h, w], fp16 or bf16, the VAE's normalisation.
// A group's values are one contiguous span of `span` = (channels / groups) * t * h * w elements.
// Three passes over x: (1) per-chunk fp32 sums; (2) with the group's mean (the chunks summed in
// fp64, every block in the same order), per-chunk sums of squared deviations; (3) statistics
// per group from the same partials, then y = x * scale + shift (fp32, no contraction), rounded to
// the dtype, and (silu) SiLU of the rounded value, rounded again. The portable path (ops.rs)
// rounds at the same points. `is_f16` selects fp16 (else bf16) bit patterns.
__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float half_load(const unsigned short* p, size_t i, int is_f16) {
    return is_f16 ? h2f(p[i]) : bf2f(p[i]);
}

__device__ __forceinline__ unsigned short half_store(float f, int is_f16) { return is_f16 ? f2h(f) : f2bf(f); }

__device__ __forceinline__ float block_sum_f(float v, float* red) {
    v = warp_sum(v);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < warps; ++w) total += red[w];
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_max_f(float v, float* red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float total = NEG_INF;
    for (int w = 0; w < warps; ++w) total = fmaxf(total, red[w]);
    __syncthreads();
    return total;
}

// The softmax of the cuBLASLt attention (attention_gemm.rs): rows of fp32 scores `s`
// [rows, keys] to probabilities in fp16/bf16 [rows, keys_p] (zeros past `keys`), as the
// portable path computes them: x = f32(s * scale), p = exp(x - max) / sum, one rounding.
// Causal: row r is query `first + r % rows_per_head`, and keys after it are hidden. One block
// per row.
extern "C" __global__ void softmax_rows(const float* __restrict__ scores, unsigned short* __restrict__ out,
                                        int keys, int keys_p, int rows_per_head, int causal, int first,
                                        float scale, int is_f16) {
    __shared__ float red[32];
    const long long row = blockIdx.x;
    const float* s = scores + row * keys;
    unsigned short* o = out + row * keys_p;
    const int visible = causal ? min(keys, first + (int)(row % rows_per_head) + 1) : keys;
    float m = NEG_INF;
    for (int c = threadIdx.x; c < visible; c += blockDim.x) m = fmaxf(m, s[c] * scale);
    m = block_max_f(m, red);
    float sum = 0.f;
    for (int c = threadIdx.x; c < visible; c += blockDim.x) sum += expf(s[c] * scale - m);
    sum = block_sum_f(sum, red);
    for (int c = threadIdx.x; c < keys_p; c += blockDim.x)
        o[c] = half_store(c < visible ? expf(s[c] * scale - m) / sum : 0.f, is_f16);
}

// The mean of group `group` from its `chunks` partial sums (fp64, fixed order).
__device__ __forceinline__ float group_mean(const float* partial, int group, int chunks, long long span) {
    double s = 0.0;
    for (int c = 0; c < chunks; ++c) s += (double)partial[(size_t)group * chunks + c];
    return (float)(s / (double)span);
}

// grid (chunks, batch * groups); pass 2 when `partial` is given (then `out` gets squared deviations).
extern "C" __global__ void group_norm_partials(const unsigned short* __restrict__ x, const float* __restrict__ partial,
                                              float* __restrict__ out, long long span, int chunks, int is_f16) {
    __shared__ float red[32];
    const int group = blockIdx.y;
    const long long per_chunk = (span + chunks - 1) / chunks;
    const long long begin = (long long)blockIdx.x * per_chunk;
    const long long end = begin + per_chunk < span ? begin + per_chunk : span;
    const size_t base = (size_t)group * span;
    const float mean = partial ? group_mean(partial, group, chunks, span) : 0.f;
    float acc = 0.f;
    for (long long i = begin + threadIdx.x; i < end; i += blockDim.x) {
        float v = half_load(x, base + i, is_f16);
        if (partial) {
            float d = __fsub_rn(v, mean);
            acc += __fmul_rn(d, d);
        } else {
            acc += v;
        }
    }
    acc = block_sum_f(acc, red);
    if (threadIdx.x == 0) out[(size_t)group * chunks + blockIdx.x] = acc;
}

// Per group: (scale, shift) per channel need mean and rstd; one thread per group writes them.
extern "C" __global__ void group_norm_stats(const float* __restrict__ sums, const float* __restrict__ squares,
                                           float* __restrict__ stats, int groups_total, int chunks, long long span,
                                           float eps) {
    int group = blockIdx.x * blockDim.x + threadIdx.x;
    if (group >= groups_total) return;
    float mean = group_mean(sums, group, chunks, span);
    float var = group_mean(squares, group, chunks, span);
    stats[2 * group] = mean;
    stats[2 * group + 1] = 1.f / sqrtf(var + eps);
}

// grid (blocks per channel, batch * channels): y = x * scale[c] + shift[c] with
// scale = rstd * gamma and shift = beta - mean * scale, as the portable path.
extern "C" __global__ void group_norm_apply(const unsigned short* __restrict__ x, const float* __restrict__ stats,
                                           const unsigned short* __restrict__ weight,
                                           const unsigned short* __restrict__ bias, unsigned short* __restrict__ out,
                                           long long per_channel, int channels, int groups, int is_f16, int silu) {
    const int bc = blockIdx.y;  // batch * channels + channel
    const int c = bc % channels;
    const int group = (bc / channels) * groups + c / (channels / groups);
    const float mean = stats[2 * group], rstd = stats[2 * group + 1];
    const float scale = __fmul_rn(rstd, half_load(weight, c, is_f16));
    const float shift = __fsub_rn(half_load(bias, c, is_f16), __fmul_rn(mean, scale));
    const size_t base = (size_t)bc * per_channel;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < per_channel;
         i += (long long)gridDim.x * blockDim.x) {
        float y = __fadd_rn(__fmul_rn(half_load(x, base + i, is_f16), scale), shift);
        unsigned short r = half_store(y, is_f16);
        if (silu) {
            float v = half_load(&r, 0, is_f16);
            r = half_store(v / (1.f + expf(-v)), is_f16);
        }
        out[base + i] = r;
    }
}

// ---------------------------------------------------------------------------------------------
// The convolution's epilogue (cuda/conv.rs): crop the fp32 accumulator of `frames` output frames
// (rows on the stride-1 grid of the h x w input plane, `cout_p` columns) to the strided output,
// add the bias in fp32 and round once into the channels-last output [.., h_out, w_out, cout] at
// element `offset`. kind: 0 bf16, 1 fp16, 2 fp32.
extern "C" __global__ void conv_epilogue(const float* __restrict__ acc, const float* __restrict__ bias, void* out,
                                        long long offset, long long n, int cout, int cout_p, int w, long long plane,
                                        int h_out, int w_out, int sh, int sw, int kind) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += stride) {
        const int c = (int)(i % cout);
        long long r = i / cout;
        const int x = (int)(r % w_out);
        r /= w_out;
        const int y = (int)(r % h_out);
        const long long f = r / h_out;
        const size_t src = ((size_t)f * plane + (size_t)y * sh * w + (size_t)x * sw) * cout_p + c;
        const float v = bias ? __fadd_rn(acc[src], bias[c]) : acc[src];
        if (kind == 2) {
            reinterpret_cast<float*>(out)[offset + i] = v;
        } else {
            reinterpret_cast<unsigned short*>(out)[offset + i] = half_store(v, kind);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The causal convolution's input (cuda/conv.rs): x [b, c, t, h, w] (any strides, in elements)
// replicate-padded by `pf` frames in front and `ph`/`pw` on both sides of height and width,
// written channels-last [b, t + pf, h + 2ph, w + 2pw, cp] with channels zero-filled up to cp.
// One block per (32 output columns, 32 channels, output row); a shared tile turns the reads
// along w into writes along c.
extern "C" __global__ void pad_channels_last(const unsigned short* __restrict__ x, unsigned short* __restrict__ out,
                                            int c, int t, int h, int w, int cp, int pf, int ph, int pw,
                                            long long sb, long long sc, long long st, long long sh, long long sw) {
    __shared__ unsigned short tile[32][33];
    const int tp = t + pf, hp = h + 2 * ph, wp = w + 2 * pw;
    long long row = blockIdx.z;  // (b, t', y')
    const int yo = (int)(row % hp);
    row /= hp;
    const int to = (int)(row % tp);
    const long long b = row / tp;
    const int ys = min(max(yo - ph, 0), h - 1), ts = max(to - pf, 0);
    const int x0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    // Load: threadIdx.x along w, threadIdx.y (x4) along c.
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        const int ci = c0 + j, xo = x0 + threadIdx.x;
        unsigned short v = 0;
        if (ci < c && xo < wp) {
            const int xs = min(max(xo - pw, 0), w - 1);
            v = x[b * sb + (long long)ci * sc + (long long)ts * st + (long long)ys * sh + (long long)xs * sw];
        }
        tile[j][threadIdx.x] = v;
    }
    __syncthreads();
    // Store: threadIdx.x along c.
    const size_t base = ((size_t)(b * tp + to) * hp + yo) * (size_t)wp;
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        const int xo = x0 + j, ci = c0 + threadIdx.x;
        if (xo < wp && ci < cp) out[(base + xo) * cp + ci] = tile[threadIdx.x][j];
    }
}
