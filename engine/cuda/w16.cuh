/* w16.cuh — float to the weights' 16-bit type (F16 or BF16, round to nearest even), and
 * the output stores of the kernels that can write either floats or those 16-bit values
 * (rmsnorm.cu, ops.cu's cuda_glu): writing the product's input already converted saves the
 * cuBLASLt path a conversion kernel, bitwise the same as cuda_f32_to_w16 (gemm.cuh) after
 * the float version. Include from .cu files only. */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "gemv.cuh" /* enum cuda_wtype */

template <int WTYPE> static __device__ __forceinline__ uint16_t float_to_w16(float f);
template <> __device__ __forceinline__ uint16_t float_to_w16<CUDA_WTYPE_BF16>(float f)
{
        return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
template <> __device__ __forceinline__ uint16_t float_to_w16<CUDA_WTYPE_F16>(float f)
{
        return __half_as_ushort(__float2half_rn(f));
}

static __device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi)
{
        return (uint32_t)lo | (uint32_t)hi << 16;
}

/* OUT = 0: float output; CUDA_WTYPE_F16 / CUDA_WTYPE_BF16: that type's 16-bit values.
 * store1(p, i, v): element i; store4(p, i, v): elements 4i .. 4i+3 (p 16-byte aligned for
 * floats, 8 for 16-bit values). */
template <int OUT> struct out_store {
        static __device__ __forceinline__ void store1(void *p, size_t i, float v)
        {
                ((uint16_t *)p)[i] = float_to_w16<OUT>(v);
        }
        static __device__ __forceinline__ void store4(void *p, size_t i, float4 v)
        {
                ((uint2 *)p)[i] = make_uint2(pack2(float_to_w16<OUT>(v.x), float_to_w16<OUT>(v.y)),
                                             pack2(float_to_w16<OUT>(v.z), float_to_w16<OUT>(v.w)));
        }
};

template <> struct out_store<0> {
        static __device__ __forceinline__ void store1(void *p, size_t i, float v)
        {
                ((float *)p)[i] = v;
        }
        static __device__ __forceinline__ void store4(void *p, size_t i, float4 v)
        {
                ((float4 *)p)[i] = v;
        }
};
