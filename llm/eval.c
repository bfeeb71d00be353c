/* llm/eval.c — the leave-one-out protocol of llm/eval.h: retrieval,
 * two-stage and popularity rankings of each evaluable user's target.
 *
 * Users are taken in dataset order, 64 at a time. For each batch the scorer
 * runs twice: once with no candidates, for the user vectors that the
 * retriever ranks the catalog with, and once with the retrieved top N as
 * candidates, for the re-rank by the ranking logit (the head's score plus
 * the retrieval logit, llm/train_model.h). Scorer, retriever and every
 * buffer are allocated once, before the first batch.
 *
 * Ties. The retrieval ranking is the retriever's own list, whose ties go to
 * the lower item row (llm/retrieval.h): float logits of a trained model tie
 * so rarely that re-deriving them pessimistically would cost a second pass
 * over the catalog for nothing. The rankings computed here, the two-stage
 * re-rank and popularity, count every item scored equal to the target as
 * above it. */
#include "llm/eval.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "llm/forward.h"
#include "llm/retrieval.h"

#define EVAL_BATCH 64       /* users per scorer / retriever call */
#define EVAL_DEFAULT_N 100  /* retrieve_n when the options leave it 0 */
#define EVAL_TOP 20         /* the deepest cutoff: lm_eval_ks[LM_EVAL_NK - 1] */
#define EVAL_PROGRESS_S 2.0 /* seconds between progress lines */

const int lm_eval_ks[LM_EVAL_NK] = {5, 10, EVAL_TOP};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- metrics ------------------------------------------------------------------ */

/* Any rank outside 1..K is a miss at K, so callers may pass exact ranks
 * past 20 as well as 0. */
void lm_metrics_add(lm_metrics *m, int rank)
{
    for (int k = 0; k < LM_EVAL_NK; k++) {
        if (rank >= 1 && rank <= lm_eval_ks[k]) {
            m->hr[k] += 1.0;
            m->ndcg[k] += 1.0 / log2((double)rank + 1.0);
        }
    }
    m->n_users++;
}

void lm_metrics_finish(lm_metrics *m)
{
    if (m->n_users <= 0)
        return;
    for (int k = 0; k < LM_EVAL_NK; k++) {
        m->hr[k] /= m->n_users;
        m->ndcg[k] /= m->n_users;
    }
}

/* ---- users -------------------------------------------------------------------- */

/* The users evaluated, in order: the evaluable ones, at most max_users of
 * them when max_users > 0. Returns how many; *max_before gets the longest
 * history before a target (the exclusion lists' bound). */
static int count_users(const lm_dataset *d, lm_split split, int max_users, int *max_before)
{
    int n = 0;
    *max_before = 0;
    for (int u = 0; u < d->n_users && (max_users <= 0 || n < max_users); u++) {
        if (!lm_user_evaluable(d, u))
            continue;
        int t = lm_user_target(d, u, split);
        *max_before = t > *max_before ? t : *max_before;
        n++;
    }
    return n;
}

/* The user after `u` that is evaluated (or d->n_users). */
static int next_user(const lm_dataset *d, int u)
{
    for (u++; u < d->n_users && !lm_user_evaluable(d, u); u++)
        ;
    return u;
}

/* Writes the exclusion list of the target at event t of user u to out:
 * the item rows of every earlier event, except the target's own row (a
 * re-consumed item can still be hit) and row 0 (never ranked anyway). May
 * repeat rows. Returns the count, at most t. */
static int exclusions(const lm_dataset *d, int u, int t, int32_t *out)
{
    const int32_t *ev = d->items + d->user_off[u];
    const int32_t target = ev[t];
    int n = 0;
    for (int i = 0; i < t; i++)
        if (ev[i] != target && ev[i] != 0)
            out[n++] = ev[i];
    return n;
}

/* ---- popularity ----------------------------------------------------------------- */

typedef struct pop_table {
    int n_items;
    int32_t *count;  /* [n_items] training events per item row */
    int32_t *sorted; /* [n_items - 1] the counts of rows 1.. ascending */
    uint32_t *seen;  /* [n_items] the stamp of the last user that excluded the row */
    uint32_t stamp;
} pop_table;

static void popularity_free(pop_table *p)
{
    free(p->count);
    free(p->sorted);
    free(p->seen);
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Counts every user's training events (not only the evaluated users'). */
static int popularity_init(pop_table *p, const lm_dataset *d)
{
    memset(p, 0, sizeof *p);
    p->n_items = d->n_items;
    size_t n = d->n_items > 0 ? (size_t)d->n_items : 1;
    p->count = calloc(n, sizeof *p->count);
    p->sorted = malloc(n * sizeof *p->sorted);
    p->seen = calloc(n, sizeof *p->seen);
    if (!p->count || !p->sorted || !p->seen) {
        popularity_free(p);
        return -1;
    }
    for (int u = 0; u < d->n_users; u++) {
        const int32_t *ev = d->items + d->user_off[u];
        for (int i = 0, n_train = lm_user_train_len(d, u); i < n_train; i++)
            if (ev[i] > 0 && ev[i] < p->n_items)
                p->count[ev[i]]++;
    }
    if (p->n_items > 1) {
        memcpy(p->sorted, p->count + 1, sizeof(int32_t) * (size_t)(p->n_items - 1));
        qsort(p->sorted, (size_t)(p->n_items - 1), sizeof(int32_t), cmp_i32);
    }
    return 0;
}

/* The target's rank among rows 1..n_items-1 that user u has not consumed
 * before it: 1 + the non-excluded other rows counted at least as often.
 * Exact at any depth; 0 for an unknown target (row 0). */
static int popularity_rank(pop_table *p, const lm_dataset *d, int u, int t)
{
    const int32_t *ev = d->items + d->user_off[u];
    const int32_t target = ev[t];
    if (target <= 0 || target >= p->n_items)
        return 0;
    const int32_t c = p->count[target];
    /* Rows with count >= c, the target included: those past the first
     * sorted entry >= c. */
    int lo = 0, hi = p->n_items - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (p->sorted[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    int above = p->n_items - 1 - lo;
    /* Less the distinct excluded rows among them; the target's own row is
     * never excluded and is the one that remains. */
    p->stamp++;
    for (int i = 0; i < t; i++) {
        int32_t it = ev[i];
        if (it <= 0 || it >= p->n_items || it == target || p->seen[it] == p->stamp)
            continue;
        p->seen[it] = p->stamp;
        if (p->count[it] >= c)
            above--;
    }
    return above;
}

static int popularity_run(const lm_dataset *d, lm_split split, int max_users, lm_metrics *out)
{
    pop_table p;
    memset(out, 0, sizeof *out);
    if (popularity_init(&p, d))
        return -1;
    for (int u = next_user(d, -1), n = 0; u < d->n_users && (max_users <= 0 || n < max_users);
         u = next_user(d, u), n++)
        lm_metrics_add(out, popularity_rank(&p, d, u, lm_user_target(d, u, split)));
    lm_metrics_finish(out);
    popularity_free(&p);
    return 0;
}

/* The header gives this no status: on out of memory it reports no users
 * (n_users 0), which no caller can take for a result. */
void lm_eval_popularity(const lm_dataset *d, lm_split split, int max_users, lm_metrics *out)
{
    popularity_run(d, split, max_users, out);
}

/* ---- the model -------------------------------------------------------------------- */

/* Everything one evaluation allocates, sized for a batch of `cap` users. */
typedef struct evaluator {
    const lm_model *m;
    const lm_dataset *d;
    lm_split split;
    int cap, n_ret, max_excl;
    lm_scorer *scorer;
    lm_retriever *retriever;
    lm_request *reqs;     /* [cap] */
    lm_retrieval *rets;   /* [cap] */
    int *users;           /* [cap] dataset user of each slot */
    int32_t *actions;     /* [cap, max_hist] the history's actions, widened */
    int32_t *excl;        /* [cap, max_excl] */
    float *user_vec;      /* [cap, d_model] */
    int32_t *ret_items;   /* [cap, n_ret] */
    float *ret_scores;    /* [cap, n_ret] */
    float *scores;        /* [cap, n_ret] ranking-head scores of the retrieved items */
} evaluator;

static void evaluator_free(evaluator *e)
{
    lm_retriever_free(e->retriever);
    lm_scorer_free(e->scorer);
    free(e->reqs);
    free(e->rets);
    free(e->users);
    free(e->actions);
    free(e->excl);
    free(e->user_vec);
    free(e->ret_items);
    free(e->ret_scores);
    free(e->scores);
}

static int evaluator_new(evaluator *e, const lm_model *m, const lm_dataset *d, const lm_eval_opts *o,
                         int n_ret, int n_users, int max_excl, char *err, size_t errsz)
{
    memset(e, 0, sizeof *e);
    e->m = m;
    e->d = d;
    e->split = o->split;
    e->cap = n_users < EVAL_BATCH ? n_users : EVAL_BATCH;
    e->n_ret = n_ret;
    e->max_excl = max_excl;
    size_t B = (size_t)e->cap, H = (size_t)m->cfg.max_hist, D = (size_t)m->cfg.d_model;
    lm_scorer_opts so = {.max_batch = e->cap, .max_cands = n_ret, .threads = o->threads, .isa = o->isa};
    if (lm_scorer_new(&e->scorer, m, &so, err, errsz))
        return -1;
    if (lm_retriever_new(&e->retriever, m, lm_scorer_pool(e->scorer), o->isa, e->cap, n_ret, max_excl,
                         err, errsz)) {
        evaluator_free(e);
        return -1;
    }
    e->reqs = calloc(B, sizeof *e->reqs);
    e->rets = calloc(B, sizeof *e->rets);
    e->users = calloc(B, sizeof *e->users);
    e->actions = malloc(sizeof(int32_t) * B * (H ? H : 1));
    e->excl = malloc(sizeof(int32_t) * B * (size_t)(max_excl ? max_excl : 1));
    e->user_vec = malloc(sizeof(float) * B * D);
    e->ret_items = malloc(sizeof(int32_t) * B * (size_t)n_ret);
    e->ret_scores = malloc(sizeof(float) * B * (size_t)n_ret);
    e->scores = malloc(sizeof(float) * B * (size_t)n_ret);
    if (!e->reqs || !e->rets || !e->users || !e->actions || !e->excl || !e->user_vec || !e->ret_items ||
        !e->ret_scores || !e->scores) {
        evaluator_free(e);
        return cm_errf(err, errsz, "eval: out of memory for a batch of %d users", e->cap);
    }
    return 0;
}

/* Fills slot b's scorer request (history, no candidates yet) and retrieval
 * request for user u. */
static void evaluator_fill(evaluator *e, int b, int u)
{
    const lm_dataset *d = e->d;
    const int max_hist = e->m->cfg.max_hist, t = lm_user_target(d, u, e->split);
    const int h = t < max_hist ? t : max_hist;
    const int64_t first = d->user_off[u] + t - h;
    int32_t *acts = e->actions + (size_t)b * max_hist;
    for (int i = 0; i < h; i++)
        acts[i] = d->actions[first + i];
    float *uv = e->user_vec + (size_t)b * e->m->cfg.d_model;
    e->users[b] = u;
    e->reqs[b] = (lm_request){.hist_items = d->items + first, .hist_actions = acts, .n_hist = h,
                              .user_vec = uv};
    int32_t *ex = e->excl + (size_t)b * e->max_excl;
    e->rets[b] = (lm_retrieval){.user_vec = uv, .exclude = ex, .n_exclude = exclusions(d, u, t, ex),
                                .k = e->n_ret, .items = e->ret_items + (size_t)b * e->n_ret,
                                .scores = e->ret_scores + (size_t)b * e->n_ret};
}

/* 1-based position of the target in slot b's retrieved list, or 0. */
static int retrieval_rank(const evaluator *e, int b, int32_t target)
{
    const lm_retrieval *rt = &e->rets[b];
    for (int j = 0; j < rt->n_out; j++)
        if (rt->items[j] == target)
            return j + 1;
    return 0;
}

/* The target's rank among the retrieved items re-ranked by the ranking
 * logit, pessimistic on ties; `pos` is its 1-based retrieval position. */
static int rerank_rank(const evaluator *e, int b, int pos)
{
    const lm_request *rq = &e->reqs[b];
    const float s = rq->scores[pos - 1];
    if (s != s)
        return 0;
    int rank = 1;
    for (int j = 0; j < rq->n_cands; j++)
        if (j != pos - 1 && !(rq->scores[j] < s))
            rank++;
    return rank;
}

/* Evaluates n users from slot 0 (already filled) into r. */
static int evaluator_batch(evaluator *e, int n, lm_eval_result *r, char *err, size_t errsz)
{
    char why[CM_ERRSZ];
    const char *first = e->d->user_ids ? e->d->user_ids[e->users[0]] : "?";
    if (lm_scorer_run(e->scorer, e->reqs, n, why, sizeof why) ||
        lm_retrieve(e->retriever, e->rets, n, why, sizeof why))
        return cm_errf(err, errsz, "eval: the batch from user %s: %s", first, why);
    for (int b = 0; b < n; b++) {
        e->reqs[b].cands = e->rets[b].items;
        e->reqs[b].n_cands = e->rets[b].n_out;
        e->reqs[b].scores = e->scores + (size_t)b * e->n_ret;
        e->reqs[b].user_vec = NULL;
    }
    if (lm_scorer_run(e->scorer, e->reqs, n, why, sizeof why))
        return cm_errf(err, errsz, "eval: the batch from user %s: %s", first, why);
    for (int b = 0; b < n; b++) /* the ranking logit: the head's score plus the retrieval logit */
        for (int j = 0; j < e->rets[b].n_out; j++)
            e->reqs[b].scores[j] += e->rets[b].scores[j];
    for (int b = 0; b < n; b++) {
        const lm_dataset *d = e->d;
        int u = e->users[b];
        int32_t target = d->items[d->user_off[u] + lm_user_target(d, u, e->split)];
        int pos = target > 0 ? retrieval_rank(e, b, target) : 0;
        lm_metrics_add(&r->retrieval, pos);
        lm_metrics_add(&r->two_stage, pos > 0 ? rerank_rank(e, b, pos) : 0);
    }
    return 0;
}

static void progress_line(int done, int total, double elapsed)
{
    double rate = elapsed > 0.0 ? done / elapsed : 0.0;
    fprintf(stderr, "eval: %d/%d users, %.0f users/s, ETA %.0f s\n", done, total, rate,
            rate > 0.0 ? (total - done) / rate : 0.0);
}

static int check_inputs(const lm_model *m, const lm_dataset *d, const lm_eval_opts *o, char *err,
                        size_t errsz)
{
    if (o->split != LM_SPLIT_TEST && o->split != LM_SPLIT_VALID)
        return cm_errf(err, errsz, "eval: split %d is neither test nor validation", (int)o->split);
    if (o->retrieve_n != 0 && o->retrieve_n < EVAL_TOP)
        return cm_errf(err, errsz, "eval: retrieve_n %d: the two-stage ranking re-ranks at least %d "
                       "candidates (0 for %d)", o->retrieve_n, EVAL_TOP, EVAL_DEFAULT_N);
    if (d->n_actions > m->cfg.n_actions)
        return cm_errf(err, errsz, "eval: the dataset has %d action types but the model takes %d "
                       "(n_actions): evaluate it with a model trained on these actions",
                       d->n_actions, m->cfg.n_actions);
    if (d->n_items > m->cfg.n_items)
        return cm_errf(err, errsz, "eval: the dataset has %d item rows but the model %d (n_items): "
                       "map the dataset onto the model's vocabulary first (lm_dataset_align)",
                       d->n_items, m->cfg.n_items);
    return 0;
}

int lm_eval_model(const lm_model *m, const lm_dataset *d, const lm_eval_opts *o, lm_eval_result *r,
                  char *err, size_t errsz)
{
    memset(r, 0, sizeof *r);
    r->split = o->split;
    if (check_inputs(m, d, o, err, errsz))
        return -1;
    if (popularity_run(d, o->split, o->max_users, &r->popularity))
        return cm_errf(err, errsz, "eval: out of memory for the popularity counts of %d items",
                       d->n_items);
    int max_excl, total = count_users(d, o->split, o->max_users, &max_excl);
    if (total == 0)
        return 0;
    int n_ret = o->retrieve_n ? o->retrieve_n : EVAL_DEFAULT_N;
    evaluator e;
    if (evaluator_new(&e, m, d, o, n_ret, total, max_excl, err, errsz))
        return -1;
    double t0 = now_s(), last = t0;
    int done = 0, rc = 0;
    for (int u = next_user(d, -1); done < total && rc == 0;) {
        int n = 0;
        for (; n < e.cap && done + n < total; n++, u = next_user(d, u))
            evaluator_fill(&e, n, u);
        rc = evaluator_batch(&e, n, r, err, errsz);
        done += n;
        double now = now_s();
        if (o->progress && now - last >= EVAL_PROGRESS_S && done < total) {
            progress_line(done, total, now - t0);
            last = now;
        }
    }
    r->seconds = now_s() - t0;
    evaluator_free(&e);
    if (rc) {
        lm_metrics popularity = r->popularity;
        memset(r, 0, sizeof *r);
        r->split = o->split;
        r->popularity = popularity;
        return -1;
    }
    lm_metrics_finish(&r->retrieval);
    lm_metrics_finish(&r->two_stage);
    return 0;
}

/* ---- reports ---------------------------------------------------------------------- */

/* The users behind the result: the model's, or popularity's for a result
 * that holds only popularity. */
static int result_users(const lm_eval_result *r)
{
    int n = r->retrieval.n_users;
    n = r->two_stage.n_users > n ? r->two_stage.n_users : n;
    return r->popularity.n_users > n ? r->popularity.n_users : n;
}

void lm_eval_print_table(FILE *f, const char *label, const lm_eval_result *r)
{
    const struct {
        const char *name;
        const lm_metrics *m;
    } rows[] = {{"retrieval", &r->retrieval}, {"two-stage", &r->two_stage}, {"popularity", &r->popularity}};
    fprintf(f, "%s\n%-12s", label, "ranking");
    for (int k = 0; k < LM_EVAL_NK; k++) {
        char hr[16], ndcg[16];
        snprintf(hr, sizeof hr, "HR@%d", lm_eval_ks[k]);
        snprintf(ndcg, sizeof ndcg, "NDCG@%d", lm_eval_ks[k]);
        fprintf(f, " %8s %8s", hr, ndcg);
    }
    fputc('\n', f);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fprintf(f, "%-12s", rows[i].name);
        for (int k = 0; k < LM_EVAL_NK; k++)
            fprintf(f, " %8.4f %8.4f", rows[i].m->hr[k], rows[i].m->ndcg[k]);
        fputc('\n', f);
    }
    fprintf(f, "%s split, %d users, %.2f s\n", r->split == LM_SPLIT_VALID ? "validation" : "test",
            result_users(r), r->seconds);
}

static json_t *metrics_json(const lm_metrics *m)
{
    json_t *o = json_object();
    for (int k = 0; o && k < LM_EVAL_NK; k++) {
        char key[16];
        snprintf(key, sizeof key, "hr@%d", lm_eval_ks[k]);
        json_object_set_new(o, key, json_real(m->hr[k]));
        snprintf(key, sizeof key, "ndcg@%d", lm_eval_ks[k]);
        json_object_set_new(o, key, json_real(m->ndcg[k]));
    }
    return o;
}

/* One line. With no memory for the object, writes nothing: the header gives
 * the printers no status. */
void lm_eval_print_json(FILE *f, const char *label, const lm_eval_result *r)
{
    json_t *o = json_object();
    if (!o)
        return;
    json_object_set_new(o, "label", json_string(label));
    json_object_set_new(o, "split", json_string(r->split == LM_SPLIT_VALID ? "validation" : "test"));
    json_object_set_new(o, "users", json_integer(result_users(r)));
    json_object_set_new(o, "seconds", json_real(r->seconds));
    json_object_set_new(o, "retrieval", metrics_json(&r->retrieval));
    json_object_set_new(o, "two_stage", metrics_json(&r->two_stage));
    json_object_set_new(o, "popularity", metrics_json(&r->popularity));
    if (json_dumpf(o, f, JSON_COMPACT | JSON_REAL_PRECISION(6)) == 0)
        fputc('\n', f);
    json_decref(o);
}
