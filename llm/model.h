/* llm/model.h — a ranker-v1 model in memory: its config, and its weights
 * packed for the CPU kernels, loaded once from a safetensors artifact.
 *
 * Two artifact kinds share one layout (see ../shared/reference/ranker_v1.py):
 *   fp32: every tensor F32, as the reference writes it;
 *   int8: metadata quant=int8; the four linear weights of every layer and
 *         item_emb are I8 with a F32 "<name>_scale" [rows] beside them
 *         (symmetric, one scale per output channel / per item row);
 *         everything else stays F32.
 * Either kind may carry its item vocabulary: the optional U8 tensor
 * "vocab.items" holds the string ids of rows 1..n_items-1, one per line, so
 * that the service can map the ids in events to embedding rows.
 * The loader checks every tensor the config needs (name, dtype, shape,
 * finite values) and rejects tensors it does not know. */
#ifndef RANKD_LLM_MODEL_H
#define RANKD_LLM_MODEL_H

#include <stddef.h>

#include "llm/kernels.h"
#include "llm/safetensors.h"

#define LM_ARCH "ranker-v1"
#define LM_VOCAB_TENSOR "vocab.items"
#define LM_MAX_ID_LEN 256 /* bytes of one item id */
#define LM_MAX_LAYERS 64

typedef struct lm_config {
    int d_model, n_heads, n_layers, d_ffn, max_hist, n_items, n_actions;
} lm_config;

typedef enum lm_quant { LM_QUANT_NONE, LM_QUANT_INT8 } lm_quant;

/* y = x W^T + b with W [n_out, n_in]: `f` for fp32 models, `q` for int8. */
typedef struct lm_linear {
    lm_pf32 f;
    lm_pq8 q;
    const float *bias; /* [n_out], or NULL */
} lm_linear;

typedef struct lm_layer {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* [d] */
    lm_linear qkv;                              /* [3d, d]: q, k, v rows */
    lm_linear out;                              /* [d, d] */
    lm_linear up;                               /* [d_ffn, d] */
    lm_linear down;                             /* [d, d_ffn] */
} lm_layer;

typedef struct lm_model {
    lm_config cfg;
    lm_quant quant;
    /* item_emb [n_items, d] twice: as a bias-free linear in panels, for
     * retrieval (u . item_emb^T over the catalog), and row-major, for
     * gathering the rows of a request's items (a panel spreads one row over
     * d/4 cache lines). */
    lm_linear item;
    const float *item_rows;    /* fp32 models */
    const int8_t *item_rows_q; /* int8 models; scales in item.q.scale */
    const float *action_emb; /* [n_actions, d] */
    const float *pos_emb;    /* [max_hist + 1, d] */
    lm_layer layers[LM_MAX_LAYERS];
    const float *lnf_w, *lnf_b; /* [d] */
    const float *head_w;        /* [d] */
    float head_b;
    const char **item_ids; /* [n_items] ids by row ("" for row 0); NULL without a vocabulary */
    void *arena; /* one allocation holds every packed tensor */
    size_t arena_bytes;
} lm_model;

/* The tensors a config requires. For int8 artifacts, `quantized` entries
 * are I8 and have a "<name>_scale" F32 [shape[0]] companion. */
typedef struct lm_tensor_spec {
    char name[64];
    int ndim;
    int64_t shape[2];
    int quantized; /* 1 when an int8 artifact stores it as I8 + scale */
} lm_tensor_spec;

/* Fills `out` (room for lm_tensor_specs_max(cfg) entries) in canonical
 * order; returns the count. */
int lm_tensor_specs(const lm_config *cfg, lm_tensor_spec *out);
int lm_tensor_specs_max(const lm_config *cfg);

/* Reads and range-checks the config in __metadata__ (arch, sizes, quant). */
int lm_config_read(const lm_st_file *f, lm_config *cfg, lm_quant *quant, char *err, size_t errsz);

/* Checks that `f` holds exactly the tensors its config requires, with the
 * right dtypes and shapes and finite values. */
int lm_model_check(const lm_st_file *f, const lm_config *cfg, lm_quant quant, char *err,
                   size_t errsz);

/* Loads an fp32 or int8 artifact. The file is mapped only while loading. */
int lm_model_load(lm_model **out, const char *path, char *err, size_t errsz);
/* The same from a file image in memory (tests/fuzz/fuzz_safetensors.c);
 * `name` stands for the path in messages. The model copies what it keeps:
 * buf may go once this returns. */
int lm_model_load_mem(lm_model **out, const void *buf, size_t len, const char *name, char *err, size_t errsz);
void lm_model_free(lm_model *m);

/* Adds the vocabulary tensor for ids[1..n_items-1] (ids[0] is ignored).
 * Ids must be 1..LM_MAX_ID_LEN bytes without newlines. */
int lm_vocab_write(lm_st_writer *w, const char *const *ids, int n_items, char *err, size_t errsz);

/* Writes the embedding row of `item` (dequantized for int8 models) to out[d]. */
void lm_model_item_row(const lm_model *m, int item, float *out);
/* The rows of items[0..n) to out[n, d]. A request's items are scattered
 * over the table, so all rows are prefetched before the first is read. */
void lm_model_item_rows(const lm_model *m, const int32_t *items, int n, float *out);

/* Parameter counts, and multiply-accumulates per candidate (the ranking
 * path after the history is encoded), for reports. */
long long lm_model_macs_per_candidate(const lm_config *cfg, int n_hist);

#endif
