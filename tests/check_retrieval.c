/* tests/check_retrieval.c — the retrieval head (llm/retrieval.h): top-k of
 * the catalog for a user vector, against brute force.
 *
 *   topk         lm_topk against a full sort, on scores with many ties, NaN
 *                and infinities, for k from 0 to past n;
 *   brute        lm_retrieve on every ISA against brute force over every
 *                item: fp32 models in double precision (items may swap only
 *                within 1e-5 of the k-th logit; scores within 1e-4), int8
 *                models with the int8 definition itself (exact items, exact
 *                score bits);
 *   exclusions   excluded items (unsorted, repeated, out of range) and item 0
 *                never come back, and a catalog smaller than k returns fewer;
 *   invariance   thread counts 1-3, batch or one at a time, any batch order:
 *                bitwise the same answer;
 *   validation   bad requests and options fail with a message, writing nothing.
 *
 * Models: the golden "small" case (1,000 items) in fp32 and int8, and a
 * synthetic catalog of 4,099 items (several 1,024-item blocks per task, a
 * partial last panel, d = 24 so the int8 rows are padded) in which one item
 * in six repeats another item's row, so that exact ties are everywhere. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/forward.h"
#include "llm/kernels.h"
#include "llm/model.h"
#include "llm/quantize.h"
#include "llm/retrieval.h"
#include "llm/safetensors.h"
#include "tests/testutil.h"

#define SCORE_TOL 1e-4    /* fp32 retrieval score vs the double logit */
#define BOUNDARY_TOL 1e-5 /* fp32: items this close to the k-th logit may swap */
#define MAX_K 128
#define MAX_EXCL 64

/* ---- lm_topk against a full sort ---------------------------------------------- */

typedef struct pair {
    float score;
    int32_t item;
} pair;

/* Best first: higher score, then lower item. */
static int pair_cmp(const void *a, const void *b)
{
    const pair *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->item > y->item) - (x->item < y->item);
}

/* k, n (pushes), how many NaN; scores from a pool of 5 values, or 1 (all tied). */
static const struct {
    int k, n, values;
} topk_cases[] = {
    {1, 1, 5},   {1, 200, 5},  {5, 200, 5},   {5, 200, 1},  {5, 3, 5},     {7, 7, 5},
    {10, 9, 5},  {64, 1000, 5}, {64, 1000, 1}, {100, 37, 5}, {0, 20, 5},    {3, 0, 5},
    {50, 50, 1}, {16, 5000, 5}, {1, 5000, 1},  {33, 64, 5},
};
#define N_TOPK ((int)(sizeof topk_cases / sizeof topk_cases[0]))

START_TEST(test_topk)
{
    const int k = topk_cases[_i].k, n = topk_cases[_i].n;
    static const float pool5[] = {-1.0f, 0.0f, 0.5f, 2.0f, INFINITY};
    tu_rng rng = {.s = 500 + (uint64_t)_i};
    pair *all = malloc(sizeof(pair) * (size_t)(n + 1));
    int32_t *items = malloc(sizeof(int32_t) * (size_t)(k + 4));
    float *scores = malloc(sizeof(float) * (size_t)(k + 4));
    ck_assert(all && items && scores);
    /* Distinct items in random order, as the retriever pushes them. */
    for (int i = 0; i < n; i++)
        all[i].item = (int32_t)(i * 7 + 3);
    for (int i = n - 1; i > 0; i--) {
        int j = tu_int(&rng, 0, i);
        int32_t t = all[i].item;
        all[i].item = all[j].item;
        all[j].item = t;
    }
    lm_topk t;
    lm_topk_init(&t, items, scores, k);
    tu_fill(scores, (size_t)k + 4, -7.0f);
    int n_valid = 0, n_nan = 0;
    for (int i = 0; i < n; i++) {
        int r = tu_int(&rng, 0, 11);
        float s = topk_cases[_i].values == 1 ? 0.25f : pool5[r % 5];
        if (r == 11) {
            s = NAN; /* ignored */
            n_nan++;
        } else if (r == 10) {
            s = -INFINITY;
        }
        lm_topk_push(&t, all[i].item, s);
        if (s == s)
            all[n_valid++] = (pair){.score = s, .item = all[i].item};
    }
    int got = lm_topk_finish(&t);
    qsort(all, (size_t)n_valid, sizeof *all, pair_cmp);
    int want = k < n_valid ? k : n_valid;
    ck_assert_int_eq(got, want);
    for (int i = 0; i < want; i++)
        ck_assert_msg(items[i] == all[i].item && memcmp(&scores[i], &all[i].score, sizeof(float)) == 0,
                      "k=%d n=%d: entry %d is (%g, %d), expected (%g, %d)", k, n, i, scores[i],
                      items[i], all[i].score, all[i].item);
    for (int i = want; i < k + 4; i++)
        ck_assert_msg(scores[i] == -7.0f, "entry %d past the %d kept was written", i, want);
    printf("topk        k=%-3d n=%-4d %s: %d kept (%d NaN ignored) equal a full sort (score desc, "
           "item asc), bitwise\n", k, n, topk_cases[_i].values == 1 ? "all tied   " : "5 values+inf",
           got, n_nan);
    free(all);
    free(items);
    free(scores);
}
END_TEST

/* ---- fixtures: a model, a scorer whose pool the retriever borrows, users ---------- */

#define SYN_ITEMS 4099
#define SYN_D 24

/* Writes a random ranker-v1 artifact with SYN_ITEMS items, in which one item
 * row in six is a copy of another; dup_of[i] is the row item i copies (i
 * itself for an original). Item 0's row is large, so that it would top every
 * list that did not leave it out. */
static void write_synthetic(const char *path, int32_t *dup_of)
{
    char err[CM_ERRSZ] = "";
    const lm_config cfg = {.d_model = SYN_D, .n_heads = 2, .n_layers = 1, .d_ffn = 8, .max_hist = 4,
                           .n_items = SYN_ITEMS, .n_actions = 2};
    tu_rng rng = {.s = 4242};
    lm_st_writer *w = lm_st_writer_new();
    ck_assert_ptr_nonnull(w);
    static const char *const keys[] = {"d_model", "n_heads", "n_layers", "d_ffn", "max_hist", "n_items",
                                       "n_actions"};
    const int vals[] = {cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.d_ffn, cfg.max_hist, cfg.n_items,
                        cfg.n_actions};
    ck_assert(lm_st_writer_meta(w, "arch", LM_ARCH, err, sizeof err) == 0);
    for (int i = 0; i < 7; i++) {
        char v[16];
        snprintf(v, sizeof v, "%d", vals[i]);
        ck_assert_msg(lm_st_writer_meta(w, keys[i], v, err, sizeof err) == 0, "%s", err);
    }
    lm_tensor_spec specs[32];
    ck_assert_int_le(lm_tensor_specs_max(&cfg), 32);
    int n = lm_tensor_specs(&cfg, specs);
    for (int s = 0; s < n; s++) {
        size_t rows = (size_t)specs[s].shape[0], cols = specs[s].ndim == 2 ? (size_t)specs[s].shape[1] : 1;
        float *data = malloc(sizeof(float) * rows * cols);
        ck_assert_ptr_nonnull(data);
        for (size_t i = 0; i < rows * cols; i++)
            data[i] = 0.5f * tu_normal(&rng);
        if (strcmp(specs[s].name, "item_emb") == 0) {
            for (int it = 0; it < SYN_ITEMS; it++)
                dup_of[it] = it;
            for (int it = 1; it < SYN_ITEMS; it++)
                if (tu_int(&rng, 0, 5) == 0)
                    dup_of[it] = -1; /* a copy; its source is chosen below */
            for (int it = 1; it < SYN_ITEMS; it++) {
                if (dup_of[it] != -1)
                    continue;
                int src;
                do
                    src = tu_int(&rng, 1, SYN_ITEMS - 1);
                while (dup_of[src] != src);
                memcpy(data + (size_t)it * cols, data + (size_t)src * cols, sizeof(float) * cols);
                dup_of[it] = src;
            }
            for (size_t i = 0; i < cols; i++)
                data[i] *= 20.0f;
        }
        ck_assert_msg(lm_st_writer_add(w, specs[s].name, LM_DT_F32, specs[s].ndim, specs[s].shape, data,
                                       err, sizeof err) == 0, "%s", err);
        free(data);
    }
    ck_assert_msg(lm_st_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    lm_st_writer_free(w);
}

typedef struct fixture {
    char name[32];        /* "small fp32", ... */
    lm_model *m;
    lm_scorer *scorer;    /* owns the pool; threads 2 */
    int d, n_users;
    float *users;         /* [n_users, d] */
    int32_t *dup_of;      /* [n_items] for the synthetic catalog, else NULL */
} fixture;

#define N_FIXTURES 4 /* small fp32, small int8, synthetic fp32, synthetic int8 */

static void fixture_open(fixture *fx, int which)
{
    const int int8 = which & 1, synthetic = which >> 1;
    memset(fx, 0, sizeof *fx);
    snprintf(fx->name, sizeof fx->name, "%s %s", synthetic ? "synthetic" : "small", int8 ? "int8" : "fp32");
    tu_rng rng = {.s = 900 + (uint64_t)which};
    tu_io io = {0};
    int n_random = 4;
    if (synthetic) {
        char path[TU_PATH], q[TU_PATH];
        fx->dup_of = malloc(sizeof(int32_t) * SYN_ITEMS);
        ck_assert_ptr_nonnull(fx->dup_of);
        tu_tmp_path(path, "synthetic.safetensors");
        write_synthetic(path, fx->dup_of);
        if (int8)
            tu_quantize(path, "synthetic.int8.safetensors", q);
        fx->m = tu_model_load(int8 ? q : path);
        n_random = 7;
    } else {
        fx->m = tu_case_model("small", int8);
        tu_io_load(&io, "small");
    }
    fx->d = fx->m->cfg.d_model;
    int n_golden = synthetic ? 0 : io.B;
    fx->n_users = n_golden + n_random + 1;
    fx->users = malloc(sizeof(float) * (size_t)fx->n_users * fx->d);
    ck_assert_ptr_nonnull(fx->users);
    fx->scorer = tu_scorer(fx->m, synthetic ? 1 : io.B, synthetic ? 1 : io.m, 2, LM_ISA_COUNT);
    if (!synthetic) {
        /* The model's own user vectors for the golden histories (user 0 has none: ln_f.bias). */
        float *scores = malloc(sizeof(float) * (size_t)io.B * io.m);
        lm_request *reqs = malloc(sizeof *reqs * (size_t)io.B);
        ck_assert(scores && reqs);
        for (int b = 0; b < io.B; b++)
            reqs[b] = tu_io_request(&io, b, scores + (size_t)b * io.m, fx->users + (size_t)b * fx->d);
        tu_run(fx->scorer, reqs, io.B);
        free(scores);
        free(reqs);
        tu_io_free(&io);
    }
    for (int u = n_golden; u < n_golden + n_random; u++)
        for (int i = 0; i < fx->d; i++)
            fx->users[(size_t)u * fx->d + i] = tu_normal(&rng);
    if (synthetic) { /* the direction of item 0's row, at unit RMS: item 0 would win by far */
        lm_model_item_row(fx->m, 0, fx->users);
        double ss = 0.0;
        for (int i = 0; i < fx->d; i++)
            ss += (double)fx->users[i] * fx->users[i];
        for (int i = 0; i < fx->d; i++)
            fx->users[i] = (float)(fx->users[i] / sqrt(ss / fx->d));
    }
    /* The last user is all zeros: every logit is exactly 0, so the answer is items 1..k. */
    memset(fx->users + (size_t)(fx->n_users - 1) * fx->d, 0, sizeof(float) * fx->d);
}

static void fixture_close(fixture *fx)
{
    lm_scorer_free(fx->scorer);
    lm_model_free(fx->m);
    free(fx->users);
    free(fx->dup_of);
}

static lm_retriever *make_retriever(const fixture *fx, lm_scorer *s, lm_isa isa, int max_batch)
{
    char err[CM_ERRSZ] = "";
    lm_retriever *r = NULL;
    ck_assert_msg(lm_retriever_new(&r, fx->m, lm_scorer_pool(s), isa, max_batch, MAX_K, MAX_EXCL, err,
                                   sizeof err) == 0, "lm_retriever_new: %s", err);
    return r;
}

static void retrieve(lm_retriever *r, lm_retrieval *reqs, int n)
{
    char err[CM_ERRSZ] = "";
    ck_assert_msg(lm_retrieve(r, reqs, n, err, sizeof err) == 0, "lm_retrieve: %s", err);
}

/* An empty exclusion list that is not NULL: lm_retrieve with exclude == NULL
 * and n_exclude == 0 has its own test (test_retrieve_null_exclude), so that
 * a failure there does not hide what the other tests check. */
static const int32_t no_excl[1] = {0};

/* ---- brute force ------------------------------------------------------------------- */

static int in_list(const int32_t *list, int n, int32_t item)
{
    for (int i = 0; i < n; i++)
        if (list[i] == item)
            return 1;
    return 0;
}

typedef struct brute {
    int n;           /* items eligible: 1..n_items-1 minus exclusions */
    int32_t *item;   /* [n], best first */
    double *logit;   /* [n_items] double logit (fp32 models) */
    float *exact;    /* [n_items] the int8 definition's float score (int8 models) */
} brute;

static const brute *cmp_ctx;

static int by_logit(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    double lx = cmp_ctx->logit[x], ly = cmp_ctx->logit[y];
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return (x > y) - (x < y);
}

static int by_exact(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float sx = cmp_ctx->exact[x], sy = cmp_ctx->exact[y];
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return (x > y) - (x < y);
}

/* Every eligible item, ranked. fp32: logits in double from the model's item
 * rows. int8: the int8 path's own definition: the user vector quantized by
 * the reference quantizer, int32 dot products with the stored int8 rows,
 * then (float)acc * (s_user * s_item), the formula the kernels promise to
 * reproduce bit for bit. */
static void brute_force(brute *bf, const lm_model *m, const float *u, const int32_t *excl, int n_excl)
{
    const int N = m->cfg.n_items, d = m->cfg.d_model;
    bf->item = malloc(sizeof(int32_t) * N);
    bf->logit = malloc(sizeof(double) * N);
    bf->exact = malloc(sizeof(float) * N);
    float *row = malloc(sizeof(float) * d);
    int8_t *uq = malloc((size_t)d);
    ck_assert(bf->item && bf->logit && bf->exact && row && uq);
    float us;
    lm_quantize_row_ref(u, d, uq, &us);
    bf->n = 0;
    for (int it = 0; it < N; it++) {
        lm_model_item_row(m, it, row);
        double acc = 0.0;
        for (int i = 0; i < d; i++)
            acc += (double)row[i] * (double)u[i];
        bf->logit[it] = acc;
        if (m->quant == LM_QUANT_INT8) {
            int32_t qacc = 0;
            for (int i = 0; i < d; i++)
                qacc += (int32_t)uq[i] * lm_pq8_get(&m->item.q, it, i);
            bf->exact[it] = (float)qacc * (us * m->item.q.scale[it]);
        }
        if (it != 0 && !in_list(excl, n_excl, it))
            bf->item[bf->n++] = it;
    }
    cmp_ctx = bf;
    qsort(bf->item, (size_t)bf->n, sizeof(int32_t), m->quant == LM_QUANT_INT8 ? by_exact : by_logit);
    free(row);
    free(uq);
}

static void brute_free(brute *bf)
{
    free(bf->item);
    free(bf->logit);
    free(bf->exact);
}

typedef struct verdict {
    double max_err;  /* fp32: max |score - double logit| */
    int boundary;    /* fp32: eligible items within BOUNDARY_TOL of the k-th logit */
    int swapped;     /* fp32: returned items that are not in the brute-force top-k */
    int ties;        /* returned items tied with a lower item of the same row */
} verdict;

/* Checks one answer against brute force; `what` names it in failures. */
static void check_answer(const fixture *fx, const lm_retrieval *rq, const brute *bf, const char *what,
                         verdict *v)
{
    const lm_model *m = fx->m;
    const int k = rq->k, want = k < bf->n ? k : bf->n, N = m->cfg.n_items;
    ck_assert_msg(rq->n_out == want, "%s: n_out %d, expected %d", what, rq->n_out, want);
    /* Valid, distinct, eligible, ordered by (score desc, item asc). */
    for (int j = 0; j < want; j++) {
        int32_t it = rq->items[j];
        ck_assert_msg(it >= 1 && it < N, "%s: entry %d is item %d", what, j, it);
        ck_assert_msg(!in_list(rq->exclude, rq->n_exclude, it), "%s: excluded item %d returned", what, it);
        ck_assert_msg(!in_list(rq->items, j, it), "%s: item %d returned twice", what, it);
        if (j > 0)
            ck_assert_msg(rq->scores[j - 1] > rq->scores[j] ||
                              (rq->scores[j - 1] == rq->scores[j] && rq->items[j - 1] < it),
                          "%s: entries %d (%g, %d) and %d (%g, %d) out of order", what, j - 1,
                          rq->scores[j - 1], rq->items[j - 1], j, rq->scores[j], it);
    }
    /* Equal rows give equal scores (fp32 and int8 alike), so ties must go to
     * the lower item: if item `it` is returned, every eligible lower item with
     * its row is returned too, earlier. */
    for (int j = 0; fx->dup_of && j < want; j++) {
        int32_t it = rq->items[j];
        for (int32_t lo = 1; lo < it; lo++) {
            if (fx->dup_of[lo] != fx->dup_of[it] || in_list(rq->exclude, rq->n_exclude, lo))
                continue;
            ck_assert_msg(in_list(rq->items, j, lo),
                          "%s: item %d returned at %d without the lower item %d that has the same row",
                          what, it, j, lo);
            v->ties++;
        }
    }
    if (m->quant == LM_QUANT_INT8) {
        for (int j = 0; j < want; j++)
            ck_assert_msg(rq->items[j] == bf->item[j] &&
                              memcmp(&rq->scores[j], &bf->exact[bf->item[j]], sizeof(float)) == 0,
                          "%s: entry %d is (%.9g, %d), the int8 brute force says (%.9g, %d)", what, j,
                          rq->scores[j], rq->items[j], bf->exact[bf->item[j]], bf->item[j]);
        return;
    }
    if (want == 0)
        return;
    /* fp32: the k-th logit is the boundary; items clearly above it must all be
     * there, and nothing clearly below it may be. */
    const double t = bf->logit[bf->item[want - 1]];
    char *returned = calloc((size_t)N, 1);
    ck_assert_ptr_nonnull(returned);
    for (int j = 0; j < want; j++) {
        int32_t it = rq->items[j];
        double e = fabs((double)rq->scores[j] - bf->logit[it]);
        v->max_err = e > v->max_err ? e : v->max_err;
        ck_assert_msg(e <= SCORE_TOL, "%s: item %d scored %.9g, the double logit is %.9g", what, it,
                      rq->scores[j], bf->logit[it]);
        ck_assert_msg(bf->logit[it] >= t - BOUNDARY_TOL,
                      "%s: item %d (logit %.9g) returned, but the k-th logit is %.9g", what, it,
                      bf->logit[it], t);
        returned[it] = 1;
    }
    int zero = 1;
    for (int i = 0; i < fx->d && zero; i++)
        zero = rq->user_vec[i] == 0.0f;
    for (int j = 0; j < bf->n; j++) {
        int32_t it = bf->item[j];
        double l = bf->logit[it];
        v->boundary += !zero && j != want - 1 && fabs(l - t) <= BOUNDARY_TOL;
        ck_assert_msg(l <= t + BOUNDARY_TOL || returned[it],
                      "%s: item %d (logit %.9g) is missing; the k-th logit is %.9g", what, it, l, t);
        v->swapped += j >= want && returned[it];
    }
    /* u = 0: every logit is exactly 0 in any summation order, so the answer is
     * the lowest eligible items, in order. */
    for (int j = 0; zero && j < want; j++)
        ck_assert_msg(rq->items[j] == bf->item[j] && rq->scores[j] == 0.0f,
                      "%s: zero user: entry %d is (%g, %d), expected (0, %d)", what, j, rq->scores[j],
                      rq->items[j], bf->item[j]);
    free(returned);
}

/* ---- lm_retrieve against brute force ------------------------------------------------ */

/* One request per user, all with k, `n_excl` exclusions each from `excl` [n_users][MAX_EXCL]. */
static void make_requests(const fixture *fx, lm_retrieval *reqs, int k, const int32_t *excl,
                          const int *n_excl, int32_t *items, float *scores)
{
    for (int u = 0; u < fx->n_users; u++) {
        reqs[u] = (lm_retrieval){
            .user_vec = fx->users + (size_t)u * fx->d,
            .exclude = excl ? excl + (size_t)u * MAX_EXCL : no_excl,
            .n_exclude = excl ? n_excl[u] : 0,
            .k = k,
            .items = items + (size_t)u * MAX_K,
            .scores = scores + (size_t)u * MAX_K,
            .n_out = -1,
        };
        for (int j = 0; j < MAX_K; j++) {
            reqs[u].items[j] = -5;
            reqs[u].scores[j] = NAN;
        }
    }
}

static void print_verdict(const char *test, const fixture *fx, lm_isa isa, int k, const verdict *v)
{
    if (fx->m->quant == LM_QUANT_INT8)
        printf("%-11s %-14s isa=%-6s k=%-3d: %d users, items and score bits equal the int8 brute "
               "force (tol 0); %d returned items tied with a same-row lower item\n", test, fx->name,
               lm_isa_name(isa), k, fx->n_users, v->ties);
    else
        printf("%-11s %-14s isa=%-6s k=%-3d: %d users, scores max|err| %.3e (tol %.0e); items equal "
               "the double brute-force top-k up to %d other items within %.0e of the k-th logit (%d "
               "swapped in); %d same-row ties\n", test, fx->name, lm_isa_name(isa), k, fx->n_users,
               v->max_err, SCORE_TOL, v->boundary, BOUNDARY_TOL, v->swapped, v->ties);
}

START_TEST(test_retrieve_brute)
{
    fixture fx;
    fixture_open(&fx, _i);
    lm_retrieval *reqs = malloc(sizeof *reqs * (size_t)fx.n_users);
    int32_t *items = malloc(sizeof(int32_t) * (size_t)fx.n_users * MAX_K);
    float *scores = malloc(sizeof(float) * (size_t)fx.n_users * MAX_K);
    brute *bf = malloc(sizeof *bf * (size_t)fx.n_users);
    ck_assert(reqs && items && scores && bf);
    for (int u = 0; u < fx.n_users; u++)
        brute_force(&bf[u], fx.m, fx.users + (size_t)u * fx.d, NULL, 0);
    lm_isa isas[LM_ISA_COUNT];
    int n_isa = tu_isas(isas, _i == 0);
    static const int ks[] = {1, 10, 100, MAX_K};
    for (int i = 0; i < n_isa; i++) {
        lm_retriever *r = make_retriever(&fx, fx.scorer, isas[i], fx.n_users);
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            verdict v = {0};
            make_requests(&fx, reqs, ks[ki], NULL, NULL, items, scores);
            retrieve(r, reqs, fx.n_users);
            for (int u = 0; u < fx.n_users; u++) {
                char what[96];
                snprintf(what, sizeof what, "%s isa=%s k=%d user %d", fx.name, lm_isa_name(isas[i]),
                         ks[ki], u);
                check_answer(&fx, &reqs[u], &bf[u], what, &v);
                for (int j = reqs[u].n_out; j < MAX_K; j++)
                    ck_assert_msg(reqs[u].items[j] == -5, "%s: entry %d past n_out written", what, j);
            }
            print_verdict("retrieve", &fx, isas[i], ks[ki], &v);
        }
        lm_retriever_free(r);
    }
    for (int u = 0; u < fx.n_users; u++)
        brute_free(&bf[u]);
    free(bf);
    free(reqs);
    free(items);
    free(scores);
    fixture_close(&fx);
}
END_TEST

/* ---- exclusions ----------------------------------------------------------------------- */

/* For each user: every other item of its unexcluded top 2k (so exclusions
 * change the answer), one of them repeated, item 0, ids outside the catalog,
 * and a few random items; then shuffled. */
static void make_exclusions(const fixture *fx, int k, int32_t *excl, int *n_excl, tu_rng *rng)
{
    for (int u = 0; u < fx->n_users; u++) {
        brute bf;
        brute_force(&bf, fx->m, fx->users + (size_t)u * fx->d, NULL, 0);
        int32_t *e = excl + (size_t)u * MAX_EXCL;
        int n = 0;
        for (int j = 0; j < 2 * k && j < bf.n && n < MAX_EXCL - 12; j += 2)
            e[n++] = bf.item[j];
        int half = n / 2;
        e[n++] = e[0];
        e[n++] = e[half];
        e[n++] = 0;
        e[n++] = -7;
        e[n++] = fx->m->cfg.n_items;
        e[n++] = INT32_MAX;
        for (int j = 0; j < 4; j++)
            e[n++] = tu_int(rng, 1, fx->m->cfg.n_items - 1);
        for (int j = n - 1; j > 0; j--) {
            int x = tu_int(rng, 0, j);
            int32_t t = e[j];
            e[j] = e[x];
            e[x] = t;
        }
        n_excl[u] = n;
        brute_free(&bf);
    }
}

START_TEST(test_retrieve_exclusions)
{
    fixture fx;
    fixture_open(&fx, _i);
    tu_rng rng = {.s = 700 + (uint64_t)_i};
    const int k = 20;
    lm_retrieval *reqs = malloc(sizeof *reqs * (size_t)fx.n_users);
    int32_t *items = malloc(sizeof(int32_t) * (size_t)fx.n_users * MAX_K);
    float *scores = malloc(sizeof(float) * (size_t)fx.n_users * MAX_K);
    int32_t *excl = malloc(sizeof(int32_t) * (size_t)fx.n_users * MAX_EXCL);
    int *n_excl = malloc(sizeof(int) * (size_t)fx.n_users);
    brute *bf = malloc(sizeof *bf * (size_t)fx.n_users);
    ck_assert(reqs && items && scores && excl && n_excl && bf);
    make_exclusions(&fx, k, excl, n_excl, &rng);
    for (int u = 0; u < fx.n_users; u++)
        brute_force(&bf[u], fx.m, fx.users + (size_t)u * fx.d, excl + (size_t)u * MAX_EXCL, n_excl[u]);
    lm_isa isas[LM_ISA_COUNT];
    int n_isa = tu_isas(isas, 0);
    for (int i = 0; i < n_isa; i++) {
        lm_retriever *r = make_retriever(&fx, fx.scorer, isas[i], fx.n_users);
        verdict v = {0};
        make_requests(&fx, reqs, k, excl, n_excl, items, scores);
        retrieve(r, reqs, fx.n_users);
        for (int u = 0; u < fx.n_users; u++) {
            char what[96];
            snprintf(what, sizeof what, "%s isa=%s excluding %d, user %d", fx.name, lm_isa_name(isas[i]),
                     n_excl[u], u);
            check_answer(&fx, &reqs[u], &bf[u], what, &v);
        }
        print_verdict("exclusions", &fx, isas[i], k, &v);
        lm_retriever_free(r);
    }
    printf("exclusions  %-14s: each user excludes every other item of its top %d, repeats, item 0, "
           "-7, n_items, INT32_MAX and random items (%d ids), unsorted; none came back\n", fx.name,
           2 * k, n_excl[0]);
    for (int u = 0; u < fx.n_users; u++)
        brute_free(&bf[u]);
    free(bf);
    free(reqs);
    free(items);
    free(scores);
    free(excl);
    free(n_excl);
    fixture_close(&fx);
}
END_TEST

/* A catalog smaller than k: tiny has 49 real items (row 0 is padding). */
START_TEST(test_retrieve_small_catalog)
{
    const int int8 = _i;
    fixture fx = {0};
    snprintf(fx.name, sizeof fx.name, "tiny %s", int8 ? "int8" : "fp32");
    fx.m = tu_case_model("tiny", int8);
    fx.d = fx.m->cfg.d_model;
    fx.n_users = 1;
    fx.users = malloc(sizeof(float) * fx.d);
    ck_assert_ptr_nonnull(fx.users);
    tu_rng rng = {.s = 31};
    for (int i = 0; i < fx.d; i++)
        fx.users[i] = tu_normal(&rng);
    fx.scorer = tu_scorer(fx.m, 1, 1, 3, LM_ISA_COUNT);
    lm_retriever *r = make_retriever(&fx, fx.scorer, LM_ISA_COUNT, 1);
    const int N = fx.m->cfg.n_items;
    /* 10 distinct items, repeated, plus 0: 49 - 10 = 39 remain. */
    int32_t excl[24];
    int n_excl = 0;
    for (int j = 0; j < 10; j++)
        excl[n_excl++] = (int32_t)(N - 1 - 4 * j);
    for (int j = 0; j < 10; j += 3)
        excl[n_excl++] = excl[j];
    excl[n_excl++] = 0;
    static const struct {
        int k, excluding, want;
    } cases[] = {{64, 0, 49}, {49, 0, 49}, {48, 0, 48}, {64, 1, 39}, {39, 1, 39}, {40, 1, 39}, {1, 1, 1}};
    int32_t items[MAX_K];
    float scores[MAX_K];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        lm_retrieval rq = {.user_vec = fx.users, .exclude = cases[c].excluding ? excl : no_excl,
                           .n_exclude = cases[c].excluding ? n_excl : 0, .k = cases[c].k,
                           .items = items, .scores = scores, .n_out = -1};
        for (int j = 0; j < MAX_K; j++) {
            items[j] = -5;
            scores[j] = -5.0f;
        }
        retrieve(r, &rq, 1);
        brute bf;
        brute_force(&bf, fx.m, fx.users, rq.exclude, rq.n_exclude);
        ck_assert_int_eq(cases[c].want, rq.k < bf.n ? rq.k : bf.n);
        char what[64];
        snprintf(what, sizeof what, "%s k=%d", fx.name, rq.k);
        verdict v = {0};
        check_answer(&fx, &rq, &bf, what, &v);
        ck_assert_int_eq(rq.n_out, cases[c].want);
        for (int j = rq.n_out; j < MAX_K; j++)
            ck_assert_msg(items[j] == -5 && scores[j] == -5.0f, "%s: entry %d past n_out written", what, j);
        printf("catalog     %-9s k=%-2d excluding %-2d ids: n_out %d (expected %d), entries equal brute "
               "force, nothing written past n_out\n", fx.name, rq.k, rq.n_exclude, rq.n_out,
               cases[c].want);
        brute_free(&bf);
    }
    lm_retriever_free(r);
    fixture_close(&fx);
}
END_TEST

/* ---- invariance: threads, batching, order ------------------------------------------ */

typedef struct answer {
    int32_t items[MAX_K];
    float scores[MAX_K];
    int n_out;
} answer;

/* Retrieves every user's request in `order`, `per_call` at a time; answers by user. */
static void retrieve_arranged(lm_retriever *r, const fixture *fx, const int *ks, const int32_t *excl,
                              const int *n_excl, const int *order, int per_call, answer *out)
{
    lm_retrieval *reqs = malloc(sizeof *reqs * (size_t)fx->n_users);
    ck_assert_ptr_nonnull(reqs);
    memset(out, 0xff, sizeof *out * (size_t)fx->n_users);
    for (int i = 0; i < fx->n_users; i++) {
        int u = order[i];
        reqs[i] = (lm_retrieval){.user_vec = fx->users + (size_t)u * fx->d,
                                 .exclude = excl + (size_t)u * MAX_EXCL, .n_exclude = n_excl[u],
                                 .k = ks[u], .items = out[u].items, .scores = out[u].scores};
    }
    for (int i = 0; i < fx->n_users; i += per_call)
        retrieve(r, reqs + i, fx->n_users - i < per_call ? fx->n_users - i : per_call);
    for (int i = 0; i < fx->n_users; i++)
        out[order[i]].n_out = reqs[i].n_out;
    free(reqs);
}

START_TEST(test_retrieve_invariance)
{
    fixture fx;
    fixture_open(&fx, _i);
    tu_rng rng = {.s = 800 + (uint64_t)_i};
    const int U = fx.n_users;
    int *ks = malloc(sizeof(int) * U), *n_excl = malloc(sizeof(int) * U);
    int *natural = malloc(sizeof(int) * U), *reversed = malloc(sizeof(int) * U);
    int32_t *excl = malloc(sizeof(int32_t) * (size_t)U * MAX_EXCL);
    answer *ref = malloc(sizeof *ref * U), *got = malloc(sizeof *got * U);
    ck_assert(ks && n_excl && natural && reversed && excl && ref && got);
    make_exclusions(&fx, 10, excl, n_excl, &rng);
    for (int u = 0; u < U; u++) {
        static const int kk[] = {1, 7, 16, 50, MAX_K};
        ks[u] = kk[u % 5];
        natural[u] = u;
        reversed[u] = U - 1 - u;
        if (u % 3 == 2)
            n_excl[u] = 0; /* some users exclude nothing */
    }
    lm_scorer *sc[4] = {NULL};
    for (int t = 1; t <= 3; t++)
        sc[t] = tu_scorer(fx.m, 1, 1, t, LM_ISA_COUNT);
    lm_isa isas[LM_ISA_COUNT];
    int n_isa = tu_isas(isas, 0);
    for (int i = 0; i < n_isa; i++) {
        lm_retriever *r[4] = {NULL};
        for (int t = 1; t <= 3; t++)
            r[t] = make_retriever(&fx, sc[t], isas[i], U);
        retrieve_arranged(r[1], &fx, ks, excl, n_excl, natural, U, ref);
        const struct {
            const char *what;
            int threads;
            const int *order;
            int per_call;
        } arr[] = {
            {"batch, threads 2", 2, natural, U},        {"batch, threads 3", 3, natural, U},
            {"reversed, threads 3", 3, reversed, U},    {"one at a time, threads 1", 1, natural, 1},
            {"one at a time, threads 2", 2, reversed, 1}, {"pairs, threads 3", 3, natural, 2},
        };
        int n_arr = (int)(sizeof arr / sizeof arr[0]);
        for (int a = 0; a < n_arr; a++) {
            retrieve_arranged(r[arr[a].threads], &fx, ks, excl, n_excl, arr[a].order, arr[a].per_call, got);
            for (int u = 0; u < U; u++) {
                ck_assert_msg(got[u].n_out == ref[u].n_out && ref[u].n_out == ks[u] &&
                                  memcmp(got[u].items, ref[u].items, sizeof(int32_t) * ks[u]) == 0 &&
                                  memcmp(got[u].scores, ref[u].scores, sizeof(float) * ks[u]) == 0,
                              "%s isa=%s: \"%s\" differs from batch/threads 1 for user %d (k=%d)", fx.name,
                              lm_isa_name(isas[i]), arr[a].what, u, ks[u]);
            }
        }
        printf("invariance  %-14s isa=%-6s: %d arrangements (threads 1-3, batch / one / pairs, order) "
               "bitwise equal to batch/threads 1, %d users, k 1..%d, with exclusions\n", fx.name,
               lm_isa_name(isas[i]), n_arr, U, MAX_K);
        for (int t = 1; t <= 3; t++)
            lm_retriever_free(r[t]);
    }
    for (int t = 1; t <= 3; t++)
        lm_scorer_free(sc[t]);
    free(ks);
    free(n_excl);
    free(natural);
    free(reversed);
    free(excl);
    free(ref);
    free(got);
    fixture_close(&fx);
}
END_TEST

/* retrieval.h allows exclude == NULL when n_exclude == 0 (lm_retrieve checks
 * `n_exclude && !exclude`), and the answer must equal that of an empty list.
 * Under UBSan this also checks that the call does no undefined behaviour
 * with the NULL list (such as memcpy from NULL, which C11 forbids even for
 * zero bytes). */
START_TEST(test_retrieve_null_exclude)
{
    lm_model *m = tu_case_model("tiny", _i);
    lm_scorer *s = tu_scorer(m, 1, 1, 2, LM_ISA_COUNT);
    char err[CM_ERRSZ] = "";
    lm_retriever *r = NULL;
    ck_assert_msg(lm_retriever_new(&r, m, lm_scorer_pool(s), LM_ISA_COUNT, 1, 8, 4, err, sizeof err) == 0,
                  "%s", err);
    float user[64] = {0};
    tu_rng rng = {.s = 5};
    for (int i = 0; i < m->cfg.d_model; i++)
        user[i] = tu_normal(&rng);
    int32_t items[2][8];
    float scores[2][8];
    lm_retrieval a = {.user_vec = user, .exclude = no_excl, .k = 8, .items = items[0], .scores = scores[0]};
    lm_retrieval b = {.user_vec = user, .exclude = NULL, .k = 8, .items = items[1], .scores = scores[1]};
    ck_assert_msg(lm_retrieve(r, &a, 1, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(lm_retrieve(r, &b, 1, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(a.n_out, 8);
    ck_assert_int_eq(b.n_out, 8);
    ck_assert(memcmp(items[0], items[1], sizeof items[0]) == 0 &&
              memcmp(scores[0], scores[1], sizeof scores[0]) == 0);
    printf("null-excl   tiny %s: exclude = NULL, n_exclude = 0 gives the answer of an empty list\n",
           _i ? "int8" : "fp32");
    lm_retriever_free(r);
    lm_scorer_free(s);
    lm_model_free(m);
}
END_TEST

/* ---- validation ------------------------------------------------------------------------ */

enum { RV_K0, RV_K_BIG, RV_EXCL_MANY, RV_EXCL_NEG, RV_BATCH_BIG, RV_BATCH_NEG, RV_NULL_USER,
       RV_NULL_ITEMS, RV_NULL_SCORES, RV_NULL_EXCL, N_RV };

START_TEST(test_retrieve_validation)
{
    lm_model *m = tu_case_model("tiny", 0);
    lm_scorer *s = tu_scorer(m, 1, 1, 2, LM_ISA_COUNT);
    char err[CM_ERRSZ] = "";
    lm_retriever *r = NULL;
    ck_assert_msg(lm_retriever_new(&r, m, lm_scorer_pool(s), LM_ISA_COUNT, 2, 10, 4, err, sizeof err) == 0,
                  "%s", err);
    float users[3][64] = {{0}};
    int32_t items[3][16], excl[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float scores[3][16];
    lm_retrieval reqs[3];
    for (int b = 0; b < 3; b++) {
        users[b][b] = 1.0f;
        reqs[b] = (lm_retrieval){.user_vec = users[b], .exclude = excl, .n_exclude = 2, .k = 5,
                                 .items = items[b], .scores = scores[b], .n_out = -9};
        for (int j = 0; j < 16; j++) {
            items[b][j] = -5;
            scores[b][j] = -5.0f;
        }
    }
    int n = 2;
    const char *want;
    lm_retrieval *bad = &reqs[1];
    switch (_i) {
    case RV_K0: bad->k = 0; want = "retrieval 1: k = 0, this retriever takes 1..10"; break;
    case RV_K_BIG: bad->k = 11; want = "retrieval 1: k = 11, this retriever takes 1..10"; break;
    case RV_EXCL_MANY: bad->n_exclude = 5; want = "retrieval 1: 5 exclusions, this retriever takes 0..4"; break;
    case RV_EXCL_NEG: bad->n_exclude = -1; want = "retrieval 1: -1 exclusions"; break;
    case RV_BATCH_BIG: n = 3; want = "retrieval batch of 3, this retriever takes 0..2"; break;
    case RV_BATCH_NEG: n = -1; want = "retrieval batch of -1"; break;
    case RV_NULL_USER: bad->user_vec = NULL; want = "retrieval 1: user_vec is NULL"; break;
    case RV_NULL_ITEMS: bad->items = NULL; want = "retrieval 1: items is NULL"; break;
    case RV_NULL_SCORES: bad->scores = NULL; want = "retrieval 1: scores is NULL"; break;
    default: bad->exclude = NULL; want = "retrieval 1: exclude is NULL"; break;
    }
    err[0] = '\0';
    ck_assert_int_eq(lm_retrieve(r, reqs, n, err, sizeof err), -1);
    ck_assert_msg(strstr(err, want) != NULL, "message lacks \"%s\": %s", want, err);
    for (int b = 0; b < 3; b++) {
        ck_assert_msg(reqs[b].n_out == -9, "request %d: n_out written by a rejected call", b);
        for (int j = 0; j < 16; j++)
            ck_assert_msg(items[b][j] == -5 && scores[b][j] == -5.0f, "request %d: output %d written", b, j);
    }
    printf("retr-valid  %-2d: \"%s\"; nothing written\n", _i, err);
    /* The retriever still answers; n = 0 is a valid empty batch; no exclusions may come with NULL. */
    reqs[1] = (lm_retrieval){.user_vec = users[1], .exclude = no_excl, .k = 10, .items = items[1],
                             .scores = scores[1]};
    ck_assert_msg(lm_retrieve(r, reqs, 2, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(reqs[0].n_out, 5);
    ck_assert_int_eq(reqs[1].n_out, 10);
    ck_assert_msg(lm_retrieve(r, NULL, 0, err, sizeof err) == 0, "%s", err);
    lm_retriever_free(r);
    lm_scorer_free(s);
    lm_model_free(m);
}
END_TEST

static void assert_retriever_new_fails(const lm_model *m, lm_pool *pool, lm_isa isa, int max_batch,
                                       int max_k, int max_exclude, const char *want)
{
    char err[CM_ERRSZ] = "";
    lm_retriever *r = (lm_retriever *)&r;
    ck_assert_int_eq(lm_retriever_new(&r, m, pool, isa, max_batch, max_k, max_exclude, err, sizeof err), -1);
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(err, want) != NULL, "message lacks \"%s\": %s", want, err);
    printf("retr-new    isa=%s max_batch=%d max_k=%d max_exclude=%d: \"%s\"\n",
           isa == LM_ISA_COUNT ? "default" : lm_isa_name(isa), max_batch,
           max_k, max_exclude, err);
}

START_TEST(test_retriever_new_errors)
{
    lm_model *m = tu_case_model("tiny", 0);
    lm_scorer *s = tu_scorer(m, 1, 1, 1, LM_ISA_COUNT);
    lm_pool *p = lm_scorer_pool(s);
    assert_retriever_new_fails(m, p, LM_ISA_COUNT, 0, 10, 0, "max_batch 0");
    assert_retriever_new_fails(m, p, LM_ISA_COUNT, 2, 0, 0, "max_k 0");
    assert_retriever_new_fails(m, p, LM_ISA_COUNT, 2, 10, -1, "max_exclude -1");
    int unavailable = 0;
    for (int i = LM_ISA_SCALAR; i < LM_ISA_COUNT; i++)
        if (!lm_kern_get((lm_isa)i)) {
            char want[64];
            snprintf(want, sizeof want, "cannot run the %s kernels", lm_isa_name((lm_isa)i));
            assert_retriever_new_fails(m, p, (lm_isa)i, 2, 10, 0, want);
            unavailable++;
        }
    if (!unavailable)
        printf("retr-new    this CPU runs every ISA: no unavailable ISA to refuse\n");
    lm_scorer_free(s);
    lm_model_free(m);
}
END_TEST

/* ---- suite ------------------------------------------------------------------------------ */

static Suite *retrieval_suite(void)
{
    Suite *s = suite_create("retrieval");
    TCase *tc;

    tc = tcase_create("topk");
    tcase_add_loop_test(tc, test_topk, 0, N_TOPK);
    suite_add_tcase(s, tc);

    tc = tcase_create("brute");
    tcase_add_loop_test(tc, test_retrieve_brute, 0, N_FIXTURES);
    tcase_set_timeout(tc, 120); /* ASan builds are several times slower */
    suite_add_tcase(s, tc);

    tc = tcase_create("exclusions");
    tcase_add_loop_test(tc, test_retrieve_exclusions, 0, N_FIXTURES);
    tcase_add_loop_test(tc, test_retrieve_small_catalog, 0, 2);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("invariance");
    tcase_add_loop_test(tc, test_retrieve_invariance, 0, N_FIXTURES);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("validation");
    tcase_add_loop_test(tc, test_retrieve_validation, 0, N_RV);
    tcase_add_loop_test(tc, test_retrieve_null_exclude, 0, 2);
    tcase_add_test(tc, test_retriever_new_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_main("check_retrieval", retrieval_suite());
}
