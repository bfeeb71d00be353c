/* service/metrics.c — see metrics.h. */
#include "service/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t bound_us(int i) { return 100ull << i; }

void svc_hist_observe(svc_histogram *h, uint64_t us)
{
    int i = 0;
    while (i < SVC_LAT_BUCKETS && us > bound_us(i))
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
}

uint64_t svc_hist_quantile(const svc_histogram *h, double q)
{
    uint64_t n = atomic_load(&h->count), want = (uint64_t)(q * (double)n + 0.5), acc = 0;
    for (int i = 0; i <= SVC_LAT_BUCKETS; i++) {
        acc += atomic_load(&h->bucket[i]);
        if (acc >= want && want > 0)
            return i < SVC_LAT_BUCKETS ? bound_us(i) : UINT64_MAX;
    }
    return 0;
}

void svc_metrics_init(svc_metrics *m)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->model_mu, NULL);
}

void svc_metrics_destroy(svc_metrics *m) { pthread_mutex_destroy(&m->model_mu); }

void svc_metrics_model_set(svc_metrics *m, int v, uint64_t gen, const char *tag)
{
    svc_model_stats *r = &m->model_stats[v][gen & 1];
    pthread_mutex_lock(&m->model_mu);
    atomic_store(&r->gen, 0); /* late counts of the version two back stop here */
    atomic_store(&r->rankings, 0);
    atomic_store(&r->errors, 0);
    for (int i = 0; i <= SVC_LAT_BUCKETS; i++)
        atomic_store(&r->latency.bucket[i], 0);
    atomic_store(&r->latency.count, 0);
    atomic_store(&r->latency.sum_us, 0);
    snprintf(r->tag, sizeof r->tag, "%s", tag);
    atomic_store(&r->gen, gen);
    m->current_gen[v] = gen;
    pthread_mutex_unlock(&m->model_mu);
}

/* Lock-free on the batcher thread: a count that races with the row's
 * reuse (a version two reloads old still finishing) may land in the new
 * row or be lost, one ranking at most per race. */
void svc_metrics_model_observe(svc_metrics *m, int v, uint64_t gen, int ok, uint64_t us)
{
    svc_model_stats *r = &m->model_stats[v][gen & 1];
    if (atomic_load_explicit(&r->gen, memory_order_relaxed) != gen)
        return;
    atomic_fetch_add_explicit(ok ? &r->rankings : &r->errors, 1, memory_order_relaxed);
    if (ok)
        svc_hist_observe(&r->latency, us);
}

typedef struct buf {
    char *p;
    size_t len, cap;
    int oom;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? 2 * b->cap : 8192;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* The series of one histogram; labels: "" or `k="v",...` put before le. */
static void histogram_series(buf *b, const char *name, const char *labels, const svc_histogram *h)
{
    const char *sep = *labels ? "," : "";
    uint64_t acc = 0;
    for (int i = 0; i < SVC_LAT_BUCKETS; i++) {
        acc += atomic_load(&h->bucket[i]);
        put(b, "%s_bucket{%s%sle=\"%.6f\"} %llu\n", name, labels, sep, (double)bound_us(i) / 1e6,
            (unsigned long long)acc);
    }
    acc += atomic_load(&h->bucket[SVC_LAT_BUCKETS]);
    const char *o = *labels ? "{" : "", *c = *labels ? "}" : "";
    put(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n%s_sum%s%s%s %.6f\n%s_count%s%s%s %llu\n", name, labels, sep,
        (unsigned long long)acc, name, o, labels, c, (double)atomic_load(&h->sum_us) / 1e6, name, o, labels, c,
        (unsigned long long)atomic_load(&h->count));
}

static void histogram(buf *b, const char *name, const char *help, const svc_histogram *h)
{
    put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    histogram_series(b, name, "", h);
}

static void counter(buf *b, const char *name, const char *help, uint64_t v)
{
    put(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, (unsigned long long)v);
}

static void gauge(buf *b, const char *name, const char *help, long long v)
{
    put(b, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, v);
}

/* Per-variant reload counters and per-version figures; the tags are
 * file names and hashes (no secrets), quoted as Prometheus wants. */
static void model_metrics(buf *b, svc_metrics *m)
{
    static const char vn[SVC_MAX_VARIANTS] = {'a', 'b'};
    pthread_mutex_lock(&m->model_mu);
    put(b, "# HELP rankd_model_reloads_total New model versions swapped in after start, by variant.\n"
           "# TYPE rankd_model_reloads_total counter\n");
    for (int v = 0; v < SVC_MAX_VARIANTS; v++)
        if (m->current_gen[v])
            put(b, "rankd_model_reloads_total{variant=\"%c\"} %llu\n", vn[v],
                (unsigned long long)atomic_load(&m->model_reloads[v]));
    put(b, "# HELP rankd_model_reload_failures_total Model artifacts refused on reload (the old one kept "
           "serving; the reason is logged), by variant.\n# TYPE rankd_model_reload_failures_total counter\n");
    for (int v = 0; v < SVC_MAX_VARIANTS; v++)
        if (m->current_gen[v])
            put(b, "rankd_model_reload_failures_total{variant=\"%c\"} %llu\n", vn[v],
                (unsigned long long)atomic_load(&m->model_reload_failures[v]));
    gauge(b, "rankd_model_versions_retiring", "Replaced model versions not yet freed: rankings in flight still use them.",
          atomic_load(&m->models_retiring));
    put(b, "# HELP rankd_model_info The model version each variant serves now.\n# TYPE rankd_model_info gauge\n");
    for (int v = 0; v < SVC_MAX_VARIANTS; v++)
        if (m->current_gen[v])
            put(b, "rankd_model_info{variant=\"%c\",model=\"%s\"} 1\n", vn[v],
                m->model_stats[v][m->current_gen[v] & 1].tag);
    char labels[SVC_MAX_VARIANTS][2][192];
    for (int v = 0; v < SVC_MAX_VARIANTS; v++)
        for (int r = 0; r < 2; r++)
            snprintf(labels[v][r], sizeof labels[v][r], "variant=\"%c\",model=\"%s\"", vn[v],
                     m->model_stats[v][r].tag);
    put(b, "# HELP rankd_model_rankings_total Rankings answered, by variant and model version.\n"
           "# TYPE rankd_model_rankings_total counter\n");
    for (int v = 0; v < SVC_MAX_VARIANTS; v++)
        for (int r = 0; r < 2; r++)
            if (atomic_load(&m->model_stats[v][r].gen))
                put(b, "rankd_model_rankings_total{%s} %llu\n", labels[v][r],
                    (unsigned long long)atomic_load(&m->model_stats[v][r].rankings));
    put(b, "# HELP rankd_model_rank_errors_total Rank requests the scorer refused, by variant and model version.\n"
           "# TYPE rankd_model_rank_errors_total counter\n");
    for (int v = 0; v < SVC_MAX_VARIANTS; v++)
        for (int r = 0; r < 2; r++)
            if (atomic_load(&m->model_stats[v][r].gen))
                put(b, "rankd_model_rank_errors_total{%s} %llu\n", labels[v][r],
                    (unsigned long long)atomic_load(&m->model_stats[v][r].errors));
    put(b, "# HELP rankd_model_rank_latency_seconds From queueing a rank request to its answer, by variant and "
           "model version.\n# TYPE rankd_model_rank_latency_seconds histogram\n");
    for (int v = 0; v < SVC_MAX_VARIANTS; v++)
        for (int r = 0; r < 2; r++)
            if (atomic_load(&m->model_stats[v][r].gen))
                histogram_series(b, "rankd_model_rank_latency_seconds", labels[v][r], &m->model_stats[v][r].latency);
    pthread_mutex_unlock(&m->model_mu);
}

int svc_metrics_render(svc_metrics *m, char **out, size_t *len)
{
    static const char *const kinds[SVC_EVK_N] = {"interaction", "ranking", "item", "user", "invalid"};
    static const char *const outcomes[SVC_OUT_N] = {"applied", "ranked", "dead_letter"};
    static const char *const eps[SVC_EP_N] = {"/healthz", "/readyz", "/metrics", "/v1/rank", "other"};
    buf b = {0};
    put(&b, "# HELP rankd_events_total Input events by type and outcome.\n# TYPE rankd_events_total counter\n");
    for (int k = 0; k < SVC_EVK_N; k++)
        for (int o = 0; o < SVC_OUT_N; o++)
            put(&b, "rankd_events_total{type=\"%s\",outcome=\"%s\"} %llu\n", kinds[k], outcomes[o],
                (unsigned long long)atomic_load(&m->events[k][o]));
    uint64_t dl = 0;
    for (int k = 0; k < SVC_EVK_N; k++)
        dl += atomic_load(&m->events[k][SVC_OUT_DEAD_LETTER]);
    counter(&b, "rankd_dead_lettered_total", "Events sent to the dead-letter topic.", dl);
    counter(&b, "rankd_rankings_published_total", "Ranked lists acknowledged by the broker.",
            atomic_load(&m->published));
    counter(&b, "rankd_publish_errors_total",
            "Output messages the broker refused or did not acknowledge with an offset (produced again).",
            atomic_load(&m->publish_errors));
    counter(&b, "rankd_redis_errors_total", "Failed Redis round trips.", atomic_load(&m->redis_errors));
    counter(&b, "rankd_kafka_errors_total", "Kafka client errors.", atomic_load(&m->kafka_errors));
    counter(&b, "rankd_rank_errors_total", "Rank requests the scorer refused.", atomic_load(&m->rank_errors));
    gauge(&b, "rankd_scorer_gpu", "1 when the scorer runs on the GPU, 0 on the CPU.",
          atomic_load(&m->scorer_gpu));
    counter(&b, "rankd_scorer_cpu_fallbacks_total", "Scorers on the CPU instead of the GPU: started there "
            "because model.device auto found no usable GPU, or moved there when a GPU call failed at run time "
            "(the reason is logged).", atomic_load(&m->scorer_fallbacks));
    gauge(&b, "rankd_consumer_lag", "Messages behind the high watermark, over assigned partitions.",
          (long long)atomic_load(&m->consumer_lag));
    gauge(&b, "rankd_events_in_flight", "Events consumed and not yet committable.",
          (long long)atomic_load(&m->in_flight));
    put(&b, "# HELP rankd_ready Readiness of each dependency (1 ready).\n# TYPE rankd_ready gauge\n"
            "rankd_ready{part=\"model\"} %d\nrankd_ready{part=\"kafka\"} %d\nrankd_ready{part=\"redis\"} %d\n",
        atomic_load(&m->ready_model), atomic_load(&m->ready_kafka), atomic_load(&m->ready_redis));
    model_metrics(&b, m);
    histogram(&b, "rankd_e2e_latency_seconds", "From consuming an event to its ranked list acknowledged.", &m->e2e);
    histogram(&b, "rankd_rank_latency_seconds", "From queueing a rank request to its answer.", &m->rank_latency);
    put(&b, "# HELP rankd_batches_total Scorer batches by their number of requests.\n# TYPE rankd_batches_total counter\n");
    static const char *const sizes[SVC_BATCH_BUCKETS] = {"1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65+"};
    for (int i = 0; i < SVC_BATCH_BUCKETS; i++)
        put(&b, "rankd_batches_total{size=\"%s\"} %llu\n", sizes[i], (unsigned long long)atomic_load(&m->batch_size[i]));
    put(&b, "# HELP rankd_http_requests_total HTTP requests by endpoint and status class.\n"
            "# TYPE rankd_http_requests_total counter\n");
    for (int e = 0; e < SVC_EP_N; e++)
        for (int c = 2; c <= 5; c++)
            put(&b, "rankd_http_requests_total{endpoint=\"%s\",code=\"%dxx\"} %llu\n", eps[e], c,
                (unsigned long long)atomic_load(&m->http[e][c]));
    counter(&b, "rankd_http_rate_limited_total", "POST /v1/rank answered 429 by http.rate_limit_rps.",
            atomic_load(&m->http_rate_limited));
    if (b.oom) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}
