/* llm/model.c — validation and loading of ranker-v1 artifacts. */
#include "llm/model.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* ---- config --------------------------------------------------------------- */

static int meta_int(const lm_st_file *f, const char *key, long lo, long hi, int *out, char *err,
                    size_t errsz)
{
    const char *v = lm_st_meta(f, key);
    if (!v)
        return cm_errf(err, errsz, "%s: __metadata__ lacks \"%s\" (the model config)",
                       lm_st_path(f), key);
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || v[0] == '+' || v[0] == ' ')
        return cm_errf(err, errsz, "%s: __metadata__ \"%s\" is \"%s\", expected an integer",
                       lm_st_path(f), key, v);
    if (x < lo || x > hi)
        return cm_errf(err, errsz, "%s: __metadata__ \"%s\" is %ld, expected %ld..%ld",
                       lm_st_path(f), key, x, lo, hi);
    *out = (int)x;
    return 0;
}

int lm_config_read(const lm_st_file *f, lm_config *cfg, lm_quant *quant, char *err, size_t errsz)
{
    const char *arch = lm_st_meta(f, "arch");
    if (!arch || strcmp(arch, LM_ARCH) != 0)
        return cm_errf(err, errsz, "%s: __metadata__ \"arch\" is %s%s%s, expected \"" LM_ARCH "\"",
                       lm_st_path(f), arch ? "\"" : "", arch ? arch : "missing", arch ? "\"" : "");
    if (meta_int(f, "d_model", 1, 8192, &cfg->d_model, err, errsz) ||
        meta_int(f, "n_heads", 1, 256, &cfg->n_heads, err, errsz) ||
        meta_int(f, "n_layers", 1, LM_MAX_LAYERS, &cfg->n_layers, err, errsz) ||
        meta_int(f, "d_ffn", 1, 65536, &cfg->d_ffn, err, errsz) ||
        meta_int(f, "max_hist", 1, 4096, &cfg->max_hist, err, errsz) ||
        meta_int(f, "n_items", 2, 1 << 28, &cfg->n_items, err, errsz) ||
        meta_int(f, "n_actions", 1, 1024, &cfg->n_actions, err, errsz))
        return -1;
    if (cfg->d_model % cfg->n_heads)
        return cm_errf(err, errsz, "%s: d_model %d is not a multiple of n_heads %d",
                       lm_st_path(f), cfg->d_model, cfg->n_heads);
    const char *q = lm_st_meta(f, "quant");
    if (!q || strcmp(q, "none") == 0)
        *quant = LM_QUANT_NONE;
    else if (strcmp(q, "int8") == 0)
        *quant = LM_QUANT_INT8;
    else
        return cm_errf(err, errsz, "%s: __metadata__ \"quant\" is \"%s\", expected \"none\" or \"int8\"",
                       lm_st_path(f), q);
    return 0;
}

/* ---- the tensors a config requires --------------------------------------- */

int lm_tensor_specs_max(const lm_config *cfg) { return 7 + 12 * cfg->n_layers; }

static void spec(lm_tensor_spec *s, int quantized, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void spec(lm_tensor_spec *s, int quantized, int64_t rows, int64_t cols, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->quantized = quantized;
    s->ndim = cols ? 2 : 1;
    s->shape[0] = rows;
    s->shape[1] = cols;
}

int lm_tensor_specs(const lm_config *c, lm_tensor_spec *out)
{
    int n = 0, d = c->d_model;
    spec(&out[n++], 1, c->n_items, d, "item_emb");
    spec(&out[n++], 0, c->n_actions, d, "action_emb");
    spec(&out[n++], 0, c->max_hist + 1, d, "pos_emb");
    for (int l = 0; l < c->n_layers; l++) {
        spec(&out[n++], 0, d, 0, "layers.%d.ln1.weight", l);
        spec(&out[n++], 0, d, 0, "layers.%d.ln1.bias", l);
        spec(&out[n++], 1, 3 * d, d, "layers.%d.attn.qkv.weight", l);
        spec(&out[n++], 0, 3 * d, 0, "layers.%d.attn.qkv.bias", l);
        spec(&out[n++], 1, d, d, "layers.%d.attn.out.weight", l);
        spec(&out[n++], 0, d, 0, "layers.%d.attn.out.bias", l);
        spec(&out[n++], 0, d, 0, "layers.%d.ln2.weight", l);
        spec(&out[n++], 0, d, 0, "layers.%d.ln2.bias", l);
        spec(&out[n++], 1, c->d_ffn, d, "layers.%d.ffn.up.weight", l);
        spec(&out[n++], 0, c->d_ffn, 0, "layers.%d.ffn.up.bias", l);
        spec(&out[n++], 1, d, c->d_ffn, "layers.%d.ffn.down.weight", l);
        spec(&out[n++], 0, d, 0, "layers.%d.ffn.down.bias", l);
    }
    spec(&out[n++], 0, d, 0, "ln_f.weight");
    spec(&out[n++], 0, d, 0, "ln_f.bias");
    spec(&out[n++], 0, 1, d, "head.weight");
    spec(&out[n++], 0, 1, 0, "head.bias");
    return n;
}

static int check_finite(const lm_st_file *f, const lm_st_tensor *t, int nonneg, char *err,
                        size_t errsz)
{
    const unsigned char *p = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        float v;
        memcpy(&v, p + i * 4, 4);
        if (!isfinite(v) || (nonneg && v < 0.0f))
            return cm_errf(err, errsz, "%s: tensor %s holds %g at element %lld%s", lm_st_path(f),
                           t->name, (double)v, (long long)i,
                           nonneg ? " (scales must be finite and >= 0)" : " (weights must be finite)");
    }
    return 0;
}

static int check_one(const lm_st_file *f, const lm_tensor_spec *s, lm_quant quant, int *matched,
                     char *err, size_t errsz)
{
    const lm_st_tensor *t;
    if (s->quantized && quant == LM_QUANT_INT8) {
        char sname[80];
        int64_t rows = s->shape[0];
        snprintf(sname, sizeof sname, "%s_scale", s->name);
        if (lm_st_expect(f, s->name, LM_DT_I8, s->ndim, s->shape, &t, err, errsz))
            return -1;
        const int8_t *q = t->data;
        for (int64_t i = 0; i < t->numel; i++)
            if (q[i] == -128)
                return cm_errf(err, errsz, "%s: tensor %s holds -128 at element %lld; symmetric "
                               "int8 uses -127..127", lm_st_path(f), s->name, (long long)i);
        if (lm_st_expect(f, sname, LM_DT_F32, 1, &rows, &t, err, errsz) ||
            check_finite(f, t, 1, err, errsz))
            return -1;
        *matched += 2;
        return 0;
    }
    if (lm_st_expect(f, s->name, LM_DT_F32, s->ndim, s->shape, &t, err, errsz) ||
        check_finite(f, t, 0, err, errsz))
        return -1;
    *matched += 1;
    return 0;
}

/* vocab.items: n_items - 1 non-empty lines of at most LM_MAX_ID_LEN bytes. */
static int check_vocab(const lm_st_file *f, const lm_config *cfg, int *matched, char *err, size_t errsz)
{
    const lm_st_tensor *t = lm_st_find(f, LM_VOCAB_TENSOR);
    if (!t)
        return 0;
    if (t->dtype != LM_DT_U8 || t->ndim != 1)
        return cm_errf(err, errsz, "%s: tensor " LM_VOCAB_TENSOR " must be U8 with 1 dimension",
                       lm_st_path(f));
    const char *p = t->data;
    int64_t lines = 0, len = 0;
    for (int64_t i = 0; i < t->numel; i++) {
        if (p[i] == '\n') {
            if (len == 0)
                return cm_errf(err, errsz, "%s: " LM_VOCAB_TENSOR ": the id of row %lld is empty",
                               lm_st_path(f), (long long)lines + 1);
            lines++;
            len = 0;
        } else if (p[i] == '\0' || ++len > LM_MAX_ID_LEN) {
            return cm_errf(err, errsz, "%s: " LM_VOCAB_TENSOR ": the id of row %lld %s", lm_st_path(f),
                           (long long)lines + 1, p[i] ? "is longer than 256 bytes" : "holds a NUL byte");
        }
    }
    if (len != 0 || lines != cfg->n_items - 1)
        return cm_errf(err, errsz, "%s: " LM_VOCAB_TENSOR " holds %lld newline-terminated ids, "
                       "expected %d (rows 1..n_items-1)", lm_st_path(f), (long long)lines + (len != 0),
                       cfg->n_items - 1);
    *matched += 1;
    return 0;
}

int lm_model_check(const lm_st_file *f, const lm_config *cfg, lm_quant quant, char *err,
                   size_t errsz)
{
    lm_tensor_spec *specs = malloc(sizeof *specs * (size_t)lm_tensor_specs_max(cfg));
    if (!specs)
        return cm_errf(err, errsz, "%s: out of memory", lm_st_path(f));
    int n = lm_tensor_specs(cfg, specs), matched = 0, rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        rc = check_one(f, &specs[i], quant, &matched, err, errsz);
    if (rc == 0)
        rc = check_vocab(f, cfg, &matched, err, errsz);
    if (rc == 0 && matched != lm_st_count(f)) {
        /* Something extra: name the first tensor no spec claims. */
        for (int i = 0; i < lm_st_count(f); i++) {
            const char *name = lm_st_at(f, i)->name;
            int known = strcmp(name, LM_VOCAB_TENSOR) == 0;
            for (int j = 0; j < n && !known; j++) {
                size_t len = strlen(specs[j].name);
                known = strcmp(name, specs[j].name) == 0 ||
                        (specs[j].quantized && quant == LM_QUANT_INT8 &&
                         strncmp(name, specs[j].name, len) == 0 && strcmp(name + len, "_scale") == 0);
            }
            if (!known) {
                rc = cm_errf(err, errsz, "%s: unexpected tensor %s for an %s %s model", lm_st_path(f),
                             name, quant == LM_QUANT_INT8 ? "int8" : "fp32", LM_ARCH);
                break;
            }
        }
    }
    free(specs);
    return rc;
}

/* ---- loading ------------------------------------------------------------ */

/* Carves 64-byte aligned pieces out of the arena; with base == NULL it only
 * counts, so the same walk sizes the arena and then fills it. */
typedef struct carve {
    char *base;
    size_t used;
    const lm_st_file *f;
    lm_quant quant;
} carve;

static void *take(carve *c, size_t bytes)
{
    void *p = c->base ? c->base + c->used : NULL;
    c->used += (bytes + 63) & ~(size_t)63;
    return p;
}

static const float *take_vec(carve *c, const char *name)
{
    const lm_st_tensor *t = lm_st_find(c->f, name);
    float *p = take(c, t->nbytes);
    if (p)
        memcpy(p, t->data, t->nbytes);
    return p;
}

static void take_weight(carve *c, const char *name, lm_linear *lin)
{
    const lm_st_tensor *t = lm_st_find(c->f, name);
    int n = (int)t->shape[0], k = (int)t->shape[1];
    if (c->quant == LM_QUANT_INT8) {
        char sname[80];
        snprintf(sname, sizeof sname, "%s_scale", name);
        void *mem = take(c, lm_pq8_bytes(n, k));
        if (mem)
            lm_pq8_pack(&lin->q, mem, t->data, lm_st_find(c->f, sname)->data, n, k);
    } else {
        void *mem = take(c, lm_pf32_bytes(n, k));
        if (mem)
            lm_pf32_pack(&lin->f, mem, t->data, n, k);
    }
}

static void take_linear(carve *c, lm_linear *lin, int l, const char *what)
{
    char name[64];
    snprintf(name, sizeof name, "layers.%d.%s.weight", l, what);
    take_weight(c, name, lin);
    snprintf(name, sizeof name, "layers.%d.%s.bias", l, what);
    lin->bias = take_vec(c, name);
}

/* The ids' bytes with each newline made a NUL, and a pointer per row. */
static void take_vocab(carve *c, lm_model *m)
{
    const lm_st_tensor *t = lm_st_find(c->f, LM_VOCAB_TENSOR);
    if (!t)
        return;
    const char **ids = take(c, sizeof(char *) * (size_t)m->cfg.n_items);
    char *bytes = take(c, t->nbytes + 1);
    if (!ids)
        return;
    memcpy(bytes, t->data, t->nbytes);
    bytes[t->nbytes] = '\0';
    ids[0] = bytes + t->nbytes;
    char *p = bytes;
    for (int row = 1; row < m->cfg.n_items; row++) {
        char *nl = strchr(p, '\n');
        *nl = '\0';
        ids[row] = p;
        p = nl + 1;
    }
    m->item_ids = ids;
}

static void carve_model(carve *c, lm_model *m)
{
    char name[64];
    take_weight(c, "item_emb", &m->item);
    m->item.bias = NULL;
    if (c->quant == LM_QUANT_INT8) {
        const lm_st_tensor *t = lm_st_find(c->f, "item_emb");
        int8_t *rows = take(c, t->nbytes);
        if (rows)
            memcpy(rows, t->data, t->nbytes);
        m->item_rows_q = rows;
    } else {
        m->item_rows = take_vec(c, "item_emb");
    }
    m->action_emb = take_vec(c, "action_emb");
    m->pos_emb = take_vec(c, "pos_emb");
    for (int l = 0; l < m->cfg.n_layers; l++) {
        lm_layer *L = &m->layers[l];
        snprintf(name, sizeof name, "layers.%d.ln1.weight", l);
        L->ln1_w = take_vec(c, name);
        snprintf(name, sizeof name, "layers.%d.ln1.bias", l);
        L->ln1_b = take_vec(c, name);
        snprintf(name, sizeof name, "layers.%d.ln2.weight", l);
        L->ln2_w = take_vec(c, name);
        snprintf(name, sizeof name, "layers.%d.ln2.bias", l);
        L->ln2_b = take_vec(c, name);
        take_linear(c, &L->qkv, l, "attn.qkv");
        take_linear(c, &L->out, l, "attn.out");
        take_linear(c, &L->up, l, "ffn.up");
        take_linear(c, &L->down, l, "ffn.down");
    }
    take_vocab(c, m);
    m->lnf_w = take_vec(c, "ln_f.weight");
    m->lnf_b = take_vec(c, "ln_f.bias");
    m->head_w = take_vec(c, "head.weight");
    memcpy(&m->head_b, lm_st_find(c->f, "head.bias")->data, sizeof m->head_b);
}

/* Validates and carves an opened file; closes it whatever happens. */
static int load_st(lm_model **out, lm_st_file *f, char *err, size_t errsz)
{
    const char *path = lm_st_path(f);
    lm_model *m = calloc(1, sizeof *m);
    if (!m) {
        cm_errf(err, errsz, "%s: out of memory", path);
        lm_st_close(f);
        return -1;
    }
    if (lm_config_read(f, &m->cfg, &m->quant, err, errsz) ||
        lm_model_check(f, &m->cfg, m->quant, err, errsz)) {
        lm_st_close(f);
        free(m);
        return -1;
    }
    carve c = {.base = NULL, .used = 0, .f = f, .quant = m->quant};
    carve_model(&c, m);
    m->arena_bytes = c.used;
    m->arena = aligned_alloc(64, c.used);
    if (!m->arena) {
        cm_errf(err, errsz, "%s: cannot allocate %zu bytes for the weights", path, c.used);
        lm_st_close(f);
        free(m);
        return -1;
    }
    c.base = m->arena;
    c.used = 0;
    carve_model(&c, m);
    lm_st_close(f);
    *out = m;
    return 0;
}

int lm_model_load(lm_model **out, const char *path, char *err, size_t errsz)
{
    *out = NULL;
    lm_st_file *f;
    if (lm_st_open(&f, path, err, errsz))
        return -1;
    return load_st(out, f, err, errsz);
}

int lm_model_load_mem(lm_model **out, const void *buf, size_t len, const char *name, char *err, size_t errsz)
{
    *out = NULL;
    lm_st_file *f;
    if (lm_st_open_mem(&f, buf, len, name, err, errsz))
        return -1;
    return load_st(out, f, err, errsz);
}

void lm_model_free(lm_model *m)
{
    if (!m)
        return;
    free(m->arena);
    free(m);
}

void lm_model_item_row(const lm_model *m, int item, float *out)
{
    const int d = m->cfg.d_model;
    if (m->quant == LM_QUANT_INT8) {
        const int8_t *row = m->item_rows_q + (size_t)item * d;
        const float s = m->item.q.scale[item];
        for (int i = 0; i < d; i++)
            out[i] = (float)row[i] * s;
    } else {
        memcpy(out, m->item_rows + (size_t)item * d, sizeof(float) * d);
    }
}

void lm_model_item_rows(const lm_model *m, const int32_t *items, int n, float *out)
{
    const size_t row = (size_t)m->cfg.d_model * (m->quant == LM_QUANT_INT8 ? 1 : sizeof(float));
    const char *base = m->quant == LM_QUANT_INT8 ? (const char *)m->item_rows_q : (const char *)m->item_rows;
    for (int i = 0; i < n; i++)
        for (size_t off = 0; off < row; off += 64)
            __builtin_prefetch(base + (size_t)items[i] * row + off);
    for (int i = 0; i < n; i++)
        lm_model_item_row(m, items[i], out + (size_t)i * m->cfg.d_model);
}

int lm_vocab_write(lm_st_writer *w, const char *const *ids, int n_items, char *err, size_t errsz)
{
    size_t bytes = 0;
    for (int i = 1; i < n_items; i++) {
        size_t len = strlen(ids[i]);
        if (len == 0 || len > LM_MAX_ID_LEN || strchr(ids[i], '\n'))
            return cm_errf(err, errsz, "item id of row %d (\"%.40s\") must be 1..%d bytes without "
                           "newlines", i, ids[i], LM_MAX_ID_LEN);
        bytes += len + 1;
    }
    char *buf = malloc(bytes ? bytes : 1), *p = buf;
    if (!buf)
        return cm_errf(err, errsz, "out of memory for the vocabulary");
    for (int i = 1; i < n_items; i++) {
        size_t len = strlen(ids[i]);
        memcpy(p, ids[i], len);
        p[len] = '\n';
        p += len + 1;
    }
    int64_t shape = (int64_t)bytes;
    int rc = lm_st_writer_add(w, LM_VOCAB_TENSOR, LM_DT_U8, 1, &shape, buf, err, errsz);
    free(buf);
    return rc;
}

long long lm_model_macs_per_candidate(const lm_config *c, int n_hist)
{
    long long d = c->d_model, f = c->d_ffn;
    long long per_layer = 3 * d * d + d * d + 2 * d * f + 2 * (long long)(n_hist + 1) * d;
    return per_layer * c->n_layers + d;
}
