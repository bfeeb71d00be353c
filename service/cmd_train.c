/* service/cmd_train.c — `rankd synth`, `rankd train`, `rankd distill` and
 * `rankd eval`: the life of a model before it serves. */
#include "service/cmd_train.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "llm/dataset.h"
#include "llm/eval.h"
#include "llm/model.h"
#include "llm/synth.h"
#include "llm/train.h"
#include "service/args.h"

/* ---- rankd synth ------------------------------------------------------------------------ */

int svc_cmd_synth(int argc, char **argv)
{
    lm_synth_opts so;
    lm_synth_defaults(&so);
    const char *out = NULL;
    int help = 0;
    const svc_arg table[] = {
        {"users", ARG_INT, &so.n_users, 1, 1e8, "users"},
        {"items", ARG_INT, &so.n_items, 1, 1e8, "items"},
        {"groups", ARG_INT, &so.n_groups, 1, 1e8, "item groups (planted structure)"},
        {"min-len", ARG_INT, &so.min_len, 1, 1e5, "fewest interactions per user"},
        {"max-len", ARG_INT, &so.max_len, 1, 1e5, "most interactions per user"},
        {"zipf", ARG_DOUBLE, &so.zipf, 0, 10, "popularity skew within a group"},
        {"follow", ARG_DOUBLE, &so.p_follow, 0, 1, "chance that the next item follows the pattern"},
        {"seed", ARG_U64, &so.seed, 0, 1.8e19, "random seed"},
        {"out", ARG_STR, &out, 0, 0, "output file (default: standard output)"},
        {"help", ARG_FLAG, &help, 0, 0, "this help"},
        {NULL, 0, NULL, 0, 0, NULL}};
    char err[CM_ERRSZ] = "";
    const char *pos[1];
    int npos;
    if (svc_args_parse(argc, argv, table, pos, 0, &npos, err, sizeof err) || help) {
        if (err[0])
            fprintf(stderr, "rankd synth: %s\n", err);
        fprintf(stderr, "usage: rankd synth [options] > events.jsonl\n"
                        "  JSON-lines events with planted structure (llm/synth.h)\n");
        svc_args_usage(table);
        return help ? 0 : 2;
    }
    FILE *f = out ? fopen(out, "w") : stdout;
    if (!f) {
        perror(out);
        return 1;
    }
    lm_synth_stats st;
    int rc = lm_synth_write(&so, f, &st, err, sizeof err);
    if (out && fclose(f) != 0 && rc == 0)
        rc = cm_errf(err, sizeof err, "%s: write failed", out);
    if (rc) {
        fprintf(stderr, "rankd synth: %s\n", err);
        return 1;
    }
    fprintf(stderr, "rankd synth: %lld interactions of %d users on %d items (+ %lld other events)%s%s\n",
            (long long)st.interactions, so.n_users, so.n_items,
            (long long)(st.rankings + st.item_events + st.user_events), out ? " -> " : "", out ? out : "");
    return 0;
}

/* ---- rankd train / distill --------------------------------------------------------------- */

static int load_data(const char *path, const char *format, lm_dataset **d)
{
    char err[CM_ERRSZ];
    lm_data_format fmt = format ? lm_data_format_parse(format) : LM_DATA_AUTO;
    if (fmt == LM_DATA_COUNT) {
        fprintf(stderr, "rankd: --format %s: expected auto, movielens, sequences or jsonl\n", format);
        return -1;
    }
    if (lm_dataset_load(d, path, fmt, err, sizeof err)) {
        fprintf(stderr, "rankd: %s\n", err);
        return -1;
    }
    return 0;
}

/* The teacher's item rows define the student's: align the data to them. */
static int align_to(lm_dataset *d, const char *model_path)
{
    char err[CM_ERRSZ];
    lm_model *m;
    if (lm_model_load(&m, model_path, err, sizeof err)) {
        fprintf(stderr, "rankd: %s\n", err);
        return -1;
    }
    int rc = 0;
    if (m->item_ids) {
        int64_t unknown;
        rc = lm_dataset_align(d, m->item_ids, m->cfg.n_items, &unknown, err, sizeof err);
        if (rc == 0 && unknown)
            fprintf(stderr, "rankd: %lld events name items %s does not know (row 0)\n",
                    (long long)unknown, model_path);
    } else if (m->cfg.n_items != d->n_items) {
        rc = cm_errf(err, sizeof err, "%s has no vocabulary and %d item rows; the data has %d", model_path,
                     m->cfg.n_items, d->n_items);
    }
    if (rc)
        fprintf(stderr, "rankd: %s\n", err);
    lm_model_free(m);
    return rc;
}

static int train_common(int argc, char **argv, int distill)
{
    const char *cmd = distill ? "distill" : "train";
    tr_opts o;
    tr_opts_defaults(&o);
    if (distill) { /* a student a quarter of the default teacher's size */
        o.d_model = 32;
        o.d_ffn = 128;
    }
    const char *format = NULL, *negatives = "topk";
    int help = 0;
    const svc_arg table[] = {
        {"out", ARG_STR, &o.out, 0, 0, "the model artifact to write (required)"},
        {"format", ARG_STR, &format, 0, 0, "data format: auto, movielens, sequences, jsonl"},
        {"teacher", ARG_STR, &o.teacher, 0, 0, "distill: the teacher artifact (required)"},
        {"d-model", ARG_INT, &o.d_model, 1, 8192, "model width"},
        {"heads", ARG_INT, &o.n_heads, 1, 256, "attention heads"},
        {"layers", ARG_INT, &o.n_layers, 1, LM_MAX_LAYERS, "transformer blocks"},
        {"d-ffn", ARG_INT, &o.d_ffn, 1, 65536, "feed-forward width"},
        {"max-hist", ARG_INT, &o.max_hist, 1, 4096, "history length"},
        {"dropout", ARG_FLOAT, &o.dropout, 0, 0.95, "dropout rate"},
        {"emb-std", ARG_FLOAT, &o.emb_std, 1e-4, 10, "embedding initialisation scale"},
        {"batch", ARG_INT, &o.batch, 1, 65536, "sequences per step"},
        {"lr", ARG_FLOAT, &o.lr, 1e-7, 1, "learning rate (AdamW)"},
        {"weight-decay", ARG_FLOAT, &o.weight_decay, 0, 10, "decoupled weight decay of linear weights"},
        {"clip", ARG_FLOAT, &o.clip, 0, 1e6, "global gradient-norm clip (0: off)"},
        {"beta2", ARG_FLOAT, &o.beta2, 0.5, 0.99999, "AdamW second-moment decay"},
        {"warmup", ARG_INT, &o.warmup, 0, 1e7, "warm-up steps"},
        {"crop", ARG_FLOAT, &o.crop, 0, 1, "chance that a training window ends at a random earlier event"},
        {"epochs", ARG_INT, &o.max_epochs, 1, 1e6, "most epochs"},
        {"patience", ARG_INT, &o.patience, 1, 1e6, "evaluations without improvement before stopping"},
        {"lr-decay", ARG_FLOAT, &o.lr_decay, 0.01, 1, "learning rate factor on a plateau (1: constant)"},
        {"decay-patience", ARG_INT, &o.decay_patience, 1, 1e6, "evaluations without improvement before a decay"},
        {"eval-every", ARG_INT, &o.eval_every, 1, 1e6, "epochs between validations"},
        {"eval-users", ARG_INT, &o.eval_users, 0, 1e9, "validation users (0: all)"},
        {"negatives", ARG_STR, &negatives, 0, 0, "ranking groups: topk (the retrieved top group) or sampled"},
        {"group", ARG_INT, &o.group_size, 2, 1024, "candidates per ranking group"},
        {"hard-neg", ARG_INT, &o.hard_neg, 0, 256, "sampled: hard negatives per group from retrieval"},
        {"extra-groups", ARG_INT, &o.extra_groups, 0, 64, "ranking groups per sequence besides the newest"},
        {"rank-weight", ARG_FLOAT, &o.rank_weight, 0, 1e3, "weight of the ranking loss"},
        {"kd-weight", ARG_FLOAT, &o.kd_weight, 0, 1e3, "distill: weight of the teacher's soft targets"},
        {"temperature", ARG_FLOAT, &o.temperature, 0.05, 100, "distill: softmax temperature"},
        {"seed", ARG_U64, &o.seed, 0, 1.8e19, "random seed"},
        {"threads", ARG_INT, &o.threads, 0, 1024, "threads (0: all cores)"},
        {"ckpt", ARG_STR, &o.ckpt, 0, 0, "checkpoint path (default OUT.ckpt)"},
        {"resume", ARG_FLAG, &o.resume, 0, 0, "continue from the checkpoint"},
        {"help", ARG_FLAG, &help, 0, 0, "this help"},
        {NULL, 0, NULL, 0, 0, NULL}};
    const char *pos[1];
    int npos;
    char err[CM_ERRSZ] = "";
    if (svc_args_parse(argc, argv, table, pos, 1, &npos, err, sizeof err) || help || npos != 1 ||
        !o.out || (distill && !o.teacher) || (!distill && o.teacher)) {
        if (err[0])
            fprintf(stderr, "rankd %s: %s\n", cmd, err);
        fprintf(stderr, "usage: rankd %s DATA --out MODEL%s [options]\n"
                        "  DATA: MovieLens ratings.csv (or its folder), a sequence file, or JSON-lines events\n",
                cmd, distill ? " --teacher TEACHER" : "");
        svc_args_usage(table);
        return help ? 0 : 2;
    }
    if (strcmp(negatives, "topk") && strcmp(negatives, "sampled")) {
        fprintf(stderr, "rankd %s: --negatives %s: expected topk or sampled\n", cmd, negatives);
        return 2;
    }
    o.topk = strcmp(negatives, "topk") == 0;
    o.log = stderr;
    o.tty = isatty(fileno(stderr));
    lm_dataset *d;
    if (load_data(pos[0], format, &d))
        return 1;
    if (distill && align_to(d, o.teacher)) {
        lm_dataset_free(d);
        return 1;
    }
    tr_report rep;
    int rc = tr_train(d, &o, &rep, err, sizeof err);
    lm_dataset_free(d);
    if (rc) {
        fprintf(stderr, "rankd %s: %s\n", cmd, err);
        return 1;
    }
    fprintf(stderr, "rankd %s: %d epochs in %.1f s (%.2f s per epoch: %.2f s steps, %.2f s validation)\n", cmd,
            rep.epochs, rep.seconds, rep.seconds_per_epoch, rep.step_seconds / (rep.epochs ? rep.epochs : 1),
            rep.eval_seconds / (rep.epochs ? rep.epochs : 1));
    return 0;
}

int svc_cmd_train(int argc, char **argv) { return train_common(argc, argv, 0); }
int svc_cmd_distill(int argc, char **argv) { return train_common(argc, argv, 1); }

/* ---- rankd export -------------------------------------------------------------------------------- */

typedef struct ev_ref {
    int64_t ts;
    int user;
    int64_t idx;
} ev_ref;

static int by_time(const void *a, const void *b)
{
    const ev_ref *x = a, *y = b;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Any dataset as JSON-lines interaction events in time order across users,
 * as a Kafka topic would carry them: the demo stream of `make run`, or
 * MovieLens turned into events. */
int svc_cmd_export(int argc, char **argv)
{
    const char *format = NULL, *out = NULL;
    double ts_scale = 0;
    int help = 0;
    const svc_arg table[] = {
        {"format", ARG_STR, &format, 0, 0, "data format: auto, movielens, sequences, jsonl"},
        {"out", ARG_STR, &out, 0, 0, "output file (default: standard output)"},
        {"ts-scale", ARG_DOUBLE, &ts_scale, 0, 1e9, "multiply timestamps (0: 1000 for MovieLens seconds, else 1)"},
        {"help", ARG_FLAG, &help, 0, 0, "this help"},
        {NULL, 0, NULL, 0, 0, NULL}};
    const char *pos[1];
    int npos;
    char err[CM_ERRSZ] = "";
    if (svc_args_parse(argc, argv, table, pos, 1, &npos, err, sizeof err) || help || npos != 1) {
        if (err[0])
            fprintf(stderr, "rankd export: %s\n", err);
        fprintf(stderr, "usage: rankd export DATA [--out FILE]   (JSON-lines interaction events)\n");
        svc_args_usage(table);
        return help ? 0 : 2;
    }
    lm_dataset *d;
    if (load_data(pos[0], format, &d))
        return 1;
    int movielens = (format && !strcmp(format, "movielens")) || strstr(pos[0], "ratings") ||
                    strstr(pos[0], "movielens");
    double scale = ts_scale > 0 ? ts_scale : movielens ? 1000.0 : 1.0;
    ev_ref *refs = malloc(sizeof *refs * (size_t)(d->n_events ? d->n_events : 1));
    FILE *f = out ? fopen(out, "w") : stdout;
    if (!refs || !f) {
        fprintf(stderr, "rankd export: %s\n", !refs ? "out of memory" : out);
        free(refs);
        lm_dataset_free(d);
        return 1;
    }
    int64_t n = 0;
    for (int u = 0; u < d->n_users; u++)
        for (int64_t e = d->user_off[u]; e < d->user_off[u + 1]; e++)
            refs[n++] = (ev_ref){.ts = d->ts[e], .user = u, .idx = e};
    qsort(refs, (size_t)n, sizeof *refs, by_time);
    for (int64_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:s,s:s}", "event", "interaction", "id", "", "timestamp",
                              (json_int_t)((double)refs[i].ts * scale), "user", d->user_ids[refs[i].user], "item",
                              d->item_ids[d->items[refs[i].idx]], "type", d->action_names[d->actions[refs[i].idx]]);
        char id[96];
        snprintf(id, sizeof id, "%s-%lld", d->user_ids[refs[i].user], (long long)(refs[i].idx - d->user_off[refs[i].user]));
        json_object_set_new(o, "id", json_string(id));
        char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        fprintf(f, "%s\n", line);
        free(line);
        json_decref(o);
    }
    int bad = out ? fclose(f) : fflush(f);
    fprintf(stderr, "rankd export: %lld events of %d users%s%s\n", (long long)n, d->n_users, out ? " -> " : "",
            out ? out : "");
    free(refs);
    lm_dataset_free(d);
    return bad ? 1 : 0;
}

/* ---- rankd eval ------------------------------------------------------------------------------- */

int svc_cmd_eval(int argc, char **argv)
{
    lm_eval_opts eo = {.split = LM_SPLIT_TEST, .retrieve_n = 100, .isa = LM_ISA_COUNT, .progress = 1};
    const char *format = NULL, *split = "test", *json = NULL;
    int help = 0;
    const svc_arg table[] = {
        {"format", ARG_STR, &format, 0, 0, "data format: auto, movielens, sequences, jsonl"},
        {"split", ARG_STR, &split, 0, 0, "test or valid"},
        {"retrieve", ARG_INT, &eo.retrieve_n, 20, 100000, "two-stage: candidates re-ranked"},
        {"users", ARG_INT, &eo.max_users, 0, 1e9, "evaluate the first N users (0: all)"},
        {"threads", ARG_INT, &eo.threads, 0, 1024, "threads (0: all cores)"},
        {"json", ARG_STR, &json, 0, 0, "also write the result as JSON to this file (- : stdout)"},
        {"help", ARG_FLAG, &help, 0, 0, "this help"},
        {NULL, 0, NULL, 0, 0, NULL}};
    const char *pos[2];
    int npos;
    char err[CM_ERRSZ] = "";
    int bad_split = strcmp(split, "test") != 0;
    if (svc_args_parse(argc, argv, table, pos, 2, &npos, err, sizeof err) || help || npos != 2 ||
        ((bad_split = strcmp(split, "test") && strcmp(split, "valid")))) {
        if (err[0])
            fprintf(stderr, "rankd eval: %s\n", err);
        else if (bad_split && npos == 2)
            fprintf(stderr, "rankd eval: --split %s: expected test or valid\n", split);
        fprintf(stderr, "usage: rankd eval MODEL DATA [options]\n"
                        "  HR and NDCG at 5, 10, 20, full ranking, leave-one-out (../shared/data/README.md)\n");
        svc_args_usage(table);
        return help ? 0 : 2;
    }
    eo.split = strcmp(split, "valid") == 0 ? LM_SPLIT_VALID : LM_SPLIT_TEST;
    lm_dataset *d;
    if (load_data(pos[1], format, &d))
        return 1;
    int rc = 1;
    lm_model *m = NULL;
    if (align_to(d, pos[0]) || lm_model_load(&m, pos[0], err, sizeof err)) {
        if (err[0])
            fprintf(stderr, "rankd eval: %s\n", err);
        goto out;
    }
    lm_eval_result r;
    if (lm_eval_model(m, d, &eo, &r, err, sizeof err)) {
        fprintf(stderr, "rankd eval: %s\n", err);
        goto out;
    }
    char label[1024];
    snprintf(label, sizeof label, "%s (%s) on %s", pos[0], m->quant == LM_QUANT_INT8 ? "int8" : "fp32", pos[1]);
    lm_eval_print_table(stdout, label, &r);
    if (json) {
        FILE *f = strcmp(json, "-") == 0 ? stdout : fopen(json, "w");
        if (!f) {
            perror(json);
            goto out;
        }
        lm_eval_print_json(f, label, &r);
        if (f != stdout && fclose(f) != 0) {
            perror(json);
            goto out;
        }
    }
    rc = 0;
out:
    lm_model_free(m);
    lm_dataset_free(d);
    return rc;
}
