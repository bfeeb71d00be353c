/* service/serve.c — the streaming service: Kafka in, Redis features,
 * ranked lists out (docs/service.md).
 *
 * The consumer thread owns the consumer, the offset tracker, the feature
 * store connection and the producer's delivery reports (rd_kafka_poll on
 * the producer is called only here, so the tracker needs no lock). The
 * batcher thread scores and hands each answer to the producer. HTTP threads
 * rank synchronously through the same batcher with their own Redis
 * connection. The models (service/models.h) have their own thread, which
 * reloads them; a ranking pins its model version from the moment its rows
 * are mapped until its answer is written. */
#include "service/serve.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "features/fs.h"
#include "ranker/batcher.h"
#include "ranker/rk_scorer.h"
#include "service/args.h"
#include "service/events.h"
#include "service/http.h"
#include "service/kafka.h"
#include "service/log.h"
#include "service/metrics.h"
#include "service/models.h"
#include "service/offsets.h"
#include "service/rankreq.h"

#define N_SLOTS 4096           /* rankings in flight */
#define MAX_EXCLUDE 4096       /* seen + unavailable rows per retrieval */
#define OUT_BYTES 65536        /* an output message */
#define UNAVAILABLE_REFRESH_NS 1000000000LL

/* What the consumer keeps of each message of a poll round. */
typedef struct msg_state {
    rd_kafka_message_t *m;
    int valid, kind, trigger;
    svc_slot *slot;
    int read;                  /* fs read handle */
    char reason[256];          /* dead-letter reason */
} msg_state;

typedef struct dead_letter { /* the opaque of a dead-letter message */
    int32_t partition;
    int64_t offset;
} dead_letter;

/* A message the producer would not even queue (rd_kafka_producev failed:
 * the topic is in an error state, e.g. after an authorization failure,
 * until librdkafka's next metadata refresh). It is kept, with its opaque,
 * and produced again every KEEP_RETRY_NS from the consumer thread: its
 * event's offset must wait for it, and dropping it would also leak the
 * slot and stall that partition's commits for good. */
typedef struct kept_msg {
    struct kept_msg *next;
    int dead_letter;           /* to the dead-letter topic, else the output topic */
    void *opaque;              /* the message's: a slot or a dead_letter */
    rd_kafka_headers_t *hdrs;  /* owned, or NULL */
    size_t len, key_len;
    char bytes[];              /* payload, then key */
} kept_msg;

#define KEEP_RETRY_NS 200000000LL

typedef struct serve {
    const svc_config *cfg;
    volatile sig_atomic_t *stop;
    svc_models *models;
    rk_batcher *batcher;
    svc_slots *slots;
    svc_metrics metrics;
    fs_store *fs;
    fs_batch *fb;
    fs_store *fs_http;
    fs_batch *fb_http;
    pthread_mutex_t http_mu;
    pthread_key_t http_parser; /* each HTTP thread's event parser */
    rd_kafka_t *consumer, *producer;
    svc_offsets *offsets;
    svc_parser *parser;
    svc_http *http;
    msg_state *round;
    /* unavailable items, refreshed from Redis every second; each model
     * version maps them to its rows when it first ranks after a refresh */
    pthread_mutex_t un_mu;
    cm_strmap *un_ids;
    uint64_t un_gen;
    int64_t un_refreshed_ns;
    /* rankings that ended without an output, for the consumer to ack */
    pthread_mutex_t fail_mu;
    svc_slot **failed;
    int n_failed;
    /* messages the producer refused to queue, produced again later */
    pthread_mutex_t keep_mu;
    kept_msg *kept;
    int64_t kept_retry_ns;
} serve;

/* ---- Kafka clients ------------------------------------------------------------------------ */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque);

/* Client-level errors: all brokers down makes the service not ready; the
 * consumer loop's metadata check makes it ready again. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    serve *s = opaque;
    atomic_fetch_add(&s->metrics.kafka_errors, 1);
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && atomic_exchange(&s->metrics.ready_kafka, 0))
        svc_error("kafka: %s", reason);
}

static void store_offsets(serve *s);

/* On the consumer thread, inside its poll. Before partitions go, what is
 * done is stored and committed, so that their next owner starts right
 * after it; their tracking is dropped (a late delivery report of one of
 * their events changes nothing here: the event is done either way). */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    serve *s = opaque;
    int cooperative = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        if (cooperative)
            rd_kafka_error_destroy(rd_kafka_incremental_assign(rk, parts));
        else
            rd_kafka_assign(rk, parts);
        svc_info("assigned %d partitions of %s", parts->cnt, s->cfg->kafka.input_topic);
        return;
    }
    store_offsets(s);
    rd_kafka_commit(rk, NULL, 0);
    for (int i = 0; i < parts->cnt; i++)
        svc_offsets_drop(s->offsets, parts->elems[i].partition);
    if (cooperative)
        rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, parts));
    else
        rd_kafka_assign(rk, NULL);
    svc_info("revoked %d partitions", parts->cnt);
}

static int start_kafka(serve *s, char *err, size_t errsz)
{
    const svc_config *cfg = s->cfg;
    char num[32];
    rd_kafka_conf_t *pc = svc_kafka_conf(cfg, 1, err, errsz);
    if (!pc)
        return -1;
    rd_kafka_conf_set_dr_msg_cb(pc, on_delivery);
    rd_kafka_conf_set_error_cb(pc, on_error);
    rd_kafka_conf_set_opaque(pc, s);
    char why[512];
    if (!(s->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, why, sizeof why)))
        return cm_errf(err, errsz, "kafka producer: %s", why);
    rd_kafka_conf_t *cc = svc_kafka_conf(cfg, 0, err, errsz);
    snprintf(num, sizeof num, "%d", cfg->kafka.commit_interval_ms);
    if (cc) {
        rd_kafka_conf_set_error_cb(cc, on_error);
        rd_kafka_conf_set_rebalance_cb(cc, on_rebalance);
        rd_kafka_conf_set_opaque(cc, s);
    }
    if (!cc || svc_kafka_set(cc, "group.id", cfg->kafka.group_id, err, errsz) ||
        svc_kafka_set(cc, "enable.auto.offset.store", "false", err, errsz) ||
        svc_kafka_set(cc, "enable.auto.commit", "true", err, errsz) ||
        svc_kafka_set(cc, "auto.commit.interval.ms", num, err, errsz) ||
        svc_kafka_set(cc, "auto.offset.reset", "earliest", err, errsz))
        return cc ? (rd_kafka_conf_destroy(cc), -1) : -1;
    if (!(s->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, why, sizeof why)))
        return cm_errf(err, errsz, "kafka consumer: %s", why);
    rd_kafka_poll_set_consumer(s->consumer);
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, cfg->kafka.input_topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(s->consumer, t);
    rd_kafka_topic_partition_list_destroy(t);
    if (e)
        return cm_errf(err, errsz, "kafka subscribe %s: %s", cfg->kafka.input_topic, rd_kafka_err2str(e));
    return 0;
}

/* ---- delivery and offsets ---------------------------------------------------------------------- */

/* A slot's model version is given back as soon as its answer is written. */
static void slot_unpin(svc_slot *slot)
{
    svc_mver_release(slot->ver);
    slot->ver = NULL;
}

static void slot_put(serve *s, svc_slot *slot)
{
    slot_unpin(slot);
    svc_slot_put(s->slots, slot);
}

/* The slot of a Kafka event is done: its offset may move. */
static void event_done(serve *s, int32_t partition, int64_t offset)
{
    svc_offsets_ack(s->offsets, partition, offset);
}

/* How produce() waits out a full queue: the consumer thread drains the
 * delivery reports, so it polls, the batcher thread sleeps, and a delivery
 * report callback (inside rd_kafka_poll) does not wait: it keeps the
 * message. */
enum { FULL_SLEEP, FULL_POLL, FULL_KEEP };

/* Hands a message to the producer (payload, key and headers copied; the
 * caller keeps its own). Returns 0, or the error when the producer would not
 * queue it. */
static rd_kafka_resp_err_t produce(serve *s, int dl, const void *payload, size_t len, const void *key,
                                   size_t key_len, const rd_kafka_headers_t *hdrs, void *opaque, int full)
{
    const char *topic = dl ? s->cfg->kafka.dead_letter_topic : s->cfg->kafka.output_topic;
    rd_kafka_resp_err_t e;
    do {
        rd_kafka_headers_t *h = hdrs ? rd_kafka_headers_copy(hdrs) : NULL;
        e = rd_kafka_producev(s->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE((void *)payload, len),
                              RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_HEADERS(h),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
        if (e && h) /* the producer owns the headers only once it took the message */
            rd_kafka_headers_destroy(h);
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && full == FULL_POLL)
            rd_kafka_poll(s->producer, 10);
        else if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && full == FULL_SLEEP)
            usleep(1000);
    } while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && full != FULL_KEEP);
    return e;
}

/* Produces a message, or keeps it to produce again (kept_msg). */
static void produce_or_keep(serve *s, int dl, const void *payload, size_t len, const void *key, size_t key_len,
                            const rd_kafka_headers_t *hdrs, void *opaque, int full)
{
    rd_kafka_resp_err_t e = produce(s, dl, payload, len, key, key_len, hdrs, opaque, full);
    if (!e)
        return;
    atomic_fetch_add(&s->metrics.publish_errors, 1);
    kept_msg *k = malloc(sizeof *k + len + key_len);
    if (!k)
        abort(); /* without it the event could never be committed */
    *k = (kept_msg){.dead_letter = dl, .opaque = opaque, .hdrs = hdrs ? rd_kafka_headers_copy(hdrs) : NULL,
                    .len = len, .key_len = key_len};
    memcpy(k->bytes, payload, len);
    if (key_len)
        memcpy(k->bytes + len, key, key_len);
    pthread_mutex_lock(&s->keep_mu);
    int first = s->kept == NULL;
    k->next = s->kept;
    s->kept = k;
    pthread_mutex_unlock(&s->keep_mu);
    if (first)
        svc_warn("produce to %s: %s; keeping the message to produce again",
                 dl ? s->cfg->kafka.dead_letter_topic : s->cfg->kafka.output_topic, rd_kafka_err2str(e));
}

/* On the consumer thread: the kept messages, produced again; those the
 * producer still refuses stay kept. */
static void produce_kept(serve *s)
{
    int64_t now = rk_now_ns();
    if (now < s->kept_retry_ns)
        return;
    s->kept_retry_ns = now + KEEP_RETRY_NS;
    pthread_mutex_lock(&s->keep_mu);
    kept_msg *k = s->kept;
    s->kept = NULL;
    pthread_mutex_unlock(&s->keep_mu);
    while (k) {
        kept_msg *next = k->next;
        const char *key = k->bytes + k->len;
        if (produce(s, k->dead_letter, k->bytes, k->len, key, k->key_len, k->hdrs, k->opaque, FULL_POLL)) {
            pthread_mutex_lock(&s->keep_mu);
            k->next = s->kept;
            s->kept = k;
            pthread_mutex_unlock(&s->keep_mu);
        } else {
            if (k->hdrs)
                rd_kafka_headers_destroy(k->hdrs);
            free(k);
        }
        k = next;
    }
}

/* Runs on the consumer thread (rd_kafka_poll of the producer). A refused
 * message is produced again, headers and all: its event's offset must not
 * be committed before its output is in the topic. So is a success without
 * an offset: that is the idempotent producer's inference (a later batch's
 * ack, or a retry answered as a duplicate, taken for this message), not the
 * broker's acknowledgement of it, and librdkafka 2.0.2 has reported one for
 * a list that was never written (tests/check_faults.c, broker faults: the
 * list lost, its event committed). Producing it again costs at worst a
 * duplicate list, which at-least-once allows. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    serve *s = opaque;
    const char *topic = rd_kafka_topic_name(m->rkt);
    int dl = strcmp(topic, s->cfg->kafka.dead_letter_topic) == 0;
    if (m->err || m->offset < 0) {
        atomic_fetch_add(&s->metrics.publish_errors, 1);
        if (m->err)
            svc_warn("produce to %s failed (%s); producing again", topic, rd_kafka_err2str(m->err));
        else
            svc_warn("produce to %s: delivered without an offset (not acknowledged by the broker); producing again",
                     topic);
        rd_kafka_headers_t *hdrs = NULL;
        if (rd_kafka_message_headers(m, &hdrs))
            hdrs = NULL;
        produce_or_keep(s, dl, m->payload, m->len, m->key, m->key_len, hdrs, m->_private, FULL_KEEP);
        return;
    }
    if (dl) {
        dead_letter *d = m->_private;
        event_done(s, d->partition, d->offset);
        free(d);
        return;
    }
    svc_slot *slot = m->_private;
    atomic_fetch_add(&s->metrics.published, 1);
    svc_hist_observe(&s->metrics.e2e, (uint64_t)((rk_now_ns() - slot->consumed_ns) / 1000));
    event_done(s, slot->partition, slot->offset);
    slot_put(s, slot);
}

static void store_offsets(serve *s)
{
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(s->consumer, &a) || !a)
        return;
    rd_kafka_topic_partition_list_t *st = rd_kafka_topic_partition_list_new(a->cnt);
    for (int i = 0; i < a->cnt; i++) {
        int64_t next = svc_offsets_committable(s->offsets, a->elems[i].partition);
        if (next >= 0)
            rd_kafka_topic_partition_list_add(st, a->elems[i].topic, a->elems[i].partition)->offset = next;
    }
    if (st->cnt)
        rd_kafka_offsets_store(s->consumer, st);
    rd_kafka_topic_partition_list_destroy(st);
    rd_kafka_topic_partition_list_destroy(a);
    atomic_store(&s->metrics.in_flight, svc_offsets_in_flight(s->offsets));
}

/* Acks the rankings that failed in the batcher (no output to wait for). */
static void drain_failed(serve *s)
{
    pthread_mutex_lock(&s->fail_mu);
    for (int i = 0; i < s->n_failed; i++) {
        event_done(s, s->failed[i]->partition, s->failed[i]->offset);
        slot_put(s, s->failed[i]);
    }
    s->n_failed = 0;
    pthread_mutex_unlock(&s->fail_mu);
}

static void serve_producer(serve *s)
{
    rd_kafka_poll(s->producer, 0);
    produce_kept(s);
    drain_failed(s);
    store_offsets(s);
}

/* ---- the answer of a ranking --------------------------------------------------------------------- */

/* The batcher thread: the answer goes to the output topic (a Kafka event)
 * or back to the waiting HTTP thread. */
static void job_done(rk_job *j, int status, const char *err, void *ctx)
{
    serve *s = ctx;
    svc_slot *slot = (svc_slot *)j; /* the job is the slot's first member */
    uint64_t us = (uint64_t)((rk_now_ns() - j->enqueued_ns) / 1000);
    svc_hist_observe(&s->metrics.rank_latency, us);
    svc_metrics_model_observe(&s->metrics, slot->variant, slot->ver->gen, status == 0, us);
    slot->status = status;
    if (status) {
        atomic_fetch_add(&s->metrics.rank_errors, 1);
        snprintf(slot->err, sizeof slot->err, "%s", err ? err : "ranking failed");
    }
    if (slot->partition < 0) { /* HTTP */
        pthread_mutex_lock(&slot->mu);
        slot->finished = 1;
        pthread_cond_signal(&slot->cv);
        pthread_mutex_unlock(&slot->mu);
        return;
    }
    char out[OUT_BYTES];
    int len = status ? -1
                     : svc_slot_json(slot, &slot->ver->model, (rk_now_ns() - slot->consumed_ns) / 1000, out, sizeof out);
    slot_unpin(slot);
    if (len < 0) {
        svc_error("ranking of event %s failed: %s", slot->event_id, status ? slot->err : "output too large");
        pthread_mutex_lock(&s->fail_mu);
        s->failed[s->n_failed++] = slot;
        pthread_mutex_unlock(&s->fail_mu);
        return;
    }
    produce_or_keep(s, 0, out, (size_t)len, slot->user, strlen(slot->user), NULL, slot, FULL_SLEEP);
}

/* ---- unavailable items ----------------------------------------------------------------------------- */

static void add_unavailable(void *ctx, const char *item)
{
    int id;
    cm_strmap_intern(ctx, item, strlen(item), &id);
}

static void refresh_unavailable(serve *s)
{
    int64_t now = rk_now_ns();
    if (now - s->un_refreshed_ns < UNAVAILABLE_REFRESH_NS)
        return;
    s->un_refreshed_ns = now;
    cm_strmap *ids = cm_strmap_new();
    char err[CM_ERRSZ];
    if (!ids || fs_unavailable(s->fs, add_unavailable, ids, err, sizeof err)) {
        cm_strmap_free(ids);
        return;
    }
    pthread_mutex_lock(&s->un_mu);
    cm_strmap_free(s->un_ids);
    s->un_ids = ids;
    s->un_gen++;
    pthread_mutex_unlock(&s->un_mu);
}

/* The unavailable items in version v's rows; called with un_mu held. On
 * out of memory the rows found so far are kept (retrieval may then return
 * an unavailable item: better than no answer). */
static void map_unavailable(serve *s, svc_mver *v)
{
    v->n_un_rows = 0;
    v->un_gen = s->un_gen;
    int n = s->un_ids ? cm_strmap_count(s->un_ids) : 0;
    for (int i = 0; i < n; i++) {
        int32_t row = svc_model_item(&v->model, cm_strmap_key(s->un_ids, i));
        if (row <= 0)
            continue;
        if (v->n_un_rows == v->cap_un_rows) {
            int cap = v->cap_un_rows ? 2 * v->cap_un_rows : 256;
            int32_t *r = realloc(v->un_rows, sizeof(int32_t) * (size_t)cap);
            if (!r)
                return;
            v->un_rows = r;
            v->cap_un_rows = cap;
        }
        v->un_rows[v->n_un_rows++] = row;
    }
}

/* Fills a slot's request on its user's variant, pinning that variant's
 * current version (whatever happens next, the slot holds it until
 * slot_unpin); called with un_mu held so that the rules' pointers stay
 * valid. */
static int fill_slot(serve *s, svc_slot *slot, const fs_user_state *st, char *err, size_t errsz)
{
    slot->variant = svc_models_variant(s->models, slot->user);
    svc_mver *v = slot->ver = svc_models_acquire(s->models, slot->variant);
    if (v->un_gen != s->un_gen)
        map_unavailable(s, v);
    slot->job.scorer = v->scorer;
    svc_rank_rules rules = {.exclude_seen = s->cfg->ranking.exclude_seen,
                            .exclude_unavailable = s->cfg->ranking.exclude_unavailable,
                            .k = s->cfg->ranking.k, .unavailable = s->un_ids,
                            .unavailable_rows = v->un_rows, .n_unavailable_rows = v->n_un_rows};
    return svc_slot_fill(slot, &v->model, st, &rules, err, errsz);
}

/* ---- the consumer loop ------------------------------------------------------------------------------- */

static int event_kind(const svc_event *ev) { return (int)ev->kind; }

static void dead_letter_msg(serve *s, msg_state *ms)
{
    rd_kafka_message_t *m = ms->m;
    dead_letter *d = malloc(sizeof *d);
    if (!d)
        abort(); /* a few bytes; without them the event could never be committed */
    d->partition = m->partition;
    d->offset = m->offset;
    char src[64];
    snprintf(src, sizeof src, "%d:%lld", (int)m->partition, (long long)m->offset);
    atomic_fetch_add(&s->metrics.events[ms->kind][SVC_OUT_DEAD_LETTER], 1);
    svc_debug("dead-letter %s: %s", src, ms->reason);
    rd_kafka_headers_t *h = rd_kafka_headers_new(2);
    rd_kafka_header_add(h, "rankd-error", -1, ms->reason, -1);
    rd_kafka_header_add(h, "rankd-source", -1, src, -1);
    produce_or_keep(s, 1, m->payload, m->len, m->key, m->key_len, h, d, FULL_POLL);
    rd_kafka_headers_destroy(h);
}

/* A string as JSON text, malloc'd (NULL on out of memory). */
static char *json_quote(const char *str)
{
    json_t *j = json_string(str);
    char *t = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    return t;
}

/* Parses one message and queues its feature work. */
static void take_message(serve *s, msg_state *ms)
{
    rd_kafka_message_t *m = ms->m;
    svc_event ev;
    ms->valid = 0;
    ms->kind = SVC_EVK_INVALID;
    ms->slot = NULL;
    ms->trigger = 0;
    if (svc_event_parse(s->parser, m->payload, m->len, &ev, ms->reason, sizeof ms->reason))
        return;
    ms->kind = event_kind(&ev);
    int rc = 0;
    switch (ev.kind) {
    case SVC_EV_INTERACTION:
        rc = fs_batch_interaction(s->fb, ev.id, ev.timestamp, ev.user, ev.item, ev.type);
        ms->trigger = svc_config_triggers(s->cfg, ev.type);
        break;
    case SVC_EV_RANKING:
        ms->trigger = 1;
        break;
    case SVC_EV_ITEM:
    case SVC_EV_USER: {
        /* fields are stored as JSON text: strings quoted, so "42" and 42 differ */
        const char *names[SVC_MAX_FIELDS], *values[SVC_MAX_FIELDS];
        char *owned[SVC_MAX_FIELDS] = {0};
        char num[SVC_MAX_FIELDS][32];
        for (int i = 0; i < ev.n_fields; i++) {
            const svc_field *f = &ev.fields[i];
            names[i] = f->name;
            if (f->kind == SVC_VAL_BOOL)
                values[i] = f->boolean ? "true" : "false";
            else if (f->kind == SVC_VAL_NUMBER)
                snprintf(num[i], sizeof num[i], "%.17g", f->number), values[i] = num[i];
            else if (f->kind == SVC_VAL_STRING)
                values[i] = owned[i] = json_quote(f->string);
            else
                values[i] = f->string;
            if (!values[i])
                values[i] = "null";
        }
        rc = ev.kind == SVC_EV_ITEM
                 ? fs_batch_item(s->fb, ev.item, svc_event_available(&ev), names, values, ev.n_fields)
                 : fs_batch_user(s->fb, ev.user, names, values, ev.n_fields);
        for (int i = 0; i < ev.n_fields; i++)
            free(owned[i]);
        break;
    }
    }
    if (rc) {
        snprintf(ms->reason, sizeof ms->reason, "the feature store refused the event's ids");
        return;
    }
    if (ms->trigger) {
        char err[256];
        while (!(ms->slot = svc_slot_get(s->slots)))
            serve_producer(s), usleep(100); /* all rankings in flight: wait for deliveries */
        ms->slot->partition = m->partition;
        ms->slot->offset = m->offset;
        ms->slot->consumed_ns = rk_now_ns();
        if (svc_slot_begin(ms->slot, &ev, err, sizeof err)) {
            snprintf(ms->reason, sizeof ms->reason, "%s", err);
            slot_put(s, ms->slot);
            ms->slot = NULL;
            return;
        }
        ms->read = fs_batch_read_user(s->fb, ev.user);
        if (ms->read < 0) { /* cannot happen: the batch holds two operations per message */
            snprintf(ms->reason, sizeof ms->reason, "internal: the feature batch is full");
            slot_put(s, ms->slot);
            ms->slot = NULL;
            return;
        }
    }
    ms->valid = 1;
}

/* One pipelined round trip for the whole round; while Redis is down the
 * same batch is retried (idempotent) with backoff, and readiness drops. */
static int exec_features(serve *s)
{
    char err[CM_ERRSZ];
    int delay_ms = 50;
    while (fs_batch_exec(s->fb, err, sizeof err)) {
        atomic_fetch_add(&s->metrics.redis_errors, 1);
        if (atomic_exchange(&s->metrics.ready_redis, 0))
            svc_error("%s; retrying", err);
        if (*s->stop)
            return -1;
        usleep((useconds_t)delay_ms * 1000);
        serve_producer(s);
        delay_ms = delay_ms < 2000 ? delay_ms * 2 : 2000;
    }
    if (!atomic_exchange(&s->metrics.ready_redis, 1))
        svc_info("redis reachable");
    return 0;
}

static void finish_round(serve *s, int n)
{
    pthread_mutex_lock(&s->un_mu);
    for (int i = 0; i < n; i++) {
        msg_state *ms = &s->round[i];
        rd_kafka_message_t *m = ms->m;
        if (!ms->valid) {
            svc_offsets_begin(s->offsets, m->partition, m->offset, 1);
            dead_letter_msg(s, ms);
            continue;
        }
        if (!ms->slot) {
            svc_offsets_begin(s->offsets, m->partition, m->offset, 0);
            atomic_fetch_add(&s->metrics.events[ms->kind][SVC_OUT_APPLIED], 1);
            continue;
        }
        fs_user_state st;
        char err[256];
        fs_batch_user_state(s->fb, ms->read, &st);
        svc_offsets_begin(s->offsets, m->partition, m->offset, 1);
        atomic_fetch_add(&s->metrics.events[ms->kind][SVC_OUT_RANKED], 1);
        if (fill_slot(s, ms->slot, &st, err, sizeof err) == 0 &&
            !(ms->slot->job.req.cands && ms->slot->job.req.n_cands == 0)) {
            ms->slot->job.done = job_done;
            ms->slot->job.ctx = s;
            rk_batcher_submit(s->batcher, &ms->slot->job);
        } else { /* nothing to rank (every item unavailable): an empty list */
            ms->slot->job.req.n_out = 0;
            job_done(&ms->slot->job, 0, NULL, s);
        }
    }
    pthread_mutex_unlock(&s->un_mu);
}

/* Once a second: can the consumer reach a broker (a metadata request for
 * the input topic)? And the batcher's batch sizes, for /metrics. */
static void check_health(serve *s)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(s->consumer, s->cfg->kafka.input_topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    int ok = t && rd_kafka_metadata(s->consumer, 0, t, &md, 200) == RD_KAFKA_RESP_ERR_NO_ERROR;
    if (md)
        rd_kafka_metadata_destroy(md);
    if (t)
        rd_kafka_topic_destroy(t);
    if (ok && !atomic_exchange(&s->metrics.ready_kafka, 1))
        svc_info("kafka reachable");
    rk_batcher_stats bs;
    rk_batcher_stats_get(s->batcher, &bs);
    for (int i = 0; i < SVC_BATCH_BUCKETS; i++)
        atomic_store(&s->metrics.batch_size[i], bs.size_hist[i]);
}

static void update_lag(serve *s)
{
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(s->consumer, &a) || !a)
        return;
    rd_kafka_position(s->consumer, a);
    int64_t lag = 0;
    for (int i = 0; i < a->cnt; i++) {
        int64_t lo, hi;
        if (a->elems[i].offset >= 0 &&
            rd_kafka_get_watermark_offsets(s->consumer, a->elems[i].topic, a->elems[i].partition, &lo, &hi) == 0)
            lag += hi > a->elems[i].offset ? hi - a->elems[i].offset : 0;
    }
    atomic_store(&s->metrics.consumer_lag, lag);
    rd_kafka_topic_partition_list_destroy(a);
}

/* Set by SIGHUP (or svc_serve_reload); the consumer loop hands it on. */
static volatile sig_atomic_t reload_flag;

void svc_serve_reload(void) { reload_flag = 1; }

static void consume(serve *s)
{
    const int cap = s->cfg->kafka.poll_batch;
    int64_t last_lag = 0;
    while (!*s->stop) {
        if (reload_flag) {
            reload_flag = 0;
            svc_info("reload requested (SIGHUP): checking the model artifacts");
            svc_models_reload(s->models);
        }
        int n = 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->consumer, s->cfg->kafka.poll_timeout_ms);
        while (m) {
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                    atomic_fetch_add(&s->metrics.kafka_errors, 1);
                    svc_warn("consumer: %s", rd_kafka_message_errstr(m));
                }
                rd_kafka_message_destroy(m);
            } else {
                s->round[n++].m = m;
            }
            m = n < cap ? rd_kafka_consumer_poll(s->consumer, 0) : NULL;
        }
        fs_batch_reset(s->fb);
        for (int i = 0; i < n; i++) {
            msg_state *ms = &s->round[i];
            if (ms->m->len > (size_t)s->cfg->kafka.max_event_bytes) {
                ms->valid = 0;
                ms->kind = SVC_EVK_INVALID;
                ms->slot = NULL;
                snprintf(ms->reason, sizeof ms->reason, "event of %zu bytes exceeds %d", ms->m->len,
                         s->cfg->kafka.max_event_bytes);
            } else {
                take_message(s, ms);
            }
        }
        if (n && exec_features(s) == 0)
            finish_round(s, n);
        else /* stopping while Redis is down: the round will be consumed again */
            for (int i = 0; i < n; i++)
                if (s->round[i].slot)
                    slot_put(s, s->round[i].slot);
        for (int i = 0; i < n; i++)
            rd_kafka_message_destroy(s->round[i].m);
        refresh_unavailable(s);
        serve_producer(s);
        if (rk_now_ns() - last_lag > 1000000000LL) {
            update_lag(s);
            check_health(s);
            last_lag = rk_now_ns();
        }
    }
}

/* ---- HTTP: POST /v1/rank -------------------------------------------------------------------------------- */

static void free_parser(void *p) { svc_parser_free(p); }

static void http_error(int status, const char *msg, int *st, char **resp, size_t *len)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    *resp = o ? json_dumps(o, JSON_COMPACT) : NULL;
    *len = *resp ? strlen(*resp) : 0;
    *st = status;
    json_decref(o);
}

static void http_rank(void *ctx, const char *body, size_t len, int *status, char **resp, size_t *resp_len)
{
    serve *s = ctx;
    int64_t t0 = rk_now_ns();
    svc_parser *p = pthread_getspecific(s->http_parser);
    if (!p) { /* one parser per HTTP thread, made on its first request */
        svc_event_limits lim = {.max_bytes = (size_t)s->cfg->http.max_body_bytes,
                                .max_items = s->cfg->ranking.max_candidates};
        if (!(p = svc_parser_new(&lim)) || pthread_setspecific(s->http_parser, p)) {
            svc_parser_free(p);
            return http_error(500, "out of memory", status, resp, resp_len);
        }
    }
    svc_event ev;
    svc_slot *slot;
    char reason[256];
    int bad = svc_rank_body(p, s->slots, body, len, &ev, &slot, reason, sizeof reason);
    if (bad)
        return http_error(bad, reason, status, resp, resp_len);
    slot->partition = -1;
    slot->consumed_ns = t0;
    pthread_mutex_lock(&s->http_mu);
    fs_batch_reset(s->fb_http);
    int h = fs_batch_read_user(s->fb_http, ev.user);
    char err[CM_ERRSZ];
    fs_user_state st;
    if (h < 0 || fs_batch_exec(s->fb_http, err, sizeof err)) {
        atomic_fetch_add(&s->metrics.redis_errors, 1);
        pthread_mutex_unlock(&s->http_mu);
        slot_put(s, slot);
        return http_error(503, "feature store unavailable", status, resp, resp_len);
    }
    fs_batch_user_state(s->fb_http, h, &st);
    pthread_mutex_lock(&s->un_mu);
    int rc = fill_slot(s, slot, &st, reason, sizeof reason);
    pthread_mutex_unlock(&s->un_mu);
    pthread_mutex_unlock(&s->http_mu);
    if (rc) {
        slot_put(s, slot);
        return http_error(400, reason, status, resp, resp_len);
    }
    if (slot->job.req.n_cands > 0) {
        slot->job.done = job_done;
        slot->job.ctx = s;
        rk_batcher_submit(s->batcher, &slot->job);
        pthread_mutex_lock(&slot->mu);
        while (!slot->finished)
            pthread_cond_wait(&slot->cv, &slot->mu);
        pthread_mutex_unlock(&slot->mu);
    } else {
        slot->job.req.n_out = 0;
    }
    if (slot->status) {
        http_error(500, slot->err, status, resp, resp_len);
    } else {
        char *out = malloc(OUT_BYTES);
        int n = out ? svc_slot_json(slot, &slot->ver->model, (rk_now_ns() - t0) / 1000, out, OUT_BYTES) : -1;
        if (n < 0) {
            free(out);
            http_error(500, "answer too large", status, resp, resp_len);
        } else {
            *resp = out;
            *resp_len = (size_t)n;
            *status = 200;
        }
    }
    atomic_fetch_add(&s->metrics.events[SVC_EVK_RANKING][SVC_OUT_RANKED], 1);
    slot_put(s, slot);
}

/* ---- start and stop ------------------------------------------------------------------------------------ */

static int open_features(serve *s, fs_store **fs, fs_batch **fb, int ops, char *err, size_t errsz)
{
    return svc_features_open(s->cfg, svc_models_max_hist(s->models), ops, fs, fb, err, errsz);
}

static int start(serve *s, char *err, size_t errsz)
{
    const svc_config *c = s->cfg;
    if (!c->model.path || !*c->model.path)
        return cm_errf(err, errsz, "model.path is not set: which artifact should rankd serve?");
    rk_scorer_opts so = {.max_batch = c->batching.max_batch, .max_cands = c->ranking.max_candidates,
                         .max_k = c->ranking.k, .max_exclude = MAX_EXCLUDE, .retrieve_n = c->ranking.retrieve_n,
                         .threads = c->model.threads, .device = c->model.device};
    if (svc_models_new(&s->models, c, &so, &s->metrics, err, errsz))
        return -1;
    atomic_store(&s->metrics.ready_model, 1);
    rk_batcher_opts bo = {.max_batch = c->batching.max_batch, .max_wait_us = c->batching.max_wait_us,
                          .latency_target_us = c->batching.latency_target_us};
    svc_slot_limits sl = {.max_hist = svc_models_max_hist(s->models), .max_exclude = MAX_EXCLUDE,
                          .max_cands = c->ranking.max_candidates, .k = c->ranking.k,
                          .id_bytes = (size_t)c->ranking.max_candidates * (SVC_MAX_ID + 1)};
    svc_event_limits el = {.max_bytes = (size_t)c->kafka.max_event_bytes, .max_items = c->ranking.max_candidates};
    s->slots = svc_slots_new(N_SLOTS, &sl);
    s->offsets = svc_offsets_new();
    s->parser = svc_parser_new(&el);
    s->round = calloc((size_t)c->kafka.poll_batch, sizeof *s->round);
    s->failed = calloc(N_SLOTS, sizeof *s->failed);
    /* The slots are what ranking.max_candidates sizes (N_SLOTS of them, each
     * with room for that many ids): say so, since that key is the likely cause. */
    if (!s->slots)
        return cm_errf(err, errsz, "out of memory for %d rankings in flight of up to ranking.max_candidates (%d) "
                       "items each; lower ranking.max_candidates", N_SLOTS, c->ranking.max_candidates);
    if (!s->offsets || !s->parser || !s->round || !s->failed)
        return cm_errf(err, errsz, "out of memory");
    if (rk_batcher_new(&s->batcher, NULL, &bo, err, errsz) || /* every job names its model's scorer */
        open_features(s, &s->fs, &s->fb, 2 * c->kafka.poll_batch, err, errsz) || /* a write + a read each */
        open_features(s, &s->fs_http, &s->fb_http, 1, err, errsz))
        return -1;
    atomic_store(&s->metrics.ready_redis, 1);
    if (start_kafka(s, err, errsz))
        return -1;
    check_health(s);
    if (c->http.enabled) {
        svc_http_opts ho = {.bind = c->http.bind, .port = c->http.port, .token = c->http.token,
                            .max_body = (size_t)c->http.max_body_bytes, .rate_rps = c->http.rate_limit_rps,
                            .rate_burst = c->http.rate_limit_burst, .threads = 2};
        if (svc_http_start(&s->http, &ho, &s->metrics, http_rank, s, err, errsz))
            return -1;
        svc_info("http listening on %s:%d", c->http.bind, svc_http_port(s->http));
    }
    return svc_models_start(s->models, err, errsz);
}

/* Stop consuming; let every ranking in flight reach the broker (or fail);
 * store and commit what is done. */
static void finish(serve *s)
{
    if (!s->consumer)
        return;
    int64_t deadline = rk_now_ns() + 10000000000LL;
    while (s->slots && svc_slots_free_count(s->slots) < N_SLOTS && rk_now_ns() < deadline) {
        serve_producer(s);
        usleep(1000);
    }
    rd_kafka_flush(s->producer, 10000);
    serve_producer(s);
    rd_kafka_resp_err_t e = rd_kafka_commit(s->consumer, NULL, 0);
    if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        svc_warn("final commit: %s", rd_kafka_err2str(e));
    svc_info("stopped: %lld events in flight left uncommitted (they will be consumed again)",
             (long long)svc_offsets_in_flight(s->offsets));
    rd_kafka_consumer_close(s->consumer);
}

/* Messages still kept at the end: their events were not committed and
 * will be consumed again; slots are freed with the slot pool. */
static void free_kept(serve *s)
{
    while (s->kept) {
        kept_msg *k = s->kept;
        s->kept = k->next;
        if (k->dead_letter)
            free(k->opaque);
        if (k->hdrs)
            rd_kafka_headers_destroy(k->hdrs);
        free(k);
    }
}

static void teardown(serve *s)
{
    svc_http_stop(s->http);
    rk_batcher_free(s->batcher); /* finishes queued jobs first */
    if (s->consumer)
        rd_kafka_destroy(s->consumer);
    if (s->producer)
        rd_kafka_destroy(s->producer);
    fs_batch_free(s->fb);
    fs_batch_free(s->fb_http);
    fs_close(s->fs);
    fs_close(s->fs_http);
    svc_parser_free(s->parser);
    svc_offsets_free(s->offsets);
    svc_slots_free(s->slots);
    svc_models_free(s->models); /* after the batcher: no ranking holds a version any more */
    cm_strmap_free(s->un_ids);
    free(s->round);
    free(s->failed);
    pthread_mutex_destroy(&s->http_mu);
    pthread_key_delete(s->http_parser);
    pthread_mutex_destroy(&s->un_mu);
    pthread_mutex_destroy(&s->fail_mu);
    free_kept(s);
    pthread_mutex_destroy(&s->keep_mu);
    svc_metrics_destroy(&s->metrics);
}

int svc_serve(const svc_config *cfg, volatile sig_atomic_t *stop, svc_ready_fn ready, void *ready_ctx, char *err,
              size_t errsz)
{
    serve s;
    memset(&s, 0, sizeof s);
    svc_metrics_init(&s.metrics);
    s.cfg = cfg;
    svc_log_setup(cfg->logging.level, cfg->logging.format);
    s.stop = stop;
    pthread_mutex_init(&s.http_mu, NULL);
    pthread_key_create(&s.http_parser, free_parser);
    pthread_mutex_init(&s.un_mu, NULL);
    pthread_mutex_init(&s.fail_mu, NULL);
    pthread_mutex_init(&s.keep_mu, NULL);
    int rc = start(&s, err, errsz);
    if (rc == 0) {
        svc_info("consuming %s as group %s from %s", cfg->kafka.input_topic, cfg->kafka.group_id, cfg->kafka.brokers);
        if (ready)
            ready(ready_ctx, s.http ? svc_http_port(s.http) : 0);
        consume(&s);
        finish(&s);
    }
    teardown(&s);
    return rc;
}

/* ---- rankd serve ----------------------------------------------------------------------------------------- */

static volatile sig_atomic_t stopping;
static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static void on_hup(int sig)
{
    (void)sig;
    reload_flag = 1;
}

int svc_cmd_serve(int argc, char **argv)
{
    const char *path = NULL;
    int help = 0;
    const svc_arg table[] = {{"config", ARG_STR, &path, 0, 0, "YAML config (default: configs/default.yaml, embedded)"},
                             {"help", ARG_FLAG, &help, 0, 0, "this help"},
                             {NULL, 0, NULL, 0, 0, NULL}};
    const char *pos[1];
    int npos;
    char err[CM_ERRSZ] = "";
    if (svc_args_parse(argc, argv, table, pos, 0, &npos, err, sizeof err) || help) {
        if (err[0])
            fprintf(stderr, "rankd serve: %s\n", err);
        fprintf(stderr, "usage: rankd serve [--config FILE]   (keys also from RANKD_* variables)\n");
        svc_args_usage(table);
        return help ? 0 : 2;
    }
    svc_config cfg;
    if (svc_config_load(&cfg, path, err, sizeof err)) {
        fprintf(stderr, "rankd serve: %s\n", err);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, NULL);
    int rc = svc_serve(&cfg, &stopping, NULL, NULL, err, sizeof err);
    if (rc)
        svc_error("%s", err);
    svc_config_free(&cfg);
    return rc ? 1 : 0;
}
