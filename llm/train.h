/* llm/train.h — training a ranker-v1 model on a dataset: a teacher from
 * scratch, or a student distilled from a teacher.
 *
 * Each epoch visits every user with at least two training events once, in
 * an order drawn from (seed, epoch). A user contributes the last max_hist
 * events of its training part (lm_user_train_len) as input tokens, each
 * predicting the next event's item (retrieval head, full-catalog softmax),
 * and ranking groups at the newest token and at `extra_groups` earlier ones
 * (ranking head: by default the top group_size items of the position's
 * retrieval logits, as the two-stage pipeline re-ranks them; see
 * train_model.h). AdamW with decoupled weight decay on linear weights,
 * linear warm-up, global-norm clipping.
 *
 * After every `eval_every` epochs the model is measured on the validation
 * split (two-stage NDCG@10, the pipeline the service runs); the best so far
 * is written to out_path; after `decay_patience` evaluations without
 * improvement the learning rate is multiplied by lr_decay, and training
 * stops after `patience` evaluations without improvement. A checkpoint (parameters, optimizer moments, the
 * epoch, the best score) is written after every epoch; --resume continues
 * from it and gives the same model as a run that was never interrupted.
 * A fixed seed gives the same model on the same machine, on any number of
 * threads. */
#ifndef RANKD_LLM_TRAIN_H
#define RANKD_LLM_TRAIN_H

#include <stdint.h>
#include <stdio.h>

#include "llm/dataset.h"
#include "llm/eval.h"
#include "llm/model.h"

typedef struct tr_opts {
    /* model (n_items and n_actions come from the data) */
    int d_model, n_heads, n_layers, d_ffn, max_hist;
    float dropout, emb_std;
    /* optimisation */
    int batch;            /* sequences per step */
    float lr, weight_decay, beta1, beta2, clip;
    int warmup;           /* steps */
    float crop;           /* chance that a user's window ends at a random earlier event */
    int max_epochs, patience, eval_every, eval_users;
    float lr_decay;       /* learning rate times this after decay_patience evaluations
                             without improvement (1: constant) */
    int decay_patience;
    /* ranking head: groups of the top group_size retrieved items (topk), or
     * the positive with hard_neg hardest and uniform negatives (sampled) */
    int topk, group_size, hard_neg, extra_groups;
    float rank_weight;
    /* distillation: a teacher artifact (fp32, same items) */
    const char *teacher;
    float kd_weight, temperature;
    /* run */
    uint64_t seed;
    int threads;
    const char *out;      /* the best model (fp32 artifact) */
    const char *ckpt;     /* checkpoint; NULL: out + ".ckpt" */
    int resume;
    FILE *log;            /* progress lines; NULL: quiet */
    int tty;              /* log is a terminal: also a live step line */
} tr_opts;

/* Defaults for a teacher on sparse data (Amazon-like): d_model 64, 2 heads,
 * 2 layers, d_ffn 256, max_hist 50, dropout 0.5, Adam lr 1e-3, batch 128. */
void tr_opts_defaults(tr_opts *o);

typedef struct tr_report {
    int epochs, best_epoch;
    double best_ndcg10;       /* validation, two-stage */
    double seconds, seconds_per_epoch;
    double eval_seconds;      /* of which validation */
    double step_seconds;      /* of which forward/backward/update */
    long long steps;
} tr_report;

int tr_train(const lm_dataset *d, const tr_opts *o, tr_report *rep, char *err, size_t errsz);

#endif
