/* service/models.h — the models `rankd serve` ranks with, and their life.
 *
 * Variant a is model.path; an A/B test adds variant b (model.b.path), which
 * takes model.b.percent of the users, picked by a hash of the user id, so a
 * user stays in one variant for as long as the percentage does not shrink.
 *
 * Each variant has one current version: a loaded artifact, its id maps and
 * its scorer. A ranking pins the version it was built with (a reference,
 * taken when its request's rows are mapped, given back once its answer is
 * written), because the rows in a request belong to that model. Hot reload
 * (svc_models_reload, or the file changing on disk, polled every
 * model.reload_check_ms) loads and checks a new version on the models'
 * own thread: the artifact's format, compatibility with what the service
 * was started with, a self-test that scores a few requests; only then does
 * it replace the current one. Rankings already built finish on the old
 * version, which is freed on the same thread once the last of them has
 * given it back. A refused artifact leaves the current version serving; the
 * reason is logged and counted. */
#ifndef RANKD_SERVICE_MODELS_H
#define RANKD_SERVICE_MODELS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ranker/rk_scorer.h"
#include "service/config.h"
#include "service/metrics.h"
#include "service/rankreq.h"

typedef struct svc_mver svc_mver;
struct svc_mver {
    svc_model model;
    rk_scorer *scorer;
    int variant;           /* 0: a, 1: b */
    uint64_t gen;          /* 1 for the version loaded at start, +1 per reload of its variant */
    _Atomic int refs;      /* rankings pinned to it, plus one while it is current */
    /* The caller's cache of the unavailable items in this model's rows,
     * guarded by the caller's lock (serve.c's un_mu); freed with the version. */
    int32_t *un_rows;
    int n_un_rows, cap_un_rows;
    uint64_t un_gen;
    svc_mver *next_retired;
};

typedef struct svc_models svc_models;

/* Loads and self-tests every configured variant; starts no thread yet.
 * Borrows cfg and metrics, which must outlive the models. so: the scorer
 * options for every version. */
int svc_models_new(svc_models **out, const svc_config *cfg, const rk_scorer_opts *so, svc_metrics *metrics,
                   char *err, size_t errsz);
/* Starts the thread that reloads and frees retired versions. */
int svc_models_start(svc_models *ms, char *err, size_t errsz);
/* Stops the thread and frees every version: call it when no ranking is in
 * flight any more (after the batcher is freed). NULL is fine. */
void svc_models_free(svc_models *ms);

int svc_models_count(const svc_models *ms);       /* variants: 1 or 2 */
/* The longest history any version may use: slots and Redis keep this many. */
int svc_models_max_hist(const svc_models *ms);
/* The variant of a user: 0 or 1, the same for the same id every time. */
int svc_models_variant(const svc_models *ms, const char *user);
/* The bucket of a user in 0..99: variant b takes buckets below model.b.percent. */
int svc_models_bucket(const char *user);

/* The current version of a variant, pinned; thread-safe. Give it back
 * with svc_mver_release when the ranking that uses it is written. */
svc_mver *svc_models_acquire(svc_models *ms, int variant);
void svc_mver_release(svc_mver *v);

/* Asks the models' thread to reload every variant now. It takes a lock,
 * so it is not for signal handlers: they set a flag (svc_serve_reload)
 * that the consumer loop hands on to this. */
void svc_models_reload(svc_models *ms);

/* The current tag of a variant, copied into out. */
void svc_models_tag(svc_models *ms, int variant, char *out, size_t cap);

#endif
