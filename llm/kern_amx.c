/* llm/kern_amx.c — int8 GEMM on AMX tiles (Intel Sapphire Rapids and later).
 *
 * A tile multiply takes 16 rows x 64 int8 of activations (A) and 16 groups of
 * 4 k x 16 columns of weights (B: exactly 1 KiB of one packed panel, see
 * lm_pq8) into 16 x 16 int32 sums. tdpbssd multiplies signed by signed, so
 * unlike VNNI no offset correction is needed. Blocks are 32 rows x 32
 * columns: two A tiles, two B tiles and four accumulators. Everything but
 * qgemm comes from the AVX-512 table. */
#include <immintrin.h>
#include <string.h>

#include "llm/kernels.h"

void lm_sgemm_avx512(int M, const float *x, int ldx, const lm_pf32 *w, const float *bias,
                     float *y, int ldy, int accum);
void lm_quant_rows_avx512(int M, int k, const float *x, int ldx, int8_t *q, int kp, float *s);
void lm_layernorm_avx512(int M, int d, const float *x, int ldx, const float *g, const float *b,
                         float *y, int ldy);
void lm_gelu_avx512(int M, int n, float *x, int ldx);
void lm_gelu_grad_avx512(size_t n, const float *x, const float *dy, float *dx);
void lm_softmax_avx512(int M, int L, float *s, int lds, float *self, float scale, int causal);
void lm_rowdot_avx512(int M, int n, const float *a, const float *b, int ld, float *out);
void lm_rowaxpy_avx512(int M, int n, const float *alpha, const float *x, int ldx, float *y, int ldy);

/* Tile numbers must be literals: the intrinsics paste them into asm. */
#define T_C0 0
#define T_C1 1
#define T_C2 2
#define T_C3 3
#define T_A0 4
#define T_A1 5
#define T_B0 6
#define T_B1 7

struct tilecfg {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};
_Static_assert(sizeof(struct tilecfg) == 64, "ldtilecfg reads 64 bytes");

/* Accumulator tiles C0/C1 (columns of B0/B1) belong to A0's rows, C2/C3 to
 * A1's; A0 has rows0 rows and A1 rows1 (0 when unused). */
static void tiles_config(int rows0, int rows1)
{
    struct tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    int rows[8] = {rows0, rows0, rows1, rows1, rows0, rows1, 16, 16};
    for (int t = 0; t < 8; t++) {
        c.rows[t] = (uint8_t)(rows[t] ? rows[t] : 1);
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}

static void dequant_rows(int rows, const int32_t (*acc)[LM_PANEL], const float *s,
                         const lm_pq8 *w, int j0, const float *bias, float *y, int ldy,
                         int accum)
{
    int n_left = w->n - j0;
    __mmask16 m = n_left >= LM_PANEL ? (__mmask16)0xffff : (__mmask16)((1u << n_left) - 1);
    __m512 scale = _mm512_maskz_loadu_ps(m, w->scale + j0);
    __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + j0) : _mm512_setzero_ps();
    for (int r = 0; r < rows; r++) {
        __m512 sc = _mm512_mul_ps(_mm512_set1_ps(s[r]), scale);
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(acc[r])), sc);
        if (bias)
            v = _mm512_add_ps(v, b);
        float *yr = y + (size_t)r * ldy + j0;
        if (accum)
            v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, yr), v);
        _mm512_mask_storeu_ps(yr, m, v);
    }
}

/* One block: rows [r0, r0 + rows0 + rows1), panels p and (if two) p + 1. */
static void block(const int8_t *q, const float *s, const lm_pq8 *w, int r0, int rows0,
                  int rows1, int p, int two, const float *bias, float *y, int ldy, int accum)
{
    const size_t panel = (size_t)w->kp * LM_PANEL;
    const int8_t *b0 = w->data + (size_t)p * panel;
    const int8_t *a0 = q + (size_t)r0 * w->kp;
    const int8_t *a1 = a0 + (size_t)16 * w->kp;
    _tile_zero(T_C0);
    _tile_zero(T_C1);
    _tile_zero(T_C2);
    _tile_zero(T_C3);
    for (int kc = 0; kc < w->kp; kc += LM_KALIGN) {
        _tile_loadd(T_B0, b0 + (size_t)kc * LM_PANEL, 64);
        _tile_loadd(T_A0, a0 + kc, w->kp);
        _tile_dpbssd(T_C0, T_A0, T_B0);
        if (rows1) {
            _tile_loadd(T_A1, a1 + kc, w->kp);
            _tile_dpbssd(T_C2, T_A1, T_B0);
        }
        if (two) {
            _tile_loadd(T_B1, b0 + panel + (size_t)kc * LM_PANEL, 64);
            _tile_dpbssd(T_C1, T_A0, T_B1);
            if (rows1)
                _tile_dpbssd(T_C3, T_A1, T_B1);
        }
    }
    int32_t acc[4][16][LM_PANEL] __attribute__((aligned(64)));
    _tile_stored(T_C0, acc[0], 64);
    if (two)
        _tile_stored(T_C1, acc[1], 64);
    if (rows1) {
        _tile_stored(T_C2, acc[2], 64);
        if (two)
            _tile_stored(T_C3, acc[3], 64);
    }
    int j0 = p * LM_PANEL;
    dequant_rows(rows0, acc[0], s + r0, w, j0, bias, y + (size_t)r0 * ldy, ldy, accum);
    if (two)
        dequant_rows(rows0, acc[1], s + r0, w, j0 + LM_PANEL, bias, y + (size_t)r0 * ldy, ldy, accum);
    if (rows1) {
        float *y1 = y + (size_t)(r0 + 16) * ldy;
        dequant_rows(rows1, acc[2], s + r0 + 16, w, j0, bias, y1, ldy, accum);
        if (two)
            dequant_rows(rows1, acc[3], s + r0 + 16, w, j0 + LM_PANEL, bias, y1, ldy, accum);
    }
}

static void qgemm_amx(int M, const int8_t *q, const float *s, const lm_pq8 *w, const float *bias,
                      float *y, int ldy, int accum)
{
    int cur0 = -1, cur1 = -1;
    for (int r0 = 0; r0 < M; r0 += 32) {
        int left = M - r0;
        int rows0 = left >= 16 ? 16 : left;
        int rows1 = left >= 32 ? 16 : (left > 16 ? left - 16 : 0);
        if (rows0 != cur0 || rows1 != cur1) {
            tiles_config(rows0, rows1);
            cur0 = rows0;
            cur1 = rows1;
        }
        for (int p = 0; p < w->n_panels; p += 2)
            block(q, s, w, r0, rows0, rows1, p, w->n_panels - p >= 2, bias, y, ldy, accum);
    }
    _tile_release();
}

const lm_kern lm_kern_amx = {
    .isa = LM_ISA_AMX,
    .name = "amx",
    .sgemm = lm_sgemm_avx512,
    .quant_rows = lm_quant_rows_avx512,
    .qgemm = qgemm_amx,
    .layernorm = lm_layernorm_avx512,
    .gelu = lm_gelu_avx512,
    .gelu_grad = lm_gelu_grad_avx512,
    .softmax = lm_softmax_avx512,
    .rowdot = lm_rowdot_avx512,
    .rowaxpy = lm_rowaxpy_avx512,
};
