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
// x/out: [batch, seq, heads, head_dim]; cos/sin: [rope_tokens, head_dim] fp32. One warp per head.
extern "C" __global__ void rms_norm_rope_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ weight,
                                              const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                              bf16_t* __restrict__ out, int rows, int seq, int heads, int head_dim,
                                              int rope_tokens, float eps) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= rows) return;
    int token = (warp / heads) % seq;
    const u32* xr = reinterpret_cast<const u32*>(x + (size_t)warp * head_dim);
    u32* orow = reinterpret_cast<u32*>(out + (size_t)warp * head_dim);
    int pairs = head_dim / 2;
    float sq = 0.f;
    for (int p = lane; p < pairs; p += 32) {
        u32 v = xr[p];
        float a = bf2f((bf16_t)(v & 0xffffu)), c = bf2f((bf16_t)(v >> 16));
        sq += a * a + c * c;
    }
    float rstd = rsqrtf(warp_sum(sq) / head_dim + eps);
    bool rope = token < rope_tokens;
    for (int p = lane; p < pairs; p += 32) {
        u32 v = xr[p];
        float w0 = bf2f(weight[2 * p]), w1 = bf2f(weight[2 * p + 1]);
        float y0 = round_bf(round_bf(bf2f((bf16_t)(v & 0xffffu)) * rstd) * w0);
        float y1 = round_bf(round_bf(bf2f((bf16_t)(v >> 16)) * rstd) * w1);
        if (rope) {
            size_t t = (size_t)token * head_dim + 2 * p;
            float r0 = y0 * cos_t[t] + (-y1) * sin_t[t];
            float r1 = y1 * cos_t[t + 1] + y0 * sin_t[t + 1];
            y0 = r0;
            y1 = r1;
        }
        orow[p] = pack_bf16x2(y0, y1);
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
// Flash attention forward, head_dim 128, bf16 in/out, fp32 softmax statistics and accumulators.
// q: [batch, seq_q, heads, 128], k/v: [batch, seq_k, heads, 128], o like q; dense (no mask).
// A CTA owns 128 query rows of one (batch, head): 8 warps x 16 rows. K/V stream through shared
// memory in tiles of 64 keys, double-buffered with cp.async; S = QK^T and O += PV run on the
// tensor cores (mma.sync m16n8k16), P stays in registers between the two products.

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
                         bf16_t* __restrict__ o, int seq_q, int seq_k, int heads, float scale_log2) {
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
    const bf16_t* vb = v + ((long long)batch * seq_k * heads + head) * FA_D;
    bf16_t* ob = o + ((long long)batch * seq_q * heads + head) * FA_D;

    const int tiles = (seq_k + FA_BN - 1) / FA_BN;
    load_tile(sq, qb, q0, FA_BM, seq_q, row_stride);
    load_tile(sk, kb, 0, FA_BN, seq_k, row_stride);
    load_tile(sv, vb, 0, FA_BN, seq_k, row_stride);
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
            load_tile(sv + next * FA_BN * 256, vb, (tile + 1) * FA_BN, FA_BN, seq_k, row_stride);
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
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float l = row_sum[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[h] = 1.f / l;
    }
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
