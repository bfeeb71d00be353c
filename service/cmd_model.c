/* service/cmd_model.c — `rankd score` and `rankd quantize`: run the model
 * core on files, so that any case can be checked against the reference
 * (../shared/reference/ranker_v1.py score) from outside. */
#include "service/cmd_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "llm/forward.h"
#include "llm/model.h"
#include "llm/quantize.h"
#include "llm/safetensors.h"

#define SCORE_BATCH 64 /* users per scorer call */

typedef struct score_inputs {
    int B, n, m;
    const int32_t *items, *actions, *lengths, *cands; /* may be unaligned: copied below */
} score_inputs;

static int want_i32(const lm_st_file *f, const char *name, int ndim, const lm_st_tensor **t,
                    char *err, size_t errsz)
{
    *t = lm_st_find(f, name);
    if (!*t)
        return cm_errf(err, errsz, "%s: tensor %s is missing (inputs need hist_items, "
                       "hist_actions, lengths, cands)", lm_st_path(f), name);
    if ((*t)->dtype != LM_DT_I32 || (*t)->ndim != ndim)
        return cm_errf(err, errsz, "%s: tensor %s must be I32 with %d dimension%s", lm_st_path(f),
                       name, ndim, ndim > 1 ? "s" : "");
    return 0;
}

/* Copies the four input tensors into aligned arrays after checking that
 * their shapes agree: hist_* [B, n], lengths [B] in 0..n, cands [B, m]. */
static int read_inputs(const lm_st_file *f, int32_t **buf, score_inputs *in, char *err, size_t errsz)
{
    const lm_st_tensor *hi, *ha, *ln, *ca;
    if (want_i32(f, "hist_items", 2, &hi, err, errsz) || want_i32(f, "hist_actions", 2, &ha, err, errsz) ||
        want_i32(f, "lengths", 1, &ln, err, errsz) || want_i32(f, "cands", 2, &ca, err, errsz))
        return -1;
    if (ha->shape[0] != hi->shape[0] || ha->shape[1] != hi->shape[1] || ln->shape[0] != hi->shape[0] ||
        ca->shape[0] != hi->shape[0])
        return cm_errf(err, errsz, "%s: shapes disagree: hist_items [%lld,%lld], hist_actions "
                       "[%lld,%lld], lengths [%lld], cands [%lld,%lld]", lm_st_path(f),
                       (long long)hi->shape[0], (long long)hi->shape[1], (long long)ha->shape[0],
                       (long long)ha->shape[1], (long long)ln->shape[0], (long long)ca->shape[0],
                       (long long)ca->shape[1]);
    if (hi->shape[0] > 1 << 24 || hi->shape[1] > 1 << 16 || ca->shape[1] > 1 << 20)
        return cm_errf(err, errsz, "%s: inputs too large", lm_st_path(f));
    in->B = (int)hi->shape[0];
    in->n = (int)hi->shape[1];
    in->m = (int)ca->shape[1];
    size_t total = (size_t)in->B * (2 * (size_t)in->n + 1 + (size_t)in->m);
    *buf = malloc(sizeof(int32_t) * (total ? total : 1));
    if (!*buf)
        return cm_errf(err, errsz, "%s: out of memory", lm_st_path(f));
    int32_t *p = *buf;
    memcpy(p, hi->data, hi->nbytes);
    in->items = p;
    p += hi->numel;
    memcpy(p, ha->data, ha->nbytes);
    in->actions = p;
    p += ha->numel;
    memcpy(p, ln->data, ln->nbytes);
    in->lengths = p;
    p += ln->numel;
    memcpy(p, ca->data, ca->nbytes);
    in->cands = p;
    for (int b = 0; b < in->B; b++)
        if (in->lengths[b] < 0 || in->lengths[b] > in->n)
            return cm_errf(err, errsz, "%s: lengths[%d] = %d is outside 0..%d", lm_st_path(f), b,
                           (int)in->lengths[b], in->n);
    return 0;
}

static int score_all(lm_scorer *sc, const score_inputs *in, float *scores, float *user,
                     char *err, size_t errsz)
{
    lm_request reqs[SCORE_BATCH];
    int d = lm_scorer_model(sc)->cfg.d_model;
    for (int b0 = 0; b0 < in->B; b0 += SCORE_BATCH) {
        int nb = in->B - b0 < SCORE_BATCH ? in->B - b0 : SCORE_BATCH;
        for (int i = 0; i < nb; i++) {
            size_t b = (size_t)(b0 + i);
            reqs[i] = (lm_request){.hist_items = in->items + b * in->n,
                                   .hist_actions = in->actions + b * in->n,
                                   .n_hist = in->lengths[b],
                                   .cands = in->cands + b * in->m,
                                   .n_cands = in->m,
                                   .scores = scores + b * in->m,
                                   .user_vec = user + b * d};
        }
        char why[CM_ERRSZ];
        if (lm_scorer_run(sc, reqs, nb, why, sizeof why))
            return cm_errf(err, errsz, "user %d onwards: %s", b0, why);
    }
    return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int score_usage(void)
{
    fprintf(stderr, "usage: rankd score MODEL INPUTS OUTPUT [--threads N] [--isa scalar|avx2|avx512|amx]\n"
                    "  MODEL   fp32 or int8 ranker-v1 artifact (.safetensors)\n"
                    "  INPUTS  safetensors with I32 hist_items [B,n], hist_actions [B,n], lengths [B], cands [B,m]\n"
                    "  OUTPUT  written: F32 scores [B,m] and user_vec [B,d]\n");
    return 2;
}

int svc_cmd_score(int argc, char **argv)
{
    const char *pos[3];
    int npos = 0, threads = 0;
    lm_isa isa = LM_ISA_COUNT;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 1, 1024, &threads)) {
                fprintf(stderr, "rankd score: --threads %s: expected 1..1024\n", argv[i]);
                return 2;
            }
        } else if (strcmp(argv[i], "--isa") == 0 && i + 1 < argc) {
            if (lm_isa_parse(argv[++i], &isa)) {
                fprintf(stderr, "rankd score: --isa %s: expected scalar, avx2, avx512 or amx\n", argv[i]);
                return 2;
            }
        } else if (argv[i][0] == '-' || npos == 3) {
            return score_usage();
        } else {
            pos[npos++] = argv[i];
        }
    }
    if (npos != 3)
        return score_usage();

    char err[CM_ERRSZ];
    lm_model *m = NULL;
    lm_st_file *f = NULL;
    lm_scorer *sc = NULL;
    lm_st_writer *w = NULL;
    int32_t *buf = NULL;
    float *scores = NULL, *user = NULL;
    int rc = 1;
    score_inputs in = {0};
    if (lm_model_load(&m, pos[0], err, sizeof err) || lm_st_open(&f, pos[1], err, sizeof err) ||
        read_inputs(f, &buf, &in, err, sizeof err))
        goto out;
    lm_scorer_opts o = {.max_batch = SCORE_BATCH, .max_cands = in.m, .threads = threads, .isa = isa};
    if (lm_scorer_new(&sc, m, &o, err, sizeof err))
        goto out;
    int d = m->cfg.d_model;
    scores = malloc(sizeof(float) * ((size_t)in.B * in.m + 1));
    user = malloc(sizeof(float) * ((size_t)in.B * d + 1));
    if (!scores || !user) {
        snprintf(err, sizeof err, "out of memory for %d users", in.B);
        goto out;
    }
    double t0 = now_s();
    if (score_all(sc, &in, scores, user, err, sizeof err))
        goto out;
    double dt = now_s() - t0;
    int64_t sshape[2] = {in.B, in.m}, ushape[2] = {in.B, d};
    w = lm_st_writer_new();
    if (!w || lm_st_writer_meta(w, "model", pos[0], err, sizeof err) ||
        lm_st_writer_meta(w, "isa", lm_scorer_kern(sc)->name, err, sizeof err) ||
        lm_st_writer_add(w, "scores", LM_DT_F32, 2, sshape, scores, err, sizeof err) ||
        lm_st_writer_add(w, "user_vec", LM_DT_F32, 2, ushape, user, err, sizeof err) ||
        lm_st_writer_save(w, pos[2], err, sizeof err)) {
        if (!w)
            snprintf(err, sizeof err, "out of memory");
        goto out;
    }
    fprintf(stderr, "rankd score: %d users x %d candidates (%s, %s, %d threads) in %.3f ms -> %s\n",
            in.B, in.m, m->quant == LM_QUANT_INT8 ? "int8" : "fp32", lm_scorer_kern(sc)->name,
            lm_pool_threads(lm_scorer_pool(sc)), dt * 1e3, pos[2]);
    rc = 0;
out:
    if (rc)
        fprintf(stderr, "rankd score: %s\n", err);
    lm_st_writer_free(w);
    free(scores);
    free(user);
    free(buf);
    lm_scorer_free(sc);
    lm_st_close(f);
    lm_model_free(m);
    return rc;
}

int svc_cmd_quantize(int argc, char **argv)
{
    if (argc != 2 || argv[0][0] == '-' || argv[1][0] == '-') {
        fprintf(stderr, "usage: rankd quantize IN OUT\n"
                        "  IN   fp32 ranker-v1 artifact; OUT: its int8 form (weights per output\n"
                        "       channel, item embeddings per row; activations per token at run time)\n");
        return 2;
    }
    char err[CM_ERRSZ];
    lm_quantize_stats st;
    if (lm_quantize_file(argv[0], argv[1], &st, err, sizeof err)) {
        fprintf(stderr, "rankd quantize: %s\n", err);
        return 1;
    }
    fprintf(stderr, "rankd quantize: %s -> %s: %d tensors to int8, tensor data %.2f MB -> %.2f MB\n",
            argv[0], argv[1], st.tensors_quantized, (double)st.bytes_in / 1e6, (double)st.bytes_out / 1e6);
    return 0;
}
