/* model.c — engine_model_load: architecture and hyperparameters from GGUF metadata, the
 * exact tensor set of each architecture checked for name, shape and type, and the whole
 * data section streamed with io_uring into one 4096-aligned arena. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/mman.h>

#include "sluice_config.h"

#include "model.h"
#include "quant.h"
#if SLUICE_HAVE_CUDA
#include "cuda/ecu.h"
#endif

#define MAX_LAYERS 512
#define MAX_DIM (1u << 20)

/* ---- metadata helpers ---- */

static int key_u32(const struct gguf_file *g, const char *arch, const char *suffix, uint32_t *out,
                   bool required, uint32_t def, struct sl_error *err)
{
        char key[160];
        snprintf(key, sizeof(key), "%s.%s", arch, suffix);
        int r = gguf_get_u32(g, key, out, err);
        if (r == -ENOENT) {
                if (required)
                        return sl_errorf(err, -EINVAL, "missing metadata key %s", key);
                *out = def;
                return 0;
        }
        if (r < 0)
                return sl_error_prefix(err, r, "%s", key);
        return 0;
}

static int key_f32(const struct gguf_file *g, const char *arch, const char *suffix, float *out,
                   bool required, float def, struct sl_error *err)
{
        char key[160];
        snprintf(key, sizeof(key), "%s.%s", arch, suffix);
        int r = gguf_get_f32(g, key, out, err);
        if (r == -ENOENT) {
                if (required)
                        return sl_errorf(err, -EINVAL, "missing metadata key %s", key);
                *out = def;
                return 0;
        }
        if (r < 0)
                return sl_error_prefix(err, r, "%s", key);
        if (!isfinite(*out))
                return sl_errorf(err, -EINVAL, "%s is not finite", key);
        return 0;
}

static void copy_str(char *dst, size_t cap, struct gguf_str s)
{
        size_t n = s.len < cap - 1 ? (size_t)s.len : cap - 1;
        memcpy(dst, s.ptr, n);
        dst[n] = 0;
}

static int load_hparams(struct engine_model *m, struct sl_error *err)
{
        const struct gguf_file *g = m->gguf;
        struct engine_hparams *hp = &m->hp;
        struct gguf_str s;
        int r;

        r = gguf_get_str(g, "general.architecture", &s, err);
        if (r < 0)
                return r == -ENOENT ? sl_errorf(err, -EINVAL, "missing general.architecture")
                                    : sl_error_prefix(err, r, "general.architecture");
        copy_str(hp->arch_name, sizeof(hp->arch_name), s);
        if (gguf_str_eq(s, "llama"))
                hp->arch = ENGINE_ARCH_LLAMA;
        else if (gguf_str_eq(s, "qwen2"))
                hp->arch = ENGINE_ARCH_QWEN2;
        else if (gguf_str_eq(s, "gemma3"))
                hp->arch = ENGINE_ARCH_GEMMA3;
        else
                return sl_errorf(err, -ENOTSUP, "unsupported architecture '%.*s'",
                                 (int)SL_MIN(s.len, 64), s.ptr);
        if (gguf_get_str(g, "general.name", &s, NULL) == 0)
                copy_str(hp->name, sizeof(hp->name), s);

        const char *a = hp->arch_name;
        uint32_t n_expert = 0;
        if ((r = key_u32(g, a, "expert_count", &n_expert, false, 0, err)) < 0)
                return r;
        if (n_expert > 0)
                return sl_errorf(err, -ENOTSUP, "%s: mixture-of-experts models are not supported", a);

        if ((r = key_u32(g, a, "context_length", &hp->n_ctx_train, true, 0, err)) < 0 ||
            (r = key_u32(g, a, "embedding_length", &hp->n_embd, true, 0, err)) < 0 ||
            (r = key_u32(g, a, "block_count", &hp->n_layer, true, 0, err)) < 0 ||
            (r = key_u32(g, a, "feed_forward_length", &hp->n_ff, true, 0, err)) < 0 ||
            (r = key_u32(g, a, "attention.head_count", &hp->n_head, true, 0, err)) < 0)
                return r;
        if (hp->n_embd == 0 || hp->n_embd > MAX_DIM)
                return sl_errorf(err, -EINVAL, "embedding_length %u out of range", hp->n_embd);
        if (hp->n_layer == 0 || hp->n_layer > MAX_LAYERS)
                return sl_errorf(err, -EINVAL, "block_count %u out of range", hp->n_layer);
        if (hp->n_ff == 0 || hp->n_ff > MAX_DIM)
                return sl_errorf(err, -EINVAL, "feed_forward_length %u out of range", hp->n_ff);
        if (hp->n_head == 0 || hp->n_head > 4096)
                return sl_errorf(err, -EINVAL, "attention.head_count %u out of range", hp->n_head);
        if (hp->n_ctx_train == 0)
                return sl_errorf(err, -EINVAL, "context_length is 0");
        if ((r = key_u32(g, a, "attention.head_count_kv", &hp->n_head_kv, false, hp->n_head, err)) < 0)
                return r;
        if (hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv != 0)
                return sl_errorf(err, -EINVAL, "attention.head_count_kv %u does not divide head_count %u",
                                 hp->n_head_kv, hp->n_head);
        uint32_t def_head = hp->n_embd / hp->n_head;
        if ((r = key_u32(g, a, "attention.key_length", &hp->head_dim_k, false, def_head, err)) < 0 ||
            (r = key_u32(g, a, "attention.value_length", &hp->head_dim_v, false, def_head, err)) < 0)
                return r;
        if (hp->head_dim_k == 0 || hp->head_dim_v == 0 || hp->head_dim_k > 4096 || hp->head_dim_v > 4096 ||
            hp->head_dim_k % 2 != 0)
                return sl_errorf(err, -EINVAL, "head dimensions k=%u v=%u invalid", hp->head_dim_k,
                                 hp->head_dim_v);
        if (hp->n_embd % hp->n_head != 0 && def_head == hp->head_dim_k)
                return sl_errorf(err, -EINVAL, "embedding_length %u not divisible by head_count %u",
                                 hp->n_embd, hp->n_head);
        if ((r = key_f32(g, a, "attention.layer_norm_rms_epsilon", &hp->norm_eps, true, 0, err)) < 0)
                return r;
        if (!(hp->norm_eps > 0.0f) || hp->norm_eps > 1.0f)
                return sl_errorf(err, -EINVAL, "rms epsilon %g out of range", (double)hp->norm_eps);
        if ((r = key_u32(g, a, "rope.dimension_count", &hp->rope_dim, false, hp->head_dim_k, err)) < 0)
                return r;
        if (hp->rope_dim == 0 || hp->rope_dim % 2 != 0 || hp->rope_dim > hp->head_dim_k)
                return sl_errorf(err, -EINVAL, "rope.dimension_count %u invalid for head size %u",
                                 hp->rope_dim, hp->head_dim_k);
        if ((r = key_f32(g, a, "rope.freq_base", &hp->rope_freq_base, false, 10000.0f, err)) < 0)
                return r;
        if (!(hp->rope_freq_base > 0.0f))
                return sl_errorf(err, -EINVAL, "rope.freq_base %g must be > 0", (double)hp->rope_freq_base);

        /* Rope scaling: only linear (and none) is implemented; others would silently give
         * wrong numbers, so they are refused. */
        char key[160];
        snprintf(key, sizeof(key), "%s.rope.scaling.type", a);
        r = gguf_get_str(g, key, &s, err);
        if (r == 0 && !gguf_str_eq(s, "linear") && !gguf_str_eq(s, "none"))
                return sl_errorf(err, -ENOTSUP, "rope scaling type '%.*s' is not supported",
                                 (int)SL_MIN(s.len, 32), s.ptr);
        if (r < 0 && r != -ENOENT)
                return sl_error_prefix(err, r, "%s", key);
        float factor = 0.0f;
        if ((r = key_f32(g, a, "rope.scaling.factor", &factor, false, 0.0f, err)) < 0)
                return r;
        if (factor == 0.0f && (r = key_f32(g, a, "rope.scale_linear", &factor, false, 0.0f, err)) < 0)
                return r;
        if (factor < 0.0f)
                return sl_errorf(err, -EINVAL, "rope scaling factor %g must be > 0", (double)factor);
        hp->rope_freq_scale = factor == 0.0f ? 1.0f : 1.0f / factor;
        hp->rope_freq_base_swa = hp->rope_freq_base;

        /* Vocabulary size: the tokenizer's token list (llama.cpp sizes token_embd by it). */
        const struct gguf_array *toks;
        r = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, err);
        if (r == 0) {
                if (toks->n == 0 || toks->n > (1u << 24))
                        return sl_errorf(err, -EINVAL, "tokenizer.ggml.tokens has %llu entries",
                                         (unsigned long long)toks->n);
                hp->n_vocab = (uint32_t)toks->n;
        } else if (r == -ENOENT) {
                if ((r = key_u32(g, a, "vocab_size", &hp->n_vocab, true, 0, err)) < 0)
                        return r;
        } else {
                return sl_error_prefix(err, r, "tokenizer.ggml.tokens");
        }

        hp->embd_scale = 1.0f;
        hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim_k);
        m->q_prescale = 1.0f;
        m->kq_scale = hp->attn_scale;
        switch (hp->arch) {
        case ENGINE_ARCH_LLAMA:
                hp->rope_type = ENGINE_ROPE_NORM;
                break;
        case ENGINE_ARCH_QWEN2:
                hp->rope_type = ENGINE_ROPE_NEOX;
                break;
        case ENGINE_ARCH_GEMMA3:
                hp->rope_type = ENGINE_ROPE_NEOX;
                hp->embd_scale = sqrtf((float)hp->n_embd);
                if ((r = key_u32(g, a, "attention.sliding_window", &hp->sliding_window, false, 0, err)) < 0)
                        return r;
                if (hp->sliding_window > 0) {
                        hp->swa_pattern = 6;
                        hp->rope_freq_base_swa = 10000.0f;
                }
                /* llama.cpp: 27B (62 layers) scales by n_embd / n_head, the others by the head size. */
                if (hp->n_layer == 62)
                        hp->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
                /* gemma3 scales q before the product (llama.cpp's ggml_scale on Q), kq_scale 1. */
                m->q_prescale = hp->attn_scale;
                m->kq_scale = 1.0f;
                if ((r = key_f32(g, a, "final_logit_softcapping", &m->final_softcap, false, 0.0f, err)) < 0)
                        return r;
                if (m->final_softcap < 0.0f)
                        return sl_errorf(err, -EINVAL, "final_logit_softcapping must be >= 0");
                break;
        }
        return 0;
}

/* ---- tensors ---- */

struct binder {
        struct engine_model *m;
        size_t f32_used;
        bool count_only;
        struct sl_error *err;
};

/* Binds tensor `name` with ne = {ne0} (ne1 == 0) or {ne0, ne1}. Missing optional tensors
 * leave t->data NULL and return 0. */
static int bind(struct binder *b, struct engine_tensor *t, const char *name, uint64_t ne0, uint64_t ne1,
                bool optional)
{
        const struct gguf_tensor *gt = gguf_find_tensor(b->m->gguf, name);
        memset(t, 0, sizeof(*t));
        if (!gt) {
                if (optional)
                        return 0;
                return sl_errorf(b->err, -EINVAL, "tensor %s is missing", name);
        }
        const uint64_t want[4] = { ne0, ne1 ? ne1 : 1, 1, 1 };
        if (gt->ne[0] != want[0] || gt->ne[1] != want[1] || gt->ne[2] != 1 || gt->ne[3] != 1)
                return sl_errorf(b->err, -EINVAL,
                                 "tensor %s has shape [%llu, %llu, %llu, %llu], expected [%llu, %llu]", name,
                                 (unsigned long long)gt->ne[0], (unsigned long long)gt->ne[1],
                                 (unsigned long long)gt->ne[2], (unsigned long long)gt->ne[3],
                                 (unsigned long long)want[0], (unsigned long long)want[1]);
        const struct quant_type *qt = quant_type_get(gt->type);
        if (!qt)
                return sl_errorf(b->err, -EINVAL, "tensor %s has type %s, which the CPU engine cannot use",
                                 name, ggml_type_name(gt->type));
        if (ne0 % qt->blck != 0)
                return sl_errorf(b->err, -EINVAL, "tensor %s: row of %llu is not a multiple of %s blocks of %u",
                                 name, (unsigned long long)ne0, ggml_type_name(gt->type), qt->blck);
        size_t row = quant_row_size(gt->type, (int64_t)ne0);
        uint64_t bytes;
        if (sl_mul_u64(row, want[1], &bytes) || bytes != gt->nbytes)
                return sl_errorf(b->err, -EINVAL, "tensor %s: %llu bytes for shape, file says %llu", name,
                                 (unsigned long long)bytes, (unsigned long long)gt->nbytes);
        uint64_t end;
        if (sl_add_u64(gt->offset, gt->nbytes, &end) || end > b->m->gguf->data_size)
                return sl_errorf(b->err, -EINVAL, "tensor %s lies outside the data section", name);
        t->type = gt->type;
        t->ne[0] = ne0;
        t->ne[1] = want[1];
        t->row_size = row;
        t->data = (const uint8_t *)b->m->arena + gt->offset;
        if (ne1 == 0) {
                if (!b->count_only) {
                        float *dst = b->m->f32_pool + b->f32_used;
                        quant_dequantize_row(gt->type, t->data, dst, (int64_t)ne0);
                        t->f32 = dst;
                }
                b->f32_used += SL_ALIGN_UP(ne0, 16);
        }
        return 0;
}

static int bind_layer_tensor(struct binder *b, struct engine_tensor *t, uint32_t il, const char *what,
                             uint64_t ne0, uint64_t ne1, bool optional)
{
        char name[96];
        snprintf(name, sizeof(name), "blk.%u.%s", il, what);
        return bind(b, t, name, ne0, ne1, optional);
}

static int bind_all(struct binder *b)
{
        struct engine_model *m = b->m;
        const struct engine_hparams *hp = &m->hp;
        const uint64_t E = hp->n_embd, V = hp->n_vocab, F = hp->n_ff;
        const uint64_t QD = (uint64_t)hp->head_dim_k * hp->n_head;
        const uint64_t KD = (uint64_t)hp->head_dim_k * hp->n_head_kv;
        const uint64_t VD = (uint64_t)hp->head_dim_v * hp->n_head_kv;
        const uint64_t OD = (uint64_t)hp->head_dim_v * hp->n_head;
        const bool qwen = hp->arch == ENGINE_ARCH_QWEN2, gemma = hp->arch == ENGINE_ARCH_GEMMA3;
        int r;

        if ((r = bind(b, &m->tok_embd, "token_embd.weight", E, V, false)) < 0 ||
            (r = bind(b, &m->output_norm, "output_norm.weight", E, 0, false)) < 0 ||
            (r = bind(b, &m->output, "output.weight", E, V, true)) < 0)
                return r;
        if (!m->output.data)
                m->output = m->tok_embd;
        m->hp.tied_output = m->output.data == m->tok_embd.data;
        if (hp->arch == ENGINE_ARCH_LLAMA &&
            (r = bind(b, &m->rope_freqs, "rope_freqs.weight", hp->rope_dim / 2, 0, true)) < 0)
                return r;

        for (uint32_t il = 0; il < hp->n_layer; il++) {
                struct engine_layer *L = &m->layers[il];
                if ((r = bind_layer_tensor(b, &L->attn_norm, il, "attn_norm.weight", E, 0, false)) < 0 ||
                    (r = bind_layer_tensor(b, &L->wq, il, "attn_q.weight", E, QD, false)) < 0 ||
                    (r = bind_layer_tensor(b, &L->wk, il, "attn_k.weight", E, KD, false)) < 0 ||
                    (r = bind_layer_tensor(b, &L->wv, il, "attn_v.weight", E, VD, false)) < 0 ||
                    (r = bind_layer_tensor(b, &L->wo, il, "attn_output.weight", OD, E, false)) < 0 ||
                    (r = bind_layer_tensor(b, &L->ffn_norm, il, "ffn_norm.weight", E, 0, false)) < 0 ||
                    (r = bind_layer_tensor(b, &L->gate, il, "ffn_gate.weight", E, F, false)) < 0 ||
                    (r = bind_layer_tensor(b, &L->up, il, "ffn_up.weight", E, F, false)) < 0 ||
                    (r = bind_layer_tensor(b, &L->down, il, "ffn_down.weight", F, E, false)) < 0)
                        return r;
                if (qwen &&
                    ((r = bind_layer_tensor(b, &L->bq, il, "attn_q.bias", QD, 0, false)) < 0 ||
                     (r = bind_layer_tensor(b, &L->bk, il, "attn_k.bias", KD, 0, false)) < 0 ||
                     (r = bind_layer_tensor(b, &L->bv, il, "attn_v.bias", VD, 0, false)) < 0))
                        return r;
                if (gemma &&
                    ((r = bind_layer_tensor(b, &L->q_norm, il, "attn_q_norm.weight", hp->head_dim_k, 0, false)) < 0 ||
                     (r = bind_layer_tensor(b, &L->k_norm, il, "attn_k_norm.weight", hp->head_dim_k, 0, false)) < 0 ||
                     (r = bind_layer_tensor(b, &L->post_attn_norm, il, "post_attention_norm.weight", E, 0, false)) < 0 ||
                     (r = bind_layer_tensor(b, &L->post_ffn_norm, il, "post_ffw_norm.weight", E, 0, false)) < 0))
                        return r;
                /* llama.cpp set_swa_pattern(n): layer il is local unless il % n == n - 1. */
                L->swa = hp->sliding_window > 0 && hp->swa_pattern > 0 &&
                         il % hp->swa_pattern < hp->swa_pattern - 1;
                L->rope_base = L->swa ? hp->rope_freq_base_swa : hp->rope_freq_base;
                L->rope_scale = L->swa ? 1.0f : hp->rope_freq_scale;
        }
        return 0;
}

/* ---- data ---- */

struct load_sink {
        struct engine_model *m;
        struct storage_reader *rd;
        uint64_t base;
        uint64_t done;
        uint64_t total;
        const struct engine_load_opts *opts;
};

#if SLUICE_HAVE_CUDA
/* The CUDA backend keeps only the 1-D tensors on the host: they are dequantized to f32 there
 * and uploaded at the end; everything else goes from the staging buffers to the GPU. */
static void copy_host_tensors(struct engine_model *m, uint64_t off, const uint8_t *data, size_t len)
{
        const struct gguf_file *g = m->gguf;
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                const struct gguf_tensor *t = &g->tensors[i];
                if (t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
                        continue;
                const uint64_t lo = SL_MAX(off, t->offset), hi = SL_MIN(off + len, t->offset + t->nbytes);
                if (lo < hi)
                        memcpy((uint8_t *)m->arena + lo, data + (lo - off), hi - lo);
        }
}
#endif

static int load_sink_fn(void *user, uint64_t file_off, const void *data, size_t len)
{
        struct load_sink *s = user;
        if (file_off < s->base || file_off - s->base + len > s->total)
                return -EIO;
        if (s->m->arena_mapped) {
#if SLUICE_HAVE_CUDA
                copy_host_tensors(s->m, file_off - s->base, data, len);
                int r = ecu_model_upload(s->m->cuda, file_off - s->base, data, len,
                                         storage_reader_buffer_index(s->rd, data));
                if (r < 0)
                        return r;
#else
                return -EOPNOTSUPP;
#endif
        } else {
                memcpy((uint8_t *)s->m->arena + (file_off - s->base), data, len);
        }
        s->done += len;
        if (s->opts && s->opts->progress) {
                struct engine_load_progress p = { .done = s->done, .total = s->total };
                s->opts->progress(s->opts->progress_user, &p);
        }
        return 0;
}

static int load_data(struct engine_model *m, const char *path, const struct engine_load_opts *opts,
                     struct sl_error *err)
{
        const struct gguf_file *g = m->gguf;
        struct storage_reader *rd = NULL;
        int r;

        struct storage_reader_opts ro = {0};
        if (opts)
                ro = opts->reader;
#if SLUICE_HAVE_CUDA
        struct storage_staging_hooks hooks;
        if (m->cuda) {
                ecu_model_staging_hooks(m->cuda, &hooks);
                ro.hooks = &hooks;
        }
#endif
        r = storage_reader_open(path, &ro, &rd, err);
        if (r < 0)
                return r;
        struct load_sink s = { .m = m, .rd = rd, .base = g->data_offset, .total = g->data_size, .opts = opts };
        uint64_t t0 = sl_now_ns();
        r = storage_reader_stream(rd, g->data_offset, g->data_size, load_sink_fn, &s, err);
        m->stats.ns = sl_now_ns() - t0;
        m->stats.direct_io = storage_reader_is_direct(rd);
        storage_reader_close(rd);
        if (r < 0) {
#if SLUICE_HAVE_CUDA
                if (m->cuda && ecu_model_last_error(m->cuda)[0])
                        return sl_errorf(err, r, "uploading tensor data to the GPU: %s",
                                         ecu_model_last_error(m->cuda));
#endif
                return sl_error_prefix(err, r, "reading tensor data");
        }
        if (s.done != g->data_size)
                return sl_errorf(err, -EIO, "read %llu of %llu tensor bytes", (unsigned long long)s.done,
                                 (unsigned long long)g->data_size);
        m->stats.bytes = s.done;
        return 0;
}

/* ggml builds the same table: tanh-GELU evaluated at every f16 value, rounded to f16. */
static int build_gelu_table(struct engine_model *m)
{
        m->gelu_f16 = malloc(65536 * sizeof(uint16_t));
        if (!m->gelu_f16)
                return -ENOMEM;
        for (uint32_t i = 0; i < 65536; i++) {
                const float x = sl_fp16_to_fp32((uint16_t)i);
                /* ggml_gelu_f32 as GCC fuses it with FMA available: 1 + A*x*x is one FMA. */
                const float y = 0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x *
                                                         fmaf(0.044715f * x, x, 1.0f)));
                m->gelu_f16[i] = sl_fp32_to_fp16(y);
        }
        return 0;
}

const char *engine_backend_name(enum engine_backend b)
{
        switch (b) {
        case ENGINE_BACKEND_AUTO:
                return "auto";
        case ENGINE_BACKEND_CPU:
                return "cpu";
        case ENGINE_BACKEND_CUDA:
                return "cuda";
        }
        return "?";
}

int engine_gpu_probe(int device, struct engine_gpu_info *out, struct sl_error *err)
{
#if SLUICE_HAVE_CUDA
        return ecu_probe(device, out, err);
#else
        (void)device;
        (void)out;
        return sl_errorf(err, -ENODEV, "this build has no CUDA backend (configured with -Dcuda=disabled or without nvcc)");
#endif
}

/* AUTO: CUDA when this build has it, a usable GPU is present and the model's tensors suit it;
 * the reason is kept for the log either way. An explicit CUDA choice that cannot be met
 * fails with that reason. */
static int choose_backend(struct engine_model *m, const struct engine_load_opts *opts, struct sl_error *err)
{
        const enum engine_backend want = opts ? opts->backend : ENGINE_BACKEND_CPU;
        const int dev = opts ? opts->cuda_device : 0;
        struct engine_gpu_info gi;
        struct sl_error e = {0};
        int r;

        if (want == ENGINE_BACKEND_CPU) {
                m->backend = ENGINE_BACKEND_CPU;
                snprintf(m->backend_reason, sizeof(m->backend_reason), "cpu: as configured");
                return 0;
        }
        if (want != ENGINE_BACKEND_AUTO && want != ENGINE_BACKEND_CUDA)
                return sl_errorf(err, -EINVAL, "unknown backend %d", (int)want);
        r = engine_gpu_probe(dev, &gi, &e);
#if SLUICE_HAVE_CUDA
        if (r == 0)
                r = ecu_model_supported(m, &e);
#endif
        if (r < 0) {
                if (want == ENGINE_BACKEND_CUDA)
                        return sl_errorf(err, r, "backend cuda: %s", e.msg);
                m->backend = ENGINE_BACKEND_CPU;
                snprintf(m->backend_reason, sizeof(m->backend_reason), "cpu: no CUDA (%s)", e.msg);
                return 0;
        }
        m->backend = ENGINE_BACKEND_CUDA;
        snprintf(m->backend_reason, sizeof(m->backend_reason), "cuda: GPU %d %s (sm_%d%d, %d SMs, %.1f GiB, %.1f GiB free)%s",
                 dev, gi.name, gi.cc_major, gi.cc_minor, gi.n_sm, gi.mem_total / 1073741824.0,
                 gi.mem_free / 1073741824.0, want == ENGINE_BACKEND_AUTO ? " chosen by auto" : "");
        return 0;
}

enum engine_backend engine_model_backend(const struct engine_model *m)
{
        return m->backend;
}

const char *engine_model_backend_reason(const struct engine_model *m)
{
        return m->backend_reason;
}

int engine_model_gpu_info(const struct engine_model *m, struct engine_gpu_info *out)
{
#if SLUICE_HAVE_CUDA
        if (m->cuda) {
                ecu_model_info(m->cuda, out);
                return 0;
        }
#endif
        (void)out;
        return m->backend == ENGINE_BACKEND_CUDA ? -EIO : -ENODEV;
}

int engine_host_register(const struct engine_model *m, void *p, size_t n, void **dev_ptr, struct sl_error *err)
{
#if SLUICE_HAVE_CUDA
        if (m->cuda)
                return ecu_host_register(m->cuda, p, n, dev_ptr, err);
#endif
        (void)p;
        (void)n;
        (void)dev_ptr;
        return sl_errorf(err, -EOPNOTSUPP, "the model is not on a GPU (backend %s)",
                         m->backend == ENGINE_BACKEND_CUDA ? "cuda, not loaded" : "cpu");
}

void engine_host_unregister(const struct engine_model *m, void *p)
{
#if SLUICE_HAVE_CUDA
        if (m->cuda)
                ecu_host_unregister(m->cuda, p);
#endif
        (void)m;
        (void)p;
}

int engine_model_load(const char *path, const struct engine_load_opts *opts, struct engine_model **out,
                      struct sl_error *err)
{
        struct engine_model *m = NULL;
        int r;

        *out = NULL;
        quant_init(false);
        m = calloc(1, sizeof(*m));
        if (!m)
                return sl_errorf(err, -ENOMEM, "out of memory");
        r = gguf_open(path, &m->gguf, err);
        if (r < 0)
                goto fail;
        r = load_hparams(m, err);
        if (r < 0)
                goto fail;
        m->layers = calloc(m->hp.n_layer, sizeof(*m->layers));
        if (!m->layers) {
                r = sl_errorf(err, -ENOMEM, "out of memory");
                goto fail;
        }

        /* Validate every tensor before reading gigabytes: a first pass without data. */
        struct binder b = { .m = m, .count_only = true, .err = err };
        r = bind_all(&b);
        if (r < 0)
                goto fail;
        for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
                m->hp.n_params += m->gguf->tensors[i].nelements;
                m->hp.weight_bytes += m->gguf->tensors[i].nbytes;
        }
        m->f32_pool = malloc(SL_MAX(b.f32_used, 1) * sizeof(float));
        if (!m->f32_pool) {
                r = sl_errorf(err, -ENOMEM, "out of memory");
                goto fail;
        }
        r = choose_backend(m, opts, err);
        if (r < 0)
                goto fail;
        m->arena_size = SL_ALIGN_UP(m->gguf->data_size ? m->gguf->data_size : 1, 4096);
        if (m->backend == ENGINE_BACKEND_CUDA) {
                /* Address space only: the pages of 1-D tensors are the only ones touched. */
                void *p = mmap(NULL, m->arena_size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
                m->arena = p == MAP_FAILED ? NULL : p;
                m->arena_mapped = m->arena != NULL;
        } else {
                m->arena = aligned_alloc(4096, m->arena_size);
        }
        if (!m->arena) {
                r = sl_errorf(err, -ENOMEM, "cannot allocate %zu bytes for weights", m->arena_size);
                goto fail;
        }
#if SLUICE_HAVE_CUDA
        if (m->backend == ENGINE_BACKEND_CUDA) {
                /* views with real addresses, so the GPU side can take file offsets from them */
                b = (struct binder){ .m = m, .count_only = true, .err = err };
                if ((r = bind_all(&b)) < 0 ||
                    (r = ecu_model_create(m, opts ? opts->cuda_device : 0, &m->cuda, err)) < 0)
                        goto fail;
        }
#endif
        r = load_data(m, path, opts, err);
        if (r < 0)
                goto fail;
        b = (struct binder){ .m = m, .count_only = false, .err = err };
        r = bind_all(&b);
        if (r < 0)
                goto fail;
        if (m->hp.arch == ENGINE_ARCH_GEMMA3 && build_gelu_table(m) < 0) {
                r = sl_errorf(err, -ENOMEM, "out of memory");
                goto fail;
        }

#if SLUICE_HAVE_CUDA
        if (m->cuda && (r = ecu_model_finish(m->cuda, m, err)) < 0)
                goto fail;
#endif
        r = engine_tokenizer_create(m->gguf, &m->tok, err);
        if (r < 0) {
                sl_error_prefix(err, r, "tokenizer");
                goto fail;
        }
        if (engine_tokenizer_n_vocab(m->tok) != m->hp.n_vocab) {
                r = sl_errorf(err, -EINVAL, "tokenizer has %u tokens, token_embd %u rows",
                              engine_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
                goto fail;
        }
        *out = m;
        return 0;
fail:
        engine_model_free(m);
        return r;
}

void engine_model_free(struct engine_model *m)
{
        if (!m)
                return;
        engine_tokenizer_free(m->tok);
        free(m->gelu_f16);
        free(m->f32_pool);
#if SLUICE_HAVE_CUDA
        ecu_model_free(m->cuda);
#endif
        if (m->arena_mapped)
                munmap(m->arena, m->arena_size);
        else
                free(m->arena);
        free(m->layers);
        gguf_close(m->gguf);
        free(m);
}

const struct engine_hparams *engine_model_hparams(const struct engine_model *m)
{
        return &m->hp;
}

const struct engine_load_stats *engine_model_load_stats(const struct engine_model *m)
{
        return &m->stats;
}

const struct engine_tokenizer *engine_model_tokenizer(const struct engine_model *m)
{
        return m->tok;
}
