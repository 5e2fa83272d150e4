/* sluice-mkmodel — writes random-weight GGUF models in the exact shapes of real ones (Llama 3.2
 * 1B, Llama 3.1 8B, and a tiny llama for tests) carrying a real tokenizer copied from a vocab
 * GGUF. For benchmarks: decode speed depends on shapes and types, never on the weights' values,
 * so a 16 GB file is written at disk speed instead of being downloaded.
 * Exit codes: 0 done, 1 I/O or vocabulary error, 2 usage error. */
#define _GNU_SOURCE /* renameat2 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "storage.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF is little-endian and this writer stores host-order values"
#endif

#define PROG        "sluice-mkmodel"
#define CHUNK_BYTES (8u << 20) /* one work item: generated in one buffer, one pwrite() */
#define TABLE_BITS  16
#define TABLE_SIZE  (1u << TABLE_BITS)
#define MAX_LAYERS  1024
#define MAX_THREADS 64
#define FTYPE_BF16  32 /* llama.cpp's LLAMA_FTYPE_MOSTLY_BF16; F32 is 0, F16 is 1 */

/* ---- shapes ---- */

struct shape {
        const char *name;
        const char *model_name; /* general.name, with "(random weights)" appended */
        uint32_t n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx;
        float rope_base, norm_eps;
        /* Llama 3 rope scaling, written as rope_freqs.weight the way llama.cpp's
         * convert_hf_to_gguf.py does (LlamaModel.generate_extra_tensors); factor 0: none */
        float rope_factor, rope_low_freq, rope_high_freq;
        uint32_t rope_orig_ctx;
        int tied;         /* output projection shares token_embd */
        float weight_std; /* of the 2-D weights */
};

/* Hyperparameters from the models' Hugging Face config.json files (meta-llama/Llama-3.2-1B
 * and meta-llama/Llama-3.1-8B: hidden_size, num_hidden_layers, num_attention_heads,
 * num_key_value_heads, head_dim, intermediate_size, vocab_size, max_position_embeddings,
 * rope_theta, rms_norm_eps, rope_scaling {rope_type llama3, factor, low_freq_factor 1,
 * high_freq_factor 4, original_max_position_embeddings 8192}, tie_word_embeddings), and
 * the GGUF keys llama.cpp's converter derives from them. n_vocab is the real model's; the
 * file's comes from the vocabulary copied in. The real shapes' weights have the configs'
 * initializer_range (0.02) as standard deviation; tiny's are wider, since at 0.02 a 256-wide
 * model attends uniformly and repeats one token whatever the prompt, which makes a poor
 * test. */
static const struct shape SHAPES[] = {
        { "llama-3.2-1b", "Llama 3.2 1B", 2048, 16, 32, 8, 64, 8192, 128256, 131072, 500000.0f,
          1e-5f, 32.0f, 1.0f, 4.0f, 8192, 1, 0.02f },
        { "llama-3.1-8b", "Llama 3.1 8B", 4096, 32, 32, 8, 128, 14336, 128256, 131072, 500000.0f,
          1e-5f, 8.0f, 1.0f, 4.0f, 8192, 0, 0.02f },
        /* a llama-3.2-like model small enough for tests: GQA, tied, llama3 rope factors */
        { "tiny", "tiny llama", 256, 2, 4, 2, 64, 512, 0, 4096, 500000.0f, 1e-5f, 32.0f, 1.0f,
          4.0f, 8192, 1, 0.1f },
};

/* ---- tensors ---- */

struct tensor {
        char name[64];
        uint32_t n_dims;
        uint64_t ne[2];
        uint32_t type;           /* GGML_TYPE_F32 / F16 / BF16 */
        const void *table;       /* TABLE_SIZE values of this tensor's type, or NULL */
        const float *values;     /* fixed F32 contents (rope_freqs) when table is NULL */
        uint64_t offset, nbytes; /* in the data section */
};

struct model {
        const struct shape *sh;
        uint32_t n_layer, n_vocab, wtype;
        struct tensor *t;
        uint32_t n_t;
        float rope_freqs[256];
};

static uint32_t type_bytes(uint32_t type)
{
        return type == GGML_TYPE_F32 ? 4 : 2;
}

static struct tensor *add_tensor(struct model *m, const char *name, uint64_t ne0, uint64_t ne1,
                                 uint32_t type)
{
        struct tensor *t = &m->t[m->n_t++];
        snprintf(t->name, sizeof(t->name), "%s", name);
        t->n_dims = ne1 ? 2 : 1;
        t->ne[0] = ne0;
        t->ne[1] = ne1 ? ne1 : 1;
        t->type = type;
        t->nbytes = ne0 * t->ne[1] * type_bytes(type);
        return t;
}

/* The rope_freqs tensor of a Llama 3 model: per rotary pair, the divisor of its frequency. */
static void llama3_rope_factors(const struct shape *sh, float *out)
{
        const uint32_t dim = sh->head_dim;
        const double low_wavelen = sh->rope_orig_ctx / sh->rope_low_freq;
        const double high_wavelen = sh->rope_orig_ctx / sh->rope_high_freq;
        for (uint32_t i = 0; i < dim / 2; i++) {
                const float freq = 1.0f / powf(sh->rope_base, (float)(2 * i) / (float)dim);
                const double wavelen = 2 * M_PI / freq;
                if (wavelen < high_wavelen) {
                        out[i] = 1.0f;
                } else if (wavelen > low_wavelen) {
                        out[i] = sh->rope_factor;
                } else {
                        const double smooth = (sh->rope_orig_ctx / wavelen - sh->rope_low_freq) /
                                              (sh->rope_high_freq - sh->rope_low_freq);
                        out[i] = (float)(1.0 / ((1 - smooth) / sh->rope_factor + smooth));
                }
        }
}

/* ---- random values: N(mean, sigma) quantised to a 65536-entry table, indexed by 16 PRNG
 * bits, so four values cost one xoshiro256++ step and four loads ---- */

static double normal_quantile[TABLE_SIZE];

static void normal_quantiles_init(void)
{
        /* Newton on Phi(x) = p for the lower half; the upper half mirrors it, so the table's
         * mean is exactly 0 */
        for (uint32_t i = 0; i < TABLE_SIZE / 2; i++) {
                const double p = (i + 0.5) / TABLE_SIZE;
                double x = 0.0;
                for (int it = 0; it < 100; it++) {
                        const double f = 0.5 * erfc(-x / M_SQRT2) - p;
                        const double d = exp(-0.5 * x * x) / sqrt(2 * M_PI);
                        const double step = f / d;
                        x -= step;
                        if (fabs(step) < 1e-12)
                                break;
                }
                normal_quantile[i] = x;
                normal_quantile[TABLE_SIZE - 1 - i] = -x;
        }
}

struct value_table {
        uint32_t type;
        float mean, sigma;
        void *v;
};

static struct value_table tables[4];
static uint32_t n_tables;

static const void *value_table(uint32_t type, float mean, float sigma)
{
        for (uint32_t i = 0; i < n_tables; i++)
                if (tables[i].type == type && tables[i].mean == mean && tables[i].sigma == sigma)
                        return tables[i].v;
        if (n_tables == SL_ARRAY_SIZE(tables))
                return NULL;
        void *v = malloc((size_t)TABLE_SIZE * type_bytes(type));
        if (!v)
                return NULL;
        for (uint32_t i = 0; i < TABLE_SIZE; i++) {
                const float f = (float)(mean + sigma * normal_quantile[i]);
                if (type == GGML_TYPE_F32)
                        ((float *)v)[i] = f;
                else if (type == GGML_TYPE_F16)
                        ((uint16_t *)v)[i] = sl_fp32_to_fp16(f);
                else
                        ((uint16_t *)v)[i] = sl_fp32_to_bf16(f);
        }
        tables[n_tables++] = (struct value_table){ type, mean, sigma, v };
        return v;
}

struct rng {
        uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
        uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* Independent streams per (seed, index): splitmix64 spreads the pair over the whole state. */
static void rng_seed(struct rng *r, uint64_t seed, uint64_t index)
{
        uint64_t x = seed ^ (index * 0xd1342543de82ef95ull);
        for (int i = 0; i < 4; i++)
                r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k)
{
        return (x << k) | (x >> (64 - k));
}

static inline uint64_t xoshiro256pp(struct rng *r)
{
        uint64_t *s = r->s;
        const uint64_t out = rotl(s[0] + s[3], 23) + s[0];
        const uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl(s[3], 45);
        return out;
}

static void fill16(struct rng *r, const uint16_t *tab, uint16_t *o, size_t n)
{
        size_t i = 0;
        for (; i + 4 <= n; i += 4) {
                const uint64_t x = xoshiro256pp(r);
                o[i] = tab[x & 0xffff];
                o[i + 1] = tab[(x >> 16) & 0xffff];
                o[i + 2] = tab[(x >> 32) & 0xffff];
                o[i + 3] = tab[x >> 48];
        }
        for (uint64_t x = xoshiro256pp(r); i < n; i++, x >>= 16)
                o[i] = tab[x & 0xffff];
}

static void fill32(struct rng *r, const float *tab, float *o, size_t n)
{
        size_t i = 0;
        for (; i + 4 <= n; i += 4) {
                const uint64_t x = xoshiro256pp(r);
                o[i] = tab[x & 0xffff];
                o[i + 1] = tab[(x >> 16) & 0xffff];
                o[i + 2] = tab[(x >> 32) & 0xffff];
                o[i + 3] = tab[x >> 48];
        }
        for (uint64_t x = xoshiro256pp(r); i < n; i++, x >>= 16)
                o[i] = tab[x & 0xffff];
}

/* ---- the model's tensor list ---- */

static int build_model(struct model *m)
{
        const struct shape *sh = m->sh;
        const uint32_t E = sh->n_embd, QD = sh->n_head * sh->head_dim,
                       KD = sh->n_head_kv * sh->head_dim, F = sh->n_ff;
        const uint32_t wt = m->wtype;
        /* norm weights near 1, as trained ones are */
        const void *w = value_table(wt, 0.0f, sh->weight_std);
        const void *norm = value_table(GGML_TYPE_F32, 1.0f, 0.02f);
        char name[64];

        if (!w || !norm)
                return -ENOMEM;
        m->t = calloc(4 + (size_t)m->n_layer * 9, sizeof(*m->t));
        if (!m->t)
                return -ENOMEM;
        /* the order llama.cpp's converter writes: rope_freqs, token_embd, the blocks, then
         * output_norm and output */
        if (sh->rope_factor > 0.0f) {
                llama3_rope_factors(sh, m->rope_freqs);
                add_tensor(m, "rope_freqs.weight", sh->head_dim / 2, 0, GGML_TYPE_F32)->values =
                        m->rope_freqs;
        }
        add_tensor(m, "token_embd.weight", E, m->n_vocab, wt)->table = w;
        for (uint32_t il = 0; il < m->n_layer; il++) {
                static const struct {
                        const char *name;
                        int in, out; /* 0: n_embd, 1: q dim, 2: kv dim, 3: n_ff, -1: 1-D */
                } L[] = {
                        { "attn_norm", 0, -1 }, { "attn_q", 0, 1 },   { "attn_k", 0, 2 },
                        { "attn_v", 0, 2 },     { "attn_output", 1, 0 }, { "ffn_norm", 0, -1 },
                        { "ffn_gate", 0, 3 },   { "ffn_up", 0, 3 },   { "ffn_down", 3, 0 },
                };
                const uint32_t dims[4] = { E, QD, KD, F };
                for (size_t k = 0; k < SL_ARRAY_SIZE(L); k++) {
                        snprintf(name, sizeof(name), "blk.%u.%s.weight", il, L[k].name);
                        if (L[k].out < 0)
                                add_tensor(m, name, dims[L[k].in], 0, GGML_TYPE_F32)->table = norm;
                        else
                                add_tensor(m, name, dims[L[k].in], dims[L[k].out], wt)->table = w;
                }
        }
        add_tensor(m, "output_norm.weight", E, 0, GGML_TYPE_F32)->table = norm;
        if (!sh->tied)
                add_tensor(m, "output.weight", E, m->n_vocab, wt)->table = w;

        uint64_t off = 0;
        for (uint32_t i = 0; i < m->n_t; i++) {
                m->t[i].offset = off;
                off += SL_ALIGN_UP(m->t[i].nbytes, GGUF_DEFAULT_ALIGNMENT);
        }
        return 0;
}

/* ---- the header: key/values and tensor infos, encoded into one buffer ---- */

struct buf {
        uint8_t *p;
        size_t len, cap;
        int err;
};

static void put(struct buf *b, const void *data, size_t n)
{
        if (b->err)
                return;
        if (b->len + n > b->cap) {
                size_t cap = b->cap ? b->cap : 1 << 20;
                while (cap < b->len + n)
                        cap *= 2;
                uint8_t *p = realloc(b->p, cap);
                if (!p) {
                        b->err = -ENOMEM;
                        return;
                }
                b->p = p;
                b->cap = cap;
        }
        memcpy(b->p + b->len, data, n);
        b->len += n;
}

static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }

static void put_str(struct buf *b, const char *s, size_t n)
{
        put_u64(b, n);
        put(b, s, n);
}

static void put_key(struct buf *b, const char *key, uint32_t type)
{
        put_str(b, key, strlen(key));
        put_u32(b, type);
}

static void kv_u32(struct buf *b, uint64_t *n, const char *key, uint32_t v)
{
        put_key(b, key, GGUF_TYPE_UINT32);
        put_u32(b, v);
        ++*n;
}

static void kv_f32(struct buf *b, uint64_t *n, const char *key, float v)
{
        put_key(b, key, GGUF_TYPE_FLOAT32);
        put(b, &v, 4);
        ++*n;
}

static void kv_str(struct buf *b, uint64_t *n, const char *key, const char *v)
{
        put_key(b, key, GGUF_TYPE_STRING);
        put_str(b, v, strlen(v));
        ++*n;
}

static size_t scalar_size(uint32_t type)
{
        switch (type) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
        }
}

/* A parsed value re-encoded as GGUF stores it (no type tag: the caller wrote that). */
static void put_payload(struct buf *b, const struct gguf_value *v)
{
        union {
                uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64; float f32; double f64;
        } x;
        switch (v->type) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: x.u8 = (uint8_t)v->u64; break;
        case GGUF_TYPE_BOOL: x.u8 = v->b; break;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: x.u16 = (uint16_t)v->u64; break;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: x.u32 = (uint32_t)v->u64; break;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: x.u64 = v->u64; break;
        case GGUF_TYPE_FLOAT32: x.f32 = (float)v->f64; break; /* exact: it was a float */
        case GGUF_TYPE_FLOAT64: x.f64 = v->f64; break;
        case GGUF_TYPE_STRING:
                put_str(b, v->str.ptr, v->str.len);
                return;
        case GGUF_TYPE_ARRAY:
                put_u32(b, v->arr.type);
                put_u64(b, v->arr.n);
                if (v->arr.items) {
                        for (uint64_t i = 0; i < v->arr.n; i++)
                                put_payload(b, &v->arr.items[i]);
                } else {
                        /* scalar elements: already little-endian in the vocab file's image */
                        put(b, v->arr.data, v->arr.n * scalar_size(v->arr.type));
                }
                return;
        default:
                b->err = -EPROTO;
                return;
        }
        put(b, &x, scalar_size(v->type)); /* signed types share the unsigned bit pattern */
}

static int encode_header(struct buf *b, const struct model *m, const struct gguf_file *vocab)
{
        const struct shape *sh = m->sh;
        char name[128];
        uint64_t n_kv = 0;

        put_u32(b, GGUF_MAGIC);
        put_u32(b, 3);
        put_u64(b, m->n_t);
        size_t n_kv_at = b->len;
        put_u64(b, 0); /* n_kv, patched below */

        snprintf(name, sizeof(name), "%s (random weights)", sh->model_name);
        kv_str(b, &n_kv, "general.architecture", "llama");
        kv_str(b, &n_kv, "general.name", name);
        kv_u32(b, &n_kv, "general.file_type",
               m->wtype == GGML_TYPE_F32 ? 0 : m->wtype == GGML_TYPE_F16 ? 1 : FTYPE_BF16);
        kv_u32(b, &n_kv, "llama.block_count", m->n_layer);
        kv_u32(b, &n_kv, "llama.context_length", sh->n_ctx);
        kv_u32(b, &n_kv, "llama.embedding_length", sh->n_embd);
        kv_u32(b, &n_kv, "llama.feed_forward_length", sh->n_ff);
        kv_u32(b, &n_kv, "llama.attention.head_count", sh->n_head);
        kv_u32(b, &n_kv, "llama.attention.head_count_kv", sh->n_head_kv);
        kv_u32(b, &n_kv, "llama.attention.key_length", sh->head_dim);
        kv_u32(b, &n_kv, "llama.attention.value_length", sh->head_dim);
        kv_f32(b, &n_kv, "llama.attention.layer_norm_rms_epsilon", sh->norm_eps);
        kv_f32(b, &n_kv, "llama.rope.freq_base", sh->rope_base);
        kv_u32(b, &n_kv, "llama.rope.dimension_count", sh->head_dim);
        kv_u32(b, &n_kv, "llama.vocab_size", m->n_vocab);
        for (uint64_t i = 0; i < vocab->n_kv; i++) {
                const struct gguf_kv *kv = &vocab->kv[i];
                if (kv->key.len < 10 || memcmp(kv->key.ptr, "tokenizer.", 10) != 0)
                        continue;
                put_str(b, kv->key.ptr, kv->key.len);
                put_u32(b, kv->val.type);
                put_payload(b, &kv->val);
                n_kv++;
        }
        for (uint32_t i = 0; i < m->n_t; i++) {
                const struct tensor *t = &m->t[i];
                put_str(b, t->name, strlen(t->name));
                put_u32(b, t->n_dims);
                for (uint32_t d = 0; d < t->n_dims; d++)
                        put_u64(b, t->ne[d]);
                put_u32(b, t->type);
                put_u64(b, t->offset);
        }
        static const uint8_t zeros[GGUF_DEFAULT_ALIGNMENT];
        put(b, zeros, SL_ALIGN_UP(b->len, GGUF_DEFAULT_ALIGNMENT) - b->len);
        if (!b->err)
                memcpy(b->p + n_kv_at, &n_kv, 8);
        return b->err;
}

/* ---- writing: worker threads take 8 MiB pieces of the file in turn, fill each (header
 * bytes, tensor values from a PRNG seeded by (seed, piece), zero padding) and write it with
 * one O_DIRECT pwrite(), so the page cache stays out of the way and the bytes do not depend
 * on the thread count ---- */

struct writer {
        const struct model *m;
        const struct buf *hdr; /* the file's first hdr->len bytes; the data section follows */
        int fd;
        uint64_t seed, file_size, n_pieces;
        atomic_uint_fast64_t next;
        atomic_int err;
};

static int pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
        const uint8_t *c = p;
        while (n) {
                ssize_t w = pwrite(fd, c, n, (off_t)off);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        return -errno;
                if (w == 0)
                        return -EIO;
                c += w;
                n -= (size_t)w;
                off += (uint64_t)w;
        }
        return 0;
}

/* Bytes [lo, lo + len) of the file into buf; anything that is neither header nor tensor
 * (alignment padding, the tail past the end) is zero. */
static void fill_piece(const struct writer *w, uint64_t piece, uint8_t *buf, size_t len)
{
        const struct model *m = w->m;
        const uint64_t lo = piece * CHUNK_BYTES, hi = lo + len, base = w->hdr->len;
        uint64_t at = lo; /* everything before this is filled */
        struct rng r;

        rng_seed(&r, w->seed, piece);
        if (lo < base) {
                const uint64_t n = SL_MIN(base, hi) - lo;
                memcpy(buf, w->hdr->p + lo, n);
                at += n;
        }
        /* the first tensor that ends after lo */
        uint32_t i = 0, j = m->n_t;
        while (i < j) {
                const uint32_t mid = (i + j) / 2;
                if (base + m->t[mid].offset + m->t[mid].nbytes <= lo)
                        i = mid + 1;
                else
                        j = mid;
        }
        for (; i < m->n_t && at < hi; i++) {
                const struct tensor *t = &m->t[i];
                const uint64_t start = base + t->offset, end = start + t->nbytes;
                if (start >= hi)
                        break;
                const uint64_t a = SL_MAX(start, at), b = SL_MIN(end, hi);
                memset(buf + (at - lo), 0, a - at);
                uint8_t *o = buf + (a - lo);
                if (!t->table)
                        memcpy(o, (const uint8_t *)t->values + (a - start), b - a);
                else if (t->type == GGML_TYPE_F32)
                        fill32(&r, t->table, (float *)o, (b - a) / 4);
                else
                        fill16(&r, t->table, (uint16_t *)o, (b - a) / 2);
                at = b;
        }
        memset(buf + (at - lo), 0, hi - at);
}

static void *writer_thread(void *arg)
{
        struct writer *w = arg;
        uint8_t *buf = aligned_alloc(4096, CHUNK_BYTES);

        if (!buf) {
                atomic_store(&w->err, -ENOMEM);
                return NULL;
        }
        for (;;) {
                const uint64_t piece = atomic_fetch_add(&w->next, 1);
                if (piece >= w->n_pieces || atomic_load(&w->err))
                        break;
                const uint64_t off = piece * CHUNK_BYTES;
                /* the last piece is rounded up to whole 4 KiB blocks for O_DIRECT; the file is
                 * truncated to its size afterwards */
                const size_t len = (size_t)SL_MIN((uint64_t)CHUNK_BYTES,
                                                  SL_ALIGN_UP(w->file_size - off, 4096));
                fill_piece(w, piece, buf, len);
                const int e = pwrite_all(w->fd, buf, len, off);
                if (e < 0) {
                        atomic_store(&w->err, e);
                        break;
                }
        }
        free(buf);
        return NULL;
}

static int write_file(struct writer *w, uint32_t n_threads)
{
        pthread_t th[MAX_THREADS];
        uint32_t started = 0;

        w->n_pieces = (w->file_size + CHUNK_BYTES - 1) / CHUNK_BYTES;
        for (; started < n_threads; started++)
                if (pthread_create(&th[started], NULL, writer_thread, w) != 0)
                        break;
        if (started == 0)
                writer_thread(w);
        for (uint32_t i = 0; i < started; i++)
                pthread_join(th[i], NULL);
        if (atomic_load(&w->err))
                return atomic_load(&w->err);
        return ftruncate(w->fd, (off_t)w->file_size) < 0 ? -errno : 0;
}

/* ---- main ---- */

static void usage(FILE *f)
{
        fprintf(f,
                "usage: " PROG " --shape NAME -o FILE [options]\n"
                "Writes a random-weight GGUF model in the shape of a real one, with the Llama 3\n"
                "tokenizer copied from a vocabulary GGUF.\n"
                "\n"
                "      --shape NAME    llama-3.2-1b, llama-3.1-8b or tiny\n"
                "  -o, --output FILE   the GGUF file to write\n"
                "      --type T        bf16 (default), f16 or f32 for the 2-D weights\n"
                "      --seed S        PRNG seed (default 0): same seed, same bytes\n"
                "      --layers N      number of blocks instead of the shape's\n"
                "      --vocab PATH    vocabulary GGUF whose tokenizer.* keys are copied (default\n"
                "                      $SLUICE_VOCAB_DIR or ~/.cache/sluice/vocab, then\n"
                "                      ggml-vocab-llama-bpe.gguf)\n"
                "  -t, --threads N     generating threads (default: online CPUs, at most 16)\n"
                "  -f, --force         replace FILE if it exists\n"
                "  -h, --help          this text\n");
}

static int default_vocab(char *out, size_t n)
{
        const char *dir = getenv("SLUICE_VOCAB_DIR");
        const char *home = getenv("HOME");
        int r;
        if (dir && *dir)
                r = snprintf(out, n, "%s/ggml-vocab-llama-bpe.gguf", dir);
        else
                r = snprintf(out, n, "%s/.cache/sluice/vocab/ggml-vocab-llama-bpe.gguf",
                             home ? home : "");
        return r > 0 && (size_t)r < n ? 0 : -ENAMETOOLONG;
}

int main(int argc, char **argv)
{
        enum { OPT_SHAPE = 256, OPT_TYPE, OPT_SEED, OPT_LAYERS, OPT_VOCAB };
        static const struct option longopts[] = {
                { "shape", required_argument, 0, OPT_SHAPE },
                { "output", required_argument, 0, 'o' },
                { "type", required_argument, 0, OPT_TYPE },
                { "seed", required_argument, 0, OPT_SEED },
                { "layers", required_argument, 0, OPT_LAYERS },
                { "vocab", required_argument, 0, OPT_VOCAB },
                { "threads", required_argument, 0, 't' },
                { "force", no_argument, 0, 'f' },
                { "help", no_argument, 0, 'h' },
                { 0, 0, 0, 0 },
        };
        const char *shape_name = NULL, *out_path = NULL, *type_name = "bf16", *vocab_arg = NULL;
        uint64_t seed = 0;
        long n_layers = 0, n_threads = 0;
        bool force = false;

        cli_init(PROG);
        opterr = 0;
        int c;
        while ((c = getopt_long(argc, argv, ":o:t:fh", longopts, NULL)) != -1) {
                switch (c) {
                case OPT_SHAPE: shape_name = optarg; break;
                case 'o': out_path = optarg; break;
                case OPT_TYPE: type_name = optarg; break;
                case OPT_SEED: seed = cli_parse_u64(optarg, "--seed"); break;
                case OPT_LAYERS: n_layers = cli_parse_long(optarg, "--layers", 1, MAX_LAYERS); break;
                case OPT_VOCAB: vocab_arg = optarg; break;
                case 't': n_threads = cli_parse_long(optarg, "--threads", 1, MAX_THREADS); break;
                case 'f': force = true; break;
                case 'h': usage(stdout); return 0;
                case ':': cli_bad_option(argv, optind, optopt, 1);
                default: cli_bad_option(argv, optind, optopt, 0);
                }
        }
        if (optind < argc)
                cli_usage_error("unexpected argument '%s'", argv[optind]);
        if (!shape_name)
                cli_usage_error("%s", "no shape given (--shape llama-3.2-1b|llama-3.1-8b|tiny)");
        if (!out_path || !*out_path)
                cli_usage_error("%s", "no output file given (-o FILE)");

        struct model m = { 0 };
        for (size_t i = 0; i < SL_ARRAY_SIZE(SHAPES); i++)
                if (strcmp(shape_name, SHAPES[i].name) == 0)
                        m.sh = &SHAPES[i];
        if (!m.sh)
                cli_usage_error("unknown shape '%s' (llama-3.2-1b, llama-3.1-8b or tiny)", shape_name);
        if (strcmp(type_name, "bf16") == 0)
                m.wtype = GGML_TYPE_BF16;
        else if (strcmp(type_name, "f16") == 0)
                m.wtype = GGML_TYPE_F16;
        else if (strcmp(type_name, "f32") == 0)
                m.wtype = GGML_TYPE_F32;
        else
                cli_usage_error("unknown type '%s' (bf16, f16 or f32)", type_name);
        m.n_layer = n_layers ? (uint32_t)n_layers : m.sh->n_layer;
        if (!n_threads) {
                long n = sysconf(_SC_NPROCESSORS_ONLN);
                n_threads = n < 1 ? 1 : n > 16 ? 16 : n;
        }

        struct sl_error err = { { 0 } };
        struct gguf_file *vocab = NULL;
        struct buf hdr = { 0 };
        char vocab_path[4096], tmp_path[4096];
        int fd = -1, ret = 1, r;
        bool tmp_made = false;

        if (vocab_arg)
                snprintf(vocab_path, sizeof(vocab_path), "%s", vocab_arg);
        else if (default_vocab(vocab_path, sizeof(vocab_path)) < 0) {
                fprintf(stderr, PROG ": vocabulary path too long\n");
                return 1;
        }
        if (!force && access(out_path, F_OK) == 0) {
                fprintf(stderr, PROG ": %s: exists (--force replaces it)\n", out_path);
                return 1;
        }
        if (snprintf(tmp_path, sizeof(tmp_path), "%s.tmp.%d", out_path, (int)getpid()) >=
            (int)sizeof(tmp_path)) {
                fprintf(stderr, PROG ": %s: path too long\n", out_path);
                return 1;
        }
        if (gguf_open(vocab_path, &vocab, &err) < 0) {
                fprintf(stderr, PROG ": vocabulary %s: %s\n", vocab_path, err.msg);
                return 1;
        }
        const struct gguf_array *toks;
        if ((r = gguf_get_arr(vocab, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, &err)) < 0) {
                fprintf(stderr, PROG ": vocabulary %s: %s\n", vocab_path,
                        r == -ENOENT ? "no tokenizer.ggml.tokens" : err.msg);
                goto fail;
        }
        if (toks->n == 0 || toks->n > (1u << 24)) {
                fprintf(stderr, PROG ": vocabulary %s: %" PRIu64 " tokens\n", vocab_path, toks->n);
                goto fail;
        }
        m.n_vocab = (uint32_t)toks->n;
        if (m.sh->n_vocab && m.sh->n_vocab != m.n_vocab)
                fprintf(stderr, PROG ": note: %s has %u tokens where %s has %u; the embedding "
                                "follows the vocabulary\n",
                        vocab_path, m.n_vocab, m.sh->model_name, m.sh->n_vocab);

        normal_quantiles_init();
        if ((r = build_model(&m)) < 0 || (r = encode_header(&hdr, &m, vocab)) < 0) {
                fprintf(stderr, PROG ": %s\n", strerror(-r));
                goto fail;
        }
        const struct tensor *last = &m.t[m.n_t - 1];
        const uint64_t data_size = SL_ALIGN_UP(last->offset + last->nbytes, GGUF_DEFAULT_ALIGNMENT);
        const uint64_t file_size = hdr.len + data_size;

        const uint64_t t0 = sl_now_ns();
        /* O_DIRECT: the disk's speed without a page-cache copy; tmpfs and friends refuse it */
        fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0644);
        if (fd < 0 && errno == EINVAL)
                fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) {
                fprintf(stderr, PROG ": %s: %s\n", tmp_path, strerror(errno));
                goto fail;
        }
        tmp_made = true;
        /* reserve the space first: a full disk fails now, not 15 GB in */
        r = posix_fallocate(fd, 0, (off_t)file_size);
        if (r == EOPNOTSUPP || r == EINVAL)
                r = ftruncate(fd, (off_t)file_size) < 0 ? errno : 0;
        if (r) {
                fprintf(stderr, PROG ": %s: reserving %" PRIu64 " bytes: %s\n", tmp_path, file_size,
                        strerror(r));
                goto fail;
        }
        struct writer w = { .m = &m, .hdr = &hdr, .fd = fd, .seed = seed, .file_size = file_size };
        if ((r = write_file(&w, (uint32_t)n_threads)) < 0) {
                fprintf(stderr, PROG ": %s: write: %s\n", tmp_path, strerror(-r));
                goto fail;
        }
        const uint64_t t1 = sl_now_ns();
        r = fsync(fd) < 0 ? -errno : 0;
        if (close(fd) < 0 && !r)
                r = -errno;
        fd = -1;
        if (r < 0) {
                fprintf(stderr, PROG ": %s: %s\n", tmp_path, strerror(-r));
                goto fail;
        }
        const uint64_t t2 = sl_now_ns();
        /* the name appears only once the file is complete; without --force never replace a
         * file that appeared meanwhile */
        if (force ? rename(tmp_path, out_path) < 0
                  : renameat2(AT_FDCWD, tmp_path, AT_FDCWD, out_path, RENAME_NOREPLACE) < 0) {
                fprintf(stderr, PROG ": %s: %s\n", out_path, strerror(errno));
                goto fail;
        }
        tmp_made = false;

        const double secs = (double)(t2 - t0) / 1e9;
        printf("%s: %s, %u layers, %s weights, %u tensors, %u tokens, %.3f GB\n", out_path,
               m.sh->name, m.n_layer, type_name, m.n_t, m.n_vocab, (double)file_size / 1e9);
        printf("write: %.3f s (%.2f GB/s; generate+write %.3f s, fsync %.3f s, %ld threads)\n",
               secs, (double)file_size / 1e9 / secs, (double)(t1 - t0) / 1e9,
               (double)(t2 - t1) / 1e9, n_threads);
        ret = 0;
fail:
        if (fd >= 0)
                close(fd);
        if (tmp_made)
                unlink(tmp_path);
        free(hdr.p);
        free(m.t);
        for (uint32_t i = 0; i < n_tables; i++)
                free(tables[i].v);
        gguf_close(vocab);
        return ret;
}
