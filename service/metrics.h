/* service/metrics.h — the service's counters and histograms, rendered in
 * the Prometheus text format for GET /metrics. Updated from any thread
 * with relaxed atomics: a scrape sees each value whole, not all of them at
 * one instant. Secrets never appear here: labels are event types,
 * outcomes, endpoints and status codes only. */
#ifndef RANKD_SERVICE_METRICS_H
#define RANKD_SERVICE_METRICS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum { SVC_EVK_INTERACTION, SVC_EVK_RANKING, SVC_EVK_ITEM, SVC_EVK_USER, SVC_EVK_INVALID, SVC_EVK_N };
enum { SVC_OUT_APPLIED, SVC_OUT_RANKED, SVC_OUT_DEAD_LETTER, SVC_OUT_N };
enum { SVC_EP_HEALTHZ, SVC_EP_READYZ, SVC_EP_METRICS, SVC_EP_RANK, SVC_EP_OTHER, SVC_EP_N };

#define SVC_LAT_BUCKETS 16 /* 100 us .. ~3.3 s, doubling */
#define SVC_BATCH_BUCKETS 8
#define SVC_MAX_VARIANTS 2 /* model variants served side by side: a, and b for an A/B test */

typedef struct svc_histogram {
    _Atomic uint64_t bucket[SVC_LAT_BUCKETS + 1]; /* the last is +Inf */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
} svc_histogram;

/* One model version's figures, labelled with its variant and tag. Each
 * variant has two rows, for the current version and the one before it
 * (whose rankings in flight finish after a reload): version gen counts in
 * row gen & 1, and a version's first count there drops the one two
 * versions back. */
typedef struct svc_model_stats {
    _Atomic uint64_t gen;                /* the version counted here; 0: none yet */
    char tag[128];                       /* guarded by svc_metrics.model_mu */
    _Atomic uint64_t rankings, errors;
    svc_histogram latency;               /* request queued -> ranked, on this model */
} svc_model_stats;

typedef struct svc_metrics {
    _Atomic uint64_t events[SVC_EVK_N][SVC_OUT_N];
    _Atomic uint64_t published, publish_errors;
    _Atomic uint64_t redis_errors, kafka_errors, rank_errors;
    _Atomic uint64_t http[SVC_EP_N][6]; /* status class 0..5 (2xx = 2) */
    _Atomic uint64_t http_rate_limited;  /* 429s of POST /v1/rank */
    _Atomic int64_t consumer_lag;        /* messages, over assigned partitions */
    _Atomic int64_t in_flight;           /* events consumed, not yet committed */
    _Atomic int ready_model, ready_kafka, ready_redis;
    _Atomic uint64_t model_reloads[SVC_MAX_VARIANTS];         /* new versions swapped in */
    _Atomic uint64_t model_reload_failures[SVC_MAX_VARIANTS]; /* artifacts refused on reload */
    _Atomic int models_retiring;         /* replaced versions not yet freed (rankings still on them) */
    _Atomic int scorer_gpu;              /* 1: the scorer runs on the GPU */
    _Atomic uint64_t scorer_fallbacks;   /* scorers on the CPU for want of a GPU: at start or at run time */
    svc_histogram e2e;                   /* event consumed -> ranking acknowledged */
    svc_histogram rank_latency;          /* request queued -> ranked (batcher + scorer) */
    _Atomic uint64_t batch_size[SVC_BATCH_BUCKETS]; /* from the batcher's stats */
    pthread_mutex_t model_mu;            /* the tags and gens of model_stats, current_gen */
    svc_model_stats model_stats[SVC_MAX_VARIANTS][2];
    uint64_t current_gen[SVC_MAX_VARIANTS]; /* 0: variant not served */
} svc_metrics;

/* Zeroes everything and makes the lock; svc_metrics_destroy undoes it. */
void svc_metrics_init(svc_metrics *m);
void svc_metrics_destroy(svc_metrics *m);

/* Variant v's version gen (tag "<name>@<sha256 prefix>") is now current. */
void svc_metrics_model_set(svc_metrics *m, int v, uint64_t gen, const char *tag);
/* A ranking on variant v's version gen finished (ok or not) after us. */
void svc_metrics_model_observe(svc_metrics *m, int v, uint64_t gen, int ok, uint64_t us);

void svc_hist_observe(svc_histogram *h, uint64_t us);
/* The value below which a fraction q of observations fall (bucket bound). */
uint64_t svc_hist_quantile(const svc_histogram *h, double q);

/* Renders everything; the caller frees *out. 0, or -1 on out of memory.
 * Not const: it takes model_mu. */
int svc_metrics_render(svc_metrics *m, char **out, size_t *len);

#endif
