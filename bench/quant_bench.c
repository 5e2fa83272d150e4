/* quant-bench — throughput of the tensor-type kernels on one core: quant_vec_dot in GB/s
 * of weight bytes at n = 4096 for each kernel set (ref, avx2, avx512), and quant_gemm of a
 * 2048 x 2048 weight matrix at n_tok = 1, 8, 64 in GFLOP/s (2 * rows * cols * n_tok).
 * Prints a table, then one JSON line. Usage: quant-bench [seconds per measurement]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "sl.h"

static const struct { const char *name; uint32_t type; } types[] = {
        { "f32", GGML_TYPE_F32 },   { "f16", GGML_TYPE_F16 },   { "bf16", GGML_TYPE_BF16 }, { "q4_0", GGML_TYPE_Q4_0 },
        { "q4_1", GGML_TYPE_Q4_1 }, { "q5_0", GGML_TYPE_Q5_0 }, { "q5_1", GGML_TYPE_Q5_1 }, { "q8_0", GGML_TYPE_Q8_0 },
        { "q4_K", GGML_TYPE_Q4_K }, { "q5_K", GGML_TYPE_Q5_K }, { "q6_K", GGML_TYPE_Q6_K },
};
static const char *isas[] = { "ref", "avx2", "avx512" };
static const int gemm_toks[] = { 1, 8, 64 };

enum { DOT_N = 4096, DOT_ROWS = 64, GEMM_N = 2048, GEMM_TOK_MAX = 64 };

static uint64_t rng = 88172645463325252ull;
static float rndf(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return (float)((rng >> 40) & 0xFFFFFF) / (float)0x800000 - 1.0f;
}

/* Weights quantized from random floats with the reference dequant-compatible layout: for
 * types without a weight quantizer here, blocks are random bytes with sane fp16 scales. */
static void fill_weights(uint32_t type, void *dst, size_t bytes)
{
        uint8_t *p = dst;
        for (size_t i = 0; i < bytes; i++)
                p[i] = (uint8_t)(rndf() * 127 + 128);
        const struct quant_type *qt = quant_type_get(type);
        const size_t nb = bytes / qt->size;
        for (size_t b = 0; b < nb; b++) {
                uint8_t *blk = p + b * qt->size;
                const uint16_t h = sl_fp32_to_fp16(0.01f * rndf());
                switch (type) {
                case GGML_TYPE_F32: { float f = rndf(); memcpy(blk, &f, 4); break; }
                case GGML_TYPE_F16: memcpy(blk, (uint16_t[]){ sl_fp32_to_fp16(rndf()) }, 2); break;
                case GGML_TYPE_BF16: memcpy(blk, (uint16_t[]){ sl_fp32_to_bf16(rndf()) }, 2); break;
                case GGML_TYPE_Q6_K: memcpy(blk + 208, &h, 2); break;
                case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_1: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K:
                        memcpy(blk, &h, 2);
                        memcpy(blk + 2, &h, 2);
                        break;
                default: memcpy(blk, &h, 2); break;
                }
        }
}

static volatile float sink;

int main(int argc, char **argv)
{
        const double budget = argc > 1 ? atof(argv[1]) : 0.3;
        double dot_gbs[SL_ARRAY_SIZE(types)][3] = { { 0 } };
        double gemm_gf[SL_ARRAY_SIZE(types)][3][3] = { { { 0 } } };
        bool have[3] = { false };
        float *src = malloc(sizeof(float) * GEMM_N * GEMM_TOK_MAX > sizeof(float) * DOT_N ? sizeof(float) * GEMM_N * GEMM_TOK_MAX : sizeof(float) * DOT_N);
        float *Y = malloc(sizeof(float) * GEMM_N * GEMM_TOK_MAX);
        for (int i = 0; i < GEMM_N * GEMM_TOK_MAX; i++)
                src[i] = rndf();

        for (int k = 0; k < 3; k++) {
                setenv("SLUICE_QUANT_ISA", isas[k], 1);
                quant_init(k == 0);
                have[k] = strcmp(quant_isa(), isas[k]) == 0;
                if (!have[k])
                        continue;
                for (size_t ti = 0; ti < SL_ARRAY_SIZE(types); ti++) {
                        const uint32_t wt = types[ti].type, xt = quant_type_get(wt)->vec_dot_type;
                        /* vec_dot: DOT_ROWS rows (~1 MiB or less, cache-resident) against one x */
                        const size_t wrow = quant_row_size(wt, DOT_N);
                        uint8_t *W = malloc(wrow * DOT_ROWS), *X = malloc(quant_row_size(xt, DOT_N));
                        fill_weights(wt, W, wrow * DOT_ROWS);
                        quant_quantize_row(xt, src, X, DOT_N);
                        uint64_t iters = 0, t0 = sl_now_ns(), t1;
                        do {
                                float s = 0;
                                for (int r = 0; r < DOT_ROWS; r++) {
                                        quant_vec_dot(wt, DOT_N, W + r * wrow, X, &s);
                                        sink = s;
                                }
                                iters++;
                                t1 = sl_now_ns();
                        } while ((t1 - t0) * 1e-9 < budget);
                        dot_gbs[ti][k] = (double)wrow * DOT_ROWS * iters / (double)(t1 - t0);
                        free(W);
                        free(X);

                        /* gemm: 2048 x 2048 (2 to 16 MiB, streamed from L3/DRAM as in decode) */
                        const size_t grow = quant_row_size(wt, GEMM_N), gx = quant_row_size(xt, GEMM_N);
                        W = malloc(grow * GEMM_N);
                        X = malloc(gx * GEMM_TOK_MAX);
                        fill_weights(wt, W, grow * GEMM_N);
                        for (int t = 0; t < GEMM_TOK_MAX; t++)
                                quant_quantize_row(xt, src + t * GEMM_N, X + t * gx, GEMM_N);
                        for (int g = 0; g < 3; g++) {
                                const int nt = gemm_toks[g];
                                iters = 0;
                                t0 = sl_now_ns();
                                do {
                                        quant_gemm(wt, GEMM_N, W, grow, 0, GEMM_N, X, gx, nt, Y, GEMM_N);
                                        iters++;
                                        t1 = sl_now_ns();
                                } while ((t1 - t0) * 1e-9 < budget);
                                gemm_gf[ti][k][g] = 2.0 * GEMM_N * GEMM_N * nt * iters / (double)(t1 - t0);
                        }
                        sink = Y[0];
                        free(W);
                        free(X);
                }
        }
        unsetenv("SLUICE_QUANT_ISA");

        printf("quant-bench: vec_dot n=%d (GB/s of weights), gemm %dx%d (GFLOP/s), one thread\n", DOT_N, GEMM_N, GEMM_N);
        printf("%-5s %-6s %9s %10s %10s %10s\n", "type", "isa", "dot GB/s", "gemm t=1", "gemm t=8", "gemm t=64");
        for (size_t ti = 0; ti < SL_ARRAY_SIZE(types); ti++)
                for (int k = 0; k < 3; k++)
                        if (have[k])
                                printf("%-5s %-6s %9.2f %10.2f %10.2f %10.2f\n", types[ti].name, isas[k], dot_gbs[ti][k],
                                       gemm_gf[ti][k][0], gemm_gf[ti][k][1], gemm_gf[ti][k][2]);
        printf("{\"bench\":\"quant\",\"dot_n\":%d,\"gemm_n\":%d,\"results\":[", DOT_N, GEMM_N);
        bool first = true;
        for (size_t ti = 0; ti < SL_ARRAY_SIZE(types); ti++)
                for (int k = 0; k < 3; k++) {
                        if (!have[k])
                                continue;
                        printf("%s{\"type\":\"%s\",\"isa\":\"%s\",\"dot_gbs\":%.3f,\"gemm_gflops\":{\"1\":%.3f,\"8\":%.3f,\"64\":%.3f}}",
                               first ? "" : ",", types[ti].name, isas[k], dot_gbs[ti][k], gemm_gf[ti][k][0],
                               gemm_gf[ti][k][1], gemm_gf[ti][k][2]);
                        first = false;
                }
        printf("]}\n");
        free(src);
        free(Y);
        return 0;
}
