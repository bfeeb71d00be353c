/* tests/harness_kafka.h — a Kafka-protocol broker for the suites:
 * librdkafka's mock cluster in the test process (real TCP on loopback), the
 * topics of a rankd config, and helpers to produce events and read a topic
 * from the beginning. Header-only; every function is static inline. */
#ifndef RANKD_TESTS_HARNESS_KAFKA_H
#define RANKD_TESTS_HARNESS_KAFKA_H

#include <check.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct th_kafka {
    rd_kafka_t *rk;       /* owns the mock cluster */
    rd_kafka_mock_cluster_t *mc;
    char brokers[128];
    rd_kafka_t *producer; /* for the test's events */
} th_kafka;

static inline rd_kafka_t *th_kafka_client(const char *brokers, rd_kafka_type_t type, const char *group)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(c, "log_level", "2", err, sizeof err);
    if (group)
        rd_kafka_conf_set(c, "group.id", group, err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(type, c, err, sizeof err);
    ck_assert_msg(rk != NULL, "kafka client: %s", err);
    return rk;
}

/* A cluster of n_brokers and the topics (`partitions` each), without the
 * test's producer: for tests that place partitions or configure their
 * producer themselves. */
static inline void th_kafka_start_cluster(th_kafka *k, int n_brokers, const char *const *topics, int n_topics,
                                          int partitions)
{
    memset(k, 0, sizeof *k);
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "log_level", "2", err, sizeof err);
    k->rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    ck_assert_msg(k->rk != NULL, "%s", err);
    k->mc = rd_kafka_mock_cluster_new(k->rk, n_brokers);
    ck_assert_msg(k->mc != NULL, "cannot start the mock cluster");
    for (int i = 0; i < n_topics; i++)
        ck_assert_int_eq(rd_kafka_mock_topic_create(k->mc, topics[i], partitions, 1), 0);
    snprintf(k->brokers, sizeof k->brokers, "%s", rd_kafka_mock_cluster_bootstraps(k->mc));
}

/* One broker, the topics (`partitions` each) and the test's producer. */
static inline void th_kafka_start(th_kafka *k, const char *const *topics, int n_topics, int partitions)
{
    th_kafka_start_cluster(k, 1, topics, n_topics, partitions);
    k->producer = th_kafka_client(k->brokers, RD_KAFKA_PRODUCER, NULL);
}

static inline void th_kafka_stop(th_kafka *k)
{
    if (k->producer) {
        rd_kafka_flush(k->producer, 5000);
        rd_kafka_destroy(k->producer);
    }
    rd_kafka_mock_cluster_destroy(k->mc);
    rd_kafka_destroy(k->rk);
}

/* Produces one message (keyed) and waits until the broker has it. */
static inline void th_kafka_send(th_kafka *k, const char *topic, const char *key, const char *value, size_t len)
{
    ck_assert_int_eq(rd_kafka_producev(k->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE((void *)value, len),
                                       RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END), 0);
    rd_kafka_flush(k->producer, 5000);
}

/* Every message of `topic` from the beginning, waiting until `want` have
 * come or timeout_ms passed; calls fn for each. Returns the count. */
typedef void (*th_msg_fn)(void *ctx, const rd_kafka_message_t *m);

static inline int th_kafka_read_all(th_kafka *k, const char *topic, int partitions, int want, int timeout_ms,
                                    th_msg_fn fn, void *ctx)
{
    rd_kafka_t *c = th_kafka_client(k->brokers, RD_KAFKA_CONSUMER, "th-reader");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(partitions);
    for (int p = 0; p < partitions; p++)
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(c, l);
    rd_kafka_topic_partition_list_destroy(l);
    int n = 0;
    for (int waited = 0; (want < 0 || n < want) && waited < timeout_ms;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 50);
        if (!m) {
            waited += 50;
            continue;
        }
        if (!m->err) {
            if (fn)
                fn(ctx, m);
            n++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return n;
}

#endif
