/* service/cmd_config.h — `rankd check-config [FILE]`: loads FILE over the
 * embedded default and under the environment, and prints the effective
 * configuration (secrets masked) or the first error. Takes main's argv
 * after the subcommand name; returns the process exit status (0 valid,
 * 1 invalid, 2 usage). */
#ifndef RANKD_SERVICE_CMD_CONFIG_H
#define RANKD_SERVICE_CMD_CONFIG_H

int svc_cmd_check_config(int argc, char **argv);

#endif
