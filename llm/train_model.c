/* llm/train_model.c — forward and backward of ranker-v1 over a training
 * batch. History tokens and candidate tokens are two "streams" through the
 * same layers: they share every weight, and differ only in attention (a
 * candidate sees its sequence's history prefix and itself). */
#include "llm/train_model.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/retrieval.h"
#include "llm/train_ops.h"

#define CE_ROWS 32 /* catalog logits computed this many rows at a time */
/* The catalog cross-entropy runs as this many tasks, each with its own
 * item_emb gradient, summed in task order: fixed, so that the result does
 * not depend on the thread count. */
#define CE_TASKS 8
#define LM_TOPK_GROUP 1024 /* largest group of top-k candidates */

typedef struct layer_w {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b;
    float *ln2_w, *ln2_b, *up_w, *up_b, *down_w, *down_b;
} layer_w;

/* Pointers into a parameter-shaped array (parameters or gradients). */
typedef struct view {
    float *item_emb, *action_emb, *pos_emb;
    layer_w l[LM_MAX_LAYERS];
    float *lnf_w, *lnf_b, *head_w, *head_b;
} view;

typedef struct layer_acts {
    float *h1, *mu1, *rs1, *qkv, *P, *att, *x_mid, *h2, *mu2, *rs2, *u, *g;
} layer_acts;

/* Saved activations and gradient buffers of one stream. */
typedef struct stream {
    int cap;                        /* rows */
    float *x[LM_MAX_LAYERS + 1];    /* x[l]: input of layer l; x[n_layers]: output */
    layer_acts l[LM_MAX_LAYERS];
    float *hf, *muf, *rsf;          /* LN_f */
    float *dx, *dxm, *datt, *dqkv;  /* backward */
} stream;

struct tr_model {
    lm_config c;
    tr_limits lim;
    lm_pool *pool;
    lm_tensor_spec *specs;
    int n_specs;
    size_t *off;
    size_t n_params;
    float *params, *grads;
    view P, G;
    stream hist, cand;
    size_t *p_off;          /* [max_seqs + 1] offsets of sequences' attention probabilities */
    float *tmp, *dh, *du;   /* shared backward scratch */
    int ce_tasks;
    float *ce_z, *ce_dz, *ce_dE; /* per task: [CE_ROWS][n_items] twice, [n_items][d] */
    double *ce_loss;
    int n_targets;          /* tokens of the batch with a next item */
    float *dU;
    float *scores, *prior, *fused, *dscores, *soft, *teacher_buf;
    const float *teach;     /* the step's teacher scores, or NULL */
    int *tok_seq, *tok_grp; /* [max_tokens] */
    uint8_t *grp_keep;      /* [max_groups] */
    /* the step in progress */
    tr_batch *b;
    const tr_step_opts *o;
    void *mem;
};

/* ---- layout ------------------------------------------------------------------------ */

static void make_view(const tr_model *m, float *base, view *v)
{
    int i = 0;
    float **flat[3] = {&v->item_emb, &v->action_emb, &v->pos_emb};
    for (int k = 0; k < 3; k++)
        *flat[k] = base + m->off[i++];
    for (int l = 0; l < m->c.n_layers; l++) {
        layer_w *w = &v->l[l];
        float **f[12] = {&w->ln1_w, &w->ln1_b, &w->qkv_w, &w->qkv_b, &w->out_w, &w->out_b,
                         &w->ln2_w, &w->ln2_b, &w->up_w, &w->up_b, &w->down_w, &w->down_b};
        for (int k = 0; k < 12; k++)
            *f[k] = base + m->off[i++];
    }
    v->lnf_w = base + m->off[i++];
    v->lnf_b = base + m->off[i++];
    v->head_w = base + m->off[i++];
    v->head_b = base + m->off[i++];
}

static size_t numel(const lm_tensor_spec *s) { return (size_t)s->shape[0] * (s->ndim == 2 ? (size_t)s->shape[1] : 1); }

/* One pass sizes everything (base NULL), a second carves it. */
typedef struct carver {
    char *base;
    size_t used;
} carver;

static void *carve(carver *c, size_t bytes)
{
    void *p = c->base ? c->base + c->used : NULL;
    c->used += (bytes + 63) & ~(size_t)63;
    return p;
}

#define CARVE(c, ptr, type, n) ((ptr) = carve((c), sizeof(type) * (size_t)(n)))

static void carve_stream(carver *cv, stream *s, const lm_config *c, int rows, size_t p_floats)
{
    size_t R = (size_t)rows, d = (size_t)c->d_model, f = (size_t)c->d_ffn;
    s->cap = rows;
    for (int l = 0; l <= c->n_layers; l++)
        CARVE(cv, s->x[l], float, R * d);
    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *a = &s->l[l];
        CARVE(cv, a->h1, float, R * d);
        CARVE(cv, a->mu1, float, R);
        CARVE(cv, a->rs1, float, R);
        CARVE(cv, a->qkv, float, R * 3 * d);
        CARVE(cv, a->P, float, p_floats);
        CARVE(cv, a->att, float, R * d);
        CARVE(cv, a->x_mid, float, R * d);
        CARVE(cv, a->h2, float, R * d);
        CARVE(cv, a->mu2, float, R);
        CARVE(cv, a->rs2, float, R);
        CARVE(cv, a->u, float, R * f);
        CARVE(cv, a->g, float, R * f);
    }
    CARVE(cv, s->hf, float, R * d);
    CARVE(cv, s->muf, float, R);
    CARVE(cv, s->rsf, float, R);
    CARVE(cv, s->dx, float, R * d);
    CARVE(cv, s->dxm, float, R * d);
    CARVE(cv, s->datt, float, R * d);
    CARVE(cv, s->dqkv, float, R * 3 * d);
}

static void carve_all(tr_model *m, carver *cv)
{
    const lm_config *c = &m->c;
    size_t d = (size_t)c->d_model, f = (size_t)c->d_ffn, H = (size_t)c->n_heads;
    int C = m->lim.max_groups * m->lim.group_size, R = m->lim.max_tokens > C ? m->lim.max_tokens : C;
    CARVE(cv, m->params, float, m->n_params);
    CARVE(cv, m->grads, float, m->n_params);
    carve_stream(cv, &m->hist, c, m->lim.max_tokens, (size_t)m->lim.max_tokens * H * c->max_hist);
    carve_stream(cv, &m->cand, c, C > 0 ? C : 1, (size_t)(C > 0 ? C : 1) * H * (c->max_hist + 1));
    CARVE(cv, m->p_off, size_t, m->lim.max_seqs + 1);
    CARVE(cv, m->tmp, float, (size_t)R * d);
    CARVE(cv, m->dh, float, (size_t)R * d);
    CARVE(cv, m->du, float, (size_t)R * f);
    CARVE(cv, m->ce_z, float, (size_t)m->ce_tasks * CE_ROWS * c->n_items);
    CARVE(cv, m->ce_dz, float, (size_t)m->ce_tasks * CE_ROWS * c->n_items);
    CARVE(cv, m->ce_dE, float, (size_t)m->ce_tasks * c->n_items * d);
    CARVE(cv, m->ce_loss, double, m->ce_tasks);
    CARVE(cv, m->dU, float, (size_t)m->lim.max_tokens * d);
    CARVE(cv, m->scores, float, C + 1);
    CARVE(cv, m->prior, float, C + 1);
    CARVE(cv, m->fused, float, C + 1);
    CARVE(cv, m->dscores, float, C + 1);
    CARVE(cv, m->soft, float, C + 1);
    CARVE(cv, m->teacher_buf, float, C + 1);
    CARVE(cv, m->tok_seq, int, m->lim.max_tokens);
    CARVE(cv, m->tok_grp, int, m->lim.max_tokens);
    CARVE(cv, m->grp_keep, uint8_t, m->lim.max_groups + 1);
}

int tr_model_new(tr_model **out, const lm_config *cfg, const tr_limits *lim, lm_pool *pool,
                 char *err, size_t errsz)
{
    *out = NULL;
    if (lim->max_seqs < 1 || lim->max_tokens < 1 || lim->max_groups < 0 ||
        (lim->max_groups > 0 && lim->group_size < 2))
        return cm_errf(err, errsz, "training limits out of range: %d sequences, %d tokens, "
                       "%d groups of %d", lim->max_seqs, lim->max_tokens, lim->max_groups,
                       lim->group_size);
    tr_ops_init();
    tr_model *m = calloc(1, sizeof *m);
    if (!m)
        return cm_errf(err, errsz, "out of memory");
    m->c = *cfg;
    m->lim = *lim;
    m->pool = pool;
    m->ce_tasks = CE_TASKS;
    m->specs = malloc(sizeof *m->specs * (size_t)lm_tensor_specs_max(cfg));
    m->off = malloc(sizeof *m->off * (size_t)lm_tensor_specs_max(cfg));
    if (!m->specs || !m->off) {
        tr_model_free(m);
        return cm_errf(err, errsz, "out of memory");
    }
    m->n_specs = lm_tensor_specs(cfg, m->specs);
    for (int i = 0; i < m->n_specs; i++) {
        m->off[i] = m->n_params;
        m->n_params += numel(&m->specs[i]);
    }
    carver cv = {NULL, 0};
    carve_all(m, &cv);
    m->mem = aligned_alloc(64, cv.used);
    if (!m->mem) {
        size_t need = cv.used;
        tr_model_free(m);
        return cm_errf(err, errsz, "cannot allocate %zu MB for training", need >> 20);
    }
    cv.base = m->mem;
    cv.used = 0;
    carve_all(m, &cv);
    make_view(m, m->params, &m->P);
    make_view(m, m->grads, &m->G);
    *out = m;
    return 0;
}

void tr_model_free(tr_model *m)
{
    if (!m)
        return;
    free(m->mem);
    free(m->specs);
    free(m->off);
    free(m);
}

const lm_config *tr_model_config(const tr_model *m) { return &m->c; }
size_t tr_model_size(const tr_model *m) { return m->n_params; }
float *tr_model_params(tr_model *m) { return m->params; }
float *tr_model_grads(tr_model *m) { return m->grads; }
const float *tr_model_user_vec(const tr_model *m, int token) { return m->hist.hf + (size_t)token * m->c.d_model; }

static int is_linear_weight(const lm_tensor_spec *s)
{
    return s->ndim == 2 && strstr(s->name, "layers.") == s->name;
}

void tr_model_decay_mask(const tr_model *m, uint8_t *mask)
{
    for (int i = 0; i < m->n_specs; i++)
        memset(mask + m->off[i], is_linear_weight(&m->specs[i]), numel(&m->specs[i]));
}

/* ---- initialisation, load, save ------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unif(uint64_t *s) { return (double)(splitmix(s) >> 11) * 0x1p-53; }

void tr_model_init(tr_model *m, uint64_t seed, float emb_std)
{
    uint64_t s = seed ^ 0x5eedull;
    for (int i = 0; i < m->n_specs; i++) {
        const lm_tensor_spec *sp = &m->specs[i];
        float *p = m->params + m->off[i];
        size_t n = numel(sp);
        const char *name = sp->name;
        int ln = strstr(name, "ln") != NULL, emb = strstr(name, "_emb") != NULL;
        int fan_in = (int)(sp->ndim == 2 ? sp->shape[1] : 0);
        if (emb) {
            for (size_t j = 0; j < n; j += 2) { /* Box-Muller, two at a time */
                double u1 = unif(&s) + 1e-300, u2 = unif(&s), r = sqrt(-2.0 * log(u1));
                p[j] = (float)(emb_std * r * cos(6.283185307179586 * u2));
                if (j + 1 < n)
                    p[j + 1] = (float)(emb_std * r * sin(6.283185307179586 * u2));
            }
        } else if (ln) {
            float v = strstr(name, ".weight") ? 1.0f : 0.0f;
            for (size_t j = 0; j < n; j++)
                p[j] = v;
        } else {
            /* a bias takes its weight's fan-in: the spec before it */
            if (!fan_in && i > 0)
                fan_in = (int)m->specs[i - 1].shape[1];
            double bound = 1.0 / sqrt(fan_in > 0 ? fan_in : 1);
            for (size_t j = 0; j < n; j++)
                p[j] = (float)((2.0 * unif(&s) - 1.0) * bound);
        }
    }
    memset(m->P.item_emb, 0, sizeof(float) * m->c.d_model); /* row 0: padding / unknown */
}

int tr_model_read(tr_model *m, const lm_st_file *f, char *err, size_t errsz)
{
    lm_config c;
    lm_quant q;
    if (lm_config_read(f, &c, &q, err, errsz))
        return -1;
    if (q != LM_QUANT_NONE)
        return cm_errf(err, errsz, "%s: an int8 artifact cannot be trained; use the fp32 one", lm_st_path(f));
    if (memcmp(&c, &m->c, sizeof c) != 0)
        return cm_errf(err, errsz, "%s: config d_model %d, n_heads %d, n_layers %d, d_ffn %d, "
                       "max_hist %d, n_items %d, n_actions %d differs from the training run's "
                       "(%d, %d, %d, %d, %d, %d, %d)", lm_st_path(f), c.d_model, c.n_heads, c.n_layers,
                       c.d_ffn, c.max_hist, c.n_items, c.n_actions, m->c.d_model, m->c.n_heads,
                       m->c.n_layers, m->c.d_ffn, m->c.max_hist, m->c.n_items, m->c.n_actions);
    for (int i = 0; i < m->n_specs; i++) {
        const lm_st_tensor *t;
        if (lm_st_expect(f, m->specs[i].name, LM_DT_F32, m->specs[i].ndim, m->specs[i].shape, &t, err, errsz))
            return -1;
        memcpy(m->params + m->off[i], t->data, t->nbytes);
    }
    return 0;
}

int tr_model_load(tr_model *m, const char *path, char *err, size_t errsz)
{
    lm_st_file *f;
    if (lm_st_open(&f, path, err, errsz))
        return -1;
    lm_config c;
    lm_quant q;
    int rc = lm_config_read(f, &c, &q, err, errsz) || lm_model_check(f, &c, q, err, errsz) ||
             tr_model_read(m, f, err, errsz) ? -1 : 0;
    lm_st_close(f);
    return rc;
}

int tr_model_write(const tr_model *m, lm_st_writer *w, int with_meta, char *err, size_t errsz)
{
    if (with_meta) {
        const lm_config *c = &m->c;
        const char *keys[] = {"d_model", "n_heads", "n_layers", "d_ffn", "max_hist", "n_items", "n_actions"};
        int vals[] = {c->d_model, c->n_heads, c->n_layers, c->d_ffn, c->max_hist, c->n_items, c->n_actions};
        char v[24];
        if (lm_st_writer_meta(w, "arch", LM_ARCH, err, errsz))
            return -1;
        for (int i = 0; i < 7; i++) {
            snprintf(v, sizeof v, "%d", vals[i]);
            if (lm_st_writer_meta(w, keys[i], v, err, errsz))
                return -1;
        }
    }
    for (int i = 0; i < m->n_specs; i++)
        if (lm_st_writer_add(w, m->specs[i].name, LM_DT_F32, m->specs[i].ndim, m->specs[i].shape,
                             m->params + m->off[i], err, errsz))
            return -1;
    return 0;
}

/* ---- forward ------------------------------------------------------------------------------ */

static uint64_t stream_id(int cand, int layer, int op) { return ((uint64_t)cand << 16) | ((uint64_t)layer << 4) | (uint64_t)op; }

static void drop(tr_model *m, size_t n, float *x, uint64_t id)
{
    if (m->o->train)
        tr_dropout(m->pool, n, x, m->o->dropout, m->o->seed, id);
}

static int seq_len(const tr_batch *b, int s) { return b->seq_off[s + 1] - b->seq_off[s]; }

/* The candidates of sequence s are groups [g0, g1). */
static void seq_groups(const tr_model *m, int s, int *g0, int *g1)
{
    const tr_batch *b = m->b;
    int g = 0;
    while (g < b->G && m->tok_seq[b->grp_tok[g]] < s)
        g++;
    *g0 = g;
    while (g < b->G && m->tok_seq[b->grp_tok[g]] == s)
        g++;
    *g1 = g;
}

typedef struct attn_ctx {
    tr_model *m;
    int l;
} attn_ctx;

static size_t cand_p_stride(const tr_model *m) { return (size_t)m->c.n_heads * (m->c.max_hist + 1); }

static void attn_hist_fwd_task(void *ctx, int s, int thread)
{
    (void)thread;
    attn_ctx *a = ctx;
    tr_model *m = a->m;
    const tr_batch *b = m->b;
    const int d = m->c.d_model;
    tr_attn_shape sh = {d, m->c.n_heads};
    layer_acts *h = &m->hist.l[a->l];
    tr_attn_hist_fwd(&sh, seq_len(b, s), h->qkv + (size_t)b->seq_off[s] * 3 * d, h->P + m->p_off[s],
                     h->att + (size_t)b->seq_off[s] * d);
}

static void attn_cand_fwd_task(void *ctx, int s, int thread)
{
    (void)thread;
    attn_ctx *a = ctx;
    tr_model *m = a->m;
    const tr_batch *b = m->b;
    const int d = m->c.d_model, gs = m->lim.group_size;
    tr_attn_shape sh = {d, m->c.n_heads};
    const float *hq = m->hist.l[a->l].qkv + (size_t)b->seq_off[s] * 3 * d;
    layer_acts *c = &m->cand.l[a->l];
    int g0, g1;
    seq_groups(m, s, &g0, &g1);
    for (int g = g0; g < g1; g++) {
        int keys = b->grp_tok[g] - b->seq_off[s] + 1;
        for (int j = g * gs; j < (g + 1) * gs; j++)
            tr_attn_cand_fwd(&sh, keys, hq, c->qkv + (size_t)j * 3 * d, c->P + (size_t)j * cand_p_stride(m),
                             c->att + (size_t)j * d);
    }
}

/* Everything of layer l for one stream but attention, which needs both. */
static void layer_fwd_pre(tr_model *m, stream *s, int cand, int l, int N)
{
    const int d = m->c.d_model;
    const layer_w *w = &m->P.l[l];
    layer_acts *a = &s->l[l];
    (void)cand;
    tr_layernorm_fwd(m->pool, N, d, s->x[l], w->ln1_w, w->ln1_b, a->h1, a->mu1, a->rs1);
    tr_linear_fwd(m->pool, N, d, 3 * d, a->h1, w->qkv_w, w->qkv_b, a->qkv);
}

static void layer_fwd_post(tr_model *m, stream *s, int cand, int l, int N)
{
    const int d = m->c.d_model, f = m->c.d_ffn;
    const layer_w *w = &m->P.l[l];
    layer_acts *a = &s->l[l];
    size_t nd = (size_t)N * d;
    tr_linear_fwd(m->pool, N, d, d, a->att, w->out_w, w->out_b, m->tmp);
    drop(m, nd, m->tmp, stream_id(cand, l, 1));
    for (size_t i = 0; i < nd; i++)
        a->x_mid[i] = s->x[l][i] + m->tmp[i];
    tr_layernorm_fwd(m->pool, N, d, a->x_mid, w->ln2_w, w->ln2_b, a->h2, a->mu2, a->rs2);
    tr_linear_fwd(m->pool, N, d, f, a->h2, w->up_w, w->up_b, a->u);
    tr_gelu_fwd(m->pool, (size_t)N * f, a->u, a->g);
    tr_linear_fwd(m->pool, N, f, d, a->g, w->down_w, w->down_b, m->tmp);
    drop(m, nd, m->tmp, stream_id(cand, l, 2));
    for (size_t i = 0; i < nd; i++)
        s->x[l + 1][i] = a->x_mid[i] + m->tmp[i];
}

static void embed_hist(tr_model *m)
{
    const tr_batch *b = m->b;
    const int d = m->c.d_model;
    for (int s = 0; s < b->B; s++) {
        int L = seq_len(b, s);
        for (int t = b->seq_off[s]; t < b->seq_off[s + 1]; t++) {
            const float *e = m->P.item_emb + (size_t)b->items[t] * d;
            const float *a = m->P.action_emb + (size_t)b->actions[t] * d;
            const float *p = m->P.pos_emb + (size_t)(L - (t - b->seq_off[s])) * d;
            float *x = m->hist.x[0] + (size_t)t * d;
            for (int i = 0; i < d; i++)
                x[i] = e[i] + a[i] + p[i];
        }
    }
    drop(m, (size_t)b->T * d, m->hist.x[0], stream_id(0, 15, 0));
}

static void embed_cand(tr_model *m, int C)
{
    const int d = m->c.d_model;
    for (int j = 0; j < C; j++) {
        const float *e = m->P.item_emb + (size_t)m->b->cands[j] * d;
        float *x = m->cand.x[0] + (size_t)j * d;
        for (int i = 0; i < d; i++)
            x[i] = e[i] + m->P.pos_emb[i];
    }
    drop(m, (size_t)C * d, m->cand.x[0], stream_id(1, 15, 0));
}

/* All layers of the history, then all layers of the candidates: a
 * candidate in layer l reads the history's saved keys and values of layer l. */
static void forward_hist(tr_model *m)
{
    for (int l = 0; l < m->c.n_layers; l++) {
        layer_fwd_pre(m, &m->hist, 0, l, m->b->T);
        attn_ctx a = {m, l};
        lm_pool_run(m->pool, attn_hist_fwd_task, &a, m->b->B);
        layer_fwd_post(m, &m->hist, 0, l, m->b->T);
    }
}

static void forward_cand(tr_model *m, int C)
{
    for (int l = 0; l < m->c.n_layers; l++) {
        layer_fwd_pre(m, &m->cand, 1, l, C);
        attn_ctx a = {m, l};
        lm_pool_run(m->pool, attn_cand_fwd_task, &a, m->b->B);
        layer_fwd_post(m, &m->cand, 1, l, C);
    }
}

static void index_batch(tr_model *m);

/* ---- the catalog cross-entropy and negative sampling ----------------------------------------- */

static int in_prefix(const tr_batch *b, int s, int tok, int32_t item)
{
    for (int t = b->seq_off[s]; t <= tok; t++)
        if (b->items[t] == item)
            return 1;
    return 0;
}

/* Fills group g's candidates: the positive, the hardest items of logits z
 * (which this clobbers), then uniform ones; never the positive, row 0 or an
 * item of the history prefix, never twice. */
static void pick_negatives(tr_model *m, int g, float *z)
{
    const tr_batch *b = m->b;
    const int n = m->c.n_items, gs = m->lim.group_size, tok = b->grp_tok[g], s = m->tok_seq[tok];
    int32_t *out = b->cands + (size_t)g * gs, pos = b->targets[tok];
    out[0] = pos;
    z[0] = z[pos] = -INFINITY;
    for (int t = b->seq_off[s]; t <= tok; t++)
        z[b->items[t]] = -INFINITY;
    int k = 1;
    if (m->o->hard_neg > 0) {
        int32_t it[256];
        float sc[256];
        lm_topk top;
        lm_topk_init(&top, it, sc, m->o->hard_neg < 256 ? m->o->hard_neg : 256);
        for (int i = 1; i < n; i++)
            if (z[i] > -INFINITY)
                lm_topk_push(&top, i, z[i]);
        int got = lm_topk_finish(&top);
        for (int i = 0; i < got; i++)
            out[k++] = it[i];
    }
    uint64_t rs = m->o->seed ^ (0xabcdull + (uint64_t)g * 0x9e3779b97f4a7c15ull);
    for (int tries = 0; k < gs && tries < 64 * gs; tries++) {
        int32_t c = 1 + (int32_t)(splitmix(&rs) % (uint64_t)(n - 1));
        int dup = c == pos || in_prefix(b, s, tok, c);
        for (int j = 1; j < k && !dup; j++)
            dup = out[j] == c;
        if (!dup)
            out[k++] = c;
    }
    while (k < gs) /* a catalog too small for distinct negatives: repeat the last */
        out[k] = out[k - 1], k++;
}

/* The retrieval stage's list for group g: the top group_size items of
 * logits z (clobbered) over the catalog minus row 0 and the history prefix
 * (the positive stays eligible, as the target does in evaluation). The
 * positive goes first; a group whose positive is not in the list is
 * dropped (grp_keep 0): training the re-rank on lists the retrieval stage
 * would never hand it teaches the head to push down whatever retrieval
 * ranks high, since forced-in positives sit below the hard negatives. */
static void pick_topk(tr_model *m, int g, float *z)
{
    const tr_batch *b = m->b;
    const int n = m->c.n_items, gs = m->lim.group_size, tok = b->grp_tok[g], s = m->tok_seq[tok];
    int32_t *out = b->cands + (size_t)g * gs, pos = b->targets[tok];
    float zpos = z[pos];
    z[0] = -INFINITY;
    for (int t = b->seq_off[s]; t <= tok; t++)
        z[b->items[t]] = -INFINITY;
    z[pos] = zpos;
    int32_t it[LM_TOPK_GROUP];
    float sc[LM_TOPK_GROUP];
    lm_topk top;
    lm_topk_init(&top, it, sc, gs);
    for (int i = 1; i < n; i++)
        if (z[i] > -INFINITY)
            lm_topk_push(&top, i, z[i]);
    int got = lm_topk_finish(&top), k = 1, found = 0;
    out[0] = pos;
    for (int i = 0; i < got; i++) {
        if (it[i] == pos)
            found = 1;
        else if (k < gs)
            out[k++] = it[i];
    }
    while (k < gs) /* a catalog smaller than a group: repeat the last */
        out[k] = out[k - 1], k++;
    m->grp_keep[g] = (uint8_t)found;
}

/* Drops the groups pick_topk did not keep, in order. */
static void compact_groups(tr_model *m)
{
    tr_batch *b = m->b;
    const int gs = m->lim.group_size;
    int k = 0;
    for (int g = 0; g < b->G; g++) {
        if (!m->grp_keep[g])
            continue;
        if (k != g) {
            b->grp_tok[k] = b->grp_tok[g];
            memmove(b->cands + (size_t)k * gs, b->cands + (size_t)g * gs, sizeof(int32_t) * gs);
        }
        k++;
    }
    b->G = k;
    index_batch(m);
}

static void ce_task(void *ctx, int task, int thread)
{
    (void)thread;
    tr_model *m = ctx;
    const tr_batch *b = m->b;
    const int n = m->c.n_items, d = m->c.d_model;
    const int sample = m->o->hard_neg + m->o->rand_neg > 0;
    int r0 = (int)((long)b->T * task / m->ce_tasks), r1 = (int)((long)b->T * (task + 1) / m->ce_tasks);
    float *z = m->ce_z + (size_t)task * CE_ROWS * n, *dz = m->ce_dz + (size_t)task * CE_ROWS * n;
    float *dE = m->ce_dE + (size_t)task * n * d;
    memset(dE, 0, sizeof(float) * (size_t)n * d);
    double loss = 0;
    tr_ce_opts co = {.scale = 1.0f, .hard_weight = 1.0f};
    for (int c0 = r0; c0 < r1; c0 += CE_ROWS) {
        int rows = r1 - c0 < CE_ROWS ? r1 - c0 : CE_ROWS;
        const float *U = m->hist.hf + (size_t)c0 * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, d, 1.0f, U, d, m->P.item_emb, d,
                    0.0f, z, n);
        for (int r = 0; r < rows; r++) {
            float *zr = z + (size_t)r * n, *dr = dz + (size_t)r * n;
            int tok = c0 + r;
            zr[0] = -INFINITY;
            if (b->targets[tok] > 0) {
                co.scale = 1.0f / (float)m->n_targets;
                loss += tr_softmax_ce(n, zr, b->targets[tok], NULL, &co, dr);
            } else {
                memset(dr, 0, sizeof(float) * n);
            }
            if (m->o->topk_groups && m->tok_grp[tok] >= 0)
                pick_topk(m, m->tok_grp[tok], zr);
            else if (sample && m->tok_grp[tok] >= 0)
                pick_negatives(m, m->tok_grp[tok], zr);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, n, 1.0f, dz, n, m->P.item_emb, d,
                    0.0f, m->dU + (size_t)c0 * d, d);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, rows, 1.0f, dz, n, U, d, 1.0f, dE, d);
    }
    m->ce_loss[task] = loss;
}

/* ---- backward -------------------------------------------------------------------------------- */

static void attn_bwd_task(void *ctx, int s, int thread)
{
    (void)thread;
    attn_ctx *a = ctx;
    tr_model *m = a->m;
    const tr_batch *b = m->b;
    const int d = m->c.d_model, gs = m->lim.group_size;
    tr_attn_shape sh = {d, m->c.n_heads};
    layer_acts *h = &m->hist.l[a->l], *c = &m->cand.l[a->l];
    size_t o3 = (size_t)b->seq_off[s] * 3 * d;
    tr_attn_hist_bwd(&sh, seq_len(b, s), h->qkv + o3, h->P + m->p_off[s],
                     m->hist.datt + (size_t)b->seq_off[s] * d, m->hist.dqkv + o3);
    int g0, g1;
    seq_groups(m, s, &g0, &g1);
    for (int g = g0; g < g1; g++) {
        int keys = b->grp_tok[g] - b->seq_off[s] + 1;
        for (int j = g * gs; j < (g + 1) * gs; j++)
            tr_attn_cand_bwd(&sh, keys, h->qkv + o3, c->qkv + (size_t)j * 3 * d,
                             c->P + (size_t)j * cand_p_stride(m), m->cand.datt + (size_t)j * d,
                             m->hist.dqkv + o3, m->cand.dqkv + (size_t)j * 3 * d);
    }
}

/* From dx (gradient at the layer's output) to datt, and dxm (gradient at
 * x_mid) for one stream. */
static void layer_bwd_post(tr_model *m, stream *s, int cand, int l, int N)
{
    const int d = m->c.d_model, f = m->c.d_ffn;
    const layer_w *w = &m->P.l[l];
    layer_w *gw = &m->G.l[l];
    layer_acts *a = &s->l[l];
    size_t nd = (size_t)N * d;
    memcpy(m->tmp, s->dx, sizeof(float) * nd);
    drop(m, nd, m->tmp, stream_id(cand, l, 2));
    tr_linear_bwd(m->pool, N, f, d, a->g, w->down_w, m->tmp, m->du, 0, gw->down_w, gw->down_b);
    tr_gelu_bwd(m->pool, (size_t)N * f, a->u, m->du, m->du);
    tr_linear_bwd(m->pool, N, d, f, a->h2, w->up_w, m->du, m->dh, 0, gw->up_w, gw->up_b);
    memcpy(s->dxm, s->dx, sizeof(float) * nd);
    tr_layernorm_bwd(m->pool, N, d, a->x_mid, w->ln2_w, a->mu2, a->rs2, m->dh, s->dxm, gw->ln2_w, gw->ln2_b);
    memcpy(m->tmp, s->dxm, sizeof(float) * nd);
    drop(m, nd, m->tmp, stream_id(cand, l, 1));
    tr_linear_bwd(m->pool, N, d, d, a->att, w->out_w, m->tmp, s->datt, 0, gw->out_w, gw->out_b);
    memset(s->dqkv, 0, sizeof(float) * nd * 3);
}

/* From dqkv to dx at the layer's input. */
static void layer_bwd_pre(tr_model *m, stream *s, int l, int N)
{
    const int d = m->c.d_model;
    const layer_w *w = &m->P.l[l];
    layer_w *gw = &m->G.l[l];
    layer_acts *a = &s->l[l];
    tr_linear_bwd(m->pool, N, d, 3 * d, a->h1, w->qkv_w, s->dqkv, m->dh, 0, gw->qkv_w, gw->qkv_b);
    memcpy(s->dx, s->dxm, sizeof(float) * (size_t)N * d);
    tr_layernorm_bwd(m->pool, N, d, s->x[l], w->ln1_w, a->mu1, a->rs1, m->dh, s->dx, gw->ln1_w, gw->ln1_b);
}

static void embed_bwd(tr_model *m, int C)
{
    const tr_batch *b = m->b;
    const int d = m->c.d_model;
    drop(m, (size_t)b->T * d, m->hist.dx, stream_id(0, 15, 0));
    drop(m, (size_t)C * d, m->cand.dx, stream_id(1, 15, 0));
    for (int s = 0; s < b->B; s++) {
        int L = seq_len(b, s);
        for (int t = b->seq_off[s]; t < b->seq_off[s + 1]; t++) {
            const float *dx = m->hist.dx + (size_t)t * d;
            float *e = m->G.item_emb + (size_t)b->items[t] * d;
            float *a = m->G.action_emb + (size_t)b->actions[t] * d;
            float *p = m->G.pos_emb + (size_t)(L - (t - b->seq_off[s])) * d;
            for (int i = 0; i < d; i++) {
                e[i] += dx[i];
                a[i] += dx[i];
                p[i] += dx[i];
            }
        }
    }
    for (int j = 0; j < C; j++) {
        const float *dx = m->cand.dx + (size_t)j * d;
        float *e = m->G.item_emb + (size_t)b->cands[j] * d;
        for (int i = 0; i < d; i++) {
            e[i] += dx[i];
            m->G.pos_emb[i] += dx[i];
        }
    }
}

/* ---- the step -------------------------------------------------------------------------------- */

static int check_batch(const tr_model *m, const tr_batch *b, int sample)
{
    if (b->B < 1 || b->B > m->lim.max_seqs || b->T > m->lim.max_tokens || b->G < 0 ||
        b->G > m->lim.max_groups || b->seq_off[0] != 0 || b->seq_off[b->B] != b->T)
        return -1;
    for (int s = 0; s < b->B; s++)
        if (seq_len(b, s) < 1 || seq_len(b, s) > m->c.max_hist)
            return -1;
    for (int t = 0; t < b->T; t++)
        if (b->items[t] < 0 || b->items[t] >= m->c.n_items || b->actions[t] < 0 ||
            b->actions[t] >= m->c.n_actions || b->targets[t] < 0 || b->targets[t] >= m->c.n_items)
            return -1;
    for (int g = 0; g < b->G; g++) {
        if (b->grp_tok[g] < 0 || b->grp_tok[g] >= b->T || (g && b->grp_tok[g] <= b->grp_tok[g - 1]))
            return -1;
        if (sample && b->targets[b->grp_tok[g]] <= 0)
            return -1;
    }
    if (!sample)
        for (int j = 0; j < b->G * m->lim.group_size; j++)
            if (b->cands[j] < 0 || b->cands[j] >= m->c.n_items)
                return -1;
    return 0;
}

static void index_batch(tr_model *m)
{
    const tr_batch *b = m->b;
    const size_t H = (size_t)m->c.n_heads;
    m->p_off[0] = 0;
    for (int s = 0; s < b->B; s++) {
        size_t L = (size_t)seq_len(b, s);
        m->p_off[s + 1] = m->p_off[s] + H * L * L;
        for (int t = b->seq_off[s]; t < b->seq_off[s + 1]; t++) {
            m->tok_seq[t] = s;
            m->tok_grp[t] = -1;
        }
    }
    for (int g = 0; g < b->G; g++)
        m->tok_grp[b->grp_tok[g]] = g;
}

static void final_ln(tr_model *m, stream *s, int N)
{
    tr_layernorm_fwd(m->pool, N, m->c.d_model, s->x[m->c.n_layers], m->P.lnf_w, m->P.lnf_b, s->hf,
                     s->muf, s->rsf);
}

/* The head's score of each candidate, its retrieval logit u_t . e_c (the
 * prior), and their sum: the ranking logit the pipeline sorts by. */
static void cand_scores(tr_model *m, int C)
{
    const int d = m->c.d_model, gs = m->lim.group_size;
    for (int j = 0; j < C; j++) {
        const float *h = m->cand.hf + (size_t)j * d;
        const float *u = m->hist.hf + (size_t)m->b->grp_tok[j / gs] * d;
        const float *e = m->P.item_emb + (size_t)m->b->cands[j] * d;
        float acc = m->P.head_b[0], pr = 0.0f;
        for (int i = 0; i < d; i++) {
            acc += h[i] * m->P.head_w[i];
            pr += u[i] * e[i];
        }
        m->scores[j] = acc;
        m->prior[j] = pr;
        m->fused[j] = acc + pr;
    }
}

/* The prior's share of the ranking gradient: into the user vector (dU,
 * before LN_f's backward) and the candidate's embedding. */
static void prior_bwd(tr_model *m, int C)
{
    const int d = m->c.d_model, gs = m->lim.group_size;
    for (int j = 0; j < C; j++) {
        int tok = m->b->grp_tok[j / gs];
        const float *u = m->hist.hf + (size_t)tok * d;
        const float *e = m->P.item_emb + (size_t)m->b->cands[j] * d;
        float *du = m->dU + (size_t)tok * d, *de = m->G.item_emb + (size_t)m->b->cands[j] * d, g = m->dscores[j];
        for (int i = 0; i < d; i++) {
            du[i] += g * e[i];
            de[i] += g * u[i];
        }
    }
}

/* The ranking loss over each group and its gradient into dscores. */
static double rank_loss(tr_model *m, tr_step_stats *st)
{
    const tr_batch *b = m->b;
    const tr_step_opts *o = m->o;
    const int gs = m->lim.group_size;
    double loss = 0;
    tr_ce_opts co = {.scale = o->rank_weight / (float)(b->G ? b->G : 1), .hard_weight = 1.0f,
                     .kd_weight = m->teach ? o->kd_weight : 0.0f, .temperature = o->temperature};
    for (int g = 0; g < b->G; g++) {
        const float *s = m->fused + (size_t)g * gs;
        const float *soft = NULL;
        if (m->teach) {
            tr_softmax_t(gs, m->teach + (size_t)g * gs, o->temperature, m->soft);
            soft = m->soft;
        }
        loss += tr_softmax_ce(gs, s, 0, soft, &co, m->dscores + (size_t)g * gs);
        int best = 1;
        for (int j = 1; j < gs; j++)
            best &= s[j] < s[0];
        st->rank_hits += best;
    }
    return loss;
}

static void head_bwd(tr_model *m, int C)
{
    const int d = m->c.d_model;
    for (int j = 0; j < C; j++) {
        const float *h = m->cand.hf + (size_t)j * d;
        float *dh = m->tmp + (size_t)j * d, g = m->dscores[j];
        for (int i = 0; i < d; i++) {
            dh[i] = g * m->P.head_w[i];
            m->G.head_w[i] += g * h[i];
        }
        m->G.head_b[0] += g;
    }
}

int tr_model_step(tr_model *m, tr_batch *b, const tr_step_opts *o, tr_step_stats *st)
{
    const int sample = o->topk_groups || o->hard_neg + o->rand_neg > 0;
    if (check_batch(m, b, sample) || (sample && !o->topk_groups && o->hard_neg + o->rand_neg != m->lim.group_size - 1) ||
        (o->topk_groups && m->lim.group_size > LM_TOPK_GROUP))
        return -1;
    const int d = m->c.d_model, L = m->c.n_layers;
    int C = b->G * m->lim.group_size;
    memset(st, 0, sizeof *st);
    memset(m->grads, 0, sizeof(float) * m->n_params);
    m->b = b;
    m->o = o;
    index_batch(m);
    m->n_targets = 0;
    for (int t = 0; t < b->T; t++)
        m->n_targets += b->targets[t] > 0;

    /* History first: its catalog logits pick the candidates' negatives. */
    embed_hist(m);
    forward_hist(m);
    final_ln(m, &m->hist, b->T);
    lm_pool_run(m->pool, ce_task, m, m->ce_tasks);
    for (int t = 0; t < m->ce_tasks; t++)
        st->loss_retrieval += m->ce_loss[t];
    st->tokens = m->n_targets;
    st->loss_retrieval /= m->n_targets ? m->n_targets : 1;
    if (o->topk_groups) {
        compact_groups(m);
        C = b->G * m->lim.group_size;
    }
    if (C) {
        m->teach = o->teacher_scores;
        if (o->teacher) {
            if (tr_model_scores(o->teacher, b, m->teacher_buf, NULL))
                return -1;
            m->teach = m->teacher_buf;
        }
        embed_cand(m, C);
        forward_cand(m, C);
        final_ln(m, &m->cand, C);
        cand_scores(m, C);
        st->loss_rank = rank_loss(m, st) / b->G;
        st->groups = b->G;
    }

    /* backward */
    for (int t = 0; t < m->ce_tasks; t++)
        for (size_t i = 0; i < (size_t)m->c.n_items * d; i++)
            m->G.item_emb[i] += m->ce_dE[(size_t)t * m->c.n_items * d + i];
    if (C)
        prior_bwd(m, C);
    memset(m->hist.dx, 0, sizeof(float) * (size_t)b->T * d);
    tr_layernorm_bwd(m->pool, b->T, d, m->hist.x[L], m->P.lnf_w, m->hist.muf, m->hist.rsf, m->dU,
                     m->hist.dx, m->G.lnf_w, m->G.lnf_b);
    if (C) {
        head_bwd(m, C);
        memset(m->cand.dx, 0, sizeof(float) * (size_t)C * d);
        tr_layernorm_bwd(m->pool, C, d, m->cand.x[L], m->P.lnf_w, m->cand.muf, m->cand.rsf, m->tmp,
                         m->cand.dx, m->G.lnf_w, m->G.lnf_b);
    }
    for (int l = L - 1; l >= 0; l--) {
        layer_bwd_post(m, &m->hist, 0, l, b->T);
        if (C)
            layer_bwd_post(m, &m->cand, 1, l, C);
        attn_ctx a = {m, l};
        lm_pool_run(m->pool, attn_bwd_task, &a, b->B);
        layer_bwd_pre(m, &m->hist, l, b->T);
        if (C)
            layer_bwd_pre(m, &m->cand, l, C);
    }
    embed_bwd(m, C);
    m->b = NULL;
    return 0;
}

int tr_model_scores(tr_model *m, const tr_batch *b, float *ranking, float *head)
{
    tr_step_opts o = {.train = 0};
    if (check_batch(m, b, 0))
        return -1;
    const int C = b->G * m->lim.group_size;
    m->b = (tr_batch *)b;
    m->o = &o;
    index_batch(m);
    embed_hist(m);
    forward_hist(m);
    final_ln(m, &m->hist, b->T);
    embed_cand(m, C);
    forward_cand(m, C);
    final_ln(m, &m->cand, C);
    cand_scores(m, C);
    if (ranking)
        memcpy(ranking, m->fused, sizeof(float) * (size_t)C);
    if (head)
        memcpy(head, m->scores, sizeof(float) * (size_t)C);
    m->b = NULL;
    return 0;
}
