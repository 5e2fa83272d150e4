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

struct engine_load_opts {
        engine_progress_fn progress; /* may be NULL; called from the loading thread */
        void *progress_user;
        struct storage_reader_opts reader;
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
