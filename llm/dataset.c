/* llm/dataset.c — the dataset builder, lm_dataset_align and the format
 * names of llm/dataset.h; the file readers are in llm/dataset_load.c.
 *
 * The builder interns user, item and action strings in cm_strmaps (ids in
 * first-appearance order, so item row = item id + 1) and appends each event
 * to four flat arrays. Finishing counts events per user, scatters them into
 * one block that holds every array of the lm_dataset (a stable counting
 * sort by user), then sorts only the users whose timestamps are out of
 * order. The maps move into the dataset: they own every id string the
 * dataset hands out, so nothing is copied twice.
 *
 * Decisions where the header is silent:
 *   - user, item and action strings must be non-empty; an item id must also
 *     be usable as a model vocabulary entry (llm/model.h: at most
 *     LM_MAX_ID_LEN bytes, no newline), so that a bad id fails when the data
 *     is read, naming its line, rather than when a trained model is saved;
 *   - a second title for the same item is an error;
 *   - titles of items that have no events are dropped at finish;
 *     item_titles is NULL unless some item of the dataset has a title, and
 *     rows without one (row 0 included) hold "";
 *   - a dataset with no events is valid here; lm_dataset_load refuses one. */
#include "llm/dataset.h"

#include "common/err.h"
#include "common/strmap.h"
#include "llm/model.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ACTIONS 255 /* ids fit in uint8_t */

struct lm_dataset_builder {
    cm_strmap *users, *items, *actions;
    cm_strmap *titled;     /* items given a title, in the order given */
    cm_strmap *titles;     /* title strings (deduplicated) */
    int32_t *title_of;     /* [count(titled)]: id in titles */
    int title_room;
    int32_t *ev_user;      /* [room], the first n used */
    int32_t *ev_item;      /* item rows (>= 1) */
    uint8_t *ev_act;
    int64_t *ev_ts;
    int64_t n, room;
};

/* The dataset and everything it points to. */
typedef struct store {
    lm_dataset d;
    cm_strmap *users, *items, *actions, *titles; /* own the strings handed out */
    void *block;       /* every array of d */
    void *vocab_block; /* item_ids and item_titles after lm_dataset_align */
} store;

/* ---- format names ----------------------------------------------------------- */

static const char *const format_names[LM_DATA_COUNT] = {
    [LM_DATA_AUTO] = "auto",
    [LM_DATA_MOVIELENS] = "movielens",
    [LM_DATA_SEQUENCES] = "sequences",
    [LM_DATA_JSONL] = "jsonl",
};

lm_data_format lm_data_format_parse(const char *s)
{
    for (int i = 0; s && i < LM_DATA_COUNT; i++)
        if (strcmp(s, format_names[i]) == 0)
            return (lm_data_format)i;
    return LM_DATA_COUNT;
}

const char *lm_data_format_name(lm_data_format f)
{
    return (unsigned)f < LM_DATA_COUNT ? format_names[f] : "unknown";
}

/* ---- builder ---------------------------------------------------------------- */

void lm_dataset_builder_free(lm_dataset_builder *b)
{
    if (!b)
        return;
    cm_strmap_free(b->users);
    cm_strmap_free(b->items);
    cm_strmap_free(b->actions);
    cm_strmap_free(b->titled);
    cm_strmap_free(b->titles);
    free(b->title_of);
    free(b->ev_user);
    free(b->ev_item);
    free(b->ev_act);
    free(b->ev_ts);
    free(b);
}

lm_dataset_builder *lm_dataset_builder_new(void)
{
    lm_dataset_builder *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->users = cm_strmap_new();
    b->items = cm_strmap_new();
    b->actions = cm_strmap_new();
    b->titled = cm_strmap_new();
    b->titles = cm_strmap_new();
    if (!b->users || !b->items || !b->actions || !b->titled || !b->titles) {
        lm_dataset_builder_free(b);
        return NULL;
    }
    return b;
}

/* Room for one more event in each array; an array is replaced only once
 * its bigger copy exists, so a failure loses no event. */
static int grow_events(lm_dataset_builder *b)
{
    if (b->n < b->room)
        return 0;
    int64_t room = b->room ? b->room * 2 : 1024;
    if ((uint64_t)room > SIZE_MAX / sizeof(int64_t))
        return -1;
    int32_t *u = realloc(b->ev_user, (size_t)room * sizeof *u);
    if (!u)
        return -1;
    b->ev_user = u;
    int32_t *it = realloc(b->ev_item, (size_t)room * sizeof *it);
    if (!it)
        return -1;
    b->ev_item = it;
    uint8_t *a = realloc(b->ev_act, (size_t)room);
    if (!a)
        return -1;
    b->ev_act = a;
    int64_t *ts = realloc(b->ev_ts, (size_t)room * sizeof *ts);
    if (!ts)
        return -1;
    b->ev_ts = ts;
    b->room = room;
    return 0;
}

/* An item id must be a valid model vocabulary entry (see the file comment). */
static int check_item_id(const char *item, char *err, size_t errsz)
{
    size_t len = strlen(item);
    if (len == 0)
        return cm_errf(err, errsz, "item id is empty");
    if (len > LM_MAX_ID_LEN)
        return cm_errf(err, errsz, "item id \"%.40s...\" is %zu bytes long, at most %d allowed", item,
                       len, LM_MAX_ID_LEN);
    if (strchr(item, '\n'))
        return cm_errf(err, errsz, "item id \"%.40s\" holds a newline", item);
    return 0;
}

static int check_event(const char *user, const char *item, const char *action, char *err,
                       size_t errsz)
{
    if (!user || !item || !action)
        return cm_errf(err, errsz, "event without %s", !user ? "user" : !item ? "item" : "action");
    if (!*user)
        return cm_errf(err, errsz, "user id is empty");
    if (!*action)
        return cm_errf(err, errsz, "action is empty");
    return check_item_id(item, err, errsz);
}

/* The action's id; the 256th distinct action is refused before anything
 * else of its event is interned, so a refused event leaves no trace. */
static int intern_action(lm_dataset_builder *b, const char *action, int *id, char *err, size_t errsz)
{
    size_t len = strlen(action);
    *id = cm_strmap_find(b->actions, action, len);
    if (*id >= 0)
        return 0;
    if (cm_strmap_count(b->actions) >= MAX_ACTIONS)
        return cm_errf(err, errsz, "too many action types: \"%.40s\" would be the %dth, at most %d "
                       "are allowed", action, MAX_ACTIONS + 1, MAX_ACTIONS);
    if (cm_strmap_intern(b->actions, action, len, id) < 0)
        return cm_errf(err, errsz, "out of memory");
    return 0;
}

int lm_dataset_builder_add(lm_dataset_builder *b, const char *user, const char *item,
                           const char *action, int64_t ts, char *err, size_t errsz)
{
    int a, u, it;
    if (check_event(user, item, action, err, errsz) < 0 ||
        intern_action(b, action, &a, err, errsz) < 0)
        return -1;
    if (cm_strmap_count(b->items) >= INT32_MAX - 1 &&
        cm_strmap_find(b->items, item, strlen(item)) < 0)
        return cm_errf(err, errsz, "too many items: at most %d", INT32_MAX - 1);
    if (grow_events(b) < 0 || cm_strmap_intern(b->users, user, strlen(user), &u) < 0 ||
        cm_strmap_intern(b->items, item, strlen(item), &it) < 0)
        return cm_errf(err, errsz, "out of memory (%lld events)", (long long)b->n);
    b->ev_user[b->n] = u;
    b->ev_item[b->n] = it + 1;
    b->ev_act[b->n] = (uint8_t)a;
    b->ev_ts[b->n] = ts;
    b->n++;
    return 0;
}

int lm_dataset_builder_title(lm_dataset_builder *b, const char *item, const char *title,
                             char *err, size_t errsz)
{
    int ti, si;
    if (!item || !title)
        return cm_errf(err, errsz, "title without %s", !item ? "an item" : "a title");
    if (check_item_id(item, err, errsz) < 0)
        return -1;
    if (cm_strmap_find(b->titled, item, strlen(item)) >= 0)
        return cm_errf(err, errsz, "item \"%.40s\" already has a title", item);
    int n = cm_strmap_count(b->titled);
    if (n == b->title_room) {
        int room = n ? (n < INT_MAX / 2 ? n * 2 : INT_MAX) : 256;
        int32_t *t = room > n ? realloc(b->title_of, (size_t)room * sizeof *t) : NULL;
        if (!t)
            return cm_errf(err, errsz, "out of memory (%d titles)", n);
        b->title_of = t;
        b->title_room = room;
    }
    if (cm_strmap_intern(b->titles, title, strlen(title), &si) < 0 ||
        cm_strmap_intern(b->titled, item, strlen(item), &ti) < 0)
        return cm_errf(err, errsz, "out of memory (%d titles)", n);
    b->title_of[ti] = si;
    return 0;
}

/* ---- finish ----------------------------------------------------------------- */

/* Byte offsets of the arrays inside the store's block, largest alignment
 * first so that each offset is a multiple of its element size. */
typedef struct layout {
    size_t user_off, ts, user_ids, item_ids, item_titles, action_names, items, actions, total;
} layout;

static size_t take(size_t *at, size_t count, size_t size)
{
    size_t off = *at;
    *at += count * size;
    return off;
}

static layout plan(int64_t n_events, int n_users, int n_items, int n_actions, int titles)
{
    layout l;
    size_t at = 0, ne = (size_t)n_events;
    l.user_off = take(&at, (size_t)n_users + 1, sizeof(int64_t));
    l.ts = take(&at, ne, sizeof(int64_t));
    l.user_ids = take(&at, (size_t)n_users, sizeof(char *));
    l.item_ids = take(&at, (size_t)n_items, sizeof(char *));
    l.item_titles = take(&at, titles ? (size_t)n_items : 0, sizeof(char *));
    l.action_names = take(&at, (size_t)n_actions, sizeof(char *));
    l.items = take(&at, ne, sizeof(int32_t));
    l.actions = take(&at, ne, sizeof(uint8_t));
    l.total = at ? at : 1;
    return l;
}

/* Does any item with events have a title? */
static int any_title(const lm_dataset_builder *b)
{
    int n = cm_strmap_count(b->titled) ? cm_strmap_count(b->items) : 0;
    for (int i = 0; i < n; i++) {
        const char *id = cm_strmap_key(b->items, i);
        if (cm_strmap_find(b->titled, id, strlen(id)) >= 0)
            return 1;
    }
    return 0;
}

static void fill_strings(store *st, const lm_dataset_builder *b)
{
    lm_dataset *d = &st->d;
    for (int u = 0; u < d->n_users; u++)
        d->user_ids[u] = cm_strmap_key(b->users, u);
    for (int a = 0; a < d->n_actions; a++)
        d->action_names[a] = cm_strmap_key(b->actions, a);
    d->item_ids[0] = "";
    for (int r = 1; r < d->n_items; r++)
        d->item_ids[r] = cm_strmap_key(b->items, r - 1);
    if (!d->item_titles)
        return;
    d->item_titles[0] = "";
    for (int r = 1; r < d->n_items; r++) {
        int t = cm_strmap_find(b->titled, d->item_ids[r], strlen(d->item_ids[r]));
        d->item_titles[r] = t >= 0 ? cm_strmap_key(b->titles, b->title_of[t]) : "";
    }
}

/* Counting sort by user: stable, so each user's events keep the order added. */
static int scatter(lm_dataset *d, const lm_dataset_builder *b)
{
    int64_t *next = malloc(((size_t)d->n_users + 1) * sizeof *next);
    if (!next)
        return -1;
    memset(d->user_off, 0, ((size_t)d->n_users + 1) * sizeof *d->user_off);
    for (int64_t e = 0; e < b->n; e++)
        d->user_off[b->ev_user[e] + 1]++;
    for (int u = 0; u < d->n_users; u++)
        d->user_off[u + 1] += d->user_off[u];
    memcpy(next, d->user_off, (size_t)d->n_users * sizeof *next);
    for (int64_t e = 0; e < b->n; e++) {
        int64_t at = next[b->ev_user[e]]++;
        d->items[at] = b->ev_item[e];
        d->actions[at] = b->ev_act[e];
        d->ts[at] = b->ev_ts[e];
    }
    free(next);
    return 0;
}

typedef struct ts_key {
    int64_t ts;
    int64_t pos; /* index within the user: breaks ties, so qsort is stable */
} ts_key;

static int ts_key_cmp(const void *pa, const void *pb)
{
    const ts_key *a = pa, *b = pb;
    if (a->ts != b->ts)
        return a->ts < b->ts ? -1 : 1;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

/* Sorts one user's events [off, off + n) by (ts, order added), through
 * scratch arrays of at least n entries. */
static void sort_user(lm_dataset *d, int64_t off, int64_t n, ts_key *keys, int32_t *items,
                      uint8_t *actions)
{
    for (int64_t i = 0; i < n; i++)
        keys[i] = (ts_key){d->ts[off + i], i};
    qsort(keys, (size_t)n, sizeof *keys, ts_key_cmp);
    memcpy(items, d->items + off, (size_t)n * sizeof *items);
    memcpy(actions, d->actions + off, (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        d->ts[off + i] = keys[i].ts;
        d->items[off + i] = items[keys[i].pos];
        d->actions[off + i] = actions[keys[i].pos];
    }
}

/* Sorts the users whose events are out of time order; most data arrives in
 * order, so most users cost one pass and no scratch. */
static int sort_users(lm_dataset *d)
{
    ts_key *keys = NULL;
    int32_t *items = NULL;
    uint8_t *actions = NULL;
    int64_t room = 0;
    int rc = 0;
    for (int u = 0; u < d->n_users && rc == 0; u++) {
        int64_t off = d->user_off[u], n = d->user_off[u + 1] - off, i = 1;
        while (i < n && d->ts[off + i - 1] <= d->ts[off + i])
            i++;
        if (i >= n)
            continue;
        if (n > room) {
            free(keys);
            free(items);
            free(actions);
            keys = malloc((size_t)n * sizeof *keys);
            items = malloc((size_t)n * sizeof *items);
            actions = malloc((size_t)n);
            room = n;
            if (!keys || !items || !actions) {
                rc = -1;
                break;
            }
        }
        sort_user(d, off, n, keys, items, actions);
    }
    free(keys);
    free(items);
    free(actions);
    return rc;
}

static store *store_new(const lm_dataset_builder *b)
{
    int titles = any_title(b);
    store *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    lm_dataset *d = &st->d;
    d->n_users = cm_strmap_count(b->users);
    d->n_items = cm_strmap_count(b->items) + 1;
    d->n_actions = cm_strmap_count(b->actions);
    d->n_events = b->n;
    layout l = plan(d->n_events, d->n_users, d->n_items, d->n_actions, titles);
    char *p = st->block = malloc(l.total);
    if (!p) {
        free(st);
        return NULL;
    }
    d->user_off = (int64_t *)(void *)(p + l.user_off);
    d->ts = (int64_t *)(void *)(p + l.ts);
    d->user_ids = (const char **)(void *)(p + l.user_ids);
    d->item_ids = (const char **)(void *)(p + l.item_ids);
    d->item_titles = titles ? (const char **)(void *)(p + l.item_titles) : NULL;
    d->action_names = (const char **)(void *)(p + l.action_names);
    d->items = (int32_t *)(void *)(p + l.items);
    d->actions = (uint8_t *)(p + l.actions);
    d->priv = st;
    return st;
}

int lm_dataset_builder_finish(lm_dataset_builder *b, lm_dataset **out, char *err, size_t errsz)
{
    *out = NULL;
    store *st = store_new(b);
    if (!st || scatter(&st->d, b) < 0 || sort_users(&st->d) < 0) {
        cm_errf(err, errsz, "out of memory for a dataset of %lld events", (long long)b->n);
        if (st)
            free(st->block);
        free(st);
        lm_dataset_builder_free(b);
        return -1;
    }
    fill_strings(st, b);
    /* The strings handed out live in these maps; they move to the store. */
    st->users = b->users;
    st->items = b->items;
    st->actions = b->actions;
    st->titles = b->titles;
    b->users = b->items = b->actions = b->titles = NULL;
    lm_dataset_builder_free(b);
    *out = &st->d;
    return 0;
}

void lm_dataset_free(lm_dataset *d)
{
    if (!d)
        return;
    store *st = d->priv;
    cm_strmap_free(st->users);
    cm_strmap_free(st->items);
    cm_strmap_free(st->actions);
    cm_strmap_free(st->titles);
    free(st->block);
    free(st->vocab_block);
    free(st);
}

/* ---- vocabularies ----------------------------------------------------------- */

/* The vocabulary's ids 1..n_vocab-1 in a map (id = row - 1). */
static cm_strmap *vocab_map(const char *const *vocab, int n_vocab, char *err, size_t errsz)
{
    cm_strmap *m = cm_strmap_new();
    if (!m) {
        cm_errf(err, errsz, "out of memory for the vocabulary");
        return NULL;
    }
    for (int r = 1; r < n_vocab; r++) {
        int id, rc = -1;
        if (!vocab[r] || !*vocab[r])
            cm_errf(err, errsz, "vocabulary: the id of row %d is empty", r);
        else if ((rc = cm_strmap_intern(m, vocab[r], strlen(vocab[r]), &id)) < 0)
            cm_errf(err, errsz, "out of memory for the vocabulary");
        else if (rc == 0)
            cm_errf(err, errsz, "vocabulary: rows %d and %d both hold \"%.40s\"", id + 1, r, vocab[r]);
        if (rc != 1) {
            cm_strmap_free(m);
            return NULL;
        }
    }
    return m;
}

int lm_dataset_align(lm_dataset *d, const char *const *vocab, int n_vocab, int64_t *n_unknown,
                     char *err, size_t errsz)
{
    store *st = d->priv;
    if (n_vocab < 1)
        return cm_errf(err, errsz, "vocabulary has %d rows; it needs at least row 0", n_vocab);
    cm_strmap *m = vocab_map(vocab, n_vocab, err, errsz);
    if (!m)
        return -1;
    int titles = d->item_titles != NULL;
    int32_t *remap = malloc((size_t)d->n_items * sizeof *remap);
    const char **ids = malloc((size_t)n_vocab * (titles ? 2 : 1) * sizeof *ids);
    if (!remap || !ids) {
        free(remap);
        free(ids);
        cm_strmap_free(m);
        return cm_errf(err, errsz, "out of memory for the vocabulary");
    }
    const char **new_titles = titles ? ids + n_vocab : NULL;
    ids[0] = "";
    for (int r = 1; r < n_vocab; r++)
        ids[r] = cm_strmap_key(m, r - 1);
    for (int r = 0; titles && r < n_vocab; r++)
        new_titles[r] = "";
    remap[0] = 0;
    for (int r = 1; r < d->n_items; r++) {
        remap[r] = cm_strmap_find(m, d->item_ids[r], strlen(d->item_ids[r])) + 1;
        if (titles && remap[r] > 0)
            new_titles[remap[r]] = d->item_titles[r];
    }
    int64_t unknown = 0;
    for (int64_t e = 0; e < d->n_events; e++) {
        d->items[e] = remap[d->items[e]];
        unknown += d->items[e] == 0;
    }
    free(remap);
    cm_strmap_free(st->items);
    free(st->vocab_block);
    st->items = m;
    st->vocab_block = ids;
    d->item_ids = ids;
    d->item_titles = new_titles;
    d->n_items = n_vocab;
    if (n_unknown)
        *n_unknown = unknown;
    return 0;
}
