/* llm/kern_avx512.c — AVX-512 kernels: fp32 GEMM with FMA, and int8 GEMM
 * with VNNI (vpdpbusd), 8 rows x 32 columns per register tile.
 *
 * vpdpbusd multiplies unsigned by signed bytes. Activations are signed, so
 * they are fed as x + 128 (a byte xor with 0x80) and the excess,
 * 128 * sum_k w, is subtracted from each column at the end: integer
 * arithmetic, so the result equals the scalar kernel's exactly. */
#include <immintrin.h>

#define KSUFFIX avx512
#define KOWN_OPS /* gelu, softmax, layernorm and rowdot below, in intrinsics */
#include "llm/kern_common.h"

#define MR 8 /* rows per register tile: 8 x 2 accumulators + 2 weights + 1 broadcast */

#define AI __attribute__((always_inline)) static inline

static __mmask16 col_mask(int n_left)
{
    return n_left >= LM_PANEL ? (__mmask16)0xffff : (__mmask16)((1u << n_left) - 1);
}

/* y[r, 16 columns] = v + bias (+ y) for a panel with `cols` valid columns. */
AI void store_panel(float *y, __m512 v, const float *bias, int accum, __mmask16 m)
{
    if (bias)
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias));
    if (accum)
        v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y), v);
    _mm512_mask_storeu_ps(y, m, v);
}

/* ---- fp32 ----------------------------------------------------------------- */

AI void sgemm_tile(const int mr, const int np, int K, const float *x, int ldx,
                   const float *b0, const float *b1, const float *bias, float *y, int ldy,
                   int accum, int n_left)
{
    __m512 acc[MR][2];
    for (int r = 0; r < mr; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        __m512 w0 = _mm512_load_ps(b0 + (size_t)k * LM_PANEL);
        __m512 w1 = np > 1 ? _mm512_load_ps(b1 + (size_t)k * LM_PANEL) : w0;
        for (int r = 0; r < mr; r++) {
            __m512 a = _mm512_set1_ps(x[(size_t)r * ldx + k]);
            acc[r][0] = _mm512_fmadd_ps(a, w0, acc[r][0]);
            if (np > 1)
                acc[r][1] = _mm512_fmadd_ps(a, w1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < np; p++)
            store_panel(y + (size_t)r * ldy + p * LM_PANEL, acc[r][p],
                        bias ? bias + p * LM_PANEL : NULL, accum, col_mask(n_left - p * LM_PANEL));
}

#define SG_CASE(R)                                                                      \
    case R:                                                                             \
        if (np == 2)                                                                    \
            sgemm_tile(R, 2, w->k, xr, ldx, b0, b0 + (size_t)w->k * LM_PANEL, bi, yr,   \
                       ldy, accum, w->n - j0);                                          \
        else                                                                            \
            sgemm_tile(R, 1, w->k, xr, ldx, b0, NULL, bi, yr, ldy, accum, w->n - j0);   \
        break;

void lm_sgemm_avx512(int M, const float *x, int ldx, const lm_pf32 *w, const float *bias,
                     float *y, int ldy, int accum);
void lm_sgemm_avx512(int M, const float *x, int ldx, const lm_pf32 *w, const float *bias,
                     float *y, int ldy, int accum)
{
    for (int p = 0; p < w->n_panels; p += 2) {
        int np = w->n_panels - p >= 2 ? 2 : 1;
        int j0 = p * LM_PANEL;
        const float *b0 = w->data + (size_t)p * w->k * LM_PANEL;
        const float *bi = bias ? bias + j0 : NULL;
        for (int r0 = 0; r0 < M; r0 += MR) {
            const float *xr = x + (size_t)r0 * ldx;
            float *yr = y + (size_t)r0 * ldy + j0;
            switch (M - r0 >= MR ? MR : M - r0) {
                SG_CASE(8) SG_CASE(7) SG_CASE(6) SG_CASE(5)
                SG_CASE(4) SG_CASE(3) SG_CASE(2) SG_CASE(1)
            }
        }
    }
}

/* ---- int8 ----------------------------------------------------------------- */

void lm_quant_rows_avx512(int M, int k, const float *x, int ldx, int8_t *q, int kp, float *s);
void lm_quant_rows_avx512(int M, int k, const float *x, int ldx, int8_t *q, int kp, float *s)
{
    for (int r = 0; r < M; r++) {
        const float *xr = x + (size_t)r * ldx;
        int8_t *qr = q + (size_t)r * kp;
        __m512 vmax = _mm512_setzero_ps();
        for (int i = 0; i < k; i += LM_PANEL)
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(col_mask(k - i), xr + i)));
        float amax = _mm512_reduce_max_ps(vmax);
        memset(qr, 0, (size_t)kp);
        if (amax == 0.0f) {
            s[r] = 0.0f;
            continue;
        }
        float boost = LM_QUANT_BOOST(amax);
        __m512 inv = _mm512_set1_ps(127.0f / (amax * boost)), vb = _mm512_set1_ps(boost);
        __m512 hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
        for (int i = 0; i < k; i += LM_PANEL) {
            __mmask16 m = col_mask(k - i);
            __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), vb), inv);
            v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            _mm_mask_storeu_epi8(qr + i, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
        }
        s[r] = amax / 127.0f;
    }
}

/* Dequantizes one panel of int32 sums: (float)acc * (s_row * scale) + bias. */
AI void dequant_store(float *y, __m512i acc, float s_row, const float *scale, const float *bias,
                      int accum, __mmask16 m)
{
    __m512 sc = _mm512_mul_ps(_mm512_set1_ps(s_row), _mm512_maskz_loadu_ps(m, scale));
    store_panel(y, _mm512_mul_ps(_mm512_cvtepi32_ps(acc), sc), bias, accum, m);
}

AI void qgemm_tile(const int mr, const int np, int G, const int8_t *q, int kp, const float *s,
                   const int8_t *b0, const int8_t *b1, const int32_t *wsum, const float *scale,
                   const float *bias, float *y, int ldy, int accum, int n_left)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i acc[MR][2];
    for (int r = 0; r < mr; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int g = 0; g < G; g++) {
        __m512i w0 = _mm512_load_si512(b0 + (size_t)g * 64);
        __m512i w1 = np > 1 ? _mm512_load_si512(b1 + (size_t)g * 64) : w0;
        for (int r = 0; r < mr; r++) {
            int32_t a4;
            memcpy(&a4, q + (size_t)r * kp + 4 * g, 4);
            __m512i a = _mm512_xor_si512(_mm512_set1_epi32(a4), flip);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, w0);
            if (np > 1)
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, w1);
        }
    }
    for (int p = 0; p < np; p++) {
        __m512i corr = _mm512_slli_epi32(_mm512_load_si512(wsum + p * LM_PANEL), 7);
        __mmask16 m = col_mask(n_left - p * LM_PANEL);
        for (int r = 0; r < mr; r++)
            dequant_store(y + (size_t)r * ldy + p * LM_PANEL, _mm512_sub_epi32(acc[r][p], corr),
                          s[r], scale + p * LM_PANEL, bias ? bias + p * LM_PANEL : NULL, accum, m);
    }
}

#define QG_CASE(R)                                                                        \
    case R:                                                                               \
        if (np == 2)                                                                      \
            qgemm_tile(R, 2, G, qr, w->kp, s + r0, b0, b0 + (size_t)w->kp * LM_PANEL,     \
                       w->wsum + j0, w->scale + j0, bi, yr, ldy, accum, w->n - j0);       \
        else                                                                              \
            qgemm_tile(R, 1, G, qr, w->kp, s + r0, b0, NULL, w->wsum + j0, w->scale + j0, \
                       bi, yr, ldy, accum, w->n - j0);                                    \
        break;

void lm_qgemm_avx512(int M, const int8_t *q, const float *s, const lm_pq8 *w,
                      const float *bias, float *y, int ldy, int accum);
void lm_qgemm_avx512(int M, const int8_t *q, const float *s, const lm_pq8 *w,
                         const float *bias, float *y, int ldy, int accum)
{
    int G = w->kp / 4;
    for (int p = 0; p < w->n_panels; p += 2) {
        int np = w->n_panels - p >= 2 ? 2 : 1;
        int j0 = p * LM_PANEL;
        const int8_t *b0 = w->data + (size_t)p * w->kp * LM_PANEL;
        const float *bi = bias ? bias + j0 : NULL;
        for (int r0 = 0; r0 < M; r0 += MR) {
            const int8_t *qr = q + (size_t)r0 * w->kp;
            float *yr = y + (size_t)r0 * ldy + j0;
            switch (M - r0 >= MR ? MR : M - r0) {
                QG_CASE(8) QG_CASE(7) QG_CASE(6) QG_CASE(5)
                QG_CASE(4) QG_CASE(3) QG_CASE(2) QG_CASE(1)
            }
        }
    }
}

/* ---- elementwise: exp-based ops in intrinsics ---------------------------------
 * The portable versions in kern_common.h divide and rebuild exponent bits;
 * here 2^n comes from vscalefps and 1/x from vrcp14ps plus one Newton step
 * (relative error ~2^-23), which halves the cost of GELU and softmax, the
 * largest non-GEMM parts of a candidate's forward pass. */

AI __m512 exp512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, f), f, f), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

AI __m512 recip512(__m512 d)
{
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

void lm_gelu_avx512(int M, int n, float *x, int ldx)
{
    const __m512 c0 = _mm512_set1_ps(-2.0f * 0.7978845608028654f), c1 = _mm512_set1_ps(0.044715f);
    for (int r = 0; r < M; r++) {
        float *xr = x + (size_t)r * ldx;
        for (int i = 0; i < n; i += LM_PANEL) {
            __mmask16 m = col_mask(n - i);
            __m512 v = _mm512_maskz_loadu_ps(m, xr + i);
            __m512 u = _mm512_mul_ps(c0, _mm512_fmadd_ps(_mm512_mul_ps(c1, _mm512_mul_ps(v, v)), v, v));
            __m512 den = _mm512_add_ps(_mm512_set1_ps(1.0f), exp512(u));
            _mm512_mask_storeu_ps(xr + i, m, _mm512_mul_ps(v, recip512(den)));
        }
    }
}

void lm_softmax_avx512(int M, int L, float *s, int lds, float *self, float scale, int causal)
{
    const __m512 vs = _mm512_set1_ps(scale);
    for (int r = 0; r < M; r++) {
        float *sr = s + (size_t)r * lds;
        int n = causal ? (r + 1 < L ? r + 1 : L) : L;
        __m512 vmax = _mm512_set1_ps(self ? self[r] : -INFINITY);
        for (int i = 0; i < n; i += LM_PANEL)
            vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, col_mask(n - i), sr + i));
        __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax) * scale);
        __m512 vsum = _mm512_setzero_ps();
        for (int i = 0; i < n; i += LM_PANEL) {
            __mmask16 m = col_mask(n - i);
            __m512 e = exp512(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, sr + i), vs, mx));
            vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
            _mm512_mask_storeu_ps(sr + i, m, e);
        }
        float es = 0.0f;
        if (self) {
            __m512 e = exp512(_mm512_fmsub_ps(_mm512_set1_ps(self[r]), vs, mx));
            es = _mm512_cvtss_f32(e);
        }
        float inv = 1.0f / (_mm512_reduce_add_ps(vsum) + es);
        __m512 vinv = _mm512_set1_ps(inv);
        for (int i = 0; i < n; i += LM_PANEL) {
            __mmask16 m = col_mask(n - i);
            _mm512_mask_storeu_ps(sr + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sr + i), vinv));
        }
        for (int i = n; i < L; i++)
            sr[i] = 0.0f;
        if (self)
            self[r] = es * inv;
    }
}

/* Row reductions: one vector accumulator and the hardware's horizontal add,
 * instead of the portable code's 16 lanes spilled to the stack. */
void lm_rowdot_avx512(int M, int n, const float *a, const float *b, int ld, float *out)
{
    for (int r = 0; r < M; r++) {
        const float *ar = a + (size_t)r * ld, *br = b + (size_t)r * ld;
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < n; i += LM_PANEL) {
            __mmask16 m = col_mask(n - i);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, ar + i), _mm512_maskz_loadu_ps(m, br + i), acc);
        }
        out[r] = _mm512_reduce_add_ps(acc);
    }
}

void lm_layernorm_avx512(int M, int d, const float *x, int ldx, const float *g, const float *b,
                         float *y, int ldy)
{
    const float inv_d = 1.0f / (float)d;
    for (int r = 0; r < M; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        __m512 sum = _mm512_setzero_ps();
        for (int i = 0; i < d; i += LM_PANEL)
            sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(col_mask(d - i), xr + i));
        __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) * inv_d);
        __m512 sq = _mm512_setzero_ps();
        for (int i = 0; i < d; i += LM_PANEL) {
            __mmask16 m = col_mask(d - i);
            __m512 v = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, xr + i), mean);
            sq = _mm512_fmadd_ps(v, v, sq);
        }
        __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sq) * inv_d + 1e-5f));
        for (int i = 0; i < d; i += LM_PANEL) {
            __mmask16 m = col_mask(d - i);
            __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + i), mean), rstd);
            v = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, b + i));
            _mm512_mask_storeu_ps(yr + i, m, v);
        }
    }
}

const lm_kern lm_kern_avx512 = {
    .isa = LM_ISA_AVX512,
    .name = "avx512",
    .sgemm = lm_sgemm_avx512,
    .quant_rows = lm_quant_rows_avx512,
    .qgemm = lm_qgemm_avx512,
    .layernorm = lm_layernorm_avx512,
    .gelu = lm_gelu_avx512,
    .gelu_grad = lm_gelu_grad_avx512,
    .softmax = lm_softmax_avx512,
    .rowdot = lm_rowdot_avx512,
    .rowaxpy = lm_rowaxpy_avx512,
};
