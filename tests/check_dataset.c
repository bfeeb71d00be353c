/* tests/check_dataset.c — llm/dataset.h: the builder, the readers on the
 * public data sets and on hand-written files, leave-one-out, and
 * lm_dataset_align.
 *
 * The public data sets live in $RANKD_DATA_DIR, or ../shared/data relative
 * to the repository root (suites run from there). A missing file is a
 * failure, never a skip. Every malformed input has a case that checks the
 * failure and its message: the file name and line, then a fragment that
 * says what is wrong. */
#include "llm/dataset.h"

#include "common/err.h"
#include "common/strmap.h"

#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PATH_LEN 512

static char tmp_root[] = "/tmp/check_dataset.XXXXXX"; /* made by main() */

/* ---- helpers ---------------------------------------------------------------- */

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Path of a public data file; fails the test when it cannot be read. */
static void data_path(char path[PATH_LEN], const char *rel)
{
    const char *dir = getenv("RANKD_DATA_DIR");
    snprintf(path, PATH_LEN, "%s/%s", dir && *dir ? dir : "../shared/data", rel);
    ck_assert_msg(access(path, R_OK) == 0,
                  "data file %s cannot be read (%s). The data directory is $RANKD_DATA_DIR or "
                  "../shared/data from the repository root (see ../shared/data/README.md); run the "
                  "suite from the repository root", path, strerror(errno));
}

/* Writes `text` to <tmp>/<dir>/<name> (dir made when missing); the path in `path`. */
static void tmp_file(char path[PATH_LEN], const char *dir, const char *name, const char *text)
{
    snprintf(path, PATH_LEN, "%s/%s", tmp_root, dir);
    ck_assert_msg(mkdir(path, 0700) == 0 || errno == EEXIST, "mkdir %s: %s", path, strerror(errno));
    snprintf(path, PATH_LEN, "%s/%s/%s", tmp_root, dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "fopen %s: %s", path, strerror(errno));
    ck_assert_uint_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    ck_assert_int_eq(fclose(f), 0);
}

static void tmp_dir_path(char path[PATH_LEN], const char *dir)
{
    snprintf(path, PATH_LEN, "%s/%s", tmp_root, dir);
}

static lm_dataset *load_ok(const char *path, lm_data_format fmt)
{
    char err[CM_ERRSZ] = "";
    lm_dataset *d = NULL;
    ck_assert_msg(lm_dataset_load(&d, path, fmt, err, sizeof err) == 0, "lm_dataset_load %s: %s",
                  path, err);
    ck_assert_ptr_nonnull(d);
    return d;
}

/* The load must fail with a message holding `fragment`. */
static void load_fails(const char *path, lm_data_format fmt, const char *fragment)
{
    char err[CM_ERRSZ] = "";
    lm_dataset *d = (lm_dataset *)&err; /* must be reset to NULL */
    ck_assert_msg(lm_dataset_load(&d, path, fmt, err, sizeof err) == -1, "%s loaded", path);
    ck_assert_ptr_null(d);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    printf("  %-24s -> %s\n", base, err);
    ck_assert_msg(strstr(err, fragment), "message \"%s\" lacks \"%s\"", err, fragment);
}

static void add(lm_dataset_builder *b, const char *user, const char *item, const char *action,
                int64_t ts)
{
    char err[CM_ERRSZ] = "";
    ck_assert_msg(lm_dataset_builder_add(b, user, item, action, ts, err, sizeof err) == 0,
                  "add %s %s %s: %s", user, item, action, err);
}

static void add_fails(lm_dataset_builder *b, const char *user, const char *item, const char *action,
                      const char *fragment)
{
    char err[CM_ERRSZ] = "";
    ck_assert_int_eq(lm_dataset_builder_add(b, user, item, action, 0, err, sizeof err), -1);
    printf("  add(%.12s, %.12s, %.12s) -> %s\n", user ? user : "NULL", item ? item : "NULL",
           action ? action : "NULL", err);
    ck_assert_msg(strstr(err, fragment), "message \"%s\" lacks \"%s\"", err, fragment);
}

static lm_dataset *finish(lm_dataset_builder *b)
{
    char err[CM_ERRSZ] = "";
    lm_dataset *d = NULL;
    ck_assert_msg(lm_dataset_builder_finish(b, &d, err, sizeof err) == 0, "finish: %s", err);
    return d;
}

/* User u's item ids, space separated, must be `want`. */
static void assert_items(const lm_dataset *d, int u, const char *want)
{
    char got[1024] = "";
    for (int64_t e = d->user_off[u]; e < d->user_off[u + 1]; e++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s", e > d->user_off[u] ? " " : "",
                 d->item_ids[d->items[e]]);
    ck_assert_msg(strcmp(got, want) == 0, "user %s: items \"%s\", expected \"%s\"", d->user_ids[u],
                  got, want);
}

static int find_item(const lm_dataset *d, const char *id)
{
    for (int r = 1; r < d->n_items; r++)
        if (strcmp(d->item_ids[r], id) == 0)
            return r;
    return 0;
}

/* ---- strmap ----------------------------------------------------------------- */

/* Ids in insertion order, keys by length (not NUL), pointers that survive
 * growth, and a key longer than a block. */
START_TEST(test_strmap)
{
    enum { N = 100000 };
    char key[32];
    int id;
    cm_strmap *m = cm_strmap_new();
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(cm_strmap_intern(m, "first", 5, &id), 1);
    const char *first = cm_strmap_key(m, 0);
    for (int i = 1; i < N; i++) {
        int n = snprintf(key, sizeof key, "key-%d", i);
        if (cm_strmap_intern(m, key, (size_t)n, &id) != 1 || id != i)
            ck_abort_msg("key %s: id %d, expected %d", key, id, i);
    }
    ck_assert_int_eq(cm_strmap_intern(m, "key-77xyz", 6, &id), 0); /* "key-77" */
    ck_assert_int_eq(id, 77);
    ck_assert_int_eq(cm_strmap_find(m, "key-99999", 9), 99999);
    ck_assert_int_eq(cm_strmap_find(m, "key-100000", 10), -1);
    ck_assert_int_eq(cm_strmap_find(m, "", 0), -1);
    ck_assert_int_eq(cm_strmap_intern(m, "", 0, &id), 1);
    ck_assert_ptr_eq(cm_strmap_key(m, 0), first);
    ck_assert_str_eq(first, "first");
    ck_assert_str_eq(cm_strmap_key(m, 12345), "key-12345");
    char *big = malloc(3u << 20);
    memset(big, 'b', 3u << 20);
    ck_assert_int_eq(cm_strmap_intern(m, big, 3u << 20, &id), 1);
    ck_assert_int_eq(cm_strmap_find(m, big, 3u << 20), id);
    ck_assert_int_eq(cm_strmap_intern(m, "after-big", 9, &id), 1);
    ck_assert_int_eq(cm_strmap_count(m), N + 3);
    printf("  strmap: %d keys, ids in insertion order, first key still at %p\n", cm_strmap_count(m),
           (const void *)first);
    free(big);
    cm_strmap_free(m);
    cm_strmap_free(NULL);
}
END_TEST

/* ---- builder ---------------------------------------------------------------- */

START_TEST(test_builder_order)
{
    lm_dataset_builder *b = lm_dataset_builder_new();
    ck_assert_ptr_nonnull(b);
    add(b, "bob", "x", "view", 10);
    add(b, "ann", "y", "click", 5);
    add(b, "bob", "x", "click", 11);
    add(b, "cat", "z", "view", 1);
    add(b, "ann", "x", "buy", 6);
    lm_dataset *d = finish(b);
    ck_assert_int_eq(d->n_users, 3);
    ck_assert_int_eq(d->n_items, 4);
    ck_assert_int_eq(d->n_actions, 3);
    ck_assert_int_eq(d->n_events, 5);
    ck_assert_int_eq(d->n_skipped, 0);
    ck_assert_str_eq(d->user_ids[0], "bob");
    ck_assert_str_eq(d->user_ids[1], "ann");
    ck_assert_str_eq(d->user_ids[2], "cat");
    ck_assert_str_eq(d->item_ids[0], "");
    ck_assert_str_eq(d->item_ids[1], "x");
    ck_assert_str_eq(d->item_ids[2], "y");
    ck_assert_str_eq(d->item_ids[3], "z");
    ck_assert_str_eq(d->action_names[0], "view");
    ck_assert_str_eq(d->action_names[1], "click");
    ck_assert_str_eq(d->action_names[2], "buy");
    ck_assert_ptr_null(d->item_titles);
    const int64_t off[] = {0, 2, 4, 5};
    const int32_t items[] = {1, 1, 2, 1, 3};
    const uint8_t actions[] = {0, 1, 1, 2, 0};
    const int64_t ts[] = {10, 11, 5, 6, 1};
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(d->user_off[i], off[i]);
    for (int e = 0; e < 5; e++) {
        ck_assert_int_eq(d->items[e], items[e]);
        ck_assert_int_eq(d->actions[e], actions[e]);
        ck_assert_int_eq(d->ts[e], ts[e]);
    }
    lm_dataset_free(d);
}
END_TEST

/* Each user's events sorted by (ts, order added), users interleaved. */
START_TEST(test_builder_stable_sort)
{
    static const struct {
        const char *user, *item;
        int64_t ts;
    } ev[] = {
        {"u", "a", 5}, {"v", "p", 2}, {"u", "b", 3}, {"u", "c", 5}, {"v", "q", 1},
        {"u", "d", 1}, {"u", "e", 3}, {"v", "r", 1}, {"u", "f", -7}, {"w", "s", 4},
    };
    lm_dataset_builder *b = lm_dataset_builder_new();
    for (size_t i = 0; i < sizeof ev / sizeof ev[0]; i++)
        add(b, ev[i].user, ev[i].item, "view", ev[i].ts);
    lm_dataset *d = finish(b);
    assert_items(d, 0, "f d b e a c");
    assert_items(d, 1, "q r p");
    assert_items(d, 2, "s");
    const int64_t ts_u[] = {-7, 1, 3, 3, 5, 5};
    for (int k = 0; k < 6; k++)
        ck_assert_int_eq(d->ts[d->user_off[0] + k], ts_u[k]);
    printf("  u: f d b e a c; v: q r p (ties keep the order added)\n");
    lm_dataset_free(d);
}
END_TEST

START_TEST(test_builder_actions_limit)
{
    char name[16];
    lm_dataset_builder *b = lm_dataset_builder_new();
    for (int a = 0; a < 255; a++) {
        snprintf(name, sizeof name, "a%d", a);
        add(b, "u", "i", name, a);
    }
    add(b, "u", "i", "a17", 300); /* a known action is still fine */
    add_fails(b, "u2", "new", "a255", "256th");
    lm_dataset *d = finish(b); /* the refused event left no trace */
    ck_assert_int_eq(d->n_actions, 255);
    ck_assert_int_eq(d->n_users, 1);
    ck_assert_int_eq(d->n_items, 2);
    ck_assert_int_eq(d->n_events, 256);
    ck_assert_str_eq(d->action_names[254], "a254");
    ck_assert_int_eq(d->actions[254], 254);
    ck_assert_int_eq(d->actions[255], 17);
    lm_dataset_free(d);
}
END_TEST

START_TEST(test_builder_bad_ids)
{
    char long_id[300];
    memset(long_id, 'x', sizeof long_id);
    long_id[256] = '\0';
    lm_dataset_builder *b = lm_dataset_builder_new();
    add(b, "u", long_id, "view", 0); /* 256 bytes: the longest a vocabulary takes */
    long_id[256] = 'x';
    long_id[257] = '\0';
    add_fails(b, "u", long_id, "view", "257 bytes long, at most 256");
    add_fails(b, "", "i", "view", "user id is empty");
    add_fails(b, "u", "", "view", "item id is empty");
    add_fails(b, "u", "i", "", "action is empty");
    add_fails(b, "u", "a\nb", "view", "newline");
    add_fails(b, NULL, "i", "view", "without user");
    char err[CM_ERRSZ];
    ck_assert_int_eq(lm_dataset_builder_title(b, "", "t", err, sizeof err), -1);
    lm_dataset *d = finish(b);
    ck_assert_int_eq(d->n_events, 1);
    lm_dataset_free(d);
    lm_dataset_builder_free(NULL);
    lm_dataset_free(NULL);
}
END_TEST

START_TEST(test_builder_titles)
{
    char err[CM_ERRSZ] = "";
    lm_dataset_builder *b = lm_dataset_builder_new();
    ck_assert_int_eq(lm_dataset_builder_title(b, "m1", "First", err, sizeof err), 0);
    ck_assert_int_eq(lm_dataset_builder_title(b, "never", "Never seen", err, sizeof err), 0);
    add(b, "u", "m1", "5", 1);
    add(b, "u", "m2", "5", 2);
    add(b, "u", "m3", "5", 3);
    ck_assert_int_eq(lm_dataset_builder_title(b, "m3", "Third, after its event", err, sizeof err), 0);
    ck_assert_int_eq(lm_dataset_builder_title(b, "m1", "Again", err, sizeof err), -1);
    printf("  second title -> %s\n", err);
    ck_assert_msg(strstr(err, "item \"m1\" already has a title"), "%s", err);
    lm_dataset *d = finish(b);
    ck_assert_int_eq(d->n_items, 4); /* "never" has no events: not an item */
    ck_assert_ptr_nonnull(d->item_titles);
    ck_assert_str_eq(d->item_titles[0], "");
    ck_assert_str_eq(d->item_titles[1], "First");
    ck_assert_str_eq(d->item_titles[2], "");
    ck_assert_str_eq(d->item_titles[3], "Third, after its event");
    lm_dataset_free(d);

    /* titles only for items without events: the data has none */
    b = lm_dataset_builder_new();
    ck_assert_int_eq(lm_dataset_builder_title(b, "other", "Other", err, sizeof err), 0);
    add(b, "u", "m", "5", 1);
    d = finish(b);
    ck_assert_ptr_null(d->item_titles);
    lm_dataset_free(d);
}
END_TEST

START_TEST(test_builder_empty)
{
    lm_dataset *d = finish(lm_dataset_builder_new());
    ck_assert_int_eq(d->n_users, 0);
    ck_assert_int_eq(d->n_items, 1);
    ck_assert_int_eq(d->n_events, 0);
    ck_assert_int_eq(d->user_off[0], 0);
    ck_assert_str_eq(d->item_ids[0], "");
    lm_dataset_free(d);
}
END_TEST

/* A million events of 50,000 users, timestamps out of order with many
 * ties: sorted, stable, and fast enough for data sets 10x larger. */
START_TEST(test_builder_scale)
{
    enum { USERS = 50000, EVENTS = 1000000 };
    char user[16], item[16];
    int *added = calloc(USERS, sizeof *added);
    uint64_t s = 12345;
    lm_dataset_builder *b = lm_dataset_builder_new();
    char err[CM_ERRSZ] = "";
    double t0 = seconds();
    /* Check records the place of every ck_assert: hot loops test with if */
    for (int e = 0; e < EVENTS; e++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int u = (int)((s >> 33) % USERS);
        snprintf(user, sizeof user, "u%d", u);
        snprintf(item, sizeof item, "%d", added[u]++); /* the order added, per user */
        if (lm_dataset_builder_add(b, user, item, (s >> 20) & 1 ? "view" : "click",
                                   (int64_t)((s >> 40) % 16), err, sizeof err) < 0)
            ck_abort_msg("event %d: %s", e, err);
    }
    double t1 = seconds();
    lm_dataset *d = finish(b);
    double t2 = seconds();
    printf("  %d events of %d users: added in %.2f s, finished in %.2f s\n", EVENTS, d->n_users,
           t1 - t0, t2 - t1);
    ck_assert_int_eq(d->n_events, EVENTS);
    for (int u = 0; u < d->n_users; u++)
        for (int64_t e = d->user_off[u] + 1; e < d->user_off[u + 1]; e++)
            if (d->ts[e - 1] > d->ts[e] || (d->ts[e - 1] == d->ts[e] &&
                                            atoi(d->item_ids[d->items[e - 1]]) >=
                                                atoi(d->item_ids[d->items[e]])))
                ck_abort_msg("user %s: events %lld and %lld out of order", d->user_ids[u],
                             (long long)(e - 1 - d->user_off[u]), (long long)(e - d->user_off[u]));
    lm_dataset_free(d);
    free(added);
}
END_TEST

START_TEST(test_format_names)
{
    for (int f = 0; f < LM_DATA_COUNT; f++)
        ck_assert_int_eq(lm_data_format_parse(lm_data_format_name((lm_data_format)f)), f);
    ck_assert_str_eq(lm_data_format_name(LM_DATA_AUTO), "auto");
    ck_assert_str_eq(lm_data_format_name(LM_DATA_MOVIELENS), "movielens");
    ck_assert_str_eq(lm_data_format_name(LM_DATA_SEQUENCES), "sequences");
    ck_assert_str_eq(lm_data_format_name(LM_DATA_JSONL), "jsonl");
    ck_assert_int_eq(lm_data_format_parse("csv"), LM_DATA_COUNT);
    ck_assert_int_eq(lm_data_format_parse(NULL), LM_DATA_COUNT);
    ck_assert_str_eq(lm_data_format_name(LM_DATA_COUNT), "unknown");
}
END_TEST

/* ---- leave-one-out and vocabularies ----------------------------------------- */

START_TEST(test_leave_one_out)
{
    static const char *const users[] = {"one", "two", "three", "five"};
    static const int lens[] = {1, 2, 3, 5};
    char item[16];
    lm_dataset_builder *b = lm_dataset_builder_new();
    for (int u = 0; u < 4; u++)
        for (int k = 0; k < lens[u]; k++) {
            snprintf(item, sizeof item, "i%d", k);
            add(b, users[u], item, "view", k);
        }
    lm_dataset *d = finish(b);
    static const int evaluable[] = {0, 0, 1, 1}, train[] = {1, 2, 1, 3}, valid[] = {-1, -1, 1, 3},
                     test[] = {-1, -1, 2, 4};
    for (int u = 0; u < 4; u++) {
        printf("  %-5s len %d evaluable %d train %d", users[u], lm_user_len(d, u),
               lm_user_evaluable(d, u), lm_user_train_len(d, u));
        if (lm_user_evaluable(d, u))
            printf(" valid %d test %d", lm_user_target(d, u, LM_SPLIT_VALID),
                   lm_user_target(d, u, LM_SPLIT_TEST));
        printf("\n");
        ck_assert_int_eq(lm_user_len(d, u), lens[u]);
        ck_assert_int_eq(lm_user_evaluable(d, u), evaluable[u]);
        ck_assert_int_eq(lm_user_train_len(d, u), train[u]);
        if (evaluable[u]) {
            ck_assert_int_eq(lm_user_target(d, u, LM_SPLIT_VALID), valid[u]);
            ck_assert_int_eq(lm_user_target(d, u, LM_SPLIT_TEST), test[u]);
        }
    }
    lm_dataset_free(d);
}
END_TEST

START_TEST(test_align)
{
    char err[CM_ERRSZ] = "";
    int64_t unknown = -1;
    lm_dataset_builder *b = lm_dataset_builder_new();
    add(b, "u", "a", "view", 1);
    add(b, "u", "b", "view", 2);
    add(b, "v", "c", "view", 1);
    add(b, "v", "b", "view", 2);
    add(b, "v", "a", "view", 3);
    ck_assert_int_eq(lm_dataset_builder_title(b, "a", "Title A", err, sizeof err), 0);
    ck_assert_int_eq(lm_dataset_builder_title(b, "b", "Title B", err, sizeof err), 0);
    lm_dataset *d = finish(b);
    const char *vocab[] = {"ignored", "c", "x", "a", "y"};
    ck_assert_msg(lm_dataset_align(d, vocab, 5, &unknown, err, sizeof err) == 0, "%s", err);
    printf("  a,b,c onto [_, c, x, a, y]: %lld events unknown\n", (long long)unknown);
    ck_assert_int_eq(unknown, 2); /* both events of b */
    ck_assert_int_eq(d->n_items, 5);
    ck_assert_str_eq(d->item_ids[0], "");
    for (int r = 1; r < 5; r++)
        ck_assert_str_eq(d->item_ids[r], vocab[r]);
    ck_assert_str_eq(d->item_titles[0], "");
    ck_assert_str_eq(d->item_titles[1], "");
    ck_assert_str_eq(d->item_titles[2], "");
    ck_assert_str_eq(d->item_titles[3], "Title A");
    ck_assert_str_eq(d->item_titles[4], "");
    const int32_t items[] = {3, 0, 1, 0, 3};
    for (int e = 0; e < 5; e++)
        ck_assert_int_eq(d->items[e], items[e]);

    /* again, onto a vocabulary whose strings die right after the call */
    char **v2 = malloc(3 * sizeof *v2);
    v2[0] = strdup("");
    v2[1] = strdup("a");
    v2[2] = strdup("c");
    ck_assert_int_eq(lm_dataset_align(d, (const char *const *)v2, 3, &unknown, err, sizeof err), 0);
    for (int i = 0; i < 3; i++)
        free(v2[i]);
    free(v2);
    ck_assert_int_eq(unknown, 2);
    ck_assert_int_eq(d->n_items, 3);
    ck_assert_str_eq(d->item_ids[1], "a");
    ck_assert_str_eq(d->item_ids[2], "c");
    ck_assert_str_eq(d->item_titles[1], "Title A");
    const int32_t items2[] = {1, 0, 2, 0, 1};
    for (int e = 0; e < 5; e++)
        ck_assert_int_eq(d->items[e], items2[e]);

    /* bad vocabularies leave the dataset as it was */
    const char *dup[] = {"", "a", "c", "a"}, *empty[] = {"", "a", ""};
    ck_assert_int_eq(lm_dataset_align(d, dup, 4, &unknown, err, sizeof err), -1);
    printf("  duplicate -> %s\n", err);
    ck_assert_msg(strstr(err, "rows 1 and 3 both hold \"a\""), "%s", err);
    ck_assert_int_eq(lm_dataset_align(d, empty, 3, &unknown, err, sizeof err), -1);
    printf("  empty id  -> %s\n", err);
    ck_assert_msg(strstr(err, "row 2 is empty"), "%s", err);
    ck_assert_int_eq(lm_dataset_align(d, empty, 0, NULL, err, sizeof err), -1);
    ck_assert_int_eq(d->n_items, 3);
    ck_assert_str_eq(d->item_ids[2], "c");
    ck_assert_int_eq(lm_dataset_align(d, empty, 1, NULL, err, sizeof err), 0); /* row 0 only */
    ck_assert_int_eq(d->n_items, 1);
    for (int e = 0; e < 5; e++)
        ck_assert_int_eq(d->items[e], 0);
    lm_dataset_free(d);
}
END_TEST

/* ---- MovieLens ---------------------------------------------------------------- */

START_TEST(test_movielens_small)
{
    char path[PATH_LEN];
    data_path(path, "movielens-small/ratings.csv");
    data_path(path, "movielens-small/movies.csv");
    data_path(path, "movielens-small");
    double t0 = seconds();
    lm_dataset *d = load_ok(path, LM_DATA_AUTO);
    printf("  %s: %d users, %d rated movies, %lld ratings, %d actions, in %.0f ms\n", path,
           d->n_users, d->n_items - 1, (long long)d->n_events, d->n_actions,
           (seconds() - t0) * 1e3);
    ck_assert_int_eq(d->n_users, 610);
    ck_assert_int_eq(d->n_items - 1, 9724); /* movies.csv lists 9,742; 18 are never rated */
    ck_assert_int_eq(d->n_events, 100836);
    ck_assert_int_eq(d->n_skipped, 0);
    ck_assert_str_eq(d->user_ids[0], "1");
    ck_assert_str_eq(d->user_ids[609], "610");
    ck_assert_str_eq(d->item_ids[1], "1"); /* first rows: movies of the first lines */
    ck_assert_str_eq(d->item_ids[2], "3");
    ck_assert_int_eq(lm_user_len(d, 0), 232);

    /* stars rounded half up: 0.5,1 -> "1"; 1.5,2 -> "2"; ... 4.5,5 -> "5" */
    static const char *const stars[] = {"1", "2", "3", "4", "5"};
    static const int64_t want[] = {1370 + 2811, 1791 + 7551, 5550 + 20047, 13136 + 26818,
                                   8551 + 13211};
    int64_t count[256] = {0};
    for (int64_t e = 0; e < d->n_events; e++)
        count[d->actions[e]]++;
    ck_assert_int_eq(d->n_actions, 5);
    for (int s = 0; s < 5; s++) {
        int a = 0;
        while (a < d->n_actions && strcmp(d->action_names[a], stars[s]) != 0)
            a++;
        ck_assert_msg(a < d->n_actions, "no action \"%s\"", stars[s]);
        printf("  action \"%s\": %lld ratings\n", stars[s], (long long)count[a]);
        ck_assert_int_eq(count[a], want[s]);
    }

    ck_assert_ptr_nonnull(d->item_titles);
    for (int r = 1; r < d->n_items; r++)
        if (!d->item_titles[r][0])
            ck_abort_msg("movie %s has no title", d->item_ids[r]);
    ck_assert_str_eq(d->item_titles[find_item(d, "1")], "Toy Story (1995)");
    ck_assert_str_eq(d->item_titles[find_item(d, "11")], "American President, The (1995)");
    ck_assert_str_eq(d->item_titles[find_item(d, "7789")], "11'09\"01 - September 11 (2002)");
    printf("  movie 11: %s; movie 7789: %s\n", d->item_titles[find_item(d, "11")],
           d->item_titles[find_item(d, "7789")]);
    for (int u = 0; u < d->n_users; u++)
        for (int64_t e = d->user_off[u] + 1; e < d->user_off[u + 1]; e++)
            if (d->ts[e - 1] > d->ts[e])
                ck_abort_msg("user %s out of time order", d->user_ids[u]);
    lm_dataset_free(d);
}
END_TEST

/* RFC 4180 quoting, CRLF line ends, titles only for rated movies; the
 * folder and the file path give the same data. */
START_TEST(test_movielens_quoting)
{
    char path[PATH_LEN];
    tmp_file(path, "ml_quoted", "movies.csv",
             "movieId,title,genres\r\n"
             "1,\"Comma, The (1999)\",Drama\r\n"
             "2,\"He said \"\"hi\"\" (2000)\",Comedy\r\n"
             "3,\"Two\r\nLines, And Comma\",Drama\r\n"
             "4,Plain (2001),Drama\r\n"
             "5,\"Never rated\",Drama\r\n"
             "6,\"\",Drama\r\n");
    tmp_file(path, "ml_quoted", "ratings.csv",
             "userId,movieId,rating,timestamp\r\n"
             "7,4,0.5,100\r\n"
             "\r\n"
             "7,\"1\",3.5,50\r\n"
             "8,2,2.49,10\n"
             "8,3,5,20\r\n"
             "7,6,0,100");
    lm_dataset *d = load_ok(path, LM_DATA_AUTO);
    tmp_dir_path(path, "ml_quoted");
    lm_dataset *f = load_ok(path, LM_DATA_MOVIELENS);
    ck_assert_int_eq(d->n_events, f->n_events);
    lm_dataset_free(f);
    ck_assert_int_eq(d->n_users, 2);
    ck_assert_int_eq(d->n_items, 6); /* movies 4, 1, 2, 3, 6; 5 is never rated */
    ck_assert_int_eq(d->n_events, 5);
    ck_assert_str_eq(d->item_titles[find_item(d, "1")], "Comma, The (1999)");
    ck_assert_str_eq(d->item_titles[find_item(d, "2")], "He said \"hi\" (2000)");
    ck_assert_str_eq(d->item_titles[find_item(d, "3")], "Two\r\nLines, And Comma");
    ck_assert_str_eq(d->item_titles[find_item(d, "4")], "Plain (2001)");
    ck_assert_str_eq(d->item_titles[find_item(d, "6")], "");
    ck_assert_int_eq(find_item(d, "5"), 0);
    for (int r = 1; r < d->n_items; r++)
        printf("  movie %s: \"%s\"\n", d->item_ids[r], d->item_titles[r]);
    assert_items(d, 0, "1 4 6"); /* ts 50, 100, 100 (file order on the tie) */
    assert_items(d, 1, "2 3");
    const char *acts[] = {"4", "1", "0", "2", "5"}; /* 3.5 0.5 0 2.49 5, by sorted event */
    for (int e = 0; e < 5; e++)
        ck_assert_str_eq(d->action_names[d->actions[e]], acts[e]);
    lm_dataset_free(d);
}
END_TEST

static const struct {
    const char *name, *ratings, *fragment;
} bad_ratings[] = {
    {"bad header", "user,movie,rating,timestamp\n1,2,4,5\n",
     "ratings.csv:1: header is \"user,...\", expected \"userId,movieId,rating,timestamp\""},
    {"no header", "1,2,4.0,5\n", "ratings.csv:1: header is"},
    {"header columns", "userId,movieId,rating\n", "ratings.csv:1: header is"},
    {"empty file", "", "empty file"},
    {"header only", "userId,movieId,rating,timestamp\n", "holds no interactions"},
    {"rating text", "userId,movieId,rating,timestamp\n1,2,4,5\n1,3,x,6\n",
     "ratings.csv:3: rating \"x\" is not a number"},
    {"rating suffix", "userId,movieId,rating,timestamp\n1,3,4.0x,6\n",
     "ratings.csv:2: rating \"4.0x\" is not a number"},
    {"rating nan", "userId,movieId,rating,timestamp\n1,3,nan,6\n", "rating \"nan\" is not a number"},
    {"rating range", "userId,movieId,rating,timestamp\n1,3,11,6\n", "ratings.csv:2: rating 11 is outside 0..10"},
    {"missing column", "userId,movieId,rating,timestamp\n1,2,4,5\n1,3,4.0\n",
     "ratings.csv:3: expected 4 fields (userId,movieId,rating,timestamp), found 3"},
    {"extra column", "userId,movieId,rating,timestamp\n1,3,4.0,5,6\n", "ratings.csv:2: expected 4 fields"},
    {"empty user", "userId,movieId,rating,timestamp\n,3,4.0,5\n", "ratings.csv:2: field 1 (userId) is empty"},
    {"bad timestamp", "userId,movieId,rating,timestamp\n1,3,4.0,12x\n",
     "ratings.csv:2: timestamp \"12x\" is not an integer"},
    {"open quote", "userId,movieId,rating,timestamp\n1,2,4,5\n1,\"3,4.0,5\n1,4,4.0,5\n",
     "ratings.csv:3: quoted field is not closed before the end of the file"},
    {"stray quote", "userId,movieId,rating,timestamp\n1,3\"x,4.0,5\n",
     "ratings.csv:2: field 2: quote inside an unquoted field"},
    {"after quote", "userId,movieId,rating,timestamp\n1,\"3\"x,4.0,5\n",
     "ratings.csv:2: field 2: text after the closing quote"},
    {"nul byte", "userId,movieId,rating,timestamp\n1,3,4.0,5\n1,", "ratings.csv:3: line holds a NUL byte"},
};

START_TEST(test_movielens_errors)
{
    char dir[32], path[PATH_LEN];
    snprintf(dir, sizeof dir, "ml_bad_%d", _i);
    tmp_file(path, dir, "ratings.csv", bad_ratings[_i].ratings);
    if (strcmp(bad_ratings[_i].name, "nul byte") == 0) { /* strlen stopped at the NUL */
        FILE *f = fopen(path, "ab");
        ck_assert_ptr_nonnull(f);
        ck_assert_uint_eq(fwrite("\0" "3,4.0,5\n", 1, 9, f), 9);
        ck_assert_int_eq(fclose(f), 0);
    }
    printf("%s:\n", bad_ratings[_i].name);
    load_fails(path, LM_DATA_AUTO, bad_ratings[_i].fragment);
}
END_TEST

START_TEST(test_movies_errors)
{
    static const struct {
        const char *name, *movies, *fragment;
    } bad[] = {
        {"movies header", "id,name\n1,A\n", "movies.csv:1: header is \"id,...\", expected \"movieId,title\""},
        {"duplicate movie", "movieId,title,genres\n1,\"A\nB\",x\n1,C,x\n",
         "movies.csv:4: item \"1\" already has a title"},
        {"one field", "movieId,title,genres\n1\n", "movies.csv:2: expected at least 2 fields"},
    };
    char dir[32], path[PATH_LEN];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(dir, sizeof dir, "movies_bad_%zu", i);
        tmp_file(path, dir, "movies.csv", bad[i].movies);
        tmp_file(path, dir, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,5\n");
        printf("%s:\n", bad[i].name);
        load_fails(path, LM_DATA_MOVIELENS, bad[i].fragment);
    }
}
END_TEST

/* ---- sequence files ------------------------------------------------------------ */

START_TEST(test_amazon_toys)
{
    char path[PATH_LEN];
    data_path(path, "amazon-toys/Toys_and_Games.txt");
    double t0 = seconds();
    lm_dataset *d = load_ok(path, LM_DATA_AUTO);
    printf("  %s: %d users, %d items, %lld interactions, in %.0f ms\n", path, d->n_users,
           d->n_items - 1, (long long)d->n_events, (seconds() - t0) * 1e3);
    ck_assert_int_eq(d->n_users, 19412);
    ck_assert_int_eq(d->n_items - 1, 11924);
    ck_assert_int_eq(d->n_events, 167597);
    ck_assert_int_eq(d->n_actions, 1);
    ck_assert_str_eq(d->action_names[0], "interaction");
    ck_assert_ptr_null(d->item_titles);
    /* the file's ids are dense and in order of first appearance, so rows are ids */
    char id[16];
    for (int r = 1; r < d->n_items; r++) {
        snprintf(id, sizeof id, "%d", r);
        if (strcmp(d->item_ids[r], id) != 0)
            ck_abort_msg("row %d holds item %s", r, d->item_ids[r]);
    }
    /* every user's sequence in file order, timestamps its positions */
    FILE *f = fopen(path, "r");
    char *line = NULL, *save;
    size_t cap = 0;
    int u = 0;
    while (getline(&line, &cap, f) > 0) {
        const char *user = strtok_r(line, " \n", &save);
        if (u >= d->n_users || strcmp(d->user_ids[u], user) != 0)
            ck_abort_msg("line %d: user %s, dataset user %s", u + 1, user,
                         u < d->n_users ? d->user_ids[u] : "(none)");
        int64_t e = d->user_off[u];
        for (char *tok; (tok = strtok_r(NULL, " \n", &save)); e++)
            if (e >= d->user_off[u + 1] || strcmp(d->item_ids[d->items[e]], tok) != 0 ||
                d->ts[e] != e - d->user_off[u])
                ck_abort_msg("user %s: event %lld differs from the file", user,
                             (long long)(e - d->user_off[u]));
        if (e != d->user_off[u + 1])
            ck_abort_msg("user %s: %lld events, the file has %lld", user,
                         (long long)lm_user_len(d, u), (long long)(e - d->user_off[u]));
        u++;
    }
    ck_assert_int_eq(u, d->n_users);
    free(line);
    fclose(f);
    lm_dataset_free(d);
}
END_TEST

START_TEST(test_sequences)
{
    char path[PATH_LEN];
    tmp_file(path, "seq", "small.txt", "a 1 2 3\n\nb 2 4\t5\r\nc\n  d 9  1 \n\t\n");
    lm_dataset *d = load_ok(path, LM_DATA_AUTO);
    ck_assert_int_eq(d->n_users, 3); /* c has no items */
    ck_assert_int_eq(d->n_items, 7);
    ck_assert_int_eq(d->n_events, 8);
    ck_assert_str_eq(d->user_ids[2], "d");
    assert_items(d, 0, "1 2 3");
    assert_items(d, 1, "2 4 5");
    assert_items(d, 2, "9 1");
    static const int64_t pos[] = {0, 1, 2, 0, 1, 2, 0, 1}; /* positions in the line */
    for (int e = 0; e < 8; e++)
        ck_assert_int_eq(d->ts[e], pos[e]);
    lm_dataset_free(d);

    printf("sequence errors:\n");
    tmp_file(path, "seq", "dup.txt", "a 1\nb 2\n\na 3\n");
    load_fails(path, LM_DATA_SEQUENCES, "dup.txt:4: user \"a\" already has a line (line 1)");
    tmp_file(path, "seq", "dup_empty.txt", "a\nb 2\na 3\n");
    load_fails(path, LM_DATA_SEQUENCES, "dup_empty.txt:3: user \"a\" already has a line (line 1)");
    tmp_file(path, "seq", "users_only.txt", "a\nb\n");
    load_fails(path, LM_DATA_SEQUENCES, "holds no interactions (read as sequences)");
    tmp_file(path, "seq", "empty.txt", "");
    load_fails(path, LM_DATA_SEQUENCES, "holds no interactions");
}
END_TEST

/* ---- JSON lines ---------------------------------------------------------------- */

#define GOOD_EVENT "{\"event\":\"interaction\",\"id\":\"e0\",\"timestamp\":1,\"user\":\"u\",\"item\":\"i\",\"type\":\"view\"}"

START_TEST(test_jsonl)
{
    char path[PATH_LEN];
    tmp_file(path, "jsonl", "good.jsonl",
             "{\"event\":\"interaction\",\"id\":\"e1\",\"timestamp\":1700000000500,\"user\":\"u1\",\"item\":\"i9\",\"type\":\"click\"}\n"
             "{\"event\":\"ranking\",\"id\":\"r1\",\"timestamp\":1700000000000,\"user\":\"u1\",\"items\":[{\"id\":\"i3\"},{\"id\":\"i7\"}]}\n"
             "\n"
             "  \t \r\n"
             "{\"event\":\"item\",\"id\":\"e2\",\"timestamp\":1700000000000,\"item\":\"i9\",\"fields\":[{\"name\":\"available\",\"value\":false}]}\r\n"
             "{\"event\":\"user\",\"id\":\"e3\",\"timestamp\":1700000000000,\"user\":\"u1\",\"fields\":[]}\n"
             "{\"timestamp\":1700000000000,\"user\":\"u2\",\"item\":\"i3\",\"type\":\"view\",\"event\":\"interaction\",\"extra\":{\"x\":1}}\n"
             "  {\"event\":\"interaction\",\"id\":\"e5\",\"timestamp\":1700000000000,\"user\":\"u1\",\"item\":\"i3\",\"type\":\"view\"}  \n"
             "{\"event\":\"interaction\",\"id\":\"e6\",\"timestamp\":-5,\"user\":\"u2\",\"item\":\"\\u00e9\",\"type\":\"view\"}");
    lm_dataset *d = load_ok(path, LM_DATA_AUTO);
    printf("  good.jsonl: %d users, %d items, %lld interactions, %lld skipped\n", d->n_users,
           d->n_items - 1, (long long)d->n_events, (long long)d->n_skipped);
    ck_assert_int_eq(d->n_users, 2);
    ck_assert_int_eq(d->n_items, 4);
    ck_assert_int_eq(d->n_events, 4);
    ck_assert_int_eq(d->n_skipped, 3);
    ck_assert_int_eq(d->n_actions, 2);
    assert_items(d, 0, "i3 i9");
    assert_items(d, 1, "\xc3\xa9 i3");
    ck_assert_int_eq(d->ts[0], 1700000000000);
    ck_assert_int_eq(d->ts[1], 1700000000500);
    ck_assert_str_eq(d->action_names[d->actions[1]], "click");
    lm_dataset_free(d);
}
END_TEST

static const struct {
    const char *name, *line, *fragment;
} bad_events[] = {
    {"not JSON", "{\"event\":\"interaction\",", "not JSON"},
    {"not an object", "[1,2]", "event is an array, expected an object"},
    {"duplicate key", "{\"event\":\"user\",\"event\":\"user\"}", "not JSON: duplicate object key"},
    {"no event", "{\"id\":\"x\"}", "field \"event\" is missing"},
    {"event number", "{\"event\":5}", "field \"event\" must be a string, not an integer"},
    {"unknown event", "{\"event\":\"purchase\",\"user\":\"u\"}", "unknown event type \"purchase\""},
    {"no user", "{\"event\":\"interaction\",\"timestamp\":1,\"item\":\"i\",\"type\":\"view\"}",
     "field \"user\" is missing"},
    {"no item", "{\"event\":\"interaction\",\"timestamp\":1,\"user\":\"u\",\"type\":\"view\"}",
     "field \"item\" is missing"},
    {"no type", "{\"event\":\"interaction\",\"timestamp\":1,\"user\":\"u\",\"item\":\"i\"}",
     "field \"type\" is missing"},
    {"no timestamp", "{\"event\":\"interaction\",\"user\":\"u\",\"item\":\"i\",\"type\":\"view\"}",
     "field \"timestamp\" is missing"},
    {"user number", "{\"event\":\"interaction\",\"timestamp\":1,\"user\":7,\"item\":\"i\",\"type\":\"view\"}",
     "field \"user\" must be a string, not an integer"},
    {"item null", "{\"event\":\"interaction\",\"timestamp\":1,\"user\":\"u\",\"item\":null,\"type\":\"view\"}",
     "field \"item\" must be a string, not null"},
    {"timestamp string", "{\"event\":\"interaction\",\"timestamp\":\"1\",\"user\":\"u\",\"item\":\"i\",\"type\":\"view\"}",
     "field \"timestamp\" must be an integer (ms), not a string"},
    {"timestamp real", "{\"event\":\"interaction\",\"timestamp\":1.5,\"user\":\"u\",\"item\":\"i\",\"type\":\"view\"}",
     "field \"timestamp\" must be an integer (ms), not a real number"},
    {"empty item", "{\"event\":\"interaction\",\"timestamp\":1,\"user\":\"u\",\"item\":\"\",\"type\":\"view\"}",
     "item id is empty"},
};

/* The bad event on line 3, after a good one and a blank line. */
START_TEST(test_jsonl_errors)
{
    char name[32], path[PATH_LEN], text[1024], want[PATH_LEN];
    snprintf(name, sizeof name, "bad_%d.jsonl", _i);
    snprintf(text, sizeof text, GOOD_EVENT "\n\n%s\n" GOOD_EVENT "\n", bad_events[_i].line);
    tmp_file(path, "jsonl_bad", name, text);
    printf("%s:\n", bad_events[_i].name);
    snprintf(want, sizeof want, "%s:3: ", name);
    load_fails(path, LM_DATA_JSONL, want);
    load_fails(path, LM_DATA_JSONL, bad_events[_i].fragment);
}
END_TEST

/* Lines up to 1 MiB are events; a longer one is an error, with or without
 * a newline after it. */
START_TEST(test_jsonl_line_limit)
{
    enum { MIB = 1 << 20 };
    char path[PATH_LEN];
    char *text = malloc(2 * MIB + 1024);
    ck_assert_ptr_nonnull(text);
    size_t n = strlen(GOOD_EVENT);
    strcpy(text, GOOD_EVENT "\n");
    memcpy(text + n + 1, GOOD_EVENT, n - 1);         /* the same event without its "}" */
    memset(text + 2 * n, ' ', MIB - n);              /* spaces up to exactly 1 MiB ... */
    strcpy(text + n + 1 + MIB - 1, "}\n");           /* ... with the "}" */
    tmp_file(path, "jsonl_limit", "mib.jsonl", text);
    lm_dataset *d = load_ok(path, LM_DATA_JSONL);
    ck_assert_int_eq(d->n_events, 2);
    lm_dataset_free(d);
    printf("a line of exactly %d bytes: read\n", MIB);

    strcpy(text + n + 1 + MIB - 1, " }\n");
    tmp_file(path, "jsonl_limit", "over.jsonl", text);
    load_fails(path, LM_DATA_JSONL, "over.jsonl:2: line is longer than 1048576 bytes");
    memset(text + n + 1, ' ', 2 * MIB); /* no newline until far beyond the limit */
    text[n + 1 + 2 * MIB] = '\0';
    tmp_file(path, "jsonl_limit", "endless.jsonl", text);
    load_fails(path, LM_DATA_JSONL, "endless.jsonl:2: line is longer than 1048576 bytes");
    free(text);
}
END_TEST

/* ---- format detection ------------------------------------------------------------ */

START_TEST(test_detection)
{
    char path[PATH_LEN];
    tmp_file(path, "detect", "events.JSONL", GOOD_EVENT "\n");
    lm_dataset *d = load_ok(path, LM_DATA_AUTO);
    ck_assert_str_eq(d->user_ids[0], "u");
    lm_dataset_free(d);
    tmp_file(path, "detect", "events.txt", GOOD_EVENT "\n");
    d = load_ok(path, LM_DATA_JSONL); /* the format given wins over the name */
    ck_assert_int_eq(d->n_events, 1);
    lm_dataset_free(d);

    printf("detection errors:\n");
    /* by name a sequence file, whose one line is a "user" with no items */
    load_fails(path, LM_DATA_AUTO, "events.txt: holds no interactions (read as sequences)");
    tmp_dir_path(path, "detect");
    load_fails(path, LM_DATA_AUTO, "detect: folder holds no ratings.csv");
    load_fails(path, LM_DATA_SEQUENCES, "is a folder; only MovieLens data");
    tmp_dir_path(path, "no-such-file.txt");
    load_fails(path, LM_DATA_AUTO, "no-such-file.txt: No such file or directory");
    tmp_file(path, "detect", "events.jsonl", GOOD_EVENT "\n");
    load_fails(path, LM_DATA_COUNT, "invalid data format");
    load_fails(path, LM_DATA_MOVIELENS, "events.jsonl:1: ");
}
END_TEST

static Suite *dataset_suite(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("builder");
    tcase_add_test(tc, test_strmap);
    tcase_add_test(tc, test_builder_order);
    tcase_add_test(tc, test_builder_stable_sort);
    tcase_add_test(tc, test_builder_actions_limit);
    tcase_add_test(tc, test_builder_bad_ids);
    tcase_add_test(tc, test_builder_titles);
    tcase_add_test(tc, test_builder_empty);
    tcase_add_test(tc, test_builder_scale);
    tcase_add_test(tc, test_format_names);
    tcase_add_test(tc, test_leave_one_out);
    tcase_add_test(tc, test_align);
    tcase_set_timeout(tc, 60); /* ASan builds are several times slower */
    suite_add_tcase(s, tc);

    tc = tcase_create("readers");
    tcase_add_test(tc, test_movielens_small);
    tcase_add_test(tc, test_movielens_quoting);
    tcase_add_loop_test(tc, test_movielens_errors, 0, sizeof bad_ratings / sizeof bad_ratings[0]);
    tcase_add_test(tc, test_movies_errors);
    tcase_add_test(tc, test_amazon_toys);
    tcase_add_test(tc, test_sequences);
    tcase_add_test(tc, test_jsonl);
    tcase_add_loop_test(tc, test_jsonl_errors, 0, sizeof bad_events / sizeof bad_events[0]);
    tcase_add_test(tc, test_jsonl_line_limit);
    tcase_add_test(tc, test_detection);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(void)
{
    SRunner *sr;
    int failed;
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    sr = srunner_create(dataset_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(tmp_root, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
