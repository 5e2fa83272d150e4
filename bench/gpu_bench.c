/* gpu_bench.c — sluice-bench-gpu: the CUDA backend's figures for one model, through the
 * scheduler the daemon uses (host overhead included):
 *   load: disk → GPU GB/s (io_uring O_DIRECT into pinned staging, cudaMemcpyAsync);
 *   engine build (KV pool, CUDA Graph capture);
 *   the device's read bandwidth (the roofline's denominator);
 *   decode tokens/s at each batch with P-token prompts and G generated tokens (ignore EOS),
 *   over the decode-only steps, and the fraction of the bandwidth roofline: (weight bytes +
 *   KV bytes read per step) / step time / bandwidth;
 *   prefill tokens/s and time to first token for one prompt of each prefill length, on a
 *   fresh engine ("first": the first request of that length since the engine started;
 *   cuBLASLt's algorithms are chosen and every product class run at start, so what is left
 *   in it is unexplained, docs/performance.md) and after one request of the same length
 *   ("warm": what a serving daemon sees).
 * Prints a table and writes JSON (--json). Never fails over a timing. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "model.h"
#include "cuda/ecu.h"

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint32_t rnd(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (uint32_t)rng;
}

struct counter {
        uint32_t gen;
        uint64_t first_ns;
};

static struct counter *g_ctr;
static uint64_t g_t0;

static void on_token(void *user, uint64_t tag, int32_t id, const char *text, uint32_t len)
{
        (void)user, (void)id, (void)text, (void)len;
        if (!g_ctr[tag].gen++)
                g_ctr[tag].first_ns = sl_now_ns() - g_t0;
}

static void on_done(void *user, uint64_t tag, const struct engine_sched_done *d)
{
        int *done = user;
        if (d->reason == ENGINE_FINISH_ERROR)
                fprintf(stderr, "request %llu failed: %s\n", (unsigned long long)tag, d->msg);
        (*done)++;
}

struct run_result {
        double decode_tps, step_ms, gpu_ms, ttft_ms, prefill_tps, kv_bytes_step, total_s;
        uint64_t decode_steps;
        double graph_frac;
};

/* n requests of P prompt tokens and G generated, submitted together. */
static bool g_invariant, g_no_overlap, g_no_fuse, g_no_tc, g_no_tc_decode, g_no_mma;
static int g_pdl; /* engine_sched_opts.pdl */

/* One request of P random prompt ids, greedy, EOS ignored. */
static int submit_random(struct engine_sched *s, const struct engine_hparams *hp, int32_t *prompt, uint32_t P,
                         uint64_t tag, uint32_t max_tokens, struct sl_error *err)
{
        for (uint32_t j = 0; j < P; j++)
                prompt[j] = (int32_t)(rnd() % hp->n_vocab);
        struct engine_request q = {.tag = tag, .prompt = prompt, .n_prompt = P, .max_tokens = max_tokens,
                                   .ignore_eos = true};
        engine_sampling_defaults(&q.sampling);
        q.sampling.temperature = 0.0f;
        int r = engine_sched_submit(s, &q, NULL, err);
        if (r < 0)
                fprintf(stderr, "submit: %s\n", err->msg);
        return r;
}

/* warm: one request of P tokens runs to its end first (not timed) */
static int run(struct engine_model *m, uint32_t n, uint32_t P, uint32_t G, uint32_t budget, bool warm,
               struct run_result *res)
{
        const struct engine_hparams *hp = engine_model_hparams(m);
        struct sl_error err = {0};
        struct engine_sched_opts o = {.max_running = n, .max_queued = n, .token_budget = budget, .prefill_chunk = budget,
                                      .max_ctx = P + G + 16, .batch_invariant = g_invariant,
                                      .pdl = g_pdl, .no_overlap = g_no_overlap,
                                      .no_fused_epilogues = g_no_fuse, .no_tc_attention = g_no_tc,
                                      .no_tc_decode = g_no_tc_decode, .no_mma_products = g_no_mma};
        struct engine_sched *s;
        int r = engine_sched_create(m, &o, &s, &err);
        if (r < 0) {
                fprintf(stderr, "sched (batch %u): %s\n", n, err.msg);
                return r;
        }
        int32_t *prompt = malloc(sizeof(int32_t) * P);
        g_ctr = calloc(n + 1, sizeof(*g_ctr)); /* [n]: the warm-up request */
        int done = 0;
        struct engine_sched_events ev = {on_token, on_done};
        memset(res, 0, sizeof(*res));
        if (warm) {
                if ((r = submit_random(s, hp, prompt, P, n, 2, &err)) < 0)
                        goto out;
                while (done < 1)
                        if ((r = engine_sched_step(s, &ev, &done, &err)) < 0) {
                                fprintf(stderr, "step: %s\n", err.msg);
                                goto out;
                        }
                done = 0;
        }
        g_t0 = sl_now_ns();
        for (uint32_t i = 0; i < n; i++)
                if ((r = submit_random(s, hp, prompt, P, i, G, &err)) < 0)
                        goto out;
        const uint64_t t_start = sl_now_ns();
        uint64_t t_mark = t_start;
        uint64_t dec_ns = 0, dec_gpu_ns = 0, dec_tok = 0, dec_steps = 0, first_prefill_ns = 0;
        double kv_bytes = 0;
        const double per_pos = (double)hp->n_layer * hp->n_head_kv * (hp->head_dim_k + hp->head_dim_v) * 2;
        while ((uint32_t)done < n) {
                struct engine_sched_stats a, b;
                engine_sched_stats(s, &a);
                double ctx_sum = 0; /* positions the running sequences attend to this step */
                for (uint32_t i = 0; i < n; i++)
                        if (g_ctr[i].gen < G)
                                ctx_sum += P + g_ctr[i].gen;
                if ((r = engine_sched_step(s, &ev, &done, &err)) < 0) {
                        fprintf(stderr, "step: %s\n", err.msg);
                        goto out;
                }
                /* Steps overlap (the next is launched before the last is read), so a step's time
                 * is the time between two completions; the first prefill's runs from the start. */
                uint64_t now = sl_now_ns(), dt = now - t_mark;
                t_mark = now;
                engine_sched_stats(s, &b);
                if (b.steps == a.steps)
                        continue; /* launched only */
                if (b.prefill_last == 0) {
                        dec_ns += dt;
                        dec_gpu_ns += b.gpu_ns_last;
                        dec_tok += b.generated_tokens - a.generated_tokens;
                        dec_steps++;
                        kv_bytes += per_pos * ctx_sum;
                } else if (!first_prefill_ns) {
                        first_prefill_ns = now - t_start;
                }
        }
        struct engine_sched_stats st;
        engine_sched_stats(s, &st);
        res->total_s = (sl_now_ns() - g_t0) / 1e9;
        res->decode_tps = dec_ns ? dec_tok / (dec_ns / 1e9) : 0;
        res->step_ms = dec_steps ? dec_ns / 1e6 / dec_steps : 0;
        res->gpu_ms = dec_steps ? dec_gpu_ns / 1e6 / dec_steps : 0;
        res->decode_steps = dec_steps;
        res->kv_bytes_step = dec_steps ? kv_bytes / dec_steps : 0;
        res->ttft_ms = g_ctr[0].first_ns / 1e6;
        res->prefill_tps = first_prefill_ns ? (double)SL_MIN(P * n, budget) / (first_prefill_ns / 1e9) : 0;
        res->graph_frac = st.graph_steps + st.eager_steps ? (double)st.graph_steps / (st.graph_steps + st.eager_steps) : 0;
        r = 0;
out:
        free(prompt);
        free(g_ctr);
        engine_sched_free(s);
        return r;
}

static void usage(const char *argv0)
{
        fprintf(stderr, "usage: %s -m MODEL.gguf [--batches 1,8,32,64,128,256] [--prompt 128] [--gen 256]\n"
                        "          [--prefill 512,2048] [--json PATH] [--label NAME] [--invariant] [--pdl off|MASK] [--no-overlap] [--no-fused-epilogues]\n"
                        "          [--no-tc-attention] [--no-tc-decode] [--no-mma-products]\n", argv0);
}

static int parse_list(const char *s, uint32_t *v, int max)
{
        int n = 0;
        while (*s && n < max) {
                char *e;
                unsigned long x = strtoul(s, &e, 10);
                if (e == s || x == 0 || x > 65536)
                        return -1;
                v[n++] = (uint32_t)x;
                s = *e == ',' ? e + 1 : e;
                if (*e && *e != ',')
                        return -1;
        }
        return n;
}

int main(int argc, char **argv)
{
        const char *model = NULL, *json = NULL, *label = "";
        uint32_t batches[16] = {1, 8, 32, 64, 128, 256}, prefill[8] = {512, 2048};
        int nb = 6, np = 2;
        uint32_t P = 128, G = 256;
        static const struct option lo[] = {{"model", 1, 0, 'm'}, {"batches", 1, 0, 'b'}, {"prompt", 1, 0, 'p'},
                                           {"gen", 1, 0, 'g'},   {"prefill", 1, 0, 'f'}, {"json", 1, 0, 'j'},
                                           {"label", 1, 0, 'l'}, {"invariant", 0, 0, 'i'}, {"pdl", 1, 0, 'P'}, {"no-overlap", 0, 0, 'O'},
                                           {"no-fused-epilogues", 0, 0, 'F'}, {"no-tc-attention", 0, 0, 'T'},
                                           {"no-tc-decode", 0, 0, 'D'}, {"no-mma-products", 0, 0, 'M'},
                                           {0, 0, 0, 0}};
        int c;
        while ((c = getopt_long(argc, argv, "m:", lo, NULL)) != -1) {
                switch (c) {
                case 'm': model = optarg; break;
                case 'b': nb = parse_list(optarg, batches, 16); break;
                case 'f': np = parse_list(optarg, prefill, 8); break;
                case 'p': P = (uint32_t)atoi(optarg); break;
                case 'g': G = (uint32_t)atoi(optarg); break;
                case 'j': json = optarg; break;
                case 'l': label = optarg; break;
                case 'i': g_invariant = true; break;
                case 'P':
                        g_pdl = !strcmp(optarg, "off") ? -1 : atoi(optarg);
                        if (g_pdl == 0 || g_pdl > 127) {
                                fprintf(stderr, "sluice-bench-gpu: --pdl takes off or a mask 1..127, not '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case 'O': g_no_overlap = true; break;
                case 'F': g_no_fuse = true; break;
                case 'T': g_no_tc = true; break;
                case 'D': g_no_tc_decode = true; break;
                case 'M': g_no_mma = true; break;
                default: usage(argv[0]); return 2;
                }
        }
        if (!model || nb < 1 || np < 0 || P < 1 || G < 2) {
                usage(argv[0]);
                return 2;
        }
        struct sl_error err = {0};
        struct engine_gpu_info gi;
        if (engine_gpu_probe(0, &gi, &err) < 0) {
                printf("SKIP: %s\n", err.msg);
                return 77;
        }
        uint64_t t0 = sl_now_ns();
        struct engine_load_opts lopt = {.backend = ENGINE_BACKEND_CUDA};
        struct engine_model *m;
        if (engine_model_load(model, &lopt, &m, &err) < 0) {
                fprintf(stderr, "%s: %s\n", model, err.msg);
                return 1;
        }
        const double load_s = (sl_now_ns() - t0) / 1e9;
        const struct engine_hparams *hp = engine_model_hparams(m);
        const struct engine_load_stats *ls = engine_model_load_stats(m);
        engine_model_gpu_info(m, &gi);
        /* bytes a decode step must read: every matrix once; the embedding table only when it
         * doubles as the output projection (otherwise a step reads a few rows of it) */
        double wbytes = 0;
        for (uint32_t il = 0; il < hp->n_layer; il++) {
                const struct engine_layer *L = &m->layers[il];
                const struct engine_tensor *ts[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
                for (size_t i = 0; i < SL_ARRAY_SIZE(ts); i++)
                        wbytes += (double)ts[i]->row_size * ts[i]->ne[1];
        }
        wbytes += (double)m->output.row_size * m->output.ne[1];
        double bw = 0;
        if (ecu_measure_bandwidth(&bw, &err) < 0) {
                fprintf(stderr, "bandwidth: %s\n", err.msg);
                return 1;
        }
        printf("model %s%s%s: %s, %u layers, %.2f GB weights (%.2f GB read per decode step)\n", model,
               label[0] ? " " : "", label, hp->arch_name, hp->n_layer, hp->weight_bytes / 1e9, wbytes / 1e9);
        printf("GPU %s: read bandwidth %.0f GB/s\n", gi.name, bw);
        printf("load: %.2f s total, tensor data %.2f GB in %.2f s = %.2f GB/s to the GPU (O_DIRECT %s)\n", load_s,
               ls->bytes / 1e9, ls->ns / 1e9, ls->bytes / (ls->ns / 1e9) / 1e9, ls->direct_io ? "yes" : "no");

        FILE *jf = json ? fopen(json, "w") : NULL;
        if (jf)
                fprintf(jf, "{\"model\": \"%s\", \"label\": \"%s\", \"pdl\": %d, \"batch_invariant\": %s, \"overlap\": %s, \"fused_epilogues\": %s, \"tc_attention\": %s, \"tc_decode\": %s, \"mma_products\": %s, \"gpu\": \"%s\", \"read_gbs\": %.1f, "
                            "\"weight_bytes_per_step\": %.0f, \"load_s\": %.3f, \"load_data_gbs\": %.3f, "
                            "\"direct_io\": %s, \"decode\": [",
                        model, label, g_pdl ? g_pdl : ENGINE_PDL_DEFAULT, g_invariant ? "true" : "false", g_no_overlap ? "false" : "true", g_no_fuse ? "false" : "true", g_no_tc ? "false" : "true", g_no_tc_decode ? "false" : "true", g_no_mma ? "false" : "true", gi.name, bw, wbytes, load_s, ls->bytes / (ls->ns / 1e9) / 1e9,
                        ls->direct_io ? "true" : "false");
        printf("\n%-8s %12s %10s %10s %10s %10s %8s\n", "batch", "decode tok/s", "step ms", "GPU ms", "roofline", "TTFT ms",
               "graphs");
        for (int i = 0; i < nb; i++) {
                struct run_result rr;
                uint32_t budget = SL_MAX(2048u, batches[i]);
                if (run(m, batches[i], P, G, budget, false, &rr) < 0) {
                        printf("%-8u %12s\n", batches[i], "failed");
                        continue;
                }
                const double bytes = wbytes + rr.kv_bytes_step;
                const double roof = rr.step_ms > 0 ? bytes / (rr.step_ms / 1e3) / (bw * 1e9) : 0;
                printf("%-8u %12.1f %10.3f %10.3f %9.1f%% %10.2f %7.0f%%\n", batches[i], rr.decode_tps, rr.step_ms, rr.gpu_ms,
                       roof * 100, rr.ttft_ms, rr.graph_frac * 100);
                fflush(stdout);
                if (jf)
                        fprintf(jf, "%s{\"batch\": %u, \"prompt\": %u, \"gen\": %u, \"decode_tps\": %.2f, \"step_ms\": %.4f, \"gpu_ms\": %.4f, "
                                    "\"bytes_per_step\": %.0f, \"roofline\": %.4f, \"ttft_ms\": %.3f, \"graph_steps\": %.3f}",
                                i ? ", " : "", batches[i], P, G, rr.decode_tps, rr.step_ms, rr.gpu_ms, bytes, roof, rr.ttft_ms,
                                rr.graph_frac);
        }
        if (jf)
                fprintf(jf, "], \"prefill\": [");
        printf("\n%-8s %14s %10s %14s %10s\n", "prompt", "prefill tok/s", "TTFT ms", "warm tok/s", "warm TTFT");
        for (int i = 0; i < np; i++) {
                struct run_result rr, rw;
                const uint32_t budget = SL_MAX(prefill[i], 2048u);
                if (run(m, 1, prefill[i], 2, budget, false, &rr) < 0 || run(m, 1, prefill[i], 2, budget, true, &rw) < 0) {
                        printf("%-8u %14s\n", prefill[i], "failed");
                        continue;
                }
                printf("%-8u %14.0f %10.2f %14.0f %10.2f\n", prefill[i], rr.prefill_tps, rr.ttft_ms, rw.prefill_tps, rw.ttft_ms);
                if (jf)
                        fprintf(jf, "%s{\"prompt\": %u, \"prefill_tps\": %.1f, \"ttft_ms\": %.3f, \"warm_prefill_tps\": %.1f, "
                                    "\"warm_ttft_ms\": %.3f}", i ? ", " : "", prefill[i], rr.prefill_tps, rr.ttft_ms, rw.prefill_tps,
                                rw.ttft_ms);
        }
        if (jf) {
                fprintf(jf, "]}\n");
                fclose(jf);
        }
        engine_model_free(m);
        return 0;
}
