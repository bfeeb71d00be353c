/* tests/check_features.c — the feature store (features/fs.h) against a real
 * redis-server: one per test (tests/harness_redis.h), started by a checked
 * fixture in the test's own process, so tests share nothing. What the store
 * wrote is checked through a second, plain hiredis connection. */
#include <check.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "features/fs.h"
#include "tests/harness_redis.h"

#define TTL_HIST 3600
#define TTL_SEEN 7200
#define TTL_ITEM 86400
#define TTL_USER 600

static th_redis R; /* this test's server; each test runs in a process of its own */

static void setup_plain(void)
{
    th_redis_start(&R, NULL);
}

static void setup_auth(void)
{
    th_redis_start(&R, "s3cret pass:ü");
}

static void teardown(void)
{
    th_redis_stop(&R);
}

static fs_opts opts_for(int max_hist)
{
    return (fs_opts){.host = "127.0.0.1", .port = R.port, .password = R.password, .db = 0,
                     .prefix = "t:", .ttl_history_s = TTL_HIST, .ttl_seen_s = TTL_SEEN,
                     .ttl_item_s = TTL_ITEM, .ttl_user_s = TTL_USER, .timeout_ms = 2000,
                     .max_hist = max_hist};
}

static fs_store *open_store(const fs_opts *o)
{
    char err[CM_ERRSZ] = "";
    fs_store *s = NULL;
    ck_assert_msg(fs_open(&s, o, err, sizeof err) == 0, "fs_open: %s", err);
    return s;
}

static fs_batch *new_batch(fs_store *s, int max_ops)
{
    fs_batch *b = fs_batch_new(s, max_ops);
    ck_assert_ptr_nonnull(b);
    return b;
}

static void exec_ok(fs_batch *b)
{
    char err[CM_ERRSZ] = "";
    ck_assert_msg(fs_batch_exec(b, err, sizeof err) == 0, "fs_batch_exec: %s", err);
}

static void interaction_ok(fs_batch *b, const char *id, int64_t ts, const char *user,
                           const char *item, const char *action)
{
    ck_assert_msg(fs_batch_interaction(b, id, ts, user, item, action) == 0,
                  "fs_batch_interaction %s", id);
}

/* A command on the plain connection; the caller frees the reply. */
__attribute__((format(printf, 2, 3)))
static redisReply *cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    ck_assert_msg(r != NULL, "%s: %s", fmt, c->errstr);
    ck_assert_msg(r->type != REDIS_REPLY_ERROR, "%s: %s", fmt, r->str);
    return r;
}

static long long cmd_int(redisContext *c, const char *key, const char *verb)
{
    redisReply *r = cmd(c, "%s %s", verb, key);
    ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* The number after `prefix` at the start of an INFO line, e.g.
 * "total_connections_received:" or "cmdstat_sscan:calls="; 0 when no line
 * has it (a command never called). */
static long long info_field(redisContext *c, const char *prefix)
{
    redisReply *r = cmd(c, "INFO everything");
    char key[96];
    snprintf(key, sizeof key, "\n%s", prefix);
    const char *p = strstr(r->str, key);
    long long v = p ? atoll(p + strlen(key)) : 0;
    freeReplyObject(r);
    return v;
}

static long long unavailable_has(redisContext *c, const char *item)
{
    redisReply *r = cmd(c, "SISMEMBER t:unavailable %s", item);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static void print_history(const char *what, const fs_user_state *st)
{
    printf("%s: history %d [", what, st->n_hist);
    for (int i = 0; i < st->n_hist; i++)
        printf("%s(%s %s @%lld)", i ? " " : "", st->hist_items[i], st->hist_actions[i],
               (long long)st->hist_ts[i]);
    printf("], seen %d\n", st->n_seen);
}

static int seen_has(const fs_user_state *st, const char *item)
{
    for (int i = 0; i < st->n_seen; i++)
        if (strcmp(st->seen[i], item) == 0)
            return 1;
    return 0;
}

/* ---- a snapshot of every key under a prefix, for replay comparisons ---------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

__attribute__((format(printf, 2, 3)))
static void sb_printf(sbuf *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (s->n + (size_t)n + 1 > s->cap) {
        s->cap = (s->n + (size_t)n + 1) * 2;
        s->p = realloc(s->p, s->cap);
        ck_assert_ptr_nonnull(s->p);
    }
    va_start(ap, fmt);
    vsnprintf(s->p + s->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    s->n += (size_t)n;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The strings of an array reply, sorted (pairs stay together when
 * `pairs`: HGETALL); appended to s. */
static void sb_sorted(sbuf *s, const redisReply *r, int pairs)
{
    size_t n = r->elements;
    char **v = calloc(n + 1, sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < n; i += pairs ? 2 : 1) {
        sbuf e = {0};
        sb_printf(&e, "%s", r->element[i]->str);
        if (pairs)
            sb_printf(&e, "=%s", r->element[i + 1]->str);
        v[i] = e.p;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i])
            v[m++] = v[i];
    qsort(v, m, sizeof *v, cmp_str);
    for (size_t i = 0; i < m; i++) {
        sb_printf(s, "%s%s", i ? "," : "", v[i]);
        free(v[i]);
    }
    free(v);
}

/* Every key under t:, its type and contents, sorted; asserts each key's
 * TTL: set on every key but t:unavailable (none, by design). */
static char *snapshot(redisContext *c, int *n_keys)
{
    redisReply *keys = cmd(c, "KEYS t:*");
    sbuf s = {0};
    sb_sorted(&s, keys, 0);
    char *list = s.p;
    s = (sbuf){0};
    *n_keys = (int)keys->elements;
    for (char *k = strtok(list, ","); k; k = strtok(NULL, ",")) {
        redisReply *t = cmd(c, "TYPE %s", k), *v;
        long long ttl = cmd_int(c, k, "TTL");
        if (strcmp(k, "t:unavailable") == 0)
            ck_assert_msg(ttl == -1, "%s: TTL %lld, expected none", k, ttl);
        else
            ck_assert_msg(ttl > 0, "%s: TTL %lld, expected > 0", k, ttl);
        sb_printf(&s, "%s %s {", k, t->str);
        if (strcmp(t->str, "zset") == 0) {
            v = cmd(c, "ZRANGE %s 0 -1 WITHSCORES", k);
            for (size_t i = 0; i < v->elements; i++) { /* order matters: unsorted */
                char *p = v->element[i]->str, *sep;
                while ((sep = strchr(p, '\x1f'))) /* readable; no test id holds '|' */
                    *sep = '|';
                sb_printf(&s, "%s%s", i ? "," : "", v->element[i]->str);
            }
        } else if (strcmp(t->str, "set") == 0) {
            v = cmd(c, "SMEMBERS %s", k);
            sb_sorted(&s, v, 0);
        } else {
            v = cmd(c, "HGETALL %s", k);
            sb_sorted(&s, v, 1);
        }
        sb_printf(&s, "}\n");
        freeReplyObject(v);
        freeReplyObject(t);
    }
    free(list);
    freeReplyObject(keys);
    return s.p;
}

/* ---- tests --------------------------------------------------------------------- */

/* Redis runs the pipeline in order: a read queued after a write sees it,
 * one queued before does not. */
START_TEST(test_read_your_writes)
{
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 8);
    int before = fs_batch_read_user(b, "u1");
    interaction_ok(b, "e1", 1700000000123, "u1", "i9", "click");
    int after = fs_batch_read_user(b, "u1");
    ck_assert_int_ge(before, 0);
    ck_assert_int_ge(after, 0);
    exec_ok(b);
    fs_user_state st;
    fs_batch_user_state(b, before, &st);
    print_history("read before the write", &st);
    ck_assert_int_eq(st.n_hist, 0);
    ck_assert_int_eq(st.n_seen, 0);
    fs_batch_user_state(b, after, &st);
    print_history("read after the write ", &st);
    ck_assert_int_eq(st.n_hist, 1);
    ck_assert_str_eq(st.hist_items[0], "i9");
    ck_assert_str_eq(st.hist_actions[0], "click");
    ck_assert_int_eq(st.hist_ts[0], 1700000000123);
    ck_assert_int_eq(st.n_seen, 1);
    ck_assert_str_eq(st.seen[0], "i9");
    fs_batch_user_state(b, 99, &st); /* no such handle: empty */
    ck_assert_int_eq(st.n_hist + st.n_seen, 0);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

/* Oldest first by timestamp whatever the arrival order; the newest
 * max_hist kept; ties ordered by event id. */
START_TEST(test_history_order_and_trim)
{
    fs_opts o = opts_for(5);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 16);
    const int64_t ts[8] = {5000, 1000, 3000, 2000, 4000, 7000, 6000, 8000};
    char id[16], item[16];
    for (int i = 0; i < 8; i++) {
        snprintf(id, sizeof id, "e%d", i);
        snprintf(item, sizeof item, "i%d", (int)(ts[i] / 1000));
        interaction_ok(b, id, ts[i], "u1", item, i % 2 ? "view" : "click");
    }
    int h = fs_batch_read_user(b, "u1");
    exec_ok(b);
    fs_user_state st;
    fs_batch_user_state(b, h, &st);
    print_history("8 events, max_hist 5", &st);
    ck_assert_int_eq(st.n_hist, 5);
    for (int i = 0; i < 5; i++) {
        snprintf(item, sizeof item, "i%d", i + 4);
        ck_assert_int_eq(st.hist_ts[i], (i + 4) * 1000);
        ck_assert_str_eq(st.hist_items[i], item);
    }
    ck_assert_int_eq(st.n_seen, 8); /* the seen set is not trimmed */

    /* Second round on the same batch: an event older than the kept ones is
     * trimmed at once; a tie at 8000 sorts by member (e7 < e8). */
    fs_batch_reset(b);
    interaction_ok(b, "e9", 500, "u1", "old", "click");
    interaction_ok(b, "e8", 8000, "u1", "tie", "click");
    h = fs_batch_read_user(b, "u1");
    exec_ok(b);
    fs_batch_user_state(b, h, &st);
    print_history("+ an older event and a tie", &st);
    ck_assert_int_eq(st.n_hist, 5);
    ck_assert_int_eq(st.hist_ts[0], 5000);
    ck_assert_str_eq(st.hist_items[3], "i8");
    ck_assert_str_eq(st.hist_items[4], "tie");
    ck_assert_int_eq(st.n_seen, 10);
    redisContext *c = th_redis_connect(&R);
    ck_assert_int_eq(cmd_int(c, "t:h:u1", "ZCARD"), 5);

    /* A store with a smaller max_hist reads only the newest 3 of the 5. */
    fs_opts o3 = opts_for(3);
    fs_store *s3 = open_store(&o3);
    fs_batch *b3 = new_batch(s3, 1);
    h = fs_batch_read_user(b3, "u1");
    exec_ok(b3);
    fs_batch_user_state(b3, h, &st);
    print_history("read with max_hist 3", &st);
    ck_assert_int_eq(st.n_hist, 3);
    ck_assert_int_eq(st.hist_ts[0], 7000);
    /* A member not written by the store (not 3 parts) is skipped. */
    freeReplyObject(cmd(c, "ZADD t:h:u1 9000 %s", "junk-without-separators"));
    exec_ok(b3);
    fs_batch_user_state(b3, h, &st);
    print_history("with a malformed member", &st);
    ck_assert_int_eq(st.n_hist, 2);
    ck_assert_str_eq(st.hist_items[1], "tie");
    redisFree(c);
    fs_batch_free(b3);
    fs_close(s3);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

START_TEST(test_seen_set)
{
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 16);
    interaction_ok(b, "e1", 1, "u1", "a", "click");
    interaction_ok(b, "e2", 2, "u1", "b", "view");
    interaction_ok(b, "e3", 3, "u1", "a", "purchase");
    interaction_ok(b, "e4", 4, "u2", "c", "click");
    int h1 = fs_batch_read_user(b, "u1"), h2 = fs_batch_read_user(b, "u2"),
        h3 = fs_batch_read_user(b, "nobody");
    exec_ok(b);
    fs_user_state st;
    fs_batch_user_state(b, h1, &st);
    print_history("u1", &st);
    ck_assert_int_eq(st.n_hist, 3);
    ck_assert_int_eq(st.n_seen, 2);
    ck_assert(seen_has(&st, "a") && seen_has(&st, "b") && !seen_has(&st, "c"));
    ck_assert_str_eq(st.hist_actions[2], "purchase");
    fs_batch_user_state(b, h2, &st);
    print_history("u2", &st);
    ck_assert(st.n_seen == 1 && seen_has(&st, "c"));
    fs_batch_user_state(b, h3, &st);
    print_history("unknown user", &st);
    ck_assert_int_eq(st.n_hist + st.n_seen, 0);
    redisContext *c = th_redis_connect(&R);
    long long ttl = cmd_int(c, "t:s:u1", "TTL");
    printf("TTL t:s:u1 = %lld (ttl_seen_s %d)\n", ttl, TTL_SEEN);
    ck_assert(ttl > 0 && ttl <= TTL_SEEN);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

/* Queues a mix of every write. */
static void queue_events(fs_batch *b)
{
    char id[16], user[16], item[16];
    for (int i = 0; i < 12; i++) {
        snprintf(id, sizeof id, "e%d", i);
        snprintf(user, sizeof user, "u%d", i % 3);
        snprintf(item, sizeof item, "i%d", i % 5);
        interaction_ok(b, id, 1000 + i, user, item, i % 2 ? "view" : "click");
    }
    const char *names[2] = {"available", "price"}, *v0[2] = {"false", "9.5"},
               *v1[2] = {"true", "3"};
    ck_assert_int_eq(fs_batch_item(b, "i1", 0, names, v0, 2), 0);
    ck_assert_int_eq(fs_batch_item(b, "i2", 1, names, v1, 2), 0);
    const char *un[1] = {"country"}, *uv[1] = {"\"DE\""};
    ck_assert_int_eq(fs_batch_user(b, "u0", un, uv, 1), 0);
}

/* The same events applied twice (exec of the same batch again, as a retry
 * does; then queued anew) leave the same keys, contents and TTLs. */
START_TEST(test_replay_is_idempotent)
{
    fs_opts o = opts_for(4);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 32);
    redisContext *c = th_redis_connect(&R);
    queue_events(b);
    exec_ok(b);
    int n1, n2, n3;
    char *first = snapshot(c, &n1);
    printf("after the first apply, %d keys:\n%s", n1, first);
    exec_ok(b);
    char *second = snapshot(c, &n2);
    fs_batch_reset(b);
    queue_events(b);
    exec_ok(b);
    char *third = snapshot(c, &n3);
    printf("retried exec: %d keys, %s; queued again: %d keys, %s\n", n2,
           strcmp(first, second) ? "DIFFERENT" : "identical", n3,
           strcmp(first, third) ? "DIFFERENT" : "identical");
    ck_assert_int_eq(n1, 10); /* h: and s: of 3 users, i1, i2, u0, unavailable */
    ck_assert_str_eq(first, second);
    ck_assert_str_eq(first, third);
    free(first);
    free(second);
    free(third);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

typedef struct walk {
    int n, distinct, other;
    unsigned char *hit; /* [n_items] */
} walk;

static void walk_fn(void *ctx, const char *item)
{
    walk *w = ctx;
    int k;
    w->n++;
    if (sscanf(item, "item-%d", &k) == 1 && k >= 0 && k < 2500) {
        w->distinct += !w->hit[k];
        w->hit[k] = 1;
    } else {
        w->other++;
    }
}

static walk walk_unavailable(fs_store *s, unsigned char *hit)
{
    char err[CM_ERRSZ] = "";
    memset(hit, 0, 2500);
    walk w = {0, 0, 0, hit};
    ck_assert_msg(fs_unavailable(s, walk_fn, &w, err, sizeof err) == 0, "fs_unavailable: %s", err);
    return w;
}

START_TEST(test_item_availability)
{
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 2500);
    redisContext *c = th_redis_connect(&R);
    const char *names[3] = {"available", "price", "tags"},
               *values[3] = {"false", "9.5", "[\"a\",\"b\"]"};
    ck_assert_int_eq(fs_batch_item(b, "i1", 0, names, values, 3), 0);
    exec_ok(b);
    redisReply *r = cmd(c, "HGET t:i:i1 tags");
    printf("unavailable: SISMEMBER %lld, tags %s, TTL %lld\n",
           unavailable_has(c, "i1"), r->str, cmd_int(c, "t:i:i1", "TTL"));
    ck_assert_str_eq(r->str, "[\"a\",\"b\"]");
    freeReplyObject(r);
    ck_assert_int_eq(unavailable_has(c, "i1"), 1);
    ck_assert(cmd_int(c, "t:i:i1", "TTL") > 0);

    fs_batch_reset(b);
    ck_assert_int_eq(fs_batch_item(b, "i1", 1, NULL, NULL, 0), 0);
    exec_ok(b);
    printf("available again: SISMEMBER %lld\n", unavailable_has(c, "i1"));
    ck_assert_int_eq(unavailable_has(c, "i1"), 0);
    /* -1: the event does not say; the set is left alone. */
    fs_batch_reset(b);
    ck_assert_int_eq(fs_batch_item(b, "i3", 0, NULL, NULL, 0), 0);
    ck_assert_int_eq(fs_batch_item(b, "i3", -1, names + 1, values + 1, 1), 0);
    ck_assert_int_eq(fs_batch_item(b, "i3", 2, NULL, NULL, 0), -1);
    exec_ok(b);
    ck_assert_int_eq(unavailable_has(c, "i3"), 1);

    /* 2,500 unavailable items: more than one SSCAN page of COUNT 1000. */
    fs_batch_reset(b);
    char item[32];
    for (int i = 0; i < 2500; i++) {
        snprintf(item, sizeof item, "item-%04d", i);
        ck_assert_int_eq(fs_batch_item(b, item, 0, NULL, NULL, 0), 0);
    }
    exec_ok(b);
    fs_batch_reset(b);
    ck_assert_int_eq(fs_batch_item(b, "i3", 1, NULL, NULL, 0), 0);
    exec_ok(b);
    unsigned char *hit = malloc(2500);
    ck_assert_ptr_nonnull(hit);
    long long calls0 = info_field(c, "cmdstat_sscan:calls=");
    walk w = walk_unavailable(s, hit);
    long long calls1 = info_field(c, "cmdstat_sscan:calls=");
    printf("fs_unavailable: %d items (%d distinct of 2500, %d others) in %lld SSCAN calls\n", w.n,
           w.distinct, w.other, calls1 - calls0);
    ck_assert_int_eq(w.distinct, 2500);
    ck_assert_int_eq(w.other, 0);
    ck_assert_int_ge(calls1 - calls0, 2);

    fs_batch_reset(b);
    for (int i = 0; i < 2500; i += 2) {
        snprintf(item, sizeof item, "item-%04d", i);
        ck_assert_int_eq(fs_batch_item(b, item, 1, NULL, NULL, 0), 0);
    }
    exec_ok(b);
    w = walk_unavailable(s, hit);
    printf("after 1250 became available: %d items (%d distinct)\n", w.n, w.distinct);
    ck_assert_int_eq(w.distinct, 1250);
    for (int i = 0; i < 2500; i++)
        ck_assert_int_eq(hit[i], i % 2);
    free(hit);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

START_TEST(test_user_fields)
{
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 4);
    redisContext *c = th_redis_connect(&R);
    const char *names[2] = {"age", "country"}, *values[2] = {"31", "\"DE\""};
    ck_assert_int_eq(fs_batch_user(b, "u1", names, values, 2), 0);
    exec_ok(b);
    fs_batch_reset(b);
    const char *age[1] = {"32"};
    ck_assert_int_eq(fs_batch_user(b, "u1", names, age, 1), 0);
    ck_assert_int_eq(fs_batch_user(b, "u2", NULL, NULL, 0), 0); /* no fields: no key */
    ck_assert_int_eq(fs_batch_user(b, "u3", names, NULL, 1), -1);
    exec_ok(b);
    redisReply *r = cmd(c, "HGETALL t:u:u1");
    sbuf all = {0};
    sb_sorted(&all, r, 1);
    long long ttl = cmd_int(c, "t:u:u1", "TTL");
    printf("HGETALL t:u:u1 = %s, TTL %lld (ttl_user_s %d)\n", all.p, ttl, TTL_USER);
    ck_assert_str_eq(all.p, "age=32,country=\"DE\"");
    ck_assert(ttl > 0 && ttl <= TTL_USER);
    ck_assert_int_eq(cmd_int(c, "t:u:u2", "EXISTS"), 0);
    free(all.p);
    freeReplyObject(r);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

START_TEST(test_auth)
{
    char err[CM_ERRSZ] = "";
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    ck_assert_msg(fs_ping(s, err, sizeof err) == 0, "%s", err);
    fs_close(s);

    fs_store *bad = NULL;
    o.password = "wrong";
    ck_assert_int_eq(fs_open(&bad, &o, err, sizeof err), -1);
    printf("wrong password: %s\n", err);
    ck_assert_ptr_null(bad);
    ck_assert_msg(strstr(err, "AUTH") && strstr(err, "WRONGPASS"), "%s", err);
    o.password = NULL;
    ck_assert_int_eq(fs_open(&bad, &o, err, sizeof err), -1);
    printf("no password: %s\n", err);
    ck_assert_msg(strstr(err, "NOAUTH"), "%s", err);

    /* db 2: the keys land there, not in db 0. */
    o.password = R.password;
    o.db = 2;
    s = open_store(&o);
    fs_batch *b = new_batch(s, 2);
    interaction_ok(b, "e1", 1, "u1", "i1", "click");
    exec_ok(b);
    redisContext *c = th_redis_connect(&R);
    long long in0 = cmd_int(c, "t:h:u1", "EXISTS");
    freeReplyObject(cmd(c, "SELECT 2"));
    long long in2 = cmd_int(c, "t:h:u1", "EXISTS");
    printf("db 2: EXISTS t:h:u1 in db 0 %lld, in db 2 %lld\n", in0, in2);
    ck_assert(in0 == 0 && in2 == 1);
    o.db = 99;
    ck_assert_int_eq(fs_open(&bad, &o, err, sizeof err), -1);
    printf("db 99: %s\n", err);
    ck_assert_msg(strstr(err, "SELECT 99"), "%s", err);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

/* Redis killed: exec fails with a clear error, the next one reconnects
 * (refused while down), and after a restart the store works again. */
START_TEST(test_reconnect)
{
    char err[CM_ERRSZ] = "", where[64];
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 4);
    interaction_ok(b, "e1", 1, "u1", "i1", "click");
    int h = fs_batch_read_user(b, "u1");
    exec_ok(b);
    snprintf(where, sizeof where, "redis 127.0.0.1:%d: ", R.port);

    th_redis_kill(&R);
    ck_assert_int_eq(fs_batch_exec(b, err, sizeof err), -1);
    printf("exec after SIGKILL: %s\n", err);
    ck_assert_msg(strncmp(err, where, strlen(where)) == 0, "%s", err);
    fs_user_state st;
    fs_batch_user_state(b, h, &st);
    ck_assert_int_eq(st.n_hist, 0); /* a failed exec leaves no results */
    ck_assert_int_eq(fs_batch_exec(b, err, sizeof err), -1);
    printf("exec while down:    %s\n", err);
    ck_assert_msg(strstr(err, where) && strstr(err, "connection refused"), "%s", err);
    ck_assert_int_eq(fs_ping(s, err, sizeof err), -1);
    printf("ping while down:    %s\n", err);

    th_redis_restart(&R);
    exec_ok(b); /* the retry: the same batch again */
    fs_batch_user_state(b, h, &st);
    print_history("after restart", &st);
    ck_assert_int_eq(st.n_hist, 1);
    ck_assert_msg(fs_ping(s, err, sizeof err) == 0, "%s", err);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

/* A server that stops answering: exec gives up after timeout_ms. */
START_TEST(test_timeout)
{
    char err[CM_ERRSZ] = "";
    fs_opts o = opts_for(50);
    o.timeout_ms = 300;
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 2);
    interaction_ok(b, "e1", 1, "u1", "i1", "click");
    kill(R.pid, SIGSTOP);
    double t0 = th_now_ms();
    int rc = fs_batch_exec(b, err, sizeof err);
    double took = th_now_ms() - t0;
    kill(R.pid, SIGCONT);
    printf("exec against a stopped server: rc %d after %.0f ms: %s\n", rc, took, err);
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strstr(err, "timed out after 300 ms"), "%s", err);
    ck_assert(took >= 250 && took < 2000);
    exec_ok(b);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

/* An error reply fails the batch and names the command, yet every reply
 * is read: the same connection goes on in step (no reconnection). */
START_TEST(test_error_reply_keeps_sync)
{
    char err[CM_ERRSZ] = "";
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    redisContext *c = th_redis_connect(&R);
    freeReplyObject(cmd(c, "SET t:h:bad not-a-zset"));
    long long conns0 = info_field(c, "total_connections_received:");
    fs_batch *b = new_batch(s, 8);
    interaction_ok(b, "e1", 1, "ok", "i1", "click");
    interaction_ok(b, "e2", 2, "bad", "i2", "click");
    interaction_ok(b, "e3", 3, "ok", "i3", "click");
    ck_assert_int_ge(fs_batch_read_user(b, "ok"), 0);
    ck_assert_int_eq(fs_batch_exec(b, err, sizeof err), -1);
    printf("exec with a WRONGTYPE: %s\n", err);
    ck_assert_msg(strstr(err, "ZADD t:h:bad: WRONGTYPE"), "%s", err);

    fs_batch_reset(b);
    int h = fs_batch_read_user(b, "ok");
    exec_ok(b);
    ck_assert_msg(fs_ping(s, err, sizeof err) == 0, "%s", err);
    fs_user_state st;
    fs_batch_user_state(b, h, &st);
    long long conns1 = info_field(c, "total_connections_received:");
    print_history("the next batch", &st);
    printf("connections received: %lld before, %lld after\n", conns0, conns1);
    ck_assert_int_eq(st.n_hist, 2);
    ck_assert_str_eq(st.hist_items[1], "i3");
    ck_assert_int_eq(conns1, conns0);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

START_TEST(test_binary_safe_ids)
{
    const char *user = "user with spaces:and:colons ü 日本", *item = "item 1:x/ä ✓",
               *action = "add to cart", *id = "e 1:ö";
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 8);
    interaction_ok(b, id, 42, user, item, action);
    const char *names[1] = {"título"}, *values[1] = {"\"café: ☕\""};
    ck_assert_int_eq(fs_batch_item(b, item, 0, names, values, 1), 0);
    /* \x1f is refused only where it would break the member: the user id
     * is only part of a key. */
    interaction_ok(b, "e2", 43, "odd\x1fuser", "i2", "click");
    int h = fs_batch_read_user(b, user), h2 = fs_batch_read_user(b, "odd\x1fuser");
    exec_ok(b);
    fs_user_state st;
    fs_batch_user_state(b, h, &st);
    print_history(user, &st);
    ck_assert_int_eq(st.n_hist, 1);
    ck_assert_str_eq(st.hist_items[0], item);
    ck_assert_str_eq(st.hist_actions[0], action);
    ck_assert_str_eq(st.seen[0], item);
    fs_batch_user_state(b, h2, &st);
    ck_assert_int_eq(st.n_hist, 1);

    redisContext *c = th_redis_connect(&R);
    redisReply *r = cmd(c, "HGET t:i:%s %s", item, names[0]);
    printf("HGET t:i:%s %s = %s\n", item, names[0], r->str);
    ck_assert_str_eq(r->str, values[0]);
    freeReplyObject(r);
    r = cmd(c, "ZRANGE t:h:%s 0 -1", user);
    ck_assert_int_eq(r->elements, 1);
    ck_assert_int_eq(r->element[0]->len, strlen(id) + strlen(item) + strlen(action) + 2);
    freeReplyObject(r);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

/* \x1f in the parts of a history member is refused (-1) and uses no op. */
START_TEST(test_separator_rejected)
{
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, 1);
    ck_assert_int_eq(fs_batch_interaction(b, "e\x1f" "1", 1, "u1", "i1", "click"), -1);
    ck_assert_int_eq(fs_batch_interaction(b, "e1", 1, "u1", "i\x1f" "1", "click"), -1);
    ck_assert_int_eq(fs_batch_interaction(b, "e1", 1, "u1", "i1", "cl\x1fick"), -1);
    ck_assert_int_eq(fs_batch_interaction(b, NULL, 1, "u1", "i1", "click"), -1);
    printf("ids with \\x1f: refused; the one-op batch still takes a valid event\n");
    interaction_ok(b, "e1", 1, "u1", "i1", "click");
    exec_ok(b);
    redisContext *c = th_redis_connect(&R);
    ck_assert_int_eq(cmd_int(c, "t:h:u1", "ZCARD"), 1);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

START_TEST(test_batch_full)
{
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    ck_assert_ptr_null(fs_batch_new(s, 0));
    fs_batch *b = new_batch(s, 3);
    const char *n[1] = {"f"}, *v[1] = {"1"};
    for (int round = 0; round < 2; round++) {
        interaction_ok(b, "e1", 1, "u1", "i1", "click");
        ck_assert_int_eq(fs_batch_item(b, "i1", 1, n, v, 1), 0);
        ck_assert_int_eq(fs_batch_read_user(b, "u1"), 0);
        ck_assert_int_eq(fs_batch_interaction(b, "e2", 2, "u1", "i2", "click"), -1);
        ck_assert_int_eq(fs_batch_item(b, "i2", 0, n, v, 1), -1);
        ck_assert_int_eq(fs_batch_user(b, "u1", n, v, 1), -1);
        ck_assert_int_eq(fs_batch_read_user(b, "u1"), -1);
        exec_ok(b);
        fs_user_state st;
        fs_batch_user_state(b, 0, &st);
        printf("round %d: 3 ops queued, the 4th of each kind refused; read sees %d event(s)\n",
               round, st.n_hist);
        ck_assert_int_eq(st.n_hist, 1);
        fs_batch_reset(b);
    }
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

/* 10,000 interactions of 500 users and a read of each, one round trip. */
START_TEST(test_big_pipeline)
{
    enum { USERS = 500, EVENTS = 10000 };
    fs_opts o = opts_for(50);
    fs_store *s = open_store(&o);
    fs_batch *b = new_batch(s, EVENTS + USERS);
    char id[16], user[16], item[16];
    int h[USERS];
    for (int round = 0; round < 2; round++) {
        double t0 = th_now_ms();
        fs_batch_reset(b);
        for (int i = 0; i < EVENTS; i++) {
            snprintf(id, sizeof id, "e%d", i);
            snprintf(user, sizeof user, "u%d", i % USERS);
            snprintf(item, sizeof item, "i%d", i % 997);
            interaction_ok(b, id, 1700000000000 + i, user, item, "click");
        }
        for (int u = 0; u < USERS; u++) {
            snprintf(user, sizeof user, "u%d", u);
            h[u] = fs_batch_read_user(b, user);
        }
        double t1 = th_now_ms();
        exec_ok(b);
        double t2 = th_now_ms();
        printf("round %d: %d interactions + %d reads (%d commands) queued in %.1f ms, "
               "exec %.1f ms\n", round, EVENTS, USERS, 5 * EVENTS + 2 * USERS, t1 - t0, t2 - t1);
        for (int u = 0; u < USERS; u++) {
            fs_user_state st;
            fs_batch_user_state(b, h[u], &st);
            ck_assert_int_eq(st.n_hist, EVENTS / USERS);
            for (int k = 1; k < st.n_hist; k++)
                ck_assert(st.hist_ts[k] > st.hist_ts[k - 1]);
            ck_assert_int_eq(st.hist_ts[0], 1700000000000 + u);
        }
    }
    redisContext *c = th_redis_connect(&R);
    redisReply *r = cmd(c, "DBSIZE");
    printf("DBSIZE %lld after replaying the round\n", r->integer);
    ck_assert_int_eq(r->integer, 2 * USERS);
    freeReplyObject(r);
    redisFree(c);
    fs_batch_free(b);
    fs_close(s);
}
END_TEST

START_TEST(test_open_errors)
{
    char err[CM_ERRSZ] = "";
    fs_store *s = NULL;
    fs_opts o = opts_for(0);
    ck_assert_int_eq(fs_open(&s, &o, err, sizeof err), -1);
    printf("max_hist 0: %s\n", err);
    ck_assert_msg(strstr(err, "max_hist"), "%s", err);
    o = opts_for(50);
    o.ttl_seen_s = 0;
    ck_assert_int_eq(fs_open(&s, &o, err, sizeof err), -1);
    printf("ttl 0: %s\n", err);
    ck_assert_msg(strstr(err, "seen"), "%s", err);
    o = opts_for(50);
    o.port = th_free_port();
    ck_assert_int_eq(fs_open(&s, &o, err, sizeof err), -1);
    printf("nothing listening: %s\n", err);
    char want[96];
    snprintf(want, sizeof want, "redis 127.0.0.1:%d: connection refused", o.port);
    ck_assert_str_eq(err, want);
    ck_assert_ptr_null(s);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("features");
    TCase *tc = tcase_create("store");
    tcase_add_checked_fixture(tc, setup_plain, teardown);
    tcase_add_test(tc, test_read_your_writes);
    tcase_add_test(tc, test_history_order_and_trim);
    tcase_add_test(tc, test_seen_set);
    tcase_add_test(tc, test_replay_is_idempotent);
    tcase_add_test(tc, test_item_availability);
    tcase_add_test(tc, test_user_fields);
    tcase_add_test(tc, test_reconnect);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_error_reply_keeps_sync);
    tcase_add_test(tc, test_binary_safe_ids);
    tcase_add_test(tc, test_separator_rejected);
    tcase_add_test(tc, test_batch_full);
    tcase_add_test(tc, test_big_pipeline);
    tcase_add_test(tc, test_open_errors);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(su, tc);
    TCase *ta = tcase_create("auth");
    tcase_add_checked_fixture(ta, setup_auth, teardown);
    tcase_add_test(ta, test_auth);
    tcase_set_timeout(ta, 30);
    suite_add_tcase(su, ta);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
