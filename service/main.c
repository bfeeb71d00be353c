/* service/main.c — the rankd binary: one program, many subcommands. */
#include <stdio.h>
#include <string.h>

#include "llm/kernels.h"
#include "service/cmd_config.h"
#include "service/cmd_model.h"
#include "service/cmd_kafka.h"
#include "service/cmd_train.h"
#include "service/rescore.h"
#include "service/serve.h"

static int cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("rankd %s (git %s)\ncpu kernels: %s (best on this CPU: %s)\ncuda: %s\n", RANKD_VERSION,
           RANKD_GIT, lm_isa_name(lm_isa_default()), lm_isa_name(lm_isa_detect()),
#ifdef RANKD_WITH_CUDA
           "built"
#else
           "not built"
#endif
    );
    return 0;
}

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"version", cmd_version, "print the version and the kernels this CPU runs"},
    {"score", svc_cmd_score, "score an inputs file with a model: rankd score MODEL INPUTS OUTPUT"},
    {"quantize", svc_cmd_quantize, "write the int8 form of an fp32 model: rankd quantize IN OUT"},
    {"serve", svc_cmd_serve, "the streaming service: rankd serve [--config FILE]"},
    {"rescore", svc_cmd_rescore, "rank a batch of requests, resumably: rankd rescore --input F --output F"},
    {"dev-broker", svc_cmd_dev_broker, "a Kafka-protocol broker on loopback for development and tests"},
    {"feed", svc_cmd_feed, "produce JSON-lines events to a topic: rankd feed FILE --brokers B"},
    {"watch", svc_cmd_watch, "print the ranked lists of a topic: rankd watch --brokers B"},
    {"synth", svc_cmd_synth, "generate events with planted structure: rankd synth > events.jsonl"},
    {"train", svc_cmd_train, "train a model: rankd train DATA --out MODEL"},
    {"distill", svc_cmd_distill, "distil a student: rankd distill DATA --teacher T --out MODEL"},
    {"eval", svc_cmd_eval, "HR/NDCG of a model on a dataset: rankd eval MODEL DATA"},
    {"export", svc_cmd_export, "a dataset as JSON-lines events in time order: rankd export DATA"},
    {"check-config", svc_cmd_check_config, "validate a config, print it: rankd check-config [FILE]"},
};

static int usage(FILE *to)
{
    fprintf(to, "usage: rankd COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(to, "  %-13s %s\n", commands[i].name, commands[i].summary);
    return to == stdout ? 0 : 2;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return usage(stdout);
    if (!strcmp(argv[1], "--version"))
        return cmd_version(0, NULL);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "rankd: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
