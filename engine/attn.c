/* attn.c — the attention arithmetic of the CPU backend, written to round exactly as ggml's
 * single-token CPU path (AVX-512 build): f16 dot products with four 16-lane FMA
 * accumulators folded 0+2, 1+3, 0+1 and reduced by GCC's tree; ggml's vectorised expf. With
 * the same rounding as llama.cpp, a disagreement with it means a bug, not noise. Each
 * function has a plain C form (the reference) and an AVX2 form that performs the same
 * operations lane for lane; both give identical bits. */
#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "attn.h"
#include "sl.h"

float attn_sum16(const float *a)
{
        float t3[8], t6[4];
        for (int k = 0; k < 8; k++)
                t3[k] = a[k + 8] + a[k];
        for (int k = 0; k < 4; k++)
                t6[k] = t3[k + 4] + t3[k];
        return (t6[0] + t6[2]) + (t6[1] + t6[3]);
}

float attn_expf(float x)
{
        const float r = 0x1.8p23f;
        const float z = fmaf(x, 0x1.715476p+0f, r);
        const float n = z - r;
        const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
        if (fabsf(n) > 192.0f)
                return n <= 0.0f ? 0.0f : INFINITY;
        const float u = b * b;
        const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                             u, fmaf(0x1.ffffecp-1f, b, 1.0f));
        return ldexpf(j, (int)n); /* _mm512_scalef_ps: j * 2^floor(n), n already integral */
}

/* ---- reference forms ---- */

static float dot_f16_ref(const uint16_t *k, const float *q, uint32_t n)
{
        float acc[4][16] = { { 0 } }, a[16];
        const uint32_t np = n & ~63u;
        for (uint32_t i = 0; i < np; i += 64)
                for (int j = 0; j < 4; j++)
                        for (int l = 0; l < 16; l++)
                                acc[j][l] = fmaf(sl_fp16_to_fp32(k[i + 16 * j + l]), q[i + 16 * j + l], acc[j][l]);
        for (int l = 0; l < 16; l++)
                a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        double s = attn_sum16(a);
        for (uint32_t i = np; i < n; i++)
                s += (double)(sl_fp16_to_fp32(k[i]) * q[i]);
        return (float)s;
}

static void pv_accumulate_ref(float *row, const uint16_t *v, float pw, uint32_t dv)
{
        for (uint32_t d = 0; d < dv; d++)
                row[d] = fmaf(sl_fp16_to_fp32(v[d]), pw, row[d]);
}

/* Outputs d0..dv-1 of rows that are dv floats apart. */
static void pv_fold_ref(const float *rows, uint32_t n_rows, float *out, uint32_t d0, uint32_t dv)
{
        for (uint32_t d = d0; d < dv; d++) {
                float x[4][16], a[16];
                for (uint32_t r = 0; r < ATTN_PV_ROWS; r++)
                        x[r / 16][r % 16] = r < n_rows ? rows[(size_t)r * dv + d] : 0.0f;
                for (int l = 0; l < 16; l++)
                        a[l] = (x[0][l] + x[2][l]) + (x[1][l] + x[3][l]);
                out[d] = (float)(double)attn_sum16(a);
        }
}

/* ---- AVX2 forms: the same lanes, two 8-wide registers per 16-wide ggml register ---- */

#if defined(__x86_64__)
#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

AVX2_FN static inline float sum16_avx2(__m256 lo, __m256 hi)
{
        const __m256 t3 = _mm256_add_ps(hi, lo);
        const __m128 t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
        const __m128 t8 = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
        return _mm_cvtss_f32(_mm_add_ss(t8, _mm_movehdup_ps(t8)));
}

AVX2_FN static float dot_f16_avx2(const uint16_t *k, const float *q, uint32_t n)
{
        __m256 acc[4][2];
        for (int j = 0; j < 4; j++)
                acc[j][0] = acc[j][1] = _mm256_setzero_ps();
        const uint32_t np = n & ~63u;
        for (uint32_t i = 0; i < np; i += 64)
                for (int j = 0; j < 4; j++)
                        for (int h = 0; h < 2; h++) {
                                const uint32_t o = i + 16 * j + 8 * h;
                                const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + o)));
                                acc[j][h] = _mm256_fmadd_ps(kv, _mm256_loadu_ps(q + o), acc[j][h]);
                        }
        const __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0][0], acc[2][0]), _mm256_add_ps(acc[1][0], acc[3][0]));
        const __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[0][1], acc[2][1]), _mm256_add_ps(acc[1][1], acc[3][1]));
        double s = sum16_avx2(lo, hi);
        for (uint32_t i = np; i < n; i++)
                s += (double)(sl_fp16_to_fp32(k[i]) * q[i]);
        return (float)s;
}

AVX2_FN static void pv_accumulate_avx2(float *row, const uint16_t *v, float pw, uint32_t dv)
{
        const __m256 w = _mm256_set1_ps(pw);
        uint32_t d = 0;
        for (; d + 8 <= dv; d += 8) {
                const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + d)));
                _mm256_storeu_ps(row + d, _mm256_fmadd_ps(vv, w, _mm256_loadu_ps(row + d)));
        }
        for (; d < dv; d++)
                row[d] = fmaf(sl_fp16_to_fp32(v[d]), pw, row[d]);
}

/* Per group of 8 outputs: the fold, then the reduction tree as whole-row adds. */
AVX2_FN static void pv_fold_avx2(const float *rows, uint32_t n_rows, float *out, uint32_t dv)
{
        uint32_t d = 0;
        for (; d + 8 <= dv; d += 8) {
                __m256 a[16];
                for (int l = 0; l < 16; l++) {
                        __m256 x[4];
                        for (int j = 0; j < 4; j++) {
                                const uint32_t r = 16 * j + l;
                                x[j] = r < n_rows ? _mm256_loadu_ps(rows + (size_t)r * dv + d) : _mm256_setzero_ps();
                        }
                        a[l] = _mm256_add_ps(_mm256_add_ps(x[0], x[2]), _mm256_add_ps(x[1], x[3]));
                }
                __m256 t3[8], t6[4];
                for (int k = 0; k < 8; k++)
                        t3[k] = _mm256_add_ps(a[k + 8], a[k]);
                for (int k = 0; k < 4; k++)
                        t6[k] = _mm256_add_ps(t3[k + 4], t3[k]);
                _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(t6[0], t6[2]), _mm256_add_ps(t6[1], t6[3])));
        }
        pv_fold_ref(rows, n_rows, out, d, dv);
}
#endif

/* ---- dispatch ---- */

float attn_dot_f16(bool simd, const uint16_t *k, const float *q, uint32_t n)
{
#if defined(__x86_64__)
        if (simd)
                return dot_f16_avx2(k, q, n);
#endif
        (void)simd;
        return dot_f16_ref(k, q, n);
}

void attn_pv_accumulate(bool simd, float *rows, uint32_t p, const uint16_t *v, float pw, uint32_t dv)
{
        float *row = rows + (size_t)(p % ATTN_PV_ROWS) * dv;
#if defined(__x86_64__)
        if (simd) {
                pv_accumulate_avx2(row, v, pw, dv);
                return;
        }
#endif
        (void)simd;
        pv_accumulate_ref(row, v, pw, dv);
}

void attn_pv_fold(bool simd, const float *rows, uint32_t n_rows, float *out, uint32_t dv)
{
#if defined(__x86_64__)
        if (simd) {
                pv_fold_avx2(rows, n_rows, out, dv);
                return;
        }
#endif
        (void)simd;
        pv_fold_ref(rows, n_rows, out, 0, dv);
}
