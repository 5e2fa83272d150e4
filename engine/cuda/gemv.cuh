/* gemv.cuh — decode GEMV / skinny GEMM for F16 and BF16 weights: y[t][r] = Σ_k W[r][k]·x[t][k]
 * for t < ntok ≤ 16 tokens, float activations and float accumulation, each weight byte read
 * once per call. cuda_gemv_ref is the plain version the tests compare against. */
#pragma once

#include <stdint.h>

#include <cuda_runtime.h>

/* Weight types, numbered as GGML_TYPE_* so the engine passes a tensor's type straight through;
 * quantized types get their own kernels later behind the same call. */
enum cuda_wtype {
        CUDA_WTYPE_F16 = 1,
        CUDA_WTYPE_BF16 = 30,
};

#define CUDA_GEMV_MAX_TOKENS 16

/* W: rows × k elements of wtype, row-major (GGUF layout: k contiguous), 16-byte aligned.
 * x: ntok × k floats, 16-byte aligned. y: ntok × rows floats (y[t * rows + r]).
 * k must be a multiple of 8. Returns 0, -EINVAL for bad arguments, or the negative errno of
 * a failed launch (the CUDA call is in cuda_err_last()). Asynchronous on stream. */
int cuda_gemv(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k, int ntok,
              cudaStream_t stream);

/* Same function, one thread per output, serial float sum over k: slow and obviously right. */
int cuda_gemv_ref(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k,
                  int ntok, cudaStream_t stream);
