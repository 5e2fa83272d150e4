/* test_mma.cu — checks and times cuda_mma_gemv (engine/cuda/mma_gemv.cuh), the tensor-core
 * decode product for 1..64 tokens: against a CPU double-precision reference on the exact
 * 16-bit weights and activations the kernel reads (x16 made by cuda_f32_to_w16, as the engine
 * makes it), BF16 and F16, odd row counts, k from 32 to 8192, 1..64 tokens, beta 0 and 1,
 * every kernel shape and k split forced, poisoned guards, bitwise determinism, pdl on = off
 * (also right after a kernel that writes x16), graph replay = eager, argument checks; then
 * timing at the Llama 3.2 1B / 3.1 8B shapes next to cuda_gemv_beta (≤ 16 tokens) and
 * cuda_gemm (cuBLASLt), with the fastest named.
 * Built and run by tests/gpu/run. Exit 0 all checks pass, 1 any failed, 77 no GPU.
 * Options: --json PATH, --check-only (no timing; for compute-sanitizer), --no-check (timings
 * only), --sweep (also time every forced mt / split per shape and batch, for tuning). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bandwidth.cuh"
#include "common.cuh"
#include "gemm.cuh"
#include "gemv.cuh"
#include "mma_gemv.cuh"

#define HARNESS_SEED 0x5eed3ull
#define GUARD        64
#include "harness.cuh"

/* ||y - ref|| / ||ref|| (vs CPU double), as for the other GEMV/GEMM checks */
#define MMA_TOL 1e-5
/* each element: |y - ref| ≤ MMA_ELEM_TOL · Σ_k |W[r][k]·x[t][k]| (the sum's own scale: float
 * adds and the tensor core's truncation inside a 32-product chunk stay far below this) */
#define MMA_ELEM_TOL 1e-5

static const int ntoks[] = {1, 2, 3, 7, 8, 9, 16, 31, 32, 33, 63, 64};

/* ---- results ---- */

struct mcheck {
        std::string name;
        double err, max_elem, tol;
        size_t unwritten, guard_hit;
        bool pass;
};

struct mbench {
        std::string model, what, wtype;
        int k, rows, ntok, nsets, mt, split, blocks;
        double us_mma, us_gemv, us_gemm; /* NAN: not timed */
        double gbs_mma, frac_mma;
        std::string best;
};

static std::vector<mcheck> checks;
static std::vector<mbench> benches;

static void check_flag(const std::string &name, bool pass, const char *fmt = "", double v = 0.0)
{
        mcheck c{name, v, 0.0, 0.0, 0, 0, pass};
        char detail[96];
        snprintf(detail, sizeof(detail), fmt, v);
        printf("%s %-58s %s\n", pass ? "PASS" : "FAIL", name.c_str(), detail);
        checks.push_back(c);
}

/* ---- data and the CPU reference ---- */

/* One weight matrix and 64 tokens of activations on the device, their host copies, and the
 * exact products in double for a selection of rows: ref[t][j], abs[t][j] = Σ|w·x| (j indexes
 * sel). The first n tokens serve every ntok = n. */
struct problem {
        uint32_t wtype;
        int rows, k;
        void *w;       /* rows × k */
        uint16_t *x16; /* 64 × k */
        std::vector<int> sel;
        std::vector<double> ref, abs;
};

static void problem_make(problem &p, uint32_t wtype, int rows, int k, bool all_rows)
{
        const int T = CUDA_MMA_GEMV_MAX_TOKENS;
        p.wtype = wtype;
        p.rows = rows;
        p.k = k;
        p.w = dev_alloc((size_t)rows * k * 2);
        p.x16 = (uint16_t *)dev_alloc((size_t)T * k * 2);
        float *xf = dev_alloc_f32((size_t)T * k);
        rand_w16(p.w, (size_t)rows * k, wtype);
        rand_f32(xf, (size_t)T * k);
        CUDA_OK_OR_ABORT(cuda_f32_to_w16(wtype, xf, p.x16, (size_t)T * k, 0));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        CUDA_CHECK_ABORT(cudaFree(xf));

        p.sel.clear();
        if (all_rows) {
                for (int r = 0; r < rows; r++)
                        p.sel.push_back(r);
        } else {
                p.sel = {0, 1, 15, 16, 127, 128, 255, 256, rows / 2, rows - 2, rows - 1};
                for (int i = 0; i < 53; i++)
                        p.sel.push_back((int)(mix64(seed_next()) % (uint64_t)rows));
                for (int &r : p.sel)
                        r = std::min(std::max(r, 0), rows - 1);
        }
        std::vector<uint16_t> hx((size_t)T * k), hw(k);
        CUDA_CHECK_ABORT(cudaMemcpy(hx.data(), p.x16, hx.size() * 2, cudaMemcpyDeviceToHost));
        std::vector<double> xd(hx.size()), wd(k);
        for (size_t i = 0; i < hx.size(); i++)
                xd[i] = w16_to_double(hx[i], wtype);
        const size_t ns = p.sel.size();
        p.ref.assign((size_t)T * ns, 0.0);
        p.abs.assign((size_t)T * ns, 0.0);
        for (size_t j = 0; j < ns; j++) {
                CUDA_CHECK_ABORT(cudaMemcpy(hw.data(), (const uint16_t *)p.w + (size_t)p.sel[j] * k,
                                            2 * (size_t)k, cudaMemcpyDeviceToHost));
                for (int i = 0; i < k; i++)
                        wd[i] = w16_to_double(hw[i], wtype);
                for (int t = 0; t < T; t++) {
                        const double *xr = &xd[(size_t)t * k];
                        double s = 0.0, a = 0.0;
                        for (int i = 0; i < k; i++) {
                                s += wd[i] * xr[i];
                                a += fabs(wd[i] * xr[i]);
                        }
                        p.ref[(size_t)t * ns + j] = s;
                        p.abs[(size_t)t * ns + j] = a;
                }
        }
}

static void problem_free(problem &p)
{
        CUDA_CHECK_ABORT(cudaFree(p.w));
        CUDA_CHECK_ABORT(cudaFree(p.x16));
        p.w = NULL;
        p.x16 = NULL;
}

/* out: ntok × rows + GUARD floats read back. base: what y held before a beta-1 call (empty for
 * beta 0). Checks every element is written (no NaN left of the poison), the guard untouched,
 * the relative error over the selected rows and each selected element's error. */
static mcheck compare(const std::string &name, const problem &p, int ntok,
                      const std::vector<float> &out, const std::vector<float> &base)
{
        const size_t n = (size_t)ntok * p.rows, ns = p.sel.size();
        mcheck c{name, 0.0, 0.0, MMA_TOL, 0, 0, false};
        count_unwritten(out, n, &c.unwritten, &c.guard_hit);
        double num = 0.0, den = 0.0;
        for (int t = 0; t < ntok; t++)
                for (size_t j = 0; j < ns; j++) {
                        const size_t o = (size_t)t * p.rows + p.sel[j];
                        const double ref =
                            p.ref[(size_t)t * ns + j] + (base.empty() ? 0.0 : (double)base[o]);
                        const double scale =
                            p.abs[(size_t)t * ns + j] + (base.empty() ? 0.0 : fabs(base[o]));
                        const double d = (double)out[o] - ref;
                        num += d * d;
                        den += ref * ref;
                        if (scale > 0.0)
                                c.max_elem = std::max(c.max_elem, fabs(d) / scale);
                        else if (d != 0.0)
                                c.max_elem = INFINITY;
                }
        c.err = den > 0.0 ? sqrt(num / den) : (num > 0.0 ? INFINITY : 0.0);
        c.pass = c.unwritten == 0 && c.guard_hit == 0 && c.err <= MMA_TOL &&
                 c.max_elem <= MMA_ELEM_TOL && !isnan(c.err) && !isnan(c.max_elem);
        printf("%s %-58s rel %.2e max %.2e (tol %.0e/%.0e) unwritten %zu guard %zu\n",
               c.pass ? "PASS" : "FAIL", name.c_str(), c.err, c.max_elem, MMA_TOL, MMA_ELEM_TOL,
               c.unwritten, c.guard_hit);
        checks.push_back(c);
        return c;
}

static bool bitwise_equal(const std::vector<float> &a, const std::vector<float> &b, size_t n,
                          size_t *ndiff)
{
        *ndiff = 0;
        for (size_t i = 0; i < n; i++)
                *ndiff += memcmp(&a[i], &b[i], 4) != 0;
        return *ndiff == 0;
}

/* ---- checks ---- */

/* Every ntok of ntoks[] on one problem: beta 0 into NaN (twice without pdl, once with: all
 * three bitwise equal), beta 1 onto random values (pdl alternating). */
static void check_problem(const problem &p, const char *tag)
{
        const size_t yn = (size_t)CUDA_MMA_GEMV_MAX_TOKENS * p.rows;
        float *y = dev_alloc_f32(yn + GUARD), *b = dev_alloc_f32(yn + GUARD);
        char name[160];
        for (int ntok : ntoks) {
                const size_t n = (size_t)ntok * p.rows;
                int mt = 0, split = 0, blocks = 0;
                CUDA_OK_OR_ABORT(
                    cuda_mma_gemv_plan(p.wtype, p.rows, p.k, ntok, &mt, &split, &blocks));
                char what[120];
                snprintf(what, sizeof(what), "%s %s%d->%d t=%d (mt %d split %d)",
                         wtype_name(p.wtype), tag, p.k, p.rows, ntok, mt, split);

                std::vector<float> out[3];
                for (int v = 0; v < 3; v++) {
                        poison(y, n);
                        CUDA_OK_OR_ABORT(cuda_mma_gemv(p.wtype, p.w, p.x16, y, p.rows, p.k, ntok,
                                                       0.0f, 0, v == 2));
                        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                        out[v] = to_host(y, n + GUARD);
                }
                snprintf(name, sizeof(name), "mma %s beta 0", what);
                compare(name, p, ntok, out[0], {});
                size_t nd = 0;
                snprintf(name, sizeof(name), "mma %s repeat bitwise", what);
                check_flag(name, bitwise_equal(out[0], out[1], n, &nd), "%.0f elements differ",
                           (double)nd);
                snprintf(name, sizeof(name), "mma %s pdl = no pdl bitwise", what);
                check_flag(name, bitwise_equal(out[0], out[2], n, &nd), "%.0f elements differ",
                           (double)nd);
                /* the same launch shape for all 64 tokens: a token's result must not depend on
                 * how many come with it (only the split, which the plan picks per token count,
                 * changes the bits) */
                poison(y, yn);
                CUDA_OK_OR_ABORT(cuda_mma_gemv_tuned(p.wtype, p.w, p.x16, y, p.rows, p.k,
                                                     CUDA_MMA_GEMV_MAX_TOKENS, 0.0f, 0, false, mt,
                                                     split));
                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                const bool same64 = bitwise_equal(out[0], to_host(y, yn), n, &nd);
                snprintf(name, sizeof(name), "mma %s = its tokens of t=64 bitwise", what);
                check_flag(name, same64, "%.0f elements differ", (double)nd);

                poison(y, n); /* the guard; the outputs get a random base below */
                rand_f32(b, n, 2.0f);
                CUDA_CHECK_ABORT(cudaMemcpy(y, b, n * sizeof(float), cudaMemcpyDeviceToDevice));
                const std::vector<float> base = to_host(b, n);
                const bool pdl = ntok % 2;
                CUDA_OK_OR_ABORT(
                    cuda_mma_gemv(p.wtype, p.w, p.x16, y, p.rows, p.k, ntok, 1.0f, 0, pdl));
                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                snprintf(name, sizeof(name), "mma %s beta 1%s", what, pdl ? " pdl" : "");
                compare(name, p, ntok, to_host(y, n + GUARD), base);
        }
        CUDA_CHECK_ABORT(cudaFree(y));
        CUDA_CHECK_ABORT(cudaFree(b));
}

/* Every kernel shape and k split forced: each within tolerance, and mt 1 vs 2 bitwise equal at
 * the same split (the summation order depends only on the split). */
static void check_forced(const problem &p)
{
        const size_t yn = (size_t)CUDA_MMA_GEMV_MAX_TOKENS * p.rows;
        float *y = dev_alloc_f32(yn + GUARD);
        const int nch = p.k / 32;
        char name[160];
        for (int ntok : {5, 12, 20, 40, 64})
                for (int split : {1, 2, 3, 5, 8}) {
                        if (split > nch)
                                continue;
                        const size_t n = (size_t)ntok * p.rows;
                        std::vector<float> out[2];
                        for (int mt = 1; mt <= 2; mt++) {
                                if (mt == 2 && ntok <= 16)
                                        continue;
                                poison(y, n);
                                CUDA_OK_OR_ABORT(cuda_mma_gemv_tuned(p.wtype, p.w, p.x16, y, p.rows,
                                                                     p.k, ntok, 0.0f, 0, split % 2,
                                                                     mt, split));
                                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                                out[mt - 1] = to_host(y, n + GUARD);
                                snprintf(name, sizeof(name),
                                         "mma forced %s %d->%d t=%d mt %d split %d",
                                         wtype_name(p.wtype), p.k, p.rows, ntok, mt, split);
                                compare(name, p, ntok, out[mt - 1], {});
                        }
                        if (!out[1].empty()) {
                                size_t nd = 0;
                                snprintf(name, sizeof(name),
                                         "mma forced %s %d->%d t=%d split %d mt1 = mt2 bitwise",
                                         wtype_name(p.wtype), p.k, p.rows, ntok, split);
                                check_flag(name, bitwise_equal(out[0], out[1], n, &nd),
                                           "%.0f elements differ", (double)nd);
                        }
                }
        CUDA_CHECK_ABORT(cudaFree(y));
}

/* Captured into a graph (pdl on and off, beta 0 then 1 on the same y): replay bitwise equal to
 * the same calls made eagerly. */
static void check_graph(const problem &p, int ntok)
{
        const size_t n = (size_t)ntok * p.rows;
        float *ye = dev_alloc_f32(n + GUARD), *yg = dev_alloc_f32(n + GUARD);
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        for (int pdl = 0; pdl < 2; pdl++) {
                poison(ye, n);
                poison(yg, n);
                CUDA_OK_OR_ABORT(
                    cuda_mma_gemv(p.wtype, p.w, p.x16, ye, p.rows, p.k, ntok, 0.0f, st, pdl));
                CUDA_OK_OR_ABORT(
                    cuda_mma_gemv(p.wtype, p.w, p.x16, ye, p.rows, p.k, ntok, 1.0f, st, pdl));
                CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                cudaGraph_t g;
                cudaGraphExec_t ge;
                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                const int r0 =
                    cuda_mma_gemv(p.wtype, p.w, p.x16, yg, p.rows, p.k, ntok, 0.0f, st, pdl);
                const int r1 =
                    cuda_mma_gemv(p.wtype, p.w, p.x16, yg, p.rows, p.k, ntok, 1.0f, st, pdl);
                const cudaError_t ec = cudaStreamEndCapture(st, &g);
                char name[128];
                snprintf(name, sizeof(name), "mma graph %s %d->%d t=%d pdl %d: capture",
                         wtype_name(p.wtype), p.k, p.rows, ntok, pdl);
                const bool ok = r0 == 0 && r1 == 0 && ec == cudaSuccess;
                check_flag(name, ok, ok ? "" : "a call or EndCapture failed");
                if (!ok) {
                        (void)cudaGetLastError();
                        continue;
                }
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
                CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                const std::vector<float> he = to_host(ye, n + GUARD), hg = to_host(yg, n + GUARD);
                size_t nd = 0;
                snprintf(name, sizeof(name),
                         "mma graph %s %d->%d t=%d pdl %d: replay = eager bitwise",
                         wtype_name(p.wtype), p.k, p.rows, ntok, pdl);
                check_flag(name, bitwise_equal(he, hg, n + GUARD, &nd), "%.0f elements differ",
                           (double)nd);
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        CUDA_CHECK_ABORT(cudaFree(ye));
        CUDA_CHECK_ABORT(cudaFree(yg));
}

/* pdl against a real producer: on one stream, x16 is zeroed, then rewritten by a kernel
 * (cuda_f32_to_w16 of the same values), then cuda_mma_gemv with pdl reads it, eagerly and as
 * a graph: a read before griddepcontrol.wait would see zeros. Must equal the ordinary launch. */
static void check_pdl_producer(const problem &p, int ntok)
{
        const size_t n = (size_t)ntok * p.rows, xn = (size_t)ntok * p.k;
        std::vector<uint16_t> hx(xn);
        CUDA_CHECK_ABORT(cudaMemcpy(hx.data(), p.x16, xn * 2, cudaMemcpyDeviceToHost));
        std::vector<float> hf(xn);
        for (size_t i = 0; i < xn; i++)
                hf[i] = (float)w16_to_double(hx[i], p.wtype); /* exact: converts back to itself */
        float *xf = dev_alloc_f32(xn), *y0 = dev_alloc_f32(n + GUARD),
              *y1 = dev_alloc_f32(n + GUARD);
        uint16_t *x16 = (uint16_t *)dev_alloc(xn * 2);
        CUDA_CHECK_ABORT(cudaMemcpy(xf, hf.data(), xn * sizeof(float), cudaMemcpyHostToDevice));
        poison(y0, n);
        CUDA_OK_OR_ABORT(cuda_mma_gemv(p.wtype, p.w, p.x16, y0, p.rows, p.k, ntok, 0.0f, 0, false));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        const std::vector<float> want = to_host(y0, n + GUARD);
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        for (int graph = 0; graph < 2; graph++) {
                poison(y1, n);
                CUDA_CHECK_ABORT(cudaMemset(x16, 0, xn * 2));
                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                cudaGraph_t g = NULL;
                cudaGraphExec_t ge = NULL;
                if (graph)
                        CUDA_CHECK_ABORT(
                            cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                CUDA_OK_OR_ABORT(cuda_f32_to_w16(p.wtype, xf, x16, xn, st));
                CUDA_OK_OR_ABORT(
                    cuda_mma_gemv(p.wtype, p.w, x16, y1, p.rows, p.k, ntok, 0.0f, st, true));
                if (graph) {
                        CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
                        CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                        CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
                }
                CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                size_t nd = 0;
                char name[128];
                snprintf(name, sizeof(name), "mma pdl after x16 producer %s %d->%d t=%d%s",
                         wtype_name(p.wtype), p.k, p.rows, ntok, graph ? " (graph)" : "");
                check_flag(name, bitwise_equal(want, to_host(y1, n + GUARD), n + GUARD, &nd),
                           "%.0f elements differ from the ordinary launch", (double)nd);
                if (graph) {
                        CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                        CUDA_CHECK_ABORT(cudaGraphDestroy(g));
                }
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        CUDA_CHECK_ABORT(cudaFree(xf));
        CUDA_CHECK_ABORT(cudaFree(x16));
        CUDA_CHECK_ABORT(cudaFree(y0));
        CUDA_CHECK_ABORT(cudaFree(y1));
}

/* The first launch of a kernel shape may come inside a graph capture (the engine captures its
 * steps): its one-time setup (occupancy queries, the shared-memory opt-in of the 64-token,
 * 256-row kernel) must not break the capture. Runs before any other launch of that shape. */
static void check_first_in_capture(void)
{
        const int rows = 300, k = 256, ntok = 64;
        problem p;
        problem_make(p, CUDA_WTYPE_BF16, rows, k, true);
        const size_t n = (size_t)ntok * rows;
        float *yg = dev_alloc_f32(n + GUARD), *ye = dev_alloc_f32(n + GUARD);
        poison(yg, n);
        poison(ye, n);
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        const int r =
            cuda_mma_gemv_tuned(p.wtype, p.w, p.x16, yg, rows, k, ntok, 0.0f, st, true, 2, 3);
        const cudaError_t ec = cudaStreamEndCapture(st, &g);
        const bool ok = r == 0 && ec == cudaSuccess;
        check_flag("mma first launch of a shape inside capture (mt 2, 64 tokens)", ok,
                   ok ? "" : "call or EndCapture failed");
        if (ok) {
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                CUDA_CHECK_ABORT(cudaGraphLaunch(ge, st));
                CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                compare("mma bf16 256->300 t=64 mt 2 split 3 (graph replay)", p, ntok,
                        to_host(yg, n + GUARD), {});
                CUDA_OK_OR_ABORT(cuda_mma_gemv_tuned(p.wtype, p.w, p.x16, ye, rows, k, ntok, 0.0f,
                                                     st, false, 2, 3));
                CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                size_t nd = 0;
                check_flag(
                    "mma first-in-capture replay = eager bitwise",
                    bitwise_equal(to_host(yg, n + GUARD), to_host(ye, n + GUARD), n + GUARD, &nd),
                    "%.0f elements differ", (double)nd);
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        } else {
                (void)cudaGetLastError();
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        CUDA_CHECK_ABORT(cudaFree(yg));
        CUDA_CHECK_ABORT(cudaFree(ye));
        problem_free(p);
}

static void expect(const char *name, int got, int want)
{
        char n[128];
        snprintf(n, sizeof(n), "mma args %s", name);
        check_flag(n, got == want, "returns %.0f", (double)got);
        if (got != want)
                printf("     (wanted %d)\n", want);
}

/* Argument checks: every one returns before any launch. */
static void check_args(void)
{
        const uint32_t B = CUDA_WTYPE_BF16;
        void *w = dev_alloc(2 * 64 * 64 + 16);
        uint16_t *x = (uint16_t *)dev_alloc(2 * 64 * 64 + 16);
        float *y = dev_alloc_f32(64 * 64 + 4);
        CUDA_CHECK_ABORT(cudaMemset(w, 0, 2 * 64 * 64 + 16));
        CUDA_CHECK_ABORT(cudaMemset(x, 0, 2 * 64 * 64 + 16));
        CUDA_CHECK_ABORT(cudaMemset(y, 0, sizeof(float) * (64 * 64 + 4)));
        int mt, split, blocks;
        expect("wtype 0", cuda_mma_gemv(0, w, x, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("wtype 2 (q4_0)", cuda_mma_gemv(2, w, x, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("w NULL", cuda_mma_gemv(B, NULL, x, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("x16 NULL", cuda_mma_gemv(B, w, NULL, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("y NULL", cuda_mma_gemv(B, w, x, NULL, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("rows 0", cuda_mma_gemv(B, w, x, y, 0, 64, 1, 0.0f, 0), -EINVAL);
        expect("rows -1", cuda_mma_gemv(B, w, x, y, -1, 64, 1, 0.0f, 0), -EINVAL);
        expect("k 0", cuda_mma_gemv(B, w, x, y, 64, 0, 1, 0.0f, 0), -EINVAL);
        expect("k -32", cuda_mma_gemv(B, w, x, y, 64, -32, 1, 0.0f, 0), -EINVAL);
        expect("k 12 (not a multiple of 8)", cuda_mma_gemv(B, w, x, y, 64, 12, 1, 0.0f, 0),
               -EINVAL);
        expect("k 4", cuda_mma_gemv(B, w, x, y, 64, 4, 1, 0.0f, 0), -EINVAL);
        expect("ntok 0", cuda_mma_gemv(B, w, x, y, 64, 64, 0, 0.0f, 0), -EINVAL);
        expect("ntok 65", cuda_mma_gemv(B, w, x, y, 64, 64, 65, 0.0f, 0), -EINVAL);
        expect("beta 0.5", cuda_mma_gemv(B, w, x, y, 64, 64, 1, 0.5f, 0), -EINVAL);
        expect("beta -1", cuda_mma_gemv(B, w, x, y, 64, 64, 1, -1.0f, 0), -EINVAL);
        expect("beta NaN", cuda_mma_gemv(B, w, x, y, 64, 64, 1, NAN, 0), -EINVAL);
        expect("w misaligned", cuda_mma_gemv(B, (char *)w + 2, x, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("x16 misaligned", cuda_mma_gemv(B, w, x + 1, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("y misaligned", cuda_mma_gemv(B, w, x, (float *)((char *)y + 2), 64, 64, 1, 0.0f, 0),
               -EINVAL);
        expect("tuned mt 3", cuda_mma_gemv_tuned(B, w, x, y, 64, 64, 1, 0.0f, 0, false, 3, 0),
               -EINVAL);
        expect("tuned mt -1", cuda_mma_gemv_tuned(B, w, x, y, 64, 64, 1, 0.0f, 0, false, -1, 0),
               -EINVAL);
        expect("tuned split 9", cuda_mma_gemv_tuned(B, w, x, y, 64, 64, 1, 0.0f, 0, false, 0, 9),
               -EINVAL);
        expect("tuned split -1", cuda_mma_gemv_tuned(B, w, x, y, 64, 64, 1, 0.0f, 0, false, 0, -1),
               -EINVAL);
        expect("plan k 44", cuda_mma_gemv_plan(B, 64, 44, 1, &mt, &split, &blocks), -EINVAL);
        expect("plan ntok 65", cuda_mma_gemv_plan(B, 64, 64, 65, &mt, &split, &blocks), -EINVAL);
        /* valid: y only 4-byte aligned is fine; F16 too; k 8 (one partial chunk); a split above
         * the number of 64-element chunks leaves blocks with nothing to add */
        expect("valid (y + 1 float)", cuda_mma_gemv(B, w, x, y + 1, 64, 64, 1, 0.0f, 0), 0);
        expect("valid f16 beta 1 pdl",
               cuda_mma_gemv(CUDA_WTYPE_F16, w, x, y, 64, 64, 64, 1.0f, 0, true), 0);
        expect("valid tuned split 8 at k 64",
               cuda_mma_gemv_tuned(B, w, x, y, 64, 64, 3, 0.0f, 0, false, 2, 8), 0);
        expect("valid k 8", cuda_mma_gemv(B, w, x, y, 64, 8, 5, 0.0f, 0), 0);
        expect("plan valid", cuda_mma_gemv_plan(B, 64, 64, 1, &mt, &split, &blocks), 0);
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(y));
}

/* ---- timing ---- */

struct shape {
        const char *model, *what;
        int k, rows;
};

static const shape bench_shapes[] = {
    {"1B", "qkv", 2048, 3072},      {"1B", "wo", 2048, 2048},    {"1B", "gate_up", 2048, 16384},
    {"1B", "down", 8192, 2048},     {"8B", "qkv", 4096, 6144},   {"8B", "wo", 4096, 4096},
    {"8B", "gate_up", 4096, 28672}, {"8B", "down", 14336, 4096},
};
static const int bench_ntok[] = {1, 8, 16, 32, 64};

/* One call's median time in µs over graph replays of nsets calls (one per weight set; the
 * sets together exceed the L2 four times, so every call reads its weights from HBM). */
template <typename F> static double time_graph(int nsets, cudaStream_t st, F call)
{
        for (int s = 0; s < nsets; s++) /* eager once: modules loaded, caches filled */
                CUDA_OK_OR_ABORT(call(s));
        CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int s = 0; s < nsets; s++)
                CUDA_OK_OR_ABORT(call(s));
        CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
        CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
        const double ms = graph_median_ms(ge, st, 3, 21);
        CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
        CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        return ms * 1e3 / nsets;
}

static void bench_shape(const shape &s, uint32_t wtype, struct cuda_gemm *gemm, size_t l2_bytes,
                        double read_gbs, bool sweep)
{
        const int T = CUDA_MMA_GEMV_MAX_TOKENS;
        const size_t wbytes = (size_t)s.rows * s.k * 2;
        int nsets = (int)std::min<size_t>(64, (4 * l2_bytes + wbytes - 1) / wbytes);
        nsets = std::max(nsets, wbytes > 4 * l2_bytes ? 1 : 2);
        std::vector<void *> w(nsets);
        std::vector<uint16_t *> x16(nsets);
        std::vector<float *> xf(nsets), y(nsets);
        for (int i = 0; i < nsets; i++) {
                w[i] = dev_alloc(wbytes);
                x16[i] = (uint16_t *)dev_alloc((size_t)T * s.k * 2);
                xf[i] = dev_alloc_f32((size_t)T * s.k);
                y[i] = dev_alloc_f32((size_t)T * s.rows);
                rand_w16(w[i], (size_t)s.rows * s.k, wtype);
                rand_f32(xf[i], (size_t)T * s.k);
                CUDA_OK_OR_ABORT(cuda_f32_to_w16(wtype, xf[i], x16[i], (size_t)T * s.k, 0));
        }
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        for (int ntok : bench_ntok) {
                mbench b{s.model, s.what, wtype_name(wtype),
                         s.k,     s.rows, ntok,
                         nsets,   0,      0,
                         0,       NAN,    NAN,
                         NAN,     0,      0,
                         ""};
                CUDA_OK_OR_ABORT(
                    cuda_mma_gemv_plan(wtype, s.rows, s.k, ntok, &b.mt, &b.split, &b.blocks));
                b.us_mma = time_graph(nsets, st, [&](int i) {
                        return cuda_mma_gemv(wtype, w[i], x16[i], y[i], s.rows, s.k, ntok, 0.0f,
                                             st);
                });
                if (ntok <= CUDA_GEMV_MAX_TOKENS)
                        b.us_gemv = time_graph(nsets, st, [&](int i) {
                                return cuda_gemv_beta(wtype, w[i], xf[i], y[i], s.rows, s.k, ntok,
                                                      0.0f, st);
                        });
                if (gemm && cuda_gemm_prepare(gemm, wtype, s.rows, s.k, ntok) < 0)
                        printf("note: cuda_gemm_prepare %d->%d t=%d failed; cuBLASLt not timed\n",
                               s.k, s.rows, ntok);
                else if (gemm) {
                        b.us_gemm = time_graph(nsets, st, [&](int i) {
                                return cuda_gemm(gemm, wtype, w[i], x16[i], y[i], s.rows, s.k, ntok,
                                                 0.0f, st);
                        });
                }
                b.gbs_mma = wbytes / b.us_mma * 1e-3;
                b.frac_mma = read_gbs > 0 ? b.gbs_mma / read_gbs : NAN;
                double best = b.us_mma;
                b.best = "mma";
                if (!isnan(b.us_gemv) && b.us_gemv < best) {
                        best = b.us_gemv;
                        b.best = "gemv";
                }
                if (!isnan(b.us_gemm) && b.us_gemm < best) {
                        best = b.us_gemm;
                        b.best = "gemm";
                }
                printf("bench %s %-7s %s %5d->%-5d t=%-2d sets %2d  mma %7.2f us %6.0f GB/s "
                       "%5.1f%% (mt %d split %d"
                       " blocks %4d)  gemv %7.2f us  gemm %7.2f us  best %s\n",
                       s.model, s.what, b.wtype.c_str(), s.k, s.rows, ntok, nsets, b.us_mma,
                       b.gbs_mma, 100 * b.frac_mma, b.mt, b.split, b.blocks, b.us_gemv, b.us_gemm,
                       b.best.c_str());
                benches.push_back(b);
                if (sweep)
                        for (int mt = 1; mt <= 2; mt++)
                                for (int split : {1, 2, 3, 4, 6, 8}) {
                                        const double us = time_graph(nsets, st, [&](int i) {
                                                return cuda_mma_gemv_tuned(
                                                    wtype, w[i], x16[i], y[i], s.rows, s.k, ntok,
                                                    0.0f, st, false, mt, split);
                                        });
                                        printf("sweep %s %-7s %5d->%-5d t=%-2d mt %d split %d  "
                                               "%7.2f us %6.0f GB/s%s\n",
                                               s.model, s.what, s.k, s.rows, ntok, mt, split, us,
                                               wbytes / us * 1e-3,
                                               mt == b.mt && split == b.split ? "  (planned)" : "");
                                }
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        for (int i = 0; i < nsets; i++) {
                CUDA_CHECK_ABORT(cudaFree(w[i]));
                CUDA_CHECK_ABORT(cudaFree(x16[i]));
                CUDA_CHECK_ABORT(cudaFree(xf[i]));
                CUDA_CHECK_ABORT(cudaFree(y[i]));
        }
}

/* ---- main ---- */

int main(int argc, char **argv)
{
        const char *json = NULL;
        bool check_only = false, no_check = false, sweep = false;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--json") && i + 1 < argc)
                        json = argv[++i];
                else if (!strcmp(argv[i], "--check-only"))
                        check_only = true;
                else if (!strcmp(argv[i], "--no-check"))
                        no_check = true;
                else if (!strcmp(argv[i], "--sweep"))
                        sweep = true;
                else {
                        fprintf(stderr,
                                "usage: %s [--json PATH] [--check-only] [--no-check] [--sweep]\n",
                                argv[0]);
                        return 2;
                }
        }
        cudaDeviceProp prop;
        int drv = 0, rt = 0;
        if (!device_open(&prop, &drv, &rt))
                return 77;
        if (!cuda_mma_gemv_ok()) {
                printf("SKIP: cuda_mma_gemv needs sm_90 (wgmma, the bulk tensor copy engine), this is "
                       "sm_%d%d\n",
                       prop.major, prop.minor);
                return 77;
        }

        if (!no_check) {
                check_first_in_capture(); /* first: no launch of its kernel may come before */
                check_args();
                /* odd row counts (partial 16-row tiles and blocks), k from one chunk up, every
                 * token count class; all rows against the CPU */
                const int small[][2] = {{1, 32},    {37, 96},   {130, 32},    {333, 2048},
                                        {77, 8192}, {1029, 96}, {4099, 2048}, {520, 8192},
                                        {65, 200}};
                for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16})
                        for (auto &sh : small) {
                                problem p;
                                problem_make(p, wt, sh[0], sh[1], true);
                                check_problem(p, "");
                                if (sh[0] == 333 || sh[0] == 4099)
                                        check_forced(p);
                                if (sh[0] == 333)
                                        for (int t : {3, 64})
                                                check_graph(p, t);
                                if (sh[0] == 333 || sh[0] == 4099)
                                        for (int t : {8, 64})
                                                check_pdl_producer(p, t);
                                problem_free(p);
                        }
                /* the timed shapes themselves, as planned, 64 sampled rows against the CPU */
                for (const shape &s : bench_shapes) {
                        problem p;
                        problem_make(p, CUDA_WTYPE_BF16, s.rows, s.k, false);
                        const size_t yn = (size_t)CUDA_MMA_GEMV_MAX_TOKENS * s.rows;
                        float *y = dev_alloc_f32(yn + GUARD);
                        for (int ntok : bench_ntok) {
                                int mt, split, blocks;
                                CUDA_OK_OR_ABORT(cuda_mma_gemv_plan(p.wtype, s.rows, s.k, ntok, &mt,
                                                                    &split, &blocks));
                                poison(y, (size_t)ntok * s.rows);
                                CUDA_OK_OR_ABORT(cuda_mma_gemv(p.wtype, p.w, p.x16, y, s.rows, s.k,
                                                               ntok, 0.0f, 0));
                                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                                char name[128];
                                snprintf(name, sizeof(name),
                                         "mma bf16 %s %s %d->%d t=%d (mt %d split %d, 64 rows)",
                                         s.model, s.what, s.k, s.rows, ntok, mt, split);
                                compare(name, p, ntok, to_host(y, (size_t)ntok * s.rows + GUARD),
                                        {});
                        }
                        CUDA_CHECK_ABORT(cudaFree(y));
                        problem_free(p);
                }
        }

        struct cuda_bandwidth bw = {0, 0, 0, 0};
        if (!check_only) {
                size_t free_b = 0, total_b = 0;
                CUDA_CHECK_ABORT(cudaMemGetInfo(&free_b, &total_b));
                CUDA_OK_OR_ABORT(
                    cuda_bandwidth_measure(std::min<size_t>((size_t)2 << 30, free_b / 4), 31, &bw));
                printf("bandwidth: read %.1f GB/s, copy (read+write) %.1f GB/s, %zu MB buffer\n",
                       bw.read_gbs, bw.copy_gbs, bw.bytes >> 20);
                struct cuda_gemm *gemm = NULL;
                if (cuda_gemm_create(0, &gemm) < 0) {
                        printf("note: cuda_gemm_create failed; cuBLASLt not timed\n");
                        gemm = NULL;
                }
                for (const shape &s : bench_shapes)
                        bench_shape(s, CUDA_WTYPE_BF16, gemm, (size_t)prop.l2CacheSize, bw.read_gbs,
                                    sweep);
                cuda_gemm_free(gemm);
        }

        size_t failed = 0;
        for (const mcheck &c : checks)
                failed += !c.pass;

        if (json) {
                FILE *f = fopen(json, "w");
                if (!f) {
                        perror(json);
                        return 1;
                }
                fprintf(f,
                        "{\n  \"device\": \"%s\", \"sm\": \"%d%d\", \"sms\": %d, \"l2_bytes\": %d,"
                        " \"driver\": %d, \"runtime\": %d,\n",
                        prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                        prop.l2CacheSize, drv, rt);
                fprintf(f,
                        "  \"bandwidth\": {\"read_gbs\": %.2f, \"copy_gbs\": %.2f, \"bytes\": %zu, "
                        "\"reps\": %d},\n",
                        bw.read_gbs, bw.copy_gbs, bw.bytes, bw.reps);
                fprintf(f, "  \"checks_total\": %zu, \"checks_failed\": %zu,\n  \"checks\": [\n",
                        checks.size(), failed);
                for (size_t i = 0; i < checks.size(); i++) {
                        const mcheck &c = checks[i];
                        fprintf(f,
                                "    {\"name\": \"%s\", \"err\": %.3e, \"max_elem\": %.3e, "
                                "\"unwritten\": %zu,"
                                " \"guard_hit\": %zu, \"pass\": %s}%s\n",
                                c.name.c_str(), c.err, c.max_elem, c.unwritten, c.guard_hit,
                                c.pass ? "true" : "false", i + 1 < checks.size() ? "," : "");
                }
                fprintf(f, "  ],\n  \"bench\": [\n");
                for (size_t i = 0; i < benches.size(); i++) {
                        const mbench &b = benches[i];
                        /* NAN (not timed) as null */
                        char g1[32], g2[32];
                        snprintf(g1, sizeof(g1), isnan(b.us_gemv) ? "null" : "%.3f", b.us_gemv);
                        snprintf(g2, sizeof(g2), isnan(b.us_gemm) ? "null" : "%.3f", b.us_gemm);
                        fprintf(f,
                                "    {\"model\": \"%s\", \"wtype\": \"%s\", \"k\": %d, \"rows\": "
                                "%d, \"ntok\": %d,"
                                " \"sets\": %d, \"mt\": %d, \"split\": %d, \"blocks\": %d, "
                                "\"us_mma\": %.3f,"
                                " \"gbs_mma\": %.1f, \"frac_bw_mma\": %.4f, \"us_gemv\": %s, "
                                "\"us_gemm\": %s,"
                                " \"best\": \"%s\"}%s\n",
                                b.model.c_str(), b.wtype.c_str(), b.k, b.rows, b.ntok, b.nsets,
                                b.mt, b.split, b.blocks, b.us_mma, b.gbs_mma, b.frac_mma, g1, g2,
                                b.best.c_str(), i + 1 < benches.size() ? "," : "");
                }
                fprintf(f, "  ]\n}\n");
                fclose(f);
        }

        /* the table, last */
        if (!benches.empty()) {
                printf("\n%s (%d SMs, L2 %d MB): read %.0f GB/s; graphs, weights from HBM; GB/s "
                       "and %%bw of the"
                       " weight bytes\n",
                       prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, bw.read_gbs);
                printf("%-5s %-7s %-4s %12s %3s %9s %7s %6s %5s %9s %9s  %s\n", "model", "what",
                       "type", "k->rows", "t", "mma us", "GB/s", "%bw", "plan", "gemv us",
                       "gemm us", "fastest (its time / mma's)");
                for (const mbench &b : benches) {
                        char kr[32];
                        snprintf(kr, sizeof(kr), "%d->%d", b.k, b.rows);
                        const double best =
                            std::min({b.us_mma, isnan(b.us_gemv) ? INFINITY : b.us_gemv,
                                      isnan(b.us_gemm) ? INFINITY : b.us_gemm});
                        printf("%-5s %-7s %-4s %12s %3d %9.2f %7.0f %5.1f%%  s%dm%d %9.2f %9.2f  "
                               "%s (%.2f)\n",
                               b.model.c_str(), b.what.c_str(), b.wtype.c_str(), kr, b.ntok,
                               b.us_mma, b.gbs_mma, 100 * b.frac_mma, b.split, b.mt, b.us_gemv,
                               b.us_gemm, b.best.c_str(), best / b.us_mma);
                }
        }
        for (const mcheck &c : checks)
                if (!c.pass)
                        printf("FAILED %s: err %.3e max %.3e unwritten %zu guard %zu\n",
                               c.name.c_str(), c.err, c.max_elem, c.unwritten, c.guard_hit);
        printf("%s: %zu checks, %zu failed (rel ||y-ref||/||ref|| <= %.0e and each |y-ref| <= %.0e "
               "* sum|w*x|"
               " vs CPU double; guards, bitwise repeat, pdl, graph, mt1=mt2, args)\n",
               failed ? "FAIL" : "PASS", checks.size(), failed, MMA_TOL, MMA_ELEM_TOL);
        return failed ? 1 : 0;
}
