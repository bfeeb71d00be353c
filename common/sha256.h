/* common/sha256.h — SHA-256 (FIPS 180-4), for the model tag
 * "<name>@<sha256 prefix>" that identifies the artifact serving. */
#ifndef RANKD_COMMON_SHA256_H
#define RANKD_COMMON_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct cm_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t fill;
} cm_sha256;

void cm_sha256_init(cm_sha256 *s);
void cm_sha256_update(cm_sha256 *s, const void *data, size_t n);
void cm_sha256_final(cm_sha256 *s, uint8_t out[32]);

/* The digest of a whole file as 64 hex characters; 0 or -1 (errno set). */
int cm_sha256_file(const char *path, char hex[65]);

#endif
