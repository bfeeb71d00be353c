/* service/log.h — one line per log record on stderr, as text
 * ("2026-11-22T03:12:01.123Z info  consumer: assigned 4 partitions") or as
 * JSON ({"ts":...,"level":"info","msg":"..."}), filtered by level. Safe to
 * call from any thread. Callers never pass secrets. */
#ifndef RANKD_SERVICE_LOG_H
#define RANKD_SERVICE_LOG_H

typedef enum svc_log_level { SVC_LOG_ERROR, SVC_LOG_WARN, SVC_LOG_INFO, SVC_LOG_DEBUG } svc_log_level;

/* level: "error" | "warn" | "info" | "debug"; format: "text" | "json". */
void svc_log_setup(const char *level, const char *format);
void svc_log(svc_log_level lv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define svc_error(...) svc_log(SVC_LOG_ERROR, __VA_ARGS__)
#define svc_warn(...) svc_log(SVC_LOG_WARN, __VA_ARGS__)
#define svc_info(...) svc_log(SVC_LOG_INFO, __VA_ARGS__)
#define svc_debug(...) svc_log(SVC_LOG_DEBUG, __VA_ARGS__)

#endif
