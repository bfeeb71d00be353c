/* common/strmap.h — strings to dense int ids: an open-addressing hash map
 * (linear probing) that hands out ids 0, 1, 2, ... in insertion order, so
 * that "the row of an id" and "the id of a row" are both O(1).
 *
 * The map owns copies of its keys, packed into large blocks that never
 * move: a pointer from cm_strmap_key stays valid until cm_strmap_free,
 * however many keys are added after it. Keys are byte strings of a given
 * length (they may come straight from a parser's buffer, unterminated);
 * the stored copies are NUL-terminated. */
#ifndef RANKD_COMMON_STRMAP_H
#define RANKD_COMMON_STRMAP_H

#include <stddef.h>

#define CM_STRMAP_MAX_KEY 0x7fffffffu /* bytes of one key */

typedef struct cm_strmap cm_strmap;

cm_strmap *cm_strmap_new(void); /* NULL on out of memory */
void cm_strmap_free(cm_strmap *m);

/* The id of key[0..len), adding a copy when absent. Returns 1 when the key
 * was added, 0 when it was already there (*id set either way), and -1 when
 * it cannot be added: out of memory, a key over CM_STRMAP_MAX_KEY bytes, or
 * a map already holding INT_MAX keys. The map is unchanged on -1. */
int cm_strmap_intern(cm_strmap *m, const char *key, size_t len, int *id);

/* The id of key[0..len), or -1 when absent. */
int cm_strmap_find(const cm_strmap *m, const char *key, size_t len);

int cm_strmap_count(const cm_strmap *m);

/* The key of id (0 <= id < count), NUL-terminated; owned by the map. */
const char *cm_strmap_key(const cm_strmap *m, int id);

#endif
