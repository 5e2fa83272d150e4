/* packet.h — internal to dataplane/: Ethernet, ARP, IPv4, ICMP echo and UDP for the DPDK
 * transport, on plain byte buffers (no DPDK types), so that the fuzzer and the unit tests
 * run in any build. Parsing checks every length before reading; builders write into
 * caller buffers. Addresses and ports are in host byte order in the structs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DPK_ETH_LEN 14
#define DPK_IP_LEN 20                 /* without options: the only header we send */
#define DPK_UDP_LEN 8
#define DPK_HDRS (DPK_ETH_LEN + DPK_IP_LEN + DPK_UDP_LEN) /* 42: where a datagram we send starts */
#define DPK_MTU 1500
#define DPK_MAX_FRAME (DPK_ETH_LEN + DPK_MTU)             /* 1514, no VLAN tag (stripped or none) */
#define DPK_MIN_FRAME 60              /* frames we send are padded to this */
#define DPK_ETHERTYPE_IPV4 0x0800
#define DPK_ETHERTYPE_ARP 0x0806

/* Where the port's own address lives. */
struct dpk_iface {
        uint8_t mac[6];
        uint32_t ip;                  /* host order */
        uint32_t mask;                /* host order: the prefix as a mask */
        uint16_t port;                /* our UDP port */
};

/* What a received frame is; everything from DPK_DROP_SHORT on is dropped and counted. */
enum dpk_kind {
        DPK_UDP = 0,          /* a datagram to our address and port: payload/payload_len */
        DPK_ARP,              /* a well-formed ARP request or reply (learn; answer if arp_for_us) */
        DPK_ICMP_ECHO,        /* an echo request to us, checksum good: dpk_icmp_echo_reply() */
        DPK_DROP_SHORT,       /* a header cut short at some layer */
        DPK_DROP_OVERSIZE,    /* over a 1500-byte MTU */
        DPK_DROP_L2,          /* not to our MAC or broadcast, or an ethertype other than IPv4/ARP */
        DPK_DROP_IP_HDR,      /* IP version, header length or total length wrong */
        DPK_DROP_IP_CSUM,     /* IPv4 header checksum */
        DPK_DROP_NOT_US,      /* IPv4 destination is not our address */
        DPK_DROP_FRAGMENT,    /* IPv4 fragment (the protocol fragments on its own, §5.1) */
        DPK_DROP_PROTO,       /* IP protocol other than UDP and ICMP */
        DPK_DROP_UDP_LEN,     /* UDP length disagrees with the IP length */
        DPK_DROP_UDP_CSUM,    /* UDP checksum */
        DPK_DROP_PORT,        /* UDP to a port we do not serve */
        DPK_DROP_ARP,         /* ARP that is malformed, not Ethernet/IPv4, or from a bad source */
        DPK_DROP_ICMP,        /* ICMP other than an echo request, or a bad checksum */
        DPK_DROP_SPLIT,       /* header/data split that does not end at the UDP payload */
        DPK_N,
};
const char *dpk_kind_name(enum dpk_kind k); /* "short", "ip_csum", ... */

/* What the NIC already checked (from the mbuf's offload flags). */
enum dpk_rx_flag {
        DPK_RXF_IP_GOOD = 1u << 0,
        DPK_RXF_IP_BAD = 1u << 1,
        DPK_RXF_L4_GOOD = 1u << 2,
        DPK_RXF_L4_BAD = 1u << 3,
};

struct dpk_pkt {
        uint8_t src_mac[6];
        uint32_t src_ip;              /* UDP, ICMP: IP source; ARP: sender protocol address */
        uint16_t src_port;
        uint16_t arp_op;              /* DPK_ARP: 1 request, 2 reply */
        bool arp_for_us;              /* DPK_ARP: a request for our address */
        const uint8_t *payload;       /* DPK_UDP: the datagram; DPK_ICMP_ECHO: the ICMP message */
        uint32_t payload_len;
        uint16_t l3_off;              /* offset of the IPv4 / ARP header */
        uint16_t l3_len;              /* IPv4 total length */
};

/* Parses the frame f[0, len). With header/data split, f is the header segment and the UDP
 * payload is tail[0, tail_len) (f must end exactly where the UDP payload starts); else tail
 * is NULL. rxf: enum dpk_rx_flag, what hardware verified. */
enum dpk_kind dpk_parse(const uint8_t *f, size_t len, const uint8_t *tail, size_t tail_len,
                        const struct dpk_iface *ifc, unsigned rxf, struct dpk_pkt *p);

/* ---- checksums (RFC 1071), over bytes in memory order ---- */

/* Adds bytes to a running one's-complement sum (start from 0). Pieces after the first must
 * start at an even offset of the checksummed data. */
uint64_t dpk_sum(const void *buf, size_t len, uint64_t acc);
/* The checksum field's value (memory order, store with memcpy) for a finished sum. */
uint16_t dpk_csum(uint64_t acc);

/* ---- builders ---- */

/* An ARP reply to (tha, tpa) from ifc, padded to DPK_MIN_FRAME. Returns the length. */
size_t dpk_arp_reply(uint8_t *out, const struct dpk_iface *ifc, const uint8_t tha[6], uint32_t tpa);
/* A broadcast ARP request for tpa. Returns the length. */
size_t dpk_arp_request(uint8_t *out, const struct dpk_iface *ifc, uint32_t tpa);
/* Turns the echo request f (as parsed into p) into its reply, in place: addresses swapped,
 * type 0, checksums redone. Returns the frame length to send. */
size_t dpk_icmp_echo_reply(uint8_t *f, const struct dpk_pkt *p, const struct dpk_iface *ifc);

enum dpk_tx_flag {
        DPK_TXF_IP_OFFLOAD = 1u << 0,  /* the NIC fills the IPv4 checksum */
        DPK_TXF_UDP_OFFLOAD = 1u << 1, /* the NIC finishes the UDP checksum from the pseudo-header sum */
};
/* Ethernet + IPv4 + UDP headers (DPK_HDRS bytes) in front of payload_len bytes that are
 * already at f + DPK_HDRS. Returns the frame length (padded to DPK_MIN_FRAME with zeros). */
size_t dpk_udp_headers(uint8_t *f, const struct dpk_iface *ifc, const uint8_t dst_mac[6], uint32_t dst_ip,
                       uint16_t dst_port, size_t payload_len, uint16_t ip_id, unsigned txf);

/* ---- a small ARP cache: IPv4 address -> next-hop MAC, learned from what clients send ---- */

#define DPK_ARP_WAYS 4
#define DPK_ARP_SETS 64
#define DPK_ARP_TTL_NS (300ull * 1000000000ull)

struct dpk_arp_cache {
        struct {
                uint32_t ip;          /* 0: empty */
                uint8_t mac[6];
                uint64_t seen_ns;
        } e[DPK_ARP_SETS][DPK_ARP_WAYS];
};
void dpk_arp_learn(struct dpk_arp_cache *c, uint32_t ip, const uint8_t mac[6], uint64_t now);
/* The MAC for ip, or NULL when unknown or older than DPK_ARP_TTL_NS. */
const uint8_t *dpk_arp_lookup(const struct dpk_arp_cache *c, uint32_t ip, uint64_t now);
