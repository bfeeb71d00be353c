/* gpu/engine.h — ranker-v1 on an NVIDIA GPU, behind the same two calls as
 * the CPU model core: score (lm_scorer_run's contract, llm/forward.h) and
 * retrieve (lm_retrieve's contract, llm/retrieval.h). ranker/rk_scorer.c
 * picks this engine or the CPU one by model.device.
 *
 * The engine borrows an lm_model (fp32 or int8) and copies what it needs to
 * the GPU once: int8 models run W8A8 on the tensor cores with the CPU's
 * quantization (per-output-channel weight scales, per-token activation
 * scales, int32 sums), so that their rankings agree with the CPU's; fp32
 * models run in fp32 and reproduce the reference.
 *
 * All device and pinned host memory is taken by gp_engine_new, sized from
 * its options; a call allocates nothing. One call at a time per engine.
 *
 * Built only where nvcc exists; elsewhere gpu/engine_none.c provides the
 * same functions, and gp_probe says the build has no GPU engine. */
#ifndef RANKD_GPU_ENGINE_H
#define RANKD_GPU_ENGINE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "llm/forward.h"
#include "llm/model.h"
#include "llm/retrieval.h"

typedef struct gp_opts {
    int max_batch;   /* users per call */
    int max_cands;   /* candidates per user */
    int max_k;       /* retrieval: top k per user */
    int max_exclude; /* retrieval: exclusions per user */
    int device;      /* CUDA device ordinal */
    int threads;     /* host threads that copy a large call's requests and answers, the caller
                        included, at most 4: 0 for every core, 1 for the caller alone */
} gp_opts;

typedef struct gp_engine gp_engine;

/* 1 when a usable GPU is there (info: its name), 0 when not (info: why). */
int gp_probe(int device, char *info, size_t infosz);

int gp_engine_new(gp_engine **out, const lm_model *m, const gp_opts *o, char *err, size_t errsz);
void gp_engine_free(gp_engine *e);

/* "NVIDIA H100 80GB HBM3 (sm_90, int8 tensor cores)" */
const char *gp_engine_device(const gp_engine *e);

/* lm_scorer_run on the GPU: same inputs, validation and outputs. */
int gp_engine_score(gp_engine *e, const lm_request *reqs, int n, char *err, size_t errsz);

/* Where the latest successful gp_engine_score call's wall time went, in
 * nanoseconds: validating the requests and staging them into pinned memory
 * (the host), from the launch until the answers are back in pinned memory
 * (the copies and kernels, while the host waits), and copying the answers
 * out to the requests (the host). For benchmarks and profiles. */
typedef struct gp_timing {
    long long stage_ns, device_ns, unstage_ns;
} gp_timing;

void gp_engine_timing(const gp_engine *e, gp_timing *t);

/* lm_retrieve on the GPU: same inputs, validation, order and ties. */
int gp_engine_retrieve(gp_engine *e, lm_retrieval *reqs, int n, char *err, size_t errsz);

#ifdef __cplusplus
}
#endif

#endif
