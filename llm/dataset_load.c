/* llm/dataset_load.c — lm_dataset_load: the MovieLens, sequence-file and
 * JSON-lines readers of llm/dataset.h, feeding lm_dataset_builder.
 *
 * Every reader goes through one buffered line reader that bounds the length
 * of a line (so a file without newlines cannot exhaust memory), strips a
 * trailing CR (the MovieLens files have CRLF line ends) and refuses NUL
 * bytes. Every error names the file and the line: "ratings.csv:17: rating
 * \"x\" is not a number".
 *
 * Decisions where the header is silent:
 *   - MovieLens: the header line must be exactly userId,movieId,rating,
 *     timestamp (a UTF-8 BOM is allowed); ratings must lie in 0..10 (star
 *     scales of 0.5..5 and 1..10) and round half up ("0.5" -> "1",
 *     "3.5" -> "4"); timestamps are kept in seconds, as read. movies.csv
 *     must start with movieId,title; it is optional, but if present it must
 *     parse; titles of movies never rated are dropped. Fields follow RFC 4180: quoted fields may hold commas, doubled
 *     quotes and line breaks; a quote inside an unquoted field is an error.
 *   - sequence files: a line holding a user and no items gives that user no
 *     events and is skipped (datasets hold only users with events); a user
 *     on two lines is an error naming both; the timestamp of an item is its
 *     0-based position in the line.
 *   - JSON lines: "timestamp" must be a JSON integer; duplicate keys in an
 *     object are an error; lines of only whitespace are ignored.
 *   - limits: a JSON line or a CSV record over 1 MiB, or a sequence line
 *     over 256 MiB, is an error (the schema's events are far smaller);
 *   - blank lines are ignored in every format;
 *   - a file that yields no interactions at all is an error: nothing can be
 *     trained or evaluated on it, and it is usually the wrong file. */
#include "llm/dataset.h"

#include "common/err.h"
#include "common/json.h"
#include "common/strmap.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define JSONL_MAX_LINE (1u << 20)  /* bytes of one event */
#define CSV_MAX_RECORD (1u << 20)
#define SEQ_MAX_LINE (1u << 28)    /* one user's whole history */
#define READ_CHUNK (1u << 16)
#define RATING_MAX 10.0

/* ---- lines ------------------------------------------------------------------ */

typedef struct lines {
    FILE *fp;
    const char *path;
    char *buf;
    size_t cap, beg, end; /* unread bytes are buf[beg, end); buf[cap - 1] stays spare */
    size_t max;           /* longest line accepted, without its line end */
    long long lineno;     /* of the line last returned */
    int cr;               /* did that line end in CR LF? */
    int eof;
} lines;

static int lines_open(lines *r, const char *path, size_t max, char *err, size_t errsz)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    r->max = max;
    if (!(r->fp = fopen(path, "rb")))
        return cm_errf(err, errsz, "%s: %s", path, strerror(errno));
    r->cap = READ_CHUNK;
    if (!(r->buf = malloc(r->cap))) {
        fclose(r->fp);
        return cm_errf(err, errsz, "%s: out of memory", path);
    }
    return 0;
}

static void lines_close(lines *r)
{
    if (r->fp)
        fclose(r->fp);
    free(r->buf);
}

/* Moves the unread bytes to the front, grows the buffer when they fill it,
 * and reads more. A partial line longer than max is an error here already,
 * so memory stays bounded by max. */
static int lines_fill(lines *r, char *err, size_t errsz)
{
    size_t have = r->end - r->beg;
    if (have > r->max + 1) /* + 1: room for a CR before the newline */
        return cm_errf(err, errsz, "%s:%lld: line is longer than %zu bytes", r->path,
                       r->lineno + 1, r->max);
    memmove(r->buf, r->buf + r->beg, have);
    r->beg = 0;
    r->end = have;
    if (r->cap - 1 - r->end < READ_CHUNK / 2) {
        char *nb = realloc(r->buf, r->cap * 2);
        if (!nb)
            return cm_errf(err, errsz, "%s:%lld: out of memory", r->path, r->lineno + 1);
        r->buf = nb;
        r->cap *= 2;
    }
    size_t got = fread(r->buf + r->end, 1, r->cap - 1 - r->end, r->fp);
    r->end += got;
    if (got == 0) {
        if (ferror(r->fp))
            return cm_errf(err, errsz, "%s: read: %s", r->path, strerror(errno));
        r->eof = 1;
    }
    return 0;
}

/* The next line, NUL-terminated in the reader's buffer (valid until the next
 * call), without its line end. Returns 1 with a line, 0 at the end of the
 * file, -1 on error. */
static int lines_next(lines *r, char **line, size_t *len, char *err, size_t errsz)
{
    for (;;) {
        char *s = r->buf + r->beg;
        char *nl = memchr(s, '\n', r->end - r->beg);
        if (nl || (r->eof && r->end > r->beg)) {
            size_t n = nl ? (size_t)(nl - s) : r->end - r->beg;
            r->beg += n + (nl != NULL);
            r->lineno++;
            s[n] = '\0'; /* the newline, or the spare byte at the end */
            r->cr = n && s[n - 1] == '\r';
            if (r->cr)
                s[--n] = '\0';
            if (n > r->max)
                return cm_errf(err, errsz, "%s:%lld: line is longer than %zu bytes", r->path,
                               r->lineno, r->max);
            if (memchr(s, '\0', n))
                return cm_errf(err, errsz, "%s:%lld: line holds a NUL byte", r->path, r->lineno);
            *line = s;
            *len = n;
            return 1;
        }
        if (r->eof)
            return 0;
        if (lines_fill(r, err, errsz) < 0)
            return -1;
    }
}

static int is_blank(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\v' || *s == '\f')
        s++;
    return *s == '\0';
}

/* ---- CSV (RFC 4180) --------------------------------------------------------- */

#define CSV_MAX_FIELDS 8

typedef struct csv {
    lines in;
    char *rec;          /* a record spanning lines, joined */
    size_t rec_cap;
    long long rec_line; /* first line of the record last returned */
    int nf;             /* fields of that record (may exceed CSV_MAX_FIELDS) */
    char *f[CSV_MAX_FIELDS];
} csv;

/* Does s[0..len) end inside a quoted field? Only a quote that opens a
 * field starts one (a stray quote elsewhere is csv_split's error). */
static int ends_in_quotes(const char *s, size_t len)
{
    int quoted = 0, field_start = 1;
    for (size_t i = 0; i < len; i++) {
        if (quoted) {
            if (s[i] == '"' && i + 1 < len && s[i + 1] == '"')
                i++;
            else if (s[i] == '"')
                quoted = 0;
        } else {
            quoted = field_start && s[i] == '"';
            field_start = s[i] == ',';
        }
    }
    return quoted;
}

/* Appends `sep` (the line end that came before) and line to the joined record. */
static int rec_append(csv *c, size_t *at, const char *sep, const char *line, size_t len)
{
    size_t nsep = strlen(sep), need = *at + nsep + len + 1;
    if (need > c->rec_cap) {
        size_t cap = c->rec_cap ? c->rec_cap : 256;
        while (cap < need)
            cap *= 2;
        char *nb = realloc(c->rec, cap);
        if (!nb)
            return -1;
        c->rec = nb;
        c->rec_cap = cap;
    }
    memcpy(c->rec + *at, sep, nsep);
    *at += nsep;
    memcpy(c->rec + *at, line, len);
    *at += len;
    c->rec[*at] = '\0';
    return 0;
}

/* A record whose first line ends inside a quoted field continues on the
 * next lines (the field holds line breaks, kept as they were: LF or CR LF). */
static int csv_join(csv *c, char **s, size_t *len, char *err, size_t errsz)
{
    size_t at = 0;
    char *line;
    size_t n;
    if (rec_append(c, &at, "", *s, *len) < 0)
        return cm_errf(err, errsz, "%s:%lld: out of memory", c->in.path, c->rec_line);
    while (ends_in_quotes(c->rec, at)) {
        const char *sep = c->in.cr ? "\r\n" : "\n";
        int rc = lines_next(&c->in, &line, &n, err, errsz);
        if (rc < 0)
            return -1;
        if (rc == 0)
            return cm_errf(err, errsz, "%s:%lld: quoted field is not closed before the end of the "
                           "file", c->in.path, c->rec_line);
        if (at + strlen(sep) + n > c->in.max)
            return cm_errf(err, errsz, "%s:%lld: record is longer than %zu bytes", c->in.path,
                           c->rec_line, c->in.max);
        if (rec_append(c, &at, sep, line, n) < 0)
            return cm_errf(err, errsz, "%s:%lld: out of memory", c->in.path, c->rec_line);
    }
    *s = c->rec;
    *len = at;
    return 0;
}

/* Splits s[0..len) (s[len] == '\0') at commas outside quotes, unquoting in
 * place and NUL-terminating each field. */
static int csv_split(csv *c, char *s, size_t len, char *err, size_t errsz)
{
    size_t i = 0;
    c->nf = 0;
    for (;;) {
        char *start = s + i, *out = start;
        if (i < len && s[i] == '"') {
            for (i++;; i++) {
                if (i >= len) /* csv_join saw to it that this cannot happen: a guard */
                    return cm_errf(err, errsz, "%s:%lld: field %d: quoted field is not closed",
                                   c->in.path, c->rec_line, c->nf + 1);
                if (s[i] == '"' && (i + 1 >= len || s[i + 1] != '"'))
                    break;
                i += s[i] == '"'; /* a doubled quote stands for one */
                *out++ = s[i];
            }
            if (++i < len && s[i] != ',')
                return cm_errf(err, errsz, "%s:%lld: field %d: text after the closing quote",
                               c->in.path, c->rec_line, c->nf + 1);
        } else {
            for (; i < len && s[i] != ','; i++)
                if (s[i] == '"')
                    return cm_errf(err, errsz, "%s:%lld: field %d: quote inside an unquoted field "
                                   "(quote the whole field and double the quote)", c->in.path,
                                   c->rec_line, c->nf + 1);
            out = s + i;
        }
        int more = i < len;
        *out = '\0';
        if (c->nf < CSV_MAX_FIELDS)
            c->f[c->nf] = start;
        c->nf++;
        if (!more)
            return 0;
        i++;
    }
}

/* The next non-blank record. Returns 1 with c->nf fields in c->f, 0 at the
 * end of the file, -1 on error. */
static int csv_next(csv *c, char *err, size_t errsz)
{
    char *s;
    size_t len;
    int rc;
    do {
        if ((rc = lines_next(&c->in, &s, &len, err, errsz)) <= 0)
            return rc;
    } while (len == 0);
    c->rec_line = c->in.lineno;
    if (ends_in_quotes(s, len) && csv_join(c, &s, &len, err, errsz) < 0)
        return -1;
    if (csv_split(c, s, len, err, errsz) < 0)
        return -1;
    return 1;
}

static int csv_open(csv *c, const char *path, char *err, size_t errsz)
{
    memset(c, 0, sizeof *c);
    return lines_open(&c->in, path, CSV_MAX_RECORD, err, errsz);
}

static void csv_close(csv *c)
{
    lines_close(&c->in);
    free(c->rec);
}

/* The header must start with the given column names (exactly `n` columns
 * when `exact`). */
static int csv_header(csv *c, const char *const *names, int n, int exact, char *err, size_t errsz)
{
    int rc = csv_next(c, err, errsz);
    if (rc < 0)
        return -1;
    if (rc == 0)
        return cm_errf(err, errsz, "%s: empty file, expected a header line", c->in.path);
    if (c->nf > 0 && strncmp(c->f[0], "\xef\xbb\xbf", 3) == 0)
        c->f[0] += 3; /* UTF-8 byte order mark */
    int ok = exact ? c->nf == n : c->nf >= n;
    for (int i = 0; ok && i < n; i++)
        ok = strcmp(c->f[i], names[i]) == 0;
    if (!ok) {
        char want[128] = "";
        for (int i = 0; i < n; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s", i ? "," : "", names[i]);
        return cm_errf(err, errsz, "%s:%lld: header is \"%.60s%s\", expected \"%s\"%s", c->in.path,
                       c->rec_line, c->f[0], c->nf > 1 ? ",..." : "", want,
                       exact ? "" : " followed by any columns");
    }
    return 0;
}

/* ---- MovieLens -------------------------------------------------------------- */

static int parse_rating(const csv *c, const char *s, int *stars, char *err, size_t errsz)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v))
        return cm_errf(err, errsz, "%s:%lld: rating \"%.40s\" is not a number", c->in.path,
                       c->rec_line, s);
    if (v < 0.0 || v > RATING_MAX)
        return cm_errf(err, errsz, "%s:%lld: rating %.40s is outside 0..%g", c->in.path, c->rec_line,
                       s, RATING_MAX);
    *stars = (int)floor(v + 0.5);
    return 0;
}

static int parse_ts(const csv *c, const char *s, int64_t *ts, char *err, size_t errsz)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno)
        return cm_errf(err, errsz, "%s:%lld: timestamp \"%.40s\" is not an integer", c->in.path,
                       c->rec_line, s);
    *ts = v;
    return 0;
}

static int ratings_row(lm_dataset_builder *b, const csv *c, char *err, size_t errsz)
{
    char action[16], msg[CM_ERRSZ];
    int stars = 0;
    int64_t ts = 0;
    if (c->nf != 4)
        return cm_errf(err, errsz, "%s:%lld: expected 4 fields (userId,movieId,rating,timestamp), "
                       "found %d", c->in.path, c->rec_line, c->nf);
    for (int i = 0; i < 4; i++)
        if (!*c->f[i])
            return cm_errf(err, errsz, "%s:%lld: field %d (%s) is empty", c->in.path, c->rec_line,
                           i + 1, (const char *const[]){"userId", "movieId", "rating", "timestamp"}[i]);
    if (parse_rating(c, c->f[2], &stars, err, errsz) < 0 || parse_ts(c, c->f[3], &ts, err, errsz) < 0)
        return -1;
    snprintf(action, sizeof action, "%d", stars);
    if (lm_dataset_builder_add(b, c->f[0], c->f[1], action, ts, msg, sizeof msg) < 0)
        return cm_errf(err, errsz, "%s:%lld: %s", c->in.path, c->rec_line, msg);
    return 0;
}

static int read_ratings(lm_dataset_builder *b, const char *path, char *err, size_t errsz)
{
    static const char *const cols[] = {"userId", "movieId", "rating", "timestamp"};
    csv c;
    int rc;
    if (csv_open(&c, path, err, errsz) < 0)
        return -1;
    rc = csv_header(&c, cols, 4, 1, err, errsz);
    while (rc == 0 && (rc = csv_next(&c, err, errsz)) > 0)
        rc = ratings_row(b, &c, err, errsz);
    csv_close(&c);
    return rc;
}

static int read_titles(lm_dataset_builder *b, const char *path, char *err, size_t errsz)
{
    static const char *const cols[] = {"movieId", "title"};
    char msg[CM_ERRSZ];
    csv c;
    int rc;
    if (csv_open(&c, path, err, errsz) < 0)
        return -1;
    rc = csv_header(&c, cols, 2, 0, err, errsz);
    while (rc == 0 && (rc = csv_next(&c, err, errsz)) > 0) {
        rc = 0;
        if (c.nf < 2)
            rc = cm_errf(err, errsz, "%s:%lld: expected at least 2 fields (movieId,title), found %d",
                         path, c.rec_line, c.nf);
        else if (lm_dataset_builder_title(b, c.f[0], c.f[1], msg, sizeof msg) < 0)
            rc = cm_errf(err, errsz, "%s:%lld: %s", path, c.rec_line, msg);
    }
    csv_close(&c);
    return rc;
}

/* path/name, or NULL on out of memory. */
static char *path_join(const char *dir, size_t dir_len, const char *name)
{
    size_t n = dir_len + 1 + strlen(name) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%.*s/%s", (int)dir_len, dir, name);
    return p;
}

/* ratings.csv, then movies.csv from the same folder when it exists. */
static int read_movielens(lm_dataset_builder *b, const char *ratings, char *err, size_t errsz)
{
    if (read_ratings(b, ratings, err, errsz) < 0)
        return -1;
    const char *slash = strrchr(ratings, '/');
    char *movies = slash ? path_join(ratings, (size_t)(slash - ratings), "movies.csv")
                         : path_join(".", 1, "movies.csv");
    if (!movies)
        return cm_errf(err, errsz, "%s: out of memory", ratings);
    int rc = access(movies, F_OK) == 0 ? read_titles(b, movies, err, errsz) : 0;
    free(movies);
    return rc;
}

/* ---- sequence files --------------------------------------------------------- */

#define SEQ_SPACE " \t\v\f"

/* The users met so far, and the line that named each. */
typedef struct seq_users {
    cm_strmap *seen;
    long long *line; /* [room], by id in seen */
    int room;
} seq_users;

/* Records that `user` is on the current line; a second line is an error. */
static int seq_user(seq_users *su, const lines *in, const char *user, char *err, size_t errsz)
{
    int id, rc = cm_strmap_intern(su->seen, user, strlen(user), &id);
    if (rc == 0)
        return cm_errf(err, errsz, "%s:%lld: user \"%.40s\" already has a line (line %lld)", in->path,
                       in->lineno, user, su->line[id]);
    if (rc > 0 && id == su->room) {
        int room = su->room ? su->room * 2 : 1024;
        long long *l = room > su->room ? realloc(su->line, (size_t)room * sizeof *l) : NULL;
        if (!l)
            rc = -1;
        else {
            su->line = l;
            su->room = room;
        }
    }
    if (rc < 0)
        return cm_errf(err, errsz, "%s:%lld: out of memory", in->path, in->lineno);
    su->line[id] = in->lineno;
    return 0;
}

/* One "user item item ..." line, split in place. */
static int seq_line(lm_dataset_builder *b, seq_users *su, const lines *in, char *s, char *err,
                    size_t errsz)
{
    char msg[CM_ERRSZ], *save = NULL;
    char *user = strtok_r(s, SEQ_SPACE, &save);
    if (!user)
        return 0;
    if (seq_user(su, in, user, err, errsz) < 0)
        return -1;
    int64_t pos = 0;
    for (char *item; (item = strtok_r(NULL, SEQ_SPACE, &save)); pos++)
        if (lm_dataset_builder_add(b, user, item, "interaction", pos, msg, sizeof msg) < 0)
            return cm_errf(err, errsz, "%s:%lld: %s", in->path, in->lineno, msg);
    return 0;
}

static int read_sequences(lm_dataset_builder *b, const char *path, char *err, size_t errsz)
{
    seq_users su = {.seen = cm_strmap_new()};
    lines in;
    char *s;
    size_t len;
    int rc = -1;
    if (!su.seen)
        return cm_errf(err, errsz, "%s: out of memory", path);
    if (lines_open(&in, path, SEQ_MAX_LINE, err, errsz) == 0) {
        while ((rc = lines_next(&in, &s, &len, err, errsz)) > 0)
            if (seq_line(b, &su, &in, s, err, errsz) < 0) {
                rc = -1;
                break;
            }
        lines_close(&in);
    }
    cm_strmap_free(su.seen);
    free(su.line);
    return rc;
}

/* ---- JSON lines ------------------------------------------------------------- */

/* The string field `key` of the event on the current line. */
static int json_str(const lines *in, json_t *obj, const char *key, const char **out, char *err,
                    size_t errsz)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return cm_errf(err, errsz, "%s:%lld: field \"%s\" is missing", in->path, in->lineno, key);
    if (!json_is_string(v))
        return cm_errf(err, errsz, "%s:%lld: field \"%s\" must be a string, not %s", in->path,
                       in->lineno, key, cm_json_kind(v));
    *out = json_string_value(v);
    return 0;
}

static int json_interaction(lm_dataset_builder *b, const lines *in, json_t *ev, char *err,
                            size_t errsz)
{
    const char *user, *item, *type;
    char msg[CM_ERRSZ];
    if (json_str(in, ev, "user", &user, err, errsz) < 0 ||
        json_str(in, ev, "item", &item, err, errsz) < 0 ||
        json_str(in, ev, "type", &type, err, errsz) < 0)
        return -1;
    json_t *ts = json_object_get(ev, "timestamp");
    if (!ts)
        return cm_errf(err, errsz, "%s:%lld: field \"timestamp\" is missing", in->path, in->lineno);
    if (!json_is_integer(ts))
        return cm_errf(err, errsz, "%s:%lld: field \"timestamp\" must be an integer (ms), not %s",
                       in->path, in->lineno, cm_json_kind(ts));
    if (lm_dataset_builder_add(b, user, item, type, json_integer_value(ts), msg, sizeof msg) < 0)
        return cm_errf(err, errsz, "%s:%lld: %s", in->path, in->lineno, msg);
    return 0;
}

/* The event types of the schema that carry no interaction. */
static int is_other_event(const char *kind)
{
    return strcmp(kind, "ranking") == 0 || strcmp(kind, "item") == 0 || strcmp(kind, "user") == 0;
}

/* One event line: an interaction goes to the builder, the other types of
 * the schema count in *skipped. */
static int json_line(lm_dataset_builder *b, const lines *in, const char *s, size_t len,
                     int64_t *skipped, char *err, size_t errsz)
{
    json_error_t je;
    const char *kind;
    int rc = -1;
    json_t *ev = json_loadb(s, len, JSON_REJECT_DUPLICATES, &je);
    if (!ev)
        return cm_errf(err, errsz, "%s:%lld: not JSON: %s (column %d)", in->path, in->lineno, je.text,
                       je.column);
    if (!json_is_object(ev))
        cm_errf(err, errsz, "%s:%lld: event is %s, expected an object", in->path, in->lineno,
                cm_json_kind(ev));
    else if (json_str(in, ev, "event", &kind, err, errsz) < 0)
        ;
    else if (strcmp(kind, "interaction") == 0)
        rc = json_interaction(b, in, ev, err, errsz);
    else if (is_other_event(kind)) {
        (*skipped)++;
        rc = 0;
    } else
        cm_errf(err, errsz, "%s:%lld: unknown event type \"%.40s\" (expected interaction, ranking, "
                "item or user)", in->path, in->lineno, kind);
    json_decref(ev);
    return rc;
}

static int read_jsonl(lm_dataset_builder *b, const char *path, int64_t *skipped, char *err,
                      size_t errsz)
{
    lines in;
    char *s;
    size_t len;
    int rc;
    if (lines_open(&in, path, JSONL_MAX_LINE, err, errsz) < 0)
        return -1;
    while ((rc = lines_next(&in, &s, &len, err, errsz)) > 0)
        if (!is_blank(s) && json_line(b, &in, s, len, skipped, err, errsz) < 0) {
            rc = -1;
            break;
        }
    lines_close(&in);
    return rc;
}

/* ---- lm_dataset_load -------------------------------------------------------- */

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* The file to read: for MovieLens, ratings.csv inside a folder. Sets *fmt
 * when it is LM_DATA_AUTO. Returns a new string, or NULL with err set. */
static char *resolve(const char *path, lm_data_format *fmt, char *err, size_t errsz)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        cm_errf(err, errsz, "%s: %s", path, strerror(errno));
        return NULL;
    }
    int dir = S_ISDIR(st.st_mode);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (*fmt == LM_DATA_AUTO)
        *fmt = dir || strcmp(base, "ratings.csv") == 0 ? LM_DATA_MOVIELENS
             : has_suffix(base, ".jsonl") || has_suffix(base, ".json") ? LM_DATA_JSONL
                                                                        : LM_DATA_SEQUENCES;
    if (!dir)
        return strdup(path);
    if (*fmt != LM_DATA_MOVIELENS) {
        cm_errf(err, errsz, "%s: is a folder; only MovieLens data (a folder holding ratings.csv) "
                "may be given as one", path);
        return NULL;
    }
    char *ratings = path_join(path, strlen(path), "ratings.csv");
    if (ratings && access(ratings, F_OK) < 0) {
        cm_errf(err, errsz, "%s: folder holds no ratings.csv", path);
        free(ratings);
        return NULL;
    }
    if (!ratings)
        cm_errf(err, errsz, "%s: out of memory", path);
    return ratings;
}

int lm_dataset_load(lm_dataset **out, const char *path, lm_data_format fmt, char *err,
                    size_t errsz)
{
    *out = NULL;
    if ((unsigned)fmt >= LM_DATA_COUNT)
        return cm_errf(err, errsz, "%s: invalid data format %d", path, (int)fmt);
    char *file = resolve(path, &fmt, err, errsz);
    if (!file)
        return -1;
    lm_dataset_builder *b = lm_dataset_builder_new();
    int64_t skipped = 0;
    int rc = !b ? cm_errf(err, errsz, "%s: out of memory", file)
           : fmt == LM_DATA_MOVIELENS ? read_movielens(b, file, err, errsz)
           : fmt == LM_DATA_JSONL    ? read_jsonl(b, file, &skipped, err, errsz)
                                     : read_sequences(b, file, err, errsz);
    if (rc < 0) {
        lm_dataset_builder_free(b);
    } else if (lm_dataset_builder_finish(b, out, err, errsz) < 0) {
        rc = -1;
    } else if ((*out)->n_events == 0) {
        rc = cm_errf(err, errsz, "%s: holds no interactions (read as %s)", file, lm_data_format_name(fmt));
        lm_dataset_free(*out);
        *out = NULL;
    } else {
        (*out)->n_skipped = skipped;
    }
    free(file);
    return rc;
}
