/* config.c — sluice.conf: one table of keys (type, field, range, reloadable), parsed with
 * libinih through a line reader of our own (it counts lines, rejects NUL bytes, long and
 * indented lines, and unknown sections), command-line overrides, cross-key checks and the
 * reload diff. docs/config.md documents every key of the table. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SLUICE_HAVE_DPDK
#include "sluice_config.h"
#endif
#ifndef SLUICE_HAVE_CUDA
#define SLUICE_HAVE_CUDA 0
#endif

#include "control.h"

#define CONFIG_MAX_BYTES (1u << 20)

/* ---- the key table ---- */

enum key_type {
        K_STR,          /* char[size] */
        K_U32,
        K_U64,          /* sizes: K/M/G/T suffixes (binary) */
        K_ENUM,         /* int enum, names[] indexed by value */
        K_LEVEL,        /* enum sl_log_level */
        K_TRANSPORTS,   /* unsigned bits */
        K_ADDRS,        /* struct ctl_addr_list */
        K_ADDR,         /* struct ctl_addr */
        K_ADDR_OFF,     /* struct { bool enabled; struct ctl_addr } with "off" */
        K_CIDRS,        /* struct ctl_cidr_list; "any" or empty = any */
};

struct key {
        const char *section;
        const char *name;
        enum key_type type;
        size_t off, size;
        uint64_t min, max;
        const char *const *names;
        bool reloadable;
};

static const char *const backend_names[] = {"auto", "cpu", "cuda", NULL};
static const char *const onoff_names[] = {"off", "on", NULL};
static const char *const audit_names[] = {"off", "on", "with-text", NULL};
static const char *const auth_names[] = {"off", "required", NULL};
static const char *const target_names[] = {"auto", "journal", "stderr", NULL};
static const char *const dpdk_on_error_names[] = {"exit", "continue", NULL};

#define F(field) offsetof(struct ctl_config, field), sizeof(((struct ctl_config *)0)->field)
#define STR(s, n, field, rl) {s, n, K_STR, F(field), 0, 0, NULL, rl}
#define U32(s, n, field, lo, hi, rl) {s, n, K_U32, F(field), lo, hi, NULL, rl}
#define U64(s, n, field, lo, hi, rl) {s, n, K_U64, F(field), lo, hi, NULL, rl}
#define ENUM(s, n, field, names, rl) {s, n, K_ENUM, F(field), 0, 0, names, rl}

static const struct key keys[] = {
        STR("model", "path", model.path, false),
        STR("model", "name", model.name, false),

        ENUM("engine", "backend", engine.backend, backend_names, false),
        U32("engine", "threads", engine.threads, 0, 1024, false),
        U32("engine", "kv_blocks", engine.kv_blocks, 0, 1u << 24, false),
        U64("engine", "kv_memory", engine.kv_memory, 0, 1ull << 40, false),
        U32("engine", "block_size", engine.block_size, 1, 1024, false),
        U32("engine", "max_seq_len", engine.max_seq_len, 0, 1u << 20, false),
        U32("engine", "max_running", engine.max_running, 1, 4096, false),
        U32("engine", "max_queued", engine.max_queued, 0, 65536, false),
        U32("engine", "token_budget", engine.token_budget, 1, 65536, false),
        U32("engine", "prefill_chunk", engine.prefill_chunk, 1, 65536, false),
        U32("engine", "gpu", engine.gpu, 0, 63, false),
        U32("engine", "kv_gpu_percent", engine.kv_gpu_percent, 5, 98, false),
        ENUM("engine", "cuda_graphs", engine.cuda_graphs, onoff_names, false),
        ENUM("engine", "batch_invariant", engine.batch_invariant, onoff_names, false),

        {"dataplane", "transports", K_TRANSPORTS, F(dataplane.transports), 0, 0, NULL, false},
        {"dataplane", "udp_allow", K_CIDRS, F(dataplane.udp_allow), 0, 0, NULL, false},
        {"dataplane", "tcp_allow", K_CIDRS, F(dataplane.tcp_allow), 0, 0, NULL, false},
        ENUM("dataplane", "udp_cookies", dataplane.udp_cookies, onoff_names, false),
        U32("dataplane", "udp_cookie_rotate_ms", dataplane.udp_cookie_rotate_ms, 1000, 3600000, false),
        {"dataplane", "udp_listen", K_ADDRS, F(dataplane.udp_listen), 0, 0, NULL, false},
        {"dataplane", "tcp_listen", K_ADDRS, F(dataplane.tcp_listen), 0, 0, NULL, false},
        ENUM("dataplane", "tls", dataplane.tls, onoff_names, false),
        /* certificates are re-read on every reload (renewed files under the same names too) */
        STR("dataplane", "tls_cert", dataplane.tls_cert, true),
        STR("dataplane", "tls_key", dataplane.tls_key, true),
        STR("dataplane", "tls_client_ca", dataplane.tls_client_ca, true),

        STR("dpdk", "eal_args", dpdk.eal_args, false),
        STR("dpdk", "port", dpdk.port, false),
        {"dpdk", "address", K_ADDR, F(dpdk.address), 0, 0, NULL, false},
        U32("dpdk", "prefix_len", dpdk.prefix_len, 1, 32, false),
        U32("dpdk", "queues", dpdk.queues, 1, 8, false),
        STR("dpdk", "lcores", dpdk.lcores, false),
        U32("dpdk", "rx_desc", dpdk.rx_desc, 64, 16384, false),
        U32("dpdk", "tx_desc", dpdk.tx_desc, 64, 16384, false),
        U32("dpdk", "mbufs", dpdk.mbufs, 1024, 1u << 20, false),
        U32("dpdk", "idle_sleep_us", dpdk.idle_sleep_us, 0, 100000, false),
        ENUM("dpdk", "gpudirect", dpdk.gpudirect, onoff_names, false),
        ENUM("dpdk", "on_error", dpdk.on_error, dpdk_on_error_names, false),
        {"dpdk", "allow", K_CIDRS, F(dpdk.allow), 0, 0, NULL, false},

        U32("limits", "max_prompt_tokens", limits.max_prompt_tokens, 1, 32768, true),
        U32("limits", "max_prompt_bytes", limits.max_prompt_bytes, 1, 131072, true),
        U32("limits", "max_new_tokens", limits.max_new_tokens, 1, 32768, true),
        U32("limits", "default_max_tokens", limits.default_max_tokens, 1, 32768, true),
        U32("limits", "max_frame", limits.max_frame, 1024, 65536, false),
        U32("limits", "max_concurrent_per_client", limits.max_concurrent_per_client, 1, 65536, true),
        U32("limits", "rps_per_client", limits.rps_per_client, 0, 1000000, true),
        U32("limits", "tps_per_client", limits.tps_per_client, 0, 100000000, true),
        U32("limits", "max_clients", limits.max_clients, 16, 1u << 20, false),
        U32("limits", "request_timeout_ms", limits.request_timeout_ms, 0, 86400000, true),
        /* the transports size their tables and timers from these at start */
        U32("limits", "udp_lease_ms", limits.udp_lease_ms, 1000, 600000, false),
        U64("limits", "tcp_output_limit", limits.tcp_output_limit, 65536, 1ull << 30, false),

        ENUM("auth", "mode", auth.mode, auth_names, false),
        STR("auth", "keys_file", auth.keys_file, true),
        U32("auth", "replay_window_ms", auth.replay_window_ms, 1000, 3600000, false),

        {"metrics", "http_listen", K_ADDR_OFF, F(metrics), 0, 0, NULL, false},

        {"log", "level", K_LEVEL, F(log.level), 0, 0, NULL, true},
        ENUM("log", "target", log.target, target_names, false),
        ENUM("log", "audit", log.audit, audit_names, true),
        STR("log", "audit_path", log.audit_path, true),

        STR("server", "name", server.name, false),
        U32("server", "drain_timeout_ms", server.drain_timeout_ms, 0, 3600000, true),
        U32("server", "stall_timeout_ms", server.stall_timeout_ms, 100, 3600000, true),
};
_Static_assert(SL_ARRAY_SIZE(keys) <= SL_ARRAY_SIZE(((struct ctl_config *)0)->line), "line[] too small");
_Static_assert(SL_ARRAY_SIZE(keys) <= 128, "struct parse's seen[] too small");

static const char *const sections[] = {"model", "engine", "dataplane", "dpdk", "limits",
                                       "auth", "metrics", "log", "server"};

static const struct key *key_find(const char *section, const char *name)
{
        for (size_t i = 0; i < SL_ARRAY_SIZE(keys); i++)
                if (!strcmp(keys[i].section, section) && !strcmp(keys[i].name, name))
                        return &keys[i];
        return NULL;
}

static bool section_known(const char *s)
{
        for (size_t i = 0; i < SL_ARRAY_SIZE(sections); i++)
                if (!strcmp(sections[i], s))
                        return true;
        return false;
}

/* ---- errors ---- */

/* A value quoted in a message, cut short so that the reason still fits. */
static const char *quote(const char *v, char *buf, size_t cap)
{
        size_t n = strlen(v), o = 0;
        for (size_t i = 0; i < n && o + 5 < cap; i++) {
                unsigned char c = (unsigned char)v[i];
                if (i >= 40) {
                        memcpy(buf + o, "...", 3);
                        o += 3;
                        break;
                }
                buf[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
        }
        buf[o] = 0;
        return buf;
}

static int where(char *buf, size_t cap, const char *origin, uint32_t line)
{
        if (line == CTL_LINE_OVERRIDE)
                return snprintf(buf, cap, "command line");
        if (line == 0)
                return snprintf(buf, cap, "%s", origin[0] ? origin : "defaults");
        return snprintf(buf, cap, "%s:%u", origin, line);
}

__attribute__((format(printf, 5, 6)))
static int key_error(struct sl_error *err, const char *origin, uint32_t line, const struct key *k,
                     const char *fmt, ...)
{
        if (err) {
                char at[160], why[200];
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(why, sizeof(why), fmt, ap);
                va_end(ap);
                where(at, sizeof(at), origin, line);
                if (snprintf(err->msg, sizeof(err->msg), "%s: [%s] %s: %s", at, k->section, k->name, why) >=
                    (int)sizeof(err->msg))
                        err->msg[sizeof(err->msg) - 1] = 0;
        }
        return -EINVAL;
}

/* ---- values ---- */

static const char *skip_ws(const char *s)
{
        while (*s == ' ' || *s == '\t')
                s++;
        return s;
}

static int parse_u64(const char *v, bool suffix, uint64_t *out)
{
        uint64_t x = 0;
        const char *p = v;
        if (*p < '0' || *p > '9')
                return -EINVAL;
        for (; *p >= '0' && *p <= '9'; p++)
                if (sl_mul_u64(x, 10, &x) || sl_add_u64(x, (uint64_t)(*p - '0'), &x))
                        return -ERANGE;
        if (*p && suffix) {
                unsigned shift;
                switch (*p) {
                case 'k': case 'K': shift = 10; break;
                case 'M': shift = 20; break;
                case 'G': shift = 30; break;
                case 'T': shift = 40; break;
                default: return -EINVAL;
                }
                p++;
                if (!strcmp(p, "iB") || !strcmp(p, "B"))
                        p += strlen(p);
                if (x > (UINT64_MAX >> shift))
                        return -ERANGE;
                x <<= shift;
        }
        if (*p)
                return -EINVAL;
        *out = x;
        return 0;
}

static int parse_enum(const char *v, const char *const *names, int *out)
{
        for (int i = 0; names[i]; i++)
                if (!strcmp(names[i], v)) {
                        *out = i;
                        return 0;
                }
        return -EINVAL;
}

static void names_list(const char *const *names, char *buf, size_t cap)
{
        size_t o = 0;
        buf[0] = 0;
        for (int i = 0; names[i] && o < cap; i++)
                o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", names[i]);
}

int ctl_addr_parse(const char *s, struct ctl_addr *a, struct sl_error *err)
{
        char host[64];
        const char *colon;
        memset(a, 0, sizeof(*a));
        if (s[0] == '[') {
                const char *close = strchr(s, ']');
                if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host))
                        goto bad;
                memcpy(host, s + 1, (size_t)(close - s - 1));
                host[close - s - 1] = 0;
                colon = close + 1;
        } else {
                colon = strrchr(s, ':');
                if (!colon || (size_t)(colon - s) >= sizeof(host))
                        goto bad;
                memcpy(host, s, (size_t)(colon - s));
                host[colon - s] = 0;
        }
        uint64_t port;
        if (parse_u64(colon + 1, false, &port) < 0 || port > 65535)
                return sl_errorf(err, -EINVAL, "'%s': the port must be a number 0..65535", s);
        if (s[0] == '[') {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a->ss;
                if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
                        goto bad;
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons((uint16_t)port);
                a->len = sizeof(*in6);
        } else {
                struct sockaddr_in *in4 = (struct sockaddr_in *)&a->ss;
                if (inet_pton(AF_INET, host, &in4->sin_addr) != 1)
                        goto bad;
                in4->sin_family = AF_INET;
                in4->sin_port = htons((uint16_t)port);
                a->len = sizeof(*in4);
        }
        return 0;
bad:
        memset(a, 0, sizeof(*a));
        return sl_errorf(err, -EINVAL,
                         "'%s' is not an address:port (numeric, e.g. 127.0.0.1:7000 or [::1]:7000)", s);
}

const char *ctl_addr_format(const struct ctl_addr *a, char *buf, size_t cap)
{
        char host[INET6_ADDRSTRLEN] = "?";
        if (a->ss.ss_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->ss;
                inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
                snprintf(buf, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
        } else if (a->ss.ss_family == AF_INET) {
                const struct sockaddr_in *in4 = (const struct sockaddr_in *)&a->ss;
                inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
                snprintf(buf, cap, "%s:%u", host, ntohs(in4->sin_port));
        } else {
                snprintf(buf, cap, "none");
        }
        return buf;
}

/* Splits a comma list in place into trimmed items; returns their count or -E2BIG. */
static int split_list(char *s, char **items, int max)
{
        int n = 0;
        if (!*skip_ws(s))
                return 0;
        for (char *p = s;;) {
                char *comma = strchr(p, ',');
                if (comma)
                        *comma = 0;
                char *b = (char *)skip_ws(p), *e = b + strlen(b);
                while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
                        *--e = 0;
                if (n == max)
                        return -E2BIG;
                items[n++] = b;
                if (!comma)
                        return n;
                p = comma + 1;
        }
}

static int set_addrs(struct ctl_addr_list *l, const char *v, const char *origin, uint32_t line,
                     const struct key *k, struct sl_error *err)
{
        char buf[512], *items[CTL_MAX_LISTEN + 1], q[64];
        struct ctl_addr_list nl;
        memset(&nl, 0, sizeof(nl));
        if (strlen(v) >= sizeof(buf))
                return key_error(err, origin, line, k, "the list is too long");
        strcpy(buf, v);
        int n = split_list(buf, items, CTL_MAX_LISTEN);
        if (n < 0)
                return key_error(err, origin, line, k, "more than %d addresses", CTL_MAX_LISTEN);
        for (int i = 0; i < n; i++) {
                struct sl_error e;
                if (!items[i][0])
                        return key_error(err, origin, line, k, "empty address in the list");
                if (ctl_addr_parse(items[i], &nl.a[i], &e) < 0)
                        return key_error(err, origin, line, k, "%s", e.msg);
                for (int j = 0; j < i; j++)
                        if (!memcmp(&nl.a[i], &nl.a[j], sizeof(nl.a[i])))
                                return key_error(err, origin, line, k, "'%s' is listed twice",
                                                 quote(items[i], q, sizeof(q)));
        }
        nl.n = (uint32_t)n;
        *l = nl;
        return 0;
}

/* "10.0.0.0/8, 2001:db8::/32, 192.0.2.7" (a bare address is one host), or "any" / "". */
static int set_cidrs(struct ctl_cidr_list *l, const char *v, const char *origin, uint32_t line,
                     const struct key *k, struct sl_error *err)
{
        char buf[2048], *items[CTL_MAX_CIDR + 1], q[64];
        struct ctl_cidr_list nl;
        memset(&nl, 0, sizeof(nl));
        if (strlen(v) >= sizeof(buf))
                return key_error(err, origin, line, k, "the list is too long");
        strcpy(buf, v);
        int n = split_list(buf, items, CTL_MAX_CIDR);
        if (n < 0)
                return key_error(err, origin, line, k, "more than %d networks", CTL_MAX_CIDR);
        if (n == 1 && !strcmp(items[0], "any")) {
                *l = nl;
                return 0;
        }
        for (int i = 0; i < n; i++) {
                struct ctl_cidr *c = &nl.c[i];
                char *slash = strchr(items[i], '/'), *end;
                unsigned long pl = 0;
                if (!items[i][0])
                        return key_error(err, origin, line, k, "empty network in the list");
                if (slash)
                        *slash = 0;
                if (inet_pton(AF_INET, items[i], c->addr) == 1)
                        c->family = AF_INET, pl = 32;
                else if (inet_pton(AF_INET6, items[i], c->addr) == 1)
                        c->family = AF_INET6, pl = 128;
                else
                        return key_error(err, origin, line, k, "'%s' is not an IPv4 or IPv6 address (or 'any')",
                                         quote(items[i], q, sizeof(q)));
                if (slash) {
                        unsigned long max = pl;
                        errno = 0;
                        pl = strtoul(slash + 1, &end, 10);
                        if (errno || *end || end == slash + 1 || slash[1] == '-' || slash[1] == '+' || pl > max)
                                return key_error(err, origin, line, k, "'%s': the prefix length must be 0..%lu",
                                                 quote(slash + 1, q, sizeof(q)), max);
                }
                c->prefix = (uint8_t)pl;
                for (unsigned b = c->prefix; b < (c->family == AF_INET ? 32u : 128u); b++)
                        if (c->addr[b / 8] & (0x80u >> (b % 8)))
                                return key_error(err, origin, line, k, "'%s/%lu' has bits set past the prefix",
                                                 quote(items[i], q, sizeof(q)), pl);
                for (int j = 0; j < i; j++)
                        if (!memcmp(c, &nl.c[j], sizeof(*c)))
                                return key_error(err, origin, line, k, "'%s' is listed twice",
                                                 quote(items[i], q, sizeof(q)));
        }
        nl.n = (uint32_t)n;
        *l = nl;
        return 0;
}

static int set_transports(unsigned *out, const char *v, const char *origin, uint32_t line,
                          const struct key *k, struct sl_error *err)
{
        char buf[128], *items[4], q[64];
        unsigned bits = 0;
        if (strlen(v) >= sizeof(buf))
                return key_error(err, origin, line, k, "the list is too long");
        strcpy(buf, v);
        int n = split_list(buf, items, 3);
        if (n < 0)
                return key_error(err, origin, line, k, "more than 3 transports");
        if (n == 0)
                return key_error(err, origin, line, k, "at least one of udp, tcp, dpdk is needed");
        for (int i = 0; i < n; i++) {
                unsigned b;
                if (!strcmp(items[i], "udp"))
                        b = CTL_TRANSPORT_UDP;
                else if (!strcmp(items[i], "tcp"))
                        b = CTL_TRANSPORT_TCP;
                else if (!strcmp(items[i], "dpdk"))
                        b = CTL_TRANSPORT_DPDK;
                else
                        return key_error(err, origin, line, k, "'%s' is not one of udp, tcp, dpdk",
                                         quote(items[i], q, sizeof(q)));
                if (b == CTL_TRANSPORT_DPDK && !SLUICE_HAVE_DPDK)
                        return key_error(err, origin, line, k,
                                         "dpdk: this sluiced is built without DPDK (meson -Ddpdk=enabled)");
                if (bits & b)
                        return key_error(err, origin, line, k, "'%s' is listed twice", items[i]);
                bits |= b;
        }
        *out = bits;
        return 0;
}

/* Sets one key from its text; the whole field is rewritten (zero-filled), so that configs
 * compare with memcmp. */
static int set_key(struct ctl_config *cfg, const struct key *k, const char *v, const char *origin,
                   uint32_t line, struct sl_error *err)
{
        char *field = (char *)cfg + k->off, q[64], list[96];
        uint64_t x;
        int r, e;

        switch (k->type) {
        case K_STR:
                if (strlen(v) >= k->size)
                        return key_error(err, origin, line, k, "too long (at most %zu bytes)", k->size - 1);
                for (const char *p = v; *p; p++)
                        if ((unsigned char)*p < 0x20 || *p == 0x7f)
                                return key_error(err, origin, line, k, "control character in the value");
                memset(field, 0, k->size);
                memcpy(field, v, strlen(v));
                break;
        case K_U32:
        case K_U64:
                r = parse_u64(v, k->type == K_U64, &x);
                if (r == -EINVAL)
                        return key_error(err, origin, line, k, "'%s' is not a number%s", quote(v, q, sizeof(q)),
                                         k->type == K_U64 ? " (a size: digits, optional K, M, G, T)" : "");
                if (r < 0 || x < k->min || x > k->max)
                        return key_error(err, origin, line, k, "'%s' is out of range (%llu..%llu)",
                                         quote(v, q, sizeof(q)), (unsigned long long)k->min,
                                         (unsigned long long)k->max);
                if (k->type == K_U32) {
                        uint32_t y = (uint32_t)x;
                        memcpy(field, &y, sizeof(y));
                } else {
                        memcpy(field, &x, sizeof(x));
                }
                break;
        case K_ENUM:
                if (parse_enum(v, k->names, &e) < 0) {
                        names_list(k->names, list, sizeof(list));
                        return key_error(err, origin, line, k, "'%s' is not one of %s", quote(v, q, sizeof(q)), list);
                }
                if (k->names == backend_names && e == CTL_BACKEND_CUDA && !SLUICE_HAVE_CUDA)
                        return key_error(err, origin, line, k, "cuda: this sluiced is built without CUDA");
                memcpy(field, &e, sizeof(e));
                break;
        case K_LEVEL: {
                enum sl_log_level lvl;
                if (ctl_log_level_parse(v, &lvl) < 0)
                        return key_error(err, origin, line, k, "'%s' is not one of err, warning, notice, info, debug",
                                         quote(v, q, sizeof(q)));
                memcpy(field, &lvl, sizeof(lvl));
                break;
        }
        case K_TRANSPORTS:
                return set_transports((unsigned *)field, v, origin, line, k, err);
        case K_ADDRS:
                return set_addrs((struct ctl_addr_list *)field, v, origin, line, k, err);
        case K_CIDRS:
                return set_cidrs((struct ctl_cidr_list *)field, v, origin, line, k, err);
        case K_ADDR: {
                struct ctl_addr a;
                struct sl_error e2;
                if (ctl_addr_parse(v, &a, &e2) < 0)
                        return key_error(err, origin, line, k, "%s", e2.msg);
                memcpy(field, &a, sizeof(a));
                break;
        }
        case K_ADDR_OFF: {
                struct ctl_addr a;
                struct sl_error e2;
                memset(&a, 0, sizeof(a));
                bool on = strcmp(v, "off") && v[0];
                if (on && ctl_addr_parse(v, &a, &e2) < 0)
                        return key_error(err, origin, line, k, "%s (or off)", e2.msg);
                cfg->metrics.enabled = on;
                cfg->metrics.http_listen = a;
                break;
        }
        }
        return 0;
}

/* ---- defaults ---- */

void ctl_config_defaults(struct ctl_config *cfg)
{
        struct sl_error e;
        memset(cfg, 0, sizeof(*cfg));
        cfg->engine.backend = CTL_BACKEND_AUTO;
        cfg->engine.kv_memory = 0;
        cfg->engine.kv_gpu_percent = 90;
        cfg->engine.cuda_graphs = 1;
        cfg->engine.block_size = 16;
        cfg->engine.max_running = 64;
        cfg->engine.max_queued = 256;
        cfg->engine.token_budget = 512;
        cfg->engine.prefill_chunk = 256;
        cfg->dataplane.transports = CTL_TRANSPORT_UDP | CTL_TRANSPORT_TCP;
        cfg->dataplane.udp_listen.n = 1;
        ctl_addr_parse("127.0.0.1:7400", &cfg->dataplane.udp_listen.a[0], &e);
        cfg->dataplane.tcp_listen.n = 1;
        ctl_addr_parse("127.0.0.1:7400", &cfg->dataplane.tcp_listen.a[0], &e);
        cfg->dpdk.prefix_len = 24;
        cfg->dpdk.queues = 1;
        cfg->dpdk.rx_desc = 1024;
        cfg->dpdk.tx_desc = 1024;
        cfg->dpdk.mbufs = 8192;
        cfg->limits.max_prompt_tokens = 4096;
        cfg->limits.max_prompt_bytes = 65536;
        cfg->limits.max_new_tokens = 2048;
        cfg->limits.default_max_tokens = 256;
        cfg->limits.max_frame = 65536;
        cfg->limits.max_concurrent_per_client = 32;
        cfg->limits.max_clients = 4096;
        cfg->dataplane.udp_cookies = 1; /* only frames that are not authenticated need them */
        cfg->dataplane.udp_cookie_rotate_ms = 30000;
        cfg->limits.request_timeout_ms = 300000;
        cfg->limits.udp_lease_ms = 10000;
        cfg->limits.tcp_output_limit = 4u << 20;
        cfg->auth.mode = CTL_AUTH_REQUIRED; /* off only when a config says so */
        cfg->auth.replay_window_ms = 30000;
        cfg->metrics.enabled = true;
        ctl_addr_parse("127.0.0.1:9464", &cfg->metrics.http_listen, &e);
        cfg->log.level = SL_LOG_INFO;
        cfg->log.target = CTL_LOG_AUTO;
        cfg->log.audit = CTL_AUDIT_OFF;
        strcpy(cfg->log.audit_path, "/var/log/sluice/audit.log");
        strcpy(cfg->server.name, "sluice");
        cfg->server.drain_timeout_ms = 30000;
        cfg->server.stall_timeout_ms = 10000;
}

/* ---- the INI parser ---- */

struct parse {
        struct ctl_config *cfg;
        const char *name;               /* file name in messages */
        const char *p, *end;
        uint32_t lineno;                /* lines handed to inih so far */
        uint64_t seen[2];               /* keys set in this parse (bits by index) */
        int rc;
        uint32_t err_line;              /* line of the error in rc */
        struct sl_error *err;
};

static int fail_line(struct parse *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail_line(struct parse *ps, const char *fmt, ...)
{
        if (ps->rc < 0)
                return 0;
        ps->rc = -EINVAL;
        ps->err_line = ps->lineno;
        if (ps->err) {
                char why[200];
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(why, sizeof(why), fmt, ap);
                va_end(ap);
                if (snprintf(ps->err->msg, sizeof(ps->err->msg), "%s:%u: %s", ps->name, ps->lineno, why) >=
                    (int)sizeof(ps->err->msg))
                        ps->err->msg[sizeof(ps->err->msg) - 1] = 0;
        }
        return 0;
}

/* inih's fgets: one whole line per call, so its line numbers are ours. Checks what inih
 * would let through silently: NUL bytes, lines longer than its buffer, indentation
 * (inih would glue an indented line to the previous value), unknown sections. */
static char *reader(char *str, int num, void *stream)
{
        struct parse *ps = stream;
        if (ps->rc < 0 || ps->p >= ps->end)
                return NULL;
        const char *nl = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
        size_t n = nl ? (size_t)(nl - ps->p) + 1 : (size_t)(ps->end - ps->p);
        ps->lineno++;
        if (memchr(ps->p, 0, n)) {
                fail_line(ps, "NUL byte in the line");
                return NULL;
        }
        if (n > (size_t)num - 1) {
                fail_line(ps, "line longer than %d bytes", num - 2);
                return NULL;
        }
        memcpy(str, ps->p, n);
        str[n] = 0;
        ps->p += n;

        const char *s = str;
        if (ps->lineno == 1 && !strncmp(s, "\xEF\xBB\xBF", 3))
                s += 3;
        const char *t = s;
        while (*t == ' ' || *t == '\t' || *t == '\r' || *t == '\n' || *t == '\f' || *t == '\v')
                t++;
        if (!*t || *t == ';' || *t == '#')
                return str;
        if (t != s) {
                fail_line(ps, "indented line (continuation lines are not allowed; remove the leading whitespace)");
                return NULL;
        }
        if (*t == '[') {
                const char *close = strchr(t, ']');
                char sec[32], q[64];
                if (!close)
                        return str; /* inih reports the syntax error */
                size_t len = (size_t)(close - t - 1);
                if (len >= sizeof(sec)) {
                        fail_line(ps, "unknown section [%s]", quote(t + 1, q, sizeof(q)));
                        return NULL;
                }
                memcpy(sec, t + 1, len);
                sec[len] = 0;
                if (!section_known(sec)) {
                        fail_line(ps, "unknown section [%s]", quote(sec, q, sizeof(q)));
                        return NULL;
                }
                if (!strcmp(sec, "dpdk") && !SLUICE_HAVE_DPDK) {
                        fail_line(ps, "[dpdk]: this sluiced is built without DPDK (meson -Ddpdk=enabled); "
                                      "remove the section");
                        return NULL;
                }
        }
        return str;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
        struct parse *ps = user;
        char q[64], q2[64];
        if (ps->rc < 0)
                return 0;
        if (!section[0])
                return fail_line(ps, "'%s' is outside a section", quote(name, q, sizeof(q)));
        const struct key *k = key_find(section, name);
        if (!k)
                return fail_line(ps, "[%s] unknown key '%s'", quote(section, q2, sizeof(q2)), quote(name, q, sizeof(q)));
        size_t i = (size_t)(k - keys);
        if (ps->seen[i / 64] & (1ull << (i % 64)))
                return fail_line(ps, "[%s] %s: set twice (first on line %u)", k->section, k->name, ps->cfg->line[i]);
        int r = set_key(ps->cfg, k, value, ps->name, ps->lineno, ps->err);
        if (r < 0) {
                ps->rc = r;
                ps->err_line = ps->lineno;
                return 0;
        }
        ps->seen[i / 64] |= 1ull << (i % 64);
        ps->cfg->line[i] = ps->lineno;
        return 1;
}

int ctl_config_parse_string(const char *name, const char *text, size_t len, struct ctl_config *cfg,
                            struct sl_error *err)
{
        struct parse ps = {.cfg = cfg, .name = name, .p = text, .end = text + len, .err = err};
        if (len > CONFIG_MAX_BYTES)
                return sl_errorf(err, -EFBIG, "%s: larger than %u bytes", name, CONFIG_MAX_BYTES);
        snprintf(cfg->origin, sizeof(cfg->origin), "%s", name);
        int line = ini_parse_stream(reader, &ps, handler, &ps);
        /* inih goes on after a syntax error: report whichever error came first. */
        if (line > 0 && (ps.rc == 0 || (uint32_t)line < ps.err_line)) {
                ps.rc = 0;
                ps.lineno = (uint32_t)line;
                fail_line(&ps, "syntax error (expected [section], key = value, or a ; comment)");
        }
        if (ps.rc < 0)
                return ps.rc;
        if (line < 0)
                return sl_errorf(err, -ENOMEM, "%s: out of memory", name);
        return 0;
}

int ctl_config_parse_file(const char *path, struct ctl_config *cfg, struct sl_error *err)
{
        char *buf = NULL;
        ssize_t n = 0;
        int r, fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return sl_errorf(err, -errno, "%s: %s", path, strerror(errno));
        buf = malloc(CONFIG_MAX_BYTES + 1);
        if (!buf) {
                r = sl_errorf(err, -ENOMEM, "%s: out of memory", path);
                goto fail;
        }
        for (;;) {
                ssize_t got = read(fd, buf + n, CONFIG_MAX_BYTES + 1 - (size_t)n);
                if (got < 0 && errno == EINTR)
                        continue;
                if (got < 0) {
                        r = sl_errorf(err, -errno, "%s: %s", path, strerror(errno));
                        goto fail;
                }
                if (got == 0)
                        break;
                n += got;
                if ((size_t)n > CONFIG_MAX_BYTES) {
                        r = sl_errorf(err, -EFBIG, "%s: larger than %u bytes", path, CONFIG_MAX_BYTES);
                        goto fail;
                }
        }
        r = ctl_config_parse_string(path, buf, (size_t)n, cfg, err);
fail:
        free(buf);
        close(fd);
        return r;
}

int ctl_config_load(const char *path, struct ctl_config *cfg, struct sl_error *err)
{
        ctl_config_defaults(cfg);
        int r = ctl_config_parse_file(path, cfg, err);
        return r < 0 ? r : ctl_config_validate(cfg, err);
}

int ctl_config_apply_override(struct ctl_config *cfg, const char *assignment, struct sl_error *err)
{
        char buf[CTL_EAL_ARGS_MAX + 64], q[64];
        if (strlen(assignment) >= sizeof(buf))
                return sl_errorf(err, -EINVAL, "command line: override too long");
        strcpy(buf, assignment);
        char *eq = strchr(buf, '='), *dot = strchr(buf, '.');
        if (!eq || !dot || dot > eq)
                return sl_errorf(err, -EINVAL, "command line: '%s' is not section.key=value",
                                 quote(assignment, q, sizeof(q)));
        *eq = 0;
        *dot = 0;
        char *sec = (char *)skip_ws(buf), *name = dot + 1, *val = (char *)skip_ws(eq + 1);
        for (char *e = name + strlen(name); e > name && (e[-1] == ' ' || e[-1] == '\t');)
                *--e = 0;
        for (char *e = val + strlen(val); e > val && (e[-1] == ' ' || e[-1] == '\t');)
                *--e = 0;
        if (!strcmp(sec, "dpdk") && !SLUICE_HAVE_DPDK)
                return sl_errorf(err, -EINVAL, "command line: [dpdk]: this sluiced is built without DPDK");
        const struct key *k = key_find(sec, name);
        if (!k)
                return sl_errorf(err, -EINVAL, "command line: unknown key '%s.%s'", quote(sec, q, 24),
                                 name);
        int r = set_key(cfg, k, val, cfg->origin, CTL_LINE_OVERRIDE, err);
        if (r < 0)
                return r;
        cfg->line[k - keys] = CTL_LINE_OVERRIDE;
        return 0;
}

/* ---- checks between keys ---- */

static const struct key *K(const char *section, const char *name)
{
        return key_find(section, name);
}

#define LINE(s, n) cfg->line[K(s, n) - keys]

/* 127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104 */
static bool addr_is_loopback(const struct ctl_addr *a)
{
        if (a->ss.ss_family == AF_INET)
                return (ntohl(((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr) >> 24) == 127;
        if (a->ss.ss_family != AF_INET6)
                return false;
        const struct in6_addr *v6 = &((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(v6) || (IN6_IS_ADDR_V4MAPPED(v6) && v6->s6_addr[12] == 127);
}

int ctl_config_validate(const struct ctl_config *cfg, struct sl_error *err)
{
        const char *o = cfg->origin;
        if (!cfg->model.path[0])
                return key_error(err, o, LINE("model", "path"), K("model", "path"),
                                 "required (the GGUF file to serve)");
        if (LINE("engine", "kv_blocks") && LINE("engine", "kv_memory") && cfg->engine.kv_blocks)
                return key_error(err, o, SL_MAX(LINE("engine", "kv_blocks"), LINE("engine", "kv_memory")),
                                 K("engine", "kv_blocks"), "set kv_blocks or kv_memory, not both");
        if (cfg->engine.prefill_chunk > cfg->engine.token_budget)
                return key_error(err, o, SL_MAX(LINE("engine", "prefill_chunk"), LINE("engine", "token_budget")),
                                 K("engine", "prefill_chunk"), "%u is larger than token_budget %u",
                                 cfg->engine.prefill_chunk, cfg->engine.token_budget);
        if (cfg->limits.default_max_tokens > cfg->limits.max_new_tokens)
                return key_error(err, o, SL_MAX(LINE("limits", "default_max_tokens"), LINE("limits", "max_new_tokens")),
                                 K("limits", "default_max_tokens"), "%u is larger than max_new_tokens %u",
                                 cfg->limits.default_max_tokens, cfg->limits.max_new_tokens);
        if ((cfg->dataplane.transports & CTL_TRANSPORT_UDP) && !cfg->dataplane.udp_listen.n)
                return key_error(err, o, LINE("dataplane", "udp_listen"), K("dataplane", "udp_listen"),
                                 "empty, but transports has udp");
        if ((cfg->dataplane.transports & CTL_TRANSPORT_TCP) && !cfg->dataplane.tcp_listen.n)
                return key_error(err, o, LINE("dataplane", "tcp_listen"), K("dataplane", "tcp_listen"),
                                 "empty, but transports has tcp");
        if (cfg->dataplane.tls && !(cfg->dataplane.transports & CTL_TRANSPORT_TCP))
                return key_error(err, o, SL_MAX(LINE("dataplane", "tls"), LINE("dataplane", "transports")),
                                 K("dataplane", "tls"), "on, but transports has no tcp (TLS is for the TCP transport)");
        if (cfg->dataplane.tls && (!cfg->dataplane.tls_cert[0] || !cfg->dataplane.tls_key[0]))
                return key_error(err, o, SL_MAX(LINE("dataplane", "tls"), LINE("dataplane", "tls_cert")),
                                 K("dataplane", cfg->dataplane.tls_cert[0] ? "tls_key" : "tls_cert"),
                                 "tls = on needs tls_cert and tls_key (PEM files)");
        if (!cfg->dataplane.tls && (cfg->dataplane.transports & CTL_TRANSPORT_TCP)) {
                /* plaintext TCP stays available on loopback, for development */
                for (uint32_t i = 0; i < cfg->dataplane.tcp_listen.n; i++) {
                        char b[64];
                        if (addr_is_loopback(&cfg->dataplane.tcp_listen.a[i]))
                                continue;
                        return key_error(err, o, SL_MAX(LINE("dataplane", "tcp_listen"), LINE("dataplane", "tls")),
                                         K("dataplane", "tcp_listen"),
                                         "%s is not a loopback address: plaintext TCP is for development on "
                                         "loopback only (set tls = on with tls_cert and tls_key to listen there)",
                                         ctl_addr_format(&cfg->dataplane.tcp_listen.a[i], b, sizeof(b)));
                }
        }
        if ((cfg->dataplane.transports & CTL_TRANSPORT_DPDK) && (!cfg->dpdk.port[0] || !cfg->dpdk.address.len))
                return key_error(err, o, LINE("dataplane", "transports"), K("dataplane", "transports"),
                                 "dpdk needs [dpdk] port and address");
        if ((cfg->dataplane.transports & CTL_TRANSPORT_DPDK) && cfg->dpdk.address.ss.ss_family != AF_INET)
                return key_error(err, o, LINE("dpdk", "address"), K("dpdk", "address"),
                                 "the DPDK transport speaks IPv4: give an IPv4 address:port");
        if (cfg->dpdk.lcores[0]) {
                unsigned n = 1;
                for (const char *c = cfg->dpdk.lcores; *c; c++) {
                        if (*c == ',')
                                n++;
                        else if (*c < '0' || *c > '9')
                                return key_error(err, o, LINE("dpdk", "lcores"), K("dpdk", "lcores"),
                                                 "a comma-separated list of lcore numbers, e.g. 1,2");
                }
                if (n != cfg->dpdk.queues)
                        return key_error(err, o, SL_MAX(LINE("dpdk", "lcores"), LINE("dpdk", "queues")),
                                         K("dpdk", "lcores"), "%u lcore(s) listed for %u queue(s)", n,
                                         cfg->dpdk.queues);
        }
        if (cfg->log.audit != CTL_AUDIT_OFF && cfg->log.audit_path[0] != '/')
                return key_error(err, o, LINE("log", "audit_path"), K("log", "audit_path"),
                                 "an absolute path is needed when audit is on");
        if (!cfg->server.name[0])
                return key_error(err, o, LINE("server", "name"), K("server", "name"), "must not be empty");
        if (cfg->auth.mode == CTL_AUTH_REQUIRED && !cfg->auth.keys_file[0])
                return key_error(err, o, SL_MAX(LINE("auth", "mode"), LINE("auth", "keys_file")), K("auth", "keys_file"),
                                 "mode = required needs the clients' keys file (or mode = off to serve "
                                 "without authentication)");
        return 0;
}

/* ---- reload ---- */

static bool key_changed(const struct ctl_config *a, const struct ctl_config *b, const struct key *k)
{
        if (k->type == K_ADDR_OFF)
                return a->metrics.enabled != b->metrics.enabled ||
                       memcmp(&a->metrics.http_listen, &b->metrics.http_listen, sizeof(a->metrics.http_listen));
        return memcmp((const char *)a + k->off, (const char *)b + k->off, k->size) != 0;
}

int ctl_config_diff_reloadable(const struct ctl_config *old, const struct ctl_config *nw,
                               struct sl_error *err)
{
        int n = 0;
        for (size_t i = 0; i < SL_ARRAY_SIZE(keys); i++) {
                if (!key_changed(old, nw, &keys[i]))
                        continue;
                if (!keys[i].reloadable)
                        return sl_errorf(err, -EPERM, "[%s] %s changed: it cannot change on reload (restart sluiced)",
                                         keys[i].section, keys[i].name);
                n++;
        }
        return n;
}

int ctl_config_changed_keys(const struct ctl_config *old, const struct ctl_config *nw, char *buf,
                            size_t cap)
{
        int n = 0;
        size_t o = 0;
        if (cap)
                buf[0] = 0;
        for (size_t i = 0; i < SL_ARRAY_SIZE(keys); i++) {
                if (!key_changed(old, nw, &keys[i]))
                        continue;
                if (o < cap) {
                        int w = snprintf(buf + o, cap - o, "%s%s.%s", n ? ", " : "", keys[i].section, keys[i].name);
                        o = w < 0 ? cap : SL_MIN(cap, o + (size_t)w);
                }
                n++;
        }
        return n;
}
