/* llm/pool.h — a small fork-join thread pool for the scorer.
 *
 * lm_pool_run hands tasks 0..n-1 to the pool's threads and to the caller,
 * and returns when all are done. Workers spin briefly between jobs (a
 * request that follows closely finds them awake) and then sleep. */
#ifndef RANKD_LLM_POOL_H
#define RANKD_LLM_POOL_H

#include <stddef.h>

typedef struct lm_pool lm_pool;

/* `fn` runs task `task` on thread `thread` (0 is the caller, 1.. workers). */
typedef void (*lm_task_fn)(void *ctx, int task, int thread);

/* A pool of n_threads in all, the caller included (n_threads - 1 workers). */
int lm_pool_new(lm_pool **out, int n_threads, char *err, size_t errsz);
void lm_pool_free(lm_pool *p); /* joins the workers; NULL is fine */
int lm_pool_threads(const lm_pool *p);

/* Not reentrant: one lm_pool_run at a time per pool. Tasks are claimed in
 * index order, so a task may wait for a lower-numbered one to make progress
 * (it has been claimed by a running thread) but never for a higher one. */
void lm_pool_run(lm_pool *p, lm_task_fn fn, void *ctx, int n_tasks);

/* A polite busy-wait step (x86 pause). */
static inline void lm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

#endif
