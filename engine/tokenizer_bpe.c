/* tokenizer_bpe.c — byte-level BPE ("gpt2"): the pre-tokenizer (PCRE2, UTF + UCP, JIT) with
 * the regexes llama.cpp uses per tokenizer.ggml.pre value, GPT-2's byte-to-unicode mapping,
 * and merges by rank from a hash table. Invalid UTF-8 becomes U+FFFD before splitting, as
 * in llama.cpp. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include "tokenizer_internal.h"

/* ---- GPT-2 bytes_to_unicode ---- */

static bool byte_is_printable(unsigned b)
{
        return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

/* The bytes without a printable glyph take 256, 257, ... in byte order:
 * 0x00-0x20 -> 256-288, 0x7F-0xA0 -> 289-322, 0xAD -> 323. */
uint32_t tok_byte_to_cpt(uint8_t b)
{
        if (byte_is_printable(b))
                return b;
        if (b <= 0x20)
                return 256u + b;
        if (b >= 0x7f && b <= 0xa0)
                return 289u + (b - 0x7fu);
        return 323; /* 0xAD */
}

int tok_cpt_to_byte(uint32_t cpt)
{
        if (cpt < 256)
                return byte_is_printable(cpt) ? (int)cpt : -1;
        if (cpt <= 288)
                return (int)(cpt - 256);
        if (cpt <= 322)
                return (int)(cpt - 289 + 0x7f);
        if (cpt == 323)
                return 0xad;
        return -1;
}

/* ---- pre-tokenizer regexes ----
 * \s is spelled out as Unicode White_Space, the set llama.cpp's own splitters use (PCRE2's
 * \s under UCP leaves out U+0085). */
#define WS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
#define S_ "[" WS "]"
#define NS_ "[^" WS "]"

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|" S_ "+(?!" NS_ ")|" S_ "+"
#define RE_CONTRACTIONS_CI "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3 RE_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|" \
        S_ "*[\\r\\n]+|" S_ "+(?!" NS_ ")|" S_ "+"
#define RE_QWEN2 RE_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|" \
        S_ "*[\\r\\n]+|" S_ "+(?!" NS_ ")|" S_ "+"

struct pre_def {
        const char *names;      /* '|'-separated tokenizer.ggml.pre values */
        const char *re[TOK_MAX_REGEX];
        bool ignore_merges;
        bool add_bos;
};

static const struct pre_def pre_defs[] = {
        { "default", { "[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]" }, false, false },
        { "llama3|llama-v3|llama-bpe|falcon3|pixtral", { RE_LLAMA3 }, true, true },
        { "dbrx|smaug-bpe", { RE_LLAMA3 }, false, false },
        { "gpt-2|phi-2|jina-es|jina-de|gigachat|jina-v2-es|jina-v2-de|mpt|olmo|jais|exaone4|a.x-4.0|mellum|trillion|granite-docling",
          { RE_GPT2 }, false, false },
        { "qwen2|deepseek-r1-qwen|megrez|stablelm2|hunyuan", { RE_QWEN2 }, false, false },
        { "starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b", { "\\p{N}", RE_GPT2 }, false, false },
        { "falcon", { "[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]" }, false, false },
};

static bool name_in_list(const char *list, const char *s, size_t n)
{
        for (const char *p = list; *p;) {
                const char *e = strchr(p, '|');
                size_t l = e ? (size_t)(e - p) : strlen(p);
                if (l == n && memcmp(p, s, n) == 0)
                        return true;
                if (!e)
                        break;
                p = e + 1;
        }
        return false;
}

int tok_bpe_init(struct engine_tokenizer *t, const char *pre, size_t pre_len, bool *add_bos,
                 struct sl_error *err)
{
        const struct pre_def *d = NULL;

        if (pre_len == 0) {
                pre = "default";
                pre_len = 7;
        }
        for (size_t i = 0; i < SL_ARRAY_SIZE(pre_defs) && !d; i++)
                if (name_in_list(pre_defs[i].names, pre, pre_len))
                        d = &pre_defs[i];
        if (!d)
                return sl_errorf(err, -EINVAL, "unknown pre-tokenizer type (tokenizer.ggml.pre): '%.*s'",
                                 (int)SL_MIN(pre_len, 64), pre);
        snprintf(t->pre, sizeof(t->pre), "%.*s", (int)SL_MIN(pre_len, sizeof(t->pre) - 1), pre);
        t->ignore_merges = d->ignore_merges;
        *add_bos = d->add_bos;

        for (uint32_t i = 0; i < TOK_MAX_REGEX && d->re[i]; i++) {
                int ec;
                PCRE2_SIZE eo;
                pcre2_code *re = pcre2_compile((PCRE2_SPTR)d->re[i], PCRE2_ZERO_TERMINATED,
                                               PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
                if (!re) {
                        PCRE2_UCHAR msg[128];
                        pcre2_get_error_message(ec, msg, sizeof(msg));
                        return sl_errorf(err, -EINVAL, "pre-tokenizer regex %u for '%s': %s at %zu",
                                         i, t->pre, (const char *)msg, (size_t)eo);
                }
                /* JIT is an optimization; the interpreter gives the same matches */
                (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
                t->re[t->n_re++] = re;
        }
        return 0;
}

void tok_bpe_free(struct engine_tokenizer *t)
{
        for (uint32_t i = 0; i < t->n_re; i++)
                pcre2_code_free(t->re[i]);
        t->n_re = 0;
}

/* ---- merges ---- */

static uint64_t merge_hash(const char *l, size_t ll, const char *r, size_t rl)
{
        uint64_t h = tok_hash_bytes(TOK_HASH_SEED, l, ll);
        h = tok_hash_bytes(h, " ", 1);
        return tok_hash_bytes(h, r, rl);
}

int tok_bpe_load_merges(struct engine_tokenizer *t, const struct gguf_array *a, struct sl_error *err)
{
        uint64_t total = 0;

        if (a->n > UINT32_MAX / 4)
                return sl_errorf(err, -E2BIG, "tokenizer.ggml.merges: %llu entries is too many",
                                 (unsigned long long)a->n);
        for (uint64_t i = 0; i < a->n; i++)
                total += a->items[i].str.len;
        if (total > UINT32_MAX)
                return sl_errorf(err, -E2BIG, "tokenizer.ggml.merges: %llu bytes is too many",
                                 (unsigned long long)total);

        uint32_t cap = 16;
        while (cap < a->n * 2)
                cap <<= 1;
        t->merge_text = malloc(total ? total : 1);
        t->merges = calloc(a->n ? a->n : 1, sizeof(*t->merges));
        t->merge_index = calloc(cap, sizeof(*t->merge_index));
        if (!t->merge_text || !t->merges || !t->merge_index)
                return sl_errorf(err, -ENOMEM, "tokenizer merges: out of memory");
        t->merge_mask = cap - 1;

        uint32_t off = 0;
        for (uint64_t i = 0; i < a->n; i++) {
                struct gguf_str s = a->items[i].str;
                /* split at the first space after the first byte (as llama.cpp) */
                const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
                if (!sp)
                        return sl_errorf(err, -EINVAL, "tokenizer.ggml.merges[%llu] has no space separating two parts",
                                         (unsigned long long)i);
                struct tok_merge m = { .off = off, .llen = (uint32_t)(sp - s.ptr),
                                       .rlen = (uint32_t)(s.len - (uint64_t)(sp - s.ptr) - 1), .rank = (uint32_t)i };
                memcpy(t->merge_text + off, s.ptr, s.len);
                off += (uint32_t)s.len;

                const char *mt = t->merge_text + m.off;
                uint32_t h = (uint32_t)merge_hash(mt, m.llen, mt + m.llen + 1, m.rlen) & t->merge_mask;
                bool dup = false;
                while (t->merge_index[h]) {
                        const struct tok_merge *o = &t->merges[t->merge_index[h] - 1];
                        if (o->llen == m.llen && o->rlen == m.rlen &&
                            memcmp(t->merge_text + o->off, mt, m.llen + 1 + m.rlen) == 0) {
                                dup = true; /* the first (lowest) rank wins */
                                break;
                        }
                        h = (h + 1) & t->merge_mask;
                }
                if (dup)
                        continue;
                t->merges[t->n_merges] = m;
                t->merge_index[h] = ++t->n_merges;
        }
        return 0;
}

int64_t tok_bpe_rank(const struct engine_tokenizer *t, const char *l, size_t ll, const char *r, size_t rl)
{
        if (!t->merge_index)
                return -1;
        uint32_t h = (uint32_t)merge_hash(l, ll, r, rl) & t->merge_mask;
        while (t->merge_index[h]) {
                const struct tok_merge *m = &t->merges[t->merge_index[h] - 1];
                const char *mt = t->merge_text + m->off;
                if (m->llen == ll && m->rlen == rl && memcmp(mt, l, ll) == 0 && memcmp(mt + ll + 1, r, rl) == 0)
                        return m->rank;
                h = (h + 1) & t->merge_mask;
        }
        return -1;
}

/* ---- encoding ---- */

struct span {
        size_t off, len;
};

struct spans {
        struct span *v;
        size_t n, cap;
};

static int spans_push(struct spans *s, size_t off, size_t len)
{
        if (len == 0)
                return 0;
        if (s->n == s->cap) {
                size_t cap = s->cap ? s->cap * 2 : 64;
                struct span *v = realloc(s->v, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                s->v = v;
                s->cap = cap;
        }
        s->v[s->n++] = (struct span){ off, len };
        return 0;
}

struct bpe_sym {
        int32_t prev, next;
        uint32_t off, n;
};

struct bpe_work {
        char *enc;
        size_t enc_cap;
        struct bpe_sym *sym;
        size_t sym_cap;
        struct tok_heap heap;
};

static int add_bigram(const struct engine_tokenizer *t, struct bpe_work *w, int32_t left, int32_t right)
{
        if (left < 0 || right < 0)
                return 0;
        const struct bpe_sym *l = &w->sym[left], *r = &w->sym[right];
        int64_t rank = tok_bpe_rank(t, w->enc + l->off, l->n, w->enc + r->off, r->n);
        if (rank < 0)
                return 0;
        struct tok_bigram b = { .prio = -(double)rank, .left = left, .right = right,
                                .lsize = l->n, .rsize = r->n };
        return tok_heap_push(&w->heap, b);
}

/* One pre-tokenized word: byte-encode, merge, emit. */
static int encode_word(const struct engine_tokenizer *t, struct bpe_work *w, const uint8_t *word, size_t len,
                       struct tok_ids *out)
{
        int r;

        if (len > SIZE_MAX / 2 || len > INT32_MAX / 2)
                return -E2BIG;
        if (w->enc_cap < len * 2) {
                char *e = realloc(w->enc, len * 2);
                if (!e)
                        return -ENOMEM;
                w->enc = e;
                w->enc_cap = len * 2;
        }
        if (w->sym_cap < len) {
                struct bpe_sym *s = realloc(w->sym, len * sizeof(*s));
                if (!s)
                        return -ENOMEM;
                w->sym = s;
                w->sym_cap = len;
        }
        size_t el = 0;
        int32_t n = 0;
        for (size_t i = 0; i < len; i++) {
                uint32_t c = tok_byte_to_cpt(word[i]);
                w->sym[n] = (struct bpe_sym){ .prev = n - 1, .next = i + 1 == len ? -1 : n + 1,
                                              .off = (uint32_t)el, .n = c < 0x80 ? 1 : 2 };
                if (c < 0x80) {
                        w->enc[el++] = (char)c;
                } else {
                        w->enc[el++] = (char)(0xc0 | (c >> 6));
                        w->enc[el++] = (char)(0x80 | (c & 0x3f));
                }
                n++;
        }

        if (t->ignore_merges) {
                int32_t id = tok_find(t, w->enc, el);
                if (id >= 0)
                        return tok_ids_push(out, id);
        }

        w->heap.n = 0;
        for (int32_t i = 1; i < n; i++)
                if ((r = add_bigram(t, w, i - 1, i)) < 0)
                        return r;
        while (w->heap.n) {
                struct tok_bigram b = tok_heap_pop(&w->heap);
                struct bpe_sym *l = &w->sym[b.left], *rs = &w->sym[b.right];
                /* stale: either side changed since this pair was queued */
                if (l->n == 0 || rs->n == 0 || l->n != b.lsize || rs->n != b.rsize)
                        continue;
                l->n += rs->n;
                rs->n = 0;
                l->next = rs->next;
                if (rs->next >= 0)
                        w->sym[rs->next].prev = b.left;
                if ((r = add_bigram(t, w, l->prev, b.left)) < 0)
                        return r;
                if ((r = add_bigram(t, w, b.left, l->next)) < 0)
                        return r;
        }

        for (int32_t i = 0; i != -1; i = w->sym[i].next) {
                const char *s = w->enc + w->sym[i].off;
                int32_t id = tok_find(t, s, w->sym[i].n);
                if (id >= 0) {
                        if ((r = tok_ids_push(out, id)) < 0)
                                return r;
                        continue;
                }
                /* llama.cpp: each byte of the encoded text looked up alone; misses are dropped */
                for (uint32_t j = 0; j < w->sym[i].n; j++) {
                        id = tok_find(t, s + j, 1);
                        if (id >= 0 && (r = tok_ids_push(out, id)) < 0)
                                return r;
                }
        }
        return 0;
}

/* Valid UTF-8 copy of s: each byte that does not start a valid sequence becomes U+FFFD. */
static int sanitize(const char *s, size_t len, char **out, size_t *out_len)
{
        if (len > SIZE_MAX / 3)
                return -E2BIG;
        char *b = malloc(len * 3 + 1);
        if (!b)
                return -ENOMEM;
        size_t o = 0;
        for (size_t i = 0; i < len;) {
                utf8proc_int32_t cp;
                utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                                      (utf8proc_ssize_t)SL_MIN(len - i, 4), &cp);
                if (k > 0) {
                        memcpy(b + o, s + i, (size_t)k);
                        o += (size_t)k;
                        i += (size_t)k;
                } else {
                        memcpy(b + o, "\xef\xbf\xbd", 3);
                        o += 3;
                        i++;
                }
        }
        *out = b;
        *out_len = o;
        return 0;
}

int tok_bpe_encode(const struct engine_tokenizer *t, const char *text, size_t len, struct tok_ids *out)
{
        char *clean = NULL;
        size_t clen = 0;
        struct spans a = { 0 }, b = { 0 };
        struct bpe_work w = { 0 };
        pcre2_match_data *md = NULL;
        pcre2_match_context *mc = NULL;
        pcre2_jit_stack *js = NULL;
        int r;

        if (len == 0)
                return 0;
        if ((r = sanitize(text, len, &clean, &clen)) < 0)
                return r;
        md = pcre2_match_data_create(1, NULL);
        mc = pcre2_match_context_create(NULL);
        js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
        if (!md || !mc || !js) {
                r = -ENOMEM;
                goto out;
        }
        pcre2_jit_stack_assign(mc, NULL, js);

        if ((r = spans_push(&a, 0, clen)) < 0)
                goto out;
        for (uint32_t k = 0; k < t->n_re; k++) {
                b.n = 0;
                for (size_t i = 0; i < a.n; i++) {
                        /* each span is its own subject: lookaheads see its end as the end of text,
                         * as in llama.cpp, which splits span by span */
                        const PCRE2_SPTR subj = (PCRE2_SPTR)clean + a.v[i].off;
                        const size_t sl = a.v[i].len;
                        size_t pos = 0, gap = 0;
                        while (pos < sl) {
                                int rc = pcre2_match(t->re[k], subj, sl, pos, PCRE2_NO_UTF_CHECK, md, mc);
                                if (rc == PCRE2_ERROR_NOMATCH)
                                        break;
                                if (rc < 0) {
                                        r = rc == PCRE2_ERROR_NOMEMORY || rc == PCRE2_ERROR_JIT_STACKLIMIT ? -ENOMEM : -EINVAL;
                                        goto out;
                                }
                                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                                if (ov[1] == ov[0]) {
                                        /* empty match: step over one character and search on */
                                        pos = ov[0] + 1;
                                        while (pos < sl && (subj[pos] & 0xc0) == 0x80)
                                                pos++;
                                        continue;
                                }
                                if ((r = spans_push(&b, a.v[i].off + gap, ov[0] - gap)) < 0 ||
                                    (r = spans_push(&b, a.v[i].off + ov[0], ov[1] - ov[0])) < 0)
                                        goto out;
                                gap = pos = ov[1];
                        }
                        if ((r = spans_push(&b, a.v[i].off + gap, sl - gap)) < 0)
                                goto out;
                }
                struct spans tmp = a;
                a = b;
                b = tmp;
        }

        for (size_t i = 0; i < a.n; i++)
                if ((r = encode_word(t, &w, (const uint8_t *)clean + a.v[i].off, a.v[i].len, out)) < 0)
                        goto out;
        r = 0;
out:
        free(w.enc);
        free(w.sym);
        free(w.heap.v);
        free(a.v);
        free(b.v);
        pcre2_jit_stack_free(js);
        pcre2_match_context_free(mc);
        pcre2_match_data_free(md);
        free(clean);
        return r;
}
