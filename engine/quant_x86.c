/* quant_x86.c — AVX2 (+FMA, F16C) and AVX-512 (VL, BW, VNNI; BF16 where present) kernels
 * for quant.c: the multi-token dot products of every weight type and the hot activation
 * quantizers (q8_0, q8_K). Each dot mirrors ggml's x86 kernel as llama.cpp builds it for an
 * AVX2 / AVX-512 machine (lanes, integer lane sums, float summation order), so it returns
 * the same float as llama.cpp and as quant.c's reference, bit for bit. */
#ifndef QX_BODY /* ---- outer part: compiled once ---- */

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

typedef void (*quant_dot_fn)(int64_t n, const void *w, const void *x, size_t x_stride, int ntok,
                             float *y, size_t y_stride);
typedef void (*quant_quantize_fn)(const float *src, void *dst, int64_t n);

int quant_x86_level(void);
quant_dot_fn quant_x86_dot(int level, uint32_t wtype);
quant_quantize_fn quant_x86_quantize(int level, uint32_t type);

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "sl.h"

#define QX_CAT2(a, b) a##_##b
#define QX_CAT(a, b) QX_CAT2(a, b)
#define QX_INLINE static inline __attribute__((always_inline, target(QX_TARGET)))
#define QX_FN static __attribute__((target(QX_TARGET)))

/* kernel families, folded at compile time inside each always-inline body */
enum { QXF_F32, QXF_F16, QXF_BF16 };
enum { QXL_Q4_0, QXL_Q4_1, QXL_Q5_0, QXL_Q5_1, QXL_Q8_0 };
enum { QXK_Q4_K, QXK_Q5_K };

/* The kernel bodies below are compiled twice, once per ISA, by including this file into
 * itself with different QX_* settings: one source, two target-specific instances. */
#define QX_BODY
#define QX_SUFFIX avx2
#define QX_TARGET "avx2,fma,f16c"
#define QX_VNNI 0
#define QX_512 0
#include "quant_x86.c"
#undef QX_SUFFIX
#undef QX_TARGET
#undef QX_VNNI
#undef QX_512

#define QX_SUFFIX avx512
#define QX_TARGET "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
#define QX_VNNI 1
#define QX_512 1
#include "quant_x86.c"
#undef QX_SUFFIX
#undef QX_TARGET
#undef QX_VNNI
#undef QX_512

int quant_x86_level(void)
{
        __builtin_cpu_init();
        if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
                return 0;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
                return 2;
        return 1;
}

quant_dot_fn quant_x86_dot(int level, uint32_t wtype)
{
        if (level >= 2)
                return dot_table_avx512(wtype);
        if (level == 1)
                return dot_table_avx2(wtype);
        return NULL;
}

quant_quantize_fn quant_x86_quantize(int level, uint32_t type)
{
        if (level >= 2)
                return quantize_table_avx512(type);
        if (level == 1)
                return quantize_table_avx2(type);
        return NULL;
}

#else /* not x86: no SIMD kernels here; quant.c keeps the reference ones */

int quant_x86_level(void) { return 0; }
quant_dot_fn quant_x86_dot(int level, uint32_t wtype) { (void)level; (void)wtype; return NULL; }
quant_quantize_fn quant_x86_quantize(int level, uint32_t type) { (void)level; (void)type; return NULL; }

#endif

#else /* ---- QX_BODY: the per-ISA kernels, named name_<QX_SUFFIX> ---- */

#define QX(name) QX_CAT(name, QX_SUFFIX)

QX_INLINE float QX(hsum8)(__m256 v)
{
        __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        return _mm_cvtss_f32(r);
}

QX_INLINE float QX(hsum4)(__m128 r)
{
        r = _mm_add_ps(r, _mm_movehl_ps(r, r));
        r = _mm_add_ss(r, _mm_movehdup_ps(r));
        return _mm_cvtss_f32(r);
}

QX_INLINE float QX(h2f)(ggml_half h) { return _cvtsh_ss(h); }

/* 8 int32 sums of 4 products each of unsigned bytes a (< 128 in pairs) and signed bytes b. */
QX_INLINE __m256i QX(dot_us8)(__m256i a, __m256i b)
{
#if QX_VNNI
        return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
        return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}

/* The same for two signed operands (neither holding -128): |a| times b with a's sign. */
QX_INLINE __m256i QX(dot_ss8)(__m256i a, __m256i b)
{
        return QX(dot_us8)(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

/* 32 nibbles -> 32 bytes: low nibbles first (elements 0..15), then high ones (16..31). */
QX_INLINE __m256i QX(nibbles32)(const uint8_t *p)
{
        const __m128i t = _mm_loadu_si128((const __m128i *)p);
        const __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
        return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes of 0xFF (bit set) or 0x00. */
QX_INLINE __m256i QX(bits32)(const uint8_t *p)
{
        uint32_t x32;
        memcpy(&x32, p, 4);
#if QX_VNNI
        return _mm256_movm_epi8((__mmask32)x32);
#else
        const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                               0x0101010101010101, 0x0000000000000000);
        __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
        bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
        return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
#endif
}

/* ---- float types: F32, F16, BF16 ----
 * ggml's ggml_vec_dot_f32 / _f16 / _bf16 as llama.cpp builds them for an AVX-512 machine
 * without AVX512-FP16 (vec.cpp, simd-mappings.h): 16-lane registers, 64 elements a step
 * over four accumulators (f32, f16: fma) or two (bf16: vdpbf16ps, 32 elements each),
 * folded and reduced as GCC's _mm512_reduce_add_ps does. The AVX2 build holds each
 * 16-lane register as two 8-lane halves; every lane sees the same operations in the same
 * order, so both builds return the same floats as ggml. */

#if QX_512
typedef __m512 QX(v16);
QX_INLINE QX(v16) QX(v16_zero)(void) { return _mm512_setzero_ps(); }
QX_INLINE QX(v16) QX(v16_add)(QX(v16) a, QX(v16) b) { return _mm512_add_ps(a, b); }
QX_INLINE QX(v16) QX(v16_fma)(QX(v16) a, QX(v16) b, QX(v16) c) { return _mm512_fmadd_ps(a, b, c); }
QX_INLINE void QX(v16_fence)(QX(v16) *v) { __asm__ volatile("" : "+v"(*v)); }
QX_INLINE QX(v16) QX(v16_load)(int kind, const void *p, int64_t i)
{
        if (kind == QXF_F32)
                return _mm512_loadu_ps((const float *)p + i);
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
}
/* 32 bf16 from element i: the even elements (low halves of each pair) and the odd ones */
QX_INLINE void QX(v16_bf16_pairs)(const void *p, int64_t i, QX(v16) *even, QX(v16) *odd)
{
        const __m512i v = _mm512_loadu_si512((const uint16_t *)p + i);
        *even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        *odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xFFFF0000u)));
}
QX_INLINE float QX(v16_sum)(QX(v16) v)
{
        const __m256 t3 = _mm256_add_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)), _mm512_castps512_ps256(v));
        return QX(hsum8)(t3);
}
#else
typedef struct { __m256 lo, hi; } QX(v16);
QX_INLINE QX(v16) QX(v16_zero)(void) { return (QX(v16)){ _mm256_setzero_ps(), _mm256_setzero_ps() }; }
QX_INLINE QX(v16) QX(v16_add)(QX(v16) a, QX(v16) b)
{
        return (QX(v16)){ _mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi) };
}
QX_INLINE QX(v16) QX(v16_fma)(QX(v16) a, QX(v16) b, QX(v16) c)
{
        return (QX(v16)){ _mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi) };
}
QX_INLINE void QX(v16_fence)(QX(v16) *v) { __asm__ volatile("" : "+x"(v->lo), "+x"(v->hi)); }
QX_INLINE __m256 QX(load8f)(int kind, const void *p, int64_t i)
{
        if (kind == QXF_F32)
                return _mm256_loadu_ps((const float *)p + i);
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
}
QX_INLINE QX(v16) QX(v16_load)(int kind, const void *p, int64_t i)
{
        return (QX(v16)){ QX(load8f)(kind, p, i), QX(load8f)(kind, p, i + 8) };
}
QX_INLINE void QX(v16_bf16_pairs)(const void *p, int64_t i, QX(v16) *even, QX(v16) *odd)
{
        const __m256i mhi = _mm256_set1_epi32((int)0xFFFF0000u);
        const __m256i a = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
        const __m256i b = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i + 16));
        *even = (QX(v16)){ _mm256_castsi256_ps(_mm256_slli_epi32(a, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(b, 16)) };
        *odd = (QX(v16)){ _mm256_castsi256_ps(_mm256_and_si256(a, mhi)), _mm256_castsi256_ps(_mm256_and_si256(b, mhi)) };
}
/* _mm512_reduce_add_ps as GCC expands it: halves, quarters, then (0+2) + (1+3) */
QX_INLINE float QX(v16_sum)(QX(v16) v) { return QX(hsum8)(_mm256_add_ps(v.hi, v.lo)); }
#endif

/* ggml_vec_dot_f32's leftovers (n % 64) in a float, as GCC compiled its loop: runs of 16
 * and then 8 as rounded products added in order, the last n % 8 fused (vfmadd231ss). */
QX_INLINE float QX(f32_tail)(float s, const float *w, const float *x, int64_t np, int64_t n)
{
        const int64_t nr = np + ((n - np) & ~(int64_t)7);
        __m128 acc = _mm_set_ss(s);
        for (int64_t j = np; j < n; j++) {
                const __m128 a = _mm_load_ss(w + j), b = _mm_load_ss(x + j);
                acc = j < nr ? _mm_add_ss(acc, _mm_mul_ss(a, b)) : _mm_fmadd_ss(a, b, acc);
        }
        return _mm_cvtss_f32(acc);
}

QX_INLINE void QX(dotf_nt)(int kind, int NT, int64_t n, const void *w, const void *x, size_t xs,
                           float *y, size_t ys)
{
        QX(v16) acc[4][4];
        for (int t = 0; t < NT; t++)
                for (int j = 0; j < 4; j++)
                        acc[t][j] = QX(v16_zero)();
        const int64_t np = n & ~(int64_t)63;
        for (int64_t i = 0; i < np; i += 64) {
                for (int j = 0; j < 4; j++) {
                        const QX(v16) wv = QX(v16_load)(kind, w, i + 16 * j);
                        for (int t = 0; t < NT; t++) {
                                const void *xt = (const char *)x + t * xs;
                                acc[t][j] = QX(v16_fma)(wv, QX(v16_load)(kind, xt, i + 16 * j), acc[t][j]);
                        }
                }
        }
        for (int t = 0; t < NT; t++) {
                const void *xt = (const char *)x + t * xs;
                const float r = QX(v16_sum)(QX(v16_add)(QX(v16_add)(acc[t][0], acc[t][2]), QX(v16_add)(acc[t][1], acc[t][3])));
                if (kind == QXF_F32) {
                        y[t * ys] = QX(f32_tail)(r, w, xt, np, n);
                } else {
                        double s = r; /* ggml_float */
                        for (int64_t j = np; j < n; j++) /* fp16 products are exact in a float */
                                s += (double)(_cvtsh_ss(((const uint16_t *)w)[j]) * _cvtsh_ss(((const uint16_t *)xt)[j]));
                        y[t * ys] = (float)s;
                }
        }
}

/* bf16 leftovers and the final sum in a double, as ggml_vec_dot_bf16 does */
QX_INLINE float QX(bf16_finish)(float r1, float r2, const void *w, const void *x, int64_t np, int64_t n)
{
        double s = 0.0;
        s += r1;
        s += r2;
        for (int64_t j = np; j < n; j++) {
                const __m128 p = _mm_mul_ss(_mm_set_ss(sl_bf16_to_fp32(((const uint16_t *)w)[j])),
                                            _mm_set_ss(sl_bf16_to_fp32(((const uint16_t *)x)[j])));
                s += (double)_mm_cvtss_f32(p);
        }
        return (float)s;
}

/* vdpbf16ps emulated: per lane, acc += odd product, then += even product, each a fused
 * multiply-add rounded to nearest, with denormal inputs read as zero and denormal results
 * flushed (the instruction ignores MXCSR and always does so; here MXCSR's DAZ and FTZ are
 * set around the loop, and the fences keep the arithmetic on the right side of them). */
QX_INLINE void QX(dotbf_nt)(int kind, int NT, int64_t n, const void *w, const void *x, size_t xs,
                            float *y, size_t ys)
{
        (void)kind;
        QX(v16) acc[4][2];
        for (int t = 0; t < NT; t++)
                acc[t][0] = acc[t][1] = QX(v16_zero)();
        const int64_t np = n & ~(int64_t)63;
        if (np > 0) {
                const unsigned csr = _mm_getcsr();
                _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
                for (int t = 0; t < NT; t++) {
                        QX(v16_fence)(&acc[t][0]);
                        QX(v16_fence)(&acc[t][1]);
                }
                for (int64_t i = 0; i < np; i += 64) {
                        for (int c = 0; c < 2; c++) {
                                QX(v16) we, wo;
                                QX(v16_bf16_pairs)(w, i + 32 * c, &we, &wo);
                                for (int t = 0; t < NT; t++) {
                                        QX(v16) xe, xo;
                                        QX(v16_bf16_pairs)((const char *)x + t * xs, i + 32 * c, &xe, &xo);
                                        acc[t][c] = QX(v16_fma)(wo, xo, acc[t][c]);
                                        acc[t][c] = QX(v16_fma)(we, xe, acc[t][c]);
                                }
                        }
                }
                for (int t = 0; t < NT; t++) {
                        QX(v16_fence)(&acc[t][0]);
                        QX(v16_fence)(&acc[t][1]);
                }
                _mm_setcsr(csr);
        }
        for (int t = 0; t < NT; t++) {
                QX(v16_fence)(&acc[t][0]);
                QX(v16_fence)(&acc[t][1]);
                y[t * ys] = QX(bf16_finish)(QX(v16_sum)(acc[t][0]), QX(v16_sum)(acc[t][1]), w,
                                            (const char *)x + t * xs, np, n);
        }
}

/* ---- legacy 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 ---- */

QX_INLINE void QX(legacy_nt)(int kind, int NT, int64_t n, const void *vw, const void *vx, size_t xs,
                             float *y, size_t ys)
{
        /* Q4_1 and Q5_1 pair with Q8_1 (36-byte blocks, qs at 4), the others with Q8_0. */
        const int has_min = kind == QXL_Q4_1 || kind == QXL_Q5_1;
        const size_t xbs = has_min ? sizeof(block_q8_1) : sizeof(block_q8_0);
        const size_t xqs = has_min ? 4 : 2;
        __m256 acc[4];
        float summ[4];
        for (int t = 0; t < NT; t++) {
                acc[t] = _mm256_setzero_ps();
                summ[t] = 0.0f;
        }
        const int64_t nb = n / 32;
        for (int64_t ib = 0; ib < nb; ib++) {
                __m256i bw;
                float dw, mw = 0.0f;
                switch (kind) {
                case QXL_Q4_0: {
                        const block_q4_0 *b = (const block_q4_0 *)vw + ib;
                        dw = QX(h2f)(b->d);
                        bw = _mm256_sub_epi8(QX(nibbles32)(b->qs), _mm256_set1_epi8(8));
                        break;
                }
                case QXL_Q4_1: {
                        const block_q4_1 *b = (const block_q4_1 *)vw + ib;
                        dw = QX(h2f)(b->d);
                        mw = QX(h2f)(b->m);
                        bw = QX(nibbles32)(b->qs);
                        break;
                }
                case QXL_Q5_0: {
                        const block_q5_0 *b = (const block_q5_0 *)vw + ib;
                        dw = QX(h2f)(b->d);
                        /* nibble | 0xF0 where the fifth bit is clear: (q | h<<4) - 16 as int8 */
                        const __m256i hi = _mm256_andnot_si256(QX(bits32)(b->qh), _mm256_set1_epi8((char)0xF0));
                        bw = _mm256_or_si256(QX(nibbles32)(b->qs), hi);
                        break;
                }
                case QXL_Q5_1: {
                        const block_q5_1 *b = (const block_q5_1 *)vw + ib;
                        dw = QX(h2f)(b->d);
                        mw = QX(h2f)(b->m);
                        const __m256i hi = _mm256_and_si256(QX(bits32)(b->qh), _mm256_set1_epi8(0x10));
                        bw = _mm256_or_si256(QX(nibbles32)(b->qs), hi);
                        break;
                }
                default: {
                        const block_q8_0 *b = (const block_q8_0 *)vw + ib;
                        dw = QX(h2f)(b->d);
                        bw = _mm256_loadu_si256((const __m256i *)b->qs);
                        break;
                }
                }
                for (int t = 0; t < NT; t++) {
                        const uint8_t *xb = (const uint8_t *)vx + t * xs + ib * xbs;
                        ggml_half xd;
                        memcpy(&xd, xb, 2);
                        const __m256i bx = _mm256_loadu_si256((const __m256i *)(xb + xqs));
                        const __m256i sumi = has_min ? QX(dot_us8)(bw, bx) : QX(dot_ss8)(bw, bx);
                        const __m256 d = _mm256_set1_ps(dw * QX(h2f)(xd));
                        acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc[t]);
                        if (has_min) {
                                ggml_half xsum;
                                memcpy(&xsum, xb + 2, 2);
                                summ[t] = fmaf(mw, QX(h2f)(xsum), summ[t]);
                        }
                }
        }
        for (int t = 0; t < NT; t++)
                y[t * ys] = QX(hsum8)(acc[t]) + summ[t];
}

/* ---- K-quants: Q4_K, Q5_K (6-bit scales and mins), Q6_K ---- */

QX_INLINE void QX(k45_nt)(int kind, int NT, int64_t n, const void *vw, const void *vx, size_t xs,
                          float *y, size_t ys)
{
        const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
        const __m256i m4 = _mm256_set1_epi8(0xF);
        __m256 acc[4];
        __m128 accm[4];
        for (int t = 0; t < NT; t++) {
                acc[t] = _mm256_setzero_ps();
                accm[t] = _mm_setzero_ps();
        }
        const int64_t nb = n / QK_K;
        for (int64_t i = 0; i < nb; i++) {
                /* q4_K and q5_K share the header layout: d, dmin, scales[12] */
                const block_q4_K *b4 = (const block_q4_K *)vw + i;
                const block_q5_K *b5 = (const block_q5_K *)vw + i;
                const ggml_half hd = kind == QXK_Q4_K ? b4->d : b5->d;
                const ggml_half hdmin = kind == QXK_Q4_K ? b4->dmin : b5->dmin;
                const uint8_t *sc12 = kind == QXK_Q4_K ? b4->scales : b5->scales;
                const uint8_t *qs = kind == QXK_Q4_K ? b4->qs : b5->qs;
                const float dw = QX(h2f)(hd), dminw = QX(h2f)(hdmin);
                uint32_t utmp[4];
                memcpy(utmp, sc12, 12);
                utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
                const uint32_t uaux = utmp[1] & kmask1;
                utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
                utmp[2] = uaux;
                utmp[0] &= kmask1;
                const uint8_t *scales = (const uint8_t *)utmp;
                const __m128i mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)utmp[3], (int)utmp[2]));

                /* the min term: sum over 32-element groups of min * (sum of activations);
                 * ggml keeps it in four float lanes for q4_K, in one float for q5_K */
                for (int t = 0; t < NT; t++) {
                        const block_q8_K *xb = (const block_q8_K *)((const char *)vx + t * xs) + i;
                        const __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
                        const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                        const __m128i prod = _mm_madd_epi16(mins, q8s);
                        const float dmin = -xb->d * dminw;
                        if (kind == QXK_Q4_K) {
                                accm[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), accm[t]);
                        } else {
                                __m128i h = _mm_add_epi32(prod, _mm_shuffle_epi32(prod, 0x4E));
                                h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xB1));
                                const __m128 p = _mm_cvtsi32_ss(_mm_setzero_ps(), _mm_cvtsi128_si32(h));
                                accm[t] = _mm_fmadd_ss(_mm_set_ss(dmin), p, accm[t]);
                        }
                }

                __m256i sumi[4];
                for (int t = 0; t < NT; t++)
                        sumi[t] = _mm256_setzero_si256();
                __m256i hbits = _mm256_setzero_si256(), hm = _mm256_set1_epi8(1);
                if (kind == QXK_Q5_K)
                        hbits = _mm256_loadu_si256((const __m256i *)b5->qh);
                const __m256i sixteen = _mm256_set1_epi8(16);
                for (int j = 0; j < QK_K / 64; j++) {
                        const __m256i bits = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
                        __m256i ql = _mm256_and_si256(bits, m4);
                        __m256i qh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                        if (kind == QXK_Q5_K) {
                                const __m256i h0 = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, hm), hm);
                                hm = _mm256_add_epi8(hm, hm);
                                const __m256i h1 = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, hm), hm);
                                hm = _mm256_add_epi8(hm, hm);
                                ql = _mm256_or_si256(ql, _mm256_and_si256(h0, sixteen));
                                qh = _mm256_or_si256(qh, _mm256_and_si256(h1, sixteen));
                        }
                        const __m256i sl = _mm256_set1_epi16(scales[2 * j]);
                        const __m256i sh = _mm256_set1_epi16(scales[2 * j + 1]);
                        for (int t = 0; t < NT; t++) {
                                const block_q8_K *xb = (const block_q8_K *)((const char *)vx + t * xs) + i;
                                const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * j));
                                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb->qs + 64 * j + 32));
                                const __m256i p0 = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(ql, x0));
                                const __m256i p1 = _mm256_madd_epi16(sh, _mm256_maddubs_epi16(qh, x1));
                                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p0, p1));
                        }
                }
                for (int t = 0; t < NT; t++) {
                        const block_q8_K *xb = (const block_q8_K *)((const char *)vx + t * xs) + i;
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
                }
        }
        for (int t = 0; t < NT; t++)
                y[t * ys] = QX(hsum8)(acc[t]) + (kind == QXK_Q4_K ? QX(hsum4)(accm[t]) : _mm_cvtss_f32(accm[t]));
}

/* ggml's AVX2 q6_K kernel: unsigned 6-bit weights times int8 activations, and the -32
 * offset taken off each int32 lane afterwards as 32 * (bsums . scales) of that lane's pair
 * of 16-element groups; so each lane holds ggml's integer, not just the same block total. */
QX_INLINE void QX(q6k_nt)(int kind, int NT, int64_t n, const void *vw, const void *vx, size_t xs,
                          float *y, size_t ys)
{
        (void)kind;
        const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
        __m256 acc[4];
        for (int t = 0; t < NT; t++)
                acc[t] = _mm256_setzero_ps();
        const int64_t nb = n / QK_K;
        for (int64_t i = 0; i < nb; i++) {
                const block_q6_K *b = (const block_q6_K *)vw + i;
                const float dw = QX(h2f)(b->d);
                const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
                __m256i sumi[4];
                for (int t = 0; t < NT; t++)
                        sumi[t] = _mm256_setzero_si256();
                for (int j = 0; j < QK_K / 128; j++) {
                        const uint8_t *ql = b->ql + 64 * j, *qh = b->qh + 32 * j;
                        const int8_t *sc = b->scales + 8 * j;
                        const __m256i l1 = _mm256_loadu_si256((const __m256i *)ql);
                        const __m256i l2 = _mm256_loadu_si256((const __m256i *)(ql + 32));
                        const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
                        __m256i q[4], s[4];
                        q[0] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(h, m2), 4));
                        q[1] = _mm256_or_si256(_mm256_and_si256(l2, m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4));
                        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4));
                        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m4),
                                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4));
                        for (int k = 0; k < 4; k++)
                                s[k] = _mm256_set_m128i(_mm_set1_epi16(sc[2 * k + 1]), _mm_set1_epi16(sc[2 * k]));
                        for (int t = 0; t < NT; t++) {
                                const block_q8_K *xb = (const block_q8_K *)((const char *)vx + t * xs) + i;
                                __m256i sum = _mm256_setzero_si256();
                                for (int k = 0; k < 4; k++) {
                                        const __m256i x8 = _mm256_loadu_si256((const __m256i *)(xb->qs + 128 * j + 32 * k));
                                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(s[k], _mm256_maddubs_epi16(q[k], x8)));
                                }
                                sumi[t] = _mm256_add_epi32(sumi[t], sum);
                        }
                }
                for (int t = 0; t < NT; t++) {
                        const block_q8_K *xb = (const block_q8_K *)((const char *)vx + t * xs) + i;
                        const __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
                        const __m256i sub = _mm256_slli_epi32(_mm256_madd_epi16(bs, scales16), 5);
                        const __m256i si = _mm256_sub_epi32(sumi[t], sub);
                        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(xb->d * dw), _mm256_cvtepi32_ps(si), acc[t]);
                }
        }
        for (int t = 0; t < NT; t++)
                y[t * ys] = QX(hsum8)(acc[t]);
}

/* A multi-token kernel: tokens in groups of 4 through the constant-NT body, so each token
 * runs the same instructions whatever the group size. */
#define QX_MULTI(name, body, kind)                                                                  \
        QX_FN void QX(name)(int64_t n, const void *w, const void *x, size_t xs, int ntok, float *y, \
                            size_t ys)                                                              \
        {                                                                                           \
                int t = 0;                                                                          \
                for (; t + 4 <= ntok; t += 4)                                                       \
                        QX(body)(kind, 4, n, w, (const char *)x + t * xs, xs, y + t * ys, ys);      \
                const char *xt = (const char *)x + t * xs;                                          \
                switch (ntok - t) {                                                                 \
                case 3: QX(body)(kind, 3, n, w, xt, xs, y + t * ys, ys); break;                     \
                case 2: QX(body)(kind, 2, n, w, xt, xs, y + t * ys, ys); break;                     \
                case 1: QX(body)(kind, 1, n, w, xt, xs, y + t * ys, ys); break;                     \
                default: break;                                                                     \
                }                                                                                   \
        }

/* The same in groups of QX_FGROUP: the AVX2 float kernels hold 8 (f32, f16) or 4 (bf16)
 * registers of sums per token, and 16 ymm registers do not fit four tokens' worth; the
 * group sizes are the fastest ones measured with quant-bench. */
#define QX_MULTI2(name, body, kind, QX_FGROUP)                                                                 \
        QX_FN void QX(name)(int64_t n, const void *w, const void *x, size_t xs, int ntok, float *y, \
                            size_t ys)                                                              \
        {                                                                                           \
                int t = 0;                                                                          \
                for (; t + (QX_FGROUP) <= ntok; t += (QX_FGROUP))                                   \
                        QX(body)(kind, (QX_FGROUP), n, w, (const char *)x + t * xs, xs, y + t * ys, ys); \
                for (; t < ntok; t++)                                                               \
                        QX(body)(kind, 1, n, w, (const char *)x + t * xs, xs, y + t * ys, ys);      \
        }

QX_MULTI2(dot_f32, dotf_nt, QXF_F32, QX_512 ? 4 : 1)
QX_MULTI2(dot_f16, dotf_nt, QXF_F16, QX_512 ? 4 : 1)
QX_MULTI2(dot_bf16, dotbf_nt, QXF_BF16, QX_512 ? 4 : 2)
QX_MULTI(dot_q4_0, legacy_nt, QXL_Q4_0)
QX_MULTI(dot_q4_1, legacy_nt, QXL_Q4_1)
QX_MULTI(dot_q5_0, legacy_nt, QXL_Q5_0)
QX_MULTI(dot_q5_1, legacy_nt, QXL_Q5_1)
QX_MULTI(dot_q8_0, legacy_nt, QXL_Q8_0)
QX_MULTI(dot_q4_K, k45_nt, QXK_Q4_K)
QX_MULTI(dot_q5_K, k45_nt, QXK_Q5_K)
QX_MULTI(dot_q6_K, q6k_nt, 0)

#if QX_512
/* ggml's own bf16 loop, for CPUs with AVX512-BF16: the instruction itself. */
#define QX_BF16_FN static inline __attribute__((always_inline, target(QX_TARGET ",avx512bf16")))
QX_BF16_FN void QX(dotbf_hw_nt)(int kind, int NT, int64_t n, const void *w, const void *x, size_t xs,
                                float *y, size_t ys)
{
        (void)kind;
        __m512 acc[4][2];
        for (int t = 0; t < NT; t++)
                acc[t][0] = acc[t][1] = _mm512_setzero_ps();
        const int64_t np = n & ~(int64_t)63;
        for (int64_t i = 0; i < np; i += 64) {
                for (int c = 0; c < 2; c++) {
                        const __m512bh wv = (__m512bh)_mm512_loadu_si512((const uint16_t *)w + i + 32 * c);
                        for (int t = 0; t < NT; t++) {
                                const uint16_t *xt = (const uint16_t *)((const char *)x + t * xs);
                                acc[t][c] = _mm512_dpbf16_ps(acc[t][c], wv, (__m512bh)_mm512_loadu_si512(xt + i + 32 * c));
                        }
                }
        }
        for (int t = 0; t < NT; t++)
                y[t * ys] = QX(bf16_finish)(QX(v16_sum)(acc[t][0]), QX(v16_sum)(acc[t][1]), w,
                                            (const char *)x + t * xs, np, n);
}
#undef QX_FN
#define QX_FN static __attribute__((target(QX_TARGET ",avx512bf16")))
QX_MULTI2(dot_bf16_hw, dotbf_hw_nt, QXF_BF16, 4)
#undef QX_FN
#define QX_FN static __attribute__((target(QX_TARGET)))
#undef QX_BF16_FN
#endif

/* ---- activation quantizers ---- */

/* roundf (half away from zero) on 8 lanes: truncate, then step away from zero where the
 * dropped fraction is at least one half. x - trunc(x) is exact, so this matches roundf. */
/* 32 int32 in four vectors -> 32 int8 in order (packs interleave 128-bit lanes). */
QX_INLINE __m256i QX(pack32)(__m256i i0, __m256i i1, __m256i i2, __m256i i3)
{
        const __m256i a = _mm256_packs_epi32(i0, i1), b = _mm256_packs_epi32(i2, i3);
        return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

QX_FN void QX(quant_q8_0)(const float *x, void *dst, int64_t n)
{
        block_q8_0 *y = dst;
        const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
                __m256 v[4];
                for (int k = 0; k < 4; k++)
                        v[k] = _mm256_loadu_ps(x + 8 * k);
                __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absm), _mm256_and_ps(v[1], absm)),
                                         _mm256_max_ps(_mm256_and_ps(v[2], absm), _mm256_and_ps(v[3], absm)));
                __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
                m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
                const float amax = _mm_cvtss_f32(m4);
                /* ggml's x86 rounding (see quant_q8_0 in quant.c) */
                const float d = amax / 127.0f;
                const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
                y[i].d = sl_fp32_to_fp16(d);
                const __m256 mul = _mm256_set1_ps(id);
                __m256i q[4];
                for (int k = 0; k < 4; k++)
                        q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], mul),
                                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                _mm256_storeu_si256((__m256i *)y[i].qs, QX(pack32)(q[0], q[1], q[2], q[3]));
        }
}

QX_FN void QX(quant_q8_K)(const float *x, void *dst, int64_t n)
{
        block_q8_K *y = dst;
        const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
                __m256 m = _mm256_setzero_ps();
                for (int k = 0; k < QK_K; k += 8)
                        m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + k), absm));
                __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
                m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
                m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
                const float amax = _mm_cvtss_f32(m4);
                if (!amax) {
                        memset(&y[i], 0, sizeof(y[i]));
                        continue;
                }
                /* the reference keeps the sign of the first element of largest magnitude */
                float max = 0;
                for (int j = 0; j < QK_K; j++) {
                        if (fabsf(x[j]) == amax) {
                                max = x[j];
                                break;
                        }
                }
                const float iscale = -127.f / max;
                const __m256 mul = _mm256_set1_ps(iscale);
                const __m256i lim = _mm256_set1_epi32(127);
                for (int k = 0; k < QK_K; k += 32) {
                        __m256i q[4];
                        for (int j = 0; j < 4; j++) /* cvtps rounds half to even, as nearest_int */
                                q[j] = _mm256_min_epi32(lim, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8 * j), mul)));
                        _mm256_storeu_si256((__m256i *)(y[i].qs + k), QX(pack32)(q[0], q[1], q[2], q[3]));
                }
                for (int j = 0; j < QK_K / 16; j++) {
                        const __m128i b = _mm_loadu_si128((const __m128i *)(y[i].qs + 16 * j));
                        const __m256i w = _mm256_cvtepi8_epi16(b);
                        const __m256i s = _mm256_madd_epi16(w, _mm256_set1_epi16(1));
                        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
                        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
                        y[i].bsums[j] = (int16_t)_mm_cvtsi128_si32(s4);
                }
                y[i].d = 1 / iscale;
        }
}

static quant_dot_fn QX(dot_table)(uint32_t wtype)
{
        switch (wtype) {
        case GGML_TYPE_F32: return QX(dot_f32);
        case GGML_TYPE_F16: return QX(dot_f16);
        case GGML_TYPE_BF16:
#if QX_512
                if (__builtin_cpu_supports("avx512bf16"))
                        return QX(dot_bf16_hw);
#endif
                return QX(dot_bf16);
        case GGML_TYPE_Q4_0: return QX(dot_q4_0);
        case GGML_TYPE_Q4_1: return QX(dot_q4_1);
        case GGML_TYPE_Q5_0: return QX(dot_q5_0);
        case GGML_TYPE_Q5_1: return QX(dot_q5_1);
        case GGML_TYPE_Q8_0: return QX(dot_q8_0);
        case GGML_TYPE_Q4_K: return QX(dot_q4_K);
        case GGML_TYPE_Q5_K: return QX(dot_q5_K);
        case GGML_TYPE_Q6_K: return QX(dot_q6_K);
        default: return NULL;
        }
}

static quant_quantize_fn QX(quantize_table)(uint32_t type)
{
        switch (type) {
        case GGML_TYPE_Q8_0: return QX(quant_q8_0);
        case GGML_TYPE_Q8_K: return QX(quant_q8_K);
        default: return NULL;
        }
}

#undef QX

#endif /* QX_BODY */
