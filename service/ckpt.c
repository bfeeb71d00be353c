/* service/ckpt.c — see ckpt.h. */
#include "service/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"

#define CKPT_VERSION 1

static int get_i64(json_t *o, const char *key, int64_t *out, const char *path, char *err, size_t errsz)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return cm_errf(err, errsz, "%s: checkpoint field \"%s\" missing or not a non-negative integer", path, key);
    *out = json_integer_value(v);
    return 0;
}

static int get_str(json_t *o, const char *key, char *out, size_t cap, const char *path, char *err, size_t errsz)
{
    const char *v = json_string_value(json_object_get(o, key));
    if (!v || strlen(v) >= cap)
        return cm_errf(err, errsz, "%s: checkpoint field \"%s\" missing, not a string or too long", path, key);
    memcpy(out, v, strlen(v) + 1);
    return 0;
}

static int parse(svc_ckpt *c, json_t *o, const char *path, char *err, size_t errsz)
{
    int64_t version = 0, complete = 0;
    if (!json_is_object(o))
        return cm_errf(err, errsz, "%s: not a rankd rescore checkpoint (a JSON object)", path);
    if (get_i64(o, "version", &version, path, err, errsz))
        return -1;
    if (version != CKPT_VERSION)
        return cm_errf(err, errsz, "%s: checkpoint version %lld, this rankd reads %d", path, (long long)version,
                       CKPT_VERSION);
    if (get_str(o, "source", c->source, sizeof c->source, path, err, errsz) ||
        get_str(o, "model", c->model, sizeof c->model, path, err, errsz) ||
        get_str(o, "cursor", c->cursor, sizeof c->cursor, path, err, errsz) ||
        get_i64(o, "out_len", &c->out_len, path, err, errsz) ||
        get_i64(o, "in_offset", &c->in_offset, path, err, errsz) ||
        get_i64(o, "in_line", &c->in_line, path, err, errsz) || get_i64(o, "read", &c->read, path, err, errsz) ||
        get_i64(o, "ranked", &c->ranked, path, err, errsz) || get_i64(o, "bad", &c->bad, path, err, errsz) ||
        get_i64(o, "failed", &c->failed, path, err, errsz) ||
        get_i64(o, "complete", &complete, path, err, errsz))
        return -1;
    c->complete = complete != 0;
    json_t *parts = json_object_get(o, "partitions");
    if (!json_is_array(parts) || json_array_size(parts) > SVC_CKPT_MAX_PARTS)
        return cm_errf(err, errsz, "%s: checkpoint field \"partitions\" missing or longer than %d", path,
                       SVC_CKPT_MAX_PARTS);
    c->n_parts = (int)json_array_size(parts);
    for (int i = 0; i < c->n_parts; i++) {
        json_t *v = json_array_get(parts, (size_t)i);
        if (!json_is_integer(v))
            return cm_errf(err, errsz, "%s: checkpoint partitions[%d] is not an integer", path, i);
        c->part_offset[i] = json_integer_value(v);
    }
    return 0;
}

int svc_ckpt_load(svc_ckpt *c, const char *path, char *err, size_t errsz)
{
    if (access(path, F_OK) != 0 && errno == ENOENT)
        return 1;
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o)
        return cm_errf(err, errsz, "%s:%d: checkpoint is not JSON: %s", path, je.line, je.text);
    svc_ckpt tmp;
    memset(&tmp, 0, sizeof tmp);
    int rc = parse(&tmp, o, path, err, errsz);
    json_decref(o);
    if (rc == 0)
        *c = tmp;
    return rc;
}

static json_t *to_json(const svc_ckpt *c)
{
    json_t *parts = json_array();
    for (int i = 0; parts && i < c->n_parts; i++)
        json_array_append_new(parts, json_integer(c->part_offset[i]));
    return json_pack("{s:i, s:s, s:s, s:I, s:I, s:I, s:s, s:o, s:I, s:I, s:I, s:I, s:i}", "version", CKPT_VERSION,
                     "source", c->source, "model", c->model, "out_len", (json_int_t)c->out_len, "in_offset",
                     (json_int_t)c->in_offset, "in_line", (json_int_t)c->in_line, "cursor", c->cursor,
                     "partitions", parts, "read", (json_int_t)c->read, "ranked", (json_int_t)c->ranked, "bad",
                     (json_int_t)c->bad, "failed", (json_int_t)c->failed, "complete", c->complete);
}

/* fsync of the directory that holds path: a rename is durable only then. */
static int sync_dir(const char *path, char *err, size_t errsz)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = fd >= 0 && fsync(fd) == 0 ? 0
                                       : cm_errf(err, errsz, "%s: fsync of its directory: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return rc;
}

int svc_ckpt_save(const svc_ckpt *c, const char *path, char *err, size_t errsz)
{
    json_t *o = to_json(c);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return cm_errf(err, errsz, "%s: out of memory", path);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(text);
    int ok = fd >= 0 && write(fd, text, len) == (ssize_t)len && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && ok)
        ok = 0, e = errno;
    free(text);
    if (!ok) {
        unlink(tmp);
        return cm_errf(err, errsz, "%s: cannot write the checkpoint: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        return cm_errf(err, errsz, "%s: cannot replace the checkpoint: %s", path, strerror(e));
    }
    return sync_dir(path, err, errsz);
}
