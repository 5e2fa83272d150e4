/* transport-test.h — shared by test-udp.c and test-tcp.c: a fake engine thread on the
 * rings (3 TOKENS + DONE per request; prompt "hold": nothing until CANCEL/CLIENT_GONE;
 * prompt "flood": TOKENS until CANCEL), and small socket helpers. Everything is bounded. */
#pragma once

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dataplane.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); exit(1); } } while (0)

enum { MODE_NORMAL, MODE_HOLD, MODE_FLOOD };

struct fake_req {
        bool used;
        uint64_t client, rid;
        int mode;
        uint32_t sent;
        size_t prompt_len;
};

struct fake_engine {
        struct dp_ring *req, *resp;
        void (*kick)(void *);
        void *kick_arg;
        struct dp_notify wake;
        pthread_t th;
        _Atomic bool stop;
        _Atomic unsigned n_generate, n_tokenize, n_cancel, n_gone, n_overflow_flood;
        struct fake_req live[64];
        /* per request id: how many times it was run, and its prompt length */
        _Atomic unsigned runs[256];
        _Atomic unsigned gone[256];
        _Atomic unsigned cancels[256];
        _Atomic size_t plen[256];
        /* per request id: the client address on its last GENERATE/TOKENIZE record ("-": none),
         * written before runs[] is bumped */
        char peer[256][64];
};

static int fake_push(struct fake_engine *e, struct fake_req *q, uint8_t op, const void *pl, size_t n)
{
        struct dp_resp_rec h = { .opcode = op, .client = q->client, .request_id = q->rid };
        return dp_resp_push(e->resp, &h, pl, n);
}

static int fake_tokens(struct fake_engine *e, struct fake_req *q, size_t textlen)
{
        uint8_t ids[4], pl[2048];
        char text[1200];
        dp_id_put(ids, 0, (int32_t)q->sent);
        memset(text, 'a' + q->sent % 26, sizeof(text));
        int tl = snprintf(text, sizeof(text), "tok%u ", q->sent);
        if (textlen > (size_t)tl)
                tl = (int)textlen;
        struct dp_tokens t = { .kind = DP_TOKENS_GENERATED, .n_tokens = 1, .ids = ids,
                               .text = { text, (uint32_t)tl } };
        long n = dp_tokens_encode(pl, sizeof(pl), &t);
        CHECK(n > 0);
        int r = fake_push(e, q, DP_OP_TOKENS, pl, (size_t)n);
        if (r == 0)
                q->sent++;
        return r;
}

static int fake_done(struct fake_engine *e, struct fake_req *q, uint8_t reason)
{
        uint8_t pl[64];
        struct dp_done d = { .reason = reason, .stop_index = DP_STOP_INDEX_NONE,
                             .prompt_tokens = (uint32_t)q->prompt_len, .generated_tokens = q->sent };
        long n = dp_done_encode(pl, sizeof(pl), &d);
        CHECK(n > 0);
        int r = fake_push(e, q, DP_OP_DONE, pl, (size_t)n);
        if (r == 0)
                q->used = false;
        return r;
}

static void *fake_main(void *arg)
{
        struct fake_engine *e = arg;
        while (!atomic_load(&e->stop)) {
                const void *rec;
                size_t len;
                bool did = false;
                while ((rec = dp_ring_peek(e->req, &len))) {
                        const struct dp_req_rec *r = rec;
                        CHECK(len >= sizeof(*r) + r->payload_len); /* + the client's address */
                        unsigned slot = (unsigned)(r->request_id & 255);
                        struct fake_req *q = NULL;
                        for (unsigned i = 0; i < 64; i++)
                                if (e->live[i].used && e->live[i].client == r->client &&
                                    e->live[i].rid == r->request_id)
                                        q = &e->live[i];
                        if (r->kind == DP_REQ_GENERATE || r->kind == DP_REQ_TOKENIZE) {
                                struct dp_generate g;
                                CHECK(r->kind != DP_REQ_GENERATE ||
                                      dp_generate_decode(r->payload, r->payload_len, &g, NULL) == 0);
                                dp_req_peer_format(dp_req_peer(r, len), e->peer[slot], sizeof(e->peer[slot]));
                                atomic_fetch_add(&e->runs[slot], 1);
                                atomic_store(&e->plen[slot], r->kind == DP_REQ_GENERATE ? g.prompt_len : 0);
                                for (unsigned i = 0; i < 64 && !q; i++)
                                        if (!e->live[i].used)
                                                q = &e->live[i];
                                CHECK(q);
                                *q = (struct fake_req){ .used = true, .client = r->client, .rid = r->request_id };
                                if (r->kind == DP_REQ_GENERATE) {
                                        q->prompt_len = g.prompt_len;
                                        if (g.prompt_len == 4 && !memcmp(g.prompt_text, "hold", 4))
                                                q->mode = MODE_HOLD;
                                        if (g.prompt_len == 5 && !memcmp(g.prompt_text, "flood", 5))
                                                q->mode = MODE_FLOOD;
                                }
                        } else {
                                if (r->kind == DP_REQ_CANCEL)
                                        atomic_fetch_add(&e->cancels[slot], 1);
                                else
                                        atomic_fetch_add(&e->gone[slot], 1);
                                if (q)
                                        q->mode = -1; /* finish with DONE cancelled */
                        }
                        dp_ring_release(e->req);
                        did = true;
                }
                for (unsigned i = 0; i < 64; i++) {
                        struct fake_req *q = &e->live[i];
                        if (!q->used)
                                continue;
                        if (q->mode == MODE_NORMAL) {
                                while (q->sent < 3 && fake_tokens(e, q, 0) == 0)
                                        ;
                                if (q->sent == 3)
                                        fake_done(e, q, DP_FINISH_LENGTH);
                        } else if (q->mode == MODE_FLOOD && q->sent < 20000) {
                                for (int k = 0; k < 16 && fake_tokens(e, q, 1000) == 0; k++)
                                        ;
                        } else if (q->mode == -1) {
                                fake_done(e, q, DP_FINISH_CANCELLED);
                        }
                        did = true;
                }
                if (did)
                        e->kick(e->kick_arg);
                else {
                        dp_notify_prepare(&e->wake);
                        if (dp_ring_empty(e->req))
                                dp_notify_wait(&e->wake, 5);
                        else
                                dp_notify_done(&e->wake);
                }
        }
        return NULL;
}

static void fake_start(struct fake_engine *e, struct dp_ring *req, struct dp_ring *resp,
                       void (*kick)(void *), void *arg)
{
        memset(e, 0, sizeof(*e));
        e->req = req, e->resp = resp, e->kick = kick, e->kick_arg = arg;
        CHECK(dp_notify_init(&e->wake, NULL) == 0);
        CHECK(pthread_create(&e->th, NULL, fake_main, e) == 0);
}

static void fake_stop(struct fake_engine *e)
{
        atomic_store(&e->stop, true);
        pthread_join(e->th, NULL);
        dp_notify_destroy(&e->wake);
}

static void fake_load(void *arg, struct dp_load *l)
{
        l->queue_depth = 7;
        l->kv_blocks_total = 100;
        l->kv_blocks_free = 42;
}

static long gen_payload(uint8_t *buf, size_t cap, const char *prompt, size_t plen)
{
        struct dp_generate g = { .max_tokens = 3, .prompt_len = (uint32_t)plen, .prompt_text = prompt };
        g.sampling.top_p = 1.0f;
        g.sampling.repeat_penalty = 1.0f;
        return dp_generate_encode(buf, cap, &g);
}

/* "127.0.0.1:45678" / "[::1]:45678" for a socket's own address, as the server sees it. */
static void sock_name(int fd, char *buf, size_t cap)
{
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        char host[INET6_ADDRSTRLEN];
        CHECK(getsockname(fd, (struct sockaddr *)&ss, &len) == 0);
        if (ss.ss_family == AF_INET) {
                const struct sockaddr_in *a = (const void *)&ss;
                CHECK(inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)));
                snprintf(buf, cap, "%s:%u", host, ntohs(a->sin_port));
        } else {
                const struct sockaddr_in6 *a = (const void *)&ss;
                CHECK(inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)));
                snprintf(buf, cap, "[%s]:%u", host, ntohs(a->sin6_port));
        }
}

static bool wait_readable(int fd, int ms)
{
        struct pollfd p = { .fd = fd, .events = POLLIN };
        return poll(&p, 1, ms) == 1;
}

static bool wait_until(_Atomic unsigned *v, unsigned want, int ms)
{
        for (int i = 0; i < ms; i++) {
                if (atomic_load(v) >= want)
                        return true;
                usleep(1000);
        }
        return atomic_load(v) >= want;
}
