/* http.c — /health and /metrics over libmicrohttpd on its own thread. /health tells the
 * truth: the state the daemon sets, except that "ready" becomes "degraded" when the
 * engine's heartbeat has not moved for stall_timeout_ms (a stuck engine is never ready). */
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"

struct ctl_http {
        struct MHD_Daemon *d;
        int fd;
        uint16_t port;
        int state;                      /* enum ctl_health, relaxed atomic */
        struct ctl_metrics *metrics;
        const uint64_t *heartbeat;
        uint64_t stall_ns;
        pthread_mutex_t lock;           /* the heartbeat sample below */
        uint64_t hb_seen, hb_changed_ns;
};

static const char *const health_names[] = {"loading", "ready", "draining", "degraded"};

const char *ctl_health_name(enum ctl_health s)
{
        return (unsigned)s < SL_ARRAY_SIZE(health_names) ? health_names[s] : "degraded";
}

void ctl_http_set_state(struct ctl_http *h, enum ctl_health s)
{
        if (h)
                __atomic_store_n(&h->state, (int)s, __ATOMIC_RELAXED);
}

enum ctl_health ctl_http_health(struct ctl_http *h)
{
        enum ctl_health s = (enum ctl_health)__atomic_load_n(&h->state, __ATOMIC_RELAXED);
        if (!h->heartbeat)
                return s;
        uint64_t now = sl_now_ns(), hb = __atomic_load_n(h->heartbeat, __ATOMIC_RELAXED);
        pthread_mutex_lock(&h->lock);
        if (hb != h->hb_seen) {
                h->hb_seen = hb;
                h->hb_changed_ns = now;
        }
        bool stalled = now - h->hb_changed_ns >= __atomic_load_n(&h->stall_ns, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&h->lock);
        if (s == CTL_HEALTH_READY && stalled)
                return CTL_HEALTH_DEGRADED;
        return s;
}

void ctl_http_set_stall_timeout(struct ctl_http *h, uint32_t ms)
{
        if (h && ms)
                __atomic_store_n(&h->stall_ns, (uint64_t)ms * 1000000ull, __ATOMIC_RELAXED);
}

uint16_t ctl_http_port(const struct ctl_http *h)
{
        return h ? h->port : 0;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type, char *body,
                             size_t len, enum MHD_ResponseMemoryMode mode)
{
        struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
        if (!r)
                return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
        if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
                MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        enum MHD_Result ret = MHD_queue_response(c, status, r);
        MHD_destroy_response(r);
        return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **state)
{
        struct ctl_http *h = cls;
        static const char text[] = "text/plain; charset=utf-8";
        char msg[32];

        if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
                return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, "method not allowed\n", 19,
                             MHD_RESPMEM_PERSISTENT);
        if (!strcmp(url, "/health")) {
                enum ctl_health s = ctl_http_health(h);
                int n = snprintf(msg, sizeof(msg), "%s\n", ctl_health_name(s));
                return reply(c, s == CTL_HEALTH_READY ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text, msg,
                             (size_t)n, MHD_RESPMEM_MUST_COPY);
        }
        if (!strcmp(url, "/metrics")) {
                char *body;
                size_t len;
                if (ctl_metrics_render(h->metrics, &body, &len) < 0)
                        return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, text, "out of memory\n", 14,
                                     MHD_RESPMEM_PERSISTENT);
                return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len,
                             MHD_RESPMEM_MUST_FREE);
        }
        return reply(c, MHD_HTTP_NOT_FOUND, text, "not found\n", 10, MHD_RESPMEM_PERSISTENT);
}

/* libmicrohttpd's own messages would go to stderr: library code never prints. */
static void quiet(void *cls, const char *fmt, va_list ap)
{
}

int ctl_http_start(const struct ctl_http_opts *o, struct ctl_http **out, struct sl_error *err)
{
        struct ctl_http *h = calloc(1, sizeof(*h));
        char at[80];
        int r, one = 1;
        *out = NULL;
        if (!h)
                return sl_errorf(err, -ENOMEM, "http: out of memory");
        pthread_mutex_init(&h->lock, NULL);
        h->fd = -1;
        h->metrics = o->metrics;
        h->heartbeat = o->heartbeat;
        h->stall_ns = (uint64_t)(o->stall_timeout_ms ? o->stall_timeout_ms : 10000) * 1000000ull;
        h->hb_changed_ns = sl_now_ns();
        h->hb_seen = o->heartbeat ? __atomic_load_n(o->heartbeat, __ATOMIC_RELAXED) : 0;
        ctl_addr_format(o->listen, at, sizeof(at));

        /* Our own socket, so that a bind failure comes back with its errno. */
        h->fd = socket(o->listen->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (h->fd < 0) {
                r = sl_errorf(err, -errno, "http %s: socket: %s", at, strerror(errno));
                goto fail;
        }
        setsockopt(h->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (o->listen->ss.ss_family == AF_INET6)
                setsockopt(h->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(h->fd, (const struct sockaddr *)&o->listen->ss, o->listen->len) < 0 || listen(h->fd, 64) < 0) {
                r = sl_errorf(err, -errno, "http %s: %s", at, strerror(errno));
                goto fail;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getsockname(h->fd, (struct sockaddr *)&ss, &sl) < 0) {
                r = sl_errorf(err, -errno, "http %s: getsockname: %s", at, strerror(errno));
                goto fail;
        }
        h->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
        h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                                handle, h, MHD_OPTION_LISTEN_SOCKET, h->fd, MHD_OPTION_EXTERNAL_LOGGER, quiet,
                                NULL, MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                                MHD_OPTION_END);
        if (!h->d) {
                r = sl_errorf(err, -EIO, "http %s: libmicrohttpd did not start", at);
                goto fail;
        }
        *out = h;
        return 0;
fail:
        ctl_http_stop(h);
        return r;
}

void ctl_http_stop(struct ctl_http *h)
{
        if (!h)
                return;
        if (h->d)
                MHD_stop_daemon(h->d); /* closes the listening socket it was given */
        else if (h->fd >= 0)
                close(h->fd);
        pthread_mutex_destroy(&h->lock);
        free(h);
}
