/* llm/train_ops.h — forward and backward of the operations ranker-v1 is
 * built from, for training on the CPU (fp32, row-major, OpenBLAS GEMMs).
 *
 * Backward functions ADD into gradient buffers (so that a tensor used twice
 * collects both contributions) unless they say otherwise. Each one is
 * checked against finite differences in tests/check_train_ops.c.
 *
 * Work is split across a thread pool by rows or by output columns, with
 * fixed partitions and fixed reduction orders, so that a given seed gives
 * the same model on the same thread count. BLAS itself runs on one thread
 * per call (tr_ops_init). */
#ifndef RANKD_LLM_TRAIN_OPS_H
#define RANKD_LLM_TRAIN_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "llm/pool.h"

/* Puts OpenBLAS in single-threaded mode (the pool does the splitting) and
 * picks the SIMD kernels; call once before the other functions. */
void tr_ops_init(void);

/* ---- linear: Y[N, out] = X[N, in] . W[out, in]^T + b --------------------- */

void tr_linear_fwd(lm_pool *p, int N, int in, int out, const float *X, const float *W,
                   const float *b, float *Y);
/* dX (+)= dY W (assigned when accum_dx is 0; skipped when dX is NULL);
 * dW += dY^T X; db += column sums of dY. */
void tr_linear_bwd(lm_pool *p, int N, int in, int out, const float *X, const float *W,
                   const float *dY, float *dX, int accum_dx, float *dW, float *db);

/* ---- LayerNorm over rows of d, eps 1e-5 ------------------------------------ */

/* Saves mean and rstd [N] for the backward pass. */
void tr_layernorm_fwd(lm_pool *p, int N, int d, const float *X, const float *g, const float *b,
                      float *Y, float *mean, float *rstd);
/* dX += ...; dg, db += ... (per-thread partial sums, reduced in order). */
void tr_layernorm_bwd(lm_pool *p, int N, int d, const float *X, const float *g,
                      const float *mean, const float *rstd, const float *dY, float *dX,
                      float *dg, float *db);

/* ---- GELU, tanh form ---------------------------------------------------------- */

void tr_gelu_fwd(lm_pool *p, size_t n, const float *X, float *Y);
/* dX = dY * gelu'(X) (assigned). */
void tr_gelu_bwd(lm_pool *p, size_t n, const float *X, const float *dY, float *dX);

/* ---- dropout --------------------------------------------------------------------
 * The mask is a hash of (seed, stream, index), so the backward pass makes
 * it again instead of storing it. rate 0 is the identity. */

void tr_dropout(lm_pool *p, size_t n, float *X, float rate, uint64_t seed, uint64_t stream);

/* ---- attention ------------------------------------------------------------------
 * A sequence's history tokens are rows [0, L) of qkv (stride 3d: q, k, v);
 * history row t attends causally to rows 0..t. A candidate attends to the
 * history rows 0..t_c of its sequence and to itself only. Probabilities are
 * saved for the backward pass. */

typedef struct tr_attn_shape {
    int d, n_heads;
} tr_attn_shape;

/* One sequence's history: out[L, d] (row stride d). P: [H, L, L]. */
void tr_attn_hist_fwd(const tr_attn_shape *s, int L, const float *qkv, float *P, float *out);
/* dqkv[L, 3d] += gradients of q, k, v for the history rows. */
void tr_attn_hist_bwd(const tr_attn_shape *s, int L, const float *qkv, const float *P,
                      const float *dout, float *dqkv);

/* One candidate: its own qkv row cq (3d), attending to history rows
 * 0..n_keys-1 of hist_qkv and itself. out[d]; P: [H, n_keys + 1]. */
void tr_attn_cand_fwd(const tr_attn_shape *s, int n_keys, const float *hist_qkv,
                      const float *cq, float *P, float *out);
/* dhist_qkv rows 0..n_keys-1 (k and v parts) += ...; dcq (3d) += ... */
void tr_attn_cand_bwd(const tr_attn_shape *s, int n_keys, const float *hist_qkv,
                      const float *cq, const float *P, const float *dout, float *dhist_qkv,
                      float *dcq);

/* ---- softmax cross-entropy -------------------------------------------------------- */

/* Over one row of logits z[n] with target index `y`: returns the loss
 * -log softmax(z)[y] and writes dz = (softmax(z) - onehot(y)) * scale.
 * Entries equal to -INFINITY are masked out (probability 0). With `soft`
 * (teacher probabilities at temperature T, summing to 1), adds
 * kd_weight * T^2 * KL(soft || softmax(z / T)) to the loss and its gradient;
 * the hard-label part is weighted by hard_weight. */
typedef struct tr_ce_opts {
    float scale;       /* usually 1 / (number of rows in the loss) */
    float hard_weight; /* 1 without distillation */
    float kd_weight;   /* 0 without distillation */
    float temperature;
} tr_ce_opts;

double tr_softmax_ce(int n, const float *z, int y, const float *soft, const tr_ce_opts *o,
                     float *dz);

/* Teacher probabilities softmax(z / T) over n (masked as above). */
void tr_softmax_t(int n, const float *z, float T, float *out);

#endif
