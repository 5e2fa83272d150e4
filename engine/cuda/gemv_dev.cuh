/* gemv_dev.cuh — device code the GEMV kernels share (gemv.cu, chain.cu): the block shape
 * whose per-row summation order every one-token product keeps, weight and activation
 * conversions, and the prologues' formulas (copied from rmsnorm.cu and ops.cu so the fused
 * values are bitwise theirs). Include from .cu files only. */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "act.cuh"
#include "common.cuh"
#include "gemv.cuh"

/* An activation float4: through L1 (read-only path) or, CG, from L2 only (coherent with
 * writes other blocks of the running kernel made before a grid barrier). */
template <bool CG> static __device__ __forceinline__ float4 ld_act4(const float4 *p)
{
        if constexpr (CG)
                return __ldcg(p);
        else
                return *p;
}

/* The same through the read-only path (__ldg) when not CG: what the GEMVs' activation
 * loads always were. */
template <bool CG> static __device__ __forceinline__ float4 ld_act(const float4 *p)
{
        if constexpr (CG)
                return __ldcg(p);
        else
                return __ldg(p);
}

/* An output read back for accumulation. */
template <bool CG> static __device__ __forceinline__ float ld_y(const float *p)
{
        if constexpr (CG)
                return __ldcg(p);
        else
                return *p;
}

#define GEMV_WARPS 4
#define GEMV_THREADS (GEMV_WARPS * 32)
#define GEMV_VEC 8 /* weight elements per 16-byte load */

/* ---- element conversion ---- */

/* Two packed weights (low element first) to floats. BF16 is the top half of an f32. */
template <int WTYPE> static __device__ __forceinline__ float2 w2_to_float2(uint32_t u);

template <> __device__ __forceinline__ float2 w2_to_float2<CUDA_WTYPE_BF16>(uint32_t u)
{
        return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

template <> __device__ __forceinline__ float2 w2_to_float2<CUDA_WTYPE_F16>(uint32_t u)
{
        __half2 h;
        memcpy(&h, &u, sizeof(h));
        return __half22float2(h);
}

template <int WTYPE> static __device__ __forceinline__ float w_to_float(const uint16_t *p);
template <> __device__ __forceinline__ float w_to_float<CUDA_WTYPE_BF16>(const uint16_t *p)
{
        return __uint_as_float((uint32_t)*p << 16);
}
template <> __device__ __forceinline__ float w_to_float<CUDA_WTYPE_F16>(const uint16_t *p)
{
        return __half2float(__ushort_as_half(*p));
}

template <int WTYPE> static __device__ __forceinline__ float round_act(float v);
template <> __device__ __forceinline__ float round_act<CUDA_WTYPE_BF16>(float v)
{
        return __bfloat162float(__float2bfloat16_rn(v));
}
template <> __device__ __forceinline__ float round_act<CUDA_WTYPE_F16>(float v)
{
        return __half2float(__float2half_rn(v));
}

/* ---- prologues: what cuda_gemv_fused applies to x ---- */

template <int PRO> static __device__ __forceinline__ float glu_act(float g)
{
        return PRO == CUDA_GEMV_PRO_GLU_GELU ? act_gelu(g) : act_silu(g);
}

/* rmsnorm.cu's block size: its reduction is reproduced here exactly, 256 virtual threads
 * (this block's 128 threads being two each), so the per-token scale is bitwise its. */
#define RMS_VTHREADS 256

/* scale[t] = rsqrtf(Σ x[t]² / k + eps) for the block's T tokens, summed exactly as
 * rmsnorm.cu's vectorized kernel does: virtual thread v (v < 256) adds float4 number
 * v, v + 256, … of the row (the same expression, so the same FMA contraction), warps
 * butterfly-sum their lanes, and the eight warp sums meet in a second butterfly. Thread
 * tid plays virtual threads tid (sums a) and tid + 128 (sums b): same lane, warps w, w + 4.
 * CG: x read through L2 only (it was written by another block of the same kernel). */
template <int T, bool CG = false>
static __device__ __forceinline__ void rms_scales(const float *x, int k, float eps,
                                                  float (&scale)[T])
{
        static_assert(GEMV_THREADS * 2 == RMS_VTHREADS, "two virtual threads per thread");
        __shared__ float warp_part[T][RMS_VTHREADS / 32];
        __shared__ float tok_scale[T];
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int n4 = k / 4;
        float ssa[T], ssb[T];
#pragma unroll
        for (int t = 0; t < T; t++)
                ssa[t] = ssb[t] = 0.0f;
        /* all tokens' loads of one step together (one latency per step, not per token) */
        for (int i = threadIdx.x; i < n4; i += RMS_VTHREADS)
#pragma unroll
                for (int t = 0; t < T; t++) {
                        const float4 v = ld_act4<CG>((const float4 *)(x + (size_t)t * k) + i);
                        ssa[t] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                }
        for (int i = threadIdx.x + GEMV_THREADS; i < n4; i += RMS_VTHREADS)
#pragma unroll
                for (int t = 0; t < T; t++) {
                        const float4 v = ld_act4<CG>((const float4 *)(x + (size_t)t * k) + i);
                        ssb[t] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                }
#pragma unroll
        for (int t = 0; t < T; t++) {
                const float a = warp_sum(ssa[t]), b = warp_sum(ssb[t]);
                if (lane == 0) {
                        warp_part[t][warp] = a;
                        warp_part[t][warp + GEMV_WARPS] = b;
                }
        }
        __syncthreads();
        for (int t = warp; t < T; t += GEMV_WARPS) {
                float v = lane < RMS_VTHREADS / 32 ? warp_part[t][lane] : 0.0f;
                v = warp_sum(v);
                if (lane == 0)
                        tok_scale[t] = rsqrtf(v / (float)k + eps);
        }
        __syncthreads();
#pragma unroll
        for (int t = 0; t < T; t++)
                scale[t] = tok_scale[t];
}

/* The 8 activations f(x)[t][k0 .. k0+8), unrounded. gw: norm_w[k0 .. k0+8) (RMSNORM).
 * CG: x through L2 only, as in rms_scales. */
template <int PRO, bool CG = false>
static __device__ __forceinline__ void load_act(float (&xv)[GEMV_VEC], const float *__restrict__ x,
                                                int k, int t, int k0, float scale,
                                                const float (&gw)[GEMV_VEC])
{
        if constexpr (PRO == CUDA_GEMV_PRO_GLU_SILU || PRO == CUDA_GEMV_PRO_GLU_GELU) {
                const float *row = x + (size_t)t * 2 * k; /* gate [0, k), up [k, 2k) */
                const float4 *gp = (const float4 *)(row + k0), *up = (const float4 *)(row + k + k0);
                const float4 ga = ld_act<CG>(gp), gb = ld_act<CG>(gp + 1), ua = ld_act<CG>(up), ub = ld_act<CG>(up + 1);
                const float g[GEMV_VEC] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
                const float u[GEMV_VEC] = {ua.x, ua.y, ua.z, ua.w, ub.x, ub.y, ub.z, ub.w};
#pragma unroll
                for (int j = 0; j < GEMV_VEC; j++)
                        xv[j] = glu_act<PRO>(g[j]) * u[j]; /* as glu_kernel */
        } else {
                const float4 *xp = (const float4 *)(x + (size_t)t * k + k0);
                const float4 a = ld_act<CG>(xp), b = ld_act<CG>(xp + 1);
                const float v[GEMV_VEC] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                for (int j = 0; j < GEMV_VEC; j++) {
                        if constexpr (PRO == CUDA_GEMV_PRO_RMSNORM)
                                xv[j] = v[j] * scale * gw[j]; /* as rmsnorm_kernel */
                        else
                                xv[j] = v[j];
                }
        }
}

/* The block's partial sums meet: each warp's lanes, then the warps in warp order (so every
 * output is summed in the same order whatever kernel computed it), and y[t][row0 + r] gets
 * the sum (added to what is there when accumulate; CG: read from L2 only). */
template <int T, int R, bool CG = false>
static __device__ __forceinline__ void block_sum_store(const float (&acc)[T][R], float (&part)[GEMV_WARPS][T * R],
                                                       float *__restrict__ y, int rows, int row0, int accumulate)
{
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
        for (int t = 0; t < T; t++)
#pragma unroll
                for (int r = 0; r < R; r++) {
                        const float s = warp_sum(acc[t][r]);
                        if (lane == 0)
                                part[warp][t * R + r] = s;
                }
        __syncthreads();
        if (threadIdx.x < T * R) {
                const int t = threadIdx.x / R, r = threadIdx.x % R;
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < GEMV_WARPS; i++)
                        s += part[i][threadIdx.x];
                if (row0 + r < rows) {
                        float *yp = y + (size_t)t * rows + row0 + r;
                        *yp = accumulate ? ld_y<CG>(yp) + s : s;
                }
        }
}
