/* tests/check_events.c — service/events.h: the examples of DESIGN.md parse
 * to the expected struct, field by field; every kind of rejection names its
 * field; the limits hold exactly at their boundaries; field values keep
 * their kinds; rankings drop repeated items; one parser serves many events;
 * the seed corpus of the fuzzer (tests/corpus/events/) gets the verdict its
 * file names promise; and a few thousand mutated events never crash the
 * parser and always end in an event or a reason.
 *
 * Every parse prints one line: "input summary -> accepted: ..." or
 * "-> rejected: reason". Suites run from the repository root. */
#include "service/events.h"

#include "common/err.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BYTES 65536
#define MAX_ITEMS 1000
#define CORPUS_DIR "tests/corpus/events"


/* ---- helpers ------------------------------------------------------------------ */

static svc_parser *parser_with(size_t max_bytes, int max_items)
{
    svc_event_limits lim = {.max_bytes = max_bytes, .max_items = max_items};
    svc_parser *p = svc_parser_new(&lim);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* A growing string for generated events. */
typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra)
{
    if (b->n + extra + 1 > b->cap) {
        b->cap = (b->n + extra + 1) * 2;
        b->s = realloc(b->s, b->cap);
        ck_assert_ptr_nonnull(b->s);
    }
}

__attribute__((format(printf, 2, 3)))
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    ck_assert_int_ge(n, 0);
    sb_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

static void sb_repeat(sbuf *b, const char *s, int times)
{
    for (int i = 0; i < times; i++)
        sb_printf(b, "%s", s);
}

static void sb_reset(sbuf *b)
{
    b->n = 0;
    if (b->s)
        b->s[0] = '\0';
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] >= 0xf0 && s[0] < 0xf5   ? 4
                 : s[0] >= 0xe0 && s[0] < 0xf0 ? 3
                 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2
                                               : 0;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

/* The first bytes of an input, printable ('?' for control bytes and bytes
 * that are not UTF-8), and its length when cut. */
static const char *summary(char out[160], const char *buf, size_t len)
{
    const unsigned char *u = (const unsigned char *)buf;
    size_t n = len < 72 ? len : 72, o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = u[i] >= 0x80 ? utf8_len(u + i, n - i) : 1;
        if (k > 1) {
            memcpy(out + o, buf + i, k);
            o += k;
            i += k - 1;
        } else {
            out[o++] = k == 0 || u[i] < 0x20 || u[i] == 0x7f ? '?' : buf[i];
        }
    }
    if (n < len)
        o += (size_t)snprintf(out + o, 160 - o, "... (%zu bytes)", len);
    out[o] = '\0';
    return out;
}

/* Parses and prints "tag: input -> accepted: ..." or "-> rejected: reason". */
static int parse_show(svc_parser *p, const char *tag, const char *buf, size_t len, svc_event *ev,
                      char reason[CM_ERRSZ])
{
    char sum[160];
    reason[0] = '\0';
    int rc = svc_event_parse(p, buf, len, ev, reason, CM_ERRSZ);
    ck_assert_msg(rc == 0 || rc == -1, "%s: svc_event_parse returned %d", tag, rc);
    if (rc == 0)
        printf("%-28s %s -> accepted: %s id=%.40s items=%d fields=%d\n", tag, summary(sum, buf, len),
               svc_event_kind_name(ev->kind), ev->id, ev->n_items, ev->n_fields);
    else
        printf("%-28s %s -> rejected: %s\n", tag, summary(sum, buf, len), reason);
    return rc;
}

static void accept(svc_parser *p, const char *tag, const char *buf, size_t len, svc_event *ev)
{
    char reason[CM_ERRSZ];
    ck_assert_msg(parse_show(p, tag, buf, len, ev, reason) == 0, "%s: rejected: %s", tag, reason);
}

/* Must be rejected with a reason holding every non-NULL fragment. */
static void reject(svc_parser *p, const char *tag, const char *buf, size_t len, const char *frag1,
                   const char *frag2)
{
    char reason[CM_ERRSZ];
    svc_event ev;
    ck_assert_msg(parse_show(p, tag, buf, len, &ev, reason) == -1, "%s: accepted", tag);
    ck_assert_msg(reason[0] != '\0', "%s: empty reason", tag);
    ck_assert_msg(!frag1 || strstr(reason, frag1), "%s: reason \"%s\" lacks \"%s\"", tag, reason,
                  frag1);
    ck_assert_msg(!frag2 || strstr(reason, frag2), "%s: reason \"%s\" lacks \"%s\"", tag, reason,
                  frag2);
    ck_assert_msg(ev.id == NULL && ev.n_items == 0 && ev.n_fields == 0,
                  "%s: a rejected event must be left empty", tag);
}

static void assert_str(const char *tag, const char *what, const char *got, const char *want)
{
    if (!want)
        ck_assert_msg(got == NULL, "%s: %s is \"%s\", expected NULL", tag, what, got);
    else
        ck_assert_msg(got && strcmp(got, want) == 0, "%s: %s is \"%s\", expected \"%s\"", tag,
                      what, got ? got : "(null)", want);
}

/* ---- the valid events, field by field ------------------------------------------- */

typedef struct want_field {
    const char *name;
    svc_value_kind kind;
    int boolean;
    double number;
    const char *string; /* STRING, and the JSON text of OTHER */
} want_field;

typedef struct valid_case {
    const char *tag, *json;
    svc_event_kind kind;
    const char *id;
    int64_t timestamp;
    const char *user, *item, *type;
    int n_items;
    const char *items[6];
    int n_fields;
    want_field fields[12];
    int available;
} valid_case;

/* Designated fields: what an entry leaves out is NULL or 0; every case says
 * `available` (-1: absent). */
#define EV_INTERACTION(id_, ts_, user_, item_, type_)                                              \
    .kind = SVC_EV_INTERACTION, .id = id_, .timestamp = ts_, .user = user_, .item = item_,       \
    .type = type_, .available = -1
#define TS 1700000000000LL

static const valid_case valid[] = {
    {.tag = "design-interaction",
     .json = "{\"event\":\"interaction\",\"id\":\"e1\",\"timestamp\":1700000000000,\"user\":\"u1\","
             "\"item\":\"i9\",\"type\":\"click\"}",
     EV_INTERACTION("e1", TS, "u1", "i9", "click")},
    {.tag = "design-ranking",
     .json = "{\"event\":\"ranking\",\"id\":\"r1\",\"timestamp\":1700000000000,\"user\":\"u1\","
             "\"items\":[{\"id\":\"i3\"},{\"id\":\"i7\"}]}",
     .kind = SVC_EV_RANKING, .id = "r1", .timestamp = TS, .user = "u1", .n_items = 2,
     .items = {"i3", "i7"}, .available = -1},
    {.tag = "design-item",
     .json = "{\"event\":\"item\",\"id\":\"e2\",\"timestamp\":1700000000000,\"item\":\"i9\","
             "\"fields\":[{\"name\":\"available\",\"value\":false}]}",
     .kind = SVC_EV_ITEM, .id = "e2", .timestamp = TS, .item = "i9", .n_fields = 1,
     .fields = {{.name = "available", .kind = SVC_VAL_BOOL, .boolean = 0}}, .available = 0},
    {.tag = "design-user",
     .json = "{\"event\":\"user\",\"id\":\"e3\",\"timestamp\":1700000000000,\"user\":\"u1\",\"fields\":[]}",
     .kind = SVC_EV_USER, .id = "e3", .timestamp = TS, .user = "u1", .available = -1},
    /* Metarank's other fields, and unknown ones, are ignored */
    {.tag = "interaction-extra-fields",
     .json = "{\"event\":\"interaction\",\"id\":\"e4\",\"ranking\":\"r1\",\"session\":\"s1\","
             "\"timestamp\":5,\"user\":\"u2\",\"item\":\"i3\",\"type\":\"purchase\","
             "\"fields\":[{\"name\":\"qty\",\"value\":2}],\"future\":{\"a\":[1,{}]}}",
     EV_INTERACTION("e4", 5, "u2", "i3", "purchase")},
    {.tag = "ranking-duplicates",
     .json = "{\"event\":\"ranking\",\"id\":\"r2\",\"timestamp\":7,\"user\":\"u1\",\"items\":["
             "{\"id\":\"i3\"},{\"id\":\"i7\"},{\"id\":\"i3\"},{\"id\":\"i9\",\"relevancy\":1},"
             "{\"id\":\"i7\"},{\"id\":\"i3\"}]}",
     .kind = SVC_EV_RANKING, .id = "r2", .timestamp = 7, .user = "u1", .n_items = 3,
     .items = {"i3", "i7", "i9"}, .available = -1},
    {.tag = "ranking-one-item",
     .json = "{\"event\":\"ranking\",\"id\":\"r3\",\"timestamp\":0,\"user\":\"u\",\"items\":[{\"id\":\"x\"}]}",
     .kind = SVC_EV_RANKING, .id = "r3", .timestamp = 0, .user = "u", .n_items = 1,
     .items = {"x"}, .available = -1},
    {.tag = "item-no-fields",
     .json = "{\"event\":\"item\",\"id\":\"e5\",\"timestamp\":1,\"item\":\"i1\"}",
     .kind = SVC_EV_ITEM, .id = "e5", .timestamp = 1, .item = "i1", .available = -1},
    {.tag = "item-value-kinds",
     .json = "{\"event\":\"item\",\"id\":\"e6\",\"timestamp\":2,\"item\":\"i2\",\"fields\":["
             "{\"name\":\"available\",\"value\":true},{\"name\":\"price\",\"value\":9.5},"
             "{\"name\":\"count\",\"value\":3},{\"name\":\"delta\",\"value\":-2e3},"
             "{\"name\":\"title\",\"value\":\"Red \\\"shoe\\\" \\u00e9\\n\"},"
             "{\"name\":\"empty\",\"value\":\"\"},{\"name\":\"tags\",\"value\":[\"a\", \"b\"]},"
             "{\"name\":\"meta\",\"value\":{\"k\" : 1, \"j\":[true,null]}},"
             "{\"name\":\"none\",\"value\":null},{\"name\":\"reals\",\"value\":[0.5,1e2,-0.0]},"
             "{\"name\":\"big\",\"value\":9223372036854775807},{\"name\":\"obj\",\"value\":{}}]}",
     .kind = SVC_EV_ITEM, .id = "e6", .timestamp = 2, .item = "i2", .n_fields = 12,
     .fields = {{.name = "available", .kind = SVC_VAL_BOOL, .boolean = 1},
                {.name = "price", .kind = SVC_VAL_NUMBER, .number = 9.5},
                {.name = "count", .kind = SVC_VAL_NUMBER, .number = 3},
                {.name = "delta", .kind = SVC_VAL_NUMBER, .number = -2000},
                {.name = "title", .kind = SVC_VAL_STRING, .string = "Red \"shoe\" \xc3\xa9\n"},
                {.name = "empty", .kind = SVC_VAL_STRING, .string = ""},
                {.name = "tags", .kind = SVC_VAL_OTHER, .string = "[\"a\",\"b\"]"},
                {.name = "meta", .kind = SVC_VAL_OTHER, .string = "{\"k\":1,\"j\":[true,null]}"},
                {.name = "none", .kind = SVC_VAL_OTHER, .string = "null"},
                {.name = "reals", .kind = SVC_VAL_OTHER, .string = "[0.5,100.0,-0.0]"},
                {.name = "big", .kind = SVC_VAL_NUMBER, .number = 9223372036854775807.0},
                {.name = "obj", .kind = SVC_VAL_OTHER, .string = "{}"}},
     .available = 1},
    /* only a JSON boolean says whether an item is available */
    {.tag = "item-available-string",
     .json = "{\"event\":\"item\",\"id\":\"e7\",\"timestamp\":3,\"item\":\"i3\","
             "\"fields\":[{\"name\":\"available\",\"value\":\"false\"}]}",
     .kind = SVC_EV_ITEM, .id = "e7", .timestamp = 3, .item = "i3", .n_fields = 1,
     .fields = {{.name = "available", .kind = SVC_VAL_STRING, .string = "false"}},
     .available = -1},
    {.tag = "item-available-number",
     .json = "{\"event\":\"item\",\"id\":\"e8\",\"timestamp\":3,\"item\":\"i3\","
             "\"fields\":[{\"name\":\"available\",\"value\":0}]}",
     .kind = SVC_EV_ITEM, .id = "e8", .timestamp = 3, .item = "i3", .n_fields = 1,
     .fields = {{.name = "available", .kind = SVC_VAL_NUMBER, .number = 0}}, .available = -1},
    {.tag = "user-available-ignored",
     .json = "{\"event\":\"user\",\"id\":\"e9\",\"timestamp\":3,\"user\":\"u3\",\"fields\":["
             "{\"name\":\"available\",\"value\":false},{\"name\":\"age\",\"value\":42}]}",
     .kind = SVC_EV_USER, .id = "e9", .timestamp = 3, .user = "u3", .n_fields = 2,
     .fields = {{.name = "available", .kind = SVC_VAL_BOOL, .boolean = 0},
                {.name = "age", .kind = SVC_VAL_NUMBER, .number = 42}},
     .available = -1},
    {.tag = "user-no-fields",
     .json = "{\"event\":\"user\",\"id\":\"e10\",\"timestamp\":3,\"user\":\"u3\"}",
     .kind = SVC_EV_USER, .id = "e10", .timestamp = 3, .user = "u3", .available = -1},
    /* an item event's "user" (and the like) is not its business */
    {.tag = "item-ignores-user",
     .json = "{\"event\":\"item\",\"id\":\"e11\",\"timestamp\":3,\"item\":\"i3\",\"user\":\"u9\","
             "\"type\":\"x\"}",
     .kind = SVC_EV_ITEM, .id = "e11", .timestamp = 3, .item = "i3", .available = -1},
    {.tag = "timestamp-minus-zero",
     .json = "{\"event\":\"interaction\",\"id\":\"e12\",\"timestamp\":-0,\"user\":\"u\",\"item\":\"i\","
             "\"type\":\"view\"}",
     EV_INTERACTION("e12", 0, "u", "i", "view")},
    {.tag = "timestamp-int64-max",
     .json = "{\"event\":\"interaction\",\"id\":\"e13\",\"timestamp\":9223372036854775807,"
             "\"user\":\"u\",\"item\":\"i\",\"type\":\"view\"}",
     EV_INTERACTION("e13", INT64_MAX, "u", "i", "view")},
    {.tag = "whitespace-and-order",
     .json = " \r\n\t{ \"type\" : \"click\" , \"item\":\"i9\",\"user\":\"u1\",\n\"timestamp\": 12,"
             "\"id\":\"e14\",\"event\":\"interaction\" }\n",
     EV_INTERACTION("e14", 12, "u1", "i9", "click")},
    {.tag = "unicode-ids",
     .json = "{\"event\":\"interaction\",\"id\":\"\\u00e9v\",\"timestamp\":1,"
             "\"user\":\"\xe3\x83\xa6\xe3\x83\xbc\",\"item\":\"item with spaces\","
             "\"type\":\"\\ud83d\\ude00\"}",
     EV_INTERACTION("\xc3\xa9v", 1, "\xe3\x83\xa6\xe3\x83\xbc", "item with spaces",
                    "\xf0\x9f\x98\x80")},
};

static void expect_event(const svc_event *ev, const valid_case *c)
{
    ck_assert_msg(ev->kind == c->kind, "%s: kind %d, expected %d", c->tag, ev->kind, c->kind);
    assert_str(c->tag, "id", ev->id, c->id);
    ck_assert_msg(ev->timestamp == c->timestamp, "%s: timestamp %lld, expected %lld", c->tag,
                  (long long)ev->timestamp, (long long)c->timestamp);
    assert_str(c->tag, "user", ev->user, c->user);
    assert_str(c->tag, "item", ev->item, c->item);
    assert_str(c->tag, "type", ev->type, c->type);
    ck_assert_msg(ev->n_items == c->n_items, "%s: %d items, expected %d", c->tag, ev->n_items,
                  c->n_items);
    if (c->n_items == 0)
        ck_assert_msg(ev->items == NULL, "%s: items set on a %s event", c->tag,
                      svc_event_kind_name(ev->kind));
    for (int i = 0; i < c->n_items; i++)
        assert_str(c->tag, "items[i]", ev->items[i], c->items[i]);
    ck_assert_msg(ev->n_fields == c->n_fields, "%s: %d fields, expected %d", c->tag, ev->n_fields,
                  c->n_fields);
    for (int i = 0; i < c->n_fields; i++) {
        const svc_field *f = &ev->fields[i];
        const want_field *w = &c->fields[i];
        assert_str(c->tag, "field name", f->name, w->name);
        ck_assert_msg(f->kind == w->kind, "%s: field %s has kind %d, expected %d", c->tag, w->name,
                      f->kind, w->kind);
        if (w->kind == SVC_VAL_BOOL)
            ck_assert_msg(f->boolean == w->boolean, "%s: field %s is %d", c->tag, w->name,
                          f->boolean);
        if (w->kind == SVC_VAL_NUMBER)
            ck_assert_msg(f->number == w->number, "%s: field %s is %.17g, expected %.17g", c->tag,
                          w->name, f->number, w->number);
        if (w->kind == SVC_VAL_STRING || w->kind == SVC_VAL_OTHER)
            assert_str(c->tag, w->name, f->string, w->string);
        else
            ck_assert_msg(f->string == NULL, "%s: field %s has a string", c->tag, w->name);
    }
    ck_assert_msg(svc_event_available(ev) == c->available, "%s: available %d, expected %d",
                  c->tag, svc_event_available(ev), c->available);
}

START_TEST(test_valid)
{
    const valid_case *c = &valid[_i];
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    svc_event ev;
    accept(p, c->tag, c->json, strlen(c->json), &ev);
    expect_event(&ev, c);
    svc_parser_free(p);
}
END_TEST

/* The strings live in the parser, not in the input: the caller may free
 * the message right after the parse. */
START_TEST(test_input_freed)
{
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++) {
        size_t len = strlen(valid[i].json);
        char *copy = malloc(len);
        svc_event ev;
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, valid[i].json, len); /* not NUL-terminated */
        accept(p, valid[i].tag, copy, len, &ev);
        memset(copy, 'x', len);
        free(copy);
        expect_event(&ev, &valid[i]);
    }
    svc_parser_free(p);
}
END_TEST

/* ---- rejections: each names its field ------------------------------------------- */

typedef struct bad_case {
    const char *tag, *json;
    const char *field;    /* must appear in the reason, quoted; NULL: no field */
    const char *fragment; /* what is wrong */
} bad_case;

#define IA "{\"event\":\"interaction\",\"id\":\"e1\",\"timestamp\":1700000000000,"
#define RK "{\"event\":\"ranking\",\"id\":\"r1\",\"timestamp\":1700000000000,\"user\":\"u1\","
#define IT "{\"event\":\"item\",\"id\":\"e2\",\"timestamp\":1700000000000,\"item\":\"i9\","

static const bad_case bad[] = {
    {"not-json", "{\"event\":", NULL, "invalid JSON"},
    {"not-json-garbage", "hello", NULL, "invalid JSON"},
    {"empty", "", NULL, "empty event"},
    {"only-space", "  \n", NULL, "invalid JSON"},
    {"not-object-array", "[{\"event\":\"user\"}]", NULL, "must be a JSON object, got an array"},
    {"not-object-string", "\"interaction\"", NULL, "invalid JSON"},
    {"trailing-garbage", IA "\"user\":\"u1\",\"item\":\"i9\",\"type\":\"click\"} x", NULL, "invalid JSON"},
    {"two-events", "{\"event\":\"user\",\"id\":\"a\",\"timestamp\":1,\"user\":\"u\"}{\"event\":\"user\"}",
     NULL, "invalid JSON"},
    {"duplicate-key", IA "\"user\":\"u1\",\"user\":\"u2\",\"item\":\"i9\",\"type\":\"click\"}",
     "user", "duplicate object key"},
    {"duplicate-key-nested", IT "\"fields\":[{\"name\":\"m\",\"value\":{\"a\":1,\"a\":2}}]}", NULL,
     "duplicate object key"},
    {"missing-event", "{\"id\":\"e1\",\"timestamp\":1,\"user\":\"u1\"}", "event", "missing field"},
    {"event-not-string", "{\"event\":3,\"id\":\"e1\",\"timestamp\":1,\"user\":\"u1\"}", "event",
     "must be a string, got an integer"},
    {"event-null", "{\"event\":null,\"id\":\"e1\"}", "event", "must be a string, got null"},
    {"unknown-event", "{\"event\":\"clicks\",\"id\":\"e1\",\"timestamp\":1}", NULL,
     "unknown event type \"clicks\""},
    {"unknown-event-case", "{\"event\":\"Interaction\",\"id\":\"e1\",\"timestamp\":1}", NULL,
     "unknown event type \"Interaction\""},
    {"unknown-event-control", "{\"event\":\"a\\u0001b\",\"id\":\"e1\",\"timestamp\":1}", NULL,
     "unknown event type \"a\\x01b\""},
    {"missing-id", "{\"event\":\"user\",\"timestamp\":1,\"user\":\"u1\"}", "id", "missing field"},
    {"id-number", "{\"event\":\"user\",\"id\":17,\"timestamp\":1,\"user\":\"u1\"}", "id",
     "must be a string, got an integer"},
    {"id-empty", "{\"event\":\"user\",\"id\":\"\",\"timestamp\":1,\"user\":\"u1\"}", "id", "is empty"},
    {"id-control", "{\"event\":\"user\",\"id\":\"e\\u0001\",\"timestamp\":1,\"user\":\"u1\"}", "id",
     "control character 0x01 at byte 1"},
    {"id-del", "{\"event\":\"user\",\"id\":\"e\\u007f\",\"timestamp\":1,\"user\":\"u1\"}", "id",
     "control character 0x7f"},
    {"id-newline", "{\"event\":\"user\",\"id\":\"\\ne\",\"timestamp\":1,\"user\":\"u1\"}", "id",
     "control character 0x0a at byte 0"},
    {"id-escaped-nul", "{\"event\":\"user\",\"id\":\"e\\u0000\",\"timestamp\":1,\"user\":\"u1\"}", NULL,
     "invalid JSON"},
    {"id-lone-surrogate", "{\"event\":\"user\",\"id\":\"\\ud800\",\"timestamp\":1,\"user\":\"u1\"}",
     NULL, "invalid JSON"},
    {"id-invalid-utf8", "{\"event\":\"user\",\"id\":\"\xc3\x28\",\"timestamp\":1,\"user\":\"u1\"}",
     NULL, "invalid JSON"},
    {"missing-timestamp", "{\"event\":\"user\",\"id\":\"e1\",\"user\":\"u1\"}", "timestamp",
     "missing field"},
    {"timestamp-float",
     "{\"event\":\"interaction\",\"id\":\"e1\",\"timestamp\":1.7e12,\"user\":\"u1\",\"item\":\"i9\","
     "\"type\":\"click\"}",
     "timestamp", "must be an integer (ms since the epoch), got a real number"},
    {"timestamp-real", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":1700000000000.5,\"user\":\"u1\"}",
     "timestamp", "must be an integer"},
    {"timestamp-integral-real", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":5.0,\"user\":\"u1\"}",
     "timestamp", "must be an integer"},
    {"timestamp-1e20", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":1e20,\"user\":\"u1\"}",
     "timestamp", "must be an integer (ms since the epoch), got a real number"},
    {"timestamp-string", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":\"1700000000000\",\"user\":\"u1\"}",
     "timestamp", "must be an integer (ms since the epoch), got a string"},
    {"timestamp-null", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":null,\"user\":\"u1\"}",
     "timestamp", "got null"},
    {"timestamp-bool", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":true,\"user\":\"u1\"}",
     "timestamp", "got a boolean"},
    {"timestamp-negative", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":-1,\"user\":\"u1\"}",
     "timestamp", "is -1, must be >= 0"},
    {"timestamp-int64-min", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":-9223372036854775808,\"user\":\"u1\"}",
     "timestamp", "must be >= 0"},
    /* errors jansson finds name the byte and the token, not the field */
    {"timestamp-too-big", "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":9223372036854775808,\"user\":\"u1\"}",
     NULL, "too big integer near '9223372036854775808'"},
    {"number-overflow", IT "\"fields\":[{\"name\":\"x\",\"value\":1e400}]}", NULL,
     "real number overflow near '1e400'"},
    {"interaction-missing-user", IA "\"item\":\"i9\",\"type\":\"click\"}", "user", "missing field"},
    {"interaction-user-null", IA "\"user\":null,\"item\":\"i9\",\"type\":\"click\"}", "user",
     "must be a string, got null"},
    {"interaction-user-number", IA "\"user\":42,\"item\":\"i9\",\"type\":\"click\"}", "user",
     "must be a string, got an integer"},
    {"interaction-missing-item", IA "\"user\":\"u1\",\"type\":\"click\"}", "item", "missing field"},
    {"interaction-item-object", IA "\"user\":\"u1\",\"item\":{\"id\":\"i9\"},\"type\":\"click\"}",
     "item", "must be a string, got an object"},
    {"interaction-missing-type", IA "\"user\":\"u1\",\"item\":\"i9\"}", "type", "missing field"},
    {"interaction-type-empty", IA "\"user\":\"u1\",\"item\":\"i9\",\"type\":\"\"}", "type", "is empty"},
    {"ranking-missing-user", "{\"event\":\"ranking\",\"id\":\"r1\",\"timestamp\":1,\"items\":[{\"id\":\"i\"}]}",
     "user", "missing field"},
    {"ranking-missing-items", RK "\"x\":1}", "items", "missing field"},
    {"ranking-items-object", RK "\"items\":{\"id\":\"i3\"}}", "items", "must be an array, got an object"},
    {"ranking-items-empty", RK "\"items\":[]}", "items", "is empty"},
    {"ranking-item-string", RK "\"items\":[{\"id\":\"i3\"},\"i7\"]}", "items[1]",
     "must be an object, got a string"},
    {"ranking-item-missing-id", RK "\"items\":[{\"item\":\"i3\"}]}", "items[0].id", "missing field"},
    {"ranking-item-id-number", RK "\"items\":[{\"id\":\"i3\"},{\"id\":\"i4\"},{\"id\":4}]}",
     "items[2].id", "must be a string, got an integer"},
    {"ranking-item-id-empty", RK "\"items\":[{\"id\":\"\"}]}", "items[0].id", "is empty"},
    {"ranking-item-id-control", RK "\"items\":[{\"id\":\"a\\tb\"}]}", "items[0].id",
     "control character 0x09 at byte 1"},
    {"item-missing-item", "{\"event\":\"item\",\"id\":\"e2\",\"timestamp\":1,\"fields\":[]}", "item",
     "missing field"},
    {"item-fields-object", IT "\"fields\":{\"available\":false}}", "fields",
     "must be an array, got an object"},
    {"item-fields-null", IT "\"fields\":null}", "fields", "must be an array, got null"},
    {"item-field-not-object", IT "\"fields\":[{\"name\":\"a\",\"value\":1},[\"b\",2]]}", "fields[1]",
     "must be an object, got an array"},
    {"item-field-missing-name", IT "\"fields\":[{\"value\":1}]}", "fields[0].name", "missing field"},
    {"item-field-name-number", IT "\"fields\":[{\"name\":1,\"value\":1}]}", "fields[0].name",
     "must be a string"},
    {"item-field-name-empty", IT "\"fields\":[{\"name\":\"\",\"value\":1}]}", "fields[0].name",
     "is empty"},
    {"item-field-missing-value", IT "\"fields\":[{\"name\":\"color\"}]}", "fields[0].value",
     "missing field"},
    {"item-field-duplicate",
     IT "\"fields\":[{\"name\":\"color\",\"value\":\"red\"},{\"name\":\"size\",\"value\":1},"
        "{\"name\":\"color\",\"value\":\"blue\"}]}",
     "fields[2].name", "duplicate name \"color\" (also fields[0])"},
    {"user-missing-user", "{\"event\":\"user\",\"id\":\"e3\",\"timestamp\":1,\"fields\":[]}", "user",
     "missing field"},
    {"user-field-duplicate",
     "{\"event\":\"user\",\"id\":\"e3\",\"timestamp\":1,\"user\":\"u\",\"fields\":[{\"name\":\"a\","
     "\"value\":1},{\"name\":\"a\",\"value\":1}]}",
     "fields[1].name", "duplicate name"},
};

START_TEST(test_reject)
{
    const bad_case *c = &bad[_i];
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    char quoted[64];
    if (c->field)
        snprintf(quoted, sizeof quoted, "\"%s\"", c->field);
    reject(p, c->tag, c->json, strlen(c->json), c->fragment, c->field ? quoted : NULL);
    svc_parser_free(p);
}
END_TEST

/* ---- boundaries ------------------------------------------------------------------- */

/* Event templates with one id to fill in; the field as reasons name it. */
static const struct {
    const char *fmt, *field;
} id_slots[] = {
    {"{\"event\":\"user\",\"id\":\"%s\",\"timestamp\":1,\"user\":\"u\"}", "id"},
    {"{\"event\":\"user\",\"id\":\"e\",\"timestamp\":1,\"user\":\"%s\"}", "user"},
    {"{\"event\":\"item\",\"id\":\"e\",\"timestamp\":1,\"item\":\"%s\"}", "item"},
    {"{\"event\":\"interaction\",\"id\":\"e\",\"timestamp\":1,\"user\":\"u\",\"item\":\"i\",\"type\":\"%s\"}",
     "type"},
    {"{\"event\":\"ranking\",\"id\":\"e\",\"timestamp\":1,\"user\":\"u\",\"items\":[{\"id\":\"first\"},{\"id\":\"%s\"}]}",
     "items[1].id"},
    {"{\"event\":\"item\",\"id\":\"e\",\"timestamp\":1,\"item\":\"i\",\"fields\":[{\"name\":\"%s\",\"value\":1}]}",
     "fields[0].name"},
};

/* The id placed in the event must come back as it went in. */
static void check_id_back(const svc_event *ev, int slot, const char *id)
{
    const char *got = slot == 0   ? ev->id
                      : slot == 1 ? ev->user
                      : slot == 2 ? ev->item
                      : slot == 3 ? ev->type
                      : slot == 4 ? ev->items[1]
                                  : ev->fields[0].name;
    ck_assert_str_eq(got, id);
}

START_TEST(test_id_length)
{
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    char id[2 * SVC_MAX_ID + 8], ev_text[4096], tag[64], why[64];
    svc_event ev;
    for (int s = 0; s < (int)(sizeof id_slots / sizeof id_slots[0]); s++) {
        /* 1 and 256 bytes pass, 257 does not; so do 128 two-byte characters */
        static const int lens[] = {1, SVC_MAX_ID, SVC_MAX_ID + 1};
        for (int k = 0; k < 3; k++) {
            memset(id, 'a' + k, (size_t)lens[k]);
            id[lens[k]] = '\0';
            int n = snprintf(ev_text, sizeof ev_text, id_slots[s].fmt, id);
            snprintf(tag, sizeof tag, "%s-%d-bytes", id_slots[s].field, lens[k]);
            if (lens[k] <= SVC_MAX_ID) {
                accept(p, tag, ev_text, (size_t)n, &ev);
                check_id_back(&ev, s, id);
            } else {
                snprintf(why, sizeof why, "is %d bytes, at most %d", lens[k], SVC_MAX_ID);
                reject(p, tag, ev_text, (size_t)n, id_slots[s].field, why);
            }
        }
        for (int k = 0; k < 2; k++) { /* "é" is 2 bytes: ids are measured in bytes */
            int chars = SVC_MAX_ID / 2 + k;
            id[0] = '\0';
            for (int c = 0; c < chars; c++)
                strcat(id, "\xc3\xa9");
            int n = snprintf(ev_text, sizeof ev_text, id_slots[s].fmt, id);
            snprintf(tag, sizeof tag, "%s-%d-two-byte-chars", id_slots[s].field, chars);
            if (k == 0) {
                accept(p, tag, ev_text, (size_t)n, &ev);
                check_id_back(&ev, s, id);
            } else {
                reject(p, tag, ev_text, (size_t)n, id_slots[s].field, "is 258 bytes, at most 256");
            }
        }
        int n = snprintf(ev_text, sizeof ev_text, id_slots[s].fmt, "");
        snprintf(tag, sizeof tag, "%s-empty", id_slots[s].field);
        reject(p, tag, ev_text, (size_t)n, id_slots[s].field, "is empty");
    }
    svc_parser_free(p);
}
END_TEST

/* A ranking of n distinct items i0..i{n-1}. */
static void ranking_of(sbuf *b, int n)
{
    sb_reset(b);
    sb_printf(b, "{\"event\":\"ranking\",\"id\":\"r\",\"timestamp\":1,\"user\":\"u\",\"items\":[");
    for (int i = 0; i < n; i++)
        sb_printf(b, "%s{\"id\":\"i%d\"}", i ? "," : "", i);
    sb_printf(b, "]}");
}

START_TEST(test_max_items)
{
    static const int limits[] = {1, 3, MAX_ITEMS};
    sbuf b = {0};
    svc_event ev;
    char tag[64], why[64];
    for (int l = 0; l < 3; l++) {
        svc_parser *p = parser_with(MAX_BYTES, limits[l]);
        ranking_of(&b, limits[l]);
        snprintf(tag, sizeof tag, "ranking-%d-of-%d", limits[l], limits[l]);
        accept(p, tag, b.s, b.n, &ev);
        ck_assert_int_eq(ev.n_items, limits[l]);
        for (int i = 0; i < limits[l]; i++) {
            char want[16];
            snprintf(want, sizeof want, "i%d", i);
            ck_assert_str_eq(ev.items[i], want);
        }
        ranking_of(&b, limits[l] + 1);
        snprintf(tag, sizeof tag, "ranking-%d-of-%d", limits[l] + 1, limits[l]);
        snprintf(why, sizeof why, "ranking of %d items exceeds %d", limits[l] + 1, limits[l]);
        reject(p, tag, b.s, b.n, why, "items");
        svc_parser_free(p);
    }
    /* the limit counts items as sent: repeats count before the dedupe */
    svc_parser *p = parser_with(MAX_BYTES, 3);
    sb_reset(&b);
    sb_printf(&b, "{\"event\":\"ranking\",\"id\":\"r\",\"timestamp\":1,\"user\":\"u\",\"items\":[");
    sb_repeat(&b, "{\"id\":\"same\"},", 3);
    sb_printf(&b, "{\"id\":\"same\"}]}");
    reject(p, "ranking-4-repeats-of-3", b.s, b.n, "ranking of 4 items exceeds 3", NULL);
    svc_parser_free(p);
    free(b.s);
}
END_TEST

/* An item event padded with spaces to exactly `len` bytes. */
static void item_of_len(sbuf *b, size_t len)
{
    static const char head[] = "{\"event\":\"item\",\"id\":\"e\",\"timestamp\":1,\"item\":\"i\"";
    sb_reset(b);
    sb_printf(b, "%s", head);
    while (b->n + 1 < len)
        sb_printf(b, " ");
    sb_printf(b, "}");
    ck_assert_uint_eq(b->n, len);
}

START_TEST(test_max_bytes)
{
    static const size_t limits[] = {64, 512, MAX_BYTES};
    sbuf b = {0};
    svc_event ev;
    char tag[64], why[64];
    for (int l = 0; l < 3; l++) {
        svc_parser *p = parser_with(limits[l], MAX_ITEMS);
        item_of_len(&b, limits[l]);
        snprintf(tag, sizeof tag, "event-%zu-bytes-of-%zu", limits[l], limits[l]);
        accept(p, tag, b.s, b.n, &ev);
        ck_assert_str_eq(ev.item, "i");
        item_of_len(&b, limits[l] + 1);
        snprintf(tag, sizeof tag, "event-%zu-bytes-of-%zu", limits[l] + 1, limits[l]);
        snprintf(why, sizeof why, "event of %zu bytes exceeds %zu", limits[l] + 1, limits[l]);
        reject(p, tag, b.s, b.n, why, NULL);
        svc_parser_free(p);
    }
    free(b.s);
}
END_TEST

static void fields_event(sbuf *b, const char *kind, int n)
{
    sb_reset(b);
    sb_printf(b, "{\"event\":\"%s\",\"id\":\"e\",\"timestamp\":1,\"%s\":\"x\",\"fields\":[", kind,
              strcmp(kind, "item") == 0 ? "item" : "user");
    for (int i = 0; i < n; i++)
        sb_printf(b, "%s{\"name\":\"f%d\",\"value\":[%d,{\"v\":0.1}]}", i ? "," : "", i, i);
    sb_printf(b, "]}");
}

START_TEST(test_max_fields)
{
    static const char *const kinds[] = {"item", "user"};
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    sbuf b = {0};
    svc_event ev;
    char tag[64], why[64], want[64];
    for (int k = 0; k < 2; k++) {
        fields_event(&b, kinds[k], SVC_MAX_FIELDS);
        snprintf(tag, sizeof tag, "%s-%d-fields", kinds[k], SVC_MAX_FIELDS);
        accept(p, tag, b.s, b.n, &ev);
        ck_assert_int_eq(ev.n_fields, SVC_MAX_FIELDS);
        for (int i = 0; i < SVC_MAX_FIELDS; i++) {
            snprintf(want, sizeof want, "[%d,{\"v\":0.10000000000000001}]", i);
            ck_assert_int_eq(ev.fields[i].kind, SVC_VAL_OTHER);
            ck_assert_str_eq(ev.fields[i].string, want);
        }
        for (int n = SVC_MAX_FIELDS + 1; n <= 70; n += 70 - SVC_MAX_FIELDS - 1) {
            fields_event(&b, kinds[k], n);
            snprintf(tag, sizeof tag, "%s-%d-fields", kinds[k], n);
            snprintf(why, sizeof why, "%s event with %d fields exceeds %d", kinds[k], n,
                     SVC_MAX_FIELDS);
            reject(p, tag, b.s, b.n, why, "fields");
        }
    }
    free(b.s);
    svc_parser_free(p);
}
END_TEST

/* An item event of about `len` bytes whose 64 fields are lists of the
 * real `r`, count[f] of them in field f. */
static void reals_event(sbuf *b, size_t len, const char *r, int count[SVC_MAX_FIELDS])
{
    sb_reset(b);
    sb_printf(b, "{\"event\":\"item\",\"id\":\"e\",\"timestamp\":1,\"item\":\"i\",\"fields\":[");
    for (int f = 0; f < SVC_MAX_FIELDS; f++) {
        sb_printf(b, "%s{\"name\":\"%c%c\",\"value\":[%s", f ? "," : "", 'a' + f / 26,
                  'a' + f % 26, r);
        for (count[f] = 1; b->n < (size_t)(f + 1) * (len - 64) / SVC_MAX_FIELDS; count[f]++)
            sb_printf(b, ",%s", r);
        sb_printf(b, "]}");
    }
    sb_printf(b, "]}");
}

/* OTHER text up to five times the size of the event (each 0.1 prints in 19
 * bytes): the arena grows while the fields are parsed, and every field's
 * text is still exact afterwards. */
START_TEST(test_other_text_growth)
{
    static const char *const reals[] = {"0.1", "0.1", "1e5", "0.1"};
    static const char *const printed[] = {"0.10000000000000001", "0.10000000000000001", "100000.0",
                                          "0.10000000000000001"};
    static const size_t sizes[] = {4096, MAX_BYTES, 30000, 2000};
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    sbuf b = {0}, want = {0};
    svc_event ev;
    int count[SVC_MAX_FIELDS];
    for (int k = 0; k < 4; k++) {
        char tag[64];
        reals_event(&b, sizes[k], reals[k], count);
        ck_assert_uint_le(b.n, MAX_BYTES);
        snprintf(tag, sizeof tag, "fields-of-%s-%zu-bytes", reals[k], sizes[k]);
        accept(p, tag, b.s, b.n, &ev);
        ck_assert_int_eq(ev.n_fields, SVC_MAX_FIELDS);
        size_t total = 0;
        for (int f = 0; f < SVC_MAX_FIELDS; f++) {
            sb_reset(&want);
            for (int i = 0; i < count[f]; i++)
                sb_printf(&want, "%s%s", i ? "," : "[", printed[k]);
            sb_printf(&want, "]");
            ck_assert_msg(strcmp(ev.fields[f].string, want.s) == 0, "%s: field %d: %.60s", tag, f,
                          ev.fields[f].string);
            total += want.n;
        }
        printf("%-28s %zu bytes in -> accepted: %zu bytes of OTHER text, each field exact\n", tag,
               b.n, total);
    }
    free(b.s);
    free(want.s);
    svc_parser_free(p);
}
END_TEST

/* ---- nesting, NUL bytes, numbers ---------------------------------------------------- */

static void nested_value(sbuf *b, int depth, int closed)
{
    sb_reset(b);
    sb_printf(b, "{\"event\":\"item\",\"id\":\"e\",\"timestamp\":1,\"item\":\"i\","
                 "\"fields\":[{\"name\":\"deep\",\"value\":");
    sb_repeat(b, "[", depth);
    if (closed) {
        sb_repeat(b, "]", depth);
        sb_printf(b, "}]}");
    }
}

START_TEST(test_deep_nesting)
{
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    sbuf b = {0};
    svc_event ev;
    char tag[64];
    /* the value starts at depth 4 (event, fields, field); jansson allows 2048 */
    int ok_depth = JSON_PARSER_MAX_DEPTH - 3;
    nested_value(&b, ok_depth, 1);
    snprintf(tag, sizeof tag, "value-nested-%d", ok_depth);
    accept(p, tag, b.s, b.n, &ev);
    ck_assert_int_eq(ev.fields[0].kind, SVC_VAL_OTHER);
    ck_assert_uint_eq(strlen(ev.fields[0].string), 2 * (size_t)ok_depth);
    static const int deep[] = {JSON_PARSER_MAX_DEPTH - 2, 5000, 30000};
    for (int k = 0; k < 3; k++) {
        for (int closed = 0; closed < 2; closed++) {
            nested_value(&b, deep[k], closed);
            snprintf(tag, sizeof tag, "value-nested-%d%s", deep[k], closed ? "" : "-open");
            reject(p, tag, b.s, b.n, "invalid JSON", "maximum parsing depth");
        }
    }
    sb_reset(&b);
    sb_repeat(&b, "{\"a\":", 10000);
    reject(p, "objects-nested-10000", b.s, b.n, "invalid JSON", "maximum parsing depth");
    free(b.s);
    svc_parser_free(p);
}
END_TEST

START_TEST(test_nul_bytes)
{
    static const char ok[] = "{\"event\":\"user\",\"id\":\"e1\",\"timestamp\":1,\"user\":\"u1\"}";
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    char buf[sizeof ok + 1], tag[64], why[64];
    size_t len = sizeof ok - 1;
    size_t at[] = {0, 1, 8, 25, len - 1, len};
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
        /* a NUL replacing a byte, or one more byte after the event */
        size_t n = at[k] == len ? len + 1 : len;
        memcpy(buf, ok, len);
        buf[at[k]] = '\0';
        snprintf(tag, sizeof tag, "nul-at-%zu", at[k]);
        snprintf(why, sizeof why, "NUL byte at offset %zu", at[k]);
        reject(p, tag, buf, n, "invalid JSON", why);
    }
    svc_event ev;
    accept(p, "no-nul-after-nul", ok, len, &ev); /* the parser is still fine */
    ck_assert_str_eq(ev.user, "u1");
    svc_parser_free(p);
}
END_TEST

START_TEST(test_number_values)
{
    static const struct {
        const char *text;
        double want;
    } nums[] = {
        {"0", 0.0}, {"-0", 0.0}, {"-0.0", -0.0}, {"1e308", 1e308}, {"-1.5e-300", -1.5e-300},
        {"9007199254740993", 9007199254740992.0}, {"-9223372036854775808", -9223372036854775808.0},
        {"4.9406564584124654e-324", 4.9406564584124654e-324},
    };
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    char text[256], tag[64];
    svc_event ev;
    for (size_t k = 0; k < sizeof nums / sizeof nums[0]; k++) {
        int n = snprintf(text, sizeof text,
                         "{\"event\":\"user\",\"id\":\"e\",\"timestamp\":1,\"user\":\"u\","
                         "\"fields\":[{\"name\":\"x\",\"value\":%s}]}", nums[k].text);
        snprintf(tag, sizeof tag, "number-%s", nums[k].text);
        accept(p, tag, text, (size_t)n, &ev);
        ck_assert_int_eq(ev.fields[0].kind, SVC_VAL_NUMBER);
        ck_assert_msg(ev.fields[0].number == nums[k].want &&
                          !signbit(ev.fields[0].number) == !signbit(nums[k].want),
                      "%s: %.17g", nums[k].text, ev.fields[0].number);
    }
    svc_parser_free(p);
}
END_TEST

/* ---- dedupe, reuse -------------------------------------------------------------------- */

/* Rankings with many repeats against a plain first-occurrence dedupe, on
 * one parser (the seen-table is reused across rankings). */
START_TEST(test_dedupe)
{
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    sbuf b = {0};
    static char want[MAX_ITEMS][16];
    uint64_t s = 42;
    svc_event ev;
    char reason[CM_ERRSZ];
    int rounds = 200, total = 0;
    for (int r = 0; r < rounds; r++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int n = 1 + (int)((s >> 33) % MAX_ITEMS), range = 1 + (int)((s >> 17) % 400), nw = 0;
        sb_reset(&b);
        sb_printf(&b, "{\"event\":\"ranking\",\"id\":\"r%d\",\"timestamp\":1,\"user\":\"u\",\"items\":[", r);
        for (int i = 0; i < n; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            char id[16];
            snprintf(id, sizeof id, "i%d", (int)((s >> 33) % (uint64_t)range));
            sb_printf(&b, "%s{\"id\":\"%s\"}", i ? "," : "", id);
            int dup = 0;
            for (int j = 0; j < nw && !dup; j++)
                dup = strcmp(want[j], id) == 0;
            if (!dup)
                snprintf(want[nw++], sizeof want[0], "%s", id);
        }
        sb_printf(&b, "]}");
        ck_assert_msg(svc_event_parse(p, b.s, b.n, &ev, reason, sizeof reason) == 0, "%s", reason);
        ck_assert_int_eq(ev.n_items, nw);
        for (int j = 0; j < nw; j++)
            ck_assert_str_eq(ev.items[j], want[j]);
        total += n - nw;
    }
    printf("%-28s %d rankings of up to %d items -> accepted: %d repeats dropped, first occurrences "
           "kept in order\n", "dedupe-random", rounds, MAX_ITEMS, total);
    free(b.s);
    svc_parser_free(p);
}
END_TEST

/* One parser, events of every kind and size in turn, rejections between
 * them: each event comes out as built, whatever came before. */
START_TEST(test_reuse)
{
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    sbuf b = {0};
    svc_event ev;
    char reason[CM_ERRSZ], want[64];
    int n_events = 3000, rejected = 0;
    for (int e = 0; e < n_events; e++) {
        int kind = e % 5, size = (e * 7919) % 97;
        sb_reset(&b);
        switch (kind) {
        case 0:
            sb_printf(&b, "{\"event\":\"interaction\",\"id\":\"e%d\",\"timestamp\":%d,\"user\":\"u%d\","
                      "\"item\":\"i%d\",\"type\":\"t%d\"}", e, e, e, size, e % 3);
            break;
        case 1:
            sb_printf(&b, "{\"event\":\"ranking\",\"id\":\"e%d\",\"timestamp\":%d,\"user\":\"u%d\",\"items\":[",
                      e, e, e);
            for (int i = 0; i <= size; i++)
                sb_printf(&b, "%s{\"id\":\"e%d-i%d\"}", i ? "," : "", e, i);
            sb_printf(&b, "]}");
            break;
        case 2:
        case 3:
            sb_printf(&b, "{\"event\":\"%s\",\"id\":\"e%d\",\"timestamp\":%d,\"%s\":\"x%d\",\"fields\":[",
                      kind == 2 ? "item" : "user", e, e, kind == 2 ? "item" : "user", e);
            for (int i = 0; i < size % (SVC_MAX_FIELDS + 1); i++)
                sb_printf(&b, "%s{\"name\":\"f%d\",\"value\":[\"e%d\",%d]}", i ? "," : "", i, e, i);
            sb_printf(&b, "]}");
            break;
        default: /* a rejection between good events */
            sb_printf(&b, "{\"event\":\"user\",\"id\":\"e%d\",\"timestamp\":-%d,\"user\":\"u\"}", e, e + 1);
            break;
        }
        int rc = svc_event_parse(p, b.s, b.n, &ev, reason, sizeof reason);
        if (kind == 4) {
            ck_assert_int_eq(rc, -1);
            ck_assert_ptr_null(ev.id);
            rejected++;
            continue;
        }
        ck_assert_msg(rc == 0, "event %d: %s", e, reason);
        snprintf(want, sizeof want, "e%d", e);
        ck_assert_str_eq(ev.id, want);
        ck_assert_int_eq(ev.timestamp, e);
        if (kind == 1) {
            ck_assert_int_eq(ev.n_items, size + 1);
            snprintf(want, sizeof want, "e%d-i%d", e, size);
            ck_assert_str_eq(ev.items[size], want);
        } else if (kind >= 2) {
            ck_assert_int_eq(ev.n_fields, size % (SVC_MAX_FIELDS + 1));
            for (int i = 0; i < ev.n_fields; i++) {
                snprintf(want, sizeof want, "[\"e%d\",%d]", e, i);
                ck_assert_str_eq(ev.fields[i].string, want);
            }
        } else {
            snprintf(want, sizeof want, "u%d", e);
            ck_assert_str_eq(ev.user, want);
        }
    }
    printf("%-28s %d events of every kind on one parser -> accepted: %d, rejected: %d, each as "
           "built\n", "reuse", n_events, n_events - rejected, rejected);
    free(b.s);
    svc_parser_free(p);
}
END_TEST

/* ---- the API's small parts ------------------------------------------------------------ */

START_TEST(test_api)
{
    ck_assert_str_eq(svc_event_kind_name(SVC_EV_INTERACTION), "interaction");
    ck_assert_str_eq(svc_event_kind_name(SVC_EV_RANKING), "ranking");
    ck_assert_str_eq(svc_event_kind_name(SVC_EV_ITEM), "item");
    ck_assert_str_eq(svc_event_kind_name(SVC_EV_USER), "user");
    ck_assert_str_eq(svc_event_kind_name((svc_event_kind)7), "unknown");
    svc_event_limits lim = {.max_bytes = 0, .max_items = 10};
    ck_assert_ptr_null(svc_parser_new(NULL));
    ck_assert_ptr_null(svc_parser_new(&lim));
    lim = (svc_event_limits){.max_bytes = 100, .max_items = 0};
    ck_assert_ptr_null(svc_parser_new(&lim));
    lim.max_items = -1;
    ck_assert_ptr_null(svc_parser_new(&lim));
    lim = (svc_event_limits){.max_bytes = 100, .max_items = INT_MAX};
    ck_assert_ptr_null(svc_parser_new(&lim));
    svc_parser_free(NULL);
    /* a parser that is never used, and a reason buffer of one byte */
    svc_parser_free(parser_with(MAX_BYTES, MAX_ITEMS));
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    char tiny[1] = {'x'};
    svc_event ev;
    ck_assert_int_eq(svc_event_parse(p, "[]", 2, &ev, tiny, sizeof tiny), -1);
    ck_assert_int_eq(tiny[0], '\0');
    ck_assert_int_eq(svc_event_parse(p, "[]", 2, &ev, NULL, 0), -1);
    svc_parser_free(p);
    printf("%-28s kind names, bad limits -> NULL parser, small reason buffers -> ok\n", "api");
}
END_TEST

/* ---- the fuzzer's seed corpus ---------------------------------------------------------- */

static int read_file(const char *path, sbuf *b)
{
    FILE *f = fopen(path, "rb");
    char chunk[4096];
    size_t n;
    if (!f)
        return -1;
    sb_reset(b);
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        sb_reserve(b, n);
        memcpy(b->s + b->n, chunk, n);
        b->n += n;
    }
    fclose(f);
    return 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every valid-*.json is accepted, every bad-*.json rejected, with the
 * limits a fuzzer would use (MAX_BYTES, MAX_ITEMS). */
START_TEST(test_corpus)
{
    DIR *d = opendir(CORPUS_DIR);
    ck_assert_msg(d != NULL, "%s: %s (run the suite from the repository root)", CORPUS_DIR,
                  strerror(errno));
    char *names[256];
    int n = 0, n_valid = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256)
        if (e->d_name[0] != '.')
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], name_cmp);
    svc_parser *p = parser_with(MAX_BYTES, MAX_ITEMS);
    sbuf b = {0};
    svc_event ev;
    char path[512];
    for (int i = 0; i < n; i++) {
        int is_valid = strncmp(names[i], "valid-", 6) == 0;
        ck_assert_msg(is_valid || strncmp(names[i], "bad-", 4) == 0,
                      "%s/%s: corpus files are named valid-* or bad-*", CORPUS_DIR, names[i]);
        snprintf(path, sizeof path, "%s/%s", CORPUS_DIR, names[i]);
        ck_assert_msg(read_file(path, &b) == 0, "%s: %s", path, strerror(errno));
        if (is_valid)
            accept(p, names[i], b.s, b.n, &ev);
        else
            reject(p, names[i], b.s, b.n, NULL, NULL);
        n_valid += is_valid;
        free(names[i]);
    }
    ck_assert_msg(n >= 30 && n_valid >= 10, "%s: %d files (%d valid), expected a few dozen",
                  CORPUS_DIR, n, n_valid);
    free(b.s);
    svc_parser_free(p);
}
END_TEST

/* ---- robustness: mutated events ---------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *s, size_t n)
{
    return n ? (size_t)(rng_next(s) % n) : 0;
}

/* Applies one random edit to buf[0..*len) (capacity cap). */
static void mutate(uint64_t *s, char *buf, size_t *len, size_t cap)
{
    static const char interesting[] = "\"{}[],:\\0-e.1 \x00\x7f\xff\xc3\x80\x01\n";
    static const char *const chunks[] = {"\"", "{}", "[]", "null", "true", "-0", "1e400", "1.5",
                                         "\\u0000", "\\ud800", "\"id\":\"x\"", ",{\"id\":\"i3\"}",
                                         "99999999999999999999", "[[[[[[[[", "\"event\":\"item\""};
    size_t at = rng_below(s, *len + 1);
    switch (rng_below(s, 6)) {
    case 0: /* flip a bit */
        if (*len)
            buf[rng_below(s, *len)] ^= (char)(1u << rng_below(s, 8));
        break;
    case 1: /* set a byte to a JSON-ish or hostile one */
        if (*len)
            buf[rng_below(s, *len)] = interesting[rng_below(s, sizeof interesting - 1)];
        break;
    case 2: /* truncate */
        *len = at;
        break;
    case 3: { /* insert a chunk */
        const char *c = chunks[rng_below(s, sizeof chunks / sizeof chunks[0])];
        size_t n = strlen(c);
        if (*len + n <= cap) {
            memmove(buf + at + n, buf + at, *len - at);
            memcpy(buf + at, c, n);
            *len += n;
        }
        break;
    }
    case 4: { /* delete a range */
        size_t n = rng_below(s, *len - at + 1);
        memmove(buf + at, buf + at + n, *len - at - n);
        *len -= n;
        break;
    }
    default: { /* duplicate a range */
        size_t n = rng_below(s, *len - at + 1);
        if (*len + n <= cap) {
            memmove(buf + at + n, buf + at, *len - at);
            *len += n;
        }
        break;
    }
    }
}

static int valid_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return n >= 1 && n <= SVC_MAX_ID;
}

/* What every accepted event promises. */
static void check_invariants(const svc_event *ev, int max_items, const char *input)
{
    ck_assert_msg(ev->kind >= SVC_EV_INTERACTION && ev->kind <= SVC_EV_USER, "%s", input);
    ck_assert_msg(valid_id(ev->id), "id: %s", input);
    ck_assert_msg(ev->timestamp >= 0, "timestamp: %s", input);
    ck_assert_msg(ev->kind == SVC_EV_ITEM || valid_id(ev->user), "user: %s", input);
    ck_assert_msg((ev->kind != SVC_EV_INTERACTION && ev->kind != SVC_EV_ITEM) || valid_id(ev->item),
                  "item: %s", input);
    ck_assert_msg(ev->kind != SVC_EV_INTERACTION || valid_id(ev->type), "type: %s", input);
    if (ev->kind == SVC_EV_RANKING)
        ck_assert_msg(ev->n_items >= 1 && ev->n_items <= max_items, "n_items: %s", input);
    else
        ck_assert_msg(ev->n_items == 0, "n_items: %s", input);
    for (int i = 0; i < ev->n_items; i++) {
        ck_assert_msg(valid_id(ev->items[i]), "items: %s", input);
        for (int j = 0; j < i; j++)
            ck_assert_msg(strcmp(ev->items[i], ev->items[j]) != 0, "repeat item: %s", input);
    }
    ck_assert_msg(ev->n_fields >= 0 && ev->n_fields <= SVC_MAX_FIELDS, "n_fields: %s", input);
    for (int i = 0; i < ev->n_fields; i++) {
        const svc_field *f = &ev->fields[i];
        ck_assert_msg(valid_id(f->name), "field name: %s", input);
        for (int j = 0; j < i; j++)
            ck_assert_msg(strcmp(f->name, ev->fields[j].name) != 0, "repeat field: %s", input);
        if (f->kind == SVC_VAL_STRING)
            ck_assert_ptr_nonnull(f->string);
        if (f->kind == SVC_VAL_OTHER) { /* the text is JSON again */
            json_t *v = json_loads(f->string, JSON_DECODE_ANY, NULL);
            ck_assert_msg(v && !json_is_boolean(v) && !json_is_number(v) && !json_is_string(v),
                          "OTHER text %s: %s", f->string, input);
            json_decref(v);
        }
    }
}

START_TEST(test_mutations)
{
    enum { N_MUTANTS = 6000, CAP = 2048 };
    svc_parser *big = parser_with(MAX_BYTES, MAX_ITEMS), *small = parser_with(160, 2);
    char buf[CAP], reason[CM_ERRSZ], sum[160];
    uint64_t s = 20240611;
    int accepted = 0, rejected = 0, n_valid = (int)(sizeof valid / sizeof valid[0]);
    for (int m = 0; m < N_MUTANTS; m++) {
        const char *seed = valid[rng_below(&s, (size_t)n_valid)].json;
        size_t len = strlen(seed);
        memcpy(buf, seed, len);
        for (int k = 1 + (int)rng_below(&s, 4); k > 0; k--)
            mutate(&s, buf, &len, CAP);
        svc_parser *p = m % 4 == 3 ? small : big;
        svc_event ev;
        reason[0] = '\0';
        int rc = svc_event_parse(p, buf, len, &ev, reason, sizeof reason);
        summary(sum, buf, len);
        if (rc == 0) {
            check_invariants(&ev, p == small ? 2 : MAX_ITEMS, sum);
            accepted++;
        } else {
            ck_assert_msg(rc == -1, "rc %d: %s", rc, sum);
            ck_assert_msg(reason[0] != '\0', "empty reason: %s", sum);
            for (const char *r = reason; *r; r++)
                ck_assert_msg((unsigned char)*r >= 0x20 && *r != 0x7f,
                              "control byte in reason \"%s\": %s", reason, sum);
            rejected++;
        }
    }
    printf("%-28s %d mutants of %d valid events (seed 20240611) -> accepted: %d, rejected: %d, "
           "none crashed, every reason non-empty and printable\n", "mutations", N_MUTANTS, n_valid,
           accepted, rejected);
    ck_assert_int_gt(accepted, 0);
    ck_assert_int_gt(rejected, 0);
    svc_parser_free(big);
    svc_parser_free(small);
}
END_TEST

/* ---- the suite ------------------------------------------------------------------------ */

static Suite *events_suite(void)
{
    Suite *s = suite_create("events");
    TCase *tc = tcase_create("parse");
    tcase_add_loop_test(tc, test_valid, 0, sizeof valid / sizeof valid[0]);
    tcase_add_test(tc, test_input_freed);
    tcase_add_loop_test(tc, test_reject, 0, sizeof bad / sizeof bad[0]);
    tcase_add_test(tc, test_api);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_test(tc, test_id_length);
    tcase_add_test(tc, test_max_items);
    tcase_add_test(tc, test_max_bytes);
    tcase_add_test(tc, test_max_fields);
    tcase_add_test(tc, test_other_text_growth);
    tcase_add_test(tc, test_deep_nesting);
    tcase_add_test(tc, test_nul_bytes);
    tcase_add_test(tc, test_number_values);
    suite_add_tcase(s, tc);

    tc = tcase_create("robustness");
    tcase_add_test(tc, test_dedupe);
    tcase_add_test(tc, test_reuse);
    tcase_add_test(tc, test_corpus);
    tcase_add_test(tc, test_mutations);
    tcase_set_timeout(tc, 60); /* ASan builds are several times slower */
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* Check forks: no half-written buffer is copied */
    SRunner *sr = srunner_create(events_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
