/* service/rankreq.h — from an event and a user's features to a rank
 * request, and from the answer to the output message.
 *
 * svc_model: the serving artifact with the maps from string ids to its
 * rows (items; action types from its "actions" metadata) and its tag
 * "<name>@<first 12 hex of the file's sha256>".
 *
 * svc_slot: everything one ranking in flight needs, allocated once in a
 * pool sized at start-up: history and exclusion arrays, candidates and
 * their ids, the answer, and where the event came from (for the offset
 * tracker and the latency figures). */
#ifndef RANKD_SERVICE_RANKREQ_H
#define RANKD_SERVICE_RANKREQ_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "common/strmap.h"
#include "features/fs.h"
#include "llm/model.h"
#include "ranker/batcher.h"
#include "service/config.h"
#include "service/events.h"

typedef struct svc_model {
    lm_model *m;
    cm_strmap *items;   /* item id -> row - 1 (rows 1..n_items-1); NULL without a vocabulary */
    cm_strmap *actions; /* action type -> action id */
    char tag[128];
    char path[1024];
} svc_model;

int svc_model_load(svc_model *out, const char *path, char *err, size_t errsz);
void svc_model_free(svc_model *m);
/* The row of an item id; 0 (the unknown row) when the model does not know it. */
int32_t svc_model_item(const svc_model *m, const char *id);
/* The action id of an interaction type; 0 when the model does not know it. */
int32_t svc_model_action(const svc_model *m, const char *type);

/* The feature store of the config's redis section, keeping max_hist
 * entries of history (the model's), and a batch of `ops` operations on it.
 * Both are the caller's to free (fs_batch_free, then fs_close). */
int svc_features_open(const svc_config *c, int max_hist, int ops, fs_store **fs, fs_batch **fb, char *err,
                      size_t errsz);

/* The items marked unavailable in the feature store: their ids, and the
 * rows the model knows among them (for retrieval's exclusions). */
typedef struct svc_unavailable {
    cm_strmap *ids;
    int32_t *rows;
    int n_rows, cap_rows;
} svc_unavailable;

/* Reads the set into *u (which it overwrites without freeing). -1 with err
 * when Redis fails or memory runs out; *u is then empty. */
int svc_unavailable_load(svc_unavailable *u, fs_store *fs, const svc_model *m, char *err, size_t errsz);
void svc_unavailable_free(svc_unavailable *u);

typedef struct svc_slot_limits {
    int max_hist;       /* the model's */
    int max_exclude;    /* seen + unavailable rows passed to retrieval */
    int max_cands;      /* items of a ranking event */
    int k;              /* answer length */
    size_t id_bytes;    /* room for the ids of a ranking event's items */
} svc_slot_limits;

typedef struct svc_slot svc_slot;
struct svc_slot {
    rk_job job;
    const svc_slot_limits *lim; /* the pool's */
    int32_t *hist_items, *hist_actions, *exclude, *cands, *out_items;
    float *out_scores;
    const char **cand_ids; /* [max_cands] into id_buf: a ranking event's items */
    int n_cand_ids;        /* -1: no items, retrieve */
    char *id_buf;
    size_t id_used;
    char event_id[SVC_MAX_ID + 1], user[SVC_MAX_ID + 1];
    int32_t partition;     /* Kafka source, or -1 for HTTP */
    int64_t offset;
    int64_t consumed_ns;   /* arrival in rankd */
    struct svc_mver *ver;  /* the model version its rows belong to (a reference, service/models.h) */
    int variant;           /* the user's A/B variant */
    int status;            /* the job's outcome */
    char err[256];
    /* HTTP callers wait for the answer */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int finished;
    svc_slot *next_free;
};

typedef struct svc_slots svc_slots;

svc_slots *svc_slots_new(int n, const svc_slot_limits *lim);
void svc_slots_free(svc_slots *p);
/* A free slot, or NULL when all are in flight. Thread-safe. */
svc_slot *svc_slot_get(svc_slots *p);
void svc_slot_put(svc_slots *p, svc_slot *s);
int svc_slots_free_count(svc_slots *p);

/* The request for a triggering interaction (retrieve) or a ranking event
 * (its items, the unavailable ones dropped), from the user's features.
 * Exclusions: the user's seen items and the unavailable ones, as the rules
 * say; beyond max_exclude the rest are dropped (the limit bounds
 * retrieval's work). Return 0, or -1 with a reason. */
typedef struct svc_rank_rules {
    int exclude_seen, exclude_unavailable, k;
    const cm_strmap *unavailable;      /* ids of unavailable items, or NULL */
    const int32_t *unavailable_rows;   /* the model rows among them */
    int n_unavailable_rows;
} svc_rank_rules;

/* Two steps, because an event's strings live only until the parser's next
 * event while the features come back later, for the whole poll batch:
 * begin copies what the slot keeps of the event (ids, the ranking's items;
 * a ranking without items, which only rescore's parser lets through,
 * retrieves), fill maps the user's features to rows and sets up the request.
 * The history is cut to the newest max_hist of the model m (which may keep
 * less than the pool's max_hist, after a reload or in an A/B test). */
int svc_slot_begin(svc_slot *s, const svc_event *ev, char *err, size_t errsz);
/* The body of POST /v1/rank up to the feature read: parses it with p (the
 * HTTP thread's parser, whose limits are http.max_body_bytes and
 * ranking.max_candidates), requires a ranking event, takes a slot from the
 * pool and begins it. Returns 0 with *slot (the caller's to put back) and
 * *ev (valid until p's next parse), or the HTTP status to answer (400 for
 * a bad body, 503 when every slot is in flight) with a reason. Separate
 * from the HTTP layer so that tests/fuzz/fuzz_rank_body.c runs it without
 * a server. */
int svc_rank_body(svc_parser *p, svc_slots *pool, const char *body, size_t len, svc_event *ev, svc_slot **slot,
                  char *reason, size_t rsz);
int svc_slot_fill(svc_slot *s, const svc_model *m, const fs_user_state *st, const svc_rank_rules *rules,
                  char *err, size_t errsz);

/* The output message of a finished slot:
 * {"id","user","model","took_us","items":[{"item","score"}]}; returns the
 * length written (truncated answers are not possible: cap is checked),
 * or -1 when cap is too small. */
int svc_slot_json(const svc_slot *s, const svc_model *m, int64_t took_us, char *out, size_t cap);

#endif
