/* common/err.h — the error convention every rankd module follows.
 *
 * A function that can fail returns 0 on success and -1 on failure, and on
 * failure writes one line into a buffer its caller provides (`err`, `errsz`).
 * Library code never prints or exits; only main() does. Messages name the
 * thing and the place: "model.safetensors: tensor item_emb has shape [9,4],
 * expected [10,4]". */
#ifndef RANKD_COMMON_ERR_H
#define RANKD_COMMON_ERR_H

#include <stdarg.h>
#include <stdio.h>

#define CM_ERRSZ 512 /* a comfortable size for callers' buffers */

/* Formats into err (when non-NULL) and returns -1, so that failing paths
 * read `return cm_errf(err, errsz, "...", ...);`. */
__attribute__((format(printf, 3, 4)))
static inline int cm_errf(char *err, size_t errsz, const char *fmt, ...)
{
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
    }
    return -1;
}

#endif
