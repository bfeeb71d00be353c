/* service/log.c — see log.h. */
#include "service/log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static svc_log_level max_level = SVC_LOG_INFO;
static int json_format;

void svc_log_setup(const char *level, const char *format)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; level && i < 4; i++)
        if (!strcmp(level, names[i]))
            max_level = (svc_log_level)i;
    json_format = format && !strcmp(format, "json");
}

void svc_log(svc_log_level lv, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if (lv > max_level)
        return;
    char msg[2048], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);
    if (json_format) {
        json_t *o = json_pack("{s:s,s:s,s:s}", "ts", ts, "level", names[lv], "msg", msg);
        char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (line)
            fprintf(stderr, "%s\n", line);
        free(line);
        json_decref(o);
    } else {
        fprintf(stderr, "%s %-5s %s\n", ts, names[lv], msg);
    }
}
