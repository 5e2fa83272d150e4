/* test_chain.cu — cuda_chain_gemv (chain.cuh), the one-token GEMV phases in one
 * persistent kernel.
 *   1. Bitwise against the kernels the engine otherwise runs one by one (cuda_gemv_beta,
 *      cuda_rmsnorm, cuda_glu): the FFN half of a decoder layer and the next layer's Q/K/V
 *      product (output projection + residual, norm + gate/up, SwiGLU or GeGLU + down +
 *      residual, norm + Q/K/V) on the Llama 3.2 1B and 3.1 8B shapes and a ragged one (rows
 *      not a multiple of any group, k not of the block's stride), F16 and BF16, several
 *      ring configurations (1 and 2 blocks per SM, stages of 32 and 64 KB; a configuration
 *      that does not fit the device's shared memory is skipped and said so), eager and
 *      replayed from a graph; every output element compared as bits, poisoned tails
 *      untouched; single phases of each prologue; the argument checks.
 *   2. Timing (figures only): that sequence over enough layers that the weights exceed L2
 *      four times, one graph, µs a layer, separate kernels against one chain a layer in
 *      each configuration, against the weights ÷ the measured read bandwidth; and one
 *      large matrix alone (the gate/up product), chain against cuda_gemv_beta.
 * Options: --json PATH, --check-only (no timing; for compute-sanitizer), --bench-only.
 * Exit 0 pass, 1 a failed check, 77 no GPU. Built and run by tests/gpu/run. */
#define HARNESS_SEED 0xc4a1ull
#include "bandwidth.cuh"
#include "chain.cuh"
#include "harness.cuh"
#include "layers.cuh"
#include "ops.cuh"
#include "rmsnorm.cuh"

static int failures, checks_run;
static FILE *json;
static bool json_first = true;

static void record(bool ok, const char *fmt_name, const char *detail)
{
        checks_run++;
        failures += !ok;
        if (!ok || getenv("CHAIN_VERBOSE"))
                printf("%s %s %s\n", ok ? "PASS" : "FAIL", fmt_name, detail);
        if (json) {
                fprintf(json, "%s    {\"check\": \"%s\", \"pass\": %s}", json_first ? "" : ",\n", fmt_name,
                        ok ? "true" : "false");
                json_first = false;
        }
}

/* Activation buffers, each with a poisoned GUARD tail. */
struct acts {
        float *att, *x, *gu, *act, *xn, *qkv;
};

static acts acts_alloc(const layer_shape &s)
{
        acts a;
        a.att = dev_alloc_f32((size_t)s.E + GUARD);
        a.x = dev_alloc_f32((size_t)s.E + GUARD);
        a.gu = dev_alloc_f32(2 * (size_t)s.F + GUARD);
        a.act = dev_alloc_f32((size_t)s.F + GUARD);
        a.xn = dev_alloc_f32((size_t)s.E + GUARD);
        a.qkv = dev_alloc_f32((size_t)s.QKV + GUARD);
        return a;
}

static void acts_free(acts &a)
{
        for (float *p : {a.att, a.x, a.gu, a.act, a.xn, a.qkv})
                CUDA_CHECK_ABORT(cudaFree(p));
}

/* The engine's layer tail as a chain: o + residual, norm + gate/up, GLU + down + residual,
 * norm + the next Q/K/V (here the same layer's weights stand in for the next layer's). */
static cuda_chain layer_chain(const layer_shape &s, const layer_w &L, const acts &a, int glu)
{
        cuda_chain ch;
        memset(&ch, 0, sizeof(ch));
        ch.n = 4;
        ch.ph[0] = {L.o, a.att, a.x, NULL, s.E, s.E, CUDA_GEMV_PRO_NONE, 1, 0.0f};
        ch.ph[1] = {L.gu, a.x, a.gu, L.n2, 2 * s.F, s.E, CUDA_GEMV_PRO_RMSNORM, 0, 1e-5f};
        ch.ph[2] = {L.down, a.gu, a.x, NULL, s.E, s.F, glu, 1, 0.0f};
        ch.ph[3] = {L.qkv, a.x, a.qkv, L.n1, s.QKV, s.E, CUDA_GEMV_PRO_RMSNORM, 0, 1e-5f};
        return ch;
}

/* The same with the engine's separate kernels. */
static int layer_separate(uint32_t wt, const layer_shape &s, const layer_w &L, const acts &a, int glu, cudaStream_t st)
{
        const int act = glu == CUDA_GEMV_PRO_GLU_GELU ? CUDA_ACT_GELU : CUDA_ACT_SILU;
        int r;
        if ((r = cuda_gemv_beta(wt, L.o, a.att, a.x, s.E, s.E, 1, 1.0f, st)) < 0 ||
            (r = cuda_rmsnorm(a.x, L.n2, a.xn, s.E, 1, 1e-5f, st)) < 0 ||
            (r = cuda_gemv_beta(wt, L.gu, a.xn, a.gu, 2 * s.F, s.E, 1, 0.0f, st)) < 0 ||
            (r = cuda_glu(act, a.gu, a.act, s.F, 1, st)) < 0 ||
            (r = cuda_gemv_beta(wt, L.down, a.act, a.x, s.E, s.F, 1, 1.0f, st)) < 0 ||
            (r = cuda_rmsnorm(a.x, L.n1, a.xn, s.E, 1, 1e-5f, st)) < 0 ||
            (r = cuda_gemv_beta(wt, L.qkv, a.xn, a.qkv, s.QKV, s.E, 1, 0.0f, st)) < 0)
                return r;
        return 0;
}

/* Fresh inputs: att and x random, gu/qkv poisoned (they are outputs), guards poisoned. */
static void acts_reset(const layer_shape &s, const acts &a, const float *att0, const float *x0)
{
        poison(a.att, s.E);
        poison(a.x, s.E);
        poison(a.gu, 2 * (size_t)s.F);
        poison(a.act, s.F);
        poison(a.xn, s.E);
        poison(a.qkv, s.QKV);
        CUDA_CHECK_ABORT(cudaMemcpy(a.att, att0, sizeof(float) * s.E, cudaMemcpyDeviceToDevice));
        CUDA_CHECK_ABORT(cudaMemcpy(a.x, x0, sizeof(float) * s.E, cudaMemcpyDeviceToDevice));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize()); /* the test's stream does not wait for the legacy one */
}

/* n values must be equal as bits, the GUARD floats after them still poisoned (0xff..). */
static bool same_bits(const float *a, const float *b, size_t n, size_t *diff, bool *guard_ok)
{
        std::vector<uint32_t> ha(n + GUARD), hb(n + GUARD);
        CUDA_CHECK_ABORT(cudaMemcpy(ha.data(), a, 4 * (n + GUARD), cudaMemcpyDeviceToHost));
        CUDA_CHECK_ABORT(cudaMemcpy(hb.data(), b, 4 * n, cudaMemcpyDeviceToHost));
        *diff = 0;
        for (size_t i = 0; i < n; i++)
                *diff += ha[i] != hb[i] || (ha[i] & 0x7f800000u) == 0x7f800000u; /* NaN: unwritten */
        *guard_ok = true;
        for (size_t i = n; i < n + GUARD; i++)
                *guard_ok = *guard_ok && ha[i] == 0xffffffffu;
        return *diff == 0 && *guard_ok;
}

static void check_layer(const layer_shape &s, uint32_t wt, int glu, void *sync, cudaStream_t st)
{
        layer_w L = layer_alloc(s, wt);
        acts ref = acts_alloc(s), got = acts_alloc(s);
        float *att0 = dev_alloc_f32(s.E), *x0 = dev_alloc_f32(s.E);
        rand_f32(att0, s.E, 1.0f);
        rand_f32(x0, s.E, 2.0f);
        acts_reset(s, ref, att0, x0);
        CUDA_OK_OR_ABORT(layer_separate(wt, s, L, ref, glu, st));
        CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
        const cuda_chain_opts variants[] = {{1, 65536}, {1, 32768}, {2, 32768}};
        for (const cuda_chain_opts &o : variants)
                for (int graph = 0; graph <= 1; graph++) {
                        acts_reset(s, got, att0, x0);
                        const cuda_chain ch = layer_chain(s, L, got, glu);
                        int r;
                        if (graph) {
                                cudaGraph_t g;
                                cudaGraphExec_t ge;
                                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                                r = cuda_chain_gemv(wt, &ch, sync, &o, st);
                                CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
                                if (r == 0) {
                                        CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                                        CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
                                        CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                                }
                                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
                        } else {
                                r = cuda_chain_gemv(wt, &ch, sync, &o, st);
                        }
                        CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                        char name[200], detail[200];
                        snprintf(name, sizeof(name), "chain %s %s %s bpm=%d stage=%d %s", s.name, wtype_name(wt),
                                 glu == CUDA_GEMV_PRO_GLU_GELU ? "geglu" : "swiglu", o.blocks_per_sm, o.stage_bytes,
                                 graph ? "graph" : "eager");
                        if (r == -EOPNOTSUPP) {
                                printf("skip %s: does not fit this device\n", name);
                                continue;
                        }
                        size_t dx, dgu, dq;
                        bool gx, ggu, gq;
                        const bool ok = r == 0 && same_bits(got.x, ref.x, s.E, &dx, &gx) &
                                                          same_bits(got.gu, ref.gu, 2 * (size_t)s.F, &dgu, &ggu) &
                                                          same_bits(got.qkv, ref.qkv, s.QKV, &dq, &gq);
                        snprintf(detail, sizeof(detail),
                                 "r=%d: differing bits x %zu/%d, gate/up %zu/%d, qkv %zu/%d; guards %s", r, dx, s.E,
                                 dgu, 2 * s.F, dq, s.QKV, gx && ggu && gq ? "intact" : "WRITTEN");
                        record(ok, name, detail);
                }
        layer_free(L);
        acts_free(ref);
        acts_free(got);
        CUDA_CHECK_ABORT(cudaFree(att0));
        CUDA_CHECK_ABORT(cudaFree(x0));
}

/* One phase of each kind alone, against cuda_gemv_fused (itself checked bitwise against the
 * separate kernels by test_kernels). */
static void check_single(uint32_t wt, void *sync, cudaStream_t st)
{
        const int rows = 777, k = 1032;
        void *w = dev_alloc(2 * (size_t)rows * k);
        rand_w16(w, (size_t)rows * k, wt);
        float *x = dev_alloc_f32(2 * (size_t)k), *nw = dev_alloc_f32(k);
        float *y0 = dev_alloc_f32(rows + GUARD), *y1 = dev_alloc_f32(rows + GUARD), *yi = dev_alloc_f32(rows);
        rand_f32(x, 2 * (size_t)k, 3.0f);
        rand_f32(nw, k, 0.5f, 1.0f);
        rand_f32(yi, rows, 1.0f);
        for (int kind = CUDA_GEMV_PRO_NONE; kind <= CUDA_GEMV_PRO_GLU_GELU; kind++)
                for (int acc = 0; acc <= 1; acc++) {
                        poison(y0, rows);
                        poison(y1, rows);
                        if (acc) {
                                CUDA_CHECK_ABORT(cudaMemcpy(y0, yi, 4 * rows, cudaMemcpyDeviceToDevice));
                                CUDA_CHECK_ABORT(cudaMemcpy(y1, yi, 4 * rows, cudaMemcpyDeviceToDevice));
                        }
                        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                        const cuda_gemv_prologue pro = {kind, nw, 1e-6f};
                        CUDA_OK_OR_ABORT(cuda_gemv_fused(wt, w, x, y0, rows, k, 1, (float)acc, &pro, st));
                        cuda_chain ch;
                        memset(&ch, 0, sizeof(ch));
                        ch.n = 1;
                        ch.ph[0] = {w, x, y1, nw, rows, k, kind, acc, 1e-6f};
                        const int r = cuda_chain_gemv(wt, &ch, sync, NULL, st);
                        CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                        size_t d;
                        bool g;
                        const bool ok = r == 0 && same_bits(y1, y0, rows, &d, &g);
                        char name[160], detail[120];
                        snprintf(name, sizeof(name), "chain single %s kind=%d accumulate=%d %d->%d", wtype_name(wt),
                                 kind, acc, k, rows);
                        snprintf(detail, sizeof(detail), "r=%d, %zu of %d outputs differ, guard %s", r, d, rows,
                                 g ? "intact" : "WRITTEN");
                        record(ok, name, detail);
                }
        for (void *p : {w, (void *)x, (void *)nw, (void *)y0, (void *)y1, (void *)yi})
                CUDA_CHECK_ABORT(cudaFree(p));
}

static void check_args(void *sync)
{
        float *b = dev_alloc_f32(4096);
        cuda_chain good;
        memset(&good, 0, sizeof(good));
        good.n = 1;
        good.ph[0] = {b, b + 1024, b + 2048, b + 3072, 64, 64, CUDA_GEMV_PRO_RMSNORM, 0, 1e-5f};
        struct bad {
                const char *name;
                cuda_chain ch;
                uint32_t wt;
                void *sync;
        };
        std::vector<bad> cases;
        auto add = [&](const char *name, void (*edit)(cuda_chain &), uint32_t wt = CUDA_WTYPE_BF16) {
                bad c{name, good, wt, sync};
                if (edit)
                        edit(c.ch);
                cases.push_back(c);
        };
        add("n 0", [](cuda_chain &c) { c.n = 0; });
        add("n too many", [](cuda_chain &c) { c.n = CUDA_CHAIN_MAX_PHASES + 1; });
        add("k not a multiple of 8", [](cuda_chain &c) { c.ph[0].k = 60; });
        add("rows 0", [](cuda_chain &c) { c.ph[0].rows = 0; });
        add("unaligned x", [](cuda_chain &c) { c.ph[0].x = (const float *)c.ph[0].x + 1; });
        add("NULL y", [](cuda_chain &c) { c.ph[0].y = NULL; });
        add("NULL norm", [](cuda_chain &c) { c.ph[0].norm_w = NULL; });
        add("negative eps", [](cuda_chain &c) { c.ph[0].eps = -1.0f; });
        add("NaN eps", [](cuda_chain &c) { c.ph[0].eps = nanf(""); });
        add("unknown kind", [](cuda_chain &c) { c.ph[0].kind = 9; });
        add("accumulate 2", [](cuda_chain &c) { c.ph[0].accumulate = 2; });
        add("quantized type", NULL, 2);
        for (const bad &c : cases) {
                const int r = cuda_chain_gemv(c.wt, &c.ch, c.sync, NULL, 0);
                char name[120], detail[60];
                snprintf(name, sizeof(name), "chain args %s", c.name);
                snprintf(detail, sizeof(detail), "returned %d, want -EINVAL", r);
                record(r == -EINVAL, name, detail);
        }
        const int r = cuda_chain_gemv(CUDA_WTYPE_BF16, &good, NULL, NULL, 0);
        record(r == -EINVAL, "chain args NULL sync", "");
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        CUDA_CHECK_ABORT(cudaFree(b));
}

/* ---- timing ---- */

static void bench(const layer_shape &s, size_t l2, double read_gbs, void *sync, cudaStream_t st)
{
        const uint32_t wt = CUDA_WTYPE_BF16;
        const size_t lbytes = layer_bytes(s);
        const int n_layer = (int)std::max<size_t>(2, (4 * l2 + lbytes - 1) / lbytes);
        std::vector<layer_w> W;
        for (int i = 0; i < n_layer; i++)
                W.push_back(layer_alloc(s, wt));
        acts a = acts_alloc(s);
        rand_f32(a.att, s.E, 1.0f);
        rand_f32(a.x, s.E, 1.0f);
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        const double ideal_us = lbytes / (read_gbs * 1e3);
        const cuda_chain_opts variants[] = {{0, 0}, {1, 32768}, {2, 32768}};
        /* v = 3: the default chain with every prologue NONE (wrong values, the same bytes:
         * what the prologues cost); v = 4: its four phases as four chains of one (a kernel
         * boundary instead of a grid barrier) */
        for (int v = -1; v < 5; v++) {
                cudaGraph_t g;
                cudaGraphExec_t ge;
                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                int r = 0;
                for (const layer_w &L : W) {
                        if (v < 0) {
                                r = layer_separate(wt, s, L, a, CUDA_GEMV_PRO_GLU_SILU, st);
                        } else if (v < 3) {
                                const cuda_chain ch = layer_chain(s, L, a, CUDA_GEMV_PRO_GLU_SILU);
                                r = cuda_chain_gemv(wt, &ch, sync, &variants[v], st);
                        } else {
                                cuda_chain ch = layer_chain(s, L, a, CUDA_GEMV_PRO_GLU_SILU);
                                if (v == 3) {
                                        for (int p = 0; p < ch.n; p++)
                                                ch.ph[p].kind = CUDA_GEMV_PRO_NONE;
                                        r = cuda_chain_gemv(wt, &ch, sync, NULL, st);
                                } else {
                                        for (int p = 0; p < ch.n && r == 0; p++) {
                                                cuda_chain one;
                                                memset(&one, 0, sizeof(one));
                                                one.n = 1;
                                                one.ph[0] = ch.ph[p];
                                                r = cuda_chain_gemv(wt, &one, sync, NULL, st);
                                        }
                                }
                        }
                        if (r < 0)
                                break;
                }
                CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
                if (r < 0) {
                        printf("bench chain %s: variant %d does not run here (%d)\n", s.name, v, r);
                        CUDA_CHECK_ABORT(cudaGraphDestroy(g));
                        continue;
                }
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                /* the values grow with every replay (residual adds); they do not change the time */
                const double us = graph_median_ms(ge, st, 3, 21) * 1e3 / n_layer;
                char what[64];
                if (v < 0)
                        snprintf(what, sizeof(what), "separate kernels (7 a layer)");
                else if (v == 3)
                        snprintf(what, sizeof(what), "chain, prologues NONE");
                else if (v == 4)
                        snprintf(what, sizeof(what), "4 chains of one phase");
                else
                        snprintf(what, sizeof(what), "chain bpm %d stage %5d", variants[v].blocks_per_sm,
                                 variants[v].stage_bytes);
                printf("bench chain %-3s %-30s %7.2f us a layer (%d layers, %.1f MB each), %5.1f%% of the read "
                       "roofline (%.2f us)\n",
                       s.name, what, us, n_layer, lbytes / 1e6, 100.0 * ideal_us / us, ideal_us);
                if (json)
                        fprintf(json,
                                ",\n    {\"bench\": \"%s\", \"shape\": \"%s\", \"us_per_layer\": %.3f, "
                                "\"roofline\": %.4f}",
                                what, s.name, us, ideal_us / us);
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        }
        /* where a chain's time goes: each block's timestamps (cuda_chain_opts.trace) over
         * one layer's chain, run after the others so its weights are not in L2 */
        {
                const int nb = std::min(CUDA_CHAIN_TRACE_BLOCKS_MAX, 4 * 1024);
                unsigned long long *tr;
                CUDA_CHECK_ABORT(cudaMalloc(&tr, sizeof(*tr) * (size_t)nb * 4 * 4));
                CUDA_CHECK_ABORT(cudaMemset(tr, 0, sizeof(*tr) * (size_t)nb * 4 * 4));
                cuda_chain_opts o = {0, 0, tr};
                for (int rep = 0; rep < 2; rep++)
                        for (int i = 0; i < n_layer; i++) {
                                const cuda_chain ch = layer_chain(s, W[i], a, CUDA_GEMV_PRO_GLU_SILU);
                                CUDA_OK_OR_ABORT(cuda_chain_gemv(wt, &ch, sync, i == n_layer - 1 ? &o : NULL, st));
                        }
                CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                std::vector<unsigned long long> h((size_t)nb * 16);
                CUDA_CHECK_ABORT(cudaMemcpy(h.data(), tr, sizeof(h[0]) * h.size(), cudaMemcpyDeviceToHost));
                int blocks = 0;
                while (blocks < nb && h[(size_t)blocks * 16 + 3] != 0)
                        blocks++;
                const char *names[4] = {"o+res", "norm+gate/up", "glu+down+res", "norm+qkv"};
                unsigned long long t_first = ~0ull, t_last = 0;
                for (int b = 0; b < blocks; b++) {
                        t_first = std::min(t_first, h[(size_t)b * 16 + 1]);
                        t_last = std::max(t_last, h[(size_t)b * 16 + 15]);
                }
                printf("trace chain %-3s %d blocks, %.2f us from the first block's start to the last block's end\n",
                       s.name, blocks, (t_last - t_first) / 1e3);
                for (int p = 0; p < 4; p++) {
                        double sum[3] = {0, 0, 0}, mx[3] = {0, 0, 0};
                        unsigned long long end_max = 0, start_min = ~0ull;
                        for (int b = 0; b < blocks; b++) {
                                const unsigned long long *t = &h[(size_t)b * 16 + p * 4];
                                const double d[3] = {(t[1] - t[0]) / 1e3, (t[2] - t[1]) / 1e3, (t[3] - t[2]) / 1e3};
                                for (int i = 0; i < 3; i++) {
                                        sum[i] += d[i];
                                        mx[i] = std::max(mx[i], d[i]);
                                }
                                end_max = std::max(end_max, t[3]);
                                start_min = std::min(start_min, t[1]);
                        }
                        printf("trace chain %-3s phase %d %-13s barrier %5.2f/%5.2f us, prologue %5.2f/%5.2f us, "
                               "groups %6.2f/%6.2f us (mean/max over blocks); phase span %6.2f us\n",
                               s.name, p, names[p], sum[0] / blocks, mx[0], sum[1] / blocks, mx[1], sum[2] / blocks,
                               mx[2], (end_max - start_min) / 1e3);
                }
                CUDA_CHECK_ABORT(cudaFree(tr));
        }
        /* one matrix alone (gate/up of every layer, one product each): the steady state */
        for (int v = -1; v < 1; v++) {
                cudaGraph_t g;
                cudaGraphExec_t ge;
                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                for (const layer_w &L : W) {
                        if (v < 0) {
                                CUDA_OK_OR_ABORT(cuda_gemv_beta(wt, L.gu, a.x, a.gu, 2 * s.F, s.E, 1, 0.0f, st));
                        } else {
                                cuda_chain ch;
                                memset(&ch, 0, sizeof(ch));
                                ch.n = 1;
                                ch.ph[0] = {L.gu, a.x, a.gu, NULL, 2 * s.F, s.E, CUDA_GEMV_PRO_NONE, 0, 0.0f};
                                CUDA_OK_OR_ABORT(cuda_chain_gemv(wt, &ch, sync, NULL, st));
                        }
                }
                CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                const double us = graph_median_ms(ge, st, 3, 21) * 1e3 / n_layer;
                const double gb = 2.0 * 2 * s.F * s.E;
                printf("bench chain %-3s gate/up alone, %-15s %7.2f us (%.1f MB), %5.1f%% of the read bandwidth\n",
                       s.name, v < 0 ? "gemv" : "chain", us, gb / 1e6, 100.0 * gb / (read_gbs * 1e3) / us);
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        }
        for (layer_w &L : W)
                layer_free(L);
        acts_free(a);
}

int main(int argc, char **argv)
{
        bool check_only = false, bench_only = false;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--check-only")) {
                        check_only = true;
                } else if (!strcmp(argv[i], "--bench-only")) {
                        bench_only = true;
                } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
                        json = fopen(argv[++i], "w");
                } else {
                        fprintf(stderr, "usage: %s [--json PATH] [--check-only | --bench-only]\n", argv[0]);
                        return 2;
                }
        }
        cudaDeviceProp prop;
        int drv, rt;
        if (!device_open(&prop, &drv, &rt))
                return 77;
        if (json)
                fprintf(json, "{\n  \"device\": \"%s\",\n  \"results\": [\n", prop.name);
        void *sync = dev_alloc(CUDA_CHAIN_SYNC_BYTES);
        CUDA_CHECK_ABORT(cudaMemset(sync, 0, CUDA_CHAIN_SYNC_BYTES));
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        const layer_shape shapes[] = {{"1B", 2048, 3072, 8192}, {"8B", 4096, 6144, 14336}, {"ragged", 1000, 1500, 2600}};
        if (!bench_only) {
                check_args(sync);
                for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16})
                        check_single(wt, sync, st);
                for (const layer_shape &s : shapes)
                        for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16})
                                check_layer(s, wt, CUDA_GEMV_PRO_GLU_SILU, sync, st);
                check_layer(shapes[2], CUDA_WTYPE_BF16, CUDA_GEMV_PRO_GLU_GELU, sync, st);
                printf("chain checks: %d of %d passed\n", checks_run - failures, checks_run);
        }
        if (!check_only) {
                struct cuda_bandwidth bw;
                CUDA_OK_OR_ABORT(cuda_bandwidth_measure((size_t)1 << 30, 10, &bw));
                printf("read bandwidth %.0f GB/s\n", bw.read_gbs);
                for (int i = 0; i < 2; i++)
                        bench(shapes[i], (size_t)prop.l2CacheSize, bw.read_gbs, sync, st);
        }
        if (json) {
                fprintf(json, "\n  ]\n}\n");
                fclose(json);
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        CUDA_CHECK_ABORT(cudaFree(sync));
        printf("%s: %d failed\n", failures ? "FAIL" : "PASS", failures);
        return failures ? 1 : 0;
}
