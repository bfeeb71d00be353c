/* service/cmd_model.h — the model tooling subcommands of rankd:
 * score and quantize. Each takes main's argv after the subcommand name,
 * prints its own errors and returns the process exit status. */
#ifndef RANKD_SERVICE_CMD_MODEL_H
#define RANKD_SERVICE_CMD_MODEL_H

int svc_cmd_score(int argc, char **argv);
int svc_cmd_quantize(int argc, char **argv);

#endif
