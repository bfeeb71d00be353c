/* gpu/engine_none.c — gpu/engine.h in a build without CUDA (nvcc not found
 * at build time, or WITH_CUDA=0): the probe says so, no engine can be made,
 * and ranker/rk_scorer.c runs the CPU model core instead. */
#include "gpu/engine.h"

#include <stdio.h>

#include "common/err.h"

#define NO_CUDA "built without CUDA (nvcc not found at build time, or WITH_CUDA=0)"

int gp_probe(int device, char *info, size_t infosz)
{
    (void)device;
    if (info && infosz)
        snprintf(info, infosz, "%s", NO_CUDA);
    return 0;
}

int gp_engine_new(gp_engine **out, const lm_model *m, const gp_opts *o, char *err, size_t errsz)
{
    (void)m;
    (void)o;
    *out = NULL;
    return cm_errf(err, errsz, "GPU engine: %s", NO_CUDA);
}

void gp_engine_free(gp_engine *e) { (void)e; }

const char *gp_engine_device(const gp_engine *e)
{
    (void)e;
    return "none (" NO_CUDA ")";
}

int gp_engine_score(gp_engine *e, const lm_request *reqs, int n, char *err, size_t errsz)
{
    (void)e;
    (void)reqs;
    (void)n;
    return cm_errf(err, errsz, "GPU engine: %s", NO_CUDA);
}

void gp_engine_timing(const gp_engine *e, gp_timing *t)
{
    (void)e;
    *t = (gp_timing){0, 0, 0};
}

int gp_engine_retrieve(gp_engine *e, lm_retrieval *reqs, int n, char *err, size_t errsz)
{
    (void)e;
    (void)reqs;
    (void)n;
    return cm_errf(err, errsz, "GPU engine: %s", NO_CUDA);
}
