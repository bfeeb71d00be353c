/* llm/dataset.h — interaction data for training and evaluation: users'
 * event sequences, oldest first, with the string ids of users, items and
 * action types mapped to dense rows.
 *
 * Readers (lm_dataset_load):
 *   - MovieLens: ratings.csv (userId,movieId,rating,timestamp), with titles
 *     from movies.csv beside it when present; every rating is an interaction,
 *     its action the star rating rounded to an integer ("1".."5");
 *   - sequence files (../shared/data/amazon-toys): one line per user,
 *     "user item item ...", items in time order; one action, "interaction";
 *   - JSON lines of the event schema in ../shared/DESIGN.md: "interaction"
 *     events give (user, item, type, timestamp); other event types are
 *     skipped and counted; a malformed line is an error naming its number.
 * Each user's events are sorted by timestamp (stable: ties keep file
 * order). Item rows start at 1 in order of first appearance; row 0 is the
 * model's padding / unknown row and never holds an item.
 *
 * The evaluation protocol of ../shared/data/README.md: leave-one-out. For
 * a user with n >= 3 events, events [0, n-2) are training history, event
 * n-2 the validation target and event n-1 the test target; users with
 * fewer events are training data only. */
#ifndef RANKD_LLM_DATASET_H
#define RANKD_LLM_DATASET_H

#include <stddef.h>
#include <stdint.h>

typedef enum lm_data_format {
    LM_DATA_AUTO,      /* by name: ratings.csv or a folder holding it -> MovieLens,
                          *.jsonl / *.json -> JSON lines, anything else -> sequences */
    LM_DATA_MOVIELENS,
    LM_DATA_SEQUENCES,
    LM_DATA_JSONL,
    LM_DATA_COUNT
} lm_data_format;

typedef struct lm_dataset {
    int n_users;
    int n_items;          /* rows, row 0 included: items are 1 .. n_items - 1 */
    int n_actions;
    int64_t n_events;
    int64_t *user_off;    /* [n_users + 1]: user u's events are [user_off[u], user_off[u+1]) */
    int32_t *items;       /* [n_events] item rows */
    uint8_t *actions;     /* [n_events] action ids */
    int64_t *ts;          /* [n_events] timestamps as read (sequence files: the position) */
    const char **user_ids;     /* [n_users] */
    const char **item_ids;     /* [n_items]; item_ids[0] is "" */
    const char **item_titles;  /* [n_items], or NULL when the data has none */
    const char **action_names; /* [n_actions] */
    int64_t n_skipped;         /* JSON lines: events of other types */
    void *priv;                /* owned storage */
} lm_dataset;

lm_data_format lm_data_format_parse(const char *s); /* "movielens", ... ; LM_DATA_COUNT if unknown */
const char *lm_data_format_name(lm_data_format f);

/* Reads `path` (a file, or for MovieLens the folder holding ratings.csv).
 * Errors name the file, the line and the problem. */
int lm_dataset_load(lm_dataset **out, const char *path, lm_data_format fmt, char *err,
                    size_t errsz);
void lm_dataset_free(lm_dataset *d);

/* Building a dataset from events one at a time, as the readers and tests
 * do. Strings are copied. Events may come in any order; finish sorts each
 * user's by (ts, order added). */
typedef struct lm_dataset_builder lm_dataset_builder;
lm_dataset_builder *lm_dataset_builder_new(void); /* NULL on out of memory */
void lm_dataset_builder_free(lm_dataset_builder *b);
int lm_dataset_builder_add(lm_dataset_builder *b, const char *user, const char *item,
                           const char *action, int64_t ts, char *err, size_t errsz);
int lm_dataset_builder_title(lm_dataset_builder *b, const char *item, const char *title,
                             char *err, size_t errsz);
/* Consumes the builder (freed whatever the outcome). At most 255 actions;
 * item and user counts fit in int32. */
int lm_dataset_builder_finish(lm_dataset_builder *b, lm_dataset **out, char *err, size_t errsz);

/* ---- leave-one-out ---------------------------------------------------------- */

typedef enum lm_split { LM_SPLIT_VALID, LM_SPLIT_TEST } lm_split;

static inline int lm_user_len(const lm_dataset *d, int u)
{
    return (int)(d->user_off[u + 1] - d->user_off[u]);
}

/* Does user u have a target in `split` (n >= 3 events)? */
static inline int lm_user_evaluable(const lm_dataset *d, int u) { return lm_user_len(d, u) >= 3; }

/* Events a model may train on: all but the last two of an evaluable user,
 * all of any other user. */
static inline int lm_user_train_len(const lm_dataset *d, int u)
{
    int n = lm_user_len(d, u);
    return n >= 3 ? n - 2 : n;
}

/* The target of `split` for an evaluable user: its index into the user's
 * events. Its history is the events before it. */
static inline int lm_user_target(const lm_dataset *d, int u, lm_split split)
{
    return lm_user_len(d, u) - (split == LM_SPLIT_VALID ? 2 : 1);
}

/* ---- vocabularies ------------------------------------------------------------ */

/* Re-maps the dataset's item rows onto a model's vocabulary (ids of rows
 * 1..n-1 in `vocab`); items the model does not know become row 0. Returns
 * how many events were mapped to 0 through *n_unknown. */
int lm_dataset_align(lm_dataset *d, const char *const *vocab, int n_vocab, int64_t *n_unknown,
                     char *err, size_t errsz);

#endif
