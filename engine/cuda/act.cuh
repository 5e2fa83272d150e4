/* act.cuh — the gated activations' functions, one definition for every kernel that applies
 * them (ops.cu's cuda_glu, the GEMV prologues in gemv_dev.cuh): the fused values must be
 * bitwise cuda_glu's, so the formulas are written once. Include from .cu files only. */
#pragma once

static __device__ __forceinline__ float act_silu(float g)
{
        return g / (1.0f + expf(-g));
}

/* tanh-GELU with ggml's table ends: 0 at or below -10, identity at or above 10 */
static __device__ __forceinline__ float act_gelu(float g)
{
        if (g <= -10.0f)
                return 0.0f;
        if (g >= 10.0f)
                return g;
        return 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g)));
}
