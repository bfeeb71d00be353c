/* llm/retrieval.c — top-k over the item catalog.
 *
 * The catalog's packed panels are split into ranges, one task each. A task
 * computes the logits of every user in the batch against 1,024 items at a
 * time (one GEMM, so the table streams through the cache once per batch, not
 * once per user) and keeps its own top-k per user; the caller merges the
 * tasks' selections. Exclusions are sorted once per call and looked up only
 * for items good enough to enter a selection. */
#include "llm/retrieval.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define BLOCK_PANELS 64 /* 1,024 items per GEMM */

/* ---- top-k ------------------------------------------------------------------ */

/* a is worse than b: lower score, or the same score and a higher item row. */
static int worse(float sa, int32_t ia, float sb, int32_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}

void lm_topk_init(lm_topk *t, int32_t *item, float *score, int k)
{
    t->k = k;
    t->n = 0;
    t->item = item;
    t->score = score;
}

static void swap(lm_topk *t, int i, int j)
{
    float s = t->score[i];
    int32_t it = t->item[i];
    t->score[i] = t->score[j];
    t->item[i] = t->item[j];
    t->score[j] = s;
    t->item[j] = it;
}

static void sift_down(lm_topk *t, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < t->n && worse(t->score[l], t->item[l], t->score[w], t->item[w]))
            w = l;
        if (r < t->n && worse(t->score[r], t->item[r], t->score[w], t->item[w]))
            w = r;
        if (w == i)
            return;
        swap(t, i, w);
        i = w;
    }
}

static int would_enter(const lm_topk *t, int32_t item, float score)
{
    return t->n < t->k || worse(t->score[0], t->item[0], score, item);
}

void lm_topk_push(lm_topk *t, int32_t item, float score)
{
    if (score != score || t->k <= 0 || !would_enter(t, item, score))
        return;
    if (t->n == t->k) {
        t->score[0] = score;
        t->item[0] = item;
        sift_down(t, 0);
        return;
    }
    int i = t->n++;
    t->score[i] = score;
    t->item[i] = item;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!worse(t->score[i], t->item[i], t->score[p], t->item[p]))
            break;
        swap(t, i, p);
        i = p;
    }
}

int lm_topk_finish(lm_topk *t)
{
    /* Heap sort: moving the worst to the end each time leaves best first. */
    int n = t->n;
    while (t->n > 1) {
        swap(t, 0, --t->n);
        sift_down(t, 0);
    }
    t->n = n;
    return n;
}

/* ---- the retriever ------------------------------------------------------------ */

struct lm_retriever {
    const lm_model *m;
    const lm_kern *k;
    lm_pool *pool;
    int max_batch, max_k, max_exclude, n_tasks, kp;
    float *logits;    /* [threads][max_batch][BLOCK_PANELS * 16] */
    int32_t *excl;    /* [max_batch][max_exclude + 1], sorted per call */
    int *n_excl;      /* [max_batch] */
    int8_t *uq;       /* [max_batch][kp] quantized user vectors (int8 models) */
    float *us;        /* [max_batch] their scales */
    float *uf;        /* [max_batch][d] user vectors (fp32 models) */
    int32_t *heap_item; /* [n_tasks][max_batch][max_k] */
    float *heap_score;
    lm_topk *heaps;     /* [n_tasks][max_batch] */
    /* the call in progress */
    lm_retrieval *reqs;
    int n;
};

int lm_retriever_new(lm_retriever **out, const lm_model *m, lm_pool *pool, lm_isa isa,
                     int max_batch, int max_k, int max_exclude, char *err, size_t errsz)
{
    *out = NULL;
    const lm_kern *k = lm_kern_get(isa == LM_ISA_COUNT ? lm_isa_default() : isa);
    if (!k)
        return cm_errf(err, errsz, "retriever: this CPU cannot run the %s kernels", lm_isa_name(isa));
    if (max_batch < 1 || max_k < 1 || max_exclude < 0)
        return cm_errf(err, errsz, "retriever: max_batch %d, max_k %d, max_exclude %d out of range",
                       max_batch, max_k, max_exclude);
    lm_retriever *r = calloc(1, sizeof *r);
    if (!r)
        return cm_errf(err, errsz, "retriever: out of memory");
    int threads = lm_pool_threads(pool);
    int panels = m->quant == LM_QUANT_INT8 ? m->item.q.n_panels : m->item.f.n_panels;
    r->m = m;
    r->k = k;
    r->pool = pool;
    r->max_batch = max_batch;
    r->max_k = max_k;
    r->max_exclude = max_exclude;
    r->n_tasks = panels < 4 * threads ? panels : 4 * threads;
    r->kp = lm_round_up(m->cfg.d_model, LM_KALIGN);
    size_t B = (size_t)max_batch, T = (size_t)r->n_tasks, K = (size_t)max_k;
    r->logits = aligned_alloc(64, sizeof(float) * (size_t)threads * B * BLOCK_PANELS * LM_PANEL);
    r->excl = malloc(sizeof(int32_t) * B * ((size_t)max_exclude + 1));
    r->n_excl = malloc(sizeof(int) * B);
    r->uq = malloc(B * (size_t)r->kp);
    r->us = malloc(sizeof(float) * B);
    r->uf = malloc(sizeof(float) * B * (size_t)m->cfg.d_model);
    r->heap_item = malloc(sizeof(int32_t) * T * B * K);
    r->heap_score = malloc(sizeof(float) * T * B * K);
    r->heaps = malloc(sizeof(lm_topk) * T * B);
    if (!r->logits || !r->excl || !r->n_excl || !r->uq || !r->us || !r->uf || !r->heap_item ||
        !r->heap_score || !r->heaps) {
        lm_retriever_free(r);
        return cm_errf(err, errsz, "retriever: out of memory");
    }
    *out = r;
    return 0;
}

void lm_retriever_free(lm_retriever *r)
{
    if (!r)
        return;
    free(r->logits);
    free(r->excl);
    free(r->n_excl);
    free(r->uq);
    free(r->us);
    free(r->uf);
    free(r->heap_item);
    free(r->heap_score);
    free(r->heaps);
    free(r);
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int excluded(const lm_retriever *r, int b, int32_t item)
{
    const int32_t *e = r->excl + (size_t)b * (r->max_exclude + 1);
    int lo = 0, hi = r->n_excl[b];
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (e[mid] < item)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < r->n_excl[b] && e[lo] == item;
}

static void scan_task(void *ctx, int task, int thread)
{
    lm_retriever *r = ctx;
    const lm_model *m = r->m;
    int panels = m->quant == LM_QUANT_INT8 ? m->item.q.n_panels : m->item.f.n_panels;
    int p0 = (int)((long)panels * task / r->n_tasks), p1 = (int)((long)panels * (task + 1) / r->n_tasks);
    const int ld = BLOCK_PANELS * LM_PANEL;
    float *y = r->logits + (size_t)thread * r->max_batch * ld;
    lm_topk *heaps = r->heaps + (size_t)task * r->max_batch;
    for (int b = 0; b < r->n; b++)
        lm_topk_init(&heaps[b], r->heap_item + ((size_t)task * r->max_batch + b) * r->max_k,
                     r->heap_score + ((size_t)task * r->max_batch + b) * r->max_k, r->reqs[b].k);
    for (int p = p0; p < p1; p += BLOCK_PANELS) {
        int np = p1 - p < BLOCK_PANELS ? p1 - p : BLOCK_PANELS;
        int n_items;
        if (m->quant == LM_QUANT_INT8) {
            lm_pq8 v = lm_pq8_view(&m->item.q, p, np);
            r->k->qgemm(r->n, r->uq, r->us, &v, NULL, y, ld, 0);
            n_items = v.n;
        } else {
            lm_pf32 v = lm_pf32_view(&m->item.f, p, np);
            r->k->sgemm(r->n, r->uf, m->cfg.d_model, &v, NULL, y, ld, 0);
            n_items = v.n;
        }
        int32_t base = p * LM_PANEL;
        for (int b = 0; b < r->n; b++) {
            const float *yb = y + (size_t)b * ld;
            lm_topk *t = &heaps[b];
            for (int i = 0; i < n_items; i++) {
                int32_t item = base + i;
                if (item != 0 && would_enter(t, item, yb[i]) && !excluded(r, b, item))
                    lm_topk_push(t, item, yb[i]);
            }
        }
    }
}

int lm_retrievals_check(int max_batch, int max_k, int max_exclude, const lm_retrieval *reqs, int n,
                        char *err, size_t errsz)
{
    if (n < 0 || n > max_batch)
        return cm_errf(err, errsz, "retrieval batch of %d, this retriever takes 0..%d", n, max_batch);
    for (int b = 0; b < n; b++) {
        if (reqs[b].k < 1 || reqs[b].k > max_k)
            return cm_errf(err, errsz, "retrieval %d: k = %d, this retriever takes 1..%d", b, reqs[b].k,
                           max_k);
        if (reqs[b].n_exclude < 0 || reqs[b].n_exclude > max_exclude)
            return cm_errf(err, errsz, "retrieval %d: %d exclusions, this retriever takes 0..%d", b,
                           reqs[b].n_exclude, max_exclude);
        const char *missing = !reqs[b].user_vec ? "user_vec"
                              : !reqs[b].items  ? "items"
                              : !reqs[b].scores ? "scores"
                              : reqs[b].n_exclude && !reqs[b].exclude ? "exclude" : NULL;
        if (missing)
            return cm_errf(err, errsz, "retrieval %d: %s is NULL", b, missing);
    }
    return 0;
}

int lm_retrieve(lm_retriever *r, lm_retrieval *reqs, int n, char *err, size_t errsz)
{
    const lm_model *m = r->m;
    const int d = m->cfg.d_model;
    if (lm_retrievals_check(r->max_batch, r->max_k, r->max_exclude, reqs, n, err, errsz))
        return -1;
    for (int b = 0; b < n; b++) {
        int32_t *e = r->excl + (size_t)b * (r->max_exclude + 1);
        if (reqs[b].n_exclude > 0)
            memcpy(e, reqs[b].exclude, sizeof(int32_t) * reqs[b].n_exclude);
        qsort(e, (size_t)reqs[b].n_exclude, sizeof *e, cmp_i32);
        r->n_excl[b] = reqs[b].n_exclude;
        if (m->quant == LM_QUANT_INT8)
            r->k->quant_rows(1, d, reqs[b].user_vec, d, r->uq + (size_t)b * r->kp, r->kp, &r->us[b]);
        else
            memcpy(r->uf + (size_t)b * d, reqs[b].user_vec, sizeof(float) * d);
    }
    r->reqs = reqs;
    r->n = n;
    lm_pool_run(r->pool, scan_task, r, r->n_tasks);
    for (int b = 0; b < n; b++) {
        lm_topk all;
        lm_topk_init(&all, reqs[b].items, reqs[b].scores, reqs[b].k);
        for (int t = 0; t < r->n_tasks; t++) {
            const lm_topk *h = &r->heaps[(size_t)t * r->max_batch + b];
            for (int i = 0; i < h->n; i++)
                lm_topk_push(&all, h->item[i], h->score[i]);
        }
        reqs[b].n_out = lm_topk_finish(&all);
    }
    r->reqs = NULL;
    return 0;
}
