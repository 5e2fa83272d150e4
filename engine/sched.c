/* sched.c — continuous batching over engine_forward(): a bounded FIFO of requests, admission
 * by free KV blocks, one batch per step mixing decodes (one token each) and prefill chunks
 * within a token budget, per-request samplers, streaming detokenization with stop strings,
 * deadlines, cancellation and preemption (drop KV, recompute later) when the pool runs dry.
 *
 * With the CUDA backend the steps overlap: step n+1 is built and launched while step n
 * still runs on the GPU, then step n's tokens are read and emitted while n+1 runs. A
 * request whose token of step n is not known yet decodes it in step n+1 all the same: the
 * GPU takes the id from step n's output (ecu_step_args.prev_row). When that token ends the
 * request (end of generation, a stop string), its row of step n+1 is computed and dropped.
 * Requests that step n's token would end by length are left out of step n+1. Preemption
 * happens only with nothing in flight. Prompt chunks are read by the GPU straight from the
 * slots' token arrays, which live in mapped pinned memory (ecu_host_alloc).
 *
 * A prompt submitted with prompt_release is also read where the caller's transport wrote it
 * (the request ring, the DPDK receive buffer): the steps of its prefill take their ids
 * there, the GPU's too when that memory is mapped for it. The hold lasts from admission
 * while the prompt is being read: a request still queued at the end of a step call (so that
 * a queue does not keep the caller's memory), preempted, done with its prompt or ended gives
 * it back, and the caller's release runs once the last step that read it has completed. The
 * slot's own copy, made at submit, serves the host (penalty windows, recomputation after
 * preemption) and whatever comes after. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sluice_config.h"
#include "model.h"
#if SLUICE_HAVE_CUDA
#include "cuda/ecu.h"
#endif

#define HOLD_CAP (ENGINE_SCHED_MAX_STOP_LEN + 1024u)
#define PIECE_CAP 1024u

enum slot_state { SLOT_FREE, SLOT_QUEUED, SLOT_RUNNING };

struct slot {
        enum slot_state state;
        uint64_t tag;
        int seq;                        /* KV sequence while running, else -1 */
        int32_t *tok;                   /* [max_ctx] prompt then generated tokens */
        uint32_t n_prompt;
        uint32_t n_tok;                 /* prompt + generated so far */
        uint32_t n_done;                /* positions whose K/V are in the cache */
        uint32_t max_tokens;
        uint64_t admit_order;           /* larger = admitted later (preemption victim) */
        struct engine_sampler *smp;     /* CPU backend */
        struct engine_sampling sampling;/* CUDA backend: sampled on the GPU */
        bool ignore_eos;
        struct engine_detok dt;
        uint32_t n_stop;
        uint8_t stop_len[ENGINE_SCHED_MAX_STOP];
        char stop[ENGINE_SCHED_MAX_STOP][ENGINE_SCHED_MAX_STOP_LEN];
        uint32_t n_hold;
        char hold[HOLD_CAP];            /* text not yet emitted (possible stop prefix) */
        uint64_t deadline_ns, t0_ns, t_admit_ns, t_first_ns;
        uint32_t preemptions;
        int32_t out_row;                /* logits row of this step, or -1 */
        uint32_t chunk;                 /* tokens in this step's batch */
        uint32_t gen;                   /* bumped at each submit: rows of old steps are stale */
        uint64_t pend_step;             /* launch number of the step that samples this slot's
                                         * next token (0: none); in flight while > done_step */
        int32_t pend_row;               /* its row in that step */
        /* the caller's prompt, read in place while held (engine_request.prompt_release) */
        void (*ext_rel)(void *ctx);     /* NULL: no hold */
        void *ext_ctx;
        const int32_t *ext;             /* NULL (with ext_rel set): the backend cannot read it
                                         * there, the hold ends at the next step call */
        bool ext_read;                  /* the batch being built reads ext */
        uint64_t ext_step;              /* launch number of the last step that read ext (0: none) */
};

/* A hold that ended while a step reading it was still in flight. */
struct ext_pend {
        void (*rel)(void *ctx);
        void *ctx;
        uint64_t step;
};

/* A step launched and not yet completed: which slot each sampled row belongs to. */
struct flight {
        uint64_t step;                  /* launch number */
        uint32_t n, n_prefill, n_rows;
        uint32_t *slot, *gen;           /* [max_running] */
};

struct engine_sched {
        const struct engine_model *m;
        const struct engine_tokenizer *tok;
        struct engine_sched_opts o;
        uint32_t n_vocab;
        struct engine_ctx *ctx;         /* CPU backend */
        struct ecu_ctx *cuda;           /* CUDA backend */
        struct ecu_sample_row *srows;   /* [max_running] */
        int32_t *ids;                   /* [max_running] sampled ids of a CUDA step */
        int32_t *b_prev;                /* [token_budget] row of the previous step, or -1 */
        struct ecu_src_chunk *chunks;   /* [max_running] prompt chunks the GPU reads in place */
        uint32_t n_chunks;
        bool tok_mapped;                /* tok_mem is mapped pinned memory (ecu_host_alloc) */
        bool overlap;                   /* launch step n+1 before reading step n */
        struct flight fl[2];            /* in flight, oldest at fl_head */
        uint32_t fl_head, fl_n;
        uint64_t launch_step, done_step;
        struct ext_pend *pend;          /* [2 * n_slots] */
        uint32_t n_pend;
        bool broken;
        struct engine_kv *kv;
        uint32_t n_slots;
        struct slot *slots;
        int32_t *tok_mem;
        /* queue: ring of slot indices, FIFO; preempted requests go back to the head */
        uint32_t *q;
        uint32_t q_head, q_len;
        uint32_t n_queued_new;          /* queued entries counted against max_queued */
        /* running: slot indices in admission order */
        uint32_t *run;
        uint32_t n_run;
        uint64_t admit_counter;
        /* batch */
        int32_t *b_tok, *b_pos, *b_seq;
        uint8_t *b_lg;
        uint32_t *row_slot;             /* logits row -> slot */
        float *logits;
        char piece[PIECE_CAP];
        uint64_t step_ns_ewma;
        struct engine_sched_stats st;   /* written with relaxed atomics */
};

#define ST_SET(s, f, v) __atomic_store_n(&(s)->st.f, (v), __ATOMIC_RELAXED)
#define ST_ADD(s, f, v) __atomic_store_n(&(s)->st.f, (s)->st.f + (v), __ATOMIC_RELAXED)

static void publish(struct engine_sched *s)
{
        ST_SET(s, queued, s->q_len);
        ST_SET(s, running, s->n_run);
        ST_SET(s, kv_blocks_used, engine_kv_blocks_total(s->kv) - engine_kv_blocks_free(s->kv));
}

/* ---- create / free ---- */

int engine_sched_create(const struct engine_model *m, const struct engine_sched_opts *opts,
                        struct engine_sched **out, struct sl_error *err)
{
        struct engine_sched *s = NULL;
        int r;

        *out = NULL;
        if (!m || !opts)
                return sl_errorf(err, -EINVAL, "sched: NULL model or options");
        const struct engine_hparams *hp = engine_model_hparams(m);
        s = calloc(1, sizeof(*s));
        if (!s)
                return sl_errorf(err, -ENOMEM, "sched: out of memory");
        s->m = m;
        s->tok = engine_model_tokenizer(m);
        s->n_vocab = hp->n_vocab;
        struct engine_sched_opts o = *opts;
        if (!o.max_running)
                o.max_running = 16;
        if (!o.max_queued)
                o.max_queued = 64;
        if (!o.token_budget)
                o.token_budget = 256;
        if (!o.prefill_chunk)
                o.prefill_chunk = 128;
        if (!o.kv_block_size)
                o.kv_block_size = 16;
        if (!o.max_ctx)
                o.max_ctx = hp->n_ctx_train && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
        if (hp->n_ctx_train && o.max_ctx > hp->n_ctx_train)
                o.max_ctx = hp->n_ctx_train;
        if (o.max_running > 4096 || o.max_queued > 65536 || o.token_budget > 65536 || o.max_ctx < 2 ||
            o.max_ctx > (1u << 24) || o.kv_block_size > 65536) {
                r = sl_errorf(err, -EINVAL, "sched: limits out of range (max_running %u, max_queued %u, "
                              "token_budget %u, max_ctx %u, block %u)", o.max_running, o.max_queued,
                              o.token_budget, o.max_ctx, o.kv_block_size);
                goto fail;
        }
        if (o.token_budget < o.max_running)
                o.token_budget = o.max_running;
        if (o.prefill_chunk > o.token_budget)
                o.prefill_chunk = o.token_budget;
        const bool cuda = engine_model_backend(m) == ENGINE_BACKEND_CUDA;
#if SLUICE_HAVE_CUDA
        if (cuda) {
                /* The GPU's pool: sized from free memory unless a size was given. */
                uint64_t per_block = (uint64_t)hp->n_layer * o.kv_block_size *
                                     (hp->n_head_kv * (hp->head_dim_k + hp->head_dim_v)) * 2;
                struct ecu_ctx_opts co = {.max_seqs = o.max_running, .max_tokens = o.token_budget,
                                          .block_size = o.kv_block_size,
                                          .max_blocks_per_seq = (o.max_ctx + o.kv_block_size - 1) / o.kv_block_size,
                                          .n_blocks = o.kv_blocks ? o.kv_blocks
                                                      : o.kv_bytes ? (uint32_t)SL_MAX(o.kv_bytes / per_block, 1ull) : 0,
                                          .kv_fraction = o.kv_gpu_fraction, .no_graphs = o.no_graphs,
                                          .batch_invariant = o.batch_invariant,
                                          .no_fused_epilogues = o.no_fused_epilogues,
                                          .no_tc_attention = o.no_tc_attention, .no_tc_decode = o.no_tc_decode,
                                          .no_mma_products = o.no_mma_products, .pdl = o.pdl < 0 ? 0 : o.pdl ? o.pdl : ENGINE_PDL_DEFAULT,
                                          .gemv_max_tokens = o.gemv_max_tokens};
                if ((r = ecu_ctx_create(m, &co, &s->cuda, err)) < 0)
                        goto fail;
                struct ecu_ctx_info ci;
                ecu_ctx_get_info(s->cuda, &ci);
                o.kv_blocks = ci.n_blocks;
        }
#else
        if (cuda) {
                r = sl_errorf(err, -EOPNOTSUPP, "sched: this build has no CUDA backend");
                goto fail;
        }
#endif
        if (!o.kv_blocks) {
                uint64_t per_block = (uint64_t)hp->n_layer * o.kv_block_size *
                                     (hp->n_head_kv * (hp->head_dim_k + hp->head_dim_v)) * 2;
                if (o.kv_bytes)
                        o.kv_blocks = (uint32_t)SL_MIN(o.kv_bytes / per_block, (uint64_t)1 << 24);
                else
                        o.kv_blocks = o.max_running * ((o.max_ctx + o.kv_block_size - 1) / o.kv_block_size);
                if (!o.kv_blocks) {
                        r = sl_errorf(err, -EINVAL, "sched: kv_bytes %llu is less than one block (%llu bytes)",
                                      (unsigned long long)o.kv_bytes, (unsigned long long)per_block);
                        goto fail;
                }
        }
        /* A request alone must always fit, so the oldest can always make progress. */
        if ((uint64_t)o.kv_blocks * o.kv_block_size < o.max_ctx)
                o.max_ctx = o.kv_blocks * o.kv_block_size;
        if (o.max_ctx < 2) {
                r = sl_errorf(err, -EINVAL, "sched: KV pool of %u blocks is too small", o.kv_blocks);
                goto fail;
        }
        if (!o.max_prompt_tokens || o.max_prompt_tokens > o.max_ctx - 1)
                o.max_prompt_tokens = o.max_ctx - 1;
        if (!o.max_new_tokens || o.max_new_tokens > o.max_ctx - 1)
                o.max_new_tokens = o.max_ctx - 1;
        s->o = o;

        struct engine_kv_opts ko = {.block_size = o.kv_block_size, .n_blocks = o.kv_blocks,
                                    .max_seqs = o.max_running, .max_seq_len = o.max_ctx, .tables_only = cuda};
        if ((r = engine_kv_create(m, &ko, &s->kv, err)) < 0 ||
            (!cuda && (r = engine_ctx_create(m, o.n_threads, o.token_budget, &s->ctx, err)) < 0))
                goto fail;

        s->n_slots = o.max_running + o.max_queued;
        s->slots = calloc(s->n_slots, sizeof(*s->slots));
        const size_t tok_bytes = sizeof(int32_t) * (size_t)s->n_slots * o.max_ctx;
#if SLUICE_HAVE_CUDA
        /* the GPU reads prompt chunks from here itself */
        if (cuda && (s->tok_mem = ecu_host_alloc(tok_bytes)))
                s->tok_mapped = true;
#endif
        if (!s->tok_mem && (s->tok_mem = malloc(tok_bytes)))
                memset(s->tok_mem, 0, tok_bytes); /* pages now, not while serving */
        s->overlap = cuda && !o.no_overlap;
        s->b_prev = malloc(sizeof(int32_t) * o.token_budget);
        for (int f = 0; f < 2; f++) {
                s->fl[f].slot = malloc(sizeof(uint32_t) * o.max_running);
                s->fl[f].gen = malloc(sizeof(uint32_t) * o.max_running);
        }
        s->q = malloc(sizeof(uint32_t) * s->n_slots);
        s->run = malloc(sizeof(uint32_t) * o.max_running);
        s->b_tok = malloc(sizeof(int32_t) * o.token_budget);
        s->b_pos = malloc(sizeof(int32_t) * o.token_budget);
        s->b_seq = malloc(sizeof(int32_t) * o.token_budget);
        s->b_lg = malloc(o.token_budget);
        s->row_slot = malloc(sizeof(uint32_t) * o.max_running);
        /* a pending release comes from a slot read by a step in flight (at most two steps,
         * each reading at most max_running slots) */
        s->pend = malloc(sizeof(*s->pend) * 2 * s->n_slots);
#if SLUICE_HAVE_CUDA
        if (cuda) {
                s->srows = calloc(o.max_running, sizeof(*s->srows));
                s->ids = calloc(o.max_running, sizeof(*s->ids));
                s->chunks = calloc(o.max_running, sizeof(*s->chunks));
        } else
#endif
        {
                s->logits = malloc(sizeof(float) * (size_t)o.max_running * s->n_vocab);
        }
        if (!s->slots || !s->tok_mem || !s->q || !s->run || !s->b_tok || !s->b_pos || !s->b_seq || !s->b_lg ||
            !s->row_slot || !s->b_prev || !s->pend || !s->fl[0].slot || !s->fl[0].gen || !s->fl[1].slot || !s->fl[1].gen ||
            (cuda ? !s->srows || !s->ids || !s->chunks : !s->logits)) {
                r = sl_errorf(err, -ENOMEM, "sched: cannot allocate %u request slots", s->n_slots);
                goto fail;
        }
        for (uint32_t i = 0; i < s->n_slots; i++) {
                s->slots[i].tok = s->tok_mem + (size_t)i * o.max_ctx;
                s->slots[i].seq = -1;
        }
        s->st.kv_blocks_total = o.kv_blocks;
        s->st.max_queued = o.max_queued;
        s->st.max_running = o.max_running;
        *out = s;
        return 0;
fail:
        engine_sched_free(s);
        return r;
}

void engine_sched_free(struct engine_sched *s)
{
        if (!s)
                return;
        if (s->slots)
                for (uint32_t i = 0; i < s->n_slots; i++)
                        engine_sampler_free(s->slots[i].smp);
        engine_ctx_free(s->ctx);
#if SLUICE_HAVE_CUDA
        ecu_ctx_free(s->cuda); /* waits for steps in flight */
#endif
        /* nothing reads the callers' prompts any more: give back every hold */
        for (uint32_t i = 0; s->pend && i < s->n_pend; i++)
                s->pend[i].rel(s->pend[i].ctx);
        for (uint32_t i = 0; s->slots && i < s->n_slots; i++)
                if (s->slots[i].ext_rel)
                        s->slots[i].ext_rel(s->slots[i].ext_ctx);
        free(s->pend);
        free(s->srows);
        free(s->ids);
        engine_kv_free(s->kv);
        free(s->slots);
#if SLUICE_HAVE_CUDA
        if (s->tok_mapped)
                ecu_host_free(s->tok_mem);
        else
#endif
                free(s->tok_mem);
        free(s->b_prev);
        free(s->chunks);
        for (int f = 0; f < 2; f++) {
                free(s->fl[f].slot);
                free(s->fl[f].gen);
        }
        free(s->q);
        free(s->run);
        free(s->b_tok);
        free(s->b_pos);
        free(s->b_seq);
        free(s->b_lg);
        free(s->row_slot);
        free(s->logits);
        free(s);
}

void engine_sched_opts_get(const struct engine_sched *s, struct engine_sched_opts *out)
{
        *out = s->o;
}

uint32_t engine_sched_live(const struct engine_sched *s)
{
        return s->q_len + s->n_run;
}

bool engine_sched_broken(const struct engine_sched *s)
{
        return s->broken;
}

enum engine_backend engine_sched_backend(const struct engine_sched *s)
{
        return s->cuda ? ENGINE_BACKEND_CUDA : ENGINE_BACKEND_CPU;
}

void engine_sched_stats(const struct engine_sched *s, struct engine_sched_stats *out)
{
        /* Field by field, relaxed: each counter is consistent, the set is not a snapshot. */
#define LD(f) out->f = __atomic_load_n(&s->st.f, __ATOMIC_RELAXED)
        LD(queued);
        LD(running);
        LD(kv_blocks_used);
        LD(kv_blocks_total);
        LD(max_queued);
        LD(max_running);
        LD(steps);
        LD(prefill_last);
        LD(tokens_computed);
        LD(prompt_tokens_in_place);
        LD(prompt_tokens);
        LD(generated_tokens);
        LD(submitted);
        LD(rejected_busy);
        for (size_t i = 0; i < SL_ARRAY_SIZE(out->finished); i++)
                LD(finished[i]);
        LD(preemptions);
        LD(step_ns_last);
        LD(graph_steps);
        LD(eager_steps);
        LD(launches_last);
        LD(gpu_errors);
        LD(gpu_ns_last);
#undef LD
}

/* ---- queue and running set ---- */

static void q_push_back(struct engine_sched *s, uint32_t idx)
{
        s->q[(s->q_head + s->q_len) % s->n_slots] = idx;
        s->q_len++;
}

static void q_push_front(struct engine_sched *s, uint32_t idx)
{
        s->q_head = (s->q_head + s->n_slots - 1) % s->n_slots;
        s->q[s->q_head] = idx;
        s->q_len++;
}

static void q_remove(struct engine_sched *s, uint32_t idx)
{
        uint32_t w = 0;
        for (uint32_t i = 0; i < s->q_len; i++) {
                uint32_t v = s->q[(s->q_head + i) % s->n_slots];
                if (v != idx)
                        s->q[(s->q_head + w++) % s->n_slots] = v;
        }
        s->q_len = w;
}

static void run_remove(struct engine_sched *s, uint32_t idx)
{
        uint32_t w = 0;
        for (uint32_t i = 0; i < s->n_run; i++)
                if (s->run[i] != idx)
                        s->run[w++] = s->run[i];
        s->n_run = w;
}

/* ---- prompts held in the caller's memory ---- */

/* Ends the slot's hold: the caller's release runs now, or once the last step that read the
 * prompt has completed. */
static void ext_end(struct engine_sched *s, struct slot *sl)
{
        if (!sl->ext_rel)
                return;
        if (sl->ext_step > s->done_step)
                s->pend[s->n_pend++] = (struct ext_pend){sl->ext_rel, sl->ext_ctx, sl->ext_step};
        else
                sl->ext_rel(sl->ext_ctx);
        sl->ext = NULL;
        sl->ext_rel = NULL;
        sl->ext_ctx = NULL;
}

/* Releases the holds whose last reading step has completed. */
static void ext_sweep(struct engine_sched *s)
{
        uint32_t w = 0;
        for (uint32_t i = 0; i < s->n_pend; i++) {
                if (s->pend[i].step <= s->done_step)
                        s->pend[i].rel(s->pend[i].ctx);
                else
                        s->pend[w++] = s->pend[i];
        }
        s->n_pend = w;
}

/* End of a step call: a hold lasts while the request is admitted and its prompt not yet all
 * read (a step that gives its token budget to others does not end it). A request still in
 * the queue, preempted, done with its prompt or ended gives its hold back, once the steps
 * that read it have completed. */
static void ext_unhold(struct engine_sched *s)
{
        for (uint32_t i = 0; i < s->n_slots; i++) {
                struct slot *sl = &s->slots[i];
                if (sl->ext_rel && !(sl->ext && sl->state == SLOT_RUNNING && sl->n_done < sl->n_prompt &&
                                     !sl->preemptions))
                        ext_end(s, sl);
        }
        ext_sweep(s);
}

/* ---- finishing ---- */

static void finish(struct engine_sched *s, uint32_t idx, enum engine_finish reason, int stop_index, int error,
                   const char *msg, const char *text, uint32_t text_len, const struct engine_sched_events *ev,
                   void *user)
{
        struct slot *sl = &s->slots[idx];
        uint64_t now = sl_now_ns();
        if (sl->state == SLOT_QUEUED) {
                q_remove(s, idx);
                if (sl->n_done == 0 && sl->t_admit_ns == 0)
                        s->n_queued_new--;
        } else if (sl->state == SLOT_RUNNING) {
                run_remove(s, idx);
        }
        if (sl->seq >= 0)
                engine_kv_seq_close(s->kv, sl->seq);
        sl->seq = -1;
        sl->state = SLOT_FREE;
        ext_end(s, sl);
        ST_ADD(s, finished[reason], 1);
        publish(s);
        if (ev && ev->on_done) {
                struct engine_sched_done d = {
                        .reason = reason, .stop_index = stop_index, .error = error, .msg = msg ? msg : "",
                        .text = text ? text : "", .text_len = text_len, .prompt_tokens = sl->n_prompt,
                        .generated_tokens = sl->n_tok - sl->n_prompt, .preemptions = sl->preemptions,
                        .queue_ns = sl->t_admit_ns ? sl->t_admit_ns - sl->t0_ns : 0,
                        .ttft_ns = sl->t_first_ns ? sl->t_first_ns - sl->t0_ns : 0,
                        .total_ns = now - sl->t0_ns,
                };
                ev->on_done(user, sl->tag, &d);
        }
}

/* Text still held (a possible stop prefix) plus the detokenizer's held bytes. */
static uint32_t drain_text(struct slot *sl)
{
        int w = engine_detok_flush(&sl->dt, sl->hold + sl->n_hold, HOLD_CAP - sl->n_hold);
        if (w > 0)
                sl->n_hold += (uint32_t)w;
        return sl->n_hold;
}

/* ---- submit / cancel ---- */

static int find_tag(const struct engine_sched *s, uint64_t tag)
{
        for (uint32_t i = 0; i < s->n_slots; i++)
                if (s->slots[i].state != SLOT_FREE && s->slots[i].tag == tag)
                        return (int)i;
        return -1;
}

int engine_sched_submit(struct engine_sched *s, const struct engine_request *req, uint32_t *retry_ms,
                        struct sl_error *err)
{
        int r;
        if (!s || !req)
                return sl_errorf(err, -EINVAL, "sched: NULL argument");
        if (retry_ms)
                *retry_ms = 0;
        if ((r = engine_sampling_validate(&req->sampling, err)) < 0)
                return r;
        if (req->n_prompt == 0 || !req->prompt)
                return sl_errorf(err, -EINVAL, "empty prompt");
        if (req->n_prompt > s->o.max_prompt_tokens)
                return sl_errorf(err, -EINVAL, "prompt of %u tokens is over the limit of %u", req->n_prompt,
                                 s->o.max_prompt_tokens);
        uint32_t max_tokens = req->max_tokens ? req->max_tokens : s->o.max_new_tokens;
        if (max_tokens > s->o.max_new_tokens)
                return sl_errorf(err, -EINVAL, "max_tokens %u is over the limit of %u", max_tokens,
                                 s->o.max_new_tokens);
        if ((uint64_t)req->n_prompt + max_tokens > s->o.max_ctx) {
                if (req->max_tokens)
                        return sl_errorf(err, -EINVAL, "prompt (%u) + max_tokens (%u) is over the context of %u",
                                         req->n_prompt, max_tokens, s->o.max_ctx);
                max_tokens = s->o.max_ctx - req->n_prompt; /* default: until the context is full */
        }
        for (uint32_t i = 0; i < req->n_prompt; i++)
                if (req->prompt[i] < 0 || (uint32_t)req->prompt[i] >= s->n_vocab)
                        return sl_errorf(err, -EINVAL, "prompt token %u: id %d outside the vocabulary of %u", i,
                                         req->prompt[i], s->n_vocab);
        if (req->n_stop > ENGINE_SCHED_MAX_STOP)
                return sl_errorf(err, -EINVAL, "%u stop strings, at most %u", req->n_stop, ENGINE_SCHED_MAX_STOP);
        for (uint32_t i = 0; i < req->n_stop; i++)
                if (!req->stop[i] || req->stop_len[i] == 0 || req->stop_len[i] > ENGINE_SCHED_MAX_STOP_LEN)
                        return sl_errorf(err, -EINVAL, "stop string %u: length %u not in 1..%u", i,
                                         req->stop_len[i], ENGINE_SCHED_MAX_STOP_LEN);
        if (find_tag(s, req->tag) >= 0)
                return sl_errorf(err, -EEXIST, "request %llu is already live", (unsigned long long)req->tag);
        int idx = -1;
        if (s->n_queued_new < s->o.max_queued)
                for (uint32_t i = 0; i < s->n_slots; i++)
                        if (s->slots[i].state == SLOT_FREE) {
                                idx = (int)i;
                                break;
                        }
        if (idx < 0) {
                /* Rough wait: the queue ahead drains at about one admission per running slot
                 * freed; use the recent step time times the queue depth. */
                uint64_t ms = (s->step_ns_ewma ? s->step_ns_ewma : 50000000ull) * (s->q_len + 1) / 1000000ull;
                ms = SL_MAX(ms, 10ull);
                ms = SL_MIN(ms, 60000ull);
                if (retry_ms)
                        *retry_ms = (uint32_t)ms;
                ST_ADD(s, rejected_busy, 1);
                return sl_errorf(err, -EBUSY, "queue full (%u waiting); retry in about %llu ms", s->q_len,
                                 (unsigned long long)ms);
        }
        struct slot *sl = &s->slots[idx];
        engine_sampler_free(sl->smp);
        sl->smp = NULL;
        if (!s->cuda && (r = engine_sampler_create(&req->sampling, s->n_vocab, &sl->smp, err)) < 0)
                return r;
        sl->sampling = req->sampling;
        sl->ignore_eos = req->ignore_eos;
        sl->tag = req->tag;
        sl->seq = -1;
        memcpy(sl->tok, req->prompt, sizeof(int32_t) * req->n_prompt);
        sl->n_prompt = sl->n_tok = req->n_prompt;
        sl->n_done = 0;
        sl->max_tokens = max_tokens;
        sl->admit_order = 0;
        if (sl->smp)
                for (uint32_t i = 0; i < req->n_prompt; i++)
                        engine_sampler_accept(sl->smp, req->prompt[i]);
        /* The output continues the prompt: the detokenizer sees the prompt first (as in
         * sluice-run), so the first generated piece keeps its leading space. */
        engine_detok_init(&sl->dt);
        for (uint32_t i = 0; i < req->n_prompt; i++)
                (void)engine_detok_push(s->tok, &sl->dt, req->prompt[i], s->piece, sizeof(s->piece));
        sl->n_stop = req->n_stop;
        for (uint32_t i = 0; i < req->n_stop; i++) {
                memcpy(sl->stop[i], req->stop[i], req->stop_len[i]);
                sl->stop_len[i] = (uint8_t)req->stop_len[i];
        }
        sl->n_hold = 0;
        sl->deadline_ns = req->deadline_ns;
        sl->t0_ns = req->t_receipt_ns ? req->t_receipt_ns : sl_now_ns();
        sl->t_admit_ns = sl->t_first_ns = 0;
        sl->preemptions = 0;
        sl->out_row = -1;
        sl->gen++;
        sl->pend_step = 0;
        sl->pend_row = -1;
        sl->ext_rel = req->prompt_release;
        sl->ext_ctx = req->prompt_ctx;
        /* a GPU that reads prompt chunks in place takes the slot's copy of memory that is not
         * mapped for it: nothing to hold for */
        bool readable = req->prompt_release != NULL;
#if SLUICE_HAVE_CUDA
        if (readable && s->cuda && s->tok_mapped)
                readable = ((uintptr_t)req->prompt & 3) == 0 && ecu_host_mapped(req->prompt);
#endif
        sl->ext = readable ? req->prompt : NULL;
        sl->ext_read = false;
        sl->ext_step = 0;
        sl->state = SLOT_QUEUED;
        q_push_back(s, (uint32_t)idx);
        s->n_queued_new++;
        ST_ADD(s, submitted, 1);
        publish(s);
        return idx;
}

int engine_sched_cancel(struct engine_sched *s, uint64_t tag, const struct engine_sched_events *ev, void *user)
{
        int idx = find_tag(s, tag);
        if (idx < 0)
                return -ENOENT;
        struct slot *sl = &s->slots[idx];
        uint32_t n = drain_text(sl);
        finish(s, (uint32_t)idx, ENGINE_FINISH_CANCELLED, -1, 0, NULL, sl->hold, n, ev, user);
        return 0;
}

/* ---- scheduling ---- */

static uint32_t blocks_for(const struct engine_sched *s, uint32_t n_pos)
{
        return (n_pos + s->o.kv_block_size - 1) / s->o.kv_block_size;
}

/* Drops the KV of a running request and puts it back at the queue head. */
static void preempt(struct engine_sched *s, uint32_t idx)
{
        struct slot *sl = &s->slots[idx];
        run_remove(s, idx);
        engine_kv_seq_close(s->kv, sl->seq);
        sl->seq = -1;
        sl->n_done = 0;
        sl->preemptions++;
        sl->state = SLOT_QUEUED;
        q_push_front(s, idx);
        ST_ADD(s, preemptions, 1);
}

static void expire(struct engine_sched *s, const struct engine_sched_events *ev, void *user)
{
        uint64_t now = 0;
        for (uint32_t i = 0; i < s->n_slots; i++) {
                struct slot *sl = &s->slots[i];
                if (sl->state == SLOT_FREE || !sl->deadline_ns)
                        continue;
                if (!now)
                        now = sl_now_ns();
                if (now >= sl->deadline_ns) {
                        uint32_t n = drain_text(sl);
                        finish(s, i, ENGINE_FINISH_DEADLINE, -1, 0, NULL, sl->hold, n, ev, user);
                }
        }
}

/* FIFO admission: stops at the first request that does not fit, so none is overtaken. */
static void admit(struct engine_sched *s)
{
        while (s->q_len > 0 && s->n_run < s->o.max_running) {
                uint32_t idx = s->q[s->q_head];
                struct slot *sl = &s->slots[idx];
                /* its prompt (or prompt + tokens so far, after preemption) and one more */
                uint32_t need = blocks_for(s, sl->n_tok + 1);
                if (need > engine_kv_blocks_free(s->kv))
                        break;
                int seq = engine_kv_seq_open(s->kv);
                if (seq < 0)
                        break;
                if (engine_kv_seq_reserve(s->kv, seq, sl->n_tok) < 0) {
                        engine_kv_seq_close(s->kv, seq);
                        break;
                }
                s->q_head = (s->q_head + 1) % s->n_slots;
                s->q_len--;
                if (sl->t_admit_ns == 0) {
                        s->n_queued_new--;
                        sl->t_admit_ns = sl_now_ns();
                }
                sl->seq = seq;
                sl->state = SLOT_RUNNING;
                sl->admit_order = ++s->admit_counter;
                s->run[s->n_run++] = idx;
        }
}

/* Every running decode gets a block for its next position; when the pool is dry, the most
 * recently admitted request gives its blocks back (possibly the one asking). */
static void reserve_decodes(struct engine_sched *s)
{
        for (uint32_t i = 0; i < s->n_run;) {
                struct slot *sl = &s->slots[s->run[i]];
                if (engine_kv_seq_reserve(s->kv, sl->seq, sl->n_tok) == 0) {
                        i++;
                        continue;
                }
                uint32_t victim = 0;
                for (uint32_t j = 1; j < s->n_run; j++)
                        if (s->slots[s->run[j]].admit_order > s->slots[s->run[victim]].admit_order)
                                victim = j;
                preempt(s, s->run[victim]);
                if (victim < i)
                        i--;
                /* retry the same index (or the element that moved into it) */
        }
}

/* Appends the token's text, finds stop strings, emits what is safe. Returns true when a
 * stop string ended the request. */
static bool emit_token(struct engine_sched *s, uint32_t idx, int32_t id, bool last,
                       const struct engine_sched_events *ev, void *user, int *stop_index, uint32_t *n_out)
{
        struct slot *sl = &s->slots[idx];
        int w = engine_detok_push(s->tok, &sl->dt, id, sl->hold + sl->n_hold, HOLD_CAP - sl->n_hold);
        if (w > 0)
                sl->n_hold += (uint32_t)w;
        if (last)
                drain_text(sl);
        uint32_t emit = sl->n_hold;
        *stop_index = -1;
        if (sl->n_stop) {
                /* earliest complete match */
                uint32_t best = UINT32_MAX;
                for (uint32_t k = 0; k < sl->n_stop; k++) {
                        uint32_t L = sl->stop_len[k];
                        for (uint32_t p = 0; p + L <= sl->n_hold && p < best; p++)
                                if (memcmp(sl->hold + p, sl->stop[k], L) == 0) {
                                        best = p;
                                        *stop_index = (int)k;
                                        break;
                                }
                }
                if (*stop_index >= 0) {
                        emit = best;
                } else if (!last) {
                        /* hold back the longest suffix that could start a stop string */
                        uint32_t keep = 0;
                        for (uint32_t k = 0; k < sl->n_stop; k++) {
                                uint32_t L = sl->stop_len[k];
                                for (uint32_t n = SL_MIN(L - 1, sl->n_hold); n > keep; n--)
                                        if (memcmp(sl->hold + sl->n_hold - n, sl->stop[k], n) == 0) {
                                                keep = n;
                                                break;
                                        }
                        }
                        emit = sl->n_hold - keep;
                }
        }
        if (ev && ev->on_token)
                ev->on_token(user, sl->tag, id, sl->hold, emit);
        if (*stop_index >= 0) {
                sl->n_hold = 0;
                *n_out = 0;
                return true;
        }
        memmove(sl->hold, sl->hold + emit, sl->n_hold - emit);
        sl->n_hold -= emit;
        *n_out = sl->n_hold;
        return false;
}

/* Every running request that takes part in the next step gets the KV blocks for it. Without
 * a step in flight a dry pool preempts (sync_reserve); with one, it gives up and returns
 * false, and the caller completes the step in flight first. */
static bool in_flight(const struct engine_sched *s, const struct slot *sl)
{
        return sl->pend_step > s->done_step;
}

static bool reserve_in_flight(struct engine_sched *s)
{
        for (uint32_t i = 0; i < s->n_run; i++) {
                struct slot *sl = &s->slots[s->run[i]];
                uint32_t need = sl->n_tok + in_flight(s, sl);
                if (engine_kv_seq_reserve(s->kv, sl->seq, need) < 0)
                        return false;
        }
        return true;
}

/* Builds the batch: decodes first (one token each, never starved by prefills), then prefill
 * chunks within the token budget. A slot whose token is still on the GPU decodes it (unless
 * that token is its last by length). Returns the token count. */
static uint32_t build_batch(struct engine_sched *s, uint32_t *n_rows_out, uint32_t *n_prefill_out)
{
        const uint32_t budget = s->o.token_budget;
        uint32_t n = 0, n_rows = 0, n_prefill = 0;
        s->n_chunks = 0;
        for (uint32_t i = 0; i < s->n_run; i++) {
                uint32_t idx = s->run[i];
                struct slot *sl = &s->slots[idx];
                sl->out_row = -1;
                sl->chunk = 0;
                sl->ext_read = false;
                int32_t prev = -1, tok;
                if (in_flight(s, sl)) {
                        if (sl->n_tok + 1 - sl->n_prompt >= sl->max_tokens || sl->n_tok + 1 >= s->o.max_ctx)
                                continue;
                        prev = sl->pend_row;
                        tok = 0; /* the GPU reads it from the previous step's output */
                } else if (sl->n_tok - sl->n_done == 1) {
                        tok = sl->tok[sl->n_done];
                } else {
                        continue;
                }
                s->b_tok[n] = tok;
                s->b_prev[n] = prev;
                s->b_pos[n] = (int32_t)sl->n_done;
                s->b_seq[n] = sl->seq;
                s->b_lg[n] = 1;
                n++;
                sl->chunk = 1;
                sl->out_row = (int32_t)n_rows;
                s->row_slot[n_rows++] = idx;
        }
        for (uint32_t i = 0; i < s->n_run && n < budget; i++) {
                uint32_t idx = s->run[i];
                struct slot *sl = &s->slots[idx];
                uint32_t rem = sl->n_tok - sl->n_done;
                if (rem <= 1 || in_flight(s, sl))
                        continue;
                uint32_t c = SL_MIN(SL_MIN(rem, s->o.prefill_chunk), budget - n);
                /* within a held prompt: its ids where the caller's transport wrote them */
                sl->ext_read = sl->ext && sl->n_done + c <= sl->n_prompt;
                const int32_t *src = sl->ext_read ? sl->ext : sl->tok;
                bool gpu_reads = false;
#if SLUICE_HAVE_CUDA
                if (s->cuda && s->tok_mapped) {
                        s->chunks[s->n_chunks++] = (struct ecu_src_chunk){.src = src + sl->n_done, .at = n, .n = c};
                        gpu_reads = true;
                }
#endif
                for (uint32_t j = 0; j < c; j++) {
                        uint32_t p = sl->n_done + j;
                        /* ids the GPU reads in place are not copied (0 stands in for them) */
                        s->b_tok[n] = gpu_reads ? 0 : src[p];
                        s->b_prev[n] = -1;
                        s->b_pos[n] = (int32_t)p;
                        s->b_seq[n] = sl->seq;
                        s->b_lg[n] = p + 1 == sl->n_tok;
                        n++;
                }
                n_prefill += c;
                sl->chunk = c;
                if (sl->n_done + c == sl->n_tok) {
                        sl->out_row = (int32_t)n_rows;
                        s->row_slot[n_rows++] = idx;
                }
        }
        *n_rows_out = n_rows;
        *n_prefill_out = n_prefill;
        return n;
}

/* Fails every live request whose slot is in the list (still of that generation). */
static void fail_slots(struct engine_sched *s, const uint32_t *slot, const uint32_t *gen, uint32_t n, int r,
                       const struct sl_error *err, const struct engine_sched_events *ev, void *user)
{
        for (uint32_t i = 0; i < n; i++) {
                struct slot *sl = &s->slots[slot[i]];
                if (sl->state == SLOT_FREE || (gen && sl->gen != gen[i]))
                        continue;
                uint32_t tl = drain_text(sl);
                finish(s, slot[i], ENGINE_FINISH_ERROR, -1, r, err ? err->msg : "engine failure", sl->hold, tl, ev,
                       user);
        }
}

/* Runs the batch built in b_* on the backend: the CPU computes it now (logits into
 * s->logits); the GPU gets it enqueued, sampling included. Records it as in flight. */
static int launch(struct engine_sched *s, uint32_t n, uint32_t n_rows, uint32_t n_prefill,
                  const struct engine_sched_events *ev, void *user, struct sl_error *err)
{
        struct engine_batch b = {.n_tokens = n, .token = s->b_tok, .pos = s->b_pos, .seq = s->b_seq,
                                 .logits = s->b_lg};
        int r = engine_batch_prepare(&s->m->hp, s->o.token_budget, s->o.max_ctx, s->kv, &b, err);
        if (r >= 0 && !s->cuda) {
                r = engine_forward(s->ctx, s->kv, &b, s->logits, err);
        } else if (r >= 0) {
#if SLUICE_HAVE_CUDA
                /* each sampled row: its parameters, its RNG counter (tokens drawn so far) and
                 * its penalty window, the last penalty_last_n tokens of prompt + output, read in
                 * place from the slot, plus the token still in flight when there is one */
                for (uint32_t row = 0; row < n_rows; row++) {
                        const struct slot *sl = &s->slots[s->row_slot[row]];
                        const bool fl = in_flight(s, sl);
                        const uint32_t have = sl->n_tok + fl;
                        const int32_t last_n = sl->sampling.penalty_last_n;
                        const bool pen = sl->sampling.repeat_penalty != 1.0f || sl->sampling.presence_penalty != 0.0f ||
                                         sl->sampling.frequency_penalty != 0.0f;
                        const uint32_t w = !pen || last_n == 0 ? 0 : last_n < 0 ? have : SL_MIN((uint32_t)last_n, have);
                        const bool prev = fl && w > 0;
                        s->srows[row] = (struct ecu_sample_row){
                                .s = &sl->sampling, .step = have - sl->n_prompt, .hist = sl->tok + have - w,
                                .hist_len = w - prev, .hist_prev = prev, .prev_row = prev ? (uint32_t)sl->pend_row : 0};
                }
                struct ecu_step_args a = {.b = &b, .prev_row = s->b_prev, .chunks = s->chunks, .n_chunks = s->n_chunks,
                                          .rows = s->srows, .n_rows = n_rows};
                r = ecu_step_launch(s->cuda, s->kv, &a, err);
                if (r < 0) {
                        ST_ADD(s, gpu_errors, 1);
                        s->broken = ecu_ctx_broken(s->cuda);
                }
                if (r >= 0)
                        engine_batch_commit(s->kv, &b);
#else
                r = sl_errorf(err, -EOPNOTSUPP, "no CUDA backend in this build");
#endif
        }
        if (r < 0) {
                /* fail every request that had tokens in the batch */
                for (uint32_t i = 0; i < s->n_run;) {
                        uint32_t idx = s->run[i];
                        bool in = false;
                        for (uint32_t t = 0; t < n && !in; t++)
                                in = s->b_seq[t] == s->slots[idx].seq;
                        if (!in) {
                                i++;
                                continue;
                        }
                        fail_slots(s, &idx, NULL, 1, r, err, ev, user); /* leaves run[] */
                }
                return r;
        }
        const uint64_t step = ++s->launch_step;
        struct flight *f = &s->fl[(s->fl_head + s->fl_n) % 2];
        s->fl_n++;
        f->step = step;
        f->n = n;
        f->n_prefill = n_prefill;
        f->n_rows = n_rows;
        for (uint32_t row = 0; row < n_rows; row++) {
                struct slot *sl = &s->slots[s->row_slot[row]];
                f->slot[row] = s->row_slot[row];
                f->gen[row] = sl->gen;
                sl->pend_step = step;
                sl->pend_row = (int32_t)row;
        }
        for (uint32_t i = 0; i < s->n_run; i++) {
                struct slot *sl = &s->slots[s->run[i]];
                if (sl->ext_read) {
                        sl->ext_step = step;
                        ST_ADD(s, prompt_tokens_in_place, sl->chunk);
                }
                sl->n_done += sl->chunk;
        }
        ST_ADD(s, tokens_computed, n);
        ST_ADD(s, prompt_tokens, n_prefill);
        return (int)n;
}

/* A sampled token for a running request: end of generation, or append, emit, and finish on
 * length, context or a stop string. */
static void take_token(struct engine_sched *s, uint32_t idx, int32_t id, uint64_t now,
                       const struct engine_sched_events *ev, void *user)
{
        struct slot *sl = &s->slots[idx];
        if (!sl->ignore_eos && engine_token_is_eog(s->tok, id)) {
                uint32_t tl = drain_text(sl);
                finish(s, idx, ENGINE_FINISH_EOS, -1, 0, NULL, sl->hold, tl, ev, user);
                return;
        }
        if (sl->smp)
                engine_sampler_accept(sl->smp, id);
        sl->tok[sl->n_tok++] = id;
        ST_ADD(s, generated_tokens, 1);
        if (!sl->t_first_ns)
                sl->t_first_ns = now;
        uint32_t gen = sl->n_tok - sl->n_prompt;
        enum engine_finish why = 0;
        if (gen >= sl->max_tokens)
                why = ENGINE_FINISH_LENGTH;
        else if (sl->n_tok >= s->o.max_ctx)
                why = ENGINE_FINISH_CONTEXT;
        int stop_index;
        uint32_t tail;
        if (emit_token(s, idx, id, why != 0, ev, user, &stop_index, &tail))
                finish(s, idx, ENGINE_FINISH_STOP, stop_index, 0, NULL, NULL, 0, ev, user);
        else if (why)
                finish(s, idx, why, -1, 0, NULL, NULL, 0, ev, user);
}

/* Completes the oldest step in flight: its sampled ids (from the GPU, or sampled here from
 * the CPU's logits), in row order. Rows of requests that ended since (cancel, deadline, a
 * token of the step before) are dropped. */
static int complete(struct engine_sched *s, const struct engine_sched_events *ev, void *user, struct sl_error *err)
{
        struct flight *f = &s->fl[s->fl_head];
        s->fl_head = (s->fl_head + 1) % 2;
        s->fl_n--;
        s->done_step = f->step;
#if SLUICE_HAVE_CUDA
        if (s->cuda) {
                struct ecu_step_stats st;
                int r = ecu_step_wait(s->cuda, s->ids, &st, err);
                if (r < 0) {
                        ST_ADD(s, gpu_errors, 1);
                        s->broken = ecu_ctx_broken(s->cuda);
                        fail_slots(s, f->slot, f->gen, f->n_rows, r, err, ev, user);
                        return r;
                }
                if (st.graph)
                        ST_ADD(s, graph_steps, 1);
                else
                        ST_ADD(s, eager_steps, 1);
                ST_SET(s, launches_last, st.launches);
                ST_SET(s, gpu_ns_last, st.gpu_ns);
        }
#endif
        uint64_t now = sl_now_ns();
        for (uint32_t row = 0; row < f->n_rows; row++) {
                uint32_t idx = f->slot[row];
                struct slot *sl = &s->slots[idx];
                if (sl->gen != f->gen[row] || sl->state != SLOT_RUNNING)
                        continue;
                int32_t id = s->cuda ? s->ids[row] : engine_sampler_sample(sl->smp, s->logits + (size_t)row * s->n_vocab);
                take_token(s, idx, id, now, ev, user);
        }
        ST_SET(s, prefill_last, f->n_prefill);
        ST_ADD(s, steps, 1);
        return (int)f->n;
}

int engine_sched_step(struct engine_sched *s, const struct engine_sched_events *ev, void *user,
                      struct sl_error *err)
{
        if (!s)
                return sl_errorf(err, -EINVAL, "sched: NULL argument");
        uint64_t t0 = sl_now_ns();
        uint32_t n_rows, n_prefill;
        int launched = 0, r = 0;
        expire(s, ev, user);
        if (s->fl_n) {
                /* a step is in flight: launch the next one behind it when every request can
                 * keep its blocks without preemption, then complete the one in flight */
                if (reserve_in_flight(s)) {
                        admit(s);
                        uint32_t n = build_batch(s, &n_rows, &n_prefill);
                        if (n)
                                launched = launch(s, n, n_rows, n_prefill, ev, user, err);
                }
                struct sl_error e2 = {0};
                r = complete(s, ev, user, launched < 0 ? &e2 : err);
                if (launched < 0)
                        r = launched;
        } else {
                admit(s);
                reserve_decodes(s);
                admit(s); /* nothing is admitted past a preempted head, but slots may have freed */
                uint32_t n = s->n_run ? build_batch(s, &n_rows, &n_prefill) : 0;
                if (n == 0) {
                        ext_unhold(s);
                        publish(s);
                        return 0;
                }
                r = launched = launch(s, n, n_rows, n_prefill, ev, user, err);
                if (r >= 0 && !s->overlap)
                        r = complete(s, ev, user, err);
        }
        ext_unhold(s);
        if (r < 0) {
                publish(s);
                return r;
        }
        uint64_t dt = sl_now_ns() - t0;
        s->step_ns_ewma = s->step_ns_ewma ? (s->step_ns_ewma * 7 + dt) / 8 : dt;
        ST_SET(s, step_ns_last, dt);
        publish(s);
        return launched > 0 ? launched : r;
}
