/* test-protocol.c — the v1 codec against docs/protocol.md: every opcode survives a round
 * trip byte for byte; frames cut at every byte, with bad magic, version, CRC, flags,
 * lying lengths, fragment fields and oversize give the documented error; each payload's
 * limits and reserved fields are enforced; fragments reassemble in any order; the limits
 * fit together (a largest request fits DP_MAX_MESSAGE and DP_MAX_FRAGMENTS, replies to
 * HELLO and PING are never larger than the requests). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "dataplane.h"

static int failures;

#define CHECK(cond, ...)                                                      \
        do {                                                                  \
                if (!(cond)) {                                                \
                        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
                        fprintf(stderr, __VA_ARGS__);                         \
                        fputc('\n', stderr);                                  \
                        failures++;                                           \
                }                                                             \
        } while (0)

#define EXPECT_ERR(expr, code)                                                            \
        do {                                                                              \
                struct sl_error e_ = { { 0 } };                                           \
                struct sl_error *err = &e_;                                               \
                int r_ = (expr);                                                          \
                (void)err;                                                                \
                CHECK(r_ == -(code), "%s: got %d (%s), want %s; reason: %s", #expr, r_,   \
                      r_ < 0 ? dp_err_name(r_) : "ok", dp_err_name(code), e_.msg);        \
                CHECK(r_ == 0 || (e_.msg[0] && !strchr(e_.msg, '\n')), "%s: no one-line reason", #expr); \
        } while (0)

static uint8_t frame[DP_MAX_FRAME_TCP];
static uint8_t payload[DP_MAX_MESSAGE];
static const uint8_t cookie_bytes[DP_COOKIE_SIZE] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                                      17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32 };

static struct dp_auth test_auth(void)
{
        struct dp_auth a = { .key_id = 7, .timestamp_ms = 1700000000123ull, .nonce = 0x1122334455667788ull };
        for (int i = 0; i < DP_MAC_SIZE; i++)
                a.mac[i] = (uint8_t)(0xa0 + i);
        return a;
}

static void store32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void store16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }

/* Recomputes the CRC of a hand-edited frame so that the edit, not the CRC, is what is tested. */
static void reseal(uint8_t *f, size_t len)
{
        store32(f + 28, 0);
        if (f[6] & DP_F_CRC)
                store32(f + 28, dp_frame_crc(f, len));
}

static long make_frame(uint8_t op, uint64_t rid, uint16_t flags, const void *p, size_t n)
{
        struct dp_header h = { .opcode = op, .flags = flags, .request_id = rid, .frag_count = 1 };
        struct dp_auth a = test_auth();
        return dp_frame_encode(frame, sizeof(frame), DP_MAX_FRAME_TCP, &h, p, n, cookie_bytes, &a);
}

/* ---- one example message per opcode ---- */

static const char prompt_text[] = "Héllo, wörld — 你好 🙂";
static uint8_t prompt_ids[4 * 5];
static const uint8_t tok_ids[4 * 3] = { 1, 0, 0, 0, 0x10, 0x27, 0, 0, 0xff, 0xff, 0xff, 0x7f };

static void example(uint8_t op, union dp_msg *m)
{
        memset(m, 0, sizeof(*m));
        switch (op) {
        case DP_OP_HELLO:
                m->hello = (struct dp_hello){ .max_version = 1, .pad_len = DP_UDP_HELLO_MIN - DP_HEADER_SIZE - 4 };
                break;
        case DP_OP_INFO:
                m->info = (struct dp_info){ .version = 1, .max_frame = DP_MAX_FRAME_UDP, .max_message = DP_MAX_MESSAGE,
                        .max_prompt_tokens = 4096, .max_prompt_bytes = 65536, .max_new_tokens = 2048, .max_stop = 8,
                        .max_stop_len = 64, .n_ctx = 8192, .n_vocab = 151936, .lease_ms = 10000,
                        .flags = DP_INFO_AUTH_REQUIRED,
                        .load = { 3, 5, 100, 4096, 16, DP_LOAD_DRAINING },
                        .model = { "qwen2.5-0.5b-instruct Q8_0", 26 }, .server = { "sluice 0.1.0", 12 } };
                break;
        case DP_OP_GENERATE: {
                struct dp_generate *g = &m->generate;
                g->flags = DP_GEN_ADD_SPECIAL | DP_GEN_ECHO_PROMPT;
                g->sampling = (struct dp_sampling){ 0.7f, 40, 0.95f, 0.05f, 1.1f, 0.25f, -0.5f, 64, 0xdeadbeefcafef00dull };
                g->max_tokens = 128;
                g->deadline_ms = 30000;
                g->n_stop = 2;
                g->stop[0] = (struct dp_str){ "\n\n", 2 };
                g->stop[1] = (struct dp_str){ "</s>", 4 };
                g->prompt_len = (uint32_t)strlen(prompt_text);
                g->prompt_text = prompt_text;
                break;
        }
        case DP_OP_TOKENS:
                m->tokens = (struct dp_tokens){ .kind = DP_TOKENS_GENERATED, .n_tokens = 3, .ids = tok_ids,
                                                .text = { " wörld🙂", 11 } };
                break;
        case DP_OP_DONE:
                m->done = (struct dp_done){ DP_FINISH_STOP, 1, 17, 42, 250, 12345, 987654 };
                break;
        case DP_OP_ERROR:
                m->error = (struct dp_error){ DP_ERR_BUSY, DP_ERRF_TERMINAL, 250, 64, { "queue full (64 waiting)", 23 } };
                break;
        case DP_OP_PING:
                m->ping.token = 0x0123456789abcdefull;
                break;
        case DP_OP_PONG:
                m->pong = (struct dp_pong){ 0x0123456789abcdefull, { 1, 2, 3, 4, 5, 0 } };
                break;
        case DP_OP_TOKENIZE:
                m->tokenize = (struct dp_tokenize){ DP_TOK_ADD_SPECIAL | DP_TOK_PARSE_SPECIAL,
                                                    { "<|im_start|>user", 16 } };
                break;
        case DP_OP_RESEND:
                m->resend.n_ranges = 3;
                m->resend.r[0] = (struct dp_range){ 2, 1 };
                m->resend.r[1] = (struct dp_range){ 5, 3 };
                m->resend.r[2] = (struct dp_range){ 10, 0 };
                break;
        case DP_OP_ACK:
                m->ack.next_seq = 77;
                break;
        case DP_OP_COOKIE:
                m->cookie = (struct dp_cookie){ 60000, cookie_bytes };
                break;
        }
}

static bool str_eq(struct dp_str a, struct dp_str b) { return a.len == b.len && !memcmp(a.ptr, b.ptr, a.len); }

/* Field-by-field comparison of what was encoded and what came back. */
static bool msg_eq(uint8_t op, const union dp_msg *a, const union dp_msg *b)
{
        switch (op) {
        case DP_OP_HELLO: return a->hello.max_version == b->hello.max_version && a->hello.pad_len == b->hello.pad_len;
        case DP_OP_INFO: {
                const struct dp_info *x = &a->info, *y = &b->info;
                return x->version == y->version && x->max_frame == y->max_frame && x->max_message == y->max_message &&
                       x->max_prompt_tokens == y->max_prompt_tokens && x->max_prompt_bytes == y->max_prompt_bytes &&
                       x->max_new_tokens == y->max_new_tokens && x->max_stop == y->max_stop &&
                       x->max_stop_len == y->max_stop_len && x->n_ctx == y->n_ctx && x->n_vocab == y->n_vocab &&
                       x->lease_ms == y->lease_ms && x->flags == y->flags &&
                       !memcmp(&x->load, &y->load, sizeof(x->load)) && str_eq(x->model, y->model) &&
                       str_eq(x->server, y->server);
        }
        case DP_OP_GENERATE: {
                const struct dp_generate *x = &a->generate, *y = &b->generate;
                if (x->flags != y->flags || memcmp(&x->sampling, &y->sampling, sizeof(x->sampling)) ||
                    x->max_tokens != y->max_tokens || x->deadline_ms != y->deadline_ms || x->n_stop != y->n_stop ||
                    x->prompt_len != y->prompt_len)
                        return false;
                for (unsigned i = 0; i < x->n_stop; i++)
                        if (!str_eq(x->stop[i], y->stop[i]))
                                return false;
                if (x->flags & DP_GEN_PROMPT_IDS)
                        return !memcmp(x->prompt_ids, y->prompt_ids, (size_t)x->prompt_len * 4) && !y->prompt_text;
                return !memcmp(x->prompt_text, y->prompt_text, x->prompt_len) && !y->prompt_ids;
        }
        case DP_OP_TOKENS:
                return a->tokens.kind == b->tokens.kind && a->tokens.n_tokens == b->tokens.n_tokens &&
                       !memcmp(a->tokens.ids, b->tokens.ids, a->tokens.n_tokens * 4u) &&
                       str_eq(a->tokens.text, b->tokens.text);
        case DP_OP_DONE: {
                const struct dp_done *x = &a->done, *y = &b->done;
                return x->reason == y->reason && x->stop_index == y->stop_index &&
                       x->prompt_tokens == y->prompt_tokens && x->generated_tokens == y->generated_tokens &&
                       x->queue_us == y->queue_us && x->ttft_us == y->ttft_us && x->total_us == y->total_us;
        }
        case DP_OP_ERROR:
                return a->error.code == b->error.code && a->error.flags == b->error.flags &&
                       a->error.retry_after_ms == b->error.retry_after_ms && a->error.detail == b->error.detail &&
                       str_eq(a->error.msg, b->error.msg);
        case DP_OP_CANCEL: return true;
        case DP_OP_PING: return a->ping.token == b->ping.token;
        case DP_OP_PONG: return !memcmp(&a->pong, &b->pong, sizeof(a->pong));
        case DP_OP_TOKENIZE: return a->tokenize.flags == b->tokenize.flags && str_eq(a->tokenize.text, b->tokenize.text);
        case DP_OP_RESEND:
                return a->resend.n_ranges == b->resend.n_ranges &&
                       !memcmp(a->resend.r, b->resend.r, a->resend.n_ranges * sizeof(a->resend.r[0]));
        case DP_OP_ACK: return a->ack.next_seq == b->ack.next_seq;
        case DP_OP_COOKIE:
                return a->cookie.lifetime_ms == b->cookie.lifetime_ms && !memcmp(a->cookie.cookie, b->cookie.cookie, 32);
        }
        return false;
}

/* ---- round trips ---- */

static void test_roundtrip(void)
{
        static const uint16_t flag_sets[] = { 0, DP_F_CRC, DP_F_CRC | DP_F_COOKIE, DP_F_CRC | DP_F_AUTH,
                                              DP_F_CRC | DP_F_COOKIE | DP_F_AUTH, DP_F_COOKIE | DP_F_AUTH };
        for (unsigned op = 1; op <= DP_OP_MAX; op++) {
                union dp_msg m, d;
                example((uint8_t)op, &m);
                long n = dp_msg_encode((uint8_t)op, payload, sizeof(payload), &m);
                CHECK(n >= 0, "%s: encode %ld", dp_opcode_name((uint8_t)op), n);
                if (n < 0)
                        continue;
                /* every smaller buffer is refused, none is overrun */
                for (long cap = 0; cap < n; cap++) {
                        uint8_t small[2048];
                        if (n > (long)sizeof(small))
                                break;
                        memset(small, 0x5a, sizeof(small));
                        long r = dp_msg_encode((uint8_t)op, small, (size_t)cap, &m);
                        CHECK(r == -ENOSPC, "%s: cap %ld of %ld gave %ld", dp_opcode_name((uint8_t)op), cap, n, r);
                        CHECK(small[cap] == 0x5a, "%s: wrote past cap %ld", dp_opcode_name((uint8_t)op), cap);
                }
                for (size_t k = 0; k < SL_ARRAY_SIZE(flag_sets); k++) {
                        struct dp_frame f;
                        struct sl_error e = { { 0 } };
                        uint64_t rid = 0x1000 + op;
                        long fl = make_frame((uint8_t)op, rid, flag_sets[k], payload, (size_t)n);
                        CHECK(fl == DP_HEADER_SIZE + n + (long)dp_trailers_size(flag_sets[k]), "%s: frame length %ld",
                              dp_opcode_name((uint8_t)op), fl);
                        int r = dp_frame_decode(frame, (size_t)fl, DP_MAX_FRAME_TCP, 0, &f, &e);
                        CHECK(r == 0, "%s flags %x: frame decode: %s", dp_opcode_name((uint8_t)op), flag_sets[k], e.msg);
                        if (r)
                                continue;
                        CHECK(f.h.opcode == op && f.h.request_id == rid && f.h.payload_len == n &&
                              f.h.frag_count == 1 && f.len == (size_t)fl && !memcmp(f.payload, payload, (size_t)n),
                              "%s: header fields", dp_opcode_name((uint8_t)op));
                        CHECK(!(flag_sets[k] & DP_F_COOKIE) == !f.cookie &&
                              (!f.cookie || !memcmp(f.cookie, cookie_bytes, DP_COOKIE_SIZE)), "cookie");
                        struct dp_auth a = test_auth();
                        CHECK(!(flag_sets[k] & DP_F_AUTH) == !f.has_auth &&
                              (!f.has_auth || !memcmp(&f.auth, &a, sizeof(a))), "auth trailer");
                        CHECK(dp_frame_length(frame, (size_t)fl, DP_MAX_FRAME_TCP, NULL) == fl, "dp_frame_length");
                        r = dp_msg_decode((uint8_t)op, f.payload, f.h.payload_len, &d, &e);
                        CHECK(r == 0, "%s: payload decode: %s", dp_opcode_name((uint8_t)op), e.msg);
                        if (r)
                                continue;
                        CHECK(msg_eq((uint8_t)op, &m, &d), "%s: fields differ after the round trip",
                              dp_opcode_name((uint8_t)op));
                        /* re-encode what was decoded: the same bytes */
                        static uint8_t again[DP_MAX_FRAME_TCP], p2[DP_MAX_MESSAGE];
                        long n2 = dp_msg_encode((uint8_t)op, p2, sizeof(p2), &d);
                        struct dp_header h = f.h;
                        long fl2 = dp_frame_encode(again, sizeof(again), DP_MAX_FRAME_TCP, &h, p2, (size_t)n2,
                                                   f.cookie, f.has_auth ? &f.auth : NULL);
                        CHECK(fl2 == fl && !memcmp(again, frame, (size_t)fl), "%s: re-encoded frame differs",
                              dp_opcode_name((uint8_t)op));
                }
        }
        /* a prompt of token ids, and every encoder's -ENOSPC and in-place payload */
        union dp_msg m, d;
        example(DP_OP_GENERATE, &m);
        for (uint32_t i = 0; i < 5; i++)
                dp_id_put(prompt_ids, i, (int32_t)(i * 1000 + 1));
        m.generate.flags = DP_GEN_PROMPT_IDS | DP_GEN_NO_TEXT;
        m.generate.prompt_text = NULL;
        m.generate.prompt_ids = prompt_ids;
        m.generate.prompt_len = 5;
        m.generate.n_stop = 0;
        long n = dp_generate_encode(frame + DP_HEADER_SIZE, sizeof(frame) - DP_HEADER_SIZE, &m.generate);
        struct dp_header h = { .opcode = DP_OP_GENERATE, .flags = DP_F_CRC, .request_id = 9, .frag_count = 1 };
        long fl = dp_frame_encode(frame, sizeof(frame), DP_MAX_FRAME_UDP, &h, frame + DP_HEADER_SIZE, (size_t)n, NULL, NULL);
        struct dp_frame f;
        CHECK(fl == DP_HEADER_SIZE + n && dp_frame_decode(frame, (size_t)fl, DP_MAX_FRAME_UDP, DP_DECODE_REQUIRE_CRC, &f, NULL) == 0 &&
              dp_generate_decode(f.payload, f.h.payload_len, &d.generate, NULL) == 0 &&
              msg_eq(DP_OP_GENERATE, &m, &d) && dp_id_get(d.generate.prompt_ids, 4) == 4001,
              "ids prompt encoded in place");
        /* a CANCEL is a bare header */
        fl = make_frame(DP_OP_CANCEL, 5, DP_F_CRC, NULL, 0);
        CHECK(fl == DP_HEADER_SIZE && dp_frame_decode(frame, (size_t)fl, DP_MAX_FRAME_UDP, 0, &f, NULL) == 0 &&
              dp_cancel_decode(f.payload, 0, NULL) == 0, "CANCEL");
}

/* ---- hostile frames ---- */

static void test_hostile_frames(void)
{
        union dp_msg m;
        struct dp_frame f;
        static uint8_t good[DP_MAX_FRAME_TCP];
        long n, gl;

        /* truncated at every byte: BAD_FRAME, for every opcode and every trailer */
        for (unsigned op = 1; op <= DP_OP_MAX; op++) {
                example((uint8_t)op, &m);
                n = dp_msg_encode((uint8_t)op, payload, sizeof(payload), &m);
                gl = make_frame((uint8_t)op, 77, DP_F_CRC | DP_F_COOKIE | DP_F_AUTH, payload, (size_t)n);
                for (long cut = 0; cut < gl; cut++) {
                        EXPECT_ERR(dp_frame_decode(frame, (size_t)cut, DP_MAX_FRAME_TCP, 0, &f, err), DP_ERR_BAD_FRAME);
                        long fl = dp_frame_length(frame, (size_t)cut, DP_MAX_FRAME_TCP, NULL);
                        CHECK(fl == (cut < DP_HEADER_SIZE ? 0 : gl), "dp_frame_length at %ld: %ld", cut, fl);
                }
                /* one byte too many */
                frame[gl] = 0;
                EXPECT_ERR(dp_frame_decode(frame, (size_t)gl + 1, DP_MAX_FRAME_TCP, 0, &f, err), DP_ERR_BAD_FRAME);
                /* payload cut at every byte (HELLO padding may shrink: cut below its fixed part) */
                long upto = op == DP_OP_HELLO ? 4 : n;
                for (long cut = 0; cut < upto; cut++) {
                        union dp_msg d;
                        EXPECT_ERR(dp_msg_decode((uint8_t)op, payload, (size_t)cut, &d, err), DP_ERR_BAD_FRAME);
                }
                /* every single-bit flip is caught by the CRC (or by the header checks before it) */
                memcpy(good, frame, (size_t)gl);
                for (long i = 0; i < gl * 8; i += 3) {
                        good[i / 8] ^= (uint8_t)(1u << (i % 8));
                        int r = dp_frame_decode(good, (size_t)gl, DP_MAX_FRAME_TCP, 0, &f, NULL);
                        CHECK(r < 0, "%s: bit %ld flipped and accepted", dp_opcode_name((uint8_t)op), i);
                        if (i / 8 >= 28 || i / 8 == 5 || i / 8 >= 8)
                                CHECK(r == -DP_ERR_BAD_CRC || r == -DP_ERR_BAD_FRAME || r == -DP_ERR_TOO_LARGE,
                                      "bit %ld: %s", i, dp_err_name(r));
                        good[i / 8] ^= (uint8_t)(1u << (i % 8));
                }
        }

        example(DP_OP_PING, &m);
        n = dp_msg_encode(DP_OP_PING, payload, sizeof(payload), &m);
        gl = make_frame(DP_OP_PING, 3, DP_F_CRC, payload, (size_t)n);
        memcpy(good, frame, (size_t)gl);
#define FRESH() memcpy(frame, good, (size_t)gl)

        FRESH(); frame[0] = 'X'; reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        EXPECT_ERR((int)dp_frame_length(frame, (size_t)gl, DP_MAX_FRAME_UDP, err), DP_ERR_BAD_FRAME);
        FRESH(); frame[4] = 2; reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_VERSION);
        EXPECT_ERR((int)dp_frame_length(frame, (size_t)gl, DP_MAX_FRAME_UDP, err), DP_ERR_BAD_VERSION);
        FRESH(); frame[4] = 0; reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_VERSION);
        FRESH(); frame[40] ^= 1; /* payload byte, CRC not redone */
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_CRC);
        FRESH(); frame[30] ^= 0x80; /* the crc field itself */
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_CRC);
        FRESH(); frame[6] &= (uint8_t)~DP_F_CRC; /* no CRC flag but a crc value */
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); frame[6] &= (uint8_t)~DP_F_CRC; reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), 0);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, DP_DECODE_REQUIRE_CRC, &f, err), DP_ERR_BAD_CRC);
        FRESH(); frame[6] |= 0x08; reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); frame[7] = 0x80; reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        static const uint8_t bad_ops[] = { 0, DP_OP_MAX + 1, 0x7f, 0xff };
        for (size_t i = 0; i < sizeof(bad_ops); i++) {
                FRESH(); frame[5] = bad_ops[i]; reseal(frame, gl);
                EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_UNKNOWN_OPCODE);
        }
        /* length field lying: longer, shorter, huge */
        FRESH(); store32(frame + 20, (uint32_t)n + 1); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store32(frame + 20, (uint32_t)n - 1); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store32(frame + 20, 0xffffffffu); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_TOO_LARGE);
        EXPECT_ERR((int)dp_frame_length(frame, (size_t)gl, DP_MAX_FRAME_TCP, err), DP_ERR_TOO_LARGE);
        FRESH(); store32(frame + 20, DP_MAX_FRAME_UDP - DP_HEADER_SIZE + 1); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_TOO_LARGE);
        /* the cookie/auth flag without the bytes */
        FRESH(); frame[6] |= DP_F_AUTH; reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        /* fragment fields */
        FRESH(); store16(frame + 26, 0); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store16(frame + 26, 2); reseal(frame, gl); /* PING cannot be fragmented */
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store16(frame + 24, 1); reseal(frame, gl); /* index 1 of 1 */
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store16(frame + 26, DP_MAX_FRAGMENTS + 1); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_TOO_LARGE);
        /* oversize datagram */
        static uint8_t big[DP_MAX_FRAME_UDP + 1];
        example(DP_OP_HELLO, &m);
        m.hello.pad_len = DP_MAX_FRAME_UDP - DP_HEADER_SIZE - 4 + 1;
        n = dp_msg_encode(DP_OP_HELLO, payload, sizeof(payload), &m);
        gl = make_frame(DP_OP_HELLO, 0, DP_F_CRC, payload, (size_t)n);
        CHECK(gl == DP_MAX_FRAME_UDP + 1, "oversize HELLO %ld", gl);
        memcpy(big, frame, sizeof(big));
        EXPECT_ERR(dp_frame_decode(big, sizeof(big), DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_TOO_LARGE);
        EXPECT_ERR(dp_frame_decode(big, sizeof(big) - 1, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_TOO_LARGE);
        struct dp_header h = { .opcode = DP_OP_HELLO, .frag_count = 1 };
        CHECK(dp_frame_encode(frame, sizeof(frame), DP_MAX_FRAME_UDP, &h, payload, (size_t)n, NULL, NULL) == -EMSGSIZE,
              "encode over max_frame");
        CHECK(dp_frame_encode(frame, 100, DP_MAX_FRAME_TCP, &h, payload, (size_t)n, NULL, NULL) == -ENOSPC,
              "encode over cap");

        /* request id 0 on opcodes that name a request; fragments of GENERATE */
        example(DP_OP_GENERATE, &m);
        n = dp_msg_encode(DP_OP_GENERATE, payload, sizeof(payload), &m);
        gl = make_frame(DP_OP_GENERATE, 12, DP_F_CRC, payload, (size_t)n);
        memcpy(good, frame, (size_t)gl);
        FRESH(); memset(frame + 8, 0, 8); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store16(frame + 24, 3); store16(frame + 26, 3); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store16(frame + 24, 2); store16(frame + 26, 3); store32(frame + 16, 5000); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), 0);
        FRESH(); store16(frame + 24, 0); store16(frame + 26, 3); store32(frame + 16, 5000); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store32(frame + 16, 5000); reseal(frame, gl); /* offset on an unfragmented request */
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
        FRESH(); store16(frame + 24, 2); store16(frame + 26, 3); store32(frame + 16, DP_MAX_MESSAGE - 10);
        reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_TOO_LARGE);
        FRESH(); store16(frame + 24, 2); store16(frame + 26, 3); store32(frame + 16, 0xfffffff0u); reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_TOO_LARGE);
        /* auth trailer reserved field */
        gl = make_frame(DP_OP_CANCEL, 12, DP_F_CRC | DP_F_AUTH, NULL, 0);
        frame[DP_HEADER_SIZE + 5] = 1;
        reseal(frame, gl);
        EXPECT_ERR(dp_frame_decode(frame, (size_t)gl, DP_MAX_FRAME_UDP, 0, &f, err), DP_ERR_BAD_FRAME);
#undef FRESH
}

/* ---- hostile payloads ---- */

static long gen_payload(const struct dp_generate *g)
{
        return dp_generate_encode(payload, sizeof(payload), g);
}

static void test_hostile_payloads(void)
{
        union dp_msg m, d;
        long n;

        /* GENERATE: values the encoder refuses, and the decoder's answer to the same bytes */
        example(DP_OP_GENERATE, &m);
        n = gen_payload(&m.generate);
        CHECK(n == 60 + 2 + 2 + 2 + 4 + (long)strlen(prompt_text), "GENERATE layout: %ld bytes", n);
        uint8_t saved[256];
        memcpy(saved, payload, (size_t)n);
#define FRESH() memcpy(payload, saved, (size_t)n)
        FRESH(); payload[0] = 0x20; /* unknown flag */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store32(payload + 4, DP_MAX_NEW_TOKENS + 1);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store32(payload + 16, 0x7fc00000u); /* NaN temperature */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store32(payload + 24, 0x7f800000u); /* +inf top_p */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store16(payload + 58, 1); /* reserved */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_FRAME);
        FRESH(); store16(payload + 56, DP_MAX_STOP + 1);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store16(payload + 56, 0xffff);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store16(payload + 60, 0); /* empty stop string */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store16(payload + 60, DP_MAX_STOP_LEN + 1);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store16(payload + 60, 0xffff);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store16(payload + 60, 40); /* stop string longer than what remains */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_FRAME);
        FRESH(); payload[62] = 0xc0; /* overlong UTF-8 in a stop string */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); store32(payload + 52, DP_MAX_PROMPT_BYTES + 1);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_PROMPT_TOO_LONG);
        FRESH(); store32(payload + 52, 0xffffffffu);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_PROMPT_TOO_LONG);
        FRESH(); store32(payload + 52, (uint32_t)strlen(prompt_text) + 1); /* prompt longer than the payload */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_FRAME);
        FRESH(); store32(payload + 52, (uint32_t)strlen(prompt_text) - 1); /* a byte left over */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_FRAME);
        FRESH(); payload[n - 1] = 0xff; /* invalid UTF-8 in the prompt */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        FRESH(); payload[n] = 0;
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n + 1, &d.generate, err), DP_ERR_BAD_FRAME);
        FRESH(); /* ids prompt over the token limit */
        store32(payload, DP_GEN_PROMPT_IDS);
        store32(payload + 52, DP_MAX_PROMPT_TOKENS + 1);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_PROMPT_TOO_LONG);
        store32(payload + 52, 0x40000001u); /* * 4 wraps in 32 bits */
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_PROMPT_TOO_LONG);
#undef FRESH
        /* nine well-formed stop strings: the count, not their bytes, is what is refused */
        memset(payload, 0, 60);
        for (unsigned i = 0; i < DP_MAX_STOP + 1; i++)
                store16(payload + 60 + 3 * i, 1), payload[62 + 3 * i] = 'a';
        store16(payload + 56, DP_MAX_STOP);
        EXPECT_ERR(dp_generate_decode(payload, 60 + 3 * DP_MAX_STOP, &d.generate, err), 0);
        store16(payload + 56, DP_MAX_STOP + 1);
        EXPECT_ERR(dp_generate_decode(payload, 60 + 3 * (DP_MAX_STOP + 1), &d.generate, err), DP_ERR_BAD_PARAM);
        /* a negative token id */
        m.generate.flags = DP_GEN_PROMPT_IDS;
        m.generate.prompt_text = NULL;
        m.generate.prompt_ids = prompt_ids;
        m.generate.prompt_len = 5;
        dp_id_put(prompt_ids, 2, -1);
        CHECK(gen_payload(&m.generate) == -EINVAL, "encoder took a negative id");
        dp_id_put(prompt_ids, 2, 3);
        n = gen_payload(&m.generate);
        dp_id_put(payload + n - 20, 2, -5);
        EXPECT_ERR(dp_generate_decode(payload, (size_t)n, &d.generate, err), DP_ERR_BAD_PARAM);
        /* the encoder refuses what the decoder would */
        example(DP_OP_GENERATE, &m);
        m.generate.sampling.temperature = NAN;
        CHECK(gen_payload(&m.generate) == -EINVAL, "encoder took NaN");
        example(DP_OP_GENERATE, &m);
        m.generate.n_stop = DP_MAX_STOP + 1;
        CHECK(gen_payload(&m.generate) == -EINVAL, "encoder took 9 stop strings");
        example(DP_OP_GENERATE, &m);
        m.generate.max_tokens = DP_MAX_NEW_TOKENS + 1;
        CHECK(gen_payload(&m.generate) == -EINVAL, "encoder took max_tokens over the limit");
        example(DP_OP_GENERATE, &m);
        m.generate.prompt_len = 0;
        m.generate.prompt_text = NULL;
        CHECK(gen_payload(&m.generate) > 0, "empty prompt (BOS only) is allowed");

        /* TOKENS */
        uint8_t t[64] = { 0 };
        t[0] = 2; /* unknown kind */
        store16(t + 2, 1);
        EXPECT_ERR(dp_tokens_decode(t, 12, &d.tokens, err), DP_ERR_BAD_FRAME);
        t[0] = 0;
        EXPECT_ERR(dp_tokens_decode(t, 12, &d.tokens, err), 0);
        store16(t + 2, 0);
        EXPECT_ERR(dp_tokens_decode(t, 8, &d.tokens, err), DP_ERR_BAD_FRAME); /* empty */
        store16(t + 2, DP_MAX_TOKENS_PER_FRAME + 1);
        EXPECT_ERR(dp_tokens_decode(t, 64, &d.tokens, err), DP_ERR_TOO_LARGE);
        store16(t + 2, 15); /* more ids than bytes */
        EXPECT_ERR(dp_tokens_decode(t, 64, &d.tokens, err), DP_ERR_BAD_FRAME);
        store16(t + 2, 0);
        store32(t + 4, 0xffffffffu); /* text length lying */
        EXPECT_ERR(dp_tokens_decode(t, 64, &d.tokens, err), DP_ERR_BAD_FRAME);
        store32(t + 4, 2);
        t[8] = 0xe4, t[9] = 0xbd; /* a cut 3-byte character */
        EXPECT_ERR(dp_tokens_decode(t, 10, &d.tokens, err), DP_ERR_BAD_FRAME);
        t[8] = 0xed, t[9] = 0xa0; store32(t + 4, 3); t[10] = 0x80; /* a surrogate */
        EXPECT_ERR(dp_tokens_decode(t, 11, &d.tokens, err), DP_ERR_BAD_FRAME);

        /* DONE */
        example(DP_OP_DONE, &m);
        n = dp_done_encode(payload, sizeof(payload), &m.done);
        CHECK(n == 32, "DONE is 32 bytes");
        payload[1] = DP_MAX_STOP; /* stop index out of range */
        EXPECT_ERR(dp_done_decode(payload, 32, &d.done, err), DP_ERR_BAD_FRAME);
        payload[0] = DP_FINISH_EOS, payload[1] = 0; /* stop index without reason STOP */
        EXPECT_ERR(dp_done_decode(payload, 32, &d.done, err), DP_ERR_BAD_FRAME);
        payload[0] = DP_FINISH_MAX + 1, payload[1] = DP_STOP_INDEX_NONE;
        EXPECT_ERR(dp_done_decode(payload, 32, &d.done, err), DP_ERR_BAD_FRAME);

        /* ERROR */
        example(DP_OP_ERROR, &m);
        n = dp_error_encode(payload, sizeof(payload), &m.error);
        store16(payload, 0);
        EXPECT_ERR(dp_error_decode(payload, (size_t)n, &d.error, err), DP_ERR_BAD_FRAME);
        store16(payload, 999); /* a code v1 does not know still decodes: receivers treat it as INTERNAL */
        EXPECT_ERR(dp_error_decode(payload, (size_t)n, &d.error, err), 0);
        payload[2] = 2;
        EXPECT_ERR(dp_error_decode(payload, (size_t)n, &d.error, err), DP_ERR_BAD_FRAME);
        payload[2] = 0;
        store16(payload + 12, DP_MAX_ERROR_MSG + 1);
        EXPECT_ERR(dp_error_decode(payload, (size_t)n, &d.error, err), DP_ERR_TOO_LARGE);
        m.error.msg.len = DP_MAX_ERROR_MSG + 1;
        m.error.msg.ptr = (const char *)payload;
        CHECK(dp_error_encode(frame, sizeof(frame), &m.error) == -EINVAL, "encoder took a long message");

        /* RESEND */
        uint8_t rs[8 + 8 * (DP_MAX_RESEND_RANGES + 1)] = { 0 };
        EXPECT_ERR(dp_resend_decode(rs, 4, &d.resend, err), DP_ERR_BAD_PARAM); /* no ranges */
        store16(rs, DP_MAX_RESEND_RANGES + 1);
        EXPECT_ERR(dp_resend_decode(rs, sizeof(rs) - 4, &d.resend, err), DP_ERR_BAD_PARAM);
        store16(rs, 2);
        store32(rs + 4, 10), store32(rs + 8, 5), store32(rs + 12, 14), store32(rs + 16, 1); /* overlap */
        EXPECT_ERR(dp_resend_decode(rs, 20, &d.resend, err), DP_ERR_BAD_PARAM);
        store32(rs + 12, 15);
        EXPECT_ERR(dp_resend_decode(rs, 20, &d.resend, err), 0);
        store32(rs + 8, 0); /* open range before the last */
        EXPECT_ERR(dp_resend_decode(rs, 20, &d.resend, err), DP_ERR_BAD_PARAM);
        store32(rs + 8, 5), store32(rs + 12, 0xffffffffu), store32(rs + 16, 2); /* wraps */
        EXPECT_ERR(dp_resend_decode(rs, 20, &d.resend, err), DP_ERR_BAD_PARAM);
        store32(rs + 16, 1);
        EXPECT_ERR(dp_resend_decode(rs, 20, &d.resend, err), 0);
        EXPECT_ERR(dp_resend_decode(rs, 28, &d.resend, err), DP_ERR_BAD_FRAME); /* count says 2, bytes say 3 */
        store16(rs + 2, 1);
        EXPECT_ERR(dp_resend_decode(rs, 20, &d.resend, err), DP_ERR_BAD_FRAME);

        /* HELLO, PING, PONG, INFO, TOKENIZE, ACK, COOKIE, CANCEL */
        uint8_t z[64] = { 1 };
        EXPECT_ERR(dp_hello_decode(z, 64, &d.hello, err), 0);
        z[40] = 1;
        EXPECT_ERR(dp_hello_decode(z, 64, &d.hello, err), DP_ERR_BAD_FRAME);
        z[0] = 0, z[40] = 0;
        EXPECT_ERR(dp_hello_decode(z, 64, &d.hello, err), DP_ERR_BAD_FRAME);
        memset(z, 0, sizeof(z));
        EXPECT_ERR(dp_ping_decode(z, 32, &d.ping, err), 0);
        EXPECT_ERR(dp_ping_decode(z, 8, &d.ping, err), DP_ERR_BAD_FRAME);
        EXPECT_ERR(dp_ping_decode(z, 33, &d.ping, err), DP_ERR_BAD_FRAME);
        z[20] = 1;
        EXPECT_ERR(dp_ping_decode(z, 32, &d.ping, err), DP_ERR_BAD_FRAME);
        memset(z, 0, sizeof(z));
        store32(z + 8 + 20, 2); /* load flags */
        EXPECT_ERR(dp_pong_decode(z, 32, &d.pong, err), DP_ERR_BAD_FRAME);
        store32(z + 8 + 20, 0);
        store32(z + 8 + 8, 5); /* 5 free of 0 */
        EXPECT_ERR(dp_pong_decode(z, 32, &d.pong, err), DP_ERR_BAD_FRAME);
        example(DP_OP_INFO, &m);
        n = dp_info_encode(payload, sizeof(payload), &m.info);
        CHECK(n == 76 + 26 + 12, "INFO layout: %ld bytes", n);
        store16(payload + 72, DP_MAX_NAME + 1);
        EXPECT_ERR(dp_info_decode(payload, (size_t)n, &d.info, err), DP_ERR_TOO_LARGE);
        store16(payload + 72, 27);
        EXPECT_ERR(dp_info_decode(payload, (size_t)n, &d.info, err), DP_ERR_BAD_FRAME);
        store16(payload + 72, 26);
        payload[1] = 1;
        EXPECT_ERR(dp_info_decode(payload, (size_t)n, &d.info, err), DP_ERR_BAD_FRAME);
        payload[1] = 0;
        store32(payload + 44, 4);
        EXPECT_ERR(dp_info_decode(payload, (size_t)n, &d.info, err), DP_ERR_BAD_FRAME);
        memset(z, 0, sizeof(z));
        store32(z, 8);
        EXPECT_ERR(dp_tokenize_decode(z, 8, &d.tokenize, err), DP_ERR_BAD_PARAM);
        store32(z, 0), store32(z + 4, DP_MAX_PROMPT_BYTES + 1);
        EXPECT_ERR(dp_tokenize_decode(z, 8, &d.tokenize, err), DP_ERR_PROMPT_TOO_LONG);
        store32(z + 4, 3), z[8] = 'a', z[9] = 0xc3, z[10] = 'b';
        EXPECT_ERR(dp_tokenize_decode(z, 11, &d.tokenize, err), DP_ERR_BAD_PARAM);
        EXPECT_ERR(dp_tokenize_decode(z, 10, &d.tokenize, err), DP_ERR_BAD_FRAME);
        EXPECT_ERR(dp_ack_decode(z, 3, &d.ack, err), DP_ERR_BAD_FRAME);
        EXPECT_ERR(dp_ack_decode(z, 5, &d.ack, err), DP_ERR_BAD_FRAME);
        memset(z, 0, sizeof(z));
        EXPECT_ERR(dp_cookie_decode(z, 40, &d.cookie, err), 0);
        z[5] = 1;
        EXPECT_ERR(dp_cookie_decode(z, 40, &d.cookie, err), DP_ERR_BAD_FRAME);
        EXPECT_ERR(dp_cookie_decode(z, 39, &d.cookie, err), DP_ERR_BAD_FRAME);
        EXPECT_ERR(dp_cancel_decode(z, 1, err), DP_ERR_BAD_FRAME);
        EXPECT_ERR(dp_msg_decode(0x40, z, 1, &d, err), DP_ERR_UNKNOWN_OPCODE);
}

/* ---- UTF-8 ---- */

static void test_utf8(void)
{
        static const struct { const char *s; bool ok; } v[] = {
                { "", true }, { "ascii", true }, { "\xc3\xa9", true }, { "\xe2\x82\xac", true },
                { "\xf0\x9f\x99\x82", true }, { "\xf4\x8f\xbf\xbf", true },
                { "\xc0\x80", false }, { "\xc1\xbf", false }, { "\xe0\x80\x80", false }, { "\xed\xa0\x80", false },
                { "\xf4\x90\x80\x80", false }, { "\xf8\x88\x80\x80\x80", false }, { "\x80", false },
                { "\xc3", false }, { "\xe2\x82", false }, { "\xc3\x28", false }, { "\xff", false },
        };
        for (size_t i = 0; i < SL_ARRAY_SIZE(v); i++)
                CHECK(dp_utf8_valid(v[i].s, strlen(v[i].s)) == v[i].ok, "utf8 vector %zu", i);
}

/* ---- fragmentation ---- */

static void test_fragments(void)
{
        enum { PLEN = 100000 };
        static char text[PLEN + 1];
        static uint8_t msg[DP_MAX_MESSAGE], out[DP_MAX_MESSAGE];
        static uint8_t frames[DP_MAX_FRAGMENTS][DP_MAX_FRAME_UDP];
        static long flen[DP_MAX_FRAGMENTS];
        static struct dp_reasm ra;
        struct dp_auth a = test_auth();
        union dp_msg m, d;
        struct dp_frame f;
        struct sl_error e = { { 0 } };
        uint16_t flags = DP_F_CRC | DP_F_COOKIE | DP_F_AUTH;

        for (int i = 0; i < PLEN; i++)
                text[i] = (char)('a' + i % 26);
        example(DP_OP_GENERATE, &m);
        m.generate.prompt_text = text;
        m.generate.prompt_len = PLEN;
        long n = dp_generate_encode(msg, sizeof(msg), &m.generate);
        int count = dp_fragment_count((size_t)n, DP_MAX_FRAME_UDP, flags);
        size_t chunk = DP_MAX_FRAME_UDP - DP_HEADER_SIZE - DP_TRAILERS_MAX;
        CHECK(count == (int)((n + chunk - 1) / chunk), "fragment count %d", count);
        if (count <= 0)
                return;
        struct dp_header h = { .opcode = DP_OP_GENERATE, .flags = flags, .request_id = 0xabc };
        for (int i = 0; i < count; i++) {
                flen[i] = dp_fragment_encode(frames[i], DP_MAX_FRAME_UDP, DP_MAX_FRAME_UDP, &h, msg, (size_t)n,
                                             (unsigned)i, cookie_bytes, &a);
                CHECK(flen[i] > 0 && flen[i] <= DP_MAX_FRAME_UDP, "fragment %d: %ld", i, flen[i]);
        }
        CHECK(dp_fragment_encode(frames[0], DP_MAX_FRAME_UDP, DP_MAX_FRAME_UDP, &h, msg, (size_t)n, (unsigned)count,
                                 cookie_bytes, &a) == -EINVAL, "fragment index == count");
        /* in a scrambled order, every third one twice */
        dp_reasm_init(&ra, out, sizeof(out));
        int done = 0;
        for (int k = 0; k < count; k++) {
                int i = (k * 37 + 11) % count; /* 37 is prime to count unless count is a multiple */
                if (count % 37 == 0)
                        i = count - 1 - k;
                for (int rep = 0; rep < (i % 3 == 0 ? 2 : 1); rep++) {
                        int r = dp_frame_decode(frames[i], (size_t)flen[i], DP_MAX_FRAME_UDP, DP_DECODE_REQUIRE_CRC, &f, &e);
                        CHECK(r == 0, "fragment %d: %s", i, e.msg);
                        r = dp_reasm_add(&ra, &f, &e);
                        CHECK(r >= 0, "reasm %d: %s", i, e.msg);
                        done += r == 1;
                }
        }
        CHECK(done == 1 && ra.total == (uint32_t)n && !memcmp(out, msg, (size_t)n), "reassembled message");
        CHECK(dp_generate_decode(out, ra.total, &d.generate, &e) == 0 && msg_eq(DP_OP_GENERATE, &m, &d),
              "reassembled GENERATE: %s", e.msg);

        /* disagreeing fragments */
        dp_reasm_init(&ra, out, sizeof(out));
        dp_frame_decode(frames[0], (size_t)flen[0], DP_MAX_FRAME_UDP, 0, &f, NULL);
        CHECK(dp_reasm_add(&ra, &f, NULL) == 0, "first fragment");
        f.h.frag_count++;
        EXPECT_ERR(dp_reasm_add(&ra, &f, err), DP_ERR_BAD_FRAME);
        f.h.frag_count--;
        f.h.request_id++;
        EXPECT_ERR(dp_reasm_add(&ra, &f, err), DP_ERR_BAD_FRAME);
        f.h.request_id--;
        f.h.payload_len--; /* same index, other extent */
        EXPECT_ERR(dp_reasm_add(&ra, &f, err), DP_ERR_BAD_FRAME);
        /* two fragments that overlap: caught when the last one is in */
        struct dp_frame g = f;
        g.h.payload_len = 10;
        g.h.frag_count = 2;
        g.h.frag_index = 0;
        dp_reasm_init(&ra, out, sizeof(out));
        CHECK(dp_reasm_add(&ra, &g, NULL) == 0, "overlap 1");
        g.h.frag_index = 1;
        g.h.seq = 5;
        EXPECT_ERR(dp_reasm_add(&ra, &g, err), DP_ERR_BAD_FRAME);
        g.h.seq = 12; /* a gap */
        dp_reasm_init(&ra, out, sizeof(out));
        g.h.frag_index = 1;
        CHECK(dp_reasm_add(&ra, &g, NULL) == 0, "gap 1");
        g.h.frag_index = 0, g.h.seq = 0;
        EXPECT_ERR(dp_reasm_add(&ra, &g, err), DP_ERR_BAD_FRAME);
        /* a buffer smaller than the message */
        dp_reasm_init(&ra, out, 8);
        EXPECT_ERR(dp_reasm_add(&ra, &g, err), DP_ERR_TOO_LARGE);
        /* not fragmentable */
        g.h.opcode = DP_OP_PING;
        dp_reasm_init(&ra, out, sizeof(out));
        EXPECT_ERR(dp_reasm_add(&ra, &g, err), DP_ERR_BAD_FRAME);
        /* a message over the limit cannot be fragmented */
        CHECK(dp_fragment_count(DP_MAX_MESSAGE + 1, DP_MAX_FRAME_UDP, 0) == -EMSGSIZE, "over DP_MAX_MESSAGE");
        CHECK(dp_fragment_count(10, DP_HEADER_SIZE + DP_TRAILERS_MAX, flags) == -EMSGSIZE, "no room per frame");
        CHECK(dp_fragment_count(0, DP_MAX_FRAME_UDP, 0) == 1, "empty message: one frame");
        /* a CANCEL through dp_fragment_encode: one unfragmented frame */
        struct dp_header hc = { .opcode = DP_OP_CANCEL, .request_id = 4 };
        long cl = dp_fragment_encode(frames[0], DP_MAX_FRAME_UDP, DP_MAX_FRAME_UDP, &hc, NULL, 0, 0, NULL, NULL);
        CHECK(cl == DP_HEADER_SIZE && dp_frame_decode(frames[0], (size_t)cl, DP_MAX_FRAME_UDP, 0, &f, NULL) == 0,
              "CANCEL via dp_fragment_encode");
}

/* ---- the limits fit together ---- */

static void test_limits(void)
{
        static char text[DP_MAX_PROMPT_BYTES];
        static uint8_t ids[DP_MAX_PROMPT_TOKENS * 4];
        static char stop[DP_MAX_STOP][DP_MAX_STOP_LEN];
        union dp_msg m;
        memset(text, 'x', sizeof(text));
        memset(stop, 'y', sizeof(stop));
        example(DP_OP_GENERATE, &m);
        m.generate.n_stop = DP_MAX_STOP;
        for (unsigned i = 0; i < DP_MAX_STOP; i++)
                m.generate.stop[i] = (struct dp_str){ stop[i], DP_MAX_STOP_LEN };
        m.generate.prompt_text = text;
        m.generate.prompt_len = DP_MAX_PROMPT_BYTES;
        long n = dp_generate_encode(payload, sizeof(payload), &m.generate);
        CHECK(n > 0 && n <= DP_MAX_MESSAGE, "largest text GENERATE: %ld bytes, DP_MAX_MESSAGE %u", n, DP_MAX_MESSAGE);
        CHECK(dp_fragment_count((size_t)n, DP_MAX_FRAME_UDP, DP_F_ALL) > 0, "largest GENERATE fits DP_MAX_FRAGMENTS over UDP");
        CHECK(dp_fragment_count(DP_MAX_MESSAGE, DP_MAX_FRAME_UDP, DP_F_ALL) > 0, "DP_MAX_MESSAGE fits over UDP");
        m.generate.flags |= DP_GEN_PROMPT_IDS;
        m.generate.prompt_text = NULL;
        m.generate.prompt_ids = ids;
        m.generate.prompt_len = DP_MAX_PROMPT_TOKENS;
        n = dp_generate_encode(payload, sizeof(payload), &m.generate);
        CHECK(n > 0 && n <= DP_MAX_MESSAGE, "largest ids GENERATE: %ld bytes", n);

        /* a TOKENS frame of the most ids fits a UDP datagram with both trailers */
        uint8_t tk[DP_MAX_TOKENS_PER_FRAME * 4] = { 0 };
        struct dp_tokens t = { 0, DP_MAX_TOKENS_PER_FRAME, tk, { "", 0 } };
        n = dp_tokens_encode(payload, sizeof(payload), &t);
        CHECK(DP_HEADER_SIZE + n + DP_TRAILERS_MAX <= DP_MAX_FRAME_UDP, "full TOKENS frame: %ld", n);

        /* no amplification: INFO with the longest names fits in the smallest UDP HELLO, PONG in PING */
        static char name[DP_MAX_NAME];
        memset(name, 'n', sizeof(name));
        example(DP_OP_INFO, &m);
        m.info.model = (struct dp_str){ name, DP_MAX_NAME };
        m.info.server = (struct dp_str){ name, DP_MAX_NAME };
        n = dp_info_encode(payload, sizeof(payload), &m.info);
        CHECK(DP_HEADER_SIZE + n + DP_TRAILERS_MAX <= DP_UDP_HELLO_MIN, "largest INFO frame %ld over the HELLO minimum",
              DP_HEADER_SIZE + n + DP_TRAILERS_MAX);
        example(DP_OP_PONG, &m);
        CHECK(dp_pong_encode(payload, sizeof(payload), &m.pong) <= (long)DP_PING_PAYLOAD, "PONG larger than PING");
        /* an ERROR with a full message still fits a datagram */
        example(DP_OP_ERROR, &m);
        m.error.msg = (struct dp_str){ name, DP_MAX_NAME };
        CHECK(dp_error_encode(payload, sizeof(payload), &m.error) + DP_HEADER_SIZE + DP_TRAILERS_MAX + DP_MAX_ERROR_MSG
                      <= DP_MAX_FRAME_UDP, "ERROR frame size");
}

/* ---- TCP: frames cut anywhere in a byte stream ---- */

static void test_stream(void)
{
        static uint8_t stream[8192];
        size_t len = 0;
        int n_frames = 0;
        for (unsigned op = 1; op <= DP_OP_MAX; op++) {
                union dp_msg m;
                example((uint8_t)op, &m);
                long n = dp_msg_encode((uint8_t)op, payload, sizeof(payload), &m);
                long fl = make_frame((uint8_t)op, 100 + op, (uint16_t)(op & 1 ? DP_F_CRC : DP_F_CRC | DP_F_AUTH),
                                     payload, (size_t)n);
                memcpy(stream + len, frame, (size_t)fl);
                len += (size_t)fl;
                n_frames++;
        }
        /* a reader that gets 1..7 bytes at a time, as a socket might give them */
        size_t have = 0, at = 0, fed = 0;
        int got = 0;
        while (fed < len) {
                size_t step = SL_MIN((size_t)(fed % 7 + 1), len - fed);
                fed += step;
                have = fed;
                for (;;) {
                        long fl = dp_frame_length(stream + at, have - at, DP_MAX_FRAME_TCP, NULL);
                        CHECK(fl >= 0, "stream frame length %ld at %zu", fl, at);
                        if (fl <= 0 || (size_t)fl > have - at)
                                break;
                        struct dp_frame f;
                        struct sl_error e = { { 0 } };
                        int r = dp_frame_decode(stream + at, (size_t)fl, DP_MAX_FRAME_TCP, 0, &f, &e);
                        CHECK(r == 0 && f.h.request_id == 100u + f.h.opcode, "stream frame %d: %s", got, e.msg);
                        at += (size_t)fl;
                        got++;
                }
        }
        CHECK(got == n_frames && at == len, "stream: %d of %d frames", got, n_frames);
}

static void test_names(void)
{
        for (unsigned op = 1; op <= DP_OP_MAX; op++)
                CHECK(strcmp(dp_opcode_name((uint8_t)op), "?"), "opcode %u has no name", op);
        for (int c = 1; c <= DP_ERR_MAX; c++)
                CHECK(strcmp(dp_err_name(c), "?") && !strcmp(dp_err_name(c), dp_err_name(-c)), "error %d", c);
        for (unsigned r = 0; r <= DP_FINISH_MAX; r++)
                CHECK(strcmp(dp_finish_name((uint8_t)r), "?"), "finish %u", r);
        CHECK(!strcmp(dp_opcode_name(0), "?") && !strcmp(dp_err_name(0), "?") && !strcmp(dp_err_name(99), "?"), "unknown");
        CHECK(dp_opcode_from_client(DP_OP_GENERATE) && !dp_opcode_from_client(DP_OP_TOKENS), "directions");
}

int main(void)
{
        test_roundtrip();
        test_hostile_frames();
        test_hostile_payloads();
        test_utf8();
        test_fragments();
        test_limits();
        test_stream();
        test_names();
        if (failures) {
                fprintf(stderr, "%d failures\n", failures);
                return 1;
        }
        printf("protocol: ok\n");
        return 0;
}
