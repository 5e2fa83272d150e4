/* model.h (engine-internal) — a loaded model: hyperparameters, the tokenizer, one aligned
 * arena holding the whole GGUF data section, and per-layer views of the weight tensors.
 * Also the KV cache's internals, which forward.c reads and writes directly. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"

/* A view of one tensor in the arena. Matrices are ne[1] rows of ne[0] elements, row_size
 * bytes apart. Small 1-D tensors (norms, biases, rope factors) are also kept dequantized
 * in f32 so the forward pass does not care about their stored type. */
struct engine_tensor {
        const void *data;   /* NULL when absent */
        uint32_t type;      /* enum ggml_type */
        uint64_t ne[2];
        size_t row_size;
        const float *f32;   /* 1-D tensors only: dequantized copy */
};

struct engine_layer {
        struct engine_tensor attn_norm;
        struct engine_tensor wq, wk, wv, wo;
        struct engine_tensor bq, bk, bv;              /* qwen2 */
        struct engine_tensor q_norm, k_norm;          /* gemma3 */
        struct engine_tensor post_attn_norm;          /* gemma3 */
        struct engine_tensor ffn_norm;
        struct engine_tensor gate, up, down;
        struct engine_tensor post_ffn_norm;           /* gemma3 */
        bool swa;                                     /* sliding-window layer */
        float rope_base;
        float rope_scale;
};

struct engine_model {
        struct engine_hparams hp;
        struct engine_load_stats stats;
        struct gguf_file *gguf;        /* kept: the tokenizer may point into its metadata */
        struct engine_tokenizer *tok;
        void *arena;                   /* data section, 4096-aligned */
        size_t arena_size;
        float *f32_pool;               /* dequantized 1-D tensors */
        struct engine_tensor tok_embd, output_norm, output, rope_freqs;
        struct engine_layer *layers;
        float final_softcap;           /* 0: none */
        float q_prescale;              /* gemma3: q scaled before q·k; 1 otherwise */
        float kq_scale;                /* applied to q·k */
        uint16_t *gelu_f16;            /* gemma3: ggml's tanh-GELU table indexed by f16 bits */
        enum engine_backend backend;   /* CPU or CUDA */
        char backend_reason[256];
        bool arena_mapped;             /* CUDA: the arena is a sparse mapping; only the 1-D
                                        * tensors' bytes are on the host, the rest on the GPU */
        struct ecu_model *cuda;
};

/* ---- KV cache internals ---- */

struct engine_kv {
        uint32_t n_layer;
        uint32_t block_size;
        uint32_t n_blocks;
        uint32_t max_seqs;
        uint32_t max_seq_len;
        uint32_t max_blocks_per_seq;
        uint32_t kv_dim_k;             /* n_head_kv * head_dim_k */
        uint32_t kv_dim_v;
        size_t layer_stride_k;         /* f16 elements per layer in k */
        size_t layer_stride_v;
        uint16_t *k;                   /* [n_layer][n_blocks][block_size][kv_dim_k] f16 */
        uint16_t *v;                   /* [n_layer][n_blocks][block_size][kv_dim_v] f16 */
        uint32_t *free_list;           /* stack of free block ids */
        uint32_t n_free;
        int32_t *table;                /* [max_seqs][max_blocks_per_seq] block ids */
        uint32_t *seq_blocks;          /* blocks held per sequence */
        uint32_t *seq_len;             /* positions written per sequence */
        uint32_t *seq_next;            /* engine_forward's scratch: next position per sequence */
        bool *seq_open;
};

/* Row of K (or V) f16 values for (layer, seq, pos); pos must be reserved. */
static inline uint16_t *engine_kv_k_row(const struct engine_kv *kv, uint32_t il, int seq, uint32_t pos)
{
        const int32_t blk = kv->table[(size_t)seq * kv->max_blocks_per_seq + pos / kv->block_size];
        return kv->k + il * kv->layer_stride_k +
               ((size_t)blk * kv->block_size + pos % kv->block_size) * kv->kv_dim_k;
}

static inline uint16_t *engine_kv_v_row(const struct engine_kv *kv, uint32_t il, int seq, uint32_t pos)
{
        const int32_t blk = kv->table[(size_t)seq * kv->max_blocks_per_seq + pos / kv->block_size];
        return kv->v + il * kv->layer_stride_v +
               ((size_t)blk * kv->block_size + pos % kv->block_size) * kv->kv_dim_v;
}

/* ---- batches (shared by the CPU and CUDA backends) ---- */

/* Checks the batch against the cache before anything is computed (sequences open, ids in
 * the vocabulary, positions contiguous and in range) and reserves the blocks it needs; a
 * rejected batch changes nothing but block reservations of valid sequences. Leaves each
 * sequence's next position in kv->seq_next for engine_batch_commit(). */
int engine_batch_prepare(const struct engine_hparams *hp, uint32_t max_tokens, uint32_t max_ctx,
                         struct engine_kv *kv, const struct engine_batch *b, struct sl_error *err);
/* After the batch ran: the sequences' lengths advance. */
void engine_batch_commit(struct engine_kv *kv, const struct engine_batch *b);
