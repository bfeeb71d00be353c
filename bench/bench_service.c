/* bench/bench_service.c — rankd serve under load, on this machine: a real
 * redis-server, a Kafka-protocol broker (librdkafka's mock cluster) and the
 * service in one process, all on loopback, with a load generator producing
 * to the broker and consuming the ranked lists.
 *
 *   ingest:     interactions that only update features, as fast as they go
 *   ranking:    triggering interactions as fast as they go (retrieval top
 *               100 re-ranked, top 10 published)
 *   latency:    a fixed offered load of triggering interactions; end-to-end
 *               latency from produce to the ranked list consumed
 *   rescore:    `rankd rescore` on a file of ranking requests of 100 given
 *               candidates each (the users' histories from the phases
 *               before), file out, every core, no broker running
 *
 *   --soak:     `make soak`: a sustained load against `rankd serve` as its
 *               own process, for minutes, memory and latency per interval
 *               (soak() below)
 *
 * Model: a student-sized int8 ranker-v1 (d_model 64, 2 layers, 10,000 items)
 * with random weights: speed does not depend on what the weights learned.
 * The scorer gets one thread (RANKD_BENCH_THREADS to change it): the broker,
 * redis-server and the load generator share the same two cores, and a
 * second spinning scorer thread made the latency tail several times worse.
 * Prints one JSON line per figure, for bench/report.py. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "llm/quantize.h"
#include "llm/train_model.h"
#include "ranker/batcher.h"
#include "service/config.h"
#include "service/rescore.h"
#include "service/serve.h"

#define N_ITEMS 10000
#define N_USERS 20000
#define MAX_SENT_BENCH 400000

static int max_sent = MAX_SENT_BENCH; /* events one run may send; the soak sizes it from its length */
static int soak_users;                /* soak: every user is new after 4 events (TTLs bound the keys) */

static char dir[256];
static pid_t redis_pid = -1;
static int redis_port;

static double now_s(void) { return (double)rk_now_ns() * 1e-9; }

static void die(const char *what)
{
    fprintf(stderr, "bench_service: %s\n", what);
    if (redis_pid > 0)
        kill(redis_pid, SIGKILL);
    exit(1);
}

/* ---- redis-server ------------------------------------------------------------------------ */

static void start_redis(void)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        redis_port = 20000 + (int)((rk_now_ns() / 1000 + attempt * 7919) % 30000);
        char port[16], logf[300];
        snprintf(port, sizeof port, "%d", redis_port);
        snprintf(logf, sizeof logf, "%s/redis.log", dir);
        redis_pid = fork();
        if (redis_pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", dir, "--logfile", logf, (char *)NULL);
            _exit(127);
        }
        for (int i = 0; i < 50; i++) {
            usleep(100000);
            redisContext *c = redisConnect("127.0.0.1", redis_port);
            if (c && !c->err) {
                redisReply *r = redisCommand(c, "PING");
                int ok = r && r->type == REDIS_REPLY_STATUS;
                freeReplyObject(r);
                redisFree(c);
                if (ok)
                    return;
            } else if (c) {
                redisFree(c);
            }
            int st;
            if (waitpid(redis_pid, &st, WNOHANG) == redis_pid)
                break; /* the port was taken: try another */
        }
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
    }
    die("cannot start redis-server (scripts/install-deps.sh installs it)");
}

/* ---- the model ------------------------------------------------------------------------------ */

static void make_model(const char *fp32, const char *int8)
{
    lm_config c = {.d_model = 64, .n_heads = 2, .n_layers = 2, .d_ffn = 256, .max_hist = 50,
                   .n_items = N_ITEMS, .n_actions = 3};
    tr_limits lim = {.max_seqs = 1, .max_tokens = 50, .max_groups = 0, .group_size = 2};
    tr_model *m;
    char err[CM_ERRSZ];
    if (tr_model_new(&m, &c, &lim, NULL, err, sizeof err))
        die(err);
    tr_model_init(m, 1, 0.1f);
    static char ids[N_ITEMS][8];
    const char *idp[N_ITEMS];
    idp[0] = "";
    for (int i = 1; i < N_ITEMS; i++) {
        snprintf(ids[i], sizeof ids[i], "i%d", i);
        idp[i] = ids[i];
    }
    lm_st_writer *w = lm_st_writer_new();
    lm_quantize_stats qs;
    if (tr_model_write(m, w, 1, err, sizeof err) ||
        lm_st_writer_meta(w, "actions", "[\"view\",\"click\",\"purchase\"]", err, sizeof err) ||
        lm_st_writer_meta(w, "name", "bench-student", err, sizeof err) ||
        lm_vocab_write(w, idp, N_ITEMS, err, sizeof err) || lm_st_writer_save(w, fp32, err, sizeof err) ||
        lm_quantize_file(fp32, int8, &qs, err, sizeof err))
        die(err);
    lm_st_writer_free(w);
    tr_model_free(m);
}

/* ---- the service ----------------------------------------------------------------------------------- */

static volatile sig_atomic_t stop_service;
static svc_config cfg;
static atomic_int http_port;

static void on_ready(void *ctx, int port)
{
    (void)ctx;
    atomic_store(&http_port, port > 0 ? port : -1);
}

static void *serve_thread(void *arg)
{
    (void)arg;
    char err[CM_ERRSZ];
    if (svc_serve(&cfg, &stop_service, on_ready, NULL, err, sizeof err)) {
        fprintf(stderr, "bench_service: %s\n", err);
        atomic_store(&http_port, -1);
    }
    return NULL;
}

/* A counter from /metrics, read over a plain socket. */
static long long metric(const char *name)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atomic_load(&http_port))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    static char buf[1 << 17];
    size_t got = 0;
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        write(fd, "GET /metrics HTTP/1.0\r\n\r\n", 25) == 25) {
        ssize_t r;
        while ((r = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
            got += (size_t)r;
    }
    if (fd >= 0)
        close(fd);
    buf[got] = '\0';
    const char *p = strstr(buf, name);
    return p && p[strlen(name)] == ' ' ? atoll(p + strlen(name) + 1) : -1;
}

/* ---- the load generator ----------------------------------------------------------------------------------- */

static rd_kafka_t *producer, *reader;
static char brokers[128];
static double *sent_at; /* [max_sent] by event number */
static atomic_int received;
static double *lat_us, *took_us; /* end to end; inside rankd (the output's took_us) */
static atomic_int n_lat;
static atomic_int reading = 1;

static char producer_linger_ms[16] = "0"; /* the soak batches: see soak() */

static rd_kafka_t *client(rd_kafka_type_t type)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    if (type == RD_KAFKA_PRODUCER) {
        rd_kafka_conf_set(c, "linger.ms", producer_linger_ms, err, sizeof err);
        rd_kafka_conf_set(c, "queue.buffering.max.messages", "1000000", err, sizeof err);
    } else {
        rd_kafka_conf_set(c, "group.id", "bench-reader", err, sizeof err);
        rd_kafka_conf_set(c, "fetch.wait.max.ms", "1", err, sizeof err);
    }
    rd_kafka_t *rk = rd_kafka_new(type, c, err, sizeof err);
    if (!rk)
        die(err);
    return rk;
}

static void send_event(int no, const char *type)
{
    char buf[200], user[16];
    int u = soak_users ? no / 4 : (int)(((unsigned)no * 2654435761u) % N_USERS);
    snprintf(user, sizeof user, "u%d", u);
    int n = snprintf(buf, sizeof buf,
                     "{\"event\":\"interaction\",\"id\":\"e%d\",\"timestamp\":%d,\"user\":\"%s\",\"item\":\"i%d\","
                     "\"type\":\"%s\"}", no, 1000 + no, user, 1 + (int)(((unsigned)no * 40503u) % (N_ITEMS - 1)), type);
    sent_at[no] = now_s();
    while (rd_kafka_producev(producer, RD_KAFKA_V_TOPIC("ev"), RD_KAFKA_V_VALUE(buf, (size_t)n),
                             RD_KAFKA_V_KEY(user, strlen(user)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(producer, 1);
    rd_kafka_poll(producer, 0);
}

static void *read_outputs(void *arg)
{
    (void)arg;
    while (atomic_load(&reading)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(reader, 20);
        if (!m)
            continue;
        if (!m->err) {
            double t = now_s();
            const char *p = memchr(m->payload, 'e', m->len); /* {"id":"e<no>" */
            int no = p ? atoi(p + 1) : -1;
            const char *tk = memmem(m->payload, m->len, "\"took_us\":", 10);
            if (no >= 0 && no < max_sent && sent_at[no] > 0) {
                int k = atomic_fetch_add(&n_lat, 1);
                if (k < max_sent) {
                    lat_us[k] = (t - sent_at[no]) * 1e6;
                    took_us[k] = tk ? atof(tk + 10) : 0.0;
                }
            }
            atomic_fetch_add(&received, 1);
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, int n, double q) { return n ? v[(int)(q * (n - 1))] : 0.0; }

/* Waits until `want` ranked lists have come or `secs` passed. */
static void wait_received(int want, double secs)
{
    double t0 = now_s();
    while (atomic_load(&received) < want && now_s() - t0 < secs)
        usleep(1000);
}

/* ---- one phase: a fresh broker and service ----------------------------------------------------------- */

/* librdkafka's mock broker finds a fetch offset by walking its log (one
 * entry per produce request), so fetches slow down as a log grows to tens
 * of thousands of messages; a real broker indexes its logs. Each phase
 * therefore gets a new broker and a new service: what is measured is rankd,
 * not the mock's log scan. */
typedef struct phase {
    rd_kafka_t *owner;
    rd_kafka_mock_cluster_t *mc;
    pthread_t st, rt;
    int no;
} phase;

static void phase_start(phase *ph, const char *int8, const char *yaml)
{
    memset(ph, 0, sizeof *ph);
    char err[CM_ERRSZ];
    brokers[0] = '\0';
    ph->owner = client(RD_KAFKA_PRODUCER);
    ph->mc = rd_kafka_mock_cluster_new(ph->owner, 1);
    const char *topics[3] = {"ev", "out", "dlq"};
    for (int i = 0; i < 3; i++)
        rd_kafka_mock_topic_create(ph->mc, topics[i], 4, 1);
    snprintf(brokers, sizeof brokers, "%s", rd_kafka_mock_cluster_bootstraps(ph->mc));
    FILE *f = fopen(yaml, "w");
    fprintf(f, "kafka:\n  brokers: \"%s\"\n  input_topic: ev\n  output_topic: out\n  dead_letter_topic: dlq\n"
               "  poll_batch: 512\n  poll_timeout_ms: 5\n  properties:\n    session.timeout.ms: \"6000\"\n"
               "    fetch.wait.max.ms: \"1\"\nredis:\n  port: %d\nmodel:\n  path: \"%s\"\n  threads: %d\n"
               "ranking:\n  retrieve_n: 100\n  k: 10\n  trigger_types: [click]\nhttp:\n  port: 0\n"
               "batching:\n  max_batch: 64\nlogging:\n  level: warn\n", brokers, redis_port, int8,
            getenv("RANKD_BENCH_THREADS") ? atoi(getenv("RANKD_BENCH_THREADS")) : 1);
    fclose(f);
    if (svc_config_load(&cfg, yaml, err, sizeof err))
        die(err);
    stop_service = 0;
    atomic_store(&http_port, 0);
    pthread_create(&ph->st, NULL, serve_thread, NULL);
    while (atomic_load(&http_port) == 0)
        usleep(10000);
    if (atomic_load(&http_port) < 0)
        die("the service did not start");
    producer = client(RD_KAFKA_PRODUCER);
    reader = client(RD_KAFKA_CONSUMER);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (int p = 0; p < 4; p++)
        rd_kafka_topic_partition_list_add(l, "out", p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(reader, l);
    rd_kafka_topic_partition_list_destroy(l);
    atomic_store(&reading, 1);
    atomic_store(&received, 0);
    pthread_create(&ph->rt, NULL, read_outputs, NULL);
    /* warm-up: the group join, the first batches */
    for (int i = 0; i < 200; i++)
        send_event(ph->no++, "click");
    rd_kafka_flush(producer, 10000);
    wait_received(200, 60);
    atomic_store(&received, 0);
    atomic_store(&n_lat, 0);
}

static void phase_stop(phase *ph)
{
    atomic_store(&reading, 0);
    pthread_join(ph->rt, NULL);
    stop_service = 1;
    pthread_join(ph->st, NULL);
    rd_kafka_consumer_close(reader);
    rd_kafka_destroy(reader);
    rd_kafka_destroy(producer);
    rd_kafka_mock_cluster_destroy(ph->mc);
    rd_kafka_destroy(ph->owner);
    svc_config_free(&cfg);
    memset(sent_at, 0, sizeof *sent_at * (size_t)max_sent);
}

static void bench_latency(phase *ph, int run)
{
    const int rate = 1000, secs = 10, n_events = rate * secs;
    double t0 = now_s();
    for (int i = 0; i < n_events; i++) {
        double due = t0 + (double)i / rate;
        while (now_s() < due)
            usleep(50);
        send_event(ph->no++, "click");
    }
    rd_kafka_flush(producer, 10000);
    wait_received(n_events, 30);
    int n = atomic_load(&n_lat) < max_sent ? atomic_load(&n_lat) : max_sent;
    qsort(lat_us, (size_t)n, sizeof *lat_us, cmp_d);
    qsort(took_us, (size_t)n, sizeof *took_us, cmp_d);
    printf("{\"bench\": \"service_latency\", \"run\": %d, \"offered_per_s\": %d, \"events\": %d, "
           "\"ranked\": %d, \"p50_us\": %.0f, \"p99_us\": %.0f, \"p999_us\": %.0f, \"max_us\": %.0f, "
           "\"inside_p50_us\": %.0f, \"inside_p99_us\": %.0f}\n",
           run, rate, n_events, n, pct(lat_us, n, 0.5), pct(lat_us, n, 0.99), pct(lat_us, n, 0.999),
           n ? lat_us[n - 1] : 0.0, pct(took_us, n, 0.5), pct(took_us, n, 0.99));
    fflush(stdout);
}

static void bench_ranking(phase *ph)
{
    const int n_rank = 20000;
    double t0 = now_s();
    for (int i = 0; i < n_rank; i++)
        send_event(ph->no++, "click");
    rd_kafka_flush(producer, 60000);
    wait_received(n_rank, 120);
    double t = now_s() - t0;
    printf("{\"bench\": \"service_ranking\", \"events\": %d, \"ranked\": %d, \"seconds\": %.2f, "
           "\"rankings_per_s\": %.0f}\n", n_rank, atomic_load(&received), t, atomic_load(&received) / t);
    fflush(stdout);
}

static void bench_ingest(phase *ph)
{
    const int n_ingest = 100000;
    const char *key = "rankd_events_total{type=\"interaction\",outcome=\"applied\"}";
    long long applied0 = metric(key), applied = applied0;
    double t0 = now_s();
    for (int i = 0; i < n_ingest; i++)
        send_event(ph->no++, "view");
    rd_kafka_flush(producer, 60000);
    double t_sent = now_s();
    while (applied - applied0 < n_ingest && now_s() - t0 < 120) {
        usleep(20000);
        applied = metric(key);
    }
    double t = now_s() - t0;
    printf("{\"bench\": \"service_ingest\", \"events\": %d, \"applied\": %lld, \"seconds\": %.2f, "
           "\"events_per_s\": %.0f, \"produce_seconds\": %.2f}\n",
           n_ingest, applied - applied0, t, (double)(applied - applied0) / t, t_sent - t0);
    fflush(stdout);
}

/* Requests/s of rankd rescore, file to file, at the scorer's full
 * throughput on this CPU: batches of 512, every core (the broker and the
 * service of the other phases are gone by now). 4,000 requests: a few
 * seconds on a 2-core machine. */
static void bench_rescore(const char *int8)
{
    const int n = 4000, m = 100;
    char in[300], out[300], yaml[300], err[CM_ERRSZ];
    snprintf(in, sizeof in, "%s/rescore.in.jsonl", dir);
    snprintf(out, sizeof out, "%s/rescore.out.jsonl", dir);
    snprintf(yaml, sizeof yaml, "%s/rescore.yaml", dir);
    FILE *f = fopen(in, "w");
    if (!f)
        die("cannot write the rescore input");
    for (int q = 0; q < n; q++) {
        int u = (int)(((unsigned)q * 2654435761u) % N_USERS);
        fprintf(f, "{\"event\":\"ranking\",\"id\":\"r%d\",\"timestamp\":%d,\"user\":\"u%d\",\"items\":[", q, q, u);
        for (int j = 0; j < m; j++)
            fprintf(f, "%s{\"id\":\"i%d\"}", j ? "," : "", 1 + (int)(((unsigned)(q * m + j) * 40503u) % (N_ITEMS - 1)));
        fprintf(f, "]}\n");
    }
    fclose(f);
    f = fopen(yaml, "w");
    fprintf(f, "redis:\n  port: %d\nmodel:\n  path: \"%s\"\n  device: cpu\n  threads: 0\n"
               "ranking:\n  k: 10\n  max_candidates: 100\nlogging:\n  level: warn\n", redis_port, int8);
    fclose(f);
    svc_config rc;
    if (svc_config_load(&rc, yaml, err, sizeof err))
        die(err);
    svc_rescore_opts o = {.input = in, .output = out, .batch = 512, .restart = 1};
    svc_rescore_stats st;
    volatile sig_atomic_t never = 0;
    if (svc_rescore(&rc, &o, &never, &st, err, sizeof err) != 0)
        die(err);
    printf("{\"bench\": \"rescore\", \"requests\": %lld, \"candidates\": %d, \"ranked\": %lld, \"seconds\": %.2f, "
           "\"requests_per_s\": %.0f, \"cand_per_s\": %.0f, \"device\": \"%s\"}\n", (long long)st.read, m,
           (long long)st.ranked, st.seconds, (double)st.ranked / st.seconds, (double)st.ranked * m / st.seconds,
           st.device);
    fflush(stdout);
    svc_config_free(&rc);
}

/* The phases of `make bench`. */
static void bench_all(const char *int8, const char *yaml)
{
    phase ph;
    for (int run = 0; run < 3; run++) { /* the tail moves from run to run on a shared machine */
        phase_start(&ph, int8, yaml);
        bench_latency(&ph, run);
        phase_stop(&ph);
    }
    phase_start(&ph, int8, yaml);
    bench_ranking(&ph);
    phase_stop(&ph);
    phase_start(&ph, int8, yaml);
    bench_ingest(&ph);
    phase_stop(&ph);
    bench_rescore(int8);
}

/* ---- soak: `make soak` --------------------------------------------------------------------------------- */

/* A sustained offered load for SOAK_SECONDS against `rankd serve` as its
 * own process (build/rankd: its RSS is its own, not the load generator's),
 * every user new after 4 events and every TTL short, so that Redis holds
 * only what the TTLs keep: memory must level off, not grow with the run.
 * One JSON line per interval: the latency percentiles of the lists that
 * came back in it, Redis used_memory and keys, rankd's RSS.
 *
 * The broker is librdkafka's mock, in this process. It finds a fetch
 * offset by walking its log from the start, one entry per produce request,
 * and keeps up to 5 MB per partition: with one message per request (linger
 * 0) the walk grows to ~25,000 entries and the mock broker, not rankd,
 * saturates within 20 s at 1,000/s (measured). So both producers (the load
 * generator's and rankd's, through kafka.properties) linger SOAK_LINGER_MS
 * (5) to put several messages in each entry, and the input and output
 * topics have one partition, so that each entry holds more of them; with
 * these the 120 s run in bench/NOTES.md kept up. The lingers add up to
 * twice SOAK_LINGER_MS to the end-to-end latency. */
typedef struct soak_opts {
    int seconds, rate, interval_s, ttl_s, linger_ms;
    const char *rankd;
} soak_opts;

static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

/* used_memory and the number of keys of the bench's redis-server. */
static void redis_memory(redisContext *c, long long *used, long long *keys)
{
    *used = *keys = -1;
    redisReply *r = redisCommand(c, "INFO memory");
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_memory:") : NULL;
    if (p)
        *used = atoll(p + 12);
    freeReplyObject(r);
    r = redisCommand(c, "DBSIZE");
    if (r && r->type == REDIS_REPLY_INTEGER)
        *keys = r->integer;
    freeReplyObject(r);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || getsockname(fd, (struct sockaddr *)&sa, &len))
        die("no free port");
    close(fd);
    return ntohs(sa.sin_port);
}

static pid_t start_rankd(const soak_opts *o, const char *yaml)
{
    char logf[300];
    snprintf(logf, sizeof logf, "%s/rankd.log", dir);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(logf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        execl(o->rankd, o->rankd, "serve", "--config", yaml, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 600; i++) { /* ready: model loaded, Kafka and Redis reachable */
        usleep(100000);
        if (metric("rankd_ready{part=\"kafka\"}") == 1 && metric("rankd_ready{part=\"redis\"}") == 1)
            return pid;
        if (waitpid(pid, NULL, WNOHANG) == pid)
            break;
    }
    kill(pid, SIGKILL);
    fprintf(stderr, "bench_service: rankd did not become ready; its log: %s\n", logf);
    die("soak: rankd serve did not start");
    return -1;
}

/* Percentiles of lat_us[from, to) (a copy is sorted: the reader keeps appending). */
static void interval_pcts(int from, int to, double *p50, double *p99, double *p999, double *mx)
{
    int n = to - from;
    double *v = malloc(sizeof *v * (size_t)(n > 0 ? n : 1));
    if (!v)
        die("out of memory");
    memcpy(v, lat_us + from, sizeof *v * (size_t)(n > 0 ? n : 0));
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    *p50 = pct(v, n, 0.5);
    *p99 = pct(v, n, 0.99);
    *p999 = pct(v, n, 0.999);
    *mx = n ? v[n - 1] : 0.0;
    free(v);
}

static void soak(const soak_opts *o, const char *int8, const char *yaml)
{
    soak_users = 1;
    snprintf(producer_linger_ms, sizeof producer_linger_ms, "%d", o->linger_ms);
    rd_kafka_t *owner = client(RD_KAFKA_PRODUCER);
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(owner, 1);
    const char *topics[3] = {"ev", "out", "dlq"};
    for (int i = 0; i < 3; i++)
        rd_kafka_mock_topic_create(mc, topics[i], 1, 1);
    snprintf(brokers, sizeof brokers, "%s", rd_kafka_mock_cluster_bootstraps(mc));
    int port = free_port();
    FILE *f = fopen(yaml, "w");
    fprintf(f, "kafka:\n  brokers: \"%s\"\n  input_topic: ev\n  output_topic: out\n  dead_letter_topic: dlq\n"
               "  poll_batch: 512\n  poll_timeout_ms: 5\n  properties:\n    session.timeout.ms: \"6000\"\n"
               "    fetch.wait.max.ms: \"1\"\n    linger.ms: \"%d\"\nredis:\n  port: %d\n  prefix: \"soak:\"\n"
               "  ttl_history_s: %d\n  ttl_seen_s: %d\n  ttl_item_s: %d\n  ttl_user_s: %d\n"
               "model:\n  path: \"%s\"\n  threads: 1\n"
               "ranking:\n  retrieve_n: 100\n  k: 10\n  trigger_types: [click]\nhttp:\n  port: %d\n"
               "batching:\n  max_batch: 64\nlogging:\n  level: warn\n",
            brokers, o->linger_ms, redis_port, o->ttl_s, o->ttl_s, o->ttl_s, o->ttl_s, int8, port);
    fclose(f);
    atomic_store(&http_port, port);
    pid_t pid = start_rankd(o, yaml);
    redisContext *rc = redisConnect("127.0.0.1", redis_port);
    if (!rc || rc->err)
        die("soak: cannot connect to redis-server");
    producer = client(RD_KAFKA_PRODUCER);
    reader = client(RD_KAFKA_CONSUMER);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, "out", 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(reader, l);
    rd_kafka_topic_partition_list_destroy(l);
    pthread_t rt;
    pthread_create(&rt, NULL, read_outputs, NULL);
    int no = 0;
    for (int i = 0; i < 200; i++) /* warm-up: the group join, the first batches */
        send_event(no++, "click");
    rd_kafka_flush(producer, 10000);
    wait_received(200, 60);
    atomic_store(&n_lat, 0);
    long long used0, keys0;
    redis_memory(rc, &used0, &keys0);
    long rss0 = rss_kb(pid);
    printf("{\"bench\": \"soak_start\", \"seconds\": %d, \"offered_per_s\": %d, \"ttl_s\": %d, \"linger_ms\": %d, "
           "\"rankd_rss_kb\": %ld, \"redis_used_memory\": %lld, \"redis_keys\": %lld}\n",
           o->seconds, o->rate, o->ttl_s, o->linger_ms, rss0, used0, keys0);
    fflush(stdout);
    double t0 = now_s(), next_report = t0 + o->interval_s;
    int from = 0, sent0 = no, sent_iv = no;
    const int n_events = o->rate * o->seconds;
    for (int i = 0; i < n_events; i++) {
        double due = t0 + (double)i / o->rate;
        while (now_s() < due)
            usleep(50);
        send_event(no++, "click");
        if (now_s() >= next_report || i == n_events - 1) {
            int to = atomic_load(&n_lat) < max_sent ? atomic_load(&n_lat) : max_sent;
            double p50, p99, p999, mx;
            interval_pcts(from, to, &p50, &p99, &p999, &mx);
            long long used, keys;
            redis_memory(rc, &used, &keys);
            printf("{\"bench\": \"soak_interval\", \"t_s\": %.0f, \"sent\": %d, \"ranked\": %d, "
                   "\"p50_us\": %.0f, \"p99_us\": %.0f, \"p999_us\": %.0f, \"max_us\": %.0f, "
                   "\"redis_used_memory\": %lld, \"redis_keys\": %lld, \"rankd_rss_kb\": %ld, "
                   "\"consumer_lag\": %lld}\n",
                   now_s() - t0, no - sent_iv, to - from, p50, p99, p999, mx, used, keys, rss_kb(pid),
                   metric("rankd_consumer_lag"));
            fflush(stdout);
            from = to;
            sent_iv = no;
            next_report += o->interval_s;
        }
    }
    rd_kafka_flush(producer, 10000);
    wait_received(no - sent0, 30);
    int n = atomic_load(&n_lat) < max_sent ? atomic_load(&n_lat) : max_sent;
    double p50, p99, p999, mx;
    interval_pcts(0, n, &p50, &p99, &p999, &mx);
    long long used1, keys1;
    redis_memory(rc, &used1, &keys1);
    long rss1 = rss_kb(pid);
    printf("{\"bench\": \"soak_end\", \"events\": %d, \"ranked\": %d, \"p50_us\": %.0f, \"p99_us\": %.0f, "
           "\"p999_us\": %.0f, \"max_us\": %.0f, \"rankd_rss_kb_start\": %ld, \"rankd_rss_kb_end\": %ld, "
           "\"redis_used_memory_start\": %lld, \"redis_used_memory_end\": %lld, \"redis_keys_end\": %lld}\n",
           n_events, n, p50, p99, p999, mx, rss0, rss1, used0, used1, keys1);
    fflush(stdout);
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fprintf(stderr, "bench_service: rankd serve ended with status %d\n", st);
    atomic_store(&reading, 0);
    pthread_join(rt, NULL);
    redisFree(rc);
    rd_kafka_consumer_close(reader);
    rd_kafka_destroy(reader);
    rd_kafka_destroy(producer);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(owner);
}

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    int x = v && *v ? atoi(v) : def;
    if (x < lo || x > hi) {
        fprintf(stderr, "bench_service: %s=%s: expected %d..%d\n", name, v, lo, hi);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv)
{
    int soak_mode = argc == 2 && !strcmp(argv[1], "--soak");
    if (argc > 1 && !soak_mode) {
        fprintf(stderr, "usage: bench_service [--soak]\n"
                        "  --soak: SOAK_SECONDS (180) of SOAK_RATE (1000) rankings/s against $RANKD_BIN serve\n"
                        "          (build/rankd), reported every SOAK_INTERVAL_S (15), TTLs SOAK_TTL_S (20),\n"
                        "          producers' linger SOAK_LINGER_MS (5)\n");
        return 2;
    }
    soak_opts so = {.seconds = env_int("SOAK_SECONDS", 180, 1, 86400), .rate = env_int("SOAK_RATE", 1000, 1, 100000),
                    .interval_s = env_int("SOAK_INTERVAL_S", 15, 1, 3600), .ttl_s = env_int("SOAK_TTL_S", 20, 1, 86400),
                    .linger_ms = env_int("SOAK_LINGER_MS", 5, 0, 1000),
                    .rankd = getenv("RANKD_BIN") && *getenv("RANKD_BIN") ? getenv("RANKD_BIN") : "build/rankd"};
    if (soak_mode)
        max_sent = so.rate * so.seconds + 10000;
    snprintf(dir, sizeof dir, "/tmp/rankd-bench.XXXXXX");
    if (!mkdtemp(dir))
        die("mkdtemp");
    sent_at = calloc(max_sent, sizeof *sent_at);
    lat_us = calloc(max_sent, sizeof *lat_us);
    took_us = calloc(max_sent, sizeof *took_us);
    char fp32[300], int8[300], yaml[300];
    snprintf(fp32, sizeof fp32, "%s/model.safetensors", dir);
    snprintf(int8, sizeof int8, "%s/model.int8.safetensors", dir);
    snprintf(yaml, sizeof yaml, "%s/rankd.yaml", dir);
    make_model(fp32, int8);
    start_redis();
    if (soak_mode) {
        soak(&so, int8, yaml);
    } else {
        bench_all(int8, yaml);
    }
    kill(redis_pid, SIGTERM);
    waitpid(redis_pid, NULL, 0);
    char rm[300];
    snprintf(rm, sizeof rm, "rm -rf %s", dir);
    if (system(rm) != 0)
        fprintf(stderr, "bench_service: could not remove %s\n", dir);
    free(sent_at);
    free(lat_us);
    free(took_us);
    return 0;
}
