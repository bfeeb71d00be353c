/* llm/kern_common.h — elementwise kernels written once in portable C and
 * compiled into every kern_<isa>.c under that file's instruction-set flags,
 * so the compiler vectorizes them for each target.
 *
 * Reductions keep 16 explicit lanes: the loop then vectorizes without
 * -ffast-math, and every target adds the same numbers in the same order.
 * exp is a branch-free Cephes-style polynomial (about 2 ulp) because libm's
 * expf/tanhf are calls the vectorizer cannot see through.
 *
 * Include it after defining KSUFFIX (scalar, avx2, ...); it defines
 * lm_<op>_<KSUFFIX> for the kernel tables (all but rowaxpy only unless
 * KOWN_OPS is defined), and static helpers k_<op>_<KSUFFIX>. */
#ifndef KSUFFIX
#error "define KSUFFIX before including kern_common.h"
#endif

#include <math.h>
#include <string.h>

#include "llm/kernels.h"

#define KCAT2(a, b) a##_##b
#define KCAT(a, b) KCAT2(a, b)
#define KFN(op) KCAT(op, KSUFFIX)

#define KLANES 16

/* a * b + c: fused where the target has FMA (one rounding, half the
 * instructions), two roundings in the scalar build. */
#ifdef __FMA__
#define KFMA(a, b, c) fmaf((a), (b), (c))
#else
#define KFMA(a, b, c) ((a) * (b) + (c))
#endif

static inline float KFN(k_lanes_sum)(const float *acc)
{
    float t[KLANES];
    memcpy(t, acc, sizeof t);
    for (int w = KLANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++)
            t[j] += t[j + w];
    return t[0];
}

static inline float KFN(k_sum)(const float *x, int n)
{
    float acc[KLANES] = {0};
    int i = 0;
    for (; i + KLANES <= n; i += KLANES)
        for (int j = 0; j < KLANES; j++)
            acc[j] += x[i + j];
    for (int j = 0; i + j < n; j++)
        acc[j] += x[i + j];
    return KFN(k_lanes_sum)(acc);
}

static inline float KFN(k_sqdev)(const float *x, int n, float mean)
{
    float acc[KLANES] = {0};
    int i = 0;
    for (; i + KLANES <= n; i += KLANES)
        for (int j = 0; j < KLANES; j++) {
            float v = x[i + j] - mean;
            acc[j] += v * v;
        }
    for (int j = 0; i + j < n; j++) {
        float v = x[i + j] - mean;
        acc[j] += v * v;
    }
    return KFN(k_lanes_sum)(acc);
}

static inline float KFN(k_max)(const float *x, int n, float init)
{
    float acc[KLANES];
    for (int j = 0; j < KLANES; j++)
        acc[j] = init;
    int i = 0;
    for (; i + KLANES <= n; i += KLANES)
        for (int j = 0; j < KLANES; j++)
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    for (int j = 0; i + j < n; j++)
        acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    for (int w = KLANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++)
            acc[j] = acc[j + w] > acc[j] ? acc[j + w] : acc[j];
    return acc[0];
}

/* e^x for x in [-87, 88] (clamped outside): n = round(x / ln2) by the
 * 1.5 * 2^23 trick, a degree-6 polynomial on the remainder, 2^n by building
 * the exponent bits. The bits are built unsigned: a NaN x (which the clamps
 * let through, and which stays NaN in y) leaves n's bits anything, and a
 * signed shift of those would be undefined (UBSan stops on it). */
static inline float KFN(k_exp)(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float r = KFMA(x, 1.44269504088896341f, 12582912.0f);
    float n = r - 12582912.0f;
    uint32_t ni;
    memcpy(&ni, &r, 4);
    ni -= 0x4B400000u;
    float f = KFMA(n, -0.693359375f, x);
    f = KFMA(n, 2.12194440e-4f, f);
    float p = 1.9875691500e-4f;
    p = KFMA(p, f, 1.3981999507e-3f);
    p = KFMA(p, f, 8.3334519073e-3f);
    p = KFMA(p, f, 4.1665795894e-2f);
    p = KFMA(p, f, 1.6666665459e-1f);
    p = KFMA(p, f, 5.0000001201e-1f);
    float y = KFMA(p * f, f, f) + 1.0f;
    uint32_t e = (ni + 127u) << 23;
    float sc;
    memcpy(&sc, &e, 4);
    return y * sc;
}

void KFN(lm_layernorm)(int M, int d, const float *x, int ldx, const float *g, const float *b,
                       float *y, int ldy);
void KFN(lm_gelu)(int M, int n, float *x, int ldx);
void KFN(lm_softmax)(int M, int L, float *s, int lds, float *self, float scale, int causal);
void KFN(lm_rowdot)(int M, int n, const float *a, const float *b, int ld, float *out);
void KFN(lm_rowaxpy)(int M, int n, const float *alpha, const float *x, int ldx, float *y, int ldy);
void KFN(lm_gelu_grad)(size_t n, const float *x, const float *dy, float *dx);

#ifndef KOWN_OPS /* a target with its own gelu, softmax, layernorm and rowdot defines this */

void KFN(lm_layernorm)(int M, int d, const float *x, int ldx, const float *g, const float *b,
                       float *y, int ldy)
{
    for (int r = 0; r < M; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        float mean = KFN(k_sum)(xr, d) / (float)d;
        float var = KFN(k_sqdev)(xr, d, mean) / (float)d;
        float rstd = 1.0f / sqrtf(var + 1e-5f);
        for (int i = 0; i < d; i++)
            yr[i] = KFMA((xr[i] - mean) * rstd, g[i], b[i]);
    }
}

/* 0.5 x (1 + tanh(u)) == x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3):
 * one exp and one division instead of a tanh. */
void KFN(lm_gelu)(int M, int n, float *x, int ldx)
{
    for (int r = 0; r < M; r++) {
        float *xr = x + (size_t)r * ldx;
        for (int i = 0; i < n; i++) {
            float v = xr[i];
            float u = 0.7978845608028654f * KFMA(0.044715f * v * v, v, v);
            xr[i] = v / (1.0f + KFN(k_exp)(-2.0f * u));
        }
    }
}

void KFN(lm_softmax)(int M, int L, float *s, int lds, float *self, float scale, int causal)
{
    for (int r = 0; r < M; r++) {
        float *sr = s + (size_t)r * lds;
        int n = causal ? (r + 1 < L ? r + 1 : L) : L;
        float mx = KFN(k_max)(sr, n, self ? self[r] : -INFINITY) * scale;
        for (int i = 0; i < n; i++)
            sr[i] = KFN(k_exp)(sr[i] * scale - mx);
        float es = self ? KFN(k_exp)(self[r] * scale - mx) : 0.0f;
        float inv = 1.0f / (KFN(k_sum)(sr, n) + es);
        for (int i = 0; i < n; i++)
            sr[i] *= inv;
        for (int i = n; i < L; i++)
            sr[i] = 0.0f;
        if (self)
            self[r] = es * inv;
    }
}

void KFN(lm_rowdot)(int M, int n, const float *a, const float *b, int ld, float *out)
{
    for (int r = 0; r < M; r++) {
        const float *ar = a + (size_t)r * ld, *br = b + (size_t)r * ld;
        float acc[KLANES] = {0};
        int i = 0;
        for (; i + KLANES <= n; i += KLANES)
            for (int j = 0; j < KLANES; j++)
                acc[j] = KFMA(ar[i + j], br[i + j], acc[j]);
        for (int j = 0; i + j < n; j++)
            acc[j] = KFMA(ar[i + j], br[i + j], acc[j]);
        out[r] = KFN(k_lanes_sum)(acc);
    }
}

#endif /* KOWN_OPS */

void KFN(lm_rowaxpy)(int M, int n, const float *alpha, const float *x, int ldx, float *y, int ldy)
{
    for (int r = 0; r < M; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        for (int i = 0; i < n; i++)
            yr[i] = KFMA(alpha[r], xr[i], yr[i]);
    }
}

/* gelu = x s with s = 1 / (1 + e^(-2u)), so
 * gelu' = s + x s (1 - s) 2 u', u' = sqrt(2/pi) (1 + 3 0.044715 x^2). */
void KFN(lm_gelu_grad)(size_t n, const float *x, const float *dy, float *dx)
{
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float u = 0.7978845608028654f * KFMA(0.044715f * v * v, v, v);
        float sg = 1.0f / (1.0f + KFN(k_exp)(-2.0f * u));
        float du = 0.7978845608028654f * KFMA(3.0f * 0.044715f, v * v, 1.0f);
        dx[i] = dy[i] * KFMA(v * sg * (1.0f - sg), 2.0f * du, sg);
    }
}
