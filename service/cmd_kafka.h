/* service/cmd_kafka.h — Kafka tools: dev-broker, feed, watch (see cmd_kafka.c). */
#ifndef RANKD_SERVICE_CMD_KAFKA_H
#define RANKD_SERVICE_CMD_KAFKA_H

int svc_cmd_dev_broker(int argc, char **argv);
int svc_cmd_feed(int argc, char **argv);
int svc_cmd_watch(int argc, char **argv);

#endif
