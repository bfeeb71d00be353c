/* gpu/retrieve.cu — retrieval on the GPU: the top k items of the catalog for
 * a batch of user vectors, with lm_retrieve's answers (llm/retrieval.h).
 *
 * Three steps, all enqueued on the caller's stream:
 *   1. logits [B, n_items] of every user against every item, into one device
 *      buffer. A block takes up to 64 users and 256 items, so the item table
 *      streams from memory once per 64 users, not once per user. int8 models
 *      sum q_u * q_item in int32 on the tensor cores (mma m16n8k32), then do
 *      the CPU's float steps in the CPU's order, so that their logits are the
 *      CPU's bit for bit; fp32 models run a tiled fp32 GEMM.
 *   2. excluded items get a NaN logit, which the selection skips like any
 *      other NaN (the CPU skips NaN too).
 *   3. the exact top k of each user by radix select. A logit becomes a 64-bit
 *      key: (order-preserving bits of the score) << 32 | ~row, so "higher
 *      score, then lower row" is plain integer order and no two keys are
 *      equal; the k-th largest key is then a threshold with exactly k keys at
 *      or above it, ties included. A block reduces a tile of 8,192 keys to its
 *      own top k (the top k of the whole lies in the union of the tiles'),
 *      level after level until one tile is left, whose top k is sorted.
 *
 * All memory is taken by gp_retr_new. Where max_batch rows of logits would
 * pass GP_RETR_LOGIT_BYTES (catalogs of millions), a batch runs in groups of
 * users that fit. The engine runs on sm_80 and newer (gp_probe), where the
 * int8 MMA is native. */
#include <cub/block/block_scan.cuh>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "gpu/internal.cuh"

#define FULL_MASK 0xffffffffu

/* Selection: a block holds SEL_TILE keys in registers and radix-selects with
 * 11-bit digits. Each level must at least halve the keys, hence the bound on
 * k (the CPU has none; 4,096 is far above what the service asks for). */
#define SEL_THREADS 512
#define SEL_IPT 16
#define SEL_TILE (SEL_THREADS * SEL_IPT)
#define SEL_BINS 2048
#define SEL_PASSES 6 /* 11, 11, 10 bits of the score key, then of the row */
#define GP_RETR_MAX_K (SEL_TILE / 2)
/* Bound on the logits buffer; beyond it a batch runs in groups of users. */
#define GP_RETR_LOGIT_BYTES ((size_t)1 << 30)

/* int8 logits: a block of LQ_WARPS warps; a warp takes LQ_NG groups of 8
 * items against 16 * MT users, and K in steps of LQ_KC bytes staged in
 * shared memory (users) or loaded straight into MMA fragments (items). */
#define LQ_WARPS 8
#define LQ_NG 4
#define LQ_BN (LQ_WARPS * LQ_NG * 8)
#define LQ_KC 128
#define LQ_AS (LQ_KC + 32) /* row stride: 40 words, so a fragment load is conflict-free */

/* fp32 logits: 256 threads, a block tile of 16 * TM users x LF_BN items. */
#define LF_BN 128
#define LF_BK 16

#define QU_THREADS 128

static_assert(SEL_BINS == 4 * SEL_THREADS, "the threshold search gives each thread 4 bins");
static_assert(SEL_IPT % 4 == 0, "logits are loaded as float4");
static_assert(GP_KALIGN == 32, "an int8 MMA step reduces 32 bytes; rows are padded to it");
static_assert(LQ_KC % GP_KALIGN == 0 && LQ_KC / GP_KALIGN == 4, "a K step is 4 MMA steps");
static_assert(LQ_AS % 32 == 0 && (LQ_AS / 4) % 32 == 8, "fragment loads rely on this stride");

namespace {

/* ---- step 1: logits ------------------------------------------------------------- */

/* lm_quantize_row_ref on each user vector (one block each), into rows padded
 * with zeros to dp. The float steps are spelled out (_rn) so that no build
 * flag can fuse or approximate them: the result must be the CPU's. */
__global__ void __launch_bounds__(QU_THREADS)
quantize_users(const float *uv, int d, int dp, int8_t *uq, float *us)
{
    __shared__ float part[QU_THREADS / 32];
    const int b = blockIdx.x, tid = threadIdx.x;
    const float *x = uv + (size_t)b * d;
    float amax = 0.0f;
    for (int i = tid; i < d; i += QU_THREADS) {
        const float a = fabsf(x[i]);
        amax = a > amax ? a : amax; /* the CPU's comparison: a NaN never wins */
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float a = __shfl_xor_sync(FULL_MASK, amax, o);
        amax = a > amax ? a : amax;
    }
    if ((tid & 31) == 0)
        part[tid >> 5] = amax;
    __syncthreads();
    for (int w = 0; w < QU_THREADS / 32; w++)
        amax = part[w] > amax ? part[w] : amax;
    int8_t *q = uq + (size_t)b * dp;
    const float boost = LM_QUANT_BOOST(amax);
    const float inv = amax == 0.0f ? 0.0f : __fdiv_rn(127.0f, __fmul_rn(amax, boost));
    for (int i = tid; i < dp; i += QU_THREADS) {
        float v = i < d && amax != 0.0f ? rintf(__fmul_rn(__fmul_rn(x[i], boost), inv)) : 0.0f;
        v = v > 127.0f ? 127.0f : v;
        v = v < -127.0f ? -127.0f : v;
        q[i] = (int8_t)v;
    }
    if (tid == 0)
        us[b] = amax == 0.0f ? 0.0f : __fdiv_rn(amax, 127.0f);
}

/* c += a . b over one 16x8x32 int8 tile, in PTX's fragment layout: lane
 * 4g + t holds a's rows g and g + 8 and b's column g, 4 bytes of K each per
 * register. */
__device__ __forceinline__ void mma_s8(int (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2])
{
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Copies bytes [kc, kc + LQ_KC) of the block's user rows to shared memory,
 * zeros past dp and past the batch. */
template <int MT>
__device__ __forceinline__ void stage_users(int8_t (*as)[LQ_AS], const int8_t *uq, int nb, int dp,
                                            int u0, int kc)
{
    for (int e = threadIdx.x; e < 16 * MT * (LQ_KC / 16); e += LQ_WARPS * 32) {
        const int r = e / (LQ_KC / 16), c = e % (LQ_KC / 16) * 16;
        int4 v = make_int4(0, 0, 0, 0);
        if (u0 + r < nb && kc + c < dp)
            v = *(const int4 *)(uq + (size_t)(u0 + r) * dp + kc + c);
        *(int4 *)&as[r][c] = v;
    }
}

/* logits[u][i] = (float)(sum_k uq[u][k] * item_q[i][k]) * (us[u] * item_scale[i]),
 * the CPU qgemm's formula. The dot product only needs A and B to agree on
 * where each k goes, so lane t takes the 8 contiguous bytes 8t..8t+7 of a
 * 32-byte step for both (registers 0 and 2 of A, 0 and 1 of B): one 8-byte
 * load per fragment pair instead of two 4-byte ones. */
template <int MT>
__global__ void __launch_bounds__(LQ_WARPS * 32)
logits_int8(const int8_t *__restrict__ uq, const float *__restrict__ us, int nb, int dp,
            const int8_t *__restrict__ item_q, const float *__restrict__ item_scale, int n_items,
            float *__restrict__ logits, size_t ld)
{
    __shared__ __align__(16) int8_t as[16 * MT][LQ_AS]; /* [users, LQ_KC] of this K step */
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int u0 = blockIdx.y * 16 * MT;
    const int i0 = blockIdx.x * LQ_BN + (threadIdx.x >> 5) * LQ_NG * 8; /* this warp's first item */
    const int8_t *brow[LQ_NG]; /* the item row of this lane's column, clamped into the table */
    for (int n = 0; n < LQ_NG; n++)
        brow[n] = item_q + (size_t)min(i0 + 8 * n + g, n_items - 1) * dp + 8 * t;
    int acc[MT][LQ_NG][4] = {};
    for (int kc = 0; kc < dp; kc += LQ_KC) {
        uint2 b[4][LQ_NG] = {};
#pragma unroll
        for (int s = 0; s < 4; s++)
#pragma unroll
            for (int n = 0; n < LQ_NG && kc + 32 * s < dp; n++)
                b[s][n] = __ldg((const uint2 *)(brow[n] + kc + 32 * s));
        __syncthreads(); /* the previous step's fragments are read */
        stage_users<MT>(as, uq, nb, dp, u0, kc);
        __syncthreads();
#pragma unroll
        for (int s = 0; s < 4; s++) {
            if (kc + 32 * s >= dp)
                break;
#pragma unroll
            for (int m = 0; m < MT; m++) {
                const uint2 lo = *(const uint2 *)&as[16 * m + g][32 * s + 8 * t];
                const uint2 hi = *(const uint2 *)&as[16 * m + 8 + g][32 * s + 8 * t];
                const unsigned a[4] = {lo.x, hi.x, lo.y, hi.y};
#pragma unroll
                for (int n = 0; n < LQ_NG; n++) {
                    const unsigned bb[2] = {b[s][n].x, b[s][n].y};
                    mma_s8(acc[m][n], a, bb);
                }
            }
        }
    }
    /* acc[m][n]: rows g, g + 8 (users), columns 2t, 2t + 1 (items). */
#pragma unroll
    for (int n = 0; n < LQ_NG; n++) {
        const int item = i0 + 8 * n + 2 * t;
        if (item >= n_items)
            continue;
        const float s0 = item_scale[item], s1 = item + 1 < n_items ? item_scale[item + 1] : 0.0f;
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int u = u0 + 16 * m + 8 * h + g;
                if (u >= nb)
                    continue;
                const float su = us[u];
                const float y0 = __fmul_rn(__int2float_rn(acc[m][n][2 * h]), __fmul_rn(su, s0));
                const float y1 = __fmul_rn(__int2float_rn(acc[m][n][2 * h + 1]), __fmul_rn(su, s1));
                float *o = logits + (size_t)u * ld + item;
                if (item + 1 < n_items)
                    *(float2 *)o = make_float2(y0, y1); /* item is even and ld a multiple of 4 */
                else
                    o[0] = y0;
            }
    }
}

/* logits[u][i] = uv[u] . item_f[i] in fp32 (any summation order is the
 * contract). Thread (tx, ty) of 16 x 16 holds users ty*TM.. and items
 * 4tx.., 64 + 4tx.. of the block tile, read from shared memory as float4. */
template <int TM>
__global__ void __launch_bounds__(256)
logits_f32(const float *__restrict__ uv, int nb, int d, const float *__restrict__ item_f, int n_items,
           float *__restrict__ logits, size_t ld)
{
    constexpr int BM = 16 * TM;
    __shared__ __align__(16) float as[LF_BK][BM + 4];    /* [k, users] */
    __shared__ __align__(16) float bs[LF_BK][LF_BN + 4]; /* [k, items] */
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int u0 = blockIdx.y * BM, i0 = blockIdx.x * LF_BN;
    float acc[TM][8] = {};
    for (int k0 = 0; k0 < d; k0 += LF_BK) {
        for (int e = tid; e < BM * LF_BK; e += 256) {
            const int u = e / LF_BK, kk = e % LF_BK;
            as[kk][u] = u0 + u < nb && k0 + kk < d ? uv[(size_t)(u0 + u) * d + k0 + kk] : 0.0f;
        }
        for (int e = tid; e < LF_BN * LF_BK; e += 256) {
            const int i = e / LF_BK, kk = e % LF_BK;
            bs[kk][i] = i0 + i < n_items && k0 + kk < d ? item_f[(size_t)(i0 + i) * d + k0 + kk] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < LF_BK; kk++) {
            float a[TM];
            if constexpr (TM == 4) {
                const float4 a4 = *(const float4 *)&as[kk][4 * ty];
                a[0] = a4.x, a[1] = a4.y, a[2] = a4.z, a[3] = a4.w;
            } else {
                a[0] = as[kk][ty];
            }
            const float4 b0 = *(const float4 *)&bs[kk][4 * tx], b1 = *(const float4 *)&bs[kk][64 + 4 * tx];
            const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int m = 0; m < TM; m++)
#pragma unroll
                for (int j = 0; j < 8; j++)
                    acc[m][j] += a[m] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < TM; m++) {
        const int u = u0 + TM * ty + m;
        if (u >= nb)
            continue;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int item = i0 + 64 * h + 4 * tx;
            float *o = logits + (size_t)u * ld + item;
            const float *y = &acc[m][4 * h];
            if (item + 3 < n_items)
                *(float4 *)o = make_float4(y[0], y[1], y[2], y[3]); /* ld is a multiple of 4 */
            else
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (item + j < n_items)
                        o[j] = y[j];
        }
    }
}

/* ---- step 2: exclusions ---------------------------------------------------------- */

/* One block per user; ids outside the catalog are ignored, as on the CPU. */
__global__ void exclude_items(const int32_t *excl, const int32_t *excl_off, int n_items, float *logits,
                              size_t ld)
{
    const int b = blockIdx.x;
    for (int j = excl_off[b] + threadIdx.x; j < excl_off[b + 1]; j += blockDim.x) {
        const int32_t e = excl[j];
        if (e >= 0 && e < n_items)
            logits[(size_t)b * ld + e] = __int_as_float(0x7fc00000); /* NaN */
    }
}

/* ---- step 3: selection ----------------------------------------------------------- */

/* The key of a logit: larger is better (higher score, then lower row); 0
 * means not eligible (row 0, past the catalog, NaN). Every other key is at
 * least 0x007fffff << 32 (the key of -inf). -0 counts as +0, as the CPU's
 * comparisons have it. */
__device__ __forceinline__ uint64_t item_key(float s, int row, int n_items)
{
    if (row == 0 || row >= n_items || s != s)
        return 0;
    const unsigned bits = s == 0.0f ? 0u : __float_as_uint(s);
    const unsigned key = bits & 0x80000000u ? ~bits : bits | 0x80000000u;
    return (uint64_t)key << 32 | (uint32_t)~(unsigned)row;
}

__device__ __forceinline__ int key_row(uint64_t key) { return (int)~(uint32_t)key; }

/* Where a block's SEL_TILE keys come from: tile `tile` of user b's logits
 * (n = n_items), or of its keys from the level before (n keys per user). */
struct from_logits {
    const float *logits;
    size_t ld;
    int n;
    __device__ void load(uint64_t (&v)[SEL_IPT], int b, int tile) const
    {
        const float *row = logits + (size_t)b * ld;
#pragma unroll
        for (int q = 0; q < SEL_IPT / 4; q++) {
            const int i = tile * SEL_TILE + (q * SEL_THREADS + (int)threadIdx.x) * 4;
            float4 f = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (i < n)
                f = __ldg((const float4 *)(row + i)); /* within the row: ld >= round_up(n, 4) */
            v[4 * q] = item_key(f.x, i, n);
            v[4 * q + 1] = item_key(f.y, i + 1, n);
            v[4 * q + 2] = item_key(f.z, i + 2, n);
            v[4 * q + 3] = item_key(f.w, i + 3, n);
        }
    }
};

struct from_keys {
    const uint64_t *keys;
    size_t ld;
    int n;
    __device__ void load(uint64_t (&v)[SEL_IPT], int b, int tile) const
    {
#pragma unroll
        for (int q = 0; q < SEL_IPT; q++) {
            const int i = tile * SEL_TILE + q * SEL_THREADS + (int)threadIdx.x;
            v[q] = i < n ? keys[(size_t)b * ld + i] : 0;
        }
    }
};

typedef cub::BlockScan<int, SEL_THREADS> sel_scan;

struct sel_smem {
    int hist[SEL_BINS];
    sel_scan::TempStorage scan;
    int digit, above; /* a pass's result: the k-th key's digit, keys above it */
    int count;        /* keys emitted */
};

/* hist[dig] += 1 for each lane with `part`, one atomic per distinct digit:
 * logits crowd into few bins (most share an exponent), and a warp's atomics
 * on one address would run one after another. */
__device__ __forceinline__ void hist_add(int *hist, bool part, unsigned dig)
{
    if (!__any_sync(FULL_MASK, part))
        return;
    const unsigned peers = __match_any_sync(FULL_MASK, part ? dig : ~0u);
    if (part && (int)(threadIdx.x & 31) == __ffs(peers) - 1)
        atomicAdd(&hist[dig], __popc(peers));
}

/* Lowest bit of pass p's digit: 11, 11, 10 bits of the score, then of the row. */
__device__ __forceinline__ int digit_lo(int p)
{
    const int lo = p % 3 == 0 ? 21 : p % 3 == 1 ? 10 : 0;
    return p < 3 ? 32 + lo : lo;
}

/* The least T such that exactly min(k, eligible) of the block's keys are
 * >= T: 1 when every eligible key is taken, else the k-th largest key with
 * the digits below the deciding pass cleared. Each pass counts the next
 * digit of the keys that share the digits fixed so far, and fixes the digit
 * where the count from the top reaches the number still needed. */
__device__ uint64_t select_threshold(const uint64_t (&v)[SEL_IPT], int k, sel_smem &sm)
{
    const int tid = threadIdx.x;
    uint64_t prefix = 0; /* digits fixed so far */
    int need = k;        /* keys still to take among those with that prefix */
    for (int p = 0; p < SEL_PASSES; p++) {
        const int lo = digit_lo(p), hi = p == 0 ? 64 : digit_lo(p - 1);
        const unsigned mask = (1u << (hi - lo)) - 1;
        for (int i = tid; i < SEL_BINS; i += SEL_THREADS)
            sm.hist[i] = 0;
        __syncthreads();
#pragma unroll
        for (int i = 0; i < SEL_IPT; i++) {
            const bool part = v[i] != 0 && (p == 0 || v[i] >> hi == prefix);
            hist_add(sm.hist, part, (unsigned)(v[i] >> lo) & mask);
        }
        __syncthreads();
        int c[4], sum = 0, before, total; /* thread t: digits 2047 - 4t down to 2044 - 4t */
#pragma unroll
        for (int q = 0; q < 4; q++)
            sum += c[q] = sm.hist[SEL_BINS - 1 - 4 * tid - q];
        sel_scan(sm.scan).ExclusiveSum(sum, before, total);
        if (p == 0 && total <= k)
            return 1;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            if (before < need && before + c[q] >= need) {
                sm.digit = SEL_BINS - 1 - 4 * tid - q;
                sm.above = before;
            }
            before += c[q];
        }
        __syncthreads();
        const int dg = sm.digit;
        need -= sm.above;
        prefix = prefix << (hi - lo) | (uint64_t)dg;
        const bool done = sm.hist[dg] == need;
        __syncthreads(); /* before the next pass clears hist */
        if (done)
            return prefix << lo;
    }
    return prefix; /* not reached: keys are unique, so the last pass ends with one key */
}

/* Writes the block's keys >= thr (thr >= 1) to out[0..), in no order; returns
 * how many. sm.count must be 0 and have been seen by every thread. */
__device__ int emit(const uint64_t (&v)[SEL_IPT], uint64_t thr, uint64_t *out, sel_smem &sm)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < SEL_IPT; i++) {
        const bool take = v[i] >= thr;
        const unsigned m = __ballot_sync(FULL_MASK, take);
        if (!m)
            continue;
        int base = 0;
        if (lane == 0)
            base = atomicAdd(&sm.count, __popc(m));
        base = __shfl_sync(FULL_MASK, base, 0);
        if (take)
            out[base + __popc(m & ((1u << lane) - 1))] = v[i];
    }
    __syncthreads();
    return sm.count;
}

/* Sorts a[0..n), n a power of two, largest first. */
__device__ void bitonic_desc(uint64_t *a, int n)
{
    for (int size = 2; size <= n; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n / 2; i += SEL_THREADS) {
                const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
                const uint64_t x = a[lo], y = a[hi];
                if ((x < y) == ((lo & size) == 0)) {
                    a[lo] = y;
                    a[hi] = x;
                }
            }
            __syncthreads();
        }
}

/* Grid (tiles, users): each tile's top k keys to out[b][tile * k ..], padded
 * with 0 (not eligible) where the tile has fewer. */
template <class Src>
__global__ void __launch_bounds__(SEL_THREADS) select_tiles(Src src, int k, uint64_t *out, size_t out_ld)
{
    __shared__ sel_smem sm;
    if (threadIdx.x == 0)
        sm.count = 0;
    uint64_t v[SEL_IPT];
    src.load(v, blockIdx.y, blockIdx.x);
    uint64_t *o = out + blockIdx.y * out_ld + (size_t)blockIdx.x * k;
    const int n = emit(v, select_threshold(v, k, sm), o, sm);
    for (int i = n + threadIdx.x; i < k; i += SEL_THREADS)
        o[i] = 0;
}

/* One block per user, over its last tile: the top k sorted, with the
 * scores read back from the logits (a key holds -0 as +0). */
template <class Src>
__global__ void __launch_bounds__(SEL_THREADS)
select_final(Src src, int k, int p2, const float *logits, size_t ld, int32_t *items, float *scores,
             int32_t *n_out)
{
    extern __shared__ uint64_t best[]; /* [p2], p2 = k rounded up to a power of two */
    __shared__ sel_smem sm;
    const int b = blockIdx.x;
    if (threadIdx.x == 0)
        sm.count = 0;
    for (int i = threadIdx.x; i < p2; i += SEL_THREADS)
        best[i] = 0;
    uint64_t v[SEL_IPT];
    src.load(v, b, 0);
    const int n = emit(v, select_threshold(v, k, sm), best, sm);
    bitonic_desc(best, p2);
    for (int j = threadIdx.x; j < n; j += SEL_THREADS) {
        const int row = key_row(best[j]);
        items[(size_t)b * k + j] = row;
        scores[(size_t)b * k + j] = logits[(size_t)b * ld + row];
    }
    if (threadIdx.x == 0)
        n_out[b] = n;
}

} /* namespace */

/* ---- the retriever ----------------------------------------------------------------- */

struct gp_retr {
    /* the catalog: device memory of the engine's gp_weights */
    int n_items, d, dp, int8;
    const int8_t *item_q;
    const float *item_scale;
    const float *item_f;
    int max_batch, max_k;
    int group;          /* users per pass over the logits buffer */
    size_t ld;          /* logits row stride in floats: n_items rounded up to 4 */
    size_t cand_ld;     /* keys per user after the first level; 0 when one tile holds the catalog */
    float *logits;      /* [group, ld] */
    uint64_t *cand[2];  /* [group, cand_ld] each, levels alternate; [1] only when needed */
    int8_t *uq;         /* int8 models: [max_batch, dp] quantized user vectors */
    float *us;          /* int8 models: [max_batch] their scales */
};

static int dev_alloc(void **p, size_t bytes, const char *what, char *err, size_t errsz)
{
    cudaError_t rc = cudaMalloc(p, bytes);
    if (rc == cudaSuccess)
        return 0;
    char msg[160];
    snprintf(msg, sizeof msg, "GPU retriever: %s (%.1f MiB; a smaller max_batch or max_k needs less)",
             what, (double)bytes / 1048576.0);
    return gp_cuda_err(rc, msg, err, errsz);
}

int gp_retr_new(gp_retr **out, const gp_weights *w, int max_batch, int max_k, int max_exclude,
                char *err, size_t errsz)
{
    *out = NULL;
    /* Exclusion lists live on the device; the caller holds them to max_exclude. */
    if (max_batch < 1 || max_k < 1 || max_k > GP_RETR_MAX_K || max_exclude < 0)
        return cm_errf(err, errsz, "GPU retriever: max_batch %d, max_k %d, max_exclude %d out of range "
                       "(max_batch >= 1, max_k 1..%d, max_exclude >= 0)", max_batch, max_k, max_exclude,
                       GP_RETR_MAX_K);
    const int d = w->cfg.d_model;
    if (w->int8 ? !w->item_q || !w->item_scale : !w->item_f)
        return cm_errf(err, errsz, "GPU retriever: the weights carry no item table");
    /* int8 rows are read 8 bytes at a time, in steps of GP_KALIGN. */
    if (w->int8 && (w->dp != gp_round_up(d, GP_KALIGN) || (uintptr_t)w->item_q % 8))
        return cm_errf(err, errsz, "GPU retriever: int8 item rows must be %d bytes apart (d_model %d "
                       "padded to %d) from an 8-byte aligned start; they are %d bytes apart at %p",
                       gp_round_up(d, GP_KALIGN), d, GP_KALIGN, w->dp, (const void *)w->item_q);
    gp_retr *r = (gp_retr *)calloc(1, sizeof *r);
    if (!r)
        return cm_errf(err, errsz, "GPU retriever: out of memory");
    r->n_items = w->cfg.n_items;
    r->d = d;
    r->dp = w->dp;
    r->int8 = w->int8;
    r->item_q = w->item_q;
    r->item_scale = w->item_scale;
    r->item_f = w->item_f;
    r->max_batch = max_batch;
    r->max_k = max_k;
    r->ld = (size_t)gp_round_up(r->n_items, 4);
    size_t group = GP_RETR_LOGIT_BYTES / (sizeof(float) * r->ld);
    group = group < 1 ? 1 : group > (size_t)max_batch ? (size_t)max_batch : group;
    r->group = group > 65535 ? 65535 : (int)group; /* users are a grid dimension of the selection */
    const size_t tiles = ((size_t)r->n_items + SEL_TILE - 1) / SEL_TILE;
    r->cand_ld = tiles > 1 ? tiles * (size_t)max_k : 0;
    if (dev_alloc((void **)&r->logits, sizeof(float) * r->ld * r->group, "logits buffer", err, errsz) ||
        (r->cand_ld && dev_alloc((void **)&r->cand[0], sizeof(uint64_t) * r->cand_ld * r->group,
                                 "selection buffer", err, errsz)) ||
        (r->cand_ld > SEL_TILE && dev_alloc((void **)&r->cand[1], sizeof(uint64_t) * r->cand_ld * r->group,
                                            "second selection buffer", err, errsz)) ||
        (r->int8 && dev_alloc((void **)&r->uq, (size_t)r->dp * max_batch, "quantized users", err, errsz)) ||
        (r->int8 && dev_alloc((void **)&r->us, sizeof(float) * max_batch, "user scales", err, errsz))) {
        gp_retr_free(r);
        return -1;
    }
    *out = r;
    return 0;
}

void gp_retr_free(gp_retr *r)
{
    if (!r)
        return;
    cudaFree(r->logits);
    cudaFree(r->cand[0]);
    cudaFree(r->cand[1]);
    cudaFree(r->uq);
    cudaFree(r->us);
    free(r);
}

static int launched(const char *what, char *err, size_t errsz)
{
    return gp_cuda_err(cudaGetLastError(), what, err, errsz);
}

template <int MT>
static void launch_int8(const gp_retr *r, cudaStream_t st, int u0, int nb)
{
    const dim3 grid((r->n_items + LQ_BN - 1) / LQ_BN, (nb + 16 * MT - 1) / (16 * MT));
    logits_int8<MT><<<grid, LQ_WARPS * 32, 0, st>>>(r->uq + (size_t)u0 * r->dp, r->us + u0, nb, r->dp,
                                                    r->item_q, r->item_scale, r->n_items, r->logits, r->ld);
}

template <int TM>
static void launch_f32(const gp_retr *r, cudaStream_t st, const float *uv, int nb)
{
    const dim3 grid((r->n_items + LF_BN - 1) / LF_BN, (nb + 16 * TM - 1) / (16 * TM));
    logits_f32<TM><<<grid, 256, 0, st>>>(uv, nb, r->d, r->item_f, r->n_items, r->logits, r->ld);
}

/* Users u0 .. u0 + nb of the batch: their logits; tile sizes follow the batch
 * so that a small one does not pay for 64 users. */
static void launch_logits(const gp_retr *r, cudaStream_t st, const float *uv, int u0, int nb)
{
    if (r->int8) {
        if (nb <= 16)
            launch_int8<1>(r, st, u0, nb);
        else if (nb <= 32)
            launch_int8<2>(r, st, u0, nb);
        else
            launch_int8<4>(r, st, u0, nb);
    } else if (nb <= 16) {
        launch_f32<1>(r, st, uv + (size_t)u0 * r->d, nb);
    } else {
        launch_f32<4>(r, st, uv + (size_t)u0 * r->d, nb);
    }
}

/* Top k of nb users' logits: tile levels until one tile is left, then the
 * final sort. Each level leaves tiles * k keys per user (see GP_RETR_MAX_K). */
static void launch_select(const gp_retr *r, cudaStream_t st, int nb, int k, int32_t *items,
                          float *scores, int32_t *n_out)
{
    int p2 = 1;
    while (p2 < k)
        p2 <<= 1;
    const size_t smem = sizeof(uint64_t) * p2;
    const from_logits lg = {r->logits, r->ld, r->n_items};
    if (r->n_items <= SEL_TILE) {
        select_final<<<nb, SEL_THREADS, smem, st>>>(lg, k, p2, r->logits, r->ld, items, scores, n_out);
        return;
    }
    int tiles = (r->n_items + SEL_TILE - 1) / SEL_TILE, cur = 0;
    select_tiles<<<dim3(tiles, nb), SEL_THREADS, 0, st>>>(lg, k, r->cand[0], r->cand_ld);
    int n = tiles * k;
    while (n > SEL_TILE) {
        tiles = (n + SEL_TILE - 1) / SEL_TILE;
        const from_keys in = {r->cand[cur], r->cand_ld, n};
        select_tiles<<<dim3(tiles, nb), SEL_THREADS, 0, st>>>(in, k, r->cand[cur ^ 1], r->cand_ld);
        cur ^= 1;
        n = tiles * k;
    }
    const from_keys in = {r->cand[cur], r->cand_ld, n};
    select_final<<<nb, SEL_THREADS, smem, st>>>(in, k, p2, r->logits, r->ld, items, scores, n_out);
}

int gp_retr_run(gp_retr *r, cudaStream_t st, int B, const float *uv, const int32_t *excl,
                const int32_t *excl_off, int k, int32_t *items, float *scores, int32_t *n_out,
                char *err, size_t errsz)
{
    if (B < 0 || B > r->max_batch)
        return cm_errf(err, errsz, "GPU retrieval: batch of %d, this retriever takes 0..%d", B,
                       r->max_batch);
    if (k < 1 || k > r->max_k)
        return cm_errf(err, errsz, "GPU retrieval: k = %d, this retriever takes 1..%d", k, r->max_k);
    if (B == 0)
        return 0;
    const char *missing = !uv ? "uv" : !excl ? "excl" : !excl_off ? "excl_off" : !items ? "items"
                          : !scores ? "scores" : !n_out ? "n_out" : NULL;
    if (missing)
        return cm_errf(err, errsz, "GPU retrieval: %s is NULL", missing);
    if (r->int8) {
        quantize_users<<<B, QU_THREADS, 0, st>>>(uv, r->d, r->dp, r->uq, r->us);
        if (launched("GPU retrieval: quantizing the user vectors", err, errsz))
            return -1;
    }
    for (int u0 = 0; u0 < B; u0 += r->group) {
        const int nb = B - u0 < r->group ? B - u0 : r->group;
        launch_logits(r, st, uv, u0, nb);
        if (launched("GPU retrieval: logits", err, errsz))
            return -1;
        exclude_items<<<nb, 128, 0, st>>>(excl, excl_off + u0, r->n_items, r->logits, r->ld);
        if (launched("GPU retrieval: exclusions", err, errsz))
            return -1;
        launch_select(r, st, nb, k, items + (size_t)u0 * k, scores + (size_t)u0 * k, n_out + u0);
        if (launched("GPU retrieval: top-k selection", err, errsz))
            return -1;
    }
    return 0;
}
