/* client.h — libsluice internals shared by conn.c (sockets, the receive thread, UDP
 * reliability) and api.c (the public calls). Not installed. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>

#include "dataplane.h"
#include "sluice.h"

/* Internals are not part of the ABI, whatever their names. */
#pragma GCC visibility push(hidden)

#define SLUICE_WINDOW 1024u   /* stream frames held ahead of the reader, per request */
#define SLUICE_RTO_MAX_MS 2000u
#define SLUICE_ACK_FRAMES 16u  /* ACK after this many in-order frames; well inside the server's window */

/* One received stream frame, decoded and copied out of the datagram. */
struct sluice_item {
        uint8_t op;             /* DP_OP_TOKENS, DP_OP_DONE, DP_OP_ERROR (terminal) */
        uint8_t kind;
        uint32_t n_ids, text_len;
        int32_t *ids;           /* inside this allocation */
        char *text;             /* NUL-terminated, inside this allocation */
        struct dp_done done;
        struct dp_error error;  /* msg points at emsg */
        char emsg[DP_MAX_ERROR_MSG + 1];
};

enum sluice_req_state { REQ_OPEN = 0, REQ_DONE, REQ_FAILED };

/* A request in flight on a connection: a stream (GENERATE, TOKENIZE) or a one-frame
 * exchange (HELLO -> INFO, PING -> PONG). All fields are under conn->mu. */
struct sluice_req {
        struct sluice_req *next;
        uint64_t id;
        uint8_t opcode;
        uint8_t *msg;           /* the request payload, kept to retransmit it (UDP) */
        size_t msg_len;
        int state;
        int fail;               /* with REQ_FAILED: negative errno */
        struct sluice_result fres; /* with REQ_FAILED: details */
        /* one-frame exchanges */
        struct dp_info info;
        char info_model[DP_MAX_NAME + 1], info_server[DP_MAX_NAME + 1];
        struct dp_pong pong;
        uint32_t ping_seq;
        /* streams */
        struct sluice_item *win[SLUICE_WINDOW]; /* by seq % SLUICE_WINDOW */
        uint32_t base;          /* next seq the reader takes */
        uint32_t next_missing;  /* every seq below it has been received */
        uint32_t highest;       /* 1 + the highest seq received; 0 when none */
        int64_t terminal_seq;   /* -1 until the terminal frame is in */
        bool got_any, cancelled;
        uint64_t t_sent, t_last_rx, t_last_tx, t_gap, t_first_tok;
        uint32_t rto_ms;
        uint32_t timeout_ms;    /* no progress for this long fails the request */
        uint32_t acked;         /* next_seq of the last ACK sent */
        bool resend_now;        /* UDP: a COOKIE answered this request: send it again with it */
        uint64_t t_last_ack;
};

struct sluice_conn {
        int fd, evfd;
        bool tcp;
        struct sluice_opts o;
        char peer[128];
        pthread_t rx;
        bool rx_started;
        atomic_bool stop;
        pthread_mutex_t mu;     /* everything below, and every struct sluice_req */
        pthread_cond_t cv;
        pthread_mutex_t send_mu;/* whole frames go out in one piece (TCP) */
        struct sluice_req *reqs;
        int dead;               /* TCP: the connection is gone (negative errno) */
        char dead_msg[288];
        char srv_msg[DP_MAX_ERROR_MSG + 1]; /* last ERROR with request id 0 */
        uint32_t max_frame_tx;
        uint32_t lease_ms;
        struct sluice_info info;
        uint64_t n_garbage;     /* datagrams dropped as invalid */
        char err[288];
        uint8_t *rbuf;          /* TCP receive buffer */
        size_t rlen;
        bool signing;           /* every frame carries an auth trailer with key */
        struct dp_key key;
        uint64_t nonce;         /* next trailer's nonce (under send_mu) */
        /* UDP cookie (docs/protocol.md §7.2), under send_mu: attached to every frame but HELLO
         * and PING once the server sent one; refreshed with a HELLO at half its lifetime */
        bool cookie_required;   /* INFO said COOKIE_REQUIRED */
        bool have_cookie;
        uint8_t cookie[DP_COOKIE_SIZE];
        uint64_t cookie_refresh_ns, cookie_asked_ns;
        struct ssl_st *ssl;     /* TLS (tls.c): NULL for plaintext */
        pthread_mutex_t tls_mu; /* ssl: the receive thread reads while senders write */
        char tls_why[128];      /* why the last TLS read failed (receive thread) */
};

/* tls.c: the handshake (blocking until the connect timeout; why gets the reason), then
 * reads and writes through the session. sluice_tls_recv is recv()'s contract (bytes, 0 at
 * the end, -1 with errno: EAGAIN when nothing is there). sluice_tls_send: 0 or -errno. */
int sluice_tls_open(struct sluice_conn *c, char *why, size_t why_len);
ssize_t sluice_tls_recv(struct sluice_conn *c, void *buf, size_t cap);
int sluice_tls_send(struct sluice_conn *c, const uint8_t *p, size_t len, uint64_t end_ns);
void sluice_tls_free(struct sluice_conn *c);

/* conn.c */
int sluice_conn_open(const struct sluice_opts *o, const struct addrinfo *ai, const char *peer,
                     struct sluice_conn **out, char *why, size_t why_len);
void sluice_conn_free(struct sluice_conn *c);
/* Registers a request with a fresh id (payload msg is taken over). */
int sluice_req_new(struct sluice_conn *c, uint8_t opcode, uint8_t *msg, size_t msg_len,
                   struct sluice_req **out);
void sluice_req_remove(struct sluice_conn *c, struct sluice_req *r); /* frees it too */
/* Sends r's request (all fragments). Called without conn->mu held. */
int sluice_req_send(struct sluice_conn *c, struct sluice_req *r);
int sluice_send_simple(struct sluice_conn *c, uint8_t opcode, uint64_t id, uint32_t seq,
                       const void *payload, size_t len);
void sluice_item_free(struct sluice_item *it);
/* UDP, after INFO said COOKIE_REQUIRED: waits (asking again) until a cookie is held. 0 or
 * -ETIMEDOUT. */
int sluice_cookie_wait(struct sluice_conn *c, uint32_t timeout_ms);
int sluice_seterr(struct sluice_conn *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void sluice_result_error(struct sluice_result *res, int code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
int sluice_map_server_error(unsigned code);
void sluice_result_server(struct sluice_result *res, const struct dp_error *e);

#pragma GCC visibility pop
