/* test_backend.c — the CUDA backend against the CPU backend on the same GGUF files:
 *   1. teacher-forced logits: a fixed random token sequence through both, logits of every
 *      position compared (top-1 agreement, max |Δ| relative to the row's logit range); the
 *      GPU run in prefill chunks of 7 tokens so chunked prefill is covered too, then in one
 *      chunk of 96, whose attention runs on the tensor cores (cuda_attention_tc), and in
 *      chunks of 12 (the products of 9-16-token steps: cuda_mma_gemv on Hopper);
 *   2. greedy continuations of several prompts through the scheduler: the CPU one request at
 *      a time, the GPU all at once (continuous batching): identical tokens;
 *   3. CUDA Graph replay vs eager decoding (no_graphs): identical tokens, launches per step;
 *   4. a seeded sampled request alone and inside a full batch of others: identical tokens;
 *   5. a prompt held in the caller's memory (engine_request.prompt_release): mapped for the
 *      GPU with engine_host_register, the prefill reads it there (rewritten after submit, the
 *      tokens follow the new ids); in memory the GPU cannot read, the engine's copy.
 * With --text FILE the teacher-forced sequence is the first 96 tokens of FILE in the model's
 * own tokenizer instead of random ids: for trained weights (a real model's text predictions
 * are seldom near-ties, unlike a random-weight model's).
 * With --truth F32.gguf (the same weights in F32: no activation rounded to 16 bits on the CPU)
 * both backends' logits are also measured against that truth, and the GPU's error must stay
 * within twice the CPU's: the bound on the CPU/GPU difference for weights whose activations
 * make BF16's rounding matter (a trained Gemma's), where a fixed 1e-2 of the range is not one.
 * Usage: test_backend [--json PATH] [--text FILE] [--truth F32.gguf] MODEL.gguf...
 * Exit 0 pass, 1 fail, 77 no usable GPU. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "model.h"
#include "cuda/ecu.h"

#define N_TF 96        /* teacher-forced positions */
#define N_PROMPTS 8
#define N_GEN 32
#define TOP1_MIN 0.995     /* the target, reported */
#define TOP1_FLOOR 0.99    /* what the check requires on random-weight models (near-ties) */
/* Steps of up to 8 tokens through the GEMV in every engine here: left to the timing at start
 * (tune_gemv), two engines over a small model can choose differently and so round a
 * 2-16-token step differently, and the comparisons between engines below need the same
 * products on both sides. */
#define GEMV_MAX 8

static int failures;
static long g_tf_agree, g_tf_total;
static long g_tf12_agree, g_tf12_total; /* the chunks-of-12 pass: reported only */
static double g_tf_maxabs; /* the current model's largest |CPU - GPU| logit difference */
static FILE *json;
static int json_first = 1;
static char *g_text; /* --text: the teacher-forced sequence's source */
static struct engine_model *g_truth; /* --truth: the same weights in F32, on the CPU */

static uint64_t rng_state = 0x5eed5eedull;
static uint32_t rnd(void)
{
        rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
        return (uint32_t)(rng_state >> 33);
}

static void jrec(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void jrec(const char *fmt, ...)
{
        if (!json)
                return;
        va_list ap;
        va_start(ap, fmt);
        fprintf(json, "%s\n  ", json_first ? "" : ",");
        vfprintf(json, fmt, ap);
        va_end(ap);
        json_first = 0;
}

static void check(int ok, const char *what, const char *model)
{
        printf("%-6s %s: %s\n", ok ? "PASS" : "FAIL", model, what);
        if (!ok)
                failures++;
}

static uint32_t argmax(const float *x, uint32_t n)
{
        uint32_t b = 0;
        for (uint32_t i = 1; i < n; i++)
                if (x[i] > x[b])
                        b = i;
        return b;
}

/* ---- 1. teacher-forced logits ---- */

/* The teacher-forced sequence as a batch: positions 0 .. N_TF - 1 of sequence 0, logits of
 * every row (the CPU takes it in one pass, the GPU in chunks), and the KV cache both sides
 * build for it (the GPU's with tables_only). */
struct tf_batch {
        int32_t pos[N_TF], seq[N_TF];
        uint8_t flag[N_TF];
};

static void tf_batch_init(struct tf_batch *tb)
{
        for (int i = 0; i < N_TF; i++)
                tb->pos[i] = i, tb->seq[i] = 0, tb->flag[i] = 1;
}

static const struct engine_kv_opts tf_kv = {.block_size = 16, .n_blocks = 64, .max_seqs = 2, .max_seq_len = 512};

/* The CPU backend's logits of every position of toks[0, N_TF) (one sequence, one pass). */
static int cpu_logits(struct engine_model *m, const int32_t *toks, const struct tf_batch *tb, float *out,
                      struct sl_error *err)
{
        struct engine_kv *kv = NULL;
        struct engine_ctx *ctx = NULL;
        int r;
        if ((r = engine_kv_create(m, &tf_kv, &kv, err)) >= 0 && (r = engine_ctx_create(m, 0, N_TF, &ctx, err)) >= 0) {
                struct engine_batch b = {.n_tokens = N_TF, .token = toks, .pos = tb->pos, .seq = tb->seq,
                                         .logits = tb->flag};
                engine_kv_seq_open(kv);
                r = engine_forward(ctx, kv, &b, out, err);
        }
        engine_ctx_free(ctx);
        engine_kv_free(kv);
        return r < 0 ? r : 0;
}

/* A row of V logits against its reference: the largest |x - ref| into *md (INFINITY when x
 * has a NaN); returns that over the range of ref's row. */
static double row_diff(const float *ref, const float *x, uint32_t V, double *md)
{
        float lo = ref[0], hi = ref[0];
        double m = 0.0;
        for (uint32_t j = 0; j < V; j++) {
                lo = fminf(lo, ref[j]);
                hi = fmaxf(hi, ref[j]);
                m = isnan(x[j]) ? INFINITY : fmax(m, fabs((double)x[j] - ref[j]));
        }
        *md = m;
        return m / fmax(hi - lo, 1e-6);
}

/* Against --truth (the same weights in F32 on the CPU, where no activation is rounded to 16
 * bits): the largest |x - truth| over a row's logit range, over all rows, and top-1 matches. */
static double truth_err(const float *x, const float *t, uint32_t V, int *top1)
{
        double worst = 0.0, md;
        *top1 = 0;
        for (int i = 0; i < N_TF; i++) {
                const float *a = x + (size_t)i * V, *b = t + (size_t)i * V;
                worst = fmax(worst, row_diff(b, a, V, &md));
                *top1 += argmax(a, V) == argmax(b, V);
        }
        return worst;
}

/* chunk: tokens per GPU step. The 7-token pass is the one counted in the totals and whose
 * largest logit difference sets the near-tie tolerance of the greedy comparisons (their
 * prompts are 16 tokens: no prefill run, so the attention kernel of the 7-token chunks); the
 * whole-sequence pass (the tensor-core prefill kernel) only reports. */
static int teacher_forced(const char *path, struct engine_model *cpu, struct engine_model *gpu,
                          const int32_t *toks, int chunk, double *top1_out, double *err_out)
{
        const struct engine_hparams *hp = engine_model_hparams(cpu);
        const uint32_t V = hp->n_vocab;
        struct sl_error err = {0};
        float *lc = malloc((size_t)N_TF * V * sizeof(float)), *lg = malloc((size_t)N_TF * V * sizeof(float));
        int32_t ids[N_TF];
        struct tf_batch tb;
        float *lt = g_truth ? malloc((size_t)N_TF * V * sizeof(float)) : NULL;
        struct engine_kv *kg = NULL;
        struct ecu_ctx *cc = NULL;
        char what[240];
        int r = -ENOMEM;
        if (!lc || !lg || (g_truth && !lt))
                goto out;
        tf_batch_init(&tb);
        if ((r = cpu_logits(cpu, toks, &tb, lc, &err)) < 0 ||
            (g_truth && (r = cpu_logits(g_truth, toks, &tb, lt, &err)) < 0))
                goto out;

        struct engine_kv_opts ko = tf_kv;
        ko.tables_only = true;
        struct ecu_ctx_opts co = {.max_seqs = 2, .max_tokens = N_TF, .max_rows = N_TF, .block_size = 16, .max_blocks_per_seq = 32,
                                  .n_blocks = 64, .no_graphs = true, .gemv_max_tokens = GEMV_MAX};
        if ((r = engine_kv_create(gpu, &ko, &kg, &err)) < 0 || (r = ecu_ctx_create(gpu, &co, &cc, &err)) < 0)
                goto out;
        engine_kv_seq_open(kg);
        struct engine_sampling greedy;
        engine_sampling_defaults(&greedy);
        greedy.temperature = 0.0f;
        struct ecu_sample_row rows[N_TF];
        for (int i = 0; i < N_TF; i++)
                rows[i] = (struct ecu_sample_row){.s = &greedy};
        for (int p0 = 0; p0 < N_TF; p0 += chunk) {
                const int n = p0 + chunk <= N_TF ? chunk : N_TF - p0;
                struct engine_batch gb = {.n_tokens = (uint32_t)n, .token = toks + p0, .pos = tb.pos + p0,
                                          .seq = tb.seq + p0, .logits = tb.flag + p0};
                if ((r = engine_batch_prepare(hp, N_TF, 512, kg, &gb, &err)) < 0 ||
                    (r = ecu_step(cc, kg, &gb, rows, (uint32_t)n, ids + p0, lg + (size_t)p0 * V, NULL, &err)) < 0)
                        goto out;
                engine_batch_commit(kg, &gb);
        }
        int agree = 0, id_ok = 0, near = 0;
        double worst = 0.0;
        for (int i = 0; i < N_TF; i++) {
                const float *a = lc + (size_t)i * V, *g = lg + (size_t)i * V;
                double md;
                worst = fmax(worst, row_diff(a, g, V, &md));
                const uint32_t ta = argmax(a, V), tg = argmax(g, V);
                if (ta == tg) {
                        agree++;
                } else {
                        /* a near-tie: the CPU's own winner leads the GPU's pick by less than
                         * twice the largest logit difference between the backends on this row */
                        if ((double)a[ta] - a[tg] <= 2.0 * md)
                                near++;
                        else
                                fprintf(stderr, "%s: position %d: CPU top-1 %u (%.6f) vs GPU %u (%.6f), CPU margin %.3e, max |d| %.3e\n",
                                        path, i, ta, a[ta], tg, a[tg], (double)a[ta] - a[tg], md);
                }
                id_ok += (uint32_t)ids[i] == tg;
        }
        *top1_out = (double)agree / N_TF;
        *err_out = worst;
        if (chunk == 7) {
                g_tf_maxabs = 0;
                for (size_t i = 0; i < (size_t)N_TF * V; i++)
                        g_tf_maxabs = fmax(g_tf_maxabs, fabs((double)lc[i] - lg[i]));
                g_tf_agree += agree;
                g_tf_total += N_TF;
        } else if (chunk == 12) {
                g_tf12_agree += agree;
                g_tf12_total += N_TF;
        }
        snprintf(what, sizeof(what), "teacher-forced (GPU chunks of %d) top-1 agreement %d/%d, the %d others near-ties; "
                 "max |dlogit|/range %.2e (< 1e-2)", chunk, agree, N_TF, N_TF - agree, worst);
        if (g_truth) {
                /* The CPU backend is a reference with errors of its own: in BF16 it rounds the
                 * activations to 8 bits of mantissa before each product, as the GPU does, at
                 * the same points. Both against the F32 truth: the GPU must be within twice
                 * the CPU's error (and the CPU/GPU difference is then judged by that, not by
                 * the fixed 1e-2). */
                int t1c, t1g;
                const double ec = truth_err(lc, lt, V, &t1c), eg = truth_err(lg, lt, V, &t1g);
                snprintf(what, sizeof(what), "against F32 truth (GPU chunks of %d): max |dlogit|/range CPU %.2e, GPU %.2e "
                         "(<= 2x CPU + 1e-3); top-1 = truth CPU %d/%d, GPU %d/%d", chunk, ec, eg, t1c, N_TF, t1g, N_TF);
                check(eg <= 2.0 * ec + 1e-3, what, path);
                snprintf(what, sizeof(what), "teacher-forced (GPU chunks of %d) top-1 agreement %d/%d, the %d others near-ties; "
                         "max |dlogit|/range %.2e (bound: the line above)", chunk, agree, N_TF, N_TF - agree, worst);
                check(agree + near == N_TF, what, path);
                jrec("{\"model\": \"%s\", \"test\": \"truth\", \"chunk\": %d, \"cpu_err\": %.3e, \"gpu_err\": %.3e, "
                     "\"cpu_top1\": %d, \"gpu_top1\": %d, \"positions\": %d}", path, chunk, ec, eg, t1c, t1g, N_TF);
        } else {
                check(agree + near == N_TF && worst < 1e-2, what, path);
        }
        snprintf(what, sizeof(what), "GPU greedy sampler = argmax of the GPU logits on %d/%d rows", id_ok, N_TF);
        check(id_ok == N_TF, what, path);
        r = 0;
out:
        if (r < 0) { /* a pass that could not run is a failure, never a silent skip */
                fprintf(stderr, "%s: %s\n", path, err.msg);
                snprintf(what, sizeof(what), "teacher-forced (GPU chunks of %d): %s", chunk, err.msg);
                check(0, what, path);
        }
        ecu_ctx_free(cc);
        engine_kv_free(kg);
        free(lc);
        free(lg);
        free(lt);
        return r;
}

/* ---- 2-4. through the scheduler ---- */

struct collect {
        int32_t out[64][N_GEN + 8];
        uint32_t n[64];
        int done;
};

static void on_token(void *user, uint64_t tag, int32_t id, const char *text, uint32_t len)
{
        (void)text;
        (void)len;
        struct collect *c = user;
        if (tag < 64 && c->n[tag] < N_GEN + 8)
                c->out[tag][c->n[tag]++] = id;
}

static void on_done(void *user, uint64_t tag, const struct engine_sched_done *d)
{
        struct collect *c = user;
        (void)tag;
        if (d->reason == ENGINE_FINISH_ERROR)
                fprintf(stderr, "request %llu failed: %s\n", (unsigned long long)tag, d->msg);
        c->done++;
}

/* Submits n requests (prompts[i], sampling s[i]) all at once (or one at a time when serial)
 * and runs until all finish. Returns the mean launches per step over decode steps. */
static bool g_invariant;
static bool g_no_overlap; /* wait for each step before building the next */
static bool g_vary;       /* request i stops after N_GEN - i % 9 tokens */
static int g_pdl;         /* engine_sched_opts.pdl (0: the default) */
static bool g_no_fuse;    /* engine_sched_opts.no_fused_epilogues */
static bool g_no_tc_decode; /* engine_sched_opts.no_tc_decode */
static bool g_no_mma;       /* engine_sched_opts.no_mma_products */

static int run_sched(struct engine_model *m, bool no_graphs, int n, const int32_t (*prompts)[16],
                     const struct engine_sampling *s, bool serial, struct collect *c, double *launches,
                     double *graph_frac)
{
        struct sl_error err = {0};
        struct engine_sched_opts o = {.max_running = 32, .max_queued = 64, .token_budget = 256, .max_ctx = 256,
                                      .kv_blocks = 1024, .no_graphs = no_graphs,
                                      .batch_invariant = g_invariant, .no_overlap = g_no_overlap,
                                      .pdl = g_pdl, .no_fused_epilogues = g_no_fuse, .gemv_max_tokens = GEMV_MAX,
                                      .no_tc_decode = g_no_tc_decode, .no_mma_products = g_no_mma};
        struct engine_sched *sch;
        int r = engine_sched_create(m, &o, &sch, &err);
        if (r < 0) {
                fprintf(stderr, "sched: %s\n", err.msg);
                return r;
        }
        memset(c, 0, sizeof(*c));
        struct engine_sched_events ev = {on_token, on_done};
        uint64_t lsum = 0, lsteps = 0;
        for (int i = 0; i < n; i++) {
                struct engine_request q = {.tag = (uint64_t)i, .prompt = prompts[i], .n_prompt = 16,
                                           .sampling = s[i], .max_tokens = N_GEN - (g_vary ? i % 9 : 0),
                                           .ignore_eos = true};
                if ((r = engine_sched_submit(sch, &q, NULL, &err)) < 0) {
                        fprintf(stderr, "submit: %s\n", err.msg);
                        goto out;
                }
                while (serial && c->done <= i) {
                        if ((r = engine_sched_step(sch, &ev, c, &err)) < 0)
                                goto fail;
                }
        }
        while (c->done < n) {
                struct engine_sched_stats a, b;
                engine_sched_stats(sch, &a);
                if ((r = engine_sched_step(sch, &ev, c, &err)) < 0)
                        goto fail;
                engine_sched_stats(sch, &b);
                if (b.steps > a.steps && b.prefill_last == 0) { /* completed a decode step */
                        lsum += b.launches_last;
                        lsteps++;
                }
        }
        struct engine_sched_stats st;
        engine_sched_stats(sch, &st);
        if (launches)
                *launches = lsteps ? (double)lsum / lsteps : 0.0;
        if (graph_frac)
                *graph_frac = st.graph_steps + st.eager_steps ? (double)st.graph_steps / (st.graph_steps + st.eager_steps) : 0;
        r = 0;
        goto out;
fail:
        fprintf(stderr, "step: %s\n", err.msg);
out:
        engine_sched_free(sch);
        return r;
}

static int same(const struct collect *a, const struct collect *b, int n)
{
        int ok = 0;
        for (int i = 0; i < n; i++)
                ok += a->n[i] == b->n[i] && !memcmp(a->out[i], b->out[i], a->n[i] * sizeof(int32_t));
        return ok;
}

#define MARGIN_MAX_TOKENS 2048

/* The CPU backend's logit of a minus that of b after the n ids (teacher-forced), or NaN
 * when it cannot be computed. */
static double cpu_margin(struct engine_model *cpu, const int32_t *ids, uint32_t n, int32_t a, int32_t b)
{
        static int32_t pos[MARGIN_MAX_TOKENS], seq[MARGIN_MAX_TOKENS];
        static uint8_t fl[MARGIN_MAX_TOKENS];
        const uint32_t V = engine_model_hparams(cpu)->n_vocab;
        if (n == 0 || n > MARGIN_MAX_TOKENS || a < 0 || b < 0 || (uint32_t)a >= V || (uint32_t)b >= V)
                return NAN;
        for (uint32_t j = 0; j < n; j++) {
                pos[j] = (int32_t)j;
                seq[j] = 0;
                fl[j] = j + 1 == n;
        }
        struct sl_error err = {0};
        struct engine_kv *kv = NULL;
        struct engine_ctx *ctx = NULL;
        float *lg = malloc(V * sizeof(float));
        struct engine_kv_opts ko = {.block_size = 16, .n_blocks = (n + 15) / 16, .max_seqs = 1,
                                    .max_seq_len = (n + 15) / 16 * 16};
        struct engine_batch bt = {.n_tokens = n, .token = ids, .pos = pos, .seq = seq, .logits = fl};
        double m = NAN;
        if (lg && engine_kv_create(cpu, &ko, &kv, &err) == 0 && engine_ctx_create(cpu, 0, n, &ctx, &err) == 0 &&
            engine_kv_seq_open(kv) == 0 && engine_forward(ctx, kv, &bt, lg, &err) == 1)
                m = (double)lg[a] - lg[b];
        engine_ctx_free(ctx);
        engine_kv_free(kv);
        free(lg);
        return m;
}

/* For sequences that differ: the CPU's logits at the first differing position (prompt and
 * the common prefix fed teacher-forced); the divergence is a near-tie when the CPU's own
 * pick leads the other backend's by no more than twice the largest logit difference the
 * teacher-forced comparison measured. Returns how many differing sequences are NOT explained. */
static int unexplained(struct engine_model *cpu, const int32_t (*prompts)[16], const struct collect *a,
                       const struct collect *b, int n, const char *path)
{
        int bad = 0;
        for (int i = 0; i < n; i++) {
                uint32_t k = 0;
                while (k < a->n[i] && k < b->n[i] && a->out[i][k] == b->out[i][k])
                        k++;
                if (k == a->n[i] && k == b->n[i])
                        continue;
                if (k >= a->n[i] || k >= b->n[i]) {
                        bad++;
                        continue;
                }
                int32_t toks[16 + N_GEN + 8];
                const uint32_t nt = 16 + k;
                for (uint32_t j = 0; j < nt; j++)
                        toks[j] = j < 16 ? prompts[i][j] : a->out[i][j - 16];
                const double margin = cpu_margin(cpu, toks, nt, a->out[i][k], b->out[i][k]);
                const bool tie = margin <= 2.0 * g_tf_maxabs;
                printf("       %s: prompt %d differs at token %u (CPU %d, GPU %d): CPU margin %.3e, tolerance %.3e: %s\n", path,
                       i, k, a->out[i][k], b->out[i][k], margin, 2.0 * g_tf_maxabs, tie ? "near-tie" : "NOT a near-tie");
                bad += !tie;
        }
        return bad;
}

/* ---- prompts held in the caller's memory ---- */

static unsigned g_released;
static void count_release(void *ctx)
{
        (void)ctx;
        g_released++;
}

/* Greedy N_HELD tokens of a 40-id prompt; with buf, submitted held in buf (which then gets
 * the ids of rewrite). Returns prompt tokens read in place, or -1. */
#define N_HELD 8
static long held_run(struct engine_sched *sch, const int32_t *prompt, int32_t *buf, const int32_t *rewrite,
                     struct collect *c)
{
        struct sl_error err = {0};
        struct engine_sched_stats a, b;
        struct engine_sched_events ev = {on_token, on_done};
        engine_sched_stats(sch, &a);
        memset(c, 0, sizeof(*c));
        struct engine_request q = {.tag = 0, .prompt = prompt, .n_prompt = 40, .max_tokens = N_HELD,
                                   .ignore_eos = true};
        engine_sampling_defaults(&q.sampling);
        q.sampling.temperature = 0;
        if (buf) {
                memcpy(buf, prompt, 40 * sizeof(int32_t));
                q.prompt = buf;
                q.prompt_release = count_release;
        }
        if (engine_sched_submit(sch, &q, NULL, &err) < 0) {
                fprintf(stderr, "submit: %s\n", err.msg);
                return -1;
        }
        if (buf) /* against the contract, to see where the steps read */
                memcpy(buf, rewrite, 40 * sizeof(int32_t));
        while (c->done < 1)
                if (engine_sched_step(sch, &ev, c, &err) < 0) {
                        fprintf(stderr, "step: %s\n", err.msg);
                        return -1;
                }
        engine_sched_stats(sch, &b);
        return (long)(b.prompt_tokens_in_place - a.prompt_tokens_in_place);
}

static void held_prompts(struct engine_model *gpu, const char *path, uint32_t V)
{
        struct sl_error err = {0};
        struct engine_sched_opts o = {.max_running = 4, .max_queued = 4, .token_budget = 64, .prefill_chunk = 16,
                                      .max_ctx = 128, .kv_blocks = 64, .gemv_max_tokens = GEMV_MAX};
        struct engine_sched *sch = NULL;
        static struct collect ra, rb, rh, rc;
        int32_t a[40], b[40];
        const size_t bytes = 4096;
        int32_t *mapped = aligned_alloc(4096, bytes), *plain = aligned_alloc(4096, bytes);
        void *dev = NULL;
        char what[200];
        uint64_t x = 0x4e1d; /* its own generator: the other tests' random ids stay as they were */
        for (int i = 0; i < 40; i++) {
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                a[i] = (int32_t)((x >> 33) % V);
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                b[i] = (int32_t)((x >> 33) % V);
        }
        int reg = mapped ? engine_host_register(gpu, mapped, bytes, &dev, &err) : -ENOMEM;
        check(reg == 0 && dev == mapped, "held prompts: caller's buffer registered and mapped at its own address", path);
        if (reg < 0 || !plain || engine_sched_create(gpu, &o, &sch, &err) < 0) {
                fprintf(stderr, "held prompts: %s\n", err.msg);
                check(0, "held prompts: set-up", path);
                goto out;
        }
        long n_a = held_run(sch, a, NULL, NULL, &ra), n_b = held_run(sch, b, NULL, NULL, &rb);
        g_released = 0;
        long n_h = held_run(sch, a, mapped, b, &rh); /* submitted with a, rewritten to b */
        const unsigned rel_h = g_released;
        long n_c = held_run(sch, a, plain, b, &rc);  /* the same in memory the GPU cannot read */
        const unsigned rel_c = g_released - rel_h;
        const bool differ = memcmp(ra.out[0], rb.out[0], sizeof(ra.out[0])) != 0;
        const bool h_is_b = rh.n[0] == N_HELD && memcmp(rh.out[0], rb.out[0], sizeof(rh.out[0])) == 0;
        const bool c_is_a = rc.n[0] == N_HELD && memcmp(rc.out[0], ra.out[0], sizeof(rc.out[0])) == 0;
        snprintf(what, sizeof(what), "held prompt in mapped memory: %ld of 40 ids read in place by the GPU, tokens "
                 "follow the ids found there: %s, released %u time(s)", n_h, h_is_b ? "yes" : "no", rel_h);
        check(n_a == 0 && n_b == 0 && n_h == 40 && h_is_b && rel_h == 1, what, path);
        snprintf(what, sizeof(what), "held prompt in memory the GPU cannot read: %ld ids in place, tokens are the "
                 "engine's copy's: %s, released %u time(s)", n_c, c_is_a ? "yes" : "no", rel_c);
        check(n_c == 0 && c_is_a && rel_c == 1, what, path);
        check(differ, "held prompts: the two prompts continue differently", path);
        jrec("{\"model\": \"%s\", \"test\": \"held_prompt\", \"in_place\": %ld, \"follows_buffer\": %d, "
             "\"unmapped_in_place\": %ld, \"unmapped_follows_copy\": %d}", path, n_h, h_is_b, n_c, c_is_a);
out:
        engine_sched_free(sch);
        if (reg == 0)
                engine_host_unregister(gpu, mapped);
        free(mapped);
        free(plain);
}

static int test_model(const char *path)
{
        struct sl_error err = {0};
        struct engine_model *cpu = NULL, *gpu = NULL;
        struct engine_load_opts lc = {.backend = ENGINE_BACKEND_CPU}, lg = {.backend = ENGINE_BACKEND_CUDA};
        int r;
        if ((r = engine_model_load(path, &lc, &cpu, &err)) < 0 || (r = engine_model_load(path, &lg, &gpu, &err)) < 0) {
                fprintf(stderr, "%s: %s\n", path, err.msg);
                failures++;
                goto out;
        }
        printf("%s: %s\n", path, engine_model_backend_reason(gpu));
        const uint32_t V = engine_model_hparams(cpu)->n_vocab;
        int32_t toks[N_TF];
        for (int i = 0; i < N_TF; i++)
                toks[i] = (int32_t)(rnd() % V);
        if (g_text) {
                static int32_t ids[1 << 16];
                const struct engine_tokenizer *tk = engine_model_tokenizer(cpu);
                int n = tk ? engine_tokenize(tk, g_text, strlen(g_text), true, false, ids, sizeof(ids) / sizeof(ids[0]), NULL)
                           : -ENOENT;
                char what[160];
                snprintf(what, sizeof(what), "--text: %d tokens in the model's tokenizer (%d needed)", n, N_TF);
                check(n >= N_TF, what, path);
                if (n < N_TF)
                        goto out;
                memcpy(toks, ids, sizeof(toks));
        }
        double top1 = 0, terr = 0, top1_tc = 0, terr_tc = 0, top1_mma = 0, terr_mma = 0;
        teacher_forced(path, cpu, gpu, toks, N_TF, &top1_tc, &terr_tc);
        /* 12 tokens a step: above GEMV_MAX, so the products go to cuda_mma_gemv on Hopper
         * (cuBLASLt elsewhere) */
        teacher_forced(path, cpu, gpu, toks, 12, &top1_mma, &terr_mma);
        teacher_forced(path, cpu, gpu, toks, 7, &top1, &terr);

        static int32_t prompts[64][16];
        for (int i = 0; i < 64; i++)
                for (int j = 0; j < 16; j++)
                        prompts[i][j] = (int32_t)(rnd() % V);
        struct engine_sampling s[64];
        for (int i = 0; i < 64; i++) {
                engine_sampling_defaults(&s[i]);
                s[i].temperature = 0.0f;
        }
        static struct collect a, b, c, d;
        double l_eager = 0, l_graph = 0, gf = 0;
        int ok;
        char what[200];
        if (run_sched(cpu, true, N_PROMPTS, prompts, s, true, &a, NULL, NULL) == 0 &&
            run_sched(gpu, false, N_PROMPTS, prompts, s, false, &b, &l_graph, &gf) == 0) {
                ok = same(&a, &b, N_PROMPTS);
                /* random weights meet near-ties; each divergence must be one */
                const int nx = unexplained(cpu, prompts, &a, &b, N_PROMPTS, path);
                snprintf(what, sizeof(what), "greedy %d tokens, CPU one at a time vs GPU batched: %d/%d prompts identical, "
                         "%d differ after a near-tie, %d otherwise", N_GEN, ok, N_PROMPTS, N_PROMPTS - ok - nx, nx);
                check(nx == 0, what, path);
                jrec("{\"model\": \"%s\", \"test\": \"greedy_cpu_vs_gpu\", \"identical\": %d, \"of\": %d}", path, ok,
                     N_PROMPTS);
        } else {
                check(0, "greedy runs", path);
        }
        if (run_sched(gpu, true, N_PROMPTS, prompts, s, false, &c, &l_eager, NULL) == 0) {
                ok = same(&b, &c, N_PROMPTS);
                snprintf(what, sizeof(what), "CUDA Graph replay == eager: %d/%d prompts identical; launches/decode step "
                         "%.1f eager, %.1f graph (%.0f%% of steps replayed)", ok, N_PROMPTS, l_eager, l_graph, gf * 100);
                check(ok == N_PROMPTS && gf > 0.5, what, path);
                jrec("{\"model\": \"%s\", \"test\": \"graph_vs_eager\", \"identical\": %d, \"of\": %d, "
                     "\"launches_eager\": %.1f, \"launches_graph\": %.1f, \"graph_step_fraction\": %.3f}",
                     path, ok, N_PROMPTS, l_eager, l_graph, gf);
        } else {
                check(0, "eager run", path);
        }
        /* a seeded sampled request alone, then as request 17 of 32 */
        struct engine_sampling t;
        engine_sampling_defaults(&t);
        t.temperature = 0.9f;
        t.top_k = 40;
        t.top_p = 0.95f;
        t.repeat_penalty = 1.1f;
        t.seed = 1234;
        struct engine_sampling many[64];
        for (int i = 0; i < 32; i++) {
                many[i] = t;
                many[i].seed = 1000 + (uint64_t)i;
        }
        many[17] = t;
        static int32_t p2[64][16];
        memcpy(p2, prompts, sizeof(p2));
        memcpy(p2[0], prompts[40], sizeof(p2[0]));
        memcpy(p2[17], prompts[40], sizeof(p2[17]));
        struct engine_sampling one[1] = {t};
        for (int inv = 1; inv >= 0; inv--) {
                g_invariant = inv;
                if (run_sched(gpu, false, 1, (const int32_t(*)[16])p2, one, false, &c, NULL, NULL) == 0 &&
                    run_sched(gpu, false, 32, (const int32_t(*)[16])p2, many, false, &d, NULL, NULL) == 0) {
                        ok = c.n[0] == d.n[17] && !memcmp(c.out[0], d.out[17], c.n[0] * sizeof(int32_t));
                        int k = 0;
                        while (k < (int)c.n[0] && c.out[0][k] == d.out[17][k])
                                k++;
                        snprintf(what, sizeof(what), "seeded sampling (batch_invariant %s): %d of %u tokens the same alone "
                                 "and inside a batch of 32%s", inv ? "on" : "off", k, c.n[0],
                                 inv ? "" : " (informational: may differ)");
                        check(ok || !inv, what, path);
                        jrec("{\"model\": \"%s\", \"test\": \"seeded_alone_vs_batch\", \"batch_invariant\": %d, "
                             "\"same_prefix\": %d, \"of\": %u}", path, inv, k, c.n[0]);
                } else {
                        check(0, "seeded runs", path);
                }
        }
        g_invariant = false;
        /* overlapped steps (step n+1 launched before step n's ids are read; its tokens taken
         * from step n's output on the GPU, penalty windows too) == one step at a time: seeded
         * sampling with penalties, and greedy requests of different lengths (the ones that end
         * are left out of the next step) */
        for (int v = 0; v < 2; v++) {
                g_vary = v;
                const struct engine_sampling *sv = v ? s : many;
                const int nv = v ? N_PROMPTS : 32;
                if (run_sched(gpu, false, nv, (const int32_t(*)[16])p2, sv, false, &c, NULL, NULL) == 0) {
                        g_no_overlap = true;
                        r = run_sched(gpu, false, nv, (const int32_t(*)[16])p2, sv, false, &d, NULL, NULL);
                        g_no_overlap = false;
                        ok = r == 0 ? same(&c, &d, nv) : 0;
                        snprintf(what, sizeof(what), "overlapped steps == one at a time (%s): %d/%d requests identical",
                                 v ? "greedy, lengths vary" : "seeded, penalties", ok, nv);
                        check(ok == nv, what, path);
                        jrec("{\"model\": \"%s\", \"test\": \"overlap_vs_sync\", \"case\": \"%s\", \"identical\": %d, "
                             "\"of\": %d}", path, v ? "greedy_vary" : "seeded_penalties", ok, nv);
                } else {
                        check(0, "overlap runs", path);
                }
        }
        g_vary = false;
        /* programmatic dependent launch (kernels starting while the one before them finishes)
         * changes when work runs, never what it computes: off (-1), the layer kernels only (1),
         * every kernel of multi-token steps (7), every bit but the wgmma products' (63), and
         * every bit on 12 requests (127: their 12-token steps' products are cuda_mma_gemv's
         * on Hopper) give the same tokens as the default, for seeded sampling with penalties */
        static const struct {
                int pdl, n;
        } modes[] = {{-1, 32}, {1, 32}, {7, 32}, {63, 32}, {127, 12}};
        static struct collect base12;
        if (run_sched(gpu, false, 32, (const int32_t(*)[16])p2, many, false, &c, NULL, NULL) == 0 &&
            run_sched(gpu, false, 12, (const int32_t(*)[16])p2, many, false, &base12, NULL, NULL) == 0) {
                for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
                        g_pdl = modes[i].pdl;
                        r = run_sched(gpu, false, modes[i].n, (const int32_t(*)[16])p2, many, false, &d, NULL, NULL);
                        g_pdl = 0;
                        ok = r == 0 ? same(modes[i].n == 32 ? &c : &base12, &d, modes[i].n) : 0;
                        snprintf(what, sizeof(what), "pdl %d == default (pdl %d): %d/%d requests identical", modes[i].pdl,
                                 ENGINE_PDL_DEFAULT, ok, modes[i].n);
                        check(ok == modes[i].n, what, path);
                        jrec("{\"model\": \"%s\", \"test\": \"pdl_vs_default\", \"pdl\": %d, \"identical\": %d, "
                             "\"of\": %d}", path, modes[i].pdl, ok, modes[i].n);
                }
        } else {
                check(0, "pdl runs", path);
        }
        /* one-token steps with Q/K/V post-processing and SwiGLU/GeGLU as the products'
         * epilogues (the default) == the separate kernels: requests one at a time, so every
         * decode step is one token; seeded sampling with penalties */
        if (run_sched(gpu, false, 8, (const int32_t(*)[16])p2, many, true, &c, NULL, NULL) == 0) {
                g_no_fuse = true;
                r = run_sched(gpu, false, 8, (const int32_t(*)[16])p2, many, true, &d, NULL, NULL);
                g_no_fuse = false;
                ok = r == 0 ? same(&c, &d, 8) : 0;
                snprintf(what, sizeof(what), "one-token fused epilogues == separate kernels: %d/8 requests identical", ok);
                check(ok == 8, what, path);
                jrec("{\"model\": \"%s\", \"test\": \"fused_vs_separate\", \"identical\": %d, \"of\": 8}", path, ok);
                /* one-token steps with their RMSNorms launched early (ECU_PDL_NORM1) */
                g_pdl = 63;
                r = run_sched(gpu, false, 8, (const int32_t(*)[16])p2, many, true, &d, NULL, NULL);
                g_pdl = 0;
                ok = r == 0 ? same(&c, &d, 8) : 0;
                snprintf(what, sizeof(what), "one-token steps, pdl 63 (norms, attention, I/O early) == default: %d/8 requests identical", ok);
                check(ok == 8, what, path);
        } else {
                check(0, "fused runs", path);
        }
        /* greedy with one other path at a time: decode attention on the CUDA cores
         * (cuda_attention; by default the tokens outside prefill runs go to
         * cuda_attention_dec, on the tensor cores), products of 9-16 tokens through cuBLASLt
         * (by default cuda_mma_gemv on Hopper), batch-invariant mode: the CPU-vs-GPU
         * comparison again */
        static const struct {
                bool *flag;
                const char *what;
        } alts[] = {{&g_no_tc_decode, "decode attention on CUDA cores"},
                    {&g_no_mma, "products through cuBLASLt"},
                    {&g_invariant, "batch-invariant mode"}};
        for (size_t i = 0; i < sizeof(alts) / sizeof(alts[0]); i++) {
                *alts[i].flag = true;
                if (run_sched(gpu, false, N_PROMPTS, prompts, s, false, &c, NULL, NULL) == 0) {
                        ok = same(&a, &c, N_PROMPTS);
                        const int nx = unexplained(cpu, prompts, &a, &c, N_PROMPTS, path);
                        snprintf(what, sizeof(what), "greedy %d tokens, CPU vs GPU with %s: %d/%d prompts identical, "
                                 "%d differ after a near-tie, %d otherwise", N_GEN, alts[i].what, ok, N_PROMPTS,
                                 N_PROMPTS - ok - nx, nx);
                        check(nx == 0, what, path);
                } else {
                        snprintf(what, sizeof(what), "runs with %s", alts[i].what);
                        check(0, what, path);
                }
                *alts[i].flag = false;
        }
        held_prompts(gpu, path, V);
        jrec("{\"model\": \"%s\", \"test\": \"teacher_forced\", \"top1\": %.4f, \"max_rel_err\": %.3e, \"positions\": %d, "
             "\"top1_one_chunk\": %.4f, \"max_rel_err_one_chunk\": %.3e, \"top1_chunk12\": %.4f, "
             "\"max_rel_err_chunk12\": %.3e}",
             path, top1, terr, N_TF, top1_tc, terr_tc, top1_mma, terr_mma);
out:
        engine_model_free(cpu);
        engine_model_free(gpu);
        return 0;
}

/* --margins MODEL FILE: each line "id,id,...;a;b" — the CPU backend's logit of a minus that of
 * b after the ids (teacher-forced), and the near-tie tolerance (twice the largest CPU/GPU
 * logit difference measured on random tokens of this model). Prints "margin tolerance" per
 * line: the daemon oracle uses it to tell near-ties from real disagreements. */
static int margins(const char *path, const char *file)
{
        struct sl_error err = {0};
        struct engine_model *cpu = NULL, *gpu = NULL;
        struct engine_load_opts lc = {.backend = ENGINE_BACKEND_CPU}, lg = {.backend = ENGINE_BACKEND_CUDA};
        if (engine_model_load(path, &lc, &cpu, &err) < 0 || engine_model_load(path, &lg, &gpu, &err) < 0) {
                fprintf(stderr, "%s: %s\n", path, err.msg);
                return 1;
        }
        const uint32_t V = engine_model_hparams(cpu)->n_vocab;
        int32_t toks[N_TF];
        for (int i = 0; i < N_TF; i++)
                toks[i] = (int32_t)(rnd() % V);
        double top1, terr;
        teacher_forced(path, cpu, gpu, toks, 7, &top1, &terr);
        FILE *f = fopen(file, "r");
        if (!f)
                return 1;
        char line[65536];
        while (fgets(line, sizeof(line), f)) {
                int32_t ids[MARGIN_MAX_TOKENS];
                uint32_t n = 0;
                char *p = line;
                while (*p && *p != ';' && n < MARGIN_MAX_TOKENS) {
                        ids[n++] = (int32_t)strtol(p, &p, 10);
                        if (*p == ',')
                                p++;
                }
                int a = -1, b = -1;
                const double m = sscanf(p, ";%d;%d", &a, &b) == 2 ? cpu_margin(cpu, ids, n, a, b) : NAN;
                printf("%.6e %.6e\n", m, 2.0 * g_tf_maxabs);
        }
        fclose(f);
        engine_model_free(cpu);
        engine_model_free(gpu);
        return 0;
}

int main(int argc, char **argv)
{
        int i = 1;
        if (argc == 4 && !strcmp(argv[1], "--margins"))
                return margins(argv[2], argv[3]);
        if (i + 1 < argc && !strcmp(argv[i], "--json")) {
                json = fopen(argv[i + 1], "w");
                i += 2;
                if (json)
                        fprintf(json, "[");
        }
        if (i + 1 < argc && !strcmp(argv[i], "--text")) {
                FILE *f = fopen(argv[i + 1], "r");
                size_t cap = 1 << 20, n = 0;
                g_text = f ? calloc(1, cap + 1) : NULL;
                if (g_text)
                        n = fread(g_text, 1, cap, f);
                if (f)
                        fclose(f);
                if (!g_text || n == 0) {
                        fprintf(stderr, "--text %s: cannot read it\n", argv[i + 1]);
                        return 2;
                }
                i += 2;
        }
        if (i + 1 < argc && !strcmp(argv[i], "--truth")) {
                struct sl_error e = {0};
                struct engine_load_opts lo = {.backend = ENGINE_BACKEND_CPU};
                if (engine_model_load(argv[i + 1], &lo, &g_truth, &e) < 0) {
                        fprintf(stderr, "--truth %s: %s\n", argv[i + 1], e.msg);
                        return 2;
                }
                i += 2;
        }
        if (i >= argc) {
                fprintf(stderr, "usage: %s [--json PATH] [--text FILE] [--truth F32.gguf] MODEL.gguf...\n", argv[0]);
                return 2;
        }
        struct sl_error err = {0};
        struct engine_gpu_info gi;
        if (engine_gpu_probe(0, &gi, &err) < 0) {
                printf("SKIP: %s\n", err.msg);
                return 77;
        }
        printf("GPU: %s, sm_%d%d, %.1f GiB\n", gi.name, gi.cc_major, gi.cc_minor, gi.mem_total / 1073741824.0);
        for (; i < argc; i++)
                test_model(argv[i]);
        if (g_tf_total) {
                char what[160];
                /* Every disagreement was checked to be a near-tie above; random weights have
                 * many (Gaussian logits over 128k-262k tokens leave a small top-2 gap), so the
                 * raw rate is reported against the 99.5% target and required above 99%. */
                snprintf(what, sizeof(what), "teacher-forced top-1 agreement over all models (%s): %ld/%ld = %.2f%% "
                         "(target %.1f%%: %s; required >= %.1f%%)", g_text ? "text" : "random ids", g_tf_agree, g_tf_total, 100.0 * g_tf_agree / g_tf_total,
                         TOP1_MIN * 100, g_tf_agree >= TOP1_MIN * g_tf_total ? "met" : "MISSED", TOP1_FLOOR * 100);
                /* a rate needs a sample: with a model or two (memcheck runs) it is only reported */
                if (g_tf_total >= 6 * N_TF)
                        check(g_tf_agree >= TOP1_FLOOR * g_tf_total, what, "all");
                else
                        printf("INFO   all: %s\n", what);
                jrec("{\"test\": \"teacher_forced_all\", \"input\": \"%s\", \"agree\": %ld, \"total\": %ld, "
                     "\"agree_chunk12\": %ld, \"total_chunk12\": %ld}",
                     g_text ? "text" : "random", g_tf_agree, g_tf_total, g_tf12_agree, g_tf12_total);
                printf("INFO   all: teacher-forced top-1 agreement in GPU chunks of 12 (%s): %ld/%ld = %.2f%%\n",
                       g_text ? "text" : "random ids", g_tf12_agree, g_tf12_total,
                       g_tf12_total ? 100.0 * g_tf12_agree / g_tf12_total : 0.0);
        }
        if (json) {
                fprintf(json, "\n]\n");
                fclose(json);
        }
        printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
        free(g_text);
        engine_model_free(g_truth);
        return failures ? 1 : 0;
}
