/* test-quant — the tensor-type kernels: hand-computed known answers, SIMD (avx2, avx512)
 * against the plain C reference for dot products and activation quantizers (bit-exact:
 * both mirror ggml's x86 kernels lane for lane), quant_gemm bit-identical to per-pair
 * quant_vec_dot, bf16's denormal handling (vdpbf16ps), and the round-trip error of the
 * Q8_0 / Q8_K quantizers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "sl.h"

static int failures;

#define CHECK(cond, ...)                                                     \
        do {                                                                 \
                if (!(cond)) {                                               \
                        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
                        fprintf(stderr, __VA_ARGS__);                        \
                        fputc('\n', stderr);                                 \
                        failures++;                                          \
                }                                                            \
        } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (uint32_t)(rng >> 16);
}
static float rndf(float lo, float hi) { return lo + (hi - lo) * (rnd() & 0xFFFFFF) / (float)0x1000000; }
static int rndi(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }

static const uint32_t wtypes[] = {
        GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0,
        GGML_TYPE_Q5_1, GGML_TYPE_Q8_0, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K,
};

static const char *tname(uint32_t t)
{
        switch (t) {
        case GGML_TYPE_F32: return "f32";
        case GGML_TYPE_F16: return "f16";
        case GGML_TYPE_BF16: return "bf16";
        case GGML_TYPE_Q4_0: return "q4_0";
        case GGML_TYPE_Q4_1: return "q4_1";
        case GGML_TYPE_Q5_0: return "q5_0";
        case GGML_TYPE_Q5_1: return "q5_1";
        case GGML_TYPE_Q8_0: return "q8_0";
        case GGML_TYPE_Q8_1: return "q8_1";
        case GGML_TYPE_Q4_K: return "q4_K";
        case GGML_TYPE_Q5_K: return "q5_K";
        case GGML_TYPE_Q6_K: return "q6_K";
        case GGML_TYPE_Q8_K: return "q8_K";
        default: return "?";
        }
}

/* A scale: 1.0 in exact mode (every product and partial sum is then a small integer, so
 * any summation order gives the same float), a random fp16 otherwise. */
static ggml_half hscale(bool exact, float lo, float hi) { return sl_fp32_to_fp16(exact ? 1.0f : rndf(lo, hi)); }

static float fval(bool exact) { return exact ? (float)rndi(-16, 16) : rndf(-1.0f, 1.0f); }

/* Random valid data of any weight or activation type, n elements. */
static void gen_row(uint32_t type, int64_t n, void *dst, bool exact)
{
        const struct quant_type *qt = quant_type_get(type);
        const int64_t nb = n / qt->blck;
        uint8_t *p = dst;
        for (size_t i = 0; i < quant_row_size(type, n); i++)
                p[i] = (uint8_t)rnd();
        for (int64_t i = 0; i < nb; i++) {
                switch (type) {
                case GGML_TYPE_F32: ((float *)dst)[i] = fval(exact); break;
                case GGML_TYPE_F16: ((uint16_t *)dst)[i] = sl_fp32_to_fp16(fval(exact)); break;
                case GGML_TYPE_BF16: ((uint16_t *)dst)[i] = sl_fp32_to_bf16(fval(exact)); break;
                case GGML_TYPE_Q4_0: ((block_q4_0 *)dst)[i].d = hscale(exact, -0.1f, 0.1f); break;
                case GGML_TYPE_Q4_1:
                        ((block_q4_1 *)dst)[i].d = hscale(exact, 0.0f, 0.1f);
                        ((block_q4_1 *)dst)[i].m = hscale(exact, -1.0f, 0.0f);
                        break;
                case GGML_TYPE_Q5_0: ((block_q5_0 *)dst)[i].d = hscale(exact, -0.1f, 0.1f); break;
                case GGML_TYPE_Q5_1:
                        ((block_q5_1 *)dst)[i].d = hscale(exact, 0.0f, 0.1f);
                        ((block_q5_1 *)dst)[i].m = hscale(exact, -1.0f, 0.0f);
                        break;
                case GGML_TYPE_Q8_0: {
                        block_q8_0 *b = (block_q8_0 *)dst + i;
                        b->d = hscale(exact, -0.01f, 0.01f);
                        for (int j = 0; j < QK8_0; j++) /* never -128: ggml's kernels assume so */
                                b->qs[j] = (int8_t)rndi(-127, 127);
                        break;
                }
                case GGML_TYPE_Q8_1: {
                        block_q8_1 *b = (block_q8_1 *)dst + i;
                        b->d = hscale(exact, 0.0f, 0.01f);
                        int sum = 0;
                        for (int j = 0; j < QK8_1; j++) {
                                b->qs[j] = (int8_t)rndi(-127, 127);
                                sum += b->qs[j];
                        }
                        b->s = sl_fp32_to_fp16(exact ? (float)rndi(-1000, 1000) : sum * sl_fp16_to_fp32(b->d));
                        break;
                }
                case GGML_TYPE_Q4_K:
                        ((block_q4_K *)dst)[i].d = hscale(exact, 0.0f, 0.01f);
                        ((block_q4_K *)dst)[i].dmin = hscale(exact, 0.0f, 0.01f);
                        break;
                case GGML_TYPE_Q5_K:
                        ((block_q5_K *)dst)[i].d = hscale(exact, 0.0f, 0.01f);
                        ((block_q5_K *)dst)[i].dmin = hscale(exact, 0.0f, 0.01f);
                        break;
                case GGML_TYPE_Q6_K: ((block_q6_K *)dst)[i].d = hscale(exact, -0.01f, 0.01f); break;
                case GGML_TYPE_Q8_K: {
                        block_q8_K *b = (block_q8_K *)dst + i;
                        b->d = exact ? 1.0f : rndf(-0.01f, 0.01f);
                        for (int j = 0; j < QK_K; j++)
                                b->qs[j] = (int8_t)rndi(-127, 127);
                        for (int j = 0; j < QK_K / 16; j++) {
                                int s = 0;
                                for (int k = 0; k < 16; k++)
                                        s += b->qs[16 * j + k];
                                b->bsums[j] = (int16_t)s;
                        }
                        break;
                }
                }
        }
}

/* ---- known answers, worked out by hand from ggml's block formulas ---- */

static void test_known_answers(void)
{
        quant_init(true);
        float y[QK_K];

        /* q4_0: d = 2; byte 0 = 0x9F: element 0 = (15-8)*2 = 14, element 16 = (9-8)*2 = 2 */
        block_q4_0 b40 = { .d = sl_fp32_to_fp16(2.0f) };
        memset(b40.qs, 0x88, sizeof(b40.qs));
        b40.qs[0] = 0x9F;
        quant_dequantize_row(GGML_TYPE_Q4_0, &b40, y, 32);
        CHECK(y[0] == 14.0f && y[16] == 2.0f && y[1] == 0.0f && y[31] == 0.0f, "q4_0 dequant %g %g", y[0], y[16]);

        /* q4_0 . q8_0: x d = 0.5, x[0] = 3, x[16] = -4: (7*3 + 1*-4) * 2 * 0.5 = 17 */
        block_q8_0 b80 = { .d = sl_fp32_to_fp16(0.5f) };
        b80.qs[0] = 3;
        b80.qs[16] = -4;
        b80.qs[5] = 100; /* meets a zero weight */
        const char *isas[] = { "ref", "avx2", "avx512" };
        for (int k = 0; k < 3; k++) {
                setenv("SLUICE_QUANT_ISA", isas[k], 1);
                quant_init(k == 0);
                float s = 0;
                quant_vec_dot(GGML_TYPE_Q4_0, 32, &b40, &b80, &s);
                CHECK(s == 17.0f, "q4_0 dot %s = %g, want 17", quant_isa(), s);
        }
        unsetenv("SLUICE_QUANT_ISA");

        /* q5_0: d = 1, qs[0] = 0x21, qh bit 0 and bit 16 set: element 0 = (1|16)-16 = 1,
         * element 16 = (2|16)-16 = 2, element 1 = (1-16)... qs[1] = 0 -> -16 */
        block_q5_0 b50 = { .d = sl_fp32_to_fp16(1.0f) };
        memset(b50.qs, 0, sizeof(b50.qs));
        b50.qs[0] = 0x21;
        const uint32_t qh = 1u | (1u << 16);
        memcpy(b50.qh, &qh, 4);
        quant_dequantize_row(GGML_TYPE_Q5_0, &b50, y, 32);
        CHECK(y[0] == 1.0f && y[16] == 2.0f && y[1] == -16.0f && y[17] == -16.0f, "q5_0 dequant %g %g %g", y[0], y[16], y[1]);

        /* q4_K: d = dmin = 1; sub-block 0 scale 2 min 3 (scales[0], scales[4]); sub-block 4
         * scale (scales[8] & 15) = 1, min (scales[8] >> 4) = 2 (high bits from scales[0]>>6
         * and scales[4]>>6 are 0). qs[0] = 0x05: element 0 = 2*5-3 = 7, elements 1..31 = -3;
         * qs[64] = 0x0A: element 128 = 1*10-2 = 8, element 129 = -2; others 0. */
        block_q4_K b4k;
        memset(&b4k, 0, sizeof(b4k));
        b4k.d = b4k.dmin = sl_fp32_to_fp16(1.0f);
        b4k.scales[0] = 2;
        b4k.scales[4] = 3;
        b4k.scales[8] = 0x21;
        b4k.qs[0] = 0x05;
        b4k.qs[64] = 0x0A;
        quant_dequantize_row(GGML_TYPE_Q4_K, &b4k, y, QK_K);
        CHECK(y[0] == 7.0f && y[1] == -3.0f && y[31] == -3.0f && y[32] == 0.0f && y[128] == 8.0f &&
                      y[129] == -2.0f && y[160] == 0.0f,
              "q4_K dequant %g %g %g %g %g", y[0], y[1], y[32], y[128], y[129]);

        /* q6_K: d = 1, scales[0] = 3; ql[0] = 0x05, qh[0] = 0x02: q = (5 | 2<<4) - 32 = 5,
         * element 0 = 15; element 1 (ql = qh = 0) = 3 * -32 = -96; element 16 uses scales[1] = 0. */
        block_q6_K b6k;
        memset(&b6k, 0, sizeof(b6k));
        b6k.d = sl_fp32_to_fp16(1.0f);
        b6k.scales[0] = 3;
        b6k.ql[0] = 0x05;
        b6k.qh[0] = 0x02;
        quant_dequantize_row(GGML_TYPE_Q6_K, &b6k, y, QK_K);
        CHECK(y[0] == 15.0f && y[1] == -96.0f && y[16] == 0.0f, "q6_K dequant %g %g %g", y[0], y[1], y[16]);

        /* q8_0 activation quantization rounds half to even, as ggml's x86 path does
         * (id = 127 / amax; amax 127 makes id = 1 exactly) */
        float x[QK_K];
        memset(x, 0, sizeof(x));
        x[0] = 127.0f, x[1] = 0.5f, x[2] = 1.5f, x[3] = -0.5f, x[4] = -2.5f, x[5] = 2.5f, x[6] = 2.4999998f;
        const int8_t want80[7] = { 127, 0, 2, 0, -2, 2, 2 };
        /* q8_K rounds half to even, on -x (iscale = -127/max = -1) */
        const int8_t want8k[7] = { -127, 0, -2, 0, 2, -2, -2 };
        for (int k = 0; k < 3; k++) {
                setenv("SLUICE_QUANT_ISA", isas[k], 1);
                quant_init(k == 0);
                block_q8_0 q8[QK_K / QK8_0];
                block_q8_K q8k;
                quant_quantize_row(GGML_TYPE_Q8_0, x, q8, QK_K);
                quant_quantize_row(GGML_TYPE_Q8_K, x, &q8k, QK_K);
                CHECK(sl_fp16_to_fp32(q8[0].d) == 1.0f && memcmp(q8[0].qs, want80, 7) == 0 && q8[1].d == 0,
                      "q8_0 quantize (%s)", quant_isa());
                CHECK(q8k.d == -1.0f && memcmp(q8k.qs, want8k, 7) == 0 && q8k.bsums[0] == -127 - 2 + 2 - 2 - 2 &&
                              q8k.bsums[1] == 0,
                      "q8_K quantize (%s): d %g bsums0 %d", quant_isa(), q8k.d, q8k.bsums[0]);
        }
        unsetenv("SLUICE_QUANT_ISA");
}

/* ---- SIMD against the reference ---- */

#define MAXN 4096

static const int64_t sizes_blk32[] = { 32, 64, 96, 160, 256, 512, 1024, 2048, 4096 };
static const int64_t sizes_blk256[] = { 256, 512, 768, 1280, 2048, 4096 };
static const int64_t sizes_f[] = { 1, 7, 15, 16, 17, 33, 100, 256, 1000, 4095, 4096 };

static int sizes_for(uint32_t t, const int64_t **s)
{
        const uint32_t blck = quant_type_get(t)->blck;
        if (blck == 1) {
                *s = sizes_f;
                return (int)SL_ARRAY_SIZE(sizes_f);
        }
        if (blck == 32) {
                *s = sizes_blk32;
                return (int)SL_ARRAY_SIZE(sizes_blk32);
        }
        *s = sizes_blk256;
        return (int)SL_ARRAY_SIZE(sizes_blk256);
}

static bool select_isa(const char *isa)
{
        setenv("SLUICE_QUANT_ISA", isa, 1);
        quant_init(strcmp(isa, "ref") == 0);
        unsetenv("SLUICE_QUANT_ISA");
        return strcmp(quant_isa(), isa) == 0;
}

static void test_vec_dot_vs_ref(const char *isa)
{
        static uint8_t w[MAXN * 4], x[MAXN * 4];
        int checked = 0;
        for (size_t ti = 0; ti < SL_ARRAY_SIZE(wtypes); ti++) {
                const uint32_t wt = wtypes[ti], xt = quant_type_get(wt)->vec_dot_type;
                const int64_t *sizes;
                const int ns = sizes_for(wt, &sizes);
                for (int si = 0; si < ns; si++) {
                        const int64_t n = sizes[si];
                        for (int rep = 0; rep < 6; rep++) {
                                const bool exact = rep < 3;
                                gen_row(wt, n, w, exact);
                                gen_row(xt, n, x, exact);
                                float r, s;
                                select_isa("ref");
                                quant_vec_dot(wt, n, w, x, &r);
                                select_isa(isa);
                                quant_vec_dot(wt, n, w, x, &s);
                                /* the same lanes and order as the reference: the same bits, any data */
                                CHECK(memcmp(&r, &s, 4) == 0, "%s %s n=%ld%s: ref %.9g simd %.9g", isa, tname(wt), (long)n,
                                      exact ? " exact" : "", r, s);
                                checked++;
                        }
                }
        }
        printf("vec_dot %s vs ref: %d cases\n", isa, checked);
}

static void test_quantize_vs_ref(const char *isa)
{
        static const uint32_t qt[] = { GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q8_1, GGML_TYPE_Q8_K };
        static float src[MAXN];
        static uint8_t a[MAXN * 4], b[MAXN * 4];
        for (size_t k = 0; k < SL_ARRAY_SIZE(qt); k++) {
                for (int rep = 0; rep < 20; rep++) {
                        const int64_t n = 4096;
                        const float scale = rep % 4 == 0 ? 1e-3f : rep % 4 == 1 ? 1.0f : rep % 4 == 2 ? 300.0f : 1e-30f;
                        for (int64_t i = 0; i < n; i++)
                                src[i] = rndf(-1, 1) * scale;
                        /* a zero block, exact halves and a repeated extreme of either sign */
                        if (rep == 5) {
                                memset(src, 0, 256 * sizeof(float));
                                for (int i = 256; i < 512; i++)
                                        src[i] = (float)rndi(-254, 254) * 0.5f;
                                src[600] = 5.0f, src[601] = -5.0f, src[700] = -5.0f, src[701] = 5.0f;
                        }
                        const size_t sz = quant_row_size(qt[k], n);
                        select_isa("ref");
                        quant_quantize_row(qt[k], src, a, n);
                        select_isa(isa);
                        quant_quantize_row(qt[k], src, b, n);
                        CHECK(memcmp(a, b, sz) == 0, "%s quantize %s rep %d differs", isa, tname(qt[k]), rep);
                }
        }
}

static void test_gemm_matches_vec_dot(const char *isa)
{
        enum { ROWS = 37, TOK = 70 };
        select_isa(isa);
        static const int ntoks[] = { 1, 2, 3, 4, 5, 8, 13, 17, 64, 70 };
        for (size_t ti = 0; ti < SL_ARRAY_SIZE(wtypes); ti++) {
                const uint32_t wt = wtypes[ti], xt = quant_type_get(wt)->vec_dot_type;
                const int64_t n = quant_type_get(wt)->blck == 1 ? 200 + 3 : 512;
                const size_t ws = quant_row_size(wt, n) + 16, xs = quant_row_size(xt, n) + 8;
                uint8_t *W = malloc(ws * ROWS), *X = malloc(xs * TOK);
                float *ref = malloc(sizeof(float) * ROWS * TOK), *Y = malloc(sizeof(float) * (ROWS + 5) * TOK);
                for (int r = 0; r < ROWS; r++)
                        gen_row(wt, n, W + r * ws, false);
                for (int t = 0; t < TOK; t++)
                        gen_row(xt, n, X + t * xs, false);
                for (int t = 0; t < TOK; t++)
                        for (int r = 0; r < ROWS; r++)
                                quant_vec_dot(wt, n, W + r * ws, X + t * xs, &ref[t * ROWS + r]);
                for (size_t k = 0; k < SL_ARRAY_SIZE(ntoks); k++) {
                        const int nt = ntoks[k];
                        const int64_t ldy = ROWS + 5, r0 = 3, r1 = ROWS;
                        for (int64_t i = 0; i < ldy * TOK; i++)
                                Y[i] = -12345.0f;
                        quant_gemm(wt, n, W, ws, r0, r1, X, xs, nt, Y, ldy);
                        int bad = 0;
                        for (int t = 0; t < nt; t++)
                                for (int64_t r = 0; r < ldy; r++) {
                                        const float want = r >= r0 && r < r1 ? ref[t * ROWS + r] : -12345.0f;
                                        if (memcmp(&Y[t * ldy + r], &want, 4) != 0)
                                                bad++;
                                }
                        CHECK(bad == 0, "%s gemm %s n_tok=%d: %d of %d outputs differ from vec_dot", isa, tname(wt), nt, bad,
                              (int)(nt * ldy));
                }
                free(W);
                free(X);
                free(ref);
                free(Y);
        }
}

/* dequantize(quantize(x)) stays within half a quantization step (plus fp16 rounding of d) */
static void test_round_trip(void)
{
        static float src[MAXN], back[MAXN];
        static uint8_t q[MAXN * 4];
        for (int rep = 0; rep < 10; rep++) {
                const float scale = rep < 5 ? 1.0f : 1e-2f;
                for (int i = 0; i < MAXN; i++)
                        src[i] = rndf(-1, 1) * scale;
                quant_quantize_row(GGML_TYPE_Q8_0, src, q, MAXN);
                quant_dequantize_row(GGML_TYPE_Q8_0, q, back, MAXN);
                for (int b = 0; b < MAXN / 32; b++) {
                        float amax = 0;
                        for (int j = 0; j < 32; j++)
                                amax = fmaxf(amax, fabsf(src[32 * b + j]));
                        const double bound = amax / 127.0 * 0.5 * (1 + 1e-6) + amax * 0x1p-11;
                        for (int j = 0; j < 32; j++)
                                CHECK(fabs((double)back[32 * b + j] - src[32 * b + j]) <= bound, "q8_0 round trip %d", 32 * b + j);
                }
                quant_quantize_row(GGML_TYPE_Q8_K, src, q, MAXN);
                quant_dequantize_row(GGML_TYPE_Q8_K, q, back, MAXN);
                for (int b = 0; b < MAXN / QK_K; b++) {
                        float amax = 0;
                        for (int j = 0; j < QK_K; j++)
                                amax = fmaxf(amax, fabsf(src[QK_K * b + j]));
                        const double bound = amax / 127.0 * 0.5 * (1 + 1e-5);
                        for (int j = 0; j < QK_K; j++)
                                CHECK(fabs((double)back[QK_K * b + j] - src[QK_K * b + j]) <= bound, "q8_K round trip %d", QK_K * b + j);
                }
        }
}

/* vdpbf16ps reads denormal inputs as zero and flushes denormal results, whichever of
 * the real instruction, its AVX2 emulation and the C reference runs. */
static void test_bf16_denormals(const char *isa)
{
        static uint16_t w[128], x[128];
        for (int rep = 0; rep < 200; rep++) {
                for (int i = 0; i < 128; i++) {
                        /* exponents near the bottom of the range: denormals, tiny normals */
                        w[i] = (uint16_t)((rnd() & 0x807F) | ((rnd() % 4) << 7));
                        x[i] = (uint16_t)((rnd() & 0x807F) | ((rnd() % 3 + 126) << 7));
                        if (rep % 2)
                                w[i] = (uint16_t)((rnd() & 0x807F) | ((rnd() % 8 + 60) << 7));
                        if (rep % 2)
                                x[i] = (uint16_t)((rnd() & 0x807F) | ((rnd() % 8 + 60) << 7));
                }
                float r, s;
                select_isa("ref");
                quant_vec_dot(GGML_TYPE_BF16, 128, w, x, &r);
                select_isa(isa);
                quant_vec_dot(GGML_TYPE_BF16, 128, w, x, &s);
                CHECK(memcmp(&r, &s, 4) == 0, "%s bf16 denormals rep %d: ref %a simd %a", isa, rep, r, s);
        }
        /* one denormal pair alone: flushed, so the dot is +0 (a plain fma would give 2^-133) */
        memset(w, 0, sizeof(w));
        memset(x, 0, sizeof(x));
        w[1] = 0x0040; /* 2^-128, denormal */
        x[1] = 0x3F80; /* 1 */
        w[3] = 0x0D80; /* 2^-100 */
        x[3] = 0x3080; /* 2^-30: the product 2^-130 is a denormal result */
        float s = -1;
        select_isa(isa);
        quant_vec_dot(GGML_TYPE_BF16, 64, w, x, &s);
        CHECK(s == 0.0f && !signbit(s), "%s bf16 denormal flush: %a", isa, s);
}

int main(void)
{
        test_known_answers();
        test_round_trip();
        const char *isas[] = { "ref", "avx2", "avx512" };
        int simd = 0;
        for (int k = 0; k < 3; k++) {
                if (!select_isa(isas[k])) {
                        printf("skip %s: this CPU lacks it (got %s)\n", isas[k], quant_isa());
                        continue;
                }
                simd += k > 0;
                test_bf16_denormals(isas[k]);
                if (k > 0) {
                        test_vec_dot_vs_ref(isas[k]);
                        test_quantize_vs_ref(isas[k]);
                }
                test_gemm_matches_vec_dot(isas[k]);
        }
        if (!simd)
                printf("note: no SIMD kernel set on this CPU; only the reference was tested\n");
        printf("%s (%d failures)\n", failures ? "FAIL" : "PASS", failures);
        return failures ? 1 : 0;
}
