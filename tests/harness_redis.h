/* tests/harness_redis.h — a real redis-server for the suites, on a free
 * loopback port, in a scratch directory of its own; with kill and restart
 * (same port) for fault tests. Header-only; every function is static inline.
 *
 *   th_redis r;
 *   th_redis_start(&r, NULL);      // or a password: --requirepass
 *   ... 127.0.0.1:r.port ...
 *   th_redis_stop(&r);
 *
 * A failed Check assertion in fork mode ends the test process with _exit():
 * neither atexit handlers nor checked teardowns run. So nothing here relies
 * on the test process cleaning up: redis-server is started with
 * PR_SET_PDEATHSIG = SIGKILL (it dies with the thread that started it: start
 * it from the test's main thread), and a small janitor process in a session
 * of its own removes the scratch directory once the test process has gone,
 * however it went (it sees end of file on a pipe). th_redis_stop does the
 * same work in order and waits for it.
 *
 * A missing redis-server fails the test (never a skip): a suite that
 * silently tests nothing would pass in CI. */
#ifndef RANKD_TESTS_HARNESS_REDIS_H
#define RANKD_TESTS_HARNESS_REDIS_H

#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TH_REDIS_READY_MS 5000 /* a started server must answer PING within this */
#define TH_REDIS_TRIES 3       /* fresh ports tried when one is taken meanwhile */

typedef struct th_redis {
    pid_t pid;                 /* redis-server; -1 when not running */
    pid_t janitor;             /* removes dir once this process is gone */
    int janitor_fd;            /* write end of the janitor's pipe; closing it wakes it */
    int port;                  /* 127.0.0.1:port, kept across restarts */
    char password[128];        /* "" for none */
    int aof;                   /* appendonly yes, appendfsync always */
    char dir[256];             /* scratch directory: redis.log, redis-server's --dir */
    char log[300];
} th_redis;

static inline void th_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline double th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Is `name` an executable file in a directory of $PATH? */
static inline int th_on_path(const char *name)
{
    const char *path = getenv("PATH");
    char dir[4096], file[4400];
    for (const char *p = path ? path : ""; *p;) {
        size_t n = strcspn(p, ":");
        snprintf(dir, sizeof dir, "%.*s", (int)n, p);
        snprintf(file, sizeof file, "%s/%s", n ? dir : ".", name);
        if (access(file, X_OK) == 0)
            return 1;
        p += n + (p[n] == ':');
    }
    return 0;
}

/* A port nobody listens on now: bind 127.0.0.1:0, read it back, close. */
static inline int th_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_msg(fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
             getsockname(fd, (struct sockaddr *)&a, &len) == 0;
    int e = errno;
    close(fd);
    ck_assert_msg(ok, "bind 127.0.0.1:0: %s", strerror(e));
    return ntohs(a.sin_port);
}

/* Closes every descriptor from 3 up but `keep` (in a forked child). */
static inline void th_close_fds(int keep)
{
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = 3; fd < max; fd++)
        if (fd != keep)
            close(fd);
}

/* Removes dir and what it holds (Redis 7 keeps its append-only files in a
 * subdirectory). */
static inline int th_rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[600];
    while (d && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
                continue;
            if (unlink(path) != 0 && (errno == EISDIR || errno == EPERM))
                th_rm_dir(path);
        }
    }
    if (d)
        closedir(d);
    return rmdir(dir);
}

/* The janitor: waits until every write end of its pipe is closed (by
 * th_redis_stop, or by the kernel when the test process dies), then removes
 * the directory. setsid() takes it out of the test's process group, which
 * Check kills once the test returns. */
static inline void th_janitor_run(int rfd, const char *dir)
{
    setsid();
    th_close_fds(rfd);
    char c;
    while (read(rfd, &c, 1) != 0 && errno == EINTR)
        ;
    for (int i = 0; i < 100 && th_rm_dir(dir) != 0 && errno != ENOENT; i++)
        th_sleep_ms(10); /* a dying redis-server may still hold the log open */
    _exit(0);
}

/* The last bytes of the server's log, for failure messages. */
static inline const char *th_redis_log_tail(const th_redis *r)
{
    static char tail[1024];
    tail[0] = '\0';
    FILE *f = fopen(r->log, "r");
    if (!f)
        return "(no log)";
    if (fseek(f, 0, SEEK_END) == 0 && ftell(f) > (long)sizeof tail - 1)
        fseek(f, -(long)(sizeof tail - 1), SEEK_END);
    else
        fseek(f, 0, SEEK_SET);
    size_t n = fread(tail, 1, sizeof tail - 1, f);
    tail[n] = '\0';
    fclose(f);
    return tail;
}

/* fork + exec redis-server on r->port; its output goes to r->log. */
static inline void th_redis_spawn(th_redis *r)
{
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    const char *argv[18] = {"redis-server", "--port", port, "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", r->aof ? "yes" : "no", "--protected-mode", "yes",
                            "--dir", r->dir};
    int argc = 13;
    if (r->aof) {
        argv[argc++] = "--appendfsync";
        argv[argc++] = "always";
    }
    if (r->password[0]) {
        argv[argc++] = "--requirepass";
        argv[argc++] = r->password;
    }
    argv[argc] = NULL;
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int log = open(r->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int in = open("/dev/null", O_RDONLY);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent || log < 0 || in < 0)
            _exit(126);
        dup2(in, 0);
        dup2(log, 1);
        dup2(log, 2);
        th_close_fds(-1);
        execvp("redis-server", (char *const *)argv);
        dprintf(2, "exec redis-server: %s\n", strerror(errno));
        _exit(127);
    }
    r->pid = pid;
}

/* Waits until the server answers PING (NOAUTH counts: it is up; LOADING,
 * an append-only file being replayed, does not). Returns 0,
 * or -1 when the process exited (port taken, bad option) or never answered. */
static inline int th_redis_wait_ready(th_redis *r)
{
    double t0 = th_now_ms();
    while (th_now_ms() - t0 < TH_REDIS_READY_MS) {
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            r->pid = -1;
            return -1;
        }
        redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, (struct timeval){0, 200000});
        if (c && !c->err) {
            redisSetTimeout(c, (struct timeval){0, 500000});
            redisReply *rep = redisCommand(c, "PING");
            int loading = rep && rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "LOADING", 7);
            if (rep && !loading) {
                freeReplyObject(rep);
                redisFree(c);
                return 0;
            }
            if (rep)
                freeReplyObject(rep);
        }
        if (c)
            redisFree(c);
        th_sleep_ms(10);
    }
    return -1;
}

/* Starts a server on a free loopback port (and a janitor for its
 * directory); fails the test when it does not answer within 5 s. */
static inline void th_redis_start_opts(th_redis *r, const char *password, int aof)
{
    memset(r, 0, sizeof *r);
    r->aof = aof;
    r->pid = r->janitor = -1;
    r->janitor_fd = -1;
    ck_assert_msg(th_on_path("redis-server"),
                  "redis-server is not on PATH: the feature-store tests run a real one; install "
                  "it with scripts/install-deps.sh (Debian package redis-server)");
    ck_assert_msg(!password || strlen(password) < sizeof r->password, "password too long");
    snprintf(r->password, sizeof r->password, "%s", password ? password : "");
    const char *tmp = getenv("TMPDIR");
    snprintf(r->dir, sizeof r->dir, "%s/rankd-redis.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    ck_assert_msg(mkdtemp(r->dir) != NULL, "mkdtemp %s: %s", r->dir, strerror(errno));
    snprintf(r->log, sizeof r->log, "%s/redis.log", r->dir);

    int p[2];
    ck_assert_msg(pipe2(p, O_CLOEXEC) == 0, "pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t j = fork();
    ck_assert_msg(j >= 0, "fork: %s", strerror(errno));
    if (j == 0)
        th_janitor_run(p[0], r->dir);
    close(p[0]);
    r->janitor = j;
    r->janitor_fd = p[1];

    for (int t = 0; t < TH_REDIS_TRIES; t++) {
        r->port = th_free_port();
        th_redis_spawn(r);
        if (th_redis_wait_ready(r) == 0)
            return;
        if (r->pid > 0) /* alive but silent: no retry would help */
            break;
    }
    ck_abort_msg("redis-server on 127.0.0.1:%d did not answer PING within %d ms; its log "
                 "%s ends:\n%s", r->port, TH_REDIS_READY_MS, r->log, th_redis_log_tail(r));
}

static inline void th_redis_start(th_redis *r, const char *password)
{
    th_redis_start_opts(r, password, 0);
}

/* With an append-only file that survives th_redis_kill and th_redis_restart. */
static inline void th_redis_start_aof(th_redis *r, const char *password)
{
    th_redis_start_opts(r, password, 1);
}

/* Waits for the server to exit after `sig` (SIGKILL after 5 s). */
static inline void th_redis_signal_wait(th_redis *r, int sig)
{
    if (r->pid <= 0)
        return;
    kill(r->pid, sig);
    double t0 = th_now_ms();
    int st;
    while (waitpid(r->pid, &st, WNOHANG) == 0) {
        if (th_now_ms() - t0 > 5000) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, &st, 0);
            break;
        }
        th_sleep_ms(2);
    }
    r->pid = -1;
}

/* SIGKILL, as a crash would: clients see their connections reset. */
static inline void th_redis_kill(th_redis *r)
{
    th_redis_signal_wait(r, SIGKILL);
}

/* A fresh server on the same port (stopping the running one first); its
 * data is gone, as after a crash of a server without persistence, unless
 * it was started with th_redis_start_aof: then it replays its append-only
 * file (th_redis_wait_ready waits for that: Redis answers LOADING until
 * done, an error reply, so PING is retried). */
static inline void th_redis_restart(th_redis *r)
{
    th_redis_signal_wait(r, SIGTERM);
    th_redis_spawn(r);
    ck_assert_msg(th_redis_wait_ready(r) == 0,
                  "redis-server restart on 127.0.0.1:%d failed; its log %s ends:\n%s", r->port,
                  r->log, th_redis_log_tail(r));
}

/* SIGTERM and wait; then the janitor removes the directory. Idempotent. */
static inline void th_redis_stop(th_redis *r)
{
    th_redis_signal_wait(r, SIGTERM);
    if (r->janitor_fd >= 0) {
        close(r->janitor_fd);
        r->janitor_fd = -1;
    }
    if (r->janitor > 0) {
        int st;
        waitpid(r->janitor, &st, 0);
        r->janitor = -1;
    }
}

/* A plain hiredis connection (AUTHed) for looking at the keys directly;
 * the caller redisFree()s it. */
static inline redisContext *th_redis_connect(const th_redis *r)
{
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, (struct timeval){2, 0});
    ck_assert_msg(c && !c->err, "connect 127.0.0.1:%d: %s", r->port, c ? c->errstr : "out of memory");
    redisSetTimeout(c, (struct timeval){5, 0});
    if (r->password[0]) {
        redisReply *rep = redisCommand(c, "AUTH %s", r->password);
        ck_assert_msg(rep && rep->type == REDIS_REPLY_STATUS, "AUTH on 127.0.0.1:%d failed", r->port);
        freeReplyObject(rep);
    }
    return c;
}

#endif
