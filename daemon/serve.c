/* serve.c — the engine thread: drains each transport's request ring, turns GENERATE into
 * scheduler requests (tokenizing text prompts), answers TOKENIZE, routes CANCEL and
 * CLIENT_GONE, runs engine_sched_step() and writes TOKENS/DONE/ERROR records back. Every
 * GENERATE/TOKENIZE record gets exactly one terminal response. Memory is allocated in
 * serve_create(); nothing per token. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "sluice_config.h"

#define DRAIN_BURST 64u          /* request records per ring per loop */
#define IDLE_WAIT_MS 100         /* bounded, so heartbeat and watchdog keep ticking */
#define STATS_EVERY_NS 200000000ull
#define RESP_WAIT_TRIES 20000    /* x 50 us: how long a full response ring may block us */
#define AUDIT_TEXT_CAP 1024u

const char *const d_outcome_name[DO_N] = {
        [DO_EOS] = "eos", [DO_LENGTH] = "length", [DO_STOP] = "stop", [DO_CANCELLED] = "cancelled",
        [DO_DEADLINE] = "deadline", [DO_CONTEXT] = "context", [DO_ERROR] = "error", [DO_BUSY] = "busy",
        [DO_BAD_PARAM] = "bad_param", [DO_PROMPT_TOO_LONG] = "prompt_too_long",
        [DO_SHUTTING_DOWN] = "shutting_down", [DO_TOKENIZE] = "tokenize", [DO_RATE_LIMITED] = "rate_limited",
};

const char *const d_limit_name[DL_N] = {[DL_CONCURRENCY] = "concurrency", [DL_RPS] = "rps", [DL_TPS] = "tps"};

#define tr_name(tr) dt_kind_name[dt_kind(tr)]

/* One live GENERATE: how to address its responses, and what the audit line needs. */
struct dreq {
        bool used;
        bool no_text;
        uint8_t tr;
        uint32_t gen;
        uint64_t client, rid, rx_ns, last_tok_ns;
        struct dp_req_peer peer;         /* the client's address (len 0: unknown) */
        uint32_t cl;                     /* its entry in the client table + 1; 0: none */
        bool tps_on;                     /* its tokens are counted against a tokens/s limit */
        uint32_t prompt_len, out_len;    /* audit text kept (with-text mode) */
        char prompt[AUDIT_TEXT_CAP];
        char out[AUDIT_TEXT_CAP];
};

/* A request record the engine reads its prompt from (engine_request.prompt_release): the
 * record stays in its ring (dp_ring_hold) until the engine gives it back. */
struct dhold {
        struct serve *s;
        const struct dp_req_rec *rec;
        uint8_t tr;
        uint32_t next_free;               /* free list: entry + 1, 0 ends */
};

struct serve {
        struct daemon *d;
        uint32_t n_req, next_free;
        struct dreq *req;
        struct dhold *hold;               /* n_hold entries */
        uint32_t n_hold, hold_free;
        bool rec_held;                    /* the record being handled went to the engine */
        int32_t *ids;                     /* tokenizer output, DP_MAX_PROMPT_TOKENS + 16 */
        size_t ids_cap;
        uint8_t *stage;                   /* one encoded payload, DP_TCP_MAX_PAYLOAD */
        uint8_t ids_le[DP_MAX_TOKENS_PER_FRAME * 4];
        struct d_limits lim;
        uint32_t lim_gen;
        uint64_t next_stats_ns;
        struct engine_sched_events ev;
        const struct dp_req_peer *rx_peer; /* address on the record being handled, or NULL */
        struct dclient *cl;               /* per-client limits: n_cl entries, hashed */
        uint32_t *cl_bucket;
        uint32_t n_cl, n_cl_buckets, cl_hand, n_cl_used;
};

/* A client as the per-client limits see it: its key (authenticated requests) or its address
 * (IP without the port: a client does not get more by opening more sockets). */
enum { CL_FREE, CL_ADDR4, CL_ADDR6, CL_KEY, CL_UNKNOWN };

struct dclient {
        uint8_t kind;
        uint8_t id[16];
        uint32_t hnext;                   /* hash chain: entry + 1, 0 ends */
        uint32_t inflight;                /* GENERATEs accepted and not finished */
        double rq, tk;                    /* token buckets: requests, generated tokens */
        uint64_t refill_ns;
};

/* ---- responses ---- */

static size_t max_payload(uint8_t tr)
{
        return tr == DT_TCP ? DP_TCP_MAX_PAYLOAD : DP_UDP_MAX_PAYLOAD; /* UDP and DPDK: one datagram */
}

static void kick(struct daemon *d, uint8_t tr)
{
        /* main.c may still be creating the transports (this thread starts first); it kicks
         * them itself once they are all up, so nothing pushed before then waits */
        if (!atomic_load_explicit(&d->transports_up, memory_order_acquire))
                return;
        if (tr == DT_UDP && d->udp)
                dp_udp_kick(d->udp);
        else if (tr == DT_TCP && d->tcp)
                dp_tcp_kick(d->tcp);
}

/* The transport drains its ring continuously (a slow TCP reader fails its own request
 * there), so a full ring is short-lived: wait for it, bounded, rather than lose a frame. */
static int resp_push(struct serve *s, uint8_t tr, uint64_t client, uint64_t rid, uint8_t op, const void *pl,
                     size_t n)
{
        struct daemon *d = s->d;
        struct dp_resp_rec h = {.opcode = op, .transport = tr, .client = client, .request_id = rid};
        for (unsigned i = 0;; i++) {
                if (dp_resp_push(d->resp_ring[tr], &h, pl, n) == 0)
                        return 0;
                if (i == RESP_WAIT_TRIES) {
                        ctl_counter_add(d->m.resp_ring_full, 1);
                        return -ENOBUFS;
                }
                kick(d, tr);
                usleep(50);
        }
}

static void send_error(struct serve *s, uint8_t tr, uint64_t client, uint64_t rid, int code, bool terminal,
                       uint32_t retry_ms, uint32_t detail, const char *msg)
{
        size_t full = strlen(msg), ml = full < DP_MAX_ERROR_MSG ? full : DP_MAX_ERROR_MSG;
        while (ml > 0 && ml < full && ((unsigned char)msg[ml] & 0xC0) == 0x80)
                ml--; /* cut on a character boundary */
        struct dp_error e = {.code = (uint16_t)code, .flags = terminal ? DP_ERRF_TERMINAL : 0,
                             .retry_after_ms = retry_ms, .detail = detail, .msg = {msg, (uint32_t)ml}};
        long n = dp_error_encode(s->stage, DP_TCP_MAX_PAYLOAD, &e);
        if (n > 0)
                resp_push(s, tr, client, rid, DP_OP_ERROR, s->stage, (size_t)n);
}

/* Length of a prefix of text, at most cap bytes, that does not cut a UTF-8 sequence. */
static uint32_t utf8_cut(const char *text, uint32_t len, uint32_t cap)
{
        if (len <= cap)
                return len;
        uint32_t t = cap;
        while (t > 0 && ((unsigned char)text[t] & 0xC0) == 0x80)
                t--;
        return t;
}

/* TOKENS frames for ids and text, split to the transport's payload size. */
static void send_tokens(struct serve *s, uint8_t tr, uint64_t client, uint64_t rid, uint8_t kind,
                        const int32_t *ids, uint32_t n, const char *text, uint32_t len)
{
        const size_t room = max_payload(tr) - 8;
        while (n > 0 || len > 0) {
                uint32_t k = (uint32_t)SL_MIN((size_t)SL_MIN(n, DP_MAX_TOKENS_PER_FRAME), room / 4);
                uint32_t t = utf8_cut(text, len, (uint32_t)(room - 4 * (size_t)k));
                if (k == 0 && t == 0)
                        return; /* cannot happen with valid UTF-8 */
                for (uint32_t i = 0; i < k; i++)
                        dp_id_put(s->ids_le, i, ids[i]);
                struct dp_tokens m = {.kind = kind, .n_tokens = (uint16_t)k, .ids = s->ids_le,
                                      .text = {text, t}};
                long w = dp_tokens_encode(s->stage, DP_TCP_MAX_PAYLOAD, &m);
                if (w < 0 || resp_push(s, tr, client, rid, DP_OP_TOKENS, s->stage, (size_t)w) < 0)
                        return;
                ids += k, n -= k, text += t, len -= t;
        }
}

static void send_done(struct serve *s, uint8_t tr, uint64_t client, uint64_t rid, const struct dp_done *dn)
{
        long n = dp_done_encode(s->stage, DP_TCP_MAX_PAYLOAD, dn);
        if (n > 0)
                resp_push(s, tr, client, rid, DP_OP_DONE, s->stage, (size_t)n);
}

/* ---- audit ---- */

/* peer: the client's address as the transport recorded it (NULL or len 0: written "-"). */
static void audit(struct serve *s, uint8_t tr, uint64_t rid, const struct dp_req_peer *peer,
                  uint32_t prompt_tokens, uint32_t gen_tokens, const char *outcome, uint64_t ttft_ns,
                  uint64_t rx_ns, const struct dreq *e)
{
        uint64_t now = sl_now_ns();
        struct ctl_audit_record a = {
                .request_id = rid, .transport = tr_name(tr), .prompt_tokens = prompt_tokens,
                .generated_tokens = gen_tokens, .outcome = outcome, .ttft_us = ttft_ns / 1000,
                .latency_us = rx_ns && now > rx_ns ? (now - rx_ns) / 1000 : 0,
        };
        if (peer && peer->len) {
                a.client = &peer->addr.sa;
                a.client_len = peer->len;
        }
        if (e && s->lim.audit_text) {
                a.prompt = e->prompt, a.prompt_len = e->prompt_len;
                a.output = e->out, a.output_len = e->out_len;
        }
        ctl_audit_write(s->d->audit, &a);
}

/* A request that never reached the scheduler: terminal ERROR, metrics, audit. */
static void reject(struct serve *s, const struct dp_req_rec *r, int code, uint32_t retry_ms, uint32_t detail,
                   enum d_outcome oc, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static void reject(struct serve *s, const struct dp_req_rec *r, int code, uint32_t retry_ms, uint32_t detail,
                   enum d_outcome oc, const char *fmt, ...)
{
        char msg[DP_MAX_ERROR_MSG + 1];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        send_error(s, r->transport, r->client, r->request_id, code, true, retry_ms, detail, msg);
        ctl_counter_add(s->d->m.requests[oc], 1);
        char outcome[48];
        snprintf(outcome, sizeof(outcome), "error:%s", dp_err_name(code));
        audit(s, r->transport, r->request_id, s->rx_peer, 0, 0, oc == DO_BUSY ? "busy" : outcome, 0,
              r->rx_ns, NULL);
        ctl_logf(SL_LOG_DEBUG, "request %016llx (%s): %s: %s", (unsigned long long)r->request_id,
                 tr_name(r->transport), dp_err_name(code), msg);
}

/* ---- request table ---- */

static struct dreq *req_alloc(struct serve *s, uint64_t *tag)
{
        for (uint32_t k = 0; k < s->n_req; k++) {
                uint32_t i = (s->next_free + k) % s->n_req;
                struct dreq *e = &s->req[i];
                if (!e->used) {
                        e->used = true;
                        e->gen++;
                        e->out_len = e->prompt_len = 0;
                        e->last_tok_ns = 0;
                        s->next_free = (i + 1) % s->n_req;
                        *tag = (uint64_t)e->gen << 32 | i;
                        atomic_fetch_add_explicit(&s->d->n_live, 1, memory_order_relaxed);
                        return e;
                }
        }
        return NULL;
}

static void req_free(struct serve *s, struct dreq *e)
{
        if (e->cl && s->cl[e->cl - 1].inflight)
                s->cl[e->cl - 1].inflight--;
        e->cl = 0;
        e->used = false;
        atomic_fetch_sub_explicit(&s->d->n_live, 1, memory_order_relaxed);
}

static struct dreq *req_by_tag(struct serve *s, uint64_t tag)
{
        uint32_t i = (uint32_t)tag;
        if (i >= s->n_req || !s->req[i].used || s->req[i].gen != (uint32_t)(tag >> 32))
                return NULL;
        return &s->req[i];
}

/* CANCEL and CLIENT_GONE are rare: a scan of the table is fine. */
static int64_t req_find(struct serve *s, uint8_t tr, uint64_t client, uint64_t rid)
{
        for (uint32_t i = 0; i < s->n_req; i++) {
                const struct dreq *e = &s->req[i];
                if (e->used && e->tr == tr && e->client == client && e->rid == rid)
                        return (int64_t)((uint64_t)e->gen << 32 | i);
        }
        return -1;
}

/* ---- scheduler events ---- */

static void on_token(void *user, uint64_t tag, int32_t id, const char *text, uint32_t len)
{
        struct serve *s = user;
        struct dreq *e = req_by_tag(s, tag);
        if (!e)
                return;
        uint64_t now = sl_now_ns();
        if (e->last_tok_ns)
                ctl_histogram_observe(s->d->m.itl, (double)(now - e->last_tok_ns) / 1e9);
        e->last_tok_ns = now;
        if (e->tps_on && e->cl)
                s->cl[e->cl - 1].tk -= 1; /* may go below zero: the debt delays the next request */
        if (s->lim.audit_text && len) {
                uint32_t c = SL_MIN(len, AUDIT_TEXT_CAP - e->out_len);
                memcpy(e->out + e->out_len, text, c);
                e->out_len += c;
        }
        send_tokens(s, e->tr, e->client, e->rid, DP_TOKENS_GENERATED, &id, 1, text, e->no_text ? 0 : len);
}

static void on_done(void *user, uint64_t tag, const struct engine_sched_done *dn)
{
        struct serve *s = user;
        struct daemon *d = s->d;
        struct dreq *e = req_by_tag(s, tag);
        if (!e)
                return;
        if (dn->text_len && !e->no_text)
                send_tokens(s, e->tr, e->client, e->rid, DP_TOKENS_GENERATED, NULL, 0, dn->text, dn->text_len);
        if (s->lim.audit_text && dn->text_len) {
                uint32_t c = SL_MIN(dn->text_len, AUDIT_TEXT_CAP - e->out_len);
                memcpy(e->out + e->out_len, dn->text, c);
                e->out_len += c;
        }
        enum d_outcome oc;
        const char *outcome;
        char obuf[48];
        bool never_started = dn->queue_ns == 0 && dn->generated_tokens == 0;
        if (dn->reason == ENGINE_FINISH_ERROR) {
                send_error(s, e->tr, e->client, e->rid, DP_ERR_INTERNAL, true, 0, 0,
                           dn->msg && dn->msg[0] ? dn->msg : "engine failure");
                oc = DO_ERROR;
                outcome = "error:INTERNAL";
                ctl_logf(SL_LOG_ERR, "request %016llx: engine failure: %s", (unsigned long long)e->rid,
                         dn->msg ? dn->msg : "");
        } else if (never_started && (dn->reason == ENGINE_FINISH_CANCELLED || dn->reason == ENGINE_FINISH_DEADLINE)) {
                /* §3.2: a request that never started ends with a terminal ERROR */
                bool c = dn->reason == ENGINE_FINISH_CANCELLED;
                send_error(s, e->tr, e->client, e->rid, c ? DP_ERR_CANCELLED : DP_ERR_DEADLINE, true, 0, 0,
                           c ? "cancelled while queued" : "deadline passed while queued");
                oc = c ? DO_CANCELLED : DO_DEADLINE;
                snprintf(obuf, sizeof(obuf), "%s", c ? "cancelled" : "deadline");
                outcome = obuf;
        } else {
                struct dp_done m = {
                        .reason = (uint8_t)dn->reason,
                        .stop_index = dn->reason == ENGINE_FINISH_STOP && dn->stop_index >= 0
                                              ? (uint8_t)dn->stop_index : DP_STOP_INDEX_NONE,
                        .prompt_tokens = dn->prompt_tokens,
                        .generated_tokens = dn->generated_tokens,
                        .queue_us = (uint32_t)SL_MIN(dn->queue_ns / 1000, (uint64_t)UINT32_MAX),
                        .ttft_us = dn->ttft_ns / 1000,
                        .total_us = dn->total_ns / 1000,
                };
                send_done(s, e->tr, e->client, e->rid, &m);
                static const enum d_outcome map[7] = {DO_ERROR, DO_EOS, DO_LENGTH, DO_STOP,
                                                      DO_CANCELLED, DO_DEADLINE, DO_CONTEXT};
                oc = (unsigned)dn->reason < 7 ? map[dn->reason] : DO_ERROR;
                outcome = dp_finish_name((uint8_t)dn->reason);
        }
        ctl_counter_add(d->m.requests[oc], 1);
        ctl_counter_add(d->m.prompt_tokens, dn->prompt_tokens);
        ctl_counter_add(d->m.generated_tokens, dn->generated_tokens);
        if (dn->ttft_ns)
                ctl_histogram_observe(d->m.ttft, (double)dn->ttft_ns / 1e9);
        ctl_histogram_observe(d->m.latency, (double)dn->total_ns / 1e9);
        audit(s, e->tr, e->rid, &e->peer, dn->prompt_tokens, dn->generated_tokens, outcome, dn->ttft_ns,
              e->rx_ns, e);
        req_free(s, e);
}

/* ---- per-client limits ----
 * Concurrent GENERATEs, requests per second and generated tokens per second, per client,
 * checked on this thread when a request arrives (it alone knows what is in flight and what
 * was generated). Each rate is a token bucket holding one second of it; generated tokens
 * are taken out as they are produced, so a long answer leaves a debt that the next request
 * waits out (the retry hint says how long). Limits: a key's own (keys file) or the config's.
 * The table is sized at start; a new client takes a free entry or evicts one with nothing in
 * flight (a clock hand), which forgets at most its bucket debt. */

static uint32_t cl_hash(uint8_t kind, const uint8_t id[16])
{
        uint64_t h = 0xcbf29ce484222325ull ^ kind;
        for (int i = 0; i < 16; i++)
                h = (h ^ id[i]) * 0x100000001b3ull;
        return (uint32_t)(h ^ h >> 32);
}

static void cl_unlink(struct serve *s, uint32_t i)
{
        struct dclient *c = &s->cl[i];
        uint32_t *pp = &s->cl_bucket[cl_hash(c->kind, c->id) & (s->n_cl_buckets - 1)];
        for (uint32_t guard = 0; *pp && guard < s->n_cl; guard++) {
                if (*pp == i + 1) {
                        *pp = c->hnext;
                        return;
                }
                pp = &s->cl[*pp - 1].hnext;
        }
}

/* The entry of the client that sent r (found, or new with full buckets), or -1 when every
 * entry has requests in flight. */
static int64_t cl_get(struct serve *s, const struct dp_req_rec *r, uint32_t rps, uint32_t tps, uint64_t now)
{
        uint8_t kind = CL_UNKNOWN, id[16] = {0};
        const struct dp_req_peer *p = s->rx_peer;
        if (r->flags & DP_REQF_KEY) {
                kind = CL_KEY;
                memcpy(id, &r->key_id, 4);
        } else if (p && p->addr.sa.sa_family == AF_INET) {
                kind = CL_ADDR4;
                memcpy(id, &p->addr.in.sin_addr, 4);
        } else if (p && p->addr.sa.sa_family == AF_INET6) {
                kind = CL_ADDR6;
                memcpy(id, &p->addr.in6.sin6_addr, 16);
        }
        uint32_t b = cl_hash(kind, id) & (s->n_cl_buckets - 1);
        for (uint32_t i = s->cl_bucket[b], guard = 0; i && guard < s->n_cl; guard++) {
                struct dclient *c = &s->cl[i - 1];
                if (c->kind == kind && !memcmp(c->id, id, 16))
                        return i - 1;
                i = c->hnext;
        }
        for (uint32_t k = 0; k < s->n_cl; k++) {
                uint32_t i = (s->cl_hand + k) % s->n_cl;
                struct dclient *c = &s->cl[i];
                if (c->kind != CL_FREE && c->inflight)
                        continue;
                if (c->kind != CL_FREE)
                        cl_unlink(s, i);
                else
                        s->n_cl_used++;
                s->cl_hand = (i + 1) % s->n_cl;
                *c = (struct dclient){.kind = kind, .hnext = s->cl_bucket[b], .rq = rps, .tk = tps, .refill_ns = now};
                memcpy(c->id, id, 16);
                s->cl_bucket[b] = i + 1;
                return i;
        }
        return -1;
}

static uint32_t retry_ms_for(double missing, uint32_t rate)
{
        double ms = missing * 1000.0 / rate + 1;
        return ms >= (double)UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

/* Whether r may go on: if not, it has been answered RATE_LIMITED (terminal, with a retry
 * hint). *cl gets the client's entry + 1 (0: not tracked), *tps_on whether its tokens count. */
static bool cl_admit(struct serve *s, const struct dp_req_rec *r, bool generate, uint32_t *cl, bool *tps_on)
{
        const bool k = r->flags & DP_REQF_KEY;
        const uint32_t mi = k && r->key_max_inflight ? r->key_max_inflight : s->lim.max_inflight;
        const uint32_t rps = k && r->key_rps ? r->key_rps : s->lim.rps;
        const uint32_t tps = k && r->key_tps ? r->key_tps : s->lim.tps;
        const uint64_t now = sl_now_ns();
        *cl = 0;
        *tps_on = generate && tps;
        int64_t i = cl_get(s, r, rps, tps, now);
        if (i < 0)
                return true; /* cannot happen: the table is larger than the request table */
        struct dclient *c = &s->cl[i];
        double dt = (double)(now - c->refill_ns) / 1e9;
        c->refill_ns = now;
        if (rps)
                c->rq = SL_MIN((double)rps, c->rq + dt * rps);
        if (tps)
                c->tk = SL_MIN((double)tps, c->tk + dt * tps);
        int lim = -1;
        uint32_t retry = 0, limit = 0;
        if (generate && mi && c->inflight >= mi)
                lim = DL_CONCURRENCY, retry = 100, limit = mi;
        else if (rps && c->rq < 1)
                lim = DL_RPS, retry = retry_ms_for(1 - c->rq, rps), limit = rps;
        else if (generate && tps && c->tk < 1)
                lim = DL_TPS, retry = retry_ms_for(1 - c->tk, tps), limit = tps;
        if (lim >= 0) {
                ctl_counter_add(s->d->m.rate_limited[lim][dt_kind(r->transport)], 1);
                reject(s, r, DP_ERR_RATE_LIMITED, retry, limit, DO_RATE_LIMITED, "%s limit of %u%s reached%s",
                       d_limit_name[lim], limit,
                       lim == DL_CONCURRENCY ? " requests in flight" : lim == DL_RPS ? " requests/s" : " tokens/s",
                       k ? " (per key)" : " (per client address)");
                return false;
        }
        if (rps)
                c->rq -= 1;
        *cl = (uint32_t)i + 1;
        return true;
}

/* ---- requests from the rings ---- */

/* Tokenizes text into s->ids: the count, or -1 after answering the error. */
static int tokenize(struct serve *s, const struct dp_req_rec *r, const char *text, uint32_t len, bool add_special,
                    bool parse_special)
{
        size_t needed = 0;
        int n = engine_tokenize(s->d->tok, text, len, add_special, parse_special, s->ids, s->ids_cap, &needed);
        if (n == -ENOSPC || (n >= 0 && (uint32_t)n > s->lim.max_prompt_tokens)) {
                reject(s, r, DP_ERR_PROMPT_TOO_LONG, 0, s->lim.max_prompt_tokens, DO_PROMPT_TOO_LONG,
                       "prompt is %zu tokens, over the limit of %u", n >= 0 ? (size_t)n : needed,
                       s->lim.max_prompt_tokens);
                return -1;
        }
        if (n < 0) {
                reject(s, r, DP_ERR_BAD_PARAM, 0, 0, DO_BAD_PARAM, "cannot tokenize the prompt: %s", strerror(-n));
                return -1;
        }
        return n;
}

static void hold_put(struct serve *s, struct dhold *h)
{
        h->rec = NULL;
        h->next_free = s->hold_free;
        s->hold_free = (uint32_t)(h - s->hold) + 1;
}

/* engine_request.prompt_release, on the engine thread (or the main thread at exit, after the
 * engine thread has stopped): the record's payload and its ring space go back. */
static void prompt_release(void *ctx)
{
        struct dhold *h = ctx;
        struct serve *s = h->s;
        if (!s->d->transports_freed) /* else an external payload went with its transport */
                dp_req_release(h->rec);
        dp_ring_put(s->d->req_ring[h->tr], h->rec);
        hold_put(s, h);
}

static void handle_generate(struct serve *s, const struct dp_req_rec *r, const uint8_t *pl, uint32_t pl_len)
{
        struct daemon *d = s->d;
        struct sl_error err = {0};
        struct dp_generate g;
        uint32_t cl;
        bool tps_on;
        if (atomic_load_explicit(&d->draining, memory_order_relaxed)) {
                reject(s, r, DP_ERR_SHUTTING_DOWN, 1000, 0, DO_SHUTTING_DOWN, "server is shutting down");
                return;
        }
        if (!cl_admit(s, r, true, &cl, &tps_on))
                return;
        int rc = dp_generate_decode(pl, pl_len, &g, &err);
        if (rc < 0) {
                int code = -rc;
                reject(s, r, code, 0, 0, code == DP_ERR_PROMPT_TOO_LONG ? DO_PROMPT_TOO_LONG : DO_BAD_PARAM, "%s",
                       err.msg);
                return;
        }
        const uint32_t max_ctx = d->sopts.max_ctx;
        const int32_t *prompt = s->ids;
        int n;
        if (g.flags & DP_GEN_PROMPT_IDS) {
                if (g.prompt_len > s->lim.max_prompt_tokens) {
                        reject(s, r, DP_ERR_PROMPT_TOO_LONG, 0, s->lim.max_prompt_tokens, DO_PROMPT_TOO_LONG,
                               "prompt is %u tokens, over the limit of %u", g.prompt_len, s->lim.max_prompt_tokens);
                        return;
                }
                for (uint32_t i = 0; i < g.prompt_len; i++) {
                        int32_t id = dp_id_get(g.prompt_ids, i);
                        if (id < 0 || (uint32_t)id >= d->n_vocab) {
                                reject(s, r, DP_ERR_BAD_PARAM, 0, 0, DO_BAD_PARAM,
                                       "prompt token %u is %d, outside the vocabulary of %u", i, id, d->n_vocab);
                                return;
                        }
                }
                n = (int)g.prompt_len;
                /* The wire's little-endian i32 ids are the engine's int32_t array on a
                 * little-endian host: when they are 4-byte aligned where they lie (the DPDK
                 * receive buffer, or the request ring), the engine reads them there. */
                if (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && ((uintptr_t)g.prompt_ids & 3) == 0) {
                        prompt = (const int32_t *)(const void *)g.prompt_ids;
                        ctl_counter_add(d->m.prompts_zero_copy, 1);
                } else {
                        for (uint32_t i = 0; i < g.prompt_len; i++)
                                s->ids[i] = dp_id_get(g.prompt_ids, i);
                        ctl_counter_add(d->m.prompts_copied, 1);
                }
        } else {
                if (g.prompt_len > s->lim.max_prompt_bytes) {
                        reject(s, r, DP_ERR_PROMPT_TOO_LONG, 0, s->lim.max_prompt_bytes, DO_PROMPT_TOO_LONG,
                               "prompt is %u bytes, over the limit of %u", g.prompt_len, s->lim.max_prompt_bytes);
                        return;
                }
                n = tokenize(s, r, g.prompt_text, g.prompt_len, g.flags & DP_GEN_ADD_SPECIAL,
                             g.flags & DP_GEN_PARSE_SPECIAL);
                if (n < 0)
                        return;
        }
        if (n == 0) {
                reject(s, r, DP_ERR_BAD_PARAM, 0, 0, DO_BAD_PARAM, "the prompt gives no tokens");
                return;
        }
        if ((uint32_t)n >= max_ctx) {
                reject(s, r, DP_ERR_PROMPT_TOO_LONG, 0, max_ctx - 1, DO_PROMPT_TOO_LONG,
                       "prompt is %d tokens, the context holds %u", n, max_ctx);
                return;
        }
        uint32_t mt = g.max_tokens;
        if (mt > s->lim.max_new_tokens) {
                reject(s, r, DP_ERR_BAD_PARAM, 0, s->lim.max_new_tokens, DO_BAD_PARAM,
                       "max_tokens %u is over the limit of %u", mt, s->lim.max_new_tokens);
                return;
        }
        if (mt == 0)
                mt = SL_MIN(s->lim.default_max_tokens, max_ctx - (uint32_t)n);
        else if ((uint64_t)n + mt > max_ctx) {
                reject(s, r, DP_ERR_PROMPT_TOO_LONG, 0, max_ctx, DO_PROMPT_TOO_LONG,
                       "prompt (%d tokens) + max_tokens (%u) is over the context of %u", n, mt, max_ctx);
                return;
        }
        struct engine_request q = {.prompt = prompt, .n_prompt = (uint32_t)n, .max_tokens = mt,
                                   .n_stop = g.n_stop, .t_receipt_ns = r->rx_ns};
        q.sampling = (struct engine_sampling){
                .temperature = g.sampling.temperature, .top_k = g.sampling.top_k, .top_p = g.sampling.top_p,
                .min_p = g.sampling.min_p, .repeat_penalty = g.sampling.repeat_penalty,
                .presence_penalty = g.sampling.presence_penalty,
                .frequency_penalty = g.sampling.frequency_penalty,
                .penalty_last_n = g.sampling.penalty_last_n, .seed = g.sampling.seed};
        if (engine_sampling_validate(&q.sampling, &err) < 0) {
                reject(s, r, DP_ERR_BAD_PARAM, 0, 0, DO_BAD_PARAM, "%s", err.msg);
                return;
        }
        if (q.sampling.top_k > 0 && (uint32_t)q.sampling.top_k > d->n_vocab) {
                reject(s, r, DP_ERR_BAD_PARAM, 0, d->n_vocab, DO_BAD_PARAM, "top_k %d is over n_vocab %u",
                       q.sampling.top_k, d->n_vocab);
                return;
        }
        for (unsigned i = 0; i < g.n_stop && i < ENGINE_SCHED_MAX_STOP; i++) {
                q.stop[i] = g.stop[i].ptr;
                q.stop_len[i] = g.stop[i].len;
        }
        uint32_t dl = g.deadline_ms;
        if (s->lim.request_timeout_ms && (dl == 0 || dl > s->lim.request_timeout_ms))
                dl = s->lim.request_timeout_ms;
        if (dl)
                q.deadline_ns = r->rx_ns + (uint64_t)dl * 1000000u;

        struct dreq *e = req_alloc(s, &q.tag);
        if (!e) {
                reject(s, r, DP_ERR_BUSY, 100, 0, DO_BUSY, "server request table full");
                return;
        }
        e->tr = r->transport, e->client = r->client, e->rid = r->request_id, e->rx_ns = r->rx_ns;
        e->no_text = g.flags & DP_GEN_NO_TEXT;
        e->cl = cl;
        e->tps_on = tps_on;
        if (cl)
                s->cl[cl - 1].inflight++;
        if (s->rx_peer)
                e->peer = *s->rx_peer;
        else
                e->peer.len = 0;
        if (s->lim.audit_text && g.prompt_text) {
                e->prompt_len = SL_MIN(g.prompt_len, AUDIT_TEXT_CAP);
                memcpy(e->prompt, g.prompt_text, e->prompt_len);
        }
        if (g.flags & DP_GEN_ECHO_PROMPT)
                send_tokens(s, e->tr, e->client, e->rid, DP_TOKENS_PROMPT, prompt, (uint32_t)n, NULL, 0);
        /* ids in place: the engine's prefill reads them in the record, which stays in the
         * ring until the engine gives it back. Only while the ring is at most a quarter full
         * (held records keep the space behind them too): new requests always find room. */
        struct dhold *h = NULL;
        const struct dp_ring *ring = d->req_ring[r->transport];
        if (g.prompt_ids && prompt == (const int32_t *)(const void *)g.prompt_ids && s->hold_free &&
            dp_ring_used(ring) <= dp_ring_capacity(ring) / 4) {
                h = &s->hold[s->hold_free - 1];
                s->hold_free = h->next_free;
                *h = (struct dhold){.s = s, .rec = r, .tr = r->transport};
                q.prompt_release = prompt_release;
                q.prompt_ctx = h;
        }
        uint32_t retry_ms = 0;
        rc = engine_sched_submit(d->sched, &q, &retry_ms, &err);
        if (rc >= 0) {
                s->rec_held = h != NULL;
                return;
        }
        if (h)
                hold_put(s, h);
        req_free(s, e);
        if (rc == -EBUSY)
                reject(s, r, DP_ERR_BUSY, retry_ms ? retry_ms : 100, 0, DO_BUSY, "queue full (%u waiting)",
                       d->sopts.max_queued);
        else if (rc == -EINVAL)
                reject(s, r, DP_ERR_BAD_PARAM, 0, 0, DO_BAD_PARAM, "%s", err.msg);
        else if (rc == -EEXIST)
                ctl_logf(SL_LOG_WARNING, "request %016llx: duplicate tag", (unsigned long long)r->request_id);
        else
                reject(s, r, DP_ERR_INTERNAL, 0, 0, DO_ERROR, "%s", err.msg[0] ? err.msg : strerror(-rc));
}

static void handle_tokenize(struct serve *s, const struct dp_req_rec *r, const uint8_t *pl, uint32_t pl_len)
{
        struct sl_error err = {0};
        struct dp_tokenize t;
        uint32_t cl;
        bool tps_on;
        if (!cl_admit(s, r, false, &cl, &tps_on))
                return;
        int rc = dp_tokenize_decode(pl, pl_len, &t, &err);
        if (rc < 0) {
                reject(s, r, -rc, 0, 0, -rc == DP_ERR_PROMPT_TOO_LONG ? DO_PROMPT_TOO_LONG : DO_BAD_PARAM, "%s",
                       err.msg);
                return;
        }
        if (t.text.len > s->lim.max_prompt_bytes) {
                reject(s, r, DP_ERR_PROMPT_TOO_LONG, 0, s->lim.max_prompt_bytes, DO_PROMPT_TOO_LONG,
                       "text is %u bytes, over the limit of %u", t.text.len, s->lim.max_prompt_bytes);
                return;
        }
        int n = tokenize(s, r, t.text.ptr, t.text.len, t.flags & DP_TOK_ADD_SPECIAL, t.flags & DP_TOK_PARSE_SPECIAL);
        if (n < 0)
                return;
        uint64_t t0 = r->rx_ns;
        /* ids, with the text of each frame's ids unless NO_TEXT (frames of up to 64 ids keep
         * the text of a frame small) */
        char text[4096];
        struct engine_detok dt;
        engine_detok_init(&dt);
        for (int i = 0; i < n;) {
                uint32_t k = (uint32_t)SL_MIN(n - i, 64), tl = 0;
                if (!(t.flags & DP_TOK_NO_TEXT)) {
                        for (uint32_t j = 0; j < k; j++) {
                                int w = engine_detok_push(s->d->tok, &dt, s->ids[i + j], text + tl,
                                                          sizeof(text) - tl);
                                if (w > 0)
                                        tl += (uint32_t)w;
                        }
                        if (i + (int)k == n) {
                                int w = engine_detok_flush(&dt, text + tl, sizeof(text) - tl);
                                if (w > 0)
                                        tl += (uint32_t)w;
                        }
                }
                send_tokens(s, r->transport, r->client, r->request_id, DP_TOKENS_PROMPT, s->ids + i, k, text, tl);
                i += (int)k;
        }
        uint64_t now = sl_now_ns();
        struct dp_done dn = {.reason = DP_FINISH_NONE, .stop_index = DP_STOP_INDEX_NONE,
                             .prompt_tokens = (uint32_t)n, .total_us = now > t0 ? (now - t0) / 1000 : 0};
        send_done(s, r->transport, r->client, r->request_id, &dn);
        ctl_counter_add(s->d->m.requests[DO_TOKENIZE], 1);
}

static void handle(struct serve *s, const struct dp_req_rec *r)
{
        uint32_t pl_len;
        const uint8_t *pl = dp_req_payload(r, &pl_len);
        if (r->transport >= DT_N || !pl)
                return;
        switch (r->kind) {
        case DP_REQ_GENERATE:
                handle_generate(s, r, pl, pl_len);
                break;
        case DP_REQ_TOKENIZE:
                handle_tokenize(s, r, pl, pl_len);
                break;
        case DP_REQ_CANCEL:
        case DP_REQ_CLIENT_GONE: {
                int64_t tag = req_find(s, r->transport, r->client, r->request_id);
                if (tag >= 0) /* unknown: already finished, ignore */
                        engine_sched_cancel(s->d->sched, (uint64_t)tag, &s->ev, s);
                break;
        }
        default:
                break;
        }
}

static unsigned drain(struct serve *s, uint8_t tr)
{
        struct dp_ring *ring = s->d->req_ring[tr];
        unsigned n = 0;
        const void *rec;
        size_t len;
        if (!ring)
                return 0;
        while (n < DRAIN_BURST && (rec = dp_ring_peek(ring, &len))) {
                const struct dp_req_rec *r = rec;
                if (len >= sizeof(*r) && len - sizeof(*r) >= r->payload_len) {
                        s->rx_peer = dp_req_peer(r, len);
                        s->rec_held = false;
                        handle(s, r);
                        s->rx_peer = NULL;
                        if (s->rec_held) { /* the engine reads the prompt here: prompt_release */
                                dp_ring_hold(ring);
                                n++;
                                continue;
                        }
                        dp_req_release(r); /* the engine copied what it keeps (prompt, stops) */
                }
                dp_ring_release(ring);
                n++;
        }
        return n;
}

/* ---- load and metrics ---- */

void serve_load(void *arg, struct dp_load *l)
{
        struct daemon *d = arg;
        struct engine_sched_stats st;
        engine_sched_stats(d->sched, &st);
        l->queue_depth = st.queued;
        l->active = st.running;
        l->kv_blocks_total = st.kv_blocks_total;
        l->kv_blocks_free = st.kv_blocks_total - st.kv_blocks_used;
        l->max_inflight = atomic_load_explicit(&d->max_inflight, memory_order_relaxed);
        l->flags = atomic_load_explicit(&d->draining, memory_order_relaxed) ? DP_LOAD_DRAINING : 0;
}

/* Gauges from the scheduler's stats, and the transports' counters copied as deltas: done
 * here on the engine thread every STATS_EVERY_NS, so /metrics lags by at most that. */
static void update_metrics(struct serve *s)
{
        struct daemon *d = s->d;
        struct d_metrics *m = &d->m;
        struct engine_sched_stats st;
        engine_sched_stats(d->sched, &st);
        ctl_gauge_set(m->queue_depth, st.queued);
        ctl_gauge_set(m->running, st.running);
        ctl_gauge_set(m->kv_used, st.kv_blocks_used);
        ctl_gauge_set(m->kv_total, st.kv_blocks_total);
        ctl_gauge_set(m->live, atomic_load_explicit(&d->n_live, memory_order_relaxed));
        ctl_gauge_set(m->draining, atomic_load_explicit(&d->draining, memory_order_relaxed));
        ctl_gauge_set(m->clients, s->n_cl_used);
        static uint64_t last_steps, last_pre, last_graph, last_gerr, last_inplace;
        ctl_counter_add(m->steps, st.steps - last_steps);
        ctl_counter_add(m->prompt_tokens_in_place, st.prompt_tokens_in_place - last_inplace);
        last_inplace = st.prompt_tokens_in_place;
        ctl_counter_add(m->preemptions, st.preemptions - last_pre);
        ctl_counter_add(m->graph_steps, st.graph_steps - last_graph);
        ctl_counter_add(m->gpu_errors, st.gpu_errors - last_gerr);
        last_steps = st.steps, last_pre = st.preemptions, last_graph = st.graph_steps, last_gerr = st.gpu_errors;
        ctl_gauge_set(m->launches, st.launches_last);
        ctl_gauge_set(m->gpu, engine_sched_backend(d->sched) == ENGINE_BACKEND_CUDA);
        if (!atomic_load_explicit(&d->transports_up, memory_order_acquire))
                return; /* main.c is still creating them */
        for (int tr = 0; tr < DT_N; tr++) {
                struct dp_transport_stats ts;
                if (tr == DT_UDP && d->udp)
                        dp_udp_stats(d->udp, &ts);
                else if (tr == DT_TCP && d->tcp)
                        dp_tcp_stats(d->tcp, &ts);
#if SLUICE_HAVE_DPDK
                else if (tr >= DT_DPDK && d->dpdk && (unsigned)(tr - DT_DPDK) < dp_dpdk_queues(d->dpdk)) {
                        struct dp_dpdk_stats ds;
                        dp_dpdk_stats(d->dpdk, (unsigned)(tr - DT_DPDK), &ds);
                        ts = ds.proto;
                        ts.rx_frames = ds.rx_packets, ts.tx_frames = ds.tx_packets;
                        ts.rx_bytes = ds.rx_bytes, ts.tx_bytes = ds.tx_bytes;
                        for (int i = 0; i < DP_DPDK_DROP_N; i++)
                                ts.drop_bad_crc += ds.drops[i]; /* every frame the lcore dropped */
                }
#endif
                else
                        continue;
                uint64_t v[DTS_N] = {
                        [DTS_RX_FRAMES] = ts.rx_frames, [DTS_TX_FRAMES] = ts.tx_frames,
                        [DTS_RX_BYTES] = ts.rx_bytes, [DTS_TX_BYTES] = ts.tx_bytes,
                        [DTS_MALFORMED] = ts.malformed,
                        [DTS_DROPS] = ts.drop_bad_crc + ts.drop_short_hello + ts.drop_no_tx_buf +
                                      ts.drop_ring_full + ts.drop_table_full + ts.drop_stale_resp +
                                      ts.output_overflows + ts.window_full,
                        [DTS_ERRORS_SENT] = ts.errors_sent,
                        [DTS_AUTH_OK] = ts.auth.ok, [DTS_AUTH_MISSING] = ts.auth.missing,
                        [DTS_AUTH_UNKNOWN_KEY] = ts.auth.unknown_key, [DTS_AUTH_EXPIRED] = ts.auth.expired,
                        [DTS_AUTH_BAD_MAC] = ts.auth.bad_mac, [DTS_AUTH_REPLAYED] = ts.auth.replayed,
                        [DTS_AUTH_FULL] = ts.auth.replay_full,
                        [DTS_DENIED] = ts.denied, [DTS_COOKIES_SENT] = ts.cookies_sent,
                        [DTS_COOKIE_MISSING] = ts.cookie_missing, [DTS_COOKIE_BAD] = ts.cookie_bad,
                        [DTS_TLS_OK] = ts.tls_handshakes, [DTS_TLS_FAILED] = ts.tls_failures,
                };
                for (int k = 0; k < DTS_N; k++) {
                        if (v[k] > m->tr_last[tr][k])
                                ctl_counter_add(m->tr[dt_kind(tr)][k], v[k] - m->tr_last[tr][k]);
                        m->tr_last[tr][k] = v[k];
                }
        }
#if SLUICE_HAVE_DPDK
        d_dpdk_metrics_update(m, d->dpdk);
#endif
}

static void refresh_limits(struct serve *s)
{
        struct daemon *d = s->d;
        uint32_t g = atomic_load_explicit(&d->lim_gen, memory_order_acquire);
        if (g == s->lim_gen)
                return;
        pthread_mutex_lock(&d->lim_lock);
        s->lim = d->lim;
        s->lim_gen = atomic_load_explicit(&d->lim_gen, memory_order_relaxed);
        pthread_mutex_unlock(&d->lim_lock);
}

static void cancel_all(struct serve *s)
{
        for (uint32_t i = 0; i < s->n_req; i++)
                if (s->req[i].used)
                        engine_sched_cancel(s->d->sched, (uint64_t)s->req[i].gen << 32 | i, &s->ev, s);
}

/* ---- the loop ---- */

void *serve_main(void *arg)
{
        struct daemon *d = arg;
        struct serve *s = d->serve;
        struct sl_error err = {0};
        uint64_t step_errors = 0;
        s->lim_gen = UINT32_MAX;
        while (!atomic_load_explicit(&d->stop, memory_order_relaxed)) {
                __atomic_add_fetch(&d->heartbeat, 1, __ATOMIC_RELAXED);
                ctl_notify_watchdog();
                refresh_limits(s);
                unsigned got = 0;
                for (uint8_t tr = 0; tr < DT_N; tr++)
                        got += drain(s, tr);
                if (atomic_load_explicit(&d->cancel_all, memory_order_relaxed))
                        cancel_all(s);
                int r = engine_sched_step(d->sched, &s->ev, s, &err);
                if (r < 0 && step_errors++ < 10)
                        ctl_logf(SL_LOG_ERR, "engine step failed: %s", err.msg);
                if (r < 0 && engine_sched_broken(d->sched) && !atomic_load(&d->fatal)) {
                        /* A GPU that failed does not come back in this process: fail what is
                         * in flight (each step that still runs fails its batch with ERROR),
                         * report degraded, and let systemd restart the service. */
                        if (d->http)
                                ctl_http_set_state(d->http, CTL_HEALTH_DEGRADED);
                        if (engine_sched_live(d->sched) == 0) {
                                ctl_logf(SL_LOG_ERR, "the GPU failed (%s); exiting so the service restarts", err.msg);
                                atomic_store(&d->fatal, true);
                        }
                }
                uint64_t now = sl_now_ns();
                if (now >= s->next_stats_ns) {
                        update_metrics(s);
                        s->next_stats_ns = now + STATS_EVERY_NS;
                }
                if (got || r != 0) {
                        kick(d, DT_UDP);
                        kick(d, DT_TCP);
                        continue;
                }
                /* live requests that computed nothing this step (cannot happen with a sane
                 * scheduler) get a short nap rather than a spin */
                int wait_ms = engine_sched_live(d->sched) > 0 ? 1 : IDLE_WAIT_MS;
                dp_notify_prepare(&d->wake);
                bool empty = true;
                for (int tr = 0; tr < DT_N; tr++)
                        if (d->req_ring[tr] && dp_ring_readable(d->req_ring[tr]))
                                empty = false;
                if (empty)
                        dp_notify_wait(&d->wake, wait_ms);
                dp_notify_done(&d->wake);
        }
        update_metrics(s);
        return NULL;
}

static void serve_destroy(struct serve *s)
{
        free(s->req), free(s->ids), free(s->stage), free(s->cl), free(s->cl_bucket), free(s->hold), free(s);
}

int serve_create(struct daemon *d, struct sl_error *err)
{
        struct serve *s = calloc(1, sizeof(*s));
        if (!s)
                return sl_errorf(err, -ENOMEM, "out of memory");
        s->d = d;
        s->n_req = d->sopts.max_running + d->sopts.max_queued + 8;
        s->req = calloc(s->n_req, sizeof(*s->req));
        s->ids_cap = DP_MAX_PROMPT_TOKENS + 16;
        s->ids = malloc(s->ids_cap * sizeof(*s->ids));
        s->stage = malloc(DP_TCP_MAX_PAYLOAD);
        /* every live request, and those that ended while a step that read them still runs
         * (at most two steps of max_running) */
        s->n_hold = s->n_req + 2 * d->sopts.max_running;
        s->hold = calloc(s->n_hold, sizeof(*s->hold));
        for (uint32_t i = 0; s->hold && i < s->n_hold; i++)
                s->hold[i].next_free = i + 1 < s->n_hold ? i + 2 : 0;
        s->hold_free = 1;
        /* every live request's client keeps its entry: room for them all plus idle ones */
        s->n_cl = SL_MAX(d->cfg.limits.max_clients, s->n_req + 64);
        for (s->n_cl_buckets = 16; s->n_cl_buckets < 2 * s->n_cl; s->n_cl_buckets *= 2)
                ;
        s->cl = calloc(s->n_cl, sizeof(*s->cl));
        s->cl_bucket = calloc(s->n_cl_buckets, sizeof(*s->cl_bucket));
        if (!s->req || !s->ids || !s->stage || !s->cl || !s->cl_bucket || !s->hold) {
                uint32_t n = s->n_req;
                serve_destroy(s);
                return sl_errorf(err, -ENOMEM, "out of memory for the request table (%u entries)", n);
        }
        s->ev.on_token = on_token;
        s->ev.on_done = on_done;
        d->serve = s;
        return 0;
}

void serve_free(struct daemon *d)
{
        struct serve *s = d->serve;
        if (!s)
                return;
        serve_destroy(s);
        d->serve = NULL;
}
