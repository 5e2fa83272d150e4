/* tokenizer_spm.c — SentencePiece-style ("llama") encoding of one text fragment: split into
 * UTF-8 characters, then repeatedly merge the adjacent pair whose concatenation is the
 * highest-scoring vocabulary entry (ties: leftmost), as llama.cpp's llm_tokenizer_spm does.
 * Pieces left that are not tokens fall back to <0xXX> byte tokens. O(n log n). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

struct spm_sym {
        int32_t prev, next;
        uint32_t off, n;
};


static int try_bigram(const struct engine_tokenizer *t, const char *s, struct spm_sym *sym,
                      int32_t left, int32_t right, struct tok_heap *h)
{
        if (left < 0 || right < 0)
                return 0;
        int32_t id = tok_find(t, s + sym[left].off, sym[left].n + sym[right].n);
        if (id < 0)
                return 0;
        struct tok_bigram b = { .prio = t->tok[id].score, .left = left, .right = right,
                                .lsize = sym[left].n, .rsize = sym[right].n };
        return tok_heap_push(h, b);
}

static uint32_t utf8_len_from_lead(uint8_t c)
{
        /* llama.cpp's unicode_len_utf8: by the high nibble; stray continuation bytes count 1 */
        static const uint8_t lookup[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4 };
        return lookup[c >> 4];
}

int tok_spm_encode(const struct engine_tokenizer *t, const char *s, size_t len, struct tok_ids *out)
{
        struct spm_sym *sym = NULL;
        struct tok_heap h = { 0 };
        int r = 0;

        if (len == 0)
                return 0;
        if (len > INT32_MAX)
                return -E2BIG;
        sym = malloc(len * sizeof(*sym));
        if (!sym)
                return -ENOMEM;

        int32_t n = 0;
        for (size_t off = 0; off < len;) {
                uint32_t cl = utf8_len_from_lead((uint8_t)s[off]);
                if (cl > len - off)
                        cl = (uint32_t)(len - off);
                sym[n].off = (uint32_t)off;
                sym[n].n = cl;
                sym[n].prev = n - 1;
                off += cl;
                sym[n].next = off == len ? -1 : n + 1;
                n++;
        }

        for (int32_t i = 1; i < n; i++)
                if ((r = try_bigram(t, s, sym, i - 1, i, &h)) < 0)
                        goto out;

        while (h.n) {
                struct tok_bigram b = tok_heap_pop(&h);
                struct spm_sym *l = &sym[b.left], *rr = &sym[b.right];
                /* stale: one side was merged away or grew since this pair was queued */
                if (l->n == 0 || rr->n == 0 || l->n != b.lsize || rr->n != b.rsize)
                        continue;
                l->n += rr->n;
                rr->n = 0;
                l->next = rr->next;
                if (rr->next >= 0)
                        sym[rr->next].prev = b.left;
                if ((r = try_bigram(t, s, sym, l->prev, b.left, &h)) < 0)
                        goto out;
                if ((r = try_bigram(t, s, sym, b.left, l->next, &h)) < 0)
                        goto out;
        }

        for (int32_t i = 0; i != -1; i = sym[i].next) {
                int32_t id = tok_find(t, s + sym[i].off, sym[i].n);
                if (id >= 0) {
                        if ((r = tok_ids_push(out, id)) < 0)
                                goto out;
                        continue;
                }
                /* not a token: one byte token per byte (unknown token when the vocabulary
                 * has neither <0xXX> nor the bare byte) */
                for (uint32_t j = 0; j < sym[i].n; j++) {
                        int32_t bid = t->byte_tok[(uint8_t)s[sym[i].off + j]];
                        if (bid < 0)
                                bid = t->unk;
                        if (bid >= 0 && (r = tok_ids_push(out, bid)) < 0)
                                goto out;
                }
        }
out:
        free(h.v);
        free(sym);
        return r;
}
