/* tcp.c — the kernel TCP transport: listeners and connections in one io_uring run by one
 * thread. Frames are length-delimited (dp_frame_length); many requests share a
 * connection; each connection's output is bounded, and a request whose stream would pass
 * the bound fails alone (terminal ERROR to the client, CANCEL to the engine) so that a
 * slow reader never stalls the engine. Framing errors close only that connection. With a
 * TLS context every connection speaks TLS 1.3 (tls.c): ciphertext is received into its own
 * buffer and fed to the session, plaintext is read into rx; frames queued in out are
 * encrypted a chunk at a time, so the bound on out still holds. */
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataplane.h"
#include "transport.h"

#define RXCAP (2 * DP_MAX_FRAME_TCP)
#define TICK_NS 5000000ull
#define CLOSE_GRACE_NS 200000000ull /* time to flush the best-effort ERROR before a close */
#define TLS_HANDSHAKE_NS 10000000000ull /* a connection that has not finished it by then is closed */
#define TLS_INCAP 16384u                /* ciphertext per receive */
#define TLS_CHUNK 65536u                /* plaintext encrypted per send */
#define TLS_OUTCAP (TLS_CHUNK + 1024u)  /* its ciphertext: 4 records' overhead, close_notify */

enum { TU_ACCEPT = 1, TU_RECV = 2, TU_SEND = 3, TU_WAKE = 4 };
enum { C_FREE, C_OPEN, C_CLOSING };
enum { TR_FREE, TR_LIVE, TR_FAILED };
enum { PEND_CANCEL = 1, PEND_GONE = 2 };

struct tcp_req {
        uint8_t state, pend;
        uint64_t rid;
        uint32_t next_seq;
};

struct conn {
        int fd;
        uint8_t state;
        bool recv_busy, send_busy, shut;
        uint32_t gen;
        uint64_t close_deadline;
        uint8_t *rx;
        size_t rx_fill;
        uint8_t *out;
        size_t out_sent, out_fill;
        struct tcp_req *req;
        bool reasm_used;
        struct dp_reasm reasm;
        struct sockaddr_storage peer;   /* stamped on request records (the audit log) */
        socklen_t peer_len;
        /* TLS */
        struct dpt_tls *tls;            /* NULL: plaintext */
        uint8_t *cin, *cout;            /* ciphertext received; ciphertext being sent */
        size_t cout_sent, cout_fill;
        uint64_t hs_deadline;
        bool tls_closed;                /* close_notify queued */
        bool tls_out_off;               /* no more ciphertext goes out (a plaintext ERROR for a
                                         * client without TLS is in cout, or the socket failed) */
};

struct dp_tcp {
        struct dp_transport_config cfg;
        unsigned n_lis;
        int lfd[DP_MAX_LISTEN];
        struct sockaddr_storage bound[DP_MAX_LISTEN];
        unsigned bound_len[DP_MAX_LISTEN];
        struct io_uring ring;
        bool ring_ok;
        struct dp_notify wake;
        uint64_t wake_val;
        struct dpt_thread th;

        unsigned n_conn, n_req;
        size_t out_cap, out_reserve;
        struct conn *conn;
        uint8_t *mem;            /* all connection buffers */
        struct tcp_req *reqs;
        bool pushed;
        struct dpt_auth auth;
        const struct dp_key *key;       /* the frame being handled: its key when authenticated */
        struct dp_tls_ctx *tls;         /* this thread's; NULL: plaintext */
        _Atomic(struct dp_tls_ctx *) tls_next; /* a reloaded one, taken at the next pass */
        bool tls_on;
        struct dp_transport_stats st;
};

static inline uint64_t ud(unsigned type, unsigned idx) { return (uint64_t)type << 56 | idx; }

static struct io_uring_sqe *sqe_get(struct dp_tcp *t)
{
        struct io_uring_sqe *sqe = io_uring_get_sqe(&t->ring);
        if (!sqe) {
                io_uring_submit(&t->ring);
                sqe = io_uring_get_sqe(&t->ring);
        }
        return sqe;
}

static void accept_arm(struct dp_tcp *t, unsigned i)
{
        struct io_uring_sqe *sqe = sqe_get(t);
        io_uring_prep_accept(sqe, t->lfd[i], NULL, NULL, SOCK_CLOEXEC);
        io_uring_sqe_set_data64(sqe, ud(TU_ACCEPT, i));
}

static void recv_arm(struct dp_tcp *t, struct conn *c)
{
        struct io_uring_sqe *sqe = sqe_get(t);
        if (c->tls)
                io_uring_prep_recv(sqe, c->fd, c->cin, TLS_INCAP, 0);
        else
                io_uring_prep_recv(sqe, c->fd, c->rx + c->rx_fill, RXCAP - c->rx_fill, 0);
        io_uring_sqe_set_data64(sqe, ud(TU_RECV, (unsigned)(c - t->conn)));
        c->recv_busy = true;
}

static void wake_arm(struct dp_tcp *t)
{
        struct io_uring_sqe *sqe = sqe_get(t);
        io_uring_prep_read(sqe, t->wake.fd, &t->wake_val, sizeof(t->wake_val), 0);
        io_uring_sqe_set_data64(sqe, ud(TU_WAKE, 0));
}

/* TLS: the next ciphertext to send into cout, once the last went out. Plaintext is
 * encrypted only when the session holds no ciphertext, so what waits stays in out. */
static void tls_fill_out(struct conn *c)
{
        if (c->cout_fill > c->cout_sent || c->tls_out_off)
                return;
        c->cout_sent = c->cout_fill = 0;
        if (dpt_tls_established(c->tls) && dpt_tls_out_pending(c->tls) == 0) {
                if (c->out_fill > c->out_sent) {
                        size_t n = SL_MIN(c->out_fill - c->out_sent, (size_t)TLS_CHUNK);
                        if (dpt_tls_write(c->tls, c->out + c->out_sent, n) < 0)
                                n = c->out_fill - c->out_sent; /* a broken session: drop it all */
                        c->out_sent += n;
                        if (c->out_sent == c->out_fill)
                                c->out_sent = c->out_fill = 0;
                }
                if (c->state == C_CLOSING && c->out_fill == c->out_sent && !c->tls_closed) {
                        dpt_tls_close(c->tls);
                        c->tls_closed = true;
                }
        }
        c->cout_fill = dpt_tls_out_take(c->tls, c->cout, TLS_OUTCAP);
}

/* Nothing left to send (or nothing that can go out). */
static bool out_idle(struct conn *c)
{
        if (c->send_busy || c->out_fill != c->out_sent)
                return false;
        return !c->tls || (c->cout_fill == c->cout_sent && (c->tls_out_off || !dpt_tls_out_pending(c->tls)));
}

static void flush(struct dp_tcp *t, struct conn *c)
{
        if (c->send_busy || c->shut)
                return;
        const uint8_t *p = c->out + c->out_sent;
        size_t n = c->out_fill - c->out_sent;
        if (c->tls) {
                tls_fill_out(c);
                p = c->cout + c->cout_sent;
                n = c->cout_fill - c->cout_sent;
        }
        if (!n)
                return;
        struct io_uring_sqe *sqe = sqe_get(t);
        io_uring_prep_send(sqe, c->fd, p, n, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, ud(TU_SEND, (unsigned)(c - t->conn)));
        c->send_busy = true;
}

/* Appends a frame to c's output. Stream data may use the buffer up to out_cap minus a
 * reserve kept for terminal frames and control replies. Returns 0 or -ENOBUFS. */
static int out_frame(struct dp_tcp *t, struct conn *c, const struct dp_header *h, const void *payload,
                     size_t plen, bool data)
{
        size_t limit = data ? t->out_cap - t->out_reserve : t->out_cap;
        size_t need = DP_HEADER_SIZE + plen;
        if (c->out_fill + need > limit && (c->tls || !c->send_busy) && c->out_sent) {
                memmove(c->out, c->out + c->out_sent, c->out_fill - c->out_sent);
                c->out_fill -= c->out_sent;
                c->out_sent = 0;
        }
        if (c->out_fill + need > limit)
                return -ENOBUFS;
        long n = dp_frame_encode(c->out + c->out_fill, limit - c->out_fill, DP_MAX_FRAME_TCP, h, payload,
                                 plen, NULL, NULL);
        if (n < 0)
                return (int)n;
        c->out_fill += (size_t)n;
        DPT_STAT(&t->st, tx_frames, 1);
        DPT_STAT(&t->st, tx_bytes, (uint64_t)n);
        return 0;
}

static void close_conn(struct dp_tcp *t, struct conn *c);

static void out_error(struct dp_tcp *t, struct conn *c, uint64_t rid, uint32_t seq, int code, bool terminal,
                      uint32_t detail, const char *msg)
{
        uint8_t buf[DP_HEADER_SIZE + 16 + DP_MAX_ERROR_MSG];
        long n = dpt_error_frame(buf, sizeof(buf), 0, rid, seq, code, terminal, detail, msg);
        if (n <= 0)
                return;
        struct dp_header h;
        memcpy(&h, &(struct dp_header){ .opcode = DP_OP_ERROR, .request_id = rid, .seq = seq, .frag_count = 1 }, sizeof(h));
        DPT_STAT(&t->st, errors_sent, 1);
        if (out_frame(t, c, &h, buf + DP_HEADER_SIZE, (size_t)n - DP_HEADER_SIZE, false) < 0 &&
            c->state == C_OPEN)
                close_conn(t, c); /* not even room for an ERROR: the peer does not read */
}

static uint64_t handle(struct dp_tcp *t, struct conn *c, struct tcp_req *q)
{
        return (uint64_t)c->gen << 32 | (uint64_t)(c - t->conn) << 16 | (uint64_t)(q - c->req);
}

static void push_ctl(struct dp_tcp *t, struct conn *c, struct tcp_req *q, uint8_t kind)
{
        uint8_t bit = kind == DP_REQ_CANCEL ? PEND_CANCEL : PEND_GONE;
        struct dp_req_rec h = { .kind = kind, .transport = t->cfg.index, .client = handle(t, c, q),
                                .request_id = q->rid, .rx_ns = sl_now_ns() };
        if (dp_req_push_peer(t->cfg.req_ring, &h, NULL, 0, (const struct sockaddr *)&c->peer,
                             c->peer_len) < 0) {
                q->pend |= bit;
                return;
        }
        q->pend &= (uint8_t)~bit;
        t->pushed = true;
}

static void close_conn(struct dp_tcp *t, struct conn *c)
{
        if (c->state != C_OPEN)
                return;
        c->state = C_CLOSING;
        c->close_deadline = sl_now_ns() + CLOSE_GRACE_NS;
        for (unsigned i = 0; i < t->n_req; i++)
                if (c->req[i].state == TR_LIVE)
                        push_ctl(t, c, &c->req[i], DP_REQ_CLIENT_GONE);
        flush(t, c);
}

/* A closing connection is freed once its last ERROR went out (or the grace ran out), no
 * operation is in flight and the engine has been told about every request. */
static void reap(struct dp_tcp *t, struct conn *c, uint64_t now)
{
        if (c->state != C_CLOSING)
                return;
        if (!c->shut && (out_idle(c) || now >= c->close_deadline)) {
                shutdown(c->fd, SHUT_RDWR); /* completes the pending recv (and send) */
                c->shut = true;
        }
        if (!c->shut || c->recv_busy || c->send_busy)
                return;
        for (unsigned i = 0; i < t->n_req; i++) {
                struct tcp_req *q = &c->req[i];
                if (q->pend & PEND_GONE)
                        push_ctl(t, c, q, DP_REQ_CLIENT_GONE);
                if (q->pend & PEND_CANCEL)
                        push_ctl(t, c, q, DP_REQ_CANCEL);
                if (q->pend)
                        return;
        }
        for (unsigned i = 0; i < t->n_req; i++)
                c->req[i].state = TR_FREE;
        dpt_tls_free(c->tls);
        c->tls = NULL;
        close(c->fd);
        c->fd = -1;
        c->gen++;
        c->state = C_FREE;
        DPT_STAT(&t->st, conns_closed, 1);
}

static struct tcp_req *req_find(struct dp_tcp *t, struct conn *c, uint64_t rid)
{
        for (unsigned i = 0; i < t->n_req; i++)
                if (c->req[i].state != TR_FREE && c->req[i].rid == rid)
                        return &c->req[i];
        return NULL;
}

static void on_request(struct dp_tcp *t, struct conn *c, const struct dp_frame *f, uint64_t now)
{
        struct sl_error err;
        const uint8_t *msg = f->payload;
        size_t mlen = f->h.payload_len;
        uint64_t rid = f->h.request_id;
        union dp_msg m;
        int rc;

        if (req_find(t, c, rid)) {
                out_error(t, c, rid, 0, DP_ERR_BAD_PARAM, false, 0, "request id in use on this connection");
                return;
        }
        if (f->h.frag_count > 1) {
                if (c->reasm_used && c->reasm.request_id != rid) {
                        out_error(t, c, rid, 0, DP_ERR_BAD_FRAME, true, 0,
                                  "fragments of two requests interleaved");
                        return;
                }
                if (!c->reasm_used) {
                        dp_reasm_init(&c->reasm, c->reasm.buf, DP_MAX_MESSAGE);
                        c->reasm_used = true;
                }
                rc = dp_reasm_add(&c->reasm, f, &err);
                if (rc == 0)
                        return;
                c->reasm_used = false;
                if (rc < 0) {
                        DPT_STAT(&t->st, malformed, 1);
                        out_error(t, c, rid, 0, -rc, true, 0, err.msg);
                        return;
                }
                msg = c->reasm.buf;
                mlen = c->reasm.total;
        }
        rc = dp_msg_decode(f->h.opcode, msg, mlen, &m, &err);
        if (rc < 0) {
                DPT_STAT(&t->st, malformed, 1);
                out_error(t, c, rid, 0, -rc, true, 0, err.msg);
                return;
        }
        struct tcp_req *q = NULL;
        for (unsigned i = 0; i < t->n_req && !q; i++)
                if (c->req[i].state == TR_FREE)
                        q = &c->req[i];
        if (!q) {
                DPT_STAT(&t->st, drop_table_full, 1);
                out_error(t, c, rid, 0, DP_ERR_BUSY, true, 100, "too many requests on this connection");
                return;
        }
        q->rid = rid;
        q->next_seq = 0;
        q->pend = 0;
        struct dp_req_rec h = { .kind = f->h.opcode == DP_OP_GENERATE ? DP_REQ_GENERATE : DP_REQ_TOKENIZE,
                                .transport = t->cfg.index, .client = handle(t, c, q),
                                .request_id = rid, .rx_ns = now };
        dp_req_set_key(&h, t->key);
        if (dp_req_push_peer(t->cfg.req_ring, &h, msg, mlen, (const struct sockaddr *)&c->peer,
                             c->peer_len) < 0) {
                DPT_STAT(&t->st, drop_ring_full, 1);
                out_error(t, c, rid, 0, DP_ERR_BUSY, true, 100, "request ring full");
                return;
        }
        q->state = TR_LIVE;
        t->pushed = true;
        DPT_STAT(&t->st, requests, 1);
}

static void on_frame(struct dp_tcp *t, struct conn *c, const struct dp_frame *f, uint64_t now)
{
        struct sl_error err;
        union dp_msg m;
        uint8_t pl[512];
        long n;
        int rc;
        struct dp_header h = { .request_id = f->h.request_id, .seq = f->h.seq, .frag_count = 1 };

        switch (f->h.opcode) {
        case DP_OP_HELLO: {
                rc = dp_hello_decode(f->payload, f->h.payload_len, &m.hello, &err);
                if (rc < 0)
                        break;
                struct dp_info info;
                dpt_fill_info(&t->cfg, &info, DP_MAX_FRAME_TCP, 0);
                n = dp_info_encode(pl, sizeof(pl), &info);
                h.opcode = DP_OP_INFO;
                if (n >= 0 && out_frame(t, c, &h, pl, (size_t)n, false) < 0)
                        close_conn(t, c);
                return;
        }
        case DP_OP_PING: {
                rc = dp_ping_decode(f->payload, f->h.payload_len, &m.ping, &err);
                if (rc < 0)
                        break;
                struct dp_pong pong = { .token = m.ping.token };
                dpt_load(&t->cfg, &pong.load);
                n = dp_pong_encode(pl, sizeof(pl), &pong);
                h.opcode = DP_OP_PONG;
                if (n >= 0 && out_frame(t, c, &h, pl, (size_t)n, false) < 0)
                        close_conn(t, c);
                return;
        }
        case DP_OP_GENERATE:
        case DP_OP_TOKENIZE:
                on_request(t, c, f, now);
                return;
        case DP_OP_CANCEL: {
                rc = dp_cancel_decode(f->payload, f->h.payload_len, &err);
                if (rc < 0)
                        break;
                struct tcp_req *q = req_find(t, c, f->h.request_id);
                if (q && q->state == TR_LIVE)
                        push_ctl(t, c, q, DP_REQ_CANCEL);
                else if (!q)
                        out_error(t, c, f->h.request_id, 0, DP_ERR_NOT_FOUND, false, 0, "unknown request id");
                return;
        }
        case DP_OP_ACK:
                return; /* §6: ignored on TCP */
        case DP_OP_RESEND:
                out_error(t, c, f->h.request_id, 0, DP_ERR_BAD_PARAM, false, 0, "RESEND does not apply to TCP");
                return;
        default:
                rc = sl_errorf(&err, -DP_ERR_UNKNOWN_OPCODE, "opcode %s is not sent by clients",
                               dp_opcode_name(f->h.opcode));
                break;
        }
        DPT_STAT(&t->st, malformed, 1);
        out_error(t, c, f->h.request_id, 0, -rc, false, 0, err.msg);
}

/* Every whole frame in rx. */
static void on_rx(struct dp_tcp *t, struct conn *c, uint64_t now)
{
        struct sl_error err;
        size_t off = 0;

        while (c->state == C_OPEN) {
                long fl = dp_frame_length(c->rx + off, c->rx_fill - off, DP_MAX_FRAME_TCP, &err);
                if (fl == 0 || (fl > 0 && (size_t)fl > c->rx_fill - off))
                        break;
                struct dp_frame f;
                int rc = fl < 0 ? (int)fl : dp_frame_decode(c->rx + off, (size_t)fl, DP_MAX_FRAME_TCP, 0, &f, &err);
                DPT_STAT(&t->st, rx_frames, 1);
                if (rc == 0 && dpt_auth_check(&t->auth, c->rx + off, &f, &t->key, &err) < 0) {
                        /* not from a key holder: ERROR (terminal for a request), and the
                         * connection stays, for frames of keys still present */
                        DPT_STAT(&t->st, unauthenticated, 1);
                        out_error(t, c, f.h.request_id, 0, DP_ERR_UNAUTHENTICATED,
                                  f.h.opcode == DP_OP_GENERATE || f.h.opcode == DP_OP_TOKENIZE, 0, err.msg);
                        off += (size_t)fl;
                        continue;
                }
                if (rc < 0) {
                        DPT_STAT(&t->st, malformed, 1);
                        if (fl < 0 || rc == -DP_ERR_BAD_CRC || rc == -DP_ERR_BAD_VERSION || rc == -DP_ERR_TOO_LARGE) {
                                /* §6: framing error: best-effort ERROR, then close this one */
                                DPT_STAT(&t->st, framing_closes, 1);
                                out_error(t, c, 0, 0, -rc, false, rc == -DP_ERR_BAD_VERSION ? DP_VERSION : 0, err.msg);
                                close_conn(t, c);
                                return;
                        }
                        uint64_t rid;
                        memcpy(&rid, c->rx + off + 8, 8);
                        out_error(t, c, rid, 0, -rc, false, 0, err.msg);
                } else {
                        on_frame(t, c, &f, now);
                }
                off += (size_t)fl;
        }
        if (off) {
                memmove(c->rx, c->rx + off, c->rx_fill - off);
                c->rx_fill -= off;
        }
}

/* A handshake that failed or timed out: counted, told (at most a debug line), and the
 * connection closed. A client that sent a plaintext sluice frame gets a plaintext ERROR
 * saying why instead of a TLS alert it could not read. */
static void tls_fail(struct dp_tcp *t, struct conn *c, const char *why, bool plain_peer)
{
        DPT_STAT(&t->st, tls_failures, 1);
        if (t->cfg.tls_note)
                t->cfg.tls_note(t->cfg.tls_note_arg, c->peer_len ? (const struct sockaddr *)&c->peer : NULL, why);
        if (plain_peer && !c->send_busy && c->cout_fill == c->cout_sent) {
                long n = dpt_error_frame(c->cout, TLS_OUTCAP, 0, 0, 0, DP_ERR_BAD_FRAME, false, 0,
                                         "this port speaks TLS 1.3 (sluice --tls)");
                c->cout_sent = 0;
                c->cout_fill = n > 0 ? (size_t)n : 0;
                c->tls_out_off = true;
                DPT_STAT(&t->st, errors_sent, 1);
        }
        close_conn(t, c);
}

/* n bytes of ciphertext arrived in cin: the handshake, then plaintext into rx. */
static void on_tls_recv(struct dp_tcp *t, struct conn *c, size_t n, uint64_t now)
{
        struct sl_error err;
        if (dpt_tls_feed(c->tls, c->cin, n) < 0) {
                DPT_STAT(&t->st, io_errors, 1);
                close_conn(t, c);
                return;
        }
        if (!dpt_tls_established(c->tls)) {
                int r = dpt_tls_handshake(c->tls, &err);
                if (r < 0) {
                        uint32_t magic = DP_MAGIC;
                        tls_fail(t, c, err.msg, n >= 4 && !memcmp(c->cin, &magic, 4));
                        return;
                }
                if (r == 0)
                        return;
                DPT_STAT(&t->st, tls_handshakes, 1);
        }
        /* rx always has room here: on_rx leaves less than one frame in it */
        while (c->state == C_OPEN) {
                long got = dpt_tls_read(c->tls, c->rx + c->rx_fill, RXCAP - c->rx_fill, &err);
                if (got == 0)
                        break;
                if (got < 0) {
                        if (got != -EPIPE)
                                DPT_STAT(&t->st, io_errors, 1);
                        close_conn(t, c);
                        return;
                }
                c->rx_fill += (size_t)got;
                on_rx(t, c, now);
        }
}

static void on_recv(struct dp_tcp *t, struct conn *c, int res, uint64_t now)
{
        c->recv_busy = false;
        if (c->state != C_OPEN)
                return;
        if (res <= 0) {
                if (res < 0 && res != -ECONNRESET)
                        DPT_STAT(&t->st, io_errors, 1);
                if (c->tls && !dpt_tls_established(c->tls))
                        tls_fail(t, c, res ? strerror(-res) : "the client closed the connection during the handshake",
                                 false);
                else
                        close_conn(t, c);
                return;
        }
        DPT_STAT(&t->st, rx_bytes, (uint64_t)res);
        if (c->tls) {
                on_tls_recv(t, c, (size_t)res, now);
        } else {
                c->rx_fill += (size_t)res;
                on_rx(t, c, now);
        }
        if (c->state == C_OPEN) {
                flush(t, c); /* replies to this batch of frames, or the handshake's next flight */
                recv_arm(t, c);
        }
}

static void on_accept(struct dp_tcp *t, int fd)
{
        struct conn *c = NULL;
        for (unsigned i = 0; i < t->n_conn && !c; i++)
                if (t->conn[i].state == C_FREE)
                        c = &t->conn[i];
        if (!c) {
                close(fd);
                DPT_STAT(&t->st, drop_table_full, 1);
                return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (t->cfg.sndbuf > 0)
                setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &t->cfg.sndbuf, sizeof(t->cfg.sndbuf));
        /* once per connection, so that no request record needs a syscall */
        c->peer_len = sizeof(c->peer);
        if (getpeername(fd, (struct sockaddr *)&c->peer, &c->peer_len) < 0)
                c->peer_len = 0;
        if (c->peer_len && !dp_allow_match(t->cfg.allow, (const struct sockaddr *)&c->peer)) {
                close(fd); /* not a network we serve: closed at once, counted */
                DPT_STAT(&t->st, denied, 1);
                return;
        }
        if (t->tls) {
                c->tls = dpt_tls_accept(t->tls);
                if (!c->tls) {
                        close(fd);
                        DPT_STAT(&t->st, tls_failures, 1);
                        return;
                }
                c->hs_deadline = sl_now_ns() + TLS_HANDSHAKE_NS;
        }
        c->fd = fd;
        c->state = C_OPEN;
        c->shut = c->send_busy = c->recv_busy = c->reasm_used = false;
        c->rx_fill = c->out_sent = c->out_fill = 0;
        c->cout_sent = c->cout_fill = 0;
        c->tls_closed = c->tls_out_off = false;
        DPT_STAT(&t->st, conns_accepted, 1);
        recv_arm(t, c);
}

/* ---- engine responses ---- */

static void drain_responses(struct dp_tcp *t)
{
        const void *rec;
        size_t len;

        while ((rec = dp_ring_peek(t->cfg.resp_ring, &len))) {
                const struct dp_resp_rec *rr = rec;
                struct conn *c = NULL;
                struct tcp_req *q = NULL;
                unsigned ci = (unsigned)(rr->client >> 16 & 0xffff), qi = (unsigned)(rr->client & 0xffff);
                if (len >= sizeof(*rr) && rr->payload_len <= len - sizeof(*rr) && ci < t->n_conn && qi < t->n_req) {
                        c = &t->conn[ci];
                        q = &c->req[qi];
                        if (c->state != C_OPEN || c->gen != (uint32_t)(rr->client >> 32) || q->state == TR_FREE ||
                            q->rid != rr->request_id)
                                c = NULL;
                }
                if (!c) {
                        DPT_STAT(&t->st, drop_stale_resp, 1);
                        dp_ring_release(t->cfg.resp_ring);
                        continue;
                }
                bool terminal = rr->opcode == DP_OP_DONE ||
                                (rr->opcode == DP_OP_ERROR && rr->payload_len >= 3 &&
                                 (rr->payload[2] & DP_ERRF_TERMINAL));
                if (q->state == TR_FAILED) {
                        if (terminal)
                                q->state = TR_FREE; /* the engine is done with it too */
                        dp_ring_release(t->cfg.resp_ring);
                        continue;
                }
                struct dp_header h = { .opcode = rr->opcode, .request_id = q->rid, .seq = q->next_seq,
                                       .frag_count = 1 };
                int rc = -EINVAL;
                if (rr->opcode == DP_OP_TOKENS || terminal)
                        rc = out_frame(t, c, &h, rr->payload, rr->payload_len, !terminal);
                if (rc == 0) {
                        q->next_seq++;
                        if (terminal)
                                q->state = TR_FREE;
                } else {
                        /* over the bound (or a response we cannot send): this request
                         * alone fails; the engine is told to stop it */
                        if (rc == -ENOBUFS)
                                DPT_STAT(&t->st, output_overflows, 1);
                        out_error(t, c, q->rid, q->next_seq, rc == -ENOBUFS ? DP_ERR_CANCELLED : DP_ERR_INTERNAL,
                                  true, 0, rc == -ENOBUFS ? "connection output full: the client reads too slowly"
                                                          : "bad response from the engine");
                        q->next_seq++;
                        if (terminal) {
                                q->state = TR_FREE;
                        } else {
                                q->state = TR_FAILED;
                                push_ctl(t, c, q, DP_REQ_CANCEL);
                        }
                }
                dp_ring_release(t->cfg.resp_ring);
                flush(t, c);
        }
}

/* ---- the thread ---- */

static void *tcp_main(void *arg)
{
        struct dp_tcp *t = arg;
        uint64_t next_tick = 0;

        for (unsigned i = 0; i < t->n_lis; i++)
                accept_arm(t, i);
        wake_arm(t);
        while (!dpt_thread_stopping(&t->th)) {
                uint64_t now = sl_now_ns();
                dpt_auth_enter(&t->auth);
                if (atomic_load_explicit(&t->tls_next, memory_order_relaxed)) {
                        struct dp_tls_ctx *nx = atomic_exchange_explicit(&t->tls_next, NULL, memory_order_acquire);
                        if (nx) { /* sessions keep a reference to the context they began with */
                                dp_tls_ctx_free(t->tls);
                                t->tls = nx;
                        }
                }
                drain_responses(t);
                if (now >= next_tick) {
                        for (unsigned i = 0; i < t->n_conn; i++) {
                                struct conn *c = &t->conn[i];
                                if (c->state == C_OPEN && c->tls && now >= c->hs_deadline &&
                                    !dpt_tls_established(c->tls))
                                        tls_fail(t, c, "the handshake did not finish in 10 s", false);
                                if (c->state == C_OPEN)
                                        for (unsigned k = 0; k < t->n_req; k++)
                                                if (c->req[k].pend & PEND_CANCEL)
                                                        push_ctl(t, c, &c->req[k], DP_REQ_CANCEL);
                                reap(t, c, now);
                        }
                        next_tick = now + TICK_NS;
                }
                if (t->pushed && t->cfg.engine_wake) {
                        dp_notify_kick(t->cfg.engine_wake);
                        t->pushed = false;
                }
                dp_notify_prepare(&t->wake);
                bool busy = !dp_ring_empty(t->cfg.resp_ring) || t->pushed;
                struct __kernel_timespec ts = { 0, busy ? 0 : (long long)TICK_NS };
                struct io_uring_cqe *cqe;
                dpt_auth_idle(&t->auth);
                int r = io_uring_submit_and_wait_timeout(&t->ring, &cqe, busy ? 0 : 1, &ts, NULL);
                dpt_auth_enter(&t->auth);
                atomic_store(&t->wake.sleeping, 0);
                if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY)
                        DPT_STAT(&t->st, io_errors, 1);
                unsigned head, n = 0;
                now = sl_now_ns();
                io_uring_for_each_cqe(&t->ring, head, cqe) {
                        uint64_t d = io_uring_cqe_get_data64(cqe);
                        unsigned idx = (unsigned)(d & 0xffffffffu);
                        struct conn *c = &t->conn[idx < t->n_conn ? idx : 0];
                        n++;
                        switch (d >> 56) {
                        case TU_ACCEPT:
                                if (cqe->res >= 0)
                                        on_accept(t, cqe->res);
                                else
                                        DPT_STAT(&t->st, io_errors, 1);
                                accept_arm(t, idx);
                                break;
                        case TU_RECV:
                                on_recv(t, c, cqe->res, now);
                                if (c->state == C_CLOSING)
                                        reap(t, c, now);
                                break;
                        case TU_SEND:
                                c->send_busy = false;
                                if (cqe->res < 0) {
                                        c->out_sent = c->out_fill; /* nothing more will go out */
                                        c->cout_sent = c->cout_fill;
                                        if (c->tls)
                                                c->tls_out_off = true; /* nor from the session */
                                        close_conn(t, c);
                                } else if (c->tls) {
                                        c->cout_sent += (size_t)cqe->res;
                                        flush(t, c);
                                } else {
                                        c->out_sent += (size_t)cqe->res;
                                        if (c->out_sent == c->out_fill)
                                                c->out_sent = c->out_fill = 0;
                                        flush(t, c);
                                }
                                reap(t, c, now);
                                break;
                        case TU_WAKE:
                                wake_arm(t);
                                break;
                        }
                }
                io_uring_cq_advance(&t->ring, n);
        }
        return NULL;
}

/* ---- lifecycle ---- */

int dp_tcp_create(struct dp_tcp **out, const struct dp_transport_config *cfg, struct sl_error *err)
{
        struct dp_tcp *t;
        int r;

        *out = NULL;
        if (!cfg->req_ring || !cfg->resp_ring || cfg->n_listen == 0 || cfg->n_listen > DP_MAX_LISTEN) {
                dp_tls_ctx_free(cfg->tls);
                return sl_errorf(err, -EINVAL, "tcp: rings and 1..%d listen addresses are required", DP_MAX_LISTEN);
        }
        t = calloc(1, sizeof(*t));
        if (!t) {
                dp_tls_ctx_free(cfg->tls);
                return sl_errorf(err, -ENOMEM, "tcp: out of memory");
        }
        t->cfg = *cfg;
        t->tls = cfg->tls; /* ours from here on */
        t->tls_on = cfg->tls != NULL;
        t->wake.fd = -1;
        for (unsigned i = 0; i < DP_MAX_LISTEN; i++)
                t->lfd[i] = -1;
        t->n_conn = cfg->max_conns ? cfg->max_conns : 64;
        t->n_req = cfg->max_requests ? cfg->max_requests : 64;
        t->out_cap = cfg->out_bytes ? cfg->out_bytes : 262144;
        t->out_reserve = (size_t)t->n_req * 96 + 1024; /* terminal ERRORs and DONEs, a PONG */
        if (t->n_conn > 65535 || t->n_req > 65535 || t->out_cap < 2 * t->out_reserve + DP_MAX_FRAME_TCP ||
            t->out_cap > (1u << 30)) {
                r = sl_errorf(err, -EINVAL, "tcp: out_bytes %zu must be >= %zu (2 x reserve + a frame)",
                              t->out_cap, 2 * t->out_reserve + DP_MAX_FRAME_TCP);
                goto fail;
        }
        size_t per = RXCAP + t->out_cap + DP_MAX_MESSAGE + (t->tls_on ? TLS_INCAP + TLS_OUTCAP : 0);
        t->conn = calloc(t->n_conn, sizeof(*t->conn));
        t->reqs = calloc((size_t)t->n_conn * t->n_req, sizeof(*t->reqs));
        t->mem = malloc(per * t->n_conn);
        if (!t->conn || !t->reqs || !t->mem) {
                r = sl_errorf(err, -ENOMEM, "tcp: out of memory for %u connections", t->n_conn);
                goto fail;
        }
        /* Not touched here: at the defaults this is over 1 GiB (tcp_output_limit per
         * connection). A connection takes the lowest free slot, so the pages in use are those
         * of the most connections open at once, and they stay in use. */
        for (unsigned i = 0; i < t->n_conn; i++) {
                struct conn *c = &t->conn[i];
                c->fd = -1;
                c->rx = t->mem + per * i;
                c->out = c->rx + RXCAP;
                c->reasm.buf = c->out + t->out_cap;
                if (t->tls_on) {
                        c->cin = c->reasm.buf + DP_MAX_MESSAGE;
                        c->cout = c->cin + TLS_INCAP;
                }
                c->req = t->reqs + (size_t)i * t->n_req;
        }
        for (unsigned i = 0; i < cfg->n_listen; i++) {
                r = dpt_listen_socket(cfg->listen[i], SOCK_STREAM, &t->bound[i], &t->bound_len[i], err);
                if (r < 0)
                        goto fail;
                t->lfd[i] = r;
                t->n_lis++;
        }
        r = dp_notify_init(&t->wake, err);
        if (r < 0 || (r = dpt_auth_init(&t->auth, cfg->auth, &t->st.auth, err)) < 0)
                goto fail;
        r = io_uring_queue_init(4 * t->n_conn + 2 * cfg->n_listen + 64, &t->ring, 0);
        if (r < 0) {
                sl_errorf(err, r, "tcp: io_uring_queue_init: %s", strerror(-r));
                goto fail;
        }
        t->ring_ok = true;
        *out = t;
        return 0;
fail:
        dp_tcp_free(t);
        return r;
}

int dp_tcp_start(struct dp_tcp *t, struct sl_error *err)
{
        return dpt_thread_start(&t->th, tcp_main, t, "tcp", err);
}

void dp_tcp_stop(struct dp_tcp *t)
{
        if (t)
                dpt_thread_stop(&t->th, t->wake.fd);
}

void dp_tcp_free(struct dp_tcp *t)
{
        if (!t)
                return;
        dp_tcp_stop(t);
        if (t->ring_ok)
                io_uring_queue_exit(&t->ring);
        for (unsigned i = 0; t->conn && i < t->n_conn; i++) {
                dpt_tls_free(t->conn[i].tls);
                if (t->conn[i].fd >= 0)
                        close(t->conn[i].fd);
        }
        dp_tls_ctx_free(t->tls);
        dp_tls_ctx_free(atomic_exchange(&t->tls_next, NULL));
        for (unsigned i = 0; i < DP_MAX_LISTEN; i++)
                if (t->lfd[i] >= 0)
                        close(t->lfd[i]);
        dp_notify_destroy(&t->wake);
        dpt_auth_free(&t->auth);
        free(t->conn);
        free(t->reqs);
        free(t->mem);
        free(t);
}

void dp_tcp_kick(struct dp_tcp *t) { dp_notify_kick(&t->wake); }

int dp_tcp_set_tls(struct dp_tcp *t, struct dp_tls_ctx *ctx)
{
        if (!t->tls_on || !ctx) {
                dp_tls_ctx_free(ctx);
                return -EINVAL;
        }
        /* one the thread has not taken yet is replaced, and freed here */
        dp_tls_ctx_free(atomic_exchange_explicit(&t->tls_next, ctx, memory_order_acq_rel));
        return 0;
}

int dp_tcp_local_addr(const struct dp_tcp *t, unsigned i, struct sockaddr_storage *ss, unsigned *len)
{
        if (i >= t->n_lis)
                return -ENOENT;
        *ss = t->bound[i];
        *len = t->bound_len[i];
        return 0;
}

void dp_tcp_stats(const struct dp_tcp *t, struct dp_transport_stats *out)
{
        const _Atomic uint64_t *s = (const _Atomic uint64_t *)&t->st;
        uint64_t *d = (uint64_t *)out;
        for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
                d[i] = atomic_load_explicit(&s[i], memory_order_relaxed);
}
