/* engine.h — sluice's inference engine: model (from GGUF), tokenizer, sampler, a KV cache
 * kept in fixed-size blocks, and the CPU backend's batched forward pass. The scheduler of
 * the serving layer drives it through engine_forward() over a batch of tokens that may
 * belong to different sequences at different positions. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl.h"
#include "storage.h"

/* ---- model ---- */

enum engine_arch { ENGINE_ARCH_LLAMA, ENGINE_ARCH_QWEN2, ENGINE_ARCH_GEMMA3 };

enum engine_rope_type { ENGINE_ROPE_NORM, ENGINE_ROPE_NEOX };

struct engine_hparams {
        enum engine_arch arch;
        char arch_name[32];
        char name[96];                 /* general.name, may be empty */
        uint32_t n_vocab;
        uint32_t n_ctx_train;
        uint32_t n_embd;
        uint32_t n_layer;
        uint32_t n_head;
        uint32_t n_head_kv;
        uint32_t head_dim_k;           /* attention.key_length (default n_embd / n_head) */
        uint32_t head_dim_v;
        uint32_t n_ff;
        float norm_eps;
        enum engine_rope_type rope_type;
        uint32_t rope_dim;             /* dims rotated per head */
        float rope_freq_base;
        float rope_freq_base_swa;      /* gemma3 local layers */
        float rope_freq_scale;         /* 1 / linear scaling factor */
        uint32_t sliding_window;       /* 0 = none */
        uint32_t swa_pattern;          /* every swa_pattern-th layer is global (gemma3: 6) */
        float attn_scale;              /* multiplier on q·k */
        float embd_scale;              /* multiplier on token embeddings (gemma3: sqrt(n_embd)) */
        bool tied_output;              /* output projection is token_embd */
        uint64_t n_params;
        uint64_t weight_bytes;
};

struct engine_load_progress {
        uint64_t done;
        uint64_t total;
};
typedef void (*engine_progress_fn)(void *user, const struct engine_load_progress *p);

/* Where the forward pass runs. CPU is the zero value, so callers that drive engine_forward()
 * themselves (sluice-run, sluice-probe) get a model the CPU pass can use. AUTO takes CUDA
 * when this build has it, a usable GPU is present and the model's tensor types are
 * supported there; otherwise the CPU, and engine_model_backend_reason() says why. A model on
 * the GPU is driven only through the scheduler (engine_sched_*). */
enum engine_backend { ENGINE_BACKEND_CPU = 0, ENGINE_BACKEND_AUTO = 1, ENGINE_BACKEND_CUDA = 2 };

struct engine_load_opts {
        engine_progress_fn progress; /* may be NULL; called from the loading thread */
        void *progress_user;
        struct storage_reader_opts reader;
        enum engine_backend backend;
        int cuda_device;             /* GPU index for the CUDA backend */
};

struct engine_gpu_info {
        char name[96];
        int device;
        int cc_major, cc_minor;
        int n_sm;
        uint64_t mem_total;
        uint64_t mem_free;           /* at probe (or after the weights, once loaded) */
        uint64_t weight_bytes;       /* device memory the weights take */
        uint64_t upload_ns;          /* disk to GPU, wall time */
};

struct engine_load_stats {
        uint64_t bytes;      /* tensor bytes read */
        uint64_t ns;         /* wall time of the data read */
        bool direct_io;      /* O_DIRECT was used */
};

struct engine_model;

int engine_model_load(const char *path, const struct engine_load_opts *opts,
                      struct engine_model **out, struct sl_error *err);
void engine_model_free(struct engine_model *m); /* NULL is a no-op */
const struct engine_hparams *engine_model_hparams(const struct engine_model *m);
const struct engine_load_stats *engine_model_load_stats(const struct engine_model *m);
const struct engine_tokenizer *engine_model_tokenizer(const struct engine_model *m);
enum engine_backend engine_model_backend(const struct engine_model *m); /* CPU or CUDA */
const char *engine_backend_name(enum engine_backend b);                /* "auto", "cpu", "cuda" */
/* One line: the backend chosen and why (the GPU, or why not the GPU). */
const char *engine_model_backend_reason(const struct engine_model *m);
/* -ENODEV when the model is not on a GPU. */
int engine_model_gpu_info(const struct engine_model *m, struct engine_gpu_info *out);
/* Host memory that other components fill and the GPU may read in place (a NIC's receive
 * buffers): page-locks [p, p + n) and maps it into the address space of the model's GPU
 * (cudaHostRegister, mapped, portable); *dev_ptr gets the GPU's address of p. -EOPNOTSUPP
 * when the model is not on a GPU, -EIO with the reason when CUDA refuses. */
int engine_host_register(const struct engine_model *m, void *p, size_t n, void **dev_ptr, struct sl_error *err);
void engine_host_unregister(const struct engine_model *m, void *p);
/* Is a usable GPU present for this build? (-ENODEV with the reason when not.) */
int engine_gpu_probe(int device, struct engine_gpu_info *out, struct sl_error *err);

/* ---- tokenizer (SentencePiece-style "llama" and byte-level BPE "gpt2") ---- */

struct engine_tokenizer;

enum engine_token_attr {
        ENGINE_TOKEN_NORMAL = 1,
        ENGINE_TOKEN_UNKNOWN = 2,
        ENGINE_TOKEN_CONTROL = 3,
        ENGINE_TOKEN_USER_DEFINED = 4,
        ENGINE_TOKEN_UNUSED = 5,
        ENGINE_TOKEN_BYTE = 6,
};

int engine_tokenizer_create(const struct gguf_file *g, struct engine_tokenizer **out,
                            struct sl_error *err);
void engine_tokenizer_free(struct engine_tokenizer *t); /* NULL is a no-op */
uint32_t engine_tokenizer_n_vocab(const struct engine_tokenizer *t);
int32_t engine_token_bos(const struct engine_tokenizer *t); /* -1 when none */
int32_t engine_token_eos(const struct engine_tokenizer *t);
bool engine_token_is_eog(const struct engine_tokenizer *t, int32_t id); /* EOS, EOT, ... */
bool engine_tokenizer_add_bos(const struct engine_tokenizer *t);

/* Tokenizes len bytes of UTF-8 text. add_special: BOS/EOS as the model's metadata says.
 * parse_special: text of control/user-defined tokens (e.g. "<start_of_turn>") maps to
 * those tokens. Returns the number of ids written; when more than max_ids are needed,
 * returns -ENOSPC and sets *needed (if not NULL) to the count required. */
int engine_tokenize(const struct engine_tokenizer *t, const char *text, size_t len,
                    bool add_special, bool parse_special, int32_t *ids, size_t max_ids,
                    size_t *needed);

/* The bytes a token stands for in decoded text (byte tokens give their byte, "▁" becomes a
 * space, BPE byte-unicode is undone). Control tokens give "" unless render_special.
 * Returns the byte count (possibly > len, in which case nothing was written), or -EINVAL. */
int engine_token_to_piece(const struct engine_tokenizer *t, int32_t id, bool render_special,
                          char *buf, size_t len);

/* Streaming detokenizer: emits only complete UTF-8 sequences; bytes of a character that
 * spans tokens are held until complete. Invalid sequences come out as U+FFFD. Also strips
 * the SentencePiece leading space of the first piece when the model adds one. */
struct engine_detok {
        uint8_t pending[8];
        uint8_t n_pending;
        bool first;
};
void engine_detok_init(struct engine_detok *d);
/* Appends the text of id to out (capacity cap); returns bytes written or -ENOSPC. */
int engine_detok_push(const struct engine_tokenizer *t, struct engine_detok *d, int32_t id,
                      char *out, size_t cap);
/* Flushes held bytes (as U+FFFD) at end of stream. */
int engine_detok_flush(struct engine_detok *d, char *out, size_t cap);

/* ---- sampler ---- */

struct engine_sampling {
        float temperature;        /* <= 0: greedy */
        int32_t top_k;            /* <= 0: off */
        float top_p;              /* >= 1: off */
        float min_p;              /* <= 0: off */
        float repeat_penalty;     /* 1: off */
        float presence_penalty;   /* 0: off */
        float frequency_penalty;  /* 0: off */
        int32_t penalty_last_n;   /* tokens considered for penalties; 0: off, -1: all seen */
        uint64_t seed;
};

void engine_sampling_defaults(struct engine_sampling *s);
/* -EINVAL with a reason for values out of range (negative top_p, NaN temperature, ...). */
int engine_sampling_validate(const struct engine_sampling *s, struct sl_error *err);

struct engine_sampler;
/* All memory (n_vocab candidates, penalty history) is allocated here, not per token. */
int engine_sampler_create(const struct engine_sampling *s, uint32_t n_vocab,
                          struct engine_sampler **out, struct sl_error *err);
void engine_sampler_free(struct engine_sampler *s);
void engine_sampler_reset(struct engine_sampler *s); /* back to the seed, history cleared */
/* Records a token (prompt or generated) for the penalties. */
void engine_sampler_accept(struct engine_sampler *s, int32_t id);
/* Picks the next token from n_vocab logits (not modified). */
int32_t engine_sampler_sample(struct engine_sampler *s, const float *logits);

/* ---- KV cache in fixed-size blocks ---- */

struct engine_kv_opts {
        uint32_t block_size; /* tokens per block; 0 = 16 */
        uint32_t n_blocks;   /* pool size */
        uint32_t max_seqs;   /* sequence slots */
        uint32_t max_seq_len;/* positions per sequence; 0 = the model's n_ctx_train */
        bool tables_only;    /* block tables and free list only: the K/V storage lives on a GPU */
};

struct engine_kv;

int engine_kv_create(const struct engine_model *m, const struct engine_kv_opts *opts,
                     struct engine_kv **out, struct sl_error *err);
void engine_kv_free(struct engine_kv *kv);
/* A free sequence slot (>= 0), or -ENOSPC. */
int engine_kv_seq_open(struct engine_kv *kv);
/* Makes sure positions [0, n_pos) of seq have blocks; -ENOSPC leaves seq unchanged. */
int engine_kv_seq_reserve(struct engine_kv *kv, int seq, uint32_t n_pos);
/* Returns the sequence's blocks to the pool at once. */
void engine_kv_seq_close(struct engine_kv *kv, int seq);
uint32_t engine_kv_blocks_free(const struct engine_kv *kv);
uint32_t engine_kv_blocks_total(const struct engine_kv *kv);
uint32_t engine_kv_block_size(const struct engine_kv *kv);

/* ---- forward pass (CPU backend) ---- */

struct engine_batch {
        uint32_t n_tokens;
        const int32_t *token;   /* [n_tokens] */
        const int32_t *pos;     /* [n_tokens] position of each token in its sequence */
        const int32_t *seq;     /* [n_tokens] KV sequence slot */
        const uint8_t *logits;  /* [n_tokens] nonzero: produce logits for this token */
};

struct engine_ctx;

/* n_threads: 0 = online CPUs. max_tokens: largest batch engine_forward() will get. */
int engine_ctx_create(const struct engine_model *m, uint32_t n_threads, uint32_t max_tokens,
                      struct engine_ctx **out, struct sl_error *err);
void engine_ctx_free(struct engine_ctx *c);

/* Runs the batch: writes K/V of every token at (seq, pos) and, for each token whose logits
 * flag is set, n_vocab floats to out (rows in batch order). Tokens of one sequence in a
 * batch must have increasing positions, and positions before them must already be in the
 * cache. A token's result does not depend on the other tokens of the batch.
 * Returns the number of logit rows written, or a negative errno with a reason. */
int engine_forward(struct engine_ctx *c, struct engine_kv *kv, const struct engine_batch *b,
                   float *out, struct sl_error *err);

/* ---- scheduler (continuous batching) ----
 * One engine thread owns a scheduler: it submits requests, cancels them and calls
 * engine_sched_step() in a loop; every step runs ONE engine_forward() over a batch in which
 * each running decode contributes one token and prefills contribute chunks of their prompt
 * within a per-step token budget. Events (token, done) are delivered through callbacks
 * during step/cancel, on the calling thread. All memory (request slots, prompt/token
 * storage, KV pool, batch arrays, logits) is allocated at create; the only allocation after
 * that is each request's sampler, created at submit (its penalty window is per request).
 * Only engine_sched_stats() may be called from another thread. */

#define ENGINE_PDL_DEFAULT 15          /* engine_sched_opts.pdl 0 (docs/performance.md) */
#define ENGINE_SCHED_MAX_STOP 8u      /* stop strings per request (= DP_MAX_STOP) */
#define ENGINE_SCHED_MAX_STOP_LEN 64u /* bytes per stop string (= DP_MAX_STOP_LEN) */

struct engine_sched_opts {
        uint32_t n_threads;         /* engine_forward threads; 0 = online CPUs */
        uint32_t max_running;       /* sequences in the KV cache at once; 0 = 16 */
        uint32_t max_queued;        /* waiting requests; past it submit gives -EBUSY; 0 = 64 */
        uint32_t token_budget;      /* tokens per engine_forward step; 0 = 256 (>= max_running) */
        uint32_t prefill_chunk;     /* prompt tokens one request adds per step; 0 = 128 */
        uint32_t kv_block_size;     /* tokens per KV block; 0 = 16 */
        uint32_t kv_blocks;         /* KV pool size in blocks; 0: from kv_bytes */
        uint64_t kv_bytes;          /* KV pool size in bytes when kv_blocks is 0; 0: enough for
                                     * max_running full contexts */
        uint32_t max_ctx;           /* positions per sequence (prompt + generated); 0 = min(4096,
                                     * n_ctx_train); also capped by the pool's size */
        uint32_t max_prompt_tokens; /* 0 = max_ctx - 1 */
        uint32_t max_new_tokens;    /* cap and default for max_tokens; 0 = max_ctx - 1 */
        /* CUDA backend only */
        double kv_gpu_fraction;     /* of GPU memory free after weights, for the KV pool when
                                     * kv_blocks and kv_bytes are 0; 0 = 0.9 */
        bool no_graphs;             /* decode without CUDA Graphs */
        bool batch_invariant;       /* a request's tokens do not depend on what shares its
                                     * batch (fixed kernels for every batch size; slower) */
        int pdl;                    /* programmatic dependent launch: kernels that may start
                                     * while the one before them finishes (weights stream
                                     * meanwhile). 0: ENGINE_PDL_DEFAULT; -1 none; else a mask
                                     * of cuda/ecu.h's ECU_PDL_*: 1 layer, 2 attention, 4 I/O
                                     * for steps of two tokens or more; 8 RMSNorms, 16
                                     * attention, 32 I/O for one-token steps; 64 the wgmma
                                     * products of 2-16-token steps too */
        bool no_fused_epilogues;    /* one-token steps: Q/K/V post-processing and the gated
                                     * activation as kernels of their own (the same tokens;
                                     * for tests and measurements) */
        bool no_tc_attention;       /* prefill attention on the CUDA cores, not the tensor
                                     * cores (results within f16 rounding of each other; for
                                     * tests and measurements) */
        bool no_tc_decode;          /* decode attention on the CUDA cores, not the tensor
                                     * cores (results within f16 rounding of each other; for
                                     * tests and measurements) */
        bool no_mma_products;       /* CUDA: products of 2-16 tokens through cuBLASLt, not
                                     * cuda_mma_gemv (results within f32 rounding of each
                                     * other; for tests and measurements) */
        bool no_overlap;            /* wait for each step before building the next (default:
                                     * step n+1 is launched while step n runs) */
        uint32_t gemv_max_tokens;   /* CUDA: steps of up to this many tokens (at most 16) go
                                     * through the GEMV, larger ones through cuBLASLt. 0: the
                                     * largest count at which the GEMV measured faster at
                                     * start, so two engines may choose differently (and
                                     * round differently); tests comparing engines fix it */
};

struct engine_request {
        uint64_t tag;               /* caller's id, echoed in events; unique among live requests */
        const int32_t *prompt;      /* token ids, copied at submit */
        uint32_t n_prompt;
        /* Optional. When set, prompt[0, n_prompt) stays valid and unchanged where it lies until
         * the engine calls prompt_release(prompt_ctx): exactly once, on the thread that calls
         * the engine_sched_* functions, never inside engine_sched_submit, and only when
         * submit succeeded. Meanwhile the prefill steps read the ids there (the GPU too, when
         * the memory is mapped for it: engine_host_register, ecu_host_alloc) rather than from
         * the engine's copy. The hold ends when the prompt has been read, or at the end of an
         * engine_sched_step call that leaves the request in the queue (or preempted), or when
         * the request ends; the release comes once the steps that read it have completed, and
         * engine_sched_free releases what is still held. */
        void (*prompt_release)(void *ctx);
        void *prompt_ctx;
        struct engine_sampling sampling;
        uint32_t max_tokens;        /* 0 = opts.max_new_tokens */
        uint32_t n_stop;            /* <= ENGINE_SCHED_MAX_STOP */
        const char *stop[ENGINE_SCHED_MAX_STOP];      /* copied at submit */
        uint32_t stop_len[ENGINE_SCHED_MAX_STOP];     /* 1..ENGINE_SCHED_MAX_STOP_LEN */
        uint64_t deadline_ns;       /* absolute CLOCK_MONOTONIC (sl_now_ns()); 0 = none */
        uint64_t t_receipt_ns;      /* when the request arrived (for queue/ttft/total); 0 = now */
        bool ignore_eos;            /* generate through end-of-generation tokens (benchmarks) */
};

/* Values 1..6 are those of enum dp_finish, so the serving layer can pass them through. */
enum engine_finish {
        ENGINE_FINISH_EOS = 1,       /* end-of-generation token (not emitted, not counted) */
        ENGINE_FINISH_LENGTH = 2,    /* max_tokens generated */
        ENGINE_FINISH_STOP = 3,      /* a stop string matched (stop_index); its text not emitted */
        ENGINE_FINISH_CANCELLED = 4, /* engine_sched_cancel() */
        ENGINE_FINISH_DEADLINE = 5,  /* deadline_ns passed (checked at the start of each step) */
        ENGINE_FINISH_CONTEXT = 6,   /* max_ctx positions used */
        ENGINE_FINISH_ERROR = 7,     /* engine failure: error/msg say why (DP_ERR_INTERNAL) */
};

struct engine_sched_done {
        enum engine_finish reason;
        int stop_index;             /* ENGINE_FINISH_STOP: which stop string; else -1 */
        int error;                  /* ENGINE_FINISH_ERROR: negative errno; else 0 */
        const char *msg;            /* ENGINE_FINISH_ERROR: reason; else "" */
        const char *text;           /* final text to deliver before DONE: text held back as a
                                     * possible stop-string prefix and the detokenizer's flush */
        uint32_t text_len;
        uint32_t prompt_tokens;
        uint32_t generated_tokens;  /* tokens emitted through on_token */
        uint32_t preemptions;       /* times its KV was dropped and recomputed */
        uint64_t queue_ns;          /* receipt to first admission (0 if never admitted) */
        uint64_t ttft_ns;           /* receipt to first generated token (0 if none) */
        uint64_t total_ns;          /* receipt to done */
};

struct engine_sched_events {
        /* A generated token and the complete UTF-8 text it released (possibly empty: bytes
         * of a split character, or text held back as a possible stop-string prefix). */
        void (*on_token)(void *user, uint64_t tag, int32_t id, const char *text, uint32_t len);
        /* Exactly once per accepted request; its slot and KV blocks are already free. */
        void (*on_done)(void *user, uint64_t tag, const struct engine_sched_done *d);
};

struct engine_sched_stats {
        uint32_t queued;
        uint32_t running;
        uint32_t kv_blocks_used;
        uint32_t kv_blocks_total;
        uint32_t max_queued;
        uint32_t max_running;
        uint64_t steps;             /* steps completed (batches run and sampled) */
        uint32_t prefill_last;      /* prompt tokens in the last completed step (0: decode only) */
        uint64_t tokens_computed;   /* batch tokens (prefill + decode) */
        uint64_t prompt_tokens;     /* prefill tokens computed, recomputation included */
        uint64_t prompt_tokens_in_place; /* of those, read where the caller's prompt lies
                                          * (engine_request.prompt_release), not from the
                                          * engine's copy */
        uint64_t generated_tokens;  /* tokens emitted */
        uint64_t submitted;
        uint64_t rejected_busy;
        uint64_t finished[8];       /* by enum engine_finish (index 1..7) */
        uint64_t preemptions;
        uint64_t step_ns_last;      /* wall time of the last engine_sched_step() call */
        /* CUDA backend */
        uint64_t graph_steps;       /* decode steps replayed from a captured graph */
        uint64_t eager_steps;
        uint32_t launches_last;     /* kernel launches the host enqueued for the last completed step */
        uint64_t gpu_errors;        /* steps failed by a CUDA error */
        uint64_t gpu_ns_last;       /* device time of the last completed step (first to last event) */
};

struct engine_sched;

int engine_sched_create(const struct engine_model *m, const struct engine_sched_opts *opts,
                        struct engine_sched **out, struct sl_error *err);
void engine_sched_free(struct engine_sched *s); /* NULL is a no-op; no events are emitted */
/* The limits actually in force (defaults filled in). */
void engine_sched_opts_get(const struct engine_sched *s, struct engine_sched_opts *out);
/* Queues a request. Returns a handle >= 0 (the slot), or -EBUSY (queue full; *retry_ms, if
 * not NULL, gets a rough wait), -EEXIST (tag live), -EINVAL (bad sampling, empty prompt,
 * prompt over max_prompt_tokens, max_tokens over max_new_tokens, prompt + max_tokens over
 * max_ctx, token id outside the vocabulary, bad stop strings), -ENOMEM (sampler). */
int engine_sched_submit(struct engine_sched *s, const struct engine_request *req, uint32_t *retry_ms,
                        struct sl_error *err);
/* Ends a live request now: its KV blocks return to the pool and on_done (CANCELLED) is
 * called before this returns. 0, or -ENOENT when no live request has that tag. */
int engine_sched_cancel(struct engine_sched *s, uint64_t tag, const struct engine_sched_events *ev,
                        void *user);
/* One round: expire deadlines, admit queued requests (FIFO) while a sequence slot and KV
 * blocks for their prompt are free, build one batch, run engine_forward, sample, emit.
 * With the CUDA backend (unless no_overlap) a round launches the next batch first and then
 * completes the one launched in the round before, so one step is in flight between rounds:
 * events for a step arrive in the round after its launch. The tokens are the same either
 * way.
 * When a running decode needs a block and none is free, the most recently admitted running
 * request is preempted: its KV is dropped and it goes back to the queue head, to be
 * recomputed (prompt + tokens so far) later, with the same output. Returns the number of
 * tokens computed (0: nothing to do), or a negative errno when engine_forward failed (the
 * requests of that batch then got on_done with ENGINE_FINISH_ERROR). */
int engine_sched_step(struct engine_sched *s, const struct engine_sched_events *ev, void *user,
                      struct sl_error *err);
/* Requests queued or running. */
uint32_t engine_sched_live(const struct engine_sched *s);
/* True once the backend failed in a way that needs a restart (a CUDA error left the GPU
 * context unusable). Every request in flight has already got its on_done (ERROR). */
bool engine_sched_broken(const struct engine_sched *s);
enum engine_backend engine_sched_backend(const struct engine_sched *s);
/* Safe from any thread (relaxed atomic reads of a copy the engine thread updates). */
void engine_sched_stats(const struct engine_sched *s, struct engine_sched_stats *out);
