/* dpdk_bench.c — sluice-bench-dpdk, the DPDK transport's figures (bench/dpdk drives it):
 *   rx [N]             parse-and-enqueue rate of one lcore: minimal GENERATE frames (one
 *                      token id) built in mbufs of the transport's own pool, run through the
 *                      real receive path (Ethernet/IPv4/UDP checks, frame CRC and decode,
 *                      request table, request ring) by dp_dpdk_bench_rx(); only that call is
 *                      timed. Twice: checksums verified in software (virtual devices), and
 *                      marked good by the "NIC" (mbuf offload flags, as a NIC with rx
 *                      checksum offload reports them). The port is net_null: nothing is polled.
 *   rtt HOST PORT [N]  PING round trips over a kernel UDP socket: p50/p99/mean in µs.
 * Both print one JSON object. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <rte_mbuf.h>

#include "dataplane.h"
#include "packet.h"

#define BATCH 2048u
#define BURST 32u

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* ---- rx ---- */

static const struct dpk_iface srv = {.mac = {0}, .ip = 0x0a0b0c02, .mask = 0xffffff00, .port = 7400};
static const struct dpk_iface cli = {.mac = {0x02, 0, 0, 0, 0, 0x09}, .ip = 0x0a0b0c01, .mask = 0xffffff00, .port = 40000};

/* One GENERATE frame from the client: Ethernet + IPv4 + UDP + the 96-byte protocol frame. */
static size_t build(uint8_t *f, const uint8_t srv_mac[6], uint64_t rid, unsigned slot)
{
        uint8_t msg[64];
        uint8_t ids[4];
        dp_id_put(ids, 0, 1);
        struct dp_generate g = {.flags = DP_GEN_PROMPT_IDS, .max_tokens = 1, .prompt_len = 1, .prompt_ids = ids};
        g.sampling.top_p = 1, g.sampling.repeat_penalty = 1;
        long n = dp_generate_encode(msg, sizeof(msg), &g);
        struct dp_header h = {.opcode = DP_OP_GENERATE, .flags = DP_F_CRC, .request_id = rid, .frag_count = 1};
        long fl = dp_frame_encode(f + DPK_HDRS, DP_MAX_FRAME_UDP, DP_MAX_FRAME_UDP, &h, msg, (size_t)n, NULL, NULL);
        struct dpk_iface c = cli;
        c.port = (uint16_t)(40000 + slot % 1000); /* 1000 clients */
        return dpk_udp_headers(f, &c, srv_mac, srv.ip, srv.port, (size_t)fl, (uint16_t)rid, 0);
}

static double rx_round(struct dp_dpdk *d, struct dp_ring *ring, bool hw_csum, unsigned rounds, const uint8_t mac[6])
{
        struct rte_mempool *mp = dp_dpdk_bench_pool(d);
        static struct rte_mbuf *m[BATCH];
        uint64_t rid = 1, ns = 0, pkts = 0, enq = 0;
        for (unsigned r = 0; r < rounds; r++) {
                if (rte_pktmbuf_alloc_bulk(mp, m, BATCH) < 0) {
                        fprintf(stderr, "mbuf pool empty\n");
                        exit(1);
                }
                for (unsigned i = 0; i < BATCH; i++) {
                        size_t n = build(rte_pktmbuf_mtod(m[i], uint8_t *), mac, rid++, i);
                        m[i]->data_len = (uint16_t)n;
                        m[i]->pkt_len = (uint32_t)n;
                        m[i]->ol_flags = hw_csum ? RTE_MBUF_F_RX_IP_CKSUM_GOOD | RTE_MBUF_F_RX_L4_CKSUM_GOOD : 0;
                }
                struct timespec a, b;
                clock_gettime(CLOCK_MONOTONIC, &a);
                for (unsigned i = 0; i < BATCH; i += BURST)
                        dp_dpdk_bench_rx(d, 0, (void **)&m[i], BURST);
                clock_gettime(CLOCK_MONOTONIC, &b);
                ns += (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)(b.tv_nsec - a.tv_nsec);
                pkts += BATCH;
                /* the engine's side, untimed: take every record, give the mbufs back */
                const void *rec;
                size_t len;
                while ((rec = dp_ring_peek(ring, &len))) {
                        dp_req_release(rec);
                        dp_ring_release(ring);
                        enq++;
                }
                dp_dpdk_bench_reset(d, 0);
        }
        if (enq != pkts) {
                fprintf(stderr, "only %llu of %llu frames became requests\n", (unsigned long long)enq,
                        (unsigned long long)pkts);
                exit(1);
        }
        return (double)pkts / ((double)ns / 1e9) / 1e6;
}

static int cmd_rx(unsigned rounds)
{
        struct dp_ring *req, *resp;
        struct sl_error err = {0};
        if (dp_ring_create(&req, 1u << 22, &err) < 0 || dp_ring_create(&resp, 1u << 16, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        struct dp_dpdk_config c = {
                .eal_args = "--no-huge --no-pci -m 256 -l 0-1 --log-level=*:warning", .port = "net_null0",
                .ip = srv.ip, .prefix_len = 24, .udp_port = srv.port, .n_queues = 1, .mbufs = 16384,
                .tc = {.max_requests = BATCH + 64, .lease_ms = 10000},
                .req_ring = {req}, .resp_ring = {resp},
        };
        struct dp_dpdk *d;
        if (dp_dpdk_create(&d, &c, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        char desc[512];
        dp_dpdk_describe(d, desc, sizeof(desc));
        fprintf(stderr, "%s\n", desc);
        /* the server's MAC as the port reports it: the parser checks the destination */
        uint8_t mac[6];
        {
                /* dp_dpdk_describe has the MAC; parse it back */
                const char *p = strstr(desc, ") ");
                unsigned v[6];
                if (!p || sscanf(p + 2, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) {
                        fprintf(stderr, "no MAC in '%s'\n", desc);
                        return 1;
                }
                for (int i = 0; i < 6; i++)
                        mac[i] = (uint8_t)v[i];
        }
        rx_round(d, req, false, 20, mac); /* warm up */
        double sw = rx_round(d, req, false, rounds, mac);
        double hw = rx_round(d, req, true, rounds, mac);
        struct dp_dpdk_stats st;
        dp_dpdk_stats(d, 0, &st);
        printf("{\"frames_per_round\": %u, \"rounds\": %u, \"frame_bytes\": %u, \"mpps_sw_checksums\": %.2f, "
               "\"mpps_nic_checksums\": %.2f, \"zero_copy_requests\": %llu, \"copied_requests\": %llu}\n",
               BATCH, rounds, DPK_HDRS + DP_HEADER_SIZE + 64, sw, hw, (unsigned long long)st.prompts_zero_copy,
               (unsigned long long)st.prompts_copied);
        dp_dpdk_free(d);
        dp_ring_free(req);
        dp_ring_free(resp);
        return 0;
}

/* ---- rtt ---- */

static int cmd_rtt(const char *host, unsigned port, unsigned n)
{
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        struct timeval tv = {1, 0};
        if (fd < 0 || inet_pton(AF_INET, host, &a.sin_addr) != 1 || connect(fd, (void *)&a, sizeof(a)) < 0) {
                fprintf(stderr, "rtt: %s:%u: %s\n", host, port, strerror(errno));
                return 1;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        uint64_t *rtt = calloc(n, sizeof(*rtt));
        unsigned got = 0, lost = 0;
        for (unsigned i = 0; i < n + 100; i++) {
                uint8_t pl[DP_PING_PAYLOAD], f[128], r[2048];
                struct timespec t0, t1;
                clock_gettime(CLOCK_MONOTONIC, &t0);
                struct dp_ping p = {.token = i};
                long pn = dp_ping_encode(pl, sizeof(pl), &p);
                struct dp_header h = {.opcode = DP_OP_PING, .flags = DP_F_CRC, .request_id = i + 1, .frag_count = 1};
                long fl = dp_frame_encode(f, sizeof(f), DP_MAX_FRAME_UDP, &h, pl, (size_t)pn, NULL, NULL);
                if (send(fd, f, (size_t)fl, 0) != fl)
                        return 1;
                ssize_t k = recv(fd, r, sizeof(r), 0);
                clock_gettime(CLOCK_MONOTONIC, &t1);
                if (k < 32) {
                        lost++;
                        continue;
                }
                if (i >= 100 && got < n) /* the first 100: warm-up (ARP, caches) */
                        rtt[got++] = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000ull + (uint64_t)(t1.tv_nsec - t0.tv_nsec);
        }
        if (!got)
                return 1;
        qsort(rtt, got, sizeof(*rtt), cmp_u64);
        double sum = 0;
        for (unsigned i = 0; i < got; i++)
                sum += (double)rtt[i];
        printf("{\"n\": %u, \"lost\": %u, \"p50_us\": %.1f, \"p99_us\": %.1f, \"mean_us\": %.1f, \"min_us\": %.1f}\n", got,
               lost, rtt[got / 2] / 1e3, rtt[(size_t)(got * 0.99)] / 1e3, sum / got / 1e3, rtt[0] / 1e3);
        free(rtt);
        return 0;
}

int main(int argc, char **argv)
{
        if (argc >= 2 && !strcmp(argv[1], "rx"))
                return cmd_rx(argc > 2 ? (unsigned)atoi(argv[2]) : 500);
        if (argc >= 4 && !strcmp(argv[1], "rtt"))
                return cmd_rtt(argv[2], (unsigned)atoi(argv[3]), argc > 4 ? (unsigned)atoi(argv[4]) : 20000);
        fprintf(stderr, "usage: sluice-bench-dpdk rx [ROUNDS] | rtt HOST PORT [N]\n");
        return 2;
}
