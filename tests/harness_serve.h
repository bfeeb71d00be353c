/* tests/harness_serve.h — `rankd serve` in a thread of the test process,
 * started from a config file and stopped the way a signal stops it; and
 * reading one value off its /metrics. Header-only; every function is
 * static inline. */
#ifndef RANKD_TESTS_HARNESS_SERVE_H
#define RANKD_TESTS_HARNESS_SERVE_H

#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "service/config.h"
#include "service/serve.h"
#include "tests/harness_http.h"

typedef struct th_serve {
    svc_config cfg;
    pthread_t tid;
    volatile sig_atomic_t stop;
    int http_port, ready, rc;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char err[CM_ERRSZ];
} th_serve;

static inline void th_serve_on_ready(void *ctx, int port)
{
    th_serve *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->http_port = port;
    r->ready = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static inline void *th_serve_thread(void *arg)
{
    th_serve *r = arg;
    r->rc = svc_serve(&r->cfg, &r->stop, th_serve_on_ready, r, r->err, sizeof r->err);
    th_serve_on_ready(r, 0); /* a failed start must not leave the test waiting */
    return NULL;
}

/* Starts the service on config_path and waits until it is up (or failed:
 * then the test fails with svc_serve's error). */
static inline void th_serve_start(th_serve *r, const char *config_path)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    ck_assert_msg(svc_config_load(&r->cfg, config_path, r->err, sizeof r->err) == 0, "%s", r->err);
    ck_assert_int_eq(pthread_create(&r->tid, NULL, th_serve_thread, r), 0);
    pthread_mutex_lock(&r->mu);
    while (!r->ready)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    ck_assert_msg(r->http_port > 0, "the service did not start: %s", r->err);
}

static inline void th_serve_stop(th_serve *r)
{
    r->stop = 1;
    pthread_join(r->tid, NULL);
    ck_assert_msg(r->rc == 0, "svc_serve: %s", r->err);
    svc_config_free(&r->cfg);
}

/* The value of the /metrics line on 127.0.0.1:port that starts with
 * `series` (name and labels exactly as rendered), or -1 when there is no
 * such line. */
static inline double th_metric(int port, const char *series)
{
    static char body[1 << 18];
    ck_assert_int_eq(th_http(port, "GET", "/metrics", NULL, NULL, body, sizeof body), 200);
    size_t n = strlen(series);
    for (const char *line = body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, series, n) && line[n] == ' ')
            return strtod(line + n + 1, NULL);
    return -1;
}

static inline double th_serve_metric(const th_serve *r, const char *series)
{
    return th_metric(r->http_port, series);
}

#endif
