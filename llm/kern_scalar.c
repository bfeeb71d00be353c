/* llm/kern_scalar.c — the scalar kernels: plain loops over the packed
 * layouts. They are the ground truth the SIMD kernels are tested against and
 * the fallback on CPUs without AVX2. */
#define KSUFFIX scalar
#include "llm/kern_common.h"

static void sgemm_scalar(int M, const float *x, int ldx, const lm_pf32 *w, const float *bias,
                         float *y, int ldy, int accum)
{
    for (int r = 0; r < M; r++)
        for (int j = 0; j < w->n; j++) {
            const float *col = w->data + (size_t)(j / LM_PANEL) * w->k * LM_PANEL + j % LM_PANEL;
            float acc = 0.0f;
            for (int kk = 0; kk < w->k; kk++)
                acc += x[(size_t)r * ldx + kk] * col[(size_t)kk * LM_PANEL];
            if (bias)
                acc += bias[j];
            float *out = &y[(size_t)r * ldy + j];
            *out = accum ? *out + acc : acc;
        }
}

static void quant_rows_scalar(int M, int k, const float *x, int ldx, int8_t *q, int kp, float *s)
{
    for (int r = 0; r < M; r++) {
        lm_quantize_row_ref(x + (size_t)r * ldx, k, q + (size_t)r * kp, &s[r]);
        memset(q + (size_t)r * kp + k, 0, (size_t)(kp - k));
    }
}

static void qgemm_scalar(int M, const int8_t *q, const float *s, const lm_pq8 *w,
                         const float *bias, float *y, int ldy, int accum)
{
    for (int r = 0; r < M; r++)
        for (int j = 0; j < w->n; j++) {
            int32_t acc = 0;
            for (int kk = 0; kk < w->k; kk++)
                acc += (int32_t)q[(size_t)r * w->kp + kk] * lm_pq8_get(w, j, kk);
            float v = (float)acc * (s[r] * w->scale[j]);
            if (bias)
                v += bias[j];
            float *out = &y[(size_t)r * ldy + j];
            *out = accum ? *out + v : v;
        }
}

const lm_kern lm_kern_scalar = {
    .isa = LM_ISA_SCALAR,
    .name = "scalar",
    .sgemm = sgemm_scalar,
    .quant_rows = quant_rows_scalar,
    .qgemm = qgemm_scalar,
    .layernorm = lm_layernorm_scalar,
    .gelu = lm_gelu_scalar,
    .gelu_grad = lm_gelu_grad_scalar,
    .softmax = lm_softmax_scalar,
    .rowdot = lm_rowdot_scalar,
    .rowaxpy = lm_rowaxpy_scalar,
};
