/* llm/synth.c — the synthetic event generator of llm/synth.h.
 *
 * One generator feeds both outputs (JSON lines and the in-memory dataset),
 * so they cannot drift apart. Users are generated lazily and merged in time
 * order through a binary heap keyed by (next timestamp, user index): memory
 * is O(users), not O(events), and the order is deterministic because every
 * user draws from its own random stream, whatever the interleaving. */
#include "llm/synth.h"

#include "common/err.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_USERS 100000000
#define MAX_ITEMS 100000000
#define MAX_LEN 100000
#define MAX_ZIPF 10.0

#define T0_MS INT64_C(1700000000000)            /* 2023-11-14 22:13:20 UTC */
#define START_SPAN_MS (INT64_C(30) * 86400000)  /* users start within 30 days */
#define STEP1_SHARE 0.7    /* users whose group step is 1 */
#define P_SEQUENTIAL 0.8   /* a followed item is at position j + 1 */
#define P_SESSION_END 0.1  /* a gap is a break between sessions */
#define P_USER_EVENT 0.1
#define P_RANKING 0.02
#define RANKING_ITEMS 5
#define UNAVAILABLE_EVERY 100

static const char *const action_names[] = {"view", "click", "purchase"};

/* ---- random numbers ---------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double unif(uint64_t *s)
{
    return (double)(splitmix64(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in [0, n), n < 2^32. */
static int64_t below(uint64_t *s, int64_t n)
{
    return (int64_t)(((splitmix64(s) >> 32) * (uint64_t)n) >> 32);
}

/* ---- the generator ------------------------------------------------------------ */

typedef enum ev_kind { EV_INTERACTION, EV_RANKING, EV_USER, EV_ITEM } ev_kind;

typedef struct synth_event {
    ev_kind kind;
    int64_t ts;
    int user;                     /* all but EV_ITEM */
    int item;                     /* EV_INTERACTION, EV_ITEM */
    int action;                   /* EV_INTERACTION: index into action_names */
    int segment;                  /* EV_USER: the first home group */
    int ranked[RANKING_ITEMS];    /* EV_RANKING */
} synth_event;

typedef struct synth_user {
    uint64_t rng;
    int64_t ts;        /* of the user's next event */
    int prev;          /* last item, -1 before the first */
    int left;          /* interactions still to come */
    int taste[2];      /* home groups */
    int step;          /* group step of the pattern */
    int user_event;    /* a "user" event is due first */
    int ranking;       /* a "ranking" event is due next */
} synth_user;

typedef struct synth {
    lm_synth_opts o;
    double *cdf;       /* [largest group]: cumulative popularity weights by position */
    synth_user *users;
    int *heap;         /* user indices, earliest (ts, index) first */
    int heap_n;
    int64_t last_ts;   /* latest event so far */
    int next_unavail;  /* end phase: index of the next "item" event */
} synth;

static int group_size(const synth *s, int g)
{
    return s->o.n_items / s->o.n_groups + (g < s->o.n_items % s->o.n_groups);
}

static int item_at(const synth *s, int g, int j)
{
    return j * s->o.n_groups + g;
}

/* A position in group g by popularity. */
static int zipf_pos(const synth *s, uint64_t *rng, int g)
{
    int n = group_size(s, g), lo = 0, hi = n - 1;
    double x = unif(rng) * s->cdf[n - 1];
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (s->cdf[mid] > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static int taste_draw(const synth *s, synth_user *u)
{
    int g = u->taste[below(&u->rng, 2)];
    return item_at(s, g, zipf_pos(s, &u->rng, g));
}

static int next_item(const synth *s, synth_user *u)
{
    if (u->prev < 0 || unif(&u->rng) >= s->o.p_follow)
        return taste_draw(s, u);
    int G = s->o.n_groups;
    int g = (u->prev % G + u->step) % G, j = u->prev / G;
    if (unif(&u->rng) < P_SEQUENTIAL)
        return item_at(s, g, (j + 1) % group_size(s, g));
    return item_at(s, g, zipf_pos(s, &u->rng, g));
}

static int64_t gap_ms(synth_user *u)
{
    if (unif(&u->rng) < P_SESSION_END)
        return 3600000 + below(&u->rng, 47 * INT64_C(3600000));
    return 5000 + below(&u->rng, 595000);
}

static void user_init(const synth *s, int i, synth_user *u)
{
    int G = s->o.n_groups;
    u->rng = s->o.seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(i + 1));
    splitmix64(&u->rng);
    u->ts = T0_MS + below(&u->rng, START_SPAN_MS);
    u->prev = -1;
    u->left = s->o.min_len + (int)below(&u->rng, s->o.max_len - s->o.min_len + 1);
    u->taste[0] = (int)below(&u->rng, G);
    u->taste[1] = G > 1 ? (u->taste[0] + 1 + (int)below(&u->rng, G - 1)) % G : 0;
    u->step = G > 2 && unif(&u->rng) >= STEP1_SHARE ? 2 + (int)below(&u->rng, G - 2) : 1 % G;
    u->user_event = unif(&u->rng) < P_USER_EVENT;
    u->ranking = 0;
}

/* ---- heap of users by (ts, index) ------------------------------------------- */

static int earlier(const synth *s, int a, int b)
{
    int64_t ta = s->users[a].ts, tb = s->users[b].ts;
    return ta < tb || (ta == tb && a < b);
}

static void sift_down(synth *s, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->heap_n && earlier(s, s->heap[l], s->heap[m]))
            m = l;
        if (r < s->heap_n && earlier(s, s->heap[r], s->heap[m]))
            m = r;
        if (m == i)
            return;
        int t = s->heap[i];
        s->heap[i] = s->heap[m];
        s->heap[m] = t;
        i = m;
    }
}

static void heap_build(synth *s)
{
    s->heap_n = s->o.n_users;
    for (int i = 0; i < s->heap_n; i++)
        s->heap[i] = i;
    for (int i = s->heap_n / 2 - 1; i >= 0; i--)
        sift_down(s, i);
}

/* ---- events -------------------------------------------------------------------- */

/* The due event of user i, the earliest of all; advances the user. */
static void user_event(synth *s, int i, synth_event *ev)
{
    synth_user *u = &s->users[i];
    ev->ts = u->ts;
    ev->user = i;
    if (u->user_event) {
        ev->kind = EV_USER;
        ev->segment = u->taste[0];
        u->user_event = 0;
        return;
    }
    if (u->ranking) {
        ev->kind = EV_RANKING;
        for (int k = 0; k < RANKING_ITEMS; k++)
            ev->ranked[k] = (int)below(&u->rng, s->o.n_items);
        u->ranking = 0;
        u->ts += gap_ms(u);
        return;
    }
    double a = unif(&u->rng);
    ev->kind = EV_INTERACTION;
    ev->item = u->prev = next_item(s, u);
    ev->action = a < 0.8 ? 0 : a < 0.95 ? 1 : 2;
    u->left--;
    u->ranking = unif(&u->rng) < P_RANKING;
    u->ts += u->ranking ? 1000 : gap_ms(u);
}

/* The next event of the stream; 0 once it has ended. */
static int synth_next(synth *s, synth_event *ev)
{
    if (s->heap_n > 0) {
        int i = s->heap[0];
        user_event(s, i, ev);
        if (s->users[i].left == 0 && !s->users[i].ranking)
            s->heap[0] = s->heap[--s->heap_n];
        sift_down(s, 0);
        s->last_ts = ev->ts;
        return 1;
    }
    int n = s->o.n_items;
    int k = n < UNAVAILABLE_EVERY ? (s->next_unavail ? n : n - 1)
                                  : (s->next_unavail + 1) * UNAVAILABLE_EVERY - 1;
    if (k >= n)
        return 0;
    s->next_unavail++;
    ev->kind = EV_ITEM;
    ev->item = k;
    ev->ts = s->last_ts + 60000;
    return 1;
}

static void synth_free(synth *s)
{
    free(s->cdf);
    free(s->users);
    free(s->heap);
}

static int synth_init(synth *s, const lm_synth_opts *o, char *err, size_t errsz)
{
    memset(s, 0, sizeof *s);
    if (lm_synth_check(o, err, errsz) < 0)
        return -1;
    s->o = *o;
    int largest = group_size(s, 0);
    s->cdf = malloc((size_t)largest * sizeof *s->cdf);
    s->users = malloc((size_t)o->n_users * sizeof *s->users);
    s->heap = malloc((size_t)o->n_users * sizeof *s->heap);
    if (!s->cdf || !s->users || !s->heap) {
        synth_free(s);
        return cm_errf(err, errsz, "synth: out of memory for %d users and %d items", o->n_users,
                       o->n_items);
    }
    double acc = 0.0;
    for (int j = 0; j < largest; j++)
        s->cdf[j] = acc += pow(j + 1.0, -o->zipf);
    for (int i = 0; i < o->n_users; i++)
        user_init(s, i, &s->users[i]);
    heap_build(s);
    return 0;
}

/* ---- public ------------------------------------------------------------------- */

void lm_synth_defaults(lm_synth_opts *o)
{
    *o = (lm_synth_opts){
        .n_users = 2000,
        .n_items = 500,
        .n_groups = 10,
        .min_len = 8,
        .max_len = 40,
        .zipf = 1.0,
        .p_follow = 0.6,
        .seed = 1,
    };
}

int lm_synth_check(const lm_synth_opts *o, char *err, size_t errsz)
{
    if (o->n_users < 1 || o->n_users > MAX_USERS)
        return cm_errf(err, errsz, "synth: users is %d; it must be in 1..%d", o->n_users, MAX_USERS);
    if (o->n_items < 1 || o->n_items > MAX_ITEMS)
        return cm_errf(err, errsz, "synth: items is %d; it must be in 1..%d", o->n_items, MAX_ITEMS);
    if (o->n_groups < 1 || o->n_groups > o->n_items)
        return cm_errf(err, errsz, "synth: groups is %d; it must be in 1..items (%d)", o->n_groups,
                       o->n_items);
    if (o->min_len < 1 || o->min_len > o->max_len || o->max_len > MAX_LEN)
        return cm_errf(err, errsz, "synth: lengths %d..%d; they must satisfy 1 <= min-len <= "
                       "max-len <= %d", o->min_len, o->max_len, MAX_LEN);
    if (!(o->zipf >= 0.0 && o->zipf <= MAX_ZIPF))
        return cm_errf(err, errsz, "synth: zipf is %g; it must be in 0..%g", o->zipf, MAX_ZIPF);
    if (!(o->p_follow >= 0.0 && o->p_follow <= 1.0))
        return cm_errf(err, errsz, "synth: follow is %g; it must be in 0..1", o->p_follow);
    return 0;
}

static int write_event(FILE *f, const synth_event *ev, int64_t id)
{
    switch (ev->kind) {
    case EV_INTERACTION:
        return fprintf(f, "{\"event\":\"interaction\",\"id\":\"e%" PRId64 "\",\"timestamp\":%" PRId64
                       ",\"user\":\"u%d\",\"item\":\"i%d\",\"type\":\"%s\"}\n", id, ev->ts,
                       ev->user + 1, ev->item + 1, action_names[ev->action]);
    case EV_RANKING: {
        int rc = fprintf(f, "{\"event\":\"ranking\",\"id\":\"e%" PRId64 "\",\"timestamp\":%" PRId64
                         ",\"user\":\"u%d\",\"items\":[", id, ev->ts, ev->user + 1);
        for (int k = 0; rc >= 0 && k < RANKING_ITEMS; k++)
            rc = fprintf(f, "%s{\"id\":\"i%d\"}", k ? "," : "", ev->ranked[k] + 1);
        return rc < 0 ? rc : fprintf(f, "]}\n");
    }
    case EV_USER:
        return fprintf(f, "{\"event\":\"user\",\"id\":\"e%" PRId64 "\",\"timestamp\":%" PRId64
                       ",\"user\":\"u%d\",\"fields\":[{\"name\":\"segment\",\"value\":\"g%d\"}]}\n",
                       id, ev->ts, ev->user + 1, ev->segment);
    case EV_ITEM:
        return fprintf(f, "{\"event\":\"item\",\"id\":\"e%" PRId64 "\",\"timestamp\":%" PRId64
                       ",\"item\":\"i%d\",\"fields\":[{\"name\":\"available\",\"value\":false}]}\n",
                       id, ev->ts, ev->item + 1);
    }
    return -1;
}

static void stats_add(lm_synth_stats *st, ev_kind k)
{
    st->interactions += k == EV_INTERACTION;
    st->rankings += k == EV_RANKING;
    st->item_events += k == EV_ITEM;
    st->user_events += k == EV_USER;
}

int lm_synth_write(const lm_synth_opts *o, FILE *out, lm_synth_stats *st, char *err, size_t errsz)
{
    synth s;
    synth_event ev;
    lm_synth_stats local = {0};
    int rc = 0;
    if (synth_init(&s, o, err, errsz) < 0)
        return -1;
    for (int64_t id = 1; rc == 0 && synth_next(&s, &ev); id++) {
        stats_add(&local, ev.kind);
        if (write_event(out, &ev, id) < 0)
            rc = cm_errf(err, errsz, "synth: write: %s", strerror(errno));
    }
    synth_free(&s);
    if (rc == 0 && fflush(out) != 0)
        rc = cm_errf(err, errsz, "synth: write: %s", strerror(errno));
    if (st)
        *st = local;
    return rc;
}

int lm_synth_dataset(const lm_synth_opts *o, lm_dataset **out, char *err, size_t errsz)
{
    synth s;
    synth_event ev;
    char uid[16], iid[16];
    int64_t skipped = 0;
    *out = NULL;
    if (synth_init(&s, o, err, errsz) < 0)
        return -1;
    lm_dataset_builder *b = lm_dataset_builder_new();
    int rc = b ? 0 : cm_errf(err, errsz, "synth: out of memory");
    while (rc == 0 && synth_next(&s, &ev)) {
        if (ev.kind != EV_INTERACTION) {
            skipped++;
            continue;
        }
        snprintf(uid, sizeof uid, "u%d", ev.user + 1);
        snprintf(iid, sizeof iid, "i%d", ev.item + 1);
        rc = lm_dataset_builder_add(b, uid, iid, action_names[ev.action], ev.ts, err, errsz);
    }
    synth_free(&s);
    if (rc < 0) {
        lm_dataset_builder_free(b);
        return -1;
    }
    if (lm_dataset_builder_finish(b, out, err, errsz) < 0)
        return -1;
    (*out)->n_skipped = skipped;
    return 0;
}
