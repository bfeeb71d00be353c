/* service/ckpt.h — the checkpoint of `rankd rescore`: where in its input a
 * run has got to, and how many bytes of its output file hold exactly the
 * answers to the input before that place. docs/rescore.md says how a run
 * uses it to resume without duplicates or gaps.
 *
 * The file is one JSON object. svc_ckpt_save replaces it atomically and
 * durably (a temporary file, fsync, rename, fsync of the directory): after
 * a crash at any moment the file is the old checkpoint or the new one,
 * whole. */
#ifndef RANKD_SERVICE_CKPT_H
#define RANKD_SERVICE_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "features/fs.h"

#define SVC_CKPT_MAX_PARTS 1024 /* partitions of an input topic */

typedef struct svc_ckpt {
    char source[4200];       /* "file:<path>", "topic:<name>", "scan:<redis prefix>" */
    char model[128];         /* the tag of the model that wrote the outputs */
    int64_t out_len;         /* bytes of the output file that are done (0 for a topic) */
    /* where the input goes on */
    int64_t in_offset;       /* file: byte offset of the next line */
    int64_t in_line;         /* file: lines before it */
    char cursor[FS_CURSOR_MAX]; /* scan: the cursor of the next page */
    int n_parts;             /* topic: next offset per partition */
    int64_t part_offset[SVC_CKPT_MAX_PARTS];
    /* counters of the whole run, resumed ones included */
    int64_t read, ranked, bad, failed;
    int complete;            /* the input was read to its end */
} svc_ckpt;

/* 0: loaded; 1: there is no file at path (*c untouched); -1 with err when
 * the file cannot be read or is not a checkpoint. */
int svc_ckpt_load(svc_ckpt *c, const char *path, char *err, size_t errsz);
int svc_ckpt_save(const svc_ckpt *c, const char *path, char *err, size_t errsz);

#endif
