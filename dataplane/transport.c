/* transport.c — what the kernel-socket transports share: wakeups between the engine and
 * transport threads (eventfd + a sleeping flag), listen-address parsing, and the client's
 * address carried on request records. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dataplane.h"
#include "transport.h"

int dp_notify_init(struct dp_notify *n, struct sl_error *err)
{
        n->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        atomic_init(&n->sleeping, 0);
        if (n->fd < 0)
                return sl_errorf(err, -errno, "eventfd: %s", strerror(errno));
        return 0;
}

void dp_notify_destroy(struct dp_notify *n)
{
        if (n && n->fd >= 0) {
                close(n->fd);
                n->fd = -1;
        }
}

void dp_notify_kick(struct dp_notify *n)
{
        if (atomic_exchange_explicit(&n->sleeping, 0, memory_order_seq_cst)) {
                uint64_t one = 1;
                ssize_t w = write(n->fd, &one, sizeof(one));
                (void)w; /* EAGAIN: the counter is already non-zero, the wakeup is pending */
        }
}

void dp_notify_prepare(struct dp_notify *n)
{
        atomic_store_explicit(&n->sleeping, 1, memory_order_seq_cst);
}

void dp_notify_done(struct dp_notify *n)
{
        uint64_t v;
        atomic_store_explicit(&n->sleeping, 0, memory_order_relaxed);
        ssize_t rd = read(n->fd, &v, sizeof(v));
        (void)rd;
}

int dp_notify_wait(struct dp_notify *n, int timeout_ms)
{
        struct pollfd p = { .fd = n->fd, .events = POLLIN };
        int r = poll(&p, 1, timeout_ms);
        dp_notify_done(n);
        return r > 0;
}

int dp_addr_parse(const char *s, struct sockaddr_storage *ss, unsigned *sslen, struct sl_error *err)
{
        char host[64];
        const char *colon, *hs = s;
        size_t hl;
        char *end;

        memset(ss, 0, sizeof(*ss));
        if (!s)
                return sl_errorf(err, -EINVAL, "no address");
        if (s[0] == '[') {
                const char *rb = strchr(s, ']');
                if (!rb || rb[1] != ':')
                        return sl_errorf(err, -EINVAL, "'%s': expected [v6addr]:port", s);
                hs = s + 1;
                hl = (size_t)(rb - hs);
                colon = rb + 1;
        } else {
                colon = strrchr(s, ':');
                if (!colon)
                        return sl_errorf(err, -EINVAL, "'%s': expected host:port", s);
                hl = (size_t)(colon - s);
        }
        if (hl == 0 || hl >= sizeof(host))
                return sl_errorf(err, -EINVAL, "'%s': bad host", s);
        memcpy(host, hs, hl);
        host[hl] = 0;
        errno = 0;
        unsigned long port = strtoul(colon + 1, &end, 10);
        if (errno || *end || end == colon + 1 || port > 65535)
                return sl_errorf(err, -EINVAL, "'%s': bad port", s);
        struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
                v4->sin_family = AF_INET;
                v4->sin_port = htons((uint16_t)port);
                *sslen = sizeof(*v4);
                return 0;
        }
        if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
                v6->sin6_family = AF_INET6;
                v6->sin6_port = htons((uint16_t)port);
                *sslen = sizeof(*v6);
                return 0;
        }
        return sl_errorf(err, -EINVAL, "'%s': host is not a numeric IPv4 or IPv6 address", s);
}

/* ---- shared by udp.c and tcp.c ---- */

int dpt_listen_socket(const char *addr, int type, struct sockaddr_storage *bound, unsigned *blen,
                      struct sl_error *err)
{
        struct sockaddr_storage ss;
        unsigned len;
        int one = 1, fd, r;

        r = dp_addr_parse(addr, &ss, &len, err);
        if (r < 0)
                return r;
        fd = socket(ss.ss_family, type | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return sl_errorf(err, -errno, "%s: socket: %s", addr, strerror(errno));
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ss.ss_family == AF_INET6)
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
                r = sl_errorf(err, -errno, "%s: bind: %s", addr, strerror(errno));
                goto fail;
        }
        if (type == SOCK_STREAM && listen(fd, 128) < 0) {
                r = sl_errorf(err, -errno, "%s: listen: %s", addr, strerror(errno));
                goto fail;
        }
        socklen_t sl = sizeof(*bound);
        if (getsockname(fd, (struct sockaddr *)bound, &sl) < 0) {
                r = sl_errorf(err, -errno, "%s: getsockname: %s", addr, strerror(errno));
                goto fail;
        }
        *blen = sl;
        return fd;
fail:
        close(fd);
        return r;
}

void dpt_load(const struct dp_transport_config *cfg, struct dp_load *l)
{
        memset(l, 0, sizeof(*l));
        if (cfg->load)
                cfg->load(cfg->load_arg, l);
}

void dpt_fill_info(const struct dp_transport_config *cfg, struct dp_info *info, uint32_t max_frame,
                   uint32_t lease_ms)
{
        if (cfg->info) {
                *info = *cfg->info;
        } else {
                memset(info, 0, sizeof(*info));
                info->max_message = DP_MAX_MESSAGE;
                info->max_prompt_tokens = DP_MAX_PROMPT_TOKENS;
                info->max_prompt_bytes = DP_MAX_PROMPT_BYTES;
                info->max_new_tokens = DP_MAX_NEW_TOKENS;
                info->max_stop = DP_MAX_STOP;
                info->max_stop_len = DP_MAX_STOP_LEN;
                info->server = (struct dp_str){ "sluice", 6 };
        }
        if (cfg->info_live)
                cfg->info_live(cfg->info_arg, info);
        info->version = DP_VERSION;
        if (cfg->auth && cfg->auth->required)
                info->flags |= DP_INFO_AUTH_REQUIRED;
        else if (cfg->cookies) /* every frame authenticated proves more than a cookie */
                info->flags |= DP_INFO_COOKIE_REQUIRED;
        info->max_frame = max_frame;
        info->lease_ms = lease_ms;
        dpt_load(cfg, &info->load);
}

/* ERROR frame into buf, at most cap bytes: the message is cut to fit, and nothing is
 * written (returns 0) when even the fixed part does not. */
long dpt_error_frame(void *buf, size_t cap, uint16_t hflags, uint64_t rid, uint32_t seq, int code,
                     bool terminal, uint32_t detail, const char *msg)
{
        uint8_t payload[16 + DP_MAX_ERROR_MSG];
        size_t fixed = DP_HEADER_SIZE + 16;
        if (cap < fixed)
                return 0;
        size_t ml = msg ? strlen(msg) : 0;
        ml = SL_MIN(ml, SL_MIN(cap - fixed, (size_t)DP_MAX_ERROR_MSG));
        while (ml > 0 && !dp_utf8_valid(msg, ml)) /* do not cut a character in two */
                ml--;
        struct dp_error e = {
                .code = (uint16_t)code, .flags = terminal ? DP_ERRF_TERMINAL : 0,
                .detail = detail, .msg = { msg, (uint32_t)ml },
        };
        long pl = dp_error_encode(payload, sizeof(payload), &e);
        if (pl < 0)
                return 0;
        struct dp_header h = { .opcode = DP_OP_ERROR, .flags = hflags, .request_id = rid,
                               .seq = seq, .frag_count = 1 };
        long n = dp_frame_encode(buf, cap, cap, &h, payload, (size_t)pl, NULL, NULL);
        return n < 0 ? 0 : n;
}

/* ---- the transport thread ---- */

int dpt_thread_start(struct dpt_thread *t, void *(*fn)(void *), void *arg, const char *who,
                     struct sl_error *err)
{
        int r = pthread_create(&t->thread, NULL, fn, arg);
        if (r)
                return sl_errorf(err, -r, "%s: pthread_create: %s", who, strerror(r));
        t->running = true;
        return 0;
}

void dpt_thread_stop(struct dpt_thread *t, int wake_fd)
{
        if (!t->running)
                return;
        atomic_store(&t->stop, true);
        uint64_t one = 1;
        ssize_t w = write(wake_fd, &one, sizeof(one));
        (void)w; /* the eventfd counter cannot overflow from one write; the join waits anyway */
        pthread_join(t->thread, NULL);
        t->running = false;
}

/* ---- the client's address on request records ---- */

static size_t peer_offset(size_t payload_len)
{
        return SL_ALIGN_UP(sizeof(struct dp_req_rec) + payload_len, 8);
}

int dp_req_push_peer(struct dp_ring *r, const struct dp_req_rec *h, const void *payload, size_t len,
                     const struct sockaddr *sa, socklen_t salen)
{
        struct dp_req_peer p = {0};
        if (sa && sa->sa_family == AF_INET && salen >= sizeof(p.addr.in)) {
                memcpy(&p.addr.in, sa, sizeof(p.addr.in));
                p.len = sizeof(p.addr.in);
        } else if (sa && sa->sa_family == AF_INET6 && salen >= sizeof(p.addr.in6)) {
                memcpy(&p.addr.in6, sa, sizeof(p.addr.in6));
                p.len = sizeof(p.addr.in6);
                if (IN6_IS_ADDR_V4MAPPED(&p.addr.in6.sin6_addr)) {
                        struct sockaddr_in in = {.sin_family = AF_INET,
                                                 .sin_port = p.addr.in6.sin6_port};
                        memcpy(&in.sin_addr, &p.addr.in6.sin6_addr.s6_addr[12], 4);
                        memset(&p.addr, 0, sizeof(p.addr));
                        p.addr.in = in;
                        p.len = sizeof(in);
                }
        }
        if (!p.len)
                return dp_req_push(r, h, payload, len);

        size_t off = peer_offset(len);
        uint8_t *rec = dp_ring_reserve(r, off + sizeof(p));
        if (!rec)
                return -ENOBUFS;
        struct dp_req_rec *hr = (struct dp_req_rec *)rec;
        *hr = *h;
        hr->payload_len = (uint32_t)len;
        if (len)
                memcpy(hr->payload, payload, len);
        memcpy(rec + off, &p, sizeof(p));
        dp_ring_commit(r, off + sizeof(p));
        return 0;
}

const struct dp_req_peer *dp_req_peer(const struct dp_req_rec *r, size_t rec_len)
{
        if (rec_len < sizeof(*r) || rec_len - sizeof(*r) < r->payload_len)
                return NULL;
        size_t off = peer_offset(r->payload_len);
        if (rec_len < off || rec_len - off < sizeof(struct dp_req_peer))
                return NULL;
        const struct dp_req_peer *p = (const void *)((const uint8_t *)r + off);
        if ((p->len != sizeof(p->addr.in) || p->addr.sa.sa_family != AF_INET) &&
            (p->len != sizeof(p->addr.in6) || p->addr.sa.sa_family != AF_INET6))
                return NULL;
        return p;
}

int dp_req_peer_format(const struct dp_req_peer *p, char *buf, size_t cap)
{
        char host[INET6_ADDRSTRLEN];
        if (p && p->addr.sa.sa_family == AF_INET &&
            inet_ntop(AF_INET, &p->addr.in.sin_addr, host, sizeof(host)))
                return snprintf(buf, cap, "%s:%u", host, ntohs(p->addr.in.sin_port));
        if (p && p->addr.sa.sa_family == AF_INET6 &&
            inet_ntop(AF_INET6, &p->addr.in6.sin6_addr, host, sizeof(host)))
                return snprintf(buf, cap, "[%s]:%u", host, ntohs(p->addr.in6.sin6_port));
        return snprintf(buf, cap, "-");
}

/* ---- allowed client networks ---- */

static bool prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
        unsigned full = bits / 8, rest = bits % 8;
        if (memcmp(a, b, full))
                return false;
        if (!rest)
                return true;
        uint8_t m = (uint8_t)(0xff00u >> rest);
        return (a[full] & m) == (b[full] & m);
}

bool dp_allow_match(const struct dp_allow *a, const struct sockaddr *sa)
{
        if (!a || !a->n)
                return true;
        const uint8_t *addr;
        uint8_t fam = (uint8_t)sa->sa_family;
        if (fam == AF_INET) {
                addr = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        } else if (fam == AF_INET6) {
                addr = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
                if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)(const void *)addr)) {
                        fam = AF_INET; /* a v4 client of a dual-stack socket */
                        addr += 12;
                }
        } else {
                return false;
        }
        for (uint32_t i = 0; i < a->n && i < DP_ALLOW_MAX; i++)
                if (a->c[i].family == fam && prefix_eq(a->c[i].addr, addr, a->c[i].prefix))
                        return true;
        return false;
}

/* ---- external payloads (DP_REQF_EXTERNAL) ---- */

const uint8_t *dp_req_payload(const struct dp_req_rec *r, uint32_t *len)
{
        if (!(r->flags & DP_REQF_EXTERNAL)) {
                *len = r->payload_len;
                return r->payload;
        }
        struct dp_req_ext e;
        *len = 0;
        if (r->payload_len != sizeof(e))
                return NULL;
        memcpy(&e, r->payload, sizeof(e));
        *len = e.len;
        return e.data;
}

void dp_req_release(const struct dp_req_rec *r)
{
        struct dp_req_ext e;
        if (!(r->flags & DP_REQF_EXTERNAL) || r->payload_len != sizeof(e))
                return;
        memcpy(&e, r->payload, sizeof(e));
        if (e.release)
                e.release(e.ctx, e.ref);
}

/* ---- authentication ---- */

int dpt_auth_init(struct dpt_auth *a, struct dp_auth_ctx *ctx, struct dp_auth_stats *stats, struct sl_error *err)
{
        memset(a, 0, sizeof(*a));
        a->reader = -1;
        if (!ctx || !ctx->required)
                return 0;
        int r = dp_auth_reader(ctx);
        if (r < 0)
                return sl_errorf(err, r, "authentication: more than %u transport threads", DP_AUTH_READERS);
        a->reader = r;
        if ((r = dp_replay_create(&a->rp, ctx->replay_capacity, ctx->window_ms, stats, err)) < 0)
                return r;
        a->ctx = ctx;
        dp_auth_idle(ctx, a->reader);
        return 0;
}

void dpt_auth_free(struct dpt_auth *a)
{
        if (a->ctx)
                dp_auth_idle(a->ctx, a->reader);
        dp_replay_free(a->rp);
        a->rp = NULL;
        a->ctx = NULL;
}

int dpt_auth_check(struct dpt_auth *a, const uint8_t *frame, const struct dp_frame *f, const struct dp_key **key,
                   struct sl_error *err)
{
        if (key)
                *key = NULL;
        if (!a->ctx)
                return 0;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        const uint64_t now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
        return dp_auth_check(dp_auth_keys(a->ctx), a->rp, frame, f, now_ms, key, err);
}
