/* bench/bench_cpu.c — CPU scoring benchmark at the bench shapes of
 * ../shared/reference/ranker_v1.py: a student (d_model 128, 4 heads,
 * 2 layers, d_ffn 512) over 100,000 items, full 64-event histories and 512
 * candidates per user, at B = 1 and 16, fp32 and int8, one thread and all.
 * Also the retrieval head (top-100 of the catalog).
 *
 * Prints one JSON line per measurement (median of repeated runs) for
 * bench/run_cpu.sh, which sets them beside the PyTorch anchor. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "llm/forward.h"
#include "llm/model.h"
#include "llm/quantize.h"
#include "llm/retrieval.h"
#include "llm/safetensors.h"
#include "bench/benchutil.h"

#define N_HIST 64
#define N_CANDS 512


/* Median wall time of one scorer call over `iters` runs after warm-up. */
static double time_scoring(lm_scorer *sc, lm_request *reqs, int B, int iters)
{
    char err[CM_ERRSZ];
    double ts[256];
    for (int i = 0; i < 3; i++)
        lm_scorer_run(sc, reqs, B, err, sizeof err);
    for (int i = 0; i < iters; i++) {
        double t0 = now_s();
        if (lm_scorer_run(sc, reqs, B, err, sizeof err)) {
            fprintf(stderr, "bench: %s\n", err);
            exit(1);
        }
        ts[i] = now_s() - t0;
    }
    qsort(ts, (size_t)iters, sizeof ts[0], cmp_double);
    return ts[iters / 2];
}

static void bench_model(const char *path, const char *label, int threads, int all)
{
    char err[CM_ERRSZ];
    lm_model *m;
    if (lm_model_load(&m, path, err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        exit(1);
    }
    const int Bmax = 16, d = m->cfg.d_model;
    int32_t *items = malloc(sizeof(int32_t) * Bmax * N_HIST), *acts = malloc(sizeof(int32_t) * Bmax * N_HIST);
    int32_t *cands = malloc(sizeof(int32_t) * Bmax * N_CANDS);
    float *scores = malloc(sizeof(float) * Bmax * N_CANDS), *user = malloc(sizeof(float) * Bmax * d);
    for (int i = 0; i < Bmax * N_HIST; i++) {
        items[i] = 1 + (int32_t)(next_u32() % (uint32_t)(m->cfg.n_items - 1));
        acts[i] = (int32_t)(next_u32() % (uint32_t)m->cfg.n_actions);
    }
    for (int i = 0; i < Bmax * N_CANDS; i++)
        cands[i] = 1 + (int32_t)(next_u32() % (uint32_t)(m->cfg.n_items - 1));
    lm_request reqs[16];
    for (int b = 0; b < Bmax; b++)
        reqs[b] = (lm_request){items + b * N_HIST, acts + b * N_HIST, N_HIST, cands + b * N_CANDS,
                               N_CANDS, scores + b * N_CANDS, user + b * d};
    int thread_counts[2] = {1, threads};
    for (int ti = 0; ti < (all && threads > 1 ? 2 : 1); ti++) {
        int th = thread_counts[ti];
        lm_scorer *sc;
        lm_scorer_opts o = {.max_batch = Bmax, .max_cands = N_CANDS, .threads = th, .isa = LM_ISA_COUNT};
        if (lm_scorer_new(&sc, m, &o, err, sizeof err)) {
            fprintf(stderr, "bench: %s\n", err);
            exit(1);
        }
        int Bs[2] = {1, 16};
        for (int bi = 0; bi < 2; bi++) {
            int B = Bs[bi];
            double t = time_scoring(sc, reqs, B, B == 1 ? 101 : 21);
            printf("{\"bench\": \"score\", \"model\": \"student\", \"quant\": \"%s\", \"isa\": \"%s\", "
                   "\"threads\": %d, \"B\": %d, \"m\": %d, \"n\": %d, \"us\": %.1f, \"cand_per_s\": %.0f, "
                   "\"gmacs\": %.1f}\n",
                   label, lm_scorer_kern(sc)->name, th, B, N_CANDS, N_HIST, t * 1e6, B * N_CANDS / t,
                   (double)lm_model_macs_per_candidate(&m->cfg, N_HIST) * B * N_CANDS / t * 1e-9);
            fflush(stdout);
        }
        if (th == threads) {
            lm_retriever *r;
            if (lm_retriever_new(&r, m, lm_scorer_pool(sc), LM_ISA_COUNT, Bmax, 100, N_HIST, err, sizeof err)) {
                fprintf(stderr, "bench: %s\n", err);
                exit(1);
            }
            int32_t out_items[16 * 100];
            float out_scores[16 * 100];
            lm_retrieval rq[16];
            for (int b = 0; b < Bmax; b++)
                rq[b] = (lm_retrieval){user + b * d, items + b * N_HIST, N_HIST, 100, out_items + b * 100,
                                       out_scores + b * 100, 0};
            for (int bi = 0; bi < 2; bi++) {
                int B = bi ? 16 : 1;
                double ts[51];
                for (int i = 0; i < 51; i++) {
                    double t0 = now_s();
                    lm_retrieve(r, rq, B, err, sizeof err);
                    ts[i] = now_s() - t0;
                }
                qsort(ts, 51, sizeof ts[0], cmp_double);
                printf("{\"bench\": \"retrieve\", \"model\": \"student\", \"quant\": \"%s\", \"threads\": %d, "
                       "\"B\": %d, \"items\": %d, \"k\": 100, \"us\": %.1f}\n",
                       label, th, B, m->cfg.n_items, ts[25] * 1e6);
            }
            lm_retriever_free(r);
        }
        lm_scorer_free(sc);
    }
    free(items);
    free(acts);
    free(cands);
    free(scores);
    free(user);
    lm_model_free(m);
}

int main(int argc, char **argv)
{
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    const char *only = argc > 2 ? argv[2] : ""; /* "fp32" or "int8": profile one */
    char fp32[512], int8[512], err[CM_ERRSZ];
    snprintf(fp32, sizeof fp32, "%s/bench-student.fp32.safetensors", dir);
    snprintf(int8, sizeof int8, "%s/bench-student.int8.safetensors", dir);
    lm_config c = {.d_model = 128, .n_heads = 4, .n_layers = 2, .d_ffn = 512, .max_hist = N_HIST,
                   .n_items = 100000, .n_actions = 8};
    lm_quantize_stats st;
    if (write_model(fp32, &c, err, sizeof err) || lm_quantize_file(fp32, int8, &st, err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    if (strcmp(only, "int8") != 0)
        bench_model(fp32, "fp32", threads, 1);
    if (strcmp(only, "fp32") != 0)
        bench_model(int8, "int8", threads, 1);
    remove(fp32);
    remove(int8);
    return 0;
}
