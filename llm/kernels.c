/* llm/kernels.c — packing of weights into the kernels' panel layouts, the
 * reference quantizer, and the run-time choice of instruction set. */
#include "llm/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

extern const lm_kern lm_kern_scalar;
extern const lm_kern lm_kern_avx2;
extern const lm_kern lm_kern_avx512;
extern const lm_kern lm_kern_amx;

size_t lm_pf32_bytes(int n, int k)
{
    return (size_t)lm_panels(n) * LM_PANEL * (size_t)k * sizeof(float);
}

size_t lm_pq8_bytes(int n, int k)
{
    size_t cols = (size_t)lm_panels(n) * LM_PANEL;
    /* data first (a multiple of 1024 bytes, so the arrays after it stay aligned) */
    return cols * (size_t)lm_round_up(k, LM_KALIGN) + cols * (sizeof(float) + sizeof(int32_t));
}

void lm_pf32_pack(lm_pf32 *p, void *mem, const void *w, int n, int k)
{
    p->n = n;
    p->k = k;
    p->n_panels = lm_panels(n);
    p->data = mem;
    const unsigned char *src = w;
    for (int pn = 0; pn < p->n_panels; pn++)
        for (int kk = 0; kk < k; kk++)
            for (int c = 0; c < LM_PANEL; c++) {
                int row = pn * LM_PANEL + c;
                float v = 0.0f;
                if (row < n)
                    memcpy(&v, src + ((size_t)row * k + kk) * sizeof(float), sizeof v);
                p->data[((size_t)pn * k + kk) * LM_PANEL + c] = v;
            }
}

float lm_pf32_get(const lm_pf32 *p, int row, int col)
{
    return p->data[((size_t)(row / LM_PANEL) * p->k + col) * LM_PANEL + row % LM_PANEL];
}

static size_t pq8_index(const lm_pq8 *p, int row, int col)
{
    size_t g = (size_t)(row / LM_PANEL) * (p->kp / 4) + col / 4;
    return (g * LM_PANEL + row % LM_PANEL) * 4 + col % 4;
}

void lm_pq8_pack(lm_pq8 *p, void *mem, const void *q, const void *scale, int n, int k)
{
    p->n = n;
    p->k = k;
    p->kp = lm_round_up(k, LM_KALIGN);
    p->n_panels = lm_panels(n);
    size_t cols = (size_t)p->n_panels * LM_PANEL;
    size_t data = cols * (size_t)p->kp; /* a multiple of 64: cols is a multiple of 16, kp of 64 */
    p->data = mem;
    p->scale = (float *)((char *)mem + data);
    p->wsum = (int32_t *)(p->scale + cols);
    memset(mem, 0, data);
    const int8_t *src = q;
    for (size_t c = 0; c < cols; c++) {
        int32_t sum = 0;
        float s = 0.0f;
        if (c < (size_t)n) {
            for (int kk = 0; kk < k; kk++) {
                int8_t v = src[c * (size_t)k + kk];
                p->data[pq8_index(p, (int)c, kk)] = v;
                sum += v;
            }
            memcpy(&s, (const char *)scale + c * sizeof(float), sizeof s);
        }
        p->scale[c] = s;
        p->wsum[c] = sum;
    }
}

int8_t lm_pq8_get(const lm_pq8 *p, int row, int col)
{
    return p->data[pq8_index(p, row, col)];
}

lm_pf32 lm_pf32_view(const lm_pf32 *p, int p0, int np)
{
    lm_pf32 v = *p;
    v.n_panels = np;
    v.n = p->n - p0 * LM_PANEL < np * LM_PANEL ? p->n - p0 * LM_PANEL : np * LM_PANEL;
    v.data = p->data + (size_t)p0 * p->k * LM_PANEL;
    return v;
}

lm_pq8 lm_pq8_view(const lm_pq8 *p, int p0, int np)
{
    lm_pq8 v = *p;
    v.n_panels = np;
    v.n = p->n - p0 * LM_PANEL < np * LM_PANEL ? p->n - p0 * LM_PANEL : np * LM_PANEL;
    v.data = p->data + (size_t)p0 * p->kp * LM_PANEL;
    v.scale = p->scale + (size_t)p0 * LM_PANEL;
    v.wsum = p->wsum + (size_t)p0 * LM_PANEL;
    return v;
}

void lm_quantize_row_ref(const float *x, int k, int8_t *q, float *scale)
{
    float amax = 0.0f;
    for (int i = 0; i < k; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    if (amax == 0.0f) {
        memset(q, 0, (size_t)k);
        *scale = 0.0f;
        return;
    }
    float boost = LM_QUANT_BOOST(amax);
    float inv = 127.0f / (amax * boost);
    for (int i = 0; i < k; i++) {
        float v = rintf(x[i] * boost * inv);
        v = v > 127.0f ? 127.0f : v;
        v = v < -127.0f ? -127.0f : v;
        q[i] = (int8_t)v;
    }
    *scale = amax / 127.0f;
}

/* ---- instruction-set detection ------------------------------------------ */

#if defined(__x86_64__)
/* The register state the OS saves on context switches (XCR0), or 0
 * without OSXSAVE. */
static unsigned os_xcr0(void)
{
    unsigned a, b, c, d;
    __cpuid(1, a, b, c, d);
    if (!(c & bit_OSXSAVE))
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    return lo;
}

static int os_saves_zmm(void) { return (os_xcr0() & 0xe6) == 0xe6; } /* SSE, AVX, opmask, ZMM */
static int os_saves_ymm(void) { return (os_xcr0() & 0x6) == 0x6; }   /* SSE, AVX */

/* Linux hands out AMX tile state only on request (arch_prctl). */
static int os_grants_amx(void)
{
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif

static lm_isa detect(void)
{
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7)
        return LM_ISA_SCALAR;
    __cpuid(1, a, b, c, d);
    int fma = (c & bit_FMA) != 0;
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b & bit_AVX2) != 0;
    int avx512 = (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512VL) &&
                 (b & bit_AVX512DQ) && (c & bit_AVX512VNNI);
    int amx = (d & (1u << 24)) && (d & (1u << 25)); /* AMX-TILE, AMX-INT8 */
    if (avx512 && os_saves_zmm())
        return amx && os_grants_amx() ? LM_ISA_AMX : LM_ISA_AVX512;
    if (avx2 && fma && os_saves_ymm())
        return LM_ISA_AVX2;
#endif
    return LM_ISA_SCALAR;
}

lm_isa lm_isa_detect(void)
{
    static lm_isa cached = LM_ISA_COUNT;
    if (cached == LM_ISA_COUNT)
        cached = detect();
    return cached;
}

lm_isa lm_isa_default(void)
{
    lm_isa best = lm_isa_detect(), want;
    const char *env = getenv("RANKD_ISA");
    if (env && *env && lm_isa_parse(env, &want) == 0 && want < best)
        return want;
    return best;
}

static const char *const isa_names[LM_ISA_COUNT] = {"scalar", "avx2", "avx512", "amx"};

const char *lm_isa_name(lm_isa isa)
{
    return (unsigned)isa < LM_ISA_COUNT ? isa_names[isa] : "?";
}

int lm_isa_parse(const char *s, lm_isa *out)
{
    for (int i = 0; i < LM_ISA_COUNT; i++)
        if (strcasecmp(s, isa_names[i]) == 0) {
            *out = (lm_isa)i;
            return 0;
        }
    return -1;
}

const lm_kern *lm_kern_get(lm_isa isa)
{
    static const lm_kern *const table[LM_ISA_COUNT] = {
        &lm_kern_scalar, &lm_kern_avx2, &lm_kern_avx512, &lm_kern_amx};
    if ((unsigned)isa >= LM_ISA_COUNT || isa > lm_isa_detect())
        return NULL;
    return table[isa];
}
