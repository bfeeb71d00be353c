/* tests/check_cli.c — the rankd binary from the outside: `version`,
 * `quantize` and `score` on the golden cases, their exit codes and their
 * error messages. The binary is $RANKD_BIN (make test sets it), else
 * build/rankd; suites run from the repository root. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/testutil.h"

static const char *rankd_bin(void)
{
    const char *b = getenv("RANKD_BIN");
    return b && *b ? b : "build/rankd";
}

/* Runs `rankd ARGS` through the shell, capturing stdout and stderr
 * together into out; returns the exit status. */
static int run(char *out, size_t outsz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int run(char *out, size_t outsz, const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", rankd_bin(), args);
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "popen %s", cmd);
    size_t n = fread(out, 1, outsz - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    printf("$ rankd %s -> exit %d\n", args, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char out[16384];

START_TEST(test_version)
{
    ck_assert_int_eq(run(out, sizeof out, "version"), 0);
    ck_assert_msg(strstr(out, "rankd ") && strstr(out, "cpu kernels:"), "version printed: %s", out);
    ck_assert_int_eq(run(out, sizeof out, "no-such-command"), 2);
    ck_assert_msg(strstr(out, "unknown command"), "%s", out);
    ck_assert_int_eq(run(out, sizeof out, "help"), 0);
    ck_assert_msg(strstr(out, "score") && strstr(out, "quantize"), "%s", out);
}
END_TEST

/* Every golden case within 1e-4 of the reference, through the binary. */
START_TEST(test_score_golden)
{
    const char *c = tu_case_name(_i);
    char w[TU_PATH], io[TU_PATH], file[64], o[TU_PATH];
    tu_weights_path(w, c);
    snprintf(file, sizeof file, "%s.io.safetensors", c);
    tu_golden_path(io, file);
    snprintf(o, sizeof o, "%s/%s.scores.safetensors", tu_tmp_root(), c);
    int rc = run(out, sizeof out, "score %s %s %s --threads 2 --expect %s --tol 1e-4", w, io, o, io);
    printf("%s", out);
    ck_assert_msg(rc == 0 && strstr(out, "ok: within the tolerance"), "%s", out);
    ck_assert_int_eq(access(o, R_OK), 0);
}
END_TEST

START_TEST(test_quantize_and_score)
{
    char w[TU_PATH], io[TU_PATH], q[TU_PATH], o32[TU_PATH], o8[TU_PATH];
    tu_weights_path(w, "small");
    tu_golden_path(io, "small.io.safetensors");
    snprintf(q, sizeof q, "%s/small.int8.safetensors", tu_tmp_root());
    snprintf(o32, sizeof o32, "%s/small.fp32.out", tu_tmp_root());
    snprintf(o8, sizeof o8, "%s/small.int8.out", tu_tmp_root());
    ck_assert_int_eq(run(out, sizeof out, "quantize %s %s", w, q), 0);
    ck_assert_msg(strstr(out, "tensors to int8"), "%s", out);
    ck_assert_int_eq(run(out, sizeof out, "score %s %s %s", w, io, o32), 0);
    /* int8 against fp32: the error measured on the golden small case is
     * 0.018; anything near 0.05 means the int8 path broke. */
    int rc = run(out, sizeof out, "score %s %s %s --expect %s --tol 0.05", q, io, o8, o32);
    printf("%s", out);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_int_eq(run(out, sizeof out, "quantize %s %s.again", q, q), 1);
    ck_assert_msg(strstr(out, "already quantized"), "%s", out);
}
END_TEST

START_TEST(test_errors)
{
    char w[TU_PATH], io[TU_PATH];
    tu_weights_path(w, "tiny");
    tu_golden_path(io, "tiny.io.safetensors");
    ck_assert_int_eq(run(out, sizeof out, "score %s", w), 2);
    ck_assert_msg(strstr(out, "usage: rankd score"), "%s", out);
    ck_assert_int_eq(run(out, sizeof out, "score %s %s /tmp/x --threads 0", w, io), 2);
    ck_assert_msg(strstr(out, "--threads 0"), "%s", out);
    ck_assert_int_eq(run(out, sizeof out, "score %s %s /tmp/x --isa sse9", w, io), 2);
    ck_assert_int_eq(run(out, sizeof out, "score %s/none.safetensors %s /tmp/x", tu_tmp_root(), io), 1);
    ck_assert_msg(strstr(out, "none.safetensors: open"), "%s", out);
    /* The weights file is no inputs file: a clear message, no crash. */
    ck_assert_int_eq(run(out, sizeof out, "score %s %s %s/x", w, w, tu_tmp_root()), 1);
    ck_assert_msg(strstr(out, "hist_items is missing"), "%s", out);
    /* A tolerance too tight for int8 must fail the comparison. */
    char q[TU_PATH];
    snprintf(q, sizeof q, "%s/tiny.int8.safetensors", tu_tmp_root());
    ck_assert_int_eq(run(out, sizeof out, "quantize %s %s", w, q), 0);
    ck_assert_int_eq(run(out, sizeof out, "score %s %s %s/y --expect %s --tol 1e-7", q, io, tu_tmp_root(), io), 1);
    ck_assert_msg(strstr(out, "FAIL: above the tolerance"), "%s", out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_add_test(tc, test_version);
    tcase_add_loop_test(tc, test_score_golden, 0, TU_N_CASES);
    tcase_add_test(tc, test_quantize_and_score);
    tcase_add_test(tc, test_errors);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return tu_main("check_cli", s);
}
