/* ranker/rk_scorer.c — the scorer interface on a model backend: the CPU
 * model core (llm/forward.h, llm/retrieval.h) or the GPU engine
 * (gpu/engine.h), which keep the same contracts.
 *
 * model.device picks the backend: "cpu" the CPU; "cuda" the GPU, or an
 * error saying why not; "auto" the GPU where a usable one is found and the
 * engine starts on it, else the CPU, with the reason kept for the caller to
 * log (rk_scorer_fallback_reason).
 *
 * A batch runs in up to three passes over the backend:
 *   1. score: every request's user vector, and the head scores of requests
 *      that bring their own candidates;
 *   2. retrieve: the top retrieve_n of the catalog for the others;
 *   3. score again: the head scores of those retrieved items.
 * The ranking logit is the head score plus the retrieval logit; the top k
 * by it, ties to the earlier candidate, is the answer.
 *
 * At run time a failed GPU call that is not a refusal of bad input (the
 * CPU's validation of the same requests passes) moves the scorer to the
 * CPU for good and the batch is redone there: a ranking is late, never
 * lost, when the GPU fails. */
#include "ranker/rk_scorer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "gpu/engine.h"
#include "llm/forward.h"
#include "llm/retrieval.h"

/* The two calls a batch makes, on one device. */
typedef struct rk_backend {
    int (*score)(rk_scorer *s, const lm_request *reqs, int n, char *err, size_t errsz);
    int (*retrieve)(rk_scorer *s, lm_retrieval *reqs, int n, char *err, size_t errsz);
} rk_backend;

struct rk_scorer {
    const lm_model *m;
    rk_scorer_opts o;
    const rk_backend *be;
    lm_scorer *sc;         /* CPU backend */
    lm_retriever *rt;
    gp_engine *gpu;        /* GPU backend */
    lm_request *lreq;      /* [max_batch] */
    lm_retrieval *lret;    /* [max_batch] */
    int *slot;             /* [max_batch]: request of each retrieval */
    float *uv;             /* [max_batch][d] */
    float *scores;         /* [max_batch][max(max_cands, retrieve_n)] head scores */
    int32_t *ret_items;    /* [max_batch][retrieve_n] */
    float *ret_scores;     /* [max_batch][retrieve_n] */
    float *row;            /* [d] */
    int32_t *top_items;    /* [max_k] */
    float *top_scores;
    int width;             /* max(max_cands, retrieve_n) */
    char device[128];
    char fallback[CM_ERRSZ]; /* model.device auto on the CPU: why not the GPU */
    int device_failed;       /* the last backend call failed on the device, not on its input */
    int inject;              /* rk_scorer_inject_fault: fail the next call */
};

/* 1 (and device_failed set) when the next call must fail as injected. */
static int injected(rk_scorer *s, char *err, size_t errsz)
{
    if (!s->inject)
        return 0;
    s->inject = 0;
    s->device_failed = 1;
    cm_errf(err, errsz, "injected device fault");
    return 1;
}

static int cpu_score(rk_scorer *s, const lm_request *reqs, int n, char *err, size_t errsz)
{
    return injected(s, err, errsz) || lm_scorer_run(s->sc, reqs, n, err, errsz);
}

static int cpu_retrieve(rk_scorer *s, lm_retrieval *reqs, int n, char *err, size_t errsz)
{
    return injected(s, err, errsz) || lm_retrieve(s->rt, reqs, n, err, errsz);
}

/* A failed GPU call is the device's fault unless the CPU's validation of
 * the same input (the engine's, word for word) refuses it too. */
static int gpu_score(rk_scorer *s, const lm_request *reqs, int n, char *err, size_t errsz)
{
    if (injected(s, err, errsz))
        return -1;
    if (gp_engine_score(s->gpu, reqs, n, err, errsz) == 0)
        return 0;
    char why[CM_ERRSZ];
    s->device_failed = !lm_requests_check(&s->m->cfg, s->o.max_batch, s->width, reqs, n, why, sizeof why);
    return -1;
}

static int gpu_retrieve(rk_scorer *s, lm_retrieval *reqs, int n, char *err, size_t errsz)
{
    if (injected(s, err, errsz))
        return -1;
    if (gp_engine_retrieve(s->gpu, reqs, n, err, errsz) == 0)
        return 0;
    char why[CM_ERRSZ];
    s->device_failed =
        !lm_retrievals_check(s->o.max_batch, s->o.retrieve_n, s->o.max_exclude, reqs, n, why, sizeof why);
    return -1;
}

static const rk_backend cpu_backend = {cpu_score, cpu_retrieve};
static const rk_backend gpu_backend = {gpu_score, gpu_retrieve};

void rk_scorer_free(rk_scorer *s)
{
    if (!s)
        return;
    gp_engine_free(s->gpu);
    lm_retriever_free(s->rt);
    lm_scorer_free(s->sc);
    free(s->lreq);
    free(s->lret);
    free(s->slot);
    free(s->uv);
    free(s->scores);
    free(s->ret_items);
    free(s->ret_scores);
    free(s->row);
    free(s->top_items);
    free(s->top_scores);
    free(s);
}

enum { DEV_AUTO, DEV_CUDA, DEV_CPU };

static int parse_device(const char *dev, char *err, size_t errsz)
{
    if (!dev || strcmp(dev, "auto") == 0)
        return DEV_AUTO;
    if (strcmp(dev, "cuda") == 0)
        return DEV_CUDA;
    if (strcmp(dev, "cpu") == 0)
        return DEV_CPU;
    return cm_errf(err, errsz, "model.device \"%s\": expected auto, cuda or cpu", dev);
}

/* The buffers every batch reuses, sized from the options. */
static int alloc_buffers(rk_scorer *s, char *err, size_t errsz)
{
    const rk_scorer_opts *o = &s->o;
    size_t B = (size_t)o->max_batch, d = (size_t)s->m->cfg.d_model, N = (size_t)o->retrieve_n;
    s->lreq = calloc(B, sizeof *s->lreq);
    s->lret = calloc(B, sizeof *s->lret);
    s->slot = calloc(B, sizeof *s->slot);
    s->uv = malloc(sizeof(float) * B * d);
    s->scores = malloc(sizeof(float) * B * (size_t)s->width);
    s->ret_items = malloc(sizeof(int32_t) * B * N);
    s->ret_scores = malloc(sizeof(float) * B * N);
    s->row = malloc(sizeof(float) * d);
    s->top_items = malloc(sizeof(int32_t) * (size_t)o->max_k);
    s->top_scores = malloc(sizeof(float) * (size_t)o->max_k);
    if (!s->lreq || !s->lret || !s->slot || !s->uv || !s->scores || !s->ret_items || !s->ret_scores ||
        !s->row || !s->top_items || !s->top_scores)
        return cm_errf(err, errsz, "scorer: out of memory");
    return 0;
}

/* The GPU engine on device 0, or -1 with why not. */
static int open_gpu(rk_scorer *s, char *why, size_t whysz)
{
    if (!gp_probe(0, why, whysz))
        return -1;
    gp_opts go = {.max_batch = s->o.max_batch, .max_cands = s->width, .max_k = s->o.retrieve_n,
                  .max_exclude = s->o.max_exclude, .device = 0, .threads = s->o.threads};
    if (gp_engine_new(&s->gpu, s->m, &go, why, whysz))
        return -1;
    s->be = &gpu_backend;
    snprintf(s->device, sizeof s->device, "%s", gp_engine_device(s->gpu));
    return 0;
}

static int open_cpu(rk_scorer *s, char *err, size_t errsz)
{
    lm_scorer_opts so = {.max_batch = s->o.max_batch, .max_cands = s->width, .threads = s->o.threads,
                         .isa = LM_ISA_COUNT};
    if (lm_scorer_new(&s->sc, s->m, &so, err, errsz) ||
        lm_retriever_new(&s->rt, s->m, lm_scorer_pool(s->sc), LM_ISA_COUNT, s->o.max_batch, s->o.retrieve_n,
                         s->o.max_exclude, err, errsz))
        return -1;
    s->be = &cpu_backend;
    snprintf(s->device, sizeof s->device, "cpu (%s kernels, %s, %d threads)", lm_scorer_kern(s->sc)->name,
             s->m->quant == LM_QUANT_INT8 ? "int8" : "fp32", lm_pool_threads(lm_scorer_pool(s->sc)));
    return 0;
}

/* Opens the backend model.device asks for; auto falls back to the CPU and
 * keeps the reason. */
static int open_backend(rk_scorer *s, int dev, char *err, size_t errsz)
{
    if (dev != DEV_CPU) {
        char why[CM_ERRSZ] = "";
        if (open_gpu(s, why, sizeof why) == 0)
            return 0;
        if (dev == DEV_CUDA)
            return cm_errf(err, errsz, "model.device cuda: %s", why);
        snprintf(s->fallback, sizeof s->fallback, "%s", why);
    }
    return open_cpu(s, err, errsz);
}

int rk_scorer_new(rk_scorer **out, const lm_model *m, const rk_scorer_opts *o, char *err,
                  size_t errsz)
{
    *out = NULL;
    if (o->max_batch < 1 || o->max_k < 1 || o->retrieve_n < o->max_k || o->max_cands < 0 ||
        o->max_exclude < 0)
        return cm_errf(err, errsz, "scorer: max_batch %d, max_k %d, retrieve_n %d, max_cands %d, "
                       "max_exclude %d out of range (retrieve_n >= max_k >= 1)", o->max_batch, o->max_k,
                       o->retrieve_n, o->max_cands, o->max_exclude);
    int dev = parse_device(o->device, err, errsz);
    if (dev < 0)
        return -1;
    rk_scorer *s = calloc(1, sizeof *s);
    if (!s)
        return cm_errf(err, errsz, "scorer: out of memory");
    s->m = m;
    s->o = *o;
    s->width = o->max_cands > o->retrieve_n ? o->max_cands : o->retrieve_n;
    if (alloc_buffers(s, err, errsz) || open_backend(s, dev, err, errsz)) {
        rk_scorer_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

const char *rk_scorer_device(const rk_scorer *s) { return s->device; }

int rk_scorer_gpu(const rk_scorer *s) { return s->gpu != NULL; }

const char *rk_scorer_fallback_reason(const rk_scorer *s) { return s->fallback[0] ? s->fallback : NULL; }

static float dot(const float *a, const float *b, int n)
{
    float acc = 0.0f;
    for (int i = 0; i < n; i++)
        acc += a[i] * b[i];
    return acc;
}

/* Top k of n ranking logits into the request's outputs; `ids` maps a
 * candidate position to what is reported (item rows, or NULL: positions). */
static void answer(rk_scorer *s, rk_request *r, const float *logits, int n, const int32_t *ids)
{
    lm_topk t;
    lm_topk_init(&t, s->top_items, s->top_scores, r->k);
    for (int j = 0; j < n; j++)
        lm_topk_push(&t, j, logits[j]); /* ties: the lower position, i.e. the better retrieved */
    r->n_out = lm_topk_finish(&t);
    for (int i = 0; i < r->n_out; i++) {
        r->out_items[i] = ids ? ids[s->top_items[i]] : s->top_items[i];
        r->out_scores[i] = s->top_scores[i];
    }
}

static int check(const rk_scorer *s, const rk_request *reqs, int n, char *err, size_t errsz)
{
    if (n < 0 || n > s->o.max_batch)
        return cm_errf(err, errsz, "batch of %d requests, the scorer takes 0..%d", n, s->o.max_batch);
    for (int i = 0; i < n; i++) {
        const rk_request *r = &reqs[i];
        if (r->k < 1 || r->k > s->o.max_k || !r->out_items || !r->out_scores)
            return cm_errf(err, errsz, "request %d: k = %d, the scorer takes 1..%d with output arrays", i,
                           r->k, s->o.max_k);
        if (r->cands && (r->n_cands < 0 || r->n_cands > s->o.max_cands))
            return cm_errf(err, errsz, "request %d: %d candidates, the scorer takes 0..%d", i, r->n_cands,
                           s->o.max_cands);
        if (r->n_exclude < 0 || r->n_exclude > s->o.max_exclude || (r->n_exclude && !r->exclude))
            return cm_errf(err, errsz, "request %d: %d exclusions, the scorer takes 0..%d", i, r->n_exclude,
                           s->o.max_exclude);
    }
    return 0;
}

static int rank_once(rk_scorer *s, rk_request *reqs, int n, char *err, size_t errsz)
{
    if (check(s, reqs, n, err, errsz))
        return -1;
    const int d = s->m->cfg.d_model;
    int nr = 0;
    for (int i = 0; i < n; i++) {
        const rk_request *r = &reqs[i];
        s->lreq[i] = (lm_request){.hist_items = r->hist_items, .hist_actions = r->hist_actions,
                                  .n_hist = r->n_hist, .cands = r->cands, .n_cands = r->cands ? r->n_cands : 0,
                                  .scores = s->scores + (size_t)i * s->width, .user_vec = s->uv + (size_t)i * d};
    }
    if (s->be->score(s, s->lreq, n, err, errsz))
        return -1;
    for (int i = 0; i < n; i++) {
        rk_request *r = &reqs[i];
        if (r->cands) { /* a ranking event: add each candidate's retrieval logit */
            float *sc = s->scores + (size_t)i * s->width;
            for (int j = 0; j < r->n_cands; j++) {
                lm_model_item_row(s->m, r->cands[j], s->row);
                sc[j] += dot(s->uv + (size_t)i * d, s->row, d);
            }
            answer(s, r, sc, r->n_cands, NULL);
            continue;
        }
        s->slot[nr] = i;
        s->lret[nr++] = (lm_retrieval){.user_vec = s->uv + (size_t)i * d, .exclude = r->exclude,
                                       .n_exclude = r->n_exclude, .k = s->o.retrieve_n,
                                       .items = s->ret_items + (size_t)i * s->o.retrieve_n,
                                       .scores = s->ret_scores + (size_t)i * s->o.retrieve_n};
    }
    if (nr == 0)
        return 0;
    if (s->be->retrieve(s, s->lret, nr, err, errsz))
        return -1;
    for (int k = 0; k < nr; k++) {
        const rk_request *r = &reqs[s->slot[k]];
        s->lreq[k] = (lm_request){.hist_items = r->hist_items, .hist_actions = r->hist_actions,
                                  .n_hist = r->n_hist, .cands = s->lret[k].items, .n_cands = s->lret[k].n_out,
                                  .scores = s->scores + (size_t)s->slot[k] * s->width};
    }
    if (s->be->score(s, s->lreq, nr, err, errsz))
        return -1;
    for (int k = 0; k < nr; k++) {
        rk_request *r = &reqs[s->slot[k]];
        float *sc = s->scores + (size_t)s->slot[k] * s->width;
        for (int j = 0; j < s->lret[k].n_out; j++)
            sc[j] += s->lret[k].scores[j];
        answer(s, r, sc, s->lret[k].n_out, s->lret[k].items);
    }
    return 0;
}

/* The move to the CPU after a device failure (why); the GPU engine is freed
 * (its context may be unusable), a CPU backend replaces a failed one. */
static int fall_back(rk_scorer *s, const char *why, char *err, size_t errsz)
{
    gp_engine_free(s->gpu);
    s->gpu = NULL;
    lm_retriever_free(s->rt);
    lm_scorer_free(s->sc);
    s->rt = NULL;
    s->sc = NULL;
    if (open_cpu(s, err, errsz))
        return -1;
    snprintf(s->fallback, sizeof s->fallback, "%s", why);
    if (s->o.on_fallback)
        s->o.on_fallback(s->o.fallback_ctx, why);
    return 0;
}

int rk_scorer_rank(rk_scorer *s, rk_request *reqs, int n, char *err, size_t errsz)
{
    s->device_failed = 0;
    if (rank_once(s, reqs, n, err, errsz) == 0)
        return 0;
    if (!s->device_failed)
        return -1;
    char why[CM_ERRSZ];
    snprintf(why, sizeof why, "%s failed at run time (%.400s); scoring on the CPU from now on",
             s->gpu ? "the GPU" : "the scorer", err);
    s->device_failed = 0;
    if (fall_back(s, why, err, errsz))
        return -1;
    return rank_once(s, reqs, n, err, errsz);
}

void rk_scorer_inject_fault(rk_scorer *s) { s->inject = 1; }
