/* service/offsets.h — which input offsets may be committed.
 *
 * At-least-once: an offset is stored (rd_kafka_offsets_store) only when the
 * event at it and every earlier event of its partition are done, i.e.
 * every output it caused was acknowledged by the broker (or it caused
 * none). Events finish out of order (batches, retries); this tracker keeps
 * per partition a window of in-flight offsets and says how far the done
 * prefix reaches.
 *
 * Single-threaded: the consumer thread begins events, and delivery reports
 * (served by rd_kafka_poll on the same thread) finish them. */
#ifndef RANKD_SERVICE_OFFSETS_H
#define RANKD_SERVICE_OFFSETS_H

#include <stdint.h>

typedef struct svc_offsets svc_offsets;

svc_offsets *svc_offsets_new(void); /* NULL on out of memory */
void svc_offsets_free(svc_offsets *t);

/* Event (partition, offset) starts with `pending` outputs still to be
 * acknowledged (0: done at once). Offsets of a partition must begin in
 * increasing order. Returns 0, or -1 on out of memory. */
int svc_offsets_begin(svc_offsets *t, int32_t partition, int64_t offset, int pending);

/* One output of the event was acknowledged. */
void svc_offsets_ack(svc_offsets *t, int32_t partition, int64_t offset);

/* The next offset to commit for the partition (one past the done prefix),
 * or -1 when nothing new is done since the last call. */
int64_t svc_offsets_committable(svc_offsets *t, int32_t partition);

/* Events begun but not done, over all partitions. */
int64_t svc_offsets_in_flight(const svc_offsets *t);

/* Forgets a partition (revoked in a rebalance). */
void svc_offsets_drop(svc_offsets *t, int32_t partition);

#endif
