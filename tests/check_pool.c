/* tests/check_pool.c — the scorer's fork-join thread pool (llm/pool.h):
 * every task runs exactly once on a valid thread, consecutive jobs never
 * mix, sleeping workers wake for the next job, a job published before a
 * worker first ran is still seen by it, and bad sizes are refused. */
#include "llm/pool.h"

#include "common/err.h"

#include <check.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Check's ck_assert_* make a system call on every pass; loops test first. */
#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond))                                                                     \
            ck_abort_msg(__VA_ARGS__);                                                   \
    } while (0)

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    CHECK(p != NULL, "malloc(%zu) failed", bytes);
    return p;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* ---- thread pool ------------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_us(long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = us % 1000000 * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static lm_pool *pool_or_fail(int threads)
{
    char err[CM_ERRSZ] = "";
    lm_pool *p = NULL;
    CHECK(lm_pool_new(&p, threads, err, sizeof err) == 0 && p, "lm_pool_new(%d): %s", threads,
          err);
    ck_assert_int_eq(lm_pool_threads(p), threads);
    return p;
}

/* Counts calls per task and flags task or thread ids out of range. */
typedef struct count_ctx {
    int n_tasks, n_threads;
    atomic_int *hits; /* [n_tasks] */
    atomic_int bad;
} count_ctx;

static void count_task(void *ctx, int task, int thread)
{
    count_ctx *c = ctx;
    if (task < 0 || task >= c->n_tasks || thread < 0 || thread >= c->n_threads)
        atomic_fetch_add(&c->bad, 1);
    else
        atomic_fetch_add(&c->hits[task], 1);
}

static void run_counted(lm_pool *p, int threads, int n_tasks)
{
    count_ctx c = {.n_tasks = n_tasks, .n_threads = threads};
    c.hits = xmalloc(((size_t)n_tasks + 1) * sizeof(atomic_int));
    for (int t = 0; t < n_tasks; t++)
        atomic_init(&c.hits[t], 0);
    atomic_init(&c.bad, 0);
    lm_pool_run(p, count_task, &c, n_tasks);
    CHECK(atomic_load(&c.bad) == 0, "pool of %d, %d tasks: %d calls with a task outside 0..%d "
          "or a thread outside 0..%d", threads, n_tasks, atomic_load(&c.bad), n_tasks - 1,
          threads - 1);
    for (int t = 0; t < n_tasks; t++)
        CHECK(atomic_load(&c.hits[t]) == 1, "pool of %d, %d tasks: task %d ran %d times",
              threads, n_tasks, t, atomic_load(&c.hits[t]));
    free(c.hits);
}

START_TEST(test_pool_counts)
{
    static const int threads[] = {1, 2, 4, 8};
    static const int tasks[] = {0, 1, 2, 3, 100, 1000};
    for (int a = 0; a < LEN(threads); a++) {
        lm_pool *p = pool_or_fail(threads[a]);
        for (int rep = 0; rep < 3; rep++)
            for (int b = 0; b < LEN(tasks); b++)
                run_counted(p, threads[a], tasks[b]);
        lm_pool_free(p);
    }
    say("pool       counts : threads {1,2,4,8} x tasks {0,1,2,3,100,1000} x 3: each task once, "
        "task and thread ids in range");
}
END_TEST

/* Two contexts and two functions alternate job by job; each task stores
 * its job's id and its function's tag, so a task run under the wrong job
 * (stale function, stale context or stale count) shows. */
enum { JOB_MAX_TASKS = 97, TAG_A = 1, TAG_B = 2 };

typedef struct job_ctx {
    int job, n_tasks;
    atomic_uint rec[JOB_MAX_TASKS];
    atomic_int calls;
} job_ctx;

static void job_record(job_ctx *c, int task, unsigned tag)
{
    atomic_fetch_add(&c->calls, 1);
    if (task >= 0 && task < JOB_MAX_TASKS)
        atomic_store(&c->rec[task], (unsigned)c->job << 2 | tag);
}

static void job_fn_a(void *ctx, int task, int thread)
{
    (void)thread;
    job_record(ctx, task, TAG_A);
}

static void job_fn_b(void *ctx, int task, int thread)
{
    (void)thread;
    job_record(ctx, task, TAG_B);
}

static void job_reset(job_ctx *c)
{
    for (int t = 0; t < JOB_MAX_TASKS; t++)
        atomic_store(&c->rec[t], UINT32_MAX);
    atomic_store(&c->calls, 0);
}

static void run_jobs(int threads, int jobs)
{
    lm_pool *p = pool_or_fail(threads);
    job_ctx *ctx = xmalloc(2 * sizeof(job_ctx));
    job_reset(&ctx[0]);
    job_reset(&ctx[1]);
    for (int j = 0; j < jobs; j++) {
        job_ctx *c = &ctx[j & 1], *other = &ctx[!(j & 1)];
        unsigned tag = j & 1 ? TAG_B : TAG_A;
        c->job = j;
        c->n_tasks = j % 50 == 49 ? 0 : 1 + (j * 37) % JOB_MAX_TASKS;
        lm_pool_run(p, j & 1 ? job_fn_b : job_fn_a, c, c->n_tasks);
        CHECK(atomic_load(&c->calls) == c->n_tasks && atomic_load(&other->calls) == 0,
              "pool of %d, job %d: %d calls for %d tasks, %d to the other job's context",
              threads, j, atomic_load(&c->calls), c->n_tasks, atomic_load(&other->calls));
        for (int t = 0; t < JOB_MAX_TASKS; t++) {
            unsigned want = t < c->n_tasks ? (unsigned)j << 2 | tag : UINT32_MAX;
            unsigned got = atomic_load(&c->rec[t]);
            CHECK(got == want, "pool of %d, job %d (%d tasks): task %d recorded job %d tag %u, "
                  "expected job %d tag %u", threads, j, c->n_tasks, t, (int)(got >> 2),
                  got & 3u, (int)(want >> 2), want & 3u);
        }
        job_reset(c);
    }
    free(ctx);
    lm_pool_free(p);
}

START_TEST(test_pool_jobs)
{
    run_jobs(2, 2000);
    run_jobs(4, 2000);
    run_jobs(8, 500);
    say("pool       jobs   : 2000 jobs on 2 and 4 threads, 500 on 8, alternating fn/ctx, 0..97 "
        "tasks: no task ran under another job");
}
END_TEST

/* n tasks that each wait (up to BARRIER_NS) until all n have started. With
 * n = the pool's threads, the job completes in time only if every worker
 * takes part: a worker that sleeps through a job shows as a timeout rather
 * than passing unnoticed while the caller runs every task. (llm/pool.h only
 * promises progress to tasks that wait for lower-numbered ones; the time
 * limit is what keeps this one from hanging when a worker is missing.) */
#define BARRIER_NS 2000000000u

typedef struct barrier_ctx {
    int n;
    atomic_int arrived, abandon;
    atomic_uint seen;
} barrier_ctx;

static void barrier_task(void *ctx, int task, int thread)
{
    barrier_ctx *b = ctx;
    (void)task;
    atomic_fetch_or(&b->seen, 1u << (thread & 31));
    atomic_fetch_add(&b->arrived, 1);
    uint64_t t0 = now_ns();
    while (atomic_load(&b->arrived) < b->n && !atomic_load(&b->abandon)) {
        if (now_ns() - t0 > BARRIER_NS)
            atomic_store(&b->abandon, 1);
        sched_yield();
    }
}

static void run_barrier(lm_pool *p, int threads, const char *when)
{
    barrier_ctx b = {.n = threads};
    atomic_init(&b.arrived, 0);
    atomic_init(&b.abandon, 0);
    atomic_init(&b.seen, 0);
    lm_pool_run(p, barrier_task, &b, threads);
    CHECK(!atomic_load(&b.abandon) && atomic_load(&b.seen) == (1u << threads) - 1,
          "pool of %d, job %s: only threads 0x%x of 0x%x took part within %u ms", threads,
          when, atomic_load(&b.seen), (1u << threads) - 1, BARRIER_NS / 1000000u);
}

START_TEST(test_pool_wakeup)
{
    static const int threads[] = {2, 4, 8};
    for (int a = 0; a < LEN(threads); a++) {
        int n = threads[a];
        lm_pool *p = pool_or_fail(n);
        sleep_us(20000); /* every worker starts (see test_pool_first_job), then sleeps */
        run_barrier(p, n, "after 20 ms idle (workers asleep)");
        for (int rep = 0; rep < 4; rep++) {
            run_barrier(p, n, "back to back (workers spinning)");
            sleep_us(2000); /* 10x the 200 us spin */
            run_barrier(p, n, "after 2 ms idle (workers asleep)");
            sleep_us(2000);
            run_counted(p, n, 1000);
        }
        lm_pool_free(p);
    }
    say("pool       wakeup : 2/4/8 threads, jobs that need every thread, back to back and after "
        "2 ms sleeps (> 200 us spin): every worker took part");
}
END_TEST

/* The first job, run as soon as lm_pool_new returns: its workers must take
 * part as in any later job, however late their threads start. */
START_TEST(test_pool_first_job)
{
    static const int threads[] = {2, 4, 8};
    for (int a = 0; a < LEN(threads); a++) {
        lm_pool *p = pool_or_fail(threads[a]);
        run_barrier(p, threads[a], "run right after lm_pool_new");
        lm_pool_free(p);
    }
    say("pool       first  : 2/4/8 threads, the first job right after lm_pool_new: every worker "
        "took part");
}
END_TEST

START_TEST(test_pool_errors)
{
    static const int bad[] = {0, -1, 2000};
    for (int b = 0; b < LEN(bad); b++) {
        char err[CM_ERRSZ] = "", num[16];
        lm_pool *p = (lm_pool *)err; /* must come back NULL */
        snprintf(num, sizeof num, "%d", bad[b]);
        ck_assert_int_eq(lm_pool_new(&p, bad[b], err, sizeof err), -1);
        ck_assert_ptr_null(p);
        CHECK(strstr(err, "thread") && strstr(err, num),
              "lm_pool_new(%d): message \"%s\" should name the pool and the count", bad[b], err);
    }
    lm_pool_free(NULL);
    lm_pool *p = pool_or_fail(1);
    run_counted(p, 1, 10);
    lm_pool_free(p);
}
END_TEST

static Suite *pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("pool");
    tcase_add_test(tc, test_pool_counts);
    tcase_add_test(tc, test_pool_jobs);
    tcase_add_test(tc, test_pool_wakeup);
    tcase_add_test(tc, test_pool_first_job);
    tcase_add_test(tc, test_pool_errors);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pool_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
