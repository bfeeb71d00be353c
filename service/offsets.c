/* service/offsets.c — see offsets.h. Each partition keeps its in-flight
 * events in a ring buffer in offset order, so that finding an event is a
 * binary search and the done prefix is popped from the front. */
#include "service/offsets.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    int64_t offset;
    int pending;
} entry;

typedef struct part {
    entry *ring;
    int cap, head, len; /* entries ring[(head + i) % cap], i < len */
    int64_t done_next;  /* one past the last offset popped, or -1 */
    int advanced;       /* done_next moved since the last committable() */
} part;

struct svc_offsets {
    part *parts; /* indexed by partition id */
    int n_parts;
    int64_t in_flight;
};

svc_offsets *svc_offsets_new(void) { return calloc(1, sizeof(svc_offsets)); }

void svc_offsets_free(svc_offsets *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n_parts; i++)
        free(t->parts[i].ring);
    free(t->parts);
    free(t);
}

static part *get_part(svc_offsets *t, int32_t p, int create)
{
    if (p < 0)
        return NULL;
    if (p >= t->n_parts) {
        if (!create)
            return NULL;
        int n = p + 1 > 2 * t->n_parts ? p + 1 : 2 * t->n_parts;
        part *np = realloc(t->parts, sizeof(part) * (size_t)n);
        if (!np)
            return NULL;
        memset(np + t->n_parts, 0, sizeof(part) * (size_t)(n - t->n_parts));
        for (int i = t->n_parts; i < n; i++)
            np[i].done_next = -1;
        t->parts = np;
        t->n_parts = n;
    }
    return &t->parts[p];
}

static entry *at(part *q, int i) { return &q->ring[(q->head + i) % q->cap]; }

static void pop_done(svc_offsets *t, part *q)
{
    while (q->len > 0 && at(q, 0)->pending <= 0) {
        q->done_next = at(q, 0)->offset + 1;
        q->advanced = 1;
        q->head = (q->head + 1) % q->cap;
        q->len--;
        t->in_flight--;
    }
}

int svc_offsets_begin(svc_offsets *t, int32_t partition, int64_t offset, int pending)
{
    part *q = get_part(t, partition, 1);
    if (!q)
        return -1;
    if (q->len == q->cap) {
        int cap = q->cap ? 2 * q->cap : 64;
        entry *r = malloc(sizeof(entry) * (size_t)cap);
        if (!r)
            return -1;
        for (int i = 0; i < q->len; i++)
            r[i] = *at(q, i);
        free(q->ring);
        q->ring = r;
        q->cap = cap;
        q->head = 0;
    }
    *at(q, q->len) = (entry){offset, pending};
    q->len++;
    t->in_flight++;
    pop_done(t, q);
    return 0;
}

void svc_offsets_ack(svc_offsets *t, int32_t partition, int64_t offset)
{
    part *q = get_part(t, partition, 0);
    if (!q || q->len == 0)
        return;
    int lo = 0, hi = q->len;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (at(q, mid)->offset < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < q->len && at(q, lo)->offset == offset && at(q, lo)->pending > 0) {
        at(q, lo)->pending--;
        pop_done(t, q);
    }
}

int64_t svc_offsets_committable(svc_offsets *t, int32_t partition)
{
    part *q = get_part(t, partition, 0);
    if (!q || !q->advanced)
        return -1;
    q->advanced = 0;
    return q->done_next;
}

int64_t svc_offsets_in_flight(const svc_offsets *t) { return t->in_flight; }

void svc_offsets_drop(svc_offsets *t, int32_t partition)
{
    part *q = get_part(t, partition, 0);
    if (!q)
        return;
    t->in_flight -= q->len;
    free(q->ring);
    *q = (part){.done_next = -1};
}
