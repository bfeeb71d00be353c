/* llm/train_ops.c — forward and backward passes of ranker-v1's operations
 * for training. See train_ops.h for the conventions. */
#include "llm/train_ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llm/kernels.h"

void openblas_set_num_threads(int num_threads); /* OpenBLAS extension, not in every cblas.h */

/* The SIMD kernels (GELU, the catalog softmax), set once by tr_ops_init. */
static const lm_kern *kern;

void tr_ops_init(void)
{
    openblas_set_num_threads(1);
    kern = lm_kern_get(lm_isa_default());
}

/* ---- splitting work over the pool -------------------------------------------- */

/* Task i of n covers [lo, hi) of a range of `total`: a fixed partition, so
 * results do not depend on which thread ran which task. */
static void part(int total, int n, int i, int *lo, int *hi)
{
    *lo = (int)((long)total * i / n);
    *hi = (int)((long)total * (i + 1) / n);
}

/* Enough tasks to balance, few enough that each has real work. The count
 * depends on the problem only, never on the pool, so the partition (and
 * with it every summation order) is the same on any number of threads. */
#define MAX_TASKS 16
static int n_tasks(lm_pool *p, long work, long min_per_task)
{
    (void)p;
    long n = work / (min_per_task > 0 ? min_per_task : 1);
    return n < 1 ? 1 : n > MAX_TASKS ? MAX_TASKS : (int)n;
}

static void run(lm_pool *p, lm_task_fn fn, void *ctx, int n)
{
    if (p)
        lm_pool_run(p, fn, ctx, n);
    else
        for (int i = 0; i < n; i++)
            fn(ctx, i, 0);
}

/* ---- linear ------------------------------------------------------------------ */

typedef struct lin_ctx {
    int N, in, out, tasks, accum_dx;
    const float *X, *W, *b, *dY;
    float *Y, *dX, *dW, *db;
} lin_ctx;

static void lin_fwd_task(void *ctx, int task, int thread)
{
    (void)thread;
    lin_ctx *c = ctx;
    int r0, r1;
    part(c->N, c->tasks, task, &r0, &r1);
    if (r1 == r0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, c->out, c->in, 1.0f,
                c->X + (size_t)r0 * c->in, c->in, c->W, c->in, 0.0f, c->Y + (size_t)r0 * c->out, c->out);
    if (c->b)
        for (int r = r0; r < r1; r++)
            for (int j = 0; j < c->out; j++)
                c->Y[(size_t)r * c->out + j] += c->b[j];
}

void tr_linear_fwd(lm_pool *p, int N, int in, int out, const float *X, const float *W,
                   const float *b, float *Y)
{
    lin_ctx c = {.N = N, .in = in, .out = out, .X = X, .W = W, .b = b, .Y = Y};
    c.tasks = n_tasks(p, (long)N * in * out, 1L << 18);
    run(p, lin_fwd_task, &c, c.tasks);
}

/* Tasks [0, tasks) compute rows of dX; tasks [tasks, 2 tasks) compute rows
 * (output units) of dW and db. */
static void lin_bwd_task(void *ctx, int task, int thread)
{
    (void)thread;
    lin_ctx *c = ctx;
    int lo, hi;
    if (task < c->tasks) {
        part(c->N, c->tasks, task, &lo, &hi);
        if (hi > lo && c->dX)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, hi - lo, c->in, c->out, 1.0f,
                        c->dY + (size_t)lo * c->out, c->out, c->W, c->in, c->accum_dx ? 1.0f : 0.0f,
                        c->dX + (size_t)lo * c->in, c->in);
        return;
    }
    part(c->out, c->tasks, task - c->tasks, &lo, &hi);
    if (hi == lo)
        return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hi - lo, c->in, c->N, 1.0f, c->dY + lo,
                c->out, c->X, c->in, 1.0f, c->dW + (size_t)lo * c->in, c->in);
    if (c->db)
        for (int r = 0; r < c->N; r++)
            for (int j = lo; j < hi; j++)
                c->db[j] += c->dY[(size_t)r * c->out + j];
}

void tr_linear_bwd(lm_pool *p, int N, int in, int out, const float *X, const float *W,
                   const float *dY, float *dX, int accum_dx, float *dW, float *db)
{
    lin_ctx c = {.N = N, .in = in, .out = out, .X = X, .W = W, .dY = dY, .dX = dX,
                 .accum_dx = accum_dx, .dW = dW, .db = db};
    c.tasks = n_tasks(p, (long)N * in * out, 1L << 18);
    if (c.tasks > out)
        c.tasks = out;
    run(p, lin_bwd_task, &c, 2 * c.tasks);
}

/* ---- LayerNorm ------------------------------------------------------------------ */

typedef struct ln_ctx {
    int N, d, tasks;
    const float *X, *g, *b, *dY;
    const float *cmean, *crstd;
    float *Y, *mean, *rstd, *dX;
    float *partial; /* [tasks][2d]: dg then db */
} ln_ctx;

static void ln_fwd_task(void *ctx, int task, int thread)
{
    (void)thread;
    ln_ctx *c = ctx;
    int r0, r1, d = c->d;
    part(c->N, c->tasks, task, &r0, &r1);
    for (int r = r0; r < r1; r++) {
        const float *x = c->X + (size_t)r * d;
        float *y = c->Y + (size_t)r * d;
        double s = 0, ss = 0;
        for (int i = 0; i < d; i++)
            s += x[i];
        float mu = (float)(s / d);
        for (int i = 0; i < d; i++)
            ss += (double)(x[i] - mu) * (x[i] - mu);
        float rs = 1.0f / sqrtf((float)(ss / d) + 1e-5f);
        for (int i = 0; i < d; i++)
            y[i] = (x[i] - mu) * rs * c->g[i] + c->b[i];
        c->mean[r] = mu;
        c->rstd[r] = rs;
    }
}

void tr_layernorm_fwd(lm_pool *p, int N, int d, const float *X, const float *g, const float *b,
                      float *Y, float *mean, float *rstd)
{
    ln_ctx c = {.N = N, .d = d, .X = X, .g = g, .b = b, .Y = Y, .mean = mean, .rstd = rstd};
    c.tasks = n_tasks(p, (long)N * d, 1L << 14);
    run(p, ln_fwd_task, &c, c.tasks);
}

static void ln_bwd_task(void *ctx, int task, int thread)
{
    (void)thread;
    ln_ctx *c = ctx;
    int r0, r1, d = c->d;
    part(c->N, c->tasks, task, &r0, &r1);
    float *dg = c->partial + (size_t)task * 2 * d, *db = dg + d;
    for (int r = r0; r < r1; r++) {
        const float *x = c->X + (size_t)r * d, *dy = c->dY + (size_t)r * d;
        float *dx = c->dX + (size_t)r * d;
        float mu = c->cmean[r], rs = c->crstd[r];
        double m1 = 0, m2 = 0; /* means of dxhat and dxhat * xhat */
        for (int i = 0; i < d; i++) {
            float xh = (x[i] - mu) * rs, dxh = dy[i] * c->g[i];
            m1 += dxh;
            m2 += (double)dxh * xh;
            dg[i] += dy[i] * xh;
            db[i] += dy[i];
        }
        float a = (float)(m1 / d), bb = (float)(m2 / d);
        for (int i = 0; i < d; i++) {
            float xh = (x[i] - mu) * rs;
            dx[i] += rs * (dy[i] * c->g[i] - a - xh * bb);
        }
    }
}

void tr_layernorm_bwd(lm_pool *p, int N, int d, const float *X, const float *g,
                      const float *mean, const float *rstd, const float *dY, float *dX,
                      float *dg, float *db)
{
    ln_ctx c = {.N = N, .d = d, .X = X, .g = g, .dY = dY, .cmean = mean, .crstd = rstd, .dX = dX};
    c.tasks = n_tasks(p, (long)N * d, 1L << 14);
    c.partial = calloc((size_t)c.tasks * 2 * d, sizeof(float));
    if (!c.partial)
        abort(); /* a few KB; training cannot go on without it */
    run(p, ln_bwd_task, &c, c.tasks);
    for (int t = 0; t < c.tasks; t++)
        for (int i = 0; i < d; i++) {
            dg[i] += c.partial[(size_t)t * 2 * d + i];
            db[i] += c.partial[(size_t)t * 2 * d + d + i];
        }
    free(c.partial);
}

/* ---- GELU -------------------------------------------------------------------------- */

typedef struct ew_ctx {
    size_t n;
    int tasks;
    const float *X, *dY;
    float *Y, *dX;
    float rate;
    uint64_t seed, stream;
} ew_ctx;

static void ew_range(const ew_ctx *c, int task, size_t *lo, size_t *hi)
{
    *lo = c->n * (size_t)task / (size_t)c->tasks;
    *hi = c->n * (size_t)(task + 1) / (size_t)c->tasks;
}

/* GELU through the SIMD kernels: glibc's tanhf was a third of a training
 * step. */
static void gelu_fwd_task(void *ctx, int task, int thread)
{
    (void)thread;
    ew_ctx *c = ctx;
    size_t lo, hi;
    ew_range(c, task, &lo, &hi);
    memcpy(c->Y + lo, c->X + lo, sizeof(float) * (hi - lo));
    kern->gelu(1, (int)(hi - lo), c->Y + lo, (int)(hi - lo));
}

static void gelu_bwd_task(void *ctx, int task, int thread)
{
    (void)thread;
    ew_ctx *c = ctx;
    size_t lo, hi;
    ew_range(c, task, &lo, &hi);
    kern->gelu_grad(hi - lo, c->X + lo, c->dY + lo, c->dX + lo);
}

void tr_gelu_fwd(lm_pool *p, size_t n, const float *X, float *Y)
{
    ew_ctx c = {.n = n, .X = X, .Y = Y};
    c.tasks = n_tasks(p, (long)n, 1L << 14);
    run(p, gelu_fwd_task, &c, c.tasks);
}

void tr_gelu_bwd(lm_pool *p, size_t n, const float *X, const float *dY, float *dX)
{
    ew_ctx c = {.n = n, .X = X, .dY = dY, .dX = dX};
    c.tasks = n_tasks(p, (long)n, 1L << 14);
    run(p, gelu_bwd_task, &c, c.tasks);
}

/* ---- dropout ---------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Element i keeps its value when 16 bits of hash(base + i / 4) are at or
 * above rate * 65536: one hash serves four elements. */
static void dropout_task(void *ctx, int task, int thread)
{
    (void)thread;
    ew_ctx *c = ctx;
    size_t lo, hi;
    ew_range(c, task, &lo, &hi);
    uint64_t base = mix64(c->seed ^ mix64(c->stream + 0x9e3779b97f4a7c15ull));
    uint32_t thresh = (uint32_t)((double)c->rate * 65536.0);
    float keep = 1.0f / (1.0f - c->rate);
    uint64_t h = mix64(base + lo / 4);
    for (size_t i = lo; i < hi; i++) {
        if (i % 4 == 0)
            h = mix64(base + i / 4);
        uint32_t r = (uint32_t)(h >> (16 * (i % 4))) & 0xffff;
        c->Y[i] = r < thresh ? 0.0f : c->Y[i] * keep;
    }
}

void tr_dropout(lm_pool *p, size_t n, float *X, float rate, uint64_t seed, uint64_t stream)
{
    if (rate <= 0.0f)
        return;
    ew_ctx c = {.n = n, .Y = X, .rate = rate, .seed = seed, .stream = stream};
    c.tasks = n_tasks(p, (long)n, 1L << 14);
    run(p, dropout_task, &c, c.tasks);
}

/* ---- attention --------------------------------------------------------------------------- */

static float dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* In place: p[0..n) = softmax(p * scale). */
static void softmax_row(float *p, int n, float scale)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int i = 0; i < n; i++)
        mx = p[i] > mx ? p[i] : mx;
    for (int i = 0; i < n; i++) {
        p[i] = expf((p[i] - mx) * scale);
        sum += p[i];
    }
    for (int i = 0; i < n; i++)
        p[i] /= sum;
}

void tr_attn_hist_fwd(const tr_attn_shape *s, int L, const float *qkv, float *P, float *out)
{
    const int d = s->d, H = s->n_heads, dh = d / H, ld = 3 * d;
    const float scale = 1.0f / sqrtf((float)dh);
    for (int h = 0; h < H; h++)
        for (int t = 0; t < L; t++) {
            const float *q = qkv + (size_t)t * ld + h * dh;
            float *pr = P + ((size_t)h * L + t) * L;
            for (int u = 0; u <= t; u++)
                pr[u] = dot(q, qkv + (size_t)u * ld + d + h * dh, dh);
            softmax_row(pr, t + 1, scale);
            for (int u = t + 1; u < L; u++)
                pr[u] = 0.0f;
            float *o = out + (size_t)t * d + h * dh;
            memset(o, 0, sizeof(float) * dh);
            for (int u = 0; u <= t; u++) {
                const float *v = qkv + (size_t)u * ld + 2 * d + h * dh;
                for (int i = 0; i < dh; i++)
                    o[i] += pr[u] * v[i];
            }
        }
}

/* The gradient through one query's softmax attention over n keys:
 * dS_u = P_u (dP_u - sum_w P_w dP_w), with dP_u = dO . v_u. */
static void attn_row_bwd(int n, int dh, float scale, const float *q, const float *const *k,
                         const float *const *v, const float *p, const float *dO, float *dq,
                         float *const *dk, float *const *dv, float *dP)
{
    float acc = 0.0f;
    for (int u = 0; u < n; u++) {
        dP[u] = dot(dO, v[u], dh);
        acc += p[u] * dP[u];
    }
    for (int u = 0; u < n; u++) {
        float dS = p[u] * (dP[u] - acc) * scale;
        for (int i = 0; i < dh; i++) {
            dq[i] += dS * k[u][i];
            dk[u][i] += dS * q[i];
            dv[u][i] += p[u] * dO[i];
        }
    }
}

void tr_attn_hist_bwd(const tr_attn_shape *s, int L, const float *qkv, const float *P,
                      const float *dout, float *dqkv)
{
    const int d = s->d, H = s->n_heads, dh = d / H, ld = 3 * d;
    const float scale = 1.0f / sqrtf((float)dh);
    const float **k = malloc(sizeof(float *) * 2 * (size_t)(L + 1));
    float **dk = malloc(sizeof(float *) * 2 * (size_t)(L + 1));
    float *dP = malloc(sizeof(float) * (size_t)(L + 1));
    if (!k || !dk || !dP)
        abort();
    const float **v = k + L + 1;
    float **dv = dk + L + 1;
    for (int h = 0; h < H; h++) {
        for (int u = 0; u < L; u++) {
            k[u] = qkv + (size_t)u * ld + d + h * dh;
            v[u] = k[u] + d;
            dk[u] = dqkv + (size_t)u * ld + d + h * dh;
            dv[u] = dk[u] + d;
        }
        for (int t = 0; t < L; t++)
            attn_row_bwd(t + 1, dh, scale, qkv + (size_t)t * ld + h * dh, k, v,
                         P + ((size_t)h * L + t) * L, dout + (size_t)t * d + h * dh,
                         dqkv + (size_t)t * ld + h * dh, dk, dv, dP);
    }
    free(k);
    free(dk);
    free(dP);
}

void tr_attn_cand_fwd(const tr_attn_shape *s, int n_keys, const float *hist_qkv,
                      const float *cq, float *P, float *out)
{
    const int d = s->d, H = s->n_heads, dh = d / H, ld = 3 * d;
    const float scale = 1.0f / sqrtf((float)dh);
    for (int h = 0; h < H; h++) {
        const float *q = cq + h * dh;
        float *pr = P + (size_t)h * (n_keys + 1);
        for (int u = 0; u < n_keys; u++)
            pr[u] = dot(q, hist_qkv + (size_t)u * ld + d + h * dh, dh);
        pr[n_keys] = dot(q, cq + d + h * dh, dh);
        softmax_row(pr, n_keys + 1, scale);
        float *o = out + h * dh;
        for (int i = 0; i < dh; i++)
            o[i] = pr[n_keys] * cq[2 * d + h * dh + i];
        for (int u = 0; u < n_keys; u++) {
            const float *v = hist_qkv + (size_t)u * ld + 2 * d + h * dh;
            for (int i = 0; i < dh; i++)
                o[i] += pr[u] * v[i];
        }
    }
}

void tr_attn_cand_bwd(const tr_attn_shape *s, int n_keys, const float *hist_qkv,
                      const float *cq, const float *P, const float *dout, float *dhist_qkv,
                      float *dcq)
{
    const int d = s->d, H = s->n_heads, dh = d / H, ld = 3 * d, n = n_keys + 1;
    const float scale = 1.0f / sqrtf((float)dh);
    const float **k = malloc(sizeof(float *) * 2 * (size_t)n);
    float **dk = malloc(sizeof(float *) * 2 * (size_t)n);
    float *dP = malloc(sizeof(float) * (size_t)n);
    if (!k || !dk || !dP)
        abort();
    const float **v = k + n;
    float **dv = dk + n;
    for (int h = 0; h < H; h++) {
        for (int u = 0; u < n_keys; u++) {
            k[u] = hist_qkv + (size_t)u * ld + d + h * dh;
            v[u] = k[u] + d;
            dk[u] = dhist_qkv + (size_t)u * ld + d + h * dh;
            dv[u] = dk[u] + d;
        }
        k[n_keys] = cq + d + h * dh;
        v[n_keys] = k[n_keys] + d;
        dk[n_keys] = dcq + d + h * dh;
        dv[n_keys] = dk[n_keys] + d;
        attn_row_bwd(n, dh, scale, cq + h * dh, k, v, P + (size_t)h * n, dout + h * dh,
                     dcq + h * dh, dk, dv, dP);
    }
    free(k);
    free(dk);
    free(dP);
}

/* ---- softmax cross-entropy ---------------------------------------------------------------- */

/* softmax(z * scale) into out, entries at -inf get 0. Uses the SIMD kernel:
 * the catalog softmax runs over every item at every training position. */
static void softmax_masked(int n, const float *z, float scale, float *out)
{
    memcpy(out, z, sizeof(float) * (size_t)n);
    kern->softmax(1, n, out, n, NULL, scale, 0);
    for (int i = 0; i < n; i++)
        if (z[i] == -INFINITY)
            out[i] = 0.0f;
}

void tr_softmax_t(int n, const float *z, float T, float *out) { softmax_masked(n, z, 1.0f / T, out); }

double tr_softmax_ce(int n, const float *z, int y, const float *soft, const tr_ce_opts *o,
                     float *dz)
{
    softmax_masked(n, z, 1.0f, dz);
    double p_y = dz[y] > 1e-38f ? dz[y] : 1e-38;
    double loss = -log(p_y) * o->hard_weight;
    float hw = o->hard_weight * o->scale;
    for (int i = 0; i < n; i++)
        dz[i] *= hw;
    dz[y] -= hw;
    if (soft && o->kd_weight > 0.0f) {
        float T = o->temperature, *q = malloc(sizeof(float) * (size_t)n);
        if (!q)
            abort();
        softmax_masked(n, z, 1.0f / T, q);
        double kl = 0.0;
        for (int i = 0; i < n; i++)
            if (soft[i] > 0.0f)
                kl += soft[i] * (log(soft[i]) - log(q[i] > 1e-38f ? q[i] : 1e-38f));
        loss += (double)o->kd_weight * T * T * kl;
        float g = o->kd_weight * T * o->scale; /* d/dz of T^2 KL(soft || softmax(z/T)) */
        for (int i = 0; i < n; i++)
            dz[i] += g * (q[i] - soft[i]);
        free(q);
    }
    return loss;
}
