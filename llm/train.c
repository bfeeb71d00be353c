/* llm/train.c — the training loop: batches from the dataset, AdamW,
 * validation, early stopping, checkpoints and resume. See train.h. */
#include "llm/train.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "llm/pool.h"
#include "llm/train_model.h"

void tr_opts_defaults(tr_opts *o)
{
    *o = (tr_opts){.d_model = 64, .n_heads = 2, .n_layers = 2, .d_ffn = 256, .max_hist = 50,
                   .dropout = 0.5f, .emb_std = 0.1f, .batch = 128, .lr = 1e-3f, .weight_decay = 0.0f,
                   .beta1 = 0.9f, .beta2 = 0.98f, .clip = 1.0f, .warmup = 100, .max_epochs = 200,
                   .patience = 10, .lr_decay = 0.5f, .decay_patience = 3, .eval_every = 1, .eval_users = 0, .topk = 1, .group_size = 64,
                   .hard_neg = 48, .extra_groups = 0, .rank_weight = 1.0f, .kd_weight = 0.5f,
                   .temperature = 2.0f, .seed = 42, .threads = 0};
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- the run's state --------------------------------------------------------------------- */

typedef struct run {
    const lm_dataset *d;
    const tr_opts *o;
    lm_config cfg;
    lm_pool *pool;
    tr_model *m, *teacher;
    float *adam_m, *adam_v;
    uint8_t *decay;
    int *users; /* trainable users (>= 2 training events) */
    int n_users, steps_per_epoch;
    /* batch buffers */
    tr_batch b;
    int *seq_off, *grp_tok;
    int32_t *items, *actions, *targets, *cands;
    /* progress of the run (what a checkpoint keeps) */
    int epoch;              /* epochs done */
    long long step;
    double best;
    int best_epoch, bad_evals;
    float lr_scale;         /* decayed on plateaus */
    int since_decay;        /* evaluations without improvement since the last decay */
    char ckpt[4096], evalpath[4096];
} run;

static int opts_check(const lm_dataset *d, const tr_opts *o, char *err, size_t errsz)
{
    if (o->d_model < 1 || o->n_heads < 1 || o->d_model % o->n_heads || o->n_layers < 1 ||
        o->n_layers > LM_MAX_LAYERS || o->d_ffn < 1 || o->max_hist < 1 || o->max_hist > 4096)
        return cm_errf(err, errsz, "model shape d_model %d, n_heads %d, n_layers %d, d_ffn %d, "
                       "max_hist %d is not valid (d_model a multiple of n_heads, 1..%d layers)",
                       o->d_model, o->n_heads, o->n_layers, o->d_ffn, o->max_hist, LM_MAX_LAYERS);
    if (o->batch < 1 || o->lr <= 0 || o->max_epochs < 1 || o->eval_every < 1 || o->patience < 1 ||
        !(o->dropout >= 0 && o->dropout < 1))
        return cm_errf(err, errsz, "training options out of range (batch %d, lr %g, epochs %d, "
                       "eval_every %d, patience %d, dropout %g)", o->batch, o->lr, o->max_epochs,
                       o->eval_every, o->patience, o->dropout);
    if (o->group_size < 2 || o->group_size > 1024 ||
        (!o->topk && (o->hard_neg < 0 || o->hard_neg > o->group_size - 1 || o->hard_neg > 256)))
        return cm_errf(err, errsz, "ranking groups of %d with %d hard negatives: need a group of "
                       "2..1024 and (sampled negatives) at most min(256, group - 1) hard ones",
                       o->group_size, o->hard_neg);
    if (d->n_items < 3 || d->n_actions < 1)
        return cm_errf(err, errsz, "the dataset has %d items and %d action types: too few to train",
                       d->n_items - 1, d->n_actions);
    if (!o->out)
        return cm_errf(err, errsz, "no output path for the model");
    return 0;
}

static int alloc_batch(run *r, char *err, size_t errsz)
{
    const tr_opts *o = r->o;
    size_t T = (size_t)o->batch * o->max_hist, G = (size_t)o->batch * (1 + o->extra_groups);
    r->seq_off = malloc(sizeof(int) * (o->batch + 1));
    r->grp_tok = malloc(sizeof(int) * G);
    r->items = malloc(sizeof(int32_t) * T);
    r->actions = malloc(sizeof(int32_t) * T);
    r->targets = malloc(sizeof(int32_t) * T);
    r->cands = malloc(sizeof(int32_t) * G * o->group_size);
    r->adam_m = calloc(tr_model_size(r->m), sizeof(float));
    r->adam_v = calloc(tr_model_size(r->m), sizeof(float));
    r->decay = malloc(tr_model_size(r->m));
    r->users = malloc(sizeof(int) * (size_t)(r->d->n_users ? r->d->n_users : 1));
    if (!r->seq_off || !r->grp_tok || !r->items || !r->actions || !r->targets || !r->cands ||
        !r->adam_m || !r->adam_v || !r->decay || !r->users)
        return cm_errf(err, errsz, "out of memory for the training buffers");
    tr_model_decay_mask(r->m, r->decay);
    return 0;
}

static void run_free(run *r)
{
    tr_model_free(r->m);
    tr_model_free(r->teacher);
    lm_pool_free(r->pool);
    free(r->seq_off);
    free(r->grp_tok);
    free(r->items);
    free(r->actions);
    free(r->targets);
    free(r->cands);
    free(r->adam_m);
    free(r->adam_v);
    free(r->decay);
    free(r->users);
}

/* ---- batches ------------------------------------------------------------------------------ */

/* The users of epoch e, shuffled by (seed, epoch): a resumed run draws the
 * same order. */
static void epoch_order(run *r, int epoch)
{
    int n = 0;
    for (int u = 0; u < r->d->n_users; u++)
        if (lm_user_train_len(r->d, u) >= 2)
            r->users[n++] = u;
    uint64_t s = mix(r->o->seed ^ mix((uint64_t)epoch));
    for (int i = n - 1; i > 0; i--) {
        s = mix(s);
        int j = (int)(s % (uint64_t)(i + 1)), t = r->users[i];
        r->users[i] = r->users[j];
        r->users[j] = t;
    }
    r->n_users = n;
}

/* Sequences for users[u0, u1): the last max_hist training events as inputs,
 * each with the next event's item as its target; a ranking group at the
 * newest token and at extra_groups random earlier ones. */
static void make_batch(run *r, int u0, int u1)
{
    const lm_dataset *d = r->d;
    const tr_opts *o = r->o;
    int T = 0, G = 0;
    r->seq_off[0] = 0;
    for (int i = u0; i < u1; i++) {
        uint64_t s = mix(o->seed ^ mix((uint64_t)r->step * 131 + (uint64_t)i));
        /* the window ends at the end of the training part, or with
         * probability `crop` at a random earlier event: long histories
         * then show more than their last max_hist events over the epochs */
        int u = r->users[i], n = lm_user_train_len(d, u);
        if (o->crop > 0 && n > 2 && (double)(mix(s ^ 0xc0ffee) >> 11) * 0x1p-53 < o->crop)
            n = 2 + (int)(mix(s ^ 0xbeef) % (uint64_t)(n - 1));
        int len = n - 1 < o->max_hist ? n - 1 : o->max_hist;
        int64_t e0 = d->user_off[u] + (n - 1 - len);
        for (int t = 0; t < len; t++) {
            r->items[T + t] = d->items[e0 + t];
            r->actions[T + t] = d->actions[e0 + t];
            r->targets[T + t] = d->items[e0 + t + 1];
        }
        /* extra groups at distinct earlier tokens, in increasing order */
        int picked[64], np = 0, want = o->extra_groups < len - 1 ? o->extra_groups : len - 1;
        while (np < want && np < 64) {
            s = mix(s);
            int t = (int)(s % (uint64_t)(len - 1)), dup = 0;
            for (int k = 0; k < np; k++)
                dup |= picked[k] == t;
            if (!dup)
                picked[np++] = t;
        }
        for (int a = 1; a < np; a++) /* insertion sort: np is small */
            for (int k = a; k > 0 && picked[k] < picked[k - 1]; k--) {
                int t = picked[k];
                picked[k] = picked[k - 1];
                picked[k - 1] = t;
            }
        for (int k = 0; k < np; k++)
            if (r->targets[T + picked[k]] > 0)
                r->grp_tok[G++] = T + picked[k];
        if (r->targets[T + len - 1] > 0)
            r->grp_tok[G++] = T + len - 1;
        T += len;
        r->seq_off[i - u0 + 1] = T;
    }
    r->b = (tr_batch){.B = u1 - u0, .T = T, .seq_off = r->seq_off, .items = r->items,
                      .actions = r->actions, .targets = r->targets, .G = G, .grp_tok = r->grp_tok,
                      .cands = r->cands};
}

/* ---- the optimizer ------------------------------------------------------------------------- */

static void adamw(run *r)
{
    const tr_opts *o = r->o;
    size_t n = tr_model_size(r->m);
    float *p = tr_model_params(r->m), *g = tr_model_grads(r->m);
    double norm = 0;
    for (size_t i = 0; i < n; i++)
        norm += (double)g[i] * g[i];
    norm = sqrt(norm);
    float clip = o->clip > 0 && norm > o->clip ? (float)(o->clip / norm) : 1.0f;
    long long t = r->step + 1;
    float lr = o->lr * r->lr_scale * (o->warmup > 0 && t < o->warmup ? (float)t / (float)o->warmup : 1.0f);
    float c1 = 1.0f / (1.0f - powf(o->beta1, (float)t)), c2 = 1.0f / (1.0f - powf(o->beta2, (float)t));
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * clip;
        r->adam_m[i] = o->beta1 * r->adam_m[i] + (1.0f - o->beta1) * gi;
        r->adam_v[i] = o->beta2 * r->adam_v[i] + (1.0f - o->beta2) * gi * gi;
        float upd = r->adam_m[i] * c1 / (sqrtf(r->adam_v[i] * c2) + 1e-8f);
        if (r->decay[i])
            upd += o->weight_decay * p[i];
        p[i] -= lr * upd;
    }
}

/* ---- files: the model, the checkpoint -------------------------------------------------------- */

static int write_model(run *r, const char *path, double valid_ndcg, char *err, size_t errsz)
{
    lm_st_writer *w = lm_st_writer_new();
    if (!w)
        return cm_errf(err, errsz, "out of memory");
    json_t *acts = json_array();
    for (int a = 0; a < r->d->n_actions; a++)
        json_array_append_new(acts, json_string(r->d->action_names[a]));
    char *actions = json_dumps(acts, JSON_COMPACT);
    json_decref(acts);
    char num[64];
    snprintf(num, sizeof num, "%.6f", valid_ndcg);
    int rc = tr_model_write(r->m, w, 1, err, errsz) ||
             lm_st_writer_meta(w, "actions", actions ? actions : "[]", err, errsz) ||
             lm_st_writer_meta(w, "trainer", r->o->teacher ? "rankd distill" : "rankd train", err, errsz) ||
             lm_st_writer_meta(w, "valid_ndcg10", num, err, errsz) ||
             lm_vocab_write(w, r->d->item_ids, r->d->n_items, err, errsz) ||
             lm_st_writer_save(w, path, err, errsz);
    free(actions);
    lm_st_writer_free(w);
    return rc ? -1 : 0;
}

/* Options that must match for --resume to continue the same run. */
static void fingerprint(const run *r, char *out, size_t n)
{
    const tr_opts *o = r->o;
    snprintf(out, n, "d%d h%d l%d f%d n%d items%d acts%d drop%g b%d lr%g wd%g clip%g warm%d crop%g k%d g%d hn%d x%d "
             "rw%g t%s kd%g T%g dec%g/%d seed%llu", o->d_model, o->n_heads, o->n_layers, o->d_ffn, o->max_hist,
             r->cfg.n_items, r->cfg.n_actions, o->dropout, o->batch, o->lr, o->weight_decay, o->clip,
             o->warmup, o->crop, o->topk, o->group_size, o->hard_neg, o->extra_groups, o->rank_weight,
             o->teacher ? o->teacher : "-", o->kd_weight, o->temperature, o->lr_decay, o->decay_patience,
             (unsigned long long)o->seed);
}

static int write_ckpt(run *r, char *err, size_t errsz)
{
    lm_st_writer *w = lm_st_writer_new();
    if (!w)
        return cm_errf(err, errsz, "out of memory");
    int64_t n = (int64_t)tr_model_size(r->m);
    char fp[512], v[4][64];
    fingerprint(r, fp, sizeof fp);
    snprintf(v[0], sizeof v[0], "%d", r->epoch);
    snprintf(v[1], sizeof v[1], "%lld", r->step);
    snprintf(v[2], sizeof v[2], "%.17g", r->best);
    snprintf(v[3], sizeof v[3], "%d %d %.9g %d", r->best_epoch, r->bad_evals, r->lr_scale, r->since_decay);
    int rc = tr_model_write(r->m, w, 1, err, errsz) ||
             lm_st_writer_add(w, "adam.m", LM_DT_F32, 1, &n, r->adam_m, err, errsz) ||
             lm_st_writer_add(w, "adam.v", LM_DT_F32, 1, &n, r->adam_v, err, errsz) ||
             lm_st_writer_meta(w, "ckpt_run", fp, err, errsz) ||
             lm_st_writer_meta(w, "ckpt_epoch", v[0], err, errsz) ||
             lm_st_writer_meta(w, "ckpt_step", v[1], err, errsz) ||
             lm_st_writer_meta(w, "ckpt_best", v[2], err, errsz) ||
             lm_st_writer_meta(w, "ckpt_best_epoch_bad", v[3], err, errsz) ||
             lm_st_writer_save(w, r->ckpt, err, errsz);
    lm_st_writer_free(w);
    return rc ? -1 : 0;
}

static int read_ckpt(run *r, char *err, size_t errsz)
{
    lm_st_file *f;
    if (lm_st_open(&f, r->ckpt, err, errsz))
        return -1;
    char fp[512];
    fingerprint(r, fp, sizeof fp);
    const char *run_fp = lm_st_meta(f, "ckpt_run"), *e = lm_st_meta(f, "ckpt_epoch"),
               *st = lm_st_meta(f, "ckpt_step"), *b = lm_st_meta(f, "ckpt_best"),
               *be = lm_st_meta(f, "ckpt_best_epoch_bad");
    int64_t n = (int64_t)tr_model_size(r->m);
    const lm_st_tensor *am, *av;
    int rc = -1;
    if (!run_fp || !e || !st || !b || !be) {
        cm_errf(err, errsz, "%s: not a rankd training checkpoint", r->ckpt);
    } else if (strcmp(run_fp, fp) != 0) {
        cm_errf(err, errsz, "%s: written by a run with other options (%s); this run has %s", r->ckpt,
                run_fp, fp);
    } else if (lm_st_expect(f, "adam.m", LM_DT_F32, 1, &n, &am, err, errsz) == 0 &&
               lm_st_expect(f, "adam.v", LM_DT_F32, 1, &n, &av, err, errsz) == 0 &&
               tr_model_read(r->m, f, err, errsz) == 0) {
        memcpy(r->adam_m, am->data, am->nbytes);
        memcpy(r->adam_v, av->data, av->nbytes);
        r->epoch = atoi(e);
        r->step = atoll(st);
        r->best = strtod(b, NULL);
        rc = sscanf(be, "%d %d %f %d", &r->best_epoch, &r->bad_evals, &r->lr_scale, &r->since_decay) == 4 ? 0
             : cm_errf(err, errsz, "%s: ckpt_best_epoch_bad is \"%s\"", r->ckpt, be);
    }
    lm_st_close(f);
    return rc;
}

/* ---- validation ----------------------------------------------------------------------------- */

static int validate(run *r, lm_eval_result *res, char *err, size_t errsz)
{
    if (write_model(r, r->evalpath, 0.0, err, errsz))
        return -1;
    lm_model *m;
    if (lm_model_load(&m, r->evalpath, err, errsz))
        return -1;
    lm_eval_opts eo = {.split = LM_SPLIT_VALID, .retrieve_n = 100, .max_users = r->o->eval_users,
                       .threads = r->o->threads, .isa = LM_ISA_COUNT};
    int rc = lm_eval_model(m, r->d, &eo, res, err, errsz);
    lm_model_free(m);
    return rc;
}

/* ---- the loop ------------------------------------------------------------------------------- */

static void say(const run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const run *r, const char *fmt, ...)
{
    if (!r->o->log)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(r->o->log, fmt, ap);
    va_end(ap);
    fflush(r->o->log);
}

static void fmt_time(double s, char *out, size_t n)
{
    if (s < 90)
        snprintf(out, n, "%.0f s", s);
    else if (s < 5400)
        snprintf(out, n, "%.1f min", s / 60);
    else
        snprintf(out, n, "%.1f h", s / 3600);
}

typedef struct epoch_stats {
    double loss_r, loss_k, tokens, hits, groups, offered, seconds, step_seconds;
} epoch_stats;

static int train_epoch(run *r, epoch_stats *es, char *err, size_t errsz)
{
    const tr_opts *o = r->o;
    memset(es, 0, sizeof *es);
    epoch_order(r, r->epoch);
    double t0 = now_s(), last = t0;
    int steps = (r->n_users + o->batch - 1) / o->batch;
    for (int k = 0; k < steps; k++) {
        int u0 = k * o->batch, u1 = u0 + o->batch < r->n_users ? u0 + o->batch : r->n_users;
        make_batch(r, u0, u1);
        tr_step_opts so = {.train = 1, .dropout = o->dropout, .seed = mix(o->seed ^ (uint64_t)r->step),
                           .topk_groups = o->topk,
                           .hard_neg = o->topk ? 0 : o->hard_neg,
                           .rand_neg = o->topk ? 0 : o->group_size - 1 - o->hard_neg,
                           .rank_weight = o->rank_weight, .teacher = r->teacher,
                           .kd_weight = o->kd_weight, .temperature = o->temperature};
        tr_step_stats st;
        int offered = r->b.G; /* top-k groups keep those whose positive was retrieved */
        double ts = now_s();
        if (tr_model_step(r->m, &r->b, &so, &st))
            return cm_errf(err, errsz, "training step %lld: the batch was refused (a bug)", r->step);
        adamw(r);
        es->step_seconds += now_s() - ts;
        r->step++;
        es->loss_r += st.loss_retrieval * st.tokens;
        es->tokens += st.tokens;
        es->loss_k += st.loss_rank * st.groups;
        es->offered += offered;
        es->groups += st.groups;
        es->hits += st.rank_hits;
        double now = now_s();
        if (o->tty && o->log && (now - last > 0.5 || k == steps - 1)) {
            double rate = (k + 1) / (now - t0);
            char eta[32];
            fmt_time((steps - k - 1) / rate, eta, sizeof eta);
            say(r, "\r  epoch %d step %d/%d  loss %.3f  rank %.3f  %.1f steps/s  epoch ETA %s   ",
                r->epoch + 1, k + 1, steps, es->loss_r / (es->tokens ? es->tokens : 1),
                es->loss_k / (es->groups ? es->groups : 1), rate, eta);
            last = now;
        }
    }
    if (o->tty && o->log)
        say(r, "\r%100s\r", "");
    es->seconds = now_s() - t0;
    return 0;
}

static int setup(run *r, const lm_dataset *d, const tr_opts *o, char *err, size_t errsz)
{
    r->d = d;
    r->o = o;
    r->best = -1.0;
    r->lr_scale = 1.0f;
    r->cfg = (lm_config){.d_model = o->d_model, .n_heads = o->n_heads, .n_layers = o->n_layers,
                         .d_ffn = o->d_ffn, .max_hist = o->max_hist, .n_items = d->n_items,
                         .n_actions = d->n_actions};
    snprintf(r->ckpt, sizeof r->ckpt, "%s", o->ckpt ? o->ckpt : "");
    if (!o->ckpt)
        snprintf(r->ckpt, sizeof r->ckpt, "%s.ckpt", o->out);
    snprintf(r->evalpath, sizeof r->evalpath, "%s.eval", o->out);
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (lm_pool_new(&r->pool, threads < 1 ? 1 : threads, err, errsz))
        return -1;
    tr_limits lim = {.max_seqs = o->batch, .max_tokens = o->batch * o->max_hist,
                     .max_groups = o->batch * (1 + o->extra_groups), .group_size = o->group_size};
    if (tr_model_new(&r->m, &r->cfg, &lim, r->pool, err, errsz) || alloc_batch(r, err, errsz))
        return -1;
    tr_model_init(r->m, o->seed, o->emb_std);
    if (o->teacher) {
        lm_st_file *f;
        lm_config tc;
        lm_quant q;
        if (lm_st_open(&f, o->teacher, err, errsz))
            return -1;
        int rc = lm_config_read(f, &tc, &q, err, errsz);
        lm_st_close(f);
        if (rc)
            return -1;
        if (tc.n_items != d->n_items || tc.n_actions != d->n_actions)
            return cm_errf(err, errsz, "teacher %s has %d items and %d actions, the data %d and %d: "
                           "distil on the teacher's data", o->teacher, tc.n_items - 1, tc.n_actions,
                           d->n_items - 1, d->n_actions);
        if (tr_model_new(&r->teacher, &tc, &lim, r->pool, err, errsz) ||
            tr_model_load(r->teacher, o->teacher, err, errsz))
            return -1;
    }
    if (o->resume) {
        if (read_ckpt(r, err, errsz))
            return -1;
        say(r, "resumed from %s: %d epochs done, best validation NDCG@10 %.4f (epoch %d)\n", r->ckpt,
            r->epoch, r->best, r->best_epoch);
    }
    return 0;
}

static void intro(const run *r)
{
    const tr_opts *o = r->o;
    epoch_order((run *)r, 0);
    lm_config c = r->cfg;
    long long macs = lm_model_macs_per_candidate(&c, c.max_hist);
    say(r, "%s: %d users (%d with training sequences), %d items, %d action types, %lld events\n",
        o->teacher ? "distill" : "train", r->d->n_users, r->n_users, r->d->n_items - 1, r->d->n_actions,
        (long long)r->d->n_events);
    say(r, "model: d_model %d, %d heads, %d layers, d_ffn %d, max_hist %d; %zu parameters; "
        "%.2f MFLOP per candidate\n", c.d_model, c.n_heads, c.n_layers, c.d_ffn, c.max_hist,
        tr_model_size(r->m), 2.0 * (double)macs / 1e6);
    char groups[96];
    if (o->topk)
        snprintf(groups, sizeof groups, "the top %d retrieved", o->group_size);
    else
        snprintf(groups, sizeof groups, "%d (%d hard negatives)", o->group_size, o->hard_neg);
    say(r, "batch %d, %d steps per epoch, lr %g, dropout %g, ranking groups of %s%s%s\n", o->batch,
        (r->n_users + o->batch - 1) / o->batch, o->lr, o->dropout, groups, o->teacher ? ", teacher " : "",
        o->teacher ? o->teacher : "");
}

int tr_train(const lm_dataset *d, const tr_opts *o, tr_report *rep, char *err, size_t errsz)
{
    memset(rep, 0, sizeof *rep);
    if (opts_check(d, o, err, errsz))
        return -1;
    run r;
    memset(&r, 0, sizeof r);
    int rc = setup(&r, d, o, err, errsz);
    if (rc == 0)
        intro(&r);
    double t0 = now_s();
    int first = r.epoch; /* a resumed run starts past 0 */
    while (rc == 0 && r.epoch < o->max_epochs && r.bad_evals < o->patience) {
        epoch_stats es;
        if ((rc = train_epoch(&r, &es, err, errsz)))
            break;
        r.epoch++;
        rep->step_seconds += es.step_seconds;
        char line[512];
        int n = snprintf(line, sizeof line, "epoch %d/%d: loss retrieval %.4f ranking %.4f "
                         "(%.0f groups, %.1f%% of offered; positive first %.1f%%) | %.1f s, %.0f tokens/s",
                         r.epoch, o->max_epochs, es.loss_r / (es.tokens ? es.tokens : 1),
                         es.loss_k / (es.groups ? es.groups : 1), es.groups,
                         100.0 * es.groups / (es.offered ? es.offered : 1),
                         100.0 * es.hits / (es.groups ? es.groups : 1), es.seconds, es.tokens / es.seconds);
        if (r.epoch % o->eval_every == 0 || r.epoch == o->max_epochs) {
            lm_eval_result res;
            double te = now_s();
            if ((rc = validate(&r, &res, err, errsz)))
                break;
            rep->eval_seconds += now_s() - te;
            double ndcg = res.two_stage.ndcg[1];
            int better = ndcg > r.best, decayed = 0;
            if (better) {
                r.best = ndcg;
                r.best_epoch = r.epoch;
                r.bad_evals = 0;
                r.since_decay = 0;
                if ((rc = write_model(&r, o->out, ndcg, err, errsz)))
                    break;
            } else {
                r.bad_evals++;
                if (++r.since_decay >= o->decay_patience && o->lr_decay < 1.0f) {
                    r.lr_scale *= o->lr_decay;
                    r.since_decay = 0;
                    decayed = 1;
                }
            }
            n += snprintf(line + n, sizeof line - (size_t)n, " | valid NDCG@10 two-stage %.4f retrieval "
                          "%.4f%s (%.1f s)", ndcg, res.retrieval.ndcg[1], better ? " *best*" : "",
                          now_s() - te);
            if (decayed)
                n += snprintf(line + n, sizeof line - (size_t)n, " | lr -> %g", o->lr * r.lr_scale);
        }
        double el = now_s() - t0;
        char eta[32];
        fmt_time(el / (r.epoch - first) * (o->max_epochs - r.epoch), eta, sizeof eta);
        say(&r, "%s | at most %s more\n", line, eta);
        if ((rc = write_ckpt(&r, err, errsz)))
            break;
    }
    remove(r.evalpath);
    if (rc == 0) {
        rep->epochs = r.epoch;
        rep->best_epoch = r.best_epoch;
        rep->best_ndcg10 = r.best;
        rep->steps = r.step;
        rep->seconds = now_s() - t0;
        rep->seconds_per_epoch = rep->seconds / (r.epoch > first ? r.epoch - first : 1);
        say(&r, "%s after %d epochs: best validation NDCG@10 %.4f at epoch %d -> %s\n",
            r.bad_evals >= o->patience ? "early stop" : "done", r.epoch, r.best, r.best_epoch, o->out);
    }
    run_free(&r);
    return rc;
}
