/* fake_server.c — the client tests' protocol server (see fake_server.h). One thread, poll()
 * with a 5 ms tick, everything bounded: 64 UDP requests, 8 TCP connections. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane.h"
#include "fake_server.h"

#define MAX_REQ 64
#define MAX_CONN 8

struct ufr { /* one encoded stream frame */
        uint32_t len;
        uint8_t b[DP_MAX_FRAME_UDP];
};

struct ureq {
        bool used, complete;
        struct sockaddr_storage peer;
        socklen_t plen;
        uint64_t id;
        uint8_t *msg;
        struct dp_reasm ra;
        struct ufr *fr;
        unsigned n_fr, sent;
        uint64_t next_due;
        bool dropped_first;
        bool acked_all;       /* the client acknowledged the whole stream: forgettable */
};

struct tconn {
        int fd;
        uint8_t *buf;
        size_t len;
};

struct fake_server {
        struct fake_opts o;
        int fd;
        uint16_t port;
        pthread_t th;
        atomic_bool stop;
        struct fake_stats st;
        struct ureq req[MAX_REQ];
        struct tconn conn[MAX_CONN];
        bool first_gen_dropped;
        unsigned junk;
};

/* ---- building answers ---- */

static long frame(uint8_t *buf, size_t cap, size_t maxf, uint8_t op, uint64_t id, uint32_t seq, const void *p,
                  size_t len)
{
        struct dp_header h = {.opcode = op, .flags = DP_F_CRC, .request_id = id, .seq = seq, .frag_count = 1};
        return dp_frame_encode(buf, cap, maxf, &h, p, len, NULL, NULL);
}

static long error_payload(uint8_t *p, size_t cap, uint16_t code, bool terminal, uint32_t retry, const char *msg)
{
        struct dp_error e = {.code = code, .flags = terminal ? DP_ERRF_TERMINAL : 0, .retry_after_ms = retry,
                             .msg = {msg, (uint32_t)strlen(msg)}};
        return dp_error_encode(p, cap, &e);
}

/* The stream that answers a complete GENERATE or TOKENIZE, as encoded frames. */
static int build_stream(struct fake_server *s, uint8_t op, uint64_t id, const uint8_t *msg, size_t len,
                        struct ufr **out, unsigned *n_out)
{
        uint8_t p[2048];
        struct sl_error e;
        unsigned n_tok = 0, cap;
        struct ufr *fr;
        struct dp_generate g;
        struct dp_tokenize t;
        char pre[17] = "";
        uint32_t prompt_tokens = 0;

        if (op == DP_OP_GENERATE) {
                if (dp_generate_decode(msg, len, &g, &e) < 0)
                        return -1;
                n_tok = g.max_tokens ? g.max_tokens : (s->o.n_tokens ? s->o.n_tokens : 20);
                prompt_tokens = g.prompt_len;
                atomic_store(&s->st.last_prompt_len, g.prompt_len);
                if (g.prompt_text)
                        snprintf(pre, sizeof(pre), "%.*s", (int)SL_MIN(g.prompt_len, 16u), g.prompt_text);
                if (s->o.mode == FAKE_STALL)
                        n_tok = 0;
        } else {
                if (dp_tokenize_decode(msg, len, &t, &e) < 0)
                        return -1;
                n_tok = (t.text.len + 255) / 256; /* one frame per 256 bytes: id = byte */
                prompt_tokens = t.text.len;
                atomic_store(&s->st.last_prompt_len, t.text.len);
        }
        cap = n_tok + 2;
        fr = calloc(cap, sizeof(*fr));
        if (!fr)
                return -1;
        unsigned n = 0;
        long l;
        if (s->o.mode == FAKE_STALL) {
                *out = fr, *n_out = 0;
                return 0;
        }
        if (op == DP_OP_GENERATE && (s->o.mode == FAKE_BUSY || s->o.mode == FAKE_ERROR)) {
                bool busy = s->o.mode == FAKE_BUSY;
                l = error_payload(p, sizeof(p), busy ? DP_ERR_BUSY : DP_ERR_INTERNAL, true, busy ? 1234 : 0,
                                  busy ? "queue full" : "model exploded");
                l = frame(fr[0].b, sizeof(fr[0].b), DP_MAX_FRAME_UDP, DP_OP_ERROR, id, 0, p, (size_t)l);
                fr[0].len = (uint32_t)l;
                *out = fr, *n_out = 1;
                return 0;
        }
        for (unsigned i = 0; i < n_tok; i++) {
                uint8_t ids[256 * 4];
                struct dp_tokens tk = {.kind = DP_TOKENS_GENERATED, .ids = ids};
                char text[64];
                if (op == DP_OP_GENERATE) {
                        dp_id_put(ids, 0, (int32_t)(1000 + i));
                        tk.n_tokens = 1;
                        snprintf(text, sizeof(text), "%s#%u ", pre, i);
                        tk.text = (struct dp_str){text, (uint32_t)strlen(text)};
                } else {
                        tk.kind = DP_TOKENS_PROMPT;
                        uint32_t a = i * 256, b = SL_MIN(a + 256, t.text.len);
                        for (uint32_t k = a; k < b; k++)
                                dp_id_put(ids, k - a, (uint8_t)t.text.ptr[k]);
                        tk.n_tokens = (uint16_t)(b - a);
                }
                if (s->o.mode == FAKE_BAD_PAYLOAD && i == 1) {
                        /* encode by hand: the encoder refuses bad UTF-8 */
                        tk.text = (struct dp_str){"ok", 2};
                        l = dp_tokens_encode(p, sizeof(p), &tk);
                        p[l - 2] = 0xff;
                } else {
                        l = dp_tokens_encode(p, sizeof(p), &tk);
                }
                l = frame(fr[n].b, sizeof(fr[n].b), DP_MAX_FRAME_UDP, DP_OP_TOKENS, id, n, p, (size_t)l);
                if (l < 0)
                        abort();
                fr[n++].len = (uint32_t)l;
        }
        struct dp_done d = {.reason = op == DP_OP_GENERATE ? DP_FINISH_LENGTH : DP_FINISH_NONE,
                            .stop_index = DP_STOP_INDEX_NONE, .prompt_tokens = prompt_tokens,
                            .generated_tokens = op == DP_OP_GENERATE ? n_tok : 0, .queue_us = 5, .ttft_us = 1500,
                            .total_us = 1500 + 100ull * n_tok};
        l = dp_done_encode(p, sizeof(p), &d);
        l = frame(fr[n].b, sizeof(fr[n].b), DP_MAX_FRAME_UDP, DP_OP_DONE, id, n, p, (size_t)l);
        fr[n++].len = (uint32_t)l;
        *out = fr, *n_out = n;
        return 0;
}

static long answer_simple(struct fake_server *s, const struct dp_frame *f, uint8_t *out, size_t cap, size_t maxf)
{
        uint8_t p[512];
        long l;
        struct sl_error e;
        struct dp_load load = {.queue_depth = 3, .active = 2, .kv_blocks_free = 77, .kv_blocks_total = 100,
                               .max_inflight = 16};
        if (f->h.opcode == DP_OP_HELLO) {
                struct dp_hello h;
                if (dp_hello_decode(f->payload, f->h.payload_len, &h, &e) < 0)
                        return -1;
                atomic_fetch_add(&s->st.hello, 1);
                struct dp_info in = {.version = 1, .max_frame = (uint32_t)maxf, .max_message = DP_MAX_MESSAGE,
                                     .max_prompt_tokens = 4096, .max_prompt_bytes = DP_MAX_PROMPT_BYTES,
                                     .max_new_tokens = 2048, .max_stop = 8, .max_stop_len = 64, .n_ctx = 8192,
                                     .n_vocab = 32000, .lease_ms = s->o.lease_ms ? s->o.lease_ms : 10000,
                                     .load = load, .model = {"fake-model", 10}, .server = {"fake 1.0", 8}};
                l = dp_info_encode(p, sizeof(p), &in);
                return frame(out, cap, maxf, DP_OP_INFO, f->h.request_id, f->h.seq, p, (size_t)l);
        }
        if (f->h.opcode == DP_OP_PING) {
                struct dp_ping pg;
                if (dp_ping_decode(f->payload, f->h.payload_len, &pg, &e) < 0)
                        return -1;
                atomic_fetch_add(&s->st.ping, 1);
                if (s->o.mode == FAKE_STALL)
                        return 0;
                struct dp_pong po = {.token = pg.token, .load = load};
                l = dp_pong_encode(p, sizeof(p), &po);
                return frame(out, cap, maxf, DP_OP_PONG, f->h.request_id, f->h.seq, p, (size_t)l);
        }
        return 0;
}

/* ---- UDP ---- */

static void usend(struct fake_server *s, struct ureq *r, const uint8_t *b, size_t len)
{
        sendto(s->fd, b, len, 0, (struct sockaddr *)&r->peer, r->plen);
}

static void usend_junk(struct fake_server *s, struct ureq *r, const struct ufr *f)
{
        uint8_t j[64];
        for (unsigned i = 0; i < sizeof(j); i++)
                j[i] = (uint8_t)(s->junk = s->junk * 1103515245u + 12345u) >> 16;
        usend(s, r, j, sizeof(j));
        uint8_t bad[DP_MAX_FRAME_UDP];
        memcpy(bad, f->b, f->len);
        bad[f->len - 1] ^= 0x5a; /* CRC no longer matches */
        usend(s, r, bad, f->len);
}

/* Sends frame k of r for the first time, through the loss/duplicate knobs. */
static void ufirst(struct fake_server *s, struct ureq *r, unsigned k)
{
        const struct ufr *f = &r->fr[k];
        bool terminal = k + 1 == r->n_fr;
        if (s->o.mode == FAKE_GARBAGE)
                usend_junk(s, r, f);
        if (s->o.drop_mod && k % s->o.drop_mod == 1 && !terminal)
                return;
        if (s->o.drop_terminal && terminal)
                return;
        usend(s, r, f->b, f->len);
        if (s->o.duplicate)
                usend(s, r, f->b, f->len);
}

static void upump(struct fake_server *s)
{
        uint64_t now = sl_now_ns();
        for (unsigned i = 0; i < MAX_REQ; i++) {
                struct ureq *r = &s->req[i];
                while (r->used && r->complete && r->sent < r->n_fr && now >= r->next_due) {
                        unsigned k = r->sent;
                        if (s->o.reorder && k + 1 < r->n_fr) {
                                ufirst(s, r, k + 1);
                                ufirst(s, r, k);
                                r->sent += 2;
                        } else {
                                ufirst(s, r, k);
                                r->sent++;
                        }
                        r->next_due = now + (uint64_t)s->o.token_delay_ms * 1000000ull;
                }
        }
}

static struct ureq *ufind(struct fake_server *s, const struct sockaddr_storage *a, socklen_t al, uint64_t id,
                          bool create)
{
        for (unsigned i = 0; i < MAX_REQ; i++)
                if (s->req[i].used && s->req[i].id == id && s->req[i].plen == al && !memcmp(&s->req[i].peer, a, al))
                        return &s->req[i];
        if (!create)
                return NULL;
        for (unsigned i = 0; i < MAX_REQ; i++) {
                struct ureq *r = &s->req[i];
                /* a slot is reused once free, or once its client has acknowledged the whole
                 * stream (docs/protocol.md §5.3): a stream still missing frames keeps its slot
                 * for the RESENDs to come */
                if (!r->used || (r->complete && r->acked_all)) {
                        free(r->msg);
                        free(r->fr);
                        memset(r, 0, sizeof(*r));
                        r->msg = malloc(DP_MAX_MESSAGE);
                        if (!r->msg)
                                return NULL;
                        dp_reasm_init(&r->ra, r->msg, DP_MAX_MESSAGE);
                        r->used = true;
                        r->id = id;
                        memcpy(&r->peer, a, al);
                        r->plen = al;
                        return r;
                }
        }
        return NULL;
}

static void uhandle(struct fake_server *s, const uint8_t *b, size_t len, struct sockaddr_storage *a, socklen_t al)
{
        struct dp_frame f;
        struct sl_error e;
        uint8_t out[DP_MAX_FRAME_UDP];
        if (dp_frame_decode(b, len, DP_MAX_FRAME_UDP, DP_DECODE_REQUIRE_CRC, &f, &e) < 0) {
                atomic_fetch_add(&s->st.bad_in, 1);
                return;
        }
        uint8_t op = f.h.opcode;
        if (op == DP_OP_HELLO && len < DP_UDP_HELLO_MIN) {
                atomic_fetch_add(&s->st.bad_in, 1);
                return;
        }
        if (op == DP_OP_HELLO || op == DP_OP_PING) {
                long l = answer_simple(s, &f, out, sizeof(out), DP_MAX_FRAME_UDP);
                if (l > 0)
                        sendto(s->fd, out, (size_t)l, 0, (struct sockaddr *)a, al);
                return;
        }
        if (op == DP_OP_GENERATE || op == DP_OP_TOKENIZE) {
                if (op == DP_OP_GENERATE && s->o.drop_first_request && !s->first_gen_dropped) {
                        s->first_gen_dropped = true;
                        return;
                }
                if (f.h.frag_count > atomic_load(&s->st.frags_max))
                        atomic_store(&s->st.frags_max, f.h.frag_count);
                struct ureq *r = ufind(s, a, al, f.h.request_id, true);
                if (!r || r->complete)
                        return; /* idempotent: a repeated request is not run again */
                int rc = dp_reasm_add(&r->ra, &f, &e);
                if (rc < 0) {
                        r->used = false;
                        atomic_fetch_add(&s->st.bad_in, 1);
                        return;
                }
                if (rc == 0)
                        return;
                atomic_fetch_add(op == DP_OP_GENERATE ? &s->st.generate : &s->st.tokenize, 1);
                if (build_stream(s, op, r->id, r->msg, r->ra.total, &r->fr, &r->n_fr) < 0) {
                        r->used = false;
                        atomic_fetch_add(&s->st.bad_in, 1);
                        return;
                }
                r->complete = true;
                r->next_due = sl_now_ns();
                return;
        }
        struct ureq *r = ufind(s, a, al, f.h.request_id, false);
        if (op == DP_OP_ACK) {
                struct dp_ack ak;
                atomic_fetch_add(&s->st.ack, 1);
                if (r && r->complete && dp_ack_decode(f.payload, f.h.payload_len, &ak, &e) == 0 && ak.next_seq >= r->n_fr)
                        r->acked_all = true;
        } else if (op == DP_OP_CANCEL) {
                atomic_fetch_add(&s->st.cancel, 1);
        } else if (op == DP_OP_RESEND) {
                struct dp_resend rs;
                atomic_fetch_add(&s->st.resend, 1);
                if (dp_resend_decode(f.payload, f.h.payload_len, &rs, &e) < 0)
                        return;
                if (!r || !r->complete) {
                        uint8_t p[300];
                        long l = error_payload(p, sizeof(p), DP_ERR_NOT_FOUND, false, 0, "unknown request");
                        l = frame(out, sizeof(out), DP_MAX_FRAME_UDP, DP_OP_ERROR, f.h.request_id, 0, p, (size_t)l);
                        sendto(s->fd, out, (size_t)l, 0, (struct sockaddr *)a, al);
                        return;
                }
                for (unsigned i = 0; i < rs.n_ranges; i++) {
                        uint64_t end = rs.r[i].count ? (uint64_t)rs.r[i].first + rs.r[i].count : r->sent;
                        for (uint64_t k = rs.r[i].first; k < end && k < r->sent; k++)
                                usend(s, r, r->fr[k].b, r->fr[k].len);
                }
        }
}

/* ---- TCP ---- */

static void twrite(int fd, const uint8_t *b, size_t len)
{
        while (len) {
                ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
                if (n <= 0) {
                        if (n < 0 && errno == EINTR)
                                continue;
                        return;
                }
                b += n, len -= (size_t)n;
        }
}

static void tclose(struct tconn *t)
{
        close(t->fd);
        free(t->buf);
        t->fd = -1;
        t->buf = NULL;
        t->len = 0;
}

/* TCP requests arrive in order; fragments are reassembled per connection (one at a time). */
static void thandle(struct fake_server *s, struct tconn *t, const uint8_t *b, size_t len, struct dp_reasm *ra)
{
        struct dp_frame f;
        struct sl_error e;
        uint8_t out[1024];
        if (dp_frame_decode(b, len, DP_MAX_FRAME_TCP, 0, &f, &e) < 0) {
                atomic_fetch_add(&s->st.bad_in, 1);
                tclose(t);
                return;
        }
        uint8_t op = f.h.opcode;
        if (op == DP_OP_HELLO || op == DP_OP_PING) {
                long l = answer_simple(s, &f, out, sizeof(out), DP_MAX_FRAME_TCP);
                if (l > 0)
                        twrite(t->fd, out, (size_t)l);
                return;
        }
        if (op == DP_OP_CANCEL) {
                atomic_fetch_add(&s->st.cancel, 1);
                return;
        }
        if (op != DP_OP_GENERATE && op != DP_OP_TOKENIZE)
                return;
        if (f.h.frag_index == 0)
                dp_reasm_init(ra, ra->buf, ra->cap);
        int rc = dp_reasm_add(ra, &f, &e);
        if (rc <= 0)
                return;
        atomic_fetch_add(op == DP_OP_GENERATE ? &s->st.generate : &s->st.tokenize, 1);
        if (s->o.mode == FAKE_GARBAGE) {
                static const uint8_t junk[64] = "this is not a sluice frame, not at all, really not one";
                twrite(t->fd, junk, sizeof(junk));
                return;
        }
        struct ufr *fr;
        unsigned n;
        if (build_stream(s, op, f.h.request_id, ra->buf, ra->total, &fr, &n) < 0)
                return;
        for (unsigned i = 0; i < n; i++)
                twrite(t->fd, fr[i].b, fr[i].len);
        free(fr);
}

static void tread(struct fake_server *s, struct tconn *t, struct dp_reasm *ra)
{
        ssize_t n = recv(t->fd, t->buf + t->len, 2 * DP_MAX_FRAME_TCP - t->len, MSG_DONTWAIT);
        if (n <= 0) {
                if (n == 0 || (errno != EAGAIN && errno != EINTR))
                        tclose(t);
                return;
        }
        t->len += (size_t)n;
        size_t off = 0;
        while (t->fd >= 0) {
                struct sl_error e;
                long fl = dp_frame_length(t->buf + off, t->len - off, DP_MAX_FRAME_TCP, &e);
                if (fl < 0) {
                        tclose(t);
                        return;
                }
                if (fl == 0 || (size_t)fl > t->len - off)
                        break;
                thandle(s, t, t->buf + off, (size_t)fl, ra);
                off += (size_t)fl;
        }
        if (t->fd >= 0) {
                memmove(t->buf, t->buf + off, t->len - off);
                t->len -= off;
        }
}

/* ---- the thread ---- */

static void *serve(void *arg)
{
        struct fake_server *s = arg;
        uint8_t *rbuf = malloc(DP_MAX_MESSAGE);
        struct dp_reasm ra;
        dp_reasm_init(&ra, rbuf, DP_MAX_MESSAGE);
        while (!atomic_load(&s->stop)) {
                struct pollfd pf[1 + MAX_CONN];
                int np = 0;
                pf[np++] = (struct pollfd){.fd = s->fd, .events = POLLIN};
                for (unsigned i = 0; i < MAX_CONN; i++)
                        pf[np++] = (struct pollfd){.fd = s->conn[i].fd, .events = POLLIN};
                poll(pf, (nfds_t)np, 5);
                if (!s->o.tcp) {
                        for (int k = 0; k < 256 && (pf[0].revents & POLLIN); k++) {
                                uint8_t b[2048];
                                struct sockaddr_storage a;
                                socklen_t al = sizeof(a);
                                ssize_t n = recvfrom(s->fd, b, sizeof(b), MSG_DONTWAIT, (struct sockaddr *)&a, &al);
                                if (n < 0)
                                        break;
                                uhandle(s, b, (size_t)n, &a, al);
                        }
                        upump(s);
                        continue;
                }
                if (pf[0].revents & POLLIN) {
                        int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
                        unsigned i = 0;
                        while (fd >= 0 && i < MAX_CONN && s->conn[i].fd >= 0)
                                i++;
                        if (fd >= 0 && i < MAX_CONN) {
                                s->conn[i].fd = fd;
                                s->conn[i].buf = malloc(2 * DP_MAX_FRAME_TCP);
                                s->conn[i].len = 0;
                        } else if (fd >= 0) {
                                close(fd);
                        }
                }
                for (unsigned i = 0; i < MAX_CONN; i++)
                        if (s->conn[i].fd >= 0 && (pf[1 + i].revents & (POLLIN | POLLHUP | POLLERR)))
                                tread(s, &s->conn[i], &ra);
        }
        free(rbuf);
        return NULL;
}

int fake_server_start(const struct fake_opts *o, uint16_t port, struct fake_server **out)
{
        struct fake_server *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->o = *o;
        s->junk = 12345;
        for (unsigned i = 0; i < MAX_CONN; i++)
                s->conn[i].fd = -1;
        int af = o->ipv6 ? AF_INET6 : AF_INET;
        s->fd = socket(af, (o->tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0);
        if (s->fd < 0)
                goto fail;
        int one = 1;
        setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        struct sockaddr_storage ss = {0};
        socklen_t sl;
        if (o->ipv6) {
                struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
                a->sin6_family = AF_INET6;
                a->sin6_addr = in6addr_loopback;
                a->sin6_port = htons(port);
                sl = sizeof(*a);
        } else {
                struct sockaddr_in *a = (struct sockaddr_in *)&ss;
                a->sin_family = AF_INET;
                a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                a->sin_port = htons(port);
                sl = sizeof(*a);
        }
        if (bind(s->fd, (struct sockaddr *)&ss, sl) < 0 || (o->tcp && listen(s->fd, 16) < 0))
                goto fail;
        sl = sizeof(ss);
        if (getsockname(s->fd, (struct sockaddr *)&ss, &sl) < 0)
                goto fail;
        s->port = ntohs(o->ipv6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
        if (pthread_create(&s->th, NULL, serve, s) != 0) {
                errno = EAGAIN;
                goto fail;
        }
        *out = s;
        return 0;
fail:;
        int rc = -errno;
        if (s->fd >= 0)
                close(s->fd);
        free(s);
        return rc;
}

uint16_t fake_server_port(const struct fake_server *s)
{
        return s->port;
}

struct fake_stats *fake_server_stats(struct fake_server *s)
{
        return &s->st;
}

void fake_server_wait(struct fake_server *s, atomic_bool *stop)
{
        while (!atomic_load(stop))
                usleep(10000);
        (void)s;
}

void fake_server_stop(struct fake_server *s)
{
        if (!s)
                return;
        atomic_store(&s->stop, true);
        pthread_join(s->th, NULL);
        close(s->fd);
        for (unsigned i = 0; i < MAX_REQ; i++) {
                free(s->req[i].msg);
                free(s->req[i].fr);
        }
        for (unsigned i = 0; i < MAX_CONN; i++)
                if (s->conn[i].fd >= 0)
                        tclose(&s->conn[i]);
        free(s);
}
