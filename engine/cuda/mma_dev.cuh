/* mma_dev.cuh — the tensor-core pieces the attention kernels share (attention_tc.cu,
 * attention_dec.cu): mma.sync m16n8k16 with f16 inputs and f32 accumulators, ldmatrix of
 * four 8 × 8 matrices (plain, and transposed for V), f16 packing. Device code only. */
#pragma once

#include <stdint.h>
#include <string.h>

#include <math.h>

#include <cuda_fp16.h>

template <int N> static __device__ __forceinline__ void zero4(float (&x)[N][4])
{
#pragma unroll
        for (int j = 0; j < N; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                        x[j][e] = 0.0f;
}

static __device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ldmatrix of four 8 × 8 matrices at the shared-memory address s (a lane's row); the
 * address is a base plus constants at every call, so ptxas folds them into the offset */
static __device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t s)
{
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
}

static __device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t s)
{
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
}

/* d0, d1 += a · B for the two n8 tiles whose B fragments one ldmatrix.x4 (TRANS: .trans, for
 * V) reads at addr: the step both products of a tile are made of */
template <bool TRANS>
static __device__ __forceinline__ void mma_x2(float (&d0)[4], float (&d1)[4], const uint32_t (&a)[4], uint32_t addr)
{
        uint32_t b[4];
        if constexpr (TRANS)
                ldsm_x4_t(b, addr);
        else
                ldsm_x4(b, addr);
        mma_f16(d0, a, b[0], b[1]);
        mma_f16(d1, a, b[2], b[3]);
}

static __device__ __forceinline__ uint32_t pack_half2(float lo, float hi)
{
        const __half2 h = __floats2half2_rn(lo, hi);
        uint32_t u;
        memcpy(&u, &h, sizeof(u));
        return u;
}

/* FA2's online-softmax step (base 2) for the two rows a lane's m16n8 accumulators hold, g
 * and g + 8 (g = lane / 4): s is NT n-tiles of scores, -inf where masked; m_a, m_b the rows'
 * running maxima (the same in the 4 lanes of a row), l_a, l_b this lane's share of their
 * sums. Updates them, turns s into exp2(s − max) and returns the factors the rows' earlier
 * output accumulators must be scaled by (1 where the max did not grow). */
template <int NT>
static __device__ __forceinline__ float2 online_softmax2(float (&s)[NT][4], float &m_a, float &m_b, float &l_a,
                                                         float &l_b)
{
        float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                        mx_a = fmaxf(mx_a, s[j][e]);
                        mx_b = fmaxf(mx_b, s[j][2 + e]);
                }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        /* reference for the exponentials: 0 while a row has seen nothing, so exp2(-inf - ref)
         * is 0, never NaN */
        const float ref_a = mn_a == -INFINITY ? 0.0f : mn_a, ref_b = mn_b == -INFINITY ? 0.0f : mn_b;
        const float f_a = exp2f(m_a - ref_a), f_b = exp2f(m_b - ref_b);
        m_a = mn_a;
        m_b = mn_b;
        float ps_a = 0.0f, ps_b = 0.0f;
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                        s[j][e] = exp2f(s[j][e] - ref_a);
                        s[j][2 + e] = exp2f(s[j][2 + e] - ref_b);
                        ps_a += s[j][e];
                        ps_b += s[j][2 + e];
                }
        l_a = l_a * f_a + ps_a;
        l_b = l_b * f_b + ps_b;
        return make_float2(f_a, f_b);
}

/* The rows g and g + 8 of a lane's m16n8 accumulators scaled by f_a and f_b. */
template <int N> static __device__ __forceinline__ void scale_rows2(float (&o)[N][4], float f_a, float f_b)
{
#pragma unroll
        for (int j = 0; j < N; j++) {
                o[j][0] *= f_a;
                o[j][1] *= f_a;
                o[j][2] *= f_b;
                o[j][3] *= f_b;
        }
}
