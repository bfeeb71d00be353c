/* service/cmd_model.c — `rankd score` and `rankd quantize`: run the model
 * core on files, so that any case can be checked against the reference
 * (../shared/reference/ranker_v1.py score) from outside. */
#include "service/cmd_model.h"

#include <math.h>
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

typedef struct score_opts {
    const char *model, *inputs, *output, *expect;
    int threads;
    lm_isa isa;
    double tol; /* < 0: report only */
} score_opts;

static int score_usage(void)
{
    fprintf(stderr,
            "usage: rankd score MODEL INPUTS OUTPUT [--threads N] [--isa scalar|avx2|avx512|amx]\n"
            "                   [--expect FILE [--tol X]]\n"
            "  MODEL     fp32 or int8 ranker-v1 artifact (.safetensors)\n"
            "  INPUTS    safetensors with I32 hist_items [B,n], hist_actions [B,n], lengths [B], cands [B,m]\n"
            "  OUTPUT    written: F32 scores [B,m] and user_vec [B,d]\n"
            "  --expect  compare with F32 scores/user_vec in FILE (a golden io file or another\n"
            "            OUTPUT): max abs error and top-10 agreement of candidate rankings\n"
            "  --tol     with --expect: exit 1 if a max abs error exceeds X\n");
    return 2;
}

static int parse_score_args(int argc, char **argv, score_opts *o)
{
    const char *pos[3];
    int npos = 0;
    *o = (score_opts){.isa = LM_ISA_COUNT, .tol = -1.0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--threads") && v) {
            if (parse_int(v, 1, 1024, &o->threads))
                return fprintf(stderr, "rankd score: --threads %s: expected 1..1024\n", v), -1;
            i++;
        } else if (!strcmp(a, "--isa") && v) {
            if (lm_isa_parse(v, &o->isa))
                return fprintf(stderr, "rankd score: --isa %s: expected scalar, avx2, avx512 or amx\n", v), -1;
            i++;
        } else if (!strcmp(a, "--expect") && v) {
            o->expect = v;
            i++;
        } else if (!strcmp(a, "--tol") && v) {
            char *end;
            o->tol = strtod(v, &end);
            if (end == v || *end || !(o->tol >= 0))
                return fprintf(stderr, "rankd score: --tol %s: expected a number >= 0\n", v), -1;
            i++;
        } else if (a[0] == '-' || npos == 3) {
            return -1;
        } else {
            pos[npos++] = a;
        }
    }
    if (npos != 3 || (o->tol >= 0 && !o->expect))
        return -1;
    o->model = pos[0];
    o->inputs = pos[1];
    o->output = pos[2];
    return 0;
}

/* Members of the top-k of `a` also in the top-k of `b` (k <= 64). */
static int topk_overlap(const float *a, const float *b, int m, int k)
{
    int ia[64], ib[64];
    for (int pass = 0; pass < 2; pass++) {
        const float *x = pass ? b : a;
        int *idx = pass ? ib : ia;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int c = 0; c < m; c++) {
                int taken = 0;
                for (int t = 0; t < j && !taken; t++)
                    taken = idx[t] == c;
                if (!taken && (best < 0 || x[c] > x[best]))
                    best = c;
            }
            idx[j] = best;
        }
    }
    int n = 0;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            n += ia[i] == ib[j];
    return n;
}

static int load_expected(const lm_st_file *f, const char *name, int64_t rows, int64_t cols,
                         float **out, char *err, size_t errsz)
{
    int64_t shape[2] = {rows, cols};
    const lm_st_tensor *t;
    if (lm_st_expect(f, name, LM_DT_F32, 2, shape, &t, err, errsz))
        return -1;
    *out = malloc(t->nbytes + 1);
    if (!*out)
        return cm_errf(err, errsz, "out of memory");
    memcpy(*out, t->data, t->nbytes);
    return 0;
}

/* Prints how far OUTPUT is from the expected file; returns 1 when a max
 * abs error exceeds the tolerance, -1 on error. */
static int compare(const score_opts *o, int B, int m, int d, const float *scores, const float *user,
                   char *err, size_t errsz)
{
    lm_st_file *f;
    float *es = NULL, *eu = NULL;
    if (lm_st_open(&f, o->expect, err, errsz))
        return -1;
    int rc = -1;
    if (load_expected(f, "scores", B, m, &es, err, errsz) || load_expected(f, "user_vec", B, d, &eu, err, errsz))
        goto out;
    double ms = 0, mu = 0, agree = 0;
    for (size_t i = 0; i < (size_t)B * m; i++)
        ms = fmax(ms, fabs((double)scores[i] - es[i]));
    for (size_t i = 0; i < (size_t)B * d; i++)
        mu = fmax(mu, fabs((double)user[i] - eu[i]));
    int k = m < 10 ? m : 10;
    for (int b = 0; b < B && k > 0; b++)
        agree += (double)topk_overlap(scores + (size_t)b * m, es + (size_t)b * m, m, k) / k;
    printf("compared with %s: %d users x %d candidates\n"
           "  scores   max abs error %.3g\n  user_vec max abs error %.3g\n"
           "  top-%d agreement of candidate rankings %.4f\n",
           o->expect, B, m, ms, mu, k, B && k ? agree / B : 1.0);
    rc = 0;
    if (o->tol >= 0 && (ms > o->tol || mu > o->tol)) {
        printf("  FAIL: above the tolerance %g\n", o->tol);
        rc = 1;
    } else if (o->tol >= 0) {
        printf("  ok: within the tolerance %g\n", o->tol);
    }
out:
    free(es);
    free(eu);
    lm_st_close(f);
    return rc;
}

static int write_output(const score_opts *o, const lm_scorer *sc, int B, int m, const float *scores,
                        const float *user, char *err, size_t errsz)
{
    int64_t sshape[2] = {B, m}, ushape[2] = {B, lm_scorer_model(sc)->cfg.d_model};
    lm_st_writer *w = lm_st_writer_new();
    if (!w)
        return cm_errf(err, errsz, "out of memory");
    int rc = lm_st_writer_meta(w, "model", o->model, err, errsz) ||
             lm_st_writer_meta(w, "isa", lm_scorer_kern(sc)->name, err, errsz) ||
             lm_st_writer_add(w, "scores", LM_DT_F32, 2, sshape, scores, err, errsz) ||
             lm_st_writer_add(w, "user_vec", LM_DT_F32, 2, ushape, user, err, errsz) ||
             lm_st_writer_save(w, o->output, err, errsz);
    lm_st_writer_free(w);
    return rc ? -1 : 0;
}

int svc_cmd_score(int argc, char **argv)
{
    score_opts o;
    if (parse_score_args(argc, argv, &o))
        return score_usage();
    char err[CM_ERRSZ] = "";
    lm_model *m = NULL;
    lm_st_file *f = NULL;
    lm_scorer *sc = NULL;
    int32_t *buf = NULL;
    float *scores = NULL, *user = NULL;
    int rc = 1;
    score_inputs in = {0};
    if (lm_model_load(&m, o.model, err, sizeof err) || lm_st_open(&f, o.inputs, err, sizeof err) ||
        read_inputs(f, &buf, &in, err, sizeof err))
        goto out;
    lm_scorer_opts so = {.max_batch = SCORE_BATCH, .max_cands = in.m, .threads = o.threads, .isa = o.isa};
    if (lm_scorer_new(&sc, m, &so, err, sizeof err))
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
    if (write_output(&o, sc, in.B, in.m, scores, user, err, sizeof err))
        goto out;
    fprintf(stderr, "rankd score: %d users x %d candidates (%s, %s, %d threads) in %.3f ms -> %s\n",
            in.B, in.m, m->quant == LM_QUANT_INT8 ? "int8" : "fp32", lm_scorer_kern(sc)->name,
            lm_pool_threads(lm_scorer_pool(sc)), dt * 1e3, o.output);
    rc = 0;
    if (o.expect) {
        int c = compare(&o, in.B, in.m, d, scores, user, err, sizeof err);
        rc = c < 0 ? 1 : c;
    }
out:
    if (rc && err[0])
        fprintf(stderr, "rankd score: %s\n", err);
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
    char err[CM_ERRSZ] = "";
    lm_quantize_stats st;
    if (lm_quantize_file(argv[0], argv[1], &st, err, sizeof err)) {
        fprintf(stderr, "rankd quantize: %s\n", err);
        return 1;
    }
    fprintf(stderr, "rankd quantize: %s -> %s: %d tensors to int8, tensor data %.2f MB -> %.2f MB\n",
            argv[0], argv[1], st.tensors_quantized, (double)st.bytes_in / 1e6, (double)st.bytes_out / 1e6);
    return 0;
}
