/* rmsnorm.cuh — RMSNorm with a weight: y[t][i] = x[t][i] / sqrt(mean_i(x[t]²) + eps) · w[i],
 * float in and out. cuda_rmsnorm_ref is the plain version the tests compare against. */
#pragma once

#include <stdint.h>

#include <cuda_runtime.h>

/* x, y: ntok × n floats (y may equal x); w: n floats. Returns 0, -EINVAL, or the negative
 * errno of a failed launch (the CUDA call is in cuda_err_last()). Asynchronous on stream;
 * pdl: launched with programmatic dependent launch (common.cuh). */
int cuda_rmsnorm(const float *x, const float *w, float *y, int n, int ntok, float eps,
                 cudaStream_t stream, bool pdl = false);

/* The same, y written as wtype's 16-bit values (CUDA_WTYPE_F16 or BF16, gemv.cuh), round to
 * nearest even: bitwise cuda_rmsnorm followed by cuda_f32_to_w16, in one kernel, for a
 * product that reads its input converted (cuBLASLt). y must not overlap x. */
int cuda_rmsnorm_w16(const float *x, const float *w, void *y, uint32_t wtype, int n, int ntok, float eps,
                     cudaStream_t stream, bool pdl = false);

/* One thread per token, serial sums. */
int cuda_rmsnorm_ref(const float *x, const float *w, float *y, int n, int ntok, float eps,
                     cudaStream_t stream);
