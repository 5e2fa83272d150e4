/* kv.c — the KV cache: per-layer K and V in f16 (llama.cpp's default cache type), stored in
 * fixed-size blocks of tokens from one pool; each sequence slot has a block table. All of it
 * is allocated at create, so opening, growing and closing sequences never allocates. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int engine_kv_create(const struct engine_model *m, const struct engine_kv_opts *opts, struct engine_kv **out,
                     struct sl_error *err)
{
        struct engine_kv *kv = NULL;
        int r;

        *out = NULL;
        if (!opts)
                return sl_errorf(err, -EINVAL, "kv: no options");
        const struct engine_hparams *hp = &m->hp;
        uint32_t bs = opts->block_size ? opts->block_size : 16;
        uint32_t max_len = opts->max_seq_len ? opts->max_seq_len : hp->n_ctx_train;
        if (opts->n_blocks == 0 || opts->max_seqs == 0)
                return sl_errorf(err, -EINVAL, "kv: n_blocks and max_seqs must be > 0");
        if (bs > 65536 || max_len > (1u << 24) || opts->max_seqs > 65536 || opts->n_blocks > (1u << 24))
                return sl_errorf(err, -EINVAL, "kv: block_size %u, max_seq_len %u, max_seqs %u or n_blocks %u too large",
                                 bs, max_len, opts->max_seqs, opts->n_blocks);

        kv = calloc(1, sizeof(*kv));
        if (!kv)
                return sl_errorf(err, -ENOMEM, "kv: out of memory");
        kv->n_layer = hp->n_layer;
        kv->block_size = bs;
        kv->n_blocks = opts->n_blocks;
        kv->max_seqs = opts->max_seqs;
        kv->max_seq_len = max_len;
        kv->max_blocks_per_seq = (max_len + bs - 1) / bs;
        kv->kv_dim_k = hp->n_head_kv * hp->head_dim_k;
        kv->kv_dim_v = hp->n_head_kv * hp->head_dim_v;

        uint64_t tokens, ek, ev, bk, bv;
        if (sl_mul_u64(kv->n_blocks, bs, &tokens) || sl_mul_u64(tokens, kv->kv_dim_k, &ek) ||
            sl_mul_u64(tokens, kv->kv_dim_v, &ev) || sl_mul_u64(ek, (uint64_t)kv->n_layer * 2, &bk) ||
            sl_mul_u64(ev, (uint64_t)kv->n_layer * 2, &bv) || bk > SIZE_MAX / 2 || bv > SIZE_MAX / 2) {
                r = sl_errorf(err, -EINVAL, "kv: pool size overflows");
                goto fail;
        }
        kv->layer_stride_k = ek;
        kv->layer_stride_v = ev;
        if (!opts->tables_only) {
                kv->k = aligned_alloc(64, SL_ALIGN_UP(bk, 64));
                kv->v = aligned_alloc(64, SL_ALIGN_UP(bv, 64));
        }
        kv->free_list = malloc(sizeof(uint32_t) * kv->n_blocks);
        kv->table = malloc(sizeof(int32_t) * (size_t)kv->max_seqs * kv->max_blocks_per_seq);
        kv->seq_blocks = calloc(kv->max_seqs, sizeof(uint32_t));
        kv->seq_len = calloc(kv->max_seqs, sizeof(uint32_t));
        kv->seq_next = calloc(kv->max_seqs, sizeof(uint32_t));
        kv->seq_open = calloc(kv->max_seqs, sizeof(bool));
        if ((!opts->tables_only && (!kv->k || !kv->v)) || !kv->free_list || !kv->table || !kv->seq_blocks || !kv->seq_len || !kv->seq_next || !kv->seq_open) {
                r = sl_errorf(err, -ENOMEM, "kv: cannot allocate %llu bytes of cache",
                              (unsigned long long)(bk + bv));
                goto fail;
        }
        if (!opts->tables_only) { /* every page now: no page faults, no RSS growth while serving */
                memset(kv->k, 0, bk);
                memset(kv->v, 0, bv);
        }
        /* Stack pops the lowest ids first: nicer locality for short runs. */
        for (uint32_t i = 0; i < kv->n_blocks; i++)
                kv->free_list[i] = kv->n_blocks - 1 - i;
        kv->n_free = kv->n_blocks;
        for (size_t i = 0; i < (size_t)kv->max_seqs * kv->max_blocks_per_seq; i++)
                kv->table[i] = -1;
        *out = kv;
        return 0;
fail:
        engine_kv_free(kv);
        return r;
}

void engine_kv_free(struct engine_kv *kv)
{
        if (!kv)
                return;
        free(kv->k);
        free(kv->v);
        free(kv->free_list);
        free(kv->table);
        free(kv->seq_blocks);
        free(kv->seq_len);
        free(kv->seq_next);
        free(kv->seq_open);
        free(kv);
}

int engine_kv_seq_open(struct engine_kv *kv)
{
        for (uint32_t s = 0; s < kv->max_seqs; s++) {
                if (!kv->seq_open[s]) {
                        kv->seq_open[s] = true;
                        kv->seq_len[s] = 0;
                        kv->seq_blocks[s] = 0;
                        return (int)s;
                }
        }
        return -ENOSPC;
}

int engine_kv_seq_reserve(struct engine_kv *kv, int seq, uint32_t n_pos)
{
        if (seq < 0 || (uint32_t)seq >= kv->max_seqs || !kv->seq_open[seq])
                return -EINVAL;
        if (n_pos > kv->max_seq_len)
                return -ENOSPC;
        uint32_t need = (n_pos + kv->block_size - 1) / kv->block_size;
        uint32_t have = kv->seq_blocks[seq];
        if (need <= have)
                return 0;
        if (need - have > kv->n_free)
                return -ENOSPC;
        int32_t *tab = kv->table + (size_t)seq * kv->max_blocks_per_seq;
        for (uint32_t i = have; i < need; i++)
                tab[i] = (int32_t)kv->free_list[--kv->n_free];
        kv->seq_blocks[seq] = need;
        return 0;
}

void engine_kv_seq_close(struct engine_kv *kv, int seq)
{
        if (!kv || seq < 0 || (uint32_t)seq >= kv->max_seqs || !kv->seq_open[seq])
                return;
        int32_t *tab = kv->table + (size_t)seq * kv->max_blocks_per_seq;
        for (uint32_t i = 0; i < kv->seq_blocks[seq]; i++) {
                kv->free_list[kv->n_free++] = (uint32_t)tab[i];
                tab[i] = -1;
        }
        kv->seq_blocks[seq] = 0;
        kv->seq_len[seq] = 0;
        kv->seq_open[seq] = false;
}

uint32_t engine_kv_blocks_free(const struct engine_kv *kv)
{
        return kv->n_free;
}

uint32_t engine_kv_blocks_total(const struct engine_kv *kv)
{
        return kv->n_blocks;
}

uint32_t engine_kv_block_size(const struct engine_kv *kv)
{
        return kv->block_size;
}
