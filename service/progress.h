/* service/progress.h — progress of a long batch job on a stream (stderr):
 * on a terminal one bar redrawn in place (done, rate, ETA), otherwise a
 * plain line every few seconds, which a log collector keeps readable.
 *
 * Work is counted twice: requests (what the user cares about) and units of
 * input (bytes of a file, messages of a topic), whose total is known up
 * front, so that the fraction done and the ETA hold even when requests
 * differ in size. Rates count only what this process did, not what a
 * resumed run had done before. */
#ifndef RANKD_SERVICE_PROGRESS_H
#define RANKD_SERVICE_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

typedef struct svc_progress {
    FILE *to;              /* NULL: silent */
    int bar;               /* 1: redraw a bar; 0: plain lines */
    double every_s;        /* between plain lines */
    int64_t total;         /* units of the whole input; -1 when unknown */
    int64_t t0_ns, last_ns;
    int64_t req0, unit0;   /* where this process started */
    int drawn;
} svc_progress;

void svc_progress_start(svc_progress *p, FILE *to, int bar, double every_s, int64_t total, int64_t req0,
                        int64_t unit0);
/* Redraws when due (final: always, and ends the bar's line). */
void svc_progress_update(svc_progress *p, int64_t reqs, int64_t units, int64_t bad, int final);

#endif
