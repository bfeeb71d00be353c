/* service/models.c — see models.h.
 *
 * One mutex guards the current versions, the retired list and the reload
 * request; it is held only to swap pointers and count references, never
 * while a file is read or a model scored, so the batcher and the consumer
 * never wait behind a reload. */
#include "service/models.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/err.h"
#include "ranker/batcher.h"
#include "service/log.h"

#define TICK_MS 100 /* how often retired versions are looked at */
#define SELF_TEST_ITEMS 4

/* What says that a file changed: a new file renamed over it (inode), or
 * one written in place (size, mtime). */
typedef struct file_id {
    int ok; /* 0: stat failed */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_id;

typedef struct variant {
    char path[1024];
    file_id loaded;  /* the file of the current version */
    file_id pending; /* a change seen at the last poll, loaded once it holds still */
    file_id refused; /* the last artifact refused: not tried again until it changes */
} var_state;

struct svc_models {
    const svc_config *cfg;
    rk_scorer_opts so;
    svc_metrics *mx;
    int n, b_percent, max_hist, check_ms;
    var_state var[SVC_MAX_VARIANTS];
    pthread_mutex_t mu; /* cur, retired, requested, stop */
    pthread_cond_t cv;
    svc_mver *cur[SVC_MAX_VARIANTS];
    svc_mver *retired;
    int requested, stop, started;
    pthread_t tid;
};

static const char variant_name[SVC_MAX_VARIANTS] = {'a', 'b'};

/* ---- one version -------------------------------------------------------------------------- */

static void mver_free(svc_mver *v)
{
    if (!v)
        return;
    rk_scorer_free(v->scorer);
    svc_model_free(&v->model);
    free(v->un_rows);
    free(v);
}

static void file_stat(const char *path, file_id *id)
{
    struct stat st;
    memset(id, 0, sizeof *id);
    if (stat(path, &st) != 0)
        return;
    *id = (file_id){.ok = 1, .dev = st.st_dev, .ino = st.st_ino, .size = st.st_size, .mtime = st.st_mtim};
}

static int file_same(const file_id *a, const file_id *b)
{
    return a->ok == b->ok && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* What the service's code needs of any model it serves beside or after
 * `ref` (the variant's current version, or variant a at start): item ids
 * mean the same thing (a vocabulary in both, or rows in both and then the
 * same catalog), and the history fits what slots and Redis keep. */
static int check_compatible(const svc_models *ms, const svc_model *m, const svc_model *ref, char *err, size_t errsz)
{
    const lm_config *c = &m->m->cfg;
    if (c->max_hist > ms->max_hist)
        return cm_errf(err, errsz,
                       "%s: max_hist %d is more than the %d this service keeps per user (set at start); "
                       "restart rankd to serve it",
                       m->path, c->max_hist, ms->max_hist);
    if (!ref)
        return 0;
    if (!m->m->item_ids != !ref->m->item_ids)
        return cm_errf(err, errsz, "%s: %s item vocabulary but %s (%s) %s: item ids would change meaning",
                       m->path, m->m->item_ids ? "has an" : "has no", ref->tag, ref->path,
                       ref->m->item_ids ? "has one" : "does not");
    if (!m->m->item_ids && c->n_items != ref->m->cfg.n_items)
        return cm_errf(err, errsz, "%s: %d item rows, but %s has %d and neither has a vocabulary: item ids are rows",
                       m->path, c->n_items - 1, ref->tag, ref->m->cfg.n_items - 1);
    return 0;
}

static int finite_scores(const rk_request *r, const char *what, const char *path, char *err, size_t errsz)
{
    for (int i = 0; i < r->n_out; i++)
        if (!isfinite(r->out_scores[i]))
            return cm_errf(err, errsz, "%s: self-test: %s: score %d is %g", path, what, i, (double)r->out_scores[i]);
    return 0;
}

/* A few requests the way the service sends them, one ranking its own
 * candidates and one retrieving from the catalog: the version must answer
 * both in full, with finite scores, before any user sees it. */
static int self_test(const svc_models *ms, svc_mver *v, char *err, size_t errsz)
{
    const lm_config *c = &v->model.m->cfg;
    const char *path = v->model.path;
    int32_t hist[3], acts[3], cands[SELF_TEST_ITEMS];
    int nh = c->max_hist < 3 ? c->max_hist : 3, nc = 0;
    if (c->n_items < 2)
        return cm_errf(err, errsz, "%s: self-test: the model has no items", path);
    for (int i = 0; i < nh; i++) {
        hist[i] = 1 + i % (c->n_items - 1);
        acts[i] = i % c->n_actions;
    }
    for (; nc < SELF_TEST_ITEMS && nc < c->n_items - 1; nc++)
        cands[nc] = c->n_items - 1 - nc;
    int k = ms->so.max_k < ms->so.retrieve_n ? ms->so.max_k : ms->so.retrieve_n;
    int32_t *items = malloc(sizeof *items * (size_t)(k > nc ? k : nc));
    float *scores = malloc(sizeof *scores * (size_t)(k > nc ? k : nc));
    if (!items || !scores) {
        free(items);
        free(scores);
        return cm_errf(err, errsz, "%s: self-test: out of memory", path);
    }
    char why[CM_ERRSZ];
    rk_request given = {.hist_items = hist, .hist_actions = acts, .n_hist = nh, .cands = cands, .n_cands = nc,
                        .k = nc < ms->so.max_k ? nc : ms->so.max_k, .out_items = items, .out_scores = scores};
    int rc = 0;
    if (rk_scorer_rank(v->scorer, &given, 1, why, sizeof why))
        rc = cm_errf(err, errsz, "%s: self-test: ranking %d candidates: %s", path, nc, why);
    else if (given.n_out != given.k)
        rc = cm_errf(err, errsz, "%s: self-test: ranking %d candidates answered %d of %d", path, nc, given.n_out,
                     given.k);
    else
        rc = finite_scores(&given, "ranking given candidates", path, err, errsz);
    rk_request retr = {.hist_items = hist, .hist_actions = acts, .n_hist = nh, .k = k, .out_items = items,
                       .out_scores = scores};
    int want = k < c->n_items - 1 ? k : c->n_items - 1;
    if (rc == 0 && rk_scorer_rank(v->scorer, &retr, 1, why, sizeof why))
        rc = cm_errf(err, errsz, "%s: self-test: retrieval: %s", path, why);
    else if (rc == 0 && retr.n_out != want)
        rc = cm_errf(err, errsz, "%s: self-test: retrieval answered %d items of %d", path, retr.n_out, want);
    else if (rc == 0)
        rc = finite_scores(&retr, "retrieval", path, err, errsz);
    free(items);
    free(scores);
    return rc;
}

/* A new version of variant vi from its path: loaded, checked against ref,
 * given a scorer and self-tested. */
static int load_version(svc_models *ms, int vi, const svc_model *ref, svc_mver **out, char *err, size_t errsz)
{
    *out = NULL;
    svc_mver *v = calloc(1, sizeof *v);
    if (!v)
        return cm_errf(err, errsz, "out of memory");
    v->variant = vi;
    if (svc_model_load(&v->model, ms->var[vi].path, err, errsz)) {
        free(v);
        return -1;
    }
    if (check_compatible(ms, &v->model, ref, err, errsz) ||
        rk_scorer_new(&v->scorer, v->model.m, &ms->so, err, errsz) || self_test(ms, v, err, errsz)) {
        mver_free(v);
        return -1;
    }
    atomic_init(&v->refs, 1);
    *out = v;
    return 0;
}

static void log_scorer(const svc_models *ms, const svc_mver *v)
{
    const char *why = rk_scorer_fallback_reason(v->scorer);
    if (why) {
        svc_warn("model.device auto: scoring %s on the CPU: %s", v->model.tag, why);
        atomic_fetch_add(&ms->mx->scorer_fallbacks, 1);
    }
    atomic_store(&ms->mx->scorer_gpu, rk_scorer_gpu(v->scorer));
    svc_info("model %c: %s (%s, %d items), scorer %s", variant_name[v->variant], v->model.tag, v->model.path,
             v->model.m->cfg.n_items - 1, rk_scorer_device(v->scorer));
}

/* A scorer that moved to the CPU at run time (rk_scorer_rank's fallback):
 * logged and counted as the start-up fallback is. */
static void scorer_fell_back(void *ctx, const char *why)
{
    svc_models *ms = ctx;
    svc_warn("model.device: %s", why);
    atomic_fetch_add(&ms->mx->scorer_fallbacks, 1);
    atomic_store(&ms->mx->scorer_gpu, 0);
}

/* ---- start and stop ---------------------------------------------------------------------------- */

int svc_models_new(svc_models **out, const svc_config *cfg, const rk_scorer_opts *so, svc_metrics *metrics,
                   char *err, size_t errsz)
{
    *out = NULL;
    svc_models *ms = calloc(1, sizeof *ms);
    if (!ms)
        return cm_errf(err, errsz, "out of memory");
    ms->cfg = cfg;
    ms->so = *so;
    ms->so.on_fallback = scorer_fell_back;
    ms->so.fallback_ctx = ms;
    ms->mx = metrics;
    ms->check_ms = cfg->model.reload_check_ms;
    ms->n = *cfg->model.b.path ? 2 : 1;
    ms->b_percent = cfg->model.b.percent;
    snprintf(ms->var[0].path, sizeof ms->var[0].path, "%s", cfg->model.path);
    snprintf(ms->var[1].path, sizeof ms->var[1].path, "%s", cfg->model.b.path);
    pthread_mutex_init(&ms->mu, NULL);
    pthread_cond_init(&ms->cv, NULL);
    /* Every variant at start sets how much history the service keeps:
     * the longest of theirs. */
    ms->max_hist = 1 << 30;
    for (int vi = 0; vi < ms->n; vi++) {
        file_stat(ms->var[vi].path, &ms->var[vi].loaded);
        if (load_version(ms, vi, vi ? &ms->cur[0]->model : NULL, &ms->cur[vi], err, errsz)) {
            svc_models_free(ms);
            return -1;
        }
        ms->cur[vi]->gen = 1;
        log_scorer(ms, ms->cur[vi]);
        svc_metrics_model_set(metrics, vi, 1, ms->cur[vi]->model.tag);
    }
    ms->max_hist = 0;
    for (int vi = 0; vi < ms->n; vi++)
        if (ms->cur[vi]->model.m->cfg.max_hist > ms->max_hist)
            ms->max_hist = ms->cur[vi]->model.m->cfg.max_hist;
    if (ms->n == 2)
        svc_info("A/B: model b takes %d%% of users (by user id hash)", ms->b_percent);
    *out = ms;
    return 0;
}

void svc_models_free(svc_models *ms)
{
    if (!ms)
        return;
    if (ms->started) {
        pthread_mutex_lock(&ms->mu);
        ms->stop = 1;
        pthread_cond_signal(&ms->cv);
        pthread_mutex_unlock(&ms->mu);
        pthread_join(ms->tid, NULL);
    }
    while (ms->retired) {
        svc_mver *v = ms->retired;
        ms->retired = v->next_retired;
        if (atomic_load(&v->refs))
            svc_warn("model %s freed with %d rankings still pinned to it", v->model.tag, atomic_load(&v->refs));
        mver_free(v);
    }
    for (int vi = 0; vi < SVC_MAX_VARIANTS; vi++)
        mver_free(ms->cur[vi]);
    pthread_mutex_destroy(&ms->mu);
    pthread_cond_destroy(&ms->cv);
    free(ms);
}

int svc_models_count(const svc_models *ms) { return ms->n; }
int svc_models_max_hist(const svc_models *ms) { return ms->max_hist; }

/* ---- the split ----------------------------------------------------------------------------------- */

/* FNV-1a over the id, then a 64-bit finalizer (murmur3's fmix64): FNV's
 * low bits alone follow the last byte too closely for ids like u1, u2. */
int svc_models_bucket(const char *user)
{
    uint64_t h = 1469598103934665603ull;
    for (const unsigned char *p = (const unsigned char *)user; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (int)(h % 100);
}

int svc_models_variant(const svc_models *ms, const char *user)
{
    return ms->n > 1 && svc_models_bucket(user ? user : "") < ms->b_percent;
}

/* ---- references ------------------------------------------------------------------------------------ */

svc_mver *svc_models_acquire(svc_models *ms, int variant)
{
    pthread_mutex_lock(&ms->mu);
    svc_mver *v = ms->cur[variant < ms->n ? variant : 0];
    atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&ms->mu);
    return v;
}

/* No free here: the last release may come from the batcher thread, which
 * must not spend a scorer's teardown on its latency; the models' thread
 * frees retired versions whose count reached zero. */
void svc_mver_release(svc_mver *v)
{
    if (v)
        atomic_fetch_sub(&v->refs, 1);
}

void svc_models_tag(svc_models *ms, int variant, char *out, size_t cap)
{
    pthread_mutex_lock(&ms->mu);
    snprintf(out, cap, "%s", ms->cur[variant < ms->n ? variant : 0]->model.tag);
    pthread_mutex_unlock(&ms->mu);
}

void svc_models_reload(svc_models *ms)
{
    pthread_mutex_lock(&ms->mu);
    ms->requested = 1;
    pthread_cond_signal(&ms->cv);
    pthread_mutex_unlock(&ms->mu);
}

/* ---- the models' thread ------------------------------------------------------------------------------ */

static void refuse(svc_models *ms, int vi, const file_id *id, const char *why)
{
    char tag[128];
    svc_models_tag(ms, vi, tag, sizeof tag);
    ms->var[vi].refused = *id;
    atomic_fetch_add(&ms->mx->model_reload_failures[vi], 1);
    svc_error("model %c: reload refused, still serving %s: %s", variant_name[vi], tag, why);
}

/* Loads variant vi's file again, and swaps it in when it is good. The
 * current version is read without the lock: only this thread changes it. */
static void reload_variant(svc_models *ms, int vi)
{
    var_state *var = &ms->var[vi];
    svc_mver *old = ms->cur[vi], *v;
    file_id before, after;
    char err[CM_ERRSZ];
    file_stat(var->path, &before);
    if (!before.ok) {
        snprintf(err, sizeof err, "%s: %s", var->path, strerror(errno));
        return refuse(ms, vi, &before, err);
    }
    if (load_version(ms, vi, &old->model, &v, err, sizeof err))
        return refuse(ms, vi, &before, err);
    file_stat(var->path, &after);
    if (!file_same(&before, &after)) { /* written while we read it: try again once it holds still */
        var->pending = after;
        mver_free(v);
        return;
    }
    var->loaded = after;
    if (!strcmp(v->model.tag, old->model.tag)) { /* same bytes (touched, or copied again) */
        svc_info("model %c: %s unchanged, nothing to reload", variant_name[vi], old->model.tag);
        mver_free(v);
        return;
    }
    v->gen = old->gen + 1;
    svc_metrics_model_set(ms->mx, vi, v->gen, v->model.tag);
    pthread_mutex_lock(&ms->mu);
    ms->cur[vi] = v;
    old->next_retired = ms->retired;
    ms->retired = old;
    pthread_mutex_unlock(&ms->mu);
    atomic_fetch_add(&ms->mx->models_retiring, 1);
    svc_mver_release(old); /* the reference it held as the current version */
    atomic_fetch_add(&ms->mx->model_reloads[vi], 1);
    svc_info("model %c: reloaded %s -> %s", variant_name[vi], old->model.tag, v->model.tag);
    log_scorer(ms, v);
}

/* Did variant vi's file change, and then hold still for one poll? A file
 * still being written must not be loaded half-way (renaming a finished
 * file over it is the safe way to deploy, and needs no wait). */
static int changed(svc_models *ms, int vi)
{
    var_state *var = &ms->var[vi];
    file_id now;
    file_stat(var->path, &now);
    if (file_same(&now, &var->loaded) || file_same(&now, &var->refused)) {
        var->pending.ok = -1;
        return 0;
    }
    if (file_same(&now, &var->pending))
        return 1;
    var->pending = now;
    return 0;
}

/* Takes the retired versions no ranking holds any more off the list;
 * called locked. A retired version cannot be acquired again, so a count
 * of zero stays zero. */
static svc_mver *take_unused(svc_models *ms)
{
    svc_mver *done = NULL, **p = &ms->retired;
    while (*p) {
        svc_mver *v = *p;
        if (atomic_load(&v->refs) == 0) {
            *p = v->next_retired;
            v->next_retired = done;
            done = v;
        } else {
            p = &v->next_retired;
        }
    }
    return done;
}

static void *loop(void *arg)
{
    svc_models *ms = arg;
    int64_t last_poll = rk_now_ns();
    pthread_mutex_lock(&ms->mu);
    while (!ms->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long ns = ts.tv_nsec + TICK_MS * 1000000L;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        if (!ms->requested)
            pthread_cond_timedwait(&ms->cv, &ms->mu, &ts);
        if (ms->stop)
            break;
        int forced = ms->requested;
        ms->requested = 0;
        svc_mver *done = take_unused(ms);
        pthread_mutex_unlock(&ms->mu);
        while (done) {
            svc_mver *v = done;
            done = v->next_retired;
            svc_info("model %c: %s retired, no ranking uses it any more", variant_name[v->variant], v->model.tag);
            mver_free(v);
            atomic_fetch_sub(&ms->mx->models_retiring, 1);
        }
        int64_t now = rk_now_ns();
        int poll = ms->check_ms > 0 && now - last_poll >= (int64_t)ms->check_ms * 1000000;
        if (poll)
            last_poll = now;
        for (int vi = 0; vi < ms->n; vi++)
            if (forced || (poll && changed(ms, vi)))
                reload_variant(ms, vi);
        pthread_mutex_lock(&ms->mu);
    }
    pthread_mutex_unlock(&ms->mu);
    return NULL;
}

int svc_models_start(svc_models *ms, char *err, size_t errsz)
{
    for (int vi = 0; vi < ms->n; vi++)
        ms->var[vi].pending.ok = -1;
    if (pthread_create(&ms->tid, NULL, loop, ms) != 0)
        return cm_errf(err, errsz, "cannot start the model reload thread");
    ms->started = 1;
    return 0;
}
