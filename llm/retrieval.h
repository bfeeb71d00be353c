/* llm/retrieval.h — the retrieval head: the top-k items of the whole catalog
 * for a user vector, minus an exclusion list.
 *
 * Logits are u . item_emb[i] for every item row (int8 models: the int8 GEMM
 * on the quantized table). Item row 0 (padding / unknown) is never returned.
 * Ties are broken by the lower item row, so the answer does not depend on
 * how the catalog was split across threads. */
#ifndef RANKD_LLM_RETRIEVAL_H
#define RANKD_LLM_RETRIEVAL_H

#include <stdint.h>

#include "llm/kernels.h"
#include "llm/model.h"
#include "llm/pool.h"

/* A bounded selection of the k best (score, item) pairs: a min-heap whose
 * root is the worst kept entry. Order: higher score first, then lower item. */
typedef struct lm_topk {
    int k, n;
    int32_t *item; /* [k], caller's memory */
    float *score;  /* [k], caller's memory */
} lm_topk;

void lm_topk_init(lm_topk *t, int32_t *item, float *score, int k);
void lm_topk_push(lm_topk *t, int32_t item, float score); /* NaN scores are ignored */
/* Sorts the kept entries best first; returns how many there are. */
int lm_topk_finish(lm_topk *t);

typedef struct lm_retrieval {
    const float *user_vec;  /* [d_model] */
    const int32_t *exclude; /* item rows never returned, any order; may repeat */
    int n_exclude;
    int k;                  /* 1 .. max_k */
    int32_t *items;         /* out [k], best first */
    float *scores;          /* out [k] */
    int n_out;              /* out: entries written (< k only for a tiny catalog) */
} lm_retrieval;

typedef struct lm_retriever lm_retriever;

/* Borrows `m` and `pool` (e.g. lm_scorer_pool), which must outlive it. */
int lm_retriever_new(lm_retriever **out, const lm_model *m, lm_pool *pool, lm_isa isa,
                     int max_batch, int max_k, int max_exclude, char *err, size_t errsz);
void lm_retriever_free(lm_retriever *r);

/* The validation lm_retrieve does (batch size, k, exclusions, NULL
 * arrays), for other engines of the same contract (gpu/engine.h). */
int lm_retrievals_check(int max_batch, int max_k, int max_exclude, const lm_retrieval *reqs, int n,
                        char *err, size_t errsz);

/* Fills items/scores/n_out of every request. Not reentrant, and not at the
 * same time as another user of the same pool. */
int lm_retrieve(lm_retriever *r, lm_retrieval *reqs, int n, char *err, size_t errsz);

#endif
