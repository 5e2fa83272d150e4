/* quant.c — the tensor-type table, plain C reference kernels bit-exact with ggml's
 * (de)quantizers and with the x86 vec_dot kernels llama.cpp runs on an AVX2 / AVX-512
 * machine, the run-time dispatch to the SIMD kernels in quant_x86.c (which return the same
 * floats), and quant_gemm, the row-range matmul the CPU forward pass runs per thread. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "sl.h"

/* Multi-token dot: y[t * y_stride] = dot(w, x + t * x_stride) for t in [0, ntok). Every
 * kernel computes each token with the same instruction sequence whatever ntok is, so
 * quant_gemm's results never depend on how tokens are grouped. */
typedef void (*quant_dot_fn)(int64_t n, const void *w, const void *x, size_t x_stride, int ntok,
                             float *y, size_t y_stride);
typedef void (*quant_quantize_fn)(const float *src, void *dst, int64_t n);

/* provided by quant_x86.c (returns NULL where it has no kernel or the ISA is absent) */
int quant_x86_level(void);
quant_dot_fn quant_x86_dot(int level, uint32_t wtype);
quant_quantize_fn quant_x86_quantize(int level, uint32_t type);

/* ---- type table ---- */

static const struct quant_type types[GGML_TYPE_COUNT] = {
        [GGML_TYPE_F32] = { 1, 4, GGML_TYPE_F32 },
        [GGML_TYPE_F16] = { 1, 2, GGML_TYPE_F16 },
        [GGML_TYPE_BF16] = { 1, 2, GGML_TYPE_BF16 },
        [GGML_TYPE_Q4_0] = { QK4_0, sizeof(block_q4_0), GGML_TYPE_Q8_0 },
        [GGML_TYPE_Q4_1] = { QK4_1, sizeof(block_q4_1), GGML_TYPE_Q8_1 },
        [GGML_TYPE_Q5_0] = { QK5_0, sizeof(block_q5_0), GGML_TYPE_Q8_0 },
        [GGML_TYPE_Q5_1] = { QK5_1, sizeof(block_q5_1), GGML_TYPE_Q8_1 },
        [GGML_TYPE_Q8_0] = { QK8_0, sizeof(block_q8_0), GGML_TYPE_Q8_0 },
        [GGML_TYPE_Q8_1] = { QK8_1, sizeof(block_q8_1), GGML_TYPE_Q8_1 },
        [GGML_TYPE_Q4_K] = { QK_K, sizeof(block_q4_K), GGML_TYPE_Q8_K },
        [GGML_TYPE_Q5_K] = { QK_K, sizeof(block_q5_K), GGML_TYPE_Q8_K },
        [GGML_TYPE_Q6_K] = { QK_K, sizeof(block_q6_K), GGML_TYPE_Q8_K },
        [GGML_TYPE_Q8_K] = { QK_K, sizeof(block_q8_K), GGML_TYPE_Q8_K },
};

_Static_assert(sizeof(block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(block_q8_K) == 292, "q8_K layout");

const struct quant_type *quant_type_get(uint32_t type)
{
        if (type >= GGML_TYPE_COUNT || types[type].blck == 0)
                return NULL;
        return &types[type];
}

size_t quant_row_size(uint32_t type, int64_t n)
{
        const struct quant_type *t = quant_type_get(type);
        if (!t || n < 0)
                return 0;
        return (size_t)(n / t->blck) * t->size;
}

static inline float h2f(ggml_half h) { return sl_fp16_to_fp32(h); }

/* ---- dequantization (ggml's dequantize_row_*) ---- */

static void dequant_f32(const void *src, float *y, int64_t n) { memcpy(y, src, (size_t)n * 4); }

static void dequant_f16(const void *src, float *y, int64_t n)
{
        const uint16_t *x = src;
        for (int64_t i = 0; i < n; i++)
                y[i] = sl_fp16_to_fp32(x[i]);
}

static void dequant_bf16(const void *src, float *y, int64_t n)
{
        const uint16_t *x = src;
        for (int64_t i = 0; i < n; i++)
                y[i] = sl_bf16_to_fp32(x[i]);
}

static void dequant_q4_0(const void *src, float *y, int64_t n)
{
        const block_q4_0 *x = src;
        for (int64_t i = 0; i < n / QK4_0; i++, y += QK4_0) {
                const float d = h2f(x[i].d);
                for (int j = 0; j < QK4_0 / 2; j++) {
                        y[j] = ((x[i].qs[j] & 0x0F) - 8) * d;
                        y[j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
                }
        }
}

static void dequant_q4_1(const void *src, float *y, int64_t n)
{
        const block_q4_1 *x = src;
        for (int64_t i = 0; i < n / QK4_1; i++, y += QK4_1) {
                const float d = h2f(x[i].d), m = h2f(x[i].m);
                for (int j = 0; j < QK4_1 / 2; j++) {
                        y[j] = (x[i].qs[j] & 0x0F) * d + m;
                        y[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
                }
        }
}

static void dequant_q5_0(const void *src, float *y, int64_t n)
{
        const block_q5_0 *x = src;
        for (int64_t i = 0; i < n / QK5_0; i++, y += QK5_0) {
                const float d = h2f(x[i].d);
                uint32_t qh;
                memcpy(&qh, x[i].qh, 4);
                for (int j = 0; j < QK5_0 / 2; j++) {
                        const uint8_t xh0 = ((qh >> j) << 4) & 0x10;
                        const uint8_t xh1 = (qh >> (j + 12)) & 0x10;
                        y[j] = (((x[i].qs[j] & 0x0F) | xh0) - 16) * d;
                        y[j + QK5_0 / 2] = (((x[i].qs[j] >> 4) | xh1) - 16) * d;
                }
        }
}

static void dequant_q5_1(const void *src, float *y, int64_t n)
{
        const block_q5_1 *x = src;
        for (int64_t i = 0; i < n / QK5_1; i++, y += QK5_1) {
                const float d = h2f(x[i].d), m = h2f(x[i].m);
                uint32_t qh;
                memcpy(&qh, x[i].qh, 4);
                for (int j = 0; j < QK5_1 / 2; j++) {
                        const uint8_t xh0 = ((qh >> j) << 4) & 0x10;
                        const uint8_t xh1 = (qh >> (j + 12)) & 0x10;
                        y[j] = ((x[i].qs[j] & 0x0F) | xh0) * d + m;
                        y[j + QK5_1 / 2] = ((x[i].qs[j] >> 4) | xh1) * d + m;
                }
        }
}

static void dequant_q8_0(const void *src, float *y, int64_t n)
{
        const block_q8_0 *x = src;
        for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0) {
                const float d = h2f(x[i].d);
                for (int j = 0; j < QK8_0; j++)
                        y[j] = x[i].qs[j] * d;
        }
}

static void dequant_q8_1(const void *src, float *y, int64_t n)
{
        const block_q8_1 *x = src;
        for (int64_t i = 0; i < n / QK8_1; i++, y += QK8_1) {
                const float d = h2f(x[i].d);
                for (int j = 0; j < QK8_1; j++)
                        y[j] = x[i].qs[j] * d;
        }
}

static void dequant_q8_K(const void *src, float *y, int64_t n)
{
        const block_q8_K *x = src;
        for (int64_t i = 0; i < n / QK_K; i++, y += QK_K)
                for (int j = 0; j < QK_K; j++)
                        y[j] = x[i].d * x[i].qs[j];
}

/* The 12 scale bytes of q4_K/q5_K hold eight 6-bit scales and eight 6-bit mins. */
static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
        if (j < 4) {
                *d = q[j] & 63;
                *m = q[j + 4] & 63;
        } else {
                *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
                *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
        }
}

static void dequant_q4_K(const void *src, float *y, int64_t n)
{
        const block_q4_K *x = src;
        for (int64_t i = 0; i < n / QK_K; i++) {
                const uint8_t *q = x[i].qs;
                const float d = h2f(x[i].d), min = h2f(x[i].dmin);
                int is = 0;
                uint8_t sc, m;
                for (int j = 0; j < QK_K; j += 64) {
                        get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
                        const float d1 = d * sc, m1 = min * m;
                        get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
                        const float d2 = d * sc, m2 = min * m;
                        for (int l = 0; l < 32; ++l)
                                *y++ = d1 * (q[l] & 0xF) - m1;
                        for (int l = 0; l < 32; ++l)
                                *y++ = d2 * (q[l] >> 4) - m2;
                        q += 32;
                        is += 2;
                }
        }
}

static void dequant_q5_K(const void *src, float *y, int64_t n)
{
        const block_q5_K *x = src;
        for (int64_t i = 0; i < n / QK_K; i++) {
                const uint8_t *ql = x[i].qs, *qh = x[i].qh;
                const float d = h2f(x[i].d), min = h2f(x[i].dmin);
                int is = 0;
                uint8_t sc, m, u1 = 1, u2 = 2;
                for (int j = 0; j < QK_K; j += 64) {
                        get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
                        const float d1 = d * sc, m1 = min * m;
                        get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
                        const float d2 = d * sc, m2 = min * m;
                        for (int l = 0; l < 32; ++l)
                                *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
                        for (int l = 0; l < 32; ++l)
                                *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
                        ql += 32;
                        is += 2;
                        u1 <<= 2;
                        u2 <<= 2;
                }
        }
}

static void dequant_q6_K(const void *src, float *y, int64_t n)
{
        const block_q6_K *x = src;
        for (int64_t i = 0; i < n / QK_K; i++) {
                const float d = h2f(x[i].d);
                const uint8_t *ql = x[i].ql, *qh = x[i].qh;
                const int8_t *sc = x[i].scales;
                for (int k = 0; k < QK_K; k += 128) {
                        for (int l = 0; l < 32; ++l) {
                                const int is = l / 16;
                                const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                                const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                                const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                                const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                                y[l + 0] = d * sc[is + 0] * q1;
                                y[l + 32] = d * sc[is + 2] * q2;
                                y[l + 64] = d * sc[is + 4] * q3;
                                y[l + 96] = d * sc[is + 6] * q4;
                        }
                        y += 128;
                        ql += 64;
                        qh += 32;
                        sc += 8;
                }
        }
}

/* ---- activation quantization (ggml's quantize_row_*_ref) ---- */

static void quant_f32(const float *x, void *dst, int64_t n) { memcpy(dst, x, (size_t)n * 4); }

static void quant_f16(const float *x, void *dst, int64_t n)
{
        uint16_t *y = dst;
        for (int64_t i = 0; i < n; i++)
                y[i] = sl_fp32_to_fp16(x[i]);
}

static void quant_bf16(const float *x, void *dst, int64_t n)
{
        uint16_t *y = dst;
        for (int64_t i = 0; i < n; i++)
                y[i] = sl_fp32_to_bf16(x[i]);
}

/* Activation quantizers for Q8_0/Q8_1 follow what ggml runs on x86 (its AVX2 path:
 * id = 127 / amax, round half to even) rather than its portable reference (id = 1 / d,
 * round half away from zero). The two differ by an ulp now and then, enough to flip an
 * int8, and llama.cpp, our oracle, runs the x86 path on the machines we serve from. */
static void quant_q8_0(const float *x, void *dst, int64_t n)
{
        block_q8_0 *y = dst;
        for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
                float amax = 0.0f;
                for (int j = 0; j < QK8_0; j++)
                        amax = SL_MAX(amax, fabsf(x[j]));
                const float d = amax / 127.0f;
                const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
                y[i].d = sl_fp32_to_fp16(d);
                for (int j = 0; j < QK8_0; j++)
                        y[i].qs[j] = (int8_t)rintf(x[j] * id);
        }
}

static void quant_q8_1(const float *x, void *dst, int64_t n)
{
        block_q8_1 *y = dst;
        for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
                float amax = 0.0f;
                for (int j = 0; j < QK8_1; j++)
                        amax = SL_MAX(amax, fabsf(x[j]));
                const float d = amax / 127.0f;
                const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
                y[i].d = sl_fp32_to_fp16(d);
                int sum = 0;
                for (int j = 0; j < QK8_1 / 2; j++) {
                        const float v0 = x[j] * id, v1 = x[QK8_1 / 2 + j] * id;
                        y[i].qs[j] = (int8_t)rintf(v0);
                        y[i].qs[QK8_1 / 2 + j] = (int8_t)rintf(v1);
                        sum += y[i].qs[j] + y[i].qs[QK8_1 / 2 + j];
                }
                y[i].s = sl_fp32_to_fp16(sum * d);
        }
}

/* ggml's nearest_int: round half to even through the 1.5 * 2^23 trick. */
static inline int nearest_int(float fval)
{
        const float val = fval + 12582912.f;
        int i;
        memcpy(&i, &val, sizeof(int));
        return (i & 0x007fffff) - 0x00400000;
}

static void quant_q8_K(const float *x, void *dst, int64_t n)
{
        block_q8_K *y = dst;
        for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
                float max = 0, amax = 0;
                for (int j = 0; j < QK_K; ++j) {
                        const float ax = fabsf(x[j]);
                        if (ax > amax) {
                                amax = ax;
                                max = x[j];
                        }
                }
                if (!amax) {
                        /* ggml leaves bsums unwritten here; zero keeps the output defined */
                        memset(&y[i], 0, sizeof(y[i]));
                        continue;
                }
                const float iscale = -127.f / max;
                for (int j = 0; j < QK_K; ++j) {
                        const int v = nearest_int(iscale * x[j]);
                        y[i].qs[j] = (int8_t)SL_MIN(127, v);
                }
                for (int j = 0; j < QK_K / 16; ++j) {
                        int sum = 0;
                        for (int k = 0; k < 16; ++k)
                                sum += y[i].qs[j * 16 + k];
                        y[i].bsums[j] = (int16_t)sum;
                }
                y[i].d = 1 / iscale;
        }
}

/* ---- reference dot products ----
 * Plain C with the lanes and summation order of ggml's x86 kernels as llama.cpp builds
 * them for this class of machine (AVX2, FMA, F16C, AVX-512 F/BW/VL/VNNI/BF16; see
 * quant_x86.c), not ggml's portable reference: quant_x86.c's kernels and these return the
 * same floats bit for bit, and both the same as llama.cpp. Integer lane sums are exact, so
 * only which elements share a lane matters there; every float operation is spelled out. */

/* a product rounded on its own, never fused into the add that follows */
static inline float mul_rounded(float a, float b)
{
        float p = a * b;
        __asm__("" : "+g"(p));
        return p;
}

/* ggml's hsum_float_8: (x[k] + x[k+4]), then (0 + 2) + (1 + 3) */
static inline float hsum8(const float x[8])
{
        float r[4];
        for (int k = 0; k < 4; k++)
                r[k] = x[k + 4] + x[k];
        return (r[0] + r[2]) + (r[1] + r[3]);
}

/* _mm512_reduce_add_ps as GCC expands it: halves, then hsum8 */
static inline float sum16(const float a[16])
{
        float t[8];
        for (int k = 0; k < 8; k++)
                t[k] = a[k + 8] + a[k];
        return hsum8(t);
}

/* ggml_vec_dot_f32 / _f16 (AVX-512, no AVX512-FP16): four 16-lane fma accumulators over
 * 64-element steps, folded (0 + 2) + (1 + 3) and reduced; the leftovers in a float for f32
 * (GCC's compiled loop: runs of 16 and 8 as rounded products, the last n % 8 fused), in a
 * double for f16 (whose products are exact in a float). */
static float dot_f32(int64_t n, const void *vw, const void *vx)
{
        const float *w = vw, *x = vx;
        float acc[4][16] = { { 0 } }, a[16];
        const int64_t np = n & ~(int64_t)63;
        for (int64_t i = 0; i < np; i += 64)
                for (int j = 0; j < 4; j++)
                        for (int l = 0; l < 16; l++)
                                acc[j][l] = fmaf(w[i + 16 * j + l], x[i + 16 * j + l], acc[j][l]);
        for (int l = 0; l < 16; l++)
                a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        float s = sum16(a);
        const int64_t nr = np + ((n - np) & ~(int64_t)7);
        for (int64_t i = np; i < n; i++)
                s = i < nr ? s + mul_rounded(w[i], x[i]) : fmaf(w[i], x[i], s);
        return s;
}

static float dot_f16(int64_t n, const void *vw, const void *vx)
{
        const uint16_t *w = vw, *x = vx;
        float acc[4][16] = { { 0 } }, a[16];
        const int64_t np = n & ~(int64_t)63;
        for (int64_t i = 0; i < np; i += 64)
                for (int j = 0; j < 4; j++)
                        for (int l = 0; l < 16; l++)
                                acc[j][l] = fmaf(h2f(w[i + 16 * j + l]), h2f(x[i + 16 * j + l]), acc[j][l]);
        for (int l = 0; l < 16; l++)
                a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
        double s = sum16(a);
        for (int64_t i = np; i < n; i++)
                s += (double)(h2f(w[i]) * h2f(x[i]));
        return (float)s;
}

/* vdpbf16ps on one lane: acc += odd product, then += even product, each fused and rounded
 * to nearest; denormal inputs read as zero, denormal results flushed to zero (measured on
 * the instruction itself, Zen 5). */
static inline float ftz(float v) { return fabsf(v) < 0x1p-126f ? copysignf(0.0f, v) : v; }

static inline float dpbf16_lane(float acc, uint16_t w0, uint16_t w1, uint16_t x0, uint16_t x1)
{
        acc = ftz(fmaf(ftz(sl_bf16_to_fp32(w1)), ftz(sl_bf16_to_fp32(x1)), ftz(acc)));
        return ftz(fmaf(ftz(sl_bf16_to_fp32(w0)), ftz(sl_bf16_to_fp32(x0)), acc));
}

/* ggml_vec_dot_bf16 with AVX512-BF16: two 16-lane vdpbf16ps accumulators of 32 elements
 * a step each, reduced separately and summed in a double with the leftovers. */
static float dot_bf16(int64_t n, const void *vw, const void *vx)
{
        const uint16_t *w = vw, *x = vx;
        float acc[2][16] = { { 0 } };
        const int64_t np = n & ~(int64_t)63;
        for (int64_t i = 0; i < np; i += 64)
                for (int c = 0; c < 2; c++)
                        for (int l = 0; l < 16; l++) {
                                const int64_t e = i + 32 * c + 2 * l;
                                acc[c][l] = dpbf16_lane(acc[c][l], w[e], w[e + 1], x[e], x[e + 1]);
                        }
        double s = 0.0;
        s += sum16(acc[0]);
        s += sum16(acc[1]);
        for (int64_t i = np; i < n; i++)
                s += (double)mul_rounded(sl_bf16_to_fp32(w[i]), sl_bf16_to_fp32(x[i]));
        return (float)s;
}

/* The 32-element blocks (ggml's AVX2 kernels): the int32 lane l sums elements 4l..4l+3,
 * acc[l] += (d_w * d_x) * lane, fused; q4_1 / q5_1 add m_w * s_x into one float, fused. */
static float legacy_finish(float acc[8], float summ) { return hsum8(acc) + summ; }

static float dot_q4_0(int64_t n, const void *vw, const void *vx)
{
        const block_q4_0 *w = vw;
        const block_q8_0 *x = vx;
        float acc[8] = { 0 };
        for (int64_t ib = 0; ib < n / QK8_0; ib++) {
                const float d = h2f(w[ib].d) * h2f(x[ib].d);
                for (int l = 0; l < 8; l++) {
                        int sumi = 0;
                        for (int e = 4 * l; e < 4 * l + 4; e++) {
                                const int q = e < 16 ? (w[ib].qs[e] & 0x0F) : (w[ib].qs[e - 16] >> 4);
                                sumi += (q - 8) * x[ib].qs[e];
                        }
                        acc[l] = fmaf(d, (float)sumi, acc[l]);
                }
        }
        return legacy_finish(acc, 0.0f);
}

static float dot_q4_1(int64_t n, const void *vw, const void *vx)
{
        const block_q4_1 *w = vw;
        const block_q8_1 *x = vx;
        float acc[8] = { 0 }, summ = 0.0f;
        for (int64_t ib = 0; ib < n / QK8_1; ib++) {
                const float d = h2f(w[ib].d) * h2f(x[ib].d);
                for (int l = 0; l < 8; l++) {
                        int sumi = 0;
                        for (int e = 4 * l; e < 4 * l + 4; e++) {
                                const int q = e < 16 ? (w[ib].qs[e] & 0x0F) : (w[ib].qs[e - 16] >> 4);
                                sumi += q * x[ib].qs[e];
                        }
                        acc[l] = fmaf(d, (float)sumi, acc[l]);
                }
                summ = fmaf(h2f(w[ib].m), h2f(x[ib].s), summ);
        }
        return legacy_finish(acc, summ);
}

static inline int q5_elem(const uint8_t *qs, uint32_t qh, int e)
{
        const int q = e < 16 ? (qs[e] & 0x0F) : (qs[e - 16] >> 4);
        return q | (int)((qh >> e) & 1) << 4;
}

static float dot_q5_0(int64_t n, const void *vw, const void *vx)
{
        const block_q5_0 *w = vw;
        const block_q8_0 *x = vx;
        float acc[8] = { 0 };
        for (int64_t ib = 0; ib < n / QK8_0; ib++) {
                uint32_t qh;
                memcpy(&qh, w[ib].qh, 4);
                const float d = h2f(w[ib].d) * h2f(x[ib].d);
                for (int l = 0; l < 8; l++) {
                        int sumi = 0;
                        for (int e = 4 * l; e < 4 * l + 4; e++)
                                sumi += (q5_elem(w[ib].qs, qh, e) - 16) * x[ib].qs[e];
                        acc[l] = fmaf(d, (float)sumi, acc[l]);
                }
        }
        return legacy_finish(acc, 0.0f);
}

static float dot_q5_1(int64_t n, const void *vw, const void *vx)
{
        const block_q5_1 *w = vw;
        const block_q8_1 *x = vx;
        float acc[8] = { 0 }, summ = 0.0f;
        for (int64_t ib = 0; ib < n / QK8_1; ib++) {
                uint32_t qh;
                memcpy(&qh, w[ib].qh, 4);
                const float d = h2f(w[ib].d) * h2f(x[ib].d);
                for (int l = 0; l < 8; l++) {
                        int sumi = 0;
                        for (int e = 4 * l; e < 4 * l + 4; e++)
                                sumi += q5_elem(w[ib].qs, qh, e) * x[ib].qs[e];
                        acc[l] = fmaf(d, (float)sumi, acc[l]);
                }
                summ = fmaf(h2f(w[ib].m), h2f(x[ib].s), summ);
        }
        return legacy_finish(acc, summ);
}

static float dot_q8_0(int64_t n, const void *vw, const void *vx)
{
        const block_q8_0 *w = vw;
        const block_q8_0 *x = vx;
        float acc[8] = { 0 };
        for (int64_t ib = 0; ib < n / QK8_0; ib++) {
                const float d = h2f(w[ib].d) * h2f(x[ib].d);
                for (int l = 0; l < 8; l++) {
                        int sumi = 0;
                        for (int e = 4 * l; e < 4 * l + 4; e++)
                                sumi += w[ib].qs[e] * x[ib].qs[e];
                        acc[l] = fmaf(d, (float)sumi, acc[l]);
                }
        }
        return legacy_finish(acc, 0.0f);
}

/* Unpacks the 12 scale bytes into utmp: bytes 0..7 the scales, 8..15 the mins. */
static inline void unpack_k4_scales(const uint8_t *scales, uint32_t utmp[4])
{
        const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
        memcpy(utmp, scales, 12);
        utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
        const uint32_t uaux = utmp[1] & kmask1;
        utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
        utmp[2] = uaux;
        utmp[0] &= kmask1;
}

/* Lane l of a 32-byte register: bytes 16 * (l / 4) + 4 * (l % 4) .. + 3. */
static inline int lane_byte(int l, int b) { return 16 * (l / 4) + 4 * (l % 4) + b; }

/* q4_K / q5_K (ggml's AVX2 kernels): aux8 holds the 256 unsigned weights; lane l sums,
 * over the four 64-element groups, scale * (its 4 bytes of the low 32) + scale * (of the
 * high 32). The min term: four float lanes for q4_K, one float for q5_K. */
static void dot_k4_block(const int8_t *aux8, const uint8_t *scales_raw, const block_q8_K *y, float dw,
                         float dminw, bool q5, float acc[8], float accm[4])
{
        uint32_t utmp[4];
        unpack_k4_scales(scales_raw, utmp);
        const uint8_t *scales = (const uint8_t *)&utmp[0];
        const uint8_t *mins = (const uint8_t *)&utmp[2];
        const float dmin = -y->d * dminw;
        int prod[4], isum = 0;
        for (int k = 0; k < 4; k++) {
                prod[k] = mins[2 * k] * (y->bsums[4 * k] + y->bsums[4 * k + 1]) +
                          mins[2 * k + 1] * (y->bsums[4 * k + 2] + y->bsums[4 * k + 3]);
                isum += prod[k];
        }
        if (q5)
                accm[0] = fmaf(dmin, (float)isum, accm[0]);
        else
                for (int k = 0; k < 4; k++)
                        accm[k] = fmaf(dmin, (float)prod[k], accm[k]);
        const float d = y->d * dw;
        for (int l = 0; l < 8; l++) {
                int sumi = 0;
                for (int j = 0; j < QK_K / 64; j++)
                        for (int h = 0; h < 2; h++) {
                                int p = 0;
                                for (int b = 0; b < 4; b++) {
                                        const int e = 64 * j + 32 * h + lane_byte(l, b);
                                        p += aux8[e] * y->qs[e];
                                }
                                sumi += scales[2 * j + h] * p;
                        }
                acc[l] = fmaf(d, (float)sumi, acc[l]);
        }
}

static float dot_q4_K(int64_t n, const void *vw, const void *vx)
{
        const block_q4_K *w = vw;
        const block_q8_K *x = vx;
        int8_t aux8[QK_K];
        float acc[8] = { 0 }, accm[4] = { 0 };
        for (int64_t i = 0; i < n / QK_K; i++) {
                const uint8_t *q4 = w[i].qs;
                int8_t *a = aux8;
                for (int j = 0; j < QK_K / 64; ++j) {
                        for (int l = 0; l < 32; ++l)
                                a[l] = (int8_t)(q4[l] & 0xF);
                        a += 32;
                        for (int l = 0; l < 32; ++l)
                                a[l] = (int8_t)(q4[l] >> 4);
                        a += 32;
                        q4 += 32;
                }
                dot_k4_block(aux8, w[i].scales, &x[i], h2f(w[i].d), h2f(w[i].dmin), false, acc, accm);
        }
        return hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

static float dot_q5_K(int64_t n, const void *vw, const void *vx)
{
        const block_q5_K *w = vw;
        const block_q8_K *x = vx;
        int8_t aux8[QK_K];
        float acc[8] = { 0 }, summs[4] = { 0 };
        for (int64_t i = 0; i < n / QK_K; i++) {
                const uint8_t *q4 = w[i].qs, *hm = w[i].qh;
                int8_t *a = aux8;
                uint8_t m = 1;
                for (int j = 0; j < QK_K / 64; ++j) {
                        for (int l = 0; l < 32; ++l)
                                a[l] = (int8_t)((q4[l] & 0xF) + (hm[l] & m ? 16 : 0));
                        a += 32;
                        m <<= 1;
                        for (int l = 0; l < 32; ++l)
                                a[l] = (int8_t)((q4[l] >> 4) + (hm[l] & m ? 16 : 0));
                        a += 32;
                        m <<= 1;
                        q4 += 32;
                }
                dot_k4_block(aux8, w[i].scales, &x[i], h2f(w[i].d), h2f(w[i].dmin), true, acc, summs);
        }
        return hsum8(acc) + summs[0];
}

/* q6_K (ggml's AVX2 kernel): unsigned 6-bit weights; lane l sums its 4 bytes of each of
 * the eight 32-element groups times their scale, less 32 * (bsums . scales) of the two
 * 16-element groups 2l, 2l + 1. */
static float dot_q6_K(int64_t n, const void *vw, const void *vx)
{
        const block_q6_K *w = vw;
        const block_q8_K *x = vx;
        uint8_t aux8[QK_K];
        float acc[8] = { 0 };
        for (int64_t i = 0; i < n / QK_K; i++) {
                const uint8_t *q4 = w[i].ql, *qh = w[i].qh;
                uint8_t *a = aux8;
                for (int j = 0; j < QK_K; j += 128) {
                        for (int l = 0; l < 32; ++l) {
                                a[l + 0] = (uint8_t)((q4[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4));
                                a[l + 32] = (uint8_t)((q4[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                                a[l + 64] = (uint8_t)((q4[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4));
                                a[l + 96] = (uint8_t)((q4[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
                        }
                        a += 128;
                        q4 += 64;
                        qh += 32;
                }
                const int8_t *sc = w[i].scales;
                const float d = x[i].d * h2f(w[i].d);
                for (int l = 0; l < 8; l++) {
                        int sumi = 0;
                        for (int c = 0; c < QK_K / 32; c++) {
                                int p = 0;
                                for (int b = 0; b < 4; b++) {
                                        const int e = 32 * c + lane_byte(l, b);
                                        p += aux8[e] * x[i].qs[e];
                                }
                                sumi += sc[2 * c + l / 4] * p;
                        }
                        sumi -= 32 * (x[i].bsums[2 * l] * sc[2 * l] + x[i].bsums[2 * l + 1] * sc[2 * l + 1]);
                        acc[l] = fmaf(d, (float)sumi, acc[l]);
                }
        }
        return hsum8(acc);
}

/* The reference kernels wrapped into the multi-token form the dispatch table holds. */
#define REF_MULTI(name)                                                                          \
        static void ref_##name(int64_t n, const void *w, const void *x, size_t x_stride, int ntok, \
                               float *y, size_t y_stride)                                        \
        {                                                                                        \
                for (int t = 0; t < ntok; t++)                                                   \
                        y[(size_t)t * y_stride] = dot_##name(n, w, (const char *)x + t * x_stride); \
        }
REF_MULTI(f32)
REF_MULTI(f16)
REF_MULTI(bf16)
REF_MULTI(q4_0)
REF_MULTI(q4_1)
REF_MULTI(q5_0)
REF_MULTI(q5_1)
REF_MULTI(q8_0)
REF_MULTI(q4_K)
REF_MULTI(q5_K)
REF_MULTI(q6_K)

/* ---- dispatch ---- */

typedef void (*quant_dequant_fn)(const void *src, float *dst, int64_t n);

static const quant_dequant_fn dequant_ref[GGML_TYPE_COUNT] = {
        [GGML_TYPE_F32] = dequant_f32,   [GGML_TYPE_F16] = dequant_f16,   [GGML_TYPE_BF16] = dequant_bf16,
        [GGML_TYPE_Q4_0] = dequant_q4_0, [GGML_TYPE_Q4_1] = dequant_q4_1, [GGML_TYPE_Q5_0] = dequant_q5_0,
        [GGML_TYPE_Q5_1] = dequant_q5_1, [GGML_TYPE_Q8_0] = dequant_q8_0, [GGML_TYPE_Q8_1] = dequant_q8_1,
        [GGML_TYPE_Q4_K] = dequant_q4_K, [GGML_TYPE_Q5_K] = dequant_q5_K, [GGML_TYPE_Q6_K] = dequant_q6_K,
        [GGML_TYPE_Q8_K] = dequant_q8_K,
};

static const quant_quantize_fn quantize_ref[GGML_TYPE_COUNT] = {
        [GGML_TYPE_F32] = quant_f32,   [GGML_TYPE_F16] = quant_f16,   [GGML_TYPE_BF16] = quant_bf16,
        [GGML_TYPE_Q8_0] = quant_q8_0, [GGML_TYPE_Q8_1] = quant_q8_1, [GGML_TYPE_Q8_K] = quant_q8_K,
};

static const quant_dot_fn dot_ref[GGML_TYPE_COUNT] = {
        [GGML_TYPE_F32] = ref_f32,   [GGML_TYPE_F16] = ref_f16,   [GGML_TYPE_BF16] = ref_bf16,
        [GGML_TYPE_Q4_0] = ref_q4_0, [GGML_TYPE_Q4_1] = ref_q4_1, [GGML_TYPE_Q5_0] = ref_q5_0,
        [GGML_TYPE_Q5_1] = ref_q5_1, [GGML_TYPE_Q8_0] = ref_q8_0, [GGML_TYPE_Q4_K] = ref_q4_K,
        [GGML_TYPE_Q5_K] = ref_q5_K, [GGML_TYPE_Q6_K] = ref_q6_K,
};

static struct {
        pthread_mutex_t lock;
        bool done;
        const char *isa;
        quant_dot_fn dot[GGML_TYPE_COUNT];
        quant_quantize_fn quantize[GGML_TYPE_COUNT];
} disp = { .lock = PTHREAD_MUTEX_INITIALIZER, .isa = "ref" };

static void select_kernels(bool force_ref)
{
        int level = force_ref ? 0 : quant_x86_level();
        /* SLUICE_QUANT_ISA=avx2|ref caps the choice: for tests, benchmarks and for ruling a
         * kernel set out when chasing a numerical difference. */
        const char *cap = getenv("SLUICE_QUANT_ISA");
        if (cap && strcmp(cap, "ref") == 0)
                level = 0;
        else if (cap && strcmp(cap, "avx2") == 0 && level > 1)
                level = 1;
        memcpy(disp.dot, dot_ref, sizeof(disp.dot));
        memcpy(disp.quantize, quantize_ref, sizeof(disp.quantize));
        disp.isa = level >= 2 ? "avx512" : level == 1 ? "avx2" : "ref";
        if (level == 0)
                return;
        for (uint32_t t = 0; t < GGML_TYPE_COUNT; t++) {
                quant_dot_fn d = quant_x86_dot(level, t);
                quant_quantize_fn q = quant_x86_quantize(level, t);
                if (d)
                        disp.dot[t] = d;
                if (q)
                        disp.quantize[t] = q;
        }
}

void quant_init(bool force_ref)
{
        /* A later call may switch kernel sets (tests and the bench do); the engine calls
         * this once at start, before any worker runs. */
        pthread_mutex_lock(&disp.lock);
        select_kernels(force_ref);
        __atomic_store_n(&disp.done, true, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&disp.lock);
}

static inline void ensure_init(void)
{
        if (__builtin_expect(!__atomic_load_n(&disp.done, __ATOMIC_ACQUIRE), 0))
                quant_init(false);
}

const char *quant_isa(void)
{
        ensure_init();
        return disp.isa;
}

void quant_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n)
{
        if (type < GGML_TYPE_COUNT && dequant_ref[type])
                dequant_ref[type](src, dst, n);
}

void quant_quantize_row(uint32_t type, const float *src, void *dst, int64_t n)
{
        ensure_init();
        if (type < GGML_TYPE_COUNT && disp.quantize[type])
                disp.quantize[type](src, dst, n);
}

void quant_vec_dot(uint32_t wtype, int64_t n, const void *w, const void *x, float *out)
{
        ensure_init();
        if (wtype < GGML_TYPE_COUNT && disp.dot[wtype])
                disp.dot[wtype](n, w, x, 0, 1, out, 0);
        else
                *out = NAN;
}

/* Rows in a tile: their weights (a few KiB each) stay in L2 while a group of tokens,
 * sized to fit L1, is dotted with each in turn. */
#define GEMM_ROWS 16
#define GEMM_L1_BYTES (24 * 1024)

void quant_gemm(uint32_t wtype, int64_t n, const void *W, size_t w_stride, int64_t r0, int64_t r1,
                const void *X, size_t x_stride, int64_t n_tok, float *Y, int64_t ldy)
{
        ensure_init();
        quant_dot_fn dot = wtype < GGML_TYPE_COUNT ? disp.dot[wtype] : NULL;
        if (!dot) {
                for (int64_t t = 0; t < n_tok; t++)
                        for (int64_t r = r0; r < r1; r++)
                                Y[t * ldy + r] = NAN;
                return;
        }
        const struct quant_type *vt = quant_type_get(types[wtype].vec_dot_type);
        const size_t xrow = quant_row_size(vt == NULL ? wtype : types[wtype].vec_dot_type, n);
        int64_t tb = xrow ? (int64_t)(GEMM_L1_BYTES / xrow) : 64;
        tb = SL_MAX(4, SL_MIN(64, tb & ~(int64_t)3));
        for (int64_t rb = r0; rb < r1; rb += GEMM_ROWS) {
                const int64_t re = SL_MIN(r1, rb + GEMM_ROWS);
                for (int64_t t0 = 0; t0 < n_tok; t0 += tb) {
                        const int nt = (int)SL_MIN(tb, n_tok - t0);
                        const char *xt = (const char *)X + (size_t)t0 * x_stride;
                        for (int64_t r = rb; r < re; r++)
                                dot(n, (const char *)W + (size_t)r * w_stride, xt, x_stride, nt,
                                    Y + t0 * ldy + r, (size_t)ldy);
                }
        }
}
