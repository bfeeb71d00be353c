/* bench/benchutil.h — what the benchmarks share: a seeded generator,
 * a monotonic clock, the median of timings, and a random ranker-v1 model
 * with the reference's initialisation. Header-only (static functions). */
#ifndef RANKD_BENCH_BENCHUTIL_H
#define RANKD_BENCH_BENCHUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "llm/model.h"
#include "llm/safetensors.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static inline uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}
static inline float uniform(void) { return (float)next_u32() / 4294967296.0f; }
static inline float normal(void)
{
    float u = ((float)next_u32() + 1.0f) / 4294967296.0f, v = uniform(); /* u in (0, 1] */
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A random model with the reference's initialisation (embeddings N(0, 0.5),
 * linear layers U(-1/sqrt(in), 1/sqrt(in)), LayerNorm 1/0), as an fp32
 * artifact. */
static inline int write_model(const char *path, const lm_config *c, char *err, size_t errsz)
{
    lm_st_writer *w = lm_st_writer_new();
    char v[32];
    const char *keys[] = {"d_model", "n_heads", "n_layers", "d_ffn", "max_hist", "n_items", "n_actions"};
    int vals[] = {c->d_model, c->n_heads, c->n_layers, c->d_ffn, c->max_hist, c->n_items, c->n_actions};
    int rc = w ? lm_st_writer_meta(w, "arch", LM_ARCH, err, errsz) : cm_errf(err, errsz, "out of memory");
    for (int i = 0; i < 7 && rc == 0; i++) {
        snprintf(v, sizeof v, "%d", vals[i]);
        rc = lm_st_writer_meta(w, keys[i], v, err, errsz);
    }
    lm_tensor_spec *specs = malloc(sizeof *specs * (size_t)lm_tensor_specs_max(c));
    int n = specs ? lm_tensor_specs(c, specs) : 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const lm_tensor_spec *s = &specs[i];
        int64_t numel = s->shape[0] * (s->ndim == 2 ? s->shape[1] : 1);
        float *data = malloc(sizeof(float) * (size_t)numel);
        if (!data) {
            rc = cm_errf(err, errsz, "out of memory");
            break;
        }
        int is_ln_w = strstr(s->name, "ln") && strstr(s->name, ".weight");
        int is_emb = strstr(s->name, "_emb") != NULL;
        float bound = s->ndim == 2 ? 1.0f / sqrtf((float)s->shape[1]) : 0.0f;
        for (int64_t j = 0; j < numel; j++)
            data[j] = is_ln_w ? 1.0f : is_emb ? 0.5f * normal() : bound * (2.0f * uniform() - 1.0f);
        rc = lm_st_writer_add(w, s->name, LM_DT_F32, s->ndim, s->shape, data, err, errsz);
        free(data);
    }
    if (rc == 0)
        rc = lm_st_writer_save(w, path, err, errsz);
    free(specs);
    lm_st_writer_free(w);
    return rc;
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
