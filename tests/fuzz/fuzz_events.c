/* tests/fuzz/fuzz_events.c — libFuzzer target for the event parser
 * (service/events.h): any bytes in, an event or a reason out, never a
 * crash, leak or undefined behaviour.
 *
 * One parser is reused across inputs, as the service reuses one per
 * thread, so state carried from one parse to the next (the previous tree,
 * the dedupe table's generation, the OTHER-value arena) is exercised too.
 * Its limits are small so that the fuzzer reaches them: 4096 bytes, 8
 * items. Every input goes through two parsers, the service's and
 * rescore's (items_optional), and a successful parse is read back in full,
 * so that every string the event holds is touched under ASan. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "service/events.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t touch(const char *s) { return s ? strlen(s) : 0; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static svc_parser *parsers[2];
    if (!parsers[0]) {
        for (int i = 0; i < 2; i++) {
            svc_event_limits lim = {.max_bytes = 4096, .max_items = 8, .items_optional = i};
            parsers[i] = svc_parser_new(&lim);
            if (!parsers[i])
                __builtin_trap();
        }
    }
    for (int i = 0; i < 2; i++) {
        svc_event ev;
        char reason[256];
        volatile size_t sum = 0;
        if (svc_event_parse(parsers[i], (const char *)data, size, &ev, reason, sizeof reason) == 0) {
            sum += touch(ev.id) + touch(ev.user) + touch(ev.item) + touch(ev.type);
            if (ev.n_items > 8 || ev.n_fields > SVC_MAX_FIELDS)
                __builtin_trap(); /* a limit let through */
            for (int j = 0; j < ev.n_items; j++)
                sum += touch(ev.items[j]);
            for (int j = 0; j < ev.n_fields; j++)
                sum += touch(ev.fields[j].name) + touch(ev.fields[j].string);
            sum += (size_t)svc_event_available(&ev);
        } else if (memchr(reason, '\0', sizeof reason) == NULL || reason[0] == '\0') {
            __builtin_trap(); /* every rejection says why */
        }
        (void)sum;
    }
    return 0;
}
