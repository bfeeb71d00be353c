/* gpu/internal.cuh — what the engine's .cu files share: the model's
 * weights on the device, error checking, and the retrieval op's entry
 * points. Not part of the C interface (gpu/engine.h). */
#ifndef RANKD_GPU_INTERNAL_CUH
#define RANKD_GPU_INTERNAL_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "llm/model.h"

/* int8 rows are padded with zeros to a multiple of GP_KALIGN bytes: the
 * reduction step of one int8 tensor-core MMA (m16n8k32). */
#define GP_KALIGN 32

__host__ __device__ static inline int gp_round_up(int x, int m) { return (x + m - 1) / m * m; }

/* Sum and maximum over the 4 lanes of a quad (lanes 4q .. 4q + 3), which
 * hold one row between them in the m16n8 fragment layouts; every lane of
 * the warp must take part. */
static __device__ __forceinline__ float gp_quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

static __device__ __forceinline__ float gp_quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

/* A linear layer y = x W^T + b, W [n, k], row-major on the device with
 * zero padding: np rows (a multiple of 32; the FFN's d_ffn a multiple of
 * GP_FCHUNK) of kp elements (rows of 32-byte multiples). int8 models: q and
 * scale [np]; fp32 models: h, the weight in fp16. bias [np]. */
struct gp_lin {
    int n, k, np, kp;
    const int8_t *q;
    const __half *h;
    const float *scale;
    const float *bias;
};

struct gp_layer {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* [d] */
    gp_lin qkv, out, up, down;
};

/* Every pointer is device memory, owned by the engine. */
struct gp_weights {
    lm_config cfg;
    int int8;                 /* 1: int8 model */
    int dp;                   /* round_up(d_model, GP_KALIGN) */
    const int8_t *item_q;     /* int8: [n_items, dp], zero padded */
    const float *item_scale;  /* int8: [n_items] */
    const float *item_f;      /* fp32: [n_items, d] */
    const float *action_emb;  /* [n_actions, d] */
    const float *pos_emb;     /* [max_hist + 1, d] */
    gp_layer layers[LM_MAX_LAYERS];
    const float *lnf_w, *lnf_b, *head_w; /* [d] */
    float head_b;
};

#define GP_FCHUNK 128 /* FFN columns per step of the fused up/GELU/down */

/* Formats "what: cuda error string" into err and returns -1 when rc is not
 * cudaSuccess; 0 otherwise. */
int gp_cuda_err(cudaError_t rc, const char *what, char *err, size_t errsz);
#define GP_TRY(call, what)                                    \
    do {                                                      \
        if (gp_cuda_err((call), (what), err, errsz))          \
            goto fail;                                        \
    } while (0)

/* ---- scoring (gpu/score.cu) ------------------------------------------------------ */

/* One call's requests on the device. Candidates are cut into tiles of at
 * most GP_TILE of one user; every pointer is device memory. */
#define GP_TILE 64
struct gp_batch {
    int B, n_tiles;
    const int32_t *n_hist;       /* [B] */
    const int32_t *hist_items;   /* [B, max_hist] */
    const int32_t *hist_actions; /* [B, max_hist] */
    const int32_t *cands;        /* all candidates, user after user */
    const int4 *tiles;           /* [n_tiles]: user, first candidate, count, 0 */
    float *scores;               /* like cands */
    float *user_vec;             /* [B, d] */
    /* the call's serial number, new each call: device memory, so that a
     * replayed graph (gpu/engine.cu) sees this call's */
    const unsigned long long *call;
};

struct gp_score;
int gp_score_new(gp_score **out, const gp_weights *w, const gp_weights *d_w, int max_batch,
                 char *err, size_t errsz);
void gp_score_free(gp_score *s);
/* Enqueues the history pass (user vectors, keys and values) and the
 * candidate pass on `st`. */
int gp_score_run(gp_score *s, cudaStream_t st, const gp_batch *b, char *err, size_t errsz);

/* ---- retrieval (gpu/retrieve.cu) ------------------------------------------------ */

/* The top k items of the catalog by retrieval logit u . item_emb[i], for a
 * batch of user vectors, with lm_retrieve's semantics (llm/retrieval.h):
 * int8 models quantize u per row as lm_quantize_row_ref does and compute
 * (float)(int32 dot) * (s_u * item_scale[i]), as the CPU's qgemm; row 0 and
 * excluded rows are never returned; NaN logits are skipped; higher score
 * first, ties to the lower row. */
struct gp_retr;

int gp_retr_new(gp_retr **out, const gp_weights *w, int max_batch, int max_k, int max_exclude,
                char *err, size_t errsz);
void gp_retr_free(gp_retr *r);

/* Enqueues on `st`; every pointer is device memory:
 *   uv [B, d] user vectors; excl_off [B + 1] offsets into excl (CSR);
 *   items/scores [B, k] out, best first; n_out [B] out: entries written.
 * Returns -1 with err for arguments out of range (nothing enqueued) or a
 * launch that failed (earlier steps may be enqueued). */
int gp_retr_run(gp_retr *r, cudaStream_t st, int B, const float *uv, const int32_t *excl,
                const int32_t *excl_off, int k, int32_t *items, float *scores, int32_t *n_out,
                char *err, size_t errsz);

#endif
