/* service/http.c — see http.h. */
#include "service/http.h"

#include <arpa/inet.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"

struct svc_http {
    struct MHD_Daemon *d;
    svc_http_opts o;
    char *token;
    svc_metrics *m;
    svc_rank_fn rank;
    void *rank_ctx;
    int port;
    /* the token bucket of POST /v1/rank (o.rate_rps > 0): one for every
     * client, so that the limit is the service's capacity whatever the
     * number of callers; a lock is cheap next to a ranking */
    pthread_mutex_t bucket_mu;
    double tokens, burst;
    int64_t refilled_ns;
};

typedef struct body {
    char *p;
    size_t len;
    size_t sent;  /* bytes the client sent, kept or not: for the 413's message */
    int too_big;
} body;

static int endpoint(const char *url)
{
    if (!strcmp(url, "/healthz"))
        return SVC_EP_HEALTHZ;
    if (!strcmp(url, "/readyz"))
        return SVC_EP_READYZ;
    if (!strcmp(url, "/metrics"))
        return SVC_EP_METRICS;
    if (!strcmp(url, "/v1/rank"))
        return SVC_EP_RANK;
    return SVC_EP_OTHER;
}

static enum MHD_Result reply(svc_http *h, struct MHD_Connection *c, int ep, int status, const char *type,
                             char *text, size_t len, int owned)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, owned ? MHD_RESPMEM_MUST_FREE
                                                                               : MHD_RESPMEM_MUST_COPY);
    if (!r) {
        if (owned)
            free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    int cls = status / 100;
    if (cls >= 0 && cls <= 5)
        atomic_fetch_add_explicit(&h->m->http[ep][cls], 1, memory_order_relaxed);
    return rc;
}

static enum MHD_Result text(svc_http *h, struct MHD_Connection *c, int ep, int status, const char *msg)
{
    return reply(h, c, ep, status, "text/plain; charset=utf-8", (char *)msg, strlen(msg), 0);
}

/* 413 naming the size and the limit, so that a client can tell how far
 * over it is and which key an operator would raise. */
static enum MHD_Result too_large(svc_http *h, struct MHD_Connection *c, unsigned long long got)
{
    char msg[128];
    snprintf(msg, sizeof msg, "request body of %llu bytes exceeds http.max_body_bytes (%zu)\n", got, h->o.max_body);
    return text(h, c, SVC_EP_RANK, 413, msg);
}

/* Constant-time comparison, so that the token does not leak through timing. */
static int token_ok(const svc_http *h, struct MHD_Connection *c)
{
    if (!h->token)
        return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncmp(a, "Bearer ", 7) != 0)
        return 0;
    a += 7;
    size_t la = strlen(a), lt = strlen(h->token);
    unsigned diff = (unsigned)(la ^ lt);
    for (size_t i = 0; i < lt; i++)
        diff |= (unsigned char)h->token[i] ^ (unsigned char)(i < la ? a[i] : 0);
    return diff == 0;
}

static int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Takes one token; 0 when there is none, with *retry_s the whole seconds
 * until there will be (at least 1, as Retry-After counts seconds). */
static int bucket_take(svc_http *h, int *retry_s)
{
    if (h->o.rate_rps <= 0)
        return 1;
    pthread_mutex_lock(&h->bucket_mu);
    int64_t now = mono_ns();
    h->tokens = fmin(h->burst, h->tokens + (double)(now - h->refilled_ns) * 1e-9 * h->o.rate_rps);
    h->refilled_ns = now;
    int ok = h->tokens >= 1.0;
    if (ok)
        h->tokens -= 1.0;
    else
        *retry_s = (int)ceil((1.0 - h->tokens) / h->o.rate_rps);
    pthread_mutex_unlock(&h->bucket_mu);
    if (!ok && *retry_s < 1)
        *retry_s = 1;
    return ok;
}

static enum MHD_Result too_many(svc_http *h, struct MHD_Connection *c, int retry_s)
{
    static const char msg[] = "rate limit exceeded\n";
    struct MHD_Response *r = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    char after[16];
    snprintf(after, sizeof after, "%d", retry_s);
    MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    MHD_add_response_header(r, "Retry-After", after);
    enum MHD_Result rc = MHD_queue_response(c, 429, r);
    MHD_destroy_response(r);
    atomic_fetch_add_explicit(&h->m->http[SVC_EP_RANK][4], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->m->http_rate_limited, 1, memory_order_relaxed);
    return rc;
}

static enum MHD_Result readyz(svc_http *h, struct MHD_Connection *c)
{
    int mo = atomic_load(&h->m->ready_model), k = atomic_load(&h->m->ready_kafka),
        r = atomic_load(&h->m->ready_redis);
    if (mo && k && r)
        return text(h, c, SVC_EP_READYZ, 200, "ready\n");
    char msg[128];
    snprintf(msg, sizeof msg, "not ready:%s%s%s\n", mo ? "" : " model", k ? "" : " kafka", r ? "" : " redis");
    return text(h, c, SVC_EP_READYZ, 503, msg);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    svc_http *h = cls;
    int ep = endpoint(url);
    int post = strcmp(method, "POST") == 0, get = strcmp(method, "GET") == 0;
    if (ep == SVC_EP_RANK && post) {
        body *b = *con_cls;
        if (!b) { /* the headers: refuse early what cannot be accepted. The
                   * token comes first, so that callers without it neither
                   * spend the rate limit nor learn the size limit. */
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
            int retry_s = 1;
            if (!token_ok(h, c))
                return text(h, c, ep, 401, "missing or wrong bearer token\n");
            if (!bucket_take(h, &retry_s))
                return too_many(h, c, retry_s);
            if (cl && strtoull(cl, NULL, 10) > h->o.max_body)
                return too_large(h, c, strtoull(cl, NULL, 10));
            b = calloc(1, sizeof *b);
            if (!b)
                return MHD_NO;
            *con_cls = b;
            return MHD_YES;
        }
        if (*upload_size) {
            b->sent += *upload_size;
            if (b->too_big || b->len + *upload_size > h->o.max_body) {
                b->too_big = 1;
            } else {
                char *np = realloc(b->p, b->len + *upload_size + 1);
                if (!np)
                    return MHD_NO;
                memcpy(np + b->len, upload, *upload_size);
                b->p = np;
                b->len += *upload_size;
            }
            *upload_size = 0;
            return MHD_YES;
        }
        if (b->too_big)
            return too_large(h, c, b->sent);
        int status = 500;
        char *resp = NULL;
        size_t rlen = 0;
        h->rank(h->rank_ctx, b->p ? b->p : "", b->len, &status, &resp, &rlen);
        if (!resp)
            return text(h, c, ep, 500, "internal error\n");
        return reply(h, c, ep, status, "application/json", resp, rlen, 1);
    }
    if (!get || ep == SVC_EP_RANK) /* POST /v1/rank is handled above */
        return text(h, c, ep, 405, "method not allowed\n");
    switch (ep) {
    case SVC_EP_HEALTHZ:
        return text(h, c, ep, 200, "ok\n");
    case SVC_EP_READYZ:
        return readyz(h, c);
    case SVC_EP_METRICS: {
        char *out;
        size_t len;
        if (svc_metrics_render(h->m, &out, &len))
            return text(h, c, ep, 500, "out of memory\n");
        return reply(h, c, ep, 200, "text/plain; version=0.0.4", out, len, 1);
    }
    default:
        return text(h, c, ep, 404, "not found\n");
    }
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode t)
{
    (void)cls;
    (void)c;
    (void)t;
    body *b = *con_cls;
    if (b) {
        free(b->p);
        free(b);
        *con_cls = NULL;
    }
}

int svc_http_start(svc_http **out, const svc_http_opts *o, svc_metrics *m, svc_rank_fn rank, void *rank_ctx,
                   char *err, size_t errsz)
{
    *out = NULL;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)o->port);
    if (inet_pton(AF_INET, o->bind && *o->bind ? o->bind : "127.0.0.1", &sa.sin_addr) != 1)
        return cm_errf(err, errsz, "http.bind \"%s\": not an IPv4 address", o->bind);
    svc_http *h = calloc(1, sizeof *h);
    if (!h)
        return cm_errf(err, errsz, "http: out of memory");
    h->o = *o;
    h->m = m;
    h->rank = rank;
    h->rank_ctx = rank_ctx;
    h->token = o->token && *o->token ? strdup(o->token) : NULL;
    h->burst = o->rate_burst > 0 ? o->rate_burst : o->rate_rps > 0 ? o->rate_rps : 1;
    h->tokens = h->burst;
    h->refilled_ns = mono_ns();
    pthread_mutex_init(&h->bucket_mu, NULL);
    h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, (uint16_t)o->port, NULL, NULL,
                            handle, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(o->threads > 0 ? o->threads : 2),
                            MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (!h->d) {
        pthread_mutex_destroy(&h->bucket_mu);
        free(h->token);
        free(h);
        return cm_errf(err, errsz, "http: cannot listen on %s:%d", o->bind, o->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : o->port;
    *out = h;
    return 0;
}

void svc_http_stop(svc_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    pthread_mutex_destroy(&h->bucket_mu);
    free(h->token);
    free(h);
}

int svc_http_port(const svc_http *h) { return h->port; }
