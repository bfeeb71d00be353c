/* service/cmd_kafka.c — Kafka tools for development and `make run`:
 *
 *   rankd dev-broker [--topics a,b,c] [--partitions N] [--address-file F]
 *       a Kafka-protocol broker on loopback (librdkafka's mock cluster),
 *       with the topics created; prints its bootstrap address and runs
 *       until SIGINT/SIGTERM;
 *   rankd feed FILE --brokers B --topic T [--rate N] [--loop]
 *       produces the lines of FILE (JSON events), N per second (0: as
 *       fast as the broker takes them), keyed by the event's user;
 *   rankd watch --brokers B --topic T [--titles DATA] [--count N]
 *       prints the ranked lists of an output topic, with item titles when
 *       DATA (e.g. MovieLens) has them. */
#include "service/cmd_kafka.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/strmap.h"
#include "llm/dataset.h"
#include "service/args.h"

static volatile sig_atomic_t running = 1;
static void on_signal(int sig)
{
    (void)sig;
    running = 0;
}

static void catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int usage(const char *what, const svc_arg *table, const char *err)
{
    if (err && *err)
        fprintf(stderr, "rankd: %s\n", err);
    fprintf(stderr, "usage: %s\n", what);
    svc_args_usage(table);
    return 2;
}

/* ---- dev-broker ------------------------------------------------------------------------ */

int svc_cmd_dev_broker(int argc, char **argv)
{
    const char *topics = "rankd-events,rankd-rankings,rankd-dead-letter", *addr_file = NULL;
    int partitions = 4, help = 0;
    const svc_arg table[] = {
        {"topics", ARG_STR, &topics, 0, 0, "topics to create, comma-separated"},
        {"partitions", ARG_INT, &partitions, 1, 1024, "partitions per topic"},
        {"address-file", ARG_STR, &addr_file, 0, 0, "also write the bootstrap address to this file"},
        {"help", ARG_FLAG, &help, 0, 0, "this help"},
        {NULL, 0, NULL, 0, 0, NULL}};
    const char *pos[1];
    int npos;
    char err[CM_ERRSZ] = "";
    if (svc_args_parse(argc, argv, table, pos, 0, &npos, err, sizeof err) || help)
        return help ? (usage("rankd dev-broker [options]", table, NULL), 0)
                    : usage("rankd dev-broker [options]", table, err);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", NULL, 0);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "rankd dev-broker: %s\n", err);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, 1);
    if (!mc) {
        fprintf(stderr, "rankd dev-broker: cannot start the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    char *list = strdup(topics), *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (rd_kafka_mock_topic_create(mc, t, partitions, 1) != RD_KAFKA_RESP_ERR_NO_ERROR)
            fprintf(stderr, "rankd dev-broker: cannot create topic %s\n", t);
    free(list);
    const char *boot = rd_kafka_mock_cluster_bootstraps(mc);
    printf("bootstrap: %s\n", boot);
    fflush(stdout);
    if (addr_file) {
        FILE *f = fopen(addr_file, "w");
        if (!f || fprintf(f, "%s\n", boot) < 0 || fclose(f) != 0)
            fprintf(stderr, "rankd dev-broker: cannot write %s\n", addr_file);
    }
    fprintf(stderr, "rankd dev-broker: listening on %s (topics %s, %d partitions each); Ctrl-C stops it\n",
            boot, topics, partitions);
    catch_signals();
    while (running)
        usleep(100000);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}

/* ---- feed ---------------------------------------------------------------------------------- */

static void feed_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    long *failed = opaque;
    if (m->err)
        (*failed)++;
}

static rd_kafka_t *producer(const char *brokers, long *failed, char *err, size_t errsz)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, errsz) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "linger.ms", "5", err, errsz) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, failed);
    rd_kafka_conf_set_dr_msg_cb(conf, feed_dr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errsz);
    if (!rk)
        rd_kafka_conf_destroy(conf);
    return rk;
}

/* The user of a JSON event, for the message key (events of one user stay
 * in one partition, in order). */
static size_t user_key(const char *line, size_t len, char *key, size_t keysz)
{
    json_t *j = json_loadb(line, len, 0, NULL);
    const char *u = j ? json_string_value(json_object_get(j, "user")) : NULL;
    if (!u && j)
        u = json_string_value(json_object_get(j, "item"));
    size_t n = u ? strlen(u) : 0;
    if (n >= keysz)
        n = keysz - 1;
    if (u)
        memcpy(key, u, n);
    json_decref(j);
    return n;
}

int svc_cmd_feed(int argc, char **argv)
{
    const char *brokers = NULL, *topic = "rankd-events";
    double rate = 0;
    int loop = 0, help = 0;
    const svc_arg table[] = {
        {"brokers", ARG_STR, &brokers, 0, 0, "bootstrap servers (required)"},
        {"topic", ARG_STR, &topic, 0, 0, "topic to produce to"},
        {"rate", ARG_DOUBLE, &rate, 0, 1e7, "events per second (0: as fast as possible)"},
        {"loop", ARG_FLAG, &loop, 0, 0, "start over at the end of the file until stopped"},
        {"help", ARG_FLAG, &help, 0, 0, "this help"},
        {NULL, 0, NULL, 0, 0, NULL}};
    const char *pos[1];
    int npos;
    char err[CM_ERRSZ] = "";
    if (svc_args_parse(argc, argv, table, pos, 1, &npos, err, sizeof err) || help || npos != 1 || !brokers)
        return usage("rankd feed FILE --brokers B [--topic T] [--rate N] [--loop]", table, err);
    FILE *f = strcmp(pos[0], "-") == 0 ? stdin : fopen(pos[0], "r");
    if (!f) {
        perror(pos[0]);
        return 1;
    }
    long failed = 0, sent = 0;
    rd_kafka_t *rk = producer(brokers, &failed, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "rankd feed: %s\n", err);
        return 1;
    }
    catch_signals();
    char *line = NULL, key[512];
    size_t cap = 0;
    ssize_t len;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (running) {
        if ((len = getline(&line, &cap, f)) < 0) {
            if (!loop || f == stdin)
                break;
            rewind(f);
            continue;
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        size_t kl = user_key(line, (size_t)len, key, sizeof key);
        while (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE(line, (size_t)len),
                                 RD_KAFKA_V_KEY(key, kl), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL && running)
            rd_kafka_poll(rk, 10);
        sent++;
        rd_kafka_poll(rk, 0);
        if (rate > 0) { /* pace against the clock, not per message */
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            double el = (double)(now.tv_sec - t0.tv_sec) + 1e-9 * (double)(now.tv_nsec - t0.tv_nsec);
            double ahead = (double)sent / rate - el;
            if (ahead > 0)
                usleep((useconds_t)(ahead * 1e6));
        }
    }
    rd_kafka_flush(rk, 10000);
    fprintf(stderr, "rankd feed: %ld events produced to %s, %ld failed\n", sent, topic, failed);
    rd_kafka_destroy(rk);
    free(line);
    if (f != stdin)
        fclose(f);
    return failed ? 1 : 0;
}

/* ---- watch --------------------------------------------------------------------------------- */

static void print_ranking(const char *payload, size_t len, const lm_dataset *titles, cm_strmap *ids)
{
    json_t *j = json_loadb(payload, len, 0, NULL);
    if (!j) {
        printf("(not JSON) %.*s\n", (int)len, payload);
        return;
    }
    const char *user = json_string_value(json_object_get(j, "user"));
    json_t *items = json_object_get(j, "items");
    printf("user %s  (%s, %lld us)\n", user ? user : "?",
           json_string_value(json_object_get(j, "model")) ? json_string_value(json_object_get(j, "model")) : "?",
           (long long)json_integer_value(json_object_get(j, "took_us")));
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        const char *id = json_string_value(json_object_get(it, "item"));
        double score = json_number_value(json_object_get(it, "score"));
        const char *title = "";
        int row = id && titles && titles->item_titles ? cm_strmap_find(ids, id, strlen(id)) : -1;
        if (row >= 0)
            title = titles->item_titles[row + 1]; /* map ids are rows 1.., in order */
        printf("  %2zu. %-10s %7.3f  %s\n", i + 1, id ? id : "?", score, title);
    }
    json_decref(j);
}

int svc_cmd_watch(int argc, char **argv)
{
    const char *brokers = NULL, *topic = "rankd-rankings", *titles_path = NULL;
    int count = 0, help = 0;
    const svc_arg table[] = {
        {"brokers", ARG_STR, &brokers, 0, 0, "bootstrap servers (required)"},
        {"topic", ARG_STR, &topic, 0, 0, "topic of ranked lists"},
        {"titles", ARG_STR, &titles_path, 0, 0, "dataset with item titles (MovieLens ratings.csv or its folder)"},
        {"count", ARG_INT, &count, 0, 1e9, "stop after N lists (0: until stopped)"},
        {"help", ARG_FLAG, &help, 0, 0, "this help"},
        {NULL, 0, NULL, 0, 0, NULL}};
    const char *pos[1];
    int npos;
    char err[CM_ERRSZ] = "";
    if (svc_args_parse(argc, argv, table, pos, 0, &npos, err, sizeof err) || help || !brokers)
        return usage("rankd watch --brokers B [--topic T] [--titles DATA] [--count N]", table, err);
    lm_dataset *titles = NULL;
    cm_strmap *ids = NULL;
    if (titles_path) {
        if (lm_dataset_load(&titles, titles_path, LM_DATA_AUTO, err, sizeof err)) {
            fprintf(stderr, "rankd watch: %s\n", err);
            return 1;
        }
        ids = cm_strmap_new();
        for (int r = 1; ids && r < titles->n_items; r++) {
            int id;
            cm_strmap_intern(ids, titles->item_ids[r], strlen(titles->item_ids[r]), &id);
        }
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char group[64];
    snprintf(group, sizeof group, "rankd-watch-%d", (int)getpid());
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "group.id", group, err, sizeof err) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "session.timeout.ms", "6000", err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "rankd watch: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "rankd watch: %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    catch_signals();
    int seen = 0;
    while (running && (count == 0 || seen < count)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (!m->err) {
            print_ranking(m->payload, m->len, titles, ids);
            fflush(stdout);
            seen++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    cm_strmap_free(ids);
    lm_dataset_free(titles);
    return 0;
}
