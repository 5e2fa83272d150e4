/* ecu.h — the CUDA backend as the rest of the engine sees it (plain C; the CUDA types stay
 * inside engine/cuda). model.c streams the GGUF data section through it onto the GPU, sched.c
 * runs steps through it: a forward pass over a batch and the sampling of every row that asks
 * for a token, on the GPU, with only token ids coming back. Functions return 0 or a negative
 * errno with a reason in err; a CUDA failure gives -EIO and names the failing call. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "sl.h"

#ifdef __cplusplus
extern "C" {
#endif

struct engine_model;
struct ecu_model;
struct ecu_ctx;

/* Is GPU `device` usable by this build (present, driver new enough, compute capability
 * 9.0 or newer)? Fills info; -ENODEV with the reason when not. */
int ecu_probe(int device, struct engine_gpu_info *info, struct sl_error *err);

/* Can this model run on the CUDA backend? -EOPNOTSUPP naming the first tensor whose type or
 * shape it cannot take. Needs only the model's metadata and tensor views (no data). */
int ecu_model_supported(const struct engine_model *m, struct sl_error *err);

/* Allocates device memory for every weight (-ENOMEM stating what was needed and what was
 * free) and prepares the upload. The data then arrives through ecu_model_upload() pieces
 * while the storage reader streams the file, and ecu_model_finish() completes it. */
int ecu_model_create(const struct engine_model *m, int device, struct ecu_model **out,
                     struct sl_error *err);
void ecu_model_free(struct ecu_model *em); /* NULL is a no-op */
/* The storage reader's staging hooks (hooks.user = em). */
void ecu_model_staging_hooks(struct ecu_model *em, struct storage_staging_hooks *h);
/* A piece of the data section (data_off from its start) lying in staging buffer `buf`:
 * copies start asynchronously; the buffer is released through the reuse hook. */
int ecu_model_upload(struct ecu_model *em, uint64_t data_off, const void *data, size_t len,
                     int buf);
/* Waits for the copies, uploads the small f32 tensors (norms, biases, rope factors) from
 * the host model, and checks that every byte of every weight arrived. */
int ecu_model_finish(struct ecu_model *em, const struct engine_model *m, struct sl_error *err);
void ecu_model_info(const struct ecu_model *em, struct engine_gpu_info *info);
/* What the last failed upload call hit ("" when none). */
const char *ecu_model_last_error(const struct ecu_model *em);

/* ecu_ctx_opts.pdl bits */
#define ECU_PDL_LAYER 1 /* a layer's GEMVs, norms and activation (the output GEMV too) */
#define ECU_PDL_ATTN 2  /* Q/K/V post-processing and attention */
#define ECU_PDL_IO 4    /* input staging, embedding, row gather, final norm, soft-cap, sampling */
/* one-token steps use none of the above, only these: */
#define ECU_PDL_NORM1 8  /* the layers' RMSNorms */
#define ECU_PDL_ATTN1 16 /* attention */
#define ECU_PDL_IO1 32   /* as ECU_PDL_IO */
/* steps of 2..16 tokens: cuda_mma_gemv's products too (with ECU_PDL_LAYER) */
#define ECU_PDL_MMA 64

struct ecu_ctx_opts {
        uint32_t max_seqs;        /* sequences in the KV cache at once */
        uint32_t max_tokens;      /* tokens per step */
        uint32_t max_rows;        /* sampled rows per step; 0 = max_seqs (one per sequence) */
        uint32_t block_size;      /* KV tokens per block */
        uint32_t max_blocks_per_seq;
        uint32_t n_blocks;        /* KV pool blocks; 0: kv_fraction of free memory */
        double kv_fraction;       /* of the memory free after weights and activations */
        uint32_t max_hist;        /* penalty-window ids per step, all rows together */
        bool no_graphs;           /* decode eagerly (for tests: graph == eager) */
        int pdl;                  /* which kernels of a step go with programmatic dependent
                                   * launch (common.cuh): ECU_PDL_* bits, 0 none */
        bool no_fused_epilogues;  /* one-token steps: Q/K/V post-processing and the gated
                                   * activation in kernels of their own, not as epilogues of
                                   * the products (the same bits either way; for tests) */
        bool no_tc_attention;     /* prefill chunks' attention on the CUDA cores
                                   * (cuda_attention), not the tensor cores
                                   * (cuda_attention_tc): for tests and measurements */
        bool no_tc_decode;        /* decode attention (the tokens outside prefill runs) on
                                   * the CUDA cores (cuda_attention), not the tensor cores
                                   * (cuda_attention_dec): for tests and measurements */
        bool no_mma_products;     /* products of 2..16 tokens through cuBLASLt (cuda_gemm),
                                   * not cuda_mma_gemv: for tests and measurements */
        bool batch_invariant;     /* a token's result never depends on the rest of its batch:
                                   * every matrix product through one fixed cuBLASLt
                                   * algorithm, attention in one fixed configuration */
        uint32_t gemv_max_tokens; /* the GEMV for steps of up to this many tokens (capped at
                                   * CUDA_GEMV_MAX_TOKENS and max_tokens), cuBLASLt above;
                                   * 0: chosen by timing both at start (tune_gemv) */
};

struct ecu_ctx_info {
        uint32_t n_blocks;
        uint64_t kv_bytes;
        uint64_t act_bytes;
        uint32_t n_graphs;        /* decode buckets captured */
        uint32_t buckets[16];
        uint32_t gemv_max_tokens; /* largest batch that uses the GEMV (above: cuBLASLt) */
        uint64_t capture_ns;
};

int ecu_ctx_create(const struct engine_model *m, const struct ecu_ctx_opts *o,
                   struct ecu_ctx **out, struct sl_error *err);
void ecu_ctx_free(struct ecu_ctx *c);
void ecu_ctx_get_info(const struct ecu_ctx *c, struct ecu_ctx_info *out);

/* One row to sample: the request's parameters, how many tokens it drew before (the RNG
 * counter), and its penalty window (oldest first). With hist_prev the window has one more
 * id at its end: the one the previous step sampled for its row prev_row (not yet known to
 * the host when this step is launched). */
struct ecu_sample_row {
        const struct engine_sampling *s;
        uint64_t step;
        const int32_t *hist;
        uint32_t hist_len;
        bool hist_prev;
        uint32_t prev_row;
};

/* Ids of batch positions [at, at + n) that the GPU reads itself from src, memory that
 * ecu_host_alloc() gave: the host does not copy them into the step's inputs. */
struct ecu_src_chunk {
        const int32_t *src;
        uint32_t at, n;
};

struct ecu_step_args {
        const struct engine_batch *b;  /* same contract as engine_forward; K/V of every token
                                        * written at (seq, pos); the kv tables already reserved */
        const int32_t *prev_row;       /* [n_tokens] or NULL: >= 0 means the token is the id the
                                        * previous step sampled for that row (b->token ignored) */
        const struct ecu_src_chunk *chunks; /* in batch order, not overlapping; may be NULL */
        uint32_t n_chunks;
        const struct ecu_sample_row *rows;  /* one per token whose logits flag is set, in order */
        uint32_t n_rows;
        float *logits;                 /* optional (forces an eager step): the n_rows × n_vocab
                                        * logits before sampling, copied back (for tests) */
};

struct ecu_step_stats {
        bool graph;               /* replayed a captured decode graph */
        uint32_t bucket;          /* its batch size (padded) */
        uint32_t launches;        /* kernel launches enqueued by the host for this step */
        uint64_t gpu_ns;          /* device time between the step's first and last event */
};

/* Enqueues a step (the forward pass and the sampling of every row) and returns without
 * waiting: the host can prepare the next step while this one runs. At most two steps are in
 * flight; ecu_step_wait() takes them in order. Returns 0 or a negative errno (-EBUSY with
 * two in flight). */
int ecu_step_launch(struct ecu_ctx *c, const struct engine_kv *kv, const struct ecu_step_args *a,
                    struct sl_error *err);
/* Waits for the oldest step in flight; out_ids[n_rows] gets its sampled ids, in row order.
 * Returns n_rows, or a negative errno (-EIO: a CUDA error; the context may be broken). */
int ecu_step_wait(struct ecu_ctx *c, int32_t *out_ids, struct ecu_step_stats *st, struct sl_error *err);
/* Launch and wait: one synchronous step with neither previous-row tokens nor chunks. */
int ecu_step(struct ecu_ctx *c, const struct engine_kv *kv, const struct engine_batch *b,
             const struct ecu_sample_row *rows, uint32_t n_rows, int32_t *out_ids, float *logits,
             struct ecu_step_stats *st, struct sl_error *err);

/* Pinned host memory mapped into the GPU's address space at the same address (unified
 * addressing), for buffers the GPU reads in place: request rings, the engine's token
 * arrays. NULL when there is no usable GPU or the mapping is not at the same address. */
void *ecu_host_alloc(size_t n);
void ecu_host_free(void *p);
/* Page-locks and maps [p, p + n) for the model's GPU (cudaHostRegister, mapped, portable). */
int ecu_host_register(struct ecu_model *em, void *p, size_t n, void **dev_ptr, struct sl_error *err);
void ecu_host_unregister(struct ecu_model *em, void *p);
/* Is p inside memory that ecu_host_alloc() gave (and so readable by the GPU)? */
bool ecu_host_mapped(const void *p);

/* The device's streaming read bandwidth (GB/s, 1e9 bytes), measured on a buffer well past
 * the L2 cache: the roofline's denominator. */
int ecu_measure_bandwidth(double *read_gbs, struct sl_error *err);

/* True once a CUDA error left the context unusable (the process should exit). */
bool ecu_ctx_broken(const struct ecu_ctx *c);

#ifdef __cplusplus
}
#endif
