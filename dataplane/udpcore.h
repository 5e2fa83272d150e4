/* udpcore.h — internal to dataplane/: the UDP side of the protocol (docs/protocol.md §5)
 * that the kernel UDP transport (udp.c, one instance) and the DPDK transport (dpdk.c, one
 * instance per lcore) both run: datagram validation, HELLO/PING answers, reassembly, the
 * request table with its per-request chunk history for RESEND, the ACK window, leases, and
 * the moves through the request and response rings. The transport supplies the I/O through
 * struct dpu_io; everything here is sized at init and never allocates afterwards. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <sodium.h>

#include "dataplane.h"
#include "transport.h"

/* A client address, and which of the transport's sockets (or queues) it came in on. */
struct dpu_peer {
        struct sockaddr_storage ss;
        socklen_t len;
        uint8_t sock;
};

struct dpu_io {
        void *ctx;
        /* A transmit buffer with room for DP_MAX_FRAME_UDP bytes at *buf, or NULL when none
         * is free (the core counts drop_no_tx_buf). */
        void *(*tx_get)(void *ctx, uint8_t **buf);
        void (*tx_put)(void *ctx, void *tx);             /* give back one tx_get'd, unsent */
        void (*tx_send)(void *ctx, void *tx, const struct dpu_peer *p, size_t len);
        /* Pushes a complete request whose message is msg[0, len): inside the datagram being
         * handled, or in a reassembly buffer. 0, or -ENOBUFS when the ring is full. */
        int (*push)(void *ctx, const struct dp_req_rec *h, const uint8_t *msg, size_t len,
                    const struct dpu_peer *p);
};

struct dpu_req;
struct dpu_reasm;

struct dpu {
        struct dp_transport_config cfg;
        struct dpu_io io;
        uint64_t lease_ns;
        unsigned n_req, hist, n_buckets;
        struct dpu_req *req;
        uint32_t *bucket;
        uint8_t *hist_buf;       /* n_req * hist * DP_MAX_FRAME_UDP */
        uint16_t *hist_len;
        uint32_t *free_req;
        unsigned n_free_req;
        unsigned n_reasm;
        struct dpu_reasm *reasm;
        uint8_t *reasm_buf;
        bool pushed;             /* request records pushed since the transport last kicked the engine */
        struct dpt_auth auth;    /* this thread's reader slot and replay table */
        const struct dp_key *key; /* the datagram being handled: its key when authenticated */
        /* cookies (docs/protocol.md §7.2): the MAC key of the last two buckets, each derived
         * from the shared secret when its bucket begins */
        uint64_t ck_bucket_ns;
        uint32_t ck_bucket[2];
        bool ck_ready[2];
        crypto_auth_hmacsha256_state ck_key[2];
        struct dp_transport_stats st;
};

int dpu_init(struct dpu *u, const struct dp_transport_config *cfg, const struct dpu_io *io,
             struct sl_error *err);
void dpu_destroy(struct dpu *u); /* a zeroed struct is fine */

/* One received datagram of dlen bytes from p. */
void dpu_on_datagram(struct dpu *u, const struct dpu_peer *p, const uint8_t *buf, size_t dlen, uint64_t now);
/* Frames, numbers, keeps and sends what the engine put in cfg.resp_ring, while transmit
 * buffers last. Returns the records handled. */
unsigned dpu_drain_responses(struct dpu *u, uint64_t now);
/* Leases, pending CANCEL/CLIENT_GONE records and stale reassemblies; call every few ms. */
void dpu_tick(struct dpu *u, uint64_t now);
/* Forgets every request and reassembly (the DPDK benchmark, between rounds). */
void dpu_reset(struct dpu *u);
/* Relaxed copy of the counters, from any thread. */
void dpu_stats(const struct dpu *u, struct dp_transport_stats *out);
