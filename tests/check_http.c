/* tests/check_http.c — the limits on what POST /v1/rank accepts: the body
 * size (http.max_body_bytes, announced by Content-Length or only found
 * while reading a chunked body) through a real svc_http with a stub ranker,
 * and the body-to-request step (svc_rank_body) without a server: a ranking
 * event only, at most max_candidates items, ids of at most SVC_MAX_ID
 * bytes. Each refusal must name the limit and the value. Then the history
 * a request carries, cut to max_hist. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/events.h"
#include "service/http.h"
#include "service/rankreq.h"
#include "tests/harness_http.h"

#define MAX_BODY 100

/* The stub ranker: 200 and the body's length, so that a test sees what got
 * through. */
static void stub_rank(void *ctx, const char *body, size_t len, int *status, char **resp, size_t *resp_len)
{
    (void)ctx;
    (void)body;
    *resp = malloc(32);
    *resp_len = (size_t)snprintf(*resp, 32, "{\"len\":%zu}", len);
    *status = 200;
}

static svc_metrics metrics;

static svc_http *start(void)
{
    svc_http *h;
    char err[256];
    svc_http_opts o = {.bind = "127.0.0.1", .port = 0, .token = NULL, .max_body = MAX_BODY, .threads = 1};
    svc_metrics_init(&metrics);
    ck_assert_msg(svc_http_start(&h, &o, &metrics, stub_rank, NULL, err, sizeof err) == 0, "%s", err);
    return h;
}

static void stop(svc_http *h)
{
    svc_http_stop(h);
    svc_metrics_destroy(&metrics);
}

static char *filled(size_t n)
{
    char *b = malloc(n + 1);
    memset(b, 'x', n);
    b[n] = '\0';
    return b;
}

/* Content-Length at the limit passes; one byte over is refused from the
 * headers, before the body is read. */
START_TEST(test_body_limit_content_length)
{
    svc_http *h = start();
    char out[512], want[128];
    char *at = filled(MAX_BODY), *over = filled(MAX_BODY + 1);
    int st = th_http(svc_http_port(h), "POST", "/v1/rank", NULL, at, out, sizeof out);
    printf("body of %d bytes: %d %s\n", MAX_BODY, st, out);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(out, "{\"len\":100}");
    st = th_http(svc_http_port(h), "POST", "/v1/rank", NULL, over, out, sizeof out);
    printf("body of %d bytes: %d %s", MAX_BODY + 1, st, out);
    ck_assert_int_eq(st, 413);
    snprintf(want, sizeof want, "request body of %d bytes exceeds http.max_body_bytes (%d)\n", MAX_BODY + 1,
             MAX_BODY);
    ck_assert_str_eq(out, want);
    free(at);
    free(over);
    stop(h);
}
END_TEST

/* A chunked body has no Content-Length: the limit is found while reading,
 * and the 413 says how many bytes came. */
static int chunked_post(int port, size_t n, char *out, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ck_assert(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    const char *head = "POST /v1/rank HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n";
    ck_assert(write(fd, head, strlen(head)) == (ssize_t)strlen(head));
    char *chunk = filled(n), size[32];
    int k = snprintf(size, sizeof size, "%zx\r\n", n);
    ck_assert(write(fd, size, (size_t)k) == k);
    ck_assert(write(fd, chunk, n) == (ssize_t)n);
    ck_assert(write(fd, "\r\n0\r\n\r\n", 7) == 7);
    free(chunk);
    return th_http_reply(fd, out, cap);
}

START_TEST(test_body_limit_chunked)
{
    svc_http *h = start();
    char out[512], want[128];
    int st = chunked_post(svc_http_port(h), MAX_BODY, out, sizeof out);
    printf("chunked body of %d bytes: %d %s\n", MAX_BODY, st, out);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(out, "{\"len\":100}");
    st = chunked_post(svc_http_port(h), 3 * MAX_BODY, out, sizeof out);
    printf("chunked body of %d bytes: %d %s", 3 * MAX_BODY, st, out);
    ck_assert_int_eq(st, 413);
    snprintf(want, sizeof want, "request body of %d bytes exceeds http.max_body_bytes (%d)\n", 3 * MAX_BODY,
             MAX_BODY);
    ck_assert_str_eq(out, want);
    stop(h);
}
END_TEST

/* ---- svc_rank_body ---------------------------------------------------------------- */

#define MAX_CANDS 3

typedef struct rank_case {
    const char *what, *body;
    int status;        /* 0: accepted */
    const char *why;   /* a substring of the reason */
} rank_case;

static const rank_case rank_cases[] = {
    {"a ranking", "{\"event\":\"ranking\",\"id\":\"r1\",\"timestamp\":1,\"user\":\"u1\",\"items\":[{\"id\":\"a\"},"
                  "{\"id\":\"b\"},{\"id\":\"c\"}]}", 0, NULL},
    {"too many candidates", "{\"event\":\"ranking\",\"id\":\"r1\",\"timestamp\":1,\"user\":\"u1\",\"items\":"
                            "[{\"id\":\"a\"},{\"id\":\"b\"},{\"id\":\"c\"},{\"id\":\"d\"}]}",
     400, "ranking of 4 items exceeds 3"},
    {"an interaction", "{\"event\":\"interaction\",\"id\":\"e1\",\"timestamp\":1,\"user\":\"u1\",\"item\":\"i\","
                       "\"type\":\"click\"}", 400, "expected a ranking event, got an interaction event"},
    {"an item event", "{\"event\":\"item\",\"id\":\"e1\",\"timestamp\":1,\"item\":\"i\"}", 400,
     "expected a ranking event, got an item event"},
    {"no items", "{\"event\":\"ranking\",\"id\":\"r1\",\"timestamp\":1,\"user\":\"u1\"}", 400,
     "missing field \"items\""},
    {"over the body limit", NULL, 400, "event of 4097 bytes exceeds 4096"},
    {"an id over SVC_MAX_ID", NULL, 400, "field \"items[0].id\" is 257 bytes, at most 256"},
    {"not JSON", "rank please", 400, "invalid JSON at byte"},
};

START_TEST(test_rank_body)
{
    const rank_case *c = &rank_cases[_i];
    svc_event_limits el = {.max_bytes = 4096, .max_items = MAX_CANDS};
    svc_slot_limits sl = {.max_hist = 4, .max_exclude = 4, .max_cands = MAX_CANDS, .k = 2,
                          .id_bytes = MAX_CANDS * (SVC_MAX_ID + 1)};
    svc_parser *p = svc_parser_new(&el);
    svc_slots *pool = svc_slots_new(1, &sl);
    ck_assert(p && pool);
    char *body = NULL, reason[256] = "";
    if (c->body) {
        body = strdup(c->body);
    } else if (strstr(c->what, "body limit")) {
        body = filled(4097);
    } else {
        body = malloc(400);
        snprintf(body, 400, "{\"event\":\"ranking\",\"id\":\"r1\",\"timestamp\":1,\"user\":\"u\",\"items\":"
                 "[{\"id\":\"%0257d\"}]}", 0);
    }
    svc_event ev;
    svc_slot *slot;
    int st = svc_rank_body(p, pool, body, strlen(body), &ev, &slot, reason, sizeof reason);
    printf("%s: %d %s\n", c->what, st, st ? reason : "");
    ck_assert_int_eq(st, c->status);
    if (st == 0) {
        ck_assert_int_eq(slot->n_cand_ids, 3);
        ck_assert_str_eq(slot->cand_ids[2], "c");
        ck_assert_str_eq(slot->user, "u1");
        /* the pool's only slot is in flight: the next body gets 503 */
        svc_slot *second;
        ck_assert_int_eq(svc_rank_body(p, pool, body, strlen(body), &ev, &second, reason, sizeof reason), 503);
        ck_assert_ptr_null(second);
        ck_assert_str_eq(reason, "too many rankings in flight");
        svc_slot_put(pool, slot);
    } else {
        ck_assert_ptr_null(slot);
        ck_assert_msg(strstr(reason, c->why), "reason \"%s\" lacks \"%s\"", reason, c->why);
        ck_assert_int_eq(svc_slots_free_count(pool), 1); /* a refusal gives its slot back */
    }
    free(body);
    svc_slots_free(pool);
    svc_parser_free(p);
}
END_TEST

/* The history a request carries is the newest min(model max_hist, the
 * pool's max_hist) entries of what the feature store returned, and the
 * exclusions stop at max_exclude: a long history in Redis never overruns a
 * slot. Rows are the ids themselves (a model without a vocabulary). */
START_TEST(test_history_cut)
{
    static const char *const items[] = {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"};
    static const char *const acts[] = {"click", "click", "click", "click", "click",
                                       "click", "click", "click", "click", "click"};
    svc_slot_limits sl = {.max_hist = 4, .max_exclude = 2, .max_cands = MAX_CANDS, .k = 2,
                          .id_bytes = MAX_CANDS * (SVC_MAX_ID + 1)};
    svc_slots *pool = svc_slots_new(1, &sl);
    ck_assert_ptr_nonnull(pool);
    const int model_hist[] = {3, 8};
    const int want_n[] = {3, 4};
    for (int k = 0; k < 2; k++) {
        lm_model lm = {.cfg = {.max_hist = model_hist[k], .n_items = 100, .n_actions = 2}};
        svc_model m = {.m = &lm};
        fs_user_state st = {.n_hist = 10, .hist_items = items, .hist_actions = acts, .n_seen = 10, .seen = items};
        svc_rank_rules rules = {.exclude_seen = 1, .k = 2};
        svc_event ev = {.kind = SVC_EV_INTERACTION, .id = "e1", .user = "u1"};
        svc_slot *slot = svc_slot_get(pool);
        char err[256];
        ck_assert_int_eq(svc_slot_begin(slot, &ev, err, sizeof err), 0);
        ck_assert_int_eq(svc_slot_fill(slot, &m, &st, &rules, err, sizeof err), 0);
        const rk_request *r = &slot->job.req;
        printf("history of 10, model max_hist %d, pool max_hist 4: %d kept, newest %d; %d exclusions (max 2)\n",
               model_hist[k], r->n_hist, r->hist_items[r->n_hist - 1], r->n_exclude);
        ck_assert_int_eq(r->n_hist, want_n[k]);
        ck_assert_int_eq(r->hist_items[0], 10 - want_n[k] + 1);
        ck_assert_int_eq(r->hist_items[r->n_hist - 1], 10);
        ck_assert_int_eq(r->n_exclude, 2);
        svc_slot_put(pool, slot);
    }
    svc_slots_free(pool);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("http");
    tcase_add_test(tc, test_body_limit_content_length);
    tcase_add_test(tc, test_body_limit_chunked);
    tcase_add_loop_test(tc, test_rank_body, 0, (int)(sizeof rank_cases / sizeof rank_cases[0]));
    tcase_add_test(tc, test_history_cut);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
