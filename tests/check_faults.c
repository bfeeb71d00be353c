/* tests/check_faults.c — `rankd serve` under faults, against a real
 * redis-server and librdkafka's mock cluster on loopback: Redis killed and
 * restarted mid-stream; produce requests failing, the output topic's broker
 * down, every broker down; the real binary SIGKILLed under load and started
 * again; no GPU at start. Each test prints what it sent, what was applied
 * and published, what was lost (always 0) and the duplicate outputs that
 * at-least-once delivery allows (docs/service.md, "Faults").
 *
 * Every event of these tests is an interaction of user u<n> on a distinct
 * item of that user, at most MAX_HIST per user, so that the user's history
 * in Redis must hold exactly one member per event sent: a missing one is
 * an event lost, and since members are keyed by event id an event applied
 * twice could only show as an extra member or a wrong count. */
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "gpu/engine.h"
#include "ranker/rk_scorer.h"
#include "llm/train_model.h"
#include "tests/harness_kafka.h"
#include "tests/harness_redis.h"
#include "tests/harness_serve.h"
#include "tests/harness_model.h"
#include "tests/testutil.h"

#define N_ITEMS 40
#define K 5
#define RETRIEVE 20
#define PARTS 2
#define MAX_HIST 8
#define MAX_EVENTS 1024
#define API_PRODUCE 0 /* the Kafka protocol's ApiKey of a ProduceRequest */

static const char *const TOPICS[] = {"ev", "out", "dlq"};
static char model_path[TU_PATH], config_path[TU_PATH];

/* ---- the model ------------------------------------------------------------------------------- */


/* ---- the world --------------------------------------------------------------------------------- */

/* session_ms: how soon the group notices a consumer that died (the crash
 * test restarts often); props: more kafka.properties lines. */
static void write_config(const th_kafka *k, const th_redis *rd, int session_ms, const char *props)
{
    FILE *f = fopen(config_path, "w");
    ck_assert(f != NULL);
    fprintf(f, "kafka:\n  brokers: \"%s\"\n  group_id: ft\n  input_topic: ev\n  output_topic: out\n"
               "  dead_letter_topic: dlq\n  poll_timeout_ms: 20\n  commit_interval_ms: 200\n"
               "  properties:\n    session.timeout.ms: \"%d\"\n    heartbeat.interval.ms: \"300\"\n"
               "    reconnect.backoff.max.ms: \"500\"\n%s"
               "redis:\n  port: %d\n  prefix: \"f:\"\n  timeout_ms: 500\n"
               "model:\n  path: \"%s\"\n  threads: 1\n  device: cpu\n  reload_check_ms: 0\n"
               "ranking:\n  retrieve_n: %d\n  k: %d\n  trigger_types: [click]\n"
               "http:\n  port: 0\n"
               "logging:\n  level: warn\n",
            k->brokers, session_ms, props ? props : "", rd ? rd->port : 6379, model_path, RETRIEVE, K);
    fclose(f);
}

static void paths_init(void)
{
    snprintf(model_path, sizeof model_path, "%s/model.safetensors", tu_tmp_root());
    snprintf(config_path, sizeof config_path, "%s/rankd.yaml", tu_tmp_root());
    th_write_model(model_path, N_ITEMS, MAX_HIST, 5, 1, "faults-test");
}

/* ---- events ------------------------------------------------------------------------------------ */

typedef struct ev_rec {
    char user[16];
    int item, trigger;
    int32_t part;
    int64_t off;
} ev_rec;

static ev_rec log_[MAX_EVENTS];
static int n_log, n_users;

/* Event i: user u(i mod users), its (i div users)-th event, on an item no
 * other event of that user has (5j mod 40 differs for j < 8); two in
 * three are clicks (triggers). */
static int make_event(char *buf, size_t cap)
{
    ck_assert(n_log < MAX_EVENTS);
    int i = n_log++, u = i % n_users, j = i / n_users;
    ck_assert_msg(j < MAX_HIST, "user u%d would get more than %d events", u, MAX_HIST);
    ev_rec *e = &log_[i];
    snprintf(e->user, sizeof e->user, "u%d", u);
    e->item = 1 + (u * 3 + j * 5) % N_ITEMS;
    e->trigger = i % 3 != 0;
    e->part = -1;
    return snprintf(buf, cap, "{\"event\":\"interaction\",\"id\":\"e%d\",\"timestamp\":%d,\"user\":\"%s\","
                    "\"item\":\"i%d\",\"type\":\"%s\"}", i, 1000 + i, e->user, e->item,
                    e->trigger ? "click" : "view");
}

static void send_events(th_kafka *k, int n)
{
    for (int i = 0; i < n; i++) {
        char buf[256];
        int len = make_event(buf, sizeof buf);
        th_kafka_send(k, "ev", log_[n_log - 1].user, buf, (size_t)len);
    }
}

static int triggers_in(int from, int to)
{
    int n = 0;
    for (int i = from; i < to; i++)
        n += log_[i].trigger;
    return n;
}

static int event_index(const rd_kafka_message_t *m)
{
    json_t *j = json_loadb(m->payload, m->len, 0, NULL);
    ck_assert_msg(j != NULL, "not JSON: %.*s", (int)m->len, (const char *)m->payload);
    const char *id = json_string_value(json_object_get(j, "id"));
    ck_assert(id && id[0] == 'e');
    int i = atoi(id + 1);
    json_decref(j);
    ck_assert(i >= 0 && i < n_log);
    return i;
}

/* Where each event landed in the input topic, for the commit checks. */
static void on_input(void *ctx, const rd_kafka_message_t *m)
{
    (void)ctx;
    int i = event_index(m);
    log_[i].part = m->partition;
    log_[i].off = m->offset;
}

static void locate_inputs(th_kafka *k)
{
    ck_assert_int_eq(th_kafka_read_all(k, "ev", PARTS, n_log, 10000, on_input, NULL), n_log);
}

/* ---- outputs ----------------------------------------------------------------------------------- */

typedef struct outputs {
    int have[MAX_EVENTS]; /* ranked lists seen per event */
    int count, dupes, distinct;
} outputs;

/* Reads the output topic from the beginning until every trigger among the
 * first `upto` events has a list or timeout_ms passed, then 300 ms more
 * for late duplicates. Returns the triggers still without a list. */
static int collect(th_kafka *k, outputs *o, int upto, int timeout_ms)
{
    memset(o, 0, sizeof *o);
    rd_kafka_t *c = th_kafka_client(k->brokers, RD_KAFKA_CONSUMER, "th-reader");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(PARTS);
    for (int p = 0; p < PARTS; p++)
        rd_kafka_topic_partition_list_add(l, "out", p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(c, l);
    rd_kafka_topic_partition_list_destroy(l);
    int want = triggers_in(0, upto);
    double t0 = th_now_ms(), done_at = -1;
    while (th_now_ms() - t0 < timeout_ms && (done_at < 0 || th_now_ms() - done_at < 300)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 20);
        if (m && !m->err) {
            int i = event_index(m);
            ck_assert_msg(log_[i].trigger, "a list for e%d, which is no trigger", i);
            o->count++;
            o->dupes += o->have[i] > 0;
            o->distinct += o->have[i] == 0 && i < upto;
            o->have[i]++;
        }
        if (m)
            rd_kafka_message_destroy(m);
        if (done_at < 0 && o->distinct == want)
            done_at = th_now_ms();
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return want - o->distinct;
}

/* ---- Redis state ------------------------------------------------------------------------------- */

typedef struct applied {
    int applied; /* events whose member is in their user's history */
    int missing; /* events without one: lost */
    int extra;   /* members beyond one per event sent: applied twice, or foreign */
    int seen_bad; /* users whose seen set is not exactly their items */
} applied;

static void check_redis(const th_redis *rd, applied *a)
{
    memset(a, 0, sizeof *a);
    redisContext *c = th_redis_connect(rd);
    for (int u = 0; u < n_users; u++) {
        redisReply *z = redisCommand(c, "ZRANGE f:h:u%d 0 -1", u);
        redisReply *s = redisCommand(c, "SCARD f:s:u%d", u);
        ck_assert(z && z->type == REDIS_REPLY_ARRAY && s && s->type == REDIS_REPLY_INTEGER);
        int mine = 0;
        for (int i = u; i < n_log; i += n_users) {
            char prefix[24];
            int n = snprintf(prefix, sizeof prefix, "e%d\x1f", i), found = 0;
            for (size_t e = 0; e < z->elements; e++)
                found += !strncmp(z->element[e]->str, prefix, (size_t)n);
            a->applied += found >= 1;
            a->missing += found == 0;
            a->extra += found > 1 ? found - 1 : 0;
            mine += found;
        }
        a->extra += (int)z->elements - mine;
        a->seen_bad += s->integer != (n_log - u + n_users - 1) / n_users;
        freeReplyObject(z);
        freeReplyObject(s);
    }
    redisFree(c);
}

/* ---- offsets --------------------------------------------------------------------------------- */

static void committed_offsets(th_kafka *k, int64_t out[PARTS])
{
    rd_kafka_t *c = th_kafka_client(k->brokers, RD_KAFKA_CONSUMER, "ft");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(PARTS);
    for (int p = 0; p < PARTS; p++)
        rd_kafka_topic_partition_list_add(l, "ev", p);
    ck_assert_int_eq(rd_kafka_committed(c, l, 5000), 0);
    for (int p = 0; p < PARTS; p++)
        out[p] = l->elems[p].offset > 0 ? l->elems[p].offset : 0;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(c);
}

/* Triggering events below their partition's committed offset that have no
 * list in `o`: an offset committed for an unpublished result. */
static int committed_unpublished(const int64_t committed[PARTS], const outputs *o)
{
    int bad = 0;
    for (int i = 0; i < n_log; i++) {
        ck_assert_msg(log_[i].part >= 0 && log_[i].part < PARTS, "e%d not located in the input topic", i);
        bad += log_[i].trigger && log_[i].off < committed[log_[i].part] && !o->have[i];
    }
    return bad;
}

static int64_t topic_end(th_kafka *k)
{
    int64_t end = 0;
    for (int p = 0; p < PARTS; p++) {
        int64_t lo, hi;
        ck_assert_int_eq(rd_kafka_query_watermark_offsets(k->producer, "ev", p, &lo, &hi, 5000), 0);
        end += hi;
    }
    return end;
}

static int readyz(int port)
{
    char body[256];
    return th_http(port, "GET", "/readyz", NULL, NULL, body, sizeof body);
}

/* Milliseconds until /readyz answers `status` (-1: not within ms). */
static double wait_readyz(int port, int status, int ms)
{
    double t0 = th_now_ms();
    while (th_now_ms() - t0 < ms) {
        if (readyz(port) == status)
            return th_now_ms() - t0;
        th_sleep_ms(20);
    }
    return -1;
}

/* ---- 1. Redis killed and restarted ------------------------------------------------------------- */

/* SIGKILL the redis-server in the middle of a stream (its append-only file
 * fsync'ed on every write, so it loses nothing it acknowledged), events
 * keep coming, then the server starts again on the same port from that
 * file: /readyz goes 503 and back to 200, nothing is published while
 * Redis is away, the batch is retried with backoff, and afterwards every
 * event is in Redis once and every trigger has its list. */
START_TEST(test_redis_restart)
{
    th_kafka k;
    th_redis rd;
    n_log = 0;
    n_users = 12;
    paths_init();
    th_redis_start_aof(&rd, NULL);
    th_kafka_start(&k, TOPICS, 3, PARTS);
    write_config(&k, &rd, 6000, NULL);
    th_serve run;
    th_serve_start(&run, config_path);
    const int PHASE = 24;
    outputs o;
    send_events(&k, PHASE);
    ck_assert_int_eq(collect(&k, &o, n_log, 20000), 0);
    int before = n_log;

    th_redis_kill(&rd);
    double t_kill = th_now_ms();
    send_events(&k, PHASE);
    double not_ready_ms = wait_readyz(run.http_port, 503, 5000);
    th_sleep_ms(1500);
    collect(&k, &o, before, 5000); /* the lists from before, and any that came since */
    int published_while_down = 0;
    for (int i = before; i < n_log; i++)
        published_while_down += o.have[i] > 0;
    double errors_down = th_serve_metric(&run, "rankd_redis_errors_total");
    /* nothing that came after the kill may be committed: none of it is applied */
    int64_t committed[PARTS];
    locate_inputs(&k);
    committed_offsets(&k, committed);
    int committed_unapplied = 0;
    for (int i = before; i < n_log; i++)
        committed_unapplied += log_[i].off < committed[log_[i].part];
    th_redis_restart(&rd);
    double outage_ms = th_now_ms() - t_kill;
    double ready_ms = wait_readyz(run.http_port, 200, 10000); /* the backoff is up to 2 s */

    send_events(&k, PHASE);
    int lost = collect(&k, &o, n_log, 20000);
    applied a;
    check_redis(&rd, &a);
    double errors = th_serve_metric(&run, "rankd_redis_errors_total");
    double published = th_serve_metric(&run, "rankd_rankings_published_total");
    th_serve_stop(&run);
    committed_offsets(&k, committed);
    int64_t end = topic_end(&k);
    printf("redis: killed for %.0f ms after e%d: /readyz 503 after %.0f ms, 200 again %.0f ms after the restart; "
           "while down: %d lists published, %d unapplied events committed, %.0f failed round trips (backoff 50 ms "
           "doubling to 2 s); %.0f in all\n", outage_ms, before - 1, not_ready_ms, ready_ms, published_while_down,
           committed_unapplied, errors_down, errors);
    printf("redis: events sent %d, applied %d (missing %d, extra %d, users with a wrong seen set %d); triggers %d, "
           "published %d (metric %.0f), lost %d, duplicates %d; committed %lld of %lld after the stop\n", n_log,
           a.applied, a.missing, a.extra, a.seen_bad, triggers_in(0, n_log), o.distinct, published, lost, o.dupes,
           (long long)(committed[0] + committed[1]), (long long)end);
    ck_assert_msg(not_ready_ms >= 0, "/readyz stayed 200 with Redis down");
    ck_assert_msg(ready_ms >= 0, "/readyz did not come back after Redis did");
    ck_assert_int_eq(published_while_down, 0);
    ck_assert_int_eq(committed_unapplied, 0);
    ck_assert(errors_down >= 2);
    ck_assert_int_eq(lost, 0);
    ck_assert_int_eq(a.missing, 0);
    ck_assert_int_eq(a.extra, 0);
    ck_assert_int_eq(a.seen_bad, 0);
    ck_assert_int_eq(a.applied, n_log);
    ck_assert_int_eq(committed[0] + committed[1], end);
    th_kafka_stop(&k);
    th_redis_stop(&rd);
}
END_TEST

/* ---- 2. broker errors -------------------------------------------------------------------------- */

/* Three mock brokers: the input topic and the group's coordinator on
 * broker 1, the output and dead-letter topics on broker 2, so that faults
 * of broker 2 reach rankd's producer alone (the test's own producer writes
 * only to the input topic). Reconnects are quick, as in rankd's config. */
static void kafka_start3(th_kafka *k)
{
    th_kafka_start_cluster(k, 3, TOPICS, 3, PARTS);
    for (int t = 0; t < 3; t++)
        for (int p = 0; p < PARTS; p++)
            ck_assert_int_eq(rd_kafka_mock_partition_set_leader(k->mc, TOPICS[t], p, t == 0 ? 1 : 2), 0);
    ck_assert_int_eq(rd_kafka_mock_coordinator_set(k->mc, "group", "ft", 1), 0);
    ck_assert_int_eq(rd_kafka_mock_coordinator_set(k->mc, "group", "th-reader", 3), 0);
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", k->brokers, err, sizeof err);
    rd_kafka_conf_set(c, "log_level", "2", err, sizeof err);
    rd_kafka_conf_set(c, "reconnect.backoff.max.ms", "500", err, sizeof err);
    k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    ck_assert_msg(k->producer != NULL, "%s", err);
}

/* The commit check at one moment: committed offsets first, then the lists
 * (which only grow), so a list published in between cannot hide a bad
 * commit. */
static int commit_check(th_kafka *k, int64_t committed[PARTS], outputs *o, int timeout_ms)
{
    committed_offsets(k, committed);
    collect(k, o, n_log, timeout_ms); /* returns once every list is there */
    return committed_unpublished(committed, o);
}

START_TEST(test_broker_faults)
{
    th_kafka k;
    th_redis rd;
    n_log = 0;
    n_users = 20;
    paths_init();
    th_redis_start(&rd, NULL);
    kafka_start3(&k);
    /* A short message timeout: a list the broker does not take within
     * 1.5 s comes back to rankd as a failed delivery, which produces it
     * again (the path under test), instead of librdkafka retrying it for
     * the default 300 s. */
    write_config(&k, &rd, 6000, "    message.timeout.ms: \"1500\"\n");
    th_serve run;
    th_serve_start(&run, config_path);
    outputs o;
    int64_t committed[PARTS];
    int bad_commits = 0;

    /* A: produce requests of broker 2 fail, retriably and not. */
    ck_assert_int_eq(rd_kafka_mock_broker_push_request_error_rtts(
                         k.mc, 2, API_PRODUCE, 6, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, 0,
                         RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, 0, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, 0,
                         RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, 0, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                         0, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, 0),
                     0);
    send_events(&k, 30);
    int lost_a = collect(&k, &o, n_log, 20000);
    double perr_a = th_serve_metric(&run, "rankd_publish_errors_total");
    locate_inputs(&k);
    bad_commits += commit_check(&k, committed, &o, 10000);
    printf("broker: A: 6 produce errors pushed on the output broker (3 retriable, 3 not): %d events, lost %d, "
           "duplicates %d, rankd_publish_errors_total %.0f\n", n_log, lost_a, o.dupes, perr_a);

    /* B: the output topic's broker down; events still come in. */
    int b0 = n_log;
    int64_t committed_b0[PARTS];
    committed_offsets(&k, committed_b0);
    ck_assert_int_eq(rd_kafka_mock_broker_set_down(k.mc, 2), 0);
    send_events(&k, 30);
    locate_inputs(&k);
    th_sleep_ms(2500); /* many commit intervals, one message timeout */
    int readyz_b = readyz(run.http_port); /* printed: readiness says whether events can be consumed */
    committed_offsets(&k, committed);
    int published_b = o.distinct;
    bad_commits += committed_unpublished(committed, &o); /* o: lists before the outage, none can be newer */
    long long moved = (committed[0] - committed_b0[0]) + (committed[1] - committed_b0[1]);
    ck_assert_int_eq(rd_kafka_mock_broker_set_up(k.mc, 2), 0);
    int lost_b = collect(&k, &o, n_log, 20000);
    double perr_b = th_serve_metric(&run, "rankd_publish_errors_total");
    bad_commits += commit_check(&k, committed, &o, 10000);
    printf("broker: B: output broker down 2.5 s with %d new events (%d triggers): /readyz %d, commits moved %lld "
           "offsets meanwhile (past no unpublished trigger), lists before it %d; up again: lost %d, duplicates %d, "
           "rankd_publish_errors_total %.0f\n", n_log - b0, triggers_in(b0, n_log), readyz_b, moved, published_b,
           lost_b, o.dupes, perr_b);

    /* C: every broker down, then up. */
    for (int b = 1; b <= 3; b++)
        ck_assert_int_eq(rd_kafka_mock_broker_set_down(k.mc, b), 0);
    double not_ready_ms = wait_readyz(run.http_port, 503, 10000);
    th_sleep_ms(1000);
    for (int b = 1; b <= 3; b++)
        ck_assert_int_eq(rd_kafka_mock_broker_set_up(k.mc, b), 0);
    double ready_ms = wait_readyz(run.http_port, 200, 15000);
    int c0 = n_log;
    send_events(&k, 30);
    locate_inputs(&k);
    int lost = collect(&k, &o, n_log, 30000);
    bad_commits += commit_check(&k, committed, &o, 10000);
    double perr = th_serve_metric(&run, "rankd_publish_errors_total");
    double kerr = th_serve_metric(&run, "rankd_kafka_errors_total");
    th_serve_stop(&run);
    int64_t end = topic_end(&k);
    committed_offsets(&k, committed);
    applied a;
    check_redis(&rd, &a);
    printf("broker: C: all 3 brokers down: /readyz 503 after %.0f ms, 200 %.0f ms after they came back; %d more "
           "events\n", not_ready_ms, ready_ms, n_log - c0);
    printf("broker: events sent %d, applied %d (missing %d, extra %d); triggers %d, published %d, lost %d, "
           "duplicates %d; offsets committed past an unpublished list at any check: %d; committed %lld of %lld "
           "after the stop; publish errors %.0f, kafka errors %.0f\n", n_log, a.applied, a.missing, a.extra,
           triggers_in(0, n_log), o.distinct, lost, o.dupes, bad_commits,
           (long long)(committed[0] + committed[1]), (long long)end, perr, kerr);
    ck_assert_int_eq(lost_a, 0);
    ck_assert_int_eq(lost_b, 0);
    ck_assert_int_eq(lost, 0);
    ck_assert_int_eq(bad_commits, 0);
    ck_assert_msg(perr_a >= 1, "no produce error reached rankd: the injection tested nothing");
    ck_assert_msg(not_ready_ms >= 0, "/readyz stayed 200 with every broker down");
    ck_assert_msg(ready_ms >= 0, "/readyz did not come back after the brokers did");
    ck_assert_int_eq(a.missing, 0);
    ck_assert_int_eq(a.extra, 0);
    ck_assert_int_eq(committed[0] + committed[1], end);
    th_kafka_stop(&k);
    th_redis_stop(&rd);
}
END_TEST

/* ---- 3. SIGKILL of the real binary ------------------------------------------------------------- */

static const char *rankd_bin(void)
{
    const char *b = getenv("RANKD_BIN");
    return b && *b ? b : "build/rankd";
}

/* `rankd serve` in a child, its stderr appended to log_path; HTTP on port. */
static pid_t spawn_rankd(int port, const char *device, const char *log_path)
{
    const char *bin = rankd_bin();
    fflush(NULL);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        char p[16];
        snprintf(p, sizeof p, "%d", port);
        setenv("RANKD_HTTP_PORT", p, 1);
        setenv("RANKD_LOGGING_LEVEL", "info", 1); /* a failure message shows the log's tail: joins and all */
        if (device)
            setenv("RANKD_MODEL_DEVICE", device, 1);
        int fd = log_path ? open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644) : -1;
        if (fd >= 0)
            dup2(fd, 2);
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed test must not leave it running */
        execl(bin, bin, "serve", "--config", config_path, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static void wait_listening(pid_t pid, int port)
{
    for (int waited = 0; !port_open(port) && waited < 15000; waited += 20) {
        int st;
        ck_assert_msg(waitpid(pid, &st, WNOHANG) == 0, "%s serve exited before listening", rankd_bin());
        th_sleep_ms(20);
    }
    ck_assert_msg(port_open(port), "%s serve did not listen on %d", rankd_bin(), port);
}

/* The test's stream, from a thread of its own so that it goes on while
 * rankd dies and starts again: one event every gap_ms until told to stop
 * (or every user has MAX_HIST events). */
typedef struct stream {
    th_kafka *k;
    int gap_ms, max;
    atomic_int stop, sent;
} stream;

static void *stream_thread(void *arg)
{
    stream *st = arg;
    while (!atomic_load(&st->stop) && atomic_load(&st->sent) < st->max) {
        send_events(st->k, 1);
        atomic_fetch_add(&st->sent, 1);
        th_sleep_ms(st->gap_ms);
    }
    return NULL;
}

/* The last bytes of a file, for failure messages. */
static const char *file_tail(const char *path)
{
    static char tail[2048];
    tail[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return "(no log)";
    if (fseek(f, 0, SEEK_END) == 0 && ftell(f) > (long)sizeof tail - 1)
        fseek(f, -(long)(sizeof tail - 1), SEEK_END);
    else
        fseek(f, 0, SEEK_SET);
    tail[fread(tail, 1, sizeof tail - 1, f)] = '\0';
    fclose(f);
    return tail;
}

/* Waits until the rankd at pid publishes (it has joined the group and
 * ranks): only then is a kill one "under load". */
static void wait_publishing(pid_t pid, int port, int run, const char *log_path)
{
    wait_listening(pid, port);
    for (int waited = 0; th_metric(port, "rankd_rankings_published_total") < 1 && waited < 15000; waited += 20)
        th_sleep_ms(20);
    ck_assert_msg(th_metric(port, "rankd_rankings_published_total") >= 1,
                  "%s serve (run %d) published nothing in 15 s; its log ends:\n%s", rankd_bin(), run,
                  file_tail(log_path));
}

/* The stream goes on while rankd is SIGKILLed at seeded random moments
 * once it publishes, and started again at once; at the end a clean stop.
 * Every trigger must have its list, every event its one history member,
 * and the group's offsets must reach the end of the topic. Lists published
 * but not yet committed when the process died are published again by the
 * next one: the duplicates at-least-once allows. */
START_TEST(test_crash_binary)
{
    enum { KILLS = 3, MIN_EVENTS = 200 };
    th_kafka k;
    th_redis rd;
    n_log = 0;
    n_users = 60; /* up to 480 events: the stream outlasts the kills */
    paths_init();
    th_redis_start(&rd, NULL);
    th_kafka_start(&k, TOPICS, 3, PARTS);
    /* A dead member is noticed after session.timeout.ms: short, so that each
     * restart's rebalance is quick. */
    write_config(&k, &rd, 3000, NULL);
    uint64_t seed = (uint64_t)time(NULL);
    if (getenv("FAULTS_SEED"))
        seed = strtoull(getenv("FAULTS_SEED"), NULL, 10);
    tu_rng rng = {seed};
    char log_path[TU_PATH];
    tu_tmp_path(log_path, "crash.log");
    int port = th_free_port();
    pid_t pid = spawn_rankd(port, NULL, log_path);
    stream st = {.k = &k, .gap_ms = 40, .max = n_users * MAX_HIST};
    pthread_t tid;
    ck_assert_int_eq(pthread_create(&tid, NULL, stream_thread, &st), 0);
    int killed_pub[KILLS], killed_at[KILLS], pause_ms[KILLS];
    for (int i = 0; i < KILLS; i++) {
        wait_publishing(pid, port, i, log_path);
        pause_ms[i] = tu_int(&rng, 50, 600);
        th_sleep_ms(pause_ms[i]);
        killed_pub[i] = (int)th_metric(port, "rankd_rankings_published_total");
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        killed_at[i] = atomic_load(&st.sent);
        int ws;
        ck_assert_int_eq(waitpid(pid, &ws, 0), pid);
        ck_assert(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
        port = th_free_port();
        pid = spawn_rankd(port, NULL, log_path);
    }
    while (atomic_load(&st.sent) < MIN_EVENTS)
        th_sleep_ms(20);
    atomic_store(&st.stop, 1);
    pthread_join(tid, NULL);
    wait_listening(pid, port);
    outputs o;
    int lost = collect(&k, &o, n_log, 40000);
    /* The lists may all be out before the last process owns a partition:
     * it joins while the group still holds the killed member, until its
     * session times out. Stopped before then, it would rightly commit
     * nothing, and the events its predecessor did but had not committed
     * would wait for the next owner. So the clean stop waits until the
     * group's offsets reach the end of the topic (its commits, every
     * kafka.commit_interval_ms), up to 30 s. */
    int64_t committed[PARTS], end = topic_end(&k);
    double t0 = th_now_ms();
    do {
        committed_offsets(&k, committed);
        if (committed[0] + committed[1] == end)
            break;
        th_sleep_ms(200);
    } while (th_now_ms() - t0 < 30000);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    int ws;
    ck_assert_int_eq(waitpid(pid, &ws, 0), pid);
    applied a;
    check_redis(&rd, &a);
    committed_offsets(&k, committed);
    printf("crash: seed %llu (FAULTS_SEED repeats it): %s SIGKILLed %d times, each a random pause after it "
           "published:", (unsigned long long)seed, rankd_bin(), KILLS);
    for (int i = 0; i < KILLS; i++)
        printf(" [%d events sent, +%d ms, %d lists published by that process]", killed_at[i], pause_ms[i],
               killed_pub[i]);
    printf("\n");
    printf("crash: events sent %d, applied %d (missing %d, extra %d, users with a wrong seen set %d); "
           "triggers %d, published %d, lost %d, duplicates %d (%d lists in all); committed %lld of %lld; "
           "clean stop exit %d\n", n_log, a.applied, a.missing, a.extra, a.seen_bad, triggers_in(0, n_log),
           o.distinct, lost, o.dupes, o.count, (long long)(committed[0] + committed[1]), (long long)end,
           WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
    ck_assert_int_eq(lost, 0);
    ck_assert_int_eq(a.missing, 0);
    ck_assert_int_eq(a.extra, 0);
    ck_assert_int_eq(a.seen_bad, 0);
    ck_assert_int_eq(a.applied, n_log);
    ck_assert_msg(committed[0] + committed[1] == end, "committed %lld of %lld; the last rankd's log ends:\n%s",
                  (long long)(committed[0] + committed[1]), (long long)end, file_tail(log_path));
    ck_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    th_kafka_stop(&k);
    th_redis_stop(&rd);
}
END_TEST

/* ---- 4. no GPU at start ------------------------------------------------------------------------ */

static int count_lines(const char *path, const char *needle, char *first, size_t cap)
{
    FILE *f = fopen(path, "r");
    char line[2048];
    int n = 0;
    if (first && cap)
        first[0] = '\0';
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, needle) && n++ == 0 && first)
            snprintf(first, cap, "%s", line);
    if (f)
        fclose(f);
    return n;
}

/* model.device auto on a machine (or build) without a usable GPU: rankd
 * starts on the CPU, logs why in one line and counts it; model.device cuda
 * refuses to start and says why. Where a GPU is usable (gp_probe), auto
 * must take it and cuda start: the test checks that instead. */
/* ---- a device failing at run time ---------------------------------------------------------------- */

static int scorer_fallbacks;

static void on_scorer_fallback(void *ctx, const char *why)
{
    (void)ctx;
    scorer_fallbacks++;
    printf("scorer fault: fallback: %s\n", why);
}

#define SF_B 6
#define SF_K 5

/* rk_scorer_rank after a backend call fails as a failing GPU would
 * (rk_scorer_inject_fault; on this GPU-less machine the backend is the
 * CPU, and the move goes to a new CPU backend): the batch is redone and
 * answered exactly as before, the caller is told once, and a refusal of
 * bad input is no device failure. The GPU side runs in make test-gpu
 * (tests/check_gpu.c, scorer). */
START_TEST(test_scorer_fault)
{
    lm_model *m = tu_case_model("small", 1);
    char err[CM_ERRSZ] = "";
    rk_scorer *sc = NULL;
    rk_scorer_opts o = {.max_batch = SF_B, .max_cands = 20, .max_k = SF_K, .max_exclude = 8, .retrieve_n = 20,
                        .threads = 1, .device = "cpu", .on_fallback = on_scorer_fallback};
    ck_assert_msg(rk_scorer_new(&sc, m, &o, err, sizeof err) == 0, "%s", err);
    int32_t hist[SF_B][8], acts[SF_B][8], cands[SF_B][20], items[2][SF_B][SF_K];
    float scores[2][SF_B][SF_K];
    rk_request rq[2][SF_B];
    for (int b = 0; b < SF_B; b++) {
        for (int t = 0; t < 8; t++) {
            hist[b][t] = 1 + (b * 37 + t * 11) % (m->cfg.n_items - 1);
            acts[b][t] = (b + t) % m->cfg.n_actions;
        }
        for (int j = 0; j < 20; j++)
            cands[b][j] = 1 + (b * 53 + j * 7) % (m->cfg.n_items - 1);
        for (int r = 0; r < 2; r++)
            rq[r][b] = (rk_request){.hist_items = hist[b], .hist_actions = acts[b], .n_hist = b + 1,
                                    .exclude = hist[b], .n_exclude = b + 1, .cands = b % 2 ? NULL : cands[b],
                                    .n_cands = b % 2 ? 0 : 20, .k = SF_K, .out_items = items[r][b],
                                    .out_scores = scores[r][b]};
    }
    scorer_fallbacks = 0;
    ck_assert_msg(rk_scorer_rank(sc, rq[0], SF_B, err, sizeof err) == 0, "%s", err);
    rk_scorer_inject_fault(sc);
    ck_assert_msg(rk_scorer_rank(sc, rq[1], SF_B, err, sizeof err) == 0, "after the fault: %s", err);
    int same = 0;
    for (int b = 0; b < SF_B; b++)
        same += rq[1][b].n_out == rq[0][b].n_out && rq[0][b].n_out == SF_K &&
                !memcmp(items[0][b], items[1][b], sizeof items[0][b]) &&
                !memcmp(scores[0][b], scores[1][b], sizeof scores[0][b]);
    const char *why = rk_scorer_fallback_reason(sc);
    printf("scorer fault: %d requests (half given candidates, half retrieval), answers after the fault equal "
           "before: %d of %d; fallbacks %d; now %s\n", SF_B, same, SF_B, scorer_fallbacks, rk_scorer_device(sc));
    ck_assert_int_eq(same, SF_B);
    ck_assert_int_eq(scorer_fallbacks, 1);
    ck_assert_msg(why && strstr(why, "failed at run time"), "reason: %s", why ? why : "(none)");
    rq[1][0].k = 0; /* bad input: refused, and no move */
    ck_assert_int_eq(rk_scorer_rank(sc, rq[1], SF_B, err, sizeof err), -1);
    printf("scorer fault: a bad request is refused (%s) with no fallback (%d)\n", err, scorer_fallbacks);
    ck_assert_int_eq(scorer_fallbacks, 1);
    rk_scorer_free(sc);
    lm_model_free(m);
}
END_TEST

START_TEST(test_gpu_absent)
{
    th_kafka k;
    th_redis rd;
    n_log = 0;
    n_users = 4;
    paths_init();
    char info[256];
    int gpu = gp_probe(0, info, sizeof info);
    printf("gpu: gp_probe(0): %s (%s)\n", gpu ? "usable" : "none", info);
    th_redis_start(&rd, NULL);
    th_kafka_start(&k, TOPICS, 3, PARTS);
    write_config(&k, &rd, 6000, NULL);
    char log_auto[TU_PATH], log_cuda[TU_PATH], line[2048];
    tu_tmp_path(log_auto, "auto.log");
    tu_tmp_path(log_cuda, "cuda.log");

    int port = th_free_port();
    pid_t pid = spawn_rankd(port, "auto", log_auto);
    wait_listening(pid, port);
    double fallbacks = th_metric(port, "rankd_scorer_cpu_fallbacks_total");
    double on_gpu = th_metric(port, "rankd_scorer_gpu");
    send_events(&k, 3); /* and it ranks */
    outputs o;
    int lost = collect(&k, &o, n_log, 20000);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    int lines = count_lines(log_auto, "model.device auto: scoring", line, sizeof line);
    printf("gpu: device auto: rankd_scorer_cpu_fallbacks_total %.0f, rankd_scorer_gpu %.0f, %d triggers ranked "
           "(lost %d), %d fallback log line(s): %s", fallbacks, on_gpu, o.distinct, lost, lines,
           lines ? line : "(none)\n");
    ck_assert_int_eq(lost, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (gpu) {
        ck_assert(fallbacks == 0 && on_gpu == 1 && lines == 0);
    } else {
        ck_assert(fallbacks == 1 && on_gpu == 0);
        ck_assert_int_eq(lines, 1);
    }

    port = th_free_port();
    pid = spawn_rankd(port, "cuda", log_cuda);
    if (gpu) {
        wait_listening(pid, port);
        kill(pid, SIGTERM);
    }
    double t0 = th_now_ms();
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    int refused = count_lines(log_cuda, "model.device cuda: ", line, sizeof line);
    printf("gpu: device cuda: exit %d after %.0f ms, %s", WIFEXITED(st) ? WEXITSTATUS(st) : -1, th_now_ms() - t0,
           refused ? line : "no refusal logged\n");
    if (gpu) {
        ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    } else {
        ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1);
        ck_assert_int_eq(refused, 1);
        ck_assert_msg(strstr(line, info) != NULL, "the refusal does not say why: %s", line);
    }
    th_kafka_stop(&k);
    th_redis_stop(&rd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("faults");
    TCase *tc = tcase_create("faults");
    tcase_add_test(tc, test_scorer_fault);
    tcase_add_test(tc, test_gpu_absent);
    tcase_add_test(tc, test_redis_restart);
    tcase_add_test(tc, test_broker_faults);
    tcase_add_test(tc, test_crash_binary);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return tu_main("check_faults", s);
}
