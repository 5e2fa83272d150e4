/* ops.cuh — the small kernels of the forward pass: embedding lookup, activations, residual
 * adds (with gemma3's post-norm), gathering rows and the final logit soft-cap. Each has a
 * plain *_ref twin the tests compare against, is asynchronous on `stream`, allocates nothing
 * and synchronizes nothing (graph-capturable); pdl launches with programmatic dependent
 * launch (common.cuh). Return 0, -EINVAL or a launch's errno.
 * -EINVAL: a NULL pointer (w may be NULL for add_norm), a negative size, an unknown type or
 * activation; all arguments are checked before an empty call (n or ntok 0) returns 0. */
#pragma once

#include <stdint.h>

#include <cuda_runtime.h>

/* x[t][i] = scale · E[tok[t]][i] for t < ntok, i < n: E has n_vocab rows of n elements of
 * etype (0 = F32, 1 = F16, 30 = BF16, GGML numbering). tok is a device array; ids outside
 * 0..n_vocab-1 give a zero row (the engine validates ids earlier; this only keeps the
 * kernel in bounds). */
int cuda_embed(uint32_t etype, const void *E, int n_vocab, const int32_t *tok, float *x, int n,
               int ntok, float scale, cudaStream_t stream, bool pdl = false);
int cuda_embed_ref(uint32_t etype, const void *E, int n_vocab, const int32_t *tok, float *x,
                   int n, int ntok, float scale, cudaStream_t stream);

/* Gated activations over gu[t][0 .. 2n): gate = gu[t][i], up = gu[t][n + i];
 *   out[t][i] = act(gate) · up,  act = SiLU (x / (1 + e^-x)) or tanh-GELU
 *   (0.5·x·(1 + tanh(0.7978845608·(x + 0.044715·x³))), returning 0 for x ≤ -10 and x for
 *   x ≥ 10, as ggml's table does). out is ntok × n floats (ld n). */
enum cuda_act { CUDA_ACT_SILU = 0, CUDA_ACT_GELU = 1 };
int cuda_glu(int act, const float *gu, float *out, int n, int ntok, cudaStream_t stream,
             bool pdl = false);
/* The same, out written as wtype's 16-bit values (CUDA_WTYPE_F16 or BF16, gemv.cuh), round to
 * nearest even: bitwise cuda_glu followed by cuda_f32_to_w16, in one kernel, for a product
 * that reads its input converted (cuBLASLt). */
int cuda_glu_w16(int act, const float *gu, void *out, uint32_t wtype, int n, int ntok, cudaStream_t stream,
                 bool pdl = false);
int cuda_glu_ref(int act, const float *gu, float *out, int n, int ntok, cudaStream_t stream);

/* x[t][i] += w ? rmsnorm(y[t])[i] · w[i] : y[t][i]  (rmsnorm as rmsnorm.cuh, eps).
 * gemma3's post-attention / post-FFN norm fused with the residual add. */
int cuda_add_norm(float *x, const float *y, const float *w, int n, int ntok, float eps,
                  cudaStream_t stream, bool pdl = false);
int cuda_add_norm_ref(float *x, const float *y, const float *w, int n, int ntok, float eps,
                      cudaStream_t stream);

/* dst[j][i] = src[idx[j]][i] for j < nrows, i < n (ld n both); idx device array. The caller
 * keeps idx below src's row count (not known here); a negative idx gives a zero row. */
int cuda_gather_rows(const float *src, const int32_t *idx, float *dst, int n, int nrows,
                     cudaStream_t stream, bool pdl = false);

/* y[i] = cap · tanh(y[i] / cap) for i < n. cap must be positive and finite. */
int cuda_softcap(float *y, size_t n, float cap, cudaStream_t stream, bool pdl = false);
