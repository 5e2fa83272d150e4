/* test_kernels.cu — checks and times the CUDA kernels of engine/cuda (llm.c dev/cuda style):
 * every kernel, fast and plain versions, against a CPU double-precision reference on fresh
 * random data with poisoned outputs; then GEMV timing at the issue-4 shapes against the
 * measured read bandwidth; then cuda_gemv_fused (RMSNorm / GLU prologues) against the
 * separate kernels followed by cuda_gemv_beta, bitwise, and timed against them. Built and
 * run by tests/gpu/run. Exit 0 all checks pass, 1 any failed, 77 no GPU.
 * Options: --json PATH, --check-only (no timing; for compute-sanitizer), --fused-only (only
 * the fused GEMV's checks and timings), --no-check (timings only). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include <algorithm>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bandwidth.cuh"
#include "common.cuh"
#include "gemv.cuh"
#include "ops.cuh"
#include "rmsnorm.cuh"

#define HARNESS_SEED 0x5eedull
#define GUARD 64 /* poisoned floats after each output, which must stay poisoned */
#include "harness.cuh"

#define GEMV_TOL 1e-5 /* float accumulation of exact products: far under this */
#define RMSNORM_TOL 1e-5

/* ---- results ---- */


struct bench {
        std::string model, wtype;
        int k, rows, ntok, nsets, reps;
        double us, gbs, frac, err;
};

/* cuda_gemv_fused against its two-kernel equivalent, same data, both as CUDA graphs */
struct fbench {
        std::string model, what, wtype;
        int k, rows, ntok, nsets;
        double us_fused, us_sep, us_gemv, gbs_fused, gbs_sep;
};

static std::vector<check> checks;
static std::vector<bench> benches;
static std::vector<fbench> fbenches;

/* out: n + GUARD floats read back from the device. ref: indices idx (or all when empty). */
static check compare(const std::string &name, const std::vector<float> &out,
                     const std::vector<double> &ref, const std::vector<size_t> &idx, size_t n,
                     double tol)
{
        check c{name, 0.0, tol, 0, 0, false};
        count_unwritten(out, n, &c.unwritten, &c.guard_hit);
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
                        /* the kernel rounds activations to the weight's type first */
                        for (int i = 0; i < k; i++) {
                                const float v = hx[(size_t)t * k + i];
                                const float xr = wtype == CUDA_WTYPE_BF16 ? __bfloat162float(__float2bfloat16_rn(v))
                                                                          : __half2float(__float2half_rn(v));
                                s += wd[i] * xr;
                        }
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
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int s = 0; s < nsets; s++)
                CUDA_OK_OR_ABORT(cuda_gemv(wtype, w[s], x[s], y[s], rows, k, ntok, st));
        CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
        CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
        const int reps = 51;
        const double median_ms = graph_median_ms(ge, st, 5, reps);
        const double sec = median_ms * 1e-3 / nsets;
        const double bytes = (double)wbytes + 4.0 * ntok * ((double)k + rows);
        bench b{model, wtype_name(wtype), k, rows, ntok, nsets, reps, sec * 1e6,
                bytes / sec / 1e9, bytes / sec / 1e9 / read_gbs, err};
        printf("bench gemv %-5s %s %6d->%-6d t=%-2d sets %2d  %9.2f us  %7.1f GB/s  %5.1f%%\n",
               model, b.wtype.c_str(), k, rows, ntok, nsets, b.us, b.gbs, 100 * b.frac);
        benches.push_back(b);
        CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
        CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        for (int s = 0; s < nsets; s++) {
                CUDA_CHECK_ABORT(cudaFree(w[s]));
                CUDA_CHECK_ABORT(cudaFree(x[s]));
                CUDA_CHECK_ABORT(cudaFree(y[s]));
        }
}

/* ---- fused GEMV: prologue + product in one kernel ---- */

static const char *pro_name(int kind)
{
        switch (kind) {
        case CUDA_GEMV_PRO_RMSNORM:
                return "rmsnorm";
        case CUDA_GEMV_PRO_GLU_SILU:
                return "glu_silu";
        case CUDA_GEMV_PRO_GLU_GELU:
                return "glu_gelu";
        default:
                return "none";
        }
}

#define FUSED_EPS 1e-5f

/* What the engine runs unfused: the prologue's own kernel into f, then cuda_gemv_beta. */
static int separate_gemv(uint32_t wtype, const void *w, const float *x, float *f,
                         const float *norm_w, float *y, int rows, int k, int ntok, float beta,
                         int kind, cudaStream_t st)
{
        int r = 0;
        const float *in = x;
        if (kind == CUDA_GEMV_PRO_RMSNORM)
                r = cuda_rmsnorm(x, norm_w, f, k, ntok, FUSED_EPS, st);
        else if (kind == CUDA_GEMV_PRO_GLU_SILU || kind == CUDA_GEMV_PRO_GLU_GELU)
                r = cuda_glu(kind == CUDA_GEMV_PRO_GLU_GELU ? CUDA_ACT_GELU : CUDA_ACT_SILU, x, f,
                             k, ntok, st);
        if (r < 0)
                return r;
        if (kind != CUDA_GEMV_PRO_NONE)
                in = f;
        return cuda_gemv_beta(wtype, w, in, y, rows, k, ntok, beta, st);
}

static __global__ void copy_f32(float *dst, const float *src, size_t n)
{
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x)
                dst[i] = src[i];
}

/* Every prologue, tokens in toks, beta 0 and 1 on one weight matrix: cuda_gemv_fused must be
 * bitwise the separate kernels' result (every element, poisoned guard intact). For the small
 * shape also against the CPU (double dot of the separate prologue's output) as a sanity check
 * of beta = 1 itself. One summary line per (type, shape, prologue). */
static void check_fused_shape(uint32_t wtype, int rows, int k, const std::vector<int> &toks)
{
        const int T = CUDA_GEMV_MAX_TOKENS;
        const size_t wn = (size_t)rows * k, yn_max = (size_t)T * rows;
        void *w;
        CUDA_CHECK_ABORT(cudaMalloc(&w, 2 * wn));
        float *x = dev_alloc_f32((size_t)T * 2 * k), *nw = dev_alloc_f32(k);
        float *f = dev_alloc_f32((size_t)T * k), *y0 = dev_alloc_f32(yn_max);
        float *ys = dev_alloc_f32(yn_max + GUARD), *yf = dev_alloc_f32(yn_max + GUARD);
        rand_w16(w, wn, wtype);
        /* gate and up in [-12, 12): GELU's saturated ends (|g| ≥ 10) are hit too */
        rand_f32(x, (size_t)T * 2 * k, 12.0f);
        rand_f32(nw, k, 0.5f, 1.0f);
        rand_f32(y0, yn_max, 4.0f);
        const bool cpu = (size_t)rows * k <= 65536;
        for (int kind = CUDA_GEMV_PRO_NONE; kind <= CUDA_GEMV_PRO_GLU_GELU; kind++) {
                const struct cuda_gemv_prologue pro = {kind, nw, FUSED_EPS};
                size_t runs = 0, exact = 0, clean = 0, diff_total = 0;
                double max_rel = 0.0;
                for (int t : toks)
                        for (float beta : {0.0f, 1.0f}) {
                                const size_t yn = (size_t)t * rows;
                                poison(ys, yn);
                                poison(yf, yn);
                                if (beta != 0.0f) {
                                        copy_f32<<<256, 256>>>(ys, y0, yn);
                                        copy_f32<<<256, 256>>>(yf, y0, yn);
                                        CUDA_CHECK_ABORT(cudaGetLastError());
                                }
                                CUDA_OK_OR_ABORT(separate_gemv(wtype, w, x, f, nw, ys, rows, k, t,
                                                               beta, kind, 0));
                                /* each run under another launch mode (gemv.cuh's pdl): the
                                 * result must not depend on it */
                                CUDA_OK_OR_ABORT(cuda_gemv_fused(wtype, w, x, yf, rows, k, t, beta,
                                                                 &pro, 0, runs % 2 == 1));
                                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                                std::vector<float> hs = to_host(ys, yn + GUARD),
                                                   hf = to_host(yf, yn + GUARD);
                                check c{"", 0.0, 0.0, 0, 0, false};
                                size_t ndiff = 0;
                                for (size_t i = 0; i < yn; i++) {
                                        uint32_t a, b;
                                        memcpy(&a, &hs[i], 4);
                                        memcpy(&b, &hf[i], 4);
                                        if (a != b) {
                                                ndiff++;
                                                const double d = fabs((double)hs[i] - hf[i]) /
                                                                 std::max(1e-30, fabs((double)hs[i]));
                                                max_rel = std::max(max_rel, d);
                                        }
                                        if (isnan(hf[i]))
                                                c.unwritten++;
                                }
                                for (size_t i = yn; i < yn + GUARD; i++) {
                                        uint32_t u;
                                        memcpy(&u, &hf[i], 4);
                                        c.guard_hit += u != 0xffffffffu;
                                }
                                char name[128];
                                snprintf(name, sizeof(name), "gemv_fused %s %s %d->%d t=%d beta=%g bitwise",
                                         wtype_name(wtype), pro_name(kind), k, rows, t, beta);
                                c.name = name;
                                c.err = (double)ndiff;
                                c.pass = ndiff == 0 && c.unwritten == 0 && c.guard_hit == 0;
                                checks.push_back(c);
                                runs++;
                                exact += ndiff == 0;
                                clean += c.unwritten == 0 && c.guard_hit == 0;
                                diff_total += ndiff;
                                if (!c.pass)
                                        printf("check %s: %zu of %zu differ, unwritten %zu guard %zu  FAIL\n",
                                               name, ndiff, yn, c.unwritten, c.guard_hit);
                                if (cpu) { /* the fused result against a double dot of f */
                                        std::vector<int> sel(rows);
                                        for (int r = 0; r < rows; r++)
                                                sel[r] = r;
                                        std::vector<double> ref;
                                        std::vector<size_t> idx;
                                        gemv_cpu_ref(wtype, w, kind == CUDA_GEMV_PRO_NONE ? x : f,
                                                     rows, k, t, sel, ref, idx);
                                        if (beta != 0.0f) {
                                                std::vector<float> h0 = to_host(y0, yn);
                                                for (size_t i = 0; i < ref.size(); i++)
                                                        ref[i] += h0[idx[i]];
                                        }
                                        snprintf(name, sizeof(name), "gemv_fused %s %s %d->%d t=%d beta=%g vs cpu",
                                                 wtype_name(wtype), pro_name(kind), k, rows, t, beta);
                                        const check cc = compare(name, hf, ref, {}, yn, GEMV_TOL);
                                        (void)cc;
                                }
                        }
                printf("check gemv_fused %-4s %-8s %5d->%-6d %zu runs (t=%d..%d, beta 0/1): bitwise %zu/%zu,"
                       " %zu differing elements (max rel %.1e), outputs complete %zu/%zu  %s\n",
                       wtype_name(wtype), pro_name(kind), k, rows, runs, toks.front(), toks.back(),
                       exact, runs, diff_total, max_rel, clean, runs,
                       exact == runs && clean == runs ? "ok" : "FAIL");
        }
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(nw));
        CUDA_CHECK_ABORT(cudaFree(f));
        CUDA_CHECK_ABORT(cudaFree(y0));
        CUDA_CHECK_ABORT(cudaFree(ys));
        CUDA_CHECK_ABORT(cudaFree(yf));
}

/* Argument checks of cuda_gemv_fused (no launch happens for any of these). */
static void check_fused_args(void)
{
        void *w;
        float *x, *y, *nw;
        CUDA_CHECK_ABORT(cudaMalloc(&w, 2 * 64 * 64));
        x = dev_alloc_f32(2 * 64 * 2);
        y = dev_alloc_f32(64 * 2);
        nw = dev_alloc_f32(64 + 4);
        struct {
                const char *name;
                struct cuda_gemv_prologue pro;
        } bad[] = {
                {"kind 4", {4, nw, 1e-5f}},
                {"kind -1", {-1, nw, 1e-5f}},
                {"rmsnorm norm_w NULL", {CUDA_GEMV_PRO_RMSNORM, NULL, 1e-5f}},
                {"rmsnorm norm_w unaligned", {CUDA_GEMV_PRO_RMSNORM, nw + 1, 1e-5f}},
                {"rmsnorm eps < 0", {CUDA_GEMV_PRO_RMSNORM, nw, -1.0f}},
                {"rmsnorm eps NaN", {CUDA_GEMV_PRO_RMSNORM, nw, NAN}},
        };
        for (auto &b : bad) {
                const int r = cuda_gemv_fused(CUDA_WTYPE_BF16, w, x, y, 64, 64, 2, 0.0f, &b.pro, 0);
                check c{std::string("gemv_fused args ") + b.name, (double)r, 0.0, 0, 0, r == -EINVAL};
                printf("check %-44s returns %d  %s\n", c.name.c_str(), r, c.pass ? "ok" : "FAIL");
                checks.push_back(c);
        }
        const struct cuda_gemv_prologue glu = {CUDA_GEMV_PRO_GLU_SILU, NULL, NAN}; /* unused fields */
        int r = cuda_gemv_fused(CUDA_WTYPE_F16, w, x, y, 64, 64, 2, 1.0f, &glu, 0);
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        check c{"gemv_fused args glu ignores norm_w/eps", (double)r, 0.0, 0, 0, r == 0};
        printf("check %-44s returns %d  %s\n", c.name.c_str(), r, c.pass ? "ok" : "FAIL");
        checks.push_back(c);
        r = cuda_gemv_fused(CUDA_WTYPE_F16, w, x, y, 64, 64, 2, 0.5f, NULL, 0);
        check c2{"gemv_fused args beta 0.5", (double)r, 0.0, 0, 0, r == -EINVAL};
        printf("check %-44s returns %d  %s\n", c2.name.c_str(), r, c2.pass ? "ok" : "FAIL");
        checks.push_back(c2);
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(y));
        CUDA_CHECK_ABORT(cudaFree(nw));
}

/* Fused vs separate (prologue kernel into a scratch buffer, then cuda_gemv_beta), each a
 * graph over nsets weight/activation sets whose weights exceed the L2 several times; and
 * cuda_gemv_beta alone on the prologue's output (the floor). GB/s: weight bytes per second. */
static void bench_fused(const char *model, const char *what, uint32_t wtype, int kind, int k,
                        int rows, int ntok, size_t l2_bytes)
{
        const size_t wbytes = (size_t)rows * k * 2;
        const int xw = kind == CUDA_GEMV_PRO_GLU_SILU || kind == CUDA_GEMV_PRO_GLU_GELU ? 2 * k : k;
        int nsets = (int)std::min<size_t>(64, (4 * l2_bytes + wbytes - 1) / wbytes);
        nsets = std::max(nsets, wbytes > 4 * l2_bytes ? 1 : 2);
        std::vector<void *> w(nsets);
        std::vector<float *> x(nsets), y(nsets);
        float *nw = dev_alloc_f32(k), *f = dev_alloc_f32((size_t)ntok * k);
        rand_f32(nw, k, 0.5f, 1.0f);
        for (int s = 0; s < nsets; s++) {
                CUDA_CHECK_ABORT(cudaMalloc(&w[s], wbytes));
                x[s] = dev_alloc_f32((size_t)ntok * xw);
                y[s] = dev_alloc_f32((size_t)ntok * rows);
                rand_w16(w[s], (size_t)rows * k, wtype);
                rand_f32(x[s], (size_t)ntok * xw, 4.0f);
        }
        const struct cuda_gemv_prologue pro = {kind, nw, FUSED_EPS};
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        double us[3];
        for (int v = 0; v < 3; v++) {
                cudaGraph_t g;
                cudaGraphExec_t ge;
                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                for (int s = 0; s < nsets; s++)
                        CUDA_OK_OR_ABORT(v == 2 ? cuda_gemv_beta(wtype, w[s], f, y[s], rows, k, ntok,
                                                                 0.0f, st)
                                         : v ? separate_gemv(wtype, w[s], x[s], f, nw, y[s], rows,
                                                             k, ntok, 0.0f, kind, st)
                                             : cuda_gemv_fused(wtype, w[s], x[s], y[s], rows, k,
                                                               ntok, 0.0f, &pro, st));
                CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                us[v] = graph_median_ms(ge, st, 5, 51) * 1e3 / nsets;
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        }
        fbench b{model, std::string(what) + "+" + pro_name(kind), wtype_name(wtype), k, rows,
                 ntok, nsets, us[0], us[1], us[2], wbytes / us[0] * 1e-3, wbytes / us[1] * 1e-3};
        printf("bench gemv_fused %-3s %-16s %s %6d->%-6d t=%-2d sets %2d  fused %8.2f us %7.1f GB/s"
               "  separate %8.2f us %7.1f GB/s  gemv alone %8.2f us\n",
               model, b.what.c_str(), b.wtype.c_str(), k, rows, ntok, nsets, b.us_fused,
               b.gbs_fused, b.us_sep, b.gbs_sep, b.us_gemv);
        fbenches.push_back(b);
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        for (int s = 0; s < nsets; s++) {
                CUDA_CHECK_ABORT(cudaFree(w[s]));
                CUDA_CHECK_ABORT(cudaFree(x[s]));
                CUDA_CHECK_ABORT(cudaFree(y[s]));
        }
        CUDA_CHECK_ABORT(cudaFree(nw));
        CUDA_CHECK_ABORT(cudaFree(f));
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
        bool check_only = false, fused_only = false, no_check = false;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--json") && i + 1 < argc)
                        json = argv[++i];
                else if (!strcmp(argv[i], "--check-only"))
                        check_only = true;
                else if (!strcmp(argv[i], "--fused-only"))
                        fused_only = true;
                else if (!strcmp(argv[i], "--no-check"))
                        no_check = true;
                else {
                        fprintf(stderr, "usage: %s [--json PATH] [--check-only] [--fused-only]"
                                        " [--no-check]\n", argv[0]);
                        return 2;
                }
        }
        cudaDeviceProp prop;
        int drv = 0, rt = 0;
        if (!device_open(&prop, &drv, &rt))
                return 77;

        std::vector<double> shape_err;
        if (!fused_only && !no_check) {
                /* correctness: odd shapes (partial row groups, k not a multiple of the block's
                 * step) */
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
                for (const shape &s : shapes)
                        for (int t : {1, 8, 16}) {
                                double e = check_gemv(CUDA_WTYPE_BF16, s.rows, s.k, t, s.model);
                                double e2 = check_gemv(CUDA_WTYPE_F16, s.rows, s.k, t, s.model);
                                shape_err.push_back(e);
                                shape_err.push_back(e2);
                        }
        }
        /* cuda_gemv_fused: bitwise against the separate kernels on the 1B/8B shapes (gate+up
         * stacked; down with x 2k wide for GLU) and an odd small one */
        if (!no_check) {
                check_fused_args();
                const int fshapes[][2] = {{37, 264},    {2048, 2048}, {3072, 2048}, {16384, 2048},
                                          {2048, 8192}, {6144, 4096}, {4096, 14336}};
                std::vector<int> all, some = {1, 2, 3, 4, 5, 7, 8, 9, 12, 16};
                for (int t = 1; t <= CUDA_GEMV_MAX_TOKENS; t++)
                        all.push_back(t);
                for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16})
                        for (auto &s : fshapes)
                                check_fused_shape(wt, s[0], s[1],
                                                  (size_t)s[0] * s[1] <= ((size_t)8 << 20) ? all : some);
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
                if (!fused_only)
                        for (const shape &s : shapes)
                                for (int t : {1, 8, 16}) {
                                        const double e = i < shape_err.size() ? shape_err[i] : NAN;
                                        const double e2 = i + 1 < shape_err.size() ? shape_err[i + 1] : NAN;
                                        bench_gemv(s.model, CUDA_WTYPE_BF16, s.k, s.rows, t,
                                                   prop.l2CacheSize, bw.read_gbs, e);
                                        bench_gemv(s.model, CUDA_WTYPE_F16, s.k, s.rows, t,
                                                   prop.l2CacheSize, bw.read_gbs, e2);
                                        i += 2;
                                }
                /* fused vs separate: the norm before qkv and before gate+up, GLU before down */
                struct fshape {
                        const char *model, *what;
                        int kind, k, rows;
                };
                static const fshape fs[] = {
                        {"1B", "qkv", CUDA_GEMV_PRO_RMSNORM, 2048, 3072},
                        {"1B", "gate_up", CUDA_GEMV_PRO_RMSNORM, 2048, 16384},
                        {"1B", "down", CUDA_GEMV_PRO_GLU_SILU, 8192, 2048},
                        {"1B", "down", CUDA_GEMV_PRO_GLU_GELU, 8192, 2048},
                        {"8B", "qkv", CUDA_GEMV_PRO_RMSNORM, 4096, 6144},
                        {"8B", "gate_up", CUDA_GEMV_PRO_RMSNORM, 4096, 28672},
                        {"8B", "down", CUDA_GEMV_PRO_GLU_SILU, 14336, 4096},
                };
                for (const fshape &f : fs)
                        for (int t : {1, 4, 8, 16})
                                bench_fused(f.model, f.what, CUDA_WTYPE_BF16, f.kind, f.k, f.rows, t,
                                            prop.l2CacheSize);
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
                fprintf(f, "  ],\n  \"gemv_fused\": [\n");
                for (size_t i = 0; i < fbenches.size(); i++) {
                        const fbench &b = fbenches[i];
                        fprintf(f, "    {\"model\": \"%s\", \"what\": \"%s\", \"wtype\": \"%s\", \"k\": %d,"
                                   " \"rows\": %d, \"ntok\": %d, \"sets\": %d, \"us_fused\": %.3f,"
                                   " \"us_separate\": %.3f, \"us_gemv_only\": %.3f, \"gbs_fused\": %.2f,"
                                   " \"gbs_separate\": %.2f}%s\n",
                                b.model.c_str(), b.what.c_str(), b.wtype.c_str(), b.k, b.rows, b.ntok,
                                b.nsets, b.us_fused, b.us_sep, b.us_gemv, b.gbs_fused, b.gbs_sep,
                                i + 1 < fbenches.size() ? "," : "");
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
        if (!fbenches.empty()) {
                printf("\nfused GEMV vs separate kernels (graphs, weights from HBM; GB/s of weights)\n");
                printf("%-5s %-16s %-4s %12s %3s %9s %7s %9s %7s %8s %9s\n", "model", "what", "type",
                       "k->rows", "t", "fused us", "GB/s", "sep us", "GB/s", "saved us",
                       "gemv only");
                for (const fbench &b : fbenches) {
                        char kr[32];
                        snprintf(kr, sizeof(kr), "%d->%d", b.k, b.rows);
                        printf("%-5s %-16s %-4s %12s %3d %9.2f %7.1f %9.2f %7.1f %8.2f %9.2f\n",
                               b.model.c_str(), b.what.c_str(), b.wtype.c_str(), kr, b.ntok,
                               b.us_fused, b.gbs_fused, b.us_sep, b.gbs_sep, b.us_sep - b.us_fused,
                               b.us_gemv);
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
