/* tests/fuzz/fuzz_config.c — libFuzzer target for the YAML config loader
 * (service/config.h): the input is a config file's bytes, loaded over the
 * embedded default with svc_config_load_text. Any input gives a config or
 * an error, never a crash, leak or undefined behaviour; a loaded config is
 * printed (to /dev/null) so that every string it holds is read.
 *
 * RANKD_* variables would override the input; the fuzzer's environment
 * has none that matter, and they are not read per input anyway. Keys
 * naming files (redis.password_file) may make the loader open a path the
 * fuzzer made up: it only reads, and a missing file is an error. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "service/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *null;
    if (!null && !(null = fopen("/dev/null", "w")))
        __builtin_trap();
    svc_config c;
    char err[512];
    if (svc_config_load_text(&c, "fuzz.yaml", (const char *)data, size, err, sizeof err) == 0) {
        svc_config_print(null, &c);
        svc_config_free(&c);
    } else if (memchr(err, '\0', sizeof err) == NULL || err[0] == '\0') {
        __builtin_trap(); /* every rejection says why */
    }
    return 0;
}
