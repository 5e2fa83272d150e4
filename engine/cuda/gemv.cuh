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

/* y = beta·y + W·x with beta 0 or 1 (1: accumulate, e.g. a residual add). */
int cuda_gemv_beta(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k,
                   int ntok, float beta, cudaStream_t stream, bool pdl = false);

/* What is applied to the activations on their way into the product (cuda_gemv_fused). */
enum cuda_gemv_pro {
        CUDA_GEMV_PRO_NONE = 0,
        CUDA_GEMV_PRO_RMSNORM = 1,  /* rmsnorm.cuh's cuda_rmsnorm, weight norm_w, eps */
        CUDA_GEMV_PRO_GLU_SILU = 2, /* ops.cuh's cuda_glu with CUDA_ACT_SILU */
        CUDA_GEMV_PRO_GLU_GELU = 3, /* ops.cuh's cuda_glu with CUDA_ACT_GELU */
};

struct cuda_gemv_prologue {
        int kind;             /* enum cuda_gemv_pro */
        const float *norm_w;  /* RMSNORM: k floats, 16-byte aligned; otherwise unused */
        float eps;            /* RMSNORM: ≥ 0; otherwise unused */
};

/* y = beta·y + W·f(x), beta 0 or 1, f as pro says (pro NULL: NONE); one kernel launch.
 *   NONE:    x is ntok × k, f(x) = x: exactly cuda_gemv_beta.
 *   RMSNORM: x is ntok × k, f(x)[t][i] = x[t][i] / sqrt(mean_i(x[t]²) + eps) · norm_w[i],
 *            each block computing its tokens' scales itself with cuda_rmsnorm's reduction.
 *   GLU_*:   x is ntok × 2k (gate then up, cuda_glu's gu), f(x)[t][i] = act(gate)·up.
 * f(x) is then rounded to the weight type as in cuda_gemv. The result is bitwise the one of
 * cuda_rmsnorm / cuda_glu into a buffer followed by cuda_gemv_beta on it (same reduction,
 * same formulas, same per-row summation order), so callers may fuse or not per call.
 * RMSNORM blocks are persistent (each computes its tokens' scales once, then takes several
 * row groups); GLU blocks evaluate act() on all ntok·k inputs each (one block per 8, 6 or 2
 * rows), which costs more than cuda_glu's one pass as ntok grows. Measured on H200 in
 * graphs (tests/gpu/test_kernels.cu): about even with the separate pair at ntok 1 (GLU on an
 * 8B-sized down projection 1.8 µs faster), slower from ntok 4 on; pick per batch size.
 * Same arguments, errors and alignment as cuda_gemv_beta, plus -EINVAL for an unknown kind,
 * a NULL or unaligned norm_w or a negative or NaN eps. Graph-capturable (its launch asks
 * the occupancy and SM count, no stream work).
 * pdl: programmatic dependent launch (common.cuh): the blocks may start while the previous
 * kernel finishes, load their first weights, then wait for it before touching x or y.
 * Bitwise the same result either way. */
int cuda_gemv_fused(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k,
                    int ntok, float beta, const struct cuda_gemv_prologue *pro,
                    cudaStream_t stream, bool pdl = false);

/* One token, a product and the small kernel after it in one launch (bitwise the pair;
 * tests/gpu/test_ops.cu), for the engine's one-token steps:
 * cuda_gemv_glu: out[i] = act(W[i]·x) · (W[n + i]·x) for i < n, W the 2n × k gate/up matrix:
 *   cuda_gemv into gu then ops.cuh's cuda_glu(act). act: CUDA_ACT_SILU or CUDA_ACT_GELU.
 * cuda_gemv_qkv: the Q/K/V product of x into qa->qkv (row length rows = QD + KD + VD, k
 *   columns) followed by attention.cuh's cuda_qkv_post(qa): bias, RoPE, Q scale, K/V into
 *   the cache. qa->ntok must be 1; Q/K head norms (qa->q_norm, k_norm) give -EOPNOTSUPP (a
 *   head's norm needs the whole head first). Blocks compute one RoPE pair each, so the
 *   rotation costs no exchange between blocks.
 * Arguments and errors as cuda_gemv_beta (and cuda_qkv_post's checks); ordinary launches. */
int cuda_gemv_glu(uint32_t wtype, int act, const void *w, const float *x, float *out, int n, int k,
                  cudaStream_t stream);
struct cuda_qkv_args;
int cuda_gemv_qkv(uint32_t wtype, const void *w, const float *x, int k, const struct cuda_qkv_args *qa,
                  cudaStream_t stream);

/* Same function, one thread per output, serial float sum over k: slow and obviously right. */
int cuda_gemv_ref(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k,
                  int ntok, cudaStream_t stream);
