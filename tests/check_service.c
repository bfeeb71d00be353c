/* tests/check_service.c — `rankd serve` end to end, in-process, against a
 * real redis-server and a Kafka-protocol broker (librdkafka's mock cluster)
 * on loopback: events in, ranked lists out, checked against the model core
 * scoring the same inputs; exclusions; bad events dead-lettered with their
 * reason; the HTTP endpoints; a restart in the middle of a stream that
 * loses no event and applies none twice; a graceful stop that commits. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/train_model.h"
#include "ranker/rk_scorer.h"
#include "service/config.h"
#include "service/rankreq.h"
#include "service/serve.h"
#include "tests/harness_http.h"
#include "tests/harness_kafka.h"
#include "tests/harness_redis.h"
#include "tests/harness_serve.h"
#include "tests/harness_model.h"
#include "tests/testutil.h"

#define N_ITEMS 40
#define K 5
#define RETRIEVE 20
#define PARTS 2

static const char *const TOPICS[] = {"ev", "out", "dlq"};

/* ---- the config: the service runs in a thread (tests/harness_serve.h) ------------------------------ */

static char model_path[TU_PATH], config_path[TU_PATH];

static void write_config(const th_kafka *k, const th_redis *rd)
{
    FILE *f = fopen(config_path, "w");
    ck_assert(f != NULL);
    fprintf(f, "kafka:\n  brokers: \"%s\"\n  group_id: svc-test\n  input_topic: ev\n  output_topic: out\n"
               "  dead_letter_topic: dlq\n  poll_timeout_ms: 20\n  max_event_bytes: 2048\n"
               "  properties:\n    session.timeout.ms: \"6000\"\n    heartbeat.interval.ms: \"500\"\n"
               "redis:\n  port: %d\n  prefix: \"t:\"\n"
               "model:\n  path: \"%s\"\n  threads: 2\n"
               "ranking:\n  retrieve_n: %d\n  k: %d\n  trigger_types: [click, purchase]\n"
               "http:\n  port: 0\n"
               "logging:\n  level: warn\n",
            k->brokers, rd->port, model_path, RETRIEVE, K);
    fclose(f);
}

/* ---- what the test sent, and what the model core says ---------------------------------------------- */

typedef struct sent {
    char user[16], item[16], type[16], id[16];
} sent;

static sent log_[256];
static int n_log;

static void send_interaction(th_kafka *k, const char *user, int item, const char *type)
{
    sent *s = &log_[n_log];
    snprintf(s->user, sizeof s->user, "%s", user);
    snprintf(s->item, sizeof s->item, "i%d", item);
    snprintf(s->type, sizeof s->type, "%s", type);
    snprintf(s->id, sizeof s->id, "e%d", n_log);
    char buf[256];
    int n = snprintf(buf, sizeof buf, "{\"event\":\"interaction\",\"id\":\"%s\",\"timestamp\":%d,\"user\":\"%s\","
                     "\"item\":\"%s\",\"type\":\"%s\"}", s->id, 1000 + n_log, user, s->item, type);
    n_log++;
    th_kafka_send(k, "ev", user, buf, (size_t)n);
}

static int is_trigger(const sent *s) { return !strcmp(s->type, "click") || !strcmp(s->type, "purchase"); }

/* The model core's answer for the trigger at log index t: the user's
 * events up to it as history, their items excluded. */
static void expected(const svc_model *sm, rk_scorer *sc, int t, int32_t *items, float *scores, int *n)
{
    int32_t hist[64], acts[64], excl[64];
    int nh = 0, ne = 0;
    for (int i = 0; i <= t; i++) {
        if (strcmp(log_[i].user, log_[t].user))
            continue;
        hist[nh] = svc_model_item(sm, log_[i].item);
        acts[nh++] = svc_model_action(sm, log_[i].type);
        int dup = 0;
        for (int j = 0; j < ne; j++)
            dup |= excl[j] == hist[nh - 1];
        if (!dup)
            excl[ne++] = hist[nh - 1];
    }
    int h0 = nh > sm->m->cfg.max_hist ? nh - sm->m->cfg.max_hist : 0;
    rk_request r = {.hist_items = hist + h0, .hist_actions = acts + h0, .n_hist = nh - h0, .exclude = excl,
                    .n_exclude = ne, .k = K, .out_items = items, .out_scores = scores};
    char err[CM_ERRSZ];
    ck_assert_msg(rk_scorer_rank(sc, &r, 1, err, sizeof err) == 0, "%s", err);
    *n = r.n_out;
}

/* ---- reading the outputs ----------------------------------------------------------------------------- */

typedef struct outputs {
    json_t *by_id[256]; /* the first ranked list of each event id eN */
    int count, dupes;
    int dead, dead_reasons;
    char reasons[8][256];
} outputs;

static void on_output(void *ctx, const rd_kafka_message_t *m)
{
    outputs *o = ctx;
    json_t *j = json_loadb(m->payload, m->len, 0, NULL);
    ck_assert_msg(j != NULL, "output not JSON: %.*s", (int)m->len, (const char *)m->payload);
    const char *id = json_string_value(json_object_get(j, "id"));
    ck_assert(id != NULL);
    o->count++;
    int idx = id[0] == 'e' ? atoi(id + 1) : 255;
    if (o->by_id[idx]) {
        o->dupes++;
        json_decref(j);
    } else {
        o->by_id[idx] = j;
    }
}

static void on_dead(void *ctx, const rd_kafka_message_t *m)
{
    outputs *o = ctx;
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t len;
    if (rd_kafka_message_headers(m, &h) == 0 && rd_kafka_header_get_last(h, "rankd-error", &v, &len) == 0 &&
        o->dead < 8) {
        snprintf(o->reasons[o->dead], sizeof o->reasons[0], "%.*s", (int)len, (const char *)v);
        o->dead_reasons++;
    }
    o->dead++;
}

static void outputs_free(outputs *o)
{
    for (int i = 0; i < 256; i++)
        json_decref(o->by_id[i]);
}

/* ---- HTTP ---------------------------------------------------------------------------------------------------- */

static long http(int port, const char *path, const char *post, char *out)
{
    return th_http(port, post ? "POST" : "GET", path, NULL, post, out, 65536);
}

/* ---- tests ------------------------------------------------------------------------------------------------------ */

static void setup_world(th_kafka *k, th_redis *rd)
{
    n_log = 0;
    snprintf(model_path, sizeof model_path, "%s/model.safetensors", tu_tmp_root());
    snprintf(config_path, sizeof config_path, "%s/rankd.yaml", tu_tmp_root());
    th_write_model(model_path, N_ITEMS, 8, 5, 1, "svc-test");
    th_redis_start(rd, NULL);
    th_kafka_start(k, TOPICS, 3, PARTS);
    write_config(k, rd);
}

START_TEST(test_stream)
{
    th_kafka k;
    th_redis rd;
    setup_world(&k, &rd);
    th_serve run;
    th_serve_start(&run, config_path);
    const char *users[3] = {"alice", "bob", "carol"};
    const char *types[4] = {"view", "click", "view", "purchase"};
    for (int step = 0; step < 8; step++)
        for (int u = 0; u < 3; u++)
            send_interaction(&k, users[u], 1 + (step * 7 + u * 11) % N_ITEMS, types[(step + u) % 4]);
    /* bad events: not JSON, missing field, unknown event, over max_event_bytes */
    th_kafka_send(&k, "ev", "x", "{not json", 9);
    const char *no_item = "{\"event\":\"interaction\",\"id\":\"b1\",\"timestamp\":1,\"user\":\"u\",\"type\":\"click\"}";
    const char *unknown = "{\"event\":\"clicks\",\"id\":\"b2\",\"timestamp\":1}";
    th_kafka_send(&k, "ev", "x", no_item, strlen(no_item));
    th_kafka_send(&k, "ev", "x", unknown, strlen(unknown));
    char big[3000];
    memset(big, ' ', sizeof big);
    memcpy(big, "{\"event\":\"user\",\"id\":\"b3\",\"timestamp\":1,\"user\":\"u\"}", 49);
    th_kafka_send(&k, "ev", "x", big, sizeof big);
    /* a ranking event ranks exactly its items, unknown ones included */
    const char *rank = "{\"event\":\"ranking\",\"id\":\"e200\",\"timestamp\":5000,\"user\":\"alice\","
                       "\"items\":[{\"id\":\"i3\"},{\"id\":\"i9\"},{\"id\":\"zzz\"}]}";
    th_kafka_send(&k, "ev", "alice", rank, strlen(rank));

    int triggers = 0;
    for (int i = 0; i < n_log; i++)
        triggers += is_trigger(&log_[i]);
    outputs o;
    memset(&o, 0, sizeof o);
    th_kafka_read_all(&k, "out", PARTS, triggers + 1, 20000, on_output, &o);
    th_kafka_read_all(&k, "dlq", PARTS, 4, 10000, on_dead, &o);
    printf("stream: %d events sent (%d triggers, 1 ranking, 4 bad) -> %d ranked lists (%d duplicates), "
           "%d dead-lettered\n", n_log + 5, triggers, o.count, o.dupes, o.dead);
    for (int i = 0; i < o.dead_reasons && i < 4; i++)
        printf("  dead letter reason: %s\n", o.reasons[i]);
    ck_assert_int_eq(o.count - o.dupes, triggers + 1);
    ck_assert_int_eq(o.dead, 4);
    ck_assert_int_eq(o.dead_reasons, 4);

    /* every list against the model core */
    svc_model sm;
    char err[CM_ERRSZ];
    ck_assert_msg(svc_model_load(&sm, model_path, err, sizeof err) == 0, "%s", err);
    rk_scorer *sc;
    rk_scorer_opts so = {.max_batch = 1, .max_cands = 16, .max_k = K, .max_exclude = 64, .retrieve_n = RETRIEVE,
                         .threads = 1, .device = "cpu"};
    ck_assert_msg(rk_scorer_new(&sc, sm.m, &so, err, sizeof err) == 0, "%s", err);
    double worst = 0;
    for (int t = 0; t < n_log; t++) {
        if (!is_trigger(&log_[t]))
            continue;
        json_t *j = o.by_id[t];
        ck_assert_msg(j != NULL, "no ranked list for event e%d", t);
        int32_t items[K];
        float scores[K];
        int n;
        expected(&sm, sc, t, items, scores, &n);
        json_t *list = json_object_get(j, "items");
        ck_assert_int_eq((int)json_array_size(list), n);
        for (int i = 0; i < n; i++) {
            json_t *it = json_array_get(list, (size_t)i);
            const char *id = json_string_value(json_object_get(it, "item"));
            ck_assert_msg(!strcmp(id, sm.m->item_ids[items[i]]), "e%d position %d: %s, the model core says %s", t,
                          i, id, sm.m->item_ids[items[i]]);
            worst = fmax(worst, fabs(json_number_value(json_object_get(it, "score")) - scores[i]));
            for (int e = 0; e <= t; e++) /* exclusions: nothing the user already saw */
                ck_assert_msg(strcmp(log_[e].user, log_[t].user) || strcmp(log_[e].item, id),
                              "e%d recommends %s, seen by %s", t, id, log_[t].user);
        }
        ck_assert_str_eq(json_string_value(json_object_get(j, "model")), sm.tag);
    }
    printf("stream: %d lists match the model core (items exactly, scores within %.2g)\n", triggers, worst);
    ck_assert(worst < 1e-4);
    json_t *r = o.by_id[200];
    ck_assert(r != NULL && json_array_size(json_object_get(r, "items")) == 3);

    /* HTTP */
    static char body[65536];
    ck_assert_int_eq(http(run.http_port, "/healthz", NULL, body), 200);
    ck_assert_int_eq(http(run.http_port, "/readyz", NULL, body), 200);
    ck_assert_int_eq(http(run.http_port, "/v1/rank", rank, body), 200);
    ck_assert_msg(strstr(body, "\"items\":[") && strstr(body, "\"zzz\""), "%s", body);
    ck_assert_int_eq(http(run.http_port, "/v1/rank", "{\"event\":\"ranking\"}", body), 400);
    ck_assert_int_eq(http(run.http_port, "/metrics", NULL, body), 200);
    ck_assert_msg(strstr(body, "rankd_dead_lettered_total 4"), "metrics: %.400s", body);
    ck_assert_int_eq(http(run.http_port, "/nope", NULL, body), 404);
    printf("http: /healthz /readyz /v1/rank /metrics answered\n");
    rk_scorer_free(sc);
    svc_model_free(&sm);
    outputs_free(&o);
    th_serve_stop(&run);
    th_kafka_stop(&k);
    th_redis_stop(&rd);
}
END_TEST

/* Items marked unavailable by an item event leave every later ranking,
 * retrieved or given; marked available again, they come back. */
static int list_has(json_t *j, const char *item)
{
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(j, "items"), i, it) if (!strcmp(json_string_value(json_object_get(it, "item")), item))
        return 1;
    return 0;
}

START_TEST(test_unavailable)
{
    th_kafka k;
    th_redis rd;
    setup_world(&k, &rd);
    th_serve run;
    th_serve_start(&run, config_path);
    static char body[65536];
    const char *rank = "{\"event\":\"ranking\",\"id\":\"q\",\"timestamp\":1,\"user\":\"zed\","
                       "\"items\":[{\"id\":\"i1\"},{\"id\":\"i2\"},{\"id\":\"i3\"}]}";
    ck_assert_int_eq(http(run.http_port, "/v1/rank", rank, body), 200);
    json_t *before = json_loads(body, 0, NULL);
    /* the best retrieved item for a fresh user, then marked unavailable */
    send_interaction(&k, "zed", 5, "click");
    outputs o;
    memset(&o, 0, sizeof o);
    th_kafka_read_all(&k, "out", PARTS, 1, 20000, on_output, &o);
    ck_assert(o.by_id[0] != NULL);
    const char *top = json_string_value(json_object_get(json_array_get(json_object_get(o.by_id[0], "items"), 0), "item"));
    char top_id[16];
    snprintf(top_id, sizeof top_id, "%s", top);
    char ev[256];
    int n = snprintf(ev, sizeof ev, "{\"event\":\"item\",\"id\":\"it1\",\"timestamp\":2,\"item\":\"%s\","
                     "\"fields\":[{\"name\":\"available\",\"value\":false}]}", top_id);
    th_kafka_send(&k, "ev", top_id, ev, (size_t)n);
    n = snprintf(ev, sizeof ev, "{\"event\":\"item\",\"id\":\"it2\",\"timestamp\":2,\"item\":\"i2\","
                 "\"fields\":[{\"name\":\"available\",\"value\":false}]}");
    th_kafka_send(&k, "ev", "i2", ev, (size_t)n);
    th_sleep_ms(2500); /* applied, and the service's view of unavailable items refreshed (1 s) */
    send_interaction(&k, "zed", 6, "click");
    outputs_free(&o);
    memset(&o, 0, sizeof o);
    th_kafka_read_all(&k, "out", PARTS, 2, 20000, on_output, &o);
    ck_assert(o.by_id[1] != NULL);
    ck_assert_msg(!list_has(o.by_id[1], top_id), "%s is unavailable but was recommended", top_id);
    ck_assert_int_eq(http(run.http_port, "/v1/rank", rank, body), 200);
    json_t *after = json_loads(body, 0, NULL);
    ck_assert(list_has(before, "i2") && !list_has(after, "i2"));
    n = snprintf(ev, sizeof ev, "{\"event\":\"item\",\"id\":\"it3\",\"timestamp\":3,\"item\":\"i2\","
                 "\"fields\":[{\"name\":\"available\",\"value\":true}]}");
    th_kafka_send(&k, "ev", "i2", ev, (size_t)n);
    th_sleep_ms(2500);
    ck_assert_int_eq(http(run.http_port, "/v1/rank", rank, body), 200);
    json_t *again = json_loads(body, 0, NULL);
    ck_assert(list_has(again, "i2"));
    printf("unavailable: %s left the retrieved list, i2 the given one (%zu -> %zu items) and came back (%zu)\n",
           top_id, json_array_size(json_object_get(before, "items")), json_array_size(json_object_get(after, "items")),
           json_array_size(json_object_get(again, "items")));
    json_decref(again);
    json_decref(before);
    json_decref(after);
    outputs_free(&o);
    th_serve_stop(&run);
    th_kafka_stop(&k);
    th_redis_stop(&rd);
}
END_TEST

/* Stop in the middle of a stream, start again: every trigger gets its list
 * (duplicates allowed: at-least-once), every event applied exactly once,
 * and a graceful stop commits everything done. */
START_TEST(test_restart)
{
    th_kafka k;
    th_redis rd;
    setup_world(&k, &rd);
    const char *users[4] = {"u1", "u2", "u3", "u4"};
    th_serve run;
    th_serve_start(&run, config_path);
    for (int i = 0; i < 20; i++)
        send_interaction(&k, users[i % 4], 1 + (i * 3) % N_ITEMS, i % 3 ? "click" : "view");
    th_serve_stop(&run); /* mid-stream: some events may not have been consumed yet */
    for (int i = 20; i < 40; i++)
        send_interaction(&k, users[i % 4], 1 + (i * 3) % N_ITEMS, i % 3 ? "click" : "view");
    th_serve_start(&run, config_path);
    int triggers = 0;
    for (int i = 0; i < n_log; i++)
        triggers += is_trigger(&log_[i]);
    outputs o;
    memset(&o, 0, sizeof o);
    th_kafka_read_all(&k, "out", PARTS, triggers, 20000, on_output, &o);
    th_serve_stop(&run);
    int missing = 0;
    for (int t = 0; t < n_log; t++)
        missing += is_trigger(&log_[t]) && !o.by_id[t];
    /* each user's history holds each of its events exactly once */
    redisContext *rc = th_redis_connect(&rd);
    int applied = 0;
    for (int u = 0; u < 4; u++) {
        redisReply *rep = redisCommand(rc, "ZCARD t:h:%s", users[u]);
        applied += (int)rep->integer;
        freeReplyObject(rep);
    }
    redisFree(rc);
    printf("restart: %d events sent, %d applied (max_hist 8 per user keeps at most 32), %d triggers, "
           "%d lists (%d duplicates), %d lost\n", n_log, applied, triggers, o.count, o.dupes, missing);
    ck_assert_int_eq(missing, 0);
    ck_assert_int_eq(applied, 4 * 8); /* 10 distinct events per user, the newest 8 kept: none twice */
    /* graceful stop committed everything: the group's offsets are the ends */
    rd_kafka_t *c = th_kafka_client(k.brokers, RD_KAFKA_CONSUMER, "svc-test");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(PARTS);
    for (int p = 0; p < PARTS; p++)
        rd_kafka_topic_partition_list_add(l, "ev", p);
    ck_assert_int_eq(rd_kafka_committed(c, l, 5000), 0);
    int64_t committed = 0, end = 0;
    for (int p = 0; p < PARTS; p++) {
        int64_t lo, hi;
        ck_assert_int_eq(rd_kafka_query_watermark_offsets(c, "ev", p, &lo, &hi, 5000), 0);
        committed += l->elems[p].offset > 0 ? l->elems[p].offset : 0;
        end += hi;
    }
    printf("restart: committed offsets %lld of %lld\n", (long long)committed, (long long)end);
    ck_assert_int_eq(committed, end);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(c);
    outputs_free(&o);
    th_kafka_stop(&k);
    th_redis_stop(&rd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("service");
    TCase *tc = tcase_create("service");
    tcase_add_test(tc, test_stream);
    tcase_add_test(tc, test_unavailable);
    tcase_add_test(tc, test_restart);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return tu_main("check_service", s);
}
