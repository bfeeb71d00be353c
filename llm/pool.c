/* llm/pool.c — the scorer's thread pool.
 *
 * One 64-bit atomic word holds (job generation << 32 | next task). A thread
 * claims a task with a compare-and-swap that also checks the generation, so
 * a worker that wakes late can never run a task of a newer job with the
 * function of an older one. Job descriptors alternate between two slots:
 * job g+1 is written while late readers of job g may still look at slot g. */
#include "llm/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"

#define SPIN_NS 200000 /* stay awake this long after a job before sleeping */

typedef struct job {
    lm_task_fn fn;
    void *ctx;
    int n;
} job;

typedef struct worker {
    lm_pool *pool;
    int id;
    pthread_t tid;
} worker;

struct lm_pool {
    int n_threads;
    _Atomic uint64_t state;  /* gen << 32 | next task */
    _Atomic int remaining;   /* tasks of the current job not yet finished */
    _Atomic int sleepers;
    _Atomic int stop;
    job slot[2];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    worker *workers;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Runs tasks of generation `gen` until none is left. */
static void drain(lm_pool *p, uint32_t gen, int thread)
{
    const job *j = &p->slot[gen & 1];
    lm_task_fn fn = j->fn;
    void *ctx = j->ctx;
    int n = j->n;
    uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(s >> 32) != gen || (int)(uint32_t)s >= n)
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        fn(ctx, (int)(uint32_t)s, thread);
        atomic_fetch_sub_explicit(&p->remaining, 1, memory_order_release);
        s = atomic_load_explicit(&p->state, memory_order_acquire);
    }
}

static uint32_t wait_new_gen(lm_pool *p, uint32_t seen)
{
    uint64_t t0 = now_ns();
    for (unsigned i = 0;; i++) {
        uint32_t g = (uint32_t)(atomic_load_explicit(&p->state, memory_order_acquire) >> 32);
        if (g != seen || atomic_load(&p->stop))
            return g;
        lm_cpu_relax();
        if ((i & 255) == 255 && now_ns() - t0 > SPIN_NS)
            break;
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1);
    uint32_t g;
    while ((g = (uint32_t)(atomic_load(&p->state) >> 32)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->cv, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    lm_pool *p = w->pool;
    uint32_t seen = 0; /* the generation lm_pool_new starts at: a job published
                          before this thread ran is still new to it */
    for (;;) {
        seen = wait_new_gen(p, seen);
        if (atomic_load(&p->stop))
            return NULL;
        drain(p, seen, w->id);
    }
}

int lm_pool_new(lm_pool **out, int n_threads, char *err, size_t errsz)
{
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024)
        return cm_errf(err, errsz, "thread pool: %d threads, expected 1..1024", n_threads);
    lm_pool *p = calloc(1, sizeof *p);
    if (!p)
        return cm_errf(err, errsz, "thread pool: out of memory");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers) {
        lm_pool_free(p);
        return cm_errf(err, errsz, "thread pool: out of memory");
    }
    for (int i = 1; i < n_threads; i++) {
        p->workers[i].pool = p;
        p->workers[i].id = i;
        int rc = pthread_create(&p->workers[i].tid, NULL, worker_main, &p->workers[i]);
        if (rc) {
            p->n_threads = i; /* join only those started */
            lm_pool_free(p);
            return cm_errf(err, errsz, "thread pool: cannot start thread %d: %s", i, strerror(rc));
        }
    }
    *out = p;
    return 0;
}

void lm_pool_free(lm_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads && p->workers; i++)
        pthread_join(p->workers[i].tid, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p);
}

int lm_pool_threads(const lm_pool *p) { return p->n_threads; }

void lm_pool_run(lm_pool *p, lm_task_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    uint32_t gen = (uint32_t)(atomic_load(&p->state) >> 32) + 1;
    p->slot[gen & 1] = (job){.fn = fn, .ctx = ctx, .n = n_tasks};
    atomic_store_explicit(&p->remaining, n_tasks, memory_order_relaxed);
    atomic_store(&p->state, (uint64_t)gen << 32);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, gen, 0);
    while (atomic_load_explicit(&p->remaining, memory_order_acquire) > 0)
        lm_cpu_relax();
}
