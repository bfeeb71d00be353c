/* service/serve.h — `rankd serve`: the streaming service of
 * docs/service.md. svc_serve runs until *stop becomes non-zero (a signal
 * handler sets it), then stops consuming, finishes the rankings in flight,
 * flushes the producer, commits what is done and returns 0. */
#ifndef RANKD_SERVICE_SERVE_H
#define RANKD_SERVICE_SERVE_H

#include <signal.h>
#include <stddef.h>

#include "service/config.h"

/* Called once the service is up (model loaded, HTTP listening), with the
 * HTTP port it got; for tests that start it in-process. May be NULL. */
typedef void (*svc_ready_fn)(void *ctx, int http_port);

int svc_serve(const svc_config *cfg, volatile sig_atomic_t *stop, svc_ready_fn ready, void *ready_ctx,
              char *err, size_t errsz);

/* Asks the running service to reload its models (what SIGHUP does):
 * async-signal-safe, it only sets a flag that the consumer loop reads. */
void svc_serve_reload(void);

/* rankd serve [--config FILE]; SIGINT/SIGTERM stop it, SIGHUP reloads. */
int svc_cmd_serve(int argc, char **argv);

#endif
