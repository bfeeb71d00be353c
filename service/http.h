/* service/http.h — rankd's HTTP endpoints (libmicrohttpd, its own threads):
 *
 *   GET  /healthz   200 while the process runs
 *   GET  /readyz    200 when the model is loaded and Kafka and Redis are
 *                   reachable, else 503 with the parts that are not
 *   GET  /metrics   Prometheus text (service/metrics.h)
 *   POST /v1/rank   a ranking event in, its ranked list out, synchronously;
 *                   with a token configured, only with "Authorization:
 *                   Bearer <token>"
 *
 * POST /v1/rank is checked in this order: the token (401), the rate limit
 * (429 with Retry-After, a token bucket of rate_rps per second and
 * rate_burst deep, shared by every client), the size (bodies over max_body
 * bytes are refused with 413 before they are read). The other endpoints
 * are neither authenticated nor limited: probes and scrapes must not fail
 * under load. Nothing changes state; other methods are 405. */
#ifndef RANKD_SERVICE_HTTP_H
#define RANKD_SERVICE_HTTP_H

#include <stddef.h>

#include "service/metrics.h"

typedef struct svc_http_opts {
    const char *bind;    /* address to listen on, e.g. "127.0.0.1" */
    int port;            /* 0: an ephemeral port (svc_http_port says which) */
    const char *token;   /* NULL or "": no authentication */
    size_t max_body;
    int rate_rps;        /* POST /v1/rank per second; 0: no limit */
    int rate_burst;      /* bucket depth; 0: rate_rps */
    int threads;         /* connection-handling threads */
} svc_http_opts;

/* Answers a ranking request: *status (200, 400, ...) and a body the HTTP
 * layer frees. Runs on an HTTP thread; may block until the ranking is done. */
typedef void (*svc_rank_fn)(void *ctx, const char *body, size_t len, int *status, char **resp,
                            size_t *resp_len);

typedef struct svc_http svc_http;

int svc_http_start(svc_http **out, const svc_http_opts *o, svc_metrics *m, svc_rank_fn rank,
                   void *rank_ctx, char *err, size_t errsz);
void svc_http_stop(svc_http *h); /* NULL is fine */
int svc_http_port(const svc_http *h);

#endif
