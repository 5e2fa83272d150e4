/* gemm.cuh — prefill and large-batch matrix products through cuBLASLt (tensor cores), and the
 * activation conversion they need. Y[t][r] = beta·Y[t][r] + Σ_k W[r][k] · X[t][k]: W is the
 * weight (rows × k, GGUF layout: k contiguous) in F16 or BF16, X is ntok × k activations in the
 * same 16-bit type, Y is ntok × rows floats. The GEMV of gemv.cuh computes the same function
 * from float activations for ntok ≤ 16.
 *
 * A handle owns the cuBLASLt handle, its workspace and the algorithm chosen per shape. The
 * first call of a shape may query heuristics (host work, no device sync); later calls and any
 * call after cuda_gemm_prepare() of that shape only enqueue work, so they can be captured in a
 * CUDA Graph. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

/* A handle belongs to the device current at create and is not thread-safe; every call on it
 * uses its one workspace, so calls on one handle must be ordered on one stream (a handle per
 * stream otherwise). Graphs captured from a handle point at that workspace: destroy them
 * before cuda_gemm_free(). The cache holds 256 shapes (wtype, rows, k, ntok); past that a new
 * shape replaces the entries in turn. ntok == 0 returns 0 and launches nothing. Accuracy: Hopper's
 * tensor cores accumulate in f32 but truncate while adding, so the error grows with k and
 * leans towards 0: tests/gpu/test_ops measures 4e-6 relative (vs double) at k = 4096. */
struct cuda_gemm;

/* workspace_bytes: 0 = 32 MiB. Returns 0, -ENOMEM, -ENODEV, or -EIO (cuBLASLt status). */
int cuda_gemm_create(size_t workspace_bytes, struct cuda_gemm **out);
void cuda_gemm_free(struct cuda_gemm *g); /* NULL is a no-op */

/* Chooses and caches the algorithm for a shape (beta 0 and 1 alike). */
int cuda_gemm_prepare(struct cuda_gemm *g, uint32_t wtype, int rows, int k, int ntok);

/* beta is 0 or 1. Pointers 16-byte aligned; k a multiple of 8. 0 or a negative errno. */
int cuda_gemm(struct cuda_gemm *g, uint32_t wtype, const void *w, const void *x, float *y,
              int rows, int k, int ntok, float beta, cudaStream_t stream);

/* Batch-invariant mode (fixed_ntok > 0; 0 turns it off): every token count of a weight shape
 * runs the algorithm chosen for fixed_ntok tokens, never split over k, so a row's result is
 * bitwise the same whatever ntok it comes in (slower for small and odd batches). Clears the
 * cache. */
int cuda_gemm_set_invariant(struct cuda_gemm *g, int fixed_ntok);

/* Plain reference: one thread per output, float sum. Same arguments. */
int cuda_gemm_ref(uint32_t wtype, const void *w, const void *x, float *y, int rows, int k,
                  int ntok, float beta, cudaStream_t stream);

/* dst[i] = (wtype) src[i] for i < n, round to nearest even. */
int cuda_f32_to_w16(uint32_t wtype, const float *src, void *dst, size_t n, cudaStream_t stream);
