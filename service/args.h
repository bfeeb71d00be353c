/* service/args.h — a table-driven parser for subcommand options:
 * "--name VALUE" or "--name=VALUE" (flags take no value), positional
 * arguments collected in order. Each option has a type and bounds; an
 * error names the option and what it expected. */
#ifndef RANKD_SERVICE_ARGS_H
#define RANKD_SERVICE_ARGS_H

#include <stddef.h>
#include <stdint.h>

typedef enum svc_arg_type { ARG_INT, ARG_FLOAT, ARG_DOUBLE, ARG_U64, ARG_STR, ARG_FLAG } svc_arg_type;

typedef struct svc_arg {
    const char *name;   /* without the dashes */
    svc_arg_type type;
    void *dst;          /* int *, float *, double *, uint64_t *, const char **, int * (flag: 1) */
    double lo, hi;      /* bounds for numbers */
    const char *help;
} svc_arg;

/* Parses argv against the table (terminated by a NULL name); positional
 * arguments go to pos[0..max_pos). Returns 0, or -1 with err set. */
int svc_args_parse(int argc, char **argv, const svc_arg *table, const char **pos, int max_pos,
                   int *n_pos, char *err, size_t errsz);

/* Prints the table's options, one per line, with their help and bounds. */
void svc_args_usage(const svc_arg *table);

#endif
