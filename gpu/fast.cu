/* gpu/fast.cu — the int8 scoring path for the shapes that serving uses
 * (d_model 64, 128 or 256 with heads of 16, 32 or 64; d_ffn a multiple of
 * 128; histories of at most 64 events): the same two passes as
 * gpu/score.cu, written so that each warp carries its own 16 rows through a
 * whole layer with no shared-memory round trip between the products.
 *
 * The trick that allows it: an m16n8 accumulator holds, per thread, the
 * columns that an A fragment of the next product needs, up to a fixed
 * permutation pi inside every 32 columns (int8 m16n8k32; fp16 m16n8k16 needs
 * none). The weights are stored with their input columns permuted by pi,
 * and in fragment order (one 16-byte load per lane gives the B fragments of
 * two k-steps), so every product reads its A operand straight from the
 * previous one's registers:
 *
 *   LN1(x) -> A (int8, per row)        registers
 *   per head: q k v = A Wqkv^T          int8 MMA, dequantized in registers
 *   S = q K^T, softmax, O = P V         fp16 MMA; K, V of the user's
 *                                        history: shared memory (history
 *                                        pass), the cache in fragment
 *                                        order (candidate pass)
 *   x += out(O)                         O quantized per row in registers
 *   LN2(x) -> A; per 128 FFN columns:   up, GELU, quantize, down: registers
 *
 * The residual x, the attention output and q wait in a warp's own slice of
 * shared memory between phases (no barrier needed). A history block of 4
 * warps (64 tokens) meets at a barrier only around the keys and values it
 * shares; candidate warps never wait for each other, and their blocks need
 * no shared memory for keys and values, so that 3 fit on an SM.
 * The arithmetic is gpu/score.cu's (the CPU's W8A8 rule, the FFN's hidden
 * layer quantized per 128 columns; the split way quantizes whole rows, as
 * the CPU) but for the order of some float sums and the hidden layer's
 * GELU and quantization, here in half2 (gelu_tiles). make test-gpu checks
 * both against the CPU.
 *
 * On sm_90a, at d_model 128, large batches' candidates run this kernel as
 * the wgmma way (WG): its products as warpgroup MMAs on weight chunks
 * streamed into shared memory (Ring, below; gpu/sm90.cuh). Small batches,
 * and the teacher's, take the split way (split_kernel), where 4 warps
 * share each 16 rows; the teacher's candidates, once its blocks would not
 * fit the GPU at once (wide_line), run it as the wide way, 16 warps to a tile of 64
 * rows on wgmma (SRing, below). The lean way (lean_kernel), for the
 * student's shapes on sm_90a, takes its batches from LEAN_TILES tiles: it
 * carries whole rows per warp with the fewest instructions it can, two
 * tiles a block on weights a producer warpgroup streams. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "gpu/fast.cuh"
#include "gpu/sm90.cuh"

namespace {

constexpr int WARPS = 4, THREADS = 32 * WARPS, ROWS = 16 * WARPS, MAXK = 64;
/* the wgmma way's ring of weight chunks (a chunk: N <= 96 rows of K =
 * 128), after WG_HEAD bytes for its barriers; 2 buffers, so that 3 blocks
 * (72 KB of shared memory each) fit on an SM */
constexpr int WG_NBUF = 2, WG_CHUNK = 96 * 128;
constexpr size_t WG_HEAD = 128;
/* Candidate blocks per SM that the registers are capped for: 3 where the
 * shared memory lets 3 in (d_model <= 128: 66 KB a block); measured on an
 * H200, student B=512 1.60-1.69 ms against 1.87-1.96 ms at 2, despite 48
 * bytes of spills (bench/NOTES.md). The teacher's 130 KB admit one. */
template <int D> constexpr int cand_blocks() { return D <= 128 ? 3 : 1; }
/* Below this many candidate blocks (about one an SM) the uncapped build's
 * lone warps are faster: student B=1 138-140 against 145 us. make
 * test-gpu's int8 big case (128 tiles) runs the capped kernel, its golden
 * and scorer cases the other. */
constexpr int FEW_TILES = 128;
/* Student-width batches of fewer candidate tiles than this take the split
 * way (split_kernel); the teacher's take it at every size. Measured on an
 * H200 since the split way's large grids run capped (bench/NOTES.md), 512
 * candidates a user: B=48 (384 tiles) 174 us split against 191 wgmma, B=64
 * (512 tiles) 208 against 240, B=96 (768 tiles) 320 against 298; so the
 * line is between 512 and 768 tiles, here half way. Teacher split 1.3-3.1x
 * faster than rows at every B from 1 to 512. */
constexpr int SPLIT_TILES = 640;
static_assert(ROWS == GP_TILE, "a candidate tile is one block");
static_assert(MAXK == ROWS, "a history is one block");

/* ---- the model in the fast layouts ---------------------------------------------------- */

struct FLayer {
    const uint4 *qkv, *out, *up, *down; /* fragment order, input columns permuted */
    const float *qkv_s, *qkv_b;         /* [3d] in head order: per head q, k, v */
    const float *out_s, *out_b, *up_s, *up_b, *down_s, *down_b;
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
};

struct FW {
    FLayer L[LM_MAX_LAYERS];
    int n_layers, f, max_hist, dp;
    const int8_t *item_q;
    const float *item_scale, *action_emb, *pos_emb, *lnf_w, *lnf_b, *head_w;
    float head_b;
    /* the wgmma way (d_model 128, sm_90a): every product's weights as chunks
     * in wgmma's shared-memory layout, in the order the kernel uses them;
     * chunk s is bytes stream_off[s] .. stream_off[s + 1] of stream */
    const uint8_t *stream;
    const uint32_t *stream_off;
    int n_chunks;
    /* the wide way (split_kernel's WIDE blocks, sm_90a): n_wide chunks
     * of WIDE_CHUNK bytes, in the order the kernel takes them (wide_plan) */
    const uint8_t *wide;
    int n_wide;
    /* the lean way (lean_kernel, sm_90a): n_lean chunks, chunk k bytes
     * lean_off[k] .. lean_off[k + 1] of lean (stream_plan); every layer's
     * vectors, LCfg::vec_bytes each */
    const uint8_t *lean;
    const uint32_t *lean_off;
    int n_lean;
    const float4 *lean_vec;
};

template <int D, int DH> struct Cfg {
    static constexpr int H = D / DH;     /* heads */
    static constexpr int NT = D / 8;     /* n8 tiles of a row */
    static constexpr int KS = D / 32;    /* int8 k-steps of a row */
    static constexpr int HNT = DH / 8;   /* n8 tiles of a head */
    static constexpr int QK = DH / 16;   /* fp16 k-steps of a head */
    static constexpr int LDK = DH + 8;   /* halves per key row: ldmatrix rows on distinct banks */
    static constexpr size_t kv_bytes = (size_t)2 * H * MAXK * LDK * 2;
    static constexpr size_t xs_bytes = (size_t)NT * 32 * 16; /* fp32 residual, accumulator layout */
    static constexpr size_t ov_bytes = (size_t)NT * 32 * 8;  /* fp16 v_self, then O */
    static constexpr size_t qs_bytes = (size_t)H * QK * 32 * 16;
    static constexpr size_t ss_bytes = (size_t)H * 32 * 8; /* self scores, rows g and g + 8 */
    static constexpr size_t warp_bytes = xs_bytes + ov_bytes + qs_bytes + ss_bytes;
    static constexpr size_t hist_smem = kv_bytes + WARPS * warp_bytes; /* history: keys, values, warps */
    static constexpr size_t cand_smem = WARPS * warp_bytes; /* candidates read the cache from global memory */
    static_assert(D % 64 == 0 && DH % 16 == 0 && D % DH == 0, "fast-path shape");
};

/* ---- instructions ------------------------------------------------------------------------- */

__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_f16(float (&c)[4], const uint4 &a, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint4 ldsm_x4(const void *p, bool trans)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    uint4 r;
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                     : "r"(s));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                     : "r"(s));
    return r;
}


__device__ __forceinline__ uint32_t h2u(float a, float b)
{
    __half2 h = __floats2half2_rn(a, b);
    return *(uint32_t *)&h;
}

__device__ __forceinline__ float2 u2f(uint32_t u)
{
    __half2 h = *(__half2 *)&u;
    return __half22float2(h);
}

/* 2^x by the hardware (2^-inf = 0), as softmax needs it */
__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* ---- int8 rows in the accumulator layout ------------------------------------------------ */

/* lm_quantize_row_ref's rule for a row whose |max| is amax: the factor v is
 * multiplied by and the row's scale. */
struct Quant {
    float mul, scale;
};

__device__ __forceinline__ Quant quant_of(float amax)
{
    const float boost = amax < 0x1p-100f ? 0x1p100f : 1.0f;
    Quant q;
    q.mul = amax != 0.0f ? boost * (127.0f / (amax * boost)) : 0.0f;
    q.scale = amax == 0.0f ? 0.0f : amax / 127.0f;
    return q;
}

__device__ __forceinline__ uint32_t q8x4(float a, float b, float c, float d, float mul)
{
    int r0, r1, r2, r3;
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r0) : "f"(a * mul));
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r1) : "f"(b * mul));
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r2) : "f"(c * mul));
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r3) : "f"(d * mul));
    return (uint32_t)(r0 & 0xff) | (uint32_t)(r1 & 0xff) << 8 | (uint32_t)(r2 & 0xff) << 16 | (uint32_t)r3 << 24;
}

/* the same for |v mul| <= 127 (the lean way): v mul + 1.5 x 2^23 is
 * rounded to an integer (ties to even, on the product unrounded) in one
 * fma, whose low byte is then the int8 */
__device__ __forceinline__ uint32_t q8m(float a, float b, float c, float d, float mul)
{
    const float M = 12582912.0f;
    const uint32_t ua = __float_as_uint(fmaf(a, mul, M)), ub = __float_as_uint(fmaf(b, mul, M));
    const uint32_t uc = __float_as_uint(fmaf(c, mul, M)), ud = __float_as_uint(fmaf(d, mul, M));
    return __byte_perm(__byte_perm(ua, ub, 0x0040), __byte_perm(uc, ud, 0x0040), 0x5410);
}

/* The A fragment of k-step ks from accumulator-layout values v of n8 tiles
 * 4ks..4ks+3 (x, y: row g; z, w: row g + 8), in pi order; FMA: rounded by
 * q8m rather than q8x4. */
template <bool FMA> __device__ __forceinline__ uint32_t q8(float a, float b, float c, float d, float mul)
{
    if constexpr (FMA)
        return q8m(a, b, c, d, mul);
    else
        return q8x4(a, b, c, d, mul);
}

template <bool FMA = false>
__device__ __forceinline__ void afrag(uint32_t (&a)[4], const float4 &v0, const float4 &v1, const float4 &v2,
                                      const float4 &v3, float m0, float m1)
{
    a[0] = q8<FMA>(v0.x, v0.y, v1.x, v1.y, m0);
    a[1] = q8<FMA>(v0.z, v0.w, v1.z, v1.w, m1);
    a[2] = q8<FMA>(v2.x, v2.y, v3.x, v3.y, m0);
    a[3] = q8<FMA>(v2.z, v2.w, v3.z, v3.w, m1);
}

/* acc[j] += A . W^T for n8 tiles nt0 + j of W (fragment order, kpt k-pairs
 * per tile), over KSL k-steps from k-pair kp0. Two tiles at a time, their
 * MMAs alternating, so that no MMA waits on the one before it (int32 sums:
 * the order changes no bit). */
template <int NTL, int KSL>
__device__ __forceinline__ void mma_tiles(int (&acc)[NTL][4], const uint32_t (&a)[KSL][4], const uint4 *__restrict__ W,
                                          int kpt, int nt0, int kp0)
{
    static_assert(KSL % 2 == 0 && NTL % 2 == 0, "k-steps and tiles come in pairs");
    const uint4 *w = W + ((size_t)nt0 * kpt + kp0) * 32 + (threadIdx.x & 31);
    const size_t ts = (size_t)kpt * 32; /* from one n8 tile to the next */
#pragma unroll
    for (int j = 0; j < NTL; j += 2) {
#pragma unroll
        for (int p = 0; p < KSL / 2; p++) {
            const uint4 b0 = __ldg(w + j * ts + p * 32), b1 = __ldg(w + (j + 1) * ts + p * 32);
            mma_s8(acc[j], a[2 * p], b0.x, b0.y);
            mma_s8(acc[j + 1], a[2 * p], b1.x, b1.y);
            mma_s8(acc[j], a[2 * p + 1], b0.z, b0.w);
            mma_s8(acc[j + 1], a[2 * p + 1], b1.z, b1.w);
        }
    }
}

/* ---- the wgmma way: weights streamed through shared memory ------------------------------------ */

/* In the wgmma way (d_model 128 on sm_90a, candidates) the block's 4 warps
 * are one warpgroup: each product is m64nNk32 wgmma over the block's 64
 * rows, A from each warp's registers as above, B from a ring of WG_NBUF
 * shared-memory buffers that the copy engine fills with the stream's
 * chunks in order (FW::stream). Thread 0 loads chunk s + WG_NBUF - 1 just
 * before the block uses chunk s, into the buffer that chunk s - 1 used,
 * once every thread has arrived on that buffer's empty barrier. So one
 * copy of the weights serves 64 rows, with no load instruction per MMA. */
struct Ring {
    uint8_t *buf;          /* WG_NBUF x WG_CHUNK */
    uint64_t *full, *empty; /* [WG_NBUF] each */
    const uint8_t *src;
    const uint32_t *off;
    int s, n;

    __device__ __forceinline__ void load(int c)
    {
        const int bi = c % WG_NBUF;
        const uint32_t o = __ldg(&off[c]);
        gp_bulk_load(buf + bi * WG_CHUNK, src + o, __ldg(&off[c + 1]) - o, &full[bi]);
    }
    /* thread 0 of the block, after the barriers' initialisation */
    __device__ __forceinline__ void start()
    {
        for (int c = 0; c < WG_NBUF - 1 && c < n; c++)
            load(c);
    }
    /* acc = A . B^T for the next chunk, B of N rows and K = 32 KSL */
    template <int N, int KSL> __device__ __forceinline__ void next(int (&acc)[N / 8][4], const uint32_t (&a)[KSL][4])
    {
        static_assert(N * KSL * 32 <= WG_CHUNK, "a chunk fits its buffer");
        const int c = s + WG_NBUF - 1;
        if (threadIdx.x == 0 && c < n) {
            if (s > 0) /* the buffer of chunk s - 1: every thread done with it */
                gp_mbar_wait(&empty[(s - 1) % WG_NBUF], (unsigned)((s - 1) / WG_NBUF) & 1);
            load(c);
        }
        const int bi = s % WG_NBUF;
        gp_mbar_wait(&full[bi], (unsigned)(s / WG_NBUF) & 1);
        const uint8_t *b = buf + bi * WG_CHUNK;
        gp_wg_fence();
#pragma unroll
        for (int ks = 0; ks < KSL; ks++)
            gp_wgmma_s8<N>(acc, a[ks], gp_desc(b + ks * N * 32), ks > 0);
        gp_wg_commit();
        gp_wg_wait0();
        gp_mbar_arrive(&empty[bi]);
        s++;
    }
};

template <int N> __device__ __forceinline__ void zero(int (&acc)[N][4])
{
#pragma unroll
    for (int j = 0; j < N; j++)
        acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
}

/* acc += A . W^T, one product of the rows way: from the stream (WG) or by
 * mma.sync with fragments from global memory (mma_tiles' arguments). */
template <bool WG, int NTL, int KSL>
__device__ __forceinline__ void product(int (&acc)[NTL][4], const uint32_t (&a)[KSL][4], const uint4 *__restrict__ W,
                                        int kpt, int nt0, int kp0, Ring &r)
{
    if constexpr (WG && NTL == 16) { /* two chunks of 64 columns */
        r.next<64, KSL>(*reinterpret_cast<int(*)[8][4]>(&acc[0]), a);
        r.next<64, KSL>(*reinterpret_cast<int(*)[8][4]>(&acc[8]), a);
    } else if constexpr (WG)
        r.next<8 * NTL, KSL>(acc, a);
    else
        mma_tiles<NTL, KSL>(acc, a, W, kpt, nt0, kp0);
}

/* (float)sum * (s_row * s_col) + bias for tile j's four accumulators;
 * s, b: the column pair's scales and biases. */
__device__ __forceinline__ float4 deq(const int (&c)[4], float r0, float r1, float2 s, float2 b)
{
    return make_float4((float)c[0] * (r0 * s.x) + b.x, (float)c[1] * (r0 * s.y) + b.y, (float)c[2] * (r1 * s.x) + b.x,
                       (float)c[3] * (r1 * s.y) + b.y);
}

/* the same, v: the column pair's {s, s', b, b'} (the lean way's vectors) */
__device__ __forceinline__ float4 deq(const int (&c)[4], float r0, float r1, const float4 &v)
{
    return deq(c, r0, r1, make_float2(v.x, v.y), make_float2(v.z, v.w));
}

__device__ __forceinline__ float2 ldg2(const float *p) { return __ldg((const float2 *)p); }

/* ---- LayerNorm of the warp's rows ----------------------------------------------------------- */

struct Moments {
    float m0, r0, m1, r1; /* mean and 1/std of rows g and g + 8 */
};

template <int NT> __device__ __forceinline__ Moments moments(const float4 *xs)
{
    const int lane = threadIdx.x & 31;
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const float4 v = xs[j * 32 + lane];
        s0 += v.x + v.y;
        s1 += v.z + v.w;
    }
    Moments mo;
    mo.m0 = gp_quad_sum(s0) * (1.0f / (8 * NT));
    mo.m1 = gp_quad_sum(s1) * (1.0f / (8 * NT));
    float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const float4 v = xs[j * 32 + lane];
        v0 += (v.x - mo.m0) * (v.x - mo.m0) + (v.y - mo.m0) * (v.y - mo.m0);
        v1 += (v.z - mo.m1) * (v.z - mo.m1) + (v.w - mo.m1) * (v.w - mo.m1);
    }
    mo.r0 = 1.0f / sqrtf(gp_quad_sum(v0) * (1.0f / (8 * NT)) + 1e-5f);
    mo.r1 = 1.0f / sqrtf(gp_quad_sum(v1) * (1.0f / (8 * NT)) + 1e-5f);
    return mo;
}

template <int NT>
__device__ __forceinline__ float4 ln_at(const float4 *xs, const Moments &mo, const float *w, const float *b, int j)
{
    const int lane = threadIdx.x & 31;
    const float4 v = xs[j * 32 + lane];
    const int c = j * 8 + (lane & 3) * 2;
    const float2 ww = ldg2(w + c), bb = ldg2(b + c);
    return make_float4((v.x - mo.m0) * mo.r0 * ww.x + bb.x, (v.y - mo.m0) * mo.r0 * ww.y + bb.y,
                       (v.z - mo.m1) * mo.r1 * ww.x + bb.x, (v.w - mo.m1) * mo.r1 * ww.y + bb.y);
}

/* A fragments of LN(x) for the warp's rows; sr: the two rows' scales. */
template <int D>
__device__ __forceinline__ void ln_quant(const float4 *xs, const float *w, const float *b, uint32_t (&a)[D / 32][4],
                                         float &sr0, float &sr1)
{
    constexpr int NT = D / 8;
    const Moments mo = moments<NT>(xs);
    float am0 = 0.0f, am1 = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const float4 y = ln_at<NT>(xs, mo, w, b, j);
        am0 = fmaxf(am0, fmaxf(fabsf(y.x), fabsf(y.y)));
        am1 = fmaxf(am1, fmaxf(fabsf(y.z), fabsf(y.w)));
    }
    const Quant q0 = quant_of(gp_quad_max(am0)), q1 = quant_of(gp_quad_max(am1));
    sr0 = q0.scale;
    sr1 = q1.scale;
#pragma unroll
    for (int ks = 0; ks < D / 32; ks++)
        afrag(a[ks], ln_at<NT>(xs, mo, w, b, 4 * ks), ln_at<NT>(xs, mo, w, b, 4 * ks + 1),
              ln_at<NT>(xs, mo, w, b, 4 * ks + 2), ln_at<NT>(xs, mo, w, b, 4 * ks + 3), q0.mul, q1.mul);
}

/* ---- the FFN's hidden layer, in packed half2 ------------------------------------------------ */

/* Two floats as a half2, saturated to +-65504 (an infinity would turn the
 * GELU below into a NaN). */
__device__ __forceinline__ uint32_t h2sat(float lo, float hi)
{
    uint32_t u;
    asm("cvt.rn.satfinite.f16x2.f32 %0, %1, %2;" : "=r"(u) : "f"(hi), "f"(lo));
    return u;
}

__device__ __forceinline__ uint32_t tanh2(uint32_t u)
{
    uint32_t t;
    asm("tanh.approx.f16x2 %0, %1;" : "=r"(t) : "r"(u));
    return t;
}

/* gelu_tanh of two halves: y (0.5 + 0.5 tanh(y (c0 + c1 y^2))). Past
 * |y| = 256, y^2 is infinite and tanh +-1, which is still the limit. */
__device__ __forceinline__ __half2 gelu2(uint32_t yu)
{
    const __half2 y = *(const __half2 *)&yu;
    const __half2 p = __hfma2(__hmul2(y, y), __float2half2_rn(0.7978845608028654f * 0.044715f),
                              __float2half2_rn(0.7978845608028654f));
    const __half2 yp = __hmul2(y, p);
    const uint32_t th = tanh2(*(const uint32_t *)&yp);
    const __half2 half = __float2half2_rn(0.5f);
    return __hmul2(y, __hfma2(*(const __half2 *)&th, half, half));
}

/* The quantization of one row's hidden chunk whose |max| is amax, for
 * halves: v -> round(v mul) with mul = 127 / amax, as lm_quantize_row_ref,
 * but for mul in half (relative error 2^-11, so |v mul| <= 127.06 still
 * rounds into int8) and capped at 2^15, the largest power of two a half
 * holds (chunks under 127 / 2^15 in magnitude, which add next to nothing
 * to the down-projection, are quantized at that step). */
__device__ __forceinline__ Quant quant_of_half(float amax)
{
    Quant q;
    q.mul = amax == 0.0f ? 0.0f : fminf(127.0f / amax, 32768.0f);
    q.scale = amax == 0.0f ? 0.0f : q.mul == 32768.0f ? 1.0f / 32768.0f : amax / 127.0f;
    return q;
}

/* round(v mul) of two halves as int8 in the low byte of each half: v mul +
 * 1536 is an integer of [1408, 1664], where a half's step is 1, so the
 * fused rounding is to the nearest integer (ties to even, as cvt.rni), and
 * the low byte of 1536 + i is i as two's complement. */
__device__ __forceinline__ uint32_t q8h2(__half2 v, __half2 mul)
{
    const __half2 r = __hfma2(v, mul, __float2half2_rn(1536.0f));
    return *(const uint32_t *)&r;
}

/* The up-projection's epilogue for NTL n8 tiles of the FFN's hidden layer
 * (acc: the warp's 16 rows; s, bias: the tiles' column scales and biases;
 * r0, r1: rows g and g + 8's activation scales): dequantized in fp32 as
 * everywhere, then GELU in packed half2, into h [tile][row g, row g + 8];
 * the rows' |maxima| so far in am0, am1. By count some 40% fewer
 * instructions than in fp32 (the kernel's fell 8%, bench/NOTES.md). */
template <int NTL>
__device__ __forceinline__ void gelu_tiles(const int (&acc)[NTL][4], float r0, float r1, const float *__restrict__ s,
                                           const float *__restrict__ bias, __half2 (&h)[NTL][2], __half2 &am0,
                                           __half2 &am1)
{
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < NTL; j++) {
        const int c = j * 8 + t * 2;
        const float2 sc = __ldg((const float2 *)(s + c)), b = __ldg((const float2 *)(bias + c));
        h[j][0] = gelu2(h2sat((float)acc[j][0] * (r0 * sc.x) + b.x, (float)acc[j][1] * (r0 * sc.y) + b.y));
        h[j][1] = gelu2(h2sat((float)acc[j][2] * (r1 * sc.x) + b.x, (float)acc[j][3] * (r1 * sc.y) + b.y));
        am0 = __hmax2(am0, __habs2(h[j][0]));
        am1 = __hmax2(am1, __habs2(h[j][1]));
    }
}

/* One A-fragment word (pi order, as afrag) from a row's halves of two
 * adjacent n8 tiles, quantized by mul. */
__device__ __forceinline__ uint32_t q8w(__half2 lo, __half2 hi, __half2 mul)
{
    return __byte_perm(q8h2(lo, mul), q8h2(hi, mul), 0x6420);
}

/* The rows way's hidden layer, one 128-column chunk at a time (acc: its 16
 * n8 tiles), quantized per row and chunk: out, the down-projection's A
 * fragments of the chunk's 4 k-steps and the rows' scales. */
__device__ __forceinline__ void hidden_chunk(const int (&acc)[16][4], float r0, float r1, const float *__restrict__ s,
                                             const float *__restrict__ bias, uint32_t (&a2)[4][4], float &sc0,
                                             float &sc1)
{
    __half2 h[16][2];
    __half2 am0 = __float2half2_rn(0.0f), am1 = am0;
    gelu_tiles<16>(acc, r0, r1, s, bias, h, am0, am1);
    const float2 m0 = __half22float2(am0), m1 = __half22float2(am1);
    const Quant q0 = quant_of_half(gp_quad_max(fmaxf(m0.x, m0.y))), q1 = quant_of_half(gp_quad_max(fmaxf(m1.x, m1.y)));
    const __half2 mul0 = __float2half2_rn(q0.mul), mul1 = __float2half2_rn(q1.mul);
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
        a2[ks][0] = q8w(h[4 * ks][0], h[4 * ks + 1][0], mul0);
        a2[ks][1] = q8w(h[4 * ks][1], h[4 * ks + 1][1], mul1);
        a2[ks][2] = q8w(h[4 * ks + 2][0], h[4 * ks + 3][0], mul0);
        a2[ks][3] = q8w(h[4 * ks + 2][1], h[4 * ks + 3][1], mul1);
    }
    sc0 = q0.scale;
    sc1 = q1.scale;
}

/* ---- the kernel: one layer at a time for 64 rows ------------------------------------------------ */

/* The key/value cache of user b, layer l (2 x MAXK x D halves), in the
 * B-fragment order of the candidates' two attention products, so that a
 * lane loads its fragment straight from global memory: keys [H][MAXK / 8
 * n8 tiles][QK][32 lanes], then values [H][MAXK / 16 key blocks][HNT][32
 * lanes], each entry the two registers (uint2) of one fragment. */
template <int D> __device__ __forceinline__ size_t kv_off(int b, int n_layers, int l)
{
    return ((size_t)b * n_layers + l) * 2 * MAXK * D;
}
/* one such layer's bytes, what a candidate block copies into shared memory */
template <int D> constexpr size_t kv_layer_bytes = (size_t)2 * MAXK * D * sizeof(__half);

template <int D, int DH> struct KvFrag {
    static constexpr int H = D / DH, QK = DH / 16, HNT = DH / 8;
    static __device__ __forceinline__ size_t k(int h, int nt, int kk, int lane)
    {
        return ((size_t)(h * (MAXK / 8) + nt) * QK + kk) * 32 + lane;
    }
    static __device__ __forceinline__ size_t v(int h, int kb, int nd, int lane)
    {
        return (size_t)H * (MAXK / 8) * QK * 32 + ((size_t)(h * (MAXK / 16) + kb) * HNT + nd) * 32 + lane;
    }
};

/* Keys and values kr0 .. kr0 + nkr - 1 (multiples of 16) of heads h0 ..
 * h0 + nh - 1, in shared memory (Ks, Vs: row key - kr0 of head h0 + i at
 * i * hs halves, LDK apart), to the cache kvl in the candidates' fragment
 * order, by threads tid of nthr. */
template <int D, int DH>
__device__ __forceinline__ void store_kv(const __half *Ks, const __half *Vs, size_t hs, int kr0, int nkr,
                                         __half *kvl, int h0, int nh, int tid, int nthr)
{
    using F = KvFrag<D, DH>;
    constexpr int QK = DH / 16, HNT = DH / 8, LDK = DH + 8;
    const int nnt = nkr / 8, nkb = nkr / 16;
    /* keys ... */
    for (int i = tid; i < nh * nnt * QK * 32; i += nthr) {
        const int ln = i % 32, kk = i / 32 % QK, nt = i / 32 / QK % nnt, h = i / 32 / QK / nnt;
        const __half *k = Ks + h * hs + (size_t)(nt * 8 + (ln >> 2)) * LDK + kk * 16 + (ln & 3) * 2;
        ((uint2 *)kvl)[F::k(h0 + h, kr0 / 8 + nt, kk, ln)] =
            make_uint2(*(const uint32_t *)k, *(const uint32_t *)(k + 8));
    }
    /* ... and values: keys 2t, 2t + 1 (+ 8) of dimension g */
    for (int i = tid; i < nh * nkb * HNT * 32; i += nthr) {
        const int ln = i % 32, nd = i / 32 % HNT, kb = i / 32 / HNT % nkb, h = i / 32 / HNT / nkb;
        const __half *v = Vs + h * hs + (size_t)(kb * 16 + (ln & 3) * 2) * LDK + nd * 8 + (ln >> 2);
        __half2 lo = __halves2half2(v[0], v[LDK]), hi = __halves2half2(v[8 * LDK], v[9 * LDK]);
        ((uint2 *)kvl)[F::v(h0 + h, kr0 / 16 + kb, nd, ln)] = make_uint2(*(uint32_t *)&lo, *(uint32_t *)&hi);
    }
}

/* A fragment of the cache: a coherent load, as the history kernel may be
 * writing the cache while its reader runs (ordered by a barrier or a flag
 * with acquire semantics), so never the non-coherent path. */
__device__ __forceinline__ uint2 ld_kv(const uint2 *p)
{
    uint2 v;
    asm volatile("ld.global.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p) : "memory");
    return v;
}

/* A call's two kernels run at once (programmatic dependent launch, sm_90;
 * both ways): the history kernel lets the candidate kernel start as soon
 * as every history block has started, and each layer, once its block (the
 * split way: its cluster) has written that layer's keys and values,
 * publishes flags[user] = gen << 8 | layers done (release, device scope;
 * gen is the call's serial number, *bt.call, so flags need no reset). A
 * candidate waits for its user's flag (acquire) only where it first needs
 * the cache, before attention, so its embeddings and q, k, v overlap the
 * history's work, and reads the cache coherently. No deadlock: candidates
 * start only once every history block is resident, and history blocks
 * never wait for candidates (before sm_90, or under a tool that serializes
 * kernels, the flags are set before any candidate runs). A candidate block
 * ends by waiting for the history grid (griddepcontrol.wait), so the
 * copy of the user vectors after the candidate kernel sees them. */
__device__ __forceinline__ void pdl_launch_dependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait_primary()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void flag_publish(unsigned long long *p, unsigned long long v)
{
    asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ bool flag_ready(const unsigned long long *p, unsigned long long want)
{
    unsigned long long v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return (long long)(v - want) >= 0;
}

__device__ __forceinline__ void flag_wait(const unsigned long long *p, unsigned long long want)
{
    while (!flag_ready(p, want))
        __nanosleep(100);
}

/* One head's attention for the warp's 16 rows, the FlashAttention-2 way on
 * fp16 tensor cores, S and P in registers: S = q K^T over nkb blocks of 16
 * keys (HIST: causal; else keys < L plus the row's own key, whose score is
 * ss and whose value the caller adds with weight ps), softmax in log2 units
 * (sl2), o = P V unnormalized; i: 1 / the softmax's sums. SMEM: the keys
 * and values in shared memory, Kh and Vh [MAXK][LDK]; else the cache kvf in
 * fragment order (ld_kv). */
struct Attn {
    float ps0, ps1, i0, i1; /* rows g and g + 8 */
};

template <int D, int DH, bool HIST, bool SMEM, bool SKV = false>
__device__ __forceinline__ Attn attend(const uint4 (&qf)[DH / 16], float2 ss, const __half *Kh, const __half *Vh,
                                       const uint2 *kvf, int h, int nkb, int L, int tok0, int tok1, float sl2,
                                       float (&o)[DH / 8][4])
{
    using F = KvFrag<D, DH>;
    constexpr int QK = DH / 16, HNT = DH / 8, LDK = DH + 8;
    const int lane = threadIdx.x & 31, t = lane & 3;
    Attn at;
    float s[8][4];
    const int mat = lane >> 3, mr = lane & 7;
#pragma unroll
    for (int kb = 0; kb < 4; kb++) {
        s[2 * kb][0] = s[2 * kb][1] = s[2 * kb][2] = s[2 * kb][3] = 0.0f;
        s[2 * kb + 1][0] = s[2 * kb + 1][1] = s[2 * kb + 1][2] = s[2 * kb + 1][3] = 0.0f;
        if (kb < nkb)
#pragma unroll
            for (int kk = 0; kk < QK; kk++) {
                uint4 bk;
                if (SMEM) {
                    bk = ldsm_x4(Kh + (size_t)(kb * 16 + (mat >> 1) * 8 + mr) * LDK + kk * 16 + (mat & 1) * 8,
                                 false);
                } else {
                    const uint2 k0 = SKV ? kvf[F::k(h, 2 * kb, kk, lane)] : ld_kv(&kvf[F::k(h, 2 * kb, kk, lane)]);
                    const uint2 k1 =
                        SKV ? kvf[F::k(h, 2 * kb + 1, kk, lane)] : ld_kv(&kvf[F::k(h, 2 * kb + 1, kk, lane)]);
                    bk = make_uint4(k0.x, k0.y, k1.x, k1.y);
                }
                mma_f16(s[2 * kb], qf[kk], bk.x, bk.y);
                mma_f16(s[2 * kb + 1], qf[kk], bk.z, bk.w);
            }
    }
    float mx0 = HIST ? -INFINITY : ss.x, mx1 = HIST ? -INFINITY : ss.y;
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = j * 8 + t * 2 + (e & 1), tok = e < 2 ? tok0 : tok1;
            const bool ok = j < 2 * nkb && (HIST ? key <= tok : key < L);
            s[j][e] = ok ? s[j][e] : -INFINITY;
            if (e < 2)
                mx0 = fmaxf(mx0, s[j][e]);
            else
                mx1 = fmaxf(mx1, s[j][e]);
        }
    mx0 = gp_quad_max(mx0);
    mx1 = gp_quad_max(mx1);
    float l0 = 0.0f, l1 = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s[j][0] = ex2((s[j][0] - mx0) * sl2);
        s[j][1] = ex2((s[j][1] - mx0) * sl2);
        s[j][2] = ex2((s[j][2] - mx1) * sl2);
        s[j][3] = ex2((s[j][3] - mx1) * sl2);
        l0 += s[j][0] + s[j][1];
        l1 += s[j][2] + s[j][3];
    }
    at.ps0 = HIST ? 0.0f : ex2((ss.x - mx0) * sl2);
    at.ps1 = HIST ? 0.0f : ex2((ss.y - mx1) * sl2);
    at.i0 = 1.0f / (gp_quad_sum(l0) + at.ps0);
    at.i1 = 1.0f / (gp_quad_sum(l1) + at.ps1);
#pragma unroll
    for (int j = 0; j < HNT; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
#pragma unroll
    for (int kb = 0; kb < 4; kb++)
        if (kb < nkb) {
            const uint4 pf = make_uint4(h2u(s[2 * kb][0], s[2 * kb][1]), h2u(s[2 * kb][2], s[2 * kb][3]),
                                        h2u(s[2 * kb + 1][0], s[2 * kb + 1][1]),
                                        h2u(s[2 * kb + 1][2], s[2 * kb + 1][3]));
#pragma unroll
            for (int np = 0; np < HNT / 2; np++) {
                uint4 bv;
                if (SMEM) {
                    bv = ldsm_x4(Vh + (size_t)(kb * 16 + (mat & 1) * 8 + mr) * LDK + np * 16 + (mat >> 1) * 8,
                                 true);
                } else {
                    const uint2 v0 = SKV ? kvf[F::v(h, kb, 2 * np, lane)] : ld_kv(&kvf[F::v(h, kb, 2 * np, lane)]);
                    const uint2 v1 =
                        SKV ? kvf[F::v(h, kb, 2 * np + 1, lane)] : ld_kv(&kvf[F::v(h, kb, 2 * np + 1, lane)]);
                    bv = make_uint4(v0.x, v0.y, v1.x, v1.y);
                }
                mma_f16(o[2 * np], pf, bv.x, bv.y);
                mma_f16(o[2 * np + 1], pf, bv.z, bv.w);
            }
        }
    return at;
}

/* The embeddings of rows tok0 and tok1 (HIST: history events of user b,
 * L of them; else candidates first + tok of rows), a column pair at a time
 * in the accumulator layout: at(col) = rows tok0 (x, y) and tok1 (z, w). */
template <int D, bool HIST> struct Emb {
    const int8_t *q0, *q1;
    const float *add0a, *add0b, *add1a, *add1b;
    float s0, s1;
    bool z0, z1; /* rows past the history: zero */
    __device__ __forceinline__ Emb(const FW *fw, const gp_batch &bt, int b, int L, int first, int rows, int tok0,
                                   int tok1)
    {
        int it0, it1;
        add1a = add1b = NULL;
        if (HIST) {
            const int32_t *items = bt.hist_items + (size_t)b * fw->max_hist;
            const int32_t *acts = bt.hist_actions + (size_t)b * fw->max_hist;
            it0 = tok0 < L ? items[tok0] : -1;
            it1 = tok1 < L ? items[tok1] : -1;
            add0a = fw->action_emb + (size_t)(tok0 < L ? acts[tok0] : 0) * D;
            add0b = fw->action_emb + (size_t)(tok1 < L ? acts[tok1] : 0) * D;
            add1a = fw->pos_emb + (size_t)(tok0 < L ? L - tok0 : 0) * D;
            add1b = fw->pos_emb + (size_t)(tok1 < L ? L - tok1 : 0) * D;
        } else {
            it0 = tok0 < rows ? bt.cands[first + tok0] : 0;
            it1 = tok1 < rows ? bt.cands[first + tok1] : 0;
            add0a = add0b = fw->pos_emb;
        }
        q0 = fw->item_q + (size_t)(it0 < 0 ? 0 : it0) * fw->dp;
        q1 = fw->item_q + (size_t)(it1 < 0 ? 0 : it1) * fw->dp;
        s0 = it0 < 0 ? 0.0f : __ldg(&fw->item_scale[it0]);
        s1 = it1 < 0 ? 0.0f : __ldg(&fw->item_scale[it1]);
        z0 = it0 < 0;
        z1 = it1 < 0;
    }
    __device__ __forceinline__ float4 at(int col) const
    {
        const char2 e0 = __ldg((const char2 *)&q0[col]), e1 = __ldg((const char2 *)&q1[col]);
        float2 a0 = ldg2(add0a + col), a1 = ldg2(add0b + col);
        if (HIST) {
            const float2 p0 = ldg2(add1a + col), p1 = ldg2(add1b + col);
            a0.x += p0.x, a0.y += p0.y, a1.x += p1.x, a1.y += p1.y;
        }
        float4 v = make_float4((float)e0.x * s0 + a0.x, (float)e0.y * s0 + a0.y, (float)e1.x * s1 + a1.x,
                               (float)e1.y * s1 + a1.y);
        if (z0)
            v.x = v.y = 0.0f;
        if (z1)
            v.z = v.w = 0.0f;
        return v;
    }
};

/* What a tile's rows answer, from the residual xs (this warp's slots in the
 * accumulator layout; rows tok0, tok1): HIST, the user vector LN_f(x) of
 * the newest event L - 1, by the quad that holds it; else the scores
 * head . LN_f(x) + head_b of the rows under rows. Every lane of the warp
 * takes part (the LayerNorm's shuffles). */
template <int D, bool HIST>
__device__ __forceinline__ void rows_out(const FW *fw, const gp_batch &bt, const float4 *xs, int b, int L, int first,
                                         int rows, int tok0, int tok1)
{
    constexpr int NT = D / 8;
    const int t = threadIdx.x & 3;
    const Moments mo = moments<NT>(xs);
    if (HIST) {
        if (tok0 != L - 1 && tok1 != L - 1)
            return;
#pragma unroll 4
        for (int j = 0; j < NT; j++) {
            const float4 y = ln_at<NT>(xs, mo, fw->lnf_w, fw->lnf_b, j);
            *(float2 *)&bt.user_vec[(size_t)b * D + j * 8 + t * 2] =
                tok0 == L - 1 ? make_float2(y.x, y.y) : make_float2(y.z, y.w);
        }
        return;
    }
    float d0 = 0.0f, d1 = 0.0f;
#pragma unroll 4
    for (int j = 0; j < NT; j++) {
        const float4 y = ln_at<NT>(xs, mo, fw->lnf_w, fw->lnf_b, j);
        const float2 hw = ldg2(fw->head_w + j * 8 + t * 2);
        d0 += y.x * hw.x + y.y * hw.y;
        d1 += y.z * hw.x + y.w * hw.y;
    }
    d0 = gp_quad_sum(d0);
    d1 = gp_quad_sum(d1);
    if (t == 0) {
        if (tok0 < rows)
            bt.scores[first + tok0] = d0 + fw->head_b;
        if (tok1 < rows)
            bt.scores[first + tok1] = d1 + fw->head_b;
    }
}

/* HIST: one block per user, row r = history token r (causal attention,
 * keys and values written to the cache); else one block per tile of up to
 * 64 candidates of one user (attention to the cached history and self). */
template <int D, int DH, bool HIST, int MINB, bool WG = false>
__global__ void __launch_bounds__(THREADS, MINB)
    fast_kernel(const FW *__restrict__ fw, gp_batch bt, __half *kvc, unsigned long long *flags)
{
    static_assert(!WG || (!HIST && D == 128), "the wgmma way: candidates of d_model 128");
    using C = Cfg<D, DH>;
    constexpr int H = C::H, NT = C::NT, KS = C::KS, HNT = C::HNT, QK = C::QK, LDK = C::LDK;
    extern __shared__ __align__(16) uint8_t sm[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    __half *Ks = (__half *)sm;          /* [H][MAXK][LDK] */
    __half *Vs = Ks + H * MAXK * LDK;   /* [H][MAXK][LDK] */
    /* the wgmma way's warps keep no q or self scores in shared memory */
    constexpr size_t wb = WG ? C::xs_bytes + C::ov_bytes : C::warp_bytes;
    uint8_t *wp = sm + (HIST ? C::kv_bytes : 0) + (WG ? WG_HEAD + WG_NBUF * WG_CHUNK : 0) + warp * wb;
    float4 *xs = (float4 *)wp;                           /* [NT][32] */
    uint2 *ov = (uint2 *)(wp + C::xs_bytes);             /* [NT][32] */
    uint4 *qs = (uint4 *)(wp + C::xs_bytes + C::ov_bytes); /* [H][QK][32] */
    float2 *ssm = (float2 *)(wp + C::xs_bytes + C::ov_bytes + C::qs_bytes); /* [H][32] */

    int b, first = 0, rows;
    if (HIST) {
        pdl_launch_dependents();
        b = blockIdx.x;
        rows = bt.n_hist[b];
    } else {
        const int4 tile = bt.tiles[blockIdx.x];
        b = tile.x;
        first = tile.y;
        rows = tile.z;
    }
    const int L = bt.n_hist[b], nl = fw->n_layers;
    if (HIST && L == 0) { /* u = LN_f(0) = ln_f.bias */
        for (int i = threadIdx.x; i < D; i += THREADS)
            bt.user_vec[(size_t)b * D + i] = fw->lnf_b[i];
        return;
    }
    /* rows past the last are never read: skip them, but for the wgmma way's
     * products, which are the whole warpgroup's (Emb gives those rows item
     * 0, so that their arithmetic stays finite) */
    const bool live = WG || warp * 16 < rows;
    const int tok0 = warp * 16 + g, tok1 = tok0 + 8;
    const unsigned long long gen = *bt.call;
    Ring ring = {};
    if constexpr (WG) {
        ring.full = (uint64_t *)sm;
        ring.empty = ring.full + WG_NBUF;
        ring.buf = sm + WG_HEAD;
        ring.src = fw->stream;
        ring.off = fw->stream_off;
        ring.n = fw->n_chunks;
        if (threadIdx.x == 0) {
            for (int i = 0; i < WG_NBUF; i++) {
                gp_mbar_init(&ring.full[i], 1);
                gp_mbar_init(&ring.empty[i], THREADS);
            }
            gp_mbar_fence_init();
        }
        __syncthreads();
        if (threadIdx.x == 0)
            ring.start();
    }

    if (live) { /* embeddings, in the accumulator layout */
        const Emb<D, HIST> e(fw, bt, b, L, first, rows, tok0, tok1);
#pragma unroll 4
        for (int j = 0; j < NT; j++)
            xs[j * 32 + lane] = e.at(j * 8 + t * 2);
    }

    const float sl2 = 1.4426950408889634f / sqrtf((float)DH); /* attention scale, log2 units */
    for (int l = 0; l < nl; l++) {
        const FLayer &ly = fw->L[l];
        __half *kvl = kvc + kv_off<D>(b, nl, l);
        const int nkr = (L + 15) / 16 * 16; /* key rows in the cache that candidates read */
        const uint2 *kvf = (const uint2 *)kvl;
        uint32_t a[KS][4];
        float sr0 = 0.0f, sr1 = 0.0f;
        /* head h's q, k, v: q as fp16 A fragments (qf) and, for candidates,
         * the self score (ss) and v_self (ov); for the history, keys and
         * values into shared memory */
        auto qkv_head = [&](int h, uint4(&qf)[QK], float2 &ss) {
            int acc[3 * HNT][4];
            zero(acc);
            product<WG, 3 * HNT, KS>(acc, a, ly.qkv, KS / 2, h * 3 * HNT, 0, ring);
            float4 v[3 * HNT];
#pragma unroll
            for (int j = 0; j < 3 * HNT; j++) {
                const int c = h * 3 * DH + j * 8 + t * 2;
                v[j] = deq(acc[j], sr0, sr1, ldg2(ly.qkv_s + c), ldg2(ly.qkv_b + c));
            }
#pragma unroll
            for (int kk = 0; kk < QK; kk++)
                qf[kk] = make_uint4(h2u(v[2 * kk].x, v[2 * kk].y), h2u(v[2 * kk].z, v[2 * kk].w),
                                    h2u(v[2 * kk + 1].x, v[2 * kk + 1].y), h2u(v[2 * kk + 1].z, v[2 * kk + 1].w));
            if (HIST) {
#pragma unroll
                for (int j = 0; j < HNT; j++) {
                    const int c = j * 8 + t * 2;
                    const float4 k = v[HNT + j], vv = v[2 * HNT + j];
                    *(uint32_t *)&Ks[((size_t)h * MAXK + tok0) * LDK + c] = h2u(k.x, k.y);
                    *(uint32_t *)&Ks[((size_t)h * MAXK + tok1) * LDK + c] = h2u(k.z, k.w);
                    *(uint32_t *)&Vs[((size_t)h * MAXK + tok0) * LDK + c] = h2u(vv.x, vv.y);
                    *(uint32_t *)&Vs[((size_t)h * MAXK + tok1) * LDK + c] = h2u(vv.z, vv.w);
                }
                ss = make_float2(0.0f, 0.0f);
            } else {
                float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
                for (int j = 0; j < HNT; j++) {
                    const float4 q = v[j], k = v[HNT + j], vv = v[2 * HNT + j];
                    d0 += q.x * k.x + q.y * k.y;
                    d1 += q.z * k.z + q.w * k.w;
                    ov[(h * HNT + j) * 32 + lane] = make_uint2(h2u(vv.x, vv.y), h2u(vv.z, vv.w));
                }
                ss = make_float2(gp_quad_sum(d0), gp_quad_sum(d1));
            }
        };
        /* head h's attention output into ov */
        auto attend_head = [&](int h, const uint4(&qf)[QK], float2 ss) {
            const int nkb = HIST ? warp + 1 : nkr / 16; /* 16-key blocks to read */
            const __half *Kh = Ks + (size_t)h * MAXK * LDK, *Vh = Vs + (size_t)h * MAXK * LDK;
            float o[HNT][4];
            const Attn at = attend<D, DH, HIST, HIST>(qf, ss, Kh, Vh, kvf, h, nkb, L, tok0, tok1, sl2, o);
            const float ps0 = at.ps0, ps1 = at.ps1, i0 = at.i0, i1 = at.i1;
#pragma unroll
            for (int j = 0; j < HNT; j++) {
                float2 v0 = make_float2(0.0f, 0.0f), v1 = v0;
                if (!HIST) {
                    const uint2 u = ov[(h * HNT + j) * 32 + lane];
                    v0 = u2f(u.x);
                    v1 = u2f(u.y);
                }
                ov[(h * HNT + j) * 32 + lane] =
                    make_uint2(h2u((o[j][0] + ps0 * v0.x) * i0, (o[j][1] + ps0 * v0.y) * i0),
                               h2u((o[j][2] + ps1 * v1.x) * i1, (o[j][3] + ps1 * v1.y) * i1));
            }
        };
        if (live)
            ln_quant<D>(xs, ly.ln1_w, ly.ln1_b, a, sr0, sr1);
        if constexpr (WG) {
            /* the wgmma way: each head's attention straight after its q, k, v
             * (all warps live), so that q waits in registers, not in shared
             * memory; the first waits for the history's layer */
#pragma unroll 1
            for (int h = 0; h < H; h++) {
                uint4 qf[QK];
                float2 ss;
                qkv_head(h, qf, ss);
                if (h == 0 && L > 0)
                    flag_wait(&flags[b], gen << 8 | (unsigned)(l + 1));
                attend_head(h, qf, ss);
            }
        } else {
            if (live) /* phase A: q k v per head, q and the self scores to shared memory */
#pragma unroll 1
                for (int h = 0; h < H; h++) {
                    uint4 qf[QK];
                    float2 ss;
                    qkv_head(h, qf, ss);
#pragma unroll
                    for (int kk = 0; kk < QK; kk++)
                        qs[(h * QK + kk) * 32 + lane] = qf[kk];
                    ssm[h * 32 + lane] = ss;
                }
            if (HIST) {
                __syncthreads(); /* keys and values in shared memory */
                store_kv<D, DH>(Ks, Vs, (size_t)MAXK * LDK, 0, nkr, kvl, 0, H, threadIdx.x, THREADS);
            }
            if (!HIST && live && L > 0)
                flag_wait(&flags[b], gen << 8 | (unsigned)(l + 1));
            if (live) /* phase B: attention per head */
#pragma unroll 1
                for (int h = 0; h < H; h++) {
                    uint4 qf[QK];
#pragma unroll
                    for (int kk = 0; kk < QK; kk++)
                        qf[kk] = qs[(h * QK + kk) * 32 + lane];
                    attend_head(h, qf, ssm[h * 32 + lane]);
                }
        }
        if (live) {
            /* x += out(O) */
            {
                float am0 = 0.0f, am1 = 0.0f;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    const uint2 u = ov[j * 32 + lane];
                    const float2 p = u2f(u.x), q = u2f(u.y);
                    am0 = fmaxf(am0, fmaxf(fabsf(p.x), fabsf(p.y)));
                    am1 = fmaxf(am1, fmaxf(fabsf(q.x), fabsf(q.y)));
                }
                const Quant q0 = quant_of(gp_quad_max(am0)), q1 = quant_of(gp_quad_max(am1));
#pragma unroll
                for (int ks = 0; ks < KS; ks++) {
                    float4 v[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const uint2 u = ov[(4 * ks + i) * 32 + lane];
                        const float2 p = u2f(u.x), q = u2f(u.y);
                        v[i] = make_float4(p.x, p.y, q.x, q.y);
                    }
                    afrag(a[ks], v[0], v[1], v[2], v[3], q0.mul, q1.mul);
                }
#pragma unroll
                for (int ng = 0; ng < NT / 8; ng++) {
                    int acc[8][4];
                    zero(acc);
                    product<WG, 8, KS>(acc, a, ly.out, KS / 2, ng * 8, 0, ring);
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int c = (ng * 8 + j) * 8 + t * 2;
                        const float4 y = deq(acc[j], q0.scale, q1.scale, ldg2(ly.out_s + c), ldg2(ly.out_b + c));
                        float4 &x = xs[(ng * 8 + j) * 32 + lane];
                        x = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
                    }
                }
            }
            /* x += down(gelu(up(LN2(x)))), 128 hidden columns at a time */
            ln_quant<D>(xs, ly.ln2_w, ly.ln2_b, a, sr0, sr1);
#pragma unroll 1
            for (int c0 = 0; c0 < fw->f; c0 += 128) {
                int acc[16][4];
                zero(acc);
                product<WG, 16, KS>(acc, a, ly.up, KS / 2, c0 / 8, 0, ring);
                uint32_t a2[4][4];
                float hs0, hs1;
                hidden_chunk(acc, sr0, sr1, ly.up_s + c0, ly.up_b + c0, a2, hs0, hs1);
#pragma unroll
                for (int ng = 0; ng < NT / 8; ng++) {
                    int dacc[8][4];
                    zero(dacc);
                    product<WG, 8, 4>(dacc, a2, ly.down, fw->f / 64, ng * 8, c0 / 64, ring);
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        const int c = (ng * 8 + j) * 8 + t * 2;
                        const float2 bb = c0 == 0 ? ldg2(ly.down_b + c) : make_float2(0.0f, 0.0f);
                        const float4 y = deq(dacc[j], hs0, hs1, ldg2(ly.down_s + c), bb);
                        float4 &x = xs[(ng * 8 + j) * 32 + lane];
                        x = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
                    }
                }
            }
        }
        if (HIST) {
            __syncthreads(); /* the next layer overwrites the keys and values */
            if (threadIdx.x == 0) /* the block's layer l is in the cache */
                flag_publish(&flags[b], gen << 8 | (unsigned)(l + 1));
        }
    }
    if (!HIST)
        pdl_wait_primary();
    if (live)
        rows_out<D, HIST>(fw, bt, xs, b, L, first, rows, tok0, tok1);
}

/* ---- the split path: four warps share each 16 rows ------------------------------------------------- */

/* For small batches, where fast_kernel's warps would run alone and a call
 * would take one warp's latency through every weight of the model: a block
 * of 4 warps carries 16 rows, warp c holding head c and the c-th quarter of
 * the columns (its slice of the residual, in registers; q, k, v and
 * attention of head c; its quarter of every product's outputs; the FFN's
 * hidden chunks c, c + 4, ...). The warps meet at the block's barrier where
 * a step needs whole rows: the LayerNorms' sums, the quantization maxima,
 * and the next product's A fragments, which each warp writes for its slice
 * to shared memory. A history of 64 tokens is a cluster of 4 such blocks
 * (one per 16 tokens, on 4 SMs): each writes its keys and values of a layer
 * to the cache, the cluster meets at its barrier (release, acquire), and
 * each reads the keys and values it attends to back from the cache, as the
 * candidates do. The arithmetic is fast_kernel's, but for two float orders
 * (LayerNorm's variance as E[x^2] - mean^2, one round of sums; the
 * attention output quantized from fp32 rather than fp16) and the FFN's
 * hidden layer, held whole in shared memory and quantized per whole row
 * (the rows way: per row and 128-column chunk). The candidate
 * kernel reads the cache either history kernel writes. Hopper and later
 * (clusters); gp_fast_new keeps to fast_kernel elsewhere. */
template <int D> struct SCfg {
    static constexpr int DH = D / 4, SNT = DH / 8, KS = D / 32, SKS = DH / 32, QK = DH / 16, LDK = DH + 8;
    /* a warp's keys and values of its head for the block's 16 rows */
    static constexpr size_t stage_bytes = (size_t)2 * 16 * LDK * 2;
    /* the cross-warp partials (Grp): two rounds of 4 warps x 16 rows of float2 */
    static constexpr size_t part_bytes = (size_t)2 * 4 * 16 * 8;
    /* A fragments of D columns; the f hidden columns in fp16 (A-fragment
     * order, until their rows' maxima are known), then their int8 A
     * fragments in place; the cross-warp partials; a history block's
     * staging */
    static __host__ __device__ constexpr size_t smem(bool hist, int f)
    {
        return (size_t)KS * 512 + (size_t)f / 32 * 1024 + part_bytes + (hist ? 4 * stage_bytes : 0);
    }
    static constexpr size_t kv_bytes = kv_layer_bytes<D>; /* a user's keys and values of one layer */
    static __host__ __device__ constexpr size_t cmax(size_t a, size_t b) { return a > b ? a : b; }
    /* the wide way's group of 4 warps: its hidden layer, where a history
     * block also stages its keys and values in the attention's phase; the
     * 4 groups' hidden layers are one region, where a candidate block's
     * copy of the user's keys and values waits in that phase; then the
     * groups' partials. The A fragments are the block's (one tile). */
    static __host__ __device__ constexpr size_t wide_hid(int f)
    {
        return cmax(cmax((size_t)f / 32 * 1024, 4 * stage_bytes), kv_bytes / 4);
    }
    static __host__ __device__ constexpr size_t wide_group(int f) { return wide_hid(f) + part_bytes; }
    static_assert(SKS >= 1 && DH % 32 == 0, "a head is whole k-steps");
};

/* The cluster's barrier: writes before it (the cache) are seen by reads
 * after it in every block of the cluster. */
__device__ __forceinline__ void cluster_sync()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
    __trap();
#endif
}

/* The 4 warps that share 16 rows in the split way: the partials they
 * exchange (two rounds, so that one round's reads never meet the next
 * one's writes), this warp's slice c, and their barrier (0: the block's;
 * the wide way's blocks hold 4 such groups, each with its named barrier). */
struct Grp {
    float2 *part;
    int round, c, bar;
    __device__ __forceinline__ void sync() const
    {
        if (bar == 0)
            __syncthreads();
        else
            asm volatile("bar.sync %0, 128;" ::"r"(bar) : "memory");
    }
};

template <bool MAX> __device__ __forceinline__ float4 across(float a0, float b0, float a1, float b1, Grp &gp)
{
    const int lane = threadIdx.x & 31, g = lane >> 2, c = gp.c;
    if (MAX) {
        a0 = gp_quad_max(a0), b0 = gp_quad_max(b0), a1 = gp_quad_max(a1), b1 = gp_quad_max(b1);
    } else {
        a0 = gp_quad_sum(a0), b0 = gp_quad_sum(b0), a1 = gp_quad_sum(a1), b1 = gp_quad_sum(b1);
    }
    float2 *p = gp.part + (gp.round++ & 1) * 64;
    if ((lane & 3) == 0) {
        p[c * 16 + g] = make_float2(a0, b0);
        p[c * 16 + g + 8] = make_float2(a1, b1);
    }
    gp.sync();
    float2 u = p[g], v = p[g + 8];
#pragma unroll
    for (int w = 1; w < 4; w++) {
        const float2 uw = p[w * 16 + g], vw = p[w * 16 + g + 8];
        if (MAX) {
            u = make_float2(fmaxf(u.x, uw.x), fmaxf(u.y, uw.y));
            v = make_float2(fmaxf(v.x, vw.x), fmaxf(v.y, vw.y));
        } else {
            u = make_float2(u.x + uw.x, u.y + uw.y);
            v = make_float2(v.x + vw.x, v.y + vw.y);
        }
    }
    return make_float4(u.x, u.y, v.x, v.y);
}

/* The warp's slice y (columns c * DH ..., accumulator layout) quantized by
 * m0, m1 into its k-steps of the tile's A fragments; after the barrier,
 * every warp's copy of all of them in a. WIDE: into the block's A tile At
 * instead (64 rows, k-step ks at ks * 2048 bytes in wgmma's layout, which
 * the products read from shared memory), once every warp is done with the
 * products that read it last; a is not written. Rounded by one fma (q8m),
 * as the lean way: cvt.rni.sat.s8's conversions held these writes behind
 * the MIO queue (the wide way's candidates 5% faster without them,
 * bench/NOTES.md, session 24). */
template <int D, bool WIDE = false>
__device__ __forceinline__ void to_afrags(const float4 (&y)[D / 32], float m0, float m1, uint4 *A,
                                          uint32_t (&a)[D / 32][4], const Grp &gp, uint8_t *At)
{
    constexpr int SKS = SCfg<D>::SKS, KS = SCfg<D>::KS;
    const int lane = threadIdx.x & 31, c = gp.c;
    if constexpr (WIDE) {
        /* rows g and g + 8 of the warp's 16 (core matrices 2r and 2r + 1, 256 bytes apart), the k-step's
         * halves 128 apart: a[0], a[1] the first half's 4 bytes of the two rows, a[2], a[3] the second's */
        uint8_t *p = At + ((threadIdx.x >> 5) & 3) * 512 + (lane >> 2) * 16 + (lane & 3) * 4;
        __syncthreads();
#pragma unroll
        for (int s = 0; s < SKS; s++) {
            uint32_t v[4];
            afrag<true>(v, y[4 * s], y[4 * s + 1], y[4 * s + 2], y[4 * s + 3], m0, m1);
            uint8_t *q = p + (c * SKS + s) * 2048;
            *(uint32_t *)q = v[0];
            *(uint32_t *)(q + 256) = v[1];
            *(uint32_t *)(q + 128) = v[2];
            *(uint32_t *)(q + 384) = v[3];
        }
        gp_fence_async_smem();
        __syncthreads();
    } else {
#pragma unroll
        for (int s = 0; s < SKS; s++) {
            uint32_t v[4];
            afrag<true>(v, y[4 * s], y[4 * s + 1], y[4 * s + 2], y[4 * s + 3], m0, m1);
            A[(c * SKS + s) * 32 + lane] = make_uint4(v[0], v[1], v[2], v[3]);
        }
        gp.sync();
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            const uint4 u = A[ks * 32 + lane];
            a[ks][0] = u.x, a[ks][1] = u.y, a[ks][2] = u.z, a[ks][3] = u.w;
        }
    }
}

/* Mean and 1/std of rows g and g + 8 from the warps' slices x. */
template <int D> __device__ __forceinline__ Moments moments_split(const float4 (&x)[D / 32], Grp &gp)
{
    float s0 = 0.0f, q0 = 0.0f, s1 = 0.0f, q1 = 0.0f;
#pragma unroll
    for (int j = 0; j < D / 32; j++) {
        s0 += x[j].x + x[j].y;
        q0 += x[j].x * x[j].x + x[j].y * x[j].y;
        s1 += x[j].z + x[j].w;
        q1 += x[j].z * x[j].z + x[j].w * x[j].w;
    }
    const float4 m = across<false>(s0, q0, s1, q1, gp);
    Moments mo;
    mo.m0 = m.x * (1.0f / D);
    mo.m1 = m.z * (1.0f / D);
    mo.r0 = 1.0f / sqrtf(fmaxf(m.y * (1.0f / D) - mo.m0 * mo.m0, 0.0f) + 1e-5f);
    mo.r1 = 1.0f / sqrtf(fmaxf(m.w * (1.0f / D) - mo.m1 * mo.m1, 0.0f) + 1e-5f);
    return mo;
}

/* LN(x) of the warp's slice, column tile c * D / 32 + j. */
template <int D>
__device__ __forceinline__ float4 ln_slice(const float4 &v, const Moments &mo, const float *w, const float *b, int c,
                                           int j)
{
    const int lane = threadIdx.x & 31;
    const int col = (c * (D / 32) + j) * 8 + (lane & 3) * 2;
    const float2 ww = ldg2(w + col), bb = ldg2(b + col);
    return make_float4((v.x - mo.m0) * mo.r0 * ww.x + bb.x, (v.y - mo.m0) * mo.r0 * ww.y + bb.y,
                       (v.z - mo.m1) * mo.r1 * ww.x + bb.x, (v.w - mo.m1) * mo.r1 * ww.y + bb.y);
}

/* ln_quant for the split path: every warp's a holds the A fragments of
 * LN(x) for the tile's rows; sr: the rows' scales. */
template <int D, bool WIDE = false>
__device__ __forceinline__ void ln_quant_split(const float4 (&x)[D / 32], const float *w, const float *b, uint4 *A,
                                               Grp &gp, uint32_t (&a)[D / 32][4], float &sr0, float &sr1,
                                               uint8_t *At)
{
    const Moments mo = moments_split<D>(x, gp);
    float4 y[D / 32];
    float am0 = 0.0f, am1 = 0.0f;
#pragma unroll
    for (int j = 0; j < D / 32; j++) {
        y[j] = ln_slice<D>(x[j], mo, w, b, gp.c, j);
        am0 = fmaxf(am0, fmaxf(fabsf(y[j].x), fabsf(y[j].y)));
        am1 = fmaxf(am1, fmaxf(fabsf(y[j].z), fabsf(y[j].w)));
    }
    const float4 mx = across<true>(am0, 0.0f, am1, 0.0f, gp);
    const Quant q0 = quant_of(mx.x), q1 = quant_of(mx.z);
    sr0 = q0.scale;
    sr1 = q1.scale;
    to_afrags<D, WIDE>(y, q0.mul, q1.mul, A, a, gp, At);
}

/* The wide way (split_kernel's WIDE blocks, sm_90a): a block of 16 warps
 * carries a whole tile of 64 rows (or history) as 4 groups of the split way's
 * 4 warps, warp w holding slice w / 4 of rows 16 (w % 4) ... So the 4 warps
 * of one slice are a warpgroup, and each product is one wgmma m64nNk32 per
 * warpgroup and k-step (A from the block's 64-row tile in shared memory
 * that to_afrags writes, or for down from the warps' registers as mma.sync
 * takes it; B from shared memory), over weights that the copy engine
 * streams into a ring of WIDE_NBUF chunks of WIDE_CHUNK bytes (SRing), one
 * copy for all 64 rows (the split way reads every weight once per 16 rows,
 * through L1, with its latency exposed at each k-step). A chunk is, for
 * each of the 4 slices in turn, N rows (the slice's output columns) by
 * WIDE_CHUNK / 4N input columns in wgmma's layout (gpu/sm90.cuh);
 * wide_plan lists them in the order the kernel takes them. */
constexpr int WIDE_NBUF = 4, WIDE_CHUNK = 16384;
constexpr size_t WIDE_HEAD = 128; /* the ring's barriers and counts, the cache copy's barrier */
/* Batches of at least this many requests whose candidates take the wide
 * way run their history in it too, a block of 16 warps per request in
 * place of a cluster of 4 blocks of 4: H200, teacher B=128 1,486 / 1,498
 * -> 1,437 / 1,422 us, B=512 5,619 / 5,715 -> 5,420 / 5,408 us, but B=16
 * 267 / 268 -> 332 / 333 us (16 SMs carry the history's chain instead of
 * 64; bench/NOTES.md). RANKD_GPU_FAST=wide takes it at every size. */
constexpr int WIDE_HIST_B = 128;

struct SRing {
    const uint8_t *src; /* FW::wide, chunk k at k * WIDE_CHUNK */
    uint8_t *buf;
    uint64_t *full; /* [WIDE_NBUF]: the copy's bytes landed */
    unsigned *done; /* [WIDE_NBUF]: the warps' releases of each buffer, counted over the stream */
    int s, n;       /* the next chunk, the stream's count */

    __device__ __forceinline__ void load(int k)
    {
        const int bi = k % WIDE_NBUF;
        gp_bulk_load(buf + bi * WIDE_CHUNK, src + (size_t)k * WIDE_CHUNK, WIDE_CHUNK, &full[bi]);
    }
    /* acc (+)= A . B^T for slice wg's N columns over KSL k-steps, the
     * stream's next KSL / KSC chunks; more: add to acc. Each chunk's wgmmas
     * are issued while the previous chunk's run (one group in flight), and
     * a warp releases a chunk's buffer once they are done. The last of the
     * 16 warps to release chunk k loads chunk k + WIDE_NBUF into its
     * buffer, so that no warp waits for the others' releases (teacher
     * B=512 2% faster than thread 0 waiting for them before each load,
     * bench/NOTES.md, session 24). */
    __device__ __forceinline__ void release(int k) /* this warp is done with chunk k's buffer */
    {
        if ((threadIdx.x & 31) == 0) {
            unsigned old; /* acq_rel: the other warps' wgmmas on the buffer are done before this load */
            asm volatile("atom.acq_rel.cta.shared::cta.add.u32 %0, [%1], 1;"
                         : "=r"(old)
                         : "r"(gp_smem(&done[k % WIDE_NBUF]))
                         : "memory");
            if ((old & 15) == 15 && k + WIDE_NBUF < n)
                load(k + WIDE_NBUF);
        }
    }
    template <int N, int KSL, bool SS>
    __device__ __forceinline__ void product(int (&acc)[N / 8][4], const uint32_t (&a)[KSL][4], const uint8_t *At,
                                            int wg, bool more)
    {
        constexpr int KSC = WIDE_CHUNK / (4 * N * 32); /* k-steps a chunk */
        static_assert(KSC >= 1 && KSL % KSC == 0, "a product is whole chunks");
#pragma unroll
        for (int i = 0; i < KSL / KSC; i++) {
            const int bi = s % WIDE_NBUF;
            gp_mbar_wait(&full[bi], (unsigned)(s / WIDE_NBUF) & 1);
            const uint8_t *b = buf + bi * WIDE_CHUNK + wg * (N * KSC * 32);
            gp_wg_fence();
#pragma unroll
            for (int ks = 0; ks < KSC; ks++)
                if constexpr (SS) /* A: the block's tile (to_afrags) */
                    gp_wgmma_s8_ss<N>(acc, gp_desc(At + (i * KSC + ks) * 2048), gp_desc(b + ks * N * 32),
                                      more || i > 0 || ks > 0);
                else
                    gp_wgmma_s8<N>(acc, a[i * KSC + ks], gp_desc(b + ks * N * 32), more || i > 0 || ks > 0);
            gp_wg_commit();
            if (i > 0) { /* the previous chunk's wgmmas are done with its buffer */
                gp_wg_wait1();
                release(s - 1);
            }
            s++;
        }
        gp_wg_wait0();
        release(s - 1);
    }
};

/* acc += A . W^T for a warp's NTL n8 tiles from tile nt0 and k-pair kp0 of
 * W (fragment order, kpt k-pairs a tile): mma.sync on fragments from global
 * memory, or in the wide way the ring's next chunks (more: as above), A
 * from a or (SS) the block's A tile At. */
template <bool WIDE, bool SS, int NTL, int KSL>
__device__ __forceinline__ void sprod(int (&acc)[NTL][4], const uint32_t (&a)[KSL][4], const uint8_t *At,
                                      const uint4 *__restrict__ W, int kpt, int nt0, int kp0, SRing &rg, int wg,
                                      bool more)
{
    if constexpr (WIDE)
        rg.product<8 * NTL, KSL, SS>(acc, a, At, wg, more);
    else
        mma_tiles<NTL, KSL>(acc, a, W, kpt, nt0, kp0);
}

/* One block per 16 rows (blockIdx.x / 4: the user, HIST, in a cluster of
 * 4 blocks; else the candidate tile; blockIdx.x % 4: which 16 rows); WIDE:
 * one block of 16 warps per candidate tile or history, as above. */
template <int D, bool HIST, int MINB, bool WIDE = false>
__global__ void __launch_bounds__((WIDE ? 16 : 4) * 32, MINB)
    split_kernel(const FW *__restrict__ fw, gp_batch bt, __half *kvc, unsigned long long *flags)
{
    using S = SCfg<D>;
    constexpr int DH = S::DH, SNT = S::SNT, KS = S::KS, QK = S::QK, HNT = SNT, LDK = S::LDK;
    extern __shared__ __align__(16) uint8_t sm[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int c = WIDE ? warp >> 2 : warp;        /* head, slice (WIDE: the warpgroup) */
    const int r = WIDE ? warp & 3 : blockIdx.x & 3; /* which 16 rows */
    int b, first = 0, rows, row0 = r * 16;
    if (HIST) {
        b = WIDE ? blockIdx.x : blockIdx.x >> 2;
        rows = bt.n_hist[b];
    } else {
        const int4 tile = bt.tiles[WIDE ? blockIdx.x : blockIdx.x >> 2];
        b = tile.x;
        first = tile.y;
        rows = tile.z;
    }
    if (HIST)
        pdl_launch_dependents();
    const int L = bt.n_hist[b], nl = fw->n_layers, f = fw->f;
    if (HIST && L == 0) { /* u = LN_f(0) = ln_f.bias; the cluster leaves together */
        for (int i = threadIdx.x; i < D && (WIDE || r == 0); i += blockDim.x)
            bt.user_vec[(size_t)b * D + i] = fw->lnf_b[i];
        return;
    }
    SRing ring = {};
    if constexpr (WIDE) { /* every warp takes part in the products: rows past the last (candidates: item 0's;
                           * a history: zeros) are computed and never written out */
        ring.full = (uint64_t *)sm;
        ring.done = (unsigned *)(ring.full + WIDE_NBUF); /* then kvbar */
        ring.buf = sm + WIDE_HEAD;
        ring.src = fw->wide;
        ring.n = fw->n_wide;
        if (threadIdx.x == 0) {
            for (int i = 0; i < WIDE_NBUF; i++) {
                gp_mbar_init(&ring.full[i], 1);
                ring.done[i] = 0;
            }
            gp_mbar_init(ring.full + 2 * WIDE_NBUF, 1);
            gp_mbar_fence_init();
        }
        __syncthreads();
        if (threadIdx.x == 0)
            for (int k = 0; k < WIDE_NBUF && k < ring.n; k++)
                ring.load(k);
    } else if (row0 >= rows) { /* past the last row: nothing to do but meet the cluster */
        if (HIST)
            for (int l = 0; l < nl; l++)
                cluster_sync();
        else
            pdl_wait_primary();
        return;
    }
    /* Hs: k-step kq of the hidden layer in fp16 at entries 2 kq, 2 kq + 1;
     * its int8 A fragments then go over entry 2 kq, which only the lane
     * that wrote it reads */
    /* WIDE: the ring, the block's A tile, then each group's hidden layer and partials */
    uint8_t *At = sm + WIDE_HEAD + (size_t)WIDE_NBUF * WIDE_CHUNK;
    uint8_t *gs = WIDE ? At + KS * 2048 + r * S::wide_hid(f) : sm;
    uint4 *A = (uint4 *)gs, *Hs = A + (WIDE ? 0 : KS * 32);
    Grp gp = {(float2 *)(WIDE ? At + KS * 2048 + 4 * S::wide_hid(f) + r * S::part_bytes
                              : (uint8_t *)(Hs + (size_t)f / 32 * 64)),
              0, c, WIDE ? 1 + r : 0};
    /* WIDE candidates: the user's keys and values of the layer, copied over the groups' hidden layers once the
     * history has published them (thread 0's acquire, then the copy engine), read there by attention */
    constexpr bool SKV = WIDE && !HIST;
    const uint2 *kvs = (const uint2 *)(At + KS * 2048);
    uint64_t *kvbar = ring.full + 2 * WIDE_NBUF;
    /* HIST: warp c's keys and values of head c for its 16 rows (WIDE: over the hidden layer) */
    __half *Kst = (__half *)(WIDE ? (uint8_t *)Hs : (uint8_t *)(gp.part + 2 * 4 * 16)) + (size_t)c * 2 * 16 * LDK,
           *Vst = Kst + 16 * LDK;
    const int tok0 = row0 + g, tok1 = tok0 + 8;
    const unsigned long long gen = *bt.call;

    float4 x[SNT]; /* the residual: rows g, g + 8 of column tiles c * SNT + j */
    {
        const Emb<D, HIST> e(fw, bt, b, L, first, rows, tok0, tok1);
#pragma unroll
        for (int j = 0; j < SNT; j++)
            x[j] = e.at((c * SNT + j) * 8 + t * 2);
    }

    const float sl2 = 1.4426950408889634f / sqrtf((float)DH);
    for (int l = 0; l < nl; l++) {
        const FLayer &ly = fw->L[l];
        __half *kvl = kvc + kv_off<D>(b, nl, l);
        const int nkr = (L + 15) / 16 * 16;
        uint32_t a[KS][4];
        float sr0, sr1;
        ln_quant_split<D, WIDE>(x, ly.ln1_w, ly.ln1_b, A, gp, a, sr0, sr1, At);
        /* SKV: every warp is past the last layer's hidden layer (the barriers above); the copy goes now if the
         * history has this layer, else before attention */
        bool kv_copied = false;
        auto kv_copy = [&]() {
            gp_fence_async_global();
            gp_fence_async_smem();
            gp_bulk_load((void *)kvs, kvl, (unsigned)S::kv_bytes, kvbar);
            kv_copied = true;
        };
        if (SKV && threadIdx.x == 0 && L > 0 && flag_ready(&flags[b], gen << 8 | (unsigned)(l + 1)))
            kv_copy();
        /* head c's k, then q (with the self score), then v */
        const int qt = c * 3 * HNT; /* the head's first n8 tile of qkv rows: q, k, v */
        float4 kf[HNT];
        {
            int acc[HNT][4];
            zero(acc);
            sprod<WIDE, true, HNT, KS>(acc, a, At, ly.qkv, KS / 2, qt + HNT, 0, ring, c, false);
#pragma unroll
            for (int j = 0; j < HNT; j++) {
                const int col = (qt + HNT + j) * 8 + t * 2;
                kf[j] = deq(acc[j], sr0, sr1, ldg2(ly.qkv_s + col), ldg2(ly.qkv_b + col));
            }
        }
        if (HIST)
#pragma unroll
            for (int j = 0; j < HNT; j++) {
                const int col = j * 8 + t * 2;
                *(uint32_t *)&Kst[g * LDK + col] = h2u(kf[j].x, kf[j].y);
                *(uint32_t *)&Kst[(g + 8) * LDK + col] = h2u(kf[j].z, kf[j].w);
            }
        uint4 qf[QK];
        float2 ss = make_float2(0.0f, 0.0f);
        {
            int acc[HNT][4];
            zero(acc);
            sprod<WIDE, true, HNT, KS>(acc, a, At, ly.qkv, KS / 2, qt, 0, ring, c, false);
            float4 q[HNT];
            float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
            for (int j = 0; j < HNT; j++) {
                const int col = (qt + j) * 8 + t * 2;
                q[j] = deq(acc[j], sr0, sr1, ldg2(ly.qkv_s + col), ldg2(ly.qkv_b + col));
                d0 += q[j].x * kf[j].x + q[j].y * kf[j].y;
                d1 += q[j].z * kf[j].z + q[j].w * kf[j].w;
            }
            if (!HIST)
                ss = make_float2(gp_quad_sum(d0), gp_quad_sum(d1));
#pragma unroll
            for (int kk = 0; kk < QK; kk++)
                qf[kk] = make_uint4(h2u(q[2 * kk].x, q[2 * kk].y), h2u(q[2 * kk].z, q[2 * kk].w),
                                    h2u(q[2 * kk + 1].x, q[2 * kk + 1].y), h2u(q[2 * kk + 1].z, q[2 * kk + 1].w));
        }
        uint2 vself[HNT];
        {
            int acc[HNT][4];
            zero(acc);
            sprod<WIDE, true, HNT, KS>(acc, a, At, ly.qkv, KS / 2, qt + 2 * HNT, 0, ring, c, false);
#pragma unroll
            for (int j = 0; j < HNT; j++) {
                const int col = (qt + 2 * HNT + j) * 8 + t * 2;
                const float4 v = deq(acc[j], sr0, sr1, ldg2(ly.qkv_s + col), ldg2(ly.qkv_b + col));
                if (HIST) {
                    const int hc = j * 8 + t * 2;
                    *(uint32_t *)&Vst[g * LDK + hc] = h2u(v.x, v.y);
                    *(uint32_t *)&Vst[(g + 8) * LDK + hc] = h2u(v.z, v.w);
                }
                vself[j] = make_uint2(h2u(v.x, v.y), h2u(v.z, v.w));
            }
        }
        if (HIST) { /* the block's keys and values of head c to the cache, then everyone's back */
            __syncwarp();
            store_kv<D, DH>(Kst, Vst, 0, row0, 16, kvl, c, 1, lane, 32);
            if (WIDE)
                __syncthreads();
            else
                cluster_sync();
            if ((WIDE || r == 0) && threadIdx.x == 0) /* the cluster's (block's) layer l is in the cache */
                flag_publish(&flags[b], gen << 8 | (unsigned)(l + 1));
        } else if (SKV) {
            if (threadIdx.x == 0 && L > 0 && !kv_copied) {
                flag_wait(&flags[b], gen << 8 | (unsigned)(l + 1));
                kv_copy();
            }
            if (L > 0)
                gp_mbar_wait(kvbar, (unsigned)l & 1);
        } else if (L > 0) {
            flag_wait(&flags[b], gen << 8 | (unsigned)(l + 1));
        }
        /* attention of head c; its output quantized per whole row */
        float o[HNT][4];
        const Attn at = attend<D, DH, HIST, false, SKV>(qf, ss, NULL, NULL, SKV ? kvs : (const uint2 *)kvl, c,
                                                        HIST ? r + 1 : nkr / 16, L, tok0, tok1, sl2, o);
        {
            float4 ov[HNT];
            float am0 = 0.0f, am1 = 0.0f;
#pragma unroll
            for (int j = 0; j < HNT; j++) {
                const float2 v0 = HIST ? make_float2(0.0f, 0.0f) : u2f(vself[j].x);
                const float2 v1 = HIST ? make_float2(0.0f, 0.0f) : u2f(vself[j].y);
                ov[j] = make_float4((o[j][0] + at.ps0 * v0.x) * at.i0, (o[j][1] + at.ps0 * v0.y) * at.i0,
                                    (o[j][2] + at.ps1 * v1.x) * at.i1, (o[j][3] + at.ps1 * v1.y) * at.i1);
                am0 = fmaxf(am0, fmaxf(fabsf(ov[j].x), fabsf(ov[j].y)));
                am1 = fmaxf(am1, fmaxf(fabsf(ov[j].z), fabsf(ov[j].w)));
            }
            const float4 mx = across<true>(am0, 0.0f, am1, 0.0f, gp);
            const Quant q0 = quant_of(mx.x), q1 = quant_of(mx.z);
            to_afrags<D, WIDE>(ov, q0.mul, q1.mul, A, a, gp, At);
            /* x += out(O), the warp's slice */
            int acc[SNT][4];
            zero(acc);
            sprod<WIDE, true, SNT, KS>(acc, a, At, ly.out, KS / 2, c * SNT, 0, ring, c, false);
#pragma unroll
            for (int j = 0; j < SNT; j++) {
                const int col = (c * SNT + j) * 8 + t * 2;
                const float4 y = deq(acc[j], q0.scale, q1.scale, ldg2(ly.out_s + col), ldg2(ly.out_b + col));
                x[j] = make_float4(x[j].x + y.x, x[j].y + y.y, x[j].z + y.z, x[j].w + y.w);
            }
        }
        /* x += down(gelu(up(LN2(x)))): up and GELU of the warp's units of 64
         * hidden columns (2c, 2c + 1, 2c + 8, ...; WIDE: c, c + 4, ..., the
         * order of its stream), in fp16 to Hs; quantized per whole row,
         * as on the CPU, once the row's maximum is known; down of the warp's
         * slice over every chunk, summed in int32, dequantized once */
        ln_quant_split<D, WIDE>(x, ly.ln2_w, ly.ln2_b, A, gp, a, sr0, sr1, At);
        __half2 hm0 = __float2half2_rn(0.0f), hm1 = hm0;
#pragma unroll 1
        for (int u = WIDE ? c : 2 * c; u < f / 64; u += WIDE ? 4 : u & 1 ? 7 : 1) { /* the warp's 64-column units */
            int acc[8][4];
            zero(acc);
            sprod<WIDE, true, 8, KS>(acc, a, At, ly.up, KS / 2, u * 8, 0, ring, c, false);
            __half2 h[8][2];
            gelu_tiles<8>(acc, sr0, sr1, ly.up_s + u * 64, ly.up_b + u * 64, h, hm0, hm1);
#pragma unroll
            for (int i = 0; i < 2; i++) { /* its two k-steps */
                const int kq = u * 2 + i;
                Hs[(2 * kq) * 32 + lane] = make_uint4(*(uint32_t *)&h[4 * i][0], *(uint32_t *)&h[4 * i + 1][0],
                                                      *(uint32_t *)&h[4 * i][1], *(uint32_t *)&h[4 * i + 1][1]);
                Hs[(2 * kq + 1) * 32 + lane] =
                    make_uint4(*(uint32_t *)&h[4 * i + 2][0], *(uint32_t *)&h[4 * i + 3][0],
                               *(uint32_t *)&h[4 * i + 2][1], *(uint32_t *)&h[4 * i + 3][1]);
            }
        }
        float hsc0, hsc1; /* the hidden rows' scales */
        {
            const float2 m0 = __half22float2(hm0), m1 = __half22float2(hm1);
            const float4 mx = across<true>(fmaxf(m0.x, m0.y), 0.0f, fmaxf(m1.x, m1.y), 0.0f, gp);
            const Quant q0 = quant_of_half(mx.x), q1 = quant_of_half(mx.z);
            const __half2 mul0 = __float2half2_rn(q0.mul), mul1 = __float2half2_rn(q1.mul);
            hsc0 = q0.scale;
            hsc1 = q1.scale;
            /* the warp's own k-steps (each lane reads what it wrote) */
#pragma unroll 1
            for (int u = WIDE ? c : 2 * c; u < f / 64; u += WIDE ? 4 : u & 1 ? 7 : 1)
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int kq = u * 2 + i;
                    const uint4 lo = Hs[(2 * kq) * 32 + lane], hi = Hs[(2 * kq + 1) * 32 + lane];
                    const __half2 *l = (const __half2 *)&lo, *h = (const __half2 *)&hi;
                    Hs[(2 * kq) * 32 + lane] = make_uint4(q8w(l[0], l[1], mul0), q8w(l[2], l[3], mul1),
                                                          q8w(h[0], h[1], mul0), q8w(h[2], h[3], mul1));
                }
        }
        gp.sync(); /* every k-step's A fragments */
        {
            int dacc[SNT][4];
            zero(dacc);
#pragma unroll 1
            for (int ch = 0; ch < f / 128; ch++) {
                uint32_t a2[4][4];
#pragma unroll
                for (int ks = 0; ks < 4; ks++) {
                    const uint4 u = Hs[(2 * (ch * 4 + ks)) * 32 + lane];
                    a2[ks][0] = u.x, a2[ks][1] = u.y, a2[ks][2] = u.z, a2[ks][3] = u.w;
                }
                sprod<WIDE, false, SNT, 4>(dacc, a2, nullptr, ly.down, f / 64, c * SNT, ch * 2, ring, c, ch > 0);
            }
#pragma unroll
            for (int j = 0; j < SNT; j++) {
                const int col = (c * SNT + j) * 8 + t * 2;
                const float4 y = deq(dacc[j], hsc0, hsc1, ldg2(ly.down_s + col), ldg2(ly.down_b + col));
                x[j] = make_float4(x[j].x + y.x, x[j].y + y.y, x[j].z + y.z, x[j].w + y.w);
            }
        }
    }
    const Moments mo = moments_split<D>(x, gp);
    if (HIST) { /* u = LN_f(x of the newest token) */
        const int last = L - 1;
        if (last == tok0 || last == tok1)
#pragma unroll
            for (int j = 0; j < SNT; j++) {
                const float4 y = ln_slice<D>(x[j], mo, fw->lnf_w, fw->lnf_b, c, j);
                *(float2 *)&bt.user_vec[(size_t)b * D + (c * SNT + j) * 8 + t * 2] =
                    last == tok0 ? make_float2(y.x, y.y) : make_float2(y.z, y.w);
            }
    } else { /* score = head . LN_f(x) + head_b */
        float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
        for (int j = 0; j < SNT; j++) {
            const float4 y = ln_slice<D>(x[j], mo, fw->lnf_w, fw->lnf_b, c, j);
            const float2 hw = ldg2(fw->head_w + (c * SNT + j) * 8 + t * 2);
            d0 += y.x * hw.x + y.y * hw.y;
            d1 += y.z * hw.x + y.w * hw.y;
        }
        const float4 d = across<false>(d0, 0.0f, d1, 0.0f, gp);
        if (c == 0 && t == 0) {
            if (tok0 < rows)
                bt.scores[first + tok0] = d.x + fw->head_b;
            if (tok1 < rows)
                bt.scores[first + tok1] = d.z + fw->head_b;
        }
        pdl_wait_primary();
    }
}

/* ---- the lean way: the student's candidates on wgmma, two warpgroups a block -------------------------- */

/* For d_model 128 on sm_90a (docs/gpu.md, "The lean way"). A block is two
 * consumer warpgroups, each carrying its own tile of 64 rows through the
 * whole model (warp w of a group: rows 16w .. 16w + 15, whole rows, so
 * every row-wise step, LayerNorm, quantization maxima, softmax, is a quad's
 * shuffle, and a group's warps meet only at the wgmma they issue together
 * and once a layer), and a producer warpgroup, one thread of which streams
 * every weight of the model by the copy engine into a ring of LEAN_NB
 * chunks of LEAN_CHUNK bytes shared by both groups (so one copy of a chunk
 * serves 128 rows), and all layers' scales, biases and LayerNorm weights
 * once, as float4 per column pair, so that an epilogue reads its column
 * pair's scales and bias in one shared-memory load. Each product's A comes
 * from registers, as the rows way computes it (pi order); B from the ring.
 * The residual waits in the thread's own slots of shared memory. The
 * arithmetic is the CPU's W8A8 rule, written for few instructions:
 * LayerNorm in one pass over the row (E[x^2] - mean^2, as the split way),
 * activations rounded to int8 by one fma against 1.5 x 2^23 (ties to even,
 * as rintf, on the product unrounded), the FFN's hidden layer (GELU in
 * half2, as gelu_tiles) held whole in registers until its rows' maxima are
 * known, then quantized per whole row, as on the CPU, and the
 * down-projection summed over all of it in int32 and dequantized once.
 * Attention is the rows way's (attend); a candidate group reads the user's
 * keys and values from its own copy of the cache in shared memory. HIST:
 * the history, each head's keys and values staged for causal attention and
 * written to the cache. */
constexpr int LEAN_NB = 4, LEAN_CHUNK = 16384, LEAN_WGS = 2;
/* Batches of at least this many candidate tiles (B = 32 at 512
 * candidates) take the lean way where it exists (auto), with the split
 * way's history below LEAN_HIST_B: measured (H100, bench/NOTES.md, "The
 * lean way, again") about 20% faster than the split way at B = 32 and 64
 * and than the wgmma way at 128 and 512, level with the split way at
 * B = 16; RANKD_GPU_LEAN_TILES sets it, for measurements,
 * RANKD_GPU_FAST=lean forces it. */
constexpr int LEAN_TILES = 256;
/* Lean batches of at least this many requests run the history in the lean
 * way too, smaller ones in the split way's clusters of 4 blocks a request
 * (RANKD_GPU_LEAN_HIST_B overrides it): measured (H100) the split way's
 * 18% faster at B = 64, 2% at 128, the lean way's 8% at 512. */
constexpr int LEAN_HIST_B = 256;
/* a producer warpgroup (one thread of it streams; the registers it gives
 * up, setmaxnreg, go to the two consumer groups) */
constexpr int LEAN_THREADS = (LEAN_WGS + 1) * 128, LEAN_PROD_REGS = 40, LEAN_REGS = 232;
static_assert(LEAN_PROD_REGS * 128 + LEAN_REGS * 128 * LEAN_WGS <= 65536, "the register file");
constexpr size_t LEAN_HEAD = 1024; /* the barriers; then the ring */

template <int F> struct LCfg {
    static constexpr int D = 128, H = 4, DH = 32, KS = D / 32, NT = D / 8, NCH = F / 128;
    /* a layer's vectors, float4 per column pair: {s, s', b, b'} of a linear
     * layer (qkv in head order), {w, w', b, b'} of a LayerNorm */
    static constexpr int V_QKV = 0, V_OUT = 3 * D / 2, V_UP = V_OUT + D / 2, V_DOWN = V_UP + F / 2,
                         V_LN1 = V_DOWN + D / 2, V_LN2 = V_LN1 + D / 2, V_N = V_LN2 + D / 2;
    static constexpr size_t vec_bytes = (size_t)V_N * 16;
    static constexpr size_t xs_bytes = (size_t)4 * NT * 32 * 16; /* a group's residual */
    static __host__ __device__ constexpr size_t smem(int n_layers)
    {
        return LEAN_HEAD + (size_t)LEAN_NB * LEAN_CHUNK + n_layers * vec_bytes + LEAN_WGS * xs_bytes;
    }
    /* a history group's keys and values of one head, fp16 rows LDK apart (ldmatrix on distinct banks) */
    static constexpr int LDK = DH + 8;
    static constexpr size_t kv_stage = (size_t)2 * 64 * LDK * 2;
    static __host__ __device__ constexpr size_t smem_hist(int n_layers) { return smem(n_layers) + LEAN_WGS * kv_stage; }
    /* a candidate group's copy of its user's keys and values of one layer (the cache, fragment order) */
    static constexpr size_t kv_bytes = kv_layer_bytes<D>;
    static __host__ __device__ constexpr size_t smem_cand(int n_layers) { return smem(n_layers) + LEAN_WGS * kv_bytes; }
    static_assert(F % 128 == 0 && NCH >= 1 && NCH <= LEAN_NB, "the down-projection's chunks fit the ring at once");
};

/* The consumers' side of the ring: chunk s of the stream is in buffer s %
 * LEAN_NB once its full barrier's phase (s / LEAN_NB) & 1 completes; a
 * warp releases it with one arrival (8 a chunk) once the wgmmas that read
 * it are done. */
struct LRing {
    const uint8_t *buf;
    uint64_t *full, *empty;
    int s;
    __device__ __forceinline__ const uint8_t *take()
    {
        const int bi = s % LEAN_NB;
        gp_mbar_wait(&full[bi], (unsigned)(s / LEAN_NB) & 1);
        return buf + (size_t)bi * LEAN_CHUNK;
    }
    __device__ __forceinline__ void give(int back = 0) /* chunk s - back */
    {
        __syncwarp();
        if ((threadIdx.x & 31) == 0)
            gp_mbar_arrive(&empty[(s - back) % LEAN_NB]);
    }
};

/* acc (+)= A . B^T over KSL k-steps of B at b (N rows of a chunk whose
 * k-steps are kstride bytes apart), issued and committed, not waited for. */
template <int N, int KSL>
__device__ __forceinline__ void lean_mma(int (&acc)[N / 8][4], const uint32_t (&a)[KSL][4], const uint8_t *b,
                                         int kstride, bool more)
{
    gp_wg_fence();
#pragma unroll
    for (int ks = 0; ks < KSL; ks++)
        gp_wgmma_s8<N>(acc, a[ks], gp_desc(b + ks * kstride), more || ks > 0);
    gp_wg_commit();
}

/* LN(x) of the warp's rows (xs: its residual slots) as the A fragments of
 * the next product, and the rows' activation scales. */
template <int D>
__device__ __forceinline__ void lean_ln(const float4 *xs, const float4 *lnv, uint32_t (&a)[D / 32][4], float &sr0,
                                        float &sr1)
{
    constexpr int NT = D / 8;
    const int lane = threadIdx.x & 31, t = lane & 3;
    float4 y[NT];
    float s0 = 0.0f, q0 = 0.0f, s1 = 0.0f, q1 = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        y[j] = xs[j * 32 + lane];
        s0 += y[j].x + y[j].y;
        q0 = fmaf(y[j].x, y[j].x, fmaf(y[j].y, y[j].y, q0));
        s1 += y[j].z + y[j].w;
        q1 = fmaf(y[j].z, y[j].z, fmaf(y[j].w, y[j].w, q1));
    }
    s0 = gp_quad_sum(s0), q0 = gp_quad_sum(q0), s1 = gp_quad_sum(s1), q1 = gp_quad_sum(q1);
    const float m0 = s0 * (1.0f / D), m1 = s1 * (1.0f / D);
    const float r0 = 1.0f / sqrtf(fmaxf(q0 * (1.0f / D) - m0 * m0, 0.0f) + 1e-5f);
    const float r1 = 1.0f / sqrtf(fmaxf(q1 * (1.0f / D) - m1 * m1, 0.0f) + 1e-5f);
    const float n0 = -m0 * r0, n1 = -m1 * r1;
    float am0 = 0.0f, am1 = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const float4 w = lnv[4 * j + t];
        y[j] = make_float4(fmaf(fmaf(y[j].x, r0, n0), w.x, w.z), fmaf(fmaf(y[j].y, r0, n0), w.y, w.w),
                           fmaf(fmaf(y[j].z, r1, n1), w.x, w.z), fmaf(fmaf(y[j].w, r1, n1), w.y, w.w));
        am0 = fmaxf(am0, fmaxf(fabsf(y[j].x), fabsf(y[j].y)));
        am1 = fmaxf(am1, fmaxf(fabsf(y[j].z), fabsf(y[j].w)));
    }
    const Quant qa = quant_of(gp_quad_max(am0)), qb = quant_of(gp_quad_max(am1));
    sr0 = qa.scale;
    sr1 = qb.scale;
#pragma unroll
    for (int ks = 0; ks < D / 32; ks++)
        afrag<true>(a[ks], y[4 * ks], y[4 * ks + 1], y[4 * ks + 2], y[4 * ks + 3], qa.mul, qb.mul);
}

template <int F, bool HIST>
__global__ void __launch_bounds__(LEAN_THREADS, 1)
    lean_kernel(const FW *__restrict__ fw, gp_batch bt, __half *kvc, unsigned long long *flags)
{
    using C = LCfg<F>;
    constexpr int D = C::D, DH = C::DH, H = C::H, KS = C::KS, NT = C::NT, NCH = C::NCH, HNT = DH / 8, QK = DH / 16;
    extern __shared__ __align__(16) uint8_t sm[];
    uint64_t *full = (uint64_t *)sm, *empty = full + LEAN_NB, *vbar = empty + LEAN_NB, *kvbar = vbar + 1;
    uint8_t *ring = sm + LEAN_HEAD;
    const float4 *vec = (const float4 *)(ring + (size_t)LEAN_NB * LEAN_CHUNK);
    const int nl = fw->n_layers, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wg = __shfl_sync(0xffffffffu, threadIdx.x >> 7, 0); /* uniform, as ptxas can see */
    if (HIST)
        pdl_launch_dependents();
    if (threadIdx.x == 0) {
        for (int i = 0; i < LEAN_NB; i++) {
            gp_mbar_init(&full[i], 1);
            gp_mbar_init(&empty[i], 4 * LEAN_WGS);
        }
        gp_mbar_init(vbar, 1);
        for (int i = 0; i < LEAN_WGS; i++)
            gp_mbar_init(&kvbar[i], 1);
        gp_mbar_fence_init();
    }
    __syncthreads();
    if (wg == 0) { /* the producer */
        gp_setmaxnreg_dec<LEAN_PROD_REGS>();
        if (threadIdx.x == 0) {
            gp_bulk_load((void *)vec, fw->lean_vec, (unsigned)(nl * C::vec_bytes), vbar);
            for (int k = 0; k < fw->n_lean; k++) {
                const int bi = k % LEAN_NB;
                if (k >= LEAN_NB)
                    gp_mbar_wait(&empty[bi], (unsigned)(k / LEAN_NB - 1) & 1, 10000000u); /* asleep, not spinning */
                const uint32_t o = __ldg(&fw->lean_off[k]);
                gp_bulk_load(ring + (size_t)bi * LEAN_CHUNK, fw->lean + o, __ldg(&fw->lean_off[k + 1]) - o, &full[bi]);
            }
        }
        return;
    }
    gp_setmaxnreg_inc<LEAN_REGS>();
    /* a group past the last tile (HIST: request) computes the block's first again and writes nothing */
    const int tile_i = blockIdx.x * LEAN_WGS + wg - 1, n_tiles = HIST ? bt.B : bt.n_tiles;
    const bool valid = tile_i < n_tiles;
    int4 tile;
    if (HIST)
        tile = make_int4(valid ? tile_i : blockIdx.x * LEAN_WGS, 0, 0, 0);
    else
        tile = bt.tiles[valid ? tile_i : blockIdx.x * LEAN_WGS];
    const int b = tile.x, first = tile.y, L = bt.n_hist[b], rows = !valid ? 0 : HIST ? L : tile.z;
    const int wt = threadIdx.x & 127, tok0 = (warp & 3) * 16 + g, tok1 = tok0 + 8;
    float4 *xs = (float4 *)(sm + C::smem(nl) - (size_t)(LEAN_WGS + 1 - wg) * C::xs_bytes) + (warp & 3) * NT * 32;
    /* HIST: the group's staging of one head's keys and values, [64][LDK] each; else its copy of the cache */
    __half *Ks = (__half *)(sm + C::smem(nl) + (size_t)(wg - 1) * C::kv_stage), *Vs = Ks + 64 * C::LDK;
    const uint2 *kvs = (const uint2 *)(sm + C::smem(nl) + (size_t)(wg - 1) * C::kv_bytes);
    const unsigned long long gen = *bt.call;
    LRing rg = {ring, full, empty, 0};
    auto group_sync = [&]() { asm volatile("bar.sync %0, 128;" ::"r"(wg) : "memory"); };

    { /* embeddings (candidates past the tile's end: item 0's; history rows past L: zeros), half or all of the
       * loads issued before the first is waited for, as nothing else in the block hides their latency (all
       * of them left the candidate kernel 80 bytes of spills, the history 12 instead of 116: ptxas) */
        const Emb<D, HIST> e(fw, bt, b, L, first, rows, tok0, tok1);
#pragma unroll(HIST ? NT : NT / 2)
        for (int j = 0; j < NT; j++)
            xs[j * 32 + lane] = e.at(j * 8 + t * 2);
    }
    gp_mbar_wait(vbar, 0);

    const float sl2 = 1.4426950408889634f / sqrtf((float)DH);
    const int nkr = (L + 15) / 16 * 16;
    for (int l = 0; l < nl; l++) {
        const float4 *lv = vec + (size_t)l * C::V_N;
        __half *kvl = kvc + kv_off<D>(b, nl, l);
        if (!HIST) { /* the user's keys and values of layer l into the group's copy, by the copy engine, once
                      * the history has published them (one acquire a group, not one per thread, each of
                      * which would invalidate the SM's L1) and every warp is done with the last layer's */
            if (l > 0)
                group_sync();
            if (wt == 0 && L > 0) {
                flag_wait(&flags[b], gen << 8 | (unsigned)(l + 1));
                gp_fence_async_global();
                gp_fence_async_smem();
                gp_bulk_load((void *)kvs, kvl, (unsigned)C::kv_bytes, &kvbar[wg - 1]);
            }
        }
        uint32_t a[KS][4];
        float sr0, sr1;
        lean_ln<D>(xs, lv + C::V_LN1, a, sr0, sr1);
        /* per head: q, k, v (one chunk), then its attention; O kept in half2 */
        uint32_t oh[H][HNT][2];
        float om0 = 0.0f, om1 = 0.0f;
        /* the heads' loop rolled (its code unrolled over heads overflowed the instruction cache: 1.2x slower at
         * B=512, bench/NOTES.md), O's heads shifting down oh each iteration, so that they stay in registers */
#pragma unroll 1
        for (int h = 0; h < H; h++) {
            int acc[3 * HNT][4];
            lean_mma<3 * DH, KS>(acc, a, rg.take(), 3 * DH * 32, false);
            gp_wg_wait0();
            gp_wg_pin(acc);
            rg.give();
            rg.s++;
            uint4 qf[QK];
            float d0 = 0.0f, d1 = 0.0f;
            uint32_t vs[HNT][2];
            {
                float4 q[HNT];
#pragma unroll
                for (int j = 0; j < HNT; j++) {
                    q[j] = deq(acc[j], sr0, sr1, lv[C::V_QKV + h * 3 * DH / 2 + 4 * j + t]);
                    const float4 k = deq(acc[HNT + j], sr0, sr1, lv[C::V_QKV + h * 3 * DH / 2 + 4 * (HNT + j) + t]);
                    const float4 v =
                        deq(acc[2 * HNT + j], sr0, sr1, lv[C::V_QKV + h * 3 * DH / 2 + 4 * (2 * HNT + j) + t]);
                    d0 = fmaf(q[j].x, k.x, fmaf(q[j].y, k.y, d0));
                    d1 = fmaf(q[j].z, k.z, fmaf(q[j].w, k.w, d1));
                    vs[j][0] = h2u(v.x, v.y);
                    vs[j][1] = h2u(v.z, v.w);
                    if (HIST) {
                        const int c = j * 8 + t * 2;
                        *(uint32_t *)&Ks[tok0 * C::LDK + c] = h2u(k.x, k.y);
                        *(uint32_t *)&Ks[tok1 * C::LDK + c] = h2u(k.z, k.w);
                        *(uint32_t *)&Vs[tok0 * C::LDK + c] = vs[j][0];
                        *(uint32_t *)&Vs[tok1 * C::LDK + c] = vs[j][1];
                    }
                }
#pragma unroll
                for (int kk = 0; kk < QK; kk++)
                    qf[kk] = make_uint4(h2u(q[2 * kk].x, q[2 * kk].y), h2u(q[2 * kk].z, q[2 * kk].w),
                                        h2u(q[2 * kk + 1].x, q[2 * kk + 1].y), h2u(q[2 * kk + 1].z, q[2 * kk + 1].w));
            }
            float o[HNT][4];
            Attn at;
            if (HIST) { /* head h's keys and values to the cache, then causal attention from the staging */
                group_sync();
                if (valid)
                    store_kv<D, DH>(Ks, Vs, 0, 0, nkr, kvl, h, 1, wt, 128);
                at = attend<D, DH, true, true>(qf, make_float2(0.0f, 0.0f), Ks, Vs, NULL, h, (warp & 3) + 1, L, tok0,
                                               tok1, sl2, o);
                group_sync(); /* before the next head's keys and values overwrite these */
                if (h == H - 1 && valid && wt == 0) /* the group's layer l is in the cache */
                    flag_publish(&flags[b], gen << 8 | (unsigned)(l + 1));
            } else {
                const float2 ss = make_float2(gp_quad_sum(d0), gp_quad_sum(d1));
                if (h == 0 && L > 0)
                    gp_mbar_wait(&kvbar[wg - 1], (unsigned)l & 1);
                at = attend<D, DH, false, false, true>(qf, ss, NULL, NULL, kvs, h, nkr / 16, L, tok0, tok1, sl2, o);
            }
#pragma unroll
            for (int i = 0; i + 1 < H; i++)
#pragma unroll
                for (int j = 0; j < HNT; j++)
                    oh[i][j][0] = oh[i + 1][j][0], oh[i][j][1] = oh[i + 1][j][1];
#pragma unroll
            for (int j = 0; j < HNT; j++) {
                const float2 v0 = u2f(vs[j][0]), v1 = u2f(vs[j][1]);
                const float4 y = make_float4(fmaf(at.ps0, v0.x, o[j][0]) * at.i0, fmaf(at.ps0, v0.y, o[j][1]) * at.i0,
                                             fmaf(at.ps1, v1.x, o[j][2]) * at.i1, fmaf(at.ps1, v1.y, o[j][3]) * at.i1);
                oh[H - 1][j][0] = h2u(y.x, y.y);
                oh[H - 1][j][1] = h2u(y.z, y.w);
                om0 = fmaxf(om0, fmaxf(fabsf(y.x), fabsf(y.y)));
                om1 = fmaxf(om1, fmaxf(fabsf(y.z), fabsf(y.w)));
            }
        }
        { /* x += out(O): O quantized per whole row (head h is k-step h) */
            const Quant q0 = quant_of_half(gp_quad_max(om0)), q1 = quant_of_half(gp_quad_max(om1));
            const __half2 mul0 = __float2half2_rn(q0.mul), mul1 = __float2half2_rn(q1.mul);
#pragma unroll
            for (int h = 0; h < H; h++) {
                const __half2 *p = (const __half2 *)oh[h];
                a[h][0] = q8w(p[0], p[2], mul0);
                a[h][1] = q8w(p[1], p[3], mul1);
                a[h][2] = q8w(p[4], p[6], mul0);
                a[h][3] = q8w(p[5], p[7], mul1);
            }
            int acc[NT][4];
            lean_mma<D, KS>(acc, a, rg.take(), D * 32, false);
            gp_wg_wait0();
            gp_wg_pin(acc);
            rg.give();
            rg.s++;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const float4 y = deq(acc[j], q0.scale, q1.scale, lv[C::V_OUT + 4 * j + t]);
                float4 &x = xs[j * 32 + lane];
                x = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
            }
        }
        /* x += down(gelu(up(LN2(x)))): the hidden layer whole in half2,
         * quantized per whole row; down summed over it in int32 */
        lean_ln<D>(xs, lv + C::V_LN2, a, sr0, sr1);
        __half2 hid[NCH][16][2];
        __half2 hm0 = __float2half2_rn(0.0f), hm1 = hm0;
#pragma unroll
        for (int c = 0; c < NCH; c++) {
            const uint8_t *bc = rg.take();
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                int acc[8][4];
                lean_mma<64, KS>(acc, a, bc + hf * 2048, 128 * 32, false);
                gp_wg_wait0();
                gp_wg_pin(acc);
                if (hf == 1)
                    rg.give();
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const float4 y = deq(acc[j], sr0, sr1, lv[C::V_UP + c * 64 + hf * 32 + 4 * j + t]);
                    const int jj = hf * 8 + j;
                    hid[c][jj][0] = gelu2(h2sat(y.x, y.y));
                    hid[c][jj][1] = gelu2(h2sat(y.z, y.w));
                    hm0 = __hmax2(hm0, __habs2(hid[c][jj][0]));
                    hm1 = __hmax2(hm1, __habs2(hid[c][jj][1]));
                }
            }
            rg.s++;
        }
        {
            const float2 m0 = __half22float2(hm0), m1 = __half22float2(hm1);
            const Quant q0 = quant_of_half(gp_quad_max(fmaxf(m0.x, m0.y)));
            const Quant q1 = quant_of_half(gp_quad_max(fmaxf(m1.x, m1.y)));
            const __half2 mul0 = __float2half2_rn(q0.mul), mul1 = __float2half2_rn(q1.mul);
            uint32_t a2[4 * NCH][4];
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int kk = 0; kk < 4; kk++) {
                    a2[4 * c + kk][0] = q8w(hid[c][4 * kk][0], hid[c][4 * kk + 1][0], mul0);
                    a2[4 * c + kk][1] = q8w(hid[c][4 * kk][1], hid[c][4 * kk + 1][1], mul1);
                    a2[4 * c + kk][2] = q8w(hid[c][4 * kk + 2][0], hid[c][4 * kk + 3][0], mul0);
                    a2[4 * c + kk][3] = q8w(hid[c][4 * kk + 2][1], hid[c][4 * kk + 3][1], mul1);
                }
            const uint8_t *bc[NCH]; /* every down chunk landed, then their wgmmas back to back */
#pragma unroll
            for (int c = 0; c < NCH; c++) {
                bc[c] = rg.take();
                rg.s++;
            }
            int acc[NT][4];
            gp_wg_fence();
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
                    gp_wgmma_s8<D>(acc, a2[4 * c + kk], gp_desc(bc[c] + kk * D * 32), c > 0 || kk > 0);
            gp_wg_commit();
            gp_wg_wait0();
            gp_wg_pin(acc);
#pragma unroll
            for (int c = 0; c < NCH; c++)
                rg.give(NCH - c);
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const float4 y = deq(acc[j], q0.scale, q1.scale, lv[C::V_DOWN + 4 * j + t]);
                float4 &x = xs[j * 32 + lane];
                x = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
            }
        }
    }
    if (HIST && valid && L == 0) { /* with no history, u = LN_f(0) = ln_f.bias */
        for (int i = wt; i < D; i += 128)
            bt.user_vec[(size_t)b * D + i] = fw->lnf_b[i];
        return;
    }
    if (!HIST)
        pdl_wait_primary();
    if (valid) /* rows: 0 in a group past the last tile, L for a history */
        rows_out<D, HIST>(fw, bt, xs, b, L, first, rows, tok0, tok1);
}

/* ---- one-time conversion of the weights ----------------------------------------------------------- */

/* pi: A-fragment position p (0..31) of a k-step -> the input column (0..31)
 * whose value the accumulator layout puts there. */
__host__ __device__ inline int pi32(int p)
{
    const int hi = p & 16, q = p & 15, t = q >> 2, i = q & 3;
    return hi + (i < 2 ? 2 * t + i : 8 + 2 * t + i - 2);
}

/* The row of W [3d, d] (q, k, v blocks of d rows) at row n of the head
 * order: per head, its q, k and v rows, then the head's column. */
__device__ __forceinline__ int head_row(int n, int d, int dh)
{
    const int h = n / (3 * dh), s = n / dh % 3, c = n % dh;
    return s * d + h * dh + c;
}

/* Wf[(nt * kpt + kp) * 32 + lane] from W [rows, kp_bytes] row-major int8:
 * row n of Wf is row perm(n) of W (perm: identity, or the head order of
 * the qkv rows when d > 0). */
__global__ void to_fragments(const int8_t *W, int ldw, int n_rows, int k, int d, int dh, uint4 *Wf)
{
    const int kpt = k / 64, total = n_rows / 8 * kpt * 32;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int lane = i % 32, kp = i / 32 % kpt, nt = i / 32 / kpt, g = lane >> 2, t = lane & 3;
        const int n = d > 0 ? head_row(nt * 8 + g, d, dh) : nt * 8 + g;
        uint32_t w[4];
        for (int r = 0; r < 4; r++) { /* b0, b1 of k-step 2kp, then of 2kp + 1 */
            const int k0 = (2 * kp + (r >> 1)) * 32 + (r & 1) * 16;
            uint32_t v = 0;
            for (int byte = 0; byte < 4; byte++)
                v |= (uint32_t)(uint8_t)W[(size_t)n * ldw + k0 + pi32(4 * t + byte)] << (8 * byte);
            w[r] = v;
        }
        Wf[i] = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

/* Chunk (rows n0 .. n0 + N - 1, input columns k0 .. k0 + K - 1 of W, rows
 * in head order where d > 0) of a stream, in wgmma's K-major layout
 * without swizzle (gpu/sm90.cuh), input columns permuted by pi. */
__global__ void to_stream(const int8_t *W, int ldw, int n0, int N, int k0, int K, int d, int dh, uint8_t *dst)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N * K; i += gridDim.x * blockDim.x) {
        const int n = i / K, kk = i % K, ks = kk / 32, p = kk % 32;
        const int r = d > 0 ? head_row(n0 + n, d, dh) : n0 + n;
        dst[ks * N * 32 + (n / 8) * 256 + (p / 16) * 128 + (n % 8) * 16 + p % 16] =
            (uint8_t)W[(size_t)r * ldw + k0 + ks * 32 + pi32(p)];
    }
}

/* qkv scales and biases into head order. */
__global__ void to_head_order(const float *src, int d, int dh, float *dst)
{
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < 3 * d; n += gridDim.x * blockDim.x)
        dst[n] = src[head_row(n, d, dh)];
}

/* n / 2 float4 {s[2i], s[2i + 1], b[2i], b[2i + 1]}: a column pair's
 * scales and biases (or LayerNorm weights and biases), the lean way's
 * vectors. */
__global__ void to_pairs(const float *s, const float *b, int n, float4 *dst)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n / 2; i += gridDim.x * blockDim.x)
        dst[i] = make_float4(s[2 * i], s[2 * i + 1], b[2 * i], b[2 * i + 1]);
}

static_assert(LM_MAX_LAYERS < 256, "the history flags count layers in 8 bits");
typedef void (*kern_t)(const FW *, gp_batch, __half *, unsigned long long *);

} // namespace

struct gp_fast {
    FW w;      /* device pointers, host copy */
    FW *d_w;
    void *pool; /* every buffer below d_w, one allocation */
    __half *kv;
    size_t hsmem, csmem;
    kern_t hist, cand, cand_few; /* cand_few: registers uncapped, for small batches */
    kern_t wg_cand;              /* the wgmma way's candidates, NULL where there is none */
    size_t wg_smem;
    uint8_t *stream;             /* FW::stream and its offsets, where wg_cand */
    /* the split path (d_model 128 and 256), NULL where there is none */
    kern_t split_hist, split_cand, split_cand_many;
    size_t split_hsmem, split_csmem;
    int split_fit; /* split_cand's blocks resident at once on the GPU */
    /* the wide way (sm_90a, d_model 128 and 256, d_ffn a multiple of 256), NULL where there is none */
    kern_t wide_hist, wide_cand;
    size_t wide_smem; /* both kernels' */
    uint8_t *wide; /* FW::wide */
    int wide_from;      /* FAST_AUTO: split batches of at least this many tiles take the wide way (0: wide_line) */
    int wide_hist_from; /* wide batches of at least this many requests run the wide history, else the split way's */
    /* the lean way (sm_90a, d_model 128, d_ffn 256 or 512), NULL where there is none */
    kern_t lean_hist, lean_cand;
    size_t lean_hsmem, lean_smem;
    int lean_from;      /* FAST_AUTO: batches of at least this many tiles take the lean way */
    int lean_hist_from; /* lean batches of at least this many requests run the lean history, else the split way's */
    uint8_t *lean; /* FW::lean, its offsets, then the vectors */
    unsigned long long *flags; /* per request: the history's layers done, call << 8 | n */
    int pdl;                   /* sm_90: candidates launched alongside the history */
    int mode;        /* FAST_AUTO, or the way RANKD_GPU_FAST forces */
    int split_below; /* FAST_AUTO: batches of fewer tiles take the split way */
};

enum { FAST_AUTO, FAST_ROWS, FAST_WGMMA, FAST_SPLIT, FAST_WIDE, FAST_LEAN };

template <int D, int DH> static void pick(gp_fast *f)
{
    f->hist = fast_kernel<D, DH, true, 1>;
    f->cand = fast_kernel<D, DH, false, cand_blocks<D>()>;
    f->cand_few = fast_kernel<D, DH, false, 1>;
    f->hsmem = Cfg<D, DH>::hist_smem;
    f->csmem = Cfg<D, DH>::cand_smem;
}

template <int D> static void pick_split(gp_fast *f, int d_ffn)
{
    f->split_hist = split_kernel<D, true, 1>;
    f->split_cand = split_kernel<D, false, 1>;
    f->split_cand_many = split_kernel<D, false, 4>;
    f->split_hsmem = SCfg<D>::smem(true, d_ffn);
    f->split_csmem = SCfg<D>::smem(false, d_ffn);
    f->split_below = D == 128 ? SPLIT_TILES : INT_MAX;
}

template <int D> static void pick_wide(gp_fast *f, int d_ffn)
{
    f->wide_hist = split_kernel<D, true, 1, true>;
    f->wide_cand = split_kernel<D, false, 1, true>;
    using S = SCfg<D>; /* the ring, the A tile, 4 groups' hidden layers and partials */
    f->wide_smem = WIDE_HEAD + (size_t)WIDE_NBUF * WIDE_CHUNK + S::KS * 2048 + 4 * S::wide_group(d_ffn);
}

/* The weight streams of the wgmma way (FW::stream) and the lean way
 * (FW::lean): per layer, the chunks in the order their kernels take them,
 * each in wgmma's layout with input columns permuted (to_stream): first
 * each head's q, k, v rows (3 dh x d); then, the wgmma way (fast_kernel),
 * out per 64 rows and per 128 hidden columns the two up chunks and the down
 * chunks (64 rows each; down: those 128 input columns); the lean way
 * (lean_kernel), out whole (d rows), every up chunk of 128 hidden columns,
 * then every down chunk (d rows by its 128 hidden columns). Writes the
 * chunks' offsets to off (n + 1) and their bytes to dst, each where not
 * NULL; returns the chunks' count. */
static int stream_plan(const lm_config *c, bool lean, uint32_t *off, const gp_weights *w, uint8_t *dst)
{
    const int d = c->d_model, dh = d / c->n_heads, f = c->d_ffn;
    int n = 0;
    uint32_t at = 0;
    auto emit = [&](const gp_lin *m, int n0, int rows, int k0, bool head) {
        if (off)
            off[n] = at;
        if (dst)
            to_stream<<<32, 256>>>(m->q, m->kp, n0, rows, k0, 128, head ? d : 0, dh, dst + at);
        at += (uint32_t)rows * 128;
        n++;
    };
    for (int l = 0; l < c->n_layers; l++) {
        const gp_layer *g = w ? &w->layers[l] : NULL;
        for (int h = 0; h < c->n_heads; h++)
            emit(g ? &g->qkv : NULL, h * 3 * dh, 3 * dh, 0, true);
        if (lean) {
            emit(g ? &g->out : NULL, 0, d, 0, false);
            for (int c0 = 0; c0 < f; c0 += 128)
                emit(g ? &g->up : NULL, c0, 128, 0, false);
            for (int c0 = 0; c0 < f; c0 += 128)
                emit(g ? &g->down : NULL, 0, d, c0, false);
            continue;
        }
        for (int ng = 0; ng < d / 64; ng++)
            emit(g ? &g->out : NULL, ng * 64, 64, 0, false);
        for (int c0 = 0; c0 < f; c0 += 128) {
            emit(g ? &g->up : NULL, c0, 64, 0, false);
            emit(g ? &g->up : NULL, c0 + 64, 64, 0, false);
            for (int ng = 0; ng < d / 64; ng++)
                emit(g ? &g->down : NULL, ng * 64, 64, c0, false);
        }
    }
    if (off)
        off[n] = at;
    return n;
}

/* The wide way's stream (FW::wide): per layer, each product in the order
 * split_kernel takes it (of each slice's head: k, q, v; out; the up units
 * s, s + 4, s + 8, ... of slice s; down), as its chunks along K, a
 * chunk the 4 slices' N rows by WIDE_CHUNK / 4N input columns. Written to
 * dst unless NULL; returns the chunks' count. */
static int wide_plan(const lm_config *c, const gp_weights *w, uint8_t *dst)
{
    const int d = c->d_model, dh = d / c->n_heads, f = c->d_ffn;
    int n = 0;
    /* rows n0(sl) .. n0(sl) + N - 1 of m for slice sl, input columns 0 .. k - 1 */
    auto emit = [&](const gp_lin *m, int k, int N, bool head, auto n0) {
        const int kc = WIDE_CHUNK / (4 * N);
        for (int k0 = 0; k0 < k; k0 += kc, n++)
            for (int sl = 0; dst && sl < 4; sl++)
                to_stream<<<16, 256>>>(m->q, m->kp, n0(sl), N, k0, kc, head ? d : 0, dh,
                                       dst + (size_t)n * WIDE_CHUNK + (size_t)sl * N * kc);
    };
    for (int l = 0; l < c->n_layers; l++) {
        const gp_layer *g = w ? &w->layers[l] : NULL;
        for (int part : {1, 0, 2}) /* k, q, v: rows of head sl in head order */
            emit(g ? &g->qkv : NULL, d, dh, true, [&](int sl) { return (3 * sl + part) * dh; });
        emit(g ? &g->out : NULL, d, dh, false, [&](int sl) { return sl * dh; });
        for (int i = 0; i < f / 256; i++)
            emit(g ? &g->up : NULL, d, 64, false, [&](int sl) { return (sl + 4 * i) * 64; });
        emit(g ? &g->down : NULL, f, dh, false, [&](int sl) { return sl * dh; });
    }
    return n;
}

/* A weight stream (stream_plan; lean: the lean way's, else the wgmma
 * way's) on the device in one allocation, *buf: the chunks, their n + 1
 * offsets after them (*off, *n), then extra bytes at *at (16-aligned) for
 * the caller. 0, or -1 with err. */
static int upload_stream(const lm_config *c, bool lean, const gp_weights *w, size_t extra, uint8_t **buf,
                         const uint32_t **off, int *n, size_t *at, char *err, size_t errsz)
{
    const int k = stream_plan(c, lean, NULL, NULL, NULL);
    const size_t offb = sizeof(uint32_t) * (k + 1);
    uint32_t *h = (uint32_t *)malloc(offb);
    if (!h)
        return cm_errf(err, errsz, "gpu fast path: out of memory");
    stream_plan(c, lean, h, NULL, NULL);
    const size_t bytes = h[k];
    *at = bytes + (offb + 15) / 16 * 16;
    cudaError_t e = cudaMalloc(buf, *at + extra);
    if (e == cudaSuccess)
        e = cudaMemcpy(*buf + bytes, h, offb, cudaMemcpyHostToDevice);
    free(h);
    if (e == cudaSuccess) {
        stream_plan(c, lean, NULL, w, *buf);
        e = cudaGetLastError();
    }
    *off = (const uint32_t *)(*buf + bytes);
    *n = k;
    return gp_cuda_err(e, lean ? "lean-way weight stream" : "wgmma weight stream", err, errsz);
}

/* The lean way's vectors of nl layers at v, in LCfg<F>'s order, a float4
 * per column pair: qkv's scales and biases (head order: fw's), out's, up's,
 * down's, then both LayerNorms' weights and biases. */
template <int F> static void lean_vectors(const FW &fw, const gp_weights *w, int nl, float4 *v)
{
    using C = LCfg<F>;
    for (int l = 0; l < nl; l++) {
        const gp_layer &g = w->layers[l];
        float4 *p = v + (size_t)l * C::V_N;
        to_pairs<<<4, 256>>>(fw.L[l].qkv_s, fw.L[l].qkv_b, 3 * C::D, p + C::V_QKV);
        to_pairs<<<4, 256>>>(g.out.scale, g.out.bias, C::D, p + C::V_OUT);
        to_pairs<<<4, 256>>>(g.up.scale, g.up.bias, F, p + C::V_UP);
        to_pairs<<<4, 256>>>(g.down.scale, g.down.bias, C::D, p + C::V_DOWN);
        to_pairs<<<4, 256>>>(g.ln1_w, g.ln1_b, C::D, p + C::V_LN1);
        to_pairs<<<4, 256>>>(g.ln2_w, g.ln2_b, C::D, p + C::V_LN2);
    }
}

/* An integer from the environment, dflt where it is unset or empty. */
static int env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : dflt;
}

int gp_fast_supports(const gp_weights *w, char *why, size_t whysz)
{
    const lm_config *c = &w->cfg;
    const int dh = c->n_heads > 0 ? c->d_model / c->n_heads : 0;
    const struct {
        bool ok;
        const char *msg;
    } rules[] = {
        {w->int8 != 0, "the model is not int8"},
        {(c->d_model == 64 && dh == 16) || (c->d_model == 128 && dh == 32) || (c->d_model == 256 && dh == 64),
         "d_model/heads is not 64/4, 128/4 or 256/4"},
        {c->d_ffn % 128 == 0, "d_ffn is not a multiple of 128"},
        {c->max_hist <= MAXK, "max_hist is over 64"},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        if (!rules[i].ok) {
            snprintf(why, whysz, "%s", rules[i].msg);
            return 0;
        }
    return 1;
}

void gp_fast_free(gp_fast *f)
{
    if (!f)
        return;
    cudaFree(f->pool);
    cudaFree(f->stream);
    cudaFree(f->wide);
    cudaFree(f->lean);
    cudaFree(f->kv);
    cudaFree(f->flags);
    free(f);
}

int gp_fast_new(gp_fast **out, const gp_weights *w, int max_batch, char *err, size_t errsz)
{
    *out = NULL;
    const lm_config *c = &w->cfg;
    const int d = c->d_model, dh = d / c->n_heads, f = c->d_ffn, nl = c->n_layers;
    gp_fast *s = (gp_fast *)calloc(1, sizeof *s);
    if (!s)
        return cm_errf(err, errsz, "gpu fast path: out of memory");
    int dev = 0, major = 0, minor = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (d == 64)
        pick<64, 16>(s);
    else if (d == 128)
        pick<128, 32>(s);
    else
        pick<256, 64>(s);
    if (major >= 9 && d == 128) /* the split path's history needs clusters */
        pick_split<128>(s, f);
    else if (major >= 9 && d == 256)
        pick_split<256>(s, f);
    if (major == 9 && minor == 0 && d == 128) { /* code for sm_90a runs on 9.0 only */
        using C = Cfg<128, 32>;
        s->wg_cand = fast_kernel<128, 32, false, 3, true>;
        s->wg_smem = WG_HEAD + WG_NBUF * WG_CHUNK + WARPS * (C::xs_bytes + C::ov_bytes); /* the ring, the warps' */
    }
    if (major == 9 && minor == 0 && f % 256 == 0) { /* the wide way: sm_90a, as many up units for every slice */
        if (d == 128)
            pick_wide<128>(s, f);
        else if (d == 256)
            pick_wide<256>(s, f);
        int optin = 0;
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (s->wide_smem > (size_t)optin) /* a d_ffn too wide for its hidden layers on chip */
            s->wide_hist = s->wide_cand = NULL;
    }
    if (major == 9 && minor == 0 && d == 128 && (f == 256 || f == 512)) { /* the lean way: sm_90a */
        /* measurement switches: where auto starts the lean way (tiles) and its own history (requests) */
        s->lean_cand = f == 256 ? lean_kernel<256, false> : lean_kernel<512, false>;
        s->lean_hist = f == 256 ? lean_kernel<256, true> : lean_kernel<512, true>;
        s->lean_smem = f == 256 ? LCfg<256>::smem_cand(nl) : LCfg<512>::smem_cand(nl);
        s->lean_hsmem = f == 256 ? LCfg<256>::smem_hist(nl) : LCfg<512>::smem_hist(nl);
        int optin = 0;
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (s->lean_hsmem > (size_t)optin || s->lean_smem > (size_t)optin) /* too many layers' vectors */
            s->lean_cand = s->lean_hist = NULL;
        s->lean_from = env_int("RANKD_GPU_LEAN_TILES", LEAN_TILES);
        s->lean_hist_from = env_int("RANKD_GPU_LEAN_HIST_B", LEAN_HIST_B);
    }
    { /* RANKD_GPU_FAST=rows|wgmma|split|wide|lean forces a path, for tests and comparisons */
        const char *m = getenv("RANKD_GPU_FAST");
        s->mode = !m || !*m || !strcmp(m, "auto") ? FAST_AUTO
                  : !strcmp(m, "rows")            ? FAST_ROWS
                  : !strcmp(m, "wgmma")           ? FAST_WGMMA
                  : !strcmp(m, "split")           ? FAST_SPLIT
                  : !strcmp(m, "wide")            ? FAST_WIDE
                  : !strcmp(m, "lean")            ? FAST_LEAN
                                                  : -1;
        if (s->mode < 0 || (s->mode == FAST_SPLIT && !s->split_hist) || (s->mode == FAST_WGMMA && !s->wg_cand) ||
            (s->mode == FAST_WIDE && !s->wide_cand) || (s->mode == FAST_LEAN && !s->lean_cand)) {
            if (s->mode < 0)
                cm_errf(err, errsz, "RANKD_GPU_FAST is '%s': it takes auto, rows, wgmma, split, wide or lean", m);
            else if (s->mode == FAST_LEAN)
                cm_errf(err, errsz, "RANKD_GPU_FAST is lean, which needs d_model 128 (here %d), d_ffn 256 or 512 "
                        "(here %d), at most 3 layers (here %d: every layer's vectors in shared memory) and a GPU "
                        "of compute capability 9.0 (here %d.%d)", d, f, nl, major, minor);
            else if (s->mode == FAST_WIDE)
                cm_errf(err, errsz, "RANKD_GPU_FAST is wide, which needs d_model 128 or 256 (here %d), d_ffn a "
                        "multiple of 256 that fits shared memory (here %d) and a GPU of compute capability 9.0 "
                        "(here %d.%d)", d, f, major, minor);
            else if (s->mode == FAST_WGMMA)
                cm_errf(err, errsz, "RANKD_GPU_FAST is wgmma, which needs d_model 128 (here %d) and a GPU of "
                        "compute capability 9.0 (here %d.%d)", d, major, minor);
            else
                cm_errf(err, errsz, "RANKD_GPU_FAST is split, which needs d_model 128 or 256 (here %d) and a GPU "
                        "of compute capability 9 or over (here %d)", d, major);
            free(s);
            return -1;
        }
    }
    if (s->mode != FAST_LEAN && s->lean_from == INT_MAX) /* auto never takes the lean way: no stream for it */
        s->lean_cand = s->lean_hist = NULL;
    /* per layer: four fragment-order matrices (d x 3d, d x d, d x f, f x d
     * bytes) and the qkv scales and biases in head order */
    const size_t mat = (size_t)3 * d * d + (size_t)d * d + 2 * (size_t)d * f, vec = sizeof(float) * 6 * d;
    const size_t per_layer = mat + vec;
    uint8_t *p = NULL;
    FW &fw = s->w;
    GP_TRY(cudaMalloc(&s->pool, per_layer * nl + sizeof(FW)), "fast-path weights");
    p = (uint8_t *)s->pool;
    for (int l = 0; l < nl; l++) {
        const gp_layer &g = w->layers[l];
        FLayer &fl = fw.L[l];
        uint4 *qkv = (uint4 *)p, *o = (uint4 *)(p + (size_t)3 * d * d), *up = (uint4 *)(p + (size_t)4 * d * d),
              *down = (uint4 *)(p + (size_t)4 * d * d + (size_t)d * f);
        float *qs = (float *)(p + mat), *qb = qs + 3 * d;
        p += per_layer;
        to_fragments<<<64, 256>>>(g.qkv.q, g.qkv.kp, 3 * d, d, d, dh, qkv);
        to_fragments<<<64, 256>>>(g.out.q, g.out.kp, d, d, 0, 0, o);
        to_fragments<<<64, 256>>>(g.up.q, g.up.kp, f, d, 0, 0, up);
        to_fragments<<<64, 256>>>(g.down.q, g.down.kp, d, f, 0, 0, down);
        to_head_order<<<4, 256>>>(g.qkv.scale, d, dh, qs);
        to_head_order<<<4, 256>>>(g.qkv.bias, d, dh, qb);
        GP_TRY(cudaGetLastError(), "fast-path weight conversion");
        fl = (FLayer){qkv, o, up, down, qs, qb, g.out.scale, g.out.bias, g.up.scale, g.up.bias, g.down.scale,
                      g.down.bias, g.ln1_w, g.ln1_b, g.ln2_w, g.ln2_b};
    }
    fw.n_layers = nl;
    fw.f = f;
    fw.max_hist = c->max_hist;
    fw.dp = w->dp;
    fw.item_q = w->item_q;
    fw.item_scale = w->item_scale;
    fw.action_emb = w->action_emb;
    fw.pos_emb = w->pos_emb;
    fw.lnf_w = w->lnf_w;
    fw.lnf_b = w->lnf_b;
    fw.head_w = w->head_w;
    fw.head_b = w->head_b;
    if (s->wg_cand) { /* the wgmma way's stream, its offsets after it */
        size_t at;
        if (upload_stream(c, false, w, 0, &s->stream, &fw.stream_off, &fw.n_chunks, &at, err, errsz))
            goto fail;
        fw.stream = s->stream;
    }
    if (s->wide_cand) { /* the wide way's stream */
        const int n = wide_plan(c, NULL, NULL);
        GP_TRY(cudaMalloc(&s->wide, (size_t)n * WIDE_CHUNK), "wide-way weight stream");
        wide_plan(c, w, s->wide);
        GP_TRY(cudaGetLastError(), "wide-way weight stream");
        fw.wide = s->wide;
        fw.n_wide = n;
    }
    if (s->lean_cand) { /* the lean way's stream, its offsets, then every layer's vectors */
        const int nv = f == 256 ? LCfg<256>::V_N : LCfg<512>::V_N;
        size_t at;
        if (upload_stream(c, true, w, (size_t)nl * nv * sizeof(float4), &s->lean, &fw.lean_off, &fw.n_lean, &at,
                          err, errsz))
            goto fail;
        float4 *v = (float4 *)(s->lean + at);
        if (f == 256)
            lean_vectors<256>(fw, w, nl, v);
        else
            lean_vectors<512>(fw, w, nl, v);
        GP_TRY(cudaGetLastError(), "lean-way vectors");
        fw.lean = s->lean;
        fw.lean_vec = v;
    }
    s->d_w = (FW *)p;
    GP_TRY(cudaMemcpy(s->d_w, &fw, sizeof fw, cudaMemcpyHostToDevice), "fast-path weights");
    GP_TRY(cudaMalloc(&s->kv, sizeof(__half) * (size_t)max_batch * nl * 2 * MAXK * d), "key/value cache");
    GP_TRY(cudaMalloc(&s->flags, sizeof *s->flags * (size_t)max_batch), "history flags");
    GP_TRY(cudaMemset(s->flags, 0, sizeof *s->flags * (size_t)max_batch), "history flags");
    s->pdl = major >= 9;
    { /* each kernel's dynamic shared memory, over the 48 KB default where it needs it */
        const struct {
            kern_t k;
            size_t bytes;
            const char *what;
        } lim[] = {{s->hist, s->hsmem, "shared memory of the history kernel"},
                   {s->cand, s->csmem, "shared memory of the candidate kernel"},
                   {s->cand_few, s->csmem, "shared memory of the candidate kernel"},
                   {s->wg_cand, s->wg_smem, "shared memory of the wgmma candidate kernel"},
                   {s->split_hist, s->split_hsmem, "shared memory of the split history kernel"},
                   {s->split_cand, s->split_csmem, "shared memory of the split candidate kernel"},
                   {s->split_cand_many, s->split_csmem, "shared memory of the split candidate kernel"},
                   {s->wide_hist, s->wide_smem, "shared memory of the wide history kernel"},
                   {s->wide_cand, s->wide_smem, "shared memory of the wide candidate kernel"},
                   {s->lean_cand, s->lean_smem, "shared memory of the lean candidate kernel"},
                   {s->lean_hist, s->lean_hsmem, "shared memory of the lean history kernel"}};
        for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
            if (lim[i].k) /* NULL: a way this GPU or model does not have */
                GP_TRY(cudaFuncSetAttribute((const void *)lim[i].k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)lim[i].bytes),
                       lim[i].what);
    }
    if (s->split_hist) {
        int per_sm = 0, sms = 0;
        GP_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, (const void *)s->split_cand, 4 * 32,
                                                             s->split_csmem),
               "occupancy of the split candidate kernel");
        GP_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "the GPU's SM count");
        s->split_fit = per_sm * sms;
        /* the teacher's wide way where the split way's blocks would no longer fit at once (wide_line); the
         * student's not at all, as fast as the split way at B = 16 and slower than the wgmma way from
         * B = 128 (bench/NOTES.md) */
        s->wide_from = d == 256 ? env_int("RANKD_GPU_WIDE_TILES", 0) : INT_MAX;
        s->wide_hist_from = env_int("RANKD_GPU_WIDE_HIST_B", WIDE_HIST_B); /* measurement switches, as the lean way's */
    }
    GP_TRY(cudaDeviceSynchronize(), "fast-path weight conversion");
    *out = s;
    return 0;
fail:
    gp_fast_free(s);
    return -1;
}

/* The teacher's auto line between the split and the wide way: wide once the split way's candidate blocks
 * (4 a tile) and its history's (4 a request) no longer fit the GPU at once, where they would run in two
 * waves. H100, 512 candidates a request: the split way 97.6 / 111.3 us at B = 2 / 4, the wide 140 at both;
 * at B = 8 (288 blocks of 264) the split way 197.4 us, the wide 147.9 (bench/NOTES.md, session 24). */
static bool wide_line(const gp_fast *s, const gp_batch *b)
{
    return s->wide_from ? b->n_tiles >= s->wide_from : 4 * (b->n_tiles + b->B) > s->split_fit;
}

int gp_fast_run(gp_fast *s, cudaStream_t st, const gp_batch *b, char *err, size_t errsz)
{
    if (b->B == 0)
        return 0;
    const bool lean = s->lean_cand && (s->mode == FAST_LEAN || (s->mode == FAST_AUTO && b->n_tiles >= s->lean_from));
    const bool split = !lean && (s->mode == FAST_SPLIT || s->mode == FAST_WIDE ||
                                 (s->mode == FAST_AUTO && s->split_hist && b->n_tiles < s->split_below));
    const bool wide = split && s->wide_cand &&
                      (s->mode == FAST_WIDE || (s->mode == FAST_AUTO && wide_line(s, b)));
    const bool wide_hist = wide && (s->mode == FAST_WIDE || b->B >= s->wide_hist_from);
    /* the lean way's candidates read the history that the split way's cluster writes where too few requests
     * would leave the lean history's chain to few SMs */
    const bool lean_hist = lean && (b->B >= s->lean_hist_from || !s->split_hist);
    const bool split_hist = split || (lean && !lean_hist);
    cudaLaunchAttribute at;
    cudaLaunchConfig_t lc = {};
    lc.stream = st;
    lc.attrs = &at;
    if (lean_hist) { /* two requests a block */
        lc.numAttrs = 0;
        lc.gridDim = dim3((b->B + LEAN_WGS - 1) / LEAN_WGS);
        lc.blockDim = dim3(LEAN_THREADS);
        lc.dynamicSmemBytes = s->lean_hsmem;
    } else if (wide_hist) { /* a block of 64 rows per request */
        lc.numAttrs = 0;
        lc.gridDim = dim3(b->B);
        lc.blockDim = dim3(16 * 32);
        lc.dynamicSmemBytes = s->wide_smem;
    } else if (split_hist) { /* a cluster of 4 blocks of 16 rows per request */
        at.id = cudaLaunchAttributeClusterDimension;
        at.val.clusterDim.x = 4, at.val.clusterDim.y = 1, at.val.clusterDim.z = 1;
        lc.numAttrs = 1;
        lc.gridDim = dim3(4 * b->B);
        lc.blockDim = dim3(4 * 32);
        lc.dynamicSmemBytes = s->split_hsmem;
    } else { /* a block per request */
        lc.gridDim = dim3(b->B);
        lc.blockDim = dim3(THREADS);
        lc.dynamicSmemBytes = s->hsmem;
    }
    if (gp_cuda_err(cudaLaunchKernelEx(&lc, lean_hist    ? s->lean_hist
                                            : wide_hist  ? s->wide_hist
                                            : split_hist ? s->split_hist
                                                         : s->hist,
                                       (const FW *)s->d_w, *b, s->kv, s->flags),
                    "history kernel", err, errsz))
        return -1;
    if (b->n_tiles == 0)
        return 0;
    /* the candidates, launched to run alongside the history (the flags) */
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    lc.numAttrs = s->pdl;
    lc.gridDim = dim3(lean ? (b->n_tiles + LEAN_WGS - 1) / LEAN_WGS : split && !wide ? 4 * b->n_tiles : b->n_tiles);
    lc.blockDim = dim3(lean ? LEAN_THREADS : wide ? 16 * 32 : split ? 4 * 32 : THREADS);
    const bool wg = !lean && !split && s->wg_cand && (s->mode == FAST_AUTO || s->mode == FAST_WGMMA);
    lc.dynamicSmemBytes = lean    ? s->lean_smem
                          : wide  ? s->wide_smem
                          : split ? s->split_csmem
                          : wg    ? s->wg_smem
                                  : s->csmem;
    /* the split way's candidates: registers uncapped (2 blocks an SM at d_model 128 and 256) while the grid
     * fits the GPU at once, else capped for 4 an SM, spills and all (H200: student B=16 104 -> 86-89 us,
     * B=1 36 -> 38-40 us were it capped; bench/NOTES.md) */
    const kern_t split_cand = 4 * b->n_tiles <= s->split_fit ? s->split_cand : s->split_cand_many;
    const kern_t cand = lean    ? s->lean_cand
                        : wide  ? s->wide_cand
                        : split ? split_cand
                        : wg    ? s->wg_cand
                        : b->n_tiles < FEW_TILES ? s->cand_few : s->cand;
    return gp_cuda_err(cudaLaunchKernelEx(&lc, cand, (const FW *)s->d_w, *b, s->kv, s->flags), "candidate kernel",
                       err, errsz);
}
