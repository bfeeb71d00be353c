/* features/fs.c — the Redis feature store of fs.h (hiredis, blocking,
 * pipelined). docs/service.md fixes the key layout and the guarantees.
 *
 * A batch records its commands as byte ranges in one arena: strings are
 * copied when queued, and reset keeps every array's capacity, so a round
 * allocates nothing once the batch has seen its largest round. fs_batch_exec
 * hands the commands to hiredis in one go and reads exactly one reply per
 * command. An error reply (WRONGTYPE, NOAUTH, ...) fails the batch, but the
 * remaining replies are still read so that the connection stays in step; an
 * I/O error or a timeout drops the connection, and the next call makes one
 * attempt to reconnect.
 *
 * Commands reach hiredis only in fs_batch_exec, not when queued: a batch
 * queued while the connection is down still runs after the reconnection,
 * two batches of one store never interleave, and exec leaves the queue as
 * it is, so a failed exec is retried by calling exec again (reset starts the
 * next round).
 *
 * Decisions where fs.h is silent:
 * - a history member is `<event id>\x1f<item>\x1f<action>`; an event id,
 *   item or action holding \x1f could not be split back, so
 *   fs_batch_interaction refuses it (-1, no op used); the user id is only
 *   part of a key and may hold any byte but NUL;
 * - reads take ZRANGE h -max_hist -1: the newest max_hist even when the key
 *   was written with a larger max_hist; members not of three parts are
 *   skipped;
 * - timestamps travel as Redis scores (doubles): exact up to 2^53 ms;
 * - every TTL must be >= 1 s (docs/service.md: every key but the
 *   unavailable set expires); an item or user event without fields writes
 *   nothing (HSET needs a field) and so refreshes no TTL;
 * - fs_unavailable also reconnects a broken store; SSCAN may report an
 *   item twice while the set changes, never misses one present throughout. */
#include "features/fs.h"

#include <ctype.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/err.h"

#define SEP '\x1f'           /* between the parts of a history member */
#define SEP_STR "\x1f"
#define SCAN_COUNT "1000"    /* SSCAN page size hint */
#define ERRMSG_MAX 200       /* bytes of a server error kept for the message */
#define KEY_SHOWN 80         /* bytes of a key shown in a message */

struct fs_store {
    redisContext *c;         /* NULL while broken: the next call reconnects */
    char *host, *password, *prefix, *unavail_key;
    size_t prefix_len, unavail_len;
    int port, db, timeout_ms, max_hist;
    int ttl_history_s, ttl_seen_s, ttl_item_s, ttl_user_s;
    char addr[280];          /* "host:port", the place in every message */
};

/* ---- connection ----------------------------------------------------------- */

static void conn_drop(fs_store *s)
{
    if (s->c) {
        redisFree(s->c);
        s->c = NULL;
    }
}

/* Reports why the last hiredis call on s->c failed, then drops the
 * connection. `e` is errno right after that call: a timeout shows only
 * there (EAGAIN). */
static int conn_fail(fs_store *s, int e, const char *during, char *err, size_t errsz)
{
    char msg[160];
    if (!s->c)
        snprintf(msg, sizeof msg, "out of memory");
    else if (s->c->err == REDIS_ERR_IO && (e == EAGAIN || e == EWOULDBLOCK))
        snprintf(msg, sizeof msg, "timed out after %d ms", s->timeout_ms);
    else
        snprintf(msg, sizeof msg, "%s", s->c->errstr[0] ? s->c->errstr : "connection lost");
    msg[0] = (char)tolower((unsigned char)msg[0]); /* hiredis says "Connection refused" */
    conn_drop(s);
    return cm_errf(err, errsz, "redis %s: %s%s", s->addr, msg, during);
}

/* One command, waiting for its reply. Returns the reply (the caller frees
 * it), or NULL with err: a failed connection is dropped; an error reply
 * leaves the connection as it is. */
static redisReply *conn_call(fs_store *s, int argc, const char **argv, const size_t *lens,
                             const char *shown, char *err, size_t errsz)
{
    redisReply *r = redisCommandArgv(s->c, argc, argv, lens);
    if (!r) {
        int e = errno;
        char during[64];
        snprintf(during, sizeof during, " (%s)", shown);
        conn_fail(s, e, during, err, errsz);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        cm_errf(err, errsz, "redis %s: %s: %.*s", s->addr, shown, (int)r->len, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Connects, AUTHs, SELECTs and PINGs, so that a wrong password or database
 * shows at fs_open rather than in the first batch. */
static int conn_open(fs_store *s, char *err, size_t errsz)
{
    struct timeval tv = {s->timeout_ms / 1000, (s->timeout_ms % 1000) * 1000};
    s->c = redisConnectWithTimeout(s->host, s->port, tv);
    if (!s->c || s->c->err)
        return conn_fail(s, errno, "", err, errsz);
    if (redisSetTimeout(s->c, tv) != REDIS_OK || redisEnableKeepAlive(s->c) != REDIS_OK)
        return conn_fail(s, errno, "", err, errsz);
    char db[16], select[32];
    snprintf(db, sizeof db, "%d", s->db);
    snprintf(select, sizeof select, "SELECT %d", s->db);
    struct {
        int argc;
        const char *argv[2], *shown;
        int skip;
    } steps[] = {
        {2, {"AUTH", s->password}, "AUTH", !s->password[0]},
        {2, {"SELECT", db}, select, s->db == 0},
        {1, {"PING", NULL}, "PING", 0},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        if (steps[i].skip)
            continue;
        redisReply *r = conn_call(s, steps[i].argc, steps[i].argv, NULL, steps[i].shown, err, errsz);
        if (!r) {
            conn_drop(s);
            return -1;
        }
        freeReplyObject(r);
    }
    return 0;
}

/* One reconnection attempt when the connection is broken. */
static int conn_ensure(fs_store *s, char *err, size_t errsz)
{
    return s->c ? 0 : conn_open(s, err, errsz);
}

static int opts_check(const fs_opts *o, char *err, size_t errsz)
{
    if (!o->host || !o->host[0])
        return cm_errf(err, errsz, "features: redis host is empty");
    if (o->port < 1 || o->port > 65535)
        return cm_errf(err, errsz, "features: redis port %d: expected 1..65535", o->port);
    if (o->db < 0)
        return cm_errf(err, errsz, "features: redis db %d: expected >= 0", o->db);
    if (!o->prefix)
        return cm_errf(err, errsz, "features: redis prefix is NULL (\"\" for none)");
    if (o->timeout_ms < 1)
        return cm_errf(err, errsz, "features: redis timeout %d ms: expected >= 1", o->timeout_ms);
    if (o->max_hist < 1)
        return cm_errf(err, errsz, "features: max_hist %d: expected >= 1", o->max_hist);
    /* Every key carries a TTL (docs/service.md): that bounds Redis memory. */
    const struct {
        const char *name;
        int v;
    } ttl[] = {{"history", o->ttl_history_s}, {"seen", o->ttl_seen_s},
               {"item", o->ttl_item_s}, {"user", o->ttl_user_s}};
    for (size_t i = 0; i < sizeof ttl / sizeof ttl[0]; i++)
        if (ttl[i].v < 1)
            return cm_errf(err, errsz, "features: ttl of %s keys %d s: expected >= 1", ttl[i].name,
                           ttl[i].v);
    return 0;
}

static char *dup_str(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *p = malloc(na + nb + 1);
    if (p) {
        memcpy(p, a, na);
        memcpy(p + na, b, nb + 1);
    }
    return p;
}

int fs_open(fs_store **out, const fs_opts *o, char *err, size_t errsz)
{
    *out = NULL;
    if (opts_check(o, err, errsz))
        return -1;
    fs_store *s = calloc(1, sizeof *s);
    if (!s)
        return cm_errf(err, errsz, "features: out of memory");
    s->host = dup_str(o->host, "");
    s->password = dup_str(o->password ? o->password : "", "");
    s->prefix = dup_str(o->prefix, "");
    s->unavail_key = dup_str(o->prefix, "unavailable");
    if (!s->host || !s->password || !s->prefix || !s->unavail_key) {
        fs_close(s);
        return cm_errf(err, errsz, "features: out of memory");
    }
    s->prefix_len = strlen(s->prefix);
    s->unavail_len = strlen(s->unavail_key);
    s->port = o->port;
    s->db = o->db;
    s->timeout_ms = o->timeout_ms;
    s->max_hist = o->max_hist;
    s->ttl_history_s = o->ttl_history_s;
    s->ttl_seen_s = o->ttl_seen_s;
    s->ttl_item_s = o->ttl_item_s;
    s->ttl_user_s = o->ttl_user_s;
    snprintf(s->addr, sizeof s->addr, "%.255s:%d", s->host, s->port);
    if (conn_open(s, err, errsz)) {
        fs_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void fs_close(fs_store *s)
{
    if (!s)
        return;
    conn_drop(s);
    free(s->host);
    free(s->password);
    free(s->prefix);
    free(s->unavail_key);
    free(s);
}

int fs_ping(fs_store *s, char *err, size_t errsz)
{
    if (conn_ensure(s, err, errsz))
        return -1;
    const char *argv[1] = {"PING"};
    redisReply *r = conn_call(s, 1, argv, NULL, "PING", err, errsz);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

/* ---- batches ---------------------------------------------------------------- */

typedef struct fs_arg {
    size_t off, len;         /* bytes in b->buf */
} fs_arg;

typedef struct fs_cmd {
    int arg0, argc;          /* b->args[arg0 .. arg0 + argc) */
    int slot;                /* -1, or 2*read (ZRANGE) / 2*read + 1 (SMEMBERS) */
} fs_cmd;

typedef struct fs_read {
    redisReply *reply[2];    /* ZRANGE, SMEMBERS: kept until reset/exec */
    int n_hist, items0, actions0, ts0; /* results in b->strs and b->ts */
    int n_seen, seen0;
} fs_read;

struct fs_batch {
    fs_store *s;
    int max_ops, n_ops, n_reads;
    int oom;                 /* set by a failed append; the op is rolled back */
    int done;                /* results of the last exec are readable */
    char *buf;               /* queued argument bytes */
    size_t len, buf_cap;
    fs_arg *args;
    size_t n_args, args_cap;
    fs_cmd *cmds;
    size_t n_cmds, cmds_cap;
    fs_read *reads;          /* [max_ops] */
    const char **argv;       /* exec scratch: one command's arguments */
    size_t *argvlen;
    size_t argv_cap, argvlen_cap;
    const char **strs;       /* result pointers into the kept replies */
    size_t strs_cap;
    int64_t *ts;
    size_t ts_cap;
};

/* Grows an array to hold `need` (> *cap) elements; NULL (p untouched) on
 * failure. */
static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(p, n * elem);
    if (q)
        *cap = n;
    return q;
}

#define GROW(b, arr, cap, need)                                              \
    do {                                                                     \
        if ((need) > (b)->cap) {                                             \
            void *q_ = grow((b)->arr, &(b)->cap, (need), sizeof *(b)->arr);  \
            if (q_)                                                          \
                (b)->arr = q_;                                               \
            else                                                             \
                (b)->oom = 1;                                                \
        }                                                                    \
    } while (0)

/* Commands (5 per interaction at most) and argument bytes are reserved up
 * front for a round of max_ops small ops; larger rounds grow them once. */
fs_batch *fs_batch_new(fs_store *s, int max_ops)
{
    if (!s || max_ops < 1)
        return NULL;
    fs_batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->s = s;
    b->max_ops = max_ops;
    b->reads = calloc((size_t)max_ops, sizeof *b->reads);
    size_t ops = (size_t)max_ops;
    GROW(b, cmds, cmds_cap, 5 * ops);
    GROW(b, args, args_cap, 16 * ops);
    GROW(b, buf, buf_cap, 128 * ops);
    GROW(b, argv, argv_cap, 8);
    GROW(b, argvlen, argvlen_cap, 8);
    if (!b->reads || b->oom) {
        fs_batch_free(b);
        return NULL;
    }
    return b;
}

static void results_release(fs_batch *b)
{
    for (int i = 0; i < b->n_reads; i++)
        for (int k = 0; k < 2; k++)
            if (b->reads[i].reply[k]) {
                freeReplyObject(b->reads[i].reply[k]);
                b->reads[i].reply[k] = NULL;
            }
    b->done = 0;
}

void fs_batch_free(fs_batch *b)
{
    if (!b)
        return;
    if (b->reads)
        results_release(b);
    free(b->buf);
    free(b->args);
    free(b->cmds);
    free(b->reads);
    free(b->argv);
    free(b->argvlen);
    free(b->strs);
    free(b->ts);
    free(b);
}

void fs_batch_reset(fs_batch *b)
{
    results_release(b);
    b->n_ops = b->n_reads = 0;
    b->n_cmds = b->n_args = b->len = 0;
    b->oom = 0;
}

/* ---- queueing: every helper is a no-op once b->oom is set ------------------ */

typedef struct fs_mark {
    size_t n_cmds, n_args, len;
} fs_mark;

static int op_begin(fs_batch *b, fs_mark *m)
{
    if (b->n_ops >= b->max_ops)
        return -1;
    *m = (fs_mark){b->n_cmds, b->n_args, b->len};
    b->oom = 0;
    return 0;
}

/* Keeps the op, or rolls back everything it queued when memory ran out. */
static int op_end(fs_batch *b, const fs_mark *m)
{
    if (b->oom) {
        b->n_cmds = m->n_cmds;
        b->n_args = m->n_args;
        b->len = m->len;
        b->oom = 0;
        return -1;
    }
    b->n_ops++;
    return 0;
}

static void cmd_new(fs_batch *b, int slot)
{
    GROW(b, cmds, cmds_cap, b->n_cmds + 1);
    if (!b->oom)
        b->cmds[b->n_cmds++] = (fs_cmd){(int)b->n_args, 0, slot};
}

static void arg_new(fs_batch *b)
{
    GROW(b, args, args_cap, b->n_args + 1);
    if (b->oom)
        return;
    b->args[b->n_args++] = (fs_arg){b->len, 0};
    b->cmds[b->n_cmds - 1].argc++;
}

/* Appends bytes to the argument begun last. */
static void put(fs_batch *b, const char *p, size_t n)
{
    GROW(b, buf, buf_cap, b->len + n);
    if (b->oom)
        return;
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    b->args[b->n_args - 1].len += n;
}

static void arg_str(fs_batch *b, const char *p)
{
    arg_new(b);
    put(b, p, strlen(p));
}

static void arg_int(fs_batch *b, long long v)
{
    char num[24];
    snprintf(num, sizeof num, "%lld", v);
    arg_str(b, num);
}

/* `<prefix><tag><id>` */
static void arg_key(fs_batch *b, const char *tag, const char *id)
{
    arg_new(b);
    put(b, b->s->prefix, b->s->prefix_len);
    put(b, tag, strlen(tag));
    put(b, id, strlen(id));
}

static void cmd_expire(fs_batch *b, const char *tag, const char *id, int ttl_s)
{
    cmd_new(b, -1);
    arg_str(b, "EXPIRE");
    arg_key(b, tag, id);
    arg_int(b, ttl_s);
}

static int has_sep(const char *id)
{
    return strchr(id, SEP) != NULL;
}

int fs_batch_interaction(fs_batch *b, const char *event_id, int64_t ts, const char *user,
                         const char *item, const char *action)
{
    fs_mark m;
    if (!event_id || !user || !item || !action || has_sep(event_id) || has_sep(item) ||
        has_sep(action) || op_begin(b, &m))
        return -1;
    const fs_store *s = b->s;
    cmd_new(b, -1);
    arg_str(b, "ZADD");
    arg_key(b, "h:", user);
    arg_int(b, (long long)ts);
    arg_new(b);
    put(b, event_id, strlen(event_id));
    put(b, SEP_STR, 1);
    put(b, item, strlen(item));
    put(b, SEP_STR, 1);
    put(b, action, strlen(action));
    /* Keep the newest max_hist: ranks 0 .. -(max_hist + 1) are the older. */
    cmd_new(b, -1);
    arg_str(b, "ZREMRANGEBYRANK");
    arg_key(b, "h:", user);
    arg_int(b, 0);
    arg_int(b, -(long long)s->max_hist - 1);
    cmd_expire(b, "h:", user, s->ttl_history_s);
    cmd_new(b, -1);
    arg_str(b, "SADD");
    arg_key(b, "s:", user);
    arg_str(b, item);
    cmd_expire(b, "s:", user, s->ttl_seen_s);
    return op_end(b, &m);
}

/* HSET key name value ... then EXPIRE; nothing when there are no fields. */
static void cmd_fields(fs_batch *b, const char *tag, const char *id, const char *const *names,
                       const char *const *values, int n_fields, int ttl_s)
{
    if (n_fields == 0)
        return;
    cmd_new(b, -1);
    arg_str(b, "HSET");
    arg_key(b, tag, id);
    for (int i = 0; i < n_fields; i++) {
        arg_str(b, names[i]);
        arg_str(b, values[i]);
    }
    cmd_expire(b, tag, id, ttl_s);
}

static int fields_ok(const char *const *names, const char *const *values, int n_fields)
{
    if (n_fields < 0 || (n_fields > 0 && (!names || !values)))
        return 0;
    for (int i = 0; i < n_fields; i++)
        if (!names[i] || !values[i])
            return 0;
    return 1;
}

int fs_batch_item(fs_batch *b, const char *item, int available, const char *const *names,
                  const char *const *values, int n_fields)
{
    fs_mark m;
    if (!item || available < -1 || available > 1 || !fields_ok(names, values, n_fields) ||
        op_begin(b, &m))
        return -1;
    cmd_fields(b, "i:", item, names, values, n_fields, b->s->ttl_item_s);
    if (available >= 0) {
        cmd_new(b, -1);
        arg_str(b, available ? "SREM" : "SADD");
        arg_new(b);
        put(b, b->s->unavail_key, b->s->unavail_len);
        arg_str(b, item);
    }
    return op_end(b, &m);
}

int fs_batch_user(fs_batch *b, const char *user, const char *const *names,
                  const char *const *values, int n_fields)
{
    fs_mark m;
    if (!user || !fields_ok(names, values, n_fields) || op_begin(b, &m))
        return -1;
    cmd_fields(b, "u:", user, names, values, n_fields, b->s->ttl_user_s);
    return op_end(b, &m);
}

/* ZRANGE h -max_hist -1: the newest max_hist, oldest first, even when the
 * key was written with a larger max_hist. */
int fs_batch_read_user(fs_batch *b, const char *user)
{
    fs_mark m;
    if (!user || op_begin(b, &m))
        return -1;
    int h = b->n_reads;
    cmd_new(b, 2 * h);
    arg_str(b, "ZRANGE");
    arg_key(b, "h:", user);
    arg_int(b, -(long long)b->s->max_hist);
    arg_int(b, -1);
    arg_str(b, "WITHSCORES");
    cmd_new(b, 2 * h + 1);
    arg_str(b, "SMEMBERS");
    arg_key(b, "s:", user);
    if (op_end(b, &m))
        return -1;
    b->reads[h] = (fs_read){{NULL, NULL}, 0, 0, 0, 0, 0, 0};
    b->n_reads++;
    return h;
}

/* ---- exec --------------------------------------------------------------------- */

/* "ZADD rankd:h:u1" for messages; control bytes of ids shown as '?'. */
static void cmd_describe(const fs_batch *b, const fs_cmd *c, char *out, size_t outsz)
{
    const fs_arg *a = &b->args[c->arg0];
    size_t n = 0;
    for (int k = 0; k < 2 && k < c->argc; k++) {
        size_t len = a[k].len < KEY_SHOWN ? a[k].len : KEY_SHOWN;
        if (k && n + 1 < outsz)
            out[n++] = ' ';
        for (size_t i = 0; i < len && n + 1 < outsz; i++) {
            unsigned char ch = (unsigned char)b->buf[a[k].off + i];
            out[n++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        }
    }
    out[n] = '\0';
}

/* Hands every queued command to hiredis (nothing is sent yet). */
static int append_all(fs_batch *b, char *err, size_t errsz)
{
    fs_store *s = b->s;
    for (size_t i = 0; i < b->n_cmds; i++) {
        const fs_cmd *c = &b->cmds[i];
        GROW(b, argv, argv_cap, (size_t)c->argc);
        GROW(b, argvlen, argvlen_cap, (size_t)c->argc);
        if (b->oom) {
            b->oom = 0;
            conn_drop(s); /* part of the pipeline may already be buffered */
            return cm_errf(err, errsz, "redis %s: out of memory", s->addr);
        }
        for (int k = 0; k < c->argc; k++) {
            b->argv[k] = b->buf + b->args[c->arg0 + k].off;
            b->argvlen[k] = b->args[c->arg0 + k].len;
        }
        if (redisAppendCommandArgv(s->c, c->argc, b->argv, b->argvlen) != REDIS_OK)
            return conn_fail(s, errno, " (queueing the pipeline)", err, errsz);
    }
    return 0;
}

/* Reads one reply per command. Keeps the replies of reads; remembers the
 * first error reply and reads on, so that the connection stays in step. */
static int drain(fs_batch *b, char *err, size_t errsz)
{
    fs_store *s = b->s;
    long bad = -1;
    char msg[ERRMSG_MAX + 1] = "";
    for (size_t i = 0; i < b->n_cmds; i++) {
        void *v = NULL;
        if (redisGetReply(s->c, &v) != REDIS_OK || !v) {
            int e = errno;
            char during[64];
            snprintf(during, sizeof during, " (reply %zu of %zu)", i + 1, b->n_cmds);
            return conn_fail(s, e, during, err, errsz);
        }
        redisReply *r = v;
        if (r->type == REDIS_REPLY_ERROR && bad < 0) {
            bad = (long)i;
            snprintf(msg, sizeof msg, "%.*s", (int)(r->len < ERRMSG_MAX ? r->len : ERRMSG_MAX),
                     r->str);
        }
        int slot = b->cmds[i].slot;
        if (slot >= 0 && r->type != REDIS_REPLY_ERROR)
            b->reads[slot / 2].reply[slot % 2] = r;
        else
            freeReplyObject(r);
    }
    if (bad >= 0) {
        char what[2 * KEY_SHOWN + 2];
        cmd_describe(b, &b->cmds[bad], what, sizeof what);
        return cm_errf(err, errsz, "redis %s: %s: %s", s->addr, what, msg);
    }
    return 0;
}

static int is_str_array(const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type != REDIS_REPLY_STRING)
            return 0;
    return 1;
}

/* Splits `<event id>\x1f<item>\x1f<action>` in place; 0 when malformed. */
static int member_split(char *p, size_t len, const char **item, const char **action)
{
    char *a = memchr(p, SEP, len);
    char *c = a ? memchr(a + 1, SEP, len - (size_t)(a + 1 - p)) : NULL;
    if (!c || memchr(c + 1, SEP, len - (size_t)(c + 1 - p)))
        return 0;
    *a = *c = '\0';
    *item = a + 1;
    *action = c + 1;
    return 1;
}

static int score_parse(const char *p, int64_t *ts)
{
    char *end;
    errno = 0;
    double d = strtod(p, &end);
    if (errno || end == p || *end || !(d >= -9.2e18 && d <= 9.2e18))
        return 0;
    *ts = (int64_t)d;
    return 1;
}

/* Points the results of every read into the kept replies. */
static int results_build(fs_batch *b, char *err, size_t errsz)
{
    size_t n_strs = 0, n_ts = 0;
    for (int i = 0; i < b->n_reads; i++) {
        const redisReply *z = b->reads[i].reply[0], *m = b->reads[i].reply[1];
        if (!is_str_array(z) || z->elements % 2 || !is_str_array(m))
            return cm_errf(err, errsz, "redis %s: unexpected reply to ZRANGE/SMEMBERS of read %d",
                           b->s->addr, i);
        n_strs += z->elements + m->elements;
        n_ts += z->elements / 2;
    }
    GROW(b, strs, strs_cap, n_strs);
    GROW(b, ts, ts_cap, n_ts);
    if (b->oom) {
        b->oom = 0;
        return cm_errf(err, errsz, "redis %s: out of memory for the replies", b->s->addr);
    }
    size_t ns = 0, nt = 0;
    for (int i = 0; i < b->n_reads; i++) {
        fs_read *rd = &b->reads[i];
        const redisReply *z = rd->reply[0], *m = rd->reply[1];
        size_t pairs = z->elements / 2;
        rd->items0 = (int)ns;
        rd->actions0 = (int)(ns + pairs);
        rd->ts0 = (int)nt;
        rd->n_hist = 0;
        for (size_t k = 0; k < pairs; k++) {
            const redisReply *mem = z->element[2 * k], *sc = z->element[2 * k + 1];
            const char *item, *action;
            int64_t t;
            if (!member_split(mem->str, mem->len, &item, &action) || !score_parse(sc->str, &t))
                continue; /* not written by fs_batch_interaction */
            b->strs[rd->items0 + rd->n_hist] = item;
            b->strs[rd->actions0 + rd->n_hist] = action;
            b->ts[rd->ts0 + rd->n_hist] = t;
            rd->n_hist++;
        }
        ns += 2 * pairs;
        nt += pairs;
        rd->seen0 = (int)ns;
        rd->n_seen = (int)m->elements;
        for (size_t k = 0; k < m->elements; k++)
            b->strs[ns++] = m->element[k]->str;
    }
    return 0;
}

int fs_batch_exec(fs_batch *b, char *err, size_t errsz)
{
    results_release(b);
    if (b->n_cmds == 0) {
        b->done = 1;
        return 0;
    }
    if (conn_ensure(b->s, err, errsz) || append_all(b, err, errsz) || drain(b, err, errsz) ||
        results_build(b, err, errsz)) {
        results_release(b);
        return -1;
    }
    b->done = 1;
    return 0;
}

void fs_batch_user_state(const fs_batch *b, int handle, fs_user_state *out)
{
    *out = (fs_user_state){0, NULL, NULL, NULL, 0, NULL};
    if (!b->done || handle < 0 || handle >= b->n_reads)
        return;
    const fs_read *rd = &b->reads[handle];
    out->n_hist = rd->n_hist;
    out->hist_items = b->strs + rd->items0;
    out->hist_actions = b->strs + rd->actions0;
    out->hist_ts = b->ts + rd->ts0;
    out->n_seen = rd->n_seen;
    out->seen = b->strs + rd->seen0;
}

/* ---- the unavailable items ------------------------------------------------------ */

int fs_unavailable(fs_store *s, void (*fn)(void *ctx, const char *item), void *ctx, char *err,
                   size_t errsz)
{
    if (!fn)
        return cm_errf(err, errsz, "fs_unavailable: fn is NULL");
    if (conn_ensure(s, err, errsz))
        return -1;
    char cursor[32] = "0";
    do {
        const char *argv[5] = {"SSCAN", s->unavail_key, cursor, "COUNT", SCAN_COUNT};
        size_t lens[5] = {5, s->unavail_len, strlen(cursor), 5, strlen(SCAN_COUNT)};
        redisReply *r = conn_call(s, 5, argv, lens, "SSCAN", err, errsz);
        if (!r)
            return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= sizeof cursor ||
            !is_str_array(r->element[1])) {
            freeReplyObject(r);
            return cm_errf(err, errsz, "redis %s: SSCAN %s: unexpected reply", s->addr,
                           s->unavail_key);
        }
        memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
        const redisReply *page = r->element[1];
        for (size_t i = 0; i < page->elements; i++)
            fn(ctx, page->element[i]->str);
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

/* ---- every user with a history ------------------------------------------------------ */

/* `<prefix>h:*` with the prefix's glob characters escaped, so that a
 * prefix such as "a*" matches only itself. */
static char *history_pattern(const fs_store *s)
{
    char *p = malloc(2 * s->prefix_len + 4), *o = p;
    if (!p)
        return NULL;
    for (size_t i = 0; i < s->prefix_len; i++) {
        if (strchr("*?[]\\", s->prefix[i]))
            *o++ = '\\';
        *o++ = s->prefix[i];
    }
    memcpy(o, "h:*", 4);
    return p;
}

int fs_scan_users(fs_store *s, char cursor[FS_CURSOR_MAX], int count,
                  void (*fn)(void *ctx, const char *user, size_t len), void *ctx, char *err,
                  size_t errsz)
{
    if (!fn || count < 1)
        return cm_errf(err, errsz, "fs_scan_users: fn is NULL or count %d < 1", count);
    if (conn_ensure(s, err, errsz))
        return -1;
    char *pat = history_pattern(s), num[16];
    if (!pat)
        return cm_errf(err, errsz, "out of memory");
    snprintf(num, sizeof num, "%d", count);
    const char *argv[6] = {"SCAN", cursor, "MATCH", pat, "COUNT", num};
    size_t lens[6] = {4, strlen(cursor), 5, strlen(pat), 5, strlen(num)};
    redisReply *r = conn_call(s, 6, argv, lens, "SCAN", err, errsz);
    free(pat);
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[0]->len >= FS_CURSOR_MAX || !is_str_array(r->element[1])) {
        freeReplyObject(r);
        return cm_errf(err, errsz, "redis %s: SCAN %s: unexpected reply", s->addr, cursor);
    }
    const size_t skip = s->prefix_len + 2;
    const redisReply *page = r->element[1];
    for (size_t i = 0; i < page->elements; i++)
        if (page->element[i]->len > skip) /* MATCH makes it so; a user id is never empty */
            fn(ctx, page->element[i]->str + skip, page->element[i]->len - skip);
    memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
    freeReplyObject(r);
    return 0;
}
