/* fuzz_packet — libFuzzer target for the DPDK transport's packet parser (dataplane/packet.c):
 * raw Ethernet frames, as a NIC would hand them over. The first input byte picks a mode:
 * address the frame to us (so mutations reach past the L2/L3 address checks), reseal the
 * IPv4/UDP/ICMP checksums (so they reach past the checksums), split headers and datagram
 * as header/data split would, and which checksum results the "NIC" reports. What parses
 * must hold up: views inside the input, an ICMP reply with valid checksums, and a UDP reply
 * built to the sender that parses back, from the sender's side, to the same datagram. */
#include <stdlib.h>
#include <string.h>

#include "packet.h"

#define MODE_TO_US 0x01
#define MODE_RESEAL 0x02
#define MODE_SPLIT 0x04
#define MODE_RXF_SHIFT 3 /* 4 bits of enum dpk_rx_flag */

static const struct dpk_iface us = {
        .mac = {0x02, 0x00, 0x00, 0x00, 0x00, 0x01}, .ip = 0x0a630002, .mask = 0xffffff00, .port = 7400,
};

static uint8_t frame[DPK_MAX_FRAME + 64];
static uint8_t reply[DPK_MAX_FRAME + 64];

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v; }

static void address_to_us(uint8_t *f, size_t len)
{
        if (len >= 6)
                memcpy(f, us.mac, 6);
        if (len >= 34 && f[12] == 0x08 && f[13] == 0x00) {
                f[30] = 10, f[31] = 99, f[32] = 0, f[33] = 2;
                size_t l4 = 14 + (size_t)(f[14] & 15) * 4;
                if (f[23] == 17 && len >= l4 + 4)
                        put16(f + l4 + 2, us.port);
        }
}

static void reseal(uint8_t *f, size_t len)
{
        if (len < 34 || f[12] != 0x08 || f[13] != 0x00)
                return;
        size_t ihl = (size_t)(f[14] & 15) * 4;
        if (ihl < 20 || len < 14 + ihl)
                return;
        uint8_t *ip = f + 14;
        ip[10] = ip[11] = 0;
        uint16_t c = dpk_csum(dpk_sum(ip, ihl, 0));
        memcpy(ip + 10, &c, 2);
        size_t tot = (size_t)ip[2] << 8 | ip[3];
        if (tot < ihl || 14 + tot > len)
                return;
        uint8_t *l4 = ip + ihl;
        size_t l4len = tot - ihl;
        if (ip[9] == 1 && l4len >= 4) {
                l4[2] = l4[3] = 0;
                c = dpk_csum(dpk_sum(l4, l4len, 0));
                memcpy(l4 + 2, &c, 2);
        } else if (ip[9] == 17 && l4len >= 8) {
                uint8_t ph[12];
                memcpy(ph, ip + 12, 8);
                ph[8] = 0, ph[9] = 17;
                put16(ph + 10, (uint16_t)l4len);
                l4[6] = l4[7] = 0;
                c = dpk_csum(dpk_sum(l4, l4len, dpk_sum(ph, 12, 0)));
                memcpy(l4 + 6, &c, 2);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1)
                return 0;
        unsigned mode = data[0];
        size_t len = size - 1;
        if (len > sizeof(frame))
                return 0;
        /* a heap copy of exactly len bytes: ASan sees any read past the frame */
        uint8_t *f = malloc(len ? len : 1);
        memcpy(f, data + 1, len);
        if (mode & MODE_TO_US)
                address_to_us(f, len);
        if (mode & MODE_RESEAL)
                reseal(f, len);
        unsigned rxf = (mode >> MODE_RXF_SHIFT) & 15;
        const uint8_t *tail = NULL;
        size_t hl = len, tl = 0;
        if ((mode & MODE_SPLIT) && len > DPK_HDRS) {
                hl = DPK_HDRS;
                tail = f + DPK_HDRS;
                tl = len - DPK_HDRS;
        }
        struct dpk_pkt p;
        enum dpk_kind k = dpk_parse(f, hl, tail, tl, &us, rxf, &p);
        if ((unsigned)k >= DPK_N || !dpk_kind_name(k)[0])
                __builtin_trap();
        if (k == DPK_UDP || k == DPK_ICMP_ECHO) {
                if (p.payload < f || p.payload + p.payload_len > f + len)
                        __builtin_trap();
        }
        if (k == DPK_ICMP_ECHO) {
                memcpy(frame, f, len);
                size_t n = dpk_icmp_echo_reply(frame, &p, &us);
                if (n > sizeof(frame) || n < DPK_MIN_FRAME)
                        __builtin_trap();
                const uint8_t *ip = frame + p.l3_off;
                size_t ihl = (size_t)(ip[0] & 15) * 4;
                if (dpk_csum(dpk_sum(ip, ihl, 0)) != 0 || dpk_csum(dpk_sum(ip + ihl, p.payload_len, 0)) != 0)
                        __builtin_trap();
        }
        if (k == DPK_UDP && p.payload_len <= DPK_MTU - DPK_IP_LEN - DPK_UDP_LEN) {
                /* our answer, parsed as the client would see it */
                memcpy(reply + DPK_HDRS, p.payload, p.payload_len);
                size_t n = dpk_udp_headers(reply, &us, p.src_mac, p.src_ip, p.src_port, p.payload_len, 7, 0);
                struct dpk_iface client = {.ip = p.src_ip, .mask = 0xffffff00, .port = p.src_port};
                memcpy(client.mac, p.src_mac, 6);
                struct dpk_pkt q;
                enum dpk_kind k2 = dpk_parse(reply, n, NULL, 0, &client, 0, &q);
                if (k2 != DPK_UDP || q.payload_len != p.payload_len || q.src_port != us.port ||
                    q.src_ip != us.ip || memcmp(q.payload, p.payload, p.payload_len))
                        __builtin_trap();
        }
        if (k == DPK_ARP && p.arp_for_us) {
                size_t n = dpk_arp_reply(reply, &us, p.src_mac, p.src_ip);
                struct dpk_iface asker = {.ip = p.src_ip, .mask = 0xffffff00};
                memcpy(asker.mac, p.src_mac, 6);
                struct dpk_pkt q;
                if (dpk_parse(reply, n, NULL, 0, &asker, 0, &q) != DPK_ARP || q.arp_op != 2 || !q.arp_for_us ||
                    q.src_ip != us.ip)
                        __builtin_trap();
        }
        free(f);
        return 0;
}
