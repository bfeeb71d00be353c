/* tests/check_isa.c — the run-time choice of instruction set
 * (llm/kernels.h): names, RANKD_ISA, which kernel tables this CPU may run,
 * and detection against the compiler's own CPU probe. */
#include "llm/kernels.h"

#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond))                                                                     \
            ck_abort_msg(__VA_ARGS__);                                                   \
    } while (0)

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* ---- instruction-set selection ----------------------------------------------------- */

START_TEST(test_isa_names)
{
    for (int i = 0; i < LM_ISA_COUNT; i++) {
        const char *name = lm_isa_name((lm_isa)i);
        lm_isa got = LM_ISA_COUNT;
        ck_assert_ptr_nonnull(name);
        CHECK(lm_isa_parse(name, &got) == 0 && got == (lm_isa)i,
              "lm_isa_parse(\"%s\") gives %d, expected %d", name, (int)got, i);
        for (int j = 0; j < i; j++)
            ck_assert_str_ne(name, lm_isa_name((lm_isa)j));
    }
    static const char *const bad[] = {"", "avx", "avx5120", "sse", "scalar ", "amx-int8", "?"};
    for (int b = 0; b < LEN(bad); b++) {
        lm_isa got = LM_ISA_AVX2;
        CHECK(lm_isa_parse(bad[b], &got) == -1 && got == LM_ISA_AVX2,
              "lm_isa_parse(\"%s\") accepted it or wrote %d", bad[b], (int)got);
    }
    ck_assert_ptr_nonnull(lm_isa_name(LM_ISA_COUNT));
}
END_TEST

START_TEST(test_isa_default)
{
    lm_isa best = lm_isa_detect();
    ck_assert_int_eq(unsetenv("RANKD_ISA"), 0);
    ck_assert_int_eq(lm_isa_default(), best);
    ck_assert_int_eq(setenv("RANKD_ISA", "scalar", 1), 0);
    ck_assert_int_eq(lm_isa_default(), LM_ISA_SCALAR);
    for (int i = 0; i < LM_ISA_COUNT; i++) {
        lm_isa want = (lm_isa)i < best ? (lm_isa)i : best; /* never above the CPU's */
        ck_assert_int_eq(setenv("RANKD_ISA", lm_isa_name((lm_isa)i), 1), 0);
        CHECK(lm_isa_default() == want, "RANKD_ISA=%s on a CPU with %s: lm_isa_default() = %s",
              lm_isa_name((lm_isa)i), lm_isa_name(best), lm_isa_name(lm_isa_default()));
    }
    static const char *const ignored[] = {"", "bogus", "avx"};
    for (int b = 0; b < LEN(ignored); b++) {
        ck_assert_int_eq(setenv("RANKD_ISA", ignored[b], 1), 0);
        CHECK(lm_isa_default() == best, "RANKD_ISA=\"%s\": lm_isa_default() = %s", ignored[b],
              lm_isa_name(lm_isa_default()));
    }
}
END_TEST

START_TEST(test_kern_get)
{
    lm_isa best = lm_isa_detect();
    char tested[64] = "", missing[64] = "";
    for (int i = 0; i < LM_ISA_COUNT; i++) {
        const lm_kern *k = lm_kern_get((lm_isa)i);
        const char *name = lm_isa_name((lm_isa)i);
        CHECK((k != NULL) == (i <= (int)best), "lm_kern_get(%s) = %p on a CPU with %s", name,
              (const void *)k, lm_isa_name(best));
        strcat(strcat(k ? tested : missing, " "), name);
        if (!k)
            continue;
        ck_assert_int_eq(k->isa, i);
        ck_assert_str_eq(k->name, name);
        CHECK(k->sgemm && k->quant_rows && k->qgemm && k->layernorm && k->gelu && k->gelu_grad &&
                  k->softmax && k->rowdot && k->rowaxpy,
              "kernel table %s has a NULL entry", name);
    }
    ck_assert_ptr_null(lm_kern_get(LM_ISA_COUNT));
    ck_assert_ptr_null(lm_kern_get((lm_isa)-1));
    ck_assert_ptr_nonnull(lm_kern_get(lm_isa_default()));
    say("isa        detect : %s; kernel tables tested:%s; not available:%s", lm_isa_name(best),
        tested, *missing ? missing : " none");
}
END_TEST

/* lm_isa_detect against the compiler's own probe, which also checks that
 * the OS saves the wide registers. */
START_TEST(test_isa_detect)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vnni");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    lm_isa got = lm_isa_detect();
    CHECK(avx512 ? got == LM_ISA_AVX512 || got == LM_ISA_AMX
                 : got == (avx2 ? LM_ISA_AVX2 : LM_ISA_SCALAR),
          "CPU: AVX-512 F/BW/VL/DQ/VNNI %s, AVX2+FMA %s; lm_isa_detect() = %s",
          avx512 ? "yes" : "no", avx2 ? "yes" : "no", lm_isa_name(got));
    ck_assert_int_eq(lm_isa_detect(), got);
#endif
}
END_TEST

int main(void)
{
    Suite *s = suite_create("isa");
    TCase *tc = tcase_create("isa");
    tcase_add_test(tc, test_isa_names);
    tcase_add_test(tc, test_isa_default);
    tcase_add_test(tc, test_kern_get);
    tcase_add_test(tc, test_isa_detect);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
