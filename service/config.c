/* service/config.c — see config.h. Every key is a row of `keys` below; one
 * loader walks YAML (libyaml's event API) and the environment against it,
 * so adding a key is adding a row, a field in svc_config and a documented
 * line in configs/default.yaml.
 *
 * Sources are applied in order: the embedded configs/default.yaml (which
 * must set every key, to the default the row gives), the user's file, the
 * environment. Any error ends the load: the config is freed, so setters
 * replace values in place without undo. Each key remembers where its value
 * came from, so that checks across keys also cite a file and a line. */
#include "service/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "common/err.h"

/* configs/default.yaml as bytes; written by scripts/embed.sh at build time. */
extern const unsigned char svc_default_yaml[];
extern const size_t svc_default_yaml_len;

#define DEFAULT_NAME "configs/default.yaml (embedded)"
#define MAX_FILE_BYTES (16u << 20)
#define MAX_NAME 160 /* longest dotted key we look up; longer ones are unknown */

typedef enum ktype { T_STR, T_INT, T_BOOL, T_LIST, T_MAP } ktype;

/* K_SECRET: printed as "***"; K_NONEMPTY: a string must not be "", nor a
 * list entry. */
enum { K_SECRET = 1, K_NONEMPTY = 2 };

typedef struct key {
    const char *name;    /* section.name */
    ktype type;
    size_t off;          /* char *, int, int (bool), char *[cap], svc_kv[cap] */
    size_t off_n;        /* lists and maps: the int count */
    const char *def;     /* the default, written as its environment variable would be */
    int lo, hi;          /* ints: bounds; lists and maps: hi is the capacity */
    const char *choices; /* strings: allowed values "a|b|c"; NULL: any */
    unsigned flags;
    const char *help;
} key;

#define F(f) offsetof(svc_config, f)
#define STR(n, f, d, fl, ch, h) {n, T_STR, F(f), 0, d, 0, 0, ch, fl, h}
#define INT(n, f, d, lo, hi, h) {n, T_INT, F(f), 0, d, lo, hi, NULL, 0, h}
#define BOOL(n, f, d, h) {n, T_BOOL, F(f), 0, d, 0, 1, NULL, 0, h}

static const key keys[] = {
    STR("kafka.brokers", kafka.brokers, "127.0.0.1:9092", K_NONEMPTY, NULL, "bootstrap servers, host:port,..."),
    STR("kafka.group_id", kafka.group_id, "rankd", K_NONEMPTY, NULL, "consumer group"),
    STR("kafka.input_topic", kafka.input_topic, "rankd-events", K_NONEMPTY, NULL, "events in"),
    STR("kafka.output_topic", kafka.output_topic, "rankd-rankings", K_NONEMPTY, NULL, "ranked lists out"),
    STR("kafka.dead_letter_topic", kafka.dead_letter_topic, "rankd-dead-letter", K_NONEMPTY, NULL,
        "invalid events, with the reason"),
    INT("kafka.poll_batch", kafka.poll_batch, "256", 1, 100000, "messages per poll round"),
    INT("kafka.poll_timeout_ms", kafka.poll_timeout_ms, "100", 0, 60000, "longest a poll waits"),
    INT("kafka.max_event_bytes", kafka.max_event_bytes, "65536", 1, 1000000000, "larger events are dead-lettered"),
    INT("kafka.commit_interval_ms", kafka.commit_interval_ms, "1000", 1, 86400000, "stored offsets commit period"),
    {"kafka.properties", T_MAP, F(kafka.props), F(kafka.n_props), "", 0, SVC_MAX_KAFKA_PROPS, NULL, 0,
     "librdkafka properties, passed through"},
    STR("kafka.sasl_password", kafka.sasl_password, "", K_SECRET, NULL, "SASL password; or sasl_password_file"),
    STR("kafka.sasl_password_file", kafka.sasl_password_file, "", 0, NULL, "file whose first line is the SASL password"),
    STR("redis.host", redis.host, "127.0.0.1", K_NONEMPTY, NULL, "server host"),
    INT("redis.port", redis.port, "6379", 1, 65535, "server port"),
    STR("redis.password", redis.password, "", K_SECRET, NULL, "AUTH password; or password_file"),
    STR("redis.password_file", redis.password_file, "", 0, NULL, "file whose first line is the password"),
    INT("redis.db", redis.db, "0", 0, INT_MAX, "database number"),
    STR("redis.prefix", redis.prefix, "rankd:", 0, NULL, "prefix of every key"),
    INT("redis.ttl_history_s", redis.ttl_history_s, "2592000", 1, INT_MAX, "TTL of a user's history"),
    INT("redis.ttl_seen_s", redis.ttl_seen_s, "2592000", 1, INT_MAX, "TTL of a user's seen set"),
    INT("redis.ttl_item_s", redis.ttl_item_s, "7776000", 1, INT_MAX, "TTL of an item's metadata"),
    INT("redis.ttl_user_s", redis.ttl_user_s, "2592000", 1, INT_MAX, "TTL of a user's metadata"),
    INT("redis.timeout_ms", redis.timeout_ms, "1000", 1, 3600000, "connect and command timeout"),
    STR("model.path", model.path, "", 0, NULL, "artifact; \"\": the one make run trains"),
    STR("model.device", model.device, "auto", 0, "auto|cuda|cpu", "where the scorer runs"),
    INT("model.threads", model.threads, "0", 0, 1024, "CPU scorer threads (on the GPU: host copy threads, at most 4); 0: every core"),
    INT("model.reload_check_ms", model.reload_check_ms, "1000", 0, 86400000,
        "poll the artifacts for changes; 0: reload on SIGHUP only"),
    STR("model.b.path", model.b.path, "", 0, NULL, "A/B: variant b's artifact; \"\": no A/B test"),
    INT("model.b.percent", model.b.percent, "0", 0, 100, "A/B: percent of users (by id hash) ranked by b"),
    INT("ranking.retrieve_n", ranking.retrieve_n, "100", 1, 1000000, "retrieved candidates per ranking"),
    INT("ranking.k", ranking.k, "20", 1, 1000000, "items published, at most retrieve_n"),
    {"ranking.trigger_types", T_LIST, F(ranking.trigger_types), F(ranking.n_trigger_types), "click,purchase",
     0, SVC_MAX_TRIGGERS, NULL, K_NONEMPTY, "interaction types that trigger a ranking"},
    BOOL("ranking.exclude_seen", ranking.exclude_seen, "true", "drop items the user has seen"),
    BOOL("ranking.exclude_unavailable", ranking.exclude_unavailable, "true", "drop unavailable items"),
    INT("ranking.max_candidates", ranking.max_candidates, "1000", 1, 1000000, "items in a ranking event"),
    INT("batching.max_batch", batching.max_batch, "64", 1, 65536, "requests per scorer call"),
    INT("batching.max_wait_us", batching.max_wait_us, "500", 0, 10000000, "longest wait for a batch to fill"),
    INT("batching.latency_target_us", batching.latency_target_us, "5000", 1, 60000000, "batches grow only under it"),
    BOOL("http.enabled", http.enabled, "true", "health, metrics and the rank API"),
    STR("http.bind", http.bind, "127.0.0.1", K_NONEMPTY, NULL, "listen address"),
    INT("http.port", http.port, "8080", 0, 65535, "listen port; 0: a free one"),
    STR("http.token", http.token, "", K_SECRET, NULL, "bearer token for POST /v1/rank; \"\": none"),
    INT("http.max_body_bytes", http.max_body_bytes, "1048576", 1, 1 << 30, "largest request body"),
    INT("http.rate_limit_rps", http.rate_limit_rps, "0", 0, 10000000, "POST /v1/rank per second; 0: no limit"),
    INT("http.rate_limit_burst", http.rate_limit_burst, "0", 0, 10000000, "requests allowed at once; 0: rate_limit_rps"),
    STR("logging.level", logging.level, "info", 0, "error|warn|info|debug", "least severe level written"),
    STR("logging.format", logging.format, "text", 0, "text|json", "line format"),
};
#define N_KEYS (sizeof keys / sizeof keys[0])

/* Properties rankd sets itself, and the key to use instead. */
static const struct {
    const char *prop, *instead;
} reserved_props[] = {
    {"bootstrap.servers", "set kafka.brokers instead"},
    {"metadata.broker.list", "set kafka.brokers instead"},
    {"group.id", "set kafka.group_id instead"},
    {"auto.commit.interval.ms", "set kafka.commit_interval_ms instead"},
    {"enable.auto.commit", "rankd commits the offsets it stores"},
    {"enable.auto.offset.store", "rankd stores offsets only after delivery (at-least-once)"},
};

/* Substrings of property names whose values print as "***". */
static const char *const secret_props[] = {"password", "secret", "sasl.oauthbearer", "ssl.key"};

_Static_assert(SVC_MAX_KAFKA_PROPS <= 64, "a uint64_t marks the properties one YAML mapping sets");

/* ---- fields ---------------------------------------------------------------- */

static char **str_at(svc_config *c, const key *k) { return (char **)(void *)((char *)c + k->off); }
static int *int_at(svc_config *c, size_t off) { return (int *)(void *)((char *)c + off); }
static svc_kv *map_at(svc_config *c, const key *k) { return (svc_kv *)(void *)((char *)c + k->off); }

static char *const *cstr_at(const svc_config *c, const key *k)
{
    return (char *const *)(const void *)((const char *)c + k->off);
}
static int cint_at(const svc_config *c, size_t off) { return *(const int *)(const void *)((const char *)c + off); }
static const svc_kv *cmap_at(const svc_config *c, const key *k)
{
    return (const svc_kv *)(const void *)((const char *)c + k->off);
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static void free_list(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
}

void svc_config_free(svc_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < N_KEYS; i++) {
        const key *k = &keys[i];
        if (k->type == T_STR)
            free(*str_at(c, k));
        else if (k->type == T_LIST)
            free_list(str_at(c, k), *int_at(c, k->off_n));
        else if (k->type == T_MAP)
            for (int j = 0; j < *int_at(c, k->off_n); j++) {
                free(map_at(c, k)[j].key);
                free(map_at(c, k)[j].value);
            }
    }
    memset(c, 0, sizeof *c);
}

int svc_config_triggers(const svc_config *c, const char *type)
{
    for (int i = 0; i < c->ranking.n_trigger_types; i++)
        if (!strcmp(c->ranking.trigger_types[i], type))
            return 1;
    return 0;
}

/* ---- the loader and its messages ------------------------------------------- */

/* Where a value comes from: a file and a line, or an environment variable. */
typedef struct site {
    const char *file; /* NULL: the environment */
    int line;
    char env[MAX_NAME + 8];
} site;

typedef struct loader {
    svc_config *c;
    char *err;
    size_t errsz;
    const char *file;     /* the YAML source being read */
    int seen[N_KEYS];     /* the line where this file set each key; 0: not yet */
    site at[N_KEYS];      /* where each key's value came from */
    yaml_parser_t parser;
    yaml_event_t ev;
    int have_ev;
} loader;

static void env_name(char *out, size_t outsz, const char *name)
{
    size_t n = (size_t)snprintf(out, outsz, "RANKD_%s", name);
    for (size_t i = 6; i < n && i < outsz; i++)
        out[i] = out[i] == '.' ? '_' : (char)toupper((unsigned char)out[i]);
}

/* "file:line: name: msg", or "environment RANKD_...: msg". */
__attribute__((format(printf, 4, 5)))
static int fail(loader *l, const site *s, const char *name, const char *fmt, ...)
{
    char msg[CM_ERRSZ];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (s->file)
        return cm_errf(l->err, l->errsz, "%s:%d: %s: %s", s->file, s->line, name, msg);
    return cm_errf(l->err, l->errsz, "environment %s: %s", s->env, msg);
}

static int oom(loader *l, const site *s, const char *name) { return fail(l, s, name, "out of memory"); }

/* A value for a message: quoted, control bytes escaped, long ones cut. */
static const char *show(char *buf, size_t bufsz, const char *s, size_t n)
{
    size_t o = 0, cut = n > 48 ? 48 : n;
    buf[o++] = '"';
    for (size_t i = 0; i < cut && o + 6 < bufsz; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            o += (size_t)snprintf(buf + o, bufsz - o, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            o += (size_t)snprintf(buf + o, bufsz - o, "\\x%02x", ch);
        else
            buf[o++] = (char)ch;
    }
    snprintf(buf + o, bufsz - o, "%s\"", cut < n ? "..." : "");
    return buf;
}

/* ---- suggestions for unknown keys -------------------------------------------- */

static int edit_distance(const char *a, const char *b)
{
    int prev[MAX_NAME + 1], cur[MAX_NAME + 1];
    int na = (int)strlen(a), nb = (int)strlen(b);
    if (na > MAX_NAME || nb > MAX_NAME)
        return INT_MAX;
    for (int j = 0; j <= nb; j++)
        prev[j] = j;
    for (int i = 1; i <= na; i++) {
        cur[0] = i;
        for (int j = 1; j <= nb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (size_t)(nb + 1));
    }
    return prev[nb];
}

static const char *leaf(const char *name)
{
    const char *d = strrchr(name, '.');
    return d ? d + 1 : name;
}

/* The known key or section closest to `name`, or NULL when none is close:
 * within a few edits, or the same last component in another section. */
static const char *suggest(const char *name, char *buf, size_t bufsz)
{
    int n = (int)strlen(name), best = (n / 5 > 2 ? n / 5 : 2) + 1;
    const char *found = NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *dot = strchr(keys[i].name, '.');
        char section[MAX_NAME];
        snprintf(section, sizeof section, "%.*s", (int)(dot - keys[i].name), keys[i].name);
        const char *cands[2] = {keys[i].name, section};
        for (int j = 0; j < 2; j++) {
            int d = edit_distance(name, cands[j]);
            if (d < best) {
                best = d;
                snprintf(buf, bufsz, "%s", cands[j]);
                found = buf;
            }
        }
    }
    if (!found)
        for (size_t i = 0; i < N_KEYS && !found; i++)
            if (strchr(name, '.') && !strcmp(leaf(name), leaf(keys[i].name)))
                found = keys[i].name;
    return found;
}

static int find_key(const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].name, name))
            return (int)i;
    return -1;
}

static int is_section(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strncmp(keys[i].name, name, n) && keys[i].name[n] == '.')
            return 1;
    return 0;
}

/* ---- setting one value ------------------------------------------------------- */

/* A scalar: text of `len` bytes; is_null for YAML's ~, null or nothing. */
typedef struct val {
    const char *s;
    size_t len;
    int is_null;
} val;

static int set_str(loader *l, const key *k, const site *s, const val *v)
{
    char shown[80];
    size_t n = v->is_null ? 0 : v->len;
    if (memchr(v->s, '\0', n))
        return fail(l, s, k->name, "expected a string without NUL bytes");
    if (k->flags & K_NONEMPTY && n == 0)
        return fail(l, s, k->name, "expected a non-empty string");
    if (k->choices) {
        int ok = 0;
        for (const char *p = k->choices; *p && !ok;) {
            size_t w = strcspn(p, "|");
            ok = w == n && !memcmp(p, v->s, n);
            p += w + (p[w] == '|');
        }
        if (!ok) {
            char list[128];
            size_t o = 0;
            for (const char *p = k->choices; *p; p++)
                o += (size_t)snprintf(list + o, sizeof list - o, *p == '|' ? ", " : "%c", *p);
            return fail(l, s, k->name, "expected one of %s, got %s", list, show(shown, sizeof shown, v->s, n));
        }
    }
    char *d = dupn(v->s, n);
    if (!d)
        return oom(l, s, k->name);
    char **f = str_at(l->c, k);
    free(*f);
    *f = d;
    return 0;
}

static int parse_int(const char *s, size_t len, long long *out)
{
    char buf[32];
    while (len && isspace((unsigned char)*s))
        s++, len--;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    for (size_t i = (buf[0] == '-' || buf[0] == '+'); i < len; i++)
        if (!isdigit((unsigned char)buf[i]))
            return -1;
    char *end;
    errno = 0;
    *out = strtoll(buf, &end, 10);
    return errno || *end ? -1 : 0;
}

static int set_int(loader *l, const key *k, const site *s, const val *v)
{
    char shown[80];
    long long x;
    if (v->is_null || parse_int(v->s, v->len, &x) || x < k->lo || x > k->hi) {
        const char *got = v->is_null && !v->len ? "nothing" : show(shown, sizeof shown, v->s, v->len);
        if (k->hi == INT_MAX)
            return fail(l, s, k->name, "expected an integer >= %d, got %s", k->lo, got);
        return fail(l, s, k->name, "expected an integer in %d..%d, got %s", k->lo, k->hi, got);
    }
    *int_at(l->c, k->off) = (int)x;
    return 0;
}

static int set_bool(loader *l, const key *k, const site *s, const val *v)
{
    static const char *const words[] = {"false", "true", "no", "yes", "off", "on"};
    char shown[80];
    for (int i = 0; i < 6 && !v->is_null; i++)
        if (strlen(words[i]) == v->len && !strncasecmp(words[i], v->s, v->len)) {
            *int_at(l->c, k->off) = i % 2;
            return 0;
        }
    return fail(l, s, k->name, "expected true/false, yes/no or on/off, got %s",
                v->is_null && !v->len ? "nothing" : show(shown, sizeof shown, v->s, v->len));
}

/* Replaces a list with the n owned strings of v (taken over either way). */
static int put_list(loader *l, const key *k, const site *s, char **v, int n)
{
    for (int i = 0; i < n; i++)
        if (k->flags & K_NONEMPTY && !*v[i]) {
            free_list(v, n);
            return fail(l, s, k->name, "entry %d is empty", i + 1);
        }
    char **f = str_at(l->c, k);
    int *fn = int_at(l->c, k->off_n);
    free_list(f, *fn);
    if (n)
        memcpy(f, v, sizeof(char *) * (size_t)n);
    *fn = n;
    return 0;
}

static int is_secret_prop(const char *name)
{
    for (size_t i = 0; i < sizeof secret_props / sizeof secret_props[0]; i++)
        if (strstr(name, secret_props[i]))
            return 1;
    return 0;
}

/* Sets property `name` of map k to `value` (copies both); returns its index. */
static int put_prop(loader *l, const key *k, const site *s, const char *name, const char *value, int *index)
{
    if (!*name)
        return fail(l, s, k->name, "a property name is empty");
    for (size_t i = 0; i < sizeof reserved_props / sizeof reserved_props[0]; i++)
        if (!strcmp(name, reserved_props[i].prop))
            return fail(l, s, k->name, "%s: rankd sets it; %s", name, reserved_props[i].instead);
    svc_kv *m = map_at(l->c, k);
    int *n = int_at(l->c, k->off_n), i = 0;
    while (i < *n && strcmp(m[i].key, name))
        i++;
    if (i == k->hi)
        return fail(l, s, k->name, "more than %d properties", k->hi);
    char *v = dupn(value, strlen(value));
    char *nm = i == *n ? dupn(name, strlen(name)) : m[i].key;
    if (!v || !nm) {
        free(v);
        if (i == *n)
            free(nm);
        return oom(l, s, k->name);
    }
    if (i == *n)
        (*n)++;
    else
        free(m[i].value);
    m[i].key = nm;
    m[i].value = v;
    *index = i;
    return 0;
}

/* ---- the environment --------------------------------------------------------- */

static void trim(char *s)
{
    size_t b = 0, e = strlen(s);
    while (isspace((unsigned char)s[b]))
        b++;
    while (e > b && isspace((unsigned char)s[e - 1]))
        e--;
    memmove(s, s + b, e - b);
    s[e - b] = '\0';
}

/* Splits "a,b\,c" at unescaped commas into at most max owned, trimmed
 * strings ("\," is a comma, "\\" a backslash); "" is no entries. */
static int split(loader *l, const key *k, const site *s, const char *text, char **out, int max, int *n)
{
    *n = 0;
    if (!*text)
        return 0;
    for (const char *p = text;;) {
        if (*n == max) {
            free_list(out, *n);
            return fail(l, s, k->name, "more than %d entries", max);
        }
        char *e = malloc(strlen(p) + 1);
        if (!e) {
            free_list(out, *n);
            return oom(l, s, k->name);
        }
        size_t o = 0;
        for (; *p && *p != ','; p++)
            e[o++] = *p == '\\' && (p[1] == ',' || p[1] == '\\') ? *++p : *p;
        e[o] = '\0';
        trim(e);
        out[(*n)++] = e;
        if (!*p++)
            return 0;
    }
}

static int env_value(loader *l, const key *k, const site *s, const char *text)
{
    val v = {text, strlen(text), 0};
    switch (k->type) {
    case T_STR:
        return set_str(l, k, s, &v);
    case T_INT:
        return set_int(l, k, s, &v);
    case T_BOOL:
        return set_bool(l, k, s, &v);
    case T_LIST: {
        char *items[SVC_MAX_TRIGGERS];
        int n;
        if (split(l, k, s, text, items, k->hi, &n))
            return -1;
        return put_list(l, k, s, items, n);
    }
    case T_MAP: {
        char *items[SVC_MAX_KAFKA_PROPS];
        int n, rc = 0, idx;
        if (split(l, k, s, text, items, SVC_MAX_KAFKA_PROPS, &n))
            return -1;
        for (int i = 0; i < n && !rc; i++) {
            char *eq = strchr(items[i], '=');
            if (!eq) {
                rc = fail(l, s, k->name, "entry %d: expected name=value", i + 1);
                break;
            }
            *eq = '\0';
            trim(items[i]);
            trim(eq + 1);
            rc = put_prop(l, k, s, items[i], eq + 1, &idx);
        }
        free_list(items, n);
        return rc;
    }
    }
    return -1;
}

static int load_env(loader *l)
{
    for (size_t i = 0; i < N_KEYS; i++) {
        site s = {NULL, 0, ""};
        env_name(s.env, sizeof s.env, keys[i].name);
        const char *text = getenv(s.env);
        if (!text)
            continue;
        if (env_value(l, &keys[i], &s, text))
            return -1;
        l->at[i] = s;
    }
    return 0;
}

/* ---- YAML ---------------------------------------------------------------------- */

static int yaml_fail(loader *l)
{
    const yaml_parser_t *p = &l->parser;
    if (p->context)
        return cm_errf(l->err, l->errsz, "%s:%zu: invalid YAML: %s (%s at line %zu)", l->file,
                       p->problem_mark.line + 1, p->problem ? p->problem : "syntax error", p->context,
                       p->context_mark.line + 1);
    return cm_errf(l->err, l->errsz, "%s:%zu: invalid YAML: %s", l->file, p->problem_mark.line + 1,
                   p->problem ? p->problem : "syntax error");
}

static int next(loader *l)
{
    if (l->have_ev)
        yaml_event_delete(&l->ev);
    l->have_ev = 0;
    if (!yaml_parser_parse(&l->parser, &l->ev))
        return yaml_fail(l);
    l->have_ev = 1;
    return 0;
}

static int ev_line(const loader *l) { return (int)l->ev.start_mark.line + 1; }

static val ev_val(const loader *l)
{
    const char *s = (const char *)l->ev.data.scalar.value;
    size_t n = l->ev.data.scalar.length;
    int plain = l->ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    int null = plain && (n == 0 || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
                         !strcmp(s, "NULL"));
    return (val){s, n, null};
}

static int ev_is_null(const loader *l) { return l->ev.type == YAML_SCALAR_EVENT && ev_val(l).is_null; }

/* What the current event is, for "expected X, got Y". */
static const char *ev_what(const loader *l, char *buf, size_t bufsz)
{
    switch (l->ev.type) {
    case YAML_SEQUENCE_START_EVENT:
        return "a list";
    case YAML_MAPPING_START_EVENT:
        return "a mapping";
    case YAML_ALIAS_EVENT:
        return "an alias (aliases are not supported)";
    case YAML_SCALAR_EVENT: {
        val v = ev_val(l);
        return v.is_null && !v.len ? "nothing" : show(buf, bufsz, v.s, v.len);
    }
    default:
        return "something else";
    }
}

/* The current event opens a YAML list: replaces the list with its entries. */
static int yaml_list(loader *l, const key *k, const site *s)
{
    char *items[SVC_MAX_TRIGGERS], shown[80];
    int n = 0;
    for (;;) {
        if (next(l))
            break;
        if (l->ev.type == YAML_SEQUENCE_END_EVENT)
            return put_list(l, k, s, items, n);
        site at = {l->file, ev_line(l), ""};
        if (l->ev.type != YAML_SCALAR_EVENT) {
            fail(l, &at, k->name, "entry %d: expected a string, got %s", n + 1, ev_what(l, shown, sizeof shown));
            break;
        }
        if (n == k->hi) {
            fail(l, &at, k->name, "more than %d entries", k->hi);
            break;
        }
        val v = ev_val(l);
        if (memchr(v.s, '\0', v.len)) {
            fail(l, &at, k->name, "entry %d: expected a string without NUL bytes", n + 1);
            break;
        }
        if (!(items[n] = dupn(v.s, v.is_null ? 0 : v.len))) {
            oom(l, &at, k->name);
            break;
        }
        n++;
    }
    free_list(items, n);
    return -1;
}

/* The current event opens a YAML mapping: merges its entries into map k. */
static int yaml_map(loader *l, const key *k)
{
    char shown[80], name[MAX_NAME], full[2 * MAX_NAME];
    uint64_t set_here = 0; /* properties this mapping has set */
    int lines[SVC_MAX_KAFKA_PROPS] = {0};
    for (;;) {
        if (next(l))
            return -1;
        if (l->ev.type == YAML_MAPPING_END_EVENT)
            return 0;
        site at = {l->file, ev_line(l), ""};
        if (l->ev.type != YAML_SCALAR_EVENT || l->ev.data.scalar.length >= sizeof name ||
            memchr(l->ev.data.scalar.value, '\0', l->ev.data.scalar.length))
            return fail(l, &at, k->name, "expected property names (at most %d bytes), got %s",
                        MAX_NAME - 1, ev_what(l, shown, sizeof shown));
        snprintf(name, sizeof name, "%s", (const char *)l->ev.data.scalar.value);
        snprintf(full, sizeof full, "%s.%s", k->name, name);
        if (next(l))
            return -1;
        if (l->ev.type != YAML_SCALAR_EVENT || memchr(l->ev.data.scalar.value, '\0', l->ev.data.scalar.length))
            return fail(l, &at, full, "expected a string, got %s", ev_what(l, shown, sizeof shown));
        int idx;
        if (put_prop(l, k, &at, name, ev_val(l).is_null ? "" : (const char *)l->ev.data.scalar.value, &idx))
            return -1;
        if (set_here >> idx & 1)
            return fail(l, &at, full, "set twice in this mapping (first at line %d)", lines[idx]);
        set_here |= (uint64_t)1 << idx;
        lines[idx] = at.line;
    }
}

/* The current event is the value of key k, at `line`. */
static int yaml_value(loader *l, int ki, int line)
{
    const key *k = &keys[ki];
    site s = {l->file, line, ""};
    char shown[80];
    if (l->seen[ki])
        return fail(l, &s, k->name, "set twice in this file (first at line %d)", l->seen[ki]);
    l->seen[ki] = line;
    l->at[ki] = s;
    if (k->type == T_LIST && l->ev.type == YAML_SEQUENCE_START_EVENT)
        return yaml_list(l, k, &s);
    if (k->type == T_LIST && ev_is_null(l))
        return put_list(l, k, &s, NULL, 0);
    if (k->type == T_MAP && l->ev.type == YAML_MAPPING_START_EVENT)
        return yaml_map(l, k);
    if (k->type == T_MAP && ev_is_null(l))
        return 0;
    if (k->type == T_LIST)
        return fail(l, &s, k->name, "expected a list of strings, e.g. [click, purchase], got %s",
                    ev_what(l, shown, sizeof shown));
    if (k->type == T_MAP)
        return fail(l, &s, k->name, "expected a mapping of librdkafka properties (name: value), got %s",
                    ev_what(l, shown, sizeof shown));
    if (l->ev.type != YAML_SCALAR_EVENT) {
        const char *want = k->type == T_INT ? "an integer" : k->type == T_BOOL ? "a boolean" : "a string";
        return fail(l, &s, k->name, "expected %s, got %s", want, ev_what(l, shown, sizeof shown));
    }
    val v = ev_val(l);
    return k->type == T_STR ? set_str(l, k, &s, &v) : k->type == T_INT ? set_int(l, k, &s, &v)
                                                                          : set_bool(l, k, &s, &v);
}

/* After a MAPPING_START: its keys are `prefix.key` (or `key` at the top). */
static int yaml_section(loader *l, const char *prefix)
{
    char name[MAX_NAME], shown[80], hint[MAX_NAME + 32];
    for (;;) {
        if (next(l))
            return -1;
        if (l->ev.type == YAML_MAPPING_END_EVENT)
            return 0;
        site s = {l->file, ev_line(l), ""};
        if (l->ev.type != YAML_SCALAR_EVENT)
            return fail(l, &s, *prefix ? prefix : "(top level)", "expected key names, got %s",
                        ev_what(l, shown, sizeof shown));
        const char *k = (const char *)l->ev.data.scalar.value;
        snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", k);
        if (strlen(prefix) + 1 + l->ev.data.scalar.length >= sizeof name ||
            memchr(k, '\0', l->ev.data.scalar.length))
            return fail(l, &s, name, "unknown key");
        if (next(l))
            return -1;
        int ki = find_key(name);
        if (ki >= 0) {
            if (yaml_value(l, ki, s.line))
                return -1;
        } else if (is_section(name)) {
            if (l->ev.type == YAML_MAPPING_START_EVENT) {
                if (yaml_section(l, name))
                    return -1;
            } else if (!ev_is_null(l)) {
                return fail(l, &s, name, "expected a mapping of %s.* keys, got %s", name,
                            ev_what(l, shown, sizeof shown));
            }
        } else {
            const char *sug = suggest(name, hint, sizeof hint);
            return sug ? fail(l, &s, name, "unknown key (did you mean %s?)", sug) : fail(l, &s, name, "unknown key");
        }
    }
}

static int yaml_document(loader *l)
{
    char shown[80];
    if (next(l) || next(l)) /* STREAM_START, then DOCUMENT_START or STREAM_END */
        return -1;
    if (l->ev.type == YAML_STREAM_END_EVENT)
        return 0; /* empty, or comments only */
    if (next(l))
        return -1;
    if (l->ev.type == YAML_MAPPING_START_EVENT) {
        if (yaml_section(l, ""))
            return -1;
    } else if (!ev_is_null(l)) {
        return cm_errf(l->err, l->errsz,
                       "%s:%d: expected a mapping of sections (kafka:, redis:, model:, ...), got %s", l->file,
                       ev_line(l), ev_what(l, shown, sizeof shown));
    }
    if (next(l) || next(l)) /* DOCUMENT_END, then STREAM_END */
        return -1;
    if (l->ev.type != YAML_STREAM_END_EVENT)
        return cm_errf(l->err, l->errsz, "%s:%d: a second YAML document; a config file holds one", l->file,
                       ev_line(l));
    return 0;
}

/* Every event of the stream, so that a syntax error is reported as one
 * even when a wrong key or type comes before it. */
static int yaml_syntax(loader *l)
{
    while (!next(l))
        if (l->ev.type == YAML_STREAM_END_EVENT)
            return 0;
    return -1;
}

static int yaml_run(loader *l, const unsigned char *text, size_t len, int (*pass)(loader *))
{
    if (!yaml_parser_initialize(&l->parser))
        return cm_errf(l->err, l->errsz, "%s: out of memory", l->file);
    yaml_parser_set_input_string(&l->parser, text, len);
    int rc = pass(l);
    if (l->have_ev)
        yaml_event_delete(&l->ev);
    l->have_ev = 0;
    yaml_parser_delete(&l->parser);
    return rc;
}

static int load_yaml(loader *l, const char *file, const unsigned char *text, size_t len)
{
    memset(l->seen, 0, sizeof l->seen);
    l->file = file;
    if (yaml_run(l, text, len, yaml_syntax))
        return -1;
    return yaml_run(l, text, len, yaml_document);
}

static int load_file(loader *l, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return cm_errf(l->err, l->errsz, "%s: cannot open: %s", path, strerror(errno));
    unsigned char *buf = malloc(MAX_FILE_BYTES + 1);
    size_t n = buf ? fread(buf, 1, MAX_FILE_BYTES + 1, f) : 0;
    int rc;
    if (!buf)
        rc = cm_errf(l->err, l->errsz, "%s: out of memory", path);
    else if (ferror(f))
        rc = cm_errf(l->err, l->errsz, "%s: cannot read: %s", path, strerror(errno));
    else if (n > MAX_FILE_BYTES)
        rc = cm_errf(l->err, l->errsz, "%s: larger than %u bytes; is it a config file?", path, MAX_FILE_BYTES);
    else
        rc = load_yaml(l, path, buf, n);
    free(buf);
    fclose(f);
    return rc;
}

/* ---- after the default, and after everything -------------------------------- */

/* A value written as its environment variable would be (lists and maps
 * unescaped: the defaults hold no commas). */
static void format_env(const svc_config *c, const key *k, char *buf, size_t bufsz)
{
    size_t o = 0;
    buf[0] = '\0';
    switch (k->type) {
    case T_STR:
        snprintf(buf, bufsz, "%s", *cstr_at(c, k));
        break;
    case T_INT:
        snprintf(buf, bufsz, "%d", cint_at(c, k->off));
        break;
    case T_BOOL:
        snprintf(buf, bufsz, "%s", cint_at(c, k->off) ? "true" : "false");
        break;
    case T_LIST:
        for (int i = 0; i < cint_at(c, k->off_n) && o < bufsz; i++)
            o += (size_t)snprintf(buf + o, bufsz - o, "%s%s", i ? "," : "", cstr_at(c, k)[i]);
        break;
    case T_MAP:
        for (int i = 0; i < cint_at(c, k->off_n) && o < bufsz; i++)
            o += (size_t)snprintf(buf + o, bufsz - o, "%s%s=%s", i ? "," : "", cmap_at(c, k)[i].key,
                                  cmap_at(c, k)[i].value);
        break;
    }
}

/* configs/default.yaml sets every key, to the default its row gives: the
 * documented defaults and the code cannot drift apart. */
static int check_default(loader *l)
{
    char got[1024];
    for (size_t i = 0; i < N_KEYS; i++) {
        if (!l->seen[i])
            return cm_errf(l->err, l->errsz, "%s: %s is not set; the default must set every key", DEFAULT_NAME,
                           keys[i].name);
        format_env(l->c, &keys[i], got, sizeof got);
        if (strcmp(got, keys[i].def))
            return fail(l, &l->at[i], keys[i].name, "is \"%s\", but its row in service/config.c says \"%s\"",
                        got, keys[i].def);
    }
    return 0;
}

/* Where key `name` got its value; every name passed is a row of keys. */
static const site *origin(const loader *l, const char *name) { return &l->at[find_key(name)]; }

#define SECRET_MAX 4096 /* bytes of a secret file's first line */

/* Replaces the secret *value with the first line of the file at `path`,
 * key `file_key`; `value_key` names the key that must then be empty. Used
 * for redis.password_file and kafka.sasl_password_file, so that a secret
 * can come from a mounted file instead of the YAML or the environment. */
static int read_secret_file(loader *l, const char *file_key, const char *value_key, const char *path, char **value)
{
    const site *s = origin(l, file_key);
    if (**value)
        return fail(l, s, file_key, "%s is set too; set one of them", value_key);
    FILE *f = fopen(path, "r");
    if (!f)
        return fail(l, s, file_key, "%s: cannot open: %s", path, strerror(errno));
    /* at most SECRET_MAX bytes: a path such as /dev/zero must not take
     * the memory */
    char line[SECRET_MAX + 1];
    size_t n = 0;
    int ch, nul = 0, rc = 0;
    while ((ch = getc(f)) != EOF && ch != '\n' && n <= SECRET_MAX) {
        nul |= ch == 0;
        line[n < SECRET_MAX ? n : SECRET_MAX] = (char)ch;
        n++;
    }
    if (ferror(f))
        rc = fail(l, s, file_key, "%s: cannot read: %s", path, strerror(errno));
    fclose(f);
    if (rc)
        return rc;
    if (n > SECRET_MAX)
        return fail(l, s, file_key, "%s: the first line is over %d bytes", path, SECRET_MAX);
    while (n > 0 && line[n - 1] == '\r')
        n--;
    line[n] = '\0';
    if (n == 0)
        return fail(l, s, file_key, "%s: the first line is empty", path);
    if (nul)
        return fail(l, s, file_key, "%s: holds a NUL byte", path);
    char *v = strdup(line);
    if (!v)
        return fail(l, s, file_key, "out of memory");
    free(*value);
    *value = v;
    return 0;
}

/* The secret files, then: the SASL password has one home only. */
static int read_secrets(loader *l)
{
    svc_config *c = l->c;
    if (*c->redis.password_file &&
        read_secret_file(l, "redis.password_file", "redis.password", c->redis.password_file, &c->redis.password))
        return -1;
    if (*c->kafka.sasl_password_file &&
        read_secret_file(l, "kafka.sasl_password_file", "kafka.sasl_password", c->kafka.sasl_password_file,
                         &c->kafka.sasl_password))
        return -1;
    for (int i = 0; *c->kafka.sasl_password && i < c->kafka.n_props; i++)
        if (!strcmp(c->kafka.props[i].key, "sasl.password"))
            return fail(l, origin(l, "kafka.properties"), "kafka.properties",
                        "sasl.password is set here and in kafka.sasl_password%s; set one of them",
                        *c->kafka.sasl_password_file ? "_file" : "");
    return 0;
}

static int validate(loader *l)
{
    const svc_config *c = l->c;
    if (c->ranking.k > c->ranking.retrieve_n)
        return fail(l, origin(l, "ranking.k"), "ranking.k", "%d is more than ranking.retrieve_n (%d)", c->ranking.k,
                    c->ranking.retrieve_n);
    if (!strcmp(c->kafka.output_topic, c->kafka.input_topic))
        return fail(l, origin(l, "kafka.output_topic"), "kafka.output_topic",
                    "is kafka.input_topic too (\"%s\"); rankd would consume its own output", c->kafka.input_topic);
    if (!strcmp(c->kafka.dead_letter_topic, c->kafka.input_topic))
        return fail(l, origin(l, "kafka.dead_letter_topic"), "kafka.dead_letter_topic",
                    "is kafka.input_topic too (\"%s\"); bad events would come back forever", c->kafka.input_topic);
    if (c->model.b.percent > 0 && !*c->model.b.path)
        return fail(l, origin(l, "model.b.percent"), "model.b.percent",
                    "is %d, but model.b.path is \"\": there is no variant b to rank those users",
                    c->model.b.percent);
    return read_secrets(l);
}

/* Both entry points: the default, then a file (path) or a text held in
 * memory (name, text, len), then the environment, then the checks across
 * keys. */
static int load(svc_config *c, const char *path, const char *name, const unsigned char *text, size_t len,
                char *err, size_t errsz)
{
    loader *l = calloc(1, sizeof *l);
    memset(c, 0, sizeof *c);
    if (!l)
        return cm_errf(err, errsz, "config: out of memory");
    l->c = c;
    l->err = err;
    l->errsz = errsz;
    int rc = load_yaml(l, DEFAULT_NAME, svc_default_yaml, svc_default_yaml_len);
    if (!rc)
        rc = check_default(l);
    if (!rc && path)
        rc = load_file(l, path);
    else if (!rc && name && len > MAX_FILE_BYTES)
        rc = cm_errf(err, errsz, "%s: %zu bytes, larger than %u; is it a config file?", name, len, MAX_FILE_BYTES);
    else if (!rc && name)
        rc = load_yaml(l, name, text, len);
    if (!rc)
        rc = load_env(l);
    if (!rc)
        rc = validate(l);
    free(l);
    if (rc)
        svc_config_free(c);
    return rc;
}

int svc_config_load(svc_config *c, const char *path, char *err, size_t errsz)
{
    return load(c, path, NULL, NULL, 0, err, errsz);
}

int svc_config_load_text(svc_config *c, const char *name, const char *text, size_t len, char *err, size_t errsz)
{
    return load(c, NULL, name, (const unsigned char *)text, len, err, errsz);
}

/* ---- printing ----------------------------------------------------------------- */

/* s as a YAML double-quoted scalar. */
static void put_quoted(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\x%02x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void put_secret(FILE *f, const char *s) { fputs(*s ? "\"***\"" : "\"\"", f); }

void svc_config_print(FILE *f, const svc_config *c)
{
    const char *section = "";
    size_t section_len = 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        const key *k = &keys[i];
        const char *name = strchr(k->name, '.') + 1; /* model.b.path prints as b.path under model: */
        size_t sl = (size_t)(name - 1 - k->name);
        if (sl != section_len || strncmp(section, k->name, sl)) {
            fprintf(f, "%s%.*s:\n", i ? "\n" : "", (int)sl, k->name);
            section = k->name;
            section_len = sl;
        }
        fprintf(f, "  %s: ", name);
        switch (k->type) {
        case T_STR:
            (k->flags & K_SECRET ? put_secret : put_quoted)(f, *cstr_at(c, k));
            break;
        case T_INT:
            fprintf(f, "%d", cint_at(c, k->off));
            break;
        case T_BOOL:
            fputs(cint_at(c, k->off) ? "true" : "false", f);
            break;
        case T_LIST:
            fputc('[', f);
            for (int j = 0; j < cint_at(c, k->off_n); j++) {
                fputs(j ? ", " : "", f);
                put_quoted(f, cstr_at(c, k)[j]);
            }
            fputc(']', f);
            break;
        case T_MAP:
            fputs(cint_at(c, k->off_n) ? "" : "{}", f);
            break;
        }
        fprintf(f, "%s# %s\n", k->type == T_MAP && cint_at(c, k->off_n) ? "" : "  ", k->help);
        for (int j = 0; k->type == T_MAP && j < cint_at(c, k->off_n); j++) {
            const svc_kv *kv = &cmap_at(c, k)[j];
            fputs("    ", f);
            put_quoted(f, kv->key);
            fputs(": ", f);
            (is_secret_prop(kv->key) ? put_secret : put_quoted)(f, kv->value);
            fputc('\n', f);
        }
    }
}
