/* metrics.c — the Prometheus series sluiced exports, registered once at start. Updates are
 * the registry's lock-free calls: request outcomes, tokens and latencies from the engine
 * thread's events; gauges and the transports' counters copied by the engine thread every
 * 200 ms (serve.c, update_metrics). */
#include <errno.h>
#include <stdio.h>

#include "daemon.h"

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
        static const char *const tn[DT_N] = {"udp", "tcp"};
        static const struct { const char *name, *help; } tc[DTS_N] = {
                [DTS_RX_FRAMES] = {"sluice_transport_rx_frames_total", "Frames received"},
                [DTS_TX_FRAMES] = {"sluice_transport_tx_frames_total", "Frames sent"},
                [DTS_RX_BYTES] = {"sluice_transport_rx_bytes_total", "Bytes received"},
                [DTS_TX_BYTES] = {"sluice_transport_tx_bytes_total", "Bytes sent"},
                [DTS_MALFORMED] = {"sluice_transport_malformed_total", "Malformed frames received"},
                [DTS_DROPS] = {"sluice_transport_drops_total",
                               "Frames dropped (bad CRC, short HELLO, full buffers or tables, slow readers, unacknowledged UDP windows)"},
                [DTS_ERRORS_SENT] = {"sluice_transport_errors_sent_total",
                                     "ERROR frames sent by the transport itself"},
        };
        for (int t = 0; t < DT_N; t++)
                for (int k = 0; k < DTS_N; k++) {
                        snprintf(labels, sizeof(labels), "transport=%s", tn[t]);
                        NN(m->tr[t][k] = ctl_metrics_counter(reg, tc[k].name, tc[k].help, labels, err));
                }
#undef NN
        return 0;
}
