/* service/rankreq.c — see rankreq.h. */
#include "service/rankreq.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/sha256.h"

/* ---- the model and its id maps ---------------------------------------------------------- */

static int map_actions(svc_model *sm, const char *json, char *err, size_t errsz)
{
    sm->actions = cm_strmap_new();
    if (!sm->actions)
        return cm_errf(err, errsz, "out of memory");
    if (!json)
        return 0; /* a model without names: every type is action 0 */
    json_t *a = json_loads(json, 0, NULL);
    if (!json_is_array(a)) {
        json_decref(a);
        return cm_errf(err, errsz, "%s: metadata \"actions\" is not a JSON list", sm->path);
    }
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v)
    {
        const char *name = json_string_value(v);
        int id;
        if (!name || cm_strmap_intern(sm->actions, name, strlen(name), &id) != 1) {
            json_decref(a);
            return cm_errf(err, errsz, "%s: metadata \"actions\": entry %zu is not a new string", sm->path, i);
        }
    }
    json_decref(a);
    return 0;
}

static int map_items(svc_model *sm, char *err, size_t errsz)
{
    const lm_model *m = sm->m;
    if (!m->item_ids)
        return 0;
    sm->items = cm_strmap_new();
    if (!sm->items)
        return cm_errf(err, errsz, "out of memory");
    for (int r = 1; r < m->cfg.n_items; r++) {
        int id;
        if (cm_strmap_intern(sm->items, m->item_ids[r], strlen(m->item_ids[r]), &id) != 1)
            return cm_errf(err, errsz, "%s: item id \"%s\" appears twice in the vocabulary", sm->path,
                           m->item_ids[r]);
    }
    return 0;
}

int svc_model_load(svc_model *out, const char *path, char *err, size_t errsz)
{
    memset(out, 0, sizeof *out);
    snprintf(out->path, sizeof out->path, "%s", path);
    lm_st_file *f;
    if (lm_st_open(&f, path, err, errsz))
        return -1;
    const char *name = lm_st_meta(f, "name"), *acts = lm_st_meta(f, "actions");
    char base[96];
    const char *slash = strrchr(path, '/');
    snprintf(base, sizeof base, "%s", name ? name : slash ? slash + 1 : path);
    char *dot = name ? NULL : strstr(base, ".safetensors");
    if (dot)
        *dot = '\0';
    /* The tag goes into every output (JSON) and into metric labels: a name
     * from the artifact's metadata must not be able to break either. */
    for (char *c = base; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == '"' || *c == '\\' || *c == 0x7f)
            *c = '_';
    int rc = map_actions(out, acts, err, errsz);
    lm_st_close(f);
    char hex[65];
    if (rc == 0 && cm_sha256_file(path, hex))
        rc = cm_errf(err, errsz, "%s: cannot read it to hash it", path);
    if (rc == 0) {
        snprintf(out->tag, sizeof out->tag, "%s@%.12s", base, hex);
        rc = lm_model_load(&out->m, path, err, errsz) || map_items(out, err, errsz) ? -1 : 0;
    }
    if (rc)
        svc_model_free(out);
    return rc;
}

void svc_model_free(svc_model *m)
{
    lm_model_free(m->m);
    cm_strmap_free(m->items);
    cm_strmap_free(m->actions);
    memset(m, 0, sizeof *m);
}

int32_t svc_model_item(const svc_model *m, const char *id)
{
    if (m->items) {
        int r = cm_strmap_find(m->items, id, strlen(id));
        return r < 0 ? 0 : r + 1;
    }
    /* no vocabulary (a model trained on integer rows): the id is the row */
    char *end;
    long r = strtol(id, &end, 10);
    return *id && !*end && r > 0 && r < m->m->cfg.n_items ? (int32_t)r : 0;
}

int32_t svc_model_action(const svc_model *m, const char *type)
{
    int a = m->actions ? cm_strmap_find(m->actions, type, strlen(type)) : -1;
    return a >= 0 && a < m->m->cfg.n_actions ? a : 0;
}

/* ---- features -------------------------------------------------------------------------------- */

int svc_features_open(const svc_config *c, int max_hist, int ops, fs_store **fs, fs_batch **fb, char *err,
                      size_t errsz)
{
    fs_opts fo = {.host = c->redis.host, .port = c->redis.port, .password = c->redis.password, .db = c->redis.db,
                  .prefix = c->redis.prefix, .ttl_history_s = c->redis.ttl_history_s,
                  .ttl_seen_s = c->redis.ttl_seen_s, .ttl_item_s = c->redis.ttl_item_s,
                  .ttl_user_s = c->redis.ttl_user_s, .timeout_ms = c->redis.timeout_ms, .max_hist = max_hist};
    *fb = NULL;
    if (fs_open(fs, &fo, err, errsz))
        return -1;
    *fb = fs_batch_new(*fs, ops);
    return *fb ? 0 : cm_errf(err, errsz, "out of memory for the feature batches");
}

typedef struct un_ctx {
    svc_unavailable *u;
    const svc_model *m;
    int oom;
} un_ctx;

static void add_unavailable(void *ctx, const char *item)
{
    un_ctx *c = ctx;
    svc_unavailable *u = c->u;
    int id;
    if (cm_strmap_intern(u->ids, item, strlen(item), &id) != 1)
        return; /* SSCAN may report an item twice */
    int32_t row = svc_model_item(c->m, item);
    if (row <= 0)
        return;
    if (u->n_rows == u->cap_rows) {
        int cap = u->cap_rows ? 2 * u->cap_rows : 256;
        int32_t *r = realloc(u->rows, sizeof(int32_t) * (size_t)cap);
        if (!r) {
            c->oom = 1;
            return;
        }
        u->rows = r;
        u->cap_rows = cap;
    }
    u->rows[u->n_rows++] = row;
}

int svc_unavailable_load(svc_unavailable *u, fs_store *fs, const svc_model *m, char *err, size_t errsz)
{
    memset(u, 0, sizeof *u);
    un_ctx c = {.u = u, .m = m};
    if (!(u->ids = cm_strmap_new()))
        return cm_errf(err, errsz, "out of memory");
    int rc = fs_unavailable(fs, add_unavailable, &c, err, errsz);
    if (rc == 0 && c.oom)
        rc = cm_errf(err, errsz, "out of memory for the unavailable items");
    if (rc)
        svc_unavailable_free(u);
    return rc;
}

void svc_unavailable_free(svc_unavailable *u)
{
    cm_strmap_free(u->ids);
    free(u->rows);
    memset(u, 0, sizeof *u);
}

/* ---- slots ----------------------------------------------------------------------------------- */

struct svc_slots {
    svc_slot *all;
    int n, n_free;
    svc_slot *free;
    svc_slot_limits lim;
    pthread_mutex_t mu;
};

static void slot_release_memory(svc_slot *s)
{
    free(s->hist_items);
    free(s->hist_actions);
    free(s->exclude);
    free(s->cands);
    free(s->out_items);
    free(s->out_scores);
    free(s->cand_ids);
    free(s->id_buf);
}

svc_slots *svc_slots_new(int n, const svc_slot_limits *lim)
{
    svc_slots *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->all = calloc((size_t)n, sizeof *p->all);
    p->n = n;
    p->lim = *lim;
    pthread_mutex_init(&p->mu, NULL);
    int ok = p->all != NULL;
    for (int i = 0; ok && i < n; i++) {
        svc_slot *s = &p->all[i];
        s->lim = &p->lim;
        s->hist_items = malloc(sizeof(int32_t) * (size_t)(lim->max_hist + 1));
        s->hist_actions = malloc(sizeof(int32_t) * (size_t)(lim->max_hist + 1));
        s->exclude = malloc(sizeof(int32_t) * (size_t)(lim->max_exclude + 1));
        s->cands = malloc(sizeof(int32_t) * (size_t)(lim->max_cands + 1));
        s->out_items = malloc(sizeof(int32_t) * (size_t)lim->k);
        s->out_scores = malloc(sizeof(float) * (size_t)lim->k);
        s->cand_ids = malloc(sizeof(char *) * (size_t)(lim->max_cands + 1));
        s->id_buf = malloc(lim->id_bytes);
        pthread_mutex_init(&s->mu, NULL);
        pthread_cond_init(&s->cv, NULL);
        ok = s->hist_items && s->hist_actions && s->exclude && s->cands && s->out_items && s->out_scores &&
             s->cand_ids && s->id_buf;
        s->next_free = p->free;
        p->free = s;
        p->n_free++;
    }
    if (!ok) {
        svc_slots_free(p);
        return NULL;
    }
    return p;
}

void svc_slots_free(svc_slots *p)
{
    if (!p)
        return;
    for (int i = 0; p->all && i < p->n; i++) {
        slot_release_memory(&p->all[i]);
        pthread_mutex_destroy(&p->all[i].mu);
        pthread_cond_destroy(&p->all[i].cv);
    }
    pthread_mutex_destroy(&p->mu);
    free(p->all);
    free(p);
}

svc_slot *svc_slot_get(svc_slots *p)
{
    pthread_mutex_lock(&p->mu);
    svc_slot *s = p->free;
    if (s) {
        p->free = s->next_free;
        p->n_free--;
    }
    pthread_mutex_unlock(&p->mu);
    if (s) {
        s->id_used = 0;
        s->ver = NULL;
        s->finished = 0;
        s->status = 0;
        s->err[0] = '\0';
    }
    return s;
}

void svc_slot_put(svc_slots *p, svc_slot *s)
{
    pthread_mutex_lock(&p->mu);
    s->next_free = p->free;
    p->free = s;
    p->n_free++;
    pthread_mutex_unlock(&p->mu);
}

int svc_slots_free_count(svc_slots *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->n_free;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* ---- filling a request ---------------------------------------------------------------------------- */

static int copy_id(svc_slot *s, size_t cap, const char *id, const char **out)
{
    size_t n = strlen(id) + 1;
    if (s->id_used + n > cap)
        return -1;
    memcpy(s->id_buf + s->id_used, id, n);
    *out = s->id_buf + s->id_used;
    s->id_used += n;
    return 0;
}

static int is_unavailable(const svc_rank_rules *r, const char *id)
{
    return r->exclude_unavailable && r->unavailable && cm_strmap_find(r->unavailable, id, strlen(id)) >= 0;
}

int svc_slot_begin(svc_slot *s, const svc_event *ev, char *err, size_t errsz)
{
    const svc_slot_limits *lim = s->lim;
    snprintf(s->event_id, sizeof s->event_id, "%s", ev->id);
    snprintf(s->user, sizeof s->user, "%s", ev->user ? ev->user : "");
    s->id_used = 0;
    s->n_cand_ids = -1;
    if (ev->kind != SVC_EV_RANKING || !ev->items) /* no items: retrieve (rescore's input) */
        return 0;
    if (ev->n_items > lim->max_cands)
        return cm_errf(err, errsz, "ranking of %d items exceeds this service's %d", ev->n_items, lim->max_cands);
    for (int i = 0; i < ev->n_items; i++)
        if (copy_id(s, lim->id_bytes, ev->items[i], &s->cand_ids[i]))
            return cm_errf(err, errsz, "the ids of a ranking of %d items exceed %zu bytes", ev->n_items,
                           lim->id_bytes);
    s->n_cand_ids = ev->n_items;
    return 0;
}

int svc_rank_body(svc_parser *p, svc_slots *pool, const char *body, size_t len, svc_event *ev, svc_slot **slot,
                  char *reason, size_t rsz)
{
    *slot = NULL;
    if (svc_event_parse(p, body, len, ev, reason, rsz))
        return 400;
    if (ev->kind != SVC_EV_RANKING) {
        const char *kind = svc_event_kind_name(ev->kind);
        cm_errf(reason, rsz, "expected a ranking event, got a%s %s event", strchr("aeiou", kind[0]) ? "n" : "", kind);
        return 400;
    }
    svc_slot *s = svc_slot_get(pool);
    if (!s) {
        cm_errf(reason, rsz, "too many rankings in flight");
        return 503;
    }
    if (svc_slot_begin(s, ev, reason, rsz)) {
        svc_slot_put(pool, s);
        return 400;
    }
    *slot = s;
    return 0;
}

int svc_slot_fill(svc_slot *s, const svc_model *m, const fs_user_state *st, const svc_rank_rules *rules,
                  char *err, size_t errsz)
{
    (void)err;
    (void)errsz;
    const svc_slot_limits *lim = s->lim;
    int keep = m->m->cfg.max_hist < lim->max_hist ? m->m->cfg.max_hist : lim->max_hist;
    int h0 = st->n_hist > keep ? st->n_hist - keep : 0, nh = 0;
    for (int i = h0; i < st->n_hist; i++, nh++) {
        s->hist_items[nh] = svc_model_item(m, st->hist_items[i]);
        s->hist_actions[nh] = svc_model_action(m, st->hist_actions[i]);
    }
    rk_request *r = &s->job.req;
    *r = (rk_request){.hist_items = s->hist_items, .hist_actions = s->hist_actions, .n_hist = nh,
                      .exclude = s->exclude, .k = rules->k, .out_items = s->out_items, .out_scores = s->out_scores};
    if (s->n_cand_ids >= 0) {
        int n = 0;
        for (int i = 0; i < s->n_cand_ids; i++) {
            if (is_unavailable(rules, s->cand_ids[i]))
                continue;
            s->cand_ids[n] = s->cand_ids[i];
            s->cands[n++] = svc_model_item(m, s->cand_ids[i]);
        }
        s->n_cand_ids = n;
        r->cands = s->cands;
        r->n_cands = n;
        r->k = n < rules->k ? n : rules->k;
        return 0;
    }
    int ne = 0;
    for (int i = 0; rules->exclude_seen && i < st->n_seen && ne < lim->max_exclude; i++) {
        int32_t row = svc_model_item(m, st->seen[i]);
        if (row > 0)
            s->exclude[ne++] = row;
    }
    for (int i = 0; rules->exclude_unavailable && i < rules->n_unavailable_rows && ne < lim->max_exclude; i++)
        s->exclude[ne++] = rules->unavailable_rows[i];
    r->n_exclude = ne;
    return 0;
}

/* ---- the output message -------------------------------------------------------------------------- */

typedef struct out {
    char *p;
    size_t len, cap;
    int over;
} out;

static void emit(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->len < o->cap ? o->cap - o->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0 || o->len + (size_t)n >= o->cap)
        o->over = 1;
    else
        o->len += (size_t)n;
}

/* A JSON string: ids hold no control characters (svc_event_parse), so
 * only quotes and backslashes need escaping. */
static void emit_str(out *o, const char *s)
{
    emit(o, "\"");
    for (; *s && !o->over; s++)
        emit(o, *s == '"' || *s == '\\' ? "\\%c" : "%c", *s);
    emit(o, "\"");
}

int svc_slot_json(const svc_slot *s, const svc_model *m, int64_t took_us, char *buf, size_t cap)
{
    out o = {buf, 0, cap, 0};
    const rk_request *r = &s->job.req;
    emit(&o, "{\"id\":");
    emit_str(&o, s->event_id);
    emit(&o, ",\"user\":");
    emit_str(&o, s->user);
    emit(&o, ",\"model\":");
    emit_str(&o, m->tag);
    emit(&o, ",\"took_us\":%lld,\"items\":[", (long long)took_us);
    for (int i = 0; i < r->n_out; i++) {
        char rowid[24];
        const char *id;
        if (r->cands) {
            id = s->cand_ids[r->out_items[i]];
        } else if (m->m->item_ids) {
            id = m->m->item_ids[r->out_items[i]];
        } else {
            snprintf(rowid, sizeof rowid, "%d", (int)r->out_items[i]);
            id = rowid;
        }
        emit(&o, "%s{\"item\":", i ? "," : "");
        emit_str(&o, id);
        emit(&o, ",\"score\":%.6g}", (double)r->out_scores[i]);
    }
    emit(&o, "]}");
    return o.over ? -1 : (int)o.len;
}
