/* service/rescore.h — `rankd rescore`: ranked lists for a batch of
 * requests at the scorer's full throughput (docs/rescore.md).
 *
 * Input: a JSON-lines file of ranking events (DESIGN.md's schema; one
 * without "items" asks for retrieval), a Kafka topic of them (from the
 * beginning to its end at start), or every user with a history in Redis
 * (SCAN; each a retrieval). Output: a JSON-lines file or a Kafka topic of
 * ranked lists in the service's output schema. Features, rules and scoring
 * are the service's (service/rankreq.h, ranker/rk_scorer.h); rescore reads
 * the feature store and never writes it.
 *
 * A run keeps a checkpoint (service/ckpt.h): killed at any moment and run
 * again with the same arguments, it goes on from its last checkpoint. A
 * file output then holds every answer exactly once, in input order; a
 * topic output gets every answer at least once. */
#ifndef RANKD_SERVICE_RESCORE_H
#define RANKD_SERVICE_RESCORE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "service/config.h"

/* The moments a test hook sees, in the order a checkpoint passes them. */
typedef enum svc_rescore_point {
    SVC_RS_WRITTEN,      /* a chunk's answers are in the output file (write(2)) or queued to the producer */
    SVC_RS_SYNCED,       /* output fsync'd or every message acknowledged; checkpoint not yet replaced */
    SVC_RS_CHECKPOINTED, /* checkpoint replaced */
} svc_rescore_point;

typedef struct svc_rescore_opts {
    /* exactly one input */
    const char *input;         /* JSON-lines file */
    const char *input_topic;   /* topic on kafka.brokers */
    int scan;                  /* every user with a history in Redis */
    /* exactly one output */
    const char *output;        /* JSON-lines file */
    const char *output_topic;  /* topic on kafka.brokers, keyed by user */
    const char *checkpoint;    /* NULL: "<output>.ckpt"; required with output_topic */
    int restart;               /* forget the checkpoint, start over (truncates a file output) */
    int batch;                 /* requests per scorer call; 0: 512 */
    int k;                     /* answer length; 0: ranking.k */
    int checkpoint_ms;         /* at most this long between checkpoints; 0: 1000 */
    FILE *progress;            /* NULL: silent */
    int progress_bar;          /* 1: a bar redrawn in place; 0: plain lines */
    double progress_every_s;   /* between plain lines; 0: 10 */
    /* A bad request: where ("in.jsonl:12", "topic[1]@40", "redis key
     * rankd:h:u1") and why. It is skipped and counted. May be NULL. */
    void (*on_bad)(void *ctx, const char *where, const char *reason);
    /* For tests: called at each point with the requests read so far; a
     * hook that _exit()s there is a crash at that moment. May be NULL. */
    void (*hook)(void *ctx, svc_rescore_point pt, int64_t read);
    void *ctx;
} svc_rescore_opts;

typedef struct svc_rescore_stats {
    int64_t read, ranked, bad, failed; /* the whole run, resumed parts included */
    int64_t resumed_at;                /* requests read before this process; 0 for a fresh run */
    int already_complete;              /* the checkpoint said done: nothing was run */
    double seconds;                    /* this process's */
    char device[128];                  /* the scorer's */
} svc_rescore_stats;

/* Runs until the input ends (returns 0), or *stop becomes non-zero (a
 * signal handler sets it): the chunk in hand is finished, the checkpoint
 * written, and it returns 1. -1 with err on failure; the last checkpoint
 * stays valid, so the run can be resumed once the cause is fixed. */
int svc_rescore(const svc_config *cfg, const svc_rescore_opts *o, volatile sig_atomic_t *stop,
                svc_rescore_stats *st, char *err, size_t errsz);

/* rankd rescore (--input FILE | --input-topic T | --scan)
 *              (--output FILE | --output-topic T) [options] */
int svc_cmd_rescore(int argc, char **argv);

#endif
