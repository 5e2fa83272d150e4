/* control.h — sluice's control plane: the config file (libinih), systemd notification
 * (libsystemd), the daemon's logger (journald or stderr) and audit log, and the HTTP
 * endpoint (libmicrohttpd) serving /health and Prometheus /metrics from a lock-free
 * metrics registry. docs/config.md is the config reference.
 *
 * Only the logger and the audit log write anything; everything else returns a negative
 * errno with a reason in struct sl_error. Thread rules are stated per function. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "sl.h"

/* ---- config ---- */

#define CTL_DEFAULT_CONFIG "/etc/sluice/sluice.conf"
#define CTL_MAX_LISTEN 8   /* addresses per listen list */
#define CTL_PATH_MAX 1024
#define CTL_NAME_MAX 128   /* DP_MAX_NAME */
#define CTL_EAL_ARGS_MAX 1024
#define CTL_LINE_OVERRIDE UINT32_MAX

enum ctl_backend { CTL_BACKEND_AUTO = 0, CTL_BACKEND_CPU, CTL_BACKEND_CUDA };
enum ctl_audit_mode { CTL_AUDIT_OFF = 0, CTL_AUDIT_ON, CTL_AUDIT_WITH_TEXT };
enum ctl_auth_mode { CTL_AUTH_OFF = 0, CTL_AUTH_REQUIRED = 1 };
enum ctl_log_target { CTL_LOG_AUTO = 0, CTL_LOG_JOURNAL, CTL_LOG_STDERR };
enum ctl_dpdk_on_error { CTL_DPDK_EXIT = 0, CTL_DPDK_CONTINUE };
enum ctl_transport { CTL_TRANSPORT_UDP = 1u << 0, CTL_TRANSPORT_TCP = 1u << 1, CTL_TRANSPORT_DPDK = 1u << 2 };

/* A numeric socket address; port 0 means "any free port" (tests). Ready for bind(). */
struct ctl_addr {
        struct sockaddr_storage ss;
        socklen_t len;
};

struct ctl_addr_list {
        uint32_t n;
        struct ctl_addr a[CTL_MAX_LISTEN];
};

/* Allowed client networks: "10.0.0.0/8, 2001:db8::/32, 192.0.2.7"; n == 0 = any. */
#define CTL_MAX_CIDR 32    /* DP_ALLOW_MAX */
struct ctl_cidr {
        uint8_t family;    /* AF_INET, AF_INET6 */
        uint8_t prefix;
        uint8_t addr[16];  /* network order, host bits zero */
};
struct ctl_cidr_list {
        uint32_t n;
        struct ctl_cidr c[CTL_MAX_CIDR];
};

/* Every key of sluice.conf as a typed field. Plain data (no pointers): copy it, compare it,
 * hand a const pointer to any thread. Sizes are bytes, times are milliseconds. */
struct ctl_config {
        struct {
                char path[CTL_PATH_MAX];        /* required */
                char name[CTL_NAME_MAX + 1];    /* "" = the GGUF's general.name */
        } model;
        struct {
                enum ctl_backend backend;
                uint32_t threads;               /* 0 = online CPUs */
                uint32_t kv_blocks;             /* 0 = derive from kv_memory */
                uint64_t kv_memory;             /* bytes; ignored when kv_blocks is set; 0 = auto
                                                 * (1 GiB on the CPU, kv_gpu_percent on CUDA) */
                uint32_t block_size;            /* tokens per KV block */
                uint32_t max_seq_len;           /* 0 = the model's context length */
                uint32_t max_running;
                uint32_t max_queued;
                uint32_t token_budget;          /* tokens per engine step */
                uint32_t prefill_chunk;         /* <= token_budget */
                uint32_t gpu;                   /* CUDA device index */
                uint32_t kv_gpu_percent;        /* of free GPU memory for the KV pool (kv_memory 0) */
                unsigned cuda_graphs;           /* 0 off, 1 on */
                unsigned batch_invariant;       /* 0 off, 1 on */
        } engine;
        struct {
                struct ctl_cidr_list udp_allow; /* clients let in, per transport (empty: any) */
                struct ctl_cidr_list tcp_allow;
                unsigned udp_cookies;           /* 0 off, 1 on: unauthenticated UDP needs a cookie */
                uint32_t udp_cookie_rotate_ms;  /* cookie bucket; a cookie lives 1-2 of them */
                unsigned transports;            /* enum ctl_transport bits */
                struct ctl_addr_list udp_listen;
                struct ctl_addr_list tcp_listen;
                unsigned tls;                   /* 0 off, 1 on: the TCP transport speaks TLS 1.3 only */
                char tls_cert[CTL_PATH_MAX];    /* PEM chain; relative: in $CREDENTIALS_DIRECTORY */
                char tls_key[CTL_PATH_MAX];     /* PEM private key; relative: as tls_cert */
                char tls_client_ca[CTL_PATH_MAX]; /* "" = no client certificates asked (mutual TLS off) */
        } dataplane;
        struct {                                /* only with SLUICE_HAVE_DPDK */
                char eal_args[CTL_EAL_ARGS_MAX];
                char port[256];                 /* PCI address, virtual device, or port id */
                struct ctl_addr address;        /* the port's own IPv4 address:UDP port */
                uint32_t prefix_len;            /* of the port's subnet */
                uint32_t queues;                /* rx/tx queue pairs = dataplane lcores */
                char lcores[64];                /* "1,2": EAL lcore per queue; "" = the first workers */
                uint32_t rx_desc, tx_desc;
                uint32_t mbufs;
                uint32_t idle_sleep_us;         /* 0: poll without pause */
                unsigned gpudirect;             /* 0 off, 1 on */
                enum ctl_dpdk_on_error on_error;
                struct ctl_cidr_list allow;     /* clients let in (empty: any) */
        } dpdk;
        struct {
                uint32_t max_prompt_tokens;
                uint32_t max_prompt_bytes;
                uint32_t max_new_tokens;
                uint32_t default_max_tokens;    /* for requests with max_tokens 0 */
                uint32_t max_frame;             /* TCP frames; UDP stays at DP_MAX_FRAME_UDP */
                uint32_t max_concurrent_per_client;
                uint32_t rps_per_client;        /* requests per second; 0 = no limit */
                uint32_t tps_per_client;        /* generated tokens per second; 0 = no limit */
                uint32_t max_clients;           /* clients tracked for the per-client limits */
                uint32_t request_timeout_ms;    /* cap on (and default for) a request's deadline; 0 = none */
                uint32_t udp_lease_ms;
                uint64_t tcp_output_limit;      /* bytes queued per TCP connection */
        } limits;
        struct {
                enum ctl_auth_mode mode;
                char keys_file[CTL_PATH_MAX];   /* relative: in $CREDENTIALS_DIRECTORY */
                uint32_t replay_window_ms;      /* timestamps within ± this; nonces remembered as long */
        } auth;
        struct {
                bool enabled;                   /* false: http_listen = off */
                struct ctl_addr http_listen;
        } metrics;
        struct {
                enum sl_log_level level;
                enum ctl_log_target target;
                enum ctl_audit_mode audit;
                char audit_path[CTL_PATH_MAX];
        } log;
        struct {
                char name[CTL_NAME_MAX + 1];
                uint32_t drain_timeout_ms;
                uint32_t stall_timeout_ms;      /* engine heartbeat still this long: degraded */
        } server;

        /* Where each key was set: the line in origin (the file), CTL_LINE_OVERRIDE for the
         * command line, 0 for the default. Indexed by the key table in config.c. */
        char origin[CTL_PATH_MAX];
        uint32_t line[96];
};

/* The built-in defaults (docs/config.md). model.path is left empty (required). */
void ctl_config_defaults(struct ctl_config *cfg);

/* defaults, then the file at path, then ctl_config_validate(). Errors read
 * "sluice.conf:12: [limits] max_new_tokens: 'abc' is not a number". -ENOENT/-EACCES/...
 * when the file cannot be read, -EINVAL for a bad file. cfg is undefined on error. */
int ctl_config_load(const char *path, struct ctl_config *cfg, struct sl_error *err);
/* Reads path and parses it over cfg (no defaults first, no cross-key checks after), for
 * callers that apply command-line overrides before ctl_config_validate(). -ENOENT when
 * the file does not exist. */
int ctl_config_parse_file(const char *path, struct ctl_config *cfg, struct sl_error *err);

/* Parses INI text (named name in errors) over what cfg holds; no validate(). */
int ctl_config_parse_string(const char *name, const char *text, size_t len, struct ctl_config *cfg,
                            struct sl_error *err);

/* "section.key=value" from the command line, over what cfg holds. Call
 * ctl_config_validate() after the last one. */
int ctl_config_apply_override(struct ctl_config *cfg, const char *assignment, struct sl_error *err);

/* Checks between keys (required keys, prefill_chunk <= token_budget, a listen list for
 * each transport, ...). */
int ctl_config_validate(const struct ctl_config *cfg, struct sl_error *err);

/* For SIGHUP: 0.. = the number of changed keys, all of which can change live; -EPERM with
 * "[model] path changed: needs a restart" when one that cannot changed. */
int ctl_config_diff_reloadable(const struct ctl_config *old, const struct ctl_config *nw,
                               struct sl_error *err);

/* Writes "limits.max_new_tokens, log.level" (the changed keys) into buf; returns their count. */
int ctl_config_changed_keys(const struct ctl_config *old, const struct ctl_config *nw, char *buf,
                            size_t cap);

/* "127.0.0.1:7000" / "[::1]:7000" into buf (>= 64 bytes). Returns buf. */
const char *ctl_addr_format(const struct ctl_addr *a, char *buf, size_t cap);
/* Parses one address as the config does ("[::1]:7000", "0.0.0.0:7000"). */
int ctl_addr_parse(const char *s, struct ctl_addr *a, struct sl_error *err);

/* ---- systemd notification (sd_notify); every call is a no-op returning 0 without
 * NOTIFY_SOCKET, > 0 when sent, < 0 on a send error. Any thread. ---- */

/* Reads WATCHDOG_USEC (sd_watchdog_enabled); returns the interval in us, 0 when off.
 * Call once at start, before the engine thread runs. */
uint64_t ctl_notify_init(void);
int ctl_notify_ready(const char *status);            /* READY=1 [+ STATUS=] */
int ctl_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int ctl_notify_extend_timeout(uint64_t usec);         /* EXTEND_TIMEOUT_USEC= */
/* WATCHDOG=1 at most once per half interval: cheap enough for every engine loop
 * iteration (a clock read when nothing is due). 0 when not due or watchdog off. */
int ctl_notify_watchdog(void);
int ctl_notify_reloading(void);                       /* RELOADING=1 + MONOTONIC_USEC=now */
int ctl_notify_stopping(void);                        /* STOPPING=1 */

/* ---- logging (the daemon's one writer) ---- */

/* Structured journal fields: key without the prefix ("REQUEST_ID"); sent as SLUICE_<key>. */
struct ctl_log_field {
        const char *key;
        const char *value;
};

/* Picks the sink: journald when target is JOURNAL, or AUTO and JOURNAL_STREAM names
 * stderr's dev:ino; stderr lines "sluiced: info: message" otherwise. Call once at start. */
void ctl_log_open(enum ctl_log_target target, enum sl_log_level level);
void ctl_log_set_level(enum sl_log_level level);      /* any thread, e.g. on reload */
bool ctl_log_enabled(enum sl_log_level level);
bool ctl_log_is_journal(void);
/* fields: n entries (may be NULL with n 0). Thread-safe (one write per message). */
void ctl_log_at(const char *file, int line, const char *func, enum sl_log_level level,
                const struct ctl_log_field *fields, size_t n, const char *fmt, ...)
        __attribute__((format(printf, 7, 8)));
#define ctl_log(level, fields, n, ...) ctl_log_at(__FILE__, __LINE__, __func__, level, fields, n, __VA_ARGS__)
#define ctl_logf(level, ...) ctl_log_at(__FILE__, __LINE__, __func__, level, NULL, 0, __VA_ARGS__)
/* "err", "warning", "notice", "info", "debug" (also accepts "error", "warn"). */
int ctl_log_level_parse(const char *s, enum sl_log_level *out);

/* ---- audit log: one line per finished request ---- */

struct ctl_audit;

struct ctl_audit_record {
        uint64_t request_id;
        const struct sockaddr *client;  /* may be NULL */
        socklen_t client_len;
        const char *transport;          /* "udp", "tcp" */
        uint32_t prompt_tokens;
        uint32_t generated_tokens;
        const char *outcome;            /* "eos", "length", "stop", "cancelled", "deadline", "busy", "error:CODE", ... */
        uint64_t ttft_us;               /* 0: no token was produced */
        uint64_t latency_us;            /* receipt to the last frame */
        const char *prompt;             /* written only in with-text mode; may be NULL */
        size_t prompt_len;
        const char *output;
        size_t output_len;
};

/* mode OFF opens nothing (writes are no-ops). The file is opened O_APPEND, 0640. */
int ctl_audit_open(enum ctl_audit_mode mode, const char *path, struct ctl_audit **out,
                   struct sl_error *err);
/* On SIGHUP (new settings, or the same after logrotate): opens the new file first, so a
 * failure leaves the old one in use. */
int ctl_audit_reopen(struct ctl_audit *a, enum ctl_audit_mode mode, const char *path,
                     struct sl_error *err);
/* Any thread; one write(2) per line. -errno when the write fails. */
int ctl_audit_write(struct ctl_audit *a, const struct ctl_audit_record *r);
void ctl_audit_close(struct ctl_audit *a);

/* ---- metrics registry (Prometheus text format) ---- */

struct ctl_metrics;
struct ctl_counter;
struct ctl_gauge;
struct ctl_histogram;

int ctl_metrics_create(struct ctl_metrics **out, struct sl_error *err);
void ctl_metrics_free(struct ctl_metrics *m);

/* Registration (any thread, not on hot paths). name: [a-zA-Z_:][a-zA-Z0-9_:]*; labels:
 * NULL or "outcome=eos,transport=udp" (fixed for the series). Series of one name share
 * HELP and TYPE and must agree on them (and on histogram buckets). Returned pointers live
 * until ctl_metrics_free(). Registering the same name and labels again returns the same series. */
struct ctl_counter *ctl_metrics_counter(struct ctl_metrics *m, const char *name, const char *help,
                                        const char *labels, struct sl_error *err);
struct ctl_gauge *ctl_metrics_gauge(struct ctl_metrics *m, const char *name, const char *help,
                                    const char *labels, struct sl_error *err);
/* bounds: n strictly increasing finite upper bounds (the +Inf bucket is implied), n <= 32. */
struct ctl_histogram *ctl_metrics_histogram(struct ctl_metrics *m, const char *name, const char *help,
                                            const char *labels, const double *bounds, size_t n,
                                            struct sl_error *err);

/* Updates: lock-free relaxed atomics, any thread, NULL-safe. */
void ctl_counter_add(struct ctl_counter *c, uint64_t v);
void ctl_gauge_set(struct ctl_gauge *g, int64_t v);
void ctl_gauge_add(struct ctl_gauge *g, int64_t v);
void ctl_histogram_observe(struct ctl_histogram *h, double v);
uint64_t ctl_counter_get(const struct ctl_counter *c);
int64_t ctl_gauge_get(const struct ctl_gauge *g);

/* The exposition text into a malloc'd string (*out, *len); the caller frees it. */
int ctl_metrics_render(struct ctl_metrics *m, char **out, size_t *len);

/* ---- HTTP: /health and /metrics on their own thread ---- */

enum ctl_health { CTL_HEALTH_LOADING = 0, CTL_HEALTH_READY, CTL_HEALTH_DRAINING, CTL_HEALTH_DEGRADED };

struct ctl_http;

struct ctl_http_opts {
        const struct ctl_addr *listen;
        struct ctl_metrics *metrics;    /* may be NULL: /metrics is empty */
        const uint64_t *heartbeat;      /* bumped by the engine every loop; may be NULL */
        uint32_t stall_timeout_ms;      /* heartbeat still this long while ready: degraded */
};

int ctl_http_start(const struct ctl_http_opts *o, struct ctl_http **out, struct sl_error *err);
void ctl_http_stop(struct ctl_http *h);
void ctl_http_set_state(struct ctl_http *h, enum ctl_health s);   /* any thread */
/* What /health would answer now (applies the heartbeat rule). */
enum ctl_health ctl_http_health(struct ctl_http *h);
const char *ctl_health_name(enum ctl_health s);
uint16_t ctl_http_port(const struct ctl_http *h);                /* the bound port */
void ctl_http_set_stall_timeout(struct ctl_http *h, uint32_t ms); /* on reload */
