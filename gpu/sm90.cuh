/* gpu/sm90.cuh — Hopper's asynchronous instructions as the fast path uses
 * them: the bulk copy engine into shared memory, completing on an mbarrier,
 * and wgmma (int8, A from registers, B from shared memory). They exist only
 * in code for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); elsewhere each traps, and
 * callers keep to the portable kernels (gp_fast_new picks by the device).
 *
 * B's layout in shared memory is wgmma's K-major one without swizzle: per
 * k-step of 32 bytes, for each 8 rows of N ("core matrices" of 8 rows x 16
 * bytes) the two 16-byte halves of the k-step, 128 bytes apart, and the
 * next 8 rows 256 bytes on: byte (n, k) of a k-step of an N-row chunk is at
 * (n / 8) * 256 + (k / 16) * 128 + (n % 8) * 16 + k % 16. The accumulators
 * of m64nN are per warp (16 rows each, warp w of the group rows 16w..) the
 * m16n8 C fragments of the N/8 column tiles, and A's registers the m16n8k32
 * A fragment: the layouts the mma.sync kernels already use. */
#pragma once
#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GP_SM90A 1
#else
#define GP_SM90A 0
#endif

__device__ __forceinline__ uint32_t gp_smem(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void gp_mbar_init(uint64_t *bar, unsigned count)
{
#if GP_SM90A
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(gp_smem(bar)), "r"(count) : "memory");
#else
    __trap();
#endif
}

/* the barriers' initialisation visible to the copy engine (then a __syncthreads) */
__device__ __forceinline__ void gp_mbar_fence_init()
{
#if GP_SM90A
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

__device__ __forceinline__ void gp_mbar_arrive(uint64_t *bar)
{
#if GP_SM90A
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}" ::"r"(gp_smem(bar)) : "memory");
#else
    __trap();
#endif
}

/* Until bar's phase of the given parity completes. idle_ns, for a thread
 * that has nothing else to do while it waits (a producer): try_wait's
 * suspend-time hint, which lets the hardware hold the thread until the
 * phase completes (or that long), where the plain loop spins, each turn two
 * instructions on the issue slots its scheduler's other warps need (the
 * lean way's producer: 6% of the candidate kernel's instructions,
 * bench/NOTES.md). */
__device__ __forceinline__ void gp_mbar_wait(uint64_t *bar, unsigned parity, unsigned idle_ns = 0)
{
#if GP_SM90A
    if (idle_ns)
        asm volatile("{\n.reg .pred p;\nWAIT_%=:\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1, %2;\n"
                     "@!p bra WAIT_%=;\n}" ::"r"(gp_smem(bar)),
                     "r"(parity), "r"(idle_ns)
                     : "memory");
    else
        asm volatile("{\n.reg .pred p;\nWAIT_%=:\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                     "@!p bra WAIT_%=;\n}" ::"r"(gp_smem(bar)),
                     "r"(parity)
                     : "memory");
#else
    __trap();
#endif
}

/* bytes (a multiple of 16, both addresses 16-aligned) from global to shared
 * memory by the copy engine; bar's phase completes when they have landed
 * (the arrival and the byte count are this call's). */
__device__ __forceinline__ void gp_bulk_load(void *dst, const void *src, unsigned bytes, uint64_t *bar)
{
#if GP_SM90A
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(gp_smem(bar)), "r"(bytes)
                 : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     gp_smem(dst)),
                 "l"(src), "r"(bytes), "r"(gp_smem(bar))
                 : "memory");
#else
    __trap();
#endif
}

/* descriptor of a K-major, unswizzled B tile at p (16-aligned): core
 * matrices 128 bytes apart along K (LBO), 256 along N (SBO) */
__device__ __forceinline__ uint64_t gp_desc(const void *p)
{
    return (uint64_t)((gp_smem(p) & 0x3ffff) >> 4) | (uint64_t)(128 >> 4) << 16 | (uint64_t)(256 >> 4) << 32;
}

__device__ __forceinline__ void gp_wg_fence()
{
#if GP_SM90A
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void gp_wg_commit()
{
#if GP_SM90A
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void gp_wg_wait0()
{
#if GP_SM90A
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#endif
}

/* every committed group but the newest done */
__device__ __forceinline__ void gp_wg_wait1()
{
#if GP_SM90A
    asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
#endif
}

/* the accumulators of n8 tiles as read-write asm operands: tile j, the first 4, 8 or 12 */
#define GP_ACC4(d, j) "+r"(d[j][0]), "+r"(d[j][1]), "+r"(d[j][2]), "+r"(d[j][3])
#define GP_ACC16(d) GP_ACC4(d, 0), GP_ACC4(d, 1), GP_ACC4(d, 2), GP_ACC4(d, 3)
#define GP_ACC32(d) GP_ACC16(d), GP_ACC4(d, 4), GP_ACC4(d, 5), GP_ACC4(d, 6), GP_ACC4(d, 7)
#define GP_ACC48(d) GP_ACC32(d), GP_ACC4(d, 8), GP_ACC4(d, 9), GP_ACC4(d, 10), GP_ACC4(d, 11)
#define GP_ACC64(d) GP_ACC48(d), GP_ACC4(d, 12), GP_ACC4(d, 13), GP_ACC4(d, 14), GP_ACC4(d, 15)

/* generic-proxy writes to shared memory visible to wgmma's reads of it
 * (then a barrier) */
__device__ __forceinline__ void gp_fence_async_smem()
{
#if GP_SM90A
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

/* generic-proxy writes to global memory (another block's, made visible to
 * this thread by an acquire) ordered before this thread's copy-engine reads */
__device__ __forceinline__ void gp_fence_async_global()
{
#if GP_SM90A
    asm volatile("fence.proxy.async.global;" ::: "memory");
#endif
}

/* d (+)= A . B^T over one k-step of 32, A (64 rows) from shared memory too
 * (descriptor a, the layout of B's above with M for N). N: 32 or 64. */
template <int N>
__device__ __forceinline__ void gp_wgmma_s8_ss(int (&d)[N / 8][4], uint64_t a, uint64_t b, int acc);

template <>
__device__ __forceinline__ void gp_wgmma_s8_ss<32>(int (&d)[4][4], uint64_t a, uint64_t b, int acc)
{
#if GP_SM90A
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k32.s32.s8.s8 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
                 "}, %16, %17, p;\n}\n"
                 : GP_ACC16(d)
                 : "l"(a), "l"(b), "r"(acc));
#else
    __trap();
#endif
}

template <>
__device__ __forceinline__ void gp_wgmma_s8_ss<64>(int (&d)[8][4], uint64_t a, uint64_t b, int acc)
{
#if GP_SM90A
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
                 "}, %32, %33, p;\n}\n"
                 : GP_ACC32(d)
                 : "l"(a), "l"(b), "r"(acc));
#else
    __trap();
#endif
}

/* d[j] (+)= A . B^T over one k-step of 32, for the N/8 column tiles of B
 * (descriptor b); acc 0: d = A . B^T. N: 32, 64, 96 or 128, the widths
 * the streams' chunks have. */
template <int N>
__device__ __forceinline__ void gp_wgmma_s8(int (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b, int acc);

template <>
__device__ __forceinline__ void gp_wgmma_s8<32>(int (&d)[4][4], const uint32_t (&a)[4], uint64_t b, int acc)
{
#if GP_SM90A
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k32.s32.s8.s8 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
                 "}, {%16,%17,%18,%19}, %20, p;\n}\n"
                 : GP_ACC16(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
#else
    __trap();
#endif
}

template <>
__device__ __forceinline__ void gp_wgmma_s8<64>(int (&d)[8][4], const uint32_t (&a)[4], uint64_t b, int acc)
{
#if GP_SM90A
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
                 "}, {%32,%33,%34,%35}, %36, p;\n}\n"
                 : GP_ACC32(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
#else
    __trap();
#endif
}

template <>
__device__ __forceinline__ void gp_wgmma_s8<96>(int (&d)[12][4], const uint32_t (&a)[4], uint64_t b, int acc)
{
#if GP_SM90A
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n96k32.s32.s8.s8 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                 "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47"
                 "}, {%48,%49,%50,%51}, %52, p;\n}\n"
                 : GP_ACC48(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
#else
    __trap();
#endif
}

template <>
__device__ __forceinline__ void gp_wgmma_s8<128>(int (&d)[16][4], const uint32_t (&a)[4], uint64_t b, int acc)
{
#if GP_SM90A
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                 "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                 "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
                 "}, {%64,%65,%66,%67}, %68, p;\n}\n"
                 : GP_ACC64(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
#else
    __trap();
#endif
}

/* The accumulators' registers pinned where they are: after a wgmma wait, so
 * that no read of them is scheduled before it (the wait names no register). */
template <int NT> __device__ __forceinline__ void gp_wg_pin(int (&d)[NT][4])
{
#pragma unroll
    for (int j = 0; j < NT; j++)
        asm volatile("" : "+r"(d[j][0]), "+r"(d[j][1]), "+r"(d[j][2]), "+r"(d[j][3])::"memory");
}

/* A warpgroup's registers per thread lowered or raised to N (sm_90a; the
 * kernel needs a register cap at entry, __launch_bounds__(threads, 1)). */
template <int N> __device__ __forceinline__ void gp_setmaxnreg_dec()
{
#if GP_SM90A
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
#endif
}

template <int N> __device__ __forceinline__ void gp_setmaxnreg_inc()
{
#if GP_SM90A
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
#endif
}
