/* ranker/batcher.h — the dynamic batcher in front of the scorer.
 *
 * Jobs from any thread go into one queue; one batcher thread takes what is
 * queued, up to max_batch, and scores it in one call. Alone, a job does not
 * wait: it is taken at once. Under load the queue fills while the scorer
 * works, so batches grow by themselves; when the last batch was not alone,
 * the batcher also waits up to max_wait_us for a batch to fill, but only
 * while the oldest job's wait plus the expected scoring time (a moving
 * average per batch size) stays under the latency target.
 *
 * A job's `done` runs on the batcher thread right after its batch; it must
 * be quick (produce a message, signal a waiter).
 *
 * A job may name its own scorer (a model version pinned when its request
 * was built: the rows in the request are that model's). A batch taken from
 * the queue is scored in one call per distinct scorer, in queue order, so a
 * model swap never splits the queue and never mixes rows of two models. */
#ifndef RANKD_RANKER_BATCHER_H
#define RANKD_RANKER_BATCHER_H

#include <stdint.h>

#include "ranker/rk_scorer.h"

typedef struct rk_job rk_job;
struct rk_job {
    rk_request req;                 /* in: the request; out: its answer */
    void (*done)(rk_job *j, int status, const char *err, void *ctx); /* status 0 or -1 */
    void *ctx;
    rk_scorer *scorer;              /* NULL: the batcher's; else borrowed until done has run */
    int64_t enqueued_ns;            /* set by rk_batcher_submit */
    rk_job *next;                   /* the batcher's */
};

typedef struct rk_batcher_opts {
    int max_batch;
    int max_wait_us;
    int latency_target_us;
} rk_batcher_opts;

typedef struct rk_batcher_stats {
    uint64_t batches, jobs, errors;
    uint64_t size_hist[8];          /* batches of 1, 2, 3-4, 5-8, 9-16, 17-32, 33-64, >64 jobs */
    double avg_batch, ewma_batch_us;
} rk_batcher_stats;

typedef struct rk_batcher rk_batcher;

/* Borrows the scorer (NULL when every job names its own); starts the
 * batcher thread. */
int rk_batcher_new(rk_batcher **out, rk_scorer *s, const rk_batcher_opts *o, char *err, size_t errsz);
/* Finishes every queued job, then stops the thread. */
void rk_batcher_free(rk_batcher *b);

/* Thread-safe. The job (and what its request points to) must stay valid
 * until its done callback has run. */
void rk_batcher_submit(rk_batcher *b, rk_job *j);

/* Jobs queued and not yet taken. */
int rk_batcher_queued(rk_batcher *b);
void rk_batcher_stats_get(rk_batcher *b, rk_batcher_stats *out);

/* Monotonic nanoseconds, the clock of enqueued_ns. */
int64_t rk_now_ns(void);

#endif
