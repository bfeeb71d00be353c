/* service/events.h — the input events of ../shared/DESIGN.md (compatible
 * with Metarank's), parsed and validated from the bytes of a Kafka message
 * or an HTTP body.
 *
 *   {"event":"interaction","id":"e1","timestamp":1700000000000,"user":"u1","item":"i9","type":"click"}
 *   {"event":"ranking","id":"r1","timestamp":1700000000000,"user":"u1","items":[{"id":"i3"},{"id":"i7"}]}
 *   {"event":"item","id":"e2","timestamp":1700000000000,"item":"i9","fields":[{"name":"available","value":false}]}
 *   {"event":"user","id":"e3","timestamp":1700000000000,"user":"u1","fields":[]}
 *
 * Every rejection has a reason that names the field: "missing field
 * \"user\"", "field \"timestamp\" must be an integer", "event of 70000
 * bytes exceeds 65536", "unknown event type \"clicks\"". Fields other than
 * these are ignored (forward compatibility). Ids (event, user, item, type,
 * the ranking's item ids, field names) are 1..SVC_MAX_ID bytes of UTF-8
 * without control characters. A ranking keeps the first occurrence of an
 * item listed twice. */
#ifndef RANKD_SERVICE_EVENTS_H
#define RANKD_SERVICE_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#define SVC_MAX_ID 256      /* bytes of an id, as the model vocabulary allows */
#define SVC_MAX_FIELDS 64   /* fields of an item or user event */

typedef enum svc_event_kind { SVC_EV_INTERACTION, SVC_EV_RANKING, SVC_EV_ITEM, SVC_EV_USER } svc_event_kind;

typedef enum svc_value_kind { SVC_VAL_BOOL, SVC_VAL_NUMBER, SVC_VAL_STRING, SVC_VAL_OTHER } svc_value_kind;

typedef struct svc_field {
    const char *name;
    svc_value_kind kind;
    int boolean;           /* SVC_VAL_BOOL */
    double number;         /* SVC_VAL_NUMBER */
    const char *string;    /* SVC_VAL_STRING; for OTHER (null, lists, objects) the JSON text */
} svc_field;

typedef struct svc_event {
    svc_event_kind kind;
    const char *id;
    int64_t timestamp;     /* ms since the epoch */
    const char *user;      /* interaction, ranking, user */
    const char *item;      /* interaction, item */
    const char *type;      /* interaction: click, view, purchase, ... */
    const char **items;    /* ranking: the items to rank */
    int n_items;
    svc_field fields[SVC_MAX_FIELDS]; /* item, user */
    int n_fields;
} svc_event;

typedef struct svc_event_limits {
    size_t max_bytes;      /* larger input is rejected before parsing */
    int max_items;         /* items of a ranking event */
    /* 1: a ranking event without "items" is valid and asks for retrieval
     * (ev->items NULL, n_items 0); rankd rescore's input. 0 (the service):
     * "items" is required. */
    int items_optional;
} svc_event_limits;

typedef struct svc_parser svc_parser;

/* NULL on out of memory or limits out of range (max_bytes 0, max_items < 1).
 * A parser serves one thread. */
svc_parser *svc_parser_new(const svc_event_limits *lim);
void svc_parser_free(svc_parser *p);

/* Parses buf[0..len). On success fills *ev, whose strings and items array
 * belong to the parser (not to buf) and stay valid until its next call or
 * svc_parser_free; returns 0. On rejection returns -1 with `reason`
 * filled and *ev zeroed. */
int svc_event_parse(svc_parser *p, const char *buf, size_t len, svc_event *ev, char *reason,
                    size_t rsz);

const char *svc_event_kind_name(svc_event_kind k);

/* The `available` field of an item event: 1 or 0 for a JSON boolean; -1
 * when absent, not a boolean, or not an item event. */
int svc_event_available(const svc_event *ev);

#endif
