/* bench/bench_gpu.c — GPU engine benchmark at the bench shapes of
 * ../shared/reference/ranker_v1.py bench-gpu: the student (d_model 128,
 * 4 heads, 2 layers, d_ffn 512) and the teacher (256, 4, 4, 1024) over
 * 100,000 items, full 64-event histories and 512 candidates per user, at
 * B = 1, 16, 128 and 512; random int8 models (written in fp32, then
 * quantized). Also the retrieval head: top-100 of the catalog, B = 1 and 512;
 * and serving-like calls whose candidate counts vary from call to call (a
 * filtered list: VARIED_MIN .. N_CANDS per request), B = 1 and 16, whose
 * candidate tiles stay the same (gpu/engine.cu: graphs per shape).
 *
 * A figure is the median wall time of gp_engine_score (or _retrieve), which
 * returns with the answers in host memory, over repeated calls after
 * warm-up, rotating among N_SETS input sets. Prints one JSON line per
 * figure for bench/run_gpu.sh; the first line describes the GPU and its
 * int8 tensor-core peak:
 *   peak ops/s = SMs x clock (cudaDevAttrClockRate, kHz) x 1000 x 8192
 * (8192 dense int8 ops per clock per SM on sm_90), and a shape's fraction
 * of it counts 2 x lm_model_macs_per_candidate ops per candidate (the
 * candidate path; the history encoding is not counted). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "gpu/engine.h"
#include "llm/forward.h"
#include "llm/model.h"
#include "llm/quantize.h"
#include "llm/retrieval.h"
#include "llm/safetensors.h"
#include "bench/benchutil.h"

#define N_HIST 64
#define N_CANDS 512
#define N_ITEMS 100000
#define MAX_B 512
#define N_SETS 4
#define TOP_K 100
#define MAX_REPS 2001
#define OPS_PER_CLOCK_SM 8192.0
#define PEAK_FORMULA "SMs x clock (cudaDevAttrClockRate, kHz) x 1000 x 8192 int8 ops/clock/SM (sm_90 dense)"

static void die(const char *what, const char *err)
{
    fprintf(stderr, "bench_gpu: %s: %s\n", what, err);
    exit(1);
}


/* The int8 model of shape `c`, through an fp32 artifact in `dir`. */
static lm_model *int8_model(const char *dir, const char *name, const lm_config *c)
{
    char fp32[512], int8[512], err[CM_ERRSZ];
    lm_quantize_stats st;
    lm_model *m = NULL;
    snprintf(fp32, sizeof fp32, "%s/bench-gpu-%s.fp32.safetensors", dir, name);
    snprintf(int8, sizeof int8, "%s/bench-gpu-%s.int8.safetensors", dir, name);
    if (write_model(fp32, c, err, sizeof err) || lm_quantize_file(fp32, int8, &st, err, sizeof err) ||
        lm_model_load(&m, int8, err, sizeof err))
        die(name, err);
    remove(fp32);
    remove(int8);
    return m;
}

/* The GPU's name and int8 peak, as the first JSON line; returns the peak. */
static double device_line(void)
{
    char info[CM_ERRSZ];
    int sms = 0, khz = 0;
    if (!gp_probe(0, info, sizeof info))
        die("gp_probe", info);
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0) != cudaSuccess)
        die("cudaDeviceGetAttribute", "cannot read the SM count and clock rate");
    double peak = (double)sms * khz * 1e3 * OPS_PER_CLOCK_SM;
    printf("{\"bench\": \"device\", \"device\": \"%s\", \"sms\": %d, \"clock_khz\": %d, \"peak_int8_ops\": %.4g, "
           "\"peak_formula\": \"%s\"}\n", info, sms, khz, peak, PEAK_FORMULA);
    fflush(stdout);
    return peak;
}

/* N_SETS sets of MAX_B users with full histories and N_CANDS candidates;
 * every set writes to the same outputs. */
typedef struct inputs {
    int32_t *items, *acts, *cands; /* [N_SETS][MAX_B][N_HIST | N_CANDS] */
    float *scores, *uv;            /* [MAX_B][N_CANDS], [MAX_B][d] */
    lm_request *reqs;              /* [N_SETS][MAX_B] */
    lm_retrieval *rq;              /* [MAX_B]: set 0's users, their history excluded */
    int32_t *out_items;            /* [MAX_B][TOP_K] */
    float *out_scores;
} inputs;

static void inputs_make(inputs *in, const lm_config *c)
{
    size_t users = (size_t)N_SETS * MAX_B;
    in->items = malloc(sizeof(int32_t) * users * N_HIST);
    in->acts = malloc(sizeof(int32_t) * users * N_HIST);
    in->cands = malloc(sizeof(int32_t) * users * N_CANDS);
    in->scores = malloc(sizeof(float) * MAX_B * N_CANDS);
    in->uv = malloc(sizeof(float) * MAX_B * (size_t)c->d_model);
    in->reqs = malloc(sizeof(lm_request) * users);
    in->rq = malloc(sizeof(lm_retrieval) * MAX_B);
    in->out_items = malloc(sizeof(int32_t) * MAX_B * TOP_K);
    in->out_scores = malloc(sizeof(float) * MAX_B * TOP_K);
    if (!in->items || !in->acts || !in->cands || !in->scores || !in->uv || !in->reqs || !in->rq || !in->out_items ||
        !in->out_scores)
        die("inputs", "out of memory");
    for (size_t i = 0; i < users * N_HIST; i++) {
        in->items[i] = 1 + (int32_t)(next_u32() % (uint32_t)(c->n_items - 1));
        in->acts[i] = (int32_t)(next_u32() % (uint32_t)c->n_actions);
    }
    for (size_t i = 0; i < users * N_CANDS; i++)
        in->cands[i] = 1 + (int32_t)(next_u32() % (uint32_t)(c->n_items - 1));
    for (size_t u = 0; u < users; u++)
        in->reqs[u] = (lm_request){in->items + u * N_HIST, in->acts + u * N_HIST, N_HIST,
                                   in->cands + u * N_CANDS, N_CANDS, in->scores + (u % MAX_B) * N_CANDS,
                                   in->uv + (u % MAX_B) * (size_t)c->d_model};
    for (int b = 0; b < MAX_B; b++)
        in->rq[b] = (lm_retrieval){in->uv + (size_t)b * c->d_model, in->items + (size_t)b * N_HIST, N_HIST, TOP_K,
                                   in->out_items + (size_t)b * TOP_K, in->out_scores + (size_t)b * TOP_K, 0};
}

static void inputs_free(inputs *in)
{
    free(in->items);
    free(in->acts);
    free(in->cands);
    free(in->scores);
    free(in->uv);
    free(in->reqs);
    free(in->rq);
    free(in->out_items);
    free(in->out_scores);
}

/* Call i of a timing loop over B users. */
typedef int (*bench_call)(gp_engine *e, const inputs *in, int B, int i, char *err, size_t errsz);

static int call_score(gp_engine *e, const inputs *in, int B, int i, char *err, size_t errsz)
{
    return gp_engine_score(e, in->reqs + (size_t)(i % N_SETS) * MAX_B, B, err, errsz);
}

/* Call i's first B requests, to change before the call. */
static void requests_of(lm_request *r, const inputs *in, int B, int i)
{
    memcpy(r, in->reqs + (size_t)(i % N_SETS) * MAX_B, sizeof(lm_request) * (size_t)B);
}

/* The same requests cut to RESCORE_CANDS candidates: rankd rescore's
 * batches (docs/rescore.md). */
#define RESCORE_CANDS 100
static int call_rescore(gp_engine *e, const inputs *in, int B, int i, char *err, size_t errsz)
{
    lm_request r[MAX_B];
    requests_of(r, in, B, i);
    for (int j = 0; j < B; j++)
        r[j].n_cands = RESCORE_CANDS;
    return gp_engine_score(e, r, B, err, errsz);
}

/* The same requests with VARIED_MIN .. N_CANDS candidates each, drawn
 * afresh for every call (the same 8 tiles of 64). */
#define VARIED_MIN 449
static int call_varied(gp_engine *e, const inputs *in, int B, int i, char *err, size_t errsz)
{
    lm_request r[MAX_B];
    requests_of(r, in, B, i);
    for (int j = 0; j < B; j++) {
        uint32_t h = (uint32_t)(i * MAX_B + j) * 2654435761u;
        r[j].n_cands = VARIED_MIN + (int)((h >> 16) % (N_CANDS - VARIED_MIN + 1));
    }
    return gp_engine_score(e, r, B, err, errsz);
}

static int call_retrieve(gp_engine *e, const inputs *in, int B, int i, char *err, size_t errsz)
{
    (void)i;
    return gp_engine_retrieve(e, in->rq, B, err, errsz);
}

/* Median seconds of one call: warm-up calls for at least 0.2 s (and 10),
 * then calls until a second has passed (at least 21, at most MAX_REPS).
 * The warm-up is timed, not counted: the first shape of a run, student
 * B=1, reaches MAX_REPS in under 0.1 s, and its 10 warm-up calls alone
 * (0.4 ms) leave the GPU's clocks still rising from idle, a likely cause
 * of one run's 42.7 us where the run before read 36.5 (bench/NOTES.md). */
static double median_time(bench_call f, gp_engine *e, const inputs *in, int B, int *reps, double phase[3])
{
    static double ts[MAX_REPS], ph[3][MAX_REPS];
    char err[CM_ERRSZ];
    int n = 0;
    for (double t_end = now_s() + 0.2; n < 10 || now_s() < t_end; n++)
        if (f(e, in, B, n, err, sizeof err))
            die("warm-up", err);
    n = 0;
    for (double t_end = now_s() + 1.0; n < MAX_REPS && (n < 21 || now_s() < t_end); n++) {
        double t0 = now_s();
        if (f(e, in, B, n, err, sizeof err))
            die("timed call", err);
        ts[n] = now_s() - t0;
        if (phase) {
            gp_timing tm;
            gp_engine_timing(e, &tm);
            ph[0][n] = tm.stage_ns * 1e-3, ph[1][n] = tm.device_ns * 1e-3, ph[2][n] = tm.unstage_ns * 1e-3;
        }
    }
    qsort(ts, (size_t)n, sizeof ts[0], cmp_double);
    for (int k = 0; phase && k < 3; k++) {
        qsort(ph[k], (size_t)n, sizeof ph[k][0], cmp_double);
        phase[k] = ph[k][n / 2];
    }
    *reps = n;
    return ts[n / 2];
}

static void bench_model(const char *dir, const char *name, const lm_config *c, double peak)
{
    static const int Bs[] = {1, 16, 128, MAX_B}, retr_Bs[] = {1, MAX_B};
    char err[CM_ERRSZ];
    lm_model *m = int8_model(dir, name, c);
    gp_engine *e = NULL;
    gp_opts o = {.max_batch = MAX_B, .max_cands = N_CANDS, .max_k = TOP_K, .max_exclude = N_HIST, .device = 0};
    if (gp_engine_new(&e, m, &o, err, sizeof err))
        die("gp_engine_new", err);
    inputs in;
    inputs_make(&in, c);
    double ops = 2.0 * (double)lm_model_macs_per_candidate(c, N_HIST);
    const char *only_b = getenv("RANKD_BENCH_B"); /* one batch size (1 .. MAX_B), for profiling */
    const int one_b = only_b ? atoi(only_b) : 0;
    if (only_b && (one_b < 1 || one_b > MAX_B))
        die("RANKD_BENCH_B", "is not a batch size from 1 to 512");
    for (int i = 0; i < (one_b ? 1 : 4); i++) {
        int B = one_b ? one_b : Bs[i], reps;
        double ph[3], t = median_time(call_score, e, &in, B, &reps, ph), cps = B * N_CANDS / t;
        printf("{\"bench\": \"score\", \"model\": \"%s\", \"quant\": \"int8\", \"device\": \"%s\", \"B\": %d, "
               "\"m\": %d, \"n\": %d, \"reps\": %d, \"us\": %.1f, \"cand_per_s\": %.0f, \"ops_per_cand\": %.0f, "
               "\"tops\": %.2f, \"frac_peak\": %.4f, \"stage_us\": %.1f, \"device_us\": %.1f, \"unstage_us\": %.1f}\n",
               name, gp_engine_device(e), B, N_CANDS, N_HIST, reps, t * 1e6, cps, ops, cps * ops * 1e-12,
               cps * ops / peak, ph[0], ph[1], ph[2]);
        fflush(stdout);
    }
    if (!only_b) {
        static const int vBs[] = {1, 16};
        for (int i = 0; i < 2; i++) {
            int reps;
            double t = median_time(call_varied, e, &in, vBs[i], &reps, NULL);
            printf("{\"bench\": \"varied\", \"model\": \"%s\", \"B\": %d, \"m_min\": %d, \"m_max\": %d, "
                   "\"reps\": %d, \"us\": %.1f}\n", name, vBs[i], VARIED_MIN, N_CANDS, reps, t * 1e6);
            fflush(stdout);
        }
        int reps;
        double t = median_time(call_rescore, e, &in, MAX_B, &reps, NULL);
        printf("{\"bench\": \"rescore\", \"model\": \"%s\", \"B\": %d, \"m\": %d, \"n\": %d, \"reps\": %d, "
               "\"us\": %.1f, \"requests_per_s\": %.0f}\n", name, MAX_B, RESCORE_CANDS, N_HIST, reps, t * 1e6,
               MAX_B / t);
        fflush(stdout);
    }
    if (gp_engine_score(e, in.reqs, MAX_B, err, sizeof err)) /* set 0's user vectors, for retrieval */
        die("gp_engine_score", err);
    for (int i = 0; i < 2; i++) {
        int B = retr_Bs[i], reps;
        double t = median_time(call_retrieve, e, &in, B, &reps, NULL);
        printf("{\"bench\": \"retrieve\", \"model\": \"%s\", \"quant\": \"int8\", \"B\": %d, \"items\": %d, "
               "\"k\": %d, \"excluded\": %d, \"reps\": %d, \"us\": %.1f}\n", name, B, c->n_items, TOP_K, N_HIST,
               reps, t * 1e6);
        fflush(stdout);
    }
    inputs_free(&in);
    gp_engine_free(e);
    lm_model_free(m);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    const char *only = argc > 2 ? argv[2] : ""; /* "student" or "teacher": profile one */
    const lm_config student = {.d_model = 128, .n_heads = 4, .n_layers = 2, .d_ffn = 512, .max_hist = N_HIST,
                               .n_items = N_ITEMS, .n_actions = 8};
    const lm_config teacher = {.d_model = 256, .n_heads = 4, .n_layers = 4, .d_ffn = 1024, .max_hist = N_HIST,
                               .n_items = N_ITEMS, .n_actions = 8};
    double peak = device_line();
    if (strcmp(only, "teacher") != 0)
        bench_model(dir, "student", &student, peak);
    if (strcmp(only, "student") != 0)
        bench_model(dir, "teacher", &teacher, peak);
    return 0;
}
