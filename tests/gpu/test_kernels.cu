/* test_kernels.cu — checks and times the CUDA kernels of engine/cuda (llm.c dev/cuda style):
 * every kernel, fast and plain versions, against a CPU double-precision reference on fresh
 * random data with poisoned outputs; then GEMV timing at the issue-4 shapes against the
 * measured read bandwidth. Built and run by tests/gpu/run. Exit 0 all checks pass, 1 any
 * failed, 77 no GPU.  Options: --json PATH, --check-only (no timing; for compute-sanitizer). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <algorithm>
#include <string>

#include <cuda_fp16.h>

#include "bandwidth.cuh"
#include "common.cuh"
#include "gemv.cuh"
#include "rmsnorm.cuh"

#define GEMV_TOL 1e-5 /* float accumulation of exact products: far under this */
#define RMSNORM_TOL 1e-5
#define GUARD 64 /* poisoned floats after each output, which must stay poisoned */

/* ---- random data (on the device, so gigabytes of weights take milliseconds) ---- */

static __device__ __host__ uint64_t mix64(uint64_t z)
{
        z += 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* uniform in [-1, 1), never exactly representable as zero in bulk */
static __device__ float uniform(uint64_t seed, size_t i)
{
        return (float)((int64_t)(mix64(seed ^ mix64(i)) >> 11) - (1ll << 52)) * (1.0f / (1ll << 52));
}

static __global__ void fill_f32(float *p, size_t n, uint64_t seed, float scale, float offset)
{
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x)
                p[i] = offset + scale * uniform(seed, i);
}

static __global__ void fill_w16(uint16_t *p, size_t n, uint64_t seed, int bf16)
{
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x) {
                const float v = uniform(seed, i);
                p[i] = bf16 ? (uint16_t)(__float_as_uint(v) >> 16) /* truncation is fine */
                            : __half_as_ushort(__float2half_rn(v));
        }
}

static uint64_t seed_next(void)
{
        static uint64_t s = 0x5eed;
        s = mix64(s);
        return s;
}

static void rand_f32(float *p, size_t n, float scale = 1.0f, float offset = 0.0f)
{
        fill_f32<<<1024, 256>>>(p, n, seed_next(), scale, offset);
        CUDA_CHECK_ABORT(cudaGetLastError());
}

static void rand_w16(void *p, size_t n, uint32_t wtype)
{
        fill_w16<<<1024, 256>>>((uint16_t *)p, n, seed_next(), wtype == CUDA_WTYPE_BF16);
        CUDA_CHECK_ABORT(cudaGetLastError());
}

static double w16_to_double(uint16_t v, uint32_t wtype)
{
        if (wtype == CUDA_WTYPE_BF16) {
                const uint32_t u = (uint32_t)v << 16;
                float f;
                memcpy(&f, &u, 4);
                return f;
        }
        return __half2float(__ushort_as_half(v));
}

static const char *wtype_name(uint32_t wtype)
{
        return wtype == CUDA_WTYPE_BF16 ? "bf16" : "f16";
}

/* ---- results ---- */

struct check {
        std::string name;
        double err, tol;
        size_t unwritten, guard_hit;
        bool pass;
};

struct bench {
        std::string model, wtype;
        int k, rows, ntok, nsets, reps;
        double us, gbs, frac, err;
};

static std::vector<check> checks;
static std::vector<bench> benches;

static float *dev_alloc_f32(size_t n)
{
        float *p;
        CUDA_CHECK_ABORT(cudaMalloc(&p, sizeof(float) * n));
        return p;
}

/* NaN everywhere, guard included: unwritten elements stay NaN and fail the check */
static void poison(float *p, size_t n)
{
        CUDA_CHECK_ABORT(cudaMemset(p, 0xff, sizeof(float) * (n + GUARD)));
}

static std::vector<float> to_host(const float *d, size_t n)
{
        std::vector<float> h(n);
        CUDA_CHECK_ABORT(cudaMemcpy(h.data(), d, sizeof(float) * n, cudaMemcpyDeviceToHost));
        return h;
}

/* out: n + GUARD floats read back from the device. ref: indices idx (or all when empty). */
static check compare(const std::string &name, const std::vector<float> &out,
                     const std::vector<double> &ref, const std::vector<size_t> &idx, size_t n,
                     double tol)
{
        check c{name, 0.0, tol, 0, 0, false};
        for (size_t i = 0; i < n; i++)
                if (isnan(out[i]))
                        c.unwritten++;
        for (size_t i = n; i < n + GUARD; i++) {
                uint32_t u;
                memcpy(&u, &out[i], 4);
                if (u != 0xffffffffu)
                        c.guard_hit++;
        }
        double num = 0.0, den = 0.0;
        for (size_t j = 0; j < ref.size(); j++) {
                const double o = out[idx.empty() ? j : idx[j]];
                num += (o - ref[j]) * (o - ref[j]);
                den += ref[j] * ref[j];
        }
        c.err = den > 0.0 ? sqrt(num / den) : INFINITY;
        c.pass = c.unwritten == 0 && c.guard_hit == 0 && c.err <= tol && !isnan(c.err);
        printf("check %-44s err %.3e (tol %.0e) unwritten %zu guard %zu  %s\n", name.c_str(),
               c.err, tol, c.unwritten, c.guard_hit, c.pass ? "ok" : "FAIL");
        checks.push_back(c);
        return c;
}

/* ---- RMSNorm ---- */

static void check_rmsnorm(int n, int ntok, bool unaligned)
{
        const float eps = 1e-5f;
        const size_t len = (size_t)n * ntok;
        float *xb = dev_alloc_f32(len + 1), *w = dev_alloc_f32(n), *y = dev_alloc_f32(len + GUARD);
        float *x = xb + (unaligned ? 1 : 0); /* exercises the scalar path */
        rand_f32(xb, len + 1, 2.0f);
        rand_f32(w, n, 0.5f, 1.0f);
        std::vector<float> hx = to_host(x, len), hw = to_host(w, n);
        std::vector<double> ref(len);
        for (int t = 0; t < ntok; t++) {
                double ss = 0.0;
                for (int i = 0; i < n; i++)
                        ss += (double)hx[(size_t)t * n + i] * hx[(size_t)t * n + i];
                const double scale = 1.0 / sqrt(ss / n + eps);
                for (int i = 0; i < n; i++)
                        ref[(size_t)t * n + i] = hx[(size_t)t * n + i] * scale * hw[i];
        }
        char name[96];
        for (int v = 0; v < 2; v++) {
                poison(y, len);
                CUDA_OK_OR_ABORT(v ? cuda_rmsnorm_ref(x, w, y, n, ntok, eps, 0)
                                   : cuda_rmsnorm(x, w, y, n, ntok, eps, 0));
                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                snprintf(name, sizeof(name), "rmsnorm%s n=%d t=%d%s", v ? "_ref" : "", n, ntok,
                         unaligned ? " unaligned" : "");
                compare(name, to_host(y, len + GUARD), ref, {}, len, RMSNORM_TOL);
        }
        CUDA_CHECK_ABORT(cudaFree(xb));
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(y));
}

/* ---- GEMV ---- */

/* CPU double reference for rows `rows_sel` (all tokens); returns values in [t][j] order and
 * the matching indices into y. */
static void gemv_cpu_ref(uint32_t wtype, const void *w, const float *x, int rows, int k,
                         int ntok, const std::vector<int> &rows_sel, std::vector<double> &ref,
                         std::vector<size_t> &idx)
{
        std::vector<float> hx = to_host(x, (size_t)ntok * k);
        std::vector<uint16_t> hw(k);
        std::vector<double> wd(k);
        ref.assign((size_t)ntok * rows_sel.size(), 0.0);
        idx.assign(ref.size(), 0);
        for (size_t j = 0; j < rows_sel.size(); j++) {
                const int r = rows_sel[j];
                CUDA_CHECK_ABORT(cudaMemcpy(hw.data(), (const uint16_t *)w + (size_t)r * k,
                                            2 * (size_t)k, cudaMemcpyDeviceToHost));
                for (int i = 0; i < k; i++)
                        wd[i] = w16_to_double(hw[i], wtype);
                for (int t = 0; t < ntok; t++) {
                        double s = 0.0;
                        for (int i = 0; i < k; i++)
                                s += wd[i] * hx[(size_t)t * k + i];
                        ref[(size_t)t * rows_sel.size() + j] = s;
                        idx[(size_t)t * rows_sel.size() + j] = (size_t)t * rows + r;
                }
        }
}

/* Fast and plain kernels against the CPU (all rows when rows ≤ full_rows, else a sample of
 * rows), and, for sampled shapes, the fast kernel against the plain one on every element. */
static double check_gemv(uint32_t wtype, int rows, int k, int ntok, const char *tag)
{
        const size_t wn = (size_t)rows * k, yn = (size_t)ntok * rows;
        void *w;
        CUDA_CHECK_ABORT(cudaMalloc(&w, 2 * wn));
        float *x = dev_alloc_f32((size_t)ntok * k), *y = dev_alloc_f32(yn + GUARD);
        float *y2 = dev_alloc_f32(yn + GUARD);
        rand_w16(w, wn, wtype);
        rand_f32(x, (size_t)ntok * k);

        std::vector<int> sel;
        const bool full = rows <= 4096;
        if (full) {
                for (int r = 0; r < rows; r++)
                        sel.push_back(r);
        } else {
                sel = {0, 1, rows / 2, rows - 2, rows - 1};
                for (int i = 0; i < 59; i++)
                        sel.push_back((int)(mix64(seed_next()) % (uint64_t)rows));
        }
        std::vector<double> ref;
        std::vector<size_t> idx;
        gemv_cpu_ref(wtype, w, x, rows, k, ntok, sel, ref, idx);

        char name[128];
        double err = 0.0;
        poison(y, yn);
        CUDA_OK_OR_ABORT(cuda_gemv(wtype, w, x, y, rows, k, ntok, 0));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        std::vector<float> hy = to_host(y, yn + GUARD);
        snprintf(name, sizeof(name), "gemv %s %s%d->%d t=%d%s", wtype_name(wtype), tag, k, rows,
                 ntok, full ? "" : " (64 rows vs cpu)");
        err = compare(name, hy, ref, full ? std::vector<size_t>{} : idx, yn,
                      GEMV_TOL).err;

        poison(y2, yn);
        CUDA_OK_OR_ABORT(cuda_gemv_ref(wtype, w, x, y2, rows, k, ntok, 0));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        std::vector<float> hy2 = to_host(y2, yn + GUARD);
        snprintf(name, sizeof(name), "gemv_ref %s %s%d->%d t=%d%s", wtype_name(wtype), tag, k,
                 rows, ntok, full ? "" : " (64 rows vs cpu)");
        compare(name, hy2, ref, full ? std::vector<size_t>{} : idx, yn, GEMV_TOL);
        if (!full) { /* every element: fast vs plain (both float) */
                std::vector<double> r2(hy2.begin(), hy2.begin() + yn);
                snprintf(name, sizeof(name), "gemv %s %s%d->%d t=%d vs ref all", wtype_name(wtype),
                         tag, k, rows, ntok);
                compare(name, hy, r2, {}, yn, GEMV_TOL);
        }
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(y));
        CUDA_CHECK_ABORT(cudaFree(y2));
        return err;
}

/* Median time of one call, over graph replays of one pass across nsets weight/activation
 * sets whose total exceeds the L2 several times, so every call reads its weights from HBM. */
static void bench_gemv(const char *model, uint32_t wtype, int k, int rows, int ntok,
                       size_t l2_bytes, double read_gbs, double err)
{
        const size_t wbytes = (size_t)rows * k * 2;
        int nsets = (int)std::min<size_t>(64, (4 * l2_bytes + wbytes - 1) / wbytes);
        nsets = std::max(nsets, wbytes > 4 * l2_bytes ? 1 : 2);
        std::vector<void *> w(nsets);
        std::vector<float *> x(nsets), y(nsets);
        for (int s = 0; s < nsets; s++) {
                CUDA_CHECK_ABORT(cudaMalloc(&w[s], wbytes));
                x[s] = dev_alloc_f32((size_t)ntok * k);
                y[s] = dev_alloc_f32((size_t)ntok * rows);
                rand_w16(w[s], (size_t)rows * k, wtype);
                rand_f32(x[s], (size_t)ntok * k);
        }
        cudaStream_t st;
        cudaGraph_t g;
        cudaGraphExec_t ge;
        cudaEvent_t e0, e1;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CUDA_CHECK_ABORT(cudaEventCreate(&e0));
        CUDA_CHECK_ABORT(cudaEventCreate(&e1));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int s = 0; s < nsets; s++)
                CUDA_OK_OR_ABORT(cuda_gemv(wtype, w[s], x[s], y[s], rows, k, ntok, st));
        CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
        CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
        for (int i = 0; i < 5; i++)
                CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
        const int reps = 51;
        std::vector<float> ms(reps);
        for (int i = 0; i < reps; i++) {
                CUDA_CHECK_ABORT(cudaEventRecord(e0, st));
                CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
                CUDA_CHECK_ABORT(cudaEventRecord(e1, st));
                CUDA_CHECK_ABORT(cudaEventSynchronize(e1));
                CUDA_CHECK_ABORT(cudaEventElapsedTime(&ms[i], e0, e1));
        }
        std::sort(ms.begin(), ms.end());
        const double sec = ms[reps / 2] * 1e-3 / nsets;
        const double bytes = (double)wbytes + 4.0 * ntok * ((double)k + rows);
        bench b{model, wtype_name(wtype), k, rows, ntok, nsets, reps, sec * 1e6,
                bytes / sec / 1e9, bytes / sec / 1e9 / read_gbs, err};
        printf("bench gemv %-5s %s %6d->%-6d t=%-2d sets %2d  %9.2f us  %7.1f GB/s  %5.1f%%\n",
               model, b.wtype.c_str(), k, rows, ntok, nsets, b.us, b.gbs, 100 * b.frac);
        benches.push_back(b);
        CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
        CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        CUDA_CHECK_ABORT(cudaEventDestroy(e0));
        CUDA_CHECK_ABORT(cudaEventDestroy(e1));
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        for (int s = 0; s < nsets; s++) {
                CUDA_CHECK_ABORT(cudaFree(w[s]));
                CUDA_CHECK_ABORT(cudaFree(x[s]));
                CUDA_CHECK_ABORT(cudaFree(y[s]));
        }
}

/* ---- main ---- */

struct shape {
        const char *model;
        int k, rows;
};

static const shape shapes[] = {
        {"1B", 2048, 2048}, {"1B", 2048, 8192}, {"1B", 8192, 2048}, {"1B", 2048, 128256},
        {"8B", 4096, 4096}, {"8B", 4096, 14336}, {"8B", 14336, 4096}, {"8B", 4096, 128256},
};

int main(int argc, char **argv)
{
        const char *json = NULL;
        bool check_only = false;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--json") && i + 1 < argc)
                        json = argv[++i];
                else if (!strcmp(argv[i], "--check-only"))
                        check_only = true;
                else {
                        fprintf(stderr, "usage: %s [--json PATH] [--check-only]\n", argv[0]);
                        return 2;
                }
        }
        int ndev = 0;
        if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
                printf("SKIP: no CUDA device\n");
                return 77;
        }
        cudaDeviceProp prop;
        CUDA_CHECK_ABORT(cudaGetDeviceProperties(&prop, 0));
        int drv = 0, rt = 0;
        CUDA_CHECK_ABORT(cudaDriverGetVersion(&drv));
        CUDA_CHECK_ABORT(cudaRuntimeGetVersion(&rt));
        printf("device %s, sm_%d%d, %d SMs, L2 %d MB, %.1f GB, driver %d runtime %d\n", prop.name,
               prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize >> 20,
               prop.totalGlobalMem / 1e9, drv, rt);

        /* correctness: odd shapes (partial row groups, k not a multiple of the block's step) */
        for (int n : {8, 1000, 2048, 4096, 8192})
                for (int t : {1, 7, 16})
                        check_rmsnorm(n, t, false);
        check_rmsnorm(4098, 3, true);
        check_rmsnorm(1001, 2, false);
        const int small[][2] = {{1, 8}, {37, 264}, {130, 1032}, {257, 4104}, {64, 2048}, {3, 9000}};
        for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16})
                for (auto &s : small)
                        for (int t = 1; t <= CUDA_GEMV_MAX_TOKENS; t++)
                                check_gemv(wt, s[0], s[1], t, "");
        /* the benchmark shapes themselves, at the batches timed */
        std::vector<double> shape_err;
        for (const shape &s : shapes)
                for (int t : {1, 8, 16}) {
                        double e = check_gemv(CUDA_WTYPE_BF16, s.rows, s.k, t, s.model);
                        double e2 = check_gemv(CUDA_WTYPE_F16, s.rows, s.k, t, s.model);
                        shape_err.push_back(e);
                        shape_err.push_back(e2);
                }

        struct cuda_bandwidth bw = {0, 0, 0, 0};
        if (!check_only) {
                size_t free_b = 0, total_b = 0;
                CUDA_CHECK_ABORT(cudaMemGetInfo(&free_b, &total_b));
                const size_t bytes = std::min<size_t>((size_t)2 << 30, free_b / 4);
                CUDA_OK_OR_ABORT(cuda_bandwidth_measure(bytes, 31, &bw));
                printf("bandwidth: read %.1f GB/s, copy (read+write) %.1f GB/s, %zu MB buffer\n",
                       bw.read_gbs, bw.copy_gbs, bw.bytes >> 20);
                size_t i = 0;
                for (const shape &s : shapes)
                        for (int t : {1, 8, 16}) {
                                bench_gemv(s.model, CUDA_WTYPE_BF16, s.k, s.rows, t,
                                           prop.l2CacheSize, bw.read_gbs, shape_err[i]);
                                bench_gemv(s.model, CUDA_WTYPE_F16, s.k, s.rows, t,
                                           prop.l2CacheSize, bw.read_gbs, shape_err[i + 1]);
                                i += 2;
                        }
        }

        size_t failed = 0;
        for (const check &c : checks)
                failed += !c.pass;

        if (json) {
                FILE *f = fopen(json, "w");
                if (!f) {
                        perror(json);
                        return 1;
                }
                fprintf(f, "{\n  \"device\": \"%s\", \"sm\": \"%d%d\", \"sms\": %d, \"l2_bytes\": %d,"
                           " \"driver\": %d, \"runtime\": %d,\n",
                        prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                        prop.l2CacheSize, drv, rt);
                fprintf(f, "  \"bandwidth\": {\"read_gbs\": %.2f, \"copy_gbs\": %.2f, \"bytes\": %zu,"
                           " \"reps\": %d},\n",
                        bw.read_gbs, bw.copy_gbs, bw.bytes, bw.reps);
                fprintf(f, "  \"checks_total\": %zu, \"checks_failed\": %zu,\n  \"checks\": [\n",
                        checks.size(), failed);
                for (size_t i = 0; i < checks.size(); i++) {
                        const check &c = checks[i];
                        fprintf(f, "    {\"name\": \"%s\", \"err\": %.3e, \"tol\": %.1e, \"unwritten\": %zu,"
                                   " \"guard_hit\": %zu, \"pass\": %s}%s\n",
                                c.name.c_str(), c.err, c.tol, c.unwritten, c.guard_hit,
                                c.pass ? "true" : "false", i + 1 < checks.size() ? "," : "");
                }
                fprintf(f, "  ],\n  \"gemv\": [\n");
                for (size_t i = 0; i < benches.size(); i++) {
                        const bench &b = benches[i];
                        fprintf(f, "    {\"model\": \"%s\", \"wtype\": \"%s\", \"k\": %d, \"rows\": %d,"
                                   " \"ntok\": %d, \"sets\": %d, \"reps\": %d, \"us\": %.3f,"
                                   " \"gbs\": %.2f, \"frac_bw\": %.4f, \"rel_err\": %.3e}%s\n",
                                b.model.c_str(), b.wtype.c_str(), b.k, b.rows, b.ntok, b.nsets,
                                b.reps, b.us, b.gbs, b.frac, b.err,
                                i + 1 < benches.size() ? "," : "");
                }
                fprintf(f, "  ]\n}\n");
                fclose(f);
        }

        /* the table, last */
        printf("\n%s (%d SMs, L2 %d MB): read %.0f GB/s, copy %.0f GB/s (the roofline uses read)\n",
               prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, bw.read_gbs,
               bw.copy_gbs);
        if (!benches.empty()) {
                printf("%-5s %-4s %13s %3s %10s %9s %7s %9s\n", "model", "type", "k->rows", "t",
                       "us/call", "GB/s", "%bw", "rel_err");
                for (const bench &b : benches) {
                        char kr[32];
                        snprintf(kr, sizeof(kr), "%d->%d", b.k, b.rows);
                        printf("%-5s %-4s %13s %3d %10.2f %9.1f %6.1f%% %9.2e\n", b.model.c_str(),
                               b.wtype.c_str(), kr, b.ntok, b.us, b.gbs, 100 * b.frac, b.err);
                }
        }
        for (const check &c : checks)
                if (!c.pass)
                        printf("FAILED %s: err %.3e tol %.0e unwritten %zu guard %zu\n",
                               c.name.c_str(), c.err, c.tol, c.unwritten, c.guard_hit);
        printf("checks: %zu, failed %zu (tolerance gemv %.0e, rmsnorm %.0e; ||out-ref||/||ref||"
               " vs CPU double)\n",
               checks.size(), failed, GEMV_TOL, RMSNORM_TOL);
        return failed ? 1 : 0;
}
