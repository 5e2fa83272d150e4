/* transport.h — internal to dataplane/: helpers udp.c and tcp.c share. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>

#include "dataplane.h"

/* Counters have one writer (the transport's thread or lcore): a relaxed load and store, no
 * locked instruction per packet; readers on other threads see whole values. */
#define DPT_STAT(s, f, n)                                                                          \
        atomic_store_explicit((_Atomic uint64_t *)&(s)->f,                                         \
                              atomic_load_explicit((_Atomic uint64_t *)&(s)->f, memory_order_relaxed) + (n), \
                              memory_order_relaxed)

int dpt_listen_socket(const char *addr, int type, struct sockaddr_storage *bound, unsigned *blen,
                      struct sl_error *err);
void dpt_load(const struct dp_transport_config *cfg, struct dp_load *l);
void dpt_fill_info(const struct dp_transport_config *cfg, struct dp_info *info, uint32_t max_frame,
                   uint32_t lease_ms);
long dpt_error_frame(void *buf, size_t cap, uint16_t hflags, uint64_t rid, uint32_t seq, int code,
                     bool terminal, uint32_t detail, const char *msg);

/* A transport's own thread: started once, asked to stop through the flag plus a write to the
 * transport's wake eventfd (its io_uring loop waits on it), then joined. */
struct dpt_thread {
        pthread_t thread;
        bool running;
        _Atomic bool stop;
};

/* A transport thread's part in authentication: its reader slot in the shared context and its
 * replay table (counting into the transport's stats). */
struct dpt_auth {
        struct dp_auth_ctx *ctx;        /* NULL: authentication off */
        int reader;
        struct dp_replay *rp;
};

int dpt_auth_init(struct dpt_auth *a, struct dp_auth_ctx *ctx, struct dp_auth_stats *stats, struct sl_error *err);
void dpt_auth_free(struct dpt_auth *a);
/* 0 when the frame may pass (authentication off, or a valid trailer: *key is then the
 * client's key, else NULL), or -DP_ERR_UNAUTHENTICATED with the reason. */
int dpt_auth_check(struct dpt_auth *a, const uint8_t *frame, const struct dp_frame *f, const struct dp_key **key,
                   struct sl_error *err);
/* Marks of the thread's loop: a pass begins (keys may be read until the next mark), or the
 * thread is about to block holding nothing. */
static inline void dpt_auth_enter(struct dpt_auth *a)
{
        if (a->ctx)
                dp_auth_enter(a->ctx, a->reader);
}
static inline void dpt_auth_idle(struct dpt_auth *a)
{
        if (a->ctx)
                dp_auth_idle(a->ctx, a->reader);
}

/* ---- TLS sessions of the TCP transport (tls.c): OpenSSL over memory BIOs ---- */
struct dpt_tls;
struct dpt_tls *dpt_tls_accept(struct dp_tls_ctx *ctx); /* NULL: out of memory */
void dpt_tls_free(struct dpt_tls *s);
int dpt_tls_feed(struct dpt_tls *s, const void *p, size_t n); /* ciphertext received */
/* 1 once established, 0 while it needs more from the peer, or a negative errno with the
 * reason (-EKEYREJECTED: the client's certificate; -EPROTO: anything else). */
int dpt_tls_handshake(struct dpt_tls *s, struct sl_error *err);
/* Plaintext into buf: > 0 bytes, 0 when more ciphertext is needed, or a negative errno
 * (-EPIPE: the peer closed the session). */
long dpt_tls_read(struct dpt_tls *s, void *buf, size_t cap, struct sl_error *err);
long dpt_tls_write(struct dpt_tls *s, const void *p, size_t n); /* all of n, or -EIO */
size_t dpt_tls_out_pending(const struct dpt_tls *s);           /* ciphertext to send */
size_t dpt_tls_out_take(struct dpt_tls *s, void *buf, size_t cap);
bool dpt_tls_established(const struct dpt_tls *s);
void dpt_tls_close(struct dpt_tls *s);                          /* queues close_notify */

int dpt_thread_start(struct dpt_thread *t, void *(*fn)(void *), void *arg, const char *who,
                     struct sl_error *err);
void dpt_thread_stop(struct dpt_thread *t, int wake_fd); /* no-op when not running */

static inline bool dpt_thread_stopping(struct dpt_thread *t)
{
        return atomic_load_explicit(&t->stop, memory_order_acquire);
}
