/* common/strmap.c — the string-to-id map of strmap.h.
 *
 * The table holds only 32-bit slots (id + 1, 0 for empty); each id's key
 * pointer, length and hash live in arrays indexed by id, so that growing the
 * table re-slots ids from their stored hashes without touching the keys, and
 * a probe compares key bytes only when the 32-bit hashes agree. Key copies
 * are carved from blocks that double up to 1 MiB and are never moved. */
#include "common/strmap.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_MIN 16               /* slots of a new map; a power of two */
#define BLOCK_FIRST 4096           /* bytes of the first key block */
#define BLOCK_MAX (1u << 20)       /* later blocks double up to this */

typedef struct block {
    struct block *next;
    size_t used, cap;
    char data[];
} block;

struct cm_strmap {
    uint32_t *slots;      /* [mask + 1]: 0 empty, else id + 1 */
    size_t mask;
    const char **keys;    /* [room], the first n used */
    uint32_t *lens;
    uint32_t *hashes;
    int n, room;
    block *blocks;        /* newest first; the head is the one being filled */
    size_t next_block;    /* size of the next ordinary block */
};

/* FNV-1a, then a murmur3 finalizer so that the low bits used as the slot
 * index depend on every byte. */
static uint32_t hash_bytes(const char *key, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (uint32_t)h;
}

cm_strmap *cm_strmap_new(void)
{
    cm_strmap *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->slots = calloc(TABLE_MIN, sizeof *m->slots);
    if (!m->slots) {
        free(m);
        return NULL;
    }
    m->mask = TABLE_MIN - 1;
    m->next_block = BLOCK_FIRST;
    return m;
}

void cm_strmap_free(cm_strmap *m)
{
    if (!m)
        return;
    for (block *b = m->blocks, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(m->slots);
    free(m->keys);
    free(m->lens);
    free(m->hashes);
    free(m);
}

int cm_strmap_count(const cm_strmap *m)
{
    return m->n;
}

const char *cm_strmap_key(const cm_strmap *m, int id)
{
    return m->keys[id];
}

/* The slot holding key, or the empty slot where it would go. */
static size_t probe(const cm_strmap *m, const char *key, size_t len, uint32_t h)
{
    size_t i = h & m->mask;
    for (;; i = (i + 1) & m->mask) {
        uint32_t s = m->slots[i];
        if (s == 0)
            return i;
        int id = (int)(s - 1);
        if (m->hashes[id] == h && m->lens[id] == len && memcmp(m->keys[id], key, len) == 0)
            return i;
    }
}

int cm_strmap_find(const cm_strmap *m, const char *key, size_t len)
{
    if (len > CM_STRMAP_MAX_KEY)
        return -1;
    uint32_t s = m->slots[probe(m, key, len, hash_bytes(key, len))];
    return s ? (int)(s - 1) : -1;
}

/* Doubles the table (every id re-slotted from its stored hash). */
static int grow_table(cm_strmap *m)
{
    size_t cap = m->mask + 1;
    if (cap > SIZE_MAX / 2 / sizeof *m->slots)
        return -1;
    uint32_t *slots = calloc(cap * 2, sizeof *slots);
    if (!slots)
        return -1;
    size_t mask = cap * 2 - 1;
    for (int id = 0; id < m->n; id++) {
        size_t i = m->hashes[id] & mask;
        while (slots[i])
            i = (i + 1) & mask;
        slots[i] = (uint32_t)id + 1;
    }
    free(m->slots);
    m->slots = slots;
    m->mask = mask;
    return 0;
}

/* Room for one more id in keys, lens and hashes. Each array is replaced
 * only once its bigger copy exists, so a failure leaves the map intact. */
static int grow_arrays(cm_strmap *m)
{
    if (m->n < m->room)
        return 0;
    if (m->n == INT_MAX)
        return -1;
    int room = m->room < INT_MAX / 2 ? (m->room ? m->room * 2 : 16) : INT_MAX;
    const char **keys = realloc(m->keys, (size_t)room * sizeof *keys);
    if (!keys)
        return -1;
    m->keys = keys;
    uint32_t *lens = realloc(m->lens, (size_t)room * sizeof *lens);
    if (!lens)
        return -1;
    m->lens = lens;
    uint32_t *hashes = realloc(m->hashes, (size_t)room * sizeof *hashes);
    if (!hashes)
        return -1;
    m->hashes = hashes;
    m->room = room;
    return 0;
}

/* need bytes that will not move. A key bigger than an ordinary block gets
 * a block of its own, linked behind the head so the head keeps filling. */
static char *alloc_key(cm_strmap *m, size_t need)
{
    block *head = m->blocks;
    if (head && head->cap - head->used >= need) {
        char *p = head->data + head->used;
        head->used += need;
        return p;
    }
    size_t cap = need > m->next_block ? need : m->next_block;
    block *b = malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    b->cap = cap;
    b->used = need;
    if (need > m->next_block && head) {
        b->next = head->next;
        head->next = b;
    } else {
        b->next = head;
        m->blocks = b;
        if (m->next_block < BLOCK_MAX)
            m->next_block *= 2;
    }
    return b->data;
}

int cm_strmap_intern(cm_strmap *m, const char *key, size_t len, int *id)
{
    if (len > CM_STRMAP_MAX_KEY)
        return -1;
    uint32_t h = hash_bytes(key, len);
    size_t i = probe(m, key, len, h);
    if (m->slots[i]) {
        *id = (int)(m->slots[i] - 1);
        return 0;
    }
    if (grow_arrays(m) < 0)
        return -1;
    if (((size_t)m->n + 1) * 4 > (m->mask + 1) * 3) { /* load factor at most 3/4 */
        if (grow_table(m) < 0)
            return -1;
        i = probe(m, key, len, h);
    }
    char *copy = alloc_key(m, len + 1);
    if (!copy)
        return -1;
    memcpy(copy, key, len);
    copy[len] = '\0';
    m->keys[m->n] = copy;
    m->lens[m->n] = (uint32_t)len;
    m->hashes[m->n] = h;
    m->slots[i] = (uint32_t)m->n + 1;
    *id = m->n++;
    return 1;
}
