/* llm/safetensors.c — strict safetensors reader and atomic writer.
 *
 * The reader trusts nothing in the file: every size is bounds-checked before
 * use and every product is overflow-checked, so that a corrupt or hostile
 * file ends in an error message rather than an out-of-bounds read. The
 * jansson tree of the header stays alive with the handle, because tensor
 * names and metadata strings point into it.
 *
 * The writer builds the same JSON with jansson (which keeps insertion order,
 * so "__metadata__" comes first and tensors follow in the order added) and
 * replaces the target with rename(2), so readers never see a partial file. */
#include "llm/safetensors.h"

#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define META_KEY "__metadata__"
#define PREFIX_BYTES 8       /* the little-endian u64 header length */
#define SHAPE_STR_MAX 200    /* "[" + 8 x (20 digits + ",") + "]" fits */

/* ---- dtypes ---------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtypes[LM_DT_COUNT] = {
    [LM_DT_F32] = {"F32", 4},  [LM_DT_F16] = {"F16", 2}, [LM_DT_BF16] = {"BF16", 2},
    [LM_DT_F64] = {"F64", 8},  [LM_DT_I64] = {"I64", 8}, [LM_DT_I32] = {"I32", 4},
    [LM_DT_I16] = {"I16", 2},  [LM_DT_I8] = {"I8", 1},   [LM_DT_U8] = {"U8", 1},
    [LM_DT_BOOL] = {"BOOL", 1},
};

static bool dtype_valid(lm_dtype dt)
{
    return (unsigned)dt < LM_DT_COUNT;
}

const char *lm_dtype_name(lm_dtype dt)
{
    return dtype_valid(dt) ? dtypes[dt].name : "invalid";
}

size_t lm_dtype_size(lm_dtype dt)
{
    return dtype_valid(dt) ? dtypes[dt].size : 0;
}

int lm_dtype_parse(const char *s, lm_dtype *out)
{
    for (int i = 0; s && i < LM_DT_COUNT; i++) {
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (lm_dtype)i;
            return 0;
        }
    }
    return -1;
}

#define DTYPE_LIST_MAX (LM_DT_COUNT * 6)

/* "F32, F16, ..." for error messages, built from the table so it cannot drift. */
static const char *dtype_list(char buf[DTYPE_LIST_MAX])
{
    buf[0] = '\0';
    for (int i = 0; i < LM_DT_COUNT; i++) {
        if (i)
            strcat(buf, ", ");
        strcat(buf, dtypes[i].name);
    }
    return buf;
}

/* numel and byte count of a shape; -1 when they do not fit in 63 bits. A zero
 * dim makes the tensor empty, but the other dims must still multiply without
 * overflow, so that the verdict does not depend on where the zero sits. */
static int shape_size(lm_dtype dt, int ndim, const int64_t *shape, int64_t *numel, size_t *nbytes)
{
    int64_t n = 1, bytes;
    bool empty = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            empty = true;
        else if (__builtin_mul_overflow(n, shape[i], &n))
            return -1;
    }
    if (__builtin_mul_overflow(n, (int64_t)dtypes[dt].size, &bytes))
        return -1;
    *numel = empty ? 0 : n;
    *nbytes = empty ? 0 : (size_t)bytes;
    return 0;
}

static const char *shape_str(char buf[SHAPE_STR_MAX], int ndim, const int64_t *shape)
{
    size_t at = 0;
    buf[at++] = '[';
    for (int i = 0; i < ndim; i++)
        at += (size_t)snprintf(buf + at, SHAPE_STR_MAX - at, "%s%" PRId64, i ? "," : "", shape[i]);
    snprintf(buf + at, SHAPE_STR_MAX - at, "]");
    return buf;
}

/* ---- reader ---------------------------------------------------------------- */

struct lm_st_file {
    char *path;
    void *map;                 /* the mmap'd file; NULL for lm_st_open_mem */
    size_t map_len;
    json_t *header;            /* owns every name, key and value handed out */
    lm_st_tensor *tensors;     /* [ntensors], in header order */
    int ntensors;
    const char **meta;         /* [2 * nmeta]: key, value, key, value, ... */
    int nmeta;
};

/* A tensor's byte range in the data section, for the overlap/hole check. */
typedef struct span {
    uint64_t begin, end;
    const char *name;
} span;

/* What parse_tensor needs besides the entry itself. */
typedef struct parse_ctx {
    const char *path;
    const uint8_t *data;       /* start of the data section */
    uint64_t data_len;
    char *err;
    size_t errsz;
} parse_ctx;

static int read_prefix(const char *path, const uint8_t *buf, size_t len, uint64_t *hlen,
                       char *err, size_t errsz)
{
    if (len < PREFIX_BYTES)
        return cm_errf(err, errsz, "%s: file is %zu bytes, shorter than the 8-byte header length",
                       path, len);
    memcpy(hlen, buf, sizeof *hlen); /* the header pins a little-endian host */
    if (*hlen == 0)
        return cm_errf(err, errsz, "%s: header length is 0", path);
    if (*hlen > LM_ST_MAX_HEADER)
        return cm_errf(err, errsz, "%s: header length %" PRIu64 " exceeds the limit of %u bytes",
                       path, *hlen, LM_ST_MAX_HEADER);
    if (*hlen > len - PREFIX_BYTES)
        return cm_errf(err, errsz, "%s: header length %" PRIu64 " exceeds file size %zu (8 + %" PRIu64
                       " > %zu)", path, *hlen, len, *hlen, len);
    return 0;
}

static int load_header(lm_st_file *f, const uint8_t *hdr, size_t hlen, char *err, size_t errsz)
{
    json_error_t je;
    f->header = json_loadb((const char *)hdr, hlen, JSON_REJECT_DUPLICATES, &je);
    if (!f->header)
        return cm_errf(err, errsz, "%s: header is not valid JSON: %s (header byte %d)",
                       f->path, je.text, je.position);
    if (!json_is_object(f->header))
        return cm_errf(err, errsz, "%s: header is not a JSON object", f->path);
    return 0;
}

static int parse_metadata(lm_st_file *f, json_t *meta, char *err, size_t errsz)
{
    const char *key;
    json_t *value;
    if (!json_is_object(meta))
        return cm_errf(err, errsz, "%s: " META_KEY " is not an object", f->path);
    f->meta = malloc(2 * (json_object_size(meta) + 1) * sizeof *f->meta);
    if (!f->meta)
        return cm_errf(err, errsz, "%s: out of memory", f->path);
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return cm_errf(err, errsz, "%s: " META_KEY " value of \"%s\" is not a string",
                           f->path, key);
        f->meta[2 * f->nmeta] = key;
        f->meta[2 * f->nmeta + 1] = json_string_value(value);
        f->nmeta++;
    }
    return 0;
}

/* The entry must hold exactly dtype, shape and data_offsets. */
static int check_entry_keys(const parse_ctx *c, const char *name, json_t *entry)
{
    static const char *const required[] = {"dtype", "shape", "data_offsets"};
    const char *key;
    json_t *value;
    if (!json_is_object(entry))
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": entry is not an object", c->path, name);
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!json_object_get(entry, required[i]))
            return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": missing \"%s\"",
                           c->path, name, required[i]);
    json_object_foreach(entry, key, value) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": unknown key \"%s\"",
                           c->path, name, key);
    }
    return 0;
}

static int parse_dtype(const parse_ctx *c, const char *name, json_t *v, lm_dtype *dt)
{
    char list[DTYPE_LIST_MAX];
    if (!json_is_string(v))
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": dtype is not a string", c->path, name);
    if (lm_dtype_parse(json_string_value(v), dt) < 0)
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": dtype \"%s\" is not a known dtype (%s)",
                       c->path, name, json_string_value(v), dtype_list(list));
    return 0;
}

static int parse_shape(const parse_ctx *c, const char *name, json_t *v, lm_st_tensor *t)
{
    size_t i;
    json_t *dim;
    if (!json_is_array(v))
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": shape is not an array", c->path, name);
    if (json_array_size(v) > LM_ST_MAX_DIMS)
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": shape has %zu dims, at most %d allowed",
                       c->path, name, json_array_size(v), LM_ST_MAX_DIMS);
    json_array_foreach(v, i, dim) {
        if (!json_is_integer(dim) || json_integer_value(dim) < 0)
            return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": shape[%zu] is not a non-negative integer",
                           c->path, name, i);
        t->shape[i] = json_integer_value(dim);
    }
    t->ndim = (int)json_array_size(v);
    return 0;
}

static int parse_offsets(const parse_ctx *c, const char *name, json_t *v, span *s)
{
    json_t *b, *e;
    if (!json_is_array(v) || json_array_size(v) != 2)
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": data_offsets is not an array of exactly two integers",
                       c->path, name);
    b = json_array_get(v, 0);
    e = json_array_get(v, 1);
    if (!json_is_integer(b) || !json_is_integer(e) ||
        json_integer_value(b) < 0 || json_integer_value(e) < 0)
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": data_offsets are not non-negative integers",
                       c->path, name);
    s->begin = (uint64_t)json_integer_value(b);
    s->end = (uint64_t)json_integer_value(e);
    s->name = name;
    if (s->begin > s->end)
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": data_offsets begin %" PRIu64 " > end %" PRIu64,
                       c->path, name, s->begin, s->end);
    if (s->end > c->data_len)
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": data_offsets [%" PRIu64 ",%" PRIu64
                       "] run past the end of the %" PRIu64 "-byte data section",
                       c->path, name, s->begin, s->end, c->data_len);
    return 0;
}

static int parse_tensor(const parse_ctx *c, const char *name, json_t *entry, lm_st_tensor *t, span *s)
{
    char sh[SHAPE_STR_MAX];
    size_t len = strlen(name);
    if (len == 0 || len > LM_ST_MAX_NAME)
        return cm_errf(c->err, c->errsz, "%s: tensor name \"%.40s\" is %zu bytes long; it must be 1..%d",
                       c->path, name, len, LM_ST_MAX_NAME);
    if (check_entry_keys(c, name, entry) < 0 ||
        parse_dtype(c, name, json_object_get(entry, "dtype"), &t->dtype) < 0 ||
        parse_shape(c, name, json_object_get(entry, "shape"), t) < 0 ||
        parse_offsets(c, name, json_object_get(entry, "data_offsets"), s) < 0)
        return -1;
    if (shape_size(t->dtype, t->ndim, t->shape, &t->numel, &t->nbytes) < 0)
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": size of %s %s overflows 63 bits",
                       c->path, name, dtypes[t->dtype].name, shape_str(sh, t->ndim, t->shape));
    if (s->end - s->begin != t->nbytes)
        return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": data_offsets [%" PRIu64 ",%" PRIu64
                       "] hold %" PRIu64 " bytes but %s %s needs %zu",
                       c->path, name, s->begin, s->end, s->end - s->begin,
                       dtypes[t->dtype].name, shape_str(sh, t->ndim, t->shape), t->nbytes);
    t->name = name;
    t->data = c->data + s->begin;
    return 0;
}

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

/* The non-empty ranges, sorted, must tile [0, data_len) exactly. Zero-size
 * tensors own no bytes, so they can neither overlap nor fill a hole; their
 * offsets only have to lie inside the data section, which parse_offsets did. */
static int check_tiling(const parse_ctx *c, span *spans, int n)
{
    const span *prev = NULL;
    uint64_t pos = 0;
    qsort(spans, (size_t)n, sizeof *spans, span_cmp);
    for (int i = 0; i < n; i++) {
        const span *s = &spans[i];
        if (s->begin == s->end)
            continue;
        if (s->begin < pos)
            return cm_errf(c->err, c->errsz, "%s: tensor \"%s\": data_offsets [%" PRIu64 ",%" PRIu64
                           "] overlap tensor \"%s\" [%" PRIu64 ",%" PRIu64 "]", c->path,
                           prev->name, prev->begin, prev->end, s->name, s->begin, s->end);
        if (s->begin > pos)
            return cm_errf(c->err, c->errsz, "%s: data bytes [%" PRIu64 ",%" PRIu64
                           ") belong to no tensor (hole before tensor \"%s\")",
                           c->path, pos, s->begin, s->name);
        pos = s->end;
        prev = s;
    }
    if (pos != c->data_len)
        return cm_errf(c->err, c->errsz, "%s: %" PRIu64 " trailing bytes after the last tensor",
                       c->path, c->data_len - pos);
    return 0;
}

static int parse_entries(lm_st_file *f, const parse_ctx *c)
{
    size_t n = json_object_size(f->header);
    span *spans = malloc((n + 1) * sizeof *spans);
    const char *key;
    json_t *value;
    int rc = 0;
    f->tensors = calloc(n + 1, sizeof *f->tensors);
    if (!spans || !f->tensors) {
        free(spans);
        return cm_errf(c->err, c->errsz, "%s: out of memory", f->path);
    }
    json_object_foreach(f->header, key, value) {
        bool is_meta = strcmp(key, META_KEY) == 0;
        rc = is_meta ? parse_metadata(f, value, c->err, c->errsz)
                     : parse_tensor(c, key, value, &f->tensors[f->ntensors], &spans[f->ntensors]);
        if (rc < 0)
            break;
        f->ntensors += !is_meta;
    }
    if (rc == 0)
        rc = check_tiling(c, spans, f->ntensors);
    free(spans);
    return rc;
}

static int parse_image(lm_st_file *f, const uint8_t *buf, size_t len, char *err, size_t errsz)
{
    uint64_t hlen = 0;
    if (read_prefix(f->path, buf, len, &hlen, err, errsz) < 0 ||
        load_header(f, buf + PREFIX_BYTES, (size_t)hlen, err, errsz) < 0)
        return -1;
    parse_ctx c = {
        .path = f->path,
        .data = buf + PREFIX_BYTES + hlen,
        .data_len = len - PREFIX_BYTES - hlen,
        .err = err,
        .errsz = errsz,
    };
    return parse_entries(f, &c);
}

static lm_st_file *file_new(const char *path, char *err, size_t errsz)
{
    lm_st_file *f = calloc(1, sizeof *f);
    if (f && !(f->path = strdup(path))) {
        free(f);
        f = NULL;
    }
    if (!f)
        cm_errf(err, errsz, "%s: out of memory", path);
    return f;
}

static int finish_open(lm_st_file **out, lm_st_file *f, const uint8_t *buf, size_t len,
                       char *err, size_t errsz)
{
    if (parse_image(f, buf, len, err, errsz) < 0) {
        lm_st_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

int lm_st_open_mem(lm_st_file **out, const void *buf, size_t len, const char *name,
                   char *err, size_t errsz)
{
    lm_st_file *f;
    *out = NULL;
    if (!(f = file_new(name, err, errsz)))
        return -1;
    return finish_open(out, f, buf, len, err, errsz);
}

/* Maps the whole file read-only; an empty file stays unmapped (mmap refuses
 * length 0) and is rejected by the parser as too short. */
static int map_file(lm_st_file *f, char *err, size_t errsz)
{
    struct stat st;
    int rc = 0;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cm_errf(err, errsz, "%s: open: %s", f->path, strerror(errno));
    if (fstat(fd, &st) < 0) {
        rc = cm_errf(err, errsz, "%s: fstat: %s", f->path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        rc = cm_errf(err, errsz, "%s: not a regular file", f->path);
    } else if (st.st_size > 0) {
        f->map_len = (size_t)st.st_size;
        f->map = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            rc = cm_errf(err, errsz, "%s: mmap: %s", f->path, strerror(errno));
        }
    }
    close(fd);
    return rc;
}

int lm_st_open(lm_st_file **out, const char *path, char *err, size_t errsz)
{
    lm_st_file *f;
    *out = NULL;
    if (!(f = file_new(path, err, errsz)))
        return -1;
    if (map_file(f, err, errsz) < 0) {
        lm_st_close(f);
        return -1;
    }
    return finish_open(out, f, f->map, f->map_len, err, errsz);
}

void lm_st_close(lm_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_len);
    json_decref(f->header);
    free(f->tensors);
    free(f->meta);
    free(f->path);
    free(f);
}

const char *lm_st_path(const lm_st_file *f)
{
    return f->path;
}

int lm_st_count(const lm_st_file *f)
{
    return f->ntensors;
}

const lm_st_tensor *lm_st_at(const lm_st_file *f, int i)
{
    return i >= 0 && i < f->ntensors ? &f->tensors[i] : NULL;
}

const lm_st_tensor *lm_st_find(const lm_st_file *f, const char *name)
{
    for (int i = 0; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const char *lm_st_meta(const lm_st_file *f, const char *key)
{
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    return NULL;
}

int lm_st_meta_count(const lm_st_file *f)
{
    return f->nmeta;
}

void lm_st_meta_at(const lm_st_file *f, int i, const char **key, const char **value)
{
    bool ok = i >= 0 && i < f->nmeta;
    *key = ok ? f->meta[2 * i] : NULL;
    *value = ok ? f->meta[2 * i + 1] : NULL;
}

int lm_st_expect(const lm_st_file *f, const char *name, lm_dtype dtype, int ndim,
                 const int64_t *shape, const lm_st_tensor **out, char *err, size_t errsz)
{
    char got[SHAPE_STR_MAX], want[SHAPE_STR_MAX];
    const lm_st_tensor *t = lm_st_find(f, name);
    if (out)
        *out = NULL;
    if (ndim < 0 || ndim > LM_ST_MAX_DIMS)
        return cm_errf(err, errsz, "%s: tensor %s: expected ndim %d is not 0..%d",
                       f->path, name, ndim, LM_ST_MAX_DIMS);
    if (!t)
        return cm_errf(err, errsz, "%s: tensor %s is missing", f->path, name);
    if (t->dtype != dtype)
        return cm_errf(err, errsz, "%s: tensor %s has dtype %s, expected %s",
                       f->path, name, lm_dtype_name(t->dtype), lm_dtype_name(dtype));
    if (t->ndim != ndim || (ndim > 0 && memcmp(t->shape, shape, (size_t)ndim * sizeof *shape)))
        return cm_errf(err, errsz, "%s: tensor %s has shape %s, expected %s", f->path, name,
                       shape_str(got, t->ndim, t->shape),
                       shape_str(want, ndim, shape));
    if (out)
        *out = t;
    return 0;
}

/* ---- writer ---------------------------------------------------------------- */

struct lm_st_writer {
    json_t *meta;            /* key -> string, in the order added */
    json_t *tensors;         /* name -> {dtype, shape, data_offsets}, in the order added */
    unsigned char *data;     /* every tensor's bytes, back to back */
    size_t len, cap;
};

lm_st_writer *lm_st_writer_new(void)
{
    lm_st_writer *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->meta = json_object();
    w->tensors = json_object();
    if (!w->meta || !w->tensors) {
        lm_st_writer_free(w);
        return NULL;
    }
    return w;
}

void lm_st_writer_free(lm_st_writer *w)
{
    if (!w)
        return;
    json_decref(w->meta);
    json_decref(w->tensors);
    free(w->data);
    free(w);
}

/* JSON strings must be UTF-8; checking here lets the error say so, instead of
 * jansson's bare failure that reads the same as out of memory. */
static bool utf8_valid(const char *s)
{
    static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000}; /* shortest forms only */
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int extra;
        uint32_t cp;
        if (*p < 0x80)
            extra = 0, cp = *p;
        else if ((*p & 0xE0) == 0xC0)
            extra = 1, cp = *p & 0x1Fu;
        else if ((*p & 0xF0) == 0xE0)
            extra = 2, cp = *p & 0x0Fu;
        else if ((*p & 0xF8) == 0xF0)
            extra = 3, cp = *p & 0x07u;
        else
            return false;
        for (int i = 1; i <= extra; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3Fu);
        }
        if (cp < min_cp[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        p += extra + 1;
    }
    return true;
}

int lm_st_writer_meta(lm_st_writer *w, const char *key, const char *value, char *err, size_t errsz)
{
    if (!key || !value)
        return cm_errf(err, errsz, "safetensors writer: metadata key and value must not be NULL");
    if (!utf8_valid(key) || !utf8_valid(value))
        return cm_errf(err, errsz, "safetensors writer: metadata \"%s\" is not valid UTF-8", key);
    if (json_object_get(w->meta, key))
        return cm_errf(err, errsz, "safetensors writer: metadata key \"%s\" added twice", key);
    if (json_object_set_new(w->meta, key, json_string(value)) < 0)
        return cm_errf(err, errsz, "safetensors writer: out of memory");
    return 0;
}

static int check_new_tensor(const lm_st_writer *w, const char *name, lm_dtype dtype, int ndim,
                            const int64_t *shape, char *err, size_t errsz)
{
    size_t len = name ? strnlen(name, LM_ST_MAX_NAME + 1) : 0;
    if (len == 0 || len > LM_ST_MAX_NAME)
        return cm_errf(err, errsz, "safetensors writer: tensor name \"%.40s\" must be 1..%d bytes",
                       name ? name : "", LM_ST_MAX_NAME);
    if (strcmp(name, META_KEY) == 0)
        return cm_errf(err, errsz, "safetensors writer: \"" META_KEY "\" is reserved, not a tensor name");
    if (!utf8_valid(name))
        return cm_errf(err, errsz, "safetensors writer: tensor name \"%s\" is not valid UTF-8", name);
    if (json_object_get(w->tensors, name))
        return cm_errf(err, errsz, "safetensors writer: tensor \"%s\" added twice", name);
    if (!dtype_valid(dtype))
        return cm_errf(err, errsz, "safetensors writer: tensor \"%s\": dtype %d is not an lm_dtype",
                       name, (int)dtype);
    if (ndim < 0 || ndim > LM_ST_MAX_DIMS || (ndim > 0 && !shape))
        return cm_errf(err, errsz, "safetensors writer: tensor \"%s\": ndim %d is not 0..%d with a shape",
                       name, ndim, LM_ST_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return cm_errf(err, errsz, "safetensors writer: tensor \"%s\": shape[%d] is %" PRId64,
                           name, i, shape[i]);
    return 0;
}

static int append_data(lm_st_writer *w, const void *data, size_t n)
{
    if (n > w->cap - w->len) {
        size_t cap = w->cap ? w->cap : 4096;
        unsigned char *p;
        while (cap - w->len < n)
            if (__builtin_mul_overflow(cap, 2, &cap))
                return -1;
        if (!(p = realloc(w->data, cap)))
            return -1;
        w->data = p;
        w->cap = cap;
    }
    if (n)
        memcpy(w->data + w->len, data, n);
    w->len += n;
    return 0;
}

static json_t *tensor_entry(lm_dtype dtype, int ndim, const int64_t *shape, size_t begin, size_t end)
{
    json_t *dims = json_array();
    for (int i = 0; dims && i < ndim; i++)
        if (json_array_append_new(dims, json_integer(shape[i])) < 0) {
            json_decref(dims);
            dims = NULL;
        }
    return json_pack("{s:s, s:o, s:[I,I]}", "dtype", dtypes[dtype].name, "shape", dims,
                     "data_offsets", (json_int_t)begin, (json_int_t)end);
}

int lm_st_writer_add(lm_st_writer *w, const char *name, lm_dtype dtype, int ndim,
                     const int64_t *shape, const void *data, char *err, size_t errsz)
{
    int64_t numel;
    size_t nbytes, begin = w->len;
    json_t *entry;
    if (check_new_tensor(w, name, dtype, ndim, shape, err, errsz) < 0)
        return -1;
    if (shape_size(dtype, ndim, shape, &numel, &nbytes) < 0)
        return cm_errf(err, errsz, "safetensors writer: tensor \"%s\": shape overflows 63 bits", name);
    if (nbytes > 0 && !data)
        return cm_errf(err, errsz, "safetensors writer: tensor \"%s\": data is NULL", name);
    if (append_data(w, data, nbytes) < 0)
        return cm_errf(err, errsz, "safetensors writer: tensor \"%s\": out of memory", name);
    entry = tensor_entry(dtype, ndim, shape, begin, w->len);
    if (!entry || json_object_set_new(w->tensors, name, entry) < 0) {
        w->len = begin;
        return cm_errf(err, errsz, "safetensors writer: tensor \"%s\": out of memory", name);
    }
    return 0;
}

/* The 8-byte length, then the JSON padded with spaces to a multiple of 8 so
 * the data section starts 8-aligned in the file. */
static unsigned char *build_header(const lm_st_writer *w, size_t *out_len)
{
    json_t *hdr = json_object();
    char *json = NULL;
    unsigned char *buf = NULL;
    if (hdr && (json_object_size(w->meta) == 0 || json_object_set(hdr, META_KEY, w->meta) == 0) &&
        json_object_update(hdr, w->tensors) == 0)
        json = json_dumps(hdr, JSON_COMPACT);
    if (json) {
        size_t n = strlen(json);
        uint64_t padded = (n + 7) & ~(size_t)7;
        if ((buf = malloc(PREFIX_BYTES + padded))) {
            memcpy(buf, &padded, PREFIX_BYTES);
            memcpy(buf + PREFIX_BYTES, json, n);
            memset(buf + PREFIX_BYTES + n, ' ', padded - n);
            *out_len = PREFIX_BYTES + padded;
        }
    }
    free(json);
    json_decref(hdr);
    return buf;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Writes header and data to tmp, fsyncs and renames it over path. Returns 0,
 * or an errno with *failed naming the step. */
static int write_and_rename(const lm_st_writer *w, const char *tmp, const char *path,
                            const unsigned char *hdr, size_t hdr_len, const char **failed)
{
    int e = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        *failed = "create";
        return errno;
    }
    if (write_all(fd, hdr, hdr_len) < 0 || write_all(fd, w->data, w->len) < 0)
        *failed = "write", e = errno;
    else if (fsync(fd) < 0)
        *failed = "fsync", e = errno;
    if (close(fd) < 0 && !e)
        *failed = "close", e = errno;
    if (!e && rename(tmp, path) < 0)
        *failed = "rename", e = errno;
    if (e)
        unlink(tmp);
    return e;
}

int lm_st_writer_save(lm_st_writer *w, const char *path, char *err, size_t errsz)
{
    size_t hdr_len = 0;
    unsigned char *hdr = build_header(w, &hdr_len);
    char *tmp = malloc(strlen(path) + sizeof ".tmp");
    const char *failed = NULL;
    int e, rc = 0;
    if (!hdr || !tmp) {
        free(hdr);
        free(tmp);
        return cm_errf(err, errsz, "%s: out of memory", path);
    }
    strcat(strcpy(tmp, path), ".tmp");
    e = write_and_rename(w, tmp, path, hdr, hdr_len, &failed);
    if (e)
        rc = cm_errf(err, errsz, "%s: %s %s: %s", path, failed, tmp, strerror(e));
    free(hdr);
    free(tmp);
    return rc;
}
