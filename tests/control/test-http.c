/* test-http — the metrics registry's exact Prometheus text, and the HTTP endpoint on
 * 127.0.0.1 (ephemeral port) read with a tiny socket client: /health through loading,
 * ready, draining, a frozen engine heartbeat (503 degraded) and its recovery; /metrics;
 * 404 and 405. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"

static int failures;

#define CHECK(c)                                                                   \
        do {                                                                       \
                if (!(c)) {                                                        \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
                        failures++;                                                \
                }                                                                  \
        } while (0)

static void expect_str(int line, const char *got, const char *want)
{
        if (strcmp(got, want)) {
                fprintf(stderr, "%s:%d: got:\n%s\n--- want:\n%s\n", __FILE__, line, got, want);
                failures++;
        }
}
#define EXPECT_STR(g, w) expect_str(__LINE__, g, w)

/* HTTP/1.0 request; returns the status, the body in body, headers in head. */
static int get(uint16_t port, const char *method, const char *path, char *head, char *body, size_t cap)
{
        char req[256], buf[65536];
        size_t n = 0;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
        struct timeval tv = {.tv_sec = 5};
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                close(fd);
                return -errno;
        }
        int len = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", method, path);
        if (write(fd, req, (size_t)len) != len) {
                close(fd);
                return -EIO;
        }
        for (;;) {
                ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
                if (r <= 0)
                        break;
                n += (size_t)r;
        }
        close(fd);
        buf[n] = 0;
        int status = 0;
        if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
                return -EPROTO;
        char *sep = strstr(buf, "\r\n\r\n");
        if (!sep)
                return -EPROTO;
        *sep = 0;
        snprintf(head, cap, "%s", buf);
        snprintf(body, cap, "%s", sep + 4);
        return status;
}

static void test_render(void)
{
        struct ctl_metrics *m = NULL;
        struct sl_error err;
        CHECK(ctl_metrics_create(&m, &err) == 0);
        struct ctl_counter *eos = ctl_metrics_counter(m, "sluice_requests_total", "Requests by outcome.", "outcome=eos", &err);
        struct ctl_gauge *q = ctl_metrics_gauge(m, "sluice_queue_depth", "Requests waiting.", NULL, &err);
        struct ctl_counter *busy = ctl_metrics_counter(m, "sluice_requests_total", "Requests by outcome.", "outcome=busy", &err);
        static const double b[] = {0.005, 0.1, 1};
        struct ctl_histogram *h = ctl_metrics_histogram(m, "sluice_ttft_seconds", "Time to first token.", "transport=udp", b, 3, &err);
        struct ctl_counter *rx = ctl_metrics_counter(m, "sluice_rx_bytes_total", "Bytes in.", "transport=udp,note=a\"b\\c", &err);
        CHECK(eos && q && busy && h && rx);
        CHECK(ctl_metrics_counter(m, "sluice_requests_total", "Requests by outcome.", "outcome=eos", &err) == eos);
        CHECK(!ctl_metrics_gauge(m, "sluice_requests_total", "Requests by outcome.", "outcome=x", &err));
        CHECK(!strcmp(err.msg, "sluice_requests_total: registered before with another type, help or buckets"));
        CHECK(!ctl_metrics_counter(m, "bad-name", "x", NULL, &err));
        CHECK(!ctl_metrics_counter(m, "ok", "x", "le=1", &err));
        CHECK(!ctl_metrics_counter(m, "ok", "x", "novalue", &err));
        static const double bad[] = {1, 1};
        CHECK(!ctl_metrics_histogram(m, "h", "x", NULL, bad, 2, &err));

        ctl_counter_add(eos, 3);
        ctl_counter_add(busy, 1);
        ctl_counter_add(NULL, 1);
        ctl_gauge_set(q, 5);
        ctl_gauge_add(q, -7);
        ctl_histogram_observe(h, 0.005); /* le is inclusive */
        ctl_histogram_observe(h, 0.05);
        ctl_histogram_observe(h, 0.25);
        ctl_histogram_observe(h, 7);
        ctl_counter_add(rx, 1ull << 40);

        char *out;
        size_t len;
        CHECK(ctl_metrics_render(m, &out, &len) == 0);
        EXPECT_STR(out,
                   "# HELP sluice_requests_total Requests by outcome.\n"
                   "# TYPE sluice_requests_total counter\n"
                   "sluice_requests_total{outcome=\"eos\"} 3\n"
                   "sluice_requests_total{outcome=\"busy\"} 1\n"
                   "# HELP sluice_queue_depth Requests waiting.\n"
                   "# TYPE sluice_queue_depth gauge\n"
                   "sluice_queue_depth -2\n"
                   "# HELP sluice_ttft_seconds Time to first token.\n"
                   "# TYPE sluice_ttft_seconds histogram\n"
                   "sluice_ttft_seconds_bucket{transport=\"udp\",le=\"0.005\"} 1\n"
                   "sluice_ttft_seconds_bucket{transport=\"udp\",le=\"0.1\"} 2\n"
                   "sluice_ttft_seconds_bucket{transport=\"udp\",le=\"1\"} 3\n"
                   "sluice_ttft_seconds_bucket{transport=\"udp\",le=\"+Inf\"} 4\n"
                   "sluice_ttft_seconds_sum{transport=\"udp\"} 7.305\n"
                   "sluice_ttft_seconds_count{transport=\"udp\"} 4\n"
                   "# HELP sluice_rx_bytes_total Bytes in.\n"
                   "# TYPE sluice_rx_bytes_total counter\n"
                   "sluice_rx_bytes_total{transport=\"udp\",note=\"a\\\"b\\\\c\"} 1099511627776\n");
        CHECK(len == strlen(out));
        free(out);
        ctl_metrics_free(m);
        ctl_metrics_free(NULL);
}

/* Updates from several threads at once lose nothing. */
static struct ctl_counter *race_c;
static struct ctl_histogram *race_h;
static void *racer(void *arg)
{
        for (int i = 0; i < 100000; i++) {
                ctl_counter_add(race_c, 1);
                ctl_histogram_observe(race_h, 1.0);
        }
        return arg;
}

static void test_concurrent(void)
{
        struct ctl_metrics *m = NULL;
        struct sl_error err;
        static const double b[] = {0.5};
        CHECK(ctl_metrics_create(&m, &err) == 0);
        race_c = ctl_metrics_counter(m, "c_total", "c", NULL, &err);
        race_h = ctl_metrics_histogram(m, "h_seconds", "h", NULL, b, 1, &err);
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
                pthread_create(&t[i], NULL, racer, NULL);
        for (int i = 0; i < 4; i++)
                pthread_join(t[i], NULL);
        char *out;
        size_t len;
        CHECK(ctl_counter_get(race_c) == 400000);
        CHECK(ctl_metrics_render(m, &out, &len) == 0);
        CHECK(strstr(out, "h_seconds_sum 400000\nh_seconds_count 400000\n") != NULL);
        free(out);
        ctl_metrics_free(m);
}

static void test_http(void)
{
        struct ctl_metrics *m = NULL;
        struct ctl_http *h = NULL;
        struct sl_error err;
        struct ctl_addr addr;
        uint64_t heartbeat = 0;
        char head[65536], body[65536];

        CHECK(ctl_metrics_create(&m, &err) == 0);
        struct ctl_gauge *g = ctl_metrics_gauge(m, "sluice_kv_blocks_used", "KV blocks in use.", NULL, &err);
        ctl_gauge_set(g, 42);
        CHECK(ctl_addr_parse("127.0.0.1:0", &addr, &err) == 0);
        struct ctl_http_opts o = {.listen = &addr, .metrics = m, .heartbeat = &heartbeat, .stall_timeout_ms = 300};
        if (ctl_http_start(&o, &h, &err) < 0) {
                fprintf(stderr, "http start: %s\n", err.msg);
                failures++;
                ctl_metrics_free(m);
                return;
        }
        uint16_t port = ctl_http_port(h);
        CHECK(port != 0);

        CHECK(get(port, "GET", "/health", head, body, sizeof(body)) == 503);
        EXPECT_STR(body, "loading\n");
        CHECK(strstr(head, "Content-Type: text/plain; charset=utf-8") != NULL);
        ctl_http_set_state(h, CTL_HEALTH_READY);
        heartbeat++;
        CHECK(get(port, "GET", "/health", head, body, sizeof(body)) == 200);
        EXPECT_STR(body, "ready\n");
        /* A live engine keeps it ready past the stall time. */
        for (int i = 0; i < 5; i++) {
                usleep(100000);
                heartbeat++;
                CHECK(ctl_http_health(h) == CTL_HEALTH_READY);
        }
        CHECK(get(port, "GET", "/health", head, body, sizeof(body)) == 200);
        /* Frozen heartbeat: degraded, never ready. */
        usleep(400000);
        CHECK(get(port, "GET", "/health", head, body, sizeof(body)) == 503);
        EXPECT_STR(body, "degraded\n");
        heartbeat++;
        CHECK(get(port, "GET", "/health", head, body, sizeof(body)) == 200);
        ctl_http_set_state(h, CTL_HEALTH_DRAINING);
        CHECK(get(port, "GET", "/health", head, body, sizeof(body)) == 503);
        EXPECT_STR(body, "draining\n");
        ctl_http_set_state(h, CTL_HEALTH_DEGRADED);
        heartbeat++;
        CHECK(get(port, "GET", "/health", head, body, sizeof(body)) == 503);
        EXPECT_STR(body, "degraded\n");

        CHECK(get(port, "GET", "/metrics", head, body, sizeof(body)) == 200);
        EXPECT_STR(body, "# HELP sluice_kv_blocks_used KV blocks in use.\n# TYPE sluice_kv_blocks_used gauge\n"
                         "sluice_kv_blocks_used 42\n");
        CHECK(strstr(head, "Content-Type: text/plain; version=0.0.4; charset=utf-8") != NULL);
        CHECK(get(port, "HEAD", "/metrics", head, body, sizeof(body)) == 200);
        CHECK(body[0] == 0);
        CHECK(get(port, "GET", "/nope", head, body, sizeof(body)) == 404);
        CHECK(get(port, "POST", "/health", head, body, sizeof(body)) == 405);
        CHECK(strstr(head, "Allow: GET, HEAD") != NULL);

        /* A taken port is an error with its reason. */
        struct ctl_http *h2 = NULL;
        struct ctl_addr taken;
        char a[64];
        snprintf(a, sizeof(a), "127.0.0.1:%u", port);
        CHECK(ctl_addr_parse(a, &taken, &err) == 0);
        o.listen = &taken;
        CHECK(ctl_http_start(&o, &h2, &err) == -EADDRINUSE && h2 == NULL);
        char want[128];
        snprintf(want, sizeof(want), "http 127.0.0.1:%u: Address already in use", port);
        EXPECT_STR(err.msg, want);

        ctl_http_stop(h);
        ctl_http_stop(NULL);
        CHECK(get(port, "GET", "/health", head, body, sizeof(body)) == -ECONNREFUSED);
        ctl_metrics_free(m);
}

int main(void)
{
        test_render();
        test_concurrent();
        test_http();
        if (failures) {
                fprintf(stderr, "test-http: %d failures\n", failures);
                return 1;
        }
        printf("test-http: ok\n");
        return 0;
}
