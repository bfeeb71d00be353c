/* tests/harness_http.h — a minimal HTTP/1.0 client for the suites: one
 * request to 127.0.0.1:port, the status code and the body back. Enough
 * for rankd's endpoints; no dependency beyond sockets. */
#ifndef RANKD_TESTS_HARNESS_HTTP_H
#define RANKD_TESTS_HARNESS_HTTP_H

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Sends METHOD path (with body and extra header lines when given); returns
 * the status code and copies the body into out (NUL-terminated). */
/* Reads the whole reply on fd (up to 1 MiB) and closes it: the status,
 * and the body into out. */
static inline int th_http_reply(int fd, char *out, size_t cap)
{
    size_t got = 0;
    char *buf = malloc(1 << 20);
    ck_assert(buf != NULL);
    ssize_t r;
    while ((r = read(fd, buf + got, (1 << 20) - 1 - got)) > 0)
        got += (size_t)r;
    close(fd);
    buf[got] = '\0';
    int status = 0;
    sscanf(buf, "HTTP/%*s %d", &status);
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(out, cap, "%s", b ? b + 4 : "");
    free(buf);
    return status;
}

static inline int th_http(int port, const char *method, const char *path, const char *headers, const char *body,
                          char *out, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect 127.0.0.1:%d", port);
    size_t blen = body ? strlen(body) : 0;
    char head[1024];
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%sContent-Length: %zu\r\n\r\n", method,
                     path, headers ? headers : "", blen);
    ck_assert(write(fd, head, (size_t)n) == n);
    if (blen)
        ck_assert(write(fd, body, blen) == (ssize_t)blen);
    return th_http_reply(fd, out, cap);
}

#endif
