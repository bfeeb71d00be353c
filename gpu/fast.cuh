/* gpu/fast.cuh — the int8 scoring path of gpu/fast.cu, which gpu/score.cu
 * runs instead of its own kernels for the shapes it supports. */
#ifndef RANKD_GPU_FAST_CUH
#define RANKD_GPU_FAST_CUH

#include "gpu/internal.cuh"

struct gp_fast;

/* 1 when gp_fast_new can take the model; else 0 with the reason in why. */
int gp_fast_supports(const gp_weights *w, char *why, size_t whysz);
/* w: the host copy of the device weights, which must outlive the path;
 * max_batch users per call. */
int gp_fast_new(gp_fast **out, const gp_weights *w, int max_batch, char *err, size_t errsz);
void gp_fast_free(gp_fast *f);
/* Enqueues both passes on st (gp_score_run's contract). */
int gp_fast_run(gp_fast *f, cudaStream_t st, const gp_batch *b, char *err, size_t errsz);

#endif
