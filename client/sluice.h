/* sluice.h — libsluice, the C client of the sluice inference server: connect over UDP or
 * TCP, stream generations through a callback or an iterator, cancel, ping, info, tokenize.
 * It speaks docs/protocol.md (version 1) through the same codec as the server.
 *
 * Errors: every function that can fail returns a negative errno; the reason is in
 * sluice_errmsg(conn) (the connection's last error: when several threads share one, use
 * struct sluice_result's message for per-request reasons). The codes mean:
 *   -EREMOTEIO     the server answered ERROR (code, message in struct sluice_result)
 *   -EBUSY         the server answered BUSY, RATE_LIMITED or SHUTTING_DOWN
 *                  (retry_after_ms in struct sluice_result)
 *   -EACCES        the server answered UNAUTHENTICATED
 *   -EKEYREJECTED  TLS: the server's certificate is not accepted (not signed by a trusted
 *                  CA, expired, or not for the server's name)
 *   -ETIMEDOUT     nothing (or no progress) from the server within the timeout
 *   -ECONNREFUSED, -EHOSTUNREACH, -ENETUNREACH, -ECONNRESET, -EPIPE
 *                  the server cannot be reached, or the connection went away
 *   -EPROTO        the server sent something that breaks the protocol (TLS: the handshake
 *                  failed for another reason, e.g. the port does not speak TLS 1.3)
 *   -ECANCELED     the server answered CANCELLED (cancelled while still queued)
 *   -EINVAL        bad arguments (checked locally, nothing is sent); -EMSGSIZE: a prompt
 *                  over the protocol's limits; -ENOMEM
 * The library never prints. Thread safety: one connection may be used from many threads
 * at once (requests are multiplexed); one stream belongs to one thread at a time. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLUICE_PROTOCOL_VERSION 1

const char *sluice_version(void); /* "0.1.0" */

/* ---- connections ---- */

enum sluice_transport { SLUICE_UDP = 0, SLUICE_TCP = 1 };
enum sluice_family { SLUICE_AF_ANY = 0, SLUICE_AF_INET = 4, SLUICE_AF_INET6 = 6 };

struct sluice_opts {
        const char *host;         /* name or address; NULL: "localhost" */
        uint16_t port;            /* 0: 7400 */
        int transport;            /* enum sluice_transport */
        int family;               /* enum sluice_family */
        uint32_t timeout_ms;      /* no answer (or no progress on a stream) for this long fails
                                   * the call with -ETIMEDOUT; 0: 30000 */
        uint32_t connect_timeout_ms; /* connect + HELLO; 0: 5000 */
        uint32_t retransmit_ms;   /* UDP: first retransmit / resend interval; 0: 200 */
        const char *key_file;     /* a keys file (the server's format: "ID SECRET_HEX ..." per
                                   * line; it must be private to this user, mode 0600 or 0400):
                                   * every frame is signed with key key_id (0: the file's lowest
                                   * id). NULL: frames go unsigned. */
        uint32_t key_id;
        /* TLS 1.3 (TCP only; the handshake is part of sluice_connect and its timeout). */
        bool tls;
        const char *tls_ca;       /* PEM file of the CA(s) that sign the server's certificate;
                                   * NULL: the system's trusted CAs */
        const char *tls_server_name; /* the name (or IP address) the certificate must carry,
                                   * also sent as SNI; NULL: host */
        const char *tls_cert;     /* mutual TLS: this client's PEM certificate chain; NULL: none */
        const char *tls_key;      /* its private key (PEM); NULL: in tls_cert */
};
void sluice_opts_init(struct sluice_opts *o);

struct sluice_conn;

/* Resolves, connects, sends HELLO and reads INFO (limits, lease). */
int sluice_connect(const struct sluice_opts *o, struct sluice_conn **out);
/* Ends every open stream of the connection (they fail with -ECONNRESET) and frees it. */
void sluice_close(struct sluice_conn *c);
/* The reason for the last error on c (never NULL). With c NULL: the reason for the last
 * failed sluice_connect() of this thread. */
const char *sluice_errmsg(const struct sluice_conn *c);

/* ---- server information and load ---- */

struct sluice_load {
        uint32_t queue_depth;     /* requests waiting for admission */
        uint32_t active;          /* requests being generated */
        uint32_t kv_blocks_free;
        uint32_t kv_blocks_total;
        uint32_t max_inflight;    /* concurrent requests allowed per client */
        bool draining;            /* shutting down */
};

struct sluice_info {
        uint32_t protocol_version;
        uint32_t max_frame, max_message;
        uint32_t max_prompt_tokens, max_prompt_bytes, max_new_tokens;
        uint32_t max_stop, max_stop_len;
        uint32_t n_ctx, n_vocab;
        uint32_t lease_ms;
        bool auth_required, cookie_required;
        struct sluice_load load;
        char model[129];          /* NUL-terminated UTF-8 */
        char server[129];         /* e.g. "sluice 0.1.0" */
};

/* Asks the server again (HELLO/INFO). */
int sluice_info(struct sluice_conn *c, struct sluice_info *out);
/* PING/PONG: the load block and the round-trip time in microseconds (either may be NULL). */
int sluice_ping(struct sluice_conn *c, struct sluice_load *load, uint64_t *rtt_us);

/* ---- generation ---- */

enum sluice_gen_flags {
        SLUICE_GEN_NO_TEXT = 1u << 1,       /* ids only, no text pieces */
        SLUICE_GEN_ECHO_PROMPT = 1u << 2,   /* stream the prompt's tokens first (kind PROMPT) */
        SLUICE_GEN_ADD_SPECIAL = 1u << 3,   /* text prompt: add BOS/EOS as the model wants */
        SLUICE_GEN_PARSE_SPECIAL = 1u << 4, /* text prompt: parse "<|...|>" control tokens */
};

struct sluice_gen_params {
        /* The prompt: text (prompt, prompt_len bytes; prompt_len 0 means strlen(prompt)),
         * or token ids (prompt_ids non-NULL, n_prompt_ids of them). */
        const char *prompt;
        size_t prompt_len;
        const int32_t *prompt_ids;
        size_t n_prompt_ids;
        uint32_t max_tokens;      /* 0: the server's default */
        /* Sampling, as the server's sampler (same meanings as sluice-run's flags). */
        float temperature;        /* <= 0: greedy */
        int32_t top_k;            /* <= 0: off */
        float top_p;              /* >= 1: off */
        float min_p;              /* <= 0: off */
        float repeat_penalty;     /* 1: off */
        float presence_penalty;   /* 0: off */
        float frequency_penalty;  /* 0: off */
        int32_t penalty_last_n;   /* 0: off, -1: all */
        uint64_t seed;
        uint32_t deadline_ms;     /* server-side deadline from receipt; 0: none */
        const char *const *stop;  /* n_stop NUL-terminated stop strings (<= 8, 1..64 bytes) */
        size_t n_stop;
        uint32_t flags;           /* enum sluice_gen_flags */
};
/* Sets the defaults: llama.cpp's (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05,
 * penalties off, last_n 64), ADD_SPECIAL on; no prompt. */
void sluice_gen_params_init(struct sluice_gen_params *p);

enum sluice_chunk_kind { SLUICE_CHUNK_GENERATED = 0, SLUICE_CHUNK_PROMPT = 1 };

/* One streamed piece: token ids and the UTF-8 text they completed (not NUL-terminated;
 * text[text_len] is 0 for convenience). Valid until the next call on the stream. */
struct sluice_chunk {
        int kind;                 /* enum sluice_chunk_kind */
        uint32_t n_ids;
        const int32_t *ids;
        uint32_t text_len;
        const char *text;
};

enum sluice_finish {
        SLUICE_FINISH_NONE = 0, SLUICE_FINISH_EOS = 1, SLUICE_FINISH_LENGTH = 2,
        SLUICE_FINISH_STOP = 3, SLUICE_FINISH_CANCELLED = 4, SLUICE_FINISH_DEADLINE = 5,
        SLUICE_FINISH_CONTEXT = 6,
};
const char *sluice_finish_name(int reason); /* "eos", "length", ... */

/* How a request ended. On success (DONE): finish and usage. On -EREMOTEIO / -EBUSY /
 * -EACCES: server_error (the protocol's code, e.g. 8 BUSY), its name, retry_after_ms,
 * detail and the server's message. On other errors: message holds the local reason. */
struct sluice_result {
        int finish;               /* enum sluice_finish */
        int stop_index;           /* with SLUICE_FINISH_STOP; else -1 */
        uint32_t prompt_tokens;
        uint32_t generated_tokens;
        uint64_t queue_us;        /* server: receipt to admission */
        uint64_t ttft_us;         /* server: receipt to the first generated token */
        uint64_t total_us;        /* server: receipt to DONE */
        uint64_t client_ttft_us;  /* client: send to the first generated token received */
        uint64_t client_total_us; /* client: send to the end */
        int server_error;         /* 0, or the ERROR code */
        const char *server_error_name; /* "BUSY", ...; "" when none */
        uint32_t retry_after_ms;
        uint32_t detail;
        char message[288];
};

/* Return non-zero from the callback to cancel the request: CANCEL is sent, no more chunks
 * are delivered, and sluice_generate returns how the stream ended (normally 0 with finish
 * "cancelled", or -ECANCELED if it had not started). */
typedef int (*sluice_chunk_cb)(void *user, const struct sluice_chunk *chunk);

/* Sends GENERATE and streams the answer through cb (may be NULL) until DONE or an error.
 * res (may be NULL) receives the outcome. Returns 0 or a negative errno (above). */
int sluice_generate(struct sluice_conn *c, const struct sluice_gen_params *p,
                    sluice_chunk_cb cb, void *user, struct sluice_result *res);

/* ---- iterator form ---- */

struct sluice_stream;
/* Sends GENERATE; the request runs while the caller iterates. */
int sluice_stream_open(struct sluice_conn *c, const struct sluice_gen_params *p,
                       struct sluice_stream **out);
/* Returns 1 with the next chunk, 0 at the end of the stream (the result is in res, if
 * non-NULL), or a negative errno (also described in res). */
int sluice_stream_next(struct sluice_stream *s, struct sluice_chunk *chunk,
                       struct sluice_result *res);
/* The request id the library chose (unique on the connection). */
uint64_t sluice_stream_id(const struct sluice_stream *s);
/* Sends CANCEL; keep calling sluice_stream_next() to see the end (DONE "cancelled"). */
int sluice_stream_cancel(struct sluice_stream *s);
/* Cancels the request if it is still running, and frees the stream. NULL is a no-op. */
void sluice_stream_free(struct sluice_stream *s);

/* Sends CANCEL for a request id of this connection (e.g. from another thread). */
int sluice_cancel(struct sluice_conn *c, uint64_t request_id);

/* ---- tokenization ---- */

enum sluice_tok_flags { SLUICE_TOK_ADD_SPECIAL = 1u << 0, SLUICE_TOK_PARSE_SPECIAL = 1u << 1 };

/* Tokenizes len bytes of UTF-8 text on the server. *ids is malloc'd (free() it), *n_ids
 * its count. res may be NULL. */
int sluice_tokenize(struct sluice_conn *c, const char *text, size_t len, uint32_t flags,
                    int32_t **ids, size_t *n_ids, struct sluice_result *res);

#ifdef __cplusplus
}
#endif
