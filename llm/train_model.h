/* llm/train_model.h — ranker-v1 with gradients: parameters, a batch of
 * training sequences, and one forward + backward step of both heads.
 *
 * A batch holds B sequences of history tokens (item, action, position as in
 * the reference: newest = 1). Every history token t that has a next item
 * trains the retrieval head: cross-entropy of u_t = LN_f(x_t) . item_emb^T
 * over the whole catalog (row 0 masked). Some positions ("groups") also
 * train the ranking head: the positive next item and sampled negatives, each
 * a candidate token attending to the history tokens 0..t and to itself, as
 * the service scores them; cross-entropy over the group, optionally plus a
 * teacher's softened scores (distillation).
 *
 * The ranking logit of a candidate is the head's score plus its retrieval
 * logit u_t . item_emb[c] (the prior): the ranking head learns what the
 * target-aware attention adds to the retrieval stage, and the pipeline
 * (llm/eval.c, the service) sorts the re-ranked items by the same sum.
 * Trained on a few hundred thousand groups, a ranking head alone is worse
 * than the retrieval order it re-ranks; on top of it, it can only add.
 *
 * Negatives are chosen inside the step from the retrieval logits it
 * computes anyway: the hardest items of the catalog for that position
 * (the ones the service's retrieval stage would pass on) plus uniform ones;
 * the positive, row 0 and the history prefix are never negatives.
 *
 * Parameters live in one array in the order of lm_tensor_specs, row-major,
 * as the artifact stores them; gradients and the optimizer's moments use
 * the same layout. */
#ifndef RANKD_LLM_TRAIN_MODEL_H
#define RANKD_LLM_TRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "llm/model.h"
#include "llm/pool.h"

typedef struct tr_batch {
    int B;            /* sequences */
    int T;            /* history tokens in all */
    int *seq_off;     /* [B + 1]: sequence b's tokens are [seq_off[b], seq_off[b+1]) */
    int32_t *items;   /* [T] */
    int32_t *actions; /* [T] */
    int32_t *targets; /* [T] next item of each token, 0: none (no retrieval loss) */
    int G;            /* ranking groups */
    int *grp_tok;     /* [G] the token (batch index) whose next item is the positive;
                         groups must be in order of sequence */
    int32_t *cands;   /* [G * group_size]: filled by the step (first = the positive),
                         or given when the step samples no negatives */
} tr_batch;

typedef struct tr_limits {
    int max_seqs, max_tokens, max_groups;
    int group_size; /* candidates per group: 1 positive + negatives */
} tr_limits;

typedef struct tr_step_opts {
    int train;          /* 1: dropout on; 0: the deterministic inference forward */
    float dropout;
    uint64_t seed;      /* of this step's dropout and negative sampling */
    int hard_neg;       /* negatives per group from the top of the retrieval logits */
    int rand_neg;       /* uniform negatives per group; hard + rand = group_size - 1,
                           or both 0 to use batch->cands as given */
    int topk_groups;    /* instead: each group is the top group_size items of its
                           position's logits, as the retrieval stage would pass
                           them on; groups whose positive is not among them are
                           dropped (batch->G shrinks) */
    float rank_weight;  /* weight of the ranking loss beside the retrieval loss */
    const float *teacher_scores; /* [G * group_size] ranking logits or NULL: distillation targets */
    struct tr_model *teacher;    /* or a teacher that scores the step's candidates */
    float kd_weight;    /* weight of T^2 KL(teacher || student) in the ranking loss */
    float temperature;
} tr_step_opts;

typedef struct tr_step_stats {
    double loss_retrieval; /* mean over tokens with a target */
    double loss_rank;      /* mean over groups */
    int tokens, groups;
    int rank_hits;         /* groups where the positive scored highest */
} tr_step_stats;

typedef struct tr_model tr_model;

int tr_model_new(tr_model **out, const lm_config *cfg, const tr_limits *lim, lm_pool *pool,
                 char *err, size_t errsz);
void tr_model_free(tr_model *m);
const lm_config *tr_model_config(const tr_model *m);

size_t tr_model_size(const tr_model *m); /* floats in the parameter array */
float *tr_model_params(tr_model *m);
float *tr_model_grads(tr_model *m);
/* Which tensors take weight decay: 2-D linear weights (not embeddings,
 * LayerNorms, biases or the head). mask[i] is 1 or 0 per parameter. */
void tr_model_decay_mask(const tr_model *m, uint8_t *mask);

/* Initialisation: embeddings N(0, emb_std), linear weights and biases
 * U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's nn.Linear), LayerNorms 1 and 0. */
void tr_model_init(tr_model *m, uint64_t seed, float emb_std);

/* Reads an fp32 artifact with this model's config into the parameters. */
int tr_model_load(tr_model *m, const char *path, char *err, size_t errsz);
/* The same from an open file that may hold more (a checkpoint). */
int tr_model_read(tr_model *m, const lm_st_file *f, char *err, size_t errsz);
/* Adds every parameter tensor to a writer (with the config metadata when
 * `with_meta`). */
int tr_model_write(const tr_model *m, lm_st_writer *w, int with_meta, char *err, size_t errsz);

/* Zeroes the gradients, runs forward and backward over the batch, and
 * returns the losses. With o->train == 0 and no teacher it is the
 * inference forward of ../shared/reference/ranker_v1.py. */
int tr_model_step(tr_model *m, tr_batch *b, const tr_step_opts *o, tr_step_stats *st);

/* Forward only, no dropout, for the batch's (given) candidates
 * [G * group_size]: the ranking logits (head + prior) and the head's scores
 * alone (the reference model's `scores`); either may be NULL. */
int tr_model_scores(tr_model *m, const tr_batch *b, float *ranking, float *head);

/* After a step or tr_model_scores: the retrieval vector u_t = LN_f(x_t) of
 * history token t, [d] (for tests). */
const float *tr_model_user_vec(const tr_model *m, int token);

#endif
