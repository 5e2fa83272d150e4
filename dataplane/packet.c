/* packet.c — Ethernet/ARP/IPv4/ICMP/UDP for the DPDK transport on plain byte buffers: one
 * parser for untrusted frames (every length checked before it is read), the checksums,
 * builders for what we send, and the ARP cache. No DPDK types, so the fuzzer
 * (tests/fuzz/fuzz_packet.c) and tests/dataplane/test-packet.c run in any build. */
#include <string.h>

#include "packet.h"

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v; }
static inline void wr32(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

const char *dpk_kind_name(enum dpk_kind k)
{
        static const char *const n[DPK_N] = {
                [DPK_UDP] = "udp", [DPK_ARP] = "arp", [DPK_ICMP_ECHO] = "icmp_echo",
                [DPK_DROP_SHORT] = "short", [DPK_DROP_OVERSIZE] = "oversize", [DPK_DROP_L2] = "l2",
                [DPK_DROP_IP_HDR] = "ip_header", [DPK_DROP_IP_CSUM] = "ip_checksum",
                [DPK_DROP_NOT_US] = "not_our_address", [DPK_DROP_FRAGMENT] = "ip_fragment",
                [DPK_DROP_PROTO] = "ip_protocol", [DPK_DROP_UDP_LEN] = "udp_length",
                [DPK_DROP_UDP_CSUM] = "udp_checksum", [DPK_DROP_PORT] = "udp_port", [DPK_DROP_ARP] = "arp",
                [DPK_DROP_ICMP] = "icmp", [DPK_DROP_SPLIT] = "split",
        };
        return (unsigned)k < DPK_N ? n[k] : "?";
}

/* ---- checksums ---- */

/* 32-bit words summed into two 64-bit accumulators (no carry can be lost below 2^32 words),
 * then added to acc with an end-around carry: the one's-complement sum of the 16-bit words,
 * since 2^16 = 2^32 = 2^64 = 1 modulo 0xffff. Byte order does not matter as long as the
 * result is stored in the same (memory) order (RFC 1071 §2(B)). */
uint64_t dpk_sum(const void *buf, size_t len, uint64_t acc)
{
        const uint8_t *p = buf;
        uint64_t a = 0, b = 0;
        uint32_t w[4];
        for (; len >= 16; p += 16, len -= 16) {
                memcpy(w, p, 16);
                a += w[0], b += w[1], a += w[2], b += w[3];
        }
        for (; len >= 4; p += 4, len -= 4) {
                memcpy(w, p, 4);
                a += w[0];
        }
        if (len) {
                w[0] = 0;
                memcpy(w, p, len); /* the missing bytes are the zero pad of §2 */
                a += w[0];
        }
        a += b;
        acc += a;
        return acc + (acc < a);
}

static uint16_t fold(uint64_t acc)
{
        acc = (acc & 0xffffffffu) + (acc >> 32);
        acc = (acc & 0xffffffffu) + (acc >> 32);
        acc = (acc & 0xffff) + (acc >> 16);
        acc = (acc & 0xffff) + (acc >> 16);
        return (uint16_t)acc;
}

uint16_t dpk_csum(uint64_t acc) { return (uint16_t)~fold(acc); }

static uint64_t pseudo_sum(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len)
{
        uint8_t ph[12];
        wr32(ph, src);
        wr32(ph + 4, dst);
        ph[8] = 0, ph[9] = proto;
        wr16(ph + 10, len);
        return dpk_sum(ph, sizeof(ph), 0);
}

/* ---- parsing ---- */

static enum dpk_kind parse_arp(const uint8_t *a, size_t n, const struct dpk_iface *ifc, struct dpk_pkt *p)
{
        if (n < 28)
                return DPK_DROP_SHORT;
        if (rd16(a) != 1 || rd16(a + 2) != DPK_ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4)
                return DPK_DROP_ARP;
        uint16_t op = rd16(a + 6);
        uint32_t spa = rd32(a + 14);
        if ((op != 1 && op != 2) || (a[8] & 1) || spa == 0 || spa == 0xffffffffu || spa == ifc->ip)
                return DPK_DROP_ARP; /* probes, multicast senders and our own address: nothing to learn */
        memcpy(p->src_mac, a + 8, 6);
        p->src_ip = spa;
        p->arp_op = op;
        p->arp_for_us = rd32(a + 24) == ifc->ip;
        return DPK_ARP;
}

enum dpk_kind dpk_parse(const uint8_t *f, size_t len, const uint8_t *tail, size_t tail_len,
                        const struct dpk_iface *ifc, unsigned rxf, struct dpk_pkt *p)
{
        memset(p, 0, sizeof(*p));
        if (len < DPK_ETH_LEN)
                return DPK_DROP_SHORT;
        if (len + tail_len > DPK_MAX_FRAME)
                return DPK_DROP_OVERSIZE;
        if (memcmp(f, ifc->mac, 6) && memcmp(f, bcast, 6))
                return DPK_DROP_L2;
        if (f[6] & 1)
                return DPK_DROP_L2; /* a multicast source address */
        memcpy(p->src_mac, f + 6, 6);
        uint16_t et = rd16(f + 12);
        p->l3_off = DPK_ETH_LEN;
        if (et == DPK_ETHERTYPE_ARP)
                return tail ? DPK_DROP_SPLIT : parse_arp(f + DPK_ETH_LEN, len - DPK_ETH_LEN, ifc, p);
        if (et != DPK_ETHERTYPE_IPV4)
                return DPK_DROP_L2;

        const uint8_t *ip = f + DPK_ETH_LEN;
        size_t have = len - DPK_ETH_LEN; /* in the header segment */
        if (have < DPK_IP_LEN)
                return DPK_DROP_SHORT;
        size_t ihl = (size_t)(ip[0] & 15) * 4, tot = rd16(ip + 2);
        if (ip[0] >> 4 != 4 || ihl < DPK_IP_LEN || tot < ihl)
                return DPK_DROP_IP_HDR;
        if (have < ihl || tot > have + tail_len)
                return DPK_DROP_SHORT; /* what follows tot is Ethernet padding */
        if (!(rxf & DPK_RXF_IP_GOOD) && ((rxf & DPK_RXF_IP_BAD) || dpk_csum(dpk_sum(ip, ihl, 0)) != 0))
                return DPK_DROP_IP_CSUM;
        uint32_t src = rd32(ip + 12), dst = rd32(ip + 16);
        if (src == 0 || src >= 0xe0000000u || (src & 0xff000000u) == 0x7f000000u)
                return DPK_DROP_IP_HDR; /* unspecified, multicast, broadcast, loopback */
        if (dst != ifc->ip)
                return DPK_DROP_NOT_US;
        if (rd16(ip + 6) & 0x3fff)
                return DPK_DROP_FRAGMENT; /* MF set or a non-zero offset */
        p->src_ip = src;
        p->l3_len = (uint16_t)tot;
        const uint8_t *l4 = ip + ihl;
        size_t l4len = tot - ihl;
        if (ip[9] == 1) { /* ICMP */
                if (tail)
                        return DPK_DROP_SPLIT;
                if (l4len < 8)
                        return DPK_DROP_SHORT;
                if (l4[0] != 8 || l4[1] != 0 || dpk_csum(dpk_sum(l4, l4len, 0)) != 0)
                        return DPK_DROP_ICMP;
                p->payload = l4;
                p->payload_len = (uint32_t)l4len;
                return DPK_ICMP_ECHO;
        }
        if (ip[9] != 17)
                return DPK_DROP_PROTO;
        if (l4len < DPK_UDP_LEN)
                return DPK_DROP_SHORT;
        if (have - ihl < DPK_UDP_LEN)
                return tail ? DPK_DROP_SPLIT : DPK_DROP_SHORT;
        if (tail && have - ihl != DPK_UDP_LEN)
                return DPK_DROP_SPLIT;
        if (rd16(l4 + 4) != l4len)
                return DPK_DROP_UDP_LEN;
        uint16_t sport = rd16(l4);
        if (rd16(l4 + 2) != ifc->port || sport == 0)
                return DPK_DROP_PORT;
        const uint8_t *pl = tail ? tail : l4 + DPK_UDP_LEN;
        size_t plen = l4len - DPK_UDP_LEN;
        /* checksum 0: the sender computed none (RFC 768); the frame's CRC32C still guards it */
        if (rd16(l4 + 6) != 0 && !(rxf & DPK_RXF_L4_GOOD)) {
                if (rxf & DPK_RXF_L4_BAD)
                        return DPK_DROP_UDP_CSUM;
                uint64_t s = pseudo_sum(src, dst, 17, (uint16_t)l4len);
                s = dpk_sum(l4, DPK_UDP_LEN, s);
                s = dpk_sum(pl, plen, s);
                if (dpk_csum(s) != 0)
                        return DPK_DROP_UDP_CSUM;
        }
        p->src_port = sport;
        p->payload = pl;
        p->payload_len = (uint32_t)plen;
        return DPK_UDP;
}

/* ---- builders ---- */

static size_t pad(uint8_t *f, size_t len)
{
        if (len >= DPK_MIN_FRAME)
                return len;
        memset(f + len, 0, DPK_MIN_FRAME - len);
        return DPK_MIN_FRAME;
}

static size_t arp_frame(uint8_t *out, const struct dpk_iface *ifc, const uint8_t eth_dst[6], uint16_t op,
                        const uint8_t tha[6], uint32_t tpa)
{
        memcpy(out, eth_dst, 6);
        memcpy(out + 6, ifc->mac, 6);
        wr16(out + 12, DPK_ETHERTYPE_ARP);
        uint8_t *a = out + DPK_ETH_LEN;
        wr16(a, 1);
        wr16(a + 2, DPK_ETHERTYPE_IPV4);
        a[4] = 6, a[5] = 4;
        wr16(a + 6, op);
        memcpy(a + 8, ifc->mac, 6);
        wr32(a + 14, ifc->ip);
        memcpy(a + 18, tha, 6);
        wr32(a + 24, tpa);
        return pad(out, DPK_ETH_LEN + 28);
}

size_t dpk_arp_reply(uint8_t *out, const struct dpk_iface *ifc, const uint8_t tha[6], uint32_t tpa)
{
        return arp_frame(out, ifc, tha, 2, tha, tpa);
}

size_t dpk_arp_request(uint8_t *out, const struct dpk_iface *ifc, uint32_t tpa)
{
        static const uint8_t zero[6];
        return arp_frame(out, ifc, bcast, 1, zero, tpa);
}

size_t dpk_icmp_echo_reply(uint8_t *f, const struct dpk_pkt *p, const struct dpk_iface *ifc)
{
        uint8_t *ip = f + p->l3_off;
        size_t ihl = (size_t)(ip[0] & 15) * 4;
        memcpy(f, p->src_mac, 6);
        memcpy(f + 6, ifc->mac, 6);
        ip[8] = 64; /* TTL */
        wr32(ip + 12, ifc->ip);
        wr32(ip + 16, p->src_ip);
        ip[10] = ip[11] = 0;
        uint16_t c = dpk_csum(dpk_sum(ip, ihl, 0));
        memcpy(ip + 10, &c, 2);
        uint8_t *icmp = ip + ihl;
        icmp[0] = 0;
        icmp[2] = icmp[3] = 0;
        c = dpk_csum(dpk_sum(icmp, p->payload_len, 0));
        memcpy(icmp + 2, &c, 2);
        return pad(f, (size_t)p->l3_off + p->l3_len);
}

size_t dpk_udp_headers(uint8_t *f, const struct dpk_iface *ifc, const uint8_t dst_mac[6], uint32_t dst_ip,
                       uint16_t dst_port, size_t payload_len, uint16_t ip_id, unsigned txf)
{
        uint16_t ulen = (uint16_t)(DPK_UDP_LEN + payload_len);
        memcpy(f, dst_mac, 6);
        memcpy(f + 6, ifc->mac, 6);
        wr16(f + 12, DPK_ETHERTYPE_IPV4);
        uint8_t *ip = f + DPK_ETH_LEN;
        ip[0] = 0x45, ip[1] = 0;
        wr16(ip + 2, (uint16_t)(DPK_IP_LEN + ulen));
        wr16(ip + 4, ip_id);
        wr16(ip + 6, 0x4000); /* DF: our frames always fit the MTU */
        ip[8] = 64, ip[9] = 17;
        ip[10] = ip[11] = 0;
        wr32(ip + 12, ifc->ip);
        wr32(ip + 16, dst_ip);
        if (!(txf & DPK_TXF_IP_OFFLOAD)) {
                uint16_t c = dpk_csum(dpk_sum(ip, DPK_IP_LEN, 0));
                memcpy(ip + 10, &c, 2);
        }
        uint8_t *u = ip + DPK_IP_LEN;
        wr16(u, ifc->port);
        wr16(u + 2, dst_port);
        wr16(u + 4, ulen);
        u[6] = u[7] = 0;
        uint64_t s = pseudo_sum(ifc->ip, dst_ip, 17, ulen);
        uint16_t c;
        if (txf & DPK_TXF_UDP_OFFLOAD) {
                c = fold(s); /* the NIC adds the rest and complements (DPDK's convention) */
        } else {
                c = dpk_csum(dpk_sum(u, ulen, s));
                if (c == 0)
                        c = 0xffff; /* 0 would mean "no checksum" */
        }
        memcpy(u + 6, &c, 2);
        return pad(f, DPK_HDRS + payload_len);
}

/* ---- ARP cache ---- */

static inline unsigned arp_set(uint32_t ip) { return (ip * 0x9E3779B1u) >> 26; } /* 64 sets */

void dpk_arp_learn(struct dpk_arp_cache *c, uint32_t ip, const uint8_t mac[6], uint64_t now)
{
        unsigned s = arp_set(ip), victim = 0;
        for (unsigned w = 0; w < DPK_ARP_WAYS; w++) {
                if (c->e[s][w].ip == ip) {
                        victim = w;
                        break;
                }
                if (c->e[s][w].seen_ns < c->e[s][victim].seen_ns)
                        victim = w;
        }
        c->e[s][victim].ip = ip;
        memcpy(c->e[s][victim].mac, mac, 6);
        c->e[s][victim].seen_ns = now ? now : 1;
}

const uint8_t *dpk_arp_lookup(const struct dpk_arp_cache *c, uint32_t ip, uint64_t now)
{
        unsigned s = arp_set(ip);
        for (unsigned w = 0; w < DPK_ARP_WAYS; w++)
                if (c->e[s][w].ip == ip && ip && now - c->e[s][w].seen_ns < DPK_ARP_TTL_NS)
                        return c->e[s][w].mac;
        return NULL;
}
