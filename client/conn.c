/* conn.c — libsluice's connection: the socket (connected UDP, or TCP), the receive thread
 * that decodes every frame and files it under its request, and UDP's reliability: request
 * retransmit, reordering by seq, RESEND for gaps, ACKs that keep the lease alive. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client.h"

#define TICK_MS 10

/* ---- errors ---- */

int sluice_seterr(struct sluice_conn *c, int code, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, sizeof(c->err), fmt, ap);
        va_end(ap);
        return code;
}

void sluice_result_error(struct sluice_result *res, int code, const char *fmt, ...)
{
        (void)code;
        if (!res)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(res->message, sizeof(res->message), fmt, ap);
        va_end(ap);
}

int sluice_map_server_error(unsigned code)
{
        switch (code) {
        case DP_ERR_BUSY:
        case DP_ERR_RATE_LIMITED:
        case DP_ERR_SHUTTING_DOWN:
                return -EBUSY;
        case DP_ERR_UNAUTHENTICATED:
                return -EACCES;
        case DP_ERR_CANCELLED:
                return -ECANCELED;
        default:
                return -EREMOTEIO;
        }
}

void sluice_result_server(struct sluice_result *res, const struct dp_error *e)
{
        if (!res)
                return;
        unsigned code = e->code <= DP_ERR_MAX ? e->code : DP_ERR_INTERNAL; /* §4.6 */
        res->server_error = (int)code;
        res->server_error_name = dp_err_name((int)code);
        res->retry_after_ms = e->retry_after_ms;
        res->detail = e->detail;
        snprintf(res->message, sizeof(res->message), "%s: %.*s", dp_err_name((int)code),
                 (int)e->msg.len, e->msg.ptr ? e->msg.ptr : "");
}

/* ---- sending ---- */

static int send_all(struct sluice_conn *c, const uint8_t *p, size_t len)
{
        uint64_t end = sl_now_ns() + (uint64_t)c->o.timeout_ms * 1000000ull;
        if (c->ssl)
                return sluice_tls_send(c, p, len, end);
        while (len) {
                ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n >= 0) {
                        if (!c->tcp && (size_t)n != len)
                                return -EMSGSIZE;
                        p += n, len -= (size_t)n;
                        continue;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                        return -errno;
                uint64_t now = sl_now_ns();
                if (now >= end)
                        return -ETIMEDOUT;
                struct pollfd pf = {.fd = c->fd, .events = POLLOUT};
                poll(&pf, 1, (int)((end - now) / 1000000ull) + 1);
        }
        return 0;
}

/* The trailer of the next frame (under send_mu): the key, the time, a fresh nonce. Every
 * send, retransmissions included, gets its own, so that the server's replay window never
 * mistakes a retry for a replay. */
static struct dp_auth next_auth(struct sluice_conn *c)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (struct dp_auth){.key_id = c->key.id, .nonce = c->nonce++,
                                .timestamp_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u};
}

/* UDP: the cookie goes on every frame but HELLO and PING (which ask for one, or need none).
 * Under send_mu. */
static const uint8_t *frame_cookie(struct sluice_conn *c, uint8_t opcode, uint16_t *flags)
{
        if (c->tcp || !c->have_cookie || opcode == DP_OP_HELLO || opcode == DP_OP_PING)
                return NULL;
        *flags |= DP_F_COOKIE;
        return c->cookie;
}

int sluice_send_simple(struct sluice_conn *c, uint8_t opcode, uint64_t id, uint32_t seq,
                       const void *payload, size_t len)
{
        uint8_t buf[DP_MAX_FRAME_UDP];
        struct dp_header h = {.opcode = opcode, .flags = DP_F_CRC | (c->signing ? DP_F_AUTH : 0), .request_id = id,
                              .seq = seq, .frag_count = 1};
        pthread_mutex_lock(&c->send_mu);
        const uint8_t *ck = frame_cookie(c, opcode, &h.flags);
        struct dp_auth a = c->signing ? next_auth(c) : (struct dp_auth){0};
        long n = dp_frame_encode(buf, sizeof(buf), c->max_frame_tx, &h, payload, len, ck, &a);
        int r = n < 0 ? (int)n : c->signing ? dp_frame_sign(buf, (size_t)n, &c->key) : 0;
        if (r == 0)
                r = send_all(c, buf, (size_t)n);
        pthread_mutex_unlock(&c->send_mu);
        return r;
}

int sluice_req_send(struct sluice_conn *c, struct sluice_req *r)
{
        struct dp_header h = {.opcode = r->opcode, .flags = DP_F_CRC | (c->signing ? DP_F_AUTH : 0),
                              .request_id = r->id};
        uint8_t *buf = malloc(c->max_frame_tx);
        if (!buf)
                return -ENOMEM;
        int rc = 0;
        pthread_mutex_lock(&c->send_mu);
        const uint8_t *ck = frame_cookie(c, r->opcode, &h.flags);
        int n = dp_fragment_count(r->msg_len, c->max_frame_tx, h.flags);
        if (n < 0) {
                pthread_mutex_unlock(&c->send_mu);
                free(buf);
                return sluice_seterr(c, -EMSGSIZE, "request of %zu bytes is over the protocol's limit",
                                     r->msg_len);
        }
        for (int i = 0; i < n && rc == 0; i++) {
                struct dp_auth a = c->signing ? next_auth(c) : (struct dp_auth){0};
                long len = dp_fragment_encode(buf, c->max_frame_tx, c->max_frame_tx, &h, r->msg,
                                              r->msg_len, (unsigned)i, ck, &a);
                rc = len < 0 ? (int)len : c->signing ? dp_frame_sign(buf, (size_t)len, &c->key) : 0;
                if (rc == 0)
                        rc = send_all(c, buf, (size_t)len);
        }
        pthread_mutex_unlock(&c->send_mu);
        free(buf);
        return rc;
}

/* ---- requests ---- */

int sluice_req_new(struct sluice_conn *c, uint8_t opcode, uint8_t *msg, size_t msg_len,
                   struct sluice_req **out)
{
        struct sluice_req *r = calloc(1, sizeof(*r));
        if (!r) {
                free(msg);
                return -ENOMEM;
        }
        r->opcode = opcode;
        r->msg = msg;
        r->msg_len = msg_len;
        r->terminal_seq = -1;
        r->rto_ms = c->o.retransmit_ms;
        r->timeout_ms = c->o.timeout_ms;
        pthread_mutex_lock(&c->mu);
        if (c->dead) {
                int d = c->dead;
                sluice_seterr(c, d, "%s", c->dead_msg);
                pthread_mutex_unlock(&c->mu);
                free(msg);
                free(r);
                return d;
        }
        for (;;) {
                uint64_t id = 0;
                if (getrandom(&id, sizeof(id), 0) != sizeof(id))
                        id = sl_now_ns() * 0x9E3779B97F4A7C15ull;
                if (!id)
                        continue;
                bool used = false;
                for (struct sluice_req *q = c->reqs; q; q = q->next)
                        used |= q->id == id;
                if (!used) {
                        r->id = id;
                        break;
                }
        }
        r->t_sent = r->t_last_rx = r->t_last_tx = r->t_last_ack = sl_now_ns();
        r->next = c->reqs;
        c->reqs = r;
        pthread_mutex_unlock(&c->mu);
        *out = r;
        return 0;
}

void sluice_item_free(struct sluice_item *it)
{
        free(it);
}

void sluice_req_remove(struct sluice_conn *c, struct sluice_req *r)
{
        if (!r)
                return;
        pthread_mutex_lock(&c->mu);
        for (struct sluice_req **pp = &c->reqs; *pp; pp = &(*pp)->next) {
                if (*pp == r) {
                        *pp = r->next;
                        break;
                }
        }
        pthread_mutex_unlock(&c->mu);
        for (unsigned i = 0; i < SLUICE_WINDOW; i++)
                sluice_item_free(r->win[i]);
        free(r->msg);
        free(r);
}

static struct sluice_req *req_find(struct sluice_conn *c, uint64_t id)
{
        for (struct sluice_req *r = c->reqs; r; r = r->next)
                if (r->id == id)
                        return r;
        return NULL;
}

static void req_fail(struct sluice_conn *c, struct sluice_req *r, int code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static void req_fail(struct sluice_conn *c, struct sluice_req *r, int code, const char *fmt, ...)
{
        if (r->state != REQ_OPEN)
                return;
        r->state = REQ_FAILED;
        r->fail = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->fres.message, sizeof(r->fres.message), fmt, ap);
        va_end(ap);
        pthread_cond_broadcast(&c->cv);
}

static bool is_stream(const struct sluice_req *r)
{
        return r->opcode == DP_OP_GENERATE || r->opcode == DP_OP_TOKENIZE;
}

/* A stream is complete once its terminal frame and every frame before it are in. */
static bool stream_complete(const struct sluice_req *r)
{
        return r->terminal_seq >= 0 && (int64_t)r->next_missing > r->terminal_seq;
}

/* ---- receiving ---- */

/* UDP: once a stream is complete, one ACK of all of it lets the server forget the request
 * now rather than a lease later (its request table is what bounds new requests). */
static void ack_complete(struct sluice_conn *c, struct sluice_req *r)
{
        if (c->tcp || !stream_complete(r) || r->acked == r->next_missing)
                return;
        uint8_t p[8];
        struct dp_ack a = {.next_seq = r->next_missing};
        long n = dp_ack_encode(p, sizeof(p), &a);
        if (n > 0 && sluice_send_simple(c, DP_OP_ACK, r->id, 0, p, (size_t)n) == 0) {
                r->acked = r->next_missing;
                r->t_last_ack = sl_now_ns();
        }
}

/* Files one stream frame (TOKENS, DONE, terminal ERROR) by its seq. Under c->mu. */
static void stream_put(struct sluice_conn *c, struct sluice_req *r, const struct dp_frame *f)
{
        uint32_t seq = f->h.seq;
        struct sl_error e = {{0}};
        if (r->state != REQ_OPEN)
                return;
        r->t_last_rx = sl_now_ns();
        if (seq < r->base || seq - r->base >= SLUICE_WINDOW)
                return; /* a duplicate, or too far ahead: it will be asked for again */
        if (r->win[seq % SLUICE_WINDOW] || seq < r->next_missing)
                return; /* duplicate */
        if (r->terminal_seq >= 0 && seq > r->terminal_seq)
                return req_fail(c, r, -EPROTO, "server sent frame %u after the end of stream %u", seq,
                                (unsigned)r->terminal_seq);

        struct sluice_item *it = NULL;
        if (f->h.opcode == DP_OP_TOKENS) {
                struct dp_tokens t;
                if (dp_tokens_decode(f->payload, f->h.payload_len, &t, &e) < 0)
                        return req_fail(c, r, -EPROTO, "server sent a bad TOKENS frame: %s", e.msg);
                it = malloc(sizeof(*it) + (size_t)t.n_tokens * 4 + t.text.len + 1);
                if (!it)
                        return req_fail(c, r, -ENOMEM, "out of memory");
                memset(it, 0, sizeof(*it));
                it->op = DP_OP_TOKENS;
                it->kind = t.kind;
                it->n_ids = t.n_tokens;
                it->text_len = t.text.len;
                it->ids = (int32_t *)(it + 1);
                it->text = (char *)(it->ids + t.n_tokens);
                for (uint32_t i = 0; i < t.n_tokens; i++)
                        it->ids[i] = dp_id_get(t.ids, i);
                if (t.text.len)
                        memcpy(it->text, t.text.ptr, t.text.len);
                it->text[t.text.len] = 0;
                if (t.kind == DP_TOKENS_GENERATED && t.n_tokens && !r->t_first_tok)
                        r->t_first_tok = sl_now_ns();
        } else if (f->h.opcode == DP_OP_DONE) {
                struct dp_done d;
                if (dp_done_decode(f->payload, f->h.payload_len, &d, &e) < 0)
                        return req_fail(c, r, -EPROTO, "server sent a bad DONE frame: %s", e.msg);
                it = calloc(1, sizeof(*it));
                if (!it)
                        return req_fail(c, r, -ENOMEM, "out of memory");
                it->op = DP_OP_DONE;
                it->done = d;
        } else { /* terminal ERROR, already decoded by the caller */
                struct dp_error er;
                if (dp_error_decode(f->payload, f->h.payload_len, &er, &e) < 0)
                        return req_fail(c, r, -EPROTO, "server sent a bad ERROR frame: %s", e.msg);
                it = calloc(1, sizeof(*it));
                if (!it)
                        return req_fail(c, r, -ENOMEM, "out of memory");
                it->op = DP_OP_ERROR;
                it->error = er;
                memcpy(it->emsg, er.msg.ptr, er.msg.len);
                it->error.msg.ptr = it->emsg;
        }
        if (it->op != DP_OP_TOKENS) {
                if (seq + 1 < r->highest) {
                        sluice_item_free(it);
                        return req_fail(c, r, -EPROTO, "server ended stream at %u after sending frame %u",
                                        seq, r->highest - 1);
                }
                r->terminal_seq = seq;
        }
        r->win[seq % SLUICE_WINDOW] = it;
        r->got_any = true;
        if (seq + 1 > r->highest)
                r->highest = seq + 1;
        while (r->next_missing - r->base < SLUICE_WINDOW && r->win[r->next_missing % SLUICE_WINDOW] &&
               r->next_missing < r->highest)
                r->next_missing++;
        if (r->next_missing < r->highest && !r->t_gap)
                r->t_gap = r->t_last_rx;
        else if (r->next_missing >= r->highest)
                r->t_gap = 0;
        r->rto_ms = c->o.retransmit_ms; /* progress: back to the first interval */
        pthread_cond_broadcast(&c->cv);
}

static void conn_die(struct sluice_conn *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void conn_die(struct sluice_conn *c, int code, const char *fmt, ...)
{
        pthread_mutex_lock(&c->mu);
        if (!c->dead) {
                c->dead = code;
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(c->dead_msg, sizeof(c->dead_msg), fmt, ap);
                va_end(ap);
                for (struct sluice_req *r = c->reqs; r; r = r->next)
                        req_fail(c, r, code, "%s", c->dead_msg);
        }
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
}

/* Handles one frame from the server. A frame that fails the codec is dropped on UDP (it
 * may be corrupted or spoofed) and ends the connection on TCP (the stream is broken). */
static void handle_frame(struct sluice_conn *c, const uint8_t *buf, size_t len)
{
        struct dp_frame f;
        struct sl_error e = {{0}};
        size_t maxf = c->tcp ? DP_MAX_FRAME_TCP : DP_MAX_FRAME_UDP;
        if (dp_frame_decode(buf, len, maxf, c->tcp ? 0 : DP_DECODE_REQUIRE_CRC, &f, &e) < 0 ||
            dp_opcode_from_client(f.h.opcode) || f.h.frag_count != 1) {
                if (c->tcp)
                        return conn_die(c, -EPROTO, "server sent a bad frame: %s",
                                        e.msg[0] ? e.msg : "unexpected opcode");
                pthread_mutex_lock(&c->mu);
                c->n_garbage++;
                pthread_mutex_unlock(&c->mu);
                return;
        }
        pthread_mutex_lock(&c->mu);
        struct sluice_req *r = req_find(c, f.h.request_id);
        switch (f.h.opcode) {
        case DP_OP_INFO:
                if (r && r->opcode == DP_OP_HELLO && r->state == REQ_OPEN) {
                        if (dp_info_decode(f.payload, f.h.payload_len, &r->info, &e) < 0) {
                                req_fail(c, r, -EPROTO, "server sent a bad INFO: %s", e.msg);
                                break;
                        }
                        memcpy(r->info_model, r->info.model.ptr, r->info.model.len);
                        r->info_model[r->info.model.len] = 0;
                        memcpy(r->info_server, r->info.server.ptr, r->info.server.len);
                        r->info_server[r->info.server.len] = 0;
                        r->state = REQ_DONE;
                        pthread_cond_broadcast(&c->cv);
                }
                break;
        case DP_OP_PONG:
                if (r && r->opcode == DP_OP_PING && r->state == REQ_OPEN) {
                        if (dp_pong_decode(f.payload, f.h.payload_len, &r->pong, &e) < 0) {
                                req_fail(c, r, -EPROTO, "server sent a bad PONG: %s", e.msg);
                                break;
                        }
                        r->state = REQ_DONE;
                        pthread_cond_broadcast(&c->cv);
                }
                break;
        case DP_OP_TOKENS:
        case DP_OP_DONE:
                if (r && is_stream(r)) {
                        stream_put(c, r, &f);
                        ack_complete(c, r);
                }
                break;
        case DP_OP_ERROR: {
                struct dp_error er;
                if (dp_error_decode(f.payload, f.h.payload_len, &er, &e) < 0) {
                        if (c->tcp) {
                                pthread_mutex_unlock(&c->mu);
                                return conn_die(c, -EPROTO, "server sent a bad ERROR: %s", e.msg);
                        }
                        if (r && r->state == REQ_OPEN)
                                req_fail(c, r, -EPROTO, "server sent a bad ERROR: %s", e.msg);
                        break;
                }
                if (!r) {
                        if (f.h.request_id == 0) {
                                snprintf(c->srv_msg, sizeof(c->srv_msg), "%s: %.*s", dp_err_name(er.code),
                                         (int)er.msg.len, er.msg.ptr);
                        }
                        break;
                }
                if (is_stream(r) && (er.flags & DP_ERRF_TERMINAL)) {
                        stream_put(c, r, &f);
                        ack_complete(c, r);
                        break;
                }
                if (r->state != REQ_OPEN)
                        break;
                /* Out of band. A NOT_FOUND before anything arrived answers a RESEND that
                 * overtook the request itself: the retransmitted request fixes it. */
                if (is_stream(r) && er.code == DP_ERR_NOT_FOUND && (!r->got_any || stream_complete(r)))
                        break;
                if (!is_stream(r) && r->opcode == DP_OP_PING && er.code == DP_ERR_NOT_FOUND)
                        break;
                if (!c->tcp && er.code == DP_ERR_UNAUTHENTICATED && er.detail == DP_UNAUTH_DETAIL_COOKIE) {
                        /* the cookie expired (or was lost): ask for one now; the request goes
                         * out again with it (retransmit, or RESEND) */
                        pthread_mutex_lock(&c->send_mu);
                        c->cookie_refresh_ns = 0;
                        c->cookie_asked_ns = 0;
                        pthread_mutex_unlock(&c->send_mu);
                        break;
                }
                req_fail(c, r, sluice_map_server_error(er.code), "%s: %.*s", dp_err_name(er.code),
                         (int)er.msg.len, er.msg.ptr);
                sluice_result_server(&r->fres, &er);
                break;
        }
        case DP_OP_COOKIE: {
                struct dp_cookie ck;
                if (c->tcp || dp_cookie_decode(f.payload, f.h.payload_len, &ck, &e) < 0)
                        break;
                uint64_t now = sl_now_ns();
                pthread_mutex_lock(&c->send_mu);
                memcpy(c->cookie, ck.cookie, DP_COOKIE_SIZE);
                c->have_cookie = true;
                c->cookie_refresh_ns = now + (uint64_t)ck.lifetime_ms * 500000ull; /* at half its life */
                pthread_mutex_unlock(&c->send_mu);
                /* it answers a frame that had none (or an expired one): send that again */
                if (r && is_stream(r) && r->state == REQ_OPEN)
                        r->resend_now = true;
                pthread_cond_broadcast(&c->cv);
                break;
        }
        default:
                break;
        }
        pthread_mutex_unlock(&c->mu);
}

/* ---- UDP timers: retransmit, RESEND, ACK, timeouts. Under c->mu. ---- */

struct pending_tx {
        struct sluice_req *r;
        bool resend_req, cancel;
        int n_ranges;
        struct dp_range ranges[DP_MAX_RESEND_RANGES];
        bool ack;
        uint32_t ack_seq;
};

static void req_timers(struct sluice_conn *c, struct sluice_req *r, uint64_t now, struct pending_tx *tx)
{
        memset(tx, 0, sizeof(*tx));
        tx->r = r;
        if (r->state != REQ_OPEN)
                return;
        uint64_t quiet_ms = (now - r->t_last_rx) / 1000000ull;
        if (is_stream(r) && stream_complete(r))
                return;
        if (quiet_ms >= r->timeout_ms) {
                req_fail(c, r, -ETIMEDOUT, "no answer from %s for %u ms", c->peer, r->timeout_ms);
                return;
        }
        if (c->tcp)
                return;
        if (r->resend_now && is_stream(r)) {
                r->resend_now = false;
                if (!r->got_any) {
                        tx->resend_req = true;
                        r->t_last_tx = now;
                }
        }
        uint64_t since_tx_ms = (now - r->t_last_tx) / 1000000ull;
        if (!is_stream(r)) { /* HELLO, PING: resend until answered */
                if (since_tx_ms >= r->rto_ms) {
                        tx->resend_req = true;
                        r->t_last_tx = now;
                        r->rto_ms = SL_MIN(r->rto_ms * 2, SLUICE_RTO_MAX_MS);
                }
                return;
        }
        if (r->cancelled && since_tx_ms >= r->rto_ms)
                tx->cancel = true;
        bool gap = r->next_missing < r->highest;
        bool gap_old = gap && r->t_gap && (now - r->t_gap) / 1000000ull >= SL_MIN(r->rto_ms / 4 + 1, 50u);
        if ((gap_old && since_tx_ms >= r->rto_ms / 2) || (quiet_ms >= r->rto_ms && since_tx_ms >= r->rto_ms)) {
                if (!r->got_any)
                        tx->resend_req = true;
                /* Ranges: the holes below the highest seq received, then the tail. */
                uint32_t s = r->next_missing;
                while (s < r->highest && tx->n_ranges < (int)DP_MAX_RESEND_RANGES - 1) {
                        if (r->win[s % SLUICE_WINDOW]) {
                                s++;
                                continue;
                        }
                        uint32_t first = s;
                        while (s < r->highest && !r->win[s % SLUICE_WINDOW])
                                s++;
                        tx->ranges[tx->n_ranges++] = (struct dp_range){first, s - first};
                }
                if (r->terminal_seq < 0)
                        tx->ranges[tx->n_ranges++] = (struct dp_range){SL_MAX(s, r->highest), 0};
                r->t_last_tx = now;
                if (quiet_ms >= r->rto_ms)
                        r->rto_ms = SL_MIN(r->rto_ms * 2, SLUICE_RTO_MAX_MS);
        }
        /* ACK: renews the lease and frees the server's copies. The server keeps at most a
         * window of unacknowledged frames per request (docs/protocol.md), so acknowledge well
         * inside it: every SLUICE_ACK_FRAMES frames received in order. */
        uint32_t ack_every = SL_MAX(c->lease_ms / 3, 1u);
        if ((now - r->t_last_ack) / 1000000ull >= ack_every ||
            (r->next_missing - r->acked >= SLUICE_ACK_FRAMES)) {
                tx->ack = true;
                tx->ack_seq = r->next_missing;
                r->acked = r->next_missing;
                r->t_last_ack = now;
        }
}

static void do_tx(struct sluice_conn *c, struct pending_tx *tx)
{
        struct sluice_req *r = tx->r;
        uint8_t p[4 + 8 * DP_MAX_RESEND_RANGES];
        if (tx->resend_req)
                sluice_req_send(c, r);
        if (tx->cancel)
                sluice_send_simple(c, DP_OP_CANCEL, r->id, 0, NULL, 0);
        if (tx->n_ranges) {
                struct dp_resend rs = {.n_ranges = (uint16_t)tx->n_ranges};
                memcpy(rs.r, tx->ranges, sizeof(tx->ranges[0]) * (size_t)tx->n_ranges);
                long n = dp_resend_encode(p, sizeof(p), &rs);
                if (n > 0)
                        sluice_send_simple(c, DP_OP_RESEND, r->id, 0, p, (size_t)n);
        }
        if (tx->ack) {
                struct dp_ack a = {.next_seq = tx->ack_seq};
                long n = dp_ack_encode(p, sizeof(p), &a);
                if (n > 0)
                        sluice_send_simple(c, DP_OP_ACK, r->id, 0, p, (size_t)n);
        }
}

/* A padded HELLO with request id 0: the server answers with a COOKIE (and an INFO that
 * nobody waits for). Under send_mu's owner's rules: called without send_mu. */
static void cookie_ask(struct sluice_conn *c)
{
        uint8_t msg[DP_UDP_HELLO_MIN - DP_HEADER_SIZE] = {0};
        struct dp_hello h = {.max_version = DP_VERSION, .pad_len = (uint32_t)(sizeof(msg) - 4)};
        long n = dp_hello_encode(msg, sizeof(msg), &h);
        if (n > 0)
                sluice_send_simple(c, DP_OP_HELLO, 0, 0, msg, (size_t)n);
}

static void run_timers(struct sluice_conn *c)
{
        struct pending_tx tx;
        /* Sending under mu keeps each request alive meanwhile (owners free them under mu);
         * UDP sends do not block for long, and TCP has no timers that send. */
        pthread_mutex_lock(&c->mu);
        uint64_t now = sl_now_ns();
        if (!c->tcp) {
                pthread_mutex_lock(&c->send_mu);
                bool ask = c->cookie_required && now >= c->cookie_refresh_ns &&
                           now - c->cookie_asked_ns >= (uint64_t)c->o.retransmit_ms * 1000000ull;
                if (ask)
                        c->cookie_asked_ns = now;
                pthread_mutex_unlock(&c->send_mu);
                if (ask)
                        cookie_ask(c);
        }
        for (struct sluice_req *r = c->reqs; r; r = r->next) {
                req_timers(c, r, now, &tx);
                if (tx.resend_req || tx.cancel || tx.n_ranges || tx.ack)
                        do_tx(c, &tx);
        }
        pthread_mutex_unlock(&c->mu);
}

/* ---- the receive thread ---- */

static void udp_read(struct sluice_conn *c)
{
        uint8_t buf[2048];
        for (int burst = 0; burst < 256; burst++) {
                ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return;
                        /* ICMP said no: fail what is in flight; the socket stays usable. */
                        int err = errno;
                        pthread_mutex_lock(&c->mu);
                        for (struct sluice_req *r = c->reqs; r; r = r->next)
                                req_fail(c, r, -err, "%s: %s", c->peer, strerror(err));
                        pthread_mutex_unlock(&c->mu);
                        return;
                }
                if ((size_t)n > sizeof(buf)) { /* larger than any valid datagram */
                        pthread_mutex_lock(&c->mu);
                        c->n_garbage++;
                        pthread_mutex_unlock(&c->mu);
                        continue;
                }
                handle_frame(c, buf, (size_t)n);
        }
}

static void tcp_read(struct sluice_conn *c)
{
        const size_t cap = 2 * DP_MAX_FRAME_TCP;
        for (;;) {
                ssize_t n = c->ssl ? sluice_tls_recv(c, c->rbuf + c->rlen, cap - c->rlen)
                                   : recv(c->fd, c->rbuf + c->rlen, cap - c->rlen, MSG_DONTWAIT);
                if (n == 0) {
                        pthread_mutex_lock(&c->mu);
                        char why[DP_MAX_ERROR_MSG + 1];
                        snprintf(why, sizeof(why), "%s", c->srv_msg);
                        pthread_mutex_unlock(&c->mu);
                        return conn_die(c, -ECONNRESET, "%s closed the connection%s%s", c->peer,
                                        why[0] ? ": " : "", why);
                }
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                return;
                        return conn_die(c, -errno, "%s: %s", c->peer,
                                        errno == EPROTO && c->tls_why[0] ? c->tls_why : strerror(errno));
                }
                c->rlen += (size_t)n;
                size_t off = 0;
                for (;;) {
                        struct sl_error e = {{0}};
                        long fl = dp_frame_length(c->rbuf + off, c->rlen - off, DP_MAX_FRAME_TCP, &e);
                        if (fl < 0) {
                                c->rlen = 0;
                                return conn_die(c, -EPROTO, "server sent a bad frame: %s", e.msg);
                        }
                        if (fl == 0 || (size_t)fl > c->rlen - off)
                                break;
                        handle_frame(c, c->rbuf + off, (size_t)fl);
                        off += (size_t)fl;
                        pthread_mutex_lock(&c->mu);
                        int dead = c->dead;
                        pthread_mutex_unlock(&c->mu);
                        if (dead)
                                return;
                }
                memmove(c->rbuf, c->rbuf + off, c->rlen - off);
                c->rlen -= off;
        }
}

static void *rx_main(void *arg)
{
        struct sluice_conn *c = arg;
        while (!atomic_load(&c->stop)) {
                struct pollfd pf[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = c->evfd, .events = POLLIN}};
                int n = poll(pf, 2, TICK_MS);
                if (n < 0 && errno != EINTR)
                        break;
                pthread_mutex_lock(&c->mu);
                int dead = c->dead;
                pthread_mutex_unlock(&c->mu);
                if (!dead && (pf[0].revents & (POLLIN | POLLERR | POLLHUP)))
                        c->tcp ? tcp_read(c) : udp_read(c);
                run_timers(c);
                if (dead)
                        usleep(TICK_MS * 1000);
        }
        return NULL;
}

/* ---- opening and closing ---- */

static int tcp_connect_wait(int fd, uint32_t timeout_ms)
{
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        int n;
        do
                n = poll(&pf, 1, (int)timeout_ms);
        while (n < 0 && errno == EINTR);
        if (n == 0)
                return -ETIMEDOUT;
        if (n < 0)
                return -errno;
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                return -errno;
        return -soerr;
}

int sluice_conn_open(const struct sluice_opts *o, const struct addrinfo *ai, const char *peer,
                     struct sluice_conn **out, char *why, size_t why_len)
{
        int rc;
        struct sluice_conn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->fd = c->evfd = -1;
        c->o = *o;
        c->tcp = o->transport == SLUICE_TCP;
        c->max_frame_tx = c->tcp ? DP_MAX_FRAME_TCP : DP_MAX_FRAME_UDP;
        c->lease_ms = 10000;
        snprintf(c->peer, sizeof(c->peer), "%s", peer);
        pthread_mutex_init(&c->send_mu, NULL);
        pthread_mutex_init(&c->mu, NULL);
        pthread_mutex_init(&c->tls_mu, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&c->cv, &ca);
        pthread_condattr_destroy(&ca);
        if (c->tcp && !(c->rbuf = malloc(2 * DP_MAX_FRAME_TCP))) {
                rc = -ENOMEM;
                goto fail;
        }

        c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (c->fd < 0) {
                rc = -errno;
                snprintf(why, why_len, "socket: %s", strerror(errno));
                goto fail;
        }
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0) {
                if (errno != EINPROGRESS) {
                        rc = -errno;
                        snprintf(why, why_len, "cannot connect to %s: %s", peer, strerror(errno));
                        goto fail;
                }
                rc = tcp_connect_wait(c->fd, o->connect_timeout_ms);
                if (rc < 0) {
                        snprintf(why, why_len, "cannot connect to %s: %s", peer,
                                 rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
                        goto fail;
                }
        }
        if (c->tcp && o->tls && (rc = sluice_tls_open(c, why, why_len)) < 0)
                goto fail;
        c->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (c->evfd < 0) {
                rc = -errno;
                snprintf(why, why_len, "eventfd: %s", strerror(errno));
                goto fail;
        }
        rc = -pthread_create(&c->rx, NULL, rx_main, c);
        if (rc < 0) {
                snprintf(why, why_len, "cannot start the receive thread: %s", strerror(-rc));
                goto fail;
        }
        c->rx_started = true;
        *out = c;
        return 0;
fail:
        sluice_conn_free(c);
        return rc;
}

int sluice_cookie_wait(struct sluice_conn *c, uint32_t timeout_ms)
{
        uint64_t end = sl_now_ns() + (uint64_t)timeout_ms * 1000000ull;
        int rc = 0;
        pthread_mutex_lock(&c->mu);
        pthread_mutex_lock(&c->send_mu);
        c->cookie_required = true; /* the receive thread asks (again) while none is held */
        bool have = c->have_cookie;
        pthread_mutex_unlock(&c->send_mu);
        while (!have) {
                uint64_t now = sl_now_ns();
                if (now >= end) {
                        rc = sluice_seterr(c, -ETIMEDOUT, "%s: no cookie in %u ms (the server requires one)",
                                           c->peer, timeout_ms);
                        break;
                }
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                uint64_t t = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + SL_MIN(end - now, 20000000ull);
                ts.tv_sec = (time_t)(t / 1000000000ull);
                ts.tv_nsec = (long)(t % 1000000000ull);
                pthread_cond_timedwait(&c->cv, &c->mu, &ts);
                pthread_mutex_lock(&c->send_mu);
                have = c->have_cookie;
                pthread_mutex_unlock(&c->send_mu);
        }
        pthread_mutex_unlock(&c->mu);
        return rc;
}

void sluice_conn_free(struct sluice_conn *c)
{
        if (!c)
                return;
        if (c->rx_started) {
                atomic_store(&c->stop, true);
                uint64_t one = 1;
                if (write(c->evfd, &one, sizeof(one)) < 0) {
                        /* the poll tick ends the thread anyway */
                }
                pthread_join(c->rx, NULL);
        }
        while (c->reqs)
                sluice_req_remove(c, c->reqs);
        sluice_tls_free(c);
        if (c->fd >= 0)
                close(c->fd);
        if (c->evfd >= 0)
                close(c->evfd);
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        pthread_mutex_destroy(&c->send_mu);
        pthread_mutex_destroy(&c->tls_mu);
        free(c->rbuf);
        explicit_bzero(&c->key, sizeof(c->key));
        free(c);
}
