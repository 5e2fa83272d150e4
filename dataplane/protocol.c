/* protocol.c — the sluice wire protocol v1 codec (docs/protocol.md): frame header and
 * trailers, fragmentation and reassembly of requests, and every opcode's payload. Decoders
 * treat their input as hostile: each read is checked against what remains, counts against
 * the limits, sums in 64 bits. Encoders check their output with the decoder, so that what
 * one side sends the other accepts. */
#include <errno.h>
#include <math.h>

#include "dataplane.h"

/* ---- little-endian cursors ---- */

struct rd {
        const uint8_t *p;
        size_t left;
};

static bool rd_bytes(struct rd *r, size_t n, const uint8_t **v)
{
        if (r->left < n)
                return false;
        *v = r->p;
        r->p += n;
        r->left -= n;
        return true;
}

static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t ld32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t ld64(const uint8_t *p) { return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32; }

static bool rd_u8(struct rd *r, uint8_t *v)
{
        const uint8_t *p;
        if (!rd_bytes(r, 1, &p))
                return false;
        *v = p[0];
        return true;
}

static bool rd_u16(struct rd *r, uint16_t *v)
{
        const uint8_t *p;
        if (!rd_bytes(r, 2, &p))
                return false;
        *v = ld16(p);
        return true;
}

static bool rd_u32(struct rd *r, uint32_t *v)
{
        const uint8_t *p;
        if (!rd_bytes(r, 4, &p))
                return false;
        *v = ld32(p);
        return true;
}

static bool rd_u64(struct rd *r, uint64_t *v)
{
        const uint8_t *p;
        if (!rd_bytes(r, 8, &p))
                return false;
        *v = ld64(p);
        return true;
}

static bool rd_i32(struct rd *r, int32_t *v)
{
        uint32_t u;
        if (!rd_u32(r, &u))
                return false;
        *v = (int32_t)u;
        return true;
}

static bool rd_f32(struct rd *r, float *v)
{
        uint32_t u;
        if (!rd_u32(r, &u))
                return false;
        memcpy(v, &u, 4);
        return true;
}

struct wr {
        uint8_t *p;
        size_t cap;
        size_t n;
        bool full; /* something did not fit */
};

/* Returns where to write n bytes, or NULL (and remembers the overflow) when they do not fit. */
static uint8_t *wr_take(struct wr *w, size_t n)
{
        if (w->full || w->cap - w->n < n) {
                w->full = true;
                return NULL;
        }
        uint8_t *p = w->p + w->n;
        w->n += n;
        return p;
}

static void st16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void st32(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}
static void st64(uint8_t *p, uint64_t v) { st32(p, (uint32_t)v), st32(p + 4, (uint32_t)(v >> 32)); }

static void wr_u8(struct wr *w, uint8_t v) { uint8_t *p = wr_take(w, 1); if (p) p[0] = v; }
static void wr_u16(struct wr *w, uint16_t v) { uint8_t *p = wr_take(w, 2); if (p) st16(p, v); }
static void wr_u32(struct wr *w, uint32_t v) { uint8_t *p = wr_take(w, 4); if (p) st32(p, v); }
static void wr_u64(struct wr *w, uint64_t v) { uint8_t *p = wr_take(w, 8); if (p) st64(p, v); }
static void wr_f32(struct wr *w, float v) { uint32_t u; memcpy(&u, &v, 4); wr_u32(w, u); }
static void wr_bytes(struct wr *w, const void *src, size_t n)
{
        uint8_t *p = wr_take(w, n);
        if (p && n)
                memcpy(p, src, n);
}
static void wr_zero(struct wr *w, size_t n)
{
        uint8_t *p = wr_take(w, n);
        if (p && n)
                memset(p, 0, n);
}

static long wr_done(const struct wr *w) { return w->full ? -ENOSPC : (long)w->n; }

#define TRUNC(err, what) sl_errorf(err, -DP_ERR_BAD_FRAME, "%s: payload truncated", what)

static bool all_zero(const uint8_t *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (p[i])
                        return false;
        return true;
}

/* ---- names and rules ---- */

static const char *const op_names[] = {
        [DP_OP_HELLO] = "HELLO", [DP_OP_INFO] = "INFO", [DP_OP_GENERATE] = "GENERATE",
        [DP_OP_TOKENS] = "TOKENS", [DP_OP_DONE] = "DONE", [DP_OP_ERROR] = "ERROR",
        [DP_OP_CANCEL] = "CANCEL", [DP_OP_PING] = "PING", [DP_OP_PONG] = "PONG",
        [DP_OP_TOKENIZE] = "TOKENIZE", [DP_OP_RESEND] = "RESEND", [DP_OP_ACK] = "ACK",
        [DP_OP_COOKIE] = "COOKIE",
};

const char *dp_opcode_name(uint8_t opcode)
{
        return opcode < SL_ARRAY_SIZE(op_names) && op_names[opcode] ? op_names[opcode] : "?";
}

static const char *const err_names[] = {
        [DP_ERR_BAD_FRAME] = "BAD_FRAME", [DP_ERR_BAD_VERSION] = "BAD_VERSION",
        [DP_ERR_BAD_CRC] = "BAD_CRC", [DP_ERR_UNKNOWN_OPCODE] = "UNKNOWN_OPCODE",
        [DP_ERR_TOO_LARGE] = "TOO_LARGE", [DP_ERR_PROMPT_TOO_LONG] = "PROMPT_TOO_LONG",
        [DP_ERR_BAD_PARAM] = "BAD_PARAM", [DP_ERR_BUSY] = "BUSY", [DP_ERR_NOT_FOUND] = "NOT_FOUND",
        [DP_ERR_CANCELLED] = "CANCELLED", [DP_ERR_DEADLINE] = "DEADLINE",
        [DP_ERR_INTERNAL] = "INTERNAL", [DP_ERR_UNAUTHENTICATED] = "UNAUTHENTICATED",
        [DP_ERR_RATE_LIMITED] = "RATE_LIMITED", [DP_ERR_SHUTTING_DOWN] = "SHUTTING_DOWN",
};

const char *dp_err_name(int code)
{
        if (code < 0)
                code = -code;
        return code < (int)SL_ARRAY_SIZE(err_names) && err_names[code] ? err_names[code] : "?";
}

static const char *const finish_names[] = {
        [DP_FINISH_NONE] = "none", [DP_FINISH_EOS] = "eos", [DP_FINISH_LENGTH] = "length",
        [DP_FINISH_STOP] = "stop", [DP_FINISH_CANCELLED] = "cancelled",
        [DP_FINISH_DEADLINE] = "deadline", [DP_FINISH_CONTEXT] = "context",
};

const char *dp_finish_name(uint8_t reason)
{
        return reason < SL_ARRAY_SIZE(finish_names) ? finish_names[reason] : "?";
}

bool dp_opcode_from_client(uint8_t op)
{
        return op == DP_OP_HELLO || op == DP_OP_GENERATE || op == DP_OP_CANCEL || op == DP_OP_PING ||
               op == DP_OP_TOKENIZE || op == DP_OP_RESEND || op == DP_OP_ACK;
}

bool dp_opcode_fragmentable(uint8_t op)
{
        return op == DP_OP_GENERATE || op == DP_OP_TOKENIZE;
}

/* Opcodes that name a request: id 0 is reserved for frames that do not. */
static bool needs_request_id(uint8_t op)
{
        return op == DP_OP_GENERATE || op == DP_OP_TOKENIZE || op == DP_OP_CANCEL ||
               op == DP_OP_RESEND || op == DP_OP_ACK || op == DP_OP_TOKENS || op == DP_OP_DONE;
}

bool dp_utf8_valid(const void *s, size_t len)
{
        const uint8_t *p = s, *end = p + len;
        while (p < end) {
                uint8_t c = *p;
                if (c < 0x80) {
                        p++;
                        continue;
                }
                size_t n;
                uint32_t min, cp;
                if ((c & 0xe0) == 0xc0)
                        n = 2, min = 0x80, cp = c & 0x1f;
                else if ((c & 0xf0) == 0xe0)
                        n = 3, min = 0x800, cp = c & 0x0f;
                else if ((c & 0xf8) == 0xf0)
                        n = 4, min = 0x10000, cp = c & 0x07;
                else
                        return false;
                if ((size_t)(end - p) < n)
                        return false;
                for (size_t i = 1; i < n; i++) {
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                        cp = cp << 6 | (p[i] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
                p += n;
        }
        return true;
}

/* ---- frame header ---- */

size_t dp_trailers_size(uint16_t flags)
{
        return (flags & DP_F_COOKIE ? DP_COOKIE_SIZE : 0) + (flags & DP_F_AUTH ? DP_AUTH_SIZE : 0);
}

/* The rules on header fields that do not depend on the bytes around them. */
static int header_rules(const struct dp_header *h, struct sl_error *err)
{
        if (h->flags & ~DP_F_ALL)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "unknown header flags 0x%x", h->flags & ~DP_F_ALL);
        if (h->opcode == 0 || h->opcode > DP_OP_MAX)
                return sl_errorf(err, -DP_ERR_UNKNOWN_OPCODE, "unknown opcode 0x%02x", h->opcode);
        if (needs_request_id(h->opcode) && h->request_id == 0)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "%s with request id 0", dp_opcode_name(h->opcode));
        if (h->frag_count == 0)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "fragment count 0");
        if (h->frag_count > DP_MAX_FRAGMENTS)
                return sl_errorf(err, -DP_ERR_TOO_LARGE, "fragment count %u over the limit %u",
                                 h->frag_count, DP_MAX_FRAGMENTS);
        if (h->frag_index >= h->frag_count)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "fragment index %u not below count %u",
                                 h->frag_index, h->frag_count);
        if (!dp_opcode_fragmentable(h->opcode)) {
                if (h->frag_count != 1)
                        return sl_errorf(err, -DP_ERR_BAD_FRAME, "%s cannot be fragmented",
                                         dp_opcode_name(h->opcode));
                return 0;
        }
        /* GENERATE, TOKENIZE: seq is the fragment's byte offset in the message */
        if ((uint64_t)h->seq + h->payload_len > DP_MAX_MESSAGE)
                return sl_errorf(err, -DP_ERR_TOO_LARGE, "fragment ends at byte %llu, over the %u-byte message limit",
                                 (unsigned long long)h->seq + h->payload_len, DP_MAX_MESSAGE);
        if (h->frag_index == 0 && h->seq != 0)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "first fragment at offset %u", h->seq);
        if (h->frag_count > 1 && h->payload_len == 0)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "empty fragment");
        return 0;
}

/* magic, version, flags and the total length: all dp_frame_length() can know. */
static long frame_prefix(const uint8_t *p, size_t max_frame, struct sl_error *err)
{
        if (ld32(p) != DP_MAGIC)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "bad magic 0x%08x", ld32(p));
        if (p[4] != DP_VERSION)
                return sl_errorf(err, -DP_ERR_BAD_VERSION, "protocol version %u, this side speaks %u",
                                 p[4], DP_VERSION);
        uint16_t flags = ld16(p + 6);
        if (flags & ~DP_F_ALL)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "unknown header flags 0x%x", flags & ~DP_F_ALL);
        uint64_t total = (uint64_t)DP_HEADER_SIZE + ld32(p + 20) + dp_trailers_size(flags);
        if (total > max_frame)
                return sl_errorf(err, -DP_ERR_TOO_LARGE, "frame of %llu bytes over the limit %zu",
                                 (unsigned long long)total, max_frame);
        return (long)total;
}

long dp_frame_length(const void *buf, size_t len, size_t max_frame, struct sl_error *err)
{
        if (len < DP_HEADER_SIZE)
                return 0;
        return frame_prefix(buf, max_frame, err);
}

int dp_frame_decode(const void *buf, size_t len, size_t max_frame, unsigned dflags,
                    struct dp_frame *f, struct sl_error *err)
{
        const uint8_t *p = buf;
        long total;
        int r;

        memset(f, 0, sizeof(*f));
        if (len < DP_HEADER_SIZE)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "frame of %zu bytes, shorter than the header", len);
        if (len > max_frame && ld32(p) == DP_MAGIC && p[4] == DP_VERSION)
                return sl_errorf(err, -DP_ERR_TOO_LARGE, "frame of %zu bytes over the limit %zu", len, max_frame);
        total = frame_prefix(p, max_frame, err);
        if (total < 0)
                return (int)total;
        if ((size_t)total != len)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "header says %ld bytes, frame has %zu", total, len);

        struct dp_header *h = &f->h;
        h->version = p[4];
        h->opcode = p[5];
        h->flags = ld16(p + 6);
        h->request_id = ld64(p + 8);
        h->seq = ld32(p + 16);
        h->payload_len = ld32(p + 20);
        h->frag_index = ld16(p + 24);
        h->frag_count = ld16(p + 26);
        h->crc = ld32(p + 28);

        if (h->flags & DP_F_CRC) {
                uint32_t c = dp_frame_crc(p, len);
                if (c != h->crc)
                        return sl_errorf(err, -DP_ERR_BAD_CRC, "CRC32C 0x%08x, frame says 0x%08x", c, h->crc);
        } else {
                if (dflags & DP_DECODE_REQUIRE_CRC)
                        return sl_errorf(err, -DP_ERR_BAD_CRC, "frame without CRC32C");
                if (h->crc != 0)
                        return sl_errorf(err, -DP_ERR_BAD_FRAME, "crc field 0x%08x without the CRC flag", h->crc);
        }
        r = header_rules(h, err);
        if (r < 0)
                return r;

        const uint8_t *q = p + DP_HEADER_SIZE;
        f->payload = q;
        q += h->payload_len;
        if (h->flags & DP_F_COOKIE) {
                f->cookie = q;
                q += DP_COOKIE_SIZE;
        }
        if (h->flags & DP_F_AUTH) {
                if (ld32(q + 4) != 0)
                        return sl_errorf(err, -DP_ERR_BAD_FRAME, "auth trailer reserved field not zero");
                f->has_auth = true;
                f->auth.key_id = ld32(q);
                f->auth.timestamp_ms = ld64(q + 8);
                f->auth.nonce = ld64(q + 16);
                memcpy(f->auth.mac, q + 24, DP_MAC_SIZE);
        }
        f->len = len;
        return 0;
}

long dp_frame_encode(void *buf, size_t cap, size_t max_frame, const struct dp_header *h,
                     const void *payload, size_t payload_len, const uint8_t *cookie,
                     const struct dp_auth *auth)
{
        uint8_t *p = buf;
        struct dp_header hh = *h;

        if (payload_len > UINT32_MAX || (payload_len && !payload))
                return -EINVAL;
        hh.version = DP_VERSION;
        hh.payload_len = (uint32_t)payload_len;
        if (header_rules(&hh, NULL) < 0)
                return -EINVAL;
        if ((hh.flags & DP_F_COOKIE && !cookie) || (hh.flags & DP_F_AUTH && !auth))
                return -EINVAL;
        uint64_t total = (uint64_t)DP_HEADER_SIZE + payload_len + dp_trailers_size(hh.flags);
        if (total > max_frame)
                return -EMSGSIZE;
        if (total > cap)
                return -ENOSPC;

        if (payload_len && payload != p + DP_HEADER_SIZE)
                memmove(p + DP_HEADER_SIZE, payload, payload_len);
        st32(p, DP_MAGIC);
        p[4] = DP_VERSION;
        p[5] = hh.opcode;
        st16(p + 6, hh.flags);
        st64(p + 8, hh.request_id);
        st32(p + 16, hh.seq);
        st32(p + 20, hh.payload_len);
        st16(p + 24, hh.frag_index);
        st16(p + 26, hh.frag_count);
        st32(p + 28, 0);
        uint8_t *q = p + DP_HEADER_SIZE + payload_len;
        if (hh.flags & DP_F_COOKIE) {
                memcpy(q, cookie, DP_COOKIE_SIZE);
                q += DP_COOKIE_SIZE;
        }
        if (hh.flags & DP_F_AUTH) {
                st32(q, auth->key_id);
                st32(q + 4, 0);
                st64(q + 8, auth->timestamp_ms);
                st64(q + 16, auth->nonce);
                memcpy(q + 24, auth->mac, DP_MAC_SIZE);
        }
        if (hh.flags & DP_F_CRC)
                st32(p + 28, dp_frame_crc(p, (size_t)total));
        return (long)total;
}

/* ---- fragmentation ---- */

static long frag_chunk(size_t max_frame, uint16_t flags)
{
        size_t over = DP_HEADER_SIZE + dp_trailers_size(flags);
        return max_frame > over ? (long)SL_MIN(max_frame - over, (size_t)DP_MAX_MESSAGE) : -EMSGSIZE;
}

int dp_fragment_count(size_t msg_len, size_t max_frame, uint16_t flags)
{
        long chunk = frag_chunk(max_frame, flags);
        if (chunk < 0 || msg_len > DP_MAX_MESSAGE)
                return -EMSGSIZE;
        size_t n = msg_len ? (msg_len + (size_t)chunk - 1) / (size_t)chunk : 1;
        return n > DP_MAX_FRAGMENTS ? -EMSGSIZE : (int)n;
}

long dp_fragment_encode(void *buf, size_t cap, size_t max_frame, const struct dp_header *h,
                        const void *msg, size_t msg_len, unsigned index, const uint8_t *cookie,
                        const struct dp_auth *auth)
{
        int n = dp_fragment_count(msg_len, max_frame, h->flags);
        if (n < 0)
                return n;
        if (index >= (unsigned)n)
                return -EINVAL;
        size_t chunk = (size_t)frag_chunk(max_frame, h->flags);
        size_t off = (size_t)index * chunk;
        struct dp_header hh = *h;
        hh.frag_index = (uint16_t)index;
        hh.frag_count = (uint16_t)n;
        hh.seq = (uint32_t)off;
        return dp_frame_encode(buf, cap, max_frame, &hh, msg_len ? (const uint8_t *)msg + off : NULL,
                               SL_MIN(chunk, msg_len - off), cookie, auth);
}

void dp_reasm_init(struct dp_reasm *r, void *buf, size_t cap)
{
        memset(r, 0, sizeof(*r));
        r->buf = buf;
        r->cap = cap;
}

int dp_reasm_add(struct dp_reasm *r, const struct dp_frame *f, struct sl_error *err)
{
        const struct dp_header *h = &f->h;
        unsigned i = h->frag_index;

        if (!dp_opcode_fragmentable(h->opcode))
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "%s is not reassembled", dp_opcode_name(h->opcode));
        if (h->frag_count == 0 || h->frag_count > DP_MAX_FRAGMENTS || i >= h->frag_count)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "fragment %u of %u", i, h->frag_count);
        if (r->count == 0) {
                r->count = h->frag_count;
                r->opcode = h->opcode;
                r->request_id = h->request_id;
        } else if (r->count != h->frag_count || r->opcode != h->opcode || r->request_id != h->request_id) {
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "fragment disagrees with earlier fragments of the request");
        }
        uint64_t end = (uint64_t)h->seq + h->payload_len;
        if (r->seen[i / 64] >> (i % 64) & 1) {
                if (r->off[i] != h->seq || r->len[i] != h->payload_len)
                        return sl_errorf(err, -DP_ERR_BAD_FRAME, "fragment %u sent twice with different extents", i);
                return 0; /* a duplicate */
        }
        if (end > DP_MAX_MESSAGE || end > r->cap)
                return sl_errorf(err, -DP_ERR_TOO_LARGE, "fragment ends at byte %llu, over the message limit",
                                 (unsigned long long)end);
        if (h->payload_len)
                memcpy(r->buf + h->seq, f->payload, h->payload_len);
        r->seen[i / 64] |= 1ull << (i % 64);
        r->off[i] = h->seq;
        r->len[i] = h->payload_len;
        if (i == r->count - 1u)
                r->total = (uint32_t)end;
        if (++r->n_seen < r->count)
                return 0;
        /* all fragments in: they must tile [0, total) in index order */
        uint64_t at = 0;
        for (unsigned j = 0; j < r->count; j++) {
                if (r->off[j] != at)
                        return sl_errorf(err, -DP_ERR_BAD_FRAME, "fragment %u at offset %u, expected %llu",
                                         j, r->off[j], (unsigned long long)at);
                at += r->len[j];
        }
        return 1;
}

/* ---- payloads ---- */

static int trailing(const struct rd *r, const char *what, struct sl_error *err)
{
        if (r->left)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "%s: %zu bytes after the payload", what, r->left);
        return 0;
}

/* Encoders reuse the decoders as their check: what they write must decode. */
#define ENCODE_CHECKED(w, decode, type)                                          \
        do {                                                                     \
                long n_ = wr_done(w);                                            \
                type chk_;                                                       \
                if (n_ < 0)                                                      \
                        return n_;                                               \
                if (decode((w)->p, (size_t)n_, &chk_, NULL) < 0)                 \
                        return -EINVAL;                                          \
                return n_;                                                       \
        } while (0)

/* HELLO: u8 max_version, u8[3] 0, zero padding */
int dp_hello_decode(const void *p, size_t len, struct dp_hello *m, struct sl_error *err)
{
        const uint8_t *b = p;
        if (len < 4)
                return TRUNC(err, "HELLO");
        if (b[0] == 0)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "HELLO: max_version 0");
        if (!all_zero(b + 1, len - 1))
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "HELLO: reserved or padding bytes not zero");
        m->max_version = b[0];
        m->pad_len = (uint32_t)(len - 4);
        return 0;
}

long dp_hello_encode(void *buf, size_t cap, const struct dp_hello *m)
{
        struct wr w = { buf, cap, 0, false };
        wr_u8(&w, m->max_version);
        wr_zero(&w, 3);
        wr_zero(&w, m->pad_len);
        ENCODE_CHECKED(&w, dp_hello_decode, struct dp_hello);
}

/* load: 6 x u32 */
static bool rd_load(struct rd *r, struct dp_load *l)
{
        return rd_u32(r, &l->queue_depth) && rd_u32(r, &l->active) && rd_u32(r, &l->kv_blocks_free) &&
               rd_u32(r, &l->kv_blocks_total) && rd_u32(r, &l->max_inflight) && rd_u32(r, &l->flags);
}

static void wr_load(struct wr *w, const struct dp_load *l)
{
        wr_u32(w, l->queue_depth);
        wr_u32(w, l->active);
        wr_u32(w, l->kv_blocks_free);
        wr_u32(w, l->kv_blocks_total);
        wr_u32(w, l->max_inflight);
        wr_u32(w, l->flags);
}

static int check_load(const struct dp_load *l, const char *what, struct sl_error *err)
{
        if (l->flags & ~DP_LOAD_ALL)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "%s: unknown load flags 0x%x", what, l->flags);
        if (l->kv_blocks_free > l->kv_blocks_total)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "%s: %u free KV blocks of %u", what,
                                 l->kv_blocks_free, l->kv_blocks_total);
        return 0;
}

/* INFO: fixed 76 bytes, then model and server names */
int dp_info_decode(const void *p, size_t len, struct dp_info *m, struct sl_error *err)
{
        struct rd r = { p, len };
        const uint8_t *res, *s;
        uint16_t ml, sl;
        int rc;

        if (!rd_u8(&r, &m->version) || !rd_bytes(&r, 3, &res) || !rd_u32(&r, &m->max_frame) ||
            !rd_u32(&r, &m->max_message) || !rd_u32(&r, &m->max_prompt_tokens) ||
            !rd_u32(&r, &m->max_prompt_bytes) || !rd_u32(&r, &m->max_new_tokens) ||
            !rd_u32(&r, &m->max_stop) || !rd_u32(&r, &m->max_stop_len) || !rd_u32(&r, &m->n_ctx) ||
            !rd_u32(&r, &m->n_vocab) || !rd_u32(&r, &m->lease_ms) || !rd_u32(&r, &m->flags) ||
            !rd_load(&r, &m->load) || !rd_u16(&r, &ml) || !rd_u16(&r, &sl))
                return TRUNC(err, "INFO");
        if (m->version == 0 || !all_zero(res, 3))
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "INFO: version 0 or reserved bytes set");
        if (m->flags & ~DP_INFO_ALL)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "INFO: unknown flags 0x%x", m->flags);
        rc = check_load(&m->load, "INFO", err);
        if (rc < 0)
                return rc;
        if (ml > DP_MAX_NAME || sl > DP_MAX_NAME)
                return sl_errorf(err, -DP_ERR_TOO_LARGE, "INFO: name of %u bytes over %u", SL_MAX(ml, sl), DP_MAX_NAME);
        if (!rd_bytes(&r, ml, &s))
                return TRUNC(err, "INFO");
        m->model = (struct dp_str){ (const char *)s, ml };
        if (!rd_bytes(&r, sl, &s))
                return TRUNC(err, "INFO");
        m->server = (struct dp_str){ (const char *)s, sl };
        if (!dp_utf8_valid(m->model.ptr, ml) || !dp_utf8_valid(m->server.ptr, sl))
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "INFO: names are not UTF-8");
        return trailing(&r, "INFO", err);
}

long dp_info_encode(void *buf, size_t cap, const struct dp_info *m)
{
        struct wr w = { buf, cap, 0, false };
        if (m->model.len > DP_MAX_NAME || m->server.len > DP_MAX_NAME)
                return -EINVAL;
        wr_u8(&w, m->version);
        wr_zero(&w, 3);
        wr_u32(&w, m->max_frame);
        wr_u32(&w, m->max_message);
        wr_u32(&w, m->max_prompt_tokens);
        wr_u32(&w, m->max_prompt_bytes);
        wr_u32(&w, m->max_new_tokens);
        wr_u32(&w, m->max_stop);
        wr_u32(&w, m->max_stop_len);
        wr_u32(&w, m->n_ctx);
        wr_u32(&w, m->n_vocab);
        wr_u32(&w, m->lease_ms);
        wr_u32(&w, m->flags);
        wr_load(&w, &m->load);
        wr_u16(&w, (uint16_t)m->model.len);
        wr_u16(&w, (uint16_t)m->server.len);
        wr_bytes(&w, m->model.ptr, m->model.len);
        wr_bytes(&w, m->server.ptr, m->server.len);
        ENCODE_CHECKED(&w, dp_info_decode, struct dp_info);
}

/* GENERATE: fixed 60 bytes, stop strings, prompt */
#define GENERATE_FIXED 60

int dp_generate_decode(const void *p, size_t len, struct dp_generate *m, struct sl_error *err)
{
        struct rd r = { p, len };
        struct dp_sampling *s = &m->sampling;
        uint16_t res;
        const uint8_t *b;

        memset(m, 0, sizeof(*m));
        if (!rd_u32(&r, &m->flags) || !rd_u32(&r, &m->max_tokens) || !rd_u64(&r, &s->seed) ||
            !rd_f32(&r, &s->temperature) || !rd_i32(&r, &s->top_k) || !rd_f32(&r, &s->top_p) ||
            !rd_f32(&r, &s->min_p) || !rd_f32(&r, &s->repeat_penalty) ||
            !rd_f32(&r, &s->presence_penalty) || !rd_f32(&r, &s->frequency_penalty) ||
            !rd_i32(&r, &s->penalty_last_n) || !rd_u32(&r, &m->deadline_ms) ||
            !rd_u32(&r, &m->prompt_len) || !rd_u16(&r, &m->n_stop) || !rd_u16(&r, &res))
                return TRUNC(err, "GENERATE");
        if (res)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "GENERATE: reserved field 0x%x", res);
        if (m->flags & ~DP_GEN_ALL)
                return sl_errorf(err, -DP_ERR_BAD_PARAM, "GENERATE: unknown flags 0x%x", m->flags & ~DP_GEN_ALL);
        if (!isfinite(s->temperature) || !isfinite(s->top_p) || !isfinite(s->min_p) ||
            !isfinite(s->repeat_penalty) || !isfinite(s->presence_penalty) || !isfinite(s->frequency_penalty))
                return sl_errorf(err, -DP_ERR_BAD_PARAM, "GENERATE: sampling parameter not finite");
        if (m->max_tokens > DP_MAX_NEW_TOKENS)
                return sl_errorf(err, -DP_ERR_BAD_PARAM, "GENERATE: max_tokens %u over the limit %u",
                                 m->max_tokens, DP_MAX_NEW_TOKENS);
        if (m->n_stop > DP_MAX_STOP)
                return sl_errorf(err, -DP_ERR_BAD_PARAM, "GENERATE: %u stop strings, limit %u", m->n_stop, DP_MAX_STOP);
        for (unsigned i = 0; i < m->n_stop; i++) {
                uint16_t sl;
                if (!rd_u16(&r, &sl))
                        return TRUNC(err, "GENERATE");
                if (sl == 0 || sl > DP_MAX_STOP_LEN)
                        return sl_errorf(err, -DP_ERR_BAD_PARAM, "GENERATE: stop string %u of %u bytes (1..%u)",
                                         i, sl, DP_MAX_STOP_LEN);
                if (!rd_bytes(&r, sl, &b))
                        return TRUNC(err, "GENERATE");
                if (!dp_utf8_valid(b, sl))
                        return sl_errorf(err, -DP_ERR_BAD_PARAM, "GENERATE: stop string %u is not UTF-8", i);
                m->stop[i] = (struct dp_str){ (const char *)b, sl };
        }
        if (m->flags & DP_GEN_PROMPT_IDS) {
                if (m->prompt_len > DP_MAX_PROMPT_TOKENS)
                        return sl_errorf(err, -DP_ERR_PROMPT_TOO_LONG, "GENERATE: %u prompt tokens, limit %u",
                                         m->prompt_len, DP_MAX_PROMPT_TOKENS);
                if (!rd_bytes(&r, (size_t)m->prompt_len * 4, &b))
                        return TRUNC(err, "GENERATE");
                for (uint32_t i = 0; i < m->prompt_len; i++)
                        if (dp_id_get(b, i) < 0)
                                return sl_errorf(err, -DP_ERR_BAD_PARAM, "GENERATE: prompt token %u is negative", i);
                m->prompt_ids = b;
        } else {
                if (m->prompt_len > DP_MAX_PROMPT_BYTES)
                        return sl_errorf(err, -DP_ERR_PROMPT_TOO_LONG, "GENERATE: %u prompt bytes, limit %u",
                                         m->prompt_len, DP_MAX_PROMPT_BYTES);
                if (!rd_bytes(&r, m->prompt_len, &b))
                        return TRUNC(err, "GENERATE");
                if (r.left) /* framing errors before content errors */
                        return trailing(&r, "GENERATE", err);
                if (!dp_utf8_valid(b, m->prompt_len))
                        return sl_errorf(err, -DP_ERR_BAD_PARAM, "GENERATE: prompt is not UTF-8");
                m->prompt_text = (const char *)b;
        }
        return trailing(&r, "GENERATE", err);
}

long dp_generate_encode(void *buf, size_t cap, const struct dp_generate *m)
{
        struct wr w = { buf, cap, 0, false };
        const struct dp_sampling *s = &m->sampling;
        bool ids = m->flags & DP_GEN_PROMPT_IDS;

        if (m->n_stop > DP_MAX_STOP || (m->prompt_len && !(ids ? (const void *)m->prompt_ids
                                                                : (const void *)m->prompt_text)))
                return -EINVAL;
        if (m->prompt_len > (ids ? DP_MAX_PROMPT_TOKENS : DP_MAX_PROMPT_BYTES))
                return -EINVAL;
        wr_u32(&w, m->flags);
        wr_u32(&w, m->max_tokens);
        wr_u64(&w, s->seed);
        wr_f32(&w, s->temperature);
        wr_u32(&w, (uint32_t)s->top_k);
        wr_f32(&w, s->top_p);
        wr_f32(&w, s->min_p);
        wr_f32(&w, s->repeat_penalty);
        wr_f32(&w, s->presence_penalty);
        wr_f32(&w, s->frequency_penalty);
        wr_u32(&w, (uint32_t)s->penalty_last_n);
        wr_u32(&w, m->deadline_ms);
        wr_u32(&w, m->prompt_len);
        wr_u16(&w, m->n_stop);
        wr_u16(&w, 0);
        for (unsigned i = 0; i < m->n_stop; i++) {
                if (m->stop[i].len > DP_MAX_STOP_LEN)
                        return -EINVAL;
                wr_u16(&w, (uint16_t)m->stop[i].len);
                wr_bytes(&w, m->stop[i].ptr, m->stop[i].len);
        }
        if (ids)
                wr_bytes(&w, m->prompt_ids, (size_t)m->prompt_len * 4);
        else
                wr_bytes(&w, m->prompt_text, m->prompt_len);
        ENCODE_CHECKED(&w, dp_generate_decode, struct dp_generate);
}

/* TOKENS: u8 kind, u8 0, u16 n_tokens, u32 text_len, ids, text */
int dp_tokens_decode(const void *p, size_t len, struct dp_tokens *m, struct sl_error *err)
{
        struct rd r = { p, len };
        uint8_t res;
        const uint8_t *b;

        if (!rd_u8(&r, &m->kind) || !rd_u8(&r, &res) || !rd_u16(&r, &m->n_tokens) || !rd_u32(&r, &m->text.len))
                return TRUNC(err, "TOKENS");
        if (res || m->kind > DP_TOKENS_PROMPT)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "TOKENS: kind %u, reserved 0x%x", m->kind, res);
        if (m->n_tokens > DP_MAX_TOKENS_PER_FRAME)
                return sl_errorf(err, -DP_ERR_TOO_LARGE, "TOKENS: %u tokens, limit %u", m->n_tokens,
                                 DP_MAX_TOKENS_PER_FRAME);
        if (m->n_tokens == 0 && m->text.len == 0)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "TOKENS: empty");
        if (!rd_bytes(&r, (size_t)m->n_tokens * 4, &m->ids))
                return TRUNC(err, "TOKENS");
        for (unsigned i = 0; i < m->n_tokens; i++)
                if (dp_id_get(m->ids, i) < 0)
                        return sl_errorf(err, -DP_ERR_BAD_FRAME, "TOKENS: token %u is negative", i);
        if (!rd_bytes(&r, m->text.len, &b))
                return TRUNC(err, "TOKENS");
        m->text.ptr = (const char *)b;
        if (!dp_utf8_valid(b, m->text.len))
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "TOKENS: text is not UTF-8");
        return trailing(&r, "TOKENS", err);
}

long dp_tokens_encode(void *buf, size_t cap, const struct dp_tokens *m)
{
        struct wr w = { buf, cap, 0, false };
        if ((m->n_tokens && !m->ids) || (m->text.len && !m->text.ptr))
                return -EINVAL;
        wr_u8(&w, m->kind);
        wr_u8(&w, 0);
        wr_u16(&w, m->n_tokens);
        wr_u32(&w, m->text.len);
        wr_bytes(&w, m->ids, (size_t)m->n_tokens * 4);
        wr_bytes(&w, m->text.ptr, m->text.len);
        ENCODE_CHECKED(&w, dp_tokens_decode, struct dp_tokens);
}

/* DONE: 32 bytes */
int dp_done_decode(const void *p, size_t len, struct dp_done *m, struct sl_error *err)
{
        struct rd r = { p, len };
        uint16_t res;

        if (!rd_u8(&r, &m->reason) || !rd_u8(&r, &m->stop_index) || !rd_u16(&r, &res) ||
            !rd_u32(&r, &m->prompt_tokens) || !rd_u32(&r, &m->generated_tokens) || !rd_u32(&r, &m->queue_us) ||
            !rd_u64(&r, &m->ttft_us) || !rd_u64(&r, &m->total_us))
                return TRUNC(err, "DONE");
        if (res || m->reason > DP_FINISH_MAX)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "DONE: reason %u, reserved 0x%x", m->reason, res);
        if (m->reason == DP_FINISH_STOP ? m->stop_index >= DP_MAX_STOP : m->stop_index != DP_STOP_INDEX_NONE)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "DONE: stop index %u with reason %s", m->stop_index,
                                 dp_finish_name(m->reason));
        return trailing(&r, "DONE", err);
}

long dp_done_encode(void *buf, size_t cap, const struct dp_done *m)
{
        struct wr w = { buf, cap, 0, false };
        wr_u8(&w, m->reason);
        wr_u8(&w, m->stop_index);
        wr_u16(&w, 0);
        wr_u32(&w, m->prompt_tokens);
        wr_u32(&w, m->generated_tokens);
        wr_u32(&w, m->queue_us);
        wr_u64(&w, m->ttft_us);
        wr_u64(&w, m->total_us);
        ENCODE_CHECKED(&w, dp_done_decode, struct dp_done);
}

/* ERROR: u16 code, u8 flags, u8 0, u32 retry_after_ms, u32 detail, u16 msg_len, u16 0, msg */
int dp_error_decode(const void *p, size_t len, struct dp_error *m, struct sl_error *err)
{
        struct rd r = { p, len };
        uint8_t res8;
        uint16_t res16, ml;
        const uint8_t *b;

        if (!rd_u16(&r, &m->code) || !rd_u8(&r, &m->flags) || !rd_u8(&r, &res8) ||
            !rd_u32(&r, &m->retry_after_ms) || !rd_u32(&r, &m->detail) || !rd_u16(&r, &ml) || !rd_u16(&r, &res16))
                return TRUNC(err, "ERROR");
        if (m->code == 0 || (m->flags & ~DP_ERRF_TERMINAL) || res8 || res16)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "ERROR: code %u, flags 0x%x, reserved bits set", m->code,
                                 m->flags);
        if (ml > DP_MAX_ERROR_MSG)
                return sl_errorf(err, -DP_ERR_TOO_LARGE, "ERROR: message of %u bytes, limit %u", ml, DP_MAX_ERROR_MSG);
        if (!rd_bytes(&r, ml, &b))
                return TRUNC(err, "ERROR");
        if (!dp_utf8_valid(b, ml))
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "ERROR: message is not UTF-8");
        m->msg = (struct dp_str){ (const char *)b, ml };
        return trailing(&r, "ERROR", err);
}

long dp_error_encode(void *buf, size_t cap, const struct dp_error *m)
{
        struct wr w = { buf, cap, 0, false };
        if (m->msg.len > DP_MAX_ERROR_MSG || (m->msg.len && !m->msg.ptr))
                return -EINVAL;
        wr_u16(&w, m->code);
        wr_u8(&w, m->flags);
        wr_u8(&w, 0);
        wr_u32(&w, m->retry_after_ms);
        wr_u32(&w, m->detail);
        wr_u16(&w, (uint16_t)m->msg.len);
        wr_u16(&w, 0);
        wr_bytes(&w, m->msg.ptr, m->msg.len);
        ENCODE_CHECKED(&w, dp_error_decode, struct dp_error);
}

/* PING: u64 token, 24 zero bytes */
int dp_ping_decode(const void *p, size_t len, struct dp_ping *m, struct sl_error *err)
{
        const uint8_t *b = p;
        if (len != DP_PING_PAYLOAD)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "PING: payload of %zu bytes, must be %u", len, DP_PING_PAYLOAD);
        if (!all_zero(b + 8, DP_PING_PAYLOAD - 8))
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "PING: padding not zero");
        m->token = ld64(b);
        return 0;
}

long dp_ping_encode(void *buf, size_t cap, const struct dp_ping *m)
{
        struct wr w = { buf, cap, 0, false };
        wr_u64(&w, m->token);
        wr_zero(&w, DP_PING_PAYLOAD - 8);
        ENCODE_CHECKED(&w, dp_ping_decode, struct dp_ping);
}

/* PONG: u64 token, load */
int dp_pong_decode(const void *p, size_t len, struct dp_pong *m, struct sl_error *err)
{
        struct rd r = { p, len };
        int rc;
        if (!rd_u64(&r, &m->token) || !rd_load(&r, &m->load))
                return TRUNC(err, "PONG");
        rc = check_load(&m->load, "PONG", err);
        if (rc < 0)
                return rc;
        return trailing(&r, "PONG", err);
}

long dp_pong_encode(void *buf, size_t cap, const struct dp_pong *m)
{
        struct wr w = { buf, cap, 0, false };
        wr_u64(&w, m->token);
        wr_load(&w, &m->load);
        ENCODE_CHECKED(&w, dp_pong_decode, struct dp_pong);
}

/* TOKENIZE: u32 flags, u32 text_len, text */
int dp_tokenize_decode(const void *p, size_t len, struct dp_tokenize *m, struct sl_error *err)
{
        struct rd r = { p, len };
        const uint8_t *b;
        if (!rd_u32(&r, &m->flags) || !rd_u32(&r, &m->text.len))
                return TRUNC(err, "TOKENIZE");
        if (m->flags & ~DP_TOK_ALL)
                return sl_errorf(err, -DP_ERR_BAD_PARAM, "TOKENIZE: unknown flags 0x%x", m->flags & ~DP_TOK_ALL);
        if (m->text.len > DP_MAX_PROMPT_BYTES)
                return sl_errorf(err, -DP_ERR_PROMPT_TOO_LONG, "TOKENIZE: %u bytes, limit %u", m->text.len,
                                 DP_MAX_PROMPT_BYTES);
        if (!rd_bytes(&r, m->text.len, &b))
                return TRUNC(err, "TOKENIZE");
        if (!dp_utf8_valid(b, m->text.len))
                return sl_errorf(err, -DP_ERR_BAD_PARAM, "TOKENIZE: text is not UTF-8");
        m->text.ptr = (const char *)b;
        return trailing(&r, "TOKENIZE", err);
}

long dp_tokenize_encode(void *buf, size_t cap, const struct dp_tokenize *m)
{
        struct wr w = { buf, cap, 0, false };
        if (m->text.len > DP_MAX_PROMPT_BYTES || (m->text.len && !m->text.ptr))
                return -EINVAL;
        wr_u32(&w, m->flags);
        wr_u32(&w, m->text.len);
        wr_bytes(&w, m->text.ptr, m->text.len);
        ENCODE_CHECKED(&w, dp_tokenize_decode, struct dp_tokenize);
}

/* RESEND: u16 n_ranges, u16 0, n x (u32 first, u32 count) */
int dp_resend_decode(const void *p, size_t len, struct dp_resend *m, struct sl_error *err)
{
        struct rd r = { p, len };
        uint16_t res;
        uint64_t next = 0;

        if (!rd_u16(&r, &m->n_ranges) || !rd_u16(&r, &res))
                return TRUNC(err, "RESEND");
        if (res)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "RESEND: reserved field 0x%x", res);
        if (m->n_ranges == 0 || m->n_ranges > DP_MAX_RESEND_RANGES)
                return sl_errorf(err, -DP_ERR_BAD_PARAM, "RESEND: %u ranges (1..%u)", m->n_ranges,
                                 DP_MAX_RESEND_RANGES);
        if (r.left != (size_t)m->n_ranges * 8)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "RESEND: %zu bytes for %u ranges", r.left, m->n_ranges);
        for (unsigned i = 0; i < m->n_ranges; i++) {
                struct dp_range *g = &m->r[i];
                rd_u32(&r, &g->first);
                rd_u32(&r, &g->count);
                if (g->count == 0 && i != m->n_ranges - 1u)
                        return sl_errorf(err, -DP_ERR_BAD_PARAM, "RESEND: open range %u is not the last", i);
                if (i && g->first < next)
                        return sl_errorf(err, -DP_ERR_BAD_PARAM, "RESEND: range %u not after range %u", i, i - 1);
                next = (uint64_t)g->first + g->count;
                if (next > (uint64_t)UINT32_MAX + 1)
                        return sl_errorf(err, -DP_ERR_BAD_PARAM, "RESEND: range %u runs past 2^32", i);
        }
        return 0;
}

long dp_resend_encode(void *buf, size_t cap, const struct dp_resend *m)
{
        struct wr w = { buf, cap, 0, false };
        if (m->n_ranges > DP_MAX_RESEND_RANGES)
                return -EINVAL;
        wr_u16(&w, m->n_ranges);
        wr_u16(&w, 0);
        for (unsigned i = 0; i < m->n_ranges; i++) {
                wr_u32(&w, m->r[i].first);
                wr_u32(&w, m->r[i].count);
        }
        ENCODE_CHECKED(&w, dp_resend_decode, struct dp_resend);
}

/* ACK: u32 next_seq */
int dp_ack_decode(const void *p, size_t len, struct dp_ack *m, struct sl_error *err)
{
        if (len != 4)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "ACK: payload of %zu bytes, must be 4", len);
        m->next_seq = ld32(p);
        return 0;
}

long dp_ack_encode(void *buf, size_t cap, const struct dp_ack *m)
{
        if (cap < 4)
                return -ENOSPC;
        st32(buf, m->next_seq);
        return 4;
}

/* COOKIE: u32 lifetime_ms, u32 0, cookie */
int dp_cookie_decode(const void *p, size_t len, struct dp_cookie *m, struct sl_error *err)
{
        const uint8_t *b = p;
        if (len != 8 + DP_COOKIE_SIZE)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "COOKIE: payload of %zu bytes, must be %u", len,
                                 8 + DP_COOKIE_SIZE);
        if (ld32(b + 4))
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "COOKIE: reserved field set");
        m->lifetime_ms = ld32(b);
        m->cookie = b + 8;
        return 0;
}

long dp_cookie_encode(void *buf, size_t cap, const struct dp_cookie *m)
{
        struct wr w = { buf, cap, 0, false };
        if (!m->cookie)
                return -EINVAL;
        wr_u32(&w, m->lifetime_ms);
        wr_u32(&w, 0);
        wr_bytes(&w, m->cookie, DP_COOKIE_SIZE);
        return wr_done(&w);
}

int dp_cancel_decode(const void *p, size_t len, struct sl_error *err)
{
        (void)p;
        if (len != 0)
                return sl_errorf(err, -DP_ERR_BAD_FRAME, "CANCEL: payload of %zu bytes, must be empty", len);
        return 0;
}

/* ---- by opcode ---- */

int dp_msg_decode(uint8_t opcode, const void *p, size_t len, union dp_msg *m, struct sl_error *err)
{
        switch (opcode) {
        case DP_OP_HELLO: return dp_hello_decode(p, len, &m->hello, err);
        case DP_OP_INFO: return dp_info_decode(p, len, &m->info, err);
        case DP_OP_GENERATE: return dp_generate_decode(p, len, &m->generate, err);
        case DP_OP_TOKENS: return dp_tokens_decode(p, len, &m->tokens, err);
        case DP_OP_DONE: return dp_done_decode(p, len, &m->done, err);
        case DP_OP_ERROR: return dp_error_decode(p, len, &m->error, err);
        case DP_OP_CANCEL: return dp_cancel_decode(p, len, err);
        case DP_OP_PING: return dp_ping_decode(p, len, &m->ping, err);
        case DP_OP_PONG: return dp_pong_decode(p, len, &m->pong, err);
        case DP_OP_TOKENIZE: return dp_tokenize_decode(p, len, &m->tokenize, err);
        case DP_OP_RESEND: return dp_resend_decode(p, len, &m->resend, err);
        case DP_OP_ACK: return dp_ack_decode(p, len, &m->ack, err);
        case DP_OP_COOKIE: return dp_cookie_decode(p, len, &m->cookie, err);
        }
        return sl_errorf(err, -DP_ERR_UNKNOWN_OPCODE, "unknown opcode 0x%02x", opcode);
}

long dp_msg_encode(uint8_t opcode, void *buf, size_t cap, const union dp_msg *m)
{
        switch (opcode) {
        case DP_OP_HELLO: return dp_hello_encode(buf, cap, &m->hello);
        case DP_OP_INFO: return dp_info_encode(buf, cap, &m->info);
        case DP_OP_GENERATE: return dp_generate_encode(buf, cap, &m->generate);
        case DP_OP_TOKENS: return dp_tokens_encode(buf, cap, &m->tokens);
        case DP_OP_DONE: return dp_done_encode(buf, cap, &m->done);
        case DP_OP_ERROR: return dp_error_encode(buf, cap, &m->error);
        case DP_OP_CANCEL: return 0;
        case DP_OP_PING: return dp_ping_encode(buf, cap, &m->ping);
        case DP_OP_PONG: return dp_pong_encode(buf, cap, &m->pong);
        case DP_OP_TOKENIZE: return dp_tokenize_encode(buf, cap, &m->tokenize);
        case DP_OP_RESEND: return dp_resend_encode(buf, cap, &m->resend);
        case DP_OP_ACK: return dp_ack_encode(buf, cap, &m->ack);
        case DP_OP_COOKIE: return dp_cookie_encode(buf, cap, &m->cookie);
        }
        return -EINVAL;
}
