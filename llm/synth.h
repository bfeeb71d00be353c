/* llm/synth.h — synthetic interaction data with planted sequential
 * structure: the project's default demo data and its unit-test data, made
 * so that a sequence model can be seen, in seconds, to learn what a
 * popularity baseline cannot.
 *
 *   rankd synth [--users N] [--items N] [--groups N] [--min-len N]
 *               [--max-len N] [--zipf S] [--follow P] [--seed N] > events.jsonl
 *
 * writes JSON lines of the event schema in ../shared/DESIGN.md, one event
 * per line, in time order across users (as a Kafka topic would carry them);
 * lm_dataset_load reads them back (LM_DATA_JSONL).
 *
 * The structure (item k = 0..n_items-1 has id "i<k+1>", user u has "u<u+1>"):
 *   - groups: item k belongs to group k mod n_groups, at position
 *     k div n_groups within it;
 *   - popularity: within a group, the item at position j has weight
 *     1 / (j + 1)^zipf;
 *   - taste: each user has two home groups;
 *   - sequences: a user's first item is a taste draw (a home group, then a
 *     popularity draw in it). After an item at (group g, position j), with
 *     probability p_follow the next item follows the pattern: group
 *     (g + step) mod n_groups, where step is 1 for 70% of users and a
 *     user-specific 2..n_groups-1 for the rest, at position j + 1 (wrapping)
 *     with probability 0.8, else a popularity draw in that group. Otherwise
 *     the next item is a taste draw. So the next item depends on the
 *     previous one and on the user, and "item j of group g is followed by
 *     item j+1 of group g+1" is the most frequent transition;
 *   - actions: "view" 80%, "click" 15%, "purchase" 5%, independent of the
 *     item;
 *   - lengths: uniform in min_len..max_len interactions per user;
 *   - time: a user starts at a uniform point of the 30 days from
 *     2023-11-14 22:13:20 UTC (1700000000000 ms); gaps are 5 s to 10 min
 *     within a session, 1 to 48 h between sessions (one gap in ten);
 *     timestamps are strictly increasing per user;
 *   - other events, skipped by the dataset reader: a "user" event
 *     (segment = first home group) before the first interaction of one
 *     user in ten; a "ranking" event of 5 items 1 s after one interaction
 *     in fifty; at the end, an "item" event marking the last item of every
 *     hundred (or the last item, for fewer than 100) unavailable.
 * The output is a pure function of the options: every user draws from its
 * own splitmix64 stream seeded from (seed, user), so the same options give
 * byte-identical output on every platform. */
#ifndef RANKD_LLM_SYNTH_H
#define RANKD_LLM_SYNTH_H

#include <stdint.h>
#include <stdio.h>

#include "llm/dataset.h"

typedef struct lm_synth_opts {
    int n_users;     /* 1 .. 100,000,000 */
    int n_items;     /* 1 .. 100,000,000 */
    int n_groups;    /* 1 .. n_items */
    int min_len;     /* interactions per user: 1 <= min_len <= max_len <= 100,000 */
    int max_len;
    double zipf;     /* popularity skew within a group, 0 .. 10 (0: uniform) */
    double p_follow; /* chance that the next item follows the pattern, 0 .. 1 */
    uint64_t seed;
} lm_synth_opts;

/* 2000 users, 500 items, 10 groups, 8..40 interactions, zipf 1.0,
 * p_follow 0.6, seed 1: about 48,000 interactions (5 MB of JSON lines),
 * generated in about 30 ms. */
void lm_synth_defaults(lm_synth_opts *o);

/* Checks the ranges above; the error names the option. */
int lm_synth_check(const lm_synth_opts *o, char *err, size_t errsz);

typedef struct lm_synth_stats {
    int64_t interactions, rankings, item_events, user_events;
} lm_synth_stats;

/* Writes the events as JSON lines to `out` and flushes it (the caller
 * closes it); a write or flush error fails the call. `st` (may be NULL)
 * receives the counts of the events written. */
int lm_synth_write(const lm_synth_opts *o, FILE *out, lm_synth_stats *st, char *err, size_t errsz);

/* The same data as lm_synth_write, read as lm_dataset_load would read it
 * (n_skipped counts the other events), without the detour through text.
 * The caller frees *out with lm_dataset_free. */
int lm_synth_dataset(const lm_synth_opts *o, lm_dataset **out, char *err, size_t errsz);

#endif
