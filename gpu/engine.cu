/* gpu/engine.cu — the engine's host side: the model's weights copied to
 * the device in the layouts the kernels read (gpu/internal.cuh), pinned
 * staging buffers, and the two calls of gpu/engine.h. A call packs its
 * requests into one pinned buffer, copies it over in one transfer, runs the
 * kernels on the engine's stream and copies the answers back in one; a
 * score call replays that work as a CUDA graph kept for the batch's shape. */
#include "gpu/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "llm/pool.h"
#include "gpu/internal.cuh"

#define MAX_ALLOCS 512
#define N_GRAPHS 64 /* score calls' graphs kept, one per batch shape, least recently used out */
#define N_SEEN 128  /* shapes seen once, the latest: their next call captures a graph */
#define STAGE_THREADS 8 /* host threads for a call's copies, at most (bench/NOTES.md, session 23) */

/* A batch shape: requests and candidate tiles. It fixes every size,
 * offset and grid of a score call (the candidates and their scores are
 * staged and copied at the tiles' capacity, GP_TILE each); what changes
 * from call to call of one shape, candidate counts included, is in the
 * staged input. */
typedef struct gp_shape {
    int n, tiles;
} gp_shape;

/* A score call's copies and kernels, captured for its shape. */
typedef struct gp_graph {
    gp_shape sh;
    cudaGraphExec_t ex; /* NULL: free */
    unsigned long long used;
} gp_graph;

struct gp_engine {
    const lm_model *m;
    gp_opts o;
    gp_weights w;      /* device pointers, host copy */
    gp_weights *d_w;   /* the same on the device, for the kernels */
    void *allocs[MAX_ALLOCS];
    int n_allocs;
    cudaStream_t st;
    gp_score *sc;
    gp_retr *rt;
    int max_tiles;
    size_t in_bytes, out_bytes;
    uint8_t *h_in, *h_out; /* pinned */
    uint8_t *h_out_dev;    /* h_out as the kernels address it (mapped) */
    uint8_t *d_in, *d_out;
    unsigned long long calls; /* score calls, the kernels' bt.call */
    int graphs;               /* score calls replay graphs (RANKD_GPU_GRAPHS=0: no) */
    gp_graph graph[N_GRAPHS];
    gp_shape seen[N_SEEN]; /* a ring: n_seen filled, the next written at seen_next */
    int n_seen, seen_next;
    gp_timing timing; /* the latest score call's */
    lm_pool *pool;    /* host threads for staging (NULL: the caller alone) */
    int *req_at;      /* [max_batch] a score call's first candidate of each request */
    char device[256];
};

int gp_cuda_err(cudaError_t rc, const char *what, char *err, size_t errsz)
{
    if (rc == cudaSuccess)
        return 0;
    cudaGetLastError(); /* clear a non-sticky error */
    return cm_errf(err, errsz, "gpu: %s: %s", what, cudaGetErrorString(rc));
}

int gp_probe(int device, char *info, size_t infosz)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        snprintf(info, infosz, "no usable GPU: %s", cudaGetErrorString(rc));
        cudaGetLastError();
        return 0;
    }
    if (device < 0 || device >= n) {
        snprintf(info, infosz, "no GPU %d (%d found)", device, n);
        return 0;
    }
    cudaDeviceProp p;
    if ((rc = cudaGetDeviceProperties(&p, device)) != cudaSuccess) {
        snprintf(info, infosz, "GPU %d: %s", device, cudaGetErrorString(rc));
        return 0;
    }
    if (p.major < 8) {
        snprintf(info, infosz, "%s is sm_%d%d; the engine needs sm_80 or newer", p.name, p.major, p.minor);
        return 0;
    }
    snprintf(info, infosz, "%s (sm_%d%d, %d SMs)", p.name, p.major, p.minor, p.multiProcessorCount);
    return 1;
}

/* ---- weights --------------------------------------------------------------------------------- */

static int upload(gp_engine *e, void **dst, const void *src, size_t bytes, char *err, size_t errsz)
{
    *dst = NULL;
    if (e->n_allocs == MAX_ALLOCS)
        return cm_errf(err, errsz, "gpu: too many weight tensors");
    cudaError_t rc = cudaMalloc(dst, bytes ? bytes : 16);
    if (rc == cudaSuccess)
        e->allocs[e->n_allocs++] = *dst;
    if (rc == cudaSuccess && src)
        rc = cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice);
    return gp_cuda_err(rc, "copying the model to the GPU", err, errsz);
}

static int upload_f32(gp_engine *e, const float **dst, const float *src, size_t n, char *err, size_t errsz)
{
    return upload(e, (void **)dst, src, sizeof(float) * n, err, errsz);
}

/* A vector of n floats zero-padded to np (NULL src: zeros). */
static int upload_padded(gp_engine *e, const float **dst, const float *src, int n, int np, char *err,
                         size_t errsz)
{
    float *h = (float *)calloc((size_t)np, sizeof(float));
    if (!h)
        return cm_errf(err, errsz, "gpu: out of memory");
    if (src)
        memcpy(h, src, sizeof(float) * n);
    int rc = upload_f32(e, dst, h, (size_t)np, err, errsz);
    free(h);
    return rc;
}

/* W [n, k] from the CPU's packed panels to np x kp row-major, zero padded:
 * int8 with scales, or fp16 for fp32 models. */
static int upload_lin(gp_engine *e, gp_lin *g, const lm_linear *lin, int np, int kp, char *err, size_t errsz)
{
    const int int8 = e->m->quant == LM_QUANT_INT8;
    const int n = int8 ? lin->q.n : lin->f.n, k = int8 ? lin->q.k : lin->f.k;
    *g = (gp_lin){.n = n, .k = k, .np = np, .kp = kp};
    size_t cells = (size_t)np * kp;
    void *h = calloc(cells, int8 ? 1 : sizeof(__half));
    if (!h)
        return cm_errf(err, errsz, "gpu: out of memory");
    for (int j = 0; j < n; j++)
        for (int kk = 0; kk < k; kk++) {
            if (int8)
                ((int8_t *)h)[(size_t)j * kp + kk] = lm_pq8_get(&lin->q, j, kk);
            else
                ((__half *)h)[(size_t)j * kp + kk] = __float2half_rn(
                    lin->f.data[((size_t)(j / LM_PANEL) * k + kk) * LM_PANEL + j % LM_PANEL]);
        }
    int rc = upload(e, int8 ? (void **)&g->q : (void **)&g->h, h, cells * (int8 ? 1 : sizeof(__half)), err, errsz) ||
             (int8 && upload_padded(e, &g->scale, lin->q.scale, n, np, err, errsz)) ||
             upload_padded(e, &g->bias, lin->bias, n, np, err, errsz);
    free(h);
    return rc;
}

static int upload_items(gp_engine *e, char *err, size_t errsz)
{
    const lm_model *m = e->m;
    const int n = m->cfg.n_items, d = m->cfg.d_model, dp = e->w.dp;
    if (m->quant != LM_QUANT_INT8)
        return upload_f32(e, &e->w.item_f, m->item_rows, (size_t)n * d, err, errsz);
    int8_t *h = (int8_t *)calloc((size_t)n * dp, 1);
    if (!h)
        return cm_errf(err, errsz, "gpu: out of memory");
    for (int i = 0; i < n; i++)
        memcpy(h + (size_t)i * dp, m->item_rows_q + (size_t)i * d, (size_t)d);
    int rc = upload(e, (void **)&e->w.item_q, h, (size_t)n * dp, err, errsz) ||
             upload_f32(e, &e->w.item_scale, m->item.q.scale, (size_t)n, err, errsz);
    free(h);
    return rc;
}

static int upload_model(gp_engine *e, char *err, size_t errsz)
{
    const lm_model *m = e->m;
    const lm_config *c = &m->cfg;
    const int d = c->d_model, dp = gp_round_up(d, 32), fp = gp_round_up(c->d_ffn, GP_FCHUNK);
    gp_weights *w = &e->w;
    w->cfg = *c;
    w->int8 = m->quant == LM_QUANT_INT8;
    w->dp = dp;
    w->head_b = m->head_b;
    if (upload_items(e, err, errsz) ||
        upload_f32(e, &w->action_emb, m->action_emb, (size_t)c->n_actions * d, err, errsz) ||
        upload_f32(e, &w->pos_emb, m->pos_emb, (size_t)(c->max_hist + 1) * d, err, errsz) ||
        upload_f32(e, &w->lnf_w, m->lnf_w, d, err, errsz) || upload_f32(e, &w->lnf_b, m->lnf_b, d, err, errsz) ||
        upload_f32(e, &w->head_w, m->head_w, d, err, errsz))
        return -1;
    for (int l = 0; l < c->n_layers; l++) {
        const lm_layer *s = &m->layers[l];
        gp_layer *g = &w->layers[l];
        if (upload_f32(e, &g->ln1_w, s->ln1_w, d, err, errsz) || upload_f32(e, &g->ln1_b, s->ln1_b, d, err, errsz) ||
            upload_f32(e, &g->ln2_w, s->ln2_w, d, err, errsz) || upload_f32(e, &g->ln2_b, s->ln2_b, d, err, errsz) ||
            upload_lin(e, &g->qkv, &s->qkv, gp_round_up(3 * d, 32), dp, err, errsz) ||
            upload_lin(e, &g->out, &s->out, dp, dp, err, errsz) ||
            upload_lin(e, &g->up, &s->up, fp, dp, err, errsz) ||
            upload_lin(e, &g->down, &s->down, dp, fp, err, errsz))
            return -1;
    }
    return upload(e, (void **)&e->d_w, w, sizeof *w, err, errsz);
}

/* ---- engine ----------------------------------------------------------------------------------- */

void gp_engine_free(gp_engine *e)
{
    if (!e)
        return;
    if (e->st)
        cudaStreamSynchronize(e->st);
    for (int i = 0; i < N_GRAPHS; i++)
        if (e->graph[i].ex)
            cudaGraphExecDestroy(e->graph[i].ex);
    lm_pool_free(e->pool);
    free(e->req_at);
    gp_retr_free(e->rt);
    gp_score_free(e->sc);
    for (int i = 0; i < e->n_allocs; i++)
        cudaFree(e->allocs[i]);
    cudaFreeHost(e->h_in);
    cudaFreeHost(e->h_out);
    cudaFree(e->d_in);
    cudaFree(e->d_out);
    if (e->st)
        cudaStreamDestroy(e->st);
    free(e);
}

/* Staging sizes: the larger of what a score call and a retrieve call move. */
static void staging_sizes(gp_engine *e)
{
    const lm_config *c = &e->m->cfg;
    const size_t B = (size_t)e->o.max_batch, d = (size_t)c->d_model;
    e->max_tiles = e->o.max_batch * ((e->o.max_cands + GP_TILE - 1) / GP_TILE);
    const size_t cap = (size_t)e->max_tiles * GP_TILE; /* candidates at the tiles' capacity */
    size_t score_in = sizeof(int32_t) * (B + 2 * B * c->max_hist + cap) + sizeof(int4) * (size_t)e->max_tiles +
                      sizeof(unsigned long long) + 96;
    size_t retr_in = sizeof(float) * B * d + sizeof(int32_t) * (B + 1 + B * e->o.max_exclude) + 64;
    size_t score_out = sizeof(float) * (B * d + cap) + 64;
    size_t retr_out = (sizeof(int32_t) + sizeof(float)) * B * e->o.max_k + sizeof(int32_t) * B + 64;
    e->in_bytes = score_in > retr_in ? score_in : retr_in;
    e->out_bytes = score_out > retr_out ? score_out : retr_out;
}

int gp_engine_new(gp_engine **out, const lm_model *m, const gp_opts *o, char *err, size_t errsz)
{
    *out = NULL;
    char info[160];
    if (!gp_probe(o->device, info, sizeof info))
        return cm_errf(err, errsz, "gpu: %s", info);
    if (o->max_batch < 1 || o->max_cands < 0 || o->max_k < 1 || o->max_exclude < 0)
        return cm_errf(err, errsz, "gpu: max_batch %d, max_cands %d, max_k %d, max_exclude %d out of range",
                       o->max_batch, o->max_cands, o->max_k, o->max_exclude);
    gp_engine *e = (gp_engine *)calloc(1, sizeof *e);
    if (!e)
        return cm_errf(err, errsz, "gpu: out of memory");
    e->m = m;
    e->o = *o;
    {
        const char *g = getenv("RANKD_GPU_GRAPHS");
        e->graphs = !(g && !strcmp(g, "0"));
    }
    staging_sizes(e);
    if (!(e->req_at = (int *)malloc(sizeof(int) * (size_t)o->max_batch))) {
        free(e);
        return cm_errf(err, errsz, "gpu: out of memory");
    }
    {
        const long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int n = o->threads > 0 ? o->threads : cores > 1 ? (int)cores : 1;
        const char *cap_env = getenv("RANKD_GPU_STAGE_THREADS"); /* a measurement switch: the cap */
        const int cap = cap_env && atoi(cap_env) > 0 ? atoi(cap_env) : STAGE_THREADS;
        n = n < cap ? n : cap;
        if (n > 1 && lm_pool_new(&e->pool, n, err, errsz)) {
            gp_engine_free(e);
            return -1;
        }
    }
    GP_TRY(cudaSetDevice(o->device), "selecting the GPU");
    GP_TRY(cudaStreamCreateWithFlags(&e->st, cudaStreamNonBlocking), "creating a stream");
    if (upload_model(e, err, errsz) || gp_score_new(&e->sc, &e->w, e->d_w, o->max_batch, err, errsz) ||
        gp_retr_new(&e->rt, &e->w, o->max_batch, o->max_k, o->max_exclude, err, errsz))
        goto fail;
    GP_TRY(cudaMallocHost((void **)&e->h_in, e->in_bytes), "pinned input buffer");
    GP_TRY(cudaHostAlloc((void **)&e->h_out, e->out_bytes, cudaHostAllocMapped), "pinned output buffer");
    GP_TRY(cudaHostGetDevicePointer((void **)&e->h_out_dev, e->h_out, 0), "pinned output buffer");
    GP_TRY(cudaMalloc((void **)&e->d_in, e->in_bytes), "device input buffer");
    GP_TRY(cudaMalloc((void **)&e->d_out, e->out_bytes), "device output buffer");
    snprintf(e->device, sizeof e->device, "%s, %s", info,
             m->quant == LM_QUANT_INT8 ? "int8 tensor cores" : "fp16 tensor cores, fp32 sums");
    *out = e;
    return 0;
fail:
    gp_engine_free(e);
    return -1;
}

const char *gp_engine_device(const gp_engine *e) { return e->device; }

/* Bump allocation inside a staging buffer: the same offsets on host and
 * device. */
typedef struct stage {
    uint8_t *h, *d;
    size_t off;
} stage;

static void *stage_take(stage *s, size_t bytes, void **dev)
{
    s->off = (s->off + 15) & ~(size_t)15;
    void *p = s->h + s->off;
    *dev = s->d + s->off;
    s->off += bytes;
    return p;
}

static int finish(gp_engine *e, const char *what, char *err, size_t errsz)
{
    return gp_cuda_err(cudaStreamSynchronize(e->st), what, err, errsz);
}

/* A score call's work on the stream: the requests over, then the kernels,
 * which write the answers (scores, user vectors) straight into the pinned
 * output buffer, mapped into the GPU's address space: no copy back after
 * them, and the host reads them once the stream is done. */
static int score_enqueue(gp_engine *e, const gp_batch *b, size_t in_bytes, char *err, size_t errsz)
{
    return gp_cuda_err(cudaMemcpyAsync(e->d_in, e->h_in, in_bytes, cudaMemcpyHostToDevice, e->st),
                       "copying requests", err, errsz) ||
           gp_score_run(e->sc, e->st, b, err, errsz);
}

static int same_shape(gp_shape a, gp_shape b) { return a.n == b.n && a.tiles == b.tiles; }

/* The graph of this shape's score call (1, in *ex), or 0 where the call
 * should launch its steps directly, or -1 on an error. A call is a copy
 * and two kernels; one graph launch replaces the three (student B=1 on an
 * H200, with a copy back too: 36 against 44 us a call, bench/NOTES.md). A shape gets its
 * graph at its second call: capturing and instantiating are host work one
 * replay would not repay, and shapes that come once are never captured.
 * Candidate counts that vary within the same tiles (filtered lists) keep
 * their shape. */
static int score_graph(gp_engine *e, gp_shape sh, const gp_batch *b, size_t in_bytes, cudaGraphExec_t *ex,
                       char *err, size_t errsz)
{
    gp_graph *slot = &e->graph[0];
    for (int i = 0; i < N_GRAPHS; i++) {
        gp_graph *g = &e->graph[i];
        if (g->ex && same_shape(g->sh, sh)) {
            g->used = e->calls;
            *ex = g->ex;
            return 1;
        }
        if (!g->ex || (slot->ex && g->used < slot->used))
            slot = g;
    }
    int seen = 0;
    for (int i = 0; i < e->n_seen && !seen; i++)
        seen = same_shape(e->seen[i], sh);
    if (!seen) {
        e->seen[e->seen_next] = sh;
        e->seen_next = (e->seen_next + 1) % N_SEEN;
        e->n_seen += e->n_seen < N_SEEN;
        return 0;
    }
    if (slot->ex) {
        cudaGraphExecDestroy(slot->ex);
        slot->ex = NULL;
    }
    cudaGraph_t graph = NULL;
    if (gp_cuda_err(cudaStreamBeginCapture(e->st, cudaStreamCaptureModeThreadLocal), "capturing a graph", err,
                    errsz))
        return -1;
    const int rc = score_enqueue(e, b, in_bytes, err, errsz);
    const cudaError_t end = cudaStreamEndCapture(e->st, &graph);
    if (rc || gp_cuda_err(end, "capturing a graph", err, errsz) ||
        gp_cuda_err(cudaGraphInstantiate(&slot->ex, graph, 0), "instantiating a graph", err, errsz)) {
        slot->ex = NULL;
        if (graph)
            cudaGraphDestroy(graph);
        return -1;
    }
    cudaGraphDestroy(graph);
    slot->sh = sh;
    slot->used = e->calls;
    *ex = slot->ex;
    return 1;
}

/* A score call's copies between the requests and the pinned buffers, in
 * tasks of COPY_REQS requests, on the engine's host threads where the call
 * has at least PAR_CANDS candidates. The requests' ids are checked as they
 * are copied, in one pass: at 512 x 512 candidates, reading them from
 * memory once on one thread (validation, then copies) was a fifth of the
 * call on an H200's host (bench/NOTES.md). */
#define COPY_REQS 16
#define PAR_CANDS 16384

typedef struct copy_job {
    gp_engine *e;
    const lm_request *reqs;
    int n, mh, d, n_items, n_actions;
    int32_t *hi, *ha, *cd; /* staging: history items, actions, candidates */
    const float *sc, *uv;  /* answers: scores, user vectors */
    int bad;               /* an id out of range was copied (atomic) */
} copy_job;

/* dst = src; 1 when every id is in 0..lim-1. Blocks of 16 vectorize. */
static int copy_ids(int32_t *__restrict__ dst, const int32_t *__restrict__ src, int n, int lim)
{
    uint32_t bad = 0;
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) {
            dst[i + k] = src[i + k];
            bad |= (uint32_t)src[i + k] >= (uint32_t)lim;
        }
    for (; i < n; i++) {
        dst[i] = src[i];
        bad |= (uint32_t)src[i] >= (uint32_t)lim;
    }
    return bad == 0;
}

static void stage_task(void *ctx, int task, int thread)
{
    (void)thread;
    copy_job *j = (copy_job *)ctx;
    const int end = (task + 1) * COPY_REQS < j->n ? (task + 1) * COPY_REQS : j->n;
    int ok = 1;
    for (int i = task * COPY_REQS; i < end; i++) {
        const lm_request *r = &j->reqs[i];
        const size_t h = (size_t)i * j->mh;
        ok &= copy_ids(j->hi + h, r->hist_items, r->n_hist, j->n_items) &
              copy_ids(j->ha + h, r->hist_actions, r->n_hist, j->n_actions) &
              copy_ids(j->cd + j->e->req_at[i], r->cands, r->n_cands, j->n_items);
    }
    if (!ok)
        __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
}

static void unstage_task(void *ctx, int task, int thread)
{
    (void)thread;
    const copy_job *j = (const copy_job *)ctx;
    const int end = (task + 1) * COPY_REQS < j->n ? (task + 1) * COPY_REQS : j->n;
    for (int i = task * COPY_REQS; i < end; i++) {
        const lm_request *r = &j->reqs[i];
        if (r->n_cands)
            memcpy(r->scores, j->sc + j->e->req_at[i], sizeof(float) * r->n_cands);
        if (r->user_vec)
            memcpy(r->user_vec, j->uv + (size_t)i * j->d, sizeof(float) * j->d);
    }
}

static void run_copies(gp_engine *e, copy_job *j, int total, lm_task_fn fn)
{
    const int tasks = (j->n + COPY_REQS - 1) / COPY_REQS;
    if (e->pool && total >= PAR_CANDS && tasks > 1)
        lm_pool_run(e->pool, fn, j, tasks);
    else
        for (int t = 0; t < tasks; t++)
            fn(j, t, 0);
}

/* A bad batch is refused with lm_requests_check's message, as on the CPU. */
static int refuse(const gp_engine *e, const lm_request *reqs, int n, char *err, size_t errsz)
{
    if (lm_requests_check(&e->m->cfg, e->o.max_batch, e->o.max_cands, reqs, n, err, errsz) == 0)
        cm_errf(err, errsz, "internal: the GPU engine refused a batch that lm_requests_check takes");
    return -1;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int gp_engine_score(gp_engine *e, const lm_request *reqs, int n, char *err, size_t errsz)
{
    const long long t0 = now_ns();
    const lm_config *c = &e->m->cfg;
    if (!lm_requests_sizes_ok(c, e->o.max_batch, e->o.max_cands, reqs, n)) /* the ids: as they are copied */
        return refuse(e, reqs, n, err, errsz);
    if (n == 0)
        return 0;
    const int mh = c->max_hist, d = c->d_model;
    int total = 0, tiles = 0;
    for (int i = 0; i < n; i++) {
        total += reqs[i].n_cands;
        tiles += (reqs[i].n_cands + GP_TILE - 1) / GP_TILE;
    }
    stage in = {e->h_in, e->d_in, 0}, out = {e->h_out, e->h_out_dev, 0};
    gp_batch b = {.B = n, .n_tiles = tiles};
    int32_t *nh = (int32_t *)stage_take(&in, sizeof(int32_t) * n, (void **)&b.n_hist);
    int32_t *hi = (int32_t *)stage_take(&in, sizeof(int32_t) * n * mh, (void **)&b.hist_items);
    int32_t *ha = (int32_t *)stage_take(&in, sizeof(int32_t) * n * mh, (void **)&b.hist_actions);
    int4 *tl = (int4 *)stage_take(&in, sizeof(int4) * tiles, (void **)&b.tiles);
    unsigned long long *call = (unsigned long long *)stage_take(&in, sizeof(unsigned long long), (void **)&b.call);
    /* last, at the tiles' capacity: the copies' sizes depend on the shape alone */
    int32_t *cd = (int32_t *)stage_take(&in, sizeof(int32_t) * GP_TILE * tiles, (void **)&b.cands);
    float *uv = (float *)stage_take(&out, sizeof(float) * n * d, (void **)&b.user_vec);
    float *sc = (float *)stage_take(&out, sizeof(float) * GP_TILE * tiles, (void **)&b.scores);
    int at = 0, t = 0;
    for (int i = 0; i < n; i++) {
        const lm_request *r = &reqs[i];
        nh[i] = r->n_hist;
        e->req_at[i] = at;
        for (int j = 0; j < r->n_cands; j += GP_TILE)
            tl[t++] = make_int4(i, at + j, r->n_cands - j < GP_TILE ? r->n_cands - j : GP_TILE, 0);
        at += r->n_cands;
    }
    copy_job job = {e, reqs, n, mh, d, c->n_items, c->n_actions, hi, ha, cd, NULL, NULL, 0};
    run_copies(e, &job, total, stage_task);
    if (__atomic_load_n(&job.bad, __ATOMIC_RELAXED)) /* nothing written: the answers are copied out last */
        return refuse(e, reqs, n, err, errsz);
    *call = ++e->calls;
    cudaGraphExec_t ex = NULL;
    const long long t1 = now_ns();
    const int g = e->graphs ? score_graph(e, (gp_shape){n, tiles}, &b, in.off, &ex, err, errsz) : 0;
    if (g < 0 || (g ? gp_cuda_err(cudaGraphLaunch(ex, e->st), "launching a graph", err, errsz)
                    : score_enqueue(e, &b, in.off, err, errsz)))
        return -1;
    if (finish(e, "scoring", err, errsz))
        return -1;
    const long long t2 = now_ns();
    job.sc = sc;
    job.uv = uv;
    run_copies(e, &job, total, unstage_task);
    e->timing = (gp_timing){t1 - t0, t2 - t1, now_ns() - t2};
    return 0;
}

void gp_engine_timing(const gp_engine *e, gp_timing *t) { *t = e->timing; }

int gp_engine_retrieve(gp_engine *e, lm_retrieval *reqs, int n, char *err, size_t errsz)
{
    if (lm_retrievals_check(e->o.max_batch, e->o.max_k, e->o.max_exclude, reqs, n, err, errsz))
        return -1;
    if (n == 0)
        return 0;
    const int d = e->m->cfg.d_model;
    int k = 0, n_ex = 0;
    for (int i = 0; i < n; i++) {
        k = reqs[i].k > k ? reqs[i].k : k;
        n_ex += reqs[i].n_exclude;
    }
    stage in = {e->h_in, e->d_in, 0}, out = {e->h_out, e->d_out, 0};
    float *d_uv;
    int32_t *d_off, *d_ex, *d_items, *d_nout;
    float *d_scores;
    float *uv = (float *)stage_take(&in, sizeof(float) * n * d, (void **)&d_uv);
    int32_t *off = (int32_t *)stage_take(&in, sizeof(int32_t) * (n + 1), (void **)&d_off);
    int32_t *ex = (int32_t *)stage_take(&in, sizeof(int32_t) * n_ex, (void **)&d_ex);
    int32_t *items = (int32_t *)stage_take(&out, sizeof(int32_t) * n * k, (void **)&d_items);
    float *scores = (float *)stage_take(&out, sizeof(float) * n * k, (void **)&d_scores);
    int32_t *nout = (int32_t *)stage_take(&out, sizeof(int32_t) * n, (void **)&d_nout);
    off[0] = 0;
    for (int i = 0; i < n; i++) {
        memcpy(uv + (size_t)i * d, reqs[i].user_vec, sizeof(float) * d);
        if (reqs[i].n_exclude)
            memcpy(ex + off[i], reqs[i].exclude, sizeof(int32_t) * reqs[i].n_exclude);
        off[i + 1] = off[i] + reqs[i].n_exclude;
    }
    if (gp_cuda_err(cudaMemcpyAsync(e->d_in, e->h_in, in.off, cudaMemcpyHostToDevice, e->st), "copying requests",
                    err, errsz) ||
        gp_retr_run(e->rt, e->st, n, d_uv, d_ex, d_off, k, d_items, d_scores, d_nout, err, errsz) ||
        gp_cuda_err(cudaMemcpyAsync(e->h_out, e->d_out, out.off, cudaMemcpyDeviceToHost, e->st), "copying results",
                    err, errsz) ||
        finish(e, "retrieval", err, errsz))
        return -1;
    for (int i = 0; i < n; i++) {
        int got = nout[i] < reqs[i].k ? nout[i] : reqs[i].k;
        memcpy(reqs[i].items, items + (size_t)i * k, sizeof(int32_t) * got);
        memcpy(reqs[i].scores, scores + (size_t)i * k, sizeof(float) * got);
        reqs[i].n_out = got;
    }
    return 0;
}
