/* tests/check_rescore.c — `rankd rescore` against real components on
 * loopback: a redis-server holding the users' histories, the Kafka mock
 * cluster, the model core as the judge of every score. Covers file in and
 * out (given candidates and retrieval), bad lines reported with their line
 * and skipped, crashes at each step of a checkpoint followed by a resume
 * (no duplicates, no gaps), a clean stop, SCAN input, Kafka in and out, and
 * the binary stopped by SIGINT and run again. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "features/fs.h"
#include "llm/forward.h"
#include "llm/train_model.h"
#include "ranker/rk_scorer.h"
#include "service/config.h"
#include "service/rankreq.h"
#include "service/rescore.h"
#include "tests/harness_kafka.h"
#include "tests/harness_redis.h"
#include "tests/harness_model.h"
#include "tests/testutil.h"

#define N_ITEMS 40
#define K 5
#define RETRIEVE 20
#define MAX_HIST 8
#define N_USERS 12
#define TOL 1e-4

static char model_path[TU_PATH], config_path[TU_PATH];

/* ---- the world: a model, Redis with histories, a config ---------------------------------- */


/* The history of user u: 1 + u % 6 interactions, the items seen. */
static int hist_len(int u) { return 1 + u % 6; }
static int hist_item(int u, int j) { return 1 + (u * 7 + j * 3) % N_ITEMS; }
static int hist_action(int u, int j) { return (u + j) % 3; }
static const char *const ACTIONS[3] = {"view", "click", "purchase"};

static void write_histories(const th_redis *rd)
{
    fs_opts fo = {.host = "127.0.0.1", .port = rd->port, .prefix = "t:", .ttl_history_s = 3600, .ttl_seen_s = 3600,
                  .ttl_item_s = 3600, .ttl_user_s = 3600, .timeout_ms = 2000, .max_hist = MAX_HIST};
    fs_store *fs;
    char err[CM_ERRSZ];
    ck_assert_msg(fs_open(&fs, &fo, err, sizeof err) == 0, "%s", err);
    fs_batch *b = fs_batch_new(fs, 256);
    for (int u = 0; u < N_USERS; u++) {
        char user[16], item[16], id[32];
        snprintf(user, sizeof user, "u%d", u);
        for (int j = 0; j < hist_len(u); j++) {
            snprintf(item, sizeof item, "i%d", hist_item(u, j));
            snprintf(id, sizeof id, "e%d-%d", u, j);
            ck_assert_int_eq(fs_batch_interaction(b, id, 1000 + j, user, item, ACTIONS[hist_action(u, j)]), 0);
        }
    }
    /* keys that are not histories: SCAN must pass them by */
    const char *names[1] = {"title"}, *values[1] = {"\"x\""};
    ck_assert_int_eq(fs_batch_item(b, "i3", 1, names, values, 1), 0);
    ck_assert_int_eq(fs_batch_user(b, "u1", names, values, 1), 0);
    ck_assert_msg(fs_batch_exec(b, err, sizeof err) == 0, "%s", err);
    fs_batch_free(b);
    fs_close(fs);
}

static void write_config(const th_redis *rd, const char *brokers)
{
    FILE *f = fopen(config_path, "w");
    ck_assert(f != NULL);
    fprintf(f, "kafka:\n  brokers: \"%s\"\n  group_id: rs-test\n  properties:\n    session.timeout.ms: \"6000\"\n"
               "redis:\n  port: %d\n  prefix: \"t:\"\n"
               "model:\n  path: \"%s\"\n  threads: 1\n  device: cpu\n"
               "ranking:\n  retrieve_n: %d\n  k: %d\n  max_candidates: 16\n"
               "logging:\n  level: warn\n",
            brokers ? brokers : "127.0.0.1:1", rd->port, model_path, RETRIEVE, K);
    fclose(f);
}

static void setup_world(th_redis *rd, const char *brokers)
{
    snprintf(model_path, sizeof model_path, "%s/model.safetensors", tu_tmp_root());
    snprintf(config_path, sizeof config_path, "%s/rankd.yaml", tu_tmp_root());
    th_write_model(model_path, N_ITEMS, MAX_HIST, 7, 1, "rescore-test");
    th_redis_start(rd, NULL);
    write_histories(rd);
    write_config(rd, brokers);
}

/* ---- requests --------------------------------------------------------------------------------- */

/* Request q: user q % N_USERS; every third a retrieval, the others 3 to 8
 * given items, one of them unknown to the model now and then. */
static int is_retrieval(int q) { return q % 3 == 2; }
static int n_given(int q) { return 3 + q % 6; }
static void given_id(int q, int j, char *out, size_t cap)
{
    if (j == 1 && q % 4 == 0)
        snprintf(out, cap, "new-%d", q); /* not in the vocabulary: the unknown row */
    else
        snprintf(out, cap, "i%d", 1 + (q * 5 + j * 11) % N_ITEMS);
}

static int request_json(int q, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "{\"event\":\"ranking\",\"id\":\"r%d\",\"timestamp\":%d,\"user\":\"u%d\"", q, 5000 + q,
                     q % N_USERS);
    if (!is_retrieval(q)) {
        n += snprintf(buf + n, cap - (size_t)n, ",\"items\":[");
        for (int j = 0; j < n_given(q); j++) {
            char id[32];
            given_id(q, j, id, sizeof id);
            n += snprintf(buf + n, cap - (size_t)n, "%s{\"id\":\"%s\"}", j ? "," : "", id);
        }
        n += snprintf(buf + n, cap - (size_t)n, "]");
    }
    return n + snprintf(buf + n, cap - (size_t)n, "}");
}

/* n requests, one a line; with bad lines among them when `bad` (their
 * line numbers in bad_lines). Returns the number of bad lines. */
static const char *const BAD[] = {
    "{not json",
    "{\"event\":\"ranking\",\"id\":\"b1\",\"timestamp\":1,\"items\":[{\"id\":\"i1\"}]}",
    "{\"event\":\"interaction\",\"id\":\"b2\",\"timestamp\":1,\"user\":\"u1\",\"item\":\"i2\",\"type\":\"click\"}",
    "{\"event\":\"ranking\",\"id\":\"b3\",\"timestamp\":1,\"user\":\"u1\",\"items\":\"i1\"}",
};
#define N_BAD 4

static int write_requests(const char *path, int n, int bad, int *bad_lines)
{
    FILE *f = fopen(path, "w");
    ck_assert(f != NULL);
    int line = 0, nb = 0;
    char buf[2048];
    for (int q = 0; q < n; q++) {
        if (bad && q % 7 == 3 && nb < N_BAD) {
            fprintf(f, "%s\n", BAD[nb]);
            bad_lines[nb++] = ++line;
        }
        request_json(q, buf, sizeof buf);
        fprintf(f, "%s\n", buf);
        line++;
    }
    fclose(f);
    return nb;
}

/* ---- the model core's answers --------------------------------------------------------------------- */

typedef struct judge {
    svc_model sm;
    lm_scorer *sc;
    rk_scorer *rk;
} judge;

static void judge_open(judge *j)
{
    char err[CM_ERRSZ];
    ck_assert_msg(svc_model_load(&j->sm, model_path, err, sizeof err) == 0, "%s", err);
    lm_scorer_opts so = {.max_batch = 1, .max_cands = 16, .threads = 1, .isa = LM_ISA_COUNT};
    ck_assert_msg(lm_scorer_new(&j->sc, j->sm.m, &so, err, sizeof err) == 0, "%s", err);
    rk_scorer_opts ro = {.max_batch = 1, .max_cands = 16, .max_k = K, .max_exclude = 64, .retrieve_n = RETRIEVE,
                         .threads = 1, .device = "cpu"};
    ck_assert_msg(rk_scorer_new(&j->rk, j->sm.m, &ro, err, sizeof err) == 0, "%s", err);
}

static void judge_close(judge *j)
{
    lm_scorer_free(j->sc);
    rk_scorer_free(j->rk);
    svc_model_free(&j->sm);
}

typedef struct answer {
    char items[16][32];
    float scores[16];
    int n;
} answer;

static void user_history(const judge *j, int u, int32_t *hist, int32_t *acts, int32_t *seen, int *n_seen)
{
    *n_seen = 0;
    for (int i = 0; i < hist_len(u); i++) {
        hist[i] = hist_item(u, i);
        acts[i] = svc_model_action(&j->sm, ACTIONS[hist_action(u, i)]);
        int dup = 0;
        for (int s = 0; s < *n_seen; s++)
            dup |= seen[s] == hist[i];
        if (!dup)
            seen[(*n_seen)++] = hist[i];
    }
}

/* Given items: the ranking head's scores from the model core's forward
 * pass plus each item's retrieval logit, the top K of them. Retrieval:
 * the scorer on this one request alone, the user's seen items excluded. */
static void expect(const judge *j, int q, int u, answer *a)
{
    int ns;
    int32_t hist[MAX_HIST], acts[MAX_HIST], seen[MAX_HIST];
    user_history(j, u, hist, acts, seen, &ns);
    char err[CM_ERRSZ];
    memset(a, 0, sizeof *a);
    if (q < 0 || is_retrieval(q)) {
        int32_t items[K];
        rk_request r = {.hist_items = hist, .hist_actions = acts, .n_hist = hist_len(u), .exclude = seen,
                        .n_exclude = ns, .k = K, .out_items = items, .out_scores = a->scores};
        ck_assert_msg(rk_scorer_rank(j->rk, &r, 1, err, sizeof err) == 0, "%s", err);
        a->n = r.n_out;
        for (int i = 0; i < a->n; i++)
            snprintf(a->items[i], sizeof a->items[i], "%s", j->sm.m->item_ids[items[i]]);
        return;
    }
    int m = n_given(q), d = j->sm.m->cfg.d_model;
    int32_t cands[16];
    char ids[16][32];
    float head[16], uv[64], row[64], logit[16];
    for (int c = 0; c < m; c++) {
        given_id(q, c, ids[c], sizeof ids[c]);
        cands[c] = svc_model_item(&j->sm, ids[c]);
    }
    lm_request lr = {.hist_items = hist, .hist_actions = acts, .n_hist = hist_len(u), .cands = cands, .n_cands = m,
                     .scores = head, .user_vec = uv};
    ck_assert_msg(lm_scorer_run(j->sc, &lr, 1, err, sizeof err) == 0, "%s", err);
    for (int c = 0; c < m; c++) {
        lm_model_item_row(j->sm.m, cands[c], row);
        double dot = 0;
        for (int i = 0; i < d; i++)
            dot += (double)uv[i] * row[i];
        logit[c] = head[c] + (float)dot;
    }
    int order[16];
    tu_top_positions(logit, m, m < K ? m : K, order);
    a->n = m < K ? m : K;
    for (int i = 0; i < a->n; i++) {
        snprintf(a->items[i], sizeof a->items[i], "%s", ids[order[i]]);
        a->scores[i] = logit[order[i]];
    }
}

/* Compares one output line with the model core's answer to request q, or
 * (q < 0) to a retrieval for user u; returns the worst score difference. */
static double check_user_line(const judge *j, json_t *o, int q, int u)
{
    answer a;
    expect(j, q, u, &a);
    json_t *items = json_object_get(o, "items");
    ck_assert_msg(json_is_array(items) && (int)json_array_size(items) == a.n, "r%d: %zu items, the model core has %d",
                  q, json_array_size(items), a.n);
    ck_assert_str_eq(json_string_value(json_object_get(o, "model")), j->sm.tag);
    double worst = 0;
    for (int i = 0; i < a.n; i++) {
        json_t *it = json_array_get(items, (size_t)i);
        const char *id = json_string_value(json_object_get(it, "item"));
        ck_assert_msg(id && !strcmp(id, a.items[i]), "r%d position %d: %s, the model core says %s", q, i,
                      id ? id : "(none)", a.items[i]);
        worst = fmax(worst, fabs(json_number_value(json_object_get(it, "score")) - a.scores[i]));
    }
    return worst;
}

static double check_line(const judge *j, json_t *o, int q) { return check_user_line(j, o, q, q % N_USERS); }

/* ---- reading outputs ------------------------------------------------------------------------------ */

/* The request number of each line of a file output, in order; every line
 * must be JSON with an id "r<q>". Returns the number of lines. */
static int read_output(const char *path, int *qs, int cap, json_t **objs)
{
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t lcap = 0;
    int n = 0;
    while (getline(&line, &lcap, f) > 0) {
        json_t *o = json_loads(line, 0, NULL);
        ck_assert_msg(o != NULL, "%s line %d is not JSON: %s", path, n + 1, line);
        const char *id = json_string_value(json_object_get(o, "id"));
        ck_assert_msg(id && id[0] == 'r' && n < cap, "%s line %d: id %s", path, n + 1, id ? id : "(none)");
        qs[n] = atoi(id + 1);
        if (objs)
            objs[n] = o;
        else
            json_decref(o);
        n++;
    }
    free(line);
    fclose(f);
    return n;
}

/* Every request 0..n-1 exactly once and in order. */
static void assert_exactly_once(const int *qs, int got, int n, const char *what)
{
    int dupes = 0, gaps = 0;
    for (int i = 1; i < got; i++)
        dupes += qs[i] <= qs[i - 1];
    for (int i = 0; i < got; i++)
        gaps += qs[i] != i;
    printf("%s: %d lines for %d requests, %d duplicates or out of order, %d off their place\n", what, got, n, dupes,
           gaps);
    ck_assert_int_eq(got, n);
    ck_assert_int_eq(dupes, 0);
    ck_assert_int_eq(gaps, 0);
}

/* ---- running rescore ------------------------------------------------------------------------------ */

typedef struct bads {
    int n;
    char where[16][128], reason[16][256];
} bads;

static void on_bad(void *ctx, const char *where, const char *reason)
{
    bads *b = ((void **)ctx)[0];
    if (b && b->n < 16) {
        snprintf(b->where[b->n], sizeof b->where[0], "%s", where);
        snprintf(b->reason[b->n], sizeof b->reason[0], "%s", reason);
    }
    if (b)
        b->n++;
}

/* A crash (or a stop) at point `pt` once `after` requests are read.
 * pace_ms makes every chunk take at least that long (a sleep once its
 * answers are written), so that a checkpoint_ms below it checkpoints after
 * every chunk however fast the machine: the crash points are then passed
 * where the test says, not where the clock happens to put them. */
typedef struct crash {
    svc_rescore_point pt;
    int64_t after;
    int stop_instead;
    int pace_ms;
    volatile sig_atomic_t *stop;
} crash;

static void on_hook(void *ctx, svc_rescore_point pt, int64_t read)
{
    crash *c = ((void **)ctx)[1];
    if (c && c->pace_ms && pt == SVC_RS_WRITTEN)
        th_sleep_ms(c->pace_ms);
    if (!c || pt != c->pt || read < c->after)
        return;
    if (c->stop_instead)
        *c->stop = 1;
    else
        _exit(0); /* no flush, no checkpoint: as if the power went */
}

static int rescore_run(svc_rescore_opts *o, bads *b, crash *c, svc_rescore_stats *st)
{
    svc_config cfg;
    char err[CM_ERRSZ];
    ck_assert_msg(svc_config_load(&cfg, config_path, err, sizeof err) == 0, "%s", err);
    volatile sig_atomic_t stop = 0;
    void *ctx[2] = {b, c};
    if (c)
        c->stop = &stop;
    o->on_bad = on_bad;
    o->hook = on_hook;
    o->ctx = ctx;
    int rc = svc_rescore(&cfg, o, &stop, st, err, sizeof err);
    ck_assert_msg(rc >= 0, "svc_rescore: %s", err);
    svc_config_free(&cfg);
    return rc;
}

/* In a child process, so that the crash takes only it. */
static void rescore_crash(svc_rescore_opts o, crash c)
{
    fflush(NULL);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        svc_rescore_stats st;
        rescore_run(&o, NULL, &c, &st);
        _exit(3); /* ran to the end: the crash point was never reached */
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child did not crash where asked (status %d)",
                  status);
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* ---- tests ------------------------------------------------------------------------------------------ */

START_TEST(test_file)
{
    th_redis rd;
    setup_world(&rd, NULL);
    char in[TU_PATH], out[TU_PATH];
    tu_tmp_path(in, "file.in.jsonl");
    tu_tmp_path(out, "file.out.jsonl");
    const int n = 30;
    int bad_lines[N_BAD];
    int nb = write_requests(in, n, 1, bad_lines);
    svc_rescore_opts o = {.input = in, .output = out, .batch = 8};
    bads b = {0};
    svc_rescore_stats st;
    ck_assert_int_eq(rescore_run(&o, &b, NULL, &st), 0);
    printf("file: %lld read, %lld ranked, %lld bad, %lld failed on %s\n", (long long)st.read, (long long)st.ranked,
           (long long)st.bad, (long long)st.failed, st.device);
    ck_assert_int_eq(st.read, n + nb);
    ck_assert_int_eq(st.ranked, n);
    ck_assert_int_eq(st.bad, nb);
    ck_assert_int_eq(st.failed, 0);
    /* each bad line reported with its line number and a reason */
    ck_assert_int_eq(b.n, nb);
    for (int i = 0; i < nb; i++) {
        char want[TU_PATH + 16];
        snprintf(want, sizeof want, "%s:%d", in, bad_lines[i]);
        printf("  bad line %s: %s\n", b.where[i], b.reason[i]);
        ck_assert_str_eq(b.where[i], want);
        ck_assert(b.reason[i][0] != '\0');
    }
    ck_assert_msg(strstr(b.reason[0], "JSON") || strstr(b.reason[0], "json"), "%s", b.reason[0]);
    ck_assert_msg(strstr(b.reason[1], "user"), "%s", b.reason[1]);
    ck_assert_msg(strstr(b.reason[2], "interaction"), "%s", b.reason[2]);
    ck_assert_msg(strstr(b.reason[3], "items"), "%s", b.reason[3]);
    /* every answer against the model core */
    int qs[64];
    json_t *objs[64];
    int got = read_output(out, qs, 64, objs);
    assert_exactly_once(qs, got, n, "file");
    judge j;
    judge_open(&j);
    double worst_given = 0, worst_retrieved = 0;
    int n_given_reqs = 0;
    for (int i = 0; i < got; i++) {
        double w = check_line(&j, objs[i], qs[i]);
        if (is_retrieval(qs[i]))
            worst_retrieved = fmax(worst_retrieved, w);
        else
            worst_given = fmax(worst_given, w), n_given_reqs++;
        char user[16];
        snprintf(user, sizeof user, "u%d", qs[i] % N_USERS);
        ck_assert_str_eq(json_string_value(json_object_get(objs[i], "user")), user);
        json_decref(objs[i]);
    }
    printf("file: %d given-candidate lists match the model core's forward pass + retrieval logit (items exactly, "
           "scores within %.2g); %d retrieval lists match the scorer on each request alone (within %.2g); "
           "tolerance %.0e\n", n_given_reqs, worst_given, got - n_given_reqs, worst_retrieved, TOL);
    ck_assert(worst_given < TOL && worst_retrieved < TOL);
    judge_close(&j);
    /* the same command again: complete, nothing redone */
    long size = file_size(out);
    ck_assert_int_eq(rescore_run(&o, NULL, NULL, &st), 0);
    ck_assert(st.already_complete);
    ck_assert_int_eq(file_size(out), size);
    /* an output without a checkpoint is not overwritten unless asked */
    char ck[TU_PATH + 8];
    snprintf(ck, sizeof ck, "%s.ckpt", out);
    unlink(ck);
    svc_config cfg;
    char err[CM_ERRSZ];
    ck_assert(svc_config_load(&cfg, config_path, err, sizeof err) == 0);
    volatile sig_atomic_t stop = 0;
    ck_assert_int_eq(svc_rescore(&cfg, &o, &stop, &st, err, sizeof err), -1);
    printf("file: rerun without its checkpoint refused: %s\n", err);
    ck_assert(strstr(err, "--restart"));
    svc_config_free(&cfg);
    o.restart = 1;
    ck_assert_int_eq(rescore_run(&o, NULL, NULL, &st), 0);
    ck_assert_int_eq(read_output(out, qs, 64, NULL), n); /* rewritten whole, not appended to */
    th_redis_stop(&rd);
}
END_TEST

/* The output of an interrupted run, resumed, equals one uninterrupted
 * run's: same lines in the same order (took_us aside), none twice, none
 * missing. Crashes at each point a checkpoint passes, early and late. */
static void assert_same_answers(const char *a, const char *b, int n, const char *what)
{
    int qa[256], qb[256];
    json_t *oa[256], *ob[256];
    int na = read_output(a, qa, 256, oa), nb = read_output(b, qb, 256, ob);
    assert_exactly_once(qb, nb, n, what);
    ck_assert_int_eq(na, nb);
    for (int i = 0; i < na; i++) {
        json_object_del(oa[i], "took_us");
        json_object_del(ob[i], "took_us");
        ck_assert_msg(json_equal(oa[i], ob[i]), "%s: line %d differs from the uninterrupted run's", what, i + 1);
        json_decref(oa[i]);
        json_decref(ob[i]);
    }
}

START_TEST(test_resume)
{
    th_redis rd;
    setup_world(&rd, NULL);
    char in[TU_PATH], ref[TU_PATH], out[TU_PATH];
    tu_tmp_path(in, "resume.in.jsonl");
    tu_tmp_path(ref, "resume.ref.jsonl");
    tu_tmp_path(out, "resume.out.jsonl");
    const int n = 200;
    int bad_lines[N_BAD];
    int nb = write_requests(in, n, 1, bad_lines);
    svc_rescore_stats st;
    svc_rescore_opts ro = {.input = in, .output = ref, .batch = 16};
    ck_assert_int_eq(rescore_run(&ro, NULL, NULL, &st), 0);
    static const char *const names[3] = {"written", "synced", "checkpointed"};
    for (int pt = SVC_RS_WRITTEN; pt <= SVC_RS_CHECKPOINTED; pt++) {
        for (int at = 0; at < 2; at++) {
            /* checkpoint_ms 1 and chunks of 2 ms: a checkpoint after every chunk */
            svc_rescore_opts o = {.input = in, .output = out, .batch = 16, .checkpoint_ms = 1, .restart = 1};
            crash c = {.pt = (svc_rescore_point)pt, .after = at ? 150 : 40, .pace_ms = 2};
            rescore_crash(o, c);
            long crashed_len = file_size(out);
            o.restart = 0;
            bads b = {0};
            ck_assert_int_eq(rescore_run(&o, &b, NULL, &st), 0);
            char what[96];
            snprintf(what, sizeof what, "resume after a crash at '%s' past %lld requests", names[pt],
                     (long long)c.after);
            printf("%s: output %ld bytes at the crash, resumed at request %lld, %lld bad in the whole run\n", what,
                   crashed_len, (long long)st.resumed_at, (long long)st.bad);
            /* a crash before any checkpoint but the first resumes at 0; one just after a checkpoint, there */
            ck_assert(st.resumed_at < n + nb);
            ck_assert(!st.already_complete); /* the crash came before the last checkpoint */
            if (pt == SVC_RS_CHECKPOINTED)
                ck_assert_msg(st.resumed_at >= c.after, "resumed at %lld", (long long)st.resumed_at);
            ck_assert_int_eq(st.read, n + nb);
            ck_assert_int_eq(st.ranked, n);
            ck_assert_int_eq(st.bad, nb); /* the counters survive the crash, none counted twice */
            assert_same_answers(ref, out, n, what);
        }
    }
    /* a clean stop (what SIGINT does) writes the checkpoint; the run goes on from there */
    svc_rescore_opts o = {.input = in, .output = out, .batch = 16, .restart = 1};
    crash c = {.pt = SVC_RS_WRITTEN, .after = 100, .stop_instead = 1};
    ck_assert_int_eq(rescore_run(&o, NULL, &c, &st), 1);
    int64_t stopped_at = st.read;
    o.restart = 0;
    ck_assert_int_eq(rescore_run(&o, NULL, NULL, &st), 0);
    printf("stop: stopped cleanly after %lld requests, resumed at %lld\n", (long long)stopped_at,
           (long long)st.resumed_at);
    ck_assert_int_eq(st.resumed_at, stopped_at);
    assert_same_answers(ref, out, n, "resume after a clean stop");
    /* a different input under the same checkpoint is refused */
    svc_rescore_opts other = {.input = ref, .output = out, .batch = 16};
    svc_config cfg;
    char err[CM_ERRSZ];
    ck_assert(svc_config_load(&cfg, config_path, err, sizeof err) == 0);
    volatile sig_atomic_t stop = 0;
    ck_assert_int_eq(svc_rescore(&cfg, &other, &stop, &st, err, sizeof err), -1);
    printf("resume: another input refused: %s\n", err);
    svc_config_free(&cfg);
    th_redis_stop(&rd);
}
END_TEST

/* Every user with a history in Redis, each once, each a retrieval that
 * matches the model core; across pages, and across a crash mid-page. */
static void check_scan_output(const char *path, const judge *j, const char *what)
{
    FILE *f = fopen(path, "r");
    ck_assert(f != NULL);
    char line[65536];
    int seen[N_USERS] = {0}, lines = 0;
    double worst = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        ck_assert(o != NULL);
        const char *user = json_string_value(json_object_get(o, "user"));
        ck_assert(user && user[0] == 'u');
        int u = atoi(user + 1);
        ck_assert(u >= 0 && u < N_USERS);
        ck_assert_str_eq(json_string_value(json_object_get(o, "id")), user);
        seen[u]++;
        worst = fmax(worst, check_user_line(j, o, -1, u));
        json_decref(o);
        lines++;
    }
    fclose(f);
    int once = 0;
    for (int u = 0; u < N_USERS; u++)
        once += seen[u] == 1;
    printf("%s: %d lines, %d of %d users exactly once, retrieval lists match the model core within %.2g\n", what,
           lines, once, N_USERS, worst);
    ck_assert_int_eq(once, N_USERS);
    ck_assert_int_eq(lines, N_USERS);
    ck_assert(worst < TOL);
}

START_TEST(test_scan)
{
    th_redis rd;
    setup_world(&rd, NULL);
    char out[TU_PATH];
    tu_tmp_path(out, "scan.out.jsonl");
    judge j;
    judge_open(&j);
    svc_rescore_opts o = {.scan = 1, .output = out, .batch = 3, .checkpoint_ms = 1};
    svc_rescore_stats st;
    ck_assert_int_eq(rescore_run(&o, NULL, NULL, &st), 0);
    check_scan_output(out, &j, "scan");
    ck_assert_int_eq(st.read, N_USERS);
    for (int pt = SVC_RS_WRITTEN; pt <= SVC_RS_CHECKPOINTED; pt++) {
        o.restart = 1;
        crash c = {.pt = (svc_rescore_point)pt, .after = 5};
        rescore_crash(o, c);
        o.restart = 0;
        ck_assert_int_eq(rescore_run(&o, NULL, NULL, &st), 0);
        printf("scan: crashed at point %d past 5 users, resumed at %lld\n", pt, (long long)st.resumed_at);
        check_scan_output(out, &j, "scan resumed");
    }
    judge_close(&j);
    th_redis_stop(&rd);
}
END_TEST

/* Kafka in, Kafka out (at-least-once: every request answered, duplicates
 * counted) and Kafka in, file out (exactly once across a stop). */
typedef struct kout {
    int count[256], total;
    json_t *first[256];
} kout;

static void on_kafka_output(void *ctx, const rd_kafka_message_t *m)
{
    kout *k = ctx;
    json_t *o = json_loadb(m->payload, m->len, 0, NULL);
    ck_assert(o != NULL);
    const char *id = json_string_value(json_object_get(o, "id"));
    ck_assert(id && id[0] == 'r');
    int q = atoi(id + 1);
    ck_assert(q >= 0 && q < 256);
    const char *user = json_string_value(json_object_get(o, "user"));
    ck_assert_msg(m->key_len == strlen(user) && !memcmp(m->key, user, m->key_len), "output not keyed by its user");
    k->total++;
    if (k->count[q]++ == 0)
        k->first[q] = o;
    else
        json_decref(o);
}

START_TEST(test_kafka)
{
    th_kafka k;
    static const char *const topics[] = {"req", "ranked"};
    th_kafka_start(&k, topics, 2, 2);
    th_redis rd;
    setup_world(&rd, k.brokers);
    const int n = 40;
    char buf[2048], key[16];
    for (int q = 0; q < n; q++) {
        int len = request_json(q, buf, sizeof buf);
        snprintf(key, sizeof key, "u%d", q % N_USERS);
        th_kafka_send(&k, "req", key, buf, (size_t)len);
        if (q == 10)
            th_kafka_send(&k, "req", "x", BAD[0], strlen(BAD[0]));
    }
    char ck[TU_PATH], out[TU_PATH];
    tu_tmp_path(ck, "kafka.ckpt");
    svc_rescore_opts o = {.input_topic = "req", .output_topic = "ranked", .checkpoint = ck, .batch = 8};
    bads b = {0};
    svc_rescore_stats st;
    crash c = {.pt = SVC_RS_WRITTEN, .after = 20, .stop_instead = 1};
    ck_assert_int_eq(rescore_run(&o, &b, &c, &st), 1);
    int64_t stopped = st.read;
    ck_assert_int_eq(rescore_run(&o, &b, NULL, &st), 0);
    printf("kafka: stopped after %lld messages, resumed at %lld, %lld read, %lld ranked, %lld bad (%s: %s)\n",
           (long long)stopped, (long long)st.resumed_at, (long long)st.read, (long long)st.ranked, (long long)st.bad,
           b.n ? b.where[0] : "-", b.n ? b.reason[0] : "-");
    ck_assert_int_eq(st.read, n + 1);
    ck_assert_int_eq(st.ranked, n);
    ck_assert_int_eq(st.bad, 1);
    ck_assert_msg(b.n == 1 && strstr(b.where[0], "req["), "bad message place: %s", b.where[0]);
    kout ko;
    memset(&ko, 0, sizeof ko);
    th_kafka_read_all(&k, "ranked", 2, n, 20000, on_kafka_output, &ko);
    judge j;
    judge_open(&j);
    int missing = 0;
    double worst = 0;
    for (int q = 0; q < n; q++) {
        if (!ko.count[q]) {
            missing++;
            continue;
        }
        worst = fmax(worst, check_line(&j, ko.first[q], q));
        json_decref(ko.first[q]);
    }
    printf("kafka -> kafka: %d messages for %d requests (%d duplicates: at-least-once), %d missing, scores within "
           "%.2g of the model core\n", ko.total, n, ko.total - (n - missing), missing, worst);
    ck_assert_int_eq(missing, 0);
    ck_assert(worst < TOL);
    /* the topic into a file, stopped and resumed: exactly once, in the order of each partition */
    tu_tmp_path(out, "kafka.out.jsonl");
    svc_rescore_opts fo = {.input_topic = "req", .output = out, .batch = 8};
    c = (crash){.pt = SVC_RS_WRITTEN, .after = 16, .stop_instead = 1};
    ck_assert_int_eq(rescore_run(&fo, NULL, &c, &st), 1);
    ck_assert_int_eq(rescore_run(&fo, NULL, NULL, &st), 0);
    int qs[256];
    int got = read_output(out, qs, 256, NULL);
    int count[256] = {0}, once = 0;
    for (int i = 0; i < got; i++)
        count[qs[i]]++;
    for (int q = 0; q < n; q++)
        once += count[q] == 1;
    printf("kafka -> file: %d lines, %d of %d requests exactly once\n", got, once, n);
    ck_assert_int_eq(got, n);
    ck_assert_int_eq(once, n);
    judge_close(&j);
    th_redis_stop(&rd);
    th_kafka_stop(&k);
}
END_TEST

/* The binary: SIGINT mid-run stops it with its checkpoint written (exit
 * 130), the same command finishes the job, a third says it is complete.
 * run_binary runs `rankd rescore` on in into out; with interrupt, SIGINT as
 * soon as the first answers are in out (a 20,000-request run is then far
 * from its end, on any machine). */
static int run_binary(const char *in, const char *out, int interrupt, const char *log)
{
    const char *bin = getenv("RANKD_BIN") ? getenv("RANKD_BIN") : "build/rankd";
    fflush(NULL);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 2);
        execl(bin, bin, "rescore", "--config", config_path, "--input", in, "--output", out, "--batch", "32",
              "--progress", "lines", "--progress-every", "0.1", (char *)NULL);
        _exit(127);
    }
    int status;
    pid_t reaped = 0;
    if (interrupt) {
        while (file_size(out) <= 0 && (reaped = waitpid(pid, &status, WNOHANG)) == 0)
            usleep(200);
        if (!reaped)
            kill(pid, SIGINT);
    }
    if (!reaped)
        reaped = waitpid(pid, &status, 0);
    ck_assert_int_eq(reaped, pid);
    ck_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

START_TEST(test_binary_sigint)
{
    th_redis rd;
    setup_world(&rd, NULL);
    char in[TU_PATH], out[TU_PATH], log[TU_PATH];
    tu_tmp_path(in, "bin.in.jsonl");
    tu_tmp_path(out, "bin.out.jsonl");
    tu_tmp_path(log, "bin.log");
    const int n = 20000;
    FILE *f = fopen(in, "w");
    char buf[2048];
    for (int q = 0; q < n; q++) {
        request_json(q % 240, buf, sizeof buf);
        /* the same request under the id r<q>, so that ids run 0..n-1 in order */
        const char *rest = strchr(buf + strlen("{\"event\":\"ranking\",\"id\":\"r"), '"');
        fprintf(f, "{\"event\":\"ranking\",\"id\":\"r%d%s\n", q, rest);
    }
    fclose(f);
    int rc1 = run_binary(in, out, 1, log);
    long stopped_len = file_size(out);
    int rc2 = run_binary(in, out, 0, log);
    int rc3 = run_binary(in, out, 0, log);
    static int qs[20000];
    int got = read_output(out, qs, n, NULL);
    char text[8192] = "";
    FILE *lf = fopen(log, "r");
    size_t len = lf ? fread(text, 1, sizeof text - 1, lf) : 0;
    text[len] = '\0';
    if (lf)
        fclose(lf);
    printf("binary: exit %d after SIGINT (output %ld bytes), %d resumed, %d on a third run; its stderr:\n%.1200s\n",
           rc1, stopped_len, rc2, rc3, text);
    ck_assert_msg(rc1 == 130, "exit %d after SIGINT", rc1);
    ck_assert_ptr_nonnull(strstr(text, "checkpoint written; the same command resumes the run"));
    /* the second run did only what the first left */
    const char *done = strstr(text, "rankd rescore: done: ");
    const char *here = done ? strstr(done, "this run ") : NULL;
    ck_assert_msg(here && atoi(here + strlen("this run ")) < n, "the resumed run started over:\n%s", text);
    ck_assert_int_eq(rc2, 0);
    ck_assert_int_eq(rc3, 0);
    ck_assert(strstr(text, "rescore: ") != NULL);
    ck_assert(strstr(text, "is complete") != NULL);
    assert_exactly_once(qs, got, n, "binary after SIGINT");
    th_redis_stop(&rd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rescore");
    TCase *tc = tcase_create("rescore");
    tcase_add_test(tc, test_file);
    tcase_add_test(tc, test_resume);
    tcase_add_test(tc, test_scan);
    tcase_add_test(tc, test_kafka);
    tcase_add_test(tc, test_binary_sigint);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return tu_main("check_rescore", s);
}
