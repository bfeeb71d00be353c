/* service/config.h — rankd's configuration: one YAML file, every key in a
 * table (name, type, default, bounds, help) walked by one loader, the way
 * redis does it. Environment variables override keys: RANKD_ + the key in
 * upper case with dots as underscores (RANKD_KAFKA_BROKERS for
 * kafka.brokers); lists are comma-separated. Errors cite file, line and
 * key: "rankd.yaml:14: kafka.brokers: expected a string".
 *
 * configs/default.yaml is the embedded default and documents every key; a
 * file given to the loader overrides the keys it sets. */
#ifndef RANKD_SERVICE_CONFIG_H
#define RANKD_SERVICE_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define SVC_MAX_TRIGGERS 16
#define SVC_MAX_KAFKA_PROPS 64

typedef struct svc_kv {
    char *key, *value;
} svc_kv;

typedef struct svc_config {
    struct {
        char *brokers;            /* bootstrap servers */
        char *group_id;
        char *input_topic, *output_topic, *dead_letter_topic;
        int poll_batch;           /* messages per consumer poll round */
        int poll_timeout_ms;
        int max_event_bytes;      /* larger messages are dead-lettered */
        int commit_interval_ms;   /* auto.commit.interval.ms of stored offsets */
        svc_kv props[SVC_MAX_KAFKA_PROPS]; /* any librdkafka property, passed through */
        int n_props;
        char *sasl_password;      /* librdkafka sasl.password, kept out of properties; or _file */
        char *sasl_password_file;
    } kafka;
    struct {
        char *host;
        int port;
        char *password;           /* AUTH; or password_file */
        char *password_file;
        int db;
        char *prefix;             /* every key starts with it */
        int ttl_history_s, ttl_seen_s, ttl_item_s, ttl_user_s;
        int timeout_ms;           /* connect and command timeout */
    } redis;
    struct {
        char *path;               /* artifact; "" means the one make run trains */
        char *device;             /* auto | cuda | cpu */
        int threads;              /* scorer threads, 0: all cores */
        int reload_check_ms;      /* poll the artifacts for changes this often; 0: only on SIGHUP */
        struct {
            char *path;           /* variant b of an A/B test; "": none */
            int percent;          /* users (by id hash) ranked by b, 0..100 */
        } b;
    } model;
    struct {
        int retrieve_n;           /* candidates from retrieval for the re-rank */
        int k;                    /* items published */
        char *trigger_types[SVC_MAX_TRIGGERS]; /* interaction types that trigger a ranking */
        int n_trigger_types;
        int exclude_seen;         /* drop the user's seen items */
        int exclude_unavailable;  /* drop items whose available field is false */
        int max_candidates;       /* items in a ranking event */
    } ranking;
    struct {
        int max_batch;            /* requests per scorer call */
        int max_wait_us;          /* longest a request waits for a batch to fill */
        int latency_target_us;    /* the batcher grows batches only while under it */
    } batching;
    struct {
        int enabled;
        char *bind;               /* address; default 127.0.0.1 */
        int port;
        char *token;              /* bearer token for POST /v1/rank; "" = none */
        int max_body_bytes;
        int rate_limit_rps;       /* POST /v1/rank requests per second; 0: no limit */
        int rate_limit_burst;     /* the token bucket's depth; 0: one second of rate_limit_rps */
    } http;
    struct {
        char *level;              /* error | warn | info | debug */
        char *format;             /* text | json */
    } logging;
} svc_config;

/* Loads the embedded default, then `path` (NULL: none), then the
 * environment, into *c, which it overwrites without freeing (free an
 * earlier config first). On error the config is left freed and err says
 * where. */
int svc_config_load(svc_config *c, const char *path, char *err, size_t errsz);
/* The same with the file's bytes text[0..len) held in memory (need not
 * end in NUL), `name` standing for the file in messages: for tests and
 * tests/fuzz/fuzz_config.c. */
int svc_config_load_text(svc_config *c, const char *name, const char *text, size_t len, char *err, size_t errsz);
void svc_config_free(svc_config *c);

/* The effective configuration as YAML, secrets (passwords, tokens, SASL
 * and SSL secrets among kafka properties) shown as "***". */
void svc_config_print(FILE *f, const svc_config *c);

/* Is `type` among ranking.trigger_types? */
int svc_config_triggers(const svc_config *c, const char *type);

#endif
