/* common/json.h — small helpers around jansson that several modules share. */
#ifndef RANKD_COMMON_JSON_H
#define RANKD_COMMON_JSON_H

#include <jansson.h>

/* "an object", "a string", ...: the kind of a JSON value, for messages
 * such as "field id must be a string, got an integer". */
static inline const char *cm_json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

#endif
