/* llm/safetensors.h — strict reader and atomic writer for safetensors files.
 *
 * Format: an 8-byte little-endian header length N, N bytes of JSON, then the
 * raw little-endian tensor data. The JSON maps tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
 * start of the data section) plus an optional "__metadata__" object of
 * string values.
 *
 * The reader maps the file and validates everything before returning: header
 * size bounds, JSON syntax, duplicate keys, dtypes, shapes, offsets inside
 * the file, byte counts that match dtype x shape, no overlaps and no holes.
 * Every failure is an error message naming the file and the problem; no
 * input crashes the process. */
#ifndef RANKD_LLM_SAFETENSORS_H
#define RANKD_LLM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "rankd reads safetensors data in place and needs a little-endian host"
#endif

#define LM_ST_MAX_DIMS 8
#define LM_ST_MAX_HEADER (100u << 20) /* the limit the safetensors spec sets */
#define LM_ST_MAX_NAME 255

typedef enum lm_dtype {
    LM_DT_F32, LM_DT_F16, LM_DT_BF16, LM_DT_F64,
    LM_DT_I64, LM_DT_I32, LM_DT_I16, LM_DT_I8,
    LM_DT_U8, LM_DT_BOOL,
    LM_DT_COUNT
} lm_dtype;

const char *lm_dtype_name(lm_dtype dt);            /* "F32", ... */
size_t lm_dtype_size(lm_dtype dt);                 /* bytes per element */
int lm_dtype_parse(const char *s, lm_dtype *out);  /* 0 or -1 */

typedef struct lm_st_tensor {
    const char *name;                 /* owned by the file; valid until close */
    lm_dtype dtype;
    int ndim;                         /* 0 (scalar) .. LM_ST_MAX_DIMS */
    int64_t shape[LM_ST_MAX_DIMS];
    int64_t numel;                    /* product of shape; 1 for a scalar */
    size_t nbytes;
    const void *data;                 /* points into the mapping; may be unaligned:
                                         read it with memcpy */
} lm_st_tensor;

typedef struct lm_st_file lm_st_file;

/* Maps and validates `path`. On success *out owns the mapping; free with
 * lm_st_close. On failure *out is NULL and err says "PATH: problem". */
int lm_st_open(lm_st_file **out, const char *path, char *err, size_t errsz);

/* Validates a file image held in memory (for fuzzing and tests). `name` is
 * used in messages. The buffer must outlive the returned handle. */
int lm_st_open_mem(lm_st_file **out, const void *buf, size_t len, const char *name,
                   char *err, size_t errsz);

void lm_st_close(lm_st_file *f);                   /* NULL is fine */

const char *lm_st_path(const lm_st_file *f);
int lm_st_count(const lm_st_file *f);
const lm_st_tensor *lm_st_at(const lm_st_file *f, int i);        /* file order */
const lm_st_tensor *lm_st_find(const lm_st_file *f, const char *name); /* or NULL */

/* __metadata__ values; NULL when the key is absent. */
const char *lm_st_meta(const lm_st_file *f, const char *key);
int lm_st_meta_count(const lm_st_file *f);
void lm_st_meta_at(const lm_st_file *f, int i, const char **key, const char **value);

/* Looks up `name` and checks its dtype and shape. Errors read
 * "PATH: tensor NAME is missing" or "PATH: tensor NAME has shape [a,b], expected [c,d]". */
int lm_st_expect(const lm_st_file *f, const char *name, lm_dtype dtype, int ndim,
                 const int64_t *shape, const lm_st_tensor **out, char *err, size_t errsz);

/* Writer: collects metadata and tensors, then writes the file atomically
 * (PATH.tmp, fsync, rename), so a crash never leaves a half-written model.
 * Tensor data is copied at add time; the caller keeps ownership of `data`. */
typedef struct lm_st_writer lm_st_writer;

lm_st_writer *lm_st_writer_new(void);              /* NULL on out of memory */
void lm_st_writer_free(lm_st_writer *w);
int lm_st_writer_meta(lm_st_writer *w, const char *key, const char *value,
                      char *err, size_t errsz);
int lm_st_writer_add(lm_st_writer *w, const char *name, lm_dtype dtype, int ndim,
                     const int64_t *shape, const void *data, char *err, size_t errsz);
int lm_st_writer_save(lm_st_writer *w, const char *path, char *err, size_t errsz);

#endif
