/* ranker/rk_scorer.h — the scorer interface the service and batch jobs use:
 * one call ranks a batch of requests, whatever device runs the model:
 * the CPU model core (llm/forward.h, llm/retrieval.h) or the GPU engine
 * (gpu/engine.h), picked by rk_scorer_opts.device.
 *
 * A request names its user's history and either its own candidates (a
 * ranking event) or none (a triggering interaction: the retrieval head
 * proposes retrieve_n). The answer is the top k items by the ranking logit
 * (head score + retrieval logit, docs/training.md), best first. */
#ifndef RANKD_RANKER_RK_SCORER_H
#define RANKD_RANKER_RK_SCORER_H

#include <stddef.h>
#include <stdint.h>

#include "llm/model.h"

typedef struct rk_request {
    const int32_t *hist_items;   /* [n_hist] item rows, oldest first */
    const int32_t *hist_actions; /* [n_hist] */
    int n_hist;
    const int32_t *exclude;      /* [n_exclude] rows never returned (seen, unavailable) */
    int n_exclude;
    const int32_t *cands;        /* [n_cands] rows to rank, or NULL: retrieve */
    int n_cands;
    int k;                       /* answer length */
    /* out */
    int32_t *out_items;          /* [k] rows; with given candidates, indexes into cands */
    float *out_scores;           /* [k] ranking logits */
    int n_out;
} rk_request;

typedef struct rk_scorer_opts {
    int max_batch, max_cands, max_k, max_exclude, retrieve_n;
    int threads;                 /* CPU threads, 0: all cores */
    /* "cpu"; "cuda": the GPU engine, or rk_scorer_new fails saying why;
     * "auto" (or NULL): the GPU engine where it starts, else the CPU. */
    const char *device;
    /* Called (from the thread that ranks) when a GPU call fails at run
     * time and the scorer moves to the CPU for good; why: one line, valid
     * during the call. NULL: not told. */
    void (*on_fallback)(void *ctx, const char *why);
    void *fallback_ctx;
} rk_scorer_opts;

typedef struct rk_scorer rk_scorer;

/* Borrows the model, which must outlive the scorer. */
int rk_scorer_new(rk_scorer **out, const lm_model *m, const rk_scorer_opts *o, char *err,
                  size_t errsz);
void rk_scorer_free(rk_scorer *s);
const char *rk_scorer_device(const rk_scorer *s); /* "cpu (avx512 kernels, int8, 2 threads)", ... */
int rk_scorer_gpu(const rk_scorer *s);            /* 1: scoring on the GPU */
/* On the CPU with device "auto", or after a run-time fallback: why not
 * the GPU (one line, for the caller to log); NULL otherwise. Valid until
 * the next rk_scorer_rank. */
const char *rk_scorer_fallback_reason(const rk_scorer *s);

/* Ranks n requests. -1 with err when a request is invalid (nothing written).
 * A GPU call that fails for any other reason moves the scorer to the CPU
 * (a CUDA error may leave the device unusable), which redoes the batch:
 * the answers are the CPU's, on_fallback is called and rk_scorer_gpu is 0
 * from then on; -1 only where the CPU cannot start either. */
int rk_scorer_rank(rk_scorer *s, rk_request *reqs, int n, char *err, size_t errsz);

/* For tests: the next backend call fails as a failing device would, so
 * that the move above can be tested on any backend (on the CPU it moves to
 * a new CPU backend). */
void rk_scorer_inject_fault(rk_scorer *s);

#endif
