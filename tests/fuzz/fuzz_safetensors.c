/* tests/fuzz/fuzz_safetensors.c — libFuzzer target for the model file
 * loader: the input is a whole safetensors file image, opened from memory
 * (lm_st_open_mem), its tensors and metadata read back, and then loaded as
 * a ranker-v1 model (lm_model_load_mem: config, tensor checks, carving).
 * Never a crash, leak or undefined behaviour, whatever the bytes.
 *
 * The tensors' data is summed byte by byte so that ASan sees any pointer
 * the reader lets point outside the image. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "llm/model.h"
#include "llm/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    lm_st_file *f;
    volatile unsigned sum = 0;
    if (lm_st_open_mem(&f, data, size, "fuzz.safetensors", err, sizeof err) == 0) {
        for (int i = 0; i < lm_st_count(f); i++) {
            const lm_st_tensor *t = lm_st_at(f, i);
            const unsigned char *p = t->data;
            sum += (unsigned)strlen(t->name);
            for (size_t j = 0; j < t->nbytes; j++)
                sum += p[j];
            if (lm_st_find(f, t->name) == NULL)
                __builtin_trap(); /* a tensor the file lists but cannot find */
        }
        for (int i = 0; i < lm_st_meta_count(f); i++) {
            const char *k, *v;
            lm_st_meta_at(f, i, &k, &v);
            sum += (unsigned)(strlen(k) + strlen(v));
        }
        lm_st_close(f);
    }
    lm_model *m;
    if (lm_model_load_mem(&m, data, size, "fuzz.safetensors", err, sizeof err) == 0)
        lm_model_free(m);
    (void)sum;
    return 0;
}
