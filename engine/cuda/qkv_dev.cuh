/* qkv_dev.cuh — the Q/K/V post-processing formulas that more than one kernel applies
 * (attention.cu's cuda_qkv_post and the one-token Q/K/V product with its epilogue in
 * gemv.cu): the cache row of a position (also read by attention_tc.cu), the RoPE angle and
 * rotation. Written once, so the fused values are bitwise cuda_qkv_post's. Include from .cu
 * files only. */
#pragma once

#include <math.h>

#include "attention.cuh"

/* Cache row (block · block_size + offset) of position p of block-table row `row`, or -1 when
 * the table gives no block. The caller keeps 0 ≤ p < max_blocks · block_size and row ≥ 0;
 * rows past the table's end and block ids past the cache's end cannot be checked here (the
 * sizes are not passed): the engine hands out only valid ones. */
static __device__ __forceinline__ long long cache_row(const struct cuda_batch_map &m, int row,
                                                      int p)
{
        const int b = m.bt[(long long)row * m.max_blocks + p / m.block_size];
        return b < 0 ? -1 : (long long)b * m.block_size + p % m.block_size;
}

/* Cache row of token t's own K/V, or -1 when its position or block cannot be found. */
static __device__ __forceinline__ long long qkv_cache_row(const struct cuda_qkv_args &a, int t)
{
        const int pos = a.map.pos[t], row = a.map.bt_row[t];
        if (pos < 0 || row < 0 || pos / a.map.block_size >= a.map.max_blocks)
                return -1;
        return cache_row(a.map, row, pos);
}

/* The CPU backend's theta_scale, computed on the host with the same libm call so that
 * theta (built by repeated float multiplication, as the CPU does) matches it bit for bit. */
static inline float rope_theta_scale(const struct cuda_qkv_args *a)
{
        return a->n_rot > 0 ? powf(a->rope_base, -2.0f / (float)a->n_rot) : 1.0f;
}

/* Rotation angle of pair i at position pos, exactly as engine/forward.c rope_cache. */
static __device__ __forceinline__ float rope_angle(const struct cuda_qkv_args &a, float theta_scale,
                                                   int pos, int i)
{
        float theta = (float)pos;
        for (int k = 0; k < i; k++)
                theta *= theta_scale;
        const float f = a.rope_ff ? a.rope_ff[i] : 1.0f;
        return a.rope_scale * (theta / f);
}

/* (x0, x1) rotated by the angle whose cosine and sine are c and s. */
static __device__ __forceinline__ void rope_rotate(float &x0, float &x1, float c, float s)
{
        const float a = x0, b = x1;
        x0 = fmaf(a, c, -(b * s));
        x1 = fmaf(a, s, b * c);
}
