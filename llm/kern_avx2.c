/* llm/kern_avx2.c — AVX2 + FMA kernels, for x86-64 CPUs without AVX-512.
 *
 * AVX2 has no exact 8-bit dot product (vpmaddubsw saturates at 16 bits), so
 * the int8 GEMM widens both operands to 16 bits and uses vpmaddwd, whose
 * pairwise sums are exact in 32 bits. No unsigned-offset correction is
 * needed: the sums equal the scalar kernel's. */
#include <immintrin.h>

#define KSUFFIX avx2
#include "llm/kern_common.h"

#define AI __attribute__((always_inline)) static inline

/* Stores 8 floats (v + bias, plus y with accum) of which `n` (1..8) are valid. */
AI void store8(float *y, __m256 v, const float *bias, int accum, int n)
{
    float t[8];
    _mm256_storeu_ps(t, v);
    for (int j = 0; j < n && j < 8; j++) {
        float o = t[j];
        if (bias)
            o += bias[j];
        y[j] = accum ? y[j] + o : o;
    }
}

AI void store8_full(float *y, __m256 v, const float *bias, int accum)
{
    if (bias)
        v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
    if (accum)
        v = _mm256_add_ps(_mm256_loadu_ps(y), v);
    _mm256_storeu_ps(y, v);
}

/* Writes columns [0, 16) of one row from two 8-float halves. */
AI void store16(float *y, __m256 lo, __m256 hi, const float *bias, int accum, int n_left)
{
    if (n_left >= 16) {
        store8_full(y, lo, bias, accum);
        store8_full(y + 8, hi, bias ? bias + 8 : NULL, accum);
        return;
    }
    store8(y, lo, bias, accum, n_left);
    if (n_left > 8)
        store8(y + 8, hi, bias ? bias + 8 : NULL, accum, n_left - 8);
}

/* ---- fp32: 6 rows x 16 columns ----------------------------------------- */

#define SMR 6

AI void sgemm_tile(const int mr, int K, const float *x, int ldx, const float *b, const float *bias,
                   float *y, int ldy, int accum, int n_left)
{
    __m256 acc[SMR][2];
    for (int r = 0; r < mr; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m256 w0 = _mm256_load_ps(b + (size_t)k * LM_PANEL);
        __m256 w1 = _mm256_load_ps(b + (size_t)k * LM_PANEL + 8);
        for (int r = 0; r < mr; r++) {
            __m256 a = _mm256_broadcast_ss(x + (size_t)r * ldx + k);
            acc[r][0] = _mm256_fmadd_ps(a, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++)
        store16(y + (size_t)r * ldy, acc[r][0], acc[r][1], bias, accum, n_left);
}

static void sgemm_avx2(int M, const float *x, int ldx, const lm_pf32 *w, const float *bias,
                       float *y, int ldy, int accum)
{
    for (int p = 0; p < w->n_panels; p++) {
        int j0 = p * LM_PANEL;
        const float *b = w->data + (size_t)p * w->k * LM_PANEL;
        const float *bi = bias ? bias + j0 : NULL;
        for (int r0 = 0; r0 < M; r0 += SMR) {
            const float *xr = x + (size_t)r0 * ldx;
            float *yr = y + (size_t)r0 * ldy + j0;
            int n_left = w->n - j0;
            switch (M - r0 >= SMR ? SMR : M - r0) {
            case 6: sgemm_tile(6, w->k, xr, ldx, b, bi, yr, ldy, accum, n_left); break;
            case 5: sgemm_tile(5, w->k, xr, ldx, b, bi, yr, ldy, accum, n_left); break;
            case 4: sgemm_tile(4, w->k, xr, ldx, b, bi, yr, ldy, accum, n_left); break;
            case 3: sgemm_tile(3, w->k, xr, ldx, b, bi, yr, ldy, accum, n_left); break;
            case 2: sgemm_tile(2, w->k, xr, ldx, b, bi, yr, ldy, accum, n_left); break;
            default: sgemm_tile(1, w->k, xr, ldx, b, bi, yr, ldy, accum, n_left); break;
            }
        }
    }
}

/* ---- int8 --------------------------------------------------------------- */

static void quant_rows_avx2(int M, int k, const float *x, int ldx, int8_t *q, int kp, float *s)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int r = 0; r < M; r++) {
        const float *xr = x + (size_t)r * ldx;
        int8_t *qr = q + (size_t)r * kp;
        __m256 vmax = _mm256_setzero_ps();
        int i = 0;
        for (; i + 8 <= k; i += 8)
            vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + i)));
        float t[8];
        _mm256_storeu_ps(t, vmax);
        float amax = 0.0f;
        for (int j = 0; j < 8; j++)
            amax = t[j] > amax ? t[j] : amax;
        for (; i < k; i++)
            amax = fabsf(xr[i]) > amax ? fabsf(xr[i]) : amax;
        memset(qr, 0, (size_t)kp);
        if (amax == 0.0f) {
            s[r] = 0.0f;
            continue;
        }
        float boost = LM_QUANT_BOOST(amax);
        float inv = 127.0f / (amax * boost);
        __m256 vinv = _mm256_set1_ps(inv), vb = _mm256_set1_ps(boost);
        __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
        for (i = 0; i + 8 <= k; i += 8) {
            __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vb), vinv);
            v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            int32_t qi[8];
            _mm256_storeu_si256((__m256i *)qi, _mm256_cvtps_epi32(v));
            for (int j = 0; j < 8; j++)
                qr[i + j] = (int8_t)qi[j];
        }
        for (; i < k; i++) {
            float v = rintf(xr[i] * boost * inv);
            v = v > 127.0f ? 127.0f : v;
            v = v < -127.0f ? -127.0f : v;
            qr[i] = (int8_t)v;
        }
        s[r] = amax / 127.0f;
    }
}

#define QMR 2 /* 2 rows x 16 columns: 8 accumulators + 4 widened weights + 1 broadcast */

/* acc[j] holds, for columns 4j..4j+3, two partial sums per column in
 * adjacent lanes; hadd folds them and the permute restores column order. */
AI __m256i fold8(__m256i a, __m256i b)
{
    return _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(a, b), _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
}

AI void dequant16(float *y, __m256i lo, __m256i hi, float s_row, const float *scale,
                  const float *bias, int accum, int n_left)
{
    __m256 s = _mm256_set1_ps(s_row);
    __m256 vlo = _mm256_mul_ps(_mm256_cvtepi32_ps(lo), _mm256_mul_ps(s, _mm256_loadu_ps(scale)));
    __m256 vhi = _mm256_mul_ps(_mm256_cvtepi32_ps(hi), _mm256_mul_ps(s, _mm256_loadu_ps(scale + 8)));
    store16(y, vlo, vhi, bias, accum, n_left);
}

AI void qgemm_tile(const int mr, int G, const int8_t *q, int kp, const float *s, const int8_t *b,
                   const float *scale, const float *bias, float *y, int ldy, int accum, int n_left)
{
    __m256i acc[QMR][4];
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < 4; j++)
            acc[r][j] = _mm256_setzero_si256();
    for (int g = 0; g < G; g++) {
        const int8_t *bg = b + (size_t)g * 64;
        __m256i w[4];
        for (int j = 0; j < 4; j++)
            w[j] = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i *)(bg + 16 * j)));
        for (int r = 0; r < mr; r++) {
            int32_t a4;
            memcpy(&a4, q + (size_t)r * kp + 4 * g, 4);
            __m256i a = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(a4)));
            for (int j = 0; j < 4; j++)
                acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(w[j], a));
        }
    }
    for (int r = 0; r < mr; r++)
        dequant16(y + (size_t)r * ldy, fold8(acc[r][0], acc[r][1]), fold8(acc[r][2], acc[r][3]),
                  s[r], scale, bias, accum, n_left);
}

static void qgemm_avx2(int M, const int8_t *q, const float *s, const lm_pq8 *w, const float *bias,
                       float *y, int ldy, int accum)
{
    int G = w->kp / 4;
    for (int p = 0; p < w->n_panels; p++) {
        int j0 = p * LM_PANEL;
        const int8_t *b = w->data + (size_t)p * w->kp * LM_PANEL;
        const float *bi = bias ? bias + j0 : NULL;
        for (int r0 = 0; r0 < M; r0 += QMR) {
            const int8_t *qr = q + (size_t)r0 * w->kp;
            float *yr = y + (size_t)r0 * ldy + j0;
            if (M - r0 >= 2)
                qgemm_tile(2, G, qr, w->kp, s + r0, b, w->scale + j0, bi, yr, ldy, accum, w->n - j0);
            else
                qgemm_tile(1, G, qr, w->kp, s + r0, b, w->scale + j0, bi, yr, ldy, accum, w->n - j0);
        }
    }
}

const lm_kern lm_kern_avx2 = {
    .isa = LM_ISA_AVX2,
    .name = "avx2",
    .sgemm = sgemm_avx2,
    .quant_rows = quant_rows_avx2,
    .qgemm = qgemm_avx2,
    .layernorm = lm_layernorm_avx2,
    .gelu = lm_gelu_avx2,
    .gelu_grad = lm_gelu_grad_avx2,
    .softmax = lm_softmax_avx2,
    .rowdot = lm_rowdot_avx2,
    .rowaxpy = lm_rowaxpy_avx2,
};
