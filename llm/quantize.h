/* llm/quantize.h — turns an fp32 ranker-v1 artifact into its int8 form.
 *
 * The linear weights of every layer are quantized per output channel and
 * item_emb per row, with the reference quantizer (lm_quantize_row_ref);
 * LayerNorms, biases, action and position embeddings and the head stay fp32.
 * The metadata is kept and quant=int8 added. */
#ifndef RANKD_LLM_QUANTIZE_H
#define RANKD_LLM_QUANTIZE_H

#include <stddef.h>

typedef struct lm_quantize_stats {
    int tensors_quantized;
    size_t bytes_in, bytes_out; /* tensor data, before and after */
} lm_quantize_stats;

int lm_quantize_file(const char *in, const char *out, lm_quantize_stats *st, char *err,
                     size_t errsz);

#endif
