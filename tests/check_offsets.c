/* tests/check_offsets.c — the offset tracker behind at-least-once delivery
 * (service/offsets.h): an offset becomes committable only when it and every
 * earlier event of its partition are done, whatever order acks come in. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "service/offsets.h"

START_TEST(test_in_order)
{
    svc_offsets *t = svc_offsets_new();
    ck_assert_int_eq(svc_offsets_begin(t, 0, 10, 1), 0);
    ck_assert_int_eq(svc_offsets_begin(t, 0, 11, 0), 0);
    ck_assert_int_eq(svc_offsets_committable(t, 0), -1); /* 10 still pending */
    svc_offsets_ack(t, 0, 10);
    ck_assert_int_eq(svc_offsets_committable(t, 0), 12); /* 10 and 11 done */
    ck_assert_int_eq(svc_offsets_committable(t, 0), -1); /* nothing new */
    ck_assert_int_eq(svc_offsets_in_flight(t), 0);
    svc_offsets_free(t);
}
END_TEST

START_TEST(test_out_of_order_acks)
{
    svc_offsets *t = svc_offsets_new();
    for (int64_t o = 0; o < 5; o++)
        svc_offsets_begin(t, 3, o, 2); /* two outputs each */
    svc_offsets_ack(t, 3, 4);
    svc_offsets_ack(t, 3, 4);
    svc_offsets_ack(t, 3, 2);
    svc_offsets_ack(t, 3, 2);
    ck_assert_int_eq(svc_offsets_committable(t, 3), -1);
    svc_offsets_ack(t, 3, 0);
    ck_assert_int_eq(svc_offsets_committable(t, 3), -1); /* 0 has one output left */
    svc_offsets_ack(t, 3, 0);
    ck_assert_int_eq(svc_offsets_committable(t, 3), 1);
    svc_offsets_ack(t, 3, 1);
    svc_offsets_ack(t, 3, 1);
    ck_assert_int_eq(svc_offsets_committable(t, 3), 3); /* 1, 2 done; 3 not */
    svc_offsets_ack(t, 3, 3);
    svc_offsets_ack(t, 3, 3);
    ck_assert_int_eq(svc_offsets_committable(t, 3), 5);
    /* acks for unknown offsets and partitions change nothing */
    svc_offsets_ack(t, 3, 99);
    svc_offsets_ack(t, 7, 1);
    ck_assert_int_eq(svc_offsets_committable(t, 7), -1);
    svc_offsets_free(t);
}
END_TEST

START_TEST(test_partitions_independent)
{
    svc_offsets *t = svc_offsets_new();
    svc_offsets_begin(t, 0, 100, 1);
    svc_offsets_begin(t, 1, 7, 0);
    ck_assert_int_eq(svc_offsets_committable(t, 1), 8);
    ck_assert_int_eq(svc_offsets_committable(t, 0), -1);
    ck_assert_int_eq(svc_offsets_in_flight(t), 1);
    svc_offsets_drop(t, 0); /* revoked: forgotten, late acks ignored */
    svc_offsets_ack(t, 0, 100);
    ck_assert_int_eq(svc_offsets_committable(t, 0), -1);
    ck_assert_int_eq(svc_offsets_in_flight(t), 0);
    svc_offsets_free(t);
}
END_TEST

/* Many events, acks in a random order: the committable offset never passes
 * an event that is not done, and reaches the end when all are. */
START_TEST(test_random)
{
    enum { N = 20000 };
    svc_offsets *t = svc_offsets_new();
    int *pending = malloc(sizeof(int) * N), *order = malloc(sizeof(int) * 3 * N), n = 0;
    uint64_t s = 42;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        pending[i] = (int)(s >> 62); /* 0..3 outputs */
        ck_assert_int_eq(svc_offsets_begin(t, 0, i, pending[i]), 0);
        for (int k = 0; k < pending[i]; k++)
            order[n++] = i;
    }
    for (int i = n - 1; i > 0; i--) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int j = (int)((s >> 33) % (uint64_t)(i + 1)), x = order[i];
        order[i] = order[j];
        order[j] = x;
    }
    int64_t committed = 0;
    for (int i = 0; i < n; i++) {
        svc_offsets_ack(t, 0, order[i]);
        pending[order[i]]--;
        int64_t c = svc_offsets_committable(t, 0);
        if (c >= 0) {
            ck_assert_int_gt(c, committed);
            for (int64_t o = 0; o < c; o++)
                if (pending[o] != 0)
                    ck_abort_msg("offset %lld committable while event %lld has %d outputs pending",
                                 (long long)c, (long long)o, pending[o]);
            committed = c;
        }
    }
    ck_assert_int_eq(committed, N);
    ck_assert_int_eq(svc_offsets_in_flight(t), 0);
    printf("random: %d events, %d acks in random order, committable offset reached %d\n", N, n, N);
    free(pending);
    free(order);
    svc_offsets_free(t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("offsets");
    TCase *tc = tcase_create("offsets");
    tcase_add_test(tc, test_in_order);
    tcase_add_test(tc, test_out_of_order_acks);
    tcase_add_test(tc, test_partitions_independent);
    tcase_add_test(tc, test_random);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
