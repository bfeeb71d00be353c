/* tests/check_forward.c — the CPU scorer (llm/forward.h) against the
 * reference implementation, and the loader and quantizer around it.
 *
 *   golden        every golden case, every ISA this CPU runs, threads 1 and 2,
 *                 against the float64 reference (tolerance 1e-4);
 *   invariance    batch order, batch split and thread count change nothing,
 *                 bit for bit (candidates are independent by design);
 *   lengths       histories 0..max_hist and 0..65 candidates in one batch
 *                 equal the same users scored one at a time;
 *   int8          the int8 artifact against the reference: error bounds and
 *                 top-10 agreement; every SIMD ISA against scalar, end to end
 *                 (bounded) and in the int8 kernels on the model's own
 *                 weights (bitwise);
 *   quantize      the int8 artifact holds exactly the reference quantizer's
 *                 output, and an int8 artifact is not quantized twice;
 *   load_errors   corrupt artifacts fail with the path and the reason;
 *   validation    bad requests fail, name the request and field, and write
 *                 nothing; bad scorer options fail;
 *   no_alloc      lm_scorer_run allocates nothing.
 *
 * Every comparison prints one line (case, ISA, quant, the measured error and
 * the tolerance), so a run's log shows the numbers, not only a verdict. */
#include <check.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "llm/forward.h"
#include "llm/kernels.h"
#include "llm/model.h"
#include "llm/pool.h"
#include "llm/quantize.h"
#include "llm/safetensors.h"
#include "tests/testutil.h"

#define GOLDEN_TOL 1e-4 /* fp32 kernels vs the float64 reference */
#define SENTINEL 1234.5f

/* ---- counting allocations ---------------------------------------------------- */

/* lm_scorer_run promises to allocate nothing. To see every allocation of the
 * process: under AddressSanitizer, its allocator hook; otherwise this binary
 * replaces malloc and friends (glibc documents replacing malloc by defining
 * it in the program) with thin wrappers that count and call glibc's own
 * allocator through its exported __libc_* entry points, so memory from
 * either side can be freed by the other. */
static atomic_int counting;
static atomic_long n_allocs;

static void count_alloc(void)
{
    if (atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add_explicit(&n_allocs, 1, memory_order_relaxed);
}

#if defined(__SANITIZE_ADDRESS__)
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

static void on_malloc(const volatile void *p, size_t n)
{
    (void)p;
    (void)n;
    count_alloc();
}

static void on_free(const volatile void *p) { (void)p; }

static void alloc_hooks_install(void)
{
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}
#else
void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t n);
void *__libc_memalign(size_t align, size_t n);

void *malloc(size_t n)
{
    count_alloc();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    count_alloc();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    count_alloc();
    return __libc_realloc(p, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    count_alloc();
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    count_alloc();
    void *p = __libc_memalign(align, n);
    if (!p && n)
        return ENOMEM;
    *out = p;
    return 0;
}

static void alloc_hooks_install(void) {}
#endif

static void alloc_count_start(void)
{
    atomic_store(&n_allocs, 0);
    atomic_store(&counting, 1);
}

static long alloc_count_stop(void)
{
    atomic_store(&counting, 0);
    return atomic_load(&n_allocs);
}

/* Returns once every thread of the pool has started and run a task. A
 * thread that is still starting may allocate (under ASan it sets up its own
 * bookkeeping with malloc), and that is not the scorer's doing. Each job has
 * one task per thread, and each task waits (up to 50 ms) until all have
 * begun, so a job normally takes every thread at once; the retries are for
 * a pool whose worker, started late, sits out a job (pool.c did so before it
 * began counting generations from 0). */
typedef struct pool_barrier {
    atomic_int started;
    atomic_int seen[64];
    int n;
} pool_barrier;

static void barrier_task(void *ctx, int task, int thread)
{
    pool_barrier *b = ctx;
    struct timespec t0, t;
    (void)task;
    atomic_store(&b->seen[thread], 1);
    atomic_fetch_add(&b->started, 1);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
        clock_gettime(CLOCK_MONOTONIC, &t);
    while (atomic_load(&b->started) < b->n &&
           (t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 50000000L);
}

static void pool_wait_started(lm_pool *p)
{
    static pool_barrier b; /* static: 64 atomics zero-initialized */
    int all = 0, tries = 0;
    b.n = lm_pool_threads(p);
    ck_assert_int_le(b.n, 64);
    for (; !all && tries < 100; tries++) {
        atomic_store(&b.started, 0);
        lm_pool_run(p, barrier_task, &b, b.n);
        all = 1;
        for (int t = 0; t < b.n; t++)
            all &= atomic_load(&b.seen[t]);
    }
    ck_assert_msg(all, "the pool's %d threads did not all run a task in %d jobs", b.n, tries);
    for (int t = 0; t < b.n; t++)
        atomic_store(&b.seen[t], 0);
}

/* ---- helpers ------------------------------------------------------------------ */

static const char *quant_name(int int8) { return int8 ? "int8" : "fp32"; }

/* Scores every golden user in one batch; outputs [B, m] and [B, d]. */
static void score_golden(lm_scorer *s, const tu_io *io, float *scores, float *uv)
{
    lm_request *reqs = malloc(sizeof *reqs * (size_t)io->B);
    ck_assert_ptr_nonnull(reqs);
    tu_fill(scores, (size_t)io->B * io->m, NAN);
    tu_fill(uv, (size_t)io->B * io->d, NAN);
    for (int b = 0; b < io->B; b++)
        reqs[b] = tu_io_request(io, b, scores + (size_t)b * io->m, uv + (size_t)b * io->d);
    tu_run(s, reqs, io->B);
    free(reqs);
}

/* ---- golden: every ISA against the reference ----------------------------------- */

START_TEST(test_golden)
{
    const char *cs = tu_case_name(_i);
    tu_io io;
    tu_io_load(&io, cs);
    lm_model *m = tu_case_model(cs, 0);
    ck_assert_int_eq(m->cfg.d_model, io.d);
    ck_assert_int_eq(m->cfg.max_hist, io.n);
    float *scores = malloc(sizeof(float) * (size_t)io.B * io.m);
    float *uv = malloc(sizeof(float) * (size_t)io.B * io.d);
    ck_assert(scores && uv);
    lm_isa isas[LM_ISA_COUNT];
    int n_isa = tu_isas(isas, 1);
    for (int i = 0; i < n_isa; i++)
        for (int threads = 1; threads <= 2; threads++) {
            lm_scorer *s = tu_scorer(m, io.B, io.m, threads, isas[i]);
            score_golden(s, &io, scores, uv);
            double es = tu_max_abs_diff(scores, io.scores, (size_t)io.B * io.m);
            double eu = tu_max_abs_diff(uv, io.user_vec, (size_t)io.B * io.d);
            printf("golden      %-5s isa=%-6s quant=fp32 threads=%d B=%d m=%d: scores max|err| %.3e, "
                   "user_vec max|err| %.3e (tol %.0e)\n", cs, lm_isa_name(isas[i]), threads, io.B,
                   io.m, es, eu, GOLDEN_TOL);
            ck_assert_msg(es <= GOLDEN_TOL, "%s %s threads=%d: scores max|err| %g > %g", cs,
                          lm_isa_name(isas[i]), threads, es, GOLDEN_TOL);
            ck_assert_msg(eu <= GOLDEN_TOL, "%s %s threads=%d: user_vec max|err| %g > %g", cs,
                          lm_isa_name(isas[i]), threads, eu, GOLDEN_TOL);
            lm_scorer_free(s);
        }
    free(scores);
    free(uv);
    lm_model_free(m);
    tu_io_free(&io);
}
END_TEST

/* ---- invariance: batch order, batch split, threads ------------------------------ */

/* Scores the golden users in `order`, `per_call` requests per lm_scorer_run;
 * results land at each user's own position in scores [B, m] and uv [B, d]. */
static void score_arranged(lm_scorer *s, const tu_io *io, const int *order, int per_call,
                           float *scores, float *uv)
{
    lm_request *reqs = malloc(sizeof *reqs * (size_t)io->B);
    ck_assert_ptr_nonnull(reqs);
    tu_fill(scores, (size_t)io->B * io->m, NAN);
    tu_fill(uv, (size_t)io->B * io->d, NAN);
    for (int i = 0; i < io->B; i++) {
        int b = order[i];
        reqs[i] = tu_io_request(io, b, scores + (size_t)b * io->m, uv + (size_t)b * io->d);
    }
    for (int i = 0; i < io->B; i += per_call)
        tu_run(s, reqs + i, io->B - i < per_call ? io->B - i : per_call);
    free(reqs);
}

/* Chunk boundaries depend on the batch and the thread count (forward.c,
 * chunk_size), but every candidate row goes through the same operations in
 * the same order whatever chunk holds it, and a history is encoded by one
 * task; so the strongest property, bitwise equality, is what is asserted. */
START_TEST(test_batch_invariance)
{
    const char *cs = tu_case_name(_i);
    tu_io io;
    tu_io_load(&io, cs);
    const int B = io.B;
    size_t ns = (size_t)B * io.m, nu = (size_t)B * io.d;
    float *ref_s = malloc(sizeof(float) * ns), *ref_u = malloc(sizeof(float) * nu);
    float *s = malloc(sizeof(float) * ns), *u = malloc(sizeof(float) * nu);
    int *natural = malloc(sizeof(int) * B), *reversed = malloc(sizeof(int) * B),
        *shuffled = malloc(sizeof(int) * B);
    ck_assert(ref_s && ref_u && s && u && natural && reversed && shuffled);
    tu_rng rng = {.s = 77 + (uint64_t)_i};
    for (int b = 0; b < B; b++)
        natural[b] = shuffled[b] = b, reversed[b] = B - 1 - b;
    for (int b = B - 1; b > 0; b--) {
        int j = tu_int(&rng, 0, b), t = shuffled[b];
        shuffled[b] = shuffled[j];
        shuffled[j] = t;
    }
    const struct {
        const char *what;
        const int *order;
        int per_call, threads;
    } arr[] = {
        {"batch, threads 2", natural, B, 2},          {"batch, threads 3", natural, B, 3},
        {"reversed, threads 1", reversed, B, 1},      {"reversed, threads 2", reversed, B, 2},
        {"shuffled, threads 3", shuffled, B, 3},      {"one at a time, threads 1", natural, 1, 1},
        {"one at a time, threads 2", reversed, 1, 2}, {"pairs shuffled, threads 2", shuffled, 2, 2},
    };
    const int n_arr = (int)(sizeof arr / sizeof arr[0]);
    lm_isa isas[LM_ISA_COUNT];
    int n_isa = tu_isas(isas, 0);
    for (int q = 0; q < 2; q++) {
        lm_model *m = tu_case_model(cs, q);
        for (int i = 0; i < n_isa; i++) {
            lm_scorer *sc[4] = {NULL};
            for (int t = 1; t <= 3; t++)
                sc[t] = tu_scorer(m, B, io.m, t, isas[i]);
            score_arranged(sc[1], &io, natural, B, ref_s, ref_u);
            int equal = 0;
            for (int a = 0; a < n_arr; a++) {
                score_arranged(sc[arr[a].threads], &io, arr[a].order, arr[a].per_call, s, u);
                long ds = tu_first_bit_diff(s, ref_s, ns), du = tu_first_bit_diff(u, ref_u, nu);
                ck_assert_msg(ds < 0 && du < 0,
                              "%s isa=%s quant=%s: \"%s\" differs from batch/threads 1: scores[%ld] "
                              "%.9g vs %.9g (max|diff| %.3e), user_vec[%ld] %.9g vs %.9g (max|diff| "
                              "%.3e)", cs, lm_isa_name(isas[i]), quant_name(q), arr[a].what, ds,
                              ds < 0 ? 0.0 : s[ds], ds < 0 ? 0.0 : ref_s[ds],
                              tu_max_abs_diff(s, ref_s, ns), du, du < 0 ? 0.0 : u[du],
                              du < 0 ? 0.0 : ref_u[du], tu_max_abs_diff(u, ref_u, nu));
                equal++;
            }
            for (size_t k = 0; k < ns; k++)
                ck_assert_msg(isfinite(ref_s[k]), "%s: score %zu not written", cs, k);
            printf("invariance  %-5s isa=%-6s quant=%s: %d arrangements (order, split, threads 1-3) "
                   "bitwise equal to batch/threads 1 (tol 0)\n", cs, lm_isa_name(isas[i]),
                   quant_name(q), equal);
            for (int t = 1; t <= 3; t++)
                lm_scorer_free(sc[t]);
        }
        lm_model_free(m);
    }
    free(ref_s);
    free(ref_u);
    free(s);
    free(u);
    free(natural);
    free(reversed);
    free(shuffled);
    tu_io_free(&io);
}
END_TEST

/* ---- variable history lengths and candidate counts ------------------------------ */

#define VAR_MAX_CANDS 65

/* A batch of users with histories 0..max_hist, then two extras: one with a
 * history, 1 candidate and no user_vec output, one with no history, no
 * candidates and NULL arrays. Candidate counts cycle through 0, 1, chunk
 * edges (16, 17) and a count that spans two chunks (65). */
typedef struct var_batch {
    int U, d;
    lm_request *reqs;
    int32_t *items, *actions, *cands; /* [U, max_hist], [U, max_hist], [U, VAR_MAX_CANDS] */
    float *scores, *uv;               /* [U, VAR_MAX_CANDS], [U, d] */
} var_batch;

static void var_batch_make(var_batch *v, const lm_config *c, uint64_t seed)
{
    static const int counts[] = {3, 0, 1, 17, 65, 2, 16, 40};
    tu_rng rng = {.s = seed};
    const int H = c->max_hist;
    v->U = H + 3;
    v->d = c->d_model;
    v->reqs = calloc((size_t)v->U, sizeof *v->reqs);
    v->items = malloc(sizeof(int32_t) * (size_t)v->U * H);
    v->actions = malloc(sizeof(int32_t) * (size_t)v->U * H);
    v->cands = malloc(sizeof(int32_t) * (size_t)v->U * VAR_MAX_CANDS);
    v->scores = malloc(sizeof(float) * (size_t)v->U * VAR_MAX_CANDS);
    v->uv = malloc(sizeof(float) * (size_t)v->U * v->d);
    ck_assert(v->reqs && v->items && v->actions && v->cands && v->scores && v->uv);
    for (int u = 0; u < v->U; u++) {
        lm_request *r = &v->reqs[u];
        r->hist_items = v->items + (size_t)u * H;
        r->hist_actions = v->actions + (size_t)u * H;
        r->cands = v->cands + (size_t)u * VAR_MAX_CANDS;
        r->scores = v->scores + (size_t)u * VAR_MAX_CANDS;
        r->user_vec = v->uv + (size_t)u * v->d;
        r->n_hist = u <= H ? u : u == H + 1 ? (H + 1) / 2 : 0;
        r->n_cands = u <= H ? counts[u % 8] : u == H + 1 ? 1 : 0;
        for (int t = 0; t < H; t++) {
            v->items[(size_t)u * H + t] = tu_int(&rng, 0, c->n_items - 1);
            v->actions[(size_t)u * H + t] = tu_int(&rng, 0, c->n_actions - 1);
        }
        for (int j = 0; j < VAR_MAX_CANDS; j++)
            v->cands[(size_t)u * VAR_MAX_CANDS + j] = tu_int(&rng, 0, c->n_items - 1);
    }
    v->reqs[H + 1].user_vec = NULL;
    v->reqs[H + 2] = (lm_request){.n_hist = 0, .n_cands = 0, .user_vec = v->uv + (size_t)(H + 2) * v->d};
}

static void var_batch_free(var_batch *v)
{
    free(v->reqs);
    free(v->items);
    free(v->actions);
    free(v->cands);
    free(v->scores);
    free(v->uv);
}

/* Every output the requests ask for is finite (NaN pre-fill replaced). */
static void assert_all_written(const var_batch *v, const float *scores, const float *uv)
{
    for (int u = 0; u < v->U; u++) {
        for (int j = 0; j < v->reqs[u].n_cands; j++)
            ck_assert_msg(isfinite(scores[(size_t)u * VAR_MAX_CANDS + j]),
                          "user %d candidate %d not written", u, j);
        for (int i = 0; v->reqs[u].user_vec && i < v->d; i++)
            ck_assert_msg(isfinite(uv[(size_t)u * v->d + i]), "user %d user_vec[%d] not written", u, i);
    }
}

START_TEST(test_variable_lengths)
{
    const char *cs = tu_case_name(_i);
    char path[TU_PATH], err[CM_ERRSZ] = "";
    tu_weights_path(path, cs);
    lm_st_file *f;
    ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    const lm_st_tensor *lnf_b = lm_st_find(f, "ln_f.bias");
    ck_assert_ptr_nonnull(lnf_b);
    lm_isa isas[LM_ISA_COUNT];
    int n_isa = tu_isas(isas, 0);
    for (int q = 0; q < 2; q++) {
        lm_model *m = tu_case_model(cs, q);
        var_batch v;
        var_batch_make(&v, &m->cfg, 1000 + (uint64_t)_i);
        size_t ns = (size_t)v.U * VAR_MAX_CANDS, nu = (size_t)v.U * v.d;
        float *batch_s = malloc(sizeof(float) * ns), *batch_u = malloc(sizeof(float) * nu);
        ck_assert(batch_s && batch_u);
        for (int i = 0; i < n_isa; i++) {
            lm_scorer *all = tu_scorer(m, v.U, VAR_MAX_CANDS, 2, isas[i]);
            lm_scorer *one = tu_scorer(m, 1, VAR_MAX_CANDS, 1, isas[i]);
            tu_fill(v.scores, ns, NAN);
            tu_fill(v.uv, nu, NAN);
            tu_run(all, v.reqs, v.U);
            assert_all_written(&v, v.scores, v.uv);
            memcpy(batch_s, v.scores, sizeof(float) * ns);
            memcpy(batch_u, v.uv, sizeof(float) * nu);
            tu_fill(v.scores, ns, NAN);
            tu_fill(v.uv, nu, NAN);
            for (int u = 0; u < v.U; u++)
                tu_run(one, &v.reqs[u], 1);
            /* Untouched slots hold NaN in both runs: compare bits, NaN included. */
            long ds = tu_first_bit_diff(v.scores, batch_s, ns), du = tu_first_bit_diff(v.uv, batch_u, nu);
            ck_assert_msg(ds < 0, "%s isa=%s quant=%s: user %ld candidate %ld: batch %.9g, alone %.9g",
                          cs, lm_isa_name(isas[i]), quant_name(q), ds / VAR_MAX_CANDS,
                          ds % VAR_MAX_CANDS, batch_s[ds], v.scores[ds]);
            ck_assert_msg(du < 0, "%s isa=%s quant=%s: user %ld user_vec[%ld]: batch %.9g, alone %.9g",
                          cs, lm_isa_name(isas[i]), quant_name(q), du / v.d, du % v.d, batch_u[du],
                          v.uv[du]);
            /* An empty history gives u = LN_f(0) = ln_f.bias, exactly. */
            const float *u0 = batch_u, *u_last = batch_u + (size_t)(v.U - 1) * v.d;
            ck_assert_msg(memcmp(u0, lnf_b->data, sizeof(float) * v.d) == 0 &&
                              memcmp(u_last, lnf_b->data, sizeof(float) * v.d) == 0,
                          "%s: user_vec of an empty history is not ln_f.bias", cs);
            printf("lengths     %-5s isa=%-6s quant=%s: %d users, histories 0..%d, 0..%d candidates: "
                   "batch (threads 2) bitwise equal to one at a time (tol 0); empty history "
                   "user_vec == ln_f.bias bitwise\n", cs, lm_isa_name(isas[i]), quant_name(q), v.U,
                   m->cfg.max_hist, VAR_MAX_CANDS);
            lm_scorer_free(all);
            lm_scorer_free(one);
        }
        free(batch_s);
        free(batch_u);
        var_batch_free(&v);
        lm_model_free(m);
    }
    lm_st_close(f);
}
END_TEST

/* ---- int8 ----------------------------------------------------------------------- */

/* int8 against the float64 reference. Measured on the golden cases (scalar,
 * AVX2, AVX-512 and AMX give the same figures to the digits shown):
 *            scores max|err|   user_vec max|err|   top-10 agreement mean (worst user)
 *     tiny       0.0097             0.0185             1.000 (1.0)   top-9: m = 9
 *     small      0.0178             0.0180             0.975 (0.9)
 *     odd        0.0124             0.0251             1.000 (1.0)
 * The error bounds leave more than 3x margin over the worst case. */
#define INT8_SCORE_TOL 0.06
#define INT8_UV_TOL 0.08
#define INT8_TOP10_MEAN 0.8
#define INT8_TOP10_USER 0.7

/* SIMD int8 against scalar int8. The int8 kernels are bit-identical across
 * ISAs (test_int8_kernels_bitwise), but LayerNorm, attention and the other
 * fp32 steps round differently where SIMD fuses multiply-adds, and an
 * activation within an ulp of a rounding boundary of the per-token
 * quantizer then moves by one int8 step; the step propagates to everything
 * downstream of that token (a whole user vector, or one candidate). So most
 * outputs agree within 1e-6 and a few move by about a quantization step.
 * Measured (golden batch plus the variable-length batch; AVX2, AVX-512 and
 * AMX alike): worst max|diff| 4.7e-3 (small, variable-length user vectors);
 * candidates within 1e-5: 97.7% at worst (small, AVX2: 849 of 869); user vectors
 * within 1e-5: 90% at worst (tiny, 9 of 10); tiny and odd golden batches
 * and odd's variable-length batch: everything within 1e-6.
 * Asserted: no output differs by more than INT8_ISA_MAX (well inside the
 * int8 error against the reference), and at least INT8_ISA_CANDS of the
 * candidates and INT8_ISA_USERS of the user vectors agree within
 * INT8_ISA_TOL, which a systematic divergence of a SIMD kernel would break. */
#define INT8_ISA_TOL 1e-5
#define INT8_ISA_MAX 0.02
#define INT8_ISA_CANDS 0.9
#define INT8_ISA_USERS 0.75

/* Compares n units of `len` floats (a candidate's score, or a user vector). */
static void assert_isa_agreement(const char *cs, const char *what, lm_isa isa, const float *a,
                                 const float *b, size_t n, size_t len, double min_agree)
{
    size_t agree = 0;
    for (size_t i = 0; i < n; i++)
        agree += tu_max_abs_diff(a + i * len, b + i * len, len) <= INT8_ISA_TOL;
    double mx = tu_max_abs_diff(a, b, n * len), frac = n ? (double)agree / (double)n : 1.0;
    printf("int8-isa    %-5s isa=%-6s quant=int8 vs scalar int8, %-15s: max|diff| %.3e (max allowed "
           "%.0e), %zu of %zu within %.0e (%.1f%%, at least %.0f%% required)\n", cs, lm_isa_name(isa),
           what, mx, INT8_ISA_MAX, agree, n, INT8_ISA_TOL, 100 * frac, 100 * min_agree);
    ck_assert_msg(mx <= INT8_ISA_MAX, "%s %s %s: int8 differs from scalar int8 by %g > %g", cs,
                  lm_isa_name(isa), what, mx, INT8_ISA_MAX);
    ck_assert_msg(frac >= min_agree, "%s %s %s: only %zu of %zu agree with scalar int8 within %g", cs,
                  lm_isa_name(isa), what, agree, n, INT8_ISA_TOL);
}

/* The outputs a variable-length batch asked for, packed: scores of every
 * candidate, then the user vectors of the users that asked for one. */
static void var_written(const var_batch *v, float *out, size_t *n_scores, size_t *n_users)
{
    size_t at = 0;
    *n_scores = *n_users = 0;
    for (int u = 0; u < v->U; u++)
        for (int j = 0; j < v->reqs[u].n_cands; j++, (*n_scores)++)
            out[at++] = v->scores[(size_t)u * VAR_MAX_CANDS + j];
    for (int u = 0; u < v->U; u++)
        if (v->reqs[u].user_vec) {
            memcpy(out + at, v->uv + (size_t)u * v->d, sizeof(float) * v->d);
            at += (size_t)v->d;
            (*n_users)++;
        }
}

START_TEST(test_int8_accuracy)
{
    const char *cs = tu_case_name(_i);
    tu_io io;
    tu_io_load(&io, cs);
    lm_model *m = tu_case_model(cs, 1);
    ck_assert_int_eq(m->quant, LM_QUANT_INT8);
    var_batch v;
    var_batch_make(&v, &m->cfg, 2000 + (uint64_t)_i);
    size_t ns = (size_t)io.B * io.m, nu = (size_t)io.B * io.d;
    size_t vs = (size_t)v.U * VAR_MAX_CANDS, vu = (size_t)v.U * v.d;
    float *s = malloc(sizeof(float) * ns), *u = malloc(sizeof(float) * nu);
    float *scalar_s = malloc(sizeof(float) * ns), *scalar_u = malloc(sizeof(float) * nu);
    float *var = malloc(sizeof(float) * (vs + vu)), *scalar_var = malloc(sizeof(float) * (vs + vu));
    ck_assert(s && u && scalar_s && scalar_u && var && scalar_var);
    size_t n_vs, n_vu;
    lm_isa isas[LM_ISA_COUNT];
    int n_isa = tu_isas(isas, 0);
    ck_assert_int_eq(isas[0], LM_ISA_SCALAR);
    for (int i = 0; i < n_isa; i++) {
        lm_scorer *sc = tu_scorer(m, v.U > io.B ? v.U : io.B, VAR_MAX_CANDS > io.m ? VAR_MAX_CANDS : io.m,
                                  2, isas[i]);
        score_golden(sc, &io, s, u);
        tu_fill(v.scores, vs, NAN);
        tu_fill(v.uv, vu, NAN);
        tu_run(sc, v.reqs, v.U);
        assert_all_written(&v, v.scores, v.uv);
        lm_scorer_free(sc);
        double es = tu_max_abs_diff(s, io.scores, ns), eu = tu_max_abs_diff(u, io.user_vec, nu);
        double agree = 0.0, agree_min = 1.0;
        for (int b = 0; b < io.B; b++) {
            double a = tu_top10_overlap(io.scores + (size_t)b * io.m, s + (size_t)b * io.m, io.m);
            agree += a / io.B;
            agree_min = a < agree_min ? a : agree_min;
        }
        printf("int8        %-5s isa=%-6s quant=int8 vs reference: scores max|err| %.4f (tol %.3f), "
               "user_vec max|err| %.4f (tol %.3f), top-%d agreement mean %.3f (>= %.2f) worst user "
               "%.2f (>= %.2f)\n", cs, lm_isa_name(isas[i]), es, INT8_SCORE_TOL, eu, INT8_UV_TOL,
               io.m < 10 ? io.m : 10, agree, INT8_TOP10_MEAN, agree_min, INT8_TOP10_USER);
        ck_assert_msg(es <= INT8_SCORE_TOL, "%s %s: int8 scores max|err| %g > %g", cs,
                      lm_isa_name(isas[i]), es, INT8_SCORE_TOL);
        ck_assert_msg(eu <= INT8_UV_TOL, "%s %s: int8 user_vec max|err| %g > %g", cs,
                      lm_isa_name(isas[i]), eu, INT8_UV_TOL);
        ck_assert_msg(agree >= INT8_TOP10_MEAN && agree_min >= INT8_TOP10_USER,
                      "%s %s: int8 top-10 agreement mean %g (>= %g), worst user %g (>= %g)", cs,
                      lm_isa_name(isas[i]), agree, INT8_TOP10_MEAN, agree_min, INT8_TOP10_USER);
        var_written(&v, var, &n_vs, &n_vu);
        if (isas[i] == LM_ISA_SCALAR) {
            memcpy(scalar_s, s, sizeof(float) * ns);
            memcpy(scalar_u, u, sizeof(float) * nu);
            memcpy(scalar_var, var, sizeof(float) * (vs + vu));
            continue;
        }
        assert_isa_agreement(cs, "golden scores", isas[i], s, scalar_s, ns, 1, INT8_ISA_CANDS);
        assert_isa_agreement(cs, "golden user_vec", isas[i], u, scalar_u, (size_t)io.B, (size_t)io.d,
                             INT8_ISA_USERS);
        assert_isa_agreement(cs, "varlen scores", isas[i], var, scalar_var, n_vs, 1, INT8_ISA_CANDS);
        assert_isa_agreement(cs, "varlen user_vec", isas[i], var + n_vs, scalar_var + n_vs, n_vu,
                             (size_t)v.d, INT8_ISA_USERS);
    }
    free(s);
    free(u);
    free(scalar_s);
    free(scalar_u);
    free(var);
    free(scalar_var);
    var_batch_free(&v);
    lm_model_free(m);
    tu_io_free(&io);
}
END_TEST

/* The int8 steps themselves, on the model's own packed weights: every ISA's
 * quant_rows and qgemm equal scalar bit for bit (the kernel contract), for
 * awkward row counts, strided rows, zero rows and outliers, with and
 * without bias and accumulation. */
static void check_linear_bitwise(const char *cs, const char *name, const lm_pq8 *w, const float *bias,
                                 tu_rng *rng, const lm_kern *ref, const lm_kern *k)
{
    enum { MAX_M = 13 };
    const int ldx = w->k + 3, ldy = w->n + 5;
    float *x = malloc(sizeof(float) * MAX_M * ldx);
    int8_t *q_ref = malloc((size_t)MAX_M * w->kp), *q = malloc((size_t)MAX_M * w->kp);
    float s_ref[MAX_M], s[MAX_M];
    float *y_ref = malloc(sizeof(float) * MAX_M * ldy), *y = malloc(sizeof(float) * MAX_M * ldy);
    ck_assert(x && q_ref && q && y_ref && y);
    static const int Ms[] = {1, 2, 3, 7, 8, 9, 13};
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
        int M = Ms[mi];
        for (int i = 0; i < M * ldx; i++)
            x[i] = tu_normal(rng) * (float)(1 + i % 5);
        if (M > 2) {
            memset(x + ldx, 0, sizeof(float) * w->k);  /* a zero row: scale 0 */
            x[2 * ldx + w->k / 2] = 1e4f;              /* an outlier flattens a row */
        }
        memset(q_ref, 0x55, (size_t)MAX_M * w->kp);
        memset(q, 0x55, (size_t)MAX_M * w->kp);
        ref->quant_rows(M, w->k, x, ldx, q_ref, w->kp, s_ref);
        k->quant_rows(M, w->k, x, ldx, q, w->kp, s);
        ck_assert_msg(memcmp(q, q_ref, (size_t)M * w->kp) == 0 && memcmp(s, s_ref, sizeof(float) * M) == 0,
                      "%s %s: %s quant_rows differs from scalar (M=%d k=%d)", cs, name, k->name, M, w->k);
        for (int accum = 0; accum <= 1; accum++) {
            for (int i = 0; i < M * ldy; i++)
                y_ref[i] = y[i] = tu_normal(rng);
            ref->qgemm(M, q_ref, s_ref, w, bias, y_ref, ldy, accum);
            k->qgemm(M, q, s, w, bias, y, ldy, accum);
            long d = tu_first_bit_diff(y, y_ref, (size_t)M * ldy);
            ck_assert_msg(d < 0, "%s %s: %s qgemm differs from scalar at row %ld col %ld: %.9g vs %.9g "
                          "(M=%d accum=%d)", cs, name, k->name, d / ldy, d % ldy, y[d], y_ref[d], M, accum);
        }
    }
    free(x);
    free(q_ref);
    free(q);
    free(y_ref);
    free(y);
}

START_TEST(test_int8_kernels_bitwise)
{
    const char *cs = tu_case_name(_i);
    lm_model *m = tu_case_model(cs, 1);
    tu_rng rng = {.s = 3000 + (uint64_t)_i};
    const lm_kern *ref = lm_kern_get(LM_ISA_SCALAR);
    lm_isa isas[LM_ISA_COUNT];
    int n_isa = tu_isas(isas, 0);
    for (int i = 1; i < n_isa; i++) {
        const lm_kern *k = lm_kern_get(isas[i]);
        int n_lin = 0;
        check_linear_bitwise(cs, "item_emb", &m->item.q, NULL, &rng, ref, k);
        for (int l = 0; l < m->cfg.n_layers; l++) {
            const lm_linear *lin[4] = {&m->layers[l].qkv, &m->layers[l].out, &m->layers[l].up,
                                       &m->layers[l].down};
            for (int j = 0; j < 4; j++, n_lin++)
                check_linear_bitwise(cs, "layer linear", &lin[j]->q, lin[j]->bias, &rng, ref, k);
        }
        printf("int8-kern   %-5s isa=%-6s: quant_rows and qgemm on item_emb and %d layer weights, M = "
               "1..13, bias, accum: bitwise equal to scalar (tol 0)\n", cs, k->name, n_lin);
    }
    if (n_isa == 1)
        printf("int8-kern   %-5s: this CPU runs only the scalar kernels; nothing to compare\n", cs);
    lm_model_free(m);
}
END_TEST

/* The artifact holds what the reference quantizer makes of every fp32 row,
 * the rest byte for byte, the metadata plus quant=int8; the loaded model
 * reads it back; quantizing it again is refused. */
START_TEST(test_quantize_roundtrip)
{
    const char *cs = tu_case_name(_i);
    char in[TU_PATH], out[TU_PATH], again[TU_PATH], name[64], err[CM_ERRSZ] = "";
    tu_weights_path(in, cs);
    snprintf(name, sizeof name, "%s.rt.int8.safetensors", cs);
    tu_tmp_path(out, name);
    lm_quantize_stats st;
    ck_assert_msg(lm_quantize_file(in, out, &st, err, sizeof err) == 0, "%s", err);

    lm_st_file *f32, *f8;
    ck_assert_msg(lm_st_open(&f32, in, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(lm_st_open(&f8, out, err, sizeof err) == 0, "%s", err);
    lm_config cfg;
    lm_quant quant;
    ck_assert_msg(lm_config_read(f8, &cfg, &quant, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(quant, LM_QUANT_INT8);
    ck_assert_str_eq(lm_st_meta(f8, "quant"), "int8");
    for (int i = 0; i < lm_st_meta_count(f32); i++) {
        const char *k, *v;
        lm_st_meta_at(f32, i, &k, &v);
        ck_assert_msg(strcmp(k, "quant") == 0 || (lm_st_meta(f8, k) && strcmp(lm_st_meta(f8, k), v) == 0),
                      "metadata %s=%s not kept", k, v);
    }
    lm_tensor_spec *specs = malloc(sizeof *specs * (size_t)lm_tensor_specs_max(&cfg));
    ck_assert_ptr_nonnull(specs);
    int n = lm_tensor_specs(&cfg, specs), n_quant = 0;
    size_t bytes_in = 0;
    for (int i = 0; i < n; i++) {
        const lm_st_tensor *a = lm_st_find(f32, specs[i].name), *b = lm_st_find(f8, specs[i].name);
        ck_assert_msg(a && b, "tensor %s missing", specs[i].name);
        bytes_in += a->nbytes;
        if (!specs[i].quantized) {
            ck_assert_msg(b->dtype == LM_DT_F32 && b->nbytes == a->nbytes &&
                              memcmp(a->data, b->data, a->nbytes) == 0,
                          "%s: fp32 tensor not copied byte for byte", specs[i].name);
            continue;
        }
        char sname[80];
        snprintf(sname, sizeof sname, "%s_scale", specs[i].name);
        const lm_st_tensor *sc = lm_st_find(f8, sname);
        ck_assert_msg(sc && sc->dtype == LM_DT_F32 && b->dtype == LM_DT_I8, "%s: not I8 + F32 scale",
                      specs[i].name);
        int rows = (int)a->shape[0], cols = (int)a->shape[1];
        float *row = malloc(sizeof(float) * cols);
        int8_t *qr = malloc((size_t)cols);
        ck_assert(row && qr);
        for (int r = 0; r < rows; r++) {
            float s_ref, s_got;
            memcpy(row, (const char *)a->data + sizeof(float) * (size_t)r * cols, sizeof(float) * cols);
            lm_quantize_row_ref(row, cols, qr, &s_ref);
            memcpy(&s_got, (const char *)sc->data + sizeof(float) * r, sizeof s_got);
            ck_assert_msg(memcmp((const int8_t *)b->data + (size_t)r * cols, qr, (size_t)cols) == 0 &&
                              memcmp(&s_ref, &s_got, sizeof s_got) == 0,
                          "%s row %d differs from lm_quantize_row_ref", specs[i].name, r);
        }
        free(row);
        free(qr);
        n_quant++;
    }
    ck_assert_int_eq(lm_st_count(f8), n + n_quant);
    ck_assert_int_eq(st.tensors_quantized, 1 + 4 * cfg.n_layers);
    ck_assert_int_eq(st.tensors_quantized, n_quant);
    ck_assert_uint_eq(st.bytes_in, bytes_in);
    ck_assert_uint_lt(st.bytes_out, st.bytes_in);

    /* The model reads the table back: item rows are q * scale. */
    lm_model *m8 = tu_model_load(out);
    ck_assert_int_eq(m8->quant, LM_QUANT_INT8);
    ck_assert_int_eq(m8->cfg.n_items, cfg.n_items);
    const lm_st_tensor *q = lm_st_find(f8, "item_emb"), *qs = lm_st_find(f8, "item_emb_scale");
    float *got = malloc(sizeof(float) * cfg.d_model);
    ck_assert_ptr_nonnull(got);
    for (int it = 0; it < cfg.n_items; it++) {
        float s;
        memcpy(&s, (const char *)qs->data + sizeof(float) * it, sizeof s);
        lm_model_item_row(m8, it, got);
        for (int k = 0; k < cfg.d_model; k++) {
            float want = (float)((const int8_t *)q->data)[(size_t)it * cfg.d_model + k] * s;
            ck_assert_msg(memcmp(&want, &got[k], sizeof want) == 0, "item %d [%d]: %g, expected %g",
                          it, k, got[k], want);
        }
    }
    free(got);
    lm_model_free(m8);
    free(specs);
    lm_st_close(f32);
    lm_st_close(f8);

    /* Quantizing an int8 artifact is an error, and writes nothing. */
    const lm_quantize_stats first = st;
    snprintf(name, sizeof name, "%s.twice.safetensors", cs);
    tu_tmp_path(again, name);
    err[0] = '\0';
    ck_assert_int_eq(lm_quantize_file(out, again, &st, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "already quantized") && strstr(err, out),
                  "message lacks \"already quantized\" or the path: %s", err);
    ck_assert_msg(access(again, F_OK) != 0, "%s was written", again);
    printf("quantize    %-5s: %d tensors quantized (%zu -> %zu bytes), rows equal lm_quantize_row_ref "
           "bitwise, item rows read back as q*scale bitwise; again: \"%s\"\n", cs, first.tensors_quantized,
           first.bytes_in, first.bytes_out, err);
}
END_TEST

/* ---- load errors ------------------------------------------------------------------ */

/* A copy of the tiny artifact (fp32, or its int8 form) with one change. */
typedef struct mutation {
    const char *label;
    int int8;
    const char *meta_key;   /* metadata key set to meta_value, or dropped when it is NULL */
    const char *meta_value;
    const char *drop;       /* tensor left out */
    const char *trim;       /* tensor written one row short */
    const char *poke;       /* tensor with element poke_at set to poke_value */
    long poke_at;
    double poke_value;
    const char *extra;      /* tensor added (a copy of ln_f.bias) */
    const char *fragment;   /* what the message must say */
} mutation;

static const mutation mutations[] = {
    {.label = "missing tensor", .drop = "layers.1.attn.out.bias",
     .fragment = "tensor layers.1.attn.out.bias is missing"},
    {.label = "wrong shape", .trim = "pos_emb", .fragment = "tensor pos_emb has shape [8,32], expected [9,32]"},
    {.label = "config disagrees with shape", .meta_key = "n_items", .meta_value = "51",
     .fragment = "tensor item_emb has shape [50,32], expected [51,32]"},
    {.label = "wrong arch", .meta_key = "arch", .meta_value = "ranker-v2",
     .fragment = "\"arch\" is \"ranker-v2\", expected \"ranker-v1\""},
    {.label = "no arch", .meta_key = "arch", .fragment = "\"arch\" is missing"},
    {.label = "heads do not divide d_model", .meta_key = "n_heads", .meta_value = "3",
     .fragment = "d_model 32 is not a multiple of n_heads 3"},
    {.label = "non-integer", .meta_key = "d_ffn", .meta_value = "12abc",
     .fragment = "\"d_ffn\" is \"12abc\", expected an integer"},
    {.label = "empty integer", .meta_key = "d_model", .meta_value = "",
     .fragment = "\"d_model\" is \"\", expected an integer"},
    {.label = "integer with a plus", .meta_key = "max_hist", .meta_value = "+8",
     .fragment = "\"max_hist\" is \"+8\", expected an integer"},
    {.label = "integer overflows long", .meta_key = "n_items", .meta_value = "99999999999999999999",
     .fragment = "\"n_items\" is \"99999999999999999999\", expected an integer"},
    {.label = "zero layers", .meta_key = "n_layers", .meta_value = "0",
     .fragment = "\"n_layers\" is 0, expected 1..64"},
    {.label = "too many layers", .meta_key = "n_layers", .meta_value = "65",
     .fragment = "\"n_layers\" is 65, expected 1..64"},
    {.label = "negative max_hist", .meta_key = "max_hist", .meta_value = "-1",
     .fragment = "\"max_hist\" is -1, expected 1..4096"},
    {.label = "max_hist over 4096", .meta_key = "max_hist", .meta_value = "4097",
     .fragment = "\"max_hist\" is 4097, expected 1..4096"},
    {.label = "one item", .meta_key = "n_items", .meta_value = "1",
     .fragment = "\"n_items\" is 1, expected 2..268435456"},
    {.label = "huge d_model", .meta_key = "d_model", .meta_value = "8193",
     .fragment = "\"d_model\" is 8193, expected 1..8192"},
    {.label = "config key missing", .meta_key = "n_actions", .fragment = "__metadata__ lacks \"n_actions\""},
    {.label = "unknown quant", .meta_key = "quant", .meta_value = "int4",
     .fragment = "\"quant\" is \"int4\", expected \"none\" or \"int8\""},
    {.label = "fp32 data marked int8", .meta_key = "quant", .meta_value = "int8",
     .fragment = "tensor item_emb has dtype F32, expected I8"},
    {.label = "NaN weight", .poke = "layers.1.ffn.up.weight", .poke_at = 17, .poke_value = NAN,
     .fragment = "tensor layers.1.ffn.up.weight holds nan at element 17"},
    {.label = "inf bias", .poke = "head.bias", .poke_at = 0, .poke_value = INFINITY,
     .fragment = "tensor head.bias holds inf at element 0"},
    {.label = "-inf embedding", .poke = "pos_emb", .poke_at = 100, .poke_value = -INFINITY,
     .fragment = "tensor pos_emb holds -inf at element 100"},
    {.label = "extra tensor", .extra = "layers.2.ln1.weight",
     .fragment = "unexpected tensor layers.2.ln1.weight"},
    {.label = "scale in an fp32 artifact", .extra = "item_emb_scale",
     .fragment = "unexpected tensor item_emb_scale"},
    {.label = "int8 -128", .int8 = 1, .poke = "item_emb", .poke_at = 5, .poke_value = -128,
     .fragment = "tensor item_emb holds -128 at element 5"},
    {.label = "int8 negative scale", .int8 = 1, .poke = "layers.0.ffn.down.weight_scale", .poke_at = 3,
     .poke_value = -1, .fragment = "tensor layers.0.ffn.down.weight_scale holds -1 at element 3"},
    {.label = "int8 NaN scale", .int8 = 1, .poke = "item_emb_scale", .poke_at = 7, .poke_value = NAN,
     .fragment = "tensor item_emb_scale holds nan at element 7"},
    {.label = "int8 scale missing", .int8 = 1, .drop = "layers.1.attn.qkv.weight_scale",
     .fragment = "tensor layers.1.attn.qkv.weight_scale is missing"},
    {.label = "int8 without quant key", .int8 = 1, .meta_key = "quant",
     .fragment = "tensor item_emb has dtype I8, expected F32"},
    {.label = "int8 extra scale", .int8 = 1, .extra = "head.weight_scale",
     .fragment = "unexpected tensor head.weight_scale"},
};
#define N_MUTATIONS ((int)(sizeof mutations / sizeof mutations[0]))

static void poke(void *data, lm_dtype dt, long at, double v)
{
    if (dt == LM_DT_F32) {
        float f = (float)v;
        memcpy((char *)data + (size_t)at * sizeof f, &f, sizeof f);
    } else {
        ck_assert_int_eq(dt, LM_DT_I8);
        ((int8_t *)data)[at] = (int8_t)v;
    }
}

static void write_mutation(const char *src, const char *dst, const mutation *mu)
{
    char err[CM_ERRSZ] = "";
    lm_st_file *f;
    ck_assert_msg(lm_st_open(&f, src, err, sizeof err) == 0, "%s", err);
    lm_st_writer *w = lm_st_writer_new();
    ck_assert_ptr_nonnull(w);
    int meta_done = 0;
    for (int i = 0; i < lm_st_meta_count(f); i++) {
        const char *k, *v;
        lm_st_meta_at(f, i, &k, &v);
        if (mu->meta_key && strcmp(k, mu->meta_key) == 0) {
            meta_done = 1;
            v = mu->meta_value;
        }
        ck_assert_msg(!v || lm_st_writer_meta(w, k, v, err, sizeof err) == 0, "%s", err);
    }
    if (mu->meta_key && mu->meta_value && !meta_done)
        ck_assert_msg(lm_st_writer_meta(w, mu->meta_key, mu->meta_value, err, sizeof err) == 0, "%s", err);
    int poked = !mu->poke, dropped = !mu->drop, trimmed = !mu->trim;
    for (int i = 0; i < lm_st_count(f); i++) {
        const lm_st_tensor *t = lm_st_at(f, i);
        int64_t shape[LM_ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (mu->drop && strcmp(t->name, mu->drop) == 0) {
            dropped = 1;
            continue;
        }
        void *data = malloc(t->nbytes);
        ck_assert_ptr_nonnull(data);
        memcpy(data, t->data, t->nbytes);
        if (mu->trim && strcmp(t->name, mu->trim) == 0) {
            shape[0]--;
            trimmed = 1;
        }
        if (mu->poke && strcmp(t->name, mu->poke) == 0) {
            ck_assert_int_lt(mu->poke_at, t->numel);
            poke(data, t->dtype, mu->poke_at, mu->poke_value);
            poked = 1;
        }
        ck_assert_msg(lm_st_writer_add(w, t->name, t->dtype, t->ndim, shape, data, err, sizeof err) == 0,
                      "%s", err);
        free(data);
    }
    ck_assert_msg(poked && dropped && trimmed, "%s: the tensor to change is not in %s", mu->label, src);
    if (mu->extra) {
        const lm_st_tensor *t = lm_st_find(f, "ln_f.bias");
        ck_assert_msg(lm_st_writer_add(w, mu->extra, t->dtype, t->ndim, t->shape, t->data, err,
                                       sizeof err) == 0, "%s", err);
    }
    ck_assert_msg(lm_st_writer_save(w, dst, err, sizeof err) == 0, "%s", err);
    lm_st_writer_free(w);
    lm_st_close(f);
}

/* The whole file in a malloc'd buffer, or NULL when it cannot be read. */
static void *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void assert_load_fails(const char *path, const char *fragment, const char *label)
{
    char err[CM_ERRSZ] = "";
    lm_model *m = (lm_model *)&m; /* any non-NULL value: a failed load must reset it */
    ck_assert_int_eq(lm_model_load(&m, path, err, sizeof err), -1);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err, path) != NULL, "%s: message lacks the path %s: %s", label, path, err);
    ck_assert_msg(strstr(err, fragment) != NULL, "%s: message lacks \"%s\": %s", label, fragment, err);
    printf("load-error  %-28s: %s\n", label, err);
    /* From memory (what fuzz_safetensors calls) the same bytes fail the same way. */
    size_t len;
    void *img = read_whole(path, &len);
    if (img) {
        char err_mem[CM_ERRSZ] = "";
        ck_assert_int_eq(lm_model_load_mem(&m, img, len, path, err_mem, sizeof err_mem), -1);
        ck_assert_ptr_null(m);
        ck_assert_str_eq(err_mem, err);
        free(img);
    }
}

/* lm_model_load_mem gives the model lm_model_load does, arena byte for byte. */
static void assert_mem_load_same(const char *path)
{
    char err[CM_ERRSZ];
    size_t len;
    void *img = read_whole(path, &len);
    ck_assert_ptr_nonnull(img);
    lm_model *a = tu_model_load(path), *b;
    ck_assert_msg(lm_model_load_mem(&b, img, len, path, err, sizeof err) == 0, "%s", err);
    free(img); /* the model keeps no pointer into the image */
    ck_assert_uint_eq(a->arena_bytes, b->arena_bytes);
    ck_assert_int_eq(memcmp(&a->cfg, &b->cfg, sizeof a->cfg), 0);
    lm_model_free(a);
    lm_model_free(b);
}

START_TEST(test_load_error)
{
    const mutation *mu = &mutations[_i];
    char src[TU_PATH], dst[TU_PATH], name[64];
    tu_weights_path(src, "tiny");
    if (mu->int8) {
        char q[TU_PATH];
        tu_quantize(src, "tiny.int8.safetensors", q);
        memcpy(src, q, sizeof src);
    }
    snprintf(name, sizeof name, "bad%02d.safetensors", _i);
    tu_tmp_path(dst, name);
    write_mutation(src, dst, mu);
    assert_load_fails(dst, mu->fragment, mu->label);
    /* The unchanged copy loads, so the change alone made the load fail. */
    assert_mem_load_same(src);
}
END_TEST

START_TEST(test_load_missing_file)
{
    char path[TU_PATH];
    tu_tmp_path(path, "no-such-model.safetensors");
    assert_load_fails(path, "No such file", "missing file");
}
END_TEST

/* ---- request validation ------------------------------------------------------------ */

enum {
    BAD_HIST_LONG, BAD_HIST_NEG, BAD_ITEM_HIGH, BAD_ITEM_NEG, BAD_ACTION_NEG, BAD_ACTION_HIGH,
    BAD_CAND_HIGH, BAD_CAND_NEG, BAD_CANDS_MANY, BAD_CANDS_NEG, BAD_NULL_ITEMS, BAD_NULL_ACTIONS,
    BAD_NULL_CANDS, BAD_NULL_SCORES, BAD_BATCH_BIG, BAD_BATCH_NEG, N_BAD
};

#define V_BATCH 4 /* the scorer's max_batch; request 2 is the bad one */
#define V_BAD 2

START_TEST(test_validation)
{
    tu_io io;
    tu_io_load(&io, "tiny");
    lm_model *m = tu_case_model("tiny", 0);
    const lm_config *c = &m->cfg;
    ck_assert_int_eq(io.lengths[V_BAD], c->max_hist); /* the reference gives user 2 a full history */
    const int M = io.m, n_req = V_BATCH + 1;
    lm_scorer *s = tu_scorer(m, V_BATCH, M, 2, LM_ISA_COUNT);
    /* Own copies of the inputs of every request, one candidate slot spare. */
    int32_t items[V_BATCH + 1][64], actions[V_BATCH + 1][64], cands[V_BATCH + 1][64];
    float scores[V_BATCH + 1][64], uv[V_BATCH + 1][64], before_s[V_BATCH + 1][64], before_u[V_BATCH + 1][64];
    ck_assert(c->max_hist <= 64 && M < 64 && c->d_model <= 64);
    lm_request reqs[V_BATCH + 1];
    for (int b = 0; b < n_req; b++) {
        memcpy(items[b], io.hist_items + (size_t)b * io.n, sizeof(int32_t) * io.n);
        memcpy(actions[b], io.hist_actions + (size_t)b * io.n, sizeof(int32_t) * io.n);
        memcpy(cands[b], io.cands + (size_t)b * M, sizeof(int32_t) * M);
        cands[b][M] = 1;
        reqs[b] = (lm_request){.hist_items = items[b], .hist_actions = actions[b], .n_hist = io.lengths[b],
                               .cands = cands[b], .n_cands = M, .scores = scores[b], .user_vec = uv[b]};
    }
    lm_request *r = &reqs[V_BAD];
    int n = 3, at = 5;
    char want[128];
    switch (_i) {
    case BAD_HIST_LONG:
        r->n_hist = c->max_hist + 1;
        snprintf(want, sizeof want, "request 2: history length %d, the model takes 0..%d", c->max_hist + 1,
                 c->max_hist);
        break;
    case BAD_HIST_NEG:
        r->n_hist = -1;
        snprintf(want, sizeof want, "request 2: history length -1");
        break;
    case BAD_ITEM_HIGH:
        items[V_BAD][at] = c->n_items;
        snprintf(want, sizeof want, "request 2: hist_items[5] = %d is outside 0..%d", c->n_items,
                 c->n_items - 1);
        break;
    case BAD_ITEM_NEG:
        items[V_BAD][0] = -1;
        snprintf(want, sizeof want, "request 2: hist_items[0] = -1 is outside");
        break;
    case BAD_ACTION_NEG:
        actions[V_BAD][at] = -1;
        snprintf(want, sizeof want, "request 2: hist_actions[5] = -1 is outside 0..%d", c->n_actions - 1);
        break;
    case BAD_ACTION_HIGH:
        actions[V_BAD][c->max_hist - 1] = c->n_actions;
        snprintf(want, sizeof want, "request 2: hist_actions[%d] = %d is outside", c->max_hist - 1,
                 c->n_actions);
        break;
    case BAD_CAND_HIGH:
        cands[V_BAD][M - 1] = c->n_items;
        snprintf(want, sizeof want, "request 2: cands[%d] = %d is outside 0..%d", M - 1, c->n_items,
                 c->n_items - 1);
        break;
    case BAD_CAND_NEG:
        cands[V_BAD][0] = INT32_MIN;
        snprintf(want, sizeof want, "request 2: cands[0] = %d is outside", (int)INT32_MIN);
        break;
    case BAD_CANDS_MANY:
        r->n_cands = M + 1;
        snprintf(want, sizeof want, "request 2: %d candidates, this scorer takes 0..%d", M + 1, M);
        break;
    case BAD_CANDS_NEG:
        r->n_cands = -3;
        snprintf(want, sizeof want, "request 2: -3 candidates");
        break;
    case BAD_NULL_ITEMS:
        r->hist_items = NULL;
        snprintf(want, sizeof want, "request 2: hist_items is NULL");
        break;
    case BAD_NULL_ACTIONS:
        r->hist_actions = NULL;
        snprintf(want, sizeof want, "request 2: hist_actions is NULL");
        break;
    case BAD_NULL_CANDS:
        r->cands = NULL;
        snprintf(want, sizeof want, "request 2: cands is NULL");
        break;
    case BAD_NULL_SCORES:
        r->scores = NULL;
        snprintf(want, sizeof want, "request 2: scores is NULL");
        break;
    case BAD_BATCH_BIG:
        n = V_BATCH + 1;
        snprintf(want, sizeof want, "batch of %d requests, this scorer takes 0..%d", V_BATCH + 1, V_BATCH);
        break;
    default:
        n = -1;
        snprintf(want, sizeof want, "batch of -1 requests");
        break;
    }
    for (int b = 0; b < n_req; b++) {
        tu_fill(scores[b], 64, SENTINEL);
        tu_fill(uv[b], 64, SENTINEL);
    }
    memcpy(before_s, scores, sizeof scores);
    memcpy(before_u, uv, sizeof uv);
    char err[CM_ERRSZ] = "";
    ck_assert_int_eq(lm_scorer_run(s, reqs, n, err, sizeof err), -1);
    ck_assert_msg(strstr(err, want) != NULL, "message lacks \"%s\": %s", want, err);
    ck_assert_msg(memcmp(before_s, scores, sizeof scores) == 0 && memcmp(before_u, uv, sizeof uv) == 0,
                  "a rejected batch wrote outputs");
    printf("validation  %-2d: \"%s\"; outputs unchanged\n", _i, err);

    /* The scorer still works: the valid requests, scored again, match the reference. */
    for (int b = 0; b < V_BATCH; b++)
        reqs[b] = tu_io_request(&io, b, scores[b], uv[b]);
    tu_run(s, reqs, V_BATCH);
    double es = 0, eu = 0;
    for (int b = 0; b < V_BATCH; b++) {
        double e = tu_max_abs_diff(scores[b], io.scores + (size_t)b * M, M);
        es = e > es ? e : es;
        e = tu_max_abs_diff(uv[b], io.user_vec + (size_t)b * io.d, io.d);
        eu = e > eu ? e : eu;
    }
    ck_assert_msg(es <= GOLDEN_TOL && eu <= GOLDEN_TOL, "after a rejected batch: errors %g %g", es, eu);
    lm_scorer_free(s);
    lm_model_free(m);
    tu_io_free(&io);
}
END_TEST

/* An empty batch is valid and writes nothing. */
START_TEST(test_empty_batch)
{
    lm_model *m = tu_case_model("tiny", 0);
    lm_scorer *s = tu_scorer(m, 2, 4, 2, LM_ISA_COUNT);
    tu_run(s, NULL, 0);
    lm_scorer_free(s);
    lm_model_free(m);
}
END_TEST

static void assert_scorer_new_fails(const lm_model *m, lm_scorer_opts o, const char *want)
{
    char err[CM_ERRSZ] = "";
    lm_scorer *s = (lm_scorer *)&s;
    ck_assert_int_eq(lm_scorer_new(&s, m, &o, err, sizeof err), -1);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err, want) != NULL, "message lacks \"%s\": %s", want, err);
    printf("scorer-new  max_batch=%d max_cands=%d isa=%d (%s): \"%s\"\n", o.max_batch, o.max_cands,
           (int)o.isa, o.isa == LM_ISA_COUNT ? "default" : lm_isa_name(o.isa), err);
}

START_TEST(test_scorer_new_errors)
{
    lm_model *m = tu_case_model("tiny", 0);
    const lm_scorer_opts ok = {.max_batch = 4, .max_cands = 8, .threads = 1, .isa = LM_ISA_COUNT};
    lm_scorer_opts o = ok;
    o.max_batch = 0;
    assert_scorer_new_fails(m, o, "max_batch 0");
    o.max_batch = -5;
    assert_scorer_new_fails(m, o, "max_batch -5");
    o.max_batch = 65537;
    assert_scorer_new_fails(m, o, "max_batch 65537");
    o = ok;
    o.max_cands = -1;
    assert_scorer_new_fails(m, o, "max_cands -1");
    o.max_cands = (1 << 20) + 1;
    assert_scorer_new_fails(m, o, "max_cands 1048577");
    int unavailable = 0;
    for (int i = LM_ISA_SCALAR; i < LM_ISA_COUNT; i++) {
        if (lm_kern_get((lm_isa)i))
            continue;
        char want[96];
        snprintf(want, sizeof want, "cannot run the %s kernels", lm_isa_name((lm_isa)i));
        o = ok;
        o.isa = (lm_isa)i;
        assert_scorer_new_fails(m, o, want);
        unavailable++;
    }
    if (!unavailable)
        printf("scorer-new  this CPU runs every ISA: no unavailable ISA to refuse\n");
    o = ok;
    o.isa = (lm_isa)(LM_ISA_COUNT + 3);
    assert_scorer_new_fails(m, o, "cannot run");
    /* Accepted edges: max_cands 0 (history only) and threads 0 (one per CPU). */
    o = ok;
    o.max_cands = 0;
    o.threads = 0;
    lm_scorer_free(tu_scorer(m, o.max_batch, o.max_cands, o.threads, o.isa));
    lm_model_free(m);
}
END_TEST

/* ---- nothing allocated per request --------------------------------------------------- */

START_TEST(test_no_alloc_per_run)
{
    const char *cs = tu_case_name(_i);
    tu_io io;
    tu_io_load(&io, cs);
    float *scores = malloc(sizeof(float) * (size_t)io.B * io.m);
    float *uv = malloc(sizeof(float) * (size_t)io.B * io.d);
    lm_request *reqs = malloc(sizeof *reqs * (size_t)io.B);
    ck_assert(scores && uv && reqs);
    for (int b = 0; b < io.B; b++)
        reqs[b] = tu_io_request(&io, b, scores + (size_t)b * io.m, uv + (size_t)b * io.d);

    /* The counter sees an allocation made while it runs, so a zero below means something. */
    void *(*volatile alloc)(size_t) = malloc;
    alloc_count_start();
    void *p = alloc(64);
    long probe = alloc_count_stop();
    free(p);
    ck_assert_msg(probe >= 1, "the allocation counter missed a malloc");

    for (int q = 0; q < 2; q++) {
        lm_model *m = tu_case_model(cs, q);
        lm_scorer *s = tu_scorer(m, io.B, io.m, 2, LM_ISA_COUNT);
        pool_wait_started(lm_scorer_pool(s));
        char err[CM_ERRSZ];
        alloc_count_start();
        int rc = lm_scorer_run(s, reqs, io.B, err, sizeof err);
        long first = alloc_count_stop();
        ck_assert_msg(rc == 0, "%s", err);
        alloc_count_start();
        for (int i = 0; i < 20 && rc == 0; i++)
            rc = lm_scorer_run(s, reqs, io.B, err, sizeof err);
        rc |= lm_scorer_run(s, reqs, -1, err, sizeof err) != -1; /* the error path too */
        long later = alloc_count_stop();
        ck_assert_int_eq(rc, 0);
        printf("no-alloc    %-5s isa=%-6s quant=%s threads=2: %ld allocations in the first run, %ld in "
               "the next 20 and a rejected one (expected 0)\n", cs,
               lm_isa_name(lm_isa_default()), quant_name(q), first, later);
        ck_assert_msg(first == 0 && later == 0, "lm_scorer_run allocated: %ld + %ld", first, later);
        lm_scorer_free(s);
        lm_model_free(m);
    }
    free(scores);
    free(uv);
    free(reqs);
    tu_io_free(&io);
}
END_TEST

/* ---- suite ------------------------------------------------------------------------------ */

static Suite *forward_suite(void)
{
    Suite *s = suite_create("forward");
    TCase *tc;

    tc = tcase_create("golden");
    tcase_add_loop_test(tc, test_golden, 0, TU_N_CASES);
    tcase_set_timeout(tc, 120); /* ASan builds are several times slower */
    suite_add_tcase(s, tc);

    tc = tcase_create("invariance");
    tcase_add_loop_test(tc, test_batch_invariance, 0, TU_N_CASES);
    tcase_add_loop_test(tc, test_variable_lengths, 0, TU_N_CASES);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("int8");
    tcase_add_loop_test(tc, test_int8_accuracy, 0, TU_N_CASES);
    tcase_add_loop_test(tc, test_int8_kernels_bitwise, 0, TU_N_CASES);
    tcase_add_loop_test(tc, test_quantize_roundtrip, 0, TU_N_CASES);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("load_errors");
    tcase_add_loop_test(tc, test_load_error, 0, N_MUTATIONS);
    tcase_add_test(tc, test_load_missing_file);
    suite_add_tcase(s, tc);

    tc = tcase_create("validation");
    tcase_add_loop_test(tc, test_validation, 0, N_BAD);
    tcase_add_test(tc, test_empty_batch);
    tcase_add_test(tc, test_scorer_new_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("no_alloc");
    tcase_add_loop_test(tc, test_no_alloc_per_run, 0, TU_N_CASES);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    alloc_hooks_install();
    return tu_main("check_forward", forward_suite());
}
