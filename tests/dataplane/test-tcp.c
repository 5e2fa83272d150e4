/* test-tcp.c — the TCP transport on 127.0.0.1 and ::1 with a fake engine: 16 requests
 * multiplexed on one connection, a framing error closing only that connection, a
 * connection that never reads hitting the output bound (its request fails, the engine gets
 * CANCEL) while another connection is served, close -> CLIENT_GONE, and request records
 * naming the connection's peer address. */
#include <netinet/tcp.h>

#include "transport-test.h"

static void kick(void *arg) { dp_tcp_kick(arg); }

static int client(const struct sockaddr_storage *ss, unsigned len, int rcvbuf)
{
        int fd = socket(ss->ss_family, SOCK_STREAM, 0);
        CHECK(fd >= 0);
        if (rcvbuf)
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
        CHECK(connect(fd, (const struct sockaddr *)ss, len) == 0);
        return fd;
}

static void send_frame(int fd, uint8_t op, uint64_t rid, const void *pl, size_t n)
{
        uint8_t buf[DP_MAX_FRAME_TCP];
        struct dp_header h = { .opcode = op, .request_id = rid, .frag_count = 1 };
        long fl = dp_frame_encode(buf, sizeof(buf), DP_MAX_FRAME_TCP, &h, pl, n, NULL, NULL);
        CHECK(fl > 0 && send(fd, buf, (size_t)fl, MSG_NOSIGNAL) == fl);
}

struct reader {
        uint8_t buf[4 * DP_MAX_FRAME_TCP];
        size_t fill, off;
};

/* Next frame, 1; 0 on EOF; -1 on timeout. */
static int next_frame(int fd, struct reader *r, struct dp_frame *f, int ms)
{
        for (;;) {
                long fl = dp_frame_length(r->buf + r->off, r->fill - r->off, DP_MAX_FRAME_TCP, NULL);
                CHECK(fl >= 0);
                if (fl > 0 && (size_t)fl <= r->fill - r->off) {
                        CHECK(dp_frame_decode(r->buf + r->off, (size_t)fl, DP_MAX_FRAME_TCP, 0, f, NULL) == 0);
                        r->off += (size_t)fl;
                        return 1;
                }
                memmove(r->buf, r->buf + r->off, r->fill - r->off);
                r->fill -= r->off;
                r->off = 0;
                if (!wait_readable(fd, ms))
                        return -1;
                ssize_t n = recv(fd, r->buf + r->fill, sizeof(r->buf) - r->fill, 0);
                if (n <= 0)
                        return 0;
                r->fill += (size_t)n;
        }
}

static struct reader rd, rd2;

static void run(const char *addr)
{
        struct sl_error err;
        struct dp_ring *req, *resp;
        struct fake_engine e;
        struct dp_transport_stats st;
        struct dp_tcp *t;
        uint8_t pl[4096];
        struct dp_frame f;
        union dp_msg m;

        CHECK(dp_ring_create(&req, 1 << 20, &err) == 0);
        CHECK(dp_ring_create(&resp, 1 << 20, &err) == 0);
        struct dp_transport_config cfg = { .index = 1, .n_listen = 1, .listen = { addr }, .req_ring = req,
                                           .resp_ring = resp, .load = fake_load, .max_conns = 8,
                                           .out_bytes = 131072, .sndbuf = 4096 };
        if (dp_tcp_create(&t, &cfg, &err) < 0) {
                if (strchr(addr, '[')) {
                        printf("skip %s: %s\n", addr, err.msg);
                        dp_ring_free(req), dp_ring_free(resp);
                        return;
                }
                fprintf(stderr, "%s\n", err.msg);
                exit(1);
        }
        fake_start(&e, req, resp, kick, t);
        struct sockaddr_storage ss;
        unsigned sl;
        CHECK(dp_tcp_local_addr(t, 0, &ss, &sl) == 0);
        CHECK(dp_tcp_start(t, &err) == 0);

        /* 16 requests multiplexed on one connection, answered in any interleaving */
        int a = client(&ss, sl, 0);
        memset(&rd, 0, sizeof(rd));
        long n = gen_payload(pl, sizeof(pl), "hi", 2);
        for (uint64_t rid = 100; rid < 116; rid++)
                send_frame(a, DP_OP_GENERATE, rid, pl, (size_t)n);
        uint32_t next[16] = { 0 };
        for (int i = 0; i < 64; i++) {
                CHECK(next_frame(a, &rd, &f, 2000) == 1);
                CHECK(f.h.request_id >= 100 && f.h.request_id < 116);
                unsigned k = (unsigned)(f.h.request_id - 100);
                CHECK(f.h.seq == next[k]);
                CHECK(f.h.opcode == (next[k] < 3 ? DP_OP_TOKENS : DP_OP_DONE));
                next[k]++;
        }
        for (int k = 0; k < 16; k++)
                CHECK(next[k] == 4 && atomic_load(&e.runs[100 + k]) == 1);
        /* each request record names the connection's peer (for the audit log) */
        char name_a[64], name_c[64];
        sock_name(a, name_a, sizeof(name_a));
        for (int k = 0; k < 16; k++)
                CHECK(strcmp(e.peer[100 + k], name_a) == 0);
        /* a live id reused on the connection: non-terminal BAD_PARAM */
        n = gen_payload(pl, sizeof(pl), "hold", 4);
        send_frame(a, DP_OP_GENERATE, 120, pl, (size_t)n);
        send_frame(a, DP_OP_GENERATE, 120, pl, (size_t)n);
        CHECK(next_frame(a, &rd, &f, 2000) == 1);
        CHECK(f.h.opcode == DP_OP_ERROR && f.h.request_id == 120);
        CHECK(dp_error_decode(f.payload, f.h.payload_len, &m.error, NULL) == 0 && m.error.code == DP_ERR_BAD_PARAM &&
              !(m.error.flags & DP_ERRF_TERMINAL));
        send_frame(a, DP_OP_CANCEL, 120, NULL, 0);
        CHECK(next_frame(a, &rd, &f, 2000) == 1 && f.h.opcode == DP_OP_DONE && f.h.request_id == 120);

        /* framing error on b: ERROR then close; a keeps working */
        int b = client(&ss, sl, 0);
        memset(&rd2, 0, sizeof(rd2));
        uint8_t junk[64];
        memset(junk, 0x5a, sizeof(junk));
        CHECK(send(b, junk, sizeof(junk), MSG_NOSIGNAL) == (ssize_t)sizeof(junk));
        CHECK(next_frame(b, &rd2, &f, 2000) == 1 && f.h.opcode == DP_OP_ERROR && f.h.request_id == 0);
        CHECK(next_frame(b, &rd2, &f, 2000) == 0); /* closed */
        close(b);
        struct dp_ping ping = { .token = 99 };
        n = dp_ping_encode(pl, sizeof(pl), &ping);
        send_frame(a, DP_OP_PING, 0, pl, (size_t)n);
        CHECK(next_frame(a, &rd, &f, 2000) == 1 && f.h.opcode == DP_OP_PONG);

        /* slow reader: c never reads; its flood request overflows the bound and fails,
         * the engine gets CANCEL; a is served meanwhile */
        int c = client(&ss, sl, 4096);
        n = gen_payload(pl, sizeof(pl), "flood", 5);
        send_frame(c, DP_OP_GENERATE, 130, pl, (size_t)n);
        CHECK(wait_until(&e.cancels[130], 1, 10000));
        n = gen_payload(pl, sizeof(pl), "hi", 2);
        send_frame(a, DP_OP_GENERATE, 131, pl, (size_t)n);
        for (int i = 0; i < 4; i++)
                CHECK(next_frame(a, &rd, &f, 2000) == 1 && f.h.request_id == 131 && f.h.seq == (uint32_t)i);
        dp_tcp_stats(t, &st);
        CHECK(st.output_overflows == 1);
        /* now c reads: its stream is intact up to a terminal ERROR CANCELLED */
        memset(&rd2, 0, sizeof(rd2));
        uint32_t seq = 0;
        for (;;) {
                CHECK(next_frame(c, &rd2, &f, 2000) == 1);
                CHECK(f.h.request_id == 130 && f.h.seq == seq++);
                if (f.h.opcode == DP_OP_ERROR) {
                        CHECK(dp_error_decode(f.payload, f.h.payload_len, &m.error, NULL) == 0);
                        CHECK(m.error.code == DP_ERR_CANCELLED && (m.error.flags & DP_ERRF_TERMINAL));
                        break;
                }
                CHECK(f.h.opcode == DP_OP_TOKENS && seq < 20000);
        }
        CHECK(!wait_readable(c, 100)); /* nothing after the terminal frame */

        /* closing a connection with a live request sends CLIENT_GONE */
        n = gen_payload(pl, sizeof(pl), "hold", 4);
        send_frame(c, DP_OP_GENERATE, 140, pl, (size_t)n);
        CHECK(wait_until(&e.runs[140], 1, 2000));
        sock_name(c, name_c, sizeof(name_c));
        CHECK(strcmp(e.peer[140], name_c) == 0 && strcmp(name_a, name_c) != 0);
        CHECK(strcmp(e.peer[131], name_a) == 0);
        close(c);
        CHECK(wait_until(&e.gone[140], 1, 2000));

        dp_tcp_stats(t, &st);
        CHECK(st.framing_closes == 1 && st.conns_accepted == 3);
        printf("tcp %s: rx %llu tx %llu frames, %d frames to the slow reader before its request failed, "
               "overflows %llu, framing closes %llu\n", addr, (unsigned long long)st.rx_frames,
               (unsigned long long)st.tx_frames, (int)seq, (unsigned long long)st.output_overflows,
               (unsigned long long)st.framing_closes);
        close(a);
        dp_tcp_stop(t);
        fake_stop(&e);
        dp_tcp_free(t);
        dp_ring_free(req);
        dp_ring_free(resp);
}

int main(void)
{
        alarm(60);
        run("127.0.0.1:0");
        run("[::1]:0");
        return 0;
}
