/* llm/eval.h — the evaluation protocol of ../shared/data/README.md for any
 * ranker-v1 artifact on any dataset: leave-one-out, the target ranked
 * against ALL items, the user's history excluded, HR and NDCG at 5, 10, 20.
 *
 * Three rankings are measured on the same users:
 *   - retrieval: the retrieval head alone over the whole catalog;
 *   - two-stage: the pipeline the service runs: retrieval top-N, re-ranked
 *     by the ranking logit, the ranking head's score plus the item's
 *     retrieval logit (llm/train_model.h says why); items after the N keep
 *     their retrieval order;
 *   - popularity: items by their count in the training events.
 * The history given to the model is the last max_hist events before the
 * target; all of the user's earlier events are excluded from the ranking
 * except the target itself (a re-consumed item can still be hit). Item row
 * 0 (unknown to the model) is never ranked, so an unknown target is a miss.
 * Ties rank against the target (the pessimistic convention): a model that
 * scores everything alike gets no credit. */
#ifndef RANKD_LLM_EVAL_H
#define RANKD_LLM_EVAL_H

#include <stdio.h>

#include "llm/dataset.h"
#include "llm/kernels.h"
#include "llm/model.h"

#define LM_EVAL_NK 3
extern const int lm_eval_ks[LM_EVAL_NK]; /* 5, 10, 20 */

typedef struct lm_metrics {
    int n_users;
    double hr[LM_EVAL_NK];   /* at lm_eval_ks */
    double ndcg[LM_EVAL_NK];
} lm_metrics;

typedef struct lm_eval_opts {
    lm_split split;     /* LM_SPLIT_TEST or LM_SPLIT_VALID */
    int retrieve_n;     /* two-stage: candidates re-ranked (>= 20); 0: 100 */
    int max_users;      /* 0: every evaluable user; else the first max_users of them */
    int threads;        /* 0: all cores */
    lm_isa isa;         /* LM_ISA_COUNT: lm_isa_default(); note that 0 is LM_ISA_SCALAR */
    int progress;       /* print progress lines to stderr on long runs */
} lm_eval_opts;

typedef struct lm_eval_result {
    lm_split split;
    lm_metrics retrieval, two_stage, popularity;
    double seconds;     /* wall time of the model's part */
} lm_eval_result;

/* The model's item rows must be the dataset's (lm_dataset_align). */
int lm_eval_model(const lm_model *m, const lm_dataset *d, const lm_eval_opts *o,
                  lm_eval_result *r, char *err, size_t errsz);

/* Popularity alone (no model), for the same split and users. */
void lm_eval_popularity(const lm_dataset *d, lm_split split, int max_users, lm_metrics *out);

/* Accumulates one user's result: `rank` is 1-based, or 0 for not in the
 * top 20. lm_metrics_finish turns sums into means. */
void lm_metrics_add(lm_metrics *m, int rank);
void lm_metrics_finish(lm_metrics *m);

/* The results as an aligned table, and as one JSON object. `label` names
 * the artifact and dataset in both. */
void lm_eval_print_table(FILE *f, const char *label, const lm_eval_result *r);
void lm_eval_print_json(FILE *f, const char *label, const lm_eval_result *r);

#endif
