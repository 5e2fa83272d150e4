/* test-model-load — engine_model_load on small generated GGUF files: a valid tiny model of
 * each architecture (llama with rope_freqs, qwen2 with biases, gemma3 with q/k norms) loads
 * with the expected hparams and runs a forward pass with finite logits; and hostile files
 * fail with an error naming the problem: an unknown architecture, a missing tensor, a
 * tensor of the wrong shape, a tensor of a type the engine cannot use, a head count that
 * does not divide, and a zero epsilon. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

static int bad;
#define CHECK(cond)                                                                     \
        do {                                                                            \
                if (!(cond)) {                                                          \
                        printf("%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
                        bad = 1;                                                        \
                }                                                                       \
        } while (0)

/* ---- a minimal GGUF writer ---- */

struct buf {
        uint8_t *p;
        size_t n, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
        if (b->n + n > b->cap) {
                b->cap = (b->n + n) * 2 + 256;
                b->p = realloc(b->p, b->cap);
                if (!b->p)
                        abort();
        }
        memcpy(b->p + b->n, d, n);
        b->n += n;
}
static void u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void str(struct buf *b, const char *s) { u64(b, strlen(s)); put(b, s, strlen(s)); }
static void kv_str(struct buf *b, const char *k, const char *v) { str(b, k); u32(b, GGUF_TYPE_STRING); str(b, v); }
static void kv_u32(struct buf *b, const char *k, uint32_t v) { str(b, k); u32(b, GGUF_TYPE_UINT32); u32(b, v); }
static void kv_f32(struct buf *b, const char *k, float v) { str(b, k); u32(b, GGUF_TYPE_FLOAT32); put(b, &v, 4); }

#define MAX_T 64
struct tensor {
        char name[64];
        uint32_t n_dims;
        uint64_t ne[2];
        uint32_t type;
};

struct spec {
        const char *arch;
        uint32_t n_embd, n_head, n_head_kv, n_ff, n_layer, vocab;
        float eps;
        struct tensor t[MAX_T];
        uint32_t nt;
};

static void add(struct spec *s, const char *name, uint64_t ne0, uint64_t ne1)
{
        struct tensor *t = &s->t[s->nt++];
        snprintf(t->name, sizeof(t->name), "%s", name);
        t->n_dims = ne1 ? 2 : 1;
        t->ne[0] = ne0;
        t->ne[1] = ne1 ? ne1 : 1;
        t->type = GGML_TYPE_F32;
}

static struct tensor *find(struct spec *s, const char *name)
{
        for (uint32_t i = 0; i < s->nt; i++)
                if (!strcmp(s->t[i].name, name))
                        return &s->t[i];
        return NULL;
}

static void make_spec(struct spec *s, const char *arch)
{
        memset(s, 0, sizeof(*s));
        s->arch = arch;
        s->n_embd = 64;
        s->n_head = 4;
        s->n_head_kv = 2;
        s->n_ff = 96;
        s->n_layer = 2;
        s->vocab = 3 + 256;
        s->eps = 1e-5f;
        const uint32_t E = s->n_embd, D = E / s->n_head, KV = D * s->n_head_kv;
        add(s, "token_embd.weight", E, s->vocab);
        add(s, "output_norm.weight", E, 0);
        if (!strcmp(arch, "llama")) {
                add(s, "output.weight", E, s->vocab);
                add(s, "rope_freqs.weight", D / 2, 0);
        }
        char n[64];
        for (uint32_t l = 0; l < s->n_layer; l++) {
#define L(suffix, a, b) snprintf(n, sizeof(n), "blk.%u." suffix, l), add(s, n, a, b)
                L("attn_norm.weight", E, 0);
                L("attn_q.weight", E, E);
                L("attn_k.weight", E, KV);
                L("attn_v.weight", E, KV);
                L("attn_output.weight", E, E);
                L("ffn_norm.weight", E, 0);
                L("ffn_gate.weight", E, s->n_ff);
                L("ffn_up.weight", E, s->n_ff);
                L("ffn_down.weight", s->n_ff, E);
                if (!strcmp(arch, "qwen2")) {
                        L("attn_q.bias", E, 0);
                        L("attn_k.bias", KV, 0);
                        L("attn_v.bias", KV, 0);
                }
                if (!strcmp(arch, "gemma3")) {
                        L("attn_q_norm.weight", D, 0);
                        L("attn_k_norm.weight", D, 0);
                        L("post_attention_norm.weight", E, 0);
                        L("post_ffw_norm.weight", E, 0);
                }
#undef L
        }
}

static uint64_t nbytes(const struct tensor *t)
{
        uint32_t blck = 1, size = 4;
        ggml_type_size(t->type, &blck, &size);
        return t->ne[0] / blck * size * t->ne[1];
}

static uint32_t rng = 12345;
static float frand(void)
{
        rng = rng * 1664525u + 1013904223u;
        return ((rng >> 8) / 16777216.0f - 0.5f) * 0.5f;
}

static int write_spec(const struct spec *s, const char *path)
{
        struct buf b = { 0 };
        char k[128];
        u32(&b, GGUF_MAGIC);
        u32(&b, 3);
        u64(&b, s->nt);
        const bool gemma = !strcmp(s->arch, "gemma3");
        u64(&b, 13 + (gemma ? 1 : 0));
        kv_str(&b, "general.architecture", s->arch);
#define K(suffix) (snprintf(k, sizeof(k), "%s." suffix, s->arch), k)
        kv_u32(&b, K("context_length"), 256);
        kv_u32(&b, K("embedding_length"), s->n_embd);
        kv_u32(&b, K("block_count"), s->n_layer);
        kv_u32(&b, K("feed_forward_length"), s->n_ff);
        kv_u32(&b, K("attention.head_count"), s->n_head);
        kv_u32(&b, K("attention.head_count_kv"), s->n_head_kv);
        kv_f32(&b, K("attention.layer_norm_rms_epsilon"), s->eps);
        kv_f32(&b, K("rope.freq_base"), 10000.0f);
        if (gemma)
                kv_u32(&b, K("attention.sliding_window"), 4);
#undef K
        kv_str(&b, "tokenizer.ggml.model", "llama");
        /* vocabulary: <unk> <s> </s> and the 256 byte tokens */
        str(&b, "tokenizer.ggml.tokens");
        u32(&b, GGUF_TYPE_ARRAY);
        u32(&b, GGUF_TYPE_STRING);
        u64(&b, s->vocab);
        str(&b, "<unk>");
        str(&b, "<s>");
        str(&b, "</s>");
        for (int i = 0; i < 256; i++) {
                char t[8];
                snprintf(t, sizeof(t), "<0x%02X>", i);
                str(&b, t);
        }
        str(&b, "tokenizer.ggml.scores");
        u32(&b, GGUF_TYPE_ARRAY);
        u32(&b, GGUF_TYPE_FLOAT32);
        u64(&b, s->vocab);
        for (uint32_t i = 0; i < s->vocab; i++) {
                float f = 0.0f;
                put(&b, &f, 4);
        }
        str(&b, "tokenizer.ggml.token_type");
        u32(&b, GGUF_TYPE_ARRAY);
        u32(&b, GGUF_TYPE_INT32);
        u64(&b, s->vocab);
        for (uint32_t i = 0; i < s->vocab; i++) {
                int32_t ty = i == 0 ? 2 : i < 3 ? 3 : 6;
                put(&b, &ty, 4);
        }
        uint64_t off = 0;
        for (uint32_t i = 0; i < s->nt; i++) {
                str(&b, s->t[i].name);
                u32(&b, s->t[i].n_dims);
                for (uint32_t d = 0; d < s->t[i].n_dims; d++)
                        u64(&b, s->t[i].ne[d]);
                u32(&b, s->t[i].type);
                u64(&b, off);
                off = (off + nbytes(&s->t[i]) + 31) / 32 * 32;
        }
        while (b.n % 32)
                put(&b, "", 1);
        size_t base = b.n;
        for (uint32_t i = 0; i < s->nt; i++) {
                const struct tensor *t = &s->t[i];
                const bool norm = t->n_dims == 1 && strstr(t->name, "norm");
                if (t->type == GGML_TYPE_F32) {
                        for (uint64_t j = 0; j < t->ne[0] * t->ne[1]; j++) {
                                float f = norm ? 1.0f + frand() : frand();
                                put(&b, &f, 4);
                        }
                } else {
                        for (uint64_t j = 0; j < nbytes(t); j++)
                                put(&b, "\x11", 1);
                }
                while ((b.n - base) % 32)
                        put(&b, "", 1);
        }
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(b.p, 1, b.n, f) != b.n) {
                printf("cannot write %s\n", path);
                return -1;
        }
        fclose(f);
        free(b.p);
        return 0;
}

static char tmpdir[] = "/tmp/sluice-model-test-XXXXXX";

static int load(const struct spec *s, struct engine_model **m, struct sl_error *err)
{
        char path[128];
        snprintf(path, sizeof(path), "%s/m.gguf", tmpdir);
        if (write_spec(s, path) < 0)
                return -EIO;
        struct engine_load_opts o = { .reader = { .no_direct = true } };
        return engine_model_load(path, &o, m, err);
}

static void expect_fail(struct spec *s, const char *what, const char *needle)
{
        struct engine_model *m = NULL;
        struct sl_error err = { 0 };
        int r = load(s, &m, &err);
        printf("%s: %d: %s\n", what, r, err.msg);
        CHECK(r < 0 && m == NULL);
        CHECK(strstr(err.msg, needle) != NULL);
        engine_model_free(m);
}

static void run_valid(const char *arch)
{
        struct spec s;
        make_spec(&s, arch);
        struct engine_model *m = NULL;
        struct sl_error err = { 0 };
        int r = load(&s, &m, &err);
        if (r < 0) {
                printf("%s: load failed: %s\n", arch, err.msg);
                bad = 1;
                return;
        }
        const struct engine_hparams *hp = engine_model_hparams(m);
        CHECK(hp->n_embd == 64 && hp->n_head == 4 && hp->n_head_kv == 2 && hp->n_layer == 2);
        CHECK(hp->n_vocab == s.vocab && hp->head_dim_k == 16);
        CHECK(hp->tied_output == !!strcmp(arch, "llama"));
        CHECK(hp->rope_type == (!strcmp(arch, "llama") ? ENGINE_ROPE_NORM : ENGINE_ROPE_NEOX));
        CHECK(engine_model_load_stats(m)->bytes > 0);
        struct engine_ctx *ctx = NULL;
        struct engine_kv *kv = NULL;
        struct engine_kv_opts ko = { .block_size = 4, .n_blocks = 8, .max_seqs = 2, .max_seq_len = 16 };
        CHECK(engine_ctx_create(m, 2, 8, &ctx, &err) == 0);
        CHECK(engine_kv_create(m, &ko, &kv, &err) == 0);
        if (ctx && kv) {
                int32_t tok[8], pos[8], seq[8];
                uint8_t lg[8];
                int sq = engine_kv_seq_open(kv);
                for (int i = 0; i < 8; i++) {
                        tok[i] = 3 + i * 17;
                        pos[i] = i;
                        seq[i] = sq;
                        lg[i] = 1;
                }
                float *out = malloc(sizeof(float) * 8 * s.vocab);
                struct engine_batch b = { 8, tok, pos, seq, lg };
                r = engine_forward(ctx, kv, &b, out, &err);
                CHECK(r == 8);
                int finite = 1;
                for (size_t i = 0; i < 8 * (size_t)s.vocab; i++)
                        finite &= isfinite(out[i]);
                CHECK(finite);
                /* the same tokens one by one in a second sequence give the same logits */
                int s2 = engine_kv_seq_open(kv);
                float *one = malloc(sizeof(float) * s.vocab);
                double maxd = 0;
                for (int i = 0; i < 8; i++) {
                        struct engine_batch b1 = { 1, &tok[i], &pos[i], &s2, &lg[i] };
                        CHECK(engine_forward(ctx, kv, &b1, one, &err) == 1);
                        for (uint32_t j = 0; j < s.vocab; j++)
                                maxd = fmax(maxd, fabs((double)one[j] - out[(size_t)i * s.vocab + j]));
                }
                printf("%s: loads, forward ok, prefill vs decode max |diff| %g\n", arch, maxd);
                CHECK(maxd <= 1e-5);
                free(one);
                free(out);
        }
        engine_kv_free(kv);
        engine_ctx_free(ctx);
        engine_model_free(m);
}

int main(void)
{
        if (!mkdtemp(tmpdir)) {
                printf("SKIP: cannot create a temporary directory\n");
                return 77;
        }
        run_valid("llama");
        run_valid("qwen2");
        run_valid("gemma3");

        struct spec s;
        make_spec(&s, "gpt2");
        expect_fail(&s, "unknown arch", "gpt2");

        make_spec(&s, "llama");
        find(&s, "blk.1.attn_q.weight")->ne[1] = 32;
        expect_fail(&s, "wrong shape", "blk.1.attn_q.weight");

        make_spec(&s, "qwen2");
        find(&s, "blk.0.attn_k.bias")->name[0] = 'x';
        expect_fail(&s, "missing tensor", "blk.0.attn_k.bias");

        make_spec(&s, "llama");
        find(&s, "blk.0.ffn_up.weight")->type = GGML_TYPE_I32; /* not a CPU engine type */
        expect_fail(&s, "unsupported type", "blk.0.ffn_up.weight");

        make_spec(&s, "llama");
        s.n_head_kv = 3;
        expect_fail(&s, "head_count_kv", "head_count_kv");

        make_spec(&s, "gemma3");
        s.eps = 0.0f;
        expect_fail(&s, "zero epsilon", "epsilon");

        char path[128];
        snprintf(path, sizeof(path), "%s/m.gguf", tmpdir);
        unlink(path);
        rmdir(tmpdir);
        printf("%s\n", bad ? "FAIL" : "ok");
        return bad;
}
