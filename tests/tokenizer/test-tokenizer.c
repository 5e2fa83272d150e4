/* test-tokenizer — tokenizer parts that need no model: GPT-2 byte-to-unicode mapping, SPM
 * and BPE on tiny vocabularies built as in-memory GGUF images, special-token parsing, EOG,
 * the streaming detokenizer's UTF-8 handling, and hostile vocabulary metadata. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "storage.h"
#include "tokenizer_internal.h"

static int failures;

#define CHECK(cond, ...)                                                          \
        do {                                                                      \
                if (!(cond)) {                                                    \
                        failures++;                                               \
                        fprintf(stderr, "%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond); \
                        fprintf(stderr, __VA_ARGS__);                             \
                        fputc('\n', stderr);                                      \
                }                                                                 \
        } while (0)

/* ---- a minimal GGUF v3 writer (metadata only) ---- */

struct wb {
        uint8_t *p;
        size_t n, cap;
        uint64_t n_kv;
};

static void put(struct wb *w, const void *d, size_t n)
{
        if (!n) /* an empty buffer's p is NULL: memcpy(NULL, ..., 0) is still UB */
                return;
        if (w->n + n > w->cap) {
                w->cap = (w->n + n) * 2 + 256;
                w->p = realloc(w->p, w->cap);
                if (!w->p)
                        abort();
        }
        memcpy(w->p + w->n, d, n);
        w->n += n;
}
static void put_u32(struct wb *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(struct wb *w, uint64_t v) { put(w, &v, 8); }
static void put_str(struct wb *w, const char *s, size_t n) { put_u64(w, n); put(w, s, n); }

static void kv_str(struct wb *w, const char *k, const char *v)
{
        put_str(w, k, strlen(k));
        put_u32(w, GGUF_TYPE_STRING);
        put_str(w, v, strlen(v));
        w->n_kv++;
}
static void kv_u32(struct wb *w, const char *k, uint32_t v)
{
        put_str(w, k, strlen(k));
        put_u32(w, GGUF_TYPE_UINT32);
        put_u32(w, v);
        w->n_kv++;
}
static void kv_bool(struct wb *w, const char *k, bool v)
{
        uint8_t b = v;
        put_str(w, k, strlen(k));
        put_u32(w, GGUF_TYPE_BOOL);
        put(w, &b, 1);
        w->n_kv++;
}
static void kv_strs(struct wb *w, const char *k, const char *const *v, size_t n)
{
        put_str(w, k, strlen(k));
        put_u32(w, GGUF_TYPE_ARRAY);
        put_u32(w, GGUF_TYPE_STRING);
        put_u64(w, n);
        for (size_t i = 0; i < n; i++)
                put_str(w, v[i], strlen(v[i]));
        w->n_kv++;
}
static void kv_arr32(struct wb *w, const char *k, uint32_t type, const void *v, size_t n)
{
        put_str(w, k, strlen(k));
        put_u32(w, GGUF_TYPE_ARRAY);
        put_u32(w, type);
        put_u64(w, n);
        put(w, v, 4 * n);
        w->n_kv++;
}

/* header + kvs, padded to the default alignment */
static uint8_t *finish(struct wb *w, size_t *len)
{
        struct wb out = { 0 };
        put(&out, "GGUF", 4);
        put_u32(&out, 3);
        put_u64(&out, 0);
        put_u64(&out, w->n_kv);
        put(&out, w->p, w->n);
        while (out.n % GGUF_DEFAULT_ALIGNMENT)
                put(&out, "", 1);
        free(w->p);
        *len = out.n;
        return out.p;
}

static int create(struct wb *w, struct engine_tokenizer **t, struct gguf_file **g, uint8_t **img,
                  struct sl_error *e)
{
        size_t len;
        *img = finish(w, &len);
        int r = gguf_parse(*img, len, g, e);
        if (r < 0)
                return -1000 + r; /* a parse failure is a test bug, keep it distinct */
        return engine_tokenizer_create(*g, t, e);
}

static void destroy(struct engine_tokenizer *t, struct gguf_file *g, uint8_t *img)
{
        engine_tokenizer_free(t);
        gguf_close(g);
        free(img);
}

/* ---- SPM vocabulary: <unk> <s> </s> <0x00>..<0xFF> then words ---- */

enum { SPM_WORDS = 10 };
static const char *const spm_words[SPM_WORDS] = { "\xe2\x96\x81", "h", "e", "l", "o", "he", "ll", "hell", "hello",
                                                  "\xe2\x96\x81hello" };
static const float spm_word_scores[SPM_WORDS] = { -1, -5, -5, -5, -5, -3, -3, -2, -1.5f, -1 };

static void spm_vocab(struct wb *w, int variant)
{
        static char bytes[256][7];
        const char *toks[3 + 256 + SPM_WORDS + 2];
        float scores[SL_ARRAY_SIZE(toks)];
        int32_t types[SL_ARRAY_SIZE(toks)];
        size_t n = 0;
        toks[n] = "<unk>", scores[n] = 0, types[n++] = ENGINE_TOKEN_UNKNOWN;
        toks[n] = "<s>", scores[n] = 0, types[n++] = ENGINE_TOKEN_CONTROL;
        toks[n] = "</s>", scores[n] = 0, types[n++] = ENGINE_TOKEN_CONTROL;
        for (int b = 0; b < 256; b++) {
                snprintf(bytes[b], sizeof(bytes[b]), "<0x%02X>", b);
                toks[n] = bytes[b], scores[n] = 0, types[n++] = ENGINE_TOKEN_BYTE;
        }
        for (int i = 0; i < SPM_WORDS; i++)
                toks[n] = spm_words[i], scores[n] = spm_word_scores[i], types[n++] = ENGINE_TOKEN_NORMAL;
        toks[n] = "<tag>", scores[n] = 0, types[n++] = ENGINE_TOKEN_USER_DEFINED;
        toks[n] = "<|im_end|>", scores[n] = 0, types[n++] = ENGINE_TOKEN_NORMAL;

        kv_str(w, "tokenizer.ggml.model", "llama");
        if (variant == 1) /* a duplicate token text */
                toks[n - 1] = "hell";
        if (variant == 2) /* a malformed byte token */
                toks[3 + 0x41] = "<0xZZ>";
        kv_strs(w, "tokenizer.ggml.tokens", toks, n);
        kv_arr32(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, variant == 3 ? n - 1 : n);
        kv_arr32(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, variant == 4 ? n + 1 - 2 : n);
        kv_u32(w, "tokenizer.ggml.bos_token_id", variant == 5 ? (uint32_t)n : 1);
        kv_u32(w, "tokenizer.ggml.eos_token_id", 2);
        kv_u32(w, "tokenizer.ggml.unknown_token_id", variant == 6 ? 0xffffffffu : 0);
}

#define SPM_BYTE(b) (3 + (b))
#define SPM_WORD(i) (3 + 256 + (i))
#define SPM_TAG (3 + 256 + SPM_WORDS)
#define SPM_IMEND (SPM_TAG + 1)

static int tok(const struct engine_tokenizer *t, const char *s, bool add, bool parse, int32_t *ids, size_t cap)
{
        return engine_tokenize(t, s, strlen(s), add, parse, ids, cap, NULL);
}

static void test_spm(void)
{
        struct wb w = { 0 };
        struct engine_tokenizer *t = NULL;
        struct gguf_file *g = NULL;
        uint8_t *img;
        struct sl_error e = { { 0 } };
        int32_t ids[64];

        spm_vocab(&w, 0);
        int r = create(&w, &t, &g, &img, &e);
        CHECK(r == 0, "create: %d %s", r, e.msg);
        if (r < 0) {
                destroy(t, g, img);
                return;
        }
        CHECK(engine_token_bos(t) == 1 && engine_token_eos(t) == 2 && engine_tokenizer_add_bos(t), "bos/eos");

        /* "hello" -> "▁hello": one merged token, after BOS */
        int n = tok(t, "hello", true, false, ids, 64);
        CHECK(n == 2 && ids[0] == 1 && ids[1] == SPM_WORD(9), "hello: n=%d %d %d", n, ids[0], ids[1]);

        /* byte fallback for characters the vocabulary lacks */
        n = tok(t, "\xc3\xa9", false, false, ids, 64);
        CHECK(n == 3 && ids[0] == SPM_WORD(0) && ids[1] == SPM_BYTE(0xc3) && ids[2] == SPM_BYTE(0xa9),
              "byte fallback: n=%d", n);

        /* special text: parsed only with parse_special; user-defined always */
        n = tok(t, "o<s>o", false, true, ids, 64);
        CHECK(n == 5 && ids[2] == 1 && ids[3] == SPM_WORD(0) && ids[4] == SPM_WORD(4), "parse <s>: n=%d", n);
        n = tok(t, "o<s>o", false, false, ids, 64);
        bool has_bos = false;
        for (int i = 0; i < n; i++)
                has_bos |= ids[i] == 1;
        CHECK(n > 0 && !has_bos, "<s> as text must not become BOS (n=%d)", n);
        n = tok(t, "o<tag>o", false, false, ids, 64);
        CHECK(n == 5 && ids[2] == SPM_TAG, "user-defined <tag>: n=%d", n);

        /* -ENOSPC reports the size needed */
        size_t needed = 0;
        r = engine_tokenize(t, "hello", 5, true, false, ids, 1, &needed);
        CHECK(r == -ENOSPC && needed == 2, "ENOSPC: r=%d needed=%zu", r, needed);

        /* EOG: eos, and <|im_end|> by its text even though typed normal */
        CHECK(engine_token_is_eog(t, 2) && engine_token_is_eog(t, SPM_IMEND) && !engine_token_is_eog(t, 1) &&
              !engine_token_is_eog(t, -1) && !engine_token_is_eog(t, 1 << 30), "eog");

        /* pieces: ▁ is a space, byte tokens their byte, control text only when rendered */
        char buf[16];
        CHECK(engine_token_to_piece(t, SPM_WORD(9), false, buf, sizeof(buf)) == 6 && memcmp(buf, " hello", 6) == 0, "piece");
        CHECK(engine_token_to_piece(t, SPM_BYTE(0x41), false, buf, sizeof(buf)) == 1 && buf[0] == 'A', "byte piece");
        CHECK(engine_token_to_piece(t, 1, false, buf, sizeof(buf)) == 0, "control hidden");
        CHECK(engine_token_to_piece(t, 1, true, buf, sizeof(buf)) == 3 && memcmp(buf, "<s>", 3) == 0, "control rendered");
        CHECK(engine_token_to_piece(t, SPM_WORD(9), false, buf, 2) == 6, "short buffer reports size");
        CHECK(engine_token_to_piece(t, -1, false, buf, sizeof(buf)) == -EINVAL, "bad id");

        /* ---- streaming detokenizer ---- */
        struct engine_detok d;
        char out[64];
        engine_detok_init(&d);
        CHECK(engine_detok_push(t, &d, 1, out, sizeof(out)) == 0, "bos gives nothing");
        r = engine_detok_push(t, &d, SPM_WORD(9), out, sizeof(out));
        CHECK(r == 5 && memcmp(out, "hello", 5) == 0, "leading SentencePiece space stripped once: %d", r);
        r = engine_detok_push(t, &d, SPM_WORD(9), out, sizeof(out));
        CHECK(r == 6 && memcmp(out, " hello", 6) == 0, "later spaces kept: %d", r);
        /* € split over three byte tokens: held until complete */
        CHECK(engine_detok_push(t, &d, SPM_BYTE(0xe2), out, sizeof(out)) == 0, "held 1");
        CHECK(engine_detok_push(t, &d, SPM_BYTE(0x82), out, sizeof(out)) == 0, "held 2");
        CHECK(engine_detok_push(t, &d, SPM_BYTE(0xac), out, 2) == -ENOSPC, "ENOSPC");
        r = engine_detok_push(t, &d, SPM_BYTE(0xac), out, sizeof(out));
        CHECK(r == 3 && memcmp(out, "\xe2\x82\xac", 3) == 0, "euro after retry: %d", r);
        /* invalid byte -> U+FFFD; truncated sequence broken by ASCII -> one U+FFFD then the char */
        r = engine_detok_push(t, &d, SPM_BYTE(0xff), out, sizeof(out));
        CHECK(r == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0, "0xff: %d", r);
        engine_detok_push(t, &d, SPM_BYTE(0xe2), out, sizeof(out));
        engine_detok_push(t, &d, SPM_BYTE(0x82), out, sizeof(out));
        r = engine_detok_push(t, &d, SPM_BYTE('A'), out, sizeof(out));
        CHECK(r == 4 && memcmp(out, "\xef\xbf\xbd" "A", 4) == 0, "broken sequence: %d", r);
        /* a surrogate lead (ED A0) can never complete */
        r = engine_detok_push(t, &d, SPM_BYTE(0xed), out, sizeof(out));
        CHECK(r == 0, "ED held: %d", r);
        r = engine_detok_push(t, &d, SPM_BYTE(0xa0), out, sizeof(out));
        CHECK(r == 6, "ED A0 -> two U+FFFD: %d", r);
        /* end of stream with a partial character */
        engine_detok_push(t, &d, SPM_BYTE(0xf0), out, sizeof(out));
        engine_detok_push(t, &d, SPM_BYTE(0x9f), out, sizeof(out));
        r = engine_detok_flush(&d, out, sizeof(out));
        CHECK(r == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0 && d.n_pending == 0, "flush: %d", r);
        CHECK(engine_detok_flush(&d, out, sizeof(out)) == 0, "flush empty");

        destroy(t, g, img);
}

/* ---- BPE: the 256 byte symbols, "ab", "abc", merges "a b", "ab c" ---- */

static void bpe_vocab(struct wb *w, const char *pre, bool bad_merge, bool add_bos)
{
        static char sym[256][3];
        const char *toks[256 + 3];
        size_t n = 0;
        for (int b = 0; b < 256; b++) {
                uint32_t c = tok_byte_to_cpt((uint8_t)b);
                if (c < 0x80) {
                        sym[b][0] = (char)c;
                        sym[b][1] = 0;
                } else {
                        sym[b][0] = (char)(0xc0 | (c >> 6));
                        sym[b][1] = (char)(0x80 | (c & 0x3f));
                        sym[b][2] = 0;
                }
                toks[n++] = sym[b];
        }
        toks[n++] = "ab";
        toks[n++] = "abc";
        toks[n++] = "<|endoftext|>";
        const char *merges[] = { "a b", bad_merge ? "abc" : "ab c" };
        kv_str(w, "tokenizer.ggml.model", "gpt2");
        kv_str(w, "tokenizer.ggml.pre", pre);
        kv_strs(w, "tokenizer.ggml.tokens", toks, n);
        kv_strs(w, "tokenizer.ggml.merges", merges, 2);
        if (add_bos)
                kv_bool(w, "tokenizer.ggml.add_bos_token", true);
}

static void test_bpe(void)
{
        struct wb w = { 0 };
        struct engine_tokenizer *t = NULL;
        struct gguf_file *g = NULL;
        uint8_t *img;
        struct sl_error e = { { 0 } };
        int32_t ids[64];

        /* the mapping: a bijection onto 256 code points, printable bytes map to themselves */
        bool seen[324] = { 0 };
        int bad = 0;
        for (int b = 0; b < 256; b++) {
                uint32_t c = tok_byte_to_cpt((uint8_t)b);
                if (c >= 324 || seen[c] || tok_cpt_to_byte(c) != b)
                        bad++;
                else
                        seen[c] = true;
        }
        CHECK(bad == 0, "byte_to_cpt not a bijection (%d bad)", bad);
        CHECK(tok_byte_to_cpt(' ') == 0x120 && tok_byte_to_cpt('\n') == 0x10a && tok_byte_to_cpt('A') == 'A' &&
              tok_byte_to_cpt(0xad) == 0x143 && tok_cpt_to_byte(0x144) == -1, "known GPT-2 symbols");

        bpe_vocab(&w, "gpt-2", false, false);
        int r = create(&w, &t, &g, &img, &e);
        CHECK(r == 0, "create: %d %s", r, e.msg);
        if (r < 0) {
                destroy(t, g, img);
                return;
        }
        /* gpt-2 splits " abc" as one word " abc": Ġ + abc after merges a+b, ab+c */
        int n = tok(t, "abc abc", true, false, ids, 64);
        CHECK(n == 3 && ids[0] == 257 && ids[1] == ' ' && ids[2] == 257,
              "abc abc: n=%d %d %d %d", n, ids[0], ids[1], ids[2]);
        /* ids of byte symbols are their byte values here */
        n = tok(t, "\xe2\x82\xac", false, false, ids, 64);
        CHECK(n == 3 && ids[0] == 0xe2 && ids[1] == 0x82 && ids[2] == 0xac, "euro as bytes: n=%d", n);
        /* invalid UTF-8 becomes U+FFFD before splitting */
        n = tok(t, "\xff", false, false, ids, 64);
        CHECK(n == 3 && ids[0] == 0xef && ids[1] == 0xbf && ids[2] == 0xbd, "0xff -> U+FFFD: n=%d", n);
        /* <|endoftext|>: control by its text (EOG), parsed only with parse_special */
        n = tok(t, "<|endoftext|>", false, true, ids, 64);
        CHECK(n == 1 && ids[0] == 258 && engine_token_is_eog(t, 258), "endoftext: n=%d", n);
        n = tok(t, "<|endoftext|>", false, false, ids, 64);
        CHECK(n > 1, "endoftext as text: n=%d", n);
        /* pieces undo the byte mapping */
        char buf[8];
        CHECK(engine_token_to_piece(t, 0x20, false, buf, sizeof(buf)) == 1 && buf[0] == ' ', "space piece");
        destroy(t, g, img);

        /* qwen2's pre-tokenizer: digits one by one */
        w = (struct wb){ 0 };
        bpe_vocab(&w, "qwen2", false, false);
        r = create(&w, &t, &g, &img, &e);
        CHECK(r == 0, "qwen2 create: %d %s", r, e.msg);
        n = r == 0 ? tok(t, "123", false, false, ids, 64) : -1;
        CHECK(n == 3 && ids[0] == '1' && ids[2] == '3', "qwen2 digits: n=%d", n);
        destroy(t, g, img);
}

/* ---- hostile metadata ---- */

static void expect_error(struct wb *w, const char *what, const char *needle)
{
        struct engine_tokenizer *t = NULL;
        struct gguf_file *g = NULL;
        uint8_t *img;
        struct sl_error e = { { 0 } };
        int r = create(w, &t, &g, &img, &e);
        CHECK(r < 0 && r > -1000 && t == NULL && strstr(e.msg, needle), "%s: r=%d msg='%s' (want '%s')", what, r,
              e.msg, needle);
        destroy(t, g, img);
}

static void test_hostile(void)
{
        struct wb w;
        w = (struct wb){ 0 }, spm_vocab(&w, 1), expect_error(&w, "duplicate", "duplicate token");
        w = (struct wb){ 0 }, spm_vocab(&w, 2), expect_error(&w, "bad byte token", "<0xXX>");
        w = (struct wb){ 0 }, spm_vocab(&w, 3), expect_error(&w, "scores length", "tokenizer.ggml.scores has");
        w = (struct wb){ 0 }, spm_vocab(&w, 4), expect_error(&w, "types length", "tokenizer.ggml.token_type has");
        w = (struct wb){ 0 }, spm_vocab(&w, 5), expect_error(&w, "bos out of range", "out of range");
        w = (struct wb){ 0 }, spm_vocab(&w, 6), expect_error(&w, "unk out of range", "out of range");
        w = (struct wb){ 0 }, kv_str(&w, "tokenizer.ggml.model", "llama"), expect_error(&w, "no tokens", "tokenizer.ggml.tokens");
        w = (struct wb){ 0 }, expect_error(&w, "no model", "tokenizer.ggml.model");
        w = (struct wb){ 0 }, kv_str(&w, "tokenizer.ggml.model", "klingon"), expect_error(&w, "unknown model", "klingon");
        w = (struct wb){ 0 }, bpe_vocab(&w, "no-such-pre", false, false), expect_error(&w, "unknown pre", "no-such-pre");
        w = (struct wb){ 0 }, bpe_vocab(&w, "gpt-2", true, false), expect_error(&w, "merge without space", "merges[1]");
        {
                /* token list of the wrong type */
                w = (struct wb){ 0 };
                uint32_t v[2] = { 1, 2 };
                kv_str(&w, "tokenizer.ggml.model", "llama");
                kv_arr32(&w, "tokenizer.ggml.tokens", GGUF_TYPE_UINT32, v, 2);
                expect_error(&w, "tokens not strings", "tokenizer.ggml.tokens");
        }
        {
                /* BPE without merges */
                w = (struct wb){ 0 };
                const char *toks[] = { "a", "b" };
                kv_str(&w, "tokenizer.ggml.model", "gpt2");
                kv_strs(&w, "tokenizer.ggml.tokens", toks, 2);
                expect_error(&w, "no merges", "merges");
        }
}

int main(void)
{
        test_spm();
        test_bpe();
        test_hostile();
        engine_tokenizer_free(NULL);
        if (failures) {
                fprintf(stderr, "%d failure(s)\n", failures);
                return 1;
        }
        printf("tokenizer: all checks passed\n");
        return 0;
}
