/* cli_metrics.c — `sluice info --metrics HOST:PORT`: the server's dataplane counters (per
 * transport; per DPDK lcore and queue: rx, tx, drops by reason, malformed, ARP, ICMP;
 * authentication results) read from its /metrics endpoint and printed one per line. The
 * wire protocol's INFO carries limits and load, not counters; /metrics is where sluiced
 * keeps them, so the CLI reads them there. Plain HTTP/1.0 over a socket, bounded in size and
 * time. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli_metrics.h"

#define MAX_BODY (8u << 20)

static const char *const prefixes[] = {"sluice_transport_", "sluice_dpdk_", "sluice_auth_", "sluice_rate_",
                                       "sluice_cookie", "sluice_tls_", NULL};

static int wanted(const char *line)
{
        for (int i = 0; prefixes[i]; i++)
                if (!strncmp(line, prefixes[i], strlen(prefixes[i])))
                        return 1;
        return 0;
}

int cli_metrics_print(const char *addr, unsigned timeout_ms, FILE *out, char *why, size_t why_len)
{
        char host[256], port[16];
        const char *colon = strrchr(addr, ':');
        if (!colon || colon == addr || strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof(port) ||
            (size_t)(colon - addr) >= sizeof(host)) {
                snprintf(why, why_len, "--metrics '%s': want HOST:PORT (the server's [metrics] http_listen)", addr);
                return -EINVAL;
        }
        const char *h = addr;
        size_t hl = (size_t)(colon - addr);
        if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') /* [::1]:9464 */
                h++, hl -= 2;
        memcpy(host, h, hl);
        host[hl] = 0;
        snprintf(port, sizeof(port), "%s", colon + 1);

        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
        int g = getaddrinfo(host, port, &hints, &res);
        if (g != 0) {
                snprintf(why, why_len, "%s: %s", addr, gai_strerror(g));
                return -EHOSTUNREACH;
        }
        int fd = -1, rc = -ECONNREFUSED;
        for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
                if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
                        rc = -errno;
                        close(fd);
                        fd = -1;
                }
        }
        freeaddrinfo(res);
        if (fd < 0) {
                snprintf(why, why_len, "%s: %s", addr, strerror(-rc));
                return rc;
        }
        char req[300];
        int n = snprintf(req, sizeof(req), "GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n", host);
        char *body = malloc(MAX_BODY + 1);
        size_t len = 0;
        rc = 0;
        if (!body) {
                rc = -ENOMEM;
        } else if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
                rc = -errno;
                snprintf(why, why_len, "%s: %s", addr, strerror(errno));
        }
        while (rc == 0) {
                struct pollfd p = {.fd = fd, .events = POLLIN};
                int pr = poll(&p, 1, (int)timeout_ms);
                if (pr == 0) {
                        rc = -ETIMEDOUT;
                        snprintf(why, why_len, "%s: no answer within %u ms", addr, timeout_ms);
                        break;
                }
                ssize_t got = pr < 0 ? -1 : recv(fd, body + len, MAX_BODY - len, 0);
                if (got < 0) {
                        rc = -errno;
                        snprintf(why, why_len, "%s: %s", addr, strerror(errno));
                } else if (got == 0) {
                        break;
                } else if ((len += (size_t)got) == MAX_BODY) {
                        rc = -EFBIG;
                        snprintf(why, why_len, "%s: answer over %u bytes", addr, MAX_BODY);
                }
        }
        close(fd);
        if (rc < 0) {
                free(body);
                return rc;
        }
        body[len] = 0;
        char *eoh = strstr(body, "\r\n\r\n");
        if (strncmp(body, "HTTP/1.", 7) || !eoh || strncmp(body + 8, " 200", 4)) {
                char *eol = strpbrk(body, "\r\n");
                snprintf(why, why_len, "%s: not a metrics answer (%.*s)", addr, eol ? (int)(eol - body) : 40, body);
                free(body);
                return -EPROTO;
        }
        int shown = 0;
        for (char *line = eoh + 4, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = 0;
                if (wanted(line)) {
                        fprintf(out, "%s\n", line);
                        shown++;
                }
        }
        free(body);
        return shown;
}
