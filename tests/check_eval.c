/* tests/check_eval.c — the evaluation protocol (llm/eval.h).
 *
 *   metrics      lm_metrics_add / lm_metrics_finish on hand-made ranks,
 *                against values written out by hand;
 *   popularity   a hand-built dataset whose ranks are worked out in the
 *                comments: pessimistic ties, the user's history excluded
 *                (repeats counted once), a target that re-occurs in its own
 *                history, max_users;
 *   brute        lm_eval_model on a random model and a random dataset
 *                against a brute-force evaluator written here: user vectors
 *                from the scorer, every item's logit (fp32 in double; int8
 *                by the int8 path's own definition), full rankings with the
 *                exclusions, the ranking head on the top N, and popularity
 *                from raw counts. Both splits, several retrieve_n, max_users,
 *                one and two threads, fp32 and int8;
 *   errors       a model with fewer actions or items than the dataset,
 *                retrieve_n below 20, a dataset with no evaluable user;
 *   print        the table and the JSON object (parsed back with jansson).
 *
 * Every comparison prints its numbers, not only a verdict. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/dataset.h"
#include "llm/eval.h"
#include "llm/forward.h"
#include "llm/kernels.h"
#include "llm/model.h"
#include "llm/safetensors.h"
#include "tests/testutil.h"

#define MODEL_TOL 1e-12 /* retrieval and two-stage metrics vs brute force */

/* ---- helpers ------------------------------------------------------------------ */

/* Sums of one ranking, accumulated here independently of lm_metrics_add. */
typedef struct sums {
    int n;
    double hr[LM_EVAL_NK], ndcg[LM_EVAL_NK];
} sums;

static void sums_add(sums *s, int rank)
{
    static const int ks[LM_EVAL_NK] = {5, 10, 20};
    for (int k = 0; k < LM_EVAL_NK; k++)
        if (rank >= 1 && rank <= ks[k]) {
            s->hr[k] += 1.0;
            s->ndcg[k] += 1.0 / log2(rank + 1.0);
        }
    s->n++;
}

/* Compares a result with sums (turned into means here); tol 0 is exact. */
static void expect_metrics(const char *what, const lm_metrics *got, const sums *want, double tol)
{
    ck_assert_msg(got->n_users == want->n, "%s: %d users, expected %d", what, got->n_users, want->n);
    double worst = 0.0;
    for (int k = 0; k < LM_EVAL_NK; k++) {
        double hr = want->n ? want->hr[k] / want->n : 0.0, ndcg = want->n ? want->ndcg[k] / want->n : 0.0;
        ck_assert_msg(fabs(got->hr[k] - hr) <= tol, "%s: HR@%d = %.17g, expected %.17g", what,
                      lm_eval_ks[k], got->hr[k], hr);
        ck_assert_msg(fabs(got->ndcg[k] - ndcg) <= tol, "%s: NDCG@%d = %.17g, expected %.17g", what,
                      lm_eval_ks[k], got->ndcg[k], ndcg);
        worst = fmax(worst, fmax(fabs(got->hr[k] - hr), fabs(got->ndcg[k] - ndcg)));
    }
    printf("  %-34s users %2d  HR@5/10/20 %.4f %.4f %.4f  NDCG@10 %.4f  max |diff| %.1e (tol %.0e)\n",
           what, got->n_users, got->hr[0], got->hr[1], got->hr[2], got->ndcg[1], worst, tol);
}

typedef struct event {
    const char *user, *item, *action;
} event;

/* A dataset of events given user by user, oldest first. */
static lm_dataset *build_dataset(const event *ev, int n)
{
    char err[CM_ERRSZ] = "";
    lm_dataset_builder *b = lm_dataset_builder_new();
    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < n; i++)
        ck_assert_msg(lm_dataset_builder_add(b, ev[i].user, ev[i].item, ev[i].action, i, err, sizeof err) == 0,
                      "builder_add %d: %s", i, err);
    lm_dataset *d = NULL;
    ck_assert_msg(lm_dataset_builder_finish(b, &d, err, sizeof err) == 0, "builder_finish: %s", err);
    return d;
}

static int row_of(const lm_dataset *d, const char *item)
{
    for (int i = 1; i < d->n_items; i++)
        if (strcmp(d->item_ids[i], item) == 0)
            return i;
    ck_abort_msg("item %s is not in the dataset", item);
    return -1;
}

/* ---- metrics ------------------------------------------------------------------ */

START_TEST(test_metrics)
{
    const double l3 = 1.0 / log2(3.0), l12 = 1.0 / log2(12.0);
    lm_metrics m = {0};
    static const int ranks[] = {1, 2, 11, 0};
    for (int i = 0; i < 4; i++)
        lm_metrics_add(&m, ranks[i]);
    lm_metrics_finish(&m);
    ck_assert_int_eq(lm_eval_ks[0], 5);
    ck_assert_int_eq(lm_eval_ks[1], 10);
    ck_assert_int_eq(lm_eval_ks[2], 20);
    const double hr[3] = {0.5, 0.5, 0.75};
    const double ndcg[3] = {(1 + l3) / 4, (1 + l3) / 4, (1 + l3 + l12) / 4};
    printf("metrics  ranks {1, 2, 11, 0}:");
    for (int k = 0; k < 3; k++) {
        printf(" HR@%d %.6f (%.6f) NDCG@%d %.6f (%.6f)", lm_eval_ks[k], m.hr[k], hr[k], lm_eval_ks[k],
               m.ndcg[k], ndcg[k]);
        ck_assert_double_eq_tol(m.hr[k], hr[k], 1e-15);
        ck_assert_double_eq_tol(m.ndcg[k], ndcg[k], 1e-15);
    }
    printf("\n");
    ck_assert_int_eq(m.n_users, 4);

    /* The cutoffs' edges: 5, 6, 10, 20, 21 (a rank past 20 is a miss). */
    lm_metrics e = {0};
    static const int edge[] = {5, 6, 10, 20, 21};
    for (int i = 0; i < 5; i++)
        lm_metrics_add(&e, edge[i]);
    lm_metrics_finish(&e);
    const double n5 = 1 / log2(6.0), n6 = 1 / log2(7.0), n10 = 1 / log2(11.0), n20 = 1 / log2(21.0);
    const double ehr[3] = {1 / 5.0, 3 / 5.0, 4 / 5.0};
    const double endcg[3] = {n5 / 5, (n5 + n6 + n10) / 5, (n5 + n6 + n10 + n20) / 5};
    printf("metrics  ranks {5, 6, 10, 20, 21}:");
    for (int k = 0; k < 3; k++) {
        printf(" HR@%d %.6f NDCG@%d %.6f", lm_eval_ks[k], e.hr[k], lm_eval_ks[k], e.ndcg[k]);
        ck_assert_double_eq_tol(e.hr[k], ehr[k], 1e-15);
        ck_assert_double_eq_tol(e.ndcg[k], endcg[k], 1e-15);
    }
    printf("\n");

    /* No users: zeros, not NaN. */
    lm_metrics z = {0};
    lm_metrics_finish(&z);
    for (int k = 0; k < 3; k++)
        ck_assert(z.hr[k] == 0.0 && z.ndcg[k] == 0.0);
    printf("metrics  no users: all zero\n");
}
END_TEST

/* ---- popularity by hand ----------------------------------------------------------- */

/* Users (events oldest first; train | valid target | test target):
 *   u1: a b c | a | d
 *   u2: b     | c | e
 *   u3: a b              (2 events: training only)
 *   u4: c d e | f | b
 * Training counts over all users: a 2, b 3, c 2, d 1, e 1, f 0.
 *
 * test:  u1 target d (count 1), history a b c a excludes {a, b, c}: of the
 *          others only e (1, a tie) is not below it: rank 2. Counting the
 *          repeated a twice would give 1.
 *        u2 target e (1), excludes {b, c}: a (2) and d (1, tie): rank 3.
 *        u4 target b (3), excludes {c, d, e, f}: nothing above: rank 1.
 * valid: u1 target a (2), history a b c: a is the target and stays; b and
 *          c are excluded, nothing else has >= 2: rank 1.
 *        u2 target c (2), excludes {b}: a (2, tie): rank 2.
 *        u4 target f (0), excludes {c, d, e}: a, b: rank 3. */
static const event hand_events[] = {
    {"u1", "a", "click"}, {"u1", "b", "click"}, {"u1", "c", "click"}, {"u1", "a", "click"},
    {"u1", "d", "click"}, {"u2", "b", "click"}, {"u2", "c", "click"}, {"u2", "e", "click"},
    {"u3", "a", "click"}, {"u3", "b", "click"}, {"u4", "c", "click"}, {"u4", "d", "click"},
    {"u4", "e", "click"}, {"u4", "f", "click"}, {"u4", "b", "click"},
};

static void expect_ranks(const char *what, const lm_dataset *d, lm_split split, int max_users,
                         const int *ranks, int n)
{
    sums want = {0};
    for (int i = 0; i < n; i++)
        sums_add(&want, ranks[i]);
    lm_metrics got;
    memset(&got, 0xff, sizeof got); /* everything must be written */
    lm_eval_popularity(d, split, max_users, &got);
    char line[96];
    int len = snprintf(line, sizeof line, "%s ranks {", what);
    for (int i = 0; i < n; i++)
        len += snprintf(line + len, sizeof line - (size_t)len, "%s%d", i ? ", " : "", ranks[i]);
    snprintf(line + len, sizeof line - (size_t)len, "}");
    expect_metrics(line, &got, &want, 0.0);
}

START_TEST(test_popularity_hand)
{
    lm_dataset *d = build_dataset(hand_events, (int)(sizeof hand_events / sizeof hand_events[0]));
    ck_assert_int_eq(d->n_users, 4);
    ck_assert_int_eq(d->n_items, 7);
    printf("popularity on the hand-built dataset (rows a=%d b=%d c=%d d=%d e=%d f=%d):\n",
           row_of(d, "a"), row_of(d, "b"), row_of(d, "c"), row_of(d, "d"), row_of(d, "e"), row_of(d, "f"));
    expect_ranks("test ", d, LM_SPLIT_TEST, 0, (const int[]){2, 3, 1}, 3);
    expect_ranks("valid", d, LM_SPLIT_VALID, 0, (const int[]){1, 2, 3}, 3);
    expect_ranks("test, max_users 2", d, LM_SPLIT_TEST, 2, (const int[]){2, 3}, 2);
    expect_ranks("valid, max_users 1", d, LM_SPLIT_VALID, 1, (const int[]){1}, 1);
    lm_dataset_free(d);
}
END_TEST

/* The hand-built dataset mapped onto a model vocabulary without "e" and
 * with an item "z" the data never mentions: e becomes row 0 (unknown: never
 * ranked, a miss as a target), z a row with count 0.
 * test:  u1 target d (1), excludes {a, b, c}: nothing left >= 1: rank 1.
 *        u2 target e: unknown, a miss (0). u4 target b: rank 1.
 * valid: u1 a: 1; u2 c: 2 (as before); u4 target f (0), history c d e
 *        excludes {c, d}: a, b and z are >= 0: rank 4. */
START_TEST(test_popularity_aligned)
{
    char err[CM_ERRSZ] = "";
    lm_dataset *d = build_dataset(hand_events, (int)(sizeof hand_events / sizeof hand_events[0]));
    static const char *const vocab[] = {"", "b", "a", "c", "z", "d", "f"};
    int64_t unknown = -1;
    ck_assert_msg(lm_dataset_align(d, vocab, 7, &unknown, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(unknown, 2);
    printf("popularity on the hand-built dataset aligned to {b a c z d f} (e unknown):\n");
    expect_ranks("test ", d, LM_SPLIT_TEST, 0, (const int[]){1, 0, 1}, 3);
    expect_ranks("valid", d, LM_SPLIT_VALID, 0, (const int[]){1, 2, 4}, 3);
    lm_dataset_free(d);
}
END_TEST

/* Every item tied at count 0 except one: a target tied with 30 others is
 * a miss at 20 (pessimistic), and one excluded item does not change that
 * until enough are excluded. */
START_TEST(test_popularity_ties)
{
    enum { N_OTHER = 30 };
    event ev[N_OTHER + 16];
    char names[N_OTHER][8];
    int n = 0;
    /* u0: 30 distinct items, the last two its targets */
    for (int i = 0; i < N_OTHER; i++) {
        snprintf(names[i], sizeof names[i], "o%02d", i);
        ev[n++] = (event){"u0", names[i], "x"};
    }
    /* u1: p p t1 t2 -> train "p" twice; valid target t1 (count 0), test t2 (count 0). */
    ev[n++] = (event){"u1", "p", "x"};
    ev[n++] = (event){"u1", "p", "x"};
    ev[n++] = (event){"u1", "t1", "x"};
    ev[n++] = (event){"u1", "t2", "x"};
    lm_dataset *d = build_dataset(ev, n);
    /* Counts: o00..o27 1 (u0's training), o28 o29 0 (u0's targets), p 2,
     * t1 t2 0. u0 test target o29 (0): every other row is >= 0; excluded are
     * its 29 earlier items: rows left p, t1, t2 -> rank 4.
     * u0 valid target o28 (0): excluded o00..o27; left o29, p, t1, t2 -> 5.
     * u1 valid target t1 (0): excluded p; left o00..o29 (30) and t2 -> 32, a
     * miss. u1 test target t2 (0): excluded p, t1; left 30 -> 31, a miss. */
    printf("popularity with a 30-way tie:\n");
    expect_ranks("test ", d, LM_SPLIT_TEST, 0, (const int[]){4, 31}, 2);
    expect_ranks("valid", d, LM_SPLIT_VALID, 0, (const int[]){5, 32}, 2);
    lm_dataset_free(d);
}
END_TEST

/* ---- random model and dataset ------------------------------------------------------ */

/* A random ranker-v1 artifact (fp32) with the reference's initialisation
 * (embeddings N(0, 0.5), linear U(+-1/sqrt(in)), LayerNorm 1/0). With
 * `twins`, item rows 2j and 2j - 1 are equal, so that both heads score the
 * two items alike and ties are everywhere. */
static void write_model(const char *path, const lm_config *c, uint64_t seed, int twins)
{
    char err[CM_ERRSZ] = "", v[32];
    tu_rng rng = {.s = seed};
    lm_st_writer *w = lm_st_writer_new();
    ck_assert_ptr_nonnull(w);
    const char *keys[] = {"d_model", "n_heads", "n_layers", "d_ffn", "max_hist", "n_items", "n_actions"};
    int vals[] = {c->d_model, c->n_heads, c->n_layers, c->d_ffn, c->max_hist, c->n_items, c->n_actions};
    ck_assert_msg(lm_st_writer_meta(w, "arch", LM_ARCH, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < 7; i++) {
        snprintf(v, sizeof v, "%d", vals[i]);
        ck_assert_msg(lm_st_writer_meta(w, keys[i], v, err, sizeof err) == 0, "%s", err);
    }
    lm_tensor_spec *specs = malloc(sizeof *specs * (size_t)lm_tensor_specs_max(c));
    ck_assert_ptr_nonnull(specs);
    int n = lm_tensor_specs(c, specs);
    for (int i = 0; i < n; i++) {
        const lm_tensor_spec *s = &specs[i];
        int64_t numel = s->shape[0] * (s->ndim == 2 ? s->shape[1] : 1);
        float *data = malloc(sizeof(float) * (size_t)numel);
        ck_assert_ptr_nonnull(data);
        int is_ln_w = strstr(s->name, "ln") && strstr(s->name, ".weight");
        int is_emb = strstr(s->name, "_emb") != NULL;
        float bound = s->ndim == 2 ? 1.0f / sqrtf((float)s->shape[1]) : 0.0f;
        for (int64_t j = 0; j < numel; j++)
            data[j] = is_ln_w  ? 1.0f
                      : is_emb ? 0.5f * tu_normal(&rng)
                               : bound * (float)(2.0 * tu_unif(&rng) - 1.0);
        if (twins && strcmp(s->name, "item_emb") == 0)
            for (int64_t r = 2; r < s->shape[0]; r += 2)
                memcpy(data + r * s->shape[1], data + (r - 1) * s->shape[1], sizeof(float) * (size_t)s->shape[1]);
        ck_assert_msg(lm_st_writer_add(w, s->name, LM_DT_F32, s->ndim, s->shape, data, err, sizeof err) == 0,
                      "%s", err);
        free(data);
    }
    ck_assert_msg(lm_st_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    free(specs);
    lm_st_writer_free(w);
}

#define RAND_USERS 30
#define RAND_ITEMS 49 /* item names; the dataset holds those that occur */
#define RAND_ACTIONS 3

/* 30 users of 2..20 events over 49 items with 3 actions, items drawn from a
 * skewed distribution so that repeats and popularity ties both occur. Every
 * fourth user's test target repeats one of its earlier items, and every
 * fifth user's validation target too. */
static lm_dataset *random_dataset(uint64_t seed)
{
    tu_rng rng = {.s = seed};
    char err[CM_ERRSZ] = "", user[16], item[16], action[16];
    lm_dataset_builder *b = lm_dataset_builder_new();
    ck_assert_ptr_nonnull(b);
    int64_t ts = 0;
    for (int u = 0; u < RAND_USERS; u++) {
        int len = u < 3 ? 2 + u % 2 : tu_int(&rng, 2, 20); /* users 0, 1, 2 have 2, 3, 2 events */
        int items[20];
        for (int i = 0; i < len; i++) {
            double x = tu_unif(&rng);
            items[i] = 1 + (int)(x * x * RAND_ITEMS);
        }
        if (len >= 4 && u % 4 == 0)
            items[len - 1] = items[tu_int(&rng, 0, len - 2)];
        if (len >= 4 && u % 5 == 0)
            items[len - 2] = items[tu_int(&rng, 0, len - 3)];
        snprintf(user, sizeof user, "user%02d", u);
        for (int i = 0; i < len; i++) {
            snprintf(item, sizeof item, "item%02d", items[i]);
            snprintf(action, sizeof action, "act%d", tu_int(&rng, 0, RAND_ACTIONS - 1));
            ck_assert_msg(lm_dataset_builder_add(b, user, item, action, ts++, err, sizeof err) == 0, "%s", err);
        }
    }
    lm_dataset *d = NULL;
    ck_assert_msg(lm_dataset_builder_finish(b, &d, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(d->n_users, RAND_USERS);
    ck_assert_int_eq(d->n_actions, RAND_ACTIONS);
    return d;
}

/* The random model for dataset d (n_items and n_actions from it, plus
 * extra_actions), fp32 or int8, with twin items or not; returns the loaded
 * model. */
static lm_model *random_model(const lm_dataset *d, int n_layers, int extra_actions, int int8, int twins,
                              const char *name)
{
    char path[TU_PATH], q[TU_PATH], qname[64];
    lm_config c = {.d_model = 16, .n_heads = 2, .n_layers = n_layers, .d_ffn = 32, .max_hist = 8,
                   .n_items = d->n_items, .n_actions = d->n_actions + extra_actions};
    tu_tmp_path(path, name);
    write_model(path, &c, 77 + (uint64_t)n_layers, twins);
    if (!int8)
        return tu_model_load(path);
    snprintf(qname, sizeof qname, "%s.int8", name);
    tu_quantize(path, qname, q);
    return tu_model_load(q);
}

/* Maps d onto a vocabulary of its items in reverse order, every third one
 * left out, and 5 items of its own ("new0".."new4"). */
static void align_random(lm_dataset *d)
{
    char err[CM_ERRSZ] = "", extra[5][8];
    const char **vocab = malloc(sizeof(char *) * (size_t)(d->n_items + 5));
    ck_assert_ptr_nonnull(vocab);
    int n = 1;
    vocab[0] = "";
    for (int r = d->n_items - 1; r >= 1; r--)
        if (r % 3 != 0)
            vocab[n++] = d->item_ids[r];
    for (int i = 0; i < 5; i++) {
        snprintf(extra[i], sizeof extra[i], "new%d", i);
        vocab[n++] = extra[i];
    }
    int64_t unknown = 0;
    ck_assert_msg(lm_dataset_align(d, vocab, n, &unknown, err, sizeof err) == 0, "%s", err);
    ck_assert(unknown > 0 && d->n_items == n);
    free(vocab);
}

/* ---- the brute-force evaluator ----------------------------------------------------- */

typedef struct brute_ctx {
    const double *score;
} brute_ctx;

static brute_ctx cmp_ctx;

/* Best first: higher score, then lower row (the retriever's order). */
static int by_score(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    double sx = cmp_ctx.score[x], sy = cmp_ctx.score[y];
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return (x > y) - (x < y);
}

static int in_list(const int32_t *a, int n, int32_t v)
{
    for (int i = 0; i < n; i++)
        if (a[i] == v)
            return 1;
    return 0;
}

/* Every item's retrieval score for user vector u: fp32 models in double,
 * int8 models by the int8 definition (quantized user vector, int32 dot
 * products with the stored rows, (float)acc * (s_user * s_item)). */
static void item_scores(const lm_model *m, const float *u, double *out)
{
    const int N = m->cfg.n_items, dm = m->cfg.d_model;
    float row[64];
    int8_t uq[64];
    float us;
    lm_quantize_row_ref(u, dm, uq, &us);
    for (int it = 0; it < N; it++) {
        if (m->quant == LM_QUANT_INT8) {
            int32_t acc = 0;
            for (int i = 0; i < dm; i++)
                acc += (int32_t)uq[i] * lm_pq8_get(&m->item.q, it, i);
            out[it] = (double)((float)acc * (us * m->item.q.scale[it]));
        } else {
            lm_model_item_row(m, it, row);
            double acc = 0.0;
            for (int i = 0; i < dm; i++)
                acc += (double)row[i] * (double)u[i];
            out[it] = acc;
        }
    }
}

typedef struct brute_result {
    sums retrieval, two_stage, popularity;
    int retrieved_miss; /* targets outside the retrieved N */
    int ret_ties, rerank_ties; /* targets scored equal to another ranked item */
    int unknown;               /* targets in row 0 */
} brute_result;

static void brute_eval(const lm_model *m, const lm_dataset *d, lm_split split, int retrieve_n, int max_users,
                       brute_result *out)
{
    const int N = m->cfg.n_items, dm = m->cfg.d_model, max_hist = m->cfg.max_hist;
    const int n_ret = retrieve_n ? retrieve_n : 100;
    memset(out, 0, sizeof *out);
    lm_scorer *sc = tu_scorer(m, 1, n_ret, 1, LM_ISA_COUNT);
    double *score = malloc(sizeof(double) * (size_t)N);
    int32_t *rank = malloc(sizeof(int32_t) * (size_t)N), *cands = malloc(sizeof(int32_t) * (size_t)n_ret);
    int32_t *acts = malloc(sizeof(int32_t) * (size_t)max_hist);
    int *count = calloc((size_t)d->n_items, sizeof(int));
    float *cs = malloc(sizeof(float) * (size_t)n_ret), *uv = malloc(sizeof(float) * (size_t)dm);
    ck_assert(score && rank && cands && acts && count && cs && uv);
    for (int u = 0; u < d->n_users; u++)
        for (int i = 0; i < lm_user_train_len(d, u); i++)
            count[d->items[d->user_off[u] + i]]++;
    for (int u = 0, done = 0; u < d->n_users && (max_users <= 0 || done < max_users); u++) {
        if (!lm_user_evaluable(d, u))
            continue;
        done++;
        const int32_t *ev = d->items + d->user_off[u];
        const int t = lm_user_target(d, u, split), h = t < max_hist ? t : max_hist;
        const int32_t target = ev[t];
        if (target == 0) { /* unknown to the model: a miss everywhere */
            sums_add(&out->retrieval, 0);
            sums_add(&out->two_stage, 0);
            sums_add(&out->popularity, 0);
            out->unknown++;
            continue;
        }
        for (int i = 0; i < h; i++)
            acts[i] = d->actions[d->user_off[u] + t - h + i];
        lm_request rq = {.hist_items = ev + t - h, .hist_actions = acts, .n_hist = h, .user_vec = uv};
        tu_run(sc, &rq, 1);
        item_scores(m, uv, score);
        /* The full ranking: rows 1.. not consumed before t, the target's own row kept. */
        int n = 0;
        for (int32_t it = 1; it < N; it++)
            if (it == target || !in_list(ev, t, it))
                rank[n++] = it;
        cmp_ctx.score = score;
        qsort(rank, (size_t)n, sizeof(int32_t), by_score);
        int pos = 0;
        while (pos < n && rank[pos] != target)
            pos++;
        ck_assert_msg(pos < n, "user %d: target %d not eligible", u, target);
        for (int j = 0; j < n; j++)
            if (j != pos && score[rank[j]] == score[target]) {
                out->ret_ties++;
                break;
            }
        sums_add(&out->retrieval, pos + 1);
        /* Two-stage: the ranking logit on the top N; a target past N is a miss. */
        int nc = n < n_ret ? n : n_ret;
        int two = 0;
        if (pos < nc) {
            memcpy(cands, rank, sizeof(int32_t) * (size_t)nc);
            rq.cands = cands;
            rq.n_cands = nc;
            rq.scores = cs;
            rq.user_vec = NULL;
            tu_run(sc, &rq, 1);
            for (int j = 0; j < nc; j++) /* the ranking logit: head + retrieval logit */
                cs[j] += (float)score[cands[j]];
            two = 1;
            for (int j = 0; j < nc; j++)
                if (j != pos && cs[j] >= cs[pos])
                    two++;
            for (int j = 0; j < nc; j++)
                if (j != pos && cs[j] == cs[pos]) {
                    out->rerank_ties++;
                    break;
                }
        } else {
            out->retrieved_miss++;
        }
        sums_add(&out->two_stage, two);
        /* Popularity: every other eligible row counted at least as often is above. */
        int prank = 1;
        for (int32_t it = 1; it < d->n_items; it++)
            if (it != target && !in_list(ev, t, it) && count[it] >= count[target])
                prank++;
        sums_add(&out->popularity, prank);
    }
    lm_scorer_free(sc);
    free(score);
    free(rank);
    free(cands);
    free(acts);
    free(count);
    free(cs);
    free(uv);
}

/* Twin cases: equal item rows tie in both heads, so the retrieval list's
 * order (lower row first) and the re-rank's pessimistic ties both matter.
 * Aligned cases: the dataset mapped onto a vocabulary that lacks some of
 * its items (unknown targets and history events in row 0) and holds items
 * it never mentions. */
static const struct {
    int int8, n_layers, twins, align;
    lm_split split;
    int retrieve_n, max_users, threads;
} brute_cases[] = {
    {0, 2, 0, 0, LM_SPLIT_TEST, 20, 0, 2},  {0, 2, 0, 0, LM_SPLIT_VALID, 20, 0, 2},
    {0, 1, 0, 0, LM_SPLIT_TEST, 0, 0, 1},   {0, 1, 0, 0, LM_SPLIT_VALID, 25, 0, 1},
    {0, 2, 0, 0, LM_SPLIT_TEST, 30, 7, 2},  {1, 2, 0, 0, LM_SPLIT_TEST, 20, 0, 2},
    {1, 2, 0, 0, LM_SPLIT_VALID, 0, 0, 1},  {1, 1, 0, 0, LM_SPLIT_VALID, 25, 5, 2},
    {0, 2, 1, 0, LM_SPLIT_TEST, 20, 0, 2},  {0, 1, 1, 0, LM_SPLIT_VALID, 0, 0, 1},
    {1, 2, 1, 0, LM_SPLIT_TEST, 0, 0, 2},   {0, 2, 0, 1, LM_SPLIT_TEST, 20, 0, 2},
    {1, 2, 0, 1, LM_SPLIT_VALID, 0, 0, 2},
};
#define N_BRUTE ((int)(sizeof brute_cases / sizeof brute_cases[0]))

START_TEST(test_model_brute)
{
    char err[CM_ERRSZ] = "", name[64], what[64];
    const int int8 = brute_cases[_i].int8;
    lm_dataset *d = random_dataset(4242);
    if (brute_cases[_i].align)
        align_random(d);
    snprintf(name, sizeof name, "brute%d.safetensors", _i);
    lm_model *m = random_model(d, brute_cases[_i].n_layers, 0, int8, brute_cases[_i].twins, name);
    lm_eval_opts o = {.split = brute_cases[_i].split, .retrieve_n = brute_cases[_i].retrieve_n,
                      .max_users = brute_cases[_i].max_users, .threads = brute_cases[_i].threads,
                      .isa = LM_ISA_COUNT};
    lm_eval_result r;
    ck_assert_msg(lm_eval_model(m, d, &o, &r, err, sizeof err) == 0, "lm_eval_model: %s", err);
    brute_result want;
    brute_eval(m, d, o.split, o.retrieve_n, o.max_users, &want);
    printf("brute %s%s, %d layer(s), %s split, retrieve_n %d, max_users %d, threads %d: %d items, "
           "%d targets outside the retrieved N, tied targets %d (retrieval) %d (re-rank), %d unknown, "
           "%.3f s\n",
           int8 ? "int8" : "fp32", brute_cases[_i].twins ? " twins" : "", brute_cases[_i].n_layers, o.split == LM_SPLIT_TEST ? "test" : "valid",
           o.retrieve_n, o.max_users, o.threads, d->n_items - 1, want.retrieved_miss, want.ret_ties,
           want.rerank_ties, want.unknown, r.seconds);
    if (brute_cases[_i].align)
        ck_assert_msg(want.unknown > 0, "the aligned dataset has no unknown target");
    if (brute_cases[_i].twins)
        ck_assert_msg(want.ret_ties > 0 && want.rerank_ties > 0, "the twin items produced no ties");
    ck_assert_msg(want.retrieval.n > 0, "the random dataset has no evaluable users");
    snprintf(what, sizeof what, "case %d retrieval", _i);
    expect_metrics(what, &r.retrieval, &want.retrieval, MODEL_TOL);
    snprintf(what, sizeof what, "case %d two-stage", _i);
    expect_metrics(what, &r.two_stage, &want.two_stage, MODEL_TOL);
    snprintf(what, sizeof what, "case %d popularity", _i);
    expect_metrics(what, &r.popularity, &want.popularity, 0.0);
    ck_assert(r.seconds >= 0.0);

    /* lm_eval_popularity alone gives the same popularity, bit for bit. */
    lm_metrics pop;
    lm_eval_popularity(d, o.split, o.max_users, &pop);
    ck_assert(memcmp(&pop, &r.popularity, sizeof pop) == 0);
    lm_model_free(m);
    lm_dataset_free(d);
}
END_TEST

/* One thread or two, any retrieve_n >= the catalog: the same numbers. */
START_TEST(test_model_threads)
{
    char err[CM_ERRSZ] = "";
    lm_dataset *d = random_dataset(99);
    lm_model *m = random_model(d, 2, 0, _i, 0, _i ? "threads.safetensors" : "threads-fp32.safetensors");
    lm_eval_result r1, r2;
    lm_eval_opts o = {.split = LM_SPLIT_TEST, .retrieve_n = 0, .threads = 1, .isa = LM_ISA_COUNT};
    ck_assert_msg(lm_eval_model(m, d, &o, &r1, err, sizeof err) == 0, "%s", err);
    o.threads = 2;
    ck_assert_msg(lm_eval_model(m, d, &o, &r2, err, sizeof err) == 0, "%s", err);
    ck_assert(memcmp(&r1.retrieval, &r2.retrieval, sizeof r1.retrieval) == 0);
    ck_assert(memcmp(&r1.two_stage, &r2.two_stage, sizeof r1.two_stage) == 0);
    ck_assert(memcmp(&r1.popularity, &r2.popularity, sizeof r1.popularity) == 0);
    printf("threads %s: 1 and 2 threads give the same metrics bit for bit (HR@10 %.4f / %.4f / %.4f)\n",
           _i ? "int8" : "fp32", r1.retrieval.hr[1], r1.two_stage.hr[1], r1.popularity.hr[1]);
    lm_model_free(m);
    lm_dataset_free(d);
}
END_TEST

/* ---- errors ----------------------------------------------------------------------- */

START_TEST(test_errors)
{
    char err[CM_ERRSZ] = "";
    lm_dataset *d = random_dataset(7);
    lm_model *m = random_model(d, 1, -1, 0, 0, "few-actions.safetensors");
    lm_eval_opts o = {.split = LM_SPLIT_TEST, .threads = 1, .isa = LM_ISA_COUNT};
    lm_eval_result r;
    ck_assert_int_eq(lm_eval_model(m, d, &o, &r, err, sizeof err), -1);
    printf("errors   3 dataset actions, 2 model actions: %s\n", err);
    ck_assert_msg(strstr(err, "3 action types") && strstr(err, "takes 2"), "message: %s", err);
    lm_model_free(m);

    m = random_model(d, 1, 0, 0, 0, "ok.safetensors");
    o.retrieve_n = 10;
    err[0] = 0;
    ck_assert_int_eq(lm_eval_model(m, d, &o, &r, err, sizeof err), -1);
    printf("errors   retrieve_n 10: %s\n", err);
    ck_assert_msg(strstr(err, "retrieve_n 10"), "message: %s", err);
    lm_model_free(m);
    lm_dataset_free(d);

    /* A dataset with more item rows than the model. */
    d = random_dataset(7);
    lm_dataset *small = build_dataset(hand_events, (int)(sizeof hand_events / sizeof hand_events[0]));
    m = random_model(small, 1, RAND_ACTIONS - 1, 0, 0, "few-items.safetensors");
    o.retrieve_n = 0;
    err[0] = 0;
    ck_assert_int_eq(lm_eval_model(m, d, &o, &r, err, sizeof err), -1);
    printf("errors   %d dataset rows, %d model rows: %s\n", d->n_items, m->cfg.n_items, err);
    ck_assert_msg(strstr(err, "item rows"), "message: %s", err);

    /* No evaluable user: nothing measured, no error. */
    static const event two[] = {{"a", "a", "click"}, {"a", "b", "click"}, {"b", "f", "click"}};
    lm_dataset *none = build_dataset(two, 3);
    ck_assert_int_eq(lm_eval_model(m, none, &o, &r, err, sizeof err), 0);
    ck_assert_int_eq(r.retrieval.n_users, 0);
    ck_assert_int_eq(r.two_stage.n_users, 0);
    ck_assert_int_eq(r.popularity.n_users, 0);
    ck_assert(r.retrieval.hr[2] == 0.0 && r.popularity.ndcg[2] == 0.0);
    printf("errors   no evaluable user: 0 users, metrics 0, no error\n");
    lm_dataset_free(none);
    lm_dataset_free(small);
    lm_model_free(m);
    lm_dataset_free(d);
}
END_TEST

/* ---- printers --------------------------------------------------------------------- */

static lm_eval_result sample_result(void)
{
    lm_eval_result r = {.seconds = 12.345678};
    lm_metrics *ms[3] = {&r.retrieval, &r.two_stage, &r.popularity};
    for (int i = 0; i < 3; i++) {
        ms[i]->n_users = 1234;
        for (int k = 0; k < LM_EVAL_NK; k++) {
            ms[i]->hr[k] = 0.1 * (i + 1) + 0.01 * k + 0.00123456;
            ms[i]->ndcg[k] = 0.05 * (i + 1) + 0.01 * k + 0.00098765;
        }
    }
    return r;
}

static char *print_to_string(void (*fn)(FILE *, const char *, const lm_eval_result *), const char *label,
                             const lm_eval_result *r)
{
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    fn(f, label, r);
    long len = ftell(f);
    ck_assert(len > 0);
    char *buf = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(buf);
    rewind(f);
    ck_assert(fread(buf, 1, (size_t)len, f) == (size_t)len);
    buf[len] = 0;
    fclose(f);
    return buf;
}

START_TEST(test_print_table)
{
    lm_eval_result r = sample_result();
    char *s = print_to_string(lm_eval_print_table, "student.int8 on toys (test)", &r);
    printf("table:\n%s", s);
    ck_assert_ptr_nonnull(strstr(s, "student.int8 on toys (test)"));
    const char *heads[] = {"HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"};
    for (int i = 0; i < 6; i++)
        ck_assert_msg(strstr(s, heads[i]), "no column %s", heads[i]);
    /* Each row: its name and the six values to 4 decimals, in column order. */
    const char *names[] = {"retrieval", "two-stage", "popularity"};
    const lm_metrics *ms[] = {&r.retrieval, &r.two_stage, &r.popularity};
    for (int i = 0; i < 3; i++) {
        const char *row = strstr(s, names[i]);
        ck_assert_msg(row, "no row %s", names[i]);
        char v[16];
        for (int k = 0; k < LM_EVAL_NK; k++) {
            snprintf(v, sizeof v, "%.4f", ms[i]->hr[k]);
            const char *p = strstr(row, v);
            ck_assert_msg(p && p < strchr(row, '\n'), "row %s lacks %s", names[i], v);
            snprintf(v, sizeof v, "%.4f", ms[i]->ndcg[k]);
            p = strstr(row, v);
            ck_assert_msg(p && p < strchr(row, '\n'), "row %s lacks %s", names[i], v);
        }
    }
    /* Columns line up: every row as long as the header. */
    const char *hdr = strstr(s, "HR@5");
    while (hdr > s && hdr[-1] != '\n')
        hdr--;
    size_t width = (size_t)(strchr(hdr, '\n') - hdr);
    for (int i = 0; i < 3; i++) {
        const char *row = strstr(s, names[i]);
        ck_assert_msg((size_t)(strchr(row, '\n') - row) == width, "row %s is not %zu wide", names[i], width);
    }
    ck_assert_ptr_nonnull(strstr(s, "1234"));
    ck_assert_ptr_nonnull(strstr(s, "12.3"));
    free(s);
}
END_TEST

START_TEST(test_print_json)
{
    lm_eval_result r = sample_result();
    const char *label = "model \"x\" on toys\\test";
    char *s = print_to_string(lm_eval_print_json, label, &r);
    printf("json: %s", s);
    ck_assert_msg(strchr(s, '\n') == s + strlen(s) - 1, "not one line");
    json_error_t je;
    json_t *o = json_loads(s, 0, &je);
    ck_assert_msg(o, "not JSON: %s at %d", je.text, je.position);
    ck_assert(json_is_object(o));
    ck_assert_str_eq(json_string_value(json_object_get(o, "label")), label);
    ck_assert_int_eq(json_integer_value(json_object_get(o, "users")), 1234);
    ck_assert_double_eq_tol(json_number_value(json_object_get(o, "seconds")), 12.3457, 1e-9);
    const char *names[] = {"retrieval", "two_stage", "popularity"};
    const lm_metrics *ms[] = {&r.retrieval, &r.two_stage, &r.popularity};
    for (int i = 0; i < 3; i++) {
        json_t *mo = json_object_get(o, names[i]);
        ck_assert_msg(json_is_object(mo), "no object %s", names[i]);
        ck_assert_int_eq(json_object_size(mo), 2 * LM_EVAL_NK);
        for (int k = 0; k < LM_EVAL_NK; k++) {
            char key[16];
            snprintf(key, sizeof key, "hr@%d", lm_eval_ks[k]);
            double v = json_number_value(json_object_get(mo, key));
            ck_assert_msg(fabs(v - ms[i]->hr[k]) <= 5e-6 * ms[i]->hr[k], "%s.%s = %.9g, expected %.9g", names[i],
                          key, v, ms[i]->hr[k]);
            snprintf(key, sizeof key, "ndcg@%d", lm_eval_ks[k]);
            v = json_number_value(json_object_get(mo, key));
            ck_assert_msg(fabs(v - ms[i]->ndcg[k]) <= 5e-6 * ms[i]->ndcg[k], "%s.%s = %.9g, expected %.9g",
                          names[i], key, v, ms[i]->ndcg[k]);
        }
    }
    printf("json: parsed back; label, users, seconds and 3 x 6 metrics match to 6 digits\n");
    json_decref(o);
    free(s);
}
END_TEST

/* ---- suite ------------------------------------------------------------------------ */

static Suite *eval_suite(void)
{
    Suite *s = suite_create("eval");
    TCase *tc;

    tc = tcase_create("metrics");
    tcase_add_test(tc, test_metrics);
    suite_add_tcase(s, tc);

    tc = tcase_create("popularity");
    tcase_add_test(tc, test_popularity_hand);
    tcase_add_test(tc, test_popularity_ties);
    tcase_add_test(tc, test_popularity_aligned);
    suite_add_tcase(s, tc);

    tc = tcase_create("brute");
    tcase_add_loop_test(tc, test_model_brute, 0, N_BRUTE);
    tcase_add_loop_test(tc, test_model_threads, 0, 2);
    tcase_set_timeout(tc, 60); /* ASan builds are several times slower */
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_add_test(tc, test_errors);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("print");
    tcase_add_test(tc, test_print_table);
    tcase_add_test(tc, test_print_json);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_main("check_eval", eval_suite());
}
