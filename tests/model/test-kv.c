/* test-kv — the block KV cache without a model file: blocks come from the pool as
 * sequences grow, come back at once on close, -ENOSPC when the pool (or the sequence
 * slots, or max_seq_len) is exhausted leaves state unchanged, and block tables never
 * share a block between live sequences. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static int bad;
#define CHECK(cond)                                                          \
        do {                                                                 \
                if (!(cond)) {                                               \
                        printf("%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
                        bad = 1;                                             \
                }                                                            \
        } while (0)

int main(void)
{
        struct engine_model m;
        memset(&m, 0, sizeof(m));
        m.hp.n_layer = 2;
        m.hp.n_head_kv = 2;
        m.hp.head_dim_k = 8;
        m.hp.head_dim_v = 8;
        m.hp.n_ctx_train = 128;

        struct sl_error err = { 0 };
        struct engine_kv *kv = NULL;
        struct engine_kv_opts o = { .block_size = 4, .n_blocks = 10, .max_seqs = 3, .max_seq_len = 32 };
        CHECK(engine_kv_create(&m, &(struct engine_kv_opts){ .n_blocks = 0, .max_seqs = 1 }, &kv, &err) == -EINVAL);
        CHECK(engine_kv_create(&m, &o, &kv, &err) == 0);
        if (!kv)
                return 1;
        CHECK(engine_kv_blocks_total(kv) == 10);
        CHECK(engine_kv_blocks_free(kv) == 10);
        CHECK(engine_kv_block_size(kv) == 4);

        int a = engine_kv_seq_open(kv), b = engine_kv_seq_open(kv), c = engine_kv_seq_open(kv);
        CHECK(a >= 0 && b >= 0 && c >= 0 && a != b && b != c && a != c);
        CHECK(engine_kv_seq_open(kv) == -ENOSPC);

        CHECK(engine_kv_seq_reserve(kv, a, 5) == 0); /* 2 blocks */
        CHECK(engine_kv_blocks_free(kv) == 8);
        CHECK(engine_kv_seq_reserve(kv, a, 8) == 0); /* still 2 */
        CHECK(engine_kv_blocks_free(kv) == 8);
        CHECK(engine_kv_seq_reserve(kv, b, 24) == 0); /* 6 blocks */
        CHECK(engine_kv_blocks_free(kv) == 2);
        CHECK(engine_kv_seq_reserve(kv, c, 12) == -ENOSPC); /* needs 3, 2 left */
        CHECK(engine_kv_blocks_free(kv) == 2);
        CHECK(engine_kv_seq_reserve(kv, c, 33) == -ENOSPC); /* past max_seq_len */
        CHECK(engine_kv_seq_reserve(kv, 7, 1) == -EINVAL);
        CHECK(engine_kv_seq_reserve(kv, -1, 1) == -EINVAL);

        /* no block is in two tables */
        int seen[10] = { 0 };
        for (uint32_t s = 0; s < 3; s++)
                for (uint32_t i = 0; i < kv->seq_blocks[s]; i++) {
                        int32_t blk = kv->table[s * kv->max_blocks_per_seq + i];
                        CHECK(blk >= 0 && blk < 10);
                        if (blk >= 0 && blk < 10)
                                CHECK(seen[blk]++ == 0);
                }

        /* distinct rows for distinct (layer, seq, pos) */
        CHECK(engine_kv_k_row(kv, 0, a, 0) != engine_kv_k_row(kv, 0, b, 0));
        CHECK(engine_kv_k_row(kv, 0, a, 0) != engine_kv_k_row(kv, 1, a, 0));
        CHECK(engine_kv_k_row(kv, 0, a, 1) == engine_kv_k_row(kv, 0, a, 0) + kv->kv_dim_k);

        engine_kv_seq_close(kv, b);
        CHECK(engine_kv_blocks_free(kv) == 8);
        CHECK(engine_kv_seq_reserve(kv, c, 12) == 0);
        CHECK(engine_kv_blocks_free(kv) == 5);
        engine_kv_seq_close(kv, b); /* closing twice is harmless */
        CHECK(engine_kv_blocks_free(kv) == 5);
        CHECK(engine_kv_seq_reserve(kv, b, 1) == -EINVAL); /* closed */
        int d = engine_kv_seq_open(kv);
        CHECK(d == b);
        engine_kv_seq_close(kv, a);
        engine_kv_seq_close(kv, c);
        engine_kv_seq_close(kv, d);
        CHECK(engine_kv_blocks_free(kv) == 10);
        engine_kv_free(kv);
        engine_kv_free(NULL);
        printf("%s\n", bad ? "FAIL" : "ok");
        return bad;
}
