/* udp.c — the kernel UDP transport: one socket per listen address, one io_uring and one
 * thread for all of them, around the UDP protocol core (udpcore.c: validation, HELLO/PING,
 * reassembly, the request table with its RESEND history, leases, the rings), which the
 * DPDK lcores run too. Every table and buffer is sized at create; the loop neither
 * allocates nor locks. */
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataplane.h"
#include "transport.h"
#include "udpcore.h"

#define NRX 64               /* receives posted per socket */
#define NTX 512              /* send buffers */
#define RXBUF 2048           /* > DP_MAX_FRAME_UDP: a longer datagram reads as oversize */
#define TICK_NS 5000000ull   /* lease and reassembly scan */

enum { UD_RX = 1, UD_TX = 2, UD_WAKE = 3 };

struct rxb {
        struct msghdr mh;
        struct iovec iov;
        struct sockaddr_storage from;
        uint8_t buf[RXBUF];
};

struct txb {
        struct msghdr mh;
        struct iovec iov;
        struct sockaddr_storage to;
        uint8_t buf[DP_MAX_FRAME_UDP];
};

struct dp_udp {
        struct dp_transport_config cfg;
        unsigned n_sock;
        int fd[DP_MAX_LISTEN];
        struct sockaddr_storage bound[DP_MAX_LISTEN];
        unsigned bound_len[DP_MAX_LISTEN];
        struct io_uring ring;
        bool ring_ok;
        struct dp_notify wake;
        uint64_t wake_val;
        struct dpt_thread th;
        struct dpu core;

        struct rxb *rx;          /* n_sock * NRX */
        struct txb *tx;
        uint16_t tx_free[NTX];
        unsigned n_tx_free;
};

static inline uint64_t ud(unsigned type, unsigned idx) { return (uint64_t)type << 56 | idx; }

/* ---- io for the protocol core ---- */

static struct io_uring_sqe *sqe_get(struct dp_udp *u)
{
        struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
        if (!sqe) {
                io_uring_submit(&u->ring);
                sqe = io_uring_get_sqe(&u->ring);
        }
        return sqe;
}

static void rx_arm(struct dp_udp *u, unsigned i)
{
        struct rxb *b = &u->rx[i];
        struct io_uring_sqe *sqe = sqe_get(u);
        b->iov = (struct iovec){ b->buf, RXBUF };
        b->mh = (struct msghdr){ .msg_name = &b->from, .msg_namelen = sizeof(b->from),
                                 .msg_iov = &b->iov, .msg_iovlen = 1 };
        io_uring_prep_recvmsg(sqe, u->fd[i / NRX], &b->mh, 0);
        io_uring_sqe_set_data64(sqe, ud(UD_RX, i));
}

static void wake_arm(struct dp_udp *u)
{
        struct io_uring_sqe *sqe = sqe_get(u);
        io_uring_prep_read(sqe, u->wake.fd, &u->wake_val, sizeof(u->wake_val), 0);
        io_uring_sqe_set_data64(sqe, ud(UD_WAKE, 0));
}

static void *io_tx_get(void *ctx, uint8_t **buf)
{
        struct dp_udp *u = ctx;
        if (!u->n_tx_free)
                return NULL;
        struct txb *b = &u->tx[u->tx_free[--u->n_tx_free]];
        *buf = b->buf;
        return b;
}

static void io_tx_put(void *ctx, void *tx)
{
        struct dp_udp *u = ctx;
        u->tx_free[u->n_tx_free++] = (uint16_t)((struct txb *)tx - u->tx);
}

static void io_tx_send(void *ctx, void *tx, const struct dpu_peer *p, size_t len)
{
        struct dp_udp *u = ctx;
        struct txb *b = tx;
        struct io_uring_sqe *sqe = sqe_get(u);
        memcpy(&b->to, &p->ss, p->len);
        b->iov = (struct iovec){ b->buf, len };
        b->mh = (struct msghdr){ .msg_name = &b->to, .msg_namelen = p->len, .msg_iov = &b->iov,
                                 .msg_iovlen = 1 };
        io_uring_prep_sendmsg(sqe, u->fd[p->sock], &b->mh, 0);
        io_uring_sqe_set_data64(sqe, ud(UD_TX, (unsigned)(b - u->tx)));
}

static int io_push(void *ctx, const struct dp_req_rec *h, const uint8_t *msg, size_t len, const struct dpu_peer *p)
{
        struct dp_udp *u = ctx;
        return dp_req_push_peer(u->cfg.req_ring, h, msg, len, (const struct sockaddr *)&p->ss, p->len);
}

static void on_datagram(struct dp_udp *u, unsigned sock, struct rxb *b, size_t dlen, uint64_t now)
{
        struct dpu_peer p = { .len = b->mh.msg_namelen, .sock = (uint8_t)sock };
        memcpy(&p.ss, &b->from, SL_MIN((size_t)p.len, sizeof(p.ss)));
        dpu_on_datagram(&u->core, &p, b->buf, dlen, now);
}

/* ---- the thread ---- */

static void *udp_main(void *arg)
{
        struct dp_udp *u = arg;
        uint64_t next_tick = 0;

        for (unsigned i = 0; i < u->n_sock * NRX; i++)
                rx_arm(u, i);
        wake_arm(u);
        while (!dpt_thread_stopping(&u->th)) {
                uint64_t now = sl_now_ns();
                dpu_drain_responses(&u->core, now);
                if (now >= next_tick) {
                        dpu_tick(&u->core, now);
                        next_tick = now + TICK_NS;
                }
                if (u->core.pushed && u->cfg.engine_wake) {
                        dp_notify_kick(u->cfg.engine_wake);
                        u->core.pushed = false;
                }
                dp_notify_prepare(&u->wake);
                bool busy = (!dp_ring_empty(u->cfg.resp_ring) && u->n_tx_free) || u->core.pushed;
                struct __kernel_timespec ts = { 0, busy ? 0 : (long long)TICK_NS };
                if (busy)
                        atomic_store(&u->wake.sleeping, 0);
                struct io_uring_cqe *cqe;
                dpt_auth_idle(&u->core.auth); /* holds no keys while blocked */
                int r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, busy ? 0 : 1, &ts, NULL);
                atomic_store(&u->wake.sleeping, 0);
                if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY)
                        DPT_STAT(&u->core.st, io_errors, 1);
                unsigned head, n = 0;
                now = sl_now_ns();
                io_uring_for_each_cqe(&u->ring, head, cqe) {
                        uint64_t d = io_uring_cqe_get_data64(cqe);
                        unsigned idx = (unsigned)(d & 0xffffffffu);
                        n++;
                        switch (d >> 56) {
                        case UD_RX:
                                if (cqe->res >= 0)
                                        on_datagram(u, idx / NRX, &u->rx[idx], (size_t)cqe->res, now);
                                else if (cqe->res != -ECANCELED)
                                        DPT_STAT(&u->core.st, io_errors, 1);
                                rx_arm(u, idx);
                                break;
                        case UD_TX:
                                if (cqe->res < 0)
                                        DPT_STAT(&u->core.st, io_errors, 1);
                                u->tx_free[u->n_tx_free++] = (uint16_t)idx;
                                break;
                        case UD_WAKE:
                                wake_arm(u);
                                break;
                        }
                }
                io_uring_cq_advance(&u->ring, n);
        }
        return NULL;
}

/* ---- lifecycle ---- */

int dp_udp_create(struct dp_udp **out, const struct dp_transport_config *cfg, struct sl_error *err)
{
        struct dp_udp *u;
        int r;

        *out = NULL;
        if (!cfg->req_ring || !cfg->resp_ring || cfg->n_listen == 0 || cfg->n_listen > DP_MAX_LISTEN)
                return sl_errorf(err, -EINVAL, "udp: rings and 1..%d listen addresses are required", DP_MAX_LISTEN);
        u = calloc(1, sizeof(*u));
        if (!u)
                return sl_errorf(err, -ENOMEM, "udp: out of memory");
        u->cfg = *cfg;
        u->wake.fd = -1;
        for (unsigned i = 0; i < DP_MAX_LISTEN; i++)
                u->fd[i] = -1;
        static const struct dpu_io io = { .tx_get = io_tx_get, .tx_put = io_tx_put, .tx_send = io_tx_send,
                                          .push = io_push };
        struct dpu_io uio = io;
        uio.ctx = u;
        r = dpu_init(&u->core, cfg, &uio, err);
        if (r < 0)
                goto fail;
        u->rx = calloc((size_t)cfg->n_listen * NRX, sizeof(*u->rx));
        u->tx = calloc(NTX, sizeof(*u->tx));
        if (!u->rx || !u->tx) {
                r = sl_errorf(err, -ENOMEM, "udp: out of memory for buffers");
                goto fail;
        }
        for (unsigned i = 0; i < NTX; i++)
                u->tx_free[i] = (uint16_t)i;
        u->n_tx_free = NTX;
        for (unsigned i = 0; i < cfg->n_listen; i++) {
                r = dpt_listen_socket(cfg->listen[i], SOCK_DGRAM, &u->bound[i], &u->bound_len[i], err);
                if (r < 0)
                        goto fail;
                u->fd[i] = r;
                u->n_sock++;
        }
        r = dp_notify_init(&u->wake, err);
        if (r < 0)
                goto fail;
        r = io_uring_queue_init(2 * (cfg->n_listen * NRX + NTX) + 64, &u->ring, 0);
        if (r < 0) {
                sl_errorf(err, r, "udp: io_uring_queue_init: %s", strerror(-r));
                goto fail;
        }
        u->ring_ok = true;
        *out = u;
        return 0;
fail:
        dp_udp_free(u);
        return r;
}

int dp_udp_start(struct dp_udp *u, struct sl_error *err)
{
        return dpt_thread_start(&u->th, udp_main, u, "udp", err);
}

void dp_udp_stop(struct dp_udp *u)
{
        if (u)
                dpt_thread_stop(&u->th, u->wake.fd);
}

void dp_udp_free(struct dp_udp *u)
{
        if (!u)
                return;
        dp_udp_stop(u);
        if (u->ring_ok)
                io_uring_queue_exit(&u->ring);
        for (unsigned i = 0; i < DP_MAX_LISTEN; i++)
                if (u->fd[i] >= 0)
                        close(u->fd[i]);
        dp_notify_destroy(&u->wake);
        dpu_destroy(&u->core);
        free(u->rx);
        free(u->tx);
        free(u);
}

void dp_udp_kick(struct dp_udp *u) { dp_notify_kick(&u->wake); }

int dp_udp_local_addr(const struct dp_udp *u, unsigned i, struct sockaddr_storage *ss, unsigned *len)
{
        if (i >= u->n_sock)
                return -ENOENT;
        *ss = u->bound[i];
        *len = u->bound_len[i];
        return 0;
}

void dp_udp_stats(const struct dp_udp *u, struct dp_transport_stats *out)
{
        dpu_stats(&u->core, out);
}
