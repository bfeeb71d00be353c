/* features/fs.h — the Redis feature store (hiredis): per-user history and
 * seen items, per-item and per-user fields, the set of unavailable items.
 * Key layout and guarantees: docs/service.md.
 *
 * Work goes in batches: the caller queues writes and reads, and
 * fs_batch_exec sends them all in one pipelined round trip. Redis runs a
 * pipeline in order, so a read queued after a write sees it. Every write is
 * idempotent: applying the same event twice leaves the same state.
 *
 * Not thread-safe: one fs_store per thread. */
#ifndef RANKD_FEATURES_FS_H
#define RANKD_FEATURES_FS_H

#include <stddef.h>
#include <stdint.h>

typedef struct fs_opts {
    const char *host;
    int port;
    const char *password; /* NULL or "": no AUTH */
    int db;
    const char *prefix;   /* e.g. "rankd:" */
    int ttl_history_s, ttl_seen_s, ttl_item_s, ttl_user_s;
    int timeout_ms;
    int max_hist;         /* history entries kept per user */
} fs_opts;

typedef struct fs_store fs_store;

/* Connects (and AUTHs, SELECTs). A store whose connection breaks later
 * reconnects on the next fs_batch_exec or fs_ping. */
int fs_open(fs_store **out, const fs_opts *o, char *err, size_t errsz);
void fs_close(fs_store *s);

/* One round trip: 0 when Redis answers, -1 (with err) otherwise. */
int fs_ping(fs_store *s, char *err, size_t errsz);

/* ---- batches -------------------------------------------------------------- */

typedef struct fs_batch fs_batch;

/* A batch of at most max_ops queued operations (each fs_batch_* call is
 * one), reused across rounds. */
fs_batch *fs_batch_new(fs_store *s, int max_ops);
void fs_batch_free(fs_batch *b);
void fs_batch_reset(fs_batch *b);

/* Writes. Return 0, or -1 when the batch is full. Strings are copied. */
int fs_batch_interaction(fs_batch *b, const char *event_id, int64_t ts, const char *user,
                         const char *item, const char *action);
/* `available`: 1, 0, or -1 when the event does not say. Every field is
 * stored as its JSON text. */
int fs_batch_item(fs_batch *b, const char *item, int available, const char *const *names,
                  const char *const *values, int n_fields);
int fs_batch_user(fs_batch *b, const char *user, const char *const *names,
                  const char *const *values, int n_fields);

/* Reads: the user's history (oldest first, at most max_hist) and seen
 * items. Returns a handle for fs_batch_user_state after exec, or -1. */
int fs_batch_read_user(fs_batch *b, const char *user);

/* Sends everything queued, reads every reply. -1 on a connection or
 * server error (nothing is known about which writes were applied: the
 * caller retries the whole batch, which idempotence makes safe). */
int fs_batch_exec(fs_batch *b, char *err, size_t errsz);

typedef struct fs_user_state {
    int n_hist;
    const char *const *hist_items;   /* [n_hist], oldest first */
    const char *const *hist_actions; /* [n_hist] */
    const int64_t *hist_ts;          /* [n_hist] */
    int n_seen;
    const char *const *seen;         /* [n_seen] */
} fs_user_state;

/* The reply of read `handle`; pointers valid until the next reset/exec. */
void fs_batch_user_state(const fs_batch *b, int handle, fs_user_state *out);

/* ---- the unavailable items ------------------------------------------------------ */

/* Calls fn for every item currently marked unavailable (one SSCAN walk). */
int fs_unavailable(fs_store *s, void (*fn)(void *ctx, const char *item), void *ctx, char *err,
                   size_t errsz);

/* ---- every user with a history ------------------------------------------------------ */

#define FS_CURSOR_MAX 32 /* bytes of a SCAN cursor, with its NUL */

/* One page of SCAN over the history keys: calls fn with the user of each
 * key found (the key without "<prefix>h:"; binary-safe up to its NUL) and
 * moves `cursor` on ("0" starts; "0" again after the last page). A cursor
 * is the whole state of a walk, so a saved one resumes it, in another
 * process too. SCAN's guarantee holds: a user whose history exists for the
 * whole walk is reported, at least once (twice when the keyspace is resized
 * meanwhile). `count` is SCAN's COUNT hint. */
int fs_scan_users(fs_store *s, char cursor[FS_CURSOR_MAX], int count,
                  void (*fn)(void *ctx, const char *user, size_t len), void *ctx, char *err,
                  size_t errsz);

#endif
