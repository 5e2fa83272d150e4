/* test_ops.cu — checks and times the prefill GEMM (cuBLASLt, gemm.cuh) and the small
 * forward-pass kernels (ops.cuh): every function, fast and plain versions, against a CPU
 * double-precision reference on fresh random data with poisoned outputs and guard areas; the
 * f32 → F16/BF16 conversion bit for bit against host rounding; argument checking; a CUDA
 * Graph replay of captured calls bit for bit against the eager calls; then cuda_gemm timing
 * at the Llama 3.1 8B / 3.2 1B shapes. Exit 0 all checks pass, 1 any failed, 77 no GPU.
 * Options: --json PATH, --check-only (no timing; for compute-sanitizer),
 *          --wtype bf16|f16|both (types timed; default bf16).
 * Build: nvcc -O3 -std=c++17 -arch=sm_90 -Iengine/cuda -o build-gpu/test_ops \
 *          tests/gpu/test_ops.cu engine/cuda/gemm.cu engine/cuda/ops.cu -lcublasLt */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <string>
#include <vector>

#include <cublasLt.h> /* cublasLtGetVersion, for the report */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "gemm.cuh"
#include "gemv.cuh" /* enum cuda_wtype */
#include "ops.cuh"
#include "rmsnorm.cuh"

#define HARNESS_SEED 0x5eed0ull
#define GUARD 64       /* poisoned elements after each output, which must stay poisoned */
#include "harness.cuh"

#define GEMM_TOL 1e-5 /* exact 16-bit products, f32 accumulation */
#define OPS_TOL 1e-5  /* float expf/tanhf/rsqrtf against double */
#define EMBED_TOL 1e-6 /* one float rounding of an exact value */

/* ---- results ---- */


struct bench {
        std::string model, wtype;
        int rows, k, ntok, nsets, reps;
        double us, tflops, wgbs;
};

static std::vector<check> checks;
static std::vector<bench> benches;

static std::vector<uint16_t> to_host16(const void *d, size_t n)
{
        std::vector<uint16_t> h(n);
        CUDA_CHECK_ABORT(cudaMemcpy(h.data(), d, 2 * n, cudaMemcpyDeviceToHost));
        return h;
}

static void sync_or_abort(void)
{
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
}

/* out: n + GUARD floats read back from the device. ref: indices idx (or all when empty).
 * Error is ||out - ref|| / ||ref|| over the compared elements. */
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
        c.err = den > 0.0 ? sqrt(num / den) : (num > 0.0 ? INFINITY : 0.0);
        c.pass = c.unwritten == 0 && c.guard_hit == 0 && c.err <= tol && !isnan(c.err);
        printf("check %-52s err %.3e (tol %.0e) unwritten %zu guard %zu  %s\n", name.c_str(),
               c.err, tol, c.unwritten, c.guard_hit, c.pass ? "ok" : "FAIL");
        checks.push_back(c);
        return c;
}

/* A yes/no check; err is the count of what went wrong (0 when it passed). */
static void check_flag(const std::string &name, bool pass, double bad = -1.0)
{
        check c{name, bad >= 0.0 ? bad : (pass ? 0.0 : 1.0), 0.0, 0, 0, pass};
        printf("check %-52s %s", name.c_str(), pass ? "ok" : "FAIL");
        if (bad > 0.0)
                printf(" (%.0f bad)", bad);
        printf("\n");
        checks.push_back(c);
}

/* ---- f32 → F16/BF16 ---- */

/* round to nearest even, by integer arithmetic (the carry turns the largest finite values
 * that round up into infinity, as IEEE rounding does) */
static uint16_t host_f32_to_bf16(float f)
{
        uint32_t u;
        memcpy(&u, &f, 4);
        return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static uint16_t host_round(float f, uint32_t wtype)
{
        return wtype == CUDA_WTYPE_BF16 ? host_f32_to_bf16(f)
                                        : __half_as_ushort(__float2half_rn(f));
}

static bool w16_is_nan(uint16_t v, uint32_t wtype)
{
        return wtype == CUDA_WTYPE_BF16 ? (v & 0x7f80) == 0x7f80 && (v & 0x7f)
                                        : (v & 0x7c00) == 0x7c00 && (v & 0x3ff);
}

/* Inputs that matter for rounding: random bits (NaN, inf, subnormals, huge), values in the
 * F16 range with random mantissas, exact ties of both types, and the edges. */
static std::vector<float> cvt_inputs(size_t n)
{
        std::vector<float> v(n);
        uint64_t s = seed_next();
        const float edges[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65519.99f,
                               65520.0f, -65520.0f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f,
                               2.9802326e-08f, 3.4028235e38f, -3.4028235e38f, 1.1754944e-38f,
                               1.0f, 1.00390625f, 1.001953125f, 1.0009765625f};
        for (size_t i = 0; i < n; i++) {
                s = mix64(s);
                uint32_t u = (uint32_t)s;
                const uint32_t sign = (uint32_t)(s >> 32) & 0x80000000u;
                switch ((s >> 40) % 5) {
                case 0: /* any bits */
                        break;
                case 1: /* F16's exponent range and a little past both ends */
                        u = sign | (uint32_t)(127 - 27 + (s >> 48) % 45) << 23 | (u & 0x7fffff);
                        break;
                case 2: /* F16 ties: the 13 dropped bits are 1 0…0 */
                        u = sign | (uint32_t)(127 - 14 + (s >> 48) % 30) << 23 |
                            (u & 0x7fe000u) | 0x1000u;
                        break;
                case 3: /* BF16 ties */
                        u = (u & 0xffff0000u) | 0x8000u;
                        break;
                default: /* one above or below a BF16 tie */
                        u = (u & 0xffff0000u) | ((s >> 50) & 1 ? 0x8001u : 0x7fffu);
                        break;
                }
                memcpy(&v[i], &u, 4);
        }
        for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]) && i < n; i++)
                v[i] = edges[i];
        return v;
}

/* src_off, dst_off in elements: 0 takes the vector path, 1 the scalar one. */
static void check_f32_to_w16(uint32_t wtype, size_t n, int src_off, int dst_off)
{
        const std::vector<float> h = cvt_inputs(n);
        float *src = dev_alloc_f32(n + 4);
        uint16_t *dst = (uint16_t *)dev_alloc(2 * (n + 8 + GUARD));
        CUDA_CHECK_ABORT(cudaMemcpy(src + src_off, h.data(), 4 * n, cudaMemcpyHostToDevice));
        CUDA_CHECK_ABORT(cudaMemset(dst, 0xa5, 2 * (n + 8 + GUARD)));
        CUDA_OK_OR_ABORT(cuda_f32_to_w16(wtype, src + src_off, dst + dst_off, n, 0));
        sync_or_abort();
        const std::vector<uint16_t> out = to_host16(dst, n + 8 + GUARD);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
                const uint16_t o = out[dst_off + i];
                if (isnan(h[i]) ? !w16_is_nan(o, wtype) : o != host_round(h[i], wtype)) {
                        if (bad < 5)
                                printf("  f32_to_%s[%zu]: %.9g -> 0x%04x, host 0x%04x\n",
                                       wtype_name(wtype), i, h[i], o, host_round(h[i], wtype));
                        bad++;
                }
        }
        for (int i = 0; i < dst_off; i++)
                bad += out[i] != 0xa5a5;
        for (size_t i = dst_off + n; i < out.size(); i++)
                bad += out[i] != 0xa5a5;
        char name[96];
        snprintf(name, sizeof(name), "f32_to_%s n=%zu src+%d dst+%d bitwise", wtype_name(wtype), n,
                 src_off, dst_off);
        check_flag(name, bad == 0, (double)bad);
        CUDA_CHECK_ABORT(cudaFree(src));
        CUDA_CHECK_ABORT(cudaFree(dst));
}

/* ---- GEMM ---- */

/* CPU double reference for rows sel (all tokens), in [t][j] order with the matching indices
 * into y. */
static void gemm_cpu_ref(uint32_t wtype, const void *w, const std::vector<double> &xd, int rows,
                         int k, int ntok, const std::vector<int> &sel, std::vector<double> &ref,
                         std::vector<size_t> &idx)
{
        std::vector<uint16_t> hw(k);
        std::vector<double> wd(k);
        ref.assign((size_t)ntok * sel.size(), 0.0);
        idx.assign(ref.size(), 0);
        for (size_t j = 0; j < sel.size(); j++) {
                const int r = sel[j];
                CUDA_CHECK_ABORT(cudaMemcpy(hw.data(), (const uint16_t *)w + (size_t)r * k,
                                            2 * (size_t)k, cudaMemcpyDeviceToHost));
                for (int i = 0; i < k; i++)
                        wd[i] = w16_to_double(hw[i], wtype);
                for (int t = 0; t < ntok; t++) {
                        const double *xt = &xd[(size_t)t * k];
                        double s = 0.0;
                        for (int i = 0; i < k; i++)
                                s += wd[i] * xt[i];
                        const size_t o = (size_t)t * rows + r;
                        ref[(size_t)t * sel.size() + j] = s;
                        idx[(size_t)t * sel.size() + j] = o;
                }
        }
}

/* cuda_gemm and cuda_gemm_ref, beta 0 (into NaN) and beta 1 (onto random values), against
 * the CPU on all rows (small shapes) or a sample of rows; for sampled shapes also fast vs
 * plain on every element. X is made by cuda_f32_to_w16, as the engine makes it. */
static void check_gemm(struct cuda_gemm *g, uint32_t wtype, int rows, int k, int ntok)
{
        const size_t wn = (size_t)rows * k, xn = (size_t)ntok * k, yn = (size_t)ntok * rows;
        void *w = dev_alloc(2 * wn), *x = dev_alloc(2 * xn);
        float *xf = dev_alloc_f32(xn), *y = dev_alloc_f32(yn + GUARD);
        float *y2 = dev_alloc_f32(yn + GUARD), *y0 = dev_alloc_f32(yn);
        rand_w16(w, wn, wtype);
        rand_f32(xf, xn);
        CUDA_OK_OR_ABORT(cuda_f32_to_w16(wtype, xf, x, xn, 0));
        rand_f32(y0, yn, 4.0f);

        const std::vector<uint16_t> hx = to_host16(x, xn);
        std::vector<double> xd(xn);
        for (size_t i = 0; i < xn; i++)
                xd[i] = w16_to_double(hx[i], wtype);
        const std::vector<float> hy0 = to_host(y0, yn);

        std::vector<int> sel;
        const bool full = (double)rows * k * ntok <= (double)(1u << 28);
        if (full) {
                for (int r = 0; r < rows; r++)
                        sel.push_back(r);
        } else {
                sel = {0, 1, rows / 2, rows - 2, rows - 1};
                for (int i = 0; i < 59; i++)
                        sel.push_back((int)(mix64(seed_next()) % (uint64_t)rows));
        }
        std::vector<double> ref0, ref1;
        std::vector<size_t> idx;
        gemm_cpu_ref(wtype, w, xd, rows, k, ntok, sel, ref0, idx);
        ref1 = ref0; /* beta 1: onto y0 */
        for (size_t j = 0; j < ref1.size(); j++)
                ref1[j] += hy0[idx[j]];
        const std::vector<size_t> cmp_idx = full ? std::vector<size_t>{} : idx;

        char name[128], shape[64];
        snprintf(shape, sizeof(shape), "%s %d->%d t=%d%s", wtype_name(wtype), k, rows, ntok,
                 full ? "" : " (64 rows vs cpu)");
        std::vector<float> hf, hr;
        for (int beta = 0; beta <= 1; beta++) {
                const std::vector<double> &ref = beta ? ref1 : ref0;
                for (int v = 0; v < 2; v++) {
                        float *out = v ? y2 : y;
                        poison(out, yn);
                        if (beta)
                                CUDA_CHECK_ABORT(cudaMemcpy(out, y0, 4 * yn,
                                                            cudaMemcpyDeviceToDevice));
                        CUDA_OK_OR_ABORT(v ? cuda_gemm_ref(wtype, w, x, out, rows, k, ntok,
                                                           (float)beta, 0)
                                           : cuda_gemm(g, wtype, w, x, out, rows, k, ntok,
                                                       (float)beta, 0));
                        sync_or_abort();
                        snprintf(name, sizeof(name), "gemm%s %s%s", v ? "_ref" : "", shape,
                                 beta ? " beta1" : "");
                        std::vector<float> h = to_host(out, yn + GUARD);
                        compare(name, h, ref, cmp_idx, yn, GEMM_TOL);
                        (v ? hr : hf) = std::move(h);
                }
                if (!full) { /* every element: fast vs plain (both float) */
                        std::vector<double> r2(hr.begin(), hr.begin() + yn);
                        snprintf(name, sizeof(name), "gemm %s %d->%d t=%d%s vs ref all",
                                 wtype_name(wtype), k, rows, ntok, beta ? " beta1" : "");
                        compare(name, hf, r2, {}, yn, GEMM_TOL);
                }
        }
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(xf));
        CUDA_CHECK_ABORT(cudaFree(y));
        CUDA_CHECK_ABORT(cudaFree(y2));
        CUDA_CHECK_ABORT(cudaFree(y0));
}

/* Capture y = W·X then y += W·X into a graph under the strictest capture mode (any
 * allocation or synchronization in the library fails the capture), replay it twice into
 * poisoned memory, and require the eager result bit for bit. */
static void check_gemm_graph(struct cuda_gemm *g, uint32_t wtype, int rows, int k, int ntok)
{
        const size_t wn = (size_t)rows * k, xn = (size_t)ntok * k, yn = (size_t)ntok * rows;
        void *w = dev_alloc(2 * wn), *x = dev_alloc(2 * xn);
        float *ye = dev_alloc_f32(yn + GUARD), *yg = dev_alloc_f32(yn + GUARD);
        rand_w16(w, wn, wtype);
        rand_w16(x, xn, wtype);
        CUDA_OK_OR_ABORT(cuda_gemm_prepare(g, wtype, rows, k, ntok));

        /* st does not wait for the legacy stream that filled and poisoned: sync first */
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        poison(ye, yn);
        sync_or_abort();
        CUDA_OK_OR_ABORT(cuda_gemm(g, wtype, w, x, ye, rows, k, ntok, 0.0f, st));
        CUDA_OK_OR_ABORT(cuda_gemm(g, wtype, w, x, ye, rows, k, ntok, 1.0f, st));
        CUDA_CHECK_ABORT(cudaStreamSynchronize(st));

        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        const int r0 = cuda_gemm(g, wtype, w, x, yg, rows, k, ntok, 0.0f, st);
        const int r1 = cuda_gemm(g, wtype, w, x, yg, rows, k, ntok, 1.0f, st);
        const cudaError_t ec = cudaStreamEndCapture(st, &graph);
        char name[128];
        snprintf(name, sizeof(name), "gemm %s %d->%d t=%d graph capture", wtype_name(wtype), k,
                 rows, ntok);
        if (r0 < 0 || r1 < 0 || ec != cudaSuccess) {
                printf("  capture: cuda_gemm %d %d, EndCapture %s\n", r0, r1,
                       cudaGetErrorString(ec));
                check_flag(name, false);
                (void)cudaGetLastError();
        } else {
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&exec, graph, 0));
                size_t bad = 0;
                for (int rep = 0; rep < 2; rep++) {
                        poison(yg, yn);
                        sync_or_abort();
                        CUDA_CHECK_ABORT(cudaGraphLaunch(exec, st));
                        CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                        const std::vector<float> a = to_host(ye, yn + GUARD),
                                                 b = to_host(yg, yn + GUARD);
                        bad += memcmp(a.data(), b.data(), 4 * (yn + GUARD)) != 0;
                        for (size_t i = 0; i < yn; i++)
                                bad += isnan(b[i]);
                }
                snprintf(name, sizeof(name), "gemm %s %d->%d t=%d graph == eager bitwise",
                         wtype_name(wtype), k, rows, ntok);
                check_flag(name, bad == 0, (double)bad);
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(exec));
                CUDA_CHECK_ABORT(cudaGraphDestroy(graph));
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(ye));
        CUDA_CHECK_ABORT(cudaFree(yg));
}

/* ---- embedding ---- */

/* Batch-invariant mode: the rows of a product computed alone, in a batch of 7, 64 or 300
 * tokens are bitwise the same (the engine's same-seed-alone-or-batched guarantee). */
static void check_gemm_invariant(uint32_t wtype, int rows, int k)
{
        struct cuda_gemm *g;
        CUDA_OK_OR_ABORT(cuda_gemm_create(0, &g));
        CUDA_OK_OR_ABORT(cuda_gemm_set_invariant(g, 256));
        const int big = 300;
        void *w = dev_alloc((size_t)rows * k * 2), *x = dev_alloc((size_t)big * k * 2);
        float *y = dev_alloc_f32((size_t)big * rows + GUARD), *y1 = dev_alloc_f32((size_t)big * rows + GUARD);
        rand_w16(w, (size_t)rows * k, wtype);
        rand_w16(x, (size_t)big * k, wtype);
        sync_or_abort();
        CUDA_OK_OR_ABORT(cuda_gemm(g, wtype, w, x, y, rows, k, big, 0.0f, 0));
        std::vector<float> ref = to_host(y, (size_t)big * rows);
        size_t bad = 0;
        for (int n : {1, 7, 64, 255}) {
                poison(y1, (size_t)big * rows);
                CUDA_OK_OR_ABORT(cuda_gemm(g, wtype, w, x, y1, rows, k, n, 0.0f, 0));
                std::vector<float> o = to_host(y1, (size_t)n * rows);
                bad += memcmp(o.data(), ref.data(), (size_t)n * rows * sizeof(float)) != 0;
        }
        char name[128];
        snprintf(name, sizeof(name), "gemm batch-invariant %s %dx%d: ntok 1/7/64/255 == rows of 300", wtype_name(wtype),
                 rows, k);
        check_flag(name, bad == 0, (double)bad);
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(y));
        CUDA_CHECK_ABORT(cudaFree(y1));
        cuda_gemm_free(g);
}

static void check_embed(uint32_t etype, int n_vocab, int n, int ntok, bool unaligned)
{
        const size_t esz = etype == 0 ? 4 : 2, len = (size_t)n * ntok;
        void *E = dev_alloc(esz * n_vocab * n);
        if (etype == 0)
                rand_f32((float *)E, (size_t)n_vocab * n, 3.0f);
        else
                rand_w16(E, (size_t)n_vocab * n, etype == 1 ? CUDA_WTYPE_F16 : CUDA_WTYPE_BF16);
        std::vector<int32_t> ht(ntok);
        const int32_t fixed[] = {0, n_vocab - 1, -1, n_vocab, INT32_MIN, INT32_MAX};
        for (int t = 0; t < ntok; t++)
                ht[t] = t < 6 ? fixed[t] : (int32_t)(mix64(seed_next()) % (uint64_t)n_vocab);
        int32_t *tok = (int32_t *)dev_alloc(4 * ntok);
        CUDA_CHECK_ABORT(cudaMemcpy(tok, ht.data(), 4 * ntok, cudaMemcpyHostToDevice));
        float *xb = dev_alloc_f32(len + 1 + GUARD), *x = xb + (unaligned ? 1 : 0);

        std::vector<double> ref(len);
        const float scale = 45.254834f; /* gemma's sqrt(2048) */
        std::vector<uint8_t> row(esz * n);
        for (int t = 0; t < ntok; t++) {
                const bool ok = ht[t] >= 0 && ht[t] < n_vocab;
                if (ok)
                        CUDA_CHECK_ABORT(cudaMemcpy(row.data(),
                                                    (const char *)E + esz * n * (size_t)ht[t],
                                                    esz * n, cudaMemcpyDeviceToHost));
                for (int i = 0; i < n; i++) {
                        double v = 0.0;
                        if (ok && etype == 0) {
                                float f;
                                memcpy(&f, &row[4 * (size_t)i], 4);
                                v = f;
                        } else if (ok) {
                                uint16_t u;
                                memcpy(&u, &row[2 * (size_t)i], 2);
                                v = w16_to_double(u, etype == 1 ? CUDA_WTYPE_F16 : CUDA_WTYPE_BF16);
                        }
                        ref[(size_t)t * n + i] = v * scale;
                }
        }
        const char *tn = etype == 0 ? "f32" : etype == 1 ? "f16" : "bf16";
        char name[128];
        for (int v = 0; v < 2; v++) {
                poison(x, len);
                CUDA_OK_OR_ABORT(v ? cuda_embed_ref(etype, E, n_vocab, tok, x, n, ntok, scale, 0)
                                   : cuda_embed(etype, E, n_vocab, tok, x, n, ntok, scale, 0));
                sync_or_abort();
                const std::vector<float> h = to_host(x, len + GUARD);
                snprintf(name, sizeof(name), "embed%s %s n=%d t=%d%s", v ? "_ref" : "", tn, n,
                         ntok, unaligned ? " unaligned" : "");
                compare(name, h, ref, {}, len, EMBED_TOL);
                size_t nonzero = 0; /* the out-of-range ids: exactly +0 */
                for (int t = 2; t < 6 && t < ntok; t++)
                        for (int i = 0; i < n; i++) {
                                uint32_t u;
                                memcpy(&u, &h[(size_t)t * n + i], 4);
                                nonzero += u != 0;
                        }
                snprintf(name, sizeof(name), "embed%s %s n=%d bad ids -> zero rows",
                         v ? "_ref" : "", tn, n);
                check_flag(name, nonzero == 0, (double)nonzero);
        }
        CUDA_CHECK_ABORT(cudaFree(E));
        CUDA_CHECK_ABORT(cudaFree(tok));
        CUDA_CHECK_ABORT(cudaFree(xb));
}

/* ---- gated activations ---- */

static double silu_d(double g)
{
        return g / (1.0 + exp(-g));
}

static double gelu_d(double g)
{
        if (g <= -10.0)
                return 0.0;
        if (g >= 10.0)
                return g;
        return 0.5 * g * (1.0 + tanh(0.7978845608 * (g + 0.044715 * g * g * g)));
}

static void check_glu(int act, int n, int ntok, bool unaligned)
{
        const size_t len = (size_t)n * ntok;
        float *gub = dev_alloc_f32(2 * len + 1), *gu = gub + (unaligned ? 1 : 0);
        float *ob = dev_alloc_f32(len + 1 + GUARD), *out = ob + (unaligned ? 1 : 0);
        rand_f32(gub, 2 * len + 1, 15.0f); /* past ±10 often */
        /* the saturation edges and exp overflow, in token 0's gates */
        const float sp[] = {-10.0f, 10.0f, -9.999f, 9.999f, -10.001f, 10.001f, -100.0f, 100.0f,
                            -88.8f, 88.8f, 0.0f, -0.0f, 1e-30f, -1e-30f};
        const size_t nsp = std::min<size_t>(sizeof(sp) / sizeof(sp[0]), (size_t)n);
        CUDA_CHECK_ABORT(cudaMemcpy(gu, sp, 4 * nsp, cudaMemcpyHostToDevice));
        const std::vector<float> h = to_host(gu, 2 * len);
        std::vector<double> ref(len);
        for (int t = 0; t < ntok; t++)
                for (int i = 0; i < n; i++) {
                        const double g = h[(size_t)t * 2 * n + i], u = h[(size_t)t * 2 * n + n + i];
                        ref[(size_t)t * n + i] = (act == CUDA_ACT_GELU ? gelu_d(g) : silu_d(g)) * u;
                }
        char name[128];
        for (int v = 0; v < 2; v++) {
                poison(out, len);
                CUDA_OK_OR_ABORT(v ? cuda_glu_ref(act, gu, out, n, ntok, 0)
                                   : cuda_glu(act, gu, out, n, ntok, 0));
                sync_or_abort();
                snprintf(name, sizeof(name), "glu%s %s n=%d t=%d%s", v ? "_ref" : "",
                         act == CUDA_ACT_GELU ? "gelu" : "silu", n, ntok,
                         unaligned ? " unaligned" : "");
                compare(name, to_host(out, len + GUARD), ref, {}, len, OPS_TOL);
        }
        CUDA_CHECK_ABORT(cudaFree(gub));
        CUDA_CHECK_ABORT(cudaFree(ob));
}

/* ---- RMSNorm and gated activations written as 16-bit values ---- */

/* cuda_rmsnorm_w16 / cuda_glu_w16 against the float kernel followed by cuda_f32_to_w16,
 * bitwise, guard untouched; odd n (the scalar path) and an 8-byte-aligned output too. */
static void check_w16_out(uint32_t wtype, int n, int ntok, bool odd_out)
{
        const size_t len = (size_t)n * ntok;
        float *x = dev_alloc_f32(2 * len), *w = dev_alloc_f32(n), *f = dev_alloc_f32(len);
        uint16_t *ref = (uint16_t *)dev_alloc(2 * len), *ob = (uint16_t *)dev_alloc(2 * (len + 4 + GUARD));
        uint16_t *o = ob + (odd_out ? 4 : 0); /* 8 bytes past a 16-byte boundary */
        rand_f32(x, 2 * len, 12.0f);
        rand_f32(w, n, 0.5f, 1.0f);
        for (int what = 0; what < 3; what++) {
                CUDA_CHECK_ABORT(cudaMemset(ob, 0xff, 2 * (len + 4 + GUARD)));
                const int act = what == 2 ? CUDA_ACT_GELU : CUDA_ACT_SILU;
                if (what == 0) {
                        CUDA_OK_OR_ABORT(cuda_rmsnorm(x, w, f, n, ntok, 1e-5f, 0));
                        CUDA_OK_OR_ABORT(cuda_rmsnorm_w16(x, w, o, wtype, n, ntok, 1e-5f, 0));
                } else {
                        CUDA_OK_OR_ABORT(cuda_glu(act, x, f, n, ntok, 0));
                        CUDA_OK_OR_ABORT(cuda_glu_w16(act, x, o, wtype, n, ntok, 0));
                }
                CUDA_OK_OR_ABORT(cuda_f32_to_w16(wtype, f, ref, len, 0));
                sync_or_abort();
                const std::vector<uint16_t> a = to_host16(o, len + GUARD), b = to_host16(ref, len);
                size_t bad = 0, guard = 0;
                for (size_t i = 0; i < len; i++)
                        bad += a[i] != b[i];
                for (size_t i = len; i < len + GUARD; i++)
                        guard += a[i] != 0xffff;
                char name[128];
                snprintf(name, sizeof(name), "%s_w16 %s n=%d t=%d%s == float kernel + f32_to_w16 bitwise",
                         what == 0 ? "rmsnorm" : what == 1 ? "glu silu" : "glu gelu", wtype_name(wtype), n, ntok,
                         odd_out ? " out+8B" : "");
                check_flag(name, bad == 0 && guard == 0, (double)(bad + guard));
        }
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(f));
        CUDA_CHECK_ABORT(cudaFree(ref));
        CUDA_CHECK_ABORT(cudaFree(ob));
}

/* ---- residual add with post-norm ---- */

static void check_add_norm(int n, int ntok, bool with_w, bool unaligned)
{
        const float eps = 1e-6f;
        const size_t len = (size_t)n * ntok;
        const int off = unaligned ? 1 : 0;
        float *xb = dev_alloc_f32(len + 1 + GUARD), *x = xb + off;
        float *yb = dev_alloc_f32(len + 1), *y = yb + off;
        float *w = with_w ? dev_alloc_f32(n) : NULL, *x0 = dev_alloc_f32(len);
        rand_f32(x0, len);
        rand_f32(yb, len + 1, 2.0f);
        if (w)
                rand_f32(w, n, 0.5f, 1.0f);
        const std::vector<float> hx = to_host(x0, len), hy = to_host(y, len);
        const std::vector<float> hw = w ? to_host(w, n) : std::vector<float>();
        std::vector<double> ref(len);
        for (int t = 0; t < ntok; t++) {
                const float *yr = &hy[(size_t)t * n];
                double scale = 1.0;
                if (w) {
                        double ss = 0.0;
                        for (int i = 0; i < n; i++)
                                ss += (double)yr[i] * yr[i];
                        scale = 1.0 / sqrt(ss / n + eps);
                }
                for (int i = 0; i < n; i++)
                        ref[(size_t)t * n + i] = hx[(size_t)t * n + i] +
                                                 (w ? yr[i] * scale * hw[i] : (double)yr[i]);
        }
        char name[128];
        for (int v = 0; v < 2; v++) {
                poison(x, len); /* the guard; then the input, in place */
                CUDA_CHECK_ABORT(cudaMemcpy(x, x0, 4 * len, cudaMemcpyDeviceToDevice));
                CUDA_OK_OR_ABORT(v ? cuda_add_norm_ref(x, y, w, n, ntok, eps, 0)
                                   : cuda_add_norm(x, y, w, n, ntok, eps, 0));
                sync_or_abort();
                snprintf(name, sizeof(name), "add_norm%s n=%d t=%d%s%s", v ? "_ref" : "", n, ntok,
                         w ? "" : " no-w", unaligned ? " unaligned" : "");
                compare(name, to_host(x, len + GUARD), ref, {}, len, OPS_TOL);
        }
        CUDA_CHECK_ABORT(cudaFree(xb));
        CUDA_CHECK_ABORT(cudaFree(yb));
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x0));
}

/* ---- gather rows ---- */

static void check_gather_rows(int n, int nsrc, int nrows, bool unaligned)
{
        const int off = unaligned ? 1 : 0;
        float *sb = dev_alloc_f32((size_t)n * nsrc + 1), *src = sb + off;
        float *db = dev_alloc_f32((size_t)n * nrows + 1 + GUARD), *dst = db + off;
        rand_f32(sb, (size_t)n * nsrc + 1);
        std::vector<int32_t> hi(nrows);
        const int32_t fixed[] = {nsrc - 1, 0, 0, -1};
        for (int j = 0; j < nrows; j++)
                hi[j] = j < 4 ? fixed[j] : (int32_t)(mix64(seed_next()) % (uint64_t)nsrc);
        int32_t *idx = (int32_t *)dev_alloc(4 * nrows);
        CUDA_CHECK_ABORT(cudaMemcpy(idx, hi.data(), 4 * nrows, cudaMemcpyHostToDevice));
        const std::vector<float> hs = to_host(src, (size_t)n * nsrc);
        std::vector<double> ref((size_t)n * nrows);
        for (int j = 0; j < nrows; j++)
                for (int i = 0; i < n; i++)
                        ref[(size_t)j * n + i] = hi[j] < 0 ? 0.0 : hs[(size_t)hi[j] * n + i];
        poison(dst, (size_t)n * nrows);
        CUDA_OK_OR_ABORT(cuda_gather_rows(src, idx, dst, n, nrows, 0));
        sync_or_abort();
        char name[128];
        snprintf(name, sizeof(name), "gather_rows n=%d rows=%d%s (exact)", n, nrows,
                 unaligned ? " unaligned" : "");
        compare(name, to_host(dst, (size_t)n * nrows + GUARD), ref, {}, (size_t)n * nrows, 0.0);
        CUDA_CHECK_ABORT(cudaFree(sb));
        CUDA_CHECK_ABORT(cudaFree(db));
        CUDA_CHECK_ABORT(cudaFree(idx));
}

/* ---- soft-cap ---- */

static void check_softcap(size_t n, float cap, bool unaligned)
{
        const int off = unaligned ? 1 : 0;
        float *yb = dev_alloc_f32(n + 1 + GUARD), *y = yb + off;
        poison(y, n);
        rand_f32(y, n, 100.0f);
        const std::vector<float> h = to_host(y, n);
        std::vector<double> ref(n);
        for (size_t i = 0; i < n; i++)
                ref[i] = cap * tanh(h[i] / (double)cap);
        CUDA_OK_OR_ABORT(cuda_softcap(y, n, cap, 0));
        sync_or_abort();
        char name[128];
        snprintf(name, sizeof(name), "softcap n=%zu cap=%g%s", n, cap,
                 unaligned ? " unaligned" : "");
        compare(name, to_host(y, n + GUARD), ref, {}, n, OPS_TOL);
        CUDA_CHECK_ABORT(cudaFree(yb));
}

/* ---- the ops inside a graph ---- */

/* embed → add_norm → glu → softcap captured and replayed, against the same calls eager. */
static void check_ops_graph(void)
{
        const int n = 2048, ntok = 5, nv = 300;
        void *E = dev_alloc(2 * (size_t)nv * n);
        rand_w16(E, (size_t)nv * n, CUDA_WTYPE_BF16);
        int32_t *tok = (int32_t *)dev_alloc(4 * ntok);
        const int32_t ht[ntok] = {3, 299, 0, 17, 3};
        CUDA_CHECK_ABORT(cudaMemcpy(tok, ht, sizeof(ht), cudaMemcpyHostToDevice));
        float *w = dev_alloc_f32(n), *y = dev_alloc_f32((size_t)n * ntok);
        float *gu = dev_alloc_f32(2 * (size_t)n * ntok);
        rand_f32(w, n, 0.5f, 1.0f);
        rand_f32(y, (size_t)n * ntok);
        rand_f32(gu, 2 * (size_t)n * ntok, 12.0f);
        float *xs[2], *os[2];
        const size_t len = (size_t)n * ntok;
        for (int i = 0; i < 2; i++) {
                xs[i] = dev_alloc_f32(len + GUARD);
                os[i] = dev_alloc_f32(len + GUARD);
                poison(xs[i], len);
                poison(os[i], len);
        }
        cudaStream_t st; /* does not wait for the legacy stream that filled and poisoned */
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        sync_or_abort();
        auto seq = [&](float *x, float *o) {
                int r = cuda_embed(CUDA_WTYPE_BF16, E, nv, tok, x, n, ntok, 45.25f, st);
                if (!r)
                        r = cuda_add_norm(x, y, w, n, ntok, 1e-6f, st);
                if (!r)
                        r = cuda_glu(CUDA_ACT_GELU, gu, o, n, ntok, st);
                if (!r)
                        r = cuda_softcap(x, len, 30.0f, st);
                return r;
        };
        CUDA_OK_OR_ABORT(seq(xs[0], os[0]));
        CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        const int r = seq(xs[1], os[1]);
        const cudaError_t ec = cudaStreamEndCapture(st, &graph);
        bool pass = r == 0 && ec == cudaSuccess;
        if (pass) {
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&exec, graph, 0));
                CUDA_CHECK_ABORT(cudaGraphLaunch(exec, st));
                CUDA_CHECK_ABORT(cudaStreamSynchronize(st));
                const std::vector<float> x0 = to_host(xs[0], len + GUARD),
                                         x1 = to_host(xs[1], len + GUARD),
                                         o0 = to_host(os[0], len + GUARD),
                                         o1 = to_host(os[1], len + GUARD);
                pass = !memcmp(x0.data(), x1.data(), 4 * x0.size()) &&
                       !memcmp(o0.data(), o1.data(), 4 * o0.size());
                for (size_t i = 0; i < len; i++) /* and everything written */
                        pass = pass && !isnan(x1[i]) && !isnan(o1[i]);
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(exec));
                CUDA_CHECK_ABORT(cudaGraphDestroy(graph));
        } else {
                printf("  capture: ops %d, EndCapture %s\n", r, cudaGetErrorString(ec));
                (void)cudaGetLastError();
        }
        check_flag("ops embed/add_norm/glu/softcap graph == eager bitwise", pass);
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        for (int i = 0; i < 2; i++) {
                CUDA_CHECK_ABORT(cudaFree(xs[i]));
                CUDA_CHECK_ABORT(cudaFree(os[i]));
        }
        CUDA_CHECK_ABORT(cudaFree(E));
        CUDA_CHECK_ABORT(cudaFree(tok));
        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(y));
        CUDA_CHECK_ABORT(cudaFree(gu));
}

/* ---- argument checking and the shape cache ---- */

static void expect(const char *what, int got, int want)
{
        char name[128];
        snprintf(name, sizeof(name), "args %s -> %d", what, want);
        if (got != want)
                printf("  %s returned %d, expected %d\n", what, got, want);
        check_flag(name, got == want);
}

static void check_args(struct cuda_gemm *g)
{
        const int B = CUDA_WTYPE_BF16;
        void *w = dev_alloc(2 * 64 * 64), *x = dev_alloc(2 * 64 * 64);
        float *y = dev_alloc_f32(64 * 64 + 8);
        int32_t *tok = (int32_t *)dev_alloc(64);
        CUDA_CHECK_ABORT(cudaMemset(tok, 0, 64));
        CUDA_CHECK_ABORT(cudaMemset(y, 0, 4 * 64 * 64));

        expect("gemm_create out NULL", cuda_gemm_create(0, NULL), -EINVAL);
        expect("gemm g NULL", cuda_gemm(NULL, B, w, x, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("gemm w NULL", cuda_gemm(g, B, NULL, x, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("gemm wtype 0", cuda_gemm(g, 0, w, x, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("gemm k 12", cuda_gemm(g, B, w, x, y, 64, 12, 1, 0.0f, 0), -EINVAL);
        expect("gemm rows -1", cuda_gemm(g, B, w, x, y, -1, 64, 1, 0.0f, 0), -EINVAL);
        expect("gemm ntok -1", cuda_gemm(g, B, w, x, y, 64, 64, -1, 0.0f, 0), -EINVAL);
        expect("gemm beta 0.5", cuda_gemm(g, B, w, x, y, 64, 64, 1, 0.5f, 0), -EINVAL);
        expect("gemm x misaligned", cuda_gemm(g, B, w, (char *)x + 2, y, 64, 64, 1, 0.0f, 0),
               -EINVAL);
        expect("gemm y misaligned", cuda_gemm(g, B, w, x, y + 1, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("gemm ntok 0", cuda_gemm(g, B, w, x, y, 64, 64, 0, 0.0f, 0), 0);
        expect("gemm_prepare ntok 0", cuda_gemm_prepare(g, B, 64, 64, 0), 0);
        expect("gemm_prepare k 4", cuda_gemm_prepare(g, B, 64, 4, 1), -EINVAL);
        expect("gemm_ref wtype 2", cuda_gemm_ref(2, w, x, y, 64, 64, 1, 0.0f, 0), -EINVAL);
        expect("gemm_ref ntok 0", cuda_gemm_ref(B, w, x, y, 64, 64, 0, 0.0f, 0), 0);
        expect("f32_to_w16 wtype 0", cuda_f32_to_w16(0, y, w, 8, 0), -EINVAL);
        expect("f32_to_w16 dst NULL", cuda_f32_to_w16(B, y, NULL, 8, 0), -EINVAL);
        expect("f32_to_w16 n 0", cuda_f32_to_w16(B, y, w, 0, 0), 0);
        expect("embed etype 2", cuda_embed(2, w, 64, tok, y, 64, 1, 1.0f, 0), -EINVAL);
        expect("embed tok NULL", cuda_embed(B, w, 64, NULL, y, 64, 1, 1.0f, 0), -EINVAL);
        expect("embed n -1", cuda_embed(B, w, 64, tok, y, -1, 1, 1.0f, 0), -EINVAL);
        expect("embed n_vocab -1", cuda_embed(B, w, -1, tok, y, 64, 1, 1.0f, 0), -EINVAL);
        expect("embed ntok 0", cuda_embed(B, w, 64, tok, y, 64, 0, 1.0f, 0), 0);
        expect("embed_ref etype 7", cuda_embed_ref(7, w, 64, tok, y, 64, 1, 1.0f, 0), -EINVAL);
        expect("glu act 2", cuda_glu(2, y, y, 8, 1, 0), -EINVAL);
        expect("glu_w16 wtype 0", cuda_glu_w16(CUDA_ACT_SILU, y, w, 0, 8, 1, 0), -EINVAL);
        expect("glu_w16 out NULL", cuda_glu_w16(CUDA_ACT_SILU, y, NULL, B, 8, 1, 0), -EINVAL);
        expect("rmsnorm_w16 wtype 2", cuda_rmsnorm_w16(y, y, w, 2, 8, 1, 1e-5f, 0), -EINVAL);
        expect("rmsnorm_w16 eps NaN", cuda_rmsnorm_w16(y, y, w, B, 8, 1, nanf(""), 0), -EINVAL);
        expect("glu out NULL", cuda_glu(CUDA_ACT_SILU, y, NULL, 8, 1, 0), -EINVAL);
        expect("glu n 0", cuda_glu(CUDA_ACT_SILU, y, y, 0, 1, 0), 0);
        expect("glu_ref ntok -1", cuda_glu_ref(CUDA_ACT_GELU, y, y, 8, -1, 0), -EINVAL);
        expect("add_norm eps -1", cuda_add_norm(y, y, y, 8, 1, -1.0f, 0), -EINVAL);
        expect("add_norm eps NaN", cuda_add_norm(y, y, y, 8, 1, NAN, 0), -EINVAL);
        expect("add_norm y NULL", cuda_add_norm(y, NULL, y, 8, 1, 1e-6f, 0), -EINVAL);
        expect("add_norm ntok 0", cuda_add_norm(y, y, y, 8, 0, 1e-6f, 0), 0);
        expect("add_norm_ref n -2", cuda_add_norm_ref(y, y, NULL, -2, 1, 1e-6f, 0), -EINVAL);
        expect("gather_rows nrows -1", cuda_gather_rows(y, tok, y, 8, -1, 0), -EINVAL);
        expect("gather_rows idx NULL", cuda_gather_rows(y, NULL, y, 8, 1, 0), -EINVAL);
        expect("gather_rows n 0", cuda_gather_rows(y, tok, y, 0, 1, 0), 0);
        expect("softcap cap 0", cuda_softcap(y, 8, 0.0f, 0), -EINVAL);
        expect("softcap cap inf", cuda_softcap(y, 8, INFINITY, 0), -EINVAL);
        expect("softcap cap NaN", cuda_softcap(y, 8, NAN, 0), -EINVAL);
        expect("softcap n 0", cuda_softcap(y, 0, 30.0f, 0), 0);
        sync_or_abort();
        check_flag("args: no CUDA error left behind", cudaGetLastError() == cudaSuccess);

        /* the shape cache: 256 shapes fit; the 257th replaces the oldest; all still run */
        struct cuda_gemm *g2;
        CUDA_OK_OR_ABORT(cuda_gemm_create(1 << 20, &g2));
        int fails = 0;
        for (int t = 1; t <= 256; t++)
                fails += cuda_gemm_prepare(g2, B, 64, 64, t) != 0;
        for (int t = 1; t <= 256; t++) /* again: hits, no new entries */
                fails += cuda_gemm_prepare(g2, B, 64, 64, t) != 0;
        check_flag("gemm cache: 256 shapes prepared (twice)", fails == 0, fails);
        expect("gemm_prepare 257th shape", cuda_gemm_prepare(g2, B, 64, 64, 257), 0);
        expect("gemm_prepare 258th shape", cuda_gemm_prepare(g2, B, 64, 64, 258), 0);
        expect("gemm cached shape, full cache", cuda_gemm(g2, B, w, x, y, 64, 64, 64, 0.0f, 0), 0);
        expect("gemm replaced shape again", cuda_gemm(g2, B, w, x, y, 64, 64, 1, 0.0f, 0), 0);
        sync_or_abort();
        cuda_gemm_free(g2);
        cuda_gemm_free(NULL);

        CUDA_CHECK_ABORT(cudaFree(w));
        CUDA_CHECK_ABORT(cudaFree(x));
        CUDA_CHECK_ABORT(cudaFree(y));
        CUDA_CHECK_ABORT(cudaFree(tok));
}

/* ---- GEMM timing ---- */

struct shape {
        const char *model;
        int rows, k;
        const char *what;
};

static const shape bench_shapes[] = {
        {"8B", 4096, 4096, "wq/wo"},     {"8B", 6144, 4096, "qkv"},
        {"8B", 28672, 4096, "gate+up"},  {"8B", 4096, 14336, "down"},
        {"8B", 128256, 4096, "output"},  {"1B", 2048, 2048, "wq/wo"},
        {"1B", 3072, 2048, "qkv"},       {"1B", 16384, 2048, "gate+up"},
        {"1B", 2048, 8192, "down"},      {"1B", 128256, 2048, "output"},
};
static const int bench_ntok[] = {8, 16, 32, 64, 128, 256, 512, 2048};

/* For each ntok: median time of one call over graph replays of one pass across nsets
 * weight/activation/output sets whose weights exceed the L2 several times, so each call
 * reads its weights from HBM as in a real forward pass. A handle per shape: its 8 ntok
 * values use 8 of the 64 cache entries. */
static void bench_gemm(const shape &s, uint32_t wtype, size_t l2_bytes)
{
        const int max_t = bench_ntok[sizeof(bench_ntok) / sizeof(bench_ntok[0]) - 1];
        const size_t wbytes = (size_t)s.rows * s.k * 2;
        int nsets = (int)std::min<size_t>(32, (4 * l2_bytes + wbytes - 1) / wbytes);
        nsets = std::max(nsets, wbytes > 4 * l2_bytes ? 1 : 2);
        std::vector<void *> w(nsets), x(nsets);
        std::vector<float *> y(nsets);
        for (int i = 0; i < nsets; i++) {
                w[i] = dev_alloc(wbytes);
                x[i] = dev_alloc(2 * (size_t)max_t * s.k);
                y[i] = dev_alloc_f32((size_t)max_t * s.rows);
                rand_w16(w[i], (size_t)s.rows * s.k, wtype);
                rand_w16(x[i], (size_t)max_t * s.k, wtype);
        }
        struct cuda_gemm *g;
        CUDA_OK_OR_ABORT(cuda_gemm_create(0, &g));
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        sync_or_abort();
        for (int ntok : bench_ntok) {
                CUDA_OK_OR_ABORT(cuda_gemm_prepare(g, wtype, s.rows, s.k, ntok));
                for (int i = 0; i < nsets; i++) /* eager once: modules loaded before capture */
                        CUDA_OK_OR_ABORT(cuda_gemm(g, wtype, w[i], x[i], y[i], s.rows, s.k, ntok,
                                                   0.0f, st));
                cudaGraph_t graph;
                cudaGraphExec_t exec;
                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                for (int i = 0; i < nsets; i++)
                        CUDA_OK_OR_ABORT(cuda_gemm(g, wtype, w[i], x[i], y[i], s.rows, s.k, ntok,
                                                   0.0f, st));
                CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &graph));
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&exec, graph, 0));
                const int reps = 25;
                const double median_ms = graph_median_ms(exec, st, 3, reps);
                const double sec = median_ms * 1e-3 / nsets;
                const double flop = 2.0 * s.rows * s.k * ntok;
                bench b{s.model, wtype_name(wtype), s.rows, s.k, ntok, nsets, reps, sec * 1e6,
                        flop / sec / 1e12, (double)wbytes / sec / 1e9};
                printf("bench gemm %-2s %-7s %s %6d x %-5d t=%-4d sets %2d %9.2f us %7.1f TFLOP/s"
                       " %7.1f GB/s\n",
                       s.model, s.what, b.wtype.c_str(), s.rows, s.k, ntok, nsets, b.us, b.tflops,
                       b.wgbs);
                benches.push_back(b);
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(exec));
                CUDA_CHECK_ABORT(cudaGraphDestroy(graph));
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        cuda_gemm_free(g);
        for (int i = 0; i < nsets; i++) {
                CUDA_CHECK_ABORT(cudaFree(w[i]));
                CUDA_CHECK_ABORT(cudaFree(x[i]));
                CUDA_CHECK_ABORT(cudaFree(y[i]));
        }
}

/* ---- main ---- */

int main(int argc, char **argv)
{
        const char *json = NULL;
        bool check_only = false;
        std::vector<uint32_t> bench_types = {CUDA_WTYPE_BF16};
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--json") && i + 1 < argc)
                        json = argv[++i];
                else if (!strcmp(argv[i], "--check-only"))
                        check_only = true;
                else if (!strcmp(argv[i], "--wtype") && i + 1 < argc) {
                        const char *t = argv[++i];
                        if (!strcmp(t, "bf16"))
                                bench_types = {CUDA_WTYPE_BF16};
                        else if (!strcmp(t, "f16"))
                                bench_types = {CUDA_WTYPE_F16};
                        else if (!strcmp(t, "both"))
                                bench_types = {CUDA_WTYPE_BF16, CUDA_WTYPE_F16};
                        else {
                                fprintf(stderr, "--wtype: bf16, f16 or both\n");
                                return 2;
                        }
                } else {
                        fprintf(stderr, "usage: %s [--json PATH] [--check-only]"
                                        " [--wtype bf16|f16|both]\n",
                                argv[0]);
                        return 2;
                }
        }
        cudaDeviceProp prop;
        int drv = 0, rt = 0;
        const size_t ltver = cublasLtGetVersion();
        char lt[48];
        snprintf(lt, sizeof(lt), " cublasLt %zu", ltver);
        if (!device_open(&prop, &drv, &rt, lt))
                return 77;

        struct cuda_gemm *g;
        CUDA_OK_OR_ABORT(cuda_gemm_create(0, &g));

        /* conversion first: the GEMM checks make their activations with it */
        for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16}) {
                check_f32_to_w16(wt, (1u << 20) + 13, 0, 0);
                check_f32_to_w16(wt, (1u << 20) + 13, 1, 0);
                check_f32_to_w16(wt, 4099, 0, 1);
                check_f32_to_w16(wt, 7, 0, 0);
        }

        for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16}) {
                check_w16_out(wt, 2048, 64, false);
                check_w16_out(wt, 4096, 3, true);
                check_w16_out(wt, 1001, 5, false);
        }

        const int gemm_shapes[][3] = {{64, 64, 1},     {1000, 264, 17},   {8, 8, 1},
                                      {37, 264, 3},    {1001, 1032, 33},  {2048, 2048, 64},
                                      {4096, 4096, 128}, {128256, 2048, 5}};
        for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16})
                for (auto &s : gemm_shapes)
                        check_gemm(g, wt, s[0], s[1], s[2]);
        check_gemm_graph(g, CUDA_WTYPE_BF16, 4096, 4096, 128);
        check_gemm_graph(g, CUDA_WTYPE_F16, 1000, 264, 17);
        check_gemm_graph(g, CUDA_WTYPE_BF16, 128256, 2048, 5);
        check_gemm_invariant(CUDA_WTYPE_BF16, 2048, 2048);
        check_gemm_invariant(CUDA_WTYPE_F16, 4096, 1024);
        check_gemm_invariant(CUDA_WTYPE_BF16, 16384, 2048);

        for (uint32_t et : {0u, 1u, 30u}) {
                check_embed(et, 1000, 2048, 9, false);
                check_embed(et, 1000, 1001, 7, false);
                check_embed(et, 1000, 2048, 6, true);
        }
        for (int a : {CUDA_ACT_SILU, CUDA_ACT_GELU}) {
                check_glu(a, 8192, 1, false);
                check_glu(a, 14336, 5, false);
                check_glu(a, 1001, 3, false);
                check_glu(a, 2048, 2, true);
        }
        for (bool with_w : {true, false}) {
                check_add_norm(2048, 1, with_w, false);
                check_add_norm(2304, 7, with_w, false);
                check_add_norm(4096, 33, with_w, false);
                check_add_norm(1001, 3, with_w, false);
                check_add_norm(2048, 2, with_w, true);
        }
        check_gather_rows(2048, 300, 9, false);
        check_gather_rows(1001, 50, 5, false);
        check_gather_rows(2048, 20, 6, true);
        check_softcap((size_t)128256 * 3 + 3, 30.0f, false);
        check_softcap((size_t)128256 * 2, 30.0f, true);
        check_softcap(5, 50.0f, false);
        check_ops_graph();
        check_args(g);
        cuda_gemm_free(g);

        if (!check_only)
                for (uint32_t wt : bench_types)
                        for (const shape &s : bench_shapes)
                                bench_gemm(s, wt, (size_t)prop.l2CacheSize);

        size_t failed = 0;
        for (const check &c : checks)
                failed += !c.pass;

        if (json) {
                FILE *f = fopen(json, "w");
                if (!f) {
                        perror(json);
                        return 1;
                }
                fprintf(f, "{\n  \"device\": \"%s\", \"sm\": \"%d%d\", \"sms\": %d,"
                           " \"l2_bytes\": %d, \"driver\": %d, \"runtime\": %d,"
                           " \"cublaslt\": %zu,\n",
                        prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                        prop.l2CacheSize, drv, rt, ltver);
                fprintf(f, "  \"checks_total\": %zu, \"checks_failed\": %zu,\n  \"checks\": [\n",
                        checks.size(), failed);
                for (size_t i = 0; i < checks.size(); i++) {
                        const check &c = checks[i];
                        fprintf(f, "    {\"name\": \"%s\", \"err\": %.3e, \"tol\": %.1e,"
                                   " \"unwritten\": %zu, \"guard_hit\": %zu, \"pass\": %s}%s\n",
                                c.name.c_str(), c.err, c.tol, c.unwritten, c.guard_hit,
                                c.pass ? "true" : "false", i + 1 < checks.size() ? "," : "");
                }
                fprintf(f, "  ],\n  \"gemm\": [\n");
                for (size_t i = 0; i < benches.size(); i++) {
                        const bench &b = benches[i];
                        fprintf(f, "    {\"model\": \"%s\", \"wtype\": \"%s\", \"rows\": %d,"
                                   " \"k\": %d, \"ntok\": %d, \"sets\": %d, \"reps\": %d,"
                                   " \"us\": %.3f, \"tflops\": %.2f, \"weight_gbs\": %.2f}%s\n",
                                b.model.c_str(), b.wtype.c_str(), b.rows, b.k, b.ntok, b.nsets,
                                b.reps, b.us, b.tflops, b.wgbs, i + 1 < benches.size() ? "," : "");
                }
                fprintf(f, "  ]\n}\n");
                fclose(f);
        }

        /* the table, last */
        printf("\n%s (%d SMs, L2 %d MB), cublasLt %zu: cuda_gemm, median of 25 graph replays,"
               " weights from HBM\n",
               prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, ltver);
        if (!benches.empty()) {
                printf("%-5s %-4s %15s %5s %10s %9s %9s\n", "model", "type", "rows x k", "t",
                       "us/call", "TFLOP/s", "wGB/s");
                for (const bench &b : benches) {
                        char rk[32];
                        snprintf(rk, sizeof(rk), "%dx%d", b.rows, b.k);
                        printf("%-5s %-4s %15s %5d %10.2f %9.1f %9.1f\n", b.model.c_str(),
                               b.wtype.c_str(), rk, b.ntok, b.us, b.tflops, b.wgbs);
                }
        }
        for (const check &c : checks)
                if (!c.pass)
                        printf("FAILED %s: err %.3e tol %.0e unwritten %zu guard %zu\n",
                               c.name.c_str(), c.err, c.tol, c.unwritten, c.guard_hit);
        printf("checks: %zu, failed %zu (tolerance gemm %.0e, ops %.0e, embed %.0e;"
               " ||out-ref||/||ref|| vs CPU double)\n",
               checks.size(), failed, GEMM_TOL, OPS_TOL, EMBED_TOL);
        return failed ? 1 : 0;
}
