/* mma_gemv.cuh — decode products for batches of 1..64 tokens on the tensor cores:
 * y[t][r] = beta·y[t][r] + Σ_k W[r][k]·x16[t][k], W F16 or BF16 (rows × k, k contiguous),
 * x16 the activations already rounded to W's type (cuda_f32_to_w16, gemm.cuh), y float.
 * Streams each weight byte once; the CUDA-core GEMV (gemv.cuh) is FP32-bound from ~4 tokens
 * and cuBLASLt (gemm.cuh) is tuned for larger batches: callers pick per size.
 * Status: on an H200 (tests/gpu/test_mma.cu, docs/performance.md) it is slower than gemv.cu
 * at one token and than cuBLASLt at 8 to 64 on every Llama 1B/8B shape (too few blocks in
 * flight: 128-256), so the engine does not use it and it is not in the library. */
#pragma once

#include <stdint.h>

#include <cuda_runtime.h>

#include "gemv.cuh" /* enum cuda_wtype */

#define CUDA_MMA_GEMV_MAX_TOKENS 64

/* w: rows × k elements of wtype, 16-byte aligned; k a multiple of 32. x16: ntok × k
 * elements of wtype (row stride k), 16-byte aligned. y: ntok × rows floats (y[t * rows + r]).
 * 1 ≤ ntok ≤ 64, beta 0 (store) or 1 (add to y). Returns 0, -EINVAL for bad arguments, or the
 * negative errno of a failed launch (the CUDA call is in cuda_err_last()). Asynchronous on
 * stream, graph-capturable (the launch asks the occupancy once per kernel, no stream work).
 *
 * Deterministic: every output is summed in a fixed order (per warp a fixed sequence of
 * mma.sync, short runs of them added into f32 registers with ordinary rounding; then the
 * k-split partials in rank order), so repeated calls, and pdl on or off, give the same bits on
 * one device. The split over k depends on the shape and the SM count, so results may differ in
 * the last bits from cuda_gemv and cuda_gemm (all are within 1e-5 relative of exact).
 *
 * pdl: programmatic dependent launch (common.cuh's rule): the blocks load their first
 * weights before griddepcontrol.wait, and read x16 and y only after it. */
int cuda_mma_gemv(uint32_t wtype, const void *w, const uint16_t *x16, float *y, int rows, int k,
                  int ntok, float beta, cudaStream_t stream, bool pdl = false);

/* The launch shape cuda_mma_gemv picks for a call, for reports and tuning:
 * mt: 16-row tiles per warp (a block has 8 warps: 128·mt rows); split: thread-block cluster
 * size, the blocks of a cluster splitting k and meeting in distributed shared memory;
 * blocks: the grid size. Returns 0 or -EINVAL (arguments as cuda_mma_gemv). */
int cuda_mma_gemv_plan(uint32_t wtype, int rows, int k, int ntok, int *mt, int *split, int *blocks);

/* cuda_mma_gemv with the shape forced (tests and tuning): mt 0 (as planned), 1 or 2
 * (2 only for ntok > 16; otherwise 1); split 0 (as planned) or 1..8 (at most k / 32). The result
 * depends on split (summation order), not on mt. */
int cuda_mma_gemv_tuned(uint32_t wtype, const void *w, const uint16_t *x16, float *y, int rows,
                        int k, int ntok, float beta, cudaStream_t stream, bool pdl, int mt,
                        int split);
