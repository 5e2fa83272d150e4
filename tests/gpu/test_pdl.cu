/* test_pdl.cu — programmatic dependent launch (common.cuh's pdl rules) on this GPU.
 *   1. Safety, eager and inside a captured graph: a kernel launched with pdl that waits
 *      sees what the kernel before it wrote, and its wait returns only after that kernel
 *      ended. Whether it is live (its block started before the first kernel ended) is
 *      printed, not required: a driver may serialize.
 *   2. What it buys: a decoder layer's kernel sequence from the engine's own kernels —
 *      RMSNorm, QKV GEMV, O GEMV + residual, RMSNorm, gate/up GEMV, SwiGLU, down GEMV +
 *      residual (attention left out; the O GEMV reads the norm's output) — over enough
 *      layers that the weights exceed L2 four times, as one graph, with and without pdl,
 *      the norms and SwiGLU as kernels or as the GEMVs' prologues (cuda_gemv_fused),
 *      at the Llama 3.2 1B and 3.1 8B shapes, 1 and 8 tokens; and the same
 *      without the small kernels (the four GEMVs alone), so the difference is what the
 *      small kernels and the gaps between kernels cost. Figures only, never a failure.
 * Exit 0 pass, 1 a failed check, 77 no GPU. Built and run by tests/gpu/run. */
#define HARNESS_SEED 0x9d1ull
#include "bandwidth.cuh"
#include "harness.cuh"
#include "layers.cuh"
#include "ops.cuh"
#include "rmsnorm.cuh"

static int failures;

static __device__ __forceinline__ unsigned long long globaltimer(void)
{
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        return t;
}

/* One block: t[0] start, spin us microseconds, publish the flag, t[1] end. */
static __global__ void spin_kernel(unsigned long long *t, int us, int *flag)
{
        pdl_trigger();
        const unsigned long long t0 = globaltimer();
        while (globaltimer() - t0 < (unsigned long long)us * 1000ull) {
        }
        flag[0] = 12345;
        __threadfence();
        t[0] = t0;
        t[1] = globaltimer();
}

/* t[2] its start, t[3] after the wait; seen: the flag as read after the wait. */
static __global__ void dep_kernel(unsigned long long *t, const int *flag, int *seen)
{
        pdl_trigger();
        t[2] = globaltimer();
        pdl_wait();
        t[3] = globaltimer();
        seen[0] = *(volatile const int *)flag;
}

static void check_live(bool graph)
{
        unsigned long long *t;
        int *flag;
        CUDA_CHECK_ABORT(cudaMalloc(&t, 4 * sizeof(*t)));
        CUDA_CHECK_ABORT(cudaMalloc(&flag, 2 * sizeof(int)));
        CUDA_CHECK_ABORT(cudaMemset(t, 0, 4 * sizeof(*t)));
        CUDA_CHECK_ABORT(cudaMemset(flag, 0, 2 * sizeof(int)));
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        cudaGraph_t g = NULL;
        cudaGraphExec_t ge = NULL;
        if (graph)
                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        CUDA_CHECK_ABORT(cuda_launch(false, spin_kernel, 1, 32, 0, st, t, 50, flag));
        CUDA_CHECK_ABORT(cuda_launch(true, dep_kernel, 1, 1, 0, st, t, flag, flag + 1));
        if (graph) {
                CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
        }
        CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
        unsigned long long h[4];
        int seen = 0;
        CUDA_CHECK_ABORT(cudaMemcpy(h, t, sizeof(h), cudaMemcpyDeviceToHost));
        CUDA_CHECK_ABORT(cudaMemcpy(&seen, flag + 1, sizeof(int), cudaMemcpyDeviceToHost));
        const bool ok = seen == 12345 && h[3] >= h[1];
        printf("%s pdl %s: the dependent saw the flag %s, its wait returned %+.1f us after the first kernel "
               "ended; it started %+.1f us after the first kernel began (live: %s)\n",
               ok ? "PASS" : "FAIL", graph ? "graph" : "eager", seen == 12345 ? "set" : "NOT set",
               ((double)h[3] - (double)h[1]) / 1e3, ((double)h[2] - (double)h[0]) / 1e3,
               h[2] < h[1] ? "yes" : "no");
        failures += !ok;
        if (graph) {
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        CUDA_CHECK_ABORT(cudaFree(t));
        CUDA_CHECK_ABORT(cudaFree(flag));
}

enum { SMALL_NONE, SMALL_SEPARATE, SMALL_FUSED };
static const char *small_name[] = {"gemv only", "gemv+norm+glu", "fused prologues"};

/* Enqueues n_layer layers: the four GEMVs alone, with the norms and SwiGLU as kernels of
 * their own, or with them as the GEMVs' prologues (cuda_gemv_fused). */
static int enqueue_layers(const layer_shape &s, const std::vector<layer_w> &W, int T, int mode, bool pdl,
                          float *x, float *xn, float *qkv, float *gu, float *act, cudaStream_t st)
{
        const uint32_t wt = CUDA_WTYPE_BF16;
        const bool small = mode == SMALL_SEPARATE;
        int r;
        for (const layer_w &L : W) {
                if (mode == SMALL_FUSED) {
                        const struct cuda_gemv_prologue n1 = {CUDA_GEMV_PRO_RMSNORM, L.n1, 1e-5f},
                                                        n2 = {CUDA_GEMV_PRO_RMSNORM, L.n2, 1e-5f},
                                                        glu = {CUDA_GEMV_PRO_GLU_SILU, NULL, 0.0f};
                        if ((r = cuda_gemv_fused(wt, L.qkv, x, qkv, s.QKV, s.E, T, 0.0f, &n1, st, pdl)) < 0 ||
                            (r = cuda_gemv_beta(wt, L.o, xn, x, s.E, s.E, T, 1.0f, st, pdl)) < 0 ||
                            (r = cuda_gemv_fused(wt, L.gu, x, gu, 2 * s.F, s.E, T, 0.0f, &n2, st, pdl)) < 0 ||
                            (r = cuda_gemv_fused(wt, L.down, gu, x, s.E, s.F, T, 1.0f, &glu, st, pdl)) < 0)
                                return r;
                        continue;
                }
                if (small && (r = cuda_rmsnorm(x, L.n1, xn, s.E, T, 1e-5f, st, pdl)) < 0)
                        return r;
                if ((r = cuda_gemv_beta(wt, L.qkv, xn, qkv, s.QKV, s.E, T, 0.0f, st, pdl)) < 0 ||
                    (r = cuda_gemv_beta(wt, L.o, xn, x, s.E, s.E, T, 1.0f, st, pdl)) < 0)
                        return r;
                if (small && (r = cuda_rmsnorm(x, L.n2, xn, s.E, T, 1e-5f, st, pdl)) < 0)
                        return r;
                if ((r = cuda_gemv_beta(wt, L.gu, xn, gu, 2 * s.F, s.E, T, 0.0f, st, pdl)) < 0)
                        return r;
                if (small && (r = cuda_glu(CUDA_ACT_SILU, gu, act, s.F, T, st, pdl)) < 0)
                        return r;
                if ((r = cuda_gemv_beta(wt, L.down, act, x, s.E, s.F, T, 1.0f, st, pdl)) < 0)
                        return r;
        }
        return 0;
}

static void bench_layers(const layer_shape &s, size_t l2, double read_gbs)
{
        const size_t lbytes = layer_bytes(s);
        const int n_layer = (int)std::max<size_t>(2, (4 * l2 + lbytes - 1) / lbytes);
        std::vector<layer_w> W;
        for (int i = 0; i < n_layer; i++)
                W.push_back(layer_alloc(s, CUDA_WTYPE_BF16));
        const int TM = 8;
        float *x = dev_alloc_f32((size_t)TM * s.E), *xn = dev_alloc_f32((size_t)TM * s.E);
        float *qkv = dev_alloc_f32((size_t)TM * s.QKV), *gu = dev_alloc_f32((size_t)TM * 2 * s.F);
        float *act = dev_alloc_f32((size_t)TM * s.F);
        rand_f32(x, (size_t)TM * s.E, 1.0f);
        rand_f32(act, (size_t)TM * s.F, 1.0f);
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        const double ideal_us = lbytes / (read_gbs * 1e3);
        for (int T : {1, 8})
                for (int mode : {SMALL_SEPARATE, SMALL_FUSED, SMALL_NONE})
                        for (int pdl = 0; pdl <= 1; pdl++) {
                                cudaGraph_t g;
                                cudaGraphExec_t ge;
                                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                                CUDA_OK_OR_ABORT(enqueue_layers(s, W, T, mode, pdl, x, xn, qkv, gu, act, st));
                                CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
                                CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                                /* x grows with every replay (residual adds); reset it each time
                                 * would add a node: the values do not change the time */
                                const double us = graph_median_ms(ge, st, 3, 21) * 1e3 / n_layer;
                                printf("bench layer %-3s t=%d %-18s pdl %d: %7.2f us a layer (%d layers, %.1f MB "
                                       "each), %5.1f%% of the read roofline (%.2f us)\n",
                                       s.name, T, small_name[mode], pdl, us, n_layer,
                                       lbytes / 1e6, 100.0 * ideal_us / us, ideal_us);
                                CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
                        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        for (layer_w &L : W)
                layer_free(L);
        for (float *p : {x, xn, qkv, gu, act})
                CUDA_CHECK_ABORT(cudaFree(p));
}

int main(int argc, char **argv)
{
        const bool check_only = argc > 1 && !strcmp(argv[1], "--check-only");
        cudaDeviceProp prop;
        int drv, rt;
        if (!device_open(&prop, &drv, &rt))
                return 77;
        check_live(false);
        check_live(true);
        if (!check_only) {
                struct cuda_bandwidth bw;
                CUDA_OK_OR_ABORT(cuda_bandwidth_measure((size_t)1 << 30, 10, &bw));
                printf("read bandwidth %.0f GB/s\n", bw.read_gbs);
                const layer_shape shapes[] = {{"1B", 2048, 3072, 8192}, {"8B", 4096, 6144, 14336}};
                for (const layer_shape &s : shapes)
                        bench_layers(s, (size_t)prop.l2CacheSize, bw.read_gbs);
        }
        printf("%s: %d failed\n", failures ? "FAIL" : "PASS", failures);
        return failures ? 1 : 0;
}
