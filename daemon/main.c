/* main.c — sluiced: reads the config, loads the model, starts the scheduler's engine thread
 * (serve.c), the UDP/TCP transports and /health + /metrics, tells systemd it is ready, then
 * runs the lifecycle from a signalfd: SIGHUP reloads what can change live, SIGTERM/SIGINT
 * drain in-flight requests (bounded by drain_timeout_ms) and exit 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <sodium.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon.h"
#include "sluice_config.h"

#define MAX_OVERRIDES 64
#define RING_BYTES (1u << 20)   /* max record 512 KiB: a whole reassembled request fits */

struct args {
        const char *config;      /* -c, or NULL: the default path if it exists */
        const char *model;       /* -m */
        const char *ovr[MAX_OVERRIDES];
        unsigned n_ovr;
        bool check;
};

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: sluiced [OPTIONS]\n"
                "The sluice LLM inference server.\n"
                "\n"
                "  -c, --config FILE        config file (default %s)\n"
                "  -o, --set SECTION.KEY=V  override a config key (repeatable; after the file)\n"
                "  -m, --model FILE         the GGUF model (same as -o model.path=FILE)\n"
                "      --check-config       validate the config and exit (0 valid, 1 not)\n"
                "  -h, --help               this help\n"
                "  -V, --version            the version\n",
                CTL_DEFAULT_CONFIG);
}

/* ---- config ---- */

/* Defaults, the file (an explicit -c must exist; the default path may not), the overrides,
 * then the checks between keys. Also what SIGHUP runs again. */
static int build_config(const struct args *a, struct ctl_config *cfg, struct sl_error *err)
{
        const char *path = a->config ? a->config : CTL_DEFAULT_CONFIG;
        ctl_config_defaults(cfg);
        int r = ctl_config_parse_file(path, cfg, err);
        if (r == -ENOENT && !a->config)
                ctl_config_defaults(cfg); /* no file at the default place: defaults and overrides */
        else if (r < 0)
                return r;
        for (unsigned i = 0; i < a->n_ovr; i++)
                if ((r = ctl_config_apply_override(cfg, a->ovr[i], err)) < 0)
                        return r;
        if (a->model) {
                char buf[CTL_PATH_MAX + 16];
                snprintf(buf, sizeof(buf), "model.path=%s", a->model);
                if ((r = ctl_config_apply_override(cfg, buf, err)) < 0)
                        return r;
        }
        return ctl_config_validate(cfg, err);
}

/* The clients' keys ([auth] keys_file). A relative path is a credential passed by systemd
 * (LoadCredential=sluice-keys:/etc/sluice/keys): looked up in $CREDENTIALS_DIRECTORY, whose
 * files systemd makes readable by the service's user alone. Any other file must be owned by
 * this process's user with no group or other access. */
/* Where a configured file is: a relative name in $CREDENTIALS_DIRECTORY when systemd gave
 * one, else the name as it is. Returns whether it is a credential. */
static bool cred_path(const char *f, char *path, size_t cap)
{
        const char *cred = getenv("CREDENTIALS_DIRECTORY");
        const bool in_cred = f[0] && f[0] != '/' && cred && cred[0];
        if (in_cred)
                snprintf(path, cap, "%s/%s", cred, f);
        else
                snprintf(path, cap, "%s", f);
        return in_cred;
}

static int load_keys(const struct ctl_config *c, struct dp_keys **out, struct sl_error *err)
{
        char path[CTL_PATH_MAX + 512];
        const bool in_cred = cred_path(c->auth.keys_file, path, sizeof(path));
        int r = dp_keys_load(path, !in_cred, out, err);
        return r < 0 ? sl_error_prefix(err, r, "[auth] keys_file") : r;
}

/* The TCP transport's TLS context ([dataplane] tls_cert, tls_key, tls_client_ca), with
 * relative names looked up as keys_file's. At start, on --check-config and on every reload. */
static int load_tls(const struct ctl_config *c, struct dp_tls_ctx **out, struct sl_error *err)
{
        char cert[CTL_PATH_MAX + 512], key[CTL_PATH_MAX + 512], ca[CTL_PATH_MAX + 512];
        struct stat st;
        cred_path(c->dataplane.tls_cert, cert, sizeof(cert));
        const bool key_cred = cred_path(c->dataplane.tls_key, key, sizeof(key));
        cred_path(c->dataplane.tls_client_ca, ca, sizeof(ca));
        int r;
        /* A private key that others may read is refused; its group may (Debian's ssl-cert
         * convention: /etc/ssl/private keys 0640 root:ssl-cert). A systemd credential is
         * systemd's to protect; a missing file is dp_tls_ctx_create's to report. */
        if (!key_cred && stat(key, &st) == 0 && (st.st_mode & 007))
                r = sl_errorf(err, -EPERM, "private key %s has mode %04o: others must have no access (chmod o-rwx %s)",
                              key, (unsigned)(st.st_mode & 07777), key);
        else
                r = dp_tls_ctx_create(out, cert, key, ca, err);
        return r < 0 ? sl_error_prefix(err, r, "[dataplane] tls") : r;
}

/* Why a client's TLS handshake failed: a debug line at most (a port scan must not flood
 * the log); the count is in /metrics. Called on the TCP transport's thread. */
static void tls_note(void *arg, const struct sockaddr *peer, const char *why)
{
        (void)arg;
        if (!ctl_log_enabled(SL_LOG_DEBUG))
                return;
        struct ctl_addr a = {0};
        char b[80] = "-";
        if (peer && (peer->sa_family == AF_INET || peer->sa_family == AF_INET6)) {
                a.len = peer->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
                memcpy(&a.ss, peer, a.len);
                ctl_addr_format(&a, b, sizeof(b));
        }
        ctl_logf(SL_LOG_DEBUG, "tcp: TLS handshake with %s failed: %s", b, why);
}

static void limits_from(struct d_limits *l, const struct ctl_config *c)
{
        l->max_prompt_tokens = c->limits.max_prompt_tokens;
        l->max_prompt_bytes = c->limits.max_prompt_bytes;
        l->max_new_tokens = c->limits.max_new_tokens;
        l->default_max_tokens = c->limits.default_max_tokens;
        l->request_timeout_ms = c->limits.request_timeout_ms;
        l->audit_text = c->log.audit == CTL_AUDIT_WITH_TEXT;
        l->max_inflight = c->limits.max_concurrent_per_client;
        l->rps = c->limits.rps_per_client;
        l->tps = c->limits.tps_per_client;
}

/* dp_transport_config.info_live: the request limits in force, which a reload may have
 * changed since d->info was filled at start. */
static void info_live(void *arg, struct dp_info *info)
{
        struct daemon *d = arg;
        pthread_mutex_lock(&d->lim_lock);
        info->max_prompt_tokens = SL_MIN(d->lim.max_prompt_tokens, d->sopts.max_ctx - 1);
        info->max_prompt_bytes = d->lim.max_prompt_bytes;
        info->max_new_tokens = d->lim.max_new_tokens;
        pthread_mutex_unlock(&d->lim_lock);
}

/* What a transport of kind k needs for access control and (UDP, DPDK) the cookie exchange:
 * its allow list, and the cookie secret, drawn once for all UDP cores. */
static int transport_security(struct daemon *d, int k, struct dp_transport_config *tc, struct sl_error *err)
{
        const struct ctl_config *c = &d->cfg;
        const struct ctl_cidr_list *l = k == DTK_UDP ? &c->dataplane.udp_allow
                                      : k == DTK_TCP ? &c->dataplane.tcp_allow : &c->dpdk.allow;
        struct dp_allow *a = &d->allow[k];
        _Static_assert(CTL_MAX_CIDR <= DP_ALLOW_MAX, "allow lists");
        memset(a, 0, sizeof(*a));
        for (uint32_t i = 0; i < l->n && i < CTL_MAX_CIDR; i++) {
                a->c[i].family = l->c[i].family;
                a->c[i].prefix = l->c[i].prefix;
                memcpy(a->c[i].addr, l->c[i].addr, 16);
        }
        a->n = l->n;
        tc->allow = a;
        if (k == DTK_TCP || !c->dataplane.udp_cookies)
                return 0;
        if (sodium_is_zero(d->cookie_secret, sizeof(d->cookie_secret))) {
                if (sodium_init() < 0)
                        return sl_errorf(err, -EIO, "libsodium failed to start (UDP cookie secret)");
                randombytes_buf(d->cookie_secret, sizeof(d->cookie_secret));
        }
        tc->cookies = true;
        memcpy(tc->cookie_secret, d->cookie_secret, sizeof(tc->cookie_secret));
        tc->cookie_bucket_ms = c->dataplane.udp_cookie_rotate_ms;
        return 0;
}

/* ---- load progress (STATUS= and EXTEND_TIMEOUT_USEC= to systemd) ---- */

struct progress {
        const char *name;
        int last_pct;
        uint64_t last_ns;
};

static void on_progress(void *user, const struct engine_load_progress *p)
{
        struct progress *pr = user;
        if (!p->total)
                return;
        int pct = (int)(p->done * 100 / p->total);
        uint64_t now = sl_now_ns();
        if (pct == pr->last_pct || (pct < 100 && now - pr->last_ns < 250000000ull && pct - pr->last_pct < 10))
                return;
        pr->last_pct = pct, pr->last_ns = now;
        ctl_notify_extend_timeout(30ull * 1000000);
        ctl_notify_status("loading %s: %d%% (%.1f of %.1f MiB)", pr->name, pct, p->done / 1048576.0,
                          p->total / 1048576.0);
}

/* ---- transports ---- */

/* live + recently finished requests per UDP table, for idempotency and resend */
static unsigned udp_max_requests(const struct daemon *d)
{
        return SL_MAX(256u, 2 * (d->sopts.max_running + d->sopts.max_queued) + 64);
}

static bool ring_wanted(const struct ctl_config *c, int tr)
{
        if (tr == DT_UDP)
                return c->dataplane.transports & CTL_TRANSPORT_UDP;
        if (tr == DT_TCP)
                return c->dataplane.transports & CTL_TRANSPORT_TCP;
        return (c->dataplane.transports & CTL_TRANSPORT_DPDK) && (unsigned)(tr - DT_DPDK) < c->dpdk.queues;
}

/* On a GPU backend the request ring is page-locked and mapped for the GPU, so that prefill
 * reads a token-id prompt where the transport wrote it (serve.c holds the record meanwhile).
 * Without it the engine's copy is read, as on the CPU backend: logged, not fatal. */
static void ring_for_gpu(struct daemon *d, int tr)
{
        struct sl_error err = {0};
        size_t len;
        void *p = dp_ring_mem(d->req_ring[tr], &len), *dev = NULL;
        if (engine_model_backend(d->model) != ENGINE_BACKEND_CUDA)
                return;
        if (engine_host_register(d->model, p, len, &dev, &err) < 0) {
                ctl_logf(SL_LOG_WARNING, "%s request ring: not mapped for the GPU (%s); prefill reads the "
                         "engine's copy of each prompt", dt_kind_name[dt_kind(tr)], err.msg);
                return;
        }
        d->req_ring_gpu[tr] = true;
        if (dev != p)
                ctl_logf(SL_LOG_WARNING, "%s request ring: mapped at another address on the GPU; prefill reads the "
                         "engine's copy of each prompt", dt_kind_name[dt_kind(tr)]);
        else
                ctl_logf(SL_LOG_INFO, "%s request ring: %zu KiB of pinned memory mapped for the GPU (prefill reads "
                         "token-id prompts in place)", dt_kind_name[dt_kind(tr)], len / 1024);
}

#if SLUICE_HAVE_DPDK
/* The engine's side of the DPDK receive memory: on a GPU backend, registered and mapped for
 * the GPU (the requests' ids are then in GPU-visible memory where the NIC wrote them). */
static int dpdk_register_host(void *user, void *p, size_t n, void **dev_ptr)
{
        struct daemon *d = user;
        struct sl_error err = {0};
        int r = engine_host_register(d->model, p, n, dev_ptr, &err);
        if (r < 0)
                ctl_logf(SL_LOG_ERR, "dpdk receive memory: %s", err.msg);
        return r;
}

static void dpdk_unregister_host(void *user, void *p)
{
        struct daemon *d = user;
        engine_host_unregister(d->model, p);
}

/* The DPDK transport, after the kernel ones; "where" gets "dpdk 10.0.0.2:7400". When it
 * cannot start, the error says what is missing; with [dpdk] on_error = continue and a
 * kernel transport running, sluiced says so and goes on without it. */
static int start_dpdk(struct daemon *d, char *where, size_t cap, struct sl_error *err)
{
        const struct ctl_config *c = &d->cfg;
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&c->dpdk.address.ss;
        struct dp_dpdk_config dc = {
                .eal_args = c->dpdk.eal_args, .port = c->dpdk.port, .ip = ntohl(sin->sin_addr.s_addr),
                .prefix_len = (uint8_t)c->dpdk.prefix_len, .udp_port = ntohs(sin->sin_port),
                .n_queues = c->dpdk.queues, .rx_desc = c->dpdk.rx_desc, .tx_desc = c->dpdk.tx_desc,
                .mbufs = c->dpdk.mbufs, .idle_sleep_us = c->dpdk.idle_sleep_us, .gpudirect = c->dpdk.gpudirect,
                .tc = {.engine_wake = &d->wake, .load = serve_load, .load_arg = d, .info = &d->info,
                       .info_live = info_live, .info_arg = d, .lease_ms = c->limits.udp_lease_ms,
                       .max_requests = udp_max_requests(d), .max_reasm = 64,
                       .auth = &d->auth},
        };
        int rs = transport_security(d, DTK_DPDK, &dc.tc, err);
        if (rs < 0)
                return rs;
        /* a GPU backend maps the receive memory for the GPU; else pinned host memory (mlock) */
        static struct dp_host_mem_ops cuda_mem = {.name = "cuda", .register_host = dpdk_register_host,
                                                  .unregister_host = dpdk_unregister_host};
        cuda_mem.user = d;
        if (engine_model_backend(d->model) == ENGINE_BACKEND_CUDA)
                dc.mem = &cuda_mem;
        const char *lc = c->dpdk.lcores;
        for (unsigned q = 0; q < dc.n_queues; q++) {
                dc.index[q] = (uint8_t)(DT_DPDK + q);
                dc.req_ring[q] = d->req_ring[DT_DPDK + q];
                dc.resp_ring[q] = d->resp_ring[DT_DPDK + q];
                if (*lc) { /* validated by the config: digits and commas, one per queue */
                        dc.lcores[q] = (unsigned)strtoul(lc, (char **)&lc, 10);
                        lc += *lc == ',';
                }
        }
        int r = dp_dpdk_create(&d->dpdk, &dc, err);
        if (r == 0 && (r = dp_dpdk_start(d->dpdk, err)) < 0) {
                dp_dpdk_free(d->dpdk);
                d->dpdk = NULL;
        }
        if (r < 0) {
                bool kernel = c->dataplane.transports & (CTL_TRANSPORT_UDP | CTL_TRANSPORT_TCP);
                if (c->dpdk.on_error == CTL_DPDK_CONTINUE && kernel) {
                        ctl_logf(SL_LOG_WARNING, "%s; continuing on the kernel transports ([dpdk] on_error = continue)",
                                 err->msg);
                        return 0;
                }
                return r;
        }
        char desc[512], b[64];
        dp_dpdk_describe(d->dpdk, desc, sizeof(desc));
        ctl_logf(SL_LOG_INFO, "dpdk: %s", desc);
        if (d->metrics && d_dpdk_metrics_register(d->metrics, &d->m, d->dpdk, err) < 0)
                ctl_logf(SL_LOG_WARNING, "dpdk metrics: %s", err->msg);
        size_t off = strlen(where);
        snprintf(where + off, cap - off, "%sdpdk %s", off ? ", " : "", ctl_addr_format(&c->dpdk.address, b, sizeof(b)));
        return 0;
}
#endif

static int start_transports(struct daemon *d, char *where, size_t cap, struct sl_error *err)
{
        const struct ctl_config *c = &d->cfg;
        static char addr[2][CTL_MAX_LISTEN][64];
        size_t off = 0;
        where[0] = 0;
        for (int tr = 0; tr < DT_DPDK; tr++) {
                unsigned bit = tr == DT_UDP ? CTL_TRANSPORT_UDP : CTL_TRANSPORT_TCP;
                const struct ctl_addr_list *l = tr == DT_UDP ? &c->dataplane.udp_listen : &c->dataplane.tcp_listen;
                if (!(c->dataplane.transports & bit))
                        continue;
                int r;
                struct dp_transport_config tc = {
                        .index = (uint8_t)tr, .n_listen = l->n, .req_ring = d->req_ring[tr],
                        .resp_ring = d->resp_ring[tr], .engine_wake = &d->wake, .load = serve_load, .load_arg = d,
                        .info = &d->info, .info_live = info_live, .info_arg = d,
                        .lease_ms = c->limits.udp_lease_ms, .out_bytes = (unsigned)SL_MIN(c->limits.tcp_output_limit, (uint64_t)UINT32_MAX),
                        .auth = &d->auth,
                };
                for (unsigned i = 0; i < l->n && i < DP_MAX_LISTEN; i++)
                        tc.listen[i] = ctl_addr_format(&l->a[i], addr[tr][i], sizeof(addr[tr][i]));
                if ((r = transport_security(d, dt_kind(tr), &tc, err)) < 0)
                        return r;
                if (tr == DT_UDP) {
                        /* live + recently finished requests, for idempotency and resend */
                        tc.max_requests = udp_max_requests(d);
                        tc.max_reasm = 64;
                        if ((r = dp_udp_create(&d->udp, &tc, err)) < 0 || (r = dp_udp_start(d->udp, err)) < 0)
                                return sl_error_prefix(err, r, "udp");
                } else {
                        tc.max_requests = SL_MAX(64u, c->limits.max_concurrent_per_client);
                        tc.max_conns = 256;
                        if (c->dataplane.tls && (r = load_tls(c, &tc.tls, err)) < 0)
                                return r;
                        tc.tls_note = tls_note;
                        if ((r = dp_tcp_create(&d->tcp, &tc, err)) < 0 || (r = dp_tcp_start(d->tcp, err)) < 0)
                                return sl_error_prefix(err, r, "tcp");
                }
                for (unsigned i = 0; i < l->n; i++) {
                        struct sockaddr_storage ss;
                        unsigned sl = sizeof(ss);
                        struct ctl_addr ca;
                        char b[64];
                        int q = tr == DT_UDP ? dp_udp_local_addr(d->udp, i, &ss, &sl)
                                             : dp_tcp_local_addr(d->tcp, i, &ss, &sl);
                        if (q < 0)
                                continue;
                        memcpy(&ca.ss, &ss, sizeof(ss));
                        ca.len = sl;
                        off += (size_t)snprintf(where + off, off < cap ? cap - off : 0, "%s%s %s%s",
                                                off ? ", " : "", tr == DT_UDP ? "udp" : "tcp",
                                                ctl_addr_format(&ca, b, sizeof(b)),
                                                tr == DT_TCP && c->dataplane.tls ? " (tls)" : "");
                        if (off >= cap)
                                off = cap - 1;
                }
        }
#if SLUICE_HAVE_DPDK
        if (c->dataplane.transports & CTL_TRANSPORT_DPDK)
                return start_dpdk(d, where, cap, err);
#endif
        return 0;
}

/* ---- lifecycle ---- */

static void reload(struct daemon *d, const struct args *a)
{
        struct sl_error err = {0};
        struct ctl_config *nw = malloc(sizeof(*nw));
        struct dp_tls_ctx *tls = NULL;
        char keys[512];
        ctl_notify_reloading();
        ctl_logf(SL_LOG_NOTICE, "SIGHUP: reloading the configuration");
        if (!nw) {
                ctl_logf(SL_LOG_ERR, "reload rejected: out of memory");
                goto done;
        }
        int r = build_config(a, nw, &err);
        if (r < 0) {
                ctl_logf(SL_LOG_ERR, "reload rejected, the old configuration stays: %s", err.msg);
                goto done;
        }
        r = ctl_config_diff_reloadable(&d->cfg, nw, &err);
        if (r < 0) {
                ctl_logf(SL_LOG_ERR, "reload rejected, the old configuration stays: %s", err.msg);
                goto done;
        }
        /* the certificate and key are read again (renewed files under the same names too),
         * for connections accepted from now on */
        if (nw->dataplane.tls && d->tcp && load_tls(nw, &tls, &err) < 0) {
                ctl_logf(SL_LOG_ERR, "reload rejected, the old configuration and certificate stay: %s", err.msg);
                goto done;
        }
        if (nw->auth.mode == CTL_AUTH_REQUIRED) {
                /* keys rotate: frames signed with a key still in the file keep passing, on
                 * connections that stay open; a removed key is refused from now on */
                struct dp_keys *ks = NULL;
                if (load_keys(nw, &ks, &err) < 0) {
                        ctl_logf(SL_LOG_ERR, "reload rejected, the old configuration and keys stay: %s", err.msg);
                        goto done;
                }
                uint32_t n = dp_keys_count(ks);
                struct dp_keys *old = dp_auth_swap(&d->auth, ks, 2000);
                if (old)
                        dp_keys_free(old);
                else
                        ctl_logf(SL_LOG_WARNING, "a transport did not pass a mark in 2 s: the old keys are leaked, not freed");
                ctl_logf(SL_LOG_NOTICE, "authentication: %u key(s) in force", n);
        }
        if (tls) {
                dp_tcp_set_tls(d->tcp, tls);
                tls = NULL;
                ctl_logf(SL_LOG_NOTICE, "tcp: TLS certificate reloaded (for new connections)");
        }
        ctl_config_changed_keys(&d->cfg, nw, keys, sizeof(keys));
        ctl_log_set_level(nw->log.level);
        if (ctl_audit_reopen(d->audit, nw->log.audit, nw->log.audit_path, &err) < 0)
                ctl_logf(SL_LOG_ERR, "audit log not reopened (the old one stays): %s", err.msg);
        if (d->http)
                ctl_http_set_stall_timeout(d->http, nw->server.stall_timeout_ms);
        pthread_mutex_lock(&d->lim_lock);
        limits_from(&d->lim, nw);
        atomic_fetch_add_explicit(&d->lim_gen, 1, memory_order_release);
        atomic_store_explicit(&d->max_inflight, nw->limits.max_concurrent_per_client, memory_order_relaxed);
        pthread_mutex_unlock(&d->lim_lock);
        /* udp_lease_ms and tcp_output_limit are read by the transports at start only */
        d->cfg = *nw;
        ctl_logf(SL_LOG_NOTICE, "reloaded: %d changed key(s)%s%s", r, r ? ": " : "", r ? keys : "");
done:
        dp_tls_ctx_free(tls);
        free(nw);
        ctl_notify_ready("serving (configuration reloaded)");
}

static void wait_until_idle(struct daemon *d, uint64_t timeout_ms)
{
        uint64_t end = sl_now_ns() + timeout_ms * 1000000ull;
        while (atomic_load(&d->n_live) > 0 && sl_now_ns() < end)
                usleep(10000);
}

static void shutdown_drain(struct daemon *d)
{
        ctl_notify_stopping();
        if (d->http)
                ctl_http_set_state(d->http, CTL_HEALTH_DRAINING);
        atomic_store(&d->draining, true);
        uint32_t live = atomic_load(&d->n_live);
        ctl_logf(SL_LOG_NOTICE, "stopping: draining %u in-flight request(s), up to %u ms", live,
                 d->cfg.server.drain_timeout_ms);
        ctl_notify_status("stopping: draining %u request(s)", live);
        wait_until_idle(d, d->cfg.server.drain_timeout_ms);
        if ((live = atomic_load(&d->n_live)) > 0) {
                ctl_logf(SL_LOG_WARNING, "drain timeout: cancelling %u request(s)", live);
                atomic_store(&d->cancel_all, true);
                dp_notify_kick(&d->wake);
                wait_until_idle(d, 2000);
        }
        /* let the transports send the last frames */
        uint64_t end = sl_now_ns() + 1000000000ull;
        for (int tr = 0; tr < DT_N; tr++)
                while (d->resp_ring[tr] && !dp_ring_empty(d->resp_ring[tr]) && sl_now_ns() < end)
                        usleep(5000);
        usleep(50000);
}

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
                {"config", required_argument, NULL, 'c'}, {"set", required_argument, NULL, 'o'},
                {"model", required_argument, NULL, 'm'},  {"check-config", no_argument, NULL, 'C'},
                {"help", no_argument, NULL, 'h'},         {"version", no_argument, NULL, 'V'},
                {NULL, 0, NULL, 0},
        };
        struct args a = {0};
        int opt;
        while ((opt = getopt_long(argc, argv, "c:o:m:hV", longopts, NULL)) != -1) {
                switch (opt) {
                case 'c': a.config = optarg; break;
                case 'o':
                        if (a.n_ovr == MAX_OVERRIDES) {
                                fprintf(stderr, "sluiced: at most %d -o overrides\n", MAX_OVERRIDES);
                                return 2;
                        }
                        a.ovr[a.n_ovr++] = optarg;
                        break;
                case 'm': a.model = optarg; break;
                case 'C': a.check = true; break;
                case 'h': usage(stdout); return 0;
                case 'V': printf("sluiced %s (protocol %d)\n", SLUICE_VERSION, DP_VERSION); return 0;
                default: fprintf(stderr, "Try 'sluiced --help'.\n"); return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "sluiced: unexpected argument '%s'\nTry 'sluiced --help'.\n", argv[optind]);
                return 2;
        }

        static struct daemon dd; /* large (struct ctl_config): not on the stack */
        struct daemon *d = &dd;
        struct sl_error err = {0};
        int r = build_config(&a, &d->cfg, &err);
        if (a.check) {
                struct dp_keys *ks = NULL;
                if (r == 0 && d->cfg.auth.mode == CTL_AUTH_REQUIRED && (r = load_keys(&d->cfg, &ks, &err)) == 0)
                        dp_keys_free(ks);
                struct dp_tls_ctx *tls = NULL;
                if (r == 0 && d->cfg.dataplane.tls && (d->cfg.dataplane.transports & CTL_TRANSPORT_TCP) &&
                    (r = load_tls(&d->cfg, &tls, &err)) == 0)
                        dp_tls_ctx_free(tls);
                if (r < 0) {
                        fprintf(stderr, "sluiced: %s\n", err.msg);
                        return 1;
                }
                printf("sluiced: %s: configuration is valid\n", a.config ? a.config : CTL_DEFAULT_CONFIG);
                return 0;
        }
        if (r < 0) {
                fprintf(stderr, "sluiced: %s\n", err.msg);
                return EX_CONFIG; /* sluice.service: RestartPreventExitStatus, no restart loop */
        }

        /* Signals go to the signalfd: blocked before any thread starts, so all inherit it. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGPIPE);
        /* an ignored signal never becomes pending, so signalfd would not see it: a parent
         * (nohup, a test harness) may have left SIGHUP ignored */
        signal(SIGHUP, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

        int rc = 1;
        bool engine_started = false;
        pthread_mutex_init(&d->lim_lock, NULL);
        limits_from(&d->lim, &d->cfg);
        atomic_store_explicit(&d->max_inflight, d->cfg.limits.max_concurrent_per_client, memory_order_relaxed);
        ctl_log_open(d->cfg.log.target, d->cfg.log.level);
        ctl_notify_init();
        if (sfd < 0) {
                ctl_logf(SL_LOG_ERR, "signalfd: %s", strerror(errno));
                goto out;
        }
        if (d->cfg.engine.backend == CTL_BACKEND_CUDA && !SLUICE_HAVE_CUDA) {
                ctl_logf(SL_LOG_ERR, "[engine] backend = cuda: this sluiced is not built with CUDA "
                                     "(meson -Dcuda=enabled); use backend = cpu or auto");
                goto out;
        }
        if ((r = ctl_audit_open(d->cfg.log.audit, d->cfg.log.audit_path, &d->audit, &err)) < 0) {
                ctl_logf(SL_LOG_ERR, "audit log: %s", err.msg);
                goto out;
        }
        if ((r = ctl_metrics_create(&d->metrics, &err)) < 0 || (r = d_metrics_register(d->metrics, &d->m, &err)) < 0) {
                ctl_logf(SL_LOG_ERR, "metrics: %s", err.msg);
                goto out;
        }
        char http_addr[64] = "off";
        if (d->cfg.metrics.enabled) {
                struct ctl_http_opts ho = {.listen = &d->cfg.metrics.http_listen, .metrics = d->metrics,
                                           .heartbeat = &d->heartbeat,
                                           .stall_timeout_ms = d->cfg.server.stall_timeout_ms};
                if ((r = ctl_http_start(&ho, &d->http, &err)) < 0) {
                        ctl_logf(SL_LOG_ERR, "http: %s", err.msg);
                        goto out;
                }
                ctl_http_set_state(d->http, CTL_HEALTH_LOADING);
                struct ctl_addr ha = d->cfg.metrics.http_listen;
                if (ha.ss.ss_family == AF_INET)
                        ((struct sockaddr_in *)&ha.ss)->sin_port = htons(ctl_http_port(d->http));
                else
                        ((struct sockaddr_in6 *)&ha.ss)->sin6_port = htons(ctl_http_port(d->http));
                ctl_addr_format(&ha, http_addr, sizeof(http_addr));
                ctl_logf(SL_LOG_INFO, "http: /health and /metrics on %s", http_addr);
        }

        /* ---- model ---- */
        struct progress pr = {.name = d->cfg.model.path, .last_pct = -1};
        static const enum engine_backend backends[] = {[CTL_BACKEND_AUTO] = ENGINE_BACKEND_AUTO,
                                                       [CTL_BACKEND_CPU] = ENGINE_BACKEND_CPU,
                                                       [CTL_BACKEND_CUDA] = ENGINE_BACKEND_CUDA};
        struct engine_load_opts lo = {.progress = on_progress, .progress_user = &pr,
                                      .backend = backends[d->cfg.engine.backend],
                                      .cuda_device = (int)d->cfg.engine.gpu};
        ctl_notify_status("loading %s", d->cfg.model.path);
        ctl_logf(SL_LOG_INFO, "loading %s", d->cfg.model.path);
        uint64_t t0 = sl_now_ns();
        if ((r = engine_model_load(d->cfg.model.path, &lo, &d->model, &err)) < 0) {
                ctl_logf(SL_LOG_ERR, "%s: %s", d->cfg.model.path, err.msg[0] ? err.msg : strerror(-r));
                goto out;
        }
        const struct engine_hparams *hp = engine_model_hparams(d->model);
        d->tok = engine_model_tokenizer(d->model);
        d->n_vocab = hp->n_vocab;
        if (d->cfg.model.name[0])
                snprintf(d->model_name, sizeof(d->model_name), "%.128s", d->cfg.model.name);
        else if (hp->name[0])
                snprintf(d->model_name, sizeof(d->model_name), "%.95s", hp->name);
        else {
                const char *b = strrchr(d->cfg.model.path, '/');
                snprintf(d->model_name, sizeof(d->model_name), "%.128s", b ? b + 1 : d->cfg.model.path);
        }
        ctl_logf(SL_LOG_INFO, "loaded %s (%s, %u layers, %.1f MiB) in %.2f s", d->model_name, hp->arch_name,
                 hp->n_layer, hp->weight_bytes / 1048576.0, (sl_now_ns() - t0) / 1e9);
        ctl_logf(SL_LOG_INFO, "backend %s", engine_model_backend_reason(d->model));

        /* ---- engine ---- */
        struct engine_sched_opts so = {
                .n_threads = d->cfg.engine.threads, .max_running = d->cfg.engine.max_running,
                .max_queued = d->cfg.engine.max_queued, .token_budget = d->cfg.engine.token_budget,
                .prefill_chunk = d->cfg.engine.prefill_chunk, .kv_block_size = d->cfg.engine.block_size,
                .kv_blocks = d->cfg.engine.kv_blocks,
                .kv_bytes = d->cfg.engine.kv_blocks ? 0 : d->cfg.engine.kv_memory,
                .max_ctx = d->cfg.engine.max_seq_len,
                .kv_gpu_fraction = d->cfg.engine.kv_gpu_percent / 100.0,
                .no_graphs = !d->cfg.engine.cuda_graphs,
                .batch_invariant = d->cfg.engine.batch_invariant,
        };
        /* kv_memory 0 is "automatic": 1 GiB on the CPU, the GPU's free memory on CUDA */
        if (!so.kv_blocks && !so.kv_bytes && engine_model_backend(d->model) == ENGINE_BACKEND_CPU)
                so.kv_bytes = 1ull << 30;
        if (so.max_queued == 0)
                so.max_queued = 1; /* the scheduler reads 0 as its default of 64; 1 is the closest */
        ctl_notify_status("building the engine");
        if ((r = engine_sched_create(d->model, &so, &d->sched, &err)) < 0) {
                ctl_logf(SL_LOG_ERR, "engine: %s", err.msg);
                goto out;
        }
        engine_sched_opts_get(d->sched, &d->sopts);
        {
                struct engine_sched_stats st;
                engine_sched_stats(d->sched, &st);
                ctl_logf(SL_LOG_INFO,
                         "engine: %s, %u running, %u queued, context %u, KV %u blocks of %u tokens, budget %u",
                         engine_backend_name(engine_model_backend(d->model)), d->sopts.max_running,
                         d->sopts.max_queued, d->sopts.max_ctx, st.kv_blocks_total, d->sopts.kv_block_size,
                         d->sopts.token_budget);
        }
        if ((r = serve_create(d, &err)) < 0 || (r = dp_notify_init(&d->wake, &err)) < 0) {
                ctl_logf(SL_LOG_ERR, "%s", err.msg);
                goto out;
        }
        snprintf(d->server_name, sizeof(d->server_name), "%.120s %s", d->cfg.server.name, SLUICE_VERSION);
        d->info = (struct dp_info){
                .version = DP_VERSION, .max_message = DP_MAX_MESSAGE, .max_stop = DP_MAX_STOP,
                .max_stop_len = DP_MAX_STOP_LEN, .n_ctx = d->sopts.max_ctx, .n_vocab = d->n_vocab,
                .model = {d->model_name, (uint32_t)strlen(d->model_name)},
                .server = {d->server_name, (uint32_t)strlen(d->server_name)},
        };
        info_live(d, &d->info); /* the request limits, as every INFO reply refreshes them */
        /* the rings exist before the engine thread reads them */
        for (int tr = 0; tr < DT_N; tr++) {
                if (!ring_wanted(&d->cfg, tr))
                        continue;
                if ((r = dp_ring_create(&d->req_ring[tr], RING_BYTES, &err)) < 0 ||
                    (r = dp_ring_create(&d->resp_ring[tr], RING_BYTES, &err)) < 0) {
                        ctl_logf(SL_LOG_ERR, "rings: %s", err.msg);
                        goto out;
                }
                ring_for_gpu(d, tr);
        }
        if (pthread_create(&d->engine_th, NULL, serve_main, d) != 0) {
                ctl_logf(SL_LOG_ERR, "cannot start the engine thread");
                goto out;
        }
        engine_started = true;

        /* ---- authentication, then the transports ---- */
        {
                struct dp_keys *ks = NULL;
                const bool req = d->cfg.auth.mode == CTL_AUTH_REQUIRED;
                if ((req && (r = load_keys(&d->cfg, &ks, &err)) < 0) ||
                    (r = dp_auth_ctx_init(&d->auth, req, d->cfg.auth.replay_window_ms, ks, &err)) < 0) {
                        dp_keys_free(ks);
                        ctl_logf(SL_LOG_ERR, "%s", err.msg);
                        goto stop;
                }
                if (req)
                        ctl_logf(SL_LOG_NOTICE, "authentication required: %u client key(s), replay window %u ms",
                                 dp_keys_count(ks), d->cfg.auth.replay_window_ms);
                else
                        ctl_logf(SL_LOG_WARNING, "authentication is off ([auth] mode = off): any client that can "
                                 "reach the listen addresses can use this server");
        }
        char where[1024];
        if ((r = start_transports(d, where, sizeof(where), &err)) < 0) {
                ctl_logf(SL_LOG_ERR, "%s", err.msg);
                goto stop;
        }
        atomic_store_explicit(&d->transports_up, true, memory_order_release);
        if (d->udp) /* what the engine pushed while kick() skipped them (serve.c) */
                dp_udp_kick(d->udp);
        if (d->tcp)
                dp_tcp_kick(d->tcp);
        if (d->http)
                ctl_http_set_state(d->http, CTL_HEALTH_READY);
        ctl_logf(SL_LOG_NOTICE, "serving %s on %s; http %s", d->model_name, where, http_addr);
        char status[1200];
        snprintf(status, sizeof(status), "serving %s on %s", d->model_name, where);
        ctl_notify_ready(status);

        /* ---- lifecycle ---- */
        for (;;) {
                struct pollfd p = {.fd = sfd, .events = POLLIN};
                int pr_ = poll(&p, 1, 1000);
                if (pr_ < 0 && errno != EINTR)
                        break;
                struct signalfd_siginfo si;
                bool term = false;
                while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                        if (si.ssi_signo == SIGHUP)
                                reload(d, &a);
                        else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                                term = true;
                }
                if (term || atomic_load(&d->fatal))
                        break;
        }
        shutdown_drain(d);
        rc = atomic_load(&d->fatal) ? 1 : 0;
stop:
        atomic_store(&d->stop, true);
        dp_notify_kick(&d->wake);
        pthread_join(d->engine_th, NULL);
        engine_started = false;
out:
        if (engine_started) {
                atomic_store(&d->stop, true);
                dp_notify_kick(&d->wake);
                pthread_join(d->engine_th, NULL);
        }
        dp_udp_free(d->udp);
        dp_tcp_free(d->tcp);
#if SLUICE_HAVE_DPDK
        dp_dpdk_free(d->dpdk);
        free(d->m.dpdk);
#endif
        dp_auth_ctx_destroy(&d->auth);
        if (d->http)
                ctl_http_stop(d->http);
        d->transports_freed = true;
        engine_sched_free(d->sched); /* gives back the records it still holds (serve.c) */
        serve_free(d);
        for (int tr = 0; tr < DT_N; tr++)
                if (d->req_ring_gpu[tr])
                        engine_host_unregister(d->model, dp_ring_mem(d->req_ring[tr], &(size_t){0}));
        engine_model_free(d->model);
        for (int tr = 0; tr < DT_N; tr++) {
                dp_ring_free(d->req_ring[tr]);
                dp_ring_free(d->resp_ring[tr]);
        }
        if (d->wake.fd > 0)
                dp_notify_destroy(&d->wake);
        ctl_metrics_free(d->metrics);
        ctl_audit_close(d->audit);
        if (sfd >= 0)
                close(sfd);
        ctl_logf(rc ? SL_LOG_ERR : SL_LOG_NOTICE, "%s", rc ? "exiting after an error" : "stopped");
        return rc;
}
