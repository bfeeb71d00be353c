/* tests/check_config.c — service/config.h: the embedded default and its
 * documentation, files and environment variables over it, every kind of
 * error with its file, line and key, redis.password_file, masking of
 * secrets, and `rankd check-config` through the binary ($RANKD_BIN, else
 * build/rankd). Suites run from the repository root, where
 * configs/default.yaml and configs/production.yaml are.
 *
 * Check runs each test in a child process, so setenv in a test reaches
 * only that test. */
#include "service/config.h"

#include "common/err.h"

#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PATH_LEN 512

/* configs/default.yaml as built into the library (scripts/embed.sh). */
extern const unsigned char svc_default_yaml[];
extern const size_t svc_default_yaml_len;

static char tmp_root[] = "/tmp/check_config.XXXXXX"; /* made by main() */

/* ---- helpers ---------------------------------------------------------------- */

/* Writes `text` to tmp_root/name; path receives its path. */
static void write_file(char path[PATH_LEN], const char *name, const char *text)
{
    snprintf(path, PATH_LEN, "%s/%s", tmp_root, name);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot read %s (run the suite from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void load_ok(svc_config *c, const char *path)
{
    char err[CM_ERRSZ] = "";
    int rc = svc_config_load(c, path, err, sizeof err);
    ck_assert_msg(rc == 0, "svc_config_load(%s): %s", path ? path : "NULL", err);
}

/* Loads `yaml` (written to a file) expecting failure; returns the message
 * and its path, and checks that the config was left zeroed. */
static void load_fail(const char *yaml, char err[CM_ERRSZ], char path[PATH_LEN])
{
    static const svc_config zero;
    svc_config c;
    write_file(path, "bad.yaml", yaml);
    err[0] = '\0';
    memset(&c, 0x5a, sizeof c);
    ck_assert_msg(svc_config_load(&c, path, err, CM_ERRSZ) == -1, "loaded without error:\n%s", yaml);
    ck_assert_msg(memcmp(&c, &zero, sizeof c) == 0, "a failed load left the config non-zero");
    printf("  error: %s\n", err);
}

/* The effective config as svc_config_print writes it; caller frees. */
static char *print_str(const svc_config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    svc_config_print(f, c);
    fclose(f);
    return buf;
}

#define EXPECT_STR(got, want)                                                                        \
    do {                                                                                           \
        printf("  %-34s \"%s\" (want \"%s\")\n", #got, (got), (want));                              \
        ck_assert_str_eq((got), (want));                                                           \
    } while (0)
#define EXPECT_INT(got, want)                                                                        \
    do {                                                                                           \
        printf("  %-34s %d (want %d)\n", #got, (got), (want));                                       \
        ck_assert_int_eq((got), (want));                                                           \
    } while (0)

/* The value of kafka property `name`, or NULL. */
static const char *prop(const svc_config *c, const char *name)
{
    for (int i = 0; i < c->kafka.n_props; i++)
        if (!strcmp(c->kafka.props[i].key, name))
            return c->kafka.props[i].value;
    return NULL;
}

/* The dotted keys of the table, from the printed config: sections at
 * column 0, keys indented by two (property entries, by four, are not keys). */
static int table_keys(char keys[][64], int max)
{
    svc_config c;
    load_ok(&c, NULL);
    char *out = print_str(&c), *save = NULL, section[64] = "";
    int n = 0;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#')
            continue;
        if (line[0] != ' ')
            snprintf(section, sizeof section, "%.*s", (int)strcspn(line, ":"), line);
        else if (line[2] != ' ' && n < max)
            snprintf(keys[n++], 64, "%s.%.*s", section, (int)strcspn(line + 2, ":"), line + 2);
    }
    free(out);
    svc_config_free(&c);
    return n;
}

/* ---- the default --------------------------------------------------------------- */

START_TEST(test_default_values)
{
    svc_config c;
    load_ok(&c, NULL);
    EXPECT_STR(c.kafka.brokers, "127.0.0.1:9092");
    EXPECT_STR(c.kafka.group_id, "rankd");
    EXPECT_STR(c.kafka.input_topic, "rankd-events");
    EXPECT_STR(c.kafka.output_topic, "rankd-rankings");
    EXPECT_STR(c.kafka.dead_letter_topic, "rankd-dead-letter");
    EXPECT_INT(c.kafka.poll_batch, 256);
    EXPECT_INT(c.kafka.poll_timeout_ms, 100);
    EXPECT_INT(c.kafka.max_event_bytes, 65536);
    EXPECT_INT(c.kafka.commit_interval_ms, 1000);
    EXPECT_INT(c.kafka.n_props, 0);
    EXPECT_STR(c.redis.host, "127.0.0.1");
    EXPECT_INT(c.redis.port, 6379);
    EXPECT_STR(c.redis.password, "");
    EXPECT_STR(c.redis.password_file, "");
    EXPECT_INT(c.redis.db, 0);
    EXPECT_STR(c.redis.prefix, "rankd:");
    EXPECT_INT(c.redis.ttl_history_s, 2592000);
    EXPECT_INT(c.redis.ttl_seen_s, 2592000);
    EXPECT_INT(c.redis.ttl_item_s, 7776000);
    EXPECT_INT(c.redis.ttl_user_s, 2592000);
    EXPECT_INT(c.redis.timeout_ms, 1000);
    EXPECT_STR(c.model.path, "");
    EXPECT_STR(c.model.device, "auto");
    EXPECT_INT(c.model.threads, 0);
    EXPECT_INT(c.ranking.retrieve_n, 100);
    EXPECT_INT(c.ranking.k, 20);
    EXPECT_INT(c.ranking.n_trigger_types, 2);
    EXPECT_STR(c.ranking.trigger_types[0], "click");
    EXPECT_STR(c.ranking.trigger_types[1], "purchase");
    EXPECT_INT(c.ranking.exclude_seen, 1);
    EXPECT_INT(c.ranking.exclude_unavailable, 1);
    EXPECT_INT(c.ranking.max_candidates, 1000);
    EXPECT_INT(c.batching.max_batch, 64);
    EXPECT_INT(c.batching.max_wait_us, 500);
    EXPECT_INT(c.batching.latency_target_us, 5000);
    EXPECT_INT(c.http.enabled, 1);
    EXPECT_STR(c.http.bind, "127.0.0.1");
    EXPECT_INT(c.http.port, 8080);
    EXPECT_STR(c.http.token, "");
    EXPECT_INT(c.http.max_body_bytes, 1048576);
    EXPECT_STR(c.logging.level, "info");
    EXPECT_STR(c.logging.format, "text");
    EXPECT_INT(svc_config_triggers(&c, "click"), 1);
    EXPECT_INT(svc_config_triggers(&c, "purchase"), 1);
    EXPECT_INT(svc_config_triggers(&c, "view"), 0);
    svc_config_free(&c);
}
END_TEST

/* Docs match code: the embedded bytes are configs/default.yaml as it is
 * now, the file sets only known keys (it loads as a user file), and every
 * key of the table is in it, in its section, with a comment line above. */
START_TEST(test_default_documented)
{
    char *text = read_file("configs/default.yaml");
    printf("  embedded default: %zu bytes, configs/default.yaml: %zu bytes\n", svc_default_yaml_len,
           strlen(text));
    ck_assert_msg(svc_default_yaml_len == strlen(text) && !memcmp(svc_default_yaml, text, strlen(text)),
                  "the embedded default differs from configs/default.yaml: rebuild (make)");
    svc_config c;
    load_ok(&c, "configs/default.yaml");
    svc_config_free(&c);

    char keys[128][64];
    int n = table_keys(keys, 128);
    printf("  %d keys in the table\n", n);
    ck_assert_int_ge(n, 40);
    for (int i = 0; i < n; i++) {
        char section[64], want[80], *dot = strchr(keys[i], '.');
        snprintf(section, sizeof section, "%.*s:", (int)(dot - keys[i]), keys[i]);
        snprintf(want, sizeof want, "  %s:", dot + 1);
        int in_section = 0, found = 0;
        const char *prev = "";
        char *copy = strdup(text), *save = NULL;
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            if (line[0] != ' ' && line[0] != '#')
                in_section = !strcmp(line, section);
            if (in_section && !strncmp(line, want, strlen(want))) {
                found = 1;
                ck_assert_msg(strstr(prev, "  #") == prev, "configs/default.yaml: %s has no comment line above it",
                              keys[i]);
            }
            prev = line;
        }
        free(copy);
        ck_assert_msg(found, "configs/default.yaml does not set %s", keys[i]);
    }
    printf("  every key is set in configs/default.yaml with a comment above it\n");
    free(text);
}
END_TEST

/* ---- files and the environment --------------------------------------------- */

START_TEST(test_file_overrides)
{
    char path[PATH_LEN];
    write_file(path, "over.yaml",
               "# a file sets only what it changes\n"
               "kafka:\n"
               "  brokers: \"k1:9092,k2:9092\"\n"
               "  properties:\n"
               "    client.id: rankd-test\n"
               "    socket.keepalive.enable: true\n"
               "redis:\n"
               "  port: 6380\n"
               "ranking:\n"
               "  k: 10\n"
               "  trigger_types:\n"
               "    - view\n"
               "  exclude_seen: off\n"
               "model:\n"
               "http.port: 0\n"
               "logging: {level: debug, format: json}\n");
    svc_config c;
    load_ok(&c, path);
    EXPECT_STR(c.kafka.brokers, "k1:9092,k2:9092");
    EXPECT_INT(c.kafka.n_props, 2);
    EXPECT_STR(prop(&c, "client.id"), "rankd-test");
    EXPECT_STR(prop(&c, "socket.keepalive.enable"), "true");
    EXPECT_INT(c.redis.port, 6380);
    EXPECT_INT(c.ranking.k, 10);
    EXPECT_INT(c.ranking.n_trigger_types, 1);
    EXPECT_STR(c.ranking.trigger_types[0], "view");
    EXPECT_INT(c.ranking.exclude_seen, 0);
    EXPECT_INT(c.http.port, 0);
    EXPECT_STR(c.logging.level, "debug");
    EXPECT_STR(c.logging.format, "json");
    /* untouched keys keep the default */
    EXPECT_STR(c.kafka.group_id, "rankd");
    EXPECT_STR(c.redis.host, "127.0.0.1");
    EXPECT_INT(c.ranking.retrieve_n, 100);
    EXPECT_STR(c.model.device, "auto");
    svc_config_free(&c);

    /* every boolean spelling, an empty list, an empty file */
    const char *spell[][2] = {{"true", "1"}, {"false", "0"}, {"yes", "1"}, {"no", "0"},
                              {"on", "1"},   {"off", "0"},   {"True", "1"}, {"NO", "0"}};
    for (int i = 0; i < 8; i++) {
        char y[128];
        snprintf(y, sizeof y, "http:\n  enabled: %s\nranking:\n  trigger_types: []\n", spell[i][0]);
        write_file(path, "bool.yaml", y);
        load_ok(&c, path);
        printf("  http.enabled: %-5s -> %d, trigger_types: [] -> %d entries\n", spell[i][0], c.http.enabled,
               c.ranking.n_trigger_types);
        ck_assert_int_eq(c.http.enabled, atoi(spell[i][1]));
        ck_assert_int_eq(c.ranking.n_trigger_types, 0);
        svc_config_free(&c);
    }
    write_file(path, "empty.yaml", "# nothing but a comment\n");
    load_ok(&c, path);
    EXPECT_INT(c.redis.port, 6379);
    svc_config_free(&c);
}
END_TEST

START_TEST(test_env_overrides)
{
    char path[PATH_LEN];
    write_file(path, "env.yaml",
               "kafka:\n  brokers: file:9092\n  properties: {client.id: from-file, sasl.mechanism: GSSAPI}\n"
               "redis:\n  port: 6380\n");
    setenv("RANKD_KAFKA_BROKERS", "env1:9092,env2:9092", 1);
    setenv("RANKD_REDIS_PASSWORD", "pw-from-env", 1);
    setenv("RANKD_RANKING_TRIGGER_TYPES", "click, add_to_cart ,purchase", 1);
    setenv("RANKD_KAFKA_PROPERTIES", "sasl.mechanism=PLAIN, security.protocol=SASL_SSL,sasl.password=a\\,b\\\\c", 1);
    setenv("RANKD_HTTP_ENABLED", "off", 1);
    setenv("RANKD_BATCHING_MAX_BATCH", "512", 1);
    setenv("RANKD_MODEL_PATH", "", 1);
    svc_config c;
    load_ok(&c, path);
    EXPECT_STR(c.kafka.brokers, "env1:9092,env2:9092");
    EXPECT_INT(c.redis.port, 6380); /* from the file, no variable */
    EXPECT_STR(c.redis.password, "pw-from-env");
    EXPECT_INT(c.ranking.n_trigger_types, 3);
    EXPECT_STR(c.ranking.trigger_types[0], "click");
    EXPECT_STR(c.ranking.trigger_types[1], "add_to_cart");
    EXPECT_STR(c.ranking.trigger_types[2], "purchase");
    EXPECT_INT(svc_config_triggers(&c, "add_to_cart"), 1);
    /* merged: the file's client.id stays, the variable wins on sasl.mechanism */
    EXPECT_INT(c.kafka.n_props, 4);
    EXPECT_STR(prop(&c, "client.id"), "from-file");
    EXPECT_STR(prop(&c, "sasl.mechanism"), "PLAIN");
    EXPECT_STR(prop(&c, "security.protocol"), "SASL_SSL");
    EXPECT_STR(prop(&c, "sasl.password"), "a,b\\c");
    EXPECT_INT(c.http.enabled, 0);
    EXPECT_INT(c.batching.max_batch, 512);
    EXPECT_STR(c.model.path, "");
    svc_config_free(&c);

    setenv("RANKD_RANKING_TRIGGER_TYPES", "", 1);
    load_ok(&c, NULL);
    EXPECT_INT(c.ranking.n_trigger_types, 0);
    svc_config_free(&c);
}
END_TEST

/* ---- errors --------------------------------------------------------------------- */

typedef struct bad_case {
    const char *what, *yaml;
    const char *where; /* "LINE: KEY" the message starts with, after "path:" */
    const char *says;  /* and a fragment it holds */
} bad_case;

static const bad_case bad_cases[] = {
    {"unknown key", "kafka:\n  brokers: x\n  brokerz: y\n", "3: kafka.brokerz",
     "unknown key (did you mean kafka.brokers?)"},
    {"unknown key, other section", "redis:\n  brokers: x\n", "2: redis.brokers",
     "unknown key (did you mean kafka.brokers?)"},
    {"unknown section", "\nkafak:\n  brokers: x\n", "2: kafak", "unknown key (did you mean kafka?)"},
    {"unknown key, no suggestion", "zzzzzz: 1\n", "1: zzzzzz", "unknown key"},
    {"wrong type", "redis:\n  port: abc\n", "2: redis.port", "expected an integer in 1..65535, got \"abc\""},
    {"wrong type, float", "kafka:\n  poll_batch: 1.5\n", "2: kafka.poll_batch",
     "expected an integer in 1..100000, got \"1.5\""},
    {"wrong type, missing", "redis:\n  db:\n", "2: redis.db", "expected an integer >= 0, got nothing"},
    {"out of range", "redis:\n  port: 65536\n", "2: redis.port", "expected an integer in 1..65535, got \"65536\""},
    {"out of range, ttl", "redis:\n  ttl_seen_s: 0\n", "2: redis.ttl_seen_s", "expected an integer >= 1"},
    {"out of range, overflow", "http:\n  port: 99999999999999999999\n", "2: http.port",
     "expected an integer in 0..65535"},
    {"out of range, max_batch", "batching:\n  max_batch: 0\n", "2: batching.max_batch",
     "expected an integer in 1..65536, got \"0\""},
    {"bad bool", "ranking:\n  exclude_seen: maybe\n", "2: ranking.exclude_seen",
     "expected true/false, yes/no or on/off, got \"maybe\""},
    {"bad bool, number", "http:\n  enabled: 1\n", "2: http.enabled", "got \"1\""},
    {"bad list, scalar", "ranking:\n  trigger_types: click\n", "2: ranking.trigger_types",
     "expected a list of strings, e.g. [click, purchase], got \"click\""},
    {"bad list, nested", "ranking:\n  trigger_types: [click, [a, b]]\n", "2: ranking.trigger_types",
     "entry 2: expected a string, got a list"},
    {"bad list, empty entry", "ranking:\n  trigger_types: [click, \"\"]\n", "2: ranking.trigger_types",
     "entry 2 is empty"},
    {"bad list, too long", "ranking:\n  trigger_types: [a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q]\n",
     "2: ranking.trigger_types", "more than 16 entries"},
    {"bad nested structure, section", "redis:\n  - port\n", "1: redis",
     "expected a mapping of redis.* keys, got a list"},
    {"bad nested structure, key", "redis:\n  port:\n    number: 1\n", "2: redis.port",
     "expected an integer, got a mapping"},
    {"bad nested structure, properties", "kafka:\n  properties: [a]\n", "2: kafka.properties",
     "expected a mapping of librdkafka properties (name: value), got a list"},
    {"bad nested structure, property value", "kafka:\n  properties:\n    client.id: {a: b}\n",
     "3: kafka.properties.client.id", "expected a string, got a mapping"},
    {"bad nested structure, top", "- kafka\n", "1", "expected a mapping of sections"},
    {"invalid YAML", "kafka:\n  brokers: a\n\n  group_id: [b\nredis:\n  port: 1\n", "5",
     "invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence at line 4)"},
    {"invalid YAML, indentation", "kafka:\n  brokers: a\n group_id: b\n", "3",
     "invalid YAML: did not find expected key"},
    {"invalid YAML, tab", "kafka:\n\tbrokers: a\n", "2", "invalid YAML"},
    {"second document", "redis:\n  port: 1\n---\nredis:\n  port: 2\n", "3", "a second YAML document"},
    {"set twice", "redis:\n  port: 1\nredis.port: 2\n", "3: redis.port", "set twice in this file (first at line 2)"},
    {"bad choice", "model:\n  device: gpu\n", "2: model.device", "expected one of auto, cuda, cpu, got \"gpu\""},
    {"bad choice, level", "logging:\n  level: verbose\n", "2: logging.level",
     "expected one of error, warn, info, debug, got \"verbose\""},
    {"bad choice, format", "logging:\n  format: xml\n", "2: logging.format", "expected one of text, json"},
    {"empty topic", "kafka:\n  output_topic: \"\"\n", "2: kafka.output_topic", "expected a non-empty string"},
    {"empty group", "kafka:\n  group_id:\n", "2: kafka.group_id", "expected a non-empty string"},
    {"reserved property", "kafka:\n  properties:\n    bootstrap.servers: x:1\n", "3: kafka.properties",
     "bootstrap.servers: rankd sets it; set kafka.brokers instead"},
    {"property twice", "kafka:\n  properties:\n    client.id: a\n    client.id: b\n", "4: kafka.properties.client.id",
     "set twice in this mapping (first at line 3)"},
    {"alias", "kafka:\n  brokers: &b x\n  group_id: *b\n", "3: kafka.group_id", "aliases are not supported"},
    {"k above retrieve_n", "ranking:\n  retrieve_n: 50\n  k: 60\n", "3: ranking.k",
     "60 is more than ranking.retrieve_n (50)"},
    {"output is input", "kafka:\n  output_topic: rankd-events\n", "2: kafka.output_topic",
     "rankd would consume its own output"},
    {"dead letters into input", "kafka:\n  input_topic: in\n  dead_letter_topic: in\n", "3: kafka.dead_letter_topic",
     "is kafka.input_topic too"},
    {"password and password_file", "redis:\n  password: hunter2\n  password_file: /etc/hostname\n",
     "3: redis.password_file", "redis.password is set too; set one of them"},
    {"password_file endless", "redis:\n  password_file: /dev/zero\n", "2: redis.password_file",
     "/dev/zero: the first line is over 4096 bytes"},
    {"password_file missing", "redis:\n  password_file: /nonexistent/rankd-pw\n", "2: redis.password_file",
     "/nonexistent/rankd-pw: cannot open: No such file or directory"},
    {"A/B percent without a variant b", "model:\n  path: a\n  b:\n    percent: 30\n", "4: model.b.percent",
     "is 30, but model.b.path is \"\": there is no variant b to rank those users"},
    {"A/B percent out of range", "model:\n  b.path: b\n  b.percent: 101\n", "3: model.b.percent",
     "expected an integer in 0..100, got \"101\""},
    {"A/B key misspelt", "model:\n  b:\n    pth: b\n", "3: model.b.pth", "unknown key (did you mean model.b.path?)"},
    {"event size limit zero", "kafka:\n  max_event_bytes: 0\n", "2: kafka.max_event_bytes",
     "expected an integer in 1..1000000000, got \"0\""},
    {"body size limit over 1 GiB", "http:\n  max_body_bytes: 1073741825\n", "2: http.max_body_bytes",
     "expected an integer in 1..1073741824, got \"1073741825\""},
    {"candidates limit zero", "ranking:\n  max_candidates: 0\n", "2: ranking.max_candidates",
     "expected an integer in 1..1000000, got \"0\""},
    {"candidates limit too high", "ranking:\n  max_candidates: 1000001\n", "2: ranking.max_candidates",
     "expected an integer in 1..1000000, got \"1000001\""},
    {"retrieved candidates too high", "ranking:\n  retrieve_n: 1000001\n", "2: ranking.retrieve_n",
     "expected an integer in 1..1000000, got \"1000001\""},
    {"reload interval negative", "model:\n  reload_check_ms: -1\n", "2: model.reload_check_ms",
     "expected an integer in 0..86400000, got \"-1\""},
};

START_TEST(test_errors)
{
    const bad_case *b = &bad_cases[_i];
    char err[CM_ERRSZ], path[PATH_LEN], want[PATH_LEN + 128];
    printf("%s:\n", b->what);
    load_fail(b->yaml, err, path);
    snprintf(want, sizeof want, "%s:%s:", path, b->where);
    ck_assert_msg(!strncmp(err, want, strlen(want)), "%s: message does not start with \"%s\": %s", b->what, want, err);
    ck_assert_msg(strstr(err, b->says), "%s: message lacks \"%s\": %s", b->what, b->says, err);
    ck_assert_msg(!strstr(err, "hunter2"), "a secret in an error message: %s", err);
}
END_TEST

typedef struct env_case {
    const char *var, *value, *says;
} env_case;

static const env_case env_cases[] = {
    {"RANKD_REDIS_PORT", "abc", "expected an integer in 1..65535, got \"abc\""},
    {"RANKD_REDIS_PORT", "", "expected an integer in 1..65535, got \"\""},
    {"RANKD_HTTP_ENABLED", "maybe", "expected true/false, yes/no or on/off"},
    {"RANKD_RANKING_TRIGGER_TYPES", "click,,purchase", "entry 2 is empty"},
    {"RANKD_KAFKA_PROPERTIES", "sasl.mechanism=PLAIN,oops", "entry 2: expected name=value"},
    {"RANKD_KAFKA_PROPERTIES", "group.id=x", "group.id: rankd sets it; set kafka.group_id instead"},
    {"RANKD_KAFKA_BROKERS", "", "expected a non-empty string"},
    {"RANKD_MODEL_DEVICE", "tpu", "expected one of auto, cuda, cpu, got \"tpu\""},
    {"RANKD_RANKING_K", "101", "101 is more than ranking.retrieve_n (100)"},
};

START_TEST(test_env_errors)
{
    const env_case *e = &env_cases[_i];
    char err[CM_ERRSZ] = "", want[128];
    setenv(e->var, e->value, 1);
    svc_config c;
    ck_assert_int_eq(svc_config_load(&c, NULL, err, sizeof err), -1);
    printf("  %s=\"%s\": %s\n", e->var, e->value, err);
    snprintf(want, sizeof want, "environment %s: ", e->var);
    ck_assert_msg(!strncmp(err, want, strlen(want)), "message does not start with \"%s\": %s", want, err);
    ck_assert_msg(strstr(err, e->says), "message lacks \"%s\": %s", e->says, err);
}
END_TEST

/* The text entry point (what tests/fuzz/fuzz_config.c calls) loads what
 * the file would, and both refuse more than 16 MiB, naming the limit. */
START_TEST(test_text_and_size_limit)
{
    static const char yaml[] = "redis:\n  port: 6390\nranking:\n  k: 5\n";
    svc_config c;
    char err[CM_ERRSZ];
    ck_assert_msg(svc_config_load_text(&c, "inline.yaml", yaml, strlen(yaml), err, sizeof err) == 0, "%s", err);
    EXPECT_INT(c.redis.port, 6390);
    EXPECT_INT(c.ranking.k, 5);
    svc_config_free(&c);
    static const char bad[] = "redis:\n  port: 0\n";
    ck_assert_int_eq(svc_config_load_text(&c, "inline.yaml", bad, strlen(bad), err, sizeof err), -1);
    printf("text, port 0: %s\n", err);
    ck_assert_msg(strstr(err, "inline.yaml:2: redis.port: expected an integer in 1..65535, got \"0\""), "%s", err);

    size_t big = (16u << 20) + 1;
    char *text = malloc(big);
    ck_assert_ptr_nonnull(text);
    memset(text, '\n', big);
    ck_assert_int_eq(svc_config_load_text(&c, "big.yaml", text, big, err, sizeof err), -1);
    printf("text of %zu bytes: %s\n", big, err);
    ck_assert_str_eq(err, "big.yaml: 16777217 bytes, larger than 16777216; is it a config file?");
    char path[PATH_LEN];
    snprintf(path, sizeof path, "%s/big.yaml", tmp_root);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert(fwrite(text, 1, big, f) == big);
    fclose(f);
    free(text);
    ck_assert_int_eq(svc_config_load(&c, path, err, sizeof err), -1);
    printf("file of %zu bytes: %s\n", big, err);
    ck_assert_msg(strstr(err, "big.yaml: larger than 16777216 bytes; is it a config file?"), "%s", err);
    unlink(path);
}
END_TEST

START_TEST(test_missing_file)
{
    char err[CM_ERRSZ] = "", path[PATH_LEN];
    svc_config c;
    snprintf(path, sizeof path, "%s/no-such.yaml", tmp_root);
    ck_assert_int_eq(svc_config_load(&c, path, err, sizeof err), -1);
    printf("  %s\n", err);
    ck_assert_msg(strstr(err, path) == err && strstr(err, "cannot open: No such file or directory"), "%s", err);
    ck_assert_int_eq(svc_config_load(&c, tmp_root, err, sizeof err), -1); /* a directory */
    printf("  %s\n", err);
    ck_assert_msg(strstr(err, tmp_root) == err && strstr(err, "Is a directory"), "%s", err);
}
END_TEST

/* ---- redis.password_file ------------------------------------------------------ */

START_TEST(test_password_file)
{
    char pw[PATH_LEN], path[PATH_LEN], yaml[PATH_LEN + 64], err[CM_ERRSZ];
    const char *contents[][2] = {{"s3cret pass\n", "s3cret pass"},
                                 {"s3cret\r\nsecond line ignored\n", "s3cret"},
                                 {"no-newline", "no-newline"}};
    svc_config c;
    for (int i = 0; i < 3; i++) {
        write_file(pw, "redis.pw", contents[i][0]);
        snprintf(yaml, sizeof yaml, "redis:\n  password_file: %s\n", pw);
        write_file(path, "pw.yaml", yaml);
        load_ok(&c, path);
        EXPECT_STR(c.redis.password, contents[i][1]);
        EXPECT_STR(c.redis.password_file, pw);
        svc_config_free(&c);
    }
    /* from the environment too */
    setenv("RANKD_REDIS_PASSWORD_FILE", pw, 1);
    load_ok(&c, NULL);
    EXPECT_STR(c.redis.password, "no-newline");
    svc_config_free(&c);
    unsetenv("RANKD_REDIS_PASSWORD_FILE");

    write_file(pw, "redis.pw", "\n");
    load_fail(yaml, err, path);
    ck_assert_msg(strstr(err, ":2: redis.password_file: ") && strstr(err, "the first line is empty"), "%s", err);
    /* a password in the file, a password_file in the environment */
    write_file(pw, "redis.pw", "x\n");
    setenv("RANKD_REDIS_PASSWORD_FILE", pw, 1);
    load_fail("redis:\n  password: hunter2\n", err, path);
    ck_assert_msg(strstr(err, "environment RANKD_REDIS_PASSWORD_FILE: redis.password is set too"), "%s", err);
}
END_TEST

/* ---- kafka.sasl_password and kafka.sasl_password_file ------------------------------ */

START_TEST(test_sasl_password)
{
    char pw[PATH_LEN], path[PATH_LEN], yaml[PATH_LEN + 64], err[CM_ERRSZ];
    svc_config c;
    write_file(pw, "kafka.pw", "sasl, with\\comma\nsecond line ignored\n");
    snprintf(yaml, sizeof yaml, "kafka:\n  sasl_password_file: %s\n", pw);
    write_file(path, "sasl.yaml", yaml);
    load_ok(&c, path);
    EXPECT_STR(c.kafka.sasl_password, "sasl, with\\comma"); /* no escaping needed in a file */
    ck_assert_ptr_null(prop(&c, "sasl.password"));            /* kept out of the properties */
    char *out = print_str(&c);
    ck_assert_msg(!strstr(out, "with\\comma"), "the SASL password is printed:\n%s", out);
    ck_assert_ptr_nonnull(strstr(out, "  sasl_password: \"***\""));
    free(out);
    svc_config_free(&c);
    /* the environment, verbatim: commas are no separators here */
    setenv("RANKD_KAFKA_SASL_PASSWORD", "a,b\\c", 1);
    load_ok(&c, NULL);
    EXPECT_STR(c.kafka.sasl_password, "a,b\\c");
    svc_config_free(&c);
    /* both routes at once are refused, naming the keys (never the value) */
    load_fail(yaml, err, path);
    ck_assert_msg(strstr(err, "kafka.sasl_password_file: kafka.sasl_password is set too"), "%s", err);
    unsetenv("RANKD_KAFKA_SASL_PASSWORD");
    load_fail("kafka:\n  sasl_password: pw-SECRET\n  properties:\n    sasl.password: pw-SECRET\n", err, path);
    ck_assert_msg(strstr(err, "sasl.password is set here and in kafka.sasl_password;"), "%s", err);
    ck_assert_msg(!strstr(err, "SECRET"), "a secret in an error message: %s", err);
    write_file(pw, "kafka.pw", "\n");
    snprintf(yaml, sizeof yaml, "kafka:\n  sasl_password_file: %s\n", pw);
    load_fail(yaml, err, path);
    ck_assert_msg(strstr(err, ":2: kafka.sasl_password_file: ") && strstr(err, "the first line is empty"), "%s", err);
}
END_TEST

/* ---- printing ------------------------------------------------------------------- */

START_TEST(test_print_masks_secrets)
{
    char pw[PATH_LEN], path[PATH_LEN], yaml[1024];
    write_file(pw, "redis.pw", "redis-SECRET-1\n");
    snprintf(yaml, sizeof yaml,
             "redis:\n  password_file: %s\n"
             "http:\n  token: http-SECRET-2\n"
             "kafka:\n  properties:\n"
             "    sasl.password: kafka-SECRET-3\n"
             "    ssl.key.password: kafka-SECRET-4\n"
             "    sasl.oauthbearer.client.secret: kafka-SECRET-5\n"
             "    ssl.key.pem: kafka-SECRET-6\n"
             "    ssl.keystore.password: \"\"\n"
             "    sasl.username: visible-user\n",
             pw);
    write_file(path, "secrets.yaml", yaml);
    svc_config c;
    load_ok(&c, path);
    EXPECT_STR(c.redis.password, "redis-SECRET-1");
    char *out = print_str(&c);
    printf("%s", out);
    ck_assert_msg(!strstr(out, "SECRET"), "a secret is printed");
    ck_assert_ptr_nonnull(strstr(out, "  password: \"***\""));
    ck_assert_ptr_nonnull(strstr(out, "  token: \"***\""));
    ck_assert_ptr_nonnull(strstr(out, "\"sasl.password\": \"***\""));
    ck_assert_ptr_nonnull(strstr(out, "\"ssl.key.password\": \"***\""));
    ck_assert_ptr_nonnull(strstr(out, "\"sasl.oauthbearer.client.secret\": \"***\""));
    ck_assert_ptr_nonnull(strstr(out, "\"ssl.key.pem\": \"***\""));
    ck_assert_ptr_nonnull(strstr(out, "\"ssl.keystore.password\": \"\"")); /* empty: shown empty */
    ck_assert_ptr_nonnull(strstr(out, "\"sasl.username\": \"visible-user\""));
    ck_assert_ptr_nonnull(strstr(out, pw)); /* the file's path is no secret */
    free(out);
    svc_config_free(&c);

    load_ok(&c, NULL);
    out = print_str(&c);
    ck_assert_ptr_nonnull(strstr(out, "  password: \"\""));
    ck_assert_ptr_nonnull(strstr(out, "  token: \"\""));
    free(out);
    svc_config_free(&c);
}
END_TEST

/* What print writes loads back to the same config (no secrets here). */
START_TEST(test_print_round_trip)
{
    char path[PATH_LEN];
    write_file(path, "odd.yaml",
               "kafka:\n  brokers: 'a:1,b:2'\n  group_id: \"quote\\\" back\\\\slash tab\\t\"\n"
               "  properties: {client.id: \"x: y # z\", debug: \"broker,topic\"}\n"
               "redis:\n  prefix: \"\"\nranking:\n  trigger_types: [\"a b\", 'yes', \"1\"]\n");
    svc_config c, d;
    load_ok(&c, path);
    char *first = print_str(&c);
    printf("%s", first);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    svc_config_print(f, &c);
    fclose(f);
    load_ok(&d, path);
    char *second = print_str(&d);
    ck_assert_str_eq(first, second);
    EXPECT_STR(d.kafka.group_id, "quote\" back\\slash tab\t");
    EXPECT_STR(d.ranking.trigger_types[1], "yes");
    EXPECT_STR(prop(&d, "debug"), "broker,topic");
    free(first);
    free(second);
    svc_config_free(&c);
    svc_config_free(&d);
}
END_TEST

START_TEST(test_free)
{
    static const svc_config zero;
    svc_config c;
    load_ok(&c, NULL);
    svc_config_free(&c);
    ck_assert_msg(memcmp(&c, &zero, sizeof c) == 0, "svc_config_free left the config non-zero");
    svc_config_free(&c); /* twice is harmless */
    svc_config_free(NULL);
    printf("  svc_config_free zeroes the config; twice and NULL are harmless\n");
}
END_TEST

/* ---- production.yaml --------------------------------------------------------- */

START_TEST(test_production)
{
    char pw[PATH_LEN], err[CM_ERRSZ] = "";
    svc_config c;
    /* As shipped it points at the Secret's mount, absent here. */
    ck_assert_int_eq(svc_config_load(&c, "configs/production.yaml", err, sizeof err), -1);
    printf("  without the mounted Secret: %s\n", err);
    ck_assert_msg(strstr(err, "configs/production.yaml:") == err &&
                      strstr(err, "redis.password_file: /etc/rankd/redis/password: cannot open"),
                  "%s", err);
    /* With the Secrets the deployment provides. */
    write_file(pw, "redis.pw", "redis-pw\n");
    setenv("RANKD_REDIS_PASSWORD_FILE", pw, 1);
    setenv("RANKD_KAFKA_PROPERTIES", "sasl.password=kafka-pw", 1);
    setenv("RANKD_HTTP_TOKEN", "http-token", 1);
    load_ok(&c, "configs/production.yaml");
    EXPECT_STR(c.kafka.group_id, "rankd-prod");
    EXPECT_STR(prop(&c, "security.protocol"), "SASL_SSL");
    EXPECT_STR(prop(&c, "sasl.password"), "kafka-pw");
    EXPECT_STR(c.redis.password, "redis-pw");
    EXPECT_STR(c.http.bind, "0.0.0.0");
    EXPECT_STR(c.http.token, "http-token");
    EXPECT_INT(c.batching.max_batch, 256);
    EXPECT_STR(c.logging.format, "json");
    ck_assert_int_le(c.ranking.k, c.ranking.retrieve_n);
    svc_config_free(&c);
}
END_TEST

/* ---- rankd check-config ---------------------------------------------------------- */

static const char *rankd_bin(void)
{
    const char *b = getenv("RANKD_BIN");
    return b && *b ? b : "build/rankd";
}

/* Runs `rankd check-config ARGS` with stdout and stderr into out and errout. */
static int check_config(const char *args, char *out, size_t outsz, char *errout, size_t errsz)
{
    char cmd[1024], errpath[PATH_LEN];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", tmp_root);
    snprintf(cmd, sizeof cmd, "%s check-config %s 2>%s", rankd_bin(), args, errpath);
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "popen %s", cmd);
    size_t n = fread(out, 1, outsz - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    FILE *e = fopen(errpath, "r");
    ck_assert_ptr_nonnull(e);
    n = fread(errout, 1, errsz - 1, e);
    errout[n] = '\0';
    fclose(e);
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    printf("$ rankd check-config %s -> exit %d, %zu bytes out; stderr: %s%s", args, rc, strlen(out), errout,
           *errout ? "" : "\n");
    return rc;
}

START_TEST(test_check_config_cli)
{
    static char out[16384], errout[4096];
    char path[PATH_LEN], args[PATH_LEN + 64];
    ck_assert_int_eq(check_config("", out, sizeof out, errout, sizeof errout), 0);
    ck_assert_msg(strstr(out, "kafka:\n") && strstr(out, "  brokers: \"127.0.0.1:9092\""), "%s", out);
    ck_assert_str_eq(errout, "");

    write_file(path, "cli.yaml", "redis:\n  port: 6390\n");
    setenv("RANKD_HTTP_TOKEN", "cli-SECRET", 1);
    ck_assert_int_eq(check_config(path, out, sizeof out, errout, sizeof errout), 0);
    ck_assert_ptr_nonnull(strstr(out, "  port: 6390"));
    ck_assert_ptr_nonnull(strstr(out, "  token: \"***\""));
    ck_assert_msg(!strstr(out, "SECRET"), "the token is printed");
    unsetenv("RANKD_HTTP_TOKEN");

    write_file(path, "cli-bad.yaml", "redis:\n  port: abc\n");
    ck_assert_int_eq(check_config(path, out, sizeof out, errout, sizeof errout), 1);
    snprintf(args, sizeof args, "%s:2: redis.port: expected an integer", path);
    ck_assert_msg(strstr(errout, args), "%s", errout);
    ck_assert_str_eq(out, "");

    ck_assert_int_eq(check_config("/nonexistent.yaml", out, sizeof out, errout, sizeof errout), 1);
    ck_assert_ptr_nonnull(strstr(errout, "/nonexistent.yaml: cannot open"));
    ck_assert_int_eq(check_config("a.yaml b.yaml", out, sizeof out, errout, sizeof errout), 2);
    ck_assert_ptr_nonnull(strstr(errout, "usage: rankd check-config"));
    setenv("RANKD_REDIS_PORT", "0", 1);
    ck_assert_int_eq(check_config("", out, sizeof out, errout, sizeof errout), 1);
    ck_assert_ptr_nonnull(strstr(errout, "environment RANKD_REDIS_PORT: "));
}
END_TEST

/* ---- runner ---------------------------------------------------------------------- */

/* Variables of the developer's shell must not leak into the expectations. */
static void clear_config_env(void)
{
    static const char *const sections[] = {"KAFKA_", "REDIS_", "MODEL_", "RANKING_", "BATCHING_", "HTTP_", "LOGGING_"};
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; *e && !again; e++)
            for (size_t s = 0; s < sizeof sections / sizeof sections[0] && !again; s++) {
                char prefix[32];
                snprintf(prefix, sizeof prefix, "RANKD_%s", sections[s]);
                if (!strncmp(*e, prefix, strlen(prefix))) {
                    char name[256];
                    snprintf(name, sizeof name, "%.*s", (int)strcspn(*e, "="), *e);
                    printf("check_config: ignoring %s from the environment\n", name);
                    unsetenv(name);
                    again = 1;
                }
            }
    }
}

static void rm_tmp(void)
{
    DIR *d = opendir(tmp_root);
    struct dirent *e;
    char path[PATH_LEN];
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", tmp_root, e->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(tmp_root);
}

int main(void)
{
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    clear_config_env();
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_default_values);
    tcase_add_test(tc, test_default_documented);
    tcase_add_test(tc, test_file_overrides);
    tcase_add_test(tc, test_env_overrides);
    tcase_add_loop_test(tc, test_errors, 0, (int)(sizeof bad_cases / sizeof bad_cases[0]));
    tcase_add_loop_test(tc, test_env_errors, 0, (int)(sizeof env_cases / sizeof env_cases[0]));
    tcase_add_test(tc, test_text_and_size_limit);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_password_file);
    tcase_add_test(tc, test_sasl_password);
    tcase_add_test(tc, test_print_masks_secrets);
    tcase_add_test(tc, test_print_round_trip);
    tcase_add_test(tc, test_free);
    tcase_add_test(tc, test_production);
    tcase_add_test(tc, test_check_config_cli);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    rm_tmp();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
