/* service/cmd_train.h — the model-building subcommands of rankd: synth,
 * train, distill, eval. Each takes main's argv after the subcommand name,
 * prints its own errors and returns the process exit status. */
#ifndef RANKD_SERVICE_CMD_TRAIN_H
#define RANKD_SERVICE_CMD_TRAIN_H

int svc_cmd_synth(int argc, char **argv);
int svc_cmd_train(int argc, char **argv);
int svc_cmd_distill(int argc, char **argv);
int svc_cmd_eval(int argc, char **argv);
int svc_cmd_export(int argc, char **argv);

#endif
