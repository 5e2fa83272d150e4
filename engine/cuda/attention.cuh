/* attention.cuh — attention over the paged KV cache, and the step before it (bias, per-head
 * Q/K norm, RoPE, Q pre-scale, K/V rows written into the cache). One call handles any mix of
 * sequences and positions: decode (one query per sequence) and prefill chunks (many queries
 * of one sequence, causal) alike. The *_ref versions are plain and obviously right; the tests
 * compare both against a CPU double reference. All calls are asynchronous on `stream`,
 * allocate nothing and synchronize nothing, so they can be captured in a CUDA Graph.
 *
 * Paged cache layout, per layer: k_cache[n_blocks][block_size][n_head_kv * dk] f16 (v the same
 * with dv). A token's sequence has a block-table row: bt[row * max_blocks + pos / block_size]
 * is the block holding position pos. */
#pragma once

#include <stdint.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

/* Where each token of a batch belongs: its position, and the block-table row of its sequence.
 * All device pointers. */
struct cuda_batch_map {
        const int32_t *pos;      /* [ntok] */
        const int32_t *bt_row;   /* [ntok] row of `bt` for the token's sequence */
        const int32_t *bt;       /* [n_rows][max_blocks] block ids */
        int max_blocks;
        int block_size;
};

/* The step between the QKV projection and attention, for ntok tokens, in place on qkv:
 * qkv[t * ld + 0 .. QD) is Q (n_head heads of dk), then K (n_head_kv × dk), then V
 * (n_head_kv × dv), QD = n_head·dk, ld ≥ QD + KD + VD floats. In this order, as the CPU
 * backend (engine/forward.c, qkv_post) does it:
 *   1. bias (bq/bk/bv, NULL when absent; all three or none) added to Q, K, V;
 *   2. RMSNorm of each Q head with q_norm[dk] and each K head with k_norm[dk] (NULL: none),
 *      eps norm_eps: y = x / sqrt(mean(x²) + eps) · w;
 *   3. RoPE on Q and K heads at the token's position: for pair i < n_rot/2,
 *      theta_i = scale · pos · base^(-2i/n_rot) / ff[i] (ff NULL: 1), rotating
 *      NORM: (x[2i], x[2i+1]); NEOX: (x[i], x[i + n_rot/2]); dims ≥ n_rot untouched:
 *      x0' = x0·cos − x1·sin, x1' = x0·sin + x1·cos;
 *   4. Q multiplied by q_scale (1: skip);
 *   5. K and V of the token written as f16 (round to nearest) into the cache at (row, pos).
 * Q stays in qkv (float) for cuda_attention. */
struct cuda_qkv_args {
        float *qkv;
        int ld;
        int ntok, n_head, n_head_kv, dk, dv;
        const float *bq, *bk, *bv;
        const float *q_norm, *k_norm;
        float norm_eps;
        int n_rot;               /* even, ≤ dk */
        int neox;                /* 0: NORM, 1: NEOX */
        float rope_base, rope_scale;
        const float *rope_ff;    /* [n_rot / 2] or NULL */
        float q_scale;
        __half *k_cache, *v_cache; /* this layer */
        struct cuda_batch_map map;
        int pdl;                 /* launch with programmatic dependent launch (common.cuh) */
};
int cuda_qkv_post(const struct cuda_qkv_args *a, cudaStream_t stream);
/* cuda_qkv_post's argument check: 1 when there is work, 0 for none (ntok 0), -EINVAL. */
int cuda_qkv_check(const struct cuda_qkv_args *a);
int cuda_qkv_post_ref(const struct cuda_qkv_args *a, cudaStream_t stream);

/* out[t * ldo + h * dv + d] = Σ_j softmax_j(scale · q_h · k_j) · v_j[d] for each token t and
 * query head h, where j runs over positions lo..pos[t] of the token's sequence (lo = 0, or
 * pos − window + 1 when window > 0 and that is larger), K/V head h / (n_head / n_head_kv)
 * (GQA), q_h = q[t * ldq + h * dk ..]. Scores and the softmax in float; K/V read as f16.
 * Every position lo..pos[t] must already be in the cache (cuda_qkv_post writes the batch's
 * own tokens first, so a prefill chunk attends to itself causally). dk, dv: multiples of 8,
 * ≤ 256. n_head a multiple of n_head_kv. */
struct cuda_attn_args {
        const float *q;
        int ldq;
        float *out;
        int ldo;
        int ntok, n_head, n_head_kv, dk, dv;
        int window;              /* 0: none */
        float scale;
        const __half *k_cache, *v_cache; /* this layer */
        struct cuda_batch_map map;
        /* Batch invariance. Nonzero: the launch configuration (query heads per block,
         * cluster split of the positions, warps per block) depends only on (n_head,
         * n_head_kv, dk, dv), never on ntok or on the other tokens of the batch, so each
         * (token, head)'s output is bitwise the same whatever batch it runs in. Large batches
         * (ntok · n_head ≥ 1024 when n_head / n_head_kv is a multiple of 4: 32 tokens at 32
         * query heads) run the same configuration either way; smaller ones are slower with the flag (no cluster split to spread a few
         * contexts over the GPU; 1 token at 4096 positions: ~7x). Zero: the configuration
         * follows ntok, so a token's result may differ in the last bits between batch sizes
         * (a different split sums in a different order; the results agree within float
         * rounding). */
        int deterministic;
        int pdl;                 /* launch with programmatic dependent launch (common.cuh) */
        /* Nonzero out16_type (CUDA_WTYPE_F16 or CUDA_WTYPE_BF16, gemv.cuh): the output goes to
         * out16 instead, in the same layout, as that type's 16-bit values (round to nearest
         * even: bitwise out followed by cuda_f32_to_w16), for a product that reads its input
         * converted (cuBLASLt); out is then not written and may be NULL. */
        void *out16;
        int out16_type;
};
int cuda_attention(const struct cuda_attn_args *a, cudaStream_t stream);
int cuda_attention_ref(const struct cuda_attn_args *a, cudaStream_t stream);
/* cuda_attention's argument check: 1 when there is work, 0 for none (ntok 0), -EINVAL. */
int cuda_attn_check(const struct cuda_attn_args *a);

/* Prefill attention on the tensor cores: cuda_attention's function, same arguments and
 * meaning (any mix of sequences, windows, missing cache blocks, out16), computed by tiles of
 * 64 consecutive tokens of the batch against tiles of cache positions with mma.sync:
 * Q (scaled by scale·log2 e) and the probabilities are rounded to f16 for the products,
 * scores, the online softmax and the sums stay float. So the result is within f16 rounding
 * of cuda_attention's (tests/gpu/test_attention.cu: 3e-3 relative to a double reference),
 * not bitwise. Made for prefill chunks: the tokens of a tile that belong to one sequence
 * share every K/V load; a tile holding tokens of several sequences runs once per sequence
 * (correct, slower), so callers give it runs of one sequence's tokens and cuda_attention the
 * rest. A token's result does not depend on the other tokens of its tile (positions are
 * visited in tiles aligned to their size). dk == dv, 64 or 128 (cuda_attention_tc_ok);
 * other dims return -EOPNOTSUPP. Ignores `deterministic` (always the same configuration). */
int cuda_attention_tc(const struct cuda_attn_args *a, cudaStream_t stream);
int cuda_attention_tc_ok(int dk, int dv);

/* Decode attention on the tensor cores: cuda_attention's function, same arguments and
 * meaning (any tokens, windows, missing cache blocks, out16), for decode steps. One block
 * per (token, K/V head): the query heads sharing that head are the rows of an mma.sync
 * m16n8k16, four warps split the token's positions in tiles of 16, and for a few tokens a
 * cluster of up to 8 blocks splits them further. As in cuda_attention_tc, Q (scaled by
 * scale·log2 e) and the probabilities are rounded to f16 for the products (within f16
 * rounding of cuda_attention, not bitwise). The cluster size follows ntok, so like
 * cuda_attention outside deterministic mode a token's result may differ in the last bits
 * between batch sizes; for a given ntok it is fixed. dk == dv, 64 or 128, at most 16 query
 * heads per K/V head (cuda_attention_dec_ok); otherwise -EOPNOTSUPP. Ignores
 * `deterministic` (callers use cuda_attention for that). */
int cuda_attention_dec(const struct cuda_attn_args *a, cudaStream_t stream);
int cuda_attention_dec_ok(int dk, int dv, int n_head, int n_head_kv);
