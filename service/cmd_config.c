/* service/cmd_config.c — see cmd_config.h. */
#include "service/cmd_config.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "service/config.h"

int svc_cmd_check_config(int argc, char **argv)
{
    if (argc > 1 || (argc == 1 && (!strcmp(argv[0], "-h") || !strcmp(argv[0], "--help")))) {
        fprintf(argc == 1 ? stdout : stderr,
                "usage: rankd check-config [FILE]\n"
                "  loads configs/default.yaml (embedded), then FILE, then RANKD_* variables,\n"
                "  and prints the effective configuration with secrets as \"***\"\n");
        return argc == 1 ? 0 : 2;
    }
    const char *path = argc == 1 ? argv[0] : NULL;
    svc_config c;
    char err[CM_ERRSZ];
    if (svc_config_load(&c, path, err, sizeof err)) {
        fprintf(stderr, "rankd check-config: %s\n", err);
        return 1;
    }
    printf("# rankd check-config: %s is valid. The effective configuration\n"
           "# (embedded default, %s%senvironment), secrets shown as \"***\":\n",
           path ? path : "the embedded default", path ? path : "", path ? ", " : "");
    svc_config_print(stdout, &c);
    svc_config_free(&c);
    return 0;
}
