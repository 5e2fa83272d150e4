/* quant.h (engine-internal) — GGUF tensor types on the CPU: row sizes, dequantization,
 * quantization of activations, and dot products of a weight row with an activation row,
 * bit-compatible with ggml's block formats. Each kernel has a plain C reference; SIMD
 * versions (AVX2, AVX-512) are chosen once at start by quant_init(). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage.h"

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef uint16_t ggml_half;

typedef struct { ggml_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;
typedef struct { ggml_half d, m; uint8_t qs[QK4_1 / 2]; } block_q4_1;
typedef struct { ggml_half d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;
typedef struct { ggml_half d, m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;
typedef struct { ggml_half d; int8_t qs[QK8_0]; } block_q8_0;
typedef struct { ggml_half d, s; int8_t qs[QK8_1]; } block_q8_1; /* s = d * sum(qs) */
typedef struct { ggml_half d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { ggml_half d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; ggml_half d; } block_q6_K;
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

struct quant_type {
        uint32_t blck;         /* elements per block */
        uint32_t size;         /* bytes per block */
        uint32_t vec_dot_type; /* the type activations are converted to for quant_vec_dot() */
};

/* Picks the SIMD kernels this CPU supports (idempotent, thread-safe). force_ref: use the
 * plain C reference kernels everywhere (tests compare the two). */
void quant_init(bool force_ref);
/* Which kernel set quant_init() chose: "avx512", "avx2" or "ref". */
const char *quant_isa(void);

/* NULL for a type the CPU backend cannot compute with. Weight types: F32, F16, BF16,
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K. Activation types: F32, F16, BF16,
 * Q8_0, Q8_1, Q8_K. */
const struct quant_type *quant_type_get(uint32_t type);
/* Bytes of one row of n elements (n a multiple of blck). */
size_t quant_row_size(uint32_t type, int64_t n);

/* dst[0..n) = the values of a row of type. */
void quant_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);
/* Activation row conversion, for type in {F32, F16, BF16, Q8_0, Q8_1, Q8_K}, bit-exact
 * with ggml's quantize_row_*. */
void quant_quantize_row(uint32_t type, const float *src, void *dst, int64_t n);

/* *out = dot(weight row w of type wtype, activation row x of quant_type_get(wtype)->vec_dot_type), n elements. */
void quant_vec_dot(uint32_t wtype, int64_t n, const void *w, const void *x, float *out);

/* Y[t][r] = dot(W row r, X row t) for rows r in [r0, r1) and tokens t in [0, n_tok).
 * W rows are w_stride bytes apart, X rows (already in the vec_dot type) x_stride bytes
 * apart, Y rows ldy floats apart. Keeps a weight row in cache across all tokens. */
void quant_gemm(uint32_t wtype, int64_t n, const void *W, size_t w_stride, int64_t r0, int64_t r1,
                const void *X, size_t x_stride, int64_t n_tok, float *Y, int64_t ldy);
