/* udpcore.c — the UDP protocol (docs/protocol.md §5) as the kernel UDP transport and every
 * DPDK lcore run it: datagram validation (CRC required), HELLO and PING answered here,
 * reassembly of fragmented requests, the request table with each request's recent frames
 * for RESEND, the ACK window, the client lease, and the request and response rings. The
 * transport does the I/O (struct dpu_io). Tables and buffers are sized at init. */
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "transport.h"
#include "udpcore.h"

enum { RQ_FREE, RQ_LIVE, RQ_GONE, RQ_DONE };
enum { PEND_CANCEL = 1, PEND_GONE = 2 };

struct dpu_req {
        uint8_t state, pend, kind;
        uint32_t gen;
        uint32_t hnext;          /* hash chain: slot + 1, 0 ends */
        uint64_t rid;
        struct dpu_peer peer;
        uint64_t expire_ns;
        uint32_t next_seq, acked;
};

struct dpu_reasm {
        bool used;
        struct dpu_peer peer;
        uint64_t rid, expire_ns;
        struct dp_reasm r;
};

/* ---- peers and the request table ---- */

static bool peer_eq(const struct dpu_peer *a, const struct sockaddr_storage *b)
{
        if (a->ss.ss_family != b->ss_family)
                return false;
        if (b->ss_family == AF_INET) {
                const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)b;
                return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
        }
        const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, 16) &&
               x->sin6_scope_id == y->sin6_scope_id;
}

static uint32_t key_hash(const struct sockaddr_storage *ss, uint64_t rid)
{
        uint64_t h = rid * 0x9E3779B97F4A7C15ull;
        if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *a = (const void *)ss;
                h ^= ((uint64_t)a->sin_addr.s_addr << 16 | a->sin_port) * 0xC2B2AE3D27D4EB4Full;
        } else {
                const struct sockaddr_in6 *a = (const void *)ss;
                uint64_t w[2];
                memcpy(w, &a->sin6_addr, 16);
                h ^= (w[0] * 0xC2B2AE3D27D4EB4Full) ^ (w[1] + a->sin6_port) * 0x165667B19E3779F9ull;
        }
        h ^= h >> 29;
        return (uint32_t)(h ^ h >> 32);
}

static struct dpu_req *req_find(struct dpu *u, const struct sockaddr_storage *ss, uint64_t rid)
{
        uint32_t i = u->bucket[key_hash(ss, rid) & (u->n_buckets - 1)];
        for (unsigned guard = 0; i && guard < u->n_req; guard++) {
                struct dpu_req *q = &u->req[i - 1];
                if (q->rid == rid && peer_eq(&q->peer, ss))
                        return q;
                i = q->hnext;
        }
        return NULL;
}

static struct dpu_req *req_alloc(struct dpu *u, const struct dpu_peer *p, uint64_t rid)
{
        if (!u->n_free_req)
                return NULL;
        uint32_t slot = u->free_req[--u->n_free_req];
        struct dpu_req *q = &u->req[slot];
        uint32_t b = key_hash(&p->ss, rid) & (u->n_buckets - 1);
        q->gen++;
        q->rid = rid;
        q->peer = *p;
        q->pend = 0;
        q->next_seq = q->acked = 0;
        q->hnext = u->bucket[b];
        u->bucket[b] = slot + 1;
        return q;
}

static void req_free(struct dpu *u, struct dpu_req *q)
{
        uint32_t slot = (uint32_t)(q - u->req);
        uint32_t *pp = &u->bucket[key_hash(&q->peer.ss, q->rid) & (u->n_buckets - 1)];
        for (unsigned guard = 0; *pp && guard < u->n_req; guard++) {
                if (*pp == slot + 1) {
                        *pp = q->hnext;
                        break;
                }
                pp = &u->req[*pp - 1].hnext;
        }
        q->state = RQ_FREE;
        q->gen++;
        u->free_req[u->n_free_req++] = slot;
}

static inline uint64_t req_handle(struct dpu *u, const struct dpu_req *q)
{
        return (uint64_t)q->gen << 32 | (uint32_t)(q - u->req);
}

static struct dpu_req *req_by_handle(struct dpu *u, uint64_t h, uint64_t rid)
{
        uint32_t slot = (uint32_t)h;
        if (slot >= u->n_req)
                return NULL;
        struct dpu_req *q = &u->req[slot];
        if (q->state == RQ_FREE || q->gen != (uint32_t)(h >> 32) || q->rid != rid)
                return NULL;
        return q;
}

static inline uint8_t *hist_frame(struct dpu *u, const struct dpu_req *q, uint32_t seq)
{
        size_t i = (size_t)(q - u->req) * u->hist + seq % u->hist;
        return u->hist_buf + i * DP_MAX_FRAME_UDP;
}
static inline uint16_t *hist_lenp(struct dpu *u, const struct dpu_req *q, uint32_t seq)
{
        return &u->hist_len[(size_t)(q - u->req) * u->hist + seq % u->hist];
}

/* ---- io through the transport ---- */

static void *tx_get(struct dpu *u, uint8_t **buf)
{
        void *t = u->io.tx_get(u->io.ctx, buf);
        if (!t)
                DPT_STAT(&u->st, drop_no_tx_buf, 1);
        return t;
}

static void tx_send(struct dpu *u, void *t, const struct dpu_peer *p, size_t len)
{
        u->io.tx_send(u->io.ctx, t, p, len);
        DPT_STAT(&u->st, tx_frames, 1);
        DPT_STAT(&u->st, tx_bytes, len);
}

/* A control reply (INFO, PONG) framed and sent only if it is no larger than the datagram
 * that asked for it, so an unproven source address cannot be used for amplification. */
static void reply_no_larger(struct dpu *u, const struct dpu_peer *p, uint8_t opcode, uint64_t rid,
                            uint32_t seq, const uint8_t *pl, long n, size_t dlen)
{
        uint8_t *buf;
        void *t = n < 0 ? NULL : tx_get(u, &buf);
        if (!t)
                return;
        struct dp_header h = { .opcode = opcode, .flags = DP_F_CRC, .request_id = rid, .seq = seq,
                               .frag_count = 1 };
        long fl = dp_frame_encode(buf, DP_MAX_FRAME_UDP, DP_MAX_FRAME_UDP, &h, pl, (size_t)n, NULL, NULL);
        if (fl < 0 || (size_t)fl > dlen) {
                u->io.tx_put(u->io.ctx, t);
                return;
        }
        tx_send(u, t, p, (size_t)fl);
}

/* An ERROR to p, never larger than the datagram (dlen bytes) that caused it (§7.2). */
static void send_error(struct dpu *u, const struct dpu_peer *p, size_t dlen, uint64_t rid, int code,
                       bool terminal, uint32_t detail, const char *msg)
{
        uint8_t *buf;
        void *b = tx_get(u, &buf);
        if (!b)
                return;
        long n = dpt_error_frame(buf, SL_MIN(dlen, (size_t)DP_MAX_FRAME_UDP), DP_F_CRC, rid, 0,
                                 code, terminal, detail, msg);
        if (n <= 0) {
                u->io.tx_put(u->io.ctx, b);
                return;
        }
        DPT_STAT(&u->st, errors_sent, 1);
        tx_send(u, b, p, (size_t)n);
}

static int push_ctl(struct dpu *u, struct dpu_req *q, uint8_t kind)
{
        struct dp_req_rec h = { .kind = kind, .transport = u->cfg.index, .client = req_handle(u, q),
                                .request_id = q->rid, .rx_ns = sl_now_ns() };
        if (dp_req_push_peer(u->cfg.req_ring, &h, NULL, 0, (const struct sockaddr *)&q->peer.ss,
                             q->peer.len) < 0) {
                q->pend |= kind == DP_REQ_CANCEL ? PEND_CANCEL : PEND_GONE;
                return -ENOBUFS;
        }
        q->pend &= (uint8_t)~(kind == DP_REQ_CANCEL ? PEND_CANCEL : PEND_GONE);
        u->pushed = true;
        return 0;
}

/* ---- cookies (docs/protocol.md §7.2) ----
 * cookie = bucket (u32) | 0 (u32) | HMAC-SHA256(K_bucket, family | address)[0, 24), where
 * K_bucket = HMAC-SHA256(secret, "sluice cookie" | bucket): the key rotates with the bucket,
 * the server keeps no state per client, and a cookie proves that its holder received at
 * that address (the port is left out: a NAT may move it, and what is protected is the
 * address). Accepted in its bucket and the next, so it lives one to two bucket lengths. */

#define CK_MAC_LEN (DP_COOKIE_SIZE - 8)

static uint32_t ck_bucket_at(const struct dpu *u, uint64_t now)
{
        return (uint32_t)(now / u->ck_bucket_ns);
}

static const crypto_auth_hmacsha256_state *ck_key(struct dpu *u, uint32_t b)
{
        unsigned i = b & 1;
        if (!u->ck_ready[i] || u->ck_bucket[i] != b) {
                static const char label[] = "sluice cookie";
                uint8_t k[crypto_auth_hmacsha256_BYTES], bl[4] = {(uint8_t)b, (uint8_t)(b >> 8),
                                                                  (uint8_t)(b >> 16), (uint8_t)(b >> 24)};
                crypto_auth_hmacsha256_state st;
                crypto_auth_hmacsha256_init(&st, u->cfg.cookie_secret, DP_COOKIE_SECRET_SIZE);
                crypto_auth_hmacsha256_update(&st, (const uint8_t *)label, sizeof(label) - 1);
                crypto_auth_hmacsha256_update(&st, bl, 4);
                crypto_auth_hmacsha256_final(&st, k);
                crypto_auth_hmacsha256_init(&u->ck_key[i], k, sizeof(k));
                sodium_memzero(k, sizeof(k));
                sodium_memzero(&st, sizeof(st));
                u->ck_bucket[i] = b;
                u->ck_ready[i] = true;
        }
        return &u->ck_key[i];
}

static void ck_mac(struct dpu *u, const struct dpu_peer *p, uint32_t b, uint8_t out[CK_MAC_LEN])
{
        const struct sockaddr_storage *ss = &p->ss;
        uint8_t m[1 + 16], mac[crypto_auth_hmacsha256_BYTES];
        size_t n;
        if (ss->ss_family == AF_INET6 &&
            !IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr)) {
                m[0] = 6;
                memcpy(m + 1, &((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr, 16);
                n = 17;
        } else { /* IPv4, or IPv4-mapped: the same client either way */
                m[0] = 4;
                if (ss->ss_family == AF_INET6)
                        memcpy(m + 1, ((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr.s6_addr + 12, 4);
                else
                        memcpy(m + 1, &((const struct sockaddr_in *)(const void *)ss)->sin_addr, 4);
                n = 5;
        }
        crypto_auth_hmacsha256_state st = *ck_key(u, b);
        crypto_auth_hmacsha256_update(&st, m, n);
        crypto_auth_hmacsha256_final(&st, mac);
        memcpy(out, mac, CK_MAC_LEN);
}

/* 0: valid for p now; -1: missing; -2: expired, from the future, or not p's. */
static int ck_check(struct dpu *u, const struct dpu_peer *p, const uint8_t *cookie, uint64_t now)
{
        if (!cookie)
                return -1;
        uint32_t b, z, cur = ck_bucket_at(u, now);
        memcpy(&b, cookie, 4);
        memcpy(&z, cookie + 4, 4);
        if (z || (b != cur && b + 1 != cur))
                return -2;
        uint8_t mac[CK_MAC_LEN];
        ck_mac(u, p, b, mac);
        return sodium_memcmp(mac, cookie + 8, CK_MAC_LEN) == 0 ? 0 : -2;
}

/* A COOKIE for p, in answer to request rid, if it fits in budget bytes: the frame's length,
 * or 0 when nothing was sent. */
static size_t send_cookie(struct dpu *u, const struct dpu_peer *p, uint64_t rid, uint64_t now, size_t budget)
{
        uint8_t c[DP_COOKIE_SIZE] = {0}, pl[8 + DP_COOKIE_SIZE], *buf;
        uint32_t b = ck_bucket_at(u, now);
        uint64_t end_ns = ((uint64_t)b + 2) * u->ck_bucket_ns; /* accepted until the next bucket ends */
        memcpy(c, &b, 4);
        ck_mac(u, p, b, c + 8);
        struct dp_cookie ck = {.lifetime_ms = (uint32_t)((end_ns - now) / 1000000u), .cookie = c};
        long n = dp_cookie_encode(pl, sizeof(pl), &ck);
        if (n < 0 || (size_t)n + DP_HEADER_SIZE > budget)
                return 0;
        void *t = tx_get(u, &buf);
        if (!t)
                return 0;
        struct dp_header h = {.opcode = DP_OP_COOKIE, .flags = DP_F_CRC, .request_id = rid, .frag_count = 1};
        long fl = dp_frame_encode(buf, DP_MAX_FRAME_UDP, DP_MAX_FRAME_UDP, &h, pl, (size_t)n, NULL, NULL);
        if (fl < 0 || (size_t)fl > budget) {
                u->io.tx_put(u->io.ctx, t);
                return 0;
        }
        DPT_STAT(&u->st, cookies_sent, 1);
        tx_send(u, t, p, (size_t)fl);
        return (size_t)fl;
}

/* ---- client frames ---- */

static bool header_intact(const uint8_t *b, size_t len)
{
        uint32_t magic, plen, crc;
        uint16_t flags;
        if (len < DP_HEADER_SIZE)
                return false;
        memcpy(&magic, b, 4);
        memcpy(&flags, b + 6, 2);
        memcpy(&plen, b + 20, 4);
        memcpy(&crc, b + 28, 4);
        if (magic != DP_MAGIC || b[4] != DP_VERSION || !(flags & DP_F_CRC) || (flags & ~DP_F_ALL))
                return false;
        if ((uint64_t)DP_HEADER_SIZE + plen + dp_trailers_size(flags) != len)
                return false;
        return dp_frame_crc(b, len) == crc;
}

static void renew(struct dpu *u, struct dpu_req *q, uint64_t now)
{
        if (q && q->state == RQ_LIVE)
                q->expire_ns = now + u->lease_ns;
}

static void on_request(struct dpu *u, const struct dpu_peer *p, const struct dp_frame *f, size_t dlen,
                       uint64_t now)
{
        struct dpu_req *q = req_find(u, &p->ss, f->h.request_id);
        struct dpu_reasm *ra = NULL;
        struct sl_error err;
        const uint8_t *msg = f->payload;
        size_t mlen = f->h.payload_len;
        union dp_msg m;
        int rc;

        if (q) { /* §5.3: not run twice; the client recovers with RESEND */
                DPT_STAT(&u->st, duplicates, 1);
                renew(u, q, now);
                return;
        }
        if (f->h.frag_count > 1) {
                struct dpu_reasm *freeslot = NULL;
                for (unsigned i = 0; i < u->n_reasm; i++) {
                        struct dpu_reasm *r = &u->reasm[i];
                        if (r->used && r->rid == f->h.request_id && peer_eq(&r->peer, &p->ss)) {
                                ra = r;
                                break;
                        }
                        if (!r->used && !freeslot)
                                freeslot = r;
                }
                if (!ra) {
                        if (!freeslot) {
                                DPT_STAT(&u->st, drop_table_full, 1);
                                send_error(u, p, dlen, f->h.request_id, DP_ERR_BUSY, true, 0,
                                           "too many partial requests");
                                return;
                        }
                        ra = freeslot;
                        ra->used = true;
                        ra->peer = *p;
                        ra->rid = f->h.request_id;
                        dp_reasm_init(&ra->r, u->reasm_buf + (size_t)(ra - u->reasm) * DP_MAX_MESSAGE,
                                      DP_MAX_MESSAGE);
                }
                ra->expire_ns = now + u->lease_ns;
                rc = dp_reasm_add(&ra->r, f, &err);
                if (rc == 0)
                        return;
                if (rc < 0) {
                        ra->used = false;
                        DPT_STAT(&u->st, malformed, 1);
                        send_error(u, p, dlen, f->h.request_id, -rc, true, 0, err.msg);
                        return;
                }
                msg = ra->r.buf;
                mlen = ra->r.total;
        }
        rc = dp_msg_decode(f->h.opcode, msg, mlen, &m, &err);
        if (rc < 0) {
                DPT_STAT(&u->st, malformed, 1);
                send_error(u, p, dlen, f->h.request_id, -rc, true, 0, err.msg);
                goto out;
        }
        q = req_alloc(u, p, f->h.request_id);
        if (!q) {
                DPT_STAT(&u->st, drop_table_full, 1);
                send_error(u, p, dlen, f->h.request_id, DP_ERR_BUSY, true, 100, "request table full");
                goto out;
        }
        struct dp_req_rec h = {
                .kind = f->h.opcode == DP_OP_GENERATE ? DP_REQ_GENERATE : DP_REQ_TOKENIZE,
                .transport = u->cfg.index, .client = req_handle(u, q),
                .request_id = f->h.request_id, .rx_ns = now,
        };
        dp_req_set_key(&h, u->key);
        if (u->io.push(u->io.ctx, &h, msg, mlen, p) < 0) {
                req_free(u, q);
                DPT_STAT(&u->st, drop_ring_full, 1);
                send_error(u, p, dlen, f->h.request_id, DP_ERR_BUSY, true, 100, "request ring full");
                goto out;
        }
        q->state = RQ_LIVE;
        q->kind = h.kind;
        q->expire_ns = now + u->lease_ns;
        u->pushed = true;
        DPT_STAT(&u->st, requests, 1);
out:
        if (ra)
                ra->used = false;
}

static void on_resend(struct dpu *u, const struct dpu_peer *p, struct dpu_req *q, const struct dp_resend *rs,
                      size_t dlen)
{
        uint32_t lo = q->next_seq > u->hist ? q->next_seq - u->hist : 0;
        uint64_t missing = UINT64_MAX;
        unsigned budget = u->hist;

        for (unsigned i = 0; i < rs->n_ranges && budget; i++) {
                uint64_t first = rs->r[i].first;
                uint64_t end = rs->r[i].count ? first + rs->r[i].count : q->next_seq;
                end = SL_MIN(end, (uint64_t)q->next_seq); /* not sent yet: it will come */
                if (first < lo && first < end) {
                        if (missing == UINT64_MAX)
                                missing = first;
                        first = lo;
                }
                for (uint64_t s = first; s < end && budget; s++, budget--) {
                        uint8_t *buf;
                        void *b = tx_get(u, &buf);
                        if (!b)
                                return;
                        uint16_t n = *hist_lenp(u, q, (uint32_t)s);
                        memcpy(buf, hist_frame(u, q, (uint32_t)s), n);
                        DPT_STAT(&u->st, resent, 1);
                        tx_send(u, b, p, n);
                }
        }
        if (missing != UINT64_MAX) {
                DPT_STAT(&u->st, resend_missing, 1);
                send_error(u, p, dlen, q->rid, DP_ERR_NOT_FOUND, false, (uint32_t)missing,
                           "frames no longer held");
        }
}

/* The request a RESEND or ACK names, its lease renewed; NOT_FOUND to the client if none. */
static struct dpu_req *named_request(struct dpu *u, const struct dpu_peer *p, size_t dlen, uint64_t rid,
                                     uint64_t now)
{
        struct dpu_req *q = req_find(u, &p->ss, rid);
        if (!q)
                send_error(u, p, dlen, rid, DP_ERR_NOT_FOUND, false, 0, "unknown request id");
        renew(u, q, now);
        return q;
}

void dpu_on_datagram(struct dpu *u, const struct dpu_peer *p, const uint8_t *buf, size_t dlen, uint64_t now)
{
        struct sl_error err;
        struct dp_frame f;
        union dp_msg m;
        int rc;

        DPT_STAT(&u->st, rx_frames, 1);
        DPT_STAT(&u->st, rx_bytes, dlen);
        u->key = NULL;
        if (!dp_allow_match(u->cfg.allow, (const struct sockaddr *)&p->ss)) {
                DPT_STAT(&u->st, denied, 1); /* not a network we serve: no answer at all */
                return;
        }
        rc = dp_frame_decode(buf, dlen, DP_MAX_FRAME_UDP, DP_DECODE_REQUIRE_CRC, &f, &err);
        if (rc == 0 && u->auth.ctx) {
                /* §7: not from a key holder: counted, and nothing goes back (a spoofed
                 * source must not get even an ERROR) */
                dpt_auth_enter(&u->auth);
                if (dpt_auth_check(&u->auth, buf, &f, &u->key, &err) < 0) {
                        DPT_STAT(&u->st, unauthenticated, 1);
                        return;
                }
        }
        if (rc < 0) {
                uint64_t rid = 0;
                DPT_STAT(&u->st, malformed, 1);
                if (-rc == DP_ERR_BAD_CRC || (-rc == DP_ERR_BAD_FRAME && !header_intact(buf, dlen))) {
                        DPT_STAT(&u->st, drop_bad_crc, 1); /* §8: nothing in it can be trusted */
                        return;
                }
                if (dlen >= 16)
                        memcpy(&rid, buf + 8, 8);
                uint32_t detail = -rc == DP_ERR_BAD_VERSION ? DP_VERSION
                                : -rc == DP_ERR_TOO_LARGE ? (dlen > DP_MAX_FRAME_UDP ? DP_MAX_FRAME_UDP : DP_MAX_MESSAGE)
                                : 0;
                send_error(u, p, dlen, rid, -rc, false, detail, err.msg);
                return;
        }
        uint64_t rid = f.h.request_id;
        struct dpu_req *q;
        if (u->cfg.cookies && !u->key && dp_opcode_from_client(f.h.opcode) && f.h.opcode != DP_OP_HELLO &&
            f.h.opcode != DP_OP_PING) {
                /* §7.2: the source has not proven it receives at this address. What goes
                 * back is no larger than what came: a fresh COOKIE (the client sends again
                 * with it), or an ERROR cut to size, or nothing. */
                int ck = ck_check(u, p, f.cookie, now);
                if (ck < 0) {
                        DPT_STAT(&u->st, cookie_missing, ck == -1);
                        DPT_STAT(&u->st, cookie_bad, ck == -2);
                        if (!send_cookie(u, p, rid, now, dlen))
                                send_error(u, p, dlen, rid, DP_ERR_UNAUTHENTICATED, false, DP_UNAUTH_DETAIL_COOKIE,
                                           ck == -1 ? "cookie required: send HELLO" : "cookie expired: send HELLO");
                        return;
                }
        }
        switch (f.h.opcode) {
        case DP_OP_HELLO: {
                if (dlen < DP_UDP_HELLO_MIN) {
                        DPT_STAT(&u->st, drop_short_hello, 1);
                        return;
                }
                rc = dp_hello_decode(f.payload, f.h.payload_len, &m.hello, &err);
                if (rc < 0)
                        break;
                struct dp_info info;
                uint8_t pl[512];
                size_t budget = dlen; /* COOKIE and INFO together stay within the HELLO */
                if (u->cfg.cookies && !u->key)
                        budget -= send_cookie(u, p, rid, now, budget);
                dpt_fill_info(&u->cfg, &info, DP_MAX_FRAME_UDP, (uint32_t)(u->lease_ns / 1000000));
                long n = dp_info_encode(pl, sizeof(pl), &info);
                reply_no_larger(u, p, DP_OP_INFO, rid, f.h.seq, pl, n, budget);
                return;
        }
        case DP_OP_PING: {
                rc = dp_ping_decode(f.payload, f.h.payload_len, &m.ping, &err);
                if (rc < 0)
                        break;
                renew(u, req_find(u, &p->ss, rid), now);
                struct dp_pong pong = { .token = m.ping.token };
                dpt_load(&u->cfg, &pong.load);
                uint8_t pl[64];
                long n = dp_pong_encode(pl, sizeof(pl), &pong);
                reply_no_larger(u, p, DP_OP_PONG, rid, f.h.seq, pl, n, dlen);
                return;
        }
        case DP_OP_GENERATE:
        case DP_OP_TOKENIZE:
                on_request(u, p, &f, dlen, now);
                return;
        case DP_OP_CANCEL:
                rc = dp_cancel_decode(f.payload, f.h.payload_len, &err);
                if (rc < 0)
                        break;
                q = req_find(u, &p->ss, rid);
                if (q) {
                        if (q->state == RQ_LIVE) {
                                renew(u, q, now);
                                push_ctl(u, q, DP_REQ_CANCEL);
                        }
                        return; /* over already: harmless (§5.3) */
                }
                for (unsigned i = 0; i < u->n_reasm; i++)
                        if (u->reasm[i].used && u->reasm[i].rid == rid && peer_eq(&u->reasm[i].peer, &p->ss)) {
                                u->reasm[i].used = false;
                                return;
                        }
                send_error(u, p, dlen, rid, DP_ERR_NOT_FOUND, false, 0, "unknown request id");
                return;
        case DP_OP_RESEND:
                rc = dp_resend_decode(f.payload, f.h.payload_len, &m.resend, &err);
                if (rc < 0)
                        break;
                if ((q = named_request(u, p, dlen, rid, now)))
                        on_resend(u, p, q, &m.resend, dlen);
                return;
        case DP_OP_ACK:
                rc = dp_ack_decode(f.payload, f.h.payload_len, &m.ack, &err);
                if (rc < 0)
                        break;
                if (!(q = named_request(u, p, dlen, rid, now)))
                        return;
                if (m.ack.next_seq > q->acked)
                        q->acked = SL_MIN(m.ack.next_seq, q->next_seq);
                if (q->state == RQ_DONE && q->acked == q->next_seq)
                        req_free(u, q); /* the client has the whole stream: §5.3 */
                return;
        default:
                rc = -DP_ERR_UNKNOWN_OPCODE;
                sl_errorf(&err, rc, "opcode %s is not sent by clients", dp_opcode_name(f.h.opcode));
                break;
        }
        DPT_STAT(&u->st, malformed, 1);
        send_error(u, p, dlen, rid, -rc, false, 0, err.msg);
}

/* ---- engine responses ---- */

unsigned dpu_drain_responses(struct dpu *u, uint64_t now)
{
        const void *rec;
        size_t len;
        unsigned done = 0;

        while ((rec = dp_ring_peek(u->cfg.resp_ring, &len))) {
                const struct dp_resp_rec *rr = rec;
                struct dpu_req *q = NULL;
                if (len >= sizeof(*rr) && rr->payload_len <= len - sizeof(*rr))
                        q = req_by_handle(u, rr->client, rr->request_id);
                if (!q || q->state == RQ_DONE) {
                        DPT_STAT(&u->st, drop_stale_resp, 1);
                        dp_ring_release(u->cfg.resp_ring);
                        continue;
                }
                uint8_t *buf;
                void *b = u->io.tx_get(u->io.ctx, &buf);
                if (!b)
                        break; /* no transmit buffer now: the record waits for the next round */
                bool terminal = rr->opcode == DP_OP_DONE ||
                                (rr->opcode == DP_OP_ERROR && rr->payload_len >= 3 &&
                                 (rr->payload[2] & DP_ERRF_TERMINAL));
                uint32_t seq = q->next_seq;
                uint8_t *hb = hist_frame(u, q, seq);
                struct dp_header h = { .opcode = rr->opcode, .flags = DP_F_CRC, .request_id = q->rid,
                                       .seq = seq, .frag_count = 1 };
                long n = -EINVAL;
                if (seq - q->acked >= u->hist) {
                        /* The slot holds a frame the client has not acknowledged: overwriting
                         * it could lose data silently. A client that falls a whole window
                         * behind loses this request instead, with a reason (docs/protocol.md
                         * §5.2), as a slow TCP reader does. */
                        DPT_STAT(&u->st, window_full, 1);
                        n = dpt_error_frame(hb, DP_MAX_FRAME_UDP, DP_F_CRC, q->rid, seq, DP_ERR_CANCELLED,
                                            true, q->acked, "client did not acknowledge the stream");
                        if (!terminal && q->state == RQ_LIVE)
                                push_ctl(u, q, DP_REQ_CANCEL);
                        terminal = true;
                } else if (rr->opcode == DP_OP_TOKENS || terminal) {
                        n = dp_frame_encode(hb, DP_MAX_FRAME_UDP, DP_MAX_FRAME_UDP, &h, rr->payload,
                                            rr->payload_len, NULL, NULL);
                }
                if (n < 0) {
                        /* the engine broke the contract (too large, bad opcode): end the stream
                         * for the client, and tell the engine to stop */
                        n = dpt_error_frame(hb, DP_MAX_FRAME_UDP, DP_F_CRC, q->rid, seq, DP_ERR_INTERNAL,
                                            true, 0, "response does not fit a UDP frame");
                        if (!terminal && q->state == RQ_LIVE)
                                push_ctl(u, q, DP_REQ_CANCEL);
                        terminal = true;
                }
                dp_ring_release(u->cfg.resp_ring);
                *hist_lenp(u, q, seq) = (uint16_t)n;
                q->next_seq++;
                if (terminal) {
                        q->state = RQ_DONE;
                        q->expire_ns = now + u->lease_ns;
                }
                memcpy(buf, hb, (size_t)n);
                tx_send(u, b, &q->peer, (size_t)n);
                done++;
        }
        return done;
}

void dpu_tick(struct dpu *u, uint64_t now)
{
        for (unsigned i = 0; i < u->n_req; i++) {
                struct dpu_req *q = &u->req[i];
                if (q->state == RQ_FREE)
                        continue;
                if (q->pend & PEND_GONE)
                        push_ctl(u, q, DP_REQ_CLIENT_GONE);
                if (q->pend & PEND_CANCEL)
                        push_ctl(u, q, DP_REQ_CANCEL);
                if (now < q->expire_ns)
                        continue;
                if (q->state == RQ_LIVE) {
                        /* §5.4: silent client; the engine ends the stream, we keep the slot
                         * one more lease for its last frames and late RESENDs */
                        DPT_STAT(&u->st, leases_expired, 1);
                        q->state = RQ_GONE;
                        q->expire_ns = now + 2 * u->lease_ns;
                        push_ctl(u, q, DP_REQ_CLIENT_GONE);
                } else {
                        req_free(u, q);
                }
        }
        for (unsigned i = 0; i < u->n_reasm; i++)
                if (u->reasm[i].used && now >= u->reasm[i].expire_ns) {
                        u->reasm[i].used = false;
                        DPT_STAT(&u->st, reasm_timeouts, 1);
                }
}

/* ---- lifecycle ---- */

int dpu_init(struct dpu *u, const struct dp_transport_config *cfg, const struct dpu_io *io,
             struct sl_error *err)
{
        memset(u, 0, sizeof(*u));
        u->cfg = *cfg;
        u->io = *io;
        u->n_req = cfg->max_requests ? cfg->max_requests : 256;
        u->hist = cfg->history ? cfg->history : 64;
        u->n_reasm = cfg->max_reasm ? cfg->max_reasm : 16;
        u->lease_ns = (uint64_t)(cfg->lease_ms ? cfg->lease_ms : 10000) * 1000000ull;
        if (u->n_req > (1u << 20) || u->hist > 4096 || u->n_reasm > 1024)
                return sl_errorf(err, -EINVAL, "udp: table sizes out of range");
        for (u->n_buckets = 16; u->n_buckets < 2 * u->n_req; u->n_buckets *= 2)
                ;
        u->req = calloc(u->n_req, sizeof(*u->req));
        u->bucket = calloc(u->n_buckets, sizeof(*u->bucket));
        u->free_req = calloc(u->n_req, sizeof(*u->free_req));
        u->hist_buf = malloc((size_t)u->n_req * u->hist * DP_MAX_FRAME_UDP);
        u->hist_len = calloc((size_t)u->n_req * u->hist, sizeof(*u->hist_len));
        u->reasm = calloc(u->n_reasm, sizeof(*u->reasm));
        u->reasm_buf = malloc((size_t)u->n_reasm * DP_MAX_MESSAGE);
        if (!u->req || !u->bucket || !u->free_req || !u->hist_buf || !u->hist_len || !u->reasm || !u->reasm_buf) {
                unsigned n = u->n_req, h = u->hist;
                dpu_destroy(u);
                return sl_errorf(err, -ENOMEM, "udp: out of memory for %u requests x %u frames", n, h);
        }
        u->ck_bucket_ns = (uint64_t)(cfg->cookie_bucket_ms ? cfg->cookie_bucket_ms : DP_COOKIE_BUCKET_MS_DEFAULT) *
                          1000000ull;
        if (cfg->cookies && sodium_is_zero(cfg->cookie_secret, DP_COOKIE_SECRET_SIZE)) {
                if (sodium_init() < 0) {
                        dpu_destroy(u);
                        return sl_errorf(err, -EIO, "udp: libsodium failed to start");
                }
                randombytes_buf(u->cfg.cookie_secret, DP_COOKIE_SECRET_SIZE);
        }
        int r = dpt_auth_init(&u->auth, cfg->auth, &u->st.auth, err);
        if (r < 0) {
                dpu_destroy(u);
                return r;
        }
        /* every page now: resident memory does not grow while serving */
        memset(u->hist_buf, 0, (size_t)u->n_req * u->hist * DP_MAX_FRAME_UDP);
        memset(u->reasm_buf, 0, (size_t)u->n_reasm * DP_MAX_MESSAGE);
        dpu_reset(u);
        return 0;
}

void dpu_reset(struct dpu *u)
{
        memset(u->req, 0, u->n_req * sizeof(*u->req));
        memset(u->bucket, 0, u->n_buckets * sizeof(*u->bucket));
        for (unsigned i = 0; i < u->n_req; i++)
                u->free_req[i] = u->n_req - 1 - i;
        u->n_free_req = u->n_req;
        for (unsigned i = 0; i < u->n_reasm; i++)
                u->reasm[i].used = false;
}

void dpu_destroy(struct dpu *u)
{
        dpt_auth_free(&u->auth);
        sodium_memzero(u->cfg.cookie_secret, DP_COOKIE_SECRET_SIZE);
        sodium_memzero(u->ck_key, sizeof(u->ck_key));
        free(u->req);
        free(u->bucket);
        free(u->free_req);
        free(u->hist_buf);
        free(u->hist_len);
        free(u->reasm);
        free(u->reasm_buf);
        u->req = NULL, u->bucket = NULL, u->free_req = NULL, u->hist_buf = NULL;
        u->hist_len = NULL, u->reasm = NULL, u->reasm_buf = NULL;
}

void dpu_stats(const struct dpu *u, struct dp_transport_stats *out)
{
        const _Atomic uint64_t *s = (const _Atomic uint64_t *)&u->st;
        uint64_t *d = (uint64_t *)out;
        for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
                d[i] = atomic_load_explicit(&s[i], memory_order_relaxed);
}
