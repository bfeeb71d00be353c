/* service/kafka.c — see kafka.h. */
#include "service/kafka.h"

#include <string.h>

#include "common/err.h"
#include "service/log.h"

int svc_kafka_set(rd_kafka_conf_t *c, const char *key, const char *value, char *err, size_t errsz)
{
    char why[512];
    if (rd_kafka_conf_set(c, key, value, why, sizeof why) != RD_KAFKA_CONF_OK)
        return cm_errf(err, errsz, "kafka property %s: %s", key, why);
    return 0;
}

/* librdkafka's log lines go through ours. Properties meant for the
 * consumer are set on the producer too (one list in the config): the
 * warnings that they are ignored there are debug lines. */
static void kafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    svc_log_level lv = !strcmp(fac, "CONFWARN") ? SVC_LOG_DEBUG
                       : level <= 3             ? SVC_LOG_ERROR
                       : level == 4             ? SVC_LOG_WARN
                       : level <= 6             ? SVC_LOG_INFO
                                                : SVC_LOG_DEBUG;
    svc_log(lv, "kafka %s: %s", fac, buf);
}

rd_kafka_conf_t *svc_kafka_conf(const svc_config *cfg, int producer, char *err, size_t errsz)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(c, kafka_log);
    int rc = svc_kafka_set(c, "bootstrap.servers", cfg->kafka.brokers, err, errsz) ||
             svc_kafka_set(c, "client.id", "rankd", err, errsz) ||
             (producer && (svc_kafka_set(c, "enable.idempotence", "true", err, errsz) ||
                           svc_kafka_set(c, "linger.ms", "0", err, errsz)));
    for (int i = 0; rc == 0 && i < cfg->kafka.n_props; i++)
        rc = svc_kafka_set(c, cfg->kafka.props[i].key, cfg->kafka.props[i].value, err, errsz);
    if (rc == 0 && *cfg->kafka.sasl_password) /* the loader refused it in properties too */
        rc = svc_kafka_set(c, "sasl.password", cfg->kafka.sasl_password, err, errsz);
    if (rc) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    return c;
}
