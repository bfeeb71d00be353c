/* service/rescore.c — `rankd rescore` (rescore.h, docs/rescore.md).
 *
 * One thread works in chunks of up to `batch` requests: read them from the
 * input (each parsed and validated; a bad one reported, counted, skipped),
 * read every user's features in one pipelined Redis round trip, rank the
 * chunk in one scorer call, write the answers in input order. The scorer
 * call is nearly all of a chunk's time, and it runs on every core (CPU) or
 * the GPU, so one thread around it keeps it busy.
 *
 * Resume without duplicates rests on one invariant: the checkpoint's
 * out_len bytes of the output file are exactly the answers to the input
 * before the checkpoint's position. A checkpoint is taken only between
 * chunks, after the output is fsync'd (so out_len bytes are durable), and
 * it is replaced atomically (service/ckpt.c). A fresh run saves its first
 * checkpoint (position 0, out_len 0) before it creates the output. Whatever
 * the moment of a crash, the next run truncates the output to out_len and
 * reads on from the position: bytes written after the last checkpoint are
 * dropped and their requests ranked again, once. A topic output has no
 * truncation: every message is acknowledged before the checkpoint that
 * covers it, and the ones after it are produced again (at-least-once). */
#include "service/rescore.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "features/fs.h"
#include "ranker/rk_scorer.h"
#include "service/args.h"
#include "service/ckpt.h"
#include "service/events.h"
#include "service/kafka.h"
#include "service/log.h"
#include "service/progress.h"
#include "service/rankreq.h"

#define DEFAULT_BATCH 512
#define MAX_EXCLUDE 4096       /* seen + unavailable rows per retrieval, as the service */
#define OUT_BYTES 65536        /* one output line, as the service */
#define WHERE_BYTES 320        /* "file:line" and the like, in messages */
#define REDIS_TRIES 6          /* Redis round trips tried per chunk (50 ms backoff, doubling) */
#define UNAVAILABLE_REFRESH_NS 10000000000LL
#define KAFKA_TIMEOUT_MS 10000

enum { IN_FILE, IN_TOPIC, IN_SCAN };
enum { GOT_ITEM, GOT_END, GOT_CHUNK_END, GOT_ERROR };

typedef struct rescore {
    const svc_config *cfg;
    const svc_rescore_opts *o;
    volatile sig_atomic_t *stop;
    int B, k, in_kind;
    svc_model model;
    rk_scorer *scorer;
    fs_store *fs;
    fs_batch *fb;
    svc_unavailable un;
    int64_t un_ns;
    svc_parser *parser;
    svc_slots *slots;
    svc_slot **chunk;        /* [B] */
    int *reads;              /* [B] feature read of each */
    char (*where)[WHERE_BYTES]; /* [B] */
    rk_request *reqs;        /* [B] */
    int *req_of;             /* [B] chunk index of each request */
    /* cur: the state as read so far; done: as of the last written chunk,
     * what a checkpoint saves */
    svc_ckpt cur, done;
    char ckpt_path[4096];
    int input_done;
    /* file input */
    FILE *in;
    char *line;
    size_t line_cap;
    int64_t in_size;
    /* topic input */
    rd_kafka_t *consumer;
    int64_t lo[SVC_CKPT_MAX_PARTS], end[SVC_CKPT_MAX_PARTS];
    int parts_left;
    int64_t topic_total;
    /* scan input: the page in hand, its users NUL-separated */
    char *page;
    size_t page_len, page_cap, page_pos;
    int page_n, page_i, page_oom;
    char next_cursor[FS_CURSOR_MAX];
    /* output */
    int out_fd;
    char *obuf;
    size_t olen, ocap;
    int64_t out_total;       /* bytes handed to write(2) */
    rd_kafka_t *producer;
    int64_t undelivered;
    char produce_err[256];
    svc_progress prog;
} rescore;

static int64_t now_ns(void) { return rk_now_ns(); }

static void report_bad(rescore *r, const char *where, const char *reason)
{
    r->cur.bad++;
    if (r->o->on_bad)
        r->o->on_bad(r->o->ctx, where, reason);
}

static void hook(rescore *r, svc_rescore_point pt)
{
    if (r->o->hook)
        r->o->hook(r->o->ctx, pt, r->done.read);
}

/* ---- requests in ------------------------------------------------------------------------------ */

/* A parsed event into the chunk's next slot, its features queued. */
static void take_event(rescore *r, int n, const svc_event *ev, const char *where)
{
    char reason[256];
    svc_slot *s = r->chunk[n];
    s->consumed_ns = now_ns();
    r->reads[n] = -1; /* no request in this slot */
    if (svc_slot_begin(s, ev, reason, sizeof reason)) {
        report_bad(r, where, reason);
        return;
    }
    if ((r->reads[n] = fs_batch_read_user(r->fb, ev->user)) < 0) { /* the batch holds one read per slot */
        report_bad(r, where, "internal: the feature batch is full");
        return;
    }
    snprintf(r->where[n], WHERE_BYTES, "%s", where);
}

/* Parses one line or message; 1 when it took the slot. */
static int take_text(rescore *r, int n, const char *text, size_t len, const char *where)
{
    svc_event ev;
    char reason[256];
    if (svc_event_parse(r->parser, text, len, &ev, reason, sizeof reason)) {
        report_bad(r, where, reason);
        return 0;
    }
    if (ev.kind != SVC_EV_RANKING) {
        snprintf(reason, sizeof reason, "a %s event; rescore takes ranking events", svc_event_kind_name(ev.kind));
        report_bad(r, where, reason);
        return 0;
    }
    take_event(r, n, &ev, where);
    return r->reads[n] >= 0;
}

static int next_line(rescore *r, int n, char *err, size_t errsz)
{
    for (;;) {
        errno = 0;
        ssize_t len = getline(&r->line, &r->line_cap, r->in);
        if (len < 0) {
            if (ferror(r->in))
                return cm_errf(err, errsz, "%s: read: %s", r->o->input, strerror(errno)), GOT_ERROR;
            r->input_done = 1;
            return GOT_END;
        }
        r->cur.in_offset += len;
        r->cur.in_line++;
        while (len > 0 && (r->line[len - 1] == '\n' || r->line[len - 1] == '\r'))
            len--;
        if (len == 0)
            continue; /* blank lines are not requests */
        r->cur.read++;
        char where[WHERE_BYTES];
        snprintf(where, sizeof where, "%s:%lld", r->o->input, (long long)r->cur.in_line);
        if (take_text(r, n, r->line, (size_t)len, where))
            return GOT_ITEM;
    }
}

static int next_message(rescore *r, int n, char *err, size_t errsz)
{
    (void)err;
    (void)errsz;
    while (r->parts_left > 0 && !*r->stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->consumer, n ? 0 : 100);
        if (!m)
            return GOT_CHUNK_END; /* idle: rank what is in hand, then poll again */
        int32_t p = m->partition;
        int mine = p >= 0 && p < r->cur.n_parts && r->cur.part_offset[p] < r->end[p];
        if (m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && mine && m->offset >= r->end[p]) {
                r->cur.part_offset[p] = r->end[p];
                r->parts_left--;
            } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                svc_warn("consumer: %s", rd_kafka_message_errstr(m));
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        if (!mine || m->offset < r->cur.part_offset[p]) { /* past the end taken at start, or seen */
            rd_kafka_message_destroy(m);
            continue;
        }
        r->cur.part_offset[p] = m->offset + 1;
        if (r->cur.part_offset[p] >= r->end[p])
            r->parts_left--;
        r->cur.read++;
        char where[WHERE_BYTES];
        snprintf(where, sizeof where, "%s[%d]@%lld", r->o->input_topic, (int)p, (long long)m->offset);
        int took = take_text(r, n, m->payload, m->len, where); /* the parser checks the size */
        rd_kafka_message_destroy(m);
        if (took)
            return GOT_ITEM;
    }
    if (r->parts_left == 0)
        r->input_done = 1;
    return r->parts_left == 0 ? GOT_END : GOT_CHUNK_END;
}

static void add_user(void *ctx, const char *user, size_t len)
{
    rescore *r = ctx;
    if (r->page_len + len + 1 > r->page_cap) {
        size_t cap = 2 * (r->page_len + len + 1) + 4096;
        char *p = realloc(r->page, cap);
        if (!p) {
            r->page_oom = 1;
            return;
        }
        r->page = p;
        r->page_cap = cap;
    }
    memcpy(r->page + r->page_len, user, len);
    r->page[r->page_len + len] = '\0';
    r->page_len += len + 1;
    r->page_n++;
}

/* Ids from an external store are validated as events' ids are. */
static const char *user_problem(const char *u)
{
    size_t n = strlen(u);
    if (n == 0 || n > SVC_MAX_ID)
        return "the user id is empty or longer than 256 bytes";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)u[i] < 0x20 || u[i] == 0x7f)
            return "the user id holds a control character";
    return NULL;
}

/* Users of one SCAN page at a time; a chunk never spans two pages, so that
 * the end of a chunk that ends a page is a place a checkpoint can name. */
static int next_user(rescore *r, int n, char *err, size_t errsz)
{
    for (;;) {
        if (r->page_i == r->page_n) {
            if (n > 0)
                return GOT_CHUNK_END;
            if (r->input_done)
                return GOT_END;
            if (*r->stop)
                return GOT_CHUNK_END;
            r->page_len = r->page_pos = 0;
            r->page_n = r->page_i = 0;
            memcpy(r->next_cursor, r->cur.cursor, FS_CURSOR_MAX);
            if (fs_scan_users(r->fs, r->next_cursor, r->B, add_user, r, err, errsz))
                return GOT_ERROR;
            if (r->page_oom)
                return cm_errf(err, errsz, "out of memory for a SCAN page"), GOT_ERROR;
            if (r->page_n == 0) { /* MATCH filters pages to nothing often */
                memcpy(r->cur.cursor, r->next_cursor, FS_CURSOR_MAX);
                r->input_done = strcmp(r->cur.cursor, "0") == 0;
                continue;
            }
        }
        const char *user = r->page + r->page_pos;
        r->page_pos += strlen(user) + 1;
        if (++r->page_i == r->page_n) { /* the page is consumed once this chunk is written */
            memcpy(r->cur.cursor, r->next_cursor, FS_CURSOR_MAX);
            r->input_done = strcmp(r->cur.cursor, "0") == 0;
        }
        r->cur.read++;
        char where[WHERE_BYTES];
        snprintf(where, sizeof where, "redis key %sh:%.256s", r->cfg->redis.prefix, user);
        const char *why = user_problem(user);
        if (why) {
            report_bad(r, where, why);
            continue;
        }
        svc_event ev = {.kind = SVC_EV_RANKING, .id = user, .user = user}; /* no items: retrieve */
        take_event(r, n, &ev, where);
        if (r->reads[n] >= 0)
            return GOT_ITEM;
    }
}

static int next_request(rescore *r, int n, char *err, size_t errsz)
{
    switch (r->in_kind) {
    case IN_FILE:
        return next_line(r, n, err, errsz);
    case IN_TOPIC:
        return next_message(r, n, err, errsz);
    default:
        return next_user(r, n, err, errsz);
    }
}

/* Where a checkpoint may be taken: everywhere but inside a SCAN page. */
static int at_boundary(const rescore *r) { return r->in_kind != IN_SCAN || r->page_i == r->page_n; }

/* ---- answers out ------------------------------------------------------------------------------ */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    rescore *r = opaque;
    r->undelivered--;
    /* a success without an offset is the idempotent producer's inference, not
     * the broker's acknowledgement (service/serve.c, on_delivery): the job
     * stops as on an error and resumes from its checkpoint */
    if ((m->err || m->offset < 0) && !r->produce_err[0])
        snprintf(r->produce_err, sizeof r->produce_err, "produce to %s: %s", r->o->output_topic,
                 m->err ? rd_kafka_err2str(m->err) : "delivered without an offset (not acknowledged by the broker)");
}

static int write_all(rescore *r, char *err, size_t errsz)
{
    size_t off = 0;
    while (off < r->olen) {
        ssize_t w = write(r->out_fd, r->obuf + off, r->olen - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return cm_errf(err, errsz, "%s: write: %s", r->o->output, strerror(errno));
        off += (size_t)w;
    }
    r->out_total += (int64_t)r->olen;
    r->olen = 0;
    return 0;
}

static int emit(rescore *r, const svc_slot *s, char *err, size_t errsz)
{
    if (r->producer) {
        char buf[OUT_BYTES];
        int len = svc_slot_json(s, &r->model, (now_ns() - s->consumed_ns) / 1000, buf, sizeof buf);
        if (len < 0)
            return 1;
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_producev(r->producer, RD_KAFKA_V_TOPIC(r->o->output_topic),
                                      RD_KAFKA_V_VALUE(buf, (size_t)len), RD_KAFKA_V_KEY(s->user, strlen(s->user)),
                                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END)) ==
               RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(r->producer, 10);
        if (e)
            return cm_errf(err, errsz, "produce to %s: %s", r->o->output_topic, rd_kafka_err2str(e)), -1;
        r->undelivered++;
        return 0;
    }
    if (r->ocap - r->olen < OUT_BYTES + 1 && write_all(r, err, errsz))
        return -1;
    int len = svc_slot_json(s, &r->model, (now_ns() - s->consumed_ns) / 1000, r->obuf + r->olen, OUT_BYTES);
    if (len < 0)
        return 1;
    r->olen += (size_t)len;
    r->obuf[r->olen++] = '\n';
    return 0;
}

/* Everything handed over is durable (file) or acknowledged (topic). */
static int sync_output(rescore *r, char *err, size_t errsz)
{
    if (r->producer) {
        while (r->undelivered > 0 && !r->produce_err[0]) {
            if (rd_kafka_flush(r->producer, KAFKA_TIMEOUT_MS) == RD_KAFKA_RESP_ERR__TIMED_OUT && r->undelivered > 0)
                return cm_errf(err, errsz, "produce to %s: %lld messages not acknowledged within %d ms",
                               r->o->output_topic, (long long)r->undelivered, KAFKA_TIMEOUT_MS);
        }
        return r->produce_err[0] ? cm_errf(err, errsz, "%s", r->produce_err) : 0;
    }
    if (write_all(r, err, errsz))
        return -1;
    if (fsync(r->out_fd) != 0)
        return cm_errf(err, errsz, "%s: fsync: %s", r->o->output, strerror(errno));
    return 0;
}

static int checkpoint(rescore *r, char *err, size_t errsz)
{
    if (sync_output(r, err, errsz))
        return -1;
    hook(r, SVC_RS_SYNCED);
    if (svc_ckpt_save(&r->done, r->ckpt_path, err, errsz))
        return -1;
    hook(r, SVC_RS_CHECKPOINTED);
    return 0;
}

/* ---- one chunk ---------------------------------------------------------------------------------- */

static int exec_features(rescore *r, char *err, size_t errsz)
{
    int delay_ms = 50;
    for (int t = 0;; t++) {
        if (fs_batch_exec(r->fb, err, errsz) == 0)
            return 0;
        if (t + 1 == REDIS_TRIES || *r->stop)
            return -1;
        svc_warn("%s; retrying in %d ms", err, delay_ms);
        usleep((useconds_t)delay_ms * 1000);
        delay_ms *= 2;
    }
}

static void refresh_unavailable(rescore *r)
{
    if (!r->cfg->ranking.exclude_unavailable || now_ns() - r->un_ns < UNAVAILABLE_REFRESH_NS)
        return;
    svc_unavailable fresh;
    char err[CM_ERRSZ];
    if (svc_unavailable_load(&fresh, r->fs, &r->model, err, sizeof err) == 0) {
        svc_unavailable_free(&r->un);
        r->un = fresh;
    } else {
        svc_warn("unavailable items: %s; ranking with the last set read", err);
    }
    r->un_ns = now_ns();
}

/* Fills the chunk's requests from their features and ranks them in one
 * scorer call. A batch that the scorer refuses is ranked one by one, so
 * that one bad request fails alone. */
static void rank_chunk(rescore *r, int n)
{
    svc_rank_rules rules = {.exclude_seen = r->cfg->ranking.exclude_seen,
                            .exclude_unavailable = r->cfg->ranking.exclude_unavailable, .k = r->k,
                            .unavailable = r->un.ids, .unavailable_rows = r->un.rows,
                            .n_unavailable_rows = r->un.n_rows};
    int nr = 0;
    for (int i = 0; i < n; i++) {
        svc_slot *s = r->chunk[i];
        fs_user_state st;
        s->status = 0;
        if (r->reads[i] < 0)
            continue;
        fs_batch_user_state(r->fb, r->reads[i], &st);
        if (svc_slot_fill(s, &r->model, &st, &rules, s->err, sizeof s->err)) {
            s->status = -1;
            continue;
        }
        if (s->job.req.cands && s->job.req.n_cands == 0) { /* every item unavailable: an empty list */
            s->job.req.n_out = 0;
            continue;
        }
        r->reqs[nr] = s->job.req;
        r->req_of[nr++] = i;
    }
    char err[CM_ERRSZ];
    if (rk_scorer_rank(r->scorer, r->reqs, nr, err, sizeof err) != 0) {
        for (int j = 0; j < nr; j++) {
            svc_slot *s = r->chunk[r->req_of[j]];
            if (rk_scorer_rank(r->scorer, &r->reqs[j], 1, s->err, sizeof s->err))
                s->status = -1;
        }
    }
    for (int j = 0; j < nr; j++)
        r->chunk[r->req_of[j]]->job.req.n_out = r->reqs[j].n_out;
}

/* Reads, ranks and writes one chunk; 0, or -1 with err (nothing of the
 * chunk counts then: the next run reads it again). */
static int run_chunk(rescore *r, char *err, size_t errsz)
{
    fs_batch_reset(r->fb);
    int n = 0;
    while (n < r->B && (!*r->stop || !at_boundary(r))) {
        int got = next_request(r, n, err, errsz);
        if (got == GOT_ERROR)
            return -1;
        if (got != GOT_ITEM)
            break;
        n++;
    }
    if (n > 0) {
        if (exec_features(r, err, errsz))
            return -1;
        refresh_unavailable(r);
        rank_chunk(r, n);
    }
    for (int i = 0; i < n; i++) {
        svc_slot *s = r->chunk[i];
        if (r->reads[i] < 0)
            continue;
        int rc = s->status ? 1 : emit(r, s, err, errsz);
        if (rc < 0)
            return -1;
        if (rc > 0) {
            r->cur.failed++;
            if (r->o->on_bad)
                r->o->on_bad(r->o->ctx, r->where[i], s->status ? s->err : "the answer exceeds 65536 bytes");
        } else {
            r->cur.ranked++;
        }
    }
    if (r->olen && write_all(r, err, errsz))
        return -1;
    if (r->producer)
        rd_kafka_poll(r->producer, 0);
    /* out_len moves with the position, at the end of a whole chunk: a chunk
     * that fails half-written (its first bytes may be in the file) must not
     * be counted by a checkpoint taken after the failure */
    r->cur.out_len = r->out_total;
    r->done = r->cur;
    hook(r, SVC_RS_WRITTEN);
    return 0;
}

/* ---- start ------------------------------------------------------------------------------------ */

static int open_core(rescore *r, char *err, size_t errsz)
{
    const svc_config *c = r->cfg;
    if (!c->model.path || !*c->model.path)
        return cm_errf(err, errsz, "model.path is not set: which artifact should rankd rescore with?");
    if (svc_model_load(&r->model, c->model.path, err, errsz))
        return -1;
    rk_scorer_opts so = {.max_batch = r->B, .max_cands = c->ranking.max_candidates, .max_k = r->k,
                         .max_exclude = MAX_EXCLUDE, .retrieve_n = c->ranking.retrieve_n,
                         .threads = c->model.threads, .device = c->model.device};
    if (rk_scorer_new(&r->scorer, r->model.m, &so, err, errsz))
        return -1;
    const char *why = rk_scorer_fallback_reason(r->scorer);
    if (why)
        svc_warn("model.device auto: scoring on the CPU: %s", why);
    svc_slot_limits sl = {.max_hist = r->model.m->cfg.max_hist, .max_exclude = MAX_EXCLUDE,
                          .max_cands = c->ranking.max_candidates, .k = r->k,
                          .id_bytes = (size_t)c->ranking.max_candidates * (SVC_MAX_ID + 1)};
    svc_event_limits el = {.max_bytes = (size_t)c->kafka.max_event_bytes, .max_items = c->ranking.max_candidates,
                           .items_optional = 1};
    size_t B = (size_t)r->B;
    r->slots = svc_slots_new(r->B, &sl);
    r->parser = svc_parser_new(&el);
    r->chunk = calloc(B, sizeof *r->chunk);
    r->reads = calloc(B, sizeof *r->reads);
    r->where = calloc(B, sizeof *r->where);
    r->reqs = calloc(B, sizeof *r->reqs);
    r->req_of = calloc(B, sizeof *r->req_of);
    r->ocap = (size_t)OUT_BYTES * 16;
    r->obuf = malloc(r->ocap);
    if (!r->slots || !r->parser || !r->chunk || !r->reads || !r->where || !r->reqs || !r->req_of || !r->obuf)
        return cm_errf(err, errsz, "out of memory for batches of %d requests", r->B);
    for (int i = 0; i < r->B; i++)
        r->chunk[i] = svc_slot_get(r->slots);
    if (svc_features_open(c, r->model.m->cfg.max_hist, r->B, &r->fs, &r->fb, err, errsz))
        return -1;
    if (c->ranking.exclude_unavailable && svc_unavailable_load(&r->un, r->fs, &r->model, err, errsz))
        return -1;
    r->un_ns = now_ns();
    return 0;
}

static int open_file_input(rescore *r, int resume, char *err, size_t errsz)
{
    struct stat st;
    if (!(r->in = fopen(r->o->input, "r")) || fstat(fileno(r->in), &st) != 0)
        return cm_errf(err, errsz, "%s: %s", r->o->input, strerror(errno));
    r->in_size = st.st_size;
    if (!resume || r->cur.in_offset == 0)
        return 0;
    /* a checkpoint names the start of a line: anything else means the file changed */
    int c = -1;
    if (r->cur.in_offset <= r->in_size && fseeko(r->in, r->cur.in_offset - 1, SEEK_SET) == 0)
        c = fgetc(r->in);
    if (c != '\n' && !(c >= 0 && r->cur.in_offset == r->in_size))
        return cm_errf(err, errsz, "%s: the checkpoint %s resumes at byte %lld (line %lld), which is not the start "
                       "of a line of this file: it changed since; --restart starts over", r->o->input, r->ckpt_path,
                       (long long)r->cur.in_offset, (long long)r->cur.in_line + 1);
    return 0;
}

static int open_topic_input(rescore *r, int resume, char *err, size_t errsz)
{
    const svc_config *c = r->cfg;
    char group[300], why[512];
    snprintf(group, sizeof group, "%s-rescore", c->kafka.group_id);
    rd_kafka_conf_t *cc = svc_kafka_conf(c, 0, err, errsz);
    if (!cc || svc_kafka_set(cc, "group.id", group, err, errsz) ||
        svc_kafka_set(cc, "enable.auto.commit", "false", err, errsz) ||
        svc_kafka_set(cc, "enable.partition.eof", "true", err, errsz) ||
        svc_kafka_set(cc, "auto.offset.reset", "earliest", err, errsz))
        return cc ? (rd_kafka_conf_destroy(cc), -1) : -1;
    if (!(r->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, why, sizeof why)))
        return cm_errf(err, errsz, "kafka consumer: %s", why);
    const char *topic = r->o->input_topic;
    rd_kafka_topic_t *t = rd_kafka_topic_new(r->consumer, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = t ? rd_kafka_metadata(r->consumer, 0, t, &md, KAFKA_TIMEOUT_MS) : RD_KAFKA_RESP_ERR__FAIL;
    int n = e == 0 && md->topic_cnt == 1 && md->topics[0].err == 0 ? md->topics[0].partition_cnt : -1;
    if (md)
        rd_kafka_metadata_destroy(md);
    if (t)
        rd_kafka_topic_destroy(t);
    if (n < 0)
        return cm_errf(err, errsz, "kafka %s: topic %s: %s", c->kafka.brokers, topic,
                       rd_kafka_err2str(e ? e : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART));
    if (n > SVC_CKPT_MAX_PARTS)
        return cm_errf(err, errsz, "topic %s has %d partitions; rescore takes up to %d", topic, n, SVC_CKPT_MAX_PARTS);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
    for (int p = 0; p < n; p++) {
        int64_t lo, hi;
        if ((e = rd_kafka_query_watermark_offsets(r->consumer, topic, p, &lo, &hi, KAFKA_TIMEOUT_MS))) {
            rd_kafka_topic_partition_list_destroy(l);
            return cm_errf(err, errsz, "topic %s[%d]: offsets: %s", topic, p, rd_kafka_err2str(e));
        }
        r->lo[p] = lo;
        r->end[p] = hi; /* the topic as it is at start: a batch job ends */
        /* a partition added since the checkpoint starts at its beginning; one
         * whose old messages expired, at its first message */
        if (!resume || p >= r->cur.n_parts || r->cur.part_offset[p] < lo)
            r->cur.part_offset[p] = lo;
        r->topic_total += hi - lo;
        if (r->cur.part_offset[p] < hi) {
            rd_kafka_topic_partition_list_add(l, topic, p)->offset = r->cur.part_offset[p];
            r->parts_left++;
        }
    }
    r->cur.n_parts = n;
    e = rd_kafka_assign(r->consumer, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e)
        return cm_errf(err, errsz, "topic %s: assign: %s", topic, rd_kafka_err2str(e));
    r->input_done = r->parts_left == 0;
    return 0;
}

static int open_output(rescore *r, char *err, size_t errsz)
{
    if (r->o->output_topic) {
        char why[512];
        rd_kafka_conf_t *pc = svc_kafka_conf(r->cfg, 1, err, errsz);
        if (!pc)
            return -1;
        rd_kafka_conf_set_dr_msg_cb(pc, on_delivery);
        rd_kafka_conf_set_opaque(pc, r);
        if (!(r->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, why, sizeof why)))
            return cm_errf(err, errsz, "kafka producer: %s", why);
        return 0;
    }
    const char *out = r->o->output;
    struct stat st;
    if ((r->out_fd = open(out, O_WRONLY | O_CREAT | O_CLOEXEC, 0644)) < 0 || fstat(r->out_fd, &st) != 0)
        return cm_errf(err, errsz, "%s: %s", out, strerror(errno));
    if (st.st_size < r->done.out_len)
        return cm_errf(err, errsz, "%s is %lld bytes, shorter than the %lld its checkpoint %s records: it changed "
                       "since; --restart starts over", out, (long long)st.st_size, (long long)r->done.out_len,
                       r->ckpt_path);
    /* what lies past out_len was written after the last checkpoint: its
     * requests are read again */
    if (ftruncate(r->out_fd, r->done.out_len) != 0 || lseek(r->out_fd, r->done.out_len, SEEK_SET) < 0 ||
        fsync(r->out_fd) != 0)
        return cm_errf(err, errsz, "%s: truncate to %lld bytes: %s", out, (long long)r->done.out_len, strerror(errno));
    r->out_total = r->done.out_len;
    return 0;
}

static void source_name(const rescore *r, char *out, size_t cap)
{
    char real[4096];
    if (r->in_kind == IN_FILE)
        snprintf(out, cap, "file:%s", realpath(r->o->input, real) ? real : r->o->input);
    else if (r->in_kind == IN_TOPIC)
        snprintf(out, cap, "topic:%s", r->o->input_topic);
    else
        snprintf(out, cap, "scan:db%d:%s", r->cfg->redis.db, r->cfg->redis.prefix);
}

/* The checkpoint: resumed (1), fresh (0, its first one saved before the
 * output exists), already complete (2), or -1. */
static int open_state(rescore *r, char *err, size_t errsz)
{
    const svc_rescore_opts *o = r->o;
    if (o->checkpoint)
        snprintf(r->ckpt_path, sizeof r->ckpt_path, "%s", o->checkpoint);
    else
        snprintf(r->ckpt_path, sizeof r->ckpt_path, "%s.ckpt", o->output);
    char source[sizeof r->cur.source];
    source_name(r, source, sizeof source);
    if (o->restart && unlink(r->ckpt_path) != 0 && errno != ENOENT)
        return cm_errf(err, errsz, "%s: %s", r->ckpt_path, strerror(errno));
    int rc = svc_ckpt_load(&r->cur, r->ckpt_path, err, errsz);
    if (rc < 0)
        return -1;
    if (rc == 0) {
        if (strcmp(r->cur.source, source))
            return cm_errf(err, errsz, "%s is the checkpoint of a run over %s, not %s; --restart starts over",
                           r->ckpt_path, r->cur.source, source);
        if (strcmp(r->cur.model, r->model.tag))
            return cm_errf(err, errsz, "%s: its outputs came from model %s, the config now loads %s; --restart "
                           "starts over", r->ckpt_path, r->cur.model, r->model.tag);
        return r->cur.complete ? 2 : 1;
    }
    struct stat st;
    if (o->output && !o->restart && stat(o->output, &st) == 0 && st.st_size > 0)
        return cm_errf(err, errsz, "%s exists and there is no checkpoint %s to resume it by; --restart overwrites it",
                       o->output, r->ckpt_path);
    memset(&r->cur, 0, sizeof r->cur);
    snprintf(r->cur.source, sizeof r->cur.source, "%s", source);
    snprintf(r->cur.model, sizeof r->cur.model, "%s", r->model.tag);
    snprintf(r->cur.cursor, sizeof r->cur.cursor, "0");
    return 0;
}

static int64_t units_done(const rescore *r)
{
    if (r->in_kind == IN_FILE)
        return r->done.in_offset;
    if (r->in_kind == IN_SCAN)
        return r->done.read;
    int64_t u = 0;
    for (int p = 0; p < r->done.n_parts; p++)
        u += r->done.part_offset[p] - r->lo[p];
    return u;
}

static int start(rescore *r, svc_rescore_stats *st, char *err, size_t errsz)
{
    if (open_core(r, err, errsz))
        return -1;
    snprintf(st->device, sizeof st->device, "%s", rk_scorer_device(r->scorer));
    int state = open_state(r, err, errsz);
    if (state < 0)
        return -1;
    if (state == 2) {
        r->done = r->cur;
        st->already_complete = 1;
        return 1;
    }
    st->resumed_at = state == 1 ? r->cur.read : 0;
    if ((r->in_kind == IN_FILE && open_file_input(r, state == 1, err, errsz)) ||
        (r->in_kind == IN_TOPIC && open_topic_input(r, state == 1, err, errsz)))
        return -1;
    r->input_done |= r->in_kind == IN_SCAN && state == 1 && strcmp(r->cur.cursor, "0") == 0 && r->cur.read > 0;
    r->done = r->cur;
    if (state == 0 && svc_ckpt_save(&r->done, r->ckpt_path, err, errsz)) /* before the output exists */
        return -1;
    if (open_output(r, err, errsz))
        return -1;
    int64_t total = r->in_kind == IN_FILE ? r->in_size : r->in_kind == IN_TOPIC ? r->topic_total : -1;
    svc_progress_start(&r->prog, r->o->progress, r->o->progress_bar, r->o->progress_every_s, total, r->done.read,
                       units_done(r));
    svc_info("rescore: %s %s, scorer %s, batches of %d", state == 1 ? "resuming" : "starting", r->done.source,
             rk_scorer_device(r->scorer), r->B);
    return 0;
}

/* ---- the run ---------------------------------------------------------------------------------- */

static int run(rescore *r, char *err, size_t errsz)
{
    const int64_t every = (int64_t)(r->o->checkpoint_ms > 0 ? r->o->checkpoint_ms : 1000) * 1000000LL;
    int64_t last = now_ns();
    /* a stop inside a SCAN page finishes the page: a checkpoint cannot name a place inside it */
    while (!r->input_done && (!*r->stop || !at_boundary(r))) {
        if (run_chunk(r, err, errsz)) {
            char ignored[CM_ERRSZ]; /* the first error is the one to report */
            if (r->done.read > 0)
                checkpoint(r, ignored, sizeof ignored);
            return -1;
        }
        svc_progress_update(&r->prog, r->done.read, units_done(r), r->done.bad + r->done.failed, 0);
        if (at_boundary(r) && now_ns() - last >= every) {
            if (checkpoint(r, err, errsz))
                return -1;
            last = now_ns();
        }
    }
    r->done.complete = r->input_done;
    if (checkpoint(r, err, errsz))
        return -1;
    svc_progress_update(&r->prog, r->done.read, units_done(r), r->done.bad + r->done.failed, 1);
    return r->input_done ? 0 : 1;
}

static void teardown(rescore *r)
{
    if (r->consumer) {
        rd_kafka_consumer_close(r->consumer);
        rd_kafka_destroy(r->consumer);
    }
    if (r->producer) {
        rd_kafka_flush(r->producer, KAFKA_TIMEOUT_MS);
        rd_kafka_destroy(r->producer);
    }
    if (r->out_fd >= 0)
        close(r->out_fd);
    if (r->in)
        fclose(r->in);
    fs_batch_free(r->fb);
    fs_close(r->fs);
    svc_unavailable_free(&r->un);
    svc_parser_free(r->parser);
    svc_slots_free(r->slots);
    rk_scorer_free(r->scorer);
    svc_model_free(&r->model);
    free(r->chunk);
    free(r->reads);
    free(r->where);
    free(r->reqs);
    free(r->req_of);
    free(r->obuf);
    free(r->line);
    free(r->page);
}

static int check_opts(const svc_rescore_opts *o, char *err, size_t errsz)
{
    int n_in = !!o->input + !!o->input_topic + !!o->scan, n_out = !!o->output + !!o->output_topic;
    if (n_in != 1)
        return cm_errf(err, errsz, "give one input: --input FILE, --input-topic T or --scan");
    if (n_out != 1)
        return cm_errf(err, errsz, "give one output: --output FILE or --output-topic T");
    if (o->output_topic && !o->checkpoint)
        return cm_errf(err, errsz, "a topic output needs --checkpoint FILE: where the run records how far it got");
    if (o->batch < 0 || o->k < 0)
        return cm_errf(err, errsz, "batch %d and k %d must be positive", o->batch, o->k);
    return 0;
}

int svc_rescore(const svc_config *cfg, const svc_rescore_opts *o, volatile sig_atomic_t *stop,
                svc_rescore_stats *st, char *err, size_t errsz)
{
    memset(st, 0, sizeof *st);
    if (check_opts(o, err, errsz))
        return -1;
    svc_log_setup(cfg->logging.level, cfg->logging.format);
    rescore *r = calloc(1, sizeof *r);
    if (!r)
        return cm_errf(err, errsz, "out of memory");
    int64_t t0 = now_ns();
    r->cfg = cfg;
    r->o = o;
    r->stop = stop;
    r->B = o->batch ? o->batch : DEFAULT_BATCH;
    r->k = o->k ? o->k : cfg->ranking.k;
    r->in_kind = o->input ? IN_FILE : o->input_topic ? IN_TOPIC : IN_SCAN;
    r->out_fd = -1;
    int rc = start(r, st, err, errsz);
    if (rc == 0)
        rc = run(r, err, errsz);
    else if (rc == 1) /* already complete */
        rc = 0;
    st->read = r->done.read;
    st->ranked = r->done.ranked;
    st->bad = r->done.bad;
    st->failed = r->done.failed;
    teardown(r);
    free(r);
    st->seconds = (double)(now_ns() - t0) * 1e-9;
    return rc;
}

/* ---- rankd rescore ---------------------------------------------------------------------------- */

#define BAD_SHOWN 1000 /* bad requests printed; the rest are counted */

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { stopping = sig; }

typedef struct cmd_ctx {
    int tty;
    long bad;
} cmd_ctx;

static void print_bad(void *ctx, const char *where, const char *reason)
{
    cmd_ctx *c = ctx;
    if (++c->bad <= BAD_SHOWN)
        fprintf(stderr, "%srankd rescore: %s: %s (skipped)\n", c->tty ? "\r\033[K" : "", where, reason);
    else if (c->bad == BAD_SHOWN + 1)
        fprintf(stderr, "%srankd rescore: more than %d bad requests: the rest are counted, not shown\n",
                c->tty ? "\r\033[K" : "", BAD_SHOWN);
}

static const char USAGE[] = "rankd rescore (--input FILE | --input-topic T | --scan) "
                            "(--output FILE | --output-topic T) [options]";

int svc_cmd_rescore(int argc, char **argv)
{
    const char *config = NULL, *progress = "auto";
    svc_rescore_opts o = {.checkpoint_ms = 1000, .progress_every_s = 10};
    int help = 0;
    const svc_arg table[] = {
        {"config", ARG_STR, &config, 0, 0, "YAML config: model, redis, kafka, ranking (default: the embedded one)"},
        {"input", ARG_STR, &o.input, 0, 0, "JSON-lines file of ranking events (no \"items\": retrieval)"},
        {"input-topic", ARG_STR, &o.input_topic, 0, 0, "or a topic of them, from its start to its end at start"},
        {"scan", ARG_FLAG, &o.scan, 0, 0, "or every user with a history in Redis (retrieval)"},
        {"output", ARG_STR, &o.output, 0, 0, "JSON-lines file of ranked lists"},
        {"output-topic", ARG_STR, &o.output_topic, 0, 0, "or a topic (at-least-once)"},
        {"checkpoint", ARG_STR, &o.checkpoint, 0, 0, "checkpoint (default OUTPUT.ckpt; needed with --output-topic)"},
        {"restart", ARG_FLAG, &o.restart, 0, 0, "forget the checkpoint and start over (truncates OUTPUT)"},
        {"batch", ARG_INT, &o.batch, 1, 65536, "requests per scorer call (default 512)"},
        {"k", ARG_INT, &o.k, 1, 100000, "items per ranked list (default ranking.k)"},
        {"checkpoint-ms", ARG_INT, &o.checkpoint_ms, 1, 3600000, "longest time between checkpoints"},
        {"progress", ARG_STR, &progress, 0, 0, "auto (a bar on a terminal, else lines) | bar | lines | none"},
        {"progress-every", ARG_DOUBLE, &o.progress_every_s, 0.1, 86400, "seconds between progress lines"},
        {"help", ARG_FLAG, &help, 0, 0, "this help"},
        {NULL, 0, NULL, 0, 0, NULL}};
    const char *pos[1];
    int npos;
    char err[CM_ERRSZ] = "";
    int parsed = svc_args_parse(argc, argv, table, pos, 0, &npos, err, sizeof err) == 0;
    if (parsed && strcmp(progress, "auto") && strcmp(progress, "bar") && strcmp(progress, "lines") &&
        strcmp(progress, "none"))
        parsed = 0, snprintf(err, sizeof err, "--progress %s: expected auto, bar, lines or none", progress);
    if (!parsed || help) {
        if (err[0])
            fprintf(stderr, "rankd rescore: %s\n", err);
        fprintf(stderr, "usage: %s\n", USAGE);
        svc_args_usage(table);
        return help ? 0 : 2;
    }
    svc_config cfg;
    if (svc_config_load(&cfg, config, err, sizeof err)) {
        fprintf(stderr, "rankd rescore: %s\n", err);
        return 1;
    }
    cmd_ctx cc = {.tty = isatty(2)};
    o.progress = strcmp(progress, "none") ? stderr : NULL;
    o.progress_bar = !strcmp(progress, "bar") || (!strcmp(progress, "auto") && cc.tty);
    cc.tty = o.progress && o.progress_bar;
    o.on_bad = print_bad;
    o.ctx = &cc;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    svc_rescore_stats st;
    int rc = svc_rescore(&cfg, &o, &stopping, &st, err, sizeof err);
    const char *out = o.output ? o.output : o.output_topic;
    if (rc < 0) {
        fprintf(stderr, "rankd rescore: %s\n", err);
    } else if (st.already_complete) {
        fprintf(stderr, "rankd rescore: %s is complete (%lld requests, %lld ranked, %lld bad, %lld failed); "
                "--restart runs it again\n", out, (long long)st.read, (long long)st.ranked, (long long)st.bad,
                (long long)st.failed);
    } else {
        double here = (double)(st.read - st.resumed_at);
        fprintf(stderr, "rankd rescore: %s %lld requests (%lld ranked, %lld bad, %lld failed) into %s; this run "
                "%.0f in %.1f s, %.0f/s on %s\n", rc ? "stopped after" : "done:", (long long)st.read,
                (long long)st.ranked, (long long)st.bad, (long long)st.failed, out, here, st.seconds,
                st.seconds > 0 ? here / st.seconds : 0, st.device);
        if (rc == 1)
            fprintf(stderr, "rankd rescore: checkpoint written; the same command resumes the run\n");
    }
    svc_config_free(&cfg);
    return rc < 0 ? 1 : rc == 1 ? 128 + (stopping ? (int)stopping : SIGINT) : 0;
}
