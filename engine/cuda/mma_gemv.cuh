/* mma_gemv.cuh — products for batches of 1..64 tokens on Hopper's tensor cores:
 * y[t][r] = beta·y[t][r] + Σ_k W[r][k]·x16[t][k], W F16 or BF16 (rows × k, k contiguous),
 * x16 the activations already rounded to W's type (cuda_f32_to_w16, gemm.cuh), y float.
 * Streams each weight byte once (the bulk tensor copy engine into shared memory, wgmma from
 * there); the CUDA-core GEMV (gemv.cuh) is FP32-bound from ~4 tokens and cuBLASLt (gemm.cuh)
 * is tuned for larger batches: callers pick per size. sm_90 (compute capability 9.0) only:
 * cuda_mma_gemv_ok() says whether this device runs it. */
#pragma once

#include <stdint.h>

#include <cuda_runtime.h>

#include "gemv.cuh" /* enum cuda_wtype */

#define CUDA_MMA_GEMV_MAX_TOKENS 64
#define CUDA_MMA_GEMV_K_MULTIPLE 8 /* 16-byte rows, as the copy engine needs */

/* w: rows × k elements of wtype, 16-byte aligned; k a multiple of 8. x16: ntok × k
 * elements of wtype (row stride k), 16-byte aligned. y: ntok × rows floats (y[t * rows + r]).
 * 1 ≤ ntok ≤ 64, beta 0 (store) or 1 (add to y). Returns 0, -EINVAL for bad arguments, or the
 * negative errno of a failed launch (the CUDA call is in cuda_err_last(); a device other than
 * compute capability 9.0 fails there). Asynchronous on stream, graph-capturable (the launch
 * encodes its tensor maps on the host; no stream work).
 *
 * Deterministic: every output is summed in a fixed order (per 64-element k chunk four wgmma
 * steps on the tensor core, the chunks added in f32 registers with ordinary rounding in
 * ascending order, then the k-split partials in rank order), so repeated calls and pdl on or
 * off give the same bits on one device, and so does any token count at one launch shape. The
 * split over k follows the shape, the SM count and the token count (up to 16 or more), so
 * results may differ in the last bits between token counts, and from cuda_gemv and cuda_gemm
 * (all are within 1e-5 relative of exact).
 *
 * Speed (H200, tests/gpu/test_mma, docs/performance.md): as fast as cuBLASLt for the same
 * token count up to 16 on the Llama 1B/8B shapes (0.8-1.07x its speed), slower from 32
 * (0.6-0.96x);
 * slower than the CUDA-core GEMV at one token. The engine uses it for 2..16 tokens.
 *
 * pdl: programmatic dependent launch (common.cuh's rule): the blocks load their first
 * weights before griddepcontrol.wait, and read x16 and y only after it. */
int cuda_mma_gemv(uint32_t wtype, const void *w, const uint16_t *x16, float *y, int rows, int k,
                  int ntok, float beta, cudaStream_t stream, bool pdl = false);

/* Whether the current device runs cuda_mma_gemv (compute capability 9.0, and the driver
 * gives the tensor-map encoder). */
bool cuda_mma_gemv_ok(void);

/* The launch shape cuda_mma_gemv picks for a call, for reports and tuning:
 * mt: consumer warpgroups a block (64·mt rows); split: thread-block cluster size, the blocks
 * of a cluster splitting k and meeting in distributed shared memory; blocks: the grid size.
 * Returns 0 or -EINVAL (arguments as cuda_mma_gemv). */
int cuda_mma_gemv_plan(uint32_t wtype, int rows, int k, int ntok, int *mt, int *split, int *blocks);

/* cuda_mma_gemv with the shape forced (tests and tuning): mt 0 (as planned), 1 or 2;
 * split 0 (as planned) or 1..8. The result depends on split (summation order), not on mt. */
int cuda_mma_gemv_tuned(uint32_t wtype, const void *w, const uint16_t *x16, float *y, int rows,
                        int k, int ntok, float beta, cudaStream_t stream, bool pdl, int mt,
                        int split);
