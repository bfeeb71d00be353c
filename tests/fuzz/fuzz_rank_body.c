/* tests/fuzz/fuzz_rank_body.c — libFuzzer target for the body of POST
 * /v1/rank: svc_rank_body (service/rankreq.h) parses the bytes as the HTTP
 * handler does, takes a slot and copies the ranking into it, all without a
 * server, Redis or a model. Any body gives a begun slot or an HTTP status
 * with a reason, never a crash, leak or undefined behaviour.
 *
 * The limits are the service's shape, made small (a 4096-byte body, 8
 * candidates, their ids in 8 x (SVC_MAX_ID + 1) bytes) so that the fuzzer
 * reaches every one of them. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "service/events.h"
#include "service/rankreq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_CANDS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static svc_parser *p;
    static svc_slots *pool;
    if (!p) {
        svc_event_limits el = {.max_bytes = 4096, .max_items = MAX_CANDS};
        static const svc_slot_limits sl = {.max_hist = 8, .max_exclude = 8, .max_cands = MAX_CANDS, .k = 4,
                                           .id_bytes = MAX_CANDS * (SVC_MAX_ID + 1)};
        p = svc_parser_new(&el);
        pool = svc_slots_new(1, &sl);
        if (!p || !pool)
            __builtin_trap();
    }
    svc_event ev;
    svc_slot *slot;
    char reason[256];
    int status = svc_rank_body(p, pool, (const char *)data, size, &ev, &slot, reason, sizeof reason);
    if (status == 0) {
        volatile size_t sum = strlen(slot->event_id) + strlen(slot->user);
        if (slot->n_cand_ids < 1 || slot->n_cand_ids > MAX_CANDS)
            __builtin_trap(); /* a ranking body always has 1..max_cands items */
        for (int i = 0; i < slot->n_cand_ids; i++)
            sum += strlen(slot->cand_ids[i]);
        (void)sum;
        svc_slot_put(pool, slot);
    } else if (status != 400 || slot != NULL || reason[0] == '\0') {
        __builtin_trap(); /* one slot and one request at a time: only a bad body fails */
    }
    return 0;
}
