/* tests/check_gpu.c — the GPU engine (gpu/engine.h) against the reference
 * implementation and the CPU model core. It runs on the GPU machine only
 * (make test-gpu, docs/gpu.md) and is not part of make test: without a
 * usable GPU every test fails, saying so.
 *
 *   probe        gp_probe finds the GPU; the engine names it;
 *   golden       every golden case, fp32, against the float64 reference:
 *                max |err| / max |ref| <= 1e-3 for scores and user vectors;
 *   int8         int8 golden cases, a small random model of the
 *                student's width ("mid") and 10,000-item models of the
 *                bench's student and teacher shapes (64-event histories, 512
 *                candidates, B = 16 with histories 0..64 and some shorter
 *                candidate lists); the random ones through each way of
 *                gpu/fast.cu (rows, split, wide; wgmma and lean at
 *                d_model 128): GPU
 *                against the CPU scorer,
 *                top-10 overlap, scores, user vectors;
 *   retrieval    top-100 with exclusions, GPU against lm_retrieve on the
 *                same user vectors: the same items in the same order, but
 *                where scores tie within 1e-4 relative;
 *   validation   bad requests fail as the CPU's do (-1, the same message,
 *                naming the request and field), write nothing, and the
 *                engine still answers afterwards;
 *   scorer       rk_scorer on "cuda" against "cpu" (int8): top-10 overlap;
 *                "auto" picks the GPU.
 *
 * main() never touches CUDA: Check forks every test, and a CUDA context
 * does not survive fork. Every test frees what it made, so that the suite
 * also runs in one process (CK_FORK=no, as make test-gpu runs it under
 * compute-sanitizer). Test cases are tagged "sanitize" (the golden shapes
 * and mid, also run under racecheck) or "big" (the 10,000-item models). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "gpu/engine.h"
#include "llm/forward.h"
#include "llm/model.h"
#include "llm/quantize.h"
#include "llm/retrieval.h"
#include "llm/safetensors.h"
#include "ranker/rk_scorer.h"
#include "tests/testutil.h"

#define GOLDEN_REL_TOL 1e-3 /* fp32 GPU vs the float64 reference, relative to max|ref| */
#define TOP10_MEAN 0.95     /* int8 GPU vs int8 CPU: mean top-10 overlap */
/* int8 GPU vs int8 CPU, max |diff| / max |cpu|. Both quantize the same way;
 * they differ where a float step rounds differently and an activation then
 * lands on the other side of an int8 rounding boundary, which moves what
 * follows by about one quantization step. Between the CPU's own ISAs that
 * was 4.7e-3 absolute at worst (tests/check_forward.c); the int8 error
 * against the reference is 0.02-0.03 absolute. A wrong scale or a missed
 * bias is far above this bound. */
#define INT8_REL_TOL 2e-2
#define RETR_TIE_TOL 1e-4 /* retrieval: scores this close (relative) may swap */
#define MAX_K 100
#define MAX_EXCL 64

/* The 10,000-item model: the bench's student shape on a smaller catalog. */
#define BIG_B 16
#define BIG_M 512
static const lm_config big_cfg = {.d_model = 128, .n_heads = 4, .n_layers = 2, .d_ffn = 512,
                                  .max_hist = 64, .n_items = 10000, .n_actions = 8};
/* ... and the bench's teacher shape on it; and a small model of
 * gpu/fast.cu's student width, small enough for racecheck: histories of up
 * to 40 events (3 of a history cluster's 4 blocks at work), 100 candidates
 * (a tile of 36: its last 16 rows idle) */
static const lm_config bigt_cfg = {.d_model = 256, .n_heads = 4, .n_layers = 4, .d_ffn = 1024,
                                   .max_hist = 64, .n_items = 10000, .n_actions = 8};
static const lm_config mid_cfg = {.d_model = 128, .n_heads = 4, .n_layers = 2, .d_ffn = 256,
                                  .max_hist = 40, .n_items = 500, .n_actions = 8};
#define MID_B 6
#define MID_M 100

/* ---- helpers ------------------------------------------------------------------ */

static void need_gpu(void)
{
    char info[CM_ERRSZ] = "";
    ck_assert_msg(gp_probe(0, info, sizeof info), "gp_probe: %s. This suite needs a GPU: run make test-gpu "
                  "on the GPU machine (docs/gpu.md)", info);
}

/* threads: the engine's host threads for copies (gp_opts; 0: the default) */
static gp_engine *engine_threads(const lm_model *m, int max_batch, int max_cands, int threads)
{
    char err[CM_ERRSZ] = "";
    gp_engine *e = NULL;
    gp_opts o = {.max_batch = max_batch, .max_cands = max_cands, .max_k = MAX_K, .max_exclude = MAX_EXCL,
                 .device = 0, .threads = threads};
    ck_assert_msg(gp_engine_new(&e, m, &o, err, sizeof err) == 0, "gp_engine_new: %s", err);
    ck_assert_ptr_nonnull(e);
    return e;
}

static gp_engine *engine_new(const lm_model *m, int max_batch, int max_cands)
{
    return engine_threads(m, max_batch, max_cands, 0);
}

static void gpu_run(gp_engine *e, const lm_request *reqs, int n)
{
    char err[CM_ERRSZ] = "";
    ck_assert_msg(gp_engine_score(e, reqs, n, err, sizeof err) == 0, "gp_engine_score: %s", err);
}

static double max_abs(const float *a, size_t n)
{
    double mx = 0.0;
    for (size_t i = 0; i < n; i++)
        mx = fabs((double)a[i]) > mx ? fabs((double)a[i]) : mx;
    return mx;
}

/* max |a - ref| / max |ref|; +inf on NaN (unwritten outputs are NaN). */
static double max_rel_diff(const float *a, const float *ref, size_t n)
{
    double scale = max_abs(ref, n);
    return tu_max_abs_diff(a, ref, n) / (scale > 0.0 ? scale : 1.0);
}

/* ---- models ------------------------------------------------------------------- */

/* A random model with the reference's initialisation (embeddings N(0, 0.5),
 * linear layers U(-1/sqrt(in), 1/sqrt(in)), LayerNorm 1/0, biases 0). */
static void write_random_model(const char *path, const lm_config *c, uint64_t seed)
{
    char err[CM_ERRSZ] = "", v[32];
    tu_rng rng = {.s = seed};
    lm_st_writer *w = lm_st_writer_new();
    ck_assert_ptr_nonnull(w);
    static const char *const keys[] = {"d_model", "n_heads", "n_layers", "d_ffn", "max_hist", "n_items",
                                       "n_actions"};
    const int vals[] = {c->d_model, c->n_heads, c->n_layers, c->d_ffn, c->max_hist, c->n_items, c->n_actions};
    ck_assert_msg(lm_st_writer_meta(w, "arch", LM_ARCH, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < 7; i++) {
        snprintf(v, sizeof v, "%d", vals[i]);
        ck_assert_msg(lm_st_writer_meta(w, keys[i], v, err, sizeof err) == 0, "%s", err);
    }
    lm_tensor_spec *specs = malloc(sizeof *specs * (size_t)lm_tensor_specs_max(c));
    ck_assert_ptr_nonnull(specs);
    int n = lm_tensor_specs(c, specs);
    for (int s = 0; s < n; s++) {
        const lm_tensor_spec *t = &specs[s];
        size_t numel = (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
        float *data = malloc(sizeof(float) * numel);
        ck_assert_ptr_nonnull(data);
        int ln_w = strstr(t->name, "ln") && strstr(t->name, ".weight"), emb = strstr(t->name, "_emb") != NULL;
        double bound = t->ndim == 2 ? 1.0 / sqrt((double)t->shape[1]) : 0.0;
        for (size_t i = 0; i < numel; i++)
            data[i] = ln_w ? 1.0f : emb ? 0.5f * tu_normal(&rng) : (float)(bound * (2.0 * tu_unif(&rng) - 1.0));
        ck_assert_msg(lm_st_writer_add(w, t->name, LM_DT_F32, t->ndim, t->shape, data, err, sizeof err) == 0,
                      "%s", err);
        free(data);
    }
    ck_assert_msg(lm_st_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    lm_st_writer_free(w);
    free(specs);
}

/* A random model (name "big": the student shape, "bigt": the teacher's,
 * "mid"), fp32 (int8 = 0) or int8, written to the scratch directory by the
 * first test that asks (tests run one at a time). */
static lm_model *big_model(const char *name, const lm_config *c, int int8)
{
    char fp32[TU_PATH], q[TU_PATH], fname[64], qname[64];
    snprintf(fname, sizeof fname, "%s.safetensors", name);
    snprintf(qname, sizeof qname, "%s.int8.safetensors", name);
    tu_tmp_path(fp32, fname);
    tu_tmp_path(q, qname);
    if (access(q, R_OK) != 0) {
        write_random_model(fp32, c, 2024);
        tu_quantize(fp32, qname, q);
    }
    return tu_model_load(int8 ? q : fp32);
}

/* Parity cases: the golden cases, mid (N_SMALL: the cases racecheck
 * runs), then the two big models. */
#define N_SMALL (TU_N_CASES + 1)
#define N_PARITY (TU_N_CASES + 3)

static const char *parity_name(int i)
{
    static const char *const rnd[] = {"mid", "big", "bigt"};
    return i < TU_N_CASES ? tu_case_name(i) : rnd[i - TU_N_CASES];
}

static lm_model *parity_model(int i, int int8)
{
    static const lm_config *const cfgs[] = {&mid_cfg, &big_cfg, &bigt_cfg};
    return i < TU_N_CASES ? tu_case_model(tu_case_name(i), int8)
                          : big_model(parity_name(i), cfgs[i - TU_N_CASES], int8);
}

/* ---- a batch of requests, scored on two devices --------------------------------- */

typedef struct batch {
    int B, M, d;               /* users, candidate slots per user, d_model */
    lm_request *reqs;          /* [B] */
    int32_t *items, *actions;  /* [B, H] */
    int32_t *cands;            /* [B, M] */
    float *cpu_s, *gpu_s;      /* [B, M] */
    float *cpu_u, *gpu_u;      /* [B, d] */
    int no_uv;                 /* request whose user_vec is NULL, or -1 */
} batch;

static void batch_alloc(batch *bt, int B, int H, int M, int d)
{
    *bt = (batch){.B = B, .M = M, .d = d, .no_uv = -1};
    bt->reqs = calloc((size_t)B, sizeof *bt->reqs);
    bt->items = calloc((size_t)B * (H ? H : 1), sizeof(int32_t));
    bt->actions = calloc((size_t)B * (H ? H : 1), sizeof(int32_t));
    bt->cands = calloc((size_t)B * M, sizeof(int32_t));
    bt->cpu_s = malloc(sizeof(float) * (size_t)B * M);
    bt->gpu_s = malloc(sizeof(float) * (size_t)B * M);
    bt->cpu_u = malloc(sizeof(float) * (size_t)B * d);
    bt->gpu_u = malloc(sizeof(float) * (size_t)B * d);
    ck_assert(bt->reqs && bt->items && bt->actions && bt->cands && bt->cpu_s && bt->gpu_s && bt->cpu_u &&
              bt->gpu_u);
    for (int b = 0; b < B; b++) {
        bt->reqs[b].hist_items = bt->items + (size_t)b * H;
        bt->reqs[b].hist_actions = bt->actions + (size_t)b * H;
        bt->reqs[b].cands = bt->cands + (size_t)b * M;
    }
}

static void batch_free(batch *bt)
{
    free(bt->reqs);
    free(bt->items);
    free(bt->actions);
    free(bt->cands);
    free(bt->cpu_s);
    free(bt->gpu_s);
    free(bt->cpu_u);
    free(bt->gpu_u);
}

/* The golden batch of a case. */
static void batch_golden(batch *bt, const char *case_name)
{
    tu_io io;
    tu_io_load(&io, case_name);
    batch_alloc(bt, io.B, io.n, io.m, io.d);
    memcpy(bt->items, io.hist_items, sizeof(int32_t) * (size_t)io.B * io.n);
    memcpy(bt->actions, io.hist_actions, sizeof(int32_t) * (size_t)io.B * io.n);
    memcpy(bt->cands, io.cands, sizeof(int32_t) * (size_t)io.B * io.m);
    for (int b = 0; b < io.B; b++) {
        bt->reqs[b].n_hist = io.lengths[b];
        bt->reqs[b].n_cands = io.m;
    }
    tu_io_free(&io);
}

/* B users of M candidate slots: histories of every length class (0, 1,
 * full, random), mostly M candidates, some fewer, one none, and (B > 5) one
 * request without a user_vec output. */
static void batch_random(batch *bt, const lm_config *c, uint64_t seed, int B, int M)
{
    tu_rng rng = {.s = seed};
    const int H = c->max_hist;
    batch_alloc(bt, B, H, M, c->d_model);
    for (int b = 0; b < B; b++) {
        lm_request *r = &bt->reqs[b];
        r->n_hist = b == 0 ? 0 : b == 1 ? 1 : b == 2 ? H : tu_int(&rng, 0, H);
        r->n_cands = b == 4 ? 0 : b % 5 == 3 ? tu_int(&rng, 1, M - 1) : M;
        for (int t = 0; t < H; t++) {
            bt->items[(size_t)b * H + t] = tu_int(&rng, 0, c->n_items - 1);
            bt->actions[(size_t)b * H + t] = tu_int(&rng, 0, c->n_actions - 1);
        }
        for (int j = 0; j < M; j++)
            bt->cands[(size_t)b * M + j] = tu_int(&rng, 0, c->n_items - 1);
    }
    bt->no_uv = B > 5 ? 5 : -1;
}

/* Parity case i's batch: the golden one, or a random one (mid: MID_B x
 * MID_M, the big models BIG_B x BIG_M). */
static void batch_parity(batch *bt, int i, const lm_model *m)
{
    if (i < TU_N_CASES)
        batch_golden(bt, tu_case_name(i));
    else if (i == TU_N_CASES)
        batch_random(bt, &m->cfg, 77, MID_B, MID_M);
    else
        batch_random(bt, &m->cfg, 77, BIG_B, BIG_M);
}

/* Points the requests' outputs at s [B, M] and u [B, d], pre-filled with NaN. */
static void batch_outputs(batch *bt, float *s, float *u)
{
    tu_fill(s, (size_t)bt->B * bt->M, NAN);
    tu_fill(u, (size_t)bt->B * bt->d, NAN);
    for (int b = 0; b < bt->B; b++) {
        bt->reqs[b].scores = s + (size_t)b * bt->M;
        bt->reqs[b].user_vec = b == bt->no_uv ? NULL : u + (size_t)b * bt->d;
    }
}

static void batch_score_cpu(batch *bt, const lm_model *m)
{
    lm_scorer *s = tu_scorer(m, bt->B, bt->M, 0, LM_ISA_COUNT);
    batch_outputs(bt, bt->cpu_s, bt->cpu_u);
    tu_run(s, bt->reqs, bt->B);
    lm_scorer_free(s);
}

static void batch_score_gpu(batch *bt, gp_engine *e)
{
    batch_outputs(bt, bt->gpu_s, bt->gpu_u);
    gpu_run(e, bt->reqs, bt->B);
}

/* ---- probe ---------------------------------------------------------------------- */

START_TEST(test_probe)
{
    char info[CM_ERRSZ] = "";
    int ok = gp_probe(0, info, sizeof info);
    printf("probe       device 0: %s\n", info);
    need_gpu();
    ck_assert_msg(ok && info[0], "gp_probe found a GPU but did not name it");
    lm_model *m = tu_case_model("tiny", 1);
    gp_engine *e = engine_new(m, 2, 4);
    const char *dev = gp_engine_device(e);
    ck_assert_msg(dev && dev[0], "gp_engine_device is empty");
    printf("probe       engine: %s\n", dev);
    gp_engine_free(e);
    lm_model_free(m);
}
END_TEST

/* ---- golden: fp32 against the reference ------------------------------------------ */

START_TEST(test_golden)
{
    need_gpu();
    const char *cs = tu_case_name(_i);
    tu_io io;
    tu_io_load(&io, cs);
    batch bt;
    batch_golden(&bt, cs);
    lm_model *m = tu_case_model(cs, 0);
    gp_engine *e = engine_new(m, bt.B, bt.M);
    batch_score_gpu(&bt, e);
    double es = max_rel_diff(bt.gpu_s, io.scores, (size_t)bt.B * bt.M);
    double eu = max_rel_diff(bt.gpu_u, io.user_vec, (size_t)bt.B * bt.d);
    printf("golden      %-5s quant=fp32 B=%d m=%d: scores max|err|/max|ref| %.3e (max|ref| %.3g), user_vec "
           "%.3e (max|ref| %.3g) (tol %.0e)\n", cs, bt.B, bt.M, es, max_abs(io.scores, (size_t)bt.B * bt.M),
           eu, max_abs(io.user_vec, (size_t)bt.B * bt.d), GOLDEN_REL_TOL);
    ck_assert_msg(es <= GOLDEN_REL_TOL, "%s: scores max|err|/max|ref| %g > %g", cs, es, GOLDEN_REL_TOL);
    ck_assert_msg(eu <= GOLDEN_REL_TOL, "%s: user_vec max|err|/max|ref| %g > %g", cs, eu, GOLDEN_REL_TOL);
    gp_engine_free(e);
    lm_model_free(m);
    batch_free(&bt);
    tu_io_free(&io);
}
END_TEST

/* ---- int8: GPU against the CPU scorer -------------------------------------------- */

/* Mean top-10 overlap over the requests with candidates; worst in *worst. */
static double batch_overlap(const batch *bt, double *worst)
{
    double sum = 0.0;
    int n = 0;
    *worst = 1.0;
    for (int b = 0; b < bt->B; b++) {
        int nc = bt->reqs[b].n_cands;
        if (nc == 0)
            continue;
        double o = tu_top10_overlap(bt->cpu_s + (size_t)b * bt->M, bt->gpu_s + (size_t)b * bt->M, nc);
        *worst = o < *worst ? o : *worst;
        sum += o;
        n++;
    }
    return n ? sum / n : 1.0;
}

/* max |gpu - cpu| / max |cpu| over the outputs the requests asked for. */
static void batch_diffs(const batch *bt, double *ds, double *du)
{
    double ms = 0.0, es = 0.0, mu = 0.0, eu = 0.0;
    for (int b = 0; b < bt->B; b++) {
        size_t os = (size_t)b * bt->M, ou = (size_t)b * bt->d;
        int nc = bt->reqs[b].n_cands;
        es = fmax(es, tu_max_abs_diff(bt->gpu_s + os, bt->cpu_s + os, (size_t)nc));
        ms = fmax(ms, max_abs(bt->cpu_s + os, (size_t)nc));
        if (b == bt->no_uv)
            continue;
        eu = fmax(eu, tu_max_abs_diff(bt->gpu_u + ou, bt->cpu_u + ou, (size_t)bt->d));
        mu = fmax(mu, max_abs(bt->cpu_u + ou, (size_t)bt->d));
    }
    *ds = es / (ms > 0.0 ? ms : 1.0);
    *du = eu / (mu > 0.0 ? mu : 1.0);
}

/* The fast path's way (RANKD_GPU_FAST) for the engines made next: "leanh"
 * is the lean way with its own history at every batch size (below
 * LEAN_HIST_B requests it reads the split way's). NULL: the engine's own
 * choice. */
static void set_way(const char *way)
{
    unsetenv("RANKD_GPU_LEAN_HIST_B");
    if (!way) {
        unsetenv("RANKD_GPU_FAST");
        return;
    }
    setenv("RANKD_GPU_FAST", strcmp(way, "leanh") ? way : "lean", 1);
    if (!strcmp(way, "leanh"))
        setenv("RANKD_GPU_LEAN_HIST_B", "1", 1);
}

static size_t bits_differ(const float *a, const float *b, size_t n)
{
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        d += memcmp(&a[i], &b[i], sizeof *a) != 0;
    return d;
}

START_TEST(test_int8_parity)
{
    need_gpu();
    const char *name = parity_name(_i);
    lm_model *m = parity_model(_i, 1);
    batch bt;
    batch_parity(&bt, _i, m);
    batch_score_cpu(&bt, m);
    /* The random models take gpu/fast.cu's path, whose ways
     * (RANKD_GPU_FAST) are each checked, wgmma where d_model is 128 (this
     * suite's GPUs, H100 and H200, have it and the wide way); the golden
     * shapes (small: the fast path's rows way, the others the generic
     * kernels) the engine's choice. The wide way computes what the split way
     * does with other warps and instructions: the same bits. Forced, it runs
     * the history that way too; the engine's own choice (auto) pairs it with
     * the split way's history below WIDE_HIST_B requests (bigt here). The
     * lean way (d_model 128, d_ffn 256 or 512) runs with the split way's
     * history at these batch sizes and, as leanh, with its own. */
    static const char *const paths[] = {"rows", "split", "wgmma", "wide", "lean", "leanh", "auto"};
    const size_t ns = (size_t)bt.B * bt.M, nu = (size_t)bt.B * bt.d;
    float *split_s = malloc(sizeof(float) * ns), *split_u = malloc(sizeof(float) * nu);
    ck_assert(split_s && split_u);
    for (int p = 0; p < (_i < TU_N_CASES ? 1 : (int)(sizeof paths / sizeof paths[0])); p++) {
        const char *path = _i < TU_N_CASES ? "auto" : paths[p];
        if (!strcmp(path, "wgmma") && m->cfg.d_model != 128)
            continue;
        if (!strncmp(path, "lean", 4) && (m->cfg.d_model != 128 || (m->cfg.d_ffn != 256 && m->cfg.d_ffn != 512)))
            continue;
        set_way(path);
        gp_engine *e = engine_new(m, bt.B, bt.M);
        batch_score_gpu(&bt, e);
        double worst, mean = batch_overlap(&bt, &worst), ds, du;
        batch_diffs(&bt, &ds, &du);
        printf("int8        %-5s %-5s B=%d m<=%d: top-10 overlap GPU vs CPU mean %.3f (worst user %.2f, min mean "
               "%.2f); max|diff|/max|cpu|: scores %.3e, user_vec %.3e (tol %.0e)\n", name, path, bt.B, bt.M,
               mean, worst, TOP10_MEAN, ds, du, INT8_REL_TOL);
        ck_assert_msg(mean >= TOP10_MEAN, "%s %s: mean top-10 overlap %.3f < %.2f", name, path, mean, TOP10_MEAN);
        ck_assert_msg(ds <= INT8_REL_TOL, "%s %s: scores max|diff|/max|cpu| %g > %g", name, path, ds,
                      INT8_REL_TOL);
        ck_assert_msg(du <= INT8_REL_TOL, "%s %s: user_vec max|diff|/max|cpu| %g > %g", name, path, du,
                      INT8_REL_TOL);
        if (!strcmp(path, "split")) {
            memcpy(split_s, bt.gpu_s, sizeof(float) * ns);
            memcpy(split_u, bt.gpu_u, sizeof(float) * nu);
        } else if (!strcmp(path, "wide")) {
            const size_t differ = bits_differ(bt.gpu_s, split_s, ns) + bits_differ(bt.gpu_u, split_u, nu);
            printf("int8        %-5s wide against split: %zu floats compared, %zu differ\n", name, ns + nu, differ);
            ck_assert_msg(differ == 0, "%s: %zu of %zu floats differ between the wide and split ways", name, differ,
                          ns + nu);
        }
        gp_engine_free(e);
        set_way(NULL);
    }
    free(split_s);
    free(split_u);
    lm_model_free(m);
    batch_free(&bt);
}
END_TEST

/* ---- graphs: a replayed graph answers as direct launches do -------------------- */

/* New items and candidates, the same shape. */
/* New items, and new candidate counts in the same tiles of 64 (the same
 * graph shape, gpu/engine.cu): e.g. 100 -> 81, 40 -> 57. */
static void batch_perturb(batch *bt, const lm_config *c)
{
    for (size_t i = 0; i < (size_t)bt->B * c->max_hist; i++)
        bt->items[i] = (bt->items[i] + 1) % c->n_items;
    for (size_t i = 0; i < (size_t)bt->B * bt->M; i++)
        bt->cands[i] = (bt->cands[i] + 7) % c->n_items;
    for (int b = 0; b < bt->B; b++) {
        const int n = bt->reqs[b].n_cands, t0 = (n - 1) / 64 * 64; /* the last tile's first */
        if (n > 0)
            bt->reqs[b].n_cands = t0 + 1 + (n - t0 - 1 + 17) % (bt->M - t0 < 64 ? bt->M - t0 : 64);
    }
}

/* Calls of shapes x, y, x, x' (x with new items and candidate counts in
 * the same tiles, so a replay must read this call's requests, and its call
 * number: the flags), y, x on an engine
 * that replays graphs and on one with RANKD_GPU_GRAPHS=0: the same bits.
 * The graphed engine runs a shape's first call directly, captures the
 * second and replays the rest. mid through the four ways of gpu/fast.cu, the
 * golden fp32 small through the generic kernels. */
START_TEST(test_graphs)
{
    need_gpu();
    static const struct {
        int model, int8;
        const char *way;
    } runs[] = {{TU_N_CASES, 1, "rows"}, {TU_N_CASES, 1, "split"}, {TU_N_CASES, 1, "wgmma"},
                {TU_N_CASES, 1, "wide"},  {TU_N_CASES, 1, "lean"},  {TU_N_CASES, 1, "leanh"},
                {1, 0, "auto"}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        lm_model *m = parity_model(runs[i].model, runs[i].int8);
        batch x, y, x2;
        batch_random(&x, &m->cfg, 77, MID_B, MID_M);
        batch_random(&y, &m->cfg, 78, MID_B - 2, MID_M);
        batch_random(&x2, &m->cfg, 77, MID_B, MID_M);
        batch_perturb(&x2, &m->cfg);
        batch *seq[] = {&x, &y, &x, &x2, &y, &x};
        set_way(runs[i].way);
        setenv("RANKD_GPU_GRAPHS", "0", 1);
        gp_engine *direct = engine_new(m, MID_B, MID_M);
        unsetenv("RANKD_GPU_GRAPHS");
        gp_engine *graphed = engine_new(m, MID_B, MID_M);
        set_way(NULL);
        size_t n = 0, differ = 0;
        for (size_t k = 0; k < sizeof seq / sizeof seq[0]; k++) {
            batch *bt = seq[k]; /* cpu_s, cpu_u hold the direct engine's answers here */
            batch_score_gpu(bt, graphed);
            batch_outputs(bt, bt->cpu_s, bt->cpu_u);
            gpu_run(direct, bt->reqs, bt->B);
            const size_t ns = (size_t)bt->B * bt->M, nu = (size_t)bt->B * bt->d;
            differ += bits_differ(bt->gpu_s, bt->cpu_s, ns) + bits_differ(bt->gpu_u, bt->cpu_u, nu);
            n += ns + nu;
        }
        printf("graphs      %-5s %s %-5s: 6 calls of 2 shapes (2 direct, 2 captured, 2 replayed) against direct "
               "launches: %zu floats compared, %zu differ\n", parity_name(runs[i].model), runs[i].int8 ? "int8" : "fp32",
               runs[i].way, n, differ);
        ck_assert_msg(differ == 0, "%s %s: %zu of %zu floats differ between graphs and direct launches",
                      parity_name(runs[i].model), runs[i].way, differ, n);
        gp_engine_free(graphed);
        gp_engine_free(direct);
        batch_free(&x);
        batch_free(&y);
        batch_free(&x2);
        lm_model_free(m);
    }
}
END_TEST

/* A call of THR_B x MID_M (some requests fewer candidates, one none, one
 * without user_vec), large enough that gpu/engine.cu copies the requests
 * and answers on its host threads (PAR_CANDS, 16,384 candidates), on an
 * engine with 4 of them and on one with the caller alone: the same bits. */
#define THR_B 200
START_TEST(test_threads)
{
    need_gpu();
    lm_model *m = parity_model(TU_N_CASES, 1);
    batch x;
    batch_random(&x, &m->cfg, 79, THR_B, MID_M);
    size_t total = 0;
    for (int b = 0; b < x.B; b++)
        total += (size_t)x.reqs[b].n_cands;
    gp_engine *four = engine_threads(m, THR_B, MID_M, 4), *one = engine_threads(m, THR_B, MID_M, 1);
    size_t n = 0, differ = 0;
    for (int k = 0; k < 2; k++) { /* the second time, graphs replay on both */
        batch_score_gpu(&x, four);
        batch_outputs(&x, x.cpu_s, x.cpu_u);
        gpu_run(one, x.reqs, x.B);
        const size_t ns = (size_t)x.B * x.M, nu = (size_t)x.B * x.d;
        differ += bits_differ(x.gpu_s, x.cpu_s, ns) + bits_differ(x.gpu_u, x.cpu_u, nu);
        n += ns + nu;
    }
    printf("threads     mid   int8 auto : 2 calls of %d requests, %zu candidates, copied by 4 host threads against "
           "the caller alone: %zu floats compared, %zu differ\n", THR_B, total, n, differ);
    ck_assert_msg(total >= 16384, "the batch (%zu candidates) is too small for the threaded copies", total);
    ck_assert_msg(differ == 0, "%zu of %zu floats differ between 4 host threads and 1", differ, n);
    /* a bad id late in the batch, found by a worker's copy: the CPU's message */
    const int bad_req = 150, bad_at = x.reqs[bad_req].n_cands - 1;
    x.cands[(size_t)bad_req * x.M + bad_at] = m->cfg.n_items;
    char gerr[CM_ERRSZ] = "", cerr[CM_ERRSZ] = "";
    batch_outputs(&x, x.gpu_s, x.gpu_u); /* NaN */
    ck_assert_int_eq(gp_engine_score(four, x.reqs, x.B, gerr, sizeof gerr), -1);
    ck_assert_int_eq(lm_requests_check(&m->cfg, THR_B, MID_M, x.reqs, x.B, cerr, sizeof cerr), -1);
    printf("threads     bad id in request %d: GPU \"%s\", CPU \"%s\"\n", bad_req, gerr, cerr);
    ck_assert_str_eq(gerr, cerr);
    for (size_t i = 0; i < (size_t)x.B * x.M; i++)
        ck_assert_msg(isnan(x.gpu_s[i]), "score %zu written by a refused call", i);
    gp_engine_free(four);
    gp_engine_free(one);
    batch_free(&x);
    lm_model_free(m);
}
END_TEST

/* ---- retrieval: GPU against lm_retrieve ------------------------------------------ */

typedef struct user_set {
    int n, d;
    float *uv;        /* [n, d]: the CPU's user vectors of a batch, random ones, a zero one */
    int32_t *excl;    /* [n, MAX_EXCL] */
    int *n_excl;      /* [n] */
} user_set;

/* The user vectors of the parity batch of case i (those written), 4
 * random ones, and a zero one (every logit exactly 0: the answer is the
 * lowest eligible rows, in order). */
static void users_make(user_set *us, int i, const lm_model *m, uint64_t seed)
{
    tu_rng rng = {.s = seed};
    batch bt;
    batch_parity(&bt, i, m);
    batch_score_cpu(&bt, m);
    us->d = m->cfg.d_model;
    us->uv = malloc(sizeof(float) * (size_t)(bt.B + 5) * us->d);
    ck_assert_ptr_nonnull(us->uv);
    us->n = 0;
    for (int b = 0; b < bt.B; b++)
        if (b != bt.no_uv)
            memcpy(us->uv + (size_t)us->n++ * us->d, bt.cpu_u + (size_t)b * us->d, sizeof(float) * us->d);
    for (int r = 0; r < 4; r++, us->n++)
        for (int j = 0; j < us->d; j++)
            us->uv[(size_t)us->n * us->d + j] = tu_normal(&rng);
    memset(us->uv + (size_t)us->n++ * us->d, 0, sizeof(float) * us->d);
    batch_free(&bt);
}

/* Exclusions from each user's own answer without them (every third of its
 * top k), repeats, row 0, rows out of range, random rows; shuffled. Users
 * with index % 4 == 3 exclude nothing. */
static void users_exclude(user_set *us, const lm_retrieval *free_answers, const lm_config *c, uint64_t seed)
{
    tu_rng rng = {.s = seed};
    us->excl = malloc(sizeof(int32_t) * (size_t)us->n * MAX_EXCL);
    us->n_excl = calloc((size_t)us->n, sizeof(int));
    ck_assert(us->excl && us->n_excl);
    for (int u = 0; u < us->n; u++) {
        int32_t *e = us->excl + (size_t)u * MAX_EXCL;
        int n = 0;
        if (u % 4 == 3)
            continue;
        for (int j = 0; j < free_answers[u].n_out && n < MAX_EXCL - 10; j += 3)
            e[n++] = free_answers[u].items[j];
        if (n)
            e[n++] = e[0];
        e[n++] = 0;
        e[n++] = -7;
        e[n++] = c->n_items;
        e[n++] = INT32_MAX;
        for (int j = 0; j < 4; j++)
            e[n++] = tu_int(&rng, 1, c->n_items - 1);
        for (int j = n - 1; j > 0; j--) {
            int x = tu_int(&rng, 0, j);
            int32_t t = e[j];
            e[j] = e[x];
            e[x] = t;
        }
        us->n_excl[u] = n;
    }
}

static void users_free(user_set *us)
{
    free(us->uv);
    free(us->excl);
    free(us->n_excl);
}

/* One request per user, k = MAX_K, into items/scores [n, MAX_K] (pre-filled). */
static void retr_requests(const user_set *us, int with_excl, lm_retrieval *reqs, int32_t *items, float *scores)
{
    static const int32_t none[1] = {0};
    for (int u = 0; u < us->n; u++) {
        reqs[u] = (lm_retrieval){.user_vec = us->uv + (size_t)u * us->d,
                                 .exclude = with_excl ? us->excl + (size_t)u * MAX_EXCL : none,
                                 .n_exclude = with_excl ? us->n_excl[u] : 0, .k = MAX_K,
                                 .items = items + (size_t)u * MAX_K, .scores = scores + (size_t)u * MAX_K,
                                 .n_out = -1};
        for (int j = 0; j < MAX_K; j++) {
            reqs[u].items[j] = -5;
            reqs[u].scores[j] = NAN;
        }
    }
}

typedef struct retr_verdict {
    double max_rel;   /* max |gpu - cpu| / scale over ranks */
    int moved;        /* ranks whose item differs (near-ties) */
} retr_verdict;

static int find_item(const int32_t *items, int n, int32_t it)
{
    for (int j = 0; j < n; j++)
        if (items[j] == it)
            return j;
    return -1;
}

/* The GPU's answer against the CPU's: same n_out; at every rank the scores
 * agree within RETR_TIE_TOL x scale; an item that differs from the CPU's at
 * its rank is a near-tie: the CPU ranks it where its score ties, or, past
 * the CPU's list, it ties the CPU's last score. A zero user must match
 * exactly (every logit is 0; ties go to the lower row). */
static void retr_compare(const lm_retrieval *c, const lm_retrieval *g, int zero, const char *what,
                         retr_verdict *v)
{
    ck_assert_msg(g->n_out == c->n_out, "%s: n_out %d, the CPU's %d", what, g->n_out, c->n_out);
    const int n = c->n_out;
    if (n == 0)
        return;
    double scale = fmax(fabs((double)c->scores[0]), fabs((double)c->scores[n - 1]));
    scale = scale > 0.0 ? scale : 1.0;
    for (int j = 0; j < n; j++) {
        int32_t it = g->items[j];
        double e = fabs((double)g->scores[j] - (double)c->scores[j]) / scale;
        v->max_rel = fmax(v->max_rel, e != e ? INFINITY : e);
        ck_assert_msg(e <= RETR_TIE_TOL, "%s: rank %d: GPU (%d, %.9g), CPU (%d, %.9g)", what, j, it,
                      g->scores[j], c->items[j], c->scores[j]);
        ck_assert_msg(find_item(g->items, j, it) < 0, "%s: item %d returned twice", what, it);
        if (it == c->items[j])
            continue;
        ck_assert_msg(!zero, "%s: zero user: rank %d is item %d, the CPU's %d (ties go to the lower row)",
                      what, j, it, c->items[j]);
        int at = find_item(c->items, n, it);
        float ref = at >= 0 ? c->scores[at] : c->scores[n - 1];
        ck_assert_msg(fabs((double)ref - (double)c->scores[j]) / scale <= RETR_TIE_TOL,
                      "%s: rank %d: GPU item %d (%.9g), CPU item %d (%.9g); the CPU %s %.9g", what, j, it,
                      g->scores[j], c->items[j], c->scores[j], at >= 0 ? "scores it" : "stops at", ref);
        v->moved++;
    }
}

static void retrieve_cpu(lm_retriever *r, lm_retrieval *reqs, int n)
{
    char err[CM_ERRSZ] = "";
    ck_assert_msg(lm_retrieve(r, reqs, n, err, sizeof err) == 0, "lm_retrieve: %s", err);
}

static void retrieve_gpu(gp_engine *e, lm_retrieval *reqs, int n)
{
    char err[CM_ERRSZ] = "";
    ck_assert_msg(gp_engine_retrieve(e, reqs, n, err, sizeof err) == 0, "gp_engine_retrieve: %s", err);
}

/* GPU against CPU retrieval for case i, fp32 or int8. */
static void retrieval_parity(int i, int int8)
{
    char what[64], err[CM_ERRSZ] = "";
    lm_model *m = parity_model(i, int8);
    user_set us;
    users_make(&us, i, m, 300 + (uint64_t)i);
    lm_scorer *sc = tu_scorer(m, 1, 1, 0, LM_ISA_COUNT);
    lm_retriever *r = NULL;
    ck_assert_msg(lm_retriever_new(&r, m, lm_scorer_pool(sc), LM_ISA_COUNT, us.n, MAX_K, MAX_EXCL, err,
                                   sizeof err) == 0, "lm_retriever_new: %s", err);
    gp_engine *e = engine_new(m, us.n, 1);
    size_t n_out = (size_t)us.n * MAX_K;
    lm_retrieval *creq = malloc(sizeof *creq * (size_t)us.n), *greq = malloc(sizeof *greq * (size_t)us.n);
    int32_t *ci = malloc(sizeof(int32_t) * n_out), *gi = malloc(sizeof(int32_t) * n_out);
    float *cs = malloc(sizeof(float) * n_out), *gs = malloc(sizeof(float) * n_out);
    ck_assert(creq && greq && ci && gi && cs && gs);
    retr_requests(&us, 0, creq, ci, cs);
    retrieve_cpu(r, creq, us.n);
    users_exclude(&us, creq, &m->cfg, 400 + (uint64_t)i);
    retr_verdict v = {0};
    for (int with_excl = 0; with_excl < 2; with_excl++) {
        retr_requests(&us, with_excl, creq, ci, cs);
        retr_requests(&us, with_excl, greq, gi, gs);
        retrieve_cpu(r, creq, us.n);
        retrieve_gpu(e, greq, us.n);
        for (int u = 0; u < us.n; u++) {
            snprintf(what, sizeof what, "%s %s user %d%s", parity_name(i), int8 ? "int8" : "fp32", u,
                     with_excl ? " (exclusions)" : "");
            retr_compare(&creq[u], &greq[u], u == us.n - 1, what, &v);
        }
    }
    printf("retrieval   %-5s %s: %d users, k=%d, without and with exclusions (up to %d): max|diff|/scale %.3e, "
           "%d ranks hold another item of a near-tie (tol %.0e)\n", parity_name(i), int8 ? "int8" : "fp32",
           us.n, MAX_K, MAX_EXCL, v.max_rel, v.moved, RETR_TIE_TOL);
    free(creq);
    free(greq);
    free(ci);
    free(gi);
    free(cs);
    free(gs);
    gp_engine_free(e);
    lm_retriever_free(r);
    lm_scorer_free(sc);
    users_free(&us);
    lm_model_free(m);
}

START_TEST(test_retrieval)
{
    need_gpu();
    retrieval_parity(_i, 0);
    retrieval_parity(_i, 1);
}
END_TEST

/* ---- validation ------------------------------------------------------------------- */

#define V_BATCH 3 /* the engine's max_batch; request V_BAD is the bad one */
#define V_BAD 2
#define V_CANDS 8

/* What each bad case does, and the words the CPU's message holds. */
typedef struct bad_case {
    const char *what;
    const char *want[2];
} bad_case;

enum { BAD_ITEM_HIGH, BAD_ITEM_NEG, BAD_ACTION_HIGH, BAD_CAND_HIGH, BAD_HIST_LONG, BAD_HIST_NEG,
       BAD_CANDS_MANY, BAD_BATCH, BAD_NULL_SCORES, N_BAD_SCORE };

static const bad_case bad_score[N_BAD_SCORE] = {
    {"hist item = n_items", {"request 2", "hist_items"}}, {"hist item = -1", {"request 2", "hist_items"}},
    {"action = n_actions", {"request 2", "hist_actions"}}, {"cand = n_items", {"request 2", "cands"}},
    {"n_hist = max_hist + 1", {"request 2", "history length"}}, {"n_hist = -1", {"request 2", "history length"}},
    {"n_cands = max_cands + 1", {"request 2", "candidates"}}, {"n = max_batch + 1", {"batch of 4", "0..3"}},
    {"scores NULL", {"request 2", "scores"}},
};

/* Requests [V_BATCH + 1] over the tiny golden inputs, made bad by case c;
 * returns how many to pass. */
static int bad_requests(int c, const lm_config *cfg, lm_request *reqs, int32_t items[][64], int32_t acts[][64],
                        int32_t cands[][V_CANDS + 1], float scores[][V_CANDS + 1], float uv[][64])
{
    tu_rng rng = {.s = 55};
    for (int b = 0; b <= V_BATCH; b++) {
        for (int t = 0; t < cfg->max_hist; t++) {
            items[b][t] = tu_int(&rng, 0, cfg->n_items - 1);
            acts[b][t] = tu_int(&rng, 0, cfg->n_actions - 1);
        }
        for (int j = 0; j <= V_CANDS; j++) {
            cands[b][j] = tu_int(&rng, 0, cfg->n_items - 1);
            scores[b][j] = 1234.5f;
        }
        tu_fill(uv[b], 64, 1234.5f);
        reqs[b] = (lm_request){.hist_items = items[b], .hist_actions = acts[b], .n_hist = cfg->max_hist,
                               .cands = cands[b], .n_cands = V_CANDS, .scores = scores[b], .user_vec = uv[b]};
    }
    lm_request *r = &reqs[V_BAD];
    switch (c) {
    case BAD_ITEM_HIGH: items[V_BAD][3] = cfg->n_items; break;
    case BAD_ITEM_NEG: items[V_BAD][0] = -1; break;
    case BAD_ACTION_HIGH: acts[V_BAD][cfg->max_hist - 1] = cfg->n_actions; break;
    case BAD_CAND_HIGH: cands[V_BAD][V_CANDS - 1] = cfg->n_items; break;
    case BAD_HIST_LONG: r->n_hist = cfg->max_hist + 1; break;
    case BAD_HIST_NEG: r->n_hist = -1; break;
    case BAD_CANDS_MANY: r->n_cands = V_CANDS + 1; break;
    case BAD_NULL_SCORES: r->scores = NULL; break;
    default: return V_BATCH + 1;
    }
    return V_BATCH;
}

/* Every output still holds the sentinel. */
static void assert_untouched(float scores[][V_CANDS + 1], float uv[][64], const char *what)
{
    for (int b = 0; b <= V_BATCH; b++) {
        for (int j = 0; j <= V_CANDS; j++)
            ck_assert_msg(scores[b][j] == 1234.5f, "%s: request %d score %d written", what, b, j);
        for (int j = 0; j < 64; j++)
            ck_assert_msg(uv[b][j] == 1234.5f, "%s: request %d user_vec[%d] written", what, b, j);
    }
}

/* The CPU refused the case for the intended reason, and the GPU with the
 * same message (the engine keeps lm_scorer_run's and lm_retrieve's
 * validation). */
static void assert_both_say(const char *cpu, const char *gpu, const bad_case *bc)
{
    for (int w = 0; w < 2; w++)
        ck_assert_msg(strstr(cpu, bc->want[w]), "%s: the CPU's message lacks \"%s\": %s", bc->what,
                      bc->want[w], cpu);
    ck_assert_msg(strcmp(gpu, cpu) == 0, "%s: the GPU says \"%s\", the CPU \"%s\"", bc->what, gpu, cpu);
}

static void score_validation(const lm_model *m, gp_engine *e, lm_scorer *cpu)
{
    lm_request reqs[V_BATCH + 1];
    int32_t items[V_BATCH + 1][64], acts[V_BATCH + 1][64], cands[V_BATCH + 1][V_CANDS + 1];
    float scores[V_BATCH + 1][V_CANDS + 1], uv[V_BATCH + 1][64];
    for (int c = 0; c < N_BAD_SCORE; c++) {
        char cerr[CM_ERRSZ] = "", gerr[CM_ERRSZ] = "";
        int n = bad_requests(c, &m->cfg, reqs, items, acts, cands, scores, uv);
        ck_assert_int_eq(lm_scorer_run(cpu, reqs, n, cerr, sizeof cerr), -1);
        ck_assert_msg(gp_engine_score(e, reqs, n, gerr, sizeof gerr) == -1, "%s: the GPU accepted it",
                      bad_score[c].what);
        assert_both_say(cerr, gerr, &bad_score[c]);
        assert_untouched(scores, uv, bad_score[c].what);
        printf("validation  score    %-27s GPU and CPU: \"%s\"; nothing written\n", bad_score[c].what, gerr);
    }
}

enum { RBAD_K0, RBAD_K_BIG, RBAD_EXCL_MANY, RBAD_EXCL_NEG, RBAD_BATCH, RBAD_NULL_USER, N_BAD_RETR };

static const bad_case bad_retr[N_BAD_RETR] = {
    {"k = 0", {"retrieval 2", "k = 0"}}, {"k = max_k + 1", {"retrieval 2", "k = 101"}},
    {"max_exclude + 1 exclusions", {"retrieval 2", "exclusions"}},
    {"-1 exclusions", {"retrieval 2", "exclusions"}}, {"n = max_batch + 1", {"batch of 4", "0..3"}},
    {"user_vec NULL", {"retrieval 2", "user_vec"}},
};

static void retrieve_validation(const lm_model *m, gp_engine *e, lm_retriever *cpu)
{
    static int32_t excl[MAX_EXCL + 1];
    float users[V_BATCH + 1][64] = {{0}};
    int32_t items[V_BATCH + 1][MAX_K];
    float scores[V_BATCH + 1][MAX_K];
    lm_retrieval reqs[V_BATCH + 1];
    for (int c = 0; c < N_BAD_RETR; c++) {
        char cerr[CM_ERRSZ] = "", gerr[CM_ERRSZ] = "";
        for (int b = 0; b <= V_BATCH; b++) {
            users[b][b % m->cfg.d_model] = 1.0f;
            reqs[b] = (lm_retrieval){.user_vec = users[b], .exclude = excl, .n_exclude = 2, .k = 5,
                                     .items = items[b], .scores = scores[b], .n_out = -9};
            for (int j = 0; j < MAX_K; j++) {
                items[b][j] = -5;
                scores[b][j] = -5.0f;
            }
        }
        int n = V_BATCH;
        lm_retrieval *r = &reqs[V_BAD];
        switch (c) {
        case RBAD_K0: r->k = 0; break;
        case RBAD_K_BIG: r->k = MAX_K + 1; break;
        case RBAD_EXCL_MANY: r->n_exclude = MAX_EXCL + 1; break;
        case RBAD_EXCL_NEG: r->n_exclude = -1; break;
        case RBAD_BATCH: n = V_BATCH + 1; break;
        default: r->user_vec = NULL; break;
        }
        ck_assert_int_eq(lm_retrieve(cpu, reqs, n, cerr, sizeof cerr), -1);
        ck_assert_msg(gp_engine_retrieve(e, reqs, n, gerr, sizeof gerr) == -1, "%s: the GPU accepted it",
                      bad_retr[c].what);
        assert_both_say(cerr, gerr, &bad_retr[c]);
        for (int b = 0; b <= V_BATCH; b++) {
            ck_assert_msg(reqs[b].n_out == -9, "%s: retrieval %d: n_out written", bad_retr[c].what, b);
            for (int j = 0; j < MAX_K; j++)
                ck_assert_msg(items[b][j] == -5 && scores[b][j] == -5.0f, "%s: retrieval %d: output %d written",
                              bad_retr[c].what, b, j);
        }
        printf("validation  retrieve %-27s GPU and CPU: \"%s\"; nothing written\n", bad_retr[c].what, gerr);
    }
}

/* Bad requests fail on the GPU as on the CPU; afterwards the engine still
 * answers, as the CPU does. */
START_TEST(test_validation)
{
    need_gpu();
    char err[CM_ERRSZ] = "";
    lm_model *m = tu_case_model("tiny", 0);
    ck_assert(m->cfg.max_hist <= 64 && m->cfg.d_model <= 64);
    lm_scorer *cpu = tu_scorer(m, V_BATCH, V_CANDS, 1, LM_ISA_COUNT);
    lm_retriever *r = NULL;
    ck_assert_msg(lm_retriever_new(&r, m, lm_scorer_pool(cpu), LM_ISA_COUNT, V_BATCH, MAX_K, MAX_EXCL, err,
                                   sizeof err) == 0, "%s", err);
    gp_engine *e = engine_new(m, V_BATCH, V_CANDS);
    score_validation(m, e, cpu);
    retrieve_validation(m, e, r);
    batch bt;
    batch_golden(&bt, "tiny");
    bt.B = V_BATCH;
    for (int b = 0; b < bt.B; b++)
        bt.reqs[b].n_cands = bt.M < V_CANDS ? bt.M : V_CANDS;
    batch_score_cpu(&bt, m);
    batch_score_gpu(&bt, e);
    double ds, du;
    batch_diffs(&bt, &ds, &du);
    printf("validation  after the bad calls, a good batch: max|diff|/max|cpu| scores %.3e, user_vec %.3e "
           "(tol %.0e)\n", ds, du, GOLDEN_REL_TOL);
    ck_assert_msg(ds <= GOLDEN_REL_TOL && du <= GOLDEN_REL_TOL, "the engine answers wrongly after bad calls");
    ck_assert_msg(gp_engine_score(e, NULL, 0, err, sizeof err) == 0, "an empty batch: %s", err);
    batch_free(&bt);
    gp_engine_free(e);
    lm_retriever_free(r);
    lm_scorer_free(cpu);
    lm_model_free(m);
}
END_TEST

/* ---- rk_scorer: "cuda" against "cpu" ---------------------------------------------- */

#define RK_K 10
#define RK_RETRIEVE 100

static int n_fallbacks; /* rk_new's scorers' run-time fallbacks */

static void count_fallback(void *ctx, const char *why)
{
    (void)ctx;
    n_fallbacks++;
    printf("scorer      fallback: %s\n", why);
}

static rk_scorer *rk_new(const lm_model *m, const char *device)
{
    char err[CM_ERRSZ] = "";
    rk_scorer *s = NULL;
    rk_scorer_opts o = {.max_batch = BIG_B, .max_cands = BIG_M, .max_k = RK_K, .max_exclude = MAX_EXCL,
                        .retrieve_n = RK_RETRIEVE, .threads = 0, .device = device, .on_fallback = count_fallback};
    ck_assert_msg(rk_scorer_new(&s, m, &o, err, sizeof err) == 0, "rk_scorer_new %s: %s", device, err);
    printf("scorer      device %-4s: %s\n", device, rk_scorer_device(s));
    return s;
}

/* Half the batch's requests bring their candidates, half retrieve (their
 * history excluded); answers into items/scores [B, RK_K]. */
static void rk_requests(const batch *bt, rk_request *rq, int32_t *items, float *scores)
{
    for (int b = 0; b < bt->B; b++) {
        const lm_request *l = &bt->reqs[b];
        int n_excl = l->n_hist < MAX_EXCL ? l->n_hist : MAX_EXCL;
        rq[b] = (rk_request){.hist_items = l->hist_items, .hist_actions = l->hist_actions, .n_hist = l->n_hist,
                             .exclude = l->hist_items, .n_exclude = n_excl,
                             .cands = b % 2 ? NULL : l->cands, .n_cands = b % 2 ? 0 : l->n_cands, .k = RK_K,
                             .out_items = items + (size_t)b * RK_K, .out_scores = scores + (size_t)b * RK_K};
    }
}

static void rk_rank(rk_scorer *s, rk_request *rq, int n)
{
    char err[CM_ERRSZ] = "";
    ck_assert_msg(rk_scorer_rank(s, rq, n, err, sizeof err) == 0, "rk_scorer_rank: %s", err);
}

/* |answer(a) ∩ answer(b)| / max(n_out). */
static double answer_overlap(const rk_request *a, const rk_request *b)
{
    int n = a->n_out > b->n_out ? a->n_out : b->n_out, hits = 0;
    for (int i = 0; i < a->n_out; i++)
        hits += find_item(b->out_items, b->n_out, a->out_items[i]) >= 0;
    return n ? (double)hits / n : 1.0;
}

START_TEST(test_scorer)
{
    need_gpu();
    lm_model *m = big_model("big", &big_cfg, 1);
    batch bt;
    batch_random(&bt, &m->cfg, 91, BIG_B, BIG_M);
    rk_scorer *cpu = rk_new(m, "cpu"), *gpu = rk_new(m, "cuda"), *aut = rk_new(m, "auto");
    ck_assert_msg(!rk_scorer_gpu(cpu) && rk_scorer_gpu(gpu) && rk_scorer_gpu(aut),
                  "cpu on the GPU, or cuda/auto on the CPU");
    ck_assert_msg(!rk_scorer_fallback_reason(aut), "auto fell back: %s", rk_scorer_fallback_reason(aut));
    rk_request rc[BIG_B], rg[BIG_B];
    int32_t ci[BIG_B * RK_K], gi[BIG_B * RK_K];
    float cs[BIG_B * RK_K], gs[BIG_B * RK_K];
    rk_requests(&bt, rc, ci, cs);
    rk_requests(&bt, rg, gi, gs);
    rk_rank(cpu, rc, BIG_B);
    rk_rank(gpu, rg, BIG_B);
    double sum = 0.0, worst = 1.0;
    for (int b = 0; b < BIG_B; b++) {
        double o = answer_overlap(&rc[b], &rg[b]);
        ck_assert_msg(rc[b].n_out == rg[b].n_out, "request %d: %d answers on cuda, %d on cpu", b, rg[b].n_out,
                      rc[b].n_out);
        sum += o;
        worst = o < worst ? o : worst;
    }
    printf("scorer      int8 big, %d requests (half ranking their %d candidates, half retrieving %d), top-%d "
           "answers cuda vs cpu: overlap mean %.3f (worst %.2f, min mean %.2f)\n", BIG_B, BIG_M, RK_RETRIEVE,
           RK_K, sum / BIG_B, worst, TOP10_MEAN);
    ck_assert_msg(sum / BIG_B >= TOP10_MEAN, "mean top-%d overlap %.3f < %.2f", RK_K, sum / BIG_B, TOP10_MEAN);
    /* a GPU call failing at run time: the batch is redone on the CPU, whose
     * answers these must then be, bit for bit */
    n_fallbacks = 0;
    rk_scorer_inject_fault(gpu);
    rk_requests(&bt, rg, gi, gs);
    rk_rank(gpu, rg, BIG_B);
    int same = 0;
    for (int b = 0; b < BIG_B; b++)
        same += rg[b].n_out == rc[b].n_out &&
                !memcmp(rg[b].out_items, rc[b].out_items, sizeof(int32_t) * (size_t)rc[b].n_out) &&
                !memcmp(rg[b].out_scores, rc[b].out_scores, sizeof(float) * (size_t)rc[b].n_out);
    printf("scorer      injected GPU fault: %d fallback, now on %s; %d of %d answers the CPU's exactly\n", n_fallbacks,
           rk_scorer_device(gpu), same, BIG_B);
    ck_assert_msg(n_fallbacks == 1 && !rk_scorer_gpu(gpu), "fallbacks %d, gpu %d", n_fallbacks, rk_scorer_gpu(gpu));
    ck_assert_int_eq(same, BIG_B);
    rk_scorer_free(cpu);
    rk_scorer_free(gpu);
    rk_scorer_free(aut);
    batch_free(&bt);
    lm_model_free(m);
}
END_TEST

/* ---- suite ------------------------------------------------------------------------- */

/* A test case with a generous limit (CUDA context start-up, the CPU
 * references), tagged for the compute-sanitizer runs. */
static TCase *tcase(Suite *s, const char *name, const char *tags)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 120);
    tcase_set_tags(tc, tags);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *gpu_suite(void)
{
    Suite *s = suite_create("gpu");
    tcase_add_test(tcase(s, "probe", "sanitize"), test_probe);
    tcase_add_loop_test(tcase(s, "golden", "sanitize"), test_golden, 0, TU_N_CASES);
    tcase_add_loop_test(tcase(s, "int8", "sanitize"), test_int8_parity, 0, N_SMALL);
    tcase_add_loop_test(tcase(s, "int8_big", "big"), test_int8_parity, N_SMALL, N_PARITY);
    tcase_add_loop_test(tcase(s, "retrieval", "sanitize"), test_retrieval, 0, N_SMALL);
    tcase_add_loop_test(tcase(s, "retrieval_big", "big"), test_retrieval, N_SMALL, N_PARITY);
    tcase_add_test(tcase(s, "validation", "sanitize"), test_validation);
    tcase_add_test(tcase(s, "graphs", "sanitize"), test_graphs);
    tcase_add_test(tcase(s, "threads", "big"), test_threads);
    tcase_add_test(tcase(s, "scorer", "big"), test_scorer);
    return s;
}

int main(void)
{
    return tu_main("check_gpu", gpu_suite());
}
