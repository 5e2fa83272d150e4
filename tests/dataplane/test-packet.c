/* test-packet — the DPDK transport's packet layer (dataplane/packet.c) without DPDK: the
 * RFC 1071 checksum, every drop reason of the parser on a hand-built frame, header/data
 * split, the builders (ARP reply, ICMP echo reply, UDP headers with and without offload)
 * read back by the parser, and the ARP cache's ageing and eviction. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "packet.h"

static int failures;
#define CHECK(c)                                                                        \
        do {                                                                            \
                if (!(c)) {                                                             \
                        fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); \
                        failures++;                                                     \
                }                                                                       \
        } while (0)

static const struct dpk_iface us = {
        .mac = {0x02, 0, 0, 0, 0, 0x01}, .ip = 0x0a630002, .mask = 0xffffff00, .port = 7400,
};
static const uint8_t cl_mac[6] = {0x02, 0, 0, 0, 0, 0x09};
#define CL_IP 0x0a630001u

/* A UDP frame from the client to us, built independently of dpk_udp_headers. */
static size_t client_udp(uint8_t *f, const void *pl, size_t n, uint16_t dport)
{
        memcpy(f, us.mac, 6);
        memcpy(f + 6, cl_mac, 6);
        f[12] = 0x08, f[13] = 0;
        uint8_t *ip = f + 14;
        memset(ip, 0, 20);
        ip[0] = 0x45;
        uint16_t tot = htons((uint16_t)(28 + n)), ul = htons((uint16_t)(8 + n));
        memcpy(ip + 2, &tot, 2);
        ip[6] = 0x40, ip[8] = 64, ip[9] = 17;
        uint32_t s = htonl(CL_IP), d = htonl(us.ip);
        memcpy(ip + 12, &s, 4);
        memcpy(ip + 16, &d, 4);
        uint16_t c = dpk_csum(dpk_sum(ip, 20, 0));
        memcpy(ip + 10, &c, 2);
        uint8_t *u = ip + 20;
        uint16_t sp = htons(40000), dp = htons(dport);
        memcpy(u, &sp, 2);
        memcpy(u + 2, &dp, 2);
        memcpy(u + 4, &ul, 2);
        u[6] = u[7] = 0;
        memcpy(u + 8, pl, n);
        uint8_t ph[12];
        memcpy(ph, &s, 4);
        memcpy(ph + 4, &d, 4);
        ph[8] = 0, ph[9] = 17;
        memcpy(ph + 10, &ul, 2);
        c = dpk_csum(dpk_sum(u, 8 + n, dpk_sum(ph, 12, 0)));
        memcpy(u + 6, &c, 2);
        return 42 + n;
}

static enum dpk_kind parse(const uint8_t *f, size_t n, struct dpk_pkt *p)
{
        return dpk_parse(f, n, NULL, 0, &us, 0, p);
}

static void test_checksum(void)
{
        /* RFC 1071 §3's example: the sum of these words is ddf2 (one's complement) */
        const uint8_t w[8] = {0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7};
        uint16_t c = dpk_csum(dpk_sum(w, 8, 0));
        uint8_t b[2];
        memcpy(b, &c, 2);
        CHECK(b[0] == (uint8_t)~0xdd && b[1] == (uint8_t)~0xf2);
        /* odd length: the last byte is padded with zero; pieces at even offsets add up */
        uint8_t x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
        CHECK(dpk_csum(dpk_sum(x, 9, 0)) == dpk_csum(dpk_sum(x + 4, 5, dpk_sum(x, 4, 0))));
}

static void test_parse(void)
{
        uint8_t f[1600], g[1600];
        const char msg[] = "SLUC-payload";
        struct dpk_pkt p;
        size_t n = client_udp(f, msg, sizeof(msg), 7400);

        CHECK(parse(f, n, &p) == DPK_UDP);
        CHECK(p.payload == f + 42 && p.payload_len == sizeof(msg) && p.src_port == 40000 && p.src_ip == CL_IP);
        CHECK(!memcmp(p.src_mac, cl_mac, 6));
        /* Ethernet padding after the IP packet is fine */
        memset(f + n, 0, 20);
        CHECK(parse(f, n + 20, &p) == DPK_UDP && p.payload_len == sizeof(msg));
        /* truncated at every layer */
        CHECK(parse(f, 10, &p) == DPK_DROP_SHORT);
        CHECK(parse(f, 30, &p) == DPK_DROP_SHORT);
        CHECK(parse(f, n - 1, &p) == DPK_DROP_SHORT);
        CHECK(parse(f, 1515, &p) == DPK_DROP_OVERSIZE);
#define MUT(stmt, want)                               \
        do {                                          \
                memcpy(g, f, n);                      \
                stmt;                                 \
                CHECK(parse(g, n, &p) == (want));     \
        } while (0)
        MUT(g[0] = 0x04, DPK_DROP_L2);                      /* another MAC */
        MUT(g[6] = 0x03, DPK_DROP_L2);                      /* multicast source */
        MUT(g[13] = 0xdd, DPK_DROP_L2);                     /* IPv6 ethertype */
        MUT(g[14] = 0x65, DPK_DROP_IP_HDR);                 /* version 6 */
        MUT(g[14] = 0x44, DPK_DROP_IP_HDR);                 /* header of 16 bytes */
        MUT(g[24] ^= 1, DPK_DROP_IP_CSUM);
        MUT(g[33] = 3, DPK_DROP_IP_CSUM);                   /* a changed address breaks the checksum */
        MUT(g[42 + 3] ^= 0x40, DPK_DROP_UDP_CSUM);          /* payload byte */
        /* checksum 0: the sender computed none (RFC 768): accepted, the frame's CRC32C guards */
        MUT(g[40] = g[41] = 0, DPK_UDP);
        memcpy(g, f, n);
        g[40] = g[41] = 0;
        CHECK(dpk_parse(g, n, NULL, 0, &us, DPK_RXF_L4_GOOD, &p) == DPK_UDP);
        CHECK(dpk_parse(f, n, NULL, 0, &us, DPK_RXF_L4_BAD, &p) == DPK_DROP_UDP_CSUM);
        CHECK(dpk_parse(f, n, NULL, 0, &us, DPK_RXF_IP_BAD, &p) == DPK_DROP_IP_CSUM);
        /* the NIC's word is taken for a good IP checksum */
        memcpy(g, f, n);
        g[24] ^= 1;
        CHECK(dpk_parse(g, n, NULL, 0, &us, DPK_RXF_IP_GOOD, &p) == DPK_UDP);
        /* from here the IP checksum is redone after each change */
#define MUTIP(stmt, want)                                                   \
        do {                                                                \
                memcpy(g, f, n);                                            \
                stmt;                                                       \
                g[24] = g[25] = 0;                                          \
                uint16_t c_ = dpk_csum(dpk_sum(g + 14, 20, 0));             \
                memcpy(g + 24, &c_, 2);                                     \
                CHECK(parse(g, n, &p) == (want));                           \
        } while (0)
        MUTIP(g[33] = 3, DPK_DROP_NOT_US);
        MUTIP(g[26] = 224, DPK_DROP_IP_HDR);                /* multicast source */
        MUTIP(g[26] = 127, DPK_DROP_IP_HDR);                /* loopback source */
        MUTIP(g[20] = 0x20, DPK_DROP_FRAGMENT);             /* MF */
        MUTIP(g[21] = 0x10, DPK_DROP_FRAGMENT);             /* offset */
        MUTIP(g[23] = 6, DPK_DROP_PROTO);                   /* TCP */
        MUTIP(g[17] = (uint8_t)(g[17] + 1), DPK_DROP_SHORT); /* total length past the frame */
        MUTIP(g[17] = 20 + 4, DPK_DROP_SHORT);               /* room for no UDP header */
        MUTIP(g[17] = 10, DPK_DROP_IP_HDR);                  /* total < header */
        /* UDP length and port (checksum recomputed by client_udp for the port case) */
        n = client_udp(g, msg, sizeof(msg), 9);
        CHECK(parse(g, n, &p) == DPK_DROP_PORT);
        n = client_udp(f, msg, sizeof(msg), 7400);
        memcpy(g, f, n);
        g[39] = (uint8_t)(g[39] - 1);
        CHECK(parse(g, n, &p) == DPK_DROP_UDP_LEN);
        /* split: headers and datagram apart, as rte_eth_rxseg_split delivers them */
        CHECK(dpk_parse(f, 42, f + 42, n - 42, &us, 0, &p) == DPK_UDP && p.payload == f + 42);
        CHECK(dpk_parse(f, 40, f + 40, n - 40, &us, 0, &p) == DPK_DROP_SPLIT);
        memcpy(g, f, n);
        g[45] ^= 1;
        CHECK(dpk_parse(g, 42, g + 42, n - 42, &us, 0, &p) == DPK_DROP_UDP_CSUM);
#undef MUT
#undef MUTIP
}

static void test_builders(void)
{
        uint8_t f[1600], r[1600];
        struct dpk_pkt p, q;
        /* ARP request for us -> reply, seen from the asker */
        static const uint8_t bc[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
        struct dpk_iface cl = {.ip = CL_IP, .mask = 0xffffff00, .port = 40000};
        memcpy(cl.mac, cl_mac, 6);
        size_t n = dpk_arp_request(f, &cl, us.ip);
        CHECK(n == DPK_MIN_FRAME && !memcmp(f, bc, 6));
        CHECK(parse(f, n, &p) == DPK_ARP && p.arp_op == 1 && p.arp_for_us && p.src_ip == CL_IP);
        n = dpk_arp_reply(r, &us, p.src_mac, p.src_ip);
        CHECK(dpk_parse(r, n, NULL, 0, &cl, 0, &q) == DPK_ARP && q.arp_op == 2 && q.arp_for_us && q.src_ip == us.ip &&
              !memcmp(q.src_mac, us.mac, 6));
        /* an ARP request for another address is not for us; ARP probes are dropped */
        n = dpk_arp_request(f, &cl, us.ip + 1);
        CHECK(parse(f, n, &p) == DPK_ARP && !p.arp_for_us);
        struct dpk_iface probe = cl;
        probe.ip = 0;
        n = dpk_arp_request(f, &probe, us.ip);
        CHECK(parse(f, n, &p) == DPK_DROP_ARP);

        /* UDP headers, software checksums: the client parses our answer */
        const char pl[] = "an answer of some bytes";
        memcpy(r + DPK_HDRS, pl, sizeof(pl));
        n = dpk_udp_headers(r, &us, cl_mac, CL_IP, 40000, sizeof(pl), 5, 0);
        CHECK(n == DPK_HDRS + sizeof(pl) || (n == DPK_MIN_FRAME && DPK_HDRS + sizeof(pl) < DPK_MIN_FRAME));
        CHECK(dpk_parse(r, n, NULL, 0, &cl, 0, &q) == DPK_UDP && q.payload_len == sizeof(pl) &&
              !memcmp(q.payload, pl, sizeof(pl)) && q.src_port == us.port);
        /* with offload the UDP field holds the pseudo-header sum for the NIC, the IP checksum 0 */
        n = dpk_udp_headers(r, &us, cl_mac, CL_IP, 40000, sizeof(pl), 5, DPK_TXF_IP_OFFLOAD | DPK_TXF_UDP_OFFLOAD);
        CHECK(r[24] == 0 && r[25] == 0);
        CHECK(dpk_parse(r, n, NULL, 0, &cl, DPK_RXF_IP_GOOD | DPK_RXF_L4_GOOD, &q) == DPK_UDP);

        /* ICMP echo: the reply goes back with valid checksums */
        uint8_t icmp[16] = {8, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g', 'p', 'i', 'n', 'g'};
        uint16_t c = dpk_csum(dpk_sum(icmp, sizeof(icmp), 0));
        memcpy(icmp + 2, &c, 2);
        n = client_udp(f, icmp, sizeof(icmp), 7400);
        f[23] = 1; /* make it ICMP: drop the UDP header by rebuilding the IP part */
        memmove(f + 34, f + 42, sizeof(icmp));
        uint16_t tot = htons(20 + sizeof(icmp));
        memcpy(f + 16, &tot, 2);
        f[24] = f[25] = 0;
        c = dpk_csum(dpk_sum(f + 14, 20, 0));
        memcpy(f + 24, &c, 2);
        n = 34 + sizeof(icmp);
        CHECK(parse(f, n, &p) == DPK_ICMP_ECHO);
        size_t rn = dpk_icmp_echo_reply(f, &p, &us);
        CHECK(rn == DPK_MIN_FRAME && f[34] == 0 && !memcmp(f, cl_mac, 6));
        CHECK(dpk_csum(dpk_sum(f + 14, 20, 0)) == 0 && dpk_csum(dpk_sum(f + 34, sizeof(icmp), 0)) == 0);
        f[34 + 3] ^= 1;
        f[34] = 8;
        CHECK(dpk_parse(f, n, NULL, 0, &us, 0, &p) != DPK_ICMP_ECHO);
}

static void test_arp_cache(void)
{
        static struct dpk_arp_cache c;
        uint8_t mac[6] = {2, 0, 0, 0, 0, 0};
        CHECK(!dpk_arp_lookup(&c, CL_IP, 1));
        dpk_arp_learn(&c, CL_IP, cl_mac, 100);
        CHECK(dpk_arp_lookup(&c, CL_IP, 200) && !memcmp(dpk_arp_lookup(&c, CL_IP, 200), cl_mac, 6));
        CHECK(!dpk_arp_lookup(&c, CL_IP, 100 + DPK_ARP_TTL_NS)); /* aged out */
        /* a full cache keeps the newest entries */
        for (uint32_t i = 0; i < 4 * DPK_ARP_SETS * DPK_ARP_WAYS; i++) {
                mac[5] = (uint8_t)i;
                dpk_arp_learn(&c, 0x0b000000u + i, mac, 1000 + i);
        }
        uint32_t last = 0x0b000000u + 4 * DPK_ARP_SETS * DPK_ARP_WAYS - 1;
        CHECK(dpk_arp_lookup(&c, last, 1000 + 4 * DPK_ARP_SETS * DPK_ARP_WAYS));
        CHECK(!dpk_arp_lookup(&c, 0x0b000000u, 1000 + 4 * DPK_ARP_SETS * DPK_ARP_WAYS));
}

int main(void)
{
        test_checksum();
        test_parse();
        test_builders();
        test_arp_cache();
        if (failures) {
                fprintf(stderr, "%d check(s) failed\n", failures);
                return 1;
        }
        printf("packet: all checks passed\n");
        return 0;
}
