/* service/args.c — see args.h. */
#include "service/args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const svc_arg *find(const svc_arg *t, const char *name, size_t len)
{
    for (; t->name; t++)
        if (strlen(t->name) == len && strncmp(t->name, name, len) == 0)
            return t;
    return NULL;
}

static int set(const svc_arg *a, const char *v, char *err, size_t errsz)
{
    char *end;
    errno = 0;
    switch (a->type) {
    case ARG_INT:
    case ARG_U64:
    case ARG_FLOAT:
    case ARG_DOUBLE: {
        int real = a->type == ARG_FLOAT || a->type == ARG_DOUBLE;
        double x = real ? strtod(v, &end) : (double)strtoll(v, &end, 10);
        if (end == v || *end || errno || !(x >= a->lo && x <= a->hi))
            return cm_errf(err, errsz, "--%s %s: expected a%s number in %g..%g", a->name, v,
                           real ? "" : "n integer", a->lo, a->hi);
        if (a->type == ARG_INT)
            *(int *)a->dst = (int)x;
        else if (a->type == ARG_U64)
            *(uint64_t *)a->dst = (uint64_t)strtoull(v, NULL, 10);
        else if (a->type == ARG_FLOAT)
            *(float *)a->dst = (float)x;
        else
            *(double *)a->dst = x;
        return 0;
    }
    case ARG_STR:
        *(const char **)a->dst = v;
        return 0;
    case ARG_FLAG:
        *(int *)a->dst = 1;
        return 0;
    }
    return -1;
}

int svc_args_parse(int argc, char **argv, const svc_arg *table, const char **pos, int max_pos,
                   int *n_pos, char *err, size_t errsz)
{
    *n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (strncmp(s, "--", 2) != 0 || s[2] == '\0') {
            if (*n_pos == max_pos)
                return cm_errf(err, errsz, "unexpected argument '%s'", s);
            pos[(*n_pos)++] = s;
            continue;
        }
        const char *name = s + 2, *eq = strchr(name, '=');
        const svc_arg *a = find(table, name, eq ? (size_t)(eq - name) : strlen(name));
        if (!a)
            return cm_errf(err, errsz, "unknown option '%s'", s);
        if (a->type == ARG_FLAG) {
            if (eq)
                return cm_errf(err, errsz, "--%s takes no value", a->name);
            set(a, NULL, err, errsz);
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v)
            return cm_errf(err, errsz, "--%s needs a value", a->name);
        if (set(a, v, err, errsz))
            return -1;
    }
    return 0;
}

void svc_args_usage(const svc_arg *t)
{
    for (; t->name; t++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s", t->name,
                 t->type == ARG_FLAG ? "" : t->type == ARG_STR ? " S" : " N");
        fprintf(stderr, "  %-22s %s", left, t->help);
        if (t->type == ARG_INT || t->type == ARG_U64)
            fprintf(stderr, " (%.0f..%.0f)", t->lo, t->hi);
        else if (t->type == ARG_FLOAT || t->type == ARG_DOUBLE)
            fprintf(stderr, " (%g..%g)", t->lo, t->hi);
        fputc('\n', stderr);
    }
}
