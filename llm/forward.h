/* llm/forward.h — the ranker-v1 forward pass on the CPU: a scorer that
 * ranks candidate items for a batch of users.
 *
 * Each user's history is encoded once (causal attention over its tokens,
 * keys and values kept per layer); then each candidate attends to that
 * history and to itself only (M-FALCON), so candidates are independent and
 * are scored in chunks spread over the scorer's threads. fp32 and int8
 * models run the same code; int8 models quantize the input of every linear
 * layer per token on the fly (W8A8, int32 sums). Attention, LayerNorm and
 * GELU stay in fp32.
 *
 * All memory is allocated by lm_scorer_new, sized from its options: a call
 * to lm_scorer_run allocates nothing. */
#ifndef RANKD_LLM_FORWARD_H
#define RANKD_LLM_FORWARD_H

#include <stdint.h>

#include "llm/kernels.h"
#include "llm/model.h"
#include "llm/pool.h"

typedef struct lm_request {
    const int32_t *hist_items;   /* [n_hist] item rows, oldest first */
    const int32_t *hist_actions; /* [n_hist] action ids */
    int n_hist;                  /* 0 .. max_hist */
    const int32_t *cands;        /* [n_cands] item rows */
    int n_cands;                 /* 0 .. opts.max_cands */
    float *scores;               /* out: [n_cands] ranking logits */
    float *user_vec;             /* out: [d_model] retrieval vector, or NULL */
} lm_request;

typedef struct lm_scorer_opts {
    int max_batch;  /* users per lm_scorer_run */
    int max_cands;  /* candidates per user */
    int threads;    /* 1 = the calling thread only */
    lm_isa isa;     /* LM_ISA_COUNT: lm_isa_default() */
} lm_scorer_opts;

typedef struct lm_scorer lm_scorer;

/* The scorer borrows `m`, which must outlive it. */
int lm_scorer_new(lm_scorer **out, const lm_model *m, const lm_scorer_opts *opts, char *err,
                  size_t errsz);
void lm_scorer_free(lm_scorer *s);

/* Scores n requests. Inputs are validated first (lengths, item and action
 * ranges); on error nothing is written and err names the request and field.
 * Not reentrant: one call at a time per scorer. */
int lm_scorer_run(lm_scorer *s, const lm_request *reqs, int n, char *err, size_t errsz);

/* The validation lm_scorer_run does, for other engines of the same
 * contract (gpu/engine.h): batch size, history and candidate counts, NULL
 * arrays, item and action ids in range. */
int lm_requests_check(const lm_config *c, int max_batch, int max_cands, const lm_request *reqs, int n,
                      char *err, size_t errsz);

/* lm_requests_check without the ids: 1 when the batch's size and every
 * request's lengths and arrays are right, so that its arrays can be read
 * (gpu/engine.cu checks the ids as it copies them, then asks
 * lm_requests_check for the message). */
int lm_requests_sizes_ok(const lm_config *c, int max_batch, int max_cands, const lm_request *reqs, int n);

const lm_model *lm_scorer_model(const lm_scorer *s);
const lm_kern *lm_scorer_kern(const lm_scorer *s);
lm_pool *lm_scorer_pool(lm_scorer *s); /* for lm_retriever, which shares the threads */
size_t lm_scorer_bytes(const lm_scorer *s); /* scratch memory held */

#endif
