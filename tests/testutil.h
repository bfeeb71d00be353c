/* tests/testutil.h — helpers shared by the model suites (check_forward,
 * check_retrieval): the golden files of the reference implementation, a
 * scratch directory owned by main(), a seeded RNG, and float comparisons.
 * Header-only; every function is static inline, so a suite that does not
 * use one pays nothing for it.
 *
 * Golden files live in $RANKD_GOLDEN_DIR, or ../shared/golden relative to
 * the repository root (suites run from there). A missing file is a failure,
 * never a skip: a suite that silently tests nothing would pass in CI. */
#ifndef RANKD_TESTS_TESTUTIL_H
#define RANKD_TESTS_TESTUTIL_H

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "llm/forward.h"
#include "llm/model.h"
#include "llm/quantize.h"
#include "llm/safetensors.h"

#define TU_PATH 512

/* The golden cases the reference writes (ranker_v1.py golden). */
#define TU_N_CASES 3
static inline const char *tu_case_name(int i)
{
    static const char *const names[TU_N_CASES] = {"tiny", "small", "odd"};
    return names[i];
}

/* ---- files ------------------------------------------------------------------ */

static inline const char *tu_golden_dir(void)
{
    const char *dir = getenv("RANKD_GOLDEN_DIR");
    return dir && *dir ? dir : "../shared/golden";
}

/* Path of golden file `file`; fails the test when it cannot be read. */
static inline void tu_golden_path(char path[TU_PATH], const char *file)
{
    snprintf(path, TU_PATH, "%s/%s", tu_golden_dir(), file);
    ck_assert_msg(access(path, R_OK) == 0,
                  "golden file %s cannot be read (%s). The golden directory is $RANKD_GOLDEN_DIR "
                  "or ../shared/golden from the repository root; write it with "
                  "`python3 ../shared/reference/ranker_v1.py golden DIR` and run the suite from "
                  "the repository root", path, strerror(errno));
}

static inline void tu_weights_path(char path[TU_PATH], const char *case_name)
{
    char file[64];
    snprintf(file, sizeof file, "%s.weights.safetensors", case_name);
    tu_golden_path(path, file);
}

/* The scratch directory: made by tu_tmp_init() in main(), before Check
 * forks, so every test sees the same one; removed by tu_tmp_cleanup(). */
static inline char *tu_tmp_root(void)
{
    static char root[64] = "";
    return root;
}

static inline int tu_tmp_init(const char *suite)
{
    char *root = tu_tmp_root();
    snprintf(root, 64, "/tmp/%s.XXXXXX", suite);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

static inline void tu_tmp_path(char path[TU_PATH], const char *name)
{
    snprintf(path, TU_PATH, "%s/%s", tu_tmp_root(), name);
}

static inline void tu_tmp_cleanup(void)
{
    DIR *d = opendir(tu_tmp_root());
    struct dirent *e;
    char path[TU_PATH];
    while (d && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        tu_tmp_path(path, e->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(tu_tmp_root());
}

/* ---- models ----------------------------------------------------------------- */

static inline lm_model *tu_model_load(const char *path)
{
    char err[CM_ERRSZ] = "";
    lm_model *m = NULL;
    ck_assert_msg(lm_model_load(&m, path, err, sizeof err) == 0, "lm_model_load %s: %s", path, err);
    ck_assert_ptr_nonnull(m);
    return m;
}

/* Quantizes `in` into the scratch directory as `name`; returns the path. */
static inline void tu_quantize(const char *in, const char *name, char out[TU_PATH])
{
    char err[CM_ERRSZ] = "";
    lm_quantize_stats st;
    tu_tmp_path(out, name);
    ck_assert_msg(lm_quantize_file(in, out, &st, err, sizeof err) == 0, "lm_quantize_file %s: %s",
                  in, err);
}

/* Loads the fp32 golden weights of a case (int8 = 0) or their int8 form. */
static inline lm_model *tu_case_model(const char *case_name, int int8)
{
    char path[TU_PATH];
    tu_weights_path(path, case_name);
    if (int8) {
        char name[64], q[TU_PATH];
        snprintf(name, sizeof name, "%s.int8.safetensors", case_name);
        tu_quantize(path, name, q);
        return tu_model_load(q);
    }
    return tu_model_load(path);
}

static inline lm_scorer *tu_scorer(const lm_model *m, int max_batch, int max_cands, int threads,
                                   lm_isa isa)
{
    char err[CM_ERRSZ] = "";
    lm_scorer *s = NULL;
    lm_scorer_opts o = {.max_batch = max_batch, .max_cands = max_cands, .threads = threads, .isa = isa};
    ck_assert_msg(lm_scorer_new(&s, m, &o, err, sizeof err) == 0, "lm_scorer_new: %s", err);
    return s;
}

static inline void tu_run(lm_scorer *s, const lm_request *reqs, int n)
{
    char err[CM_ERRSZ] = "";
    ck_assert_msg(lm_scorer_run(s, reqs, n, err, sizeof err) == 0, "lm_scorer_run: %s", err);
}

/* Copies tensor `name` of `f` (dtype `dt`, `numel` elements) to new memory. */
static inline void *tu_tensor_copy(const lm_st_file *f, const char *name, lm_dtype dt, int ndim,
                                   const int64_t *shape)
{
    char err[CM_ERRSZ] = "";
    const lm_st_tensor *t;
    ck_assert_msg(lm_st_expect(f, name, dt, ndim, shape, &t, err, sizeof err) == 0, "%s", err);
    void *p = malloc(t->nbytes ? t->nbytes : 1);
    ck_assert_ptr_nonnull(p);
    memcpy(p, t->data, t->nbytes);
    return p;
}

/* ---- golden inputs and expected outputs ------------------------------------ */

typedef struct tu_io {
    int B, n, m, d;          /* users, history slots (max_hist), candidates, d_model */
    int32_t *hist_items;     /* [B, n], the first lengths[b] valid */
    int32_t *hist_actions;   /* [B, n] */
    int32_t *lengths;        /* [B] */
    int32_t *cands;          /* [B, m] */
    float *scores;           /* [B, m] expected, computed in float64 */
    float *user_vec;         /* [B, d] expected */
} tu_io;

static inline void tu_io_load(tu_io *io, const char *case_name)
{
    char path[TU_PATH], file[64], err[CM_ERRSZ] = "";
    lm_st_file *f;
    snprintf(file, sizeof file, "%s.io.safetensors", case_name);
    tu_golden_path(path, file);
    ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    const lm_st_tensor *h = lm_st_find(f, "hist_items"), *c = lm_st_find(f, "cands"),
                       *u = lm_st_find(f, "user_vec");
    ck_assert_msg(h && c && u && h->ndim == 2 && c->ndim == 2 && u->ndim == 2,
                  "%s: expected 2-d hist_items, cands and user_vec", path);
    io->B = (int)h->shape[0];
    io->n = (int)h->shape[1];
    io->m = (int)c->shape[1];
    io->d = (int)u->shape[1];
    int64_t bn[2] = {io->B, io->n}, bm[2] = {io->B, io->m}, bd[2] = {io->B, io->d}, b1 = io->B;
    io->hist_items = tu_tensor_copy(f, "hist_items", LM_DT_I32, 2, bn);
    io->hist_actions = tu_tensor_copy(f, "hist_actions", LM_DT_I32, 2, bn);
    io->lengths = tu_tensor_copy(f, "lengths", LM_DT_I32, 1, &b1);
    io->cands = tu_tensor_copy(f, "cands", LM_DT_I32, 2, bm);
    io->scores = tu_tensor_copy(f, "scores", LM_DT_F32, 2, bm);
    io->user_vec = tu_tensor_copy(f, "user_vec", LM_DT_F32, 2, bd);
    lm_st_close(f);
}

static inline void tu_io_free(tu_io *io)
{
    free(io->hist_items);
    free(io->hist_actions);
    free(io->lengths);
    free(io->cands);
    free(io->scores);
    free(io->user_vec);
}

/* Request for golden user b, writing to scores [m] and user_vec [d]. */
static inline lm_request tu_io_request(const tu_io *io, int b, float *scores, float *user_vec)
{
    return (lm_request){
        .hist_items = io->hist_items + (size_t)b * io->n,
        .hist_actions = io->hist_actions + (size_t)b * io->n,
        .n_hist = io->lengths[b],
        .cands = io->cands + (size_t)b * io->m,
        .n_cands = io->m,
        .scores = scores,
        .user_vec = user_vec,
    };
}

/* ---- numbers ---------------------------------------------------------------- */

/* splitmix64: small, seeded, the same on every platform. */
typedef struct tu_rng {
    uint64_t s;
} tu_rng;

static inline uint64_t tu_next(tu_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in lo..hi inclusive. */
static inline int tu_int(tu_rng *r, int lo, int hi)
{
    return lo + (int)(tu_next(r) % (uint64_t)(hi - lo + 1));
}

/* Uniform in [0, 1). */
static inline double tu_unif(tu_rng *r)
{
    return (double)(tu_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller). */
static inline float tu_normal(tu_rng *r)
{
    double u = tu_unif(r), v = tu_unif(r);
    return (float)(sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v));
}

/* Fills a [n] with `v` (outputs are pre-filled so that unwritten entries show). */
static inline void tu_fill(float *a, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        a[i] = v;
}

/* max |a - b|; +inf when either holds a NaN at the same index. */
static inline double tu_max_abs_diff(const float *a, const float *b, size_t n)
{
    double mx = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (e != e)
            return INFINITY;
        mx = e > mx ? e : mx;
    }
    return mx;
}

/* Index of the first element whose bits differ, or -1 when a and b are bitwise equal. */
static inline long tu_first_bit_diff(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
            return (long)i;
    return -1;
}

/* The ISAs of lm_isa this CPU runs, as a list; prints those it cannot. */
static inline int tu_isas(lm_isa out[LM_ISA_COUNT], int print)
{
    int n = 0;
    for (int i = LM_ISA_SCALAR; i < LM_ISA_COUNT; i++) {
        if (lm_kern_get((lm_isa)i))
            out[n++] = (lm_isa)i;
        else if (print)
            printf("isa %-6s: not available on this CPU (best: %s), not tested\n",
                   lm_isa_name((lm_isa)i), lm_isa_name(lm_isa_detect()));
    }
    return n;
}

/* The main() of a suite with a scratch directory: output line-buffered
 * (forked tests print; lines stay whole and in order), the directory made
 * before Check forks and removed afterwards. Returns the exit status. */
static inline int tu_main(const char *name, Suite *s)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (tu_tmp_init(name))
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    tu_tmp_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- rankings ------------------------------------------------------------------ */

/* Positions of the K best of s[n], best first; ties to the lower position. */
static inline void tu_top_positions(const float *s, int n, int K, int *out)
{
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int t = 0; t < j && !taken; t++)
                taken = out[t] == i;
            if (!taken && (best < 0 || s[i] > s[best]))
                best = i;
        }
        out[j] = best;
    }
}

/* |top-K(a) ∩ top-K(b)| / K with K = min(10, n); 1 for n = 0. */
static inline double tu_top10_overlap(const float *a, const float *b, int n)
{
    int K = n < 10 ? n : 10, ta[10], tb[10], hits = 0;
    tu_top_positions(a, n, K, ta);
    tu_top_positions(b, n, K, tb);
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++)
            hits += ta[i] == tb[j];
    return K ? (double)hits / K : 1.0;
}

#endif
