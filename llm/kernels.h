/* llm/kernels.h — the CPU compute kernels of ranker-v1, one table per
 * instruction set, chosen at run time.
 *
 * Every kernel has a scalar version (kern_scalar.c) that is the ground truth;
 * the AVX2, AVX-512 (VNNI) and AMX versions are tested against it on random
 * inputs of awkward sizes:
 *   - int8 paths (quant_rows, qgemm) are bit-identical to scalar: integer
 *     products are exact, and the float steps around them (scale, round,
 *     dequantize) are the same operations in the same order.
 *   - fp32 paths (sgemm, elementwise) agree within float rounding: SIMD
 *     code fuses multiply-adds where the scalar path rounds twice.
 *
 * Weights live in packed panels of LM_PANEL output columns so that a SIMD
 * register loads 16 columns at once. Both packed layouts are the same for
 * every instruction set, so a model is packed once at load time. */
#ifndef RANKD_LLM_KERNELS_H
#define RANKD_LLM_KERNELS_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#define LM_PANEL 16  /* output columns per panel: one zmm of fp32 or int32 */
#define LM_KALIGN 64 /* int8 reduction dim padding: one AMX tile row, 16 VNNI groups */

typedef enum lm_isa {
    LM_ISA_SCALAR,
    LM_ISA_AVX2,   /* AVX2 + FMA */
    LM_ISA_AVX512, /* AVX-512 F/BW/VL/DQ + VNNI */
    LM_ISA_AMX,    /* AVX512 above + AMX-INT8 tiles for qgemm */
    LM_ISA_COUNT
} lm_isa;

/* fp32 weight W [n, k] (y = x W^T), packed:
 * data[(p * k + kk) * LM_PANEL + c] = W[p * LM_PANEL + c][kk], zero for
 * columns past n. */
typedef struct lm_pf32 {
    int n, k, n_panels;
    float *data;
} lm_pf32;

/* int8 weight, symmetric per output channel: W[j][kk] ~= q[j][kk] * scale[j].
 * Reduction dim padded to kp (a multiple of LM_KALIGN) with zeros; groups of
 * 4 consecutive k per column, the layout of VNNI and of AMX B tiles:
 * data[((p * kp/4 + g) * LM_PANEL + c) * 4 + i] = q[p*16 + c][4g + i]. */
typedef struct lm_pq8 {
    int n, k, kp, n_panels;
    int8_t *data;
    float *scale;  /* [n_panels * LM_PANEL], 0 past n */
    int32_t *wsum; /* [n_panels * LM_PANEL], sum over k of q: the correction
                      for feeding activations as unsigned bytes (x + 128) */
} lm_pq8;

static_assert(LM_KALIGN % 4 == 0, "int8 groups are 4 bytes");
static_assert(sizeof(float) == 4 && sizeof(int32_t) == 4, "packed layouts assume 32-bit lanes");

static inline int lm_round_up(int x, int m) { return (x + m - 1) / m * m; }
static inline int lm_panels(int n) { return (n + LM_PANEL - 1) / LM_PANEL; }

/* Bytes a packed weight needs (data only; pq8 adds scale and wsum). */
size_t lm_pf32_bytes(int n, int k);
size_t lm_pq8_bytes(int n, int k);

/* Packs W [n, k] row-major (may be unaligned, e.g. straight from a mapped
 * file) into `mem` (64-byte aligned, lm_pf32_bytes big). */
void lm_pf32_pack(lm_pf32 *p, void *mem, const void *w, int n, int k);
float lm_pf32_get(const lm_pf32 *p, int row, int col);

/* Packs int8 rows q [n, k] with their scales; `mem` is lm_pq8_bytes big. */
void lm_pq8_pack(lm_pq8 *p, void *mem, const void *q, const void *scale, int n, int k);
int8_t lm_pq8_get(const lm_pq8 *p, int row, int col);

/* Views of panels [p0, p0 + np) of a packed weight, for splitting the item
 * table across threads. */
lm_pf32 lm_pf32_view(const lm_pf32 *p, int p0, int np);
lm_pq8 lm_pq8_view(const lm_pq8 *p, int p0, int np);

/* The scalar reference quantizer: symmetric, one scale per row.
 * amax = max|x|; scale = amax / 127; q = rint(x * (127 / amax)) in [-127, 127];
 * a zero row gets scale 0 and q = 0. Weights (per output channel) and
 * activations (per token, dynamically) both use it. For amax below 2^-100,
 * 127 / amax would overflow, so x and amax are first multiplied by 2^100
 * (exact, and 1 for every other row): q = rint((x * boost) * (127 / (amax * boost))). */
#define LM_QUANT_BOOST(amax) ((amax) < 0x1p-100f ? 0x1p100f : 1.0f)
void lm_quantize_row_ref(const float *x, int k, int8_t *q, float *scale);

typedef struct lm_kern {
    lm_isa isa;
    const char *name;

    /* y[M, w->n] = x[M, w->k] . W^T + bias (bias may be NULL); with accum,
     * y += instead. Leading dimensions in floats. */
    void (*sgemm)(int M, const float *x, int ldx, const lm_pf32 *w, const float *bias,
                  float *y, int ldy, int accum);

    /* Per-row quantization of x[M, k] into q[M, kp] (zero padded) and s[M];
     * identical to lm_quantize_row_ref on every row. */
    void (*quant_rows)(int M, int k, const float *x, int ldx, int8_t *q, int kp, float *s);

    /* y[M, w->n] (= or +=) (float)(sum_k q*wq) * (s[r] * w->scale[c]) + bias[c].
     * q is [M, w->kp]. */
    void (*qgemm)(int M, const int8_t *q, const float *s, const lm_pq8 *w, const float *bias,
                  float *y, int ldy, int accum);

    /* y = (x - mean) / sqrt(var + 1e-5) * g + b over rows of length d. */
    void (*layernorm)(int M, int d, const float *x, int ldx, const float *g, const float *b,
                      float *y, int ldy);

    /* x = gelu_tanh(x) over rows of length n. */
    void (*gelu)(int M, int n, float *x, int ldx);
    /* dx[i] = dy[i] * gelu_tanh'(x[i]) over n values (training). */
    void (*gelu_grad)(size_t n, const float *x, const float *dy, float *dx);

    /* Softmax of each row of s[M, L] after multiplying by `scale`. With
     * `causal`, row r covers entries 0..r and zeroes the rest. With `self`
     * (array of M extra logits, or NULL) each row has one more entry, stored
     * back into self[r]. */
    void (*softmax)(int M, int L, float *s, int lds, float *self, float scale, int causal);

    /* out[r] = a[r, :n] . b[r, :n] (rows ld apart): candidates' self logits. */
    void (*rowdot)(int M, int n, const float *a, const float *b, int ld, float *out);
    /* y[r, :n] += alpha[r] * x[r, :n]: candidates' self values. */
    void (*rowaxpy)(int M, int n, const float *alpha, const float *x, int ldx, float *y, int ldy);
} lm_kern;

/* Best instruction set this CPU and OS support. */
lm_isa lm_isa_detect(void);
/* The set rankd uses: lm_isa_detect(), lowered by RANKD_ISA=scalar|avx2|avx512|amx. */
lm_isa lm_isa_default(void);
const char *lm_isa_name(lm_isa isa);
int lm_isa_parse(const char *s, lm_isa *out);
/* The kernel table for `isa`; NULL when this CPU cannot run it. */
const lm_kern *lm_kern_get(lm_isa isa);

#endif
