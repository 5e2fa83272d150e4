/* test-udp.c — the UDP transport on 127.0.0.1 and ::1 with a fake engine: CRC'd framing
 * and sequence numbers, PING/PONG, HELLO/INFO, fragmented GENERATE, a repeated request id
 * not run twice, RESEND of a datagram the client ignored, lease expiry -> CLIENT_GONE, and
 * garbage / oversize / bad-CRC datagrams counted while the transport keeps serving; request
 * records carry the client's address. */
#include "transport-test.h"

static struct dp_udp *g_u;
static void kick(void *arg) { dp_udp_kick(arg); }

static int client_socket(const struct sockaddr_storage *ss, unsigned len)
{
        int fd = socket(ss->ss_family, SOCK_DGRAM, 0);
        CHECK(fd >= 0);
        CHECK(connect(fd, (const struct sockaddr *)ss, len) == 0);
        return fd;
}

static void send_frame(int fd, uint8_t op, uint64_t rid, uint32_t seq, const void *pl, size_t n)
{
        uint8_t buf[DP_MAX_FRAME_UDP];
        struct dp_header h = { .opcode = op, .flags = DP_F_CRC, .request_id = rid, .seq = seq, .frag_count = 1 };
        long fl = dp_frame_encode(buf, sizeof(buf), DP_MAX_FRAME_UDP, &h, pl, n, NULL, NULL);
        CHECK(fl > 0);
        CHECK(send(fd, buf, (size_t)fl, 0) == fl);
}

/* Receives one frame (CRC checked), or returns false after ms. */
static bool recv_frame(int fd, uint8_t *buf, struct dp_frame *f, int ms)
{
        if (!wait_readable(fd, ms))
                return false;
        ssize_t n = recv(fd, buf, 2048, 0);
        CHECK(n > 0 && n <= DP_MAX_FRAME_UDP);
        CHECK(dp_frame_decode(buf, (size_t)n, DP_MAX_FRAME_UDP, DP_DECODE_REQUIRE_CRC, f, NULL) == 0);
        return true;
}

/* Reads a whole stream of 3 TOKENS + DONE; checks seqs; skip_seq: one datagram ignored. */
static void read_stream(int fd, uint64_t rid, int skip_seq, uint8_t saved[4][DP_MAX_FRAME_UDP], size_t *saved_len)
{
        uint8_t buf[2048];
        struct dp_frame f;
        for (int i = 0; i < 4; i++) {
                CHECK(recv_frame(fd, buf, &f, 2000));
                CHECK(f.h.request_id == rid && f.h.seq == (uint32_t)i);
                CHECK(f.h.opcode == (i < 3 ? DP_OP_TOKENS : DP_OP_DONE));
                if (i == skip_seq)
                        continue;
                if (saved) {
                        memcpy(saved[i], buf, f.len);
                        saved_len[i] = f.len;
                }
        }
}

static void run(const char *addr)
{
        struct sl_error err;
        struct dp_ring *req, *resp;
        struct fake_engine e;
        struct dp_transport_stats st;
        uint8_t pl[DP_MAX_MESSAGE], buf[2048];
        struct dp_frame f;
        union dp_msg m;

        CHECK(dp_ring_create(&req, 1 << 20, &err) == 0);
        CHECK(dp_ring_create(&resp, 1 << 20, &err) == 0);
        struct dp_transport_config cfg = { .index = 3, .n_listen = 1, .listen = { addr }, .req_ring = req,
                                           .resp_ring = resp, .load = fake_load, .lease_ms = 300 };
        if (dp_udp_create(&g_u, &cfg, &err) < 0) {
                if (strchr(addr, '[')) {
                        printf("skip %s: %s\n", addr, err.msg);
                        dp_ring_free(req), dp_ring_free(resp);
                        return;
                }
                fprintf(stderr, "%s\n", err.msg);
                exit(1);
        }
        fake_start(&e, req, resp, kick, g_u);
        struct sockaddr_storage ss;
        unsigned sl;
        CHECK(dp_udp_local_addr(g_u, 0, &ss, &sl) == 0);
        CHECK(dp_udp_start(g_u, &err) == 0);
        int fd = client_socket(&ss, sl);

        /* PING -> PONG with the load, seq echoed, never larger than the PING */
        struct dp_ping ping = { .token = 0xabcdef };
        long n = dp_ping_encode(pl, sizeof(pl), &ping);
        send_frame(fd, DP_OP_PING, 0, 77, pl, (size_t)n);
        CHECK(recv_frame(fd, buf, &f, 2000));
        CHECK(f.h.opcode == DP_OP_PONG && f.h.seq == 77 && f.len <= DP_HEADER_SIZE + DP_PING_PAYLOAD);
        CHECK(dp_pong_decode(f.payload, f.h.payload_len, &m.pong, NULL) == 0);
        CHECK(m.pong.token == 0xabcdef && m.pong.load.queue_depth == 7 && m.pong.load.kv_blocks_free == 42);

        /* HELLO: short one dropped, padded one answered with INFO */
        struct dp_hello hello = { .max_version = 1, .pad_len = 100 };
        n = dp_hello_encode(pl, sizeof(pl), &hello);
        send_frame(fd, DP_OP_HELLO, 0, 0, pl, (size_t)n);
        CHECK(!wait_readable(fd, 100));
        hello.pad_len = DP_UDP_HELLO_MIN - DP_HEADER_SIZE - 4;
        n = dp_hello_encode(pl, sizeof(pl), &hello);
        send_frame(fd, DP_OP_HELLO, 0, 5, pl, (size_t)n);
        CHECK(recv_frame(fd, buf, &f, 2000));
        CHECK(f.h.opcode == DP_OP_INFO && f.h.seq == 5);
        CHECK(dp_info_decode(f.payload, f.h.payload_len, &m.info, NULL) == 0);
        CHECK(m.info.max_frame == DP_MAX_FRAME_UDP && m.info.lease_ms == 300 && m.info.load.queue_depth == 7);

        /* a plain GENERATE: 3 TOKENS + DONE, seq 0..3; then the same id again is not run */
        n = gen_payload(pl, sizeof(pl), "hi", 2);
        send_frame(fd, DP_OP_GENERATE, 1, 0, pl, (size_t)n);
        read_stream(fd, 1, -1, NULL, NULL);
        char name[64];
        sock_name(fd, name, sizeof(name));
        /* peer[] is published by the bump of runs[] (transport-test.h); the datagrams came
         * through io_uring, which orders nothing that TSan can see */
        CHECK(atomic_load(&e.runs[1]) == 1);
        CHECK(strcmp(e.peer[1], name) == 0); /* the record names the datagram's source */
        send_frame(fd, DP_OP_GENERATE, 1, 0, pl, (size_t)n);
        CHECK(!wait_readable(fd, 150));
        CHECK(atomic_load(&e.runs[1]) == 1);

        /* fragmented GENERATE: 3000-byte prompt, fragments out of order and one twice */
        static char prompt[3000];
        memset(prompt, 'x', sizeof(prompt));
        n = gen_payload(pl, sizeof(pl), prompt, sizeof(prompt));
        int nf = dp_fragment_count((size_t)n, DP_MAX_FRAME_UDP, DP_F_CRC);
        CHECK(nf == 3);
        int order[4] = { 2, 0, 0, 1 };
        for (int i = 0; i < 4; i++) {
                struct dp_header h = { .opcode = DP_OP_GENERATE, .flags = DP_F_CRC, .request_id = 2 };
                long fl = dp_fragment_encode(buf, sizeof(buf), DP_MAX_FRAME_UDP, &h, pl, (size_t)n,
                                             (unsigned)order[i], NULL, NULL);
                CHECK(fl > 0 && send(fd, buf, (size_t)fl, 0) == fl);
        }
        read_stream(fd, 2, -1, NULL, NULL);
        CHECK(atomic_load(&e.runs[2]) == 1 && atomic_load(&e.plen[2]) == sizeof(prompt));

        /* RESEND: the client ignores seq 1, asks for it, gets the same bytes */
        static uint8_t saved[4][DP_MAX_FRAME_UDP];
        size_t saved_len[4] = { 0 };
        n = gen_payload(pl, sizeof(pl), "hi", 2);
        send_frame(fd, DP_OP_GENERATE, 3, 0, pl, (size_t)n);
        uint8_t first[DP_MAX_FRAME_UDP];
        read_stream(fd, 3, 1, saved, saved_len);
        struct dp_resend rs = { .n_ranges = 1, .r = { { 1, 1 } } };
        n = dp_resend_encode(pl, sizeof(pl), &rs);
        send_frame(fd, DP_OP_RESEND, 3, 0, pl, (size_t)n);
        CHECK(recv_frame(fd, first, &f, 2000));
        CHECK(f.h.request_id == 3 && f.h.seq == 1 && f.h.opcode == DP_OP_TOKENS);
        /* and "everything": 0..3 again, identical to what was first sent */
        rs = (struct dp_resend){ .n_ranges = 1, .r = { { 0, 0 } } };
        n = dp_resend_encode(pl, sizeof(pl), &rs);
        send_frame(fd, DP_OP_RESEND, 3, 0, pl, (size_t)n);
        for (int i = 0; i < 4; i++) {
                CHECK(recv_frame(fd, buf, &f, 2000));
                CHECK(f.h.seq == (uint32_t)i);
                if (i != 1)
                        CHECK(f.len == saved_len[i] && !memcmp(buf, saved[i], f.len));
        }
        struct dp_ack ack = { .next_seq = 4 };
        n = dp_ack_encode(pl, sizeof(pl), &ack);
        send_frame(fd, DP_OP_ACK, 3, 0, pl, (size_t)n);
        CHECK(atomic_load(&e.runs[3]) == 1);

        /* lease: a held request whose client stays silent gets CLIENT_GONE, then DONE cancelled */
        uint64_t t0 = sl_now_ns();
        n = gen_payload(pl, sizeof(pl), "hold", 4);
        send_frame(fd, DP_OP_GENERATE, 4, 0, pl, (size_t)n);
        CHECK(wait_until(&e.gone[4], 1, 3000));
        double waited = (sl_now_ns() - t0) / 1e6;
        CHECK(waited >= 250);
        CHECK(recv_frame(fd, buf, &f, 2000));
        CHECK(f.h.opcode == DP_OP_DONE && f.h.request_id == 4 && f.h.seq == 0);
        CHECK(dp_done_decode(f.payload, f.h.payload_len, &m.done, NULL) == 0 && m.done.reason == DP_FINISH_CANCELLED);

        /* a held request kept alive by ACKs outlives the lease; CANCEL ends it */
        n = gen_payload(pl, sizeof(pl), "hold", 4);
        send_frame(fd, DP_OP_GENERATE, 5, 0, pl, (size_t)n);
        ack.next_seq = 0;
        for (int i = 0; i < 6; i++) {
                usleep(100000);
                n = dp_ack_encode(pl, sizeof(pl), &ack);
                send_frame(fd, DP_OP_ACK, 5, 0, pl, (size_t)n);
        }
        CHECK(atomic_load(&e.gone[5]) == 0);
        send_frame(fd, DP_OP_CANCEL, 5, 0, NULL, 0);
        CHECK(recv_frame(fd, buf, &f, 2000));
        CHECK(f.h.opcode == DP_OP_DONE && f.h.request_id == 5);
        CHECK(atomic_load(&e.cancels[5]) == 1);

        /* garbage, bad CRC, oversize: counted; only the oversize one with a valid header
         * gets an ERROR; an ERROR is never larger than the datagram that caused it */
        dp_udp_stats(g_u, &st);
        uint64_t mal0 = st.malformed, crc0 = st.drop_bad_crc;
        for (int i = 0; i < 50; i++) {
                for (int k = 0; k < 200; k++)
                        buf[k] = (uint8_t)rand();
                CHECK(send(fd, buf, 1 + (size_t)(rand() % 200), 0) > 0);
        }
        n = gen_payload(pl, sizeof(pl), "hi", 2);
        struct dp_header h = { .opcode = DP_OP_GENERATE, .flags = DP_F_CRC, .request_id = 9, .frag_count = 1 };
        long fl = dp_frame_encode(buf, sizeof(buf), DP_MAX_FRAME_UDP, &h, pl, (size_t)n, NULL, NULL);
        buf[fl - 1] ^= 1;
        CHECK(send(fd, buf, (size_t)fl, 0) == fl); /* bad CRC: dropped, not run */
        static uint8_t big[1600];
        memset(big, 0, sizeof(big));
        h = (struct dp_header){ .opcode = DP_OP_PING, .flags = DP_F_CRC, .request_id = 10, .frag_count = 1 };
        CHECK(dp_frame_encode(big, sizeof(big), sizeof(big), &h, big + DP_HEADER_SIZE, sizeof(big) - DP_HEADER_SIZE,
                             NULL, NULL) == sizeof(big));
        CHECK(send(fd, big, sizeof(big), 0) == (ssize_t)sizeof(big));
        CHECK(recv_frame(fd, buf, &f, 2000));
        CHECK(f.h.opcode == DP_OP_ERROR && f.h.request_id == 10);
        CHECK(dp_error_decode(f.payload, f.h.payload_len, &m.error, NULL) == 0 && m.error.code == DP_ERR_TOO_LARGE);
        /* unknown opcode, 60-byte frame: the ERROR is cut to <= 60 bytes */
        h = (struct dp_header){ .opcode = DP_OP_HELLO, .flags = DP_F_CRC, .request_id = 11, .frag_count = 1 };
        fl = dp_frame_encode(buf, sizeof(buf), DP_MAX_FRAME_UDP, &h, pl, 28, NULL, NULL);
        buf[5] = 0x33;
        uint32_t crc = dp_frame_crc(buf, (size_t)fl);
        memcpy(buf + 28, &crc, 4);
        CHECK(fl == 60 && send(fd, buf, 60, 0) == 60);
        CHECK(recv_frame(fd, buf, &f, 2000));
        CHECK(f.h.opcode == DP_OP_ERROR && f.len <= 60);
        CHECK(dp_error_decode(f.payload, f.h.payload_len, &m.error, NULL) == 0 && m.error.code == DP_ERR_UNKNOWN_OPCODE);
        /* CANCEL of an unknown id (32 bytes): NOT_FOUND would be 48 bytes, so nothing */
        send_frame(fd, DP_OP_CANCEL, 12, 0, NULL, 0);
        CHECK(!wait_readable(fd, 100));
        /* still serving */
        n = gen_payload(pl, sizeof(pl), "hi", 2);
        send_frame(fd, DP_OP_GENERATE, 13, 0, pl, (size_t)n);
        read_stream(fd, 13, -1, NULL, NULL);
        CHECK(atomic_load(&e.runs[9]) == 0);
        dp_udp_stats(g_u, &st);
        CHECK(st.malformed >= mal0 + 53 && st.drop_bad_crc >= crc0 + 51);
        CHECK(st.duplicates >= 1 && st.resent == 5 && st.leases_expired == 1 && st.drop_short_hello == 1);
        printf("udp %s: rx %llu tx %llu malformed %llu dropped(crc/header) %llu resent %llu dup %llu leases %llu\n",
               addr, (unsigned long long)st.rx_frames, (unsigned long long)st.tx_frames,
               (unsigned long long)st.malformed, (unsigned long long)st.drop_bad_crc,
               (unsigned long long)st.resent, (unsigned long long)st.duplicates,
               (unsigned long long)st.leases_expired);

        close(fd);
        dp_udp_stop(g_u);
        fake_stop(&e);
        dp_udp_free(g_u);
        dp_ring_free(req);
        dp_ring_free(resp);
}

/* The address trailer on request records: after payloads of every alignment, v4-mapped
 * IPv6 written as IPv4, and none on plain dp_req_push() records or other families. */
static void check_peer_records(void)
{
        struct dp_ring *r;
        char buf[64], pl[13] = "0123456789ab";
        const void *rec;
        size_t len;
        CHECK(dp_ring_create(&r, 1 << 16, NULL) == 0);
        struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(45678) };
        inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
        struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(5) };
        inet_pton(AF_INET6, "::1", &in6.sin6_addr);
        struct sockaddr_in6 mapped = { .sin6_family = AF_INET6, .sin6_port = htons(7) };
        inet_pton(AF_INET6, "::ffff:10.1.2.3", &mapped.sin6_addr);
        struct dp_req_rec h = { .kind = DP_REQ_GENERATE, .request_id = 9 };
        for (size_t n = 0; n <= 12; n++) {
                CHECK(dp_req_push_peer(r, &h, pl, n, (const struct sockaddr *)&in, sizeof(in)) == 0);
                CHECK((rec = dp_ring_peek(r, &len)));
                const struct dp_req_rec *rr = rec;
                CHECK(rr->payload_len == n && memcmp(rr->payload, pl, n) == 0 && rr->request_id == 9);
                dp_req_peer_format(dp_req_peer(rr, len), buf, sizeof(buf));
                CHECK(strcmp(buf, "127.0.0.1:45678") == 0);
                dp_ring_release(r);
        }
        CHECK(dp_req_push_peer(r, &h, pl, 3, (const struct sockaddr *)&in6, sizeof(in6)) == 0);
        CHECK((rec = dp_ring_peek(r, &len)));
        dp_req_peer_format(dp_req_peer(rec, len), buf, sizeof(buf));
        CHECK(strcmp(buf, "[::1]:5") == 0);
        dp_ring_release(r);
        CHECK(dp_req_push_peer(r, &h, NULL, 0, (const struct sockaddr *)&mapped, sizeof(mapped)) == 0);
        CHECK((rec = dp_ring_peek(r, &len)));
        CHECK(dp_req_peer(rec, len)->addr.sa.sa_family == AF_INET);
        dp_req_peer_format(dp_req_peer(rec, len), buf, sizeof(buf));
        CHECK(strcmp(buf, "10.1.2.3:7") == 0);
        dp_ring_release(r);
        struct sockaddr un = { .sa_family = AF_UNIX };
        CHECK(dp_req_push_peer(r, &h, pl, 5, &un, sizeof(un)) == 0);
        CHECK((rec = dp_ring_peek(r, &len)) && len == sizeof(h) + 5 && !dp_req_peer(rec, len));
        dp_ring_release(r);
        CHECK(dp_req_push(r, &h, pl, 8) == 0);
        CHECK((rec = dp_ring_peek(r, &len)) && !dp_req_peer(rec, len));
        dp_req_peer_format(NULL, buf, sizeof(buf));
        CHECK(strcmp(buf, "-") == 0);
        dp_ring_release(r);
        dp_ring_free(r);
}

int main(void)
{
        srand(1);
        alarm(60);
        check_peer_records();
        run("127.0.0.1:0");
        run("[::1]:0");
        return 0;
}
