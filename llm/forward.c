/* llm/forward.c — the CPU scorer: ranker-v1 exactly as
 * ../shared/reference/ranker_v1.py computes it, arranged for speed.
 *
 * A batch is one fork-join job over the thread pool with two kinds of task:
 *   - one per user encodes its history and keeps, per layer and head, the
 *     keys (packed as a [L, dh] weight) and values (packed as [dh, L]), so
 *     that candidate attention is two calls of the ordinary GEMM kernel;
 *   - one per chunk of a user's candidates runs all layers for those
 *     candidates against the cached history.
 * History tasks come first in the queue, and a chunk waits only for the
 * layer it is about to attend to (a per-user counter of finished layers), so
 * with one user and several threads the candidates' work overlaps the
 * history's instead of waiting for all of it. No thread waits on a task that
 * has not started: every history task is claimed before any chunk.
 * In the last layer only the newest history token goes past the key/value
 * projection: it alone feeds the retrieval vector, and nothing else reads
 * the last layer's history outputs. */
#include "llm/forward.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"

#define CHUNK_MAX 64 /* candidate rows per task */
#define CHUNK_MIN 16

typedef struct scratch {
    float *x;   /* [rows, d] residual stream */
    float *h;   /* [rows, d] LayerNorm output */
    float *qkv; /* [rows, 3d] */
    float *att; /* [rows, d] */
    float *ffn; /* [rows, d_ffn] */
    float *S;   /* [rows, max_hist] attention weights */
    float *self;   /* [rows] candidate self-attention logit, then weight */
    int8_t *q8;    /* [rows, kp_max] quantized activations */
    float *qs;     /* [rows] their scales */
} scratch;

typedef struct task {
    int req, c0, n;
} task;

struct lm_scorer {
    const lm_model *m;
    const lm_kern *k;
    lm_pool *pool;
    lm_scorer_opts o;
    int d, dh, rows, kp_max;
    size_t k_head, v_head; /* floats per head of the key / value cache */
    float *kv;             /* [max_batch][n_layers][n_heads][k_head + v_head] */
    _Atomic int *layers_ready; /* [max_batch]: history layers whose keys/values are cached */
    scratch *sc;           /* [threads] */
    task *tasks;
    int max_tasks;
    void *mem;
    size_t bytes;
    const lm_request *reqs; /* the batch being scored */
    int n_reqs;
};

/* ---- memory ------------------------------------------------------------- */

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Lays out every buffer in one block; with base == NULL it only measures. */
static size_t layout(lm_scorer *s, char *base)
{
    const lm_config *c = &s->m->cfg;
    size_t off = 0, R = (size_t)s->rows, d = (size_t)s->d;
#define TAKE(ptr, type, count)                                  \
    do {                                                        \
        if (base)                                               \
            (ptr) = (type *)(base + off);                       \
        off += align64(sizeof(type) * (size_t)(count));         \
    } while (0)
    TAKE(s->kv, float, (size_t)s->o.max_batch * c->n_layers * c->n_heads * (s->k_head + s->v_head));
    TAKE(s->layers_ready, _Atomic int, s->o.max_batch);
    for (int t = 0; t < s->o.threads; t++) {
        scratch *sc = &s->sc[t];
        TAKE(sc->x, float, R * d);
        TAKE(sc->h, float, R * d);
        TAKE(sc->qkv, float, R * 3 * d);
        TAKE(sc->att, float, R * d);
        TAKE(sc->ffn, float, R * (size_t)c->d_ffn);
        TAKE(sc->S, float, R * (size_t)c->max_hist);
        TAKE(sc->self, float, R);
        TAKE(sc->q8, int8_t, R * (size_t)s->kp_max);
        TAKE(sc->qs, float, R);
    }
#undef TAKE
    return off;
}

int lm_scorer_new(lm_scorer **out, const lm_model *m, const lm_scorer_opts *opts, char *err,
                  size_t errsz)
{
    *out = NULL;
    const lm_config *c = &m->cfg;
    lm_scorer_opts o = *opts;
    if (o.threads <= 0)
        o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (o.threads < 1)
        o.threads = 1;
    if (o.isa == LM_ISA_COUNT)
        o.isa = lm_isa_default();
    if (o.max_batch < 1 || o.max_batch > 65536 || o.max_cands < 0 || o.max_cands > 1 << 20)
        return cm_errf(err, errsz, "scorer: max_batch %d / max_cands %d out of range "
                       "(1..65536 / 0..1048576)", o.max_batch, o.max_cands);
    const lm_kern *k = lm_kern_get(o.isa);
    if (!k)
        return cm_errf(err, errsz, "scorer: this CPU cannot run the %s kernels (best: %s)",
                       lm_isa_name(o.isa), lm_isa_name(lm_isa_detect()));
    lm_scorer *s = calloc(1, sizeof *s);
    if (!s)
        return cm_errf(err, errsz, "scorer: out of memory");
    s->m = m;
    s->k = k;
    s->o = o;
    s->d = c->d_model;
    s->dh = c->d_model / c->n_heads;
    s->rows = c->max_hist > CHUNK_MAX ? c->max_hist : CHUNK_MAX;
    s->kp_max = lm_round_up(c->d_model > c->d_ffn ? c->d_model : c->d_ffn, LM_KALIGN);
    s->k_head = (size_t)lm_panels(c->max_hist) * LM_PANEL * s->dh;
    s->v_head = (size_t)lm_panels(s->dh) * LM_PANEL * c->max_hist;
    s->max_tasks = o.max_batch * ((o.max_cands + CHUNK_MIN - 1) / CHUNK_MIN);
    s->sc = calloc((size_t)o.threads, sizeof *s->sc);
    s->tasks = calloc((size_t)(s->max_tasks > 0 ? s->max_tasks : 1), sizeof *s->tasks);
    s->bytes = layout(s, NULL);
    s->mem = s->sc && s->tasks ? aligned_alloc(64, s->bytes) : NULL;
    if (!s->mem) {
        size_t bytes = s->bytes;
        lm_scorer_free(s);
        return cm_errf(err, errsz, "scorer: cannot allocate %zu bytes of scratch", bytes);
    }
    layout(s, s->mem);
    if (lm_pool_new(&s->pool, o.threads, err, errsz)) {
        lm_scorer_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void lm_scorer_free(lm_scorer *s)
{
    if (!s)
        return;
    lm_pool_free(s->pool);
    free(s->mem);
    free(s->tasks);
    free(s->sc);
    free(s);
}

const lm_model *lm_scorer_model(const lm_scorer *s) { return s->m; }
const lm_kern *lm_scorer_kern(const lm_scorer *s) { return s->k; }
lm_pool *lm_scorer_pool(lm_scorer *s) { return s->pool; }
size_t lm_scorer_bytes(const lm_scorer *s) { return s->bytes; }

/* ---- building blocks ------------------------------------------------------ */

static void linear(const lm_scorer *s, scratch *t, const lm_linear *lin, int M, const float *x,
                   int ldx, float *y, int ldy, int accum)
{
    if (s->m->quant == LM_QUANT_INT8) {
        s->k->quant_rows(M, lin->q.k, x, ldx, t->q8, lin->q.kp, t->qs);
        s->k->qgemm(M, t->q8, t->qs, &lin->q, lin->bias, y, ldy, accum);
    } else {
        s->k->sgemm(M, x, ldx, &lin->f, lin->bias, y, ldy, accum);
    }
}

static float *kv_head(const lm_scorer *s, int b, int l, int h)
{
    const lm_config *c = &s->m->cfg;
    size_t i = ((size_t)b * c->n_layers + l) * c->n_heads + h;
    return s->kv + i * (s->k_head + s->v_head);
}

/* Keys of head h as a weight [L, dh]; values as a weight [dh, L]. */
static lm_pf32 keys(const lm_scorer *s, int b, int l, int h, int L)
{
    return (lm_pf32){.n = L, .k = s->dh, .n_panels = lm_panels(L), .data = kv_head(s, b, l, h)};
}

static lm_pf32 values(const lm_scorer *s, int b, int l, int h, int L)
{
    return (lm_pf32){.n = s->dh, .k = L, .n_panels = lm_panels(s->dh),
                     .data = kv_head(s, b, l, h) + s->k_head};
}

static void pack_kv(const lm_scorer *s, int b, int l, int L, const float *qkv)
{
    const int d = s->d, dh = s->dh;
    for (int h = 0; h < s->m->cfg.n_heads; h++) {
        lm_pf32 K = keys(s, b, l, h, L), V = values(s, b, l, h, L);
        for (int p = 0; p < K.n_panels; p++)
            for (int i = 0; i < dh; i++)
                for (int c = 0; c < LM_PANEL; c++) {
                    int tok = p * LM_PANEL + c;
                    K.data[((size_t)p * dh + i) * LM_PANEL + c] =
                        tok < L ? qkv[(size_t)tok * 3 * d + d + h * dh + i] : 0.0f;
                }
        for (int p = 0; p < V.n_panels; p++)
            for (int tok = 0; tok < L; tok++)
                for (int c = 0; c < LM_PANEL; c++) {
                    int j = p * LM_PANEL + c;
                    V.data[((size_t)p * L + tok) * LM_PANEL + c] =
                        j < dh ? qkv[(size_t)tok * 3 * d + 2 * d + h * dh + j] : 0.0f;
                }
    }
}

/* att[M, d] = attention of M query rows of `qkv` over the L cached history
 * tokens of user b in layer l. History queries are causal (row r sees
 * tokens 0..r); candidate queries (with_self) also see their own key. */
static void attend(const lm_scorer *s, scratch *t, int b, int l, int L, int M, const float *qkv,
                   int causal, int with_self)
{
    const int d = s->d, dh = s->dh, ldq = 3 * d, lds = s->m->cfg.max_hist;
    const float scale = 1.0f / sqrtf((float)dh);
    for (int h = 0; h < s->m->cfg.n_heads; h++) {
        const float *q = qkv + h * dh;
        float *att = t->att + h * dh;
        if (L > 0) {
            lm_pf32 K = keys(s, b, l, h, L);
            s->k->sgemm(M, q, ldq, &K, NULL, t->S, lds, 0);
        }
        if (with_self)
            s->k->rowdot(M, dh, q, q + d, ldq, t->self);
        s->k->softmax(M, L, t->S, lds, with_self ? t->self : NULL, scale, causal);
        if (L > 0) {
            lm_pf32 V = values(s, b, l, h, L);
            s->k->sgemm(M, t->S, lds, &V, NULL, att, d, 0);
        } else {
            for (int r = 0; r < M; r++)
                memset(att + (size_t)r * d, 0, sizeof(float) * dh);
        }
        if (with_self)
            s->k->rowaxpy(M, dh, t->self, q + 2 * d, ldq, att, d);
    }
}

/* x += out(att); x += down(gelu(up(LN2(x)))), for M rows. */
static void mlp_residual(const lm_scorer *s, scratch *t, const lm_layer *ly, int M, float *x)
{
    const int d = s->d, f = s->m->cfg.d_ffn;
    linear(s, t, &ly->out, M, t->att, d, x, d, 1);
    s->k->layernorm(M, d, x, d, ly->ln2_w, ly->ln2_b, t->h, d);
    linear(s, t, &ly->up, M, t->h, d, t->ffn, f, 0);
    s->k->gelu(M, f, t->ffn, f);
    linear(s, t, &ly->down, M, t->ffn, f, x, d, 1);
}

/* ---- the two phases ---------------------------------------------------------- */

static void encode_history(lm_scorer *s, int b, int thread)
{
    scratch *t = &s->sc[thread];
    const lm_model *m = s->m;
    const lm_request *rq = &s->reqs[b];
    const int d = s->d, L = rq->n_hist;
    if (L == 0) {
        /* u = LN_f(0) = ln_f.bias */
        if (rq->user_vec)
            memcpy(rq->user_vec, m->lnf_b, sizeof(float) * d);
        atomic_store_explicit(&s->layers_ready[b], m->cfg.n_layers, memory_order_release);
        return;
    }
    lm_model_item_rows(m, rq->hist_items, L, t->x);
    for (int tok = 0; tok < L; tok++) {
        float *xr = t->x + (size_t)tok * d;
        const float *a = m->action_emb + (size_t)rq->hist_actions[tok] * d;
        const float *p = m->pos_emb + (size_t)(L - tok) * d;
        for (int i = 0; i < d; i++)
            xr[i] = xr[i] + a[i] + p[i];
    }
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const lm_layer *ly = &m->layers[l];
        s->k->layernorm(L, d, t->x, d, ly->ln1_w, ly->ln1_b, t->h, d);
        linear(s, t, &ly->qkv, L, t->h, d, t->qkv, 3 * d, 0);
        pack_kv(s, b, l, L, t->qkv);
        atomic_store_explicit(&s->layers_ready[b], l + 1, memory_order_release);
        int last = l == m->cfg.n_layers - 1;
        int r0 = last ? L - 1 : 0;
        attend(s, t, b, l, L, L - r0, t->qkv + (size_t)r0 * 3 * d, !last, 0);
        mlp_residual(s, t, ly, L - r0, t->x + (size_t)r0 * d);
    }
    if (rq->user_vec)
        s->k->layernorm(1, d, t->x + (size_t)(L - 1) * d, d, m->lnf_w, m->lnf_b, rq->user_vec, d);
}

static void score_chunk(lm_scorer *s, int ti, int thread)
{
    scratch *t = &s->sc[thread];
    const lm_model *m = s->m;
    const task *tk = &s->tasks[ti];
    const lm_request *rq = &s->reqs[tk->req];
    const int d = s->d, M = tk->n, L = rq->n_hist;
    lm_model_item_rows(m, rq->cands + tk->c0, M, t->x);
    for (int r = 0; r < M; r++) {
        float *xr = t->x + (size_t)r * d;
        for (int i = 0; i < d; i++)
            xr[i] += m->pos_emb[i];
    }
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const lm_layer *ly = &m->layers[l];
        s->k->layernorm(M, d, t->x, d, ly->ln1_w, ly->ln1_b, t->h, d);
        linear(s, t, &ly->qkv, M, t->h, d, t->qkv, 3 * d, 0);
        while (atomic_load_explicit(&s->layers_ready[tk->req], memory_order_acquire) <= l)
            lm_cpu_relax();
        attend(s, t, tk->req, l, L, M, t->qkv, 0, 1);
        mlp_residual(s, t, ly, M, t->x);
    }
    s->k->layernorm(M, d, t->x, d, m->lnf_w, m->lnf_b, t->h, d);
    for (int r = 0; r < M; r++) {
        const float *hr = t->h + (size_t)r * d;
        float acc = 0.0f;
        for (int i = 0; i < d; i++)
            acc += hr[i] * m->head_w[i];
        rq->scores[tk->c0 + r] = acc + m->head_b;
    }
}

/* Tasks 0..n-1 encode histories; the rest score candidate chunks. */
static void run_task(void *ctx, int ti, int thread)
{
    lm_scorer *s = ctx;
    if (ti < s->n_reqs)
        encode_history(s, ti, thread);
    else
        score_chunk(s, ti - s->n_reqs, thread);
}

/* ---- entry point -------------------------------------------------------- */

/* A branch-free pass first, in blocks of 16 ids that the compiler
 * vectorizes even at -O2 (a loop with an exit per id does not: at 512 x
 * 512 candidates that took most of the host's part of a GPU call,
 * bench/NOTES.md), then the first bad id for the message. */
static int check_ids(const int32_t *ids, int n, int lim, int req, const char *what, char *err,
                     size_t errsz)
{
    uint32_t bad = 0;
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++)
            bad |= (uint32_t)ids[i + j] >= (uint32_t)lim; /* negative ids too */
    for (; i < n; i++)
        bad |= (uint32_t)ids[i] >= (uint32_t)lim;
    for (i = 0; bad && i < n; i++)
        if (ids[i] < 0 || ids[i] >= lim)
            return cm_errf(err, errsz, "request %d: %s[%d] = %d is outside 0..%d", req, what, i,
                           (int)ids[i], lim - 1);
    return 0;
}

/* Request i's lengths and arrays: -1 with the message (err may be NULL). */
static int check_sizes(const lm_config *c, int max_cands, const lm_request *r, int i, char *err, size_t errsz)
{
    if (r->n_hist < 0 || r->n_hist > c->max_hist)
        return cm_errf(err, errsz, "request %d: history length %d, the model takes 0..%d", i, r->n_hist,
                       c->max_hist);
    if (r->n_cands < 0 || r->n_cands > max_cands)
        return cm_errf(err, errsz, "request %d: %d candidates, this scorer takes 0..%d", i, r->n_cands,
                       max_cands);
    const char *missing = r->n_hist && !r->hist_items     ? "hist_items"
                          : r->n_hist && !r->hist_actions ? "hist_actions"
                          : r->n_cands && !r->cands       ? "cands"
                          : r->n_cands && !r->scores      ? "scores" : NULL;
    if (missing)
        return cm_errf(err, errsz, "request %d: %s is NULL with %d %s", i, missing,
                       r->n_hist && missing[0] == 'h' ? r->n_hist : r->n_cands,
                       missing[0] == 'h' ? "history events" : "candidates");
    return 0;
}

int lm_requests_check(const lm_config *c, int max_batch, int max_cands, const lm_request *reqs, int n,
                      char *err, size_t errsz)
{
    if (n < 0 || n > max_batch)
        return cm_errf(err, errsz, "batch of %d requests, this scorer takes 0..%d", n, max_batch);
    for (int i = 0; i < n; i++) {
        const lm_request *r = &reqs[i];
        if (check_sizes(c, max_cands, r, i, err, errsz) ||
            check_ids(r->hist_items, r->n_hist, c->n_items, i, "hist_items", err, errsz) ||
            check_ids(r->hist_actions, r->n_hist, c->n_actions, i, "hist_actions", err, errsz) ||
            check_ids(r->cands, r->n_cands, c->n_items, i, "cands", err, errsz))
            return -1;
    }
    return 0;
}

int lm_requests_sizes_ok(const lm_config *c, int max_batch, int max_cands, const lm_request *reqs, int n)
{
    if (n < 0 || n > max_batch)
        return 0;
    for (int i = 0; i < n; i++)
        if (check_sizes(c, max_cands, &reqs[i], i, NULL, 0))
            return 0;
    return 1;
}

/* Chunks small enough that every thread gets about two, large enough to
 * keep the GEMMs efficient. */
static int chunk_size(const lm_scorer *s, const lm_request *reqs, int n)
{
    long total = 0;
    for (int i = 0; i < n; i++)
        total += reqs[i].n_cands;
    long want = (total + 2L * s->o.threads - 1) / (2L * s->o.threads);
    want = (want + 7) / 8 * 8;
    return want < CHUNK_MIN ? CHUNK_MIN : want > CHUNK_MAX ? CHUNK_MAX : (int)want;
}

int lm_scorer_run(lm_scorer *s, const lm_request *reqs, int n, char *err, size_t errsz)
{
    if (lm_requests_check(&s->m->cfg, s->o.max_batch, s->o.max_cands, reqs, n, err, errsz))
        return -1;
    s->reqs = reqs;
    int ch = chunk_size(s, reqs, n), nt = 0;
    for (int i = 0; i < n; i++)
        for (int c0 = 0; c0 < reqs[i].n_cands; c0 += ch)
            s->tasks[nt++] = (task){.req = i, .c0 = c0,
                                    .n = reqs[i].n_cands - c0 < ch ? reqs[i].n_cands - c0 : ch};
    s->n_reqs = n;
    for (int i = 0; i < n; i++)
        atomic_store_explicit(&s->layers_ready[i], 0, memory_order_relaxed);
    lm_pool_run(s->pool, run_task, s, n + nt);
    s->reqs = NULL;
    return 0;
}
