/* llm/quantize.c — fp32 artifact to int8 artifact. */
#include "llm/quantize.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/kernels.h"
#include "llm/model.h"
#include "llm/safetensors.h"

static int add_quantized(lm_st_writer *w, const lm_st_tensor *t, char *err, size_t errsz)
{
    int64_t rows = t->shape[0], cols = t->shape[1];
    int8_t *q = malloc((size_t)(rows * cols));
    float *scale = malloc(sizeof(float) * (size_t)rows);
    float *row = malloc(sizeof(float) * (size_t)cols);
    int rc = -1;
    if (!q || !scale || !row) {
        cm_errf(err, errsz, "quantize: out of memory for %s", t->name);
        goto out;
    }
    for (int64_t r = 0; r < rows; r++) {
        memcpy(row, (const char *)t->data + (size_t)(r * cols) * sizeof(float), sizeof(float) * (size_t)cols);
        lm_quantize_row_ref(row, (int)cols, q + r * cols, &scale[r]);
    }
    char sname[LM_ST_MAX_NAME + 1];
    snprintf(sname, sizeof sname, "%s_scale", t->name);
    rc = lm_st_writer_add(w, t->name, LM_DT_I8, 2, t->shape, q, err, errsz);
    if (rc == 0)
        rc = lm_st_writer_add(w, sname, LM_DT_F32, 1, &rows, scale, err, errsz);
out:
    free(q);
    free(scale);
    free(row);
    return rc;
}

static int build(const lm_st_file *f, lm_st_writer *w, const lm_config *cfg,
                 lm_quantize_stats *st, char *err, size_t errsz)
{
    for (int i = 0; i < lm_st_meta_count(f); i++) {
        const char *k, *v;
        lm_st_meta_at(f, i, &k, &v);
        if (strcmp(k, "quant") != 0 && lm_st_writer_meta(w, k, v, err, errsz))
            return -1;
    }
    if (lm_st_writer_meta(w, "quant", "int8", err, errsz))
        return -1;
    int n_specs = lm_tensor_specs_max(cfg), rc = 0;
    lm_tensor_spec *specs = malloc(sizeof *specs * (size_t)n_specs);
    if (!specs)
        return cm_errf(err, errsz, "quantize: out of memory");
    n_specs = lm_tensor_specs(cfg, specs);
    for (int i = 0; i < n_specs && rc == 0; i++) {
        const lm_st_tensor *t = lm_st_find(f, specs[i].name);
        st->bytes_in += t->nbytes;
        if (specs[i].quantized) {
            rc = add_quantized(w, t, err, errsz);
            st->tensors_quantized++;
            st->bytes_out += (size_t)t->numel + sizeof(float) * (size_t)t->shape[0];
        } else {
            rc = lm_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, err, errsz);
            st->bytes_out += t->nbytes;
        }
    }
    free(specs);
    const lm_st_tensor *v = lm_st_find(f, LM_VOCAB_TENSOR);
    if (rc == 0 && v) {
        rc = lm_st_writer_add(w, v->name, v->dtype, v->ndim, v->shape, v->data, err, errsz);
        st->bytes_in += v->nbytes;
        st->bytes_out += v->nbytes;
    }
    return rc;
}

int lm_quantize_file(const char *in, const char *out, lm_quantize_stats *st, char *err,
                     size_t errsz)
{
    memset(st, 0, sizeof *st);
    lm_st_file *f;
    if (lm_st_open(&f, in, err, errsz))
        return -1;
    lm_config cfg;
    lm_quant quant;
    int rc = -1;
    lm_st_writer *w = NULL;
    if (lm_config_read(f, &cfg, &quant, err, errsz) || lm_model_check(f, &cfg, quant, err, errsz))
        goto done;
    if (quant != LM_QUANT_NONE) {
        cm_errf(err, errsz, "%s: already quantized (quant=int8); quantize takes an fp32 artifact", in);
        goto done;
    }
    w = lm_st_writer_new();
    if (!w) {
        cm_errf(err, errsz, "quantize: out of memory");
        goto done;
    }
    rc = build(f, w, &cfg, st, err, errsz);
    if (rc == 0)
        rc = lm_st_writer_save(w, out, err, errsz);
done:
    lm_st_writer_free(w);
    lm_st_close(f);
    return rc;
}
