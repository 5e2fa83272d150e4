/* test_epilogue.cu — the one-token products with an epilogue (gemv.cuh: cuda_gemv_glu,
 * cuda_gemv_qkv) against the kernels they replace, bit for bit:
 *   cuda_gemv_glu  == cuda_gemv into gu, then cuda_glu (SiLU and GELU, F16 and BF16, the
 *                     Llama 1B/8B shapes and ragged ones);
 *   cuda_gemv_qkv  == cuda_gemv into qkv, then cuda_qkv_post: the whole qkv row and both
 *                     K/V caches compared (NORM and NEOX RoPE, partial rotation, bias,
 *                     Q scale, rope frequency factors, dk != dv, GQA, a position with no
 *                     cache block);
 * every output written, nothing past it (poisoned guards); argument checks; then the time
 * of each pair against its fused kernel in a graph over weights 4x the L2 (figures only).
 * Exit 0 all checks pass, 1 any failed, 77 no GPU. Options: --json PATH, --check-only
 * (no timing; for compute-sanitizer). Built and run by tests/gpu/run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "attention.cuh"
#include "gemv.cuh"
#include "ops.cuh"

#define HARNESS_SEED 0xe91ull
#include "harness.cuh"

static std::vector<check> checks;

struct timing {
        std::string name;
        double sep_us, fused_us;
};
static std::vector<timing> timings;

static void flag(const std::string &name, bool pass, size_t unwritten = 0, size_t guard_hit = 0)
{
        checks.push_back({name, pass ? 0.0 : 1.0, 0.0, unwritten, guard_hit, pass});
        if (!pass)
                printf("FAIL %s (unwritten %zu, guard %zu)\n", name.c_str(), unwritten, guard_hit);
}

static size_t differing(const void *a, const void *b, size_t n, size_t elem)
{
        size_t d = 0;
        for (size_t i = 0; i < n; i++)
                d += memcmp((const char *)a + i * elem, (const char *)b + i * elem, elem) != 0;
        return d;
}

/* ---- gate/up + activation ---- */

static void check_glu(uint32_t wtype, int act, int n, int k)
{
        void *w = dev_alloc((size_t)2 * n * k * 2);
        float *x = dev_alloc_f32(k), *gu = dev_alloc_f32((size_t)2 * n), *ref = dev_alloc_f32(n + GUARD),
              *out = dev_alloc_f32(n + GUARD);
        rand_w16(w, (size_t)2 * n * k, wtype);
        rand_f32(x, k, 2.0f);
        poison(ref, n);
        poison(out, n);
        CUDA_OK_OR_ABORT(cuda_gemv(wtype, w, x, gu, 2 * n, k, 1, 0));
        CUDA_OK_OR_ABORT(cuda_glu(act, gu, ref, n, 1, 0));
        CUDA_OK_OR_ABORT(cuda_gemv_glu(wtype, act, w, x, out, n, k, 0));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        const std::vector<float> r = to_host(ref, n + GUARD), o = to_host(out, n + GUARD);
        size_t unw = 0, guard = 0;
        count_unwritten(o, n, &unw, &guard);
        const size_t d = differing(r.data(), o.data(), n, 4);
        char name[128];
        snprintf(name, sizeof(name), "gemv_glu %s %s n=%d k=%d: %zu of %d differ from gemv+glu", wtype_name(wtype),
                 act == CUDA_ACT_GELU ? "gelu" : "silu", n, k, d, n);
        flag(name, d == 0 && unw == 0 && guard == 0, unw, guard);
        cudaFree(w);
        cudaFree(x);
        cudaFree(gu);
        cudaFree(ref);
        cudaFree(out);
}

/* ---- Q/K/V + post-processing ---- */

struct qcase {
        const char *name;
        int n_head, n_head_kv, dk, dv, n_rot, neox, k;
        bool bias, ff, no_block;
        float q_scale;
};

#define QBS 16 /* cache block size */
#define QMB 8  /* blocks per sequence */
#define QNB 10 /* blocks in the cache */

static void check_qkv(uint32_t wtype, const qcase &c)
{
        const int QD = c.n_head * c.dk, KD = c.n_head_kv * c.dk, VD = c.n_head_kv * c.dv, rows = QD + KD + VD;
        const size_t kc_n = (size_t)QNB * QBS * KD, vc_n = (size_t)QNB * QBS * VD;
        void *w = dev_alloc((size_t)rows * c.k * 2);
        float *x = dev_alloc_f32(c.k), *q_ref = dev_alloc_f32(rows + GUARD), *q_out = dev_alloc_f32(rows + GUARD);
        float *bias = dev_alloc_f32(rows), *ff = dev_alloc_f32(c.dk);
        __half *kc[2], *vc[2];
        for (int i = 0; i < 2; i++) {
                kc[i] = (__half *)dev_alloc(kc_n * 2);
                vc[i] = (__half *)dev_alloc(vc_n * 2);
                CUDA_CHECK_ABORT(cudaMemset(kc[i], 0x3c, kc_n * 2));
                CUDA_CHECK_ABORT(cudaMemset(vc[i], 0x3c, vc_n * 2));
        }
        rand_w16(w, (size_t)rows * c.k, wtype);
        rand_f32(x, c.k, 2.0f);
        rand_f32(bias, rows, 0.5f);
        rand_f32(ff, c.dk, 0.5f, 1.5f);
        poison(q_ref, rows);
        poison(q_out, rows);
        /* token 0 at position 77 of block-table row 1; a table with a hole when no_block */
        const int pos = 77;
        std::vector<int32_t> bt(2 * QMB, -1);
        const int blocks[QMB] = {3, 5, 0, 7, 2, 9, 1, 4};
        for (int i = 0; i < QMB; i++)
                bt[QMB + i] = blocks[i];
        if (c.no_block)
                bt[QMB + pos / QBS] = -1;
        int32_t *d_bt = (int32_t *)dev_alloc(bt.size() * 4), *d_pos = (int32_t *)dev_alloc(4),
                *d_row = (int32_t *)dev_alloc(4);
        const int32_t one = 1;
        CUDA_CHECK_ABORT(cudaMemcpy(d_bt, bt.data(), bt.size() * 4, cudaMemcpyHostToDevice));
        CUDA_CHECK_ABORT(cudaMemcpy(d_pos, &pos, 4, cudaMemcpyHostToDevice));
        CUDA_CHECK_ABORT(cudaMemcpy(d_row, &one, 4, cudaMemcpyHostToDevice));

        struct cuda_qkv_args a;
        memset(&a, 0, sizeof(a));
        a.ld = rows;
        a.ntok = 1;
        a.n_head = c.n_head;
        a.n_head_kv = c.n_head_kv;
        a.dk = c.dk;
        a.dv = c.dv;
        if (c.bias) {
                a.bq = bias;
                a.bk = bias + QD;
                a.bv = bias + QD + KD;
        }
        a.n_rot = c.n_rot;
        a.neox = c.neox;
        a.rope_base = 500000.0f;
        a.rope_scale = 1.0f;
        a.rope_ff = c.ff ? ff : NULL;
        a.q_scale = c.q_scale;
        a.map.pos = d_pos;
        a.map.bt_row = d_row;
        a.map.bt = d_bt;
        a.map.max_blocks = QMB;
        a.map.block_size = QBS;

        struct cuda_qkv_args ar = a, af = a;
        ar.qkv = q_ref, ar.k_cache = kc[0], ar.v_cache = vc[0];
        af.qkv = q_out, af.k_cache = kc[1], af.v_cache = vc[1];
        CUDA_OK_OR_ABORT(cuda_gemv(wtype, w, x, q_ref, rows, c.k, 1, 0));
        CUDA_OK_OR_ABORT(cuda_qkv_post(&ar, 0));
        CUDA_OK_OR_ABORT(cuda_gemv_qkv(wtype, w, x, c.k, &af, 0));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());

        const std::vector<float> r = to_host(q_ref, rows + GUARD), o = to_host(q_out, rows + GUARD);
        size_t unw = 0, guard = 0;
        count_unwritten(o, rows, &unw, &guard);
        std::vector<uint16_t> hk[2], hv[2];
        for (int i = 0; i < 2; i++) {
                hk[i].resize(kc_n);
                hv[i].resize(vc_n);
                CUDA_CHECK_ABORT(cudaMemcpy(hk[i].data(), kc[i], kc_n * 2, cudaMemcpyDeviceToHost));
                CUDA_CHECK_ABORT(cudaMemcpy(hv[i].data(), vc[i], vc_n * 2, cudaMemcpyDeviceToHost));
        }
        const size_t dq = differing(r.data(), o.data(), rows, 4), dkc = differing(hk[0].data(), hk[1].data(), kc_n, 2),
                     dvc = differing(hv[0].data(), hv[1].data(), vc_n, 2);
        /* the reference did write the cache (unless the position has no block) */
        const size_t crow = (size_t)blocks[pos / QBS] * QBS + pos % QBS;
        bool wrote = false;
        for (int i = 0; i < KD; i++)
                wrote |= hk[0][crow * KD + i] != 0x3c3c;
        char name[200];
        snprintf(name, sizeof(name), "gemv_qkv %s %s: differ from gemv+qkv_post: qkv %zu of %d, K cache %zu, V cache %zu%s",
                 wtype_name(wtype), c.name, dq, rows, dkc, dvc, c.no_block ? " (no block: cache untouched)" : "");
        flag(name, dq == 0 && dkc == 0 && dvc == 0 && unw == 0 && guard == 0 && wrote == !c.no_block, unw, guard);
        for (void *p : {(void *)w, (void *)x, (void *)q_ref, (void *)q_out, (void *)bias, (void *)ff, (void *)kc[0],
                        (void *)kc[1], (void *)vc[0], (void *)vc[1], (void *)d_bt, (void *)d_pos, (void *)d_row})
                cudaFree(p);
}

static const qcase qcases[] = {
        {"llama 1B heads (32/8 x 64, NORM rope)", 32, 8, 64, 64, 64, 0, 2048, false, false, false, 1.0f},
        {"llama 8B heads, rope factors", 32, 8, 128, 128, 128, 0, 4096, false, true, false, 1.0f},
        {"NEOX, partial rotation 32 of 64, bias, q scale", 8, 2, 64, 64, 32, 1, 264, true, false, false, 0.125f},
        {"NORM, partial rotation 16 of 64, dk 64 dv 32", 4, 4, 64, 32, 16, 0, 136, true, true, false, 1.0f},
        {"NEOX full, no cache block at the position", 4, 1, 128, 128, 128, 1, 520, false, false, true, 1.0f},
        {"no rotation", 2, 2, 32, 32, 0, 0, 64, true, false, false, 0.5f},
};

/* ---- arguments ---- */

static void expect(const char *what, int got, int want)
{
        char name[160];
        snprintf(name, sizeof(name), "args: %s -> %d (want %d)", what, got, want);
        flag(name, got == want);
}

static void check_args(void)
{
        void *w = dev_alloc(4096 * 64 * 2);
        float *x = dev_alloc_f32(4096), *y = dev_alloc_f32(4096);
        __half *kc = (__half *)dev_alloc(QNB * QBS * 64 * 2);
        int32_t *m = (int32_t *)dev_alloc(64 * 4);
        CUDA_CHECK_ABORT(cudaMemset(m, 0, 64 * 4));
        expect("glu NULL w", cuda_gemv_glu(CUDA_WTYPE_BF16, CUDA_ACT_SILU, NULL, x, y, 8, 64, 0), -EINVAL);
        expect("glu bad act", cuda_gemv_glu(CUDA_WTYPE_BF16, 7, w, x, y, 8, 64, 0), -EINVAL);
        expect("glu bad wtype", cuda_gemv_glu(0, CUDA_ACT_SILU, w, x, y, 8, 64, 0), -EINVAL);
        expect("glu k % 8", cuda_gemv_glu(CUDA_WTYPE_BF16, CUDA_ACT_SILU, w, x, y, 8, 60, 0), -EINVAL);
        expect("glu x unaligned", cuda_gemv_glu(CUDA_WTYPE_BF16, CUDA_ACT_SILU, w, x + 1, y, 8, 64, 0), -EINVAL);
        expect("glu n 0", cuda_gemv_glu(CUDA_WTYPE_BF16, CUDA_ACT_SILU, w, x, y, 0, 64, 0), -EINVAL);
        struct cuda_qkv_args a;
        memset(&a, 0, sizeof(a));
        a.qkv = y;
        a.ld = 4 * 16 + 2 * 2 * 16;
        a.ntok = 1;
        a.n_head = 4;
        a.n_head_kv = 2;
        a.dk = a.dv = 16;
        a.n_rot = 16;
        a.rope_base = 10000.0f;
        a.rope_scale = 1.0f;
        a.q_scale = 1.0f;
        a.k_cache = a.v_cache = kc;
        a.map.pos = a.map.bt_row = a.map.bt = m;
        a.map.max_blocks = 4;
        a.map.block_size = QBS;
        expect("qkv valid", cuda_gemv_qkv(CUDA_WTYPE_F16, w, x, 64, &a, 0), 0);
        expect("qkv NULL w", cuda_gemv_qkv(CUDA_WTYPE_F16, NULL, x, 64, &a, 0), -EINVAL);
        expect("qkv NULL args", cuda_gemv_qkv(CUDA_WTYPE_F16, w, x, 64, NULL, 0), -EINVAL);
        struct cuda_qkv_args b = a;
        b.ntok = 2;
        expect("qkv ntok 2", cuda_gemv_qkv(CUDA_WTYPE_F16, w, x, 64, &b, 0), -EINVAL);
        b = a;
        b.q_norm = x;
        b.norm_eps = 1e-6f;
        expect("qkv head norm", cuda_gemv_qkv(CUDA_WTYPE_F16, w, x, 64, &b, 0), -EOPNOTSUPP);
        b = a;
        b.n_rot = 3;
        expect("qkv odd n_rot", cuda_gemv_qkv(CUDA_WTYPE_F16, w, x, 64, &b, 0), -EINVAL);
        expect("qkv k % 8", cuda_gemv_qkv(CUDA_WTYPE_F16, w, x, 60, &a, 0), -EINVAL);
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        for (void *p : {(void *)w, (void *)x, (void *)y, (void *)kc, (void *)m})
                cudaFree(p);
}

/* ---- timing: each pair against its fused kernel, weights 4x the L2, one graph ---- */

static double time_graph(cudaStream_t st, int sets, void (*body)(int set, cudaStream_t st, void *u), void *u)
{
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < sets; i++)
                body(i, st, u);
        CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
        CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
        const double ms = graph_median_ms(ge, st, 3, 15);
        cudaGraphExecDestroy(ge);
        cudaGraphDestroy(g);
        return ms * 1e3 / sets;
}

struct bench_ctx {
        uint32_t wtype;
        int n, k, rows;
        size_t wstride;
        char *w;
        float *x, *gu, *out;
        struct cuda_qkv_args qa;
};

static void glu_sep(int i, cudaStream_t st, void *u)
{
        bench_ctx *b = (bench_ctx *)u;
        CUDA_OK_OR_ABORT(cuda_gemv_beta(b->wtype, b->w + i * b->wstride, b->x, b->gu, 2 * b->n, b->k, 1, 0.0f, st));
        CUDA_OK_OR_ABORT(cuda_glu(CUDA_ACT_SILU, b->gu, b->out, b->n, 1, st));
}

static void glu_fused(int i, cudaStream_t st, void *u)
{
        bench_ctx *b = (bench_ctx *)u;
        CUDA_OK_OR_ABORT(cuda_gemv_glu(b->wtype, CUDA_ACT_SILU, b->w + i * b->wstride, b->x, b->out, b->n, b->k, st));
}

static void qkv_sep(int i, cudaStream_t st, void *u)
{
        bench_ctx *b = (bench_ctx *)u;
        CUDA_OK_OR_ABORT(cuda_gemv_beta(b->wtype, b->w + i * b->wstride, b->x, b->qa.qkv, b->rows, b->k, 1, 0.0f, st));
        CUDA_OK_OR_ABORT(cuda_qkv_post(&b->qa, st));
}

static void qkv_fused(int i, cudaStream_t st, void *u)
{
        bench_ctx *b = (bench_ctx *)u;
        CUDA_OK_OR_ABORT(cuda_gemv_qkv(b->wtype, b->w + i * b->wstride, b->x, b->k, &b->qa, st));
}

static void bench_shape(const char *model, int E, int F, int nh, int nkv, int d, size_t l2)
{
        bench_ctx b;
        memset(&b, 0, sizeof(b));
        b.wtype = CUDA_WTYPE_BF16;
        b.k = E;
        b.n = F;
        b.rows = (nh + 2 * nkv) * d;
        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        b.x = dev_alloc_f32(2 * F);
        b.gu = dev_alloc_f32(2 * F);
        b.out = dev_alloc_f32(2 * F);
        rand_f32(b.x, 2 * F);
        __half *kc = (__half *)dev_alloc((size_t)QNB * QBS * nkv * d * 2);
        int32_t *m = (int32_t *)dev_alloc(64 * 4);
        CUDA_CHECK_ABORT(cudaMemset(m, 0, 64 * 4));
        b.qa.qkv = b.gu;
        b.qa.ld = b.rows;
        b.qa.ntok = 1;
        b.qa.n_head = nh;
        b.qa.n_head_kv = nkv;
        b.qa.dk = b.qa.dv = d;
        b.qa.n_rot = d;
        b.qa.rope_base = 500000.0f;
        b.qa.rope_scale = 1.0f;
        b.qa.q_scale = 1.0f;
        b.qa.k_cache = b.qa.v_cache = kc;
        b.qa.map.pos = b.qa.map.bt_row = b.qa.map.bt = m;
        b.qa.map.max_blocks = QMB;
        b.qa.map.block_size = QBS;
        for (int which = 0; which < 2; which++) {
                const size_t bytes = which == 0 ? (size_t)2 * F * E * 2 : (size_t)b.rows * E * 2;
                const int sets = (int)std::max<size_t>(4, 4 * l2 / bytes + 1);
                b.wstride = (bytes + 255) / 256 * 256;
                b.w = (char *)dev_alloc(b.wstride * sets);
                rand_w16(b.w, b.wstride * sets / 2, b.wtype);
                const double sep = time_graph(st, sets, which == 0 ? glu_sep : qkv_sep, &b),
                             fused = time_graph(st, sets, which == 0 ? glu_fused : qkv_fused, &b);
                char name[96];
                snprintf(name, sizeof(name), "%s %s (%.1f MB)", model, which == 0 ? "gate/up + SwiGLU" : "Q/K/V + post",
                         bytes / 1e6);
                timings.push_back({name, sep, fused});
                cudaFree(b.w);
        }
        for (void *p : {(void *)b.x, (void *)b.gu, (void *)b.out, (void *)kc, (void *)m})
                cudaFree(p);
        cudaStreamDestroy(st);
}

/* ---- results ---- */

static int write_json(const char *path, const cudaDeviceProp &prop, int drv, int rt, size_t failed)
{
        FILE *f = fopen(path, "w");
        if (!f) {
                perror(path);
                return -1;
        }
        fprintf(f, "{\"device\": \"%s\", \"driver\": %d, \"runtime\": %d, \"checks_total\": %zu, "
                   "\"checks_failed\": %zu,\n \"checks\": [\n",
                prop.name, drv, rt, checks.size(), failed);
        for (size_t i = 0; i < checks.size(); i++)
                fprintf(f, "  {\"name\": \"%s\", \"pass\": %s}%s\n", checks[i].name.c_str(),
                        checks[i].pass ? "true" : "false", i + 1 < checks.size() ? "," : "");
        fprintf(f, " ],\n \"timing_us\": [\n");
        for (size_t i = 0; i < timings.size(); i++)
                fprintf(f, "  {\"what\": \"%s\", \"separate\": %.3f, \"fused\": %.3f}%s\n", timings[i].name.c_str(),
                        timings[i].sep_us, timings[i].fused_us, i + 1 < timings.size() ? "," : "");
        fprintf(f, " ]\n}\n");
        return fclose(f) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
        const char *json = NULL;
        bool check_only = false;
        if (!test_options(argc, argv, &json, &check_only))
                return 2;
        cudaDeviceProp prop;
        int drv = 0, rt = 0;
        if (!device_open(&prop, &drv, &rt))
                return 77;
        for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16})
                for (int act : {CUDA_ACT_SILU, CUDA_ACT_GELU}) {
                        check_glu(wt, act, 8192, 2048);
                        check_glu(wt, act, 37, 264);
                        check_glu(wt, act, 1001, 1032);
                }
        check_glu(CUDA_WTYPE_BF16, CUDA_ACT_SILU, 14336, 4096);
        for (uint32_t wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16})
                for (const qcase &c : qcases)
                        check_qkv(wt, c);
        check_args();
        if (!check_only) {
                bench_shape("1B", 2048, 8192, 32, 8, 64, (size_t)prop.l2CacheSize);
                bench_shape("8B", 4096, 14336, 32, 8, 128, (size_t)prop.l2CacheSize);
        }
        size_t failed = 0;
        for (const check &c : checks)
                failed += !c.pass;
        if (json && write_json(json, prop, drv, rt, failed) < 0)
                return 1;
        if (!timings.empty()) {
                printf("\none token, BF16, us per call in one graph, weights from HBM (4x L2):\n");
                printf("%-36s %10s %10s\n", "", "separate", "fused");
                for (const timing &t : timings)
                        printf("%-36s %10.2f %10.2f\n", t.name.c_str(), t.sep_us, t.fused_us);
        }
        printf("checks: %zu, failed %zu (bitwise against the separate kernels)\n", checks.size(), failed);
        return failed ? 1 : 0;
}
