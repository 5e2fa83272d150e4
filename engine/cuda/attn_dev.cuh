/* attn_dev.cuh — device code the attention kernels share (attention.cu: the CUDA-core
 * kernels; attention_tc.cu: prefill on the tensor cores): which positions a token attends
 * to, the output store, and the cp.async copies they stream the cache with. Include from .cu
 * files only. */
#pragma once

#include <stdint.h>

#include "attention.cuh"
#include "gemv.cuh" /* enum cuda_wtype */
#include "w16.cuh"

#define LOG2E 1.4426950408889634f

/* The positions lo..hi a token attends to (n = hi - lo + 1, 0 for none). Positions past the
 * block table (host check: max_blocks · block_size ≤ INT_MAX) are skipped, never read. */
struct attn_span {
        int lo, hi, n, row;
};

static __device__ __forceinline__ struct attn_span attn_span_of(const struct cuda_attn_args &a,
                                                                int t)
{
        const int pos = a.map.pos[t], row = a.map.bt_row[t];
        const int last = a.map.max_blocks * a.map.block_size - 1;
        struct attn_span s = {0, -1, 0, row};
        if (pos < 0 || row < 0)
                return s;
        s.hi = min(pos, last);
        s.lo = a.window > 0 && pos >= a.window ? pos - (a.window - 1) : 0;
        s.n = s.hi >= s.lo ? s.hi - s.lo + 1 : 0;
        return s;
}

/* out[i] = v, or its 16-bit value into out16 (cuda_attn_args.out16_type). */
static __device__ __forceinline__ void att_store(const struct cuda_attn_args &a, long long i, float v)
{
        if (a.out16_type == CUDA_WTYPE_BF16)
                ((uint16_t *)a.out16)[i] = float_to_w16<CUDA_WTYPE_BF16>(v);
        else if (a.out16_type == CUDA_WTYPE_F16)
                ((uint16_t *)a.out16)[i] = float_to_w16<CUDA_WTYPE_F16>(v);
        else
                a.out[i] = v;
}

/* 16 bytes from global to shared memory through L2 only; src_bytes 0 zero-fills. */
static __device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes)
{
        const unsigned d = (unsigned)__cvta_generic_to_shared(smem);
        asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(d),
                     "l"(gmem), "r"(src_bytes)
                     : "memory");
}

static __device__ __forceinline__ void cp_async_commit(void)
{
        asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Wait until at most n (0 .. 7) of this thread's groups are pending. */
static __device__ __forceinline__ void cp_async_wait(int n)
{
        switch (n) {
        case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
        case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
        case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
        case 3: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
        case 4: asm volatile("cp.async.wait_group 4;\n" ::: "memory"); break;
        case 5: asm volatile("cp.async.wait_group 5;\n" ::: "memory"); break;
        case 6: asm volatile("cp.async.wait_group 6;\n" ::: "memory"); break;
        default: asm volatile("cp.async.wait_group 7;\n" ::: "memory"); break;
        }
}
