/* tokenizer.c — the vocabulary from GGUF metadata (validated as untrusted input), special
 * tokens and the end-of-generation set, partitioning of text around special tokens,
 * token_to_piece and the streaming detokenizer. The SentencePiece and BPE algorithms live
 * in tokenizer_spm.c and tokenizer_bpe.c. Behaviour follows llama.cpp's llama-vocab.cpp. */
#define _GNU_SOURCE /* qsort_r */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "tokenizer_internal.h"

/* ---- small helpers ---- */

int tok_ids_push(struct tok_ids *ids, int32_t id)
{
        if (ids->n == ids->cap) {
                size_t cap = ids->cap ? ids->cap * 2 : 64;
                int32_t *v = realloc(ids->v, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                ids->v = v;
                ids->cap = cap;
        }
        ids->v[ids->n++] = id;
        return 0;
}

int32_t tok_find(const struct engine_tokenizer *t, const char *s, size_t len)
{
        uint32_t h = (uint32_t)tok_hash_bytes(TOK_HASH_SEED, s, len) & t->index_mask;
        while (t->index[h]) {
                const struct tok_entry *e = &t->tok[t->index[h] - 1];
                if (e->len == len && memcmp(t->text + e->off, s, len) == 0)
                        return (int32_t)(t->index[h] - 1);
                h = (h + 1) & t->index_mask;
        }
        return -1;
}

/* Lowest id whose text is one of list (NULL-terminated), or -1. */
static int32_t find_first_of(const struct engine_tokenizer *t, const char *const *list)
{
        int32_t best = -1;
        for (const char *const *p = list; *p; p++) {
                int32_t id = tok_find(t, *p, strlen(*p));
                if (id >= 0 && (best < 0 || id < best))
                        best = id;
        }
        return best;
}

/* ---- loading ---- */

static int load_id(const struct gguf_file *g, const char *key, uint32_t n_vocab, int32_t *id,
                   struct sl_error *err)
{
        uint32_t v;
        int r = gguf_get_u32(g, key, &v, err);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        if (v >= n_vocab)
                return sl_errorf(err, -EINVAL, "%s = %u is out of range (vocabulary has %u tokens)", key, v, n_vocab);
        *id = (int32_t)v;
        return 0;
}

static int load_bool(const struct gguf_file *g, const char *key, bool *b, struct sl_error *err)
{
        int r = gguf_get_bool(g, key, b, err);
        return r == -ENOENT ? 0 : r;
}

static int load_vocab(struct engine_tokenizer *t, const struct gguf_file *g, struct sl_error *err)
{
        const struct gguf_array *toks, *scores = NULL, *types = NULL;
        int r;

        r = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &toks, err);
        if (r == -ENOENT)
                return sl_errorf(err, -EINVAL, "no tokenizer.ggml.tokens in the model");
        if (r < 0)
                return r;
        if (toks->n == 0)
                return sl_errorf(err, -EINVAL, "tokenizer.ggml.tokens is empty");
        if (toks->n > INT32_MAX / 2)
                return sl_errorf(err, -E2BIG, "tokenizer.ggml.tokens: %llu tokens is too many",
                                 (unsigned long long)toks->n);
        t->n_vocab = (uint32_t)toks->n;

        r = gguf_get_arr(g, "tokenizer.ggml.scores", GGUF_TYPE_COUNT, &scores, err);
        if (r == -ENOENT)
                scores = NULL;
        else if (r < 0)
                return r;
        else if (scores->type != GGUF_TYPE_FLOAT32 && scores->type != GGUF_TYPE_INT32)
                return sl_errorf(err, -EINVAL, "tokenizer.ggml.scores must be float32 or int32, not type %u", scores->type);
        else if (scores->n != toks->n)
                return sl_errorf(err, -EINVAL, "tokenizer.ggml.scores has %llu entries for %u tokens",
                                 (unsigned long long)scores->n, t->n_vocab);

        r = gguf_get_arr(g, "tokenizer.ggml.token_type", GGUF_TYPE_COUNT, &types, err);
        if (r == -ENOENT)
                types = NULL;
        else if (r < 0)
                return r;
        else if (types->type != GGUF_TYPE_INT32 && types->type != GGUF_TYPE_UINT32)
                return sl_errorf(err, -EINVAL, "tokenizer.ggml.token_type must be int32, not type %u", types->type);
        else if (types->n != toks->n)
                return sl_errorf(err, -EINVAL, "tokenizer.ggml.token_type has %llu entries for %u tokens",
                                 (unsigned long long)types->n, t->n_vocab);

        uint64_t total = 0;
        for (uint32_t i = 0; i < t->n_vocab; i++) {
                uint64_t l = toks->items[i].str.len;
                total += l ? l : 32; /* room for "[EMPTY_i]" */
        }
        if (total > UINT32_MAX)
                return sl_errorf(err, -E2BIG, "tokenizer.ggml.tokens: %llu bytes of text is too much",
                                 (unsigned long long)total);

        uint32_t cap = 16;
        while (cap < t->n_vocab * 2u)
                cap <<= 1;
        t->text = malloc(total);
        t->tok = calloc(t->n_vocab, sizeof(*t->tok));
        t->index = calloc(cap, sizeof(*t->index));
        if (!t->text || !t->tok || !t->index)
                return sl_errorf(err, -ENOMEM, "tokenizer vocabulary: out of memory");
        t->index_mask = cap - 1;

        uint32_t off = 0;
        for (uint32_t i = 0; i < t->n_vocab; i++) {
                struct gguf_str s = toks->items[i].str;
                struct tok_entry *e = &t->tok[i];
                e->off = off;
                if (s.len == 0) {
                        /* llama.cpp names empty tokens so that they stay distinct */
                        int n = snprintf(t->text + off, 32, "[EMPTY_%u]", i);
                        e->len = (uint32_t)n;
                } else {
                        memcpy(t->text + off, s.ptr, s.len);
                        e->len = (uint32_t)s.len;
                }
                off += e->len;

                if (scores) {
                        const uint8_t *p = scores->data + 4 * (size_t)i;
                        uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
                        e->score = scores->type == GGUF_TYPE_FLOAT32 ? sl_bits_f32(u) : (float)(int32_t)u;
                }
                e->attr = TOK_ATTR_NORMAL;
                if (types) {
                        const uint8_t *p = types->data + 4 * (size_t)i;
                        int32_t ty = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
                        switch (ty) {
                        case ENGINE_TOKEN_NORMAL: e->attr = TOK_ATTR_NORMAL; break;
                        case ENGINE_TOKEN_UNKNOWN: e->attr = TOK_ATTR_UNKNOWN; break;
                        case ENGINE_TOKEN_CONTROL: e->attr = TOK_ATTR_CONTROL; break;
                        case ENGINE_TOKEN_USER_DEFINED: e->attr = TOK_ATTR_USER_DEFINED; break;
                        case ENGINE_TOKEN_UNUSED: e->attr = TOK_ATTR_UNUSED; break;
                        case ENGINE_TOKEN_BYTE: e->attr = TOK_ATTR_BYTE; break;
                        default: e->attr = TOK_ATTR_UNDEFINED; break;
                        }
                }
                if (e->attr & TOK_ATTR_BYTE) {
                        const char *x = t->text + e->off;
                        unsigned v;
                        char tail;
                        if (e->len != 6 || memcmp(x, "<0x", 3) != 0 || x[5] != '>' ||
                            sscanf(x + 3, "%2x%c", &v, &tail) != 2 || tail != '>')
                                return sl_errorf(err, -EINVAL, "byte token %u is '%.*s', not <0xXX>", i,
                                                 (int)SL_MIN(e->len, 32), x);
                        e->byte = (uint8_t)v;
                }

                uint32_t h = (uint32_t)tok_hash_bytes(TOK_HASH_SEED, t->text + e->off, e->len) & t->index_mask;
                while (t->index[h]) {
                        const struct tok_entry *o = &t->tok[t->index[h] - 1];
                        if (o->len == e->len && memcmp(t->text + o->off, t->text + e->off, e->len) == 0)
                                return sl_errorf(err, -EINVAL, "duplicate token in vocabulary: '%.*s' has ids %u and %u",
                                                 (int)SL_MIN(e->len, 64), t->text + e->off, t->index[h] - 1, i);
                        h = (h + 1) & t->index_mask;
                }
                t->index[h] = i + 1;
        }
        return 0;
}

/* ---- special tokens, EOG ---- */

static const char *const eot_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
        "<EOT>", "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
        "<end_of_utterance>", NULL,
};
static const char *const eom_texts[] = { "<|eom_id|>", NULL };
static const char *const fim_pre_texts[] = { "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>",
        "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL };
static const char *const fim_suf_texts[] = { "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>",
        "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL };
static const char *const fim_mid_texts[] = { "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>",
        "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL };
static const char *const fim_pad_texts[] = { "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL };
static const char *const fim_rep_texts[] = { "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL };
static const char *const fim_sep_texts[] = { "<|file_sep|>", NULL };
/* texts that end generation whatever the metadata says (llama.cpp's list) */
static const char *const eog_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL,
};

static void detect_by_text(struct engine_tokenizer *t, int32_t *id, const char *const *list)
{
        if (*id >= 0)
                return;
        *id = find_first_of(t, list);
        if (*id >= 0)
                t->tok[*id].attr |= TOK_ATTR_CONTROL; /* as llama.cpp: these are control tokens */
}

static int build_eog(struct engine_tokenizer *t, struct sl_error *err)
{
        t->eog = calloc(t->n_vocab, 1);
        if (!t->eog)
                return sl_errorf(err, -ENOMEM, "tokenizer: out of memory");

        detect_by_text(t, &t->eot, eot_texts);
        detect_by_text(t, &t->eom, eom_texts);
        detect_by_text(t, &t->fim_pre, fim_pre_texts);
        detect_by_text(t, &t->fim_suf, fim_suf_texts);
        detect_by_text(t, &t->fim_mid, fim_mid_texts);
        detect_by_text(t, &t->fim_pad, fim_pad_texts);
        detect_by_text(t, &t->fim_rep, fim_rep_texts);
        detect_by_text(t, &t->fim_sep, fim_sep_texts);

        const int32_t always[] = { t->fim_pad, t->fim_rep, t->fim_sep, t->eos, t->eot, t->eom };
        for (size_t i = 0; i < SL_ARRAY_SIZE(always); i++)
                if (always[i] >= 0)
                        t->eog[always[i]] = 1;
        for (const char *const *p = eog_texts; *p; p++) {
                int32_t id = tok_find(t, *p, strlen(*p));
                if (id >= 0) {
                        t->eog[id] = 1;
                        t->tok[id].attr |= TOK_ATTR_CONTROL;
                }
        }
        /* gpt-oss: these are rendered text, not control */
        static const char *const render[] = { "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL };
        for (const char *const *p = render; *p; p++) {
                int32_t id = tok_find(t, *p, strlen(*p));
                if (id >= 0)
                        t->tok[id].attr = TOK_ATTR_USER_DEFINED;
        }
        /* o200k_harmony / solar-open: <|end|> separates messages there, it does not end generation */
        int32_t ret = tok_find(t, "<|return|>", 10), call = tok_find(t, "<|call|>", 8);
        int32_t calls = tok_find(t, "<|calls|>", 9), flush = tok_find(t, "<|flush|>", 9);
        int32_t end = tok_find(t, "<|end|>", 7);
        if (end >= 0 && ((ret >= 0 && call >= 0) || (calls >= 0 && flush >= 0))) {
                t->eog[end] = 0;
                t->tok[end].attr = TOK_ATTR_USER_DEFINED;
        }
        /* gemma4: </s> is text there */
        int32_t tr = tok_find(t, "<|tool_response>", 16), s = tok_find(t, "</s>", 4);
        if (tr >= 0 && s >= 0 && t->eog[s] && s != t->eos) {
                t->eog[s] = 0;
                t->tok[s].attr = TOK_ATTR_NORMAL;
        }
        return 0;
}

static int cmp_special(const void *a, const void *b, void *u)
{
        const struct engine_tokenizer *t = u;
        int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
        if (t->tok[x].len != t->tok[y].len)
                return t->tok[x].len > t->tok[y].len ? -1 : 1;
        return (x > y) - (x < y);
}

static int build_special(struct engine_tokenizer *t, struct sl_error *err)
{
        uint32_t n = 0;
        uint64_t nodes = 1;
        for (uint32_t i = 0; i < t->n_vocab; i++)
                if (t->tok[i].attr & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) {
                        n++;
                        nodes += t->tok[i].len;
                }
        if (nodes > INT32_MAX)
                return sl_errorf(err, -E2BIG, "special tokens: too much text");
        t->special = malloc((n ? n : 1) * sizeof(*t->special));
        t->special_rank = malloc(t->n_vocab * sizeof(*t->special_rank));
        t->trie = malloc(nodes * sizeof(*t->trie));
        if (!t->special || !t->special_rank || !t->trie)
                return sl_errorf(err, -ENOMEM, "special tokens: out of memory");
        for (uint32_t i = 0; i < t->n_vocab; i++) {
                t->special_rank[i] = UINT32_MAX;
                if (t->tok[i].attr & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN))
                        t->special[t->n_special++] = (int32_t)i;
        }
        /* longest first, as llama.cpp's partition; ties by id so the order is deterministic */
        qsort_r(t->special, t->n_special, sizeof(*t->special), cmp_special, t);
        for (uint32_t i = 0; i < t->n_special; i++)
                t->special_rank[t->special[i]] = i;

        for (int i = 0; i < 256; i++)
                t->trie_root[i] = -1;
        t->n_trie = 0;
        for (uint32_t k = 0; k < t->n_special; k++) {
                int32_t id = t->special[k];
                const uint8_t *s = (const uint8_t *)t->text + t->tok[id].off;
                uint32_t len = t->tok[id].len;
                int32_t *slot = &t->trie_root[s[0]];
                int32_t node = -1;
                for (uint32_t j = 0; j < len; j++) {
                        if (j > 0) {
                                slot = &t->trie[node].child;
                                while (*slot >= 0 && t->trie[*slot].byte != s[j])
                                        slot = &t->trie[*slot].sibling;
                        }
                        if (*slot < 0) {
                                int32_t nn = (int32_t)t->n_trie++;
                                t->trie[nn] = (struct trie_node){ .child = -1, .sibling = -1, .token = -1, .byte = s[j] };
                                *slot = nn;
                        }
                        node = *slot;
                }
                t->trie[node].token = id;
        }
        return 0;
}

static int build_pieces(struct engine_tokenizer *t, struct sl_error *err)
{
        uint64_t total = 0;
        for (uint32_t i = 0; i < t->n_vocab; i++)
                total += t->tok[i].len; /* a piece is never longer than its text */
        if (total > UINT32_MAX)
                return sl_errorf(err, -E2BIG, "token pieces: too much text");
        t->piece = malloc(total ? total : 1);
        t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof(*t->piece_off));
        if (!t->piece || !t->piece_off)
                return sl_errorf(err, -ENOMEM, "token pieces: out of memory");

        uint32_t o = 0;
        for (uint32_t i = 0; i < t->n_vocab; i++) {
                const struct tok_entry *e = &t->tok[i];
                const uint8_t *s = (const uint8_t *)t->text + e->off;
                t->piece_off[i] = o;
                if (e->attr & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED)) {
                        memcpy(t->piece + o, s, e->len);
                        o += e->len;
                } else if (e->attr & TOK_ATTR_NORMAL) {
                        if (t->kind == TOK_KIND_SPM) {
                                /* U+2581 stands for a space */
                                for (uint32_t j = 0; j < e->len;) {
                                        if (j + 3 <= e->len && s[j] == 0xe2 && s[j + 1] == 0x96 && s[j + 2] == 0x81) {
                                                t->piece[o++] = ' ';
                                                j += 3;
                                        } else {
                                                t->piece[o++] = (char)s[j++];
                                        }
                                }
                        } else {
                                /* undo bytes_to_unicode, code point by code point */
                                for (uint32_t j = 0; j < e->len;) {
                                        utf8proc_int32_t cp;
                                        utf8proc_ssize_t k = utf8proc_iterate(s + j, e->len - j, &cp);
                                        int b = k > 0 ? tok_cpt_to_byte((uint32_t)cp) : -1;
                                        if (b < 0) {
                                                /* not a byte symbol: keep the text as it is (llama.cpp
                                                 * writes an [UNK_BYTE_..] marker here) */
                                                uint32_t step = k > 0 ? (uint32_t)k : 1;
                                                if (o + step > total)
                                                        return sl_errorf(err, -EINVAL, "token %u: piece overflow", i);
                                                memcpy(t->piece + o, s + j, step);
                                                o += step;
                                                j += step;
                                        } else {
                                                t->piece[o++] = (char)b;
                                                j += (uint32_t)k;
                                        }
                                }
                        }
                } else if (e->attr & TOK_ATTR_BYTE) {
                        t->piece[o++] = (char)e->byte;
                }
        }
        t->piece_off[t->n_vocab] = o;
        return 0;
}

int engine_tokenizer_create(const struct gguf_file *g, struct engine_tokenizer **out, struct sl_error *err)
{
        struct engine_tokenizer *t;
        struct gguf_str model, pre = { 0 };
        int r;

        *out = NULL;
        t = calloc(1, sizeof(*t));
        if (!t)
                return sl_errorf(err, -ENOMEM, "tokenizer: out of memory");

        r = gguf_get_str(g, "tokenizer.ggml.model", &model, err);
        if (r == -ENOENT) {
                r = sl_errorf(err, -EINVAL, "no tokenizer.ggml.model in the model");
                goto fail;
        }
        if (r < 0)
                goto fail;
        r = gguf_get_str(g, "tokenizer.ggml.pre", &pre, err);
        if (r == -ENOENT)
                pre.len = 0;
        else if (r < 0)
                goto fail;

        t->bos = t->eos = t->eot = t->eom = t->unk = t->sep = t->pad = t->mask = -1;
        t->fim_pre = t->fim_suf = t->fim_mid = t->fim_pad = t->fim_rep = t->fim_sep = -1;
        if (gguf_str_eq(model, "llama")) {
                t->kind = TOK_KIND_SPM;
                t->bos = 1;
                t->eos = 2;
                t->unk = 0;
                t->add_bos = true;
                t->add_space_prefix = true;
        } else if (gguf_str_eq(model, "gpt2")) {
                t->kind = TOK_KIND_BPE;
                t->bos = t->eos = 11;
        } else {
                r = sl_errorf(err, -EOPNOTSUPP, "unsupported tokenizer model (tokenizer.ggml.model): '%.*s'",
                              (int)SL_MIN(model.len, 64), model.ptr);
                goto fail;
        }

        if ((r = load_vocab(t, g, err)) < 0)
                goto fail;

        if (t->kind == TOK_KIND_BPE) {
                const struct gguf_array *merges;
                r = gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &merges, err);
                if (r == -ENOENT) {
                        r = sl_errorf(err, -EINVAL, "BPE tokenizer without tokenizer.ggml.merges");
                        goto fail;
                }
                if (r < 0)
                        goto fail;
                if ((r = tok_bpe_load_merges(t, merges, err)) < 0)
                        goto fail;
                if ((r = tok_bpe_init(t, pre.ptr, pre.len, &t->add_bos, err)) < 0)
                        goto fail;
        }

        /* defaults that fall outside this vocabulary are dropped, as llama.cpp does */
        int32_t *defaults[] = { &t->bos, &t->eos, &t->unk };
        for (size_t i = 0; i < SL_ARRAY_SIZE(defaults); i++)
                if (*defaults[i] >= (int32_t)t->n_vocab)
                        *defaults[i] = -1;

        static const struct { const char *key; size_t field; } ids[] = {
                { "tokenizer.ggml.bos_token_id", offsetof(struct engine_tokenizer, bos) },
                { "tokenizer.ggml.eos_token_id", offsetof(struct engine_tokenizer, eos) },
                { "tokenizer.ggml.eot_token_id", offsetof(struct engine_tokenizer, eot) },
                { "tokenizer.ggml.eom_token_id", offsetof(struct engine_tokenizer, eom) },
                { "tokenizer.ggml.unknown_token_id", offsetof(struct engine_tokenizer, unk) },
                { "tokenizer.ggml.seperator_token_id", offsetof(struct engine_tokenizer, sep) },
                { "tokenizer.ggml.padding_token_id", offsetof(struct engine_tokenizer, pad) },
                { "tokenizer.ggml.mask_token_id", offsetof(struct engine_tokenizer, mask) },
                { "tokenizer.ggml.fim_pre_token_id", offsetof(struct engine_tokenizer, fim_pre) },
                { "tokenizer.ggml.fim_suf_token_id", offsetof(struct engine_tokenizer, fim_suf) },
                { "tokenizer.ggml.fim_mid_token_id", offsetof(struct engine_tokenizer, fim_mid) },
                { "tokenizer.ggml.fim_pad_token_id", offsetof(struct engine_tokenizer, fim_pad) },
                { "tokenizer.ggml.fim_rep_token_id", offsetof(struct engine_tokenizer, fim_rep) },
                { "tokenizer.ggml.fim_sep_token_id", offsetof(struct engine_tokenizer, fim_sep) },
        };
        for (size_t i = 0; i < SL_ARRAY_SIZE(ids); i++)
                if ((r = load_id(g, ids[i].key, t->n_vocab, (int32_t *)((char *)t + ids[i].field), err)) < 0)
                        goto fail;

        if ((r = load_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) < 0 ||
            (r = load_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, err)) < 0 ||
            (r = load_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err)) < 0)
                goto fail;
        if (t->add_bos && t->bos < 0) {
                r = sl_errorf(err, -EINVAL, "tokenizer.ggml.add_bos_token is true but there is no BOS token");
                goto fail;
        }
        if (t->add_eos && t->eos < 0) {
                r = sl_errorf(err, -EINVAL, "tokenizer.ggml.add_eos_token is true but there is no EOS token");
                goto fail;
        }

        for (int b = 0; b < 256; b++) {
                char hex[7];
                snprintf(hex, sizeof(hex), "<0x%02X>", b);
                t->byte_tok[b] = tok_find(t, hex, 6);
                if (t->byte_tok[b] < 0) {
                        char c = (char)b;
                        t->byte_tok[b] = tok_find(t, &c, 1);
                }
        }

        if ((r = build_eog(t, err)) < 0 || (r = build_special(t, err)) < 0 || (r = build_pieces(t, err)) < 0)
                goto fail;

        *out = t;
        return 0;
fail:
        engine_tokenizer_free(t);
        return r;
}

void engine_tokenizer_free(struct engine_tokenizer *t)
{
        if (!t)
                return;
        tok_bpe_free(t);
        free(t->text);
        free(t->tok);
        free(t->index);
        free(t->merge_text);
        free(t->merges);
        free(t->merge_index);
        free(t->piece);
        free(t->piece_off);
        free(t->eog);
        free(t->special);
        free(t->special_rank);
        free(t->trie);
        free(t);
}

uint32_t engine_tokenizer_n_vocab(const struct engine_tokenizer *t) { return t->n_vocab; }
int32_t engine_token_bos(const struct engine_tokenizer *t) { return t->bos; }
int32_t engine_token_eos(const struct engine_tokenizer *t) { return t->eos; }
bool engine_tokenizer_add_bos(const struct engine_tokenizer *t) { return t->add_bos; }

bool engine_token_is_eog(const struct engine_tokenizer *t, int32_t id)
{
        return id >= 0 && (uint32_t)id < t->n_vocab && t->eog[id];
}

/* ---- special-token partition ----
 * llama.cpp takes the special tokens longest first and, for each, splits every remaining
 * text fragment at its non-overlapping occurrences. Same result here without a pass per
 * token: collect every occurrence with a trie walk, order them by (token rank, position)
 * and keep those that do not overlap bytes already claimed. */

struct occ {
        uint32_t rank;
        uint32_t pos;
};

static int cmp_occ(const void *a, const void *b)
{
        const struct occ *x = a, *y = b;
        if (x->rank != y->rank)
                return x->rank < y->rank ? -1 : 1;
        return (x->pos > y->pos) - (x->pos < y->pos);
}

static int partition(const struct engine_tokenizer *t, const char *text, size_t len, bool parse_special,
                     int32_t **tok_at_out)
{
        struct occ *occ = NULL;
        size_t n_occ = 0, cap = 0;
        int32_t *tok_at = NULL; /* token starting at byte i, -1 none; -2 inside a token */
        int r = 0;

        *tok_at_out = NULL;
        if (t->n_special == 0 || len == 0)
                return 0;
        for (size_t i = 0; i < len; i++) {
                int32_t node = t->trie_root[(uint8_t)text[i]];
                for (size_t j = i; node >= 0;) {
                        int32_t id = t->trie[node].token;
                        if (id >= 0 && (parse_special || !(t->tok[id].attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN)))) {
                                if (n_occ == cap) {
                                        cap = cap ? cap * 2 : 64;
                                        struct occ *v = realloc(occ, cap * sizeof(*v));
                                        if (!v) {
                                                r = -ENOMEM;
                                                goto out;
                                        }
                                        occ = v;
                                }
                                occ[n_occ++] = (struct occ){ t->special_rank[id], (uint32_t)i };
                        }
                        if (++j >= len)
                                break;
                        node = t->trie[node].child;
                        while (node >= 0 && t->trie[node].byte != (uint8_t)text[j])
                                node = t->trie[node].sibling;
                }
        }
        if (n_occ == 0)
                goto out;

        qsort(occ, n_occ, sizeof(*occ), cmp_occ);
        tok_at = malloc(len * sizeof(*tok_at));
        if (!tok_at) {
                r = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < len; i++)
                tok_at[i] = -1;
        for (size_t k = 0; k < n_occ; k++) {
                int32_t id = t->special[occ[k].rank];
                uint32_t p = occ[k].pos, l = t->tok[id].len;
                bool free_span = true;
                for (uint32_t j = p; j < p + l; j++)
                        if (tok_at[j] != -1) {
                                free_span = false;
                                break;
                        }
                if (!free_span)
                        continue;
                tok_at[p] = id;
                for (uint32_t j = p + 1; j < p + l; j++)
                        tok_at[j] = -2;
        }
        *tok_at_out = tok_at;
out:
        free(occ);
        return r;
}

static int encode_fragment(const struct engine_tokenizer *t, const char *s, size_t n, bool prefix_space,
                           struct tok_ids *out)
{
        if (t->kind == TOK_KIND_BPE)
                return tok_bpe_encode(t, s, n, out);

        /* SentencePiece: optional leading space, then every space becomes U+2581 */
        size_t spaces = prefix_space;
        for (size_t i = 0; i < n; i++)
                spaces += s[i] == ' ';
        if (n > (SIZE_MAX - 1) / 3)
                return -E2BIG;
        char *buf = malloc(n + 2 * spaces + 1);
        if (!buf)
                return -ENOMEM;
        size_t o = 0;
        if (prefix_space) {
                memcpy(buf, "\xe2\x96\x81", 3);
                o = 3;
        }
        for (size_t i = 0; i < n; i++) {
                if (s[i] == ' ') {
                        memcpy(buf + o, "\xe2\x96\x81", 3);
                        o += 3;
                } else {
                        buf[o++] = s[i];
                }
        }
        int r = tok_spm_encode(t, buf, o, out);
        free(buf);
        return r;
}

int engine_tokenize(const struct engine_tokenizer *t, const char *text, size_t len, bool add_special,
                    bool parse_special, int32_t *ids, size_t max_ids, size_t *needed)
{
        struct tok_ids out = { 0 };
        int32_t *tok_at = NULL;
        int r;

        if (!t || (!text && len))
                return -EINVAL;
        if ((r = partition(t, text, len, parse_special, &tok_at)) < 0)
                goto out;

        if (add_special && t->add_bos && (r = tok_ids_push(&out, t->bos)) < 0)
                goto out;

        /* SPM adds the prefix space to the first fragment and to any after a special token */
        bool prev_special = true;
        for (size_t i = 0; i < len;) {
                if (tok_at && tok_at[i] >= 0) {
                        if ((r = tok_ids_push(&out, tok_at[i])) < 0)
                                goto out;
                        i += t->tok[tok_at[i]].len;
                        prev_special = true;
                        continue;
                }
                size_t j = i + 1;
                while (j < len && !(tok_at && tok_at[j] >= 0))
                        j++;
                if ((r = encode_fragment(t, text + i, j - i, t->add_space_prefix && prev_special, &out)) < 0)
                        goto out;
                prev_special = false;
                i = j;
        }

        if (add_special && t->add_eos && (r = tok_ids_push(&out, t->eos)) < 0)
                goto out;

        if (out.n > INT32_MAX) {
                r = -E2BIG;
                goto out;
        }
        if (needed)
                *needed = out.n;
        if (out.n > max_ids) {
                r = -ENOSPC;
                goto out;
        }
        if (out.n)
                memcpy(ids, out.v, out.n * sizeof(*ids));
        r = (int)out.n;
out:
        free(tok_at);
        free(out.v);
        return r;
}

/* ---- pieces and streaming detokenization ---- */

static const char *piece_of(const struct engine_tokenizer *t, int32_t id, bool render_special, size_t *n)
{
        if (!render_special && (t->tok[id].attr & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL))) {
                *n = 0;
                return t->piece;
        }
        *n = t->piece_off[id + 1] - t->piece_off[id];
        return t->piece + t->piece_off[id];
}

int engine_token_to_piece(const struct engine_tokenizer *t, int32_t id, bool render_special, char *buf, size_t len)
{
        size_t n;
        if (!t || id < 0 || (uint32_t)id >= t->n_vocab)
                return -EINVAL;
        const char *p = piece_of(t, id, render_special, &n);
        if (n <= len && n)
                memcpy(buf, p, n);
        return (int)n;
}

void engine_detok_init(struct engine_detok *d)
{
        memset(d, 0, sizeof(*d));
        d->first = true;
}

/* Length of the UTF-8 sequence a lead byte announces; 0 for bytes that cannot lead. */
static size_t seq_len(uint8_t c)
{
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                return 2;
        if (c >= 0xe0 && c <= 0xef)
                return 3;
        if (c >= 0xf0 && c <= 0xf4)
                return 4;
        return 0;
}

/* Could s[0..n) (n < its sequence length) still grow into a valid character? Decided by
 * utf8proc on the prefix completed with the smallest and the largest continuation byte:
 * the range limits on the second byte (E0, ED, F0, F4) admit one or the other. */
static bool viable_prefix(const uint8_t *s, size_t n)
{
        size_t L = seq_len(s[0]);
        if (L == 0 || n >= L)
                return false;
        for (size_t i = 1; i < n; i++)
                if ((s[i] & 0xc0) != 0x80)
                        return false;
        static const uint8_t fills[2] = { 0x80, 0xbf };
        for (int f = 0; f < 2; f++) {
                uint8_t b[4];
                utf8proc_int32_t cp;
                memcpy(b, s, n);
                memset(b + n, fills[f], L - n);
                if (utf8proc_iterate(b, (utf8proc_ssize_t)L, &cp) == (utf8proc_ssize_t)L)
                        return true;
        }
        return false;
}

struct emit {
        char *out;
        size_t cap, n;
        bool overflow;
};

static void emit_bytes(struct emit *e, const void *p, size_t n)
{
        if (e->n + n > e->cap) {
                e->overflow = true;
                return;
        }
        memcpy(e->out + e->n, p, n);
        e->n += n;
}

/* Emits every complete character of buf[0..n); invalid sequences become one U+FFFD per
 * maximal invalid prefix (as Python's errors="replace"). Returns how many trailing bytes
 * form an incomplete but still viable character (left for the next call). */
static size_t emit_utf8(struct emit *e, const uint8_t *buf, size_t n)
{
        size_t i = 0;
        while (i < n) {
                size_t L = seq_len(buf[i]);
                utf8proc_int32_t cp;
                if (L && i + L <= n && utf8proc_iterate(buf + i, (utf8proc_ssize_t)L, &cp) == (utf8proc_ssize_t)L) {
                        emit_bytes(e, buf + i, L);
                        i += L;
                        continue;
                }
                /* longest viable prefix at i */
                size_t k = 0;
                for (size_t m = 1; m < 4 && i + m <= n; m++)
                        if (viable_prefix(buf + i, m))
                                k = m;
                if (k && i + k == n)
                        return k; /* may complete with the next piece */
                emit_bytes(e, "\xef\xbf\xbd", 3);
                i += k ? k : 1;
        }
        return 0;
}

int engine_detok_push(const struct engine_tokenizer *t, struct engine_detok *d, int32_t id, char *out, size_t cap)
{
        size_t n;
        if (!t || !d || id < 0 || (uint32_t)id >= t->n_vocab || d->n_pending > 3)
                return -EINVAL;
        const char *p = piece_of(t, id, false, &n);
        bool first = d->first;
        if (n && first) {
                /* the space SentencePiece put in front of the text is not part of it */
                if (t->add_space_prefix && p[0] == ' ') {
                        p++;
                        n--;
                }
                first = false;
        }

        uint8_t stackbuf[256];
        uint8_t *buf = stackbuf;
        size_t total = d->n_pending + n;
        if (total > sizeof(stackbuf)) {
                buf = malloc(total);
                if (!buf)
                        return -ENOMEM;
        }
        memcpy(buf, d->pending, d->n_pending);
        if (n)
                memcpy(buf + d->n_pending, p, n);

        struct emit e = { .out = out, .cap = cap };
        size_t keep = emit_utf8(&e, buf, total);
        int r;
        if (e.overflow) {
                r = -ENOSPC; /* state untouched: the caller may retry with more room */
        } else {
                memcpy(d->pending, buf + total - keep, keep);
                d->n_pending = (uint8_t)keep;
                d->first = first;
                r = (int)e.n;
        }
        if (buf != stackbuf)
                free(buf);
        return r;
}

int engine_detok_flush(struct engine_detok *d, char *out, size_t cap)
{
        if (!d)
                return -EINVAL;
        if (d->n_pending == 0)
                return 0;
        if (cap < 3)
                return -ENOSPC;
        memcpy(out, "\xef\xbf\xbd", 3);
        d->n_pending = 0;
        return 3;
}

/* ---- the merge loops' heap (tokenizer_spm.c, tokenizer_bpe.c) ---- */

static bool bigram_before(const struct tok_bigram *a, const struct tok_bigram *b)
{
        if (a->prio != b->prio)
                return a->prio > b->prio;
        return a->left < b->left;
}

int tok_heap_push(struct tok_heap *h, struct tok_bigram b)
{
        if (h->n == h->cap) {
                size_t cap = h->cap ? h->cap * 2 : 64;
                struct tok_bigram *v = realloc(h->v, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                h->v = v;
                h->cap = cap;
        }
        size_t i = h->n++;
        while (i > 0) {
                size_t p = (i - 1) / 2;
                if (!bigram_before(&b, &h->v[p]))
                        break;
                h->v[i] = h->v[p];
                i = p;
        }
        h->v[i] = b;
        return 0;
}

struct tok_bigram tok_heap_pop(struct tok_heap *h)
{
        struct tok_bigram top = h->v[0];
        struct tok_bigram last = h->v[--h->n];
        size_t i = 0;
        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, m = i;
                const struct tok_bigram *best = &last;
                if (l < h->n && bigram_before(&h->v[l], best)) {
                        m = l;
                        best = &h->v[l];
                }
                if (r < h->n && bigram_before(&h->v[r], best))
                        m = r;
                if (m == i)
                        break;
                h->v[i] = h->v[m];
                i = m;
        }
        if (h->n)
                h->v[i] = last;
        return top;
}
