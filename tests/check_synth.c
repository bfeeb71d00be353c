/* tests/check_synth.c — the synthetic event generator (llm/synth.h).
 *
 * The output must be a pure function of the options, must be valid events
 * of the schema that lm_dataset_load reads back into exactly the dataset
 * lm_synth_dataset builds, and must carry the planted structure: on the
 * leave-one-out test targets, "the most frequent successor of the previous
 * item" (counted on training events) beats popularity by a wide margin. */
#include "llm/synth.h"

#include "common/err.h"
#include "llm/dataset.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PATH_LEN 512

static char tmp_root[] = "/tmp/check_synth.XXXXXX"; /* made by main() */

/* The JSON lines of `o` in memory; *len gets their size. */
static char *synth_text(const lm_synth_opts *o, size_t *len, lm_synth_stats *st)
{
    char err[CM_ERRSZ] = "", *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    ck_assert_ptr_nonnull(f);
    ck_assert_msg(lm_synth_write(o, f, st, err, sizeof err) == 0, "lm_synth_write: %s", err);
    ck_assert_int_eq(fclose(f), 0);
    return buf;
}

static lm_dataset *synth_dataset(const lm_synth_opts *o)
{
    char err[CM_ERRSZ] = "";
    lm_dataset *d = NULL;
    ck_assert_msg(lm_synth_dataset(o, &d, err, sizeof err) == 0, "lm_synth_dataset: %s", err);
    return d;
}

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

START_TEST(test_options)
{
    static const struct {
        const char *what;
        lm_synth_opts o;
        const char *fragment;
    } bad[] = {
        {"no users", {0, 10, 2, 1, 2, 1.0, 0.5, 1}, "users is 0"},
        {"no items", {10, 0, 1, 1, 2, 1.0, 0.5, 1}, "items is 0"},
        {"more groups than items", {10, 5, 6, 1, 2, 1.0, 0.5, 1}, "groups is 6"},
        {"min-len 0", {10, 10, 2, 0, 2, 1.0, 0.5, 1}, "lengths 0..2"},
        {"min-len > max-len", {10, 10, 2, 5, 2, 1.0, 0.5, 1}, "lengths 5..2"},
        {"negative zipf", {10, 10, 2, 1, 2, -1.0, 0.5, 1}, "zipf is -1"},
        {"follow above 1", {10, 10, 2, 1, 2, 1.0, 1.5, 1}, "follow is 1.5"},
    };
    char err[CM_ERRSZ];
    lm_synth_opts o;
    lm_dataset *d = (lm_dataset *)&o; /* must be reset to NULL on failure */
    lm_synth_defaults(&o);
    ck_assert_int_eq(lm_synth_check(&o, err, sizeof err), 0);
    printf("defaults: %d users, %d items, %d groups, lengths %d..%d, zipf %g, follow %g, seed %llu\n",
           o.n_users, o.n_items, o.n_groups, o.min_len, o.max_len, o.zipf, o.p_follow,
           (unsigned long long)o.seed);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        ck_assert_int_eq(lm_synth_check(&bad[i].o, err, sizeof err), -1);
        printf("%-22s -> %s\n", bad[i].what, err);
        ck_assert_msg(strstr(err, bad[i].fragment), "%s: \"%s\" lacks \"%s\"", bad[i].what, err,
                      bad[i].fragment);
        ck_assert_int_eq(lm_synth_write(&bad[i].o, stdout, NULL, err, sizeof err), -1);
        ck_assert_int_eq(lm_synth_dataset(&bad[i].o, &d, err, sizeof err), -1);
        ck_assert_ptr_null(d);
    }
}
END_TEST

START_TEST(test_determinism)
{
    lm_synth_opts o;
    size_t n1, n2, n3;
    lm_synth_defaults(&o);
    char *a = synth_text(&o, &n1, NULL), *b = synth_text(&o, &n2, NULL);
    o.seed = 2;
    char *c = synth_text(&o, &n3, NULL);
    printf("seed 1: %zu bytes twice, %s; seed 2: %zu bytes, %s from seed 1\n", n1,
           n1 == n2 && memcmp(a, b, n1) == 0 ? "identical" : "DIFFERENT", n3,
           n1 == n3 && memcmp(a, c, n1) == 0 ? "IDENTICAL" : "different");
    ck_assert_msg(n1 == n2 && memcmp(a, b, n1) == 0, "same seed, different output");
    ck_assert_msg(n1 != n3 || memcmp(a, c, n1) != 0, "different seeds, same output");
    free(a);
    free(b);
    free(c);
}
END_TEST

/* Event counts, per-user lengths and time order, from the text itself. */
START_TEST(test_counts)
{
    lm_synth_opts o;
    lm_synth_stats st;
    size_t len;
    lm_synth_defaults(&o);
    double t0 = seconds();
    char *text = synth_text(&o, &len, &st);
    double dt = seconds() - t0;
    printf("%d users: %lld interactions, %lld rankings, %lld user events, %lld item events, "
           "%zu bytes in %.1f ms\n", o.n_users, (long long)st.interactions, (long long)st.rankings,
           (long long)st.user_events, (long long)st.item_events, len, dt * 1e3);
    int64_t *per_user = calloc((size_t)o.n_users + 1, sizeof *per_user);
    long long *last_ts = calloc((size_t)o.n_users + 1, sizeof *last_ts);
    ck_assert_ptr_nonnull(per_user);
    ck_assert_ptr_nonnull(last_ts);
    lm_synth_stats seen = {0};
    long long prev_ts = 0;
    for (char *line = text, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        ck_assert_ptr_nonnull(nl);
        *nl = '\0'; /* sscanf measures its input: keep it to one line */
        long long ts;
        int u;
        char *p = strstr(line, "\"timestamp\":");
        /* Check records the place of every ck_assert: hot loops test with if */
        if (!p || sscanf(p, "\"timestamp\":%lld", &ts) != 1)
            ck_abort_msg("no timestamp: %s", line);
        if (ts < prev_ts)
            ck_abort_msg("stream out of time order at %s", line);
        prev_ts = ts;
        if (strncmp(line, "{\"event\":\"interaction\"", 22) == 0) {
            seen.interactions++;
            p = strstr(line, "\"user\":\"u");
            if (!p || sscanf(p, "\"user\":\"u%d\"", &u) != 1 || u < 1 || u > o.n_users)
                ck_abort_msg("bad user: %s", line);
            if (ts <= last_ts[u])
                ck_abort_msg("user u%d: timestamps not increasing", u);
            last_ts[u] = ts;
            per_user[u]++;
        } else if (strncmp(line, "{\"event\":\"ranking\"", 18) == 0) {
            seen.rankings++;
        } else if (strncmp(line, "{\"event\":\"user\"", 15) == 0) {
            seen.user_events++;
        } else if (strncmp(line, "{\"event\":\"item\"", 15) == 0) {
            seen.item_events++;
            if (!strstr(line, "{\"name\":\"available\",\"value\":false}"))
                ck_abort_msg("item event without availability: %s", line);
        } else {
            ck_abort_msg("unexpected line %s", line);
        }
    }
    ck_assert_int_eq(seen.interactions, st.interactions);
    ck_assert_int_eq(seen.rankings, st.rankings);
    ck_assert_int_eq(seen.user_events, st.user_events);
    ck_assert_int_eq(seen.item_events, st.item_events);
    ck_assert_int_eq(st.item_events, o.n_items / 100);
    ck_assert_msg(st.rankings > 0 && st.user_events > 0, "the stream must exercise the schema");
    for (int u = 1; u <= o.n_users; u++)
        if (per_user[u] < o.min_len || per_user[u] > o.max_len)
            ck_abort_msg("user u%d has %lld interactions, expected %d..%d", u,
                         (long long)per_user[u], o.min_len, o.max_len);
    ck_assert_msg(dt < 5.0, "generating took %.2f s", dt);
    free(per_user);
    free(last_ts);
    free(text);
}
END_TEST

static void assert_same_dataset(const lm_dataset *a, const lm_dataset *b)
{
    printf("read back: %d users, %d items, %d actions, %lld events, %lld skipped\n", a->n_users,
           a->n_items, a->n_actions, (long long)a->n_events, (long long)a->n_skipped);
    ck_assert_int_eq(a->n_users, b->n_users);
    ck_assert_int_eq(a->n_items, b->n_items);
    ck_assert_int_eq(a->n_actions, b->n_actions);
    ck_assert_int_eq(a->n_events, b->n_events);
    ck_assert_int_eq(a->n_skipped, b->n_skipped);
    size_t ne = (size_t)a->n_events;
    ck_assert(memcmp(a->user_off, b->user_off, ((size_t)a->n_users + 1) * sizeof *a->user_off) == 0);
    ck_assert(memcmp(a->items, b->items, ne * sizeof *a->items) == 0);
    ck_assert(memcmp(a->actions, b->actions, ne) == 0);
    ck_assert(memcmp(a->ts, b->ts, ne * sizeof *a->ts) == 0);
    for (int u = 0; u < a->n_users; u++)
        if (strcmp(a->user_ids[u], b->user_ids[u]) != 0)
            ck_abort_msg("user %d: %s != %s", u, a->user_ids[u], b->user_ids[u]);
    for (int r = 0; r < a->n_items; r++)
        if (strcmp(a->item_ids[r], b->item_ids[r]) != 0)
            ck_abort_msg("item row %d: %s != %s", r, a->item_ids[r], b->item_ids[r]);
    for (int k = 0; k < a->n_actions; k++)
        ck_assert_str_eq(a->action_names[k], b->action_names[k]);
    ck_assert_ptr_null(a->item_titles);
    ck_assert_ptr_null(b->item_titles);
}

static void roundtrip(const lm_synth_opts *o, const char *name)
{
    char path[PATH_LEN], err[CM_ERRSZ] = "";
    lm_synth_stats st;
    lm_dataset *from_text = NULL, *direct = synth_dataset(o);
    snprintf(path, sizeof path, "%s/%s", tmp_root, name);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    ck_assert_msg(lm_synth_write(o, f, &st, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_msg(lm_dataset_load(&from_text, path, LM_DATA_AUTO, err, sizeof err) == 0,
                  "lm_dataset_load %s: %s", path, err);
    assert_same_dataset(from_text, direct);
    ck_assert_int_eq(from_text->n_events, st.interactions);
    ck_assert_int_eq(from_text->n_skipped, st.rankings + st.user_events + st.item_events);
    lm_dataset_free(from_text);
    lm_dataset_free(direct);
}

START_TEST(test_roundtrip)
{
    lm_synth_opts o;
    lm_synth_defaults(&o);
    roundtrip(&o, "defaults.jsonl");
}
END_TEST

/* Degenerate shapes: one group, one item, a catalog under 100 items. */
START_TEST(test_small)
{
    lm_synth_opts o;
    lm_synth_defaults(&o);
    o.n_users = 7;
    o.n_items = 1;
    o.n_groups = 1;
    o.min_len = o.max_len = 3;
    roundtrip(&o, "one_item.jsonl");
    o.n_items = 37;
    o.n_groups = 37;
    o.min_len = 1;
    o.zipf = 0.0;
    o.p_follow = 1.0;
    roundtrip(&o, "small.jsonl");
}
END_TEST

/* Write errors are reported, not lost in stdio's buffer. */
START_TEST(test_write_error)
{
    char err[CM_ERRSZ] = "";
    lm_synth_opts o;
    FILE *f = fopen("/dev/full", "w");
    if (!f) {
        printf("/dev/full is missing; write errors not tested\n");
        return;
    }
    lm_synth_defaults(&o);
    ck_assert_int_eq(lm_synth_write(&o, f, NULL, err, sizeof err), -1);
    printf("writing to /dev/full -> %s\n", err);
    ck_assert_msg(strstr(err, "synth: write"), "%s", err);
    fclose(f);
}
END_TEST

/* ---- planted structure ------------------------------------------------------ */

/* Full-ranking hit at 10 for one user: items other than the target that
 * the user has seen before it are excluded; ties count against the target. */
static int hit10(const lm_dataset *d, const int64_t *score, const int *seen_by, int u, int32_t target)
{
    int better = 0;
    for (int r = 1; r < d->n_items && better < 10; r++)
        if (r != target && seen_by[r] != u && score[r] >= score[target])
            better++;
    return better < 10;
}

START_TEST(test_structure)
{
    lm_synth_opts o;
    lm_synth_defaults(&o);
    lm_dataset *d = synth_dataset(&o);
    size_t ni = (size_t)d->n_items;
    int64_t *pop = calloc(ni, sizeof *pop), *succ = calloc(ni * ni, sizeof *succ);
    int64_t *score = calloc(ni, sizeof *score);
    int *seen_by = malloc(ni * sizeof *seen_by);
    ck_assert(pop && succ && score && seen_by);
    for (int u = 0; u < d->n_users; u++) {
        const int32_t *it = d->items + d->user_off[u];
        for (int k = 0; k < lm_user_train_len(d, u); k++) {
            pop[it[k]]++;
            if (k > 0)
                succ[(size_t)it[k - 1] * ni + (size_t)it[k]]++;
        }
    }
    int64_t max_pop = 0;
    for (size_t r = 0; r < ni; r++)
        max_pop = pop[r] > max_pop ? pop[r] : max_pop;
    for (size_t r = 0; r < ni; r++)
        seen_by[r] = -1;
    int users = 0, hits_pop = 0, hits_succ = 0;
    for (int u = 0; u < d->n_users; u++) {
        if (!lm_user_evaluable(d, u))
            continue;
        const int32_t *it = d->items + d->user_off[u];
        int t = lm_user_target(d, u, LM_SPLIT_TEST);
        for (int k = 0; k < t; k++)
            seen_by[it[k]] = u;
        users++;
        hits_pop += hit10(d, pop, seen_by, u, it[t]);
        /* successor counts first, popularity breaks their ties */
        for (size_t r = 0; r < ni; r++)
            score[r] = succ[(size_t)it[t - 1] * ni + r] * (max_pop + 1) + pop[r];
        hits_succ += hit10(d, score, seen_by, u, it[t]);
    }
    double hr_pop = (double)hits_pop / users, hr_succ = (double)hits_succ / users;
    printf("leave-one-out test targets, %d users, %d items, full ranking: HR@10 popularity %.4f, "
           "most frequent successor %.4f (%.1fx)\n", users, d->n_items - 1, hr_pop, hr_succ,
           hr_succ / hr_pop);
    ck_assert_int_eq(users, d->n_users);
    ck_assert_msg(hr_pop > 0.0, "popularity must hit sometimes");
    ck_assert_msg(hr_succ >= 2.0 * hr_pop, "successor HR@10 %.4f < 2 x popularity %.4f", hr_succ,
                  hr_pop);
    ck_assert_msg(hr_succ < 0.9, "successor HR@10 %.4f: the task is too easy to show learning",
                  hr_succ);
    free(pop);
    free(succ);
    free(score);
    free(seen_by);
    lm_dataset_free(d);
}
END_TEST

static Suite *synth_suite(void)
{
    Suite *s = suite_create("synth");
    TCase *tc = tcase_create("generator");
    tcase_add_test(tc, test_options);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_counts);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_small);
    tcase_add_test(tc, test_write_error);
    tcase_add_test(tc, test_structure);
    tcase_set_timeout(tc, 60); /* ASan builds are several times slower */
    suite_add_tcase(s, tc);
    return s;
}

static void remove_tmp_root(void)
{
    static const char *const files[] = {"defaults.jsonl", "one_item.jsonl", "small.jsonl"};
    char path[PATH_LEN];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tmp_root, files[i]);
        unlink(path);
    }
    rmdir(tmp_root);
}

int main(void)
{
    SRunner *sr;
    int failed;
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    sr = srunner_create(synth_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove_tmp_root();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
