/* dataplane.h — sluice's dataplane: the wire protocol codec shared by the server and the
 * client library (this part), and later the transports (kernel UDP/TCP, DPDK) and the rings
 * to and from the engine. docs/protocol.md is the specification; this is its one
 * implementation. Nothing here allocates or prints: encoders write into caller buffers,
 * decoders return views into the input after checking every length, count and sum. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl.h"

/* ---- constants and limits (docs/protocol.md §2, §9) ---- */

#define DP_MAGIC 0x43554C53u /* bytes 'S' 'L' 'U' 'C', read as a little-endian u32 */
#define DP_VERSION 1
#define DP_HEADER_SIZE 32
#define DP_COOKIE_SIZE 32        /* opaque cookie field (flag DP_F_COOKIE) */
#define DP_MAC_SIZE 32           /* HMAC-SHA256 */
#define DP_AUTH_SIZE 56          /* auth trailer (flag DP_F_AUTH) */
#define DP_TRAILERS_MAX (DP_COOKIE_SIZE + DP_AUTH_SIZE)

#define DP_MAX_FRAME_TCP 65536u  /* whole frame: header + payload + trailers */
#define DP_MAX_FRAME_UDP 1400u   /* one datagram, under a 1500-byte MTU with IPv6 + UDP */
#define DP_MAX_MESSAGE 132096u   /* a request's payload after reassembly of its fragments */
#define DP_MAX_FRAGMENTS 128u
#define DP_MAX_PROMPT_TOKENS 32768u
#define DP_MAX_PROMPT_BYTES 131072u
#define DP_MAX_NEW_TOKENS 32768u
#define DP_MAX_STOP 8u           /* stop strings per request */
#define DP_MAX_STOP_LEN 64u      /* bytes per stop string */
#define DP_MAX_TOKENS_PER_FRAME 256u
#define DP_MAX_ERROR_MSG 256u
#define DP_MAX_NAME 128u         /* INFO model and server strings */
#define DP_MAX_RESEND_RANGES 64u
#define DP_UDP_HELLO_MIN 1200u   /* a UDP HELLO datagram is padded to at least this */
#define DP_PING_PAYLOAD 32u      /* PING is padded so that PONG is never larger */

/* Opcodes. C->S: sent by clients; S->C: sent by servers. */
enum dp_opcode {
        DP_OP_HELLO = 0x01,     /* C->S: who are you, what are your limits */
        DP_OP_INFO = 0x02,      /* S->C: answer to HELLO */
        DP_OP_GENERATE = 0x03,  /* C->S: a generation request (may be fragmented) */
        DP_OP_TOKENS = 0x04,    /* S->C: streamed token ids + text */
        DP_OP_DONE = 0x05,      /* S->C: end of a stream: finish reason and usage */
        DP_OP_ERROR = 0x06,     /* S->C: error code and message */
        DP_OP_CANCEL = 0x07,    /* C->S: stop a request */
        DP_OP_PING = 0x08,      /* C->S: liveness and load probe */
        DP_OP_PONG = 0x09,      /* S->C: answer to PING, with load */
        DP_OP_TOKENIZE = 0x0a,  /* C->S: tokenize text (may be fragmented); answered by TOKENS + DONE */
        DP_OP_RESEND = 0x0b,    /* C->S: resend these stream sequence numbers (UDP) */
        DP_OP_ACK = 0x0c,       /* C->S: all frames below next_seq received; renews the lease (UDP) */
        DP_OP_COOKIE = 0x0d,    /* S->C: reserved for the cookie exchange; v1 servers never send it */
        DP_OP_MAX = DP_OP_COOKIE,
};

/* Header flags. Bits not defined here must be zero. */
enum dp_flag {
        DP_F_CRC = 1u << 0,     /* the crc field holds CRC32C of the frame; else it must be 0 */
        DP_F_COOKIE = 1u << 1,  /* a DP_COOKIE_SIZE cookie follows the payload */
        DP_F_AUTH = 1u << 2,    /* a DP_AUTH_SIZE auth trailer ends the frame */
        DP_F_ALL = DP_F_CRC | DP_F_COOKIE | DP_F_AUTH,
};

/* Protocol error codes (ERROR frames). The codec's decoders return -code. */
enum dp_err {
        DP_ERR_BAD_FRAME = 1,
        DP_ERR_BAD_VERSION = 2,
        DP_ERR_BAD_CRC = 3,
        DP_ERR_UNKNOWN_OPCODE = 4,
        DP_ERR_TOO_LARGE = 5,
        DP_ERR_PROMPT_TOO_LONG = 6,
        DP_ERR_BAD_PARAM = 7,
        DP_ERR_BUSY = 8,
        DP_ERR_NOT_FOUND = 9,
        DP_ERR_CANCELLED = 10,
        DP_ERR_DEADLINE = 11,
        DP_ERR_INTERNAL = 12,
        DP_ERR_UNAUTHENTICATED = 13,
        DP_ERR_RATE_LIMITED = 14,
        DP_ERR_SHUTTING_DOWN = 15,
        DP_ERR_MAX = DP_ERR_SHUTTING_DOWN,
};

/* GENERATE flags. */
enum dp_gen_flag {
        DP_GEN_PROMPT_IDS = 1u << 0,    /* the prompt is token ids, not UTF-8 text */
        DP_GEN_NO_TEXT = 1u << 1,       /* TOKENS frames carry ids only (text_len 0) */
        DP_GEN_ECHO_PROMPT = 1u << 2,   /* stream the prompt's tokens first (kind PROMPT) */
        DP_GEN_ADD_SPECIAL = 1u << 3,   /* text prompt: add BOS/EOS as the model wants */
        DP_GEN_PARSE_SPECIAL = 1u << 4, /* text prompt: "<|...|>" special tokens are parsed */
        DP_GEN_ALL = 0x1f,
};

/* TOKENIZE flags. */
enum dp_tok_flag {
        DP_TOK_ADD_SPECIAL = 1u << 0,
        DP_TOK_PARSE_SPECIAL = 1u << 1,
        DP_TOK_NO_TEXT = 1u << 2,
        DP_TOK_ALL = 0x07,
};

enum dp_tokens_kind { DP_TOKENS_GENERATED = 0, DP_TOKENS_PROMPT = 1 };

enum dp_finish {
        DP_FINISH_NONE = 0,        /* not a generation (TOKENIZE) */
        DP_FINISH_EOS = 1,         /* the model produced an end-of-generation token */
        DP_FINISH_LENGTH = 2,      /* max_tokens reached */
        DP_FINISH_STOP = 3,        /* a stop string matched (stop_index says which) */
        DP_FINISH_CANCELLED = 4,   /* CANCEL, or the lease ran out */
        DP_FINISH_DEADLINE = 5,    /* deadline_ms passed */
        DP_FINISH_CONTEXT = 6,     /* the context window is full */
        DP_FINISH_MAX = DP_FINISH_CONTEXT,
};

#define DP_STOP_INDEX_NONE 0xffu

enum dp_error_flag {
        DP_ERRF_TERMINAL = 1u << 0, /* the request is over; this frame ends its stream */
};

enum dp_info_flag {
        DP_INFO_AUTH_REQUIRED = 1u << 0,
        DP_INFO_COOKIE_REQUIRED = 1u << 1,
        DP_INFO_ALL = 0x03,
};

enum dp_load_flag {
        DP_LOAD_DRAINING = 1u << 0, /* shutting down: new requests get SHUTTING_DOWN */
        DP_LOAD_ALL = 0x01,
};

enum dp_decode_flag {
        DP_DECODE_REQUIRE_CRC = 1u << 0, /* UDP: a frame without DP_F_CRC is BAD_FRAME */
};

/* ---- frames ---- */

struct dp_header {
        uint8_t version;
        uint8_t opcode;
        uint16_t flags;
        uint64_t request_id;
        uint32_t seq;         /* stream frames: sequence number; request fragments: byte offset */
        uint32_t payload_len;
        uint16_t frag_index;
        uint16_t frag_count;  /* 1 for an unfragmented frame */
        uint32_t crc;
};

/* The reserved per-frame authentication trailer (docs/protocol.md §7.1); v1 does not verify it. */
struct dp_auth {
        uint32_t key_id;
        uint64_t timestamp_ms; /* Unix time */
        uint64_t nonce;
        uint8_t mac[DP_MAC_SIZE];
};

struct dp_frame {
        struct dp_header h;
        const uint8_t *payload; /* h.payload_len bytes, inside the input */
        const uint8_t *cookie;  /* DP_COOKIE_SIZE bytes inside the input, or NULL */
        bool has_auth;
        struct dp_auth auth;
        size_t len;             /* the whole frame */
};

/* TCP framing: with len bytes of a stream buffered, returns the length of the frame that
 * starts at buf (>= DP_HEADER_SIZE) once the header is there, 0 if fewer than
 * DP_HEADER_SIZE bytes are buffered, or -DP_ERR_BAD_FRAME / -DP_ERR_BAD_VERSION /
 * -DP_ERR_TOO_LARGE when the header cannot start a valid frame of at most max_frame bytes. */
long dp_frame_length(const void *buf, size_t len, size_t max_frame, struct sl_error *err);

/* Decodes exactly one frame of len bytes (a datagram, or what dp_frame_length() said).
 * Checks magic, version, opcode, flags, lengths against len and max_frame, the fragment
 * fields, and the CRC when DP_F_CRC is set. Returns 0, or -enum dp_err with a reason. */
int dp_frame_decode(const void *buf, size_t len, size_t max_frame, unsigned dflags,
                    struct dp_frame *f, struct sl_error *err);

/* Writes a frame: header h (h->version, h->payload_len and h->crc are set here, the rest is
 * the caller's), then payload_len bytes from payload (which may already sit at
 * buf + DP_HEADER_SIZE), then the cookie if DP_F_COOKIE and the auth trailer if DP_F_AUTH
 * (both must then be non-NULL), then the CRC if DP_F_CRC. Returns the frame length, or
 * -EINVAL (bad header fields), -EMSGSIZE (over max_frame) or -ENOSPC (over cap). */
long dp_frame_encode(void *buf, size_t cap, size_t max_frame, const struct dp_header *h,
                     const void *payload, size_t payload_len, const uint8_t *cookie,
                     const struct dp_auth *auth);

/* Trailer bytes that the flags add to a frame. */
size_t dp_trailers_size(uint16_t flags);

/* ---- fragmentation of requests (GENERATE, TOKENIZE) ---- */

/* Fragments needed to send msg_len bytes in frames of at most max_frame bytes with the
 * trailers of flags; -EMSGSIZE when more than DP_MAX_FRAGMENTS or msg_len > DP_MAX_MESSAGE. */
int dp_fragment_count(size_t msg_len, size_t max_frame, uint16_t flags);
/* Encodes fragment index of the message (h's frag and seq fields are set here). Returns the
 * frame length or a negative errno as dp_frame_encode(). */
long dp_fragment_encode(void *buf, size_t cap, size_t max_frame, const struct dp_header *h,
                        const void *msg, size_t msg_len, unsigned index, const uint8_t *cookie,
                        const struct dp_auth *auth);

/* Reassembles one fragmented request into a caller buffer. Duplicates of a fragment already
 * held are ignored (UDP may duplicate); a fragment that disagrees with what is held is
 * BAD_FRAME. */
struct dp_reasm {
        uint8_t *buf;
        size_t cap;
        uint64_t request_id;
        uint8_t opcode;
        uint16_t count;        /* 0 until the first fragment */
        uint16_t n_seen;
        uint32_t total;        /* message length, known once the last fragment is in */
        uint64_t seen[DP_MAX_FRAGMENTS / 64];
        uint32_t off[DP_MAX_FRAGMENTS];
        uint32_t len[DP_MAX_FRAGMENTS];
};
void dp_reasm_init(struct dp_reasm *r, void *buf, size_t cap);
/* Returns 1 when the message is complete (r->buf holds r->total bytes), 0 when more
 * fragments are needed, or -enum dp_err. */
int dp_reasm_add(struct dp_reasm *r, const struct dp_frame *f, struct sl_error *err);

/* ---- payloads (docs/protocol.md §4) ---- */

/* A byte string inside a payload: not NUL-terminated. */
struct dp_str {
        const char *ptr;
        uint32_t len;
};

/* Token ids travel as little-endian i32 arrays; views point into the payload (unaligned). */
static inline int32_t dp_id_get(const uint8_t *ids_le, uint32_t i)
{
        const uint8_t *p = ids_le + (size_t)i * 4;
        return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}
static inline void dp_id_put(uint8_t *ids_le, uint32_t i, int32_t id)
{
        uint8_t *p = ids_le + (size_t)i * 4;
        uint32_t u = (uint32_t)id;
        p[0] = (uint8_t)u, p[1] = (uint8_t)(u >> 8), p[2] = (uint8_t)(u >> 16), p[3] = (uint8_t)(u >> 24);
}

struct dp_hello {
        uint8_t max_version; /* highest protocol version the client speaks */
        uint32_t pad_len;    /* zero bytes after the fixed part */
};

struct dp_load {
        uint32_t queue_depth;     /* requests waiting for admission */
        uint32_t active;          /* requests being generated */
        uint32_t kv_blocks_free;
        uint32_t kv_blocks_total;
        uint32_t max_inflight;    /* per client */
        uint32_t flags;           /* enum dp_load_flag */
};

struct dp_info {
        uint8_t version;          /* protocol version served */
        uint32_t max_frame;       /* of the transport that carried the HELLO */
        uint32_t max_message;
        uint32_t max_prompt_tokens;
        uint32_t max_prompt_bytes;
        uint32_t max_new_tokens;
        uint32_t max_stop;
        uint32_t max_stop_len;
        uint32_t n_ctx;
        uint32_t n_vocab;
        uint32_t lease_ms;        /* UDP: a silent client's requests are cancelled after this */
        uint32_t flags;           /* enum dp_info_flag */
        struct dp_load load;
        struct dp_str model;      /* <= DP_MAX_NAME bytes, UTF-8 */
        struct dp_str server;     /* e.g. "sluice 0.1.0", <= DP_MAX_NAME bytes */
};

/* Mirrors engine.h's struct engine_sampling field for field. */
struct dp_sampling {
        float temperature;
        int32_t top_k;
        float top_p;
        float min_p;
        float repeat_penalty;
        float presence_penalty;
        float frequency_penalty;
        int32_t penalty_last_n;
        uint64_t seed;
};

struct dp_generate {
        uint32_t flags;           /* enum dp_gen_flag */
        struct dp_sampling sampling;
        uint32_t max_tokens;      /* 0: the server's default; else 1..DP_MAX_NEW_TOKENS */
        uint32_t deadline_ms;     /* from receipt; 0: none */
        uint16_t n_stop;
        struct dp_str stop[DP_MAX_STOP];
        uint32_t prompt_len;      /* bytes of text, or number of ids with DP_GEN_PROMPT_IDS */
        const char *prompt_text;  /* text prompt, or NULL */
        const uint8_t *prompt_ids;/* ids prompt (little-endian i32), or NULL */
};

struct dp_tokens {
        uint8_t kind;             /* enum dp_tokens_kind */
        uint16_t n_tokens;
        const uint8_t *ids;       /* n_tokens little-endian i32 */
        struct dp_str text;       /* the UTF-8 text these tokens completed */
};

struct dp_done {
        uint8_t reason;           /* enum dp_finish */
        uint8_t stop_index;       /* DP_FINISH_STOP: which stop string; else DP_STOP_INDEX_NONE */
        uint32_t prompt_tokens;
        uint32_t generated_tokens;
        uint32_t queue_us;        /* receipt to admission */
        uint64_t ttft_us;         /* receipt to the first generated token */
        uint64_t total_us;        /* receipt to this frame */
};

struct dp_error {
        uint16_t code;            /* enum dp_err */
        uint8_t flags;            /* enum dp_error_flag */
        uint32_t retry_after_ms;  /* BUSY, RATE_LIMITED, SHUTTING_DOWN: a hint; else 0 */
        uint32_t detail;          /* code-specific: the limit exceeded, the seq not held, ... */
        struct dp_str msg;        /* <= DP_MAX_ERROR_MSG bytes, UTF-8 */
};

struct dp_ping {
        uint64_t token;           /* opaque to the server, echoed in PONG */
};

struct dp_pong {
        uint64_t token;
        struct dp_load load;
};

struct dp_tokenize {
        uint32_t flags;           /* enum dp_tok_flag */
        struct dp_str text;
};

struct dp_range {
        uint32_t first;
        uint32_t count;           /* 0 (last range only): through the newest frame sent */
};

struct dp_resend {
        uint16_t n_ranges;
        struct dp_range r[DP_MAX_RESEND_RANGES];
};

struct dp_ack {
        uint32_t next_seq;
};

struct dp_cookie {
        uint32_t lifetime_ms;
        const uint8_t *cookie;    /* DP_COOKIE_SIZE bytes */
};

/* Each decoder takes the payload of one message (reassembled if it was fragmented) and
 * returns 0 or -enum dp_err with a reason; string and id fields point into p. Each encoder
 * writes the payload into buf and returns its length, or -EINVAL for fields outside the
 * protocol's rules, or -ENOSPC when cap is too small. */
int dp_hello_decode(const void *p, size_t len, struct dp_hello *m, struct sl_error *err);
long dp_hello_encode(void *buf, size_t cap, const struct dp_hello *m);
int dp_info_decode(const void *p, size_t len, struct dp_info *m, struct sl_error *err);
long dp_info_encode(void *buf, size_t cap, const struct dp_info *m);
int dp_generate_decode(const void *p, size_t len, struct dp_generate *m, struct sl_error *err);
long dp_generate_encode(void *buf, size_t cap, const struct dp_generate *m);
int dp_tokens_decode(const void *p, size_t len, struct dp_tokens *m, struct sl_error *err);
long dp_tokens_encode(void *buf, size_t cap, const struct dp_tokens *m);
int dp_done_decode(const void *p, size_t len, struct dp_done *m, struct sl_error *err);
long dp_done_encode(void *buf, size_t cap, const struct dp_done *m);
int dp_error_decode(const void *p, size_t len, struct dp_error *m, struct sl_error *err);
long dp_error_encode(void *buf, size_t cap, const struct dp_error *m);
int dp_ping_decode(const void *p, size_t len, struct dp_ping *m, struct sl_error *err);
long dp_ping_encode(void *buf, size_t cap, const struct dp_ping *m);
int dp_pong_decode(const void *p, size_t len, struct dp_pong *m, struct sl_error *err);
long dp_pong_encode(void *buf, size_t cap, const struct dp_pong *m);
int dp_tokenize_decode(const void *p, size_t len, struct dp_tokenize *m, struct sl_error *err);
long dp_tokenize_encode(void *buf, size_t cap, const struct dp_tokenize *m);
int dp_resend_decode(const void *p, size_t len, struct dp_resend *m, struct sl_error *err);
long dp_resend_encode(void *buf, size_t cap, const struct dp_resend *m);
int dp_ack_decode(const void *p, size_t len, struct dp_ack *m, struct sl_error *err);
long dp_ack_encode(void *buf, size_t cap, const struct dp_ack *m);
int dp_cookie_decode(const void *p, size_t len, struct dp_cookie *m, struct sl_error *err);
long dp_cookie_encode(void *buf, size_t cap, const struct dp_cookie *m);
/* CANCEL has an empty payload. */
int dp_cancel_decode(const void *p, size_t len, struct sl_error *err);

/* Any message by opcode, for code that dispatches on it (and the fuzzer). */
union dp_msg {
        struct dp_hello hello;
        struct dp_info info;
        struct dp_generate generate;
        struct dp_tokens tokens;
        struct dp_done done;
        struct dp_error error;
        struct dp_ping ping;
        struct dp_pong pong;
        struct dp_tokenize tokenize;
        struct dp_resend resend;
        struct dp_ack ack;
        struct dp_cookie cookie;
};
int dp_msg_decode(uint8_t opcode, const void *p, size_t len, union dp_msg *m, struct sl_error *err);
long dp_msg_encode(uint8_t opcode, void *buf, size_t cap, const union dp_msg *m);

/* ---- names and rules ---- */

const char *dp_opcode_name(uint8_t opcode); /* "GENERATE", ...; "?" when unknown */
const char *dp_err_name(int code);          /* accepts code or -code; "?" when unknown */
const char *dp_finish_name(uint8_t reason);
bool dp_opcode_from_client(uint8_t opcode); /* C->S opcodes */
bool dp_opcode_fragmentable(uint8_t opcode);/* GENERATE, TOKENIZE */
/* Strict UTF-8: no overlongs, surrogates or code points over U+10FFFF. */
bool dp_utf8_valid(const void *s, size_t len);

/* ---- CRC32C (Castagnoli, as iSCSI: RFC 3720) ---- */

/* crc is the value returned for the bytes before (0 to start). SSE4.2 when the CPU has it. */
uint32_t dp_crc32c(uint32_t crc, const void *buf, size_t len);
/* The two implementations, for tests: table-driven, and the crc32 instruction (the caller
 * checks dp_crc32c_hw_available() first). */
uint32_t dp_crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t dp_crc32c_hw(uint32_t crc, const void *buf, size_t len);
bool dp_crc32c_hw_available(void);
/* CRC32C of a frame as the crc field carries it: header bytes [0, 28) then [32, len). */
uint32_t dp_frame_crc(const void *frame, size_t len);

/* ==== client keys and frame authentication (dataplane/auth.c; docs/security.md) ==== */

#define DP_KEY_MIN 16u          /* secret bytes */
#define DP_KEY_MAX 64u
#define DP_KEYS_MAX 4096u
#define DP_KEYS_FILE_MAX (1u << 20)

/* One client key: id, secret and optional per-key limits (0 = the server's defaults). */
struct dp_key {
        uint32_t id;
        uint32_t secret_len;
        uint8_t secret[DP_KEY_MAX];
        uint32_t max_inflight;  /* concurrent requests */
        uint32_t rps;           /* requests per second */
        uint32_t tps;           /* generated tokens per second */
};

/* A set of keys, immutable once built (a reload builds a new one). */
struct dp_keys;

/* Parses a keys file's text: one key per line, "ID SECRET_HEX [max_inflight=N] [rps=N]
 * [tps=N]", blank lines and '#' comments ignored. Errors name origin:line. */
int dp_keys_parse(const char *text, size_t len, const char *origin, struct dp_keys **out, struct sl_error *err);
/* Reads and parses a keys file. check_owner: the file must be a regular file owned by this
 * process's effective uid with no group/other permission bits (0600 or 0400). */
int dp_keys_load(const char *path, bool check_owner, struct dp_keys **out, struct sl_error *err);
void dp_keys_free(struct dp_keys *ks);
uint32_t dp_keys_count(const struct dp_keys *ks);
const struct dp_key *dp_keys_at(const struct dp_keys *ks, uint32_t i);       /* by position */
const struct dp_key *dp_keys_find(const struct dp_keys *ks, uint32_t id);    /* NULL: unknown */

/* Writes the MAC of an encoded frame that has DP_F_AUTH (its trailer's key id, timestamp and
 * nonce already set): HMAC-SHA256 with the key over the frame up to the MAC with the crc
 * field as zero; then the CRC when DP_F_CRC. 0 or -EINVAL. */
int dp_frame_sign(uint8_t *frame, size_t len, const struct dp_key *key);

/* Frames checked, by outcome. Written by one thread (relaxed atomic stores), readable by
 * others with relaxed loads (a transport's stats copy). */
struct dp_auth_stats {
        uint64_t ok, missing, unknown_key, expired, bad_mac, replayed, replay_full;
};

/* The (key, nonce) pairs seen within the window: a fixed table (capacity a power of two),
 * one per transport thread. stats: where to count (NULL: inside the table). */
struct dp_replay;
int dp_replay_create(struct dp_replay **out, uint32_t capacity, uint32_t window_ms, struct dp_auth_stats *stats,
                     struct sl_error *err);
void dp_replay_free(struct dp_replay *rp);
void dp_replay_stats(const struct dp_replay *rp, struct dp_auth_stats *out);

/* The server's check of a decoded frame f (frame: its bytes): a trailer, a known key, a
 * timestamp within the window of now_ms (Unix time), the MAC, and a nonce not seen with that
 * key within the window. 0 (key: the client's key) or -DP_ERR_UNAUTHENTICATED with the
 * reason. No allocation. */
int dp_auth_check(const struct dp_keys *ks, struct dp_replay *rp, const uint8_t *frame, const struct dp_frame *f,
                  uint64_t now_ms, const struct dp_key **key, struct sl_error *err);

/* What the transports share for authentication: whether it is required, the window, and the
 * keys in force, which a reload swaps while the transports run. A transport thread takes a
 * reader slot, marks each pass of its loop (dp_auth_enter) and the moments it blocks with
 * nothing held (dp_auth_idle); between two marks it may use the keys it got from
 * dp_auth_keys(). dp_auth_swap() returns the old keys only once no reader can still hold
 * them, so they can be freed. */
#define DP_AUTH_READERS 64u

struct dp_auth_ctx {
        bool required;
        uint32_t window_ms;                /* replay window (timestamps within ± of it) */
        uint32_t replay_capacity;          /* per transport thread */
        _Atomic(struct dp_keys *) keys;
        _Atomic uint64_t epoch;
        _Atomic uint32_t n_readers;
        _Atomic uint64_t seen[DP_AUTH_READERS]; /* per reader: epoch at its last mark */
};

/* ctx->keys = keys (owned by the context from now on; NULL when not required). */
int dp_auth_ctx_init(struct dp_auth_ctx *ctx, bool required, uint32_t window_ms, struct dp_keys *keys,
                     struct sl_error *err);
void dp_auth_ctx_destroy(struct dp_auth_ctx *ctx); /* frees the keys; no reader may be running */
int dp_auth_reader(struct dp_auth_ctx *ctx);       /* a reader slot, or -ENOSPC */
void dp_auth_enter(struct dp_auth_ctx *ctx, int reader);
void dp_auth_idle(struct dp_auth_ctx *ctx, int reader);
static inline const struct dp_keys *dp_auth_keys(struct dp_auth_ctx *ctx)
{
        return atomic_load(&ctx->keys);
}
/* Installs keys and returns the previous ones once no reader holds them (waiting up to
 * timeout_ms for each to pass a mark); NULL when they may still be in use (then they are
 * leaked rather than freed under a reader). */
struct dp_keys *dp_auth_swap(struct dp_auth_ctx *ctx, struct dp_keys *keys, unsigned timeout_ms);

/* ==== rings between transports and the engine (dataplane/ring.c) ==== */

/* A single-producer/single-consumer ring of variable-length records in one allocation of
 * a power-of-two number of bytes. Records are 8-byte aligned, each behind an 8-byte
 * header; a record that would straddle the end is preceded by a pad record that the
 * consumer skips. The producer calls reserve + commit, the consumer peek + release (or
 * peek + hold, and put later); each side touches only its own index and reads the other's
 * with acquire ordering. A record holds at most dp_ring_max_record() bytes (capacity / 2 - 8,
 * at most 2^30 - 1). */
struct dp_ring;

int dp_ring_create(struct dp_ring **out, size_t capacity, struct sl_error *err);
void dp_ring_free(struct dp_ring *r);
size_t dp_ring_capacity(const struct dp_ring *r);
size_t dp_ring_max_record(const struct dp_ring *r);
/* Producer: contiguous space for a record of len bytes (8-byte aligned), or NULL when the
 * ring is full (or len > dp_ring_max_record()). Nothing is visible until commit. */
void *dp_ring_reserve(struct dp_ring *r, size_t len);
/* Producer: publishes the reserved record with its final length (<= the reserved len). */
void dp_ring_commit(struct dp_ring *r, size_t len);
/* Consumer: the oldest record and its length, or NULL when empty. Valid until release. */
const void *dp_ring_peek(struct dp_ring *r, size_t *len);
/* Consumer: frees the record that peek returned. */
void dp_ring_release(struct dp_ring *r);
/* Consumer, instead of release: moves past the record that peek returned but keeps it
 * allocated (its bytes stay valid and unchanged) until dp_ring_put(rec), which may come in
 * any order among held records. The producer gets space back only up to the oldest record
 * not yet put, so a consumer holds records briefly. Returns the record (peek's pointer). */
const void *dp_ring_hold(struct dp_ring *r);
void dp_ring_put(struct dp_ring *r, const void *rec);
uint32_t dp_ring_held(const struct dp_ring *r); /* consumer: records held, not yet put */
/* Either side: whether the ring holds nothing, neither waiting nor held records (a hint:
 * the other side may be adding one). */
bool dp_ring_empty(const struct dp_ring *r);
/* Either side: bytes the producer cannot use now (records waiting, held, or freed behind a
 * held one), a hint. */
size_t dp_ring_used(const struct dp_ring *r);
/* Consumer: whether a record is waiting to be read (held ones do not count). */
bool dp_ring_readable(const struct dp_ring *r);
/* The ring's memory, [p, p + *len): for registering it with a device that reads records in
 * place (the engine's GPU reads prompts in the request ring). */
void *dp_ring_mem(const struct dp_ring *r, size_t *len);

/* ---- records carried by the rings ----
 * Each transport has its own pair of rings: requests (transport -> engine) and responses
 * (engine -> transport). The engine answers every GENERATE/TOKENIZE record with exactly one
 * terminal response (DONE, or ERROR with DP_ERRF_TERMINAL), whatever CANCEL or CLIENT_GONE
 * records follow it, and addresses responses with the (transport, client, request_id) of
 * the request record. */

enum dp_req_kind {
        DP_REQ_GENERATE = 1,    /* payload: a GENERATE payload, validated by dp_generate_decode */
        DP_REQ_TOKENIZE = 2,    /* payload: a TOKENIZE payload, validated by dp_tokenize_decode */
        DP_REQ_CANCEL = 3,      /* the client sent CANCEL (or the transport gave up): no payload */
        DP_REQ_CLIENT_GONE = 4, /* lease expired or connection closed: no payload */
};

struct dp_req_rec {
        uint8_t kind;           /* enum dp_req_kind */
        uint8_t transport;      /* index given in the transport's config */
        uint16_t flags;         /* enum dp_req_flag */
        uint32_t payload_len;
        uint64_t client;        /* opaque handle, meaning private to the transport: echo it */
        uint64_t request_id;
        uint64_t rx_ns;         /* sl_now_ns() when the complete request was received */
        /* DP_REQF_KEY: the request came in an authenticated frame of this key, whose per-key
         * limits (0: the server's defaults) travel with it, so that the engine thread never
         * reads the key set that a reload swaps under the transports */
        uint32_t key_id;
        uint32_t key_max_inflight, key_rps, key_tps;
        uint8_t payload[];
};

struct dp_resp_rec {
        uint8_t opcode;         /* DP_OP_TOKENS, DP_OP_DONE or DP_OP_ERROR */
        uint8_t transport;
        uint16_t reserved;
        uint32_t payload_len;   /* <= the transport's max payload (dp_udp_max_payload, ...) */
        uint64_t client;
        uint64_t request_id;
        uint8_t payload[];      /* already encoded: dp_tokens_encode, dp_done_encode, ... */
};

enum dp_req_flag {
        /* The record holds a struct dp_req_ext, not the payload: the payload stays where the
         * transport received it (the DPDK transport: the mbuf the NIC wrote, in pinned
         * memory) until the consumer calls dp_req_release(). */
        DP_REQF_EXTERNAL = 1u << 0,
        DP_REQF_KEY = 1u << 1,  /* key_id and the key_* limits are set */
};

/* The transports' part of DP_REQF_KEY: fills h's key fields from key (NULL: none). */
static inline void dp_req_set_key(struct dp_req_rec *h, const struct dp_key *key)
{
        if (!key)
                return;
        h->flags |= DP_REQF_KEY;
        h->key_id = key->id;
        h->key_max_inflight = key->max_inflight;
        h->key_rps = key->rps;
        h->key_tps = key->tps;
}

struct dp_req_ext {
        const uint8_t *data;    /* the request payload (GENERATE or TOKENIZE message) */
        uint32_t len;
        uint32_t reserved;
        void (*release)(void *ctx, void *ref); /* gives the buffer back; any thread */
        void *ctx, *ref;
};

/* The payload of a request record, inline or external; NULL (len 0) for a malformed
 * external record. */
const uint8_t *dp_req_payload(const struct dp_req_rec *r, uint32_t *len);
/* The consumer is done with the payload (no-op for inline records). Call it exactly once
 * per record, before dp_ring_release(). */
void dp_req_release(const struct dp_req_rec *r);

/* Producer helpers: copy a record into the ring. Return 0, or -ENOBUFS when full. */
int dp_req_push(struct dp_ring *r, const struct dp_req_rec *h, const void *payload, size_t len);
int dp_resp_push(struct dp_ring *r, const struct dp_resp_rec *h, const void *payload, size_t len);
/* In-place alternative for the engine: reserve a record with room for max_payload bytes,
 * encode into rec->payload, then dp_resp_commit with the encoded length. */
struct dp_resp_rec *dp_resp_reserve(struct dp_ring *r, size_t max_payload);
void dp_resp_commit(struct dp_ring *r, struct dp_resp_rec *rec, size_t payload_len);

/* ---- wakeups (dataplane/transport.c) ----
 * An eventfd plus a "sleeping" flag, so that the side that produces records only makes a
 * syscall when the consumer is about to block, not per record. The consumer calls
 * dp_notify_prepare(), re-checks its ring, then blocks (dp_notify_wait, or the fd in its
 * own poll / io_uring) and calls dp_notify_done() after waking. */
struct dp_notify {
        int fd;                 /* eventfd, EFD_NONBLOCK */
        _Alignas(64) _Atomic int sleeping;
};
int dp_notify_init(struct dp_notify *n, struct sl_error *err);
void dp_notify_destroy(struct dp_notify *n);
void dp_notify_kick(struct dp_notify *n);       /* producer: after committing a batch */
void dp_notify_prepare(struct dp_notify *n);    /* consumer: before the final emptiness check */
void dp_notify_done(struct dp_notify *n);       /* consumer: after waking (drains the fd) */
/* Consumer: blocks up to timeout_ms (-1: forever) for a kick. Returns 1, 0 on timeout. */
int dp_notify_wait(struct dp_notify *n, int timeout_ms);

/* ==== kernel-socket transports (dataplane/udp.c, dataplane/tcp.c) ==== */

#define DP_MAX_LISTEN 8

/* Parses "1.2.3.4:5", "[::1]:5" or "host:port" with a numeric host. Returns 0 or -EINVAL. */
struct sockaddr;
struct sockaddr_storage;
int dp_addr_parse(const char *s, struct sockaddr_storage *ss, unsigned *sslen, struct sl_error *err);

/* Load for PONG and INFO, filled by the engine side from any thread: a relaxed snapshot. */
typedef void (*dp_load_fn)(void *arg, struct dp_load *out);

/* Counters, updated by the transport thread only (relaxed atomics): read from any thread
 * with dp_udp_stats() / dp_tcp_stats(). */
struct dp_transport_stats {
        uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes;
        uint64_t malformed;             /* frames failing §2.4 or payload decoding */
        uint64_t drop_bad_crc;          /* UDP: dropped silently (CRC mismatch or header failed) */
        uint64_t drop_short_hello;      /* UDP: HELLO under 1200 bytes */
        uint64_t drop_no_tx_buf;        /* replies dropped: tx buffers exhausted */
        uint64_t drop_ring_full;        /* requests answered BUSY: request ring full */
        uint64_t drop_table_full;       /* requests answered BUSY: request/reassembly table full */
        uint64_t drop_stale_resp;       /* response records for requests no longer known */
        uint64_t duplicates;            /* repeated request ids not run again (UDP) */
        uint64_t resent;                /* frames sent again for RESEND (UDP) */
        uint64_t resend_missing;        /* RESENDs naming frames no longer held (UDP) */
        uint64_t reasm_timeouts;        /* partial requests dropped (UDP) */
        uint64_t leases_expired;        /* CLIENT_GONE records for silent clients (UDP) */
        uint64_t errors_sent;           /* ERROR frames sent by the transport itself */
        uint64_t requests;              /* request records pushed */
        uint64_t conns_accepted, conns_closed, framing_closes; /* TCP */
        uint64_t output_overflows;      /* TCP: requests failed because a reader was slow */
        uint64_t window_full;           /* UDP: requests failed: a window of frames unacknowledged */
        uint64_t io_errors;             /* failed io_uring completions */
        uint64_t tls_handshakes;        /* TCP with TLS: handshakes completed */
        uint64_t tls_failures;          /* TCP with TLS: handshakes failed or timed out */
        uint64_t unauthenticated;       /* frames refused by authentication (reasons in auth) */
        uint64_t denied;                /* datagrams dropped (UDP, DPDK) or connections closed at
                                         * accept (TCP): source outside the allow list */
        uint64_t cookies_sent;          /* UDP: COOKIE frames sent (HELLO, or a frame without one) */
        uint64_t cookie_missing;        /* UDP: frames refused: no cookie where one is required */
        uint64_t cookie_bad;            /* UDP: frames refused: cookie expired, or not this address's */
        struct dp_auth_stats auth;
};

/* ---- access control: allowed client networks (dataplane/transport.c) ---- */

#define DP_ALLOW_MAX 32u

struct dp_cidr {
        uint8_t family;                 /* AF_INET or AF_INET6 */
        uint8_t prefix;                 /* 0..32 or 0..128 */
        uint8_t addr[16];               /* network order; 4 bytes used for IPv4 */
};

/* n == 0: any client. An IPv4-mapped IPv6 source is matched as IPv4. */
struct dp_allow {
        uint32_t n;
        struct dp_cidr c[DP_ALLOW_MAX];
};

struct sockaddr;
bool dp_allow_match(const struct dp_allow *a, const struct sockaddr *sa);

/* ---- UDP cookies (docs/protocol.md §7.2, dataplane/udpcore.c) ---- */

#define DP_COOKIE_SECRET_SIZE 32u
#define DP_COOKIE_BUCKET_MS_DEFAULT 30000u
/* detail of ERROR UNAUTHENTICATED on UDP: the frame lacked a valid cookie */
#define DP_UNAUTH_DETAIL_COOKIE 1u

struct dp_transport_config {
        uint8_t index;                  /* stamped on request records */
        unsigned n_listen;
        const char *listen[DP_MAX_LISTEN]; /* "127.0.0.1:7000", "[::1]:0", ... */
        struct dp_ring *req_ring;       /* this transport produces into it */
        struct dp_ring *resp_ring;      /* this transport consumes it */
        struct dp_notify *engine_wake;  /* kicked after pushing request records; may be NULL */
        dp_load_fn load;                /* may be NULL: zero load */
        void *load_arg;
        const struct dp_info *info;     /* INFO template (limits, names); max_frame, lease_ms
                                           and load are filled by the transport; may be NULL */
        void (*info_live)(void *arg, struct dp_info *info); /* may be NULL: called for every
                                           INFO reply after the template is copied, to put
                                           the request limits in force now (a reload changes
                                           them) over the template's */
        void *info_arg;
        unsigned max_requests;          /* live + recently finished requests (UDP), per
                                           connection (TCP); default 256 / 64 */
        unsigned lease_ms;              /* UDP lease; default 10000 */
        unsigned history;               /* UDP window: unacknowledged frames kept per request for
                                         * RESEND; default 64 (the client ACKs every 16) */
        unsigned max_reasm;             /* UDP concurrent reassemblies; default 16 */
        unsigned max_conns;             /* TCP connections; default 64 */
        unsigned out_bytes;             /* TCP per-connection output bound; default 262144 */
        int sndbuf;                     /* TCP SO_SNDBUF for accepted sockets; 0: kernel's */
        struct dp_auth_ctx *auth;       /* keys and window; NULL or not required: no checks */
        const struct dp_allow *allow;   /* client networks let in; NULL or empty: any */
        /* UDP: unauthenticated frames other than HELLO and PING need a valid cookie
         * (docs/protocol.md §7.2). The secret is shared by every instance of the UDP core
         * (all zero: each draws its own); buckets rotate every cookie_bucket_ms
         * (0: DP_COOKIE_BUCKET_MS_DEFAULT) and a cookie is accepted for two of them. */
        bool cookies;
        uint8_t cookie_secret[DP_COOKIE_SECRET_SIZE];
        unsigned cookie_bucket_ms;
        struct dp_tls_ctx *tls;         /* TCP: speak TLS 1.3 only, with this context (taken
                                         * over by the transport); NULL: plaintext */
        /* TCP: told why a TLS handshake failed (the transport's thread; may be NULL) */
        void (*tls_note)(void *arg, const struct sockaddr *peer, const char *why);
        void *tls_note_arg;
};

/* UDP: one socket per listen address, all in one io_uring run by one thread. */
struct dp_udp;
int dp_udp_create(struct dp_udp **out, const struct dp_transport_config *cfg, struct sl_error *err);
/* Starts the transport thread. dp_udp_stop() joins it; dp_udp_free() stops if needed. */
int dp_udp_start(struct dp_udp *u, struct sl_error *err);
void dp_udp_stop(struct dp_udp *u);
void dp_udp_free(struct dp_udp *u);
/* The engine calls this after committing response records (one syscall at most, and only
 * when the transport thread sleeps). */
void dp_udp_kick(struct dp_udp *u);
/* Bound address of listen socket i (to learn an ephemeral port). */
int dp_udp_local_addr(const struct dp_udp *u, unsigned i, struct sockaddr_storage *ss, unsigned *len);
void dp_udp_stats(const struct dp_udp *u, struct dp_transport_stats *out);
/* Largest response payload one UDP frame carries (no trailers). */
#define DP_UDP_MAX_PAYLOAD (DP_MAX_FRAME_UDP - DP_HEADER_SIZE)

/* TCP: listeners and connections in one io_uring run by one thread. */
struct dp_tcp;
int dp_tcp_create(struct dp_tcp **out, const struct dp_transport_config *cfg, struct sl_error *err);
int dp_tcp_start(struct dp_tcp *t, struct sl_error *err);
void dp_tcp_stop(struct dp_tcp *t);
void dp_tcp_free(struct dp_tcp *t);
void dp_tcp_kick(struct dp_tcp *t);
int dp_tcp_local_addr(const struct dp_tcp *t, unsigned i, struct sockaddr_storage *ss, unsigned *len);
void dp_tcp_stats(const struct dp_tcp *t, struct dp_transport_stats *out);
/* A new TLS context (a reloaded certificate) for connections accepted from now on; the
 * transport takes it over. Any thread. -EINVAL when the transport was created without TLS. */
int dp_tcp_set_tls(struct dp_tcp *t, struct dp_tls_ctx *ctx);

/* TLS 1.3 for the TCP transport (dataplane/tls.c, OpenSSL): PEM certificate chain and
 * private key, and optionally the CA that signs the clients' certificates (mutual TLS;
 * NULL or "": none asked). Errors name the file and OpenSSL's reason. */
struct dp_tls_ctx;
int dp_tls_ctx_create(struct dp_tls_ctx **out, const char *cert, const char *key, const char *client_ca,
                      struct sl_error *err);
void dp_tls_ctx_free(struct dp_tls_ctx *ctx);
#define DP_TCP_MAX_PAYLOAD (DP_MAX_FRAME_TCP - DP_HEADER_SIZE)

/* ---- the client's address on request records (dataplane/transport.c) ----
 * The kernel-socket transports put the client's socket address after a request record's
 * payload (at the next 8-byte boundary), so that the engine thread can name the client (the
 * audit log) without reading transport tables that the transport thread mutates. UDP: the
 * datagram's source; TCP: the connection's peer. An IPv4-mapped IPv6 address (a v4 client
 * of a dual-stack socket) is stored as plain IPv4: the address names the client, it is
 * never used to reply. Records pushed with plain dp_req_push() carry none. */
#include <netinet/in.h>

struct dp_req_peer {
        uint32_t len;           /* bytes of addr in use: sizeof(struct sockaddr_in) or _in6 */
        uint32_t reserved;
        union {
                struct sockaddr sa;
                struct sockaddr_in in;
                struct sockaddr_in6 in6;
        } addr;
};

/* dp_req_push() plus the client's address (sa may be NULL or of another family: then the
 * record carries none). Returns 0, or -ENOBUFS when the ring is full. */
int dp_req_push_peer(struct dp_ring *r, const struct dp_req_rec *h, const void *payload, size_t len,
                     const struct sockaddr *sa, socklen_t salen);
/* The address a record carries, or NULL. rec_len is the length dp_ring_peek() returned. */
const struct dp_req_peer *dp_req_peer(const struct dp_req_rec *r, size_t rec_len);
/* "127.0.0.1:45678", "[::1]:45678", or "-" when p is NULL. Returns snprintf's count. */
int dp_req_peer_format(const struct dp_req_peer *p, char *buf, size_t cap);

/* ==== the DPDK transport (dataplane/dpdk.c; only in a build with SLUICE_HAVE_DPDK) ====
 * Kernel-bypass UDP: a poll-mode loop per dataplane lcore, one rx/tx queue pair each (RSS
 * spreads clients), Ethernet/ARP/IPv4/ICMP/UDP in user space (packet.c), then the same UDP
 * protocol core as the kernel UDP transport. Receive buffers live in external memory
 * registered with DPDK (rte_extmem_register + rte_dev_dma_map) and, through
 * struct dp_host_mem_ops, with CUDA; single-datagram requests reach the engine as
 * DP_REQF_EXTERNAL records that point into the mbuf. docs/dpdk.md. */

#define DP_DPDK_MAX_LCORES 8

/* What the engine side offers for the receive memory (the daemon fills it; all optional). */
struct dp_host_mem_ops {
        void *user;
        const char *name;       /* "cuda", for messages */
        /* Page-lock p[0, n) and map it for the GPU (cudaHostRegister, mapped); *dev_ptr gets
         * the GPU's address of p. 0 or a negative errno. */
        int (*register_host)(void *user, void *p, size_t n, void **dev_ptr);
        void (*unregister_host)(void *user, void *p);
        /* GPUDirect RDMA: n bytes of GPU memory that the NIC can write and the CPU can read
         * (a BAR mapping); *cpu gets the CPU's address. NULL: not available. */
        int (*alloc_device)(void *user, size_t n, void **cpu, void **dev_ptr);
        void (*free_device)(void *user, void *cpu);
};

enum dp_dpdk_drop {
        /* the parser's reasons, in the order of packet.h's enum dpk_kind */
        DP_DPDK_DROP_SHORT, DP_DPDK_DROP_OVERSIZE, DP_DPDK_DROP_L2, DP_DPDK_DROP_IP_HEADER,
        DP_DPDK_DROP_IP_CHECKSUM, DP_DPDK_DROP_NOT_OUR_ADDRESS, DP_DPDK_DROP_IP_FRAGMENT,
        DP_DPDK_DROP_IP_PROTOCOL, DP_DPDK_DROP_UDP_LENGTH, DP_DPDK_DROP_UDP_CHECKSUM,
        DP_DPDK_DROP_UDP_PORT, DP_DPDK_DROP_ARP, DP_DPDK_DROP_ICMP, DP_DPDK_DROP_SPLIT,
        /* the transport's */
        DP_DPDK_DROP_SEGMENTS,  /* a multi-segment frame without header/data split */
        DP_DPDK_DROP_TX_FULL,   /* the tx queue did not take a frame */
        DP_DPDK_DROP_NO_ARP,    /* a reply to an address with no ARP entry (a request went out) */
        DP_DPDK_DROP_NO_MBUF,   /* the pool was empty when a frame was to be sent */
        DP_DPDK_DROP_N,
};
const char *dp_dpdk_drop_name(unsigned reason); /* "ip_checksum", ... */

/* Per lcore (= per queue pair), read from any thread. */
struct dp_dpdk_stats {
        uint64_t rx_packets, rx_bytes, tx_packets, tx_bytes;
        uint64_t drops[DP_DPDK_DROP_N];
        uint64_t arp_requests_rx, arp_replies_rx, arp_replies_tx, arp_requests_tx;
        uint64_t icmp_echo;
        uint64_t prompts_zero_copy;   /* requests handed to the engine inside their mbuf */
        uint64_t prompts_copied;      /* requests copied into the ring (reassembled, or pool pressure) */
        uint64_t polls, idle_polls;
        struct dp_transport_stats proto; /* the UDP protocol core's counters */
};

struct dp_dpdk_config {
        const char *eal_args;   /* split on blanks; the transport adds --vdev/-a for port */
        const char *port;       /* PCI address, a virtual device ("net_af_packet0,iface=veth0"),
                                 * or a port id (the device given in eal_args) */
        uint32_t ip;            /* host order */
        uint8_t prefix_len;
        uint16_t udp_port;
        unsigned n_queues;      /* rx/tx queue pairs = dataplane lcores, 1..DP_DPDK_MAX_LCORES */
        unsigned lcores[DP_DPDK_MAX_LCORES]; /* EAL lcore ids; all 0: the first worker lcores */
        unsigned rx_desc, tx_desc; /* 0: 1024 */
        unsigned mbufs;         /* receive and transmit buffers; 0: 8192 */
        unsigned idle_sleep_us; /* sleep this long after 256 empty polls; 0: poll always */
        bool gpudirect;         /* payload pool in GPU memory, header/data split */
        /* The protocol core's settings and, per queue, the rings (cfg.index = index[i]). */
        struct dp_transport_config tc;
        uint8_t index[DP_DPDK_MAX_LCORES];
        struct dp_ring *req_ring[DP_DPDK_MAX_LCORES], *resp_ring[DP_DPDK_MAX_LCORES];
        const struct dp_host_mem_ops *mem; /* may be NULL: pinned host memory (mlock) */
};

struct dp_dpdk;
/* Starts EAL (once per process), the port and the memory. Errors say what is missing and
 * how to fix it (hugepages, binding, permissions). */
int dp_dpdk_create(struct dp_dpdk **out, const struct dp_dpdk_config *cfg, struct sl_error *err);
int dp_dpdk_start(struct dp_dpdk *d, struct sl_error *err); /* launches the lcores */
void dp_dpdk_stop(struct dp_dpdk *d);
void dp_dpdk_free(struct dp_dpdk *d);
unsigned dp_dpdk_queues(const struct dp_dpdk *d);
void dp_dpdk_stats(const struct dp_dpdk *d, unsigned queue, struct dp_dpdk_stats *out);
/* lcore id of queue q. */
unsigned dp_dpdk_lcore(const struct dp_dpdk *d, unsigned q);
/* Port-level drops the NIC counts (rte_eth_stats): missed (rx ring full), rx errors, no mbuf. */
void dp_dpdk_port_drops(const struct dp_dpdk *d, uint64_t *imissed, uint64_t *ierrors, uint64_t *nombuf);
/* One line for the log: port, driver, MAC, queues, offloads, memory and how it is registered. */
int dp_dpdk_describe(const struct dp_dpdk *d, char *buf, size_t cap);

/* Where p lies, for the zero-copy check: in a receive buffer of the live DPDK transport? */
struct dp_dpdk_where {
        bool in_pool;           /* p lies in the mbuf pool's external memory */
        uint32_t buffer;        /* which buffer of the pool */
        uint32_t frame_off;     /* offset from the start of the Ethernet frame received there */
        bool dpdk_registered;   /* the memory is an external memseg list of DPDK's */
        bool locked;            /* pinned by mlock */
        bool host_registered;   /* pinned and mapped through dp_host_mem_ops (CUDA) */
        void *device_ptr;       /* the GPU's address of p when host_registered, else NULL */
};
int dp_dpdk_locate(const void *p, struct dp_dpdk_where *w); /* 0, or -ENOENT: no live transport */

/* Benchmark entry (bench/dpdk_bench.c): runs n frames, as a poll of queue q would, through
 * the real receive path (parse, validate, request table, ring), on the calling lcore.
 * pkts are struct rte_mbuf pointers from dp_dpdk_bench_pool(); they are consumed. */
void dp_dpdk_bench_rx(struct dp_dpdk *d, unsigned q, void **pkts, unsigned n);
void *dp_dpdk_bench_pool(struct dp_dpdk *d); /* struct rte_mempool * */
void dp_dpdk_bench_reset(struct dp_dpdk *d, unsigned q); /* forget every request of queue q */
