/* service/kafka.h — librdkafka client configurations from rankd's config,
 * shared by `rankd serve` and `rankd rescore`: rankd's defaults, then the
 * config's kafka.properties (which may override them), then
 * kafka.sasl_password as sasl.password; librdkafka's log lines through
 * service/log.h. */
#ifndef RANKD_SERVICE_KAFKA_H
#define RANKD_SERVICE_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "service/config.h"

/* One property; -1 with "kafka property K: why" on refusal. */
int svc_kafka_set(rd_kafka_conf_t *c, const char *key, const char *value, char *err, size_t errsz);

/* A new configuration for a producer (producer = 1: idempotent, linger.ms
 * 0, so that a ranked list goes out at once and retries add no duplicates)
 * or a consumer. The caller owns it (rd_kafka_new takes it, or
 * rd_kafka_conf_destroy); NULL with err when a property is refused. */
rd_kafka_conf_t *svc_kafka_conf(const svc_config *cfg, int producer, char *err, size_t errsz);

#endif
