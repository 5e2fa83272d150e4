/* daemon.h — internal to daemon/: the state main.c builds and serve.c runs on the engine
 * thread, and the metrics metrics.c registers. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "control.h"
#include "dataplane.h"
#include "engine.h"

/* Ring pairs between the transports and the engine thread: one each for the kernel UDP and
 * TCP transports, one per DPDK queue (= lcore), so every ring keeps one producer and one
 * consumer. Metrics label them by kind: udp, tcp, dpdk. */
enum { DT_UDP = 0, DT_TCP = 1, DT_DPDK = 2, DT_N = DT_DPDK + DP_DPDK_MAX_LCORES };
enum { DTK_UDP = 0, DTK_TCP = 1, DTK_DPDK = 2, DTK_N = 3 };
static inline int dt_kind(int tr) { return tr < DT_DPDK ? tr : DTK_DPDK; }
extern const char *const dt_kind_name[DTK_N];

/* Request outcomes, the label values of sluice_requests_total. */
enum d_outcome {
        DO_EOS, DO_LENGTH, DO_STOP, DO_CANCELLED, DO_DEADLINE, DO_CONTEXT, DO_ERROR,
        DO_BUSY, DO_BAD_PARAM, DO_PROMPT_TOO_LONG, DO_SHUTTING_DOWN, DO_TOKENIZE, DO_RATE_LIMITED, DO_N,
};
extern const char *const d_outcome_name[DO_N];

/* Counters copied from struct dp_transport_stats. */
enum { DTS_RX_FRAMES, DTS_TX_FRAMES, DTS_RX_BYTES, DTS_TX_BYTES, DTS_MALFORMED, DTS_DROPS, DTS_ERRORS_SENT,
       DTS_AUTH_OK, DTS_AUTH_MISSING, DTS_AUTH_UNKNOWN_KEY, DTS_AUTH_EXPIRED, DTS_AUTH_BAD_MAC, DTS_AUTH_REPLAYED,
       DTS_AUTH_FULL, DTS_DENIED, DTS_COOKIES_SENT, DTS_COOKIE_MISSING, DTS_COOKIE_BAD, DTS_TLS_OK, DTS_TLS_FAILED, DTS_N };

/* Per-client limits (serve.c), the label values of sluice_rate_limited_total. */
enum d_limit { DL_CONCURRENCY, DL_RPS, DL_TPS, DL_N };
extern const char *const d_limit_name[DL_N];

struct d_metrics {
        struct ctl_counter *requests[DO_N];
        struct ctl_counter *prompt_tokens, *generated_tokens;
        struct ctl_histogram *ttft, *itl, *latency;
        struct ctl_gauge *queue_depth, *running, *kv_used, *kv_total, *live, *draining;
        struct ctl_counter *steps, *preemptions, *resp_ring_full;
        struct ctl_counter *graph_steps, *gpu_errors;  /* CUDA backend */
        struct ctl_gauge *launches, *gpu;
        struct ctl_counter *tr[DTK_N][DTS_N];
        struct ctl_counter *rate_limited[DL_N][DTK_N]; /* requests refused by a per-client limit */
        struct ctl_gauge *clients;     /* clients tracked for the per-client limits */
        uint64_t tr_last[DT_N][DTS_N]; /* engine thread: last values copied */
        struct ctl_counter *prompts_zero_copy, *prompts_copied; /* how prompts reached the engine */
        struct ctl_counter *prompt_tokens_in_place;  /* prefill ids read where the transport wrote them */
        struct d_dpdk_metrics *dpdk;   /* per DPDK queue, when the transport runs */
};

int d_metrics_register(struct ctl_metrics *reg, struct d_metrics *m, struct sl_error *err);
/* The DPDK series (per lcore and queue), once the transport is up; d_dpdk_metrics_update()
 * copies its counters (engine thread, with the other transport counters). */
int d_dpdk_metrics_register(struct ctl_metrics *reg, struct d_metrics *m, struct dp_dpdk *dp, struct sl_error *err);
void d_dpdk_metrics_update(struct d_metrics *m, struct dp_dpdk *dp);

/* Limits that SIGHUP may change: the main thread writes them under lock and bumps gen;
 * the engine thread copies them when gen moved (once per loop, never per token). */
struct d_limits {
        uint32_t max_prompt_tokens, max_prompt_bytes, max_new_tokens, default_max_tokens;
        uint32_t request_timeout_ms;
        bool audit_text;
        uint32_t max_inflight, rps, tps; /* per client; keys may override them (0: no limit) */
};

struct daemon {
        struct ctl_config cfg;
        struct engine_model *model;
        const struct engine_tokenizer *tok;
        uint32_t n_vocab;
        struct engine_sched *sched;
        struct engine_sched_opts sopts;  /* in force */

        struct dp_ring *req_ring[DT_N], *resp_ring[DT_N];
        bool req_ring_gpu[DT_N];         /* registered with the engine's GPU (mapped) */
        bool transports_freed;           /* main thread, at exit: prompts still held by the engine
                                          * give back only their ring space (serve.c) */
        struct dp_notify wake;
        struct dp_udp *udp;
        struct dp_tcp *tcp;
        struct dp_dpdk *dpdk;
        struct dp_auth_ctx auth;         /* clients' keys, shared by the transports */
        struct dp_allow allow[DTK_N];    /* client networks let in, by transport kind */
        uint8_t cookie_secret[DP_COOKIE_SECRET_SIZE]; /* UDP cookies: the kernel UDP and DPDK cores share it */
        struct dp_info info;
        char model_name[CTL_NAME_MAX + 1];
        char server_name[CTL_NAME_MAX + 16];

        struct ctl_metrics *metrics;
        struct d_metrics m;
        struct ctl_http *http;
        struct ctl_audit *audit;

        pthread_mutex_t lim_lock;
        struct d_limits lim;
        _Atomic uint32_t lim_gen;
        _Atomic uint32_t max_inflight;   /* cfg.limits.max_concurrent_per_client for serve_load on
                                          * the transport threads: reload() rewrites cfg meanwhile */

        uint64_t heartbeat;              /* bumped by the engine loop (atomic builtins) */
        _Atomic bool draining;           /* new requests get SHUTTING_DOWN */
        _Atomic bool cancel_all;         /* drain timeout: cancel every live request */
        _Atomic bool fatal;              /* the engine failed for good: drain, exit non-zero */
        _Atomic bool stop;               /* engine thread: leave the loop */
        _Atomic bool transports_up;      /* udp/tcp/dpdk and m.dpdk are set: the engine thread
                                          * starts first and reads them only after this (acquire) */
        _Atomic uint32_t n_live;         /* entries in the request table */
        pthread_t engine_th;
        struct serve *serve;             /* serve.c's private state */
};

int serve_create(struct daemon *d, struct sl_error *err);
void serve_free(struct daemon *d);
void *serve_main(void *arg);             /* the engine thread */
void serve_load(void *arg, struct dp_load *out); /* dp_load_fn */
