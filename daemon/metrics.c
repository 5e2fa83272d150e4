/* metrics.c — the Prometheus series sluiced exports, registered once at start. Updates are
 * the registry's lock-free calls: request outcomes, tokens and latencies from the engine
 * thread's events; gauges and the transports' counters copied by the engine thread every
 * 200 ms (serve.c, update_metrics). */
#include <errno.h>
#include <stdio.h>

#include <stdlib.h>

#include "daemon.h"
#include "sluice_config.h"

const char *const dt_kind_name[DTK_N] = {"udp", "tcp", "dpdk"};

static const double ttft_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double itl_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
static const double lat_bounds[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

int d_metrics_register(struct ctl_metrics *reg, struct d_metrics *m, struct sl_error *err)
{
        char labels[96];
#define NN(x) do { if (!(x)) return -EINVAL; } while (0)
        for (int i = 0; i < DO_N; i++) {
                snprintf(labels, sizeof(labels), "outcome=%s", d_outcome_name[i]);
                NN(m->requests[i] = ctl_metrics_counter(reg, "sluice_requests_total",
                                                        "Requests finished, by outcome", labels, err));
        }
        NN(m->prompt_tokens = ctl_metrics_counter(reg, "sluice_prompt_tokens_total",
                                                  "Prompt tokens of finished requests", NULL, err));
        NN(m->generated_tokens = ctl_metrics_counter(reg, "sluice_generated_tokens_total",
                                                     "Tokens generated", NULL, err));
        NN(m->ttft = ctl_metrics_histogram(reg, "sluice_time_to_first_token_seconds",
                                           "Receipt of a request to its first generated token", NULL,
                                           ttft_bounds, sizeof(ttft_bounds) / sizeof(*ttft_bounds), err));
        NN(m->itl = ctl_metrics_histogram(reg, "sluice_inter_token_latency_seconds",
                                          "Time between consecutive tokens of a request", NULL, itl_bounds,
                                          sizeof(itl_bounds) / sizeof(*itl_bounds), err));
        NN(m->latency = ctl_metrics_histogram(reg, "sluice_request_duration_seconds",
                                              "Receipt of a request to its end", NULL, lat_bounds,
                                              sizeof(lat_bounds) / sizeof(*lat_bounds), err));
        NN(m->queue_depth = ctl_metrics_gauge(reg, "sluice_queue_depth", "Requests waiting for admission",
                                              NULL, err));
        NN(m->running = ctl_metrics_gauge(reg, "sluice_running_requests", "Requests being generated", NULL,
                                          err));
        NN(m->live = ctl_metrics_gauge(reg, "sluice_live_requests",
                                       "Generation requests accepted and not finished", NULL, err));
        NN(m->kv_used = ctl_metrics_gauge(reg, "sluice_kv_blocks_used", "KV cache blocks in use", NULL, err));
        NN(m->kv_total = ctl_metrics_gauge(reg, "sluice_kv_blocks_total", "KV cache blocks in the pool", NULL,
                                           err));
        NN(m->draining = ctl_metrics_gauge(reg, "sluice_draining", "1 while shutting down", NULL, err));
        NN(m->steps = ctl_metrics_counter(reg, "sluice_engine_steps_total", "Engine forward steps", NULL, err));
        NN(m->preemptions = ctl_metrics_counter(reg, "sluice_preemptions_total",
                                                "Requests whose KV was dropped for recomputation", NULL, err));
        NN(m->graph_steps = ctl_metrics_counter(reg, "sluice_engine_graph_steps_total",
                                                "Decode steps replayed from a captured CUDA Graph", NULL, err));
        NN(m->gpu_errors = ctl_metrics_counter(reg, "sluice_engine_gpu_errors_total",
                                               "Steps failed by a GPU error", NULL, err));
        NN(m->launches = ctl_metrics_gauge(reg, "sluice_engine_launches_per_step",
                                           "Kernel launches the host enqueued in the last step (1 for a graph replay)",
                                           NULL, err));
        NN(m->gpu = ctl_metrics_gauge(reg, "sluice_engine_gpu", "1 when the engine runs on the CUDA backend",
                                      NULL, err));
        NN(m->resp_ring_full = ctl_metrics_counter(reg, "sluice_response_drops_total",
                                                   "Response frames lost to a response ring that stayed full",
                                                   NULL, err));
        static const char prompt_help[] = "Token-id prompts by where the engine read them: in place (the "
                                          "transport's receive buffer, or the request ring), or from a copy";
        NN(m->prompts_zero_copy = ctl_metrics_counter(reg, "sluice_prompt_reads_total", prompt_help, "source=in_place",
                                                      err));
        NN(m->prompts_copied = ctl_metrics_counter(reg, "sluice_prompt_reads_total", prompt_help, "source=copy", err));
        NN(m->prompt_tokens_in_place = ctl_metrics_counter(
                   reg, "sluice_prompt_tokens_in_place_total",
                   "Prompt tokens that prefill steps read where the transport wrote them (the request ring or the "
                   "DPDK receive buffer; on a GPU backend, read by the GPU when that memory is mapped for it)",
                   NULL, err));
        static const char auth_help[] = "Frames checked by authentication, by outcome (refused ones are dropped on "
                                        "UDP and answered with ERROR on TCP)";
        static const char tls_help[] = "TLS handshakes on the TCP transport, by outcome (failed: refused, broken "
                                       "or not finished in 10 s; the connection is closed)";
        static const char cookie_help[] = "UDP cookies (amplification protection): COOKIE frames sent, and frames "
                                          "refused for a missing or invalid (expired, other address) cookie";
        static const struct { const char *name, *help, *label; } tc[DTS_N] = {
                [DTS_RX_FRAMES] = {"sluice_transport_rx_frames_total", "Frames received"},
                [DTS_TX_FRAMES] = {"sluice_transport_tx_frames_total", "Frames sent"},
                [DTS_RX_BYTES] = {"sluice_transport_rx_bytes_total", "Bytes received"},
                [DTS_TX_BYTES] = {"sluice_transport_tx_bytes_total", "Bytes sent"},
                [DTS_MALFORMED] = {"sluice_transport_malformed_total", "Malformed frames received"},
                [DTS_DROPS] = {"sluice_transport_drops_total",
                               "Frames dropped (bad CRC, short HELLO, full buffers or tables, slow readers, unacknowledged UDP windows)"},
                [DTS_ERRORS_SENT] = {"sluice_transport_errors_sent_total",
                                     "ERROR frames sent by the transport itself"},
                [DTS_AUTH_OK] = {"sluice_auth_frames_total", auth_help, "result=ok"},
                [DTS_AUTH_MISSING] = {"sluice_auth_frames_total", auth_help, "result=no_trailer"},
                [DTS_AUTH_UNKNOWN_KEY] = {"sluice_auth_frames_total", auth_help, "result=unknown_key"},
                [DTS_AUTH_EXPIRED] = {"sluice_auth_frames_total", auth_help, "result=outside_window"},
                [DTS_AUTH_BAD_MAC] = {"sluice_auth_frames_total", auth_help, "result=bad_mac"},
                [DTS_AUTH_REPLAYED] = {"sluice_auth_frames_total", auth_help, "result=replayed"},
                [DTS_AUTH_FULL] = {"sluice_auth_frames_total", auth_help, "result=replay_table_full"},
                [DTS_DENIED] = {"sluice_denied_total",
                                "Datagrams dropped (UDP, DPDK) or connections closed at accept (TCP): the "
                                "source is outside the transport's allow list"},
                [DTS_COOKIES_SENT] = {"sluice_udp_cookies_total", cookie_help, "result=sent"},
                [DTS_COOKIE_MISSING] = {"sluice_udp_cookies_total", cookie_help, "result=missing"},
                [DTS_COOKIE_BAD] = {"sluice_udp_cookies_total", cookie_help, "result=invalid"},
                [DTS_TLS_OK] = {"sluice_tls_handshakes_total", tls_help, "result=ok"},
                [DTS_TLS_FAILED] = {"sluice_tls_handshakes_total", tls_help, "result=failed"},
        };
        for (int t = 0; t < DTK_N; t++)
                for (int k = 0; k < DTS_N; k++) {
                        snprintf(labels, sizeof(labels), "transport=%s%s%s", dt_kind_name[t], tc[k].label ? "," : "",
                                 tc[k].label ? tc[k].label : "");
                        NN(m->tr[t][k] = ctl_metrics_counter(reg, tc[k].name, tc[k].help, labels, err));
                }
        for (int l = 0; l < DL_N; l++)
                for (int t = 0; t < DTK_N; t++) {
                        snprintf(labels, sizeof(labels), "limit=%s,transport=%s", d_limit_name[l], dt_kind_name[t]);
                        NN(m->rate_limited[l][t] = ctl_metrics_counter(reg, "sluice_rate_limited_total",
                                                                       "Requests refused with RATE_LIMITED, by "
                                                                       "per-client limit", labels, err));
                }
        NN(m->clients = ctl_metrics_gauge(reg, "sluice_clients_tracked",
                                          "Clients (keys or addresses) in the per-client limits table", NULL, err));
#undef NN
        return 0;
}

/* ---- DPDK: per lcore and queue ---- */

/* Only in a build with DPDK: dp_dpdk_* exist there alone, and main.c/serve.c call these
 * under the same condition. */
#if SLUICE_HAVE_DPDK

enum { DD_RX, DD_TX, DD_RX_BYTES, DD_TX_BYTES, DD_MALFORMED, DD_ARP_REQ_RX, DD_ARP_REP_RX, DD_ARP_REP_TX,
       DD_ARP_REQ_TX, DD_ICMP, DD_ZERO_COPY, DD_COPIED, DD_DROP0, DD_N = DD_DROP0 + DP_DPDK_DROP_N };

struct d_dpdk_metrics {
        unsigned n;
        struct ctl_counter *c[DP_DPDK_MAX_LCORES][DD_N];
        uint64_t last[DP_DPDK_MAX_LCORES][DD_N];
        struct ctl_counter *port[3];
        uint64_t port_last[3];
};

#define ARP_HELP "ARP frames, by kind"
#define REQ_HELP "Requests handed to the engine: in their receive buffer (zero_copy) or copied into the ring"

int d_dpdk_metrics_register(struct ctl_metrics *reg, struct d_metrics *m, struct dp_dpdk *dp, struct sl_error *err)
{
        static const struct { const char *name, *help, *extra; } s[DD_DROP0] = {
                [DD_RX] = {"sluice_dpdk_rx_packets_total", "Frames received, per lcore and queue", NULL},
                [DD_TX] = {"sluice_dpdk_tx_packets_total", "Frames sent, per lcore and queue", NULL},
                [DD_RX_BYTES] = {"sluice_dpdk_rx_bytes_total", "Bytes received", NULL},
                [DD_TX_BYTES] = {"sluice_dpdk_tx_bytes_total", "Bytes sent", NULL},
                [DD_MALFORMED] = {"sluice_dpdk_malformed_total",
                                  "Protocol frames that failed validation (docs/protocol.md 2.4, payloads)", NULL},
                [DD_ARP_REQ_RX] = {"sluice_dpdk_arp_total", ARP_HELP, "kind=request_rx"},
                [DD_ARP_REP_RX] = {"sluice_dpdk_arp_total", ARP_HELP, "kind=reply_rx"},
                [DD_ARP_REP_TX] = {"sluice_dpdk_arp_total", ARP_HELP, "kind=reply_tx"},
                [DD_ARP_REQ_TX] = {"sluice_dpdk_arp_total", ARP_HELP, "kind=request_tx"},
                [DD_ICMP] = {"sluice_dpdk_icmp_echo_total", "ICMP echo requests answered", NULL},
                [DD_ZERO_COPY] = {"sluice_dpdk_requests_total",
                                  REQ_HELP, "path=zero_copy"},
                [DD_COPIED] = {"sluice_dpdk_requests_total", REQ_HELP, "path=copied"},
        };
        char labels[128];
        struct d_dpdk_metrics *dm = calloc(1, sizeof(*dm));
        if (!dm)
                return -ENOMEM;
        dm->n = dp_dpdk_queues(dp);
        for (unsigned q = 0; q < dm->n; q++) {
                unsigned lc = dp_dpdk_lcore(dp, q);
                for (int k = 0; k < DD_N; k++) {
                        const char *name, *help, *extra;
                        char ex[64];
                        if (k < DD_DROP0) {
                                name = s[k].name, help = s[k].help, extra = s[k].extra;
                        } else {
                                name = "sluice_dpdk_drops_total";
                                help = "Frames dropped, by reason";
                                snprintf(ex, sizeof(ex), "reason=%s", dp_dpdk_drop_name((unsigned)(k - DD_DROP0)));
                                extra = ex;
                        }
                        snprintf(labels, sizeof(labels), "lcore=%u,queue=%u%s%s", lc, q, extra ? "," : "", extra ? extra : "");
                        if (!(dm->c[q][k] = ctl_metrics_counter(reg, name, help, labels, err))) {
                                free(dm);
                                return -EINVAL;
                        }
                }
        }
        static const char *const pr[3] = {"missed", "errors", "no_mbuf"};
        for (int i = 0; i < 3; i++) {
                snprintf(labels, sizeof(labels), "reason=%s", pr[i]);
                if (!(dm->port[i] = ctl_metrics_counter(reg, "sluice_dpdk_port_drops_total",
                                                        "Frames the port itself dropped (rte_eth_stats)", labels, err))) {
                        free(dm);
                        return -EINVAL;
                }
        }
        m->dpdk = dm;
        return 0;
}

static void add_delta(struct ctl_counter *c, uint64_t v, uint64_t *last)
{
        if (v > *last)
                ctl_counter_add(c, v - *last);
        *last = v;
}

void d_dpdk_metrics_update(struct d_metrics *m, struct dp_dpdk *dp)
{
        struct d_dpdk_metrics *dm = m->dpdk;
        if (!dm || !dp)
                return;
        for (unsigned q = 0; q < dm->n; q++) {
                struct dp_dpdk_stats st;
                uint64_t v[DD_N];
                dp_dpdk_stats(dp, q, &st);
                v[DD_RX] = st.rx_packets, v[DD_TX] = st.tx_packets, v[DD_RX_BYTES] = st.rx_bytes;
                v[DD_TX_BYTES] = st.tx_bytes, v[DD_MALFORMED] = st.proto.malformed;
                v[DD_ARP_REQ_RX] = st.arp_requests_rx, v[DD_ARP_REP_RX] = st.arp_replies_rx;
                v[DD_ARP_REP_TX] = st.arp_replies_tx, v[DD_ARP_REQ_TX] = st.arp_requests_tx;
                v[DD_ICMP] = st.icmp_echo, v[DD_ZERO_COPY] = st.prompts_zero_copy, v[DD_COPIED] = st.prompts_copied;
                for (int i = 0; i < DP_DPDK_DROP_N; i++)
                        v[DD_DROP0 + i] = st.drops[i];
                for (int k = 0; k < DD_N; k++)
                        add_delta(dm->c[q][k], v[k], &dm->last[q][k]);
        }
        uint64_t p[3];
        dp_dpdk_port_drops(dp, &p[0], &p[1], &p[2]);
        for (int i = 0; i < 3; i++)
                add_delta(dm->port[i], p[i], &dm->port_last[i]);
}
#endif
