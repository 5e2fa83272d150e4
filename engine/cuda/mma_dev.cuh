/* mma_dev.cuh — the tensor-core pieces the attention kernels share (attention_tc.cu,
 * attention_dec.cu): mma.sync m16n8k16 with f16 inputs and f32 accumulators, ldmatrix of
 * four 8 × 8 matrices (plain, and transposed for V), f16 packing. Device code only. */
#pragma once

#include <stdint.h>
#include <string.h>

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
