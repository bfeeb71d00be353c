/* gpu/score.cu — ranker-v1's ranking path on the GPU: a history pass (one
 * block per user) and a candidate pass (one block per tile of up to
 * GP_TILE candidates of one user), each running every layer of its tokens
 * inside one block, so that activations stay in shared memory and
 * registers from the embedding gather to the score.
 *
 * Per layer and tile (TM = GP_TILE rows, 8 warps; row work by quads, 8
 * rows per warp):
 *   LN1 -> A (int8 per row, or fp16)
 *   QKV = A Wqkv^T                        tensor cores, 2 x 4 warps over 64 x 128 outputs
 *   per head: S = Q K^T, softmax -> P, O = P V + p_self v_self
 *                                         over the user's cached keys and values (fp16
 *                                         tensor cores), then O -> A
 *   x += out(A)                           tensor cores
 *   LN2 -> A; for each GP_FCHUNK of d_ffn:
 *     h = gelu(A Wup^T) -> A2 (int8 per row and chunk, or fp16)
 *     acc += A2 Wdown^T                   in registers across chunks
 *   x += acc + b_down
 *
 * int8 models run the CPU's W8A8 arithmetic (llm/kernels.h): activations
 * quantized per row with lm_quantize_row_ref's rule, int32 sums, dequantized
 * as (float)sum * (s_row * s_col) + bias. One difference: the FFN's hidden
 * layer is quantized per row and GP_FCHUNK columns rather than per row, so
 * that it never has to be held whole; finer scales lose no accuracy.
 * fp32 models run the same code with fp16 operands and fp32 sums.
 *
 * The history pass writes each layer's keys and values (fp16) to a cache
 * that the candidate pass reads; history tiles run in order, which is all
 * causal attention needs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "gpu/fast.cuh"
#include "gpu/internal.cuh"

namespace {

constexpr int THREADS = 256, WARPS = 8, TM = GP_TILE;
#ifndef GP_CAND_MINB
#define GP_CAND_MINB 1 /* candidate blocks per SM the registers are capped for */
#endif
static_assert(TM == 64, "the GEMM warp layout assumes 64 rows: 2 warps x 32");
static_assert(WARPS * 8 == TM, "row work gives each warp 8 rows, one per quad");

/* ---- shapes and shared-memory layout ----------------------------------------------- */

/* dhp: a head's width padded to 16 (one fp16 k-step); hp = H * dhp;
 * lcap: max_hist padded to 32, the key capacity of the cache. */
/* Row stride (floats) of the residual in shared memory: 16 floats of
 * padding put the rows that a warp's 8 quads read at once on distinct
 * banks. */
__host__ __device__ constexpr int xld(int DP) { return DP + 16; }

struct Dims {
    int d, H, dh, dhp, hp, f, fp, max_hist, lcap, n_layers;
};

struct Smem {
    int lda1, lda2, ldq, ldh; /* bytes, bytes, halves, halves */
    int lds, ldp;             /* floats, halves */
    size_t xs, a1, sa, s2, u, qkv, S, P, pself, hid, a2, total;
};

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

/* Offsets of every buffer; host and device compute the same. esz: bytes of
 * an A element (1: int8, 2: fp16). */
__host__ __device__ inline Smem smem_layout(const Dims &m, int DP, int esz)
{
    Smem s;
    s.lda1 = DP * esz + 16;
    s.lda2 = GP_FCHUNK * esz + 16;
    s.ldq = 3 * m.hp + 8; /* +16 bytes: ldmatrix rows on distinct banks */
    s.ldh = GP_FCHUNK + 8;
    s.lds = m.lcap + 4;
    s.ldp = m.lcap + 8;
    size_t o = 0;
    s.xs = o;   o = align16(o + sizeof(float) * TM * xld(DP));
    s.a1 = o;   o = align16(o + (size_t)TM * s.lda1);
    s.sa = o;   o = align16(o + sizeof(float) * TM);
    s.s2 = o;   o = align16(o + sizeof(float) * TM);
    /* the union: attention's buffers, or the FFN's */
    s.u = o;
    s.qkv = s.u;
    s.S = align16(s.qkv + sizeof(__half) * TM * s.ldq);
    s.P = align16(s.S + sizeof(float) * TM * s.lds);
    s.pself = align16(s.P + sizeof(__half) * TM * s.ldp);
    size_t att = s.pself + sizeof(float) * TM - s.u;
    s.hid = s.u;
    s.a2 = esz == 1 ? s.u + align16(sizeof(__half) * TM * s.ldh) : s.hid; /* fp16: A2 is hid */
    size_t ffn = sizeof(__half) * TM * s.ldh + (esz == 1 ? (size_t)TM * s.lda2 + 16 : 0);
    o = align16(o + (att > ffn ? att : ffn));
    s.total = o;
    return s;
}

/* ---- tensor-core fragments ---------------------------------------------------------------- */

/* Operand type traits: the same 32-byte k-steps for both (m16n8k32 int8,
 * m16n8k16 fp16), so fragments load the same bytes. */
template <typename T> struct Op;
template <> struct Op<int8_t> {
    typedef int Acc;
    static __device__ __forceinline__ void mma(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};\n"
                     : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct Op<__half> {
    typedef float Acc;
    static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                     "{%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], const void *p)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(s));
}

/* B operands: weights through the read-only path; the key/value cache
 * that the same block wrote earlier (history) from L2, which is coherent. */
template <bool NC> __device__ __forceinline__ uint32_t ldb32(const void *p)
{
    return NC ? __ldg((const unsigned *)p) : __ldcg((const unsigned *)p);
}

/* acc[2][NT] += A[32 rows of this warp, kb bytes] . W[NT*8 rows from n0]^T.
 * A in shared memory (row stride lda bytes), W in global memory (row
 * stride ldw bytes); kb a multiple of 32. */
template <typename T, int NT, bool NC = true>
__device__ __forceinline__ void warp_mma(typename Op<T>::Acc (&acc)[2][NT][4], const uint8_t *A, int lda,
                                         const uint8_t *W, int ldw, int kb)
{
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint8_t *arow = A + (size_t)(lane & 15) * lda + (lane >> 4) * 16;
    const uint8_t *wrow = W + (size_t)g * ldw + t * 4;
    uint32_t b[NT][2], bn[NT][2];
#pragma unroll
    for (int ni = 0; ni < NT; ni++) {
        b[ni][0] = ldb32<NC>(wrow + (size_t)ni * 8 * ldw);
        b[ni][1] = ldb32<NC>(wrow + (size_t)ni * 8 * ldw + 16);
    }
    for (int k0 = 0; k0 < kb; k0 += 32) {
        const bool more = k0 + 32 < kb;
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
            if (more) {
                bn[ni][0] = ldb32<NC>(wrow + (size_t)ni * 8 * ldw + k0 + 32);
                bn[ni][1] = ldb32<NC>(wrow + (size_t)ni * 8 * ldw + k0 + 48);
            }
        uint32_t a[2][4];
        ldmatrix_x4(a[0], arow + k0);
        ldmatrix_x4(a[1], arow + (size_t)16 * lda + k0);
#pragma unroll
        for (int ni = 0; ni < NT; ni++) {
            Op<T>::mma(acc[0][ni], a[0], b[ni][0], b[ni][1]);
            Op<T>::mma(acc[1][ni], a[1], b[ni][0], b[ni][1]);
        }
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
            if (more) {
                b[ni][0] = bn[ni][0];
                b[ni][1] = bn[ni][1];
            }
    }
}

template <typename A, int NT> __device__ __forceinline__ void zero(A (&acc)[2][NT][4])
{
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[mi][ni][e] = 0;
}

/* Calls f(row, col, acc) for every accumulator of the warp; rows from
 * row0, columns from n0 (the fragment layout of m16n8). */
template <typename A, int NT, typename F>
__device__ __forceinline__ void each_acc(const A (&acc)[2][NT][4], int row0, int n0, F f)
{
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                f(row0 + mi * 16 + g + (e >> 1) * 8, n0 + ni * 8 + t * 2 + (e & 1), acc[mi][ni][e]);
}

/* f(row, col, sum) for C = A B^T over np columns of B (a multiple of 32),
 * 128 at a time: 2 x 4 warps, each 32 rows x 32 columns. */
template <typename T, bool NC, typename F>
__device__ void gemm_raw(const uint8_t *A, int lda, const uint8_t *W, int ldw, int np, int kb, F f)
{
    const int warp = threadIdx.x >> 5, wm = warp & 1, wn = warp >> 1;
    for (int n0 = wn * 32; n0 < np; n0 += 128) {
        typename Op<T>::Acc acc[2][4][4];
        zero(acc);
        warp_mma<T, 4, NC>(acc, A + (size_t)wm * 32 * lda, lda, W + (size_t)n0 * ldw, ldw, kb);
        each_acc(acc, wm * 32, n0, f);
    }
}

/* Per-column factors of a pass, loaded once: columns n0 + ni * 8 + t * 2
 * + j of this thread. */
template <typename T>
__device__ __forceinline__ void col_factors(const gp_lin &lin, int n0, float (&sc)[4][2], float (&bi)[4][2])
{
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int c = n0 + ni * 8 + t * 2 + j;
            sc[ni][j] = sizeof(T) == 1 ? __ldg(&lin.scale[c]) : 1.0f;
            bi[ni][j] = __ldg(&lin.bias[c]);
        }
}

/* y = (A W^T) dequantized + bias (the CPU's (float)sum * (s_row * s_col) +
 * bias) for the columns of `lin`, as pairs of adjacent columns: f(row,
 * col, y[col], y[col + 1]) for col < lin.n (n and np are even). */
template <typename T, typename F>
__device__ void gemm(const uint8_t *A, int lda, const float *sa, const gp_lin &lin, F f)
{
    const int warp = threadIdx.x >> 5, wm = warp & 1, wn = warp >> 1, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3, ldw = lin.kp * (int)sizeof(T);
    const uint8_t *W = (const uint8_t *)(sizeof(T) == 1 ? (const void *)lin.q : (const void *)lin.h);
    float ra[2][2];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++)
            ra[mi][h] = sizeof(T) == 1 ? sa[wm * 32 + mi * 16 + g + h * 8] : 1.0f;
    for (int n0 = wn * 32; n0 < lin.np; n0 += 128) {
        typename Op<T>::Acc acc[2][4][4];
        zero(acc);
        warp_mma<T, 4, true>(acc, A + (size_t)wm * 32 * lda, lda, W + (size_t)n0 * ldw, ldw, ldw);
        float sc[4][2], bi[4][2];
        col_factors<T>(lin, n0, sc, bi);
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = wm * 32 + mi * 16 + g + h * 8, c = n0 + ni * 8 + t * 2;
                    if (c < lin.n)
                        f(r, c, (float)acc[mi][ni][2 * h] * (ra[mi][h] * sc[ni][0]) + bi[ni][0],
                          (float)acc[mi][ni][2 * h + 1] * (ra[mi][h] * sc[ni][1]) + bi[ni][1]);
                }
    }
}

/* ---- rows, a quad each ------------------------------------------------------------------ */

/* Rows of the tile are handled by quads: lanes 4r'..4r'+3 of warp w own
 * row 8w + r', so a warp works on 8 rows at once and reduces over 4 lanes.
 * Every lane of the warp must take part (the shuffles name all 32). */
__device__ __forceinline__ int quad_row() { return (threadIdx.x >> 5) * 8 + ((threadIdx.x & 31) >> 2); }

/* int8 by lm_quantize_row_ref's rule: rint(v * boost * inv), saturated
 * (|v| <= amax keeps it within +-127). */
__device__ __forceinline__ int8_t q8(float v, float boost, float inv)
{
    int r;
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r) : "f"(v * boost * inv));
    return (int8_t)r;
}

/* A row's values as an operand row, by a quad: int8 with the row scale
 * (lm_quantize_row_ref's rule) or fp16. get(i) gives value i < n (called
 * twice per value for int8: for the maximum, then to quantize); columns
 * n..npad (a multiple of 16) are zeroed. */
template <typename T, typename G>
__device__ __forceinline__ void quad_store_row(G get, int n, int npad, uint8_t *dst, float *s)
{
    const int q = threadIdx.x & 3;
    if (sizeof(T) == 1) {
        float amax = 0.0f;
        for (int i = q * 4; i < n; i += 16)
            for (int j = 0; j < 4 && i + j < n; j++)
                amax = fmaxf(amax, fabsf(get(i + j)));
        amax = gp_quad_max(amax);
        const float boost = amax < 0x1p-100f ? 0x1p100f : 1.0f, inv = amax != 0.0f ? 127.0f / (amax * boost) : 0.0f;
        for (int i = q * 4; i < npad; i += 16) {
            char4 v;
            v.x = i + 0 < n ? q8(get(i + 0), boost, inv) : 0;
            v.y = i + 1 < n ? q8(get(i + 1), boost, inv) : 0;
            v.z = i + 2 < n ? q8(get(i + 2), boost, inv) : 0;
            v.w = i + 3 < n ? q8(get(i + 3), boost, inv) : 0;
            *(char4 *)(dst + i) = v;
        }
        if (q == 0)
            *s = amax == 0.0f ? 0.0f : amax / 127.0f;
    } else {
        for (int i = q * 4; i < npad; i += 16) {
            __half2 *p = (__half2 *)(dst + 2 * i);
            p[0] = __floats2half2_rn(i + 0 < n ? get(i + 0) : 0.0f, i + 1 < n ? get(i + 1) : 0.0f);
            p[1] = __floats2half2_rn(i + 2 < n ? get(i + 2) : 0.0f, i + 3 < n ? get(i + 3) : 0.0f);
        }
    }
}

/* Mean and 1/std of row x[0..d) (d a multiple of 4, x 16-byte aligned), by
 * a quad. */
__device__ __forceinline__ float2 quad_moments(const float *x, int d)
{
    const int q = threadIdx.x & 3;
    float s = 0.0f;
    for (int i = q * 4; i < d; i += 16) {
        float4 v = *(const float4 *)(x + i);
        s += (v.x + v.y) + (v.z + v.w);
    }
    const float mean = gp_quad_sum(s) / (float)d;
    float v2 = 0.0f;
    for (int i = q * 4; i < d; i += 16) {
        float4 v = *(const float4 *)(x + i);
        v2 += (v.x - mean) * (v.x - mean) + (v.y - mean) * (v.y - mean) + (v.z - mean) * (v.z - mean) +
              (v.w - mean) * (v.w - mean);
    }
    return make_float2(mean, 1.0f / sqrtf(gp_quad_sum(v2) / (float)d + 1e-5f));
}

/* ---- one layer of a tile -------------------------------------------------------------------- */

struct Ctx {
    const gp_weights *w;
    Dims m;
    Smem L;
    uint8_t *sm;
    int rows; /* valid rows of the tile */
    __device__ float *xs() const { return (float *)(sm + L.xs); }
    __device__ uint8_t *a1() const { return sm + L.a1; }
    __device__ float *sa() const { return (float *)(sm + L.sa); }
    __device__ float *s2() const { return (float *)(sm + L.s2); }
    __device__ float *S() const { return (float *)(sm + L.S); }
    __device__ __half *P() const { return (__half *)(sm + L.P); }
    __device__ float *pself() const { return (float *)(sm + L.pself); }
    __device__ __half *qkv() const { return (__half *)(sm + L.qkv); }
    __device__ __half *hid() const { return (__half *)(sm + L.hid); }
    __device__ uint8_t *a2() const { return sm + L.a2; }
};

/* A1 rows = LN(x rows) as operands, a quad per row. */
template <typename T, int DP>
__device__ void ln_to_a1(const Ctx &c, const float *g, const float *b)
{
    const int r = quad_row(), d = c.m.d;
    const float *x = c.xs() + (size_t)r * xld(DP);
    const float2 mr = quad_moments(x, d);
    quad_store_row<T>([&](int i) { return (x[i] - mr.x) * mr.y * __ldg(&g[i]) + __ldg(&b[i]); }, d, DP,
                      c.a1() + (size_t)r * c.L.lda1, &c.sa()[r]);
}

/* q, k and v of the tile's rows in the padded-head layout, into the qkv
 * buffer; for history tiles (K != NULL) keys and values go to the cache
 * instead, at key positions t0 + r: K [lcap, hp], Vt [hp, lcap]. */
template <typename T, int DP>
__device__ void qkv_proj(const Ctx &c, const gp_layer &ly, __half *K, __half *Vt, int t0)
{
    const Dims &m = c.m;
    __half *q = c.qkv();
    if (m.dhp != m.dh) { /* padded head slots must read as zeros */
        for (int i = threadIdx.x; i < TM * c.L.ldq; i += THREADS)
            q[i] = __float2half_rn(0.0f);
        __syncthreads();
    }
    gemm<T>(c.a1(), c.L.lda1, c.sa(), ly.qkv, [&](int r, int col, float y0, float y1) {
        if (!K && m.dh == m.dhp) { /* candidates, unpadded heads: the layout is the GEMM's */
            *(__half2 *)&q[(size_t)r * c.L.ldq + col] = __floats2half2_rn(y0, y1);
            return;
        }
        for (int j = 0; j < 2; j++) {
            const int cc = col + j, sec = cc / m.d, h = (cc % m.d) / m.dh, i = cc % m.dh, hc = h * m.dhp + i;
            const __half y = __float2half_rn(j ? y1 : y0);
            if (!K || sec == 0)
                q[(size_t)r * c.L.ldq + sec * m.hp + hc] = y;
            else if (r < c.rows) /* rows past the history would land on other keys */
                (sec == 1 ? K[(size_t)(t0 + r) * m.hp + hc] : Vt[(size_t)hc * m.lcap + t0 + r]) = y;
        }
    });
}

/* x += out(att) for the tile, att from A1. */
template <typename T, int DP> __device__ void out_proj(const Ctx &c, const gp_layer &ly)
{
    float *x = c.xs();
    gemm<T>(c.a1(), c.L.lda1, c.sa(), ly.out, [&](int r, int col, float y0, float y1) {
        float2 *p = (float2 *)&x[(size_t)r * xld(DP) + col];
        float2 v = *p;
        *p = make_float2(v.x + y0, v.y + y1);
    });
}

/* gelu_tanh with the hardware tanh (max relative error about 2^-11, far
 * under the int8 step the result is quantized to). */
__device__ __forceinline__ float gelu(float y)
{
    float t;
    asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(0.7978845608028654f * (0.044715f * y * y * y + y)));
    return 0.5f * y * (1.0f + t);
}

/* hid (fp16, one FFN chunk) -> A2 int8 per row of the chunk, a quad per
 * row. */
__device__ void quantize_chunk(const Ctx &c)
{
    const int r = quad_row();
    const __half *h = c.hid() + (size_t)r * c.L.ldh;
    quad_store_row<int8_t>([&](int i) { return __half2float(h[i]); }, GP_FCHUNK, GP_FCHUNK,
                           c.a2() + (size_t)r * c.L.lda2, &c.s2()[r]);
}

/* x += down(gelu(up(A1))) for the tile, GP_FCHUNK hidden columns at a time,
 * the down projection summed in registers. */
template <typename T, int DP> __device__ void ffn(const Ctx &c, const gp_layer &ly)
{
    constexpr int NT = DP / 32; /* n8 tiles per warp: 4 warps over DP columns */
    const int warp = threadIdx.x >> 5, wm = warp & 1, wn = warp >> 1, esz = (int)sizeof(T);
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint8_t *Wu = (const uint8_t *)(esz == 1 ? (const void *)ly.up.q : (const void *)ly.up.h);
    const uint8_t *Wd = (const uint8_t *)(esz == 1 ? (const void *)ly.down.q : (const void *)ly.down.h);
    const int ldu = ly.up.kp * esz, ldd = ly.down.kp * esz;
    __half *hid = c.hid();
    float ra[2][2], dsc[NT][2];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++)
            ra[mi][h] = esz == 1 ? c.sa()[wm * 32 + mi * 16 + g + h * 8] : 1.0f;
#pragma unroll
    for (int ni = 0; ni < NT; ni++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            dsc[ni][j] = esz == 1 ? __ldg(&ly.down.scale[wn * (DP / 4) + ni * 8 + t * 2 + j]) : 1.0f;
    float down[2][NT][4];
    zero(down);
    for (int f0 = 0; f0 < ly.up.np; f0 += GP_FCHUNK) {
        { /* up, bias, GELU -> hid (fp16) */
            typename Op<T>::Acc acc[2][4][4];
            zero(acc);
            warp_mma<T, 4>(acc, c.a1() + (size_t)wm * 32 * c.L.lda1, c.L.lda1, Wu + (size_t)(f0 + wn * 32) * ldu, ldu,
                           ldu);
            float sc[4][2], bi[4][2];
            col_factors<T>(ly.up, f0 + wn * 32, sc, bi);
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = wm * 32 + mi * 16 + g + h * 8;
#pragma unroll
                    for (int ni = 0; ni < 4; ni++) {
                        const int j = wn * 32 + ni * 8 + t * 2;
                        float y0 = gelu((float)acc[mi][ni][2 * h] * (ra[mi][h] * sc[ni][0]) + bi[ni][0]);
                        float y1 = gelu((float)acc[mi][ni][2 * h + 1] * (ra[mi][h] * sc[ni][1]) + bi[ni][1]);
                        *(__half2 *)&hid[(size_t)r * c.L.ldh + j] = __floats2half2_rn(y0, y1);
                    }
                }
        }
        __syncthreads();
        if (esz == 1) {
            quantize_chunk(c);
            __syncthreads();
        }
        { /* down, this chunk's part */
            typename Op<T>::Acc acc[2][NT][4];
            zero(acc);
            warp_mma<T, NT>(acc, c.a2() + (size_t)wm * 32 * c.L.lda2, c.L.lda2,
                            Wd + (size_t)wn * (DP / 4) * ldd + (size_t)f0 * esz, ldd, GP_FCHUNK * esz);
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const float rs = esz == 1 ? c.s2()[wm * 32 + mi * 16 + g + h * 8] : 1.0f;
#pragma unroll
                    for (int ni = 0; ni < NT; ni++)
#pragma unroll
                        for (int j = 0; j < 2; j++)
                            down[mi][ni][2 * h + j] += esz == 1 ? (float)acc[mi][ni][2 * h + j] * (rs * dsc[ni][j])
                                                                : (float)acc[mi][ni][2 * h + j];
                }
        }
        __syncthreads();
    }
    float *x = c.xs();
    each_acc(down, wm * 32, wn * (DP / 4), [&](int r, int col, float v) {
        if (col < c.m.d)
            x[(size_t)r * xld(DP) + col] += v + __ldg(&ly.down.bias[col]);
    });
}

/* Softmax of head h for every row of the tile, a quad per row: S over
 * the row's visible keys (and, for candidates, its own key) into P (fp16,
 * zeros up to lp) and p_self. */
__device__ void softmax_rows(const Ctx &c, int h, int nk, int causal_first, int lp, float scale)
{
    const Dims &m = c.m;
    const int r = quad_row(), q = threadIdx.x & 3;
    const bool cand = causal_first < 0;
    float ss = 0.0f; /* the row's own key */
    if (cand) {
        const __half *qr = c.qkv() + (size_t)r * c.L.ldq + h * m.dhp;
        for (int i = q; i < m.dh; i += 4)
            ss += __half2float(qr[i]) * __half2float(qr[m.hp + i]);
        ss = gp_quad_sum(ss);
    }
    const int n = r >= c.rows ? 0 : cand ? nk : causal_first + r + 1;
    float *s = c.S() + (size_t)r * c.L.lds;
    float mx = -INFINITY;
    for (int j = q; j < n; j += 4)
        mx = fmaxf(mx, s[j]);
    mx = fmaxf(gp_quad_max(mx), cand ? ss : -INFINITY) * scale;
    float sum = 0.0f;
    for (int j = q; j < n; j += 4) {
        float e = __expf(s[j] * scale - mx);
        s[j] = e;
        sum += e;
    }
    const float es = cand ? __expf(ss * scale - mx) : 0.0f;
    sum = gp_quad_sum(sum) + es;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    __half *p = c.P() + (size_t)r * c.L.ldp;
    for (int j = q; j < lp; j += 4)
        p[j] = __float2half_rn(j < n ? s[j] * inv : 0.0f);
    if (q == 0)
        c.pself()[r] = es * inv;
}

/* Attention of the tile's rows, head by head on the tensor cores: S = Q_h
 * K_h^T, softmax per row into P, O = P V_h + p_self v_self written over
 * q_h; then the rows as operands into A1. History rows (causal_first >= 0)
 * see keys 0..causal_first + r; candidate rows all nk keys and themselves.
 * NC: whether the cache may be read through the read-only path (it was
 * written by an earlier kernel). */
template <typename T, int DP, bool NC>
__device__ void attention(const Ctx &c, const __half *K, const __half *Vt, int nk, int causal_first)
{
    const Dims &m = c.m;
    const int ldq = c.L.ldq;
    const bool cand = causal_first < 0;
    const int lp = gp_round_up(cand ? nk : causal_first + c.rows, 32);
    const float scale = 1.0f / sqrtf((float)m.dh);
    __half *qkv = c.qkv();
    for (int h = 0; h < m.H; h++) {
        if (lp > 0) {
            float *S = c.S();
            gemm_raw<__half, NC>((const uint8_t *)(qkv + h * m.dhp), ldq * 2, (const uint8_t *)(K + h * m.dhp),
                                 m.hp * 2, lp, m.dhp * 2,
                                 [&](int r, int j, float v) { S[(size_t)r * c.L.lds + j] = v; });
        }
        __syncthreads();
        softmax_rows(c, h, nk, causal_first, lp, scale);
        __syncthreads();
        const float *ps = c.pself();
        auto out = [&](int r, int i, float v) {
            if (i < m.dh) {
                __half *o = qkv + (size_t)r * ldq + h * m.dhp + i;
                float self = cand ? ps[r] * __half2float(o[2 * m.hp]) : 0.0f;
                *o = __float2half_rn(v + self);
            }
        };
        if (lp > 0)
            gemm_raw<__half, NC>((const uint8_t *)c.P(), c.L.ldp * 2, (const uint8_t *)(Vt + (size_t)h * m.dhp * m.lcap),
                                 m.lcap * 2, gp_round_up(m.dhp, 32), lp * 2, out);
        else
            for (int i = threadIdx.x; i < TM * m.dh; i += THREADS)
                out(i / m.dh, i % m.dh, 0.0f);
        __syncthreads();
    }
    const int r = quad_row();
    const __half *o = qkv + (size_t)r * ldq;
    if (m.dh == m.dhp)
        quad_store_row<T>([&](int i) { return __half2float(o[i]); }, m.d, DP, c.a1() + (size_t)r * c.L.lda1,
                          &c.sa()[r]);
    else
        quad_store_row<T>([&](int i) { return __half2float(o[(i / m.dh) * m.dhp + i % m.dh]); }, m.d, DP,
                          c.a1() + (size_t)r * c.L.lda1, &c.sa()[r]);
}

/* One layer for the tile. History tiles (causal_first = t0 >= 0) write
 * their keys and values to the cache first; candidate tiles read nk. */
template <typename T, int DP, bool NC>
__device__ void layer(const Ctx &c, const gp_layer &ly, __half *K, __half *Vt, int nk, int causal_first)
{
    ln_to_a1<T, DP>(c, ly.ln1_w, ly.ln1_b);
    __syncthreads();
    qkv_proj<T, DP>(c, ly, causal_first >= 0 ? K : NULL, Vt, causal_first);
    __syncthreads();
    attention<T, DP, NC>(c, K, Vt, nk, causal_first);
    __syncthreads();
    out_proj<T, DP>(c, ly);
    __syncthreads();
    ln_to_a1<T, DP>(c, ly.ln2_w, ly.ln2_b);
    __syncthreads();
    ffn<T, DP>(c, ly);
    __syncthreads();
}

__host__ __device__ inline Dims dims_of(const gp_weights *w)
{
    Dims m;
    m.d = w->cfg.d_model;
    m.H = w->cfg.n_heads;
    m.dh = m.d / m.H;
    m.dhp = gp_round_up(m.dh, 16);
    m.hp = m.H * m.dhp;
    m.f = w->cfg.d_ffn;
    m.fp = w->layers[0].up.np;
    m.max_hist = w->cfg.max_hist;
    m.lcap = gp_round_up(m.max_hist, 32);
    m.n_layers = w->cfg.n_layers;
    return m;
}

/* An input token into xr[0..DP), a quad per row, 4 columns a step (d is a
 * multiple of 4): item_emb[item] (dequantized) + add0 (+ add1 where given);
 * zeros past d, and for item < 0 (no row). */
template <int DP>
__device__ void embed_row(const gp_weights *w, int item, const float *add0, const float *add1, float *xr)
{
    const int d = w->cfg.d_model, int8 = w->int8, row = item >= 0 ? item : 0;
    const int8_t *iq = int8 ? w->item_q + (size_t)row * w->dp : NULL;
    const float *ifl = int8 ? NULL : w->item_f + (size_t)row * d;
    const float sc = int8 ? w->item_scale[row] : 0.0f;
    for (int j = (threadIdx.x & 3) * 4; j < DP; j += 16) {
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (item >= 0 && j < d) {
            if (int8) {
                char4 e = *(const char4 *)&iq[j];
                v = make_float4((float)e.x * sc, (float)e.y * sc, (float)e.z * sc, (float)e.w * sc);
            } else {
                v = make_float4(ifl[j], ifl[j + 1], ifl[j + 2], ifl[j + 3]);
            }
            v.x += add0[j], v.y += add0[j + 1], v.z += add0[j + 2], v.w += add0[j + 3];
            if (add1)
                v.x += add1[j], v.y += add1[j + 1], v.z += add1[j + 2], v.w += add1[j + 3];
        }
        *(float4 *)&xr[j] = v;
    }
}

/* The key/value cache of user b, layer l: keys K [lcap, hp], then values
 * transposed, Vt [hp, lcap] (rows of Vt are the B operand of P V). */
__host__ __device__ inline size_t kv_block(const Dims &m) { return (size_t)2 * m.lcap * m.hp; }
__device__ __forceinline__ __half *kv_at(__half *kv, const Dims &m, int b, int l)
{
    return kv + ((size_t)b * m.n_layers + l) * kv_block(m);
}

/* ---- the two passes --------------------------------------------------------------------------- */

template <typename T, int DP>
__global__ void __launch_bounds__(THREADS) history_kernel(const gp_weights *w, gp_batch bt, float *xh, __half *kv)
{
    extern __shared__ __align__(16) uint8_t sm[];
    Ctx c;
    c.w = w;
    c.m = dims_of(w);
    c.L = smem_layout(c.m, DP, (int)sizeof(T));
    c.sm = sm;
    const Dims &m = c.m;
    const int b = blockIdx.x, L = bt.n_hist[b];
    const int32_t *items = bt.hist_items + (size_t)b * m.max_hist, *acts = bt.hist_actions + (size_t)b * m.max_hist;
    float *xb = xh + (size_t)b * m.max_hist * DP;
    float *x = c.xs();
    for (int t = quad_row(); t < L; t += TM)
        embed_row<DP>(w, items[t], w->action_emb + (size_t)acts[t] * m.d, w->pos_emb + (size_t)(L - t) * m.d,
                      xb + (size_t)t * DP);
    __syncthreads();
    for (int l = 0; l < m.n_layers; l++) {
        __half *kvl = kv_at(kv, m, b, l);
        for (int t0 = 0; t0 < L; t0 += TM) {
            c.rows = min(TM, L - t0);
            for (int i = threadIdx.x; i < TM * DP; i += THREADS)
                x[(i / DP) * xld(DP) + i % DP] = i / DP < c.rows ? xb[(size_t)t0 * DP + i] : 0.0f;
            __syncthreads();
            layer<T, DP, false>(c, w->layers[l], kvl, kvl + (size_t)m.lcap * m.hp, 0, t0);
            for (int i = threadIdx.x; i < c.rows * DP; i += THREADS)
                xb[(size_t)t0 * DP + i] = x[(i / DP) * xld(DP) + i % DP];
            __syncthreads();
        }
    }
    /* user vector: LN_f of the newest token; LN_f of a zero row is its bias */
    if (threadIdx.x < 4) {
        const float *xl = xb + (size_t)(L > 0 ? L - 1 : 0) * DP;
        const float2 mr = L > 0 ? quad_moments(xl, m.d) : make_float2(0.0f, 0.0f);
        for (int i = threadIdx.x; i < m.d; i += 4)
            bt.user_vec[(size_t)b * m.d + i] = (L > 0 ? xl[i] - mr.x : 0.0f) * mr.y * w->lnf_w[i] + w->lnf_b[i];
    }
}

template <typename T, int DP>
__global__ void __launch_bounds__(THREADS, GP_CAND_MINB) cand_kernel(const gp_weights *w, gp_batch bt, const __half *kv)
{
    extern __shared__ __align__(16) uint8_t sm[];
    Ctx c;
    c.w = w;
    c.m = dims_of(w);
    c.L = smem_layout(c.m, DP, (int)sizeof(T));
    c.sm = sm;
    const Dims &m = c.m;
    const int4 tile = bt.tiles[blockIdx.x];
    const int b = tile.x, first = tile.y;
    c.rows = tile.z;
    const int L = bt.n_hist[b];
    float *x = c.xs();
    { /* candidate rows: item_emb[cand] + pos_emb[0] */
        const int r = quad_row();
        embed_row<DP>(w, r < c.rows ? bt.cands[first + r] : -1, w->pos_emb, NULL, x + (size_t)r * xld(DP));
    }
    __syncthreads();
    for (int l = 0; l < m.n_layers; l++)
    {
        __half *kvl = kv_at((__half *)kv, m, b, l);
        layer<T, DP, true>(c, w->layers[l], kvl, kvl + (size_t)m.lcap * m.hp, L, -1);
    }
    /* score = head . LN_f(x) + head_b, a quad per row */
    const int r = quad_row(), q = threadIdx.x & 3;
    const float *xr = x + (size_t)r * xld(DP);
    const float2 mr = quad_moments(xr, m.d);
    float s = 0.0f;
    for (int i = q; i < m.d; i += 4)
        s += ((xr[i] - mr.x) * mr.y * w->lnf_w[i] + w->lnf_b[i]) * w->head_w[i];
    s = gp_quad_sum(s);
    if (q == 0 && r < c.rows)
        bt.scores[first + r] = s + w->head_b;
}

} // namespace

/* ---- host side ------------------------------------------------------------------------------------ */

struct gp_score {
    const gp_weights *d_w;
    Dims m;
    int dp, esz, max_batch;
    size_t smem;
    float *xh;  /* [max_batch, max_hist, dp] history residuals */
    __half *kv; /* [max_batch, n_layers] blocks of kv_block halves */
    void (*hist)(const gp_weights *, gp_batch, float *, __half *);
    void (*cand)(const gp_weights *, gp_batch, const __half *);
    gp_fast *fast; /* int8 models of the shapes gpu/fast.cu takes; else NULL */
};

template <typename T, int DP> static void pick(gp_score *s)
{
    s->hist = history_kernel<T, DP>;
    s->cand = cand_kernel<T, DP>;
}

template <typename T> static int pick_dp(gp_score *s)
{
    switch (s->dp) {
    case 32: pick<T, 32>(s); return 0;
    case 64: pick<T, 64>(s); return 0;
    case 96: pick<T, 96>(s); return 0;
    case 128: pick<T, 128>(s); return 0;
    case 160: pick<T, 160>(s); return 0;
    case 192: pick<T, 192>(s); return 0;
    case 224: pick<T, 224>(s); return 0;
    case 256: pick<T, 256>(s); return 0;
    default: return -1;
    }
}

void gp_score_free(gp_score *s)
{
    if (!s)
        return;
    gp_fast_free(s->fast);
    cudaFree(s->xh);
    cudaFree(s->kv);
    free(s);
}

int gp_score_new(gp_score **out, const gp_weights *w, const gp_weights *d_w, int max_batch, char *err,
                 size_t errsz)
{
    *out = NULL;
    size_t kv_bytes = 0;
    gp_score *s = (gp_score *)calloc(1, sizeof *s);
    if (!s)
        return cm_errf(err, errsz, "gpu scorer: out of memory");
    s->d_w = d_w;
    s->max_batch = max_batch;
    s->esz = w->int8 ? 1 : 2;
    s->m = dims_of(w); /* w: the host copy, with the same sizes */
    const Dims &m = s->m;
    s->dp = gp_round_up(m.d, 32);
    if (m.d % 4) {
        gp_score_free(s);
        return cm_errf(err, errsz, "gpu scorer: d_model %d is not a multiple of 4", w->cfg.d_model);
    }
    if ((w->int8 ? pick_dp<int8_t>(s) : pick_dp<__half>(s)) != 0) {
        gp_score_free(s);
        return cm_errf(err, errsz, "gpu scorer: d_model %d is over the engine's 256", w->cfg.d_model);
    }
    { /* RANKD_GPU_GENERIC=1 keeps these kernels, for comparisons */
        char why[128];
        const char *gen = getenv("RANKD_GPU_GENERIC");
        if (!(gen && *gen == '1') && gp_fast_supports(w, why, sizeof why)) {
            if (gp_fast_new(&s->fast, w, max_batch, err, errsz)) {
                gp_score_free(s);
                return -1;
            }
            *out = s;
            return 0;
        }
    }
    s->smem = smem_layout(m, s->dp, s->esz).total;
    int dev = 0, optin = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (s->smem > (size_t)optin) {
        size_t need = s->smem;
        gp_score_free(s);
        return cm_errf(err, errsz, "gpu scorer: a tile needs %zu bytes of shared memory, the GPU gives %d "
                       "(d_model %d, d_ffn %d, max_hist %d)", need, optin, w->cfg.d_model, w->cfg.d_ffn,
                       w->cfg.max_hist);
    }
    GP_TRY(cudaFuncSetAttribute((const void *)s->hist, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s->smem),
           "shared memory of the history kernel");
    GP_TRY(cudaFuncSetAttribute((const void *)s->cand, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)s->smem),
           "shared memory of the candidate kernel");
    GP_TRY(cudaMalloc(&s->xh, sizeof(float) * (size_t)max_batch * m.max_hist * s->dp), "history buffer");
    /* + 32 rows of slack: the last head's P V reads B rows up to a multiple
     * of 32 past its own; zeros, so padded head slots read as zeros too */
    kv_bytes = sizeof(__half) * ((size_t)max_batch * m.n_layers * kv_block(m) + (size_t)32 * m.lcap);
    GP_TRY(cudaMalloc(&s->kv, kv_bytes), "key/value cache");
    GP_TRY(cudaMemset(s->kv, 0, kv_bytes), "key/value cache");
    *out = s;
    return 0;
fail:
    gp_score_free(s);
    return -1;
}

int gp_score_run(gp_score *s, cudaStream_t st, const gp_batch *b, char *err, size_t errsz)
{
    if (b->B < 0 || b->B > s->max_batch)
        return cm_errf(err, errsz, "gpu scorer: batch of %d, at most %d", b->B, s->max_batch);
    if (b->B == 0)
        return 0;
    if (s->fast)
        return gp_fast_run(s->fast, st, b, err, errsz);
    s->hist<<<b->B, THREADS, s->smem, st>>>(s->d_w, *b, s->xh, s->kv);
    if (gp_cuda_err(cudaGetLastError(), "history kernel", err, errsz))
        return -1;
    if (b->n_tiles > 0) {
        s->cand<<<b->n_tiles, THREADS, s->smem, st>>>(s->d_w, *b, s->kv);
        if (gp_cuda_err(cudaGetLastError(), "candidate kernel", err, errsz))
            return -1;
    }
    return 0;
}
