/* attn.h (engine-internal) — attention arithmetic that rounds exactly as ggml's single-token
 * CPU path does in its AVX-512 build, the path llama.cpp (our oracle) takes when decoding. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define ATTN_PV_ROWS 64 /* partial-sum rows of attn_pv_*: one per lane of ggml's 4x16 accumulators */

/* ggml_vec_dot_f16(n, k, f16(q)): q holds f16-representable floats. */
float attn_dot_f16(bool simd, const uint16_t *k, const float *q, uint32_t n);
/* One lane of ggml_v_expf, ggml's vectorised expf. */
float attn_expf(float x);
/* _mm512_reduce_add_ps as GCC builds it: halves, quarters, then pairs. */
float attn_sum16(const float *a);
/* rows[(p % 64) * dv + d] += v[d] * pw (fused), the lane position p takes in ggml's dot
 * product over the cache. */
void attn_pv_accumulate(bool simd, float *rows, uint32_t p, const uint16_t *v, float pw, uint32_t dv);
/* out[d] = ggml's fold and reduction of the 64 rows (rows >= n_rows are zero, not read). */
void attn_pv_fold(bool simd, const float *rows, uint32_t n_rows, float *out, uint32_t dv);
