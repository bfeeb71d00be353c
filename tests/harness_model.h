/* tests/harness_model.h — the small random model the service's
 * integration suites run on: written as an artifact rankd serve loads
 * (actions view, click and purchase; a vocabulary of item ids "i1" ..
 * "i<n_items>", row 0 the unknown item, where asked). */
#ifndef RANKD_TESTS_HARNESS_MODEL_H
#define RANKD_TESTS_HARNESS_MODEL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"
#include "llm/safetensors.h"
#include "llm/train_model.h"

/* d_model 16, 2 heads, 1 layer, d_ffn 32; weights from seed; name in the
 * artifact's metadata (it shows in every output's model tag). */
static inline void th_write_model(const char *path, int n_items, int max_hist, int seed, int vocab,
                                  const char *name)
{
    lm_config c = {.d_model = 16, .n_heads = 2, .n_layers = 1, .d_ffn = 32, .max_hist = max_hist,
                   .n_items = n_items + 1, .n_actions = 3};
    tr_limits lim = {.max_seqs = 1, .max_tokens = max_hist, .max_groups = 0, .group_size = 2};
    tr_model *m;
    char err[CM_ERRSZ] = "";
    ck_assert_msg(tr_model_new(&m, &c, &lim, NULL, err, sizeof err) == 0, "%s", err);
    tr_model_init(m, (uint64_t)seed, 0.5f);
    const char **ids = calloc((size_t)n_items + 1, sizeof *ids);
    char *buf = calloc((size_t)n_items + 1, 16);
    ck_assert(ids && buf);
    ids[0] = "";
    for (int i = 1; i <= n_items; i++) {
        snprintf(buf + 16 * i, 16, "i%d", i);
        ids[i] = buf + 16 * i;
    }
    lm_st_writer *w = lm_st_writer_new();
    ck_assert_msg(tr_model_write(m, w, 1, err, sizeof err) == 0 &&
                      lm_st_writer_meta(w, "actions", "[\"view\",\"click\",\"purchase\"]", err, sizeof err) == 0 &&
                      lm_st_writer_meta(w, "name", name, err, sizeof err) == 0 &&
                      (!vocab || lm_vocab_write(w, ids, n_items + 1, err, sizeof err) == 0) &&
                      lm_st_writer_save(w, path, err, sizeof err) == 0,
                  "%s", err);
    lm_st_writer_free(w);
    tr_model_free(m);
    free(ids);
    free(buf);
}

#endif
