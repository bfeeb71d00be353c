/* service/events.c — see events.h. Parsing and validation of input events
 * with jansson, into a parser allocated once and reused for every message.
 *
 * Memory: the parser owns the jansson tree of the last parse (every string
 * of an svc_event points into it), the ranking items array, the table that
 * dedupes ranking items, and an arena for the JSON text of OTHER field
 * values. A parse frees the previous tree first. Nothing else is allocated
 * per parse except by jansson itself (the tree, and json_dumpb's loop check)
 * and by the arena, which starts at ARENA_START and grows only when an event
 * needs more than any before it: its size is the largest OTHER text seen,
 * not a multiple of max_bytes (which the configuration allows up to 1 GB).
 *
 * Decisions the header leaves open:
 * - a ranking's duplicate item ids keep their first occurrence only, in
 *   order; "exceeds max_items" counts the items as sent, before the dedupe;
 * - "fields" may be absent (no fields) but not null or any other non-array;
 * - `available` counts only as a JSON boolean: "false", 0 or null read as
 *   absent (-1), so a typo never marks an item unavailable;
 * - raw NUL bytes are rejected before jansson sees them (jansson would call
 *   them "end of file"), and `\u0000` is rejected by jansson, so no string
 *   of an event holds a NUL;
 * - nesting deeper than jansson's JSON_PARSER_MAX_DEPTH (2048) is an
 *   ordinary "invalid JSON" rejection;
 * - integers beyond int64 and reals beyond double ("1e400") are invalid JSON
 *   to jansson; "-0" is the integer 0; a timestamp written as a real
 *   (1.7e12, 1e20, 5.0) is rejected: Metarank's timestamps are integer ms. */
#include "service/events.h"

#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/json.h"

#define QUOTE_MAX 64 /* bytes of an input string repeated in a reason */
/* A printable copy of at most JSON_ERROR_TEXT_LENGTH bytes, each up to 4. */
#define PRINTABLE_SZ (4 * JSON_ERROR_TEXT_LENGTH + 4)

/* Compact JSON text can outgrow its input: a real prints with %.17g
 * ("0.1" -> "0.10000000000000001"), so OTHER text may reach ~6x the event's
 * bytes. The arena starts here and doubles on demand. */
#define ARENA_START ((size_t)16384)

typedef struct seen_slot {
    uint32_t gen; /* the slot is in use when gen == parser's gen */
    int idx;      /* index into items */
} seen_slot;

struct svc_parser {
    svc_event_limits lim;
    json_t *root;         /* tree of the last parse, NULL after a rejection */
    const char **items;   /* [max_items] ranking items, deduped */
    seen_slot *seen;      /* [seen_cap] open addressing over items, by id */
    size_t seen_cap;      /* power of two >= 2 * max_items */
    uint32_t gen;         /* bumped per ranking, so the table needs no clearing */
    char *dump;           /* [dump_cap] JSON text of OTHER field values */
    size_t dump_cap, dump_used;
    size_t dump_off[SVC_MAX_FIELDS]; /* where each OTHER field's text starts */
};

static const char *const kind_names[] = {"interaction", "ranking", "item", "user"};

const char *svc_event_kind_name(svc_event_kind k)
{
    return (unsigned)k < sizeof kind_names / sizeof kind_names[0] ? kind_names[k] : "unknown";
}

/* ---- the parser --------------------------------------------------------------- */

svc_parser *svc_parser_new(const svc_event_limits *lim)
{
    if (!lim || lim->max_bytes < 1 || lim->max_items < 1 || lim->max_items > INT_MAX / 4)
        return NULL;
    svc_parser *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->lim = *lim;
    p->seen_cap = 2;
    while (p->seen_cap < 2 * (size_t)lim->max_items)
        p->seen_cap *= 2;
    p->dump_cap = ARENA_START;
    p->items = malloc((size_t)lim->max_items * sizeof *p->items);
    p->seen = calloc(p->seen_cap, sizeof *p->seen);
    p->dump = malloc(p->dump_cap);
    if (!p->items || !p->seen || !p->dump) {
        svc_parser_free(p);
        return NULL;
    }
    return p;
}

void svc_parser_free(svc_parser *p)
{
    if (!p)
        return;
    json_decref(p->root);
    free(p->items);
    free(p->seen);
    free(p->dump);
    free(p);
}

/* ---- reasons ------------------------------------------------------------------ */

/* Copies at most `max` (<= JSON_ERROR_TEXT_LENGTH) bytes of s[0..len) into
 * out[PRINTABLE_SZ] for a reason: control bytes (and with `ascii`, every
 * byte >= 0x80) as \xNN; a cut falls on a UTF-8 boundary and ends in "...". */
static const char *printable(char *out, const char *s, size_t len, size_t max, int ascii)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = len, o = 0;
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || (ascii && c >= 0x80)) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    if (n < len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* The name of a field in reasons: "user", or "items[3].id" inside an array. */
typedef struct fpath {
    const char *array; /* NULL at the top level */
    size_t index;
    const char *key;   /* NULL for the array element itself */
} fpath;

static const char *fpath_str(char out[64], fpath f)
{
    if (!f.array)
        snprintf(out, 64, "%s", f.key);
    else if (!f.key)
        snprintf(out, 64, "%s[%zu]", f.array, f.index);
    else
        snprintf(out, 64, "%s[%zu].%s", f.array, f.index, f.key);
    return out;
}

static fpath top(const char *key)
{
    return (fpath){.array = NULL, .index = 0, .key = key};
}

static int missing(fpath f, char *reason, size_t rsz)
{
    char name[64];
    return cm_errf(reason, rsz, "missing field \"%s\"", fpath_str(name, f));
}

static int wrong_type(fpath f, const char *want, const json_t *v, char *reason, size_t rsz)
{
    char name[64];
    return cm_errf(reason, rsz, "field \"%s\" must be %s, got %s", fpath_str(name, f), want,
                   cm_json_kind(v));
}

/* ---- fields --------------------------------------------------------------------- */

/* An id: 1..SVC_MAX_ID bytes without control characters (jansson has
 * already checked that it is UTF-8 without NUL). */
static int check_id(fpath f, const char *s, char *reason, size_t rsz)
{
    char name[64];
    size_t len = strlen(s);
    if (len == 0)
        return cm_errf(reason, rsz, "field \"%s\" is empty", fpath_str(name, f));
    if (len > SVC_MAX_ID)
        return cm_errf(reason, rsz, "field \"%s\" is %zu bytes, at most %d", fpath_str(name, f),
                       len, SVC_MAX_ID);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return cm_errf(reason, rsz, "field \"%s\" has control character 0x%02x at byte %zu",
                           fpath_str(name, f), c, i);
    }
    return 0;
}

static int get_id(const json_t *obj, fpath f, const char **out, char *reason, size_t rsz)
{
    const json_t *v = json_object_get(obj, f.key);
    if (!v)
        return missing(f, reason, rsz);
    if (!json_is_string(v))
        return wrong_type(f, "a string", v, reason, rsz);
    *out = json_string_value(v);
    return check_id(f, *out, reason, rsz);
}

static int get_timestamp(const json_t *obj, int64_t *out, char *reason, size_t rsz)
{
    const json_t *v = json_object_get(obj, "timestamp");
    if (!v)
        return missing(top("timestamp"), reason, rsz);
    if (!json_is_integer(v))
        return cm_errf(reason, rsz,
                       "field \"timestamp\" must be an integer (ms since the epoch), got %s",
                       cm_json_kind(v));
    json_int_t t = json_integer_value(v);
    if (t < 0)
        return cm_errf(reason, rsz, "field \"timestamp\" is %lld, must be >= 0", (long long)t);
    *out = (int64_t)t;
    return 0;
}

/* ---- kinds ---------------------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Adds id to the items unless this ranking already has it. */
static void add_item(svc_parser *p, svc_event *ev, const char *id)
{
    size_t mask = p->seen_cap - 1;
    for (size_t i = (size_t)hash_str(id) & mask;; i = (i + 1) & mask) {
        seen_slot *s = &p->seen[i];
        if (s->gen != p->gen) {
            s->gen = p->gen;
            s->idx = ev->n_items;
            p->items[ev->n_items++] = id;
            return;
        }
        if (strcmp(p->items[s->idx], id) == 0)
            return;
    }
}

static int parse_ranking(svc_parser *p, const json_t *root, svc_event *ev, char *reason,
                         size_t rsz)
{
    if (get_id(root, top("user"), &ev->user, reason, rsz) < 0)
        return -1;
    const json_t *a = json_object_get(root, "items");
    if (!a && p->lim.items_optional)
        return 0;
    if (!a)
        return missing(top("items"), reason, rsz);
    if (!json_is_array(a))
        return wrong_type(top("items"), "an array", a, reason, rsz);
    size_t n = json_array_size(a);
    if (n == 0)
        return cm_errf(reason, rsz, "field \"items\" is empty");
    if (n > (size_t)p->lim.max_items)
        return cm_errf(reason, rsz, "ranking of %zu items exceeds %d", n, p->lim.max_items);
    if (++p->gen == 0) { /* wrapped: every slot may look in use */
        memset(p->seen, 0, p->seen_cap * sizeof *p->seen);
        p->gen = 1;
    }
    ev->items = p->items;
    for (size_t i = 0; i < n; i++) {
        const json_t *it = json_array_get(a, i);
        const char *id;
        if (!json_is_object(it))
            return wrong_type((fpath){"items", i, NULL}, "an object", it, reason, rsz);
        if (get_id(it, (fpath){"items", i, "id"}, &id, reason, rsz) < 0)
            return -1;
        add_item(p, ev, id);
    }
    return 0;
}

static int set_value(svc_parser *p, svc_field *f, const json_t *v, size_t i, char *reason,
                     size_t rsz)
{
    switch (json_typeof(v)) {
    case JSON_TRUE:
    case JSON_FALSE:
        f->kind = SVC_VAL_BOOL;
        f->boolean = json_is_true(v);
        return 0;
    case JSON_INTEGER:
    case JSON_REAL:
        f->kind = SVC_VAL_NUMBER;
        f->number = json_number_value(v);
        return 0;
    case JSON_STRING:
        f->kind = SVC_VAL_STRING;
        f->string = json_string_value(v);
        return 0;
    case JSON_NULL:
    case JSON_ARRAY:
    case JSON_OBJECT:
        break;
    }
    const size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
    size_t n = json_dumpb(v, p->dump + p->dump_used, p->dump_cap - p->dump_used, flags);
    if (n >= p->dump_cap - p->dump_used) { /* did not fit (with its NUL): grow, dump again */
        size_t cap = p->dump_cap;
        while (cap - p->dump_used <= n)
            cap *= 2;
        char *d = realloc(p->dump, cap);
        if (!d)
            return cm_errf(reason, rsz, "field \"fields[%zu].value\": out of memory for %zu bytes",
                           i, n);
        p->dump = d;
        p->dump_cap = cap;
        n = json_dumpb(v, p->dump + p->dump_used, p->dump_cap - p->dump_used, flags);
    }
    if (n == 0) /* jansson cannot encode what it parsed: not expected, but say so */
        return cm_errf(reason, rsz, "field \"fields[%zu].value\" cannot be encoded", i);
    f->kind = SVC_VAL_OTHER;
    p->dump_off[i] = p->dump_used; /* the pointer is set once the arena stops moving */
    p->dump[p->dump_used + n] = '\0';
    p->dump_used += n + 1;
    return 0;
}

static int parse_field(svc_parser *p, svc_event *ev, const json_t *o, size_t i, char *reason,
                       size_t rsz)
{
    svc_field *f = &ev->fields[i];
    char a[PRINTABLE_SZ];
    if (!json_is_object(o))
        return wrong_type((fpath){"fields", i, NULL}, "an object", o, reason, rsz);
    *f = (svc_field){0};
    if (get_id(o, (fpath){"fields", i, "name"}, &f->name, reason, rsz) < 0)
        return -1;
    for (size_t j = 0; j < i; j++)
        if (strcmp(ev->fields[j].name, f->name) == 0)
            return cm_errf(reason, rsz,
                           "field \"fields[%zu].name\": duplicate name \"%s\" (also fields[%zu])", i,
                           printable(a, f->name, strlen(f->name), QUOTE_MAX, 0), j);
    const json_t *v = json_object_get(o, "value");
    if (!v)
        return missing((fpath){"fields", i, "value"}, reason, rsz);
    return set_value(p, f, v, i, reason, rsz);
}

static int parse_fields(svc_parser *p, const json_t *root, svc_event *ev, char *reason,
                        size_t rsz)
{
    const json_t *a = json_object_get(root, "fields");
    if (!a)
        return 0;
    if (!json_is_array(a))
        return wrong_type(top("fields"), "an array", a, reason, rsz);
    size_t n = json_array_size(a);
    if (n > SVC_MAX_FIELDS)
        return cm_errf(reason, rsz, "%s event with %zu fields exceeds %d",
                       svc_event_kind_name(ev->kind), n, SVC_MAX_FIELDS);
    p->dump_used = 0;
    for (size_t i = 0; i < n; i++) {
        if (parse_field(p, ev, json_array_get(a, i), i, reason, rsz) < 0)
            return -1;
        ev->n_fields = (int)i + 1;
    }
    for (int i = 0; i < ev->n_fields; i++)
        if (ev->fields[i].kind == SVC_VAL_OTHER)
            ev->fields[i].string = p->dump + p->dump_off[i];
    return 0;
}

static int parse_kind(const json_t *root, svc_event_kind *kind, char *reason, size_t rsz)
{
    const json_t *v = json_object_get(root, "event");
    if (!v)
        return missing(top("event"), reason, rsz);
    if (!json_is_string(v))
        return wrong_type(top("event"), "a string", v, reason, rsz);
    const char *s = json_string_value(v);
    for (int k = 0; k < (int)(sizeof kind_names / sizeof kind_names[0]); k++)
        if (strcmp(s, kind_names[k]) == 0) {
            *kind = (svc_event_kind)k;
            return 0;
        }
    char q[PRINTABLE_SZ];
    return cm_errf(reason, rsz, "unknown event type \"%s\" (expected interaction, ranking, item "
                   "or user)", printable(q, s, json_string_length(v), QUOTE_MAX, 0));
}

static int parse_event(svc_parser *p, const json_t *root, svc_event *ev, char *reason,
                       size_t rsz)
{
    if (!json_is_object(root))
        return cm_errf(reason, rsz, "event must be a JSON object, got %s", cm_json_kind(root));
    if (parse_kind(root, &ev->kind, reason, rsz) < 0 ||
        get_id(root, top("id"), &ev->id, reason, rsz) < 0 ||
        get_timestamp(root, &ev->timestamp, reason, rsz) < 0)
        return -1;
    switch (ev->kind) {
    case SVC_EV_INTERACTION:
        if (get_id(root, top("user"), &ev->user, reason, rsz) < 0 ||
            get_id(root, top("item"), &ev->item, reason, rsz) < 0)
            return -1;
        return get_id(root, top("type"), &ev->type, reason, rsz);
    case SVC_EV_RANKING:
        return parse_ranking(p, root, ev, reason, rsz);
    case SVC_EV_ITEM:
        if (get_id(root, top("item"), &ev->item, reason, rsz) < 0)
            return -1;
        return parse_fields(p, root, ev, reason, rsz);
    case SVC_EV_USER:
        if (get_id(root, top("user"), &ev->user, reason, rsz) < 0)
            return -1;
        return parse_fields(p, root, ev, reason, rsz);
    }
    return cm_errf(reason, rsz, "unknown event kind %d", (int)ev->kind);
}

int svc_event_parse(svc_parser *p, const char *buf, size_t len, svc_event *ev, char *reason,
                    size_t rsz)
{
    json_error_t je;
    const char *nul;
    char q[PRINTABLE_SZ];
    json_decref(p->root);
    p->root = NULL;
    *ev = (svc_event){0};
    if (len > p->lim.max_bytes)
        return cm_errf(reason, rsz, "event of %zu bytes exceeds %zu", len, p->lim.max_bytes);
    if (len == 0)
        return cm_errf(reason, rsz, "empty event");
    if ((nul = memchr(buf, '\0', len)))
        return cm_errf(reason, rsz, "invalid JSON: NUL byte at offset %zu", (size_t)(nul - buf));
    p->root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!p->root) {
        size_t n = strnlen(je.text, sizeof je.text - 1); /* the last byte holds a code */
        return cm_errf(reason, rsz, "invalid JSON at byte %d: %s", je.position,
                       printable(q, je.text, n, JSON_ERROR_TEXT_LENGTH, 1));
    }
    if (parse_event(p, p->root, ev, reason, rsz) < 0) {
        json_decref(p->root);
        p->root = NULL;
        *ev = (svc_event){0};
        return -1;
    }
    return 0;
}

int svc_event_available(const svc_event *ev)
{
    if (ev->kind != SVC_EV_ITEM)
        return -1;
    for (int i = 0; i < ev->n_fields; i++)
        if (strcmp(ev->fields[i].name, "available") == 0)
            return ev->fields[i].kind == SVC_VAL_BOOL ? ev->fields[i].boolean : -1;
    return -1;
}
