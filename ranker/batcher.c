/* ranker/batcher.c — see batcher.h. */
#include "ranker/batcher.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"

#define MAX_BATCH_CAP 4096
#define N_SIZE_CLASSES 8

struct rk_batcher {
    rk_scorer *s;
    rk_batcher_opts o;
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    rk_job *head, *tail;
    int queued, stop;
    rk_job **batch;          /* [max_batch] */
    rk_request *reqs;        /* [max_batch] */
    double cost_us[N_SIZE_CLASSES]; /* moving average of scoring time per size class */
    int last_size;
    rk_batcher_stats st;
};

int64_t rk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int size_class(int n)
{
    int c = 0;
    while (c < N_SIZE_CLASSES - 1 && n > (1 << c))
        c++;
    return c;
}

/* Should the batcher wait for more jobs? Only under load (the last batch
 * was not alone), below max_batch, within max_wait, and while the oldest
 * job would still finish within the latency target. Called locked. */
static int worth_waiting(const rk_batcher *b, int64_t now)
{
    if (b->last_size <= 1 || b->queued >= b->o.max_batch || b->stop || !b->head)
        return 0;
    int64_t waited_us = (now - b->head->enqueued_ns) / 1000;
    double expect = b->cost_us[size_class(b->o.max_batch)];
    return waited_us < b->o.max_wait_us && (double)waited_us + expect < (double)b->o.latency_target_us;
}

static int take(rk_batcher *b)
{
    int n = 0;
    while (b->head && n < b->o.max_batch) {
        rk_job *j = b->head;
        b->head = j->next;
        b->batch[n++] = j;
    }
    if (!b->head)
        b->tail = NULL;
    b->queued -= n;
    return n;
}

/* Scores jobs[0..n) on one scorer and runs their done callbacks; 0, or -1
 * when the batch call failed. */
static int run_group(rk_batcher *b, rk_scorer *sc, rk_job **jobs, int n)
{
    char err[CM_ERRSZ] = "";
    for (int i = 0; i < n; i++)
        b->reqs[i] = jobs[i]->req;
    int rc = rk_scorer_rank(sc, b->reqs, n, err, sizeof err);
    if (rc && n > 1) { /* one bad request must not fail the others: score one by one */
        for (int i = 0; i < n; i++) {
            char e1[CM_ERRSZ] = "";
            int r1 = rk_scorer_rank(sc, &b->reqs[i], 1, e1, sizeof e1);
            jobs[i]->req = b->reqs[i];
            jobs[i]->done(jobs[i], r1, r1 ? e1 : NULL, jobs[i]->ctx);
        }
    } else {
        for (int i = 0; i < n; i++) {
            jobs[i]->req = b->reqs[i];
            jobs[i]->done(jobs[i], rc, rc ? err : NULL, jobs[i]->ctx);
        }
    }
    return rc;
}

/* The batch grouped by scorer: each group is moved to the front of what is
 * left (its order kept) and scored; a done callback may release the last
 * reference to a job's scorer, so the scorer is read before any runs. */
static void run_batch(rk_batcher *b, int n)
{
    int64_t t0 = rk_now_ns();
    int rc = 0;
    for (int start = 0; start < n;) {
        rk_scorer *sc = b->batch[start]->scorer ? b->batch[start]->scorer : b->s;
        int end = start;
        for (int i = start; i < n; i++) {
            rk_job *j = b->batch[i];
            if ((j->scorer ? j->scorer : b->s) != sc)
                continue;
            memmove(&b->batch[end + 1], &b->batch[end], sizeof *b->batch * (size_t)(i - end));
            b->batch[end++] = j;
        }
        rc |= run_group(b, sc, &b->batch[start], end - start);
        start = end;
    }
    double us = (double)(rk_now_ns() - t0) / 1e3;
    pthread_mutex_lock(&b->mu);
    int c = size_class(n);
    b->cost_us[c] = b->cost_us[c] > 0 ? 0.8 * b->cost_us[c] + 0.2 * us : us;
    b->last_size = n;
    b->st.batches++;
    b->st.jobs += (uint64_t)n;
    b->st.errors += rc != 0;
    b->st.size_hist[c]++;
    b->st.ewma_batch_us = b->st.ewma_batch_us > 0 ? 0.9 * b->st.ewma_batch_us + 0.1 * us : us;
    pthread_mutex_unlock(&b->mu);
}

static void *loop(void *arg)
{
    rk_batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->head && !b->stop)
            pthread_cond_wait(&b->cv, &b->mu);
        if (!b->head && b->stop)
            break;
        while (worth_waiting(b, rk_now_ns())) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            long ns = ts.tv_nsec + 50000; /* look again in 50 us */
            ts.tv_sec += ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&b->cv, &b->mu, &ts);
        }
        int n = take(b);
        pthread_mutex_unlock(&b->mu);
        run_batch(b, n);
        pthread_mutex_lock(&b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

int rk_batcher_new(rk_batcher **out, rk_scorer *s, const rk_batcher_opts *o, char *err, size_t errsz)
{
    *out = NULL;
    if (o->max_batch < 1 || o->max_batch > MAX_BATCH_CAP || o->max_wait_us < 0 || o->latency_target_us < 0)
        return cm_errf(err, errsz, "batcher: max_batch %d (1..%d), max_wait_us %d, latency_target_us %d",
                       o->max_batch, MAX_BATCH_CAP, o->max_wait_us, o->latency_target_us);
    rk_batcher *b = calloc(1, sizeof *b);
    if (!b)
        return cm_errf(err, errsz, "batcher: out of memory");
    b->s = s;
    b->o = *o;
    b->batch = calloc((size_t)o->max_batch, sizeof *b->batch);
    b->reqs = calloc((size_t)o->max_batch, sizeof *b->reqs);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    if (!b->batch || !b->reqs || pthread_create(&b->tid, NULL, loop, b) != 0) {
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->cv);
        free(b->batch);
        free(b->reqs);
        free(b);
        return cm_errf(err, errsz, "batcher: cannot start its thread");
    }
    *out = b;
    return 0;
}

void rk_batcher_free(rk_batcher *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stop = 1;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->tid, NULL);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b->batch);
    free(b->reqs);
    free(b);
}

void rk_batcher_submit(rk_batcher *b, rk_job *j)
{
    j->enqueued_ns = rk_now_ns();
    j->next = NULL;
    pthread_mutex_lock(&b->mu);
    if (b->tail)
        b->tail->next = j;
    else
        b->head = j;
    b->tail = j;
    b->queued++;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

int rk_batcher_queued(rk_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->queued;
    pthread_mutex_unlock(&b->mu);
    return n;
}

void rk_batcher_stats_get(rk_batcher *b, rk_batcher_stats *out)
{
    pthread_mutex_lock(&b->mu);
    *out = b->st;
    out->avg_batch = b->st.batches ? (double)b->st.jobs / (double)b->st.batches : 0.0;
    pthread_mutex_unlock(&b->mu);
}
