/* chain.cuh — a run of one-token GEMVs as one persistent kernel: phase p computes
 * y_p = beta_p·y_p + W_p·f_p(x_p) (cuda_gemv_fused's products and prologues), where x_p may
 * be what an earlier phase wrote. Between phases the whole grid meets at a barrier, while
 * every block's copy engine keeps streaming its next weights (which no phase writes) into a
 * ring of shared-memory stages: HBM stays busy across the boundaries that separate kernels
 * pay for with a drain, a launch and a ramp. Each phase's output is bitwise what
 * cuda_gemv_fused (hence cuda_rmsnorm / cuda_glu then cuda_gemv_beta) gives for one token:
 * the same per-row summation order, the same prologue formulas.
 *
 * What it is for: a one-token decode step as the first layer's Q/K/V product, then per
 * layer Q/K/V post-processing, attention, and one chain (output projection + residual, FFN
 * norm + gate/up, SwiGLU + down + residual, the next layer's norm + Q/K/V). The engine does
 * not run it: on an H200 such a chain is still slower than the separate kernels
 * (chain.cu's header, docs/performance.md). */
#pragma once

#include <stdint.h>

#include <cuda_runtime.h>

#include "gemv.cuh"

#define CUDA_CHAIN_MAX_PHASES 6

struct cuda_chain_phase {
        const void *w;        /* rows × k weights of the chain's wtype, row-major, 16-byte aligned */
        const float *x;       /* k floats (GLU: 2k, gate then up), 16-byte aligned */
        float *y;             /* rows floats */
        const float *norm_w;  /* RMSNORM: k floats, 16-byte aligned; otherwise unused */
        int rows, k;          /* k a multiple of 8 */
        int kind;             /* enum cuda_gemv_pro */
        int accumulate;       /* 1: y += W·f(x) (residual add); 0: y = W·f(x) */
        float eps;            /* RMSNORM: ≥ 0 */
};

struct cuda_chain {
        int n; /* 1 .. CUDA_CHAIN_MAX_PHASES */
        struct cuda_chain_phase ph[CUDA_CHAIN_MAX_PHASES];
};

/* The grid barrier's state: CUDA_CHAIN_SYNC_BYTES of device memory, zeroed once
 * (cudaMemset) before the first chain, used by one stream's chains only (two streams need
 * two). Between chains it is back in its resting state, so graphs replay it freely. */
#define CUDA_CHAIN_SYNC_BYTES 256

/* Tuning: blocks per SM (1 or 2; 0: 1) and the size of one ring stage in bytes (0: 64 KB;
 * at least two rows of the widest phase, 4·k bytes, which it is raised to). The results do
 * not depend on either. */
struct cuda_chain_opts {
        int blocks_per_sm;
        int stage_bytes;
        /* NULL, or where each block's thread 0 writes %globaltimer (ns) at four points of
         * every phase: trace[(block · n + phase) · 4 + i], i = 0 before the grid barrier
         * (the previous phase's groups done), 1 after it, 2 prologue done, 3 groups done;
         * blocks = CUDA_CHAIN_TRACE_BLOCKS_MAX at most are traced. For measurements. */
        unsigned long long *trace;
};

#define CUDA_CHAIN_TRACE_BLOCKS_MAX 1024

/* Enqueues the chain on stream (graph-capturable; a cooperative launch, so every block is
 * resident at once). Returns 0; -EINVAL for a bad phase (wtype not F16/BF16, NULL or
 * unaligned pointers, k not a multiple of 8, rows or k ≤ 0, unknown kind, beta not 0/1, a
 * NaN or negative eps), n out of range or a NULL sync; -EOPNOTSUPP when a phase's rows do
 * not fit the shared memory of this device (cuda_chain_fits says beforehand); or the
 * negative errno of a failed launch (the CUDA call in cuda_err_last()). opts may be NULL. */
int cuda_chain_gemv(uint32_t wtype, const struct cuda_chain *ch, void *sync, const struct cuda_chain_opts *opts,
                    cudaStream_t stream);

/* 1 when cuda_chain_gemv can take phases whose widest k is kmax on the current device with
 * these options (shared memory for the ring and the activations, cooperative launch), 0
 * when not, a negative errno when the device cannot be asked. */
int cuda_chain_fits(int kmax, const struct cuda_chain_opts *opts);
