/* api.c — libsluice's public calls: connect (HELLO/INFO), ping, info, generate through a
 * callback or an iterator, cancel, tokenize. The receive thread in conn.c files frames
 * under their requests; these calls wait for them. */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <sodium.h>

#include "client.h"
#include "sluice_config.h"

static __thread char g_connect_err[288];

const char *sluice_version(void)
{
        return SLUICE_VERSION;
}

const char *sluice_errmsg(const struct sluice_conn *c)
{
        return c ? c->err : g_connect_err;
}

const char *sluice_finish_name(int reason)
{
        return reason < 0 || reason > DP_FINISH_MAX ? "?" : dp_finish_name((uint8_t)reason);
}

void sluice_opts_init(struct sluice_opts *o)
{
        *o = (struct sluice_opts){.host = "localhost", .port = 7400, .transport = SLUICE_UDP,
                                  .timeout_ms = 30000, .connect_timeout_ms = 5000, .retransmit_ms = 200};
}

void sluice_gen_params_init(struct sluice_gen_params *p)
{
        *p = (struct sluice_gen_params){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
                                        .repeat_penalty = 1.0f, .penalty_last_n = 64,
                                        .flags = SLUICE_GEN_ADD_SPECIAL};
}

static void result_init(struct sluice_result *res)
{
        if (res)
                *res = (struct sluice_result){.stop_index = -1, .server_error_name = ""};
}

/* Waits until r is answered (state not open) or, for a stream, the next frame is there.
 * Under c->mu. The receive thread fails requests that time out; the extra bound here only
 * guards against a receive thread that is gone. */
static void wait_req(struct sluice_conn *c, struct sluice_req *r)
{
        for (;;) {
                if (r->state != REQ_OPEN)
                        return;
                if ((r->opcode == DP_OP_GENERATE || r->opcode == DP_OP_TOKENIZE) &&
                    r->win[r->base % SLUICE_WINDOW])
                        return;
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_nsec += 100 * 1000000L;
                if (ts.tv_nsec >= 1000000000L)
                        ts.tv_sec++, ts.tv_nsec -= 1000000000L;
                pthread_cond_timedwait(&c->cv, &c->mu, &ts);
                uint64_t quiet_ms = (sl_now_ns() - r->t_last_rx) / 1000000ull;
                if (r->state == REQ_OPEN && quiet_ms > (uint64_t)r->timeout_ms + 2000) {
                        r->state = REQ_FAILED;
                        r->fail = -ETIMEDOUT;
                        snprintf(r->fres.message, sizeof(r->fres.message), "no answer from %s", c->peer);
                }
        }
}

/* Sends a one-frame exchange (HELLO, PING) and waits for its answer. Returns with r
 * registered (the caller reads it and removes it) or a negative errno. */
static int exchange(struct sluice_conn *c, uint8_t opcode, uint8_t *msg, size_t len, uint32_t timeout_ms,
                    struct sluice_req **out)
{
        struct sluice_req *r;
        int rc = sluice_req_new(c, opcode, msg, len, &r);
        if (rc < 0)
                return rc;
        pthread_mutex_lock(&c->mu);
        r->timeout_ms = timeout_ms;
        pthread_mutex_unlock(&c->mu);
        rc = sluice_req_send(c, r);
        if (rc < 0) {
                sluice_seterr(c, rc, "cannot send %s to %s: %s", dp_opcode_name(opcode), c->peer,
                              rc == -EPROTO && c->tls_why[0] ? c->tls_why : strerror(-rc));
                sluice_req_remove(c, r);
                return rc;
        }
        pthread_mutex_lock(&c->mu);
        wait_req(c, r);
        rc = r->state == REQ_FAILED ? r->fail : 0;
        if (rc < 0)
                sluice_seterr(c, rc, "%s", r->fres.message);
        pthread_mutex_unlock(&c->mu);
        if (rc < 0) {
                sluice_req_remove(c, r);
                return rc;
        }
        *out = r;
        return 0;
}

static void load_copy(struct sluice_load *o, const struct dp_load *l)
{
        *o = (struct sluice_load){.queue_depth = l->queue_depth, .active = l->active,
                                  .kv_blocks_free = l->kv_blocks_free, .kv_blocks_total = l->kv_blocks_total,
                                  .max_inflight = l->max_inflight, .draining = l->flags & DP_LOAD_DRAINING};
}

static int hello(struct sluice_conn *c, uint32_t timeout_ms, struct sluice_info *out)
{
        /* UDP: the datagram is padded to DP_UDP_HELLO_MIN so that the server may answer. */
        size_t plen = c->tcp ? 4 : DP_UDP_HELLO_MIN - DP_HEADER_SIZE;
        uint8_t *msg = calloc(1, plen);
        if (!msg)
                return -ENOMEM;
        struct dp_hello h = {.max_version = DP_VERSION, .pad_len = (uint32_t)(plen - 4)};
        long n = dp_hello_encode(msg, plen, &h);
        if (n < 0) {
                free(msg);
                return (int)n;
        }
        struct sluice_req *r;
        int rc = exchange(c, DP_OP_HELLO, msg, (size_t)n, timeout_ms, &r);
        if (rc < 0)
                return rc;
        const struct dp_info *i = &r->info;
        if (i->version != DP_VERSION || i->max_frame < 256) {
                sluice_req_remove(c, r);
                return sluice_seterr(c, -EPROTO, "%s: INFO with version %u, max frame %u", c->peer,
                                     i->version, i->max_frame);
        }
        struct sluice_info inf = {
                .protocol_version = i->version, .max_frame = i->max_frame, .max_message = i->max_message,
                .max_prompt_tokens = i->max_prompt_tokens, .max_prompt_bytes = i->max_prompt_bytes,
                .max_new_tokens = i->max_new_tokens, .max_stop = i->max_stop, .max_stop_len = i->max_stop_len,
                .n_ctx = i->n_ctx, .n_vocab = i->n_vocab, .lease_ms = i->lease_ms,
                .auth_required = i->flags & DP_INFO_AUTH_REQUIRED,
                .cookie_required = i->flags & DP_INFO_COOKIE_REQUIRED,
        };
        load_copy(&inf.load, &i->load);
        snprintf(inf.model, sizeof(inf.model), "%s", r->info_model);
        snprintf(inf.server, sizeof(inf.server), "%s", r->info_server);
        sluice_req_remove(c, r);
        pthread_mutex_lock(&c->mu);
        c->info = inf;
        c->lease_ms = inf.lease_ms ? inf.lease_ms : 10000;
        c->max_frame_tx = SL_MIN(inf.max_frame, c->tcp ? DP_MAX_FRAME_TCP : DP_MAX_FRAME_UDP);
        pthread_mutex_unlock(&c->mu);
        /* the COOKIE came with the INFO (the server sends it first); wait if it has not */
        if (!c->tcp && inf.cookie_required && (rc = sluice_cookie_wait(c, timeout_ms)) < 0)
                return rc;
        if (out)
                *out = inf;
        return 0;
}

/* ---- connections ---- */

static bool try_next_address(int rc)
{
        return rc == -ECONNREFUSED || rc == -ENETUNREACH || rc == -EHOSTUNREACH || rc == -EADDRNOTAVAIL ||
               rc == -EAFNOSUPPORT || rc == -ECONNRESET || rc == -EPROTONOSUPPORT;
}

int sluice_connect(const struct sluice_opts *opts, struct sluice_conn **out)
{
        struct sluice_opts o;
        sluice_opts_init(&o);
        if (!out || !opts) {
                snprintf(g_connect_err, sizeof(g_connect_err), "sluice_connect: NULL argument");
                return -EINVAL;
        }
        *out = NULL;
        if (opts->host && opts->host[0])
                o.host = opts->host;
        if (opts->port)
                o.port = opts->port;
        o.transport = opts->transport;
        o.family = opts->family;
        if (opts->timeout_ms)
                o.timeout_ms = opts->timeout_ms;
        if (opts->connect_timeout_ms)
                o.connect_timeout_ms = opts->connect_timeout_ms;
        if (opts->retransmit_ms)
                o.retransmit_ms = opts->retransmit_ms;
        o.key_file = opts->key_file;
        o.key_id = opts->key_id;
        o.tls = opts->tls;
        o.tls_ca = opts->tls_ca;
        o.tls_server_name = opts->tls_server_name;
        o.tls_cert = opts->tls_cert;
        o.tls_key = opts->tls_key;
        if (o.tls && o.transport != SLUICE_TCP) {
                snprintf(g_connect_err, sizeof(g_connect_err), "sluice_connect: TLS needs the TCP transport");
                return -EINVAL;
        }
        struct dp_key key = {0};
        if (o.key_file) {
                struct dp_keys *ks = NULL;
                struct sl_error e = {0};
                int kr = dp_keys_load(o.key_file, true, &ks, &e);
                if (kr < 0) {
                        snprintf(g_connect_err, sizeof(g_connect_err), "%s", e.msg);
                        return kr;
                }
                const struct dp_key *k = o.key_id ? dp_keys_find(ks, o.key_id) : dp_keys_at(ks, 0);
                if (!k) {
                        snprintf(g_connect_err, sizeof(g_connect_err), "key id %u is not in %s", o.key_id, o.key_file);
                        dp_keys_free(ks);
                        return -ENOKEY;
                }
                key = *k;
                dp_keys_free(ks);
        }
        if ((o.transport != SLUICE_UDP && o.transport != SLUICE_TCP) ||
            (o.family != SLUICE_AF_ANY && o.family != SLUICE_AF_INET && o.family != SLUICE_AF_INET6)) {
                snprintf(g_connect_err, sizeof(g_connect_err), "sluice_connect: bad transport or family");
                return -EINVAL;
        }
        const char *tname = o.transport == SLUICE_TCP ? (o.tls ? "tls" : "tcp") : "udp";

        char port[8];
        snprintf(port, sizeof(port), "%u", o.port);
        struct addrinfo hints = {
                .ai_family = o.family == SLUICE_AF_INET ? AF_INET : o.family == SLUICE_AF_INET6 ? AF_INET6 : AF_UNSPEC,
                .ai_socktype = o.transport == SLUICE_TCP ? SOCK_STREAM : SOCK_DGRAM,
        };
        struct addrinfo *res = NULL;
        int g = getaddrinfo(o.host, port, &hints, &res);
        if (g != 0) {
                snprintf(g_connect_err, sizeof(g_connect_err), "cannot resolve %s: %s", o.host, gai_strerror(g));
                return g == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
        }
        int rc = -EHOSTUNREACH;
        snprintf(g_connect_err, sizeof(g_connect_err), "no address for %s", o.host);
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                char h[64], peer[128];
                if (getnameinfo(ai->ai_addr, ai->ai_addrlen, h, sizeof(h), NULL, 0, NI_NUMERICHOST) != 0)
                        snprintf(h, sizeof(h), "%s", o.host);
                snprintf(peer, sizeof(peer), ai->ai_family == AF_INET6 ? "[%s]:%u (%s)" : "%s:%u (%s)", h, o.port,
                         tname);
                struct sluice_conn *c = NULL;
                rc = sluice_conn_open(&o, ai, peer, &c, g_connect_err, sizeof(g_connect_err));
                if (rc == 0 && o.key_file) {
                        c->signing = true;
                        c->key = key;
                        randombytes_buf(&c->nonce, sizeof(c->nonce)); /* distinct across connections */
                }
                if (rc == 0) {
                        rc = hello(c, o.connect_timeout_ms, NULL);
                        if (rc == 0) {
                                *out = c;
                                break;
                        }
                        if (rc == -ETIMEDOUT)
                                snprintf(g_connect_err, sizeof(g_connect_err), "no answer from %s within %u ms",
                                         peer, o.connect_timeout_ms);
                        else
                                snprintf(g_connect_err, sizeof(g_connect_err), "%s", c->err);
                        sluice_conn_free(c);
                }
                if (!try_next_address(rc))
                        break;
        }
        freeaddrinfo(res);
        if (o.key_file)
                sodium_memzero(&key, sizeof(key));
        return rc;
}

void sluice_close(struct sluice_conn *c)
{
        sluice_conn_free(c);
}

int sluice_info(struct sluice_conn *c, struct sluice_info *out)
{
        if (!c || !out)
                return -EINVAL;
        return hello(c, c->o.timeout_ms, out);
}

int sluice_ping(struct sluice_conn *c, struct sluice_load *load, uint64_t *rtt_us)
{
        if (!c)
                return -EINVAL;
        uint8_t *msg = calloc(1, DP_PING_PAYLOAD);
        if (!msg)
                return -ENOMEM;
        uint64_t t0 = sl_now_ns();
        struct dp_ping p = {.token = t0};
        long n = dp_ping_encode(msg, DP_PING_PAYLOAD, &p);
        if (n < 0) {
                free(msg);
                return (int)n;
        }
        struct sluice_req *r;
        int rc = exchange(c, DP_OP_PING, msg, (size_t)n, c->o.timeout_ms, &r);
        if (rc < 0)
                return rc;
        if (r->pong.token != t0) {
                sluice_req_remove(c, r);
                return sluice_seterr(c, -EPROTO, "%s: PONG with the wrong token", c->peer);
        }
        if (load)
                load_copy(load, &r->pong.load);
        if (rtt_us)
                *rtt_us = (sl_now_ns() - t0) / 1000;
        sluice_req_remove(c, r);
        return 0;
}

/* ---- streams ---- */

struct sluice_stream {
        struct sluice_conn *c;
        struct sluice_req *r;
        struct sluice_item *cur;
        bool ended;
        int end_rc;
        struct sluice_result res;
};

static int encode_generate(struct sluice_conn *c, const struct sluice_gen_params *p, uint8_t **out, size_t *len)
{
        struct dp_generate g = {
                .flags = p->flags & (DP_GEN_NO_TEXT | DP_GEN_ECHO_PROMPT | DP_GEN_ADD_SPECIAL | DP_GEN_PARSE_SPECIAL),
                .sampling = {.temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p,
                             .min_p = p->min_p, .repeat_penalty = p->repeat_penalty,
                             .presence_penalty = p->presence_penalty, .frequency_penalty = p->frequency_penalty,
                             .penalty_last_n = p->penalty_last_n, .seed = p->seed},
                .max_tokens = p->max_tokens,
                .deadline_ms = p->deadline_ms,
        };
        uint8_t *ids = NULL, *buf = NULL;
        int rc;
        if (p->flags & ~(uint32_t)(SLUICE_GEN_NO_TEXT | SLUICE_GEN_ECHO_PROMPT | SLUICE_GEN_ADD_SPECIAL |
                                   SLUICE_GEN_PARSE_SPECIAL))
                return sluice_seterr(c, -EINVAL, "unknown generate flags 0x%x", p->flags);
        if (p->max_tokens > DP_MAX_NEW_TOKENS)
                return sluice_seterr(c, -EINVAL, "max_tokens %u is over %u", p->max_tokens, DP_MAX_NEW_TOKENS);
        if (p->n_stop > DP_MAX_STOP || (p->n_stop && !p->stop))
                return sluice_seterr(c, -EINVAL, "%zu stop strings (at most %u)", p->n_stop, DP_MAX_STOP);
        size_t cap = 60;
        for (size_t i = 0; i < p->n_stop; i++) {
                size_t l = p->stop[i] ? strlen(p->stop[i]) : 0;
                if (l == 0 || l > DP_MAX_STOP_LEN || !dp_utf8_valid(p->stop[i], l))
                        return sluice_seterr(c, -EINVAL, "stop string %zu: 1..%u bytes of UTF-8", i,
                                             DP_MAX_STOP_LEN);
                g.stop[i] = (struct dp_str){p->stop[i], (uint32_t)l};
                cap += 2 + l;
        }
        g.n_stop = (uint16_t)p->n_stop;
        if (p->prompt_ids) {
                if (p->n_prompt_ids > DP_MAX_PROMPT_TOKENS)
                        return sluice_seterr(c, -EMSGSIZE, "prompt of %zu tokens is over %u", p->n_prompt_ids,
                                             DP_MAX_PROMPT_TOKENS);
                ids = malloc(p->n_prompt_ids * 4 + 1);
                if (!ids)
                        return -ENOMEM;
                for (size_t i = 0; i < p->n_prompt_ids; i++) {
                        if (p->prompt_ids[i] < 0) {
                                free(ids);
                                return sluice_seterr(c, -EINVAL, "prompt token %zu is negative", i);
                        }
                        dp_id_put(ids, (uint32_t)i, p->prompt_ids[i]);
                }
                g.flags |= DP_GEN_PROMPT_IDS;
                g.prompt_len = (uint32_t)p->n_prompt_ids;
                g.prompt_ids = ids;
                cap += p->n_prompt_ids * 4;
        } else {
                const char *t = p->prompt ? p->prompt : "";
                size_t l = p->prompt_len ? p->prompt_len : strlen(t);
                if (l > DP_MAX_PROMPT_BYTES)
                        return sluice_seterr(c, -EMSGSIZE, "prompt of %zu bytes is over %u", l, DP_MAX_PROMPT_BYTES);
                if (!dp_utf8_valid(t, l))
                        return sluice_seterr(c, -EINVAL, "the prompt is not UTF-8");
                g.prompt_text = t;
                g.prompt_len = (uint32_t)l;
                cap += l;
        }
        buf = malloc(cap);
        if (!buf) {
                rc = -ENOMEM;
                goto fail;
        }
        long n = dp_generate_encode(buf, cap, &g);
        if (n < 0) {
                rc = sluice_seterr(c, -EINVAL, "bad generate parameters (non-finite sampling value?)");
                goto fail;
        }
        free(ids);
        *out = buf;
        *len = (size_t)n;
        return 0;
fail:
        free(ids);
        free(buf);
        return rc;
}

static int stream_start(struct sluice_conn *c, uint8_t opcode, uint8_t *msg, size_t len,
                        struct sluice_stream **out)
{
        struct sluice_stream *s = calloc(1, sizeof(*s));
        if (!s) {
                free(msg);
                return -ENOMEM;
        }
        int rc = sluice_req_new(c, opcode, msg, len, &s->r);
        if (rc < 0) {
                free(s);
                return rc;
        }
        s->c = c;
        rc = sluice_req_send(c, s->r);
        if (rc < 0) {
                sluice_seterr(c, rc, "cannot send %s to %s: %s", dp_opcode_name(opcode), c->peer,
                              rc == -EPROTO && c->tls_why[0] ? c->tls_why : strerror(-rc));
                sluice_req_remove(c, s->r);
                free(s);
                return rc;
        }
        *out = s;
        return 0;
}

int sluice_stream_open(struct sluice_conn *c, const struct sluice_gen_params *p, struct sluice_stream **out)
{
        if (!c || !p || !out)
                return -EINVAL;
        uint8_t *msg = NULL;
        size_t len = 0;
        int rc = encode_generate(c, p, &msg, &len);
        if (rc < 0)
                return rc;
        return stream_start(c, DP_OP_GENERATE, msg, len, out);
}

uint64_t sluice_stream_id(const struct sluice_stream *s)
{
        return s ? s->r->id : 0;
}

static int stream_end(struct sluice_stream *s, int rc, struct sluice_result *res)
{
        struct sluice_conn *c = s->c;
        struct sluice_req *r = s->r;
        uint64_t now = sl_now_ns();
        s->ended = true;
        s->end_rc = rc;
        s->res.client_total_us = (now - r->t_sent) / 1000;
        if (r->t_first_tok)
                s->res.client_ttft_us = (r->t_first_tok - r->t_sent) / 1000;
        if (rc < 0 && rc != -EREMOTEIO && rc != -EBUSY && rc != -EACCES && !s->res.message[0])
                snprintf(s->res.message, sizeof(s->res.message), "%s", strerror(-rc));
        if (rc < 0)
                sluice_seterr(c, rc, "%s", s->res.message);
        /* UDP: one last ACK lets the server drop its copies now rather than at the lease. */
        if (!c->tcp && rc != -ETIMEDOUT && r->terminal_seq >= 0) {
                uint8_t p[4];
                struct dp_ack a = {.next_seq = (uint32_t)r->terminal_seq + 1};
                if (dp_ack_encode(p, sizeof(p), &a) == 4)
                        sluice_send_simple(c, DP_OP_ACK, r->id, 0, p, 4);
        }
        sluice_req_remove(c, r);
        s->r = NULL;
        if (res)
                *res = s->res;
        return rc;
}

int sluice_stream_next(struct sluice_stream *s, struct sluice_chunk *chunk, struct sluice_result *res)
{
        if (!s)
                return -EINVAL;
        if (s->ended) {
                if (res)
                        *res = s->res;
                return s->end_rc;
        }
        sluice_item_free(s->cur);
        s->cur = NULL;
        struct sluice_conn *c = s->c;
        struct sluice_req *r = s->r;
        pthread_mutex_lock(&c->mu);
        wait_req(c, r);
        struct sluice_item *it = r->win[r->base % SLUICE_WINDOW];
        if (it) {
                r->win[r->base % SLUICE_WINDOW] = NULL;
                r->base++;
        } else {
                s->res = r->fres;
                s->res.stop_index = -1;
                if (!s->res.server_error_name)
                        s->res.server_error_name = "";
        }
        int fail = r->fail;
        pthread_mutex_unlock(&c->mu);
        if (!it)
                return stream_end(s, fail ? fail : -EPROTO, res);
        if (it->op == DP_OP_TOKENS) {
                s->cur = it;
                if (chunk)
                        *chunk = (struct sluice_chunk){.kind = it->kind, .n_ids = it->n_ids, .ids = it->ids,
                                                       .text_len = it->text_len, .text = it->text};
                return 1;
        }
        result_init(&s->res);
        int rc = 0;
        if (it->op == DP_OP_DONE) {
                const struct dp_done *d = &it->done;
                s->res.finish = d->reason;
                s->res.stop_index = d->reason == DP_FINISH_STOP ? d->stop_index : -1;
                s->res.prompt_tokens = d->prompt_tokens;
                s->res.generated_tokens = d->generated_tokens;
                s->res.queue_us = d->queue_us;
                s->res.ttft_us = d->ttft_us;
                s->res.total_us = d->total_us;
        } else {
                sluice_result_server(&s->res, &it->error);
                rc = sluice_map_server_error(it->error.code);
        }
        sluice_item_free(it);
        return stream_end(s, rc, res);
}

int sluice_cancel(struct sluice_conn *c, uint64_t request_id)
{
        if (!c || !request_id)
                return -EINVAL;
        pthread_mutex_lock(&c->mu);
        for (struct sluice_req *r = c->reqs; r; r = r->next)
                if (r->id == request_id) {
                        r->cancelled = true;
                        r->t_last_tx = sl_now_ns();
                }
        pthread_mutex_unlock(&c->mu);
        int rc = sluice_send_simple(c, DP_OP_CANCEL, request_id, 0, NULL, 0);
        return rc < 0 ? sluice_seterr(c, rc, "cannot send CANCEL: %s", strerror(-rc)) : 0;
}

int sluice_stream_cancel(struct sluice_stream *s)
{
        if (!s)
                return -EINVAL;
        if (s->ended)
                return 0;
        return sluice_cancel(s->c, s->r->id);
}

void sluice_stream_free(struct sluice_stream *s)
{
        if (!s)
                return;
        if (!s->ended && s->r) {
                sluice_send_simple(s->c, DP_OP_CANCEL, s->r->id, 0, NULL, 0);
                sluice_req_remove(s->c, s->r);
        }
        sluice_item_free(s->cur);
        free(s);
}

int sluice_generate(struct sluice_conn *c, const struct sluice_gen_params *p, sluice_chunk_cb cb, void *user,
                    struct sluice_result *res)
{
        struct sluice_stream *s;
        result_init(res);
        int rc = sluice_stream_open(c, p, &s);
        if (rc < 0) {
                if (res && c)
                        snprintf(res->message, sizeof(res->message), "%s", c->err);
                return rc;
        }
        bool cancelled = false;
        struct sluice_chunk ch;
        while ((rc = sluice_stream_next(s, &ch, res)) == 1) {
                if (cb && !cancelled && cb(user, &ch) != 0) {
                        cancelled = true;
                        sluice_stream_cancel(s);
                }
        }
        sluice_stream_free(s);
        return rc;
}

/* ---- tokenization ---- */

int sluice_tokenize(struct sluice_conn *c, const char *text, size_t len, uint32_t flags, int32_t **ids,
                    size_t *n_ids, struct sluice_result *res)
{
        result_init(res);
        if (!c || (!text && len) || !ids || !n_ids)
                return -EINVAL;
        *ids = NULL;
        *n_ids = 0;
        if (flags & ~(uint32_t)(SLUICE_TOK_ADD_SPECIAL | SLUICE_TOK_PARSE_SPECIAL))
                return sluice_seterr(c, -EINVAL, "unknown tokenize flags 0x%x", flags);
        if (len > DP_MAX_PROMPT_BYTES)
                return sluice_seterr(c, -EMSGSIZE, "text of %zu bytes is over %u", len, DP_MAX_PROMPT_BYTES);
        if (!dp_utf8_valid(text ? text : "", len))
                return sluice_seterr(c, -EINVAL, "the text is not UTF-8");
        uint8_t *msg = malloc(8 + len);
        if (!msg)
                return -ENOMEM;
        struct dp_tokenize t = {.flags = flags | DP_TOK_NO_TEXT, .text = {text ? text : "", (uint32_t)len}};
        long n = dp_tokenize_encode(msg, 8 + len, &t);
        if (n < 0) {
                free(msg);
                return sluice_seterr(c, -EINVAL, "cannot encode TOKENIZE");
        }
        struct sluice_stream *s;
        int rc = stream_start(c, DP_OP_TOKENIZE, msg, (size_t)n, &s);
        if (rc < 0)
                return rc;
        int32_t *v = NULL;
        size_t nv = 0, cap = 0;
        struct sluice_chunk ch;
        while ((rc = sluice_stream_next(s, &ch, res)) == 1) {
                if (nv + ch.n_ids > 4 * (size_t)DP_MAX_PROMPT_BYTES + 8) { /* more ids than bytes: broken */
                        rc = sluice_seterr(c, -EPROTO, "server sent more token ids than the text can have");
                        break;
                }
                if (nv + ch.n_ids > cap) {
                        size_t nc = SL_MAX(cap * 2, nv + ch.n_ids + 64);
                        int32_t *nvp = realloc(v, nc * sizeof(*v));
                        if (!nvp) {
                                rc = -ENOMEM;
                                break;
                        }
                        v = nvp, cap = nc;
                }
                memcpy(v + nv, ch.ids, ch.n_ids * sizeof(*v));
                nv += ch.n_ids;
        }
        sluice_stream_free(s);
        if (rc < 0) {
                free(v);
                return rc;
        }
        *ids = v;
        *n_ids = nv;
        return 0;
}
