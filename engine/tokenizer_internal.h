/* tokenizer_internal.h — state shared by the tokenizer's files: the vocabulary (texts,
 * scores, attributes) with its hash index, BPE merge ranks, the special-token matcher and
 * the compiled pre-tokenizer. Not part of engine.h; nothing outside engine/ includes it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"

/* Attribute bits, numbered as llama.cpp's llama_token_attr so that the rules ported from
 * it (which test bits, not types) read the same. */
enum {
        TOK_ATTR_UNDEFINED = 0,
        TOK_ATTR_UNKNOWN = 1 << 0,
        TOK_ATTR_UNUSED = 1 << 1,
        TOK_ATTR_NORMAL = 1 << 2,
        TOK_ATTR_CONTROL = 1 << 3,
        TOK_ATTR_USER_DEFINED = 1 << 4,
        TOK_ATTR_BYTE = 1 << 5,
};

enum tok_kind { TOK_KIND_SPM, TOK_KIND_BPE };

struct tok_entry {
        uint32_t off;   /* into text */
        uint32_t len;
        float score;
        uint16_t attr;
        uint8_t byte;   /* TOK_ATTR_BYTE: the byte it stands for */
};

struct tok_merge {
        uint32_t off;   /* into merge_text: "left right" as in the file */
        uint32_t llen;
        uint32_t rlen;
        uint32_t rank;
};

struct trie_node {
        int32_t child;   /* first child, -1 none */
        int32_t sibling; /* next sibling, -1 none */
        int32_t token;   /* token ending here, -1 none */
        uint8_t byte;
};

#define TOK_MAX_REGEX 4

struct engine_tokenizer {
        enum tok_kind kind;
        uint32_t n_vocab;
        char *text;                 /* all token texts, back to back */
        struct tok_entry *tok;
        uint32_t *index;            /* open addressing: id + 1, 0 = empty */
        uint32_t index_mask;

        char *merge_text;
        struct tok_merge *merges;
        uint32_t n_merges;
        uint32_t *merge_index;      /* merge slot + 1 */
        uint32_t merge_mask;

        char *piece;                /* token_to_piece(render_special = true) of every id */
        uint32_t *piece_off;        /* n_vocab + 1 offsets */

        int32_t bos, eos, eot, eom, unk, sep, pad, mask;
        int32_t fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
        bool add_bos, add_eos, add_space_prefix, ignore_merges;
        uint8_t *eog;               /* n_vocab flags */
        int32_t byte_tok[256];      /* SPM byte fallback; -1 none */

        /* control / user-defined / unknown tokens, longest first (then lowest id) */
        int32_t *special;
        uint32_t n_special;
        uint32_t *special_rank;     /* n_vocab: position in special[], or UINT32_MAX */
        struct trie_node *trie;
        uint32_t n_trie;
        int32_t trie_root[256];     /* root fan-out by first byte */

        /* BPE pre-tokenizer: regexes applied one after another (as llama.cpp does) */
        void *re[TOK_MAX_REGEX];    /* pcre2_code_8 * */
        uint32_t n_re;
        char pre[32];
};

/* Lookup of a text in the vocabulary: id or -1. */
int32_t tok_find(const struct engine_tokenizer *t, const char *s, size_t len);

/* A growable id vector; functions return -ENOMEM on failure. */
struct tok_ids {
        int32_t *v;
        size_t n, cap;
};
int tok_ids_push(struct tok_ids *ids, int32_t id);

/* A candidate merge of two adjacent symbols, for both tokenizers' merge loops: popped in
 * order of prio (SentencePiece: the merged token's score; BPE: minus the merge rank), ties
 * to the leftmost pair. lsize/rsize let the loop recognise a pair made stale by a merge. */
struct tok_bigram {
        double prio;
        int32_t left, right;
        uint32_t lsize, rsize;
};

struct tok_heap {
        struct tok_bigram *v;
        size_t n, cap;
};

int tok_heap_push(struct tok_heap *h, struct tok_bigram b); /* -ENOMEM */
struct tok_bigram tok_heap_pop(struct tok_heap *h);         /* h->n > 0 */

/* ---- SentencePiece (tokenizer_spm.c) ---- */
int tok_spm_encode(const struct engine_tokenizer *t, const char *text, size_t len, struct tok_ids *out);

/* ---- byte-level BPE (tokenizer_bpe.c) ---- */
/* GPT-2 bytes_to_unicode: the code point that stands for byte b. */
uint32_t tok_byte_to_cpt(uint8_t b);
/* Inverse; -1 when cpt stands for no byte. */
int tok_cpt_to_byte(uint32_t cpt);
/* Compiles the pre-tokenizer regexes for the tokenizer.ggml.pre value. -EINVAL names an
 * unknown value. Also sets t->ignore_merges and the BPE add_bos default (*add_bos). */
int tok_bpe_init(struct engine_tokenizer *t, const char *pre, size_t pre_len, bool *add_bos,
                 struct sl_error *err);
void tok_bpe_free(struct engine_tokenizer *t);
/* Builds the merge-rank table from tokenizer.ggml.merges ("left right" strings). */
int tok_bpe_load_merges(struct engine_tokenizer *t, const struct gguf_array *a, struct sl_error *err);
/* Rank of merging left and right, or -1. */
int64_t tok_bpe_rank(const struct engine_tokenizer *t, const char *l, size_t ll, const char *r, size_t rl);
int tok_bpe_encode(const struct engine_tokenizer *t, const char *text, size_t len, struct tok_ids *out);

/* FNV-1a, also used for merge keys. */
static inline uint64_t tok_hash_bytes(uint64_t h, const void *p, size_t n)
{
        const uint8_t *b = p;
        for (size_t i = 0; i < n; i++) {
                h ^= b[i];
                h *= 0x100000001b3ull;
        }
        return h;
}
#define TOK_HASH_SEED 0xcbf29ce484222325ull
